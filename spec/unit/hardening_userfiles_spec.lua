-- Hardening: a user's Lua file (agent file, Lua config) that never ends, or
-- grows without end, fails like a broken file instead of hanging (issue 20).
local tide = require "tide"
local agents = require "tide.agents"
local loader = require "tide.agents_loader"
local helpers = require "helpers"

-- Runs fn with loader.limits lowered, so that a runaway file fails fast.
local function with_limits(limits, fn)
  local saved = loader.limits
  loader.limits = limits
  local ok, err = pcall(fn)
  loader.limits = saved
  if not ok then error(err, 0) end
end

local SMALL = { instructions = 2000000, memory_bytes = 8 * 1024 * 1024 }

describe("agent files under a budget", function()
  local dir
  before_each(function() dir = helpers.tmpdir() end)
  after_each(function()
    helpers.rmdir(dir)
    assert.is_nil(debug.gethook()) -- the hook is put back
    helpers.assert_quiet()
  end)

  it("fails a file that loops forever, at the default budget, naming file and line", function()
    helpers.write(dir .. "/a_ok.lua", "return { id = 'budget_ok', prompt = 'Fine.' }\n")
    helpers.write(dir .. "/b_loop.lua", "local n = 0\n\nwhile true do n = n + 1 end\n")
    local ids, errs = agents.load(dir)
    assert.are.same({ "budget_ok" }, ids)
    assert.are.equal(1, #errs)
    local e = errs[1]
    assert.are.equal("AgentFileError", e.code)
    assert.are.equal(dir .. "/b_loop.lua", e.file)
    assert.are.equal(3, e.line)
    assert.matches("ran too long %(more than 100000000 instructions%)", e.message)
    assert.truthy(tostring(e):find(dir .. "/b_loop.lua:3: ", 1, true))
  end)

  it("cannot be caught by pcall or xpcall inside the file", function()
    helpers.write(dir .. "/p.lua", "while true do pcall(function() while true do end end) end\n")
    helpers.write(dir .. "/x.lua",
      "while true do xpcall(function() while true do end end, debug.traceback) end\nreturn { id = 'budget_x', prompt = 'x' }\n")
    helpers.write(dir .. "/y.lua",
      "for _ = 1, 3 do pcall(function() while true do end end) end\nreturn { id = 'budget_y', prompt = 'y' }\n")
    with_limits(SMALL, function()
      local ids, errs = agents.load(dir)
      assert.are.same({}, ids)
      assert.are.equal(3, #errs)
      for _, e in ipairs(errs) do assert.matches("ran too long", e.message) end
    end)
    assert.is_nil(agents.get("budget_x"))
  end)

  it("bounds loops inside coroutines the file makes, and keeps its hook on", function()
    helpers.write(dir .. "/co.lua", "coroutine.resume(coroutine.create(function() while true do end end))\n")
    helpers.write(dir .. "/wrap.lua", "coroutine.wrap(function() while true do end end)()\n")
    helpers.write(dir .. "/unhook.lua", "debug.sethook()\nwhile true do end\n")
    with_limits(SMALL, function()
      local ids, errs = agents.load(dir)
      assert.are.same({}, ids)
      assert.are.equal(3, #errs)
      table.sort(errs, function(a, b) return a.file < b.file end)
      assert.matches("ran too long", errs[1].message) -- co.lua
      assert.matches("not available", errs[2].message) -- unhook.lua
      assert.matches("ran too long", errs[3].message) -- wrap.lua
    end)
  end)

  it("fails a file whose heap grows without end", function()
    helpers.write(dir .. "/grow.lua", "local t = {}\nwhile true do t[#t + 1] = { #t } end\n")
    with_limits({ instructions = 1e9, memory_bytes = 8 * 1024 * 1024 }, function()
      local ids, errs = agents.load(dir)
      assert.are.same({}, ids)
      assert.matches("used too much memory", errs[1].message)
      assert.are.equal(2, errs[1].line)
    end)
  end)

  it("does not count garbage, nor a file's own work within the budget", function()
    helpers.write(dir .. "/garbage.lua",
      "for i = 1, 200000 do local t = { i, i, i, i } end\nreturn { id = 'budget_garbage', prompt = 'g' }\n")
    with_limits({ instructions = 1e8, memory_bytes = 2 * 1024 * 1024 }, function()
      local ids, errs = agents.load(dir)
      assert.are.same({ "budget_garbage" }, ids, errs[1] and tostring(errs[1]))
    end)
  end)

  it("keeps the previous definition when a watched file is edited to loop", function()
    helpers.write(dir .. "/w.lua", "return { id = 'budget_w', prompt = 'First.' }\n")
    local errors = {}
    with_limits(SMALL, function()
      local h = assert(agents.watch(dir, { on_error = function(e) errors[#errors + 1] = e end }))
      tide.run(function()
        helpers.write(dir .. "/w.lua", "while true do end\nreturn { id = 'budget_w', prompt = 'Second.' }\n")
        helpers.wait_until(function() return #errors > 0 end, "the reload error", 2000)
      end)
      h:close()
    end)
    assert.are.equal(dir .. "/w.lua", errors[1].file)
    assert.are.equal(1, errors[1].line)
    assert.matches("ran too long", errors[1].message)
    assert.are.equal("First.", agents.get("budget_w").prompt)
  end)

  it("registers nothing from a file that fails after its tide.agent call", function()
    helpers.write(dir .. "/f.lua", "return { id = 'half_f', prompt = 'First.' }\n")
    assert(agents.load(dir))
    helpers.write(dir .. "/f.lua", "local a = tide.agent { id = 'half_f', prompt = 'Second.' }\nerror('oops')\nreturn a\n")
    local _, errs = agents.load(dir)
    assert.is_table(errs)
    assert.are.equal("First.", agents.get("half_f").prompt)
    -- a definition that could run code as it is read, and an error value that raises when shown
    helpers.write(dir .. "/f.lua", "return setmetatable({}, { __index = function() while true do end end })\n")
    local _, e2 = agents.load(dir)
    assert.matches("a table with a metatable", require("tide.json").canonical(e2))
    helpers.write(dir .. "/f.lua", "error(setmetatable({}, { __index = function() error('boom') end, "
      .. "__tostring = function() error('boom') end }))\n")
    local ok = pcall(agents.load, dir)
    assert.is_true(ok)
    assert.are.equal("First.", agents.get("half_f").prompt)
  end)

  it("fails a FIFO or a device named like an agent or prompt file, never blocking on it", function()
    assert(os.execute(("mkfifo %q"):format(dir .. "/fifo.lua")))
    local _, errs = agents.load(dir)
    assert.matches("is not a regular file", require("tide.json").canonical(errs))
    local pdir = helpers.tmpdir()
    assert(os.execute(("mkfifo %q"):format(pdir .. "/stuck.md")))
    require("tide.prompts").add_dir(pdir)
    local ok, text = pcall(require("tide.prompts").render, "stuck", {})
    assert.is_true(not ok or text == nil) -- (an unknown prompt, not a hang)
    assert(os.execute(("mkfifo %q"):format(dir .. "/cfg.lua")))
    local cfg, err = tide.config(dir .. "/cfg.lua")
    assert.is_nil(cfg)
    assert.matches("is not a regular file", err.message, 1, true)
    os.remove(dir .. "/cfg.lua")
    helpers.rmdir(pdir)
  end)

  it("restores a hook that was set before", function()
    local calls = 0
    local function mine() calls = calls + 1 end
    helpers.write(dir .. "/h.lua", "return { id = 'budget_h', prompt = 'h' }\n")
    debug.sethook(mine, "", 1000000)
    agents.load(dir)
    local f, mask, count = debug.gethook()
    debug.sethook()
    assert.are.equal(mine, f)
    assert.are.equal("", mask)
    assert.are.equal(1000000, count)
  end)
end)

describe("Lua config files under a budget", function()
  local dir
  before_each(function() dir = helpers.tmpdir() end)
  after_each(function() helpers.rmdir(dir) end)

  it("fails a config that loops forever with a ConfigError naming the file", function()
    local path = dir .. "/loop.lua"
    helpers.write(path, "local x = 0\nrepeat x = x + 1 until false\n")
    with_limits(SMALL, function()
      local cfg, err = tide.config(path)
      assert.is_nil(cfg)
      assert.are.equal("ConfigError", err.code)
      assert.are.equal(path, err.file)
      assert.truthy(err.message:find(path .. ":2: ran too long", 1, true), err.message)
    end)
    assert.is_nil(debug.gethook())
  end)

  it("reads a config with a BOM or a #! line, and fails a directory with a ConfigError", function()
    local path = dir .. "/bom.lua"
    helpers.write(path, "\239\187\191return { n = 1 }\n")
    assert.are.equal(1, assert(tide.config(path)):get("n"))
    helpers.write(path, "#!/usr/bin/env lua\nreturn { n = 2 }\n")
    assert.are.equal(2, assert(tide.config(path)):get("n"))
    os.execute(("mkdir -p %q"):format(dir .. "/d.lua"))
    local cfg, err = tide.config(dir .. "/d.lua")
    assert.is_nil(cfg)
    assert.are.equal("ConfigError", err.code)
  end)

  it("still loads a config that returns a table", function()
    local path = dir .. "/ok.lua"
    helpers.write(path, "local t = {}\nfor i = 1, 10 do t[i] = i end\nreturn { n = #t }\n")
    assert.are.equal(10, assert(tide.config(path)):get("n"))
  end)
end)

describe("a bounded run inside a task", function()
  it("may wait: the file runs on the task's thread", function()
    -- A file loaded from inside a task runs on that task's thread.
    local dir = helpers.tmpdir()
    finally(function() helpers.rmdir(dir) end)
    helpers.write(dir .. "/t.lua", "tide.sleep(1)\nreturn { id = 'budget_task', prompt = 't' }\n")
    local ids = tide.run(function() return (agents.load(dir)) end)
    assert.are.same({ "budget_task" }, ids)
  end)
end)
