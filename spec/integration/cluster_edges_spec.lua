-- The cluster layer's edges against a real redis-server
-- (spec/support/redis.lua): a Redis that stops answering, answers that race
-- a deadline, URLs and records a demanding user gives it.
local helpers = require "helpers"
local redis_server = require "support.redis"

describe("the cluster's edges", function()
  local tide = require "tide"
  local core = require "tide.core"
  local testing = require "tide.testing"
  local cluster = require "tide.cluster"
  local redis = redis_server.cluster_per_case("e", "spec/support/cluster_agents")

  local function provider(mock)
    return tide.provider.openai { base_url = mock.url .. "/v1", api_key = "k", model = "m", stream = false }
  end

  it("gives Timeout at timeout_ms while Redis does not answer, and a worker then skips the request", function()
    local pid = redis.server.pid
    finally(function() os.execute("kill -CONT " .. pid) end)
    helpers.run(function()
      local mock = testing.mock_server { default = testing.echo }
      local c = cluster.current()
      -- a request that times out with Redis answering: the reply channel is
      -- up (its readiness is confirmed before the request is queued, so the
      -- request in the queue says so; under load 50 ms may not be enough)
      local r, err = tide.submit { queue = "turns", session = "paused", agent = "helper", text = "hi", timeout_ms = 300 }
      assert.equal("Timeout", err.code)
      helpers.wait_until(function() return c:call("XLEN", c:key("q", "turns")) == 1 end, "the first request to be queued")
      -- a paused server: the connection stays open, nothing is answered
      os.execute("kill -STOP " .. pid)
      local t0 = core.now()
      local t = tide.spawn(function()
        return tide.submit { queue = "turns", session = "paused", agent = "helper", text = "hi", timeout_ms = 300 }
      end)
      r, err = t:join(5000)
      local took = core.now() - t0
      os.execute("kill -CONT " .. pid)
      assert.is_nil(r)
      assert.equal("Timeout", err.code)
      assert.matches("no reply from queue 'turns' within 300 ms", err.message)
      assert.equal(300, err.timeout_ms)
      assert.is_true(took < 2000, "took " .. took .. " ms")
      -- Redis answers again: the request it then queued is not served
      helpers.wait_until(function() return c:call("XLEN", c:key("q", "turns")) == 2 end, "the request to be queued")
      local w = assert(tide.worker { queue = "turns", provider = provider(mock), quiet = true })
      helpers.wait_until(function() return w:stats().skipped == 2 end, "the stale requests to be skipped")
      assert.equal(0, #mock:requests())
      w:stop()
      mock:close()
    end)
  end)

  it("returns an answer written just before its deadline, never Timeout for a turn that ran", function()
    helpers.run(function()
      local c = cluster.current()
      local stream = c:key("q", "turns")
      -- a worker that answers but whose notification never arrives
      local answerer = tide.spawn(function()
        while true do
          local e = c:call("XRANGE", stream, "-", "+")
          if e and e[1] then
            local f = {}
            for i = 1, #e[1][2], 2 do f[e[1][2][i]] = e[1][2][i + 1] end
            c:call("SET", c:key("q", "turns", "reply", f.rid), '{"reply":"ran once","stats":{}}', "PX", 60000)
            c:call("SET", c:key("q", "turns", "req", f.rid), "answered", "PX", 60000)
            return true
          end
          tide.sleep(5)
        end
      end)
      local r, stats = tide.submit { queue = "turns", session = "late", agent = "helper", text = "hi", timeout_ms = 300 }
      assert(answerer:join())
      assert.equal("ran once", r, stats and stats.message)
    end)
  end)

  it("takes a percent-encoded password from the URL, and never quotes it", function()
    local locked = redis_server.start { password = "p@ss:w/rd%x" }
    finally(function() locked:close() end)
    local w = cluster.parse_url("redis://us%3Aer:p%40ss%3Aw%2Frd%25x@127.0.0.1:6379/0")
    assert.equal("us:er", w.username)
    assert.equal("p@ss:w/rd%x", w.password)
    local c = cluster.new { redis = ("redis://:p%%40ss%%3Aw%%2Frd%%25x@127.0.0.1:%d/0"):format(locked.port) }
    assert.equal("PONG", helpers.run(function() return c:call("PING") end))
    assert.not_matches("p%%40ss", c.url)
    c:close()
    local wrong = cluster.new { redis = ("redis://:p%%40ss%%3Awrong@127.0.0.1:%d/0"):format(locked.port) }
    local _, err = helpers.run(function() return wrong:call("PING") end)
    assert.equal("auth", err.reason)
    assert.not_matches("p%%40ss", tostring(err))
    assert.not_matches("p@ss", tostring(err))
  end)

  it("says SessionCorrupt for a record that is a JSON array, not an object", function()
    helpers.run(function()
      local mock = testing.mock_server { default = testing.echo }
      local c = cluster.current()
      for _, bad in ipairs { "[1,2]", "[]", ' ["role","user"]' } do
        local id = "arr" .. math.random(1, 1e9)
        c:call("RPUSH", c:key("session", id), '{"type":"meta","agent":"helper"}', bad)
        local s, err = tide.session { id = id, store = "redis", agent = "helper", provider = provider(mock) }
        assert.is_nil(s)
        assert.equal("SessionCorrupt", err.code)
        assert.equal(2, err.record)
        assert.equal(id, err.session)
      end
      assert.equal(0, #mock:requests())
      mock:close()
    end)
  end)

  it("tells `tide worker`'s misuse by its flag, exit 2, no traceback, no password", function()
    local build = os.getenv("TIDE_BUILD_DIR") or "build"
    local function worker(args, env)
      return helpers.sh(("env -u OPENAI_API_KEY -u OPENAI_BASE_URL -u ANTHROPIC_API_KEY -u ANTHROPIC_AUTH_TOKEN "
        .. "TIDE_BUILD_DIR=%s "
        .. "ASAN_OPTIONS=detect_leaks=0 %s lua5.4 bin/tide worker --agents spec/support/cluster_agents %s 2>&1; "
        .. "echo status $?"):format(build, env or "OPENAI_API_KEY=k", args))
    end
    for _, case in ipairs {
      { "--redis redis://:s3cret@127.0.0.1:1/x", "tide worker: %-%-redis: the path must be a database number %(/0%)" },
      { "--redis redis://127.0.0.1:1/0 --prefix a/b", "tide worker: %-%-prefix must be letters" },
      { "--redis redis://127.0.0.1:1/0 --queue ''", "tide worker: %-%-queue must be a non%-empty name" },
      { "--redis redis://127.0.0.1:1/0 --name 'a b'", "tide worker: %-%-name must be a non%-empty name" },
      { "--redis redis://127.0.0.1:1/0 --provider foo", "tide worker: %-%-provider must be openai, anthropic or bedrock" },
    } do
      local out = worker(case[1])
      assert.matches(case[2], out)
      assert.matches("status 2\n$", out)
      assert.not_matches("traceback", out)
      assert.not_matches("s3cret", out)
    end
    local out = worker("--redis redis://127.0.0.1:1/0", "")
    assert.matches("tide worker: no provider: set OPENAI_API_KEY", out)
    assert.matches("status 2\n$", out)
    assert.not_matches("traceback", out)
    -- a gateway's token is a provider too: the worker goes on to Redis
    out = worker("--redis redis://127.0.0.1:1/0", "ANTHROPIC_AUTH_TOKEN=gw")
    assert.not_matches("no provider", out)
    assert.matches("status 1\n$", out)
  end)

  it("keeps every entry a worker serves from looking idle: none is claimed while its turn runs", function()
    helpers.run(function()
      local mock = testing.mock_server { default = function() return { text = "slow", delay_ms = 1200 } end }
      -- (full: its own XAUTOCLAIM, which would reset the idle times too, does not run)
      local a = assert(tide.worker { queue = "turns", concurrency = 3, claim_idle_ms = 300, provider = provider(mock),
        quiet = true, name = "a" })
      local tasks = {}
      for i = 1, 3 do
        tasks[i] = tide.spawn(function()
          return tide.submit { queue = "turns", session = "idle" .. i, agent = "helper", text = "x" }
        end)
      end
      helpers.wait_until(function() return #mock:requests() == 3 end, "three turns in flight")
      local b = assert(tide.worker { queue = "turns", concurrency = 4, claim_idle_ms = 300, provider = provider(mock),
        quiet = true, name = "b" })
      for i = 1, 3 do
        local r, stats = tasks[i]:join()
        assert.equal("slow", r)
        assert.equal("a", stats.worker)
      end
      assert.equal(0, b:stats().claimed)
      assert.equal(3, #mock:requests())
      a:stop()
      b:stop()
      mock:close()
    end)
  end)

  it("stops subscribing again once closed: no reconnection, nothing keeps tide.run up", function()
    local own = redis_server.start()
    finally(function() own:close() end)
    local c = cluster.new { redis = own.url, prefix = "closed", reconnect_ms = 4000 }
    local closed_at
    helpers.run(function()
      assert.is_true(c:subscribe(c:key("ch"), function() end))
      helpers.wait_until(function() return c:subscribed() end, "the subscription")
      own:stop()
      helpers.wait_until(function() return not c:subscribed() end, "the subscriber to notice")
      c:close()
      closed_at = core.now()
    end)
    local lingered = core.now() - closed_at
    assert.is_true(lingered < 1500, "tide.run went on " .. lingered .. " ms after close()")
    -- Redis back: the closed cluster does not subscribe again by itself
    own:restart()
    helpers.run(function() tide.sleep(300) end)
    assert.is_nil(c._sub)
  end)

  it("lets provider requests go on with the process's rate limits while Redis does not answer", function()
    local limits = require "tide.provider.limits"
    limits._reset()
    local pid = redis.server.pid
    finally(function() os.execute("kill -CONT " .. pid) end)
    helpers.run(function()
      local mock = testing.mock_server { default = "ok" }
      tide.agent { id = "edges_lim", prompt = "You answer." }
      local p = tide.provider.openai { base_url = mock.url, api_key = "k", model = "m", limits = { rpm = 6000 } }
      assert.equal("ok", tide.session { agent = "edges_lim", provider = p }:turn("hi"))
      os.execute("kill -STOP " .. pid)
      local t0 = core.now()
      local t = tide.spawn(function()
        local out = {}
        for i = 1, 3 do out[i] = tide.session { agent = "edges_lim", provider = p }:turn("hi") end
        return out
      end)
      local out, err = t:join(6000)
      local took = core.now() - t0
      os.execute("kill -CONT " .. pid)
      assert.same({ "ok", "ok", "ok" }, out, err and err.message)
      -- one wait for Redis, then the process's bucket without waiting
      assert.is_true(took < 3000, "took " .. took .. " ms")
      local st = limits.state(p)
      assert.equal(1, st.remote)
      assert.equal(3, st.local_fallbacks)
      -- Redis answers again: reservations go there again
      helpers.wait_until(function()
        tide.session { agent = "edges_lim", provider = p }:turn("hi")
        return limits.state(p).remote > 1
      end, "reservations in Redis again")
      mock:close()
    end)
  end)

  it("fails at connect_timeout_ms when the server takes the connection and never answers", function()
    local own = redis_server.start()
    finally(function()
      os.execute("kill -CONT " .. own.pid)
      own:close()
    end)
    os.execute("kill -STOP " .. own.pid) -- the kernel still accepts connections for it
    local c = cluster.new { redis = own.url, connect_timeout_ms = 300 }
    local t0 = core.now()
    local r, err = helpers.run(function()
      local t = tide.spawn(function() return c:call("PING") end)
      return t:join(5000)
    end)
    local took = core.now() - t0
    assert.is_nil(r)
    assert.equal("ClusterUnavailable", err.code)
    assert.equal("timeout", err.reason)
    assert.matches("did not answer within 300 ms", err.message)
    assert.is_true(took < 2000, "took " .. took .. " ms")
    -- a session built meanwhile fails the same way, at once
    tide.cluster { redis = own.url, connect_timeout_ms = 300 }
    local p = tide.provider.openai { base_url = "http://127.0.0.1:1/v1", api_key = "k", model = "m" }
    local s, serr = tide.session { id = "x", store = "redis", agent = "helper", provider = p }
    assert.is_nil(s)
    assert.equal("ClusterUnavailable", serr.code)
    os.execute("kill -CONT " .. own.pid)
    assert.equal("PONG", helpers.run(function() return c:call("PING") end))
    helpers.run(function() c:close() end)
  end)

  it("joins over a unix socket, on the database the URL names", function()
    local dir = helpers.tmpdir()
    local sock = dir .. "/redis.sock"
    local own = redis_server.start { args = { "--unixsocket", sock, "--unixsocketperm", "700" } }
    finally(function()
      own:close()
      helpers.rmdir(dir)
    end)
    -- what is in a database, asked over the socket, apart from the code under test
    local function keys(db)
      local out = helpers.sh(("redis-cli -s %s -n %d --raw KEYS '*'"):format(sock, db))
      local list = {}
      for k in out:gmatch("[^\n]+") do list[#list + 1] = k end
      table.sort(list)
      return list
    end
    local prefix = "u" .. math.random(1, 1e9)
    helpers.run(function()
      local mock = testing.mock_server { default = testing.echo }
      local c = tide.cluster { redis = "unix://" .. sock .. "?db=3", prefix = prefix }
      assert.equal("unix://" .. sock, c.url)
      -- the connection is the socket's, and on database 3
      local info = assert(c:call("CLIENT", "INFO"))
      assert.matches("addr=" .. sock:gsub("%p", "%%%0") .. ":0 ", info)
      assert.matches(" db=3 ", info)
      local s = assert(tide.session { id = "sock", store = "redis", agent = "helper", provider = provider(mock) })
      assert.equal("echo: over the socket", s:turn("over the socket"))
      s:close()
      mock:close()
    end)
    assert.same({ prefix .. ":session:sock" }, keys(3))
    assert.same({}, keys(0))
    local records = helpers.sh(("redis-cli -s %s -n 3 --raw LRANGE %s:session:sock 0 -1"):format(sock, prefix))
    assert.matches('"content":"over the socket"', records, 1, true)
    assert.matches('"content":"echo: over the socket"', records, 1, true)
  end)
end)
