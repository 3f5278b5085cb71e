local tide = require "tide"
local helpers = require "helpers"
local mock = require "tide.testing.composio"
local composio = require "tide.integrations.composio"

local integrations = tide.integrations
local cache = integrations.cache

local function find(snap, slug)
  for _, tk in ipairs(snap.toolkits) do
    if tk.slug == slug then return tk end
  end
end

local function names(list)
  local out = {}
  for i, t in ipairs(list) do out[i] = t.name end
  return out
end

local function reasons(list)
  local out = {}
  for _, t in ipairs(list) do out[t.name] = t.reason end
  return out
end

describe("composio integration source", function()
  local srv

  local function source(opts)
    opts = opts or {}
    opts.api_key = opts.api_key or "test-key"
    opts.base_url = opts.base_url or srv.url
    opts.user_id = opts.user_id or "u1"
    return integrations.composio(opts)
  end

  local function get(src) return helpers.run(function() return cache.get(src) end) end

  before_each(function()
    cache.invalidate_all()
    cache.reset_stats()
    srv = mock.server{ api_key = "test-key" }
  end)
  after_each(function()
    srv:close()
    helpers.assert_quiet()
  end)

  it("names its cache key after the endpoint and the user", function()
    local src = source()
    assert.are.equal("composio", src.kind)
    assert.are.equal("composio|" .. srv.url .. "|u1", src:identity())
    assert.are_not.equal(src:identity(), source{ user_id = "u2" }:identity())
    -- options that change the result are part of the identity
    assert.are_not.equal(src:identity(), source{ scopes = { admin = true } }:identity())
    assert.are_not.equal(src:identity(), source{ toolkits = { "github" } }:identity())
    assert.are.equal(source{ toolkits = { "a", "b" } }:identity(),
                     source{ toolkits = { "b", "a" } }:identity())
  end)

  it("marks ACTIVE and CONNECTED connections of this user as connected, and only those", function()
    local snap, err = get(source())
    assert.is_nil(err)
    local connected = {}
    for _, tk in ipairs(snap.toolkits) do connected[tk.slug] = tk.connected end
    assert.are.same({ git = true, github = true, gmail = false, notion = false, slack = false },
      connected)
    -- not connected: no tools were listed for them
    assert.are.same({}, find(snap, "gmail").tools)
    assert.are.same({}, find(snap, "slack").tools)
    assert.are.equal("Code hosting and issues", find(snap, "github").description)
    -- the user's EXPIRED connection does not count either
    srv:connect("notion", "u1", "EXPIRED")
    cache.invalidate_all()
    assert.is_false(find(get(source()), "notion").connected)
  end)

  it("files actions under the anchored SLUG_ prefix, so git never claims GITHUB_*", function()
    local snap = get(source())
    assert.are.same({ "GIT_COMMIT", "GIT_STATUS" }, names(find(snap, "git").tools))
    assert.are.same({}, find(snap, "git").gated_tools)
    local gh = find(snap, "github")
    for _, t in ipairs(gh.tools) do assert.matches("^GITHUB_", t.name) end
    assert.are.equal(5, #gh.tools + #gh.gated_tools)
    -- A backend that hands a GITHUB_ action to git (only git connected):
    -- the action is dropped, not claimed.
    srv:disconnect("github")
    srv.tools[#srv.tools + 1] = { slug = "GITHUB_LIST_ISSUES", toolkit = "git" }
    cache.invalidate_all()
    snap = get(source())
    assert.are.same({ "GIT_COMMIT", "GIT_STATUS" }, names(find(snap, "git").tools))
    assert.are.same({}, find(snap, "github").tools)
  end)

  it("gates actions by scope, with reasons, read/write on and admin off by default", function()
    local gh = find(get(source()), "github")
    assert.are.same({ "GITHUB_CREATE_ISSUE", "GITHUB_GET_REPO", "GITHUB_LIST_ISSUES" },
      names(gh.tools))
    -- GITHUB_ARCHIVE_REPO reads as "write" by name; its destructiveHint tag wins.
    assert.are.same({ GITHUB_ARCHIVE_REPO = "admin scope is off",
                      GITHUB_DELETE_REPO = "admin scope is off" }, reasons(gh.gated_tools))
    assert.are.same({ type = "object", properties = { repo = { type = "string" } }, required = {} },
      gh.tools[3].parameters)
    assert.are.equal("write", gh.tools[1].scope)

    local ro = find(get(source{ scopes = { write = false } }), "github")
    assert.are.same({ "GITHUB_GET_REPO", "GITHUB_LIST_ISSUES" }, names(ro.tools))
    assert.are.equal("write scope is off", reasons(ro.gated_tools).GITHUB_CREATE_ISSUE)

    local admin = find(get(source{ scopes = { admin = true } }), "github")
    assert.are.equal(5, #admin.tools)
    assert.are.same({}, admin.gated_tools)
  end)

  it("gates actions outside the curated catalogue", function()
    local src = source{ catalogue = { github = { "GITHUB_LIST_ISSUES", "GITHUB_DELETE_REPO" } } }
    local snap = get(src)
    local gh = find(snap, "github")
    assert.are.same({ "GITHUB_LIST_ISSUES" }, names(gh.tools))
    local why = reasons(gh.gated_tools)
    assert.are.equal("not in the curated catalogue", why.GITHUB_CREATE_ISSUE)
    assert.are.equal("not in the curated catalogue", why.GITHUB_GET_REPO)
    assert.are.equal("admin scope is off", why.GITHUB_DELETE_REPO)
    -- toolkits without a catalogue entry are not curated
    assert.are.equal(2, #find(snap, "git").tools)
  end)

  it("limits the toolkits to an allow-list", function()
    local snap = get(source{ toolkits = { "github", "gmail" } })
    local slugs = {}
    for i, tk in ipairs(snap.toolkits) do slugs[i] = tk.slug end
    assert.are.same({ "github", "gmail" }, slugs)
    local tools = srv:requests("tools")
    assert.are.equal(1, #tools)
    assert.are.equal("github", tools[1].query.toolkit_slug)
  end)

  it("makes one request per listing and ONE batched tool request", function()
    get(source())
    local log = srv:requests()
    local endpoints = {}
    for i, r in ipairs(log) do endpoints[i] = r.endpoint end
    assert.are.same({ "toolkits", "connected_accounts", "tools" }, endpoints)
    for _, r in ipairs(log) do
      assert.are.equal("GET", r.method)
      assert.are.equal("test-key", r.headers["x-api-key"])
    end
    assert.are.equal("u1", log[2].query.user_ids)
    assert.are.equal("git,github", log[3].query.toolkit_slug)
    assert.are.equal("latest", log[3].query.toolkit_versions)
    -- a second get is served from the cache: no request at all
    srv:clear()
    get(source())
    assert.are.same({}, srv:requests())
  end)

  it("skips the tool listing when nothing is connected", function()
    srv.connections = {}
    local snap = get(source())
    assert.are.equal(0, #srv:requests("tools"))
    for _, tk in ipairs(snap.toolkits) do assert.is_false(tk.connected) end
  end)

  it("follows next_cursor through every page and gets the same result", function()
    local whole = get(source())
    cache.invalidate_all()
    srv:clear()
    srv.page_size = 2
    local paged = get(source())
    assert.are_not.equal(whole, paged)
    assert.are.equal(whole.hash, paged.hash)
    local pages = srv:requests("tools")
    assert.are.equal(4, #pages) -- 7 git/github actions, 2 per page
    assert.is_nil(pages[1].query.cursor)
    assert.are.equal("c2", pages[2].query.cursor)
    assert.are.equal("c6", pages[4].query.cursor)
    for _, p in ipairs(pages) do assert.are.equal("git,github", p.query.toolkit_slug) end
    assert.are.equal(3, #srv:requests("toolkits"))
    assert.are.equal(2, #srv:requests("connected_accounts"))
  end)

  it("turns a backend 500 into IntegrationsUnavailable, never cached", function()
    srv.fail = true
    local src = source()
    local snap, err = get(src)
    assert.is_nil(snap)
    assert.are.equal("IntegrationsUnavailable", err.code)
    assert.are.equal(500, err.cause.status)
    assert.is_nil(cache.peek(src))
    -- only the batched tool listing fails: still unavailable, still not cached
    srv.fail = "tools"
    snap, err = get(src)
    assert.is_nil(snap)
    assert.matches("/tools", err.cause.message)
    assert.is_nil(cache.peek(src))
    srv.fail = nil
    snap = get(src)
    assert.is_true(find(snap, "github").connected)
    assert.are.equal(snap, cache.peek(src))
    assert.are.equal(3, cache.stats().fetches)
  end)

  it("reports a wrong key, malformed JSON and a dead endpoint as unavailable", function()
    local _, err = get(source{ api_key = "wrong" })
    assert.are.equal("IntegrationsUnavailable", err.code)
    assert.are.equal(401, err.cause.status)
    srv.fail = function(_, endpoint)
      if endpoint == "connected_accounts" then
        return { status = 200, headers = { ["content-type"] = "application/json" },
                 body = "{not json" }
      end
    end
    _, err = get(source())
    assert.are.equal("MalformedResponse", err.cause.code)
    srv.fail = nil
    local port = srv.port
    srv:close()
    _, err = get(source{ base_url = ("http://127.0.0.1:%d/api/v3"):format(port) })
    assert.are.equal("IntegrationsUnavailable", err.code)
    assert.are.equal("HttpFailed", err.cause.code)
  end)

  it("shares one fetch among concurrent cold gets", function()
    local src = source()
    local snaps = helpers.run(function()
      local tasks, out = {}, {}
      for i = 1, 20 do tasks[i] = tide.spawn(function() return cache.get(src) end) end
      for i = 1, 20 do out[i] = assert(tasks[i]:join()) end
      return out
    end)
    for i = 2, 20 do assert.are.equal(snaps[1], snaps[i]) end
    assert.are.equal(3, #srv:requests())
  end)

  it("picks up a new connection after invalidation", function()
    local src = source()
    local before = get(src)
    srv:connect("gmail")
    assert.are.equal(before, get(src)) -- cached until someone invalidates
    cache.invalidate(src)
    local after = get(src)
    assert.is_true(find(after, "gmail").connected)
    assert.are.same({ "GMAIL_SEND_EMAIL" }, names(find(after, "gmail").tools))
    assert.are_not.equal(before.hash, after.hash)
  end)

  it("classifies actions by tags first, then by whole words of the name", function()
    assert.are.equal("admin", composio.classify("GITHUB_DELETE_REPO", nil, "GITHUB_"))
    assert.are.equal("write", composio.classify("GMAIL_SEND_EMAIL"))
    assert.are.equal("read", composio.classify("GITHUB_LIST_ADDRESSES")) -- not ADD
    assert.are.equal("read", composio.classify("SLACK_FETCH_HISTORY"))
    assert.are.equal("admin", composio.classify("X_REMOVE_AND_CREATE"))
    assert.are.equal("read", composio.classify("GITHUB_CREATE_X", { "readOnlyHint" }))
    assert.are.equal("admin", composio.classify("GITHUB_GET_X", { "readOnlyHint", "destructiveHint" }))
    -- the toolkit's own name never classifies: a toolkit called "delete"
    assert.are.equal("read", composio.classify("DELETE_LIST_ITEMS", nil, "DELETE_"))
  end)

  it("raises on misuse", function()
    assert.has_error(function() integrations.composio{ api_key = "k" } end)
    assert.has_error(function() integrations.composio{ api_key = "k", user_id = "u", base_url = "ftp://x" } end)
    assert.has_error(function() integrations.composio{ api_key = "k", user_id = "u", scopes = { root = true } } end)
    assert.has_error(function() integrations.composio{ api_key = "k", user_id = "u", toolkits = "github" } end)
  end)
end)

describe("composio execute", function()
  local testing_composio = require "tide.testing.composio"
  local tide = require "tide"
  it("runs an action for the user through POST /tools/execute/{slug}", function()
    local fx = testing_composio.fixture()
    fx.api_key = "key-1"
    local srv = testing_composio.server(fx)
    srv.execute = function(slug, args, user) return { slug = slug, q = args.q, user = user } end
    local src = tide.integrations.composio { api_key = "key-1", base_url = srv.url, user_id = "u1" }
    local toolkits = assert(src:fetch())
    local action
    for _, tk in ipairs(toolkits) do
      if tk.connected and #tk.tools > 0 then action = tk.tools[1].name break end
    end
    assert.is_string(action)
    local data = tide.run(function() return src:execute(action, { q = "x" }) end)
    assert.are.same({ slug = action, q = "x", user = "u1" }, data)
    local r, err = tide.run(function() return src:execute("NOPE_NOTHING", {}) end)
    assert.is_nil(r)
    assert.are.equal("ToolError", err.code)
    srv:close()
  end)
end)
