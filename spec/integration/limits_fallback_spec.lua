-- Rate limits held process-wide, and the fallback provider.
local tide = require "tide"
local testing = require "tide.testing"
local limits = require "tide.provider.limits"
local core = require "tide.core"

describe("provider limits", function()
  before_each(function() limits._reset() end)

  it("holds rpm across provider objects and sessions of one key", function()
    local srv = testing.mock_server { default = "ok" }
    tide.agent { id = "lim", prompt = "You answer." }
    -- 1,200 requests a minute: 20 a second. The bucket holds one second's
    -- allowance, so 20 go at once and the next 20 are spread over a second
    local function p() return tide.provider.openai { base_url = srv.url, api_key = "k", model = "m",
      limits = { rpm = 1200 } } end
    local p1, p2 = p(), p()
    local t0 = core.hrtime()
    local at = {}
    tide.run(function()
      local tasks = {}
      for i = 1, 40 do
        local prov = i % 2 == 0 and p1 or p2
        tasks[i] = tide.spawn(function()
          local r = tide.session { agent = "lim", provider = prov }:turn("hi")
          at[#at + 1] = (core.hrtime() - t0) / 1e6
          return r
        end)
      end
      for _, t in ipairs(tasks) do assert.are.equal("ok", t:join()) end
    end)
    local ms = (core.hrtime() - t0) / 1e6
    assert.are.equal(40, #srv:requests())
    assert.is_true(ms >= 900, "40 requests at 1200 rpm took only " .. ms .. " ms")
    -- the first second's worth went at once
    table.sort(at)
    assert.is_true(at[20] < 500, "the first 20 waited " .. at[20] .. " ms")
    srv:close()
  end)

  it("pauses every request on the key for a 429's Retry-After", function()
    local n = 0
    local srv = testing.mock_server { default = function()
      n = n + 1
      if n == 1 then return { fault = "status", status = 429, retry_after = 1 } end
      return "ok"
    end }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", limits = { rpm = 6000 } }
    tide.agent { id = "lim2", prompt = "You answer." }
    local t0 = core.hrtime()
    assert.are.equal("ok", tide.session { agent = "lim2", provider = p }:turn("hi"))
    assert.is_true((core.hrtime() - t0) / 1e6 >= 950)
    srv:close()
  end)

  it("checks the option", function()
    assert.has_error(function() tide.provider.openai { limits = { rpm = 0 } } end,
      "tide.provider.openai: 'limits.rpm' must be a positive integer")
    assert.has_error(function() tide.provider.openai { limits = { rps = 1 } } end,
      "tide.provider.openai: unknown option 'limits.rps'")
  end)
end)

describe("tide.provider.fallback", function()
  it("moves on to the next provider, of another wire format, once retries are spent", function()
    local down = testing.mock_server { default = { fault = "status", status = 503 } }
    local up = testing.mock_server { default = testing.tool_loop(1, "lookup") }
    tide.agent { id = "fb", prompt = "You look.", tools = { tide.tool { name = "lookup", description = "d",
      handler = function() return "found" end } } }
    local p = tide.provider.fallback {
      tide.provider.openai { base_url = down.url, api_key = "k", model = "gpt-4o", retry = { attempts = 2, base_ms = 1 } },
      tide.provider.anthropic { base_url = up.url, api_key = "k", model = "claude-haiku-4-5" },
    }
    local events = {}
    local s = tide.session { agent = "fb", provider = p }
    assert.are.equal("done after 1 lookups", s:turn("go", { on_event = function(ev)
      if ev.type == "fallback" then events[#events + 1] = ev end
    end }))
    assert.are.equal(2, s:stats().fallbacks)
    assert.are.equal("openai:gpt-4o", events[1].from)
    assert.are.equal("anthropic:claude-haiku-4-5", events[1].to)
    assert.are.equal("ProviderError", events[1].error)
    -- the Anthropic server got Anthropic-shaped requests, tool result included
    local last = up:requests()[#up:requests()].json
    assert.are.equal("claude-haiku-4-5", last.model)
    assert.are.equal("tool_result", last.messages[#last.messages].content[1].type)
    assert.is_true(s:stats().cost_usd > 0) -- priced as the model that answered
    down:close()
    up:close()
  end)

  it("holds the next provider to the turn's schema too", function()
    local schema = { type = "object", additionalProperties = false, required = { "n" },
      properties = { n = { type = "integer" } } }
    local down = testing.mock_server { default = { fault = "status", status = 503 } }
    local up = testing.mock_server { default = '{"n":7}' }
    tide.agent { id = "fb_schema", prompt = "You count." }
    local p = tide.provider.fallback {
      tide.provider.openai { base_url = down.url, api_key = "k", model = "gpt-4o", retry = { attempts = 1 } },
      tide.provider.anthropic { base_url = up.url, api_key = "k", model = "claude-haiku-4-5" },
    }
    local s = tide.session { agent = "fb_schema", provider = p }
    local v, err = s:turn("how many?", { schema = schema })
    assert.is_nil(err)
    assert.are.equal(7, v.n)
    -- each in its own wire format: response_format for the first, output_config for the next
    assert.are.equal("json_schema", down:requests()[1].json.response_format.type)
    local sent = up:requests()[1].json
    assert.are.equal("json_schema", sent.output_config.format.type)
    assert.are.same({ "n" }, sent.output_config.format.schema.required)
    -- a plain turn after it asks neither for a schema
    up:close()
    up = testing.mock_server { default = "plain" }
    p.providers[2].base_url = up.url
    assert.are.equal("plain", s:turn("and?"))
    assert.is_nil(up:requests()[1].json.output_config)
    down:close()
    up:close()
  end)

  it("does not move on for an error the next provider would give too", function()
    local bad = testing.mock_server { default = { fault = "status", status = 400 } }
    local good = testing.mock_server { default = "ok" }
    local p = tide.provider.fallback {
      tide.provider.openai { base_url = bad.url, api_key = "k", model = "m" },
      tide.provider.openai { base_url = good.url, api_key = "k", model = "m" },
    }
    tide.agent { id = "fb2", prompt = "You answer." }
    local _, err = tide.session { agent = "fb2", provider = p }:turn("hi")
    assert.are.equal("ProviderError", err.code)
    assert.are.equal(0, #good:requests())
    assert.has_error(function() tide.provider.fallback { tide.provider.openai {} } end,
      "tide.provider.fallback: give a list of at least two providers")
    bad:close()
    good:close()
  end)
end)
