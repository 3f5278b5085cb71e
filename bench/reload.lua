--- Row 8: hot-reload latency. A prompt directory is watched
--- (tide.prompts.watch); the file is rewritten with a new marker, and a task
--- renders the prompt every 1 ms (tide.sleep(1)) until the new text shows:
--- what a session built at that moment would freeze. The watcher debounces
--- events (30 ms by default), which is most of the figure.
local common = require "bench.common"
local tide = require "tide"
local prompts = require "tide.prompts"

return function()
  local dir = common.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. common.sh(dir)))
  local file = dir .. "/bench_reload.md"
  common.write(file, "You are {{agent.id}}, version 0.\n")
  local data = { agent = { id = "bench" } }
  local n = common.reps(12, 4)
  local xs = {}
  local ok, err = pcall(tide.run, function()
    local w = assert(prompts.watch(dir, { on_error = function(e) error(tostring(e)) end }))
    assert(prompts.render("bench_reload", data):find("version 0", 1, true))
    tide.sleep(50) -- let the watcher settle
    for i = 1, n do
      local marker = "version " .. i .. "."
      local t0 = common.hrtime()
      common.write(file, "You are {{agent.id}}, " .. marker .. "\n")
      local deadline = t0 + 2e9
      while true do
        local text = prompts.render("bench_reload", data)
        if text and text:find(marker, 1, true) then break end
        if common.hrtime() > deadline then error("the change was not seen within 2 s") end
        tide.sleep(1)
      end
      xs[i] = (common.hrtime() - t0) / 1e6
      tide.sleep(40) -- past the debounce window, so that runs do not overlap
    end
    w:close()
  end)
  os.execute("rm -rf " .. common.sh(dir))
  if not ok then error(err, 0) end
  local m = common.median(xs)
  return {
    common.line("Reload latency (write -> new render sees it)", common.num(m) .. " ms", "goal < 50 ms",
      common.goal(m, 50), { samples = xs }),
  }
end
