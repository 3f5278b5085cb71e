-- The turn queue (tide.submit, tide.worker, `tide worker`) against a real
-- redis-server, with workers in this process and in processes of their own
-- (bin/tide worker) that are killed with SIGKILL mid-turn.
local helpers = require "helpers"
local redis_server = require "support.redis"

local build = os.getenv("TIDE_BUILD_DIR") or "build"
local AGENTS = "spec/support/cluster_agents"

describe("the turn queue", function()
  local tide = require "tide"
  local core = require "tide.core"
  local testing = require "tide.testing"
  local cluster = require "tide.cluster"
  local json = require "tide.json"
  local redis = redis_server.cluster_per_case("q", AGENTS)

  local function provider(mock)
    return tide.provider.openai { base_url = mock.url .. "/v1", api_key = "k", model = "m", stream = false }
  end

  -- `bin/tide worker` in a process of its own, serving the current
  -- cluster's prefix; returns it once it serves.
  local function worker_process(mock, name, env, lease_ms, extra)
    local c = cluster.current()
    local argv = { "env", "ASAN_OPTIONS=detect_leaks=0", "LUA_PATH=lua/?.lua;lua/?/init.lua;;",
      "TIDE_BUILD_DIR=" .. build, "OPENAI_BASE_URL=" .. mock.url .. "/v1", "OPENAI_API_KEY=k", "TIDE_MODEL=m",
      "TIDE_WORKER_NAME=" .. name }
    for k, v in pairs(env or {}) do argv[#argv + 1] = k .. "=" .. v end
    for _, a in ipairs { "lua5.4", "bin/tide", "worker", "--redis", c.url, "--agents", AGENTS, "--prefix", c.prefix,
      "--name", name, "--claim-idle-ms", "1000", "--lease-ms", tostring(lease_ms or 600), "--concurrency", "16" } do
      argv[#argv + 1] = a
    end
    for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
    local p = assert(core.process_spawn { argv = argv })
    local line = p:read_line(15000)
    assert(line == "serving turns as " .. name, "worker " .. name .. " said: " .. tostring(line) .. " " .. p:stderr())
    return p
  end

  -- Worker b takes over from worker a, which is killed mid-turn; the
  -- turn's answer (t's) once b has finished it.
  local function take_over(mock, a, log, t)
    local b = worker_process(mock, "b", { TIDE_TOOL_LOG = log })
    a:kill("KILL")
    a:wait(5000)
    local reply, err = t:join()
    return b, reply, err
  end

  local function stop(...)
    for _, p in ipairs { ... } do
      p:kill("KILL")
      p:close()
    end
  end

  it("serves a turn submitted from another process's point of view, with its stats", function()
    helpers.run(function()
      local mock = testing.mock_server { default = testing.tool_loop(1, "lookup") }
      local w = worker_process(mock, "w1", nil, nil, { "--session-ttl-ms", "600000" })
      local reply, stats = tide.submit { queue = "turns", session = "user-42", agent = "helper", text = "hi",
        timeout_ms = 20000 }
      assert.equal("done after 1 lookups", reply, tostring(stats))
      assert.equal(2, stats.provider_calls)
      assert.equal(1, stats.tool_calls)
      assert.equal("w1", stats.worker)
      -- the answer gave the session's lease up with the reply
      local c = cluster.current()
      assert.equal(0, c:call("EXISTS", c:key("session", "user-42", "lease")))
      -- and its transcript expires when idle (--session-ttl-ms)
      local ttl = c:call("PTTL", c:key("session", "user-42"))
      assert.is_true(ttl > 0 and ttl <= 600000, tostring(ttl))
      -- the session is a Redis session: another turn sees the first
      reply = tide.submit { queue = "turns", session = "user-42", agent = "helper", text = "again" }
      assert.equal("done after 1 lookups", reply)
      local s = assert(tide.session { id = "user-42", store = "redis", agent = "helper", provider = provider(mock) })
      assert.equal(6, #s:history())
      -- an unknown agent is the turn's error, as s:turn() would give it
      local none, err = tide.submit { queue = "turns", session = "u2", agent = "nobody", text = "hi" }
      assert.is_nil(none)
      assert.equal("UnknownAgent", err.code)
      w:kill("KILL")
      w:close()
      mock:close()
    end)
  end)

  it("takes a paused turn's decisions through the queue, checked before any is made", function()
    local log = os.tmpname()
    finally(function() os.remove(log) end)
    helpers.run(function()
      local mock = testing.mock_server { default = testing.tool_loop(1, "delete") }
      local w = worker_process(mock, "d1", { TIDE_TOOL_LOG = log })
      local c = cluster.current()
      local function records(id) return table.concat(c:call("LRANGE", c:key("session", id), 0, -1), "\n") end
      local none, err = tide.submit { queue = "turns", session = "ask-1", agent = "careful", text = "delete it" }
      assert.is_nil(none)
      assert.equal("ApprovalRequired", err.code)
      assert.equal(1, #err.pending)
      local call = err.pending[1]
      assert.equal("delete", call.name)
      -- a decision that does not fit is the answer, and nothing is recorded
      local before = records("ask-1")
      none, err = tide.submit { queue = "turns", session = "ask-1", agent = "careful",
        decisions = { { id = call.id, approved = true }, { id = "call_nope", approved = true } } }
      assert.is_nil(none)
      assert.equal("UnknownApproval", err.code)
      assert.equal(before, records("ask-1"))
      none, err = tide.submit { queue = "turns", session = "ask-1", agent = "careful",
        decisions = { { id = call.id, approved = true }, { id = call.id, approved = false } } }
      assert.equal("AlreadyDecided", err.code)
      assert.equal(before, records("ask-1"))
      -- approved: the call runs once and the turn goes on to its answer
      local reply, stats = tide.submit { queue = "turns", session = "ask-1", agent = "careful",
        decisions = { { id = call.id, approved = true, note = "fine by me" } } }
      assert.equal("done after 1 lookups", reply, tostring(stats))
      assert.equal("d1", stats.worker)
      local f = assert(io.open(log))
      assert.equal("delete item 1 d1\n", f:read("a"))
      f:close()
      assert.matches('"note":"fine by me"', records("ask-1"))
      -- nothing waits now
      none, err = tide.submit { queue = "turns", session = "ask-1", agent = "careful",
        decisions = { { id = call.id, approved = true } } }
      assert.equal("NothingPending", err.code)
      -- rejected: the model reads the reason, the tool never runs
      none, err = tide.submit { queue = "turns", session = "ask-2", agent = "careful", text = "delete it" }
      assert.equal("ApprovalRequired", err.code)
      reply = tide.submit { queue = "turns", session = "ask-2", agent = "careful",
        decisions = { { id = err.pending[1].id, approved = false, note = "not today" } } }
      assert.equal("done after 1 lookups", reply)
      f = assert(io.open(log))
      assert.equal("delete item 1 d1\n", f:read("a"))
      f:close()
      local last = mock:requests()[#mock:requests()].json.messages
      assert.matches("rejected by the user: not today", last[#last].content)
      w:kill("KILL")
      w:close()
      mock:close()
    end)
    -- misuse raises before anything is sent, naming the field
    for _, case in ipairs {
      { { text = "x", decisions = { { id = "a", approved = true } } }, "give 'text' or 'decisions', not both" },
      { { decisions = {} }, "field 'decisions' must be a non-empty list of { id, approved, note }" },
      { { decisions = { { id = "a", approve = true } } }, "field 'decisions' [1] has an unknown field 'approve'" },
      { { decisions = { { id = "a", approved = "yes" } } }, "field 'decisions' [1].approved must be a boolean" },
    } do
      local opts = case[1]
      opts.queue, opts.session, opts.agent = "turns", "s", "careful"
      assert.has_error(function() tide.submit(opts) end, "bad argument #1 to 'submit' (" .. case[2] .. ")")
    end
  end)

  it("finishes a resumed turn whose worker died mid-call: the approved call ran once, one reply", function()
    local log = os.tmpname()
    finally(function() os.remove(log) end)
    helpers.run(function()
      local mock = testing.mock_server { default = testing.tool_loop(1, "delete") }
      local a = worker_process(mock, "a", { TIDE_TOOL_LOG = log, TIDE_TOOL_SLEEP_MS = "20000" })
      local c = cluster.current()
      local _, err = tide.submit { queue = "turns", session = "resumed", agent = "careful", text = "delete it" }
      assert.equal("ApprovalRequired", err.code)
      local t = tide.spawn(function()
        return tide.submit { queue = "turns", session = "resumed", agent = "careful", timeout_ms = 30000,
          decisions = { { id = err.pending[1].id, approved = true } } }
      end)
      helpers.wait_until(function() return #helpers.lines_of(log) == 1 end, "the approved call to start", 10000)
      a:kill("KILL")
      a:wait(5000)
      local b = worker_process(mock, "b", { TIDE_TOOL_LOG = log })
      local reply, stats = t:join()
      assert.equal("done after 1 lookups", reply, tostring(stats))
      assert.equal("b", stats.worker)
      assert.is_true(stats.continued)
      assert.equal(1, #helpers.lines_of(log)) -- answered "interrupted", never run again
      local decisions, interrupted = 0, 0
      for _, r in ipairs(c:call("LRANGE", c:key("session", "resumed"), 0, -1)) do
        local v = json.decode(r)
        if v.type == "decision" then decisions = decisions + 1 end
        if v.role == "tool" and v.results[1].content:match("interrupted") then interrupted = interrupted + 1 end
      end
      assert.same({ 1, 1 }, { decisions, interrupted })
      b:kill("KILL")
      b:close()
      a:close()
      mock:close()
    end)
  end)

  it("keeps max_iterations across a crash after a resume: the continued turn counts from the pause", function()
    local log = os.tmpname()
    finally(function() os.remove(log) end)
    helpers.run(function()
      -- the first answer asks for the gated call, every later one for a lookup
      local calls = 0
      local gated, lookups = testing.tool_loop(10, "delete"), testing.tool_loop(10, "lookup")
      local mock = testing.mock_server { default = function(req)
        calls = calls + 1
        return (calls == 1 and gated or lookups)(req)
      end }
      local a = worker_process(mock, "a", { TIDE_TOOL_LOG = log, TIDE_LOOKUP_SLEEP_MS = "20000" })
      local _, err = tide.submit { queue = "turns", session = "paused-greedy", agent = "careful", text = "delete it" }
      assert.equal("ApprovalRequired", err.code)
      local t = tide.spawn(function()
        return tide.submit { queue = "turns", session = "paused-greedy", agent = "careful", timeout_ms = 30000,
          decisions = { { id = err.pending[1].id, approved = true } } }
      end)
      -- the resumed round is done (delete ran) and iteration 2's lookup runs
      helpers.wait_until(function() return #helpers.lines_of(log) == 2 end, "the lookup to start", 10000)
      local b, reply, rerr = take_over(mock, a, log, t)
      assert.is_nil(reply)
      assert.equal("MaxIterationsExceeded", rerr.code)
      -- iteration 1 before the pause, 2 on a, then b's one call (3 of 3)
      assert.equal(3, calls)
      assert.same({ "delete item 1 a", "lookup item 2 a", "lookup item 3 b" }, helpers.lines_of(log))
      stop(a, b)
      mock:close()
    end)
  end)

  it("finishes the turn of a worker killed mid-call in another: the tool ran once, one reply", function()
    local log = os.tmpname()
    finally(function() os.remove(log) end)
    helpers.run(function()
      local mock = testing.mock_server { default = testing.tool_loop(1, "lookup") }
      local env = { TIDE_TOOL_LOG = log, TIDE_TOOL_SLEEP_MS = "20000" }
      local a = worker_process(mock, "a", env)
      local b = worker_process(mock, "b", env)
      local c = cluster.current()
      -- every reply published on this process's channel, counted by a
      -- subscriber of its own
      local published = 0
      local spy = cluster.new { redis = redis.server.url }
      local t = tide.spawn(function()
        return tide.submit { queue = "turns", session = "victim", agent = "helper", text = "look", timeout_ms = 30000 }
      end)
      helpers.wait_until(function() return #helpers.lines_of(log) == 1 end, "the tool to start", 10000)
      local channel = require("tide.queue")._channel(c, "turns")
      spy:subscribe(channel, function(_, payload) if payload ~= "ping" then published = published + 1 end end)
      helpers.wait_until(function() return spy:subscribed() end, "the spy")
      local who = helpers.lines_of(log)[1]:match(" (%a+)$")
      local victim, other = (who == "a" and a or b), (who == "a" and "b" or "a")
      victim:kill("KILL")
      victim:wait(5000)
      local reply, stats = t:join()
      assert.equal("done after 1 lookups", reply, tostring(stats))
      assert.equal(other, stats.worker)
      assert.is_true(stats.continued)
      assert.equal(0, stats.tool_calls) -- the call was answered "interrupted", not run again
      assert.equal(1, #helpers.lines_of(log))
      tide.sleep(200)
      assert.equal(1, published)
      -- the transcript holds the turn once, its call answered "interrupted"
      local records = c:call("LRANGE", c:key("session", "victim"), 0, -1)
      local turns, users, interrupted = 0, 0, 0
      for _, r in ipairs(records) do
        local v = json.decode(r)
        if v.type == "turn" then turns = turns + 1 end
        if v.role == "user" then users = users + 1 end
        if v.role == "tool" and v.results[1].content:match("interrupted") then interrupted = interrupted + 1 end
      end
      assert.same({ 1, 1, 1 }, { turns, users, interrupted })
      -- nothing left pending in the group
      local pending = c:call("XPENDING", c:key("q", "turns"), "workers")
      assert.equal(0, pending[1])
      stop(a, b)
      spy:close()
      mock:close()
    end)
  end)

  it("keeps max_iterations across a crash: the continued turn counts the calls made before it", function()
    local log = os.tmpname()
    finally(function() os.remove(log) end)
    helpers.run(function()
      local calls = 0
      local loop = testing.tool_loop(10, "lookup") -- the model never stops calling
      local mock = testing.mock_server { default = function(req)
        calls = calls + 1
        return loop(req)
      end }
      local a = worker_process(mock, "a", { TIDE_TOOL_LOG = log, TIDE_TOOL_SLEEP_MS = "20000" })
      local t = tide.spawn(function()
        return tide.submit { queue = "turns", session = "greedy", agent = "helper", text = "look", timeout_ms = 30000 }
      end)
      helpers.wait_until(function() return #helpers.lines_of(log) == 1 end, "the tool to start", 10000)
      local b, reply, err = take_over(mock, a, log, t)
      assert.is_nil(reply)
      assert.equal("MaxIterationsExceeded", err.code)
      -- a's call and tool, then b's one call (iteration 2 of 2) and its tool
      assert.equal(2, calls)
      assert.equal(2, #helpers.lines_of(log))
      stop(a, b)
      mock:close()
    end)
  end)

  it("names the remote MCP server whose call waits, and takes its decision through the queue", function()
    helpers.run(function()
      local ask = { name = "ask_question", arguments = '{"q":"tides"}' }
      local mock = testing.mock_server { replies = {
        { server_tools = { { name = "mcp", approval = true, input = ask } } },
        { server_tools = { { name = "mcp", input = { name = ask.name, arguments = ask.arguments, output = "6" } } },
          text = "High tide is at 6." } } }
      local p = tide.provider.openai { api = "responses", base_url = mock.url .. "/v1", api_key = "k", model = "m",
        stream = false, server_tools = { { type = "mcp", server_label = "wiki", server_url = "https://mcp.example/mcp" } } }
      local w = assert(tide.worker { queue = "turns", provider = p, quiet = true })
      local none, err = tide.submit { queue = "turns", session = "mcp-1", agent = "helper", text = "when?" }
      assert.is_nil(none)
      assert.equal("ApprovalRequired", err.code)
      assert.same({ { id = "mcpr_mock1_1", name = "ask_question", arguments = '{"q":"tides"}', agent = "helper",
                      server = "wiki" } }, err.pending)
      local reply = tide.submit { queue = "turns", session = "mcp-1", agent = "helper",
        decisions = { { id = "mcpr_mock1_1", approved = true } } }
      assert.equal("High tide is at 6.", reply)
      local input = mock:requests()[2].json.input
      assert.same({ type = "mcp_approval_response", approval_request_id = "mcpr_mock1_1", approve = true },
        input[#input])
      w:stop()
      mock:close()
    end)
  end)

  it("answers a request once: a second delivery, or a turn done before its reply went out", function()
    helpers.run(function()
      local mock = testing.mock_server { default = testing.echo }
      local w = assert(tide.worker { queue = "turns", provider = provider(mock), claim_idle_ms = 200, quiet = true })
      local c = cluster.current()
      assert.equal("echo: one", tide.submit { queue = "turns", session = "once", agent = "helper", text = "one" })
      local requests = #mock:requests()
      -- the same request delivered again (its marker says answered): acked, not run
      local rid = "dup-" .. cluster.unique()
      c:call("SET", c:key("q", "turns", "req", rid), "answered")
      c:call("XADD", c:key("q", "turns"), "*", "rid", rid, "session", "once", "agent", "helper", "text", "one",
        "reply_to", "nowhere")
      helpers.wait_until(function() return w:stats().skipped == 1 end, "the duplicate to be skipped")
      -- a worker died after the turn's answer reached the transcript, before
      -- the reply went out: the next worker replies from the transcript
      local s = assert(tide.session { id = "done-early", store = "redis", agent = "helper", provider = provider(mock) })
      local rid2 = "early-" .. cluster.unique()
      s:_queued_turn(rid2, "two")
      s:close()
      requests = #mock:requests()
      c:call("SET", c:key("q", "turns", "req", rid2), "queued")
      local got = {}
      c:subscribe(c:key("q", "turns", "done", "spec"), function(_, payload) got[#got + 1] = payload end)
      helpers.wait_until(function() return c:subscribed() end, "the subscription")
      c:call("XADD", c:key("q", "turns"), "*", "rid", rid2, "session", "done-early", "agent", "helper", "text", "two",
        "reply_to", c:key("q", "turns", "done", "spec"))
      helpers.wait_until(function() return #got == 1 end, "the reply")
      assert.matches('"reply":"echo: two"', got[1])
      assert.equal(requests, #mock:requests()) -- no provider call
      assert.equal(0, c:call("XLEN", c:key("q", "turns")))
      w:stop()
      mock:close()
    end)
  end)

  it("writes a turn's last records with its answer, in one script, or neither", function()
    helpers.run(function()
      local c = cluster.current()
      local mock = testing.mock_server { default = function(req)
        local last = req.json.messages[#req.json.messages].content
        return { text = "re: " .. last, delay_ms = last == "slow" and 300 or 0 }
      end }
      local w = assert(tide.worker { queue = "turns", provider = provider(mock), quiet = true })
      assert.equal("re: warm", tide.submit { queue = "turns", session = "warm", agent = "helper", text = "warm" })
      -- four scripts a turn: the submit, the lease, the first records (sent
      -- with the provider request), the answer with the last records
      c:call("CONFIG", "RESETSTAT")
      assert.equal("re: hi", tide.submit { queue = "turns", session = "two", agent = "helper", text = "hi" })
      local info = c:call("INFO", "commandstats")
      assert.equal("4", info:match("cmdstat_evalsha:calls=(%d+)"), info)
      assert.is_nil(info:match("cmdstat_eval:"), info)
      local key = c:key("session", "two")
      local records = c:call("LRANGE", key, 0, -1)
      assert.matches('"content":"re: hi"', records[#records])
      -- another writer's record lands while a turn runs: the turn's last
      -- records are refused, and the answer is that error
      local t = tide.spawn(function()
        return tide.submit { queue = "turns", session = "two", agent = "helper", text = "slow" }
      end)
      helpers.wait_until(function() return #mock:requests() == 3 end, "the slow request")
      local foreign = '{"content":"from elsewhere","role":"user"}'
      c:call("RPUSH", key, foreign)
      local r, err = t:join()
      assert.is_nil(r)
      assert.equal("SessionBusy", err.code)
      assert.matches("written by another process", err.message)
      records = c:call("LRANGE", key, 0, -1)
      assert.equal(foreign, records[#records])
      assert.is_nil(table.concat(records, "\n"):find("re: slow", 1, true))
      assert.equal(0, c:call("EXISTS", key .. ":lease")) -- given up all the same
      w:stop()
      mock:close()
    end)
  end)

  it("times out clearly, and a worker then skips the request", function()
    helpers.run(function()
      local mock = testing.mock_server { default = testing.echo }
      local r, err = tide.submit { queue = "turns", session = "late", agent = "helper", text = "hi", timeout_ms = 200 }
      assert.is_nil(r)
      assert.equal("Timeout", err.code)
      assert.matches("no reply from queue 'turns' within 200 ms", err.message)
      local w = assert(tide.worker { queue = "turns", provider = provider(mock), quiet = true })
      helpers.wait_until(function() return w:stats().skipped == 1 end, "the stale request to be skipped")
      assert.equal(0, #mock:requests())
      w:stop()
      mock:close()
    end)
  end)

  it("keeps to its concurrency, and stops gracefully: turns in flight finish", function()
    helpers.run(function()
      local now, most = 0, 0
      local mock = testing.mock_server { default = function()
        now = now + 1
        most = math.max(most, now)
        return { text = "slow", delay_ms = 100 }
      end }
      local done_requests = 0
      local w = assert(tide.worker { queue = "turns", concurrency = 2, provider = provider(mock), quiet = true })
      local tasks = {}
      for i = 1, 6 do
        tasks[i] = tide.spawn(function()
          local r, e = tide.submit { queue = "turns", session = "c" .. i, agent = "helper", text = "x" }
          now = now - 1
          done_requests = done_requests + 1
          return r, e
        end)
      end
      helpers.wait_until(function() return done_requests >= 2 end, "two replies")
      w:stop()
      assert.is_true(most <= 2, "more than 2 turns at once: " .. most)
      -- what the stopped worker had taken finished; the rest waits
      assert.is_true(w:stats().answered >= 2)
      assert.equal(0, w:stats().in_flight)
      local rest = assert(tide.worker { queue = "turns", concurrency = 8, provider = provider(mock), quiet = true })
      for i = 1, 6 do assert.equal("slow", tasks[i]:join()) end
      rest:stop()
      mock:close()
    end)
  end)

  it("serves what Redis handed it as it stopped: nothing waits for claim_idle_ms", function()
    helpers.run(function()
      local mock = testing.mock_server { default = function() return { text = "ok" } end }
      local w = assert(tide.worker { queue = "turns", provider = provider(mock), quiet = true, block_ms = 5000,
        claim_idle_ms = 60000 })
      -- the reply channel and the script ready, the worker's read blocked
      assert.equal("ok", tide.submit { queue = "turns", session = "warm", agent = "helper", text = "x" })
      tide.sleep(50)
      local t = core.spawn_now(function()
        return tide.submit { queue = "turns", session = "handed", agent = "helper", text = "x", timeout_ms = 5000 }
      end)
      tide.sleep(0) -- the request goes out
      -- this loop held while Redis hands the entry to the blocked read
      os.execute("sleep 0.3")
      w:stop()
      assert.equal("ok", t:join())
      assert.equal(2, w:stats().answered)
      assert.has_error(function() w:stop_on_sigterm(-1) end,
        "bad argument #1 to 'stop_on_sigterm' (non-negative integer expected)")
      mock:close()
    end)
  end)

  it("drains on SIGTERM: the turn in flight finishes, then `tide worker` exits with 0", function()
    helpers.run(function()
      local calls = 0
      local mock = testing.mock_server { default = function()
        calls = calls + 1
        return { text = "ok", delay_ms = 500 }
      end }
      local w = worker_process(mock, "t1")
      local t = tide.spawn(function()
        return tide.submit { queue = "turns", session = "term", agent = "helper", text = "x", timeout_ms = 20000 }
      end)
      helpers.wait_until(function() return calls == 1 end, "the turn's model call", 10000)
      w:kill("TERM")
      assert.equal("ok", t:join())
      assert.same({ 0, 0 }, { w:wait(10000) })
      assert.matches("SIGTERM: taking no more turns; the 1 in flight finish", w:stderr())
      -- it took no more: a turn submitted now waits for a worker
      local r, err = tide.submit { queue = "turns", session = "after", agent = "helper", text = "x", timeout_ms = 300 }
      assert.is_nil(r)
      assert.equal("Timeout", err.code)
      w:close()
      mock:close()
    end)
  end)

  it("comes back after a Redis restart: in-flight turns finish or fail clearly", function()
    local own = redis_server.start { args = { "--appendonly", "yes", "--appendfsync", "always" } }
    finally(function() own:close() end)
    tide.cluster { redis = own.url, reconnect_ms = 10000 }
    helpers.run(function()
      local mock = testing.mock_server { default = function() return { text = "ok", delay_ms = 300 } end }
      -- a lease that outlasts the restart: the turns in flight go on
      local w = worker_process(mock, "r1", nil, 5000)
      local tasks = {}
      for i = 1, 4 do
        tasks[i] = tide.spawn(function()
          return tide.submit { queue = "turns", session = "r" .. i, agent = "helper", text = "x", timeout_ms = 20000 }
        end)
      end
      tide.sleep(150)
      own:restart()
      for i = 1, 4 do
        local r, err = tasks[i]:join()
        if r then
          assert.equal("ok", r)
        else
          assert.is_true(err.code == "ClusterUnavailable" or err.code == "SessionBusy", tostring(err) .. w:stderr())
        end
      end
      -- the worker is back: a new turn is served
      assert.equal("ok", tide.submit { queue = "turns", session = "after", agent = "helper", text = "x",
        timeout_ms = 20000 })
      w:kill("KILL")
      w:close()
      mock:close()
    end)
  end)

  it("fails clearly when Redis loses the queue (a restart without persistence)", function()
    local own = redis_server.start()
    finally(function() own:close() end)
    tide.cluster { redis = own.url, reconnect_ms = 10000 }
    helpers.run(function()
      local calls = 0
      local mock = testing.mock_server { default = function()
        calls = calls + 1
        return { text = "ok", delay_ms = 300 }
      end }
      local w = assert(tide.worker { queue = "turns", provider = provider(mock), quiet = true, block_ms = 100 })
      local t = tide.spawn(function()
        return tide.submit { queue = "turns", session = "lost", agent = "helper", text = "x", timeout_ms = 20000 }
      end)
      -- the turn is at its model call (whose answer this loop gives, so not
      -- before the restart) when Redis loses everything
      helpers.wait_until(function() return calls == 1 end, "the turn's model call")
      own:restart()
      local r, err = t:join()
      assert.is_nil(r)
      assert.is_true(err.code == "ClusterUnavailable" or err.code == "SessionCorrupt", tostring(err))
      -- the group is made again: the queue serves on
      assert.equal("ok", tide.submit { queue = "turns", session = "new", agent = "helper", text = "x",
        timeout_ms = 20000 })
      w:stop()
      mock:close()
    end)
  end)

  it("fails clearly when Redis is not there at start", function()
    local url = redis_server.gone_url()
    tide.cluster { redis = url }
    local r, err = tide.submit { queue = "turns", session = "x", agent = "helper", text = "hi" }
    assert.is_nil(r)
    assert.equal("ClusterUnavailable", err.code)
    local p = tide.provider.openai { base_url = "http://127.0.0.1:1/v1", api_key = "k", model = "m" }
    local w, werr = helpers.run(function() return tide.worker { queue = "turns", provider = p } end)
    assert.is_nil(w)
    assert.equal("ClusterUnavailable", werr.code)
    local out = helpers.sh(("TIDE_BUILD_DIR=%s ASAN_OPTIONS=detect_leaks=0 OPENAI_API_KEY=k lua5.4 bin/tide worker "
      .. "--redis %s --agents %s 2>&1; echo status $?"):format(build, url, AGENTS))
    assert.matches("tide worker: ClusterUnavailable: cannot reach Redis", out)
    assert.matches("status 1", out)
  end)

  it("raises on misuse, naming the option", function()
    assert.has_error(function() tide.submit { queue = "q", session = "s", agent = "a", text = "t", bogus = 1 } end,
      "bad argument #1 to 'submit' (unknown option 'bogus')")
    assert.has_error(function() tide.submit { queue = "q", session = "s", agent = "a", text = 1 } end,
      "bad argument #1 to 'submit' (field 'text' must be a string, got number)")
    assert.has_error(function() tide.submit { queue = "q q", session = "s", agent = "a", text = "t" } end,
      "bad argument #1 to 'submit' (field 'queue' must be a non-empty string without spaces)")
    assert.has_error(function() tide.submit { queue = "q", session = "s", agent = "a", text = "t", timeout_ms = 0 } end,
      "bad argument #1 to 'submit' (field 'timeout_ms' must be an integer of at least 1)")
    local p = tide.provider.openai { base_url = "http://127.0.0.1:1/v1", api_key = "k", model = "m" }
    assert.has_error(function() tide.worker { queue = "q", provider = p, concurrency = 0 } end,
      "bad argument #1 to 'worker' (field 'concurrency' must be an integer of at least 1)")
    assert.has_error(function() tide.worker { queue = "q", provider = p, bogus = true } end,
      "bad argument #1 to 'worker' (unknown option 'bogus')")
    local out = helpers.sh(("TIDE_BUILD_DIR=%s lua5.4 bin/tide worker --agents x 2>&1; echo status $?"):format(build))
    assert.matches("%-%-redis URL %(or TIDE_REDIS_URL%) is required", out)
    assert.matches("status 2", out)
    -- numbers are decimal; --drain-ms 0 (stop at once) is one
    for flags, want in pairs { ["--concurrency 0x10"] = "--concurrency needs a positive integer",
                               ["--lease-ms 0"] = "--lease-ms needs a positive integer",
                               ["--drain-ms -1"] = "--drain-ms needs a non-negative integer",
                               ["--drain-ms 1e3"] = "--drain-ms needs a non-negative integer",
                               ["--drain-ms 0"] = "--redis URL (or TIDE_REDIS_URL) is required" } do
      out = helpers.sh(("TIDE_BUILD_DIR=%s lua5.4 bin/tide worker --agents x %s 2>&1; echo status $?"):format(build,
        flags))
      assert.matches(want, out, 1, true)
      assert.matches("status 2", out)
    end
  end)

  -- What stopping does to a turn that outlasts the drain: it is cancelled,
  -- its entry is left pending, and another worker finishes it.
  describe("past the drain", function()
    -- The first model call answers after `first` (a reply table: slow, or
    -- a hang); every later one at once.
    local function slow_then_ok(first)
      local mock = { calls = 0 }
      mock.server = testing.mock_server { default = function()
        mock.calls = mock.calls + 1
        return mock.calls == 1 and first or { text = "ok" }
      end }
      return mock
    end

    -- The workers and `tide worker` processes a case started, stopped
    -- after it however it ended (busted keeps one finally() per case).
    local workers, processes
    before_each(function() workers, processes = {}, {} end)
    local function stop_all()
      for _, p in ipairs(processes) do pcall(p.kill, p, "KILL") end
      helpers.run(function()
        for _, p in ipairs(processes) do p:close() end
        for _, w in ipairs(workers) do if not w.stopped then w:stop(0) end end
      end)
    end

    local function in_process_worker(mock, name, opts)
      opts = opts or {}
      opts.queue, opts.name, opts.provider, opts.quiet = "turns", name, provider(mock.server), true
      local w = assert(tide.worker(opts))
      workers[#workers + 1] = w
      return w
    end

    local function process_worker(mock, name, drain_ms)
      local p = worker_process(mock.server, name, nil, nil, { "--drain-ms", tostring(drain_ms) })
      processes[#processes + 1] = p
      return p
    end

    -- Whether session `id`'s transcript in Redis ends with the user's
    -- message, sent with the turn's model call: a worker that takes the
    -- turn over continues it from there.
    local function asked(c, id)
      return (c:call("LINDEX", c:key("session", id), -1) or ""):find('"role":"user"', 1, true) ~= nil
    end

    local function pending(c)
      return c:call("XPENDING", c:key("q", "turns"), "workers")
    end

    -- The submitted turn `t`, left pending by a worker that stopped,
    -- claimed and finished by worker b; asserts its reply.
    local function finished_by_b(mock, t)
      local b = in_process_worker(mock, "b", { claim_idle_ms = 200 })
      local reply, stats = t:join()
      assert.equal("ok", reply, tostring(stats))
      assert.equal("b", stats.worker)
      assert.is_true(stats.continued)
      assert.equal(1, b:stats().claimed)
      assert.equal(2, mock.calls) -- the cancelled call, then b's
      assert.equal(0, pending(cluster.current())[1])
      b:stop()
    end

    it("w:stop(drain_ms) cancels a turn still running; another worker claims and finishes it", function()
      finally(stop_all)
      helpers.run(function()
        -- (a reply far past the 50 ms drain: without the cancel, stop waits for it)
        local mock = slow_then_ok { text = "too late", delay_ms = 10000 }
        local server <close> = mock.server
        local c = cluster.current()
        local a = in_process_worker(mock, "a")
        local t = tide.spawn(function()
          return tide.submit { queue = "turns", session = "drained", agent = "helper", text = "x", timeout_ms = 30000 }
        end)
        helpers.wait_until(function() return mock.calls == 1 and asked(c, "drained") end, "the model call", 10000)
        a:stop(50)
        -- cancelled, not answered: the entry is still a's, pending
        assert.same({ served = 1, answered = 0, claimed = 0, skipped = 0, failed = 0, in_flight = 0 }, a:stats())
        local p = pending(c)
        assert.equal(1, p[1])
        assert.same({ { "a", "1" } }, p[4])
        finished_by_b(mock, t)
        -- the turn is in the transcript once
        local users = 0
        for _, r in ipairs(c:call("LRANGE", c:key("session", "drained"), 0, -1)) do
          if json.decode(r).role == "user" then users = users + 1 end
        end
        assert.equal(1, users)
      end)
    end)

    it("`tide worker --drain-ms`: a turn still running then is cancelled, the worker exits with 0", function()
      finally(stop_all)
      helpers.run(function()
        local mock = slow_then_ok { fault = "hang" }
        local server <close> = mock.server
        local c = cluster.current()
        local w = process_worker(mock, "t2", 200)
        local t = tide.spawn(function()
          return tide.submit { queue = "turns", session = "term2", agent = "helper", text = "x", timeout_ms = 30000 }
        end)
        helpers.wait_until(function() return mock.calls == 1 and asked(c, "term2") end, "the model call", 10000)
        w:kill("TERM")
        -- (the default drain, 30 s, would hold it far longer)
        assert.same({ 0, 0 }, { w:wait(10000) })
        assert.matches("SIGTERM: taking no more turns; the 1 in flight finish", w:stderr(), 1, true)
        local p = pending(c)
        assert.equal(1, p[1])
        assert.same({ { "t2", "1" } }, p[4])
        finished_by_b(mock, t)
      end)
    end)

    it("`tide worker`: the first SIGTERM drains a slow turn, a second ends the process at once", function()
      finally(stop_all)
      helpers.run(function()
        local mock = slow_then_ok { fault = "hang" }
        local server <close> = mock.server
        local c = cluster.current()
        -- a drain that outlasts the case: only the second SIGTERM ends it
        local w = process_worker(mock, "t3", 60000)
        local t = tide.spawn(function()
          return tide.submit { queue = "turns", session = "term3", agent = "helper", text = "x", timeout_ms = 30000 }
        end)
        helpers.wait_until(function() return mock.calls == 1 and asked(c, "term3") end, "the model call", 10000)
        w:kill("TERM")
        helpers.wait_until(function()
          return w:stderr():find("SIGTERM: taking no more turns; the 1 in flight finish", 1, true) ~= nil
        end, "the drain to start", 10000)
        -- draining: the process waits for its turn
        local none, err = w:wait(500)
        assert.is_nil(none)
        assert.equal("Timeout", err.code)
        w:kill("TERM")
        -- ended by the signal's default action, well before the drain's end
        assert.same({ 0, 15 }, { w:wait(10000) })
        local p = pending(c)
        assert.equal(1, p[1])
        assert.same({ { "t3", "1" } }, p[4])
        finished_by_b(mock, t)
      end)
    end)
  end)
end)
