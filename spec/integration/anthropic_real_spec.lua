-- tide.provider.anthropic against the mock speaking the Messages API as the
-- real service does: usage with cache reads and writes, extended thinking
-- (thinking blocks with signatures, redacted_thinking), the stop reasons, and
-- follow-ups validated the way the API validates them (a tool round whose
-- assistant turn lost or altered its thinking gets the real 400). Streamed
-- and not.
local helpers = require "helpers"
local tide = require "tide"
local provider = require "tide.provider"
local testing = require "tide.testing"
local cjson = require "cjson"

local FAST = { attempts = 2, base_ms = 1, max_ms = 2 }

local raised = require("helpers").raised

local function make(url, stream, extra)
  local o = { base_url = url .. "/v1", api_key = "k", model = "claude-mock", stream = stream, retry = FAST }
  for k, v in pairs(extra or {}) do o[k] = v end
  return provider.anthropic(o)
end

local with_mock = helpers.with_mock

local THINKING = { budget_tokens = 2048 }

local lookup_tool = { name = "lookup", description = "Looks up.",
                      parameters = { type = "object", properties = { q = { type = "string" } } } }

-- The same lookup as a tool a session runs.
local lookup = tide.tool {
  name = "lookup", description = "Looks up.",
  parameters = { type = "object", properties = { q = { type = "string" } }, required = { "q" } },
  handler = function(args) return "found " .. args.q end,
}

-- The neutral assistant message a session would append for a reply.
local function assistant_of(res)
  return { role = "assistant", content = res.text ~= "" and res.text or nil,
           tool_calls = #res.tool_calls > 0 and res.tool_calls or nil, reasoning = res.reasoning }
end

local function results_of(res)
  local results = {}
  for i, c in ipairs(res.tool_calls) do results[i] = { id = c.id, name = c.name, content = "found" } end
  return { role = "tool", results = results }
end

for _, stream in ipairs({ true, false }) do
  local mode = stream and "streamed" or "not streamed"

  describe("tide.provider.anthropic, real shapes (" .. mode .. ")", function()
    it("counts the whole prompt as input: uncached + cache reads + cache writes", function()
      with_mock({ replies = { { text = "ok", usage = { input = 14028, cached = 12000, cache_write = 2015,
                                                         output = 9 } } } }, function(srv)
        local p = make(srv.url, stream, { prompt_cache = true })
        local res = assert(p:complete(p:body(p:encode_prefix("sys", {}), { p:encode_message({ role = "user", content = "hi" }) })))
        -- What the service said: 13 uncached input tokens.
        assert.are.same({ input = 14028, output = 9, cached = 12000, cache_write = 2015, reasoning = 0,
          service_tier = "standard" }, res.usage)
        assert.are.equal(14028 - 12000 - 2015, 13)
      end)
    end)

    it("parses thinking and redacted_thinking blocks into reasoning parts, in block order", function()
      with_mock({ replies = { { reasoning = { "First I consider.", { redacted = true }, "Then I answer." },
                                text = "42" } } }, function(srv)
        local p = make(srv.url, stream, { thinking = THINKING })
        local seen = {}
        local res = assert(p:complete(p:body(p:encode_prefix("s"), { p:encode_message({ role = "user", content = "q" }) }),
          { on_reasoning = function(t) seen[#seen + 1] = t end }))
        assert.are.equal("42", res.text)
        assert.are.equal(3, #res.reasoning)
        assert.are.equal("text", res.reasoning[1].type)
        assert.are.equal("First I consider.", res.reasoning[1].text)
        assert.matches("^EqMock", res.reasoning[1].signature)
        assert.are.equal("anthropic", res.reasoning[1].provider)
        assert.are.equal("redacted", res.reasoning[2].type)
        assert.matches("^EmwMock", res.reasoning[2].data)
        assert.are.equal("anthropic", res.reasoning[2].provider)
        assert.are.equal("Then I answer.", res.reasoning[3].text)
        assert.are.equal("First I consider.Then I answer.", table.concat(seen))
        if stream then assert.is_true(#seen > 2, "thinking arrives in deltas") end
        -- The request carried the thinking option.
        local sent = srv:requests()[1].json
        assert.are.same({ type = "enabled", budget_tokens = 2048 }, sent.thinking)
      end)
    end)

    it("builds no reasoning when the request does not enable thinking", function()
      with_mock({ replies = { { reasoning = "ignored", text = "plain" } } }, function(srv)
        local p = make(srv.url, stream)
        local res = assert(p:complete(p:body(p:encode_prefix("s"), { p:encode_message({ role = "user", content = "q" }) })))
        assert.is_nil(res.reasoning)
        assert.is_nil(srv:requests()[1].json.thinking)
      end)
    end)

    it("maps the stop reasons onto the neutral ones and keeps the raw one", function()
      local cases = {
        { "end_turn", "stop" }, { "stop_sequence", "stop" }, { "max_tokens", "length" },
        { "refusal", "refusal" }, { "pause_turn", "pause" }, { "model_context_window_exceeded", "length" },
      }
      local replies = {}
      for i, c in ipairs(cases) do replies[i] = { text = "partial", stop_reason = c[1] } end
      replies[#replies + 1] = { tool_calls = { { name = "lookup", arguments = { q = "x" } } } }
      with_mock({ replies = replies }, function(srv)
        local p = make(srv.url, stream)
        local body = p:body(p:encode_prefix("s"), { p:encode_message({ role = "user", content = "q" }) })
        for _, c in ipairs(cases) do
          local res = assert(p:complete(body))
          assert.are.equal(c[2], res.stop, c[1])
          assert.are.equal(c[1], res.stop_raw)
          assert.are.equal("partial", res.text)
        end
        local res = assert(p:complete(body))
        assert.are.equal("tool_calls", res.stop)
        assert.are.equal("tool_use", res.stop_raw)
      end)
    end)

    it("sends thinking back first, verbatim, through a full tool round the validating mock accepts", function()
      with_mock({ default = testing.tool_loop(2, "lookup") }, function(srv)
        local p = make(srv.url, stream, { thinking = THINKING })
        local prefix = p:encode_prefix("You look things up.", { lookup_tool })
        local encoded = { p:encode_message({ role = "user", content = "find two" }) }
        local res
        for round = 1, 3 do
          local err
          res, err = p:complete(p:body(prefix, encoded))
          assert.is_nil(err, err and tostring(err))
          assert.is_table(res.reasoning, "round " .. round)
          if round == 3 then break end
          assert.are.equal("tool_calls", res.stop)
          encoded[#encoded + 1] = p:encode_message(assistant_of(res))
          encoded[#encoded + 1] = p:encode_message(results_of(res))
        end
        assert.are.equal("done after 2 lookups", res.text)
        -- Every assistant turn opened with the thinking block it was given.
        local reqs = srv:requests()
        local msgs = reqs[3].json.messages
        assert.are.equal("thinking", msgs[2].content[1].type)
        assert.are.equal("tool_use", msgs[2].content[2].type)
        assert.are.equal("thinking", msgs[4].content[1].type)
      end)
    end)

    it("runs adaptive thinking with omitted text and an effort through a session's tool loop", function()
      with_mock({ default = testing.tool_loop(2, "lookup") }, function(srv)
        tide.agent { id = "adaptive", prompt = "You look things up.", tools = { lookup } }
        local p = make(srv.url, stream, { thinking = { type = "adaptive", display = "omitted" },
          reasoning = { effort = "xhigh" } })
        local s = tide.session { agent = "adaptive", provider = p }
        local reply, err = s:turn("find two")
        assert.is_nil(err, err and tostring(err))
        assert.are.equal("done after 2 lookups", reply)
        local sent = srv:requests()[1].json
        assert.are.same({ type = "adaptive", display = "omitted" }, sent.thinking)
        assert.are.same({ effort = "xhigh" }, sent.output_config)
        -- the signature alone came, and went back with its empty text (the
        -- mock refuses a thinking block whose signature does not match)
        local first = s:history()[2].reasoning[1]
        assert.are.equal("", first.text)
        assert.matches("^EqMockOmit", first.signature)
        local back = srv:requests()[3].json.messages[2].content[1]
        assert.are.same({ type = "thinking", thinking = "", signature = first.signature }, back)
      end)
    end)

    it("runs a session's tool loop with thinking to its answer", function()
      with_mock({ default = testing.tool_loop(3, "lookup") }, function(srv)
        tide.agent { id = "thinker", prompt = "You look things up.", tools = { lookup } }
        local s = tide.session { agent = "thinker", provider = make(srv.url, stream, { thinking = THINKING }) }
        local reply, err = s:turn("find three")
        assert.is_nil(err, err and tostring(err))
        assert.are.equal("done after 3 lookups", reply)
        assert.are.equal(4, srv:request_count())
        -- The history keeps each assistant turn's thinking for the next request.
        local h = s:history()
        assert.are.equal("anthropic", h[2].reasoning[1].provider)
        assert.matches("^EqMock", h[2].reasoning[1].signature)
      end)
    end)

    it("gives a session the whole prompt as input, thinking to on_reasoning, and the stop", function()
      with_mock({ replies = { { reasoning = "Weighing it.", text = "cannot help",
                                 stop_reason = "refusal",
                                 usage = { input = 500, cached = 300, cache_write = 150, output = 7 } } } },
        function(srv)
          tide.agent { id = "plain_thinker", prompt = "You answer." }
          local s = tide.session { agent = "plain_thinker",
            provider = make(srv.url, stream, { thinking = THINKING, prompt_cache = true }) }
          local seen = {}
          assert.are.equal("cannot help", s:turn("q", { on_reasoning = function(t) seen[#seen + 1] = t end }))
          assert.are.equal("Weighing it.", table.concat(seen))
          local st = s:stats()
          assert.are.equal("refusal", st.stop_reason)
          assert.are.equal(500, st.tokens.input)
          assert.are.equal(300, st.tokens.cached)
          assert.are.equal(150, st.tokens.cache_write)
          assert.are.equal(7, st.tokens.output)
          assert.are.equal(0, st.tokens.reasoning)
        end)
    end)
  end)
end

describe("tide.provider.anthropic, thinking sent back", function()
  local function reply_with_thinking(srv, stream)
    local p = make(srv.url, stream, { thinking = THINKING })
    local prefix = p:encode_prefix("s", { lookup_tool })
    local user = p:encode_message({ role = "user", content = "q" })
    local res = assert(p:complete(p:body(prefix, { user })))
    return p, prefix, user, res
  end

  it("gets the real 400 when the assistant tool turn dropped its thinking", function()
    with_mock({ default = testing.tool_loop(1, "lookup") }, function(srv)
      local p, prefix, user, res = reply_with_thinking(srv, true)
      local msg = assistant_of(res)
      msg.reasoning = nil
      local out, err = p:complete(p:body(prefix, { user, p:encode_message(msg), p:encode_message(results_of(res)) }))
      assert.is_nil(out)
      assert.are.equal("ProviderError", err.code)
      assert.are.equal(400, err.status)
      assert.matches("messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`",
        err.body, 1, true)
    end)
  end)

  it("gets the real 400 when a thinking block was altered", function()
    with_mock({ default = testing.tool_loop(1, "lookup") }, function(srv)
      local p, prefix, user, res = reply_with_thinking(srv, false)
      local msg = assistant_of(res)
      msg.reasoning = { { type = "text", text = res.reasoning[1].text .. " (edited)",
                          signature = res.reasoning[1].signature, provider = "anthropic" } }
      local out, err = p:complete(p:body(prefix, { user, p:encode_message(msg), p:encode_message(results_of(res)) }))
      assert.is_nil(out)
      assert.are.equal(400, err.status)
      assert.matches("messages.1.content.0: Invalid `signature` in `thinking` block", err.body, 1, true)
    end)
  end)

  it("never sends another provider's reasoning, and checks restored parts", function()
    local p = provider.anthropic({ base_url = "http://127.0.0.1:1", model = "m" })
    local wire = p:encode_message({ role = "assistant", content = "hi", reasoning = {
      { type = "text", text = "deepseek thoughts", provider = "openai" },
      { type = "text", text = "mine", signature = "sig", provider = "anthropic" },
      { type = "redacted", data = "opaque", provider = "anthropic" },
    } })
    assert.are.equal('{"content":[{"signature":"sig","thinking":"mine","type":"thinking"},'
      .. '{"data":"opaque","type":"redacted_thinking"},{"text":"hi","type":"text"}],"role":"assistant"}', wire)
    assert.are.equal(wire, p:_encode(cjson.decode(cjson.encode({ role = "assistant", content = "hi", reasoning = {
      { type = "text", text = "mine", signature = "sig", provider = "anthropic" },
      { type = "redacted", data = "opaque", provider = "anthropic" } } }))))
    -- Without parts of its own, the message is what it always was.
    assert.are.equal('{"content":"hi","role":"assistant"}', p:encode_message({ role = "assistant", content = "hi",
      reasoning = { { type = "text", text = "x", provider = "openai" } } }))
    assert.matches("reasoning%[1%] %(thinking%) needs 'text' and 'signature' strings",
      raised(p.encode_message, p, { role = "assistant", content = "x",
        reasoning = { { type = "text", text = "t", provider = "anthropic" } } }))
    assert.matches("reasoning%[1%] %(redacted thinking%) needs a 'data' string",
      raised(p.encode_message, p, { role = "assistant", content = "x",
        reasoning = { { type = "redacted", provider = "anthropic" } } }))
    assert.matches("'reasoning' must be a table", raised(p.encode_message, p,
      { role = "assistant", content = "x", reasoning = "no" }))
  end)

  it("refuses a reply whose thinking block has no signature", function()
    helpers.run(function()
      local srv <close> = assert(require("tide.testing.server").listen({ host = "127.0.0.1", port = 0,
        handler = function()
          return { status = 200, headers = { ["content-type"] = "application/json" }, body = cjson.encode({
            type = "message", role = "assistant", stop_reason = "end_turn",
            content = { { type = "thinking", thinking = "hmm" }, { type = "text", text = "x" } },
            usage = { input_tokens = 1, output_tokens = 1 } }) }
        end }))
      local p = make("http://127.0.0.1:" .. srv:port(), false)
      local out, err = p:complete(p:body(p:encode_prefix("s"), { p:encode_message({ role = "user", content = "q" }) }))
      assert.is_nil(out)
      assert.are.equal("MalformedResponse", err.code)
      assert.matches("content%[1%] %(thinking%) has no signature", err.message)
    end)
  end)
end)

describe("tide.provider.anthropic, thinking streams", function()
  local function ev(name, obj) return "event: " .. name .. "\ndata: " .. cjson.encode(obj) .. "\n\n" end
  local function serve(chunks, fn)
    helpers.run(function()
      local srv <close> = assert(require("tide.testing.server").listen({ host = "127.0.0.1", port = 0,
        handler = function()
          return { status = 200, headers = { ["content-type"] = "text/event-stream" }, chunks = chunks }
        end }))
      local p = make("http://127.0.0.1:" .. srv:port(), true)
      fn(p:complete(p:body(p:encode_prefix("s"), { p:encode_message({ role = "user", content = "q" }) })))
    end)
  end
  local start = ev("message_start", { type = "message_start", message = { usage = { input_tokens = 3,
    cache_creation_input_tokens = 100, output_tokens = 1 } } })
  local stop = ev("message_delta", { type = "message_delta", delta = { stop_reason = "refusal" },
    usage = { output_tokens = 5 } }) .. ev("message_stop", { type = "message_stop" })

  it("refuses a signature_delta outside a thinking block", function()
    serve({ start,
      ev("content_block_start", { type = "content_block_start", index = 0, content_block = { type = "text", text = "" } }),
      ev("content_block_delta", { type = "content_block_delta", index = 0,
        delta = { type = "signature_delta", signature = "x" } }), stop }, function(out, err)
      assert.is_nil(out)
      assert.are.equal("MalformedResponse", err.code)
      assert.matches("signature_delta outside a thinking block", err.message)
    end)
  end)

  it("refuses a streamed thinking block that never got its signature", function()
    serve({ start,
      ev("content_block_start", { type = "content_block_start", index = 0,
        content_block = { type = "thinking", thinking = "", signature = "" } }),
      ev("content_block_delta", { type = "content_block_delta", index = 0,
        delta = { type = "thinking_delta", thinking = "hmm" } }), stop }, function(out, err)
      assert.is_nil(out)
      assert.are.equal("MalformedResponse", err.code)
      assert.matches("thinking block 1 has no signature", err.message)
    end)
  end)

  it("keeps message_start's cache writes when message_delta restates only the output", function()
    serve({ start,
      ev("content_block_start", { type = "content_block_start", index = 0,
        content_block = { type = "redacted_thinking", data = "opaque" } }),
      ev("content_block_start", { type = "content_block_start", index = 1, content_block = { type = "text", text = "no" } }),
      stop }, function(out, err)
      assert.is_nil(err)
      assert.are.same({ input = 103, output = 5, cached = 0, cache_write = 100, reasoning = 0 }, out.usage)
      assert.are.same({ { type = "redacted", data = "opaque", provider = "anthropic" } }, out.reasoning)
      assert.are.equal("refusal", out.stop)
      assert.are.equal("no", out.text)
    end)
  end)
end)

describe("tide.provider.anthropic options", function()
  it("puts thinking and extra_body into the prefix in canonical order, byte-stable", function()
    local function prefix(extra)
      local o = { base_url = "http://127.0.0.1:1", model = "m", thinking = { budget_tokens = 1024 },
                  temperature = 1, max_tokens = 8000 }
      for k, v in pairs(extra or {}) do o[k] = v end
      return provider.anthropic(o):encode_prefix("sys", { lookup_tool })
    end
    local a = prefix({ extra_body = { top_k = 5, metadata = { user_id = "u1" } } })
    assert.are.equal(a, prefix({ extra_body = { metadata = { user_id = "u1" }, top_k = 5 } }))
    assert.matches('^{"max_tokens":8000,"metadata":{"user_id":"u1"},"model":"m","stream":true,"system":"sys",'
      .. '"temperature":1,"thinking":{"budget_tokens":1024,"type":"enabled"},"tools":%[.-%],"top_k":5,"messages":%[$', a)
    -- extra_body takes the place of tide's own fields.
    local b = prefix({ extra_body = { thinking = { type = "adaptive" } } })
    assert.matches('"thinking":{"type":"adaptive"}', b, 1, true)
    local decoded = cjson.decode(b .. "]}")
    assert.are.equal("adaptive", decoded.thinking.type)
    -- the effort shares output_config with a turn's schema and extra_body's other fields
    local p = provider.anthropic { base_url = "http://127.0.0.1:1", model = "m", reasoning = { effort = "max" },
      extra_body = { output_config = { effort = "low", task_budget = 9 } } }
    local c = cjson.decode(p:encode_prefix("sys", {}, { type = "object", properties = {} }) .. "]}").output_config
    assert.are.same({ effort = "max", task_budget = 9, format = { type = "json_schema", schema = {
      type = "object", properties = {}, additionalProperties = false } } }, c)
    assert.matches('"output_config":{"effort":"max"}', provider.anthropic { base_url = "http://127.0.0.1:1",
      reasoning = { effort = "max" } }:encode_prefix("sys", {}), 1, true)
  end)

  it("checks thinking and extra_body", function()
    local function new(o)
      o.base_url = "http://127.0.0.1:1"
      return function() return provider.anthropic(o) end
    end
    assert.matches("'thinking' must be a table", raised(new({ thinking = 1024 })))
    assert.matches("'thinking.budget_tokens' must be a positive integer",
      raised(new({ thinking = { budget_tokens = 0 } })))
    assert.matches("'thinking.budget_tokens' must be a positive integer",
      raised(new({ thinking = { budget_tokens = 1.5 } })))
    assert.matches("unknown option 'thinking.level'", raised(new({ thinking = { level = 3 } })))
    assert.matches("'thinking.type' must be \"enabled\" or \"adaptive\"", raised(new({ thinking = { type = "auto" } })))
    assert.matches("'thinking.display' must be", raised(new({ thinking = { type = "adaptive", display = "none" } })))
    assert.matches("'thinking.budget_tokens' is for type \"enabled\"",
      raised(new({ thinking = { type = "adaptive", budget_tokens = 2048 } })))
    assert.matches("'thinking' needs 'budget_tokens' %(or type = \"adaptive\"%)", raised(new({ thinking = {} })))
    assert.matches("'reasoning.effort' must be one of low, medium, high, xhigh, max",
      raised(new({ reasoning = { effort = "minimal" } })))
    assert.matches("unknown option 'reasoning.summary'", raised(new({ reasoning = { effort = "low", summary = "auto" } })))
    assert.matches("'temperature' %(0.5%) cannot be set with 'thinking'",
      raised(new({ thinking = { type = "adaptive" }, temperature = 0.5 })))
    assert.matches("must be less than max_tokens %(4096%)", raised(new({ thinking = { budget_tokens = 4096 } })))
    assert.matches("must be less than max_tokens %(2000%)",
      raised(new({ thinking = { budget_tokens = 2000 }, max_tokens = 2000 })))
    -- (the API's least budget, said at construction)
    assert.matches("'thinking.budget_tokens' %(512%) must be at least 1024", raised(new({ thinking = { budget_tokens = 512 } })))
    -- the API takes only temperature 1 with thinking on
    assert.matches("'temperature' %(0.2%) cannot be set with 'thinking'",
      raised(new({ thinking = { budget_tokens = 1024 }, temperature = 0.2 })))
    assert(new({ thinking = { budget_tokens = 1024 }, temperature = 1 })())
    assert.matches("'extra_body' must be a table", raised(new({ extra_body = "x" })))
    assert.matches("'extra_body' keys must be strings", raised(new({ extra_body = { 1 } })))
    assert.matches("'extra_body' cannot set 'messages'", raised(new({ extra_body = { messages = {} } })))
    assert.matches("'extra_body' cannot set 'stream' %(use the 'stream' option%)",
      raised(new({ extra_body = { stream = false } })))
    assert.matches("'on_reasoning' must be a function", raised(function()
      local p = provider.anthropic({ base_url = "http://127.0.0.1:1" })
      return p:complete("{}", { on_reasoning = 1 })
    end))
    assert.matches("unknown option 'thinking'", raised(function()
      return provider.openai({ base_url = "http://127.0.0.1:1", thinking = { budget_tokens = 9 } })
    end))
  end)

  it("never sends back a text block of white space alone, which the API refuses", function()
    local p = provider.anthropic({ base_url = "http://127.0.0.1:1", api_key = "k" })
    assert.are.equal("", p:encode_message({ role = "assistant", content = "\n\n" }))
    local with_call = cjson.decode(p:encode_message({ role = "assistant", content = " \n",
      tool_calls = { { id = "toolu_1", name = "t", arguments = "{}" } } }))
    assert.are.equal(1, #with_call.content)
    assert.are.equal("tool_use", with_call.content[1].type)
  end)

  it("the mock refuses a budget the API refuses", function()
    with_mock({ replies = { "never" } }, function(srv)
      local p = make(srv.url, false, { extra_body = { thinking = { type = "enabled", budget_tokens = 512 } } })
      local out, err = p:complete(p:body(p:encode_prefix("s"), { p:encode_message({ role = "user", content = "q" }) }))
      assert.is_nil(out)
      assert.are.equal(400, err.status)
      assert.matches("budget_tokens: Input should be greater than or equal to 1024", err.body, 1, true)
      assert.are.equal(1, srv:pending(), "a refused request spends no scripted reply")
    end)
  end)
end)
