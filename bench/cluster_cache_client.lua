--- One of the worker processes of row 13 (bench/cluster_cache.lua): builds
--- `sessions` new sessions, `concurrency` at a time, for users 1..`users`
--- in turn, and runs each one's first turn against an in-process mock
--- provider. A session's user's integrations come from the source process
--- (bench/cluster_cache_source.lua) through the integration cache: the
--- process's own, and with a Redis URL the cluster's behind it. Starts at
--- `start_ns` (core.hrtime, the same clock in every process on the machine)
--- and prints one JSON line: its start and end, every session's build time
--- (tide.session{}, us) and time from tide.session{} to the reply of turn 1
--- (ms), errors, cache counters.
---
---   lua5.4 bench/cluster_cache_client.lua <redis url|none> <prefix> <source url>
---     <sessions> <users> <concurrency> <start_ns>
dofile((arg[0]:match("^(.*)/") or ".") .. "/paths.lua")()
local tide = require "tide"
local core = require "tide.core"
local json = require "tide.json"
local cjson = require "cjson"

local redis, prefix, source_url = arg[1], arg[2], arg[3]
local n, users, concurrency = tonumber(arg[4]), tonumber(arg[5]), tonumber(arg[6])
local start_ns = math.tointeger(tonumber(arg[7]))

if redis ~= "none" then tide.cluster { redis = redis, prefix = prefix } end

tide.agent { id = "bench-cluster", prompt = "You help the user with their connected apps.",
             subagents = { { toolkits = "*" } } }

-- One source per user, fetching over HTTP from the source process.
local sources = {}
for u = 1, users do
  sources[u] = {
    kind = "bench", id = ("bench|user%03d"):format(u),
    identity = function(self) return self.id end,
    fetch = function()
      local res, err = tide.http.request { url = ("%s/toolkits?user=user%03d"):format(source_url, u),
                                           timeout_ms = 30000 }
      if not res then return nil, err end
      if res.status ~= 200 then return nil, "source answered " .. res.status end
      return json.decode(res.body)
    end,
  }
end

local out = tide.run(function()
  local mock = assert(tide.testing.mock_server { default = "ok", record = false })
  local p = tide.provider.openai { base_url = mock.url .. "/v1", api_key = "bench-key", model = "bench-model",
                                   stream = false, retry = { attempts = 1 } }
  local wait = (start_ns - core.hrtime()) // 1000000
  if wait > 0 then tide.sleep(wait) end
  local t0 = core.hrtime()
  local times, builds, errors, first_error, next_i = {}, {}, 0, nil, 0
  local function runner()
    while true do
      next_i = next_i + 1
      local i = next_i
      if i > n then return end
      local s0 = core.hrtime()
      local s = tide.session { agent = "bench-cluster", provider = p, integrations = sources[(i - 1) % users + 1] }
      local s1 = core.hrtime()
      local reply, err = s:turn("hi")
      builds[i], times[i] = (s1 - s0) / 1e3, (core.hrtime() - s0) / 1e6
      if not reply or s:stats().integrations ~= "authoritative" then
        errors = errors + 1
        first_error = first_error or tostring(err or s:stats().integrations_error)
      end
    end
  end
  local tasks = {}
  for k = 1, concurrency do tasks[k] = tide.spawn(runner) end
  for k = 1, concurrency do tasks[k]:join() end
  local t1 = core.hrtime()
  local stats = tide.integrations.cache.stats()
  mock:close()
  local cluster = package.loaded["tide.cluster"]
  if cluster and cluster.current() then cluster.current():close() end
  return { start_ns = t0, end_ns = t1, times = times, builds = builds, errors = errors, first_error = first_error, cache = stats }
end)
io.stdout:write(cjson.encode(out), "\n")
