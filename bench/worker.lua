--- bench/worker.lua: runs one benchmark row in a process of its own and
--- prints its result as one line, "BENCH-RESULT <json>", on stdout.
---
---   lua5.4 bench/worker.lua <row> [--quick] [args...]
---
--- Started by bench/run.lua; a row module `bench.<row>` returns a function
--- that takes the remaining arguments and returns a list of table lines
--- (see bench.common.line). Child processes it starts are killed on the way
--- out, error or not.
local root = dofile((arg[0]:match("^(.*)/") or ".") .. "/paths.lua")()

local row = arg[1]
if not row or not row:match("^[%w_]+$") then
  io.stderr:write("usage: worker.lua <row> [--quick] [args...]\n")
  os.exit(2)
end
local common = require "bench.common"
local rest = {}
for i = 2, #arg do
  if arg[i] == "--quick" then common.quick = true else rest[#rest + 1] = arg[i] end
end

local ok, res = xpcall(function() return require("bench." .. row)(table.unpack(rest)) end, debug.traceback)
common.kill_all()
if not ok then
  io.stderr:write("bench: row '", row, "' failed: ", tostring(res), "\n")
  io.stdout:write("BENCH-RESULT ", common.json_encode({ error = tostring(res):match("^[^\n]*") }), "\n")
  os.exit(1)
end
io.stdout:write("BENCH-RESULT ", common.json_encode({ lines = res }), "\n")
io.stdout:flush()
os.exit(0)
