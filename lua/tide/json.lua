--- tide.json: JSON through lua-cjson, plus a canonical encoder.
---
--- Canonical encoding sorts object keys, so that the same value always gives
--- the same bytes: the frozen request prefix and integration hashes rely on it.
---@class tide.json
local json = {}

local cjson_module = require "cjson"
local cjson = cjson_module.new()
cjson.encode_sparse_array(true)
cjson.decode_max_depth(200)
cjson.encode_max_depth(200)
-- Non-finite numbers are not JSON; encode them as null rather than fail.
cjson.encode_invalid_numbers("null")

-- The same decoder returning nil, message instead of raising: no pcall on
-- the path of every tool call's arguments.
local safe = require("cjson.safe").new()
safe.decode_max_depth(200)
local safe_decode = safe.decode
-- For callers that put the integers back themselves.
json._decode_floats = safe_decode

local core = require "tide.core"

json.null = cjson_module.null
-- Debian's lua-cjson 2.1.0 has no array marker of its own: an empty table is
-- ambiguous, so tide marks arrays that may be empty with this metatable.
local array_mt = { __name = "tide.json.array" }
json.array_mt = array_mt

--- Marks `t` (default: a new table) as a JSON array, so that it encodes as
--- `[]` when empty.
---@param t? table
---@return table
function json.array(t) return setmetatable(t or {}, array_mt) end

local tointeger = math.tointeger

-- lua-cjson 2.1.0 decodes every number as a float; JSON has no such
-- distinction, and tool handlers expect `{"n": 3}` to give the integer 3.
-- The walk is C's (core.json_integers, core/turn.c, whose tool round decodes
-- arguments the same way).
local integers = core.json_integers

--- Turns, in place, every integral float in table `t` (at any depth) into
--- an integer, as `json.decode` does; for a part of a `decode_fast` result
--- that reaches tool handlers or the canonical encoder. Returns `t`.
---@generic T
---@param t T
---@return T
function json.integers(t)
  return integers(t)
end

--- Decodes `text` like `json.decode`, but leaves every number a float, as
--- lua-cjson gives it: for payloads read by tide itself (provider responses
--- and stream events), which never need integers and should not pay for a
--- walk of every decoded table. Same results otherwise, same errors.
---@param text string
---@return any|nil value
---@return table|nil err
function json.decode_fast(text)
  if type(text) ~= "string" then
    return nil, core.error("MalformedResponse", "expected JSON text, got " .. type(text))
  end
  local v, err = safe_decode(text)
  if v == nil then
    return nil, core.error("MalformedResponse", "invalid JSON: " .. tostring(err):gsub("^.-: ", ""))
  end
  return v
end
local decode_fast = json.decode_fast

--- Decodes `text`; returns `value` or `nil, err` (code `MalformedResponse`).
---@param text string
---@return any|nil value
---@return table|nil err
function json.decode(text)
  local v, err = decode_fast(text)
  if v == nil then return nil, err end
  if type(v) == "table" then return integers(v) end
  return tointeger(v) or v
end

--- Encodes with lua-cjson (key order not guaranteed).
function json.encode(v) return cjson.encode(v) end

local encode_string = cjson.encode

--- The JSON literal of string `s`, quoted and escaped as the canonical encoder
--- does it (lua-cjson escapes "/" as "\/", which is valid JSON). `s` must be a
--- string: anything else is encoded as its JSON value, not quoted.
---@type fun(s:string):string
json.quote = encode_string

local function is_array(t)
  if getmetatable(t) == array_mt then return true, #t end
  local n = #t
  if n > 0 then return true, n end
  return next(t) == nil and false, 0
end

local function canon(v, out, depth)
  local ty = type(v)
  if ty == "string" then
    out[#out + 1] = encode_string(v)
  elseif ty == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      out[#out + 1] = "null"
    elseif math.type(v) == "integer" then
      out[#out + 1] = tostring(v)
    else
      -- Shortest of %.14g / %.17g that reads back exactly.
      local text = ("%.14g"):format(v)
      if tonumber(text) ~= v then text = ("%.17g"):format(v) end
      out[#out + 1] = text
    end
  elseif ty == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif v == nil or v == cjson_module.null then
    out[#out + 1] = "null"
  elseif ty == "table" then
    if depth > 200 then error("tide.json: nesting too deep", 0) end
    local arr, n = is_array(v)
    if arr then
      out[#out + 1] = "["
      for i = 1, n do
        if i > 1 then out[#out + 1] = "," end
        canon(v[i], out, depth + 1)
      end
      out[#out + 1] = "]"
    elseif getmetatable(v) == nil and next(v) == nil then
      out[#out + 1] = "{}"
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) ~= "string" then
          if type(k) == "number" then k = tostring(k) else
            error("tide.json: cannot encode a " .. type(k) .. " key", 0)
          end
        end
        keys[#keys + 1] = k
      end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = encode_string(k)
        out[#out + 1] = ":"
        local val = v[k]
        if val == nil then val = v[tonumber(k)] end
        canon(val, out, depth + 1)
      end
      out[#out + 1] = "}"
    end
  else
    error("tide.json: cannot encode a " .. ty, 0)
  end
end

--- Encodes with object keys sorted: equal values give equal bytes.
---@param v any
---@return string
function json.canonical(v)
  local out = {}
  canon(v, out, 0)
  return table.concat(out)
end

return json
