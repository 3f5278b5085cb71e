--- Row 2: task spawn + join. 100,000 tasks are spawned inside tide.run, then
--- joined in order; the cost per task covers the coroutine, the task
--- userdata, scheduling, running it to its end and the join. The floor is a
--- plain Lua coroutine created and resumed to its end, the least a task
--- could cost.
local common = require "bench.common"
local tide = require "tide"

local function body(i) return i end

local function tide_ns(n)
  common.gc()
  return tide.run(function()
    local tasks = {}
    local t0 = common.hrtime()
    for i = 1, n do tasks[i] = tide.spawn(body, i) end
    for i = 1, n do
      local v = tasks[i]:join()
      if v ~= i then error("join returned " .. tostring(v)) end
    end
    return (common.hrtime() - t0) / n
  end)
end

local function coroutine_ns(n)
  common.gc()
  local create, resume = coroutine.create, coroutine.resume
  local cos = {}
  local t0 = common.hrtime()
  for i = 1, n do cos[i] = create(body) end
  for i = 1, n do
    local ok, v = resume(cos[i], i)
    if not ok or v ~= i then error("coroutine failed") end
  end
  return (common.hrtime() - t0) / n
end

return function()
  local n = 100000
  local reps = common.reps(7, 2)
  local t, c = {}, {}
  for i = 1, reps do
    t[i] = tide_ns(n)
    c[i] = coroutine_ns(n)
  end
  local mt, mc = common.median(t), common.median(c)
  return {
    common.line("Task spawn + join (100k tasks)", common.n(mt) .. " ns/task",
      "Lua coroutine " .. common.n(mc) .. " ns", common.x(mt / mc), { tide = t, coroutine = c }),
  }
end
