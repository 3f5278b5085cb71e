--- tide.cluster: several tide processes sharing state through Redis.
---
--- `tide.cluster{ redis = "redis://host:port/db" }` (or `TIDE_REDIS_URL`)
--- makes the process a member of a cluster: the integration cache, rate
--- limits, sessions (`store = "redis"`) and the turn queue then hold across
--- every process that names the same Redis (and `prefix`). Nothing here is
--- loaded, and no Redis is needed, until a script asks for a cluster.
---
--- Connections are made on first use, inside a task, without blocking the
--- loop (tide.redis: hiredis on tide's loop). A connection that breaks is
--- made again with backoff: commands issued meanwhile wait up to
--- `reconnect_ms` for it; commands in flight when it broke fail with
--- `ClusterUnavailable` (Redis may or may not have run them). The first
--- connection of a cluster is not retried: a wrong URL, a Redis that is not
--- there or a wrong password is a clear error at once.
---
--- Error codes: `ClusterUnavailable` (fields `reason` = "connect", "auth",
--- "lost", "oom", "timeout"), `RedisError` for any other error reply.
---@class tide.cluster
---@field url string the URL without its password
---@field prefix string the key prefix every tide key starts with
---@field session_ttl_ms integer|nil how long a Redis session's transcript outlives its last write
local Cluster = {}
Cluster.__index = Cluster

local core = require "tide.core"

local M = {}

local current -- the process's cluster, once tide.cluster{} made it

local OPTIONS = {
  redis = true, password = true, username = true, prefix = true,
  connect_timeout_ms = true, reconnect_ms = true, session_ttl_ms = true,
}

local function unavailable(reason, message)
  return core.error("ClusterUnavailable", message, { reason = reason })
end

--- Parses a Redis URL: redis://[user[:password]@]host[:port][/db] or
--- unix:///path[?db=N]. Returns nil and a message for a malformed one
--- (never quoting a password).
---@param url string
---@return table? where { host, port, path, db, username, password, shown }
---@return string? err
function M.parse_url(url)
  if type(url) ~= "string" or url == "" then
    return nil, "a redis:// URL expected"
  end
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if scheme == "rediss" then
    return nil, "TLS (rediss://) is not available: this hiredis ("
      .. require("tide.redis").hiredis .. ") is built without it"
  end
  if scheme == "unix" then
    local path, query = rest:match("^([^?]+)%??(.*)$")
    if not path or path:sub(1, 1) ~= "/" then return nil, "unix:///path expected" end
    local db = query and query:match("db=(%d+)")
    return { path = path, db = tonumber(db) or 0, shown = "unix://" .. path }
  end
  if scheme ~= "redis" then
    return nil, "redis://, rediss:// or unix:// expected"
  end
  local auth, hostpart = rest:match("^(.*)@([^@]*)$")
  hostpart = hostpart or rest
  local username, password
  if auth then
    local u, p = auth:match("^([^:]*):(.*)$")
    if u then username, password = u, p else password = auth end
    if username == "" then username = nil end
    -- percent-encoded, as in any URL: a password with '@', ':' or '/' in
    -- it can only be written so (redis-cli and the client libraries decode it)
    local function unescape(v)
      return v and (v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
    end
    username, password = unescape(username), unescape(password)
  end
  local host, port, path = hostpart:match("^%[([^%]]+)%]:?(%d*)(/?.*)$")
  if not host then host, port, path = hostpart:match("^([^:/]*):?(%d*)(/?.*)$") end
  if not host or host == "" then return nil, "no host in the URL" end
  port = port ~= "" and tonumber(port) or 6379
  if port < 1 or port > 65535 then return nil, "port must be 1..65535" end
  local db = 0
  if path ~= "" and path ~= "/" then
    db = tonumber(path:match("^/(%d+)$"))
    if not db then return nil, "the path must be a database number (/0)" end
  end
  return {
    host = host, port = port, db = db, username = username, password = password,
    shown = ("redis://%s:%d/%d"):format(host, port, db),
  }
end

local function build(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("bad argument #1 to 'cluster' (table expected)", 3) end
  for k in pairs(opts) do
    if not OPTIONS[k] then error(("bad argument #1 to 'cluster' (unknown option '%s')"):format(tostring(k)), 3) end
  end
  local url = opts.redis or os.getenv("TIDE_REDIS_URL")
  if not url then error("bad argument #1 to 'cluster' (option 'redis' or TIDE_REDIS_URL required)", 3) end
  local where, perr = M.parse_url(url)
  if not where then error("bad argument #1 to 'cluster' (option 'redis': " .. perr .. ")", 3) end
  for _, k in ipairs { "password", "username", "prefix" } do
    if opts[k] ~= nil and type(opts[k]) ~= "string" then
      error(("bad argument #1 to 'cluster' (option '%s' must be a string)"):format(k), 3)
    end
  end
  for _, k in ipairs { "connect_timeout_ms", "reconnect_ms", "session_ttl_ms" } do
    local v = opts[k]
    if v ~= nil and (math.type(v) ~= "integer" or v <= 0) then
      error(("bad argument #1 to 'cluster' (option '%s' must be a positive integer)"):format(k), 3)
    end
  end
  if opts.prefix and not opts.prefix:match("^[%w_.-]+$") then
    error("bad argument #1 to 'cluster' (option 'prefix' must be letters, digits, '_', '.' or '-')", 3)
  end
  where.password = opts.password or where.password
  where.username = opts.username or where.username
  local self = setmetatable({
    url = where.shown,
    prefix = opts.prefix or "tide",
    -- Sessions in Redis (their transcripts and sub-agents') expire this long
    -- after their last write; nil: they stay until deleted.
    session_ttl_ms = opts.session_ttl_ms,
    _where = where,
    _connect_timeout = opts.connect_timeout_ms or 2000,
    _reconnect_ms = opts.reconnect_ms or 10000,
    _conn = nil,          -- the command connection
    _connecting = false,
    _ever_connected = false,
    _blocking = {},       -- idle connections for blocking commands
    _subs = {},           -- channel -> handler
    _confirmed = {},      -- channel -> true once Redis confirmed it on _sub
    _on_confirmed = {},   -- channel -> fn(channel) run at every confirmation
    _patterns = {},       -- pattern -> handler
    _sub = nil,           -- the subscriber connection
    _sub_live = false,    -- its subscriptions are confirmed
    _scripts = {},        -- name -> { src, sha }
    stats = { reconnects = 0, commands = 0, sub_disconnects = 0 },
  }, Cluster)
  return self
end

--- A cluster object (see the module's description), not made current.
--- Misuse raises; nothing connects until the first command.
---@param opts? { redis?: string, password?: string, username?: string, prefix?: string, connect_timeout_ms?: integer, reconnect_ms?: integer, session_ttl_ms?: integer }
---@return tide.cluster
function M.new(opts) return build(opts) end

--- `tide.cluster{...}`: makes the process's cluster (`M.new`) and makes it
--- current, so that the cache, limits, sessions and queue use it. Calling it
--- again replaces it (the old one's connections close).
---@param opts? table as for M.new
---@return tide.cluster
function M.join(opts)
  local c = build(opts)
  if current then current:close() end
  current = c
  return c
end

--- The process's cluster, made by `tide.cluster{...}`; nil otherwise.
---@return tide.cluster?
function M.current()
  return current
end

--- Makes `c` the process's cluster (tide.cluster does).
function M.set_current(c) current = c end

--- The process's cluster, made from TIDE_REDIS_URL when there is none yet;
--- `what` names the caller in the error raised when neither exists.
---@param what string
---@param level integer
---@return tide.cluster
function M.require_current(what, level)
  if current then return current end
  if os.getenv("TIDE_REDIS_URL") then return M.join {} end
  error(what .. " needs a cluster: call tide.cluster{ redis = url } first (or set TIDE_REDIS_URL)", level + 1)
end

local unique_prefix, unique_n = nil, 0

--- A name no other process makes: 16 random hex digits for the process
--- (from /dev/urandom), then a counter. Lease tokens, request ids and
--- consumer names use it.
---@return string
function M.unique()
  if not unique_prefix then
    local f = io.open("/dev/urandom", "rb")
    local bytes = f and f:read(8)
    if f then f:close() end
    if not bytes or #bytes < 8 then
      -- no /dev/urandom: time, address and Lua's own seed, which differ between processes
      bytes = string.pack("<i8", math.random(0, math.maxinteger) ~ os.time() ~ (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))
    end
    unique_prefix = bytes:gsub(".", function(ch) return ("%02x"):format(ch:byte()) end)
  end
  unique_n = unique_n + 1
  return unique_prefix .. "-" .. unique_n
end

-- ------------------------------------------------------------ connecting --

--- Runs `fn(...)` (Redis steps) in a task of its own until `deadline` (in
--- core.now() ms): its results, or nil, false once the deadline passed (the
--- task cancelled; a command already sent still runs if Redis answers).
--- The task starts at once, as a direct call would: its first command is
--- on its way before the caller first waits. For what must not wait on a
--- Redis that neither answers nor closes the connection.
---@param deadline integer
---@param fn function
---@return any ...
function M.until_deadline(deadline, fn, ...)
  local t = core.spawn_now(fn, ...)
  while true do
    local r = table.pack(t:join(math.max(1, deadline - core.now())))
    local st = t:status()
    if st == "done" or st == "failed" then
      if r[1] == nil and type(r[2]) ~= "table" then error(r[2], 0) end -- a bug, not Redis
      return table.unpack(r, 1, r.n)
    end
    if st == "waiting" and core.now() >= deadline then
      t:cancel()
      return nil, false
    end
  end
end

-- AUTH, SELECT and a PING on a connection just made: the connection, or
-- nil, err (the connection closed).
local function handshake(self, conn)
  local w = self._where
  if w.password then
    local ok, aerr
    if w.username then
      ok, aerr = conn:call("AUTH", w.username, w.password)
    else
      ok, aerr = conn:call("AUTH", w.password)
    end
    if not ok then
      conn:close()
      -- Redis's reply names no secret (WRONGPASS, NOAUTH, ERR ...)
      return nil, unavailable("auth", ("Redis at %s refused the credentials: %s"):format(self.url,
        (aerr.message or ""):gsub("^redis: ", "")))
    end
  end
  if w.db ~= 0 then
    local ok, serr = conn:call("SELECT", w.db)
    if not ok then
      conn:close()
      return nil, unavailable("connect", ("Redis at %s: %s"):format(self.url, (serr.message or ""):gsub("^redis: ", "")))
    end
  end
  -- NOAUTH surfaces on the first command when a password is needed
  local pong, perr = conn:call("PING")
  if not pong then
    conn:close()
    local msg = (perr.message or ""):gsub("^redis: ", "")
    return nil, unavailable(msg:match("^NOAUTH") and "auth" or "connect",
      ("Redis at %s: %s"):format(self.url, msg))
  end
  return conn
end

-- One connection, authenticated and on its database; nil, err otherwise.
-- The whole of it is bounded by connect_timeout_ms: a server that takes
-- the connection and never answers (a paused Redis, a port that is some
-- other service's) fails as one that refuses it does, never hangs.
function Cluster:_open()
  local redis = require "tide.redis"
  local w = self._where
  local deadline = core.now() + self._connect_timeout
  local conn, err = redis.connect {
    host = w.host, port = w.port, path = w.path, timeout_ms = self._connect_timeout,
  }
  if not conn then
    return nil, unavailable("connect", ("cannot reach Redis at %s: %s"):format(self.url, err.message:gsub("^redis: connect: ", "")))
  end
  local opened, herr = M.until_deadline(deadline, handshake, self, conn)
  if opened == nil and herr == false then
    conn:abort() -- (closed gracefully, it would wait for the answer)
    return nil, unavailable("timeout", ("Redis at %s did not answer within %d ms"):format(self.url,
      self._connect_timeout))
  end
  return opened, herr
end

-- Subscriptions whose connection is gone, and whose background retries
-- gave up (an outage longer than reconnect_ms), are made again once Redis
-- answers a command connection again: a worker hears invalidations after
-- any outage, without a retry loop that would keep tide.run alive.
local function revive_sub(self)
  if self._sub == nil and not self._sub_opening and (next(self._subs) or next(self._patterns)) then
    core.spawn(function() self:_ensure_sub() end)
  end
end

-- Waits for a connection attempt another task is making.
local function await_flag(self, field)
  while self[field] do core.sleep(5) end
end

--- The command connection, made (again) if needed. After a connection was
--- lost it retries with backoff for up to `reconnect_ms`. With `nowait`,
--- a caller that would rather do without Redis than wait (rate limits)
--- gets nil at once while Redis is away: one attempt is made now and then
--- (with the same backoff), none is waited for.
---@param nowait? boolean
---@return userdata? conn
---@return table? err
function Cluster:connection(nowait)
  local conn = self._conn
  if conn and conn:connected() then return conn end
  if nowait and self._ever_connected and (self._connecting or core.now() < (self._retry_at or 0)) then
    return nil, self._last_error or unavailable("lost", "reconnecting to Redis at " .. self.url)
  end
  if self._connecting then
    await_flag(self, "_connecting")
    conn = self._conn
    if conn and conn:connected() then return conn end
    return nil, self._last_error or unavailable("connect", "cannot reach Redis at " .. self.url)
  end
  self._connecting = true
  local ok, c, err = pcall(function()
    local deadline = core.now() + self._reconnect_ms
    local delay = 25
    while true do
      local conn2, e = self:_open()
      if conn2 then return conn2 end
      -- the first connection, a refused password and a caller that does
      -- not wait fail at once
      if not self._ever_connected or nowait or e.reason == "auth" or core.now() + delay > deadline then
        return nil, e
      end
      core.sleep(delay)
      delay = math.min(delay * 2, 1000)
    end
  end)
  self._connecting = false
  if not ok then error(c, 0) end -- cancelled
  if not c then
    self._last_error = err
    if nowait then
      self._retry_delay = math.min((self._retry_delay or 25) * 2, 1000)
      self._retry_at = core.now() + self._retry_delay
    end
    return nil, err
  end
  self._retry_delay, self._retry_at = nil, nil
  if self._ever_connected then self.stats.reconnects = self.stats.reconnects + 1 end
  self._ever_connected = true
  self._conn = c
  self._scripts_loaded = {}
  revive_sub(self)
  return c
end

--- The command connection's state: "new" (never made: the next command
--- makes it, and fails at once if Redis is not there), "up", "connecting"
--- (being made again by a task, after it was lost: commands wait for it, up
--- to `reconnect_ms`) or "down" (lost; the next command makes it again).
--- Lets a caller that must not wait go without Redis meanwhile.
---@return "new"|"up"|"connecting"|"down"
function Cluster:state()
  if not self._ever_connected then return "new" end
  if self._conn and self._conn:connected() then return "up" end
  return self._connecting and "connecting" or "down"
end

local function classify(err)
  if err.code == "RedisError" and err.message:match("^redis: OOM") then
    return unavailable("oom", err.message:gsub("^redis: ", "Redis is out of memory: "))
  end
  if err.code == "ClusterUnavailable" and not err.reason then
    err.reason = "lost"
  end
  return err
end

--- Runs one Redis command. Returns its reply (nil replies are false), or
--- nil, err: `ClusterUnavailable` when Redis cannot be reached or is out
--- of memory, `RedisError` for any other error reply.
---@return any reply
---@return table? err
function Cluster:call(...)
  local conn, err = self:connection()
  if not conn then return nil, err end
  self.stats.commands = self.stats.commands + 1
  local r, e = conn:call(...)
  if r == nil then return nil, classify(e) end
  return r
end

--- A key under the cluster's prefix: `prefix:part1:part2...`.
---@return string
function Cluster:key(...)
  return table.concat({ self.prefix, ... }, ":")
end

--- Registers a Lua script; returns a function(keys, args) that runs it with
--- EVALSHA (loading it once per connection, again after a Redis restart).
--- With `nowait` true, the function does not wait for a connection being
--- made again (see `connection`).
---@param name string
---@param src string
---@return fun(keys: string[], args: any[], nowait?: boolean): any, table?
function Cluster:script(name, src)
  local entry = self._scripts[name]
  if not entry then
    entry = { src = src }
    self._scripts[name] = entry
  end
  return function(keys, args, nowait)
    local nkeys = #keys
    local argv = table.move(keys, 1, nkeys, 2, { nkeys })
    if args then table.move(args, 1, #args, nkeys + 2, argv) end
    for _ = 1, 2 do
      local conn, err = self:connection(nowait)
      if not conn then return nil, err end
      local sha = self._scripts_loaded[name]
      self.stats.commands = self.stats.commands + 1
      local r, e
      if not sha then
        -- The first call sends the source itself (EVAL), so that it keeps
        -- its place among the commands other tasks send on the connection
        -- meanwhile (waiting for a SCRIPT LOAD first let them overtake
        -- it); the SHA for later calls is learnt beside it.
        core.spawn_now(function()
          local ok, s = pcall(conn.call, conn, "SCRIPT", "LOAD", entry.src)
          if ok and type(s) == "string" and self._conn == conn then self._scripts_loaded[name] = s end
        end)
        r, e = conn:call("EVAL", entry.src, table.unpack(argv))
      else
        r, e = conn:call("EVALSHA", sha, table.unpack(argv))
      end
      if r ~= nil then return r end
      if not (e.message or ""):match("NOSCRIPT") then return nil, classify(e) end
      self._scripts_loaded[name] = nil -- Redis restarted: load it again
    end
    return nil, unavailable("lost", "script " .. name .. " could not be loaded")
  end
end

--- Runs fn(conn) on a connection of its own, for blocking commands
--- (XREADGROUP BLOCK, BLPOP) that would hold up everything queued behind
--- them on the shared one. The connection is kept for the next caller.
---@param fn fun(conn: userdata): any
function Cluster:with_blocking(fn)
  local conn = table.remove(self._blocking)
  if not (conn and conn:connected()) then
    local c, err
    if not self._ever_connected then
      c, err = self:connection() -- the first connection's rules and errors
      if not c then return nil, err end
    end
    conn, err = self:_open()
    if not conn then return nil, err end
  end
  local res = table.pack(pcall(fn, conn))
  if conn:connected() and #self._blocking < 64 then
    self._blocking[#self._blocking + 1] = conn
  else
    conn:close()
  end
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

-- -------------------------------------------------------------- pub/sub --

local function dispatch(self, kind, channel, payload)
  if kind == "disconnect" then
    self._sub, self._sub_live = nil, false
    -- messages published from now until the subscriber is back are lost:
    -- callers that must not miss one compare this count and look again
    self.stats.sub_disconnects = self.stats.sub_disconnects + 1
    self._confirmed = {}
    -- subscribe again in the background, with backoff (until close(),
    -- which stops it: a closed cluster neither reconnects nor keeps the
    -- loop running for reconnect_ms)
    if next(self._subs) or next(self._patterns) then
      self._resubscriber = core.spawn(function()
        local delay = 25
        local deadline = core.now() + self._reconnect_ms
        while not self._sub and core.now() < deadline do
          core.sleep(delay)
          delay = math.min(delay * 2, 1000)
          self:_ensure_sub()
        end
      end)
    end
    return
  end
  if kind == "subscribe" or kind == "psubscribe" then
    self._sub_live = true
    if channel then
      self._confirmed[channel] = true
      local fn = self._on_confirmed[channel]
      if fn then fn(channel) end
    end
    return
  end
  if kind == "message" then
    local fn = self._subs[channel]
    if fn then fn(channel, payload) end
  elseif kind == "pmessage" then
    for pattern, fn in pairs(self._patterns) do
      -- the handler of every pattern; each one checks its own channels
      fn(channel, payload, pattern)
    end
  end
end

-- Makes the subscriber connection when there is none, subscribed to every
-- channel and pattern known; true, and whether it is new.
function Cluster:_ensure_sub()
  if self._sub and self._sub:connected() then return true, false end
  if self._sub_opening then return true, false end
  self._sub_opening = true
  -- A task cancelled while connecting must not leave the flag set: no
  -- subscriber could ever be opened again.
  local ok, conn, err = pcall(self._open, self)
  self._sub_opening = false
  if not ok then error(conn, 0) end
  if not conn then return nil, err end
  local handler = function(kind, channel, payload) dispatch(self, kind, channel, payload) end
  self._confirmed = {}
  local chans, pats = {}, {}
  for ch in pairs(self._subs) do chans[#chans + 1] = ch end
  for p in pairs(self._patterns) do pats[#pats + 1] = p end
  self._sub = conn
  if #chans > 0 then conn:subscribe(handler, "SUBSCRIBE", table.unpack(chans)) end
  if #pats > 0 then conn:subscribe(handler, "PSUBSCRIBE", table.unpack(pats)) end
  if #chans == 0 and #pats == 0 then
    -- keep the connection for the subscriptions to come
    conn:subscribe(handler, "SUBSCRIBE", self:key("hello"))
  end
  return true, true
end

--- Calls `fn(channel, payload)` for every message on `channel`, from now
--- on, across reconnections (messages published while the subscriber was
--- disconnected are lost, as with any Redis pub/sub: callers keep a
--- fallback). `on_confirmed(channel)`, when given, runs each time Redis
--- confirms the subscription: the first time, and again on every new
--- subscriber connection, so that a caller can re-read what it may have
--- missed in between.
---@param channel string
---@param fn fun(channel: string, payload: string)
---@param on_confirmed? fun(channel: string)
---@return boolean? ok
---@return table? err
function Cluster:subscribe(channel, fn, on_confirmed)
  local had = self._subs[channel]
  self._subs[channel] = fn
  self._on_confirmed[channel] = on_confirmed
  local ok, fresh = self:_ensure_sub()
  if not ok then return nil, fresh end
  if not had and not fresh and self._sub then
    self._sub:subscribe(function(kind, ch, payload) dispatch(self, kind, ch, payload) end, "SUBSCRIBE", channel)
  end
  return true
end

--- Whether the subscriber's subscriptions are confirmed by Redis (a
--- message published now will be seen); with `channel`, whether that
--- channel's subscription is (another channel's confirmation says nothing
--- about a SUBSCRIBE still on its way).
---@param channel? string
---@return boolean
function Cluster:subscribed(channel)
  local live = self._sub ~= nil and self._sub_live and self._sub:connected()
  if channel == nil then return live end
  return live and self._confirmed[channel] == true
end

--- Publishes `payload` on `channel`; the number of receivers, or nil, err.
function Cluster:publish(channel, payload)
  return self:call("PUBLISH", channel, payload)
end

--- Closes every connection (the cluster can be used again: it reconnects).
function Cluster:close()
  if self._resubscriber then
    self._resubscriber:cancel()
    self._resubscriber = nil
  end
  if self._conn then self._conn:close() end
  if self._sub then
    local sub = self._sub
    self._sub, self._sub_live = nil, false
    sub:close()
  end
  for _, c in ipairs(self._blocking) do c:close() end
  self._conn, self._blocking = nil, {}
end

M.Cluster = Cluster
return M
