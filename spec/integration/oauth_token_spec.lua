-- An OAuth access token instead of a key (the `token` option): Microsoft
-- Entra ID for Azure OpenAI and Claude on Foundry (the official SDKs'
-- azure_ad_token_provider), Google's for Vertex AI. It goes as a bearer
-- wherever a key would go, is asked for again when it runs out, and never
-- reaches an error.
local helpers = require "helpers"
local tide = require "tide"
local provider = require "tide.provider"

local FAST = { attempts = 2, base_ms = 1, max_ms = 2 }

describe("the token option", function()
  it("goes as a bearer at Azure and Foundry, in place of their api-key", function()
    local function headers(p)
      assert(p._before_request(p))
      return p:_headers()
    end
    local token = function() return "eyJ0.entra", 3600 end
    local h = headers(provider.openai { base_url = "https://res.openai.azure.com/openai/v1", token = token })
    assert.are.equal("Bearer eyJ0.entra", h.authorization)
    assert.is_nil(h["api-key"])
    h = headers(provider.anthropic { base_url = "https://res.services.ai.azure.com/anthropic/v1", token = token })
    assert.are.equal("Bearer eyJ0.entra", h.authorization)
    assert.is_nil(h["x-api-key"])
    assert.is_nil(h["api-key"])
    h = headers(provider.openai { api = "responses", base_url = "https://res.openai.azure.com/openai/v1",
      token = token })
    assert.are.equal("Bearer eyJ0.entra", h.authorization)
  end)

  it("is asked for once per lifetime, in a session's requests", function()
    local calls = 0
    helpers.with_mock({ default = "ok" }, function(srv)
      local p = provider.openai { base_url = srv.url .. "/v1", model = "m", retry = FAST,
        token = function() calls = calls + 1; return "tok" .. calls, 3600 end }
      tide.agent { id = "entra", prompt = "You answer." }
      local s = tide.session { agent = "entra", provider = p }
      assert.are.equal("ok", assert(s:turn("a")))
      assert.are.equal("ok", assert(s:turn("b")))
      assert.are.equal(1, calls)
      assert.are.equal("Bearer tok1", srv:requests()[2].headers.authorization)
    end)
  end)

  it("is asked for once when many sessions start together, and again after a failure", function()
    local calls, fail = 0, true
    helpers.with_mock({ default = "ok" }, function(srv)
      local core = require "tide.core"
      local p = provider.openai { base_url = srv.url .. "/v1", model = "m", retry = FAST,
        token = function()
          calls = calls + 1
          core.sleep(20) -- (a token endpoint takes its time)
          if fail then error("login.microsoftonline.com: timed out", 0) end
          return "tok" .. calls, 3600
        end }
      tide.agent { id = "entra_many", prompt = "You answer." }
      local function twenty()
        local tasks, out = {}, {}
        for i = 1, 20 do
          tasks[i] = tide.spawn(function() return tide.session { agent = "entra_many", provider = p }:turn("q") end)
        end
        for i, t in ipairs(tasks) do out[i] = { t:join() } end
        return out
      end
      -- the first renewal fails: every session that waited for it says so
      for _, r in ipairs(twenty()) do
        assert.is_nil(r[1])
        assert.matches("the token function gave no access token: login.microsoftonline.com: timed out", r[2].message,
          1, true)
      end
      assert.are.equal(1, calls)
      assert.are.equal(0, #srv:requests())
      -- the next sessions ask again, once, and all go with that token
      fail = false
      for _, r in ipairs(twenty()) do assert.are.equal("ok", r[1]) end
      assert.are.equal(2, calls)
      assert.are.equal(20, #srv:requests())
      for _, req in ipairs(srv:requests()) do assert.are.equal("Bearer tok2", req.headers.authorization) end
    end)
  end)

  it("never reaches an error, even one that echoes it", function()
    helpers.with_mock({ replies = { function(req)
      return { fault = "status", status = 401, body = '{"error":{"message":"bad token: ' .. req.headers.authorization
        .. '","type":"invalid_request_error"}}' }
    end } }, function(srv)
      local p = provider.openai { base_url = srv.url .. "/v1", model = "m", retry = FAST,
        token = function() return "eyJhbGciOiJSUzI1NiJ9.secret-entra-token" end }
      local _, err = p:complete(p:body(p:encode_prefix("s", {}), { p:encode_message({ role = "user", content = "q" }) }))
      assert.are.equal(401, err.status)
      local all = tostring(err.message) .. tostring(err.body)
      assert.is_nil(all:find("secret-entra-token", 1, true))
      assert.is_truthy(all:find("redacted", 1, true))
    end)
  end)

  it("must be a function", function()
    local ok, err = pcall(provider.openai, { token = "eyJ0" })
    assert.is_false(ok)
    assert.matches("'token' must be a function, got string", tostring(err), 1, true)
  end)
end)

-- A gateway in front of Anthropic's API (LiteLLM, a company's proxy) takes
-- a bearer token: the official SDK's auth_token, ANTHROPIC_AUTH_TOKEN.
describe("the auth_token option of tide.provider.anthropic", function()
  it("goes as a bearer, beside the key when there is one, from the option or ANTHROPIC_AUTH_TOKEN", function()
    helpers.with_mock({ default = "ok" }, function(srv)
      local function sent(env, opts)
        local p = helpers.provider_in_env(env, function()
          local o = { base_url = srv.url .. "/v1", model = "m", retry = FAST }
          for k, v in pairs(opts or {}) do o[k] = v end
          return provider.anthropic(o)
        end)
        assert.are.equal("ok", assert(p:complete(p:body(p:encode_prefix("s", {}),
          { p:encode_message({ role = "user", content = "q" }) }))).text)
        local reqs = srv:requests()
        return reqs[#reqs].headers
      end
      local h = sent({ ANTHROPIC_AUTH_TOKEN = "gw-env" })
      assert.are.equal("Bearer gw-env", h.authorization)
      assert.is_nil(h["x-api-key"])
      h = sent({ ANTHROPIC_AUTH_TOKEN = "gw-env", ANTHROPIC_API_KEY = "sk-env" }, { auth_token = "gw-opt" })
      assert.are.equal("Bearer gw-opt", h.authorization)
      assert.are.equal("sk-env", h["x-api-key"])
      h = sent({}, { api_key = "sk" })
      assert.is_nil(h.authorization)
    end)
  end)

  it("never reaches an error, and is refused where it means nothing", function()
    helpers.with_mock({ replies = { function(req)
      return { fault = "status", status = 401, body = '{"type":"error","error":{"type":"authentication_error",'
        .. '"message":"bad: ' .. req.headers.authorization .. '"}}' }
    end } }, function(srv)
      local p = provider.anthropic { base_url = srv.url .. "/v1", model = "m", retry = FAST,
        auth_token = "gw-secret-token-123" }
      local _, err = p:complete(p:body(p:encode_prefix("s", {}), { p:encode_message({ role = "user", content = "q" }) }))
      assert.are.equal(401, err.status)
      assert.is_nil((tostring(err.message) .. tostring(err.body)):find("gw-secret-token-123", 1, true))
    end)
    for opts, why in pairs({
      [{ auth_token = "" }] = "'auth_token' must be a non-empty string",
      [{ auth_token = "a\nb" }] = "'auth_token' must be a non-empty string without CR, LF or NUL",
      [{ auth_token = "t", vertex = { project = "p", region = "us-east5" } }] = "'auth_token' is for Anthropic's API",
    }) do
      local ok, err = pcall(provider.anthropic, opts)
      assert.is_false(ok)
      assert.matches(why, tostring(err), 1, true)
    end
    local ok, err = pcall(provider.openai, { auth_token = "t" })
    assert.is_false(ok)
    assert.matches("unknown option 'auth_token'", tostring(err), 1, true)
    ok, err = pcall(helpers.provider_in_env, { ANTHROPIC_AUTH_TOKEN = "t\r" }, function() return provider.anthropic {} end)
    assert.is_false(ok)
    assert.matches("ANTHROPIC_AUTH_TOKEN must not contain a CR, LF or NUL", tostring(err), 1, true)
  end)
end)
