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

describe("core.es256_sign and core.random_bytes", function()
  -- the Rust SDK's DPoP test key, in SEC1 and PKCS#8 form, and its public point
  local SEC1 = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBMB/RwQERsVoqWRQG4zK8CnaAa5dfrpbm+9tFdBh3z4oAoGCCqGSM49\n"
    .. "AwEHoUQDQgAEWb1VLi1EA2hJaTz4yYuxSELvY+1GAfL+8rUTCAdiFid87Bf6GY+s\n2+1RpqDv0RpZiDIMCrZrsAh+RK9S3QCaGA==\n"
    .. "-----END EC PRIVATE KEY-----\n"

  it("signs as ES256 (r and s, 32 bytes each) and gives the key's public point", function()
    local sig, x, y = core.es256_sign(SEC1, "message")
    assert.are.equal(64, #sig)
    local unb64url = require("helpers").base64url_decode
    assert.are.equal(unb64url("Wb1VLi1EA2hJaTz4yYuxSELvY-1GAfL-8rUTCAdiFic"), x)
    assert.are.equal(unb64url("fOwX-hmPrNvtUaag79EaWYgyDAq2a7AIfkSvUt0Amhg"), y)
    -- ECDSA draws a fresh nonce: two signatures of one message differ
    assert.are_not.equal(sig, (core.es256_sign(SEC1, "message")))
    -- the same key as PKCS#8 (openssl's own conversion)
    local dir = require("helpers").tmpdir()
    local f = io.open(dir .. "/k.pem", "w"); f:write(SEC1); f:close()
    local p8 = require("helpers").sh(("openssl pkcs8 -topk8 -nocrypt -in %q 2>/dev/null"):format(dir .. "/k.pem"))
    require("helpers").rmdir(dir)
    local _, x2 = core.es256_sign(p8, "m")
    assert.are.equal(x, x2)
    -- keys it cannot use say so; nothing is asked on the terminal
    for _, bad in ipairs { "junk", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n" } do
      local none, why = core.es256_sign(bad, "m")
      assert.is_nil(none)
      assert.are.equal("not a PEM P-256 EC private key", why)
    end
  end)

  it("gives random bytes, as many as asked", function()
    assert.are.equal(16, #core.random_bytes(16))
    assert.are_not.equal(core.random_bytes(16), core.random_bytes(16))
    assert.are.equal("", core.random_bytes(0))
    assert.has_error(function() core.random_bytes(-1) end)
    assert.has_error(function() core.random_bytes(5000) end)
  end)

  it("gives random hex ids, none repeated across many pool refills", function()
    local seen = {}
    for _ = 1, 2000 do -- (16-byte ids: 125 refills of the 256-byte pool)
      local id = core.random_hex(16)
      assert.matches("^[0-9a-f]+$", id)
      assert.are.equal(32, #id)
      assert.is_nil(seen[id])
      seen[id] = true
    end
    assert.are.equal(16, #core.random_hex(8))
    assert.are.equal(64, #core.random_hex(32))
    assert.has_error(function() core.random_hex(0) end, "bad argument #1 to 'random_hex' (from 1 to 32 bytes)")
    assert.has_error(function() core.random_hex(33) end)
  end)
end)
