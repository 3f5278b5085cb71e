--- tide.integrations.static: a source whose toolkits are given in Lua.
---
--- For scripts that know their integrations up front, for specs and for the
--- demo. `src:set(toolkits)` changes what the next fetch returns (simulating
--- a connect or disconnect) but, like the reference harness, does not
--- invalidate the cache: whoever changes the connection invalidates.
local core = require "tide.core"
local json = require "tide.json"

local static = {}

---@class tide.integrations.static: tide.integrations.source
---@field kind "static"
---@field toolkits table the toolkits the next fetch returns
---@field delay_ms integer|nil a fetch waits this long first (specs)
---@field fail boolean|table|string|nil a fetch fails with this (specs)
---@field fetches integer how many fetches ran
local Static = {}
Static.__index = Static
Static.__name = "tide.integrations.static"

-- The keys a toolkit, a tool and a gated tool of this source may have.
-- Stricter than the cache's normalize, which takes any source's fetch
-- result (extra keys there are the service's): here a key tide does not
-- know is a typo in a script ("descripton", "gated_tool") that would
-- otherwise drop what it meant without a word.
local KEYS = {
  toolkit = { slug = true, name = true, description = true, connected = true, tools = true, gated_tools = true },
  tool = { name = true, description = true, parameters = true, scope = true, destructive = true,
           output_schema = true, handler = true },
  gated = { name = true, description = true, reason = true, scope = true },
}

local function unknown_key(t, allowed)
  if type(t) ~= "table" then return nil end
  for k in pairs(t) do
    if not allowed[k] then return tostring(k) end
  end
end

-- The first unknown key of the toolkits, named where it is, or nil.
local function check_keys(toolkits)
  if type(toolkits) ~= "table" then return nil end
  for i, tk in ipairs(toolkits) do
    local where = type(tk) == "table" and type(tk.slug) == "string" and ("toolkit '%s'"):format(tk.slug)
      or ("toolkits[%d]"):format(i)
    local k = unknown_key(tk, KEYS.toolkit)
    if k then return ("%s: unknown key '%s'"):format(where, k) end
    for _, list in ipairs { "tools", "gated_tools" } do
      if type(tk) == "table" and type(tk[list]) == "table" then
        for j, t in ipairs(tk[list]) do
          k = unknown_key(t, list == "tools" and KEYS.tool or KEYS.gated)
          if k then return ("%s: %s[%d]: unknown key '%s'"):format(where, list, j, k) end
        end
      end
    end
  end
  return nil
end

local function check_toolkits(toolkits, level)
  local cache = require "tide.integrations.cache"
  local norm, err = cache.normalize(toolkits)
  err = err or check_keys(toolkits)
  if err then
    error("bad argument #1 to 'static' (" .. err .. ")", level + 1)
  end
  return norm
end

local OPTIONS = { toolkits = true, id = true, delay_ms = true, fail = true, approval = true }

--- A source serving fixed toolkits.
---@param opts {toolkits: table, id?: string, delay_ms?: integer, fail?: boolean|string|table}
---@return tide.integrations.static
function static.new(opts)
  if type(opts) ~= "table" then
    error(("bad argument #1 to 'static' (table expected, got %s)"):format(type(opts)), 2)
  end
  for k in pairs(opts) do
    if not OPTIONS[k] then
      error(("bad argument #1 to 'static' (unknown option '%s')"):format(tostring(k)), 2)
    end
  end
  require("tide.approval").check_rule(opts.approval, "tide.integrations.static: ", 2)
  local norm = check_toolkits(opts.toolkits == nil and {} or opts.toolkits, 2)
  if opts.id ~= nil and (type(opts.id) ~= "string" or opts.id == "") then
    error("bad argument #1 to 'static' (field 'id' must be a non-empty string)", 2)
  end
  if opts.delay_ms ~= nil and (math.type(opts.delay_ms) ~= "integer" or opts.delay_ms < 0) then
    error("bad argument #1 to 'static' (field 'delay_ms' must be a non-negative integer)", 2)
  end
  local fail = opts.fail
  if fail ~= nil and type(fail) ~= "boolean" and type(fail) ~= "string" and type(fail) ~= "table" then
    error(("bad argument #1 to 'static' (field 'fail' must be a boolean, string or error table, got %s)"):format(
      type(fail)), 2)
  end
  -- Without an id the identity is the hash of the toolkits as first given:
  -- it must not change when set() changes them, or invalidation would miss.
  local id = opts.id or core.cache_hash(json.canonical(norm))
  return setmetatable({
    kind = "static",
    id = id,
    toolkits = opts.toolkits or {},
    delay_ms = opts.delay_ms,
    fail = opts.fail,
    approval = opts.approval, -- which actions wait for a person (tide.approval)
    fetches = 0,
  }, Static)
end

--- "static|<id>" (the id given, or a hash of the initial toolkits).
---@return string
function Static:identity() return "static|" .. self.id end

--- Returns the current toolkits (after `delay_ms`), or `nil, err` when `fail`
--- is set. Runs in a task.
---@return table|nil toolkits
---@return table|nil err
function Static:fetch()
  self.fetches = self.fetches + 1
  if self.delay_ms and self.delay_ms > 0 then require("tide").sleep(self.delay_ms) end
  local fail = self.fail
  if fail then
    if type(fail) == "table" then return nil, fail end
    local msg = type(fail) == "string" and fail or "static source configured to fail"
    return nil, core.error("IntegrationsUnavailable", msg)
  end
  return self.toolkits
end

--- Replaces the toolkits the next fetch returns. Does not invalidate the
--- cache: call `tide.integrations.cache.invalidate(src)` for that.
---@param toolkits table
function Static:set(toolkits)
  check_toolkits(toolkits, 2)
  self.toolkits = toolkits
end

--- Runs action `name` of one of the source's toolkits through the `handler`
--- function given with it in the toolkit definition.
---@param name string
---@param args table
---@return any result
---@return table|nil err
function Static:execute(name, args)
  for _, tk in ipairs(self.toolkits) do
    for _, a in ipairs(tk.tools or {}) do
      if a.name == name then
        if type(a.handler) ~= "function" then
          return nil, core.error("ToolError", ("action %s has no handler in this static source"):format(name))
        end
        return a.handler(args)
      end
    end
  end
  return nil, core.error("UnknownTool", ("no action named %s in this source"):format(name))
end

function Static:__tostring() return "tide.integrations.static (" .. self.id .. ")" end

return static
