-- Anthropic's server tools (web search, web fetch: tools the API runs
-- itself) through tide, against the mock answering as the API does
-- (platform.claude.com, "Server tools"): the server's use of a tool and its
-- result stay in the assistant's content, which goes back exactly as it
-- came (the mock refuses a use without its result, an altered result or
-- citation, and a tool_result for a server's use); a turn the API paused
-- (pause_turn) goes on by itself, the paused reply sent back as it is.
-- Streamed and not.
local helpers = require "helpers"
local tide = require "tide"
local provider = require "tide.provider"
local cjson = require "cjson"

local FAST = { attempts = 2, base_ms = 1, max_ms = 2 }
local WEB_SEARCH = { type = "web_search_20250305", name = "web_search", max_uses = 3 }

local function make(url, stream, extra)
  local o = { base_url = url .. "/v1", api_key = "k", model = "claude-mock", stream = stream, retry = FAST,
              server_tools = { WEB_SEARCH } }
  for k, v in pairs(extra or {}) do o[k] = v end
  return provider.anthropic(o)
end

local with_mock = helpers.with_mock

local tmpname = helpers.tmp_transcript

local lookup = tide.tool {
  name = "lookup", description = "Looks up.",
  parameters = { type = "object", properties = { q = { type = "string" } }, required = { "q" } },
  handler = function(args) return "found " .. args.q end,
}

tide.agent { id = "searcher", prompt = "You search the web and look things up.", tools = { lookup } }

-- The content blocks of each assistant message of a request, by type.
local function assistant_types(req)
  local out = {}
  for _, m in ipairs(req.json.messages) do
    if m.role == "assistant" then
      local types = {}
      for i, b in ipairs(type(m.content) == "table" and m.content or {}) do types[i] = b.type end
      out[#out + 1] = table.concat(types, ",")
    end
  end
  return out
end

for _, stream in ipairs({ true, false }) do
  local mode = stream and "streamed" or "not streamed"

  describe("tide.provider.anthropic server tools (" .. mode .. ")", function()
    it("offers the server tools first, as given, beside the agent's tools", function()
      with_mock({ replies = { "ok" } }, function(srv)
        local s = tide.session { agent = "searcher", provider = make(srv.url, stream) }
        assert.are.equal("ok", assert(s:turn("hi")))
        local tools = srv:requests()[1].json.tools
        assert.are.same({ type = "web_search_20250305", name = "web_search", max_uses = 3 }, tools[1])
        assert.are.equal("lookup", tools[2].name)
        assert.are.equal(2, #tools)
      end)
    end)

    it("answers after a search, and sends the search back as it came with the next round", function()
      local search = { server_tools = { { name = "web_search", input = { query = "tide tables" },
                                          before = "Let me search." } },
                       tool_calls = { { id = "toolu_l1", name = "lookup", arguments = { q = "harbour" } } } }
      with_mock({ replies = { search, "High tide is at 6." } }, function(srv)
        local s = tide.session { agent = "searcher", provider = make(srv.url, stream) }
        assert.are.equal("High tide is at 6.", assert(s:turn("when is high tide?")))
        local reqs = srv:requests()
        assert.are.equal(2, #reqs)
        -- the server's use is not a call of tide's: one lookup ran
        assert.are.equal(1, s:stats().tool_calls)
        -- the first reply's content, in its order, went back whole: the
        -- mock checked each use has its result, unaltered
        assert.are.same({ "text,server_tool_use,web_search_tool_result,tool_use" }, assistant_types(reqs[2]))
        local sent = reqs[2].json.messages[2].content
        assert.are.equal("Let me search.", sent[1].text)
        assert.are.same({ query = "tide tables" }, sent[2].input)
        assert.are.same({ type = "direct" }, sent[2].caller)
        assert.matches("^EncMock", sent[3].content[1].encrypted_content)
        assert.are.same({ q = "harbour" }, sent[4].input)
        -- and the tool's result answers tide's call, not the server's
        local results = reqs[2].json.messages[3].content
        assert.are.equal(1, #results)
        assert.are.equal("toolu_l1", results[1].tool_use_id)
      end)
    end)

    it("leaves out a blank text block of the reply when it sends the content back", function()
      -- (the API's replies hold one now and then, and it refuses one sent
      -- back: "text content blocks must be non-empty", "... must contain
      -- non-whitespace text"; the mock does too)
      for _, blank in ipairs({ "", "\n\n" }) do
        local search = { server_tools = { { name = "web_search", input = { query = "q" }, before = blank } },
                         tool_calls = { { id = "toolu_b1", name = "lookup", arguments = { q = "x" } } } }
        with_mock({ replies = { search, "done" } }, function(srv)
          local s = tide.session { agent = "searcher", provider = make(srv.url, stream) }
          assert.are.equal("done", assert(s:turn("search")))
          local reqs = srv:requests()
          assert.are.same({ "server_tool_use,web_search_tool_result,tool_use" }, assistant_types(reqs[2]))
          -- the rest went back as it came: the mock checked the search
          assert.matches("^EncMock", reqs[2].json.messages[2].content[2].content[1].encrypted_content)
        end)
      end
    end)

    it("keeps the citations of the text that used the search", function()
      local search = { server_tools = { { name = "web_search", input = { query = "moon" } } },
                       text = "The moon pulls the sea." }
      with_mock({ replies = { search, "ok" } }, function(srv)
        local s = tide.session { agent = "searcher", provider = make(srv.url, stream) }
        assert.are.equal("The moon pulls the sea.", assert(s:turn("why tides?")))
        assert.are.equal("ok", assert(s:turn("thanks")))
        local sent = srv:requests()[2].json.messages[2].content
        assert.are.same({ "server_tool_use", "web_search_tool_result", "text" },
          { sent[1].type, sent[2].type, sent[3].type })
        assert.are.equal("web_search_result_location", sent[3].citations[1].type)
        assert.matches("^EncMock", sent[3].citations[1].encrypted_index)
        -- the history keeps the content as a part of the assistant's message
        local parts
        for _, m in ipairs(s:history()) do
          if m.role == "assistant" and m.reasoning then parts = m.reasoning end
        end
        assert.are.equal("content", parts[#parts].type)
      end)
    end)

    it("goes on with a paused turn: the paused reply goes back as it is, no user message added", function()
      local paused = { server_tools = { { name = "web_search", input = { query = "a" } },
                                        { name = "web_search", input = { query = "b" }, pending = true } },
                       stop_reason = "pause_turn" }
      with_mock({ replies = { paused, "Both searched.", "ok" } }, function(srv)
        local s = tide.session { agent = "searcher", provider = make(srv.url, stream) }
        local events = {}
        local reply = assert(s:turn("search twice", { on_event = function(e) events[#events + 1] = e.type end }))
        assert.are.equal("Both searched.", reply)
        local reqs = srv:requests()
        assert.are.equal(2, #reqs)
        -- the second request ends with the paused reply, whose last use has
        -- no result yet: the API runs it now
        local msgs = reqs[2].json.messages
        assert.are.equal(2, #msgs)
        assert.are.equal("assistant", msgs[2].role)
        assert.are.same({ "server_tool_use,web_search_tool_result,server_tool_use" }, assistant_types(reqs[2]))
        assert.are.same({ query = "b" }, msgs[2].content[3].input)
        assert.are.equal(2, s:stats().iterations)
        assert.are.equal("stop", s:stats().stop_reason)
        assert.is_truthy(table.concat(events, " "):find("paused", 1, true))
        -- the next turn sends both replies back, one turn as the API reads
        -- it, the paused use now followed by its result
        assert.are.equal("ok", assert(s:turn("thanks")))
        assert.are.same({ "server_tool_use,web_search_tool_result,server_tool_use",
                          "web_search_tool_result,text" }, assistant_types(srv:requests()[3]))
      end)
    end)

    it("goes on in the container a paused search ran in, and stays in it", function()
      local path = tmpname()
      local dynamic = { type = "web_search_20260209", name = "web_search", allowed_callers = { "direct" } }
      local paused = { server_tools = { { name = "web_search", input = { query = "a" }, pending = true } },
                       stop_reason = "pause_turn" }
      with_mock({ replies = { paused, "Searched.", "ok" } }, function(srv)
        local p = make(srv.url, stream, { server_tools = { dynamic } })
        local s = tide.session { agent = "searcher", provider = p, transcript = path }
        assert.are.equal("Searched.", assert(s:turn("search")))
        local reqs = srv:requests()
        assert.is_nil(reqs[1].json.container)
        -- the reply named its container: the continuation runs there (the
        -- mock refuses a paused container tool's turn anywhere else)
        assert.are.equal("container_mock1", reqs[2].json.container)
        -- and so does the next turn, in a session resumed from the transcript
        local r = tide.session { resume = path, agent = "searcher", provider = make(srv.url, stream,
          { server_tools = { dynamic } }) }
        assert.are.equal("ok", assert(r:turn("more")))
        assert.are.equal("container_mock1", srv:requests()[3].json.container)
      end)
      os.remove(path)
    end)

    it("leaves a queued turn whose transcript ends in a paused reply unfinished", function()
      local path = tmpname()
      local paused = { server_tools = { { name = "web_search", input = { query = "a" }, pending = true } },
                       stop_reason = "pause_turn" }
      with_mock({ replies = { paused, { fault = "status", status = 400 } } }, function(srv)
        local s = tide.session { agent = "searcher", provider = make(srv.url, stream), transcript = path }
        assert.is_nil(s:turn("search"))
      end)
      -- as a queue worker that died here would have left it: the turn's
      -- record before its user message
      local lines = {}
      for line in io.lines(path) do lines[#lines + 1] = line end
      for i, line in ipairs(lines) do
        if line:find('"role":"user"', 1, true) then
          table.insert(lines, i, '{"id":"req-1","type":"turn"}')
          break
        end
      end
      local f = assert(io.open(path, "w"))
      f:write(table.concat(lines, "\n"), "\n")
      f:close()
      local r = tide.session { resume = path, agent = "searcher", provider = make("http://127.0.0.1:9", stream) }
      assert.are.same({ id = "req-1", done = false, iterations = 1 }, r.last_turn)
      os.remove(path)
    end)

    it("counts the searches, and prices them apart from the tokens", function()
      tide.prices { ["claude-mock"] = { input = 3, output = 15, web_search = 10 } }
      local search = { server_tools = { { name = "web_search", input = { query = "a" } },
                                        { name = "web_search", input = { query = "b" } } }, text = "Found." }
      with_mock({ replies = { search } }, function(srv)
        local s = tide.session { agent = "searcher", provider = make(srv.url, stream) }
        assert.are.equal("Found.", assert(s:turn("search twice")))
        local st = s:stats()
        assert.are.equal(2, st.web_searches)
        local tokens = (st.tokens.input * 3 + st.tokens.output * 15) / 1e6
        assert.is_true(math.abs(st.cost_usd - (tokens + 2 * 10 / 1000)) < 1e-12)
      end)
      tide.prices { ["claude-mock"] = false }
    end)

    it("drops the content when the answer came through the output tool (structured_output = \"tool\")", function()
      local answer = { server_tools = { { name = "web_search", input = { query = "tides" } } },
                       text = '{"high":"6:00"}' }
      with_mock({ replies = { answer, "ok" } }, function(srv)
        tide.agent { id = "plain_searcher", prompt = "You search." }
        local s = tide.session { agent = "plain_searcher",
          provider = make(srv.url, stream, { structured_output = "tool" }) }
        local v = assert(s:turn("when?", { schema = { type = "object", properties = { high = { type = "string" } },
          required = { "high" }, additionalProperties = false } }))
        assert.are.equal("6:00", v.high)
        -- the content held the output tool's use, which no result answers:
        -- the next request has the answer as text instead
        assert.are.equal("ok", assert(s:turn("thanks")))
        local sent = srv:requests()[2].json.messages[2]
        assert.are.equal("assistant", sent.role)
        assert.are.equal('{"high":"6:00"}', sent.content)
      end)
    end)

    it("restores the content from the transcript: a resumed session sends it back too", function()
      local path = tmpname()
      local search = { server_tools = { { name = "web_search", input = { query = "q" } } }, text = "Found." }
      with_mock({ replies = { search, "again" } }, function(srv)
        local s = tide.session { agent = "searcher", provider = make(srv.url, stream), transcript = path }
        assert.are.equal("Found.", assert(s:turn("search")))
        local r = tide.session { resume = path, agent = "searcher", provider = make(srv.url, stream) }
        assert.are.equal("again", assert(r:turn("and?")))
        assert.are.same({ "server_tool_use,web_search_tool_result,text" }, assistant_types(srv:requests()[2]))
      end)
      os.remove(path)
    end)
  end)
end

describe("tide.provider.anthropic server tools, sent back wrong", function()
  it("the mock refuses a search result that was altered, and a use left without its result", function()
    with_mock({ replies = { { server_tools = { { name = "web_search", input = { query = "q" } } }, text = "x" } },
                default = "never" }, function(srv)
      local p = make(srv.url, false)
      local prefix = p:encode_prefix("s")
      local user = p:encode_message({ role = "user", content = "q" })
      local res = assert(p:complete(p:body(prefix, { user })))
      local data = res.reasoning[#res.reasoning].data
      local function follow(content)
        local msg = { role = "assistant", content = "x", reasoning = { { type = "content", data = content,
          provider = "anthropic" } } }
        return p:complete(p:body(prefix, { user, p:encode_message(msg),
          p:encode_message({ role = "user", content = "more" }) }))
      end
      local out, err = follow((data:gsub("EncMock", "EncMocX", 1)))
      assert.is_nil(out)
      assert.are.equal(400, err.status)
      assert.matches("invalid `encrypted_content`", err.body, 1, true)
      local blocks = cjson.decode(data)
      out, err = follow(cjson.encode({ blocks[1], blocks[3] }))
      assert.is_nil(out)
      assert.matches("was found without a corresponding `web_search_tool_result` block", err.body, 1, true)
      -- as received, it is taken
      assert.are.equal("never", assert(follow(data)).text)
    end)
  end)

  it("the mock refuses a paused container tool's turn continued without its container", function()
    local dynamic = { type = "web_search_20260209", name = "web_search" }
    with_mock({ replies = { { server_tools = { { name = "web_search", input = { query = "q" }, pending = true } },
                              stop_reason = "pause_turn" } }, default = "done" }, function(srv)
      local p = make(srv.url, true, { server_tools = { dynamic } })
      local prefix = p:encode_prefix("s")
      local user = p:encode_message({ role = "user", content = "q" })
      local res = assert(p:complete(p:body(prefix, { user })))
      assert.are.equal("pause", res.stop)
      assert.are.equal("container_mock1", res.container)
      local paused = p:encode_message({ role = "assistant", content = res.text, reasoning = res.reasoning })
      local out, err = p:complete(p:body(prefix, { user, paused }))
      assert.is_nil(out)
      assert.matches("continue it with the response's container id", err.body, 1, true)
      assert.are.equal("done", assert(p:complete(p:body(p:_container_prefix(prefix, res.container),
        { user, paused }))).text)
    end)
  end)

  it("the mock refuses a blank text block anywhere in a request, as the API does", function()
    with_mock({ default = "never" }, function(srv)
      local p = make(srv.url, false)
      local prefix = p:encode_prefix("s")
      local function send(content)
        return p:complete(p:body(prefix, { '{"content":' .. cjson.encode(content) .. ',"role":"user"}' }))
      end
      local out, err = send({ { type = "text", text = "" } })
      assert.is_nil(out)
      assert.are.equal(400, err.status)
      assert.matches("text content blocks must be non-empty", err.body, 1, true)
      out, err = send({ { type = "text", text = "hi" }, { type = "text", text = " \n" } })
      assert.is_nil(out)
      assert.matches("text content blocks must contain non-whitespace text", err.body, 1, true)
      assert.are.equal("never", assert(send({ { type = "text", text = "hi" } })).text)
    end)
  end)

  it("keeps every other block of a content part byte for byte, and drops one left empty", function()
    local p = provider.anthropic({ base_url = "http://127.0.0.1:1", model = "m" })
    local use = '{"type":"server_tool_use","id":"s","name":"web_search","input":{"a":[]}}'
    local data = '[{"type":"text","text":""}, ' .. use .. ',{"text":" \\n","type":"text"}]'
    local msg = { role = "assistant", content = "", reasoning = { { type = "content", data = data,
      provider = "anthropic" } } }
    assert.are.equal('{"content":[' .. use .. '],"role":"assistant"}', p:encode_message(msg))
    msg.reasoning[1].data = '[{"type":"text","text":""}]'
    assert.are.equal("", p:encode_message(msg))
  end)

  it("sends the content part to Anthropic only, and checks a restored one", function()
    local p = provider.anthropic({ base_url = "http://127.0.0.1:1", model = "m" })
    local data = '[{"type":"server_tool_use","id":"s","name":"web_search","input":{}}]'
    local msg = { role = "assistant", content = "hi", reasoning = { { type = "content", data = data,
      provider = "anthropic" } } }
    assert.are.equal('{"content":' .. data .. ',"role":"assistant"}', p:encode_message(msg))
    local o = provider.openai({ base_url = "http://127.0.0.1:1", model = "m" })
    assert.are.equal('{"content":"hi","role":"assistant"}', o:encode_message(msg))
    assert.has_error(function()
      p:encode_message({ role = "assistant", content = "hi", reasoning = { { type = "content", data = "{}",
        provider = "anthropic" } } })
    end, "tide.provider.anthropic: reasoning[1] (content) needs 'data', the content's JSON array")
  end)
end)

describe("tide.provider server_tools option", function()
  local function fails(kind, opts, want)
    opts.base_url = "http://127.0.0.1:1"
    local ok, err = pcall(provider[kind], opts)
    assert.is_false(ok)
    assert.matches(want, tostring(err), 1, true)
  end

  it("says what is wrong with it", function()
    fails("anthropic", { server_tools = { type = "web_search_20250305" } },
      "'server_tools' must be a list of tool tables")
    fails("anthropic", { server_tools = { { name = "web_search" } } }, "'server_tools[1]' needs a 'type' string")
    fails("anthropic", { server_tools = { { type = "web_search_20250305" } } },
      "'server_tools[1]' needs a 'name' string")
    fails("anthropic", { server_tools = { { type = "function", name = "f" } } },
      "'server_tools[1]' is a function tool: give it to an agent's tools")
    fails("openai", { server_tools = { { type = "web_search" } } },
      "'server_tools' needs api = \"responses\"")
    -- (a remote MCP server's approvals are the turn's: see responses_spec)
    for _, approval in ipairs { false, "always", "never", { never = { tool_names = { "ask" } } } } do
      assert.is_truthy(provider.openai { api = "responses", base_url = "http://127.0.0.1:1", server_tools = {
        { type = "web_search" }, { type = "mcp", server_label = "wiki", server_url = "https://mcp.example/mcp",
                                   require_approval = approval or nil } } })
    end
    fails("anthropic", { server_tools = "web_search" }, "'server_tools' must be a table, got string")
    -- the Responses API's tools whose calls the client answers: tide runs none
    for _, t in ipairs {
      { type = "apply_patch" }, { type = "computer_use_preview", display_width = 1024, display_height = 768 },
      { type = "computer" }, { type = "local_shell" }, { type = "shell", environment = { type = "local" } },
      { type = "tool_search", execution = "client" }, { type = "programmatic_tool_calling" },
    } do
      fails("openai", { api = "responses", server_tools = { { type = "web_search" }, t } },
        ("'server_tools[2]' (%s) is a tool the client runs: "):format(t.type))
    end
    -- the ones the service runs itself are taken
    for _, t in ipairs { { type = "shell", environment = { type = "container_auto" } },
                         { type = "tool_search" }, { type = "code_interpreter", container = { type = "auto" } } } do
      assert.is_truthy(provider.openai { api = "responses", base_url = "http://127.0.0.1:1", server_tools = { t } })
    end
  end)

  it("refuses an agent tool named as a server tool", function()
    local p = provider.anthropic({ base_url = "http://127.0.0.1:1", model = "m", server_tools = { WEB_SEARCH } })
    assert.has_error(function() p:encode_prefix("s", { { name = "web_search" } }) end,
      'tide.provider.anthropic: tools[1] is named "web_search", as a server tool is')
  end)

  it("encodes them once: a later change to the caller's table changes no prefix", function()
    local tool = { type = "web_search_20250305", name = "web_search" }
    local p = provider.anthropic({ base_url = "http://127.0.0.1:1", model = "m", server_tools = { tool } })
    local before = p:encode_prefix("s")
    tool.max_uses = 9
    assert.are.equal(before, p:encode_prefix("s"))
    assert.is_truthy(before:find('"tools":[{"name":"web_search","type":"web_search_20250305"}]', 1, true))
  end)
end)
