-- Amazon Bedrock's Converse API (tide.provider.bedrock) against the mock
-- answering as Bedrock does: Signature Version 4 checked in full, the
-- model in the path (/converse, /converse-stream), a streamed reply as an
-- AWS event stream of Converse events, reasoning that must come back with
-- the calls it led to, the conversation rules Converse enforces, errors
-- and stream exceptions as Bedrock's.
local helpers = require "helpers"
local tide = require "tide"
local testing = require "tide.testing"
local cjson = require "cjson"

local with_mock = helpers.with_mock
local CREDS = { access_key_id = "AKIACONVERSE", secret_access_key = "converse/Secret+Key0123456789EXAMPLE",
  session_token = "IQoJconverse//token=" }
local MODEL = "us.amazon.nova-pro-v1:0"
local FAST = { attempts = 3, base_ms = 1, max_ms = 2 }

local function mock(t)
  t.bedrock = { credentials = CREDS, region = "us-west-2" }
  return t
end

local function make(url, stream, extra)
  local o = { base_url = url, model = MODEL, region = "us-west-2", credentials = CREDS, stream = stream, retry = FAST }
  for k, v in pairs(extra or {}) do o[k] = v end
  return tide.provider.bedrock(o)
end

tide.agent { id = "conversing", prompt = "You look things up.", tools = { tide.tool { name = "lookup",
  description = "Looks an item up.", parameters = { type = "object", properties = { q = { type = "string" } },
    required = { "q" } }, handler = function(a) return "found " .. tostring(a.q) end } } }

for _, stream in ipairs { true, false } do
  local mode = stream and "streamed" or "not streamed"
  local path = "/model/" .. MODEL .. "/" .. (stream and "converse-stream" or "converse")

  describe("tide.provider.bedrock (" .. mode .. ")", function()
    it("runs a tool loop, each request signed, the calls answered as toolResult blocks", function()
      with_mock(mock { default = testing.tool_loop(2) }, function(srv)
        local s = tide.session { agent = "conversing", provider = make(srv.url, stream, { max_tokens = 500 }) }
        assert.are.equal("done after 2 lookups", assert(s:turn("find two things")))
        local reqs = srv:requests()
        assert.are.equal(3, #reqs)
        for _, req in ipairs(reqs) do
          assert.are.equal(path, req.path)
          assert.matches("^AWS4%-HMAC%-SHA256 Credential=AKIACONVERSE/%d+/us%-west%-2/bedrock/aws4_request",
            req.headers["authorization"])
          assert.is_nil(req.json.model) -- (in the path)
          assert.are.same({ maxTokens = 500 }, req.json.inferenceConfig)
          assert.are.equal("You look things up.", req.json.system[1].text:match("^You look things up%."))
          assert.are.equal("lookup", req.json.toolConfig.tools[1].toolSpec.name)
        end
        local m = reqs[3].json.messages
        assert.are.equal(5, #m)
        assert.are.same({ "user", "assistant", "user", "assistant", "user" }, { m[1].role, m[2].role, m[3].role,
          m[4].role, m[5].role })
        local use = m[2].content[1].toolUse
        assert.are.same({ q = "item 1" }, use.input)
        assert.are.same({ toolResult = { toolUseId = use.toolUseId, content = { { text = "found item 1" } } } },
          m[3].content[1])
        local t = s:stats().tokens
        assert.is_true(t.input > 0 and t.output > 0)
      end)
    end)

    it("sends reasoning back with the calls it led to, as Converse wants it", function()
      with_mock(mock { replies = {
        { reasoning = "The user wants Lyon's weather.", tool_calls = { { name = "lookup", arguments = { q = "Lyon" } } } },
        "Sunny in Lyon.",
      } }, function(srv)
        local heard = {}
        local s = tide.session { agent = "conversing", provider = make(srv.url, stream) }
        assert.are.equal("Sunny in Lyon.", assert(s:turn("weather?", { on_reasoning = function(d)
          heard[#heard + 1] = d end })))
        assert.are.equal("The user wants Lyon's weather.", table.concat(heard))
        local a = s:history()[2]
        assert.are.same({ { type = "text", text = "The user wants Lyon's weather.", signature = "EqConverse1",
          provider = "bedrock" } }, a.reasoning)
        local sent = srv:requests()[2].json.messages[2].content[1]
        assert.are.same({ reasoningContent = { reasoningText = { text = "The user wants Lyon's weather.",
          signature = "EqConverse1" } } }, sent)
      end)
      -- a follow-up that drops it gets Bedrock's 400
      with_mock(mock { replies = {
        { reasoning = "Think.", tool_calls = { { name = "lookup", arguments = { q = "x" } } } }, "ok" } }, function(srv)
        local p = make(srv.url, stream)
        local res = assert(p:complete(p:body(p:encode_prefix("s", { { name = "lookup" } }),
          { p:encode_message({ role = "user", content = "go" }) })))
        local call = res.tool_calls[1]
        local _, err = p:complete(p:body(p:encode_prefix("s", { { name = "lookup" } }), {
          p:encode_message({ role = "user", content = "go" }),
          p:encode_message({ role = "assistant", tool_calls = res.tool_calls }),
          p:encode_message({ role = "tool", results = { { id = call.id, content = "r" } } }) }))
        assert.are.equal(400, err.status)
        assert.are.equal("ValidationException", err.type)
        assert.matches("Expected `thinking` or `redacted_thinking`", err.message, 1, true)
      end)
    end)

    it("hands a call's input over as Bedrock wrote it, empty arrays and all", function()
      with_mock(mock { replies = { { tool_calls = { { name = "lookup", arguments = '{"q":"x","tags":[],"opts":{}}' } } } } },
        function(srv)
          local p = make(srv.url, stream)
          local res = assert(p:complete(p:body(p:encode_prefix("s", { { name = "lookup" } }),
            { p:encode_message({ role = "user", content = "go" }) })))
          assert.are.equal('{"q":"x","tags":[],"opts":{}}', res.tool_calls[1].arguments:gsub("%s", ""))
        end)
    end)

    it("reads usage with the cache's reads and writes in the whole prompt, and the stop reasons", function()
      with_mock(mock { replies = {
        { text = "cut", usage = { input = 900, cached = 600, cache_write = 200, output = 7 }, finish_reason = "max_tokens" },
        { text = "hour", usage = { input = 900, cached = 0, cache_write = 300, output = 7 } },
        { text = "", finish_reason = "guardrail_intervened" },
        { text = "", finish_reason = "malformed_tool_use" },
      } }, function(srv)
        local p = make(srv.url, stream)
        local body = p:body(p:encode_prefix("s"), { p:encode_message({ role = "user", content = "hi" }) })
        local res = assert(p:complete(body))
        assert.are.same({ input = 900, output = 7, cached = 600, cache_write = 200, reasoning = 0 }, res.usage)
        -- (with an hour's cache points every write is the hour's, priced so)
        local hour = make(srv.url, stream, { prompt_cache = "1h" })
        local res1h = assert(hour:complete(hour:body(hour:encode_prefix("s"), { hour:encode_message({ role = "user",
          content = "hi" }) })))
        assert.are.equal(res1h.usage.cache_write, res1h.usage.cache_write_1h)
        assert.are.equal("length", res.stop)
        assert.are.equal("max_tokens", res.stop_raw)
        assert.are.equal("content_filter", assert(p:complete(body)).stop)
        local _, err = p:complete(body)
        assert.are.equal("ProviderError", err.code)
        assert.matches("the model's tool use was malformed (stopReason malformed_tool_use)", err.message, 1, true)
      end)
    end)

    it("retries a throttled request, and says what Bedrock refused", function()
      with_mock(mock { replies = {
        { fault = "status", status = 429, body = { message = "Too many requests, please wait before trying again." } },
        "after the wait",
      } }, function(srv)
        local p = make(srv.url, stream)
        local res = assert(p:complete(p:body(p:encode_prefix("s"), { p:encode_message({ role = "user", content = "hi" }) })))
        assert.are.equal("after the wait", res.text)
        assert.are.equal(2, res.attempts)
      end)
      with_mock(mock { replies = { "unused" } }, function(srv)
        local p = make(srv.url, stream)
        -- Converse's own rules, in its words
        for _, case in ipairs {
          { { { role = "assistant", content = "hi" } }, "A conversation must start with a user message." },
          { { { role = "user", content = "a" }, { role = "user", content = "b" } },
            "A conversation must alternate between user and assistant roles." },
        } do
          local wire = {}
          for i, m in ipairs(case[1]) do wire[i] = p:encode_message(m) end
          local _, err = p:complete(p:body(p:encode_prefix("s"), wire))
          assert.are.equal(400, err.status)
          assert.are.equal("ValidationException", err.type)
          assert.matches(case[2], err.message, 1, true)
        end
        -- unsigned by another key: AWS's 403
        local other = make(srv.url, stream, { credentials = { access_key_id = "AKIAOTHER", secret_access_key = "x" } })
        local _, err = other:complete(other:body(other:encode_prefix("s"), { other:encode_message({ role = "user",
          content = "hi" }) }))
        assert.are.equal(403, err.status)
        assert.are.equal("UnrecognizedClientException", err.type)
      end)
    end)
  end)
end

describe("tide.provider.bedrock's turns", function()
  it("keeps the roles alternating after a turn whose request failed, as Converse wants them", function()
    with_mock(mock { replies = { { fault = "status", status = 400, body = { message = "Malformed input request" } },
      "second turn's answer" } }, function(srv)
      local s = tide.session { agent = "conversing", provider = make(srv.url, false, { retry = { attempts = 1 } }) }
      local reply, err = s:turn("first")
      assert.is_nil(reply)
      assert.are.equal(400, err.status)
      assert.are.equal("second turn's answer", assert(s:turn("second")))
      local m = srv:requests()[2].json.messages
      assert.are.same({ "user", "assistant", "user" }, { m[1].role, m[2].role, m[3].role })
      assert.are.same({ { text = "(no answer)" } }, m[2].content)
      assert.are.same({ "first", "second" }, { m[1].content[1].text, m[3].content[1].text })
      -- (the session's history itself is as it was: the turn in between is Converse's)
      assert.are.equal(3, #s:history())
    end)
  end)
end)

describe("tide.provider.bedrock's structured output and tool choice", function()
  local SCHEMA = { type = "object", properties = { city = { type = "string" } }, required = { "city" } }

  it("holds the model to a turn's schema with outputConfig when asked, by its message otherwise", function()
    with_mock(mock { replies = { '{"city":"Lyon"}', '{"city":"Paris"}' } }, function(srv)
      local native = tide.session { agent = "conversing", provider = make(srv.url, false,
        { structured_output = "native" }) }
      assert.are.same({ city = "Lyon" }, assert(native:turn("where?", { schema = SCHEMA })))
      local sent = srv:requests()[1].json
      local f = sent.outputConfig.textFormat
      assert.are.equal("json_schema", f.type)
      assert.are.same(SCHEMA, cjson.decode(f.structure.jsonSchema.schema))
      assert.is_nil(sent.messages[1].content[1].text:find("JSON schema", 1, true))
      local asked = tide.session { agent = "conversing", provider = make(srv.url, false) }
      assert.are.same({ city = "Paris" }, assert(asked:turn("where?", { schema = SCHEMA })))
      sent = srv:requests()[2].json
      assert.is_nil(sent.outputConfig)
      assert.is_truthy(sent.messages[1].content[1].text:find("matches this JSON schema", 1, true))
    end)
  end)

  it("sends the tool choice Converse takes", function()
    local function choice(c)
      local p = make("http://127.0.0.1:9", false, { tool_choice = c })
      return cjson.decode(p:body(p:encode_prefix("s", { { name = "lookup" } }), {})).toolConfig.toolChoice
    end
    assert.are.same({ auto = {} }, choice("auto"))
    assert.are.same({ any = {} }, choice("required"))
    assert.are.same({ tool = { name = "lookup" } }, choice({ name = "lookup" }))
    for _, bad in ipairs { "none", { name = "" }, { name = "x", extra = 1 }, 3 } do
      local ok, err = pcall(make, "http://127.0.0.1:9", false, { tool_choice = bad })
      assert.is_false(ok)
      assert.matches("'tool_choice' must be \"auto\", \"required\" or { name = tool }", tostring(err), 1, true)
    end
    local ok, err = pcall(make, "http://127.0.0.1:9", false, { structured_output = "tool" })
    assert.is_false(ok)
    assert.matches("'structured_output' must be \"native\" or \"prompt\"", tostring(err), 1, true)
  end)
end)

describe("tide.provider.bedrock's reasoning options", function()
  local CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
  local function fields(extra)
    local p = make("http://127.0.0.1:9", false, extra)
    return cjson.decode(p:body(p:encode_prefix("s"), {})).additionalModelRequestFields
  end

  it("puts thinking and effort in the model's own fields, as each model takes them", function()
    assert.are.same({ thinking = { type = "enabled", budget_tokens = 2048 } },
      fields { model = CLAUDE, max_tokens = 8000, thinking = { budget_tokens = 2048 } })
    assert.are.same({ thinking = { type = "adaptive", display = "omitted" } },
      fields { model = "global.anthropic.claude-opus-4-6-v1", thinking = { type = "adaptive", display = "omitted" } })
    assert.are.same({ reasoningConfig = { type = "enabled", maxReasoningEffort = "medium" } },
      fields { model = "us.amazon.nova-2-lite-v1:0", reasoning = { effort = "medium" } })
    assert.are.same({ reasoning_effort = "high" }, fields { model = "openai.gpt-oss-120b-1:0",
      reasoning = { effort = "high" } })
    -- extra_body's fields win, and sit beside
    assert.are.same({ thinking = { type = "enabled", budget_tokens = 4096 }, top_k = 5 }, fields { model = CLAUDE,
      thinking = { budget_tokens = 2048 }, extra_body = { thinking = { type = "enabled", budget_tokens = 4096 }, top_k = 5 } })
    -- an application inference profile's ARN names no maker: Claude's field is sent as asked
    assert.are.same({ thinking = { type = "enabled", budget_tokens = 1024 } }, fields {
      model = "arn:aws:bedrock:us-west-2:1:application-inference-profile/abc", thinking = { budget_tokens = 1024 } })
    assert.is_nil(fields {})
  end)

  it("says which models take which option, and what thinking rules out", function()
    local function fails(extra, want)
      local ok, err = pcall(make, "http://127.0.0.1:9", false, extra)
      assert.is_false(ok)
      assert.matches(want, tostring(err), 1, true)
    end
    fails({ thinking = { budget_tokens = 2048 } }, "'thinking' is Claude's; us.amazon.nova-pro-v1:0 is not a Claude model")
    fails({ model = CLAUDE, reasoning = { effort = "low" } }, "(Claude's is 'thinking')")
    fails({ reasoning = { effort = "low" } }, "'reasoning' is for Amazon Nova 2 and OpenAI's open-weight models")
    fails({ model = "arn:aws:bedrock:us-west-2:1:application-inference-profile/abc", reasoning = { effort = "low" } },
      "has no effort Converse can set")
    fails({ model = "openai.gpt-oss-20b-1:0", reasoning = { effort = "xhigh" } },
      "'reasoning.effort' must be one of low, medium, high")
    fails({ model = "openai.gpt-oss-20b-1:0", reasoning = { effort = "low", summary = "auto" } },
      "unknown option 'reasoning.summary'")
    fails({ model = CLAUDE, max_tokens = 2048, thinking = { budget_tokens = 2048 } },
      "'thinking.budget_tokens' (2048) must be less than max_tokens (2048)")
    fails({ model = CLAUDE, temperature = 0.2, thinking = { budget_tokens = 2048 } },
      "'temperature' (0.2) cannot be set with 'thinking'")
    fails({ model = CLAUDE, tool_choice = "required", thinking = { budget_tokens = 2048 } },
      "'tool_choice' can only be \"auto\" with 'thinking'")
    fails({ model = CLAUDE, thinking = { budget = 1 } }, "unknown option 'thinking.budget'")
    fails({ model = CLAUDE, thinking = { budget_tokens = 500 } }, "'thinking.budget_tokens' (500) must be at least 1024")
  end)

  it("thinks, and sends the thinking back with its calls; the model's refusals come back as Bedrock's", function()
    for _, stream in ipairs { false, true } do
      with_mock(mock { replies = {
        { reasoning = { { text = "Lyon first.", signature = "EqSig1" } },
          tool_calls = { { name = "lookup", arguments = { q = "Lyon" } } } },
        "Sunny.",
      } }, function(srv)
        local s = tide.session { agent = "conversing", provider = make(srv.url, stream, { model = CLAUDE,
          max_tokens = 4096, thinking = { budget_tokens = 1024 } }) }
        assert.are.equal("Sunny.", assert(s:turn("weather?")))
        local reqs = srv:requests()
        assert.are.equal("/model/" .. CLAUDE .. (stream and "/converse-stream" or "/converse"), reqs[1].path)
        assert.are.same({ type = "enabled", budget_tokens = 1024 }, reqs[2].json.additionalModelRequestFields.thinking)
        assert.are.same({ reasoningContent = { reasoningText = { text = "Lyon first.", signature = "EqSig1" } } },
          reqs[2].json.messages[2].content[1])
      end)
    end
    with_mock(mock { replies = { "one", "two" } }, function(srv)
      local function refused(extra, want)
        local p = make(srv.url, false, extra)
        local _, err = p:complete(p:body(p:encode_prefix("s", { { name = "lookup" } }),
          { p:encode_message({ role = "user", content = "hi" }) }))
        assert.are.equal(400, err.status)
        assert.are.equal("ValidationException", err.type)
        assert.matches(want, err.message, 1, true)
      end
      -- what tide cannot know ahead, the model says
      refused({ model = CLAUDE, extra_body = { thinking = { type = "enabled", budget_tokens = 500 } } },
        "budget_tokens: Input should be greater than or equal to 1024")
      refused({ extra_body = { thinking = { type = "enabled", budget_tokens = 2048 } } },
        "extraneous key [thinking] is not permitted")
      refused({ model = CLAUDE, max_tokens = 2000, extra_body = { thinking = { type = "enabled", budget_tokens = 4000 } } },
        "`max_tokens` must be greater than `thinking.budget_tokens`")
      refused({ model = CLAUDE, tool_choice = "required", extra_body = { thinking = { type = "enabled",
        budget_tokens = 2048 } } }, "Thinking may not be enabled when tool_choice forces tool use")
      refused({ model = "us.amazon.nova-2-lite-v1:0", extra_body = { reasoningConfig = { type = "enabled",
        maxReasoningEffort = "max" } } }, "maxReasoningEffort one of low, medium, high")
      refused({ model = "openai.gpt-oss-120b-1:0", extra_body = { reasoningConfig = { type = "enabled" } } },
        "extraneous key [reasoningConfig]")
      -- and what each takes, it takes
      for _, ok in ipairs { { model = "us.amazon.nova-2-lite-v1:0", reasoning = { effort = "high" } },
          { model = "openai.gpt-oss-120b-1:0", reasoning = { effort = "low" } } } do
        local p = make(srv.url, false, ok)
        assert(p:complete(p:body(p:encode_prefix("s"), { p:encode_message({ role = "user", content = "hi" }) })))
      end
    end)
  end)
end)

describe("tide.provider.bedrock's event streams", function()
  local function complete(srv, reply, extra)
    srv:push(reply)
    local p = make(srv.url, true, extra)
    return p:complete(p:body(p:encode_prefix("s"), { p:encode_message({ role = "user", content = "hi" }) }),
      { on_delta = function() end })
  end

  it("hands text over in deltas, and fails a stream that ends early, a bad frame or an exception", function()
    with_mock(mock {}, function(srv)
      local deltas = {}
      srv:push("one two three four five six")
      local p = make(srv.url, true)
      local res = assert(p:complete(p:body(p:encode_prefix("s"), { p:encode_message({ role = "user", content = "hi" }) }),
        { on_delta = function(d) deltas[#deltas + 1] = d end }))
      assert.are.equal("one two three four five six", res.text)
      assert.is_true(#deltas >= 3)
      local _, err = complete(srv, { text = "cut short", fault = "truncate" })
      assert.are.equal("MalformedResponse", err.code)
      assert.matches("bedrock stream ended before its messageStop", err.message, 1, true)
      _, err = complete(srv, { text = "bad frame", fault = "malformed" })
      assert.are.equal("MalformedResponse", err.code)
      assert.matches("invalid AWS event stream: the message's CRC does not match", err.message, 1, true)
      -- a throttling exception mid-stream: retried when no text had reached anyone
      srv:push({ text = "after", fault = "exception" }, "second time lucky")
      res = assert(p:complete(p:body(p:encode_prefix("s"), { p:encode_message({ role = "user", content = "hi" }) })))
      assert.are.equal("second time lucky", res.text)
      assert.are.equal(2, res.attempts)
      -- and not once its text had (the caller heard half an answer)
      srv:push({ text = "half an answer", fault = "exception" })
      _, err = complete(srv, "unused")
      assert.are.equal("RateLimited", err.code)
      assert.matches("bedrock stream failed: throttlingException: Too many requests", err.message, 1, true)
      srv:close()
    end)
  end)
end)

describe("tide.provider.bedrock's stream sink, fed malformed streams", function()
  -- A well-formed ConverseStream, then thousands of mutations of it (a field
  -- dropped or of another type, an unknown event, a payload that is not
  -- JSON, a frame left out), each fed to the sink whole: the sink answers a
  -- reply or an error and never raises; a reply's calls are well formed.
  it("answers each with a reply or an error, never raising", function()
    local p = make("http://127.0.0.1:9", true)
    local base = {
      { "messageStart", { role = "assistant" } },
      { "contentBlockDelta", { contentBlockIndex = 0, delta = { reasoningContent = { text = "hm" } } } },
      { "contentBlockDelta", { contentBlockIndex = 0, delta = { reasoningContent = { signature = "S" } } } },
      { "contentBlockStop", { contentBlockIndex = 0 } },
      { "contentBlockDelta", { contentBlockIndex = 1, delta = { text = "Hi" } } },
      { "contentBlockStart", { contentBlockIndex = 2, start = { toolUse = { toolUseId = "t1", name = "lookup" } } } },
      { "contentBlockDelta", { contentBlockIndex = 2, delta = { toolUse = { input = '{"q":1}' } } } },
      { "messageStop", { stopReason = "tool_use" } },
      { "metadata", { usage = { inputTokens = 3, outputTokens = 4 } } },
    }
    local values = { 0, -1, 1e300, 2 ^ 53, "x", true, cjson.null, {}, { 1, 2 }, 1.5, 3, "tool_use", { text = 5 } }
    local names = { "messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop", "messageStop",
      "metadata", "unknownEvent", "" }
    local seed = 12345
    local function rand(n) -- (a fixed sequence: the same streams every run)
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % n + 1
    end
    local function mutate(v, depth)
      if type(v) ~= "table" or depth > 3 then return values[rand(#values)] end
      local c, keys = {}, {}
      for k, x in pairs(v) do c[k] = x; keys[#keys + 1] = k end
      table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
      if #keys > 0 then
        local k, r = keys[rand(#keys)], rand(3)
        if r == 1 then c[k] = nil elseif r == 2 then c[k] = values[rand(#values)] else c[k] = mutate(c[k], depth + 1) end
      end
      return c
    end
    local replies, errors = 0, 0
    for _ = 1, 3000 do
      local frames = {}
      for _, ev in ipairs(base) do
        local name, obj = ev[1], ev[2]
        if rand(4) == 1 then obj = mutate(obj, 0) end
        if rand(20) == 1 then name = names[rand(#names)] end
        local payload = rand(50) == 1 and "not json" or cjson.encode(obj)
        if rand(30) ~= 1 then
          frames[#frames + 1] = testing.aws_frame({ { ":event-type", name }, { ":content-type", "application/json" },
            { ":message-type", "event" } }, payload)
        end
      end
      local sink <close> = p:_c_stream()
      local n, ferr = sink:feed(table.concat(frames), {}, {})
      assert.is_true(n ~= nil or (type(ferr) == "table" and ferr.code == "MalformedResponse"))
      local r, err = sink:finish()
      if r then
        replies = replies + 1
        assert.is_string(r.text)
        for _, c in ipairs(r.tool_calls) do
          assert.is_string(c.id)
          assert.is_string(c.name)
          assert.is_string(c.arguments)
        end
      else
        errors = errors + 1
        assert.is_string(err.code)
        assert.is_string(err.message)
      end
    end
    -- both outcomes were reached
    assert.is_true(replies > 100 and errors > 100)
  end)
end)

describe("tide.provider.bedrock on a cassette", function()
  it("records a streamed tool loop signed for Bedrock, and replays it offline", function()
    local path = os.tmpname()
    helpers.run(function()
      local srv <close> = assert(testing.mock_server(mock { default = testing.tool_loop(2) }))
      local rec = assert(testing.record { provider = make(srv.url, true), cassette = path })
      assert.are.equal("done after 2 lookups", assert(tide.session { agent = "conversing", provider = rec }:turn("go")))
      rec:close()
      local replay <close> = assert(testing.replay(path, { provider = "bedrock" }))
      local p = make(replay.url, true, { credentials = { access_key_id = "AKIAOFFLINE", secret_access_key = "x" } })
      assert.are.equal("done after 2 lookups", assert(tide.session { agent = "conversing", provider = p }:turn("go")))
      assert.are.same({}, replay:mismatches())
    end)
    assert.matches('"encoding":"base64"', helpers.read(path), 1, true)
    os.remove(path)
  end)
end)

describe("tide.provider.bedrock's options and encoding", function()
  local function body_of(p, msgs)
    local wire = {}
    for i, m in ipairs(msgs) do wire[i] = p:encode_message(m) end
    return cjson.decode(p:body(p:encode_prefix("sys", { { name = "t", parameters = { type = "object" } } }), wire))
  end

  it("puts stop, temperature, cache points and the model's own fields where Converse reads them", function()
    local p = make("http://127.0.0.1:9", false, { stop = "END", temperature = 0.2, prompt_cache = "1h",
      extra_body = { inferenceConfig = { topK = 20 } } })
    local b = body_of(p, { { role = "user", content = "hi" } })
    assert.are.same({ stopSequences = { "END" }, temperature = 0.2 }, b.inferenceConfig)
    assert.are.same({ inferenceConfig = { topK = 20 } }, b.additionalModelRequestFields)
    assert.are.same({ cachePoint = { type = "default", ttl = "1h" } }, b.system[2])
    assert.are.same({ cachePoint = { type = "default", ttl = "1h" } }, b.toolConfig.tools[2])
    assert.are.equal("http://127.0.0.1:9/model/us.amazon.nova-pro-v1:0/converse", p:_url())
    assert.are.equal("http://127.0.0.1:9/model/arn:aws:bedrock:us-west-2:1:inference-profile%2Fx/converse",
      make("http://127.0.0.1:9", false, { model = "arn:aws:bedrock:us-west-2:1:inference-profile/x" }):_url())
  end)

  it("sends images and documents as bytes, and never a blank text block", function()
    local p = make("http://127.0.0.1:9", false)
    local png = "\137PNG\r\n\26\n" .. "fake"
    local b = body_of(p, {
      { role = "user", content = { { type = "text", text = "look" }, require("tide.content").resolve({ tide.image { data = png } })[1],
        { type = "file", mime = "application/pdf", name = "report 2026.pdf", data = tide.core.base64("%PDF-1") } } },
      { role = "assistant", content = "" },
      { role = "user", content = "again" },
    })
    local c = b.messages[1].content
    assert.are.same({ image = { format = "png", source = { bytes = tide.core.base64(png) } } }, c[2])
    assert.are.same({ document = { format = "pdf", name = "report 2026", source = { bytes = tide.core.base64("%PDF-1") } } },
      c[3])
    assert.are.same({ { text = "(no answer)" } }, b.messages[2].content)
    assert.has_error(function() p:encode_message({ role = "user", content = { { type = "image", url = "https://x/y.png",
      mime = "image/png" } } }) end, "tide.provider.bedrock: Converse takes images as bytes (a path, data or a data: URL), not a link")
  end)

  it("sends only what Converse takes: no empty description, block or content, arguments as written", function()
    local p = make("http://127.0.0.1:9", false)
    local prefix = cjson.decode(p:body(p:encode_prefix("s", { { name = "bare" } }), {}))
    assert.is_nil(prefix.toolConfig.tools[1].toolSpec.description)
    local b = body_of(p, {
      { role = "user", content = { { type = "text", text = "  " }, { type = "text", text = "look" } } },
      { role = "assistant", tool_calls = { { id = "t1", name = "t", arguments = '{"tags":[],"o":{}}' } } },
      { role = "tool", results = {} },
      { role = "user", content = { require("tide.content").resolve({ tide.file { data = '{"a":1}', name = "x.json" } })[1] } },
      { role = "assistant", tool_calls = { { id = "t2", name = "t", arguments = "{}" } } },
      { role = "tool", results = { { id = "t2", content = { { type = "text", text = "see" },
        { type = "image", url = "https://example.com/y.png" } } } } },
    })
    assert.are.same({ { text = "look" } }, b.messages[1].content)
    -- (the body as sent: the arguments' empty array stays an array)
    local raw = p:body(p:encode_prefix("s", { { name = "t" } }), { p:encode_message(
      { role = "assistant", tool_calls = { { id = "t1", name = "t", arguments = '{"tags":[],"o":{}}' } } }) })
    assert.is_truthy(raw:find('"input":{"tags":[],"o":{}}', 1, true))
    assert.are.same({ { text = "(no output)" } }, b.messages[3].content)
    assert.are.equal("txt", b.messages[4].content[1].document.format)
    assert.are.same({ { text = "see" }, { text = "[image: https://example.com/y.png]" } },
      b.messages[6].content[1].toolResult.content)
    -- what the mock refuses, in Bedrock's words
    with_mock(mock { replies = { "unused" } }, function(srv)
      local q = make(srv.url, false)
      local _, err = q:complete('{"messages":[{"content":[],"role":"user"}]}')
      assert.matches("The content field in the Message object at messages.0 is empty", err.message, 1, true)
      _, err = q:complete('{"messages":[{"content":[{"text":"hi"}],"role":"user"}],"toolConfig":{"tools":[{"toolSpec":'
        .. '{"description":"","inputSchema":{"json":{}},"name":"t"}}]}}')
      assert.matches("toolSpec.description' failed to satisfy constraint", err.message, 1, true)
    end)
  end)

  it("says what is wrong with its options", function()
    local function fails(opts, want)
      local ok, err = pcall(tide.provider.bedrock, opts)
      assert.is_false(ok)
      assert.matches(want, tostring(err), 1, true)
    end
    fails({ region = "us-east-1", credentials = CREDS }, "'model' is required")
    fails({ model = "m", region = "us-east-1", credentials = CREDS, stop = { 1 } }, "'stop' must be a string or a list")
    fails({ model = "m", region = "us-east-1", credentials = CREDS, thinking = {} }, "'thinking' needs 'budget_tokens'")
    fails({ model = "m", region = "r/x", credentials = CREDS }, "'region' must be a region")
    fails({ model = "m", region = "us-east-1", credentials = CREDS, profile = "p" },
      "'profile' and 'credentials' cannot both be given")
    fails({ model = "m", region = "us-east-1", credentials = { access_key_id = "A" } },
      "'credentials' needs 'secret_access_key'")
    local ok, err = pcall(tide.provider.openai, { region = "us-east-1" })
    assert.is_false(ok)
    assert.matches("unknown option 'region'", tostring(err), 1, true)
  end)
end)
