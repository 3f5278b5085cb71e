-- The AWS SDKs' default credential chain (tide.provider.aws.chain), what
-- Claude on Bedrock signs with when it is given no credentials: each
-- source against a loopback endpoint answering as AWS's does (STS's
-- AssumeRoleWithWebIdentity XML, the container endpoint's and IMDSv2's
-- JSON, IMDSv2's session token), the order, a source that fails, and a
-- Bedrock session signing with what the chain found. The environment is
-- given to the chain, never the process's own: nothing leaves loopback.
local helpers = require "helpers"
local tide = require "tide"
local aws = require "tide.provider.aws"
local provider = require "tide.provider"

local with_mock = helpers.with_mock

-- An environment of `vars` alone (the instance metadata service off
-- unless a spec points it somewhere).
local function env_of(vars)
  return function(name)
    if name == "AWS_EC2_METADATA_DISABLED" and vars.AWS_EC2_METADATA_SERVICE_ENDPOINT == nil then return "true" end
    return vars[name]
  end
end

local tmpfile = helpers.tmpfile

local function iso(seconds_from_now) return os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + seconds_from_now) end

-- Runs the chain in a task: creds, ttl or nil, err.
local function resolve(vars, region)
  local ok, creds, ttl = pcall(aws.chain(env_of(vars), region))
  if not ok then return nil, creds end
  return creds, ttl
end

tide.agent { id = "chain_bedrock", prompt = "You answer." }

local DOC = { AccessKeyId = "ASIAMOCKCONTAINER", SecretAccessKey = "container/secret+key", Token = "container-session",
  RoleArn = "arn:aws:iam::123456789012:role/task" }

describe("tide.provider.aws.chain", function()
  it("takes the environment's keys first", function()
    tide.run(function()
      local creds = assert(resolve({ AWS_ACCESS_KEY_ID = "AKIAENV", AWS_SECRET_ACCESS_KEY = "env-secret",
        AWS_SHARED_CREDENTIALS_FILE = tmpfile("[default]\naws_access_key_id = AKIAFILE\naws_secret_access_key = f\n") }))
      assert.are.equal("AKIAENV", creds.access_key_id)
    end)
  end)

  it("reads the profile of the shared credentials file", function()
    local path = tmpfile("[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = d\n\n"
      .. "[work]\r\naws_access_key_id=AKIAWORK\r\naws_secret_access_key = work/secret\r\naws_session_token = wtok\r\n")
    tide.run(function()
      local creds, ttl = resolve({ AWS_SHARED_CREDENTIALS_FILE = path, AWS_PROFILE = "work" })
      assert.are.same({ access_key_id = "AKIAWORK", secret_access_key = "work/secret", session_token = "wtok" }, creds)
      assert.is_nil(ttl)
      assert.are.equal("AKIADEFAULT", resolve({ AWS_SHARED_CREDENTIALS_FILE = path }).access_key_id)
      local bad = tmpfile("[default]\naws_access_key_id = AKIAHALF\n")
      local _, err = resolve({ AWS_SHARED_CREDENTIALS_FILE = bad })
      assert.matches("the profile \"default\" of .* needs 'secret_access_key'", err)
      os.remove(bad)
    end)
    os.remove(path)
  end)

  it("exchanges a web identity token at STS, unsigned, for credentials and their expiry", function()
    local token_file = tmpfile("eyJhbGciOiJSUzI1NiJ9.pod-token\n")
    with_mock({ routes = { ["/"] = function(req)
      assert.are.equal("POST", req.method)
      assert.is_nil(req.headers["authorization"])
      return { status = 200, headers = { ["content-type"] = "text/xml" }, body = ([[
<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <SessionToken>FwoGZXIvYXdzEMOCK</SessionToken>
      <SecretAccessKey>sts/secret+key</SecretAccessKey>
      <Expiration>%s</Expiration>
      <AccessKeyId>ASIASTSMOCK</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>]]):format(iso(3600)) }
    end } }, function(srv)
      local creds, ttl = resolve({ AWS_WEB_IDENTITY_TOKEN_FILE = token_file,
        AWS_ROLE_ARN = "arn:aws:iam::123456789012:role/pod", AWS_ROLE_SESSION_NAME = "s1", AWS_ENDPOINT_URL_STS = srv.url })
      assert.are.same({ access_key_id = "ASIASTSMOCK", secret_access_key = "sts/secret+key",
        session_token = "FwoGZXIvYXdzEMOCK" }, creds)
      assert.is_true(ttl > 3590 and ttl <= 3600)
      local body = srv:requests()[1].body
      assert.matches("Action=AssumeRoleWithWebIdentity", body, 1, true)
      assert.matches("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fpod", body, 1, true)
      assert.matches("WebIdentityToken=eyJhbGciOiJSUzI1NiJ9.pod-token&", body .. "&", 1, true)
    end)
    os.remove(token_file)
  end)

  it("asks the container's endpoint, with its authorization token", function()
    local token_file = tmpfile("pod-identity-token\n")
    with_mock({ routes = { ["/v1/credentials"] = function(req)
      if req.headers["authorization"] ~= "pod-identity-token" then return { status = 401, body = "no" } end
      local doc = {}
      for k, v in pairs(DOC) do doc[k] = v end
      doc.Expiration = iso(7200)
      return { status = 200, headers = { ["content-type"] = "application/json" }, body = require("cjson").encode(doc) }
    end } }, function(srv)
      local creds, ttl = resolve({ AWS_CONTAINER_CREDENTIALS_FULL_URI = srv.url .. "/v1/credentials",
        AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE = token_file })
      assert.are.same({ access_key_id = "ASIAMOCKCONTAINER", secret_access_key = "container/secret+key",
        session_token = "container-session" }, creds)
      assert.is_true(ttl > 7190 and ttl <= 7200)
      -- a token in the environment does as well; none is refused here
      assert(resolve({ AWS_CONTAINER_CREDENTIALS_FULL_URI = srv.url .. "/v1/credentials",
        AWS_CONTAINER_AUTHORIZATION_TOKEN = "pod-identity-token" }))
      local _, err = resolve({ AWS_CONTAINER_CREDENTIALS_FULL_URI = srv.url .. "/v1/credentials",
        AWS_EC2_METADATA_SERVICE_ENDPOINT = srv.url })
      assert.matches("the container credentials endpoint failed: HTTP 401", err, 1, true) -- (the chain stops there)
    end)
    os.remove(token_file)
    local _, err = resolve({ AWS_CONTAINER_CREDENTIALS_FULL_URI = "http://example.com/creds" })
    assert.matches("must be https or a loopback or container address", err, 1, true)
    -- EKS Pod Identity's IPv6 address is a container address (asked, not refused: nothing listens here)
    tide.run(function()
      _, err = resolve({ AWS_CONTAINER_CREDENTIALS_FULL_URI = "http://[::1]:9/v1/credentials" })
      assert.is_nil(err:find("must be https", 1, true))
      _, err = resolve({ AWS_CONTAINER_CREDENTIALS_FULL_URI = "http://[2001:db8::1]/v1/credentials" })
      assert.matches("must be https or a loopback or container address", err, 1, true)
    end)
  end)

  it("asks the instance's metadata service with an IMDSv2 session token", function()
    local calls = {}
    local function need_token(req, ok)
      calls[#calls + 1] = req.method .. " " .. req.path
      if req.headers["x-aws-ec2-metadata-token"] ~= "imds-session" then return { status = 401, body = "" } end
      return ok
    end
    with_mock({ routes = {
      ["/latest/api/token"] = function(req)
        calls[#calls + 1] = req.method .. " " .. req.path
        if req.method ~= "PUT" or not req.headers["x-aws-ec2-metadata-token-ttl-seconds"] then
          return { status = 400, body = "" }
        end
        return { status = 200, body = "imds-session" }
      end,
      ["/latest/meta-data/iam/security-credentials/"] = function(req) return need_token(req, { body = "bedrock-role\n" }) end,
      ["/latest/meta-data/iam/security-credentials/bedrock-role"] = function(req)
        return need_token(req, { body = ('{"Code":"Success","LastUpdated":"%s","Type":"AWS-HMAC","AccessKeyId":'
          .. '"ASIAIMDS","SecretAccessKey":"imds/secret","Token":"imds-token","Expiration":"%s"}'):format(iso(-60),
          iso(21600)) })
      end,
    } }, function(srv)
      local creds, ttl = resolve({ AWS_EC2_METADATA_SERVICE_ENDPOINT = srv.url })
      assert.are.same({ access_key_id = "ASIAIMDS", secret_access_key = "imds/secret", session_token = "imds-token" }, creds)
      assert.is_true(ttl > 21590)
      assert.are.same({ "PUT /latest/api/token", "GET /latest/meta-data/iam/security-credentials/",
        "GET /latest/meta-data/iam/security-credentials/bedrock-role" }, calls)
    end)
  end)

  it("says there are none when no source has any", function()
    tide.run(function()
      local _, err = resolve({ HOME = "/nonexistent" })
      assert.matches("no AWS credentials found", err, 1, true)
    end)
  end)

  it("reads ISO 8601 times in UTC whatever the local zone", function()
    assert.are.equal(0, aws.epoch("1970-01-01T00:00:00Z"))
    assert.are.equal(951868800, aws.epoch("2000-03-01T00:00:00Z"))
    assert.are.equal(1796587200, aws.epoch("2026-12-06T20:00:00Z"))
    assert.is_nil(aws.epoch("yesterday"))
    -- a zone offset taken off, as dateutil reads it; a space for the T; fractions dropped
    assert.are.equal(1796587200 - 9 * 3600, aws.epoch("2026-12-06T20:00:00+09:00"))
    assert.are.equal(1796587200 + 5400, aws.epoch("2026-12-06T20:00:00-0130"))
    assert.are.equal(1796587200, aws.epoch("2026-12-06 20:00:00.123456Z"))
    assert.is_nil(aws.epoch("2026-12-06T20:00:00 PST"))
  end)

  it("asks again for credentials about to run out, not an hour later", function()
    local base = require "tide.provider.base"
    local function kept(ttl) return (base._deadline(ttl) - tide.core.hrtime()) / 1e9 end
    assert.is_true(kept(3600) > 3539 and kept(3600) <= 3540)
    assert.is_true(kept(nil) > 3299 and kept(nil) <= 3300) -- (an expiry nobody gave: an hour)
    assert.is_true(kept(100) > 49 and kept(100) <= 50)
    assert.is_true(kept(30) > 14 and kept(30) <= 15)
    assert.is_true(kept(0) <= 0 and kept(-20) <= 0)
  end)
end)

-- STS's answers, as the service writes them.
local function sts_ok()
  return { status = 200, headers = { ["content-type"] = "text/xml" }, body = ([[
<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <SessionToken>FwoGZXIvYXdzRETRIED</SessionToken>
      <SecretAccessKey>sts/retried</SecretAccessKey>
      <Expiration>%s</Expiration>
      <AccessKeyId>ASIARETRIED</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>]]):format(iso(3600)) }
end
local function sts_error(status, code, message)
  return { status = status, headers = { ["content-type"] = "text/xml" }, body = ([[
<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error>
    <Type>Sender</Type>
    <Code>%s</Code>
    <Message>%s</Message>
  </Error>
  <RequestId>4d8ae6e0-1a6b-4e52-b7a5-6f1c2f0e0d11</RequestId>
</ErrorResponse>]]):format(code, message) }
end

describe("tide.provider.aws.chain after a transient failure", function()
  local answers, quick = helpers.answers, helpers.quick_retries

  it("asks STS again after a 5xx, throttling or IDPCommunicationError, as botocore does", function()
    local token_file = tmpfile("eyJhbGciOiJSUzI1NiJ9.pod-token\n")
    local function env(srv, extra)
      local vars = { AWS_WEB_IDENTITY_TOKEN_FILE = token_file, AWS_ROLE_ARN = "arn:aws:iam::123456789012:role/pod",
        AWS_ENDPOINT_URL_STS = srv.url }
      for k, v in pairs(extra or {}) do vars[k] = v end
      return vars
    end
    quick(aws.retry, function()
      -- four failures a retry is for, then the credentials: five tries
      local flaky = { { status = 503, body = "" }, sts_error(400, "Throttling", "Rate exceeded"),
        sts_error(400, "IDPCommunicationError", "Couldn't reach the identity provider"), { status = 500, body = "" },
        sts_ok() }
      with_mock({ routes = { ["/"] = answers(flaky) } }, function(srv)
        local creds = assert(resolve(env(srv)))
        assert.are.equal("ASIARETRIED", creds.access_key_id)
        assert.are.equal(5, flaky.seen)
      end)
      -- a refusal is final, and says STS's code and words
      local refused = { sts_error(400, "InvalidIdentityToken", "Incorrect token audience"), sts_ok() }
      with_mock({ routes = { ["/"] = answers(refused) } }, function(srv)
        local _, err = resolve(env(srv))
        assert.matches("STS AssumeRoleWithWebIdentity failed: HTTP 400 InvalidIdentityToken: Incorrect token audience",
          err, 1, true)
        assert.are.equal(1, refused.seen)
      end)
      -- the tries botocore's settings give: five (legacy, its default), the
      -- standard mode's three, AWS_MAX_ATTEMPTS
      for _, case in ipairs { { {}, 5 }, { { AWS_RETRY_MODE = "standard" }, 3 }, { { AWS_MAX_ATTEMPTS = "2" }, 2 } } do
        local down = { { status = 503, body = "" } }
        with_mock({ routes = { ["/"] = answers(down) } }, function(srv)
          local _, err = resolve(env(srv, case[1]))
          assert.matches("STS AssumeRoleWithWebIdentity failed: HTTP 503", err, 1, true)
          assert.are.equal(case[2], down.seen)
        end)
      end
      -- no answer at all (a closed loopback port), tried again all the same
      tide.run(function()
        local _, err = resolve(env({ url = "http://127.0.0.1:9" }))
        assert.matches("STS AssumeRoleWithWebIdentity failed: ", err, 1, true)
      end)
    end)
    os.remove(token_file)
  end)

  it("asks the container's endpoint three times, a second apart in botocore", function()
    local doc = require("cjson").encode { AccessKeyId = "ASIACONTAINER2", SecretAccessKey = "c/s", Token = "t",
      Expiration = iso(3600) }
    quick(aws.retry, function()
      -- a failure, then a document without credentials, then credentials
      local flaky = { { status = 500, body = "busy" }, { status = 200, body = "{}" }, { status = 200, body = doc } }
      with_mock({ routes = { ["/creds"] = answers(flaky) } }, function(srv)
        local creds = assert(resolve({ AWS_CONTAINER_CREDENTIALS_FULL_URI = srv.url .. "/creds" }))
        assert.are.equal("ASIACONTAINER2", creds.access_key_id)
        assert.are.equal(3, flaky.seen)
      end)
      local down = { { status = 502, body = "" } }
      with_mock({ routes = { ["/creds"] = answers(down) } }, function(srv)
        local _, err = resolve({ AWS_CONTAINER_CREDENTIALS_FULL_URI = srv.url .. "/creds" })
        assert.matches("the container credentials endpoint failed: HTTP 502", err, 1, true)
        assert.are.equal(3, down.seen)
      end)
    end)
  end)

  it("asks the instance metadata service as often as AWS_METADATA_SERVICE_NUM_ATTEMPTS says", function()
    local creds_doc = ('{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"ASIAIMDS2","SecretAccessKey":"i/s",'
      .. '"Token":"it","Expiration":"%s"}'):format(iso(3600))
    local function routes()
      local t = {
        token = { { status = 503, body = "" }, { status = 200, body = "imds-session" } },
        role = { { status = 500, body = "" }, { status = 200, body = "role-a\n" } },
        creds = { { status = 200, body = "" }, { status = 200, body = creds_doc } },
      }
      return t, { ["/latest/api/token"] = answers(t.token),
        ["/latest/meta-data/iam/security-credentials/"] = answers(t.role),
        ["/latest/meta-data/iam/security-credentials/role-a"] = answers(t.creds) }
    end
    local seen, r = routes()
    with_mock({ routes = r }, function(srv)
      local creds = assert(resolve({ AWS_EC2_METADATA_SERVICE_ENDPOINT = srv.url, AWS_METADATA_SERVICE_NUM_ATTEMPTS = "2" }))
      assert.are.equal("ASIAIMDS2", creds.access_key_id)
      assert.are.same({ 2, 2, 2 }, { seen.token.seen, seen.role.seen, seen.creds.seen })
    end)
    -- one try unless it is set (botocore's default): the token's 503 is
    -- not on EC2, a 500 for the role is no role
    seen, r = routes()
    with_mock({ routes = r }, function(srv)
      local _, err = resolve({ AWS_EC2_METADATA_SERVICE_ENDPOINT = srv.url })
      assert.matches("no AWS credentials found", err, 1, true)
      assert.are.equal(1, seen.token.seen)
    end)
  end)
end)

describe("tide.provider.anthropic on Bedrock, with the default chain", function()
  it("signs with what the chain found, asked once, at the first request", function()
    local creds = { access_key_id = "ASIAMOCKCONTAINER", secret_access_key = "container/secret+key",
      session_token = "container-session" }
    local asked = 0
    with_mock({ default = "signed", bedrock = { credentials = creds, region = "us-west-2" }, routes = {
      ["/creds"] = function()
        asked = asked + 1
        local doc = {}
        for k, v in pairs(DOC) do doc[k] = v end
        doc.Expiration = iso(3600)
        return { body = require("cjson").encode(doc) }
      end } }, function(srv)
      local p = helpers.provider_in_env({ AWS_CONTAINER_CREDENTIALS_FULL_URI = srv.url .. "/creds",
        AWS_REGION = "us-west-2", HOME = "/nonexistent", AWS_EC2_METADATA_DISABLED = "true" }, provider.anthropic,
        { base_url = srv.url, bedrock = {} })
      local s = tide.session { provider = p, agent = "chain_bedrock" }
      assert.are.equal("signed", assert(s:turn("a")))
      assert.are.equal("signed", assert(s:turn("b")))
      assert.are.equal(1, asked)
      assert.matches("^AWS4%-HMAC%-SHA256 Credential=ASIAMOCKCONTAINER/%d+/us%-west%-2/bedrock/",
        srv:requests()[2].headers["authorization"])
    end)
  end)

  it("fails the first request, sending nothing, when the chain finds none", function()
    with_mock({ default = "never" }, function(srv)
      local p = helpers.provider_in_env({ AWS_REGION = "us-west-2", HOME = "/nonexistent",
        AWS_EC2_METADATA_DISABLED = "true" }, provider.anthropic, { base_url = srv.url, bedrock = {} })
      local _, err = tide.session { provider = p, agent = "chain_bedrock" }:turn("a")
      assert.are.equal("ProviderError", err.code)
      assert.matches("tide.provider.anthropic: Bedrock: no AWS credentials found", err.message, 1, true)
      assert.are.equal(0, #srv:requests())
    end)
  end)
end)
