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
--- last saw it (tide.queue's answer script appends a queued turn's last
--- records the same way: `M.APPEND_FN`). Otherwise nothing is written and
--- the append fails:
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

--- The append, as a function of a Redis script: to `list` under `lease`
--- (held by `token`, or by none), when the list is `expected` long, the
--- records ARGV[from..], the list then expiring after `ttl` ms ("0":
--- never). {0, length} when written, {-1, 0} when another holds the lease,
--- {-2, length} when the list is not as long as expected: read by
--- `M.append_error`.
M.APPEND_FN = [[
local function tide_append(list, lease, token, expected, ttl, from)
  local holder = redis.call('GET', lease)
  if holder and holder ~= token then return {-1, 0} end
  local n = redis.call('LLEN', list)
  if n ~= tonumber(expected) then return {-2, n} end
  n = redis.call('RPUSH', list, unpack(ARGV, from))
  if ttl ~= '0' then redis.call('PEXPIRE', list, ttl) end
  return {0, n}
end
]]

-- ARGV: the lease token, the length expected, the TTL in ms, the records.
local APPEND = M.APPEND_FN .. "return tide_append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], 4)\n"

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
      ttl = tostring(c.session_ttl_ms or 0), inflight = nil }, writer_mt)
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

--- What an append script's answer `r` (see `M.APPEND_FN`) means for the
--- writer of session `path` that expected `known` records: nil when the
--- records were written, else the error (SessionBusy, or SessionCorrupt
--- with reason "lost").
function M.append_error(path, known, r)
  if r[1] == -1 then
    return core.error("SessionBusy", ("session '%s' is held by another process"):format(path), { session = path })
  elseif r[1] == -2 then
    if r[2] < known then
      return core.error("SessionCorrupt", ("session '%s' in Redis holds %d records, fewer than the %d this "
        .. "process wrote (Redis lost them: restarted without persistence?)"):format(path, r[2], known),
        { session = path, reason = "lost" })
    end
    return core.error("SessionBusy", ("session '%s' was written by another process"):format(path), { session = path })
  end
end

-- Appends `lines` with the length the previous append left, in a task of
-- its own (the writer's `inflight`); true, or nil and the error.
local function append(self, lines)
  local args = { self.lease.token or "", self.known, self.ttl }
  for i = 1, #lines do args[i + 3] = lines[i] end
  local ok, r, err = pcall(self.script, self.keys, args)
  if not ok then err, r = r, nil end -- (a raised error: Cancelled, say)
  if r then
    err = M.append_error(self.path, self.known, r)
    if not err then
      self.known = r[2]
      return true
    end
  end
  self.failed = true
  return nil, err
end

-- Waits for append task `t`: true, or nil and its error. A wait that is
-- interrupted leaves it in flight for the next; every waiter of one
-- append gets its outcome.
local function joined(self, t)
  local ok, err = t:join()
  if self.inflight == t then self.inflight = nil end
  return ok, err
end

-- Waits until no append is in flight: true, or nil and the error of the
-- one that failed.
local function settle(self)
  while self.inflight do
    local ok, err = joined(self, self.inflight)
    if not ok then return nil, err end
  end
  return true
end

-- One append at a time, each expecting the length the one before left:
-- the one in flight is waited for before the next is sent (no wait comes
-- between that check and the send).
local function flush(self, behind)
  local ok, err = settle(self)
  if not ok then return nil, err end
  local lines = self.pending
  if #lines == 0 then return true end
  self.pending = {}
  local t = core.spawn_now(append, self, lines)
  self.inflight = t
  if behind then return true end
  return joined(self, t)
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
--- writer: the session reloads from Redis before its next turn. `behind`:
--- the write is sent and not waited for (before a provider request, whose
--- answer takes longer than Redis's): the next flush, or `hand_over`,
--- waits for it first and fails with its error, so a failure is known
--- before anything the request brought back is kept or acted on.
---@param behind? boolean
function writer_mt:flush(behind)
  return blocking(flush, self, behind)
end

--- Hands the records waiting over to a script of another module that
--- appends them with what it writes (tide.queue's answer): the append in
--- flight is waited for first. Returns { list, lease, known, ttl, lines }
--- (the keys, the length expected, the TTL, the records; no records: an
--- empty list), or nil, err (that of the append in flight). Inside a task.
function writer_mt:hand_over()
  local ok, err = settle(self)
  if not ok then return nil, err end
  local lines = self.pending
  self.pending = {}
  return { list = self.keys[1], lease = self.keys[2], known = self.known, ttl = self.ttl, lines = lines }
end

function writer_mt:close() end

return M
