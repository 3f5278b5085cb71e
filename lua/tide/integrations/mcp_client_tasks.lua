--- tide.integrations.mcp_client_tasks: a server's sampling and elicitation
--- requests run as tasks tide keeps, MCP 2025-11-25's tasks with tide the
--- receiver (tide.integrations.mcp_tasks is the other side: a server's
--- tools run as its tasks).
---
--- A source that serves `sampling` or `elicit` declares the `tasks`
--- capability for them (`requests.sampling.createMessage`,
--- `requests.elicitation.create`, with `list` and `cancel`). A request of
--- those that carries `params.task` is answered at once with a
--- `CreateTaskResult` (status `working`); the request then runs as it
--- would have, in the background, and its answer is kept: `tasks/get`
--- gives the task's status, `tasks/result` blocks until the task ends and
--- gives exactly what the request would have answered (its result with the
--- `io.modelcontextprotocol/related-task` meta, or its JSON-RPC error),
--- `tasks/list` lists them, `tasks/cancel` stops a task that has not ended
--- (-32602 for one that has, or one tide does not know). A task is kept
--- for the `ttl` the server asked for, at most an hour (the `ttl` answered
--- says which).
local core = require "tide.core"
local json = require "tide.json"

local M = {}

local TTL_MAX_MS = 3600000
local POLL_MS = 500
local TERMINAL = { completed = true, failed = true, cancelled = true }
local RELATED = "io.modelcontextprotocol/related-task"

--- The `tasks` capability a source declares, or nil when it serves
--- neither request.
---@param src table
---@return table|nil
function M.capability(src)
  local requests = {}
  if src.sampling_config then requests.sampling = { createMessage = {} } end
  if src.elicit then requests.elicitation = { create = {} } end
  if next(requests) == nil then return nil end
  return { list = {}, cancel = {}, requests = requests }
end

local function now_ms() return core.wall_ns() // 1000000 end

local function iso(ms)
  return os.date("!%Y-%m-%dT%H:%M:%S", ms // 1000) .. (".%03dZ"):format(ms % 1000)
end

-- A task as the protocol shows it.
local function view(t)
  return { taskId = t.id, status = t.status, statusMessage = t.message, createdAt = iso(t.created),
    lastUpdatedAt = iso(t.updated), ttl = t.ttl, pollInterval = POLL_MS }
end

-- Forgets the tasks whose ttl passed.
local function sweep(src)
  local now = now_ms()
  for id, t in pairs(src.client_tasks) do
    if now > t.created + t.ttl then src.client_tasks[id] = nil end
  end
end

local function settle(t, status, message)
  t.status, t.message, t.updated = status, message, now_ms()
end

--- Accepts a task-augmented request: its CreateTaskResult through
--- `reply`, then `handle(src, msg, reply)` (mcp_sampling's or
--- mcp_elicitation's, which returns the task it runs in) on the request
--- without its `task`, its answer kept for tasks/result.
---@param src table
---@param msg table the server's request, params.task a table
---@param reply fun(msg: table)
---@param handle fun(src: table, msg: table, reply: fun(msg: table)): table
function M.accept(src, msg, reply, handle)
  sweep(src)
  local asked = msg.params.task.ttl
  local now = now_ms()
  src.client_task_seq = src.client_task_seq + 1
  local t = { id = ("tide-%d-%06x"):format(src.client_task_seq, math.random(0, 0xffffff)), status = "working",
    created = now, updated = now,
    ttl = math.type(asked) == "integer" and asked > 0 and math.min(asked, TTL_MAX_MS) or TTL_MAX_MS }
  src.client_tasks[t.id] = t
  reply { jsonrpc = "2.0", id = msg.id, result = { task = view(t) } }
  local params = {}
  for k, v in pairs(msg.params) do if k ~= "task" then params[k] = v end end
  t.runner = handle(src, { jsonrpc = "2.0", id = msg.id, method = msg.method, params = params }, function(answer)
    t.runner = nil
    if t.status == "cancelled" then return end -- (it stays so, whatever came of it)
    t.answer = answer
    if answer.error ~= nil then
      settle(t, "failed", type(answer.error) == "table" and tostring(answer.error.message) or nil)
    else
      settle(t, "completed")
    end
  end)
end

local function invalid(msg, text)
  return { jsonrpc = "2.0", id = msg.id, error = { code = -32602, message = text } }
end

-- The task a tasks/* request names, or nil and the error to answer.
local function named(src, msg)
  local id = type(msg.params) == "table" and msg.params.taskId
  local t = type(id) == "string" and src.client_tasks[id]
  if not t then return nil, invalid(msg, ("Failed to retrieve task: no task %s"):format(tostring(id))) end
  return t
end

-- tasks/result: what the request would have answered, once the task ended
-- (waited for in this task of its own: the server's request blocks).
local function result(src, msg, reply)
  core.spawn(function()
    local t, err = named(src, msg)
    if not t then return reply(err) end
    while not TERMINAL[t.status] do core.sleep(20) end
    local a = t.answer
    if t.status == "cancelled" or not a then
      return reply { jsonrpc = "2.0", id = msg.id, error = { code = -32603, message = "the task was cancelled" } }
    end
    if a.error ~= nil then return reply { jsonrpc = "2.0", id = msg.id, error = a.error } end
    local r = {}
    for k, v in pairs(a.result or {}) do r[k] = v end
    local meta = {}
    for k, v in pairs(type(r._meta) == "table" and r._meta or {}) do meta[k] = v end
    meta[RELATED] = { taskId = t.id }
    r._meta = meta
    reply { jsonrpc = "2.0", id = msg.id, result = r }
  end)
end

--- Answers the server's tasks/get, tasks/result, tasks/list or
--- tasks/cancel about the source's tasks. Returns false for another method.
---@param src table
---@param msg table
---@param reply fun(msg: table)
---@return boolean
function M.serve(src, msg, reply)
  local method = msg.method
  if method == "tasks/result" then
    result(src, msg, reply)
    return true
  end
  if method ~= "tasks/get" and method ~= "tasks/list" and method ~= "tasks/cancel" then return false end
  sweep(src)
  if method == "tasks/list" then
    local list = json.array()
    for _, t in pairs(src.client_tasks) do list[#list + 1] = view(t) end
    table.sort(list, function(a, b) return a.createdAt < b.createdAt or (a.createdAt == b.createdAt and a.taskId < b.taskId) end)
    reply { jsonrpc = "2.0", id = msg.id, result = { tasks = list } }
    return true
  end
  local t, err = named(src, msg)
  if not t then
    reply(err)
  elseif method == "tasks/get" then
    reply { jsonrpc = "2.0", id = msg.id, result = view(t) }
  elseif TERMINAL[t.status] then
    reply(invalid(msg, ("Cannot cancel task %s: it is %s"):format(t.id, t.status)))
  else
    settle(t, "cancelled", "cancelled by the server")
    if t.runner then t.runner:cancel() end
    reply { jsonrpc = "2.0", id = msg.id, result = view(t) }
  end
  return true
end

return M
