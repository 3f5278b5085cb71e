--- tide.provider.google: Google's Application Default Credentials, the
--- access token Claude on Vertex AI is called with when none is given.
---
--- The chain google-auth follows, in this order: the JSON file
--- GOOGLE_APPLICATION_CREDENTIALS names; gcloud's well-known file
--- (`gcloud auth application-default login`:
--- $CLOUDSDK_CONFIG/application_default_credentials.json, else
--- ~/.config/gcloud/); the metadata server of the machine (Compute Engine,
--- GKE, Cloud Run: GCE_METADATA_HOST elsewhere). A file of type
--- "authorized_user" trades its refresh token at Google's token endpoint;
--- one of type "service_account" signs a JWT (RS256, with OpenSSL:
--- core.rsa_sha256_sign) and trades that. Each gives an access token and
--- the seconds it lasts (an hour), which the provider's token machinery
--- renews a minute before. One of type "impersonated_service_account"
--- (`gcloud auth application-default login
--- --impersonate-service-account`) gets its source's token first, then
--- the service account's from IAM's generateAccessToken. One of type
--- "external_account" (workload identity federation: GitHub Actions, AWS,
--- Azure, any OIDC or SAML provider) reads its subject token from a file
--- or a URL, trades it at Google's STS (RFC 8693 token exchange), and
--- impersonates a service account with that when the file says so. Not
--- followed: external accounts whose token comes from an executable, AWS's
--- metadata or a certificate, and workforce identity's authorized users
--- (give `token` a function for those).
local core = require "tide.core"
local json = require "tide.json"
local base = require "tide.provider.base"

local M = {}

M.SCOPE = "https://www.googleapis.com/auth/cloud-platform"
M.TOKEN_URI = "https://oauth2.googleapis.com/token"
local METADATA_HOST = "metadata.google.internal"

local read_file, form = base._read_file, base._form

-- google-auth's retryable statuses (transport.DEFAULT_RETRYABLE_STATUS_CODES)
local RETRYABLE = { [408] = true, [429] = true, [500] = true, [503] = true, [504] = true }
-- and the OAuth errors it tries again whatever the status (RFC 6749's)
local RETRYABLE_ERRORS = { internal_failure = true, server_error = true, temporarily_unavailable = true }

--- How requests for a token are sent again after a transient failure, as
--- google-auth sends them (tide.provider.base._fetch's policies; a program
--- may tune them). `token_endpoint`: three tries, about 1 and 2 s apart
--- (±10 %), after a 408, 429, 500, 503 or 504 or an OAuth error
--- internal_failure, server_error or temporarily_unavailable (a request
--- that got no response is not tried again, as google-auth does not).
--- `metadata`: five tries, about 1, 2, 4 and 8 s apart, after those
--- statuses or no response; but a metadata server that does not answer
--- the first is not there (not on Google Cloud), and the chain ends then.
M.retry = {
  token_endpoint = { attempts = 3, delay_ms = 1000, jitter = 0.1, statuses = RETRYABLE,
    retry_if = function(res)
      local ok, doc = pcall(json.decode, res.body)
      return ok and type(doc) == "table" and (RETRYABLE_ERRORS[doc.error] or RETRYABLE_ERRORS[doc.error_description])
        or false
    end },
  metadata = { attempts = 5, delay_ms = 1000, jitter = 0.1, statuses = RETRYABLE, errors = true, probe = true },
}

local b64url = base._base64url

-- POSTs a form to a token endpoint: the access token and its seconds, or
-- nil and why.
local function trade(uri, body, what)
  local res, err = base._fetch({ method = "POST", url = uri, body = body, timeout_ms = 10000,
    headers = { ["content-type"] = "application/x-www-form-urlencoded" } }, M.retry.token_endpoint)
  if not res then return nil, what .. ": " .. tostring(err and err.message or err) end
  return base._access_token(res, what)
end

--- The signed JWT a service account trades for an access token (RFC 7523),
--- for `scope`, issued at `now`; or nil and why.
---@param account table the service account's JSON key, decoded
---@param now integer seconds since the epoch
---@return string|nil
---@return string|nil err
function M.assertion(account, now)
  local header = json.canonical({ alg = "RS256", typ = "JWT", kid = account.private_key_id })
  local claims = json.canonical({ iss = account.client_email, scope = M.SCOPE,
    aud = account.token_uri or M.TOKEN_URI, iat = now, exp = now + 3600 })
  local signing = b64url(header) .. "." .. b64url(claims)
  local sig, why = core.rsa_sha256_sign(account.private_key, signing)
  if not sig then return nil, why end
  return signing .. "." .. b64url(sig)
end

-- A Google API error's words ({ error = { message } }, or OAuth's
-- { error, error_description }), or nil.
local function api_error(body)
  local ok, doc = pcall(json.decode, body)
  if not (ok and type(doc) == "table") then return nil end
  local e = doc.error
  local why = type(e) == "table" and e.message or doc.error_description or e
  return type(why) == "string" and why:match("^[^\r\n]*") or nil
end

-- IAM's generateAccessToken for the service account `url` names
-- (.../serviceAccounts/{email}:generateAccessToken), called with the
-- source's token: the account's token and its seconds, or nil and why.
-- (One try, as google-auth's impersonated credentials make.)
local function impersonate(url, source_token, delegates, lifetime, what)
  local body = { scope = { M.SCOPE }, lifetime = ("%ds"):format(lifetime or 3600) }
  if type(delegates) == "table" and #delegates > 0 then body.delegates = delegates end
  local res, err = base._fetch({ method = "POST", url = url, timeout_ms = 10000, body = json.canonical(body),
    headers = { authorization = "Bearer " .. source_token, ["content-type"] = "application/json" } }, {})
  if not res then return nil, what .. ": " .. tostring(err and err.message or err) end
  local ok, doc = pcall(json.decode, res.body)
  if res.status ~= 200 or not ok or type(doc) ~= "table" or type(doc.accessToken) ~= "string" then
    local why = api_error(res.body)
    return nil, ("%s: HTTP %d%s"):format(what, res.status, why and (" (" .. why .. ")") or "")
  end
  local until_ = base._epoch(doc.expireTime)
  return doc.accessToken, until_ and until_ - os.time() or nil
end

-- The service account an impersonation URL names, or nil.
local function principal_of(url)
  return type(url) == "string" and url:match("/serviceAccounts/([^/:]+):generateAccessToken$") or nil
end

-- The first of `keys` that `c` holds as something other than a string, or
-- nil: a credentials file's optional fields, checked before use.
local function not_strings(c, keys)
  for _, k in ipairs(keys) do
    if c[k] ~= nil and type(c[k]) ~= "string" then return k end
  end
  return nil
end

-- An external account's subject token: from its credential source, a file
-- or a URL, as text or a field of JSON; or nil and why.
local function subject_token(cs, path)
  if type(cs) ~= "table" then return nil, path .. " has no credential_source" end
  -- (as google-auth checks it: one source, a format it knows)
  if cs.file ~= nil and cs.url ~= nil then
    return nil, path .. "'s credential_source names both a file and a URL: it must name one"
  end
  local format = type(cs.format) == "table" and cs.format or {}
  if format.type ~= nil and format.type ~= "text" and format.type ~= "json" then
    return nil, ("%s's credential_source has the format %q (text and json are)"):format(path, tostring(format.type))
  end
  if format.type == "json" and type(format.subject_token_field_name) ~= "string" then
    return nil, path .. "'s credential_source is json but names no subject_token_field_name"
  end
  local text, where
  if type(cs.file) == "string" then
    where = "the subject token file " .. cs.file
    text = read_file(cs.file)
    if not text then return nil, where .. " cannot be read" end
  elseif type(cs.url) == "string" then
    where = "the subject token URL " .. cs.url
    local headers = {}
    for k, v in pairs(type(cs.headers) == "table" and cs.headers or {}) do headers[tostring(k):lower()] = tostring(v) end
    local res, err = base._fetch({ url = cs.url, headers = headers, timeout_ms = 10000 }, {})
    if not res then return nil, where .. ": " .. tostring(err and err.message or err) end
    if res.status ~= 200 then return nil, ("%s: HTTP %d"):format(where, res.status) end
    text = res.body
  else
    local kind = cs.executable and "an executable" or cs.environment_id and "AWS" or cs.certificate
      and "a certificate" or "an unknown source"
    return nil, ("%s takes its subject token from %s, which tide does not take (a file and a URL are): give "
      .. "`token` a function"):format(path, kind)
  end
  if format.type == "json" then
    local ok, doc = pcall(json.decode, text)
    local field = format.subject_token_field_name
    local token = ok and type(doc) == "table" and type(field) == "string" and doc[field]
    if type(token) ~= "string" or token == "" then
      return nil, ("%s has no %q field"):format(where, tostring(field))
    end
    return token
  end
  text = text:gsub("%s+$", "")
  if text == "" then return nil, where .. " is empty" end
  return text
end

local STS_URL = "https://sts.googleapis.com/v1/token"

-- An external account: its subject token traded at Google's STS (RFC
-- 8693), then the service account impersonated when the file names one.
local function from_external(c, path)
  for _, k in ipairs { "audience", "subject_token_type" } do
    if type(c[k]) ~= "string" then return nil, path .. " has no " .. k end
  end
  local bad = not_strings(c, { "token_url", "client_id", "client_secret", "workforce_pool_user_project",
    "service_account_impersonation_url" })
  if bad then return nil, ("%s's %s must be a string"):format(path, bad) end
  local subject, why = subject_token(c.credential_source, path)
  if not subject then return nil, why end
  local fields = { { "grant_type", "urn:ietf:params:oauth:grant-type:token-exchange" }, { "audience", c.audience },
    { "scope", M.SCOPE }, { "requested_token_type", "urn:ietf:params:oauth:token-type:access_token" },
    { "subject_token", subject }, { "subject_token_type", c.subject_token_type } }
  -- a workforce pool's user project, unless a client authenticates (as
  -- google-auth: its options quoted once as JSON, then form-encoded)
  if type(c.workforce_pool_user_project) == "string" and not c.client_id then
    fields[#fields + 1] = { "options", base._percent_encode(json.canonical { userProject = c.workforce_pool_user_project }) }
  end
  local headers = { ["content-type"] = "application/x-www-form-urlencoded" }
  if type(c.client_id) == "string" then -- OAuth client authentication, basic
    headers.authorization = "Basic " .. core.base64(c.client_id .. ":" .. (c.client_secret or ""))
  end
  local what = "the token exchange of " .. path
  local res, err = base._fetch({ method = "POST", url = c.token_url or STS_URL, headers = headers,
    body = form(fields), timeout_ms = 10000 }, {})
  if not res then return nil, what .. ": " .. tostring(err and err.message or err) end
  local token, ttl = base._access_token(res, what)
  if not token or not c.service_account_impersonation_url then return token, ttl end
  local url = c.service_account_impersonation_url
  if not principal_of(url) then return nil, path .. "'s service_account_impersonation_url names no service account" end
  local opts = type(c.service_account_impersonation) == "table" and c.service_account_impersonation or {}
  return impersonate(url, token, nil, math.tointeger(opts.token_lifetime_seconds),
    "the impersonation of " .. principal_of(url))
end

-- An access token from a credentials file's JSON, decoded (path for messages).
local from_info

-- The credential types an impersonated service account's source may be.
local SOURCES = { authorized_user = true, service_account = true }

local function from_impersonated(c, path)
  local src = c.source_credentials
  if type(src) ~= "table" or not SOURCES[src.type] then
    return nil, ("%s has source credentials of type %q, which tide does not take (authorized_user and "
      .. "service_account are)"):format(path, tostring(type(src) == "table" and src.type or nil))
  end
  local url = c.service_account_impersonation_url
  local principal = principal_of(url)
  if not principal then return nil, path .. "'s service_account_impersonation_url names no service account" end
  local token, why = from_info(src, path .. "'s source credentials")
  if not token then return nil, why end
  return impersonate(url, token, c.delegates, 3600, "the impersonation of " .. principal)
end

-- An access token from a credentials file's JSON (path for messages).
local function from_file(text, path)
  local ok, c = pcall(json.decode, text)
  if not ok or type(c) ~= "table" then return nil, path .. " is not a JSON credentials file" end
  return from_info(c, path)
end

from_info = function(c, path)
  if c.token_uri ~= nil and type(c.token_uri) ~= "string" then return nil, path .. "'s token_uri must be a string" end
  if c.type == "impersonated_service_account" then return from_impersonated(c, path) end
  if c.type == "external_account" then return from_external(c, path) end
  if c.type == "authorized_user" then
    for _, k in ipairs { "client_id", "client_secret", "refresh_token" } do
      if type(c[k]) ~= "string" then return nil, path .. " has no " .. k end
    end
    return trade(c.token_uri or M.TOKEN_URI, form { { "grant_type", "refresh_token" }, { "client_id", c.client_id },
      { "client_secret", c.client_secret }, { "refresh_token", c.refresh_token } }, "the refresh token of " .. path)
  end
  if c.type == "service_account" then
    for _, k in ipairs { "client_email", "private_key" } do
      if type(c[k]) ~= "string" then return nil, path .. " has no " .. k end
    end
    local jwt, why = M.assertion(c, os.time())
    if not jwt then return nil, "the private key of " .. path .. ": " .. why end
    return trade(c.token_uri or M.TOKEN_URI, form { { "grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer" },
      { "assertion", jwt } }, "the service account of " .. path)
  end
  return nil, ("%s has credentials of type %q, which tide does not take (authorized_user, service_account, "
    .. "impersonated_service_account and external_account are)"):format(path, tostring(c.type))
end

local function from_metadata(env)
  local host = env("GCE_METADATA_HOST") or METADATA_HOST
  local res, err = base._fetch({ url = "http://" .. host
    .. "/computeMetadata/v1/instance/service-accounts/default/token", timeout_ms = 3000,
    headers = { ["metadata-flavor"] = "Google" } }, M.retry.metadata)
  if not res then
    -- (it answered before: a server that is there but failed)
    if err and err.attempts > 1 then return nil, "the metadata server: " .. tostring(err.message) end
    return nil -- (not on Google Cloud)
  end
  return base._access_token(res, "the metadata server")
end

--- The chain as a `token` function: an access token and the seconds it
--- lasts, or an error saying why there is none. `env` reads the
--- environment (os.getenv's rules).
---@param env fun(name:string):string|nil
---@return fun():(string, integer|nil)
function M.adc(env)
  return function()
    local path = env("GOOGLE_APPLICATION_CREDENTIALS")
    if path then
      local text = read_file(path)
      if not text then error("GOOGLE_APPLICATION_CREDENTIALS names " .. path .. ", which cannot be read", 0) end
      local token, ttl = from_file(text, path)
      if not token then error(ttl, 0) end
      return token, ttl
    end
    local dir = env("CLOUDSDK_CONFIG") or (env("HOME") and env("HOME") .. "/.config/gcloud")
    local well_known = dir and dir .. "/application_default_credentials.json"
    local text = well_known and read_file(well_known)
    if text then
      local token, ttl = from_file(text, well_known)
      if not token then error(ttl, 0) end
      return token, ttl
    end
    local token, ttl = from_metadata(env)
    if token then return token, ttl end
    error(ttl or "no Google credentials found (GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default "
      .. "credentials and the metadata server have none)", 0)
  end
end

return M
