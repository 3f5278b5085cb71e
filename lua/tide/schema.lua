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

-- A decoded JSON value's type: "empty" for a table with nothing in it (an
-- array or an object: lua-cjson cannot say which), "integer" apart from
-- "number".
local function type_of(v)
  local t = type(v)
  if t == "table" then
    if v == json.null then return "null" end
    -- (a decoded object has only string keys: one without [1] is no list)
    if v[1] == nil then return next(v) == nil and "empty" or "object" end
    return is_list(v) and "array" or "object"
  end
  if v == json.null then return "null" end
  if t == "number" then return math.type(v) == "integer" and "integer" or "number" end
  return t
end

local function type_matches(actual, want)
  if actual == want then return true end
  if actual == "empty" then return want == "array" or want == "object" end
  if want == "number" and actual == "integer" then return true end
  return false
end

local function show(v)
  local ok, s = pcall(json.canonical, v)
  s = ok and s or tostring(v)
  if #s > 60 then s = s:sub(1, 57) .. "..." end
  return s
end

-- Schemas are checked by checkers compiled from them, once per schema
-- node: a checker reads only the keywords its node has (most of a tool's
-- parameters: a type, and properties), so that checking every call's
-- arguments costs little. A checker is `fn(v, path, errs) -> valid`: with
-- `errs`, it adds every violation there ("path: what"); without (a
-- yes-or-no check: anyOf's alternatives, arguments before anything is
-- known to be wrong) it stops at the first, and makes no path or message.
-- `lenient` checkers (a tool's arguments) let a $ref tide cannot follow
-- hold anything: the handler or server behind the tool judges those. A
-- schema is checked as it was when first compiled.
local compiled = { [true] = setmetatable({}, { __mode = "k" }), [false] = setmetatable({}, { __mode = "k" }) }
local SCALARS = { string = "string", boolean = "boolean", number = "number" } -- (JSON type: Lua type)
-- keywords that check nothing
local PLAIN = { type = true, description = true, title = true, default = true, examples = true, format = true,
  ["$schema"] = true, ["$id"] = true, ["$comment"] = true, deprecated = true, readOnly = true, writeOnly = true }
local compile

-- Adds a violation at `path` (when collecting); true for a yes-or-no
-- check, which stops at the first.
local function violation(errs, path, msg, ...)
  if errs then errs[#errs + 1] = path .. ": " .. msg:format(...) end
  return errs == nil
end

local function is_array_like(actual, s)
  return actual == "array" or (actual == "empty" and (s.items ~= nil or s.type == "array"))
end

-- The Lua type a node of one scalar JSON type with nothing more to check
-- holds (string, boolean, number), or nil.
local function plain_scalar(s)
  local lua_type = SCALARS[s.type]
  if not lua_type then return nil end
  for k in pairs(s) do
    if not PLAIN[k] then return nil end
  end
  return lua_type
end

-- Whether two decoded JSON values are equal, as enum and const compare
-- them: an object or array by its contents (canonical JSON), anything
-- else as Lua compares it (1 and 1.0 alike).
local function same(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" or a == json.null or b == json.null then return false end
  local ok1, ca = pcall(json.canonical, a)
  local ok2, cb = pcall(json.canonical, b)
  return ok1 and ok2 and ca == cb
end

-- A keyword's number, or nil (a schema from another party may put
-- anything there: what tide cannot read checks nothing).
local function number(v) return type(v) == "number" and v or nil end

-- The checks of one node's keywords beside its type: functions (v, path,
-- errs, actual) -> valid, appended to `out`.
local function keyword_checks(s, root, lenient, out) -- (returns the children's checks, if any)
  local function add(fn) out[#out + 1] = fn end
  if type(s.enum) == "table" then
    local enum = s.enum
    add(function(v, path, errs)
      for _, e in ipairs(enum) do if same(e, v) then return true end end
      violation(errs, path, "%s is not one of the allowed values", show(v))
      return false
    end)
  end
  if s.const ~= nil then
    local const = s.const
    add(function(v, path, errs)
      if same(const, v) then return true end
      violation(errs, path, "must be %s", show(const))
      return false
    end)
  end
  local min_len, max_len = number(s.minLength), number(s.maxLength)
  if min_len or max_len then
    add(function(v, path, errs)
      if type(v) ~= "string" then return true end
      local n, ok = utf8.len(v) or #v, true
      if min_len and n < min_len then
        ok = false
        if violation(errs, path, "shorter than %d characters", min_len) then return false end
      end
      if max_len and n > max_len then
        ok = false
        violation(errs, path, "longer than %d characters", max_len)
      end
      return ok
    end)
  end
  local bounds = { { number(s.minimum), function(v, b) return v < b end, "less than %s" },
    { number(s.maximum), function(v, b) return v > b end, "more than %s" },
    { number(s.exclusiveMinimum), function(v, b) return v <= b end, "not more than %s" },
    { number(s.exclusiveMaximum), function(v, b) return v >= b end, "not less than %s" } }
  for _, b in ipairs(bounds) do
    local bound, past, msg = b[1], b[2], b[3]
    if bound ~= nil then
      add(function(v, path, errs)
        if type(v) ~= "number" or not past(v, bound) then return true end
        violation(errs, path, msg, bound)
        return false
      end)
    end
  end
  local few, many = number(s.minItems), number(s.maxItems)
  if few or many then
    add(function(v, path, errs, actual)
      if not is_array_like(actual, s) then return true end
      local ok = true
      if few and #v < few then
        ok = false
        if violation(errs, path, "fewer than %d items", few) then return false end
      end
      if many and #v > many then
        ok = false
        violation(errs, path, "more than %d items", many)
      end
      return ok
    end)
  end
  -- the children: an array's items, an object's required, properties and
  -- additional ones
  local items = (type(s.items) == "table" or s.items == false) and compile(s.items, root, lenient)
  local required = type(s.required) == "table" and s.required or nil
  local extra = s.additionalProperties
  if type(extra) ~= "table" and type(extra) ~= "boolean" then extra = nil end
  -- The declared properties, by name (sorted: messages in a steady
  -- order), each compiled, and the Lua type of one that is a plain scalar
  -- (checked in place, without a call: the usual property).
  local props, names, checks, scalars = nil, {}, {}, {}
  if type(s.properties) == "table" then
    props = {}
    for k in pairs(s.properties) do names[#names + 1] = k end
    table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
    for i, k in ipairs(names) do
      local sub = s.properties[k]
      checks[i] = compile(sub, root, lenient)
      props[k] = checks[i]
      scalars[i] = type(sub) == "table" and plain_scalar(sub) or false
    end
  end
  local nprops, nrequired = #names, required and #required or 0
  local extra_check = type(extra) == "table" and compile(extra, root, lenient)
  local children, object_children
  if items or required or props or extra ~= nil then
    -- (an object's, apart: the usual node calls it knowing the value is one)
    object_children = function(v, path, errs)
      local ok = true
      for i = 1, nrequired do
        local name = required[i]
        if v[name] == nil then
          ok = false
          if violation(errs, path, "missing required property '%s'", name) then return false end
        end
      end
      if extra == nil or extra == true then
        -- (other properties are free: only the declared ones are read)
        for i = 1, nprops do
          local k = names[i]
          local item = v[k]
          if item ~= nil then
            local lua_type = scalars[i]
            if not (lua_type and type(item) == lua_type)
                and not checks[i](item, errs and (path .. "/" .. tostring(k)), errs) then
              if not errs then return false end
              ok = false
            end
          end
        end
        return ok
      end
      for k, item in pairs(v) do
        local check = props and props[k] or extra_check
        if check then
          if not check(item, errs and (path .. "/" .. tostring(k)), errs) then
            if not errs then return false end
            ok = false
          end
        else -- (additionalProperties false)
          ok = false
          if violation(errs, path, "property '%s' is not allowed", tostring(k)) then return false end
        end
      end
      return ok
    end
    children = function(v, path, errs, actual)
      if type(v) ~= "table" or v == json.null then return true end
      local ok = true
      if is_array_like(actual, s) then
        if items then
          for i, item in ipairs(v) do
            if not items(item, errs and ("%s/%d"):format(path, i - 1), errs) then
              if not errs then return false end
              ok = false
            end
          end
        end
        return ok
      end
      return object_children(v, path, errs)
    end
    add(children)
  end
  if type(s.allOf) == "table" then
    local all = {}
    for i, sub in ipairs(s.allOf) do all[i] = compile(sub, root, lenient) end
    add(function(v, path, errs)
      local ok = true
      for _, check in ipairs(all) do
        if not check(v, path, errs) then
          if not errs then return false end
          ok = false
        end
      end
      return ok
    end)
  end
  if type(s.anyOf) == "table" or type(s.oneOf) == "table" then
    local any = type(s.anyOf) == "table"
    local list, one, word = {}, not any, any and "anyOf" or "oneOf"
    for i, sub in ipairs(any and s.anyOf or s.oneOf) do list[i] = compile(sub, root, lenient) end
    add(function(v, path, errs)
      local matched = 0
      for _, check in ipairs(list) do
        if check(v, nil, nil) then matched = matched + 1 end
      end
      if matched == 0 then
        violation(errs, path, "matches none of the %s alternatives", word)
        return false
      end
      if one and matched > 1 then
        violation(errs, path, "matches %d oneOf alternatives, not exactly one", matched)
        return false
      end
      return true
    end)
  end
  return children, object_children
end

-- A $ref's checker: its target compiled at first use (a schema may refer
-- to itself).
local function ref_checker(s, root, lenient)
  local target
  return function(v, path, errs)
    if target == nil then
      local r = resolve(s, root)
      target = type(r) == "table" and compile(r, root, lenient) or false
    end
    if target then return target(v, path, errs) end
    if lenient then return true end
    if errs then errs[#errs + 1] = path .. ": unresolvable $ref" end
    return false
  end
end

-- JSON Schema's boolean schemas: true holds anything, false nothing (a
-- property that must not be there, an array that must be empty).
local function anything() return true end
local function nothing(_, path, errs)
  violation(errs, path, "no value is allowed here")
  return false
end

compile = function(s, root, lenient)
  if s == true then return anything end
  if s == false then return nothing end
  if type(s) ~= "table" then return anything end -- (not a schema: it checks nothing)
  lenient = lenient == true
  local cache = compiled[lenient]
  local c = cache[s]
  if c then return c end
  if s["$ref"] ~= nil then
    c = ref_checker(s, root, lenient)
    cache[s] = c
    return c
  end
  -- (a placeholder while its children compile: a child that is its
  -- ancestor by identity gets the finished checker through it)
  local fn
  cache[s] = function(...) return fn(...) end
  local want = s.type
  if type(want) ~= "string" and type(want) ~= "table" then want = nil end
  local wants = type(want) == "table" and want or nil
  local checks = {}
  local children, object_children = keyword_checks(s, root, lenient, checks)
  local n = #checks
  local general = function(v, path, errs)
    local actual = type_of(v)
    if want ~= nil then
      local matches = false
      if wants then
        for _, t in ipairs(wants) do if type_matches(actual, t) then matches = true end end
      else
        matches = type_matches(actual, want)
      end
      if not matches then
        local names = {}
        for i, t in ipairs(wants or { want }) do names[i] = tostring(t) end
        violation(errs, path, "expected %s, got %s", table.concat(names, " or "),
          actual == "empty" and "{}" or actual)
        return false
      end
    end
    local ok = true
    for i = 1, n do
      if not checks[i](v, path, errs, actual) then
        if not errs then return false end
        ok = false
      end
    end
    return ok
  end
  -- The usual nodes of a tool's parameters go first without classifying
  -- the value: a scalar of one type with nothing more to check, an object
  -- whose only check is its children's. Anything else, and every value
  -- that fails there, takes the general check (which says what is wrong).
  local lua_type = n == 0 and SCALARS[want]
  if lua_type then
    fn = function(v, path, errs)
      if type(v) == lua_type then return true end
      return general(v, path, errs)
    end
  elseif n == 0 and want == "integer" then
    fn = function(v, path, errs)
      if math.type(v) == "integer" then return true end
      return general(v, path, errs)
    end
  elseif want == "object" and n == 1 and children then
    local null = json.null
    fn = function(v, path, errs)
      if type(v) == "table" and v[1] == nil and v ~= null then return object_children(v, path, errs) end
      return general(v, path, errs)
    end
  else
    fn = general
  end
  cache[s] = fn
  return fn
end

-- What `v` does wrong against `s` (inside schema `root`): a list of
-- messages with paths, empty when it validates.
local function validate(v, s, root, lenient)
  local errs = {}
  compile(s, root or s, lenient)(v, "#", errs)
  return errs
end

--- What `value` (a decoded JSON value) does wrong against `schema`: a list
--- of messages with paths, empty when it validates.
---@param value any
---@param schema table
---@return string[]
function M.validate(value, schema) return validate(value, schema, schema) end

--- What `value` (decoded) does wrong against `schema`, as validate says
--- it, but lenient where the schema says nothing tide can read (a $ref it
--- cannot follow): for what another party judges too, a tool call's
--- arguments (the handler or server behind the tool) and an MCP tool's
--- structured result (against its output schema). Nil when it is valid.
---@param value any
---@param schema table
---@return string[]|nil
function M.validate_lenient(value, schema)
  -- (the yes-or-no check first: a valid value, the usual case, makes no
  -- path or message)
  if compile(schema, schema, true)(value) then return nil end
  return validate(value, schema, schema, true)
end

--- validate_lenient's yes-or-no check for one `schema`, compiled once:
--- fn(value) -> whether it is valid (validate_lenient then says what is
--- wrong).
---@param schema table
---@return fun(value:any):boolean
function M.lenient_checker(schema)
  return compile(schema, schema, true)
end

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
      if compile(sub, root)(v, nil, nil) then M.mark_arrays(v, sub, root) end
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

--- The JSON in a model's answer: the whole text, or the one fenced block
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
