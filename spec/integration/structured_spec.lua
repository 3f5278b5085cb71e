-- Structured output: s:turn(text, { schema = ... }) and an agent's
-- output_schema give a Lua table that validates, after at most one repair
-- turn, or SchemaMismatch.
local tide = require "tide"
local json = require "tide.json"
local schema = require "tide.schema"
local testing = require "tide.testing"

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

  it("tells the schema on the user message where the provider has no native mode", function()
    answers = { '{"name":"Ada","age":36,"tags":[]}' }
    local a = tide.provider.anthropic { base_url = srv.url, api_key = "k", model = "m" }
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
