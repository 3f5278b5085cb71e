--- tide.provider.limits: a provider's rate limits, held process-wide, or
--- cluster-wide under `tide.cluster`.
---
--- `limits = { rpm, tpm }` on a provider: requests and tokens per minute,
--- as the provider's account allows them. Every provider object with the
--- same endpoint, model and key shares one pair of token buckets (refilled
--- continuously; a bucket holds one second's allowance, so that no rolling
--- minute ever sees much more than `rpm` requests, bursts included). A
--- request *reserves* its place: the bucket may go below zero, and the
--- request waits (in its task) until the reserved moment, so that one
--- exchange with the bucket is all a request costs, even in Redis. Tokens
--- are estimated from the body (a quarter token a byte, plus max_tokens)
--- and corrected with the usage the reply reports, at the key's next
--- reservation. A 429's Retry-After pauses every request on the key.
---
--- The bucket arithmetic is one function (`RESERVE`), run here on a Lua
--- table and, under a cluster, inside Redis as a script on a hash: every
--- worker then draws from the same buckets on Redis's clock. When Redis
--- cannot be reached the process-wide bucket holds (counted in
--- `M.state(p).local_fallbacks`): a request is never refused for it.
---@class tide.provider.limits
local M = {}

local core = require "tide.core"

-- Lua 5.1 as well as 5.4: Redis runs it too. b = { req, tok, at, paused }
-- (at, paused in ms); returns how long the request must wait, in ms.
local RESERVE = [[
local function reserve(b, now, rpm, tpm, tokens, correction)
  local dt = now - (b.at or now)
  if dt < 0 then dt = 0 end
  b.at = now
  local wait = (b.paused or 0) - now
  if wait < 0 then wait = 0 end
  if rpm > 0 then
    local cap = math.max(1, rpm / 60)
    b.req = math.min(cap, (b.req or cap) + dt * rpm / 60000) - 1
    if b.req < 0 then wait = math.max(wait, -b.req * 60000 / rpm) end
  end
  if tpm > 0 then
    local cap = math.max(1, tpm / 60)
    b.tok = math.min(cap, (b.tok or cap) + dt * tpm / 60000 + correction)
    -- one request larger than the bucket still goes, and those after it wait
    b.tok = b.tok - tokens
    if b.tok < 0 then wait = math.max(wait, -b.tok * 60000 / tpm) end
  end
  return wait
end
]]

local reserve = assert(load(RESERVE .. "return reserve", "=limits.reserve"))()

-- The Redis side: the same function on a hash, Redis's clock, one call.
-- KEYS[1] the bucket; ARGV rpm, tpm, tokens, correction. The wait goes
-- back as a string (Redis truncates numbers to integers).
local SCRIPT = RESERVE .. [[
local h = redis.call('HMGET', KEYS[1], 'req', 'tok', 'at', 'paused')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local b = { req = tonumber(h[1]), tok = tonumber(h[2]), at = tonumber(h[3]), paused = tonumber(h[4]) }
local wait = reserve(b, now, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'req', tostring(b.req or 0), 'tok', tostring(b.tok or 0), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], 120000)
return tostring(wait)
]]

-- A pause: KEYS[1] the bucket, ARGV[1] ms from Redis's now.
local PAUSE = [[
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 + tonumber(ARGV[1])
local cur = tonumber(redis.call('HGET', KEYS[1], 'paused') or '0') or 0
if until_ms > cur then redis.call('HSET', KEYS[1], 'paused', tostring(until_ms)) end
redis.call('PEXPIRE', KEYS[1], 120000)
return 1
]]

local buckets = {} -- key -> { req, tok, at, paused, correction, fallbacks }

local function now() return core.hrtime() / 1e6 end

local function key_of(p)
  local key = p._limits_key
  if not key then
    key = core.hash(table.concat({ p.base_url, tostring(p.model), core.hash(p.api_key or "") }, "|"))
    rawset(p, "_limits_key", key)
  end
  return key
end

-- The process's state of `p`'s key, made on first use.
local function bucket(p)
  local key = key_of(p)
  local b = buckets[key]
  if not b then
    b = { correction = 0, fallbacks = 0, remote = 0 }
    buckets[key] = b
  end
  return b
end

local function cluster()
  local c = package.loaded["tide.cluster"]
  return c and c.current()
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

-- How long a reservation waits for Redis's answer. A Redis that neither
-- answers nor closes the connection (a paused server, a network cut) must
-- not hold every provider request up: past this, the process's bucket
-- holds, and does until that answer comes.
local REMOTE_WAIT_MS = 1000
local stalled = setmetatable({}, { __mode = "k" }) -- cluster -> its unanswered reservation

-- Reserves in Redis; the wait in ms, or nil when Redis cannot answer.
local function reserve_remote(c, p, b, tokens)
  local pending = stalled[c]
  if pending then
    local st = pending:status()
    if st ~= "done" and st ~= "failed" then return nil end
    stalled[c] = nil
  end
  local script = b.script
  if not script or b.cluster ~= c then
    script = c:script("limits.reserve", SCRIPT)
    b.script, b.cluster = script, c
  end
  local correction = b.correction
  b.correction = 0
  -- never wait for Redis to come back: the process's bucket holds meanwhile
  local t = core.spawn_now(script, { c:key("limits", key_of(p)) },
    { p.limits.rpm or 0, p.limits.tpm or 0, tokens, correction }, true)
  local r = t:join(REMOTE_WAIT_MS)
  local st = t:status()
  if st ~= "done" and st ~= "failed" then
    -- left to finish when Redis answers (its command is sent, the
    -- correction with it)
    stalled[c] = t
    return nil
  end
  if r == nil then
    b.correction = b.correction + correction
    return nil
  end
  b.remote = b.remote + 1
  return tonumber(r)
end

--- Reserves room for one request of `tokens` estimated tokens on `p`'s
--- key, waits until then, and returns the estimate (for `settle`).
---@param p table the provider
---@param tokens integer
---@return integer
function M.acquire(p, tokens)
  local b = bucket(p)
  local c = cluster()
  local wait = c and reserve_remote(c, p, b, tokens)
  if not wait then
    if c then b.fallbacks = b.fallbacks + 1 end
    local correction = b.correction
    b.correction = 0
    wait = reserve(b, now(), p.limits.rpm or 0, p.limits.tpm or 0, tokens, correction)
  end
  if wait > 0 then core.sleep(math.max(1, math.ceil(wait))) end
  return tokens
end

--- Corrects the token bucket with what the reply reported (`used`) for a
--- request that took `estimate`; applied at the key's next reservation.
function M.settle(p, estimate, used)
  if not (p.limits.tpm and used) then return end
  local b = bucket(p)
  b.correction = b.correction + estimate - used
end

--- Pauses every request on `p`'s key for `ms` (a 429's Retry-After): in
--- the process, and under a cluster in every worker.
function M.pause(p, ms)
  local b = bucket(p)
  b.paused = math.max(b.paused or 0, now() + ms)
  local c = cluster()
  if c then
    local pause = c:script("limits.pause", PAUSE)
    -- (bounded as a reservation is: the process's pause holds meanwhile)
    core.spawn_now(pause, { c:key("limits", key_of(p)) }, { ms }, true):join(REMOTE_WAIT_MS)
  end
end

--- The process's counters of `p`'s key: what is left, whether it is
--- paused, reservations made in Redis and those that fell back to the
--- process's bucket because Redis could not answer.
function M.state(p)
  local b = bucket(p)
  local cap_r = p.limits.rpm and math.max(1, p.limits.rpm / 60)
  local t = now()
  local dt = t - (b.at or t)
  return {
    requests = cap_r and math.min(cap_r, (b.req or cap_r) + dt * p.limits.rpm / 60000),
    paused_ms = math.max(0, (b.paused or 0) - t),
    remote = b.remote,
    local_fallbacks = b.fallbacks,
  }
end

--- Forgets every bucket (specs).
function M._reset() buckets = {} end

return M
