--- tide.surface: the tools a session's model sees. Direct tools (the
--- agent's own, resolved against the parent's for sub-agents), one
--- delegation tool per named sub-agent, one `delegate_<slug>` per connected
--- toolkit, and the checks a call meets before it runs.
---
--- Sessions built from the same agent definition and the same integration
--- snapshot share one surface (tool list, schemas, rendered prompt, encoded
--- prefix): ten thousand sessions hold one copy, not ten thousand.
---@class tide.surface
local M = {}

local json = require "tide.json"
local tool = require "tide.tool"
local agents = require "tide.agents"

--- The most tools one request may carry: OpenAI's limit (Anthropic's is
--- higher). Past it, toolkit delegates are left out (see build), and an
--- integrations agent reaches the rest of a large toolkit through two
--- tools (tide.subagent).
M.MAX_TOOLS = 128
-- The yes-or-no check of a tool's arguments against its parameters, by the
-- parameters table (tide.schema.lenient_checker), or false for a schema
-- with nothing to check; tide.schema is loaded with the first.
local checkers = setmetatable({}, { __mode = "k" })
local function arguments_checker(params)
  local c = (params.required ~= nil or (type(params.properties) == "table" and next(params.properties) ~= nil))
    and require("tide.schema").lenient_checker(params) or false
  checkers[params] = c
  return c
end

-- surface cache: def -> generation -> snapshot (or false) -> surface.
-- Weak keys: a surface lives as long as its definition and snapshot do.
local surfaces = setmetatable({}, { __mode = "k" })

local function sanitize(slug)
  return (slug:lower():gsub("[^a-z0-9_]", "_"))
end
M.sanitize = sanitize

local function tool_list_names(list)
  local names = {}
  for i, t in ipairs(list) do names[i] = t.name end
  return table.concat(names, ", ")
end

local delegate_params = {
  type = "object",
  properties = {
    task = { type = "string", description = "What the sub-agent should do, with all the context it needs." },
  },
  required = json.array { "task" },
}

-- Per-snapshot toolkit delegation tools, shared by every session on it.
local toolkit_delegates = setmetatable({}, { __mode = "k" })

-- Delegation handlers run a sub-agent (tide.subagent, which builds sessions
-- with this module: required on first use to break the cycle).
local function run_subagent(...) return require("tide.subagent").run(...) end

local function toolkit_delegate_tools(snapshot)
  local cached = toolkit_delegates[snapshot]
  if cached then return cached end
  local list, taken = {}, {}
  for _, tk in ipairs(snapshot.toolkits) do
    if tk.connected then
      local slug = tk.slug
      list[#list + 1] = tool.new {
        -- (a legal name however long the slug, and two slugs that sanitize
        -- alike, a-b and a_b, two names)
        name = require("tide.subagent").legal_name("delegate_" .. sanitize(slug), taken),
        description = ("Delegate a task to the %s integration agent, which can use %s directly. %s")
          :format(slug, slug, tk.description or ""),
        parameters = delegate_params,
        handler = function(args, ctx)
          return run_subagent(ctx.session, "integrations_agent", args, { toolkit = slug })
        end,
      }
      list[#list].toolkit = slug
    end
  end
  toolkit_delegates[snapshot] = list
  return list
end

local named_delegate_cache = setmetatable({}, { __mode = "k" })

local function named_delegate(id, subdef)
  local by_gen = named_delegate_cache[subdef]
  if by_gen then return by_gen end
  local t = tool.new {
    name = subdef.delegate_name or ("delegate_" .. sanitize(id)),
    description = subdef.when_to_use or ("Delegate a task to the " .. id .. " agent."),
    parameters = delegate_params,
    handler = function(args, ctx) return run_subagent(ctx.session, id, args) end,
  }
  t.subagent = id
  named_delegate_cache[subdef] = t
  return t
end

--- Builds the tool surface of `def` against `snapshot` (nil: no toolkits).
--- `base` is the list of direct tools. Returns the surface; `warnings` lists
--- unknown sub-agent ids.
---@param def table the agent definition
---@param base tide.tool[] the direct tools
---@param snapshot table|nil the integration snapshot
---@return table surface { tools, map, synthesized, specs, warnings, snapshot, prefixes }
function M.build(def, base, snapshot)
  local list, map, synthesized, warnings = {}, {}, {}, nil
  for _, t in ipairs(base) do
    if not map[t.name] then
      list[#list + 1] = t
      map[t.name] = t
    end
  end
  -- A connected toolkit's actions offered directly ({ toolkit, only }), as
  -- MCP users expect of a server's tools: run on the session's source.
  if snapshot and type(def.tools) == "table" then
    for _, entry in ipairs(def.tools) do
      if type(entry) == "table" and entry.toolkit then
        for _, tk in ipairs(snapshot.toolkits) do
          if tk.slug == entry.toolkit and tk.connected then
            for _, t in ipairs(require("tide.subagent").direct_toolkit_tools(tk, entry.only)) do
              if not map[t.name] then
                list[#list + 1] = t
                map[t.name] = t
              end
            end
          end
        end
      end
    end
  end
  local function insert(t)
    -- A synthesised name that collides with an existing tool is dropped, and
    -- only names actually inserted are recorded, so a refresh never removes
    -- a direct tool.
    if map[t.name] then return end
    list[#list + 1] = t
    map[t.name] = t
    synthesized[t.name] = true
  end
  for _, entry in ipairs(def.subagents or {}) do
    if type(entry) == "table" and entry.toolkits == "*" then
      if snapshot then
        for _, t in ipairs(toolkit_delegate_tools(snapshot)) do insert(t) end
      end
    else
      local id = type(entry) == "string" and entry or entry.id
      local subdef = agents.get(id)
      if subdef then
        insert(named_delegate(id, subdef))
      else
        warnings = warnings or {}
        warnings[#warnings + 1] = ("unknown sub-agent '%s' skipped"):format(id)
      end
    end
  end
  -- No request carries more tools than providers take (OpenAI: 128): past
  -- it, toolkit delegates beyond the limit are left out, with a warning
  -- (direct tools and named sub-agents keep their places).
  local MAX = M.MAX_TOOLS
  if #list > MAX then
    local kept, dropped = {}, 0
    for _, t in ipairs(list) do
      if #kept < MAX or not t.toolkit then kept[#kept + 1] = t else
        dropped = dropped + 1
        map[t.name], synthesized[t.name] = nil, nil
      end
    end
    list = kept
    warnings = warnings or {}
    warnings[#warnings + 1] = ("%d toolkit delegates left out: a request carries at most %d tools"):format(dropped, MAX)
  end
  local specs = {}
  for i, t in ipairs(list) do specs[i] = tool.spec(t) end
  return {
    tools = list, map = map, synthesized = synthesized, specs = specs,
    warnings = warnings, snapshot = snapshot, prefixes = {},
  }
end

--- The surface shared by every session of definition `def` on `snapshot`;
--- the direct-tool list (`base()`) is only built when the surface is.
---@param def table
---@param base fun():tide.tool[]
---@param snapshot table|nil
function M.shared(def, base, snapshot)
  local gen = agents.generation()
  local by_def = surfaces[def]
  if not by_def then
    by_def = setmetatable({}, { __mode = "k" })
    surfaces[def] = by_def
  end
  local key = snapshot or by_def
  local entry = by_def[key]
  if entry and entry.gen == gen then return entry.surface end
  local s = M.build(def, base(), snapshot)
  by_def[key] = { gen = gen, surface = s }
  return s
end

--- The direct tools of definition `def`: its `tools` ("*" or a list of
--- tools and names of the parent's tools), less `disallowed_tools`, plus
--- `extra_tools`.
---@param def table
---@param parent_tools? tide.tool[]
---@return tide.tool[]
function M.direct_tools(def, parent_tools)
  local out = {}
  local spec = def.tools
  if spec == "*" then
    for _, t in ipairs(parent_tools or {}) do out[#out + 1] = t end
  elseif spec then
    for _, t in ipairs(spec) do
      if type(t) == "string" then
        for _, pt in ipairs(parent_tools or {}) do
          if pt.name == t then out[#out + 1] = pt break end
        end
      elseif t.toolkit == nil then
        out[#out + 1] = t
      end -- (a toolkit's actions come with the snapshot: M.build)
    end
  end
  if def.disallowed_tools then
    local drop = {}
    for _, n in ipairs(def.disallowed_tools) do drop[n] = true end
    local kept = {}
    for _, t in ipairs(out) do if not drop[t.name] then kept[#kept + 1] = t end end
    out = kept
  end
  for _, t in ipairs(def.extra_tools or {}) do out[#out + 1] = t end
  return out
end

-- ------------------------------------------------------- gated catalogue --

-- A toolkit's gated actions go into a prompt frozen for the whole session
-- and paid for on every request: listing them all (GitHub alone has ~180)
-- costs thousands of tokens. The prompt gets counts by reason and, within a
-- byte budget, the first few names, in the order the source gives (sources
-- put the most relevant first).
M.GATED_SHOWN = 12 -- names shown per toolkit, at most
M.GATED_BUDGET = 1536 -- bytes of shown names, descriptions and reasons per toolkit
local GATED_DESCRIPTION = 96 -- bytes of a shown action's description

local function clip(s, n)
  if #s <= n then return s end
  local cut = s:sub(1, n):match("^(.*%S)%s") or s:sub(1, n)
  -- never end inside a UTF-8 sequence
  cut = cut:gsub("[\xC0-\xFF][\x80-\xBF]*$", "")
  return cut .. "..."
end

--- The summary of a toolkit's `gated_tools` for the prompts: `gated_count`,
--- `gated_reasons` (`{ reason, count }`, most frequent first), `gated_tools`
--- (the first `GATED_SHOWN` that fit in `GATED_BUDGET` bytes, each
--- `{ name, description, reason }`), `gated_more` (how many are not shown)
--- and `has_gated`, `has_more`.
---@param gated table[]|nil
---@return table
function M.gated_summary(gated)
  gated = gated or {}
  local counts, reasons = {}, {}
  for _, g in ipairs(gated) do
    local r = g.reason or "not available"
    if not counts[r] then reasons[#reasons + 1] = r; counts[r] = 0 end
    counts[r] = counts[r] + 1
  end
  table.sort(reasons, function(a, b)
    if counts[a] ~= counts[b] then return counts[a] > counts[b] end
    return a < b
  end)
  local by_reason = {}
  for i, r in ipairs(reasons) do by_reason[i] = { reason = r, count = counts[r] } end
  local shown, used = {}, 0
  for _, g in ipairs(gated) do
    if #shown >= M.GATED_SHOWN then break end
    local entry = { name = g.name, description = clip(g.description or "", GATED_DESCRIPTION),
                    reason = g.reason or "not available" }
    local cost = #entry.name + #entry.description + #entry.reason + 16
    if used + cost > M.GATED_BUDGET then break end
    used = used + cost
    shown[#shown + 1] = entry
  end
  local more = #gated - #shown
  return { gated_count = #gated, gated_reasons = by_reason, gated_tools = shown,
           gated_more = more, has_more = more > 0, has_gated = #gated > 0 }
end

--- The data a system prompt template is rendered with (docs/internals.md):
--- the agent, the visible tools, the sub-agents and the connected toolkits
--- of `snapshot` (with `own_toolkit`: the integrations agent's own).
---@param def table
---@param surface table
---@param snapshot table|nil
---@param own_toolkit string|nil
---@return table
function M.prompt_data(def, surface, snapshot, own_toolkit)
  local data = {
    agent = { id = def.id, display_name = def.display_name or def.id,
      when_to_use = def.when_to_use or "" },
    toolkits = {}, tools = {}, subagents = {}, has_toolkits = false,
  }
  local delegates = {}
  for _, t in ipairs(surface.tools) do
    data.tools[#data.tools + 1] = { name = t.name, description = t.description }
    if t.toolkit then delegates[t.toolkit] = t.name end
    if t.subagent then
      local sd = agents.get(t.subagent)
      data.subagents[#data.subagents + 1] = { id = t.subagent, tool = t.name,
        when_to_use = sd and sd.when_to_use or "" }
    end
  end
  local own
  if snapshot then
    for _, tk in ipairs(snapshot.toolkits) do
      if tk.connected then
        local entry = M.gated_summary(tk.gated_tools)
        entry.slug, entry.description = tk.slug, tk.description or ""
        entry.delegate = delegates[tk.slug] or ""
        entry.tools, entry.more = M.offered_actions(tk.tools)
        data.toolkits[#data.toolkits + 1] = entry
        if tk.slug == own_toolkit then own = entry end
      end
    end
  end
  data.has_toolkits = #data.toolkits > 0
  data.toolkit = own
  return data
end

--- A toolkit's actions as its prompt lists them: those offered as tools
--- ({ name, description }; a toolkit too big for one request offers its
--- first ones, the rest through find_actions: tide.subagent), and how many
--- more there are (false: none).
---@param actions table[]|nil
---@return table[] tools
---@return integer|false more
function M.offered_actions(actions)
  actions = actions or {}
  local sub = require "tide.subagent"
  local shown = #actions <= sub.MAX_TOOLS and #actions or sub.MAX_DIRECT
  local out = {}
  for i = 1, shown do
    local a = actions[i]
    out[i] = { name = tostring(a.name), description = type(a.description) == "string" and a.description or "" }
  end
  return out, shown < #actions and #actions - shown or false
end

-- A custom tool's input (tide.tool's `format`): the call's text as it came
-- when the provider called it as a custom tool, else (a provider without
-- custom tools, or a call written as text) the `input` string of its JSON
-- arguments.
local function custom_input(t, call)
  local a = call.arguments
  if call.custom then return t, type(a) == "string" and a or "" end
  local args = type(a) == "string" and a:match("^%s*{") and json.decode(a)
  if type(args) == "table" and type(args.input) == "string" then return t, args.input end
  return nil, ("Error: the arguments for '%s' must be a JSON object with an 'input' string (the tool's "
    .. "input text)"):format(call.name)
end

--- Checks a call against `surface`: returns the tool and its decoded
--- arguments, or nil and the error text the model gets back (a malformed
--- call, arguments that are not a JSON object, a gated action of
--- `snapshot`, a tool outside the surface).
---@param surface table
---@param snapshot table|nil
---@param call {name:string, arguments:string, malformed?:string}
function M.check_call(surface, snapshot, call)
  local t = not call.malformed and surface.map[call.name]
  if t and t.format then return custom_input(t, call) end
  if t then
    local a = call.arguments
    if a == nil or a == "" then a = "{}" end
    local args, jerr
    if type(a) == "string" then args, jerr = json.decode(a) end
    -- lua-cjson decodes an array to a table too: an object starts with "{"
    if type(args) == "table" and a:match("^%s*{") then
      -- Arguments that break the tool's parameters never reach its handler
      -- (or server): the model reads what is wrong and calls again.
      local params = t.parameters
      local check = params and checkers[params]
      if check == nil and type(params) == "table" then check = arguments_checker(params) end
      if check and not check(args) then
        local errs = require("tide.schema").validate_lenient(args, params)
        return nil, ("Error: the arguments for '%s' do not match its parameters: %s"):format(call.name,
          table.concat(errs, "; "))
      end
      return t, args
    end
    local what = jerr and jerr.message
    if not what then
      what = type(a) ~= "string" and type(a) or type(args) == "table" and "an array"
        or args == json.null and "null" or type(args)
    end
    return nil, ("Error: the arguments for '%s' are not a JSON object (%s)"):format(call.name, what)
  end
  if call.malformed then
    return nil, ("Error: could not parse the tool call (%s)"):format(call.malformed)
  end
  local gated
  if snapshot then
    for _, tk in ipairs(snapshot.toolkits) do
      for _, g in ipairs(tk.gated_tools or {}) do
        if g.name == call.name then gated = g end
      end
    end
  end
  if gated then
    return nil, ("Error: tool '%s' is gated (%s) and cannot be called. Available tools: %s"):format(
      call.name, gated.reason or "hidden", tool_list_names(surface.tools))
  end
  return nil, ("Error: tool '%s' is not available to this agent. Available tools: %s"):format(
    call.name, tool_list_names(surface.tools))
end

return M
