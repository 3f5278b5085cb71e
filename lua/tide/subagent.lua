--- tide.subagent: running a sub-agent for a delegation tool call.
---
--- The child runs in a task one spawn level deeper than its parent (set in C
--- on the child's own task context), with its own session: its own prompt
--- plus the role contract, its own transcript named after the parent chain,
--- and only the tools its definition allows. Only its final text returns to
--- the parent; failures become tool errors for the parent model.
---@class tide.subagent
local M = {}

local core = require "tide.core"
local tool = require "tide.tool"
local agents = require "tide.agents"

local SUBAGENT_MAX_ITERATIONS = 8

local hrtime = core.hrtime
local function ms_since(t0) return (hrtime() - t0) / 1e6 end

local function integrations_cache() return require("tide.integrations.cache") end

-- The session module (loaded by the time a sub-agent runs: only a
-- session's delegation tools call in here).
local function session_module() return require "tide.session" end
local function error_text(err) return require("tide.turn").error_text(err) end
local function passes_through(err) return require("tide.turn")._passes_through(err) end
local function emit(ev) return session_module()._emit(ev) end

-- A delegation that cannot run: the parent model reads it as a tool error.
local function tool_error(fmt, ...)
  return nil, core.error("ToolError", fmt:format(...))
end

local function builtin_integrations_agent()
  local def = agents.get("integrations_agent")
  if def then return def end
  return agents.define {
    id = "integrations_agent",
    prompt = "integrations_agent",
    when_to_use = "Works with one connected integration (toolkit) directly.",
    max_iterations = SUBAGENT_MAX_ITERATIONS,
  }
end

--- The most tools one request may carry (tide.surface's MAX_TOOLS). An
--- integrations agent whose toolkit has more callable actions gets the
--- first MAX_DIRECT of them (the source's order: curated first) and two
--- tools that reach the rest: `find_actions` (search by words) and
--- `run_action` (run one by its name). A clear, bounded surface beats an
--- error the model cannot act on.
M.MAX_TOOLS = require("tide.surface").MAX_TOOLS
M.MAX_DIRECT = 100

-- A tool name every provider takes ([A-Za-z0-9_-]{1,64}, starting with a
-- letter or _), unique among `taken`: an action name that is not one is
-- mapped (illegal characters to _, a long one cut with a hash of the whole
-- name), and the tool keeps the action's own name to run it.
local function legal_name(name, taken)
  taken = taken or {}
  local n = name:gsub("[^%w_%-]", "_")
  if not n:match("^[%a_]") then n = "_" .. n end
  if #n > 64 then n = n:sub(1, 55) .. "_" .. core.hash(name):sub(1, 8) end
  local base, k = n, 1
  while taken[n] do
    k = k + 1
    local suffix = "_" .. k
    n = base:sub(1, 64 - #suffix) .. suffix
  end
  taken[n] = true
  return n
end
M.legal_name = legal_name -- (the toolkits' delegate tools take their names from it too)

-- Runs action `a` of source `src` with `args`: its text, or raises the
-- failure (a tool error for the model).
local function run(src, a, args, ctx)
  if type(a.handler) == "function" then return a.handler(args) end
  if src and type(src.execute) == "function" then
    local r, err = src:execute(a.name, args, ctx)
    if r == nil then error(err or "the action failed", 0) end
    return r
  end
  error("this integration source cannot execute actions", 0)
end

-- The approval rule for `action` of `src` (several sources: the owner's).
local function rule_of(src, action)
  if not src then return nil end
  if src.rule_for then return src:rule_for(action) end
  return src.approval
end

-- Action `a` as a tool, named legally among `taken`: run on `src`, under
-- its approval rule; or, without `src`, on the calling session's source
-- (an agent's own surface, shared by sessions), its rule looked up per call.
local function action_tool(a, taken, src)
  local approval = require "tide.approval"
  local rule, handler
  if src then
    rule = approval.for_action(rule_of(src, a.name), a)
    handler = function(args, ctx) return run(src, a, args, ctx) end
  else
    rule = function(args, ctx)
      local r = approval.for_action(rule_of(ctx and ctx.session.src, a.name), a)
      if type(r) == "function" then return r(args) end
      return r == true
    end
    handler = function(args, ctx) return run(ctx.session.src, a, args, ctx) end
  end
  -- (a source's schema that is not an object one, which every provider
  -- would refuse, is offered as an open object: the action still runs)
  local params = a.parameters
  if type(params) ~= "table" or (params.type ~= nil and params.type ~= "object") then
    params = { type = "object", properties = {} }
  end
  return tool.new {
    name = legal_name(a.name, taken),
    description = a.description or a.name,
    parameters = params,
    approval = rule,
    handler = handler,
  }
end

-- A toolkit's actions as tools (those of `only`, when given): all of them
-- when they fit in a request, else the first MAX_DIRECT and find_actions /
-- run_action for the rest. `src` runs them (nil: the calling session's).
local function toolkit_tools(src, tk, only)
  local out, taken = {}, {}
  local approval = require "tide.approval"
  local actions = tk.tools or {}
  if only then
    local keep, some = {}, {}
    for _, n in ipairs(only) do keep[n] = true end
    for _, a in ipairs(actions) do if keep[a.name] then some[#some + 1] = a end end
    actions = some
  end
  local direct = #actions <= M.MAX_TOOLS and #actions or M.MAX_DIRECT
  for i = 1, direct do out[#out + 1] = action_tool(actions[i], taken, src) end
  if direct < #actions then
    local by_name = {}
    for _, a in ipairs(actions) do by_name[a.name] = a end
    out[#out + 1] = tool.new {
      name = legal_name("find_actions", taken),
      description = ("Searches the %d actions of %s that are not offered as tools directly; gives the "
        .. "matching ones with their parameters, to run with run_action."):format(#actions - direct, tk.slug),
      parameters = { type = "object", required = { "query" },
        properties = { query = { type = "string", description = "Words the action's name or description contains." } } },
      handler = function(args)
        local words = {}
        for w in tostring(args.query or ""):lower():gmatch("%w+") do words[#words + 1] = w end
        local found = {}
        for i = direct + 1, #actions do
          local a = actions[i]
          local hay = (a.name .. " " .. (a.description or "")):lower()
          local all = #words > 0
          for _, w in ipairs(words) do if not hay:find(w, 1, true) then all = false end end
          if all then
            found[#found + 1] = { name = a.name, description = a.description or "",
              parameters = a.parameters or { type = "object", properties = {} } }
            if #found == 10 then break end
          end
        end
        if #found == 0 then return "No action matches; try other words." end
        return found
      end,
    }
    out[#out + 1] = tool.new {
      name = legal_name("run_action", taken),
      description = ("Runs one action of %s by its exact name (from find_actions), with its arguments.")
        :format(tk.slug),
      parameters = { type = "object", required = { "action", "arguments" }, properties = {
        action = { type = "string" }, arguments = { type = "object" } } },
      approval = function(args, ctx)
        local a = by_name[args.action]
        local r = a and approval.for_action(rule_of(src or (ctx and ctx.session.src), a.name), a)
        if type(r) == "function" then return r(args.arguments or {}) end
        return r == true
      end,
      handler = function(args, ctx)
        local a = by_name[args.action]
        if not a then error(("no action '%s' in %s"):format(tostring(args.action), tk.slug), 0) end
        return run(src or ctx.session.src, a, type(args.arguments) == "table" and args.arguments or {}, ctx)
      end,
    }
  end
  return out
end

-- The integrations agent's options for toolkit `slug`, against the freshest
-- view: its tools and snapshot; or nil and the tool error (an unknown
-- toolkit), or false and the text that asks the user to connect it.
local function toolkit_opts(parent, slug)
  local snap = parent.snapshot
  if parent.src then snap = integrations_cache().peek(parent.src) or snap end
  local tk, slugs = nil, {}
  for _, k in ipairs(snap and snap.toolkits or {}) do
    slugs[#slugs + 1] = k.slug
    if k.slug == slug then tk = k end
  end
  if not tk then
    return tool_error("unknown toolkit '%s'. Valid toolkits: %s", slug, table.concat(slugs, ", "))
  end
  if not tk.connected then
    return false, ("The %s integration is not connected. Ask the user to authorize %s, then try again; do not retry before that.")
      :format(tk.slug, tk.slug)
  end
  return { toolkit = tk.slug, snapshot = snap, tools = toolkit_tools(parent.src, tk) }
end

-- A child session of `parent` for definition `def` (transcript `tpath`, or
-- `resume` one).
local function child_session(parent, def, sub_opts, child_path, tpath, resume)
  return session_module().new {
    agent = def, provider = parent.provider, integrations = parent.src, config = parent.config,
    transcript = not resume and tpath or nil, resume = resume, tools = sub_opts.tools, _store = parent.store,
    tool_timeout_ms = parent.tool_timeout_ms, result_cap_bytes = parent.result_cap,
    _parent = parent, _parent_tools = parent:_base(), _toolkit = sub_opts.toolkit,
    _snapshot = sub_opts.snapshot, _agent_path = child_path,
  }
end

-- Closes a child session however its task ends (a call's timeout or a
-- cancel unwinds the task too), unless it is kept: a child paused for
-- approval stays open for s:resume().
local closer_mt = { __close = function(self) if not self.keep then self.session:close() end end }

-- Runs `fn(child)` one spawn level below `parent`, in a task of its own;
-- maps what it gives to what a delegation gives: the child's text, or nil
-- and a ToolError; what stops a turn (BudgetExhausted, Cancelled, a
-- listener's failure) raises through, and a child that paused for approval
-- gives ApprovalRequired with the child (it stays open: s:resume()
-- continues it). `tree`, when given, counts the run once its task exists:
-- a spawn refused for its depth runs no sub-agent.
local function in_child_task(parent, child_path, open, fn, tree)
  local child
  -- The child's failures are given back, never raised: a parent stopped
  -- at once (the tree's budget spent, a cancel) does not join this task,
  -- and a failed task nobody joined is reported as a fault.
  local task, err = core.spawn_nested(parent.def.max_spawn_depth, function()
    local c, cerr = open()
    if not c then return nil, cerr end
    child = c
    local closer <close> = setmetatable({ session = c }, closer_mt)
    emit { type = "subagent_start", agent = child_path, depth = core.depth() }
    local t0 = hrtime()
    local reply, e = fn(c)
    emit { type = "subagent_end", agent = child_path, depth = core.depth(), ms = ms_since(t0), ok = reply ~= nil }
    local cs = c.counters
    if cs.spawn_depth_max > parent.counters.spawn_depth_max then parent.counters.spawn_depth_max = cs.spawn_depth_max end
    if reply == nil and type(e) == "table" and e.code == "ApprovalRequired" then
      closer.keep = true
      return false, e
    end
    if reply == nil then return nil, e end
    return reply
  end)
  if not task then
    -- Before any provider call: the parent model sees a tool error.
    return tool_error("%s", error_text(err))
  end
  if tree then tree.subagents = tree.subagents + 1 end
  local reply, e = task:join()
  if reply == false then
    return nil, core.error("ApprovalRequired", e.message, { pending = e.pending, session = child })
  end
  if reply == nil then
    if passes_through(e) then error(e, 0) end
    return tool_error("sub-agent %s failed: %s", child_path, error_text(e))
  end
  return reply
end

--- The actions of toolkit `tk` (those named in `only`, or all) as tools of
--- an agent's own surface: run on the calling session's source, under its
--- approval rule; names mapped to legal ones and a toolkit too big for one
--- request reached through find_actions and run_action, as for the
--- integrations agent.
function M.direct_toolkit_tools(tk, only)
  return toolkit_tools(nil, tk, only) -- (run on the calling session's source)
end

--- Runs a sub-agent for the tool call of `parent`: its final text, or nil
--- and a ToolError (BudgetExhausted and Cancelled raise through; a sub-agent
--- whose calls wait for approval gives ApprovalRequired with its session).
function M.run(parent, id, args, opts)
  opts = opts or {}
  local task_text = args.task
  if type(task_text) ~= "string" or task_text == "" then
    return tool_error("the 'task' argument (a string) is required")
  end
  local sub_opts = {}
  if opts.toolkit then
    local o, why = toolkit_opts(parent, opts.toolkit)
    if o == false then return why end
    if not o then return nil, why end
    sub_opts = o
    id = "integrations_agent"
  end
  local def = id == "integrations_agent" and builtin_integrations_agent() or agents.get(id)
  if not def then
    return tool_error("unknown sub-agent '%s'", id)
  end
  -- The tree's ceiling on sub-agent runs: the parent model is told, and can
  -- still answer with what it has.
  -- (checked here, counted when the child's task is made: nothing between
  -- waits, so parallel delegations cannot pass the ceiling together)
  local tree = core.context("tide_tree")
  if tree and tree.subagents >= tree.max then
    return nil, core.error("SubagentLimit", ("this turn has already run %d sub-agents, its limit "
      .. "(max_subagents); answer with what you have"):format(tree.max), { limit = tree.max })
  end
  local child_path = parent.agent_path .. "/" .. (sub_opts.toolkit and ("integrations:" .. sub_opts.toolkit) or id)
  return in_child_task(parent, child_path, function()
    local tpath
    local w = parent.conversation.writer
    if w then
      -- in the parent's store (a file beside it, or a list in Redis)
      tpath = parent.store.child_name(w.path, sub_opts.toolkit or id, core.current():id())
    end
    return child_session(parent, def, sub_opts, child_path, tpath)
  end, function(c) return c:turn(task_text) end, tree)
end

--- Resumes `child`, a sub-agent of `parent` paused for approval, one spawn
--- level below the parent: as run gives.
function M.resume(parent, child)
  return in_child_task(parent, child.agent_path, function() return child end,
    function(c) return c:resume() end)
end

--- Restores a paused sub-agent of `parent` from its transcript (`info`: the
--- pause record's { path, agent, toolkit, agent_path }), after a restart.
function M.restore(parent, info)
  local sub_opts = {}
  if info.toolkit then
    local o, why = toolkit_opts(parent, info.toolkit)
    if not o then return nil, why end
    sub_opts = o
  end
  local def = info.toolkit and builtin_integrations_agent() or agents.get(info.agent)
  if not def then return nil end
  return child_session(parent, def, sub_opts, info.agent_path, nil, info.path)
end

return M
