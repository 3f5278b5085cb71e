-- Cost: prices per model, stats().cost_usd per session and turn, per agent
-- in the budget summary, and budget = { usd = ... }.
local tide = require "tide"
local testing = require "tide.testing"
local prices = require "tide.prices"

describe("prices", function()
  it("prices a call by the model's name, dated snapshots included", function()
    -- 1,000 prompt tokens of which 400 cached, 200 out, on gpt-4o-mini
    local usd = prices.cost("gpt-4o-mini-2024-07-18", { input = 1000, cached = 400, output = 200 })
    assert.are.near((600 * 0.15 + 400 * 0.075 + 200 * 0.60) / 1e6, usd, 1e-12)
    -- Anthropic: cache writes priced apart
    usd = prices.cost("claude-sonnet-4-5-20250929", { input = 14028, cached = 0, cache_write = 14015, output = 10 })
    assert.are.near((13 * 3 + 14015 * 3.75 + 10 * 15) / 1e6, usd, 1e-12)
    assert.is_nil(prices.cost("my-local-model", { input = 1, output = 1 }))
  end)

  it("prices a Claude model by its id on Bedrock and Vertex AI, and the newest by their own", function()
    local sonnet = prices.of("claude-sonnet-4-5")
    for _, id in ipairs { "anthropic.claude-sonnet-4-5-20250929-v1:0", "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5@20250929",
        "anthropic.claude-sonnet-4-5-20250929-v1:0:200k" } do
      assert.are.equal(sonnet, prices.of(id), id)
    end
    -- Opus 4.5 costs a third of Opus 4's: not its price by the shorter name
    assert.are.equal(5.00, prices.of("claude-opus-4-5-20251101").input)
    assert.are.equal(5.00, prices.of("claude-opus-4-5@20251101").input)
    assert.are.equal(5.00, prices.of("eu.anthropic.claude-opus-4-5-20251101-v1:0").input)
    assert.are.equal(15.00, prices.of("anthropic.claude-opus-4-1-20250805-v1:0").input)
    assert.are.equal(0.25, prices.of("anthropic.claude-3-haiku-20240307-v1:0").input)
    -- Amazon Nova on Bedrock, by its id, its inference profile's and its ARN-less name
    for _, id in ipairs { "amazon.nova-pro-v1:0", "us.amazon.nova-pro-v1:0", "eu.amazon.nova-pro-v1:0" } do
      assert.are.equal(0.80, prices.of(id).input, id)
    end
    assert.are.equal(0.035, prices.of("apac.amazon.nova-micro-v1:0").input)
    assert.are.near((1000 * 0.06 + 100 * 0.24) / 1e6, prices.cost("us.amazon.nova-lite-v1:0",
      { input = 1000, output = 100 }), 1e-15)
    -- an exact id's own price wins (a regional endpoint's, say)
    tide.prices { ["eu.anthropic.claude-haiku-4-5-20251001-v1:0"] = { input = 1.1, output = 5.5 } }
    assert.are.equal(1.1, prices.of("eu.anthropic.claude-haiku-4-5-20251001-v1:0").input)
    assert.are.equal(1.0, prices.of("global.anthropic.claude-haiku-4-5-20251001-v1:0").input)
  end)

  it("prices a long prompt at the long-context prices, the whole call", function()
    -- Claude Sonnet past 200,000 prompt tokens: $6 in, $22.50 out, caching's multipliers on those
    local usd = prices.cost("claude-sonnet-4-5", { input = 250000, cached = 200000, cache_write = 40000,
      cache_write_1h = 10000, output = 1000 })
    assert.are.near((10000 * 6 + 200000 * 0.6 + 30000 * 7.5 + 10000 * 12 + 1000 * 22.5) / 1e6, usd, 1e-12)
    -- at the threshold, the base prices
    usd = prices.cost("claude-sonnet-4-5", { input = 200000, output = 1000 })
    assert.are.near((200000 * 3 + 1000 * 15) / 1e6, usd, 1e-12)
    -- Gemini 2.5 Pro's tier names its cached price
    usd = prices.cost("gemini-2.5-pro", { input = 300000, cached = 100000, output = 10 })
    assert.are.near((200000 * 2.5 + 100000 * 0.625 + 10 * 15) / 1e6, usd, 1e-12)
    -- a tier of one's own; web searches stay the base price's
    tide.prices { ["long-model"] = { input = 1, output = 2, web_search = 10,
      long_context = { above = 100, input = 4, output = 8, reasoning = 16 } } }
    usd = prices.cost("long-model", { input = 101, output = 10, reasoning = 5, web_searches = 2 })
    assert.are.near((101 * 4 + 5 * 8 + 5 * 16) / 1e6 + 2 * 10 / 1000, usd, 1e-12)
    -- the Responses API's file searches, per 1,000 calls, OpenAI's price shipped
    usd = prices.cost("gpt-5-mini", { input = 1000, output = 100, web_searches = 1, file_searches = 3 })
    assert.are.near((1000 * 0.25 + 100 * 2) / 1e6 + 10 / 1000 + 3 * 2.5 / 1000, usd, 1e-12)
    local ok, err = pcall(tide.prices, { m = { input = 1, output = 1,
      long_context = { above = 9, input = 2, output = 2, file_search = 1 } } })
    assert.is_false(ok) -- (priced per call: no tier of its own)
    assert.matches("unknown price 'file_search' for 'm.long_context'", tostring(err), 1, true)
    for bad, why in pairs {
      [{ input = 1, output = 1, long_context = { input = 2, output = 2 } }] = "'m.long_context' needs 'above'",
      [{ input = 1, output = 1, long_context = { above = 1.5, input = 2, output = 2 } }] =
        "'m.long_context.above' must be a positive integer",
      [{ input = 1, output = 1, long_context = { above = 9, input = 2 } }] = "'m.long_context' needs 'input' and 'output'",
      [{ input = 1, output = 1, long_context = { above = 9, input = 2, output = 2, long_context = {} } }] =
        "unknown price 'long_context' for 'm.long_context'",
      [{ input = 1, output = 1, long_context = 5 }] = "'m.long_context' must be a table of prices",
    } do
      local ok, err = pcall(tide.prices, { m = bad })
      assert.is_false(ok)
      assert.matches(why, tostring(err), 1, true)
    end
    tide.prices { ["long-model"] = false }
  end)

  it("prices a snapshot by its model, never another model by its prefix", function()
    assert.are.equal(2.50, prices.of("gpt-4o-2024-08-06").input)
    assert.are.equal(5.00, prices.of("gpt-4o-2024-05-13").input) -- (the first snapshot kept its launch price)
    for _, other in ipairs { "gpt-5-pro", "o3-pro-2025-06-10", "o3-deep-research", "o4-mini-deep-research" } do
      assert.is_nil(prices.of(other), other)
    end
    assert.are.equal(1.25, prices.of("gemini-2.5-pro-preview-06-05").input)
  end)

  it("takes overrides, and checks them", function()
    tide.prices { ["my-local-model"] = { input = 1, output = 2 } }
    assert.are.near(3e-6, prices.cost("my-local-model", { input = 1, output = 1 }), 1e-15)
    tide.prices { ["my-local-model"] = false }
    assert.is_nil(prices.of("my-local-model"))
    assert.has_error(function() tide.prices { m = { input = 1 } } end, "tide.prices: 'm' needs 'input' and 'output'")
    assert.has_error(function() tide.prices { m = { input = 1, output = 1, inptu = 2 } } end,
      "tide.prices: unknown price 'inptu' for 'm'")
  end)
end)

describe("service tiers", function()
  it("price a call at the prices of the tier that served it", function()
    -- OpenAI's Flex processing, shipped at half the standard prices
    local usage = { input = 1000, cached = 400, output = 200, service_tier = "flex" }
    assert.are.near((600 * 0.625 + 400 * 0.0625 + 200 * 5) / 1e6, prices.cost("gpt-5-2025-08-07", usage), 1e-15)
    assert.are.near((600 * 1.00 + 400 * 0.25 + 200 * 4) / 1e6, prices.cost("o3", usage), 1e-15)
    -- the default tier, and a tier without prices of its own: the base prices
    for _, tier in ipairs { "default", "priority", "scale" } do
      usage.service_tier = tier
      assert.are.near((600 * 1.25 + 400 * 0.125 + 200 * 10) / 1e6, prices.cost("gpt-5", usage), 1e-15, tier)
    end
    -- a tier of one's own: its missing cache prices scaled, its prices over a long prompt's
    tide.prices { ["tiered"] = { input = 1, cached = 0.1, output = 2, web_search = 10,
      long_context = { above = 100, input = 3, output = 6 },
      service_tiers = { priority = { input = 2, output = 4 } } } }
    usage = { input = 1000, cached = 500, output = 100, web_searches = 1, service_tier = "priority" }
    assert.are.near((500 * 2 + 500 * 0.2 + 100 * 4) / 1e6 + 10 / 1000, prices.cost("tiered", usage), 1e-15)
    usage.service_tier = "standard"
    assert.are.near((500 * 3 + 500 * 0.3 + 100 * 6) / 1e6 + 10 / 1000, prices.cost("tiered", usage), 1e-15)
    tide.prices { ["tiered"] = false }
  end)

  it("are checked where they are given", function()
    local function refused(p, want)
      local ok, err = pcall(tide.prices, { m = p })
      assert.is_false(ok)
      assert.matches(want, tostring(err), 1, true)
    end
    refused({ input = 1, output = 1, service_tiers = "flex" }, "'m.service_tiers' must be a table of tier names")
    refused({ input = 1, output = 1, service_tiers = { { input = 1, output = 1 } } },
      "'m.service_tiers' must be keyed by tier names")
    refused({ input = 1, output = 1, service_tiers = { flex = { input = 1 } } },
      "'m.service_tiers.flex' needs 'input' and 'output'")
    refused({ input = 1, output = 1, service_tiers = { flex = { input = 1, output = 1, file_search = 1 } } },
      "unknown price 'file_search' for 'm.service_tiers.flex'")
    refused({ input = 1, output = 1, service_tiers = { flex = { input = 1, output = 1, above = 5 } } },
      "unknown price 'above' for 'm.service_tiers.flex'")
    refused({ input = 1, output = 1, service_tiers = { flex = { input = 1, output = 1, service_tiers = {} } } },
      "unknown price 'service_tiers' for 'm.service_tiers.flex'")
  end)

  for _, stream in ipairs { false, true } do
    it(("bill a session by the tier each reply names (%s)"):format(stream and "streamed" or "not streamed"),
      function()
        tide.agent { id = "tiered_payer", prompt = "You pay." }
        local srv = testing.mock_server { replies = { "cheap", { text = "served at default", service_tier = "default" },
                                                      "cheap again" } }
        finally(function() srv:close() end)
        local function session(o)
          local base = { base_url = srv.url .. "/v1", api_key = "k", model = "gpt-5", stream = stream,
                         extra_body = { service_tier = "flex" } }
          for k, v in pairs(o or {}) do base[k] = v or nil end
          local kind = base.kind or "openai"
          base.kind = nil
          return tide.session { agent = "tiered_payer", provider = tide.provider[kind](base) }
        end
        local function cost_of(s, model)
          local t = s:stats().tokens
          return prices.cost(model, { input = t.input, cached = t.cached, output = t.output })
        end
        -- what the session's last turn would cost at `model`'s base prices
        local function last_turn_at_base(s, model, before)
          local t = s:stats().tokens
          return prices.cost(model, { input = t.input - before.input, output = t.output - before.output,
            cached = t.cached - before.cached })
        end
        local function copy(t) return { input = t.input, output = t.output, cached = t.cached } end
        -- chat completions: asked for flex, billed at flex; the reply's word wins
        local s = session()
        assert.are.equal("cheap", s:turn("a"))
        assert.are.near(cost_of(s, "gpt-5") / 2, s:stats().cost_usd, 1e-15)
        local before = copy(s:stats().tokens)
        assert.are.equal("served at default", s:turn("b"))
        assert.are.near(last_turn_at_base(s, "gpt-5", before), s:stats().turn_cost_usd, 1e-15)
        -- the Responses API alike
        s = session { api = "responses" }
        assert.are.equal("cheap again", s:turn("c"))
        assert.are.near(cost_of(s, "gpt-5") / 2, s:stats().cost_usd, 1e-15)
        -- a tier priced by the user: Anthropic's priority capacity, then the standard tier
        tide.prices { ["claude-tiered"] = { input = 3, output = 15, service_tiers = { priority = { input = 6, output = 30 } } } }
        finally(function() tide.prices { ["claude-tiered"] = false } end)
        local claude = testing.mock_server { replies = { { text = "priority", service_tier = "priority" }, "standard" } }
        finally(function() claude:close() end)
        s = session { kind = "anthropic", base_url = claude.url, model = "claude-tiered", extra_body = false }
        assert.are.equal("priority", s:turn("d"))
        assert.are.near(cost_of(s, "claude-tiered") * 2, s:stats().cost_usd, 1e-15)
        before = copy(s:stats().tokens)
        assert.are.equal("standard", s:turn("e"))
        assert.are.near(last_turn_at_base(s, "claude-tiered", before), s:stats().turn_cost_usd, 1e-15)
      end)
  end
end)

describe("cost in a session", function()
  local srv
  before_each(function()
    srv = testing.mock_server { default = testing.tool_loop(2, "lookup") }
    tide.agent { id = "payer", prompt = "You pay.", tools = { tide.tool { name = "lookup", description = "d",
      handler = function() return "found" end } } }
  end)
  after_each(function() srv:close() end)

  it("adds up per turn and per session", function()
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "gpt-4o", stream = false }
    local s = tide.session { agent = "payer", provider = p }
    assert(s:turn("go"))
    local st = s:stats()
    local want = prices.cost("gpt-4o", { input = st.tokens.input, output = st.tokens.output, cached = st.tokens.cached })
    assert.is_true(st.cost_usd > 0)
    assert.are.near(want, st.cost_usd, 1e-12)
    assert.are.near(st.cost_usd, st.turn_cost_usd, 1e-12)
    assert(s:turn("again"))
    local st2 = s:stats()
    assert.is_true(st2.cost_usd > st.cost_usd)
    assert.are.near(st2.cost_usd - st.cost_usd, st2.turn_cost_usd, 1e-12)
  end)

  it("stops the tree when a dollar budget is spent", function()
    tide.prices { ["pricey"] = { input = 1e6, output = 1e6 } } -- a dollar a token
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "pricey", stream = false }
    local s = tide.session { agent = "payer", provider = p, budget = { usd = 5 } }
    local reply, err = s:turn("go")
    assert.is_nil(reply)
    assert.are.equal("BudgetExhausted", err.code)
    assert.are.equal("usd", err.what)
    assert.matches("%$%d", err.summary)
    assert.has_error(function()
      tide.session { agent = "payer", provider = tide.provider.openai { base_url = srv.url, api_key = "k",
        model = "unpriced-model" }, budget = { usd = 1 } }
    end, "tide.session: 'budget.usd' needs a price for model 'unpriced-model' (tide.prices{...})")
    tide.prices { ["pricey"] = false }
  end)

  it("stops a dollar budget's turn at a call it cannot price (a fallback's model)", function()
    tide.prices { ["cheap"] = { input = 0.01, output = 0.01 } }
    local dead = testing.mock_server { default = { fault = "status", status = 500 } }
    local p = tide.provider.fallback { tide.provider.openai { base_url = dead.url, api_key = "k", model = "cheap",
      stream = false, retry = { attempts = 1 } },
      tide.provider.openai { base_url = srv.url, api_key = "k", model = "unpriced-local", stream = false } }
    local s = tide.session { agent = "payer", provider = p, budget = { usd = 100 } }
    local reply, err = s:turn("go")
    assert.is_nil(reply)
    assert.are.equal("BudgetExhausted", err.code)
    assert.are.equal("usd", err.what)
    -- and the calls it answered with are answered: the history stays a valid conversation
    local h = s:history()
    local last = h[#h]
    assert.is_true(last.role ~= "assistant" or not last.tool_calls)
    dead:close()
    tide.prices { ["cheap"] = false }
  end)

  it("answers every call of a round a tool_calls budget stops", function()
    srv.default = function(req)
      local last = req.json.messages[#req.json.messages]
      if last.role == "tool" then return "done" end
      return { tool_calls = { { id = "c1", name = "lookup", arguments = {} }, { id = "c2", name = "lookup", arguments = {} } } }
    end
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "gpt-4o", stream = false }
    local s = tide.session { agent = "payer", provider = p, budget = { tool_calls = 1 } }
    local reply, err = s:turn("go")
    assert.is_nil(reply)
    assert.are.equal("BudgetExhausted", err.code)
    local h = s:history()
    assert.are.equal("tool", h[#h].role)
    assert.are.equal(2, #h[#h].results)
  end)
end)
