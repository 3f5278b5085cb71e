-- tide.bytecode: tide's modules loaded from their compiled chunks, kept
-- while their source is unchanged. Each case runs fresh lua5.4 processes
-- (a module is loaded once per process) with a probe module of its own.
local helpers = require "helpers"

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

describe("the bytecode cache", function()
  local dir, cache, src
  local build = os.getenv("TIDE_BUILD_DIR") or "build"

  -- Runs `code` in a fresh process after require "tide"; its output.
  local function run(code, cache_dir)
    local preload = os.getenv("LD_PRELOAD")
    return helpers.sh(("%s ASAN_OPTIONS=detect_leaks=0 TIDE_BYTECODE_CACHE=%s LUA_PATH=%s LUA_CPATH=%s lua5.4 -e %s")
      :format(preload and ("LD_PRELOAD=" .. q(preload)) or "", q(cache_dir or cache),
        q(dir .. "/?.lua;lua/?.lua;lua/?/init.lua;;"), q(build .. "/?.so;;"),
        q('require "tide"; ' .. code)))
  end
  local function probe(value)
    return ("return { value = %q, fail = function() error('probe failed') end }\n"):format(value)
  end
  local function entries(d)
    local out = {}
    for name in helpers.sh("(ls -A " .. q(d or cache) .. ") 2>/dev/null"):gmatch("[^\n]+") do out[#out + 1] = name end
    return out
  end
  local CODE = 'local p = require "tide.bcprobe"; print(p.value); print(select(2, pcall(p.fail)))'

  before_each(function()
    dir = helpers.tmpdir()
    cache = dir .. "/cache/nested"
    os.execute("mkdir -p " .. q(dir .. "/tide"))
    src = dir .. "/tide/bcprobe.lua"
    helpers.write(src, probe("one"))
  end)
  after_each(function() helpers.rmdir(dir) end)

  it("compiles a module once, then loads it from the cache, errors still naming the source line", function()
    local first = run(CODE)
    assert.are.equal("one\n" .. src .. ":1: probe failed\n", first)
    local names = entries()
    local mine
    for _, n in ipairs(names) do if n:match("^tide%.bcprobe%-%x+%.luac$") then mine = n end end
    assert.is_truthy(mine, "no entry among " .. table.concat(names, " "))
    assert.are.equal("700", helpers.sh("stat -c %a " .. q(cache)):match("%d+"))
    assert.are.equal("600", helpers.sh("stat -c %a " .. q(cache .. "/" .. mine)):match("%d+"))
    -- Proof that the second run reads the entry: the source changed under
    -- the same size and modification time still gives the compiled value.
    helpers.sh("touch -r " .. q(src) .. " " .. q(dir .. "/ref"))
    helpers.write(src, probe("two"))
    helpers.sh("touch -r " .. q(dir .. "/ref") .. " " .. q(src))
    assert.are.equal(first, run(CODE))
    -- A new modification time: compiled again.
    helpers.sh("touch -d '+1 minute' " .. q(src))
    assert.are.equal("two\n" .. src .. ":1: probe failed\n", run(CODE))
    -- A different size: compiled again.
    helpers.write(src, probe("three"))
    assert.are.equal("three\n", run(CODE):match("^[^\n]+\n"))
  end)

  it("compiles again over a damaged entry, and rewrites it", function()
    run(CODE)
    local file
    for _, n in ipairs(entries()) do if n:match("^tide%.bcprobe") then file = cache .. "/" .. n end end
    local data = helpers.read(file)
    helpers.write(file, data:sub(1, -30) .. ("\0"):rep(29)) -- (a torn write)
    assert.are.equal("one\n", run(CODE):match("^[^\n]+\n"))
    assert.are.equal(data, helpers.read(file))
    helpers.write(file, data:sub(1, #data // 2))
    assert.are.equal("one\n", run(CODE):match("^[^\n]+\n"))
    helpers.write(file, "not an entry")
    assert.are.equal("one\n", run(CODE):match("^[^\n]+\n"))
    assert.are.equal(data, helpers.read(file))
  end)

  it("writes nothing when off, and works when the cache cannot be written", function()
    assert.are.equal("one\n", run(CODE, "off"):match("^[^\n]+\n"))
    assert.are.same({ "tide" }, entries(dir)) -- (the probe's own directory alone)
    helpers.write(dir .. "/file", "a file, not a directory")
    assert.are.equal("one\n", run(CODE, dir .. "/file/cache"):match("^[^\n]+\n"))
  end)

  it("reports a module that does not compile as Lua does", function()
    helpers.write(src, "return {")
    local out = run('print(select(2, pcall(require, "tide.bcprobe")))')
    assert.matches("error loading module 'tide.bcprobe' from file '" .. src:gsub("%p", "%%%0") .. "':", out)
    assert.matches("unexpected symbol near <eof>", out, 1, true)
    assert.matches("module 'tide.nothing' not found", run('print(select(2, pcall(require, "tide.nothing")))'),
      1, true)
  end)
end)
