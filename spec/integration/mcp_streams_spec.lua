-- The SSE streams of MCP's Streamable HTTP beyond a POST's answer, against
-- a server built on the official TypeScript SDK (spec/support/
-- mcp_http_peer.cjs: StreamableHTTPServerTransport with its event store):
-- the server's own stream, GET in the background (what it sends between
-- calls: list_changed, logs), opened again when it ends, and never holding
-- tide.run; a call's stream the server closes before its answer, polled
-- with Last-Event-ID until the answer comes (MCP 2025-11-25, "Sending
-- Messages to the Server" 6, "Resumability and Redelivery").
local tide = require "tide"
local core = require "tide.core"
local cache = require "tide.integrations.cache"
local helpers = require "helpers"

local PEER = "spec/support/mcp_http_peer.cjs"

local function start(extra)
  local proc, port = helpers.node_server(PEER, {}, function(port)
    local env = { PORT = tostring(port), NODE_PATH = helpers.npm "" }
    for k, v in pairs(extra or {}) do env[k] = v end
    return env
  end, function(proc) return (proc:read_line(50) or ""):find("listening", 1, true) ~= nil end)
  return proc, ("http://127.0.0.1:%d"):format(port)
end

local function source(base, logs)
  return tide.integrations.mcp { name = "peer", url = base .. "/mcp", timeout_ms = 5000,
    on_log = logs and function(l) logs[#logs + 1] = l.data end }
end

local function peer_stats(base)
  return tide.json.decode(assert(tide.http.request { url = base .. "/stats" }).body)
end

-- The Lua of a child process: one call through the peer at `base`, then
-- the root returns while the source's GET stream is open.
local CHILD = [[
local tide = require "tide"
local src = tide.integrations.mcp { name = "peer", url = os.getenv("PEER_BASE") .. "/mcp", timeout_ms = 5000 }
local r = tide.run(function() return src:execute("echo", { text = "hi" }) end)
io.write(tostring(r), " ", tostring(src.conn and src.conn.listening), "\n")
]]

describe("MCP over Streamable HTTP: the server's streams", function()
  after_each(function() helpers.assert_quiet() end)

  it("hears what the server sends between calls on its own stream", function()
    helpers.run(function()
      local proc, base = start()
      local logs = {}
      local src = source(base, logs)
      local function names()
        local out = {}
        for _, t in ipairs(assert(src:fetch())[1].tools) do out[t.name] = true end
        return out
      end
      assert(cache.get(src))
      assert.are.equal("open", src.conn.listening)
      assert.is_nil(names().later)
      -- the tool is added 100 ms after the call has answered: its
      -- list_changed belongs to no request and goes to the GET stream
      assert.are.equal("adding later", src:execute("add_tool", { name = "later" }))
      helpers.wait_until(function() return src.list_changes == 1 end, "list_changed")
      assert.is_nil(cache.peek(src))
      assert.is_true(names().later)
      assert.are.equal("will log", src:execute("log_later", { text = "between calls" }))
      helpers.wait_until(function() return logs[1] == "between calls" end, "the log")
      assert.are.same({ gets = 1, resumed = 0, open = 1 }, peer_stats(base))
      src:close()
      proc:close(2000)
    end)
  end)

  it("polls a call's stream the server closed before its answer, missing nothing", function()
    helpers.run(function()
      local proc, base = start { RETRY_MS = "150" }
      local logs = {}
      local src = source(base, logs)
      local t0 = core.now()
      assert.are.equal("polled", src:execute("poll", {}))
      -- the log sent while no stream was open came with the resumed one
      assert.are.same({ "before", "while away" }, logs)
      -- after the stream's retry delay (150 ms), not before
      assert.is_true(core.now() - t0 >= 150 + 50)
      local stats = peer_stats(base)
      assert.are.same({ 2, 1 }, { stats.gets, stats.resumed })
      assert.are.equal(2, src.streams)
      src:close()
      proc:close(2000)
    end)
  end)

  it("opens its stream again when the server ends it", function()
    helpers.run(function()
      local proc, base = start { RETRY_MS = "100" }
      local logs = {}
      local src = source(base, logs)
      assert(cache.get(src))
      helpers.wait_until(function() return peer_stats(base).open == 1 end, "the GET stream")
      -- the server restarts under the same port: the stream ends, the
      -- session with it; the next GET gets 404 and listening ends until a
      -- call makes a new session, which listens anew
      proc:close(2000)
      helpers.wait_until(function() return src.conn.listening ~= "open" or src.streams > 1 end, "a reconnection")
      local port = base:match(":(%d+)$")
      local again = assert(core.process_spawn { argv = { "node", PEER },
        env = { PATH = os.getenv("PATH"), HOME = os.getenv("HOME"), PORT = port, NODE_PATH = helpers.npm "" } })
      helpers.wait_until(function() return (again:read_line(50) or ""):find("listening", 1, true) ~= nil end, "restart")
      helpers.wait_until(function() return src.conn.listening == 404 end, "the old session refused")
      assert.are.equal("will log", src:execute("log_later", { text = "new session" }))
      helpers.wait_until(function() return logs[1] == "new session" end, "the log on the new session's stream")
      assert.are.equal("open", src.conn.listening)
      src:close()
      again:close(2000)
    end)
  end)

  it("listens again in a later tide.run on the same connection", function()
    local proc, base, src
    local logs = {}
    helpers.run(function()
      proc, base = start()
      src = source(base, logs)
      assert.are.equal("hi", src:execute("echo", { text = "hi" }))
    end)
    -- (the first run's end cancelled its listener)
    assert.are.equal("failed", src.conn.listener:status())
    helpers.run(function()
      assert.are.equal("hi", src:execute("echo", { text = "hi" }))
      -- (the server may answer 409 until it sees the first stream closed:
      -- one stream a session; the listener tries again)
      helpers.wait_until(function() return peer_stats(base).open == 1 end, "a stream open again", 10000)
      assert.are.equal("will log", src:execute("log_later", { text = "second run" }))
      helpers.wait_until(function() return logs[1] == "second run" end, "the log")
      src:close()
      proc:close(2000)
    end)
  end)

  it("takes a 405 as no stream offered, and calls on", function()
    helpers.run(function()
      local proc, base = start { NO_GET = "1" }
      local src = source(base)
      assert.are.equal("hi", src:execute("echo", { text = "hi" }))
      helpers.wait_until(function() return src.conn.listening == 405 end, "the 405")
      assert.are.equal("again", src:execute("echo", { text = "again" }))
      assert.are.equal(1, src.streams)
      src:close()
      proc:close(2000)
    end)
  end)

  it("keeps no tide.run alive with its stream open", function()
    helpers.run(function()
      local proc, base = start()
      local child = assert(core.process_spawn { argv = { "lua5.4", "-e", CHILD },
        env = helpers.child_env { LUA_PATH = package.path, LUA_CPATH = package.cpath, PEER_BASE = base } })
      local line = child:read_line(15000)
      local code = child:wait(15000)
      child:close(500)
      proc:close(2000)
      assert.are.equal("hi open", line)
      assert.are.equal(0, code)
    end)
  end)
end)
