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
    -- Short backoff: the specs test how often a listing is tried, not how long it waits.
    opts.retry = opts.retry or { base_ms = 1, max_ms = 5 }
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

  it("names its cache key after the endpoint, the user and the project", function()
    local src = source()
    assert.are.equal("composio", src.kind)
    assert.matches("^composio|" .. srv.url:gsub("%p", "%%%0") .. "|u1|%x+$", src:identity())
    -- another project's key (another Composio project) is another snapshot; the key itself is not in it
    assert.are_not.equal(src:identity(), source{ api_key = "another-project-key" }:identity())
    assert.is_nil(src:identity():find(src.api_key, 1, true))
    -- the host, as the SDKs read COMPOSIO_BASE_URL; /api/v3 is not doubled
    assert.are.equal(src:identity(), source{ base_url = srv.api_url .. "/" }:identity())
    assert.are_not.equal(src:identity(), source{ user_id = "u2" }:identity())
    -- options that change the result are part of the identity
    assert.are_not.equal(src:identity(), source{ scopes = { admin = true } }:identity())
    assert.are_not.equal(src:identity(), source{ toolkits = { "github" } }:identity())
    assert.are.equal(source{ toolkits = { "a", "b" } }:identity(),
                     source{ toolkits = { "b", "a" } }:identity())
  end)

  it("lists only this user's ACTIVE connections' toolkits, never the catalogue", function()
    local snap, err = get(source())
    assert.is_nil(err)
    local connected = {}
    for _, tk in ipairs(snap.toolkits) do connected[tk.slug] = tk.connected end
    assert.are.same({ git = true, github = true }, connected)
    assert.are.equal("Code hosting and issues", find(snap, "github").description)
    assert.are.equal(0, #srv:requests("toolkits") - 2) -- /toolkits/git and /toolkits/github only
    for _, r in ipairs(srv:requests("toolkits")) do assert.matches("^/api/v3/toolkits/git", r.path) end
    assert.are.equal("ACTIVE", srv:requests("connected_accounts")[1].query.statuses)
    -- the user's EXPIRED connection does not count either
    srv:connect("notion", "u1", "EXPIRED")
    cache.invalidate_all()
    assert.is_nil(find(get(source()), "notion"))
    -- an allow-listed toolkit that is not connected is there, not connected
    local gm = find(get(source{ toolkits = { "gmail", "github" } }), "gmail")
    assert.is_false(gm.connected)
    assert.are.same({}, gm.tools)
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
    assert.is_nil(find(snap, "github"))
  end)

  it("gates actions by scope, with reasons, read/write on and admin off by default", function()
    local gh = find(get(source()), "github")
    assert.are.same({ "GITHUB_CREATE_ISSUE", "GITHUB_GET_REPO", "GITHUB_LIST_ISSUES" },
      names(gh.tools))
    -- GITHUB_ARCHIVE_REPO reads as "write" by name; its destructiveHint tag wins.
    assert.are.same({ GITHUB_ARCHIVE_REPO = "admin scope is off",
                      GITHUB_DELETE_REPO = "admin scope is off" }, reasons(gh.gated_tools))
    assert.are.same({ type = "object", title = "Request", properties = { repo = { type = "string" } },
                      required = {} },
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

  it("asks for connections, the connected toolkits and ONE batched tool listing", function()
    get(source())
    local log = srv:requests()
    local endpoints = {}
    for i, r in ipairs(log) do endpoints[i] = r.path end
    assert.are.same({ "/api/v3/connected_accounts", "/api/v3/toolkits/git", "/api/v3/toolkits/github",
      "/api/v3/tools" }, endpoints)
    for _, r in ipairs(log) do
      assert.are.equal("GET", r.method)
      assert.are.equal("test-key", r.headers["x-api-key"])
    end
    assert.are.equal("u1", log[1].query.user_ids)
    assert.are.equal("git,github", log[4].query.toolkit_slug)
    assert.are.equal("latest", log[4].query.toolkit_versions)
    assert.are.equal("true", log[4].query.important)
    assert.are.equal("false", log[4].query.include_deprecated)
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
    assert.are.equal(2, #srv:requests("toolkits")) -- one per connected toolkit, never paged
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
    assert.are.equal(4, #srv:requests())
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

describe("composio as the real API answers", function()
  local surface = require "tide.surface"
  local prompts = require "tide.prompts"
  local srv

  local function source(opts)
    opts = opts or {}
    opts.api_key = opts.api_key or "test-key"
    opts.base_url = opts.base_url or srv.url
    opts.user_id = opts.user_id or "u1"
    opts.retry = opts.retry or { base_ms = 1, max_ms = 5 }
    return integrations.composio(opts)
  end
  local function get(src) return helpers.run(function() return cache.get(src) end) end
  local function run(fn) return helpers.run(fn) end

  before_each(function()
    cache.invalidate_all()
    srv = mock.server{ api_key = "test-key" }
  end)
  after_each(function()
    srv:close()
    helpers.assert_quiet()
  end)

  it("reads base_url as the host, with or without /api/v3, as the SDKs do", function()
    for _, base in ipairs { srv.url, srv.url .. "/", srv.api_url, srv.api_url .. "/" } do
      cache.invalidate_all()
      srv:clear()
      local snap, err = get(source{ base_url = base })
      assert.is_nil(err)
      assert.is_true(find(snap, "github").connected)
      for _, r in ipairs(srv:requests()) do assert.matches("^/api/v3/[a-z_]+", r.path) end
    end
    local old = os.getenv("COMPOSIO_BASE_URL")
    assert.is_nil(old) -- the environment of `./dev test` leaves it unset
    assert.are.equal("https://backend.composio.dev/api/v3",
      integrations.composio{ api_key = "k", user_id = "u" }.api_url)
  end)

  it("lists the important subset by default, all with important = false, never a deprecated tool", function()
    local gh = find(get(source()), "github")
    local all = {}
    for _, t in ipairs(gh.tools) do all[t.name] = true end
    for _, t in ipairs(gh.gated_tools) do all[t.name] = true end
    assert.is_nil(all.GITHUB_LIST_STARGAZERS) -- not important
    assert.is_nil(all.GITHUB_GET_OLD_REPO) -- deprecated
    gh = find(get(source{ important = false }), "github")
    assert.are.equal("GITHUB_LIST_STARGAZERS", names(gh.tools)[4])
    assert.is_nil(srv:requests("tools")[2].query.important)
    -- a server that sends deprecated tools anyway (include_deprecated ignored)
    srv.fail = function(_, endpoint, query)
      if endpoint == "tools" then query.include_deprecated = "true" end
    end
    cache.invalidate_all()
    gh = find(get(source{ important = false }), "github")
    for _, t in ipairs(gh.tools) do assert.are_not.equal("GITHUB_GET_OLD_REPO", t.name) end
  end)

  it("retries a listing through a 429 storm, honouring Retry-After, then succeeds", function()
    srv:rate_limit(2, "0")
    local snap, err = get(source())
    assert.is_nil(err)
    assert.is_true(find(snap, "github").connected)
    assert.are.equal(3, #srv:requests("connected_accounts")) -- 2 refused, 1 answered
    -- Retry-After is waited for: 1 s before the one retry
    cache.invalidate_all()
    srv:rate_limit(1, "1")
    local t0 = os.time()
    assert.is_table(get(source()))
    assert.is_true(os.time() - t0 >= 1)
    -- a storm longer than the attempts: unavailable, with Composio's message, not cached
    cache.invalidate_all()
    srv:rate_limit(10, "0")
    local src = source()
    snap, err = get(src)
    assert.is_nil(snap)
    assert.are.equal("IntegrationsUnavailable", err.code)
    assert.are.equal(429, err.cause.status)
    assert.matches("Rate limit exceeded %(suggested fix: Retry after", err.cause.message)
    assert.is_nil(cache.peek(src))
    assert.are.equal(7, srv.storm.left) -- three attempts, no more
  end)

  it("retries a 5xx but not a 401; the 401 is unavailable, not cached, and names no key", function()
    local n = 0
    srv.fail = function(_, endpoint)
      if endpoint == "tools" then n = n + 1; if n < 3 then return 503 end end
    end
    assert.is_table(get(source()))
    assert.are.equal(3, n)
    srv.fail = nil
    srv:clear()
    cache.invalidate_all()
    local src = source{ api_key = "ck-wrong-SECRET-24680" }
    local snap, err = get(src)
    assert.is_nil(snap)
    assert.are.equal("IntegrationsUnavailable", err.code)
    assert.are.equal(401, err.cause.status)
    assert.matches("Invalid API key %(suggested fix: Pass a valid project API key", err.cause.message)
    assert.are.equal(1, #srv:requests()) -- not retried
    assert.is_nil(cache.peek(src))
    assert.is_nil(tostring(err):find("ck-wrong-SECRET-24680", 1, true))
    assert.is_nil(require("tide.json").canonical(err.cause):find("ck-wrong-SECRET-24680", 1, true))
  end)

  it("defaults to the SDK's 60 s timeout", function()
    assert.are.equal(60000, source().timeout_ms)
    assert.are.equal(1000, source{ timeout_ms = 1000 }.timeout_ms)
  end)

  describe("execute", function()
    local src
    before_each(function()
      src = source()
      assert.is_table(get(src))
    end)

    it("sends the model's [] as [] and {} as {}", function()
      local call = '{"owner":"o","repo":"r","title":"t","labels":[],"assignees":[],"milestone":{}}'
      local args = require("tide.json").decode(call)
      local data, err = run(function() return src:execute("GITHUB_CREATE_ISSUE", args) end)
      assert.is_nil(err)
      assert.is_table(data)
      local raw = srv.executed[1].raw
      assert.truthy(raw:find('"labels":[]', 1, true), raw)
      assert.truthy(raw:find('"assignees":[]', 1, true), raw)
      assert.truthy(raw:find('"milestone":{}', 1, true), raw)
      -- a source object that did not fetch finds the schema in the shared snapshot
      local other = source()
      assert.are.equal(other:identity(), src:identity())
      data, err = run(function() return other:execute("GITHUB_CREATE_ISSUE",
        require("tide.json").decode(call)) end)
      assert.is_nil(err)
      assert.truthy(srv.executed[2].raw:find('"labels":[]', 1, true))
    end)

    it("reports Composio's validation error with its suggested fix as a ToolError", function()
      local data, err = run(function()
        return src:execute("GITHUB_CREATE_ISSUE", { owner = "o", labels = "bug" })
      end)
      assert.is_nil(data)
      assert.are.equal("ToolError", err.code)
      assert.are.equal(400, err.status)
      assert.matches("Invalid request data provided for GITHUB_CREATE_ISSUE", err.message)
      assert.matches("missing: {'repo'}", err.message, 1, true)
      assert.matches("labels: Input should be a valid list, got string", err.message, 1, true)
      assert.matches("suggested fix: Check the arguments", err.message, 1, true)
      assert.is_string(err.suggested_fix)
      assert.are.equal(0, #srv.executed)
    end)

    it("is never retried: a 429 or a 503 fails the call at once", function()
      srv:clear()
      srv:rate_limit(1, "0")
      local data, err = run(function() return src:execute("GITHUB_LIST_ISSUES", { repo = "r" }) end)
      assert.is_nil(data)
      assert.are.equal("ToolError", err.code)
      assert.are.equal(429, err.status)
      srv.fail = "execute"
      data, err = run(function() return src:execute("GITHUB_LIST_ISSUES", { repo = "r" }) end)
      assert.is_nil(data)
      assert.are.equal(500, err.status)
      assert.are.equal(2, #srv:requests("execute"))
    end)

    it("sends the chosen connected_account_id, by option or per toolkit", function()
      run(function() return src:execute("GITHUB_LIST_ISSUES", { repo = "r" }) end)
      assert.is_nil(srv.executed[1].connected_account_id) -- Composio picks
      local one = source{ connected_account_id = "ca_github_work" }
      assert.is_true(find(get(one), "github").connected)
      assert.is_table(run(function() return one:execute("GITHUB_LIST_ISSUES", { repo = "r" }) end))
      assert.are.equal("ca_github_work", srv.executed[2].connected_account_id)
      local map = source{ connected_account_id = { github = "ca_github_work", git = "ca_git" } }
      local snap = get(map)
      assert.is_true(find(snap, "git").connected)
      run(function() return map:execute("GIT_STATUS", {}) end)
      run(function() return map:execute("GITHUB_GET_REPO", {}) end)
      assert.are.equal("ca_git", srv.executed[3].connected_account_id)
      assert.are.equal("ca_github_work", srv.executed[4].connected_account_id)
      -- an account that is not the user's leaves the toolkit unconnected
      assert.is_nil(find(get(source{ connected_account_id = { github = "ca_slack" } }), "github"))
    end)

    it("turns an unknown or deprecated tool into a ToolError with Composio's message", function()
      local _, err = run(function() return src:execute("GITHUB_NOPE", {}) end)
      assert.are.equal("ToolError", err.code)
      assert.are.equal(404, err.status)
      assert.matches("Tool GITHUB_NOPE not found", err.message)
      _, err = run(function() return src:execute("GITHUB_GET_OLD_REPO", {}) end)
      assert.are.equal(410, err.status)
    end)
  end)

  describe("at the real scale (823 GitHub actions)", function()
    local big
    before_each(function()
      srv:close()
      big = mock.github_tools(823)
      local fx = mock.fixture()
      for _, t in ipairs(fx.tools) do if not t.slug:match("^GITHUB_") then big[#big + 1] = t end end
      srv = mock.server{ api_key = "test-key", tools = big }
    end)

    it("generates a realistic catalogue", function()
      local gh, long, important, deprecated = 0, 0, 0, 0
      for _, t in ipairs(big) do
        if t.slug:match("^GITHUB_") then
          gh = gh + 1
          if #t.slug > 64 then long = long + 1 end
          if t.important then important = important + 1 end
          if t.deprecated then deprecated = deprecated + 1 end
        end
      end
      assert.are.equal(823, gh)
      assert.is_true(long >= 1)
      assert.is_true(important >= 30 and important <= 50, tostring(important))
      assert.is_true(deprecated >= 10, tostring(deprecated))
    end)

    it("lists the ~40 important actions by default, all live ones with important = false, in pages", function()
      local gh = find(get(source()), "github")
      local important = 0
      for _, t in ipairs(big) do
        if t.slug:match("^GITHUB_") and t.important and not t.deprecated then important = important + 1 end
      end
      assert.are.equal(39, important) -- 40 curated, one of them deprecated
      assert.are.equal(important, #gh.tools + #gh.gated_tools)
      assert.are.equal(1, #srv:requests("tools"))
      srv:clear()
      gh = find(get(source{ important = false }), "github")
      local live = 0
      for _, t in ipairs(big) do if t.slug:match("^GITHUB_") and not t.deprecated then live = live + 1 end end
      assert.are.equal(live, #gh.tools + #gh.gated_tools)
      assert.are.equal(5, #srv:requests("tools")) -- 200 a page
      assert.are.equal("c200", srv:requests("tools")[2].query.cursor)
    end)

    it("keeps the gated catalogue in the prompts within the byte budget", function()
      local snap = get(source{ important = false })
      local gh = find(snap, "github")
      assert.is_true(#gh.gated_tools > 150, tostring(#gh.gated_tools))
      local def = { id = "orchestrator", subagents = { { toolkits = "*" } } }
      local surf = surface.build(def, {}, snap)
      local data = surface.prompt_data(def, surf, snap, "github")
      local entry = data.toolkit
      assert.are.equal(#gh.gated_tools, entry.gated_count)
      assert.is_true(#entry.gated_tools <= surface.GATED_SHOWN)
      local orch = assert(prompts.render("orchestrator", data))
      local agent = assert(prompts.render("integrations_agent", data))
      -- the gated section of each prompt: within the budget plus its fixed text
      local sections = {
        orch:match("(Not available in github:.-)\nIf the user asks"),
        agent:match("(## Not available to you.-)\nIf the task needs"),
      }
      for _, section in ipairs(sections) do
        assert.is_true(#section <= surface.GATED_BUDGET + 400, tostring(#section))
        assert.matches(("%d github actions are hidden"):format(#gh.gated_tools), section)
        assert.matches("hidden: admin scope is off", section)
        assert.matches("and %d+ more, hidden", section)
      end
      assert.is_true(#orch < 4096, tostring(#orch))
      -- relevance: important ones lead the names shown
      assert.is_true(entry.gated_tools[1].name:match("^GITHUB_") ~= nil)
    end)
  end)
end)
