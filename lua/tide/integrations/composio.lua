--- tide.integrations.composio: connected toolkits from the Composio v3 API.
---
--- A fetch makes three kinds of request, each followed through its pages
--- (`cursor` in, `next_cursor` out, until `next_cursor` is null):
---   1. `GET {base}/toolkits` -- the toolkit catalogue (slug, name,
---      meta.description);
---   2. `GET {base}/connected_accounts?user_ids=<user>` -- the user's
---      connections; status ACTIVE or CONNECTED counts as connected;
---   3. ONE batched `GET {base}/tools?toolkit_slug=<a,b,...>` for every
---      connected toolkit at once (comma-joined, as the official TypeScript
---      SDK's tools.getRawComposioTools does).
--- Every request carries the project key in the `x-api-key` header.
---
--- Sources (public docs and the official SDK):
---   * https://docs.composio.dev/reference -- base URL
---     https://backend.composio.dev/api/v3, `x-api-key` authentication;
---   * https://docs.composio.dev/docs/auth-configuration/connected-accounts --
---     listing by `user_ids` and `statuses` (ACTIVE, INITIATED, FAILED, ...);
---   * https://docs.composio.dev/docs/tools-direct/toolkit-versioning --
---     `GET /api/v3/tools?toolkit_slug=...&toolkit_version(s)=latest`: without
---     a version the API answers with the base version's tools only;
---   * https://docs.composio.dev/docs/toolkits/fetching-tools-and-toolkits --
---     `limit` plus `next_cursor` pagination;
---   * ComposioHQ/composio ts/packages/core/src/models/Tools.ts --
---     `toolkit_slug: toolkits.join(',')`, items with `slug`, `name`,
---     `description`, `input_parameters`, `tags`, `toolkit.slug`.
---
--- Each action is kept for toolkit SLUG only if its slug starts with
--- `SLUG_` (upper case, anchored, so `git` never claims `GITHUB_*`), then
--- classified read / write / admin (by Composio tags when they say, else by
--- the words of its name). Callable actions go to `tools`; the ones outside
--- the curated catalogue or above the allowed scopes go to `gated_tools` with
--- a `reason`, so prompts can say what access would unlock them.
local core = require "tide.core"
local json = require "tide.json"
local redact = require "tide.redact"

local composio = {}

local DEFAULT_BASE_URL = "https://backend.composio.dev/api/v3"
local MAX_PAGES = 100

---@class tide.integrations.composio: tide.integrations.source
---@field kind "composio"
---@field base_url string
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

-- The failure of a request, with the project key cut out of what the server
-- answered (one that echoes the request quotes its x-api-key header, and a
-- cursor it sends back is the server's text too).
function Composio:_fail(code, message, fields)
  return nil, redact.error(core.error(code, message, fields), redact.secrets(self.api_key))
end

function Composio:_get(path, params)
  local qs = query_string(params)
  local url = self.base_url .. path .. (qs ~= "" and ("?" .. qs) or "")
  local res, err = require("tide.http").request{
    method = "GET", url = url, timeout_ms = self.timeout_ms,
    headers = { ["x-api-key"] = self.api_key, accept = "application/json" },
  }
  if not res then
    if type(err) == "table" and err.code == "Cancelled" then error(err, 0) end
    return self:_fail("HttpFailed", ("composio GET %s: %s"):format(path, tostring(err)),
      { cause = err, path = path })
  end
  if res.status < 200 or res.status > 299 then
    return self:_fail("HttpFailed", ("composio GET %s answered HTTP %d"):format(path, res.status),
      { status = res.status, body = res.body:sub(1, 2000), path = path })
  end
  local body, jerr = json.decode(res.body)
  if type(body) ~= "table" then
    return self:_fail("MalformedResponse", ("composio GET %s: %s"):format(path,
      jerr and jerr.message or "expected a JSON object"), { path = path })
  end
  return body
end

local function present(v) return v ~= nil and v ~= json.null end

-- Follows `next_cursor` until it is null or empty; returns every item.
function Composio:_list(path, params)
  local items, cursor, seen = {}, nil, {}
  for _ = 1, MAX_PAGES do
    local q = {}
    for k, v in pairs(params) do q[k] = v end
    q.limit = self.page_size
    q.cursor = cursor
    local body, err = self:_get(path, q)
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

local CONNECTED = { ACTIVE = true, CONNECTED = true }

local function str(v) return type(v) == "string" and v or nil end

function Composio:_allowed(slug)
  return self.allow == nil or self.allow[slug] == true
end

--- Lists toolkits, the user's connections and (in one batched listing) the
--- connected toolkits' actions; returns toolkits sorted by slug, or
--- `nil, err`. Runs in a task.
---@return tide.integrations.toolkit[]|nil toolkits
---@return table|nil err
function Composio:fetch()
  -- (a) the catalogue
  local listed, err = self:_list("/toolkits", {})
  if not listed then return nil, err end
  local by_slug, order = {}, {}
  local function add(slug, name, description)
    if by_slug[slug] or not self:_allowed(slug) then return end
    local tk = { slug = slug, name = name, description = description or "",
                 connected = false, tools = json.array(), gated_tools = json.array() }
    by_slug[slug] = tk
    order[#order + 1] = tk
  end
  for _, item in ipairs(listed) do
    local slug = type(item) == "table" and str(item.slug)
    if slug and slug ~= "" then
      local meta = type(item.meta) == "table" and item.meta or {}
      add(slug, str(item.name), str(meta.description) or str(item.description))
    end
  end

  -- (b) the user's connections
  local accounts
  accounts, err = self:_list("/connected_accounts", { user_ids = self.user_id })
  if not accounts then return nil, err end
  for _, acc in ipairs(accounts) do
    if type(acc) == "table" then
      local toolkit = acc.toolkit
      local slug = type(toolkit) == "table" and str(toolkit.slug) or str(acc.toolkit_slug)
      local status = str(acc.status)
      local mine = not present(acc.user_id) or acc.user_id == self.user_id
      if slug and mine and status and CONNECTED[status:upper()] and acc.is_disabled ~= true then
        -- A connection to a toolkit the catalogue did not list still counts.
        add(slug, nil, "")
        if by_slug[slug] then by_slug[slug].connected = true end
      end
    end
  end

  -- (c) one batched listing for every connected toolkit
  local connected = {}
  for _, tk in ipairs(order) do
    if tk.connected then connected[#connected + 1] = tk.slug end
  end
  table.sort(connected)
  if #connected > 0 then
    local params = { toolkit_slug = table.concat(connected, ",") }
    if self.toolkit_versions then params.toolkit_versions = self.toolkit_versions end
    if self.important then params.important = "true" end
    local actions
    actions, err = self:_list("/tools", params)
    if not actions then return nil, err end
    self:_assign(actions, connected, by_slug)
  end
  return order
end

-- Files each action under the connected toolkit whose `SLUG_` prefix it
-- carries (the longest, should two toolkits' prefixes nest), then into tools
-- or gated_tools.
function Composio:_assign(actions, connected, by_slug)
  local prefixes = {}
  for _, slug in ipairs(connected) do
    prefixes[#prefixes + 1] = { prefix = slug:upper() .. "_", tk = by_slug[slug] }
  end
  table.sort(prefixes, function(a, b) return #a.prefix > #b.prefix end)
  local seen = {}
  for _, a in ipairs(actions) do
    local name = type(a) == "table" and (str(a.slug) or str(a.name))
    if name and not seen[name] then
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
    table.sort(p.tk.tools, function(x, y) return x.name < y.name end)
    table.sort(p.tk.gated_tools, function(x, y) return x.name < y.name end)
  end
end

function Composio:_file(tk, prefix, name, a)
  local scope = composio.classify(name, type(a.tags) == "table" and a.tags or nil, prefix)
  local description = str(a.description) or str(a.name) or ""
  local curated = self.catalogue and self.catalogue[tk.slug]
  local reason
  if curated and not curated[name] then
    reason = "not in the curated catalogue"
  elseif not self.scopes[scope] then
    reason = scope .. " scope is off"
  end
  if reason then
    tk.gated_tools[#tk.gated_tools + 1] = { name = name, description = description,
                                            reason = reason, scope = scope }
  else
    local params = a.input_parameters
    if type(params) ~= "table" then params = { type = "object", properties = {} } end
    local destructive = false
    for _, tag in ipairs(type(a.tags) == "table" and a.tags or {}) do
      if type(tag) == "string" and (tag:lower() == "destructivehint" or tag:lower() == "destructive") then
        destructive = true
      end
    end
    tk.tools[#tk.tools + 1] = { name = name, description = description,
                                parameters = params, scope = scope, destructive = destructive or nil }
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
  approval = true,
}

--- A Composio-backed source.
--- `api_key` defaults to $COMPOSIO_API_KEY, `base_url` to $COMPOSIO_BASE_URL
--- or https://backend.composio.dev/api/v3. `toolkits` limits which toolkits
--- appear at all; `catalogue` maps a toolkit slug to the action slugs that may
--- be callable (the rest of that toolkit is gated); `scopes` defaults to
--- `{ read = true, write = true, admin = false }`.
---@param opts {api_key?: string, base_url?: string, user_id: string, toolkits?: string[], catalogue?: table<string, string[]>, scopes?: {read?: boolean, write?: boolean, admin?: boolean}, page_size?: integer, timeout_ms?: integer, toolkit_versions?: string|false, important?: boolean}
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
  local base_url = opts.base_url or os.getenv("COMPOSIO_BASE_URL") or DEFAULT_BASE_URL
  if type(base_url) ~= "string" or not base_url:match("^https?://") then
    bad("base_url", "must be an http(s) URL")
  end
  base_url = base_url:gsub("/+$", "")
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
  local page_size = opts.page_size or 100
  if math.type(page_size) ~= "integer" or page_size < 1 then
    bad("page_size", "must be a positive integer")
  end
  if opts.timeout_ms ~= nil and (math.type(opts.timeout_ms) ~= "integer" or opts.timeout_ms <= 0) then
    bad("timeout_ms", "must be a positive integer")
  end
  if opts.important ~= nil and type(opts.important) ~= "boolean" then
    bad("important", "must be a boolean")
  end
  local toolkit_versions = opts.toolkit_versions
  if toolkit_versions == nil then toolkit_versions = "latest" end
  if toolkit_versions ~= false and type(toolkit_versions) ~= "string" then
    bad("toolkit_versions", "must be a string or false")
  end

  local self = setmetatable({
    kind = "composio",
    api_key = api_key,
    base_url = base_url,
    user_id = opts.user_id,
    allow = set_of(opts.toolkits, "toolkits"),
    catalogue = catalogue,
    scopes = scopes,
    page_size = page_size,
    timeout_ms = opts.timeout_ms or 30000,
    toolkit_versions = toolkit_versions or nil,
    important = opts.important == true,
    approval = opts.approval, -- which actions wait for a person (tide.approval)
  }, Composio)

  -- The identity is "composio|<base_url>|<user_id>". Options that change
  -- what a fetch returns (allow-list, catalogue, scopes, ...) are folded in as
  -- a hash suffix when they differ from the defaults, so that two differently
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
                  important = self.important or nil,
                  toolkit_versions = self.toolkit_versions ~= "latest" and
                    (self.toolkit_versions or false) or nil }
  if not (scopes.read and scopes.write and not scopes.admin) then shape.scopes = scopes end
  local id = "composio|" .. base_url .. "|" .. opts.user_id
  if next(shape) ~= nil then id = id .. "|" .. core.cache_hash(json.canonical(shape)) end
  self.id = id
  return self
end

--- "composio|<base_url>|<user_id>", plus "|<hash>" of the filtering options
--- when they are not the defaults.
---@return string
--- Executes an action for the source's user:
--- POST {base_url}/tools/execute/{tool_slug} with { user_id, arguments, version }
--- (Composio v3 REST "Execute tool"); returns the response's `data`.
---@param action string
---@param args table
---@return any data
---@return table|nil err
function Composio:execute(action, args)
  local res, err = require("tide.http").request {
    method = "POST", url = self.base_url .. "/tools/execute/" .. action, timeout_ms = self.timeout_ms,
    headers = { ["x-api-key"] = self.api_key, ["content-type"] = "application/json", accept = "application/json" },
    body = json.canonical { user_id = self.user_id, arguments = args or {}, version = "latest" },
  }
  if not res then
    if type(err) == "table" and err.code == "Cancelled" then error(err, 0) end
    return self:_fail("HttpFailed", ("composio execute %s: %s"):format(action, tostring(err)), { cause = err })
  end
  local body = json.decode(res.body)
  if res.status < 200 or res.status > 299 or type(body) ~= "table" or body.successful == false then
    local msg = type(body) == "table" and body.error ~= json.null and body.error or ("HTTP " .. res.status)
    if type(msg) == "table" then msg = msg.message or json.canonical(msg) end
    return self:_fail("ToolError", ("composio execute %s failed: %s"):format(action, tostring(msg)),
      { status = res.status })
  end
  return body.data
end

function Composio:identity() return self.id end

function Composio:__tostring() return "tide.integrations.composio (" .. self.id .. ")" end

return composio
