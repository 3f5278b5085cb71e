-- What tide serves an MCP server that asks: sampling (a server's
-- sampling/createMessage answered by the source's provider), elicitation
-- (elicitation/create put to the source's elicit function) and roots
-- (roots/list), against the real server-everything (stdio and Streamable
-- HTTP: there a request comes inside the tool call's SSE stream, and must
-- be answered before that call can end) and server-filesystem, and a
-- scripted server for what the protocol has a client refuse.
local tide = require "tide"
local core = require "tide.core"
local json = require "tide.json"
local cjson = require "cjson"
local helpers = require "helpers"

local SCRIPT = "spec/support/mcp_server.lua"
local EVERYTHING = helpers.npm "@modelcontextprotocol/server-everything/dist/index.js"
local FILESYSTEM = helpers.npm "@modelcontextprotocol/server-filesystem/dist/index.js"
local FAST = { attempts = 1 }

-- A mock model for the sampling provider, and the provider.
local function model(reply)
  local srv = assert(tide.testing.mock_server { default = reply or "a haiku about tides" })
  return srv, tide.provider.openai { base_url = srv.url .. "/v1", api_key = "sk-sampling", model = "gpt-5-mini",
    stream = false, retry = FAST }
end

local function scripted_with(extra)
  local opts = { name = "scripted", command = { "lua5.4", SCRIPT, "normal" }, timeout_ms = 5000,
    env = { LUA_PATH = package.path, LUA_CPATH = package.cpath } }
  for k, v in pairs(extra) do opts[k] = v end
  return tide.integrations.mcp(opts)
end

local function scripted(sampling) return scripted_with { sampling = sampling } end

local function names(src)
  local set = {}
  for _, t in ipairs(assert(src:fetch())[1].tools) do set[t.name] = true end
  return set
end

describe("MCP sampling with server-everything", function()
  it("over stdio: the server's request is the provider's, its answer the tool's", function()
    helpers.run(function()
      local srv <close>, p = model()
      local src = tide.integrations.mcp { name = "everything", command = { "node", EVERYTHING, "stdio" },
        timeout_ms = 20000, sampling = { provider = p } }
      assert.is_true(names(src)["trigger-sampling-request"])
      local text = assert(src:execute("trigger-sampling-request", { prompt = "write a haiku", maxTokens = 50 }))
      local answer = cjson.decode(text:match("(%b{})"))
      assert.are.same({ role = "assistant", model = "gpt-5-mini", stopReason = "endTurn",
        content = { type = "text", text = "a haiku about tides" } }, answer)
      -- what the server asked for reached the model: its system prompt,
      -- its message, at most its maxTokens
      local body = srv:requests()[1].json
      assert.are.same({ { role = "system", content = "You are a helpful test server." },
        { role = "user", content = "Resource trigger-sampling-request context: write a haiku" } }, body.messages)
      assert.are.equal(50, body.max_completion_tokens)
      -- counted as the source's: the request and the tokens it cost
      local c = src.sampling
      assert.are.same({ 1, 0, 0 }, { c.requests, c.rejected, c.failed })
      assert.is_true(c.input_tokens > 0 and c.output_tokens > 0)
      src:close()
    end)
  end)

  it("runs the server's request as a task of its own when asked: polled, then its result", function()
    helpers.run(function()
      local srv <close>, p = model("a haiku, later")
      local src = tide.integrations.mcp { name = "everything", command = { "node", EVERYTHING, "stdio" },
        timeout_ms = 20000, sampling = { provider = p } }
      assert.is_true(names(src)["trigger-sampling-request-async"])
      local text = assert(src:execute("trigger-sampling-request-async", { prompt = "later", maxTokens = 30 }))
      -- the server was answered a task at once, polled tasks/get, then took tasks/result
      assert.matches("^%[COMPLETED%]", text)
      local id = text:match("Task created: (tide%-1%-%x+)")
      assert.is_truthy(id, text)
      assert.matches("Poll 1: completed", text, 1, true)
      local result = cjson.decode(text:match("%*%*Result:%*%*\n(%b{})"))
      assert.are.same({ type = "text", text = "a haiku, later" }, result.content)
      assert.are.same({ taskId = id }, result._meta["io.modelcontextprotocol/related-task"])
      assert.are.equal("Resource trigger-sampling-request-async context: later",
        srv:requests()[1].json.messages[2].content)
      -- kept, as tasks/get and tasks/list show it
      local t = src.client_tasks[id]
      assert.are.same({ "completed", 300000 }, { t.status, t.ttl })
      src:close()
    end)
  end)

  it("without the option: the client declares no sampling, and the server offers no such tool", function()
    local src = tide.integrations.mcp { name = "everything", command = { "node", EVERYTHING, "stdio" }, timeout_ms = 20000 }
    assert.is_nil(names(src)["trigger-sampling-request"])
    assert.is_nil(src.sampling)
    src:close()
  end)

  it("over Streamable HTTP: the request inside the call's stream is answered before the call ends", function()
    helpers.run(function()
      local proc, port = helpers.node_server(EVERYTHING, { "streamableHttp" },
        function(port) return { PORT = tostring(port) } end,
        function(proc) return proc:stderr():find("listening", 1, true) ~= nil end)
      local srv <close>, p = model("over http")
      local asked = {}
      local src = tide.integrations.mcp { name = "remote", url = ("http://127.0.0.1:%d/mcp"):format(port),
        timeout_ms = 20000, sampling = { provider = p, approve = function(params)
          asked[#asked + 1] = params.maxTokens
          return params.maxTokens <= 1000, "asks for too much"
        end } }
      local text = assert(src:execute("trigger-sampling-request", { prompt = "go", maxTokens = 40 }))
      assert.are.equal("over http", cjson.decode(text:match("(%b{})")).content.text)
      -- a person said no: the protocol's rejection, the model never asked
      local r, err = src:execute("trigger-sampling-request", { prompt = "go", maxTokens = 5000 })
      assert.is_nil(r)
      assert.are.equal("ToolError", err.code)
      assert.matches("User rejected sampling request: asks for too much", err.message, 1, true)
      assert.are.same({ 40, 5000 }, asked)
      assert.are.equal(1, #srv:requests())
      assert.are.same({ 1, 1 }, { src.sampling.requests, src.sampling.rejected })
      -- the connection goes on as before
      assert.are.equal("Echo: after", src:execute("echo", { message = "after" }))
      src:close()
      proc:close(2000)
    end)
  end)
end)

describe("MCP sampling, what a client refuses", function()
  -- The client's answer to one sampling request of `params`, decoded.
  local function ask(src, params)
    local text = assert(src:execute("sample", { params = params }))
    return cjson.decode(text)
  end

  it("declares sampling with tools, and answers text and images", function()
    helpers.run(function()
      local srv <close>, p = model("seen")
      local src = scripted { provider = p, max_tokens = 64 }
      assert.are.same({ sampling = { tools = {} }, tasks = { list = {}, cancel = {},
        requests = { sampling = { createMessage = {} } } } }, cjson.decode((assert(src:execute("client_caps", {})))))
      local png = core.base64("\137PNG\r\n\26\n" .. ("\0"):rep(16))
      local a = ask(src, { maxTokens = 500, messages = {
        { role = "user", content = { type = "text", text = "What is this?" } },
        { role = "assistant", content = { { type = "text", text = "Show me." } } },
        { role = "user", content = { { type = "text", text = "This:" }, { type = "image", data = png, mimeType = "image/png" } } },
      } })
      assert.are.same({ role = "assistant", content = { type = "text", text = "seen" }, model = "gpt-5-mini",
        stopReason = "endTurn" }, a.result)
      local body = srv:requests()[1].json
      -- no system prompt asked for: none sent; the source's cap under the request's
      assert.are.equal("user", body.messages[1].role)
      assert.are.equal(64, body.max_completion_tokens)
      assert.are.same({ type = "image_url", image_url = { url = "data:image/png;base64," .. png } },
        body.messages[3].content[2])
      src:close()
    end)
  end)

  it("answers what it does not serve with Invalid params, and a failed model call as an internal error", function()
    helpers.run(function()
      local srv <close>, p = model({ fault = "status", status = 500 })
      local src = scripted { provider = p }
      local text = { role = "user", content = { type = "text", text = "hi" } }
      for _, case in ipairs {
        { params = { messages = { text }, maxTokens = 10, tools = { { name = "t" } } },
          message = "tools[0] needs a name and an inputSchema" },
        { params = { messages = { text }, maxTokens = 10, toolChoice = { mode = "sometimes" } },
          message = "'toolChoice.mode' must be \"auto\", \"required\" or \"none\"" },
        { params = { maxTokens = 10, messages = { text,
            { role = "assistant", content = { type = "tool_use", id = "c1", name = "t", input = {} } },
            { role = "user", content = { { type = "tool_result", toolUseId = "c1", content = json.array {} },
                                         { type = "text", text = "and more" } } } } },
          message = "messages[2]: a message of tool results is a user's, and holds tool results only" },
        { params = { maxTokens = 10, messages = { text,
            { role = "assistant", content = { type = "tool_use", id = "c1", name = "t", input = {} } }, text } },
          message = "messages[2]: tool_use \"c1\" has no tool_result" },
        { params = { maxTokens = 10, messages = { text,
            { role = "assistant", content = { type = "tool_use", id = "c1", name = "t", input = {} } } } },
          message = "tool_use \"c1\" has no tool_result" },
        { params = { maxTokens = 10, messages = { text,
            { role = "user", content = { type = "tool_result", toolUseId = "c9", content = json.array {} } } } },
          message = "messages[1]: tool_result \"c9\" answers no tool_use of the message before" },
        { params = { maxTokens = 10, messages = { text,
            { role = "assistant", content = { type = "tool_use", id = "c1", name = "t", input = {} } },
            { role = "user", content = { type = "tool_result", toolUseId = "c1",
              content = { { type = "image", data = "AAAA", mimeType = "image/png" } } } } } },
          message = "messages[2].content[0].content[0]: a tool result holds text only here" },
        { params = { messages = { text } }, message = "'maxTokens' must be a positive number" },
        { params = { messages = json.array {}, maxTokens = 10 }, message = "'messages' must be a non-empty array" },
        { params = { messages = { { role = "user", content = { type = "audio", data = "AAAA", mimeType = "audio/wav" } } },
          maxTokens = 10 }, message = "audio content is not served" },
        { params = { messages = { { role = "system", content = { type = "text", text = "x" } } }, maxTokens = 10 },
          message = "messages[0].role must be" },
        { params = { messages = { { role = "user", content = { type = "image", data = "AAAA", mimeType = "image/bmp" } } },
          maxTokens = 10 }, message = "images are PNG, JPEG, GIF or WebP, not image/bmp" },
      } do
        local a = ask(src, case.params)
        assert.is_nil(a.result)
        assert.are.equal(-32602, a.error.code)
        assert.matches(case.message, a.error.message, 1, true)
      end
      assert.are.equal(0, #srv:requests())
      -- the model failed: an internal error, with no key in it
      local a = ask(src, { messages = { text }, maxTokens = 10 })
      assert.are.equal(-32603, a.error.code)
      assert.matches("^sampling failed: ", a.error.message)
      assert.is_nil(a.error.message:find("sk-sampling", 1, true))
      assert.are.same({ 1, 1 }, { src.sampling.requests, src.sampling.failed })
      -- an approver that raises is a no
      src:close()
      local src2 = scripted { provider = p, approve = function() error("no person here") end }
      assert.are.equal(-1, ask(src2, { messages = { text }, maxTokens = 10 }).error.code)
      src2:close()
    end)
  end)

  it("offers the request's tools, gives back the model's calls, and takes the server's results", function()
    helpers.run(function()
      local srv <close> = assert(tide.testing.mock_server { default = function(req)
        local msgs = req.json.messages
        if msgs[#msgs].role == "tool" then return "Paris is mild." end
        return { text = "Let me look.", tool_calls = { { id = "call_w", name = "get_weather", arguments = { city = "Paris" } } } }
      end })
      local p = tide.provider.openai { base_url = srv.url .. "/v1", api_key = "sk-sampling", model = "gpt-5-mini",
        stream = false, retry = FAST }
      local src = scripted { provider = p }
      local weather = { name = "get_weather", description = "Weather of a city",
        inputSchema = { type = "object", properties = { city = { type = "string" } }, required = { "city" } } }
      local ask_paris = { role = "user", content = { type = "text", text = "Weather in Paris?" } }
      local a = ask(src, { maxTokens = 100, messages = { ask_paris }, tools = { weather }, toolChoice = { mode = "required" } })
      assert.are.same({ role = "assistant", model = "gpt-5-mini", stopReason = "toolUse", content = {
        { type = "text", text = "Let me look." },
        { type = "tool_use", id = "call_w", name = "get_weather", input = { city = "Paris" } } } }, a.result)
      local body = srv:requests()[1].json
      assert.are.equal("required", body.tool_choice)
      assert.are.same({ type = "function", ["function"] = { name = "get_weather", description = "Weather of a city",
        parameters = weather.inputSchema } }, body.tools[1])
      -- the server ran the tool: the history again, with its result
      a = ask(src, { maxTokens = 100, tools = { weather }, messages = { ask_paris,
        { role = "assistant", content = { { type = "tool_use", id = "call_w", name = "get_weather", input = { city = "Paris" } } } },
        { role = "user", content = { { type = "tool_result", toolUseId = "call_w",
          content = { { type = "text", text = "18 C, cloudy" } } } } } } })
      assert.are.same({ role = "assistant", model = "gpt-5-mini", stopReason = "endTurn",
        content = { type = "text", text = "Paris is mild." } }, a.result)
      local m = srv:requests()[2].json.messages
      assert.are.equal("get_weather", m[2].tool_calls[1]["function"].name)
      assert.are.same({ city = "Paris" }, json.decode(m[2].tool_calls[1]["function"].arguments))
      assert.are.same({ role = "tool", tool_call_id = "call_w", content = "18 C, cloudy" }, m[3])
      assert.is_nil(srv:requests()[2].json.tool_choice) -- (auto: the provider's own)
      src:close()
    end)
  end)

  it("says the tool choice to Anthropic as Anthropic takes it", function()
    helpers.run(function()
      local srv <close> = assert(tide.testing.mock_server { default = "No tools needed." })
      local p = tide.provider.anthropic { base_url = srv.url, api_key = "sk-ant-sampling", model = "claude-sonnet-4-5",
        stream = false, retry = FAST }
      local src = scripted { provider = p }
      local a = ask(src, { maxTokens = 100, messages = { { role = "user", content = { type = "text", text = "hi" } } },
        tools = { { name = "t", inputSchema = { type = "object" } } }, toolChoice = { mode = "none" } })
      assert.are.equal("No tools needed.", a.result.content.text)
      local body = srv:requests()[1].json
      assert.are.same({ type = "none" }, body.tool_choice)
      assert.are.equal("t", body.tools[1].name)
      src:close()
      -- a thinking Claude: served without thinking where it could not be
      local thinker = tide.provider.anthropic { base_url = srv.url, api_key = "sk-ant-sampling",
        model = "claude-sonnet-4-5", stream = false, retry = FAST, max_tokens = 8000, thinking = { budget_tokens = 2048 } }
      src = scripted { provider = thinker }
      local hi = { { role = "user", content = { type = "text", text = "hi" } } }
      local tools = { { name = "t", inputSchema = { type = "object" } } }
      ask(src, { maxTokens = 4000, messages = hi, tools = tools })
      ask(src, { maxTokens = 1000, messages = hi, tools = tools })
      ask(src, { maxTokens = 4000, messages = hi, tools = tools, toolChoice = { mode = "required" } })
      local reqs = srv:requests()
      assert.are.same({ 4000, "enabled", 2048 }, { reqs[2].json.max_tokens, reqs[2].json.thinking.type,
        reqs[2].json.thinking.budget_tokens })
      assert.are.same({ 1000, nil }, { reqs[3].json.max_tokens, reqs[3].json.thinking }) -- (no room for 2048)
      assert.are.same({ { type = "any" }, nil }, { reqs[4].json.tool_choice, reqs[4].json.thinking })
      src:close()
    end)
  end)

  it("checks the option", function()
    local p = tide.provider.openai { base_url = "http://127.0.0.1:1/v1", api_key = "k", model = "m" }
    local function raised(sampling)
      local ok, err = pcall(function() local s = scripted(sampling); return s end)
      assert.is_false(ok)
      return err
    end
    assert.matches("field 'sampling' must be a table", raised(true), 1, true)
    assert.matches("field 'sampling.provider' must be a provider", raised({}), 1, true)
    assert.matches("unknown option 'sampling.model'", raised({ provider = p, model = "x" }), 1, true)
    assert.matches("field 'sampling.approve' must be a function", raised({ provider = p, approve = true }), 1, true)
    assert.matches("field 'sampling.max_tokens' must be a positive integer", raised({ provider = p, max_tokens = 0 }),
      1, true)
    -- a source that samples is another source: another identity, for the
    -- server may offer it other tools
    assert.are_not.equal(scripted():identity(), scripted({ provider = p }):identity())
  end)
end)

describe("MCP elicitation with server-everything", function()
  local function everything(elicit)
    return tide.integrations.mcp { name = "everything", command = { "node", EVERYTHING, "stdio" }, timeout_ms = 20000,
      elicit = elicit }
  end

  it("puts the server's form to the elicit function, and gives back what it was told is wrong", function()
    local asked = {}
    local answers = {
      { "accept", { name = "Ada", check = "yes", integer = 500 } }, -- (twice wrong)
      { "accept", { name = "Ada", check = true, integer = 7, untitledSingleSelectEnum = "Joey",
                    untitledMultipleSelectEnum = { "Piano" } } },
    }
    local src = everything(function(request, errors)
      asked[#asked + 1] = { request = request, errors = errors }
      return table.unpack(table.remove(answers, 1))
    end)
    assert.is_true(names(src)["trigger-elicitation-request"])
    local text = assert(src:execute("trigger-elicitation-request", {}))
    local raw = cjson.decode(text:match("Raw result: (%b{})"))
    assert.are.same({ action = "accept", content = { name = "Ada", check = true, integer = 7,
      untitledSingleSelectEnum = "Joey", untitledMultipleSelectEnum = { "Piano" } } }, raw)
    assert.are.equal(2, #asked)
    local r = asked[1].request
    assert.are.same({ "form", "Please provide inputs for the following fields:" }, { r.mode, r.message })
    assert.are.equal("boolean", r.schema.properties.check.type)
    assert.is_nil(asked[1].errors)
    assert.are.same({ "#/check: expected boolean, got string", "#/integer: more than 100" }, asked[2].errors)
    assert.are.same({ requests = 1, accepted = 1, declined = 0, cancelled = 0 }, src.elicitation)
    src:close()
  end)

  it("puts an elicitation the server asks as a task to the person in the background", function()
    local src = everything(function(request)
      require("tide").sleep(30) -- (a person takes a while)
      return "accept", { name = "Ada", favoriteColor = "Blue" }
    end)
    assert.is_true(names(src)["trigger-elicitation-request-async"])
    local text = assert(src:execute("trigger-elicitation-request-async", {}))
    local raw = cjson.decode(text:match("Raw result: (%b{})"))
    assert.are.same({ action = "accept", content = { name = "Ada", favoriteColor = "Blue" } }, { action = raw.action,
      content = raw.content })
    assert.matches("Task created: tide%-1%-%x+", text)
    src:close()
  end)

  it("tells the server a person declined, cancelled, or never gave a valid answer", function()
    local next_answer
    local src = everything(function() return next_answer() end)
    for _, case in ipairs {
      { answer = function() return "decline" end, action = "decline" },
      { answer = function() return "cancel" end, action = "cancel" },
      { answer = function() error("the person closed the window") end, action = "cancel" },
      { answer = function() return "maybe" end, action = "cancel" },
      { answer = function() return "accept", { check = "never a boolean" } end, action = "cancel" },
    } do
      next_answer = case.answer
      local text = assert(src:execute("trigger-elicitation-request", {}))
      assert.are.equal(case.action, cjson.decode(text:match("Raw result: (%b{})")).action, text)
    end
    assert.are.same({ requests = 5, accepted = 0, declined = 1, cancelled = 4 }, src.elicitation)
    src:close()
  end)

  it("asks a URL request's consent, and a source without elicit offers no such tools", function()
    local seen
    local src = everything(function(request) seen = request return "accept" end)
    assert.is_true(names(src)["trigger-url-elicitation"])
    local text = assert(src:execute("trigger-url-elicitation", { url = "https://example.com/login",
      message = "Sign in", elicitationId = "e-1" }))
    assert.are.same({ mode = "url", message = "Sign in", url = "https://example.com/login", id = "e-1" }, seen)
    assert.matches("accept", text)
    src:close()
    local plain = tide.integrations.mcp { name = "everything", command = { "node", EVERYTHING, "stdio" },
      timeout_ms = 20000 }
    assert.is_nil(names(plain)["trigger-elicitation-request"])
    plain:close()
  end)
end)

describe("MCP roots", function()
  it("are what server-filesystem may read, given as paths", function()
    helpers.run(function()
      local dir = helpers.tmpdir() .. "/my notes" -- (a space: the URI encodes it)
      assert(os.execute(("mkdir -p '%s'"):format(dir)))
      helpers.write(dir .. "/a.txt", "alpha")
      local src = tide.integrations.mcp { name = "files", command = { "node", FILESYSTEM }, timeout_ms = 20000,
        roots = { dir } }
      assert.is_true(names(src).read_text_file)
      -- (the server asks for the roots once initialized, and takes them a
      -- moment later: its own race, any client's)
      helpers.wait_until(function()
        return (src:execute("list_allowed_directories", {}) or ""):find(dir, 1, true) ~= nil
      end, "the server to take the roots", 10000)
      assert.are.equal("alpha", src:execute("read_text_file", { path = dir .. "/a.txt" }))
      local r, err = src:execute("read_text_file", { path = "/etc/hostname" })
      assert.is_nil(r)
      assert.matches("outside allowed directories", err.message, 1, true)
      src:close()
      helpers.rmdir(dir:match("^(.*)/my notes$"))
    end)
  end)

  it("are listed as the protocol has them, and checked", function()
    local src = scripted_with { roots = { "/srv/data dir", { uri = "file:///home/ada", name = "home" } } }
    assert.are.same({ roots = {} }, cjson.decode((assert(src:execute("client_caps", {})))))
    assert.are.same({ roots = { { uri = "file:///srv/data%20dir", name = "data dir" },
      { uri = "file:///home/ada", name = "home" } } }, cjson.decode((assert(src:execute("roots", {})))).result)
    src:close()
    for _, case in ipairs {
      { roots = {}, message = "field 'roots' must be a non-empty list" },
      { roots = { "relative/dir" }, message = "roots[1] must be an absolute path" },
      { roots = { { uri = "https://x" } }, message = "roots[1] must be an absolute path or { uri = \"file://...\", name }" },
    } do
      local ok, err = pcall(function() local s = scripted_with { roots = case.roots }; return s end)
      assert.is_false(ok)
      assert.matches(case.message, err, 1, true)
    end
    local ok, err = pcall(function() local s = scripted_with { elicit = "yes" }; return s end)
    assert.is_false(ok)
    assert.matches("field 'elicit' must be a function", err, 1, true)
  end)
end)

describe("MCP tasks tide runs for a server, by the specification's rules", function()
  local tasks = require "tide.integrations.mcp_client_tasks"

  it("lists, gets, cancels and gives results as the receiver must", function()
    helpers.run(function()
      local src = { sampling_config = {}, client_tasks = {}, client_task_seq = 0 }
      assert.are.same({ list = {}, cancel = {}, requests = { sampling = { createMessage = {} } } }, tasks.capability(src))
      assert.is_nil(tasks.capability({}))
      local out = {}
      local function reply(m) out[#out + 1] = m end
      -- a handle that answers after `ms`, or fails
      local function handle_after(ms, answer)
        return function(_, msg, r)
          return core.spawn(function()
            core.sleep(ms)
            r(answer(msg))
          end)
        end
      end
      local ok_answer = function(msg) return { jsonrpc = "2.0", id = msg.id, result = { role = "assistant", model = "m",
        content = { type = "text", text = "hi" }, _meta = { mine = 1 } } } end
      tasks.accept(src, { jsonrpc = "2.0", id = 7, method = "sampling/createMessage",
        params = { task = { ttl = 99999999 }, messages = {} } }, reply, handle_after(40, ok_answer))
      local created = out[1].result.task
      assert.are.same({ 7, "working", 3600000, 500 }, { out[1].id, created.status, created.ttl, created.pollInterval })
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", created.createdAt)
      local id = created.taskId
      -- tasks/result blocks until the task ends, then is what the request would have answered
      tasks.serve(src, { id = 8, method = "tasks/result", params = { taskId = id } }, reply)
      core.sleep(10)
      assert.are.equal(1, #out)
      helpers.wait_until(function() return #out == 2 end, "the result")
      assert.are.same({ 8, "hi", 1, { taskId = id } }, { out[2].id, out[2].result.content.text, out[2].result._meta.mine,
        out[2].result._meta["io.modelcontextprotocol/related-task"] })
      assert.is_true(tasks.serve(src, { id = 9, method = "tasks/get", params = { taskId = id } }, reply))
      assert.are.same({ id, "completed" }, { out[3].result.taskId, out[3].result.status })
      -- an ended task cannot be cancelled; one tide never had is no task
      tasks.serve(src, { id = 10, method = "tasks/cancel", params = { taskId = id } }, reply)
      assert.are.same({ -32602, "Cannot cancel task " .. id .. ": it is completed" }, { out[4].error.code, out[4].error.message })
      tasks.serve(src, { id = 11, method = "tasks/get", params = { taskId = "nope" } }, reply)
      assert.are.equal(-32602, out[5].error.code)
      -- a working task cancelled stays so; its request's end changes nothing
      tasks.accept(src, { id = 12, method = "sampling/createMessage", params = { task = {} } }, reply,
        handle_after(60, ok_answer))
      local second = out[6].result.task.taskId
      tasks.serve(src, { id = 13, method = "tasks/cancel", params = { taskId = second } }, reply)
      assert.are.same({ second, "cancelled" }, { out[7].result.taskId, out[7].result.status })
      core.sleep(100)
      assert.are.equal("cancelled", src.client_tasks[second].status)
      tasks.serve(src, { id = 14, method = "tasks/result", params = { taskId = second } }, reply)
      helpers.wait_until(function() return #out == 8 end, "the cancelled task's result")
      assert.are.equal("the task was cancelled", out[8].error.message)
      -- a request that failed: its task failed, its result the error
      tasks.accept(src, { id = 15, method = "sampling/createMessage", params = { task = {} } }, reply,
        handle_after(0, function(msg) return { jsonrpc = "2.0", id = msg.id, error = { code = -1, message = "no" } } end))
      local third = out[9].result.task.taskId
      tasks.serve(src, { id = 16, method = "tasks/result", params = { taskId = third } }, reply)
      helpers.wait_until(function() return #out == 10 end, "the failed task's result")
      assert.are.same({ code = -1, message = "no" }, out[10].error)
      tasks.serve(src, { id = 17, method = "tasks/list" }, reply)
      local listed = {}
      for _, t in ipairs(out[11].result.tasks) do listed[t.taskId] = t.status end
      assert.are.same({ [id] = "completed", [second] = "cancelled", [third] = "failed" }, listed)
      assert.is_false(tasks.serve(src, { id = 18, method = "tasks/other" }, reply))
    end)
  end)
end)
