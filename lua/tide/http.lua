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
  on_data = "function", verify = "boolean",
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
    max_body_bytes = opts.max_body_bytes, verify = opts.verify,
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

--- Sends an HTTP request. Inside a task it suspends only that task; outside
--- any task it drives the loop until the response is in.
--- With `on_data`, a 2xx body is handed over chunk by chunk as it arrives
--- (the function runs inside the task and may itself wait).
---@param opts {method?:string, url:string, headers?:table<string,string>, body?:string, timeout_ms?:integer, connect_timeout_ms?:integer, max_body_bytes?:integer, on_data?:fun(chunk:string), verify?:boolean}
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
    if v ~= nil and not (v >= 0 and v < math.huge) then
      error(("bad argument #1 to 'request' (field '%s' must be a non-negative number, got %s)"):format(
        k, tostring(v)), 2)
    end
  end
  if opts.headers then
    for name, value in pairs(opts.headers) do
      if type(name) ~= "string" or (type(value) ~= "string" and type(value) ~= "number") then
        error("bad argument #1 to 'request' (field 'headers' must map names to strings)", 2)
      end
    end
  end
  return blocking(perform, opts)
end

--- Counters of the HTTP client: requests started, connections opened.
function http.stats() return core.http_stats() end

return http
