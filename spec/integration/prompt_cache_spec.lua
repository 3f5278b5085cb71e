-- Anthropic prompt caching (`prompt_cache = true | "5m" | "1h"`) against
-- the mock's prompt cache, which reads and writes prefixes at a request's
-- breakpoints as the API does (and refuses what the API refuses): on
-- Anthropic's own API the conversation is cached through the request's
-- top-level cache_control, so each request of a tool loop reads the one
-- before; on Vertex AI and Bedrock the prefix alone; an hour's cache is
-- written as such and priced at its own price.
local helpers = require "helpers"
local tide = require "tide"
local provider = require "tide.provider"
local testing = require "tide.testing"
local cjson = require "cjson"

local with_mock = helpers.with_mock

tide.agent { id = "cache_looper", prompt = "You look things up, one at a time, until you are done. "
  .. string.rep("Be thorough. ", 40), tools = { tide.tool { name = "lookup", description = "Looks an item up.",
    parameters = { type = "object", properties = { q = { type = "string" } }, required = { "q" } },
    handler = function(a) return "found " .. a.q .. ": " .. string.rep("detail ", 60) end } } }

-- The usage of each provider call of a session's last turn, in order.
local function usages(s)
  local out = {}
  for _, m in ipairs(s:history()) do
    if m.role == "assistant" then out[#out + 1] = m.usage end
  end
  return out
end

local MOCK = { default = testing.tool_loop(3), anthropic = { cache_min_tokens = 50 } }

describe("Anthropic prompt caching", function()
  for _, stream in ipairs { true, false } do
    local mode = stream and "streamed" or "not streamed"

    it("caches the conversation on Anthropic's API: each request reads the one before (" .. mode .. ")", function()
      with_mock(MOCK, function(srv)
        local p = provider.anthropic { base_url = srv.url, api_key = "k", model = "claude-sonnet-4-5", stream = stream,
          prompt_cache = true }
        local s = tide.session { agent = "cache_looper", provider = p }
        assert.are.equal("done after 3 lookups", assert(s:turn("look up three things")))
        local u = usages(s)
        assert.are.equal(4, #u)
        assert.are.equal(0, u[1].cached)
        assert.is_true(u[1].cache_write > u[1].input / 2) -- (the breakpoint is the last block)
        for i = 2, 4 do
          -- all the request before read and wrote is read; only the new round is written
          assert.are.equal(u[i - 1].cached + u[i - 1].cache_write, u[i].cached, "request " .. i)
          assert.is_true(u[i].cache_write > 0 and u[i].cache_write < u[i].cached, "request " .. i)
        end
        local sent = srv:requests()[1].json
        assert.are.same({ type = "ephemeral" }, sent.cache_control)
        assert.are.same({ type = "ephemeral" }, sent.system[1].cache_control)
        -- the turn's tokens: the whole prompt each time, mostly read from the cache
        local t = s:stats().tokens
        assert.is_true(t.cached > t.input / 2)
      end)
    end)
  end

  it("caches the prefix alone on Vertex AI, which takes breakpoints on blocks only", function()
    with_mock(MOCK, function(srv)
      local p = provider.anthropic { base_url = srv.url, api_key = "ya29.token", model = "claude-sonnet-4-5",
        vertex = { project = "p", region = "us-east5" }, prompt_cache = true }
      local s = tide.session { agent = "cache_looper", provider = p }
      assert(s:turn("look up three things"))
      local u = usages(s)
      assert.is_nil(srv:requests()[1].json.cache_control)
      assert.is_true(u[1].cache_write > 0)
      for i = 2, 4 do -- (the same prefix, read; the conversation never)
        assert.are.equal(u[1].cache_write, u[i].cached, "request " .. i)
        assert.are.equal(0, u[i].cache_write, "request " .. i)
      end
    end)
  end)

  it("writes an hour's cache with prompt_cache = \"1h\", priced as one", function()
    with_mock(MOCK, function(srv)
      tide.prices { ["claude-hour-test"] = { input = 3, cached = 0.3, cache_write = 3.75, cache_write_1h = 6,
        output = 15 } }
      local p = provider.anthropic { base_url = srv.url, api_key = "k", model = "claude-hour-test", prompt_cache = "1h" }
      local s = tide.session { agent = "cache_looper", provider = p }
      assert(s:turn("look up three things"))
      local sent = srv:requests()[2].json
      assert.are.same({ type = "ephemeral", ttl = "1h" }, sent.cache_control)
      assert.are.same({ type = "ephemeral", ttl = "1h" }, sent.tools[1].cache_control)
      local usd = 0
      for _, u in ipairs(usages(s)) do
        assert.are.equal(u.cache_write, u.cache_write_1h)
        usd = usd + ((u.input - u.cached - u.cache_write) * 3 + u.cached * 0.3 + u.cache_write * 6 + u.output * 15) / 1e6
      end
      assert.is_true(math.abs(s:stats().cost_usd - usd) < 1e-12)
      -- five minutes' writes are priced at cache_write
      assert.is_true(math.abs(require("tide.prices").cost("claude-hour-test", { input = 100, cache_write = 100,
        cache_write_1h = 40 }) - (60 * 3.75 + 40 * 6) / 1e6) < 1e-15)
      tide.prices { ["claude-hour-test"] = false }
    end)
  end)

  it("sends no top-level cache_control to Bedrock or Vertex AI, nor without prompt_cache", function()
    local creds = { access_key_id = "AKIAX", secret_access_key = "s" }
    for _, opts in ipairs {
      { bedrock = { region = "us-east-1", credentials = creds }, prompt_cache = true },
      { bedrock = { region = "us-east-1", credentials = creds, mantle = true }, prompt_cache = "1h" },
      { vertex = { project = "p", region = "us-east5" }, api_key = "t", prompt_cache = true },
      { api_key = "k" },
    } do
      local p = provider.anthropic(opts)
      local body = cjson.decode(p:body(p:encode_prefix("sys", { { name = "t", parameters = { type = "object" } } }), {}))
      assert.is_nil(body.cache_control)
      if opts.prompt_cache then assert.is_table(body.system[1].cache_control) end
    end
  end)

  it("says what is wrong with the option", function()
    for _, bad in ipairs { "2h", 1, {} } do
      local ok, err = pcall(provider.anthropic, { api_key = "k", prompt_cache = bad })
      assert.is_false(ok)
      assert.matches("'prompt_cache' must be true, false, \"5m\" or \"1h\"", tostring(err), 1, true)
    end
  end)
end)

describe("the mock's prompt cache refuses what the API refuses", function()
  local function post(srv, body)
    local res = assert(tide.http.request { method = "POST", url = srv.url .. "/v1/messages", body = cjson.encode(body),
      headers = { ["content-type"] = "application/json", ["x-api-key"] = "k", ["anthropic-version"] = "2023-06-01" } })
    return res.status, cjson.decode(res.body)
  end
  local H1, M5 = { type = "ephemeral", ttl = "1h" }, { type = "ephemeral" }

  it("a fifth breakpoint, an hour's after five minutes', a top-level ttl unlike its block's", function()
    with_mock({ replies = { "ok", "ok", "ok", "ok" } }, function(srv)
      local msgs = { { role = "user", content = { { type = "text", text = "a", cache_control = M5 },
        { type = "text", text = "b", cache_control = M5 }, { type = "text", text = "c", cache_control = M5 },
        { type = "text", text = "d" } } } }
      local status, body = post(srv, { model = "m", max_tokens = 10, system = { { type = "text", text = "s",
        cache_control = M5 } }, messages = msgs, cache_control = M5 })
      assert.are.equal(400, status)
      assert.are.equal("A maximum of 4 blocks with cache_control may be provided. Found 5.", body.error.message)
      status, body = post(srv, { model = "m", max_tokens = 10, system = { { type = "text", text = "s",
        cache_control = M5 } }, messages = { { role = "user", content = { { type = "text", text = "a",
        cache_control = H1 } } } } })
      assert.are.equal(400, status)
      assert.are.equal("messages.0.content.0.cache_control.ttl: a ttl='1h' cache_control block must not come after "
        .. "a ttl='5m' cache_control block. Note that blocks are processed in the following order: `tools`, "
        .. "`system`, `messages`.", body.error.message)
      status, body = post(srv, { model = "m", max_tokens = 10, cache_control = M5, messages = { { role = "user",
        content = { { type = "text", text = "a", cache_control = H1 } } } } })
      assert.are.equal(400, status)
      assert.are.equal("Top-level cache_control has ttl='5m' but the target block already has cache_control with "
        .. "ttl='1h'", body.error.message)
      status = post(srv, { model = "m", max_tokens = 10, cache_control = H1, messages = { { role = "user",
        content = "a" } } })
      assert.are.equal(200, status)
    end)
  end)
end)
