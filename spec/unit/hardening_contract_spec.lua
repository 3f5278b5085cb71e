-- Hardening: a directory that cannot be read is a runtime failure, returned
-- as nil and a FileError, never raised (issue 20).
local tide = require "tide"
local agents = require "tide.agents"
local prompts = require "tide.prompts"
local helpers = require "helpers"

local function file_error(dir, fn, ...)
  local v, err = fn(...)
  assert.is_nil(v)
  assert.are.equal("FileError", err.code)
  assert.are.equal(dir, err.dir)
  assert.truthy(err.message:find(dir, 1, true), err.message)
  assert.truthy(tostring(err):find("^FileError: "))
  return err
end

describe("a missing directory", function()
  local dir, missing
  before_each(function()
    dir = helpers.tmpdir()
    missing = dir .. "/missing"
  end)
  after_each(function()
    helpers.rmdir(dir)
    helpers.assert_quiet()
  end)

  it("is nil, FileError from tide.agents.load and tide.agents.watch", function()
    assert.matches("^agents%.load: ", file_error(missing, agents.load, missing).message)
    assert.matches("^agents%.watch: ", file_error(missing, agents.watch, missing, {}).message)
    file_error(missing, tide.agents.watch, missing)
  end)

  it("is nil, FileError from tide.prompts.watch, and the directory is not added", function()
    local before = prompts.dirs()
    assert.matches("^prompts%.watch: ", file_error(missing, prompts.watch, missing).message)
    assert.are.same(before, prompts.dirs())
  end)

  it("still raises for a directory argument that is not a string", function()
    assert.has_error(function() agents.load(42) end, "bad argument #1 to 'load' (string expected, got number)")
    assert.has_error(function() agents.watch(nil) end, "bad argument #1 to 'watch' (string expected, got nil)")
    assert.has_error(function() prompts.watch({}) end, "bad argument #1 to 'watch' (string expected, got table)")
  end)

  it("is not an error once it exists", function()
    local ids, errs = agents.load(dir)
    assert.are.same({}, ids)
    assert.are.same({}, errs)
    local h = assert(prompts.watch(dir))
    h:close()
    prompts.remove_dir(dir)
  end)
end)

describe("core.error", function()
  local core = require "tide.core"

  it("keeps every byte of its code and message, NULs included", function()
    local e = core.error("ProviderError", "before\0after")
    assert.are.equal("before\0after", e.message)
    assert.are.equal("ProviderError: before\0after", tostring(e))
    assert.are.equal("Timeout", core.error("Timeout").message)
    assert.are.equal("A\0B: A\0B", tostring(core.error("A\0B"))) -- the message is the code
    local fields = { status = 500 }
    assert.are.equal(fields, core.error("X", "m", fields))
    assert.are.equal(500, fields.status)
    assert.is_true(core.is_error(fields))
  end)

  it("raises for a code or message that is not a string", function()
    assert.has_error(function() core.error({}) end)
    assert.has_error(function() core.error("X", {}) end)
    assert.has_error(function() core.error("X", "m", 3) end)
  end)
end)

describe("the error codes", function()
  local read = helpers.read

  -- Every code in the first column of the README's error table.
  local function documented()
    local readme = read("README.md")
    local section = assert(readme:match("\n### Errors\n(.-)\n#"), "README has an Errors section")
    local set, rows = {}, {}
    for first in section:gmatch("\n| ([^|]+) |") do
      rows[#rows + 1] = first
      for code in first:gmatch("`(%u%w+)`") do set[code] = true end
    end
    return set, rows
  end

  -- Every code the sources make an error with, in Lua and in C.
  local function raised()
    local set = {}
    local patterns = { 'core%.error%("(%u%w+)"', 'fail%("(%u%w+)"', 'code = "(%u%w+)"',
      'push_errorv?%(L, "(%u%w+)"', 'tide__fail%(L, "(%u%w+)"', 'tide__raise%(L, "(%u%w+)"',
      'return "(%u%w+)";' }
    local files = {}
    local p = io.popen("ls lua/tide/*.lua lua/tide/*/*.lua core/*.c")
    for path in p:lines() do files[#files + 1] = path end
    p:close()
    for _, path in ipairs(files) do
      local text = read(path)
      for _, pat in ipairs(patterns) do
        for code in text:gmatch(pat) do set[code] = path end
      end
    end
    return set
  end

  it("are listed once in tide.codes, as the README's table lists them", function()
    local doc = documented()
    local listed = {}
    for _, code in ipairs(tide.codes) do
      assert.is_nil(listed[code], code .. " is listed twice in tide.codes")
      listed[code] = true
    end
    for code in pairs(doc) do assert.is_true(listed[code], code .. " is documented, not in tide.codes") end
    for code in pairs(listed) do assert.is_true(doc[code], code .. " is in tide.codes, not documented") end
  end)

  it("each have one row in the README's table", function()
    local _, rows = documented()
    local seen = {}
    for _, first in ipairs(rows) do
      for code in first:gmatch("`(%u%w+)`") do
        assert.is_nil(seen[code], code .. " has two rows in the README's error table")
        seen[code] = true
      end
    end
  end)

  it("are all documented: none raised by the sources is missing", function()
    local listed = {}
    for _, code in ipairs(tide.codes) do listed[code] = true end
    local n = 0
    for code, path in pairs(raised()) do
      n = n + 1
      assert.is_true(listed[code], code .. " (raised in " .. path .. ") is not in tide.codes")
    end
    assert.is_true(n > 30, "the scan found the codes")
  end)
end)
