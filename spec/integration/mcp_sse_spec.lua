-- MCP's deprecated HTTP+SSE transport (2024-11-05), found as the 2025-11-25
-- specification's "Backwards Compatibility" has a client find it: against
-- the real server-everything in its `sse` mode (the TypeScript SDK's
-- SSEServerTransport), and scripted servers for what a bad one does.
local tide = require "tide"
local core = require "tide.core"
local cache = require "tide.integrations.cache"
local helpers = require "helpers"
local sse = require "tide.integrations.mcp_sse"

local EVERYTHING = helpers.npm "@modelcontextprotocol/server-everything/dist/index.js"

-- server-everything in its sse mode, and a source of its URL.
local function everything()
  local proc, port = helpers.node_server(EVERYTHING, { "sse" }, function(port) return { PORT = tostring(port) } end,
    function(proc) return (proc:stderr() or ""):find("Server is running on port", 1, true) ~= nil end)
  return proc, tide.integrations.mcp { name = "everything", url = ("http://127.0.0.1:%d/sse"):format(port),
    timeout_ms = 5000 }
end

describe("MCP over HTTP+SSE", function()
  after_each(function() helpers.assert_quiet() end)

  it("resolves the endpoint on the stream's origin only", function()
    local base = "http://127.0.0.1:9/mcp/sse?x=1"
    assert.are.equal("http://127.0.0.1:9/message?sessionId=a", sse._resolve(base, "/message?sessionId=a"))
    assert.are.equal("http://127.0.0.1:9/mcp/messages/?s=b", sse._resolve(base, " messages/?s=b\n"))
    assert.are.equal("http://127.0.0.1:9/m", sse._resolve(base, "http://127.0.0.1:9/m"))
    assert.are.equal("http://127.0.0.1:9/m", sse._resolve(base, "//127.0.0.1:9/m"))
    local url, why = sse._resolve(base, "http://evil.example/m")
    assert.is_nil(url)
    assert.are.equal("an endpoint on another origin (http://evil.example)", why)
    assert.is_nil((sse._resolve(base, "http://127.0.0.1:10/m")))
    assert.are.equal("an empty endpoint", select(2, sse._resolve(base, "  ")))
  end)

  it("finds a server of the old transport behind its URL, and serves it as any other", function()
    helpers.run(function()
      local proc, src = everything()
      local kits = assert(cache.get(src))
      assert.is_true(src.legacy_sse)
      local names = {}
      for _, t in ipairs(assert(src:fetch())[1].tools) do names[t.name] = true end
      assert.is_true(names.echo and names["get-sum"] and true)
      assert.is_table(kits)
      assert.are.equal("Echo: over the old transport", src:execute("echo", { message = "over the old transport" }))
      assert.are.equal("The sum of 2 and 3 is 5.", src:execute("get-sum", { a = 2, b = 3 }))
      -- two calls at once: each answer, from the one stream, reaches its call
      local a = core.spawn(function() return src:execute("get-sum", { a = 1, b = 1 }) end)
      local b = core.spawn(function() return src:execute("echo", { message = "b" }) end)
      assert.are.same({ "The sum of 1 and 1 is 2.", "Echo: b" }, { a:join(), b:join() })
      -- a stream that ends fails nothing settled and is made again on use:
      -- straight to the old transport, with no POST tried first
      src.conn:close()
      local before = src.requests
      assert.are.equal("Echo: again", src:execute("echo", { message = "again" }))
      assert.are.equal(before + 2, src.requests) -- initialize, tools/call
      src:close()
      proc:close(2000)
    end)
  end)

  it("carries a tool's progress to the turn", function()
    helpers.run(function()
      local proc, src = everything()
      local srv <close> = assert(tide.testing.mock_server { default = function(req)
        local msgs = req.json.messages
        if msgs[#msgs].role == "tool" then return "it finished" end
        return { tool_calls = { { id = "call_long", name = "trigger-long-running-operation",
          arguments = { duration = 0.3, steps = 3 } } } }
      end })
      tide.agent { id = "sse_progress", prompt = "You wait.",
        tools = { { toolkit = "everything", only = { "trigger-long-running-operation" } } } }
      local s = tide.session { agent = "sse_progress", integrations = src,
        provider = tide.provider.openai { base_url = srv.url .. "/v1", api_key = "k", model = "m", stream = false } }
      local seen = {}
      assert.are.equal("it finished", s:turn("go", { on_event = function(e)
        if e.type == "tool_progress" then seen[#seen + 1] = e.progress end
      end }))
      assert.are.same({ 1, 2, 3 }, seen)
      assert.is_true(src.legacy_sse)
      s:close()
      src:close()
      proc:close(2000)
    end)
  end)

  it("refuses an endpoint elsewhere, a stream without one, and says what the POST got", function()
    helpers.run(function()
      local function server(stream)
        return assert(tide.testing.mock_server { routes = { ["/sse"] = function(req)
          if req.method == "POST" then return { status = 405, body = "Method Not Allowed" } end
          return { status = 200, headers = { ["content-type"] = "text/event-stream" }, body = stream }
        end } })
      end
      for _, case in ipairs {
        { "event: endpoint\ndata: http://evil.example/message\n\n", "an endpoint on another origin" },
        { ": nothing to say\n\n", "the server ended its stream" },
      } do
        local srv = server(case[1])
        local src = tide.integrations.mcp { name = "bad", url = srv.url .. "/sse", timeout_ms = 2000 }
        local r, err = src:execute("echo", {})
        assert.is_nil(r)
        assert.matches("answered initialize with HTTP 405: Method Not Allowed; nor is it an HTTP%+SSE server", err.message)
        assert.matches(case[2], err.message, 1, true)
        assert.is_nil(src.legacy_sse)
        src:close()
        srv:close()
      end
    end)
  end)
end)
