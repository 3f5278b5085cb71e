--- tide.integrations.mcp: the tools of one MCP server as one toolkit.
---
--- Model Context Protocol, revision 2025-11-25 (negotiated down to
--- 2025-06-18, 2025-03-26 or 2024-11-05 when the server answers so), over
--- one of its two standard transports (or the deprecated HTTP+SSE one, found
--- behind a URL as the specification says: tide.integrations.mcp_sse):
---   * stdio: the server is a child process (core.process_spawn); JSON-RPC
---     messages are single lines on its stdin and stdout, stderr is its log
---     (the tail of it is quoted when the server dies);
---   * Streamable HTTP: every message is POSTed to one URL with
---     `Accept: application/json, text/event-stream`; the answer is JSON or
---     an SSE stream; `Mcp-Session-Id` (given by the server at initialize)
---     and `MCP-Protocol-Version` go on every later request; a 404 on a
---     session means it expired: tide initializes again and retries once; a
---     307 or 308 on the same origin is followed (FastMCP's /mcp to /mcp/).
---     Once initialized, tide GETs the endpoint for the server's own SSE
---     stream (its notifications and requests between calls: the
---     TypeScript SDK's list_changed goes there), in the background, so
---     that it keeps no tide.run alive; a 405 says the server offers none.
---     A stream that ends (the server may close it at any time) is opened
---     again after the delay of its `retry` field, else 1 s growing to
---     30 s, with `Last-Event-ID` when its events had ids. A POST's stream
---     the server closes before the answer, having given it an event id,
---     is polled the same way until the answer comes (the spec's SSE
---     polling, SEP-1699).
---
--- The lifecycle is the spec's: `initialize` (protocolVersion, capabilities,
--- clientInfo), then the `notifications/initialized` notification, then
--- `tools/list` (followed through `nextCursor`) and `tools/call`. The server
--- may send `ping` (answered), `notifications/tools/list_changed` (the
--- source's cache entry is dropped, so the next session lists again),
--- the requests of the capabilities a source was given and declares:
--- `sampling/createMessage` (`sampling`: tide.integrations.mcp_sampling),
--- `elicitation/create` (`elicit`: tide.integrations.mcp_elicitation) and
--- `roots/list` (`roots`), the first two also as tasks of tide's when the
--- server asks (tide.integrations.mcp_client_tasks, which serves the
--- `tasks/*` requests about them); `notifications/progress` for a tool call (every
--- call asks for it: the turn's listeners hear it, and it moves the call's
--- deadline), `notifications/message` (the server's logs, to `on_log`,
--- from `log_level` up); and requests tide does not serve (answered with
--- JSON-RPC error -32601, as the TypeScript SDK does for a capability it
--- did not declare). Over Streamable HTTP a
--- request's answer is read as it comes, for the server may make its own
--- request inside a tool call's stream and wait for the answer.
---
--- One connection per source, shared by every session that uses it. Over
--- stdio, responses are routed by id: a reader task reads one response,
--- hands it to its request, and ends, so that the callers waiting for it
--- (by joining the reader, with their own deadline) wake; the next waiting
--- caller starts the next reader. Between requests an idle reader serves
--- notifications without holding the loop (process:hold(false)). A request
--- that times out or whose task is cancelled sends `notifications/cancelled`
--- (never `initialize`: the spec forbids it; a server not initialized is
--- let go, its process ended or its HTTP session deleted).
--- Resources and prompts: tide.integrations.mcp_resources. A tool the
--- server says must run as a task: tide.integrations.mcp_tasks. Spans,
--- trace context and metrics: tide.integrations.mcp_telemetry. OAuth for
--- a remote server that asks: tide.integrations.mcp_oauth.
--- A server that dies fails the requests in flight at once, with its exit
--- status and the end of its stderr, and is started again by the next
--- request.
local core = require "tide.core"
local json = require "tide.json"

local mcp = {}

local PROTOCOL = "2025-11-25"
local SUPPORTED = { ["2025-11-25"] = true, ["2025-06-18"] = true, ["2025-03-26"] = true, ["2024-11-05"] = true }
local DEFAULT_TIMEOUT_MS = 60000 -- the TypeScript SDK's default request timeout
-- A message is one line: the cap bounds memory. 4 MiB is ~1M tokens of
-- text, more than any model's context can take as one tool result.
local DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
local MAX_PAGES = 1000
-- What a stdio server inherits from tide's environment, as the TypeScript
-- SDK's getDefaultEnvironment: enough to run, nothing secret by accident.
local INHERITED_ENV = { "HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "TMPDIR" }
-- The levels of logging/setLevel and notifications/message (RFC 5424's).
local LOG_LEVELS = { debug = true, info = true, notice = true, warning = true, error = true, critical = true,
  alert = true, emergency = true }

---@class tide.integrations.mcp: tide.integrations.source
---@field kind "mcp"
---@field name string the toolkit's slug
---@field transport "stdio"|"http"
---@field requests integer JSON-RPC requests sent (specs check warm builds)
---@field spawns integer server processes started (stdio)
---@field streams integer SSE streams GET opened (Streamable HTTP: listening, resuming)
local Mcp = {}
Mcp.__index = Mcp
Mcp.__name = "tide.integrations.mcp"

local function fail(code, message, fields)
  return nil, core.error(code, message, fields)
end

local function blocking(fn, ...)
  return require("tide")._blocking(fn, ...)
end

-- ------------------------------------------------------------- messages --

local function encode(msg)
  -- canonical: it keeps arrays marked with json.array as [] (lua-cjson
  -- 2.1.0 writes an empty table as {}), and it never writes a raw newline.
  return json.canonical(msg)
end

local function short(s, n)
  s = tostring(s)
  n = n or 200
  if #s > n then return s:sub(1, n) .. "..." end
  return s
end

-- The last lines of a server's stderr, for an error message.
local function stderr_tail(proc)
  local ok, text = pcall(proc.stderr, proc)
  if not ok or text == "" then return "" end
  text = text:gsub("%s+$", "")
  if #text > 600 then text = "..." .. text:sub(-600) end
  return "; its stderr ends with: " .. text
end

-- Empty tables where the schema says "array" become json.array, so that an
-- argument the model wrote as [] reaches the server as [] (tide.json
-- decodes [] and {} to the same empty table).
local function has_type(schema, ty)
  local t = schema.type
  if t == ty then return true end
  if type(t) == "table" then
    for _, x in ipairs(t) do if x == ty then return true end end
  end
  return false
end

local function conform(v, schema, depth)
  if type(v) ~= "table" or type(schema) ~= "table" or depth > 64 then return v end
  if next(v) == nil then
    if has_type(schema, "array") and not has_type(schema, "object") then return json.array(v) end
    return v
  end
  if #v > 0 then
    local items = schema.items
    for i = 1, #v do v[i] = conform(v[i], items, depth + 1) end
  elseif type(schema.properties) == "table" then
    for k, x in pairs(v) do
      local sub = schema.properties[k]
      if sub then v[k] = conform(x, sub, depth + 1) end
    end
  end
  return v
end

-- The text of a tools/call result: text blocks joined; structuredContent
-- as JSON when there is no text; other blocks described by a line.
local function result_text(res)
  local parts = {}
  local content = type(res.content) == "table" and res.content or {}
  for _, b in ipairs(content) do
    if type(b) == "table" then
      if b.type == "text" and type(b.text) == "string" then
        parts[#parts + 1] = b.text
      elseif b.type == "resource" and type(b.resource) == "table" and type(b.resource.text) == "string" then
        parts[#parts + 1] = b.resource.text
      end
    end
  end
  if #parts > 0 then return table.concat(parts, "\n") end
  if type(res.structuredContent) == "table" then return json.canonical(res.structuredContent) end
  for _, b in ipairs(content) do
    if type(b) == "table" then
      if b.type == "image" or b.type == "audio" then
        parts[#parts + 1] = ("[%s: %s]"):format(b.type, tostring(b.mimeType or "?"))
      elseif b.type == "resource_link" or b.type == "resource" then
        local r = b.type == "resource" and b.resource or b
        parts[#parts + 1] = ("[resource: %s]"):format(tostring(type(r) == "table" and r.uri or "?"))
      end
    end
  end
  return table.concat(parts, "\n")
end

-- An embedded resource that is a PDF (its bytes as base64 `blob`).
local function pdf_resource(b)
  local r = b.type == "resource" and b.resource
  return type(r) == "table" and r.mimeType == "application/pdf" and type(r.blob) == "string"
end

-- A tools/call result that shows an image or a PDF (a screenshot, a chart,
-- a document): its content as parts for the model to see, in order (text
-- blocks and text resources as text, images as images, a PDF resource as a
-- file, other blocks as a line that says what they are); nil for a result
-- without either.
local function result_parts(res)
  local content = type(res.content) == "table" and res.content or {}
  local attached = false
  for _, b in ipairs(content) do
    if type(b) == "table" and ((b.type == "image" and type(b.data) == "string") or pdf_resource(b)) then
      attached = true
    end
  end
  if not attached then return nil end
  local out = {}
  for _, b in ipairs(content) do
    if type(b) == "table" then
      if b.type == "image" and type(b.data) == "string" then
        out[#out + 1] = { type = "image", mime = tostring(b.mimeType), data = b.data }
      elseif pdf_resource(b) then
        out[#out + 1] = { type = "file", mime = "application/pdf", data = b.resource.blob,
                          name = tostring(b.resource.uri):match("[^/]+$") or "document.pdf" }
      elseif b.type == "text" and type(b.text) == "string" then
        out[#out + 1] = b.text
      elseif b.type == "resource" and type(b.resource) == "table" and type(b.resource.text) == "string" then
        out[#out + 1] = b.resource.text
      else
        out[#out + 1] = result_text({ content = { b } })
      end
    end
  end
  return out
end

-- A request of ours given up (its task cancelled, its deadline passed):
-- the server is told, but never of initialize, which the spec forbids
-- cancelling.
local function give_up(conn, id, method, reason)
  if method ~= "initialize" then conn:notify("notifications/cancelled", { requestId = id, reason = reason }) end
end

-- The Timeout of a request that got no answer in time (`hint`: what the
-- transport saw meanwhile).
local function timed_out(conn, method, timeout_ms, watch, hint, fields)
  return fail("Timeout", ("MCP server '%s' did not answer %s within %d ms%s%s"):format(
    conn.src.name, method, timeout_ms, watch and watch:since(timeout_ms) or "", hint or ""), fields)
end

local function rpc_error_text(e)
  if type(e) ~= "table" then return tostring(e) end
  local s = ("%s (JSON-RPC error %s)"):format(tostring(e.message or "error"), tostring(e.code))
  if e.data ~= nil and e.data ~= json.null then
    local ok, d = pcall(json.canonical, e.data)
    if ok then s = s .. ": " .. short(d) end
  end
  return s
end

-- ---------------------------------------------------- serving the server --

-- A message the server sent that is not the response to one of ours: a
-- notification, or a request (answered through `reply(msg)`).
local function on_server_message(src, msg, reply)
  local method = msg.method
  if msg.id ~= nil and msg.id ~= json.null then
    if method == "ping" then
      reply { jsonrpc = "2.0", id = msg.id, result = {} }
    elseif (method == "sampling/createMessage" and src.sampling_config) or (method == "elicitation/create" and src.elicit) then
      local handle = require(method == "elicitation/create" and "tide.integrations.mcp_elicitation"
        or "tide.integrations.mcp_sampling").handle
      if type(msg.params) == "table" and type(msg.params.task) == "table" then -- (run as a task of tide's)
        require("tide.integrations.mcp_client_tasks").accept(src, msg, reply, handle)
      else
        handle(src, msg, reply)
      end
    elseif src.client_tasks and require("tide.integrations.mcp_client_tasks").serve(src, msg, reply) then
      return -- (tasks/get, tasks/result, tasks/list, tasks/cancel)
    elseif method == "roots/list" and src.roots then
      reply { jsonrpc = "2.0", id = msg.id, result = { roots = src.roots } }
    else
      reply { jsonrpc = "2.0", id = msg.id,
        error = { code = -32601, message = "Method not found: tide serves no " .. tostring(method) } }
    end
  elseif method == "notifications/tools/list_changed" then
    src.list_changes = src.list_changes + 1
    require("tide.integrations.cache").invalidate(src)
  elseif method == "notifications/progress" then
    local p = msg.params
    local watch = type(p) == "table" and src.progress[p.progressToken]
    if watch then watch:heard(p) end
  elseif method == "notifications/resources/updated" then
    local p = msg.params
    if src.on_resource_updated and type(p) == "table" and type(p.uri) == "string" then
      pcall(src.on_resource_updated, p.uri) -- (as a log: a listener's error stops nothing)
    end
  elseif method == "notifications/message" then
    local p = msg.params
    if src.on_log and type(p) == "table" and LOG_LEVELS[p.level] then
      -- (a log is the server's, not a turn's: a listener that raises is
      -- not let stop anything)
      pcall(src.on_log, { level = p.level, logger = type(p.logger) == "string" and p.logger or nil,
        data = p.data ~= json.null and p.data or nil })
    end
  end
end

-- ------------------------------------------------------------ progress --

-- A tools/call in flight, as its progress notifications see it. Each one
-- (progress that grows, as the specification requires; others are
-- ignored) goes to the turn's listeners as a `tool_progress` event, and
-- moves the call's deadline to `timeout_ms` after it, as the TypeScript
-- SDK's resetTimeoutOnProgress does, but never past `max_total_timeout_ms`
-- after the call began: a server that reports progress is still working.
local Watch = {}
Watch.__index = Watch

local function new_watch(src, action, ctx)
  local token = src.next_token
  src.next_token = token + 1
  local now = core.now()
  local w = setmetatable({ src = src, token = token, action = action, began = now, at = now,
    sink = core.context("tide_on_event"), call = ctx and ctx.call_id, depth = core.depth() }, Watch)
  src.progress[token] = w
  return w
end

-- Hands event `e` of the call to the turn's listeners, naming the call
-- (source, tool, id, depth). A listener that raised fails the call's turn
-- when the call ends (this may run in the task that read a notification).
function Watch:emit(e)
  if not self.sink or self.failed then return end
  e.source, e.tool, e.id, e.depth = self.src.name, self.action, self.call, self.depth
  local ok, err = pcall(self.sink, e)
  if not ok then self.failed = err end
end

function Watch:heard(p)
  local progress = p.progress
  if type(progress) ~= "number" or progress ~= progress or (self.progress and progress <= self.progress) then return end
  self.progress, self.at = progress, core.now()
  self:emit { type = "tool_progress", progress = progress, total = type(p.total) == "number" and p.total or nil,
    message = type(p.message) == "string" and p.message or nil }
end

-- The call's deadline: `timeout_ms` after its start or its last progress,
-- at most max_total_timeout_ms after its start.
function Watch:deadline(timeout_ms)
  local d = self.at + timeout_ms
  local cap = self.src.max_total_timeout_ms
  if cap and d > self.began + cap then d = self.began + cap end
  return d
end

-- What a timeout's message adds when the call reported progress.
function Watch:since(timeout_ms)
  if not self.progress then return "" end
  local cap = self.src.max_total_timeout_ms
  if cap and self.at + timeout_ms > self.began + cap then
    return ("; it reported progress, but max_total_timeout_ms (%d) passed"):format(cap)
  end
  return (" of its last progress (%s)"):format(tostring(self.progress))
end

function Watch:__close() self.src.progress[self.token] = nil end

-- ------------------------------------------------------------------ stdio --

local Stdio = {}
Stdio.__index = Stdio

local reader

-- The server is gone (end of output, a broken stream): every request in
-- flight fails now, and the next request starts a new server.
-- (also the HTTP+SSE transport's, whose requests wait on a sleeping waiter
-- task: it is woken)
local function die(conn, why)
  if conn.dead then return end
  conn.dead = why
  if conn.src.conn == conn then conn.src.conn = nil end
  for id, req in pairs(conn.pending) do
    req.done, req.err = true, core.error("ConnectionClosed", why)
    conn.pending[id] = nil
    if req.waiter then req.waiter:cancel() end
  end
  conn.npending = 0
end

local function end_of_server(conn, err)
  local proc = conn.proc
  local code, sig = proc:status()
  if code == nil and not err then
    -- stdout ended: the exit is usually a moment behind.
    local ok, c, s = pcall(proc.wait, proc, 500)
    if ok then code, sig = c, s end
  end
  local what
  if err then
    what = ("MCP server '%s' broke the stream: %s"):format(conn.src.name, err.message or tostring(err))
  elseif code == nil then
    what = ("MCP server '%s' closed its output"):format(conn.src.name)
  elseif sig and sig ~= 0 then
    what = ("MCP server '%s' was killed by signal %d"):format(conn.src.name, sig)
  else
    what = ("MCP server '%s' exited with status %d"):format(conn.src.name, code)
  end
  die(conn, what .. stderr_tail(proc))
  proc:close(200)
end

-- Reads until one response reaches its request (then ends, waking the
-- callers that joined it) or the server is gone.
reader = function(conn)
  local proc, src = conn.proc, conn.src
  while not conn.dead do
    local line, err = proc:read_line()
    if line == nil then
      end_of_server(conn, err)
      return
    end
    local msg = json.decode(line)
    if type(msg) ~= "table" or msg.jsonrpc ~= "2.0" then
      conn.garbage = short(line, 120) -- not JSON-RPC: logs on the wrong stream
    elseif msg.method == nil then
      local req = msg.id ~= nil and conn.pending[msg.id]
      if req then
        conn.pending[msg.id] = nil
        conn.npending = conn.npending - 1
        if conn.npending == 0 then proc:hold(false) end
        req.done = true
        if msg.error ~= nil then
          req.err = core.error("ProviderError", rpc_error_text(msg.error), { rpc = msg.error })
        else
          req.result = msg.result
        end
        -- Someone must still read notifications between requests, without
        -- holding the loop: the successor waits weakly when nothing is due.
        conn.reader = core.spawn(reader, conn)
        return
      end
      conn.stray = tostring(msg.id) -- an answer to nothing we asked
    else
      on_server_message(src, msg, function(r) proc:write(encode(r) .. "\n") end)
    end
  end
end

local function ensure_reader(conn)
  local r = conn.reader
  if r == nil or r:status() == "done" or r:status() == "failed" then
    r = core.spawn(reader, conn)
    conn.reader = r
  end
  return r
end

function Stdio:notify(method, params)
  if self.dead then return end
  self.proc:write(encode { jsonrpc = "2.0", method = method, params = params } .. "\n")
end

-- What a request that never got its answer says about the stream.
local function hints(conn)
  local h = ""
  if conn.garbage then h = h .. "; the server wrote non-JSON-RPC output: " .. conn.garbage end
  if conn.stray then h = h .. "; it answered an unknown request id " .. conn.stray end
  return h
end

local function forget(conn, req)
  if conn.pending[req.id] then
    conn.pending[req.id] = nil
    conn.npending = conn.npending - 1
    if conn.npending == 0 and not conn.dead then conn.proc:hold(false) end
  end
end

--- Sends request `method` and waits for its answer (at most timeout_ms,
--- or as `watch`, a call's progress, moves the deadline): the result, or
--- nil and an error (Timeout, ConnectionClosed, ProviderError for a
--- JSON-RPC error). Raises Cancelled when the task is cancelled, after
--- telling the server.
function Stdio:send(method, params, timeout_ms, raw_params, watch)
  if self.dead then return fail("ConnectionClosed", self.dead) end
  local id = self.next_id
  self.next_id = id + 1
  local req = { id = id }
  local body = raw_params and ('{"id":%d,"jsonrpc":"2.0","method":%s,"params":%s}'):format(
    id, json.quote(method), raw_params)
    or encode { jsonrpc = "2.0", id = id, method = method, params = params or {} }
  local ok, werr = self.proc:write(body .. "\n")
  if not ok then return fail("ConnectionClosed", ("MCP server '%s': %s"):format(self.src.name, werr.message)) end
  self.src.requests = self.src.requests + 1
  self.pending[id] = req
  self.npending = self.npending + 1
  self.proc:hold(true)
  local deadline = core.now() + timeout_ms
  while not req.done do
    if watch then deadline = watch:deadline(timeout_ms) end
    local left = deadline - core.now()
    if left <= 0 then break end
    local r = ensure_reader(self)
    local fine, e = pcall(r.join, r, left)
    if not fine then -- this task was cancelled or interrupted
      forget(self, req)
      if not req.done then give_up(self, id, method, "cancelled") end
      error(e, 0)
    end
  end
  if not req.done then
    forget(self, req)
    give_up(self, id, method, "timed out")
    return timed_out(self, method, timeout_ms, watch, hints(self))
  end
  if req.err then return nil, req.err end
  return req.result
end

-- (requests are observed: tide.integrations.mcp_telemetry)
Stdio.request = require("tide.integrations.mcp_telemetry").wrap(Stdio.send)

function Stdio:close()
  die(self, ("the connection to MCP server '%s' was closed"):format(self.src.name))
  if self.reader then self.reader:cancel() end
  self.proc:close(1000)
end

local function default_env(extra)
  local env = {}
  for _, k in ipairs(INHERITED_ENV) do env[k] = os.getenv(k) end
  for k, v in pairs(extra or {}) do env[k] = tostring(v) end
  return env
end

local function open_stdio(src)
  local proc, err = core.process_spawn {
    argv = src.command, env = default_env(src.env), cwd = src.cwd, max_line = src.max_message_bytes,
  }
  if not proc then return nil, err end
  src.spawns = src.spawns + 1
  proc:hold(false)
  return setmetatable({ src = src, proc = proc, next_id = 1, pending = {}, npending = 0 }, Stdio)
end

-- ------------------------------------------------------ Streamable HTTP --

local Http = {}
Http.__index = Http

local function open_http(src)
  return setmetatable({ src = src, next_id = 1 }, Http)
end

-- The headers every HTTP request of a source carries: its own, its bearer
-- token, then `extra` (also the HTTP+SSE transport's).
local function source_headers(src, extra)
  local h = {}
  for k, v in pairs(src.headers or {}) do h[k:lower()] = v end
  if src.oauth then h.authorization = require("tide.integrations.mcp_oauth").bearer(src) end
  for k, v in pairs(extra) do h[k] = v end
  return h
end

function Http:headers()
  local h = source_headers(self.src, { ["mcp-session-id"] = self.session_id, ["mcp-protocol-version"] = self.protocol })
  h["content-type"] = h["content-type"] or "application/json" -- (a source's own may say otherwise)
  h.accept = h.accept or "application/json, text/event-stream"
  return h
end

-- Hands each message of one JSON text (a message or a batch) to fn.
local function each_message(text, fn)
  local v = json.decode(text)
  if type(v) ~= "table" then return end
  if #v > 0 then
    for _, m in ipairs(v) do fn(m) end
  else
    fn(v)
  end
end

-- The messages of a POST's answer: one JSON value (a message or a batch)
-- or the data of each SSE event.
local function messages_of(res)
  local ctype = (res.headers["content-type"] or ""):lower()
  local out = {}
  local function add(text) each_message(text, function(m) out[#out + 1] = m end) end
  if ctype:find("text/event-stream", 1, true) then
    local p = core.sse_parser(#res.body + 16)
    for _, chunk in ipairs { res.body, "\n\n" } do -- the blank line ends a last event
      for _, ev in ipairs(p:feed(chunk) or {}) do
        if ev.data and ev.data ~= "" then add(ev.data) end
      end
    end
  elseif res.body ~= "" then
    add(res.body)
  end
  return out
end

-- A POST's answer read as it comes (tide.http's on_data): an SSE stream's
-- events are decoded one by one and each message handed to on_message at
-- once, for a request the server makes inside a tool call (sampling) must
-- be answered before that call can end; a JSON answer (it starts with "{"
-- or "[") is kept and decoded when whole. `finish()` ends the stream and
-- returns the JSON text kept, if any.
local function answer_reader(max, on_message)
  local parser, kept, sse = nil, {}, nil
  local function events(list)
    for _, ev in ipairs(list or {}) do
      if ev.data and ev.data ~= "" then each_message(ev.data, on_message) end
    end
  end
  local r = {}
  function r.feed(chunk)
    if sse == nil then
      local b = chunk:match("^%s*(%S)")
      if b == nil then kept[#kept + 1] = chunk return end
      sse = b ~= "{" and b ~= "["
      if sse then chunk = table.concat(kept) .. chunk end
    end
    if not sse then kept[#kept + 1] = chunk return end
    parser = parser or core.sse_parser(max)
    events(parser:feed(chunk))
  end
  function r.finish()
    if parser then events(parser:feed("\n\n")) return "" end -- (the blank line ends a last event)
    return table.concat(kept)
  end
  -- What the stream said of reconnecting: its last event id, its retry.
  function r.last_id() return parser and parser:last_id() end
  function r.retry() return parser and parser:retry() end
  return r
end

-- The origin of a URL ("http://host:port"), for redirects.
local function origin_of(url) return url:match("^(%a[%w+.-]*://[^/?#]+)") end

-- Posts one message (a table, or its JSON text) and returns tide.http's
-- answer. A 307 or 308 to the same origin is followed with the same body,
-- as the official clients' fetch and httpx do (FastMCP moves /mcp to
-- /mcp/); one to another origin is not, since the headers carry the
-- server's credentials.
-- With `on_message`, a 2xx answer's messages go to it as they come (see
-- answer_reader) and the answer's body is what was not streamed (JSON).
function Http:post(msg, timeout_ms, on_message)
  local http = require "tide.http"
  local body = type(msg) == "string" and msg or encode(msg)
  local url = self.src.url
  for _ = 1, 4 do
    local reader = on_message and answer_reader(self.src.max_message_bytes, on_message)
    local headers = self:headers()
    local res, err = http.request {
      method = "POST", url = url, headers = headers, body = body,
      timeout_ms = timeout_ms, max_body_bytes = self.src.max_message_bytes,
      on_data = reader and reader.feed,
    }
    if res then res.sent_authorization = headers.authorization end -- (for a 401: which token it refused)
    if res and reader and res.status >= 200 and res.status <= 299 then
      res.body = reader.finish()
      res.last_event_id, res.retry_ms = reader.last_id(), reader.retry()
      if res.body ~= "" then each_message(res.body, on_message) end
    end
    if not res or (res.status ~= 307 and res.status ~= 308) then return res, err end
    local to = res.headers["location"]
    if not to then return res end
    if to:sub(1, 1) == "/" then to = origin_of(url) .. to end
    if origin_of(to) ~= origin_of(url) then return res end
    url = to
  end
  return nil, core.error("ProviderError", ("MCP server '%s' redirected too many times"):format(self.src.name))
end

function Http:notify(method, params, wait)
  local msg = { jsonrpc = "2.0", method = method, params = params }
  if wait then return self:post(msg, self.src.timeout_ms) end
  -- Its own task: a cancelled caller cannot wait, and nobody needs the 202.
  core.spawn(function() pcall(self.post, self, msg, 5000) end)
end

-- A message of the server's own (a request or a notification, not an
-- answer to ours), from any stream: served, a request's answer posted
-- from a task of its own.
function Http:serve(m)
  on_server_message(self.src, m, function(r)
    core.spawn(function() pcall(self.post, self, r, 5000) end)
  end)
end

-- The delay before a stream is opened again: the server's `retry`, else
-- 1 s growing by half a failed attempt up to 30 s (the TypeScript SDK's
-- client's defaults).
local function reconnect_delay(st, attempt)
  return st.retry or math.floor(math.min(1000 * 1.5 ^ attempt, 30000))
end

-- GETs the endpoint's SSE stream, resuming after `st.last_id` when set,
-- and hands each message to on_message as it comes; the stream's last
-- event id and retry are kept in st. `hold` false: the stream keeps no
-- tide.run alive. `timeout_ms`: the longest silence (0: none). tide.http's
-- answer.
function Http:get_stream(st, on_message, hold, timeout_ms)
  local h = self:headers()
  h["content-type"] = nil
  h.accept = "text/event-stream"
  h["last-event-id"] = st.last_id
  local reader = answer_reader(self.src.max_message_bytes, on_message)
  self.src.streams = self.src.streams + 1
  local res, err = require("tide.http").request {
    method = "GET", url = self.src.url, headers = h, hold = hold, timeout_ms = timeout_ms,
    max_body_bytes = self.src.max_message_bytes, on_data = reader.feed,
  }
  if res and res.status >= 200 and res.status <= 299 then
    local rest = reader.finish()
    if rest ~= "" then each_message(rest, on_message) end
  end
  st.last_id = reader.last_id() or st.last_id
  st.retry = reader.retry() or st.retry
  return res, err
end

-- What a GET for the server's stream can answer that says listening is
-- over: 405, none offered; 404, the session is gone (the next one listens
-- anew); 400, 406 and 401 or 403, refused (a request that gets through
-- again starts a listener again).
local STREAM_REFUSED = { [400] = true, [401] = true, [403] = true, [404] = true, [405] = true, [406] = true }
local LISTEN_FAILURES = 10

-- The server's own stream, listened to in the background (see the header):
-- opened again when it ends, until it is refused, the transport lets go of
-- it, or it failed LISTEN_FAILURES times in a row.
local function listen(self)
  local st, failures = {}, 0
  local function on_message(m)
    if type(m) == "table" and m.method ~= nil then self:serve(m) end -- (answers come to their POSTs)
  end
  while self.listener == core.current() do
    local res = self:get_stream(st, on_message, false, 0)
    if res and STREAM_REFUSED[res.status] then
      self.listening = res.status
      return
    end
    failures = (res and res.status >= 200 and res.status <= 299) and 0 or failures + 1
    if failures >= LISTEN_FAILURES then
      self.listening = "failed"
      return
    end
    -- (never at once: a server that ends every stream at once is not polled hot)
    core.sleep(math.max(reconnect_delay(st, math.max(failures - 1, 0)), 100), false)
  end
end

-- Starts listening for the current session, in place of any listener of
-- an earlier one.
function Http:listen()
  if self.listener then self.listener:cancel() end
  self.listening = "open"
  self.listener = core.spawn(listen, self)
end

-- self:post, and when the server closes the POST's stream before the
-- answer came, having given it an event id: the stream polled (GET with
-- Last-Event-ID, after its retry delay) until `answered()`, as the spec's
-- SSE polling says, giving up after five polls that bring no new event.
-- The last answer of tide.http (a poll's refusal marked `resumed`: its
-- request may have run, so nothing sends it again).
function Http:exchange(msg, timeout_ms, on_message, answered)
  local res, err = self:post(msg, timeout_ms, on_message)
  if not (res and res.status >= 200 and res.status <= 299 and res.last_event_id) or answered() then
    return res, err
  end
  local st, fruitless = { last_id = res.last_event_id, retry = res.retry_ms }, 0
  while not answered() and fruitless < 5 do
    core.sleep(reconnect_delay(st, fruitless))
    local before = st.last_id
    local got, gerr = self:get_stream(st, on_message, true, timeout_ms)
    if not got then return nil, gerr end
    if got.status < 200 or got.status > 299 then
      got.resumed = true
      return got
    end
    fruitless = st.last_id == before and fruitless + 1 or 0
  end
  return res
end

-- run() (an exchange) in a task of its own, waited for until `watch`'s
-- deadline (which its progress moves): its results, or nil and a Timeout
-- error (the exchange cancelled). Raises what cancels the caller, after
-- cancelling the exchange.
local function post_watched(run, timeout_ms, watch)
  local t = core.spawn(run)
  while true do
    local left = watch:deadline(timeout_ms) - core.now()
    if left <= 0 then
      t:cancel()
      return nil, core.error("Timeout", "no answer in time")
    end
    local fine, res, err = pcall(t.join, t, left)
    if not fine then
      t:cancel()
      error(res, 0)
    end
    local status = t:status()
    if status == "done" or status == "failed" then return res, err end
  end
end

function Http:send(method, params, timeout_ms, raw_params, watch, retried, authorized)
  local id = self.next_id
  self.next_id = id + 1
  -- (raw parameters go as they are: decoded and encoded again, an empty
  -- array in the model's arguments would reach the server an object)
  local msg = raw_params and ('{"id":%d,"jsonrpc":"2.0","method":%s,"params":%s}'):format(id, json.quote(method),
    raw_params) or { jsonrpc = "2.0", id = id, method = method, params = params or {} }
  self.src.requests = self.src.requests + 1
  -- The answer's messages as they come: a request of the server's is
  -- served at once, ours kept.
  local answers, answered = {}, false
  local function on_message(m)
    if type(m) == "table" and m.method ~= nil then
      self:serve(m)
    else
      answers[#answers + 1] = m
      if type(m) == "table" and m.id == id then answered = true end
    end
  end
  local function is_answered() return answered end
  local ok, res, err
  if watch then
    local cap = self.src.max_total_timeout_ms or 86400000
    ok, res, err = pcall(post_watched, function() return self:exchange(msg, cap, on_message, is_answered) end,
      timeout_ms, watch)
  else
    ok, res, err = pcall(self.exchange, self, msg, timeout_ms, on_message, is_answered)
  end
  if not ok then -- cancelled
    give_up(self, id, method, "cancelled")
    error(res, 0)
  end
  if not res then
    if err and err.code == "Timeout" then
      give_up(self, id, method, "timed out")
      return timed_out(self, method, timeout_ms, watch, nil, { cause = err })
    end
    return fail("ConnectionClosed", ("MCP server '%s' (%s): %s"):format(
      self.src.name, require("tide.redact").url_for_message(self.src.url), err and err.message or "request failed"),
      { cause = err })
  end
  if res.status == 404 and self.session_id and not retried and not res.resumed and method ~= "initialize" then
    -- The session expired (the server restarted): a new one, then again.
    self.session_id, self.protocol = nil, nil
    local _, ierr = self.src:_initialize(self)
    if ierr then return nil, ierr end
    return self:send(method, params, timeout_ms, raw_params, watch, true, authorized)
  end
  if res.status == 401 and res.sent_authorization and not self.src.oauth then
    -- (the credentials of its headers, refused: what it says of them)
    return fail("Unauthorized", ("MCP server '%s' answered %s with HTTP 401: %s"):format(
      self.src.name, method, short(res.body)))
  end
  if res.status == 401 or (res.status == 403 and self.src.oauth) then
    -- The server wants (other) OAuth authorization: got once, then again.
    local oauth = require "tide.integrations.mcp_oauth"
    if not self.src.oauth then return oauth.unconfigured(self.src, res) end
    if authorized then return fail("Unauthorized", ("MCP server '%s' refused the token it asked for (HTTP %d)")
      :format(self.src.name, res.status)) end
    local ok, aerr = oauth.answer(self.src, res, res.sent_authorization)
    if not ok then return nil, aerr end
    local result, rerr = self:send(method, params, timeout_ms, raw_params, watch, retried, true)
    -- (a listener refused before the token was got listens again)
    if result and method ~= "initialize" and self.session_id and self.listening ~= "open" and self.listening ~= 405 then
      self:listen()
    end
    return result, rerr
  end
  if res.status < 200 or res.status > 299 then
    return fail("ConnectionClosed", ("MCP server '%s' answered %s with HTTP %d: %s"):format(
      self.src.name, method, res.status, short(res.body)), { status = res.status })
  end
  if method == "initialize" then self.session_id = res.headers["mcp-session-id"] or self.session_id end
  local result, rerr
  for _, m in ipairs(answers) do
    if type(m) == "table" and m.id == id then
      if m.error ~= nil then
        rerr = core.error("ProviderError", rpc_error_text(m.error), { rpc = m.error })
      else
        result = m.result
      end
    end
  end
  if rerr then return nil, rerr end
  if result == nil then
    return fail("MalformedResponse", ("MCP server '%s' answered %s without a result: %s"):format(
      self.src.name, method, short(res.body)))
  end
  return result
end

Http.request = require("tide.integrations.mcp_telemetry").wrap(Http.send)

function Http:close()
  local listener = self.listener
  self.listener = nil
  if listener then listener:cancel() end
  if not self.session_id then return end
  local sid = self.session_id
  self.session_id = nil
  local http = require "tide.http"
  local h = self:headers()
  h["mcp-session-id"] = sid
  pcall(http.request, { method = "DELETE", url = self.src.url, headers = h, timeout_ms = 2000 })
end

-- ----------------------------------------------------------- the source --

local OPTIONS = {
  name = true, command = true, env = true, cwd = true, url = true, headers = true,
  timeout_ms = true, max_message_bytes = true, approval = true, description = true, sampling = true,
  elicit = true, roots = true, max_total_timeout_ms = true, on_log = true, log_level = true, resources = true,
  oauth = true, on_resource_updated = true,
}

-- The roots option as the protocol lists them: { uri = "file://...", name }
-- for each absolute path (its bytes percent-encoded where a URI needs it)
-- or { uri, name } given; nil and what is wrong.
local function roots_of(list)
  if type(list) ~= "table" or #list == 0 then return nil, "field 'roots' must be a non-empty list" end
  local out = json.array()
  for i, r in ipairs(list) do
    if type(r) == "string" then
      if r:sub(1, 1) ~= "/" then return nil, ("roots[%d] must be an absolute path"):format(i) end
      local path = r:gsub("[^%w%-%._~/]", function(c) return ("%%%02X"):format(c:byte()) end)
      out[i] = { uri = "file://" .. path, name = r:match("([^/]+)/*$") or "/" }
    elseif type(r) == "table" and type(r.uri) == "string" and r.uri:match("^file://")
        and (r.name == nil or type(r.name) == "string") then
      out[i] = { uri = r.uri, name = r.name }
    else
      return nil, ("roots[%d] must be an absolute path or { uri = \"file://...\", name }"):format(i)
    end
  end
  return out
end

local function arg_error(msg) error("bad argument #1 to 'mcp' (" .. msg .. ")", 4) end

--- A source serving the tools of one MCP server as the toolkit `name`.
--- Either `command` (stdio: argv of the server, with `env` added to a
--- minimal inherited environment and `cwd`) or `url` (Streamable HTTP, with
--- extra `headers`). `timeout_ms` bounds each request (60000).
--- `sampling`, `elicit` and `roots` make tide serve the server's requests
--- of those capabilities (see the modules named in this file's header).
---@param opts {name: string, command?: string[], env?: table<string,string>, cwd?: string, url?: string, headers?: table<string,string>, timeout_ms?: integer, max_message_bytes?: integer, approval?: any, description?: string, sampling?: {provider: table, approve?: fun(params: table): boolean, string?, max_tokens?: integer}, elicit?: fun(request: table, errors?: string[]): string, table?, roots?: (string|{uri: string, name?: string})[]}
---@return tide.integrations.mcp
function mcp.new(opts)
  if type(opts) ~= "table" then arg_error("table expected, got " .. type(opts)) end
  for k in pairs(opts) do
    if not OPTIONS[k] then arg_error(("unknown option '%s'"):format(tostring(k))) end
  end
  local name = opts.name
  if type(name) ~= "string" or not name:match("^[%w_-]+$") or #name > 48 then
    arg_error("field 'name' must be 1-48 letters, digits, '_' or '-'")
  end
  if (opts.command == nil) == (opts.url == nil) then
    arg_error("give exactly one of 'command' (stdio) and 'url' (Streamable HTTP)")
  end
  local command
  if opts.command ~= nil then
    if type(opts.command) ~= "table" or #opts.command == 0 then
      arg_error("field 'command' must be an array of strings")
    end
    command = {}
    for i, a in ipairs(opts.command) do
      if type(a) ~= "string" then arg_error("field 'command' must be an array of strings") end
      command[i] = a
    end
    if opts.headers ~= nil then arg_error("'headers' is for a 'url' source") end
  else
    if type(opts.url) ~= "string" or not opts.url:match("^https?://") then
      arg_error("field 'url' must be an http:// or https:// URL")
    end
    if opts.env ~= nil or opts.cwd ~= nil then arg_error("'env' and 'cwd' are for a 'command' source") end
  end
  for _, k in ipairs { "env", "headers" } do
    local t = opts[k]
    if t ~= nil then
      if type(t) ~= "table" then arg_error(("field '%s' must be a table"):format(k)) end
      for n, v in pairs(t) do
        if type(n) ~= "string" or type(v) ~= "string" then
          arg_error(("field '%s' must map names to strings"):format(k))
        end
      end
    end
  end
  if opts.cwd ~= nil and type(opts.cwd) ~= "string" then arg_error("field 'cwd' must be a string") end
  for _, k in ipairs { "timeout_ms", "max_message_bytes", "max_total_timeout_ms" } do
    local v = opts[k]
    if v ~= nil and (math.type(v) ~= "integer" or v <= 0) then
      arg_error(("field '%s' must be a positive integer"):format(k))
    end
  end
  require("tide.approval").check_rule(opts.approval, "tide.integrations.mcp: ", 2)
  local sampling, serr
  if opts.sampling ~= nil then
    sampling, serr = require("tide.integrations.mcp_sampling").check(opts.sampling)
    if not sampling then arg_error(serr) end
  end
  if opts.elicit ~= nil and type(opts.elicit) ~= "function" then arg_error("field 'elicit' must be a function") end
  for _, k in ipairs { "on_log", "on_resource_updated" } do
    if opts[k] ~= nil and type(opts[k]) ~= "function" then arg_error(("field '%s' must be a function"):format(k)) end
  end
  if opts.log_level ~= nil and not LOG_LEVELS[opts.log_level] then
    arg_error("field 'log_level' must be one of debug, info, notice, warning, error, critical, alert, emergency")
  end
  if opts.resources ~= nil and type(opts.resources) ~= "boolean" then arg_error("field 'resources' must be a boolean") end
  local oauth, oerr
  if opts.oauth ~= nil then
    if not opts.url then arg_error("'oauth' is for a 'url' source (a stdio server takes its credentials from env)") end
    for k in pairs(opts.headers or {}) do
      if k:lower() == "authorization" then arg_error("give either 'oauth' or an Authorization header, not both") end
    end
    oauth, oerr = require("tide.integrations.mcp_oauth").check(opts.oauth)
    if not oauth then arg_error(oerr) end
  end
  local roots, rerr
  if opts.roots ~= nil then
    roots, rerr = roots_of(opts.roots)
    if not roots then arg_error(rerr) end
  end
  local self = setmetatable({
    kind = "mcp",
    name = name,
    transport = command and "stdio" or "http",
    command = command, env = opts.env, cwd = opts.cwd,
    url = opts.url, headers = opts.headers,
    timeout_ms = opts.timeout_ms or DEFAULT_TIMEOUT_MS,
    max_message_bytes = opts.max_message_bytes or DEFAULT_MAX_MESSAGE,
    description = opts.description,
    approval = opts.approval,
    requests = 0, spawns = 0, list_changes = 0, streams = 0,
    schemas = {},
    -- sampling/createMessage served (tide.integrations.mcp_sampling), and its counts
    sampling_config = sampling,
    sampling = sampling and { requests = 0, rejected = 0, failed = 0, input_tokens = 0, output_tokens = 0 } or nil,
    -- elicitation/create put to a person (tide.integrations.mcp_elicitation)
    elicit = opts.elicit,
    elicitation = opts.elicit and { requests = 0, accepted = 0, declined = 0, cancelled = 0 } or nil,
    -- (the tasks tide runs for the server: tide.integrations.mcp_client_tasks)
    client_tasks = (sampling or opts.elicit) and {} or nil, client_task_seq = 0,
    roots = roots, -- what roots/list answers
    -- a call's progress (notifications/progress), by its token
    progress = {}, next_token = 1, max_total_timeout_ms = opts.max_total_timeout_ms,
    -- the server's logs (notifications/message), from log_level up
    on_log = opts.on_log, log_level = opts.log_level,
    -- the model may list and read the server's resources
    offer_resources = opts.resources,
    on_resource_updated = opts.on_resource_updated, -- (notifications/resources/updated)
    -- OAuth 2.1 for a server that asks (tide.integrations.mcp_oauth)
    oauth = oauth,
  }, Mcp)
  -- Headers and env may hold secrets: the identity carries their hash.
  -- (a server may offer other tools to a client that samples)
  local what = command and { command = command, env = opts.env or {}, cwd = opts.cwd or "" }
    or { url = opts.url, headers = opts.headers or {} }
  what.sampling, what.elicit, what.roots = sampling and true, opts.elicit and true, roots
  what.resources = opts.resources or nil -- (two more tools)
  -- (whose grant it is decides what a server offers: one entry per store)
  what.oauth = oauth and tostring(oauth.store or oauth) or nil
  self.id = name .. "|" .. core.cache_hash(json.canonical(what))
  return self
end

--- "mcp|<name>|<hash of the command, env and cwd, or url and headers>".
---@return string
function Mcp:identity() return "mcp|" .. self.id end

-- What the client declares it serves: sampling (with tools, without
-- context), elicitation (forms and URLs) and roots, when the source was
-- given them; nothing else.
local function client_capabilities(self)
  local caps = {}
  if self.sampling_config then caps.sampling = { tools = {} } end
  if self.elicit then caps.elicitation = { form = {}, url = {} } end
  if self.roots then caps.roots = {} end
  caps.tasks = require("tide.integrations.mcp_client_tasks").capability(self)
  return caps
end

-- initialize, version check, notifications/initialized.
function Mcp:_initialize(conn)
  local res, err = conn:request("initialize", {
    protocolVersion = PROTOCOL,
    capabilities = client_capabilities(self),
    clientInfo = { name = "tide", version = core.version },
  }, self.timeout_ms)
  if not res then return nil, err end
  if type(res) ~= "table" or not SUPPORTED[res.protocolVersion] then
    return fail("MalformedResponse", ("MCP server '%s' speaks protocol %s; tide speaks %s, 2025-06-18, 2025-03-26 and 2024-11-05"):format(
      self.name, tostring(type(res) == "table" and res.protocolVersion), PROTOCOL))
  end
  conn.protocol = res.protocolVersion
  conn.server_info = type(res.serverInfo) == "table" and res.serverInfo or {}
  conn.instructions = type(res.instructions) == "string" and res.instructions or nil
  conn.capabilities = type(res.capabilities) == "table" and res.capabilities or {}
  -- Over HTTP the notification is posted before any other request goes.
  conn:notify("notifications/initialized", {}, true)
  if conn.listen then conn:listen() end -- (Streamable HTTP: the server's own stream)
  if self.log_level and type(conn.capabilities.logging) == "table" then
    -- (a server that refuses a level still serves its tools)
    local _, lerr = conn:request("logging/setLevel", { level = self.log_level }, self.timeout_ms)
    self.log_level_error = lerr and lerr.message or nil
  end
  return conn
end

-- A connection that is not initialized is let go, whatever stopped it:
-- the server process ended, an HTTP session ended (the spec's
-- disconnect), also when the task asking was cancelled meanwhile.
local function let_go(conn)
  if conn.proc then
    conn.dead = conn.dead or "initialize failed"
    if conn.reader then conn.reader:cancel() end
    conn.proc:close(200)
  else
    pcall(conn.close, conn)
  end
end

-- conn initialized: true, or false and why (conn let go). Raises what
-- cancels the caller, after letting conn go.
local function initialized(self, conn)
  local raised, ok, ierr = pcall(self._initialize, self, conn)
  if not raised then
    let_go(conn)
    error(ok, 0)
  end
  if not ok then let_go(conn) end
  return ok ~= nil, ierr
end

-- What a POST of initialize may get from a server of the old HTTP+SSE
-- transport (tide.integrations.mcp_sse).
local OLD_TRANSPORT = { [400] = true, [404] = true, [405] = true }

local function connect(self)
  local conn, err
  local sse = require "tide.integrations.mcp_sse"
  if self.transport == "stdio" then
    conn, err = open_stdio(self)
    if not conn then
      return fail("ConnectionClosed", ("cannot start MCP server '%s': %s"):format(self.name, err.message), { cause = err })
    end
  elseif self.legacy_sse then
    conn, err = sse.open(self)
    if not conn then
      return fail("ConnectionClosed", ("MCP server '%s' could not be reached over HTTP+SSE: %s"):format(
        self.name, err.message), { cause = err })
    end
  else
    conn = open_http(self)
  end
  local ok, ierr = initialized(self, conn)
  if not ok and not conn.legacy_sse and self.transport == "http" and OLD_TRANSPORT[ierr.status] then
    -- Perhaps a server of the old transport: tried as the spec says.
    local old, oerr = sse.open(self)
    if old then ok, oerr = initialized(self, old) end
    if ok then
      self.legacy_sse, conn = true, old
    else
      ierr = core.error(ierr.code, ("%s; nor is it an HTTP+SSE server: %s"):format(ierr.message, oerr.message),
        { status = ierr.status })
    end
  end
  if not ok then
    if ierr.code == "Unauthorized" then return nil, ierr end -- (what to do about it is in its message)
    return fail("ConnectionClosed", ("MCP server '%s' could not be initialized: %s"):format(
      self.name, ierr.message or tostring(ierr)), { cause = ierr })
  end
  self.conn = conn
  return conn
end

-- The live connection, made (once, however many tasks ask) when missing.
function Mcp:_connection()
  local conn = self.conn
  if conn and not conn.dead then
    -- (a listener's tide.run ended, cancelling it: this one listens again)
    local l = conn.listener
    if l and conn.listening == "open" and (l:status() == "done" or l:status() == "failed") then conn:listen() end
    return conn
  end
  local t = self.connecting
  if t == nil or t:status() == "done" or t:status() == "failed" then
    t = core.spawn(connect, self)
    self.connecting = t
  end
  local c, err = t:join()
  if self.connecting == t then self.connecting = nil end
  if not c then return nil, err end
  return c
end

-- The tools of one page, as toolkit tools.
local function add_tools(self, out, list)
  if type(list) ~= "table" then error("tools/list answered without a 'tools' array", 0) end
  for _, t in ipairs(list) do
    if type(t) ~= "table" or type(t.name) ~= "string" then error("tools/list gave a tool without a name", 0) end
    local params = type(t.inputSchema) == "table" and t.inputSchema or { type = "object", properties = {} }
    local ann = type(t.annotations) == "table" and t.annotations or {}
    local entry = {
      name = t.name,
      description = type(t.description) == "string" and t.description
        or type(t.title) == "string" and t.title or "",
      parameters = params,
      output_schema = type(t.outputSchema) == "table" and t.outputSchema or nil,
      destructive = ann.destructiveHint == true or nil,
      -- called as a task when "required" (tide.integrations.mcp_tasks)
      task_support = type(t.execution) == "table" and type(t.execution.taskSupport) == "string"
        and t.execution.taskSupport or nil,
    }
    self.schemas[t.name] = entry
    out[#out + 1] = entry
  end
end

-- The listed tool `action` ({ parameters, output_schema }): from this
-- object's own fetch, else from the shared cache's snapshot (another
-- process, or another object of the same identity, listed the tools):
-- arguments are shaped by its input schema, a structured result checked
-- against its output schema.
local function listed(self, action)
  local s = self.schemas[action]
  if s then return s end
  local snap = require("tide.integrations.cache").peek(self)
  for _, tk in ipairs(snap and snap.toolkits or {}) do
    for _, t in ipairs(tk.tools or {}) do
      if t.name == action then
        self.schemas[action] = t
        return t
      end
    end
  end
  return nil
end

-- Why a successful result breaks the tool's output schema, or nil. As
-- the specification asks of clients and its official SDKs do: a tool
-- that declares one must give structured content that validates.
local function output_mismatch(self, action, res)
  local tool = listed(self, action)
  local out = tool and tool.output_schema
  if type(out) ~= "table" then return nil end
  local sc = res.structuredContent
  if type(sc) ~= "table" or sc == json.null then
    return ("MCP tool %s/%s declares an output schema but gave no structured content"):format(self.name, action)
  end
  local errs = require("tide.schema").validate_lenient(sc, out)
  if not errs then return nil end
  return ("MCP tool %s/%s gave a structured result that does not match its output schema: %s"):format(self.name,
    action, table.concat(errs, "; "))
end

-- Every page of list `method` on `conn`, followed through `nextCursor`
-- (at most MAX_PAGES of `what`): on_page(result) for each, which returns
-- what is wrong with a page, if anything. True, or nil and the error.
local function each_page(self, conn, method, what, on_page)
  local cursor, pages = nil, 0
  repeat
    local res, err = conn:request(method, cursor and { cursor = cursor } or {}, self.timeout_ms)
    if not res then return nil, err end
    local why = on_page(res)
    if why then return fail("MalformedResponse", why) end
    cursor = res.nextCursor
    if cursor == json.null then cursor = nil end
    pages = pages + 1
    if pages >= MAX_PAGES then
      return fail("MalformedResponse", ("MCP server '%s' gave over %d pages of %s"):format(self.name, MAX_PAGES, what))
    end
  until cursor == nil
  return true
end

local function fetch(self)
  local conn, err = self:_connection()
  if not conn then return nil, err end
  local tools = {}
  local ok, lerr = each_page(self, conn, "tools/list", "tools", function(res)
    local fine, why = pcall(add_tools, self, tools, type(res) == "table" and res.tools)
    if not fine then return ("MCP server '%s': %s"):format(self.name, why) end
  end)
  if not ok then return nil, lerr end
  if self.offer_resources and type(conn.capabilities.resources) == "table" then
    local taken = {}
    for _, t in ipairs(tools) do taken[t.name] = true end
    for _, entry in ipairs(require("tide.integrations.mcp_resources").tool_entries(self, taken)) do
      self.schemas[entry.name] = entry
      tools[#tools + 1] = entry
    end
  end
  local info = conn.server_info or {}
  local desc = self.description or conn.instructions
    or ("Tools of the MCP server %s%s."):format(tostring(info.title or info.name or self.name),
      info.version and (" " .. tostring(info.version)) or "")
  return { { slug = self.name, description = desc, connected = true, tools = tools } }
end

--- Lists the server's tools (every page): one toolkit `{ slug = name,
--- connected = true, tools }`, or nil and an error. Connects first when
--- needed. Runs in a task; sessions call it through the shared cache.
---@return tide.integrations.toolkit[]|nil toolkits
---@return table|nil err
-- What must never leave in this source's errors: its headers'
-- credentials, the secret-named values of its environment, its URL's query
-- values and user information (a server may echo any of them back).
local function secrets_of(self)
  local redact = require "tide.redact"
  local extra = redact.url_secrets(self.url)
  for k, v in pairs(self.env or {}) do
    if type(k) == "string" and type(v) == "string" and redact.secret_header(k:lower()) then extra[#extra + 1] = v end
  end
  local headers = {}
  for k, v in pairs(self.headers or {}) do if type(k) == "string" then headers[k:lower()] = v end end
  if self.oauth then
    for _, v in ipairs(require("tide.integrations.mcp_oauth").secrets(self)) do extra[#extra + 1] = v end
  end
  return redact.secrets(nil, headers, nil, extra)
end

-- fn(self, ...)'s results, with the error redacted.
local function redacted(self, fn, ...)
  local v, err = blocking(fn, self, ...)
  if v == nil and type(err) == "table" then require("tide.redact").error(err, secrets_of(self)) end
  return v, err
end

function Mcp:fetch()
  return redacted(self, fetch)
end

local function execute(self, action, args, ctx)
  local entry = listed(self, action)
  if entry and entry.mcp_resources then -- the model's list_resources or read_resource
    return require("tide.integrations.mcp_resources").execute(self, action, args)
  end
  local conn, err = self:_connection()
  if not conn then
    return fail("ToolError", ("MCP server '%s' is unavailable: %s"):format(self.name, err.message or tostring(err)),
      { cause = err })
  end
  local tasks = require "tide.integrations.mcp_tasks"
  if entry == nil and tasks.offered(conn) then
    -- (a tool called before anyone listed them: whether it must be a task)
    fetch(self)
    entry = listed(self, action)
  end
  local as_task = tasks.required(conn, entry)
  local raw
  if type(args) == "string" then
    -- The model's own JSON text, passed through; JSON white space may hold
    -- newlines, which the stdio framing forbids (inside strings they are
    -- always escaped).
    local v = json.decode(args ~= "" and args or "{}")
    if type(v) ~= "table" then return fail("ToolError", "the arguments are not a JSON object") end
    if as_task then
      args = v -- (shaped by the tool's schema below)
    else
      raw = ('{"arguments":%s,"name":%s}'):format(args ~= "" and args:gsub("[\r\n]", " ") or "{}", json.quote(action))
    end
  elseif args == nil then
    args = {}
  elseif type(args) ~= "table" then
    return fail("ToolError", "the arguments must be a table or JSON text")
  end
  -- Every call asks for progress: it moves the call's deadline, and the
  -- turn's listeners hear it.
  local watch <close> = new_watch(self, action, ctx)
  local res, cerr
  if raw then
    raw = ('{"_meta":{"progressToken":%d},%s'):format(watch.token, raw:sub(2))
    res, cerr = conn:request("tools/call", nil, self.timeout_ms, raw, watch)
  else
    local params = { _meta = { progressToken = watch.token }, name = action,
      arguments = conform(args, entry and entry.parameters, 0) }
    if as_task then
      res, cerr = tasks.call(self, conn, params, watch)
    else
      res, cerr = conn:request("tools/call", params, self.timeout_ms, nil, watch)
    end
  end
  if watch.failed then error(watch.failed, 0) end
  if not res then
    return fail("ToolError", ("MCP tool %s/%s failed: %s"):format(self.name, action, cerr.message or tostring(cerr)),
      { cause = cerr })
  end
  if type(res) ~= "table" then
    return fail("ToolError", ("MCP tool %s/%s gave a malformed result"):format(self.name, action))
  end
  local text = result_text(res)
  if res.isError == true then
    return fail("ToolError", text ~= "" and text or ("MCP tool %s/%s failed"):format(self.name, action))
  end
  local mismatch = output_mismatch(self, action, res)
  if mismatch then return fail("ToolError", mismatch) end
  return result_parts(res) or text
end

--- Calls tool `action` with `args` (a table, or the model's JSON text,
--- passed through as written): the text of the result (text blocks
--- joined; structuredContent as JSON when there is no text), or, for a
--- result with an image, its text and image parts in order (the model sees
--- the image); or nil and a ToolError (the tool's isError, a JSON-RPC
--- error, a timeout, a server that died). `ctx` is the tool call's (its
--- `call_id` goes on the call's `tool_progress` events).
---@param action string
---@param args table|string|nil
---@param ctx? {call_id?: string}
---@return string|table|nil result
---@return table|nil err
function Mcp:execute(action, args, ctx)
  return redacted(self, execute, action, args, ctx)
end

-- Resources and prompts (tide.integrations.mcp_resources), their errors
-- redacted as the tools' are.
local resources = function() return require "tide.integrations.mcp_resources" end

--- The server's resources, every page: `{ uri, name, title, description,
--- mime, size }` each; or nil and an error (ProviderError when the server
--- declares no resources).
---@return table[]|nil
---@return table|nil err
function Mcp:resources() return redacted(self, resources().resources) end

--- The server's resource templates: `{ uri_template, name, title,
--- description, mime }` each; or nil and an error.
---@return table[]|nil
---@return table|nil err
function Mcp:resource_templates() return redacted(self, resources().resource_templates) end

--- The contents of resource `uri`: `{ uri, mime, text }` or `{ uri, mime,
--- data }` (base64) each; or nil and an error.
---@param uri string
---@return table[]|nil
---@return table|nil err
function Mcp:read(uri)
  if type(uri) ~= "string" or uri == "" then error("bad argument #1 to 'read' (a resource URI expected)", 2) end
  return redacted(self, resources().read, uri)
end

--- Asks the server to tell `on_resource_updated` of changes to `uri`:
--- true, or nil and an error.
---@param uri string
---@return true|nil
---@return table|nil err
function Mcp:subscribe(uri)
  if type(uri) ~= "string" or uri == "" then error("bad argument #1 to 'subscribe' (a resource URI expected)", 2) end
  return redacted(self, resources().subscribe, uri)
end

--- Stops what subscribe(uri) started: true, or nil and an error.
---@param uri string
---@return true|nil
---@return table|nil err
function Mcp:unsubscribe(uri)
  if type(uri) ~= "string" or uri == "" then error("bad argument #1 to 'unsubscribe' (a resource URI expected)", 2) end
  return redacted(self, resources().subscribe, uri, true)
end

--- The server's prompts, every page: `{ name, title, description,
--- arguments = { { name, description, required } } }` each.
---@return table[]|nil
---@return table|nil err
function Mcp:prompts() return redacted(self, resources().prompts) end

--- Prompt `name` with `args` (strings): `{ description, messages = { {
--- role, content } } }`, content a string or a tide.image / tide.file
--- part, ready for s:turn(); or nil and an error.
---@param name string
---@param args? table<string, string>
---@return table|nil
---@return table|nil err
function Mcp:prompt(name, args)
  local sent = resources().prompt_args(name, args)
  return redacted(self, resources().prompt, name, sent)
end

--- Ends the connection: a stdio server gets end of input, SIGTERM, then
--- SIGKILL; an HTTP session is deleted. The next request connects again.
function Mcp:close()
  local conn = self.conn
  self.conn = nil
  if conn then blocking(function() conn:close() end) end
end

function Mcp:__tostring() return "tide.integrations.mcp (" .. self.name .. ")" end

-- The parsers of what a server sends, for the fuzz target (fuzz/fuzz_mcp.c).
mcp._parse = { messages_of = messages_of, answer_reader = answer_reader, each_message = each_message,
  result_text = result_text, result_parts = result_parts, add_tools = add_tools }
mcp._each_page = each_page -- (resources and prompts are listed the same way)
-- (what the old HTTP+SSE transport, tide.integrations.mcp_sse, shares)
mcp._kit = { on_server_message = on_server_message, encode = encode, rpc_error_text = rpc_error_text, fail = fail,
  short = short, each_message = each_message, give_up = give_up, timed_out = timed_out, die = die,
  headers = source_headers }

return mcp
