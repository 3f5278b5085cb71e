-- tide.session and s:turn: misuse raises naming the argument; a file that
-- cannot be read returns nil, err; the sub-agent tree has a ceiling.
local tide = require "tide"
local testing = require "tide.testing"
local helpers = require "helpers"

describe("tide.session options", function()
  local srv, provider
  before_each(function()
    srv = testing.mock_server {}
    provider = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    tide.agent { id = "plain", prompt = "You answer." }
  end)
  after_each(function() srv:close() end)

  it("names an unknown option instead of ignoring it", function()
    assert.has_error(function()
      tide.session { agent = "plain", provider = provider, transcipt = "x.jsonl" }
    end, "tide.session: unknown option 'transcipt'")
  end)

  it("checks the budget's kinds and limits", function()
    assert.has_error(function()
      tide.session { agent = "plain", provider = provider, budget = { tokens = -1 } }
    end, "tide.session: 'budget.tokens' must be a positive integer")
    assert.has_error(function()
      tide.session { agent = "plain", provider = provider, budget = { dollars = 1 } }
    end, "tide.session: unknown budget kind 'dollars'")
    assert.has_error(function()
      tide.session { agent = "plain", provider = provider, budget = 5 }
    end, "tide.session: 'budget' must be a table")
    assert.has_error(function()
      tide.session { agent = "plain", provider = provider, max_subagents = 0 }
    end, "tide.session: 'max_subagents' must be a positive integer")
  end)

  it("names an unknown turn option and a callback that is not a function", function()
    local s = tide.session { agent = "plain", provider = provider }
    assert.has_error(function() s:turn("x", { on_dleta = print }) end,
      "bad argument #2 to 'turn' (unknown option 'on_dleta')")
    assert.has_error(function() s:turn("x", { on_event = "yes" }) end,
      "bad argument #2 to 'turn' (field 'on_event' must be a function)")
  end)

  it("returns nil, TranscriptError for a missing resume transcript or one it cannot create", function()
    local s, err = tide.session { agent = "plain", provider = provider, resume = "/nonexistent/run.jsonl" }
    assert.is_nil(s)
    assert.are.equal("TranscriptError", err.code)
    s, err = tide.session { agent = "plain", provider = provider, transcript = "/nonexistent/dir/run.jsonl" }
    assert.is_nil(s)
    assert.are.equal("TranscriptError", err.code)
  end)
end)

describe("the sub-agent tree's ceiling", function()
  it("refuses delegations past max_subagents with a tool error the model reads, and the turn goes on", function()
    -- The model delegates 5 times in one response; the ceiling is 3.
    local calls = {}
    for i = 1, 5 do
      calls[i] = { id = "c" .. i, name = "delegate_helper", arguments = '{"task":"t' .. i .. '"}' }
    end
    local n = 0
    local srv = testing.mock_server { default = function(req)
      local body = req.json
      n = n + 1
      local last = body.messages[#body.messages]
      if body.messages[1].content:find("You help.", 1, true) then
        return { text = "helped" } -- a sub-agent's turn
      end
      if last.role ~= "tool" then return { tool_calls = calls } end
      return { text = "done" }
    end }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    tide.agent { id = "helper", prompt = "You help.", when_to_use = "helps" }
    tide.agent { id = "boss", prompt = "You delegate.", subagents = { "helper" } }
    local s = tide.session { agent = "boss", provider = p, max_subagents = 3 }
    assert.are.equal("done", (s:turn("go")))
    local results = s:history()[3].results
    local refused = 0
    for _, r in ipairs(results) do
      if r.is_error and r.content:find("SubagentLimit", 1, true) then refused = refused + 1 end
    end
    assert.are.equal(2, refused)
    assert.are.equal(1 + 3 + 1, n) -- the root twice, three sub-agents
    srv:close()
  end)
end)
