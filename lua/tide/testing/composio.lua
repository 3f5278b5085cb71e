--- tide.testing.composio: a loopback mock of the Composio v3 REST endpoints
--- that `tide.integrations.composio` uses, for specs and the demo.
---
--- Serves, under `/api/v3`:
---   GET /toolkits                 items { slug, name, meta = { description } }
---   GET /connected_accounts       filtered by `user_ids`, `statuses`,
---                                 `toolkit_slugs` (comma-separated)
---   GET /tools                    filtered by `toolkit_slug` (comma-separated)
---                                 and `tool_slugs`
--- each paginated with `limit` / `cursor` -> `next_cursor` (null on the last
--- page), checking the `x-api-key` header when `api_key` is given, and
--- recording every request. `srv.fail` injects 500s.
---
--- Built on `tide.testing.server` and lua-cjson directly (not tide.json), so
--- the mock's wire format does not depend on the code under test.
---@class tide.testing.composio
local M = {}

local core = require "tide.core"
-- The wire helpers of tide.testing: lua-cjson, with an empty-array marker
-- (EMPTY) for arrays that may be empty.
local wire = require("tide.testing")._wire
local null, EMPTY, encode, decode = wire.null, wire.EMPTY, wire.encode, wire.decode

local function arr(t)
  if t == nil or next(t) == nil then return EMPTY end
  return t
end

local JSON_HEADERS = { ["content-type"] = "application/json" }

local function reply(status, body)
  return { status = status, headers = JSON_HEADERS, body = encode(body) }
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

--- The default data: five toolkits (with `git` beside `github`), their
--- actions, and user "u1"'s connections: github ACTIVE, git CONNECTED,
--- gmail INITIATED (not connected), slack ACTIVE for another user.
---@return table fixture { toolkits, connections, tools }
function M.fixture()
  local function schema(props)
    return { type = "object", properties = props or {}, required = {} }
  end
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
      { id = "ca_git", toolkit = "git", user_id = "u1", status = "CONNECTED" },
      { id = "ca_gmail", toolkit = "gmail", user_id = "u1", status = "INITIATED" },
      { id = "ca_slack", toolkit = "slack", user_id = "u2", status = "ACTIVE" },
    },
    tools = {
      { slug = "GIT_STATUS", toolkit = "git", description = "Show the working tree status" },
      { slug = "GIT_COMMIT", toolkit = "git", description = "Record changes" },
      { slug = "GITHUB_LIST_ISSUES", toolkit = "github", description = "List issues",
        input_parameters = schema({ repo = { type = "string" } }) },
      { slug = "GITHUB_GET_REPO", toolkit = "github", description = "Get a repository",
        tags = { "repos", "readOnlyHint" } },
      { slug = "GITHUB_CREATE_ISSUE", toolkit = "github", description = "Open an issue" },
      { slug = "GITHUB_DELETE_REPO", toolkit = "github", description = "Delete a repository" },
      { slug = "GITHUB_ARCHIVE_REPO", toolkit = "github", description = "Archive a repository",
        tags = { "repos", "destructiveHint" } },
      { slug = "GMAIL_SEND_EMAIL", toolkit = "gmail", description = "Send an email" },
      { slug = "SLACK_SEND_MESSAGE", toolkit = "slack", description = "Post a message" },
      { slug = "NOTION_SEARCH", toolkit = "notion", description = "Search pages" },
    },
  }
end

---@class tide.testing.composio.server
---@field url string base URL, "http://127.0.0.1:<port>/api/v3"
---@field port integer
---@field toolkits table[] `{ slug, name, description }` (mutable)
---@field connections table[] `{ id, toolkit, user_id, status }` (mutable)
---@field tools table[] `{ slug, toolkit, description, tags, input_parameters }` (mutable)
---@field fail nil|true|string|fun(req:table, endpoint:string|nil, query:table):(integer|table|nil)
---   true: every request answers 500; "toolkits" / "connected_accounts" /
---   "tools": that endpoint does; a function may return a status or a full
---   response table (nil: serve normally)
---@field page_size integer|nil caps every page (to force pagination)
local Server = {}
Server.__index = Server

local function page(items, query, cap)
  local limit = tonumber(query.limit) or 20
  if cap then limit = math.min(limit, cap) end
  limit = math.max(1, math.floor(limit))
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
  return { slug = t.slug, name = t.name or t.slug, is_local_toolkit = false,
           meta = { description = t.description or "", logo = "", categories = EMPTY,
                    tools_count = 0, triggers_count = 0 } }
end

local function render_connection(c)
  return { id = c.id or ("ca_" .. c.toolkit), status = c.status or "ACTIVE",
           user_id = c.user_id, is_disabled = c.is_disabled == true,
           toolkit = { slug = c.toolkit }, auth_config = { id = "ac_" .. c.toolkit } }
end

local function render_tool(t)
  local tk = t.toolkit or t.slug:match("^([^_]+)"):lower()
  return { slug = t.slug, name = t.name or t.slug, description = t.description or "",
           input_parameters = t.input_parameters or { type = "object", properties = {} },
           output_parameters = { type = "object", properties = {} },
           tags = arr(t.tags), toolkit = { slug = tk, name = tk },
           deprecated = false, no_auth = false, version = "latest" }
end

function Server:_handle(req)
  local path, query = parse_target(req.path)
  local endpoint = path:match("^/api/v3/([%w_]+)/?$")
  self.log[#self.log + 1] = { method = req.method, path = path, endpoint = endpoint,
                              query = query, headers = req.headers, target = req.path }
  local fail = self.fail
  if type(fail) == "function" then
    local r = fail(req, endpoint, query)
    if type(r) == "number" then return reply(r, { error = { message = "mock failure" } }) end
    if type(r) == "table" then return r end
  elseif fail == true or (type(fail) == "string" and fail == endpoint) then
    return reply(500, { error = { message = "internal server error (mock)" } })
  end
  if self.api_key and req.headers["x-api-key"] ~= self.api_key then
    return reply(401, { error = { message = "invalid api key" } })
  end
  local exec_slug = path:match("^/api/v3/tools/execute/([%w_]+)$")
  if exec_slug and req.method == "POST" then
    -- POST /tools/execute/{tool_slug} {user_id, arguments, version}
    self.log[#self.log].endpoint = "execute"
    local body = decode(req.body)
    if type(body) ~= "table" then body = {} end
    local known
    for _, t in ipairs(self.tools) do if t.slug == exec_slug then known = t end end
    if not known then
      return reply(404, { data = {}, error = "tool not found: " .. exec_slug, successful = false })
    end
    local result = self.execute and self.execute(exec_slug, body.arguments or {}, body.user_id)
      or { echo = body.arguments or {} }
    return reply(200, { data = result, error = null, successful = true, log_id = "log_mock" })
  end
  if req.method ~= "GET" then
    return reply(405, { error = { message = "method not allowed" } })
  end
  local items = {}
  if endpoint == "toolkits" then
    for _, t in ipairs(self.toolkits) do items[#items + 1] = render_toolkit(t) end
  elseif endpoint == "connected_accounts" then
    local users, statuses = set_of(query.user_ids), set_of(query.statuses)
    local slugs = set_of(query.toolkit_slugs)
    for _, c in ipairs(self.connections) do
      if (not users or users[c.user_id]) and (not statuses or statuses[c.status or "ACTIVE"])
          and (not slugs or slugs[c.toolkit]) then
        items[#items + 1] = render_connection(c)
      end
    end
  elseif endpoint == "tools" then
    local slugs, names = set_of(query.toolkit_slug), set_of(query.tool_slugs)
    for _, t in ipairs(self.tools) do
      local r = render_tool(t)
      if (not slugs or slugs[r.toolkit.slug]) and (not names or names[t.slug]) then
        items[#items + 1] = r
      end
    end
  else
    return reply(404, { error = { message = "no such endpoint: " .. path } })
  end
  local body = page(items, query, self.page_size)
  if not body then return reply(400, { error = { message = "bad cursor" } }) end
  return reply(200, body)
end

--- Recorded requests, oldest first: `{ method, path, endpoint, query,
--- headers, target }`; with `endpoint`, only those to it.
---@param endpoint? "toolkits"|"connected_accounts"|"tools"
---@return table[]
function Server:requests(endpoint)
  local out = {}
  for _, r in ipairs(self.log) do
    if endpoint == nil or r.endpoint == endpoint then out[#out + 1] = r end
  end
  return out
end

--- Forgets the recorded requests.
function Server:clear() self.log = {} end

--- Marks `toolkit` connected for `user_id` (default "u1") with `status`
--- (default "ACTIVE"), replacing an existing connection of that pair.
function Server:connect(toolkit, user_id, status)
  self:disconnect(toolkit, user_id)
  self.connections[#self.connections + 1] = { id = "ca_" .. toolkit, toolkit = toolkit,
    user_id = user_id or "u1", status = status or "ACTIVE" }
end

--- Removes `toolkit`'s connection for `user_id` (default "u1").
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
    log = {},
  }, Server)
  local srv, err = require("tide.testing.server").listen{ host = "127.0.0.1", port = 0,
    handler = function(req) return self:_handle(req) end }
  if not srv then error("tide.testing.composio: " .. tostring(err), 2) end
  self.srv = srv
  self.port = srv:port()
  self.url = ("http://127.0.0.1:%d/api/v3"):format(self.port)
  return self
end

return M
