--- tide.integrations.mcp_tasks: a tool call made as a task (MCP 2025-11-25,
--- "Tasks", experimental), for the tools a server says must be called so
--- (`execution.taskSupport = "required"`, on a server whose capabilities
--- include `tasks.requests.tools.call`; without it a server answers such a
--- call "Method not found"). Tools that take a task as an option are
--- called as usual: the answer is the same, sooner.
---
--- The client's side of the specification:
---   * `tools/call` with `task` in its params: the server answers at once
---     with the task (`CreateTaskResult`);
---   * `tasks/get` every `pollInterval` (the server's suggestion, held
---     between 100 ms and 5 s) until the task ends or needs input; each
---     status or status message that changes goes to the turn's listeners
---     as a `tool_status` event;
---   * `tasks/result` once it has ended, or as soon as it needs input: the
---     server then makes its requests (an elicitation, tagged with the
---     task) while that answer is pending, and tide serves them as any
---     other; the answer is what the call would have given;
---   * a call given up (cancelled, timed out) cancels the task
---     (`tasks/cancel`, when the server declares it), from a task of its
---     own, for the caller may be gone.
--- The task's life is bounded by the call's: the tool's timeout in the
--- session, and `max_total_timeout_ms` when the source has one. A server
--- that answers its polls is working: only those bounds end the wait.
local core = require "tide.core"

local M = {}

local TERMINAL = { completed = true, failed = true, cancelled = true }
local STATUS = { working = true, input_required = true, completed = true, failed = true, cancelled = true }
local MIN_POLL_MS, MAX_POLL_MS, DEFAULT_POLL_MS = 100, 5000, 1000

local function fail(code, message, fields)
  return nil, core.error(code, message, fields)
end

local function declares(conn, ...)
  local v = conn.capabilities
  for _, k in ipairs { ... } do
    v = type(v) == "table" and v[k] or nil
  end
  return type(v) == "table"
end

--- Whether the server on `conn` takes tool calls as tasks.
---@param conn table
---@return boolean
function M.offered(conn)
  return declares(conn, "tasks", "requests", "tools", "call")
end

--- Whether `tool` (a listed tool's entry) must be called as a task on
--- `conn`.
---@param conn table
---@param tool table|nil
---@return boolean
function M.required(conn, tool)
  return tool ~= nil and tool.task_support == "required" and M.offered(conn)
end

-- The task in a server's answer, or nil when it is not one.
local function task_of(v)
  if type(v) ~= "table" or type(v.taskId) ~= "string" or v.taskId == "" or not STATUS[v.status] then return nil end
  return v
end

-- Tells the turn's listeners of a status or message that changed.
local function report(watch, task, last)
  local message = type(task.statusMessage) == "string" and task.statusMessage or nil
  if last.status == task.status and last.message == message then return end
  last.status, last.message = task.status, message
  watch:emit { type = "tool_status", task = task.taskId, status = task.status, message = message }
end

-- tasks/cancel for a call given up, from a task of its own.
local function cancel_later(src, conn, id)
  if not declares(conn, "tasks", "cancel") then return end
  core.spawn(function() pcall(conn.request, conn, "tasks/cancel", { taskId = id }, 5000) end)
end

-- Waits for task `task` to end (polling), then takes its result.
local function follow(src, conn, task, watch)
  local tide = require "tide"
  local last = {}
  while true do
    report(watch, task, last)
    if watch.failed then return nil, nil end
    if TERMINAL[task.status] or task.status == "input_required" then
      local res, err = conn:request("tasks/result", { taskId = task.taskId }, src.timeout_ms, nil, watch)
      -- (a task that needed input and still runs: back to polling)
      if res ~= nil or err.code ~= "Timeout" or TERMINAL[task.status] then return res, err end
    else
      local poll = math.tointeger(task.pollInterval) or DEFAULT_POLL_MS
      tide.sleep(math.max(MIN_POLL_MS, math.min(MAX_POLL_MS, poll)))
    end
    -- (each request has its own timeout; the task's life is bounded only
    -- by max_total_timeout_ms, and by the tool's timeout from outside)
    local cap = src.max_total_timeout_ms
    if cap and core.now() >= watch.began + cap then
      return fail("Timeout", ("MCP server '%s': task %s of %s ran past max_total_timeout_ms (%d)"):format(src.name,
        task.taskId, watch.action, cap))
    end
    local t, gerr = conn:request("tasks/get", { taskId = task.taskId }, src.timeout_ms)
    if not t then return nil, gerr end
    local next_task = task_of(t)
    if not next_task or next_task.taskId ~= task.taskId then
      return fail("MalformedResponse", ("MCP server '%s' answered tasks/get without task %s"):format(src.name,
        task.taskId))
    end
    task = next_task
    watch.at = core.now() -- (it answers: it is working)
  end
end

--- Calls a tool as a task: `params` are the tools/call params (`task` is
--- added); the call's result as the server gives it (what tasks/result
--- answered), or nil and an error (Timeout, ProviderError for the
--- server's JSON-RPC error, MalformedResponse for an answer that is not a
--- task). Raises what cancels the caller, after cancelling the task.
---@param src tide.integrations.mcp
---@param conn table
---@param params table
---@param watch table the call's progress (tide.integrations.mcp)
---@return table|nil result
---@return table|nil err
function M.call(src, conn, params, watch)
  params.task = {} -- (the server's own time to live)
  local created, err = conn:request("tools/call", params, src.timeout_ms, nil, watch)
  if not created then return nil, err end
  local task = type(created) == "table" and task_of(created.task)
  if not task then
    return fail("MalformedResponse", ("MCP server '%s' answered a task-augmented call of %s without a task"):format(
      src.name, watch.action))
  end
  local ok, res, ferr = pcall(follow, src, conn, task, watch)
  if not ok then
    cancel_later(src, conn, task.taskId)
    error(res, 0)
  end
  if res == nil and (watch.failed or (ferr and ferr.code == "Timeout")) then cancel_later(src, conn, task.taskId) end
  return res, ferr
end

return M
