-- core.responses_stream and core.responses_parse (core/responses.c): every
-- field a Responses API reply carries to tide, read from events and bodies
-- shaped as the API sends them (openai-openapi's examples and
-- openai-python's types), each case one field the C parser must not lose.
local core = require "tide.core"
local cjson = require "cjson"

-- One SSE event: `event: <type>` and its data, as the API frames them.
local function ev(obj, unnamed)
  local data = type(obj) == "string" and obj or cjson.encode(obj)
  local name = type(obj) == "table" and obj.type or data:match('"type":"([^"]+)"')
  return (unnamed and "" or ("event: " .. name .. "\n")) .. "data: " .. data .. "\n\n"
end

-- A finished response as the API repeats it: the request's instructions
-- and tools echoed around what tide reads.
local function response(fields)
  local r = {
    id = "resp_123", object = "response", created_at = 1740855869, status = "completed", error = cjson.null,
    incomplete_details = cjson.null, model = "gpt-5", store = false, temperature = 1, top_p = 1,
    instructions = 'Answer with "output":[{"type":"function_call"}] never; tools: {"call_id":"x"}',
    tools = { { type = "function", name = "lookup", strict = false, description = '"type":"reasoning"',
                parameters = { type = "object", properties = { q = { type = "string" } } } } },
    output = {},
    usage = { input_tokens = 10, output_tokens = 5, total_tokens = 15,
              input_tokens_details = { cached_tokens = 0 }, output_tokens_details = { reasoning_tokens = 0 } },
    metadata = {},
  }
  for k, v in pairs(fields or {}) do r[k] = v end
  return r
end

local function text_delta(s) return ev({ type = "response.output_text.delta", item_id = "msg_1", output_index = 0,
                                         content_index = 0, delta = s, logprobs = {}, sequence_number = 3 }) end

-- Feeds the chunks (a body cut where given) and finishes: the reply or the
-- error, and the text and reasoning deltas handed back on the way.
local function run(chunks, listen)
  local s <close> = core.responses_stream()
  local text, reasoning = {}, {}
  for _, chunk in ipairs(type(chunks) == "string" and { chunks } or chunks) do
    local out, rout = {}, listen ~= false and {} or nil
    local n, err = s:feed(chunk, out, rout)
    for i = 1, #out do text[#text + 1] = out[i] end
    for i = 1, #(rout or {}) do reasoning[#reasoning + 1] = rout[i] end
    if n == nil then return nil, err, text, reasoning end
  end
  local reply, err = s:finish()
  return reply, err, text, reasoning
end

local function message(text)
  return { id = "msg_1", type = "message", role = "assistant", status = "completed",
           content = { { type = "output_text", text = text, annotations = {} } } }
end

local ENCRYPTED = "gAAAAABoX+/r3Q==\\u2028" .. string.rep("Zx9/", 300)
local REASONING = { id = "rs_68a1", type = "reasoning", encrypted_content = ENCRYPTED,
                    summary = { { type = "summary_text", text = "**Looking it up**\n\nThe user wants tide." },
                                { type = "summary_text", text = "Second thought." } } }

describe("core.responses_stream", function()
  it("keeps a reasoning item's encrypted content and summary verbatim", function()
    local body = ev({ type = "response.output_item.added", output_index = 0,
                      item = { id = "rs_68a1", type = "reasoning", summary = {} } })
      .. ev({ type = "response.reasoning_summary_text.delta", item_id = "rs_68a1", output_index = 0,
              summary_index = 0, delta = "**Looking" })
      .. ev({ type = "response.reasoning_summary_text.delta", item_id = "rs_68a1", output_index = 0,
              summary_index = 0, delta = " it up**" })
      .. ev({ type = "response.output_item.done", output_index = 0, item = REASONING })
      .. text_delta("tide")
      .. ev({ type = "response.completed", response = response({ output = { REASONING, message("tide") } }) })
    local reply, err, text, reasoning = run(body)
    assert.is_nil(err)
    assert.are.same({ { type = "encrypted", id = "rs_68a1", provider = "openai_responses",
                        data = ENCRYPTED, summary = "**Looking it up**\n\nThe user wants tide.\n\nSecond thought." } },
                    reply.reasoning)
    assert.are.same({ "**Looking", " it up**" }, reasoning)
    assert.are.same({ "tide" }, text)
    -- Nobody listening: no reasoning strings at all, the reply the same.
    local quiet, _, _, none = run(body, false)
    assert.are.same({}, none)
    assert.are.same(reply, quiet)
    -- A reasoning item without encrypted content (store = true) keeps its id.
    local bare = { id = "rs_2", type = "reasoning", summary = {} }
    local r2 = assert(run(ev({ type = "response.completed", response = response({ output = { bare } }) })))
    assert.are.same({ { type = "encrypted", id = "rs_2", provider = "openai_responses", summary = "" } }, r2.reasoning)
  end)

  it("hands reasoning text deltas (open-weight models) to the listener too", function()
    local body = ev({ type = "response.reasoning_text.delta", item_id = "rs_1", output_index = 0, content_index = 0,
                      delta = "Let me think." })
      .. ev({ type = "response.completed", response = response() })
    local reply, _, _, reasoning = run(body)
    assert.are.same({ "Let me think." }, reasoning)
    assert.is_nil(reply.reasoning) -- no reasoning item: nothing to send back
  end)

  it("reads parallel function calls in output order, ids being call_ids", function()
    local calls = {
      { id = "fc_1", type = "function_call", status = "completed", call_id = "call_A", name = "lookup",
        arguments = '{"q":"tide \\"runtime\\""}' },
      { id = "fc_2", type = "function_call", status = "completed", call_id = "call_B", name = "delegate_github",
        arguments = '{"task":"list PRs","n":[]}' },
      { id = "fc_3", type = "function_call", status = "completed", call_id = "call_C", name = "lookup", arguments = "" },
    }
    local body = ev({ type = "response.output_item.added", output_index = 0, item = calls[1] })
      .. ev({ type = "response.function_call_arguments.delta", item_id = "fc_1", output_index = 0, delta = '{"q"' })
      .. ev({ type = "response.function_call_arguments.done", item_id = "fc_1", output_index = 0,
              arguments = calls[1].arguments })
      .. ev({ type = "response.output_item.done", output_index = 0, item = calls[1] })
      .. ev({ type = "response.output_item.done", output_index = 1, item = calls[2] })
      .. ev({ type = "response.completed", response = response({
        output = { calls[1], message(""), calls[2], { id = "ws_1", type = "web_search_call", status = "completed" },
                   calls[3] } }) })
    local reply = assert(run(body))
    assert.are.same({ { id = "call_A", name = "lookup", arguments = '{"q":"tide \\"runtime\\""}' },
                      { id = "call_B", name = "delegate_github", arguments = '{"task":"list PRs","n":[]}' },
                      { id = "call_C", name = "lookup", arguments = "{}" } }, reply.tool_calls)
    assert.are.equal("tool_calls", reply.stop)
    assert.are.equal("completed", reply.stop_raw)
    assert.are.equal("", reply.text)
  end)

  it("reads cached and reasoning token details", function()
    local usage = { input_tokens = 1200, output_tokens = 850, total_tokens = 2050,
                    input_tokens_details = { cached_tokens = 1024, cache_write_tokens = 0 },
                    output_tokens_details = { reasoning_tokens = 832 } }
    local reply = assert(run(ev({ type = "response.completed", response = response({ usage = usage }) })))
    assert.are.same({ input = 1200, output = 850, cached = 1024, cache_write = 0, reasoning = 832 }, reply.usage)
    -- The API's own example leaves the input details out: zeros, not errors.
    usage.input_tokens_details, usage.output_tokens_details = nil, nil
    reply = assert(run(ev({ type = "response.completed", response = response({ usage = usage }) })))
    assert.are.same({ input = 1200, output = 850, cached = 0, cache_write = 0, reasoning = 0 }, reply.usage)
  end)

  it("reports an incomplete response as length, content_filter, or the reason it gives", function()
    local function incomplete(reason)
      return text_delta("cut sh") .. ev({ type = "response.incomplete", response = response({
        status = "incomplete", incomplete_details = reason and { reason = reason } or cjson.null,
        output = { message("cut sh") } }) })
    end
    local reply = assert(run(incomplete("max_output_tokens")))
    assert.are.equal("length", reply.stop)
    assert.are.equal("max_output_tokens", reply.stop_raw)
    assert.are.equal("cut sh", reply.text)
    reply = assert(run(incomplete("content_filter")))
    assert.are.equal("content_filter", reply.stop)
    reply = assert(run(incomplete("max_tokens"))) -- openai-openapi's own example
    assert.are.same({ "length", "max_tokens" }, { reply.stop, reply.stop_raw })
    reply = assert(run(incomplete(nil)))
    assert.are.same({ "length", "incomplete" }, { reply.stop, reply.stop_raw })
  end)

  it("keeps a refusal apart from the text", function()
    local refusal = { id = "msg_1", type = "message", role = "assistant", status = "completed",
                      content = { { type = "refusal", refusal = "I can't help with that." } } }
    local reply = assert(run(ev({ type = "response.refusal.delta", item_id = "msg_1", delta = "I can't" })
      .. ev({ type = "response.completed", response = response({ output = { refusal } }) })))
    assert.are.same({ "refusal", "I can't help with that.", "" }, { reply.stop, reply.refusal, reply.text })
  end)

  it("fails on an error event mid-stream, after the text before it", function()
    local body = text_delta("par") .. text_delta("tial")
      .. ev({ type = "error", code = "server_error", message = "The server had an error while processing your request.",
              param = cjson.null, sequence_number = 5 })
      .. text_delta("never")
    local reply, err, text = run(body)
    assert.is_nil(reply)
    assert.are.same({ "par", "tial" }, text)
    assert.are.equal("ProviderError", err.code)
    assert.are.equal("openai stream error: The server had an error while processing your request.", err.message)
    assert.are.same({ "server_error", 500, true }, { err.type, err.status, err.retryable })
    -- Cut anywhere, the same: the text before the error, then the error.
    local pieces = {}
    for i = 1, #body, 7 do pieces[#pieces + 1] = body:sub(i, i + 6) end
    local _, err2, text2 = run(pieces)
    assert.are.equal("partial", table.concat(text2))
    assert.are.equal(err.message, err2.message)
    -- The API's example code, and a rate limit.
    _, err = run(ev('{"type":"error","code":"ERR_SOMETHING","message":"Something went wrong","param":null,'
      .. '"sequence_number":1}'))
    assert.are.same({ "ProviderError", "ERR_SOMETHING", false }, { err.code, err.type, err.retryable })
    assert.is_nil(err.status)
    _, err = run(ev({ type = "error", code = "rate_limit_exceeded", message = "Slow down." }))
    assert.are.same({ "RateLimited", 429, true }, { err.code, err.status, err.retryable })
    -- Without a code, the error's type names it.
    _, err = run(ev({ type = "error", message = "odd" }))
    assert.are.same({ "ProviderError", "error", "openai stream error: odd" }, { err.code, err.type, err.message })
    -- a server's message is kept whole, a NUL in it included
    _, err = run(ev({ type = "error", message = "a\0b" }))
    assert.are.equal("openai stream error: a\0b", err.message)
  end)

  it("fails a response.failed with the response's error", function()
    local failed = response({ status = "failed", error = { code = "server_error", message = "The model failed." } })
    local _, err = run(ev({ type = "response.failed", response = failed }))
    assert.are.same({ "ProviderError", "openai response failed: The model failed.", 500, true },
      { err.code, err.message, err.status, err.retryable })
    failed.error = cjson.null
    _, err = run(ev({ type = "response.failed", response = failed }))
    assert.are.same({ "ProviderError", "openai response failed: no error given", false },
      { err.code, err.message, err.retryable })
  end)

  it("fails a stream cut before response.completed, keeping the partial text", function()
    local whole = text_delta("Hello, ") .. text_delta("wor")
      .. ev({ type = "response.completed", response = response({ output = { message("Hello, world") } }) })
    local cut_at = whole:find("event: response.completed", 1, true) + 40
    for _, body in ipairs({ whole:sub(1, cut_at), text_delta("Hello, ") .. text_delta("wor") }) do
      local reply, err, text = run(body)
      assert.is_nil(reply)
      assert.are.equal("MalformedResponse", err.code)
      assert.are.equal("openai stream ended before response.completed", err.message)
      assert.are.equal("Hello, wor", err.partial_text)
      assert.are.same({ "Hello, ", "wor" }, text)
    end
    assert.are.equal("Hello, wor", assert(run(whole)).text)
  end)

  it("says what is wrong with a malformed event, and the error sticks", function()
    local s <close> = core.responses_stream()
    assert.is_nil((s:feed(text_delta("ok"), false)))
    local n, err = s:feed('event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"x\n\n')
    assert.is_nil(n)
    assert.are.equal("MalformedResponse", err.code)
    assert.matches("^openai stream event is not a JSON object %(invalid JSON: ", err.message)
    assert.matches("response.output_text.delta", err.body, 1, true)
    assert.are.equal(err, select(2, s:feed(text_delta("more"))))
    assert.are.equal(err, select(2, s:finish()))
    -- valid JSON that is not an object; a finished event without its response
    _, err = run('event: response.completed\ndata: "response.completed"\n\n')
    assert.are.equal("openai stream event is not a JSON object", err.message)
    _, err = run(ev({ type = "response.completed", response = "gone" }))
    assert.are.equal("openai response.completed has no response", err.message)
    -- (an earlier event's response, one that names no events, does not stand in for it)
    _, err = run(ev({ type = "response.created", response = response({ status = "in_progress" }) }, true)
      .. ev({ type = "response.completed", sequence_number = 3 }))
    assert.are.equal("openai response.completed has no response", err.message)
    -- an item tide could not send back
    _, err = run(ev({ type = "response.completed", response = response({ output = {
      message("x"), { type = "function_call", name = "lookup", arguments = "{}" } } }) }))
    assert.are.equal("openai output[2] (function_call) has no call_id or name", err.message)
    _, err = run(ev({ type = "response.completed", response = response({ output = {
      { type = "reasoning", id = "", summary = {} } } }) }))
    assert.are.equal("openai output[1] (reasoning) has no id", err.message)
    -- events nothing is read from are skipped by name, their data unread
    assert(run(ev('{"type":"response.created","response":{"x":') .. ev({ type = "response.completed", response = response() })))
  end)

  it("reads input events for a tool-input listener as input only, and never fails on them", function()
    local added = { type = "response.output_item.added", output_index = 1, sequence_number = 1,
      item = { type = "function_call", id = "fc_1", call_id = "call_x", name = "lookup", arguments = "" } }
    local delta = { type = "response.function_call_arguments.delta", output_index = 1, item_id = "fc_1",
      delta = '{"q":', sequence_number = 2 }
    local body = ev(added) .. ev(delta)
      -- named for input, but claiming to be text: it is not text
      .. 'event: response.custom_tool_call_input.delta\ndata: {"type":"response.output_text.delta","delta":"cut"}\n\n'
      -- named for input, and broken: dropped as it would be unread
      .. 'event: response.function_call_arguments.delta\ndata: {"type":"response.function\n\n'
      .. ev({ type = "response.completed", response = response() })
    local s <close> = core.responses_stream()
    local out, tout = {}, {}
    assert.are.equal(0, s:feed(body, out, nil, tout))
    assert.are.same({}, out)
    assert.are.same({ 1, "call_x", "lookup", "", 1, false, false, '{"q":' }, tout)
    assert.are.equal("", assert(s:finish()).text)
    -- without a listener the same events are skipped unread
    local reply, err, text = run(body)
    assert.is_nil(err)
    assert.are.same({ "", {} }, { reply.text, text })
  end)

  it("reads a server that names no events, and takes held items when the output is empty", function()
    local call = { type = "function_call", id = "fc_1", call_id = "call_x", name = "lookup", arguments = "{}" }
    local body = ev({ type = "response.output_text.delta", delta = "Hi" }, true)
      .. ev({ type = "response.output_item.done", output_index = 0, item = call }, true)
      .. ev({ type = "response.output_item.done", output_index = 1, item = REASONING })
      .. ev({ type = "response.completed", response = response({ output = {} }) }, true)
      .. ev({ type = "response.output_text.delta", delta = "after the end" }, true)
    local reply = assert(run(body))
    assert.are.equal("Hi", reply.text)
    assert.are.same({ { id = "call_x", name = "lookup", arguments = "{}" } }, reply.tool_calls)
    assert.are.equal("rs_68a1", reply.reasoning[1].id)
  end)

  it("holds to its caps", function()
    local s <close> = core.responses_stream(64)
    local _, err = s:feed(text_delta(string.rep("y", 200)))
    assert.are.same({ "MalformedResponse", "StreamTooLarge" }, { err.code, err.cause })
    -- the data of output_item.done events kept for the end count too
    local item = ev({ type = "response.output_item.done", item = message(string.rep("z", 300)) })
    local h <close> = core.responses_stream(#item + 100)
    assert.is_nil((h:feed(item, false)))
    _, err = h:feed(item, false)
    assert.are.equal("StreamTooLarge", err.code)
  end)

  it("closes idempotently, and a closed stream's parser serves the next one clean", function()
    local a = core.responses_stream()
    assert.matches("tide.responses_stream", tostring(a))
    a:feed(ev({ type = "response.output_item.done", item = REASONING }) .. text_delta("left over"), false)
    a:close()
    a:close()
    assert.matches("closed", tostring(a))
    assert.has_error(function() a:feed("data: x\n\n") end, "attempt to use a closed responses stream")
    local reply = assert(run(ev({ type = "response.completed", response = response() })))
    assert.are.same({ "", {}, nil, "stop" }, { reply.text, reply.tool_calls, reply.reasoning, reply.stop })
    assert.has_error(function() core.responses_stream(0) end)
    assert.has_error(function() core.responses_stream():feed("x", 1) end)
  end)
end)

describe("core.responses_parse", function()
  local function parse(obj) return core.responses_parse(type(obj) == "string" and obj or cjson.encode(obj)) end

  it("reads a whole reply: text, calls, reasoning, usage, stop", function()
    local call = { id = "fc_1", type = "function_call", call_id = "call_A", name = "lookup", arguments = '{"q":"a"}' }
    local reply = assert(parse(response({ output = { REASONING, message("Hello "), message("there."), call },
      usage = { input_tokens = 300, output_tokens = 20, input_tokens_details = { cached_tokens = 256 },
                output_tokens_details = { reasoning_tokens = 12 } } })))
    assert.are.equal("Hello there.", reply.text)
    assert.are.same({ { id = "call_A", name = "lookup", arguments = '{"q":"a"}' } }, reply.tool_calls)
    assert.are.equal(ENCRYPTED, reply.reasoning[1].data)
    assert.are.same({ input = 300, output = 20, cached = 256, cache_write = 0, reasoning = 12 }, reply.usage)
    assert.are.same({ "tool_calls", "completed" }, { reply.stop, reply.stop_raw })
    reply = assert(parse(response({ status = "incomplete", incomplete_details = { reason = "max_output_tokens" },
      output = { message("cut") } })))
    assert.are.same({ "cut", "length", "max_output_tokens" }, { reply.text, reply.stop, reply.stop_raw })
  end)

  it("says every error itself, leaving the body to the exchange", function()
    local cases = {
      { "{not json", "^openai response is not valid JSON %(" },
      { "[1,2]", "^openai response has no output array$" },
      { '"text"', "^openai response is not a JSON object$" },
      { response({ status = "failed", error = { code = "rate_limit_exceeded", message = "Slow down." } }),
        "^openai response failed: Slow down%.$", "RateLimited" },
      { response({ status = "failed" }), "^openai response failed: no error given$", "ProviderError" },
      { response({ output = "none" }), "^openai response has no output array$" },
      { response({ output = { message("a"), 5 } }), "^openai output%[2%] is not an object$" },
    }
    for _, c in ipairs(cases) do
      local body = type(c[1]) == "string" and c[1] or cjson.encode(c[1])
      local reply, err = core.responses_parse(body)
      assert.is_nil(reply)
      assert.matches(c[2], err.message)
      assert.are.equal(c[3] or "MalformedResponse", err.code)
      assert.is_nil(err.body) -- the exchange adds its excerpt
    end
  end)
end)
