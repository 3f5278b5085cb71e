--- tide.integrations.composio: connected toolkits from the Composio v3 API.
---
--- A fetch asks only about what the user connected, never the whole
--- toolkit catalogue (15-21 pages for every cold fetch would spend an
--- organisation's request quota on toolkits nobody can call):
---   1. `GET /api/v3/connected_accounts?user_ids=<user>&statuses=ACTIVE`
---      (`toolkit_slugs` too when `toolkits` limits them), followed through
---      its pages;
---   2. `GET /api/v3/toolkits/{slug}` for each connected toolkit: its name
---      and `meta.description`, which the prompts show;
---   3. ONE batched `GET /api/v3/tools?toolkit_slug=<a,b,...>` for every
---      connected toolkit at once, with `important=true` (the curated subset
---      the official SDKs ask for; `important = false` lists all),
---      `include_deprecated=false` and `toolkit_versions=latest`.
--- Listings follow `cursor` in / `next_cursor` out until it is null, and are
--- retried on 429 and 5xx (Retry-After honoured, a few attempts with
--- backoff), as the official SDKs' generated clients do. Execute is never
--- retried: an action may have run although its answer was lost.
--- Every request carries the project key in the `x-api-key` header.
---
--- Sources:
---   * Composio's OpenAPI document (ComposioHQ/composio docs/public/openapi.json):
---     server https://backend.composio.dev, paths under /api/v3, the error
---     shape `{ error = { message, code, status, request_id, suggested_fix,
---     errors } }`, tool items with `is_deprecated` and
---     `deprecated.is_deprecated`, `include_deprecated` defaulting to true;
---   * ts/packages/core/src/utils/constants.ts: DEFAULT_BASE_URL is the host
---     (`https://backend.composio.dev`), so $COMPOSIO_BASE_URL is a host too;
---   * ts/packages/core/src/models/Tools.ts: `toolkit_slug: toolkits.join(',')`,
---     `important` applied by default when toolkits are asked for, and
---     `connected_account_id` sent on execute;
---   * the Python SDK's generated client: 60 s timeout, 2 retries.
---
--- Each action is kept for toolkit SLUG only if its slug starts with
--- `SLUG_` (upper case, anchored, so `git` never claims `GITHUB_*`), then
--- classified read / write / admin (by Composio tags when they say, else by
--- the words of its name). Callable actions go to `tools`; the ones outside
--- the curated catalogue or above the allowed scopes go to `gated_tools` with
--- a `reason`, most relevant first (important ones, then read before write
--- before admin), so prompts that show only a few show the useful ones.
local core = require "tide.core"
local json = require "tide.json"
local redact = require "tide.redact"
local retry = require "tide.provider.retry"

local composio = {}

local DEFAULT_HOST = "https://backend.composio.dev"
local API_PATH = "/api/v3"
local MAX_PAGES = 100
-- The Python SDK's generated client waits 60 s and retries twice; the same
-- here, with the backoff of tide's providers.
local DEFAULT_TIMEOUT_MS = 60000
local DEFAULT_RETRY = { attempts = 3, base_ms = 500, max_ms = 8000, max_retry_after_ms = 60000 }

---@class tide.integrations.composio: tide.integrations.source
---@field kind "composio"
---@field base_url string the host, e.g. "https://backend.composio.dev"
---@field api_url string base_url .. "/api/v3"
---@field user_id string
---@field scopes {read: boolean, write: boolean, admin: boolean}
local Composio = {}
Composio.__index = Composio
Composio.__name = "tide.integrations.composio"

-- ---------------------------------------------------------- classification --

-- Words of an action name (after the toolkit prefix) that mark its scope.
-- Admin wins over write, write over read; a name with none of them reads.
local ADMIN_WORDS = {}
for w in ([[DELETE REMOVE DESTROY PURGE ERASE WIPE ADMIN ADMINISTER REVOKE TRANSFER
  BAN UNBAN KICK SUSPEND DEACTIVATE PERMISSION PERMISSIONS ROLE ROLES OWNER
  OWNERSHIP COLLABORATOR COLLABORATORS SECRET SECRETS]]):gmatch("%S+") do
  ADMIN_WORDS[w] = true
end
local WRITE_WORDS = {}
for w in ([[CREATE UPDATE SEND POST PUT PATCH EDIT ADD SET WRITE INSERT UPLOAD MOVE
  COPY RENAME MERGE REPLY FORWARD INVITE ASSIGN UNASSIGN CLOSE REOPEN STAR UNSTAR
  FOLLOW UNFOLLOW LOCK UNLOCK APPROVE REJECT SUBMIT EXECUTE RUN TRIGGER SCHEDULE
  MODIFY REPLACE UPSERT DRAFT PUBLISH COMMENT MARK ENABLE DISABLE ARCHIVE
  UNARCHIVE RESTORE SHARE SYNC IMPORT APPLY CANCEL DISMISS RESOLVE LABEL TAG
  PIN UNPIN REACT SAVE START STOP COMMIT PUSH]]):gmatch("%S+") do
  WRITE_WORDS[w] = true
end

-- Tags Composio (or a curated backend) may put on an action. The MCP-style
-- hints are the ones the v3 API publishes; plain scope names are accepted too.
local TAG_SCOPES = {
  readonlyhint = "read", read = "read", readonly = "read", ["read-only"] = "read",
  destructivehint = "admin", destructive = "admin", admin = "admin",
  write = "write",
}
local RANK = { read = 1, write = 2, admin = 3 }

--- The scope of an action: "read", "write" or "admin".
---@param name string the action slug, e.g. "GITHUB_DELETE_REPO"
---@param tags? string[] Composio tags
---@param prefix? string the toolkit prefix to ignore, e.g. "GITHUB_"
---@return "read"|"write"|"admin"
function composio.classify(name, tags, prefix)
  local best
  if type(tags) == "table" then
    for _, tag in ipairs(tags) do
      local s = type(tag) == "string" and TAG_SCOPES[tag:lower()]
      if s and (best == nil or RANK[s] > RANK[best]) then best = s end
    end
  end
  if best then return best end
  local rest = name:upper()
  if prefix and rest:sub(1, #prefix) == prefix then rest = rest:sub(#prefix + 1) end
  local write = false
  for word in rest:gmatch("[^_]+") do
    if ADMIN_WORDS[word] then return "admin" end
    if WRITE_WORDS[word] then write = true end
  end
  return write and "write" or "read"
end

-- ------------------------------------------------------------------- HTTP --

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c)
    return ("%%%02X"):format(c:byte())
  end))
end

local function query_string(params)
  local keys = {}
  for k in pairs(params) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = urlencode(k) .. "=" .. urlencode(params[k])
  end
  return table.concat(parts, "&")
end

local function present(v) return v ~= nil and v ~= json.null end
local function str(v) return type(v) == "string" and v or nil end

-- The failure of a request, with the project key cut out of what the server
-- answered (one that echoes the request quotes its x-api-key header, and a
-- cursor it sends back is the server's text too).
function Composio:_fail(code, message, fields)
  return nil, redact.error(core.error(code, message, fields), redact.secrets(self.api_key))
end

-- What Composio said about a failed request: its `error` object (message,
-- code, suggested_fix, request_id, errors) or, on execute's HTTP 200 with
-- `successful = false`, its `error` string. The text is for a person and a
-- model alike, so the suggested fix is part of it.
local function composio_error(body)
  if type(body) ~= "table" then return nil, {} end
  local e = body.error
  if type(e) == "string" then return e, {} end
  if type(e) ~= "table" then return nil, {} end
  local msg = str(e.message)
  if type(e.errors) == "table" and #e.errors > 0 then
    local parts = {}
    for i, v in ipairs(e.errors) do parts[i] = tostring(v) end
    msg = (msg and (msg .. ": ") or "") .. table.concat(parts, "; ")
  end
  local fix = str(e.suggested_fix)
  if msg and fix and fix ~= "" then msg = msg .. " (suggested fix: " .. fix .. ")" end
  return msg, { composio_code = present(e.code) and e.code or nil, suggested_fix = fix,
                request_id = str(e.request_id) }
end

-- One request, retried on 429 and 5xx (and on a connection that failed
-- before any reply) when `retryable`: listings only, since an execute that
-- timed out or answered 5xx may have run. Returns the decoded JSON object,
-- or nil and an error with `status`, Composio's message and suggested fix.
function Composio:_request(method, path, params, body, retryable)
  local qs = params and query_string(params) or ""
  local url = self.api_url .. path .. (qs ~= "" and ("?" .. qs) or "")
  local what = ("composio %s %s"):format(method, path)
  local headers = { ["x-api-key"] = self.api_key, accept = "application/json" }
  if body then headers["content-type"] = "application/json" end
  local attempts = retryable and self.retry.attempts or 1
  local attempt = 0
  while true do
    attempt = attempt + 1
    local res, err = require("tide.http").request {
      method = method, url = url, timeout_ms = self.timeout_ms, headers = headers, body = body,
    }
    local again, after, result, ferr
    if not res then
      if type(err) == "table" and err.code == "Cancelled" then error(err, 0) end
      local code = type(err) == "table" and err.code
      again = code == "ConnectFailed" or code == "ConnectionClosed" or code == "Timeout"
      result, ferr = self:_fail("HttpFailed", ("%s: %s"):format(what, tostring(err)),
        { cause = err, path = path })
    else
      local decoded = json.decode(res.body)
      if res.status < 200 or res.status > 299 then
        local msg, fields = composio_error(decoded)
        fields.status, fields.path, fields.composio_message = res.status, path, msg
        fields.body = res.body:sub(1, 2000)
        again = res.status == 429 or res.status >= 500
        after = again and retry.after_ms(res.headers) or nil
        result, ferr = self:_fail("HttpFailed", ("%s answered HTTP %d%s"):format(what, res.status,
          msg and (": " .. msg) or ""), fields)
      elseif type(decoded) ~= "table" then
        return self:_fail("MalformedResponse", ("%s: expected a JSON object"):format(what),
          { path = path, status = res.status })
      else
        return decoded
      end
    end
    if not again or attempt >= attempts then return result, ferr end
    core.sleep(math.floor(retry.backoff_ms(self.retry, attempt, after)))
  end
end

-- Follows `next_cursor` until it is null or empty; returns every item.
function Composio:_list(path, params)
  local items, cursor, seen = {}, nil, {}
  for _ = 1, MAX_PAGES do
    local q = {}
    for k, v in pairs(params) do q[k] = v end
    q.limit = self.page_size
    q.cursor = cursor
    local body, err = self:_request("GET", path, q, nil, true)
    if not body then return nil, err end
    local page = body.items
    if type(page) ~= "table" then
      return self:_fail("MalformedResponse", ("composio GET %s: no 'items' array"):format(path),
        { path = path })
    end
    for _, item in ipairs(page) do items[#items + 1] = item end
    local next_cursor = body.next_cursor
    if not present(next_cursor) or next_cursor == "" then return items end
    next_cursor = tostring(next_cursor)
    if seen[next_cursor] then
      return self:_fail("MalformedResponse", ("composio GET %s: pagination repeats cursor %q")
        :format(path, next_cursor), { path = path })
    end
    seen[next_cursor] = true
    cursor = next_cursor
  end
  return self:_fail("MalformedResponse", ("composio GET %s: more than %d pages"):format(path, MAX_PAGES),
    { path = path })
end

-- ------------------------------------------------------------------ fetch --

function Composio:_allowed(slug)
  return self.allow == nil or self.allow[slug] == true
end

-- The connected account chosen for toolkit `slug`: the `connected_account_id`
-- option (one id for every toolkit, or a map by slug), or nil (Composio then
-- uses the user's account for that toolkit).
function Composio:_account(slug)
  local c = self.connected_account_id
  if type(c) == "table" then return c[slug] end
  return c
end

local function deprecated(a)
  if a.is_deprecated == true or a.deprecated == true then return true end
  return type(a.deprecated) == "table" and a.deprecated.is_deprecated == true
end

--- Lists the user's ACTIVE connections, the connected toolkits' names and
--- (in one batched listing) their actions; returns the toolkits sorted by
--- slug (connected ones, plus allow-listed ones not connected, so that a
--- delegation to them can ask the user to connect), or `nil, err`. Runs in
--- a task.
---@return tide.integrations.toolkit[]|nil toolkits
---@return table|nil err
function Composio:fetch()
  local by_slug, order = {}, {}
  local function add(slug)
    if by_slug[slug] then return by_slug[slug] end
    local tk = { slug = slug, description = "", connected = false,
                 tools = json.array(), gated_tools = json.array() }
    by_slug[slug] = tk
    order[#order + 1] = tk
    return tk
  end

  -- (a) the user's connections: the only toolkits a fetch asks about
  local q = { user_ids = self.user_id, statuses = "ACTIVE" }
  if self.allow then
    local slugs = {}
    for slug in pairs(self.allow) do slugs[#slugs + 1] = slug end
    table.sort(slugs)
    q.toolkit_slugs = table.concat(slugs, ",")
  end
  local accounts, err = self:_list("/connected_accounts", q)
  if not accounts then return nil, err end
  for _, acc in ipairs(accounts) do
    if type(acc) == "table" then
      local toolkit = acc.toolkit
      local slug = type(toolkit) == "table" and str(toolkit.slug) or str(acc.toolkit_slug)
      local status = str(acc.status)
      local mine = not present(acc.user_id) or acc.user_id == self.user_id
      -- With an account chosen for this toolkit, only that one connects it.
      local want = slug and self:_account(slug)
      if slug and mine and status and status:upper() == "ACTIVE" and acc.is_disabled ~= true
          and self:_allowed(slug) and (want == nil or want == acc.id) then
        add(slug).connected = true
      end
    end
  end
  for slug in pairs(self.allow or {}) do add(slug) end
  table.sort(order, function(a, b) return a.slug < b.slug end)

  -- (b) each connected toolkit's name and description, for the prompts
  local connected = {}
  for _, tk in ipairs(order) do
    if tk.connected then
      connected[#connected + 1] = tk.slug
      local info
      info, err = self:_request("GET", "/toolkits/" .. urlencode(tk.slug), nil, nil, true)
      if not info then return nil, err end
      local meta = type(info.meta) == "table" and info.meta or {}
      tk.name = str(info.name)
      tk.description = str(meta.description) or str(info.description) or ""
    end
  end

  -- (c) one batched listing for every connected toolkit
  if #connected > 0 then
    local params = { toolkit_slug = table.concat(connected, ","), include_deprecated = "false" }
    if self.toolkit_versions then params.toolkit_versions = self.toolkit_versions end
    -- (a curated catalogue may name actions outside Composio's important
    -- subset: then every action is listed, the catalogue filters)
    if self.important and not self.catalogue then params.important = "true" end
    local actions
    actions, err = self:_list("/tools", params)
    if not actions then return nil, err end
    self:_assign(actions, connected, by_slug)
  end
  return order
end

-- Relevance of a gated action, for prompts that show only the first few:
-- important ones first, then what the user would most plausibly unlock
-- (read, then write, then admin), then by name.
local SCOPE_ORDER = { read = 1, write = 2, admin = 3 }
local function by_relevance(x, y)
  if (x.important == true) ~= (y.important == true) then return x.important == true end
  local sx, sy = SCOPE_ORDER[x.scope] or 4, SCOPE_ORDER[y.scope] or 4
  if sx ~= sy then return sx < sy end
  return x.name < y.name
end

-- Files each action under the connected toolkit whose `SLUG_` prefix it
-- carries (the longest, should two toolkits' prefixes nest), then into tools
-- or gated_tools. Deprecated actions are dropped even if the server sent
-- them (include_deprecated is a request, not a guarantee).
function Composio:_assign(actions, connected, by_slug)
  local prefixes = {}
  for _, slug in ipairs(connected) do
    prefixes[#prefixes + 1] = { prefix = slug:upper() .. "_", tk = by_slug[slug] }
  end
  table.sort(prefixes, function(a, b) return #a.prefix > #b.prefix end)
  local seen = {}
  for _, a in ipairs(actions) do
    local name = type(a) == "table" and (str(a.slug) or str(a.name))
    if name and not seen[name] and not deprecated(a) then
      seen[name] = true
      local upper = name:upper()
      for _, p in ipairs(prefixes) do
        if upper:sub(1, #p.prefix) == p.prefix and #upper > #p.prefix then
          self:_file(p.tk, p.prefix, name, a)
          break
        end
      end
    end
  end
  for _, p in ipairs(prefixes) do
    -- the curated (important) actions first: a toolkit too big to offer
    -- whole offers its first ones as tools (tide.subagent)
    table.sort(p.tk.tools, function(x, y)
      if (x.important or false) ~= (y.important or false) then return x.important == true end
      return x.name < y.name
    end)
    table.sort(p.tk.gated_tools, by_relevance)
  end
end

local function has_tag(tags, want)
  for _, tag in ipairs(type(tags) == "table" and tags or {}) do
    if type(tag) == "string" and want[tag:lower()] then return true end
  end
  return false
end
local DESTRUCTIVE_TAGS = { destructivehint = true, destructive = true }
local IMPORTANT_TAGS = { important = true }

function Composio:_file(tk, prefix, name, a)
  local scope = composio.classify(name, type(a.tags) == "table" and a.tags or nil, prefix)
  local description = str(a.description) or str(a.name) or ""
  local curated = self.catalogue and self.catalogue[tk.slug]
  local params = a.input_parameters
  if type(params) ~= "table" then params = { type = "object", properties = {} } end
  -- Kept by this source for execute, which marks the model's arrays with it.
  self.params[name] = params
  local reason
  if curated and not curated[name] then
    reason = "not in the curated catalogue"
  elseif not self.scopes[scope] then
    reason = scope .. " scope is off"
  end
  if reason then
    tk.gated_tools[#tk.gated_tools + 1] = { name = name, description = description,
      reason = reason, scope = scope,
      important = (self.important or has_tag(a.tags, IMPORTANT_TAGS)) or nil }
  else
    tk.tools[#tk.tools + 1] = { name = name, description = description, parameters = params,
      scope = scope, destructive = has_tag(a.tags, DESTRUCTIVE_TAGS) or nil,
      important = (self.important or has_tag(a.tags, IMPORTANT_TAGS)) or nil }
  end
end

-- ------------------------------------------------------------ constructor --

local function bad(field, what)
  error(("bad argument #1 to 'composio' (field '%s' %s)"):format(field, what), 3)
end

local function set_of(list, field)
  if list == nil then return nil end
  if type(list) ~= "table" then bad(field, "must be an array of strings") end
  local set = {}
  for _, v in ipairs(list) do
    if type(v) ~= "string" then bad(field, "must be an array of strings") end
    set[v] = true
  end
  return set
end

local OPTIONS = {
  api_key = true, base_url = true, user_id = true, toolkits = true, catalogue = true,
  scopes = true, page_size = true, timeout_ms = true, toolkit_versions = true, important = true,
  approval = true, connected_account_id = true, retry = true,
}

--- The host of a base URL: the official SDKs read $COMPOSIO_BASE_URL as the
--- host and append /api/v3 themselves; a value that already ends in /api/v3
--- (tide's old reading) is accepted without doubling it.
---@param url string
---@return string host
function composio.host(url)
  url = url:gsub("/+$", "")
  url = url:gsub("/api/v3$", "")
  return url
end

--- A Composio-backed source.
--- `api_key` defaults to $COMPOSIO_API_KEY, `base_url` (the host) to
--- $COMPOSIO_BASE_URL or https://backend.composio.dev. `toolkits` limits which
--- toolkits appear at all; `catalogue` maps a toolkit slug to the action slugs
--- that may be callable (the rest of that toolkit is gated); `scopes` defaults
--- to `{ read = true, write = true, admin = false }`. `important` (default
--- true) lists Composio's curated subset of each toolkit; false lists all.
--- `connected_account_id` (an id, or a map from toolkit slug to id) picks
--- among several accounts of one toolkit; it is sent on execute.
--- `timeout_ms` defaults to 60000; `retry` (`{ attempts, base_ms, max_ms,
--- max_retry_after_ms }`, default 3 attempts) governs listings only.
---@param opts {api_key?: string, base_url?: string, user_id: string, toolkits?: string[], catalogue?: table<string, string[]>, scopes?: {read?: boolean, write?: boolean, admin?: boolean}, page_size?: integer, timeout_ms?: integer, toolkit_versions?: string|false, important?: boolean, connected_account_id?: string|table<string,string>, retry?: table}
---@return tide.integrations.composio
function composio.new(opts)
  if type(opts) ~= "table" then
    error(("bad argument #1 to 'composio' (table expected, got %s)"):format(type(opts)), 2)
  end
  for k in pairs(opts) do
    if not OPTIONS[k] then
      error(("bad argument #1 to 'composio' (unknown option '%s')"):format(tostring(k)), 2)
    end
  end
  require("tide.approval").check_rule(opts.approval, "tide.integrations.composio: ", 2)
  local api_key = opts.api_key or os.getenv("COMPOSIO_API_KEY")
  if type(api_key) ~= "string" or api_key == "" then
    bad("api_key", "is required (or set COMPOSIO_API_KEY)")
  end
  if type(opts.user_id) ~= "string" or opts.user_id == "" then
    bad("user_id", "must be a non-empty string")
  end
  local base_url = opts.base_url or os.getenv("COMPOSIO_BASE_URL") or DEFAULT_HOST
  if type(base_url) ~= "string" or not base_url:match("^https?://") then
    bad("base_url", "must be an http(s) URL")
  end
  local host = composio.host(base_url)
  local scopes = { read = true, write = true, admin = false }
  if opts.scopes ~= nil then
    if type(opts.scopes) ~= "table" then bad("scopes", "must be a table") end
    for k, v in pairs(opts.scopes) do
      if scopes[k] == nil or type(v) ~= "boolean" then
        bad("scopes", "maps read/write/admin to booleans")
      end
      scopes[k] = v
    end
  end
  local catalogue
  if opts.catalogue ~= nil then
    if type(opts.catalogue) ~= "table" then bad("catalogue", "must be a table") end
    catalogue = {}
    for slug, names in pairs(opts.catalogue) do
      catalogue[slug] = set_of(names, "catalogue")
    end
  end
  local page_size = opts.page_size or 200
  if math.type(page_size) ~= "integer" or page_size < 1 or page_size > 1000 then
    bad("page_size", "must be an integer from 1 to 1000")
  end
  if opts.timeout_ms ~= nil and (math.type(opts.timeout_ms) ~= "integer" or opts.timeout_ms <= 0) then
    bad("timeout_ms", "must be a positive integer")
  end
  if opts.important ~= nil and type(opts.important) ~= "boolean" then
    bad("important", "must be a boolean")
  end
  local account = opts.connected_account_id
  if account ~= nil then
    if type(account) == "table" then
      for k, v in pairs(account) do
        if type(k) ~= "string" or type(v) ~= "string" or v == "" then
          bad("connected_account_id", "maps toolkit slugs to account ids")
        end
      end
    elseif type(account) ~= "string" or account == "" then
      bad("connected_account_id", "must be an account id or a map of them by toolkit")
    end
  end
  local retry_opts = {}
  for k, v in pairs(DEFAULT_RETRY) do retry_opts[k] = v end
  if opts.retry ~= nil then
    if type(opts.retry) ~= "table" then bad("retry", "must be a table") end
    for k, v in pairs(opts.retry) do
      if DEFAULT_RETRY[k] == nil or math.type(v) ~= "integer" or v < 0 then
        bad("retry", "maps attempts/base_ms/max_ms/max_retry_after_ms to integers")
      end
      retry_opts[k] = v
    end
    if retry_opts.attempts < 1 then bad("retry", "needs at least 1 attempt") end
  end
  local toolkit_versions = opts.toolkit_versions
  if toolkit_versions == nil then toolkit_versions = "latest" end
  if toolkit_versions ~= false and type(toolkit_versions) ~= "string" then
    bad("toolkit_versions", "must be a string or false")
  end

  local self = setmetatable({
    kind = "composio",
    api_key = api_key,
    base_url = host,
    api_url = host .. API_PATH,
    user_id = opts.user_id,
    allow = set_of(opts.toolkits, "toolkits"),
    catalogue = catalogue,
    scopes = scopes,
    page_size = page_size,
    timeout_ms = opts.timeout_ms or DEFAULT_TIMEOUT_MS,
    retry = retry_opts,
    toolkit_versions = toolkit_versions or nil,
    important = opts.important ~= false,
    connected_account_id = account,
    params = {}, -- action slug -> input_parameters, from this source's fetches
    approval = opts.approval, -- which actions wait for a person (tide.approval)
  }, Composio)

  -- The identity is "composio|<host>|<user_id>". Options that change what a
  -- fetch returns (allow-list, catalogue, scopes, ...) are folded in as a
  -- hash suffix when they differ from the defaults, so that two differently
  -- filtered sources for one user never share a snapshot.
  local function sorted(set)
    if set == nil then return nil end
    local list = json.array()
    for k in pairs(set) do list[#list + 1] = k end
    table.sort(list)
    return list
  end
  local cat_shape
  if catalogue then
    cat_shape = {}
    for slug, set in pairs(catalogue) do cat_shape[slug] = sorted(set) end
  end
  local shape = { toolkits = sorted(self.allow), catalogue = cat_shape,
                  all_tools = not self.important or nil,
                  accounts = account,
                  toolkit_versions = self.toolkit_versions ~= "latest" and
                    (self.toolkit_versions or false) or nil }
  if not (scopes.read and scopes.write and not scopes.admin) then shape.scopes = scopes end
  -- (one snapshot per Composio project: its key, hashed, names it)
  if type(self.api_key) == "string" then shape.project = core.cache_hash(self.api_key) end
  local id = "composio|" .. host .. "|" .. opts.user_id
  if next(shape) ~= nil then id = id .. "|" .. core.cache_hash(json.canonical(shape)) end
  self.id = id
  return self
end

-- ---------------------------------------------------------------- execute --

-- The input schema of `action`: from this source's own fetches, else from
-- the shared snapshot (another source object of the same identity may have
-- fetched it).
function Composio:_params(action)
  local p = self.params[action]
  if p then return p end
  local snap = require("tide.integrations.cache").peek(self)
  for _, tk in ipairs(snap and snap.toolkits or {}) do
    for _, t in ipairs(tk.tools or {}) do
      if t.name == action then return t.parameters end
    end
  end
end

-- The toolkit an action belongs to, by the longest `SLUG_` prefix among the
-- toolkits an account was chosen for.
function Composio:_account_for(action)
  local c = self.connected_account_id
  if type(c) ~= "table" then return c end
  local best, upper = nil, action:upper()
  for slug, id in pairs(c) do
    local prefix = slug:upper() .. "_"
    if upper:sub(1, #prefix) == prefix and (best == nil or #prefix > best[1]) then
      best = { #prefix, id }
    end
  end
  return best and best[2]
end

--- Executes an action for the source's user:
--- POST {host}/api/v3/tools/execute/{tool_slug} with { arguments, user_id,
--- connected_account_id, version } (Composio v3 "Execute tool"); returns
--- the response's `data`, or `nil, err` (ToolError, with Composio's message
--- and suggested fix). Never retried. `args` is the model's decoded JSON:
--- the tables the action's schema calls arrays are marked first, so that a
--- model's `[]` reaches Composio as `[]`, not `{}`.
---@param action string
---@param args table
---@return any data
---@return table|nil err
function Composio:execute(action, args)
  args = args or {}
  local params = self:_params(action)
  if params then require("tide.schema").mark_arrays(args, params) end
  local body = json.canonical {
    arguments = args, user_id = self.user_id, version = self.toolkit_versions or "latest",
    connected_account_id = self:_account_for(action),
  }
  local data, err = self:_request("POST", "/tools/execute/" .. urlencode(action), nil, body, false)
  if not data then
    local why = err.status and ("HTTP %d: %s"):format(err.status, err.composio_message or "no message")
      or err.message
    return self:_fail("ToolError", ("composio execute %s failed (%s)"):format(action, why), {
      status = err.status, composio_code = err.composio_code, suggested_fix = err.suggested_fix,
      request_id = err.request_id, cause = err })
  end
  if data.successful == false then
    local msg, fields = composio_error(data)
    return self:_fail("ToolError", ("composio execute %s failed (%s)"):format(action,
      msg or "unsuccessful"), fields)
  end
  return data.data
end

--- "composio|<host>|<user_id>", plus "|<hash>" of the filtering options
--- when they are not the defaults.
---@return string
function Composio:identity() return self.id end

function Composio:__tostring() return "tide.integrations.composio (" .. self.id .. ")" end

return composio
