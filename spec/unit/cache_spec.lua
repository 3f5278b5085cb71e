local tide = require "tide"
local core = require "tide.core"
local json = require "tide.json"
local helpers = require "helpers"
local cache = require "tide.integrations.cache"
local integrations = require "tide.integrations"

local function toolkits(extra)
  local t = {
    { slug = "github", description = "Code", connected = true,
      tools = { { name = "GITHUB_LIST_ISSUES", description = "List issues" } },
      gated_tools = { { name = "GITHUB_DELETE_REPO", reason = "admin scope is off" } } },
    { slug = "gmail", description = "Mail", connected = false },
  }
  if extra then t[#t + 1] = extra end
  return t
end

-- A source written the way an author would: any table with kind, identity
-- and fetch.
local function counting_source(id, fetch)
  return { kind = "test", fetches = 0, identity = function() return "test|" .. id end,
           fetch = function(self) self.fetches = self.fetches + 1; return fetch(self) end }
end

-- A source whose fetch waits until the spec opens its gate: orderings that
-- matter are then decided by the spec, not by timers.
local function gated_source(id)
  local src = counting_source(id, function(self)
    helpers.wait_until(function() return self.open end, "the gate to open")
    return toolkits()
  end)
  src.open = false
  return src
end

describe("integration cache", function()
  before_each(function()
    cache.invalidate_all()
    cache.reset_stats()
    cache.ttl_ms(60000)
  end)
  after_each(function()
    cache.ttl_ms(60000)
    helpers.assert_quiet()
  end)

  it("starts a process with a TTL of 60 s", function()
    -- in a fresh process: the specs here set the TTL (and put 60 s back),
    -- so this one's would say what they left, not the default
    local build = os.getenv("TIDE_BUILD_DIR") or "build"
    local out = helpers.sh(("LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' ASAN_OPTIONS=detect_leaks=0 "
      .. "lua5.4 -e 'local c = require \"tide.integrations.cache\"; io.write(\"ttl \", c.ttl_ms())'"):format(build))
    assert.are.equal("ttl 60000", out)
  end)

  it("misses once, then hits with the very same snapshot table", function()
    local src = integrations.static{ id = "hitmiss", toolkits = toolkits() }
    local a, b = helpers.run(function() return cache.get(src), cache.get(src) end)
    assert.are.equal(1, src.fetches)
    assert.are.equal(a, b)
    assert.are.equal("static|hitmiss", a.key)
    assert.are.equal(16, #a.hash)
    assert.are.same({ "github", "gmail" }, { a.toolkits[1].slug, a.toolkits[2].slug })
    local st = cache.stats()
    assert.are.same({ 1, 1, 1, 0, 1 }, { st.hits, st.misses, st.fetches, st.waits, st.entries })
  end)

  it("caches an empty list as a success", function()
    local src = integrations.static{ id = "empty", toolkits = {} }
    local snap = helpers.run(function() return cache.get(src) end)
    assert.are.same({}, snap.toolkits)
    assert.are.equal("[]", json.canonical(snap.toolkits))
    assert.are.equal(core.cache_hash("[]"), snap.hash)
    assert.are.equal(snap, helpers.run(function() return cache.get(src) end))
    assert.are.equal(1, src.fetches)
    assert.are.equal(snap, cache.peek(src))
  end)

  it("never caches a failure, and the next get fetches again", function()
    local src = integrations.static{ id = "flaky", toolkits = toolkits(), fail = "backend down" }
    local snap, err = helpers.run(function() return cache.get(src) end)
    assert.is_nil(snap)
    assert.are.equal("IntegrationsUnavailable", err.code)
    assert.matches("backend down", tostring(err))
    assert.are.equal("backend down", err.cause.message)
    assert.is_nil(cache.peek(src))
    assert.are.equal(0, cache.stats().entries)
    src.fail = nil
    snap = helpers.run(function() return cache.get(src) end)
    assert.are.equal(2, src.fetches)
    assert.are.equal("github", snap.toolkits[1].slug)
    assert.are.equal(1, cache.stats().failures)
  end)

  it("treats a fetch that raises, or returns nonsense, as a failure", function()
    local raising = counting_source("raising", function() error("kaboom") end)
    local _, err = helpers.run(function() return cache.get(raising) end)
    assert.are.equal("IntegrationsUnavailable", err.code)
    assert.matches("kaboom", tostring(err))
    local bad = counting_source("bad", function() return { { description = "no slug" } } end)
    _, err = helpers.run(function() return cache.get(bad) end)
    assert.are.equal("IntegrationsUnavailable", err.code)
    assert.matches("slug", err.message)
    local wrong = counting_source("wrong", function() return "github" end)
    _, err = helpers.run(function() return cache.get(wrong) end)
    assert.matches("toolkits must be an array", err.message)
    -- none of them left anything behind; each retry fetches again
    assert.are.equal(0, cache.stats().entries)
    helpers.run(function() cache.get(raising) end)
    assert.are.equal(2, raising.fetches)
  end)

  it("expires snapshots after the TTL", function()
    cache.ttl_ms(100)
    local src = integrations.static{ id = "ttl", toolkits = toolkits() }
    local first, peeked, second = helpers.run(function()
      local s1 = cache.get(src)
      assert.are.equal(s1, cache.get(src)) -- still fresh
      tide.sleep(150)
      local p = cache.peek(src)
      return s1, p, cache.get(src)
    end)
    assert.is_nil(peeked)
    assert.are_not.equal(first, second)
    assert.are.equal(first.hash, second.hash)
    assert.are.equal(2, src.fetches)
  end)

  it("shares one fetch among 100 concurrent cold gets", function()
    local src = integrations.static{ id = "herd", toolkits = toolkits(), delay_ms = 20 }
    local snaps = helpers.run(function()
      local tasks, out = {}, {}
      for i = 1, 100 do tasks[i] = tide.spawn(function() return cache.get(src) end) end
      for i = 1, 100 do out[i] = assert(tasks[i]:join()) end
      return out
    end)
    assert.are.equal(1, src.fetches)
    for i = 2, 100 do assert.are.equal(snaps[1], snaps[i]) end
    local st = cache.stats()
    assert.are.same({ 100, 1, 99, 0, 0 },
      { st.misses, st.fetches, st.waits, st.in_flight, st.waiting })
  end)

  it("hands a failure to every waiter without caching it", function()
    local src = integrations.static{ id = "herdfail", toolkits = toolkits(), delay_ms = 10,
                                     fail = "nope" }
    local errs = helpers.run(function()
      local tasks, out = {}, {}
      for i = 1, 10 do tasks[i] = tide.spawn(function() return cache.get(src) end) end
      for i = 1, 10 do out[i] = select(2, tasks[i]:join()) end
      return out
    end)
    assert.are.equal(1, src.fetches)
    for i = 1, 10 do assert.are.equal("IntegrationsUnavailable", errs[i].code) end
    assert.is_nil(cache.peek(src))
  end)

  it("peek never fetches and never waits", function()
    local src = gated_source("peek")
    assert.is_nil(cache.peek(src))
    assert.is_nil(cache.peek("test|peek"))
    local during, after = helpers.run(function()
      local t = tide.spawn(function() return cache.get(src) end)
      tide.sleep(5)
      assert.are.equal(1, cache.stats().in_flight)
      local d = cache.peek(src) -- the fetch is in flight: nothing yet, no wait
      src.open = true
      return d, t:join()
    end)
    assert.is_nil(during)
    assert.are.equal(after, cache.peek(src))
    assert.are.equal(after, cache.peek("test|peek"))
    assert.are.equal(1, src.fetches)
    assert.are.equal(0, cache.stats().hits)
  end)

  it("invalidates one key or all of them", function()
    local a = integrations.static{ id = "inv-a", toolkits = toolkits() }
    local b = integrations.static{ id = "inv-b", toolkits = {} }
    helpers.run(function() cache.get(a); cache.get(b) end)
    assert.are.equal(2, cache.stats().entries)
    assert.is_true(cache.invalidate(a))
    assert.is_false(cache.invalidate(a))
    assert.is_nil(cache.peek(a))
    assert.is_not_nil(cache.peek(b))
    helpers.run(function() cache.get(a); cache.get(b) end)
    assert.are.same({ 2, 1 }, { a.fetches, b.fetches })
    assert.are.equal(2, cache.invalidate_all())
    assert.is_nil(cache.peek(a))
    assert.is_nil(cache.peek("static|inv-b"))
    assert.are.equal(0, cache.stats().entries)
  end)

  it("delivers a fetch that was invalidated in flight but does not keep it", function()
    local src = gated_source("inflight")
    local s1, s2 = helpers.run(function()
      local t1 = tide.spawn(function() return cache.get(src) end)
      local t2 = tide.spawn(function() return cache.get(src) end)
      tide.sleep(5)
      assert.is_true(cache.invalidate(src)) -- e.g. a connect happened meanwhile
      src.open = true
      return t1:join(), t2:join()
    end)
    assert.are.equal(s1, s2)
    assert.is_nil(cache.peek(src))
    assert.are.equal(1, src.fetches)
    helpers.run(function() cache.get(src) end)
    assert.are.equal(2, src.fetches)
  end)

  it("hashes with FNV-1a 64, stably and sensitively", function()
    assert.are.equal("cbf29ce484222325", core.cache_hash(""))
    assert.are.equal("af63dc4c8601ec8c", core.cache_hash("a"))
    assert.are.equal(core.cache_hash("abc"), core.cache_hash("abc"))
    assert.are_not.equal(core.cache_hash("abc"), core.cache_hash("abd"))
    -- the snapshot hash ignores input order, sees every change
    local base = cache.hash(cache.normalize(toolkits()))
    local reversed = toolkits()
    reversed[1], reversed[2] = reversed[2], reversed[1]
    assert.are.equal(base, cache.hash(cache.normalize(reversed)))
    local flipped = toolkits()
    flipped[2].connected = true
    assert.are_not.equal(base, cache.hash(cache.normalize(flipped)))
    local more = toolkits()
    table.insert(more[1].tools, { name = "GITHUB_GET_REPO" })
    assert.are_not.equal(base, cache.hash(cache.normalize(more)))
    local src = integrations.static{ id = "hash", toolkits = toolkits() }
    assert.are.equal(base, helpers.run(function() return cache.get(src) end).hash)
  end)

  it("lets a waiter be cancelled without disturbing the fetch or other waiters", function()
    local src = gated_source("cancel-waiter")
    local owner_snap, cancelled_err, other_snap = helpers.run(function()
      local owner = tide.spawn(function() return cache.get(src) end)
      tide.sleep(2)
      local waiter = tide.spawn(function() return cache.get(src) end)
      local other = tide.spawn(function() return cache.get(src) end)
      tide.sleep(5)
      assert.are.equal(2, cache.stats().waiting)
      assert.is_true(waiter:cancel())
      local _, e = waiter:join()
      assert.are.equal(1, cache.stats().waiting) -- the cancelled wait is gone
      collectgarbage() -- the cancelled waiter's memory may go now
      src.open = true
      return owner:join(), e, other:join()
    end)
    assert.are.equal("Cancelled", cancelled_err.code)
    assert.are.equal(owner_snap, other_snap)
    assert.are.equal(1, src.fetches)
    assert.are.equal(owner_snap, cache.peek(src))
  end)

  it("fails the waiters when the fetching task is cancelled, and retries later", function()
    local src = gated_source("cancel-owner")
    local owner_err, waiter_err = helpers.run(function()
      local owner = tide.spawn(function() return cache.get(src) end)
      tide.sleep(2)
      local waiters = {}
      for i = 1, 5 do waiters[i] = tide.spawn(function() return cache.get(src) end) end
      tide.sleep(5)
      owner:cancel()
      local _, oe = owner:join()
      local errs = {}
      for i = 1, 5 do errs[i] = select(2, waiters[i]:join()) end
      for i = 2, 5 do assert.are.equal(errs[1], errs[i]) end
      return oe, errs[1]
    end)
    assert.are.equal("Cancelled", owner_err.code)
    assert.are.equal("IntegrationsUnavailable", waiter_err.code)
    assert.are.equal("Cancelled", waiter_err.cause.code)
    assert.is_nil(cache.peek(src))
    assert.are.equal(0, cache.stats().in_flight)
    src.open = true
    local snap = helpers.run(function() return cache.get(src) end)
    assert.are.equal("github", snap.toolkits[1].slug)
    assert.are.equal(2, src.fetches)
  end)

  it("answers a fetch that looks up its own key with an error, not a deadlock", function()
    local src
    src = counting_source("selfish", function(self)
      local snap, err = cache.get(self)
      if not snap then return nil, err end
      return {}
    end)
    local snap, err = helpers.run(function() return cache.get(src) end)
    assert.is_nil(snap)
    assert.are.equal("IntegrationsUnavailable", err.code)
    assert.matches("already in progress", err.cause.message)
  end)

  it("works outside any task by driving the loop itself", function()
    local src = integrations.static{ id = "blocking", toolkits = toolkits(), delay_ms = 5 }
    local snap = cache.get(src)
    assert.are.equal(snap, cache.get(src))
    assert.are.equal(1, src.fetches)
  end)

  it("raises on misuse", function()
    assert.has_error(function() cache.get(nil) end)
    assert.has_error(function() cache.get({}) end)
    assert.has_error(function() cache.get({ identity = function() return "" end,
                                            fetch = function() end }) end)
    assert.has_error(function() cache.ttl_ms(-1) end)
    assert.has_error(function() core.cache_lookup("") end)
    assert.has_error(function() core.cache_store("k", "not a table") end)
  end)

  it("seeds with cache_store and ignores cache_fail without a fetch in flight", function()
    local snap = { key = "seed", hash = "0", toolkits = {}, fetched_at = 0 }
    assert.is_true(core.cache_store("seed", snap))
    assert.are.equal(snap, core.cache_peek("seed"))
    assert.is_false(core.cache_fail("seed", "ignored"))
    assert.are.equal(snap, core.cache_peek("seed"))
    assert.is_true(core.cache_store("short", snap, 0)) -- ttl 0: stale at once
    assert.is_nil(core.cache_peek("short"))
    assert.are.equal("miss", core.cache_lookup("short"))
    assert.is_true(core.cache_fail("short", "gave up"))
    assert.is_nil(core.cache_peek("short"))
  end)
end)
