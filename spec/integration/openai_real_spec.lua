-- tide.provider.openai against the mock speaking as the real servers do:
-- DeepSeek's reasoning_content (which must come back on tool-call turns),
-- Gemini's thought signatures and index-less parallel calls, streams
-- without [DONE], refusals and content filters, reasoning and cached token
-- counts, and the request options (max_completion_tokens, reasoning_effort,
-- tool_choice, parallel_tool_calls, stop, query, extra_body).
local tide = require "tide"
local cjson = require "cjson"
local helpers = require "helpers"
local kit = require "support.openai_kit"

local make, with_mock, body_of, USER, lookup = kit.make, kit.with_mock, kit.body_of, kit.USER, kit.lookup

for _, stream in ipairs({ true, false }) do
  local mode = stream and "streaming" or "non-streaming"

  describe("openai as real servers answer (" .. mode .. ")", function()
    it("keeps DeepSeek's reasoning_content, streams it to on_reasoning, and sends it back", function()
      with_mock({ replies = {
        { reasoning = "The user wants weather. ", tool_calls = { { id = "call_w", name = "lookup",
          arguments = { q = "Paris" } } }, usage = { input = 40, output = 30, cached = 8, reasoning = 12 } },
        "Sunny.",
      } }, function(srv)
        local p = make(srv.url, stream)
        local heard = {}
        local res = assert(p:complete(body_of(p, { USER }), { on_reasoning = function(t) heard[#heard + 1] = t end }))
        assert.are.same({ { type = "text", text = "The user wants weather. ", provider = "openai" } }, res.reasoning)
        assert.are.equal("The user wants weather. ", table.concat(heard))
        if stream then assert.is_true(#heard > 1) end -- as it came, not at the end
        assert.are.same({ input = 40, output = 30, cached = 8, cache_write = 0, reasoning = 12,
          service_tier = "default" }, res.usage)
        assert.are.equal("tool_calls", res.stop)
        -- the follow-up carries it back, on the assistant tool-call message
        local assistant = { role = "assistant", tool_calls = res.tool_calls, reasoning = res.reasoning }
        local follow = body_of(p, { USER, assistant,
          { role = "tool", results = { { id = "call_w", name = "lookup", content = "sunny" } } } })
        local res2 = assert(p:complete(follow))
        assert.are.equal("Sunny.", res2.text)
        local sent = srv:requests()[2].json.messages[3]
        assert.are.equal("The user wants weather. ", sent.reasoning_content)
      end)
    end)

    it("gets DeepSeek's 400 when a follow-up drops the reasoning_content", function()
      with_mock({ replies = {
        { reasoning = "hmm", tool_calls = { { id = "call_d", name = "lookup", arguments = {} } } }, "never",
      } }, function(srv)
        local p = make(srv.url, stream)
        local res = assert(p:complete(body_of(p, { USER })))
        local follow = body_of(p, { USER, { role = "assistant", tool_calls = res.tool_calls },
          { role = "tool", results = { { id = "call_d", content = "x" } } } })
        local _, err = p:complete(follow)
        assert.are.equal("ProviderError", err.code)
        assert.are.equal(400, err.status)
        assert.matches("reasoning_content` in the thinking mode must be passed back", err.body, 1, true)
      end)
    end)

    it("never sends another provider's reasoning, and reads OpenRouter's `reasoning` name", function()
      with_mock({ replies = { { reasoning = "via openrouter", reasoning_field = "reasoning" } } }, function(srv)
        local p = make(srv.url, stream)
        local res = assert(p:complete(body_of(p, { USER })))
        assert.are.equal("via openrouter", res.reasoning[1].text)
        local enc = p:encode_message({ role = "assistant", content = "ok", reasoning = {
          { type = "text", text = "claude thought", signature = "sig", provider = "anthropic" } } })
        assert.are.equal('{"content":"ok","role":"assistant"}', enc)
        enc = p:encode_message({ role = "assistant", content = "ok", reasoning = {
          { type = "text", text = "mine", provider = "openai" },
          { type = "text", text = "theirs", provider = "anthropic" } } })
        assert.are.equal('{"content":"ok","reasoning_content":"mine","role":"assistant"}', enc)
      end)
    end)

    it("keeps Gemini's thought signatures on the calls and sends them back verbatim", function()
      with_mock({ replies = {
        { call_index = false, tool_calls = {
          { id = "fc-1", name = "lookup", arguments = { q = "Sydney" }, thought_signature = "EjQKMgEMOdbH==" },
          { id = "fc-2", name = "lookup", arguments = { q = "Perth" } },
        } },
        "Both sunny.",
      } }, function(srv)
        local p = make(srv.url, stream)
        local res = assert(p:complete(body_of(p, { USER })))
        -- two calls, not one of merged arguments
        assert.are.equal(2, #res.tool_calls)
        assert.are.same({ q = "Sydney" }, cjson.decode(res.tool_calls[1].arguments))
        assert.are.same({ q = "Perth" }, cjson.decode(res.tool_calls[2].arguments))
        assert.are.same({ google = { thought_signature = "EjQKMgEMOdbH==" } },
          cjson.decode(res.tool_calls[1].extra_content))
        assert.is_nil(res.tool_calls[2].extra_content)
        local results = { { id = "fc-1", content = "sunny" }, { id = "fc-2", content = "sunny" } }
        local ok = assert(p:complete(body_of(p, { USER, { role = "assistant", tool_calls = res.tool_calls },
          { role = "tool", results = results } })))
        assert.are.equal("Both sunny.", ok.text)
        -- without the signature Gemini refuses the follow-up
        srv:push("never")
        local bare = {}
        for i, c in ipairs(res.tool_calls) do bare[i] = { id = c.id, name = c.name, arguments = c.arguments } end
        local _, err = p:complete(body_of(p, { USER, { role = "assistant", tool_calls = bare },
          { role = "tool", results = results } }))
        assert.are.equal(400, err.status)
        assert.matches("missing a thought_signature", err.body, 1, true)
      end)
    end)

    it("reports content_filter, length and refusal stops, the refusal apart from the text", function()
      with_mock({ replies = {
        { text = "Once upon", finish_reason = "length" },
        { text = "", finish_reason = "content_filter" },
        { refusal = "I can't help with that." },
      } }, function(srv)
        local p = make(srv.url, stream)
        local r1 = assert(p:complete(body_of(p, { USER })))
        assert.are.same({ "length", "length", "Once upon" }, { r1.stop, r1.stop_raw, r1.text })
        local r2 = assert(p:complete(body_of(p, { USER })))
        assert.are.same({ "content_filter", "content_filter" }, { r2.stop, r2.stop_raw })
        local r3 = assert(p:complete(body_of(p, { USER })))
        assert.are.same({ "refusal", "stop", "", "I can't help with that." },
          { r3.stop, r3.stop_raw, r3.text, r3.refusal })
      end)
    end)

    it("runs a whole DeepSeek thinking tool loop in a session", function()
      with_mock({ default = kit.two_lookups(function(n) return { reasoning = "step " .. n } end,
        { reasoning = "done now", text = "two lookups" }) }, function(srv)
        tide.agent { id = "thinker", prompt = "You think.", tools = { lookup } }
        local s = tide.session { agent = "thinker", provider = make(srv.url, stream) }
        local reply, err = s:turn("look twice")
        assert.is_nil(err)
        assert.are.equal("two lookups", reply)
        local last = srv:requests()[3].json.messages
        local seen = {}
        for _, m in ipairs(last) do
          if m.role == "assistant" then seen[#seen + 1] = m.reasoning_content end
        end
        assert.are.same({ "step 0", "step 1" }, seen)
      end)
    end)
  end)
end

describe("openai streams as real servers end them", function()
  it("takes a stream without [DONE] once the finish reason came, usage included", function()
    with_mock({ replies = { { text = "hello", done = false, usage = { input = 9, output = 2, cached = 4 } } } },
      function(srv)
        local p = make(srv.url, true)
        local res = assert(p:complete(body_of(p, { USER })))
        assert.are.equal("hello", res.text)
        assert.are.equal("stop", res.stop)
        assert.are.same({ input = 9, output = 2, cached = 4, cache_write = 0, reasoning = 0, service_tier = "default" },
          res.usage)
      end)
  end)

  it("still calls a stream cut before its finish reason malformed", function()
    with_mock({ replies = { { text = "hello", fault = "truncate" } } }, function(srv)
      local p = make(srv.url, true, { retry = { attempts = 1 } })
      local _, err = p:complete(body_of(p, { USER }))
      assert.are.equal("MalformedResponse", err.code)
    end)
  end)

  it("splits Gemini's index-less calls to the same tool, arguments streamed in pieces", function()
    local function chunk(delta, finish)
      return "data: " .. cjson.encode({ choices = { { index = 0, delta = delta, finish_reason = finish or cjson.null } } })
        .. "\n\n"
    end
    helpers.run(function()
      local srv = assert(require("tide.testing.server").listen({ host = "127.0.0.1", port = 0, handler = function()
        return { status = 200, headers = { ["content-type"] = "text/event-stream" }, chunks = {
          chunk({ tool_calls = { { id = "a", type = "function", ["function"] = { name = "glob", arguments = '{"p":' } } } }),
          chunk({ tool_calls = { { ["function"] = { arguments = '"x"}' } } } }),
          chunk({ tool_calls = { { type = "function", ["function"] = { name = "glob", arguments = '{"p":"y"}' } } } }),
          chunk({}, "stop"),
        } }
      end }))
      local p = make("http://127.0.0.1:" .. srv:port(), true)
      local res = assert(p:complete(body_of(p, { USER })))
      srv:close()
      assert.are.equal(2, #res.tool_calls)
      assert.are.same({ "a", '{"p":"x"}' }, { res.tool_calls[1].id, res.tool_calls[1].arguments })
      assert.are.same({ "glob", '{"p":"y"}' }, { res.tool_calls[2].name, res.tool_calls[2].arguments })
      -- Gemini ends tool-call replies with "stop": they stopped for the calls
      assert.are.same({ "tool_calls", "stop" }, { res.stop, res.stop_raw })
    end)
  end)
end)

describe("openai request options", function()
  it("sends max_tokens as max_completion_tokens, which reasoning models require", function()
    with_mock({ openai = { reasoning_model = true }, replies = { "ok", "ok" } }, function(srv)
      local p = make(srv.url, true, { max_tokens = 500, reasoning = { effort = "high" } })
      assert(p:complete(body_of(p, { USER })))
      local b = srv:requests()[1].json
      assert.are.same({ 500, "high" }, { b.max_completion_tokens, b.reasoning_effort })
      assert.is_nil(b.max_tokens)
      -- the old name, for servers that know only it, is what OpenAI rejects
      local old = make(srv.url, true, { max_tokens = 500, max_tokens_field = "max_tokens" })
      local _, err = old:complete(body_of(old, { USER }))
      assert.are.equal(400, err.status)
      assert.matches("Use 'max_completion_tokens' instead", err.body, 1, true)
      assert.are.equal(500, srv:requests()[2].json.max_tokens)
    end)
  end)

  it("sends tool_choice, parallel_tool_calls, stop and extra_body, in one byte-stable order", function()
    with_mock({ replies = { "ok" } }, function(srv)
      local opts = { tool_choice = { type = "function", ["function"] = { name = "lookup" } },
                     parallel_tool_calls = false, stop = { "END", "\n\n" }, temperature = 0.2,
                     extra_body = { thinking = { type = "enabled" }, seed = 7, top_k = 20 } }
      local p = make(srv.url, true, opts)
      local tools = { { name = "lookup", parameters = { type = "object" } } }
      local prefix = p:encode_prefix("Be brief.", tools)
      assert.are.equal(prefix, make(srv.url, true, opts):encode_prefix("Be brief.", tools))
      assert.are.equal('{"model":"m","stream":true,"stream_options":{"include_usage":true},"temperature":0.2,'
        .. '"tool_choice":{"function":{"name":"lookup"},"type":"function"},"parallel_tool_calls":false,'
        .. '"stop":["END","\\n\\n"],"seed":7,"thinking":{"type":"enabled"},"top_k":20,"tools":[',
        prefix:match('^(.-"tools":%[)'))
      assert(p:complete(p:body(prefix, { p:encode_message(USER) })))
      local b = srv:requests()[1].json
      assert.are.same({ type = "enabled" }, b.thinking)
      assert.is_false(b.parallel_tool_calls)
      -- without tools (a compaction's request) neither goes: the API refuses them there
      local bare = cjson.decode(p:body(p:encode_prefix("Be brief.", {}), {}))
      assert.is_nil(bare.tool_choice)
      assert.is_nil(bare.parallel_tool_calls)
      local r = make(srv.url, true, { api = "responses", tool_choice = "required", parallel_tool_calls = false })
      bare = cjson.decode(r:body(r:encode_prefix("Be brief.", {}), {}))
      assert.is_nil(bare.tool_choice)
      assert.is_nil(bare.parallel_tool_calls)
    end)
  end)

  it("adds query parameters, percent-encoded, to the URL (Azure's api-version)", function()
    with_mock({ replies = { "ok" } }, function(srv)
      local p = make(srv.url, false, { query = { ["api-version"] = "2024-10-21", ["x y"] = "a&b=c/é", n = 3 } })
      assert(p:complete(body_of(p, { USER })))
      assert.are.equal("/v1/chat/completions?api-version=2024-10-21&n=3&x%20y=a%26b%3Dc%2F%C3%A9",
        srv:requests()[1].path)
    end)
  end)

  it("checks the options strictly", function()
    local function bad(opts, pattern)
      local ok, err = pcall(tide.provider.openai, opts)
      assert.is_false(ok)
      assert.matches(pattern, tostring(err))
    end
    bad({ reasoning = { effort = "max" } }, "'reasoning.effort' must be one of")
    bad({ reasoning = { budget_tokens = 1 } }, "unknown option 'reasoning.budget_tokens'")
    bad({ reasoning = "high" }, "'reasoning' must be a table")
    bad({ tool_choice = "always" }, "'tool_choice' must be")
    bad({ parallel_tool_calls = "yes" }, "'parallel_tool_calls' must be a boolean")
    bad({ stop = { "a", 1 } }, "'stop' must be a string or a list of strings")
    bad({ stop = {} }, "'stop' must be a string or a list of strings")
    bad({ query = { v = true } }, "'query' must map strings to strings or numbers")
    bad({ extra_body = { messages = {} } }, "'extra_body.messages' is a field tide sets itself")
    bad({ extra_body = { max_tokens = 3 } }, "use the option 'max_tokens'")
    bad({ max_tokens_field = "max_output_tokens" }, "'max_tokens_field' must be")
    bad({ reasoning_effort = "high" }, "unknown option 'reasoning_effort'")
    -- OpenAI-only: the Anthropic provider does not take them
    local ok, err = pcall(tide.provider.anthropic, { tool_choice = "auto" })
    assert.is_false(ok)
    assert.matches("unknown option 'tool_choice'", tostring(err))
    assert(tide.provider.openai { stop = "END", tool_choice = "required", reasoning = { effort = "minimal" } })
  end)
end)
