-- Hardening: public functions reject unknown option keys, naming them, and
-- wrongly typed options, naming the option (issue 20).
local tide = require "tide"
local helpers = require "helpers"

-- The message fn(...) raises (fails when it does not raise).
local raised = require("helpers").raised

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

  it("tide.agents.watch and tide.prompts.watch", function()
    local dir = helpers.tmpdir()
    finally(function() helpers.rmdir(dir) end)
    for name, watch in pairs { ["tide.agents.watch"] = tide.agents.watch, ["tide.prompts.watch"] = tide.prompts.watch } do
      assert.matches(name .. ": unknown option 'on_eror'", raised(watch, dir, { on_eror = print }), 1, true)
      assert.matches(name .. ": 'on_error' must be a function, got string",
        raised(watch, dir, { on_error = "print" }), 1, true)
      assert.matches(name .. ": 'on_change' must be a function, got boolean",
        raised(watch, dir, { on_change = true }), 1, true)
      assert.matches(name .. ": 'debounce_ms' must be a non-negative integer, got -1",
        raised(watch, dir, { debounce_ms = -1 }), 1, true)
      assert.matches("hardening_options_spec.lua:%d+: " .. name, raised(function() watch(dir, { x = 1 }) end))
      assert.matches("bad argument #2 to 'watch' (table expected, got string)", raised(watch, dir, "x"), 1, true)
    end
    assert.is_false(tide.prompts.dirs()[1] == require("tide.core").realpath(dir))
    local h = assert(tide.agents.watch(dir, { on_error = print, on_change = print, debounce_ms = 5 }))
    h:close()
    h = assert(tide.prompts.watch(dir, { on_error = print, on_change = print, debounce_ms = 5 }))
    h:close()
    tide.prompts.remove_dir(dir)
    helpers.assert_quiet()
  end)

  it("tide.config", function()
    assert.matches("tide.config: 'max_iterations' must be a positive integer, got string",
      raised(tide.config, { max_iterations = "4" }), 1, true)
    assert.matches("'tool_timeout_ms' must be a positive integer, got 0",
      raised(tide.config, { tool_timeout_ms = 0 }), 1, true)
    assert.matches("'result_cap_bytes' must be a positive integer, got 1.5",
      raised(tide.config, { result_cap_bytes = 1.5 }), 1, true)
    assert.matches("bad argument #1 to 'config' (a .lua or .json file expected, got 'app.yaml')",
      raised(tide.config, "app.yaml"), 1, true)
    -- the program's own keys are free-form
    assert.are.equal("m", assert(tide.config { provider = { model = "m" }, max_iterations = 4 }):get("provider.model"))
    local dir = helpers.tmpdir()
    finally(function() helpers.rmdir(dir) end)
    helpers.write(dir .. "/c.json", '{ "max_iterations": "many" }')
    local cfg, err = tide.config(dir .. "/c.json")
    assert.is_nil(cfg)
    assert.are.equal("ConfigError", err.code)
    assert.are.equal(dir .. "/c.json", err.file)
    assert.matches("'max_iterations' must be a positive integer, got string", err.message, 1, true)
  end)

  it("tide.integrations.static", function()
    local static = tide.integrations.static
    assert.matches("bad argument #1 to 'static' (unknown option 'toolkit')", raised(static, { toolkit = {} }), 1, true)
    assert.matches("field 'fail' must be a boolean, string or error table, got number",
      raised(static, { fail = 1 }), 1, true)
    assert.matches("hardening_options_spec.lua:%d+: bad argument", raised(function() static { delay = 1 } end))
    static { toolkits = {}, id = "strict", delay_ms = 0, fail = false }
  end)

  it("tide.integrations.composio", function()
    local composio = tide.integrations.composio
    local base = { api_key = "k", user_id = "u", base_url = "http://127.0.0.1:1" }
    local function with(k, v)
      local o = {}
      for key, x in pairs(base) do o[key] = x end
      o[k] = v
      return o
    end
    assert.matches("bad argument #1 to 'composio' (unknown option 'userid')",
      raised(composio, with("userid", "u")), 1, true)
    assert.matches("field 'timeout_ms' must be a positive integer", raised(composio, with("timeout_ms", "5")), 1, true)
    assert.matches("field 'timeout_ms' must be a positive integer", raised(composio, with("timeout_ms", 0)), 1, true)
    assert.matches("field 'important' must be a boolean", raised(composio, with("important", 1)), 1, true)
    composio(with("timeout_ms", 100))
  end)

  it("tide.http.request", function()
    local request = tide.http.request
    local url = "http://127.0.0.1:1/"
    assert.matches("bad argument #1 to 'request' (unknown option 'timeout')",
      raised(request, { url = url, timeout = 5 }), 1, true)
    assert.matches("field 'timeout_ms' must be a non-negative number up to 2^53, got -1",
      raised(request, { url = url, timeout_ms = -1 }), 1, true)
    assert.matches("field 'max_body_bytes' must be a non%-negative number up to 2%^53, got %-?nan",
      raised(request, { url = url, max_body_bytes = 0 / 0 }))
    assert.matches("field 'headers' must map names to strings",
      raised(request, { url = url, headers = { accept = true } }), 1, true)
    assert.matches("field 'headers' must map names to strings",
      raised(request, { url = url, headers = { "x" } }), 1, true)
    assert.matches("hardening_options_spec.lua:%d+: bad argument", raised(function() request { url = url, x = 1 } end))
  end)

  it("tide.testing.mock_server", function()
    local mock = tide.testing.mock_server
    assert.matches("bad argument #1 to 'mock_server' (unknown option 'reply')", raised(mock, { reply = "x" }), 1, true)
    assert.matches("field 'delay_ms' must be a non-negative integer", raised(mock, { delay_ms = "5" }), 1, true)
    assert.matches("field 'chunk_delay_ms' must be a non-negative integer", raised(mock, { chunk_delay_ms = -1 }), 1, true)
    assert.matches("field 'port' must be an integer from 0 to 65535", raised(mock, { port = 70000 }), 1, true)
    assert.matches("field 'ref' must be a boolean", raised(mock, { ref = 1 }), 1, true)
    assert.matches("field 'routes' must be a table", raised(mock, { routes = print }), 1, true)
    assert.matches("field 'default' must be a string, table or function, got number",
      raised(mock, { default = 42 }), 1, true)
    local srv = assert(mock { replies = { "a" }, default = "b", delay_ms = 0, chunk_delay_ms = 0, routes = {},
      port = 0, ref = false, record = false })
    srv:close()
    helpers.assert_quiet()
  end)

  it("raises misuse at the caller's line, whatever the entry point's own calls", function()
    -- (each call kept out of tail position: a tail call has no line to name)
    tide.agent { id = "strict_lines", prompt = "p" }
    local P = tide.provider.openai { api_key = "k", base_url = "http://127.0.0.1:1" }
    local s = tide.session { agent = "strict_lines", provider = P }
    for name, call in pairs {
      mcp_unknown = function() local x = tide.integrations.mcp { name = "m", command = { "x" }, bogus = 1 }; return x end,
      mcp_neither = function() local x = tide.integrations.mcp { name = "m" }; return x end,
      tracing = function() local x = tide.tracing { endpoint = 5 }; return x end,
      tracing_unknown = function() local x = tide.tracing { bogus = 1 }; return x end,
      approve = function() local x = s:approve(5); return x end,
      reject_note = function() local x = s:reject("id", 5); return x end,
      image = function() local x = tide.image { bogus = "a" }; return x end,
      file = function() local x = tide.file { path = 5 }; return x end,
      turn = function() local x = s:turn("x", { bogus = 1 }); return x end,
      session = function() local x = tide.session { agent = "strict_lines", bogus = 1 }; return x end,
    } do
      local msg = raised(call)
      assert.matches("^[^:]*hardening_options_spec%.lua:%d+: ", msg, nil, name .. ": " .. msg)
    end
  end)
end)
