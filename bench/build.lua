--- Row 5: building a session. The orchestrator has { toolkits = "*" } and a
--- named sub-agent, over a source of 20 toolkits x 20 actions (400 actions,
--- 100 more gated). Each tide.session{...} is timed on its own and the
--- median taken:
---   warm:  the shared cache holds the snapshot, so the session is prewarmed
---          and takes the shared surface (21 delegation tools + lookup);
---   cold:  the cache is invalidated before each build (the session peeks,
---          misses, and will fetch at turn 1);
---   redefined: warm cache, but the agent is registered again before each
---          build, so the surface (tool list and schemas) is built anew.
local common = require "bench.common"
local fixtures = require "bench.fixtures"
local tide = require "tide"

return function()
  local src = fixtures.orchestrator()
  local cache = tide.integrations.cache
  local p = fixtures.provider("http://127.0.0.1:9")
  local orch = tide.agents.get("orchestrator")
  local n = common.reps(20000, 3000)
  local hr = common.hrtime
  local function build() return tide.session { agent = "orchestrator", provider = p, integrations = src } end

  local function measure(before, count)
    local xs = {}
    common.gc()
    for i = 1, count do
      if before then before() end
      local t0 = hr()
      local s = build()
      xs[i] = (hr() - t0) / 1e3
      if s == nil then error("no session") end
    end
    return xs
  end

  -- warm
  assert(tide.run(function() return cache.get(src) end))
  local s0 = build()
  assert(s0:stats().prewarmed, "the session was not prewarmed")
  assert(#s0:tools() == 22, "expected 22 tools, got " .. #s0:tools())
  measure(nil, 1000)
  local t0 = hr()
  local warm = measure(nil, n)
  local warm_mean = (hr() - t0) / 1e3 / n
  -- cold cache
  local cold = measure(function() cache.invalidate(src) end, n // 4)
  assert(not build():stats().prewarmed)
  -- surface rebuilt
  assert(tide.run(function() return cache.get(src) end))
  local redefined = measure(function() tide.agent(orch) end, n // 10)

  -- Several sources: Composio (its mock, in this process) plus three MCP
  -- servers (the scripted stdio server of the specs), every one warm.
  local composio = require("tide.testing.composio").server { api_key = "bench-key" }
  local sources = { tide.integrations.composio { api_key = "bench-key", base_url = composio.url, user_id = "u1" } }
  for i = 1, 3 do
    sources[#sources + 1] = tide.integrations.mcp { name = "mcp" .. i,
      command = { "lua5.4", common.root .. "/spec/support/mcp_server.lua", "normal" },
      env = { LUA_PATH = package.path, LUA_CPATH = package.cpath } }
  end
  for _, s in ipairs(sources) do assert(tide.run(function() return cache.get(s) end)) end
  local function build_several()
    return tide.session { agent = "orchestrator", provider = p, integrations = sources }
  end
  assert(build_several():stats().prewarmed, "the several-source session was not prewarmed")
  local several = {}
  for i = 1, 1000 do build_several() end
  common.gc()
  for i = 1, n // 4 do
    local t1 = hr()
    build_several()
    several[i] = (hr() - t1) / 1e3
  end
  for _, s in ipairs(sources) do if s.close then s:close() end end
  composio.srv:close()

  local mw, mc, mr = common.median(warm), common.median(cold), common.median(redefined)
  local ms = common.median(several)
  return {
    common.line("Session build, warm cache (20x20 toolkits)", common.num(mw) .. " us",
      "goal < 25 us", common.goal(mw, 25),
      { median = mw, mean_with_gc = warm_mean, p99 = common.percentile(warm, 99) }),
    common.line("Session build, cold cache", common.num(mc) .. " us", "", "",
      { median = mc, p99 = common.percentile(cold, 99) }),
    common.line("Session build, agent redefined (surface rebuilt)", common.num(mr) .. " us", "", "",
      { median = mr, p99 = common.percentile(redefined, 99) }),
    common.line("Session build, warm: Composio + three MCP sources", common.num(ms) .. " us", "goal < 25 us",
      common.goal(ms, 25), { median = ms, p99 = common.percentile(several, 99) }),
  }
end
