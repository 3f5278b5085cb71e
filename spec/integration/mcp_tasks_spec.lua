-- Tool calls made as tasks (MCP 2025-11-25, experimental), for the tools a
-- server says must be: against the real server-everything (its research
-- tool, which asks the user for a clarification while its task waits) and
-- a scripted server for the rest (status events, failed tasks, a task that
-- never ends, an answer that is no task).
local tide = require "tide"
local helpers = require "helpers"
local cache = require "tide.integrations.cache"

local SCRIPT = "spec/support/mcp_server.lua"
local EVERYTHING = helpers.npm "@modelcontextprotocol/server-everything/dist/index.js"

local function scripted(extra)
  local opts = { name = "scripted", command = { "lua5.4", SCRIPT, "tasks" }, timeout_ms = 5000,
    env = { LUA_PATH = package.path, LUA_CPATH = package.cpath } }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return tide.integrations.mcp(opts)
end

describe("MCP tools called as tasks", function()
  before_each(function() cache.invalidate_all() end)

  it("calls a tool that requires it as a task, polls it, and gives its result", function()
    local src = scripted()
    -- (called before anyone listed the tools: tide lists them to know)
    assert.are.equal("job done after 2 polls", src:execute("job", '{"plan":"ok"}'))
    assert.are.equal("job done after 2 polls", src:execute("job", { plan = "ok" }))
    -- the other tools are called as before
    assert.are.equal("hi", src:execute("echo", { text = "hi" }))
    src:close()
  end)

  it("tells the turn's listeners each status the task goes through", function()
    helpers.run(function()
      local src = scripted()
      local srv <close> = assert(tide.testing.mock_server { default = function(req)
        local msgs = req.json.messages
        if msgs[#msgs].role == "tool" then return "reported: " .. msgs[#msgs].content end
        return { tool_calls = { { id = "call_job", name = "job", arguments = { plan = "ok" } } } }
      end })
      tide.agent { id = "task_watcher", prompt = "You run jobs.", tools = { { toolkit = "scripted", only = { "job" } } } }
      local s = tide.session { agent = "task_watcher", integrations = src,
        provider = tide.provider.openai { base_url = srv.url .. "/v1", api_key = "k", model = "m", stream = false } }
      local seen = {}
      assert.are.equal("reported: job done after 2 polls", s:turn("go", { on_event = function(e)
        if e.type == "tool_status" then seen[#seen + 1] = { e.status, e.message, e.task, e.id, e.tool, e.source } end
      end }))
      assert.are.same({
        { "working", "step 1", "task-1", "call_job", "job", "scripted" },
        { "working", "step 2", "task-1", "call_job", "job", "scripted" },
        { "completed", nil, "task-1", "call_job", "job", "scripted" },
      }, seen)
      s:close()
      src:close()
    end)
  end)

  it("polls as slowly as the server asks, whatever a request's own timeout", function()
    -- (polls 400 ms apart from a source whose requests time out at 150 ms:
    -- the task lives as long as the server answers its polls)
    local src = scripted { timeout_ms = 150 }
    assert.are.equal("job done after 2 polls", src:execute("job", { plan = "ok", poll_ms = 400 }))
    src:close()
  end)

  it("fails a task that failed, or whose result is an error, or that is no task", function()
    local src = scripted()
    local r, err = src:execute("job", { plan = "fail" })
    assert.is_nil(r)
    assert.are.equal("ToolError", err.code)
    assert.are.equal("the job broke", err.message)
    r, err = src:execute("job", { plan = "error" })
    assert.is_nil(r)
    assert.matches("MCP tool scripted/job failed: the job exploded", err.message, 1, true)
    r, err = src:execute("job", { plan = "malformed" })
    assert.is_nil(r)
    assert.matches("answered a task-augmented call of job without a task", err.message, 1, true)
    src:close()
  end)

  it("cancels a task that runs past max_total_timeout_ms, or whose call is cancelled", function()
    helpers.run(function()
      local src = scripted { max_total_timeout_ms = 400 }
      local r, err = src:execute("job", { plan = "forever" })
      assert.is_nil(r)
      assert.matches("task task-1 of job ran past max_total_timeout_ms (400)", err.message, 1, true)
      helpers.wait_until(function() return src:execute("seen", {}):find("tasks/cancel(task-1)", 1, true) end,
        "the task to be cancelled", 3000)
      -- the caller's task cancelled: the server's task is too
      local t = tide.spawn(function() return src:execute("job", { plan = "forever" }) end)
      tide.sleep(250)
      t:cancel()
      local _, cerr = t:join()
      assert.are.equal("Cancelled", cerr.code)
      helpers.wait_until(function() return src:execute("seen", {}):find("tasks/cancel(task-2)", 1, true) end,
        "the task to be cancelled", 3000)
      src:close()
    end)
  end)

  it("serves the research tool of server-everything, whose task asks the user while it waits", function()
    local asked = {}
    local src = tide.integrations.mcp { name = "everything", command = { "node", EVERYTHING, "stdio" },
      timeout_ms = 20000, elicit = function(request)
        asked[#asked + 1] = request.message
        return "accept", { interpretation = "historical" }
      end }
    local report = assert(src:execute("simulate-research-query", { topic = "tides", ambiguous = true }))
    assert.matches("# Research Report: tides (historical)", report, 1, true)
    assert.matches("`working` → `input_required` → `working` → `completed`", report, 1, true)
    assert.are.same({ 'The research query "tides" could have multiple interpretations. Please clarify what you\'re '
      .. "looking for:" }, asked)
    src:close()
  end)
end)
