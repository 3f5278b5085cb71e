--- Row 9: 10,000 sessions in flight. Each is a tool-using session (two round
--- trips) against a mock in another process that waits 1 s before every
--- reply, so the floor is 2 s. The client runs in a process of its own
--- (bench/scale_client.lua) so that its peak RSS is the sessions' alone;
--- RSS per session is peak RSS / sessions (and, in the raw record, the
--- growth over the baseline / sessions). Client and mock get a core each.
---
--- The floor measured alongside: raw_curl with the same pattern (N
--- transfers at once, each slot sending a second request when its first
--- returns: `concurrent 2N N`) against the same kind of mock. It shows what
--- libcurl and the mock cost on this machine before tide adds anything.
local common = require "bench.common"

local raise_somaxconn = common.raise_somaxconn

-- libcurl 7.88 walks every connection of a multi handle to find a reusable
-- one, so one multi with ten thousand transfers is quadratic (the single-multi
-- figure above). tide spreads transfers over multi handles of 512; the fair
-- floor does the same with raw_curl: SHARD transfers per process, n / SHARD
-- processes, all pinned to the client's core, timed from the first start to
-- the last exit. Returns the wall seconds and the summed errors.
local SHARD = 500
local function raw_sharded(url, n)
  local k = math.max(1, n // SHARD)
  local outs, cmds = {}, {}
  for i = 1, k do
    outs[i] = common.tmpname()
    cmds[i] = ("%s%s %s concurrent %d %d >%s 2>&1 &"):format(common.on_cpu(0), common.sh(common.raw_curl_bin),
      common.sh(url .. "/v1/chat/completions"), 2 * SHARD, SHARD, common.sh(outs[i]))
  end
  local t0 = common.hrtime()
  common.capture("sh -c " .. common.sh(table.concat(cmds, "\n") .. "\nwait") .. " </dev/null")
  local wall = (common.hrtime() - t0) / 1e9
  local errors, conns = 0, 0
  for i = 1, k do
    local r = common.json_decode((common.read(outs[i]) or ""):match("{.*}") or "")
    os.remove(outs[i])
    if not r then error("bench: a sharded raw_curl process failed") end
    errors, conns = errors + r.errors, conns + r.connections
  end
  if errors > 0 then error(("bench: sharded raw_curl: %d errors"):format(errors)) end
  return wall, k, conns
end

local function measure()
  local n = common.reps(10000, 1000)
  local reps = common.reps(3, 1)
  local runs, raws, sharded, shard_procs = {}, {}, {}, 0
  for i = 1, reps do
    local m = common.start_mock { delay_ms = 1000, tool_loop = 1, cpu = 1 }
    local ok, out = pcall(common.capture, ("%s %slua5.4 %s scale %s %d"):format(common.lua_env(),
      common.on_cpu(0), common.sh(common.bench .. "/scale_client.lua"), common.sh(m.url), n))
    m.stop()
    if not ok then error(out, 0) end
    local r = common.json_decode(out:match("{.*}") or "")
    if not r then error("scale_client printed: " .. out) end
    if r.errors > 0 then error(("%d of %d sessions failed: %s"):format(r.errors, n, r.first_error)) end
    runs[i] = r
    if i <= common.reps(2, 1) then
      m = common.start_mock { delay_ms = 1000, tool_loop = 1, cpu = 1 }
      local rok, raw = pcall(common.raw_curl, ("%s concurrent %d %d"):format(
        common.sh(m.url .. "/v1/chat/completions"), 2 * n, n), 0)
      m.stop()
      if not rok then error(raw, 0) end
      raws[#raws + 1] = raw
      m = common.start_mock { delay_ms = 1000, tool_loop = 1, cpu = 1 }
      local sok, sw, sk = pcall(raw_sharded, m.url, n)
      m.stop()
      if not sok then error(sw, 0) end
      sharded[#sharded + 1], shard_procs = sw, sk
    end
  end
  -- The same with tracing on (OTEL_EXPORTER_OTLP_ENDPOINT set for the
  -- client): every span encoded and posted to a collector process (a mock
  -- that answers 404: the client drops and counts them, as for a collector
  -- that refuses them). Goal: within 1.1x of tracing off.
  local traced = {}
  for i = 1, common.reps(2, 1) do
    local m = common.start_mock { delay_ms = 1000, tool_loop = 1, cpu = 1 }
    local collector = common.start_mock { cpu = 1 }
    local ok, out = pcall(common.capture, ("OTEL_EXPORTER_OTLP_ENDPOINT=%s %s %slua5.4 %s scale %s %d"):format(
      common.sh(collector.url), common.lua_env(), common.on_cpu(0), common.sh(common.bench .. "/scale_client.lua"),
      common.sh(m.url), n))
    m.stop()
    collector.stop()
    if not ok then error(out, 0) end
    local r = common.json_decode(out:match("{.*}") or "")
    if not r then error("scale_client printed: " .. out) end
    traced[i] = r
  end
  local walls, rss, per, growth, conns = {}, {}, {}, {}, {}
  for i, r in ipairs(runs) do
    walls[i], rss[i] = r.wall_s, r.max_rss
    per[i] = r.max_rss / n
    growth[i] = (r.max_rss - r.baseline_rss) / n
    conns[i] = r.connections
  end
  local raw_walls, raw_rss, raw_conns = {}, {}, {}
  for i, r in ipairs(raws) do
    raw_walls[i], raw_rss[i], raw_conns[i] = r.seconds, r.max_rss_kb * 1024, r.connections
  end
  local label = common.n(n) .. " sessions"
  local mw, mr, mp = common.median(walls), common.median(rss), common.median(per)
  local rw, rr = common.median(raw_walls), common.median(raw_rss)
  local rss_goal = 320 * 1024 * 1024 * n / 10000
  local rs = common.median(sharded)
  return {
    common.line(label .. " in flight: wall (floor 2 s)", common.num(mw) .. " s",
      ("goal <= 2.5 s; raw libcurl %s s in one multi, %s s in %d processes of %d"):format(
        common.num(rw), common.num(rs), shard_procs, SHARD),
      common.goal(mw, 2.5) .. "; " .. common.x(mw / rs) .. " sharded raw",
      { walls = walls, raw_walls = raw_walls, raw_sharded_walls = sharded, requests = runs[1].requests }),
    common.line(label .. " in flight: peak RSS", common.num(mr / 2^20) .. " MB",
      ("goal <= %s MB; raw libcurl %s MB"):format(common.num(rss_goal / 2^20), common.num(rr / 2^20)),
      common.goal(mr, rss_goal), { max_rss = rss, raw_max_rss = raw_rss }),
    common.line(label .. " in flight: RSS per session",
      ("%s KB (%s over baseline)"):format(common.num(mp / 1024), common.num(common.median(growth) / 1024)),
      ("goal <= 32 KB; raw libcurl %s KB"):format(common.num(rr / n / 1024)), common.goal(mp, 32 * 1024),
      { per_session = per, growth_per_session = growth, baseline_rss = runs[1].baseline_rss }),
    (function()
      local tw, tr = {}, {}
      for i, r in ipairs(traced) do tw[i], tr[i] = r.wall_s, r.max_rss end
      local ratio = common.median(tw) / mw
      return common.line(label .. " in flight, tracing on: wall, peak RSS",
        ("%s s, %s MB"):format(common.num(common.median(tw)), common.num(common.median(tr) / 2^20)),
        ("tracing off %s s, %s MB; goal <= 1.1x"):format(common.num(mw), common.num(mr / 2^20)),
        ("%s wall, %s RSS%s"):format(common.x(ratio), common.x(common.median(tr) / mr), ratio <= 1.1 and " ok" or " MISSED"),
        { walls = tw, max_rss = tr })
    end)(),
    common.line(label .. " in flight: connections opened", common.n(common.median(conns)),
      ("%s requests; raw libcurl %s"):format(common.n(runs[1].requests), common.n(common.median(raw_conns))), "",
      { tide = conns, raw = raw_conns }),
  }
end

return function()
  local restore, note = raise_somaxconn()
  local ok, out = pcall(measure)
  if restore then restore() end
  if not ok then error(out, 0) end
  out[1].raw.note = note
  out[1].floor = out[1].floor .. "; " .. note
  return out
end
