-- MCP requests as the OpenTelemetry semantic conventions for MCP describe
-- them: the tool call's execute_tool span with the MCP attributes, CLIENT
-- spans for the other requests a traced turn makes, the trace context in
-- params._meta (the server sees it), and mcp.client.operation.duration;
-- decoded by the receiver built on the official OpenTelemetry JS
-- definitions (spec/support/otlp_receiver.cjs).
local tide = require "tide"
local testing = require "tide.testing"
local tracing = require "tide.tracing"
local cache = require "tide.integrations.cache"
local cjson = require "cjson"
local helpers = require "helpers"

local SCRIPT = "spec/support/mcp_server.lua"

local function get(url, what)
  return cjson.decode(assert(tide.http.request { url = url .. what }).body)
end

local function named(spans, name)
  for _, s in ipairs(spans) do if s.name == name then return s end end
end

describe("MCP requests under OpenTelemetry", function()
  local url, stop
  before_each(function()
    tracing._reset()
    require("tide.metrics")._reset()
    cache.invalidate_all()
    url, stop = helpers.otlp_receiver()
  end)
  after_each(function()
    tracing.setup(false)
    stop()
  end)

  it("puts the MCP attributes on the tool call's span, traces what else it asks, and passes the context on", function()
    tide.tracing { endpoint = url, service = "mcp-spec", metrics = true }
    local src = tide.integrations.mcp { name = "scripted", command = { "lua5.4", SCRIPT, "tasks" }, timeout_ms = 5000,
      env = { LUA_PATH = package.path, LUA_CPATH = package.cpath } }
    local srv <close> = testing.mock_server { default = function(req)
      local msgs = req.json.messages
      if msgs[#msgs].role == "tool" then return "done" end
      return { tool_calls = { { id = "c_meta", name = "meta", arguments = {} },
                              { id = "c_fail", name = "fail", arguments = {} },
                              { id = "c_job", name = "job", arguments = { plan = "ok" } } } }
    end }
    tide.agent { id = "mcp_traced", prompt = "You call MCP tools.",
      tools = { { toolkit = "scripted", only = { "meta", "fail", "job" } } } }
    local s = tide.session { agent = "mcp_traced", integrations = src,
      provider = tide.provider.openai { base_url = srv.url, api_key = "k", model = "gpt-4o-mini", stream = false } }
    local seen_meta
    tide.run(function()
      assert.are.equal("done", s:turn("go"))
      -- what the server saw of the meta call: the trace context
      for _, m in ipairs(srv:requests()[2].json.messages) do
        if m.role == "tool" and m.tool_call_id == "c_meta" then seen_meta = cjson.decode(m.content) end
      end
      s:close()
      src:close()
    end)
    tracing.flush()
    local spans = get(url, "/spans").spans
    local meta = named(spans, "execute_tool meta")
    -- the conventions' attributes, on the span the agent already has
    local a = meta.attributes
    assert.are.same({ "tools/call", "meta", "execute_tool", "pipe", "2025-11-25" }, { a["mcp.method.name"],
      a["gen_ai.tool.name"], a["gen_ai.operation.name"], a["network.transport"], a["mcp.protocol.version"] })
    assert.matches("^%d+$", a["jsonrpc.request.id"])
    assert.is_nil(named(spans, "tools/call meta")) -- (no second span for the same call)
    -- the server got the call's span as its parent
    assert.are.equal(("00-%s-%s-01"):format(meta.traceId, meta.spanId), seen_meta.traceparent)
    assert.is_number(seen_meta.progressToken)
    -- a tool that failed: its span says so
    local fail = named(spans, "execute_tool fail")
    assert.are.equal("tools/call", fail.attributes["mcp.method.name"])
    assert.are.equal(2, fail.status.code) -- ERROR
    -- the task's polls and result: CLIENT spans under the call's
    local job = named(spans, "execute_tool job")
    local polls, result = 0, nil
    for _, sp in ipairs(spans) do
      if sp.name == "tasks/get" then
        polls = polls + 1
        assert.are.equal(job.spanId, sp.parentSpanId)
        assert.are.equal(3, sp.kind)
        assert.are.equal("tasks/get", sp.attributes["mcp.method.name"])
      elseif sp.name == "tasks/result" then
        result = sp
      end
    end
    assert.are.equal(2, polls)
    assert.are.equal(job.spanId, result.parentSpanId)
    -- the duration of every request, traced or not (initialize and the
    -- listing came before the turn)
    local exports = get(url, "/metrics").exports
    local points = {}
    for _, e in ipairs(exports) do
      for _, m in ipairs(e.metrics) do
        if m.name == "mcp.client.operation.duration" then
          assert.are.equal("s", m.unit)
          for _, pt in ipairs(m.points) do points[#points + 1] = pt end
        end
      end
    end
    local function count(method, tool, etype)
      local n = 0
      for _, pt in ipairs(points) do
        local at = pt.attributes
        if at["mcp.method.name"] == method and at["gen_ai.tool.name"] == tool and at["error.type"] == etype then
          n = n + pt.count
        end
      end
      return n
    end
    assert.are.equal(1, count("initialize"))
    assert.are.equal(2, count("tools/list")) -- (two pages)
    assert.are.equal(1, count("tools/call", "meta"))
    assert.are.equal(1, count("tools/call", "fail", "tool_error"))
    assert.are.equal(2, count("tasks/get"))
    assert.are.same({ 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300 }, points[1].bounds)
    assert.are.equal("pipe", points[1].attributes["network.transport"])
  end)

  it("costs nothing and sends no context while tracing is off", function()
    local src = tide.integrations.mcp { name = "scripted", command = { "lua5.4", SCRIPT, "normal" }, timeout_ms = 5000,
      env = { LUA_PATH = package.path, LUA_CPATH = package.cpath } }
    local meta = cjson.decode((assert(src:execute("meta", {}))))
    assert.is_nil(meta.traceparent)
    assert.is_number(meta.progressToken)
    src:close()
  end)
end)
