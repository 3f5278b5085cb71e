--- tide.approval: calls that wait for a person, across a pause that may
--- last days and cross a process restart.
---
--- A turn that reaches a call needing approval (a tool's `approval`) runs
--- the other calls of that response, then pauses: the round (its calls, the
--- results it has, the calls waiting) is kept on the session and written to
--- the transcript, and the turn returns `ApprovalRequired` with
--- `err.pending = { { id, name, arguments, agent, server }, ... }` (`server`:
--- the label of the remote MCP server whose call the provider asks approval
--- for, see tide.provider.responses; nil for tide's own tools). A delegation
--- whose sub-agent paused waits too, and its sub-agent's pending calls are
--- in the list, at any depth. `s:approve(id, note)` / `s:reject(id,
--- reason)` record decisions (in the transcript of the session that owns
--- the call); `s:resume()` finishes the round and goes on with the turn.
---
--- A call never runs twice because of a pause: a call that ran before it
--- keeps its result in the pause record, and an approved call is marked
--- running in the transcript before it runs, so a process that dies while it
--- runs leaves it "interrupted", never run again.
---
--- Transcript lines: `{ type = "pause", ... }`, `{ type = "decision", id,
--- approved, note }`, `{ type = "running", ids }`. A session is paused when
--- its last pause line has no message after it.
---@class tide.approval
local M = {}

local core = require "tide.core"

local function fail(code, msg, fields) return nil, core.error(code, msg, fields) end

local function record(session, line)
  local w = session.conversation.writer
  if w then require("tide.transcript").record(w, line) end
end

--- Whether the call of tool `t` with `args` needs a person's decision. A
--- rule that raises asks (the safe side).
function M.needs(t, args, ctx)
  local a = t.approval
  if a == nil or a == false then return false end
  if a == true then return true end
  local ok, v = pcall(a, args, ctx)
  return not ok or (v and true or false)
end

--- Checks an integration source's `approval` rule (misuse raises at
--- `level`): true (every action), "destructive" (actions the source marks
--- destructive: MCP's destructiveHint, Composio's destructive tags) or a
--- function(action, args) -> boolean.
function M.check_rule(rule, where, level)
  if rule == nil or rule == true or rule == false or rule == "destructive" or type(rule) == "function" then return end
  error(where .. "'approval' must be true, \"destructive\" or a function", level + 1)
end

--- The `approval` of a tide.tool made for integration action `action` of a
--- source whose rule is `rule`.
function M.for_action(rule, action)
  if rule == true then return true end
  if rule == "destructive" then return action.destructive == true or nil end
  if type(rule) == "function" then return function(args) return rule(action, args) end end
  return nil
end

--- The calls waiting for a decision under `session`, its sub-agents' included
--- (depth first, in call order).
---@return {id:string, name:string, arguments:string, agent:string, server?:string}[]
function M.pending(session)
  local out = {}
  local p = session.paused
  if not p then return out end
  for _, w in ipairs(p.waiting) do
    if w.child_session or w.child then
      local child = M.child(session, w)
      if child then
        for _, item in ipairs(M.pending(child)) do out[#out + 1] = item end
      end
    elseif not session.decisions[w.id] then
      out[#out + 1] = { id = w.id, name = w.name, arguments = w.arguments, agent = w.agent, server = w.server }
    end
  end
  return out
end

--- The ApprovalRequired error of a paused session.
function M.required(session)
  local pending = M.pending(session)
  return core.error("ApprovalRequired", ("%d call(s) wait for approval"):format(#pending),
    { pending = pending, session = session })
end

-- A serialisable copy of a waiting entry.
local function waiting_line(w)
  if w.child_session or w.child then
    local child = w.child_session
    return { index = w.index, child = child and {
      path = child.conversation.writer and child.conversation.writer.path,
      agent = child.def.id, toolkit = child.toolkit, agent_path = child.agent_path,
    } or w.child }
  end
  return { index = w.index, id = w.id, name = w.name, arguments = w.arguments, agent = w.agent, server = w.server }
end

--- Pauses `session`'s turn on `state` (calls, textual, results, waiting,
--- iteration, want, repaired, truncated, budget, tree) and returns nil,
--- ApprovalRequired.
function M.pause(session, state)
  session.paused = state
  local results, waiting = {}, {}
  for i = 1, #state.calls do results[i] = state.results[i] or false end
  for i, w in ipairs(state.waiting) do waiting[i] = waiting_line(w) end
  local calls = {}
  for i, c in ipairs(state.calls) do
    calls[i] = { id = c.id, name = c.name, arguments = c.arguments, server = c.server }
  end
  record(session, {
    type = "pause", calls = calls, textual = state.textual or nil, results = results, waiting = waiting,
    iteration = state.iteration, schema = state.want, repaired = state.repaired or nil,
    truncated = state.truncated, budget_used = state.budget and state.budget.used or nil,
  })
  return nil, M.required(session)
end

--- Records that the approved calls `calls` are about to run.
function M.running(session, calls)
  local ids = {}
  for _, c in ipairs(calls) do
    -- (a remote MCP server's call runs nowhere here: its answer is the
    -- decision, given again as it was after a restart, never "interrupted")
    if not c.server then ids[#ids + 1] = c.id end
  end
  if #ids == 0 then return end
  for _, id in ipairs(ids) do session.ran[id] = true end
  record(session, { type = "running", ids = ids })
end

-- The waiting entry of `id` in `session`'s tree, and the session that owns
-- it.
local function find(session, id)
  local p = session.paused
  if not p then return nil end
  for _, w in ipairs(p.waiting) do
    if w.child_session or w.child then
      local child = M.child(session, w)
      if child then
        local found, owner = find(child, id)
        if found then return found, owner end
      end
    elseif w.id == id then
      return w, session
    end
  end
  return nil
end

-- The session (the root or a sub-agent's) that call `id` waits in, when it
-- waits undecided; else nil and why.
local function decidable(session, id)
  if not session.paused then return fail("NothingPending", "no call of this session waits for approval") end
  local w, owner = find(session, id)
  if not w then
    return fail("UnknownApproval", ("no call '%s' waits for approval"):format(id), { id = id })
  end
  if owner.decisions[id] then
    return fail("AlreadyDecided", ("call '%s' was %s already"):format(id,
      owner.decisions[id].approved and "approved" or "rejected"), { id = id })
  end
  return owner
end

--- Raises, at `level`, for arguments s:approve and s:reject do not take.
---@param id any
---@param approved boolean
---@param note any
---@param level integer
function M.check_decision(id, approved, note, level)
  local name = approved and "approve" or "reject"
  if type(id) ~= "string" then
    error(("bad argument #1 to '%s' (string expected, got %s)"):format(name, type(id)), level + 1)
  end
  if note ~= nil and type(note) ~= "string" then
    error(("bad argument #2 to '%s' (string expected, got %s)"):format(name, type(note)), level + 1)
  end
  if note ~= nil and not utf8.len(note) then -- (it goes to the model, in JSON)
    error(("bad argument #2 to '%s' (not UTF-8 text)"):format(name), level + 1)
  end
end

--- Records a decision on call `id` (at any depth under `session`).
---@return boolean|nil ok
---@return table|nil err NothingPending, UnknownApproval or AlreadyDecided
function M.decide(session, id, approved, note)
  M.check_decision(id, approved, note, 2)
  local owner, err = decidable(session, id)
  if not owner then return nil, err end
  owner.decisions[id] = { approved = approved, note = note }
  record(owner, { type = "decision", id = id, approved = approved, note = note })
  return true
end

--- Checks a list of decisions ({ id, approved, note }) before any is made:
--- true, or nil and the error the first that does not fit gets (as decide
--- gives it; a call named twice is AlreadyDecided). A request that names
--- one wrong call then changes nothing (tide.queue's decisions).
---@param session table
---@param decisions {id:string, approved:boolean, note?:string}[]
---@return boolean|nil ok
---@return table|nil err
function M.check_all(session, decisions)
  local seen = {}
  for _, d in ipairs(decisions) do
    if seen[d.id] then
      return fail("AlreadyDecided", ("call '%s' is decided twice in one request"):format(d.id), { id = d.id })
    end
    seen[d.id] = true
    local owner, err = decidable(session, d.id)
    if not owner then return nil, err end
  end
  return true
end

--- The sub-agent session of a waiting delegation: the live one, or (after a
--- restart) restored from its transcript.
function M.child(session, w)
  if w.child_session then return w.child_session end
  if not (w.child and w.child.path) then return nil end
  local child = require("tide.subagent").restore(session, w.child)
  w.child_session = child
  return child
end

--- Restores the pause state of a session from its transcript lines (the
--- typed ones, in order, with how many messages followed each): sets
--- session.paused and session.decisions, and the ids of calls that ran.
---@param lines table[] every line of the transcript after the meta line
function M.restore(session, lines)
  local pause, pause_at
  local n = 0
  for _, l in ipairs(lines) do
    if l.type == "pause" then
      pause, pause_at = l, n
    elseif l.type == "decision" then
      session.decisions[l.id] = { approved = l.approved, note = l.note }
    elseif l.type == "running" then
      for _, id in ipairs(l.ids or {}) do session.ran[id] = true end
    elseif l.type == nil and l.role ~= "system" then
      n = n + 1
    end
  end
  if not pause or pause_at ~= n then return false end
  if type(pause.calls) ~= "table" or type(pause.waiting) ~= "table" or type(pause.results) ~= "table" then
    return nil, core.error("SessionCorrupt", "the transcript's pause record is not whole")
  end
  local results = {}
  for i, r in ipairs(pause.results) do results[i] = r or nil end
  local waiting = {}
  for i, w in ipairs(pause.waiting) do
    local call = pause.calls[w.index]
    if type(call) ~= "table" then return nil, core.error("SessionCorrupt", "a pause record names a call it does not hold") end
    waiting[i] = { index = w.index, call = call, id = w.id, name = w.name, arguments = w.arguments,
      agent = w.agent, server = w.server, child = w.child }
  end
  local budget
  if session.budget_limits then
    budget = require("tide.budget").new(session.budget_limits)
    for k, v in pairs(pause.budget_used or {}) do budget.used[k] = v end
  end
  session.paused = { calls = pause.calls, textual = pause.textual, results = results, waiting = waiting,
    iteration = pause.iteration or 1, want = require("tide.schema").restore_arrays(pause.schema),
    repaired = pause.repaired,
    truncated = pause.truncated, budget = budget }
  return true
end

return M
