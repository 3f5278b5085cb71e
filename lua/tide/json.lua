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
  -- (decode_fast inlined for the common case; it says what is wrong otherwise)
  local v = type(text) == "string" and safe_decode(text)
  if not v then return decode_fast(text) end
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

--- Encodes with object keys sorted: equal values give equal bytes. Arrays
--- are tables with a length or marked with `json.array`; integers stay
--- integers, floats are written so that they read back exactly, what is
--- not finite is null. Raises on a value JSON cannot hold (a function, a
--- boolean key, nesting deeper than 200). The walk is C's (core/json.c).
---@type fun(v: any): string
json.canonical = core.json_canonical_encoder(array_mt)

return json
