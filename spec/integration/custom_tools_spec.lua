-- Custom (freeform) tools: tide.tool{ format = ... } takes the model's text
-- as it wrote it. OpenAI's chat completions and Responses API offer it as a
-- custom tool (its calls `custom` / `custom_tool_call`, answered in kind);
-- Anthropic and Bedrock as a function of one string argument, `input`. The
-- handler gets a string either way, the transcript keeps what the call was,
-- and a conversation moves between the two kinds of provider.
local helpers = require "helpers"
local tide = require "tide"
local json = require "tide.json"

local FAST = { attempts = 2, base_ms = 1, max_ms = 2 }
local with_mock = helpers.with_mock
local CREDS = { access_key_id = "AKIACUSTOM", secret_access_key = "custom/Secret+Key0123456789EXAMPLE" }
local LARK = 'start: "*** Begin Patch\\n" line+ "*** End Patch"\nline: /.+\\n/'
local PATCH = "*** Begin Patch\n+ tide\n*** End Patch"

local inputs
local patch = tide.tool { name = "apply_patch", description = "Applies a patch to the tree.",
  format = { type = "grammar", syntax = "lark", definition = LARK },
  handler = function(input) inputs[#inputs + 1] = input; return "applied " .. #input .. " bytes" end }
local note = tide.tool { name = "note", description = "Keeps a note.", format = "text",
  handler = function(input) inputs[#inputs + 1] = input; return "kept" end }
local lookup = tide.tool { name = "lookup", description = "Looks up.",
  parameters = { type = "object", properties = { q = { type = "string" } }, required = { "q" } },
  handler = function(a) return "found " .. a.q end }
tide.agent { id = "coder", prompt = "You change code.", tools = { patch, note, lookup } }

-- (the mock is on loopback, an OpenAI-compatible server to tide: custom
-- tools go as such there only when asked to)
local function openai(api, custom)
  return function(url, stream)
    return tide.provider.openai { base_url = url .. "/v1", api_key = "k", model = "gpt-5", stream = stream,
      api = api, retry = FAST, custom_tools = custom }
  end
end

local NATIVE = { chat = openai("chat", true), responses = openai("responses") }

-- The request's tools and the follow-up's conversation, as the mock got them.
local function tool_of(req, name)
  for _, t in ipairs(req.json.tools or {}) do
    if (t.custom and t.custom.name or t.name or t["function"] and t["function"].name) == name then return t end
  end
end

before_each(function() inputs = {} end)

for api, make in pairs(NATIVE) do
  for _, stream in ipairs { true, false } do
    local mode = api .. (stream and ", streamed" or ", not streamed")

    describe("a custom tool (" .. mode .. ")", function()
      it("is offered as one, gets the model's text, and is answered in kind", function()
        with_mock({ replies = {
          { tool_calls = { { name = "apply_patch", input = PATCH }, { name = "lookup", arguments = { q = "x" } },
                           { name = "note", input = "" } } },
          "done",
        } }, function(srv)
          local s = tide.session { agent = "coder", provider = make(srv.url, stream) }
          assert.are.equal("done", (s:turn("patch it")))
          -- the handler got the text as the model wrote it, an empty one too
          assert.are.same({ PATCH, "" }, inputs)
          local reqs = srv:requests()
          assert.are.equal(2, #reqs)
          if api == "chat" then
            assert.are.same({ type = "custom", custom = { name = "apply_patch", description = "Applies a patch to the tree.",
              format = { type = "grammar", grammar = { syntax = "lark", definition = LARK } } } },
              tool_of(reqs[1], "apply_patch"))
            assert.are.same({ type = "custom", custom = { name = "note", description = "Keeps a note.",
              format = { type = "text" } } }, tool_of(reqs[1], "note"))
            assert.are.equal("function", tool_of(reqs[1], "lookup").type)
            local m = reqs[2].json.messages
            local calls = m[3].tool_calls
            assert.are.same({ id = calls[1].id, type = "custom", custom = { name = "apply_patch", input = PATCH } },
              calls[1])
            assert.are.equal("function", calls[2].type)
            assert.are.same({ name = "note", input = "" }, calls[3].custom)
            assert.are.same({ role = "tool", tool_call_id = calls[1].id, content = "applied " .. #PATCH .. " bytes" }, m[4])
          else
            assert.are.same({ type = "custom", name = "apply_patch", description = "Applies a patch to the tree.",
              format = { type = "grammar", syntax = "lark", definition = LARK } }, tool_of(reqs[1], "apply_patch"))
            assert.are.same({ type = "custom", name = "note", description = "Keeps a note.", format = { type = "text" } },
              tool_of(reqs[1], "note"))
            local input = reqs[2].json.input
            assert.are.same({ type = "custom_tool_call", call_id = input[2].call_id, name = "apply_patch", input = PATCH },
              input[2])
            assert.are.equal("function_call", input[3].type)
            assert.are.same({ "custom_tool_call", "note", "" }, { input[4].type, input[4].name, input[4].input })
            assert.are.same({ type = "custom_tool_call_output", call_id = input[2].call_id,
              output = "applied " .. #PATCH .. " bytes" }, input[5])
            assert.are.equal("function_call_output", input[6].type)
            assert.are.equal("custom_tool_call_output", input[7].type)
          end
          -- the history says which calls were custom
          local h = s:history()
          assert.is_true(h[2].tool_calls[1].custom)
          assert.is_nil(h[2].tool_calls[2].custom)
          assert.are.equal(PATCH, h[2].tool_calls[1].arguments)
          assert.is_true(h[3].results[1].custom)
        end)
      end)

      it("is kept in the transcript, and a session resumed from it answers in kind", function()
        local dir = helpers.tmpdir()
        local path = dir .. "/t.jsonl"
        with_mock({ replies = { { tool_calls = { { name = "apply_patch", input = PATCH } } }, "first", "second" } },
          function(srv)
            local s = tide.session { agent = "coder", provider = make(srv.url, stream), transcript = path }
            assert.are.equal("first", (s:turn("patch it")))
            s:close()
            local again = tide.session { agent = "coder", provider = make(srv.url, stream), resume = path }
            assert.are.equal("second", (again:turn("and now?")))
            -- the third request sends the first turn's call as a custom call
            -- again (the mock refuses a custom call answered as a function's)
            local body = srv:requests()[3].json
            if api == "chat" then
              assert.are.same({ name = "apply_patch", input = PATCH }, body.messages[3].tool_calls[1].custom)
            else
              assert.are.equal("custom_tool_call", body.input[2].type)
              assert.are.equal("custom_tool_call_output", body.input[3].type)
            end
            again:close()
          end)
        helpers.rmdir(dir)
      end)
    end)
  end
end

describe("a custom tool's call answered as a function's", function()
  it("is refused by the Responses API as the service refuses it", function()
    with_mock({}, function(srv)
      local res = assert(tide.http.request { method = "POST", url = srv.url .. "/v1/responses",
        headers = { ["content-type"] = "application/json", authorization = "Bearer k" },
        body = json.encode { model = "gpt-5", input = json.array {
          { type = "custom_tool_call", call_id = "call_1", name = "apply_patch", input = PATCH },
          { type = "function_call_output", call_id = "call_1", output = "ok" } } } })
      assert.are.equal(400, res.status)
      assert.matches("No tool call found for function call output with call_id call_1", res.body, 1, true)
    end)
  end)
end)

local OTHERS = {
  compatible = openai("chat"), -- an OpenAI-compatible server's chat completions
  anthropic = function(url, stream)
    return tide.provider.anthropic { base_url = url .. "/v1", api_key = "k", model = "m", stream = stream, retry = FAST }
  end,
  bedrock = function(url, stream)
    return tide.provider.bedrock { base_url = url, model = "us.amazon.nova-pro-v1:0", region = "us-west-2",
      credentials = CREDS, stream = stream, retry = FAST }
  end,
}

for kind, make in pairs(OTHERS) do
  for _, stream in ipairs { true, false } do
    local mode = kind .. (stream and ", streamed" or ", not streamed")
    local mock = { replies = {
      { tool_calls = { { name = "apply_patch", arguments = { input = PATCH } }, { name = "note", arguments = {} } } },
      "done" } }
    if kind == "bedrock" then mock.bedrock = { credentials = CREDS, region = "us-west-2" } end

    describe("a custom tool (" .. mode .. ")", function()
      it("is a function of one string argument, its grammar in the argument's description", function()
        with_mock(mock, function(srv)
          local s = tide.session { agent = "coder", provider = make(srv.url, stream) }
          assert.are.equal("done", (s:turn("patch it")))
          assert.are.same({ PATCH }, inputs)
          local reqs = srv:requests()
          local t = reqs[1].json.tools and tool_of(reqs[1], "apply_patch")
          local schema
          if kind == "compatible" then
            assert.are.equal("function", t.type)
            schema = t["function"].parameters
          elseif kind == "anthropic" then
            schema = t.input_schema
          else
            for _, x in ipairs(reqs[1].json.toolConfig.tools) do
              if x.toolSpec.name == "apply_patch" then schema = x.toolSpec.inputSchema.json end
            end
          end
          assert.are.same({ "input" }, schema.required)
          assert.are.equal("string", schema.properties.input.type)
          assert.are.equal("The tool's input, text in this Lark grammar:\n" .. LARK,
            schema.properties.input.description)
          -- a call without its input string is answered with what is wrong
          local h = s:history()
          assert.are.equal("applied " .. #PATCH .. " bytes", h[3].results[1].content)
          assert.is_true(h[3].results[2].is_error)
          assert.matches("must be a JSON object with an 'input' string", h[3].results[2].content, 1, true)
        end)
      end)
    end)
  end
end

describe("a conversation with custom calls", function()
  it("goes on with a fallback provider that has no custom tools, each call a function's", function()
    with_mock({ replies = { { tool_calls = { { name = "apply_patch", input = PATCH } } },
                            { fault = "status", status = 503 }, { fault = "status", status = 503 } } },
      function(first)
        local second <close> = assert(tide.testing.mock_server { replies = { "from claude" } })
        local p = tide.provider.fallback { NATIVE.responses(first.url, false), OTHERS.anthropic(second.url, false) }
        local s = tide.session { agent = "coder", provider = p }
        assert.are.equal("from claude", (s:turn("patch it")))
        local m = second:requests()[1].json.messages
        assert.are.same({ type = "tool_use", id = m[2].content[1].id, name = "apply_patch",
          input = { input = PATCH } }, m[2].content[1])
        assert.are.equal("tool_result", m[3].content[1].type)
        assert.are.equal(1, s:stats().fallbacks)
      end)
  end)
end)

describe("tide.tool's format", function()
  local function raised(spec)
    local ok, err = pcall(function() local t = tide.tool(spec); return t end)
    assert.is_false(ok)
    return err
  end
  local base = { name = "t", description = "d", handler = function() end }
  local function with(k, v)
    local spec = {}
    for a, b in pairs(base) do spec[a] = b end
    spec[k] = v
    return spec
  end

  it("names what is wrong with it", function()
    assert.matches("'format' must be \"text\" or a format table, got number", raised(with("format", 3)), 1, true)
    assert.matches("'format.type' must be \"text\" or \"grammar\", got json", raised(with("format", { type = "json" })),
      1, true)
    assert.matches("'format.syntax' must be \"lark\" or \"regex\", got ebnf",
      raised(with("format", { type = "grammar", syntax = "ebnf", definition = "x" })), 1, true)
    assert.matches("'format.definition' must be the grammar's text",
      raised(with("format", { type = "grammar", syntax = "regex", definition = " " })), 1, true)
    assert.matches("unknown option 'format.grammar'",
      raised(with("format", { type = "grammar", grammar = { syntax = "lark", definition = "x" } })), 1, true)
    local both = with("format", "text")
    both.parameters = { type = "object" }
    assert.matches("'format' and 'parameters' exclude each other", raised(both), 1, true)
    -- the error points at the caller's line
    assert.matches("custom_tools_spec.lua", raised(with("format", 3)), 1, true)
  end)

  it("goes as a custom tool where the API has them, a function elsewhere, and the option decides", function()
    local spec = { { name = "apply_patch", description = "d", format = { type = "text" } } }
    local function first_tool(opts)
      opts.api_key = "k"
      opts.model = "m"
      local p = tide.provider.openai(opts)
      return json.decode(p:encode_prefix("s", spec) .. "]}").tools[1]
    end
    assert.are.equal("custom", first_tool({ base_url = "https://api.openai.com/v1" }).type)
    assert.are.equal("custom", first_tool({ base_url = "https://res.openai.azure.com/openai/v1" }).type)
    assert.are.equal("custom", first_tool({ base_url = "https://openrouter.ai/api/v1", api = "responses" }).type)
    assert.are.equal("function", first_tool({ base_url = "https://api.groq.com/openai/v1" }).type)
    assert.are.equal("function", first_tool({ base_url = "https://api.openai.com.example/v1" }).type)
    assert.are.equal("custom", first_tool({ base_url = "http://127.0.0.1:8000/v1", custom_tools = true }).type)
    assert.are.equal("function", first_tool({ base_url = "https://api.openai.com/v1", custom_tools = false }).type)
    -- a custom call in the history goes to such a server as the function's call
    local p = tide.provider.openai { base_url = "https://api.groq.com/openai/v1", api_key = "k", model = "m" }
    local wire = json.decode(p:encode_message { role = "assistant", tool_calls = {
      { id = "call_1", name = "apply_patch", arguments = PATCH, custom = true } } })
    assert.are.same({ id = "call_1", type = "function", ["function"] = { name = "apply_patch",
      arguments = json.canonical { input = PATCH } } }, wire.tool_calls[1])
    local r = tide.provider.openai { api = "responses", base_url = "https://gw.example/v1", api_key = "k", model = "m",
      custom_tools = false }
    assert.are.same({ call_id = "call_1", type = "function_call", name = "apply_patch",
      arguments = json.canonical { input = PATCH } }, json.decode(r:encode_message { role = "assistant", tool_calls = {
        { id = "call_1", name = "apply_patch", arguments = PATCH, custom = true } } }))
    assert.are.same({ call_id = "call_1", type = "function_call_output", output = "ok" }, json.decode(
      r:encode_message { role = "tool", results = { { id = "call_1", name = "apply_patch", content = "ok", custom = true } } }))
    assert.has_error(function() tide.provider.openai { custom_tools = "yes" } end,
      "tide.provider.openai: 'custom_tools' must be a boolean, got string")
  end)

  it("is checked by a provider given a tool table by hand", function()
    local p = tide.provider.openai { base_url = "http://127.0.0.1:1/v1", api_key = "k", model = "m" }
    assert.has_error(function()
      p:encode_prefix("s", { { name = "t", format = { type = "grammar", syntax = "lark" } } })
    end, 'tide.provider.openai: tools[1].format must be { type = "text" } or { type = "grammar", syntax = "lark" '
      .. 'or "regex", definition }')
  end)
end)
