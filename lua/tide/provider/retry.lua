--- tide.provider.retry: when a failed attempt is tried again, and after how
--- long: exponential backoff with full jitter, the server's Retry-After
--- honoured (`retry-after-ms`, or `retry-after` as seconds or an HTTP date).
local M = {}

--- Defaults of a provider's `retry` option.
M.DEFAULTS = { attempts = 4, base_ms = 250, max_ms = 8000, max_retry_after_ms = 60000 }

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6,
                 jul = 7, aug = 8, sep = 9, oct = 10, nov = 11, dec = 12 }

-- Seconds since the epoch of a UTC civil date (no dependence on the local
-- time zone, unlike os.time).
local function timegm(y, m, d, hh, mm, ss)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = (153 * mp + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + hh * 3600 + mm * 60 + ss
end

-- Parses an HTTP date in any of the three forms RFC 9110 accepts.
local function http_date(s)
  local d, mon, y, hh, mm, ss = s:match("^%a+,%s*(%d+)%s+(%a+)%s+(%d+)%s+(%d+):(%d+):(%d+)%s*GMT$")
  if not d then -- RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
    d, mon, y, hh, mm, ss = s:match("^%a+,%s*(%d+)%-(%a+)%-(%d+)%s+(%d+):(%d+):(%d+)%s*GMT$")
  end
  if not d then -- asctime: Sun Nov  6 08:49:37 1994
    mon, d, hh, mm, ss, y = s:match("^%a+%s+(%a+)%s+(%d+)%s+(%d+):(%d+):(%d+)%s+(%d+)$")
  end
  if not d then return nil end
  local m = MONTHS[mon:sub(1, 3):lower()]
  if not m then return nil end
  y = tonumber(y)
  if y < 100 then y = y + (y < 70 and 2000 or 1900) end
  return timegm(y, m, tonumber(d), tonumber(hh), tonumber(mm), tonumber(ss))
end

--- Milliseconds to wait according to the response headers (`retry-after-ms`,
--- or `retry-after` as seconds or an HTTP date), or nil.
---@param headers table<string,string>|nil lowercased names
---@param now? integer seconds since the epoch (default os.time())
---@return integer|nil
function M.after_ms(headers, now)
  if type(headers) ~= "table" then return nil end
  local ms = headers["retry-after-ms"]
  if type(ms) == "string" then
    local n = tonumber((ms:match("^%s*([%d%.]+)%s*$")))
    if n then return math.floor(n + 0.5) end
  end
  local v = headers["retry-after"]
  if type(v) ~= "string" then return nil end
  v = v:match("^%s*(.-)%s*$")
  local secs = v:match("^[%d%.]+$") and tonumber(v)
  if secs then return math.floor(secs * 1000 + 0.5) end
  local t = http_date(v)
  if not t then return nil end
  return math.max(0, (t - (now or os.time())) * 1000)
end

--- The delay before attempt `attempt + 1`: the server's Retry-After when it
--- gave one no longer than `max_retry_after_ms`, otherwise full jitter,
--- uniform in [0, min(max_ms, base_ms * 2^(attempt-1))].
---@param retry tide.provider.retry
---@param attempt integer the attempt that just failed (1-based)
---@param after_ms integer|nil
---@return integer
function M.backoff_ms(retry, attempt, after_ms)
  -- (a Retry-After of 0, or a date past, is no wait to keep: the backoff's)
  if after_ms and after_ms > 0 and after_ms <= retry.max_retry_after_ms then return after_ms end
  local cap = math.min(retry.max_ms, retry.base_ms * 2 ^ (attempt - 1))
  cap = math.floor(cap)
  if cap <= 0 then return 0 end
  return math.random(0, cap)
end

-- Failures of the connection that the official SDKs retry while no reply
-- has come: a refused or reset connection, one closed early, a timeout, a
-- name that did not resolve.
local TRANSPORT = { ConnectFailed = true, ConnectionClosed = true, Timeout = true, ResolveFailed = true }

--- Whether a failed attempt may be made again: never once streamed text
--- reached the caller (`delivered`); a retryable status (also when its body
--- was cut off); a connection that failed before any byte of a reply came
--- (`received`).
function M.retryable(err, received, delivered)
  if delivered then return false end
  if err.retryable then return true end
  if TRANSPORT[err.code] and not received then return true end
  -- (a retryable status whose body was cut off is retryable still)
  local st = err.code == "ConnectionClosed" and math.tointeger(err.status)
  if st and (st == 408 or st == 409 or st == 429 or st >= 500) then return true end
  return false
end

return M
