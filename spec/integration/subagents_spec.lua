-- Sub-agents: delegation, spawn-depth gating, isolation, the tree budget and
-- cancellation of a whole agent tree.
local tide = require "tide"
local core = require "tide.core"
local json = require "tide.json"
local testing = require "tide.testing"
local cache = require "tide.integrations.cache"
local helpers = require "helpers"

-- The agent a request comes from is named in its system prompt ("Agent <id>.").
local function agent_of(req)
  local sys = req.json.messages[1].content
  return sys:match("Agent ([%w_]+)%.") or (sys:find("direct access to the user", 1, true) and "integrations") or "?"
end

local function tool_results(req)
  local out = {}
  for _, m in ipairs(req.json.messages) do
    if m.role == "tool" then out[#out + 1] = m.content end
  end
  return out
end

-- A mock "model": per agent, what to call on the first request, and a final
-- answer that quotes the tool results it got.
local function scripted(plan)
  return function(req)
    local who = agent_of(req)
    local results = tool_results(req)
    local step = plan[who]
    if #results == 0 and step and step.call then
      return { tool_calls = step.call(req) }
    end
    return who .. " done: " .. table.concat(results, " | ")
  end
end

-- Polls until cond() holds; fails instead of hanging.
local function wait_for(cond)
  for _ = 1, 2500 do
    if cond() then return end
    tide.sleep(2)
  end
  error("condition not reached in 5 s", 2)
end

local function requests_from(srv, who)
  local n = 0
  for _, r in ipairs(srv:requests()) do
    if agent_of(r) == who then n = n + 1 end
  end
  return n
end

describe("sub-agents", function()
  local srv, provider, dir

  before_each(function()
    cache.invalidate_all()
    srv = testing.mock_server {}
    provider = tide.provider.openai { base_url = srv.url .. "/v1", api_key = "k", model = "m", stream = true }
    dir = helpers.tmpdir()
  end)

  after_each(function()
    srv:close()
    helpers.rmdir(dir)
    helpers.assert_quiet()
  end)

  it("gates a chain of six agents at depth 4, before any provider call for it", function()
    local plan = {}
    for i = 1, 6 do
      tide.agent { id = "a" .. i, prompt = "Agent a" .. i .. ". Delegate down.",
        subagents = i < 6 and { "a" .. (i + 1) } or nil, when_to_use = "level " .. i }
      if i < 6 then
        plan["a" .. i] = { call = function() return { { name = "delegate_a" .. (i + 1), arguments = { task = "go deeper" } } } end }
      end
    end
    srv.default = scripted(plan)
    local path = dir .. "/root.jsonl"
    local s = tide.session { agent = "a1", provider = provider, transcript = path }
    local reply, err = s:turn("start the chain")
    assert.is_nil(err)
    assert.matches("^a1 done:", reply)
    assert.matches("SpawnDepthExceeded", reply)
    -- a1..a4 ran (depths 0..3); a5 would be depth 4: never called
    assert.are.equal(2, requests_from(srv, "a4"))
    assert.are.equal(0, requests_from(srv, "a5"))
    assert.are.equal(0, requests_from(srv, "a6"))
    assert.are.equal(3, s:stats().spawn_depth_max)
    s:close()
    -- the error is in the root's transcript (quoted up the chain)
    assert.matches("SpawnDepthExceeded", helpers.read(path))
    -- each sub-agent wrote its own transcript, named after the parent chain
    local files = {}
    for f in io.popen("ls " .. dir):lines() do files[#files + 1] = f end
    table.sort(files)
    assert.are.equal(4, #files)
    assert.matches("^root%.a2%.", files[2])
  end)

  it("runs 20 parallel delegations at depth 3, none of which can spawn further", function()
    tide.agent { id = "deeper", prompt = "Agent deeper. Never reached." }
    tide.agent { id = "worker", prompt = "Agent worker. Tries to delegate.", subagents = { "deeper" } }
    tide.agent { id = "fan", prompt = "Agent fan. Fans out.", subagents = { "worker" } }
    tide.agent { id = "mid", prompt = "Agent mid.", subagents = { "fan" } }
    tide.agent { id = "top", prompt = "Agent top.", subagents = { "mid" } }
    local depths = {}
    local probe = tide.tool { name = "probe", description = "depth probe",
      handler = function(_, ctx) depths[#depths + 1] = ctx.depth; return "d" .. ctx.depth end }
    tide.agent { id = "worker", prompt = "Agent worker. Tries to delegate.", subagents = { "deeper" },
      extra_tools = { probe } }
    srv.default = scripted {
      top = { call = function() return { { name = "delegate_mid", arguments = { task = "t" } } } end },
      mid = { call = function() return { { name = "delegate_fan", arguments = { task = "t" } } } end },
      fan = { call = function()
        local calls = {}
        for i = 1, 20 do calls[i] = { name = "delegate_worker", arguments = { task = "w" .. i } } end
        return calls
      end },
      worker = { call = function() return {
        { name = "delegate_deeper", arguments = { task = "x" } },
        { name = "probe", arguments = {} },
      } end },
    }
    local s = tide.session { agent = "top", provider = provider }
    local reply = s:turn("fan out")
    assert.matches("^top done:", reply)
    assert.are.equal(40, requests_from(srv, "worker"))
    assert.are.equal(0, requests_from(srv, "deeper"))
    assert.are.equal(20, #depths)
    for _, d in ipairs(depths) do assert.are.equal(3, d) end
    local _, count = reply:gsub("SpawnDepthExceeded", "")
    assert.are.equal(20, count)
    -- after all that, the root is back at depth 0
    assert.are.equal(0, core.depth())
  end)

  it("restores depth after a child errors: the next delegation runs at the same depth", function()
    local seen = {}
    local probe = tide.tool { name = "probe", description = "depth", handler = function(_, ctx)
      seen[#seen + 1] = ctx.depth
      return "ok"
    end }
    tide.agent { id = "child", prompt = "Agent child.", tools = { probe } }
    tide.agent { id = "parent", prompt = "Agent parent.", subagents = { "child" } }
    local calls = 0
    srv.default = function(req)
      local who = agent_of(req)
      if who == "child" then
        calls = calls + 1
        if calls == 1 then return { fault = "status", status = 400 } end -- child fails
        if #tool_results(req) == 0 then return { tool_calls = { { name = "probe", arguments = {} } } } end
        return "child ok"
      end
      local n = #tool_results(req)
      if n < 2 then return { tool_calls = { { name = "delegate_child", arguments = { task = "try " .. n } } } } end
      return "parent done: " .. table.concat(tool_results(req), " | ")
    end
    local s = tide.session { agent = "parent", provider = provider }
    local reply = s:turn("go")
    assert.matches("sub%-agent parent/child failed", reply)
    assert.matches("child ok", reply)
    assert.are.same({ 2 - 1 }, seen) -- the second child ran at depth 1 again
  end)

  it("isolates a sub-agent: own prompt with the role contract, allowed tools only, final text only", function()
    local secret_called = false
    local lookup = tide.tool { name = "lookup", description = "look", handler = function() return "looked" end }
    local secret = tide.tool { name = "secret", description = "parent only", handler = function()
      secret_called = true
      return "leak"
    end }
    tide.agent { id = "researcher", prompt = "Agent researcher. Research.", tools = { "lookup" } }
    tide.agent { id = "boss", prompt = "Agent boss.", tools = { lookup, secret }, subagents = { "researcher" } }
    srv.default = scripted {
      boss = { call = function() return { { name = "delegate_researcher", arguments = { task = "find" } } } end },
      researcher = { call = function() return {
        { name = "secret", arguments = {} }, { name = "lookup", arguments = {} } } end },
    }
    local s = tide.session { agent = "boss", provider = provider }
    local reply = s:turn("go")
    assert.is_false(secret_called)
    assert.matches("'secret' is not available to this agent. Available tools: lookup", reply)
    assert.matches("looked", reply)
    local sub
    for _, r in ipairs(srv:requests()) do if agent_of(r) == "researcher" then sub = r.json break end end
    local names = {}
    for _, t in ipairs(sub.tools) do names[#names + 1] = t["function"].name end
    assert.are.same({ "lookup" }, names)
    assert.matches("^Agent researcher%. Research%.", sub.messages[1].content)
    local contract = require("tide.prompts").render("subagent_contract", {})
    assert.is_truthy(sub.messages[1].content:find(contract, 1, true))
    -- the task and the date/time go on the user message, not the prompt
    assert.matches("Current date and time", sub.messages[2].content)
    assert.matches("find$", sub.messages[2].content)
    -- the parent's history holds only the sub-agent's final text
    local tool_msg = s:history()[3]
    assert.are.equal("tool", tool_msg.role)
    assert.matches("^researcher done:", tool_msg.results[1].content)
  end)

  describe("the integrations agent", function()
    local function src_with(toolkits)
      return tide.integrations.static { id = "ia-" .. tostring(math.random(1e9)), toolkits = toolkits }
    end
    local github = {
      slug = "github", description = "Code hosting", connected = true,
      tools = { { name = "GITHUB_LIST_ISSUES", description = "list issues",
        parameters = { type = "object", properties = {} },
        handler = function() return "3 open issues" end } },
      gated_tools = { { name = "GITHUB_DELETE_REPO", description = "delete a repo", reason = "admin scope is off" } },
    }

    it("runs a connected toolkit's agent with that toolkit's actions; gated actions are never callable", function()
      local src = src_with { github, { slug = "slack", connected = true, tools = {} } }
      cache.get(src)
      tide.agent { id = "orch", prompt = "Agent orch.", subagents = { { toolkits = "*" } } }
      srv.default = scripted {
        orch = { call = function() return { { name = "delegate_github", arguments = { task = "count issues" } } } end },
        integrations = { call = function() return {
          { name = "GITHUB_DELETE_REPO", arguments = {} }, { name = "GITHUB_LIST_ISSUES", arguments = {} } } end },
      }
      local s = tide.session { agent = "orch", provider = provider, integrations = src }
      local reply = s:turn("how many issues?")
      assert.matches("3 open issues", reply)
      assert.matches("GITHUB_DELETE_REPO' is gated %(admin scope is off%)", reply)
      local ia
      for _, r in ipairs(srv:requests()) do if agent_of(r) == "integrations" then ia = r.json break end end
      local names = {}
      for _, t in ipairs(ia.tools) do names[#names + 1] = t["function"].name end
      assert.are.same({ "GITHUB_LIST_ISSUES" }, names)
      assert.matches("github", ia.messages[1].content)
    end)

    it("answers an unknown toolkit with the valid slugs and a disconnected one with an authorize hint", function()
      local src = src_with { github, { slug = "slack", connected = true, tools = {} } }
      cache.get(src)
      tide.agent { id = "orch", prompt = "Agent orch.", subagents = { { toolkits = "*" } } }
      local s = tide.session { agent = "orch", provider = provider, integrations = src }
      local gh, sl = s.surface.map.delegate_github, s.surface.map.delegate_slack
      -- the user disconnects slack and github disappears from the source
      src:set { { slug = "slack", connected = false, tools = {} }, { slug = "notion", connected = true, tools = {} } }
      cache.invalidate(src)
      cache.get(src)
      local ctx = { session = s }
      local r1, e1
      tide.run(function() r1, e1 = gh.handler({ task = "x" }, ctx) end)
      assert.is_nil(r1)
      assert.are.equal("ToolError", e1.code)
      assert.matches("unknown toolkit 'github'%. Valid toolkits: notion, slack", e1.message)
      local r2 = tide.run(function() return sl.handler({ task = "x" }, ctx) end)
      assert.is_string(r2) -- a success result, not an error
      assert.matches("not connected%. Ask the user to authorize slack", r2)
      assert.matches("do not retry", r2)
      assert.are.equal(0, #srv:requests())
    end)
  end)

  it("ends the root turn with BudgetExhausted mid-tree, with per-agent spend", function()
    tide.agent { id = "leaf", prompt = "Agent leaf." }
    tide.agent { id = "branch", prompt = "Agent branch.", subagents = { "leaf" } }
    tide.agent { id = "trunk", prompt = "Agent trunk.", subagents = { "branch" } }
    srv.default = scripted {
      trunk = { call = function() return { { name = "delegate_branch", arguments = { task = "t" } } } end },
      branch = { call = function() return { { name = "delegate_leaf", arguments = { task = "t" } } } end },
      leaf = { call = function() return { { name = "delegate_nothing", arguments = {} } } end },
    }
    local s = tide.session { agent = "trunk", provider = provider, budget = { provider_calls = 4 } }
    local reply, err = s:turn("spend")
    assert.is_nil(reply)
    assert.are.equal("BudgetExhausted", err.code)
    assert.are.equal("provider_calls", err.what)
    assert.are.equal(4, #srv:requests())
    assert.matches("trunk: 1 provider calls", err.summary)
    assert.matches("trunk/branch: 1 provider calls", err.summary)
    assert.matches("trunk/branch/leaf: 2 provider calls", err.summary)
    local st = s:stats()
    assert.are.equal(2, st.budget.agents["trunk/branch/leaf"].provider_calls)
    assert.is_number(st.budget.agents["trunk/branch/leaf"].input_tokens)
    -- the session stays usable with a fresh budget for the next turn
    srv.default = "fresh"
    assert.are.equal("fresh", (s:turn("again")))
  end)

  it("ends the tree on a token budget and on a wall-time budget", function()
    tide.agent { id = "spender", prompt = "Agent spender.", tools = { tide.tool { name = "wait", description = "w",
      handler = function() tide.sleep(100000) end } } }
    srv.default = { text = "big", usage = { input = 600, output = 500 } }
    local s = tide.session { agent = "spender", provider = provider, budget = { tokens = 1000 } }
    local reply, err = s:turn("spend tokens")
    assert.is_nil(reply)
    assert.are.equal("BudgetExhausted", err.code)
    assert.are.equal("tokens", err.what)
    srv.default = { tool_calls = { { name = "wait", arguments = {} } } }
    local s2 = tide.session { agent = "spender", provider = provider, budget = { wall_ms = 40 } }
    local r2, e2 = s2:turn("wait forever")
    assert.is_nil(r2)
    assert.are.equal("BudgetExhausted", e2.code)
    assert.are.equal("wall_ms", e2.what)
  end)

  it("cancels a three-level tree: no running task and no open request remain", function()
    local started = 0
    local hang = tide.tool { name = "hang", description = "h", handler = function()
      started = started + 1
      tide.sleep(100000)
    end }
    tide.agent { id = "l3", prompt = "Agent l3.", tools = { hang } }
    tide.agent { id = "l2", prompt = "Agent l2.", subagents = { "l3" } }
    tide.agent { id = "l1", prompt = "Agent l1.", subagents = { "l2" } }
    srv.default = scripted {
      l1 = { call = function() return { { name = "delegate_l2", arguments = { task = "t" } } } end },
      l2 = { call = function() return { { name = "delegate_l3", arguments = { task = "t" } }, { name = "delegate_l3", arguments = { task = "u" } } } end },
      l3 = { call = function() return { { name = "hang", arguments = {} } } end },
    }
    local s = tide.session { agent = "l1", provider = provider }
    local reply, err = tide.run(function()
      local t = tide.spawn(function() return s:turn("go") end)
      wait_for(function() return started >= 2 end)
      assert.is_true(core.http_stats().active == 0)
      s:cancel()
      return t:join()
    end)
    assert.is_nil(reply)
    assert.are.equal("Cancelled", err.code)
    assert.are.equal(0, core.loop_stats().live_tasks)
    assert.are.equal(0, core.http_stats().active)
    -- and with a request in flight at the bottom of the tree
    srv.default = function(req)
      if agent_of(req) == "l3" then return { fault = "hang" } end
      return scripted {
        l1 = { call = function() return { { name = "delegate_l2", arguments = { task = "t" } } } end },
        l2 = { call = function() return { { name = "delegate_l3", arguments = { task = "t" } } } end },
      }(req)
    end
    local s2 = tide.session { agent = "l1", provider = provider }
    local r2, e2, open2 = tide.run(function()
      local t = tide.spawn(function() return s2:turn("again") end)
      wait_for(function() return requests_from(srv, "l3") >= 3 end)
      assert.are.equal(1, core.http_stats().active)
      s2:cancel()
      return t:join()
    end)
    assert.is_nil(r2)
    assert.are.equal("Cancelled", e2.code)
    assert.are.equal(0, core.http_stats().active)
  end)

  it("closes a sub-agent's transcript however its task ends: a timeout, a cancel, a listener that raises", function()
    -- the files this process holds open under dir
    local pid = io.open("/proc/self/stat"):read("l"):match("^(%d+)")
    local function open_in_dir()
      local n = 0
      for line in io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null"):lines() do
        if line:find(dir, 1, true) then n = n + 1 end
      end
      return n
    end
    tide.agent { id = "slow", prompt = "Agent slow." }
    tide.agent { id = "boss", prompt = "Agent boss.", subagents = { "slow" } }
    srv.default = function(req)
      if agent_of(req) == "slow" then return { fault = "hang" } end
      return scripted { boss = { call = function() return { { name = "delegate_slow", arguments = { task = "t" } } } end } }(req)
    end
    collectgarbage("stop") -- (a handle left open would otherwise be closed by the collector)
    local s = tide.session { agent = "boss", provider = provider, transcript = dir .. "/boss.jsonl",
      tool_timeout_ms = 200 }
    -- (counted inside the run: a run's end collects what it left)
    local reply, err, open = tide.run(function()
      local r, e = s:turn("go")
      return r, e, open_in_dir()
    end)
    assert.is_nil(err)
    assert.matches("timed out", reply)
    assert.are.equal(1, open) -- the root's own, still open
    s:close()
    local s2 = tide.session { agent = "boss", provider = provider, transcript = dir .. "/boss2.jsonl" }
    local r2, e2, open2 = tide.run(function()
      local t = tide.spawn(function() return s2:turn("again") end)
      wait_for(function() return requests_from(srv, "slow") >= 2 end)
      s2:cancel()
      local r, e = t:join()
      return r, e, open_in_dir()
    end)
    assert.is_nil(r2)
    assert.are.equal("Cancelled", e2.code)
    assert.are.equal(1, open2)
    s2:close()
    assert.are.equal(0, open_in_dir())
    -- a listener that raises while the sub-agent's task runs
    srv.default = function(req)
      if agent_of(req) == "slow" then return "slow done" end
      return scripted { boss = { call = function() return { { name = "delegate_slow", arguments = { task = "t" } } } end } }(req)
    end
    local s3 = tide.session { agent = "boss", provider = provider, transcript = dir .. "/boss3.jsonl" }
    local r3, e3, open3 = tide.run(function()
      local r, e = s3:turn("once more", { on_event = function(ev)
        if ev.type == "subagent_end" then error("the listener broke") end
      end })
      return r, e, open_in_dir()
    end)
    -- the whole tree stops, as for a listener raising in the root's turn
    assert.is_nil(r3)
    assert.are.equal("TurnFailed", e3.code)
    assert.is_true(e3.listener)
    assert.matches("the listener broke", e3.message)
    assert.are.equal(1, open3)
    s3:close()
    collectgarbage("restart")
  end)

  it("stops the whole tree for a listener that raises at a sub-agent's own event, never telling the model", function()
    local lookup = tide.tool { name = "lookup", description = "l", handler = function() return "found" end }
    tide.agent { id = "worker", prompt = "Agent worker.", tools = { lookup } }
    tide.agent { id = "lead", prompt = "Agent lead.", subagents = { "worker" } }
    srv.default = scripted {
      lead = { call = function() return { { name = "delegate_worker", arguments = { task = "t" } } } end },
      worker = { call = function() return { { name = "lookup", arguments = {} } } end },
    }
    local s = tide.session { agent = "lead", provider = provider }
    local reply, err = s:turn("go", { on_event = function(ev)
      if ev.type == "tool_start" and ev.depth == 1 then error("no tools below the root, says the app") end
    end })
    assert.is_nil(reply)
    assert.are.equal("TurnFailed", err.code)
    assert.matches("no tools below the root, says the app", err.message)
    -- the delegation is answered (the history stays a valid conversation),
    -- with the turn's stop, not the application's words
    local h = s:history()
    local last = h[#h]
    assert.are.equal("tool", last.role)
    assert.are.equal("Error: the turn stopped (TurnFailed)", last.results[1].content)
    assert.are.equal(2, #srv:requests()) -- lead's, worker's first: nothing after the failure
    assert.matches("^lead done: ", s:turn("again")) -- and the session goes on from a valid history
  end)

  it("honours a per-agent spawn-depth limit", function()
    tide.agent { id = "leaf1", prompt = "Agent leaf1." }
    tide.agent { id = "shallow", prompt = "Agent shallow.", subagents = { "leaf1" }, max_spawn_depth = 0 }
    srv.default = scripted {
      shallow = { call = function() return { { name = "delegate_leaf1", arguments = { task = "t" } } } end },
    }
    local s = tide.session { agent = "shallow", provider = provider }
    local reply = s:turn("go")
    assert.matches("SpawnDepthExceeded", reply)
    assert.are.equal(0, requests_from(srv, "leaf1"))
  end)
end)
