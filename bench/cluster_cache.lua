--- Row 13: the integration cache of a cluster. Eight worker processes
--- (bench/cluster_cache_client.lua) on this machine share one Redis on
--- loopback and build 20,000 new sessions between them (2,500 each, 250 at
--- a time), over 200 users' integration sources, each running its first
--- turn against an in-process mock provider. The sources fetch over HTTP
--- from a process of their own (bench/cluster_cache_source.lua) that
--- answers after 100 ms and counts the requests: the row fails unless the
--- whole run made exactly one fetch per user, 200, in every repetition.
---
--- The floor measured alongside is the same run without a cluster: each
--- worker has only its own process cache, so every worker fetches every
--- user (1,600 fetches). Times: the whole run's wall (from the common start
--- to the last worker's last reply) and, per session, the build
--- (tide.session{}: cold, or prewarmed once the process holds the user's
--- snapshot) and the time from it to the reply of turn 1, which takes in
--- the wait for the integrations and the load of 250 sessions at a time
--- (median and p99 over every session of the run); medians over the
--- repetitions.
local common = require "bench.common"
local tide = require "tide"

local WORKERS, USERS, CONCURRENCY, DELAY_MS = 8, 200, 250, 100

local function fetch_count(url)
  local res = assert(tide.http.request { url = url .. "/count", timeout_ms = 5000 })
  return common.json_decode(res.body).fetches
end

-- One run: the workers start together, on the cluster at `redis` (nil: per
-- process caches only). Returns what they did.
local function run_once(redis, prefix, source, n)
  local per = n // WORKERS
  local before = fetch_count(source.url)
  -- Starting eight lua5.4 processes on a busy 2-core machine takes a while:
  -- they wait for a common start so the first wave of misses overlaps.
  local start_ns = common.hrtime() + math.floor(1.5e9)
  local outs, cmds = {}, {}
  for w = 1, WORKERS do
    outs[w] = common.tmpname()
    cmds[w] = ("%s lua5.4 %s %s %s %s %d %d %d %d >%s 2>&1 &"):format(common.lua_env(),
      common.sh(common.bench .. "/cluster_cache_client.lua"), common.sh(redis or "none"), common.sh(prefix),
      common.sh(source.url), per, USERS, CONCURRENCY, start_ns, common.sh(outs[w]))
  end
  common.capture("sh -c " .. common.sh(table.concat(cmds, "\n") .. "\nwait") .. " </dev/null")
  local times, builds, last, late, tier = {}, {}, 0, 0, { hits = 0, waits = 0, takeovers = 0, direct_fetches = 0, fetches = 0 }
  for w = 1, WORKERS do
    local text = common.read(outs[w]) or ""
    os.remove(outs[w])
    local r = common.json_decode(text:match("{.*}") or "")
    if not r then error(("bench: cluster_cache worker %d printed: %s"):format(w, text:sub(1, 300))) end
    if r.errors > 0 then
      error(("bench: %d of %d sessions of worker %d failed: %s"):format(r.errors, per, w, r.first_error))
    end
    for _, t in ipairs(r.times) do times[#times + 1] = t end
    for _, t in ipairs(r.builds) do builds[#builds + 1] = t end
    last = math.max(last, r.end_ns)
    late = math.max(late, r.start_ns - start_ns)
    for k in pairs(tier) do tier[k] = tier[k] + ((r.cache.cluster or {})[k] or 0) end
  end
  return {
    fetches = fetch_count(source.url) - before,
    wall = (last - start_ns) / 1e9,
    late_ms = late / 1e6, -- the last worker to start, after the common start
    median = common.median(times), p99 = common.percentile(times, 99), build = common.median(builds),
    tier = tier,
  }
end

return function()
  local n = common.reps(20000, 4000)
  local reps = common.reps(3, 1)
  local redis_server = dofile(common.root .. "/spec/support/redis.lua")
  local redis = redis_server.start()
  local ok, res = pcall(function()
    local source = common.start_lua(("%s %d"):format(common.sh(common.bench .. "/cluster_cache_source.lua"), DELAY_MS),
      { what = "the integration source" })
    local shared, alone = {}, {}
    for i = 1, reps do
      shared[i] = run_once(redis.url, "bench" .. i, source, n)
      if shared[i].fetches ~= USERS then
        error(("%d workers made %d fetches for %d users, expected exactly %d"):format(
          WORKERS, shared[i].fetches, USERS, USERS))
      end
      alone[i] = run_once(nil, "alone" .. i, source, n)
    end
    source.stop()
    return { shared = shared, alone = alone }
  end)
  redis:close()
  if not ok then error(res, 0) end

  local function med(runs, field)
    local xs = {}
    for i, r in ipairs(runs) do xs[i] = r[field] end
    return common.median(xs), xs
  end
  local fetches, shown = {}, {}
  for i, r in ipairs(res.shared) do fetches[i], shown[i] = r.fetches, common.n(r.fetches) end
  local alone_fetches = (med(res.alone, "fetches"))
  local sw, sws = med(res.shared, "wall")
  local aw, aws = med(res.alone, "wall")
  local sm, sms = med(res.shared, "median")
  local am, ams = med(res.alone, "median")
  local sp, aq = (med(res.shared, "p99")), (med(res.alone, "p99"))
  local sb, ab = (med(res.shared, "build")), (med(res.alone, "build"))
  local late = math.max((med(res.shared, "late_ms")), (med(res.alone, "late_ms")))
  -- the tier's counters of the run whose wall is the median
  local mid = res.shared[1]
  for _, r in ipairs(res.shared) do if r.wall == sw then mid = r end end
  local t = mid.tier
  local label = ("%d workers, %s new sessions, %d users"):format(WORKERS, common.n(n), USERS)
  return {
    common.line(label .. ": source fetches", table.concat(shown, ", "),
      ("goal exactly %d every run; %s with per-process caches only"):format(USERS, common.n(alone_fetches)),
      "exact: ok", { fetches = fetches, alone_fetches = alone_fetches, users = USERS, workers = WORKERS }),
    common.line(label .. ": whole run wall", common.num(sw) .. " s",
      ("per-process caches only %s s; source latency %d ms%s"):format(common.num(aw), DELAY_MS,
        late > 50 and ("; a worker started %s ms late"):format(common.num(late)) or ""),
      common.x(sw / aw), { walls = sws, alone_walls = aws }),
    common.line(label .. ": per session, tide.session{} median",
      common.num(sb) .. " us", ("per-process caches only %s us"):format(common.num(ab)), common.x(sb / ab),
      { build_us = sb, alone_build_us = ab }),
    common.line(label .. ": per session, to turn 1's reply, median (p99)",
      ("%s ms (%s ms)"):format(common.num(sm), common.num(sp)),
      ("per-process caches only %s ms (%s ms); %d sessions at a time per worker"):format(common.num(am),
        common.num(aq), CONCURRENCY),
      common.x(sm / am), { medians = sms, alone_medians = ams }),
    common.line(label .. ": from Redis / waited / took over / fetched directly",
      ("%s / %s / %s / %s"):format(common.n(t.hits), common.n(t.waits), common.n(t.takeovers),
        common.n(t.direct_fetches)),
      ("per-process misses, summed over the workers; %s fetched holding the lease"):format(common.n(t.fetches)),
      "", { tier = t }),
  }
end
