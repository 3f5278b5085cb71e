--- tide.http: HTTP requests through libcurl on the event loop.
---@class tide.http
local http = {}

local core = require "tide.core"

local function blocking(fn, ...)
  return require("tide")._blocking(fn, ...)
end

local fields = {
  method = "string", url = "string", headers = "table", body = "string",
  timeout_ms = "number", connect_timeout_ms = "number", max_body_bytes = "number",
  on_data = "function", verify = "boolean", hold = "boolean",
}

---@class tide.http.response
---@field status integer
---@field headers table<string,string> lowercased names
---@field body string empty when on_data streamed it
---@field reused boolean the connection was reused (keep-alive)
---@field timing {total_ms:number, ttfb_ms:number, connect_ms:number}

-- Responses carry their raw header block; the table is parsed on first use.
local parse_headers = core.http_parse_headers
local response_mt = {
  __index = function(res, k)
    if k == "headers" then
      local h = parse_headers(rawget(res, "headers_raw") or "")
      rawset(res, "headers", h)
      return h
    end
  end,
}

-- A core response table as a tide.http.response (internal: the providers
-- drive core.http_request themselves).
function http._response(v) return setmetatable(v, response_mt) end

local function perform(opts)
  local req <close> = core.http_request({
    method = opts.method, url = opts.url, headers = opts.headers, body = opts.body,
    timeout_ms = opts.timeout_ms, connect_timeout_ms = opts.connect_timeout_ms,
    max_body_bytes = opts.max_body_bytes, verify = opts.verify, hold = opts.hold,
    stream = opts.on_data ~= nil,
  })
  local on_data = opts.on_data
  while true do
    local kind, v = req:next()
    if kind == "data" then
      on_data(v)
    elseif kind == "done" then
      return setmetatable(v, response_mt)
    else
      return nil, v
    end
  end
end

-- Why s cannot be a method or header name (RFC 9110's token), nil if it
-- can: core.http_request refuses the same, but from inside the request's
-- task, where the error would name neither this function nor its caller.
local function not_token(s)
  if s == "" then return "is empty" end
  local i = s:find("[^%w!#$%%&'*+%-.^_`|~]")
  if not i then return nil end
  local c = s:sub(i, i)
  if c == "\r" or c == "\n" then return "is not a token (it has a CR or LF)" end
  if c == "\0" then return "is not a token (it has a NUL)" end
  if c == " " or c == "\t" then return "is not a token (it has white space)" end
  if c == ":" then return "is not a token (it has a colon)" end
  return "is not a token (it has a byte a token cannot hold)"
end

-- The largest count of milliseconds or bytes taken: core.http_request
-- converts it to a C integer, which a larger float overflows.
local MAX_COUNT = 2 ^ 53

--- Sends an HTTP request. Inside a task it suspends only that task; outside
--- any task it drives the loop until the response is in.
--- With `on_data`, a 2xx body is handed over chunk by chunk as it arrives
--- (the function runs inside the task and may itself wait).
--- With `hold = false` the request keeps no tide.run alive: a stream
--- listened to in the background, cancelled once nothing else is left.
---@param opts {method?:string, url:string, headers?:table<string,string>, body?:string, timeout_ms?:integer, connect_timeout_ms?:integer, max_body_bytes?:integer, on_data?:fun(chunk:string), verify?:boolean, hold?:boolean}
---@return tide.http.response|nil res
---@return table|nil err  `{ code = "Timeout"|"ConnectFailed"|"BodyTooLarge"|"ConnectionClosed"|..., message }`
function http.request(opts)
  if type(opts) ~= "table" then
    error(("bad argument #1 to 'request' (table expected, got %s)"):format(type(opts)), 2)
  end
  for k, want in pairs(fields) do
    local v = opts[k]
    if v ~= nil and type(v) ~= want then
      error(("bad argument #1 to 'request' (field '%s' must be a %s, got %s)"):format(
        k, want, type(v)), 2)
    end
  end
  for k in pairs(opts) do
    if fields[k] == nil then
      error(("bad argument #1 to 'request' (unknown option '%s')"):format(tostring(k)), 2)
    end
  end
  if opts.url == nil then
    error("bad argument #1 to 'request' (field 'url' is required)", 2)
  end
  for _, k in ipairs { "timeout_ms", "connect_timeout_ms", "max_body_bytes" } do
    local v = opts[k]
    if v ~= nil and not (v >= 0 and v <= MAX_COUNT) then
      error(("bad argument #1 to 'request' (field '%s' must be a non-negative number up to 2^53, got %s)"):format(
        k, tostring(v)), 2)
    end
  end
  -- (libcurl reads the URL up to its first NUL: the rest would be dropped
  -- without a word)
  if opts.url:find("\0", 1, true) then
    error("bad argument #1 to 'request' (field 'url' has a NUL)", 2)
  end
  local why = opts.method and not_token(opts.method)
  if why then error(("bad argument #1 to 'request' (method %s)"):format(why), 2) end
  if opts.headers then
    for name, value in pairs(opts.headers) do
      if type(name) ~= "string" or (type(value) ~= "string" and type(value) ~= "number") then
        error("bad argument #1 to 'request' (field 'headers' must map names to strings)", 2)
      end
      -- a bad name or value is described, never shown: a misplaced API key
      -- must not reach a log
      why = not_token(name)
      if why then error(("bad argument #1 to 'request' (header name %s)"):format(why), 2) end
      value = tostring(value)
      why = value:find("[\r\n]") and "has a CR or LF in its value"
        or value:find("\0", 1, true) and "has a NUL in its value"
      if why then error(("bad argument #1 to 'request' (header '%s' %s)"):format(name, why), 2) end
    end
  end
  return blocking(perform, opts)
end

--- Counters of the HTTP client: requests started, connections opened.
function http.stats() return core.http_stats() end

return http
