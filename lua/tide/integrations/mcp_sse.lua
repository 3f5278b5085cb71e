--- tide.integrations.mcp_sse: MCP's deprecated HTTP+SSE transport
--- (protocol 2024-11-05), for the servers that still speak only it.
---
--- A source with a `url` speaks Streamable HTTP first. As the 2025-11-25
--- specification's "Backwards Compatibility" has a client do, when the
--- POST of `initialize` is refused with 400, 404 or 405, tide GETs the URL
--- instead: a server of the old transport answers with an SSE stream whose
--- first event, `endpoint`, gives the URI to POST every message to (on the
--- same origin, else tide refuses it: the headers carry the server's
--- credentials, as the TypeScript SDK's SSEClientTransport refuses it too).
--- Every answer and every message of the server's comes on that one
--- stream, as `message` events; a POST is answered 202 with no body.
--- The source then keeps to this transport (`src.legacy_sse`).
---
--- The stream is read in the background without holding the loop (a
--- request waiting for its answer holds it, until its deadline); when it
--- ends the connection is dead, every request in flight fails, and the
--- next one connects again (a new stream is a new session: the old
--- transport has no resuming).
local core = require "tide.core"
local json = require "tide.json"

local M = {}

local Sse = {}
Sse.__index = Sse

-- mcp.lua's own helpers (loaded by the time a connection is made).
local function kit() return require("tide.integrations.mcp")._kit end

local function origin_of(url) return url:match("^(%a[%w+.-]*://[^/?#]+)") end

-- The endpoint event's URI resolved against the stream's URL: an absolute
-- one on the same origin, an absolute path, or a path relative to the
-- URL's folder. nil and why it is refused.
local function resolve(base, ref)
  ref = ref:match("^%s*(.-)%s*$")
  if ref == "" then return nil, "an empty endpoint" end
  local origin = origin_of(base)
  local url
  if ref:match("^%a[%w+.-]*:") then
    url = ref
  elseif ref:sub(1, 2) == "//" then
    url = base:match("^(%a[%w+.-]*:)") .. ref
  elseif ref:sub(1, 1) == "/" then
    url = origin .. ref
  else
    local path = base:sub(#origin + 1):match("^([^?#]*)")
    url = origin .. (path:match("^(.*/)") or "/") .. ref
  end
  if origin_of(url) ~= origin then
    return nil, ("an endpoint on another origin (%s)"):format(tostring(origin_of(url)))
  end
  return url
end

-- The connection is over: every request in flight fails (its waiter
-- woken: mcp.lua's die), the opener too, and the next request connects
-- again.
local function die(conn, why)
  kit().die(conn, why)
  if conn.opening.waiter then conn.opening.waiter:cancel() end
end

-- One message of the stream: an answer settles its request, the rest is
-- the server's (served; a request's answer POSTed from a task of its own).
local function on_message(conn, m)
  if type(m) ~= "table" then return end
  local K = kit()
  if m.method ~= nil then
    K.on_server_message(conn.src, m, function(r)
      core.spawn(function() pcall(conn.post, conn, K.encode(r)) end)
    end)
    return
  end
  local req = m.id ~= nil and conn.pending[m.id]
  if not req then return end
  conn.pending[m.id] = nil
  req.done = true
  if m.error ~= nil then
    req.err = core.error("ProviderError", K.rpc_error_text(m.error), { rpc = m.error })
  else
    req.result = m.result
  end
  if req.waiter then req.waiter:cancel() end
end

-- Reads the stream until it ends, then lets the connection die.
local function read(conn)
  local src = conn.src
  local parser <close> = core.sse_parser(src.max_message_bytes)
  local function on_data(chunk)
    local events, perr = parser:feed(chunk)
    if not events then error(perr, 0) end
    for _, ev in ipairs(events) do
      if ev.event == "endpoint" and not conn.endpoint then
        local url, why = resolve(src.url, ev.data)
        if not url then error(core.error("MalformedResponse", "the server gave " .. why), 0) end
        conn.endpoint, conn.opening.done = url, true
        if conn.opening.waiter then conn.opening.waiter:cancel() end
      elseif ev.event == "message" and ev.data ~= "" then
        kit().each_message(ev.data, function(m) on_message(conn, m) end)
      end
    end
  end
  local ok, res, err = pcall(require("tide.http").request, {
    method = "GET", url = src.url, headers = kit().headers(src, { accept = "text/event-stream" }),
    hold = false, timeout_ms = 0, max_body_bytes = src.max_message_bytes, on_data = on_data,
  })
  local why
  if not ok then
    why = type(res) == "table" and res.message or tostring(res)
  elseif not res then
    why = err and err.message or "the stream failed"
  elseif res.status < 200 or res.status > 299 then
    why = ("GET answered HTTP %d: %s"):format(res.status, kit().short(res.body))
  else
    why = "the server ended its stream"
  end
  die(conn, ("MCP server '%s' (HTTP+SSE): %s"):format(src.name, why))
  if not ok and type(res) == "table" and res.code == "Cancelled" then error(res, 0) end -- (it goes on)
end

-- Waits for req.done (or the connection's end) until deadline() passes,
-- holding the loop meanwhile: true, or false at the deadline. A waiter
-- task sleeps until then; whoever settles req cancels it.
local function await(conn, req, deadline)
  while not req.done and not conn.dead do
    local left = deadline() - core.now()
    if left <= 0 then return false end
    local w = core.spawn(core.sleep, left)
    req.waiter = w
    local ok, err = pcall(w.join, w)
    req.waiter = nil
    if not ok then -- the caller was cancelled
      w:cancel()
      error(err, 0)
    end
  end
  return true
end

--- Opens the stream and waits for its endpoint (at most the source's
--- timeout_ms): the connection, or nil and an error.
---@param src table the source (tide.integrations.mcp)
---@return table|nil conn
---@return table|nil err
function M.open(src)
  local conn = setmetatable({ src = src, next_id = 1, pending = {}, legacy_sse = true, opening = {} }, Sse)
  conn.reader = core.spawn(read, conn)
  local until_ = core.now() + src.timeout_ms
  local ok, err = pcall(await, conn, conn.opening, function() return until_ end)
  if not ok then
    conn:close()
    error(err, 0)
  end
  if not conn.endpoint then
    local why = conn.dead or ("no endpoint event within %d ms"):format(src.timeout_ms)
    conn:close()
    return nil, core.error("ConnectionClosed", why)
  end
  return conn
end

-- POSTs one message's JSON text to the endpoint: true, or nil and an error.
function Sse:post(body)
  local src = self.src
  local res, err = require("tide.http").request {
    method = "POST", url = self.endpoint, headers = kit().headers(src, { ["content-type"] = "application/json" }),
    body = body, timeout_ms = src.timeout_ms, max_body_bytes = 65536,
  }
  if not res then return nil, err end
  if res.status < 200 or res.status > 299 then
    return nil, core.error(res.status == 401 and "Unauthorized" or "ConnectionClosed",
      ("MCP server '%s' answered a message with HTTP %d: %s"):format(src.name, res.status, kit().short(res.body)))
  end
  return true
end

function Sse:notify(method, params, wait)
  if self.dead then return end
  local body = kit().encode { jsonrpc = "2.0", method = method, params = params }
  if wait then return self:post(body) end
  core.spawn(function() pcall(self.post, self, body) end) -- (nobody needs the 202)
end

--- Sends request `method` and waits for its answer on the stream, as
--- the other transports do (see Stdio:send in mcp.lua).
function Sse:send(method, params, timeout_ms, raw_params, watch)
  local K = kit()
  if self.dead then return K.fail("ConnectionClosed", self.dead) end
  local id = self.next_id
  self.next_id = id + 1
  local body = raw_params and ('{"id":%d,"jsonrpc":"2.0","method":%s,"params":%s}'):format(
    id, json.quote(method), raw_params)
    or K.encode { jsonrpc = "2.0", id = id, method = method, params = params or {} }
  local req = { id = id }
  self.pending[id] = req -- (before the POST: the answer may come first)
  self.src.requests = self.src.requests + 1
  local fixed = core.now() + timeout_ms
  local function deadline() return watch and watch:deadline(timeout_ms) or fixed end
  local cancelled
  local ok, posted, perr = pcall(self.post, self, body)
  if not ok then
    cancelled = posted
  elseif posted or req.done then
    local fine, e = pcall(await, self, req, deadline)
    if not fine then cancelled = e end
  end
  if cancelled then
    self.pending[id] = nil
    if not req.done then K.give_up(self, id, method, "cancelled") end
    error(cancelled, 0)
  end
  if not req.done then
    self.pending[id] = nil
    if not posted then return nil, perr end
    if self.dead then return K.fail("ConnectionClosed", self.dead) end
    K.give_up(self, id, method, "timed out")
    return K.timed_out(self, method, timeout_ms, watch)
  end
  if req.err then return nil, req.err end
  return req.result
end

-- (requests are observed: tide.integrations.mcp_telemetry)
Sse.request = require("tide.integrations.mcp_telemetry").wrap(Sse.send)

function Sse:close()
  die(self, ("the connection to MCP server '%s' was closed"):format(self.src.name))
  if self.reader then self.reader:cancel() end
end

M._resolve = resolve -- (for the specs)

return M
