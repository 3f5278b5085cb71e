--- bench/http_client.lua: the tide side of row 1, in a process of its own so
--- that every measurement starts from the same state, as raw_curl's do (a
--- process that has just held 1,000 connections has a larger heap to
--- collect and a connection cache to prune).
---
---   lua5.4 bench/http_client.lua sequential URL BODYFILE N
---   lua5.4 bench/http_client.lua concurrent URL BODYFILE N C
---
--- Prints {"rps", "cpu_us_per_req", "connections"} (connections opened
--- while timed).
local root = dofile((arg[0]:match("^(.*)/") or ".") .. "/paths.lua")()

local common = require "bench.common"
local tide = require "tide"

local mode, url, body_file = arg[1], arg[2], arg[3]
local n, inflight = math.tointeger(tonumber(arg[4])), math.tointeger(tonumber(arg[5] or "1"))
assert((mode == "sequential" or mode == "concurrent") and url and body_file and n,
  "usage: http_client.lua sequential|concurrent URL BODYFILE N [C]")
local BODY = assert(common.read(body_file))
local HEADERS = { ["content-type"] = "application/json" }
assert(tide.core.raise_fd_limit(inflight + 100))

local function request()
  local res, err = tide.http.request { method = "POST", url = url, headers = HEADERS, body = BODY }
  if not res then error("tide.http.request failed: " .. tostring(err), 0) end
  if res.status ~= 200 then error("HTTP " .. res.status .. ": " .. res.body, 0) end
  return true
end

local out = tide.run(function()
  local tasks = {}
  -- Warm-up: opens the connections (one per task) and loads everything.
  local warm = mode == "sequential" and 100 or inflight
  for i = 1, warm do tasks[i] = tide.spawn(request) end
  for i = 1, warm do assert(tasks[i]:join()) end
  if mode == "sequential" then tasks = {} end
  common.gc()
  local before = tide.http.stats().connections
  local c0, t0 = os.clock(), common.hrtime()
  if mode == "sequential" then
    for _ = 1, n do request() end
  else
    local started = 0
    local function worker()
      while started < n do
        started = started + 1
        request()
      end
      return true
    end
    for i = 1, inflight do tasks[i] = tide.spawn(worker) end
    for i = 1, inflight do
      local ok, err = tasks[i]:join()
      if not ok then error(err, 0) end
    end
  end
  local t = (common.hrtime() - t0) / 1e9
  return { rps = n / t, cpu_us_per_req = (os.clock() - c0) * 1e6 / n,
           connections = tide.http.stats().connections - before }
end)
io.stdout:write(common.json_encode(out), "\n")
