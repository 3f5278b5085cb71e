-- core.anthropic_stream and core.anthropic_parse (core/anthropic.c): every
-- field a Messages reply is made of, however the stream is cut, and what a
-- reply that cannot be taken turns into.
local core = require "tide.core"
local cjson = require "cjson"

local function ev(name, obj)
  return "event: " .. name .. "\ndata: " .. (type(obj) == "string" and obj or cjson.encode(obj)) .. "\n\n"
end

local function start(index, block)
  return ev("content_block_start", { type = "content_block_start", index = index, content_block = block })
end

local function delta(index, d)
  return ev("content_block_delta", { type = "content_block_delta", index = index, delta = d })
end

local function stop(index) return ev("content_block_stop", { type = "content_block_stop", index = index }) end

local MESSAGE_START = ev("message_start", { type = "message_start", message = { id = "msg_1", type = "message",
  role = "assistant", content = {}, usage = { input_tokens = 13, output_tokens = 1,
  cache_read_input_tokens = 12000, cache_creation_input_tokens = 2015 } } })
local MESSAGE_END = ev("message_delta", { type = "message_delta", delta = { stop_reason = "tool_use" },
  usage = { output_tokens = 77 } }) .. ev("message_stop", { type = "message_stop" })

-- A reply with everything in it: a thinking block in pieces with its
-- signature, a redacted one, text with escapes, two tool_use blocks whose
-- input fragments interleave, pings, an unknown event, CRLF line ends.
local FULL = table.concat({
  MESSAGE_START,
  ev("ping", { type = "ping" }),
  start(0, { type = "thinking", thinking = "", signature = "" }),
  delta(0, { type = "thinking_delta", thinking = "First, " }),
  delta(0, { type = "thinking_delta", thinking = "the weather." }),
  delta(0, { type = "signature_delta", signature = "EqSIG0" }),
  stop(0),
  start(1, { type = "redacted_thinking", data = "EmwOPAQUE" }),
  stop(1),
  start(2, { type = "text", text = "" }),
  'event: content_block_delta\r\ndata: {"type":"content_block_delta","index":2,"delta":{"type":"text_delta",'
    .. '"text":"caf\\u00e9 \\ud83d\\ude00 \\"q\\"\\n"},"x":[1,-2.5e3,true,null,{"a":[{}]}]}\r\n\r\n',
  delta(2, { type = "text_delta", text = "ü€" }),
  stop(2),
  start(3, { type = "tool_use", id = "toolu_a", name = "lookup", input = {} }),
  start(4, { type = "tool_use", id = "toolu_b", name = "clock", input = {} }),
  delta(3, { type = "input_json_delta", partial_json = '{"q":' }),
  delta(4, { type = "input_json_delta", partial_json = '{"tz"' }),
  ev("brand_new_event", { type = "brand_new_event", payload = { 1, 2 } }),
  delta(3, { type = "input_json_delta", partial_json = '"x"}' }),
  delta(4, { type = "input_json_delta", partial_json = ':"UTC"}' }),
  stop(3), stop(4),
  ": a comment\n",
  MESSAGE_END,
})

local FULL_TEXT = 'café 😀 "q"\nü€'

local function check_full(res, err, deltas, rdeltas)
  assert.is_nil(err, err and tostring(err))
  assert.are.equal(FULL_TEXT, res.text)
  assert.are.same({
    { type = "text", text = "First, the weather.", signature = "EqSIG0", provider = "anthropic" },
    { type = "redacted", data = "EmwOPAQUE", provider = "anthropic" },
  }, res.reasoning)
  assert.are.same({
    { id = "toolu_a", name = "lookup", arguments = '{"q":"x"}' },
    { id = "toolu_b", name = "clock", arguments = '{"tz":"UTC"}' },
  }, res.tool_calls)
  -- input is the whole prompt: uncached + cache reads + cache writes
  assert.are.same({ input = 13 + 12000 + 2015, output = 77, cached = 12000, cache_write = 2015, reasoning = 0 },
    res.usage)
  for _, k in ipairs({ "input", "output", "cached", "cache_write", "reasoning" }) do
    assert.are.equal("integer", math.type(res.usage[k]))
  end
  assert.are.equal("tool_use", res.stop_raw)
  assert.are.equal("tool_calls", res.stop)
  if deltas then assert.are.equal(FULL_TEXT, table.concat(deltas)) end
  if rdeltas then assert.are.same({ "First, ", "the weather." }, rdeltas) end
end

-- Feeds the pieces to a new stream with out and rout tables; the reply or
-- nil and the error, then the text and reasoning deltas.
local function run(pieces, max)
  local s <close> = core.anthropic_stream(max)
  local deltas, rdeltas = {}, {}
  for _, piece in ipairs(pieces) do
    local out = {}
    local n, err = s:feed(piece, out, rdeltas)
    for i = 1, #out do deltas[#deltas + 1] = out[i] end
    if n == nil then return nil, err, deltas, rdeltas end
  end
  local res, err = s:finish()
  return res, err, deltas, rdeltas
end

local function one(body, max) return run({ body }, max) end

describe("core.anthropic_stream", function()
  it("reads every field of a reply", function()
    check_full(one(FULL))
  end)

  it("gives the same reply wherever the stream is cut", function()
    for i = 0, #FULL, 7 do
      check_full(run({ FULL:sub(1, i), FULL:sub(i + 1) }))
    end
    local bytes = {}
    for i = 1, #FULL do bytes[i] = FULL:sub(i, i) end
    check_full(run(bytes))
  end)

  it("hands text back as a string per chunk, or none at all with out = false", function()
    local s <close> = core.anthropic_stream()
    assert.are.equal("café 😀 \"q\"\nü€", s:feed(FULL:sub(1, FULL:find("stop", FULL:find("ü€"), true))))
    local q <close> = core.anthropic_stream()
    assert.is_nil(q:feed(FULL, false))
    check_full(q:finish())
  end)

  it("makes no reasoning string without a listener, and still keeps the thinking", function()
    local s <close> = core.anthropic_stream()
    local out = {}
    assert.are.equal(2, s:feed(FULL, out))
    check_full(s:finish())
  end)

  it("takes a tool input sent whole in content_block_start, canonically", function()
    local res = assert(one(MESSAGE_START .. start(0, { type = "tool_use", id = "t", name = "f",
      input = { n = 3, big = 1e14, f = 0.5 } }) .. stop(0) .. MESSAGE_END))
    assert.are.equal('{"big":100000000000000,"f":0.5,"n":3}', res.tool_calls[1].arguments)
  end)

  it("keeps message_start's cache counts unless message_delta restates them", function()
    local res = assert(one(MESSAGE_START .. MESSAGE_END))
    assert.are.same({ input = 14028, output = 77, cached = 12000, cache_write = 2015, reasoning = 0 }, res.usage)
    res = assert(one(MESSAGE_START .. ev("message_delta", { type = "message_delta", delta = { stop_reason = "end_turn" },
      usage = { output_tokens = 9, input_tokens = 20, cache_read_input_tokens = 0, cache_creation_input_tokens = 5 } })
      .. ev("message_stop", { type = "message_stop" })))
    assert.are.same({ input = 25, output = 9, cached = 0, cache_write = 5, reasoning = 0 }, res.usage)
    assert.are.equal("stop", res.stop)
  end)

  it("maps the stop reasons, and reads a new one from the reply", function()
    for raw, want in pairs({ end_turn = "stop", stop_sequence = "stop", max_tokens = "length",
                             pause_turn = "pause", model_context_window_exceeded = "length",
                             refusal = "refusal", tool_use = "tool_calls", newer = "stop" }) do
      local res = assert(one(MESSAGE_START .. ev("message_delta", { type = "message_delta",
        delta = { stop_reason = raw } }) .. ev("message_stop", { type = "message_stop" })))
      assert.are.equal(want, res.stop, raw)
      assert.are.equal(raw, res.stop_raw)
    end
  end)

  -- A web search as the API streams it (platform.claude.com, "Server
  -- tools"; anthropic-sdk-python's ServerToolUseBlock and
  -- WebSearchToolResultBlock): text, the server's tool use with its input in
  -- fragments, the result whole at its start, text with a citation, then a
  -- call of one of tide's tools.
  local SEARCH = table.concat({
    MESSAGE_START,
    start(0, { type = "text", text = "Let me search." }),
    stop(0),
    start(1, { type = "server_tool_use", id = "srvtoolu_1", name = "web_search", input = {},
               caller = { type = "direct" } }),
    delta(1, { type = "input_json_delta", partial_json = '{"query": "tide' }),
    delta(1, { type = "input_json_delta", partial_json = ' tables"}' }),
    stop(1),
    start(2, { type = "web_search_tool_result", tool_use_id = "srvtoolu_1", content = {
      { type = "web_search_result", url = "https://tides.example/", title = "Tides", encrypted_content = "EqENC",
        page_age = cjson.null } } }),
    stop(2),
    start(3, { type = "text", text = "" }),
    delta(3, { type = "citations_delta", citation = { type = "web_search_result_location",
      url = "https://tides.example/", title = "Tides", encrypted_index = "EqIDX", cited_text = "high at 6" } }),
    delta(3, { type = "text_delta", text = "High tide is at 6." }),
    stop(3),
    start(4, { type = "tool_use", id = "toolu_a", name = "lookup", input = {} }),
    delta(4, { type = "input_json_delta", partial_json = '{"note":"information"}' }),
    stop(4),
    ev("message_delta", { type = "message_delta", delta = { stop_reason = "tool_use",
        container = { id = "container_011CPR5", expires_at = "2026-12-06T13:00:00Z" } },
      usage = { output_tokens = 90, output_tokens_details = { thinking_tokens = 12 },
                server_tool_use = { web_search_requests = 1 } } }),
    ev("message_stop", { type = "message_stop" }),
  })

  it("keeps a server tool's blocks: the content goes back as the API sent it", function()
    local res = assert(one(SEARCH))
    assert.are.equal("Let me search.High tide is at 6.", res.text)
    -- the server's tool use is not a call of tide's
    assert.are.same({ { id = "toolu_a", name = "lookup", arguments = '{"note":"information"}' } }, res.tool_calls)
    assert.are.equal(1, #res.reasoning)
    local part = res.reasoning[1]
    assert.are.equal("content", part.type)
    assert.are.equal("anthropic", part.provider)
    assert.are.same({
      { type = "text", text = "Let me search." },
      { type = "server_tool_use", id = "srvtoolu_1", name = "web_search", input = { query = "tide tables" },
        caller = { type = "direct" } },
      { type = "web_search_tool_result", tool_use_id = "srvtoolu_1", content = {
        { type = "web_search_result", url = "https://tides.example/", title = "Tides", encrypted_content = "EqENC",
          page_age = cjson.null } } },
      { type = "text", text = "High tide is at 6.", citations = { { type = "web_search_result_location",
        url = "https://tides.example/", title = "Tides", encrypted_index = "EqIDX", cited_text = "high at 6" } } },
      { type = "tool_use", id = "toolu_a", name = "lookup", input = { note = "information" } },
    }, cjson.decode(part.data))
    -- the input exactly as its fragments came
    assert.is_truthy(part.data:find('"input":{"query": "tide tables"}', 1, true))
    -- the container the server ran code in, for the next request to reuse
    assert.are.equal("container_011CPR5", res.container)
    -- thinking tokens are the reply's reasoning, inside output; the searches are billed apart
    assert.are.same({ input = 14028, output = 90, cached = 12000, cache_write = 2015, reasoning = 12,
                      web_searches = 1 }, res.usage)
  end)

  it("keeps no content part for a reply of only the blocks tide models", function()
    local res = assert(one(FULL))
    for _, r in ipairs(res.reasoning) do assert.are_not.equal("content", r.type) end
  end)

  it("refuses a server tool's input that is not a JSON object", function()
    local res, err = one(MESSAGE_START .. start(0, { type = "server_tool_use", id = "s", name = "web_search",
      input = {} }) .. delta(0, { type = "input_json_delta", partial_json = '{"query": "cut' })
      .. stop(0) .. MESSAGE_END)
    assert.is_nil(res)
    assert.are.equal("MalformedResponse", err.code)
    assert.are.equal("anthropic content block 0 has an input that is not a JSON object", err.message)
  end)

  it("keeps a server tool's input without arguments, streamed as one empty fragment", function()
    local res = assert(one(MESSAGE_START .. start(0, { type = "mcp_tool_use", id = "mcptoolu_1", name = "list",
      server_name = "files", input = {} }) .. delta(0, { type = "input_json_delta", partial_json = "" })
      .. stop(0) .. MESSAGE_END))
    local content = res.reasoning[#res.reasoning]
    assert.are.equal("content", content.type)
    assert.is_truthy(content.data:find('"input":{}', 1, true))
  end)

  it("refuses a thinking block without its signature, and redacted thinking without data", function()
    local res, err = one(MESSAGE_START .. start(0, { type = "thinking", thinking = "", signature = "" })
      .. delta(0, { type = "thinking_delta", thinking = "hmm" }) .. stop(0) .. MESSAGE_END)
    assert.is_nil(res)
    assert.are.equal("MalformedResponse", err.code)
    assert.are.equal("anthropic thinking block 1 has no signature", err.message)
    res, err = one(MESSAGE_START .. start(0, { type = "thinking", thinking = "", signature = "s" })
      .. start(1, { type = "redacted_thinking" }) .. MESSAGE_END)
    assert.is_nil(res)
    assert.are.equal("anthropic redacted_thinking block 2 has no data", err.message)
    res, err = one(MESSAGE_START .. start(0, { type = "redacted_thinking", data = "d" })
      .. delta(0, { type = "signature_delta", signature = "s" }))
    assert.is_nil(res)
    assert.are.equal("anthropic signature_delta outside a thinking block", err.message)
    res, err = one(MESSAGE_START .. start(0, { type = "thinking", thinking = "" })
      .. start(0, { type = "thinking", thinking = "" }))
    assert.are.equal("anthropic thinking block has no valid index", err.message)
  end)

  it("turns an error event into the error it is, with the text before it", function()
    local res, err, deltas = one(MESSAGE_START .. start(0, { type = "text", text = "" })
      .. delta(0, { type = "text_delta", text = "Hel" })
      .. ev("error", { type = "error", error = { type = "overloaded_error", message = "Overloaded" } })
      .. delta(0, { type = "text_delta", text = "never" }))
    assert.is_nil(res)
    assert.are.equal("ProviderError", err.code)
    assert.are.equal("anthropic stream error: Overloaded", err.message)
    assert.are.equal("overloaded_error", err.type)
    assert.is_true(err.retryable)
    assert.matches('"overloaded_error"', err.body, 1, true)
    assert.are.same({ "Hel" }, deltas)
    _, err = one(ev("error", { type = "error", error = { type = "rate_limit_error", message = "slow" } }))
    assert.are.equal("RateLimited", err.code)
    _, err = one(ev("error", { type = "error", error = { type = "invalid_request_error", message = "no" } }))
    assert.are.equal("ProviderError", err.code)
    assert.is_false(err.retryable)
    -- the type may come from the SSE event name alone
    _, err = one("event: error\ndata: {\"error\":{\"type\":\"api_error\"}}\n\n")
    assert.are.equal("anthropic stream error: api_error", err.message)
    assert.is_true(err.retryable)
  end)

  it("refuses a stream cut before message_stop, keeping the text it had", function()
    local cut = FULL:sub(1, FULL:find("message_delta", 1, true) - 8)
    local res, err = one(cut)
    assert.is_nil(res)
    assert.are.equal("MalformedResponse", err.code)
    assert.are.equal("anthropic stream ended before message_stop", err.message)
    assert.are.equal(FULL_TEXT, err.partial_text)
    -- nothing after message_stop counts, not even broken JSON
    check_full(one(FULL .. "data: {broken\n\n" .. delta(2, { type = "text_delta", text = "late" })))
  end)

  it("refuses malformed events as the Lua parser did", function()
    for body, msg in pairs({
      ["data: {nope\n\n"] = "^anthropic stream event is not valid JSON %(",
      ["data: 42\n\n"] = "^anthropic stream event is not a JSON object$",
      [ev("content_block_delta", { type = "content_block_delta", index = 0 })] = "has no delta$",
      [ev("content_block_start", { type = "content_block_start", index = 0 })] = "has no block$",
      [delta(-1, { type = "input_json_delta", partial_json = "{" })] = "input_json_delta has no valid index$",
      [delta(0.5, { type = "input_json_delta", partial_json = "{" })] = "input_json_delta has no valid index$",
      [start(cjson.null, { type = "tool_use", name = "f" })] = "tool_use block has no valid index$",
      [delta(3, { type = "thinking_delta", thinking = "x" })] = "thinking_delta outside a thinking block$",
    }) do
      local res, err = one(body .. MESSAGE_END)
      assert.is_nil(res, body)
      assert.are.equal("MalformedResponse", err.code, body)
      assert.matches(msg, err.message)
    end
    -- an index Lua converts from a string is an index (math.tointeger)
    local res = assert(one(start("1", { type = "tool_use", id = "t", name = "f", input = {} })
      .. delta("1", { type = "input_json_delta", partial_json = "{}" }) .. MESSAGE_END))
    assert.are.equal("{}", res.tool_calls[1].arguments)
  end)

  it("caps the tool input of a reply", function()
    -- (each event is under the cap; the input, all of them together, is not)
    local piece = delta(0, { type = "input_json_delta", partial_json = string.rep("a", 100) })
    local res, err = one(start(0, { type = "tool_use", id = "t", name = "f", input = {} })
      .. piece .. piece .. piece .. MESSAGE_END, 256)
    assert.is_nil(res)
    assert.are.equal("StreamTooLarge", err.code)
  end)

  it("starts every stream afresh, on the parser a closed stream left behind", function()
    local want = assert(one(FULL))
    for _, left in ipairs({
      MESSAGE_START .. start(0, { type = "thinking", thinking = "old" }) .. start(5, { type = "tool_use", id = "o",
        name = "o", input = {} }) .. delta(5, { type = "input_json_delta", partial_json = "{\"x\":" }) .. "data: {\"ty",
      "data: {not json}\n\n",
      MESSAGE_START .. start(0, { type = "text", text = string.rep("z", 50000) }),
    }) do
      local s = core.anthropic_stream()
      s:feed(left)
      s:close()
      assert.are.same(want, (one(FULL)))
    end
  end)

  it("closes idempotently and refuses use after close", function()
    local s = core.anthropic_stream()
    assert.matches("^tide.anthropic_stream %(", tostring(s))
    s:close()
    s:close()
    assert.are.equal("tide.anthropic_stream (closed)", tostring(s))
    assert.has_error(function() s:feed("data: x\n\n") end, "attempt to use a closed anthropic stream")
    assert.has_error(function() s:finish() end, "attempt to use a closed anthropic stream")
    assert.has_error(function() core.anthropic_stream(0) end)
    assert.has_error(function() core.anthropic_stream():feed("x", 1) end)
  end)
end)

describe("core.anthropic_parse", function()
  local function reply(content, extra)
    local r = { id = "msg_1", type = "message", role = "assistant", model = "m", content = content,
                stop_reason = "end_turn", stop_sequence = cjson.null,
                usage = { input_tokens = 5, output_tokens = 7, cache_read_input_tokens = 100,
                          cache_creation_input_tokens = 3 } }
    for k, v in pairs(extra or {}) do r[k] = v end
    return cjson.encode(r)
  end

  it("reads every field of a whole reply", function()
    local body = reply({
      { type = "thinking", thinking = "Considering.", signature = "EqSIG" },
      { type = "redacted_thinking", data = "EmwDATA" },
      { type = "text", text = "Two calls:" },
      { type = "tool_use", id = "toolu_1", name = "lookup", input = { q = "a", n = 2 } },
      { type = "server_tool_use", id = "srv", name = "web_search", input = { query = "x" } },
      { type = "tool_use", name = "clock", input = {} },
      { type = "text", text = " done" },
    }, { stop_reason = "tool_use" })
    local res = assert(core.anthropic_parse(body))
    assert.are.equal("Two calls: done", res.text)
    -- a block tide does not model (the server tool's use) keeps the whole
    -- content, byte for byte, as the last part
    assert.are.same({
      { type = "text", text = "Considering.", signature = "EqSIG", provider = "anthropic" },
      { type = "redacted", data = "EmwDATA", provider = "anthropic" },
      { type = "content", data = res.reasoning[3] and res.reasoning[3].data, provider = "anthropic" },
    }, res.reasoning)
    assert.are.same(cjson.decode(body).content, cjson.decode(res.reasoning[3].data))
    assert.is_truthy(body:find(res.reasoning[3].data, 1, true))
    assert.are.same({ { id = "toolu_1", name = "lookup", arguments = '{"n":2,"q":"a"}' },
                      { id = "call_2", name = "clock", arguments = "{}" } }, res.tool_calls)
    assert.are.same({ input = 108, output = 7, cached = 100, cache_write = 3, reasoning = 0 }, res.usage)
    assert.are.equal("tool_calls", res.stop)
    assert.are.equal("tool_use", res.stop_raw)
  end)

  it("says what is wrong with a reply it cannot take", function()
    for body, want in pairs({
      ["not json"] = { "MalformedResponse", "^anthropic response is not valid JSON %(.* at character 1%)$" },
      ['"s"'] = { "MalformedResponse", "^anthropic response is not a JSON object$" },
      ["[1]"] = { "MalformedResponse", "^anthropic response has no content array$" },
      ['{"content":null}'] = { "MalformedResponse", "^anthropic response has no content array$" },
      [reply({ "x" })] = { "MalformedResponse", "^anthropic content%[1%] is not an object$" },
      [reply({ { type = "text", text = "a" }, { type = "thinking", thinking = "t" } })] =
        { "MalformedResponse", "^anthropic content%[2%] %(thinking%) has no signature$" },
      [reply({ { type = "redacted_thinking", data = "" } })] =
        { "MalformedResponse", "^anthropic content%[1%] %(redacted_thinking%) has no data$" },
      ['{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'] =
        { "ProviderError", "^anthropic returned an error: Overloaded$", "overloaded_error" },
      ['{"error":{"type":"rate_limit_error","message":"slow"}}'] =
        { "RateLimited", "^anthropic returned an error: slow$", "rate_limit_error" },
      ['{"type":"error"}'] = { "ProviderError", "^anthropic returned an error: nil$" },
      -- a server's message is kept whole, a NUL in it included
      ['{"type":"error","error":{"type":"api_error","message":"a\\u0000b"}}'] =
        { "ProviderError", "^anthropic returned an error: a\0b$", "api_error" },
    }) do
      local res, err = core.anthropic_parse(body)
      assert.is_nil(res, body)
      assert.are.equal(want[1], err.code, body)
      assert.matches(want[2], err.message)
      assert.are.equal(want[3], err.type)
      assert.is_nil(err.body) -- the exchange adds the excerpt
    end
  end)

  it("keeps nothing of one reply in the next", function()
    local a = reply({ { type = "thinking", thinking = "x", signature = "s" },
                      { type = "tool_use", id = "a", name = "n", input = { long = string.rep("y", 20000) } } })
    local b = reply({ { type = "text", text = "plain" } })
    local want = assert(core.anthropic_parse(b))
    assert(core.anthropic_parse(a))
    assert.is_nil(core.anthropic_parse("{broken"))
    assert.are.same(want, assert(core.anthropic_parse(b)))
    assert.is_nil(want.reasoning)
    assert.are.same({}, want.tool_calls)
    assert.has_error(function() core.anthropic_parse({}) end)
    assert.has_error(function() core.anthropic_parse("{}", 0) end,
      "bad argument #2 to 'anthropic_parse' (max_bytes must be positive)")
  end)
end)
