-- The free-list cache in front of the Lua allocator (core/alloc.c). Each
-- case runs in a child lua5.4 with the cache asked for explicitly, so that
-- the sanitizer run (which turns it off for every other spec: a cached
-- block is one AddressSanitizer cannot see freed) checks it too: there a
-- block handed out too small is a heap overflow, and one the closing state
-- forgot a leak.
local helpers = require "helpers"

local build = os.getenv("TIDE_BUILD_DIR") or "build"

-- Runs `code` in a child with TIDE_ALLOC_CACHE=`setting`; its output and
-- whether it exited 0.
local function child(setting, code)
  local script = os.tmpname()
  helpers.write(script, code)
  local out = helpers.sh(("TIDE_ALLOC_CACHE=%s LUA_CPATH=%q LUA_PATH=%q lua5.4 %s"):format(setting,
    build .. "/?.so;;", "lua/?.lua;lua/?/init.lua;spec/?.lua;;", script) .. "; echo \"exit $?\"")
  os.remove(script)
  return out
end

-- Objects of every size the cache keeps and beyond it, dropped and made
-- again, strings checked byte for byte after reuse.
local CHURN = [[
local core = require "tide.core"
local function churn(rounds)
  for r = 1, rounds do
    local keep = {}
    for n = 1, 1200, 7 do
      local s = string.rep(string.char(65 + (n + r) % 26), n)
      keep[#keep + 1] = { s, n, { n, n + 1 }, function() return n end }
    end
    for _, e in ipairs(keep) do
      assert(#e[1] == e[2] and e[1] == string.rep(e[1]:sub(1, 1), e[2]) and e[4]() == e[2])
    end
  end
  collectgarbage()
end
]]

describe("the allocator's block cache", function()
  it("sits in front of lauxlib's allocator, hands back blocks that fit, and stays bounded", function()
    local out = child("1", CHURN .. [[
assert(math.type(core.alloc_cache()) == "integer")
churn(40)
local held = core.alloc_cache()
assert(held > 0, "nothing was cached")
-- a burst far beyond the bound leaves at most the bound (1 MiB) cached
local big = {}
for i = 1, 200000 do big[i] = { i } end
big = nil
collectgarbage()
collectgarbage()
assert(core.alloc_cache() <= 1 << 20, core.alloc_cache())
churn(10)
print("ok", held)
]])
    assert.matches("ok\t%d+", out)
    assert.matches("exit 0", out)
  end)

  it("runs a whole tool loop over HTTP on cached blocks", function()
    local out = child("1", [[
local tide = require "tide"
tide.agent { id = "looper", prompt = "You look things up.", max_iterations = 11,
  tools = { tide.tool { name = "lookup", description = "Looks a thing up.",
    parameters = { type = "object", properties = { q = { type = "string" } } },
    handler = function(a) return "found " .. tostring(a.q) end } } }
tide.run(function()
  local srv = assert(tide.testing.mock_server { default = tide.testing.tool_loop(10) })
  for _ = 1, 20 do
    local s = tide.session { agent = "looper", provider = tide.provider.openai {
      base_url = srv.url, api_key = "k", model = "gpt-4o-mini" } }
    assert(s:turn("look up ten things") == "done after 10 lookups")
  end
  srv:close()
end)
assert(require("tide.core").alloc_cache() > 0)
print("ok")
]])
    assert.matches("\nok\n", "\n" .. out)
    assert.matches("exit 0", out)
  end)

  it("is left out when TIDE_ALLOC_CACHE=0", function()
    local out = child("0", CHURN .. [[
churn(5)
print("cache", core.alloc_cache())
]])
    assert.matches("cache\tnil", out)
    assert.matches("exit 0", out)
  end)

  it("is put in once when the module is loaded again into the same state", function()
    local out = child("1", CHURN .. [[
churn(5)
package.loaded["tide.core"] = nil
local again = require "tide.core"
assert(again ~= core and math.type(again.alloc_cache()) == "integer")
churn(5)
print("ok")
]])
    assert.matches("ok", out)
    assert.matches("exit 0", out)
  end)
end)
