-- tide's agents as an MCP server (`tide mcp-server`), called by the
-- official MCP TypeScript SDK's client (spec/support/mcp_client.cjs): the
-- tools it lists, a call with its progress, an unknown tool, a call
-- without its task, a call cancelled and the one after; and what the
-- protocol asks of a server, line by line.
local helpers = require "helpers"
local tide = require "tide"
local core = require "tide.core"
local cjson = require "cjson"

local AGENTS = "spec/support/mcp_agents"

-- The model of the served agents: a lookup, then its answer; a slow answer
-- for the call the client cancels.
local function model(req)
  local msgs = req.json.messages
  local last = msgs[#msgs]
  if last.role == "tool" then return "Tides: " .. last.content end
  if last.content == "slow one" then return { text = "too late", delay_ms = 8000 } end
  if last.content == "after" then return "after it" end
  if last.content == "what did I ask first?" then -- (what the conversation remembers)
    for _, m in ipairs(msgs) do
      if m.role == "user" then return "You asked: " .. m.content end
    end
  end
  return { tool_calls = { { name = "lookup", arguments = { q = "tides" } } } }
end

local function server_env(url, extra)
  local build = os.getenv("TIDE_BUILD_DIR") or "build"
  local env = helpers.child_env { OPENAI_API_KEY = "sk-served", OPENAI_BASE_URL = url .. "/v1",
    LUA_PATH = "lua/?.lua;lua/?/init.lua;;", LUA_CPATH = build .. "/?.so;;", ASAN_OPTIONS = "detect_leaks=0",
    NODE_PATH = helpers.NPM .. "/node_modules" }
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

describe("tide mcp-server", function()
  it("serves its agents to the official SDK's client", function()
    helpers.run(function()
      local srv <close> = assert(tide.testing.mock_server { default = model })
      local p = assert(core.process_spawn { argv = { "node", "spec/support/mcp_client.cjs", "lua5.4", "bin/tide",
        "mcp-server", "--agents", AGENTS, "--provider", "openai" }, env = server_env(srv.url) })
      local line = p:read_line(60000)
      local code = p:wait(10000)
      local stderr = p:stderr()
      p:close()
      assert.are.equal(0, code, stderr)
      local got = cjson.decode(line)
      assert.are.same({ name = "tide", version = tide.version }, got.server)
      assert.matches("Each tool is an agent", got.instructions, 1, true)
      -- the agents with when_to_use, each a tool taking a task
      assert.are.equal(1, #got.tools)
      local t = got.tools[1]
      assert.are.same({ "helper", "Looks things up and answers.", { "task" } },
        { t.name, t.description, t.inputSchema.required })
      -- a call: the agent's answer (and the conversation it began), its
      -- steps as progress
      local conv = got.call.structuredContent.conversation
      assert.matches("^c1%-%x+$", conv)
      assert.are.same({ reply = "Tides: found tides", conversation = conv }, got.call.structuredContent)
      assert.are.same({ { type = "text", text = "Tides: found tides" }, { type = "text",
        text = ("(conversation %s: give it as `conversation` to go on)"):format(conv) } }, got.call.content)
      assert.are.same({ "reply", "conversation" }, t.outputSchema.required)
      -- (the SDK hands a notification on a turn of its event loop later than
      -- the answer that follows it at once, and drops it once the request
      -- is answered: the last may not reach onprogress; the lines test
      -- below sees both sent)
      assert.are.same({ 1, "lookup started" }, { got.progress[1].progress, got.progress[1].message })
      assert.is_true(#got.progress <= 2)
      -- an unknown tool is the protocol's error; a call without its task, the tool's
      assert.are.equal(-32602, got.unknown.code)
      assert.matches("Unknown tool: nope", got.unknown.message, 1, true)
      assert.is_true(got.bad.isError)
      assert.are.equal("'task' must be a non-empty string", got.bad.content[1].text)
      -- a cancelled call: the client gave up, the server went on serving
      assert.matches("given up", got.cancel, 1, true)
      assert.are.equal("after it", got.after.content[1].text)
      assert.are_not.equal(conv, got.after.structuredContent.conversation)
      -- the first conversation, gone on with: the agent remembers it
      assert.are.same({ reply = "You asked: look up tides", conversation = conv }, got.again.structuredContent)
      assert.is_true(got.stranger.isError)
      assert.matches("no conversation 'c404-000000' with helper here", got.stranger.content[1].text, 1, true)
    end)
  end)

  -- The server's answers to `lines`, one decoded message each.
  local function answers(lines, args)
    local out = {}
    helpers.run(function()
      local srv <close> = assert(tide.testing.mock_server { default = model })
      local argv = { "lua5.4", "bin/tide", "mcp-server", "--agents", AGENTS, "--provider", "openai" }
      for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
      local p = assert(core.process_spawn { argv = argv, env = server_env(srv.url) })
      assert(p:write(table.concat(lines, "\n") .. "\n"))
      for _ = 1, #lines do
        local l = p:read_line(20000)
        if not l then break end
        out[#out + 1] = cjson.decode(l)
      end
      p:close(2000)
    end)
    return out
  end

  it("negotiates the version, answers what it cannot parse or does not serve, and offers named agents", function()
    local got = answers({
      '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2024-01-01","capabilities":{}}}',
      '{"jsonrpc":"2.0","id":"two","method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{}}}',
      "this is not json",
      '{"jsonrpc":"2.0","id":3,"method":"resources/list"}',
      '{"jsonrpc":"2.0","id":4,"method":"ping"}',
      '{"jsonrpc":"2.0","id":5,"method":"tools/list"}',
      '{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"helper","arguments":{"task":"look up tides"},'
        .. '"_meta":{"progressToken":"p6"}}}',
      "", "", -- (the call's answer comes after its two progress notifications)
    }, { "--agent", "quiet", "--agent", "helper" })
    assert.are.equal("2025-11-25", got[1].result.protocolVersion) -- (one tide does not speak: its own)
    assert.are.same({ "two", "2025-03-26" }, { got[2].id, got[2].result.protocolVersion })
    assert.are.same({ code = -32700, message = "Parse error" }, got[3].error)
    assert.are.equal(cjson.null, got[3].id)
    assert.are.equal(-32601, got[4].error.code)
    assert.are.same({}, got[5].result)
    local names = {}
    for i, t in ipairs(got[6].result.tools) do names[i] = t.name end
    assert.are.same({ "quiet", "helper" }, names)
    assert.are.equal("Ask the quiet agent to do something, in words.", got[6].result.tools[1].description)
    assert.are.same({ { "notifications/progress", "p6", 1, "lookup started" }, { "notifications/progress", "p6", 2,
      "lookup ended" } }, { { got[7].method, got[7].params.progressToken, got[7].params.progress, got[7].params.message },
      { got[8].method, got[8].params.progressToken, got[8].params.progress, got[8].params.message } })
    assert.are.same({ 6, "Tides: found tides" }, { got[9].id, got[9].result.content[1].text })
  end)

  it("keeps max_conversations, closing the one used longest ago, and takes one call at a time in each", function()
    helpers.run(function()
      -- the model says how many turns of the user's its conversation holds
      local srv <close> = assert(tide.testing.mock_server { default = function(req)
        local msgs = req.json.messages
        if msgs[#msgs].content == "slow" then return { text = "slow done", delay_ms = 300 } end
        local n = 0
        for _, m in ipairs(msgs) do if m.role == "user" then n = n + 1 end end
        return ("turn %d"):format(n)
      end })
      tide.agent { id = "conv_counter", prompt = "You count.", when_to_use = "Counts." }
      local provider = tide.provider.openai { base_url = srv.url .. "/v1", api_key = "k", model = "m", stream = false }
      local queue, done, answers, buf = {}, false, {}, ""
      local sink = { flush = function() end }
      function sink:write(...)
        buf = buf .. table.concat({ ... })
        for line in buf:gmatch("([^\n]*)\n") do
          local m = cjson.decode(line)
          if m.id ~= nil then answers[m.id] = m.result end
        end
        buf = buf:match("[^\n]*$")
        return self
      end
      local server = tide.spawn(function()
        require("tide.mcp_server").serve { agents = { "conv_counter" }, provider = provider, out = sink,
          max_conversations = 2, read_line = function()
            while #queue == 0 and not done do tide.sleep(2) end
            return table.remove(queue, 1)
          end }
      end)
      local function send(id, task, conv)
        queue[#queue + 1] = cjson.encode { jsonrpc = "2.0", id = id, method = "tools/call",
          params = { name = "conv_counter", arguments = { task = task, conversation = conv } } }
      end
      local function call(id, task, conv)
        send(id, task, conv)
        helpers.wait_until(function() return answers[id] end, "the answer to " .. id)
        local r = answers[id]
        return r.structuredContent or r.content[1].text, r.structuredContent and r.structuredContent.conversation
      end
      local _, a = call(1, "one")
      local _, b = call(2, "two")
      assert.are.equal("turn 2", (call(3, "one again", a)).reply)
      -- a third conversation: the one used longest ago (b) is closed for it
      local _, c = call(4, "three")
      assert.are.equal("turn 1", (call(5, "four", nil)).reply)
      assert.matches("no conversation '" .. b .. "'", call(6, "two again", b), 1, true)
      assert.is_truthy(c)
      -- (a is no more: 4 and 5 took the room; c is the older of the two)
      assert.matches("no conversation", call(7, "one", a), 1, true)
      assert.are.equal("turn 2", (call(8, "three again", c)).reply)
      -- one call at a time in a conversation
      send(9, "slow", c)
      tide.sleep(50)
      assert.matches("busy with another call", call(10, "meanwhile", c), 1, true)
      helpers.wait_until(function() return answers[9] end, "the slow answer")
      assert.are.equal("slow done", answers[9].structuredContent.reply)
      done = true
      server:join()
    end)
  end)

  it("says what is wrong with its command line", function()
    local root = helpers.sh("pwd"):gsub("%s+$", "")
    local build = os.getenv("TIDE_BUILD_DIR") or "build"
    local function run(args)
      return helpers.sh(("(cd %s && LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' "
        .. "ASAN_OPTIONS=detect_leaks=0 lua5.4 bin/tide mcp-server %s </dev/null 2>&1; echo \"exit=$?\")"):format(root,
        build, args))
    end
    local out = run("--bogus")
    assert.matches("tide mcp-server: unknown argument --bogus", out, 1, true)
    assert.matches("exit=2", out, 1, true)
    out = run("--agent")
    assert.matches("tide mcp-server: --agent needs a value", out, 1, true)
    out = run("--agents " .. AGENTS .. " --agent nobody --provider demo")
    assert.matches("no agent 'nobody'", out, 1, true)
    assert.matches("exit=1", out, 1, true)
  end)
end)
