-- Sessions and the turn loop against the loopback mock provider, for both
-- wire shapes, streaming and not.
local tide = require "tide"
local core = require "tide.core"
local json = require "tide.json"
local testing = require "tide.testing"
local helpers = require "helpers"

local shapes = {
  { name = "openai streaming", make = function(url) return tide.provider.openai { base_url = url .. "/v1", api_key = "k", model = "m", stream = true, retry = { base_ms = 1, max_ms = 5 } } end },
  { name = "openai", make = function(url) return tide.provider.openai { base_url = url .. "/v1", api_key = "k", model = "m", stream = false, retry = { base_ms = 1, max_ms = 5 } } end },
  { name = "anthropic streaming", make = function(url) return tide.provider.anthropic { base_url = url .. "/v1", api_key = "k", model = "m", stream = true, retry = { base_ms = 1, max_ms = 5 } } end },
  { name = "anthropic", make = function(url) return tide.provider.anthropic { base_url = url .. "/v1", api_key = "k", model = "m", stream = false, retry = { base_ms = 1, max_ms = 5 } } end },
}

local lookup = tide.tool {
  name = "lookup",
  description = "Looks a thing up.",
  parameters = { type = "object", properties = { q = { type = "string" } }, required = { "q" } },
  handler = function(args) return "found " .. args.q end,
}

local function tool_names_of(req)
  local names = {}
  for _, t in ipairs(req.json.tools or {}) do
    names[#names + 1] = t["function"] and t["function"].name or t.name
  end
  return names
end

local function system_of(req)
  local j = req.json
  if j.system then return j.system end
  return j.messages[1].content
end

for _, shape in ipairs(shapes) do
  describe("session (" .. shape.name .. ")", function()
    local srv, provider

    before_each(function()
      srv = testing.mock_server {}
      provider = shape.make(srv.url)
      tide.agent { id = "looper", prompt = "You look things up for {{agent.id}}.", tools = { lookup } }
    end)

    after_each(function()
      srv:close()
      helpers.assert_quiet()
    end)

    it("runs a 10-iteration tool loop to its final answer", function()
      srv.default = testing.tool_loop(9, "lookup")
      local s = tide.session { agent = "looper", provider = provider }
      local reply, err = s:turn("find nine things")
      assert.is_nil(err)
      assert.are.equal("done after 9 lookups", reply)
      local st = s:stats()
      assert.are.equal(10, st.provider_calls)
      assert.are.equal(9, st.tool_calls)
      assert.are.equal(10, #srv:requests())
      -- the last request carries every tool result, in order
      local hist = s:history()
      assert.are.equal("user", hist[1].role)
      assert.are.equal("tool", hist[3].role)
      assert.are.equal("found item 1", hist[3].results[1].content)
    end)

    it("sends the same requests and keeps the same history, transcript and stats with listeners or none", function()
      -- One loop serves both: listeners only add what they hear, and never
      -- change a byte of what is sent or kept.
      local function run(opts, keep_transcript)
        srv:close()
        srv = testing.mock_server { default = testing.tool_loop(3, "lookup") }
        local path = os.tmpname()
        local s = tide.session { agent = "looper", provider = shape.make(srv.url),
                                 transcript = keep_transcript and path or nil }
        assert.are.equal("done after 3 lookups", s:turn("find three things", opts))
        -- a second turn on the same history (the mock counts the lookups
        -- of the whole conversation: it answers at once)
        assert.are.equal("done after 3 lookups", s:turn("once more", opts))
        local bodies = {}
        for i, r in ipairs(srv:requests()) do bodies[i] = r.body end
        local lines = {}
        for line in io.lines(path) do
          if not line:find('"type":"meta"', 1, true) then lines[#lines + 1] = line end
        end
        os.remove(path)
        -- read twice: the same list, and nothing added by reading it
        local once = s:history()
        assert.are.equal(once, s:history())
        local st = s:stats()
        return { bodies = bodies, history = json.canonical(s:history()), transcript = lines,
          stats = { st.provider_calls, st.tool_calls, st.iterations, st.prompt_bytes_encoded,
                    st.prompt_bytes_reencoded, st.tokens.input, st.tokens.output } }
      end
      for _, keep in ipairs { true, false } do
        local quiet = run(nil, keep)
        local starts, ends, events, deltas = 0, 0, 0, 0
        local heard = run({ on_tool_start = function() starts = starts + 1 end,
                            on_tool_end = function() ends = ends + 1 end,
                            on_event = function() events = events + 1 end,
                            on_delta = function() deltas = deltas + 1 end }, keep)
        assert.are.equal(3, starts)
        assert.are.equal(3, ends)
        assert.is_true(events >= 6 and deltas >= 1)
        assert.are.equal(5, #quiet.bodies)
        assert.are.equal(keep and 11 or 0, #quiet.transcript) -- the prompt and ten messages
        assert.are.same(heard, quiet)
      end
    end)

    it("shows a handler reading the history in the middle of a round every message so far", function()
      local seen = {}
      tide.agent { id = "reader", prompt = "You read.", tools = {
        tide.tool { name = "lookup", description = "d", parameters = { type = "object" },
          handler = function(args, ctx)
            local h = ctx.session:history()
            seen[#seen + 1] = { n = #h, last = h[#h], list = h }
            return "found " .. tostring(args.q)
          end },
      } }
      srv.default = testing.tool_loop(2, "lookup")
      local s = tide.session { agent = "reader", provider = provider }
      assert.are.equal("done after 2 lookups", s:turn("find two things"))
      -- user, assistant(call 1) | + tool, assistant(call 2)
      assert.are.equal(2, seen[1].n)
      assert.are.equal(4, seen[2].n)
      for _, v in ipairs(seen) do
        assert.are.equal("assistant", v.last.role)
        assert.are.equal("lookup", v.last.tool_calls[1].name)
      end
      local h = s:history()
      assert.are.equal(seen[1].list, h) -- one list, brought up to date
      local roles = {}
      for i, m in ipairs(h) do roles[i] = m.role end
      assert.are.same({ "user", "assistant", "tool", "assistant", "tool", "assistant" }, roles)
      assert.are.equal("found item 2", h[5].results[1].content)
      assert.are.equal("done after 2 lookups", h[6].content)
      -- and a second turn appends after them
      srv.default = testing.tool_loop(0, "lookup")
      assert.is_string(s:turn("anything else?"))
      assert.are.equal(8, #s:history())
      assert.are.equal("user", s:history()[7].role)
    end)

    it("keeps a tool call's task for whoever kept it, while the other calls' tasks are reused", function()
      -- A C round hands back the task of a call nobody else saw, for the
      -- next call to reuse; one the tool took (core.current()) is its own.
      local kept, results = nil, {}
      tide.agent { id = "keeper", prompt = "You keep.", tools = {
        tide.tool { name = "lookup", description = "d", parameters = { type = "object" },
          handler = function(args)
            if not kept then kept = { task = core.current() } kept.id = kept.task:id() end
            results[#results + 1] = "found " .. tostring(args.q)
            return results[#results]
          end },
      } }
      srv.default = testing.tool_loop(4, "lookup")
      for _ = 1, 2 do
        local s = tide.session { agent = "keeper", provider = provider }
        assert.are.equal("done after 4 lookups", s:turn("find four things"))
        local h = s:history()
        for i = 1, 4 do assert.are.equal("found item " .. i, h[1 + 2 * i].results[1].content) end
      end
      assert.are.equal(8, #results)
      -- the first call's task is as it ended: its id, its status, its result
      assert.are.equal(kept.id, kept.task:id())
      assert.are.equal("done", kept.task:status())
      assert.are.same({ id = kept.task:id(), result = "found item 1" }, tide.run(function()
        local r = kept.task:join() -- a plain result's text (or a result table)
        return { id = kept.task:id(), result = type(r) == "table" and r.content or r }
      end))
    end)

    it("hands a handler that takes it its context: session, call id and name, depth", function()
      local seen = {}
      local function tool(name, handler)
        return tide.tool { name = name, description = "d", parameters = { type = "object" }, handler = handler }
      end
      tide.agent { id = "ctx", prompt = "You call tools.", tools = {
        tool("two", function(_, ctx) seen.two = ctx return "ok" end),
        tool("vararg", function(...) seen.n, seen.vararg = select("#", ...), (select(2, ...)) return "ok" end),
        tool("one", function(args) seen.one = args return "ok" end),
      } }
      for _, name in ipairs { "two", "vararg", "one" } do
        srv.default = testing.tool_loop(1, name)
        local s = tide.session { agent = "ctx", provider = provider }
        local reply, err = s:turn("go")
        assert.are.equal("done after 1 lookups", reply, err and err.message)
        if name == "two" then
          assert.are.equal(s, seen.two.session)
          assert.are.equal("two", seen.two.name)
          assert.is_string(seen.two.call_id)
          assert.are.equal(s:history()[2].tool_calls[1].id, seen.two.call_id)
          assert.are.equal(core.depth(), seen.two.depth)
        end
      end
      assert.are.equal(2, seen.n)
      assert.are.equal("vararg", seen.vararg.name)
      assert.is_table(seen.one)
    end)

    it("fails with MaxIterationsExceeded past max_iterations and stays usable", function()
      srv.default = testing.tool_loop(10, "lookup")
      local s = tide.session { agent = "looper", provider = provider }
      local reply, err = s:turn("never ends")
      assert.is_nil(reply)
      assert.are.equal("MaxIterationsExceeded", err.code)
      srv.default = "recovered"
      assert.are.equal("recovered", (s:turn("again")))
    end)

    it("freezes the system prompt and reuses the request prefix byte for byte", function()
      srv.default = function(req)
        local n = testing.count_tool_results(req)
        if n == 0 and #req.json.messages % 2 == 1 or (req.json.system and n == 0 and #req.json.messages % 4 == 1) then
          return { tool_calls = { { name = "lookup", arguments = { q = "x" } } } }
        end
        return "ok"
      end
      local s = tide.session { agent = "looper", provider = provider }
      for i = 1, 3 do assert.is_string((s:turn("turn " .. i))) end
      local reqs = srv:requests()
      assert.is_true(#reqs >= 3)
      local prefix = provider:encode_prefix(s:system_prompt(), (function()
        local specs = {}
        for i, t in ipairs(s.surface.tools) do specs[i] = require("tide.tool").spec(t) end
        return specs
      end)())
      for _, r in ipairs(reqs) do
        assert.are.equal(prefix, r.body:sub(1, #prefix))
        assert.are.equal(s:system_prompt(), system_of(r))
      end
      assert.are.equal("You look things up for looper.", s:system_prompt())
      assert.are.equal(0, s:stats().prompt_bytes_reencoded)
    end)

    it("runs the tool calls of one response concurrently and returns results in call order", function()
      local events = {}
      local slow = tide.tool {
        name = "slow", description = "sleeps",
        parameters = { type = "object", properties = { ms = { type = "integer" }, tag = { type = "string" } } },
        handler = function(args)
          events[#events + 1] = "start " .. args.tag
          tide.sleep(args.ms)
          events[#events + 1] = "end " .. args.tag
          return "slept " .. args.tag
        end,
      }
      tide.agent { id = "sleeper", prompt = "Sleep when asked.", tools = { slow } }
      srv:push({ tool_calls = {
        { name = "slow", arguments = { ms = 40, tag = "a" } },
        { name = "slow", arguments = { ms = 10, tag = "b" } },
      } }, "both done")
      local s = tide.session { agent = "sleeper", provider = provider }
      assert.are.equal("both done", (s:turn("go")))
      -- both started before either ended: they overlapped
      assert.are.same({ "start a", "start b", "end b", "end a" }, events)
      local results = s:history()[3].results
      assert.are.equal("slept a", results[1].content)
      assert.are.equal("slept b", results[2].content)
    end)

    it("turns tool errors, timeouts, bad arguments and unknown tools into result text", function()
      local boom = tide.tool { name = "boom", description = "fails", handler = function() error("kaput") end }
      local stuck = tide.tool { name = "stuck", description = "hangs", timeout_ms = 20,
        handler = function() tide.sleep(100000) end }
      local big = tide.tool { name = "big", description = "large", handler = function() return string.rep("x", 40000) end }
      tide.agent { id = "faulty", prompt = "Handle faults.", tools = { boom, stuck, big } }
      srv:push({ tool_calls = {
        { name = "boom", arguments = {} },
        { name = "stuck", arguments = {} },
        { name = "big", arguments = {} },
        { name = "nosuch", arguments = {} },
        { name = "boom", arguments = "{not json" },
      } }, "handled")
      local s = tide.session { agent = "faulty", provider = provider }
      assert.are.equal("handled", (s:turn("go")))
      local r = s:history()[3].results
      assert.matches("kaput", r[1].content)
      assert.is_true(r[1].is_error)
      assert.matches("timed out after 20 ms", r[2].content)
      assert.is_true(#r[3].content < 16 * 1024 + 100)
      assert.matches("truncated", r[3].content)
      assert.matches("'nosuch' is not available", r[4].content)
      assert.matches("boom, stuck, big", r[4].content)
      if shape.name == "anthropic" then
        -- non-streamed Anthropic tool_use input is always an object on the
        -- wire: broken argument text cannot reach the client that way
        assert.matches("kaput", r[5].content)
      else
        assert.matches("not a JSON object", r[5].content)
      end
      -- the provider saw the error texts
      local last = srv:requests()[2].body
      assert.matches("kaput", last)
    end)

    it("reports streamed text, tool starts and tool ends through callbacks", function()
      srv:push({ tool_calls = { { name = "lookup", arguments = { q = "cb" } } } }, "final words here")
      local s = tide.session { agent = "looper", provider = provider }
      local deltas, starts, ends = {}, {}, {}
      local reply = s:turn("go", {
        on_delta = function(d) deltas[#deltas + 1] = d end,
        on_tool_start = function(call) starts[#starts + 1] = call.name end,
        on_tool_end = function(call, res) ends[#ends + 1] = res.content end,
      })
      assert.are.equal("final words here", reply)
      assert.are.equal("final words here", table.concat(deltas))
      assert.are.same({ "lookup" }, starts)
      assert.are.same({ "found cb" }, ends)
    end)

    it("accepts the text tool-call protocol but never bare JSON", function()
      srv:push('Let me check. <tool_call>{"name":"lookup","arguments":{"q":"tagged"}}</tool_call>',
        'Here is JSON: {"name":"lookup","arguments":{"q":"bare"}}')
      local s = tide.session { agent = "looper", provider = provider }
      local reply = s:turn("go")
      assert.matches("Here is JSON", reply)
      local st = s:stats()
      assert.are.equal(1, st.tool_calls)
      assert.are.equal(2, st.provider_calls)
      assert.matches("found tagged", s:history()[3].content)
    end)

    it("records usage tokens and time to first byte", function()
      srv:push { text = "hi", usage = { input = 11, output = 7, cached = 3 } }
      local s = tide.session { agent = "looper", provider = provider }
      s:turn("go")
      local st = s:stats()
      assert.are.equal(11, st.tokens.input)
      assert.are.equal(7, st.tokens.output)
      assert.are.equal(3, st.tokens.cached)
      assert.is_number(st.ttfb_ms)
    end)
  end)
end

describe("session faults", function()
  local srv, dir
  before_each(function()
    srv = testing.mock_server {}
    dir = helpers.tmpdir()
    tide.agent { id = "looper", prompt = "Look things up.", tools = { lookup } }
  end)
  after_each(function()
    srv:close()
    helpers.rmdir(dir)
    helpers.assert_quiet()
  end)

  local function provider(extra)
    local o = { base_url = srv.url .. "/v1", api_key = "k", model = "m", stream = true,
      retry = { base_ms = 1, max_ms = 5, attempts = 3 } }
    for k, v in pairs(extra or {}) do o[k] = v end
    return tide.provider.openai(o)
  end

  local function lines(path)
    local out = {}
    for l in io.lines(path) do out[#out + 1] = json.decode(l) end
    return out
  end

  it("retries 429 honouring Retry-After, then succeeds", function()
    srv:push({ fault = "status", status = 429, retry_after = 0 }, { fault = "status", status = 503 }, "fine")
    local s = tide.session { agent = "looper", provider = provider() }
    assert.are.equal("fine", (s:turn("go")))
    assert.are.equal(3, #srv:requests())
  end)

  it("gives up after bounded attempts with a stable code", function()
    srv.default = { fault = "status", status = 500 }
    local s = tide.session { agent = "looper", provider = provider() }
    local reply, err = s:turn("go")
    assert.is_nil(reply)
    assert.are.equal("ProviderError", err.code)
    assert.are.equal(3, #srv:requests())
  end)

  for _, case in ipairs {
    { fault = { fault = "malformed" }, code = "MalformedResponse" },
    { fault = { fault = "truncate" }, code = "MalformedResponse" },
    { fault = { fault = "oversize", bytes = 300000 }, code = "BodyTooLarge", opts = { max_body_bytes = 100000 } },
    { fault = { fault = "hang" }, code = "Timeout", opts = { timeout_ms = 50, retry = { attempts = 1 } } },
  } do
    it("reports " .. case.fault.fault .. " as " .. case.code .. ", keeps the transcript and stays usable", function()
      local path = dir .. "/t.jsonl"
      local p = provider(case.opts)
      local s = tide.session { agent = "looper", provider = p, transcript = path }
      srv:push(case.fault)
      local reply, err = s:turn("first")
      assert.is_nil(reply)
      assert.are.equal(case.code, err.code)
      srv:push("second answer")
      assert.are.equal("second answer", (s:turn("second")))
      s:close()
      local l = lines(path)
      assert.are.equal("meta", l[1].type)
      assert.are.equal("system", l[2].role)
      assert.are.equal("first", l[3].content)
      assert.are.equal("second", l[4].content)
      assert.are.equal("second answer", l[5].content)
    end)
  end

  it("cancels an in-flight turn: HTTP aborted, tools cancelled, session usable", function()
    local tool_finished = false
    local slow = tide.tool { name = "slow", description = "slow", handler = function()
      tide.sleep(100000)
      tool_finished = true
    end }
    tide.agent { id = "slowpoke", prompt = "Be slow.", tools = { slow } }
    srv:push({ tool_calls = { { name = "slow", arguments = {} } } })
    local s = tide.session { agent = "slowpoke", provider = provider() }
    local reply, err = tide.run(function()
      local t = tide.spawn(function() return s:turn("go") end)
      tide.sleep(30)
      assert.is_true(s:cancel())
      return t:join()
    end)
    assert.is_nil(reply)
    assert.are.equal("Cancelled", err.code)
    assert.is_false(tool_finished)
    -- the pending call was answered, so the history is a valid conversation
    local hist = s:history()
    assert.are.equal("tool", hist[#hist].role)
    assert.matches("cancelled", hist[#hist].results[1].content)
    -- and a hanging provider request is aborted too
    srv:push({ fault = "hang" })
    local r2, e2 = tide.run(function()
      local t = tide.spawn(function() return s:turn("hang please") end)
      tide.sleep(30)
      s:cancel()
      return t:join()
    end)
    assert.is_nil(r2)
    assert.are.equal("Cancelled", e2.code)
    assert.are.equal(0, core.http_stats().active)
    srv:push("alive")
    assert.are.equal("alive", (s:turn("still there?")))
  end)

  it("refuses a second turn while one runs, leaving the first and the history whole", function()
    srv:push({ delay_ms = 200, text = "first answer" }, "second answer", "third answer")
    local s = tide.session { agent = "looper", provider = provider() }
    local first, second = tide.run(function()
      local t = tide.spawn(function() return s:turn("first") end)
      tide.sleep(30)
      local r, err = s:turn("second") -- while the first waits for its reply
      return { t:join() }, { r, err }
    end)
    assert.are.equal("first answer", first[1])
    assert.is_nil(second[1])
    assert.are.equal("SessionBusy", second[2].code)
    -- the refused turn wrote nothing: one request, one user message
    assert.are.equal(1, #srv:requests())
    local users = 0
    for _, m in ipairs(s:history()) do if m.role == "user" then users = users + 1 end end
    assert.are.equal(1, users)
    -- once the first has ended the session takes turns again
    assert.are.equal("second answer", (s:turn("again")))
  end)

  it("resumes from a transcript whose last line is torn", function()
    local path = dir .. "/resume.jsonl"
    srv:push({ tool_calls = { { name = "lookup", arguments = { q = "a" } } } }, "first reply")
    local s = tide.session { agent = "looper", provider = provider(), transcript = path }
    assert.are.equal("first reply", (s:turn("hello")))
    local system = s:system_prompt()
    s:close()
    -- simulate a crash in the middle of writing a line
    local f = assert(io.open(path, "ab"))
    f:write('{"role":"assistant","content":"half a li')
    f:close()
    local r = tide.session { agent = "looper", provider = provider(), resume = path }
    assert.is_true(r.resumed.torn)
    assert.are.equal(4, #r:history())
    assert.are.equal(system, r:system_prompt())
    srv:push("second reply")
    assert.are.equal("second reply", (r:turn("and now?")))
    -- the provider saw the restored history, prompt unchanged
    local last = srv:requests()[3].json
    assert.are.equal(system, last.messages[1].content)
    assert.are.equal("hello", last.messages[2].content)
    assert.are.equal("and now?", last.messages[#last.messages].content)
    r:close()
    -- the torn bytes are gone and every line parses
    for l in io.lines(path) do assert.is_table(json.decode(l)) end
  end)

  it("leaves a whole transcript as it is on resume, and mends one whose last line has no newline", function()
    local path = dir .. "/whole.jsonl"
    srv:push("first reply")
    local s = tide.session { agent = "looper", provider = provider(), transcript = path }
    assert.are.equal("first reply", (s:turn("hello")))
    s:close()
    local inode = helpers.sh("stat -c %i " .. path)
    local r = tide.session { agent = "looper", provider = provider(), resume = path }
    r:close()
    assert.are.equal(inode, helpers.sh("stat -c %i " .. path)) -- (not written again)
    -- a last line without its newline (written by hand, say) gets one before the next record
    local text = helpers.read(path)
    helpers.write(path, text:sub(1, -2))
    r = tide.session { agent = "looper", provider = provider(), resume = path }
    srv:push("second reply")
    assert.are.equal("second reply", (r:turn("and now?")))
    r:close()
    local n = 0
    for l in io.lines(path) do
      assert.is_table(json.decode(l))
      n = n + 1
    end
    assert.are.equal(select(2, text:gsub("\n", "")) + 2, n) -- (the question and the answer)
  end)

  it("cuts off a record a full disk left half written, so that the transcript still loads", function()
    local path = dir .. "/full.jsonl"
    local transcript = require "tide.transcript"
    local w = assert(transcript.open(path, { type = "meta", version = 1 }))
    assert(w:append({ role = "user", content = "first" }))
    -- the next write gets half its bytes out, then the disk is full
    local real = w.fh
    w.fh = setmetatable({
      write = function(_, text) real:write(text:sub(1, #text // 2)); real:flush(); return nil, "No space left on device" end,
      flush = function() return true end, close = function() return real:close() end,
    }, {})
    local ok, err = w:append({ role = "assistant", content = string.rep("x", 200) })
    assert.is_nil(ok)
    assert.are.equal("TranscriptError", err.code)
    -- the disk has room again: the next records are whole lines
    assert(w:append({ role = "user", content = "after" }))
    w:close()
    local _, messages, info = transcript.load(path)
    assert.is_false(info.torn)
    assert.are.same({ "first", "after" }, { messages[1].content, messages[2].content })
  end)

  it("answers a call written as text that a crash left open, as it answers a native one", function()
    local path = dir .. "/textual.jsonl"
    helpers.write(path, '{"type":"meta","version":1}\n{"role":"system","content":"Look things up."}\n'
      .. '{"type":"turn","id":"r1"}\n{"role":"user","content":"go"}\n'
      .. '{"role":"assistant","content":"Let me check. <tool_call>{\\"name\\":\\"lookup\\",\\"arguments\\":{\\"q\\":\\"a\\"}}</tool_call>"}\n')
    local r = assert(tide.session { agent = "looper", provider = provider(), resume = path })
    assert.are.equal(1, r.resumed.interrupted)
    local h = r:history()
    assert.are.equal("user", h[#h].role)
    assert.matches('^<tool_result name="lookup" error="true">\nError: interrupted', h[#h].content)
    -- the queued turn it belonged to is not done: its "answer" was a call
    assert.is_false(r.last_turn.done)
    r:close()
  end)

  it("never runs again a queued turn that later turns followed", function()
    local path = dir .. "/queued.jsonl"
    helpers.write(path, '{"type":"meta","version":1}\n{"role":"system","content":"Look things up."}\n'
      .. '{"type":"turn","id":"r1"}\n{"role":"user","content":"first"}\n'
      .. '{"role":"assistant","content":"","tool_calls":[{"id":"c1","name":"lookup","arguments":"{}"}]}\n'
      .. '{"role":"tool","results":[{"id":"c1","name":"lookup","content":"Error: interrupted","is_error":true}]}\n'
      .. '{"type":"turn","id":"r2"}\n{"role":"user","content":"second"}\n{"role":"assistant","content":"second done"}\n'
      .. '{"type":"turn","id":"r0"}\n{"role":"user","content":"zeroth"}\n{"role":"assistant","content":"zeroth done"}\n'
      .. '{"type":"turn","id":"r3"}\n{"role":"user","content":"third"}\n{"role":"assistant","content":"third done"}\n')
    local r = assert(tide.session { agent = "looper", provider = provider(), resume = path })
    local reply, err = r:_queued_turn("r1", "first")
    assert.is_nil(reply)
    assert.are.equal("Superseded", err.code)
    assert.are.equal("zeroth done", r:_queued_turn("r0", "zeroth")) -- finished before: its answer
    assert.are.equal("third done", r:_queued_turn("r3", "third"))
    assert.are.equal(0, #srv:requests())
    r:close()
  end)

  it("keeps a corrupt line in the middle from being silently dropped", function()
    local path = dir .. "/bad.jsonl"
    helpers.write(path, '{"type":"meta"}\n{"role":"user","content":"a"}\nnot json\n{"role":"user","content":"b"}\n')
    local s, err = tide.session { agent = "looper", provider = provider(), resume = path }
    assert.is_nil(s)
    assert.are.equal("TranscriptError", err.code)
    assert.are.equal(3, err.line)
  end)

  it("keeps a tool's raw bytes from making the session's requests invalid JSON", function()
    local binary = tide.tool { name = "cat", description = "d", parameters = { type = "object", properties = {} },
      handler = function(a) if a.fail then error("bad \255 byte", 0) end return "PNG\137\255\254 data" end }
    tide.agent { id = "catter", prompt = "You read files.", tools = { binary } }
    srv:push({ tool_calls = { { id = "c1", name = "cat", arguments = {} } } },
      { tool_calls = { { id = "c2", name = "cat", arguments = { fail = true } } } }, "read")
    local path = dir .. "/t.jsonl"
    local s = tide.session { agent = "catter", provider = provider(), transcript = path }
    assert.are.equal("read", assert(s:turn("show me")))
    local reqs = srv:requests()
    assert.are.equal(3, #reqs)
    -- each body parsed as JSON (the mock decodes it), the bad bytes U+FFFD
    local results = {}
    for _, m in ipairs(reqs[3].json.messages) do
      if m.role == "tool" then results[#results + 1] = m.content end
    end
    assert.are.same({ "PNG\u{FFFD}\u{FFFD}\u{FFFD} data", "Error: bad \u{FFFD} byte" }, results)
    -- and the transcript reads back: a resumed session sends the same
    local again = tide.session { agent = "catter", provider = provider(), resume = path }
    assert.are.equal(#s:history(), #again:history())
  end)

  it("raises on misuse, naming the argument", function()
    local s = tide.session { agent = "looper", provider = provider() }
    assert.has_error(function() s:turn(42) end, "bad argument #1 to 'turn' (string or list of parts expected, got number)")
    assert.has_error(function() s:turn("caf\233") end, "bad argument #1 to 'turn' (not UTF-8 text)")
    assert.has_error(function() s:turn({ "ok", "\255" }) end, "bad argument #1 to 'turn' (part 2 is not UTF-8 text)")
    assert.has_error(function() s:turn(" \n") end, "bad argument #1 to 'turn' (empty text)")
    assert.has_error(function() s:turn("hi", { context = "\255" }) end,
      "bad argument #2 to 'turn' (field 'context' must be a string of UTF-8 text)")
    assert.has_error(function() s:turn({ "", "x" }) end, "bad argument #1 to 'turn' (part 1 is empty text)")
    assert.has_error(function() s:turn("x", { on_delta = 1 }) end,
      "bad argument #2 to 'turn' (field 'on_delta' must be a function)")
    assert.has_error(function() tide.session { agent = "looper" } end)
    local ok, err = pcall(tide.session, { agent = "nobody", provider = provider() })
    assert.is_false(ok)
    assert.are.equal("UnknownAgent", err.code)
  end)
end)

describe("sessions of one agent", function()
  local srv, provider
  local cache = require "tide.integrations.cache"
  local prompts = require "tide.prompts"
  -- one toolkit, so that the prefix holds a synthesised delegate too
  local src = tide.integrations.static { id = "session-spec-shared", toolkits = {
    { slug = "notes", description = "Notes.", tools = { { name = "NOTES_LIST", description = "Lists notes" } } } } }

  before_each(function()
    srv = testing.mock_server { default = "ok" }
    provider = tide.provider.openai { base_url = srv.url .. "/v1", api_key = "k", model = "m", stream = false }
    tide.agent { id = "sharer", prompt = "You share.", tools = { lookup }, subagents = { { toolkits = "*" } } }
  end)
  after_each(function()
    srv:close()
    helpers.assert_quiet()
  end)

  it("share the one encoded prefix on one snapshot; a redefined agent encodes a new one", function()
    cache.invalidate(src)
    helpers.run(function() cache.get(src) end)
    local function session() return tide.session { agent = "sharer", provider = provider, integrations = src } end
    local a, b = session(), session()
    assert.are.equal("ok", (a:turn("hi")))
    assert.are.equal("ok", (b:turn("hi")))
    assert.same({ "lookup", "delegate_notes" }, a:tools())
    local sa, sb = a:stats(), b:stats()
    local prefix = provider:encode_prefix(a:system_prompt(), (function()
      local specs = {}
      for i, t in ipairs(a.surface.tools) do specs[i] = require("tide.tool").spec(t) end
      return specs
    end)())
    -- the same messages went after it: only the first session encoded the prefix
    assert.are.equal(#prefix, sa.prompt_bytes_encoded - sb.prompt_bytes_encoded)
    assert.are.equal(0, sa.prompt_bytes_reencoded)
    assert.are.equal(0, sb.prompt_bytes_reencoded)
    -- one string object, not two equal ones (long strings are not interned)
    assert.are.equal(prefix, a.prefix)
    assert.are.equal(("%p"):format(a.prefix), ("%p"):format(b.prefix))
    local reqs = srv:requests()
    assert.are.equal(reqs[1].body, reqs[2].body)
    -- the same definition again: a new agent, a prefix of its own
    tide.agent { id = "sharer", prompt = "You share.", tools = { lookup }, subagents = { { toolkits = "*" } } }
    local c = session()
    assert.are.equal("ok", (c:turn("hi")))
    assert.are.equal(sa.prompt_bytes_encoded, c:stats().prompt_bytes_encoded)
    assert.are.equal(prefix, c.prefix)
    assert.are_not.equal(("%p"):format(a.prefix), ("%p"):format(c.prefix))
    -- and sessions built after it share that one
    local d = session()
    assert.are.equal("ok", (d:turn("hi")))
    assert.are.equal(sb.prompt_bytes_encoded, d:stats().prompt_bytes_encoded)
    assert.are.equal(("%p"):format(c.prefix), ("%p"):format(d.prefix))
    cache.invalidate(src)
  end)

  it("count build time, cache hits and misses, and the first call's time to first byte", function()
    cache.invalidate(src)
    -- cold: a miss, counted at build; the fetch comes at turn 1
    local t0 = core.hrtime()
    local cold = tide.session { agent = "sharer", provider = provider, integrations = src }
    local wall = (core.hrtime() - t0) / 1e6
    local st = cold:stats()
    assert.is_number(st.build_ms)
    assert.is_true(st.build_ms >= 0 and st.build_ms <= wall, st.build_ms .. " of " .. wall)
    assert.are.same({ 0, 1, false }, { st.cache_hits, st.cache_misses, st.prewarmed })
    assert.is_nil(st.first_ttfb_ms)
    assert.is_nil(st.ttfb_ms)
    assert.is_nil(st.prompt_version) -- rendered at turn 1
    assert.are.equal("ok", (cold:turn("hi")))
    st = cold:stats()
    assert.are.same({ 0, 1, 1 }, { st.cache_hits, st.cache_misses, st.integration_fetches })
    -- warm: a hit, and nothing fetched
    local warm = tide.session { agent = "sharer", provider = provider, integrations = src }
    st = warm:stats()
    assert.are.same({ 1, 0, true }, { st.cache_hits, st.cache_misses, st.prewarmed })
    t0 = core.hrtime()
    assert.are.equal("ok", (warm:turn("one")))
    wall = (core.hrtime() - t0) / 1e6
    local st1 = warm:stats()
    assert.are.equal(0, st1.integration_fetches)
    assert.is_number(st1.first_ttfb_ms)
    assert.are.equal(st1.ttfb_ms, st1.first_ttfb_ms)
    assert.is_true(st1.first_ttfb_ms > 0 and st1.first_ttfb_ms <= wall, st1.first_ttfb_ms .. " of " .. wall)
    -- a later call moves ttfb_ms, never first_ttfb_ms (the delay makes
    -- the two calls' times differ)
    srv:push { text = "two", delay_ms = 50 }
    assert.are.equal("two", (warm:turn("two")))
    local st2 = warm:stats()
    assert.are.equal(st1.first_ttfb_ms, st2.first_ttfb_ms)
    assert.is_number(st2.ttfb_ms)
    assert.is_number(st2.prompt_version) -- (what it is: the next case)
    cache.invalidate(src)
  end)

  it("say which version of a prompt file they froze: a new one after an edit, the old one kept", function()
    local dir = helpers.tmpdir()
    local name = "versioned" .. math.random(1, 1e9)
    helpers.write(dir .. "/" .. name .. ".md", "Version one.\n")
    local changed = 0
    local w = assert(prompts.watch(dir, { on_change = function() changed = changed + 1 end }))
    finally(function()
      w:close()
      prompts.remove_dir(dir)
      helpers.rmdir(dir)
    end)
    tide.agent { id = "versioned", prompt = name }
    helpers.run(function()
      local old = tide.session { agent = "versioned", provider = provider }
      assert.are.equal("ok", (old:turn("hi")))
      local v1 = old:stats().prompt_version
      assert.is_number(v1)
      assert.are.equal(prompts.version(name), v1)
      helpers.write(dir .. "/" .. name .. ".md", "Version two.\n")
      helpers.wait_until(function() return changed > 0 end, "the edit to be seen")
      local new = tide.session { agent = "versioned", provider = provider }
      assert.are.equal("ok", (new:turn("hi")))
      local v2 = new:stats().prompt_version
      assert.are.equal(prompts.version(name), v2)
      assert.are_not.equal(v1, v2)
      assert.are.equal("Version two.", new:system_prompt())
      -- the live session keeps the prompt it froze, and says so
      assert.are.equal("ok", (old:turn("again")))
      assert.are.equal(v1, old:stats().prompt_version)
      assert.are.equal("Version one.", old:system_prompt())
    end)
  end)

  it("give a call 120 s unless told otherwise, and wait for it what tool_timeout_ms says", function()
    local stall = tide.tool { name = "stall", description = "Waits long, then says how long it may.",
      handler = function(_, ctx)
        if ctx.session.tool_timeout_ms < 1000 then tide.sleep(100000) end
        return tostring(ctx.session.tool_timeout_ms)
      end }
    tide.agent { id = "staller", prompt = "You wait.", tools = { stall } }
    local call = { tool_calls = { { name = "stall", arguments = {} } } }
    srv:push(call, "waited")
    local s = tide.session { agent = "staller", provider = provider }
    assert.are.equal("waited", (s:turn("go")))
    assert.are.equal("120000", s:history()[3].results[1].content)
    -- the session's value is the one a call's wait is cut at
    srv:push(call, "gave up")
    local short = tide.session { agent = "staller", provider = provider, tool_timeout_ms = 30 }
    assert.are.equal("gave up", (short:turn("go")))
    local r = short:history()[3].results[1]
    assert.are.equal("Error: tool 'stall' timed out after 30 ms", r.content)
    assert.is_true(r.is_error)
  end)
end)
