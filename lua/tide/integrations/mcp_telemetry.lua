--- tide.integrations.mcp_telemetry: the requests tide makes of MCP servers
--- as the OpenTelemetry semantic conventions for MCP describe them
--- (docs/gen-ai/mcp.md, status Development), when tide.tracing is on:
---   * a CLIENT span `{mcp.method.name} {target}` (the tool or prompt) for
---     each request made inside a traced turn, under the span the request
---     is made in; a `tools/call` made for a tool call gives its MCP
---     attributes to that call's own `execute_tool` span instead, as the
---     conventions ask of an instrumentation that an agent's already
---     covers;
---   * the trace context in the request's `params._meta.traceparent`, so
---     that an instrumented server's spans join the trace;
---   * the `mcp.client.operation.duration` histogram (tide.metrics), for
---     every request, sampled or not.
--- Attributes: mcp.method.name, gen_ai.tool.name, gen_ai.prompt.name,
--- mcp.resource.uri (spans only), jsonrpc.request.id (spans only),
--- mcp.protocol.version, mcp.session.id (spans only), network.transport
--- (`pipe` for stdio, `tcp` for Streamable HTTP), server.address and
--- server.port, gen_ai.operation.name (`execute_tool` for tools/call);
--- a failure's error.type (the JSON-RPC error's code, `tool_error` for a
--- tool's isError, `timeout`, else tide's error code) and
--- rpc.response.status_code (the JSON-RPC error's code).
--- With tracing off a request costs one test of a nil more.
local core = require "tide.core"
local tracing = require "tide.tracing"

local M = {}

-- The server's address and port, from a Streamable HTTP source's URL.
local function address_of(url)
  local scheme, host, port = url:match("^(%a+)://[^/?#@]*@?%[?([^/?#%]:]+)%]?:?(%d*)")
  if not host then return nil end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  return host, port
end

-- The request's trace context in its params (a table, or JSON text that
-- is an object): `_meta.traceparent`.
local function inject(params, raw, traceparent)
  if raw then
    if raw:sub(1, 10) == '{"_meta":{' then
      return nil, ('{"_meta":{"traceparent":"%s",%s'):format(traceparent, raw:sub(11))
    end
    return nil, ('{"_meta":{"traceparent":"%s"},%s'):format(traceparent, raw:sub(2))
  end
  params = params or {}
  local meta = {}
  for k, v in pairs(type(params._meta) == "table" and params._meta or {}) do meta[k] = v end
  meta.traceparent = traceparent
  params._meta = meta
  return params, nil
end

-- The low-cardinality class of a failure, and the JSON-RPC code if any.
local function failure_of(method, res, err)
  if err then
    local rpc = type(err) == "table" and err.rpc
    if type(rpc) == "table" and rpc.code ~= nil then return tostring(rpc.code), tostring(rpc.code) end
    local code = type(err) == "table" and err.code or "error"
    return code == "Timeout" and "timeout" or code, nil
  end
  if method == "tools/call" and type(res) == "table" and res.isError == true then return "tool_error", nil end
  return nil, nil
end

--- `send` (a transport's request function) observed: the same function,
--- with spans, trace context and the duration metric when tracing is on.
---@param send fun(conn: table, method: string, params: table?, timeout_ms: integer, raw: string?, watch: table?, ...): any, any
---@return function
function M.wrap(send)
  return function(conn, method, params, timeout_ms, raw, watch, ...)
    local cfg = tracing._config()
    if cfg == nil then return send(conn, method, params, timeout_ms, raw, watch, ...) end
    local src = conn.src
    local attrs = { ["mcp.method.name"] = method }
    local tool = method == "tools/call" and (watch and watch.action or type(params) == "table" and params.name) or nil
    local prompt = method == "prompts/get" and type(params) == "table" and params.name or nil
    if tool then
      attrs["gen_ai.tool.name"], attrs["gen_ai.operation.name"] = tool, "execute_tool"
    end
    if prompt then attrs["gen_ai.prompt.name"] = prompt end
    attrs["mcp.protocol.version"] = conn.protocol
    attrs["network.transport"] = src.transport == "stdio" and "pipe" or "tcp"
    if src.url then attrs["server.address"], attrs["server.port"] = address_of(src.url) end
    -- The span: the tool call's own, or one of the request's under the
    -- span it is made in (none outside a traced turn).
    local parent = core.context("tide_span")
    local span, own
    if parent and parent ~= tracing.UNSAMPLED then
      if tool and parent.attributes["gen_ai.operation.name"] == "execute_tool" and not parent.mcp then
        span, own = parent, false
        parent.mcp = true
      else
        span, own = tracing.start(tool and (method .. " " .. tool) or prompt and (method .. " " .. prompt) or method, 3,
          parent, {}), true
      end
    end
    if span then
      for k, v in pairs(attrs) do span.attributes[k] = v end
      span.attributes["jsonrpc.request.id"] = tostring(conn.next_id)
      span.attributes["mcp.session.id"] = conn.session_id
      if method == "resources/read" and type(params) == "table" then span.attributes["mcp.resource.uri"] = params.uri end
      params, raw = inject(params, raw, tracing.traceparent(span))
    end
    local t0 = core.hrtime()
    local ok, res, err = pcall(send, conn, method, params, timeout_ms, raw, watch, ...)
    local etype, status
    if ok then
      etype, status = failure_of(method, res, err)
    else
      etype = type(res) == "table" and res.code or "error"
    end
    if span then
      if status then span.attributes["rpc.response.status_code"] = status end
      if own then
        span:finish(etype and { code = etype, message = ok and err and err.message or
          (not ok and tostring(type(res) == "table" and res.message or res)) or etype } or nil)
      end
    end
    if cfg.metrics then
      attrs["error.type"], attrs["rpc.response.status_code"] = etype, status
      require("tide.metrics").mcp(attrs, (core.hrtime() - t0) / 1e9)
    end
    if not ok then error(res, 0) end
    return res, err
  end
end

return M
