--- tide.testing.composio: a loopback mock of the Composio v3 REST endpoints
--- that `tide.integrations.composio` uses, for specs and the demo, answering
--- as Composio's OpenAPI document says the real service does.
---
--- Serves, under `/api/v3` (the server's `url` is the host, as the official
--- SDKs take it; `api_url` adds /api/v3):
---   GET  /toolkits, /toolkits/{slug}   items { slug, name, meta = { description } }
---   GET  /connected_accounts  filtered by `user_ids`, `statuses`,
---                             `toolkit_slugs`, `connected_account_ids`
---   GET  /tools               filtered by `toolkit_slug` (comma-separated),
---                             `tool_slugs`, `tags`, `important=true` and
---                             `include_deprecated` (default true, as upstream)
---   POST /tools/execute/{tool_slug}  { arguments, user_id,
---                             connected_account_id, version }: checks the
---                             tool exists and is not deprecated (410), the
---                             account, and the arguments against the tool's
---                             `input_parameters` (required, top-level types;
---                             an empty `[]` and `{}` are told apart)
--- Listings page with `limit` (at most 1000) / `cursor` -> `next_cursor`
--- (null on the last page). Failures answer Composio's error shape
--- `{ error = { message, code, status, request_id, suggested_fix, errors } }`.
--- The `x-api-key` header is checked when `api_key` is given; every request
--- is recorded. Faults: `srv.fail` (500s or any answer), `srv:rate_limit(n,
--- retry_after)` (the next n requests answer 429 with Retry-After).
---
--- Built on `tide.testing.server` and lua-cjson directly (not tide.json), so
--- the mock's wire format does not depend on the code under test.
---@class tide.testing.composio
local M = {}

-- The wire helpers of tide.testing: lua-cjson, with an empty-array marker
-- (EMPTY) for arrays that may be empty.
local wire = require("tide.testing")._wire
local null, EMPTY, encode, decode = wire.null, wire.EMPTY, wire.encode, wire.decode

local function arr(t)
  if t == nil or next(t) == nil then return EMPTY end
  return t
end

local JSON_HEADERS = { ["content-type"] = "application/json" }

local function reply(status, body, headers)
  local h = { ["content-type"] = "application/json" }
  for k, v in pairs(headers or {}) do h[k] = v end
  return { status = status, headers = h, body = encode(body) }
end

local request_ids = 0

-- Composio's error body (components/schemas/Error of its OpenAPI document).
local function fail(status, message, fix, errors)
  request_ids = request_ids + 1
  return reply(status, { error = { message = message, code = status * 10, status = status,
    request_id = ("req_mock_%d"):format(request_ids), suggested_fix = fix or "",
    errors = arr(errors) } })
end

local function urldecode(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function parse_target(target)
  local path, qs = target:match("^([^?]*)%??(.*)$")
  local query = {}
  for pair in qs:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k, v = urldecode(k), urldecode(v)
    -- A repeated parameter (user_ids=a&user_ids=b) joins like a comma list.
    query[k] = query[k] and (query[k] .. "," .. v) or v
  end
  return path, query
end

local function set_of(csv)
  if csv == nil or csv == "" then return nil end
  local set = {}
  for v in csv:gmatch("[^,]+") do set[v] = true end
  return set
end

-- lua-cjson decodes `[]` and `{}` alike (an empty table). The request body's
-- empty arrays become the EMPTY marker string first, so validation can tell
-- a model's `[]` from an encoder's `{}` (and the echo re-encodes it as `[]`).
local function decode_keeping_empty_arrays(s)
  if type(s) ~= "string" then return nil end
  local out, i, n, in_str = {}, 1, #s, false
  while i <= n do
    local c = s:sub(i, i)
    if in_str then
      out[#out + 1] = c
      if c == "\\" then out[#out + 1] = s:sub(i + 1, i + 1); i = i + 1
      elseif c == '"' then in_str = false end
    elseif c == '"' then
      in_str = true
      out[#out + 1] = c
    elseif c == "[" then
      local close = s:match("^%[%s*%]()", i)
      if close then
        out[#out + 1] = '"' .. EMPTY .. '"'
        i = close - 1
      else
        out[#out + 1] = c
      end
    else
      out[#out + 1] = c
    end
    i = i + 1
  end
  return decode(table.concat(out))
end

local function json_type(v)
  if v == EMPTY then return "array" end
  if v == null then return "null" end
  local t = type(v)
  if t == "string" then return "string" end
  if t == "boolean" then return "boolean" end
  if t == "number" then return math.type(v) == "integer" and "integer" or "number" end
  if t == "table" then
    if next(v) == nil then return "object" end -- `{}`: an empty array is EMPTY
    return #v > 0 and "array" or "object"
  end
  return t
end

-- The errors of `args` against a tool's input_parameters: missing required
-- properties and top-level type mismatches, as Composio reports them.
local function validate(args, schema)
  local errs = {}
  if type(args) ~= "table" or json_type(args) == "array" then
    return { "arguments must be an object" }
  end
  schema = type(schema) == "table" and schema or {}
  for _, name in ipairs(type(schema.required) == "table" and schema.required or {}) do
    if args[name] == nil then errs[#errs + 1] = ("Following fields are missing: {'%s'}"):format(name) end
  end
  for name, ps in pairs(type(schema.properties) == "table" and schema.properties or {}) do
    local v, want = args[name], type(ps) == "table" and ps.type
    if v ~= nil and type(want) == "string" then
      local got = json_type(v)
      local ok = got == want or (want == "number" and got == "integer")
      if not ok then
        errs[#errs + 1] = ("%s: Input should be a valid %s, got %s"):format(name,
          want == "array" and "list" or want, got)
      end
    end
  end
  table.sort(errs)
  return errs
end

local function schema(props, required)
  return { type = "object", title = "Request", properties = props or {}, required = arr(required) }
end

--- The default data: five toolkits (with `git` beside `github`), their
--- actions (all important but GITHUB_LIST_STARGAZERS; GITHUB_GET_OLD_REPO
--- deprecated), and the connections: user "u1" has two ACTIVE github
--- accounts (ca_github, ca_github_work), git ACTIVE, gmail INITIATED (not
--- connected); slack is ACTIVE for another user.
---@return table fixture { toolkits, connections, tools }
function M.fixture()
  return {
    toolkits = {
      { slug = "git", name = "Git", description = "Local git repositories" },
      { slug = "github", name = "GitHub", description = "Code hosting and issues" },
      { slug = "gmail", name = "Gmail", description = "Email" },
      { slug = "notion", name = "Notion", description = "Notes and docs" },
      { slug = "slack", name = "Slack", description = "Team chat" },
    },
    connections = {
      { id = "ca_github", toolkit = "github", user_id = "u1", status = "ACTIVE" },
      { id = "ca_github_work", toolkit = "github", user_id = "u1", status = "ACTIVE" },
      { id = "ca_git", toolkit = "git", user_id = "u1", status = "ACTIVE" },
      { id = "ca_gmail", toolkit = "gmail", user_id = "u1", status = "INITIATED" },
      { id = "ca_slack", toolkit = "slack", user_id = "u2", status = "ACTIVE" },
    },
    tools = {
      { slug = "GIT_STATUS", toolkit = "git", description = "Show the working tree status", important = true },
      { slug = "GIT_COMMIT", toolkit = "git", description = "Record changes", important = true },
      { slug = "GITHUB_LIST_ISSUES", toolkit = "github", description = "List issues", important = true,
        input_parameters = schema({ repo = { type = "string" } }) },
      { slug = "GITHUB_GET_REPO", toolkit = "github", description = "Get a repository",
        tags = { "repos", "readOnlyHint" }, important = true },
      { slug = "GITHUB_CREATE_ISSUE", toolkit = "github", description = "Open an issue", important = true,
        input_parameters = schema({ owner = { type = "string" }, repo = { type = "string" },
          title = { type = "string" }, labels = { type = "array", items = { type = "string" } },
          assignees = { type = "array", items = { type = "string" } },
          milestone = { type = "object", properties = { number = { type = "integer" } } } },
          { "owner", "repo", "title" }) },
      { slug = "GITHUB_DELETE_REPO", toolkit = "github", description = "Delete a repository", important = true },
      { slug = "GITHUB_ARCHIVE_REPO", toolkit = "github", description = "Archive a repository",
        tags = { "repos", "destructiveHint" }, important = true },
      { slug = "GITHUB_LIST_STARGAZERS", toolkit = "github", description = "List stargazers" },
      { slug = "GITHUB_GET_OLD_REPO", toolkit = "github", description = "Get a repository (old)",
        important = true, deprecated = true },
      { slug = "GMAIL_SEND_EMAIL", toolkit = "gmail", description = "Send an email", important = true },
      { slug = "SLACK_SEND_MESSAGE", toolkit = "slack", description = "Post a message", important = true },
      { slug = "NOTION_SEARCH", toolkit = "notion", description = "Search pages", important = true },
    },
  }
end

-- GitHub's REST resources and the verbs Composio's generated actions put
-- before them; their product is a toolkit at the real one's scale (823).
local RESOURCES = {
  "ISSUE", "ISSUE_COMMENT", "ISSUE_LABEL", "LABEL", "MILESTONE", "PULL_REQUEST",
  "PULL_REQUEST_REVIEW", "REVIEW_COMMENT", "REPOSITORY", "BRANCH", "BRANCH_PROTECTION", "TAG",
  "RELEASE", "RELEASE_ASSET", "COMMIT", "COMMIT_COMMENT", "COMMIT_STATUS", "CHECK_RUN",
  "CHECK_SUITE", "WORKFLOW", "WORKFLOW_RUN", "WORKFLOW_JOB", "ARTIFACT", "ACTIONS_CACHE",
  "REPOSITORY_SECRET", "ORGANIZATION_SECRET", "ENVIRONMENT", "ENVIRONMENT_SECRET",
  "REPOSITORY_VARIABLE", "ORGANIZATION_VARIABLE", "DEPLOY_KEY", "DEPLOYMENT",
  "DEPLOYMENT_STATUS", "WEBHOOK", "ORGANIZATION_WEBHOOK", "GIST", "GIST_COMMENT", "TEAM",
  "TEAM_MEMBERSHIP", "TEAM_REPOSITORY", "ORGANIZATION_MEMBER", "OUTSIDE_COLLABORATOR",
  "COLLABORATOR", "INVITATION", "PROJECT", "PROJECT_CARD", "PROJECT_COLUMN", "DISCUSSION",
  "DISCUSSION_COMMENT", "CODE_SCANNING_ALERT", "DEPENDABOT_ALERT", "SECRET_SCANNING_ALERT",
  "SSH_SIGNING_KEY", "GPG_KEY", "RUNNER", "RUNNER_GROUP", "PAGES_SITE", "AUTOLINK", "RULESET",
}
local VERBS = { "LIST", "GET", "CREATE", "UPDATE", "DELETE", "LIST_ALL", "GET_A", "SEARCH",
  "LOCK", "ADD_A", "REMOVE_A", "SET", "RENAME", "ARCHIVE" }
-- The curated few upstream marks important (about 40).
local IMPORTANT = {}
for _, r in ipairs { "ISSUE", "ISSUE_COMMENT", "PULL_REQUEST", "REPOSITORY", "BRANCH", "COMMIT",
  "RELEASE", "WORKFLOW_RUN", "LABEL", "GIST" } do
  for _, v in ipairs { "LIST", "GET", "CREATE", "UPDATE" } do IMPORTANT[v .. "_" .. r] = true end
end

--- A generated GitHub toolkit at the real one's scale: `n` (default 823)
--- `GITHUB_...` actions with tags, `input_parameters` (`owner`, `repo`
--- required; list-valued `labels` on create/update), about 40 marked
--- important, every 40th deprecated, and two names longer than 64
--- characters (the real catalogue has one of 65).
---@param n? integer
---@return table[] tools for `M.server{ tools = ... }`
function M.github_tools(n)
  n = n or 823
  local out = {
    { slug = "GITHUB_LIST_REPOSITORIES_WITH_ACCESS_TO_AN_ORGANIZATION_SECRET_NOW", toolkit = "github",
      description = "List selected repositories for an organization secret", tags = { "secrets" } },
    { slug = "GITHUB_REVIEW_CUSTOM_DEPLOYMENT_PROTECTION_RULES_FOR_A_WORKFLOW_RUN", toolkit = "github",
      description = "Review custom deployment protection rules for a workflow run", tags = { "actions" } },
  }
  local k = 0
  for _, r in ipairs(RESOURCES) do
    for _, v in ipairs(VERBS) do
      if #out >= n then break end
      k = k + 1
      local slug = "GITHUB_" .. v .. "_" .. r
      local tags = { (r:lower():match("^[^_]+")) }
      if v == "LIST" or v == "GET" or v == "GET_A" or v == "LIST_ALL" or v == "SEARCH" then
        tags[#tags + 1] = "readOnlyHint"
      elseif v == "DELETE" or v == "REMOVE_A" then
        tags[#tags + 1] = "destructiveHint"
      end
      local props = { owner = { type = "string", description = "The account owner of the repository." },
                      repo = { type = "string", description = "The name of the repository." } }
      if v == "CREATE" or v == "UPDATE" then
        props.labels = { type = "array", items = { type = "string" }, description = "Labels to set." }
        props.title = { type = "string", description = "The title." }
      end
      out[#out + 1] = {
        slug = slug, toolkit = "github", tags = tags,
        description = ("%s %s on a GitHub repository through the REST API; see GitHub's documentation for the fields."):format(
          (v:gsub("_A$", ""):gsub("_", " "):lower():gsub("^%l", string.upper)), (r:gsub("_", " "):lower())),
        input_parameters = schema(props, { "owner", "repo" }),
        important = IMPORTANT[v .. "_" .. r] or nil,
        deprecated = (k % 40 == 0) or nil,
      }
    end
  end
  return out
end

---@class tide.testing.composio.server
---@field url string the host, "http://127.0.0.1:<port>" (what COMPOSIO_BASE_URL holds)
---@field api_url string url .. "/api/v3"
---@field port integer
---@field toolkits table[] `{ slug, name, description }` (mutable)
---@field connections table[] `{ id, toolkit, user_id, status }` (mutable)
---@field tools table[] `{ slug, toolkit, description, tags, input_parameters, important, deprecated }` (mutable)
---@field executed table[] `{ slug, arguments, raw, user_id, connected_account_id }` per execute that ran
---@field fail nil|true|string|fun(req:table, endpoint:string|nil, query:table):(integer|table|nil)
---   true: every request answers 500; "toolkits" / "connected_accounts" /
---   "tools" / "execute": that endpoint does; a function may return a status
---   or a full response table (nil: serve normally)
---@field page_size integer|nil caps every page (to force pagination)
---@field execute nil|fun(slug:string, args:table, user_id:string, account:string):any the action's data
local Server = {}
Server.__index = Server

local function page(items, query, cap)
  local limit = tonumber(query.limit) or 20
  if cap then limit = math.min(limit, cap) end
  limit = math.max(1, math.min(1000, math.floor(limit)))
  local offset = 0
  if query.cursor and query.cursor ~= "" then
    offset = tonumber(query.cursor:match("^c(%d+)$") or "")
    if not offset then return nil end
  end
  local out = {}
  for i = offset + 1, math.min(#items, offset + limit) do out[#out + 1] = items[i] end
  local next_offset = offset + limit
  return {
    items = arr(out),
    next_cursor = next_offset < #items and ("c" .. next_offset) or null,
    total_items = #items,
    current_page = offset // limit + 1,
    total_pages = math.max(1, (#items + limit - 1) // limit),
  }
end

local function render_toolkit(t)
  return { slug = t.slug, name = t.name or t.slug, is_local_toolkit = false, enabled = true,
           meta = { description = t.description or "", logo = "", categories = EMPTY,
                    tools_count = 0, triggers_count = 0 } }
end

local function render_connection(c)
  return { id = c.id or ("ca_" .. c.toolkit), status = c.status or "ACTIVE",
           user_id = c.user_id, is_disabled = c.is_disabled == true, status_reason = null,
           toolkit = { slug = c.toolkit }, auth_config = { id = "ac_" .. c.toolkit } }
end

local function toolkit_of(t)
  return t.toolkit or t.slug:match("^([^_]+)"):lower()
end

local function render_tool(t)
  local tk = toolkit_of(t)
  local dep = t.deprecated == true
  -- The curated subset carries an "important" tag, which is how a listing
  -- with important=false still tells the client which ones are curated.
  local tags = {}
  for i, tag in ipairs(t.tags or {}) do tags[i] = tag end
  if t.important then tags[#tags + 1] = "important" end
  return { slug = t.slug, name = t.name or t.slug, description = t.description or "",
           input_parameters = t.input_parameters or { type = "object", properties = {} },
           output_parameters = { type = "object", properties = {} },
           tags = arr(tags), scopes = EMPTY, toolkit = { slug = tk, name = tk, logo = "" },
           is_deprecated = dep, no_auth = false, version = "20250905_00",
           available_versions = { "20250905_00" },
           deprecated = { is_deprecated = dep, version = "20250905_00", displayName = t.slug,
                          available_versions = { "20250905_00" }, toolkit = { logo = "" } } }
end

function Server:_execute(slug, req)
  local known
  for _, t in ipairs(self.tools) do if t.slug == slug then known = t end end
  if not known then
    return fail(404, ("Tool %s not found"):format(slug), "Check the tool slug; list tools with GET /api/v3/tools.")
  end
  if known.deprecated then
    return fail(410, ("Tool %s is deprecated"):format(slug), "Use a current version of the tool.")
  end
  local body = decode_keeping_empty_arrays(req.body)
  if type(body) ~= "table" then return fail(400, "Request body is not valid JSON") end
  local user, account = body.user_id, body.connected_account_id
  local tk = toolkit_of(known)
  local chosen
  for _, c in ipairs(self.connections) do
    if c.toolkit == tk and c.user_id == user and (c.status or "ACTIVE") == "ACTIVE"
        and (account == nil or c.id == account) then
      chosen = chosen or c
    end
  end
  if not chosen then
    if account ~= nil then
      return fail(404, ("Connected account %s not found for user %s and toolkit %s")
        :format(tostring(account), tostring(user), tk), "Pass the id of an ACTIVE connected account of this user.")
    end
    return fail(400, ("No connected account found for user %s and toolkit %s"):format(tostring(user), tk),
      "Connect the toolkit for this user first.")
  end
  local args = body.arguments
  if args == nil then args = {} end
  local errs = validate(args, known.input_parameters)
  if #errs > 0 then
    return fail(400, ("Invalid request data provided for %s"):format(slug),
      "Check the arguments against the tool's input_parameters.", errs)
  end
  self.executed[#self.executed + 1] = { slug = slug, arguments = args, raw = req.body, user_id = user,
    connected_account_id = account, account = chosen.id }
  local result = self.execute and self.execute(slug, args, user, chosen.id) or { echo = args }
  return reply(200, { data = result, error = null, successful = true, log_id = "log_mock" })
end

function Server:_handle(req)
  local path, query = parse_target(req.path)
  local endpoint = path:match("^/api/v3/([%w_]+)")
  local exec_slug = path:match("^/api/v3/tools/execute/([%w_]+)$")
  if exec_slug then endpoint = "execute" end
  local toolkit_slug = path:match("^/api/v3/toolkits/([%w_%-]+)$")
  self.log[#self.log + 1] = { method = req.method, path = path, endpoint = endpoint,
                              query = query, headers = req.headers, target = req.path, body = req.body }
  local f = self.fail
  if type(f) == "function" then
    local r = f(req, endpoint, query)
    if type(r) == "number" then return fail(r, "mock failure") end
    if type(r) == "table" then return r end
  elseif f == true or (type(f) == "string" and f == endpoint) then
    return fail(500, "Internal server error (mock)")
  end
  if self.storm and self.storm.left > 0 then
    self.storm.left = self.storm.left - 1
    request_ids = request_ids + 1
    return reply(429, { error = { message = "Rate limit exceeded", code = 4290, status = 429,
      request_id = ("req_mock_%d"):format(request_ids),
      suggested_fix = "Retry after the time given in the Retry-After header.", errors = EMPTY } },
      { ["retry-after"] = self.storm.after })
  end
  if self.api_key and req.headers["x-api-key"] ~= self.api_key then
    return fail(401, "Invalid API key", "Pass a valid project API key in the x-api-key header.")
  end
  if exec_slug and req.method == "POST" then return self:_execute(exec_slug, req) end
  if req.method ~= "GET" then return fail(405, "Method not allowed") end
  local items = {}
  if toolkit_slug then
    for _, t in ipairs(self.toolkits) do
      if t.slug == toolkit_slug then return reply(200, render_toolkit(t)) end
    end
    return fail(404, ("Toolkit %s not found"):format(toolkit_slug))
  elseif path:match("^/api/v3/toolkits/?$") then
    for _, t in ipairs(self.toolkits) do items[#items + 1] = render_toolkit(t) end
  elseif path:match("^/api/v3/connected_accounts/?$") then
    local users, statuses = set_of(query.user_ids), set_of(query.statuses)
    local slugs, ids = set_of(query.toolkit_slugs), set_of(query.connected_account_ids)
    for _, c in ipairs(self.connections) do
      if (not users or users[c.user_id]) and (not statuses or statuses[c.status or "ACTIVE"])
          and (not slugs or slugs[c.toolkit]) and (not ids or ids[c.id]) then
        items[#items + 1] = render_connection(c)
      end
    end
  elseif path:match("^/api/v3/tools/?$") then
    local slugs, names, tags = set_of(query.toolkit_slug), set_of(query.tool_slugs), set_of(query.tags)
    local important = query.important == "true"
    local with_deprecated = query.include_deprecated ~= "false"
    for _, t in ipairs(self.tools) do
      local keep = (not slugs or slugs[toolkit_of(t)]) and (not names or names[t.slug])
        and (not important or t.important) and (with_deprecated or not t.deprecated)
      if keep and tags then
        keep = false
        for _, tag in ipairs(t.tags or {}) do if tags[tag] then keep = true end end
      end
      if keep then items[#items + 1] = render_tool(t) end
    end
  else
    return fail(404, "No such endpoint: " .. path)
  end
  local body = page(items, query, self.page_size)
  if not body then return fail(400, "Invalid cursor") end
  return reply(200, body)
end

--- Recorded requests, oldest first: `{ method, path, endpoint, query,
--- headers, target, body }`; with `endpoint`, only those to it.
---@param endpoint? "toolkits"|"connected_accounts"|"tools"|"execute"
---@return table[]
function Server:requests(endpoint)
  local out = {}
  for _, r in ipairs(self.log) do
    if endpoint == nil or r.endpoint == endpoint then out[#out + 1] = r end
  end
  return out
end

--- Forgets the recorded requests and executions.
function Server:clear() self.log = {}; self.executed = {} end

--- The next `n` requests, whatever they ask, answer 429 with `Retry-After:
--- <retry_after>` (seconds, default "0") and Composio's error body.
---@param n integer
---@param retry_after? string
function Server:rate_limit(n, retry_after)
  self.storm = { left = n, after = retry_after or "0" }
end

--- Marks `toolkit` connected for `user_id` (default "u1") with `status`
--- (default "ACTIVE"), replacing that pair's connections.
function Server:connect(toolkit, user_id, status)
  self:disconnect(toolkit, user_id)
  self.connections[#self.connections + 1] = { id = "ca_" .. toolkit, toolkit = toolkit,
    user_id = user_id or "u1", status = status or "ACTIVE" }
end

--- Removes `toolkit`'s connections for `user_id` (default "u1").
function Server:disconnect(toolkit, user_id)
  user_id = user_id or "u1"
  for i = #self.connections, 1, -1 do
    local c = self.connections[i]
    if c.toolkit == toolkit and c.user_id == user_id then table.remove(self.connections, i) end
  end
end

--- Stops listening. Idempotent.
function Server:close()
  if self.srv then
    self.srv:close()
    self.srv = nil
  end
end
Server.__close = Server.close

--- Starts the mock on a free loopback port. Fields left out come from
--- `fixture()`.
---@param opts? {toolkits?: table[], connections?: table[], tools?: table[], fail?: any, page_size?: integer, api_key?: string}
---@return tide.testing.composio.server
function M.server(opts)
  opts = opts or {}
  local fx = M.fixture()
  local self = setmetatable({
    toolkits = opts.toolkits or fx.toolkits,
    connections = opts.connections or fx.connections,
    tools = opts.tools or fx.tools,
    fail = opts.fail,
    page_size = opts.page_size,
    api_key = opts.api_key,
    log = {}, executed = {},
  }, Server)
  local srv, err = require("tide.testing.server").listen{ host = "127.0.0.1", port = 0,
    handler = function(req) return self:_handle(req) end }
  if not srv then error("tide.testing.composio: " .. tostring(err), 2) end
  self.srv = srv
  self.port = srv:port()
  self.url = ("http://127.0.0.1:%d"):format(self.port)
  self.api_url = self.url .. "/api/v3"
  return self
end

return M
