-- Every field of a Messages reply reaches the caller through the C parser
-- (core/anthropic.c), whichever way it is fed: pumped by the request when
-- nobody listens, chunk by chunk with text and reasoning listeners, or whole
-- when not streamed. Each case would fail if the parser lost a field.
local helpers = require "helpers"
local provider = require "tide.provider"
local testing = require "tide.testing"
local cjson = require "cjson"

local FAST = { attempts = 2, base_ms = 1, max_ms = 2 }
local THINKING = { budget_tokens = 2048 }

local function make(url, stream, extra)
  local o = { base_url = url .. "/v1", api_key = "k", model = "claude-mock", stream = stream, retry = FAST }
  for k, v in pairs(extra or {}) do o[k] = v end
  return provider.anthropic(o)
end

local function body_of(p)
  return p:body(p:encode_prefix("s"), { p:encode_message({ role = "user", content = "q" }) })
end

-- The three ways a reply is read.
local MODES = {
  { name = "pumped (nobody listens)", stream = true },
  { name = "fed with listeners", stream = true, listen = true },
  { name = "whole (not streamed)", stream = false },
}

-- A reply with all of it: thinking with its signature, redacted thinking,
-- text, three parallel tool calls, cache reads and writes.
local FULL = {
  reasoning = { "Weighing three lookups.", { redacted = "secret" } },
  text = "Looking these up.",
  tool_calls = {
    { name = "lookup", arguments = { q = "alpha", n = 1 } },
    { name = "lookup", arguments = { q = "beta", tags = { "x", "y" } } },
    { name = "clock", arguments = {} },
  },
  usage = { input = 14028, cached = 12000, cache_write = 2015, output = 90 },
}

for _, mode in ipairs(MODES) do
  describe("an Anthropic reply, " .. mode.name, function()
    local function complete(p)
      local deltas, thoughts = {}, {}
      local opts = mode.listen and {
        on_delta = function(t) deltas[#deltas + 1] = t end,
        on_reasoning = function(t) thoughts[#thoughts + 1] = t end,
      } or nil
      local res, err = p:complete(body_of(p), opts)
      return res, err, deltas, thoughts
    end

    it("keeps the thinking signature, the redacted data, the calls and the cache usage", function()
      helpers.run(function()
        local srv <close> = assert(testing.mock_server({ replies = { FULL } }))
        local res, err, deltas, thoughts = complete(make(srv.url, mode.stream, { thinking = THINKING }))
        assert.is_nil(err, err and tostring(err))
        assert.are.equal("Looking these up.", res.text)
        assert.are.equal(2, #res.reasoning)
        local t, r = res.reasoning[1], res.reasoning[2]
        assert.are.same({ "text", "Weighing three lookups.", "anthropic" }, { t.type, t.text, t.provider })
        assert.are.equal("EqMock" .. require("tide.core").hash("thinking|Weighing three lookups."), t.signature)
        assert.are.same({ "redacted", "anthropic" }, { r.type, r.provider })
        assert.matches("^EmwMocksecret%.%x+$", r.data)
        assert.are.equal(3, #res.tool_calls)
        local ids, distinct = {}, 0
        for i, c in ipairs(res.tool_calls) do
          assert.are.equal(FULL.tool_calls[i].name, c.name)
          assert.are.same(FULL.tool_calls[i].arguments, cjson.decode(c.arguments))
          assert.matches("^toolu_", c.id)
          if not ids[c.id] then distinct = distinct + 1 end
          ids[c.id] = true
        end
        assert.are.equal(3, distinct)
        assert.are.same({ input = 14028, output = 90, cached = 12000, cache_write = 2015, reasoning = 0,
          service_tier = "standard" }, res.usage)
        assert.are.equal("tool_calls", res.stop)
        assert.are.equal("tool_use", res.stop_raw)
        if mode.listen then
          assert.are.equal("Looking these up.", table.concat(deltas))
          assert.are.equal("Weighing three lookups.", table.concat(thoughts))
          if mode.stream then assert.is_true(#deltas > 1, "text arrives in deltas") end
        end
      end)
    end)

    it("sends the reply back as the validating mock requires, thinking first", function()
      helpers.run(function()
        local srv <close> = assert(testing.mock_server({ default = testing.tool_loop(1, "lookup") }))
        local p = make(srv.url, mode.stream, { thinking = THINKING })
        local prefix = p:encode_prefix("s", { { name = "lookup", parameters = { type = "object" } } })
        local user = p:encode_message({ role = "user", content = "q" })
        local res = assert(p:complete(p:body(prefix, { user })))
        local results = {}
        for i, c in ipairs(res.tool_calls) do results[i] = { id = c.id, content = "found" } end
        local again, err = p:complete(p:body(prefix, { user,
          p:encode_message({ role = "assistant", content = res.text, tool_calls = res.tool_calls,
                             reasoning = res.reasoning }),
          p:encode_message({ role = "tool", results = results }) }))
        assert.is_nil(err, err and tostring(err))
        assert.are.equal("done after 1 lookups", again.text)
      end)
    end)

    if mode.stream then
      it("stops at an error event mid-stream: retried before any text, never after", function()
        local function ev(name, obj) return "event: " .. name .. "\ndata: " .. cjson.encode(obj) .. "\n\n" end
        local start = ev("message_start", { type = "message_start", message = { usage = { input_tokens = 1 } } })
        local n = 0
        helpers.run(function()
          local srv <close> = assert(require("tide.testing.server").listen({ host = "127.0.0.1", port = 0,
            handler = function()
              n = n + 1
              local chunks = { start }
              if n == 2 then
                chunks[2] = ev("content_block_start", { type = "content_block_start", index = 0,
                  content_block = { type = "text", text = "" } })
                chunks[3] = ev("content_block_delta", { type = "content_block_delta", index = 0,
                  delta = { type = "text_delta", text = "Hel" } })
              end
              chunks[#chunks + 1] = ev("error", { type = "error",
                error = { type = "overloaded_error", message = "Overloaded" } })
              return { status = 200, headers = { ["content-type"] = "text/event-stream" }, chunks = chunks }
            end }))
          local p = make("http://127.0.0.1:" .. srv:port(), true, { retry = { attempts = 3, base_ms = 1, max_ms = 2 } })
          local res, err, deltas = complete(p)
          assert.is_nil(res)
          assert.are.equal("ProviderError", err.code)
          assert.are.equal("overloaded_error", err.type)
          assert.are.equal("anthropic stream error: Overloaded", err.message)
          assert.matches("overloaded_error", err.body, 1, true)
          if mode.listen then
            -- the second attempt's text reached on_delta: no third attempt
            assert.are.same({ "Hel" }, deltas)
            assert.are.equal(2, err.attempts)
          else
            -- nobody heard the text: every attempt was tried
            assert.are.equal(3, err.attempts)
          end
        end)
      end)
    end

    it("refuses a reply cut short, with what it had", function()
      helpers.run(function()
        local srv <close> = assert(testing.mock_server({ replies = { { text = "half an answer", fault = "truncate" } } }))
        local p = make(srv.url, mode.stream, { retry = { attempts = 1 } })
        local res, err = complete(p)
        assert.is_nil(res)
        assert.are.equal("MalformedResponse", err.code)
        if mode.stream then
          assert.are.equal("anthropic stream ended before message_stop", err.message)
          assert.are.equal("half an answer", err.partial_text)
        else
          assert.matches("^anthropic response is not valid JSON", err.message)
          assert.is_string(err.body)
        end
      end)
    end)

    it("reads an error object in a 200 reply as the error it is", function()
      helpers.run(function()
        local srv <close> = assert(require("tide.testing.server").listen({ host = "127.0.0.1", port = 0,
          handler = function()
            local body = cjson.encode({ type = "error", error = { type = "rate_limit_error", message = "slow down" } })
            if mode.stream then
              return { status = 200, headers = { ["content-type"] = "text/event-stream" },
                       chunks = { "event: error\ndata: " .. body .. "\n\n" } }
            end
            return { status = 200, headers = { ["content-type"] = "application/json" }, body = body }
          end }))
        local p = make("http://127.0.0.1:" .. srv:port(), mode.stream, { retry = { attempts = 1 } })
        local res, err = complete(p)
        assert.is_nil(res)
        assert.are.equal("RateLimited", err.code)
        assert.are.equal("rate_limit_error", err.type)
        assert.matches("slow down", err.message, 1, true)
        assert.matches("rate_limit_error", err.body, 1, true)
      end)
    end)
  end)
end
