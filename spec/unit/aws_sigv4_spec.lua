-- AWS Signature Version 4 (tide.provider.aws), against the AWS test suite
-- botocore ships (tests/unit/auth/aws4_testsuite: post-vanilla,
-- post-x-www-form-urlencoded, get-utf8,
-- get-vanilla-query-order-key-case, post-sts-header-before): the
-- credentials, date and region those cases use, their Authorization lines
-- to the byte. And the hashes under it (core.sha256, core.hmac_sha256,
-- core.crc32) against their published values.
local aws = require "tide.provider.aws"
local core = require "tide.core"

local CREDS = { access_key_id = "AKIDEXAMPLE", secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY" }
local DATE = "20150830T123600Z"
local SCOPE = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"

local function authz(method, url, headers, body, creds)
  return aws.sign(method, url, headers, body, creds or CREDS, "us-east-1", "service", DATE).authorization
end

describe("tide.provider.aws.sign", function()
  it("signs post-vanilla as the test suite does", function()
    assert.are.equal("AWS4-HMAC-SHA256 Credential=" .. SCOPE .. ", SignedHeaders=host;x-amz-date, "
      .. "Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
      authz("POST", "https://example.amazonaws.com/", {}, ""))
  end)

  it("signs a body and the headers it is given (post-x-www-form-urlencoded)", function()
    assert.are.equal("AWS4-HMAC-SHA256 Credential=" .. SCOPE .. ", SignedHeaders=content-type;host;x-amz-date, "
      .. "Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
      authz("POST", "https://example.amazonaws.com/", { ["content-type"] = "application/x-www-form-urlencoded" },
        "Param1=value1"))
  end)

  it("encodes the path (get-utf8) and sorts the query (get-vanilla-query-order-key-case)", function()
    assert.are.equal("AWS4-HMAC-SHA256 Credential=" .. SCOPE .. ", SignedHeaders=host;x-amz-date, "
      .. "Signature=8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
      authz("GET", "https://example.amazonaws.com/\225\136\180", {}, ""))
    assert.are.equal("AWS4-HMAC-SHA256 Credential=" .. SCOPE .. ", SignedHeaders=host;x-amz-date, "
      .. "Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
      authz("GET", "https://example.amazonaws.com/?Param2=value2&Param1=value1", {}, ""))
  end)

  it("signs and sends a session token (post-sts-header-before)", function()
    local token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoI"
      .. "YRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9H"
      .. "FvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4"
      .. "rvx3iSIlTJabIQwj2ICCR/oLxBA=="
    local creds = { access_key_id = CREDS.access_key_id, secret_access_key = CREDS.secret_access_key,
      session_token = token }
    local h = aws.sign("POST", "https://example.amazonaws.com/", {}, "", creds, "us-east-1", "service", DATE)
    assert.are.equal("AWS4-HMAC-SHA256 Credential=" .. SCOPE .. ", SignedHeaders=host;x-amz-date;"
      .. "x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead",
      h.authorization)
    assert.are.equal(token, h["x-amz-security-token"])
    assert.are.equal(DATE, h["x-amz-date"])
  end)

  it("signs a Bedrock model id's ':' as AWS reads it, and the host as libcurl sends it", function()
    -- The path as sent, encoded once more: ':' signs as %3A (botocore's
    -- canonical path for the same URL), an ARN's %2F as %252F.
    local a = authz("POST", "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-v2:1/invoke", {}, "")
    local b = authz("POST", "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-v2%3A1/invoke", {}, "")
    assert.are_not.equal(a, b)
    assert.are.equal("/model/anthropic.claude-v2%3A1/invoke", aws.uri_encode("/model/anthropic.claude-v2:1/invoke", true))
    assert.are.equal("a%2Fb%253A", aws.uri_encode("a/b%3A"))
    -- a default port is not in the host header, another one is
    assert.are.equal(authz("POST", "https://example.amazonaws.com:443/", {}, ""),
      authz("POST", "https://example.amazonaws.com/", {}, ""))
    assert.are_not.equal(authz("POST", "http://127.0.0.1:8080/", {}, ""), authz("POST", "http://127.0.0.1/", {}, ""))
  end)

  it("says what is wrong with credentials", function()
    assert.is_nil(aws.check(CREDS))
    assert.matches("needs 'secret_access_key'", aws.check({ access_key_id = "A" }), 1, true)
    assert.matches("unknown field 'secret'", aws.check({ access_key_id = "A", secret = "s" }), 1, true)
    assert.matches("'session_token' must be", aws.check({ access_key_id = "A", secret_access_key = "s",
      session_token = 1 }), 1, true)
    assert.matches("must not contain a CR, LF or NUL", aws.check({ access_key_id = "A\n", secret_access_key = "s" }),
      1, true)
  end)
end)

describe("core's hashes", function()
  it("are the published values", function()
    assert.are.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", aws.hex(core.sha256("")))
    -- RFC 4231, test case 2
    assert.are.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      aws.hex(core.hmac_sha256("Jefe", "what do ya want for nothing?")))
    assert.are.equal(0xCBF43926, core.crc32("123456789"))
    assert.are.equal(core.crc32("123456789"), core.crc32("6789", core.crc32("12345")))
  end)
end)
