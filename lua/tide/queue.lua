--- tide.queue: a turn queue on Redis Streams. `tide.submit{...}` enqueues a
--- turn from any process and waits for its reply; `tide.worker{...}` serves
--- turns from the queue's consumer group, on sessions kept in Redis
--- (tide.session{ id, store = "redis" }).
---
--- Layout, under the cluster's prefix, for queue `q`:
---
---     <prefix>:q:<q>                  the stream; one entry per turn: rid (the
---                                     request's id), session, agent, text (or
---                                     decisions: a JSON list, for a paused
---                                     turn), reply_to; consumer group "workers"
---     <prefix>:q:<q>:req:<rid>        "queued" until answered, then "answered"
---                                     (it expires: the submitter's timeout)
---     <prefix>:q:<q>:reply:<rid>      the reply, kept a while for a submitter
---                                     that missed its notification
---     <prefix>:q:<q>:done:<process>   a channel per submitting process: the
---                                     reply is published there
---
--- Exactly one reply per request: the reply, its notification, the marker
--- and the entry's XACK (and XDEL) are one script, which writes no reply
--- for a request already answered; it gives the session's lease up too
--- (when still this worker's). A worker that dies mid-turn leaves its
--- entry pending; another worker claims it (XAUTOCLAIM) once it has been
--- idle `claim_idle_ms` (live workers reset the idle time of the entries
--- they serve), waits for the dead worker's session lease to expire, and
--- resumes the session with the crash-safe rules: the turn goes on from
--- where the transcript stops (a call that was running is answered
--- "interrupted", never run again), or, when the transcript holds the
--- turn's answer already, that answer is the reply. A worker serves no
--- request whose submitter gave up (its marker expired or was deleted):
--- its session's lease is taken only while the marker says "queued", in
--- the same script.
---@class tide.queue
local M = {}

local core = require "tide.core"
local json = require "tide.json"
local cluster_mod = require "tide.cluster"

local GROUP = "workers"
local DEFAULT_TIMEOUT_MS = 300000
-- How long an answered request's marker and reply are kept: long enough
-- for a submitter that lost its notification to find the reply.
local REPLY_TTL_MS = 300000

local function blocking(fn, ...) return require("tide")._blocking(fn, ...) end
local function fail(code, msg, fields) return nil, core.error(code, msg, fields) end

-- ARGV[5] names what the request carries: 'text' (a turn) or 'decisions'
-- (a paused turn's, as JSON); ARGV[6] is it.
local SUBMIT = [[
redis.call('SET', KEYS[1], 'queued', 'PX', ARGV[1])
return redis.call('XADD', KEYS[2], '*', 'rid', ARGV[2], 'session', ARGV[3], 'agent', ARGV[4],
  ARGV[5], ARGV[6], 'reply_to', ARGV[7])
]]

-- With the session's records (KEYS[5]: a queued turn's last, handed over
-- by the session), they are appended first, as tide.transcript_redis
-- appends (ARGV[7] the lease's token, ARGV[8] the length expected, ARGV[9]
-- the TTL, ARGV[10..] the records); refused, nothing is written and the
-- refusal is the script's answer. Otherwise {sent, 0}.
local ANSWER = require("tide.transcript_redis").APPEND_FN .. [[
if KEYS[5] then
  local r = tide_append(KEYS[5], KEYS[4], ARGV[7], ARGV[8], ARGV[9], 10)
  if r[1] < 0 then return r end
end
local sent = 0
if redis.call('GET', KEYS[1]) ~= 'answered' then
  redis.call('SET', KEYS[1], 'answered', 'PX', ARGV[4])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  redis.call('PUBLISH', ARGV[5], ARGV[6] .. ' ' .. ARGV[3])
  sent = 1
end
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[3], ARGV[2])
if KEYS[4] and redis.call('GET', KEYS[4]) == ARGV[7] then redis.call('DEL', KEYS[4]) end
return {sent, 0}
]]

local function check_name(v, what, fname, level)
  if type(v) ~= "string" or v == "" or #v > 512 or v:find("[%c%s]") then
    error(("bad argument #1 to '%s' (field '%s' must be a non-empty string without spaces)"):format(fname, what), level + 1)
  end
end

local function check_int(opts, k, fname, min, level)
  local v = opts[k]
  if v ~= nil and (math.type(v) ~= "integer" or v < min) then
    error(("bad argument #1 to '%s' (field '%s' must be an integer of at least %d)"):format(fname, k, min), level + 1)
  end
end

local function check_known(opts, known, fname, level)
  if type(opts) ~= "table" then
    error(("bad argument #1 to '%s' (table expected, got %s)"):format(fname, type(opts)), level + 1)
  end
  for k in pairs(opts) do
    if not known[k] then error(("bad argument #1 to '%s' (unknown option '%s')"):format(fname, tostring(k)), level + 1) end
  end
end

-- ------------------------------------------------------------- submit --

-- Per cluster and queue: the channel this process's replies come on, and
-- the requests waiting for one.
local clients = setmetatable({}, { __mode = "k" })

-- The client of queue `queue`, subscribed: its subscription is confirmed
-- by a PUBLISH that reaches it, so that no reply is published before it
-- can be heard.
local function client_for(c, queue, deadline)
  local per = clients[c]
  if not per then
    per = {}
    clients[c] = per
  end
  local cl = per[queue]
  if not cl then
    cl = { channel = c:key("q", queue, "done", cluster_mod.unique()), waiters = {}, ready = false }
    cl.handler = function(_, payload)
      local sp = payload:find(" ", 1, true)
      if not sp then return end -- the readiness ping
      local w = cl.waiters[payload:sub(1, sp - 1)]
      if w and not w.payload then
        w.payload = payload:sub(sp + 1)
        if w.sleeping then w.task:interrupt() end
      end
    end
    per[queue] = cl
  end
  if cl.ready and c:subscribed() then return cl end
  local ok, err = c:subscribe(cl.channel, cl.handler)
  if not ok then return nil, err end
  while true do
    local n, perr = c:publish(cl.channel, "ping")
    if n == nil then return nil, perr end
    if n > 0 then break end
    if core.now() >= deadline then
      return fail("ClusterUnavailable", "the reply channel's subscription was not confirmed in time", { reason = "timeout" })
    end
    core.sleep(2)
  end
  cl.ready = true
  return cl
end

-- The fields of an error a reply carries: its code and message, and what
-- its code documents; never a session object or a raw provider body.
local ERR_FIELDS = { "reason", "status", "stop_reason", "partial", "what", "errors", "max_iterations", "session", "record" }
local function err_fields(e)
  if type(e) ~= "table" or not e.code then
    return { code = "TurnFailed", message = require("tide.turn").error_text(e) }
  end
  local out = { code = e.code, message = e.message }
  for _, k in ipairs(ERR_FIELDS) do
    local v = e[k]
    if type(v) == "string" or type(v) == "number" or (type(v) == "table" and k == "errors") then out[k] = v end
  end
  if e.code == "ApprovalRequired" and type(e.pending) == "table" then
    local p = {}
    for i, item in ipairs(e.pending) do
      p[i] = { id = item.id, name = item.name, arguments = item.arguments, agent = item.agent, server = item.server }
    end
    out.pending = p
  end
  return out
end

local function decode_reply(payload)
  local v = json.decode(payload)
  if type(v) ~= "table" then return fail("MalformedResponse", "the queue's reply is not JSON") end
  if v.err then
    local e = v.err
    local fields = {}
    for k, x in pairs(e) do if k ~= "code" and k ~= "message" then fields[k] = x end end
    return nil, core.error(tostring(e.code), tostring(e.message), fields)
  end
  return v.reply, v.stats or {}
end

-- A submit's Redis steps run until its deadline (tide.cluster's
-- until_deadline): a Redis that neither answers nor closes the connection
-- (a paused server, a network cut) must not hold a submitter past its
-- timeout_ms.
local until_deadline = cluster_mod.until_deadline

-- Gives a request up at its submitter's deadline: its marker deleted while
-- it is still queued (a worker that picks it up then drops it), or, when a
-- worker answered it meanwhile (its notification still on its way, or
-- lost), that answer. One step, so that an answer written just before the
-- deadline is never reported as a Timeout.
local GIVE_UP = [[
if redis.call('GET', KEYS[1]) == 'queued' then redis.call('DEL', KEYS[1]) return false end
return redis.call('GET', KEYS[2])
]]

local function submit(opts)
  local c = opts.cluster
  local timeout = opts.timeout_ms or DEFAULT_TIMEOUT_MS
  local deadline = core.now() + timeout
  local function timed_out()
    return fail("Timeout", ("no reply from queue '%s' within %d ms"):format(opts.queue, timeout),
      { queue = opts.queue, timeout_ms = timeout })
  end
  local cl, err = until_deadline(deadline, client_for, c, opts.queue, deadline)
  if not cl then
    if err == false then return timed_out() end
    return nil, err
  end
  local rid = cluster_mod.unique()
  local marker = c:key("q", opts.queue, "req", rid)
  local reply_key = c:key("q", opts.queue, "reply", rid)
  local w = { task = core.current() }
  cl.waiters[rid] = w
  local epoch = c.stats.sub_disconnects
  local what, value = "text", opts.text
  if opts.decisions then what, value = "decisions", json.canonical(opts.decisions) end
  local id, serr = until_deadline(deadline, c:script("tide_queue_submit", SUBMIT), { marker, c:key("q", opts.queue) },
    { timeout + 60000, rid, opts.session, opts.agent, what, value, cl.channel })
  if not id and serr ~= false then
    cl.waiters[rid] = nil
    return nil, serr
  end
  -- false: Redis stopped answering; the request may still be added when it
  -- answers again, and is given up below
  local stalled = not id
  local looked = core.now()
  while not w.payload and not stalled do
    local left = deadline - core.now()
    if left <= 0 then break end
    w.sleeping = true
    local ok, e = pcall(core.sleep, math.min(left, 1000))
    w.sleeping = false
    if not ok and not w.payload then
      cl.waiters[rid] = nil
      error(e, 0) -- the submitting task was cancelled
    end
    -- A notification published while the subscriber was away is lost: the
    -- reply key says (and, rarely, every few seconds anyway).
    if not w.payload and (c.stats.sub_disconnects ~= epoch or core.now() - looked >= 5000) then
      epoch, looked = c.stats.sub_disconnects, core.now()
      local r, merr = until_deadline(deadline, c.call, c, "MGET", reply_key, marker)
      stalled = merr == false
      if r and r[1] then
        w.payload = r[1]
      elseif r and not r[2] then
        cl.waiters[rid] = nil
        return fail("ClusterUnavailable", "the request is no longer in Redis (restarted without persistence?)",
          { reason = "lost" })
      end
    end
  end
  cl.waiters[rid] = nil
  if not w.payload then
    -- A worker that picks it up from now on serves it no more. With Redis
    -- answering, its answer is waited for a moment (it may hold the reply);
    -- with Redis stalled it is only sent: it runs after the request's own
    -- commands if Redis comes back.
    local give_up = c:script("tide_queue_give_up", GIVE_UP)
    local r = until_deadline(core.now() + (stalled and 0 or 1000), give_up, { marker, reply_key }, {})
    if type(r) ~= "string" then return timed_out() end
    w.payload = r
  end
  return decode_reply(w.payload)
end

local SUBMIT_OPTIONS = { queue = true, session = true, agent = true, text = true, decisions = true,
  timeout_ms = true }
local DECISION_FIELDS = { id = true, approved = true, note = true }

-- A list of decisions ({ id, approved, note? }, at least one) in the shape
-- a request carries; nil and what is wrong otherwise (the submitter's
-- misuse, or an entry some other writer put in the stream).
local function decisions_problem(list)
  if type(list) ~= "table" or #list == 0 then return "must be a non-empty list of { id, approved, note }" end
  for k in pairs(list) do
    if math.type(k) ~= "integer" or k < 1 or k > #list then return "must be a list" end
  end
  for i, d in ipairs(list) do
    if type(d) ~= "table" then return ("[%d] must be a table"):format(i) end
    for k in pairs(d) do
      if not DECISION_FIELDS[k] then return ("[%d] has an unknown field '%s'"):format(i, tostring(k)) end
    end
    if type(d.id) ~= "string" or d.id == "" then return ("[%d].id must be a non-empty string"):format(i) end
    if type(d.approved) ~= "boolean" then return ("[%d].approved must be a boolean"):format(i) end
    if d.note ~= nil and type(d.note) ~= "string" then return ("[%d].note must be a string"):format(i) end
  end
end

--- Enqueues a turn of session `session` (a Redis session, made on first
--- use) with agent `agent`, and waits for its reply: the reply text and the
--- turn's stats (provider_calls, tool_calls, tokens, cost_usd, stop_reason,
--- worker, continued), or nil and the turn's error as `s:turn()` gives it,
--- or `Timeout` after `timeout_ms` (default 300,000; a worker that picks
--- the request up later does not run it; a Redis that stops answering
--- does not hold it longer; a reply written by then is returned instead),
--- or `ClusterUnavailable`.
--- With `decisions` in place of `text` ({ id, approved, note? } each, for
--- the calls an ApprovalRequired listed), a worker records them and
--- resumes the paused turn (s:approve / s:reject, then s:resume()); every
--- decision is checked first, and one that does not fit is the answer
--- (NothingPending, UnknownApproval, AlreadyDecided), nothing changed.
---@param opts {queue:string, session:string, agent:string, text?:string, decisions?:{id:string, approved:boolean, note?:string}[], timeout_ms?:integer}
---@return string|nil reply
---@return table stats_or_err
function M.submit(opts)
  check_known(opts, SUBMIT_OPTIONS, "submit", 2)
  check_name(opts.queue, "queue", "submit", 2)
  check_name(opts.session, "session", "submit", 2)
  check_name(opts.agent, "agent", "submit", 2)
  if opts.decisions ~= nil then
    if opts.text ~= nil then error("bad argument #1 to 'submit' (give 'text' or 'decisions', not both)", 2) end
    local why = decisions_problem(opts.decisions)
    if why then error(("bad argument #1 to 'submit' (field 'decisions' %s)"):format(why), 2) end
  elseif type(opts.text) ~= "string" then
    error(("bad argument #1 to 'submit' (field 'text' must be a string, got %s)"):format(type(opts.text)), 2)
  end
  check_int(opts, "timeout_ms", "submit", 1, 2)
  local c = cluster_mod.require_current("tide.submit", 2)
  return blocking(submit, { cluster = c, queue = opts.queue, session = opts.session, agent = opts.agent,
    text = opts.text, decisions = opts.decisions, timeout_ms = opts.timeout_ms })
end

--- The channel this process's replies for `queue` come on (specs count
--- the replies published there).
function M._channel(c, queue)
  local per = clients[c]
  return per and per[queue] and per[queue].channel
end

-- ------------------------------------------------------------- worker --

---@class tide.worker
---@field name string this worker's consumer name in the group
local Worker = {}
Worker.__index = Worker

local function log(self, ...)
  if self.quiet then return end
  io.stderr:write("tide worker ", self.name, ": ", ...)
  io.stderr:write("\n")
end

local function as_error(e)
  if type(e) == "table" and e.code then return e end
  return core.error("TurnFailed", require("tide.turn").error_text(e))
end

-- The group, made when missing (a new queue, or a Redis that lost it).
function Worker:_ensure_group()
  local ok, err = self.cluster:call("XGROUP", "CREATE", self.stream, GROUP, "0", "MKSTREAM")
  if ok or (err.message or ""):match("BUSYGROUP") then return true end
  return nil, err
end

function Worker:_ack(id)
  self.cluster:call("XACK", self.stream, GROUP, id)
  self.cluster:call("XDEL", self.stream, id)
end

local STATS_KEYS = { "provider_calls", "tool_calls", "iterations", "cost_usd", "stop_reason", "compactions", "fallbacks" }

local function stats_of(s)
  local st = s:stats()
  local out = { tokens = st.tokens }
  for _, k in ipairs(STATS_KEYS) do out[k] = st[k] end
  return out
end

-- Answers entry `id`. `handed` (from the session's _hand_over): its lease
-- is given up in the same script, or on its own when the answer cannot be
-- written; its records (the turn's last) are appended first, and when they
-- cannot be (another process wrote to the session, or holds it), the
-- answer is that error, or none at all when another worker took the
-- session over: that one finishes the turn and answers.
function Worker:_answer(id, f, reply, err, stats, handed)
  local c = self.cluster
  local payload = json.canonical { reply = reply, err = err and err_fields(err) or nil, stats = stats }
  local keys = { c:key("q", self.queue, "req", f.rid), c:key("q", self.queue, "reply", f.rid), self.stream }
  local args = { GROUP, id, payload, REPLY_TTL_MS, f.reply_to, f.rid }
  local lease, records = handed and handed.lease, handed and handed.records
  if lease then keys[4], args[7] = lease.key, lease.token end
  if lease and records then
    keys[5], args[8], args[9] = records.list, records.known, records.ttl
    for i, line in ipairs(records.lines) do args[9 + i] = line end
  end
  local r, aerr = self.answer(keys, args)
  if r and r[1] < 0 then
    local rerr = require("tide.transcript_redis").append_error(f.session, records.known, r)
    if r[1] == -1 then
      self.counts.failed = self.counts.failed + 1
      return log(self, "request ", f.rid, ": ", tostring(rerr))
    end
    return self:_answer(id, f, nil, rerr, stats, { lease = lease })
  end
  if r == nil then
    if lease then
      local store = require("tide.transcript_redis").store(c)
      core.spawn_now(function() pcall(store.release, f.session, lease.token) end)
    end
    -- the entry stays pending: claimed again, it is answered from the transcript
    self.counts.failed = self.counts.failed + 1
    log(self, "could not answer request ", f.rid, ": ", tostring(aerr))
    return
  end
  self.counts.answered = self.counts.answered + r[1]
end

-- Serves one entry: opens its session under its lease (waiting while
-- another turn runs on it, or a dead worker's lease runs out), runs the
-- request's turn once (tide.session's _queued_turn) and answers.
function Worker:_serve(id, f)
  local c = self.cluster
  local decisions = f.decisions and json.decode(f.decisions)
  if not (f.rid and f.session and f.agent and (f.text or f.decisions) and f.reply_to)
      or (f.decisions and decisions_problem(decisions)) then
    log(self, "entry ", id, " is not a turn request: dropped")
    return self:_ack(id)
  end
  -- The lease is taken only while the request is queued: not one answered
  -- (then the ack was lost), nor one its submitter gave up.
  local guard = { key = c:key("q", self.queue, "req", f.rid), value = "queued" }
  local session_mod = require "tide.session"
  local s, serr
  while true do
    local ok, v, e = pcall(session_mod.new, { id = f.session, store = "redis", agent = f.agent,
      provider = self.provider, integrations = self.integrations, config = self.config,
      lease_ms = self.lease_ms, lease_wait_ms = 1000, _keep_lease = true, _lease_guard = guard })
    if ok then s, serr = v, e else s, serr = nil, as_error(v) end
    if s or serr.code ~= "SessionBusy" or serr.reason == "guard" or self.stopping then break end
  end
  if not s and serr.reason == "guard" then
    self.counts.skipped = self.counts.skipped + 1
    return self:_ack(id)
  end
  if not s then
    if serr.code == "ClusterUnavailable" or serr.code == "SessionBusy" then
      -- left pending: this or another worker claims it again
      return log(self, "request ", f.rid, ": ", tostring(serr))
    end
    return self:_answer(id, f, nil, serr)
  end
  local continued = s.last_turn and s.last_turn.id == f.rid
  local reply, terr
  if decisions then
    reply, terr = s:_queued_resume(f.rid, decisions)
  else
    reply, terr = s:_queued_turn(f.rid, f.text)
  end
  local stats = stats_of(s)
  stats.worker, stats.continued = self.name, continued or nil
  if reply == nil and self.stopping and terr and terr.code == "Cancelled" then
    pcall(s.close, s)
    return -- stopped mid-turn: another worker finishes it
  end
  if reply == nil and terr and terr.code == "SessionBusy" and terr.reason == "lost_lease" then
    -- another worker took the session over (this one stalled past its
    -- lease) and finishes the turn: it answers, not this one
    pcall(s.close, s)
    return log(self, "request ", f.rid, ": ", tostring(terr))
  end
  local handed, herr = s:_hand_over()
  pcall(s.close, s)
  if not handed then
    if herr.reason == "lost_lease" then return log(self, "request ", f.rid, ": ", tostring(herr)) end
    reply, terr = nil, herr
  end
  self:_answer(id, f, reply, terr, stats, handed)
end

function Worker:_spawn(id, fields, claimed)
  if self.live[id] then return end
  local f = {}
  for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
  self.live[id] = true
  self.inflight = self.inflight + 1
  if claimed then self.counts.claimed = self.counts.claimed + 1 end
  self.tasks[id] = core.spawn(function()
    local ok, e = pcall(self._serve, self, id, f)
    if not ok then log(self, "entry ", id, ": ", require("tide.turn").error_text(e)) end
    self.counts.served = self.counts.served + 1
    self.live[id], self.tasks[id] = nil, nil
    self.inflight = self.inflight - 1
  end)
end

-- Reads new entries while there is room, on a connection of its own
-- (XREADGROUP BLOCK holds it).
function Worker:_reader()
  local delay = 25
  while not self.stopping do
    local free = self.concurrency - self.inflight
    if free <= 0 then
      core.sleep(2)
    else
      local conn = self.read_conn
      local r, err
      if not (conn and conn:connected()) then
        conn, err = self.cluster:_open()
        self.read_conn = conn
        -- stop() wakes the read with CLIENT UNBLOCK, by this id
        self.read_id = conn and conn:call("CLIENT", "ID") or nil
      end
      if conn and not self.stopping then -- (stop() may have come while it connected)
        r, err = conn:call("XREADGROUP", "GROUP", GROUP, self.name, "COUNT", free, "BLOCK", self.block_ms,
          "STREAMS", self.stream, ">")
      end
      if r then
        -- served even when stopping: Redis handed them to this worker, and
        -- left unserved they would wait claim_idle_ms for another
        delay = 25
        for _, stream in ipairs(r) do
          for _, e in ipairs(stream[2]) do self:_spawn(e[1], e[2]) end
        end
      end
      if self.stopping then break end
      if r == nil then
        if (err.message or ""):match("NOGROUP") then
          self:_ensure_group() -- Redis lost the group (a restart without persistence)
        else
          if conn then conn:close() end
          self.read_conn = nil
          core.sleep(delay)
          delay = math.min(delay * 2, 1000)
        end
      end
    end
  end
end

-- Claims entries left idle by workers that died, and keeps this worker's
-- own entries from looking idle.
function Worker:_claimer()
  local beat = math.max(10, self.claim_idle_ms // 3)
  local since_claim = 0
  while not self.stopping do
    core.sleep(beat)
    local ids = {}
    for id in pairs(self.live) do ids[#ids + 1] = id end
    for i = 1, #ids, 1000 do
      -- (the ids built into the list: table.unpack amid arguments would
      -- give only the first, and the others would look idle)
      local args = { "XCLAIM", self.stream, GROUP, self.name, 0 }
      for j = i, math.min(#ids, i + 999) do args[#args + 1] = ids[j] end
      args[#args + 1] = "JUSTID"
      self.cluster:call(table.unpack(args))
    end
    since_claim = since_claim + beat
    if since_claim >= self.claim_idle_ms // 2 then
      since_claim = 0
      local cursor = "0-0"
      repeat
        local free = self.concurrency - self.inflight
        if free <= 0 or self.stopping then break end
        local r = self.cluster:call("XAUTOCLAIM", self.stream, GROUP, self.name, self.claim_idle_ms, cursor,
          "COUNT", free)
        if not r then break end
        cursor = r[1]
        for _, e in ipairs(r[2]) do
          if type(e) == "table" and type(e[2]) == "table" then self:_spawn(e[1], e[2], true) end
        end
      until cursor == "0-0"
    end
  end
end

local function check_drain(drain_ms, fname)
  if drain_ms ~= nil and (math.type(drain_ms) ~= "integer" or drain_ms < 0) then
    error(("bad argument #1 to '%s' (non-negative integer expected)"):format(fname), 3)
  end
end

--- Stops taking entries (those its last read brought are served); turns
--- in flight finish, for up to `drain_ms` (default 30,000), after which
--- they are cancelled and their entries left for another worker to claim.
--- Returns when stopped.
---@param drain_ms? integer
function Worker:stop(drain_ms)
  check_drain(drain_ms, "stop")
  return blocking(function()
    self.stopping = true
    -- The read in progress is woken rather than cut: entries Redis hands
    -- over in its last reply are served. With Redis away there is nothing
    -- to wait for, and the connection is closed.
    local conn = self.read_conn
    if conn and conn:connected() then
      local up = self.read_id and self.cluster:state() == "up"
      if not (up and self.cluster:call("CLIENT", "UNBLOCK", self.read_id)) then conn:close() end
    end
    if self.reader then self.reader:join() end
    local deadline = core.now() + (drain_ms or 30000)
    while self.inflight > 0 and core.now() < deadline do core.sleep(5) end
    for _, t in pairs(self.tasks) do t:cancel() end
    while self.inflight > 0 do core.sleep(5) end
    if self.claimer then self.claimer:cancel() end
    if self.read_conn then self.read_conn:close() end
    self.stopped = true
    return true
  end)
end

--- Stops the worker gracefully when the process gets SIGTERM (how
--- systemd, Docker and Kubernetes ask a process to stop): it takes no more
--- entries, and the turns in flight finish, for up to `drain_ms` (default
--- 30,000; see `stop`). The handle closes itself then, so that a second
--- SIGTERM ends the process at once. Returns the handle (`h:close()`).
---@param drain_ms? integer
---@return userdata handle
function Worker:stop_on_sigterm(drain_ms)
  check_drain(drain_ms, "stop_on_sigterm")
  local h
  h = assert(core.on_signal("TERM", function()
    h:close()
    log(self, "SIGTERM: taking no more turns; the ", self.inflight, " in flight finish")
    core.spawn(function() self:stop(drain_ms) end)
  end))
  return h
end

--- Waits until the worker is stopped.
function Worker:wait()
  return blocking(function()
    while not self.stopped do core.sleep(50) end
    return true
  end)
end

--- Counters: served, answered, claimed (entries taken over from another
--- worker), skipped (already answered, or the submitter gave up), failed
--- (answers that could not be written), in_flight.
---@return table
function Worker:stats()
  local out = { in_flight = self.inflight }
  for k, v in pairs(self.counts) do out[k] = v end
  return out
end

local WORKER_OPTIONS = {
  queue = true, concurrency = true, provider = true, integrations = true, config = true,
  claim_idle_ms = true, lease_ms = true, block_ms = true, name = true, quiet = true,
}

-- The provider of a worker given none: the environment's, as `tide chat`
-- picks it.
local function env_provider()
  local provider = require "tide.provider"
  if os.getenv("OPENAI_API_KEY") or os.getenv("OPENAI_BASE_URL") then return provider.openai {} end
  if os.getenv("ANTHROPIC_API_KEY") or os.getenv("ANTHROPIC_AUTH_TOKEN") then return provider.anthropic {} end
  return nil
end

--- Serves turns from queue `queue`: at most `concurrency` (default 64) at
--- once, on Redis sessions, with `provider` (default: from OPENAI_*,
--- ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN), `integrations` and `config` as for tide.session.
--- `claim_idle_ms` (default 30,000): how long an entry of a worker that
--- stopped answering waits before another takes it; `lease_ms`: the
--- sessions' lease (tide.session). Inside a task it returns the worker
--- (`w:stop()`, `w:wait()`, `w:stats()`) once the queue's group exists;
--- outside any task it serves until stopped (SIGTERM stops it gracefully:
--- `stop_on_sigterm`). nil, err (ClusterUnavailable) when Redis cannot be
--- reached at start.
---@param opts {queue:string, concurrency?:integer, provider?:table, integrations?:table, config?:table, claim_idle_ms?:integer, lease_ms?:integer, block_ms?:integer, name?:string, quiet?:boolean}
---@return tide.worker|nil
---@return table|nil err
function M.worker(opts)
  check_known(opts, WORKER_OPTIONS, "worker", 2)
  check_name(opts.queue, "queue", "worker", 2)
  check_int(opts, "concurrency", "worker", 1, 2)
  check_int(opts, "claim_idle_ms", "worker", 30, 2)
  check_int(opts, "lease_ms", "worker", 30, 2)
  check_int(opts, "block_ms", "worker", 1, 2)
  if opts.name ~= nil then check_name(opts.name, "name", "worker", 2) end
  local provider = opts.provider or env_provider()
  if type(provider) ~= "table" or type(provider.complete) ~= "function" then
    error("bad argument #1 to 'worker' (field 'provider' must be a provider; none in the environment either)", 2)
  end
  local c = cluster_mod.require_current("tide.worker", 2)
  local w = setmetatable({
    cluster = c, queue = opts.queue, stream = c:key("q", opts.queue),
    concurrency = opts.concurrency or 64, provider = provider, integrations = opts.integrations,
    config = opts.config, claim_idle_ms = opts.claim_idle_ms or 30000, lease_ms = opts.lease_ms,
    block_ms = opts.block_ms or 1000, name = opts.name or cluster_mod.unique(), quiet = opts.quiet,
    inflight = 0, live = {}, tasks = {},
    counts = { served = 0, answered = 0, claimed = 0, skipped = 0, failed = 0 },
    answer = c:script("tide_queue_answer", ANSWER),
  }, Worker)
  local function start()
    local ok, err = w:_ensure_group()
    if not ok then return nil, err end
    w.reader = core.spawn(w._reader, w)
    w.claimer = core.spawn(w._claimer, w)
    return w
  end
  if core.current() then return start() end
  return blocking(function()
    local ok, err = start()
    if not ok then return nil, err end
    local term <close> = w:stop_on_sigterm()
    w:wait()
    return w
  end)
end

return M
