-- Hardening: public functions reject unknown option keys, naming them, and
-- wrongly typed options, naming the option (issue 20).
local tide = require "tide"
local helpers = require "helpers"

-- The message fn(...) raises (fails when it does not raise).
local function raised(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

local function handler() return "ok" end

describe("strict options", function()
  it("tide.tool", function()
    local spec = { name = "t", description = "d", handlr = handler }
    assert.matches("tide.tool: unknown option 'handlr'", raised(tide.tool, spec), 1, true)
    assert.matches("tide.tool: 'handler' must be a function, got string",
      raised(tide.tool, { name = "t", description = "d", handler = "x" }), 1, true)
    assert.matches("'description' must be a string, got nil", raised(tide.tool, { name = "t", handler = handler }), 1, true)
    assert.matches("'parameters' must be a JSON-schema table, got string",
      raised(tide.tool, { name = "t", description = "d", handler = handler, parameters = "x" }), 1, true)
    assert.matches("'timeout_ms' must be a positive integer, got 1.5",
      raised(tide.tool, { name = "t", description = "d", handler = handler, timeout_ms = 1.5 }), 1, true)
    -- the caller's line, not tide's
    assert.matches("hardening_options_spec.lua:%d+: tide.tool", raised(function() tide.tool(spec) end))
    assert.is_true(require("tide.tool").is(tide.tool { name = "t", description = "d", handler = handler,
      parameters = { type = "object", properties = {} }, timeout_ms = 5 }))
  end)

  it("tide.agent", function()
    local agents = require "tide.agents"
    assert.matches("tide.agent: unknown field 'toolz'",
      raised(tide.agent, { id = "strict_a", prompt = "p", toolz = {} }), 1, true)
    assert.matches("hardening_options_spec.lua:%d+: tide.agent: unknown field",
      raised(function() tide.agent { id = "strict_a", prompt = "p", when = "x" } end))
    assert.matches("'datetime' must be a boolean, got string",
      raised(tide.agent, { id = "strict_a", prompt = "p", datetime = "yes" }), 1, true)
    assert.matches("'text_tools' must be a boolean",
      raised(tide.agent, { id = "strict_a", prompt = "p", text_tools = 1 }), 1, true)
    assert.matches("'temperature' must be a number",
      raised(tide.agent, { id = "strict_a", prompt = "p", temperature = "hot" }), 1, true)
    assert.matches("'subagents' item 1",
      raised(tide.agent, { id = "strict_a", prompt = "p", subagents = { { toolkits = "*", id = "x" } } }), 1, true)
    assert.matches("'subagents' item 1",
      raised(tide.agent, { id = "strict_a", prompt = "p", subagents = { { toolkit = "*" } } }), 1, true)
    assert.matches("'subagents' item 2",
      raised(tide.agent, { id = "strict_a", prompt = "p", subagents = { "x", { toolkits = "some" } } }), 1, true)
    assert.is_nil(agents.get("strict_a"))
    -- every documented field is accepted
    local def = tide.agent {
      id = "strict_a", prompt = "p", tools = {}, disallowed_tools = { "x" }, extra_tools = {},
      subagents = { "b", { id = "c" }, { toolkits = "*" } }, max_iterations = 3, max_spawn_depth = 1,
      when_to_use = "w", display_name = "d", delegate_name = "ask_a", datetime = false,
      text_tools = true, temperature = 0.2,
    }
    assert.are.equal(def, agents.get("strict_a"))
    agents.remove("strict_a")
  end)
end)
