-- The C code that replaces Lua logic agrees with its Lua reference
-- (spec/support/reference.lua) on the same inputs.
local core = require "tide.core"
local ref = require "support.reference"

-- A small deterministic generator, so that a failure can be replayed.
local function rng(seed)
  local x = seed
  return function(n)
    x = (x * 1103515245 + 12345) % 2147483648
    return x % n + 1
  end
end

local PIECES = { "a", "é", "\"", "\\", "/", "\n", "\t", "\0", "\127", "😀", "{", "}", "[1,2]", " ", "q" }
local function text(r, max)
  local out = {}
  for i = 1, r(max) - 1 do out[i] = PIECES[r(#PIECES)] end
  return table.concat(out)
end

describe("C against its Lua reference", function()
  it("writes the assistant message with calls as the reference encodes it", function()
    local r = rng(7)
    for _ = 1, 300 do
      local calls = {}
      for i = 1, r(4) do calls[i] = { id = text(r, 6), name = text(r, 8), arguments = text(r, 20) } end
      local content = r(3) == 1 and nil or text(r, 12)
      assert.are.equal(ref.assistant_wire(content, calls), core.openai_assistant_wire(content, calls))
    end
  end)

  it("writes reasoning_content and extra_content as the reference splices them", function()
    local r = rng(17)
    local EXTRAS = { '{"google":{"thought_signature":"c2ln"}}', '{}', ' { "a" : [1, 2.5e3, null] } ',
                     '{"x":"\\u00e9\\n"}' }
    for _ = 1, 300 do
      local calls = {}
      for i = 1, r(4) do
        calls[i] = { id = text(r, 6), name = text(r, 8), arguments = text(r, 20),
                     extra_content = r(2) == 1 and EXTRAS[r(#EXTRAS)] or nil }
      end
      local reasoning = r(3) == 1 and nil or text(r, 30)
      local content = r(3) == 1 and nil or text(r, 12)
      assert.are.equal(ref.assistant_wire(content, calls, reasoning),
        core.openai_assistant_wire(content, calls, reasoning))
    end
    -- extra_content that is not the text of a JSON object is declined
    for _, bad in ipairs({ "[]", "{", '{"a":1} x', "nul", "1", {} }) do
      assert.is_nil(core.openai_assistant_wire("", { { id = "a", name = "b", arguments = "{}", extra_content = bad } }))
    end
  end)

  it("routes tool-call deltas without an index as the reference does", function()
    local r = rng(23)
    local FRAGS = { '{"x":1}', '{"y":', '2}', "", "[1,2]", '"s"', "  ", "{}" }
    for _ = 1, 300 do
      local deltas = {}
      for i = 1, r(10) do
        deltas[i] = { index = r(4) == 1 and r(3) - 1 or nil, id = r(3) == 1 and ("id" .. r(3)) or nil,
                      name = r(2) == 1 and ("n" .. r(3)) or nil, fragment = r(4) > 1 and FRAGS[r(#FRAGS)] or nil }
      end
      local a = core.tool_call_assembler()
      for _, d in ipairs(deltas) do a:add(d.index, d.id, d.name, d.fragment) end
      local got = a:result()
      a:close()
      local want = ref.assemble(deltas)
      assert.are.equal(#want, #got)
      for i, w in ipairs(want) do
        assert.are.same({ w.index, w.id, w.name, w.arguments },
          { got[i].index, got[i].id, got[i].name, got[i].arguments })
      end
    end
  end)

  it("writes tool results as the reference encodes them", function()
    local r = rng(11)
    for _ = 1, 300 do
      local results = {}
      for i = 1, r(4) do results[i] = { id = text(r, 6), content = text(r, 40) } end
      assert.are.equal(ref.results_wire(results), core.openai_results_wire(results))
    end
  end)

  it("assembles interleaved tool-call deltas as the reference does", function()
    local r = rng(3)
    for _ = 1, 300 do
      local deltas = {}
      for i = 1, r(12) do
        deltas[i] = { index = r(4) - 1, id = r(3) == 1 and text(r, 4) or nil,
                      name = r(3) == 1 and text(r, 4) or nil, fragment = r(2) == 1 and text(r, 6) or nil }
      end
      local a = core.tool_call_assembler()
      for _, d in ipairs(deltas) do a:add(d.index, d.id, d.name, d.fragment) end
      local got = a:result()
      a:close()
      local want = ref.assemble(deltas)
      assert.are.equal(#want, #got)
      for i, w in ipairs(want) do
        assert.are.equal(w.index, got[i].index)
        assert.are.equal(w.id, got[i].id)
        assert.are.equal(w.name, got[i].name)
        assert.are.equal(w.arguments, got[i].arguments)
      end
    end
  end)

  it("parses OpenAI streams, split anywhere, as the reference reads them", function()
    local cjson = require "cjson"
    local r = rng(5)
    for _ = 1, 150 do
      local events = {}
      local n = r(6)
      for i = 1, n do
        local delta = {}
        if r(2) == 1 then delta.content = text(r, 10) end
        if r(3) == 1 then delta.reasoning_content = text(r, 10) end
        if r(4) == 1 then delta.reasoning = text(r, 10) end
        if r(6) == 1 then delta.refusal = text(r, 10) end
        if r(3) == 1 then
          delta.tool_calls = { { index = r(3) > 1 and r(2) - 1 or nil, id = "call_" .. r(9), ["function"] = {
            name = "tool_" .. r(3), arguments = text(r, 8) },
            extra_content = r(3) == 1 and { google = { thought_signature = text(r, 8) } } or nil } }
        end
        local choice = { index = 0, delta = delta, finish_reason = i == n and "tool_calls" or cjson.null }
        events[#events + 1] = "data: " .. cjson.encode { choices = { choice } } .. "\n\n"
      end
      events[#events + 1] = "data: " .. cjson.encode { choices = {}, usage = { prompt_tokens = r(100),
        completion_tokens = r(50), prompt_tokens_details = { cached_tokens = r(10) },
        completion_tokens_details = { reasoning_tokens = r(30) } } } .. "\n\n"
      events[#events + 1] = "data: [DONE]\n\n"
      local body = table.concat(events)
      local want = ref.openai_stream(body)
      local s = core.openai_stream()
      local at = 1
      while at <= #body do -- fed in pieces cut at random points
        local len = r(40)
        s:feed(body:sub(at, at + len - 1))
        at = at + len
      end
      local got = assert(s:finish())
      s:close()
      assert.are.equal(want.text, got.text)
      assert.are.equal(want.reasoning, got.reasoning and got.reasoning[1].text or "")
      assert.are.equal(want.refusal, got.refusal or "")
      assert.are.same(want.usage, got.usage)
      assert.are.equal(want.stop_raw, got.stop_raw)
      assert.are.equal(#want.tool_calls, #got.tool_calls)
      for i, w in ipairs(want.tool_calls) do
        assert.are.equal(w.name, got.tool_calls[i].name)
        local extra = got.tool_calls[i].extra_content
        assert.are.same(w.extra_content, extra and cjson.decode(extra))
        -- (arguments of white space alone are finished as "{}")
        assert.are.equal(w.arguments:find("%S") and w.arguments or "{}", got.tool_calls[i].arguments)
      end
    end
  end)
end)
