-- Names and counts providers accept: integration actions with names outside
-- [A-Za-z0-9_-]{1,64} are mapped to legal unique names and run as
-- themselves; no request carries more than 128 tools.
local tide = require "tide"
local testing = require "tide.testing"
local cache = require "tide.integrations.cache"

describe("tool names and counts", function()
  it("maps illegal action names and offers a big toolkit through find_actions and run_action", function()
    local ran = {}
    local actions = {}
    local long = "GITHUB_" .. ("VERY_LONG_"):rep(6) .. "ACTION.NAME" -- 78 characters, with a dot
    actions[1] = { name = long, description = "The long one.", handler = function() ran[#ran + 1] = long; return "long ran" end }
    for i = 2, 300 do
      local name = ("GITHUB_ACTION_%03d"):format(i)
      actions[i] = { name = name, description = "Does thing " .. i .. (i == 250 and " rename repository" or ""),
        handler = function(args) ran[#ran + 1] = name; return "ran " .. name .. " " .. tostring(args.x) end }
    end
    local src = tide.integrations.static { toolkits = { { slug = "github", description = "GitHub", connected = true,
      tools = actions } } }
    cache.get(src)
    tide.agent { id = "orch_limits", prompt = "You delegate.", subagents = { { toolkits = "*" } } }
    local step = 0
    local srv = testing.mock_server { default = function(req)
      local msgs = req.json.messages
      if msgs[1].content:find("You delegate", 1, true) then
        if msgs[#msgs].role == "tool" then return "done: " .. msgs[#msgs].content end
        return { tool_calls = { { id = "d1", name = "delegate_github", arguments = { task = "rename" } } } }
      end
      -- the integrations agent
      assert(#req.json.tools <= 128, "too many tools: " .. #req.json.tools)
      for _, t in ipairs(req.json.tools) do
        assert(t["function"].name:match("^[%w_%-]+$") and #t["function"].name <= 64, t["function"].name)
      end
      step = step + 1
      if step == 1 then
        local mapped
        for _, t in ipairs(req.json.tools) do
          if t["function"].description == "The long one." then mapped = t["function"].name end
        end
        return { tool_calls = { { id = "a1", name = mapped, arguments = {} },
                                { id = "a2", name = "find_actions", arguments = { query = "rename" } } } }
      elseif step == 2 then
        return { tool_calls = { { id = "a3", name = "run_action",
          arguments = { action = "GITHUB_ACTION_250", arguments = { x = 7 } } } } }
      end
      return "renamed"
    end }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local s = tide.session { agent = "orch_limits", provider = p, integrations = src }
    assert.are.equal("done: renamed", s:turn("rename the repo"))
    assert.are.same({ long, "GITHUB_ACTION_250" }, ran)
    srv:close()
  end)

  it("offers a big toolkit's actions directly through find_actions too, and its prompt says so", function()
    local actions = {}
    for i = 1, 300 do
      actions[i] = { name = ("BIG_ACTION_%03d"):format(i), description = "Does " .. i, handler = function() return "ok" end }
    end
    local src = tide.integrations.static { toolkits = { { slug = "big", description = "Big", connected = true,
      tools = actions } } }
    cache.get(src)
    tide.agent { id = "direct_big", prompt = "You act.", tools = { { toolkit = "big" } } }
    local s = tide.session { agent = "direct_big", provider = tide.provider.openai { base_url = "http://127.0.0.1:9",
      api_key = "k", model = "m" }, integrations = src }
    local names = s:tools()
    assert.is_true(#names <= 128)
    local has = {}
    for _, n in ipairs(names) do has[n] = true end
    assert.is_true(has.find_actions and has.run_action and has.BIG_ACTION_001)
    assert.is_nil(has.BIG_ACTION_300)
    -- the integrations agent's prompt lists the offered ones and says how to reach the rest
    local surface = require "tide.surface"
    local listed, more = surface.offered_actions(actions)
    assert.are.equal(100, #listed)
    assert.are.equal(200, more)
    local d = require("tide.prompts").data { toolkits = { { slug = "big", description = "Big", connected = true,
      tools = actions } } }
    d.toolkit = d.toolkits[1]
    local text = assert(require("tide.prompts").render("integrations_agent", d))
    assert.is_truthy(text:find("- and 200 more actions: search them with `find_actions`", 1, true))
    assert.is_nil(text:find("BIG_ACTION_101", 1, true))
  end)

  it("names a toolkit's delegate legally however long its slug, and two that sanitize alike apart", function()
    local long = ("long_toolkit_"):rep(6)
    local src = tide.integrations.static { toolkits = {
      { slug = long, description = "L", connected = true, tools = {} },
      { slug = "a-b", description = "x", connected = true, tools = {} },
      { slug = "a_b", description = "y", connected = true, tools = {} } } }
    cache.get(src)
    tide.agent { id = "orch_names", prompt = "You delegate.", subagents = { { toolkits = "*" } } }
    local s = tide.session { agent = "orch_names", provider = tide.provider.openai { base_url = "http://127.0.0.1:9",
      api_key = "k", model = "m" }, integrations = src }
    local names = s:tools()
    assert.are.equal(3, #names)
    for _, n in ipairs(names) do assert.is_true(#n <= 64 and n:match("^[%w_%-]+$") ~= nil, n) end
  end)

  it("never offers more than 128 tools to one request, however many toolkits are connected", function()
    local toolkits = {}
    for i = 1, 150 do
      toolkits[i] = { slug = ("kit%03d"):format(i), description = "k", connected = true, tools = {} }
    end
    local src = tide.integrations.static { toolkits = toolkits }
    cache.get(src)
    tide.agent { id = "orch_many", prompt = "You delegate.", subagents = { { toolkits = "*" } } }
    local p = tide.provider.openai { base_url = "http://127.0.0.1:9", api_key = "k", model = "m" }
    local s = tide.session { agent = "orch_many", provider = p, integrations = src }
    assert.are.equal(128, #s:tools())
  end)
end)
