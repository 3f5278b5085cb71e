-- The loopback HTTP server (core/server.c) and the mock model provider built
-- on it (tide.testing), exercised through tide.http.request.
local helpers = require "helpers"
local tide = require "tide"
local core = require "tide.core"
local testing = require "tide.testing"
local cjson = require "cjson"

local http = tide.http

--- Parses an SSE body into { {event = name|nil, data = text}, ... }.
local function sse(body)
  local events = {}
  for block in (body .. "\n\n"):gmatch("(.-)\n\n") do
    if block ~= "" then
      local ev, data = nil, {}
      for line in (block .. "\n"):gmatch("(.-)\n") do
        local k, v = line:match("^(%w+): ?(.*)$")
        if k == "event" then ev = v elseif k == "data" then data[#data + 1] = v end
      end
      events[#events + 1] = { event = ev, data = table.concat(data, "\n") }
    end
  end
  return events
end

local function post(srv, path, body, extra)
  local opts = { method = "POST", url = srv.url .. path,
                 headers = { ["content-type"] = "application/json" },
                 body = type(body) == "table" and cjson.encode(body) or body,
                 timeout_ms = 5000 }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return http.request(opts)
end

local function chat(srv, req, extra)
  req.model = req.model or "gpt-mock"
  req.messages = req.messages or { { role = "user", content = "hi" } }
  return post(srv, "/v1/chat/completions", req, extra)
end

local function messages(srv, req, extra)
  req.model = req.model or "claude-mock"
  req.max_tokens = req.max_tokens or 100
  req.messages = req.messages or { { role = "user", content = "hi" } }
  return post(srv, "/v1/messages", req, extra)
end

--- Reassembles an OpenAI stream: text, tool calls by index, finish, usage.
local function assemble_openai(body)
  local events = sse(body)
  local out = { text = "", calls = {}, events = events }
  for i, ev in ipairs(events) do
    if ev.data == "[DONE]" then
      out.done = i
    else
      local chunk = cjson.decode(ev.data)
      assert.are.equal("chat.completion.chunk", chunk.object)
      if chunk.usage ~= nil and chunk.usage ~= cjson.null then out.usage = chunk.usage end
      for _, choice in ipairs(chunk.choices) do
        local d = choice.delta
        if d.role then out.role = d.role end
        if type(d.content) == "string" then out.text = out.text .. d.content end
        for _, tc in ipairs(d.tool_calls or {}) do
          local c = out.calls[tc.index + 1]
          if not c then
            c = { id = tc.id, name = tc["function"].name, arguments = "" }
            out.calls[tc.index + 1] = c
          end
          c.arguments = c.arguments .. (tc["function"].arguments or "")
        end
        if choice.finish_reason ~= cjson.null then out.finish = choice.finish_reason end
      end
    end
  end
  return out
end

--- Reassembles an Anthropic stream into content blocks.
local function assemble_anthropic(body)
  local events = sse(body)
  local out = { blocks = {}, names = {} }
  for _, ev in ipairs(events) do
    local d = cjson.decode(ev.data)
    assert.are.equal(ev.event, d.type)
    out.names[#out.names + 1] = ev.event
    if d.type == "message_start" then
      out.message = d.message
    elseif d.type == "content_block_start" then
      local b = d.content_block
      out.blocks[d.index + 1] = { type = b.type, id = b.id, name = b.name, text = "", json = "" }
    elseif d.type == "content_block_delta" then
      local b = out.blocks[d.index + 1]
      if d.delta.type == "text_delta" then b.text = b.text .. d.delta.text end
      if d.delta.type == "input_json_delta" then b.json = b.json .. d.delta.partial_json end
    elseif d.type == "message_delta" then
      out.stop_reason = d.delta.stop_reason
      out.output_tokens = d.usage.output_tokens
    end
  end
  return out
end

--- Sends raw bytes over a fresh TCP connection (bash's /dev/tcp, in the
--- background so that this task's loop keeps serving) and returns what came
--- back once the server closed the connection.
local function raw_exchange(port, payload)
  local dir = helpers.tmpdir()
  helpers.write(dir .. "/in", payload)
  os.execute(("bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d; cat %s/in >&3; timeout 5 cat <&3 > %s/out; "
    .. "touch %s/done' >/dev/null 2>&1 &"):format(port, dir, dir, dir))
  for _ = 1, 600 do
    if helpers.read(dir .. "/done") then break end
    tide.sleep(10)
  end
  local out = helpers.read(dir .. "/out")
  helpers.rmdir(dir)
  return out
end

local function lua_script(src)
  local dir = helpers.tmpdir()
  local build = os.getenv("TIDE_BUILD_DIR") or "build"
  helpers.write(dir .. "/s.lua", ("package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path\n"
    .. "package.cpath = %q .. '/?.so;' .. package.cpath\n"):format(build) .. src)
  local p = io.popen(("timeout 20 lua5.4 %s/s.lua 2>&1; echo \"exit=$?\""):format(dir))
  local out = p:read("a")
  p:close()
  helpers.rmdir(dir)
  return out
end

describe("mock server", function()
  local baseline
  before_each(function() baseline = require("tide.testing.server").stats() end)
  after_each(function()
    -- Every case closes its servers; after the close callbacks nothing is left.
    helpers.run(function() tide.sleep(5) end)
    assert.are.same(baseline, require("tide.testing.server").stats())
  end)

  describe("OpenAI Chat Completions", function()
    it("renders a non-streaming text reply", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ replies = { "Hello there!" } }
        local res = assert(chat(srv, { model = "gpt-x" }))
        assert.are.equal(200, res.status)
        assert.matches("application/json", res.headers["content-type"])
        local body = cjson.decode(res.body)
        assert.are.equal("chat.completion", body.object)
        assert.are.equal("gpt-x", body.model)
        assert.matches("^chatcmpl%-", body.id)
        local choice = body.choices[1]
        assert.are.equal("assistant", choice.message.role)
        assert.are.equal("Hello there!", choice.message.content)
        assert.are.equal("stop", choice.finish_reason)
        assert.is_nil(choice.message.tool_calls)
        assert.is_true(body.usage.prompt_tokens > 0)
        assert.is_true(body.usage.completion_tokens > 0)
        assert.are.equal(body.usage.prompt_tokens + body.usage.completion_tokens,
          body.usage.total_tokens)
        assert.are.equal(0, body.usage.prompt_tokens_details.cached_tokens)
      end)
    end)

    it("renders non-streaming tool calls with JSON-encoded arguments", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ replies = { {
          tool_calls = { { name = "lookup", arguments = { q = "x" } },
                         { name = "fetch", arguments = { url = "u", n = 2 }, id = "call_custom" } },
          usage = { input = 11, output = 7, cached = 5 },
        } } }
        local body = cjson.decode(assert(chat(srv, {})).body)
        local msg = body.choices[1].message
        assert.are.equal("tool_calls", body.choices[1].finish_reason)
        assert.are.equal(cjson.null, msg.content)
        assert.are.equal(2, #msg.tool_calls)
        local a, b = msg.tool_calls[1], msg.tool_calls[2]
        assert.matches("^call_%d+$", a.id)
        assert.are.equal("function", a.type)
        assert.are.equal("lookup", a["function"].name)
        assert.are.same({ q = "x" }, cjson.decode(a["function"].arguments))
        assert.are.equal("call_custom", b.id)
        assert.are.same({ url = "u", n = 2 }, cjson.decode(b["function"].arguments))
        assert.are.same({ prompt_tokens = 11, completion_tokens = 7, total_tokens = 18,
                          prompt_tokens_details = { cached_tokens = 5, audio_tokens = 0 },
                          completion_tokens_details = { reasoning_tokens = 0, audio_tokens = 0,
                            accepted_prediction_tokens = 0, rejected_prediction_tokens = 0 } }, body.usage)
      end)
    end)

    it("streams role, content deltas, tool-call deltas, finish, usage and [DONE]", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ replies = { {
          text = "Let me look that up for you.",
          tool_calls = { { name = "lookup", arguments = { q = "first query" } },
                         { name = "weather", arguments = { city = "Zürich", days = 3 } } },
        } } }
        local res = assert(chat(srv, { stream = true }))
        assert.are.equal(200, res.status)
        assert.matches("text/event%-stream", res.headers["content-type"])
        local s = assemble_openai(res.body)
        assert.are.equal("assistant", s.role)
        assert.are.equal("Let me look that up for you.", s.text)
        assert.are.equal(2, #s.calls)
        assert.are.equal("lookup", s.calls[1].name)
        assert.are.same({ q = "first query" }, cjson.decode(s.calls[1].arguments))
        assert.are.equal("weather", s.calls[2].name)
        assert.are.same({ city = "Zürich", days = 3 }, cjson.decode(s.calls[2].arguments))
        assert.matches("^call_", s.calls[1].id)
        assert.are_not.equal(s.calls[1].id, s.calls[2].id)
        assert.are.equal("tool_calls", s.finish)
        assert.is_table(s.usage)
        assert.are.equal(#s.events, s.done, "[DONE] comes last")
        -- Arguments really arrive in pieces: several deltas per call.
        local arg_deltas = 0
        for _, ev in ipairs(s.events) do
          if ev.data:find('"arguments"', 1, true) then arg_deltas = arg_deltas + 1 end
        end
        assert.is_true(arg_deltas >= 6)
        -- The usage chunk has an empty choices array.
        local usage_chunk = cjson.decode(s.events[#s.events - 1].data)
        assert.are.equal(0, #usage_chunk.choices)
        assert.matches('"choices":%[%]', s.events[#s.events - 1].data)
      end)
    end)

    it("sends string arguments verbatim", function()
      helpers.run(function()
        local broken = '{"q": "unterminated'
        local srv <close> = testing.mock_server{ default = { tool_calls = { { name = "lookup", arguments = broken } } } }
        local body = cjson.decode(assert(chat(srv, {})).body)
        assert.are.equal(broken, body.choices[1].message.tool_calls[1]["function"].arguments)
        local s = assemble_openai(assert(chat(srv, { stream = true })).body)
        assert.are.equal(broken, s.calls[1].arguments)
      end)
    end)
  end)

  describe("Anthropic Messages", function()
    it("renders a non-streaming reply with text and tool_use blocks", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ replies = { {
          text = "Checking.", tool_calls = { { name = "lookup", arguments = { q = "x" } } },
          usage = { input = 20, output = 4, cached = 12 },
        }, "plain" } }
        local res = assert(messages(srv, { model = "claude-x" }))
        assert.are.equal(200, res.status)
        local m = cjson.decode(res.body)
        assert.are.equal("message", m.type)
        assert.are.equal("assistant", m.role)
        assert.are.equal("claude-x", m.model)
        assert.matches("^msg_", m.id)
        assert.are.same({ type = "text", text = "Checking." }, m.content[1])
        assert.are.equal("tool_use", m.content[2].type)
        assert.matches("^toolu_", m.content[2].id)
        assert.are.equal("lookup", m.content[2].name)
        assert.are.same({ q = "x" }, m.content[2].input)
        assert.are.equal("tool_use", m.stop_reason)
        -- input is the whole prompt; Anthropic counts the cached part apart
        assert.are.equal(8, m.usage.input_tokens)
        assert.are.equal(4, m.usage.output_tokens)
        assert.are.equal(12, m.usage.cache_read_input_tokens)
        m = cjson.decode(assert(messages(srv, {})).body)
        assert.are.equal("end_turn", m.stop_reason)
        assert.are.same({ { type = "text", text = "plain" } }, m.content)
      end)
    end)

    it("streams message_start, content blocks with deltas, message_delta and message_stop", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ replies = { {
          text = "Looking up two things.",
          tool_calls = { { name = "lookup", arguments = { q = "alpha beta gamma" } },
                         { name = "lookup", arguments = { q = "delta" }, id = "toolu_fixed" } },
        } } }
        local res = assert(messages(srv, { stream = true }))
        assert.matches("text/event%-stream", res.headers["content-type"])
        local s = assemble_anthropic(res.body)
        assert.are.equal("message_start", s.names[1])
        assert.are.equal("message_stop", s.names[#s.names])
        assert.are.equal("message_delta", s.names[#s.names - 1])
        assert.are.equal("assistant", s.message.role)
        assert.are.same({}, s.message.content)
        assert.are.equal(3, #s.blocks)
        assert.are.equal("text", s.blocks[1].type)
        assert.are.equal("Looking up two things.", s.blocks[1].text)
        assert.are.equal("tool_use", s.blocks[2].type)
        assert.are.same({ q = "alpha beta gamma" }, cjson.decode(s.blocks[2].json))
        assert.are.equal("toolu_fixed", s.blocks[3].id)
        assert.are.same({ q = "delta" }, cjson.decode(s.blocks[3].json))
        assert.are.equal("tool_use", s.stop_reason)
        assert.is_true(s.output_tokens > 0)
        local deltas = 0
        for _, name in ipairs(s.names) do
          if name == "content_block_delta" then deltas = deltas + 1 end
        end
        assert.is_true(deltas >= 5, "text and partial_json arrive in pieces")
      end)
    end)
  end)

  describe("scripting", function()
    it("records every request with its decoded JSON", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ replies = { "a", "b" } }
        assert(chat(srv, { model = "m1", messages = { { role = "user", content = "one" } } },
          { headers = { ["X-Custom-Header"] = "yes", ["content-type"] = "application/json" } }))
        assert(messages(srv, { model = "m2" }))
        assert(http.request{ url = srv.url .. "/elsewhere?x=1" })
        local reqs = srv:requests()
        assert.are.equal(3, #reqs)
        assert.are.equal("POST", reqs[1].method)
        assert.are.equal("/v1/chat/completions", reqs[1].path)
        assert.are.equal("yes", reqs[1].headers["x-custom-header"])
        assert.are.equal("m1", reqs[1].json.model)
        assert.are.equal("one", reqs[1].json.messages[1].content)
        assert.are.equal(cjson.decode(reqs[1].body).model, "m1")
        assert.are.equal("/v1/messages", reqs[2].path)
        assert.are.equal("GET", reqs[3].method)
        assert.are.equal("/elsewhere?x=1", reqs[3].path)
        assert.are.equal("", reqs[3].body)
        assert.is_nil(reqs[3].json)
      end)
    end)

    it("keeps no request with record = false, and still counts them", function()
      helpers.run(function()
        local seen = {}
        local srv <close> = testing.mock_server{ record = false, default = function(req)
          seen[#seen + 1] = req.json.model -- reply functions still get the decoded request
          return "ok"
        end }
        for i = 1, 5 do assert(chat(srv, { model = "m" .. i })) end
        assert(http.request{ url = srv.url .. "/elsewhere" })
        assert.are.same({}, srv:requests())
        assert.are.equal(6, srv:request_count())
        assert.are.same({ "m1", "m2", "m3", "m4", "m5" }, seen)
        local recorded <close> = testing.mock_server{ default = "ok" }
        assert(chat(recorded, {}))
        assert.are.equal(1, #recorded:requests())
        assert.are.equal(1, recorded:request_count())
      end)
      assert.matches("field 'record' must be a boolean",
        select(2, pcall(testing.mock_server, { record = "no" })))
    end)

    it("consumes replies in order, then the default, else a 500", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ replies = { "first" } }
        srv:push("second", function(req) return "third for " .. req.json.model end)
        assert.are.equal(3, srv:pending())
        local function text(res) return cjson.decode(res.body).choices[1].message.content end
        assert.are.equal("first", text(assert(chat(srv, {}))))
        assert.are.equal("second", text(assert(chat(srv, {}))))
        assert.are.equal("third for gpt-mock", text(assert(chat(srv, {}))))
        local res = assert(chat(srv, {}))
        assert.are.equal(500, res.status)
        assert.matches("no scripted reply left", cjson.decode(res.body).error.message)
      end)
      helpers.run(function()
        local srv <close> = testing.mock_server{ default = "always" }
        for _ = 1, 3 do
          assert.are.equal("always",
            cjson.decode(assert(chat(srv, {})).body).choices[1].message.content)
        end
      end)
    end)

    it("serves other paths through routes, else 404", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ routes = {
          ["/v1/models"] = function() return { status = 200, body = '{"data":[]}',
                                               headers = { ["content-type"] = "application/json" } } end,
        } }
        local res = assert(http.request{ url = srv.url .. "/v1/models" })
        assert.are.equal(200, res.status)
        assert.are.equal('{"data":[]}', res.body)
        res = assert(http.request{ url = srv.url .. "/nothing" })
        assert.are.equal(404, res.status)
      end)
    end)

    it("tool_loop and echo answer in both wire formats", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ default = testing.tool_loop(2, "lookup") }
        local msgs = { { role = "user", content = "go" } }
        local body = cjson.decode(assert(chat(srv, { messages = msgs })).body)
        local call = body.choices[1].message.tool_calls[1]
        assert.are.same({ q = "item 1" }, cjson.decode(call["function"].arguments))
        msgs[2] = { role = "assistant", tool_calls = { call } }
        msgs[3] = { role = "tool", tool_call_id = call.id, content = "r1" }
        body = cjson.decode(assert(chat(srv, { messages = msgs })).body)
        assert.are.same({ q = "item 2" }, cjson.decode(body.choices[1].message.tool_calls[1]["function"].arguments))
        msgs[4] = { role = "tool", tool_call_id = "x", content = "r2" }
        body = cjson.decode(assert(chat(srv, { messages = msgs })).body)
        assert.are.equal("done after 2 lookups", body.choices[1].message.content)
        -- Anthropic: tool_result blocks count.
        local amsgs = { { role = "user", content = "go" },
                        { role = "user", content = { { type = "tool_result", tool_use_id = "t", content = "r" } } } }
        local m = cjson.decode(assert(messages(srv, { messages = amsgs })).body)
        assert.are.same({ q = "item 2" }, m.content[1].input)
      end)
      helpers.run(function()
        local srv <close> = testing.mock_server{ default = testing.echo }
        local body = cjson.decode(assert(chat(srv, { messages = {
          { role = "user", content = "first" }, { role = "assistant", content = "x" },
          { role = "user", content = { { type = "text", text = "second" } } } } })).body)
        assert.are.equal("echo: second", body.choices[1].message.content)
        local m = cjson.decode(assert(messages(srv, { messages = { { role = "user", content = "hey" } } })).body)
        assert.are.equal("echo: hey", m.content[1].text)
      end)
    end)
  end)

  describe("faults", function()
    it("status faults carry Retry-After and a provider-shaped error body", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ replies = {
          { fault = "status", status = 429, retry_after = 3 },
          { fault = "status", status = 503 },
          { fault = "status", status = 529, body = "overloaded!" },
        } }
        local res = assert(chat(srv, {}))
        assert.are.equal(429, res.status)
        assert.are.equal("3", res.headers["retry-after"])
        assert.are.equal("rate_limit_error", cjson.decode(res.body).error.type)
        res = assert(messages(srv, {}))
        assert.are.equal(503, res.status)
        assert.is_nil(res.headers["retry-after"])
        assert.are.equal("error", cjson.decode(res.body).type)
        res = assert(messages(srv, {}))
        assert.are.equal(529, res.status)
        assert.are.equal("overloaded!", res.body)
      end)
    end)

    it("hang never answers; the client times out", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ replies = { { fault = "hang" }, "after" } }
        local res, err = chat(srv, {}, { timeout_ms = 200 })
        assert.is_nil(res)
        assert.are.equal("Timeout", err.code)
        -- The server keeps serving other connections.
        assert.are.equal(200, assert(chat(srv, {})).status)
      end)
    end)

    it("drop closes mid-body (non-streaming) and mid-stream (streaming)", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ replies = {
          { text = "this body will be cut in half", fault = "drop" },
          { text = "streamed then dropped", fault = "drop", chunk_delay_ms = 20 },
          "fine",
        } }
        local res, err = chat(srv, {})
        assert.is_nil(res)
        assert.are.equal("ConnectionClosed", err.code)
        local got = {}
        res, err = chat(srv, { stream = true }, { on_data = function(c) got[#got + 1] = c end })
        assert.is_nil(res)
        assert.are.equal("ConnectionClosed", err.code)
        assert.matches('"role":"assistant"', table.concat(got))
        assert.is_nil(table.concat(got):find("[DONE]", 1, true))
        assert.are.equal(200, assert(chat(srv, {})).status)
      end)
    end)

    it("malformed bodies and streams are not valid JSON", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ default = { fault = "malformed" } }
        local res = assert(chat(srv, {}))
        assert.are.equal(200, res.status)
        assert.is_false(pcall(cjson.decode, res.body))
        res = assert(chat(srv, { stream = true }))
        local bad = 0
        for _, ev in ipairs(sse(res.body)) do
          if ev.data ~= "[DONE]" and not pcall(cjson.decode, ev.data) then bad = bad + 1 end
        end
        assert.are.equal(1, bad)
        res = assert(messages(srv, { stream = true }))
        bad = 0
        for _, ev in ipairs(sse(res.body)) do
          if not pcall(cjson.decode, ev.data) then bad = bad + 1 end
        end
        assert.are.equal(1, bad)
      end)
    end)

    it("truncate ends a well-formed stream before its end", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ default = { text = "partial answer", fault = "truncate" } }
        local res = assert(chat(srv, { stream = true }))
        assert.are.equal(200, res.status)
        local s = assemble_openai(res.body)
        assert.are.equal("partial answer", s.text)
        assert.is_nil(s.done)
        assert.is_nil(s.finish)
        res = assert(messages(srv, { stream = true }))
        local a = assemble_anthropic(res.body)
        assert.are.equal("partial answer", a.blocks[1].text)
        assert.are_not.equal("message_stop", a.names[#a.names])
        assert.is_nil(a.stop_reason)
      end)
    end)

    it("oversize sends a valid body of the requested size", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ default = { fault = "oversize", bytes = 300000 } }
        local res = assert(chat(srv, {}))
        assert.are.equal(300000, #res.body)
        assert.are.equal(300000, tonumber(res.headers["content-length"]))
        assert.is_true(#cjson.decode(res.body).choices[1].message.content > 290000)
        res = assert(messages(srv, {}))
        assert.are.equal(300000, #res.body)
        res = assert(chat(srv, { stream = true }))
        assert.are.equal(300000, #assemble_openai(res.body).text)
        local none, err = chat(srv, {}, { max_body_bytes = 1000 })
        assert.is_nil(none)
        assert.are.equal("BodyTooLarge", err.code)
      end)
    end)

    it("delays one reply without blocking other connections", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{
          default = { text = "slow", delay_ms = 2000 },
          routes = { ["/fast"] = function() return { body = "fast" } end },
        }
        local order = {}
        local slow = tide.spawn(function()
          assert(chat(srv, {}))
          order[#order + 1] = "slow"
          return true
        end)
        tide.sleep(20)
        -- A separate connection (not the HTTP client's pool) is served at once.
        for _ = 1, 3 do
          local out = raw_exchange(srv.port, "GET /fast HTTP/1.1\r\nConnection: close\r\n\r\n")
          assert.matches("\r\n\r\nfast$", out)
        end
        order[#order + 1] = "fast"
        assert(slow:join())
        assert.are.same({ "fast", "slow" }, order)
      end)
    end)
  end)

  describe("HTTP/1.1", function()
    it("keeps one connection alive for many sequential requests", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ default = "ok" }
        local reused = 0
        for _ = 1, 200 do
          local res = assert(chat(srv, {}))
          assert.are.equal(200, res.status)
          if res.reused then reused = reused + 1 end
        end
        assert.are.equal(199, reused)
        local st = srv:stats()
        assert.are.equal(200, st.requests)
        assert.are.equal(1, st.connections)
      end)
    end)

    it("answers pipelined requests in order", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ default = function(req) return req.json.model end,
                                                  delay_ms = 0 }
        local parts = {}
        for i = 1, 5 do
          local body = cjson.encode({ model = "m" .. i })
          parts[i] = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s")
            :format(#body, i == 5 and "Connection: close\r\n" or "", body)
        end
        local out = assert(raw_exchange(srv.port, table.concat(parts)))
        local seen = {}
        for model in out:gmatch('"content":"(m%d)"') do seen[#seen + 1] = model end
        assert.are.same({ "m1", "m2", "m3", "m4", "m5" }, seen)
        local _, n = out:gsub("HTTP/1.1 200 OK", "")
        assert.are.equal(5, n)
        assert.are.equal(5, srv:stats().requests)
      end)
    end)

    it("rejects oversized, chunked and malformed requests", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ default = "ok" }
        local res = assert(post(srv, "/v1/chat/completions", string.rep("a", 64 * 1024 * 1024 + 1)))
        assert.are.equal(413, res.status)
        local out = raw_exchange(srv.port,
          "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n")
        assert.matches("^HTTP/1.1 411 ", out)
        out = raw_exchange(srv.port, "NOT HTTP\r\n\r\n")
        assert.matches("^HTTP/1.1 400 ", out)
        out = raw_exchange(srv.port, "GET / HTTP/1.1\r\nX-Big: " .. string.rep("b", 70000) .. "\r\n\r\n")
        assert.matches("^HTTP/1.1 431 ", out)
        -- None of that was handed to the handler, and the server still serves.
        assert.are.equal(0, #srv:requests())
        assert.are.equal(200, assert(chat(srv, {})).status)
      end)
    end)

    it("streams chunked responses paced by chunk_delay_ms", function()
      helpers.run(function()
        local srv <close> = testing.mock_server{ default = { text = "one two three four", chunk_delay_ms = 30 } }
        local got = {}
        local res = assert(chat(srv, { stream = true }, { on_data = function(c) got[#got + 1] = c end }))
        assert.are.equal(200, res.status)
        assert.is_true(#got >= 3, "chunks arrive separately")
        assert.are.equal("one two three four", assemble_openai(table.concat(got)).text)
      end)
    end)
  end)

  describe("tide.testing.server.listen", function()
    it("serves raw response tables and turns handler errors into 500", function()
      helpers.run(function()
        local srv = assert(require("tide.testing.server").listen{ handler = function(req)
          if req.path == "/boom" then error("handler exploded") end
          return { status = 202, headers = { ["x-n"] = 7 }, body = req.method .. " " .. req.path }
        end })
        local port = srv:port()
        assert.is_true(port > 0)
        local res = assert(http.request{ url = ("http://127.0.0.1:%d/a?b=c"):format(port) })
        assert.are.equal(202, res.status)
        assert.are.equal("7", res.headers["x-n"])
        assert.are.equal("GET /a?b=c", res.body)
        res = assert(http.request{ url = ("http://127.0.0.1:%d/boom"):format(port) })
        assert.are.equal(500, res.status)
        srv:close()
        srv:close() -- idempotent
        assert.has_error(function() srv:port() end, "attempt to use a closed server")
      end)
    end)

    it("raises on misuse and fails to listen on a port in use", function()
      assert.has_error(function() require("tide.testing.server").listen{} end)
      assert.has_error(function() require("tide.testing.server").listen{ handler = print, port = -1 } end)
      assert.has_error(function() require("tide.testing.server").listen{ handler = print, host = "example.com" } end)
      local a = assert(require("tide.testing.server").listen{ handler = print })
      local b, err = require("tide.testing.server").listen{ handler = print, port = a:port() }
      assert.is_nil(b)
      assert.are.equal("ListenFailed", err.code)
      a:close()
    end)

    it("closing a server with open connections leaves no handle open", function()
      helpers.run(function()
        local before = require("tide.testing.server").stats()
        local srv = testing.mock_server{ replies = { "a", { fault = "hang" } } }
        assert(chat(srv, {})) -- leaves a kept-alive connection
        local hung = tide.spawn(function() return chat(srv, {}, { timeout_ms = 5000 }) end)
        for _ = 1, 100 do
          if #srv:requests() == 2 then break end
          tide.sleep(5)
        end
        assert.is_true(srv:stats().connections >= 1)
        srv:close()
        local res, err = hung:join()
        assert.is_nil(res)
        assert.is_truthy(err.code == "ConnectionClosed" or err.code == "ConnectFailed")
        tide.sleep(5)
        assert.are.same(before, require("tide.testing.server").stats())
      end)
    end)

    it("never keeps tide.run alive unless ref = true, and shuts down cleanly at exit", function()
      -- A server left open (ref = false) does not hold run; the state closes
      -- it, with its connections, at exit.
      local out = lua_script([[
        local tide = require "tide"
        tide.run(function()
          local srv = tide.testing.mock_server{ default = "x" }
          assert(tide.http.request{ method = "POST", url = srv.url .. "/v1/chat/completions", body = "{}" })
          _G.keep = srv
        end)
        print("run returned")
      ]])
      assert.are.equal("run returned\nexit=0\n", out)
      -- A ref'd server holds run until it is closed.
      out = lua_script([[
        local tide = require "tide"
        tide.run(function()
          local srv = tide.testing.mock_server{ default = "x", ref = true }
          tide.spawn(function()
            assert(tide.http.request{ method = "POST", url = srv.url .. "/v1/chat/completions", body = "{}" })
            srv:close()
          end)
        end)
        print("run returned")
      ]])
      assert.are.equal("run returned\nexit=0\n", out)
    end)
  end)
end)
