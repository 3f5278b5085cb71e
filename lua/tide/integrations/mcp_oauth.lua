--- tide.integrations.mcp_oauth: OAuth 2.1 for an MCP server over Streamable
--- HTTP, as MCP 2025-11-25 "Authorization" has a client do it. A source made
--- with `oauth = { authorize, client_id, client_secret, redirect_uri, scope,
--- client_name, store }` answers the server's 401:
---   1. the protected resource metadata (RFC 9728): the URL in the 401's
---      `WWW-Authenticate` (`resource_metadata`), else the well-known URIs,
---      the path's first; its `resource` must be this server (a prefix of
---      its URL) and is the token's audience (RFC 8707 `resource`, in both
---      the authorization and the token request);
---   2. the authorization server's metadata: OAuth (RFC 8414) then OpenID
---      Connect discovery, with path insertion, in the specification's
---      order; it must offer PKCE with S256, or tide refuses to go on;
---   3. the client: `client_id` (and `client_secret`) when given, else the
---      one `store` kept for that authorization server, else Dynamic Client
---      Registration (RFC 7591) as a public client;
---   4. the authorization code flow with PKCE (S256) and `state`:
---      `authorize(url, redirect_uri)` shows the person the URL and returns
---      where their browser was sent back (the redirect URL, or just the
---      code); the scope is the challenge's, else `scope`, else the
---      resource's `scopes_supported`;
---   5. the token request, then every request carries the bearer token; a
---      token about to run out, or refused with a 401, is refreshed with
---      its refresh token when there is one, else the flow runs again; a
---      403 `insufficient_scope` runs it again for the scopes the server
---      names (once per request).
--- The authorization server's endpoints must be HTTPS (loopback hosts
--- excepted, for local servers and specs). `store = { load, save }` keeps
--- the client and the tokens across processes (save gets a table to keep
--- as it is; load returns it). Failures are `Unauthorized` errors that say
--- which step failed; no token, code, verifier or client secret is ever in
--- one.
local core = require "tide.core"
local json = require "tide.json"

local M = {}

local OPTIONS = { authorize = true, client_id = true, client_secret = true, redirect_uri = true, scope = true,
  client_name = true, store = true }
local DEFAULT_REDIRECT = "http://127.0.0.1/callback"
-- A token this close to its end is refreshed before a request, not after
-- the server refuses it.
local EARLY_S = 60

local function fail(message, fields)
  return nil, core.error("Unauthorized", message, fields)
end

local function base() return require "tide.provider.base" end

local function form(fields) return base()._form(fields) end

local function b64url(s) return base()._base64url(s) end

-- scheme, host (lowercased, brackets kept), port or nil, path ("" for none).
local function parse_url(u)
  if type(u) ~= "string" then return nil end
  local scheme, host, port, path = u:match("^(%a[%w+.-]*)://([^/?#:]+):?(%d*)([^?#]*)")
  if not scheme then
    scheme, host, port, path = u:match("^(%a[%w+.-]*)://(%[[^%]]+%]):?(%d*)([^?#]*)")
  end
  if not scheme then return nil end
  return scheme:lower(), host:lower(), port ~= "" and port or nil, path
end

local LOOPBACK = { localhost = true, ["127.0.0.1"] = true, ["[::1]"] = true }

-- Whether an endpoint may be used: HTTPS, or HTTP on a loopback host.
local function secure(u)
  local scheme, host = parse_url(u)
  return scheme == "https" or (scheme == "http" and LOOPBACK[host] == true)
end

-- The origin ("scheme://host[:port]") and path of a URL.
local function origin_path(u)
  local scheme, host, port, path = parse_url(u)
  if not scheme then return nil end
  return scheme .. "://" .. host .. (port and (":" .. port) or ""), path
end

-- RFC 8707's canonical URI of the server: lowercase scheme and host, no
-- query, no fragment, no trailing slash.
local function canonical(u)
  local origin, path = origin_path(u)
  return origin .. (path:gsub("/+$", ""))
end
M._canonical = canonical

--- The Bearer challenge of a `WWW-Authenticate` value: its auth-params
--- (error, error_description, resource_metadata, scope), or an empty table.
---@param v string|nil
---@return table<string, string>
function M.challenge(v)
  local out = {}
  if type(v) ~= "string" then return out end
  local at = v:lower():find("bearer", 1, true)
  if not at then return out end
  local rest = v:sub(at + 6)
  local i = 1
  while true do
    local s, e, k = rest:find('^[%s,]*([%w_%-]+)%s*=%s*', i)
    if not s then break end
    local val
    if rest:sub(e + 1, e + 1) == '"' then
      local j, buf = e + 2, {}
      while j <= #rest do
        local c = rest:sub(j, j)
        if c == "\\" then
          buf[#buf + 1] = rest:sub(j + 1, j + 1)
          j = j + 2
        elseif c == '"' then
          break
        else
          buf[#buf + 1] = c
          j = j + 1
        end
      end
      val, i = table.concat(buf), j + 1
    else
      local tok, after = rest:match("^([^,%s]*)()", e + 1)
      val, i = tok, after
    end
    out[k:lower()] = val
  end
  return out
end

--- Checks a source's `oauth` option: the option normalised, or nil and
--- what is wrong with it.
---@param o any
---@return table|nil
---@return string|nil
function M.check(o)
  if type(o) ~= "table" then return nil, "field 'oauth' must be a table { authorize, ... }" end
  for k in pairs(o) do
    if not OPTIONS[k] then return nil, ("unknown option 'oauth.%s'"):format(tostring(k)) end
  end
  if type(o.authorize) ~= "function" then return nil, "field 'oauth.authorize' must be a function (url, redirect_uri)" end
  for _, k in ipairs { "client_id", "client_secret", "scope", "client_name" } do
    if o[k] ~= nil and (type(o[k]) ~= "string" or o[k] == "") then
      return nil, ("field 'oauth.%s' must be a non-empty string"):format(k)
    end
  end
  if o.client_secret and not o.client_id then return nil, "field 'oauth.client_secret' needs 'oauth.client_id'" end
  local redirect = o.redirect_uri or DEFAULT_REDIRECT
  if type(redirect) ~= "string" or not secure(redirect) then
    return nil, "field 'oauth.redirect_uri' must be an https:// URL or an http:// one on a loopback host"
  end
  local store = o.store
  if store ~= nil and (type(store) ~= "table" or type(store.load) ~= "function" or type(store.save) ~= "function") then
    return nil, "field 'oauth.store' must be a table { load = function, save = function }"
  end
  return { authorize = o.authorize, client_id = o.client_id, client_secret = o.client_secret, redirect_uri = redirect,
    scope = o.scope, client_name = o.client_name or "tide", store = store }
end

-- ------------------------------------------------------------- requests --

-- A JSON document at `url` (GET), or nil and why.
local function get_json(url, what)
  local res, err = require("tide.http").request { url = url, headers = { accept = "application/json" },
    timeout_ms = 15000 }
  if not res then return nil, ("%s: %s"):format(what, err.message or tostring(err)) end
  if res.status ~= 200 then return nil, ("%s: HTTP %d"):format(what, res.status) end
  local doc = json.decode(res.body)
  if type(doc) ~= "table" then return nil, what .. ": not a JSON object" end
  return doc
end

-- What an OAuth endpoint's error answer says (error, error_description).
local function oauth_error(res)
  local doc = json.decode(res.body or "")
  if type(doc) ~= "table" or type(doc.error) ~= "string" then return ("HTTP %d"):format(res.status) end
  local d = type(doc.error_description) == "string" and (": " .. doc.error_description:match("^[^\r\n]*")) or ""
  return ("HTTP %d, %s%s"):format(res.status, doc.error, d)
end

-- ------------------------------------------------------------ the state --

-- The source's OAuth state, loaded from the store the first time.
local function state_of(src)
  local st = src.oauth_state
  if st then return st end
  st = { tokens = nil, client = nil }
  src.oauth_state = st
  local store = src.oauth.store
  if store then
    local ok, saved = pcall(store.load)
    if ok and type(saved) == "table" then
      if type(saved.tokens) == "table" and type(saved.tokens.access_token) == "string" then st.tokens = saved.tokens end
      if type(saved.client) == "table" and type(saved.client.client_id) == "string" then st.client = saved.client end
      st.token_endpoint = type(saved.token_endpoint) == "string" and saved.token_endpoint or nil
      st.resource = type(saved.resource) == "string" and saved.resource or nil
    end
  end
  return st
end

local function save(src, st)
  local store = src.oauth.store
  if not store then return end
  -- (a store that fails loses only what a restart would: not the session)
  pcall(store.save, { tokens = st.tokens, client = st.client, token_endpoint = st.token_endpoint,
    resource = st.resource })
end

--- What must never leave in an error: the tokens and the client's secret.
---@param src table
---@return string[]
function M.secrets(src)
  local st, out = src.oauth_state, {}
  local function add(v) if type(v) == "string" and #v >= 8 then out[#out + 1] = v end end
  local function client(id, secret)
    if not secret then return end
    add(secret)
    local enc = base()._percent_encode
    add(core.base64(enc(id) .. ":" .. enc(secret))) -- (as client_secret_basic sends it)
  end
  if src.oauth then client(src.oauth.client_id, src.oauth.client_secret) end
  if st then
    add(st.tokens and st.tokens.access_token)
    add(st.tokens and st.tokens.refresh_token)
    if st.client then client(st.client.client_id, st.client.client_secret) end
  end
  return out
end

-- The token endpoint's answer as tokens, or nil and why. A refresh that
-- gives no new refresh token keeps the old one.
local function tokens_of(res, what, old_refresh)
  if res.status ~= 200 then return nil, ("%s: %s"):format(what, oauth_error(res)) end
  local doc = json.decode(res.body)
  if type(doc) ~= "table" or type(doc.access_token) ~= "string" or doc.access_token == "" then
    return nil, what .. ": the answer has no access_token"
  end
  if type(doc.token_type) ~= "string" or doc.token_type:lower() ~= "bearer" then
    return nil, ("%s: token_type %s, where tide sends bearer tokens"):format(what, tostring(doc.token_type))
  end
  local ttl = tonumber(doc.expires_in)
  return { access_token = doc.access_token,
    refresh_token = type(doc.refresh_token) == "string" and doc.refresh_token or old_refresh,
    expires_at = ttl and (os.time() + math.floor(ttl)) or nil,
    scope = type(doc.scope) == "string" and doc.scope or nil }
end

-- A POST to the token endpoint with the client's authentication.
local function token_request(st, fields)
  local client = st.client
  local headers = { ["content-type"] = "application/x-www-form-urlencoded", accept = "application/json" }
  fields[#fields + 1] = { "client_id", client.client_id }
  if client.client_secret then
    if client.auth_method == "client_secret_basic" then
      local enc = base()._percent_encode
      headers.authorization = "Basic " .. core.base64(enc(client.client_id) .. ":" .. enc(client.client_secret))
    else
      fields[#fields + 1] = { "client_secret", client.client_secret }
    end
  end
  return require("tide.http").request { method = "POST", url = st.token_endpoint, headers = headers,
    body = form(fields), timeout_ms = 15000 }
end

-- A new access token from the refresh token, or nil and why.
local function refresh(src, st)
  local r = st.tokens and st.tokens.refresh_token
  if not (r and st.token_endpoint and st.client) then return nil, "no refresh token" end
  local fields = { { "grant_type", "refresh_token" }, { "refresh_token", r } }
  if st.resource then fields[#fields + 1] = { "resource", st.resource } end
  local res, err = token_request(st, fields)
  if not res then return nil, "the token refresh: " .. (err.message or tostring(err)) end
  local tokens, why = tokens_of(res, "the token refresh", r)
  if not tokens then return nil, why end
  st.tokens = tokens
  save(src, st)
  return true
end

-- --------------------------------------------------------- discovery --

-- The protected resource metadata, and the URLs tried.
local function resource_metadata(src, challenge)
  local urls = {}
  if challenge.resource_metadata then
    urls[1] = challenge.resource_metadata
  else
    local origin, path = origin_path(src.url)
    path = path:gsub("/+$", "")
    if path ~= "" then urls[#urls + 1] = origin .. "/.well-known/oauth-protected-resource" .. path end
    urls[#urls + 1] = origin .. "/.well-known/oauth-protected-resource"
  end
  local whys = {}
  for _, u in ipairs(urls) do
    local doc, why = get_json(u, u)
    if doc and type(doc.authorization_servers) == "table" and type(doc.authorization_servers[1]) == "string" then
      return doc
    end
    whys[#whys + 1] = why or (u .. ": no authorization_servers")
  end
  return nil, "no protected resource metadata (" .. table.concat(whys, "; ") .. ")"
end

-- The authorization server's metadata, in the specification's order.
local function server_metadata(issuer)
  local origin, path = origin_path(issuer)
  path = path:gsub("/+$", "")
  local urls
  if path ~= "" then
    urls = { origin .. "/.well-known/oauth-authorization-server" .. path,
             origin .. "/.well-known/openid-configuration" .. path,
             origin .. path .. "/.well-known/openid-configuration" }
  else
    urls = { origin .. "/.well-known/oauth-authorization-server", origin .. "/.well-known/openid-configuration" }
  end
  local whys = {}
  for _, u in ipairs(urls) do
    local doc, why = get_json(u, u)
    if doc then return doc end
    whys[#whys + 1] = why
  end
  return nil, "no authorization server metadata (" .. table.concat(whys, "; ") .. ")"
end

-- The client to authorize as: given, stored, or registered now.
local function client_for(src, st, as)
  local cfg = src.oauth
  if cfg.client_id then
    return { client_id = cfg.client_id, client_secret = cfg.client_secret,
      auth_method = cfg.client_secret and (type(as.token_endpoint_auth_methods_supported) == "table"
        and as.token_endpoint_auth_methods_supported[1] == "client_secret_basic" and "client_secret_basic"
        or "client_secret_post") or "none" }
  end
  if st.client and st.client.issuer == as.issuer then return st.client end
  local endpoint = as.registration_endpoint
  if type(endpoint) ~= "string" then
    return nil, "the authorization server offers no client registration: give oauth.client_id"
  end
  if not secure(endpoint) then return nil, "the registration endpoint is not HTTPS" end
  local res, err = require("tide.http").request { method = "POST", url = endpoint,
    headers = { ["content-type"] = "application/json", accept = "application/json" }, timeout_ms = 15000,
    body = json.canonical { client_name = cfg.client_name, redirect_uris = { cfg.redirect_uri },
      grant_types = { "authorization_code", "refresh_token" }, response_types = { "code" },
      token_endpoint_auth_method = "none" } }
  if not res then return nil, "the client registration: " .. (err.message or tostring(err)) end
  if res.status ~= 200 and res.status ~= 201 then return nil, "the client registration: " .. oauth_error(res) end
  local doc = json.decode(res.body)
  if type(doc) ~= "table" or type(doc.client_id) ~= "string" then
    return nil, "the client registration: the answer has no client_id"
  end
  return { client_id = doc.client_id, client_secret = type(doc.client_secret) == "string" and doc.client_secret or nil,
    auth_method = type(doc.token_endpoint_auth_method) == "string" and doc.token_endpoint_auth_method or "none",
    issuer = as.issuer }
end

-- The code (and state) in what `authorize` returned: the redirect URL,
-- its query, or the code alone.
local function code_of(answer)
  local query = answer:match("%?([^#]*)") or (answer:find("=", 1, true) and answer) or nil
  if not query then return { code = answer:match("^%s*(.-)%s*$") } end
  local out = {}
  local dec = base()._percent_decode
  for k, v in query:gmatch("([^&=]+)=([^&]*)") do out[dec(k)] = dec((v:gsub("+", " "))) end
  return out
end

-- The whole flow: metadata, client, the person's consent, the tokens.
local function authorize_now(src, st, challenge, scope_wanted)
  local cfg = src.oauth
  local prm, why = resource_metadata(src, challenge)
  if not prm then return nil, why end
  -- the metadata must be this server's: its resource a prefix of our URL
  local resource = canonical(src.url)
  if type(prm.resource) == "string" then
    local r = canonical(prm.resource)
    if not (resource == r or resource:sub(1, #r + 1) == r .. "/") then
      return nil, ("the protected resource metadata is for %s, not this server"):format(prm.resource)
    end
    resource = r
  end
  local issuer = prm.authorization_servers[1]
  if not secure(issuer) then return nil, ("the authorization server %s is not HTTPS"):format(issuer) end
  local as, aerr = server_metadata(issuer)
  if not as then return nil, aerr end
  for _, k in ipairs { "authorization_endpoint", "token_endpoint" } do
    if type(as[k]) ~= "string" or not secure(as[k]) then
      return nil, ("the authorization server's %s is missing or not HTTPS"):format(k)
    end
  end
  local pkce = false
  for _, m in ipairs(type(as.code_challenge_methods_supported) == "table" and as.code_challenge_methods_supported or {}) do
    if m == "S256" then pkce = true end
  end
  if not pkce then return nil, "the authorization server does not say it supports PKCE with S256: tide will not go on" end
  as.issuer = type(as.issuer) == "string" and as.issuer or issuer
  local client, cerr = client_for(src, st, as)
  if not client then return nil, cerr end
  st.client, st.token_endpoint, st.resource = client, as.token_endpoint, resource
  -- the request: PKCE, state, the resource, the scope
  local verifier = b64url(core.random_bytes(32))
  local state = b64url(core.random_bytes(16))
  local scope = scope_wanted or challenge.scope or cfg.scope
  if not scope and type(prm.scopes_supported) == "table" and #prm.scopes_supported > 0 then
    scope = table.concat(prm.scopes_supported, " ")
  end
  local fields = { { "response_type", "code" }, { "client_id", client.client_id }, { "redirect_uri", cfg.redirect_uri },
    { "code_challenge", b64url(core.sha256(verifier)) }, { "code_challenge_method", "S256" }, { "state", state },
    { "resource", resource } }
  if scope then fields[#fields + 1] = { "scope", scope } end
  local url = as.authorization_endpoint .. (as.authorization_endpoint:find("?", 1, true) and "&" or "?") .. form(fields)
  local ok, answer = pcall(cfg.authorize, url, cfg.redirect_uri)
  if not ok then return nil, "the authorize function raised: " .. tostring(type(answer) == "table" and answer.message or answer) end
  if type(answer) ~= "string" or answer == "" then return nil, "the authorization was not given (authorize returned no answer)" end
  local got = code_of(answer)
  if got.error then
    return nil, ("the authorization server said %s%s"):format(got.error,
      got.error_description and (": " .. got.error_description) or "")
  end
  if got.state ~= nil and got.state ~= state then return nil, "the answer's state is not the request's" end
  if not got.code or got.code == "" then return nil, "the answer holds no authorization code" end
  local res, err = token_request(st, { { "grant_type", "authorization_code" }, { "code", got.code },
    { "redirect_uri", cfg.redirect_uri }, { "code_verifier", verifier }, { "resource", resource } })
  if not res then return nil, "the token request: " .. (err.message or tostring(err)) end
  local tokens, terr = tokens_of(res, "the token request")
  if not tokens then return nil, terr end
  st.tokens = tokens
  save(src, st)
  return true
end

-- Runs `fn(src, st, ...)` once however many requests wait for it: the
-- first starts it, the others join.
local function once(src, st, fn, ...)
  local t = st.flight
  if t == nil or t:status() == "done" or t:status() == "failed" then
    local args = table.pack(...)
    t = core.spawn(function() return fn(src, st, table.unpack(args, 1, args.n)) end)
    st.flight = t
  end
  local ok, why = t:join()
  if st.flight == t then st.flight = nil end
  return ok, why
end

--- The Authorization header for a request, or nil before any token: a
--- token about to run out is refreshed first, when it can be.
---@param src table
---@return string|nil
function M.bearer(src)
  local st = state_of(src)
  local t = st.tokens
  if not t then return nil end
  if t.expires_at and t.refresh_token and os.time() >= t.expires_at - EARLY_S then
    once(src, st, refresh)
    t = st.tokens
  end
  return "Bearer " .. t.access_token
end

--- Answers a 401 or 403 of the server (`res`, with `sent`, the
--- Authorization header the request carried): true when a request may be
--- tried again with a new token, or nil and an Unauthorized error.
---@param src table
---@param res table
---@param sent string|nil
---@return true|nil
---@return table|nil err
function M.answer(src, res, sent)
  local st = state_of(src)
  local challenge = M.challenge(res.headers["www-authenticate"])
  local what = ("MCP server '%s' answered HTTP %d"):format(src.name, res.status)
  local ok, why
  if res.status == 403 then
    if challenge.error ~= "insufficient_scope" then return fail(what .. ": forbidden") end
    -- step up: the scopes it names, beside those held
    local scopes, seen = {}, {}
    for s in ((st.tokens and st.tokens.scope or "") .. " " .. (challenge.scope or "")):gmatch("%S+") do
      if not seen[s] then scopes[#scopes + 1], seen[s] = s, true end
    end
    ok, why = once(src, st, authorize_now, challenge, #scopes > 0 and table.concat(scopes, " ") or nil)
  else
    -- a token the server refused: refreshed if it can be (and not by
    -- another request meanwhile: a request sent before the token it now
    -- has, or with none, goes again with it), else the person is asked again
    if st.tokens and sent ~= "Bearer " .. st.tokens.access_token then return true end
    if sent and st.tokens and st.tokens.refresh_token then
      ok = once(src, st, refresh)
      if ok then return true end
    end
    ok, why = once(src, st, authorize_now, challenge)
  end
  if not ok then return fail(("%s; its OAuth authorization failed: %s"):format(what, why or "unknown")) end
  return true
end

--- The error for a 401 of a source without `oauth`: what the server asks.
---@param src table
---@param res table
---@return nil
---@return table err
function M.unconfigured(src, res)
  local c = M.challenge(res.headers["www-authenticate"])
  return fail(("MCP server '%s' answered HTTP 401: it wants OAuth authorization%s; give the source "
    .. "oauth = { authorize = function(url) ... end }"):format(src.name,
    c.resource_metadata and (" (its metadata: " .. c.resource_metadata .. ")") or ""))
end

return M
