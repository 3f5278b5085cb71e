-- Ctrl-C (SIGINT) while tide.run drives the loop (README, error codes:
-- `Interrupted`): a child lua5.4 (spec/support/interrupt_child.lua) whose
-- tasks sleep for a minute is sent SIGINT, as a terminal's Ctrl-C sends
-- it. Its tasks unwind, and tide.run raises Interrupted.
local helpers = require "helpers"

describe("Ctrl-C (SIGINT) while tide.run drives the loop", function()
  local core = require "tide.core"

  local child -- the case's process, killed after it however it ended
  after_each(function() child = nil end)
  local function kill_child()
    if not child then return end
    pcall(child.kill, child, "KILL")
    helpers.run(function() child:close() end)
  end

  -- Runs the child in `mode` and interrupts it once it is ready; its
  -- stdout lines from then on, its exit status and signal, its stderr.
  local function interrupted(mode)
    return helpers.run(function()
      child = assert(core.process_spawn { argv = { "lua5.4", "spec/support/interrupt_child.lua", mode },
        env = helpers.child_env { LUA_PATH = package.path, LUA_CPATH = package.cpath } })
      local first, ferr = child:read_line(20000)
      assert.equal("ready", first, tostring(ferr) .. " " .. child:stderr())
      assert(child:kill("INT"))
      -- a minute's sleep is what it would do without the interrupt
      local lines = {}
      while true do
        local line, err = child:read_line(20000)
        assert.is_nil(err)
        if not line then break end
        lines[#lines + 1] = line
      end
      local status, signal = child:wait(20000)
      return lines, status, signal, child:stderr()
    end)
  end

  it("cancels every task, which unwinds, and tide.run raises Interrupted", function()
    finally(kill_child)
    local lines, status, signal = interrupted("caught")
    -- both tasks closed their variables, neither slept on, and then the
    -- script caught the error
    local closed = { lines[1], lines[2] }
    table.sort(closed)
    assert.same({ "closed child", "closed root" }, closed)
    assert.same({ "error Interrupted" }, { table.unpack(lines, 3) })
    -- the signal did not end the process: the script did, as it chose
    assert.same({ 0, 0 }, { status, signal })
  end)

  it("ends a script that does not catch it as any error does: exit status 1, the error on stderr", function()
    finally(kill_child)
    local lines, status, signal, stderr = interrupted("raised")
    table.sort(lines)
    assert.same({ "closed child", "closed root" }, lines)
    assert.same({ 1, 0 }, { status, signal })
    assert.matches("Interrupted: interrupted (SIGINT)", stderr, 1, true)
  end)
end)
