-- The HTTP client against the loopback mock server.
local tide = require "tide"
local core = require "tide.core"
local helpers = require "helpers"

describe("tide.http", function()
  local srv
  before_each(function()
    srv = assert(require("tide.testing.server").listen {
      handler = function(req)
        local path = req.path
        if path == "/echo" then
          return { status = 200, headers = { ["content-type"] = "text/plain", ["x-method"] = req.method,
            ["x-seen"] = req.headers["x-test"] or "none" }, body = req.body }
        elseif path == "/big" then
          return { status = 200, body = string.rep("b", 200000) }
        elseif path == "/slow" then
          return { status = 200, body = "late", delay_ms = 2000 }
        elseif path == "/cut" then
          return { status = 200, body = string.rep("c", 10000), drop_after = 1 }
        elseif path == "/stream" then
          return { status = 200, chunks = { "one ", "two ", "three" }, chunk_delay_ms = 5 }
        elseif path == "/sse" then
          -- white space alone first: held until the first significant byte
          return { status = 200, chunk_delay_ms = 5, chunks = { "\n",
            'data: {"choices":[{"delta":{"content":"he"}}]}\n\n',
            'data: {"choices":[{"delta":{"content":"llo"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n' } }
        elseif path == "/sse-json" then
          return { status = 200, chunk_delay_ms = 5, chunks = { "  ", '{"choices":', '[]}' } }
        elseif path == "/sse-bad" then
          return { status = 200, chunks = { 'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {nope\n\n' } }
        elseif path == "/sse-cut" then
          return { status = 200, chunk_delay_ms = 5, drop_after = 1,
            chunks = { 'data: {"choices":[{"delta":{"content":"a"}}]}\n\n', "data: [DONE]\n\n" } }
        elseif path == "/status" then
          return { status = 503, headers = { ["retry-after"] = "2" }, body = "busy" }
        end
        return { status = 404, body = "no" }
      end,
    })
  end)
  after_each(function()
    srv:close()
    helpers.assert_quiet()
  end)
  local function url(p) return ("http://127.0.0.1:%d%s"):format(srv:port(), p) end

  it("sends a request and returns status, lowercased headers and body", function()
    local res = tide.http.request { method = "POST", url = url("/echo"), body = "ping",
      headers = { ["X-Test"] = "1" } }
    assert.are.equal(200, res.status)
    assert.are.equal("ping", res.body)
    assert.are.equal("POST", res.headers["x-method"])
    assert.is_number(res.timing.total_ms)
    local res2 = tide.http.request { method = "PUT", url = url("/echo"), body = "put" }
    assert.are.equal("PUT", res2.headers["x-method"])
    assert.are.equal("put", res2.body)
  end)

  it("sends prepared headers, and carries no option of one request over to the next", function()
    local h = core.http_headers { ["X-Test"] = "prepared", ["content-type"] = "text/plain" }
    local seen = tide.run(function()
      local out = {}
      local function send(opts)
        local req <close> = core.http_request(opts)
        local kind, res = req:next()
        if kind == nil and res.code == "Timeout" then out[#out + 1] = res.code return end
        assert(kind == "done", tostring(res and res.message))
        local head = core.http_parse_headers(res.headers_raw)
        out[#out + 1] = ("%s %s %s [%s]"):format(res.status, head["x-method"] or "-",
          head["x-seen"] or "-", res.body)
      end
      -- the same pooled handle serves all of these, one after the other
      send { url = url("/echo"), headers = h, body = "one" }
      send { url = url("/echo"), headers = h, body = "two" }
      send { url = url("/echo"), method = "GET" }
      send { url = url("/echo"), method = "HEAD", headers = { ["X-Test"] = "table" } }
      send { url = url("/echo"), body = "three", headers = { ["X-Test"] = "table" } }
      send { url = url("/echo"), method = "PUT", body = "four" }
      send { url = url("/echo"), headers = h, body = "five" }
      -- a plain POST's handle keeps the options all plain POSTs share; one
      -- that is not plain (a connect timeout of its own) resets it first
      send { url = url("/echo"), headers = h, body = "six", connect_timeout_ms = 1000 }
      send { url = url("/echo"), headers = h, body = "seven" }
      send { url = url("/slow"), headers = h, body = "eight", timeout_ms = 50 }
      send { url = url("/echo"), headers = h, body = "nine" }
      return out
    end)
    assert.are.same({
      "200 POST prepared [one]", "200 POST prepared [two]", "200 GET none []", "200 HEAD table []",
      "200 POST table [three]", "200 PUT none [four]", "200 POST prepared [five]",
      "200 POST prepared [six]", "200 POST prepared [seven]", "Timeout", "200 POST prepared [nine]",
    }, seen)
    assert.has_error(function() core.http_headers { ["x-n"] = {} } end,
      "bad field 'headers' (names and values must be strings)")
    assert.has_error(function() core.http_request { url = url("/echo"), headers = io.stdout } end,
      "bad field 'headers' (table or core.http_headers expected, got userdata)")
    -- the provider's hot path: a POST with prepared headers, no options table
    local got, failed = tide.run(function()
      local req <close> = core.http_post(url("/echo"), h, "six", 5000, 1024, false)
      local r = table.pack(req:next())
      r.body = req:body()
      local req2 <close> = core.http_post(url("/status"), h, "x", 5000, 1024, false)
      local r2 = table.pack(req2:next())
      r2.body, r2.head = req2:body(), req2:headers_raw()
      return r, r2
    end)
    -- a lean result: "done", the status and the time to first byte; the
    -- body and headers stay in the request, for the asking
    assert.are.equal(3, got.n)
    assert.are.equal("done", got[1])
    assert.are.equal(200, got[2])
    assert.is_number(got[3])
    assert.are.equal("six", got.body)
    assert.are.equal(503, failed[2])
    assert.are.equal("busy", failed.body)
    assert.are.equal("2", core.http_parse_headers(failed.head)["retry-after"])
    -- and a reply is parsed where it is, without a string of it
    local parsed = tide.run(function()
      local req <close> = core.http_post(url("/echo"), h,
        '{"choices":[{"message":{"content":"in place"},"finish_reason":"stop"}]}', 5000, 1024, false)
      req:next()
      return core.openai_parse(req)
    end)
    assert.are.equal("in place", parsed.text)
    assert.are.equal("stop", parsed.stop)
    assert.has_error(function() core.openai_parse(h) end,
      "bad argument #1 to 'openai_parse' (string or http request expected, got tide.http_headers)")
    assert.has_error(function() core.http_post(url("/echo"), {}, "b", 1, 1) end,
      "bad argument #2 to 'http_post' (tide.http_headers expected, got table)")
    -- types are told apart by their metatables' tags: another of tide's, or
    -- anyone else's userdata, is not the one asked for
    assert.has_error(function() core.http_post(url("/echo"), core.wire(), "b", 1, 1) end,
      "bad argument #2 to 'http_post' (tide.http_headers expected, got tide.wire)")
    assert.has_error(function() core.http_post(url("/echo"), io.stdout, "b", 1, 1) end,
      "bad argument #2 to 'http_post' (tide.http_headers expected, got FILE*)")
    assert.has_error(function() core.http_post(url("/echo"), h, "[", 1, 1, false, io.stdout) end,
      "bad argument #7 to 'http_post' (table expected, got FILE*)")
    assert.has_error(function() core.http_post(url("/echo"), h, "b", -1, 1) end,
      "bad argument #4 to 'http_post' (timeout_ms must be >= 0)")
  end)

  it("joins a wire list into the body it posts, and reuses finished requests cleanly", function()
    local h = core.http_headers { ["X-Test"] = "wire" }
    local bodies = tide.run(function()
      local out = {}
      local function post(body, wire, path)
        local req <close> = core.http_post(url(path or "/echo"), h, body, 5000, 1024 * 1024, false, wire)
        local kind = req:next()
        assert.are.equal("done", kind)
        out[#out + 1] = req:body()
      end
      post('{"m":[', { '{"a":1}', '{"b":2}' })
      post('{"x":1,"m":[', { '"only"' })
      post('{"m":[', {}) -- nothing after the prefix
      post("{}", nil) -- a plain body: the wire list is optional
      post("", nil, "/big") -- a large reply, then a small one on the request it leaves behind
      post('{"m":[', { '"after big"' })
      local w = core.wire()
      w:add('{"a":1}')
      w:add('{"b":2}')
      post('{"m":[{"s":0}', w) -- a session's wire: the same join
      return out
    end)
    assert.are.same({
      '{"m":[{"a":1},{"b":2}]}', '{"x":1,"m":["only"]}', '{"m":[]}', "{}", string.rep("b", 200000),
      '{"m":["after big"]}', '{"m":[{"s":0},{"a":1},{"b":2}]}',
    }, bodies)
    -- the same join as core.join_wire
    assert.are.equal(core.join_wire('{"m":[', { '{"a":1}', '{"b":2}' }), bodies[1])
    assert.has_error(function() core.http_post(url("/echo"), h, "[", 1000, 1, false, { "a", 5 }) end,
      "bad argument #7 to 'http_post' (entry 2 is a number, not a string)")
    assert.has_error(function() core.http_post(url("/echo"), h, "[", 1000, 1, false, "a") end,
      "bad argument #7 to 'http_post' (table expected, got string)")
  end)

  it("lets go of a kept-alive connection the server closes between requests", function()
    local other = assert(require("tide.testing.server").listen { handler = function() return { status = 200, body = "other" } end })
    local first, again, second = tide.run(function()
      local gone = url("/echo")
      local a = tide.http.request { url = gone, method = "POST", body = "a" }
      local stirred = core.http_stats().idle_stirred
      srv:close() -- the idle connection sees the server hang up
      tide.sleep(20)
      assert.are.equal(stirred + 1, core.http_stats().idle_stirred) -- and stops watching it
      local _, err = tide.http.request { url = gone, method = "POST", body = "b" }
      local b = tide.http.request { url = ("http://127.0.0.1:%d/"):format(other:port()) }
      return a.body, err and err.code, b.body
    end) -- returns: an idle watcher keeps no loop running
    other:close()
    assert.are.equal("a", first)
    assert.are.equal("ConnectFailed", again)
    assert.are.equal("other", second)
    assert.are.equal(0, core.http_stats().active)
  end)

  it("returns non-2xx statuses as responses, not errors", function()
    local res = tide.http.request { url = url("/status") }
    assert.are.equal(503, res.status)
    assert.are.equal("2", res.headers["retry-after"])
  end)

  it("completes 1,000 concurrent requests over reused connections", function()
    local before = core.http_stats()
    local results = tide.run(function()
      local tasks = {}
      for i = 1, 1000 do
        tasks[i] = tide.spawn(function()
          local res, err = tide.http.request { method = "POST", url = url("/echo"), body = "n" .. i }
          return res and res.body, err
        end)
      end
      local out = {}
      for i = 1, 1000 do out[i] = tasks[i]:join() end
      -- a second wave rides on the connections of the first
      local mid = core.http_stats().connections
      local again = {}
      for i = 1, 1000 do
        again[i] = tide.spawn(function()
          return tide.http.request { method = "POST", url = url("/echo"), body = "m" .. i }
        end)
      end
      for i = 1, 1000 do assert.are.equal("m" .. i, again[i]:join().body) end
      assert.are.equal(mid, core.http_stats().connections, "the second wave opened connections")
      return out
    end)
    for i = 1, 1000 do assert.are.equal("n" .. i, results[i]) end
    local after = core.http_stats()
    assert.are.equal(2000, after.requests - before.requests)
    local opened = after.connections - before.connections
    assert.is_true(opened <= 1000, "opened " .. opened .. " connections for 2,000 requests")
  end)

  it("streams a body through on_data", function()
    local chunks = {}
    local res = tide.http.request { url = url("/stream"), on_data = function(c) chunks[#chunks + 1] = c end }
    assert.are.equal(200, res.status)
    assert.are.equal("", res.body)
    assert.are.equal("one two three", table.concat(chunks))
  end)

  it("pumps an event stream into a C parser, and hands back what is not one", function()
    local h = core.http_headers { ["content-type"] = "application/json" }
    local out = tide.run(function()
      local function post(path) return core.http_post(url(path), h, "{}", 5000, 1024 * 1024, true) end
      local function parser_for() return core.openai_stream(1024 * 1024) end
      local r = {}
      -- an event stream: every chunk goes to the parser, the end comes back
      do
        local req <close> = post("/sse")
        local parser <close> = parser_for()
        local kind, status, ttfb = req:pump(parser)
        local reply = assert(parser:finish())
        r.sse = { kind, status, type(ttfb), reply.text, reply.stop }
      end
      -- a JSON body on a streamed request: handed back whole, for next()
      do
        local req <close> = post("/sse-json")
        local parser <close> = parser_for()
        local kind, chunk = req:pump(parser)
        local rest = {}
        while true do
          local k, v = req:next()
          if k ~= "data" then r.json_end = { k, v } break end
          rest[#rest + 1] = v
        end
        r.json = { kind, chunk .. table.concat(rest) }
      end
      -- a stream the parser rejects: its error, and the parser keeps it
      do
        local req <close> = post("/sse-bad")
        local parser <close> = parser_for()
        local kind, err = req:pump(parser)
        local _, again = parser:finish()
        r.bad = { kind, err.code, err.message:match("not valid JSON") ~= nil, again.code }
      end
      -- a transfer cut after some of the stream: its error, and that bytes were fed
      do
        local req <close> = post("/sse-cut")
        local parser <close> = parser_for()
        r.cut = { req:pump(parser) }
        r.cut[2] = r.cut[2].code
      end
      -- a failure status: its body stays in the request for the caller
      do
        local req <close> = post("/status")
        local parser <close> = parser_for()
        local kind, status = req:pump(parser)
        r.status = { kind, status, req:body() }
      end
      return r
    end)
    assert.are.same({ "done", 200, "number", "hello", "stop" }, out.sse)
    assert.are.same({ "data", '  {"choices":[]}' }, out.json)
    assert.are.same({ "done", 200 }, { out.json_end[1], out.json_end[2] })
    assert.are.same({ "fail", "MalformedResponse", true, "MalformedResponse" }, out.bad)
    assert.are.same({ nil, "ConnectionClosed", true }, out.cut)
    assert.are.same({ "done", 503, "busy" }, out.status)
  end)

  it("gives each failure a distinct stable code and stays usable", function()
    -- a port nobody listens on
    local probe = assert(require("tide.testing.server").listen { handler = function() return { status = 200 } end })
    local dead = probe:port()
    probe:close()
    local cases = {
      { { url = ("http://127.0.0.1:%d/"):format(dead) }, "ConnectFailed" },
      { { url = url("/slow"), timeout_ms = 50 }, "Timeout" },
      { { url = url("/big"), max_body_bytes = 1000 }, "BodyTooLarge" },
      { { url = url("/cut") }, "ConnectionClosed" },
      { { url = "nope://x" }, "BadURL" },
    }
    local seen = {}
    for _, c in ipairs(cases) do
      local res, err = tide.http.request(c[1])
      assert.is_nil(res)
      assert.are.equal(c[2], err.code)
      assert.is_string(err.message)
      assert.are.equal(c[2] .. ": " .. err.message, tostring(err))
      -- a body announced past the cap stops at its headers, saying which cap
      if c[2] == "BodyTooLarge" then assert.matches("exceeds max_body_bytes %(1000%)", err.message) end
      seen[err.code] = true
      -- the loop still works after each failure
      assert.are.equal("ok", tide.http.request { method = "POST", url = url("/echo"), body = "ok" }.body)
    end
    local n = 0
    for _ in pairs(seen) do n = n + 1 end
    assert.are.equal(#cases, n)
  end)

  it("caps a streamed body too", function()
    local res, err = tide.http.request { url = url("/big"), max_body_bytes = 5000, on_data = function() end }
    assert.is_nil(res)
    assert.are.equal("BodyTooLarge", err.code)
  end)

  it("is cancelled with its task and leaves no transfer behind", function()
    local _, err = tide.run(function()
      local t = tide.spawn(function() return tide.http.request { url = url("/slow") } end)
      tide.sleep(20)
      assert.are.equal(1, core.http_stats().active)
      t:cancel()
      return t:join()
    end)
    assert.are.equal("Cancelled", err.code)
    assert.are.equal(0, core.http_stats().active)
  end)

  it("raises on wrong argument types, naming the argument", function()
    assert.has_error(function() tide.http.request("http://x") end,
      "bad argument #1 to 'request' (table expected, got string)")
    assert.has_error(function() tide.http.request { url = url("/echo"), body = 5 } end,
      "bad argument #1 to 'request' (field 'body' must be a string, got number)")
    assert.has_error(function() tide.http.request { url = url("/echo"), headers = "x" } end,
      "bad argument #1 to 'request' (field 'headers' must be a table, got string)")
    assert.has_error(function() tide.http.request { method = "GET" } end,
      "bad argument #1 to 'request' (field 'url' is required)")
    assert.has_error(function() tide.http.request { url = url("/echo"), on_data = "f" } end,
      "bad argument #1 to 'request' (field 'on_data' must be a function, got string)")
  end)
end)

-- Runs Lua source `src` as a process of its own on this build, after the
-- shell words `prefix` (a ulimit, env assignments); returns what it printed.
local function run_process(prefix, src)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(src)
  f:close()
  local build = os.getenv("TIDE_BUILD_DIR") or "build"
  local p = io.popen(("%s LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' ASAN_OPTIONS=detect_leaks=0 lua5.4 %s 2>&1")
    :format(prefix, build, script))
  local out = p:read("a")
  p:close()
  os.remove(script)
  return out
end

describe("tide.http out of file descriptors", function()
  it("fails with FdLimit, not a vague connect error", function()
    local out = run_process("ulimit -n 100;", [[
local tide = require "tide"
local core = require "tide.core"
require "tide.http" -- loaded before the descriptors run out
local srv = assert(require("tide.testing.server").listen { handler = function() return { status = 200, body = "x", delay_ms = 100 } end })
local url = ("http://127.0.0.1:%d/"):format(srv:port())
local seen = {}
tide.run(function()
  local ts = {}
  for i = 1, 150 do ts[i] = tide.spawn(function() local r, e = tide.http.request { url = url }; return r and "ok" or e.code end) end
  for i = 1, 150 do seen[ts[i]:join()] = true end
end)
srv:close()
io.write(seen.FdLimit and "FdLimit" or "none", seen.ok and " ok" or "")
]])
    assert.matches("FdLimit", out)
  end)
end)

describe("tide.http and the proxy variables", function()
  -- The variables are read when HTTP starts in a process: each case runs in
  -- a process of its own, whose proxy (a loopback server) answers for any
  -- host.
  local function run(env)
    local probe = assert(require("tide.testing.server").listen { handler = function() return { status = 200 } end })
    local port = probe:port()
    probe:close()
    return run_process("env " .. env:gsub("PORT", tostring(port)), ([[
local tide = require "tide"
local core = require "tide.core"
local srv = assert(require("tide.testing.server").listen { port = %d, handler = function(req)
  return { status = 200, body = "proxy saw " .. req.path }
end })
local direct = assert(require("tide.testing.server").listen { handler = function() return { status = 200, body = "direct" } end })
local a, aerr = tide.http.request { url = "http://upstream.invalid/x" }
local b = tide.http.request { url = ("http://127.0.0.1:%%d/y"):format(direct:port()) }
srv:close()
direct:close()
io.write(a and a.body or aerr.code, " | ", b and b.body or "failed")
]]):format(port))
  end

  it("sends through the proxy they name, and past it for the hosts of no_proxy", function()
    local out = run("http_proxy=http://127.0.0.1:PORT no_proxy=127.0.0.1")
    assert.matches("^proxy saw http://upstream.invalid/x | direct$", out)
  end)

  it("connects directly when none is set", function()
    local out = run("-u http_proxy -u HTTP_PROXY -u all_proxy -u ALL_PROXY -u https_proxy -u HTTPS_PROXY")
    assert.matches("^ResolveFailed | direct$", out)
  end)
end)
