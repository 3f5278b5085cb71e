-- Rate limits shared by several worker processes through a real Redis.
local helpers = require "helpers"
local redis_server = require "support.redis"
local tide = require "tide"
local core = require "tide.core"
local testing = require "tide.testing"
local limits = require "tide.provider.limits"

describe("limits under tide.cluster", function()
  local srv
  setup(function() srv = redis_server.start() end)
  teardown(function() if srv then srv:close() end end)
  before_each(function() limits._reset() end)

  it("hold across worker processes: one bucket on Redis's clock", function()
    local at = {}
    local t0
    local mock = testing.mock_server { default = function()
      at[#at + 1] = (core.hrtime() - t0) / 1e6
      return "ok"
    end }
    -- 1,200 rpm = 20 a second, one second's allowance in the bucket; three
    -- workers of 30 requests each: 20 at once, then 70 over 3.5 s
    local kids, out = {}, {}
    tide.run(function()
      for i = 1, 3 do
        kids[i] = assert(core.process_spawn { argv = { "lua5.4", "bench/limits_worker.lua", srv.url, mock.url, "1200", "n=30", "30" },
          env = helpers.child_env { TIDE_BUILD_DIR = os.getenv("TIDE_BUILD_DIR") or "build" } })
        assert.equal("ready", kids[i]:read_line())
      end
      t0 = core.hrtime()
      for i = 1, 3 do kids[i]:write("go\n") end
      for i = 1, 3 do
        out[i] = kids[i]:read_line()
        kids[i]:wait()
      end
    end)
    mock:close()
    for i = 1, 3 do assert.equal("done turns=30 remote=30 fallbacks=0", out[i]) end
    assert.equal(90, #at)
    table.sort(at)
    -- never more than a second's allowance plus the refill in any second
    for i = 1, #at do
      local j = i
      while j < #at and at[j + 1] - at[i] < 1000 do j = j + 1 end
      assert.is_true(j - i + 1 <= 41, ("%d requests within a second from %.0f ms"):format(j - i + 1, at[i]))
    end
    -- and the allowance is used: 70 after the first 20 take about 3.5 s
    assert.is_true(at[90] >= 3300, "90 requests at 1200 rpm ended at " .. at[90] .. " ms")
    assert.is_true(at[90] < 6000, "the workers left the allowance unused: " .. at[90] .. " ms")
  end)

  it("pauses every worker for a 429's Retry-After", function()
    local c = tide.cluster { redis = srv.url, prefix = "pause" }
    finally(function()
      helpers.run(function() c:close() end)
      require("tide.cluster").set_current(nil)
    end)
    local n = 0
    local mock = testing.mock_server { default = function()
      n = n + 1
      if n == 1 then return { fault = "status", status = 429, retry_after = 1 } end
      return "ok"
    end }
    tide.agent { id = "lim3", prompt = "You answer." }
    local p = tide.provider.openai { base_url = mock.url, api_key = "k", model = "m", limits = { rpm = 6000 } }
    assert.equal("ok", tide.session { agent = "lim3", provider = p }:turn("hi"))
    -- the pause is in Redis, where another worker's reservation sees it
    local key = c:key("limits", p._limits_key)
    local paused = tonumber(srv:cli("HGET " .. key .. " paused"))
    assert.is_truthy(paused)
    limits._reset() -- as a fresh worker: only Redis knows
    local t0 = core.hrtime()
    local q = tide.provider.openai { base_url = mock.url, api_key = "k", model = "m", limits = { rpm = 6000 } }
    srv:cli("HSET " .. key .. " paused " .. string.format("%.0f", paused + 500))
    assert.equal("ok", tide.session { agent = "lim3", provider = q }:turn("hi"))
    assert.is_true((core.hrtime() - t0) / 1e6 >= 300)
    mock:close()
  end)

  it("fall back to the process's bucket when Redis is gone", function()
    local dead = redis_server.start()
    local c = tide.cluster { redis = dead.url }
    finally(function()
      helpers.run(function() c:close() end)
      require("tide.cluster").set_current(nil)
    end)
    local mock = testing.mock_server { default = "ok" }
    tide.agent { id = "lim4", prompt = "You answer." }
    local p = tide.provider.openai { base_url = mock.url, api_key = "k", model = "m", limits = { rpm = 600 } }
    assert.equal("ok", tide.session { agent = "lim4", provider = p }:turn("hi"))
    dead:close()
    assert.equal("ok", tide.session { agent = "lim4", provider = p }:turn("hi"))
    local st = limits.state(p)
    assert.equal(1, st.remote)
    assert.equal(1, st.local_fallbacks)
    mock:close()
  end)
end)
