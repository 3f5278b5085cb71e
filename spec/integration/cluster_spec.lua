-- tide.cluster against a real redis-server (spec/support/redis.lua starts
-- one on a loopback port per block and stops it).
local helpers = require "helpers"
local redis_server = require "support.redis"

describe("tide.cluster", function()
  local tide = require "tide"
  local cluster = require "tide.cluster"
  local srv

  setup(function() srv = redis_server.start() end)
  teardown(function() if srv then srv:close() end end)

  it("runs commands, scripts and pub/sub on the loop", function()
    local c = cluster.new { redis = srv.url, prefix = "t1" }
    helpers.run(function()
      assert.equal("OK", c:call("SET", c:key("a"), 41))
      assert.equal(42, c:call("INCR", c:key("a")))
      assert.is_false(c:call("GET", c:key("missing")))
      local r = c:call("MGET", c:key("a"), c:key("missing"))
      assert.same({ "42", false }, r)
      local _, err = c:call("LPUSH", c:key("a"), "x")
      assert.equal("RedisError", err.code)
      assert.matches("WRONGTYPE", err.message)
      local add = c:script("add", "return redis.call('INCRBY', KEYS[1], ARGV[1])")
      assert.equal(50, add({ c:key("a") }, { 8 }))
      -- commands from many tasks at once pipeline on the one connection
      local tasks = {}
      for i = 1, 50 do
        tasks[i] = tide.spawn(function() return c:call("INCR", c:key("n")) end)
      end
      local seen = {}
      for i = 1, 50 do seen[tasks[i]:join()] = true end
      for i = 1, 50 do assert.is_true(seen[i]) end
      local got = {}
      assert.is_true(c:subscribe(c:key("ch"), function(ch, payload) got[#got + 1] = ch .. "=" .. payload end))
      helpers.wait_until(function() return c:subscribed() end, "the subscription")
      assert.equal(1, c:publish(c:key("ch"), "hello"))
      helpers.wait_until(function() return #got == 1 end, "the message")
      assert.same({ "t1:ch=hello" }, got)
      c:close()
    end)
  end)

  it("gives blocking commands a connection of their own", function()
    local c = cluster.new { redis = srv.url, prefix = "t2" }
    helpers.run(function()
      local popped = tide.spawn(function()
        return c:with_blocking(function(conn) return conn:call("BLPOP", c:key("q"), 5) end)
      end)
      tide.sleep(20)
      -- the shared connection is not held up by the BLPOP
      assert.equal(1, c:call("RPUSH", c:key("q"), "job"))
      assert.same({ "t2:q", "job" }, popped:join())
      c:close()
    end)
  end)

  it("survives a command whose task is cancelled just before its reply comes", function()
    -- The reply is read (loop poll phase) before the cancelled task runs
    -- again (check phase): the request record must outlive both.
    local c = cluster.new { redis = srv.url, prefix = "t5" }
    helpers.run(function()
      local conn = assert(c:_open())
      for _ = 1, 5 do
        local t = require("tide.core").spawn_now(function() return conn:call("BLPOP", c:key("none"), "0.02") end)
        tide.sleep(5) -- the command is on the wire
        os.execute("sleep 0.05") -- and its reply in the socket
        t:cancel()
        local r, err = t:join()
        assert.is_nil(r)
        assert.equal("Cancelled", err.code)
      end
      assert.equal("PONG", conn:call("PING"))
      conn:close()
      c:close()
    end)
  end)

  it("frees a command whose task was cancelled once its reply had come", function()
    -- The reply is read (and its record freed) between the cancellation
    -- and the task's resumption: the continuation must not touch the
    -- record again (it did: a double free).
    local redis = require "tide.redis"
    local core = require "tide.core"
    helpers.run(function()
      local conn = assert(redis.connect { host = "127.0.0.1", port = srv.port })
      local a = tide.spawn(function() return conn:call("BLPOP", "t0:never", "0.1") end)
      tide.sleep(100) -- woken by a timer: runs before the loop polls
      local t0 = core.hrtime()
      while core.hrtime() - t0 < 80e6 do end -- BLPOP's reply arrives meanwhile
      a:cancel()
      local r, err = a:join()
      assert.is_nil(r)
      assert.equal("Cancelled", err.code)
      assert.equal("PONG", conn:call("PING"))
      conn:close()
    end)
  end)

  it("survives a subscriber collected by its own handler as the connection goes", function()
    -- The disconnect callback calls the Lua handler; a collection there
    -- that takes the connection's userdata freed the connection under the
    -- callback, which then read it (ASan: heap-use-after-free, found by a
    -- Redis restart mid-fetch in cluster_cache_spec under the sanitizers).
    local redis = require "tide.redis"
    local heard, holder = {}, {}
    helpers.run(function()
      local killer = assert(redis.connect { host = "127.0.0.1", port = srv.port })
      holder[1] = assert(redis.connect { host = "127.0.0.1", port = srv.port })
      assert(holder[1]:subscribe(function(kind)
        heard[#heard + 1] = kind
        if kind == "disconnect" then -- the last reference dropped, and collected, in the handler
          holder[1] = nil
          collectgarbage()
          collectgarbage()
        end
      end, "SUBSCRIBE", "t0:gc"))
      tide.sleep(20)
      killer:call("CLIENT", "KILL", "TYPE", "pubsub")
      tide.sleep(100)
      killer:close()
    end)
    assert.are.equal("disconnect", heard[#heard])
  end)

  it("fails clearly when Redis is not there at start", function()
    local url = redis_server.gone_url()
    local c = cluster.new { redis = url }
    local t0 = os.clock()
    local r, err = helpers.run(function() return c:call("PING") end)
    assert.is_nil(r)
    assert.equal("ClusterUnavailable", err.code)
    assert.equal("connect", err.reason)
    assert.matches("cannot reach Redis at " .. url:gsub("%p", "%%%0"), err.message)
    assert.is_true(os.clock() - t0 < 1) -- no retries on a first connection
  end)

  it("resolves host names (uv_getaddrinfo: hiredis would block the loop)", function()
    local c = cluster.new { redis = ("redis://localhost:%d/0"):format(srv.port) }
    local bad = cluster.new { redis = "redis://no-such-host.invalid:6379/0" }
    helpers.run(function()
      assert.equal("PONG", c:call("PING"))
      local _, err = bad:call("PING")
      assert.equal("ClusterUnavailable", err.code)
      assert.matches("cannot resolve the host", err.message)
      c:close()
    end)
  end)

  it("refuses wrong credentials without quoting them", function()
    local locked = redis_server.start { password = "s3cret-pw" }
    finally(function() locked:close() end)
    local c = cluster.new { redis = ("redis://:wrong-pw@127.0.0.1:%d/0"):format(locked.port) }
    local _, err = helpers.run(function() return c:call("PING") end)
    assert.equal("ClusterUnavailable", err.code)
    assert.equal("auth", err.reason)
    assert.not_matches("wrong%-pw", tostring(err))
    assert.not_matches("wrong%-pw", c.url)
    local none = cluster.new { redis = ("redis://127.0.0.1:%d/0"):format(locked.port) }
    _, err = helpers.run(function() return none:call("PING") end)
    assert.equal("auth", err.reason)
    assert.matches("NOAUTH", err.message)
    local good = cluster.new { redis = ("redis://127.0.0.1:%d/3"):format(locked.port), password = "s3cret-pw" }
    assert.equal("PONG", helpers.run(function() return good:call("PING") end))
    good:close()
  end)

  it("reconnects after a Redis restart, subscriptions included", function()
    local own = redis_server.start()
    finally(function() own:close() end)
    local c = cluster.new { redis = own.url, prefix = "t3", reconnect_ms = 5000 }
    helpers.run(function()
      local got = {}
      assert.equal("OK", c:call("SET", c:key("k"), "v"))
      c:subscribe(c:key("ch"), function(_, payload) got[#got + 1] = payload end)
      helpers.wait_until(function() return c:subscribed() end, "the subscription")
      own:restart() -- blocks this process a moment; the connections drop
      -- the data is gone (no persistence), the connection comes back
      local v, err = c:call("GET", c:key("k"))
      if v == nil then
        -- the command went out on the broken connection: a clear failure
        assert.equal("ClusterUnavailable", err.code)
        v = c:call("GET", c:key("k"))
      end
      assert.is_false(v)
      assert.equal(1, c.stats.reconnects)
      helpers.wait_until(function() return c:subscribed() end, "the subscription again")
      c:publish(c:key("ch"), "after")
      helpers.wait_until(function() return #got == 1 end, "a message after the restart")
      -- a script is loaded again after the restart
      local echo = c:script("echo", "return ARGV[1]")
      assert.equal("x", echo({}, { "x" }))
      own:restart()
      if not echo({}, { "y" }) then assert.equal("y", echo({}, { "y" })) end
      c:close()
    end)
  end)

  it("subscribes again after an outage longer than reconnect_ms", function()
    local own = redis_server.start()
    finally(function() own:close() end)
    local c = cluster.new { redis = own.url, prefix = "t6", reconnect_ms = 100 }
    helpers.run(function()
      local got = {}
      c:subscribe(c:key("ch"), function(_, payload) got[#got + 1] = payload end)
      helpers.wait_until(function() return c:subscribed() end, "the subscription")
      own:stop()
      helpers.wait_until(function() return not c:subscribed() end, "the subscriber to see the outage")
      -- the loop's clock runs: the background retries fail and give up
      -- after 100 ms
      tide.sleep(600)
      assert.is_false(c:subscribed())
      own:restart()
      -- the next command connection brings the subscriber back
      local pong = c:call("PING")
      if not pong then pong = c:call("PING") end
      assert.equal("PONG", pong)
      helpers.wait_until(function() return c:subscribed() end, "the subscription after the outage")
      c:publish(c:key("ch"), "back")
      helpers.wait_until(function() return #got == 1 end, "a message after the outage")
      c:close()
    end)
  end)

  it("says when Redis is out of memory", function()
    local small = redis_server.start { args = { "--maxmemory", "2mb", "--maxmemory-policy", "noeviction" } }
    finally(function() small:close() end)
    local c = cluster.new { redis = small.url }
    local err = helpers.run(function()
      local big = ("x"):rep(256 * 1024)
      for i = 1, 100 do
        local ok, e = c:call("SET", "k" .. i, big)
        if not ok then return e end
      end
    end)
    assert.equal("ClusterUnavailable", err.code)
    assert.equal("oom", err.reason)
    assert.matches("out of memory", err.message)
    helpers.run(function() c:close() end)
  end)

  it("raises on misuse, naming the option", function()
    assert.has_error(function() tide.cluster { redis = "http://x" } end,
      "bad argument #1 to 'cluster' (option 'redis': redis://, rediss:// or unix:// expected)")
    assert.has_error(function() tide.cluster { redis = "redis://h:99999" } end,
      "bad argument #1 to 'cluster' (option 'redis': port must be 1..65535)")
    assert.has_error(function() tide.cluster { redis = "redis://h/x" } end,
      "bad argument #1 to 'cluster' (option 'redis': the path must be a database number (/0))")
    assert.has_error(function() tide.cluster { redis = srv.url, bogus = 1 } end,
      "bad argument #1 to 'cluster' (unknown option 'bogus')")
    assert.has_error(function() tide.cluster { redis = srv.url, reconnect_ms = 0 } end,
      "bad argument #1 to 'cluster' (option 'reconnect_ms' must be a positive integer)")
    local ok, err = pcall(tide.cluster, { redis = "rediss://u:pw@h:1/0" })
    assert.is_false(ok)
    assert.matches("TLS %(rediss://%) is not available", err)
    assert.not_matches("pw", err:gsub("rediss://", ""))
    local w = cluster.parse_url("redis://user:pass@[::1]:7000/2")
    assert.same({ "::1", 7000, 2, "user", "pass" }, { w.host, w.port, w.db, w.username, w.password })
    assert.equal("redis://::1:7000/2", w.shown)
  end)

  it("is not loaded by a script that never asks for it", function()
    local out = helpers.sh(([[cd %q && LUA_CPATH=%q LUA_PATH='lua/?.lua;lua/?/init.lua;;' lua5.4 -e '
      local tide = require "tide"
      local p = tide.provider.openai { api_key = "k", base_url = "http://127.0.0.1:1/v1", model = "m" }
      tide.agent { id = "a", prompt = "You help." }
      local s = tide.session { agent = "a", provider = p }
      print(package.loaded["tide.redis"], package.loaded["tide.cluster"])']]):format(
      os.getenv("PWD"), (os.getenv("TIDE_BUILD_DIR") or "build") .. "/?.so;;"))
    assert.equal("nil\tnil\n", out)
  end)
end)
