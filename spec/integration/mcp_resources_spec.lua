-- The rest of what an MCP server offers besides its tools, against the
-- real server-everything (stdio and Streamable HTTP): a call's progress
-- (notifications/progress: events for the turn's listeners, and a
-- deadline that moves), the server's logs (logging/setLevel and
-- notifications/message), its resources (listed, templates, read; for the
-- model, list_resources and read_resource) and its prompts; and a
-- scripted server that declares none of them.
local tide = require "tide"
local core = require "tide.core"
local helpers = require "helpers"
local cache = require "tide.integrations.cache"

local SCRIPT = "spec/support/mcp_server.lua"
local EVERYTHING = helpers.npm "@modelcontextprotocol/server-everything/dist/index.js"

local function everything(extra)
  local opts = { name = "everything", command = { "node", EVERYTHING, "stdio" }, timeout_ms = 20000 }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return tide.integrations.mcp(opts)
end

-- server-everything over Streamable HTTP on a free port: its process and URL.
local function everything_http()
  local proc, port = helpers.node_server(EVERYTHING, { "streamableHttp" }, function(port) return { PORT = tostring(port) } end,
    function(proc) return proc:stderr():find("listening", 1, true) ~= nil end)
  return proc, ("http://127.0.0.1:%d/mcp"):format(port)
end

local function names(src)
  local set = {}
  for _, t in ipairs(assert(src:fetch())[1].tools) do set[t.name] = true end
  return set
end

describe("MCP progress with server-everything", function()
  before_each(function() cache.invalidate_all() end)

  for _, transport in ipairs { "stdio", "http" } do
    it("lets a call that reports progress run past timeout_ms, and still times out one that does not (" .. transport
      .. ")", function()
      helpers.run(function()
        local proc, url
        if transport == "http" then proc, url = everything_http() end
        local src = url and tide.integrations.mcp { name = "everything", url = url, timeout_ms = 700 }
          or everything { timeout_ms = 700 }
        -- four steps of 0.3 s, each reported: never 700 ms without a word
        local text = assert(src:execute("trigger-long-running-operation", { duration = 1.2, steps = 4 }))
        assert.matches("Long running operation completed", text, 1, true)
        -- one step of 1.2 s: silent past the timeout
        local r, err = src:execute("trigger-long-running-operation", { duration = 1.2, steps = 1 })
        assert.is_nil(r)
        assert.are.equal("ToolError", err.code)
        assert.matches("did not answer tools/call within 700 ms", err.message, 1, true)
        -- the connection goes on, and no progress is left waiting
        assert.are.equal("Echo: after", src:execute("echo", { message = "after" }))
        assert.is_nil(next(src.progress))
        src:close()
        if proc then proc:close(2000) end
      end)
    end)
  end

  it("never waits past max_total_timeout_ms, whatever the progress", function()
    local src = everything { timeout_ms = 700, max_total_timeout_ms = 900 }
    local t0 = core.now()
    local r, err = src:execute("trigger-long-running-operation", { duration = 2, steps = 8 })
    assert.is_nil(r)
    assert.matches("it reported progress, but max_total_timeout_ms (900) passed", err.message, 1, true)
    assert.is_true(core.now() - t0 < 1800)
    src:close()
  end)

  it("tells the turn's listeners, with the call's id, as the steps go", function()
    helpers.run(function()
      local src = everything()
      local srv <close> = assert(tide.testing.mock_server { default = function(req)
        local msgs = req.json.messages
        if msgs[#msgs].role == "tool" then return "it finished" end
        return { tool_calls = { { id = "call_long", name = "trigger-long-running-operation",
          arguments = { duration = 0.6, steps = 3 } } } }
      end })
      tide.agent { id = "progress_watcher", prompt = "You wait.",
        tools = { { toolkit = "everything", only = { "trigger-long-running-operation" } } } }
      local s = tide.session { agent = "progress_watcher", integrations = src,
        provider = tide.provider.openai { base_url = srv.url .. "/v1", api_key = "k", model = "m", stream = false } }
      local seen = {}
      assert.are.equal("it finished", s:turn("go", { on_event = function(e)
        if e.type == "tool_progress" then seen[#seen + 1] = e end
      end }))
      assert.are.equal(3, #seen)
      for i, e in ipairs(seen) do
        assert.are.same({ type = "tool_progress", source = "everything", tool = "trigger-long-running-operation",
          id = "call_long", progress = i, total = 3, depth = 0 }, e)
      end
      -- a listener that raises at a progress event stops the turn
      local r, err = s:turn("again", { on_event = function(e)
        if e.type == "tool_progress" then error("enough") end
      end })
      assert.is_nil(r)
      assert.are.equal("TurnFailed", err.code)
      assert.is_true(err.listener)
      s:close()
      src:close()
    end)
  end)
end)

describe("MCP logs with server-everything", function()
  it("sets the level it was given, and hands each log to on_log", function()
    helpers.run(function()
      local logs = {}
      local src = everything { log_level = "debug", on_log = function(e)
        logs[#logs + 1] = e
        if #logs == 1 then error("a log listener's error stops nothing") end
      end }
      assert.matches("Started simulated", (assert(src:execute("toggle-simulated-logging", {}))), 1, true)
      helpers.wait_until(function() return #logs >= 1 end, "a log message", 5000)
      local levels = { debug = true, info = true, notice = true, warning = true, error = true, critical = true,
        alert = true, emergency = true }
      assert.is_true(levels[logs[1].level])
      assert.matches("message", logs[1].data)
      assert.is_nil(src.log_level_error) -- the server took logging/setLevel
      assert.are.equal("Echo: still", src:execute("echo", { message = "still" }))
      src:close()
    end)
  end)
end)

describe("MCP resources and prompts with server-everything", function()
  before_each(function() cache.invalidate_all() end)

  it("lists resources and templates, and reads text and blobs", function()
    local src = everything()
    local list = assert(src:resources())
    assert.is_true(#list >= 1)
    local doc
    for _, r in ipairs(list) do if r.uri == "demo://resource/static/document/features.md" then doc = r end end
    assert.are.same({ uri = "demo://resource/static/document/features.md", name = "features.md", mime = "text/markdown",
      description = "Static document file exposed from /docs: features.md" }, doc)
    local templates = assert(src:resource_templates())
    assert.are.equal("demo://resource/dynamic/text/{resourceId}", templates[1].uri_template)
    assert.are.equal("Dynamic Text Resource", templates[1].name)
    local text = assert(src:read("demo://resource/dynamic/text/3"))
    assert.are.equal(1, #text)
    assert.are.equal("text/plain", text[1].mime)
    assert.matches("^Resource 3: This is a plaintext resource", text[1].text)
    local blob = assert(src:read("demo://resource/dynamic/blob/3"))
    assert.is_nil(blob[1].text)
    assert.matches("^Resource 3: This is a base64 blob", core.base64_decode(blob[1].data))
    local r, err = src:read("demo://nothing/here")
    assert.is_nil(r)
    assert.are.equal("ProviderError", err.code)
    assert.matches("Resource demo://nothing/here not found", err.message, 1, true)
    assert.has_error(function() src:read(42) end, "bad argument #1 to 'read' (a resource URI expected)")
    src:close()
  end)

  it("subscribes to a resource, and hears of its changes until it unsubscribes", function()
    helpers.run(function()
      local updated = {}
      local src = everything { on_resource_updated = function(uri) updated[#updated + 1] = uri end }
      local uri = "demo://resource/static/document/features.md"
      assert.is_true(src:subscribe(uri))
      assert(src:execute("toggle-subscriber-updates", {}))
      helpers.wait_until(function() return #updated > 0 end, "a resource update", 5000)
      assert.are.equal(uri, updated[1])
      assert.is_true(src:unsubscribe(uri))
      assert.has_error(function() src:subscribe("") end, "bad argument #1 to 'subscribe' (a resource URI expected)")
      src:close()
    end)
  end)

  it("lists prompts, and fills one in for a turn", function()
    local src = everything()
    local prompts = assert(src:prompts())
    local by = {}
    for _, p in ipairs(prompts) do by[p.name] = p end
    -- (the server lists no description for its optional argument: zod's
    -- .optional() hides the .describe() inside it)
    assert.are.same({ name = "args-prompt", title = "Arguments Prompt",
      description = "A prompt with two arguments, one required and one optional",
      arguments = { { name = "city", description = "Name of the city", required = true },
                    { name = "state", required = false } } }, by["args-prompt"])
    local p = assert(src:prompt("args-prompt", { city = "Paris", state = "Texas" }))
    assert.are.same({ { role = "user", content = "What's weather in Paris, Texas?" } }, p.messages)
    -- an embedded resource comes as its text
    local rp = assert(src:prompt("resource-prompt", { resourceType = "Text", resourceId = "2" }))
    assert.are.equal(2, #rp.messages)
    assert.matches("^Resource 2: This is a plaintext resource", rp.messages[2].content)
    -- the server's refusal, in its words
    local r, err = src:prompt("args-prompt", {})
    assert.is_nil(r)
    assert.are.equal("ProviderError", err.code)
    assert.matches("city", err.message, 1, true)
    -- arguments are strings, as the protocol has them
    assert.has_error(function() src:prompt("args-prompt", { city = 7 }) end,
      "bad argument #2 to 'prompt' (argument 'city' must be a string, got number)")
    assert.has_error(function() src:prompt() end, "bad argument #1 to 'prompt' (a prompt name expected)")
    src:close()
  end)

  it("with resources = true, gives the model list_resources and read_resource", function()
    local plain, offered = everything(), everything { resources = true }
    assert.are_not.equal(plain:identity(), offered:identity())
    assert.is_nil(names(plain).list_resources)
    local set = names(offered)
    assert.is_true(set.list_resources and set.read_resource and set.echo)
    local listing = assert(offered:execute("list_resources", {}))
    assert.matches("demo://resource/static/document/features.md - features.md (text/markdown)", listing, 1, true)
    assert.matches("URI templates (fill in the {names} to read one):\ndemo://resource/dynamic/text/{resourceId}",
      listing, 1, true)
    assert.matches("^Resource 1: This is a plaintext",
      assert(offered:execute("read_resource", '{"uri":"demo://resource/dynamic/text/1"}')))
    -- a text blob is read as its text
    assert.matches("^Resource 4: This is a base64 blob",
      assert(offered:execute("read_resource", { uri = "demo://resource/dynamic/blob/4" })))
    local r, err = offered:execute("read_resource", {})
    assert.is_nil(r)
    assert.are.equal("read_resource needs 'uri', a string", err.message)
    r, err = offered:execute("read_resource", { uri = "demo://gone" })
    assert.is_nil(r)
    assert.matches("MCP server 'everything': .*not found", err.message)
    plain:close()
    offered:close()
  end)

  it("over Streamable HTTP as over stdio", function()
    helpers.run(function()
      local proc, url = everything_http()
      local src = tide.integrations.mcp { name = "remote", url = url, timeout_ms = 20000, resources = true }
      assert.is_true(names(src).read_resource)
      assert.matches("^Resource 5:", assert(src:read("demo://resource/dynamic/text/5"))[1].text)
      assert.are.equal("What's weather in Oslo?", assert(src:prompt("args-prompt", { city = "Oslo" })).messages[1].content)
      src:close()
      proc:close(2000)
    end)
  end)
end)

describe("MCP resources of a server that declares none", function()
  it("asks nothing, says so, and offers the model no resource tools", function()
    local src = tide.integrations.mcp { name = "scripted", command = { "lua5.4", SCRIPT, "normal" }, timeout_ms = 5000,
      env = { LUA_PATH = package.path, LUA_CPATH = package.cpath }, resources = true }
    assert.is_nil(names(src).list_resources)
    local before = src.requests
    for _, call in ipairs { function() return src:resources() end, function() return src:prompts() end,
                            function() return src:read("x://y") end, function() return src:subscribe("x://y") end } do
      local r, err = call()
      assert.is_nil(r)
      assert.are.equal("ProviderError", err.code)
      assert.matches("MCP server 'scripted' declares no '%a+' capability", err.message)
    end
    assert.are.equal(before, src.requests)
    src:close()
  end)

  it("checks the new options", function()
    local base = { name = "x", command = { "true" } }
    local function with(k, v)
      local o = {}
      for a, b in pairs(base) do o[a] = b end
      o[k] = v
      return function() tide.integrations.mcp(o) end
    end
    assert.has_error(with("on_log", "print"), "bad argument #1 to 'mcp' (field 'on_log' must be a function)")
    assert.has_error(with("log_level", "loud"),
      "bad argument #1 to 'mcp' (field 'log_level' must be one of debug, info, notice, warning, error, critical, alert, emergency)")
    assert.has_error(with("resources", "yes"), "bad argument #1 to 'mcp' (field 'resources' must be a boolean)")
    assert.has_error(with("max_total_timeout_ms", 0),
      "bad argument #1 to 'mcp' (field 'max_total_timeout_ms' must be a positive integer)")
  end)
end)
