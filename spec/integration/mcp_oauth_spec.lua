-- OAuth 2.1 for a remote MCP server, as MCP 2025-11-25 "Authorization" has
-- a client do it, against the official TypeScript SDK's example server
-- with its OAuth authorization server (simpleStreamableHttp --oauth
-- --oauth-strict: dynamic client registration, PKCE checked at the token
-- endpoint, tokens only for the resource they were issued for), the
-- person's browser played by an HTTP client that stops at the redirect.
local tide = require "tide"
local core = require "tide.core"
local helpers = require "helpers"
local cache = require "tide.integrations.cache"
local oauth = require "tide.integrations.mcp_oauth"

local EXAMPLE = helpers.npm "@modelcontextprotocol/sdk/dist/esm/examples/server/simpleStreamableHttp.js"

-- The example server and its authorization server on free ports.
local function start()
  local proc, port = helpers.node_server(EXAMPLE, { "--oauth", "--oauth-strict" },
    function(port) return { MCP_PORT = tostring(port), MCP_AUTH_PORT = tostring(port + 1) } end,
    function(proc) return (proc:read_line(50) or ""):find("MCP Streamable HTTP Server listening", 1, true) ~= nil end)
  return proc, ("http://localhost:%d/mcp"):format(port)
end

-- A browser that consents: it follows the authorization URL to the
-- redirect and gives back where it was sent.
local function browser(asked)
  return function(url, redirect_uri)
    asked[#asked + 1] = { url = url, redirect_uri = redirect_uri }
    local res = assert(tide.http.request { url = url })
    assert(res.status == 302, "the authorization server answered " .. res.status .. ": " .. res.body)
    return res.headers.location
  end
end

local function query_of(url)
  local q = {}
  for k, v in url:match("%?(.*)$"):gmatch("([^&=]+)=([^&]*)") do
    q[k] = v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  end
  return q
end

describe("MCP over OAuth with the TypeScript SDK's example server", function()
  local proc, url
  before_each(function()
    cache.invalidate_all()
    helpers.run(function() proc, url = start() end)
  end)
  after_each(function() proc:close(2000) end)

  it("discovers, registers, asks the person once, and calls tools with the token", function()
    helpers.run(function()
      local asked, kept = {}, nil
      local store = { load = function() return kept end, save = function(t) kept = t end }
      local src = tide.integrations.mcp { name = "remote", url = url, timeout_ms = 20000,
        oauth = { authorize = browser(asked), store = store } }
      local tools = {}
      for _, t in ipairs(assert(src:fetch())[1].tools) do tools[t.name] = true end
      assert.is_true(tools.greet)
      assert.matches("Hello, tide!", assert(src:execute("greet", { name = "tide" })), 1, true)
      -- one authorization, as the specification has it
      assert.are.equal(1, #asked)
      local q = query_of(asked[1].url)
      assert.are.same({ "code", "S256", url, "mcp:tools", "http://127.0.0.1/callback" },
        { q.response_type, q.code_challenge_method, q.resource, q.scope, q.redirect_uri })
      assert.matches("^[%w_-]+$", q.code_challenge)
      assert.is_true(#q.state >= 16)
      assert.matches("^http://localhost:%d+/authorize%?", asked[1].url)
      -- kept: the registered client and the tokens
      assert.is_string(kept.client.client_id)
      assert.is_string(kept.tokens.access_token)
      assert.are.equal(url, kept.resource)
      src:close()
      -- another process with the same store: no person asked
      cache.invalidate_all()
      local again = tide.integrations.mcp { name = "remote", url = url, timeout_ms = 20000,
        oauth = { authorize = browser(asked), store = store } }
      assert.matches("Hello, again!", assert(again:execute("greet", { name = "again" })), 1, true)
      assert.are.equal(1, #asked)
      again:close()
      -- (a token it never issued gets HTTP 500 from this example, not 401:
      -- the refusals are the scripted server's, below)
    end)
  end)

  it("fails with Unauthorized, saying why, and never with a secret in the message", function()
    helpers.run(function()
      -- no oauth option: what the server wants
      local plain = tide.integrations.mcp { name = "remote", url = url, timeout_ms = 20000 }
      local r, err = plain:fetch()
      assert.is_nil(r)
      assert.are.equal("Unauthorized", err.code)
      assert.matches("answered HTTP 401: it wants OAuth authorization %(its metadata: http://localhost:%d+/"
        .. "%.well%-known/oauth%-protected%-resource/mcp%); give the source oauth", err.message)
      -- the person says no, or the answer is another request's
      for _, case in ipairs {
        { function() error("closed the tab", 0) end, "the authorize function raised: closed the tab" },
        { function() return nil end, "authorize returned no answer" },
        { function(u) return "http://127.0.0.1/callback?error=access_denied&error_description=no%20thanks" end,
          "the authorization server said access_denied: no thanks" },
        { function(u)
            local loc = browser({})(u)
            return (loc:gsub("state=[^&]+", "state=forged"))
          end, "the answer's state is not the request's" },
      } do
        local src = tide.integrations.mcp { name = "remote", url = url, timeout_ms = 20000,
          oauth = { authorize = case[1] } }
        r, err = src:execute("greet", { name = "x" })
        assert.is_nil(r)
        assert.are.equal("ToolError", err.code)
        assert.are.equal("Unauthorized", err.cause.code)
        assert.matches(case[2], err.message, 1, true)
        src:close()
      end
      -- a client the authorization server does not know: its words
      local src = tide.integrations.mcp { name = "remote", url = url, timeout_ms = 20000,
        oauth = { authorize = function() return "code-from-nowhere" end, client_id = "not-registered" } }
      r, err = src:fetch()
      assert.is_nil(r)
      assert.matches("its OAuth authorization failed: the token request: HTTP %d+, invalid_client", err.message)
      src:close()
    end)
  end)

  it("checks its options", function()
    local function raised(opts)
      local ok, e = pcall(tide.integrations.mcp, opts)
      assert.is_false(ok)
      return e
    end
    local a = function() end
    assert.matches("'oauth' is for a 'url' source", raised { name = "x", command = { "x" }, oauth = { authorize = a } })
    assert.matches("give either 'oauth' or an Authorization header",
      raised { name = "x", url = url, headers = { Authorization = "Bearer k" }, oauth = { authorize = a } })
    assert.matches("field 'oauth.authorize' must be a function", raised { name = "x", url = url, oauth = {} })
    assert.matches("unknown option 'oauth.secret'", raised { name = "x", url = url, oauth = { authorize = a, secret = "s" } })
    assert.matches("field 'oauth.redirect_uri' must be an https:// URL or an http:// one on a loopback host",
      raised { name = "x", url = url, oauth = { authorize = a, redirect_uri = "http://example.com/cb" } })
    assert.matches("field 'oauth.store' must be a table { load = function, save = function }",
      raised { name = "x", url = url, oauth = { authorize = a, store = {} } })
  end)
end)

-- A scripted MCP server with its own authorization server on one mock:
-- tokens it issues and refuses as a test says.
local function scripted_oauth(o)
  o = o or {}
  local srv
  local state = { issued = {}, grants = {}, basic = {}, refused = {}, scope_needed = o.scope_needed }
  local function form_of(body)
    local t = {}
    for k, v in body:gmatch("([^&=]+)=([^&]*)") do t[k] = v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end) end
    return t
  end
  local function json(status, v, headers)
    headers = headers or {}
    headers["content-type"] = "application/json"
    return { status = status, headers = headers, body = require("cjson").encode(v) }
  end
  local function issue(scope)
    local n = #state.grants -- (this grant's number)
    local t = { access_token = "at-" .. n .. "-secretvalue", refresh_token = "rt-" .. n .. "-secretvalue",
      token_type = "Bearer", expires_in = o.expires_in or 3600, scope = scope }
    state.issued[t.access_token] = scope or ""
    return t
  end
  srv = assert(tide.testing.mock_server { routes = {
    ["/mcp"] = function(req)
      local auth = req.headers.authorization
      local token = auth and auth:match("^Bearer (.+)$")
      local scope = token and state.issued[token]
      if not scope or state.refused[token] then
        return json(401, { error = "invalid_token" }, { ["www-authenticate"] =
          ('Bearer error="invalid_token", resource_metadata="%s/.well-known/oauth-protected-resource/mcp"'):format(srv.url) })
      end
      local m = req.json
      if m.method == "tools/call" and state.scope_needed and not scope:find(state.scope_needed, 1, true) then
        return json(403, { error = "insufficient_scope" }, { ["www-authenticate"] =
          ('Bearer error="insufficient_scope", scope="%s"'):format(state.scope_needed) })
      end
      if m.id == nil then return { status = 202, body = "" } end
      local result = m.method == "initialize" and { protocolVersion = "2025-11-25", capabilities = { tools = {} },
          serverInfo = { name = "scripted-oauth", version = "1" } }
        or m.method == "tools/list" and { tools = { { name = "whoami", inputSchema = { type = "object" } } } }
        or { content = { { type = "text", text = "you hold " .. token:match("^(at%-%d+)") } } }
      return json(200, { jsonrpc = "2.0", id = m.id, result = result })
    end,
    ["/.well-known/oauth-protected-resource/mcp"] = function()
      return json(200, { resource = o.resource or (srv.url .. "/mcp"), authorization_servers = { srv.url .. "/as" },
        scopes_supported = { "mcp" } })
    end,
    ["/.well-known/oauth-authorization-server/as"] = function()
      return json(200, { issuer = srv.url .. "/as", authorization_endpoint = srv.url .. "/as/authorize",
        token_endpoint = srv.url .. "/as/token", code_challenge_methods_supported = o.methods or { "S256" },
        token_endpoint_auth_methods_supported = { "client_secret_basic" } })
    end,
    ["/as/token"] = function(req)
      local f = form_of(req.body)
      state.grants[#state.grants + 1] = f
      state.basic[#state.basic + 1] = req.headers.authorization or false
      if f.grant_type == "authorization_code" and o.code_fails then
        -- (a careless server that echoes the client's secret)
        return json(400, { error = "invalid_client", error_description = "secret " .. tostring(req.headers.authorization)
          .. " / client-secret-value refused" })
      end
      if f.grant_type == "authorization_code" then return json(200, issue(state.scope_for_code)) end
      if f.grant_type == "refresh_token" and f.refresh_token:match("^rt%-") and not o.refresh_fails then
        return json(200, issue(state.issued["at-" .. f.refresh_token:match("^rt%-(%d+)") .. "-secretvalue"]))
      end
      return json(400, { error = "invalid_grant", error_description = "refresh token " .. f.refresh_token .. " is unknown" })
    end,
  } })
  -- the person consents at once: the redirect, with the request's state
  state.asked = {}
  state.authorize = function(url, redirect_uri)
    state.asked[#state.asked + 1] = url
    local st = url:match("[?&]state=([^&]+)")
    local scope = url:match("[?&]scope=([^&]+)")
    state.scope_for_code = scope and scope:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end):gsub("+", " ")
    return redirect_uri .. "?code=code-" .. #state.asked .. "&state=" .. st
  end
  return srv, state
end

describe("MCP OAuth against a scripted server", function()
  before_each(function() cache.invalidate_all() end)

  local function source(srv, st, extra)
    local opts = { authorize = st.authorize, client_id = "pre-registered", client_secret = "client-secret-value" }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return tide.integrations.mcp { name = "scripted", url = srv.url .. "/mcp", timeout_ms = 5000, oauth = opts }
  end

  it("authenticates a pre-registered client as the server says, and refreshes a token running out", function()
    helpers.run(function()
      local srv <close>, st = scripted_oauth()
      local src = source(srv, st)
      assert.are.equal("you hold at-1", src:execute("whoami", {}))
      src.oauth_state.tokens.expires_at = os.time() + 30 -- (under a minute left: refreshed before use)
      assert.are.equal("you hold at-2", src:execute("whoami", {}))
      assert.are.equal("you hold at-2", src:execute("whoami", {}))
      assert.are.equal(1, #st.asked)
      -- client_secret_basic, as its metadata asks
      assert.are.equal("Basic " .. core.base64("pre-registered:client-secret-value"), st.basic[1])
      assert.are.same({ "authorization_code", "refresh_token" }, { st.grants[1].grant_type, st.grants[2].grant_type })
      assert.are.equal("rt-1-secretvalue", st.grants[2].refresh_token)
      assert.are.equal(srv.url .. "/mcp", st.grants[2].resource)
      assert.is_string(st.grants[1].code_verifier)
      src:close()
    end)
  end)

  it("refreshes a token the server refuses, and asks the person when the refresh fails", function()
    helpers.run(function()
      local srv <close>, st = scripted_oauth()
      local src = source(srv, st)
      assert.are.equal("you hold at-1", src:execute("whoami", {}))
      st.refused["at-1-secretvalue"] = true
      assert.are.equal("you hold at-2", src:execute("whoami", {}))
      assert.are.equal(1, #st.asked)
      src:close()
      local srv2 <close>, st2 = scripted_oauth { refresh_fails = true }
      local src2 = source(srv2, st2)
      assert.are.equal("you hold at-1", src2:execute("whoami", {}))
      st2.refused["at-1-secretvalue"] = true
      assert.are.equal("you hold at-3", src2:execute("whoami", {})) -- (grant 2 was the failed refresh)
      assert.are.equal(2, #st2.asked)
      src2:close()
    end)
  end)

  it("asks the person once for requests that all found no token", function()
    helpers.run(function()
      local srv <close>, st = scripted_oauth()
      local src = source(srv, st)
      assert(src:fetch()) -- (connected: the requests below race on the calls)
      src.oauth_state.tokens = nil
      local tasks = {}
      for i = 1, 4 do tasks[i] = tide.spawn(function() return src:execute("whoami", {}) end) end
      for i = 1, 4 do assert.matches("^you hold at%-", (assert(tasks[i]:join()))) end
      assert.are.equal(2, #st.asked) -- (the connection's, then one for the four)
      src:close()
    end)
  end)

  it("steps up to the scope a 403 names, keeping the scopes it holds", function()
    helpers.run(function()
      local srv <close>, st = scripted_oauth { scope_needed = "files:write" }
      local src = source(srv, st)
      assert.are.equal("you hold at-2", src:execute("whoami", {}))
      assert.are.equal(2, #st.asked)
      assert.matches("[?&]scope=mcp&", st.asked[1] .. "&")
      assert.matches("[?&]scope=mcp%%20files%%3Awrite&", st.asked[2] .. "&")
      src:close()
    end)
  end)

  it("refuses a server without PKCE, metadata for another resource, and keeps secrets out of errors", function()
    helpers.run(function()
      local srv <close>, st = scripted_oauth { methods = { "plain" } }
      local r, err = source(srv, st):fetch()
      assert.is_nil(r)
      assert.matches("does not say it supports PKCE with S256: tide will not go on", err.message, 1, true)
      assert.are.equal(0, #st.asked)
      local srv2 <close>, st2 = scripted_oauth { resource = "http://127.0.0.1:1/other" }
      r, err = source(srv2, st2):fetch()
      assert.is_nil(r)
      assert.matches("the protected resource metadata is for http://127.0.0.1:1/other, not this server", err.message, 1, true)
      -- the token endpoint's refusal echoes the client's secret: not in our error
      local srv3 <close>, st3 = scripted_oauth { code_fails = true }
      r, err = source(srv3, st3):fetch()
      assert.is_nil(r)
      assert.are.equal("Unauthorized", err.code)
      assert.matches("the token request: HTTP 400, invalid_client: secret", err.message, 1, true)
      assert.is_nil(err.message:find("client-secret-value", 1, true))
      assert.is_nil(err.message:find(core.base64("pre-registered:client-secret-value"), 1, true))
    end)
  end)
end)

describe("MCP OAuth's parts", function()
  it("reads WWW-Authenticate's Bearer parameters, quoted or not", function()
    assert.are.same({ error = "insufficient_scope", scope = "files:read files:write",
      resource_metadata = "https://mcp.example.com/.well-known/oauth-protected-resource", error_description = 'say "hi"' },
      oauth.challenge('Basic realm="x", Bearer error=insufficient_scope, scope="files:read files:write", '
        .. 'resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource", '
        .. 'error_description="say \\"hi\\""'))
    assert.are.same({}, oauth.challenge(nil))
    assert.are.same({}, oauth.challenge("Basic realm=x"))
  end)

  it("names the server by its canonical URI", function()
    assert.are.equal("https://mcp.example.com/mcp", oauth._canonical("HTTPS://MCP.Example.com/mcp/?x=1#f"))
    assert.are.equal("http://localhost:3000", oauth._canonical("http://localhost:3000/"))
  end)
end)
