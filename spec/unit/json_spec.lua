-- tide.json: decode (integers restored), decode_fast (as lua-cjson gives
-- it), integers, quote and the canonical encoder.
local json = require "tide.json"
local cjson = require "cjson"

describe("tide.json", function()
  describe("decode", function()
    it("gives integers for integral numbers, at any depth", function()
      local v = assert(json.decode('{"n":3,"f":1.5,"a":[1,2.0,{"d":-4}],"big":1e300}'))
      assert.are.equal("integer", math.type(v.n))
      assert.are.equal("float", math.type(v.f))
      assert.are.equal("integer", math.type(v.a[2]))
      assert.are.equal("integer", math.type(v.a[3].d))
      assert.are.equal("float", math.type(v.big))
      assert.are.equal("integer", math.type(json.decode("7")))
    end)
  end)

  describe("decode_fast", function()
    local texts = {
      '{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}',
      '{"a":[],"o":{},"s":"\\u00e9\\/","t":true,"f":false,"n":null,"x":[1,[2,[3]]]}',
      '[1,"two",3.5]', '"text"', "true",
    }

    it("gives the values decode gives, with numbers left as floats", function()
      for _, text in ipairs(texts) do
        local fast, slow = json.decode_fast(text), json.decode(text)
        assert.are.same(slow, fast)
      end
      local v = assert(json.decode_fast('{"n":3,"a":[0]}'))
      assert.are.equal("float", math.type(v.n))
      assert.are.equal("float", math.type(v.a[1]))
      assert.are.equal(json.null, json.decode_fast('{"x":null}').x)
    end)

    it("fails as decode does", function()
      for _, text in ipairs({ "", "{", '{"a":}', "[1,]", "nope", ('['):rep(300) .. (']'):rep(300) }) do
        local v1, e1 = json.decode(text)
        local v2, e2 = json.decode_fast(text)
        assert.is_nil(v1)
        assert.is_nil(v2)
        assert.are.equal("MalformedResponse", e2.code)
        assert.are.equal(e1.message, e2.message)
      end
      local v, err = json.decode_fast(42)
      assert.is_nil(v)
      assert.are.equal("MalformedResponse", err.code)
      assert.are.equal("expected JSON text, got number", err.message)
    end)
  end)

  describe("integers", function()
    it("restores what decode would have given, in place", function()
      local text = '{"n":3,"f":0.25,"a":[1,2.0,{"d":-4}],"neg":-0,"e":1e14}'
      local t = assert(json.decode_fast(text))
      assert.are.equal(t, json.integers(t))
      assert.are.same(json.decode(text), t)
      assert.are.equal("integer", math.type(t.e))
      assert.are.equal(json.canonical(json.decode(text)), json.canonical(t))
      assert.are.equal("x", json.integers("x"))
    end)
  end)

  describe("quote", function()
    it("quotes every byte as the canonical encoder does", function()
      for b = 0, 255 do
        local s = "a" .. string.char(b) .. "z"
        assert.are.equal(json.canonical(s), json.quote(s))
        assert.are.equal(s, cjson.decode(json.quote(s)))
      end
      assert.are.equal('"a\\/b \\"q\\" \\\\ \\n"', json.quote('a/b "q" \\ \n'))
    end)
  end)

  describe("canonical", function()
    it("sorts keys and keeps marked empty arrays", function()
      assert.are.equal('{"a":[],"b":{},"c":[1,2]}', json.canonical({ c = { 1, 2 }, b = {}, a = json.array() }))
    end)

    it("writes a list with other keys as an object, losing none, and a list with holes with nulls", function()
      assert.are.equal('{"1":1,"2":2,"a":3}', json.canonical({ 1, 2, a = 3 }))
      assert.are.equal('{"1":"x","2.5":"y"}', json.canonical({ "x", [2.5] = "y" }))
      assert.are.equal('{"1":"x","a":{"1":true,"b":false}}', json.canonical({ "x", a = { true, b = false } }))
      local holes = { 1, 2, 3 }
      holes[2] = nil
      local text = json.canonical(holes)
      -- (the border Lua reports for it is 3 or 1; either way nothing is lost)
      assert.is_true(text == "[1,null,3]" or text == '{"1":1,"3":3}', text)
      assert.are.equal("[1,2,3]", json.canonical({ 1, 2, 3 }))
    end)
  end)
end)

describe("core.json_raw_values", function()
  local raw_values = require("tide.core").json_raw_values

  it("gives the raw text of every object or array member of a name, in order, not looking inside one found", function()
    local text = '{"a":[{"input": {"tags":[] ,"x":{"input":[1]}}},{"input":"a string"},{"b":{"input":[ ]}}],'
      .. '"input":7}'
    assert.are.same({ '{"tags":[] ,"x":{"input":[1]}}', "[ ]" }, raw_values(text, "input"))
    assert.are.same({}, raw_values("[1, 2, {}]", "input"))
    assert.are.same({ '{"k":"\\u00e9\\"}"}' }, raw_values('{"input":{"k":"\\u00e9\\"}"}}', "input"))
  end)

  it("says what is wrong with JSON it cannot read", function()
    local v, why = raw_values('{"input":{"a":1}', "input")
    assert.is_nil(v)
    assert.matches("at character", why)
    v, why = raw_values('{"a":1} trailing', "input")
    assert.is_nil(v)
    assert.matches("expected the end", why)
    v = raw_values(string.rep("[", 10000), "input")
    assert.is_nil(v)
  end)
end)

describe("core.json_elements", function()
  local elements = require("tide.core").json_elements

  it("gives the raw text of each element of an array, in order, white space around each cut", function()
    assert.are.same({ '{"a":[]}', '"s\\"]"', "1.50", "[ ]", "null" },
      elements(' [ {"a":[]} ,"s\\"]", 1.50,[ ],null ] '))
    assert.are.same({}, elements("[]"))
  end)

  it("says what is wrong with anything but one JSON array", function()
    for _, text in ipairs({ '{"a":1}', "", "[1,", "[1] [2]", string.rep("[", 10000) }) do
      local v, why = elements(text)
      assert.is_nil(v)
      assert.is_string(why)
    end
    assert.matches("expected an array", select(2, elements('"x"')))
  end)
end)
