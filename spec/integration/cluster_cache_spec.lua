-- The integration cache shared by the processes of a cluster, against a
-- real redis-server (spec/support/redis.lua) and real OS processes
-- (spec/support/cache_worker.lua, driven over pipes). Each worker's source
-- prints a line per fetch, so fetches are counted outside the code under
-- test.
local helpers = require "helpers"
local redis_server = require "support.redis"
local cjson = require "cjson"

local core = require "tide.core"
local json = require "tide.json"

local WORKER = (os.getenv("PWD") or ".") .. "/spec/support/cache_worker.lua"

-- A worker process; w.fetches counts the FETCH lines read so far.
local function worker(url, prefix, settings)
  local env = { LUA_PATH = package.path, LUA_CPATH = package.cpath, PATH = os.getenv("PATH") }
  for _, k in ipairs { "LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS" } do env[k] = os.getenv(k) end
  local p = assert(core.process_spawn { argv = { "lua5.4", WORKER, url, prefix,
    settings and cjson.encode(settings) or "" }, env = env })
  local w = { p = p, fetches = 0 }
  -- Reads until the answer `word`, counting fetches on the way.
  function w:expect(word, ms)
    while true do
      local line, err = p:read_line(ms or 10000)
      if not line then
        error(("worker: no %s (%s); its stderr: %s"):format(word, tostring(err), p:stderr()), 2)
      end
      if line:match("^FETCH ") then
        self.fetches = self.fetches + 1
        if word == "FETCH" then return end
      else
        local said, body = line:match("^(%S+) (.*)$")
        if said ~= word then error("worker said " .. line .. " instead of " .. word, 2) end
        return cjson.decode(body)
      end
    end
  end
  function w:send(cmd) p:write(cmd .. "\n") end
  function w:ask(cmd, word, ms)
    self:send(cmd)
    return self:expect(word, ms)
  end
  function w:close() if not p:closed() then p:close(500) end end
  w:expect("READY")
  return w
end

local function ms_since(t0) return (core.hrtime() - t0) / 1e6 end

describe("the cluster's integration cache", function()
  local srv
  local workers = {}
  local n = 0

  -- A prefix per case: no case sees another's keys.
  local function prefix()
    n = n + 1
    return "cc" .. n
  end

  local function start(url, pfx, settings)
    local w = worker(url, pfx, settings)
    workers[#workers + 1] = w
    return w
  end

  setup(function() srv = redis_server.start() end)
  teardown(function() if srv then srv:close() end end)
  after_each(function()
    helpers.run(function()
      for _, w in ipairs(workers) do w:close() end
    end)
    workers = {}
  end)

  it("gives every process one fetch's snapshot, across processes", function()
    local pfx = prefix()
    helpers.run(function()
      local ws = {}
      for i = 1, 3 do
        ws[i] = start(srv.url, pfx)
        ws[i]:ask("source one 300 ok 1", "SOURCE")
      end
      for i = 1, 3 do ws[i]:send("get 20") end
      local hashes, fetches, waits, hits = {}, 0, 0, 0
      for i = 1, 3 do
        local got = ws[i]:expect("GOT")
        assert.equal(20, got.ok)
        assert.same({}, got.errors)
        hashes[got.hashes[1]] = true
        assert.equal(1, #got.hashes)
        fetches = fetches + ws[i].fetches
        local st = ws[i]:ask("stats", "STATS").cluster
        waits, hits = waits + st.waits, hits + st.hits
      end
      assert.equal(1, fetches) -- one fetch for 60 lookups in three processes
      assert.equal(1, #(function() local l = {} for h in pairs(hashes) do l[#l + 1] = h end return l end)())
      assert.equal(2, waits)
      assert.equal(2, hits)
      -- the key names carry a hash, not the identity
      local keys = srv:cli(("--scan --pattern '%s:*'"):format(pfx))
      assert.matches("^" .. pfx .. ":icache:{%x+}\n$", keys)
      assert.not_matches("spec|shared", keys)
    end)
  end)

  it("takes the lease over when the fetching process is killed", function()
    local pfx = prefix()
    helpers.run(function()
      local a = start(srv.url, pfx, { lease_ms = 600 })
      local b = start(srv.url, pfx, { lease_ms = 600 })
      a:ask("source one 0 hang 1", "SOURCE")
      b:ask("source one 0 ok 1", "SOURCE")
      a:send("get 1")
      a:expect("FETCH") -- a holds the lease and fetches for ever
      b:send("get 5")
      require("tide").sleep(300)
      local t0 = core.hrtime()
      a.p:kill("KILL")
      local got = b:expect("GOT")
      assert.equal(5, got.ok)
      assert.equal(1, b.fetches)
      assert.is_true(ms_since(t0) < 3000)
      local st = b:ask("stats", "STATS").cluster
      assert.equal(1, st.takeovers)
      assert.equal(1, st.fetches)
      assert.equal(0, st.direct_fetches)
    end)
  end)

  it("keeps a shared entry for its TTL, in every process", function()
    local pfx = prefix()
    helpers.run(function()
      local a = start(srv.url, pfx)
      local b = start(srv.url, pfx)
      a:ask("ttl 400", "TTL")
      a:ask("source one 0 ok 1", "SOURCE")
      b:ask("source one 0 ok 1", "SOURCE")
      assert.equal(1, a:ask("get 1", "GOT").ok)
      assert.equal(1, b:ask("get 1", "GOT").ok)
      assert.equal(0, b.fetches) -- from Redis
      -- b's own TTL is 60 s, but it keeps the copy only for what was left
      local t0 = core.hrtime()
      assert.is_true(b:ask("gone 3000", "GONE").gone)
      assert.is_true(ms_since(t0) < 1000)
      require("tide").sleep(100)
      assert.equal(1, a:ask("get 1", "GOT").ok)
      assert.equal(2, a.fetches) -- the shared entry expired too
    end)
  end)

  it("never keeps a failure, and hands it to the processes that waited", function()
    local pfx = prefix()
    helpers.run(function()
      local a = start(srv.url, pfx)
      local b = start(srv.url, pfx)
      a:ask("source one 400 fail 1", "SOURCE")
      b:ask("source one 0 ok 1", "SOURCE")
      a:send("get 1")
      a:expect("FETCH")
      local got = b:ask("get 2", "GOT")
      assert.equal(0, got.ok)
      assert.matches("IntegrationsUnavailable: fetching integrations for 'spec|shared|one' failed in the process",
        got.errors[1])
      assert.equal(0, b.fetches)
      got = a:expect("GOT")
      assert.matches("the spec source fails", got.errors[1])
      assert.equal("", srv:cli(("--scan --pattern '%s:*'"):format(pfx)))
      -- the next lookup fetches again
      got = b:ask("get 1", "GOT")
      assert.equal(1, got.ok)
      assert.equal(1, b.fetches)
      assert.equal(1, b:ask("stats", "STATS").cluster.failed_waits)
    end)
  end)

  it("carries an invalidation to every process", function()
    local pfx = prefix()
    helpers.run(function()
      local a = start(srv.url, pfx)
      local b = start(srv.url, pfx)
      a:ask("source one 0 ok 1", "SOURCE")
      b:ask("source one 0 ok 1", "SOURCE")
      local h1 = a:ask("get 1", "GOT").hashes[1]
      assert.equal(h1, b:ask("get 1", "GOT").hashes[1])
      assert.equal(h1, b:ask("peek", "PEEK").hash)
      assert.equal(1, a.fetches + b.fetches)
      -- a connect on a's side: the source now answers version 2
      a:ask("source one 0 ok 2", "SOURCE")
      b:ask("source one 0 ok 2", "SOURCE")
      local inv = a:ask("invalidate", "INVALIDATED")
      assert.is_true(inv.had)
      assert.is_true(inv.sent)
      assert.is_true(b:ask("gone 3000", "GONE").gone)
      assert.equal("", srv:cli(("--scan --pattern '%s:*'"):format(pfx)))
      local h2 = b:ask("get 1", "GOT").hashes[1]
      assert.not_equal(h1, h2)
      assert.equal(h2, a:ask("get 1", "GOT").hashes[1])
      assert.equal(2, a.fetches + b.fetches)
      assert.equal(1, b:ask("stats", "STATS").cluster.invalidations_received)
    end)
  end)

  it("neither hangs nor answers wrong when Redis restarts mid-fetch", function()
    local own = redis_server.start()
    finally(function() own:close() end)
    local pfx = prefix()
    helpers.run(function()
      local a = start(own.url, pfx)
      local b = start(own.url, pfx)
      a:ask("source one 600 ok 1", "SOURCE")
      b:ask("source one 600 ok 1", "SOURCE")
      a:send("get 3")
      a:expect("FETCH")
      b:send("get 3")
      require("tide").sleep(100)
      local t0 = core.hrtime()
      own:restart()
      local ga, gb = a:expect("GOT"), b:expect("GOT")
      assert.is_true(ms_since(t0) < 5000)
      assert.equal(3, ga.ok)
      assert.equal(3, gb.ok)
      -- b fetched again (from the restarted Redis or directly): the entry
      -- a was fetching for was gone with the restart
      assert.is_true(a.fetches + b.fetches <= 2)
      -- a's write found its lease gone with the restart and was dropped;
      -- b took the lease on the new Redis (or, had its command failed,
      -- fetched directly): either way it says so
      local sa, sb = a:ask("stats", "STATS").cluster, b:ask("stats", "STATS").cluster
      assert.equal(1, sb.takeovers + sb.direct_fetches)
      assert.equal(1, sa.dropped_writes + sa.redis_errors)
      -- and the cluster works on: a third process finds or makes the entry
      local c = start(own.url, pfx)
      c:ask("source one 0 ok 1", "SOURCE")
      assert.equal(1, c:ask("get 1", "GOT").ok)
      local d = start(own.url, pfx)
      d:ask("source one 0 ok 1", "SOURCE")
      assert.equal(1, d:ask("get 1", "GOT").ok)
      assert.equal(0, d.fetches)
    end)
  end)

  it("fetches directly, and says so, when Redis is down", function()
    local own = redis_server.start()
    finally(function() own:close() end) -- closing twice is harmless
    local url = own.url
    local pfx = prefix()
    helpers.run(function()
      local a = start(url, pfx, { redis_timeout_ms = 500 })
      a:ask("source one 0 ok 1", "SOURCE")
      assert.equal(1, a:ask("get 1", "GOT").ok)
      own:stop(true) -- kill -9
      own:close()
      a:ask("source two 0 ok 1", "SOURCE")
      local t0 = core.hrtime()
      local got = a:ask("get 4", "GOT")
      assert.equal(4, got.ok)
      assert.is_true(ms_since(t0) < 3000)
      assert.equal(2, a.fetches)
      local st = a:ask("stats", "STATS").cluster
      assert.equal(1, st.direct_fetches)
      assert.equal(1, st.redis_errors)
      -- a process whose Redis was never there fetches directly at once
      local b = start(url, pfx)
      b:ask("source one 0 ok 1", "SOURCE")
      t0 = core.hrtime()
      assert.equal(2, b:ask("get 2", "GOT").ok)
      assert.is_true(ms_since(t0) < 1000)
      assert.equal(1, b:ask("stats", "STATS").cluster.direct_fetches)
    end)
  end)

  it("sends an MCP server's list_changed to Redis and the other processes", function()
    local tide = require "tide"
    local cluster = require "tide.cluster"
    local cache = tide.integrations.cache
    local pfx = prefix()
    local c = tide.cluster { redis = srv.url, prefix = pfx }
    finally(function()
      cluster.set_current(nil)
      c:close()
      core.cache_invalidate_all()
    end)
    local src = tide.integrations.mcp { name = "scripted", timeout_ms = 2000,
      command = { "lua5.4", (os.getenv("PWD") or ".") .. "/spec/support/mcp_server.lua", "normal" },
      env = { LUA_PATH = package.path, LUA_CPATH = package.cpath } }
    helpers.run(function()
      local other = start(srv.url, pfx)
      assert.equal(1, other:ask("get 1", "GOT").ok) -- it listens from its first lookup on
      local function entries()
        local _, k = srv:cli(("--scan --pattern '%s:*'"):format(pfx)):gsub("\n", "")
        return k
      end
      assert(cache.get(src))
      assert.equal(2, entries()) -- the other's source, and the MCP server's
      assert.equal("changed", src:execute("changed", {}))
      assert.is_nil(cache.peek(src))
      helpers.wait_until(function() return cache.stats().cluster.invalidations_sent == 1 end, "the invalidation")
      assert.equal(1, entries())
      -- the other process heard it (its own source has another identity:
      -- what it counts is the message)
      helpers.wait_until(function()
        return other:ask("stats", "STATS").cluster.invalidations_received == 1
      end, "the other process")
      src:close()
    end)
  end)

  it("gives back the snapshot the fetching process made, [] and {} apart", function()
    local cc = require "tide.integrations.cluster_cache"
    local cache = require "tide.integrations.cache"
    local toolkits = assert(cache.normalize { {
      slug = "x", description = 'quotes " and \\ and [] {} in text', gated_tools = {},
      tools = { { name = "t", description = "é ✓ \"[]\"", parameters = {
        type = "object", required = json.array(), properties = {}, enum = { 1, 2.5, json.array(), {} },
        nested = { a = json.array(), b = {}, c = { json.array({ json.array() }) } } } } },
    }, { slug = "a", description = "" } })
    local text = json.canonical(toolkits)
    local snap = cc._decode("k", cc._encode("k", 60000, text), 1000)
    assert.equal(text, json.canonical(snap.toolkits))
    assert.equal(core.cache_hash(text), snap.hash)
    assert.equal(json.array_mt, getmetatable(snap.toolkits[2].tools[1].parameters.required))
    assert.is_nil(getmetatable(snap.toolkits[2].tools[1].parameters.properties))
    assert.equal("integer", math.type(snap.toolkits[2].tools[1].parameters.enum[1]))
    assert.is_nil(cc._decode("other", cc._encode("k", 60000, text), 1000)) -- another identity's
  end)

  it("raises on misuse of its settings, naming the option", function()
    local cache = require("tide").integrations.cache
    assert.has_error(function() cache.cluster { lease_ms = 0 } end,
      "bad argument #1 to 'cluster' (option 'lease_ms' must be a positive integer)")
    assert.has_error(function() cache.cluster { lease = 5 } end,
      "bad argument #1 to 'cluster' (unknown option 'lease')")
    assert.has_error(function() cache.cluster(5) end, "bad argument #1 to 'cluster' (table expected, got number)")
    local now = cache.cluster()
    assert.same({ lease_ms = 3000, wait_ms = 60000, redis_timeout_ms = 10000, pause_ms = 1000 }, now)
  end)

  it("is not loaded by a process without a cluster", function()
    local out = helpers.sh(([[cd %q && LUA_CPATH=%q LUA_PATH='lua/?.lua;lua/?/init.lua;;' lua5.4 -e '
      local tide = require "tide"
      local src = tide.integrations.static { toolkits = { { slug = "s", description = "d" } } }
      assert(tide.integrations.cache.get(src))
      tide.integrations.cache.invalidate(src)
      print(package.loaded["tide.redis"], package.loaded["tide.cluster"],
        package.loaded["tide.integrations.cluster_cache"], tide.integrations.cache.stats().cluster)']]):format(
      os.getenv("PWD"), (os.getenv("TIDE_BUILD_DIR") or "build") .. "/?.so;;"))
    assert.equal("nil\tnil\tnil\tnil\n", out)
  end)
end)
