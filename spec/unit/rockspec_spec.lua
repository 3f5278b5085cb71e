-- The rockspec must list every Lua module of lua/tide, and nothing else.
describe("rockspec", function()
  local function rockspec()
    local name = io.popen("env -u LD_PRELOAD ls *.rockspec"):read("l") -- no sanitizer in ls
    local env = {}
    assert(loadfile(name, "t", env))()
    return env, name
  end

  it("lists every Lua module under lua/", function()
    local spec = rockspec()
    local listed = {}
    for mod, file in pairs(spec.build.install.lua) do
      listed[file] = mod
    end
    local found = {}
    local files = {}
    for file in io.popen("env -u LD_PRELOAD find lua -name '*.lua'"):lines() do files[#files + 1] = file end
    table.sort(files) -- here, not by sort(1), which the sanitizer's preload would follow
    for _, file in ipairs(files) do
      found[#found + 1] = file
      assert.is_not_nil(listed[file], "rockspec does not list " .. file)
      local mod = file:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
      assert.are.equal(mod, listed[file], "module name for " .. file)
    end
    for file in pairs(listed) do
      local f = io.open(file)
      assert.is_not_nil(f, "rockspec lists a missing file " .. file)
      f:close()
    end
    assert.is_true(#found > 10)
  end)

  it("builds with cmake and passes the Lua paths", function()
    local spec = rockspec()
    assert.are.equal("cmake", spec.build.type)
    assert.is_truthy(spec.build.variables.LUA_INCDIR)
    assert.is_truthy(spec.build.variables.LUA_LIBDIR)
    assert.is_truthy(spec.build.variables.CMAKE_BUILD_TYPE)
  end)
end)
