-- Hot reload (design behaviour 14): prompt files and agent files edited while
-- the loop runs. Each case drives the loop with tide.run and polls for the
-- change (up to 2 s), never sleeping a fixed long time.
local tide = require "tide"
local core = require "tide.core"
local prompts = require "tide.prompts"
local agents = require "tide.agents"
local helpers = require "helpers"

local POLL_MS, LIMIT_MS = 10, 2000

-- Polls cond() from inside a task until it is true; false after LIMIT_MS.
local function wait_for(cond)
  local t0 = core.now()
  while not cond() do
    if core.now() - t0 > LIMIT_MS then return false end
    tide.sleep(POLL_MS)
  end
  return true
end

-- Replaces path the way many editors save: write a temporary file, rename
-- it over the original (a new inode).
local function save_by_rename(path, text)
  helpers.write(path .. ".tmp~", text)
  assert(os.rename(path .. ".tmp~", path))
end

local function render(name, data)
  local text, v = prompts.render(name, data or { agent = { id = "a" } })
  assert(text, v and tostring(v))
  return text, v
end

describe("core.watch", function()
  local dir
  before_each(function() dir = helpers.tmpdir() end)
  after_each(function()
    helpers.rmdir(dir)
    helpers.assert_quiet()
  end)

  it("calls back once per quiet period with the changed names, deduplicated", function()
    local calls = {}
    local w = assert(core.watch(dir, function(names) calls[#calls + 1] = names end, 50))
    tide.run(function()
      helpers.write(dir .. "/a.md", "1")
      helpers.write(dir .. "/a.md", "2")
      helpers.write(dir .. "/b.md", "3")
      save_by_rename(dir .. "/a.md", "4")
      assert.is_true(wait_for(function() return #calls > 0 end))
      tide.sleep(100) -- longer than the debounce: no second call follows
    end)
    w:close()
    assert.are.equal(1, #calls)
    assert.are.same({ "a.md", "b.md", "a.md.tmp~" }, calls[1])
  end)

  it("does not keep the loop alive, and closes idempotently", function()
    local w = assert(core.watch(dir, function() end))
    local t0 = core.hrtime()
    tide.run(function() end)
    assert.is_true(core.hrtime() - t0 < 1e9)
    assert.is_false(w:closed())
    w:close()
    w:close()
    assert.is_true(w:closed())
    assert.are.equal("tide.watch (closed)", tostring(w))
    do
      local scoped <close> = assert(core.watch(dir, function() end))
      assert.is_false(scoped:closed())
    end
  end)

  it("survives a failing callback and a callback that closes its watcher", function()
    local n, w = 0, nil
    w = assert(core.watch(dir, function()
      n = n + 1
      if n == 1 then error("callback failure (expected in this spec)") end
      w:close()
    end, 0))
    tide.run(function()
      helpers.write(dir .. "/x", "1")
      assert.is_true(wait_for(function() return n == 1 end))
      helpers.write(dir .. "/x", "2")
      assert.is_true(wait_for(function() return n == 2 end))
      helpers.write(dir .. "/x", "3")
      tide.sleep(50)
    end)
    assert.are.equal(2, n)
    assert.is_true(w:closed())
  end)

  it("fails cleanly on a missing directory, and lists and resolves paths", function()
    local w, err = core.watch(dir .. "/missing", function() end)
    assert.is_nil(w)
    assert.are.equal("WatchFailed", err.code)
    helpers.write(dir .. "/b", "")
    helpers.write(dir .. "/a", "")
    local names = core.scandir(dir)
    table.sort(names)
    assert.are.same({ "a", "b" }, names)
    local none, serr = core.scandir(dir .. "/missing")
    assert.is_nil(none)
    assert.are.equal("FileError", serr.code)
    assert.are.equal(core.realpath(dir), core.realpath(dir .. "/./"))
    assert.is_nil(core.realpath(dir .. "/missing"))
  end)
end)

describe("prompts.watch", function()
  local dir, handle, changes, errors
  before_each(function()
    dir = helpers.tmpdir()
    changes, errors = {}, {}
    helpers.write(dir .. "/greet.md", "Hello {{agent.id}}, version one.\n")
    handle = assert(prompts.watch(dir, {
      on_change = function(name, version) changes[#changes + 1] = { name, version } end,
      on_error = function(err) errors[#errors + 1] = err end,
    }))
  end)
  after_each(function()
    handle:close()
    prompts.remove_dir(dir)
    helpers.rmdir(dir)
    helpers.assert_quiet()
  end)

  it("applies a valid edit to the next render", function()
    tide.run(function()
      local text, v1 = render("greet")
      assert.are.equal("Hello a, version one.", text)
      helpers.write(dir .. "/greet.md", "Hello {{agent.id}}, version two.\n")
      assert.is_true(wait_for(function() return prompts.version("greet") ~= v1 end))
      local text2, v2 = render("greet")
      assert.are.equal("Hello a, version two.", text2)
      assert.is_true(v2 > v1)
      assert.are.same({ { "greet", v2 } }, changes)
    end)
    assert.are.same({}, errors)
  end)

  it("keeps the previous version when an edit does not compile, and says where", function()
    tide.run(function()
      local _, v1 = render("greet")
      helpers.write(dir .. "/greet.md", "Hello\n\n{{#agent}}\nunclosed\n")
      assert.is_true(wait_for(function() return #errors > 0 end))
      local err = errors[1]
      assert.are.equal("TemplateError", err.code)
      assert.are.equal(core.realpath(dir) .. "/greet.md", err.file)
      assert.are.equal(3, err.line)
      assert.matches("unclosed section 'agent'", err.message)
      local text, v = render("greet")
      assert.are.equal("Hello a, version one.", text)
      assert.are.equal(v1, v)
      -- fixing the file applies again
      helpers.write(dir .. "/greet.md", "Fixed, {{agent.id}}.")
      assert.is_true(wait_for(function() return prompts.version("greet") ~= v1 end))
      assert.are.equal("Fixed, a.", (render("greet")))
    end)
    assert.are.equal(1, #errors)
  end)

  it("picks up a save by rename", function()
    tide.run(function()
      local _, v1 = render("greet")
      save_by_rename(dir .. "/greet.md", "Renamed into place.")
      assert.is_true(wait_for(function() return prompts.version("greet") ~= v1 end))
      assert.are.equal("Renamed into place.", (render("greet")))
      -- and the watch on the directory survives it
      save_by_rename(dir .. "/greet.md", "Renamed again.")
      assert.is_true(wait_for(function() return (render("greet")) == "Renamed again." end))
    end)
    assert.are.same({}, errors)
  end)

  it("notices a new file, and a partial's change in the prompts that use it", function()
    tide.run(function()
      helpers.write(dir .. "/fresh.md", "Fresh: {{> part}}")
      helpers.write(dir .. "/part.md", "old part")
      assert.is_true(wait_for(function() return #changes >= 2 end))
      local names = { changes[1][1], changes[2][1] }
      table.sort(names)
      assert.are.same({ "fresh", "part" }, names)
      local text, v1 = render("fresh")
      assert.are.equal("Fresh: old part", text)
      helpers.write(dir .. "/part.md", "new part")
      assert.is_true(wait_for(function() return prompts.version("fresh") ~= v1 end))
      assert.are.equal("Fresh: new part", (render("fresh")))
    end)
  end)

  it("keeps the previous version when an edit makes the file too large to read, and says so", function()
    tide.run(function()
      local _, v1 = render("greet")
      -- past the 4 MiB a prompt file may have: once read as if the file
      -- had gone, and the default (or nothing) answered for the name
      helpers.write(dir .. "/greet.md", ("x"):rep(4 * 1024 * 1024 + 1))
      assert.is_true(wait_for(function() return #errors > 0 end))
      local err = errors[1]
      assert.are.equal("TemplateError", err.code)
      assert.are.equal(core.realpath(dir) .. "/greet.md", err.file)
      assert.matches("over the 4194304%-byte limit", err.message)
      local text, v = render("greet")
      assert.are.equal("Hello a, version one.", text)
      assert.are.equal(v1, v)
      -- a file that is really gone is still forgotten
      os.remove(dir .. "/greet.md")
      assert.is_true(wait_for(function() return prompts.render("greet", {}) == nil end))
    end)
    assert.are.equal(1, #errors)
  end)

  it("leaves live renders alone: a session's frozen text is its own", function()
    tide.run(function()
      local frozen = render("greet")
      helpers.write(dir .. "/greet.md", "Changed.")
      assert.is_true(wait_for(function() return (render("greet")) == "Changed." end))
      assert.are.equal("Hello a, version one.", frozen)
    end)
  end)
end)

describe("agent files", function()
  local dir
  before_each(function() dir = helpers.tmpdir() end)
  after_each(function()
    helpers.rmdir(dir)
    helpers.assert_quiet()
  end)

  local good = [[
local lookup = tide.tool { name = "reload_lookup", description = "Looks up.",
  parameters = { type = "object", properties = {} }, handler = function() return "x" end }
return {
  id = "reload_good",
  prompt = "You are good.",
  tools = { lookup },
  when_to_use = "%s",
}
]]

  local function write_agents()
    helpers.write(dir .. "/a_good.lua", good:format("first"))
    helpers.write(dir .. "/b_syntax.lua", "return {\n  id = 'x',\n  prompt = = 'y',\n}\n")
    helpers.write(dir .. "/c_runtime.lua", "local t = {}\n\nlocal n = t.missing.field\nreturn { id = 'c' }\n")
    helpers.write(dir .. "/d_bad_def.lua", "-- a definition without a prompt\n\nreturn {\n  id = 'reload_bad',\n}\n")
    helpers.write(dir .. "/e_not_table.lua", "local x = 1\nreturn 42\n")
    helpers.write(dir .. "/notes.txt", "not an agent")
  end

  it("loads the good files and reports each bad one with file and line", function()
    write_agents()
    local ids, errs = agents.load(dir)
    assert.are.same({ "reload_good" }, ids)
    assert.are.equal("first", agents.get("reload_good").when_to_use)
    local by_file = {}
    for _, e in ipairs(errs) do
      assert.are.equal("AgentFileError", e.code)
      by_file[e.file:match("[^/]+$")] = e
    end
    assert.are.equal(4, #errs)
    assert.are.equal(3, by_file["b_syntax.lua"].line)
    assert.are.equal(3, by_file["c_runtime.lua"].line)
    assert.matches("attempt to index", by_file["c_runtime.lua"].message)
    assert.are.equal(3, by_file["d_bad_def.lua"].line)
    assert.matches("'prompt'", by_file["d_bad_def.lua"].message)
    assert.are.equal(2, by_file["e_not_table.lua"].line)
    assert.matches("must return an agent definition table %(got number%)", by_file["e_not_table.lua"].message)
    assert.truthy(tostring(by_file["b_syntax.lua"]):find(dir .. "/b_syntax.lua:3: ", 1, true))
    assert.is_nil(agents.get("reload_bad"))
  end)

  it("reports a runtime error raised in another module at the agent file's line", function()
    helpers.write(dir .. "/tool_err.lua", "\n\nlocal t = tide.tool { name = 5 }\nreturn { id = 'z', prompt = 'p z' }\n")
    local ids, errs = agents.load(dir)
    assert.are.same({}, ids)
    assert.are.equal(3, errs[1].line)
    assert.are.equal(dir .. "/tool_err.lua", errs[1].file)
  end)

  it("reloads an edited agent file, keeping the old definition when the edit fails", function()
    write_agents()
    local changed, errors = {}, {}
    local h = assert(agents.watch(dir, {
      on_change = function(id) changed[#changed + 1] = id end,
      on_error = function(err) errors[#errors + 1] = err end,
    }))
    assert.are.same({ "reload_good" }, h.ids)
    assert.are.equal(4, #h.errors)
    assert.are.equal(4, #errors) -- the first load's failures are reported too
    errors = {}
    tide.run(function()
      save_by_rename(dir .. "/a_good.lua", good:format("second"))
      assert.is_true(wait_for(function() return agents.get("reload_good").when_to_use == "second" end))
      assert.are.same({ "reload_good" }, changed)
      helpers.write(dir .. "/a_good.lua", "return {\n  id = 'reload_good',\n  prompt = 'x' .. ,\n}\n")
      assert.is_true(wait_for(function() return #errors > 0 end))
      assert.are.equal(dir .. "/a_good.lua", errors[1].file)
      assert.are.equal(3, errors[1].line)
      assert.are.equal("second", agents.get("reload_good").when_to_use)
      -- a bad file fixed is picked up; a new file too
      helpers.write(dir .. "/b_syntax.lua", "return { id = 'reload_fixed', prompt = 'Fixed.' }\n")
      helpers.write(dir .. "/f_new.lua", "return { id = 'reload_new', prompt = 'New.' }\n")
      assert.is_true(wait_for(function() return agents.get("reload_fixed") and agents.get("reload_new") end))
    end)
    h:close()
    h:close()
    assert.are.equal(1, #errors)
  end)
end)
