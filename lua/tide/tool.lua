--- tide.tool: tools a model can call.
---@class tide.tool
---@field name string
---@field description string
---@field parameters table|nil JSON schema of the arguments (an object schema); nil for a custom tool
---@field format table|nil a custom tool's input format: { type = "text" } or { type = "grammar", syntax, definition }
---@field handler fun(args:table|string, ctx:tide.tool.context):any
---@field timeout_ms? integer per-call timeout (default: the session's, 120000)

---@class tide.tool.context
---@field session tide.session the session whose model called the tool
---@field call_id string
---@field name string
---@field depth integer spawn depth of the calling agent

local M = {}

local tool_mt = { __name = "tide.tool" }
tool_mt.__index = tool_mt
M.mt = tool_mt

local NAME = "^[%a_][%w_%-]*$"

local function fail(msg, level) error("tide.tool: " .. msg, level or 3) end

-- Every field a tool spec may have: a misspelt one ("handlr") is named,
-- not silently dropped.
local FIELDS = { name = true, description = true, parameters = true, handler = true, timeout_ms = true,
  approval = true, format = true }

-- A custom tool's input format, as the Responses API takes it: free text,
-- or text a grammar holds the model to (Lark or a regular expression).
-- "text" stands for { type = "text" }.
local FORMAT_FIELDS = { text = { type = true }, grammar = { type = true, syntax = true, definition = true } }

local function check_format(f)
  if f == "text" then return { type = "text" } end
  if type(f) ~= "table" then fail("'format' must be \"text\" or a format table, got " .. type(f), 4) end
  local allowed = FORMAT_FIELDS[f.type]
  if not allowed then fail("'format.type' must be \"text\" or \"grammar\", got " .. tostring(f.type), 4) end
  for k in pairs(f) do
    if not allowed[k] then fail("unknown option 'format." .. tostring(k) .. "'", 4) end
  end
  if f.type == "text" then return { type = "text" } end
  if f.syntax ~= "lark" and f.syntax ~= "regex" then
    fail("'format.syntax' must be \"lark\" or \"regex\", got " .. tostring(f.syntax), 4)
  end
  if type(f.definition) ~= "string" or not f.definition:find("%S") then
    fail("'format.definition' must be the grammar's text", 4)
  end
  return { type = "grammar", syntax = f.syntax, definition = f.definition }
end

--- Defines a tool. The handler returns text, or a table (sent as JSON);
--- raising an error, returning `nil, err` or `false, err`, or a table JSON
--- cannot hold gives the model an error result, never a crashed turn.
--- `parameters`, when given, is an object schema (its `type`, if any,
--- "object").
--- With `approval` (true, or a function(args, ctx) that says whether this
--- call needs one), a call waits for a person's decision: the turn returns
--- ApprovalRequired and goes on with `s:approve` / `s:reject`, `s:resume()`.
--- With `format` instead of `parameters`, a custom tool: the model writes
--- its input as free text ("text") or in a grammar (`{ type = "grammar",
--- syntax = "lark" | "regex", definition }`), and the handler gets that
--- text, a string. OpenAI's APIs take it as such (a custom tool); to other
--- providers it is a function of one string argument, `input`.
---@param spec {name:string, description:string, parameters?:table, format?:string|table, handler:fun(args:table|string, ctx:tide.tool.context):any, timeout_ms?:integer, approval?:boolean|fun(args:table|string, ctx:tide.tool.context):boolean}
---@return tide.tool
function M.new(spec)
  if type(spec) ~= "table" then
    error(("bad argument #1 to 'tool' (table expected, got %s)"):format(type(spec)), 2)
  end
  for k in pairs(spec) do
    if not FIELDS[k] then fail("unknown option '" .. tostring(k) .. "'") end
  end
  if type(spec.name) ~= "string" or not spec.name:match(NAME) or #spec.name > 64 then
    fail("'name' must be a string of letters, digits, _ and - (at most 64), got " .. tostring(spec.name))
  end
  if type(spec.description) ~= "string" then
    fail("'description' must be a string, got " .. type(spec.description))
  end
  if type(spec.handler) ~= "function" then fail("'handler' must be a function, got " .. type(spec.handler)) end
  local params = spec.parameters
  local format = spec.format ~= nil and check_format(spec.format) or nil
  if format and params ~= nil then
    fail("'format' and 'parameters' exclude each other (a custom tool takes text, not arguments)")
  end
  if format then
    params = nil
  elseif params == nil then
    params = { type = "object", properties = {} }
  elseif type(params) ~= "table" then
    fail("'parameters' must be a JSON-schema table, got " .. type(params))
  elseif params.type ~= nil and params.type ~= "object" then
    -- the arguments are always an object: providers refuse every request
    -- that carries a tool whose schema says otherwise
    fail("'parameters' must be an object schema (type = \"object\"), got type " .. tostring(params.type))
  end
  -- Debian's lua-cjson cannot tell {} from []: mark the schema's list fields.
  local json = require "tide.json"
  local function mark(schema, depth)
    if type(schema) ~= "table" or depth > 32 then return end
    for _, k in ipairs { "required", "enum", "anyOf", "oneOf", "allOf" } do
      if type(schema[k]) == "table" and getmetatable(schema[k]) == nil then json.array(schema[k]) end
    end
    if type(schema.properties) == "table" then
      for _, sub in pairs(schema.properties) do mark(sub, depth + 1) end
    end
    mark(schema.items, depth + 1)
  end
  mark(params, 0)
  if spec.timeout_ms ~= nil and (math.type(spec.timeout_ms) ~= "integer" or spec.timeout_ms <= 0) then
    fail("'timeout_ms' must be a positive integer, got " .. tostring(spec.timeout_ms))
  end
  if spec.approval ~= nil and type(spec.approval) ~= "boolean" and type(spec.approval) ~= "function" then
    fail("'approval' must be a boolean or a function, got " .. type(spec.approval))
  end
  -- A handler that declares only `args` never sees its context: the session
  -- then makes none for its calls.
  local info = debug.getinfo(spec.handler, "u")
  return setmetatable({
    name = spec.name,
    description = spec.description,
    parameters = params,
    format = format,
    handler = spec.handler,
    timeout_ms = spec.timeout_ms,
    approval = spec.approval or nil,
    args_only = info.nparams < 2 and not info.isvararg or nil,
  }, tool_mt)
end

--- True when `v` was made by tide.tool.
function M.is(v) return getmetatable(v) == tool_mt end

--- The provider-neutral schema of a tool: { name, description, parameters },
--- or a custom tool's { name, description, format }.
function M.spec(t)
  return { name = t.name, description = t.description, parameters = t.parameters, format = t.format }
end

return M
