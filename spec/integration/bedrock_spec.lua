-- Claude on Amazon Bedrock (tide.provider.anthropic{ bedrock = ... }),
-- against the mock answering as Bedrock does: the model in the URL
-- (/invoke, /invoke-with-response-stream), anthropic_version in the body
-- and no model or stream there (Bedrock's "extraneous key" 400 otherwise),
-- a Bedrock API key as the bearer or IAM credentials signing every request
-- (the mock checks the Signature Version 4 in full, from its own canonical
-- request), a streamed reply framed as an AWS event stream, errors as
-- Bedrock's { message } with x-amzn-ErrorType; never an Anthropic key.
local helpers = require "helpers"
local tide = require "tide"
local provider = require "tide.provider"

local FAST = { attempts = 2, base_ms = 1, max_ms = 2 }
local with_mock = helpers.with_mock
local CREDS = { access_key_id = "AKIAMOCKEXAMPLE", secret_access_key = "mock/Secret+Key0123456789abcdefEXAMPLE",
  session_token = "IQoJb3JpZ2luX2VjEMOCK//session+token=" }
local MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"

local function bedrock(url, stream, extra, b)
  local o = { base_url = url, model = MODEL, stream = stream, retry = FAST,
              bedrock = b or { region = "eu-west-3", credentials = CREDS } }
  for k, v in pairs(extra or {}) do o[k] = v end
  return provider.anthropic(o)
end

local function mock_opts(t)
  t.bedrock = { credentials = CREDS, region = "eu-west-3", api_key = "ABSKbedrock-api-key" }
  return t
end

tide.agent { id = "on_bedrock", prompt = "You answer.", tools = { tide.tool {
  name = "lookup", description = "Looks up.", parameters = { type = "object", properties = { q = { type = "string" } } },
  handler = function(args) return "found " .. tostring(args.q) end } } }

for _, stream in ipairs({ true, false }) do
  local mode = stream and "streamed" or "not streamed"
  local path = "/model/" .. MODEL .. "/" .. (stream and "invoke-with-response-stream" or "invoke")

  describe("tide.provider.anthropic on Bedrock (" .. mode .. ")", function()
    it("signs every request with IAM credentials, as Bedrock checks them", function()
      with_mock(mock_opts { replies = { { tool_calls = { { name = "lookup", arguments = { q = "x" } } } }, "done" } },
        function(srv)
          local s = tide.session { agent = "on_bedrock", provider = bedrock(srv.url, stream) }
          assert.are.equal("done", assert(s:turn("go")))
          local reqs = srv:requests()
          assert.are.equal(2, #reqs)
          for _, req in ipairs(reqs) do
            assert.are.equal(path, req.path)
            assert.are.equal("bedrock-2023-05-31", req.json.anthropic_version)
            assert.is_nil(req.json.model)
            assert.is_nil(req.json.stream)
            assert.matches("^AWS4%-HMAC%-SHA256 Credential=AKIAMOCKEXAMPLE/%d+/eu%-west%-3/bedrock/aws4_request, "
              .. "SignedHeaders=content%-type;host;x%-amz%-date;x%-amz%-security%-token, Signature=%x+$",
              req.headers["authorization"])
            assert.are.equal(CREDS.session_token, req.headers["x-amz-security-token"])
            assert.is_nil(req.headers["x-api-key"])
          end
          -- the second request carries the first round, signed anew
          assert.are_not.equal(reqs[1].headers["authorization"], reqs[2].headers["authorization"])
          assert.are.equal("found x", reqs[2].json.messages[3].content[1].content)
        end)
    end)

    it("is refused for a wrong secret, and the error names neither it nor the token", function()
      with_mock(mock_opts { replies = { "never" } }, function(srv)
        local wrong = { access_key_id = CREDS.access_key_id, secret_access_key = "not-the-secret-key-at-all",
          session_token = CREDS.session_token }
        local s = tide.session { agent = "on_bedrock",
          provider = bedrock(srv.url, stream, nil, { region = "eu-west-3", credentials = wrong }) }
        local _, err = s:turn("go")
        assert.are.equal("ProviderError", err.code)
        assert.are.equal(403, err.status)
        assert.are.equal("InvalidSignatureException", err.type)
        assert.are.equal("mock-bedrock-request", err.request_id)
        assert.matches("InvalidSignatureException: The request signature we calculated does not match",
          err.message, 1, true)
        assert.are.equal(1, #srv:requests()) -- (a 403 is not retried)
      end)
    end)

    it("takes a Bedrock API key as the bearer", function()
      with_mock(mock_opts { replies = { "hi" } }, function(srv)
        local p = bedrock(srv.url, stream, { api_key = "ABSKbedrock-api-key" }, { region = "eu-west-3" })
        assert.are.equal("hi", assert(tide.session { agent = "on_bedrock", provider = p }:turn("go")))
        local req = srv:requests()[1]
        assert.are.equal("Bearer ABSKbedrock-api-key", req.headers["authorization"])
        assert.is_nil(req.headers["x-amz-date"])
      end)
    end)

    it("reads usage and stop reason, Bedrock's metrics beside them", function()
      with_mock(mock_opts { replies = { { text = "hello", usage = { input = 21, output = 4 } } } }, function(srv)
        local s = tide.session { agent = "on_bedrock", provider = bedrock(srv.url, stream) }
        assert.are.equal("hello", assert(s:turn("go")))
        local st = s:stats()
        assert.are.equal(21, st.tokens.input)
        assert.are.equal(4, st.tokens.output)
        assert.are.equal("stop", st.stop_reason)
      end)
    end)

    it("retries a throttling and says so as RateLimited when it stays", function()
      local throttled = stream and { fault = "exception", text = "half" } or { fault = "status", status = 429 }
      with_mock(mock_opts { replies = { throttled, "after" } }, function(srv)
        local s = tide.session { agent = "on_bedrock", provider = bedrock(srv.url, stream) }
        assert.are.equal("after", assert(s:turn("go")))
        assert.are.equal(2, #srv:requests())
      end)
      with_mock(mock_opts { replies = { throttled, throttled } }, function(srv)
        local s = tide.session { agent = "on_bedrock", provider = bedrock(srv.url, stream) }
        local _, err = s:turn("go")
        assert.are.equal("RateLimited", err.code)
        if stream then
          assert.matches("throttlingException: Too many requests", err.message, 1, true)
        else
          assert.are.equal("ThrottlingException", err.type)
        end
      end)
    end)
  end)
end

for _, stream in ipairs({ true, false }) do
  describe("tide.provider.anthropic on Bedrock's Mantle endpoint (" .. (stream and "streamed" or "not streamed") .. ")",
    function()
    it("speaks the Messages API itself, signed for bedrock-mantle", function()
      with_mock(mock_opts { replies = { { tool_calls = { { name = "lookup", arguments = { q = "y" } } } }, "done" } },
        function(srv)
          local p = bedrock(srv.url .. "/anthropic", stream, { model = "anthropic.claude-sonnet-4-5" },
            { region = "eu-west-3", credentials = CREDS, mantle = true })
          assert.are.equal("done", assert(tide.session { agent = "on_bedrock", provider = p }:turn("go")))
          for _, req in ipairs(srv:requests()) do
            assert.are.equal("/anthropic/v1/messages", req.path)
            assert.are.equal("anthropic.claude-sonnet-4-5", req.json.model)
            assert.are.equal(stream, req.json.stream)
            assert.is_nil(req.json.anthropic_version)
            assert.are.equal("2023-06-01", req.headers["anthropic-version"])
            assert.matches("^AWS4%-HMAC%-SHA256 Credential=AKIAMOCKEXAMPLE/%d+/eu%-west%-3/bedrock%-mantle/aws4_request",
              req.headers["authorization"])
          end
        end)
    end)

    it("is refused when signed for Bedrock's runtime instead", function()
      with_mock(mock_opts { replies = { "never" } }, function(srv)
        local p = bedrock(srv.url .. "/anthropic", stream, nil, { region = "eu-west-3", credentials = CREDS })
        p.base_url = srv.url .. "/anthropic" -- (the runtime's signature, sent to Mantle's path)
        p._url = function(self) return self.base_url .. "/v1/messages" end
        local _, err = tide.session { agent = "on_bedrock", provider = p }:turn("go")
        assert.are.equal(403, err.status)
      end)
    end)

    it("takes a Bedrock API key as the bearer", function()
      with_mock(mock_opts { replies = { "hi" } }, function(srv)
        local p = bedrock(srv.url .. "/anthropic", stream, { api_key = "ABSKbedrock-api-key" },
          { region = "eu-west-3", mantle = true })
        assert.are.equal("hi", assert(tide.session { agent = "on_bedrock", provider = p }:turn("go")))
        assert.are.equal("Bearer ABSKbedrock-api-key", srv:requests()[1].headers["authorization"])
      end)
    end)
  end)
end

describe("tide.provider.anthropic on Bedrock, its event stream", function()
  it("hands text to a listener as the frames come", function()
    with_mock(mock_opts { replies = { "one two three four" } }, function(srv)
      local s = tide.session { agent = "on_bedrock", provider = bedrock(srv.url, true) }
      local got = {}
      assert.are.equal("one two three four", assert(s:turn("go", { on_delta = function(d) got[#got + 1] = d end })))
      assert.is_true(#got > 1)
      assert.are.equal("one two three four", table.concat(got))
    end)
  end)

  it("fails a frame whose CRC does not match as MalformedResponse", function()
    with_mock(mock_opts { replies = { { text = "x", fault = "malformed" }, { text = "x", fault = "malformed" } } },
      function(srv)
        local s = tide.session { agent = "on_bedrock", provider = bedrock(srv.url, true) }
        local _, err = s:turn("go")
        assert.are.equal("MalformedResponse", err.code)
        assert.matches("invalid AWS event stream: the message's CRC does not match", err.message, 1, true)
      end)
  end)

  it("does not retry an exception that is the request's fault", function()
    with_mock(mock_opts { replies = { { fault = "exception", exception = "validationException", text = "x" }, "no" } },
      function(srv)
        local s = tide.session { agent = "on_bedrock", provider = bedrock(srv.url, true) }
        local _, err = s:turn("go")
        assert.are.equal("ProviderError", err.code)
        assert.is_falsy(err.retryable)
        assert.are.equal(1, #srv:requests())
      end)
  end)
end)

describe("tide.provider.anthropic on Bedrock, its credentials", function()
  it("asks a credentials function once, and again when the seconds it gave have passed", function()
    local calls = 0
    local function creds()
      calls = calls + 1
      return CREDS, calls == 1 and 3600 or 61
    end
    with_mock(mock_opts { default = "ok" }, function(srv)
      local p = bedrock(srv.url, true, nil, { region = "eu-west-3", credentials = creds })
      local s = tide.session { agent = "on_bedrock", provider = p }
      assert.are.equal("ok", assert(s:turn("a")))
      assert.are.equal("ok", assert(s:turn("b")))
      assert.are.equal(1, calls)
      p._aws_until = 0 -- (as if the hour had passed)
      assert.are.equal("ok", assert(s:turn("c")))
      assert.are.equal(2, calls)
    end)
  end)

  it("asks a credentials function once for sessions that start together", function()
    local calls = 0
    with_mock(mock_opts { default = "ok" }, function(srv)
      local core = require "tide.core"
      local p = bedrock(srv.url, false, nil, { region = "eu-west-3", credentials = function()
        calls = calls + 1
        core.sleep(20) -- (STS or a metadata service takes its time)
        return CREDS, 3600
      end })
      local tasks = {}
      for i = 1, 20 do
        tasks[i] = tide.spawn(function() return tide.session { agent = "on_bedrock", provider = p }:turn("q") end)
      end
      for _, t in ipairs(tasks) do assert.are.equal("ok", assert(t:join())) end
      assert.are.equal(1, calls)
      assert.are.equal(20, #srv:requests())
    end)
  end)

  it("fails the request clearly when the function gives none, sending nothing", function()
    with_mock(mock_opts { default = "ok" }, function(srv)
      local p = bedrock(srv.url, true, nil, { region = "eu-west-3", credentials = function() return { access_key_id = "A" } end })
      local _, err = tide.session { agent = "on_bedrock", provider = p }:turn("a")
      assert.are.equal("ProviderError", err.code)
      assert.matches("the bedrock.credentials function gave no credentials: needs 'secret_access_key'", err.message, 1, true)
      assert.are.equal(0, #srv:requests())
    end)
  end)

  it("keeps the secret key and session token out of an error that echoes them", function()
    with_mock(mock_opts { replies = { function(req)
      return { fault = "status", status = 400, body = { error = { type = "invalid_request_error", message =
        "bad: " .. tostring(req.headers["x-amz-security-token"]) .. " " .. CREDS.secret_access_key } } }
    end } }, function(srv)
      local _, err = tide.session { agent = "on_bedrock", provider = bedrock(srv.url, false) }:turn("a")
      assert.are.equal(400, err.status)
      local all = tostring(err.message) .. tostring(err.body)
      assert.is_nil(all:find(CREDS.session_token, 1, true))
      assert.is_nil(all:find(CREDS.secret_access_key, 1, true))
      assert.is_truthy(all:find("redacted", 1, true))
    end)
  end)
end)

describe("tide.provider.anthropic on Bedrock, its model ids", function()
  it("defaults to the global inference profile, which Bedrock serves on demand", function()
    with_mock(mock_opts { replies = { "hi" } }, function(srv)
      local p = provider.anthropic { base_url = srv.url, stream = false, retry = FAST,
        bedrock = { region = "eu-west-3", credentials = CREDS } }
      if not os.getenv("TIDE_MODEL") then
        assert.are.equal("global.anthropic.claude-sonnet-4-5-20250929-v1:0", p.model)
      end
      assert.are.equal("hi", assert(tide.session { agent = "on_bedrock", provider = p }:turn("go")))
    end)
  end)

  it("says what Bedrock says of a newer model's own id: use an inference profile", function()
    with_mock(mock_opts { replies = { "never" } }, function(srv)
      local p = bedrock(srv.url, false, { model = "anthropic.claude-sonnet-4-5-20250929-v1:0" })
      local _, err = tide.session { agent = "on_bedrock", provider = p }:turn("go")
      assert.are.equal(400, err.status)
      assert.are.equal("ValidationException", err.type)
      assert.matches("Invocation of model ID anthropic.claude-sonnet-4-5-20250929-v1:0 with on-demand throughput "
        .. "isn\u{2019}t supported. Retry your request with the ID or ARN of an inference profile", err.message, 1, true)
      assert.are.equal(1, #srv:requests()) -- (a 400 is not retried)
    end)
  end)
end)

describe("tide.provider.anthropic bedrock option", function()
  it("encodes the model id as the SDK does: ':' kept, an ARN's '/' as %2F", function()
    local function url(model, stream)
      return provider.anthropic({ bedrock = { region = "us-west-2", credentials = CREDS }, model = model,
        stream = stream }):_url()
    end
    assert.are.equal("https://bedrock-runtime.us-west-2.amazonaws.com/model/anthropic.claude-3-5-sonnet-20241022-v2:0"
      .. "/invoke", url("anthropic.claude-3-5-sonnet-20241022-v2:0", false))
    assert.are.equal("https://bedrock-runtime.us-west-2.amazonaws.com/model/arn:aws:bedrock:us-east-1:123456789012:"
      .. "application-inference-profile%2Fjf2sje1c0jnb/invoke-with-response-stream",
      url("arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/jf2sje1c0jnb", true))
  end)

  it("moves an anthropic-beta header into the body", function()
    with_mock(mock_opts { replies = { "ok" } }, function(srv)
      local p = bedrock(srv.url, false, { headers = { ["anthropic-beta"] = "context-1m-2025-08-07, other-beta" } })
      assert(tide.session { agent = "on_bedrock", provider = p }:turn("a"))
      local req = srv:requests()[1]
      assert.are.same({ "context-1m-2025-08-07", "other-beta" }, req.json.anthropic_beta)
      assert.is_nil(req.headers["anthropic-beta"])
    end)
  end)

  it("names the service in a trace's chat spans as the GenAI conventions do", function()
    local attrs = require("tide.turn")._chat_attributes
    assert.are.equal("aws.bedrock", attrs(bedrock("http://x", true))["gen_ai.provider.name"])
  end)

  it("says what is wrong with it", function()
    local function fails(opts, want)
      local ok, err = pcall(provider.anthropic, opts)
      assert.is_false(ok)
      assert.matches(want, tostring(err), 1, true)
    end
    fails({ bedrock = { region = "r", credentials = CREDS, pofile = "p" } }, "unknown option 'bedrock.pofile'")
    fails({ bedrock = { region = "r", credentials = CREDS, profile = "p" } },
      "'bedrock.profile' and 'bedrock.credentials' cannot both be given")
    fails({ bedrock = { region = "r", profile = 42 } }, "'bedrock.profile' must be the name of a profile")
    fails({ bedrock = { region = "r", credentials = CREDS, mantle = "yes" } }, "'bedrock.mantle' must be a boolean")
    assert.are.equal("https://bedrock-mantle.us-west-2.api.aws/anthropic/v1/messages", provider.anthropic({
      bedrock = { region = "us-west-2", credentials = CREDS, mantle = true } }):_url())
    fails({ bedrock = { region = "r/x", credentials = CREDS } }, "'bedrock.region' must be a region")
    fails({ bedrock = { region = "r", credentials = { access_key_id = "A" } } },
      "'bedrock.credentials' needs 'secret_access_key'")
    fails({ api_key = "k", bedrock = { region = "r", credentials = CREDS } },
      "'bedrock.credentials' and 'api_key' cannot both be given")
    fails({ vertex = { project = "p", region = "r" }, bedrock = { region = "r", credentials = CREDS } },
      "'vertex' and 'bedrock' cannot both be given")
    local ok0, err0 = pcall(helpers.provider_in_env, { HOME = "/nonexistent" }, provider.anthropic,
      { bedrock = { credentials = CREDS } })
    assert.is_false(ok0)
    assert.matches("'bedrock.region' must be a region (or set AWS_REGION, or a region in the profile)", tostring(err0),
      1, true)
    if not (os.getenv("AWS_BEARER_TOKEN_BEDROCK") or os.getenv("AWS_ACCESS_KEY_ID")) then
      -- nothing given: the SDKs' default chain, asked at the first request
      -- (spec/integration/aws_credentials_spec.lua)
      local p = provider.anthropic { bedrock = { region = "r" } }
      assert.are.equal("function", type(p.aws_credentials))
      assert.is_nil(p.aws)
    end
    local ok, err = pcall(provider.openai, { bedrock = { region = "r" } })
    assert.is_false(ok)
    assert.matches("unknown option 'bedrock'", tostring(err), 1, true)
  end)
end)
