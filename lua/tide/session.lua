--- tide.session: a conversation with one agent.
---
--- Build is the hot path that the design revolves around: a session built
--- while the shared integration cache is warm takes the cached snapshot,
--- synthesises its delegation tools against it and is *initialized*, so its
--- first turn goes straight to the provider. A cold session fetches (through
--- the cache) at turn 1 instead. The system prompt is rendered once, at the
--- first turn, and frozen; the request prefix (system prompt + tool schemas) is
--- encoded once and reused byte for byte.
---
--- Sessions built from the same agent definition and the same integration
--- snapshot share one *surface* (tool list, schemas, rendered prompt, encoded
--- prefix): ten thousand sessions hold one copy, not ten thousand.
---@class tide.session
local M = {}

local core = require "tide.core"
local json = require "tide.json"
local tool = require "tide.tool"
local agents = require "tide.agents"
local tool_protocol = require "tide.tool_protocol"
-- Loaded when a session first needs them (a config, a transcript, a
-- budget): a script that uses none never compiles them.
local function config() return require "tide.config" end
local function transcript() return require "tide.transcript" end
local function tree_budget() return require "tide.budget" end

local session_mt = { __name = "tide.session" }
session_mt.__index = session_mt

local DEFAULTS = {
  max_iterations = 10,
  subagent_max_iterations = 8,
  tool_timeout_ms = 120000,
  result_cap_bytes = 16 * 1024,
}

local hrtime = core.hrtime
local spawn, spawn_now = core.spawn, core.spawn_now
local tool_round = core.tool_round
local function ms_since(t0) return (hrtime() - t0) / 1e6 end

local function fail(code, msg, fields) return nil, core.error(code, msg, fields) end

-- ------------------------------------------------------------ surfaces --

-- surface cache: def -> generation -> snapshot (or false) -> surface.
-- Weak keys: a surface lives as long as its definition and snapshot do.
local surfaces = setmetatable({}, { __mode = "k" })

local function sanitize(slug)
  return (slug:lower():gsub("[^a-z0-9_]", "_"))
end
M.sanitize = sanitize

local function tool_list_names(list)
  local names = {}
  for i, t in ipairs(list) do names[i] = t.name end
  return table.concat(names, ", ")
end

local delegate_params = {
  type = "object",
  properties = {
    task = { type = "string", description = "What the sub-agent should do, with all the context it needs." },
  },
  required = json.array { "task" },
}

-- Per-snapshot toolkit delegation tools, shared by every session on it.
local toolkit_delegates = setmetatable({}, { __mode = "k" })

-- Delegation handlers run a sub-agent (tide.subagent, which builds sessions
-- with this module: required on first use to break the cycle).
local function run_subagent(...) return require("tide.subagent").run(...) end

local function toolkit_delegate_tools(snapshot)
  local cached = toolkit_delegates[snapshot]
  if cached then return cached end
  local list = {}
  for _, tk in ipairs(snapshot.toolkits) do
    if tk.connected then
      local slug = tk.slug
      list[#list + 1] = tool.new {
        name = "delegate_" .. sanitize(slug),
        description = ("Delegate a task to the %s integration agent, which can use %s directly. %s")
          :format(slug, slug, tk.description or ""),
        parameters = delegate_params,
        handler = function(args, ctx)
          return run_subagent(ctx.session, "integrations_agent", args, { toolkit = slug })
        end,
      }
      list[#list].toolkit = slug
    end
  end
  toolkit_delegates[snapshot] = list
  return list
end

local named_delegate_cache = setmetatable({}, { __mode = "k" })

local function named_delegate(id, subdef)
  local by_gen = named_delegate_cache[subdef]
  if by_gen then return by_gen end
  local t = tool.new {
    name = subdef.delegate_name or ("delegate_" .. sanitize(id)),
    description = subdef.when_to_use or ("Delegate a task to the " .. id .. " agent."),
    parameters = delegate_params,
    handler = function(args, ctx) return run_subagent(ctx.session, id, args) end,
  }
  t.subagent = id
  named_delegate_cache[subdef] = t
  return t
end

--- Builds the tool surface of `def` against `snapshot` (nil: no toolkits).
--- `base` is the list of direct tools. Returns the surface; `warnings` lists
--- unknown sub-agent ids.
local function build_surface(def, base, snapshot)
  local list, map, synthesized, warnings = {}, {}, {}, nil
  for _, t in ipairs(base) do
    if not map[t.name] then
      list[#list + 1] = t
      map[t.name] = t
    end
  end
  local function insert(t)
    -- A synthesised name that collides with an existing tool is dropped, and
    -- only names actually inserted are recorded, so a refresh never removes
    -- a direct tool.
    if map[t.name] then return end
    list[#list + 1] = t
    map[t.name] = t
    synthesized[t.name] = true
  end
  for _, entry in ipairs(def.subagents or {}) do
    if type(entry) == "table" and entry.toolkits == "*" then
      if snapshot then
        for _, t in ipairs(toolkit_delegate_tools(snapshot)) do insert(t) end
      end
    else
      local id = type(entry) == "string" and entry or entry.id
      local subdef = agents.get(id)
      if subdef then
        insert(named_delegate(id, subdef))
      else
        warnings = warnings or {}
        warnings[#warnings + 1] = ("unknown sub-agent '%s' skipped"):format(id)
      end
    end
  end
  local specs = {}
  for i, t in ipairs(list) do specs[i] = tool.spec(t) end
  return {
    tools = list, map = map, synthesized = synthesized, specs = specs,
    warnings = warnings, snapshot = snapshot, prefixes = {},
  }
end

-- The surface shared by every session of `self`'s definition on `snapshot`;
-- the direct-tool list is only built when the surface is.
local function shared_surface(self, snapshot)
  local def = self.def
  local gen = agents.generation()
  local by_def = surfaces[def]
  if not by_def then
    by_def = setmetatable({}, { __mode = "k" })
    surfaces[def] = by_def
  end
  local key = snapshot or by_def
  local entry = by_def[key]
  if entry and entry.gen == gen then return entry.surface end
  local s = build_surface(def, self:_base(), snapshot)
  by_def[key] = { gen = gen, surface = s }
  return s
end

-- ---------------------------------------------------------------- build --

local function direct_tools(def, parent_tools)
  local out = {}
  local spec = def.tools
  if spec == "*" then
    for _, t in ipairs(parent_tools or {}) do out[#out + 1] = t end
  elseif spec then
    for _, t in ipairs(spec) do
      if type(t) == "string" then
        for _, pt in ipairs(parent_tools or {}) do
          if pt.name == t then out[#out + 1] = pt break end
        end
      else
        out[#out + 1] = t
      end
    end
  end
  if def.disallowed_tools then
    local drop = {}
    for _, n in ipairs(def.disallowed_tools) do drop[n] = true end
    local kept = {}
    for _, t in ipairs(out) do if not drop[t.name] then kept[#kept + 1] = t end end
    out = kept
  end
  for _, t in ipairs(def.extra_tools or {}) do out[#out + 1] = t end
  return out
end

local function new_stats()
  return {
    provider_calls = 0, tool_calls = 0, turns = 0, iterations = 0,
    tokens = { input = 0, output = 0, cached = 0 },
    integration_fetches = 0, config_loads = 0, delegation_rebuilds = 0,
    cache_hits = 0, cache_misses = 0,
    prewarmed = false, integrations = "none",
    spawn_depth_max = 0, prompt_bytes_encoded = 0, prompt_bytes_reencoded = 0,
    ttfb_ms = nil, first_ttfb_ms = nil,
  }
end

local function integrations_cache()
  return require("tide.integrations.cache")
end

-- Option lists, built once (the checks run on every build and turn).
local PATH_OPTS = { "transcript", "resume" }
local COUNT_OPTS = { "max_iterations", "tool_timeout_ms", "result_cap_bytes" }
local CALLBACK_OPTS = { "on_delta", "on_tool_start", "on_tool_end", "on_event" }

local function check_opts(opts)
  if type(opts) ~= "table" then
    error(("bad argument #1 to 'session' (table expected, got %s)"):format(type(opts)), 3)
  end
  local a = opts.agent
  if type(a) ~= "string" and type(a) ~= "table" then
    error("tide.session: 'agent' must be an agent id or definition", 3)
  end
  if type(opts.provider) ~= "table" or type(opts.provider.complete) ~= "function" then
    error("tide.session: 'provider' must be a provider (tide.provider.openai{...} or anthropic{...})", 3)
  end
  local src = opts.integrations
  if src ~= nil and (type(src) ~= "table" or type(src.identity) ~= "function" or type(src.fetch) ~= "function") then
    error("tide.session: 'integrations' must be an integration source (identity() and fetch())", 3)
  end
  for _, f in ipairs(PATH_OPTS) do
    if opts[f] ~= nil and type(opts[f]) ~= "string" then error(("tide.session: '%s' must be a file path"):format(f), 3) end
  end
  for _, f in ipairs(COUNT_OPTS) do
    local v = opts[f]
    if v ~= nil and (math.type(v) ~= "integer" or v <= 0) then
      error(("tide.session: '%s' must be a positive integer"):format(f), 3)
    end
  end
end

--- Creates a session.
---@param opts {agent:string|tide.agent.definition, provider:table, integrations?:table, config?:table|string, transcript?:string, resume?:string, max_iterations?:integer, tool_timeout_ms?:integer, result_cap_bytes?:integer, tools?:tide.tool[], budget?:{provider_calls?:integer, tokens?:integer, tool_calls?:integer, wall_ms?:integer}}
---@return tide.session
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
    if not c then error(err, 2) end
    cfg = c
    stats.config_loads = stats.config_loads + 1
  end
  local cfg_get = cfg and function(k, d) return cfg:get(k, d) end or function(_, d) return d end

  local self = setmetatable({
    def = def,
    provider = opts.provider,
    src = opts.integrations,
    config = cfg,
    counters = stats,
    messages = {},   -- neutral messages after the system prompt
    unmade = {},     -- messages after those, kept as parts by C rounds (make_unmade)
    nencoded = 0,    -- how many of them (made and unmade) are encoded into `wire`
    wire = core.wire(), -- their non-empty encodings, joined: what request bodies carry
    parent = opts._parent,
    toolkit = opts._toolkit,
    agent_path = opts._agent_path or def.id,
    max_iterations = opts.max_iterations or def.max_iterations
      or (opts._parent and DEFAULTS.subagent_max_iterations)
      or cfg_get("max_iterations", DEFAULTS.max_iterations),
    tool_timeout_ms = opts.tool_timeout_ms or cfg_get("tool_timeout_ms", DEFAULTS.tool_timeout_ms),
    result_cap = opts.result_cap_bytes or cfg_get("result_cap_bytes", DEFAULTS.result_cap_bytes),
    budget_limits = opts.budget,
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
  self.surface = custom and build_surface(def, self:_base(), snapshot) or shared_surface(self, snapshot)
  if self.surface.warnings then
    for _, w in ipairs(self.surface.warnings) do
      io.stderr:write("tide: agent '", def.id, "': ", w, "\n")
    end
  end
  self.custom_surface = custom

  if opts.resume then
    local ok, err = self:_resume(opts.resume)
    if not ok then error(err, 2) end
  elseif opts.transcript then
    local w, err = transcript().open(opts.transcript, self:_meta())
    if not w then error(err, 2) end
    self.writer = w
  end
  stats.build_ms = ms_since(t0)
  return self
end

--- The direct tools of this session (its definition's, resolved against
--- the parent's for sub-agents, plus `tools` given at build), built once.
function session_mt:_base()
  local b = self.base_tools
  if not b then
    b = direct_tools(self.def, self.parent_tools)
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

function session_mt:_resume(path)
  local meta, messages, info = transcript().load(path)
  if not meta then return nil, messages end
  local sys
  for _, m in ipairs(messages) do
    if m.role == "system" and not sys then
      sys = m.content
    elseif m.role ~= "system" and m.type == nil then
      self.messages[#self.messages + 1] = m
    end
  end
  if sys then
    -- The resumed session keeps the prompt it froze, byte for byte.
    self.system = sys
    self.prompt_version = meta.prompt_version
  end
  self.resumed = { torn = info.torn, messages = #self.messages }
  local w, err = transcript().open(path, self:_meta(), info)
  if not w then return nil, err end
  self.writer = w
  return true
end

-- ------------------------------------------------------------ the turn --

local function record(self, ...)
  if self.writer then
    local ok, err = self.writer:append(...)
    if not ok then io.stderr:write("tide: transcript write failed: ", tostring(err), "\n") end
  end
end

--- Refreshes the delegation surface against `snapshot` (a tool-surface
--- change: the frozen system prompt stays as it is).
function session_mt:_set_snapshot(snapshot)
  self.snapshot = snapshot
  self.integration_hash = snapshot and snapshot.hash
  self.surface = self.custom_surface and build_surface(self.def, self:_base(), snapshot)
    or shared_surface(self, snapshot)
  self.counters.delegation_rebuilds = self.counters.delegation_rebuilds + 1
  if self.prefix then self.prefix = nil; self.prefix_reencode = true end
end

-- Cold path: fetch through the shared cache (concurrent cold sessions on one
-- key share one fetch); an unavailable source leaves the session with no
-- toolkits, which is reported in stats, not raised.
function session_mt:_ensure_integrations(trace)
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

local function render_data(self)
  local data = {
    agent = { id = self.def.id, display_name = self.def.display_name or self.def.id,
      when_to_use = self.def.when_to_use or "" },
    toolkits = {}, tools = {}, subagents = {}, has_toolkits = false,
  }
  local delegates = {}
  for _, t in ipairs(self.surface.tools) do
    data.tools[#data.tools + 1] = { name = t.name, description = t.description }
    if t.toolkit then delegates[t.toolkit] = t.name end
    if t.subagent then
      local sd = agents.get(t.subagent)
      data.subagents[#data.subagents + 1] = { id = t.subagent, tool = t.name,
        when_to_use = sd and sd.when_to_use or "" }
    end
  end
  local own
  if self.snapshot then
    for _, tk in ipairs(self.snapshot.toolkits) do
      if tk.connected then
        local entry = {
          slug = tk.slug, description = tk.description or "", delegate = delegates[tk.slug] or "",
          tools = {}, gated_tools = {}, has_gated = #(tk.gated_tools or {}) > 0,
        }
        for _, a in ipairs(tk.tools or {}) do
          entry.tools[#entry.tools + 1] = { name = a.name, description = a.description or "" }
        end
        for _, g in ipairs(tk.gated_tools or {}) do
          entry.gated_tools[#entry.gated_tools + 1] = { name = g.name, description = g.description or "",
            reason = g.reason or "not available" }
        end
        data.toolkits[#data.toolkits + 1] = entry
        if tk.slug == self.toolkit then own = entry end
      end
    end
  end
  data.has_toolkits = #data.toolkits > 0
  data.toolkit = own
  return data
end

-- Renders and freezes the system prompt (turn 1 only). Sessions sharing a
-- surface share the rendered text too.
function session_mt:_freeze(trace)
  local t0 = hrtime()
  local surface = self.surface
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
  local cached = surface[key]
  if cached and current ~= "nil" and cached.version_key == current then
    text, version = cached.text, cached.version
  else
    local data = render_data(self)
    text, version = prompts.render(self.def.prompt, data)
    if not text then return nil, version end
    if self.parent then
      local contract, cerr = prompts.render("subagent_contract", data)
      if not contract then return nil, cerr end
      -- appended once: a prompt that already ends with the contract keeps it
      if text:sub(-#contract) ~= contract then text = text .. "\n\n" .. contract end
    end
    surface[key] = { text = text, version = version, version_key = current }
  end
  self.system = text
  self.prompt_version = version
  record(self, { role = "system", content = text, prompt_version = version })
  trace[#trace + 1] = { step = "prompt_frozen", ms = ms_since(t0), bytes = #text }
  return true
end

-- The encoded prefix: shared by sessions with the same surface, provider and
-- system text.
function session_mt:_prefix()
  local p = self.prefix
  if p then return p end
  local surface, provider = self.surface, self.provider
  local by_provider = surface.prefixes[provider]
  if not by_provider then
    by_provider = {}
    surface.prefixes[provider] = by_provider
  end
  p = by_provider[self.system]
  if not p then
    p = provider:encode_prefix(self.system, surface.specs)
    by_provider[self.system] = p
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

-- Appends the encoding of messages[n] to the wire (the non-empty
-- encodings, in order, comma-joined: what the request body carries).
local function add_wire(self, n, enc)
  self.counters.prompt_bytes_encoded = self.counters.prompt_bytes_encoded + #enc
  if enc ~= "" then self.wire:add(enc) end
  self.nencoded = n
end

-- The result table of a call whose task returned v: tool_worker's table,
-- or the text of a plain result.
local function result_of(call, v)
  if type(v) == "string" then return { id = call.id, name = call.name, content = v, is_error = false } end
  return v
end

-- Messages appended after self.messages and not yet put there: three slots
-- each in self.unmade. A C round (core/turn.c) keeps its two messages as
-- their parts (role, then content or false and the calls; or false and the
-- lone call's result, or the call and its plain result's text), so that a
-- session whose history nobody reads never builds those tables; a message
-- the session built itself while parts wait is kept whole ("made", msg).
-- They are put in self.messages, in order, when the history is read; the
-- slots are emptied in place (the turn's round table holds the same list).
local function make_unmade(self)
  local u = self.unmade
  local k = #u
  if k == 0 then return end
  local msgs = self.messages
  local n = #msgs
  for i = 1, k, 3 do
    n = n + 1
    local role = u[i]
    if role == "made" then
      msgs[n] = u[i + 1]
    elseif role == "assistant" then
      msgs[n] = { role = "assistant", content = u[i + 1] or nil, tool_calls = u[i + 2] }
    else -- a C round's tool message: its lone call's result, or the call and its text
      local call = u[i + 1]
      msgs[n] = { role = "tool", results = { call and result_of(call, u[i + 2]) or u[i + 2] } }
    end
  end
  for i = k, 1, -1 do u[i] = nil end
end

-- Messages the session built itself skip the provider's shape checks.
function session_mt:_push(msg)
  local u = self.unmade
  local k = #u
  local n = #self.messages + k // 3 + 1
  if self.nencoded < n - 1 then self:_encoded_history() end
  if k == 0 then
    self.messages[n] = msg
  else
    u[k + 1], u[k + 2], u[k + 3] = "made", msg, false
  end
  add_wire(self, n, self.provider:_encode(msg))
end

function session_mt:_encoded_history()
  -- Messages restored from a transcript are encoded (and checked) on first
  -- use, once.
  local msgs = self.messages
  for i = self.nencoded + 1, #msgs do
    add_wire(self, i, self.provider:encode_message(msgs[i]))
  end
  return self.wire
end

-- ----------------------------------------------------------------- tools --

local function cap(text, limit)
  if #text <= limit then return text end
  local cut = limit
  -- do not split a UTF-8 sequence
  while cut > 0 and (text:byte(cut + 1) or 0) & 0xC0 == 0x80 do cut = cut - 1 end
  return text:sub(1, cut) .. ("\n[truncated: %d bytes omitted]"):format(#text - cut)
end

local function to_text(v)
  if v == nil then return "" end
  if type(v) == "string" then return v end
  if type(v) == "table" then
    local ok, s = pcall(json.canonical, v)
    if ok then return s end
    return "(unencodable result: " .. tostring(s) .. ")"
  end
  return tostring(v)
end

local function error_text(err)
  if type(err) == "table" then
    if err.code and err.message then return err.code .. ": " .. err.message end
    return tostring(err)
  end
  -- drop the traceback that task errors carry
  return (tostring(err):gsub("\nstack traceback:.*$", ""))
end

-- The turn's event sink (on_event), if any: events are built only for it.
local function event_sink()
  return core.context("tide_on_event")
end

-- Checks a call against the surface; returns the tool and its decoded
-- arguments, or nil and the error text the model gets back.
local function prepare_call(self, call)
  local surface = self.surface
  local t = not call.malformed and surface.map[call.name]
  if t then
    local a = call.arguments
    local args, jerr = json.decode(a ~= "" and a or "{}")
    if type(args) == "table" then return t, args end
    return nil, ("Error: the arguments for '%s' are not a JSON object (%s)"):format(
      call.name, jerr and jerr.message or type(args))
  end
  if call.malformed then
    return nil, ("Error: could not parse the tool call (%s)"):format(call.malformed)
  end
  local gated
  if self.snapshot then
    for _, tk in ipairs(self.snapshot.toolkits) do
      for _, g in ipairs(tk.gated_tools or {}) do
        if g.name == call.name then gated = g end
      end
    end
  end
  if gated then
    return nil, ("Error: tool '%s' is gated (%s) and cannot be called. Available tools: %s"):format(
      call.name, gated.reason or "hidden", tool_list_names(surface.tools))
  end
  return nil, ("Error: tool '%s' is not available to this agent. Available tools: %s"):format(
    call.name, tool_list_names(surface.tools))
end

local function passes_through(e)
  return type(e) == "table" and (e.code == "BudgetExhausted" or e.code == "Cancelled")
end

-- The body of one tool call's task: runs the handler, turns whatever it
-- returns or raises into result text, caps it and reports the end.
-- `sink` is the turn's event sink and `depth` the turn's spawn depth (a
-- tool task's own, as it was spawned from the turn's task).
local function tool_worker(self, t, args, call, opts, t0, sink, depth)
  local ctx = not t.args_only and { session = self, call_id = call.id, name = call.name, depth = depth } or nil
  local ok, v = pcall(t.handler, args, ctx)
  local text, is_error = v, false
  local tv = type(v)
  if not ok then
    if passes_through(v) then error(v, 0) end
    text, is_error = "Error: " .. error_text(v), true
  elseif tv == "string" then -- the usual answer: as it is
  elseif tv == "table" and v.is_error ~= nil and v.content ~= nil then
    text, is_error = to_text(v.content), v.is_error and true or false
  else
    text = to_text(v)
  end
  local limit = self.result_cap
  local content = #text <= limit and text or cap(text, limit)
  local on_end = opts.on_tool_end
  -- Nobody to hear of it: a plain result is its text alone, and whoever
  -- takes it makes the table when it needs one (result_of; core/turn.c
  -- keeps the text as the history's part). A table per tool call spared.
  if not (on_end or sink or is_error) then return content end
  local r = { id = call.id, name = call.name, content = content, is_error = is_error }
  if on_end or sink then
    local ms = ms_since(t0)
    if on_end then on_end(call, r, ms) end
    if sink then
      sink { type = "tool_end", name = call.name, id = call.id, is_error = is_error, ms = ms,
        depth = depth, agent = self.agent_path }
    end
  end
  return r
end

-- Waits for the task of one call (started at t0, limited to limit_ms):
-- its result, and the error that stops the turn, if any. A call past its
-- timeout is cancelled and gets an error result.
local function join_call(self, call, task, t0, limit_ms, opts, sink, depth)
  local r, err
  if task:status() == "done" then -- a call run at once that never waited
    r, err = task:join()
  else
    local left = (t0 + limit_ms * 1000000 - hrtime()) // 1000000
    r, err = task:join(left > 0 and math.tointeger(left) or 0)
  end
  if r then return result_of(call, r) end
  if type(err) == "table" and err.code == "Timeout" and task:status() ~= "done" and task:status() ~= "failed" then
    task:cancel()
    r = { id = call.id, name = call.name, is_error = true,
      content = ("Error: tool '%s' timed out after %d ms"):format(call.name, limit_ms) }
    if opts.on_tool_end then opts.on_tool_end(call, r, ms_since(t0)) end
    if sink then
      sink { type = "tool_end", name = call.name, id = call.id, is_error = true,
        ms = ms_since(t0), depth = depth, agent = self.agent_path }
    end
    return r
  end
  r = { id = call.id, name = call.name, content = "Error: " .. error_text(err), is_error = true }
  if passes_through(err) then return r, err end
  return r
end

-- Starts one call: reports its start, checks it against the surface and
-- spawns its task with `spawner`. Returns the task, its start (hrtime) and
-- timeout (ms); or nil and the error result of a call that cannot run.
local function start_call(self, call, opts, turn_ctx, spawner)
  local t0 = hrtime()
  local sink, depth = turn_ctx.on_event, turn_ctx.depth
  if opts.on_tool_start then opts.on_tool_start(call) end
  if sink then sink { type = "tool_start", name = call.name, arguments = call.arguments, id = call.id,
    depth = depth, agent = self.agent_path } end
  local t, args = prepare_call(self, call)
  if not t then
    local r = { id = call.id, name = call.name, content = args, is_error = true }
    if opts.on_tool_end then opts.on_tool_end(call, r, 0) end
    if sink then
      sink { type = "tool_end", name = call.name, id = call.id, is_error = true, ms = 0,
        depth = depth, agent = self.agent_path }
    end
    return nil, r
  end
  if turn_ctx.budget then turn_ctx.budget:spend("tool_calls", 1, self.agent_path) end
  local counters = self.counters
  counters.tool_calls = counters.tool_calls + 1
  local task = spawner(tool_worker, self, t, args, call, opts, t0, sink, depth)
  local live = turn_ctx.tasks
  live[#live + 1] = task
  return task, t0, t.timeout_ms or self.tool_timeout_ms
end

-- Joins the started calls (running[3i-2 .. 3i]: call i's task, start and
-- timeout; results[i] already there for a call that could not start), in
-- call order, and empties the turn's list of live tasks.
local function join_all(self, calls, running, results, opts, turn_ctx)
  local stop_err
  for i = 1, #calls do
    local task = running[3 * i - 2]
    if task then
      local r, err = join_call(self, calls[i], task, running[3 * i - 1], running[3 * i], opts,
        turn_ctx.on_event, turn_ctx.depth)
      results[i] = r
      stop_err = stop_err or err
    end
  end
  local live = turn_ctx.tasks
  for i = #live, 1, -1 do live[i] = nil end
  return results, stop_err
end

-- Runs the calls of one response concurrently, one task each, and returns
-- their results in call order. BudgetExhausted and the turn's own
-- cancellation stop the turn.
local function run_tools(self, calls, opts, turn_ctx)
  local n = #calls
  local live = turn_ctx.tasks
  if n == 1 then
    -- A single call's task runs at once, until it first waits: a tool that
    -- never does is done before the join, which then costs no pass of the
    -- loop.
    local call = calls[1]
    local task, t0, limit = start_call(self, call, opts, turn_ctx, spawn_now)
    if not task then return { t0 } end -- (t0: the result of a call that could not start)
    local r, err = join_call(self, call, task, t0, limit, opts, turn_ctx.on_event, turn_ctx.depth)
    live[1] = nil
    return { r }, err
  end
  -- Several calls are all started before any runs: running[3i-2 .. 3i] is
  -- call i's task, its start and its timeout.
  local results, running = {}, {}
  for i = 1, n do
    local task, t0, limit = start_call(self, calls[i], opts, turn_ctx, spawn)
    if task then
      running[3 * i - 2], running[3 * i - 1], running[3 * i] = task, t0, limit
    else
      results[i] = t0 -- the result of a call that could not start
    end
  end
  return join_all(self, calls, running, results, opts, turn_ctx)
end

-- Per-turn context goes on the user message, never in the frozen prompt.
function session_mt:_user_content(text, opts)
  local parts = {}
  if opts.context then parts[#parts + 1] = opts.context end
  local dt = self.def.datetime
  if dt == nil then dt = self.parent ~= nil end
  if dt then parts[#parts + 1] = "Current date and time: " .. os.date("!%Y-%m-%d %H:%M UTC") end
  if #parts == 0 then return text end
  parts[#parts + 1] = text
  return table.concat(parts, "\n\n")
end

local NO_OPTS = setmetatable({}, { __newindex = function() error("NO_OPTS is read-only", 2) end })

function session_mt:_turn_body(text, opts, turn_ctx)
  local stats = self.counters
  local trace = {}
  local t0 = hrtime()
  stats.turns = stats.turns + 1
  local depth = turn_ctx.depth
  if depth > stats.spawn_depth_max then stats.spawn_depth_max = depth end

  -- 1. integrations: cold sessions fetch; warm ones only peek for a change.
  if not self.initialized then
    self:_ensure_integrations(trace)
  elseif self.src and self.system then
    local snap = integrations_cache().peek(self.src)
    if snap and snap.hash ~= self.integration_hash then
      local r0 = hrtime()
      self:_set_snapshot(snap)
      trace[#trace + 1] = { step = "delegation_refresh", ms = ms_since(r0), hash = snap.hash }
    end
  end
  -- 2. the frozen prompt, once
  if not self.system then
    local ok, err = self:_freeze(trace)
    if not ok then return nil, err end
  end
  local prefix = self:_prefix()
  -- 3. the user message
  local user = { role = "user", content = self:_user_content(text, opts) }
  self:_push(user)
  record(self, user)
  if stats.turns == 1 then
    trace[#trace + 1] = { step = "first_request_ready", ms = ms_since(t0) }
    self.trace = trace
  end

  local provider = self.provider
  local budget = turn_ctx.budget
  local on_delta = opts.on_delta
  -- Text deltas go to on_delta and the event sink; without either, no
  -- closure (and the provider skips the work of handing text over).
  local complete_opts = NO_OPTS
  if on_delta or turn_ctx.on_event then
    local depth_now = core.depth()
    complete_opts = { on_delta = function(d)
      if on_delta then on_delta(d) end
      if turn_ctx.on_event then
        turn_ctx.on_event { type = "delta", text = d, depth = depth_now, agent = self.agent_path }
      end
    end }
  end
  -- A round of calls is C's (core.tool_round, core/turn.c) when nobody is to
  -- hear of it (no tool callbacks, no event sink, no budget) and the
  -- provider's history is one C encodes; it declines any round it cannot
  -- take whole, and the code below does that one.
  local round
  if provider._c_round and not budget and not turn_ctx.on_event and not opts.on_tool_start
    and not opts.on_tool_end then
    round = { self, self.messages, self.wire, stats, tool_worker, opts, depth, turn_ctx, json._decode_floats,
              record, self.tool_timeout_ms, self.unmade }
  end
  -- Every reply of the turn parsed in C is written into this one table
  -- (nothing keeps a reply past its iteration: its calls list and text
  -- are what history keeps, and they are new each time). It is made with
  -- every field a reply has, so that it never grows one at a time.
  local into = { text = false, tool_calls = false, usage = false, stop = false, stop_raw = false,
                 ttfb_ms = false, attempts = false }
  for iteration = 1, self.max_iterations do
    if budget then budget:spend("provider_calls", 1, self.agent_path) end
    stats.iterations = stats.iterations + 1
    -- (encoded already, unless messages came from a transcript)
    local wire = self.nencoded < #self.messages and self:_encoded_history() or self.wire
    stats.provider_calls = stats.provider_calls + 1
    -- The body is the prefix and the wire, joined in C into the
    -- request itself (core.openai_post, core.http_post).
    local resp, err = provider:_complete(prefix, complete_opts, wire, into)
    if not resp then return nil, err end
    local u = resp.usage
    local input, output, cached = u and u.input or 0, u and u.output or 0, u and u.cached or 0
    local tokens = stats.tokens
    tokens.input = tokens.input + input
    tokens.output = tokens.output + output
    tokens.cached = tokens.cached + cached
    if budget then budget:tokens(input, output, self.agent_path) end
    stats.ttfb_ms = resp.ttfb_ms
    stats.first_ttfb_ms = stats.first_ttfb_ms or resp.ttfb_ms

    local calls = resp.tool_calls
    local textual = false
    if (not calls or #calls == 0) and self.def.text_tools ~= false and resp.text then
      local parsed = tool_protocol.parse(resp.text)
      if #parsed > 0 then
        calls, textual = parsed, true
        for i, c in ipairs(calls) do
          c.id = c.id or ("parsed-" .. iteration .. "-" .. i)
          if c.id == "" then c.id = ("call_%d_%d"):format(iteration, i) end
        end
      end
    end
    if not calls or #calls == 0 then
      local msg = { role = "assistant", content = resp.text or "" }
      self:_push(msg)
      record(self, msg)
      if budget and budget.exhausted then return nil, budget.exhausted end
      return resp.text or ""
    end
    local done, v
    if round and not textual then done, v = tool_round(round, calls, resp.text) end
    if done == "joins" or done == "results" then
      -- C appended the assistant message and ran the calls (v: the tasks to
      -- join, or their results); what is left is done here.
      local results, stop_err = v, nil
      if done == "joins" then results, stop_err = join_all(self, calls, v, {}, opts, turn_ctx) end
      turn_ctx.pending = nil
      self:_push_results(results, false)
      if stop_err then return nil, stop_err end
    elseif not done then
      local amsg
      if textual then
        amsg = { role = "assistant", content = resp.text }
      else
        -- The finished calls are the response's own tables (id, name,
        -- arguments): history keeps them as they are.
        amsg = { role = "assistant", content = resp.text, tool_calls = calls }
      end
      self:_push(amsg)
      record(self, amsg)
      if budget and budget.exhausted then
        -- Spent by this very response: answer the calls so the history stays
        -- valid, then stop.
        local results = {}
        for i, c in ipairs(calls) do
          results[i] = { id = c.id, name = c.name, content = "Error: budget exhausted", is_error = true }
        end
        self:_push_results(results, textual)
        return nil, budget.exhausted
      end
      turn_ctx.pending = calls
      turn_ctx.textual = textual
      local results, stop_err = run_tools(self, calls, opts, turn_ctx)
      turn_ctx.pending = nil
      self:_push_results(results, textual)
      if stop_err then return nil, stop_err end
    end
  end
  return fail("MaxIterationsExceeded",
    ("exceeded maximum tool iterations (%d)"):format(self.max_iterations),
    { max_iterations = self.max_iterations })
end

function session_mt:_push_results(results, textual)
  local msg
  if textual then
    local parts = {}
    for i, r in ipairs(results) do
      parts[i] = ('<tool_result name="%s"%s>\n%s\n</tool_result>'):format(
        r.name, r.is_error and ' error="true"' or "", r.content)
    end
    msg = { role = "user", content = table.concat(parts, "\n") }
  else
    msg = { role = "tool", results = results }
  end
  self:_push(msg)
  record(self, msg)
end

local function check_turn_args(text, opts)
  if type(text) ~= "string" then
    error(("bad argument #1 to 'turn' (string expected, got %s)"):format(type(text)), 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(("bad argument #2 to 'turn' (table expected, got %s)"):format(type(opts)), 3)
  end
  opts = opts or {}
  for _, f in ipairs(CALLBACK_OPTS) do
    if opts[f] ~= nil and type(opts[f]) ~= "function" then
      error(("bad argument #2 to 'turn' (field '%s' must be a function)"):format(f), 3)
    end
  end
  if opts.context ~= nil and type(opts.context) ~= "string" then
    error("bad argument #2 to 'turn' (field 'context' must be a string)", 3)
  end
  return opts
end

-- The turn runs in the caller's own task (no task of its own: one coroutine
-- fewer per session in flight). Its task-local values (event sink, budget)
-- are set for the turn, seen by the tool and sub-agent tasks it spawns, and
-- restored afterwards.
local function do_turn(self, text, opts)
  if self.turn_ctx then return fail("SessionBusy", "a turn is already in progress on this session") end
  local ctx = core.context()
  local saved_event, saved_budget = rawget(ctx, "tide_on_event"), rawget(ctx, "tide_budget")
  local inherited_budget = ctx.tide_budget
  local budget = inherited_budget
  if not budget and self.budget_limits then budget = tree_budget().new(self.budget_limits) end
  -- The turn in progress: `caller` is the task it runs in (what cancel
  -- interrupts), `tasks` its tool and sub-agent tasks, `depth` its spawn depth.
  local turn_ctx = { budget = budget, on_event = opts.on_event or ctx.tide_on_event, tasks = {},
                     caller = core.current(), depth = core.depth(), pending = false, textual = false }
  ctx.tide_on_event = turn_ctx.on_event
  ctx.tide_budget = budget
  self.turn_ctx = turn_ctx
  local watchdog
  if budget and not inherited_budget and budget.limits.wall_ms then
    watchdog = core.spawn(function()
      core.sleep(budget.limits.wall_ms)
      budget:exhausted_error("wall_ms")
      self:cancel()
    end)
  end
  local ok, reply, err = pcall(self._turn_body, self, text, opts, turn_ctx)
  if not ok then reply, err = nil, reply end
  if watchdog then watchdog:cancel() end
  for _, t in ipairs(turn_ctx.tasks) do t:cancel() end
  rawset(ctx, "tide_on_event", saved_event)
  rawset(ctx, "tide_budget", saved_budget)
  self.turn_ctx = nil
  if self.cancelling then
    self.cancelling = nil
    core.clear_interrupt() -- an interrupt that arrived after the last wait
  end
  if budget and not inherited_budget then self.last_budget = budget end
  if reply == nil and err ~= nil then
    if type(err) ~= "table" then
      err = core.error("TurnFailed", error_text(err), { detail = err })
    end
    if err.code == "Cancelled" or (budget and budget.exhausted and err.code ~= "BudgetExhausted") then
      self:_repair(turn_ctx)
      if budget and budget.exhausted then err = budget.exhausted end
    end
    return nil, err
  end
  return reply
end

-- After a cancellation mid-tools, answer the pending calls so that the
-- history (and transcript) stays a valid conversation.
function session_mt:_repair(turn_ctx)
  local calls = turn_ctx.pending
  if not calls then return end
  local results = {}
  for i, c in ipairs(calls) do
    results[i] = { id = c.id, name = c.name, content = "Error: cancelled", is_error = true }
  end
  self:_push_results(results, turn_ctx.textual)
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
  return require("tide")._blocking(do_turn, self, text, opts)
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
  s.tokens = { input = self.counters.tokens.input, output = self.counters.tokens.output, cached = self.counters.tokens.cached }
  s.trace = self.trace
  s.integration_hash = self.integration_hash
  s.integrations_error = self.integrations_error and tostring(self.integrations_error) or nil
  s.initialized = self.initialized
  s.prompt_version = self.prompt_version
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
function session_mt:system_prompt() return self.system end

--- The conversation so far (neutral messages, after the system prompt):
--- the same list at every call, brought up to date by the call.
---@return table[]
function session_mt:history()
  make_unmade(self)
  return self.messages
end

--- Closes the transcript.
function session_mt:close()
  if self.writer then self.writer:close() end
  self.writer = nil
end
session_mt.__close = session_mt.close

M._error_text = error_text
--- Sends an event to the turn's sink, if there is one.
function M._emit(ev)
  local sink = event_sink()
  if sink then sink(ev) end
end

return M
