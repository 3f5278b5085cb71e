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
    -- an exact id's own price wins (a regional endpoint's, say)
    tide.prices { ["eu.anthropic.claude-haiku-4-5-20251001-v1:0"] = { input = 1.1, output = 5.5 } }
    assert.are.equal(1.1, prices.of("eu.anthropic.claude-haiku-4-5-20251001-v1:0").input)
    assert.are.equal(1.0, prices.of("global.anthropic.claude-haiku-4-5-20251001-v1:0").input)
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
end)
