--- tide.provider.limits: a provider's rate limits, held process-wide.
---
--- `limits = { rpm, tpm }` on a provider: requests and tokens per minute,
--- as the provider's account allows them. Every provider object with the
--- same endpoint, model and key shares one pair of token buckets in the
--- process (refilled continuously, a minute's allowance at most), so that
--- many sessions, and many provider objects, do not run into 429s
--- together. A request waits (in its task) until both buckets allow it;
--- its tokens are estimated from the body (a quarter token a byte, plus
--- max_tokens) and corrected with the usage the reply reports. A 429's
--- Retry-After pauses every request on the key.
---@class tide.provider.limits
local M = {}

local core = require "tide.core"

local buckets = {} -- key -> { rpm, tpm, req, tok, at, paused_until }

local function now() return core.hrtime() / 1e6 end

-- The shared state of `p`'s limits, made on first use.
local function bucket(p)
  local key = p._limits_key
  if not key then
    key = table.concat({ p.base_url, tostring(p.model), core.hash(p.api_key or "") }, "|")
    rawset(p, "_limits_key", key)
  end
  local b = buckets[key]
  if not b then
    b = { req = p.limits.rpm, tok = p.limits.tpm, at = now(), paused_until = 0 }
    buckets[key] = b
  end
  -- the latest limits given for the key hold
  b.rpm, b.tpm = p.limits.rpm, p.limits.tpm
  return b
end

local function refill(b)
  local t = now()
  local dt = t - b.at
  b.at = t
  if b.rpm then b.req = math.min(b.rpm, b.req + dt * b.rpm / 60000) end
  if b.tpm then b.tok = math.min(b.tpm, b.tok + dt * b.tpm / 60000) end
end

--- Checks a `limits` option; returns an error message or nil.
function M.check(v, where)
  if type(v) ~= "table" then return where .. "'limits' must be a table" end
  for k, x in pairs(v) do
    if k ~= "rpm" and k ~= "tpm" then return ("%sunknown option 'limits.%s'"):format(where, tostring(k)) end
    if math.type(x) ~= "integer" or x <= 0 then return ("%s'limits.%s' must be a positive integer"):format(where, k) end
  end
  return nil
end

--- Waits until `p` may send a request of `tokens` estimated tokens; takes
--- them from the buckets and returns the estimate (for `settle`).
function M.acquire(p, tokens)
  local b = bucket(p)
  if b.tpm and tokens > b.tpm then tokens = b.tpm end -- one request larger than a minute still goes, alone
  while true do
    refill(b)
    local wait = math.max(0, b.paused_until - now())
    if wait == 0 then
      if b.rpm and b.req < 1 then wait = (1 - b.req) * 60000 / b.rpm end
      if b.tpm and b.tok < tokens then wait = math.max(wait, (tokens - b.tok) * 60000 / b.tpm) end
    end
    if wait <= 0 then break end
    core.sleep(math.max(1, math.ceil(wait)))
  end
  if b.rpm then b.req = b.req - 1 end
  if b.tpm then b.tok = b.tok - tokens end
  return tokens
end

--- Corrects the token bucket with what the reply reported (`used`) for a
--- request that took `estimate`.
function M.settle(p, estimate, used)
  local b = bucket(p)
  if b.tpm and used then b.tok = math.min(b.tpm, b.tok + estimate - used) end
end

--- Pauses every request on `p`'s key for `ms` (a 429's Retry-After).
function M.pause(p, ms)
  local b = bucket(p)
  b.paused_until = math.max(b.paused_until, now() + ms)
end

--- The counters of `p`'s key: what is left and whether it is paused.
function M.state(p)
  local b = bucket(p)
  refill(b)
  return { requests = b.req, tokens = b.tok, paused_ms = math.max(0, b.paused_until - now()) }
end

--- Forgets every bucket (specs).
function M._reset() buckets = {} end

return M
