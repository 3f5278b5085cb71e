local core = require "tide.core"
local cjson = require "cjson"

local function ev(obj)
  return "data: " .. (type(obj) == "string" and obj or cjson.encode(obj)) .. "\n\n"
end

local function chunk(delta, finish)
  return ev({ id = "c1", object = "chat.completion.chunk", model = "m",
              choices = { { index = 0, delta = delta, logprobs = cjson.null,
                            finish_reason = finish or cjson.null } } })
end

-- Feeds each piece in turn; returns the result (or nil, err) and the text
-- deltas joined.
local function run(pieces, max)
  local s = core.openai_stream(max)
  local text = {}
  for _, piece in ipairs(pieces) do
    local delta, err = s:feed(piece)
    if err then return nil, err, table.concat(text) end
    if delta then text[#text + 1] = delta end
  end
  local res, err = s:finish()
  s:close()
  return res, err, table.concat(text)
end

local function one(s, max) return run({ s }, max) end

-- A reply with everything in it: text with escapes and non-ASCII, two tool
-- calls whose deltas interleave, unknown fields of every type, usage, CRLF.
local FULL = table.concat({
  chunk({ role = "assistant", content = "" }),
  'data: {"choices":[{"index":0,"delta":{"content":"caf\\u00e9 \\ud83d\\ude00 \\"q\\"\\\\ \\/\\n\\t"},'
    .. '"x":[1,-2.5e3,true,false,null,{"a":[{}]},"s\\"]"]}],"extra":{"nested":[[[]]]}}\r\n\r\n',
  chunk({ tool_calls = { { index = 0, id = "call_a", type = "function",
                           ["function"] = { name = "lookup", arguments = "" } } } }),
  chunk({ tool_calls = { { index = 1, id = "call_b", ["function"] = { name = "clock", arguments = '{"tz"' } } } }),
  chunk({ tool_calls = { { index = 0, ["function"] = { arguments = '{"q":' } } } }),
  chunk({ content = "ü€" }),
  chunk({ tool_calls = { { index = 1, ["function"] = { arguments = ':"UTC"}' } } } }),
  chunk({ tool_calls = { { index = 0, ["function"] = { arguments = '"x"}' } } } }),
  ": a comment\n",
  chunk({}, "tool_calls"),
  ev({ id = "c1", choices = {}, usage = { prompt_tokens = 120, completion_tokens = 17, total_tokens = 137,
                                         prompt_tokens_details = { cached_tokens = 64 } } }),
  "data: [DONE]\n\n",
})

local FULL_TEXT = 'café 😀 "q"\\ /\n\tü€'

local function check_full(res, err, text)
  assert.is_nil(err)
  assert.are.equal(FULL_TEXT, res.text)
  assert.are.equal(FULL_TEXT, text)
  assert.are.same({
    { id = "call_a", name = "lookup", arguments = '{"q":"x"}' },
    { id = "call_b", name = "clock", arguments = '{"tz":"UTC"}' },
  }, res.tool_calls)
  assert.are.same({ input = 120, output = 17, cached = 64, cache_write = 0, reasoning = 0 }, res.usage)
  for _, k in ipairs({ "input", "output", "cached", "cache_write", "reasoning" }) do
    assert.are.equal("integer", math.type(res.usage[k]))
  end
  assert.are.equal("tool_calls", res.stop_raw)
  assert.are.equal("tool_calls", res.stop)
end

describe("core.openai_stream", function()
  it("parses a full reply", function()
    check_full(one(FULL))
  end)

  it("gives the same result wherever the stream is cut", function()
    for i = 0, #FULL do
      check_full(run({ FULL:sub(1, i), FULL:sub(i + 1) }))
    end
    local bytes = {}
    for i = 1, #FULL do bytes[i] = FULL:sub(i, i) end
    check_full(run(bytes))
  end)

  it("hands deltas over one per event with an out table", function()
    local s = core.openai_stream()
    local out = {}
    local n = s:feed(chunk({ content = "a" }) .. chunk({ content = "" }) .. chunk({ content = "bc" })
      .. chunk({ role = "assistant" }), out)
    assert.are.equal(2, n)
    assert.are.same({ "a", "bc" }, { out[1], out[2] })
    assert.are.equal(0, s:feed(": nothing\n", out))
    assert.are.equal(1, s:feed(chunk({ content = "d" }) .. "data: {", out))
    local m, err, before = s:feed("}\n\n" .. chunk({ content = "e" }) .. "data: nope\n\n", out)
    assert.is_nil(m)
    assert.are.equal("MalformedResponse", err.code)
    assert.are.equal(1, before)
    assert.are.equal("e", out[1])
    s:close()
  end)

  it("hands no text back with out = false, and keeps all of it for finish", function()
    local s = core.openai_stream()
    assert.is_nil(s:feed(chunk({ content = "a" }) .. chunk({ content = "b" }, "stop"), false))
    assert.is_nil(s:feed("data: [DONE]\n\n", false))
    assert.are.equal("ab", s:finish().text)
    s:close()
    local bad = core.openai_stream()
    local r, err, extra = bad:feed(chunk({ content = "a" }) .. "data: nope\n\n", false)
    assert.is_nil(r)
    assert.are.equal("MalformedResponse", err.code)
    assert.is_nil(extra) -- not even the text before the failure
    bad:close()
  end)

  it("decodes escapes, including surrogate pairs, and rejects broken ones", function()
    local res = assert(one('data: {"choices":[{"delta":{"content":"\\u0041\\u00DF\\u4e2d\\uD834\\uDD1E\\b\\f\\r"}}]}\n\n'
      .. "data: [DONE]\n\n"))
    assert.are.equal("Aß中𝄞\b\f\r", res.text)
    for _, bad in ipairs({ '"\\ud83d"', '"\\ude00"', '"\\ud83d\\u0041"', '"\\u12"', '"\\x"', '"abc', '"\\u12G4"' }) do
      local r, err = one('data: {"choices":[{"delta":{"content":' .. bad .. '}}]}\n\ndata: [DONE]\n\n')
      assert.is_nil(r, bad)
      assert.are.equal("MalformedResponse", err.code)
      assert.matches("not valid JSON", err.message)
    end
    -- escapes are checked in values that are skipped too
    for _, bad in ipairs({ '"\\x"', '"ab\\u12"', '"abcdefgh\\q"' }) do
      local r, err = one('data: {"id":' .. bad .. ',"choices":[{"delta":{"content":"k"}}]}\n\ndata: [DONE]\n\n')
      assert.is_nil(r, bad)
      assert.are.equal("MalformedResponse", err.code)
    end
    -- escaped keys are keys all the same
    res = assert(one('data: {"\\u0063hoices":[{"delta":{"cont\\u0065nt":"k"}}]}\n\ndata: [DONE]\n\n'))
    assert.are.equal("k", res.text)
  end)

  it("assembles tool calls by index, a delta without one continuing the last call", function()
    local res = assert(one(table.concat({
      chunk({ tool_calls = { { index = 1, ["function"] = { arguments = "{}" } } } }),
      chunk({ tool_calls = { { index = 2, id = "c2", ["function"] = { name = "b", arguments = "[" } } } }),
      chunk({ tool_calls = { { index = 0, ["function"] = { name = "a" } } } }),
      chunk({ tool_calls = { { index = 2, id = "other", ["function"] = { name = "z", arguments = "1]" } } } }),
      chunk({ tool_calls = { { index = 0, ["function"] = { arguments = { k = 1 } } } } }),
      chunk({ tool_calls = { { index = 0, id = 5, ["function"] = { name = false } } } }),
      chunk({}, "tool_calls"), "data: [DONE]\n\n",
    })))
    -- finished as the session takes them: ids made where missing, a
    -- missing name ""
    assert.are.same({
      { id = "call_1", name = "a", arguments = '{"k":1}' },
      { id = "call_2", name = "", arguments = "{}" },
      { id = "c2", name = "b", arguments = "[1]" },
    }, res.tool_calls)
    assert.are.same({ input = 0, output = 0, cached = 0, cache_write = 0, reasoning = 0 }, res.usage)
    assert.are.equal("", res.text)
  end)

  it("rejects tool-call deltas that are not objects, and negative indices", function()
    local _, err = one(chunk({ tool_calls = { 3 } }))
    assert.are.equal("MalformedResponse", err.code)
    assert.matches("not an object", err.message)
    _, err = one(chunk({ tool_calls = { { index = -1 } } }))
    assert.matches("negative", err.message)
  end)

  it("reads usage from any event and keeps the last", function()
    local res = assert(one(table.concat({
      ev({ choices = {}, usage = { prompt_tokens = 1, completion_tokens = 2 } }),
      ev({ usage = { prompt_tokens = 7.0, completion_tokens = -3, prompt_tokens_details = { cached_tokens = 2.9 } } }),
      ev({ usage = cjson.null }),
      "data: [DONE]\n\n",
    })))
    assert.are.same({ input = 7, output = 0, cached = 2, cache_write = 0, reasoning = 0 }, res.usage)
  end)

  it("reads counts and indices of every number shape as provider._count and math.tointeger do", function()
    -- Plain digits take a short path in C, anything else strtod; the two
    -- must agree wherever the digits end.
    local cases = {
      { "0", 0 }, { "7", 7 }, { "999999999999999", 999999999999999 },
      { "1000000000000000", 1000000000000000 }, { "12345678901234567", 0 }, -- past 2^53: not a count
      { "12.0", 12 }, { "12.9", 12 }, { "1e3", 1000 }, { "1E2", 100 }, { "15e-1", 1 },
      { "-4", 0 }, { "0.5", 0 },
    }
    for _, c in ipairs(cases) do
      local res = assert(one(table.concat({
        ev('{"choices":[],"usage":{"prompt_tokens":' .. c[1] .. ',"completion_tokens":' .. c[1]
          .. ',"prompt_tokens_details":{"cached_tokens":' .. c[1] .. '}}}'),
        "data: [DONE]\n\n",
      })))
      assert.are.same({ input = c[2], output = c[2], cached = c[2], cache_write = 0, reasoning = 0 }, res.usage, c[1])
      assert.are.equal("integer", math.type(res.usage.input))
    end
    -- an index: integral numbers in any spelling name the same slot
    for _, spelling in ipairs({ "1", "1.0", "1e0", "10e-1" }) do
      local res = assert(one(table.concat({
        'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":"{}"}}]}}]}\n\n',
        'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":' .. spelling
          .. ',"id":"b","function":{"name":"g","arguments":"{}"}}]}}]}\n\n',
        "data: [DONE]\n\n",
      })))
      assert.are.equal(2, #res.tool_calls, spelling)
      assert.are.equal("b", res.tool_calls[2].id, spelling)
    end
    -- digits that JSON does not allow stay an error, short path or not
    local _, err = one('data: {"choices":[],"usage":{"prompt_tokens":012}}\n\n')
    assert.are.equal("MalformedResponse", err.code)
  end)

  it("turns an error object into ProviderError or RateLimited", function()
    local _, err, text = run({ chunk({ content = "Hel" }),
      ev({ error = { message = "upstream exploded", type = "server_error", code = 502 } }) })
    assert.are.equal("Hel", text)
    assert.are.equal("ProviderError", err.code)
    assert.are.equal("openai returned an error: upstream exploded", err.message)
    assert.are.equal(502, err.status)
    assert.are.equal("integer", math.type(err.status))
    assert.matches("upstream exploded", err.body)
    _, err = one(ev({ error = { message = "slow down", code = "429" } }))
    assert.are.equal("RateLimited", err.code)
    assert.are.equal(429, err.status)
    _, err = one(ev({ error = "plain" }))
    assert.are.equal("ProviderError", err.code)
    assert.are.equal("openai returned an error: plain", err.message)
    assert.is_nil(err.status)
    -- a server's message is kept whole, a NUL in it included
    _, err = one('data: {"error":{"message":"a\\u0000b"}}\n\n')
    assert.are.equal("openai returned an error: a\0b", err.message)
    _, err = one(ev({ error = { message = ("é"):rep(400) } }))
    assert.are.equal(#"openai returned an error: " + 512, #err.message)
    -- a null error is no error
    assert(one(ev({ error = cjson.null, choices = {} }) .. "data: [DONE]\n\n"))
  end)

  it("reports a stream that ends before its finish reason as truncated, with the partial text", function()
    local _, err = one(chunk({ content = "partial" }))
    assert.are.equal("MalformedResponse", err.code)
    assert.are.equal("openai stream ended before its finish_reason and [DONE]", err.message)
    assert.are.equal("partial", err.partial_text)
    -- a finish reason and a clean end make a whole reply (older llama.cpp,
    -- TGI send no [DONE])
    local whole = assert(one(chunk({ content = "x" }) .. chunk({}, "stop")))
    assert.are.equal("x", whole.text)
    assert.are.equal("stop", whole.stop)
    -- after [DONE] nothing counts, not even a broken event or a cut one
    local res = assert(one(chunk({ content = "ok" }, "stop") .. "data: [DONE]\n\ndata: {oops\n\ndata: {"))
    assert.are.equal("ok", res.text)
    assert.are.equal("stop", res.stop_raw)
  end)

  it("reports malformed JSON as MalformedResponse, then keeps failing", function()
    for _, bad in ipairs({ "{", "{}}", '{"a" 1}', '{"a":}', "[1,]", '{"a":tru}', "01", "1.", "-",
                           '{"a":1,}', "", "nul", '{"a":"\1\0"}', '{"choices":[{"delta":{"content":"x"}}]} x' }) do
      local s = core.openai_stream()
      local d, err = s:feed("data: " .. bad .. "\n\n")
      assert.is_nil(d, bad)
      assert.are.equal("MalformedResponse", err.code, bad)
      assert.matches("not valid JSON", err.message)
      assert.are.equal(bad, err.body)
      local _, again = s:feed(chunk({ content = "more" }))
      assert.are.equal(err, again)
      local _, fin = s:finish()
      assert.are.equal(err, fin)
    end
    for _, notobj in ipairs({ '"s"', "1", "null", "true" }) do
      local _, err = one("data: " .. notobj .. "\n\n")
      assert.matches("not a JSON object", err.message)
    end
    -- an array is a table without fields: ignored
    assert(one("data: [1,{}]\n\ndata: [DONE]\n\n"))
  end)

  it("limits nesting as tide.json does", function()
    local function nest(n) return ("["):rep(n) .. ("]"):rep(n) end
    assert(one('data: {"x":' .. nest(199) .. '}\n\ndata: [DONE]\n\n'))
    local _, err = one('data: {"x":' .. nest(200) .. '}\n\n')
    assert.matches("too many nested", err.message)
    _, err = one("data: " .. ('{"a":'):rep(201) .. "1" .. ("}"):rep(201) .. "\n\n")
    assert.matches("too many nested", err.message)
    -- the same depths as the Lua decoder
    local json = require "tide.json"
    assert(json.decode('{"x":' .. nest(199) .. '}'))
    assert.is_nil(json.decode('{"x":' .. nest(200) .. '}'))
  end)

  it("caps one event's data and all tool-call bytes", function()
    local _, err = one(chunk({ content = ("x"):rep(300) }), 200)
    assert.are.equal("MalformedResponse", err.code)
    assert.are.equal("StreamTooLarge", err.cause)
    assert.matches("SSE line exceeds the limit of 200 bytes", err.message)
    local pieces = {}
    for i = 1, 10 do
      pieces[i] = chunk({ tool_calls = { { index = 0, ["function"] = { arguments = ("a"):rep(100) } } } })
    end
    _, err = run(pieces, 500)
    assert.are.equal("StreamTooLarge", err.code)
    assert.matches("tool%-call deltas exceed the limit of 500 bytes", err.message)
  end)

  it("gives the same result as decoding each event with lua-cjson", function()
    -- A generated stream of random text and tool-call deltas.
    math.randomseed(7)
    local pieces, want_text, want_args = {}, {}, { [0] = {}, {}, {} }
    -- Long runs of plain bytes put the special ones at every offset of the
    -- eight-byte words the scanner reads.
    local alphabet = { "a", "é", "\n", '"', "\\", "/", "\t", "€", "😀", "\1", "}", "]",
                       "plain", "abcdefg", "\127", "\255" }
    for _ = 1, 400 do
      local s = {}
      for k = 1, math.random(0, 12) do s[k] = alphabet[math.random(#alphabet)] end
      s = table.concat(s)
      if math.random() < 0.5 then
        pieces[#pieces + 1] = chunk({ content = s })
        want_text[#want_text + 1] = s
      else
        local idx = math.random(0, 2)
        pieces[#pieces + 1] = chunk({ tool_calls = { { index = idx, ["function"] = { arguments = s } } } })
        table.insert(want_args[idx], s)
      end
    end
    pieces[#pieces + 1] = "data: [DONE]\n\n"
    local res = assert(run(pieces))
    assert.are.equal(table.concat(want_text), res.text)
    assert.are.equal(3, #res.tool_calls)
    for i, c in ipairs(res.tool_calls) do
      local want = table.concat(want_args[i - 1])
      if not want:find("%S") then want = "{}" end
      assert.are.equal(want, c.arguments)
    end
  end)

  it("starts every stream afresh, on the parser a closed stream left behind", function()
    local FULL_REPLY = table.concat({ chunk({ content = "fresh" }),
      chunk({ tool_calls = { { index = 0, id = "c_new", ["function"] = { name = "n", arguments = "{}" } } } }),
      chunk({}, "stop"), "data: [DONE]\n\n" })
    local function fresh()
      local s <close> = core.openai_stream()
      assert(s:feed(FULL_REPLY))
      return assert(s:finish())
    end
    local want = fresh()
    -- streams left mid-event, mid-call, failed, or with a big event, then closed
    local a = core.openai_stream()
    a:feed(chunk({ content = "old text" }) .. chunk({ tool_calls = { { index = 3, id = "c_old",
      ["function"] = { name = "o", arguments = "{\"x\":" } } } }) .. 'data: {"choices":[{"delta":{"cont')
    a:close()
    assert.are.same(want, fresh())
    local b = core.openai_stream()
    assert.is_nil(select(1, b:feed("data: {not json}\n\n")))
    b:close()
    assert.are.same(want, fresh())
    local c = core.openai_stream()
    c:feed(chunk({ content = string.rep("z", 50000) }))
    c:close()
    assert.are.same(want, fresh())
    -- a closed stream stays closed, whoever has its parser now
    assert.has_error(function() a:feed("data: x\n\n") end, "attempt to use a closed openai stream")
    assert.matches("closed", tostring(a))
    -- a small cap of the new stream holds, whatever the old one's was
    local s <close> = core.openai_stream(64)
    local _, err = s:feed(chunk({ content = string.rep("y", 200) }))
    assert.are.equal("StreamTooLarge", err and err.cause)
  end)

  it("closes idempotently and refuses use after close", function()
    local s = core.openai_stream()
    assert.matches("tide.openai_stream", tostring(s))
    s:close()
    s:close()
    assert.matches("closed", tostring(s))
    assert.has_error(function() s:feed("data: x\n\n") end, "attempt to use a closed openai stream")
    do local t <close> = core.openai_stream(); t:feed(chunk({ content = "x" })) end
    assert.has_error(function() core.openai_stream(0) end)
    assert.has_error(function() core.openai_stream(1.5) end)
    assert.has_error(function() core.openai_stream():feed("x", 1) end)
  end)
end)

describe("core.openai_parse", function()
  local provider = require "tide.provider"
  local json = require "tide.json"
  local p = provider.openai { base_url = "http://127.0.0.1:9", api_key = "k", model = "m" }

  -- The reply as the provider finishes it, from the C scan or from the
  -- decoded table (what every non-streamed reply went through before).
  local function finished(out)
    out.tool_calls = provider._finish_calls(out.tool_calls or {})
    out.usage = out.usage or { input = 0, output = 0, cached = 0 }
    return out
  end
  local function by_c(body) return core.openai_parse(body) end
  local function by_lua(body) return finished(assert(p:_parse(assert(json.decode_fast(body))))) end

  local function reply(message, extra)
    local r = { id = "x", object = "chat.completion", model = "m",
                choices = { { index = 0, message = message, finish_reason = "stop", logprobs = cjson.null } } }
    for k, v in pairs(extra or {}) do r[k] = v end
    return cjson.encode(r)
  end

  it("reads a plain reply as the full decoder does", function()
    for _, body in ipairs {
      reply { role = "assistant", content = "hello \"there\" \\ é \u{1F600}" },
      reply({ role = "assistant", content = cjson.null }, { usage = { prompt_tokens = 12, completion_tokens = 3,
        prompt_tokens_details = { cached_tokens = 8 } } }),
      reply { role = "assistant", content = cjson.null, tool_calls = {
        { id = "call_a", type = "function", ["function"] = { name = "lookup", arguments = '{"q":"x"}' } },
        { type = "function", ["function"] = { name = "other", arguments = "" } },
        { id = 7, index = 5, type = "function", ["function"] = { name = "third", arguments = cjson.null } },
      } },
      -- ids made for calls without one stay unique within the reply
      reply { role = "assistant", content = cjson.null, tool_calls = {
        { type = "function", ["function"] = { name = "a", arguments = " \n\t" } },
        { id = "call_1", type = "function", ["function"] = { name = "b", arguments = "{}" } },
        { id = "", type = "function", ["function"] = { name = "c", arguments = "{}" } },
        { id = "call_1_1", type = "function", ["function"] = { arguments = "{}" } },
      } },
      -- many calls, half of them without an id, the others with ids a made
      -- one could clash with: every id unique, as the Lua finisher makes them
      reply { role = "assistant", content = cjson.null, tool_calls = (function()
        local calls = {}
        for i = 1, 3000 do
          calls[i] = { type = "function", ["function"] = { name = "n", arguments = "{}" } }
          if i % 2 == 0 then calls[i].id = "call_" .. (i - 1) end
        end
        return calls
      end)() },
      '{"choices":[{"message":{"content":"\\u0041\\n"},"finish_reason":"length"},{"message":{"content":"no"}}]}',
      '{"choices":[{"message":{"content":"k"}}],"usage":[]}',
      '{"choices":[{"message":{"content":"k","tool_calls":{"a":1}}}]}',
    } do
      assert.are.same(by_lua(body), by_c(body), body)
    end
  end)

  it("keeps nothing of one reply in the next (its buffers are reused)", function()
    local function call(id, name, args)
      return { id = id, type = "function", ["function"] = { name = name, arguments = args } }
    end
    local long = string.rep("y", 20000) -- past what the parser keeps between replies
    local seq = {
      reply { role = "assistant", content = cjson.null, tool_calls = {
        call("a1", "first_tool_name", '{"q":"a long first argument"}'), call("a2", "second", '{"n":2}') } },
      reply { role = "assistant", content = cjson.null, tool_calls = { call("b", "f", "{}") } },
      reply { role = "assistant", content = "text only" },
      reply { role = "assistant", content = cjson.null, tool_calls = { call(nil, "g", ""), call("c2", "h", "[1]"),
        call("c3", "i", '"' .. long .. '"') } },
      "not json", -- a failed scan in between
      reply { role = "assistant", content = "x", tool_calls = { call("d", "j", '{"k":"v"}') } },
    }
    for _, body in ipairs(seq) do
      if body == "not json" then
        assert.is_nil(core.openai_parse(body))
      else
        assert.are.same(by_lua(body), by_c(body), body)
      end
    end
  end)

  it("leaves anything but a plain reply to the full decoder", function()
    for _, body in ipairs {
      "not json", "[1,2]", '"s"', "", '{"choices":[]}', '{"choices":[{"delta":{}}]}',
      '{"error":{"message":"boom","code":429}}', '{"error":"down","choices":[{"message":{}}]}',
      '{"choices":[{"message":{"tool_calls":[{"id":"a"}]}}]}',
      '{"choices":[{"message":{"tool_calls":[{"function":{"name":"f","arguments":{"q":1}}}]}}]}',
      '{"choices":[{"message":{"tool_calls":[5]}}]}',
      '{"choices":[{"message":{"content":"x"}}]} trailing',
    } do
      assert.is_nil(core.openai_parse(body), body)
    end
    -- a cap on tool-call bytes is the decoder's to report too
    assert.is_nil(core.openai_parse('{"choices":[{"message":{"tool_calls":[{"function":{"name":"f","arguments":"'
      .. string.rep("a", 100) .. '"}}]}}]}', 10))
    assert.has_error(function() core.openai_parse({}) end)
    assert.has_error(function() core.openai_parse("{}", 0) end,
      "bad argument #2 to 'openai_parse' (max_bytes must be positive)")
  end)
end)
