--- tide: a Lua-scriptable LLM agent runtime with a C core.
---
--- This file is the public vocabulary. The heavy parts load on first use, so
--- `require "tide"` stays cheap for one-file scripts.
---@class tide
local tide = {}

local core = require "tide.core"
-- tide's other modules load compiled from here on (tide.bytecode)
require("tide.bytecode").install()

tide.core = core
tide.version = core.version

local loaded = package.loaded

-- fn, then the spans it queued (and the metrics it measured) sent at once,
-- not after the batch delay or the export interval
-- (the end of a loop's run: OTEL_BSP_SCHEDULE_DELAY is seconds in the
-- SDKs' default, and a waiting sender would keep the run alive that long).
local function draining(fn)
  return function(...)
    local r = table.pack(fn(...))
    local tracing, metrics = loaded["tide.tracing"], loaded["tide.metrics"]
    if tracing then tracing._drain_now() end
    if metrics then metrics._drain_now() end
    return table.unpack(r, 1, r.n)
  end
end

--- Runs `fn` in a task of its own when called outside any task, so that a
--- plain script can call blocking functions without ceremony.
local function blocking(fn, ...)
  if core.current() then return fn(...) end
  if core.running() then
    -- a coroutine of the caller's own, resumed by a task: the loop cannot
    -- wake it (only tasks wait), and a run of its own cannot start
    error("tide: this call waits on the event loop, and a plain coroutine (coroutine.wrap, coroutine.create) "
      .. "cannot wait on it: run the code in a task (tide.spawn) instead", 3)
  end
  local res = table.pack(core.run(draining(fn), ...))
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end
tide._blocking = blocking

--- Runs `fn(...)` as the root task and drives the event loop until every task
--- has ended. Returns what `fn` returns; an error in `fn` is raised again here,
--- once the tasks still running have been cancelled and have unwound (a
--- failed program ends instead of waiting on a server or worker it started).
---@param fn fun(...):any
---@return any ...
function tide.run(fn, ...)
  if type(fn) ~= "function" then
    error(("bad argument #1 to 'run' (function expected, got %s)"):format(type(fn)), 2)
  end
  local res = table.pack(core.run(draining(fn), ...))
  -- spans a cancelled sender left queued (a failed run cancels every
  -- task) go out before the error does
  local tracing, metrics = loaded["tide.tracing"], loaded["tide.metrics"]
  if tracing and tracing._pending() then core.run(tracing._drain_now) end
  if metrics and metrics._pending() then core.run(metrics._drain_now) end
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

--- Starts `fn(...)` as a child task. The task runs when the loop next turns.
--- `t:join()` waits for it and returns its results, or nil plus its error;
--- `t:cancel()` cancels it and its descendants at their next wait.
---@param fn fun(...):any
---@return userdata task
function tide.spawn(fn, ...)
  if type(fn) ~= "function" then
    error(("bad argument #1 to 'spawn' (function expected, got %s)"):format(type(fn)), 2)
  end
  return core.spawn(fn, ...)
end

--- Suspends the current task for `ms` milliseconds (outside a task: blocks).
---@param ms integer
function tide.sleep(ms)
  if type(ms) == "number" then ms = math.tointeger(ms) or ms end
  if math.type(ms) ~= "integer" or ms < 0 then
    error(("bad argument #1 to 'sleep' (non-negative integer expected, got %s)"):format(
      math.type(ms) or type(ms)), 2)
  end
  return blocking(core.sleep, ms)
end

--- The running task, or nil outside any task.
function tide.current() return core.current() end

--- Builds a structured error `{ code = code, message = message, ... }`.
---@param code string
---@param message? string
---@param fields? table
function tide.error(code, message, fields) return core.error(code, message, fields) end

--- The stable error codes, documented in README.md.
tide.codes = {
  "BadURL", "BodyTooLarge", "BudgetExhausted", "Cancelled", "ConnectFailed",
  "ConnectionClosed", "Deadlock", "FdLimit", "HttpFailed", "IntegrationsUnavailable",
  "MalformedResponse", "MaxIterationsExceeded", "ProviderError", "ResolveFailed",
  "SpawnDepthExceeded", "StreamTooLarge", "TemplateError", "Timeout", "TLSFailed",
  "ToolError", "UnknownAgent", "UnknownTool", "TranscriptError", "ConfigError",
  "RateLimited", "UnknownPrompt", "SessionBusy", "TurnFailed", "AgentFileError",
  "ListenFailed", "Interrupted", "WatchFailed", "FileError",
  -- round two
  "ApprovalRequired", "NothingPending", "UnknownApproval", "AlreadyDecided", "SessionCorrupt",
  "SchemaMismatch", "Truncated", "CompactionFailed", "SubagentLimit", "CassetteError", "SpawnFailed",
  "ClusterUnavailable", "RedisError", "Superseded", "SignalFailed", "Unauthorized",
}

-- Submodules load on first access: tide.http, tide.testing, tide.provider, ...
local lazy = {
  http = "tide.http",
  testing = "tide.testing",
  provider = "tide.provider",
  integrations = "tide.integrations",
  agents = "tide.agents",
  prompts = "tide.prompts",
  json = "tide.json",
  tracing = "tide.tracing",
  metrics = "tide.metrics",
}
-- Functions that live in submodules but belong to the top-level vocabulary.
local lazy_fn = {
  tool = { "tide.tool", "new" },
  agent = { "tide.agents", "define" },
  session = { "tide.session", "new" },
  config = { "tide.config", "new" },
  image = { "tide.content", "image" },
  prices = { "tide.prices", "set" },
  file = { "tide.content", "file" },
  cluster = { "tide.cluster", "join" },
  worker = { "tide.queue", "worker" },
  submit = { "tide.queue", "submit" },
}

setmetatable(tide, {
  __index = function(t, k)
    local m = lazy[k]
    if m then
      local v = require(m)
      rawset(t, k, v)
      return v
    end
    local f = lazy_fn[k]
    if f then
      local v = require(f[1])[f[2]]
      rawset(t, k, v)
      return v
    end
  end,
})

return tide
