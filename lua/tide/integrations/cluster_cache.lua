--- tide.integrations.cluster_cache: the cluster's tier of the integration
--- cache, behind each process's own (core/cache.c).
---
--- Loaded only when the process joined a cluster (`tide.cluster{...}`). A
--- miss in the process's cache (one task per key and process gets here: the
--- C cache makes the others wait for it) resolves through Redis:
---
---   * the entry `<prefix>:icache:{<hash of the identity>}` holds the
---     snapshot's canonical JSON, behind a one-line header naming the
---     identity (checked on read, so that two identities whose hashes
---     collide never share a snapshot) and the TTL it was written with. A
---     hit installs it in the process's cache for what is left of its TTL.
---   * a miss takes the lease `...:lease` (SET NX PX `lease_ms`): its winner
---     fetches, renewing the lease while it does, writes the entry (PX the
---     TTL; only on success, and only while it still holds the lease, so an
---     invalidation during the fetch is never overwritten), drops the lease
---     and publishes on `<prefix>:icache`. The others wait for that message
---     (one subscription per process) and read again; a failure is
---     published too and handed to them, as the process cache hands a
---     failed fetch to its waiters. When the lease expires without a result
---     (its holder died), a waiter takes it and fetches.
---   * an invalidation deletes the entry and the lease and publishes it;
---     every process drops its own copy. After its subscriber reconnects a
---     process drops every copy it holds (what was published meanwhile is
---     lost) and reads Redis again.
---
--- Key names carry only a hash of the identity; values carry the identity
--- (already free of secrets: sources hash theirs) and the toolkits.
---
--- Redis failing is never a wrong answer and never a hang: each Redis step
--- is bounded (`redis_timeout_ms`), and none waits for a lost connection to
--- be made again; a failed one makes this miss fetch from the source
--- directly, as without a cluster, and for `pause_ms` afterwards (doubled at
--- each failure in a row) misses do so without asking Redis. Counted in
--- `stats()`. An invalidation that cannot reach Redis is kept and sent
--- before this process's next lookup of the key in Redis; other processes
--- keep their copies until their TTL.
---@class tide.integrations.cluster_cache
local M = {}

local core = require "tide.core"
local json = require "tide.json"

local settings = { lease_ms = 3000, wait_ms = 60000, redis_timeout_ms = 10000, pause_ms = 1000 }
local MAX_PAUSE_MS = 30000

--- The settings in force, after setting those in `opts`:
---   lease_ms          how long a lease outlives a fetcher that stopped
---                     renewing it (it is renewed every third of it);
---   wait_ms           how long a miss waits for another process's fetch
---                     before fetching itself;
---   redis_timeout_ms  the bound on each Redis step (a step whose reply has
---                     come but whose task waits for the CPU is not cut);
---   pause_ms          how long misses skip Redis after it failed (doubled
---                     at each failure in a row, up to 30 s).
--- Misuse raises at `level`.
---@param opts? { lease_ms?: integer, wait_ms?: integer, redis_timeout_ms?: integer, pause_ms?: integer }
---@param level? integer
---@return table
function M.settings(opts, level)
  level = (level or 1) + 1
  if opts ~= nil and type(opts) ~= "table" then
    error(("bad argument #1 to 'cluster' (table expected, got %s)"):format(type(opts)), level)
  end
  for k, v in pairs(opts or {}) do
    if settings[k] == nil then
      error(("bad argument #1 to 'cluster' (unknown option '%s')"):format(tostring(k)), level)
    end
    if math.type(v) ~= "integer" or v <= 0 then
      error(("bad argument #1 to 'cluster' (option '%s' must be a positive integer)"):format(k), level)
    end
  end
  for k, v in pairs(opts or {}) do settings[k] = v end
  local copy = {}
  for k, v in pairs(settings) do copy[k] = v end
  return copy
end

-- ------------------------------------------------------------- scripts --

-- KEYS entry, lease; ARGV token, lease_ms. One round trip for the common
-- cases: the entry, the lease, or how long the lease has left.
local ACQUIRE = [[
local v = redis.call('GET', KEYS[1])
if v then return { 'hit', v, redis.call('PTTL', KEYS[1]) } end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return { 'lease' } end
return { 'wait', redis.call('PTTL', KEYS[2]) }
]]

-- KEYS entry, lease; ARGV token, value, ttl_ms, channel, message. Writes
-- only while the lease is ours: an invalidation deletes it, and a fetch
-- that began before the invalidation must not put its result back.
local STORE = [[
local kept = 0
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  kept = 1
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return kept
]]

-- KEYS lease; ARGV token, channel, message: a failed fetch.
local RELEASE = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
]]

-- KEYS lease; ARGV token, lease_ms.
local RENEW = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
]]

-- KEYS entry, lease; ARGV channel, message.
local INVALIDATE = [[
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
]]

-- -------------------------------------------------------------- values --

local function now_ms() return core.hrtime() // 1000000 end

local function unavailable(message, fields)
  return core.error("IntegrationsUnavailable", message, fields)
end

local function encode(key, ttl, text)
  return json.canonical({ v = 1, id = key, ttl = ttl }) .. "\n" .. text
end

-- The empty containers of canonical JSON `text`, in document order: "[" for
-- an array, "{" for an object. lua-cjson decodes both as an empty table; the
-- snapshot must give `[]` back where the source had one (a schema's
-- `"required": []` read as `{}` is a different schema).
local function empties(text)
  local kinds, i = {}, 1
  while true do
    local s, _, c = text:find('(["%[{])', i)
    if not s then return kinds end
    if c == '"' then
      local j = s + 1
      while true do
        local q, _, qc = text:find('(["\\])', j)
        if not q then return kinds end
        if qc == "\\" then j = q + 2 else i = q + 1 break end
      end
    else
      local nx = text:byte(s + 1)
      if (c == "[" and nx == 93) or (c == "{" and nx == 125) then kinds[#kinds + 1] = c end
      i = s + 1
    end
  end
end

-- Walks a decoded value in canonical order (arrays by index, objects by
-- sorted key: the order json.canonical wrote them in), marking arrays.
local function mark_arrays(v, kinds, pos)
  if type(v) ~= "table" then return pos end
  if next(v) == nil then
    pos = pos + 1
    if kinds[pos] == "[" then setmetatable(v, json.array_mt) end
    return pos
  end
  if v[1] ~= nil then
    setmetatable(v, json.array_mt)
    for i = 1, #v do pos = mark_arrays(v[i], kinds, pos) end
    return pos
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do pos = mark_arrays(v[k], kinds, pos) end
  return pos
end

-- The snapshot a Redis value holds for `key`, or nil when it holds another
-- identity's or cannot be read.
local function decode(key, value, pttl)
  local nl = value:find("\n", 1, true)
  if not nl then return nil end
  local head = json.decode_fast(value:sub(1, nl - 1))
  if type(head) ~= "table" or head.v ~= 1 or head.id ~= key then return nil end
  local text = value:sub(nl + 1)
  local toolkits = json.decode_fast(text)
  if type(toolkits) ~= "table" then return nil end
  json.integers(toolkits)
  mark_arrays(toolkits, empties(text), 0)
  setmetatable(toolkits, json.array_mt)
  local ttl = math.tointeger(head.ttl) or 0
  local age = pttl >= 0 and math.max(0, ttl - pttl) or 0
  return { key = key, hash = core.cache_hash(text), toolkits = toolkits, fetched_at = core.now() - age }
end

M._decode, M._encode = decode, encode -- for specs

-- ---------------------------------------------------------------- tier --

---@class tide.integrations.cluster_cache.tier
local Tier = {}
Tier.__index = Tier

local tiers = setmetatable({}, { __mode = "k" })

local function process_id()
  local f = io.open("/proc/self/stat", "r")
  local pid = f and f:read("n")
  if f then f:close() end
  return core.hash(("%s|%s|%s|%s"):format(tostring(pid), core.hrtime(), os.time(), tostring({}))):sub(1, 12)
end

local COUNTERS = { "hits", "fetches", "waits", "takeovers", "failed_waits", "direct_fetches",
  "redis_errors", "dropped_writes", "unreadable", "invalidations_sent", "invalidations_received",
  "resubscribed" }

--- The tier of cluster `c` (made on first use).
---@param c tide.cluster
---@return tide.integrations.cluster_cache.tier
function M.of(c)
  local t = tiers[c]
  if t then return t end
  t = setmetatable({
    c = c,
    channel = c:key("icache"),
    origin = process_id(), -- tells this process's own messages apart
    seq = 0,
    known = {},     -- identity hash -> identity, for the messages
    waiters = {},   -- identity hash -> { waiter, ... }
    pending = {},   -- identity hash (or "*") -> true: an invalidation Redis has not had yet
    flushing = {},  -- identity hash (or "*") -> the task sending it
    paused_until = 0,
    confirmations = 0,
    acquire = c:script("tide_icache_acquire", ACQUIRE),
    store = c:script("tide_icache_store", STORE),
    release = c:script("tide_icache_release", RELEASE),
    renew = c:script("tide_icache_renew", RENEW),
    drop = c:script("tide_icache_invalidate", INVALIDATE),
    counters = {},
  }, Tier)
  for _, k in ipairs(COUNTERS) do t.counters[k] = 0 end
  t.on_message = function(_, payload) t:_message(payload) end
  t.on_confirmed = function() t:_confirmed() end
  tiers[c] = t
  return t
end

--- Counters: `hits` (Redis had the snapshot), `fetches` (this process
--- fetched holding the lease), `waits` (misses that waited for another
--- process's fetch), `takeovers` (of those, the ones that took an expired
--- lease and fetched), `failed_waits` (got another process's failure),
--- `direct_fetches` (fetched without the cluster: Redis failed or was
--- paused, or `wait_ms` passed), `redis_errors`, `dropped_writes` (results
--- not written because the lease was gone), `unreadable` (entries of
--- another identity or version), `invalidations_sent`,
--- `invalidations_received`, `resubscribed`.
---@return table
function Tier:stats()
  local s = {}
  for k, v in pairs(self.counters) do s[k] = v end
  return s
end

--- Zeroes the counters (for specs and benchmarks).
function Tier:reset_stats()
  for k in pairs(self.counters) do self.counters[k] = 0 end
end

function Tier:_count(k) self.counters[k] = self.counters[k] + 1 end

function Tier:_keys(h)
  local entry = self.c:key("icache", "{" .. h .. "}")
  return entry, entry .. ":lease"
end

function Tier:_msg(kind, h) return self.origin .. " " .. kind .. " " .. h end

-- Whether Redis can be asked now without waiting for a connection. A lost
-- one is made again in the background meanwhile: a session never waits
-- for a reconnection (the cluster's would wait up to reconnect_ms).
function Tier:_ready()
  local state = self.c:state()
  if state == "up" or state == "new" then return true end
  if state == "down" and not self.reconnecting then
    self.reconnecting = true
    local c = self.c
    core.spawn(function()
      pcall(c.connection, c)
      self.reconnecting = false
    end)
  end
  return false
end

-- Runs fn(...) (Redis steps) in a task of its own, for at most
-- redis_timeout_ms: a Redis that neither answers nor closes the connection
-- must not hold a session up. The bound is on Redis, not on this process:
-- a step still "ready" when it passes (answered, waiting for its turn on a
-- busy loop) is waited for.
function Tier:_op(fn, ...)
  if not self:_ready() then
    return nil, core.error("ClusterUnavailable", ("the connection to Redis at %s is being made again")
      :format(self.c.url), { reason = "lost" })
  end
  local t = core.spawn(fn, ...)
  local r
  while true do
    r = table.pack(t:join(settings.redis_timeout_ms))
    local st = t:status()
    if st == "done" or st == "failed" then break end
    if st == "waiting" then
      t:cancel()
      return nil, core.error("ClusterUnavailable", ("Redis at %s did not answer within %d ms"):format(
        self.c.url, settings.redis_timeout_ms), { reason = "timeout" })
    end
  end
  if r[1] == nil then
    local err = r[2]
    if type(err) ~= "table" then error(err, 0) end -- a bug, not Redis
    return nil, err
  end
  self.failures = 0
  return table.unpack(r, 1, r.n)
end

-- Redis failed: count it, and leave it alone for a while, longer at each
-- failure in a row.
function Tier:_failed(err)
  self:_count("redis_errors")
  self.failures = (self.failures or 0) + 1
  local pause = math.min(MAX_PAUSE_MS, settings.pause_ms * 2 ^ math.min(self.failures - 1, 16))
  self.paused_until = now_ms() + math.floor(pause)
  self.last_error = err
end

local function direct(fetch)
  local snap, err = fetch()
  return snap, err
end

-- ------------------------------------------------------------- waiting --

local function wake(list, kind)
  for _, w in ipairs(list or {}) do
    w.msg = kind
    if w.gate then w.gate:cancel() end
  end
end

-- A message on the channel (from the loop, not a task: never waits).
function Tier:_message(payload)
  local origin, kind, h = payload:match("^(%S+) (%a) (%S+)$")
  if not origin then return end
  if kind == "a" then
    if origin ~= self.origin then
      self:_count("invalidations_received")
      core.cache_invalidate_all()
    end
    for _, list in pairs(self.waiters) do wake(list, "i") end
    return
  end
  if kind == "i" and origin ~= self.origin then
    self:_count("invalidations_received")
    local key = self.known[h]
    if key then core.cache_invalidate(key) end
  end
  wake(self.waiters[h], kind)
end

-- Redis confirmed the subscription. On a new subscriber connection, what was
-- published while there was none is lost: every copy this process holds may
-- be stale, so each goes, and the next lookup reads Redis.
function Tier:_confirmed()
  if self.confirmations > 0 then
    self:_count("resubscribed")
    for _, key in pairs(self.known) do core.cache_invalidate(key) end
  end
  self.confirmations = self.confirmations + 1
  for _, list in pairs(self.waiters) do wake(list, "r") end
end

function Tier:_wait_for(h)
  local list = self.waiters[h]
  if not list then
    list = {}
    self.waiters[h] = list
  end
  local w = {}
  list[#list + 1] = w
  return w
end

function Tier:_unwait(h, w)
  local list = self.waiters[h]
  for i = #(list or {}), 1, -1 do
    if list[i] == w then table.remove(list, i) end
  end
  if list and #list == 0 then self.waiters[h] = nil end
  if w.gate then w.gate:cancel() end
end

-- Sleeps up to ms, or until a message for w arrives.
local function park(w, ms)
  if w.msg then return end
  w.gate = core.spawn(core.sleep, math.max(1, ms))
  w.gate:join()
  w.gate = nil
end

-- Subscribes (once; again after the subscriber was lost) and returns once
-- Redis confirmed the channel, so that whatever is published from now on
-- reaches this process. Every read of Redis comes after this: an entry read
-- before the subscription could miss its invalidation.
function Tier:_listen()
  local c = self.c
  if c:subscribed(self.channel) then return true end
  local ok, err = self:_op(function() return c:subscribe(self.channel, self.on_message, self.on_confirmed) end)
  if not ok then return nil, err end
  local deadline = now_ms() + settings.redis_timeout_ms
  local w = self:_wait_for("~") -- woken by the confirmation
  local done <close> = setmetatable({}, { __close = function() self:_unwait("~", w) end })
  while not c:subscribed(self.channel) do
    local left = deadline - now_ms()
    if left <= 0 then
      return nil, core.error("ClusterUnavailable", ("Redis at %s did not confirm the subscription within %d ms")
        :format(c.url, settings.redis_timeout_ms), { reason = "timeout" })
    end
    park(w, math.min(left, 50))
    w.msg = nil
  end
  return true
end

-- --------------------------------------------------------- invalidation --

-- Sends the invalidation of h ("*": all) to Redis. true, or nil, err (it
-- stays pending).
function Tier:_flush(h)
  local ok, err
  if h == "*" then
    local c, pattern = self.c, self.c:key("icache", "*")
    ok, err = self:_op(function()
      local cursor = "0"
      repeat
        local r, e = c:call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        if not r then return nil, e end
        cursor = r[1]
        if #r[2] > 0 then
          local d, de = c:call("UNLINK", table.unpack(r[2]))
          if not d then return nil, de end
        end
      until cursor == "0"
      return c:publish(self.channel, self:_msg("a", "*"))
    end)
  else
    local entry, lease = self:_keys(h)
    ok, err = self:_op(self.drop, { entry, lease }, { self.channel, self:_msg("i", h) })
  end
  if ok == nil then
    self:_failed(err)
    return nil, err
  end
  self.pending[h] = nil
  self:_count("invalidations_sent")
  return true
end

--- Sends the invalidation of `key` (nil: of every key) to Redis and every
--- process. The process's own cache was already invalidated. Inside a task
--- or while the loop runs, in a task of its own; otherwise now.
---@param key string?
function Tier:invalidate(key)
  local h = key and core.hash(key) or "*"
  if key then self.known[h] = key end
  self.pending[h] = true
  local function send()
    self:_flush(h)
  end
  if core.current() or core.running() then
    local t
    t = core.spawn(function()
      send()
      if self.flushing[h] == t then self.flushing[h] = nil end
    end)
    self.flushing[h] = t
  else
    require("tide")._blocking(send)
  end
end

-- Invalidations of h (or of all) this process made reach Redis before it
-- reads h there.
function Tier:_settle(h)
  for _, k in ipairs { "*", h } do
    local t = self.flushing[k]
    if t and t ~= core.current() then
      local st = t:status()
      if st ~= "done" and st ~= "failed" then t:join() end
    end
    if self.pending[k] then
      local ok, err = self:_flush(k)
      if not ok then return nil, err end
    end
  end
  return true
end

-- ------------------------------------------------------------ resolving --

-- This process holds the lease: fetch, share the result, drop the lease.
function Tier:_fetch_holding(h, key, token, ttl, fetch)
  local entry, lease = self:_keys(h)
  local renew, every = self.renew, math.max(1, settings.lease_ms // 3)
  -- Renewed while the fetch runs, so that a slow source is not mistaken for
  -- a dead process; a process that dies stops renewing, and its lease
  -- expires within lease_ms.
  local renewer = core.spawn(function()
    while true do
      core.sleep(every)
      if renew({ lease }, { token, settings.lease_ms }) ~= 1 then return end
    end
  end)
  local stop <close> = setmetatable({}, { __close = function() renewer:cancel() end })
  self:_count("fetches")
  local snap, err, text = fetch()
  renewer:cancel()
  if snap then
    local kept, serr = self:_op(self.store, { entry, lease },
      { token, encode(key, ttl, text), ttl, self.channel, self:_msg("s", h) })
    if kept == nil then
      self:_failed(serr)
    elseif kept == 0 then
      self:_count("dropped_writes")
    end
    return snap
  end
  -- A failure is never cached; those waiting get it, as in one process.
  local ok, rerr = self:_op(self.release, { lease }, { token, self.channel, self:_msg("f", h) })
  if ok == nil then self:_failed(rerr) end
  return nil, err
end

-- Redis cannot help with this miss: the source is asked directly.
function Tier:_direct(fetch, err)
  if err then self:_failed(err) end
  self:_count("direct_fetches")
  return direct(fetch)
end

--- Resolves a miss of the process cache for `key` through the cluster.
--- `fetch()` asks the source: snapshot, nil, canonical JSON of its
--- toolkits, or nil, err. Returns the snapshot, nil and the TTL left in ms
--- (nil: the full TTL), or nil, err (IntegrationsUnavailable: the source
--- failed, here or in the process that fetched for this one).
---@param key string
---@param fetch fun(): table?, table?, string?
---@return table? snapshot
---@return table? err
---@return integer? ttl_ms
function Tier:resolve(key, fetch)
  local ttl = core.cache_ttl_ms()
  if ttl == 0 then return direct(fetch) end -- nothing is kept, so nothing is shared
  local h = core.hash(key)
  self.known[h] = key
  if now_ms() < self.paused_until then return self:_direct(fetch) end
  local sok = self:_settle(h)
  if not sok then return self:_direct(fetch) end -- counted by _flush
  local lok, lerr = self:_listen()
  if not lok then return self:_direct(fetch, lerr) end
  local entry, lease = self:_keys(h)
  self.seq = self.seq + 1
  local token = self.origin .. ":" .. self.seq
  local deadline = now_ms() + settings.wait_ms
  local w
  local done <close> = setmetatable({}, { __close = function() if w then self:_unwait(h, w) end end })
  while true do
    local r, err = self:_op(self.acquire, { entry, lease }, { token, settings.lease_ms })
    if r == nil then return self:_direct(fetch, err) end
    if r[1] == "hit" then
      local pttl = math.tointeger(r[3]) or -1
      local snap = decode(key, r[2], pttl)
      if snap then
        self:_count("hits")
        return snap, nil, pttl > 0 and pttl or nil
      end
      -- Another identity's entry (their hashes collide) or another
      -- version's: this process fetches, and shares nothing for the key.
      self:_count("unreadable")
      return self:_direct(fetch)
    elseif r[1] == "lease" then
      if w then
        self:_count("takeovers")
        self:_unwait(h, w)
        w = nil
      end
      return self:_fetch_holding(h, key, token, ttl, fetch)
    end
    -- Another process fetches.
    if now_ms() >= deadline then return self:_direct(fetch) end
    if not w then
      -- Waiting from now on, then a look again (above): the result may
      -- have been published between that look and this.
      self:_count("waits")
      w = self:_wait_for(h)
    else
      local left = deadline - now_ms()
      park(w, math.min(left, math.max(0, math.tointeger(r[2]) or 0) + 10))
      local msg = w.msg
      w.msg = nil
      if msg == "f" then
        self:_count("failed_waits")
        return nil, unavailable(("fetching integrations for '%s' failed in the process that fetched for this one")
          :format(key), { key = key })
      end
    end
  end
end

return M
