--- bench/scale_client.lua: the client process of rows 9 and 10, so that
--- its peak RSS is its own.
---
---   lua5.4 bench/scale_client.lua scale URL N      N sessions at once
---   lua5.4 bench/scale_client.lua leak URL N R     R rounds of N sessions
---
--- Every session is a tool-using one (the mock runs --tool-loop 1: two round
--- trips) on a fresh tide.session. Prints one JSON object.
local root = dofile((arg[0]:match("^(.*)/") or ".") .. "/paths.lua")()

local common = require "bench.common"
local fixtures = require "bench.fixtures"
local tide = require "tide"
local core = require "tide.core"

local mode, url, n, rounds = arg[1], arg[2], math.tointeger(tonumber(arg[3])), math.tointeger(tonumber(arg[4] or "1"))
assert(mode == "scale" or mode == "leak", "usage: scale_client.lua scale|leak URL N [R]")
assert(core.raise_fd_limit(n + 2000))

tide.agent { id = "scaler", prompt = "You look one thing up, then answer.", tools = { fixtures.lookup() } }
local p = fixtures.provider(url)
-- Load every module a turn needs before the baseline is taken.
tide.session { agent = "scaler", provider = p }
require "tide.http"
require "tide.provider.openai"

local function one()
  local s = tide.session { agent = "scaler", provider = p }
  local reply, err = s:turn("look one thing up")
  if reply ~= "done after 1 lookups" then error(tostring(reply or err), 0) end
  return true
end

-- Runs n sessions at once; returns the wall seconds and the errors.
local function round()
  return tide.run(function()
    local tasks = {}
    local t0 = core.hrtime()
    for i = 1, n do tasks[i] = tide.spawn(one) end
    local errors, first = 0, nil
    for i = 1, n do
      local ok, err = tasks[i]:join()
      if not ok then errors = errors + 1; first = first or tostring(err) end
    end
    return (core.hrtime() - t0) / 1e9, errors, first
  end)
end

common.gc()
local base_rss, base_heap = common.rss(), collectgarbage("count") * 1024
local out = { n = n, baseline_rss = base_rss, baseline_heap = base_heap }
local h0 = tide.http.stats()
if mode == "scale" then
  out.wall_s, out.errors, out.first_error = round()
  out.max_rss = core.max_rss()
else
  out.rss, out.heap, out.wall_s = {}, {}, {}
  local errors = 0
  for r = 1, rounds do
    local w, e, first = round()
    errors = errors + e
    out.first_error = out.first_error or first
    common.gc()
    out.rss[r], out.heap[r], out.wall_s[r] = common.rss(), collectgarbage("count") * 1024, w
  end
  out.errors = errors
  out.max_rss = core.max_rss()
  local st = core.loop_stats()
  out.live_tasks, out.active_handles = st.live_tasks, st.active_handles
end
local h1 = tide.http.stats()
out.requests = h1.requests - h0.requests
out.connections = h1.connections - h0.connections
io.stdout:write(common.json_encode(out), "\n")
