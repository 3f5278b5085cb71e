-- The layout's promises: HTTP and the loop know no provider, the mock server
-- is not in tide.core, and loading tide changes nothing process-wide.
local helpers = require "helpers"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

describe("the layout", function()
  it("names no provider in http.c or loop.c", function()
    for _, file in ipairs { "core/http.c", "core/loop.c" } do
      local text = read(file):lower()
      assert.is_nil(text:find("openai", 1, true), file .. " names openai")
      assert.is_nil(text:find("anthropic", 1, true), file .. " names anthropic")
    end
  end)

  it("keeps the mock server out of tide.core", function()
    local core = require "tide.core"
    assert.is_nil(core.server_listen)
    local so = read((os.getenv("TIDE_BUILD_DIR") or "build") .. "/tide/core.so")
    assert.is_nil(so:find("tide.server", 1, true))
    assert.is_nil(so:find("server handler", 1, true))
    assert.is_function(require("tide.testing.server").listen)
  end)

  it("changes no process-wide setting when loaded, only when its loop first runs", function()
    -- A child inherits the descriptor limit: it reports what the process has.
    local script = [[
local limit = function() local p = io.popen("ulimit -Sn"); local v = p:read("l"); p:close(); return v end
local before = limit()
local tide = require "tide"
local loaded = limit()
tide.run(function() end)
io.write(before, " ", loaded, " ", limit())
]]
    local path = os.tmpname()
    helpers.write(path, script)
    local build = os.getenv("TIDE_BUILD_DIR") or "build"
    local out = helpers.sh(("ulimit -Sn 256; ulimit -Hn 512; LUA_PATH='lua/?.lua;lua/?/init.lua;;' "
      .. "LUA_CPATH='%s/?.so;;' ASAN_OPTIONS=detect_leaks=0 lua5.4 %s"):format(build, path))
    os.remove(path)
    assert.are.equal("256 256 512", out)
  end)
end)
