-- Builds and installs the rock with Debian's luarocks into a scratch tree
-- (offline: --deps-mode=none, the Debian packages provide lua-cjson), then
-- loads tide from a plain lua5.4 using only that tree and runs a task.
local function sh(cmd)
  local ok = os.execute(cmd)
  if not ok then error("failed: " .. cmd, 0) end
end
local rocks = {}
for f in io.popen("ls *.rockspec"):lines() do rocks[#rocks + 1] = f end
assert(#rocks == 1, "expected exactly one rockspec")
local tree = os.tmpname()
os.remove(tree)
local build = os.tmpname()
os.remove(build)
sh("mkdir -p " .. tree)
local log = tree .. ".log"
local ok = os.execute(("luarocks --lua-version=5.4 --tree=%s make --deps-mode=none %s > %s 2>&1")
  :format(tree, rocks[1], log))
if not ok then
  io.stderr:write(io.open(log):read("a"))
  error("luarocks make failed", 0)
end
local probe = [[
local tide = require "tide"
local v = tide.run(function()
  local t = tide.spawn(function() tide.sleep(1) return 42 end)
  return t:join()
end)
assert(v == 42)
assert(require("tide.prompts").resolve("orchestrator").file, "default prompts installed")
for _, m in ipairs { "tide.session", "tide.provider", "tide.integrations", "tide.testing" } do require(m) end
print("rock ok: tide " .. tide.version .. " from " .. package.searchpath("tide.core", package.cpath))
]]
local f = assert(io.open(tree .. "/probe.lua", "w"))
f:write(probe)
f:close()
sh(("cd / && LUA_PATH='%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua;;' LUA_CPATH='%s/lib/lua/5.4/?.so;;' lua5.4 %s/probe.lua")
  :format(tree, tree, tree, tree))
os.execute("rm -rf " .. tree .. " " .. log)
