-- The C code that replaces Lua logic agrees with its Lua reference
-- (spec/support/reference.lua) on the same inputs.
local core = require "tide.core"
local ref = require "support.reference"
local json = require "tide.json"

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

-- Feeds body to the C stream s in pieces of 1 to 60 bytes (r draws each
-- length), as the exchange feeds a reply, up to the first failure: the text
-- and reasoning deltas handed back, and the error if the stream failed.
local function feed_pieces(s, body, r)
  local deltas, rdeltas = {}, {}
  local at = 1
  while at <= #body do
    local piece = body:sub(at, at + r(60) - 1)
    at = at + #piece
    local out, rout = {}, {}
    local k, err = s:feed(piece, out, rout)
    for i = 1, #out do deltas[#deltas + 1] = out[i] end
    for i = 1, #rout do rdeltas[#rdeltas + 1] = rout[i] end
    if k == nil then return deltas, rdeltas, err end
  end
  return deltas, rdeltas, nil
end

describe("C against its Lua reference", function()
  it("writes the assistant message with calls as the reference encodes it", function()
    local r = rng(7)
    for _ = 1, 300 do
      local calls = {}
      for i = 1, r(4) do
        calls[i] = { id = text(r, 6), name = text(r, 8), arguments = text(r, 20), custom = r(4) == 1 or nil }
      end
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
      -- OpenRouter's details and Mistral's chunks, sometimes
      local details = r(3) == 1 and '[{"type":"reasoning.encrypted","data":' .. json.quote(text(r, 9)) .. "}]" or nil
      local chunks = r(4) == 1 and json.canonical { { type = "thinking", thinking = { { type = "text",
        text = text(r, 9) } } } } or nil
      local field = r(3) == 1 and "reasoning" or nil
      assert.are.equal(ref.assistant_wire(content, calls, reasoning, details, chunks, field),
        core.openai_assistant_wire(content, calls, reasoning, details, chunks, field))
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
        if r(4) == 1 then -- Mistral's chunks, typed or not, with pieces of other kinds
          local chunks = {}
          for j = 1, r(3) do
            local k = r(5)
            chunks[j] = k == 1 and { type = "text", text = text(r, 8) }
              or k == 2 and { text = text(r, 8) }
              or k == 3 and { type = "thinking", thinking = { { type = "text", text = text(r, 8) },
                { type = "reference", reference_ids = { 1 } }, { text = text(r, 4) } },
                signature = r(2) == 1 and text(r, 6) or nil }
              or k == 4 and { thinking = { { text = text(r, 8) } } }
              or { type = "image_url", image_url = "x", text = text(r, 3) }
          end
          delta.content = chunks
        end
        if r(5) == 1 then
          delta.reasoning_details = { { type = "reasoning.text", text = text(r, 8), index = 0 } }
        end
        if r(3) == 1 then delta.reasoning_content = text(r, 10) end
        if r(4) == 1 then delta.reasoning = text(r, 10) end
        if r(6) == 1 then delta.refusal = text(r, 10) end
        if r(3) == 1 then
          delta.tool_calls = { { index = r(3) > 1 and r(2) - 1 or nil, id = "call_" .. r(9), ["function"] = {
            name = "tool_" .. r(3), arguments = text(r, 8) },
            extra_content = r(3) == 1 and { google = { thought_signature = text(r, 8) } } or nil } }
          if r(4) == 1 then -- a custom tool's call: custom.{name, input} (beside a function, it wins)
            local c = delta.tool_calls[1]
            c.type, c.custom = "custom", { name = "patch_" .. r(2), input = text(r, 8) }
            if r(2) == 1 then c["function"] = nil end
          end
        end
        local choice = { index = 0, delta = delta, finish_reason = i == n and "tool_calls" or cjson.null }
        -- the tier that served it, on every chunk (sometimes odd)
        local tier = ({ "default", "flex", "priority", "", 7, string.rep("t", 30), cjson.null })[r(7)]
        events[#events + 1] = "data: " .. cjson.encode { choices = { choice }, service_tier = tier } .. "\n\n"
      end
      events[#events + 1] = "data: " .. cjson.encode { choices = {}, usage = { prompt_tokens = r(100),
        completion_tokens = r(50), prompt_tokens_details = { cached_tokens = r(10),
          cache_write_tokens = r(2) == 1 and r(20) or nil },
        prompt_cache_hit_tokens = r(2) == 1 and r(12) or nil, cost = r(2) == 1 and r(1000) / 997 or nil,
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
      local rtext = got.reasoning and got.reasoning[1].type == "text" and got.reasoning[1] or {}
      assert.are.equal(want.reasoning, rtext.text or "")
      assert.are.equal(want.signature, rtext.signature)
      assert.are.equal(want.via, rtext.via)
      assert.are.equal(want.field, rtext.field)
      local dpart = got.reasoning and got.reasoning[#got.reasoning]
      assert.are.same(want.details, dpart and dpart.type == "details" and cjson.decode(dpart.data) or nil)
      assert.are.equal(want.refusal, got.refusal or "")
      assert.are.same(want.usage, got.usage)
      assert.are.equal(want.stop_raw, got.stop_raw)
      assert.are.equal(#want.tool_calls, #got.tool_calls)
      for i, w in ipairs(want.tool_calls) do
        assert.are.equal(w.name, got.tool_calls[i].name)
        local extra = got.tool_calls[i].extra_content
        assert.are.same(w.extra_content, extra and cjson.decode(extra))
        assert.are.equal(w.custom, got.tool_calls[i].custom)
        -- (arguments of white space alone are finished as "{}", a custom
        -- tool's input is kept as it came)
        assert.are.equal((w.custom or w.arguments:find("%S")) and w.arguments or "{}", got.tool_calls[i].arguments)
      end
    end
  end)
end)

describe("core.anthropic_stream and core.anthropic_parse against the Lua parser they replaced", function()
  local cjson = require "cjson"

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
    -- a content part's JSON compares by what it decodes to (the reference
    -- keeps the decoded content)
    local reasoning = got.reasoning and {}
    for i, r in ipairs(got.reasoning or {}) do
      reasoning[i] = r.type == "content" and { type = "content", provider = r.provider, content = cjson.decode(r.data) }
        or r
    end
    assert.are.same(want.reasoning, reasoning, what)
    assert.are.same(want.usage, got.usage, what)
    assert.are.equal(want.stop, got.stop, what)
    assert.are.equal(want.stop_raw, got.stop_raw, what)
    assert.are.equal(want.container, got.container, what)
    if want.refusal ~= nil or got.refusal ~= nil then assert.are.equal(want.refusal, got.refusal, what) end
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
    add("message_start", { type = "message_start", message = { id = "m",
      container = maybe(4, r(3) == 1 and cjson.null or { id = "container_" .. r(9), expires_at = "2026-12-06T13:00:00Z" }),
      usage = { input_tokens = r(500) - 1, service_tier = maybe(2, ({ "standard", "priority", "", 3 })[r(4)]),
      output_tokens = 1, cache_read_input_tokens = maybe(2, r(1000)), cache_creation_input_tokens = maybe(3, r(99)),
      cache_creation = maybe(3, { ephemeral_5m_input_tokens = r(50) - 1,
        ephemeral_1h_input_tokens = ({ r(50) - 1, "x", 2.5, cjson.null })[r(4)] }) } } })
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
    -- text, and now and then a server tool's use (its input in fragments,
    -- or whole, or cut) and result, then more text with citations
    local function text_block()
      add("content_block_start", { type = "content_block_start", index = index,
        content_block = { type = "text", text = maybe(4, text(r, 5)) or "",
          citations = maybe(5, { { type = "web_search_result_location", url = "u" .. r(9) } }) } })
      for _ = 1, r(5) - 1 do
        if r(5) == 1 then
          add("content_block_delta", { type = "content_block_delta", index = index,
            delta = { type = "citations_delta", citation = { type = "web_search_result_location",
              cited_text = text(r, 4), encrypted_index = "e" .. r(99) } } })
        else
          add("content_block_delta", { type = "content_block_delta", index = index,
            delta = { type = "text_delta", text = text(r, 10) } })
        end
      end
      add("content_block_stop", { type = "content_block_stop", index = index })
      index = index + 1
    end
    if r(3) > 1 then text_block() end
    if r(3) == 1 then
      local input = { query = text(r, 6), n = r(9) }
      local how = r(6) -- 1: whole at the start, 6: cut fragments
      add("content_block_start", { type = "content_block_start", index = index,
        content_block = { type = "server_tool_use", id = "srvtoolu_" .. r(999), name = "web_search",
          input = how == 1 and input or {}, caller = maybe(2, { type = "direct" }) } })
      if how > 1 then
        local args = cjson.encode(input)
        if how == 6 then args = args:sub(1, #args - 1) end
        local at = 1
        while at <= #args do
          local piece = args:sub(at, at + r(9) - 1)
          at = at + #piece
          add("content_block_delta", { type = "content_block_delta", index = index,
            delta = { type = "input_json_delta", partial_json = piece } })
        end
      end
      add("content_block_stop", { type = "content_block_stop", index = index })
      index = index + 1
      add("content_block_start", { type = "content_block_start", index = index,
        content_block = { type = "web_search_tool_result", tool_use_id = "srvtoolu_1",
          content = { { type = "web_search_result", url = "https://x/" .. r(9), title = text(r, 3),
            encrypted_content = "enc" .. r(999), page_age = cjson.null } } } })
      add("content_block_stop", { type = "content_block_stop", index = index })
      index = index + 1
      if r(2) == 1 then text_block() end
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
    add("message_delta", { type = "message_delta", delta = { stop_reason = stops[r(#stops)],
        container = maybe(4, { id = r(5) == 1 and "" or ("container_" .. r(9)) }),
        stop_details = maybe(4, { type = "refusal", category = "cyber", explanation = maybe(2, "Not that.") }) },
      usage = { output_tokens = r(300), input_tokens = maybe(2, r(500)), cache_read_input_tokens = maybe(3, r(9)),
        service_tier = maybe(4, ({ "batch", string.rep("p", 24) })[r(2)]),
        output_tokens_details = maybe(3, { thinking_tokens = r(200), web_search_requests = 5 }),
        server_tool_use = maybe(3, { web_search_requests = r(4) - 1, web_fetch_requests = 1 }),
        cache_creation = maybe(3, r(4) == 1 and {} or { ephemeral_1h_input_tokens = r(30) - 1 }) } })
    if r(10) > 1 then add("message_stop", { type = "message_stop" }) end
    return table.concat(ev)
  end

  it("parses random streams, split anywhere, as the Lua parser did", function()
    local r = rng(21)
    for n = 1, 400 do
      local body = random_stream(r)
      local want, werr = ref.anthropic_stream(body)
      local s <close> = core.anthropic_stream()
      local deltas, rdeltas, failed = feed_pieces(s, body, r)
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
        elseif k == 5 then content[#content + 1] = r(2) == 1 and { type = "server_tool_use", id = "srv",
          name = "web_search", input = { query = text(r, 4) } } or { type = "web_search_tool_result",
          tool_use_id = "srv", content = { { type = "web_search_result", url = "u", encrypted_content = "e" } } }
        elseif k == 6 then content[#content + 1] = r(10) == 1 and "not a block" or { type = "text", text = "" }
        else content[#content + 1] = { type = "tool_use", id = "t", name = "n", input = {} } end
      end
      local obj = { id = "msg", type = "message", role = "assistant", content = #content > 0 and content or nil,
        container = r(4) == 1 and { id = r(6) == 1 and 7 or ("container_" .. r(9)) } or nil,
        stop_details = r(5) == 1 and { type = "refusal", explanation = r(3) == 1 and 5 or "No." } or nil,
        stop_reason = ({ "end_turn", "tool_use", "max_tokens", "refusal", "newer", cjson.null })[r(6)],
        usage = { input_tokens = r(99), output_tokens = r(99), cache_read_input_tokens = r(3) == 1 and r(9) or nil,
          service_tier = ({ "standard", "priority", 1, nil })[r(4)],
          cache_creation_input_tokens = r(3) == 1 and 2.5 or nil,
          cache_creation = r(3) == 1 and (r(5) == 1 and { 3 } or { ephemeral_1h_input_tokens = r(4) == 1 and "x"
            or r(40) - 1 }) or nil,
          output_tokens_details = r(3) == 1 and { thinking_tokens = r(4) == 1 and "x" or r(50) } or nil,
          server_tool_use = r(3) == 1 and { web_search_requests = r(4) == 1 and -1 or r(5) - 1 } or nil } }
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

describe("core.responses_stream and core.responses_parse against the Lua parser they replaced", function()
  local cjson = require "cjson"
  local errors = require "tide.provider.errors"

  -- The generator above takes its low bits, whose period is short: these
  -- cases make many small choices in a row, so they take the high ones.
  local function rng(seed) -- luacheck: ignore (shadows the one above)
    local x = seed
    return function(n)
      x = (x * 1103515245 + 12345) % 2147483648
      return (x >> 12) % n + 1
    end
  end

  -- JSON written by hand, so that key order is the generator's: objects
  -- come out in a shuffled order, with DUP's pairs (repeated keys) put in
  -- among them; ARRAY marks tables that are arrays even when empty.
  local DUP, NULL = {}, {}
  local ARRAY = { __name = "array" }
  local function arr(t) return setmetatable(t or {}, ARRAY) end
  local function enc(v, r)
    if v == NULL then return "null" end
    local t = type(v)
    if t == "string" then return json.quote(v) end
    if t == "boolean" then return tostring(v) end
    if t == "number" then
      if math.type(v) == "integer" then return tostring(v) end
      return ("%.17g"):format(v)
    end
    if getmetatable(v) == ARRAY then
      local parts = {}
      for i, x in ipairs(v) do parts[i] = enc(x, r) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do if k ~= DUP then keys[#keys + 1] = k end end
    table.sort(keys)
    for i = #keys, 2, -1 do
      local j = r(i)
      keys[i], keys[j] = keys[j], keys[i]
    end
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = json.quote(k) .. ":" .. enc(v[k], r) end
    for _, kv in ipairs(v[DUP] or {}) do
      table.insert(parts, r(#parts + 1), json.quote(kv[1]) .. ":" .. enc(kv[2], r))
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end

  local function pick(r, list) return list[r(#list)] end
  local function maybe(r, n, v) if r(n) == 1 then return nil end return v end

  local function summary_of(r)
    local parts = arr()
    for i = 1, r(3) - 1 do
      parts[i] = { type = "summary_text", text = pick(r, { text(r, 12), text(r, 12), 7, NULL }) }
      if r(5) == 1 then parts[i] = pick(r, { "x", NULL, arr() }) end
    end
    return pick(r, { parts, parts, parts, {}, NULL })
  end

  -- One output item, mostly as the API sends it, now and then wrong.
  local function item_of(r, n)
    local kind = r(12)
    if kind <= 3 then
      local content = arr()
      for i = 1, r(3) do
        content[i] = pick(r, {
          { type = "output_text", text = text(r, 14), annotations = arr() },
          { type = "output_text", text = text(r, 14), annotations = arr(), logprobs = arr() },
          { type = "refusal", refusal = text(r, 10) },
          { type = "output_text", text = 3 }, { type = "refusal" }, "part", arr(),
        })
      end
      local item = { type = "message", id = "msg_" .. n, status = "completed", role = "assistant",
                     content = pick(r, { content, content, content, {}, NULL }) }
      if r(6) == 1 then item[DUP] = { { "content", arr({ { type = "refusal", refusal = "dup" } }) } } end
      return item
    elseif kind <= 6 then
      local item = { type = "function_call", id = "fc_" .. n, status = "completed",
                     call_id = maybe(r, 12, pick(r, { "call_" .. n, "call_" .. n, "", 5 })),
                     name = maybe(r, 12, pick(r, { "lookup", "delegate_x", "" })),
                     arguments = pick(r, { '{"q":"' .. n .. '"}', "", "  ", '{"a":[1,2]}', NULL, 4 }) }
      if r(8) == 1 then item[DUP] = { { "arguments", "{}" } } end
      if r(4) == 1 then
        -- a custom tool's call: its input, text (a stray arguments counts for nothing)
        item.type, item.id = "custom_tool_call", "ctc_" .. n
        item.input = pick(r, { "*** Begin Patch\n+x\n", "", "  ", "SELECT 1;", NULL, 4 })
        if r(3) == 1 then item.arguments = nil end
        if r(8) == 1 then item[DUP] = { { "input", "again" } } end
      end
      return item
    elseif kind <= 9 then
      local item = { type = "reasoning", id = maybe(r, 12, pick(r, { "rs_" .. n, "rs_" .. n, "", 9 })),
                     summary = summary_of(r),
                     encrypted_content = pick(r, { "gAAAA" .. text(r, 30), "gAAAA" .. n, NULL, nil, 8 }) }
      if r(8) == 1 then item[DUP] = { { "summary", arr({ { text = "again" } }) } } end
      return item
    elseif kind == 10 then
      return pick(r, { { type = "web_search_call", id = "ws_" .. n, status = "completed" },
                       { type = "file_search_call", id = "fs_" .. n, status = "completed", queries = arr({ "q" }) },
                       { type = "code_interpreter_call", id = "ci_" .. n, status = "completed", container_id = "cntr",
                         code = "print(1)", outputs = arr({ { type = "logs", logs = "1" } }) },
                       { type = "image_generation_call", id = pick(r, { "ig_" .. n, "" }), status = "completed",
                         result = "iVBORw0KGgo=" },
                       { type = "mcp_approval_request", id = "mcpr_" .. n, server_label = "s", name = "t",
                         arguments = "{}" },
                       { type = "compaction", id = pick(r, { "cmp_" .. n, "" }), encrypted_content = "gAAAA" .. n } })
    elseif kind == 11 then
      return pick(r, { arr(), { id = "x" } })
    end
    return pick(r, { 5, NULL, "item", true })
  end

  local function usage_of(r)
    if r(8) == 1 then return pick(r, { NULL, arr(), "u" }) end
    return { input_tokens = pick(r, { r(5000), r(5000), 12.0, -3, "x", 2.5 }),
             input_tokens_details = pick(r, { { cached_tokens = r(4000) }, { cached_tokens = r(4000) }, NULL, 4 }),
             output_tokens = r(900),
             output_tokens_details = pick(r, { { reasoning_tokens = r(800) }, {}, NULL }),
             total_tokens = r(9000) }
  end

  local function response_of(r, status, output)
    local resp = {
      id = "resp_1", object = "response", created_at = 1741476777, status = status, model = "gpt-5",
      error = NULL, incomplete_details = NULL,
      instructions = text(r, 60), tools = arr({ { type = "function", name = "lookup", strict = false,
        parameters = { type = "object", properties = { q = { type = "string" } } } } }),
      output = output, usage = usage_of(r), metadata = {}, temperature = 1.0, top_p = 1.0,
      service_tier = pick(r, { "default", "flex", "priority", "", 4, NULL, nil }),
    }
    if status == "incomplete" then
      resp.incomplete_details = pick(r, { { reason = "max_output_tokens" }, { reason = "content_filter" },
        { reason = "other" }, { reason = 3 }, NULL, arr() })
    end
    -- repeated keys: the last one counts
    local dup = {}
    if r(10) == 1 then dup[#dup + 1] = { "status", pick(r, { "completed", "incomplete", 1 }) } end
    if r(10) == 1 then dup[#dup + 1] = { "output", arr({ item_of(r, 9), item_of(r, 8) }) } end
    if r(10) == 1 then dup[#dup + 1] = { "usage", pick(r, { { input_tokens = 3 }, NULL }) } end
    if r(10) == 1 then dup[#dup + 1] = { "incomplete_details", pick(r, { { reason = "content_filter" }, {} }) } end
    resp[DUP] = dup
    for _, k in ipairs({ "status", "usage", "output", "incomplete_details", "error" }) do
      if r(12) == 1 then resp[k] = nil end
    end
    return resp
  end

  local ERRORS = { "rate_limit_exceeded", "server_error", "invalid_prompt", nil }
  local function error_of(r)
    if r(6) == 1 then return pick(r, { "boom", 5, arr() }) end
    return { code = pick(r, ERRORS), message = pick(r, { "The model failed.", "Slow down.", 12, nil, true }),
             type = pick(r, { "server_error", nil, 4 }) }
  end

  -- A stream as the API sends it (or a server that names no events), with
  -- the faults a broken peer adds now and then.
  local function stream_of(r)
    local out, seq = {}, 0
    local function ev(obj, name)
      obj.sequence_number = seq
      seq = seq + 1
      local data = enc(obj, r)
      if r(30) == 1 then data = data:sub(1, r(#data)) end -- not JSON any more
      local named = r(5) > 1
      out[#out + 1] = (named and ("event: " .. (name or obj.type) .. "\n") or "") .. "data: " .. data .. "\n\n"
    end
    ev({ type = "response.created", response = response_of(r, "in_progress", arr()) })
    ev({ type = "response.in_progress", response = response_of(r, pick(r, { "in_progress", "incomplete" }),
      pick(r, { arr(), arr({ item_of(r, 7) }) })) })
    local items = arr()
    for i = 1, r(4) - 1 do
      local item = item_of(r, i)
      items[i] = item
      ev({ type = "response.output_item.added", output_index = i - 1, item = item })
      if type(item) == "table" and item.type == "message" then
        for _ = 1, r(4) - 1 do
          ev({ type = "response.output_text.delta", item_id = "msg_" .. i, output_index = i - 1, content_index = 0,
               delta = pick(r, { text(r, 8), text(r, 8), "", 7 }), logprobs = arr() })
        end
        ev({ type = "response.output_text.done", item_id = "msg_" .. i, text = "whole" })
      elseif type(item) == "table" and item.type == "reasoning" then
        for _ = 1, r(3) - 1 do
          ev({ type = pick(r, { "response.reasoning_summary_text.delta", "response.reasoning_text.delta" }),
               item_id = "rs_" .. i, output_index = i - 1, summary_index = 0, delta = text(r, 8) })
        end
      elseif type(item) == "table" and item.type == "function_call" then
        ev({ type = "response.function_call_arguments.delta", item_id = "fc_" .. i, output_index = i - 1,
             delta = "{" })
      elseif type(item) == "table" and item.type == "custom_tool_call" then
        ev({ type = "response.custom_tool_call_input.delta", item_id = "ctc_" .. i, output_index = i - 1,
             delta = "*** " })
        ev({ type = "response.custom_tool_call_input.done", item_id = "ctc_" .. i, output_index = i - 1,
             input = "whole" })
      end
      if r(12) == 1 then
        ev({ type = "error", code = pick(r, ERRORS), message = pick(r, { "Slow down.", 4, nil }), param = NULL })
      end
      local done = { type = "response.output_item.done", output_index = i - 1, item = item }
      if r(10) == 1 then done.item = pick(r, { false, NULL }) end
      if r(10) == 1 then done[DUP] = { { "item", pick(r, { false, item_of(r, 6) }) } } end
      ev(done)
    end
    if r(25) == 1 then ev({ type = "response.queued", response = "odd" }) end
    local last = r(20)
    if last == 1 then return table.concat(out) end -- cut before the end
    if last == 2 then
      ev({ type = "response.failed", response = pick(r, {
        { status = "failed", error = error_of(r), output = arr() }, { status = "failed", error = NULL },
        { status = "in_progress" }, "gone" }) })
    else
      local status = r(4) == 1 and "incomplete" or "completed"
      local output = pick(r, { items, items, items, items, arr(), {}, NULL, { x = 1 } })
      local done = { type = "response." .. status, response = response_of(r, status, output) }
      if r(20) == 1 then done.response = pick(r, { "r", 5, arr() }) end
      ev(done)
    end
    if r(6) == 1 then out[#out + 1] = "data: [DONE]\n\n" end
    if r(6) == 1 then ev({ type = "response.output_text.delta", delta = "after the end" }) end
    return table.concat(out)
  end

  -- The C parser's result for a body fed in pieces, as the exchange feeds it.
  local canonical_items = ref.canonical_items

  local function by_c(body, r)
    local s <close> = core.responses_stream()
    local text, reasoning, err = feed_pieces(s, body, r)
    if err then return { err = err, text = text, reasoning = reasoning } end
    local reply, ferr = s:finish()
    if not reply then return { err = ferr, text = text, reasoning = reasoning } end
    return { reply = canonical_items(reply), text = text, reasoning = reasoning }
  end

  -- Errors agree on what they say; a JSON syntax error is worded by each
  -- scanner its own way.
  local function same_error(want, got, ctx)
    assert.are.equal(want.code, got.code, ctx)
    if not want.message:find("invalid JSON", 1, true) then
      assert.are.equal(want.message, got.message, ctx)
    else
      assert.are.equal(want.message:match("^(.-) %("), got.message:match("^(.-) %("), ctx)
    end
    for _, k in ipairs({ "type", "status", "retryable", "partial_text" }) do
      assert.are.equal(want[k], got[k], ctx .. " (" .. k .. ")")
    end
    assert.are.equal(want.body, got.body and errors.excerpt(got.body), ctx .. " (body)")
  end

  it("reads streams, split anywhere, as the reference reads them", function()
    local r = rng(29)
    local seen = { reply = 0, err = 0 }
    for case = 1, 400 do
      local body = stream_of(r)
      local want, got = ref.responses_stream(body), by_c(body, r)
      local ctx = ("case %d:\n%s"):format(case, body)
      assert.are.same(want.text, got.text, ctx)
      assert.are.same(want.reasoning, got.reasoning, ctx)
      if want.err then
        seen.err = seen.err + 1
        assert.is_not_nil(got.err, ctx)
        same_error(want.err, got.err, ctx)
      else
        seen.reply = seen.reply + 1
        assert.is_nil(got.err, got.err and (tostring(got.err) .. "\n" .. ctx))
        assert.are.same(want.reply, got.reply, ctx)
      end
    end
    -- both kinds of outcome are exercised
    assert.is_true(seen.reply > 100 and seen.err > 50, cjson.encode(seen))
  end)

  it("reads whole bodies as the reference reads them", function()
    local r = rng(31)
    for case = 1, 400 do
      local output = arr()
      for i = 1, r(5) - 1 do output[i] = item_of(r, i) end
      local resp = response_of(r, pick(r, { "completed", "completed", "incomplete", "failed" }),
        pick(r, { output, output, output, arr(), {}, NULL }))
      if r(8) == 1 then resp.error = error_of(r) end
      local body = enc(resp, r)
      if r(25) == 1 then body = body:sub(1, r(#body)) end
      if r(40) == 1 then body = pick(r, { "[1]", '"x"', "5", "" }) end
      local want, werr = ref.responses_parse(body)
      local got, gerr = core.responses_parse(body)
      canonical_items(got)
      local ctx = ("case %d:\n%s"):format(case, body)
      if werr then
        -- (neither carries the body: the exchange adds its excerpt)
        assert.is_nil(got, ctx)
        same_error(werr, gerr, ctx)
      else
        assert.is_nil(gerr, gerr and (tostring(gerr) .. "\n" .. ctx))
        assert.are.same(want, got, ctx)
      end
    end
  end)
end)

describe("json.canonical against the Lua encoder it replaced", function()

  local FLOATS = { 0.1, -0.0, 1e300, -1e-300, 2 ^ 53, 2 ^ 63, 1 / 3, 3.0, -2.5, 123456789.125, 1e15 + 0.5,
    5e-324, 1.7976931348623157e308, 0 / 0, math.huge, -math.huge }
  local INTS = { 0, 1, -1, 42, math.maxinteger, math.mininteger, 1 << 53, 99999999999999 }

  -- a value of any kind JSON holds, up to `depth` tables deep
  local function value(r, depth)
    local k = r(depth > 0 and 10 or 6)
    if k == 1 then return text(r, 12)
    elseif k == 2 then return FLOATS[r(#FLOATS)]
    elseif k == 3 then return INTS[r(#INTS)]
    elseif k == 4 then return r(2) == 1
    elseif k == 5 then return json.null
    elseif k == 6 then return (r(2) == 1) and "" or text(r, 4)
    elseif k <= 8 then -- an array, marked or not, maybe empty, maybe with holes
      local t = r(3) == 1 and json.array() or {}
      for i = 1, r(6) - 1 do t[i] = value(r, depth - 1) end
      if r(5) == 1 and #t > 1 then t[#t - 1] = nil end
      return t
    else -- an object: string keys, number keys, keys alike as text
      local t = {}
      for _ = 1, r(8) - 1 do
        local kk = r(5)
        local key = kk == 1 and r(5) + 0.5 or kk == 2 and r(9) or text(r, 6)
        t[key] = value(r, depth - 1)
      end
      if r(6) == 1 then t["1"], t[1] = "string one", "number one" end
      if r(6) == 1 then setmetatable(t, { __index = function() return "from __index" end }) end
      return t
    end
  end

  it("writes random values byte for byte as the Lua encoder did", function()
    for seed = 1, 3000 do
      local r = rng(seed)
      local v = value(r, 4)
      local want = ref.canonical(v)
      local got = json.canonical(v)
      if got ~= want then
        error(("seed %d: C wrote %q, Lua wrote %q"):format(seed, got, want))
      end
    end
  end)

  it("writes what the Lua encoder wrote for values at the edges", function()
    local deep = {}
    local at = deep
    for _ = 1, 199 do at.x = {}; at = at.x end
    local cases = {
      {}, json.array(), { json.array() }, { a = {}, b = json.array(), c = { 1, 2 } }, "a/b\"c\\\0\127é",
      { [1] = "x", [3] = "z" }, { [2.0] = "two", [1.5] = "x" }, { ["\0b"] = 1, ["\0a"] = 2, a = 3, [""] = 4 },
      { n = 0 / 0, i = math.huge }, deep, setmetatable({ 1, 2 }, { __len = function() return 3 end }),
      setmetatable({}, { __index = function(_, i) return i end }), { 1, nil, 3 },
    }
    for i, v in ipairs(cases) do
      assert.are.equal(ref.canonical(v), json.canonical(v), "case " .. i)
    end
  end)

  it("raises what the Lua encoder raised, and keeps nothing of a failed encode", function()
    local too_deep = {}
    local at = too_deep
    for _ = 1, 201 do at[1] = {}; at = at[1] end
    local cases = {
      { print }, { [true] = 1 }, { [{}] = 1 }, too_deep, io.stdout, coroutine.create(print),
      { a = { b = { c = function() end } } },
    }
    for i, v in ipairs(cases) do
      local ok1, e1 = pcall(ref.canonical, v)
      local ok2, e2 = pcall(json.canonical, v)
      assert.is_false(ok1, "case " .. i)
      assert.is_false(ok2, "case " .. i)
      assert.are.equal(e1, e2, "case " .. i)
    end
    assert.are.equal('{"a":1}', json.canonical { a = 1 })
  end)
end)
