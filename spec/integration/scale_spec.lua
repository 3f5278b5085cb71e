-- Many sessions in flight in one process. Tagged #slow: it runs in the normal
-- build (./dev test), not in the sanitizer build.
local tide = require "tide"
local core = require "tide.core"
local testing = require "tide.testing"
local helpers = require "helpers"

describe("scale #slow", function()
  it("runs 2,000 tool-using sessions in flight and checks every reply", function()
    assert.is_number(core.raise_fd_limit(4500))
    local srv = testing.mock_server { default = testing.tool_loop(1, "lookup"), delay_ms = 200 }
    local provider = tide.provider.openai { base_url = srv.url .. "/v1", api_key = "k", model = "m", stream = true }
    local lookup = tide.tool { name = "lookup", description = "l", parameters = { type = "object",
      properties = { q = { type = "string" } } }, handler = function(a) return "found " .. a.q end }
    tide.agent { id = "scaler", prompt = "You scale.", tools = { lookup } }
    local n = 2000
    local replies, stats = tide.run(function()
      local tasks = {}
      for i = 1, n do
        tasks[i] = tide.spawn(function()
          local s = tide.session { agent = "scaler", provider = provider }
          local r, err = s:turn("session " .. i)
          return r or tostring(err), s:stats()
        end)
      end
      local out, st = {}, {}
      for i = 1, n do out[i], st[i] = tasks[i]:join() end
      return out, st
    end)
    for i = 1, n do
      assert.are.equal("done after 1 lookups", replies[i])
      assert.are.equal(2, stats[i].provider_calls)
      assert.are.equal(1, stats[i].tool_calls)
    end
    assert.are.equal(2 * n, #srv:requests())
    srv:close()
    helpers.assert_quiet()
  end)
end)
