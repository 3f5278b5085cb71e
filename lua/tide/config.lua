--- tide.config: a runtime configuration snapshot.
---
--- A session captures the config it is built with and never loads it again:
--- nothing on the turn path touches the file system for configuration.
---@class tide.config
local M = {}

local json = require "tide.json"
local core = require "tide.core"

local cfg_mt = { __name = "tide.config" }
cfg_mt.__index = cfg_mt

local loads = 0

-- The keys the runtime itself reads (sessions, through get): each must be
-- a positive integer. Other keys are the program's own and free-form, so
-- they are not checked: a config is not an options table.
local RUNTIME_KEYS = { "max_iterations", "tool_timeout_ms", "result_cap_bytes" }

-- The message for the first runtime key with a bad value, or nil.
local function check_values(values)
  for _, k in ipairs(RUNTIME_KEYS) do
    local v = values[k]
    if v ~= nil and (math.type(v) ~= "integer" or v <= 0) then
      return ("'%s' must be a positive integer, got %s"):format(k,
        type(v) == "number" and tostring(v) or type(v))
    end
  end
end

local function deep_copy(v, seen)
  if type(v) ~= "table" then return v end
  seen = seen or {}
  if seen[v] then return seen[v] end
  local out = {}
  seen[v] = out
  for k, x in pairs(v) do out[deep_copy(k, seen)] = deep_copy(x, seen) end
  return setmetatable(out, getmetatable(v))
end

local function load_file(path)
  -- (a FIFO would block the opener, a device read without end)
  local kind = core.file_kind(path)
  if kind ~= nil and kind ~= "file" then
    return nil, core.error("ConfigError", "cannot read config: " .. path .. " is not a regular file", { file = path })
  end
  local f, err = io.open(path, "rb")
  if not f then return nil, core.error("ConfigError", "cannot open config: " .. tostring(err), { file = path }) end
  local text, rerr = f:read("a")
  f:close()
  if text == nil then -- (a directory opens, and fails to read)
    return nil, core.error("ConfigError", "cannot read config: " .. tostring(rerr), { file = path })
  end
  if path:match("%.json$") then
    local v, e = json.decode(text)
    if v == nil or type(v) ~= "table" then
      return nil, core.error("ConfigError", path .. ": " .. (e and e.message or "not a JSON object"), { file = path })
    end
    return v
  end
  -- (loadfile, as for agent files: a UTF-8 BOM or a #! first line is fine)
  local chunk, e = loadfile(path, "t", {})
  if not chunk then return nil, core.error("ConfigError", e, { file = path }) end
  -- The limits of agent files: a config that loops fails, it does not hang.
  local ok, v = require("tide.agents_loader").run_bounded(chunk, function(e) return e end)
  if not ok then return nil, core.error("ConfigError", tostring(v), { file = path }) end
  if type(v) ~= "table" then
    return nil, core.error("ConfigError", path .. ": a config file must return a table", { file = path })
  end
  return v
end

--- Builds a config snapshot from a table (copied) or a `.lua` / `.json` file.
--- A file that cannot be read or parsed, or a Lua file that raises or runs
--- past the limits of agent files (`tide.agents_loader.limits`), returns
--- nil, err (code ConfigError, with `file`). The keys sessions read
--- (`max_iterations`, `tool_timeout_ms`, `result_cap_bytes`) must be
--- positive integers: a table that breaks this raises, a file returns a
--- ConfigError.
---@param src table|string
---@return tide.config|nil
---@return table|nil err
function M.new(src)
  local values, err
  if type(src) == "table" then
    if getmetatable(src) == cfg_mt then return src end
    local msg = check_values(src)
    if msg then error("tide.config: " .. msg, 2) end
    values = deep_copy(src)
  elseif type(src) == "string" then
    if not src:match("%.lua$") and not src:match("%.json$") then
      error(("bad argument #1 to 'config' (a .lua or .json file expected, got '%s')"):format(src), 2)
    end
    values, err = load_file(src)
    if not values then return nil, err end
    local msg = check_values(values)
    if msg then return nil, core.error("ConfigError", src .. ": " .. msg, { file = src }) end
  else
    error(("bad argument #1 to 'config' (table or file path expected, got %s)"):format(type(src)), 2)
  end
  loads = loads + 1
  return setmetatable({ values = values, source = type(src) == "string" and src or "table" }, cfg_mt)
end

--- Reads a value by dotted path ("provider.model"), or `default`.
---@param path string
---@param default any
function cfg_mt:get(path, default)
  local v = self.values
  for part in path:gmatch("[^%.]+") do
    if type(v) ~= "table" then return default end
    v = v[part]
  end
  if v == nil then return default end
  return v
end

--- True when `v` is a config snapshot.
function M.is(v) return getmetatable(v) == cfg_mt end

--- How many configs this Lua state has loaded (tables and files).
function M.loads() return loads end

return M
