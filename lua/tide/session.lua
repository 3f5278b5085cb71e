--- tide.session: a conversation with one agent. This file builds sessions
--- and holds their public methods; the tool surface is tide.surface, the
--- conversation tide.history and the loop of a turn tide.turn.
---
--- Build is the hot path that the design revolves around: a session built
--- while the shared integration cache is warm takes the cached snapshot,
--- synthesises its delegation tools against it and is *initialized*, so its
--- first turn goes straight to the provider. A cold session fetches (through
--- the cache) at turn 1 instead. The system prompt is rendered once, at the
--- first turn, and frozen; the request prefix (system prompt + tool schemas) is
--- encoded once and reused byte for byte.
---@class tide.session
local M = {}

local core = require "tide.core"
local json = require "tide.json"
local tool = require "tide.tool"
local agents = require "tide.agents"
local surface = require "tide.surface"
local history = require "tide.history"
local turn = require "tide.turn"
-- Loaded when a session first needs them (a config, a transcript): a script
-- that uses none never compiles them.
local function config() return require "tide.config" end
local function transcript() return require "tide.transcript" end
local function integrations_cache() return require "tide.integrations.cache" end
local function blocking(fn, ...) return require("tide")._blocking(fn, ...) end

-- A list of sources as one source, made once per list (weak: a list a
-- caller keeps building sessions with gets the same object, and so the
-- same snapshots and surfaces).
local several_cache = setmetatable({}, { __mode = "k" })
local function several_of(src)
  if src == nil or type(src.identity) == "function" then return src end
  local s = several_cache[src]
  if not s then
    s = require("tide.integrations.several").new(src, 4)
    several_cache[src] = s
  end
  return s
end

local session_mt = { __name = "tide.session" }
session_mt.__index = session_mt

local DEFAULTS = {
  max_iterations = 10,
  subagent_max_iterations = 8,
  tool_timeout_ms = 120000,
  result_cap_bytes = 16 * 1024,
  -- The ceiling on sub-agent runs in one root turn's tree (all depths): an
  -- agent that delegates 20 ways at every level would otherwise fan out to
  -- tens of thousands of provider calls. Raised with max_subagents.
  max_subagents = 256,
  -- A Redis session's lease: long enough that a busy process renews it in
  -- time (every third of it), short enough that a session whose process
  -- died is taken over soon.
  lease_ms = 15000,
}

local hrtime = core.hrtime
local function ms_since(t0) return (hrtime() - t0) / 1e6 end

M.sanitize = surface.sanitize

-- ---------------------------------------------------------------- build --

local function new_stats()
  return {
    provider_calls = 0, tool_calls = 0, turns = 0, iterations = 0,
    tokens = { input = 0, output = 0, cached = 0, cache_write = 0, reasoning = 0 },
    compactions = 0, cost_usd = 0, turn_cost_usd = 0, unpriced_calls = 0, fallbacks = 0, web_searches = 0, file_searches = 0,
    stop_reason = nil,
    integration_fetches = 0, config_loads = 0, delegation_rebuilds = 0,
    cache_hits = 0, cache_misses = 0,
    prewarmed = false, integrations = "none",
    spawn_depth_max = 0, prompt_bytes_encoded = 0, prompt_bytes_reencoded = 0,
    ttfb_ms = nil, first_ttfb_ms = nil,
  }
end

-- Option lists, built once (the checks run on every build and turn, so they
-- walk them with numeric loops: an ipairs step is a C call).
local PATH_OPTS = { "transcript", "resume" }
local COUNT_OPTS = { "max_iterations", "tool_timeout_ms", "result_cap_bytes", "max_subagents" }
-- Every option a session takes (the underscored ones are sub-agents', set by
-- tide.subagent): any other key is a misspelling, and a silent one loses
-- what it meant (a transcript, a budget).
local OPTIONS = {
  agent = true, provider = true, integrations = true, config = true, transcript = true, resume = true,
  tools = true, budget = true, max_iterations = true, tool_timeout_ms = true, result_cap_bytes = true,
  max_subagents = true, truncated = true, context = true, id = true, store = true, lease_ms = true,
  lease_wait_ms = true, _store = true, _keep_lease = true, _lease_guard = true,
  _parent = true, _parent_tools = true, _toolkit = true, _snapshot = true, _agent_path = true,
}
local BUDGET_KINDS = { provider_calls = true, tokens = true, tool_calls = true, wall_ms = true, usd = true }
local CALLBACK_OPTS = { "on_delta", "on_tool_start", "on_tool_end", "on_event", "on_reasoning" }

local function check_opts(opts)
  if type(opts) ~= "table" then
    error(("bad argument #1 to 'session' (table expected, got %s)"):format(type(opts)), 3)
  end
  for k in pairs(opts) do
    if not OPTIONS[k] then error(("tide.session: unknown option '%s'"):format(tostring(k)), 3) end
  end
  local a = opts.agent
  if type(a) ~= "string" and type(a) ~= "table" then
    error("tide.session: 'agent' must be an agent id or definition", 3)
  end
  if type(opts.provider) ~= "table" or type(opts.provider.complete) ~= "function" then
    error("tide.session: 'provider' must be a provider (tide.provider.openai{...} or anthropic{...})", 3)
  end
  local src = opts.integrations
  if src ~= nil and (type(src) ~= "table" or (type(src.identity) ~= "function" or type(src.fetch) ~= "function")
      and src[1] == nil) then
    error("tide.session: 'integrations' must be an integration source (identity() and fetch()) or a list of them", 3)
  end
  for i = 1, #PATH_OPTS do
    local f = PATH_OPTS[i]
    if opts[f] ~= nil and type(opts[f]) ~= "string" then error(("tide.session: '%s' must be a file path"):format(f), 3) end
  end
  for i = 1, #COUNT_OPTS do
    local f = COUNT_OPTS[i]
    local v = opts[f]
    if v ~= nil and (math.type(v) ~= "integer" or v <= 0) then
      error(("tide.session: '%s' must be a positive integer"):format(f), 3)
    end
  end
  local b = opts.budget
  if b ~= nil then
    if type(b) ~= "table" then error("tide.session: 'budget' must be a table", 3) end
    for k, v in pairs(b) do
      if not BUDGET_KINDS[k] then error(("tide.session: unknown budget kind '%s'"):format(tostring(k)), 3) end
      if k == "usd" then
        if type(v) ~= "number" or v <= 0 or v ~= v then error("tide.session: 'budget.usd' must be a positive number", 3) end
        if not require("tide.prices").of(opts.provider.model) then
          error(("tide.session: 'budget.usd' needs a price for model '%s' (tide.prices{...})")
            :format(tostring(opts.provider.model)), 3)
        end
      elseif math.type(v) ~= "integer" or v <= 0 then
        error(("tide.session: 'budget.%s' must be a positive integer"):format(k), 3)
      end
    end
  end
  if opts.tools ~= nil and type(opts.tools) ~= "table" then
    error("tide.session: 'tools' must be a list of tide.tool", 3)
  end
  if opts.truncated ~= nil and opts.truncated ~= "error" and opts.truncated ~= "allow" then
    error("tide.session: 'truncated' must be \"error\" or \"allow\"", 3)
  end
  if opts.context ~= nil then require("tide.compaction").options(opts.context, "tide.session: ", 3) end
  if opts.store ~= nil then
    if opts.store ~= "redis" then error('tide.session: \'store\' must be "redis"', 3) end
    local id = opts.id
    if type(id) ~= "string" or id == "" or #id > 512 or id:find("[%c%s]") then
      error("tide.session: 'id' must be a non-empty string without spaces (the session's name in its store)", 3)
    end
    if opts.transcript ~= nil or opts.resume ~= nil then
      error("tide.session: 'transcript' and 'resume' name files; a session with a 'store' keeps its transcript there", 3)
    end
  elseif opts.id ~= nil then
    error('tide.session: \'id\' needs store = "redis"', 3)
  end
  if opts.lease_ms ~= nil and (math.type(opts.lease_ms) ~= "integer" or opts.lease_ms < 30) then
    error("tide.session: 'lease_ms' must be an integer of at least 30", 3)
  end
  if opts.lease_wait_ms ~= nil and (math.type(opts.lease_wait_ms) ~= "integer" or opts.lease_wait_ms < 0) then
    error("tide.session: 'lease_wait_ms' must be a non-negative integer", 3)
  end
end

-- ------------------------------------------------- sessions in Redis --
-- A session with store = "redis" keeps its transcript in Redis
-- (tide.transcript_redis) and runs each turn under a lease, so that one
-- process at a time runs turns on it. The lease is taken (waiting up to
-- lease_wait_ms) at build, for the resume and its repairs, and at every
-- turn, resume, and around close for a lease kept since build; it is
-- renewed every third of lease_ms while held and given up after. A turn
-- that finds the transcript longer than this process last saw (another
-- process ran turns since) reloads it first, through the same resume.

local function busy(self, why)
  return core.error("SessionBusy", ("session '%s' %s"):format(self.store_name, why), { session = self.store_name })
end

-- Renews the lease every third of its time; a lease found taken over
-- stops the turn in progress (its next append would fail anyway).
local function start_renewal(self, token)
  local lease, store, name = self.lease, self.store, self.store_name
  lease.task = core.spawn(function()
    while true do
      core.sleep(math.max(10, lease.ttl // 3))
      local ok = store.renew(name, token, lease.ttl)
      if ok == false then
        lease.lost = true
        if self.turn_ctx then self:cancel() end
        return
      end
      -- nil: Redis unreachable for now; the next beat tries again
    end
  end)
end

-- Takes the lease, waiting up to lease.wait: the length of the transcript
-- list, or nil, err (SessionBusy, ClusterUnavailable).
local function acquire(self)
  local lease = self.lease
  local token = require("tide.cluster").unique()
  local deadline = core.now() + lease.wait
  local delay = 5
  while true do
    local n, err = self.store.acquire(self.store_name, token, lease.ttl, lease.guard)
    if n == nil then return nil, err end
    if err == "guard" then
      local e = busy(self, "is not to be taken: its guard no longer holds")
      e.reason = "guard"
      return nil, e
    end
    if n then
      lease.token, lease.lost = token, nil
      start_renewal(self, token)
      return n
    end
    local left = deadline - core.now()
    if left <= 0 then return nil, busy(self, "is held by another process (a turn runs there)") end
    core.sleep(math.min(delay, left))
    delay = math.min(delay * 2, 100)
  end
end

-- Gives the lease up. The release is sent now (so that a next acquire on
-- the same connection comes after it) without waiting for its answer: a
-- release that fails leaves the lease to expire.
local function release(self)
  local lease = self.lease
  if lease.task then
    lease.task:cancel()
    lease.task = nil
  end
  local token = lease.token
  lease.token = nil
  if token then
    local store, name = self.store, self.store_name
    core.spawn_now(function() pcall(store.release, name, token) end)
  end
end

-- What a queued turn leaves to its answer (tide.queue): the records it
-- still holds (see queued) and the lease, handed over without being
-- written or given up, so that the answer's one script appends them and
-- gives the lease up with the reply: one round trip instead of three.
-- Stops renewing the lease, which expires on its own if that script never
-- runs. Returns { lease = { key, token } | nil, records = (the writer's
-- hand_over) | nil }, or nil, err when an append still in flight failed.
-- Inside a task.
function session_mt:_hand_over()
  local out = {}
  local lease = self.lease
  local held = lease and lease.token and not lease.lost
  local w = self.conversation.writer
  if w and w.hand_over then
    local records, err = w:hand_over()
    if not records then return nil, err end
    self.conversation:unhold() -- (nothing is left to write)
    if #records.lines > 0 then
      if not held then -- (written without it, they could follow another process's)
        local e = busy(self, "lost its lease to another process during the turn")
        e.reason = "lost_lease"
        return nil, e
      end
      out.records = records
    end
  end
  if not held then return out end
  if lease.task then
    lease.task:cancel()
    lease.task = nil
  end
  out.lease = { key = self.store.lease_key(self.store_name), token = lease.token }
  lease.token = nil
  return out
end

-- Reads the transcript again (another process wrote to it, or a write of
-- this one failed), through the one resume.
function session_mt:_reload()
  self.conversation = history.new(self.provider)
  self.decisions, self.ran, self.paused, self.last_turn, self.prefix = {}, {}, nil, nil, nil
  return self:_resume(self.store_name)
end

-- Loads session `self.store_name` (or writes the meta record of a new
-- one) under a lease just taken, its list `n` records long.
local function load_or_create(self, n)
  if n == 0 then
    local w, err = self.store.open(self.store_name, self:_meta(), { count = 0 }, self.lease)
    if not w then return nil, err end
    self.conversation.writer = w
    return true
  end
  return self:_resume(self.store_name)
end

-- Runs fn(...) under the lease: taken first unless held (a lease kept
-- since build), and the transcript reloaded when it changed; given up
-- after. A failure of the store stops fn with its error (a strict writer
-- raises it). Inside a task. (A session without a lease, a file's, runs
-- fn as it is: one process holds it.)
local function leased(self, fn, ...)
  local lease = self.lease
  if not lease then return fn(...) end
  local held = lease.token ~= nil
  if held and lease.lost then return nil, busy(self, "lost its lease to another process") end
  if not held then
    local n, err = acquire(self)
    if not n then return nil, err end
    local w = self.conversation.writer
    if not w or n ~= w.known or w.failed then
      local ok, rok, rerr = pcall(self._reload, self)
      if not (ok and rok) then
        release(self)
        return nil, ok and rerr or rok
      end
    end
  end
  local res = table.pack(pcall(fn, ...))
  if not held then release(self) end
  if lease.lost and (not res[1] or res[2] == nil) then
    local err = busy(self, "lost its lease to another process during the turn")
    err.reason = "lost_lease" -- (the process that took it finishes the turn, and answers for it)
    return nil, err
  end
  if not res[1] then
    if type(res[2]) == "table" then return nil, res[2] end -- a store failure raised by a strict writer
    error(res[2], 0)
  end
  return table.unpack(res, 2, res.n)
end

-- Outside a turn (a decision, the pending list): the transcript reloaded
-- first if another process wrote to it. Returns fn's results; a store
-- failure is nil, err.
local function synced(self, fn, ...)
  if not self.turn_ctx and not self.lease.token then
    local n, err = self.store.length(self.store_name)
    if not n then return nil, err end
    local w = self.conversation.writer
    if not w or n ~= w.known or w.failed then
      local ok, rok, rerr = pcall(self._reload, self)
      if not (ok and rok) then return nil, ok and rerr or rok end
    end
  end
  local res = table.pack(pcall(fn, ...))
  if not res[1] then
    if type(res[2]) == "table" then return nil, res[2] end
    error(res[2], 0)
  end
  return table.unpack(res, 2, res.n)
end

-- Builds the Redis side of a session: the lease, then a new transcript or
-- the resume of the one there. `keep`: the lease stays held (and renewed)
-- until close, for a caller that runs a turn next (tide.queue).
local function open_redis(self, keep)
  local n, err = acquire(self)
  if not n then return nil, err end
  local ok, rok, rerr = pcall(load_or_create, self, n)
  if not (ok and rok and keep) then release(self) end
  if not ok then
    if type(rok) == "table" then return nil, rok end
    error(rok, 0)
  end
  return rok, rerr
end

--- Creates a session. Misuse (an unknown option, a wrong type, an unknown
--- agent) raises; a file that cannot be read or written (a `resume`
--- transcript missing or corrupt, a `transcript` that cannot be created, a
--- config file that fails to load) returns nil and the error
--- (`TranscriptError`, `ConfigError`).
---@param opts {agent:string|tide.agent.definition, provider:table, integrations?:table, config?:table|string, transcript?:string, resume?:string, max_iterations?:integer, tool_timeout_ms?:integer, result_cap_bytes?:integer, max_subagents?:integer, tools?:tide.tool[], budget?:{provider_calls?:integer, tokens?:integer, tool_calls?:integer, wall_ms?:integer}}
---@return tide.session|nil
---@return table|nil err
function M.new(opts)
  check_opts(opts)
  local t0 = hrtime()
  local def = opts.agent
  if type(def) == "string" then
    def = agents.get(def)
    if not def then
      error(core.error("UnknownAgent", ("no agent registered with id '%s'"):format(opts.agent)), 2)
    end
  end
  local stats = new_stats()
  -- Config: captured once; a file is loaded here and never on the turn path.
  local cfg = opts.config
  if cfg ~= nil and not config().is(cfg) then
    local c, err = config().new(cfg)
    if not c then return nil, err end
    cfg = c
    stats.config_loads = stats.config_loads + 1
  end
  local cfg_get = cfg and function(k, d) return cfg:get(k, d) end or function(_, d) return d end

  local self = setmetatable({
    def = def,
    provider = opts.provider,
    -- several sources act as one (tide.integrations.several)
    src = several_of(opts.integrations),
    config = cfg,
    counters = stats,
    parent = opts._parent,
    toolkit = opts._toolkit,
    agent_path = opts._agent_path or def.id,
    max_iterations = opts.max_iterations or def.max_iterations
      or (opts._parent and DEFAULTS.subagent_max_iterations)
      or cfg_get("max_iterations", DEFAULTS.max_iterations),
    tool_timeout_ms = opts.tool_timeout_ms or cfg_get("tool_timeout_ms", DEFAULTS.tool_timeout_ms),
    result_cap = opts.result_cap_bytes or cfg_get("result_cap_bytes", DEFAULTS.result_cap_bytes),
    budget_limits = opts.budget,
    max_subagents = opts.max_subagents or def.max_subagents or DEFAULTS.max_subagents,
    truncated = opts.truncated,
    context = opts.context or def.context,  -- compaction settings (tide.compaction)
    decisions = {},  -- call id -> { approved, note } (tide.approval)
    ran = {},        -- ids of approved calls started (never run again)
    paused = nil,    -- the round a turn paused on, waiting for decisions
    trace = {},
  }, session_mt)

  if opts.tools then
    for _, t in ipairs(opts.tools) do
      if not tool.is(t) then error("tide.session: 'tools' must be a list of tide.tool", 2) end
    end
  end
  self.parent_tools, self.extra_tools = opts._parent_tools, opts.tools
  -- A surface of its own when the tools depend on more than the definition.
  local custom = opts.tools ~= nil or (opts._parent_tools ~= nil and (def.tools == "*" or type(def.tools) == "table"))

  -- Prewarm: a warm shared cache gives the session its integrations now.
  local snapshot
  if self.src then
    snapshot = integrations_cache().peek(self.src)
    if snapshot then
      stats.cache_hits = stats.cache_hits + 1
      stats.prewarmed = true
      stats.integrations = "authoritative"
      self.initialized = true
      self.integration_hash = snapshot.hash
    else
      stats.cache_misses = stats.cache_misses + 1
      self.initialized = false
    end
  else
    self.initialized = true
  end
  if self.toolkit then snapshot = opts._snapshot or snapshot end
  self.snapshot = snapshot
  self.surface = custom and surface.build(def, self:_base(), snapshot)
    or surface.shared(def, function() return self:_base() end, snapshot)
  if self.surface.warnings then
    for _, w in ipairs(self.surface.warnings) do
      io.stderr:write("tide: agent '", def.id, "': ", w, "\n")
    end
  end
  self.custom_surface = custom

  self.conversation = history.new(self.provider)
  if opts.store then
    local c = require("tide.cluster").require_current('tide.session{ store = "redis" }', 2)
    self.store = require("tide.transcript_redis").store(c)
    self.store_name = opts.id
    self.lease = { token = nil, ttl = opts.lease_ms or DEFAULTS.lease_ms, wait = opts.lease_wait_ms or 0,
      guard = opts._lease_guard }
    local ok, err = blocking(open_redis, self, opts._keep_lease)
    if not ok then return nil, err end
  elseif opts.resume then
    self.store = opts._store or transcript().file
    self.store_name = opts.resume
    local ok, err = self:_resume(opts.resume)
    if not ok then return nil, err end
  elseif opts.transcript then
    self.store = opts._store or transcript().file
    self.store_name = opts.transcript
    local w, err = self.store.open(opts.transcript, self:_meta())
    if not w then return nil, err end
    self.conversation.writer = w
  end
  stats.build_ms = ms_since(t0)
  return self
end

--- The direct tools of this session (its definition's, resolved against
--- the parent's for sub-agents, plus `tools` given at build), built once.
function session_mt:_base()
  local b = self.base_tools
  if not b then
    b = surface.direct_tools(self.def, self.parent_tools)
    for _, t in ipairs(self.extra_tools or {}) do b[#b + 1] = t end
    self.base_tools = b
  end
  return b
end

function session_mt:_meta()
  return {
    type = "meta", version = 1, agent = self.def.id, agent_path = self.agent_path,
    provider = self.provider.kind, model = self.provider.model,
    created = os.date("!%Y-%m-%dT%H:%M:%SZ"),
  }
end

-- Resumes from the transcript `path` of the session's store: one code
-- path for every store (files, Redis), restoring the frozen prompt, the
-- messages, compactions, pauses and decisions, and repairing a turn its
-- process left mid-round.
function session_mt:_resume(path)
  local meta, messages, info = self.store.load(path)
  if meta == false then
    return nil, core.error("SessionCorrupt", ("session '%s' is no longer in its store (Redis lost it: "
      .. "restarted without persistence?)"):format(path), { session = path, reason = "lost" })
  end
  if not meta then return nil, messages end
  local sys, version, restored = nil, nil, {}
  -- The last queued turn (tide.queue): its request id, and whether its
  -- answer is the last message (a process that died after the answer and
  -- before the reply went out).
  -- Its provider calls so far (one assistant message each): a continued
  -- turn goes on counting from there, so max_iterations holds across a
  -- crash. A queued resume's turn goes on from the paused turn's count
  -- (the pause record's iteration), as s:resume() does.
  -- The calls an assistant message holds: native ones, or (for an agent
  -- that takes them) ones written as text, <tool_call> tags.
  local text_tools = self.def.text_tools ~= false
  local function calls_of(m)
    if type(m.tool_calls) == "table" and #m.tool_calls > 0 then return m.tool_calls, false end
    if text_tools and type(m.content) == "string" and m.content:find("<tool_call", 1, true) then
      local parsed = require("tide.tool_protocol").parse(m.content)
      if #parsed > 0 then return parsed, true end
    end
    return nil
  end
  -- (every queued turn by its id: one that later turns followed is never
  -- run again, finished or not)
  local last_turn, paused_at, turns = nil, nil, {}
  for _, m in ipairs(messages) do
    if m.type == "turn" then
      last_turn = { id = m.id, done = false, iterations = paused_at or 0 }
      if m.id ~= nil then turns[m.id] = last_turn end
      paused_at = nil
    elseif m.type == "pause" then
      paused_at = m.iteration
    elseif m.type == nil then
      paused_at = nil -- a message after the pause: its round went on
      if last_turn and m.role ~= "system" then
        -- (a paused reply, Anthropic's pause_turn, is not the answer: the
        -- turn goes on from it)
        local final = m.role == "assistant" and not calls_of(m) and m.stop ~= "pause"
        last_turn.done, last_turn.reply = final, final and (m.content or "") or nil
        if m.role == "assistant" then last_turn.iterations = last_turn.iterations + 1 end
      end
    end
  end
  self.last_turn, self.turns_seen = last_turn, turns
  for _, m in ipairs(messages) do
    if m.role == "system" and not sys then
      sys, version = m.content, m.prompt_version or meta.prompt_version
    elseif m.role ~= "system" and m.type == nil then
      restored[#restored + 1] = m
    elseif m.type == "compaction" then
      -- the compacted state, as the session that compacted had it
      restored = require("tide.compaction").apply(restored, m)
      self.counters.compactions = self.counters.compactions + 1
    end
  end
  -- The resumed session keeps the prompt it froze, byte for byte.
  self.conversation:restore(sys, version, restored)
  self.resumed = { torn = info.torn, messages = #restored }
  local w, err = self.store.open(path, self:_meta(), info, self.lease)
  if not w then return nil, err end
  self.conversation.writer = w
  -- A turn paused for approval resumes where it stopped (its calls wait,
  -- they were not interrupted).
  local paused, perr = require("tide.approval").restore(self, messages)
  if paused == nil then return nil, perr end
  -- Crash-safe: a process that died between a response and its tool
  -- results left calls without results, which every provider rejects in
  -- every later request. Each gets an "interrupted" error result (written
  -- to the transcript too), so the conversation is valid again.
  local last = restored[#restored]
  local open_calls, textual = nil, false
  if last and last.role == "assistant" then open_calls, textual = calls_of(last) end
  if not paused and open_calls then
    local results = {}
    for i, c in ipairs(open_calls) do
      results[i] = turn._result(c,
        "Error: interrupted (the session stopped before this call returned; it may or may not have run)", true)
    end
    self.conversation:append(turn._results_message(results, textual))
    self.resumed.interrupted = #results
    if last_turn then last_turn.done = false end
  end
  return true
end

-- ------------------------------------------------ what turn 1 completes --

--- Refreshes the delegation surface against `snapshot` (a tool-surface
--- change: the frozen system prompt stays as it is).
function session_mt:_set_snapshot(snapshot)
  self.snapshot = snapshot
  self.integration_hash = snapshot and snapshot.hash
  self.surface = self.custom_surface and surface.build(self.def, self:_base(), snapshot)
    or surface.shared(self.def, function() return self:_base() end, snapshot)
  self.counters.delegation_rebuilds = self.counters.delegation_rebuilds + 1
  if self.prefix then self.prefix = nil; self.prefix_reencode = true end
end

-- Cold path: fetch through the shared cache (concurrent cold sessions on one
-- key share one fetch); an unavailable source leaves the session with no
-- toolkits, which is reported in stats, not raised.
local function fetch_integrations(self, trace)
  local t0 = hrtime()
  local snap, err = integrations_cache().get(self.src)
  self.counters.integration_fetches = self.counters.integration_fetches + 1
  self.initialized = true
  if snap then
    self.counters.integrations = "authoritative"
    self:_set_snapshot(snap)
    trace[#trace + 1] = { step = "integrations_fetch", ms = ms_since(t0), hash = snap.hash }
  else
    self.counters.integrations = "unavailable"
    self.integrations_error = err
    trace[#trace + 1] = { step = "integrations_unavailable", ms = ms_since(t0), error = tostring(err) }
  end
end

-- Turn 1 of a cold session fetches; a warm one only peeks at the cache for
-- a change of its integrations (a tool-surface change at the turn
-- boundary).
function session_mt:_update_integrations(trace)
  if not self.initialized then
    fetch_integrations(self, trace)
  elseif self.src and self.conversation.system then
    local snap = integrations_cache().peek(self.src)
    if snap and snap.hash ~= self.integration_hash then
      local r0 = hrtime()
      self:_set_snapshot(snap)
      trace[#trace + 1] = { step = "delegation_refresh", ms = ms_since(r0), hash = snap.hash }
    end
  end
end

-- Renders and freezes the system prompt (turn 1 only). Sessions sharing a
-- surface share the rendered text too.
function session_mt:_freeze(trace)
  local t0 = hrtime()
  local shared = self.surface
  local prompts = require "tide.prompts"
  local text, version
  local okr, resolved = pcall(prompts.resolve, self.def.prompt)
  if not okr then
    return nil, core.error("UnknownPrompt", tostring(resolved):gsub("^.-:%d+: ", ""), { prompt = self.def.prompt })
  end
  local current = resolved.version
  -- Sub-agents append the role contract: their text depends on its version
  -- too, and is cached apart from the root agent's.
  local key = "system"
  if self.parent then
    key = "sub_system"
    local okc, contract = pcall(prompts.resolve, "subagent_contract")
    current = ("%s+%s"):format(tostring(current), okc and tostring(contract.version) or "?")
  end
  local cached = shared[key]
  if cached and current ~= "nil" and cached.version_key == current then
    text, version = cached.text, cached.version
  else
    local data = surface.prompt_data(self.def, shared, self.snapshot, self.toolkit)
    text, version = prompts.render(self.def.prompt, data)
    if not text then return nil, version end
    if self.parent then
      local contract, cerr = prompts.render("subagent_contract", data)
      if not contract then return nil, cerr end
      -- appended once: a prompt that already ends with the contract keeps it
      if text:sub(-#contract) ~= contract then text = text .. "\n\n" .. contract end
    end
    shared[key] = { text = text, version = version, version_key = current }
  end
  self.conversation:freeze(text, version)
  trace[#trace + 1] = { step = "prompt_frozen", ms = ms_since(t0), bytes = #text }
  return true
end

-- The encoded prefix: shared by sessions with the same surface, provider and
-- system text.
function session_mt:_prefix(schema)
  if schema then
    -- A turn whose provider holds the model to a schema: its own prefix,
    -- shared like the plain one, never the session's frozen one.
    local shared, provider, system = self.surface, self.provider, self.conversation.system
    local key = (system or "") .. "\0" .. json.canonical(schema)
    local by_provider = shared.prefixes[provider] or {}
    shared.prefixes[provider] = by_provider
    local p = by_provider[key]
    if not p then
      p = provider:encode_prefix(system, shared.specs, schema)
      by_provider[key] = p
    end
    return p
  end
  local p = self.prefix
  if p then return p end
  local shared, provider, system = self.surface, self.provider, self.conversation.system
  local by_provider = shared.prefixes[provider]
  if not by_provider then
    by_provider = {}
    shared.prefixes[provider] = by_provider
  end
  p = by_provider[system]
  if not p then
    p = provider:encode_prefix(system, shared.specs)
    by_provider[system] = p
    if self.prefix_reencode then
      self.counters.prompt_bytes_reencoded = self.counters.prompt_bytes_reencoded + #p
    else
      self.counters.prompt_bytes_encoded = self.counters.prompt_bytes_encoded + #p
    end
  end
  self.prefix_reencode = nil
  self.prefix = p
  return p
end

-- ------------------------------------------------------- public methods --

local TURN_OPTIONS = { on_delta = true, on_tool_start = true, on_tool_end = true, on_event = true,
  on_reasoning = true, context = true, truncated = true, schema = true, traceparent = true }
-- A resumed turn sends no user message: no context, and the schema it wants
-- is the paused turn's.
local RESUME_OPTIONS = { on_delta = true, on_tool_start = true, on_tool_end = true, on_event = true,
  on_reasoning = true, truncated = true, traceparent = true }

-- The options turn and resume share: each key known, the listeners
-- functions, `truncated` one of its two words. `level` is error()'s, for
-- the caller of the public method.
local function check_run_opts(opts, allowed, fname, argn, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(("bad argument #%d to '%s' (table expected, got %s)"):format(argn, fname, type(opts)), level)
  end
  for k in pairs(opts) do
    if not allowed[k] then
      error(("bad argument #%d to '%s' (unknown option '%s')"):format(argn, fname, tostring(k)), level)
    end
  end
  for i = 1, #CALLBACK_OPTS do
    local f = CALLBACK_OPTS[i]
    if opts[f] ~= nil and type(opts[f]) ~= "function" then
      error(("bad argument #%d to '%s' (field '%s' must be a function)"):format(argn, fname, f), level)
    end
  end
  if opts.truncated ~= nil and opts.truncated ~= "error" and opts.truncated ~= "allow" then
    error(('bad argument #%d to \'%s\' (field \'truncated\' must be "error" or "allow")'):format(argn, fname), level)
  end
  return opts
end

local function check_turn_args(text, opts)
  if type(text) == "table" then
    require("tide.content").check_list(text, 3)
  elseif type(text) ~= "string" then
    error(("bad argument #1 to 'turn' (string or list of parts expected, got %s)"):format(type(text)), 3)
  elseif not utf8.len(text) then -- (a request body is JSON, and JSON text is UTF-8)
    error("bad argument #1 to 'turn' (not UTF-8 text)", 3)
  elseif not text:find("%S") then -- (providers refuse a message with nothing in it)
    error("bad argument #1 to 'turn' (empty text)", 3)
  end
  opts = check_run_opts(opts, TURN_OPTIONS, "turn", 2, 4)
  if opts.context ~= nil and (type(opts.context) ~= "string" or not utf8.len(opts.context)) then
    error("bad argument #2 to 'turn' (field 'context' must be a string of UTF-8 text)", 3)
  end
  if opts.schema ~= nil then require("tide.schema").check(opts.schema, "bad argument #2 to 'turn' (field 'schema')", 3) end
  return opts
end

--- Sends `text` as the user's message and runs the tool loop until the model
--- answers. Returns the reply text, or nil plus an error (`MaxIterationsExceeded`,
--- `Cancelled`, `BudgetExhausted`, provider and HTTP codes). Inside a task it
--- suspends only that task; outside any task it drives the loop.
---@param text string
---@param opts? {on_delta?:fun(text:string), on_tool_start?:fun(call:table), on_tool_end?:fun(call:table, result:table, ms:number), on_event?:fun(ev:table), context?:string}
---@return string|nil reply
---@return table|nil err
function session_mt:turn(text, opts)
  opts = check_turn_args(text, opts)
  if self.lease then return blocking(leased, self, turn.run, self, text, opts) end
  return blocking(turn.run, self, text, opts)
end

-- Queue request `rid` run for the first time: fn(...) with the request's
-- `turn` record going out with fn's first records, so that a process that
-- takes the request over after a crash finds it (and what fn did) there.
local function first_run(self, rid, fn, ...)
  self.conversation:hold(true)
  self.conversation:note { type = "turn", id = rid }
  self.last_turn = { id = rid, done = false }
  self.turns_seen = self.turns_seen or {}
  self.turns_seen[rid] = self.last_turn
  local reply, err = fn(...)
  if reply ~= nil then self.last_turn.done, self.last_turn.reply = true, reply end
  self.conversation:hold(false)
  return reply, err
end

-- Runs fn() under the lease kept since build (_keep_lease), for a queue
-- request: the records fn leaves at its end stay held, for _hand_over to
-- give them to the answer (or for close to write them).
local function queued(self, fn)
  return blocking(leased, self, function()
    self.conversation:hold(true)
    return fn()
  end)
end

--- The turn of queue request `rid` (tide.queue), under the lease: run
--- once. When the transcript already holds that turn (a process that ran
--- it died, or died before its reply went out), it is not run again: a
--- finished one gives its answer, an unfinished one goes on from where the
--- transcript stops (tide.turn's continue), a paused one stays paused.
---@param rid string
---@param text string
---@param opts? table turn options
-- The answer to queue request `rid` when its turn is in the transcript and
-- later turns followed it (a process died in it, or before its reply went
-- out, and the session went on): its reply, or an error; never run again.
-- nil when that is not so.
local function superseded(self, rid)
  local seen = self.turns_seen and self.turns_seen[rid]
  if not seen or seen == self.last_turn then return nil end
  if seen.done then return true, seen.reply end
  return true, nil, core.error("Superseded", ("request %s was interrupted, and the session's later turns went on "
    .. "without it: it is not run again"):format(tostring(rid)), { id = rid })
end

function session_mt:_queued_turn(rid, text, opts)
  opts = opts or {}
  return queued(self, function()
    local gone, reply, err = superseded(self, rid)
    if gone then return reply, err end
    local lt = self.last_turn
    if lt and lt.id == rid then
      if self.paused then return nil, require("tide.approval").required(self) end
      if lt.done then return lt.reply end
      return turn.continue(self, opts)
    end
    return first_run(self, rid, turn.run, self, text, opts)
  end)
end

--- The decisions of queue request `rid` (tide.queue: { id, approved,
--- note } each, for the calls ApprovalRequired listed), then the paused
--- turn resumed, under the lease: run once, as _queued_turn. Every decision
--- is checked before any is recorded: one that does not fit
--- (NothingPending, UnknownApproval, AlreadyDecided) is the answer, and
--- nothing changed. A request a process ran and died in is not run again:
--- a finished one gives its answer; decisions it recorded stand, those it
--- did not are made; the turn goes on from where the transcript stops.
---@param rid string
---@param decisions {id:string, approved:boolean, note?:string}[]
---@param opts? table turn options
function session_mt:_queued_resume(rid, decisions, opts)
  opts = opts or {}
  local approval = require "tide.approval"
  return queued(self, function()
    local gone, reply, err = superseded(self, rid)
    if gone then return reply, err end
    local lt = self.last_turn
    if lt and lt.id == rid then
      if lt.done then return lt.reply end
      if not self.paused then return turn.continue(self, opts) end
      -- those it recorded stand (decide refuses them again, changing nothing)
      for _, d in ipairs(decisions) do approval.decide(self, d.id, d.approved, d.note) end
      return turn.resume(self, opts)
    end
    local ok, err = approval.check_all(self, decisions) -- (NothingPending when no turn is paused)
    if not ok then return nil, err end
    return first_run(self, rid, function()
      for _, d in ipairs(decisions) do assert(approval.decide(self, d.id, d.approved, d.note)) end
      return turn.resume(self, opts)
    end)
  end)
end

--- Approves call `id` (from `err.pending` of ApprovalRequired, at any
--- depth); `note` is kept in the transcript. Returns true, or nil and an
--- error: NothingPending, UnknownApproval, AlreadyDecided.
---@param id string
---@param note? string
---@return boolean|nil ok
---@return table|nil err
function session_mt:approve(id, note)
  require("tide.approval").check_decision(id, true, note, 2)
  if self.lease then return blocking(synced, self, require("tide.approval").decide, self, id, true, note) end
  return require("tide.approval").decide(self, id, true, note)
end

--- Rejects call `id`: the model gets "rejected by the user: <reason>" as
--- its result. Returns as approve does.
---@param id string
---@param reason? string
function session_mt:reject(id, reason)
  require("tide.approval").check_decision(id, false, reason, 2)
  if self.lease then return blocking(synced, self, require("tide.approval").decide, self, id, false, reason) end
  return require("tide.approval").decide(self, id, false, reason)
end

--- The calls waiting for a decision (with sub-agents'), empty when none.
---@return {id:string, name:string, arguments:string, agent:string}[]
function session_mt:pending()
  if self.lease then
    local list, err = blocking(synced, self, require("tide.approval").pending, self)
    -- the list as this process last saw it when Redis cannot say
    if not list then io.stderr:write("tide: session '", self.store_name, "': ", tostring(err), "\n") end
    return list or require("tide.approval").pending(self)
  end
  return require("tide.approval").pending(self)
end

--- Resumes the turn paused for approval: decided calls run (or get their
--- rejection), then the turn goes on. Returns what turn returns;
--- ApprovalRequired again while calls are undecided, NothingPending when no
--- turn is paused. Takes the listener options of turn.
---@param opts? table
function session_mt:resume(opts)
  opts = check_run_opts(opts, RESUME_OPTIONS, "resume", 1, 3)
  if self.lease then return blocking(leased, self, turn.resume, self, opts) end
  return blocking(turn.resume, self, opts)
end

--- Cancels the turn in flight: its HTTP request is aborted and its tool and
--- sub-agent tasks are cancelled. The session stays usable.
---@return boolean cancelled
function session_mt:cancel()
  local turn_ctx = self.turn_ctx
  if not turn_ctx then return false end
  self.cancelling = true
  for _, t in ipairs(turn_ctx.tasks) do t:cancel() end
  turn_ctx.caller:interrupt()
  return true
end

--- Counters of this session (see README for each one).
---@return table
function session_mt:stats()
  local s = {}
  for k, v in pairs(self.counters) do s[k] = v end
  local tk = self.counters.tokens
  s.tokens = { input = tk.input, output = tk.output, cached = tk.cached, cache_write = tk.cache_write,
    reasoning = tk.reasoning }
  s.trace = self.trace
  s.integration_hash = self.integration_hash
  s.integrations_error = self.integrations_error and tostring(self.integrations_error) or nil
  s.initialized = self.initialized
  s.prompt_version = self.conversation.prompt_version
  s.prompt_bytes_encoded = s.prompt_bytes_encoded + self.conversation.bytes
  s.tools = #self.surface.tools
  local b = self.last_budget
  if b then
    s.budget = { used = b.used, agents = b.agents, limits = b.limits,
      exhausted = b.exhausted and b.exhausted.what or nil }
  end
  return s
end

--- The names of the tools the model sees, in order.
---@return string[]
function session_mt:tools()
  local out = {}
  for i, t in ipairs(self.surface.tools) do out[i] = t.name end
  return out
end

--- The frozen system prompt (nil before the first turn).
function session_mt:system_prompt() return self.conversation.system end

--- The conversation so far (neutral messages, after the system prompt):
--- the same list at every call, brought up to date by the call.
---@return table[]
function session_mt:history()
  return self.conversation.messages
end

--- Closes the transcript (and gives up a Redis session's lease, if held).
function session_mt:close()
  -- what a queued turn held and did not hand over is written first, while
  -- the lease is still this process's (a failure is the next load's to see)
  pcall(self.conversation.unhold, self.conversation)
  if self.lease and self.lease.token then blocking(release, self) end
  self.conversation:close()
end
session_mt.__close = session_mt.close

M._error_text = turn.error_text
--- Sends an event to the turn's sink, if there is one.
function M._emit(ev)
  local sink = core.context("tide_on_event")
  if sink then sink(ev) end
end

return M
