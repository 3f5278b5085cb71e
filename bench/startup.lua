--- Row 4: process start to the first completed session. bench/one_file_agent.lua
--- (require tide, a tool, an agent, an in-process mock, one turn with one
--- tool call) is run as a fresh lua5.4 process; the wall time of the whole
--- process is taken around os.execute. The floor is lua5.4 starting and
--- exiting with nothing to do, in the same way.
local common = require "bench.common"

local function run_ms(cmd)
  local t0 = common.hrtime()
  local ok = os.execute(cmd)
  local ms = (common.hrtime() - t0) / 1e6
  if not ok then error("bench: command failed: " .. cmd) end
  return ms
end

return function()
  local n = common.reps(30, 8)
  local env = common.lua_env()
  local agent = ("%s exec lua5.4 %s >/dev/null"):format(env, common.sh(common.bench .. "/one_file_agent.lua"))
  local bare = ("%s exec lua5.4 -e '' >/dev/null"):format(env)
  local out = common.capture(("%s lua5.4 %s"):format(env, common.sh(common.bench .. "/one_file_agent.lua")))
  if not out:find("done after 1 lookups", 1, true) then error("one_file_agent.lua printed: " .. out) end
  local a, b = {}, {}
  for i = 1, n do
    a[i] = run_ms(agent)
    b[i] = run_ms(bare)
  end
  local ma, mb = common.median(a), common.median(b)
  return {
    common.line("Start to first completed session (one-file agent)", common.num(ma) .. " ms",
      "goal < 20 ms (bare lua5.4: " .. common.num(mb) .. " ms)", common.goal(ma, 20),
      { tide = a, bare = b }),
  }
end
