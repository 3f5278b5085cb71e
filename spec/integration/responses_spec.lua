-- tide.provider.openai{ api = "responses" } against the mock speaking the
-- OpenAI Responses API as the real service does: output items and their
-- streamed events, parallel function calls, reasoning items (encrypted
-- content, summaries) sent back verbatim, usage, incomplete responses,
-- failures, and requests validated the way the API validates them (an
-- output without its call, altered reasoning, chat's parameter names).
-- Streamed and not.
local helpers = require "helpers"
local tide = require "tide"
local provider = require "tide.provider"
local testing = require "tide.testing"

local FAST = { attempts = 2, base_ms = 1, max_ms = 2 }

local raised = require("helpers").raised

local function make(url, stream, extra)
  local o = { api = "responses", base_url = url .. "/v1", api_key = "k", model = "gpt-mock", stream = stream,
              retry = FAST }
  for k, v in pairs(extra or {}) do o[k] = v end
  return provider.openai(o)
end

local with_mock = helpers.with_mock

local lookup_tool = { name = "lookup", description = "Looks up.",
                      parameters = { type = "object", properties = { q = { type = "string" } } } }

local function assistant_of(res)
  return { role = "assistant", content = res.text ~= "" and res.text or nil,
           tool_calls = #res.tool_calls > 0 and res.tool_calls or nil, reasoning = res.reasoning }
end

local function results_of(res)
  local results = {}
  for i, c in ipairs(res.tool_calls) do results[i] = { id = c.id, name = c.name, content = "found " .. i } end
  return { role = "tool", results = results }
end

local function define_looker(id)
  tide.agent { id = id, prompt = "You look things up.", tools = { tide.tool {
    name = "lookup", description = "Looks up.",
    parameters = { type = "object", properties = { q = { type = "string" } }, required = { "q" } },
    handler = function(args) return "found " .. args.q end } } }
end

-- A turn of `agent` ("when?", answered "High tide is at 6.") on a session
-- with `popts` written to a transcript, then its resume's turn ("sure?",
-- "Still 6."). Returns the second request's input items, their types, and
-- whether the third request carried the second's input again, byte for byte.
local function turn_and_resume(srv, stream, agent, popts)
  local dir = helpers.tmpdir()
  local function session(o)
    return tide.session(setmetatable({ agent = agent, provider = make(srv.url, stream, popts) }, { __index = o }))
  end
  local s = session { transcript = dir .. "/t.jsonl" }
  assert.are.equal("High tide is at 6.", assert(s:turn("when?")))
  s:close()
  local r = assert(session { resume = dir .. "/t.jsonl" })
  assert.are.equal("Still 6.", assert(r:turn("sure?")))
  r:close()
  helpers.rmdir(dir)
  local input, types = srv:requests()[2].json.input, {}
  for i, item in ipairs(input) do types[i] = item.type end
  local items = srv:requests()[2].body:match('"input":%[(.*)%]}$')
  local again = srv:requests()[3].body
  return input, types, items ~= nil and again:find(items:sub(1, #items - 1), 1, true) ~= nil, again
end

for _, stream in ipairs({ true, false }) do
  local mode = stream and "streamed" or "not streamed"

  describe("tide.provider.openai{ api = \"responses\" } (" .. mode .. ")", function()
    it("posts to /responses, stateless, and reads the text", function()
      with_mock({ replies = { { text = "hello there, friend" } } }, function(srv)
        local p = make(srv.url, stream)
        local deltas = {}
        local res = assert(p:complete(p:body(p:encode_prefix("Be brief.", {}),
          { p:encode_message({ role = "user", content = "hi" }) }),
          { on_delta = function(t) deltas[#deltas + 1] = t end }))
        assert.are.equal("hello there, friend", res.text)
        assert.are.equal("hello there, friend", table.concat(deltas))
        assert.are.equal("stop", res.stop)
        assert.are.equal("completed", res.stop_raw)
        local req = srv:requests()[1]
        assert.are.equal("/v1/responses", req.path)
        assert.is_false(req.json.store)
        assert.are.equal("Be brief.", req.json.instructions)
        assert.are.equal(stream, req.json.stream)
        assert.is_nil(req.json.include) -- only with reasoning on
        assert.are.same({ { type = "message", role = "user", content = { { type = "input_text", text = "hi" } } } },
          req.json.input)
      end)
    end)

    it("offers built-in tools first, reads past their items, and answers with the cited text", function()
      define_looker("responses_searcher")
      local search = { server_tools = { { name = "web_search", input = { query = "tide tables" } } },
                       tool_calls = { { id = "call_L", name = "lookup", arguments = { q = "harbour" } } } }
      with_mock({ replies = { search, { server_tools = { { name = "web_search", input = { query = "moon" } } },
                                        text = "High tide is at 6." } } }, function(srv)
        local s = tide.session { agent = "responses_searcher",
          provider = make(srv.url, stream, { server_tools = { { type = "web_search", search_context_size = "low" } } }) }
        assert.are.equal("High tide is at 6.", assert(s:turn("when?")))
        local reqs = srv:requests()
        assert.are.same({ type = "web_search", search_context_size = "low" }, reqs[1].json.tools[1])
        assert.are.equal("lookup", reqs[1].json.tools[2].name)
        -- the search went back as it came (what was searched and found),
        -- before tide's call and its output
        local types = {}
        for i, item in ipairs(reqs[2].json.input) do types[i] = item.type end
        assert.are.same({ "message", "web_search_call", "function_call", "function_call_output" }, types)
        assert.are.same({ type = "web_search_call", id = "ws_mock1_1", status = "completed",
          action = { type = "search", query = "tide tables" } }, reqs[2].json.input[2])
        assert.are.equal(1, s:stats().tool_calls)
        -- each web_search_call is a search billed apart
        assert.are.equal(2, s:stats().web_searches)
      end)
    end)

    it("reads parallel function calls, ids being call_ids", function()
      with_mock({ replies = { { tool_calls = { { name = "lookup", arguments = { q = "a" }, id = "call_A" },
                                                { name = "lookup", arguments = '{"q":"b","n":[]}', id = "call_B" } } } } },
        function(srv)
          local p = make(srv.url, stream, { parallel_tool_calls = true })
          local res = assert(p:complete(p:body(p:encode_prefix("s", { lookup_tool }),
            { p:encode_message({ role = "user", content = "q" }) })))
          assert.are.equal("tool_calls", res.stop)
          assert.are.equal(2, #res.tool_calls)
          assert.are.same({ id = "call_A", name = "lookup", arguments = '{"q":"a"}' }, res.tool_calls[1])
          -- The model's own argument text, verbatim (its [] stays an array).
          assert.are.equal('{"q":"b","n":[]}', res.tool_calls[2].arguments)
          local tools = srv:requests()[1].json.tools
          -- strict = false said outright: left out, the API takes the tool as strict.
          assert.is_false(tools[1].strict)
          assert.are.equal("lookup", tools[1].name)
          assert.is_true(srv:requests()[1].json.parallel_tool_calls)
        end)
    end)

    it("sends calls and outputs back as items the API accepts", function()
      with_mock({ replies = { { tool_calls = { { name = "lookup", arguments = { q = "a" } },
                                                { name = "lookup", arguments = { q = "b" } } } }, "done" } },
        function(srv)
          local p = make(srv.url, stream)
          local prefix = p:encode_prefix("s", { lookup_tool })
          local msgs = { p:encode_message({ role = "user", content = "q" }) }
          local res = assert(p:complete(p:body(prefix, msgs)))
          msgs[2] = p:encode_message(assistant_of(res))
          msgs[3] = p:encode_message(results_of(res))
          local res2, err = p:complete(p:body(prefix, msgs))
          assert.is_nil(err, err and tostring(err))
          assert.are.equal("done", res2.text)
          local input = srv:requests()[2].json.input
          assert.are.same({ "message", "function_call", "function_call", "function_call_output",
                            "function_call_output" }, { input[1].type, input[2].type, input[3].type,
                            input[4].type, input[5].type })
          assert.are.equal(res.tool_calls[2].id, input[5].call_id)
          assert.are.equal("found 2", input[5].output)
        end)
    end)

    it("runs a session's tool loop to its answer, accepted by the validating mock", function()
      with_mock({ default = testing.tool_loop(3, "lookup") }, function(srv)
        define_looker("responses_looker")
        local s = tide.session { agent = "responses_looker", provider = make(srv.url, stream) }
        local reply, err = s:turn("find three")
        assert.is_nil(err, err and tostring(err))
        assert.are.equal("done after 3 lookups", reply)
        assert.are.equal(4, srv:request_count())
        assert.are.equal("stop", s:stats().stop_reason)
        -- An assistant text turn goes back as output_text.
        local reply2, err2 = s:turn("again")
        assert.is_nil(err2, err2 and tostring(err2))
        local input = srv:requests()[5].json.input
        local last_assistant
        for _, item in ipairs(input) do
          if item.type == "message" and item.role == "assistant" then last_assistant = item end
        end
        assert.are.equal("output_text", last_assistant.content[1].type)
        assert.truthy(reply2)
      end)
    end)

    it("round-trips reasoning items verbatim, before the calls, with their summary", function()
      with_mock({ replies = { { reasoning = "Weighing the options.", tool_calls = { { name = "lookup",
                                 arguments = { q = "a" } } }, usage = { input = 40, output = 30, reasoning = 20 } },
                               "answer" } },
        function(srv)
          local p = make(srv.url, stream, { reasoning = { effort = "low", summary = "auto" } })
          local prefix = p:encode_prefix("s", { lookup_tool })
          local msgs = { p:encode_message({ role = "user", content = "q" }) }
          local heard = {}
          local res = assert(p:complete(p:body(prefix, msgs),
            { on_reasoning = function(t) heard[#heard + 1] = t end }))
          local r = res.reasoning[1]
          assert.are.equal("encrypted", r.type)
          assert.are.equal("openai_responses", r.provider)
          assert.matches("^rs_", r.id)
          assert.matches("^gAAAA", r.data)
          assert.are.equal("Weighing the options.", r.summary)
          if stream then assert.are.equal("Weighing the options.", table.concat(heard)) end
          assert.are.equal(20, res.usage.reasoning)
          local req1 = srv:requests()[1].json
          assert.are.same({ "reasoning.encrypted_content" }, req1.include)
          assert.are.same({ effort = "low", summary = "auto" }, req1.reasoning)
          msgs[2] = p:encode_message(assistant_of(res))
          msgs[3] = p:encode_message(results_of(res))
          local res2, err = p:complete(p:body(prefix, msgs))
          assert.is_nil(err, err and tostring(err))
          assert.are.equal("answer", res2.text)
          local input = srv:requests()[2].json.input
          assert.are.equal("reasoning", input[2].type)
          -- stateless: the encrypted content alone, no id to look up (the
          -- mock, as the API, refuses an id it never stored)
          assert.is_nil(input[2].id)
          assert.are.equal(r.data, input[2].encrypted_content)
          assert.are.same({ { type = "summary_text", text = "Weighing the options." } }, input[2].summary)
          assert.are.equal("function_call", input[3].type)
        end)
    end)

    it("sends a web search back as it came, after the reasoning that led to it, through a resume", function()
      define_looker("responses_thinking_searcher")
      local reply = { reasoning = "Search first.", server_tools = { { name = "web_search", input = { query = "tides" } } },
                      tool_calls = { { id = "call_W", name = "lookup", arguments = { q = "port" } } } }
      with_mock({ replies = { reply, "High tide is at 6.", "Still 6." } }, function(srv)
        local input, types, resent, again = turn_and_resume(srv, stream, "responses_thinking_searcher",
          { reasoning = { effort = "low", summary = "auto" }, server_tools = { { type = "web_search" } } })
        -- stateless, the reasoning item without its id, the search with its
        -- own (the service takes a hosted call back whole), in their order
        assert.are.same({ "message", "reasoning", "web_search_call", "function_call", "function_call_output" }, types)
        assert.is_nil(input[2].id)
        assert.are.same({ type = "web_search_call", id = "ws_mock1_1", status = "completed",
          action = { type = "search", query = "tides" } }, input[3])
        -- resumed in another session: the same items, byte for byte
        assert.is_true(resent)
        assert.are.equal(1, select(2, again:gsub('"type":"web_search_call"', "")))
      end)
    end)

    it("keeps the service's compaction in its place, its id only when something is stored, through a resume", function()
      define_looker("responses_compacted")
      for _, store in ipairs { false, true } do
        -- the first reply comes after the threshold: its compaction first
        with_mock({ replies = { { compaction = true, tool_calls = { { id = "call_C", name = "lookup", arguments = { q = "x" } } } },
                                "High tide is at 6.", "Still 6." } }, function(srv)
          local input, types, resent = turn_and_resume(srv, stream, "responses_compacted",
            { store = store, extra_body = { context_management = { { type = "compaction", compact_threshold = 1000000 } } } })
          assert.are.same({ "message", "compaction", "function_call", "function_call_output" }, types)
          assert.are.equal(store and "cmp_mock1" or nil, input[2].id)
          -- the encrypted summary as it came (the mock refuses it altered)
          assert.matches("^gAAAAMockcmp_mock1~", input[2].encrypted_content)
          assert.is_true(resent)
          assert.are.equal("compaction", srv:requests()[3].json.input[2].type)
        end)
      end
      -- an altered summary is the service's 400, as an altered reasoning item is
      with_mock({}, function(srv)
        local p = make(srv.url, stream)
        local res, err = p:complete(p:encode_prefix("s", {}) .. p:encode_message({ role = "user", content = "hi" })
          .. "," .. '{"encrypted_content":"gAAAAMockcmp_mock9~c9.0000","type":"compaction"}' .. "]}")
        assert.is_nil(res)
        assert.are.equal(400, err.status)
        assert.matches("could not be verified", err.body, 1, true)
      end)
    end)

    it("sends every hosted tool's item back as it came: file search, code, an image, a remote MCP server", function()
      define_looker("responses_hosted")
      local hosted = {
        { name = "file_search", input = { queries = { "tide tables" } } },
        { name = "code_interpreter", input = { code = "print(6 * 60)" } },
        { name = "image_generation", input = { result = "iVBORw0KGgoAAAANSUhEUg==", revised_prompt = "A harbour." } },
        { name = "mcp", input = { name = "ask_question", arguments = '{"q":"tides"}', output = "At 6." } },
      }
      local offered = { { type = "file_search", vector_store_ids = { "vs_1" } },
                        { type = "code_interpreter", container = { type = "auto" } },
                        { type = "image_generation" },
                        { type = "mcp", server_label = "wiki", server_url = "https://mcp.example/mcp",
                          require_approval = "never" } }
      with_mock({ replies = { { server_tools = hosted, tool_calls = { { id = "call_H", name = "lookup",
                                                                        arguments = { q = "port" } } } },
                              "High tide is at 6.", "Still 6." } }, function(srv)
        local input, types, resent = turn_and_resume(srv, stream, "responses_hosted", { server_tools = offered })
        assert.are.same({ "message", "file_search_call", "code_interpreter_call", "image_generation_call",
                          "mcp_list_tools", "mcp_call", "function_call", "function_call_output" }, types)
        assert.are.same({ type = "file_search_call", id = "fs_mock1_1", status = "completed",
                          queries = { "tide tables" }, results = testing._wire.null }, input[2])
        assert.are.same({ type = "code_interpreter_call", id = "ci_mock1_2", status = "completed",
                          container_id = "cntr_mock1", code = "print(6 * 60)", outputs = testing._wire.null }, input[3])
        assert.are.same({ type = "image_generation_call", id = "ig_mock1_3", status = "completed",
                          result = "iVBORw0KGgoAAAANSUhEUg==", revised_prompt = "A harbour." }, input[4])
        assert.are.equal("wiki", input[5].server_label)
        assert.are.equal("ask_question", input[5].tools[1].name)
        assert.are.same({ type = "mcp_call", id = "mcp_mock1_4", server_label = "wiki", name = "ask_question",
                          arguments = '{"q":"tides"}', output = "At 6.", error = testing._wire.null }, input[6])
        -- kept in the transcript: a resumed session sends them again
        assert.is_true(resent)
      end)
    end)

    -- A remote MCP server whose calls wait for approval (require_approval
    -- left at the API's "always"), and the two replies of the service.
    local WIKI = { type = "mcp", server_label = "wiki", server_url = "https://mcp.example/mcp" }
    local ASK = { name = "ask_question", arguments = '{"q":"tides"}' }
    local function asks() return { server_tools = { { name = "mcp", approval = true, input = ASK } } } end

    it("asks a person before a remote MCP server's call, across a restart, and answers the service", function()
      define_looker("responses_mcp_ask")
      local answered = { server_tools = { { name = "mcp", input = { name = ASK.name, arguments = ASK.arguments,
                                                                     output = "At 6." } } },
                         text = "High tide is at 6." }
      with_mock({ replies = { asks(), answered } }, function(srv)
        local dir = helpers.tmpdir()
        local function session(o)
          return assert(tide.session(setmetatable({ agent = "responses_mcp_ask",
            provider = make(srv.url, stream, { server_tools = { WIKI } }) }, { __index = o })))
        end
        local s = session { transcript = dir .. "/t.jsonl" }
        local events = {}
        local reply, err = s:turn("when?", { on_event = function(ev) events[#events + 1] = ev.type end })
        assert.is_nil(reply)
        assert.are.equal("ApprovalRequired", err.code)
        assert.are.same({ { id = "mcpr_mock1_1", name = "ask_question", arguments = '{"q":"tides"}',
                            agent = "responses_mcp_ask", server = "wiki" } }, err.pending)
        assert.are.equal(0, s:stats().tool_calls) -- (nothing of tide's ran)
        assert.is_truthy(table.concat(events, " "):find("tool_start", 1, true))
        s:close()
        -- another process: the pause and the server's call come back from the transcript
        local r = session { resume = dir .. "/t.jsonl" }
        assert.are.same(err.pending, r:pending())
        assert(r:approve("mcpr_mock1_1"))
        assert.are.equal("High tide is at 6.", assert(r:resume()))
        r:close()
        -- nothing of tide's ran: no "running" record, which would make a
        -- restart answer the call "interrupted" instead of approved
        assert.is_nil(helpers.read(dir .. "/t.jsonl"):find('"type":"running"', 1, true))
        helpers.rmdir(dir)
        local input, types = srv:requests()[2].json.input, {}
        for i, item in ipairs(input) do types[i] = item.type end
        -- the request item as it came, then the answer (no reason with an approval)
        assert.are.same({ "message", "mcp_list_tools", "mcp_approval_request", "mcp_approval_response" }, types)
        assert.are.same({ type = "mcp_approval_request", id = "mcpr_mock1_1", server_label = "wiki",
                          name = "ask_question", arguments = '{"q":"tides"}' }, input[3])
        assert.are.same({ type = "mcp_approval_response", approval_request_id = "mcpr_mock1_1", approve = true },
                        input[4])
        assert.is_false(srv:requests()[2].json.store)
      end)
    end)

    it("sends a rejection back with its reason, and runs a function call of the same reply", function()
      define_looker("responses_mcp_no")
      local both = asks()
      both.tool_calls = { { id = "call_L", name = "lookup", arguments = { q = "port" } } }
      with_mock({ replies = { both, "I may not ask the wiki; the port says 6." } }, function(srv)
        local s = tide.session { agent = "responses_mcp_no",
          provider = make(srv.url, stream, { server_tools = { WIKI } }) }
        local _, err = s:turn("when?")
        assert.are.equal("ApprovalRequired", err.code)
        assert.are.equal(1, #err.pending)
        assert.are.equal("wiki", err.pending[1].server)
        assert(s:reject("mcpr_mock1_1", "not now"))
        assert.are.equal("I may not ask the wiki; the port says 6.", assert(s:resume()))
        assert.are.equal(1, s:stats().tool_calls)
        local input = srv:requests()[2].json.input
        local types = {}
        for i, item in ipairs(input) do types[i] = item.type end
        assert.are.same({ "message", "mcp_list_tools", "mcp_approval_request", "function_call",
                          "function_call_output", "mcp_approval_response" }, types)
        assert.are.same({ type = "mcp_approval_response", approval_request_id = "mcpr_mock1_1", approve = false,
                          reason = "Error: rejected by the user: not now" }, input[6])
        assert.are.equal("found port", input[5].output)
      end)
    end)

    it("gets the service's 400 for an answer without its request, or a reason with an approval", function()
      with_mock({ replies = { "x", "x" } }, function(srv)
        local p = make(srv.url, stream)
        local prefix = p:encode_prefix("s", {})
        local user = p:encode_message({ role = "user", content = "q" })
        local function send(result)
          return p:complete(p:body(prefix, { user, p:encode_message({ role = "tool", results = { result } }) }))
        end
        local _, err = send { id = "mcpr_gone", name = "ask", content = "approved", approve = true }
        assert.are.equal(400, err.status)
        assert.matches("No approval request found for mcp_approval_response with approval_request_id mcpr_gone",
          err.message, 1, true)
        -- (tide sends a reason only with a rejection: the service refuses one with an approval)
        local approved = p:encode_message({ role = "tool", results = {
          { id = "mcpr_1", name = "ask", content = "approved", approve = true, reason = "because" } } })
        assert.are.equal('{"approval_request_id":"mcpr_1","approve":true,"type":"mcp_approval_response"}', approved)
      end)
    end)

    it("fails a turn on an approval request without its fields, and keeps nothing of the reply", function()
      define_looker("responses_mcp_bad")
      local body = '{"id":"resp_1","object":"response","status":"completed","output":['
        .. '{"type":"mcp_approval_request","id":"mcpr_x","server_label":"wiki","arguments":"{}"}],'
        .. '"usage":{"input_tokens":5,"output_tokens":1,"total_tokens":6}}'
      local sse = 'event: response.completed\ndata: {"type":"response.completed","response":' .. body .. '}\n\n'
      -- (a "status" fault with 200 is a body as given)
      with_mock({ replies = { { fault = "status", status = 200, body = stream and sse or body,
        headers = { ["content-type"] = stream and "text/event-stream" or "application/json" } } } }, function(srv)
        local s = tide.session { agent = "responses_mcp_bad",
          provider = make(srv.url, stream, { server_tools = { WIKI } }) }
        local reply, err = s:turn("when?")
        assert.is_nil(reply)
        assert.are.equal("MalformedResponse", err.code)
        assert.matches("mcp_approval_request mcpr_x needs 'name', 'server_label' and 'arguments' strings",
          err.message, 1, true)
        local h = s:history()
        assert.are.equal("user", h[#h].role)
      end)
    end)

    it("leaves the server's calls out for a fallback provider that never offered them", function()
      define_looker("responses_mcp_fb")
      local down = testing.mock_server { replies = { asks(), { fault = "status", status = 503 },
                                                     { fault = "status", status = 503 } } }
      local up = testing.mock_server { default = "Asked nobody: 6." }
      finally(function() down:close() up:close() end)
      local s = tide.session { agent = "responses_mcp_fb", provider = tide.provider.fallback {
        make(down.url, stream, { server_tools = { WIKI } }),
        provider.openai { base_url = up.url .. "/v1", api_key = "k", model = "gpt-4o", stream = stream } } }
      local _, err = s:turn("when?")
      assert.are.equal("ApprovalRequired", err.code)
      assert(s:approve("mcpr_mock1_1"))
      assert.are.equal("Asked nobody: 6.", assert(s:resume()))
      assert.are.equal(1, s:stats().fallbacks)
      -- chat completions got the question alone: no call of a tool it never had, no result
      local msgs = up:requests()[1].json.messages
      assert.are.equal(2, #msgs)
      assert.are.same({ "system", "user" }, { msgs[1].role, msgs[2].role })
    end)

    it("counts file searches, billed per call apart from the tokens", function()
      define_looker("responses_filer")
      tide.prices { ["gpt-mock"] = { input = 1, output = 2, file_search = 2.5 } }
      finally(function() tide.prices { ["gpt-mock"] = false } end)
      local twice = { { name = "file_search", input = { queries = { "a" } } },
                      { name = "file_search", input = { queries = { "b" } } } }
      with_mock({ replies = { { server_tools = twice, text = "Found it.", usage = { input = 100, output = 10 } } } },
        function(srv)
          local s = tide.session { agent = "responses_filer",
            provider = make(srv.url, stream, { server_tools = { { type = "file_search", vector_store_ids = { "vs_1" } } } }) }
          assert.are.equal("Found it.", assert(s:turn("find")))
          local st = s:stats()
          assert.are.equal(2, st.file_searches)
          assert.are.equal(0, st.web_searches)
          assert.are.near((100 * 1 + 10 * 2) / 1e6 + 2 * 2.5 / 1000, st.cost_usd, 1e-12)
        end)
    end)

    it("refuses a restored hosted tool's item that is not one", function()
      local p = make("http://127.0.0.1:9", stream)
      for _, bad in ipairs { "not json", '{"type":"message","id":"m"}', '{"type":"web_search_call"}', "[]",
                             '{"type":"mcp_approval_response","id":"mcpa_1"}', '{"type":"computer_call","id":"cu_1"}' } do
        local ok, err = pcall(p.encode_message, p, { role = "assistant", content = "x",
          reasoning = { { type = "item", provider = "openai_responses", id = "ws_1", item = bad } } })
        assert.is_false(ok)
        assert.matches("reasoning%[1%] %(a Responses hosted tool's item%) needs 'item'", tostring(err))
      end
    end)

    it("sends no reasoning item that nothing follows (a reply cut off while reasoning)", function()
      local p = make("http://127.0.0.1:9", stream, { reasoning = { effort = "low" } })
      local reasoning = { { type = "encrypted", id = "rs_1", data = "gAAAAcut", summary = "", provider = "openai_responses" } }
      assert.are.equal("", p:encode_message({ role = "assistant", content = "", reasoning = reasoning }))
      local kept = p:encode_message({ role = "assistant", content = "done", reasoning = reasoning })
      assert.matches('"type":"reasoning"', kept, 1, true)
    end)

    it("gets the real error for a reasoning item sent back with its id while nothing is stored", function()
      with_mock({ replies = { { reasoning = true, tool_calls = { { name = "lookup", arguments = {} } } }, "x" } },
        function(srv)
          local p = make(srv.url, stream, { reasoning = { effort = "medium" } })
          local kept = make(srv.url, stream, { reasoning = { effort = "medium" }, store = true })
          local prefix = p:encode_prefix("s", { lookup_tool })
          local msgs = { p:encode_message({ role = "user", content = "q" }) }
          local res = assert(p:complete(p:body(prefix, msgs)))
          msgs[2] = kept:encode_message(assistant_of(res)) -- (as tide sent it before: with the id)
          msgs[3] = p:encode_message(results_of(res))
          local _, err = p:complete(p:body(prefix, msgs))
          assert.are.equal(400, err.status)
          assert.matches("Item with id 'rs_mock1' not found. Items are not persisted when `store` is set to false",
            err.message, 1, true)
        end)
    end)

    it("gets the real 400 for reasoning sent back altered", function()
      with_mock({ replies = { { reasoning = true, tool_calls = { { name = "lookup", arguments = {} } } }, "x" } },
        function(srv)
          local p = make(srv.url, stream, { reasoning = { effort = "medium" } })
          local prefix = p:encode_prefix("s", { lookup_tool })
          local msgs = { p:encode_message({ role = "user", content = "q" }) }
          local res = assert(p:complete(p:body(prefix, msgs)))
          assert.are.equal("", res.reasoning[1].summary) -- no summary asked for, none given
          local a = assistant_of(res)
          a.reasoning = { { type = "encrypted", provider = "openai_responses", id = res.reasoning[1].id,
                            data = res.reasoning[1].data:gsub("Mock", "Mack") } }
          msgs[2] = p:encode_message(a)
          msgs[3] = p:encode_message(results_of(res))
          local _, err = p:complete(p:body(prefix, msgs))
          assert.are.equal("ProviderError", err.code)
          assert.are.equal(400, err.status)
          assert.matches("could not be verified", err.message)
        end)
    end)

    it("maps usage: input counts the cached tokens, output the reasoning ones", function()
      with_mock({ replies = { { text = "ok", usage = { input = 1200, cached = 1024, output = 50, reasoning = 32 } } } },
        function(srv)
          local p = make(srv.url, stream)
          local res = assert(p:complete(p:body(p:encode_prefix("s", {}),
            { p:encode_message({ role = "user", content = "q" }) })))
          assert.are.same({ input = 1200, output = 50, cached = 1024, cache_write = 0, reasoning = 32,
            service_tier = "default" }, res.usage)
        end)
    end)

    it("reports an incomplete response as length / content_filter", function()
      with_mock({ replies = { { text = "cut sh", incomplete = "max_output_tokens" },
                               { text = "", incomplete = "content_filter" } } }, function(srv)
        local p = make(srv.url, stream, { max_tokens = 16 })
        local body = p:body(p:encode_prefix("s", {}), { p:encode_message({ role = "user", content = "q" }) })
        local res = assert(p:complete(body))
        assert.are.equal("length", res.stop)
        assert.are.equal("max_output_tokens", res.stop_raw)
        assert.are.equal("cut sh", res.text)
        assert.are.equal(16, srv:requests()[1].json.max_output_tokens)
        res = assert(p:complete(body))
        assert.are.equal("content_filter", res.stop)
      end)
    end)

    it("turns a truncated session answer into Truncated when asked", function()
      with_mock({ replies = { { text = "half an ans", incomplete = "max_output_tokens" } } }, function(srv)
        tide.agent { id = "responses_short", prompt = "You answer." }
        local s = tide.session { agent = "responses_short", provider = make(srv.url, stream), truncated = "error" }
        local reply, err = s:turn("q")
        assert.is_nil(reply)
        assert.are.equal("Truncated", err.code)
      end)
    end)

    it("keeps a refusal apart from the text", function()
      with_mock({ replies = { { refusal = "I can't help with that." } } }, function(srv)
        local p = make(srv.url, stream)
        local res = assert(p:complete(p:body(p:encode_prefix("s", {}),
          { p:encode_message({ role = "user", content = "q" }) })))
        assert.are.equal("refusal", res.stop)
        assert.are.equal("I can't help with that.", res.refusal)
        assert.are.equal("", res.text)
      end)
    end)

    it("retries a 429 and a 500, and gives up on a 400", function()
      with_mock({ replies = { { fault = "status", status = 429 }, { fault = "status", status = 500 }, "ok" } },
        function(srv)
          local p = make(srv.url, stream, { retry = { attempts = 3, base_ms = 1, max_ms = 2 } })
          local res = assert(p:complete(p:body(p:encode_prefix("s", {}),
            { p:encode_message({ role = "user", content = "q" }) })))
          assert.are.equal("ok", res.text)
          assert.are.equal(3, res.attempts)
        end)
      with_mock({ replies = { { fault = "status", status = 429 } } }, function(srv)
        local p = make(srv.url, stream, { retry = { attempts = 1 } })
        local _, err = p:complete(p:body(p:encode_prefix("s", {}), { p:encode_message({ role = "user", content = "q" }) }))
        assert.are.equal("RateLimited", err.code)
      end)
    end)

    it("says what is wrong with a truncated or malformed reply", function()
      with_mock({ replies = { { fault = "truncate" }, { fault = "malformed" } } }, function(srv)
        local p = make(srv.url, stream, { retry = { attempts = 1 } })
        local body = p:body(p:encode_prefix("s", {}), { p:encode_message({ role = "user", content = "q" }) })
        local _, err = p:complete(body)
        assert.are.equal("MalformedResponse", err.code)
        _, err = p:complete(body)
        assert.are.equal("MalformedResponse", err.code)
        -- a whole reply's error gets the body's excerpt from the exchange
        if not stream then
          assert.is_string(err.body)
          assert.is_true(#err.body <= require("tide.provider.errors").BODY_MAX)
        end
      end)
    end)
  end)
end

describe("tide.provider.openai{ api = \"responses\" }, raw streams", function()
  local function sse(events)
    local out = {}
    for i, e in ipairs(events) do
      out[i] = ("event: %s\ndata: %s\n\n"):format(e[1], e[2])
    end
    return table.concat(out)
  end

  local function route(body)
    return { ["/raw"] = function()
      return { status = 200, headers = { ["content-type"] = "text/event-stream" }, body = body }
    end }
  end

  it("makes response.failed a ProviderError, retried when the server failed", function()
    local body = sse({
      { "response.created", '{"type":"response.created","sequence_number":0,"response":{"id":"r","status":"in_progress","output":[]}}' },
      { "response.failed", '{"type":"response.failed","sequence_number":1,"response":{"id":"r","status":"failed",'
        .. '"error":{"code":"server_error","message":"The model failed."},"output":[]}}' },
    })
    helpers.run(function()
      local srv <close> = assert(testing.mock_server({ routes = route(body) }))
      local p = provider.openai({ api = "responses", base_url = srv.url, api_key = "k",
                                  retry = { attempts = 2, base_ms = 1, max_ms = 2 } })
      -- The mock's own /responses never fails this way: a raw route does.
      p._url = function() return srv.url .. "/raw" end
      local _, err = p:complete(p:body(p:encode_prefix("s", {}), { p:encode_message({ role = "user", content = "q" }) }))
      assert.are.equal("ProviderError", err.code)
      assert.matches("The model failed", err.message)
      assert.are.equal(2, err.attempts)
    end)
  end)

  it("takes the items from output_item.done when the final response leaves them out", function()
    local body = sse({
      { "response.output_item.done", '{"type":"response.output_item.done","sequence_number":0,"output_index":0,'
        .. '"item":{"type":"function_call","id":"fc_1","call_id":"call_x","name":"lookup","arguments":"{}"}}' },
      { "response.completed", '{"type":"response.completed","sequence_number":1,"response":{"id":"r",'
        .. '"status":"completed","output":[],"usage":{"input_tokens":3,"output_tokens":2}}}' },
    })
    helpers.run(function()
      local srv <close> = assert(testing.mock_server({ routes = route(body) }))
      local p = provider.openai({ api = "responses", base_url = srv.url, api_key = "k", retry = { attempts = 1 } })
      p._url = function() return srv.url .. "/raw" end
      local res = assert(p:complete(p:body(p:encode_prefix("s", {}), { p:encode_message({ role = "user", content = "q" }) })))
      assert.are.same({ { id = "call_x", name = "lookup", arguments = "{}" } }, res.tool_calls)
      assert.are.equal("tool_calls", res.stop)
      assert.are.equal(3, res.usage.input)
    end)
  end)

  -- A provider on a raw route: the mock's own /responses never breaks off.
  local function raw_provider(srv, extra)
    local o = { api = "responses", base_url = srv.url, api_key = "k", retry = { attempts = 2, base_ms = 1, max_ms = 2 } }
    for k, v in pairs(extra or {}) do o[k] = v end
    local p = provider.openai(o)
    p._url = function() return srv.url .. "/raw" end
    return p, p:body(p:encode_prefix("s", {}), { p:encode_message({ role = "user", content = "q" }) })
  end

  it("fails on an error event mid-stream, not retried once text was heard", function()
    local body = sse({
      { "response.output_text.delta", '{"type":"response.output_text.delta","sequence_number":1,"delta":"Partial "}' },
      { "response.output_text.delta", '{"type":"response.output_text.delta","sequence_number":2,"delta":"answer"}' },
      { "error", '{"type":"error","sequence_number":3,"code":"server_error","message":"The server had an error.",'
        .. '"param":null}' },
    })
    helpers.run(function()
      local srv <close> = assert(testing.mock_server({ routes = route(body) }))
      local p, req = raw_provider(srv)
      local heard = {}
      local _, err = p:complete(req, { on_delta = function(t) heard[#heard + 1] = t end })
      assert.are.equal("ProviderError", err.code)
      assert.are.equal("openai stream error: The server had an error.", err.message)
      assert.are.equal(500, err.status)
      assert.are.equal("server_error", err.type)
      assert.are.same({ "Partial ", "answer" }, heard)
      assert.are.equal(1, err.attempts) -- text reached on_delta: no second attempt
      -- Nobody listening, the same error is worth another attempt.
      _, err = p:complete(req)
      assert.are.equal(2, err.attempts)
      assert.matches('"code":"server_error"', err.body, 1, true)
    end)
  end)

  it("fails a stream cut before response.completed, with the text so far", function()
    local body = sse({
      { "response.output_text.delta", '{"type":"response.output_text.delta","sequence_number":1,"delta":"Hello"}' },
    }) .. 'event: response.completed\ndata: {"type":"response.completed","response":{"status":"compl'
    helpers.run(function()
      local srv <close> = assert(testing.mock_server({ routes = route(body) }))
      local p, req = raw_provider(srv, { retry = { attempts = 1 } })
      local _, err = p:complete(req)
      assert.are.equal("MalformedResponse", err.code)
      assert.are.equal("openai stream ended before response.completed", err.message)
      assert.are.equal("Hello", err.partial_text)
    end)
  end)

  it("makes an error event RateLimited for rate_limit_exceeded", function()
    local body = sse({
      { "error", '{"type":"error","sequence_number":0,"code":"rate_limit_exceeded","message":"Slow down.","param":null}' },
    })
    helpers.run(function()
      local srv <close> = assert(testing.mock_server({ routes = route(body) }))
      local p = provider.openai({ api = "responses", base_url = srv.url, api_key = "k", retry = { attempts = 1 } })
      p._url = function() return srv.url .. "/raw" end
      local _, err = p:complete(p:body(p:encode_prefix("s", {}), { p:encode_message({ role = "user", content = "q" }) }))
      assert.are.equal("RateLimited", err.code)
      assert.matches("Slow down", err.message)
    end)
  end)
end)

describe("tide.provider.openai{ api = \"responses\" }, requests", function()
  it("keeps the prefix byte-stable and in canonical order, input last", function()
    local opts = { api = "responses", base_url = "http://127.0.0.1:1", model = "gpt-5", max_tokens = 300,
                   reasoning = { effort = "high" }, tool_choice = "auto", parallel_tool_calls = false,
                   temperature = 1, extra_body = { metadata = { run = "x" }, truncation = "auto" } }
    local a = provider.openai(opts):encode_prefix("sys", { lookup_tool })
    local b = provider.openai(opts):encode_prefix("sys", { lookup_tool })
    assert.are.equal(a, b)
    assert.are.equal('{"include":["reasoning.encrypted_content"],"instructions":"sys","max_output_tokens":300,'
      .. '"metadata":{"run":"x"},"model":"gpt-5","parallel_tool_calls":false,"reasoning":{"effort":"high"},'
      .. '"store":false,"stream":true,"temperature":1,"tool_choice":"auto","tools":[{"description":"Looks up.",'
      .. '"name":"lookup","parameters":{"properties":{"q":{"type":"string"}},"type":"object"},"strict":false,'
      .. '"type":"function"}],"truncation":"auto","input":[', a)
    -- store = true: OpenAI keeps the response, and no encrypted content is asked for.
    local c = provider.openai({ api = "responses", store = true, reasoning = { effort = "low" } }):encode_prefix(nil, {})
    assert.matches('"store":true', c, 1, true)
    assert.is_nil(c:find("include", 1, true))
  end)

  it("sends neutral content parts as input_image and input_file", function()
    local p = provider.openai({ api = "responses" })
    local enc = p:encode_message({ role = "user", content = {
      { type = "text", text = "look" },
      { type = "image", mime = "image/png", data = "AAAA" },
      { type = "file", mime = "application/pdf", name = "a.pdf", data = "JVBE" } } })
    local obj = require("cjson").decode(enc)
    assert.are.same({ type = "input_text", text = "look" }, obj.content[1])
    assert.are.same({ type = "input_image", detail = "auto", image_url = "data:image/png;base64,AAAA" }, obj.content[2])
    assert.are.same({ type = "input_file", filename = "a.pdf", file_data = "data:application/pdf;base64,JVBE" },
      obj.content[3])
  end)

  it("sends only its own reasoning items, and never to chat", function()
    local mixed = { role = "assistant", content = "hi", reasoning = {
      { type = "text", text = "chat thinking", provider = "openai" },
      { type = "text", text = "claude", signature = "sig", provider = "anthropic" },
      { type = "encrypted", id = "rs_1", data = "gAAAAx", summary = "s", provider = "openai_responses" } } }
    local rs = provider.openai({ api = "responses" }):encode_message(mixed)
    assert.are.equal('{"encrypted_content":"gAAAAx","summary":[{"text":"s","type":"summary_text"}],'
      .. '"type":"reasoning"},{"content":[{"annotations":[],"text":"hi","type":"output_text"}],"role":"assistant",'
      .. '"type":"message"}', rs)
    -- with store, the id goes too: the service kept the item
    assert.truthy(provider.openai({ api = "responses", store = true }):encode_message(mixed)
      :find('"id":"rs_1"', 1, true))
    local chat = provider.openai({}):encode_message(mixed)
    assert.is_nil(chat:find("gAAAAx", 1, true))
    assert.is_nil(chat:find("rs_1", 1, true))
    local claude = provider.anthropic({}):encode_message(mixed)
    assert.is_nil(claude:find("gAAAAx", 1, true))
    -- Stateless, an item without its encrypted content names nothing the
    -- server kept: it is left out.
    local bare = { role = "assistant", content = "hi",
                   reasoning = { { type = "encrypted", id = "rs_2", provider = "openai_responses" } } }
    assert.is_nil(provider.openai({ api = "responses" }):encode_message(bare):find("rs_2", 1, true))
    assert.truthy(provider.openai({ api = "responses", store = true }):encode_message(bare):find("rs_2", 1, true))
  end)

  it("is refused by the mock as by the API: an output without its call", function()
    with_mock({ replies = { "never" } }, function(srv)
      local p = make(srv.url, true, { retry = { attempts = 1 } })
      local _, err = p:complete(p:body(p:encode_prefix("s", {}), {
        p:encode_message({ role = "user", content = "q" }),
        p:encode_message({ role = "tool", results = { { id = "call_zz", content = "x" } } }) }))
      assert.are.equal(400, err.status)
      assert.matches("No tool call found for function call output with call_id call_zz", err.message, 1, true)
      assert.are.equal(1, srv:pending()) -- no scripted reply spent on it
    end)
  end)

  it("raises on options the Responses API has no field for, and a bad api", function()
    assert.matches("'api' must be \"chat\" or \"responses\"", raised(provider.openai, { api = "completions" }))
    assert.matches("'stop' is not an option of the Responses API", raised(provider.openai,
      { api = "responses", stop = "END" }))
    assert.matches("'max_tokens_field' is not an option of the Responses API", raised(provider.openai,
      { api = "responses", max_tokens_field = "max_tokens" }))
    assert.matches("'store' is an option of the Responses API", raised(provider.openai, { store = false }))
    assert.matches("'store' must be a boolean", raised(provider.openai, { api = "responses", store = "no" }))
    assert.matches("'reasoning.summary' must be one of", raised(provider.openai,
      { api = "responses", reasoning = { summary = "long" } }))
    assert.matches("unknown option 'reasoning.summary'", raised(provider.openai,
      { reasoning = { summary = "auto" } }))
    assert.matches("'extra_body.max_output_tokens' is a field tide sets itself", raised(provider.openai,
      { api = "responses", extra_body = { max_output_tokens = 5 } }))
    assert.matches("'extra_body.input' is a field tide sets itself", raised(provider.openai,
      { api = "responses", extra_body = { input = {} } }))
    assert.matches("unknown option 'prompt_cache'", raised(provider.openai, { api = "responses", prompt_cache = true }))
    assert.matches("unknown option 'api'", raised(provider.anthropic, { api = "responses" }))
    -- the default stays chat completions
    assert.are.equal("chat", provider.openai({}).api)
    assert.are.equal("responses", provider.openai({ api = "responses" }).api)
    assert.is_true(provider.is(provider.openai({ api = "responses" })))
  end)
end)
