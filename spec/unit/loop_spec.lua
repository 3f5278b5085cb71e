local tide = require "tide"
local core = require "tide.core"
local helpers = require "helpers"

describe("tasks", function()
  after_each(function() helpers.assert_quiet() end)

  it("runs 10,000 concurrent sleeping tasks in one loop run, joined in order", function()
    local order = {}
    local results = tide.run(function()
      local tasks = {}
      for i = 1, 10000 do
        tasks[i] = tide.spawn(function(n)
          tide.sleep(50)
          order[#order + 1] = n
          return n * 2
        end, i)
      end
      local out = {}
      for i = 1, 10000 do out[i] = tasks[i]:join() end
      return out
    end)
    assert.are.equal(10000, #results)
    for i = 1, 10000 do assert.are.equal(i * 2, results[i]) end
    assert.are.equal(10000, #order)
  end)

  it("returns every result of a task through join", function()
    local a, b, c = tide.run(function()
      return tide.spawn(function(x, y) return x, y, x + y end, 2, 3):join()
    end)
    assert.are.same({ 2, 3, 5 }, { a, b, c })
  end)

  it("delivers a task's error to join as nil, err with a traceback", function()
    local v, err = tide.run(function()
      return tide.spawn(function() error("boom") end):join()
    end)
    assert.is_nil(v)
    assert.matches("boom", err)
    assert.matches("stack traceback", err)
  end)

  it("keeps structured errors as tables", function()
    local _, err = tide.run(function()
      return tide.spawn(function() error(tide.error("Custom", "went wrong")) end):join()
    end)
    assert.are.equal("Custom", err.code)
    assert.are.equal("Custom: went wrong", tostring(err))
  end)

  it("raises the root task's error from tide.run", function()
    assert.has_error(function() tide.run(function() error("root failed", 0) end) end)
  end)

  it("ends the run when the root task fails: the tasks still running are cancelled", function()
    local seen, closed, finished = nil, false, false
    local server_like = nil
    local t0 = core.now()
    local ok, err = pcall(function()
      tide.run(function()
        -- a task that would run for a minute, and one that loops for half
        -- a minute (without the cancel, the run would wait for both)
        tide.spawn(function()
          local _ <close> = setmetatable({}, { __close = function() closed = true end })
          local ok, e = pcall(tide.sleep, 60000)
          seen = not ok and e.code
        end)
        server_like = tide.spawn(function()
          for _ = 1, 3000 do tide.sleep(10) end
        end)
        tide.spawn(function()
          tide.sleep(5)
          finished = true
        end)
        tide.sleep(20)
        error("root failed", 0)
      end)
    end)
    assert.is_false(ok)
    assert.matches("^root failed", tostring(err))
    assert.equal("Cancelled", seen)
    assert.is_true(closed)
    assert.is_true(finished) -- ended before the root failed: untouched
    assert.equal("failed", server_like:status())
    assert.is_true(core.now() - t0 < 10000)
  end)

  it("calls back on a signal, outside any task, without keeping the loop alive", function()
    local f = assert(io.open("/proc/self/stat"))
    local pid = f:read("l"):match("^(%d+)")
    f:close()
    local got, in_task, spawned = {}, nil, false
    local h
    local t0 = core.now()
    tide.run(function()
      h = assert(core.on_signal("USR1", function(name)
        got[#got + 1] = name
        in_task = core.current() ~= nil
        tide.spawn(function() spawned = true end) -- it may start work that waits
      end))
      os.execute("kill -USR1 " .. pid)
      helpers.wait_until(function() return #got == 1 end, "the signal")
      os.execute("kill -USR1 " .. pid)
      helpers.wait_until(function() return #got == 2 end, "the second signal")
    end)
    -- the run ended although the handle is still open
    assert.is_true(core.now() - t0 < 5000)
    assert.same({ "USR1", "USR1" }, got)
    assert.is_false(in_task)
    assert.is_true(spawned)
    assert.is_false(h:closed())
    h:close()
    h:close()
    assert.is_true(h:closed())
    assert.has_error(function() core.on_signal("KILL", print) end,
      "bad argument #1 to 'on_signal' (expected \"TERM\", \"INT\", \"HUP\", \"USR1\" or \"USR2\")")
    assert.has_error(function() core.on_signal("TERM") end)
  end)

  it("still waits for every task when the root task returns", function()
    local done = false
    tide.run(function()
      tide.spawn(function()
        tide.sleep(30)
        done = true
      end)
    end)
    assert.is_true(done)
  end)

  it("does not wait for a task whose sleep does not hold the loop, and cancels it", function()
    local woke, cancelled = false, false
    local t0 = core.now()
    tide.run(function()
      tide.spawn(function()
        local ok = pcall(core.sleep, 20000, false)
        woke, cancelled = ok, not ok
      end)
      -- the same task's timer, held again, serves a join's timeout
      local t = tide.spawn(function() core.sleep(30) return "joined" end)
      assert.are.equal("joined", t:join(5000))
    end)
    assert.is_false(woke)
    assert.is_true(cancelled)
    assert.is_true(core.now() - t0 < 20000)
  end)

  it("cancels a sleeping task and its descendants", function()
    local grandchild_done = false
    local v, err, child_err = tide.run(function()
      local inner
      local t = tide.spawn(function()
        inner = tide.spawn(function()
          tide.sleep(10000)
          grandchild_done = true
        end)
        tide.sleep(10000)
        return "finished"
      end)
      tide.sleep(5)
      assert.is_true(t:cancel())
      local r, e = t:join()
      local _, e2 = inner:join()
      return r, e, e2
    end)
    assert.is_nil(v)
    assert.are.equal("Cancelled", err.code)
    assert.are.equal("Cancelled", child_err.code)
    assert.is_false(grandchild_done)
  end)

  it("gives a cancelled task's Cancelled no traceback, and an error of its own after it one", function()
    local cancelled, raised = tide.run(function()
      local quiet = tide.spawn(function() tide.sleep(10000) end)
      local loud = tide.spawn(function()
        pcall(tide.sleep, 10000) -- (the cancellation, caught)
        error({ code = "AfterCancel" })
      end)
      tide.sleep(1)
      quiet:cancel()
      loud:cancel()
      return select(2, quiet:join()), select(2, loud:join())
    end)
    -- (where a cancelled task waited tells nothing, and a traceback costs
    -- tens of microseconds: a lease renewal is cancelled after every turn)
    assert.are.equal("Cancelled", cancelled.code)
    assert.is_nil(cancelled.traceback)
    assert.are.equal("AfterCancel", raised.code)
    assert.matches("loop_spec.lua", raised.traceback)
  end)

  it("cancels a task before it ever runs", function()
    local ran = false
    local _, err = tide.run(function()
      local t = tide.spawn(function() ran = true end)
      t:cancel()
      return t:join()
    end)
    assert.is_false(ran)
    assert.are.equal("Cancelled", err.code)
  end)

  it("runs to-be-closed variables when a task is cancelled", function()
    local closed = false
    tide.run(function()
      local t = tide.spawn(function()
        local guard <close> = setmetatable({}, { __close = function() closed = true end })
        tide.sleep(10000)
      end)
      tide.sleep(1)
      t:cancel()
      t:join()
    end)
    assert.is_true(closed)
  end)

  it("lets several tasks join the same task", function()
    local sum = tide.run(function()
      local target = tide.spawn(function() tide.sleep(5) return 21 end)
      local a = tide.spawn(function() return target:join() end)
      local b = tide.spawn(function() return target:join() end)
      return a:join() + b:join()
    end)
    assert.are.equal(42, sum)
  end)

  it("refuses to run the loop inside itself", function()
    local ok, err = pcall(function()
      tide.run(function() tide.run(function() end) end)
    end)
    assert.is_false(ok)
    assert.matches("already running", tostring(err))
  end)

  it("says why a plain coroutine inside a task cannot make a blocking call", function()
    local results = tide.run(function()
      local out = {}
      for _, fn in ipairs {
        function() return tide.sleep(1) end,
        function() return require("tide.http").request { url = "http://127.0.0.1:9/" } end,
      } do
        out[#out + 1] = { pcall(coroutine.wrap(fn)) }
      end
      out[#out + 1] = { tide.spawn(function() tide.sleep(1) return "in a task" end):join() }
      return out
    end)
    for i = 1, 2 do
      assert.is_false(results[i][1])
      assert.matches("a plain coroutine (coroutine.wrap, coroutine.create) cannot wait on it: run the code in a task",
        results[i][2], 1, true)
    end
    assert.are.equal("in a task", results[3][1])
  end)

  it("blocks outside a task by running its own loop", function()
    local t0 = core.hrtime()
    tide.sleep(20)
    assert.is_true(core.hrtime() - t0 >= 19e6)
  end)

  it("reports a deadlocked root task instead of hanging", function()
    local ok, err = core.run(function()
      local a, b
      a = tide.spawn(function() tide.sleep(1); return b:join() end)
      b = tide.spawn(function() tide.sleep(1); return a:join() end)
      return a:join()
    end)
    assert.is_false(ok)
    assert.are.equal("Deadlock", err.code)
  end)

  it("refuses to let a task join itself", function()
    local ok, err = core.run(function() return core.current():join() end)
    assert.is_false(ok)
    assert.matches("cannot join itself", err)
  end)

  it("gives child tasks a task-local table that inherits without leaking back", function()
    local parent_sees, child_sees = tide.run(function()
      local ctx = core.context()
      ctx.session = "root"
      local seen = tide.spawn(function()
        local c = core.context()
        local inherited = c.session
        c.session = "child"
        return inherited
      end):join()
      return ctx.session, seen
    end)
    assert.are.equal("root", parent_sees)
    assert.are.equal("root", child_sees)
  end)

  it("lets a child read its parent's later writes until it writes its own table", function()
    local r = tide.run(function()
      local ctx = core.context()
      ctx.who = "root"
      local gate = {}
      local child = tide.spawn(function()
        local before = core.context("who") -- a read makes no table of its own
        tide.sleep(5)
        local after = core.context("who")
        -- a grandchild spawned before the child wrote sees the parent's value
        local grand = tide.spawn(function() tide.sleep(5) return core.context("who") end)
        core.context().who = "child"
        return before, after, grand:join(), core.context("who"), core.context("missing")
      end)
      tide.sleep(1) -- the child has read by now
      ctx.who = "root again"
      gate.before, gate.after, gate.grand, gate.own, gate.missing = child:join()
      gate.root = ctx.who
      return gate
    end)
    assert.are.equal("root", r.before)
    assert.are.equal("root again", r.after)
    assert.are.equal("child", r.grand) -- its parent's table, written before it looked
    assert.are.equal("child", r.own)
    assert.is_nil(r.missing)
    assert.are.equal("root again", r.root)
  end)

  it("reuses the coroutine of a finished task, starting afresh", function()
    local r = tide.run(function()
      local out = {}
      -- (in functions of their own: no register of this frame keeps a task)
      local function finished()
        return tide.spawn(function()
          core.context().mine = "first task's"
          debug.sethook(function() end, "l")
          return coroutine.running()
        end):join()
      end
      local first = finished()
      -- a failed task's coroutine is never reused
      local failed
      local function fails()
        tide.spawn(function() failed = coroutine.running(); error("boom") end):join()
      end
      fails()
      collectgarbage()
      collectgarbage() -- (a failed task's would go spare, if ever, when finalized)
      local t2 = tide.spawn(function(a, b)
        return coroutine.running(), select("#", a, b), a, b, core.context().mine, debug.gethook()
      end, "x", nil)
      local co, n, a, b, mine, hook = t2:join()
      out.same = co == first
      out.n, out.a, out.b, out.mine, out.hook = n, a, b, mine, hook
      out.failed_reused = co == failed
      return out
    end)
    assert.is_true(r.same)
    assert.are.equal(2, r.n)
    assert.are.equal("x", r.a)
    assert.is_nil(r.b)
    assert.is_nil(r.mine) -- task-locals are the task's, not the coroutine's
    assert.is_nil(r.hook) -- nor is a debug hook set by the old task
    assert.is_false(r.failed_reused)
  end)

  it("gives back the coroutine of a task that returned at most one value as it ends, keeping the value", function()
    local r = tide.run(function()
      local out = {}
      local t1 = tide.spawn(function() return (coroutine.running()) end)
      local co1 = t1:join()
      -- no collection needed: the next task runs on t1's coroutine at once
      out.reused = tide.spawn(function() return (coroutine.running()) end):join() == co1
      out.again = t1:join() == co1 -- the value stays with the task
      local none = tide.spawn(function() end)
      out.none = select("#", none:join())
      out.none_again = select("#", none:join())
      local one_nil = tide.spawn(function() return nil end)
      out.one_nil = select("#", one_nil:join())
      -- two results stay on the task's own coroutine, which is not reused
      local co2
      local t2 = tide.spawn(function() co2 = coroutine.running() return "a", "b" end)
      out.a, out.b = t2:join()
      out.two_reused = tide.spawn(function() return (coroutine.running()) end):join() == co2
      out.a2, out.b2 = t2:join()
      return out
    end)
    assert.is_true(r.reused)
    assert.is_true(r.again)
    assert.are.equal(0, r.none)
    assert.are.equal(0, r.none_again)
    assert.are.equal(1, r.one_nil)
    assert.are.same({ "a", "b", "a", "b" }, { r.a, r.b, r.a2, r.b2 })
    assert.is_false(r.two_reused)
  end)

  it("spawn_now runs the new task at once, until it first waits", function()
    local r = tide.run(function()
      local log = {}
      local quick = core.spawn_now(function(a, b)
        log[#log + 1] = "quick ran with " .. a .. b
        return "quick done"
      end, "x", "y")
      log[#log + 1] = "after quick: " .. quick:status()
      local slow = core.spawn_now(function()
        log[#log + 1] = "slow started"
        tide.sleep(10)
        log[#log + 1] = "slow woke"
        return "slow done"
      end)
      log[#log + 1] = "after slow: " .. slow:status()
      local failing = core.spawn_now(function() error({ code = "Boom" }) end)
      local q, s = quick:join(), slow:join()
      local _, err = failing:join()
      log[#log + 1] = ("%s, %s, %s"):format(q, s, err.code)
      -- a task failing inside its caller is reported as any other (its
      -- traceback kept on the error), and the caller goes on
      assert(type(err.traceback) == "string" and err.traceback:find("spec/unit/loop_spec.lua"), err.traceback)
      -- the task is the current one while it runs, and a child of the caller
      local me = core.current()
      core.spawn_now(function() log[#log + 1] = tostring(core.current() ~= me) end)
      return log
    end)
    assert.are.same({ "quick ran with xy", "after quick: done", "slow started", "after slow: waiting",
      "slow woke", "quick done, slow done, Boom", "true" }, r)
    assert.has_error(function() core.spawn_now(function() end) end,
      "core.spawn_now must be called inside a task")
  end)

  it("raises on wrong argument types, naming the argument", function()
    assert.has_error(function() tide.spawn("nope") end,
      "bad argument #1 to 'spawn' (function expected, got string)")
    assert.has_error(function() tide.sleep("1") end,
      "bad argument #1 to 'sleep' (non-negative integer expected, got string)")
    assert.has_error(function() tide.run(42) end,
      "bad argument #1 to 'run' (function expected, got number)")
    assert.has_error(function() core.sleep(1) end, "tide.sleep must be called inside a task")
  end)
end)

describe("spawn depth", function()
  it("gives each nested spawn its parent's depth + 1 and fails past the limit", function()
    local depths, err = tide.run(function()
      local seen = {}
      local function nest(level)
        seen[#seen + 1] = core.depth()
        local t, e = core.spawn_nested(3, nest, level + 1)
        if not t then return e end
        return t:join()
      end
      local e = nest(0)
      return seen, e
    end)
    assert.are.same({ 0, 1, 2, 3 }, depths)
    assert.are.equal("SpawnDepthExceeded", err.code)
    assert.are.equal(4, err.depth)
    assert.are.equal(3, err.limit)
  end)

  it("restores nothing because nothing shared changes: parallel spawns see the same depth", function()
    local got = tide.run(function()
      local ts = {}
      for i = 1, 20 do ts[i] = core.spawn_nested(3, function() return core.depth() end) end
      local out = {}
      for i = 1, 20 do out[i] = ts[i]:join() end
      out.after = core.depth()
      return out
    end)
    for i = 1, 20 do assert.are.equal(1, got[i]) end
    assert.are.equal(0, got.after)
  end)

  it("cannot overflow", function()
    local _, err = core.spawn_nested(math.maxinteger > 2^31 and 2147483647 or 1, function() end)
    -- outside a task the parent depth is 0, so this spawn is allowed
    assert.is_nil(err)
    core.run(function() end)
  end)
end)

describe("join with a timeout and interrupt", function()
  after_each(function() helpers.assert_quiet() end)

  it("gives up after the timeout without stopping the task, and joins normally otherwise", function()
    local r1, e1, r2, fast = tide.run(function()
      local slow = tide.spawn(function() tide.sleep(60) return "slow done" end)
      local v, e = slow:join(10)
      local later = slow:join(1000) -- it went on running
      local f = tide.spawn(function() return "quick" end):join(1000)
      return v, e, later, f
    end)
    assert.is_nil(r1)
    assert.are.equal("Timeout", e1.code)
    assert.are.equal("slow done", r2)
    assert.are.equal("quick", fast)
  end)

  it("interrupts only the current wait of a task, which then runs on", function()
    local log = tide.run(function()
      local out = {}
      local t = tide.spawn(function()
        local ok, err = pcall(tide.sleep, 10000)
        out[#out + 1] = ok and "slept" or (type(err) == "table" and err.code or tostring(err))
        tide.sleep(1)
        out[#out + 1] = "ran on"
        return "end"
      end)
      tide.sleep(5)
      assert.is_true(t:interrupt())
      local last = t:join()
      out[#out + 1] = last
      return out
    end)
    assert.are.same({ "Cancelled", "ran on", "end" }, log)
  end)
end)
