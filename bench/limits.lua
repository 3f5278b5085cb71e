--- Row 13: rate limits shared by worker processes through Redis. Four
--- workers, each keeping 50 sessions turning, share `limits = { rpm = 600 }`
--- for a minute against one mock that notes when every request arrives.
--- Goal (issue #25): at most 600 (+2 %) requests in any rolling minute, and
--- at least 95 % of the allowance used. --quick scales the minute down to
--- 15 s (and rpm up to 2,400: the same 600 per window); the bucket's one
--- second of burst is then 1/15 of a window, not 1/60, and its goal says so.
local common = require "bench.common"
local core = common.core

return function()
  package.path = common.root .. "/spec/?.lua;" .. package.path
  local tide = require "tide"
  local testing = require "tide.testing"
  local redis = require("support.redis").start()
  local window_s = common.quick and 15 or 60
  local rpm = 600 * 60 // window_s
  local run_s = window_s + (common.quick and 5 or 10)
  local at, t0 = {}, nil
  local mock = testing.mock_server { default = function()
    if t0 then at[#at + 1] = (core.hrtime() - t0) / 1e9 end
    return "ok"
  end }
  local kids, outs = {}, {}
  local ok, err = pcall(tide.run, function()
    for i = 1, 4 do
      kids[i] = assert(core.process_spawn { argv = { "lua5.4", common.root .. "/bench/limits_worker.lua", redis.url,
        mock.url, tostring(rpm), "s=" .. run_s, "50" } })
      assert(kids[i]:read_line() == "ready")
    end
    t0 = core.hrtime()
    for i = 1, 4 do kids[i]:write("go\n") end
    for i = 1, 4 do
      outs[i] = kids[i]:read_line()
      kids[i]:wait()
    end
  end)
  mock:close()
  redis:close()
  if not ok then error(err, 0) end
  table.sort(at)
  -- the most and the fewest requests in any window (of those wholly inside
  -- the run, after the first second's burst settles)
  local most, fewest = 0, math.huge
  local j = 1
  for i = 1, #at do
    while j <= #at and at[j] - at[i] < window_s do j = j + 1 end
    local n = j - i
    if n > most then most = n end
    if at[i] + window_s <= run_s - 0.5 and n < fewest then fewest = n end
  end
  local allowance = rpm * window_s / 60
  -- The bucket holds one second's allowance: a minute window can see 1/60
  -- more than rpm (within the 2 %), a quick 15 s window 1/15 more.
  local limit = common.quick and allowance + rpm / 60 or math.floor(allowance * 1.02)
  local fallbacks = 0
  for i = 1, 4 do fallbacks = fallbacks + tonumber((outs[i] or ""):match("fallbacks=(%d+)") or 1e9) end
  local label = ("rpm = %d across 4 workers, %d s"):format(rpm, run_s)
  return {
    common.line(("Shared limits: %s, most in a rolling %s"):format(label, window_s == 60 and "minute" or window_s .. " s"),
      common.n(most), common.quick and ("goal <= %d (+1 s burst)"):format(limit) or ("goal <= %d (+2 %%)"):format(limit),
      most <= limit and "ok" or "MISSED", { most = most, requests = #at, fallbacks = fallbacks }),
    common.line("Shared limits: allowance used in the emptiest window", ("%.1f %%"):format(100 * fewest / allowance),
      "goal >= 95 %", fewest >= 0.95 * allowance and fallbacks == 0 and "ok" or "MISSED",
      { fewest = fewest, allowance = allowance }),
  }
end
