--- Row 1: HTTP round trips per second against the standalone mock server
--- (bin/tide-mock, a process of its own): one request in flight, and 1,000
--- in flight; tide.http.request in tasks (bench/http_client.lua, a fresh
--- process per measurement) against raw_curl (libcurl multi with
--- curl_multi_poll) on the same URL, body and kept-alive connections. Both
--- sides open their connections in an untimed warm-up.
---
--- The mock records every request it serves and so slows down as it grows;
--- each measurement therefore gets a fresh mock, and tide and raw_curl
--- alternate, so that neither side is favoured by the order. Placement
--- (bench.common, pinning): one in flight runs client and mock on one core,
--- so a round trip costs what both sides spend on it; 1,000 in flight puts
--- them on separate cores.
local common = require "bench.common"

local BODY = '{"model":"bench","stream":false,"messages":[{"role":"user","content":"hello"}]}'

-- The tide side runs in a fresh process per measurement (bench/http_client.lua).
local function tide_side(cpu, args)
  local out = common.capture(("%s %slua5.4 %s %s"):format(common.lua_env(), common.on_cpu(cpu),
    common.sh(common.bench .. "/http_client.lua"), args))
  local res = common.json_decode(out:match("{.*}") or "")
  if not res then error("bench: http_client failed: " .. out) end
  return res
end

return function()
  local reps = common.reps(5, 1)
  local seq_n = common.reps(4000, 1000)
  local conc_n = common.reps(30000, 5000)
  local inflight = 1000
  local r = { seq = { tide = {}, raw = {}, tide_cpu = {}, raw_cpu = {} },
              conc = { tide = {}, raw = {}, tide_cpu = {}, raw_cpu = {} } }
  local function with_mock(cpu, fn)
    local m = common.start_mock { cpu = cpu }
    local ok, res = pcall(fn, m.url .. "/v1/chat/completions")
    m.stop()
    if not ok then error(res, 0) end
    return res
  end
  local body_file = common.tmpname()
  common.write(body_file, BODY)
  local new_conns, raw_conns = 0, 0
  for rep = 1, reps do
    local order = rep % 2 == 1 and { "tide", "raw" } or { "raw", "tide" }
    for _, side in ipairs(order) do
      if side == "tide" then
        local s = with_mock(0, function(url)
          return tide_side(0, ("sequential %s %s %d"):format(common.sh(url), common.sh(body_file), seq_n))
        end)
        r.seq.tide[#r.seq.tide + 1], r.seq.tide_cpu[#r.seq.tide_cpu + 1] = s.rps, s.cpu_us_per_req
        local c = with_mock(1, function(url)
          return tide_side(0, ("concurrent %s %s %d %d"):format(common.sh(url), common.sh(body_file), conc_n, inflight))
        end)
        r.conc.tide[#r.conc.tide + 1], r.conc.tide_cpu[#r.conc.tide_cpu + 1] = c.rps, c.cpu_us_per_req
        new_conns = math.max(new_conns, c.connections)
      else
        local s = with_mock(0, function(url)
          return common.raw_curl(("--body %s --warmup 100 %s sequential %d"):format(
            common.sh(body_file), common.sh(url), seq_n), 0)
        end)
        r.seq.raw[#r.seq.raw + 1], r.seq.raw_cpu[#r.seq.raw_cpu + 1] = s.rps, s.cpu_us_per_req
        local c = with_mock(1, function(url)
          return common.raw_curl(("--body %s --warmup 1 %s concurrent %d %d"):format(
            common.sh(body_file), common.sh(url), conc_n, inflight), 0)
        end)
        r.conc.raw[#r.conc.raw + 1], r.conc.raw_cpu[#r.conc.raw_cpu + 1] = c.rps, c.cpu_us_per_req
        raw_conns = math.max(raw_conns, c.connections)
      end
    end
  end
  os.remove(body_file)
  local med = common.median
  local lines = {}
  for _, k in ipairs { "seq", "conc" } do
    local t, w = med(r[k].tide), med(r[k].raw)
    local label = k == "seq" and "HTTP round trips, 1 in flight" or "HTTP round trips, 1,000 in flight"
    lines[#lines + 1] = common.line(label, common.n(t) .. " req/s", "raw libcurl " .. common.n(w) .. " req/s",
      common.x(t / w), { tide = r[k].tide, raw = r[k].raw })
    local tc, wc = med(r[k].tide_cpu), med(r[k].raw_cpu)
    lines[#lines + 1] = common.line("  client CPU per request", common.num(tc) .. " us",
      "raw libcurl " .. common.num(wc) .. " us", common.x(tc / wc),
      { tide = r[k].tide_cpu, raw = r[k].raw_cpu })
  end
  -- Every connection was opened by the warm-up; any opened while timed was
  -- closed by the client's connection cache and had to be made again.
  lines[#lines + 1] = common.line("  connections opened while timed (most, of " .. common.n(conc_n) .. " requests)",
    common.n(new_conns), "raw libcurl " .. common.n(raw_conns), "")
  return lines
end
