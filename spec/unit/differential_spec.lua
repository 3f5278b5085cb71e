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

describe("core.anthropic_stream and core.anthropic_parse against the Lua parser they replaced", function()
  local cjson = require "cjson"
  local json = require "tide.json"

  -- Arguments compare by what they decode to (canonically): the C writer
  -- keeps an empty array `[]` where the decoded table came out `{}`.
  local function same_args(want, got)
    local ok1, a = pcall(cjson.decode, want)
    local ok2, b = pcall(cjson.decode, got)
    if ok1 and ok2 and type(a) == "table" then return json.canonical(a) == json.canonical(b) end
    return want == got
  end

  local function check(want, werr, got, gerr, deltas, rdeltas, what)
    if werr then
      assert.is_nil(got, what)
      assert.are.equal(werr.code, gerr.code, what)
      -- the JSON errors' detail is each decoder's own
      local wm = werr.message:gsub(" %(.*$", "")
      assert.are.equal(wm, gerr.message:sub(1, #wm), what)
      assert.are.equal(werr.type, gerr.type, what)
      assert.are.equal(werr.retryable, gerr.retryable, what)
      if werr.partial_text then assert.are.equal(werr.partial_text, gerr.partial_text, what) end
      if werr.deltas and deltas then assert.are.same(werr.deltas, deltas, what) end
      return
    end
    assert.is_nil(gerr, gerr and (what .. ": " .. tostring(gerr.message)))
    assert.are.equal(want.text, got.text, what)
    assert.are.same(want.reasoning, got.reasoning, what)
    assert.are.same(want.usage, got.usage, what)
    assert.are.equal(want.stop, got.stop, what)
    assert.are.equal(want.stop_raw, got.stop_raw, what)
    assert.are.equal(#want.tool_calls, #got.tool_calls, what)
    for i, c in ipairs(want.tool_calls) do
      assert.are.equal(c.id, got.tool_calls[i].id, what)
      assert.are.equal(c.name, got.tool_calls[i].name, what)
      assert.is_true(same_args(c.arguments, got.tool_calls[i].arguments), what .. ": " .. c.arguments
        .. " ~= " .. got.tool_calls[i].arguments)
    end
    if deltas then assert.are.same(want.deltas, deltas, what) end
    if rdeltas then assert.are.same(want.rdeltas, rdeltas, what) end
  end

  -- A random Messages stream: usage, thinking (some without a signature),
  -- redacted thinking (some without data), text, parallel tool_use blocks
  -- with their input in fragments or whole, pings and unknown events, the
  -- stop; now and then an error event, a malformed event, or the end cut.
  local function random_stream(r)
    local ev = {}
    local function add(name, obj)
      ev[#ev + 1] = "event: " .. name .. "\ndata: " .. (type(obj) == "string" and obj or cjson.encode(obj)) .. "\n\n"
    end
    local function maybe(n, v) if r(n) == 1 then return v end end
    add("message_start", { type = "message_start", message = { id = "m", usage = { input_tokens = r(500) - 1,
      output_tokens = 1, cache_read_input_tokens = maybe(2, r(1000)), cache_creation_input_tokens = maybe(3, r(99)) } } })
    if r(3) == 1 then add("ping", { type = "ping" }) end
    local index = 0
    for _ = 1, r(3) - 1 do -- thinking blocks first
      if r(4) == 1 then
        add("content_block_start", { type = "content_block_start", index = index,
          content_block = { type = "redacted_thinking", data = r(8) > 1 and ("opaque" .. text(r, 5)) or nil } })
      else
        add("content_block_start", { type = "content_block_start", index = index,
          content_block = { type = "thinking", thinking = maybe(3, text(r, 4)) or "", signature = "" } })
        for _ = 1, r(4) - 1 do
          add("content_block_delta", { type = "content_block_delta", index = index,
            delta = { type = "thinking_delta", thinking = text(r, 8) } })
        end
        if r(8) > 1 then
          add("content_block_delta", { type = "content_block_delta", index = index,
            delta = { type = "signature_delta", signature = "sig" .. r(1000) } })
        end
      end
      add("content_block_stop", { type = "content_block_stop", index = index })
      index = index + 1
    end
    if r(3) > 1 then
      add("content_block_start", { type = "content_block_start", index = index,
        content_block = { type = "text", text = maybe(4, text(r, 5)) or "" } })
      for _ = 1, r(5) - 1 do
        add("content_block_delta", { type = "content_block_delta", index = index,
          delta = { type = "text_delta", text = text(r, 10) } })
      end
      add("content_block_stop", { type = "content_block_stop", index = index })
      index = index + 1
    end
    -- parallel tool_use blocks, their fragments interleaved
    local calls = {}
    for i = 1, r(4) - 1 do
      local input = { q = text(r, 6), n = r(100), f = r(4) / 4, list = { r(9), text(r, 3) }, z = false }
      local whole = r(4) == 1
      add("content_block_start", { type = "content_block_start", index = index,
        content_block = { type = "tool_use", id = maybe(6, nil) or ("toolu_" .. r(99999)), name = "tool_" .. r(3),
          input = whole and input or {} } })
      local args = whole and "" or cjson.encode(input)
      calls[i] = { index = index, args = args, at = 1 }
      index = index + 1
    end
    local pending = #calls
    while pending > 0 do
      local c = calls[r(#calls)]
      if c.at <= #c.args then
        local piece = c.args:sub(c.at, c.at + r(12) - 1)
        c.at = c.at + #piece
        add("content_block_delta", { type = "content_block_delta", index = c.index,
          delta = { type = "input_json_delta", partial_json = piece } })
        if c.at > #c.args then pending = pending - 1 end
      elseif c.args == "" and not c.counted then
        c.counted = true
        pending = pending - 1
      end
    end
    if r(6) == 1 then add("content_block_delta", { type = "content_block_delta", index = 0,
      delta = { type = "citations_delta", citation = { cited_text = "x" } } }) end
    if r(8) == 1 then add("brand_new_event", { type = "brand_new_event", whatever = { 1, 2 } }) end
    if r(12) == 1 then
      add("error", { type = "error", error = { type = ({ "overloaded_error", "api_error", "invalid_request_error",
        "rate_limit_error" })[r(4)], message = "Overloaded" } })
    end
    if r(15) == 1 then add("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"text_de') end
    if r(15) == 1 then add("content_block_delta", { type = "content_block_delta", index = 99,
      delta = { type = "signature_delta", signature = "x" } }) end
    local stops = { "end_turn", "tool_use", "max_tokens", "refusal", "pause_turn", "stop_sequence",
      "model_context_window_exceeded", "brand_new_reason" }
    add("message_delta", { type = "message_delta", delta = { stop_reason = stops[r(#stops)] },
      usage = { output_tokens = r(300), input_tokens = maybe(2, r(500)), cache_read_input_tokens = maybe(3, r(9)) } })
    if r(10) > 1 then add("message_stop", { type = "message_stop" }) end
    return table.concat(ev)
  end

  it("parses random streams, split anywhere, as the Lua parser did", function()
    local r = rng(21)
    for n = 1, 400 do
      local body = random_stream(r)
      local want, werr = ref.anthropic_stream(body)
      local s <close> = core.anthropic_stream()
      local deltas, rdeltas, failed = {}, {}, nil
      local at = 1
      while at <= #body do
        local piece = body:sub(at, at + r(60) - 1)
        at = at + #piece
        local out, rout = {}, {}
        local k, err = s:feed(piece, out, rout)
        for i = 1, #out do deltas[#deltas + 1] = out[i] end
        for i = 1, #rout do rdeltas[#rdeltas + 1] = rout[i] end
        if k == nil then
          failed = err
          break
        end
      end
      local got, gerr
      if failed then gerr = failed else got, gerr = s:finish() end
      check(want, werr, got, gerr, deltas, not failed and rdeltas or nil, "stream " .. n .. ":\n" .. body)
    end
  end)

  it("reads random whole replies as the Lua parser did", function()
    local r = rng(33)
    for n = 1, 400 do
      local content = {}
      for _ = 1, r(6) - 1 do
        local k = r(7)
        if k == 1 then content[#content + 1] = { type = "text", text = text(r, 12) }
        elseif k == 2 then content[#content + 1] = { type = "tool_use", id = r(5) > 1 and ("toolu_" .. r(99)) or nil,
          name = "lookup", input = { q = text(r, 5), n = r(1e6) * 1e8, f = -r(8) / 8, nested = { a = { r(3) } } } }
        elseif k == 3 then content[#content + 1] = { type = "thinking", thinking = text(r, 9),
          signature = r(8) > 1 and ("sig" .. r(99)) or nil }
        elseif k == 4 then content[#content + 1] = { type = "redacted_thinking", data = r(8) > 1 and "opaque" or "" }
        elseif k == 5 then content[#content + 1] = { type = "server_tool_use", id = "srv", name = "web_search" }
        elseif k == 6 then content[#content + 1] = r(10) == 1 and "not a block" or { type = "text", text = "" }
        else content[#content + 1] = { type = "tool_use", id = "t", name = "n", input = {} } end
      end
      local obj = { id = "msg", type = "message", role = "assistant", content = #content > 0 and content or nil,
        stop_reason = ({ "end_turn", "tool_use", "max_tokens", "refusal", "newer", cjson.null })[r(6)],
        usage = { input_tokens = r(99), output_tokens = r(99), cache_read_input_tokens = r(3) == 1 and r(9) or nil,
          cache_creation_input_tokens = r(3) == 1 and 2.5 or nil } }
      if r(10) == 1 then obj = { type = "error", error = { type = r(2) == 1 and "rate_limit_error" or "api_error",
        message = "slow down" } } end
      local body = cjson.encode(obj)
      if obj.content == nil and obj.type ~= "error" then body = body:gsub('}$', ',"content":[]}') end
      if r(20) == 1 then body = body:sub(1, #body // 2) end
      local want, werr = ref.anthropic_reply(body)
      local got, gerr = core.anthropic_parse(body)
      check(want, werr, got, gerr, nil, nil, "reply " .. n .. ":\n" .. body)
    end
  end)

  it("writes a whole tool input as the decode and canonical re-encode did", function()
    local body = '{"content":[{"type":"tool_use","id":"t","name":"f","input":'
      .. '{"z":1,"a":{"y":[1,2.5,-0.0,1e14,1e300,3.0e2],"x":"\\u00e9\\/\\n"},"a":{"dup":true},"m":null,'
      .. '"e":{},"k":"\\ud83d\\ude00"}}],"stop_reason":"tool_use"}'
    local want = ref.anthropic_reply(body)
    local got = assert(core.anthropic_parse(body))
    assert.are.equal(want.tool_calls[1].arguments, got.tool_calls[1].arguments)
    assert.are.equal('{"a":{"dup":true},"e":{},"k":"😀","m":null,"z":1}', got.tool_calls[1].arguments)
    -- the one difference: an empty array stays one
    got = assert(core.anthropic_parse('{"content":[{"type":"tool_use","input":{"l":[],"o":{}}}]}'))
    assert.are.equal('{"l":[],"o":{}}', got.tool_calls[1].arguments)
  end)
end)

describe("the Anthropic message encoders against the Lua encoder they replaced", function()
  local provider = require "tide.provider"
  local p = provider.anthropic { base_url = "http://127.0.0.1:9", api_key = "k", model = "m" }
  local ARGS = { '{"q":"x"}', ' \n{"q": "x", "n": [1, 2]}\t', '{\n  "pretty": true\n}', '{"note":"information"}',
    '{"v":NaN}', '{"h":0x10}', '{"s":"Infinity"}', '[1,2]', 'not json', '', '{"a":', '{}', '{"u":"\\u00e9\\/"}',
    '{"a":1} trailing', "\v{\"a\":1}", '{"deep":{"x":[{}]}}' }

  it("writes the assistant message with tool_use blocks as the Lua encoder did", function()
    local r = rng(11)
    for _ = 1, 400 do
      local calls = {}
      for i = 1, r(3) do
        local args = r(5) == 1 and { q = text(r, 5), n = r(9) } or (r(2) == 1 and ARGS[r(#ARGS)] or
          ('{"q":' .. require("cjson").encode(text(r, 8)) .. '}'))
        calls[i] = { id = "toolu_" .. text(r, 4), name = "tool_" .. r(3), arguments = args }
      end
      local content = r(3) == 1 and text(r, 12) or nil
      local reasoning = r(4) == 1 and { { type = "text", text = text(r, 6), signature = "sig", provider = "anthropic" },
        { type = "redacted", data = "d" .. r(9), provider = "anthropic" } } or nil
      local want_thinking = reasoning and ('{"signature":"sig","thinking":' .. require("tide.json").quote(reasoning[1].text)
        .. ',"type":"thinking"},{"data":"' .. reasoning[2].data .. '","type":"redacted_thinking"}')
      local got = p:encode_message({ role = "assistant", content = content, tool_calls = calls, reasoning = reasoning })
      assert.are.equal(ref.anthropic_assistant(content, calls, want_thinking), got)
    end
  end)

  it("writes tool results as the Lua encoder did", function()
    local r = rng(12)
    for _ = 1, 300 do
      local results = {}
      for i = 1, r(4) do
        results[i] = { id = "toolu_" .. text(r, 5), name = "n",
          content = r(4) == 1 and { k = text(r, 3) } or text(r, 20), is_error = ({ true, false, nil, "yes" })[r(4)] }
      end
      local want = {}
      for i, x in ipairs(results) do
        want[i] = { id = x.id, is_error = x.is_error,
          content = type(x.content) == "table" and require("tide.json").canonical(x.content) or x.content }
      end
      assert.are.equal(ref.anthropic_results(want), p:encode_message({ role = "tool", results = results }))
    end
  end)
end)
