-- Claude on Google Cloud's Vertex AI (tide.provider.anthropic{ vertex = ...
-- }), against the mock answering as Vertex does: the model in the URL
-- (rawPredict, streamRawPredict), anthropic_version in the body, a Google
-- OAuth access token as the bearer (Google's 401 without one), renewed by
-- the token function when it runs out; never an Anthropic key.
local helpers = require "helpers"
local tide = require "tide"
local provider = require "tide.provider"

local FAST = { attempts = 2, base_ms = 1, max_ms = 2 }
local with_mock = helpers.with_mock

local function vertex(url, stream, extra)
  local o = { base_url = url .. "/v1", model = "claude-sonnet-4-5@20250929", stream = stream, retry = FAST,
              vertex = { project = "my-proj", region = "us-east5" } }
  for k, v in pairs(extra or {}) do o[k] = v end
  return provider.anthropic(o)
end

tide.agent { id = "on_vertex", prompt = "You answer.", tools = { tide.tool {
  name = "lookup", description = "Looks up.", parameters = { type = "object", properties = { q = { type = "string" } } },
  handler = function(args) return "found " .. tostring(args.q) end } } }

for _, stream in ipairs({ true, false }) do
  local mode = stream and "streamed" or "not streamed"

  describe("tide.provider.anthropic on Vertex AI (" .. mode .. ")", function()
    it("posts to the model's rawPredict with the version in the body and the token as bearer", function()
      with_mock({ replies = { { tool_calls = { { name = "lookup", arguments = { q = "x" } } } }, "done" } },
        function(srv)
          local s = tide.session { agent = "on_vertex", provider = vertex(srv.url, stream, { api_key = "ya29.token" }) }
          assert.are.equal("done", assert(s:turn("go")))
          local req = srv:requests()[1]
          assert.are.equal("/v1/projects/my-proj/locations/us-east5/publishers/anthropic/models/"
            .. "claude-sonnet-4-5@20250929:" .. (stream and "streamRawPredict" or "rawPredict"), req.path)
          assert.are.equal("vertex-2023-10-16", req.json.anthropic_version)
          assert.is_nil(req.json.model)
          assert.are.equal(stream, req.json.stream)
          assert.are.equal("Bearer ya29.token", req.headers["authorization"])
          assert.is_nil(req.headers["x-api-key"])
          assert.is_nil(req.headers["anthropic-version"])
        end)
    end)

    it("gets Google's 401 for a request without a token", function()
      with_mock({ replies = { "never" } }, function(srv)
        local p = vertex(srv.url, stream, { api_key = "ya29.token" })
        p.api_key = nil -- (tide never sends one: see google_credentials_spec.lua)
        local _, err = tide.session { agent = "on_vertex", provider = p }:turn("go")
        assert.are.equal("ProviderError", err.code)
        assert.are.equal(401, err.status)
        assert.matches("Expected OAuth 2 access token", err.message, 1, true)
      end)
    end)
  end)
end

describe("tide.provider.anthropic on Vertex AI, its token", function()
  it("asks the token function once, and again when the seconds it gave have passed", function()
    local calls = 0
    local function token()
      calls = calls + 1
      return "ya29.t" .. calls, calls == 1 and 3600 or 61
    end
    with_mock({ default = "ok" }, function(srv)
      local p = vertex(srv.url, true, { token = token })
      local s = tide.session { agent = "on_vertex", provider = p }
      assert.are.equal("ok", assert(s:turn("a")))
      assert.are.equal("ok", assert(s:turn("b")))
      assert.are.equal(1, calls)
      assert.are.equal("Bearer ya29.t1", srv:requests()[2].headers["authorization"])
      p._token_until = 0 -- (as if the hour had passed)
      assert.are.equal("ok", assert(s:turn("c")))
      assert.are.equal(2, calls)
      assert.are.equal("Bearer ya29.t2", srv:requests()[3].headers["authorization"])
    end)
  end)

  it("fails the request clearly when the token function fails, naming no token", function()
    with_mock({ default = "ok" }, function(srv)
      local p = vertex(srv.url, true, { token = function() error("gcloud: not logged in") end })
      local s = tide.session { agent = "on_vertex", provider = p }
      local _, err = s:turn("a")
      assert.are.equal("ProviderError", err.code)
      assert.matches("the token function gave no access token: .*gcloud: not logged in", err.message)
      assert.are.equal(0, #srv:requests())
    end)
  end)
end)

describe("tide.provider.anthropic vertex option", function()
  it("picks the host of the region as the official SDK does", function()
    local function url(region)
      return provider.anthropic({ vertex = { project = "p", region = region }, model = "m" }):_url()
    end
    assert.are.equal("https://us-east5-aiplatform.googleapis.com/v1/projects/p/locations/us-east5/publishers/"
      .. "anthropic/models/m:streamRawPredict", url("us-east5"))
    assert.matches("^https://aiplatform%.googleapis%.com/v1/projects/p/locations/global/", url("global"))
    assert.matches("^https://aiplatform%.eu%.rep%.googleapis%.com/v1/", url("eu"))
  end)

  it("names the service in a trace's chat spans as the GenAI conventions do", function()
    local attrs = require("tide.turn")._chat_attributes
    local name = function(p) return attrs(p)["gen_ai.provider.name"] end
    assert.are.equal("gcp.vertex_ai", name(provider.anthropic({ vertex = { project = "p", region = "r" } })))
    assert.are.equal("anthropic", name(provider.anthropic({ api_key = "k" })))
    assert.are.equal("groq", name(provider.openai({ base_url = "https://api.groq.com/openai/v1", api_key = "k" })))
    assert.are.equal("azure.ai.openai", name(provider.openai({
      base_url = "https://res.openai.azure.com/openai/deployments/d", api_key = "k" })))
    assert.are.equal("openai", name(provider.openai({ api = "responses", api_key = "k" })))
  end)

  it("says what is wrong with it", function()
    local function fails(v, want)
      local ok, err = pcall(provider.anthropic, { vertex = v, model = "m" })
      assert.is_false(ok)
      assert.matches(want, tostring(err), 1, true)
    end
    fails({ project = "p", region = "r", zone = "z" }, "unknown option 'vertex.zone'")
    fails({ project = "p", region = "r", token = function() end },
      "unknown option 'vertex.token' (the access token function is the provider's 'token' option)")
    fails({ project = "p/x", region = "r" }, "'vertex.project' must be a project id")
    if not os.getenv("CLOUD_ML_REGION") then
      fails({ project = "p" }, "'vertex.region' must be a region (or set CLOUD_ML_REGION)")
    end
    local ok, err = pcall(provider.openai, { vertex = { project = "p", region = "r" } })
    assert.is_false(ok)
    assert.matches("unknown option 'vertex'", tostring(err), 1, true)
  end)
end)
