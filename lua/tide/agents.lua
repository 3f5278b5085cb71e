--- tide.agents: the agent-definition registry (one per Lua state).
---
--- Registering an id again replaces it for sessions built afterwards; live
--- sessions keep the definition they were built with.
---@class tide.agents
local agents = {}

local tool = require "tide.tool"

---@class tide.agent.definition
---@field id string
---@field prompt string a prompt name (file in a prompt directory) or inline template text
---@field tools? (tide.tool|string|{toolkit:string, only?:string[]})[]|"*" direct tools; strings name tools of the parent (sub-agents); "*" all of the parent's; { toolkit = slug, only = names } a connected toolkit's actions, directly
---@field disallowed_tools? string[] names removed from the surface
---@field extra_tools? tide.tool[] added after filtering
---@field subagents? (string|{toolkits:"*"}|{id:string})[]
---@field max_iterations? integer default 10 (sub-agents: 8)
---@field max_spawn_depth? integer overrides the runtime MAX_SPAWN_DEPTH for spawns from this agent
---@field when_to_use? string
---@field display_name? string
---@field delegate_name? string name of the delegation tool (default delegate_<id>)
---@field datetime? boolean put the date and time on each user message (default: sub-agents only)
---@field text_tools? boolean also accept <tool_call> text from the model (default true)
---@field temperature? number

local registry = {}
local generation = 0

local ID = "^[%w_%-%.]+$"

local function bad(field, msg) error(("tide.agent: '%s' %s"):format(field, msg), 3) end

-- Every field the runtime reads from a definition (agents, session,
-- subagent, prompts): a misspelt one ("toolz") is named, not ignored.
local FIELDS = {
  id = true, prompt = true, tools = true, disallowed_tools = true, extra_tools = true,
  subagents = true, max_iterations = true, max_spawn_depth = true, when_to_use = true,
  display_name = true, delegate_name = true, datetime = true, text_tools = true,
  temperature = true, max_subagents = true, output_schema = true, context = true,
}

-- A table entry of `subagents`: { toolkits = "*" } or { id = "..." }.
local function subagent_entry(x)
  if type(x) == "string" then return true end
  if type(x) ~= "table" then return false end
  for k in pairs(x) do
    if k ~= "toolkits" and k ~= "id" then return false end
  end
  return (x.toolkits == "*" and x.id == nil) or (x.toolkits == nil and type(x.id) == "string")
end

local function check_list(def, field, pred, what)
  local v = def[field]
  if v == nil then return end
  if type(v) ~= "table" then bad(field, "must be a list of " .. what) end
  for i, x in ipairs(v) do
    if not pred(x) then bad(field, ("item %d must be %s, got %s"):format(i, what, type(x))) end
  end
end

--- Validates and registers an agent definition; returns it.
---@param def tide.agent.definition
---@return tide.agent.definition
function agents.define(def)
  if type(def) ~= "table" then
    error(("bad argument #1 to 'agent' (table expected, got %s)"):format(type(def)), 2)
  end
  for k in pairs(def) do
    if not FIELDS[k] then error(("tide.agent: unknown field '%s'"):format(tostring(k)), 2) end
  end
  if type(def.id) ~= "string" or not def.id:match(ID) then
    bad("id", "must be a string of letters, digits, _ - . (got " .. tostring(def.id) .. ")")
  end
  if type(def.prompt) ~= "string" or def.prompt == "" then bad("prompt", "must be a non-empty string") end
  if def.tools ~= "*" then
    check_list(def, "tools", function(x)
      if tool.is(x) or type(x) == "string" then return true end
      -- a toolkit's actions offered directly: { toolkit = slug, only = { names } }
      if type(x) ~= "table" or type(x.toolkit) ~= "string" or x.toolkit == "" then return false end
      for k in pairs(x) do if k ~= "toolkit" and k ~= "only" then return false end end
      if x.only == nil then return true end
      if type(x.only) ~= "table" or #x.only == 0 then return false end
      for _, n in ipairs(x.only) do if type(n) ~= "string" then return false end end
      return true
    end, "a tide.tool, a tool name or { toolkit = slug, only = { names } }")
  end
  check_list(def, "extra_tools", tool.is, "a tide.tool")
  check_list(def, "disallowed_tools", function(x) return type(x) == "string" end, "a string")
  check_list(def, "subagents", subagent_entry, 'an agent id, { id = id } or { toolkits = "*" }')
  for _, f in ipairs { "max_iterations", "max_spawn_depth" } do
    local v = def[f]
    if v ~= nil and (math.type(v) ~= "integer" or v < 0) then bad(f, "must be a non-negative integer") end
  end
  if def.context ~= nil then require("tide.compaction").options(def.context, "tide.agent: ", 2) end
  if def.output_schema ~= nil then require("tide.schema").check(def.output_schema, "tide.agent: 'output_schema'", 2) end
  if def.max_subagents ~= nil and (math.type(def.max_subagents) ~= "integer" or def.max_subagents <= 0) then
    bad("max_subagents", "must be a positive integer")
  end
  for _, f in ipairs { "when_to_use", "display_name", "delegate_name" } do
    if def[f] ~= nil and type(def[f]) ~= "string" then bad(f, "must be a string") end
  end
  if def.delegate_name and not def.delegate_name:match("^[%a_][%w_%-]*$") then
    bad("delegate_name", "must be a valid tool name")
  end
  for _, f in ipairs { "datetime", "text_tools" } do
    if def[f] ~= nil and type(def[f]) ~= "boolean" then bad(f, "must be a boolean, got " .. type(def[f])) end
  end
  if def.temperature ~= nil and type(def.temperature) ~= "number" then
    bad("temperature", "must be a number, got " .. type(def.temperature))
  end
  generation = generation + 1
  registry[def.id] = def
  return def
end

--- The definition registered under `id`, or nil.
---@param id string
---@return tide.agent.definition|nil
function agents.get(id) return registry[id] end

--- Removes a definition (sessions already built keep theirs).
function agents.remove(id) registry[id] = nil end

--- Registered ids, sorted.
function agents.ids()
  local out = {}
  for id in pairs(registry) do out[#out + 1] = id end
  table.sort(out)
  return out
end

--- Bumped on every registration (hot reload uses it).
function agents.generation() return generation end

--- Loads `dir/*.lua`, each returning a definition. Returns the ids defined and
--- the errors (file and line) of the files that failed, or nil and a
--- FileError when `dir` cannot be read.
---@param dir string
---@return string[]|nil ids
---@return table[]|table errs
function agents.load(dir)
  if type(dir) ~= "string" then
    error(("bad argument #1 to 'load' (string expected, got %s)"):format(type(dir)), 2)
  end
  return require("tide.agents_loader").load(dir, agents.define)
end

--- Loads `dir/*.lua` and reloads a file when it changes. A file that fails
--- keeps its previous definition in force and is reported through on_error.
--- Returns a handle with `close`, or nil and a FileError (the directory
--- cannot be read) or WatchFailed.
---@param dir string
---@param opts? {on_error?:fun(err:table), on_change?:fun(id:string), debounce_ms?:integer}
---@return table|nil handle
---@return table? err
function agents.watch(dir, opts)
  if type(dir) ~= "string" then
    error(("bad argument #1 to 'watch' (string expected, got %s)"):format(type(dir)), 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(("bad argument #2 to 'watch' (table expected, got %s)"):format(type(opts)), 2)
  end
  return require("tide.agents_loader").watch(dir, opts or {}, agents.define)
end

return agents
