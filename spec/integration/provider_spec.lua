-- The providers (tide.provider.openai / .anthropic) against the loopback mock
-- model server (tide.testing) and, for wire shapes the mock does not script,
-- a raw loopback server (require("tide.testing.server").listen). Both providers, streaming and
-- not: replies, tool calls, usage, retries, faults, request shapes.
local helpers = require "helpers"
local tide = require "tide"
local core = require "tide.core"
local json = require "tide.json"
local provider = require "tide.provider"
local cjson = require "cjson"

-- Small backoff so that retries cost milliseconds.
local FAST = { attempts = 3, base_ms = 1, max_ms = 2 }

local raised = require("helpers").raised

-- Runs fn(srv) in a root task with a mock server that is closed afterwards.
local function with_mock(opts, fn)
  return helpers.run(function()
    local srv = assert(tide.testing.mock_server(opts))
    local ok, err = pcall(fn, srv)
    srv:close()
    if not ok then error(err, 0) end
  end)
end

-- A raw loopback server: handler(req, n) returns a require("tide.testing.server").listen
-- response table ({ status, headers, body | chunks, raw, hang, ... }).
local function with_raw(handler, fn)
  return helpers.run(function()
    local n = 0
    local reqs = {}
    local srv = assert(require("tide.testing.server").listen({
      host = "127.0.0.1", port = 0,
      handler = function(req)
        n = n + 1
        reqs[n] = req
        return handler(req, n)
      end,
    }))
    local ok, err = pcall(fn, "http://127.0.0.1:" .. srv:port(), reqs)
    srv:close()
    if not ok then error(err, 0) end
  end)
end

local function make(kind, url, stream, extra)
  local o = { base_url = url .. "/v1", api_key = "test-key", model = "mock-1", stream = stream, retry = FAST }
  for k, v in pairs(extra or {}) do o[k] = v end
  return provider[kind](o)
end

local function simple_body(p, text)
  return p:body(p:encode_prefix("You are terse.", {}), { p:encode_message({ role = "user", content = text or "hi" }) })
end

-- complete() collecting deltas.
local function complete(p, body, opts)
  local deltas = {}
  opts = opts or {}
  opts.on_delta = function(t) deltas[#deltas + 1] = t end
  local res, err = p:complete(body, opts)
  return res, err, deltas
end

local SSE = { ["content-type"] = "text/event-stream" }
local function sse(obj)
  return "data: " .. (type(obj) == "string" and obj or cjson.encode(obj)) .. "\n\n"
end

describe("tide.provider", function()
  after_each(function() helpers.assert_quiet() end)

  it("retries what the SDKs retry: timeouts and unresolved names before a reply, cut 5xx bodies", function()
    local retry = require "tide.provider.retry"
    assert.is_true(retry.retryable({ code = "Timeout" }, false, false))
    assert.is_true(retry.retryable({ code = "ResolveFailed" }, false, false))
    assert.is_false(retry.retryable({ code = "Timeout" }, true, false))
    assert.is_true(retry.retryable({ code = "ConnectionClosed", status = 503 }, true, false))
    assert.is_false(retry.retryable({ code = "ConnectionClosed", status = 400 }, true, false))
    assert.is_false(retry.retryable({ code = "Timeout" }, false, true))
    -- a Retry-After of 0 (or a date past) keeps the backoff's wait
    local policy = { base_ms = 100, max_ms = 100, max_retry_after_ms = 60000 }
    math.randomseed(1)
    local waits = {}
    for i = 1, 20 do waits[i] = retry.backoff_ms(policy, 1, 0) end
    local some = false
    for _, w in ipairs(waits) do some = some or w > 0 end
    assert.is_true(some)
    assert.are.equal(3000, retry.backoff_ms(policy, 1, 3000))
  end)

  it("bounds what a stream holds, not how long it is", function()
    local long = ("token "):rep(100) -- 600 bytes of text, many times that in events
    with_mock({ replies = { { text = long, chunk_delay_ms = 1 } } }, function(srv)
      local p = make("openai", srv.url, true, { max_body_bytes = 1024 })
      local res, err = complete(p, simple_body(p))
      assert.is_nil(err, err and tostring(err))
      assert.are.equal(long, res.text)
    end)
  end)

  it("gives a stream as long as it keeps coming, and times out one that stalls", function()
    -- (timeout_ms is a stream's idle limit: a long answer streamed for
    -- longer than it is whole, a stalled one is a Timeout)
    local text = ("word "):rep(12)
    with_mock({ replies = { { text = text, chunk_delay_ms = 200 }, { fault = "hang" } } }, function(srv)
      local p = make("openai", srv.url, true, { timeout_ms = 1000, retry = { attempts = 1 } })
      local res, err = complete(p, simple_body(p))
      assert.is_nil(err, err and tostring(err))
      assert.are.equal(text, res.text)
      local _, terr = complete(p, simple_body(p))
      assert.are.equal("Timeout", terr.code)
    end)
  end)

  for _, kind in ipairs({ "openai", "anthropic" }) do
    for _, stream in ipairs({ true, false }) do
      local mode = stream and "streaming" or "non-streaming"

      describe(kind .. " (" .. mode .. ")", function()
        it("returns the text and hands deltas over in order", function()
          with_mock({ replies = { "The quick brown fox jumps over the lazy dog." } }, function(srv)
            local p = make(kind, srv.url, stream)
            local res, err, deltas = complete(p, simple_body(p))
            assert.is_nil(err)
            assert.are.equal("The quick brown fox jumps over the lazy dog.", res.text)
            assert.are.equal(res.text, table.concat(deltas))
            if stream then
              assert.is_true(#deltas > 1, "expected several deltas")
            else
              assert.are.equal(1, #deltas)
            end
            assert.are.same({}, res.tool_calls)
            assert.are.equal("stop", res.stop)
            assert.are.equal(1, res.attempts)
            assert.is_number(res.ttfb_ms)
            assert.is_true(res.ttfb_ms >= 0)
          end)
        end)

        it("reassembles tool calls with their arguments and reports usage", function()
          local args1 = { q = "weather in Paris", opts = { units = "metric", days = { 1, 2, 3 } } }
          with_mock({ replies = { {
            text = kind == "anthropic" and "Let me look." or nil,
            tool_calls = {
              { id = "call_abc", name = "lookup", arguments = args1 },
              { id = "call_def", name = "clock", arguments = '{"tz":"UTC"}' },
            },
            usage = { input = 120, output = 17, cached = 64 },
          } } }, function(srv)
            local p = make(kind, srv.url, stream)
            local res, err = complete(p, simple_body(p))
            assert.is_nil(err)
            assert.are.equal(2, #res.tool_calls)
            local c1, c2 = res.tool_calls[1], res.tool_calls[2]
            assert.are.equal("call_abc", c1.id)
            assert.are.equal("lookup", c1.name)
            assert.are.same(args1, cjson.decode(c1.arguments))
            assert.are.equal("call_def", c2.id)
            assert.are.equal("clock", c2.name)
            assert.are.same({ tz = "UTC" }, cjson.decode(c2.arguments))
            -- Usage means the same for both: the whole prompt, cached included.
            assert.are.same({ 120, 17, 64, 0 }, { res.usage.input, res.usage.output, res.usage.cached,
              res.usage.cache_write })
            assert.are.equal("tool_calls", res.stop)
            if kind == "anthropic" then assert.are.equal("Let me look.", res.text) end
          end)
        end)

        it("retries a 429 after the Retry-After delay, then succeeds", function()
          with_mock({ replies = { { fault = "status", status = 429, retry_after = 0.3 }, "after the wait" } },
            function(srv)
              local p = make(kind, srv.url, stream)
              local seen_mid_wait
              -- Once the 429 has been answered, the retry must not come for
              -- 300 ms: a look 100 ms later still finds one request.
              local probe = tide.spawn(function()
                helpers.wait_until(function() return #srv:requests() > 0 end, "the first request")
                tide.sleep(100)
                seen_mid_wait = #srv:requests()
              end)
              local retries = {}
              local res, err = complete(p, simple_body(p), { on_retry = function(info) retries[#retries + 1] = info end })
              probe:join()
              assert.is_nil(err)
              assert.are.equal("after the wait", res.text)
              assert.are.equal(2, res.attempts)
              assert.are.equal(2, #srv:requests())
              -- The retry was not sent while the server asked to wait.
              assert.are.equal(1, seen_mid_wait)
              assert.are.equal(1, #retries)
              assert.are.equal(300, retries[1].delay_ms)
              assert.are.equal("RateLimited", retries[1].error.code)
            end)
        end)

        it("retries 500 up to retry.attempts, then fails with ProviderError and stays usable", function()
          local s500 = { fault = "status", status = 500 }
          with_mock({ replies = { s500, s500, s500 }, default = "ok" }, function(srv)
            local p = make(kind, srv.url, stream)
            local res, err = complete(p, simple_body(p))
            assert.is_nil(res)
            assert.are.equal("ProviderError", err.code)
            assert.are.equal(500, err.status)
            assert.are.equal(3, err.attempts)
            assert.matches("HTTP 500", err.message)
            assert.matches("mock: HTTP 500", err.body, 1, true)
            assert.is_true(#err.body <= 2048)
            assert.are.equal(3, #srv:requests())
            local ok = assert(complete(p, simple_body(p)))
            assert.are.equal("ok", ok.text)
          end)
        end)

        it("retries 502/503/504/529 and succeeds within the bound", function()
          with_mock({ replies = {
            { fault = "status", status = 503 }, { fault = "status", status = 529 }, "third time",
          } }, function(srv)
            local p = make(kind, srv.url, stream)
            local res = assert(complete(p, simple_body(p)))
            assert.are.equal("third time", res.text)
            assert.are.equal(3, res.attempts)
          end)
        end)

        it("retries what the official SDKs retry, and obeys x-should-retry", function()
          with_mock({ replies = {
            { fault = "status", status = 408 }, { fault = "status", status = 409 }, { fault = "status", status = 520 },
            "fourth time",
            { fault = "status", status = 503, headers = { ["x-should-retry"] = "false",
              [kind == "openai" and "x-request-id" or "request-id"] = "req_mock503" } },
            { fault = "status", status = 400, headers = { ["x-should-retry"] = "true" } }, "after a 400",
          } }, function(srv)
            local p = make(kind, srv.url, stream, { retry = { attempts = 4, base_ms = 1, max_ms = 2 } })
            local res = assert(complete(p, simple_body(p)))
            assert.are.equal("fourth time", res.text)
            assert.are.equal(4, res.attempts)
            local _, err = complete(p, simple_body(p))
            assert.are.equal(503, err.status)
            assert.are.equal(1, err.attempts)
            assert.are.equal("req_mock503", err.request_id)
            res = assert(complete(p, simple_body(p)))
            assert.are.equal("after a 400", res.text)
            assert.are.equal(2, res.attempts)
          end)
        end)

        it("gives RateLimited when 429 persists", function()
          local s429 = { fault = "status", status = 429, retry_after = 0 }
          with_mock({ replies = { s429, s429, s429 }, default = "ok" }, function(srv)
            local p = make(kind, srv.url, stream)
            local res, err = complete(p, simple_body(p))
            assert.is_nil(res)
            assert.are.equal("RateLimited", err.code)
            assert.are.equal(429, err.status)
            assert.are.equal(3, err.attempts)
            assert.matches("^RateLimited: ", tostring(err))
          end)
        end)

        it("does not retry a 400, and truncates a long error body to 2 KiB", function()
          local big = ("x"):rep(10000)
          with_mock({ replies = { { fault = "status", status = 400, body = big } }, default = "ok" }, function(srv)
            local p = make(kind, srv.url, stream)
            local res, err = complete(p, simple_body(p))
            assert.is_nil(res)
            assert.are.equal("ProviderError", err.code)
            assert.are.equal(400, err.status)
            assert.are.equal(1, err.attempts)
            assert.are.equal(2048, #err.body)
            assert.are.equal(1, #srv:requests())
          end)
        end)

        it("reports malformed JSON as MalformedResponse and stays usable", function()
          with_mock({ replies = { { fault = "malformed" } }, default = "ok" }, function(srv)
            local p = make(kind, srv.url, stream)
            local res, err = complete(p, simple_body(p))
            assert.is_nil(res)
            assert.are.equal("MalformedResponse", err.code)
            assert.matches("JSON", err.message)
            assert.are.equal(1, err.attempts)
            assert.are.equal("ok", assert(complete(p, simple_body(p))).text)
          end)
        end)

        it("reports a truncated reply as MalformedResponse and stays usable", function()
          with_mock({ replies = { { fault = "truncate", text = "partial answer" } }, default = "ok" }, function(srv)
            local p = make(kind, srv.url, stream)
            local res, err = complete(p, simple_body(p))
            assert.is_nil(res)
            assert.are.equal("MalformedResponse", err.code)
            if stream then
              assert.matches(kind == "openai" and "DONE" or "message_stop", err.message)
              assert.are.equal("partial answer", err.partial_text)
            end
            assert.are.equal(1, #srv:requests())
            assert.are.equal("ok", assert(complete(p, simple_body(p))).text)
          end)
        end)

        it("reports a connection dropped mid-reply as ConnectionClosed, without retrying", function()
          with_mock({ replies = { { fault = "drop", text = "some words that will not all arrive" } }, default = "ok" },
            function(srv)
              local p = make(kind, srv.url, stream)
              local res, err = complete(p, simple_body(p))
              assert.is_nil(res)
              assert.are.equal("ConnectionClosed", err.code)
              assert.are.equal(1, err.attempts)
              assert.are.equal(1, #srv:requests())
              assert.are.equal("ok", assert(complete(p, simple_body(p))).text)
            end)
        end)

        it("caps the response size with BodyTooLarge", function()
          with_mock({ replies = { { fault = "oversize", bytes = 200000 } }, default = "ok" }, function(srv)
            local p = make(kind, srv.url, stream, { max_body_bytes = 50000 })
            local res, err = complete(p, simple_body(p))
            assert.is_nil(res)
            assert.are.equal("BodyTooLarge", err.code)
            assert.are.equal(1, err.attempts)
            assert.are.equal("ok", assert(complete(p, simple_body(p))).text)
          end)
        end)

        it("times out a hung request with Timeout, retried as the SDKs retry it, and stays usable", function()
          with_mock({ replies = { { fault = "hang" }, { fault = "hang" } }, default = "ok" }, function(srv)
            local p = make(kind, srv.url, stream, { timeout_ms = 200, retry = { attempts = 1 } })
            local res, err = complete(p, simple_body(p))
            assert.is_nil(res)
            assert.are.equal("Timeout", err.code)
            assert.are.equal(1, err.attempts)
            -- (no byte of a reply came: the next attempt may go)
            local again = make(kind, srv.url, stream, { timeout_ms = 200 })
            local ok = assert(complete(again, simple_body(again)))
            assert.are.equal("ok", ok.text)
            assert.are.equal(2, ok.attempts)
          end)
        end)

        it("takes a per-call timeout_ms", function()
          with_mock({ replies = { { fault = "hang" } }, default = "ok" }, function(srv)
            local p = make(kind, srv.url, stream, { retry = { attempts = 1 } })
            local res, err = p:complete(simple_body(p), { timeout_ms = 150 })
            assert.is_nil(res)
            assert.are.equal("Timeout", err.code)
          end)
        end)
      end)
    end
  end

  -- ------------------------------------------------------------ requests

  local history = {
    { role = "user", content = "Find the weather." },
    { role = "assistant", content = "Looking.", tool_calls = {
      { id = "call_1", name = "lookup", arguments = '{"q":"weather","days":[]}' },
      { id = "call_2", name = "clock", arguments = "not json" },
    } },
    { role = "tool", results = {
      { id = "call_1", name = "lookup", content = "sunny", is_error = false },
      { id = "call_2", name = "clock", content = "bad arguments", is_error = true },
    } },
    { role = "assistant", content = "It is sunny." },
    { role = "user", content = "Thanks" },
  }
  local tools = {
    { name = "lookup", description = "Look things up.",
      parameters = { type = "object", properties = { q = { type = "string" } }, required = { "q" } } },
    { name = "clock", description = "The time." },
  }

  local function send_history(kind, stream, extra)
    local recorded
    with_mock({ default = "done" }, function(srv)
      local p = make(kind, srv.url, stream, extra)
      local encoded = {}
      for i, m in ipairs(history) do encoded[i] = p:encode_message(m) end
      assert(p:complete(p:body(p:encode_prefix("You are the system.", tools), encoded)))
      recorded = srv:requests()[1]
    end)
    return recorded
  end

  it("sends OpenAI requests of the documented shape", function()
    local req = send_history("openai", true, { temperature = 0.5, max_tokens = 300 })
    assert.are.equal("/v1/chat/completions", req.path)
    assert.are.equal("Bearer test-key", req.headers["authorization"])
    assert.are.equal("application/json", req.headers["content-type"])
    local b = req.json
    assert.are.equal("mock-1", b.model)
    assert.is_true(b.stream)
    assert.are.same({ include_usage = true }, b.stream_options)
    assert.are.equal(0.5, b.temperature)
    assert.are.equal(300, b.max_completion_tokens) -- OpenAI's name since reasoning models
    assert.is_nil(b.max_tokens)
    assert.are.equal(2, #b.tools)
    assert.are.same({ type = "function", ["function"] = {
      name = "lookup", description = "Look things up.",
      parameters = { type = "object", properties = { q = { type = "string" } }, required = { "q" } } } }, b.tools[1])
    assert.are.same({ type = "object", properties = {} }, b.tools[2]["function"].parameters)
    local m = b.messages
    assert.are.equal(7, #m)
    assert.are.same({ role = "system", content = "You are the system." }, m[1])
    assert.are.same({ role = "user", content = "Find the weather." }, m[2])
    assert.are.equal("assistant", m[3].role)
    assert.are.equal("Looking.", m[3].content)
    assert.are.same({ id = "call_1", type = "function",
      ["function"] = { name = "lookup", arguments = '{"q":"weather","days":[]}' } }, m[3].tool_calls[1])
    assert.are.equal("not json", m[3].tool_calls[2]["function"].arguments)
    assert.are.same({ role = "tool", tool_call_id = "call_1", content = "sunny" }, m[4])
    assert.are.same({ role = "tool", tool_call_id = "call_2", content = "bad arguments" }, m[5])
    assert.are.same({ role = "assistant", content = "It is sunny." }, m[6])
    assert.are.same({ role = "user", content = "Thanks" }, m[7])
  end)

  it("omits tools, stream_options and the system message when there are none", function()
    with_mock({ default = "done" }, function(srv)
      local p = make("openai", srv.url, false)
      local prefix = p:encode_prefix(nil, {})
      assert.are.equal('{"model":"mock-1","stream":false,"messages":[', prefix)
      assert(p:complete(p:body(prefix, { p:encode_message({ role = "user", content = "x" }) })))
      local b = srv:requests()[1].json
      assert.is_nil(b.tools)
      assert.is_nil(b.stream_options)
      assert.are.same({ { role = "user", content = "x" } }, b.messages)
      -- An empty history is still valid JSON.
      assert.are.same({ { role = "system", content = "s" } },
        cjson.decode(p:body(p:encode_prefix("s"), {})).messages)
      assert.are.same({}, cjson.decode(p:body(prefix, {})).messages)
    end)
  end)

  it("sends Anthropic requests of the documented shape", function()
    local req = send_history("anthropic", true)
    assert.are.equal("/v1/messages", req.path)
    assert.are.equal("test-key", req.headers["x-api-key"])
    assert.are.equal("2023-06-01", req.headers["anthropic-version"])
    assert.is_nil(req.headers["authorization"])
    local b = req.json
    assert.are.equal("mock-1", b.model)
    assert.are.equal(4096, b.max_tokens)
    assert.is_true(b.stream)
    assert.are.equal("You are the system.", b.system)
    assert.are.same({ name = "lookup", description = "Look things up.",
      input_schema = { type = "object", properties = { q = { type = "string" } }, required = { "q" } } }, b.tools[1])
    local m = b.messages
    assert.are.equal(5, #m)
    assert.are.same({ role = "user", content = "Find the weather." }, m[1])
    assert.are.equal("assistant", m[2].role)
    assert.are.same({ type = "text", text = "Looking." }, m[2].content[1])
    assert.are.same({ type = "tool_use", id = "call_1", name = "lookup", input = { q = "weather", days = {} } },
      m[2].content[2])
    -- Arguments that are not JSON are not sent back: the input is {}.
    assert.are.same({ type = "tool_use", id = "call_2", name = "clock", input = {} }, m[2].content[3])
    assert.are.same({ role = "user", content = {
      { type = "tool_result", tool_use_id = "call_1", content = "sunny", is_error = false },
      { type = "tool_result", tool_use_id = "call_2", content = "bad arguments", is_error = true },
    } }, m[3])
    assert.are.same({ role = "assistant", content = "It is sunny." }, m[4])
    assert.are.same({ role = "user", content = "Thanks" }, m[5])
  end)

  it("keeps empty arrays in tool-use inputs sent to Anthropic", function()
    local p = provider.anthropic({ base_url = "http://127.0.0.1:1", model = "m" })
    local e = p:encode_message({ role = "assistant", tool_calls = { { id = "t", name = "n", arguments = '{"a":[]}' } } })
    assert.are.equal('{"content":[{"id":"t","input":{"a":[]},"name":"n","type":"tool_use"}],"role":"assistant"}', e)
    assert.are.equal("", p:encode_message({ role = "assistant", content = "" }))
  end)

  -- Messages are encoded by hand, in fixed shapes; the bytes must be those
  -- of the canonical encoder over the documented structures (which is how
  -- they were built before).
  describe("encode_message", function()
    local canonical = json.canonical
    local function result_text(c)
      if c == nil then return "" end
      if type(c) == "table" then return canonical(c) end
      return type(c) == "string" and c or tostring(c)
    end
    local reference = {}
    function reference.openai(m)
      if m.role == "tool" then
        local out = {}
        for i, r in ipairs(m.results) do
          out[i] = canonical({ role = "tool", tool_call_id = r.id, content = result_text(r.content) })
        end
        return table.concat(out, ",")
      end
      if m.role == "assistant" and m.tool_calls and #m.tool_calls > 0 then
        local tc = {}
        for i, c in ipairs(m.tool_calls) do
          local args = c.arguments
          if type(args) == "table" then args = canonical(args) end
          if type(args) ~= "string" then args = "{}" end
          tc[i] = { id = c.id, type = "function", ["function"] = { name = c.name, arguments = args } }
        end
        local content = m.content
        if content == nil or content == "" then content = json.null end
        return canonical({ role = "assistant", content = content, tool_calls = tc })
      end
      return canonical({ role = m.role, content = m.content == nil and "" or m.content })
    end
    local function input_json(a)
      if type(a) == "table" then return canonical(a) end
      if type(a) ~= "string" then return "{}" end
      local trimmed = a:match("^%s*(.-)%s*$")
      if trimmed:sub(1, 1) ~= "{" then return "{}" end
      local v = json.decode(trimmed)
      if type(v) ~= "table" then return "{}" end
      if trimmed:find("[%c]") or trimmed:find("[Nn][Aa][Nn]") or trimmed:find("[Ii][Nn][Ff]")
          or trimmed:find("0[Xx]") then
        return canonical(v)
      end
      return trimmed
    end
    function reference.anthropic(m)
      if m.role == "tool" then
        if #m.results == 0 then return "" end
        local blocks = {}
        for i, r in ipairs(m.results) do
          blocks[i] = { type = "tool_result", tool_use_id = r.id, content = result_text(r.content),
                        is_error = r.is_error == true }
        end
        return canonical({ role = "user", content = blocks })
      end
      if m.role == "assistant" then
        local text = m.content or ""
        if not m.tool_calls or #m.tool_calls == 0 then
          return text == "" and "" or canonical({ role = "assistant", content = text })
        end
        local blocks = {}
        if text ~= "" then blocks[1] = canonical({ type = "text", text = text }) end
        for _, c in ipairs(m.tool_calls) do
          blocks[#blocks + 1] = '{"id":' .. canonical(c.id) .. ',"input":' .. input_json(c.arguments)
            .. ',"name":' .. canonical(c.name) .. ',"type":"tool_use"}'
        end
        return '{"content":[' .. table.concat(blocks, ",") .. '],"role":"assistant"}'
      end
      return canonical({ role = "user", content = m.content == nil and "" or m.content })
    end

    local strings = { "", "plain", 'quote " and \\ backslash', "slash / and </script>", "tab\tnew\nline\r",
                      "\0\1\31\127 controls", "caf\195\169 \226\130\172 \240\159\152\128", "[]", "{}", "null",
                      "  spaced  ", "\255\254 not UTF-8", "x", "NaN", "0x10" }
    local args = { '{"q":"weather","days":[]}', ' \t{"a":{}}\n', "{}", "", "not json", "[1,2]", '"s"',
                   '{"n":NaN}', '{"s":"Info"}', '{"h":0X1f,"e":1e14}', '{"c":"\1"}', "{broken",
                   { q = "x", n = 3, list = json.array() }, {}, 7 }
    local function messages()
      local out = {}
      for i, str in ipairs(strings) do
        out[#out + 1] = { role = "user", content = str }
        out[#out + 1] = { role = "assistant", content = str ~= "" and str or nil }
        out[#out + 1] = { role = "assistant", content = i % 2 == 0 and str or nil, tool_calls = {
          { id = "call_" .. str, name = str, arguments = args[i] },
          { id = str, name = "second", arguments = args[#args + 1 - i] } } }
        out[#out + 1] = { role = "assistant", content = str, tool_calls = {
          { id = str, name = "only", arguments = args[i] } } }
        out[#out + 1] = { role = "assistant", tool_calls = {
          { id = "lone" .. str, name = str, arguments = args[#args + 1 - i] } } }
        out[#out + 1] = { role = "tool", results = {
          { id = str, name = "n", content = str, is_error = i % 2 == 0 },
          { id = "t" .. i, name = "n", content = { answer = str, n = i } },
          { id = "u" .. i, name = "n", content = i } } }
      end
      out[#out + 1] = { role = "user" }
      out[#out + 1] = { role = "user", content = { { type = "text", text = "parts" } } }
      out[#out + 1] = { role = "assistant", tool_calls = {} }
      out[#out + 1] = { role = "tool", results = {} }
      return out
    end

    for _, kind in ipairs({ "openai", "anthropic" }) do
      it(kind .. ": gives the canonical bytes for every message shape", function()
        local p = provider[kind]({ base_url = "http://127.0.0.1:1", model = "m" })
        for _, m in ipairs(messages()) do
          local got = p:encode_message(m)
          assert.are.equal(reference[kind](m), got)
          if got ~= "" then assert.is_table(cjson.decode("[" .. got .. "]")) end
        end
        if kind == "openai" then
          assert.are.equal('{"content":"s","role":"system"}', p:encode_message({ role = "system", content = "s" }))
        end
      end)
    end
  end)

  it("marks the Anthropic prefix for prompt caching when asked", function()
    local p = provider.anthropic({ base_url = "http://127.0.0.1:1", model = "m", prompt_cache = true })
    local b = cjson.decode(p:body(p:encode_prefix("sys", tools), {}))
    assert.are.same({ { type = "text", text = "sys", cache_control = { type = "ephemeral" } } }, b.system)
    assert.is_nil(b.tools[1].cache_control)
    assert.are.same({ type = "ephemeral" }, b.tools[2].cache_control)
    assert.are.same({ type = "ephemeral" }, b.cache_control) -- (automatic caching: the conversation)
  end)

  it("encodes the prefix deterministically (same input, same bytes)", function()
    for _, kind in ipairs({ "openai", "anthropic" }) do
      local p = provider[kind]({ base_url = "http://127.0.0.1:1", model = "m", temperature = 0.2 })
      local a = p:encode_prefix("system text", tools)
      -- The same tools built with keys inserted in another order.
      local t2 = {}
      for i = #tools, 1, -1 do
        local t = tools[i]
        local params
        if t.parameters then
          params = { required = { "q" } }
          params.properties = { q = { type = "string" } }
          params.type = "object"
        end
        t2[i] = { parameters = params, description = t.description, name = t.name }
      end
      for _ = 1, 20 do assert.are.equal(a, p:encode_prefix("system text", t2)) end
      assert.are.equal(core.hash(a), p:fingerprint(p:encode_prefix("system text", tools)))
      assert.are_not.equal(a, p:encode_prefix("system text!", tools))
      -- The prefix is a byte prefix of every body built on it.
      local body = p:body(a, { p:encode_message({ role = "user", content = "x" }) })
      assert.are.equal(a, body:sub(1, #a))
      assert.is_table(cjson.decode(body))
    end
  end)

  -- ------------------------------------------------------ wire edge cases

  it("retries a connection closed before any byte, then succeeds", function()
    local ok_body = cjson.encode({ choices = { { message = { role = "assistant", content = "second" },
      finish_reason = "stop" } }, usage = { prompt_tokens = 1, completion_tokens = 1 } })
    with_raw(function(_, n)
      if n == 1 then return { raw = "" } end
      return { status = 200, headers = { ["content-type"] = "application/json" }, body = ok_body }
    end, function(url, reqs)
      local p = make("openai", url, false)
      local res = assert(p:complete(simple_body(p)))
      assert.are.equal("second", res.text)
      assert.are.equal(2, res.attempts)
      assert.are.equal(2, #reqs)
    end)
  end)

  it("retries ConnectFailed up to the bound", function()
    helpers.run(function()
      local srv = assert(require("tide.testing.server").listen({ host = "127.0.0.1", port = 0, handler = function() return {} end }))
      local port = srv:port()
      srv:close()
      local p = provider.openai({ base_url = "http://127.0.0.1:" .. port .. "/v1", model = "m", retry = FAST })
      local retries = 0
      local res, err = p:complete(simple_body(p), { on_retry = function() retries = retries + 1 end })
      assert.is_nil(res)
      assert.are.equal("ConnectFailed", err.code)
      assert.are.equal(3, err.attempts)
      assert.are.equal(2, retries)
    end)
  end)

  it("gives fallback ids to tool calls that have none, and routes a delta without an index", function()
    local function chunk(delta, finish)
      return sse({ choices = { { index = 0, delta = delta, finish_reason = finish or cjson.null } } })
    end
    with_raw(function()
      return { status = 200, headers = SSE, chunks = {
        chunk({ role = "assistant" }),
        chunk({ tool_calls = { { index = 1, ["function"] = { name = "b", arguments = '{"y"' } } } }),
        chunk({ tool_calls = { { index = 0, ["function"] = { name = "a", arguments = "" } } } }),
        chunk({ tool_calls = { { index = 1, ["function"] = { arguments = ":2}" } } } }),
        chunk({ tool_calls = { { id = "call_1", ["function"] = { name = "c", arguments = "{}" } } } }),
        chunk({}, "tool_calls") .. "data: [DONE]\n\n",
      } }
    end, function(url)
      local p = make("openai", url, true)
      local res = assert(p:complete(simple_body(p)))
      -- The delta without an index names a new call after the last call's
      -- complete arguments: a third call, whose id the made ones avoid.
      assert.are.equal(3, #res.tool_calls)
      assert.are.same({ id = "call_1_1", name = "a", arguments = "{}" }, res.tool_calls[1])
      assert.are.same({ id = "call_2", name = "b", arguments = '{"y":2}' }, res.tool_calls[2])
      assert.are.same({ id = "call_1", name = "c", arguments = "{}" }, res.tool_calls[3])
      assert.are.same({ input = 0, output = 0, cached = 0, cache_write = 0, reasoning = 0 }, res.usage)
    end)
  end)

  it("keeps fallback ids unique within a response", function()
    local body = cjson.encode({ choices = { { finish_reason = "tool_calls", message = { role = "assistant",
      tool_calls = {
        { ["function"] = { name = "a", arguments = "{}" } },
        { id = "call_1", ["function"] = { name = "b", arguments = "{}" } },
      } } } } })
    with_raw(function()
      return { status = 200, headers = { ["content-type"] = "application/json" }, body = body }
    end, function(url)
      local res = assert(make("openai", url, false):complete(simple_body(make("openai", url, false))))
      assert.are_not.equal(res.tool_calls[1].id, res.tool_calls[2].id)
      assert.are.equal("call_1", res.tool_calls[2].id)
    end)
  end)

  it("takes an OpenAI stream that ends cleanly after its finish reason, without [DONE]", function()
    -- (older llama.cpp, ik_llama.cpp and TGI send no [DONE])
    with_raw(function()
      return { status = 200, headers = SSE, chunks = {
        sse({ choices = { { index = 0, delta = { content = "hi" }, finish_reason = cjson.null } } }),
        sse({ choices = { { index = 0, delta = {}, finish_reason = "stop" } } }),
      } }
    end, function(url)
      local res = assert(make("openai", url, true):complete(simple_body(make("openai", url, true))))
      assert.are.equal("hi", res.text)
      assert.are.equal("stop", res.stop)
    end)
  end)

  it("accepts a plain JSON answer to a streamed request", function()
    local body = cjson.encode({ choices = { { finish_reason = "stop",
      message = { role = "assistant", content = "not streamed" } } } })
    with_raw(function()
      return { status = 200, headers = { ["content-type"] = "application/json" }, body = "\n " .. body }
    end, function(url)
      local deltas = {}
      local p = make("openai", url, true)
      local res = assert(p:complete(simple_body(p), { on_delta = function(t) deltas[#deltas + 1] = t end }))
      assert.are.equal("not streamed", res.text)
      assert.are.same({ "not streamed" }, deltas)
      -- with nobody listening the request feeds the C parser itself until
      -- it sees the body is not an event stream, and hands it back whole
      res = assert(p:complete(simple_body(p)))
      assert.are.equal("not streamed", res.text)
      assert.are.equal("stop", res.stop)
    end)
  end)

  it("reports an embedded error object in a 200 reply as ProviderError", function()
    with_raw(function()
      return { status = 200, headers = SSE, chunks = {
        sse({ error = { message = "upstream exploded", code = 502 } }),
      } }
    end, function(url)
      local res, err = make("openai", url, true):complete(simple_body(make("openai", url, true)))
      assert.is_nil(res)
      assert.are.equal("ProviderError", err.code)
      assert.matches("upstream exploded", err.message)
    end)
  end)

  -- Responses are decoded without turning integral numbers into integers;
  -- where decoded numbers reach the caller, they must read as before.
  it("gives the same argument text and error status as an integer-decoding parser would", function()
    local obj_args = { n = 3, big = 1e14, neg = -0.0, f = 0.5 }
    local want = json.canonical(json.decode(cjson.encode(obj_args)))
    assert.are.equal('{"big":100000000000000,"f":0.5,"n":3,"neg":0}', want)
    with_raw(function(req)
      local body
      if req.path:match("/messages$") then
        if req.body:find('"stream":true', 1, true) then
          local function ev(obj) return "event: x\ndata: " .. cjson.encode(obj) .. "\n\n" end
          return { status = 200, headers = SSE, chunks = {
            ev({ type = "message_start", message = { usage = { input_tokens = 1 } } }),
            ev({ type = "content_block_start", index = 0,
                 content_block = { type = "tool_use", id = "t1", name = "f", input = obj_args } }),
            ev({ type = "message_delta", delta = { stop_reason = "tool_use" }, usage = { output_tokens = 2 } }),
            ev({ type = "message_stop" }),
          } }
        end
        body = { content = { { type = "tool_use", id = "t1", name = "f", input = obj_args } },
                 stop_reason = "tool_use", usage = { input_tokens = 1, output_tokens = 2 } }
      elseif req.body:find('"stream":true', 1, true) then
        return { status = 200, headers = SSE, chunks = {
          sse({ error = { message = "upstream exploded", code = 503 } }) } }
      else
        body = { choices = { { finish_reason = "tool_calls", message = { role = "assistant",
          tool_calls = { { id = "c1", type = "function", ["function"] = { name = "f", arguments = obj_args } } } } } },
          usage = { prompt_tokens = 5, completion_tokens = 6, prompt_tokens_details = { cached_tokens = 2 } } }
      end
      return { status = 200, headers = { ["content-type"] = "application/json" }, body = cjson.encode(body) }
    end, function(url)
      local fast = { attempts = 1 }
      for _, case in ipairs({ { "openai", false }, { "anthropic", false }, { "anthropic", true } }) do
        local p = make(case[1], url, case[2], { retry = fast })
        local res = assert(p:complete(simple_body(p)))
        assert.are.equal(want, res.tool_calls[1].arguments)
        for _, k in ipairs({ "input", "output", "cached" }) do
          assert.are.equal("integer", math.type(res.usage[k]))
        end
      end
      local p = make("openai", url, true, { retry = fast })
      local res, err = p:complete(simple_body(p))
      assert.is_nil(res)
      assert.are.equal(503, err.status)
      assert.are.equal("integer", math.type(err.status))
    end)
  end)

  local function anthropic_stream(text)
    local function ev(name, obj) return "event: " .. name .. "\ndata: " .. cjson.encode(obj) .. "\n\n" end
    return {
      ev("message_start", { type = "message_start", message = { usage = { input_tokens = 9,
        cache_read_input_tokens = 4, output_tokens = 1 } } }),
      ev("content_block_start", { type = "content_block_start", index = 0, content_block = { type = "text", text = "" } }),
      ev("content_block_delta", { type = "content_block_delta", index = 0, delta = { type = "text_delta", text = text } }),
      ev("content_block_start", { type = "content_block_start", index = 1,
        content_block = { type = "tool_use", name = "noid", input = {} } }),
      ev("content_block_stop", { type = "content_block_stop", index = 1 }),
      ev("message_delta", { type = "message_delta", delta = { stop_reason = "max_tokens" }, usage = { output_tokens = 7 } }),
      ev("message_stop", { type = "message_stop" }),
    }
  end

  it("parses an Anthropic stream: usage from start and delta, no-argument tools, stop reasons", function()
    with_raw(function()
      return { status = 200, headers = SSE, chunks = anthropic_stream("cut") }
    end, function(url)
      local p = make("anthropic", url, true)
      local res = assert(p:complete(simple_body(p)))
      assert.are.equal("cut", res.text)
      -- input_tokens counts only the uncached part: the prompt is 9 + 4
      assert.are.same({ input = 13, output = 7, cached = 4, cache_write = 0, reasoning = 0 }, res.usage)
      assert.are.same({ { id = "call_1", name = "noid", arguments = "{}" } }, res.tool_calls)
      assert.are.equal("length", res.stop)
      assert.are.equal("max_tokens", res.stop_raw)
    end)
  end)

  it("retries an Anthropic overloaded error event that came before any text", function()
    with_raw(function(_, n)
      if n == 1 then
        return { status = 200, headers = SSE, chunks = {
          "event: error\ndata: " .. cjson.encode({ type = "error",
            error = { type = "overloaded_error", message = "Overloaded" } }) .. "\n\n",
        } }
      end
      return { status = 200, headers = SSE, chunks = anthropic_stream("fine") }
    end, function(url, reqs)
      local p = make("anthropic", url, true)
      local res = assert(p:complete(simple_body(p)))
      assert.are.equal("fine", res.text)
      assert.are.equal(2, res.attempts)
      assert.are.equal(2, #reqs)
    end)
  end)

  it("never retries once streamed text reached on_delta", function()
    local function ev(obj) return "event: x\ndata: " .. cjson.encode(obj) .. "\n\n" end
    with_raw(function()
      return { status = 200, headers = SSE, chunks = {
        ev({ type = "message_start", message = { usage = {} } }),
        ev({ type = "content_block_delta", index = 0, delta = { type = "text_delta", text = "Hel" } }),
        ev({ type = "error", error = { type = "overloaded_error", message = "Overloaded" } }),
      } }
    end, function(url, reqs)
      local p = make("anthropic", url, true)
      local res, err, deltas = complete(p, simple_body(p))
      assert.is_nil(res)
      assert.are.equal("ProviderError", err.code)
      assert.are.equal("overloaded_error", err.type)
      assert.are.same({ "Hel" }, deltas)
      assert.are.equal(1, err.attempts)
      assert.are.equal(1, #reqs)
    end)
  end)

  it("caps a stream of tool-call argument deltas with BodyTooLarge", function()
    local big = ("a"):rep(3000)
    with_raw(function()
      local chunks = { sse({ choices = { { index = 0, delta = { tool_calls = { { index = 0, id = "c",
        ["function"] = { name = "t", arguments = "" } } } } } } }) }
      for _ = 1, 3 do
        chunks[#chunks + 1] = sse({ choices = { { index = 0, delta = { tool_calls = { { index = 0,
          ["function"] = { arguments = big } } } } } } })
      end
      chunks[#chunks + 1] = "data: [DONE]\n\n"
      return { status = 200, headers = SSE, chunks = chunks }
    end, function(url)
      local p = make("openai", url, true, { max_body_bytes = 8000 })
      local res, err = p:complete(simple_body(p))
      assert.is_nil(res)
      -- The whole stream counts against max_body_bytes (the SSE parser and the
      -- tool-call assembler carry the same cap, as a second line).
      assert.are.equal("BodyTooLarge", err.code)
    end)
  end)

  -- ---------------------------------------------------------- task model

  it("lets an in-flight request be cancelled, and the loop goes on", function()
    with_mock({ replies = { { fault = "hang" } }, default = "ok" }, function(srv)
      local p = make("openai", srv.url, true)
      local t = tide.spawn(function() return p:complete(simple_body(p)) end)
      tide.sleep(50)
      t:cancel()
      local res, err = t:join()
      assert.is_nil(res)
      assert.matches("Cancelled", tostring(err))
      assert.are.equal("ok", assert(p:complete(simple_body(p))).text)
    end)
  end)

  it("lets an error raised by on_delta propagate", function()
    with_mock({ default = "hello" }, function(srv)
      local p = make("anthropic", srv.url, true)
      local ok, err = pcall(p.complete, p, simple_body(p), { on_delta = function() error("stop here", 0) end })
      assert.is_false(ok)
      assert.are.equal("stop here", err)
      assert.are.equal("hello", assert(p:complete(simple_body(p))).text)
    end)
  end)

  it("runs complete outside any task by driving the loop itself", function()
    local srv = assert(tide.testing.mock_server({ default = "blocking ok" }))
    local p = make("openai", srv.url, true)
    local res = assert(p:complete(simple_body(p)))
    srv:close()
    assert.are.equal("blocking ok", res.text)
  end)

  it("runs concurrent completions on one loop", function()
    with_mock({ default = tide.testing.echo }, function(srv)
      local p = make("anthropic", srv.url, true)
      local tasks = {}
      for i = 1, 20 do
        tasks[i] = tide.spawn(function() return p:complete(simple_body(p, "n" .. i)) end)
      end
      for i = 1, 20 do
        assert.are.equal("echo: n" .. i, tasks[i]:join().text)
      end
    end)
  end)

  -- ------------------------------------------------------------- options

  it("fills defaults from the environment and the documented constants", function()
    local o = provider.openai()
    assert.are.equal("openai", o.kind)
    assert.are.equal(os.getenv("TIDE_MODEL") ~= "" and os.getenv("TIDE_MODEL") or "gpt-4o-mini", o.model)
    local base = os.getenv("OPENAI_BASE_URL")
    assert.are.equal(base and base ~= "" and base:gsub("/+$", "") or "https://api.openai.com/v1", o.base_url)
    assert.is_true(o.stream)
    assert.are.equal(120000, o.timeout_ms)
    assert.are.equal(8 * 1024 * 1024, o.max_body_bytes)
    assert.are.same({ attempts = 4, base_ms = 250, max_ms = 8000, max_retry_after_ms = 60000 }, o.retry)
    local a = provider.anthropic({ retry = { attempts = 2 } })
    assert.are.equal("anthropic", a.kind)
    assert.are.equal(os.getenv("TIDE_MODEL") ~= "" and os.getenv("TIDE_MODEL") or "claude-sonnet-4-5", a.model)
    assert.are.equal(4096, a.max_tokens)
    assert.are.equal(2, a.retry.attempts)
    assert.are.equal(250, a.retry.base_ms)
    assert.is_true(provider.is(a))
    assert.is_false(provider.is({}))
    assert.are.equal(provider, tide.provider)
  end)

  it("raises on bad constructor options, naming the field", function()
    assert.matches("tide.provider.openai: 'model' must be a string, got number",
      raised(provider.openai, { model = 5 }))
    assert.matches("tide.provider.anthropic: 'stream' must be a boolean",
      raised(provider.anthropic, { stream = "yes" }))
    assert.matches("'max_tokens' must be an integer", raised(provider.openai, { max_tokens = 1.5 }))
    assert.matches("'timeout_ms' must be positive", raised(provider.openai, { timeout_ms = 0 }))
    assert.matches("'retry.attempts' must be a positive integer", raised(provider.openai, { retry = { attempts = 0 } }))
    assert.matches("'retry.base_ms' must be a non%-negative number", raised(provider.openai, { retry = { base_ms = -1 } }))
    assert.matches("unknown option 'retry.tries'", raised(provider.openai, { retry = { tries = 3 } }))
    assert.matches("unknown option 'modle'", raised(provider.openai, { modle = "x" }))
    assert.matches("unknown option 'prompt_cache'", raised(provider.openai, { prompt_cache = true }))
    assert.matches("'base_url' must start with http", raised(provider.openai, { base_url = "api.openai.com" }))
    assert.matches("'headers' must map strings to strings", raised(provider.openai, { headers = { x = 1 } }))
    assert.matches("options must be a table", raised(provider.openai, "gpt"))
    -- The error points at the caller's line.
    local ok, err = pcall(function() provider.openai({ model = 5 }) end)
    assert.is_false(ok)
    assert.matches("provider_spec.lua:%d+:", err)
  end)

  it("raises on misuse of the encoders and complete", function()
    local p = provider.openai({ base_url = "http://127.0.0.1:1", model = "m" })
    local a = provider.anthropic({ base_url = "http://127.0.0.1:1", model = "m" })
    assert.matches("'system' must be a string", raised(p.encode_prefix, p, 5))
    assert.matches("tools%[1%] needs a 'name' string", raised(p.encode_prefix, p, "s", { {} }))
    assert.matches("unknown message role bot", raised(p.encode_message, p, { role = "bot" }))
    assert.matches("needs a 'results' table", raised(p.encode_message, p, { role = "tool" }))
    assert.matches("tool_calls%[1%] needs 'id' and 'name'", raised(a.encode_message, a,
      { role = "assistant", tool_calls = { { name = "x" } } }))
    assert.matches("give it to encode_prefix", raised(a.encode_message, a, { role = "system", content = "s" }))
    assert.matches("encoded%[2%] must be a string", raised(p.body, p, "{", { "1", 2 }))
    assert.matches("'body' must be a string", raised(p.complete, p, nil))
    assert.matches("'on_delta' must be a function", raised(p.complete, p, "{}", { on_delta = 1 }))
    assert.matches("'timeout_ms' must be a positive integer", raised(p.complete, p, "{}", { timeout_ms = 0 }))
  end)

  it("parses Retry-After as seconds, milliseconds or an HTTP date", function()
    local now = 784111777 -- Sun, 06 Nov 1994 08:49:37 GMT
    assert.are.equal(2000, provider.retry_after_ms({ ["retry-after"] = "2" }))
    assert.are.equal(300, provider.retry_after_ms({ ["retry-after"] = " 0.3 " }))
    assert.are.equal(1500, provider.retry_after_ms({ ["retry-after-ms"] = "1500", ["retry-after"] = "9" }))
    assert.are.equal(10000, provider.retry_after_ms({ ["retry-after"] = "Sun, 06 Nov 1994 08:49:47 GMT" }, now))
    assert.are.equal(60000, provider.retry_after_ms({ ["retry-after"] = "Sunday, 06-Nov-94 08:50:37 GMT" }, now))
    assert.are.equal(5000, provider.retry_after_ms({ ["retry-after"] = "Sun Nov  6 08:49:42 1994" }, now))
    assert.are.equal(0, provider.retry_after_ms({ ["retry-after"] = "Sun, 06 Nov 1994 08:00:00 GMT" }, now))
    assert.is_nil(provider.retry_after_ms({ ["retry-after"] = "soon" }))
    assert.is_nil(provider.retry_after_ms({}))
    assert.is_nil(provider.retry_after_ms(nil))
  end)

  it("backs off with full jitter under the cap, and honours a bounded Retry-After", function()
    local r = { attempts = 4, base_ms = 100, max_ms = 1000, max_retry_after_ms = 5000 }
    for attempt = 1, 6 do
      local cap = math.min(1000, 100 * 2 ^ (attempt - 1))
      for _ = 1, 50 do
        local d = provider.backoff_ms(r, attempt)
        assert.are.equal("integer", math.type(d))
        assert.is_true(d >= 0 and d <= cap)
      end
    end
    assert.are.equal(4000, provider.backoff_ms(r, 1, 4000))
    assert.is_true(provider.backoff_ms(r, 1, 9000) <= 100) -- too long: ignored
    assert.are.equal(0, provider.backoff_ms({ base_ms = 0, max_ms = 0, max_retry_after_ms = 0 }, 3))
  end)
end)
