-- The tool round when the model or a handler misbehaves: odd errors and
-- results, arguments that are not an object, call ids that repeat, a turn
-- cancelled or out of budget while calls run. The turn goes on (or stops)
-- with every call answered truthfully and the history valid.
local tide = require "tide"
local core = require "tide.core"
local testing = require "tide.testing"
local helpers = require "helpers"

-- The results of the last round in `s`'s history, by call id.
local function last_results(s)
  local h = s:history()
  for i = #h, 1, -1 do
    if h[i].role == "tool" then
      local by = {}
      for _, r in ipairs(h[i].results) do by[r.id] = r end
      return by, h[i].results
    end
  end
end

describe("the tool round", function()
  local srv, provider

  before_each(function()
    srv = testing.mock_server {}
    provider = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
  end)

  after_each(function()
    srv:close()
    helpers.assert_quiet()
  end)

  -- A session whose model calls `calls` once, then answers "fin".
  local function session_calling(calls, tools, opts)
    srv.default = function(req)
      local msgs = req.json.messages
      if msgs[#msgs].role == "tool" then return "fin" end
      return { tool_calls = calls }
    end
    local id = "round_" .. tostring(math.random(1e9))
    tide.agent { id = id, prompt = "You run tools.", tools = tools }
    local o = { agent = id, provider = provider }
    for k, v in pairs(opts or {}) do o[k] = v end
    return tide.session(o)
  end

  it("gives an error result for a handler that raises nil or a plain table, saying what it raised", function()
    local function raiser(name, v)
      return tide.tool { name = name, description = name, handler = function() error(v) end }
    end
    local s = session_calling({ { id = "a", name = "nil_err", arguments = {} },
      { id = "b", name = "table_err", arguments = {} }, { id = "c", name = "msg_err", arguments = {} } },
      { raiser("nil_err", nil), raiser("table_err", { reason = "quota", left = 0 }),
        raiser("msg_err", { message = "disk full" }) })
    assert.are.equal("fin", s:turn("go"))
    local r = last_results(s)
    assert.is_true(r.a.is_error)
    assert.matches("^Error: the tool raised an error without a message", r.a.content)
    assert.is_true(r.b.is_error)
    assert.are.equal('Error: {"left":0,"reason":"quota"}', r.b.content)
    assert.are.equal("Error: disk full", r.c.content)
  end)

  it("stops the turn for a listener that raises at a call's end, the calls keeping what they gave", function()
    local ok_tool = tide.tool { name = "ok", description = "o", handler = function() return "it worked" end }
    for _, calls in ipairs {
      { { id = "a", name = "ok", arguments = {} } }, -- (one call: its task runs at once)
      { { id = "a", name = "ok", arguments = {} }, { id = "b", name = "ok", arguments = {} } },
    } do
      local s = session_calling(calls, { ok_tool })
      local requests = #srv:requests()
      local reply, err = s:turn("go", { on_tool_end = function(call)
        if call.id == "a" then error("the listener broke") end
      end })
      assert.is_nil(reply)
      assert.are.equal("TurnFailed", err.code)
      assert.matches("the listener broke", err.message)
      local r = last_results(s)
      for _, c in ipairs(calls) do
        assert.is_false(r[c.id].is_error)
        assert.are.equal("it worked", r[c.id].content)
      end
      assert.are.equal(requests + 1, #srv:requests()) -- no request after the round
      -- and the session goes on from a valid history
      assert.are.equal("fin", s:turn("again"))
    end
  end)

  it("gives an error result for a result JSON cannot hold (a cycle, a function inside)", function()
    local cyclic = {}
    cyclic.self = cyclic
    local s = session_calling({ { id = "a", name = "cycle", arguments = {} }, { id = "b", name = "fn", arguments = {} } },
      { tide.tool { name = "cycle", description = "c", handler = function() return cyclic end },
        tide.tool { name = "fn", description = "f", handler = function() return { f = print } end } })
    local ended = {}
    assert.are.equal("fin", s:turn("go", { on_tool_end = function(call, res) ended[call.id] = res.is_error end }))
    local r = last_results(s)
    assert.is_true(r.a.is_error)
    assert.matches("^Error: the tool's result cannot be sent as JSON", r.a.content)
    assert.is_true(r.b.is_error)
    assert.matches("cannot be sent as JSON: cannot encode a function", r.b.content)
    assert.are.same({ a = true, b = true }, ended)
  end)

  it("gives an error result for a handler that returns false and a reason", function()
    local s = session_calling({ { id = "a", name = "lookup", arguments = {} }, { id = "b", name = "flag", arguments = {} } },
      { tide.tool { name = "lookup", description = "l", handler = function() return false, "no such user" end },
        tide.tool { name = "flag", description = "f", handler = function() return false end } })
    assert.are.equal("fin", s:turn("go"))
    local r = last_results(s)
    assert.is_true(r.a.is_error)
    assert.are.equal("Error: no such user", r.a.content)
    -- false alone is a value like any other
    assert.is_false(r.b.is_error)
    assert.are.equal("false", r.b.content)
  end)

  it("raises, naming the argument, for a tool whose parameters are not an object schema", function()
    assert.has_error(function()
      tide.tool { name = "t", description = "d", parameters = { type = "array", items = {} }, handler = print }
    end, "tide.tool: 'parameters' must be an object schema (type = \"object\"), got type array")
    -- an integration action with such a schema is offered with an open one
    local t = require("tide.subagent").direct_toolkit_tools({ slug = "k", tools = {
      { name = "ODD", description = "odd", parameters = { type = "string" }, handler = function() return "ran" end } } })[1]
    assert.are.equal("object", t.parameters.type)
  end)

  it("refuses arguments that are a JSON array or null: the handler never sees them", function()
    local seen = 0
    local t = tide.tool { name = "t", description = "t", handler = function() seen = seen + 1; return "ran" end }
    local s = session_calling({ { id = "a", name = "t", arguments = "[1,2]" }, { id = "b", name = "t", arguments = "null" },
      { id = "c", name = "t", arguments = " {} " } }, { t })
    assert.are.equal("fin", s:turn("go"))
    local r = last_results(s)
    assert.are.equal("Error: the arguments for 't' are not a JSON object (an array)", r.a.content)
    assert.are.equal("Error: the arguments for 't' are not a JSON object (null)", r.b.content)
    assert.are.equal("ran", r.c.content)
    assert.are.equal(1, seen)
  end)

  it("gives two calls of one response under one id distinct ids, each result paired with its call", function()
    local t = tide.tool { name = "echo", description = "e",
      parameters = { type = "object", properties = { n = { type = "integer" } } },
      handler = function(args) return "n=" .. args.n end }
    local s = session_calling({ { id = "dup", name = "echo", arguments = { n = 1 } },
      { id = "dup", name = "echo", arguments = { n = 2 } } }, { t })
    assert.are.equal("fin", s:turn("go"))
    local h = s:history()
    local ids = {}
    for i, c in ipairs(h[2].tool_calls) do ids[i] = c.id end
    assert.are.same({ "dup", "dup_2" }, ids)
    local _, list = last_results(s)
    assert.are.same({ "dup", "dup_2" }, { list[1].id, list[2].id })
    assert.are.same({ "n=1", "n=2" }, { list[1].content, list[2].content })
    -- what went to the provider pairs each result with its own call
    local last = srv:requests()[#srv:requests()].json.messages
    assert.are.equal("dup_2", last[#last].tool_call_id)
    assert.are.equal("n=2", last[#last].content)
  end)

  it("never lets an approval given under a call id run a later call that reuses the id", function()
    local deleted = {}
    local del = tide.tool { name = "delete", description = "deletes", approval = true,
      parameters = { type = "object", properties = { what = { type = "string" } } },
      handler = function(args) deleted[#deleted + 1] = args.what; return "deleted " .. args.what end }
    local what = "tmp"
    -- a server that numbers its calls per response: "call_1" every time
    local s = session_calling({}, { del })
    srv.default = function(req)
      local msgs = req.json.messages
      if msgs[#msgs].role == "tool" then return "fin" end
      return { tool_calls = { { id = "call_1", name = "delete", arguments = { what = what } } } }
    end
    local _, err = s:turn("clean tmp")
    assert.are.equal("ApprovalRequired", err.code)
    assert(s:approve(err.pending[1].id))
    assert.are.equal("fin", s:resume())
    what = "prod"
    local reply, err2 = s:turn("and now?")
    assert.is_nil(reply)
    assert.are.equal("ApprovalRequired", err2.code)
    assert.are_not.equal("call_1", err2.pending[1].id)
    assert.are.same({ "tmp" }, deleted)
    assert(s:reject(err2.pending[1].id, "no"))
    assert.are.equal("fin", s:resume())
    assert.are.same({ "tmp" }, deleted)
  end)

  it("keeps the results of the calls that had ended when the turn is cancelled mid-round", function()
    local started, sent = false, 0
    local tools = {
      tide.tool { name = "send_mail", description = "m", handler = function() sent = sent + 1; return "sent" end },
      tide.tool { name = "hang", description = "h", handler = function() started = true; tide.sleep(100000) end },
    }
    local s = session_calling({ { id = "a", name = "send_mail", arguments = {} }, { id = "b", name = "hang", arguments = {} },
      { id = "c", name = "nope", arguments = {} } }, tools)
    local reply, err = helpers.run(function()
      local t = tide.spawn(function() return s:turn("go") end)
      helpers.wait_until(function() return started end, "the hanging tool")
      s:cancel()
      return t:join()
    end)
    assert.is_nil(reply)
    assert.are.equal("Cancelled", err.code)
    local r = last_results(s)
    assert.are.equal("sent", r.a.content)
    assert.is_false(r.a.is_error)
    assert.are.equal("Error: cancelled", r.b.content)
    assert.matches("'nope' is not available", r.c.content)
    -- the next turn's request carries every call with its result
    srv.default = "again"
    assert.are.equal("again", s:turn("next"))
    assert.are.equal(1, sent)
  end)

  it("takes an answer that uses the token budget up exactly, and starts no call past it", function()
    srv.default = { text = "just enough", usage = { input = 600, output = 400 } }
    tide.agent { id = "round_exact", prompt = "You answer.", tools = { tide.tool { name = "t", description = "t",
      handler = function() error("must not run") end } } }
    local s = tide.session { agent = "round_exact", provider = provider, budget = { tokens = 1000 } }
    assert.are.equal("just enough", s:turn("go"))
    assert.is_nil(s:stats().budget.exhausted)
    -- a response that uses it up exactly and calls a tool: no request could
    -- read the result, so the call does not run and the turn stops
    srv.default = { tool_calls = { { id = "c", name = "t", arguments = {} } }, usage = { input = 600, output = 400 } }
    local before = #srv:requests()
    local reply, err = s:turn("again")
    assert.is_nil(reply)
    assert.are.equal("BudgetExhausted", err.code)
    assert.are.equal("tokens", err.what)
    assert.are.equal(before + 1, #srv:requests())
    assert.are.equal("Error: budget exhausted", last_results(s).c.content)
  end)

  it("answers the round's calls when a callback raises mid-round, so that the next turn's request is valid", function()
    local s = session_calling({ { id = "a", name = "t", arguments = {} } },
      { tide.tool { name = "t", description = "t", handler = function() return "ok" end } })
    local reply, err = s:turn("go", { on_tool_start = function() error("listener bug") end })
    assert.is_nil(reply)
    assert.are.equal("TurnFailed", err.code)
    assert.matches("listener bug", err.message)
    local r = last_results(s)
    assert.are.equal("Error: the turn stopped (TurnFailed)", r.a.content)
    srv.default = "again"
    assert.are.equal("again", s:turn("next"))
    -- every call of the request that went out has its result
    local msgs = srv:requests()[#srv:requests()].json.messages
    assert.are.equal("assistant", msgs[3].role)
    assert.are.equal("tool", msgs[4].role)
    assert.are.equal("a", msgs[4].tool_call_id)
  end)

  it("answers arguments that break the tool's parameters with what is wrong, never running it", function()
    local ran = {}
    local t = tide.tool { name = "find", description = "f",
      parameters = { type = "object", required = { "q" }, additionalProperties = false, properties = {
        q = { type = "string" }, n = { type = "integer", minimum = 1 }, kind = { enum = { "a", "b" } },
        tags = { type = "array", items = { type = "string" } },
        -- a $ref tide cannot follow holds nothing (the handler judges)
        opaque = { ["$ref"] = "#/properties/q/whatever" } } },
      handler = function(args) ran[#ran + 1] = args.q; return "found " .. args.q end }
    local s = session_calling({
      { id = "a", name = "find", arguments = {} },
      { id = "b", name = "find", arguments = { q = 5 } },
      { id = "c", name = "find", arguments = { q = "x", n = 0, kind = "z" } },
      { id = "d", name = "find", arguments = { q = "x", tags = { "t", 3 } } },
      { id = "e", name = "find", arguments = { q = "x", other = true } },
      { id = "f", name = "find", arguments = '{"q":"ok","n":2.0,"tags":[],"opaque":{"any":1}}' },
    }, { t })
    assert.are.equal("fin", s:turn("go"))
    local r = last_results(s)
    assert.are.equal("Error: the arguments for 'find' do not match its parameters: #: missing required property 'q'",
      r.a.content)
    assert.is_true(r.a.is_error)
    assert.matches("#/q: expected string, got integer", r.b.content, 1, true)
    assert.matches("#/n: less than 1", r.c.content, 1, true)
    assert.matches('#/kind: "z" is not one of the allowed values', r.c.content, 1, true)
    assert.matches("#/tags/1: expected string, got integer", r.d.content, 1, true)
    assert.matches("#: property 'other' is not allowed", r.e.content, 1, true)
    -- (2.0 is an integer in JSON, an empty list a list)
    assert.are.equal("found ok", r.f.content)
    assert.are.same({ "ok" }, ran)
  end)

  it("compares enum and const values by content and reads JSON Schema's true and false", function()
    local t = tide.tool { name = "pick", description = "p", parameters = { type = "object", properties = {
      mode = { enum = { { kind = "fast" }, "plain" } }, pin = { const = { 1, 2 } }, gone = false,
      none = { type = "array", items = false }, any = true } },
      handler = function() return "ran" end }
    local s = session_calling({
      { id = "a", name = "pick", arguments = '{"mode":{"kind":"fast"},"pin":[1,2],"none":[],"any":{"x":[1]}}' },
      { id = "b", name = "pick", arguments = '{"mode":{"kind":"slow"}}' },
      { id = "c", name = "pick", arguments = '{"pin":[2,1]}' },
      { id = "d", name = "pick", arguments = '{"gone":1,"none":[1]}' },
    }, { t })
    assert.are.equal("fin", s:turn("go"))
    local r = last_results(s)
    assert.are.equal("ran", r.a.content)
    assert.matches('#/mode: {"kind":"slow"} is not one of the allowed values', r.b.content, 1, true)
    assert.matches("#/pin: must be [1,2]", r.c.content, 1, true)
    assert.matches("#/gone: no value is allowed here", r.d.content, 1, true)
    assert.matches("#/none/0: no value is allowed here", r.d.content, 1, true)
  end)

  it("runs a tool whose parameters hold what no schema reader can read, checking what it can", function()
    -- (an MCP server's or a hand-written schema: strings where lists or
    -- numbers belong, lists of non-strings where a type name belongs)
    local t = tide.tool { name = "odd", description = "o", parameters = { type = "object", required = "q",
      properties = { q = { enum = "x", minLength = "3", type = { 1, "string" } }, n = { type = "integer" } },
      anyOf = "x", allOf = 5, additionalProperties = 3 },
      handler = function(args) return "ran " .. tostring(args.q) end }
    local s = session_calling({ { id = "a", name = "odd", arguments = { q = "ab" } },
      { id = "b", name = "odd", arguments = { q = "ab", n = "two" } } }, { t })
    assert.are.equal("fin", s:turn("go"))
    local r = last_results(s)
    assert.are.equal("ran ab", r.a.content)
    assert.matches("#/n: expected integer, got string", r.b.content, 1, true)
  end)

  it("stops the turn for an on_delta or on_reasoning that raises, marked as a listener's, sent once", function()
    for _, case in ipairs {
      { stream = false, opt = "on_delta" }, { stream = true, opt = "on_delta" },
      { stream = false, opt = "on_reasoning" }, { stream = true, opt = "on_reasoning" },
    } do
      local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = case.stream }
      srv.default = { text = "the answer", reasoning = "thinking it over" }
      local id = "listen_" .. tostring(math.random(1e9))
      tide.agent { id = id, prompt = "You answer." }
      local s = tide.session { agent = id, provider = p }
      local before = #srv:requests()
      local reply, err = s:turn("go", { [case.opt] = function() error("listener bug") end })
      local what = case.opt .. (case.stream and ", streamed" or "")
      assert.is_nil(reply, what)
      assert.are.equal("TurnFailed", err.code, what)
      assert.is_true(err.listener, what)
      assert.matches("listener bug", err.message, nil, what)
      -- a listener's failure is not the server's: no retry
      assert.are.equal(before + 1, #srv:requests(), what)
      srv.default = "again"
      assert.are.equal("again", s:turn("next"), what)
    end
  end)

  it("leaves the session usable when a resumed turn is cancelled while its approved call runs", function()
    local started = false
    local slow = tide.tool { name = "slow", description = "s", approval = true,
      handler = function() started = true; tide.sleep(100000) end }
    local s = session_calling({ { id = "a", name = "slow", arguments = {} } }, { slow })
    local _, err = s:turn("go")
    assert.are.equal("ApprovalRequired", err.code)
    assert(s:approve("a"))
    local reply, rerr = helpers.run(function()
      local t = tide.spawn(function() return s:resume() end)
      helpers.wait_until(function() return started end, "the approved call")
      s:cancel()
      return t:join()
    end)
    assert.is_nil(reply)
    assert.are.equal("Cancelled", rerr.code)
    assert.are.same({}, s:pending())
    assert.are.equal("Error: cancelled", last_results(s).a.content)
    srv.default = "again"
    assert.are.equal("again", s:turn("next"))
  end)

  it("takes a timeout of math.maxinteger as no timeout, not as one already past", function()
    local t = tide.tool { name = "w", description = "w", timeout_ms = math.maxinteger,
      handler = function() tide.sleep(5); return "waited" end }
    local s = session_calling({ { id = "a", name = "w", arguments = {} }, { id = "b", name = "w", arguments = {} } }, { t },
      { tool_timeout_ms = math.maxinteger })
    assert.are.equal("fin", s:turn("go"))
    local r = last_results(s)
    assert.are.same({ "waited", "waited" }, { r.a.content, r.b.content })
  end)

  it("counts against max_subagents only the sub-agents that ran, not spawns refused for their depth", function()
    tide.agent { id = "round_deep", prompt = "You are deep." }
    tide.agent { id = "round_mid", prompt = "You are mid.", subagents = { "round_deep" }, max_spawn_depth = 1 }
    tide.agent { id = "round_top", prompt = "You are top.", subagents = { "round_mid" } }
    local top_rounds = 0
    srv.default = function(req)
      local msgs = req.json.messages
      local sys = msgs[1].content
      if sys:find("You are mid", 1, true) then
        if msgs[#msgs].role == "tool" then return "mid: " .. msgs[#msgs].content end
        -- two delegations past mid's depth limit: refused, nothing runs
        return { tool_calls = { { name = "delegate_round_deep", arguments = { task = "a" } },
          { name = "delegate_round_deep", arguments = { task = "b" } } } }
      end
      top_rounds = top_rounds + 1
      if top_rounds <= 2 then
        return { tool_calls = { { id = "m" .. top_rounds, name = "delegate_round_mid", arguments = { task = "go" } } } }
      end
      return "top done"
    end
    local s = tide.session { agent = "round_top", provider = provider, max_subagents = 2 }
    assert.are.equal("top done", s:turn("go"))
    local h = s:history()
    assert.matches("^mid: Error: SpawnDepthExceeded", h[3].results[1].content)
    -- the second mid is the second sub-agent to run: within the limit of 2
    assert.are.equal("m2", h[5].results[1].id)
    assert.matches("^mid: ", h[5].results[1].content)
  end)

  it("ends the turn as soon as a call spends the tree's budget, without waiting for a slow sibling", function()
    tide.agent { id = "round_kid", prompt = "You are the kid." }
    local slow = tide.tool { name = "slow", description = "s", handler = function() tide.sleep(100000); return "late" end }
    tide.agent { id = "round_parent", prompt = "You are the parent.", tools = { slow }, subagents = { "round_kid" } }
    srv.default = function(req)
      if req.json.messages[1].content:find("the kid", 1, true) then
        return { tool_calls = { { name = "nothing", arguments = {} } } }
      end
      return { tool_calls = { { id = "s", name = "slow", arguments = {} },
        { id = "d", name = "delegate_round_kid", arguments = { task = "t" } } } }
    end
    local s = tide.session { agent = "round_parent", provider = provider, budget = { provider_calls = 3 },
      tool_timeout_ms = 10000 }
    local t0 = core.hrtime()
    local reply, err = s:turn("go")
    local ms = (core.hrtime() - t0) / 1e6
    assert.is_nil(reply)
    assert.are.equal("BudgetExhausted", err.code)
    assert.are.equal("provider_calls", err.what)
    assert.is_true(ms < 5000, ("the turn took %.0f ms"):format(ms))
    local r = last_results(s)
    assert.are.equal("Error: budget exhausted", r.s.content)
    assert.are.equal("Error: budget exhausted", r.d.content)
    srv.default = "again"
    assert.are.equal("again", s:turn("next"))
    assert.are.equal(0, core.loop_stats().live_tasks)
  end)
end)
