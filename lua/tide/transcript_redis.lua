--- tide.transcript_redis: session transcripts in Redis, and the lease that
--- lets one process at a time run turns on a session
--- (`tide.session{ id = ..., store = "redis" }`).
---
--- Layout, under the cluster's prefix:
---
---     <prefix>:session:<id>         a list: the records of tide.transcript,
---                                   one JSON text per element, meta first
---     <prefix>:session:<id>:lease   the lease: a token (SET NX PX), renewed
---                                   while its holder runs a turn
---
--- With the cluster's `session_ttl_ms`, a session's list (and each of its
--- sub-agents' lists) expires that long after its last write, in the script
--- that writes: an idle conversation leaves Redis by itself. A session
--- whose list expired is a new session.
---
--- Each record is appended by one script, atomically, and only when no
--- other process holds the lease and the list is as long as this writer
--- last saw it. Otherwise nothing is written and the append fails:
--- `SessionBusy` when another process holds the session or wrote to it,
--- `SessionCorrupt` (reason "lost") when the list is shorter than this
--- process wrote (Redis lost it: a restart without persistence). So a
--- record never lands after another process's it did not see, or after a
--- hole. There is no torn record in Redis: a record that does not decode is
--- `SessionCorrupt`, never skipped.
---@class tide.transcript_redis
local M = {}

local core = require "tide.core"
local json = require "tide.json"

-- ARGV: the lease token, the length expected, the TTL in ms ("0": none),
-- the records.
local APPEND = [[
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {-1, 0} end
local n = redis.call('LLEN', KEYS[1])
if n ~= tonumber(ARGV[2]) then return {-2, n} end
n = redis.call('RPUSH', KEYS[1], unpack(ARGV, 4))
if ARGV[3] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {0, n}
]]

-- The lease, and how long the list is now: a holder that takes the lease
-- learns in the same step whether another process wrote since it loaded.
-- With a guard (KEYS[3] must hold ARGV[3]), the lease is taken only while
-- the guard holds, so that a caller's precondition and the lease are one
-- step: tide.queue's "this request is still wanted".
local ACQUIRE = [[
if KEYS[3] and redis.call('GET', KEYS[3]) ~= ARGV[3] then return -2 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return redis.call('LLEN', KEYS[2]) end
return -1
]]

local RENEW = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
]]

local RELEASE = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
]]

local function blocking(fn, ...) return require("tide")._blocking(fn, ...) end

local writer_mt = { __name = "tide.transcript_redis.writer" }
writer_mt.__index = writer_mt

local stores = setmetatable({}, { __mode = "k" })

--- The store of cluster `c` (one per cluster).
---@param c tide.cluster
---@return table store (see tide.transcript for what a store has)
function M.store(c)
  local s = stores[c]
  if s then return s end
  local append = c:script("tide_transcript_append", APPEND)
  local acquire = c:script("tide_lease_acquire", ACQUIRE)
  local renew = c:script("tide_lease_renew", RENEW)
  local release = c:script("tide_lease_release", RELEASE)
  local function log_key(id) return c:key("session", id) end
  local function lease_key(id) return c:key("session", id, "lease") end
  s = { kind = "redis", cluster = c }

  --- Reads session `id`'s records: meta, records, info ({ count }), or
  --- false when there is no such session, or nil, err (SessionCorrupt,
  --- ClusterUnavailable, RedisError).
  function s.load(id)
    local list, err = blocking(c.call, c, "LRANGE", log_key(id), 0, -1)
    if not list then return nil, err end
    if #list == 0 then return false end
    local meta, records = nil, {}
    for i, text in ipairs(list) do
      local v = json.decode(text)
      -- an array decodes to a table too, and would be read as a message
      -- with no role: every later turn would fail on it, far from the cause
      if type(v) ~= "table" or not text:match("^%s*{") then
        return nil, core.error("SessionCorrupt", ("session '%s': record %d in Redis is not a JSON object"):format(id, i),
          { session = id, record = i })
      end
      if i == 1 then
        if v.type ~= "meta" then
          return nil, core.error("SessionCorrupt", ("session '%s': the first record in Redis is not its meta record"):format(id),
            { session = id, record = 1 })
        end
        meta = v
      else
        records[#records + 1] = v
      end
    end
    return meta, records, { count = #list }
  end

  --- How many records session `id` has (0: none), or nil, err.
  function s.length(id)
    return blocking(c.call, c, "LLEN", log_key(id))
  end

  --- A writer for session `id`, whose list has `info.count` records (none:
  --- a new session: `meta` goes first, with the first records written).
  --- `lease` is the session's lease table: appends carry its token while it
  --- holds one.
  function s.open(id, meta, info, lease)
    local w = setmetatable({ path = id, strict = true, known = info and info.count or 0,
      lease = lease or {}, keys = { log_key(id), lease_key(id) }, script = append, pending = {},
      ttl = tostring(c.session_ttl_ms or 0) }, writer_mt)
    if w.known == 0 and meta then w.pending[1] = json.canonical(meta) end
    return w
  end

  --- A sub-agent's transcript: a list of its own, named after the parent's
  --- and unique across processes (task ids are not).
  function s.child_name(id, what, _)
    return id .. "/" .. what:gsub("[^%w_%-]", "_") .. "." .. require("tide.cluster").unique()
  end

  --- Takes the lease of session `id` for `ttl_ms` under `token`: the length
  --- of its list; or false, "held" while another holds it; or nil, err.
  --- With `guard` ({ key, value }: a full key), only while that key holds
  --- that value: false, "guard" when it does not.
  function s.acquire(id, token, ttl_ms, guard)
    local keys, args = { lease_key(id), log_key(id) }, { token, ttl_ms }
    if guard then keys[3], args[3] = guard.key, guard.value end
    local n, err = acquire(keys, args)
    if n == nil then return nil, err end
    if n == -2 then return false, "guard" end
    if n < 0 then return false, "held" end
    return n
  end

  --- The key of session `id`'s lease, for a script of another module that
  --- gives the lease up with what it writes (tide.queue's answer).
  s.lease_key = lease_key

  --- Extends a held lease; false when it is no longer `token`'s.
  function s.renew(id, token, ttl_ms)
    local n, err = renew({ lease_key(id) }, { token, ttl_ms })
    if n == nil then return nil, err end
    return n == 1
  end

  --- Gives the lease up (when it is still `token`'s).
  function s.release(id, token)
    return release({ lease_key(id) }, { token })
  end

  stores[c] = s
  return s
end

-- One append at a time per writer: the length it expects is the one the
-- previous append left.
local function append(self, lines)
  while self.busy do core.sleep(1) end
  self.busy = true
  local args = { self.lease.token or "", self.known, self.ttl }
  for i = 1, #lines do args[i + 3] = lines[i] end
  local ok, r, err = pcall(self.script, self.keys, args)
  self.busy = false
  if not ok then error(r, 0) end
  if not r then return nil, err end
  if r[1] == -1 then
    return nil, core.error("SessionBusy", ("session '%s' is held by another process"):format(self.path),
      { session = self.path })
  elseif r[1] == -2 then
    if r[2] < self.known then
      return nil, core.error("SessionCorrupt", ("session '%s' in Redis holds %d records, fewer than the %d this "
        .. "process wrote (Redis lost them: restarted without persistence?)"):format(self.path, r[2], self.known),
        { session = self.path, reason = "lost" })
    end
    return nil, core.error("SessionBusy", ("session '%s' was written by another process"):format(self.path),
      { session = self.path })
  end
  self.known = r[2]
  return true
end

--- Appends records, one list element each; true, or nil, err. While the
--- writer is deferring (during a turn: tide.history's hold), records wait
--- for the next flush, which the turn makes before anything leaves the
--- process (a provider request, a tool call) and at its end: the records
--- of one step cost one round trip, and none is missing when something
--- outside could have seen it.
function writer_mt:append(...)
  local pending = self.pending
  for i = 1, select("#", ...) do pending[#pending + 1] = json.canonical((select(i, ...))) end
  if self.deferring then return true end
  return self:flush()
end

--- Writes the records waiting; true, or nil, err. A failed write marks the
--- writer: the session reloads from Redis before its next turn.
function writer_mt:flush()
  local lines = self.pending
  if #lines == 0 then return true end
  self.pending = {}
  local ok, err = blocking(append, self, lines)
  if not ok then self.failed = true end
  return ok, err
end

function writer_mt:close() end

return M
