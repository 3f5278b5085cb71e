-- tide chat --mcp: an MCP server's tools in the chat, and what the server
-- asks of the person (a form, a model call) asked at the terminal, driven
-- over pipes like a person at a terminal, the model a scripted mock.
local helpers = require "helpers"

local function sub_call(name, args) return { tool_calls = { { name = name, arguments = args } } } end

-- `tide chat --provider openai` with `args`, the model the mock at
-- `model_url`, typed to: `input` first, then what `on_line(line, p)`
-- writes as the output comes. Returns the output and the exit status.
local function chat(model_url, args, input, on_line)
  local core = require "tide.core"
  local root = helpers.sh("pwd"):gsub("%s+$", "")
  local env = helpers.child_env { OPENAI_API_KEY = "sk-chat", OPENAI_BASE_URL = model_url .. "/v1",
    LUA_PATH = "lua/?.lua;lua/?/init.lua;;", LUA_CPATH = (os.getenv("TIDE_BUILD_DIR") or "build") .. "/?.so;;",
    ASAN_OPTIONS = "detect_leaks=0", PWD = root }
  local argv = { "lua5.4", "bin/tide", "chat", "--provider", "openai" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local p = assert(core.process_spawn { argv = argv, env = env, cwd = root })
  assert(p:write(input))
  local lines = {}
  for _ = 1, 400 do
    local line = p:read_line(30000)
    if not line then break end
    lines[#lines + 1] = line
    if on_line then on_line(line, p) end
  end
  local code = p:wait(10000)
  p:close()
  return table.concat(lines, "\n"), code
end

describe("tide chat --mcp", function()
  it("puts a server's form and its model call to the person, and the answers reach the server", function()
    local tide = require "tide"
    local json = require "tide.json"
    helpers.run(function()
      local srv <close> = assert(tide.testing.mock_server { replies = {
        sub_call("delegate_scripted", { task = "ask the user, then summarise" }), -- the orchestrator
        sub_call("elicit", { params = { message = "Who are you?", requestedSchema = { type = "object",
          properties = { name = { type = "string", title = "Name" }, age = { type = "integer" } },
          required = { "name" } } } }),                                         -- the sub-agent
        sub_call("sample", { params = { maxTokens = 20,
          messages = { { role = "user", content = { type = "text", text = "Summarise: tides" } } } } }),
        "Tides rise and fall.",                                                 -- the server's model call
        "Asked and summarised.",                                               -- the sub-agent
        "All done.",                                                           -- the orchestrator
      } })
      -- the turn; the form: a name, an age typed wrong, then right; the model call allowed
      local out, code = chat(srv.url, { "--mcp", "scripted=lua5.4 spec/support/mcp_server.lua normal" },
        "go\nAda\nforty\n42\ny\n/quit\n")
      assert.are.equal(0, code, out)
      assert.matches("[scripted asks] Who are you?", out, 1, true)
      assert.matches("Name *: ", out, 1, true) -- (required first, marked)
      assert.matches("(an integer, please)", out, 1, true)
      assert.matches("[scripted asks the model, at most 20 tokens] Summarise: tides", out, 1, true)
      assert.matches("All done.", out, 1, true)
      local reqs = srv:requests()
      assert.are.equal(6, #reqs)
      -- the form's answer, as the server got it (its answer line is the tool's result)
      local function tool_result(req)
        local m = req.json.messages
        return json.decode(m[#m].content)
      end
      local elicited = tool_result(reqs[3])
      assert.are.same({ action = "accept", content = { name = "Ada", age = 42 } }, elicited.result)
      -- the server's model call went to the chat's model, and its answer back to the server
      assert.are.same({ role = "user", content = "Summarise: tides" }, reqs[4].json.messages[1])
      local sampled = tool_result(reqs[5])
      assert.are.equal("Tides rise and fall.", sampled.result.content.text)
    end)
  end)

  it("lists a server's prompts, sends one filled in, and shows a tool's progress", function()
    local tide = require "tide"
    local everything = helpers.npm "@modelcontextprotocol/server-everything/dist/index.js"
    helpers.run(function()
      local srv <close> = assert(tide.testing.mock_server { replies = {
        "Sunny, mostly.",                                                        -- the prompt's turn
        sub_call("delegate_everything", { task = "run the long operation" }),   -- the orchestrator
        sub_call("trigger-long-running-operation", { duration = 0.4, steps = 2 }), -- the sub-agent
        "It ran.",                                                               -- the sub-agent
        "All done.",                                                             -- the orchestrator
        sub_call("delegate_everything", { task = "research tides" }),           -- the orchestrator
        sub_call("simulate-research-query", { topic = "tides" }),               -- the sub-agent: a task
        "Researched.", "Reported.",
      } })
      local out, code = chat(srv.url, { "--mcp", "everything=node " .. everything .. " stdio" },
        '/mcp\n/use everything:args-prompt\n/use nowhere:x\n/use everything:args-prompt city="New York"\n'
        .. "run it\nresearch\n/quit\n")
      assert.are.equal(0, code, out)
      assert.matches("everything: 7 resources (the model reads them with read_resource)", out, 1, true)
      assert.matches("/use everything:args-prompt city* state  - A prompt with two arguments", out, 1, true)
      -- the server's refusal and a server the chat does not have: said, nothing sent
      assert.matches("Invalid arguments for prompt args-prompt", out, 1, true)
      assert.matches("no MCP server 'nowhere' in this chat", out, 1, true)
      assert.matches("Sunny, mostly.", out, 1, true)
      assert.matches("│  trigger-long-running-operation 1/2\n", out, 1, true)
      assert.matches("│  trigger-long-running-operation 2/2\n", out, 1, true)
      assert.matches("All done.", out, 1, true)
      -- a tool the server runs as a task: its statuses
      assert.matches("│  simulate-research-query working  Gathering sources...\n", out, 1, true)
      assert.matches("│  simulate-research-query completed", out, 1, true)
      assert.matches("Reported.", out, 1, true)
      local reqs = srv:requests()
      assert.are.equal(9, #reqs)
      local m = reqs[1].json.messages
      assert.are.same({ role = "user", content = "What's weather in New York?" }, m[#m])
      -- the model can read the server's resources
      local offered = {}
      for _, t in ipairs(reqs[3].json.tools) do offered[t["function"].name] = true end
      assert.is_true(offered.trigger_long_running_operation or offered["trigger-long-running-operation"])
    end)
  end)

  it("signs in to a remote server that wants OAuth: the address shown, the one pasted back", function()
    local tide = require "tide"
    local example = helpers.npm "@modelcontextprotocol/sdk/dist/esm/examples/server/simpleStreamableHttp.js"
    helpers.run(function()
      local server, port = helpers.node_server(example, { "--oauth" },
        function(port) return { MCP_PORT = tostring(port), MCP_AUTH_PORT = tostring(port + 1) } end,
        function(proc) return (proc:read_line(50) or ""):find("MCP Streamable HTTP Server listening", 1, true) ~= nil end)
      local srv <close> = assert(tide.testing.mock_server { replies = {
        sub_call("delegate_remote", { task = "greet tide" }), sub_call("greet", { name = "tide" }), "Greeted.", "Done." } })
      local url
      local out, code = chat(srv.url, { "--mcp", ("remote=http://localhost:%d/mcp"):format(port) }, "greet\n",
        function(line, p)
          url = url or line:match("^%s+(http://localhost:%d+/authorize%?%S+)")
          if url and line:find("/authorize?", 1, true) then
            -- the person's browser: it consents, and they paste where it went
            local res = assert(tide.http.request { url = url })
            assert(p:write(res.headers.location .. "\n/quit\n"))
          end
        end)
      server:close(2000)
      assert.are.equal(0, code, out)
      assert.matches("[remote wants you to sign in] open this address in a browser:", out, 1, true)
      assert.matches("Done.", out, 1, true)
      local reqs = srv:requests()
      local m = reqs[3].json.messages
      assert.matches("Hello, tide!", m[#m].content, 1, true) -- the greeting the server gave, signed in
    end)
  end)

  it("says what is wrong with an --mcp value", function()
    local root = helpers.sh("pwd"):gsub("%s+$", "")
    local build = os.getenv("TIDE_BUILD_DIR") or "build"
    local out = helpers.sh(("(cd %s && LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' "
      .. "ASAN_OPTIONS=detect_leaks=0 timeout 20 lua5.4 bin/tide chat --mcp nothing </dev/null 2>&1; "
      .. "echo \"exit=$?\")"):format(root, build))
    assert.matches("tide chat: --mcp takes NAME=COMMAND or NAME=URL, got nothing", out, 1, true)
    assert.are.equal("2", out:match("exit=(%d+)"))
  end)
end)
