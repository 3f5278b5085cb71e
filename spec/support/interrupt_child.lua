-- The process spec/integration/interrupt_spec.lua sends SIGINT (Ctrl-C):
-- tide.run drives a root task and a task it spawned, both asleep for a
-- minute, each holding a to-be-closed variable that says when it unwinds.
-- It prints "ready" once both sleep. With arg[1] == "caught" the script
-- catches tide.run's error and prints its code, then exits 0 (closing the
-- state); otherwise the error goes out of the script as any error does.
local tide = require "tide"

local function say(line)
  io.stdout:write(line, "\n")
  io.stdout:flush()
end

local function closes(what)
  return setmetatable({}, { __close = function() say("closed " .. what) end })
end

local function program()
  local started = false
  local child = tide.spawn(function()
    local guard <close> = closes("child")
    started = true
    tide.sleep(60000)
    say("child slept")
  end)
  local guard <close> = closes("root")
  while not started do tide.sleep(1) end
  say("ready")
  tide.sleep(60000)
  say("root slept")
  child:join()
end

if arg[1] == "caught" then
  local ok, err = pcall(tide.run, program)
  say(ok and "returned" or ("error " .. tostring(type(err) == "table" and err.code or err)))
  os.exit(0, true)
end
tide.run(program)
say("returned")
