--- bench/queue_client.lua: the submitting process of row 14.
---
---   lua5.4 bench/queue_client.lua REDIS_URL PREFIX N
---
--- Submits N turns at once, each on a session of its own, to the queue
--- "bench" and waits for every reply. Prints one JSON object.
local root = dofile((arg[0]:match("^(.*)/") or ".") .. "/paths.lua")()

local common = require "bench.common"
local tide = require "tide"
local core = require "tide.core"

local url, prefix, n = arg[1], arg[2], math.tointeger(tonumber(arg[3]))
assert(url and prefix and n, "usage: queue_client.lua REDIS_URL PREFIX N")
tide.cluster { redis = url, prefix = prefix }

local out = tide.run(function()
  -- one turn before the clock starts: the reply channel's subscription,
  -- and the workers' first sessions
  assert(tide.submit { queue = "bench", session = "warm", agent = "scaler", text = "warm up", timeout_ms = 60000 })
  local tasks = {}
  local t0 = core.hrtime()
  for i = 1, n do
    tasks[i] = tide.spawn(function()
      local reply, err = tide.submit { queue = "bench", session = "scale-" .. i, agent = "scaler",
        text = "look one thing up", timeout_ms = 120000 }
      if reply ~= "done after 1 lookups" then error(tostring(reply or err), 0) end
      return true
    end)
  end
  local errors, first = 0, nil
  for i = 1, n do
    local ok, err = tasks[i]:join()
    if not ok then errors = errors + 1; first = first or tostring(err) end
  end
  return { n = n, wall_s = (core.hrtime() - t0) / 1e9, errors = errors, first_error = first, max_rss = core.max_rss() }
end)
io.stdout:write(common.json_encode(out), "\n")
