-- core/turn.c: the OpenAI message encoders the tool round and
-- provider.openai share, and the integers walk of decoded JSON.
local core = require "tide.core"
local json = require "tide.json"

-- Strings that take every kind of escape lua-cjson writes.
local awkward = {
  "plain",
  "",
  'quote " backslash \\ slash /',
  "controls \b\f\n\r\t \1 \31 and DEL \127",
  "unicode: caf\u{e9} \u{1F600} \u{2028}",
  ("x"):rep(5000),
}

describe("core.openai_assistant_wire", function()
  it("writes the bytes json.canonical gives for the same message", function()
    for _, s in ipairs(awkward) do
      local calls = {
        { id = "call_" .. s, name = "look" .. s, arguments = '{"q":"' .. s:gsub('[%c"\\]', "") .. '"}' },
        { id = "b", name = "other", arguments = "{}" },
      }
      local want_calls = {}
      for i, c in ipairs(calls) do
        want_calls[i] = { ["function"] = { arguments = c.arguments, name = c.name }, id = c.id, type = "function" }
      end
      local content = s ~= "" and s or json.null
      local want = json.canonical { content = content, role = "assistant", tool_calls = want_calls }
      assert.are.equal(want, core.openai_assistant_wire(s, calls))
      if s == "" then assert.are.equal(want, core.openai_assistant_wire(nil, calls)) end
    end
  end)

  it("declines (nil) calls it cannot write, and no calls at all", function()
    assert.is_nil(core.openai_assistant_wire(nil, {}))
    assert.is_nil(core.openai_assistant_wire(nil, { { id = 1, name = "n", arguments = "{}" } }))
    assert.is_nil(core.openai_assistant_wire(nil, { { id = "a", name = "n", arguments = { q = 1 } } }))
    assert.is_nil(core.openai_assistant_wire(nil, { "not a table" }))
    assert.has_error(function() core.openai_assistant_wire(nil, "calls") end,
      "bad argument #2 to 'openai_assistant_wire' (table expected, got string)")
  end)

  it("is what provider.openai encodes, table arguments made canonical first", function()
    local p = require("tide.provider").openai { api_key = "k", model = "m" }
    local msg = { role = "assistant", content = "", tool_calls = {
      { id = "a", name = "n", arguments = { b = 2, a = { 1, 2 } } } } }
    assert.are.equal(core.openai_assistant_wire(nil, { { id = "a", name = "n", arguments = '{"a":[1,2],"b":2}' } }),
      p:encode_message(msg))
  end)
end)

describe("core.openai_results_wire", function()
  it("writes one tool element per result, as json.canonical gives each, comma-joined", function()
    for _, s in ipairs(awkward) do
      local results = { { id = "c1", content = s, is_error = false }, { id = "c/2", content = "ok" } }
      local want = json.canonical { content = s, role = "tool", tool_call_id = "c1" } .. "," ..
        json.canonical { content = "ok", role = "tool", tool_call_id = "c/2" }
      assert.are.equal(want, core.openai_results_wire(results))
    end
  end)

  it("quotes any bytes as lua-cjson does", function()
    local cjson = require "cjson"
    math.randomseed(11)
    for _ = 1, 500 do
      local t = {}
      for i = 1, math.random(0, 60) do t[i] = string.char(math.random(0, 255)) end
      local s = table.concat(t)
      assert.are.equal('{"content":' .. cjson.encode(s) .. ',"role":"tool","tool_call_id":' .. cjson.encode(s) .. "}",
        core.openai_results_wire({ { id = s, content = s } }))
    end
  end)

  it("declines (nil) results it cannot write, and none at all", function()
    assert.is_nil(core.openai_results_wire({}))
    assert.is_nil(core.openai_results_wire({ { id = "a", content = { text = "t" } } }))
    assert.is_nil(core.openai_results_wire({ { content = "no id" } }))
  end)
end)

describe("core.json_integers", function()
  it("turns integral floats into integers at any depth, in place", function()
    local t = { n = 3.0, f = 2.5, big = 2.0 ^ 60, neg = -7.0, list = { 1.0, { 2.0, "3" } }, s = "4" }
    assert.are.equal(t, core.json_integers(t))
    assert.are.equal("integer", math.type(t.n))
    assert.are.equal("float", math.type(t.f))
    assert.are.equal("float", math.type(t.big)) -- outside the exact range: left alone
    assert.are.equal("integer", math.type(t.neg))
    assert.are.equal("integer", math.type(t.list[1]))
    assert.are.equal("integer", math.type(t.list[2][1]))
    assert.are.equal("3", t.list[2][2])
  end)

  it("is what json.decode applies, and passes anything but a table through", function()
    local v = json.decode('{"a":[1,2.0,3.5],"b":{"c":-0}}')
    assert.are.equal("integer", math.type(v.a[2]))
    assert.are.equal("float", math.type(v.a[3]))
    assert.are.equal("integer", math.type(v.b.c))
    assert.are.equal("x", core.json_integers("x"))
    assert.is_nil(core.json_integers(nil))
  end)
end)
