--- tide.schema: the JSON-schema subset structured output uses, checked and
--- validated in Lua.
---
--- `check(schema)` says whether a table is a schema tide can hold a model to
--- (misuse otherwise); `validate(value, schema)` lists what a decoded value
--- does wrong, with JSON-pointer-like paths, so the model can be told in one
--- repair turn; `mark_arrays(value, schema)` marks the tables the schema
--- calls arrays, so that an empty one encodes as `[]`, never `{}`.
---
--- Supported: type (one or a list), enum, const, properties, required,
--- additionalProperties (boolean or schema), items, minItems, maxItems,
--- minLength, maxLength, minimum, maximum, exclusiveMinimum,
--- exclusiveMaximum, anyOf, oneOf, allOf, local $ref (#/$defs/..,
--- #/definitions/..), description and title (ignored).
---@class tide.schema
local M = {}

local json = require "tide.json"

local TYPES = { object = true, array = true, string = true, number = true, integer = true,
  boolean = true, null = true }
local KEYWORDS = {
  type = true, enum = true, const = true, properties = true, required = true,
  additionalProperties = true, items = true, minItems = true, maxItems = true, minLength = true,
  maxLength = true, minimum = true, maximum = true, exclusiveMinimum = true, exclusiveMaximum = true,
  anyOf = true, oneOf = true, allOf = true, ["$ref"] = true, ["$defs"] = true, definitions = true,
  description = true, title = true, default = true, format = true, ["$schema"] = true, strict = true,
  examples = true, pattern = true, uniqueItems = true, nullable = true,
}

local function is_list(t)
  if type(t) ~= "table" then return false end
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t
end

-- Returns an error message for the first thing in `s` (at `path`) that is
-- not a schema tide supports, or nil.
local function check(s, path, root, depth)
  if depth > 64 then return path .. ": nested too deeply" end
  if type(s) ~= "table" then return path .. ": a schema must be a table" end
  for k, v in pairs(s) do
    if type(k) ~= "string" or not KEYWORDS[k] then
      return ("%s: unsupported keyword '%s'"):format(path, tostring(k))
    end
    if k == "type" then
      local list = type(v) == "table" and v or { v }
      for _, t in ipairs(list) do
        if not TYPES[t] then return ("%s: unknown type '%s'"):format(path, tostring(t)) end
      end
      if type(v) == "table" and not is_list(v) then return path .. ": 'type' must be a string or a list" end
    elseif k == "properties" or k == "$defs" or k == "definitions" then
      if type(v) ~= "table" then return ("%s: '%s' must be a table"):format(path, k) end
      for name, sub in pairs(v) do
        local e = check(sub, path .. "/" .. k .. "/" .. tostring(name), root, depth + 1)
        if e then return e end
      end
    elseif k == "required" or k == "enum" then
      if not is_list(v) then return ("%s: '%s' must be a list"):format(path, k) end
    elseif k == "items" or (k == "additionalProperties" and type(v) == "table") then
      local e = check(v, path .. "/" .. k, root, depth + 1)
      if e then return e end
    elseif k == "additionalProperties" and type(v) ~= "boolean" then
      return path .. ": 'additionalProperties' must be a boolean or a schema"
    elseif k == "anyOf" or k == "oneOf" or k == "allOf" then
      if not is_list(v) or #v == 0 then return ("%s: '%s' must be a non-empty list"):format(path, k) end
      for i, sub in ipairs(v) do
        local e = check(sub, ("%s/%s/%d"):format(path, k, i - 1), root, depth + 1)
        if e then return e end
      end
    elseif k == "$ref" then
      if type(v) ~= "string" or not v:match("^#/%$?[%w_]+/[^/]+$") then
        return path .. ": only local $ref (#/$defs/name) is supported"
      end
    elseif k:match("^m[ai][nx]") or k:match("^exclusive") then
      if type(v) ~= "number" then return ("%s: '%s' must be a number"):format(path, k) end
    end
  end
  return nil
end

--- Raises (at `level`) unless `schema` is a JSON schema tide supports.
---@param schema table
---@param what string how the caller names it, for the message
---@param level integer
function M.check(schema, what, level)
  local e = check(schema, "#", schema, 0)
  if e then error(("%s is not a JSON schema tide supports (%s)"):format(what, e), level + 1) end
end

local function resolve(s, root)
  local depth = 0
  while type(s) == "table" and s["$ref"] do
    local kind, name = s["$ref"]:match("^#/(%$?[%w_]+)/(.+)$")
    s = root[kind] and root[kind][name]
    depth = depth + 1
    if s == nil or depth > 32 then return nil end
  end
  return s
end

local function type_of(v)
  local t = type(v)
  if v == json.null then return "null" end
  if t == "table" then
    if next(v) == nil then return "empty" end -- an empty table is an array or an object
    return is_list(v) and "array" or "object"
  end
  if t == "number" then return math.type(v) == "integer" and "integer" or "number" end
  return t
end

local function type_matches(actual, want)
  if actual == want then return true end
  if actual == "empty" then return want == "array" or want == "object" end
  if want == "number" and actual == "integer" then return true end
  if want == "integer" and actual == "number" then return false end
  return false
end

local function show(v)
  local ok, s = pcall(json.canonical, v)
  s = ok and s or tostring(v)
  if #s > 60 then s = s:sub(1, 57) .. "..." end
  return s
end

local validate

local function check_value(v, s, path, root, errs)
  s = resolve(s, root)
  if s == nil then
    errs[#errs + 1] = path .. ": unresolvable $ref"
    return
  end
  local actual = type_of(v)
  if s.type then
    local ok = false
    for _, t in ipairs(type(s.type) == "table" and s.type or { s.type }) do
      if type_matches(actual, t) then ok = true end
    end
    if not ok then
      errs[#errs + 1] = ("%s: expected %s, got %s"):format(path,
        type(s.type) == "table" and table.concat(s.type, " or ") or s.type, actual == "empty" and "{}" or actual)
      return
    end
  end
  if s.enum then
    local ok = false
    for _, e in ipairs(s.enum) do if e == v then ok = true end end
    if not ok then errs[#errs + 1] = ("%s: %s is not one of the allowed values"):format(path, show(v)) end
  end
  if s.const ~= nil and s.const ~= v then
    errs[#errs + 1] = ("%s: must be %s"):format(path, show(s.const))
  end
  if type(v) == "string" then
    local n = utf8.len(v) or #v
    if s.minLength and n < s.minLength then errs[#errs + 1] = ("%s: shorter than %d characters"):format(path, s.minLength) end
    if s.maxLength and n > s.maxLength then errs[#errs + 1] = ("%s: longer than %d characters"):format(path, s.maxLength) end
  elseif type(v) == "number" then
    if s.minimum and v < s.minimum then errs[#errs + 1] = ("%s: less than %s"):format(path, s.minimum) end
    if s.maximum and v > s.maximum then errs[#errs + 1] = ("%s: more than %s"):format(path, s.maximum) end
    if s.exclusiveMinimum and v <= s.exclusiveMinimum then errs[#errs + 1] = ("%s: not more than %s"):format(path, s.exclusiveMinimum) end
    if s.exclusiveMaximum and v >= s.exclusiveMaximum then errs[#errs + 1] = ("%s: not less than %s"):format(path, s.exclusiveMaximum) end
  elseif type(v) == "table" and v ~= json.null then
    local as_array = actual == "array" or (actual == "empty" and (s.items or s.type == "array"))
    if as_array then
      if s.minItems and #v < s.minItems then errs[#errs + 1] = ("%s: fewer than %d items"):format(path, s.minItems) end
      if s.maxItems and #v > s.maxItems then errs[#errs + 1] = ("%s: more than %d items"):format(path, s.maxItems) end
      if s.items then
        for i, item in ipairs(v) do check_value(item, s.items, ("%s/%d"):format(path, i - 1), root, errs) end
      end
    else
      local props = s.properties or {}
      for _, name in ipairs(s.required or {}) do
        if v[name] == nil then errs[#errs + 1] = ("%s: missing required property '%s'"):format(path, name) end
      end
      for k, item in pairs(v) do
        local ps = props[k]
        if ps then
          check_value(item, ps, path .. "/" .. tostring(k), root, errs)
        elseif s.additionalProperties == false then
          errs[#errs + 1] = ("%s: property '%s' is not allowed"):format(path, tostring(k))
        elseif type(s.additionalProperties) == "table" then
          check_value(item, s.additionalProperties, path .. "/" .. tostring(k), root, errs)
        end
      end
    end
  end
  for _, sub in ipairs(s.allOf or {}) do check_value(v, sub, path, root, errs) end
  if s.anyOf or s.oneOf then
    local list = s.anyOf or s.oneOf
    local matched = 0
    for _, sub in ipairs(list) do
      if #validate(v, sub, root) == 0 then matched = matched + 1 end
    end
    if matched == 0 then
      errs[#errs + 1] = ("%s: matches none of the %s alternatives"):format(path, s.anyOf and "anyOf" or "oneOf")
    elseif s.oneOf and not s.anyOf and matched > 1 then
      errs[#errs + 1] = ("%s: matches %d oneOf alternatives, not exactly one"):format(path, matched)
    end
  end
end

validate = function(v, s, root)
  local errs = {}
  check_value(v, s, "#", root or s, errs)
  return errs
end

--- What `value` (a decoded JSON value) does wrong against `schema`: a list
--- of messages with paths, empty when it validates.
---@param value any
---@param schema table
---@return string[]
function M.validate(value, schema) return validate(value, schema, schema) end

--- Marks, in place, every table `schema` calls an array as a JSON array
--- (tide.json.array), so that `[]` stays `[]` when the value is encoded.
function M.mark_arrays(v, s, root)
  root = root or s
  s = resolve(s, root)
  if type(v) ~= "table" or v == json.null or type(s) ~= "table" then return v end
  local t = s.type
  if t == "array" or s.items or (type(t) == "table" and is_list(v) and next(v) == nil) then
    if is_list(v) then
      json.array(v)
      for _, item in ipairs(v) do M.mark_arrays(item, s.items or {}, root) end
    end
  else
    for k, item in pairs(v) do
      local ps = s.properties and s.properties[k] or s.additionalProperties
      if type(ps) == "table" then M.mark_arrays(item, ps, root) end
    end
  end
  for _, key in ipairs { "anyOf", "oneOf", "allOf" } do
    for _, sub in ipairs(s[key] or {}) do
      if #validate(v, sub, root) == 0 then M.mark_arrays(v, sub, root) end
    end
  end
  return v
end

--- Whether OpenAI's strict structured outputs take `schema` (chat's
--- response_format and the Responses API's text.format): every object
--- closed (additionalProperties false) with every property required. A
--- schema that is not gets the best-effort json_schema mode, and tide's own
--- validation holds the model to it.
function M.strict_ok(s, depth)
  depth = depth or 0
  if type(s) ~= "table" or depth > 32 then return true end
  if s.type == "object" or s.properties then
    if s.additionalProperties ~= false then return false end
    local required = {}
    for _, r in ipairs(s.required or {}) do required[r] = true end
    for k, sub in pairs(s.properties or {}) do
      if not required[k] or not M.strict_ok(sub, depth + 1) then return false end
    end
  end
  if s.items and not M.strict_ok(s.items, depth + 1) then return false end
  for _, key in ipairs { "anyOf", "$defs", "definitions" } do
    for _, sub in pairs(s[key] or {}) do if not M.strict_ok(sub, depth + 1) then return false end end
  end
  return true
end

-- The keywords whose value is a list (and a list of schemas for some).
local LIST_KEYWORDS = { required = true, enum = true, anyOf = true, oneOf = true, allOf = true, examples = true }

--- A schema read back from JSON (a transcript's pause record), its lists
--- marked as lists again: decoded, an empty `required` or `enum` is an
--- empty table, which would be encoded back as an object. In place;
--- returns `s`.
---@param s any
---@param depth? integer
---@return any
function M.restore_arrays(s, depth)
  depth = depth or 0
  if type(s) ~= "table" or depth > 64 then return s end
  for k, v in pairs(s) do
    if type(v) == "table" then
      if LIST_KEYWORDS[k] or (k == "type" and is_list(v)) then json.array(v) end
      if k == "properties" or k == "$defs" or k == "definitions" then
        for _, sub in pairs(v) do M.restore_arrays(sub, depth + 1) end
      elseif k == "items" or k == "additionalProperties" or k == "anyOf" or k == "oneOf" or k == "allOf" then
        if k == "items" or k == "additionalProperties" then M.restore_arrays(v, depth + 1)
        else for _, sub in ipairs(v) do M.restore_arrays(sub, depth + 1) end end
      end
    end
  end
  return s
end

--- OpenAI's response formats hold the model to a schema whose root is an
--- object (and not anyOf): any other is sent wrapped, `{ value = schema }`,
--- under the format name WRAPPED_NAME, and the answer unwrapped
--- (M.unwrap_answer). Returns the schema to send and its format name.
M.WRAPPED_NAME = "output_value"
---@param schema table
---@return table schema
---@return string name
function M.for_response_format(schema)
  if schema.type == "object" and schema.anyOf == nil then return schema, "output" end
  local wrapped = { type = "object", properties = { value = schema }, required = json.array { "value" },
    additionalProperties = false }
  for _, k in ipairs { "$defs", "definitions" } do -- (references resolve from the root)
    if schema[k] ~= nil then wrapped[k] = schema[k] end
  end
  return wrapped, M.WRAPPED_NAME
end

--- A reply to a request whose body (`body`, its prefix) held a wrapped
--- format: its text unwrapped (M.unwrap_answer); any other as it is. In
--- place; returns `res`.
---@param res table a provider's response
---@param body any
---@return table res
local WRAPPED_MARK = '"name":"' .. M.WRAPPED_NAME .. '"'
function M.unwrap_reply(res, body)
  local text = res.text
  -- (the answer's own start first: on the path of every reply, most of
  -- them no JSON at all)
  if text and text:find("^%s*{") and type(body) == "string" and body:find(WRAPPED_MARK, 1, true) then
    res.text = M.unwrap_answer(text)
  end
  return res
end

--- The answer a wrapped format gave (`{"value": ...}`) as the value itself,
--- its JSON as the model wrote it (an empty array stays one).
---@param text string
---@return string
function M.unwrap_answer(text)
  local raw = require("tide.core").json_raw_values(text, "value")
  if raw and raw[1] then return raw[1] end
  local ok, v = pcall(json.decode, text)
  if ok and type(v) == "table" and v.value ~= nil then return json.canonical(v.value) end
  return text
end

--- The JSON in a model's answer: the whole text, or the one fenced block--- The JSON in a model's answer: the whole text, or the one fenced block
--- (```json ... ```) it is wrapped in. Returns the decoded value, or nil and
--- why it is not JSON.
---@param text string
function M.decode_answer(text)
  local body = text:match("^%s*```[%w]*%s*\n(.-)\n?```%s*$") or text
  local v, err = json.decode(body)
  if v == nil then return nil, err and err.message or "not JSON" end
  return v
end

return M
