-- Sessions in Redis (tide.session{ id, store = "redis" }) against a real
-- redis-server (spec/support/redis.lua) and, for the cross-process cases,
-- a second lua5.4 process (spec/support/cluster_child.lua) that talks to
-- this process's mock provider.
local helpers = require "helpers"
local redis_server = require "support.redis"

local build = os.getenv("TIDE_BUILD_DIR") or "build"

-- A child lua5.4 on the loop (this process keeps serving its mock while the
-- child runs), with `env` on top of this process's environment.
local function child(script, args, env)
  local core = require "tide.core"
  local argv = { "env", "ASAN_OPTIONS=detect_leaks=0", "LUA_PATH=lua/?.lua;lua/?/init.lua;spec/?.lua;;",
    "LUA_CPATH=" .. build .. "/?.so;;" }
  for k, v in pairs(env or {}) do argv[#argv + 1] = k .. "=" .. v end
  argv[#argv + 1] = "lua5.4"
  argv[#argv + 1] = script
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return assert(core.process_spawn { argv = argv })
end

describe("sessions in Redis", function()
  local tide = require "tide"
  local testing = require "tide.testing"
  local cluster = require "tide.cluster"
  local core = require "tide.core"
  local redis = redis_server.cluster_per_case("s", "spec/support/cluster_agents")

  local function provider(mock)
    return tide.provider.openai { base_url = mock.url .. "/v1", api_key = "k", model = "m", stream = false }
  end

  it("keeps the transcript in Redis and resumes it in another process", function()
    helpers.run(function()
      local mock = testing.mock_server { default = testing.echo }
      local s = assert(tide.session { id = "user-1", store = "redis", agent = "helper", provider = provider(mock) })
      assert.equal("echo: first", s:turn("first"))
      s:close()
      local c = cluster.current()
      local records = c:call("LRANGE", c:key("session", "user-1"), 0, -1)
      assert.equal(4, #records) -- meta, system prompt, user, assistant
      assert.matches('"type":"meta"', records[1])
      assert.matches('"content":"first"', records[3])
      mock:close()
    end)
  end)

  it("resumes in another process, which sees the whole conversation", function()
    tide.cluster { redis = redis.server.url } -- the default prefix, as the child uses
    helpers.run(function()
      local mock = testing.mock_server { default = function(req)
        return ("%d messages"):format(#req.json.messages)
      end }
      local id = "user-x" .. math.random(1, 1e9)
      local s = assert(tide.session { id = id, store = "redis", agent = "helper", provider = provider(mock) })
      assert.equal("2 messages", s:turn("first")) -- system + user
      s:close()
      local p = child("spec/support/cluster_child.lua", { id, "second" },
        { TIDE_REDIS_URL = redis.server.url, OPENAI_BASE_URL = mock.url .. "/v1" })
      assert.equal("OPEN 2", p:read_line(10000))
      assert.equal("REPLY 4 messages", p:read_line(10000))
      assert.equal(0, p:wait(10000))
      p:close()
      -- and back here: the session built before sees the child's turn
      assert.equal("6 messages", s:turn("third"))
      assert.equal(6, #s:history())
      mock:close()
    end)
  end)

  it("lets one process at a time run a turn: SessionBusy, or a wait", function()
    helpers.run(function()
      local mock = testing.mock_server { default = function(req)
        local last = req.json.messages[#req.json.messages].content
        return { text = "re: " .. last, delay_ms = last == "slow" and 300 or 0 }
      end }
      local p = provider(mock)
      local a = assert(tide.session { id = "shared", store = "redis", agent = "helper", provider = p })
      local b = assert(tide.session { id = "shared", store = "redis", agent = "helper", provider = p })
      local waits = assert(tide.session { id = "shared", store = "redis", agent = "helper", provider = p,
        lease_wait_ms = 5000 })
      local t = tide.spawn(function() return a:turn("slow") end)
      tide.sleep(60)
      local r, err = b:turn("now")
      assert.is_nil(r)
      assert.equal("SessionBusy", err.code)
      assert.matches("held by another process", err.message)
      -- a session built before the slow turn waits for it, then reloads
      assert.equal("re: later", waits:turn("later"))
      assert.equal("re: slow", t:join())
      local h = waits:history()
      assert.equal(4, #h)
      assert.equal("slow", h[1].content)
      -- b's failed attempt left nothing behind; its next turn reloads too
      assert.equal("re: again", b:turn("again"))
      assert.equal(6, #b:history())
      a:close(); b:close(); waits:close()
      mock:close()
    end)
  end)

  it("sends a round's records with its request, and keeps no answer when Redis refused them", function()
    helpers.run(function()
      local c = cluster.current()
      local lease = c:key("session", "taken", "lease")
      local mock = testing.mock_server { default = testing.tool_loop(1, "lookup") }
      -- the tool's run is where another process takes the session over
      tide.agent { id = "robbed", prompt = "You look.", tools = { tide.tool { name = "lookup",
        description = "Looks.", parameters = { type = "object", properties = {} },
        handler = function() c:call("SET", lease, "another") return "found" end } } }
      local s = assert(tide.session { id = "taken", store = "redis", agent = "robbed", provider = provider(mock) })
      local r, err = s:turn("look")
      assert.is_nil(r)
      assert.equal("SessionBusy", err.code)
      assert.matches("held by another process", err.message)
      -- the second request went out with its records (the tool's results),
      -- which Redis refused: its answer is not kept, in memory or in Redis
      assert.equal(2, #mock:requests())
      -- (what it cost is counted all the same: as for the same turn in memory)
      local same = tide.session { agent = "robbed", provider = provider(mock) }
      assert.equal("done after 1 lookups", same:turn("look"))
      assert.are.same(same:stats().tokens, s:stats().tokens)
      local h = s:history()
      assert.equal("tool", h[#h].role)
      local records = c:call("LRANGE", c:key("session", "taken"), 0, -1)
      assert.equal(4, #records) -- meta, system prompt, user, the call
      assert.matches('"tool_calls"', records[4])
      c:call("DEL", lease)
      s:close()
      mock:close()
    end)
  end)

  it("resumes a session whose process died mid-call: the call is never run again", function()
    tide.cluster { redis = redis.server.url }
    local log = os.tmpname()
    finally(function() os.remove(log) end)
    helpers.run(function()
      local mock = testing.mock_server { default = testing.tool_loop(1, "lookup") }
      local id = "crash" .. math.random(1, 1e9)
      local p = child("spec/support/cluster_child.lua", { id, "look it up" }, { TIDE_REDIS_URL = redis.server.url,
        OPENAI_BASE_URL = mock.url .. "/v1", TIDE_TOOL_LOG = log, TIDE_TOOL_SLEEP_MS = "10000", LEASE_MS = "500" })
      assert.equal("OPEN 0", p:read_line(10000))
      helpers.wait_until(function() return #helpers.lines_of(log) == 1 end, "the tool to start", 10000)
      p:kill("KILL")
      p:wait(5000)
      p:close()
      -- the dead process's lease expires (500 ms); then the resume repairs
      local s = assert(tide.session { id = id, store = "redis", agent = "helper", provider = provider(mock),
        lease_wait_ms = 5000 })
      assert.equal(1, s.resumed.interrupted)
      local h = s:history()
      assert.equal("tool", h[#h].role)
      assert.matches("interrupted", h[#h].results[1].content)
      assert.equal("done after 1 lookups", s:turn("go on"))
      assert.equal(1, #helpers.lines_of(log))
      s:close()
      mock:close()
    end)
  end)

  it("keeps approvals in Redis: another session object decides and resumes", function()
    helpers.run(function()
      local mock = testing.mock_server { default = testing.tool_loop(1, "delete") }
      tide.agent { id = "careful", prompt = "You are careful.", tools = { tide.tool { name = "delete",
        description = "Deletes.", parameters = { type = "object", properties = {} }, approval = true,
        handler = function() return "deleted" end } } }
      local s = assert(tide.session { id = "appr", store = "redis", agent = "careful", provider = provider(mock) })
      local r, err = s:turn("delete it")
      assert.is_nil(r)
      assert.equal("ApprovalRequired", err.code)
      s:close()
      local other = assert(tide.session { id = "appr", store = "redis", agent = "careful", provider = provider(mock) })
      local pending = other:pending()
      assert.equal(1, #pending)
      assert.is_true(other:approve(pending[1].id, "ok"))
      assert.equal("done after 1 lookups", other:resume())
      local c = cluster.current()
      local records = table.concat(c:call("LRANGE", c:key("session", "appr"), 0, -1), "\n")
      assert.matches('"type":"pause"', records)
      assert.matches('"type":"decision"', records)
      assert.matches('"type":"running"', records)
      other:close()
      mock:close()
    end)
  end)

  it("says SessionCorrupt for a record that is not JSON, and drops nothing", function()
    helpers.run(function()
      local mock = testing.mock_server { default = testing.echo }
      local s = assert(tide.session { id = "bad", store = "redis", agent = "helper", provider = provider(mock) })
      assert.equal("echo: one", s:turn("one"))
      s:close()
      local c = cluster.current()
      c:call("RPUSH", c:key("session", "bad"), '{"role":"user","content":"half')
      local none, err = tide.session { id = "bad", store = "redis", agent = "helper", provider = provider(mock) }
      assert.is_nil(none)
      assert.equal("SessionCorrupt", err.code)
      assert.equal(5, err.record)
      assert.equal(5, c:call("LLEN", c:key("session", "bad")))
      -- a list whose first record is not the meta record
      c:call("RPUSH", c:key("session", "headless"), '{"role":"user","content":"hi"}')
      none, err = tide.session { id = "headless", store = "redis", agent = "helper", provider = provider(mock) }
      assert.equal("SessionCorrupt", err.code)
      -- a session object whose list was corrupted since: its turn fails, clearly
      local ok = assert(tide.session { id = "later", store = "redis", agent = "helper", provider = provider(mock) })
      assert.equal("echo: x", ok:turn("x"))
      c:call("RPUSH", c:key("session", "later"), "not json")
      local r, terr = ok:turn("y")
      assert.is_nil(r)
      assert.equal("SessionCorrupt", terr.code)
      mock:close()
    end)
  end)

  it("fails clearly when Redis is not there", function()
    local url = redis_server.gone_url()
    tide.cluster { redis = url }
    local p = tide.provider.openai { base_url = "http://127.0.0.1:1/v1", api_key = "k", model = "m" }
    local s, err = tide.session { id = "x", store = "redis", agent = "helper", provider = p }
    assert.is_nil(s)
    assert.equal("ClusterUnavailable", err.code)
    assert.equal("connect", err.reason)
  end)

  it("fails a turn clearly when Redis lost the session (a restart without persistence)", function()
    local own = redis_server.start()
    finally(function() own:close() end)
    tide.cluster { redis = own.url, reconnect_ms = 5000 }
    helpers.run(function()
      local mock = testing.mock_server { default = testing.echo }
      local s = assert(tide.session { id = "gone", store = "redis", agent = "helper", provider = provider(mock) })
      assert.equal("echo: one", s:turn("one"))
      own:restart()
      local r, err = s:turn("two")
      if not r and err.code == "ClusterUnavailable" then r, err = s:turn("two") end
      assert.is_nil(r)
      assert.equal("SessionCorrupt", err.code)
      assert.equal("lost", err.reason)
      mock:close()
    end)
  end)

  it("lets an idle session expire when the cluster says so, sub-agents' lists too", function()
    helpers.run(function()
      local mock = testing.mock_server { default = function(req)
        return ("%d messages"):format(#req.json.messages)
      end }
      -- without session_ttl_ms a session stays
      local c = cluster.current()
      local kept = assert(tide.session { id = "kept", store = "redis", agent = "helper", provider = provider(mock) })
      assert.equal("2 messages", kept:turn("first"))
      kept:close()
      assert.equal(-1, c:call("PTTL", c:key("session", "kept")))
      c = tide.cluster { redis = redis.server.url, prefix = "ttl" .. math.random(1, 1e9), session_ttl_ms = 400 }
      local s = assert(tide.session { id = "idle", store = "redis", agent = "helper", provider = provider(mock) })
      assert.equal("2 messages", s:turn("first"))
      local ttl = c:call("PTTL", c:key("session", "idle"))
      assert.is_true(ttl > 0 and ttl <= 400, tostring(ttl))
      -- each write sets it again: the second turn's records
      core.sleep(250)
      assert.equal("4 messages", s:turn("second"))
      assert.is_true(c:call("PTTL", c:key("session", "idle")) > 250)
      s:close()
      -- a sub-agent's transcript is written through the same store
      local store = require("tide.transcript_redis").store(c)
      local w = store.open("idle/child.1", { type = "meta", agent = "helper" })
      assert(w:append({ role = "user", content = "x" }))
      ttl = c:call("PTTL", c:key("session", "idle/child.1"))
      assert.is_true(ttl > 0 and ttl <= 400, tostring(ttl))
      -- idle past it: gone from Redis, and the id starts anew
      core.sleep(500)
      assert.equal(0, c:call("EXISTS", c:key("session", "idle"), c:key("session", "idle/child.1")))
      local again = assert(tide.session { id = "idle", store = "redis", agent = "helper", provider = provider(mock) })
      assert.equal("2 messages", again:turn("hello again"))
      again:close()
      mock:close()
    end)
    assert.has_error(function() tide.cluster { redis = redis.server.url, session_ttl_ms = 0 } end,
      "bad argument #1 to 'cluster' (option 'session_ttl_ms' must be a positive integer)")
  end)

  it("raises on misuse, naming the option", function()
    local p = tide.provider.openai { base_url = "http://127.0.0.1:1/v1", api_key = "k", model = "m" }
    assert.has_error(function() tide.session { id = "x", store = "file", agent = "helper", provider = p } end,
      'tide.session: \'store\' must be "redis"')
    assert.has_error(function() tide.session { id = "x", agent = "helper", provider = p } end,
      'tide.session: \'id\' needs store = "redis"')
    assert.has_error(function() tide.session { id = "a b", store = "redis", agent = "helper", provider = p } end,
      "tide.session: 'id' must be a non-empty string without spaces (the session's name in its store)")
    assert.has_error(function()
      tide.session { id = "x", store = "redis", transcript = "t.jsonl", agent = "helper", provider = p }
    end, "tide.session: 'transcript' and 'resume' name files; a session with a 'store' keeps its transcript there")
    assert.has_error(function() tide.session { id = "x", store = "redis", lease_ms = 5, agent = "helper", provider = p } end,
      "tide.session: 'lease_ms' must be an integer of at least 30")
    cluster.set_current(nil)
    assert.has_error(function() tide.session { id = "x", store = "redis", agent = "helper", provider = p } end)
  end)
end)
