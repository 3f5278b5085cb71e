--- Row 6: turn-1 overhead before the provider call: from calling s:turn()
--- to the provider's `complete` being called with the request (the frozen
--- prefix and the encoded messages; the provider object's `complete` is
--- wrapped to record the time, then calls through). The two are joined into
--- one body inside core.http_post, which the second line covers. The session is the orchestrator of row 5 (20x20 toolkits), new
--- for every turn, against an in-process mock answering at once.
---   warm: the shared cache holds the snapshot (prewarmed session);
---   cold: the source takes 50 ms to fetch (static, delay_ms = 50) and the
---         cache is invalidated before each session, so turn 1 fetches.
--- As a finer point, the time to the request reaching libcurl
--- (core.http_post returning, i.e. curl_multi_add_handle done) is kept too.
local common = require "bench.common"
local fixtures = require "bench.fixtures"
local tide = require "tide"
local core = require "tide.core"

return function()
  local cache = tide.integrations.cache
  local warm_src = fixtures.orchestrator()
  local cold_src = tide.integrations.static { id = "bench-cold", delay_ms = 50,
                                              toolkits = fixtures.toolkits(20, 20, 5) }
  local hr = common.hrtime
  local n_warm, n_cold = common.reps(500, 100), common.reps(15, 4)

  local t_complete, t_curl
  -- Providers send through core.http_post.
  local real_post = core.http_post
  core.http_post = function(...)
    local r = real_post(...)
    t_curl = t_curl or hr()
    return r
  end

  local function run(src, n, before)
    return tide.run(function()
      local srv = assert(tide.testing.mock_server { default = "ok" })
      local p = fixtures.provider(srv.url)
      -- The session enters the provider through its in-task `_complete`.
      local complete = p._complete
      p._complete = function(self, body, opts, wire)
        t_complete = t_complete or hr()
        return complete(self, body, opts, wire)
      end
      local to_complete, to_curl = {}, {}
      for i = 1, n do
        if before then before() end
        local s = tide.session { agent = "orchestrator", provider = p, integrations = src }
        t_complete, t_curl = nil, nil
        local t0 = hr()
        local reply, err = s:turn("hello")
        if reply ~= "ok" then error("turn failed: " .. tostring(reply or err)) end
        to_complete[i] = (t_complete - t0) / 1e3
        to_curl[i] = (t_curl - t0) / 1e3
      end
      srv:close()
      return to_complete, to_curl
    end)
  end

  assert(tide.run(function() return cache.get(warm_src) end))
  run(warm_src, 20) -- compiles the template, fills the shared surface
  local warm, warm_curl = run(warm_src, n_warm)
  local cold, cold_curl = run(cold_src, n_cold, function() cache.invalidate(cold_src) end)
  core.http_post = real_post

  local mw, mc = common.median(warm), common.median(cold)
  return {
    common.line("Turn-1 overhead before provider call, warm", common.num(mw) .. " us",
      "goal < 50 us", common.goal(mw, 50),
      { median = mw, p99 = common.percentile(warm, 99), to_curl = common.median(warm_curl) }),
    common.line("  ... to the request in libcurl, warm", common.num(common.median(warm_curl)) .. " us", "", ""),
    common.line("Turn-1 overhead before provider call, cold", common.num(mc / 1e3) .. " ms",
      "fetch delay 50 ms", ("+%s ms over the fetch"):format(common.num(mc / 1e3 - 50)),
      { median = mc, to_curl = common.median(cold_curl) }),
  }
end
