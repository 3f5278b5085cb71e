-- MCP sources: child processes on the loop, the protocol against a scripted
-- Lua server (spec/support/mcp_server.lua) for every bad case, and the real
-- npm servers (@modelcontextprotocol/server-everything over stdio and
-- Streamable HTTP, server-filesystem) that `./dev test` installs.
local tide = require "tide"
local core = require "tide.core"
local testing = require "tide.testing"
local cache = require "tide.integrations.cache"
local helpers = require "helpers"

local SCRIPT = "spec/support/mcp_server.lua"
local NPM = os.getenv("TIDE_NPM_DIR") or ((os.getenv("HOME") or "/tmp") .. "/.cache/tide-npm")
local EVERYTHING = NPM .. "/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
local FILESYSTEM = NPM .. "/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js"

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

local function scripted(mode, extra)
  local opts = { name = "scripted", command = { "lua5.4", SCRIPT, mode or "normal" }, timeout_ms = 2000,
    env = { LUA_PATH = package.path, LUA_CPATH = package.cpath } }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return tide.integrations.mcp(opts)
end

-- Counted through /proc with core.scandir: no helper process (under the
-- sanitizers a preloaded ps can hang in its leak check).
local function fds()
  return #assert(core.scandir("/proc/self/fd"))
end

local function children()
  local me = io.open("/proc/self/stat"):read("n")
  local n = 0
  for _, name in ipairs(assert(core.scandir("/proc"))) do
    if name:match("^%d+$") then
      local f = io.open("/proc/" .. name .. "/stat")
      local st = f and f:read("a")
      if f then f:close() end
      local ppid = st and st:match("%) %S+ (%d+)")
      if ppid and tonumber(ppid) == me then n = n + 1 end
    end
  end
  return n
end

describe("core.process_spawn", function()
  after_each(function() helpers.assert_quiet() end)

  it("writes stdin, reads stdout lines, keeps stderr, closes with SIGTERM", function()
    helpers.run(function()
      local p = assert(core.process_spawn { argv = { "/bin/sh", "-c", "echo hi; echo oops >&2; read x; echo got:$x; sleep 30" } })
      assert.are.equal("hi", p:read_line(2000))
      assert(p:write("abc\n"))
      assert.are.equal("got:abc", p:read_line(2000))
      local line, err = p:read_line(50)
      assert.is_nil(line)
      assert.are.equal("Timeout", err.code)
      assert.matches("oops", p:stderr())
      local code, sig = p:close(500)
      assert.are.equal(0, code)
      assert.are.equal(15, sig)
      assert.has_error(function() p:write("x") end, "attempt to use a closed process")
    end)
  end)

  it("reports exit, failure to start and over-long lines", function()
    helpers.run(function()
      local p = assert(core.process_spawn { argv = { "/bin/sh", "-c", "printf 'last'; exit 3" } })
      assert.are.equal("last", p:read_line(2000))
      assert.is_nil(p:read_line(2000))
      assert.are.same({ 3, 0 }, { p:wait(2000) })
      p:close()
      local q, err = core.process_spawn { argv = { "/nonexistent/program" } }
      assert.is_nil(q)
      assert.are.equal("SpawnFailed", err.code)
      local big = assert(core.process_spawn { argv = { "/bin/sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x; echo" },
        max_line = 1000 })
      local line, lerr = big:read_line(2000)
      assert.is_nil(line)
      assert.are.equal("StreamTooLarge", lerr.code)
      big:close()
    end)
  end)

  it("an idle reader does not keep tide.run alive, and a dropped process is reaped", function()
    local before = children()
    local t0 = core.now()
    helpers.run(function()
      local p = assert(core.process_spawn { argv = { "/bin/sleep", "30" } })
      p:hold(false)
      tide.spawn(function() p:read_line() end)
    end)
    assert.is_true(core.now() - t0 < 5000)
    collectgarbage()
    collectgarbage()
    helpers.run(function() tide.sleep(20) end)
    assert.are.equal(before, children())
  end)
end)

describe("tide.integrations.mcp against a scripted server", function()
  before_each(function() cache.invalidate_all() end)
  after_each(function() helpers.assert_quiet() end)

  it("checks its options and has a stable identity", function()
    local a, b = scripted(), scripted()
    assert.are.equal("mcp", a.kind)
    assert.are.equal(a:identity(), b:identity())
    assert.matches("^mcp|scripted|", a:identity())
    assert.has_error(function() tide.integrations.mcp { name = "x" } end)
    assert.has_error(function() tide.integrations.mcp { name = "bad name", command = { "x" } } end)
    assert.has_error(function() tide.integrations.mcp { name = "x", url = "ftp://x" } end)
    assert.has_error(function() tide.integrations.mcp { name = "x", command = { "x" }, bogus = 1 } end)
  end)

  it("initializes, lists every page of tools and calls them", function()
    local src = scripted()
    local tks = assert(src:fetch())
    assert.are.equal(1, #tks)
    local tk = tks[1]
    assert.are.equal("scripted", tk.slug)
    assert.is_true(tk.connected)
    assert.are.equal("client asked 2025-11-25", tk.description)
    local names = {}
    for _, t in ipairs(tk.tools) do names[#names + 1] = t.name end
    assert.are.same({ "echo", "add", "fail", "slow", "tags", "seen", "changed", "ping", "delete", "sample",
      "client_caps", "roots", "elicit", "meta" }, names)
    -- a source without sampling declares no capability
    assert.are.equal("{}", src:execute("client_caps", {}))
    assert.is_true(tk.tools[9].destructive)
    assert.is_nil(tk.tools[1].destructive)
    assert.are.same({ "text" }, tk.tools[1].parameters.required)
    assert.are.equal("hi", src:execute("echo", { text = "hi" }))
    assert.are.equal('{"sum":3}', src:execute("add", { a = 1, b = 2 }))
    assert.are.same({ type = "object", properties = { sum = { type = "number" } }, required = { "sum" } },
      tk.tools[2].output_schema)
    -- a structured result checked against the tool's output schema, as the specification asks of clients
    local r, err = src:execute("add", { a = 1, b = 2, broken = "shape" })
    assert.is_nil(r)
    assert.are.equal("ToolError", err.code)
    assert.are.equal("MCP tool scripted/add gave a structured result that does not match its output schema: "
      .. "#/sum: expected number, got string", err.message)
    r, err = src:execute("add", { a = 1, b = 2, broken = "text" })
    assert.is_nil(r)
    assert.are.equal("MCP tool scripted/add declares an output schema but gave no structured content", err.message)
    -- (another process, which took the tools from the shared cache, checks alike)
    local cache = require "tide.integrations.cache"
    local other = scripted()
    cache.get(src)
    r, err = other:execute("add", { a = 1, b = 2, broken = "shape" })
    assert.matches("does not match its output schema", err.message, 1, true)
    other:close()
    r, err = src:execute("fail", {})
    assert.is_nil(r)
    assert.are.equal("ToolError", err.code)
    assert.are.equal("it broke", err.message)
    r, err = src:execute("nope", {})
    assert.are.equal("ToolError", err.code)
    assert.matches("Unknown tool", err.message)
    -- [] stays [] (by the schema for a table, verbatim for JSON text)
    assert.are.equal('{"tags":[]}', src:execute("tags", { tags = {} }))
    assert.are.equal('{"tags": []}', src:execute("tags", '{"tags":\n[]}'))
    -- the server's ping is answered
    assert.matches('"result":{}', src:execute("ping", {}))
    assert.are.equal(1, src.spawns)
    src:close()
  end)

  it("accepts an older protocol the server answers with, refuses an unknown one", function()
    local old = scripted("old")
    assert.are.equal("hi", old:execute("echo", { text = "hi" }))
    assert.are.equal("2025-03-26", old.conn.protocol)
    old:close()
    local bad = scripted("ancient")
    local r, err = bad:execute("echo", { text = "hi" })
    assert.is_nil(r)
    assert.matches("2024%-01%-01", err.message)
  end)

  it("sends notifications/cancelled for a cancelled and a timed-out call", function()
    local src = scripted(nil, { timeout_ms = 200 })
    helpers.run(function()
      local t = tide.spawn(function() return src:execute("slow", {}) end)
      tide.sleep(100)
      t:cancel()
      local _, err = t:join()
      assert.are.equal("Cancelled", err.code)
      local r, terr = src:execute("slow", {})
      assert.is_nil(r)
      assert.are.equal("ToolError", terr.code)
      assert.matches("did not answer tools/call within 200 ms", terr.message)
      local seen = assert(src:execute("seen", {}))
      local _, n = seen:gsub("notifications/cancelled", "")
      assert.are.equal(2, n)
      assert.matches("notifications/initialized", seen)
    end)
    src:close()
  end)

  it("drops its cache entry on notifications/tools/list_changed", function()
    local src = scripted()
    assert(cache.get(src))
    assert.is_table(cache.peek(src))
    assert.are.equal("changed", src:execute("changed", {}))
    assert.is_nil(cache.peek(src))
    assert.are.equal(1, src.list_changes)
    src:close()
  end)

  it("fails the call in flight when the server dies, then starts it again", function()
    local src = scripted("die_on_call")
    local r, err = src:execute("echo", { text = "x" })
    assert.is_nil(r)
    assert.are.equal("ToolError", err.code)
    assert.matches("exited with status 3", err.message)
    assert.matches("crashed on purpose", err.message)
    r, err = src:execute("echo", { text = "x" })
    assert.is_nil(r)
    assert.are.equal(2, src.spawns)
    src:close()
  end)

  it("meets bad servers with clear errors, caches nothing and leaks nothing", function()
    local fd0, kids0 = fds(), children()
    for _, case in ipairs {
      { "garbage", "non%-JSON%-RPC output" }, { "wrong_id", "unknown request id" },
      { "silent", "did not answer" }, { "huge", "line over" }, { "exit_init", "could not be initialized" },
    } do
      local src = scripted(case[1], { timeout_ms = 300 })
      local r, err = src:execute("echo", { text = "x" })
      assert.is_nil(r, case[1])
      assert.are.equal("ToolError", err.code, case[1])
      assert.matches(case[2], err.message)
      src:close()
      -- a listing fails as IntegrationsUnavailable and is not cached
      if case[1] == "exit_init" then
        local snap, cerr = cache.get(src)
        assert.is_nil(snap)
        assert.are.equal("IntegrationsUnavailable", cerr.code)
        assert.is_nil(cache.peek(src))
        src:close()
      end
    end
    collectgarbage()
    assert.are.equal(fd0, fds())
    assert.are.equal(kids0, children())
  end)

  it("ends a server it was still initializing when the task asking is cancelled", function()
    local kids0 = children()
    tide.run(function()
      local src = tide.integrations.mcp { name = "mute", command = { "sleep", "30" }, timeout_ms = 20000 }
      local t = tide.spawn(function() return src:fetch() end)
      tide.sleep(200)
      assert.are.equal(kids0 + 1, children())
      t:cancel()
      local ok, err = t:join()
      assert.is_nil(ok)
      assert.are.equal("Cancelled", err.code)
      tide.sleep(400) -- (its close's grace, and the reaping)
      assert.are.equal(kids0, children())
    end)
  end)

  it("shapes a call's arguments by the schema another object of its identity listed", function()
    local a, b = scripted(), scripted()
    assert(cache.get(a)) -- a lists the tools; b never does
    local out = assert(b:execute("tags", { tags = {} }))
    assert.matches('"tags":%[%]', out)
    a:close()
    b:close()
  end)

  describe("in sessions", function()
    local srv
    after_each(function() if srv then srv:close() end end)

    it("a warm session makes no MCP request before its first model call; delegation calls the tool", function()
      local src = scripted()
      assert(cache.get(src))
      local before = src.requests
      local model_saw_requests
      srv = testing.mock_server { default = function(req)
        model_saw_requests = model_saw_requests or src.requests
        local msgs = req.json.messages
        local last = msgs[#msgs]
        if last.role == "tool" then return "done: " .. last.content end
        if msgs[1].content:find("You delegate", 1, true) then
          return { tool_calls = { { id = "d1", name = "delegate_scripted", arguments = { task = "echo hello" } } } }
        end
        return { tool_calls = { { id = "e1", name = "echo", arguments = { text = "hello from mcp" } } } }
      end }
      local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
      tide.agent { id = "mcp_orch", prompt = "You delegate.", subagents = { { toolkits = "*" } } }
      local s = tide.session { agent = "mcp_orch", provider = p, integrations = src }
      assert.is_true(s:stats().prewarmed)
      assert.are.equal(before, src.requests)
      assert.are.equal("done: done: hello from mcp", s:turn("go"))
      assert.are.equal(before, model_saw_requests)
      assert.are.equal(before + 1, src.requests) -- the one tools/call
      s:close()
      src:close()
    end)
  end)
end)

local have_npm = exists(EVERYTHING) and exists(FILESYSTEM)
local describe_npm = have_npm and describe or pending

describe_npm("tide.integrations.mcp against the real npm servers", function()
  before_each(function() cache.invalidate_all() end)
  after_each(function() helpers.assert_quiet() end)

  local function tool_names(src)
    local tks = assert(src:fetch())
    local set = {}
    for _, t in ipairs(tks[1].tools) do set[t.name] = t end
    return set
  end

  it("server-everything over stdio", function()
    local src = tide.integrations.mcp { name = "everything", command = { "node", EVERYTHING, "stdio" }, timeout_ms = 20000 }
    local tools = tool_names(src)
    assert.is_table(tools.echo)
    assert.are.equal("Echo: hello", src:execute("echo", { message = "hello" }))
    assert.matches("5", src:execute("get-sum", { a = 2, b = 3 }))
    -- an image result: text and image parts in order, for the model to see
    local parts = src:execute("get-tiny-image", {})
    assert.are.equal("Here's the image you requested:", parts[1])
    assert.are.equal("image", parts[2].type)
    assert.are.equal("image/png", parts[2].mime)
    assert.are.equal("iVBORw0KGgo", parts[2].data:sub(1, 11))
    assert.are.equal("The image above is the MCP logo.", parts[3])
    assert.is_true(require("tide.content").is_tool_parts(parts))
    assert.matches("2025%-11%-25", src.conn.protocol)
    src:close()
  end)

  it("server-filesystem over stdio", function()
    local dir = helpers.tmpdir()
    helpers.write(dir .. "/a.txt", "alpha")
    local src = tide.integrations.mcp { name = "files", command = { "node", FILESYSTEM, dir }, timeout_ms = 20000 }
    local tools = tool_names(src)
    assert.is_table(tools.read_text_file or tools.read_file)
    assert.are.equal("alpha", src:execute(tools.read_text_file and "read_text_file" or "read_file",
      { path = dir .. "/a.txt" }))
    local r, err = src:execute("read_text_file", { path = "/etc/passwd" })
    assert.is_nil(r)
    assert.are.equal("ToolError", err.code)
    src:close()
    helpers.rmdir(dir)
  end)

  it("server-everything over Streamable HTTP", function()
    helpers.run(function()
      -- The server takes its port from PORT and cannot be asked for any free
      -- one: a port below the kernel's ephemeral range (32768 up), which no
      -- outgoing connection takes, and another if something listens there.
      local proc, port
      for _ = 1, 5 do
        port = 20000 + math.random(0, 12000)
        proc = assert(core.process_spawn { argv = { "node", EVERYTHING, "streamableHttp" },
          env = { PATH = os.getenv("PATH"), HOME = os.getenv("HOME"), PORT = tostring(port) } })
        helpers.wait_until(function() return proc:stderr():find("listening", 1, true) ~= nil or proc:status() end,
          "the HTTP server to listen", 20000)
        if not proc:status() then break end
        proc:close(2000)
      end
      assert(not proc:status(), "the HTTP server did not start: " .. proc:stderr())
      local src = tide.integrations.mcp { name = "remote", url = ("http://127.0.0.1:%d/mcp"):format(port), timeout_ms = 20000 }
      local tools = tool_names(src)
      assert.is_table(tools.echo)
      assert.is_string(src.conn.session_id)
      assert.are.equal("Echo: over http", src:execute("echo", { message = "over http" }))
      assert.are.equal("2025-11-25", src.conn.protocol)
      src:close()
      proc:close(2000)
    end)
  end)
end)

describe("tide.integrations.mcp over Streamable HTTP, scripted", function()
  local cjson = require "cjson"
  local tide = require "tide"

  -- A Streamable HTTP server on loopback that forgets its sessions on
  -- demand (a restart): a request with a session it does not know gets 404,
  -- as the transport specifies.
  local function server(opts)
    opts = opts or {}
    local sessions, n, log = {}, 0, {}
    local srv = assert(require("tide.testing.server").listen { handler = function(req)
      local sid = req.headers["mcp-session-id"]
      -- (FastMCP's way: the endpoint is /mcp/, and /mcp redirects there)
      if opts.redirect and req.path == "/mcp" then
        return { status = 307, headers = { location = opts.redirect } }
      end
      if req.method == "DELETE" then -- the client ends its session
        log[#log + 1] = { method = "DELETE", sid = sid }
        sessions[sid or ""] = nil
        return { status = 200 }
      end
      local msg = cjson.decode(req.body)
      log[#log + 1] = { method = msg.method, sid = sid, version = req.headers["mcp-protocol-version"], body = req.body,
        path = req.path }
      if msg.method == "initialize" then
        n = n + 1
        local id = "s" .. n
        sessions[id] = true
        return { status = 200, headers = { ["content-type"] = "application/json", ["mcp-session-id"] = id },
          body = cjson.encode { jsonrpc = "2.0", id = msg.id, result = { protocolVersion = opts.version or "2025-11-25",
            capabilities = { tools = {} }, serverInfo = { name = "scripted-http", version = "1" } } } }
      end
      if not sid or not sessions[sid] then return { status = 404, body = "unknown session" } end
      if opts.echo_auth and msg.method == "tools/call" then
        return { status = 401, body = "rejected authorization: " .. tostring(req.headers["authorization"]) }
      end
      if msg.id == nil then return { status = 202 } end -- a notification
      if msg.method == "tools/list" then
        return { status = 200, headers = { ["content-type"] = "text/event-stream" },
          body = "event: message\ndata: " .. cjson.encode { jsonrpc = "2.0", id = msg.id, result = { tools = {
            { name = "echo", description = "Echoes.", inputSchema = { type = "object",
              properties = { message = { type = "string" } } } } } } } .. "\n\n" }
      end
      return { status = 200, headers = { ["content-type"] = "application/json" }, body = cjson.encode {
        jsonrpc = "2.0", id = msg.id, result = { content = { { type = "text", text = "Echo: " .. msg.params.arguments.message } } } } }
    end })
    return srv, function() sessions = {} end, log
  end

  it("sends its session and protocol headers, and re-initializes once when the session is gone", function()
    local srv, restart, log = server()
    local src = tide.integrations.mcp { name = "remote", url = ("http://127.0.0.1:%d/mcp"):format(srv:port()) }
    local toolkits = assert(require("tide").run(function() return src:fetch() end))
    assert.are.equal("echo", toolkits[1].tools[1].name)
    assert.are.equal("Echo: one", tide.run(function() return src:execute("echo", { message = "one" }) end))
    local last = log[#log]
    assert.are.equal("s1", last.sid)
    assert.are.equal("2025-11-25", last.version)
    restart() -- the server forgets every session
    assert.are.equal("Echo: two", tide.run(function() return src:execute("echo", { message = "two" }) end))
    local methods = {}
    for i = #log - 3, #log do methods[#methods + 1] = log[i].method .. "@" .. tostring(log[i].sid) end
    -- the call with the old session (404), initialize, initialized, the call again
    assert.are.same({ "tools/call@s1", "initialize@nil", "notifications/initialized@s2", "tools/call@s2" }, methods)
    src:close()
    assert.are.same({ method = "DELETE", sid = "s2" }, log[#log])
    -- closed inside a run, so that its close callbacks have run when the
    -- next spec counts the servers still alive
    tide.run(function() srv:close() end)
  end)

  it("follows a redirect on its own origin, and sends the model's arguments as written", function()
    local srv, _, log = server { redirect = "/mcp/" }
    local src = tide.integrations.mcp { name = "moved", url = ("http://127.0.0.1:%d/mcp"):format(srv:port()) }
    assert(tide.run(function() return src:fetch() end))
    assert.are.equal("/mcp/", log[1].path)
    assert.are.equal("Echo: hi", tide.run(function() return src:execute("echo", '{"message":"hi","tags":[]}') end))
    assert.is_truthy(log[#log].body:find('"arguments":{"message":"hi","tags":[]}', 1, true))
    src:close()
    tide.run(function() srv:close() end)
    -- another origin's redirect is not followed (the headers hold credentials)
    srv = server { redirect = "http://127.0.0.2:9/mcp" }
    src = tide.integrations.mcp { name = "away", url = ("http://127.0.0.1:%d/mcp"):format(srv:port()) }
    local _, err = tide.run(function() return src:fetch() end)
    assert.matches("answered initialize with HTTP 307", err.message, 1, true)
    tide.run(function() srv:close() end)
  end)

  it("keeps its credentials out of what a failed call reports, and its URL's query too", function()
    local srv = server { echo_auth = true }
    local url = ("http://127.0.0.1:%d/mcp?api_key=QUERYSECRET99"):format(srv:port())
    local src = tide.integrations.mcp { name = "echoing", url = url,
      headers = { Authorization = "Bearer mcp-SECRET-token-123" } }
    local _, err = tide.run(function() return src:execute("echo", { message = "x" }) end)
    assert.are.equal("ToolError", err.code)
    local all = require("tide.json").canonical(err)
    assert.is_nil(all:find("mcp-SECRET-token-123", 1, true))
    assert.is_nil(all:find("QUERYSECRET99", 1, true))
    assert.matches("rejected authorization: [redacted]", err.message, 1, true)
    src:close()
    tide.run(function() srv:close() end)
  end)

  it("ends the session of a server whose protocol it does not take", function()
    local srv, _, log = server { version = "2024-01-01" }
    local src = tide.integrations.mcp { name = "ancient", url = ("http://127.0.0.1:%d/mcp"):format(srv:port()) }
    local _, err = tide.run(function() return src:fetch() end)
    assert.matches("could not be initialized", err.message, 1, true)
    assert.are.same({ method = "DELETE", sid = "s1" }, log[#log])
    tide.run(function() srv:close() end)
  end)
end)
