-- Sessions built warm: prewarm from the shared integration cache, the cold
-- fallback, delegation tools, the config snapshot and mid-session refresh.
local tide = require "tide"
local testing = require "tide.testing"
local cache = require "tide.integrations.cache"
local helpers = require "helpers"

local function toolkit(slug, connected, extra)
  local tk = {
    slug = slug, description = slug .. " toolkit", connected = connected,
    tools = { { name = slug:upper() .. "_LIST", description = "list " .. slug,
      parameters = { type = "object", properties = {} } } },
    gated_tools = { { name = slug:upper() .. "_DELETE", description = "delete", reason = "admin scope is off" } },
  }
  for k, v in pairs(extra or {}) do tk[k] = v end
  return tk
end

local function tool_names(req)
  local out = {}
  for _, t in ipairs(req.json.tools or {}) do out[#out + 1] = t["function"].name end
  table.sort(out)
  return out
end

local lookup = tide.tool { name = "lookup", description = "look up", handler = function() return "x" end }

describe("sessions built warm", function()
  local srv, provider, src

  before_each(function()
    cache.invalidate_all()
    cache.reset_stats()
    srv = testing.mock_server { default = "hello" }
    provider = tide.provider.openai { base_url = srv.url .. "/v1", api_key = "k", model = "m", stream = false }
    src = tide.integrations.static {
      id = "spec-" .. tostring(math.random(1e9)),
      toolkits = { toolkit("github", true), toolkit("slack", true), toolkit("notion", false) },
    }
    tide.agent { id = "researcher", prompt = "You research.", when_to_use = "Research a topic." }
    tide.agent { id = "orchestrator", prompt = "orchestrator", tools = { lookup },
      subagents = { "researcher", { toolkits = "*" }, "ghost" } }
  end)

  after_each(function()
    srv:close()
    cache.ttl_ms(60000)
    helpers.assert_quiet()
  end)

  it("prewarms from a warm cache: no fetch and no rebuild on turn 1, delegates in the very first request", function()
    assert.is_table(cache.get(src)) -- warm it
    assert.are.equal(1, src.fetches)
    local s = tide.session { agent = "orchestrator", provider = provider, integrations = src }
    local st = s:stats()
    assert.is_true(st.prewarmed)
    assert.is_true(st.initialized)
    assert.is_string(st.integration_hash)
    assert.are.same({ "delegate_github", "delegate_researcher", "delegate_slack", "lookup" },
      (function() local t = s:tools(); table.sort(t); return t end)())
    assert.are.equal("hello", (s:turn("hi")))
    st = s:stats()
    assert.are.equal(0, st.integration_fetches)
    assert.are.equal(0, st.delegation_rebuilds)
    assert.are.equal(1, src.fetches)
    assert.are.same({ "delegate_github", "delegate_researcher", "delegate_slack", "lookup" },
      tool_names(srv:requests()[1]))
    -- the frozen prompt carries the delegation guide and the gated catalogue
    local sys = s:system_prompt()
    assert.matches("delegate_github", sys)
    assert.matches("GITHUB_DELETE", sys)
    assert.matches("admin scope is off", sys)
    assert.is_nil(sys:find("NOTION", 1, true)) -- not connected: not rendered
    -- the trace of turn 1 shows no fetch before the first request
    for _, step in ipairs(st.trace) do assert.are_not.equal("integrations_fetch", step.step) end
  end)

  it("falls back cold: exactly one fetch, one rebuild, and the same first request as the warm path", function()
    local cold = tide.session { agent = "orchestrator", provider = provider, integrations = src }
    assert.is_false(cold:stats().prewarmed)
    assert.is_false(cold:stats().initialized)
    -- before turn 1 only the named delegate exists
    assert.are.same({ "lookup", "delegate_researcher" }, cold:tools())
    cold:turn("hi")
    local st = cold:stats()
    assert.are.equal(1, st.integration_fetches)
    assert.are.equal(1, st.delegation_rebuilds)
    assert.are.equal("authoritative", st.integrations)
    assert.are.equal("integrations_fetch", st.trace[1].step)
    assert.is_number(st.trace[1].ms)
    -- now warm: a second session goes the fast path and sends the same bytes
    local warm = tide.session { agent = "orchestrator", provider = provider, integrations = src }
    assert.is_true(warm:stats().prewarmed)
    warm:turn("hi")
    local reqs = srv:requests()
    assert.are.equal(reqs[1].body, reqs[2].body)
    assert.are.equal(1, src.fetches)
  end)

  it("shares one fetch among 100 concurrent cold sessions on one key", function()
    local slow = tide.integrations.static { id = "slow-" .. tostring(math.random(1e9)), delay_ms = 20,
      toolkits = { toolkit("github", true) } }
    local replies = tide.run(function()
      local tasks = {}
      for i = 1, 100 do
        tasks[i] = tide.spawn(function()
          local s = tide.session { agent = "orchestrator", provider = provider, integrations = slow }
          local r = s:turn("hi " .. i)
          return r, s:stats().integration_fetches, s.snapshot
        end)
      end
      local out = {}
      for i = 1, 100 do out[i] = table.pack(tasks[i]:join()) end
      return out
    end)
    assert.are.equal(1, slow.fetches)
    local first_snapshot = replies[1][3]
    for i = 1, 100 do
      assert.are.equal("hello", replies[i][1])
      assert.are.equal(1, replies[i][2])
      assert.are.equal(first_snapshot, replies[i][3]) -- one shared table, not copies
    end
  end)

  it("runs with no toolkits when the source is unavailable, never caches the failure, and retries", function()
    local flaky = tide.integrations.static { id = "flaky-" .. tostring(math.random(1e9)), fail = true,
      toolkits = { toolkit("github", true) } }
    local s = tide.session { agent = "orchestrator", provider = provider, integrations = flaky }
    assert.are.equal("hello", (s:turn("hi")))
    local st = s:stats()
    assert.are.equal("unavailable", st.integrations)
    assert.matches("IntegrationsUnavailable", st.integrations_error)
    assert.are.same({ "lookup", "delegate_researcher" }, s:tools())
    assert.is_nil(cache.peek(flaky))
    flaky.fail = nil
    local s2 = tide.session { agent = "orchestrator", provider = provider, integrations = flaky }
    s2:turn("hi")
    assert.are.equal("authoritative", s2:stats().integrations)
    assert.are.equal(2, flaky.fetches)
  end)

  it("expires cached snapshots after the TTL", function()
    cache.ttl_ms(30)
    cache.get(src)
    assert.is_true(tide.session { agent = "orchestrator", provider = provider, integrations = src }:stats().prewarmed)
    tide.sleep(60)
    assert.is_false(tide.session { agent = "orchestrator", provider = provider, integrations = src }:stats().prewarmed)
  end)

  it("keeps a direct tool named like a synthesised delegate through every refresh", function()
    local direct = tide.tool { name = "delegate_github", description = "my own github tool",
      handler = function() return "direct" end }
    tide.agent { id = "clash", prompt = "Clash test.", tools = { direct }, subagents = { { toolkits = "*" } } }
    local s = tide.session { agent = "clash", provider = provider, integrations = src }
    s:turn("hi")
    local function find(name)
      for _, t in ipairs(s.surface.tools) do if t.name == name then return t end end
    end
    assert.are.equal(direct, find("delegate_github"))
    assert.is_nil(s.surface.synthesized["delegate_github"])
    -- a refresh that removes github keeps the direct tool
    src:set { toolkit("slack", true) }
    cache.invalidate(src)
    cache.get(src)
    s:turn("again")
    assert.are.equal(direct, find("delegate_github"))
    assert.is_truthy(find("delegate_slack"))
    -- one rebuild at the cold turn 1, one for the refresh
    assert.are.equal(2, s:stats().delegation_rebuilds)
  end)

  it("refreshes delegation tools mid-session at the next turn boundary without touching the prompt", function()
    cache.get(src)
    local s = tide.session { agent = "orchestrator", provider = provider, integrations = src }
    s:turn("one")
    local prompt = s:system_prompt()
    local hash = s:stats().integration_hash
    -- the user connects notion: the cache gets a new snapshot
    src:set { toolkit("github", true), toolkit("slack", true), toolkit("notion", true) }
    cache.invalidate(src)
    cache.get(src)
    s:turn("two")
    local st = s:stats()
    assert.are_not.equal(hash, st.integration_hash)
    assert.are.equal(1, st.delegation_rebuilds)
    assert.are.equal(0, st.integration_fetches)
    assert.are.equal(prompt, s:system_prompt())
    local reqs = srv:requests()
    assert.are.same({ "delegate_github", "delegate_notion", "delegate_researcher", "delegate_slack", "lookup" },
      tool_names(reqs[2]))
    assert.are.equal(prompt, reqs[2].json.messages[1].content)
    assert.is_true(st.prompt_bytes_reencoded > 0) -- the tool surface changed, so the prefix did
  end)

  it("captures config at build and never loads it on the turn path", function()
    local dir = helpers.tmpdir()
    helpers.write(dir .. "/cfg.lua", "return { max_iterations = 3, tool_timeout_ms = 500 }")
    local s = tide.session { agent = "orchestrator", provider = provider, config = dir .. "/cfg.lua" }
    assert.are.equal(1, s:stats().config_loads)
    assert.are.equal(3, s.max_iterations)
    helpers.write(dir .. "/cfg.lua", "return { max_iterations = 9 }")
    for i = 1, 3 do s:turn("turn " .. i) end
    assert.are.equal(1, s:stats().config_loads)
    assert.are.equal(3, s.max_iterations)
    local c = tide.config { max_iterations = 4 }
    local s2 = tide.session { agent = "orchestrator", provider = provider, config = c }
    s2:turn("x")
    assert.are.equal(0, s2:stats().config_loads)
    assert.are.equal(4, s2.max_iterations)
    helpers.rmdir(dir)
    -- a config file that cannot be loaded is a runtime failure: nil, err
    local s3, err = tide.session { agent = "orchestrator", provider = provider, config = "/nonexistent.lua" }
    assert.is_nil(s3)
    assert.are.equal("ConfigError", err.code)
  end)

  it("skips unknown sub-agent ids with a warning, not an error", function()
    local s = tide.session { agent = "orchestrator", provider = provider }
    assert.are.equal("hello", (s:turn("hi")))
    assert.is_nil(s.surface.map["delegate_ghost"])
  end)
end)
