-- Structured output: s:turn(text, { schema = ... }) and an agent's
-- output_schema give a Lua table that validates, after at most one repair
-- turn, or SchemaMismatch.
local tide = require "tide"
local json = require "tide.json"
local schema = require "tide.schema"
local testing = require "tide.testing"

local cjson_decode = require("cjson").decode

local PERSON = {
  type = "object", additionalProperties = false, required = { "name", "age", "tags" },
  properties = {
    name = { type = "string", minLength = 1 },
    age = { type = "integer", minimum = 0 },
    tags = { type = "array", items = { type = "string" } },
    role = { enum = { "admin", "user" } },
  },
}

describe("tide.schema", function()
  it("validates with paths for each failure", function()
    assert.are.same({}, schema.validate({ name = "a", age = 3, tags = { "x" } }, PERSON))
    local errs = schema.validate({ name = "", age = 1.5, tags = { 1 }, role = "root", extra = true }, PERSON)
    table.sort(errs)
    assert.are.same({
      "#/age: expected integer, got number",
      "#/name: shorter than 1 characters",
      "#/role: \"root\" is not one of the allowed values",
      "#/tags/0: expected string, got integer",
      "#: property 'extra' is not allowed",
    }, errs)
    assert.are.same({ "#: missing required property 'tags'" }, schema.validate({ name = "a", age = 1 }, PERSON))
  end)

  it("follows local $ref and anyOf", function()
    local s = { ["$defs"] = { id = { type = "integer" } }, type = "object",
      properties = { a = { ["$ref"] = "#/$defs/id" }, b = { anyOf = { { type = "string" }, { type = "null" } } } } }
    assert.are.same({}, schema.validate({ a = 1, b = json.null }, s))
    assert.are.equal(2, #schema.validate({ a = "x", b = 3 }, s))
  end)

  it("keeps [] an array when the value is encoded again", function()
    local v = schema.mark_arrays(json.decode('{"name":"a","age":1,"tags":[]}'), PERSON)
    assert.are.equal('{"age":1,"name":"a","tags":[]}', json.canonical(v))
  end)

  it("marks a schema's lists again when it is read back from a transcript", function()
    local read = json.decode('{"type":"object","required":[],"properties":{"a":{"type":"array",'
      .. '"items":{"enum":[]}},"b":{"anyOf":[{"type":"object","required":[]}]}},"additionalProperties":false}')
    assert.are.equal('{"additionalProperties":false,"properties":{"a":{"items":{"enum":[]},"type":"array"},'
      .. '"b":{"anyOf":[{"required":[],"type":"object"}]}},"required":[],"type":"object"}',
      json.canonical(schema.restore_arrays(read)))
  end)

  it("rejects what is not a schema, naming where", function()
    assert.has_error(function() schema.check({ type = "strnig" }, "s", 1) end,
      "s is not a JSON schema tide supports (#: unknown type 'strnig')")
    assert.has_error(function() schema.check({ properties = { a = { typo = 1 } } }, "s", 1) end,
      "s is not a JSON schema tide supports (#/properties/a: unsupported keyword 'typo')")
  end)
end)

describe("structured output in a turn", function()
  local srv, p
  local answers
  before_each(function()
    answers = {}
    srv = testing.mock_server { default = function() return table.remove(answers, 1) or "{}" end }
    p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = true }
    tide.agent { id = "plain", prompt = "You answer." }
  end)
  after_each(function() srv:close() end)

  it("returns a validated table; OpenAI holds the model to it with response_format", function()
    answers = { '```json\n{"name":"Ada","age":36,"tags":[]}\n```', "plain" }
    local s = tide.session { agent = "plain", provider = p }
    local v, err = s:turn("who?", { schema = PERSON })
    assert.is_nil(err)
    assert.are.equal("Ada", v.name)
    assert.are.equal(36, v.age)
    assert.are.equal('{"age":36,"name":"Ada","tags":[]}', json.canonical(v))
    local body = srv:requests()[1].json
    assert.are.equal("json_schema", body.response_format.type)
    assert.are.same(PERSON.required, body.response_format.json_schema.schema.required)
    -- 'role' is optional: not a schema strict mode takes
    assert.is_false(body.response_format.json_schema.strict)
    assert.are.equal("who?", body.messages[#body.messages].content)
    -- the next plain turn is sent with the frozen prefix, no response_format
    assert.are.equal("plain", s:turn("and?"))
    assert.is_nil(srv:requests()[2].json.response_format)
  end)

  it("asks in strict mode when the schema allows it", function()
    answers = { '{"a":"x"}' }
    local strict = { type = "object", additionalProperties = false, required = { "a" },
      properties = { a = { type = "string" } } }
    local s = tide.session { agent = "plain", provider = p }
    assert.are.equal("x", s:turn("a?", { schema = strict }).a)
    assert.is_true(srv:requests()[1].json.response_format.json_schema.strict)
  end)

  it("wraps a schema whose root is not an object, as OpenAI's formats need, and unwraps the answer", function()
    local list = { type = "array", items = { type = "string" } }
    for _, api in ipairs { "chat", "responses" } do
      answers = { '{"value":["Ada","Bo"]}', '{"value":[]}' }
      local q = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", api = api }
      local s = tide.session { agent = "plain", provider = q }
      assert.are.same({ "Ada", "Bo" }, assert(s:turn("who?", { schema = list })))
      local body = srv:requests()[#srv:requests()].json
      local format = api == "chat" and body.response_format.json_schema or body.text.format
      assert.are.equal("output_value", format.name)
      assert.are.same({ "value" }, format.schema.required)
      assert.are.same(list, format.schema.properties.value)
      -- an empty list stays a list
      assert.are.equal("[]", json.canonical(assert(s:turn("nobody?", { schema = list }))))
    end
  end)

  it("keeps extra_body's format fields from displacing the schema's", function()
    answers = { '{"a":"x"}', '{"a":"y"}' }
    local strict = { type = "object", additionalProperties = false, required = { "a" },
      properties = { a = { type = "string" } } }
    local chat = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m",
      extra_body = { response_format = { type = "json_object" } } }
    assert.are.equal("x", tide.session { agent = "plain", provider = chat }:turn("a?", { schema = strict }).a)
    local raw = srv:requests()[1].body
    local _, n = raw:gsub('"response_format"', "")
    assert.are.equal(1, n)
    assert.are.equal("json_schema", srv:requests()[1].json.response_format.type)
    local resp = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", api = "responses",
      extra_body = { text = { verbosity = "low" } } }
    assert.are.equal("y", tide.session { agent = "plain", provider = resp }:turn("a?", { schema = strict }).a)
    local text = srv:requests()[2].json.text
    assert.are.equal("low", text.verbosity)
    assert.are.equal("json_schema", text.format.type)
  end)

  it("asks DeepSeek in the message, which refuses the json_schema format", function()
    local d = tide.provider.openai { base_url = "https://api.deepseek.com", api_key = "k", model = "deepseek-chat" }
    assert.is_false(d._native_schema)
    assert.is_nil(cjson_decode(d:body(d:encode_prefix("s"), {})).response_format)
  end)

  it("tells the schema on the user message where the provider has no native mode", function()
    answers = { '{"name":"Ada","age":36,"tags":[]}' }
    -- (every provider of tide's has one now: a provider without it)
    local a = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m" }
    a._native_schema = false
    local s = tide.session { agent = "plain", provider = a }
    assert.are.equal("Ada", s:turn("who?", { schema = PERSON }).name)
    local body = srv:requests()[1].json
    local content = body.messages[#body.messages].content
    assert.matches("matches this JSON schema", type(content) == "string" and content or content[1].text, 1, true)
  end)

  it("gives the model one repair turn with what was wrong", function()
    answers = { '{"name":"Ada","age":"old"}', '{"name":"Ada","age":36,"tags":["math"]}' }
    local s = tide.session { agent = "plain", provider = p }
    local v = assert(s:turn("who?", { schema = PERSON }))
    assert.are.equal("math", v.tags[1])
    local second = srv:requests()[2].json
    local repair = second.messages[#second.messages].content
    assert.matches("#/age: expected integer, got string", repair, 1, true)
    assert.matches("missing required property 'tags'", repair, 1, true)
  end)

  it("fails with SchemaMismatch after the repair turn, and for an answer that is not JSON", function()
    answers = { "I think Ada.", "Still prose." }
    local s = tide.session { agent = "plain", provider = p }
    local v, err = s:turn("who?", { schema = PERSON })
    assert.is_nil(v)
    assert.are.equal("SchemaMismatch", err.code)
    assert.are.equal("Still prose.", err.text)
    assert.matches("not JSON", err.errors[1], 1, true)
    -- the session goes on
    answers = { "fine" }
    assert.are.equal("fine", s:turn("hello"))
  end)

  it("takes an agent's output_schema and checks schemas at definition", function()
    tide.agent { id = "typed", prompt = "You answer.", output_schema = PERSON }
    answers = { '{"name":"Bo","age":2,"tags":["a","b"]}' }
    local s = tide.session { agent = "typed", provider = p }
    local v = assert(s:turn("who?"))
    assert.are.equal("b", v.tags[2])
    assert.has_error(function() tide.agent { id = "bad", prompt = "x", output_schema = { type = 5 } } end)
    assert.has_error(function() s:turn("x", { schema = "object" }) end)
  end)
end)

describe("structured output on the Responses API", function()
  it("holds the model to the schema with text.format json_schema", function()
    local srv = testing.mock_server { default = '{"a":"x"}' }
    local p = tide.provider.openai { api = "responses", base_url = srv.url, api_key = "k", model = "m", stream = false }
    tide.agent { id = "plain_r", prompt = "You answer." }
    local s = tide.session { agent = "plain_r", provider = p }
    local strict = { type = "object", additionalProperties = false, required = { "a" },
      properties = { a = { type = "string" } } }
    assert.are.equal("x", s:turn("a?", { schema = strict }).a)
    local body = srv:requests()[1].json
    assert.are.equal("json_schema", body.text.format.type)
    assert.is_true(body.text.format.strict)
    srv:close()
  end)
end)

describe("structured output on Anthropic Messages", function()
  local helpers = require "helpers"
  local cjson = require "cjson"

  local function anthropic(url, extra)
    local o = { base_url = url, api_key = "k", model = "claude-mock", retry = { attempts = 1 } }
    for k, v in pairs(extra or {}) do o[k] = v end
    return tide.provider.anthropic(o)
  end

  -- A mock answering in turn; the requests it got.
  local function with_mock(opts, fn)
    helpers.run(function()
      local srv <close> = assert(testing.mock_server(opts))
      fn(srv)
    end)
  end

  local lookup = tide.tool { name = "lookup", description = "Looks up.",
    parameters = { type = "object", properties = { q = { type = "string" } }, required = { "q" } },
    handler = function(args) return "found " .. args.q end }

  before_each(function()
    tide.agent { id = "plain_a", prompt = "You answer." }
    tide.agent { id = "tooled_a", prompt = "You look things up.", tools = { lookup } }
  end)

  for _, stream in ipairs({ true, false }) do
    local mode = stream and "streamed" or "not streamed"

    it("holds the model to the schema with output_config.format, as the API takes it (" .. mode .. ")", function()
      with_mock({ replies = { '{"name":"Ada","age":36,"tags":[]}', "plain" } }, function(srv)
        local s = tide.session { agent = "plain_a", provider = anthropic(srv.url, { stream = stream }) }
        local v, err = s:turn("who?", { schema = PERSON })
        assert.is_nil(err, err and tostring(err))
        assert.are.equal('{"age":36,"name":"Ada","tags":[]}', json.canonical(v))
        local body = srv:requests()[1].json
        local format = body.output_config.format
        assert.are.equal("json_schema", format.type)
        -- closed, as the API requires; the bounds it does not take told in the description
        assert.is_false(format.schema.additionalProperties)
        assert.are.same(PERSON.required, format.schema.required)
        assert.is_nil(format.schema.properties.name.minLength)
        assert.are.equal("{minLength: 1}", format.schema.properties.name.description)
        assert.are.equal("{minimum: 0}", format.schema.properties.age.description)
        assert.is_nil(body.tool_choice)
        -- the user message says nothing of the schema: the API holds the model to it
        assert.are.equal("who?", body.messages[#body.messages].content)
        -- the next plain turn has no output_config
        assert.are.equal("plain", s:turn("and?"))
        assert.is_nil(srv:requests()[2].json.output_config)
      end)
    end)

    it("answers through a forced tool with structured_output = \"tool\" (" .. mode .. ")", function()
      with_mock({ replies = { '{"name":"Ada","age":36,"tags":["math"]}' } }, function(srv)
        local s = tide.session { agent = "plain_a",
          provider = anthropic(srv.url, { stream = stream, structured_output = "tool" }) }
        local v, err = s:turn("who?", { schema = PERSON })
        assert.is_nil(err, err and tostring(err))
        assert.are.equal("math", v.tags[1])
        local body = srv:requests()[1].json
        assert.is_nil(body.output_config)
        assert.are.same({ type = "tool", name = "structured_output" }, body.tool_choice)
        local tool = body.tools[#body.tools]
        assert.are.equal("structured_output", tool.name)
        assert.are.same(PERSON.required, tool.input_schema.required)
        -- the answer is the assistant's text in the history, no call left to answer
        local h = s:history()
        assert.are.same({ name = "Ada", age = 36, tags = { "math" } }, cjson.decode(h[#h].content))
        assert.is_nil(h[#h].tool_calls)
        assert.are.equal("stop", s:stats().stop_reason)
      end)
    end)
  end

  it("gives the model its repair turn, both ways", function()
    for _, so in ipairs({ "native", "tool" }) do
      with_mock({ replies = { '{"name":"Ada","age":"old"}', '{"name":"Ada","age":36,"tags":[]}' } }, function(srv)
        local s = tide.session { agent = "plain_a", provider = anthropic(srv.url, { structured_output = so }) }
        local v, err = s:turn("who?", { schema = PERSON })
        assert.is_nil(err, err and tostring(err))
        assert.are.equal(36, v.age)
        local second = srv:requests()[2].json
        local last = second.messages[#second.messages]
        assert.matches("#/age: expected integer, got string", last.content, 1, true)
        -- the first answer went back as the assistant's text, before the repair
        assert.are.same({ name = "Ada", age = "old" }, cjson.decode(second.messages[#second.messages - 1].content))
        if so == "native" then assert.is_table(second.output_config) else assert.is_table(second.tool_choice) end
      end)
    end
  end)

  it("says an answer through the output tool was cut short, never taking it for a whole one", function()
    with_mock({ replies = { { content = '{"name":"Ada","age":3', stop_reason = "max_tokens" } } }, function(srv)
      local s = tide.session { agent = "plain_a", provider = anthropic(srv.url, { structured_output = "tool" }) }
      local v, err = s:turn("who?", { schema = PERSON, truncated = "error" })
      assert.is_nil(v)
      assert.are.equal("Truncated", err.code)
      assert.are.equal("length", s:stats().stop_reason)
    end)
  end)

  it("lets an agent use its tools first: tool_choice any, the answer through the output tool", function()
    with_mock({ replies = { { tool_calls = { { name = "lookup", arguments = { q = "ada" } } } },
                            '{"name":"Ada","age":36,"tags":["found"]}' } }, function(srv)
      local s = tide.session { agent = "tooled_a", provider = anthropic(srv.url, { structured_output = "tool" }) }
      local v, err = s:turn("who?", { schema = PERSON })
      assert.is_nil(err, err and tostring(err))
      assert.are.equal("found", v.tags[1])
      local reqs = srv:requests()
      assert.are.same({ type = "any" }, reqs[1].json.tool_choice)
      assert.are.same({ "lookup", "structured_output" }, { reqs[1].json.tools[1].name, reqs[1].json.tools[2].name })
      assert.are.equal(1, s:stats().tool_calls)
    end)
  end)

  it("wraps a schema whose root is not an object, and unwraps the answer", function()
    local list = { type = "array", items = { ["$ref"] = "#/$defs/name" }, ["$defs"] = { name = { type = "string" } } }
    with_mock({ replies = { '{"value":["Ada","Bo"]}' } }, function(srv)
      local s = tide.session { agent = "plain_a", provider = anthropic(srv.url, { structured_output = "tool" }) }
      local v, err = s:turn("who?", { schema = list })
      assert.is_nil(err, err and tostring(err))
      assert.are.same({ "Ada", "Bo" }, v)
      local tool = srv:requests()[1].json.tools[1]
      assert.are.same({ "value" }, tool.input_schema.required)
      assert.are.equal("string", tool.input_schema["$defs"].name.type)
    end)
  end)

  it("offers the output tool unforced with thinking on, which the API refuses to force", function()
    with_mock({ replies = { { reasoning = "Ada it is.", tool_calls = { { name = "structured_output",
      arguments = '{"name":"Ada","age":36,"tags":[]}' } } } } }, function(srv)
      local p = anthropic(srv.url, { structured_output = "tool", thinking = { budget_tokens = 1024 } })
      local s = tide.session { agent = "plain_a", provider = p }
      local v, err = s:turn("who?", { schema = PERSON })
      assert.is_nil(err, err and tostring(err))
      assert.are.equal("Ada", v.name)
      assert.are.same({ type = "auto" }, srv:requests()[1].json.tool_choice)
    end)
    -- what the API answers a forced tool with thinking on
    with_mock({ replies = { "never" } }, function(srv)
      local p = anthropic(srv.url, { thinking = { budget_tokens = 1024 }, extra_body = { tool_choice = { type = "any" } } })
      local out, err = p:complete(p:body(p:encode_prefix("s", { { name = "lookup" } }),
        { p:encode_message({ role = "user", content = "q" }) }))
      assert.is_nil(out)
      assert.are.equal(400, err.status)
      assert.matches("Thinking may not be enabled when tool_choice forces tool use.", err.body, 1, true)
    end)
  end)

  it("meets the real 400 where structured outputs are missing, or the schema is not closed", function()
    with_mock({ anthropic = { structured_outputs = false }, replies = { "never" },
                default = '{"name":"Ada","age":36,"tags":[]}' }, function(srv)
      local s = tide.session { agent = "plain_a", provider = anthropic(srv.url) }
      local v, err = s:turn("who?", { schema = PERSON })
      assert.is_nil(v)
      assert.are.equal("ProviderError", err.code)
      assert.are.equal(400, err.status)
      assert.matches("output_config.format: Extra inputs are not permitted", err.message, 1, true)
      -- the forced tool works on such a server
      local t = tide.session { agent = "plain_a", provider = anthropic(srv.url, { structured_output = "tool" }) }
      assert.are.equal("Ada", assert(t:turn("who?", { schema = PERSON })).name)
    end)
    with_mock({ replies = { "never" } }, function(srv)
      -- a schema sent as the user wrote it (extra_body), open objects and all
      local p = anthropic(srv.url, { extra_body = { output_config = { format = { type = "json_schema",
        schema = { type = "object", properties = { a = { type = "string" } } } } } } })
      local out, err = p:complete(p:body(p:encode_prefix("s"), { p:encode_message({ role = "user", content = "q" }) }))
      assert.is_nil(out)
      assert.are.equal(400, err.status)
      assert.matches("For 'object' type, 'additionalProperties' must be explicitly set to false", err.body, 1, true)
      local body = cjson.decode(err.body)
      assert.are.equal("invalid_request_error", body.error.type)
      assert.are.equal(1, srv:pending(), "a refused request spends no scripted reply")
    end)
  end)

  it("checks the option and keeps the output tool's name for itself", function()
    assert.has_error(function() tide.provider.anthropic { structured_output = "json" } end,
      "tide.provider.anthropic: 'structured_output' must be \"native\" or \"tool\"")
    assert.has_error(function() tide.provider.openai { structured_output = "tool" } end,
      "tide.provider.openai: unknown option 'structured_output'")
    local p = tide.provider.anthropic { base_url = "http://127.0.0.1:1", structured_output = "tool" }
    assert.has_error(function() p:encode_prefix("s", { { name = "structured_output" } }) end,
      "tide.provider.anthropic: tools[1] is named \"structured_output\", the tool structured_output = \"tool\" "
        .. "answers through")
  end)
end)
