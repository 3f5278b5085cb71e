local tide = require "tide"
local json = require "tide.json"
local helpers = require "helpers"

local integrations = tide.integrations
local cache = integrations.cache

local function github(connected)
  return { slug = "github", description = "Code hosting", connected = connected,
           tools = { { name = "GITHUB_LIST_ISSUES", description = "List issues",
                       parameters = { type = "object", properties = { repo = { type = "string" } } } } },
           gated_tools = { { name = "GITHUB_DELETE_REPO", description = "Delete",
                             reason = "admin scope is off" } } }
end

local function connected_slugs(snap)
  local out = {}
  for _, tk in ipairs(snap.toolkits) do
    if tk.connected then out[#out + 1] = tk.slug end
  end
  return out
end

describe("static integration sources", function()
  before_each(function()
    cache.invalidate_all()
    cache.reset_stats()
  end)
  after_each(function() helpers.assert_quiet() end)

  it("is reachable through the tide facade", function()
    assert.are.equal(require("tide.integrations"), tide.integrations)
    assert.are.equal(require("tide.integrations.cache"), tide.integrations.cache)
    assert.is_true(integrations.is_source(integrations.static{ toolkits = {} }))
    assert.is_false(integrations.is_source({}))
  end)

  it("normalises toolkits: sorted by slug, arrays always present", function()
    local src = integrations.static{ id = "norm", toolkits = {
      { slug = "slack", connected = true },
      github(true),
      { slug = "asana", description = "Tasks", connected = false,
        tools = { { name = "ASANA_LIST_TASKS" } } },
    } }
    local snap = helpers.run(function() return cache.get(src) end)
    local slugs = {}
    for i, tk in ipairs(snap.toolkits) do
      slugs[i] = tk.slug
      assert.are.equal("table", type(tk.tools))
      assert.are.equal("table", type(tk.gated_tools))
      assert.are.equal("string", type(tk.description))
    end
    assert.are.same({ "asana", "github", "slack" }, slugs)
    local slack = snap.toolkits[3]
    assert.are.equal('{"connected":true,"description":"","gated_tools":[],"slug":"slack","tools":[]}',
      json.canonical(slack))
    local tool = snap.toolkits[1].tools[1]
    assert.are.same({ type = "object", properties = {} }, tool.parameters)
    assert.are.equal("", tool.description)
    assert.are.equal("admin scope is off", snap.toolkits[2].gated_tools[1].reason)
  end)

  it("keeps the connected flag so that callers can skip disconnected toolkits", function()
    local src = integrations.static{ id = "flags", toolkits = {
      github(true), { slug = "gmail", connected = false }, { slug = "notion" } } }
    local snap = helpers.run(function() return cache.get(src) end)
    assert.are.same({ "github", "notion" }, connected_slugs(snap))
    assert.is_false(snap.toolkits[2].connected)
  end)

  it("does not invalidate on set(): the caller invalidates, then sees the change", function()
    local src = integrations.static{ toolkits = { github(true) } }
    local id = src:identity()
    assert.matches("^static|%x+$", id)
    local before = helpers.run(function() return cache.get(src) end)
    src:set({ github(true), { slug = "gmail", connected = true } }) -- "connect gmail"
    assert.are.equal(id, src:identity())
    local still = helpers.run(function() return cache.get(src) end)
    assert.are.equal(before, still)
    assert.are.same({ "github" }, connected_slugs(still))
    cache.invalidate(src)
    local after = helpers.run(function() return cache.get(src) end)
    assert.are.same({ "github", "gmail" }, connected_slugs(after))
    assert.are_not.equal(before.hash, after.hash)
    assert.are.equal(2, src.fetches)
    -- disconnect: connected = false changes the hash again
    src:set({ github(false), { slug = "gmail", connected = true } })
    cache.invalidate(src)
    local later = helpers.run(function() return cache.get(src) end)
    assert.are.same({ "gmail" }, connected_slugs(later))
    assert.are_not.equal(after.hash, later.hash)
  end)

  it("snapshots do not change when the source's tables change later", function()
    local tks = { github(true) }
    local src = integrations.static{ id = "copy", toolkits = tks }
    local snap = helpers.run(function() return cache.get(src) end)
    tks[1].tools[1].name = "MUTATED"
    tks[1].tools[1].parameters.properties.repo.type = "integer"
    assert.are.equal("GITHUB_LIST_ISSUES", snap.toolkits[1].tools[1].name)
    assert.are.equal("string", snap.toolkits[1].tools[1].parameters.properties.repo.type)
  end)

  it("gives equal identities to equal toolkits and distinct ones otherwise", function()
    local a = integrations.static{ toolkits = { github(true) } }
    local b = integrations.static{ toolkits = { github(true) } }
    local c = integrations.static{ toolkits = { github(false) } }
    assert.are.equal(a:identity(), b:identity())
    assert.are_not.equal(a:identity(), c:identity())
    assert.are.equal("static|mine", integrations.static{ id = "mine", toolkits = {} }:identity())
    -- equal identities share one snapshot
    local sa, sb = helpers.run(function() return cache.get(a), cache.get(b) end)
    assert.are.equal(sa, sb)
    assert.are.same({ 1, 0 }, { a.fetches, b.fetches })
  end)

  it("fails as configured, with the error as the cause", function()
    local custom = tide.error("Boom", "custom failure")
    local src = integrations.static{ id = "fails", toolkits = {}, fail = custom }
    local snap, err = helpers.run(function() return cache.get(src) end)
    assert.is_nil(snap)
    assert.are.equal("IntegrationsUnavailable", err.code)
    assert.are.equal(custom, err.cause)
    src.fail = true
    _, err = helpers.run(function() return cache.get(src) end)
    assert.matches("configured to fail", err.cause.message)
  end)

  it("rejects bad definitions when the source is built", function()
    assert.has_error(function() integrations.static("x") end)
    assert.has_error(function() integrations.static{ toolkits = { { description = "no slug" } } } end,
      "bad argument #1 to 'static' (toolkits[1].slug must be a non-empty string)")
    assert.has_error(function()
      integrations.static{ toolkits = { { slug = "a" }, { slug = "a" } } }
    end, "bad argument #1 to 'static' (duplicate toolkit slug 'a')")
    assert.has_error(function()
      integrations.static{ toolkits = { { slug = "a", tools = { { description = "nameless" } } } } }
    end)
    assert.has_error(function()
      integrations.static{ toolkits = { { slug = "a", connected = "yes" } } }
    end)
    assert.has_error(function() integrations.static{ toolkits = {}, delay_ms = -1 } end)
    local src = integrations.static{ toolkits = {} }
    assert.has_error(function() src:set({ { slug = 1 } }) end)
    -- a misspelt key would drop what it meant without a word: each is named
    assert.has_error(function() integrations.static{ toolkits = { { slug = "a", descripton = "x" } } } end,
      "bad argument #1 to 'static' (toolkit 'a': unknown key 'descripton')")
    assert.has_error(function() integrations.static{ toolkits = { { slug = "a", gated_tool = {} } } } end,
      "bad argument #1 to 'static' (toolkit 'a': unknown key 'gated_tool')")
    assert.has_error(function()
      integrations.static{ toolkits = { { slug = "a", tools = { { name = "t", handlr = print } } } } }
    end, "bad argument #1 to 'static' (toolkit 'a': tools[1]: unknown key 'handlr')")
    assert.has_error(function()
      integrations.static{ toolkits = { { slug = "a", gated_tools = { { name = "g", reasn = "later" } } } } }
    end, "bad argument #1 to 'static' (toolkit 'a': gated_tools[1]: unknown key 'reasn')")
    assert.has_error(function() src:set({ { slug = "a", conected = false } }) end,
      "bad argument #1 to 'static' (toolkit 'a': unknown key 'conected')")
    -- every key the source knows is accepted
    integrations.static{ toolkits = { { slug = "a", name = "A", description = "d", connected = true,
      tools = { { name = "t", description = "d", parameters = { type = "object" }, scope = "read",
                  destructive = false, output_schema = { type = "object" }, handler = print } },
      gated_tools = { { name = "g", description = "d", reason = "r", scope = "write" } } } } }
  end)

  it("accepts a source written in Lua by an author", function()
    local calls = 0
    local src = {
      kind = "mine",
      identity = function() return "mine|endpoint|user" end,
      fetch = function()
        calls = calls + 1
        tide.sleep(2) -- a fetch may wait
        return { { slug = "zendesk", connected = true, tools = { { name = "ZENDESK_LIST" } } },
                 { slug = "airtable", connected = true } }
      end,
    }
    local a, b = helpers.run(function()
      local t = tide.spawn(function() return cache.get(src) end)
      return cache.get(src), t:join()
    end)
    assert.are.equal(a, b)
    assert.are.equal(1, calls)
    assert.are.equal("mine|endpoint|user", a.key)
    assert.are.same({ "airtable", "zendesk" }, connected_slugs(a))
  end)
end)
