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

  -- tpm = 60,000: the bucket holds one second's 1,000 tokens and refills
  -- one a millisecond, so a request waits as many ms as it is tokens
  -- short. A request is estimated at a quarter token a byte of its body
  -- plus max_tokens: 600 here, about 640 in all, so one goes at once and
  -- the next cannot.
  local function tpm_provider(url, model)
    return tide.provider.openai { base_url = url, api_key = "k", model = model, stream = false,
      max_tokens = 600, limits = { tpm = 60000 } }
  end
  -- (from the body as the server got it: within a token of tide's own)
  local function estimate(req) return #req.body // 4 + 600 end

  it("holds tpm: a request waits for the tokens the ones before it reserved", function()
    local at = {} -- (when each request reached the server)
    local srv <close> = testing.mock_server { default = function()
      at[#at + 1] = core.hrtime()
      return "ok"
    end }
    tide.agent { id = "tpm", prompt = "You answer." }
    local p = tpm_provider(srv.url, "m")
    local t0 = core.hrtime()
    tide.run(function()
      local tasks = {}
      for i = 1, 3 do
        tasks[i] = tide.spawn(function() return tide.session { agent = "tpm", provider = p }:turn("hi") end)
      end
      for _, t in ipairs(tasks) do assert.are.equal("ok", t:join()) end
    end)
    local reqs = srv:requests()
    assert.are.equal(3, #reqs)
    assert.is_true((at[1] - t0) / 1e6 < 200, "the first request waited")
    -- All three reserve before any reply comes (no usage corrects them):
    -- the k-th goes once the bucket has refilled what the first k reserved
    -- past its 1,000 tokens.
    local reserved = 0
    for k = 1, 3 do
      reserved = reserved + estimate(reqs[k])
      if k > 1 then
        local want, gap = reserved - 1000, (at[k] - at[1]) / 1e6
        assert.is_true(want > 200, "the estimate is not what this spec assumes: " .. reserved)
        assert.is_true(gap >= want - 60 and gap <= want + 300,
          ("request %d went %.0f ms after the first, not about %d"):format(k, gap, want))
      end
    end
  end)

  it("corrects a request's estimate with the usage its reply reports, for the next request", function()
    -- each model's replies report usage as its name says: as estimated,
    -- far below the estimate, or 300 tokens above it
    local used = { estimated = function(req) return estimate(req) end, below = function() return 2 end,
      above = function(req) return estimate(req) + 300 end }
    local seen = {} -- model -> { { at, estimate } } of its requests
    local srv <close> = testing.mock_server { default = function(req)
      local m = req.json.model
      seen[m] = seen[m] or {}
      table.insert(seen[m], { at = core.hrtime(), estimate = estimate(req) })
      return { text = "ok", usage = { input = used[m](req) - 1, output = 1 } }
    end }
    tide.agent { id = "tpm_settle", prompt = "You answer." }
    local gap, short = {}, {}
    for _, m in ipairs { "estimated", "below", "above" } do
      local s = tide.session { agent = "tpm_settle", provider = tpm_provider(srv.url, m) }
      assert.are.equal("ok", s:turn("hi"))
      assert.are.equal("ok", s:turn("again"))
      local r1, r2 = seen[m][1], seen[m][2]
      gap[m] = (r2.at - r1.at) / 1e6
      -- what the two reserved past the bucket, had the first used its estimate
      short[m] = r1.estimate + r2.estimate - 1000
      assert.is_true(short[m] > 200, "the estimate is not what this spec assumes: " .. short[m])
    end
    -- as estimated: the second waits for what the two reserved past the bucket
    assert.is_true(gap.estimated >= short.estimated - 50 and gap.estimated <= short.estimated + 300,
      ("as estimated: the second request went after %.0f ms, not about %d"):format(gap.estimated, short.estimated))
    -- far below: the tokens the first did not use are given back, and the second goes at once
    assert.is_true(gap.below < short.below / 2, ("below: the second request waited %.0f ms"):format(gap.below))
    -- above: the second waits for the 300 tokens more too
    assert.is_true(gap.above >= short.above + 300 - 50 and gap.above <= short.above + 600,
      ("above: the second request went after %.0f ms, not about %d"):format(gap.above, short.above + 300))
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

  -- What the first provider meets, and what the fallback event must then
  -- say: the first's retries (attempts = 2) spent where it may retry, then
  -- the second provider asked.
  local moving = {
    { what = "a 429", code = "RateLimited", tries = 2,
      reply = { fault = "status", status = 429 } },
    -- (the last try's Retry-After is not waited: the next provider is there)
    { what = "a 429 with Retry-After", code = "RateLimited", tries = 2, waited_ms = 50,
      replies = { { fault = "status", status = 429, retry_after = 0.05 },
                  { fault = "status", status = 429, retry_after = 2 } } },
    { what = "a timeout", code = "Timeout", tries = 2, timeout_ms = 100,
      reply = { fault = "hang" } },
    { what = "a refused connection", code = "ConnectFailed" }, -- (a closed loopback port)
    -- (half a reply came, so it is not tried again: only a connection
    -- that failed before any byte of a reply is)
    { what = "a connection closed mid-reply", code = "ConnectionClosed", tries = 1,
      reply = { fault = "drop" } },
  }
  for _, case in ipairs(moving) do
    it("moves on to the next provider after " .. case.what, function()
      local down, url
      local at = {} -- (when each try reached the first server)
      if case.reply or case.replies then
        local replies = case.replies or { case.reply, case.reply }
        down = testing.mock_server { default = function()
          at[#at + 1] = core.hrtime()
          return replies[#at]
        end }
        url = down.url
      else
        local probe = assert(require("tide.testing.server").listen { handler = function() return { status = 200 } end })
        url = ("http://127.0.0.1:%d"):format(probe:port())
        probe:close()
      end
      local _ <close> = down
      local up <close> = testing.mock_server { default = function()
        at.up = core.hrtime()
        return "from the second"
      end }
      tide.agent { id = "fb_moves", prompt = "You answer." }
      local p = tide.provider.fallback {
        tide.provider.openai { base_url = url, api_key = "k", model = "first", stream = false,
          timeout_ms = case.timeout_ms, retry = { attempts = 2, base_ms = 1, max_ms = 1 } },
        tide.provider.openai { base_url = up.url, api_key = "k", model = "second", stream = false },
      }
      local events = {}
      local s = tide.session { agent = "fb_moves", provider = p }
      local reply, err = s:turn("hi", { on_event = function(ev)
        if ev.type == "fallback" then events[#events + 1] = ev end
      end })
      assert.is_nil(err)
      assert.are.equal("from the second", reply)
      assert.are.equal(1, #up:requests())
      assert.are.equal("second", up:requests()[1].json.model)
      assert.are.equal(1, s:stats().fallbacks)
      assert.are.equal(1, #events)
      assert.are.same({ "openai:first", "openai:second", case.code, "fb_moves" },
        { events[1].from, events[1].to, events[1].error, events[1].agent })
      if down then
        -- its retries were spent first, the server's wait obeyed between them
        assert.are.equal(case.tries, #down:requests())
        if case.waited_ms then
          local gap_ms, moved_ms = (at[2] - at[1]) / 1e6, (at.up - at[2]) / 1e6
          assert.is_true(gap_ms >= case.waited_ms - 5, "retried after " .. gap_ms .. " ms")
          assert.is_true(moved_ms < 1000, "moved on after " .. moved_ms .. " ms")
        end
      end
    end)
  end

  for _, status in ipairs { 401, 403, 422 } do
    it("does not move on for a " .. status .. ", nor try it again", function()
      local bad <close> = testing.mock_server { default = { fault = "status", status = status } }
      local good <close> = testing.mock_server { default = "ok" }
      local p = tide.provider.fallback {
        tide.provider.openai { base_url = bad.url, api_key = "k", model = "m", stream = false,
          retry = { attempts = 3, base_ms = 1, max_ms = 1 } },
        tide.provider.openai { base_url = good.url, api_key = "k", model = "m", stream = false },
      }
      tide.agent { id = "fb_stays", prompt = "You answer." }
      local events = 0
      local s = tide.session { agent = "fb_stays", provider = p }
      local reply, err = s:turn("hi", { on_event = function(ev)
        if ev.type == "fallback" then events = events + 1 end
      end })
      assert.is_nil(reply)
      assert.are.same({ "ProviderError", status }, { err.code, err.status })
      assert.are.equal(1, #bad:requests())
      assert.are.equal(0, #good:requests())
      assert.are.equal(0, s:stats().fallbacks)
      assert.are.equal(0, events)
    end)
  end

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
