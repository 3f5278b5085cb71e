-- The session side of stop reasons and usage: stats().stop_reason, the
-- neutral token counts, truncation that is never silent, and
-- truncated = "error".
local tide = require "tide"
local cjson = require "cjson"

-- A raw loopback server answering each request with the next scripted
-- chat.completion (finish reason, text, usage).
local function server(replies)
  local n = 0
  local srv = assert(require("tide.testing.server").listen { handler = function()
    n = n + 1
    local r = replies[math.min(n, #replies)]
    local message = { role = "assistant", content = r.text }
    if r.calls then message.tool_calls = r.calls end
    return { status = 200, headers = { ["content-type"] = "application/json" }, body = cjson.encode {
      id = "chatcmpl-1", object = "chat.completion", model = "m",
      choices = { { index = 0, message = message, finish_reason = r.finish } },
      usage = r.usage or { prompt_tokens = 10, completion_tokens = 2, total_tokens = 12 },
    } }
  end })
  return srv, "http://127.0.0.1:" .. srv:port() .. "/v1"
end

describe("stop reasons and usage in the session", function()
  before_each(function()
    tide.agent { id = "plain", prompt = "You answer.", tools = { tide.tool { name = "lookup", description = "d",
      handler = function() return "found" end } } }
  end)

  it("reports the last stop reason and sums usage with cached tokens inside input", function()
    local srv, url = server {
      { finish = "tool_calls", calls = { { id = "c1", type = "function", ["function"] = { name = "lookup", arguments = "{}" } } },
        usage = { prompt_tokens = 100, completion_tokens = 20, prompt_tokens_details = { cached_tokens = 80 } } },
      { finish = "stop", text = "done",
        usage = { prompt_tokens = 130, completion_tokens = 5, prompt_tokens_details = { cached_tokens = 100 } } },
    }
    local s = tide.session { agent = "plain", provider = tide.provider.openai { base_url = url, api_key = "k", model = "m", stream = false } }
    assert.are.equal("done", s:turn("go"))
    local st = s:stats()
    assert.are.equal("stop", st.stop_reason)
    assert.are.equal(230, st.tokens.input)
    assert.are.equal(25, st.tokens.output)
    assert.are.equal(180, st.tokens.cached)
    assert.are.equal(0, st.tokens.cache_write)
    local h = s:history()
    assert.are.equal("tool_calls", h[2].stop)
    assert.are.equal("stop", h[4].stop)
    assert.are.equal(100, h[2].usage.input)
    srv:close()
  end)

  it("never hides a truncated answer: stats, history and an event say so", function()
    local srv, url = server { { finish = "length", text = "The answer is cut sh" } }
    local s = tide.session { agent = "plain", provider = tide.provider.openai { base_url = url, api_key = "k", model = "m", stream = false } }
    local events = {}
    local reply = s:turn("go", { on_event = function(ev) events[#events + 1] = ev end })
    assert.are.equal("The answer is cut sh", reply)
    assert.are.equal("length", s:stats().stop_reason)
    assert.are.equal("length", s:history()[2].stop)
    local seen
    for _, ev in ipairs(events) do if ev.type == "truncated" then seen = ev end end
    assert.are.equal("length", seen and seen.stop_reason)
    srv:close()
  end)

  it("makes a truncated answer an error with its partial text when asked, per session or turn", function()
    local srv, url = server { { finish = "length", text = "partial" } }
    local p = tide.provider.openai { base_url = url, api_key = "k", model = "m", stream = false }
    local s = tide.session { agent = "plain", provider = p, truncated = "error" }
    local reply, err = s:turn("go")
    assert.is_nil(reply)
    assert.are.equal("Truncated", err.code)
    assert.are.equal("partial", err.partial)
    assert.are.equal("length", err.stop_reason)
    -- the turn's option wins over the session's
    assert.are.equal("partial", (s:turn("again", { truncated = "allow" })))
    local s2 = tide.session { agent = "plain", provider = p }
    local _, err2 = s2:turn("go", { truncated = "error" })
    assert.are.equal("Truncated", err2.code)
    -- the history keeps the answer as it came, with its stop reason
    assert.are.equal("partial", s:history()[2].content)
    assert.has_error(function() tide.session { agent = "plain", provider = p, truncated = "yes" } end,
      'tide.session: \'truncated\' must be "error" or "allow"')
    srv:close()
  end)
end)
