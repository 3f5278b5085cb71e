--- tide.turn: the one turn loop, used by every session (root, sub-agent,
--- chat, demo; with listeners or none).
---
--- A turn appends the user's message, then asks the provider and runs the
--- tools it calls until the model answers without calls, or
--- `max_iterations` responses have been read. The calls of one response run
--- concurrently, one task each, and their results go back in call order.
--- Everything the turn reports to (on_tool_start / on_tool_end, the event
--- sink, the budget) is read once, when the turn starts; events and result
--- tables for listeners are built only when someone listens.
---@class tide.turn
local M = {}

local core = require "tide.core"
local json = require "tide.json"
local surface = require "tide.surface"
local tool_protocol = require "tide.tool_protocol"
local function schema_module() return require "tide.schema" end
local function approval() return require "tide.approval" end -- (a turn that pauses)
local prices = require "tide.prices"
local tracing = require "tide.tracing"
local function compaction() return require "tide.compaction" end
local function content_parts() return require "tide.content" end
local chat_attributes, start_chat, end_chat -- (tracing helpers, below)

local hrtime = core.hrtime
local spawn, spawn_now = core.spawn, core.spawn_now
local function ms_since(t0) return (hrtime() - t0) / 1e6 end
local function fail(code, msg, fields) return nil, core.error(code, msg, fields) end
local function tree_budget() return require "tide.budget" end

-- ----------------------------------------------------------- tool results --

-- A tool's text as valid UTF-8, each invalid byte a U+FFFD: a request body
-- is JSON, and JSON text is UTF-8; a tool that hands back raw bytes (a
-- binary file read as text) must not make every later request of the
-- session one the provider refuses.
local function utf8_text(s)
  if utf8.len(s) then return s end
  local out, i = {}, 1
  while true do
    local n, bad = utf8.len(s, i)
    if n then
      out[#out + 1] = s:sub(i)
      return table.concat(out)
    end
    out[#out + 1] = s:sub(i, bad - 1) .. "\u{FFFD}"
    i = bad + 1
  end
end
M._utf8_text = utf8_text -- (for the specs)

local function cap(text, limit)
  if #text <= limit then return text end
  local cut = limit
  -- do not split a UTF-8 sequence
  while cut > 0 and (text:byte(cut + 1) or 0) & 0xC0 == 0x80 do cut = cut - 1 end
  return text:sub(1, cut) .. ("\n[truncated: %d bytes omitted]"):format(#text - cut)
end

-- A handler's value as the text the model reads; nil and why for a table
-- JSON cannot hold (a cycle, a function inside): that is the handler's
-- failure, and the model must read it as one, not as a result.
local function to_text(v)
  if v == nil then return "" end
  if type(v) == "string" then return v end
  if type(v) == "table" then
    -- text and images (tide.image{} parts): resolved by the call's task
    if content_parts().is_tool_parts(v) then return v end
    local ok, s = pcall(json.canonical, v)
    if ok then return s end
    return nil, "the tool's result cannot be sent as JSON: " .. tostring(s):gsub("^tide%.json: ", "")
  end
  return tostring(v)
end

--- The text of an error value for a model or a person: a tide error's
--- "Code: message", anything else as a string without the traceback task
--- errors carry. A plain table raised as an error says what it holds (its
--- `message`, its `__tostring`, else its JSON), never a table address.
---@param err any
---@return string
function M.error_text(err)
  if type(err) == "table" then
    if err.code and err.message then return err.code .. ": " .. err.message end
    if type(err.message) == "string" then return err.message end
    local mt = getmetatable(err)
    if not (type(mt) == "table" and mt.__tostring) then
      local ok, s = pcall(json.canonical, err)
      if ok then return s end
    end
    return tostring(err)
  end
  return (tostring(err):gsub("\nstack traceback:.*$", ""))
end
local error_text = M.error_text

-- Errors that stop the turn instead of becoming a tool result: a spent
-- budget, a cancel, a listener's failure.
local function passes_through(e)
  return type(e) == "table" and (e.code == "BudgetExhausted" or e.code == "Cancelled" or e.listener == true)
end
M._passes_through = passes_through -- (a delegation raises them through too)

-- A listener (on_event, on_tool_start, on_tool_end, on_delta, on_reasoning)
-- that raises stops the turn, and in a sub-agent's turn the whole tree: its
-- error is marked (`listener = true`) so that no layer takes it for a
-- tool's failure or the model's business. Nil for no listener.
local function guarded(fn)
  if fn == nil then return nil end
  return function(...)
    local ok, e = pcall(fn, ...)
    if not ok then
      if not passes_through(e) then e = core.error("TurnFailed", error_text(e), { detail = e, listener = true }) end
      error(e, 0)
    end
  end
end

-- A tool's failure as the one error a tool gives: ToolError, its message the
-- text the model reads after "Error: ".
local function tool_error(e)
  if type(e) == "table" and e.code == "ToolError" then return e end
  local text = type(e) == "string" and e:gsub("^Error: ", "") or error_text(e)
  return core.error("ToolError", (text:gsub("\nstack traceback:.*$", "")))
end

--- Runs a tool's handler: its text (a table result as JSON; a list of
--- strings and `tide.image{}` parts as that list, for the call's task to
--- resolve), or nil and a ToolError for a handler that raised, returned
--- `nil, err` or the legacy `{ is_error = true, content = ... }`.
--- BudgetExhausted and Cancelled come back as they are: they stop the
--- turn, not the tool.
---@param t tide.tool
---@param args table
---@param ctx table|nil
---@return string|nil text
---@return table|nil err
function M.run_tool(t, args, ctx)
  local ok, v, e = pcall(t.handler, args, ctx)
  if ok and type(v) == "string" then return v end -- (the usual answer: nothing to convert)
  if not ok then
    -- raised: a failure whatever the value, `error()` and `error(nil)` too
    e, v = v, nil
    if e == nil then e = "the tool raised an error without a message" end
  end
  -- `nil, err` is a failure, and so is `false, err` (pcall's and many
  -- libraries' way to say it): its reason must not be dropped for "false"
  if (v == nil or v == false) and e ~= nil then
    if passes_through(e) then return nil, e end
    -- a delegation whose sub-agent paused for approval waits with it
    if type(e) == "table" and e.code == "ApprovalRequired" then return nil, e end
    return nil, tool_error(e)
  end
  if type(v) == "table" and v.is_error ~= nil and v.content ~= nil then
    if v.is_error then
      local text = to_text(v.content) or error_text(v.content)
      if type(text) == "table" then -- an error's parts: its words are the error
        local words = {}
        for _, p in ipairs(text) do
          if type(p) == "string" then words[#words + 1] = p elseif p.type == "text" then words[#words + 1] = p.text end
        end
        text = table.concat(words, "\n")
      end
      return nil, tool_error(text)
    end
    v = v.content
  end
  local text, why = to_text(v)
  if text == nil then return nil, tool_error(why) end
  return text
end
local run_tool = M.run_tool

-- ------------------------------------------------------------------ calls --

-- What one turn reports to, read once: `on_start`/`on_end` (the turn's
-- options), `sink` (the event sink), `budget`; `listen` says whether any
-- of the three wants to hear of a call.

local function result(call, content, is_error)
  if call.server then
    -- A remote MCP server's call (provider.responses) is answered with the
    -- decision: approved, or rejected with why (any error is a rejection).
    return { id = call.id, name = call.name, content = content, is_error = is_error, approve = not is_error,
             reason = is_error and content or nil }
  end
  -- (a custom tool's call is answered as one: see provider.responses)
  return { id = call.id, name = call.name, content = content, is_error = is_error, custom = call.custom }
end
M._result = result -- (a resumed session answers calls left open with it)

local function report_start(run, call)
  if run.on_start then run.on_start(call) end
  if run.sink then
    run.sink { type = "tool_start", name = call.name, arguments = call.arguments, id = call.id,
      depth = run.depth, agent = run.agent }
  end
end

local function report_end(run, call, r, ms)
  if run.on_end then run.on_end(call, r, ms) end
  if run.sink then
    run.sink { type = "tool_end", name = call.name, id = call.id, is_error = r.is_error, ms = ms,
      depth = run.depth, agent = run.agent }
  end
end

-- The result of a call a person rejected (`decision`: { approved, note }).
local function rejected(call, decision)
  return result(call, "Error: rejected by the user" .. (decision.note and (": " .. decision.note) or ""), true)
end

-- The body of a call's task: the tool's text or its error, capped, and the
-- end reported at the time it ends (when someone listens).
local function tool_task(run, t, args, call, t0)
  local ctx = not t.args_only and { session = run.session, call_id = call.id, name = call.name,
    depth = run.depth } or nil
  local span
  if run.span then
    span = tracing.start("execute_tool " .. call.name, 1, run.span, { ["gen_ai.operation.name"] = "execute_tool",
      ["gen_ai.tool.name"] = call.name, ["gen_ai.tool.call.id"] = call.id, ["gen_ai.tool.type"] = "function" })
    if span then
      core.context().tide_span = span -- a sub-agent run nests under this call
      if tracing.capture_content() then span.attributes["gen_ai.tool.call.arguments"] = call.arguments end
    end
  end
  local text, err = run_tool(t, args, ctx)
  if err and passes_through(err) then
    -- given back, not raised: a turn that stops at once may never join
    -- this task, and a task that failed without being joined is reported
    -- as a fault
    if span then span:finish(err) end
    return nil, err
  end
  if type(text) == "table" then -- text and images: their files read now
    local parts, perr = content_parts().resolve_tool_parts(text)
    if parts then text = parts else text, err = nil, tool_error(perr) end
  end
  if span then
    if text and tracing.capture_content() then
      span.attributes["gen_ai.tool.call.result"] = type(text) == "table" and content_parts().parts_text(text) or text
    end
    if err and err.code == "ApprovalRequired" then span:event("approval_required") end
    span:finish(err and err.code ~= "ApprovalRequired" and err or nil)
  end
  if err and err.code == "ApprovalRequired" then return nil, err end
  local limit = run.cap
  if type(text) == "table" then
    -- The cap is the whole result's: each text part gets what the ones
    -- before it left (a hundred parts are not a hundred caps).
    for _, p in ipairs(text) do -- (a text file's text is text too)
      if (p.type == "text" or p.type == "file") and p.text then
        local t = utf8_text(p.text)
        p.text = cap(t, limit)
        limit = limit - math.min(#t, limit)
      end
    end
  elseif text then
    text = utf8_text(text)
    if #text > limit then text = cap(text, limit) end
  else
    err.message = cap(utf8_text(err.message), limit)
  end
  if run.listen then
    -- A listener that raises stops the turn (its error is marked: see
    -- guarded); raised here, it would take the place of this call's
    -- result, and the model would read a tool that worked as one that
    -- failed. So the call keeps what it gave, and the listener's error
    -- comes third, for join_call to stop the round with.
    local ok, lerr = pcall(report_end, run, call, result(call, text or ("Error: " .. err.message), text == nil),
      ms_since(t0))
    if not ok then return text, err, lerr end
  end
  -- One value when it worked: a task that returns at most one gives its
  -- coroutine back for the next call as it ends (core.spawn), instead of
  -- when the garbage collector finds its task.
  if err then return nil, err end
  return text
end

-- Starts one call: reports its start, checks it against the surface and
-- spawns its task with `spawner`. Returns the task, its start (hrtime) and
-- timeout (ms); or nil and the result of a call that cannot run; or nil,
-- nil and the entry of a call that waits for a person's decision.
local function start_call(run, call, spawner)
  local t0 = hrtime()
  if run.listen then report_start(run, call) end
  local session = run.session
  if call.server then
    -- A remote MCP server's call the provider asks approval for: nothing
    -- runs here, the decision is the result.
    local decision = session.decisions[call.id]
    if not decision then
      return nil, nil, { id = call.id, name = call.name, arguments = call.arguments, agent = run.agent,
                         server = call.server, call = call }
    end
    local r = decision.approved and result(call, "approved", false) or rejected(call, decision)
    if run.listen then report_end(run, call, r, 0) end
    return nil, r
  end
  local t, args = surface.check_call(session.surface, session.snapshot, call)
  if not t then
    local r = result(call, args, true)
    if run.listen then report_end(run, call, r, 0) end
    return nil, r
  end
  if t.approval ~= nil then
    local decision = session.decisions[call.id]
    if not decision and approval().needs(t, args, { session = session, call_id = call.id, name = call.name,
        depth = run.depth }) then
      return nil, nil, { id = call.id, name = call.name, arguments = call.arguments, agent = run.agent, call = call }
    end
    if decision and not decision.approved then
      local r = rejected(call, decision)
      if run.listen then report_end(run, call, r, 0) end
      return nil, r
    end
  end
  if run.budget then run.budget:spend("tool_calls", 1, run.agent) end
  local counters = session.counters
  counters.tool_calls = counters.tool_calls + 1
  local task = spawner(tool_task, run, t, args, call, t0)
  local live = run.tasks
  live[#live + 1] = task
  return task, t0, t.timeout_ms or session.tool_timeout_ms
end

-- Waits for the task of one call (started at t0, limited to limit_ms): its
-- result, and the error that stops the turn, if any. A call past its
-- timeout is cancelled and gets an error result.
local function join_call(run, call, task, t0, limit_ms)
  local text, err, stop -- (stop: a listener's error, raised at the call's end)
  if task:status() == "done" then -- a call run at once that never waited
    text, err, stop = task:join()
  else
    -- (the time left from what has passed: t0 + limit in nanoseconds
    -- overflows for a limit that means "never", math.maxinteger)
    local left = limit_ms - (hrtime() - t0) // 1000000
    text, err, stop = task:join(left > 0 and math.tointeger(left) or 0)
  end
  if text then return result(call, text, false), stop end
  if err.code == "ToolError" then return result(call, "Error: " .. err.message, true), stop end
  if err.code == "ApprovalRequired" and err.session then -- a sub-agent waits for a decision
    return nil, nil, { call = call, child_session = err.session }
  end
  if err.code == "Timeout" and task:status() ~= "done" and task:status() ~= "failed" then
    task:cancel()
    local r = result(call, ("Error: tool '%s' timed out after %d ms"):format(call.name, limit_ms), true)
    if run.listen then report_end(run, call, r, ms_since(t0)) end
    return r
  end
  -- (a listener's failure is the application's, not the model's business)
  local r = result(call, err.listener and "Error: the turn stopped (TurnFailed)" or "Error: " .. error_text(err), true)
  if passes_through(err) then return r, err end
  return r
end

-- Runs the calls of one response concurrently, one task each, and returns
-- their results in call order (a hole where a call waits), the error that
-- stops the turn, if any (BudgetExhausted, the turn's own cancellation),
-- and the calls that wait for a person's decision, if any.
local function run_calls(run, calls)
  local n = #calls
  local live = run.tasks
  local waiting
  local function wait(i, w)
    w.index = i
    waiting = waiting or {}
    waiting[#waiting + 1] = w
  end
  if n == 1 then
    -- A single call's task runs at once, until it first waits: a tool that
    -- never does is done before the join, which then costs no pass of the
    -- loop.
    local call = calls[1]
    local task, t0, limit = start_call(run, call, spawn_now)
    if not task then -- (t0: the result of a call that could not start)
      if limit then wait(1, limit) end
      return { t0 }, nil, waiting
    end
    local r, err, w = join_call(run, call, task, t0, limit)
    live[1] = nil
    if w then wait(1, w) end
    return { r }, err, waiting
  end
  -- Every call is started before any is joined. The round is kept on the
  -- run: a turn stopped mid-round (cancelled) still reports the calls that
  -- had ended with what they gave (see settle).
  local results, tasks, starts, limits = {}, {}, {}, {}
  run.round_results, run.round_tasks = results, tasks
  for i = 1, n do
    local task, t0, limit = start_call(run, calls[i], spawn)
    if task then
      tasks[i], starts[i], limits[i] = task, t0, limit
    elseif limit then
      wait(i, limit)
    else
      results[i] = t0 -- the result of a call that could not start
    end
  end
  local stop_err
  for i = 1, n do
    if tasks[i] then
      local r, err, w = join_call(run, calls[i], tasks[i], starts[i], limits[i])
      results[i] = r
      if w then wait(i, w) end
      stop_err = stop_err or err
    end
  end
  for i = #live, 1, -1 do live[i] = nil end
  run.round_results, run.round_tasks = nil, nil
  return results, stop_err, waiting
end

-- The results of the round a stopped turn left (`run.pending`): a call that
-- had ended keeps what it gave, so that the model never runs again a call
-- that did run (a mail sent twice); the others are answered `text`.
local function settle(run, text)
  local calls, done, tasks = run.pending, run.round_results, run.round_tasks
  local results = {}
  for i, call in ipairs(calls) do
    local r = done and done[i]
    local task = tasks and tasks[i]
    if not r and task and task:status() == "done" then
      local ok, out, err = pcall(task.join, task)
      if ok and out then
        r = result(call, out, false)
      elseif ok and type(err) == "table" and err.code == "ToolError" then
        r = result(call, "Error: " .. err.message, true)
      end
    end
    results[i] = r or result(call, text, true)
  end
  return results
end

-- The message that carries a round's results: a `tool` message, or for
-- calls the model wrote as text, a user message of <tool_result> tags.
local function results_message(results, textual)
  if not textual then return { role = "tool", results = results } end
  local parts, images = {}, nil
  for i, r in ipairs(results) do
    local c = r.content
    if type(c) == "table" then -- images and files go after the text, as content parts
      for _, p in ipairs(c) do
        if p.type ~= "text" then images = images or {}; images[#images + 1] = p end
      end
      c = content_parts().parts_text(c)
    end
    parts[i] = ('<tool_result name="%s"%s>\n%s\n</tool_result>'):format(
      r.name, r.is_error and ' error="true"' or "", c)
  end
  local text = table.concat(parts, "\n")
  if not images then return { role = "user", content = text } end
  local content = { { type = "text", text = text } }
  for _, p in ipairs(images) do content[#content + 1] = p end
  return { role = "user", content = content }
end

M._results_message = results_message -- (a resumed session answers calls left open with it)

-- Answers every call of `calls` with the same error, so that the history
-- stays a valid conversation (a call is never left without its result).
local function answer_all(history, calls, textual, text)
  local results = {}
  for i, c in ipairs(calls) do results[i] = result(c, text, true) end
  history:append(results_message(results, textual))
end

-- The calls a model wrote as text (`<tool_call>` tags), for models without
-- native tools; ids are made up where the text has none.
local function textual_calls(text, iteration)
  local parsed = tool_protocol.parse(text)
  if #parsed == 0 then return nil end
  for i, c in ipairs(parsed) do
    c.id = c.id or ("parsed-" .. iteration .. "-" .. i)
    if c.id == "" then c.id = ("call_%d_%d"):format(iteration, i) end
  end
  return parsed
end

-- Gives the calls of one response ids this session can tell apart: a
-- server that numbers its calls per response ("call_1" in each), the ids
-- made up for calls that came without one, the text protocol's, or two
-- calls of one response under the same id. A repeated id is suffixed
-- (`call_1_2`): two results under one id pair wrongly with their calls,
-- and an id that an earlier call was approved (or run) under must not let
-- a new call run without its own decision.
-- (`seen` only for a response of several calls: a tool loop's usual round,
-- one call under a fresh id, makes no table)
local function id_taken(id, seen, decisions, ran)
  return (seen and seen[id]) or (decisions and decisions[id] ~= nil) or (ran and ran[id] ~= nil)
end

local function distinct_ids(session, calls)
  local decisions, ran = session.decisions, session.ran
  local seen = #calls > 1 and {} or nil
  for i = 1, #calls do
    local c = calls[i]
    local id = c.id
    -- (a remote MCP server's call keeps the service's id: its answer names it)
    if type(id) == "string" and not c.server then
      if id_taken(id, seen, decisions, ran) then
        local k = 2
        while id_taken(id .. "_" .. k, seen, decisions, ran) do k = k + 1 end
        c.id = id .. "_" .. k
      end
      if seen then seen[c.id] = true end
    end
  end
end

-- --------------------------------------------------------------- the loop --

-- Per-turn context goes on the user message, never in the frozen prompt. A
-- turn that wants structured output says so there too, unless the provider
-- holds the model to the schema itself.
local function user_content(session, text, opts, want)
  local parts = {}
  if opts.context then parts[#parts + 1] = opts.context end
  if want and not session.provider._native_schema then
    parts[#parts + 1] = "Answer with only a JSON value (no prose, no code fence) that matches this JSON schema:\n"
      .. json.canonical(want)
  end
  local dt = session.def.datetime
  if dt == nil then dt = session.parent ~= nil end
  if dt then parts[#parts + 1] = "Current date and time: " .. os.date("!%Y-%m-%d %H:%M UTC") end
  if type(text) == "table" then -- content parts: the context goes first, as text
    if #parts == 0 then return text end
    local out = { { type = "text", text = table.concat(parts, "\n\n") } }
    for _, p in ipairs(text) do out[#out + 1] = p end
    return out
  end
  if #parts == 0 then return text end
  parts[#parts + 1] = text
  return table.concat(parts, "\n\n")
end

local NO_OPTS = setmetatable({}, { __newindex = function() error("NO_OPTS is read-only", 2) end })

-- The provider's options for this turn: text deltas go to on_delta and the
-- event sink, reasoning text to on_reasoning and the sink; without a
-- listener, no closure (and the provider skips the work of handing text
-- over).
local function complete_opts(run, on_delta, on_reasoning)
  local sink = run.sink
  if not (on_delta or on_reasoning or sink) then return NO_OPTS end
  -- (callbacks, as on_tool_start: one that raises stops the turn, marked)
  on_delta, on_reasoning = guarded(on_delta), guarded(on_reasoning)
  local depth, agent = run.depth, run.agent
  local o = {}
  if on_delta or sink then
    o.on_delta = function(d)
      if on_delta then on_delta(d) end
      if sink then sink { type = "delta", text = d, depth = depth, agent = agent } end
    end
  end
  if on_reasoning or sink then
    o.on_reasoning = function(d)
      if on_reasoning then on_reasoning(d) end
      if sink then sink { type = "reasoning", text = d, depth = depth, agent = agent } end
    end
  end
  if sink then
    -- a call's input as the model writes it (a patch, a query), before the
    -- call is whole: `delta` "" when the call starts
    o.on_tool_input = function(index, id, name, piece)
      sink { type = "tool_input", index = index, id = id, name = name, delta = piece, depth = depth, agent = agent }
    end
  end
  return o
end

-- Usage means the same from every provider: `input` is the whole prompt
-- (cached and cache-written tokens included), `reasoning` is part of
-- `output`. Budgets count input + output.
local function add_usage(run, stats, u, model)
  if not u then return end
  local input, output = u.input or 0, u.output or 0
  local tokens = stats.tokens
  tokens.input = tokens.input + input
  tokens.output = tokens.output + output
  tokens.cached = tokens.cached + (u.cached or 0)
  tokens.cache_write = tokens.cache_write + (u.cache_write or 0)
  tokens.reasoning = tokens.reasoning + (u.reasoning or 0)
  -- a server tool's searches, billed apart from the tokens
  if u.web_searches then stats.web_searches = stats.web_searches + u.web_searches end
  if u.file_searches then stats.file_searches = stats.file_searches + u.file_searches end
  -- What it cost: what the provider says it billed (OpenRouter's
  -- usage.cost), else from the model's price (tide.prices).
  local usd = u.cost_usd or prices.cost(model, u)
  if usd then
    stats.cost_usd = stats.cost_usd + usd
    stats.turn_cost_usd = stats.turn_cost_usd + usd
  else
    stats.unpriced_calls = stats.unpriced_calls + 1
  end
  if run.budget then
    run.budget:tokens(input, output, run.agent, usd)
    -- a dollar budget cannot hold over a call it cannot price (a fallback's
    -- model without one): the turn stops rather than spend unseen
    if not usd and run.budget.limits.usd then run.budget:exhausted_error("usd") end
  end
end

M._add_usage = add_usage -- (a compaction's summary call counts as the turn's calls do)

-- Stops that cut the answer short.
local TRUNCATED = { length = true, content_filter = true }

-- The GenAI attributes of a provider call (the chat span). The provider's
-- name is the semantic conventions' well-known one for the service the
-- request goes to: by its host for the OpenAI-compatible ones, Vertex AI
-- and Bedrock for Claude there.
local PROVIDER_NAMES = { openai = "openai", anthropic = "anthropic", responses = "openai", bedrock = "aws.bedrock" }
local HOST_NAMES = { ["api.deepseek.com"] = "deepseek", ["api.groq.com"] = "groq",
  ["api.mistral.ai"] = "mistral_ai", ["api.x.ai"] = "x_ai", ["api.perplexity.ai"] = "perplexity" }
-- (the name and host of a provider, read from its URL once: weak keys)
local service_of = setmetatable({}, { __mode = "k" })
chat_attributes = function(provider)
  local seen = service_of[provider]
  if not (seen and seen.base_url == provider.base_url and seen.kind == provider.kind
      and seen.key_header == provider.key_header) then
    -- (the host alone: never user information, which may be a credential)
    local authority = type(provider.base_url) == "string" and provider.base_url:match("^%a+://([^/?#]+)")
    authority = authority and authority:gsub("^.*@", "")
    local host = authority and (authority:match("^%b[]") or authority:match("^[^:]+"))
    local name = HOST_NAMES[host] or PROVIDER_NAMES[provider.kind] or provider.kind
    if provider.vertex then
      name = "gcp.vertex_ai"
    elseif provider.bedrock then
      name = "aws.bedrock"
    elseif provider.kind == "openai" and provider.key_header == "api-key" then -- an Azure resource
      name = "azure.ai.openai"
    end
    seen = { base_url = provider.base_url, kind = provider.kind, key_header = provider.key_header, name = name,
      host = host }
    service_of[provider] = seen
  end
  -- (the response's attributes, set by end_chat, named here as nil: the
  -- table is made the size it ends at, not grown twice on the way)
  return { ["gen_ai.operation.name"] = "chat", ["gen_ai.provider.name"] = seen.name,
    ["gen_ai.request.model"] = provider.model, ["server.address"] = seen.host,
    ["gen_ai.response.model"] = nil, ["gen_ai.response.id"] = nil, ["gen_ai.usage.input_tokens"] = nil,
    ["gen_ai.usage.output_tokens"] = nil, ["gen_ai.usage.cache_read.input_tokens"] = nil,
    ["gen_ai.usage.cache_creation.input_tokens"] = nil, ["gen_ai.response.finish_reasons"] = nil,
    ["openai.response.service_tier"] = nil }
end
M._chat_attributes = chat_attributes -- (for the specs)

-- The GenAI client metrics' meter (tide.metrics), or nil when they are off:
-- asked once a turn.
local function meter_of()
  return tracing._config() and require("tide.metrics").meter() or nil
end

-- One provider call, measured by `meter` when there is one.
local function complete(meter, provider, prefix, opts, wire)
  if not meter then return provider:_complete(prefix, opts, wire) end
  local t0 = hrtime()
  local resp, err = provider:_complete(prefix, opts, wire)
  meter(provider, resp, err, hrtime() - t0)
  return resp, err
end
-- (a compaction's summary call is measured as the loop's are)
M._meter_of, M._complete = meter_of, complete

-- The chat span of one provider call of the turn `run` (which has a span).
start_chat = function(run, provider)
  return tracing.start("chat " .. tostring(provider.model), 3, run.span, chat_attributes(provider))
end

-- Ends a chat span with what the response said.
end_chat = function(span, resp, err)
  if resp then
    local a, u = span.attributes, resp.usage or {}
    a["gen_ai.response.model"] = resp.model or a["gen_ai.request.model"]
    if resp.id then a["gen_ai.response.id"] = resp.id end
    a["gen_ai.usage.input_tokens"] = u.input or 0
    a["gen_ai.usage.output_tokens"] = u.output or 0
    a["gen_ai.usage.cache_read.input_tokens"] = u.cached or 0
    a["gen_ai.usage.cache_creation.input_tokens"] = u.cache_write or 0
    if u.reasoning and u.reasoning > 0 then a["gen_ai.usage.reasoning.output_tokens"] = u.reasoning end
    if resp.stop then a["gen_ai.response.finish_reasons"] = { resp.stop } end
    -- (the semantic conventions name OpenAI's tier: the one that served it)
    if u.service_tier and a["gen_ai.provider.name"] == "openai" then
      a["openai.response.service_tier"] = u.service_tier
    end
    if tracing.capture_content() and resp.text then a["gen_ai.output.text"] = resp.text end
  end
  span:finish(err)
end
-- (a compaction's summary call is a provider call of the turn too)
M._start_chat, M._end_chat = start_chat, end_chat

-- The options of a request to a fallback provider (tide.provider.fallback):
-- what the next provider needs to encode the request anew, the schema a
-- provider that holds the model to one puts in its own prefix included.
local function fallback_opts(popts, session, want)
  local history = session.conversation
  return setmetatable({ conversation = { system = history.system, specs = session.surface.specs,
    messages = history.messages, schema = want } }, { __index = popts })
end

-- The tool loop from `first` on: ask the provider, append its answer, run
-- its calls, until an answer without calls. `state` carries what a turn
-- keeps across a pause: the schema it wants and whether the model had its
-- repair turn.
local function loop(session, opts, run, first, state)
  local stats = session.counters
  local history = session.conversation
  local provider = session.provider
  local budget = run.budget
  local want = state.want
  local prefix = session:_prefix(want and provider._native_schema and want or nil)
  local popts = complete_opts(run, opts.on_delta, opts.on_reasoning)
  if run.span then
    -- retries are events of the provider call they belong to
    popts = setmetatable({ on_retry = function(info)
      if run.chat then
        run.chat:event("retry", { attempt = info.attempt, delay_ms = info.delay_ms,
          ["error.type"] = info.error and info.error.code or "error" })
      end
    end }, { __index = popts })
  end
  local fallback = provider._fallback
  -- the prefix as sent: with the container a server tool's code ran in,
  -- made again only when that container changes
  local sent_prefix, sent_container = prefix, nil
  local truncated_error = (opts.truncated or state.truncated or session.truncated) == "error"
  local meter = meter_of()
  local text_tools = session.def.text_tools ~= false
  for iteration = first, session.max_iterations do
    if budget then budget:spend("provider_calls", 1, run.agent) end
    stats.iterations = stats.iterations + 1
    stats.provider_calls = stats.provider_calls + 1
    -- Past the context window (estimated from the last reported usage),
    -- the older conversation is compacted first.
    local limits = session.context and compaction().settings(session)
    if limits and compaction().estimate(session) > limits.window - limits.reserve then
      local ok, cerr = compaction().compact(session, run)
      if ok == nil then return nil, cerr end
    end
    -- The body is the prefix and the encoded history, joined in C into the
    -- request itself.
    local wire = history:encoded()
    local sent_bytes = history.wire_bytes
    local chat = run.span and start_chat(run, provider)
    run.chat = chat
    local copts = fallback and fallback_opts(popts, session, want) or popts
    -- A server tool's code ran in a container: the next requests run in it
    -- too (a paused turn can go on only there).
    if history.container ~= sent_container and provider._container_prefix then
      sent_container = history.container
      sent_prefix = provider:_container_prefix(prefix, sent_container)
    end
    -- The records go out as the request does (see the flush below).
    history:flush(true)
    local resp, err = complete(meter, provider, sent_prefix, copts, wire)
    if not resp and session.context and compaction().is_overflow(err) then
      -- The provider says it does not fit: one compaction, one retry.
      local ok, cerr = compaction().compact(session, run, true)
      if ok == nil then return nil, cerr end
      if ok then
        wire = history:encoded()
        sent_bytes = history.wire_bytes
        copts = fallback and fallback_opts(popts, session, want) or popts -- (the compacted messages)
        resp, err = complete(meter, provider, sent_prefix, copts, wire)
      end
    end
    if chat then end_chat(chat, resp, err) end
    if not resp then return nil, err end
    if resp.fallback then
      stats.fallbacks = stats.fallbacks + 1
      if run.sink then
        run.sink { type = "fallback", from = resp.fallback.from, to = resp.fallback.to,
          error = resp.fallback.error, depth = run.depth, agent = run.agent }
      end
    end
    if resp.usage and (resp.usage.input or 0) > 0 then
      history.usage_input, history.usage_wire_bytes = resp.usage.input, sent_bytes
    end
    add_usage(run, stats, resp.usage, resp.model or provider.model)
    stats.stop_reason = resp.stop
    stats.ttfb_ms = resp.ttfb_ms
    stats.first_ttfb_ms = stats.first_ttfb_ms or resp.ttfb_ms
    -- The request's records are known written before its answer is used
    -- (what it cost is counted all the same): a store that refused them
    -- fails the turn here.
    history:flush()

    local calls, textual = resp.tool_calls, false
    if (not calls or #calls == 0) and text_tools and resp.text then
      calls = textual_calls(resp.text, iteration)
      textual = calls ~= nil
    end
    local done = not calls or #calls == 0
    if not done then distinct_ids(session, calls) end
    local text = resp.text
    if done and resp.stop == "refusal" and (text or "") == "" and resp.refusal then
      -- never silent: what the provider said of the refusal is the answer
      -- (OpenAI's refusal, Anthropic's stop_details.explanation)
      text = resp.refusal
    end
    history:append {
      role = "assistant", content = text or (done and "" or nil),
      tool_calls = not (done or textual) and calls or nil,
      reasoning = resp.reasoning, stop = resp.stop, usage = resp.usage, container = resp.container,
    }
    if done and resp.stop == "pause" then
      -- The provider paused its own loop of server tools (Anthropic's
      -- pause_turn): the reply, now in the history as it came, goes back
      -- as it is and the model goes on from it.
      if budget and budget.exhausted then return nil, budget.exhausted end
      if run.sink then run.sink { type = "paused", depth = run.depth, agent = run.agent } end
      goto next_iteration
    end
    if done then
      if budget and budget.exhausted then return nil, budget.exhausted end
      local reply = text or ""
      if TRUNCATED[resp.stop] then
        -- Never silent: the stop reason is in stats, history and the
        -- transcript, listeners hear of it, and "error" makes it one.
        if run.sink then
          run.sink { type = "truncated", stop_reason = resp.stop, depth = run.depth, agent = run.agent }
        end
        if truncated_error then
          return fail("Truncated", ("the answer was cut short (%s)"):format(resp.stop),
            { stop_reason = resp.stop, partial = reply })
        end
      end
      if resp.stop == "refusal" and run.sink then
        run.sink { type = "refused", text = reply, depth = run.depth, agent = run.agent }
      end
      if not want then return reply end
      if resp.stop == "refusal" then -- (a repair turn would not change its mind)
        return fail("SchemaMismatch", "the model refused to answer: " .. reply,
          { errors = { "refused" }, text = reply, refused = true })
      end
      -- Structured output: the answer must decode and validate; the model
      -- gets one repair turn with what was wrong, then SchemaMismatch.
      local schema = schema_module()
      local value, why = schema.decode_answer(reply)
      local errs = value == nil and { "the answer is not JSON (" .. why .. ")" } or schema.validate(value, want)
      if #errs == 0 then return schema.mark_arrays(value, want) end
      if state.repaired then
        return fail("SchemaMismatch", "the answer does not match the schema: " .. table.concat(errs, "; "),
          { errors = errs, text = reply })
      end
      state.repaired = true
      history:append { role = "user", content = "Your answer does not match the required JSON schema:\n- "
        .. table.concat(errs, "\n- ") .. "\nAnswer again with only the corrected JSON value." }
      goto next_iteration
    end
    if budget and not budget.exhausted and budget:used_up() then
      -- used up exactly: no provider call could read what the calls give
      budget:exhausted_error(budget:used_up())
    end
    if budget and budget.exhausted then
      -- Spent by this very response: answer the calls, then stop.
      answer_all(history, calls, textual, "Error: budget exhausted")
      return nil, budget.exhausted
    end
    do
      run.pending, run.textual = calls, textual
      history:flush() -- the calls are in the transcript before any runs
      local results, stop_err, waiting = run_calls(run, calls)
      run.pending = nil
      if waiting and not stop_err then
        -- Calls wait for a person: the round pauses, the others' results
        -- kept with it (s:resume() finishes it).
        return approval().pause(session, { calls = calls, textual = textual, results = results,
          waiting = waiting, iteration = iteration, want = want, repaired = state.repaired,
          truncated = opts.truncated or state.truncated, budget = budget, tree = run.tree })
      end
      for i = 1, #calls do
        results[i] = results[i] or result(calls[i], "Error: cancelled", true)
      end
      history:append(results_message(results, textual))
      if stop_err then return nil, stop_err end
    end
    ::next_iteration::
  end
  return fail("MaxIterationsExceeded",
    ("exceeded maximum tool iterations (%d)"):format(session.max_iterations),
    { max_iterations = session.max_iterations })
end

-- A turn, in the caller's task: integrations, the frozen prompt, the user
-- message, then the loop. Without `text` it is a turn its process left
-- unfinished, continued in another (tide.queue): the session was resumed
-- from its transcript with the crash-safe rules (calls left without
-- results answered "interrupted", never run again), so its history ends
-- with the turn's user message or a round's results, and the loop goes on
-- from there.
local function body(session, text, opts, run)
  local stats = session.counters
  local history = session.conversation
  local trace = {}
  local t0 = hrtime()
  stats.turns = stats.turns + 1
  stats.turn_cost_usd = 0
  if run.depth > stats.spawn_depth_max then stats.spawn_depth_max = run.depth end

  -- 1. integrations: cold sessions fetch; warm ones only peek for a change.
  session:_update_integrations(trace)
  -- 2. the frozen prompt, once
  if not history.system then
    local ok, err = session:_freeze(trace)
    if not ok then return nil, err end
  end
  session:_prefix()
  local want = opts.schema or session.def.output_schema
  -- 3. the user message (content parts read first: a file that cannot be
  -- read fails the turn before anything reaches the history)
  if text ~= nil then
    if type(text) == "table" then
      local parts, perr = require("tide.content").resolve(text)
      if not parts then return nil, perr end
      text = parts
    end
    history:append { role = "user", content = user_content(session, text, opts, want) }
    if stats.turns == 1 then
      trace[#trace + 1] = { step = "first_request_ready", ms = ms_since(t0) }
      session.trace = trace
    end
  end
  -- a continued turn goes on from the provider calls its transcript holds
  local first = 1
  if text == nil and session.last_turn and session.last_turn.iterations then
    first = session.last_turn.iterations + 1
  end
  return loop(session, opts, run, first, { want = want, repaired = false })
end

-- A paused turn, resumed: finish its round with the decisions made (run
-- the approved calls, answer the rejected ones, resume the sub-agents that
-- waited), then go on with the loop. Calls still undecided keep it paused.
local function resume_body(session, _, opts, run)
  local p = session.paused
  local results = p.results
  local still, approved, approved_at = {}, {}, {}
  for _, w in ipairs(p.waiting) do
    local call = w.call
    local child = (w.child_session or w.child) and approval().child(session, w)
    if (w.child_session or w.child) and not child then
      results[w.index] = result(call, "Error: the paused sub-agent could not be restored", true)
    elseif child then
      local reply, err = require("tide.subagent").resume(session, child)
      if reply then
        results[w.index] = result(call, reply, false)
      elseif err.code == "ApprovalRequired" then
        still[#still + 1] = w
      elseif passes_through(err) then
        return nil, err
      else
        results[w.index] = result(call, "Error: " .. error_text(err), true)
      end
    elseif session.ran[w.id] then
      -- approved and started by a process that died before its result
      results[w.index] = result(call, "Error: interrupted (the call was started, then the session "
        .. "stopped; it may or may not have run)", true)
    else
      local d = session.decisions[w.id]
      if not d then
        still[#still + 1] = w
      elseif d.approved then
        approved[#approved + 1], approved_at[#approved_at + 1] = call, w.index
      else
        results[w.index] = rejected(call, d)
      end
    end
  end
  if #approved > 0 then
    approval().running(session, approved)
    session.conversation:flush()
    local ok, done, stop_err = pcall(run_calls, run, approved)
    if not ok then
      -- Stopped while the approved calls ran (cancelled, say): the round
      -- is finished here, as for an error that stops the turn, so that the
      -- session is not left paused with nothing to decide.
      stop_err = done
      run.pending = approved
      done = settle(run, "Error: cancelled")
      run.pending = nil
    end
    for i, at in ipairs(approved_at) do results[at] = done[i] end
    if stop_err then
      for i = 1, #p.calls do results[i] = results[i] or result(p.calls[i], "Error: cancelled", true) end
      session.paused = nil
      session.conversation:append(results_message(results, p.textual))
      return nil, stop_err
    end
  end
  if #still > 0 then
    p.waiting = still
    return approval().pause(session, p)
  end
  session.paused = nil
  session.conversation:append(results_message(results, p.textual))
  return loop(session, opts, run, p.iteration + 1, p)
end

-- Runs fn(session, text, opts, run) as a turn, in the caller's own task (no
-- task of its own: one coroutine fewer per session in flight). Its
-- task-local values (event sink, budget, the tree's sub-agent count) are
-- set for the turn, seen by the tool and sub-agent tasks it spawns, and
-- restored afterwards.
-- `paused` is the state a resumed turn takes its budget and count from.
local function drive(session, opts, paused, fn, text)
  if session.turn_ctx then return fail("SessionBusy", "a turn is already in progress on this session") end
  local ctx = core.context()
  local saved_event, saved_budget = rawget(ctx, "tide_on_event"), rawget(ctx, "tide_budget")
  local saved_tree = rawget(ctx, "tide_tree")
  -- A root turn counts the sub-agent runs of its whole tree against the
  -- session's ceiling; sub-agent turns find the count in their context.
  local tree = ctx.tide_tree or (paused and paused.tree) or { subagents = 0, max = session.max_subagents }
  local inherited_budget = ctx.tide_budget
  local budget = inherited_budget or (paused and paused.budget)
  if not budget and session.budget_limits then budget = tree_budget().new(session.budget_limits) end
  -- (a sub-agent's turn inherits its root's sink, guarded already)
  local sink = opts.on_event and guarded(opts.on_event) or ctx.tide_on_event
  local on_start, on_end = guarded(opts.on_tool_start), guarded(opts.on_tool_end)
  -- The turn in progress: `caller` is the task it runs in (what cancel
  -- interrupts), `tasks` its live tool and sub-agent tasks, `pending` the
  -- calls being run (answered by the repair if the turn stops).
  local run = {
    session = session, budget = budget, sink = sink, on_start = on_start, on_end = on_end,
    listen = (sink or on_start or on_end) ~= nil, depth = core.depth(), agent = session.agent_path,
    cap = session.result_cap, tasks = {}, caller = core.current(), pending = false, textual = false,
    tree = tree,
  }
  -- The turn's invoke_agent span, under the delegating tool's span or the
  -- caller's traceparent; nil while tracing is off.
  local saved_span = rawget(ctx, "tide_span")
  if tracing.enabled() then
    local parent = ctx.tide_span or tracing.parse_traceparent(opts.traceparent)
    run.span = tracing.start("invoke_agent " .. session.def.id, 1, parent, {
      ["gen_ai.operation.name"] = "invoke_agent", ["gen_ai.agent.name"] = session.def.id,
      ["gen_ai.agent.id"] = session.agent_path, ["gen_ai.request.model"] = session.provider.model })
    if run.span then
      ctx.tide_span = run.span
      local tk = session.counters.tokens
      run.tokens0 = { tk.input, tk.output, session.counters.cost_usd }
    else
      ctx.tide_span = tracing.UNSAMPLED -- (its sub-agents' turns are not sampled either)
    end
  end
  ctx.tide_on_event = sink
  ctx.tide_budget = budget
  ctx.tide_tree = tree
  session.turn_ctx = run
  local history = session.conversation
  history:hold(true)
  -- A budget spent below the root (a sub-agent, a sibling call) stops the
  -- whole turn at once, as the wall-time watchdog does; spent in the root's
  -- own task, the loop sees it and stops itself.
  local owns_budget = budget and not inherited_budget
  if owns_budget then
    budget.on_exhausted = function()
      if core.current() ~= run.caller and session.turn_ctx == run then session:cancel() end
    end
  end
  local watchdog
  if budget and not inherited_budget and budget.limits.wall_ms then
    watchdog = core.spawn(function()
      core.sleep(budget.limits.wall_ms)
      budget:exhausted_error("wall_ms")
      session:cancel()
    end)
  end
  local ok, reply, err = pcall(fn, session, text, opts, run)
  if not ok then reply, err = nil, reply end
  if watchdog then watchdog:cancel() end
  if owns_budget then budget.on_exhausted = nil end
  -- the turn's last records; a store that cannot keep them fails the turn
  local fok, ferr = pcall(history.hold, history, false)
  if not fok and reply ~= nil then reply, err = nil, ferr end
  for _, t in ipairs(run.tasks) do t:cancel() end
  rawset(ctx, "tide_on_event", saved_event)
  rawset(ctx, "tide_budget", saved_budget)
  rawset(ctx, "tide_tree", saved_tree)
  rawset(ctx, "tide_span", saved_span)
  session.turn_ctx = nil
  if run.span then
    local a, tk, c = run.span.attributes, session.counters.tokens, session.counters
    a["gen_ai.usage.input_tokens"] = tk.input - run.tokens0[1]
    a["gen_ai.usage.output_tokens"] = tk.output - run.tokens0[2]
    a["tide.cost_usd"] = c.cost_usd - run.tokens0[3]
    if reply == nil and type(err) == "table" and err.code == "ApprovalRequired" then
      run.span:event("approval_required", { count = err.pending and #err.pending or 0 })
      run.span:finish()
    else
      run.span:finish(reply == nil and err or nil)
    end
  end
  if session.cancelling then
    session.cancelling = nil
    core.clear_interrupt() -- an interrupt that arrived after the last wait
  end
  if budget and not inherited_budget then session.last_budget = budget end
  if reply == nil and err ~= nil then
    if type(err) ~= "table" or err.code == nil then
      err = core.error("TurnFailed", error_text(err), { detail = err })
    end
    local exhausted = budget and budget.exhausted
    if run.pending then
      -- Stopped mid-tools (cancelled, out of budget, a callback that
      -- raised): answer the pending calls so that the history (and
      -- transcript) stays a valid conversation; providers refuse a call
      -- without its result in every later request.
      local why = exhausted and "Error: budget exhausted" or err.code == "Cancelled" and "Error: cancelled"
        or "Error: the turn stopped (" .. tostring(err.code) .. ")" -- (the app's error is not the model's)
      -- (a store that cannot take it fails the next append too; the error
      -- that stopped the turn is the one to report)
      pcall(session.conversation.append, session.conversation, results_message(settle(run, why), run.textual))
    end
    if exhausted then err = exhausted end
    return nil, err
  end
  return reply
end

--- Runs one turn of `session` in the caller's task. Returns the reply (a
--- table with a schema), or nil and the error; a cancelled or budget-stopped
--- turn leaves every call answered; a turn whose calls wait for a person
--- returns ApprovalRequired (see tide.approval).
---@param session tide.session
---@param text string|table
---@param opts table the turn's options (checked)
---@return any reply
---@return table|nil err
function M.run(session, text, opts)
  if session.paused then return nil, approval().required(session) end
  return drive(session, opts, nil, body, text)
end

--- Continues the turn a process left unfinished in `session`'s transcript
--- (see body); a paused one stays paused (ApprovalRequired).
---@return any reply
---@return table|nil err
function M.continue(session, opts)
  if session.paused then return nil, approval().required(session) end
  return drive(session, opts, nil, body, nil)
end

--- Resumes the paused turn of `session` with the decisions made.
---@return any reply
---@return table|nil err
function M.resume(session, opts)
  local p = session.paused
  if not p then return fail("NothingPending", "no turn of this session is paused") end
  return drive(session, opts, p, resume_body, nil)
end

return M
