-- A refusal is never a silent empty answer: with no text, what the
-- provider said of it (OpenAI's message.refusal, Anthropic's
-- stop_details.explanation) is the turn's answer and the history's, a
-- `refused` event says so, and a turn that wanted structured output fails
-- at once (no repair turn would change the model's mind).
local helpers = require "helpers"
local tide = require "tide"
local provider = require "tide.provider"

local FAST = { attempts = 2, base_ms = 1, max_ms = 2 }
local with_mock = helpers.with_mock

tide.agent { id = "careful", prompt = "You answer." }

local KINDS = {
  chat = function(url, stream)
    return provider.openai { base_url = url .. "/v1", api_key = "k", model = "m", stream = stream, retry = FAST }
  end,
  anthropic = function(url, stream)
    return provider.anthropic { base_url = url .. "/v1", api_key = "k", model = "m", stream = stream, retry = FAST }
  end,
}

for kind, make in pairs(KINDS) do
  for _, stream in ipairs({ true, false }) do
    local mode = kind .. (stream and ", streamed" or ", not streamed")

    describe("a refusal (" .. mode .. ")", function()
      local REFUSED = { refusal = "I can't help with that.", stop_reason = kind == "anthropic" and "refusal" or nil }

      it("is the answer, in the history too, and an event says so", function()
        with_mock({ replies = { REFUSED, "fine" } }, function(srv)
          local s = tide.session { agent = "careful", provider = make(srv.url, stream) }
          local events = {}
          local reply = assert(s:turn("do the bad thing", { on_event = function(e)
            if e.type == "refused" then events[#events + 1] = e.text end
          end }))
          assert.are.equal("I can't help with that.", reply)
          assert.are.equal("refusal", s:stats().stop_reason)
          assert.are.same({ "I can't help with that." }, events)
          local h = s:history()
          assert.are.equal("I can't help with that.", h[#h].content)
          -- and the next turn sends it back as the assistant's words
          assert.are.equal("fine", assert(s:turn("something else")))
          local msgs = srv:requests()[2].json.messages
          local sent = msgs[#msgs - 1]
          assert.are.equal("assistant", sent.role)
          local text = type(sent.content) == "string" and sent.content or sent.content[1].text
          assert.are.equal("I can't help with that.", text)
        end)
      end)

      it("fails a structured-output turn at once, without a repair turn", function()
        with_mock({ replies = { REFUSED } }, function(srv)
          local s = tide.session { agent = "careful", provider = make(srv.url, stream) }
          local v, err = s:turn("answer as JSON", { schema = { type = "object", properties = {
            a = { type = "string" } }, required = { "a" }, additionalProperties = false } })
          assert.is_nil(v)
          assert.are.equal("SchemaMismatch", err.code)
          assert.is_true(err.refused)
          assert.are.equal("I can't help with that.", err.text)
          assert.are.equal(1, #srv:requests())
        end)
      end)
    end)
  end
end
