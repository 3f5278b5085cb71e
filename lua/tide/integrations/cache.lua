--- tide.integrations.cache: the shared integration cache (over `core.cache_*`).
---
--- One cache per Lua state, keyed by a source's identity. A successful fetch
--- is cached for the TTL (60 s by default), an empty list included; a failure
--- is never cached. Concurrent misses on one key share a single fetch: the
--- first caller fetches, the others wait for its result. The snapshot handed
--- out is one table shared by every caller: treat it as read-only.
---@class tide.integrations.cache
local cache = {}

local core = require "tide.core"
local json = require "tide.json"

---@class tide.integrations.tool
---@field name string
---@field description string
---@field parameters table JSON schema of the arguments
---@field scope? "read"|"write"|"admin"

---@class tide.integrations.gated_tool
---@field name string
---@field description string
---@field reason string why it is not callable
---@field scope? "read"|"write"|"admin"

---@class tide.integrations.toolkit
---@field slug string
---@field name? string display name
---@field description string
---@field connected boolean
---@field tools tide.integrations.tool[]
---@field gated_tools tide.integrations.gated_tool[]

---@class tide.integrations.snapshot
---@field key string the source identity it was fetched for
---@field hash string 16 hex digits over the canonical JSON of `toolkits`
---@field toolkits tide.integrations.toolkit[] sorted by slug
---@field fetched_at integer loop time in ms (`core.now()`) of the fetch

local function blocking(fn, ...)
  return require("tide")._blocking(fn, ...)
end

local function unavailable(message, fields)
  return core.error("IntegrationsUnavailable", message, fields)
end

-- ------------------------------------------------------------ normalising --

local function deep_copy(v, depth)
  if type(v) ~= "table" then return v end
  if depth > 100 then error("nested too deeply", 0) end
  local out = {}
  for k, x in pairs(v) do out[k] = deep_copy(x, depth + 1) end
  return setmetatable(out, getmetatable(v) == json.array_mt and json.array_mt or nil)
end

local function opt_string(v, what)
  if v == nil or v == json.null then return "" end
  if type(v) ~= "string" then error(what .. " must be a string", 0) end
  return v
end

local function scope_of(v, what)
  if v == nil then return nil end
  if v ~= "read" and v ~= "write" and v ~= "admin" then
    error(what .. " must be \"read\", \"write\" or \"admin\"", 0)
  end
  return v
end

local function list_of(v, what)
  if v == nil or v == json.null then return {} end
  if type(v) ~= "table" then error(what .. " must be an array", 0) end
  local n = #v
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      error(what .. " must be an array", 0)
    end
  end
  return v
end

local function norm_tool(t, where)
  if type(t) ~= "table" then error(where .. " must be a table", 0) end
  if type(t.name) ~= "string" or t.name == "" then
    error(where .. ".name must be a non-empty string", 0)
  end
  local params = t.parameters
  if params == nil or params == json.null then
    params = { type = "object", properties = {} }
  elseif type(params) ~= "table" then
    error(where .. ".parameters must be a table (a JSON schema)", 0)
  else
    params = deep_copy(params, 0)
  end
  return {
    name = t.name,
    description = opt_string(t.description, where .. ".description"),
    parameters = params,
    scope = scope_of(t.scope, where .. ".scope"),
    -- what an `approval = "destructive"` rule asks about
    destructive = t.destructive == true or nil,
    -- an MCP tool's output schema, its structured results checked by it
    output_schema = type(t.output_schema) == "table" and deep_copy(t.output_schema, 0) or nil,
  }
end

local function norm_gated(t, where)
  if type(t) ~= "table" then error(where .. " must be a table", 0) end
  if type(t.name) ~= "string" or t.name == "" then
    error(where .. ".name must be a non-empty string", 0)
  end
  local reason = opt_string(t.reason, where .. ".reason")
  return {
    name = t.name,
    description = opt_string(t.description, where .. ".description"),
    reason = reason ~= "" and reason or "not available",
    scope = scope_of(t.scope, where .. ".scope"),
  }
end

local function norm_toolkit(tk, i)
  local where = ("toolkits[%d]"):format(i)
  if type(tk) ~= "table" then error(where .. " must be a table", 0) end
  if type(tk.slug) ~= "string" or tk.slug == "" then
    error(where .. ".slug must be a non-empty string", 0)
  end
  where = ("toolkit '%s'"):format(tk.slug)
  if tk.connected ~= nil and type(tk.connected) ~= "boolean" then
    error(where .. ": connected must be a boolean", 0)
  end
  if tk.name ~= nil and type(tk.name) ~= "string" then
    error(where .. ": name must be a string", 0)
  end
  local tools, gated = json.array(), json.array()
  for j, t in ipairs(list_of(tk.tools, where .. ": tools")) do
    tools[j] = norm_tool(t, ("%s: tools[%d]"):format(where, j))
  end
  for j, t in ipairs(list_of(tk.gated_tools, where .. ": gated_tools")) do
    gated[j] = norm_gated(t, ("%s: gated_tools[%d]"):format(where, j))
  end
  return {
    slug = tk.slug,
    name = tk.name,
    description = opt_string(tk.description, where .. ": description"),
    -- A toolkit a source lists without saying otherwise is usable.
    connected = tk.connected ~= false,
    tools = tools,
    gated_tools = gated,
  }
end

local function normalize(toolkits)
  if type(toolkits) ~= "table" then
    error("toolkits must be an array, got " .. type(toolkits), 0)
  end
  local out, seen = json.array(), {}
  for i, tk in ipairs(list_of(toolkits, "toolkits")) do
    local n = norm_toolkit(tk, i)
    if seen[n.slug] then error("duplicate toolkit slug '" .. n.slug .. "'", 0) end
    seen[n.slug] = true
    out[i] = n
  end
  table.sort(out, function(a, b) return a.slug < b.slug end)
  return out
end

--- Validates and normalises a toolkit list: a new array sorted by slug, where
--- every toolkit has `slug`, `description`, `connected`, `tools` and
--- `gated_tools` (arrays, possibly empty), and every tool has `name`,
--- `description` and `parameters`. The input is not modified.
---@param toolkits table
---@return tide.integrations.toolkit[]|nil toolkits
---@return string|nil err what is wrong
function cache.normalize(toolkits)
  local ok, res = pcall(normalize, toolkits)
  if not ok then return nil, tostring(res) end
  return res
end

--- The hash of a normalised toolkit list (what `snapshot.hash` holds).
---@param toolkits tide.integrations.toolkit[]
---@return string
function cache.hash(toolkits)
  return core.cache_hash(json.canonical(toolkits))
end

-- ---------------------------------------------------------------- sources --

local function check_source(src, fname)
  if type(src) ~= "table" or type(src.identity) ~= "function" or type(src.fetch) ~= "function" then
    error(("bad argument #1 to '%s' (integration source expected: a table with "
      .. "identity() and fetch(), got %s)"):format(fname, type(src)), 3)
  end
  local key = src:identity()
  if type(key) ~= "string" or key == "" then
    error(("bad argument #1 to '%s' (the source's identity() must return a "
      .. "non-empty string)"):format(fname), 3)
  end
  return key
end

local function key_of(v, fname)
  if type(v) == "string" and v ~= "" then return v end
  return check_source(v, fname)
end

--- The cache key of a source: its identity.
---@param src tide.integrations.source
---@return string
function cache.key(src) return check_source(src, "key") end

-- When the fetching task is unwound (cancelled, or an error escaped), this
-- completes the fetch with a failure, so that waiters never hang.
local guard_mt = {
  __close = function(g, err)
    if g.done then return end
    g.done = true
    core.cache_fail(g.key, unavailable(
      ("the fetch for '%s' was abandoned"):format(g.key), { key = g.key, cause = err }))
  end,
}

local function is_cancel(err)
  return type(err) == "table" and err.code == "Cancelled"
end

-- Fetches from the source and makes the snapshot: snapshot, nil, and the
-- canonical JSON of its toolkits (what its hash is over, and what a
-- cluster shares), or nil, err. Never raises but to unwind a cancellation.
local function fetch_snapshot(src, key)
  local ok, toolkits, ferr = pcall(src.fetch, src)
  if not ok then
    local err = toolkits
    if is_cancel(err) then error(err, 0) end -- the guard fails the fetch
    ferr = err
    toolkits = nil
  end
  if toolkits == nil then
    return nil, unavailable(("fetching integrations for '%s' failed: %s"):format(
      key, tostring(ferr or "no result")), { key = key, cause = ferr })
  end
  local norm, why = cache.normalize(toolkits)
  if norm then
    local encoded, text = pcall(json.canonical, norm) -- a value JSON cannot hold raises
    if encoded then
      return { key = key, hash = core.cache_hash(text), toolkits = norm, fetched_at = core.now() }, nil, text
    end
    why = tostring(text)
  end
  return nil, unavailable(("the source for '%s' returned invalid toolkits: %s"):format(key, why),
    { key = key })
end

-- The cluster's tier of the cache (tide.integrations.cluster_cache), when
-- this process joined a cluster; nil otherwise, and then no Redis code is
-- ever loaded.
local function cluster_tier()
  local cluster = package.loaded["tide.cluster"]
  local c = cluster and cluster.current()
  if not c then return nil end
  return require("tide.integrations.cluster_cache").of(c)
end

local function get(src, key)
  local status, v = core.cache_lookup(key)
  if status == "hit" then return v end
  if status == "error" then return nil, v end
  -- A miss: this task fetches for everyone who asks meanwhile.
  local guard <close> = setmetatable({ key = key, done = false }, guard_mt)
  local snapshot, err, ttl
  local tier = cluster_tier()
  if tier then
    -- Behind the process's cache, the cluster's: one fetch per key across
    -- every process; ttl is what is left of the shared entry's.
    snapshot, err, ttl = tier:resolve(key, function() return fetch_snapshot(src, key) end)
  else
    snapshot, err = fetch_snapshot(src, key)
  end
  guard.done = true
  if snapshot then
    core.cache_store(key, snapshot, ttl)
    return snapshot
  end
  core.cache_fail(key, err)
  return nil, err
end

-- Several sources as one (tide.integrations.several): the parts' snapshots
-- combined, one table per combination of part snapshots, so that sessions
-- on the same parts share it (and their surfaces) as for one source.
local combined = setmetatable({}, { __mode = "v" })

local function combine(src, snaps)
  local hashes = {}
  for i, s in ipairs(snaps) do hashes[i] = s.hash end
  local hkey = src.id .. "#" .. table.concat(hashes, ",")
  local c = combined[hkey]
  if c then return c end
  local toolkits, seen = {}, {}
  for i, s in ipairs(snaps) do
    for _, tk in ipairs(s.toolkits) do
      if seen[tk.slug] then
        io.stderr:write(("tide: integrations: toolkit '%s' of %s is also in %s; the first is kept\n")
          :format(tk.slug, src.parts[i]:identity(), seen[tk.slug]))
      else
        seen[tk.slug] = src.parts[i]:identity()
        toolkits[#toolkits + 1] = tk
      end
    end
  end
  table.sort(toolkits, function(a, b) return a.slug < b.slug end)
  local fetched = math.huge
  for _, s in ipairs(snaps) do fetched = math.min(fetched, s.fetched_at or 0) end
  c = { key = src.id, hash = core.cache_hash(table.concat(hashes, ",")), toolkits = toolkits, fetched_at = fetched,
        parts = snaps }
  combined[hkey] = c
  return c
end

local function get_several(src)
  local snaps, errs = {}, {}
  for _, part in ipairs(src.parts) do
    local s, err = get(part, check_source(part, "get"))
    if s then snaps[#snaps + 1] = s else errs[#errs + 1] = err end
  end
  -- The parts that answered are authoritative for their toolkits; only when
  -- none did is the whole unavailable.
  if #snaps == 0 then return nil, errs[1] end
  return combine(src, snaps)
end

--- The snapshot for `src`: from the cache when fresh, otherwise fetched
--- (once, however many tasks ask at the same time). Inside a task it waits;
--- outside any task it drives the loop until done.
--- Failure is `nil, err` with `err.code == "IntegrationsUnavailable"` and
--- `err.cause` the source's error; it is never cached. In a cluster
--- (`tide.cluster`), a miss here is looked up in Redis before the source
--- is asked, and one process fetches for all of them (see the README).
---@param src tide.integrations.source
---@return tide.integrations.snapshot|nil snapshot
---@return table|nil err
function cache.get(src)
  if type(src) == "table" and src.kind == "several" then return blocking(get_several, src) end
  local key = check_source(src, "get")
  return blocking(get, src, key)
end

--- The cached snapshot for `src` (a source or an identity string) when
--- fresh, else nil. Never fetches and never waits.
---@param src tide.integrations.source|string
---@return tide.integrations.snapshot|nil
function cache.peek(src)
  if type(src) == "table" and src.kind == "several" then
    local snaps = {}
    for i, part in ipairs(src.parts) do
      snaps[i] = core.cache_peek(key_of(part, "peek"))
      if not snaps[i] then return nil end
    end
    return combine(src, snaps)
  end
  return core.cache_peek(key_of(src, "peek"))
end

--- Drops the snapshot of `src` (a source or an identity string), e.g. after a
--- connect or disconnect. A fetch in flight still answers its waiters, but
--- its result is not kept. Returns true if there was anything to drop in
--- this process. In a cluster the shared entry goes too, and every other
--- process drops its own copy (the Redis part runs in a task of its own;
--- this process's next lookup of the key waits for it).
---@param src tide.integrations.source|string
---@return boolean
function cache.invalidate(src)
  if type(src) == "table" and src.kind == "several" then
    local any = false
    for _, part in ipairs(src.parts) do any = cache.invalidate(part) or any end
    return any
  end
  local key = key_of(src, "invalidate")
  local had = core.cache_invalidate(key)
  local tier = cluster_tier()
  if tier then tier:invalidate(key) end
  return had
end

--- Drops every snapshot. Returns how many keys held one (or a fetch) in
--- this process. In a cluster, every shared entry and every other
--- process's copies go too.
---@return integer
function cache.invalidate_all()
  local n = core.cache_invalidate_all()
  local tier = cluster_tier()
  if tier then tier:invalidate(nil) end
  return n
end

--- Gets, or sets then gets, the TTL in ms applied to snapshots stored from
--- now on (default 60000).
---@param ms? integer
---@return integer
function cache.ttl_ms(ms)
  if ms ~= nil and (math.type(ms) ~= "integer" or ms < 0) then
    error("bad argument #1 to 'ttl_ms' (non-negative integer expected)", 2)
  end
  return core.cache_ttl_ms(ms)
end

--- Counters: `{ hits, misses, fetches, waits, failures, entries, in_flight,
--- waiting }`. `misses = fetches + waits`; `entries` counts keys holding a
--- snapshot; `in_flight` fetches running now; `waiting` tasks waiting on them.
--- In a cluster `fetches` counts this process's misses (each answered by
--- Redis or by the source) and `cluster` holds the cluster tier's counters
--- (see tide.integrations.cluster_cache).
---@return table
function cache.stats()
  local s = core.cache_stats()
  local tier = cluster_tier()
  if tier then s.cluster = tier:stats() end
  return s
end

--- Zeroes the counters (for specs and benchmarks).
function cache.reset_stats()
  local tier = cluster_tier()
  if tier then tier:reset_stats() end
  return core.cache_reset_stats()
end

--- Settings of the cluster tier (see tide.integrations.cluster_cache):
--- `lease_ms`, `wait_ms`, `redis_timeout_ms`, `pause_ms`. Sets those given
--- (for every cluster of this process) and returns the settings in force.
---@param opts? { lease_ms?: integer, wait_ms?: integer, redis_timeout_ms?: integer, pause_ms?: integer }
---@return table
function cache.cluster(opts)
  return require("tide.integrations.cluster_cache").settings(opts, 2)
end

return cache
