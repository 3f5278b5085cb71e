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
--- impersonates a service account with that when the file says so; the
--- subject token may also be an AWS workload's (a GetCallerIdentity request
--- signed with the keys of the environment or the instance metadata
--- service, as google-auth's aws module signs it) or what an executable
--- prints (google-auth's pluggable credentials: only where
--- GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1). Not followed: external
--- accounts whose token comes from a certificate (mutual TLS), and
--- workforce identity's authorized users (give `token` a function).
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
-- or a URL, as text or a field of JSON, an AWS workload's signed request
-- or an executable's answer; or nil and why.
local aws_subject, executable_subject
local function subject_token(c, path, env)
  local cs = c.credential_source
  if type(cs) ~= "table" then return nil, path .. " has no credential_source" end
  if cs.environment_id ~= nil then return aws_subject(cs, c, path, env) end
  if cs.executable ~= nil then return executable_subject(cs.executable, c, path, env) end
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
    local kind = cs.certificate and "a certificate" or "an unknown source"
    return nil, ("%s takes its subject token from %s, which tide does not take (a file, a URL, AWS and an "
      .. "executable are): give `token` a function"):format(path, kind)
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

-- ------------------------------------------------------------ from AWS --

-- One request to the instance metadata service (the URLs the file names):
-- the body, or nil and why.
local function imds(request, what)
  request.timeout_ms = 10000
  local res, err = base._fetch(request, {})
  if not res then return nil, what .. ": " .. tostring(err and err.message or err) end
  if res.status ~= 200 then return nil, ("%s: HTTP %d"):format(what, res.status) end
  return res.body
end

-- The keys of an AWS workload, as google-auth finds them: the environment's
-- (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN if any),
-- else the instance role's from the metadata service; or nil and why.
local function aws_keys(cs, env, headers, path)
  local id, secret = env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")
  if id and secret then return { access_key_id = id, secret_access_key = secret, session_token = env("AWS_SESSION_TOKEN") } end
  if type(cs.url) ~= "string" then
    return nil, path .. "'s credential_source names no url for the AWS security credentials, and AWS_ACCESS_KEY_ID "
      .. "and AWS_SECRET_ACCESS_KEY are not set"
  end
  local role, why = imds({ url = cs.url, headers = headers }, "the AWS role name from " .. cs.url)
  role = role and role:match("^%s*(.-)%s*$")
  if not role or role == "" then return nil, why or ("the metadata service at " .. cs.url .. " names no AWS role") end
  local h = { ["content-type"] = "application/json" }
  for k, v in pairs(headers) do h[k] = v end
  local where = "the AWS security credentials from " .. cs.url
  local body
  body, why = imds({ url = cs.url .. "/" .. role, headers = h }, where)
  if not body then return nil, why end
  -- (the instance role's document, as the AWS chain reads it)
  local creds
  creds, why = require("tide.provider.aws_credentials")._from_document(body, where)
  return creds, not creds and why or nil
end

-- An AWS workload's subject token (credential_source environment_id
-- "aws1"): a request to AWS STS's GetCallerIdentity, signed (Signature
-- Version 4) but not sent, which Google's STS sends to verify who the
-- workload is. As google-auth builds it: the region from AWS_REGION,
-- AWS_DEFAULT_REGION or the metadata service's availability zone (its
-- last letter cut); an IMDSv2 session token first when the file names its
-- URL and the environment lacks the region or the keys; the headers,
-- x-goog-cloud-target-resource (the audience) among the signed ones as
-- Google's documentation and its Go and Java libraries sign it (Python's
-- adds it unsigned), serialized as JSON with sorted keys and
-- percent-encoded.
aws_subject = function(cs, c, path, env)
  local version = type(cs.environment_id) == "string" and cs.environment_id:match("^aws(%d+)$")
  if not version or type(cs.regional_cred_verification_url) ~= "string" then
    return nil, path .. "'s credential_source is no AWS source tide knows (environment_id \"aws1\" and a "
      .. "regional_cred_verification_url)"
  end
  if tonumber(version) ~= 1 then
    return nil, ("%s's credential_source is AWS version %s; tide reads version 1"):format(path, version)
  end
  for _, k in ipairs { "url", "region_url", "imdsv2_session_token_url" } do
    if cs[k] ~= nil and type(cs[k]) ~= "string" then return nil, ("%s's credential_source.%s must be a string"):format(path, k) end
  end
  local region = env("AWS_REGION") or env("AWS_DEFAULT_REGION")
  local headers = {}
  if cs.imdsv2_session_token_url and not (region and env("AWS_ACCESS_KEY_ID") and env("AWS_SECRET_ACCESS_KEY")) then
    local token, why = imds({ method = "PUT", url = cs.imdsv2_session_token_url,
      headers = { ["x-aws-ec2-metadata-token-ttl-seconds"] = "300" } }, "the AWS session token from "
      .. cs.imdsv2_session_token_url)
    if not token then return nil, why end
    headers["x-aws-ec2-metadata-token"] = token
  end
  if not region then
    if not cs.region_url then
      return nil, path .. ": no AWS region (AWS_REGION, AWS_DEFAULT_REGION, or the credential_source's region_url)"
    end
    local zone, why = imds({ url = cs.region_url, headers = headers }, "the AWS region from " .. cs.region_url)
    if not zone then return nil, why end
    region = zone:sub(1, -2) -- (us-east-2b: us-east-2)
  end
  local keys, why = aws_keys(cs, env, headers, path)
  if not keys then return nil, why end
  local aws = require "tide.provider.aws"
  local url = cs.regional_cred_verification_url:gsub("{region}", region)
  local scheme, authority = url:match("^(%a+)://([^/?#]+)")
  if scheme ~= "https" then return nil, path .. "'s regional_cred_verification_url must be an https URL" end
  local host = aws.host_of(scheme, authority)
  local target = { ["x-goog-cloud-target-resource"] = c.audience }
  local signed = aws.sign("POST", url, target, "", keys, region, host:match("^[^.:]+"))
  local list = { { key = "Authorization", value = signed.authorization }, { key = "host", value = host },
    { key = "x-amz-date", value = signed["x-amz-date"] } }
  if signed["x-amz-security-token"] then
    list[#list + 1] = { key = "x-amz-security-token", value = signed["x-amz-security-token"] }
  end
  list[#list + 1] = { key = "x-goog-cloud-target-resource", value = c.audience }
  -- (Python's json.dumps writes "/" as it is, and urllib's quote keeps it)
  local doc = json.canonical({ url = url, method = "POST", headers = list }):gsub("\\/", "/")
  return (base._percent_encode(doc):gsub("%%2F", "/"))
end

-- ---------------------------------------------------- from an executable --

local EXECUTABLE_TOKEN = {
  ["urn:ietf:params:oauth:token-type:jwt"] = "id_token",
  ["urn:ietf:params:oauth:token-type:id_token"] = "id_token",
  ["urn:ietf:params:oauth:token-type:saml2"] = "saml_response",
}

-- The subject token in an executable's answer (version 1 of google-auth's
-- format), or nil and why; `stale` when it is good but expired or has no
-- expiry (a cached answer is then not used).
local function executable_answer(doc, what)
  if type(doc) ~= "table" then return nil, what .. " is not a JSON object" end
  if type(doc.version) ~= "number" then return nil, what .. " has no version" end
  if doc.version > 1 then return nil, ("%s has version %s; tide reads version 1"):format(what, tostring(doc.version)) end
  if type(doc.success) ~= "boolean" then return nil, what .. " has no success field" end
  if not doc.success then
    if doc.code == nil or doc.message == nil then return nil, what .. " is unsuccessful without a code and message" end
    return nil, ("%s is unsuccessful: code %s, message %s"):format(what, tostring(doc.code), tostring(doc.message))
  end
  if type(doc.expiration_time) == "number" and doc.expiration_time < os.time() then
    return nil, what .. " holds an expired token", true
  end
  local field = EXECUTABLE_TOKEN[doc.token_type]
  if not field then return nil, ("%s has the token type %s, which tide does not take"):format(what, tostring(doc.token_type)) end
  if type(doc[field]) ~= "string" or doc[field] == "" then return nil, ("%s has no %s"):format(what, field) end
  return doc[field], nil, doc.expiration_time == nil
end

-- An executable's subject token (google-auth's pluggable credentials):
-- allowed only by GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1; the cached
-- answer in `output_file` while it holds an unexpired token, else the
-- command (split at spaces, no shell) run with this process's environment
-- and the GOOGLE_EXTERNAL_ACCOUNT_* variables, within `timeout_millis`
-- (5 to 120 s, 30 by default); its answer on standard output, else in
-- `output_file`.
executable_subject = function(x, c, path, env)
  if env("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES") ~= "1" then
    return nil, path .. " takes its subject token from an executable, which runs only where "
      .. "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES is 1"
  end
  if type(x) ~= "table" or type(x.command) ~= "string" or not x.command:find("%S") then
    return nil, path .. "'s credential_source.executable has no command"
  end
  local timeout = x.timeout_millis
  if timeout ~= nil and (math.type(timeout) ~= "integer" or timeout < 5000 or timeout > 120000) then
    return nil, path .. "'s credential_source.executable.timeout_millis must be between 5000 and 120000"
  end
  if x.output_file ~= nil and type(x.output_file) ~= "string" then
    return nil, path .. "'s credential_source.executable.output_file must be a string"
  end
  local what = "the executable of " .. path
  if x.output_file then
    local text = read_file(x.output_file)
    local ok, doc = pcall(json.decode, text or "")
    local token, _, stale = executable_answer(ok and doc or nil, "")
    if token and not stale then return token end
  end
  local argv = {}
  for word in x.command:gmatch("%S+") do argv[#argv + 1] = word end
  local vars = core.environ()
  local account = type(c.service_account_impersonation_url) == "string"
    and c.service_account_impersonation_url:match("/serviceAccounts/([^/:]+):generateAccessToken$")
  vars.GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE = c.audience
  vars.GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE = c.subject_token_type
  vars.GOOGLE_EXTERNAL_ACCOUNT_ID = account or ""
  vars.GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE = "0"
  vars.GOOGLE_EXTERNAL_ACCOUNT_REVOKE = "0"
  vars.GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL = account or nil
  vars.GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE = x.output_file
  local status, out, stderr = base._run({ argv = argv, env = vars }, timeout or 30000)
  if not status then return nil, what .. " cannot be run: " .. tostring(out and out.message or out) end
  if status ~= 0 then
    -- (standard error only: what it printed may hold the token)
    return nil, ("%s failed (exit %d)%s"):format(what, status, stderr ~= "" and (": " .. stderr:gsub("%s+$", "")) or "")
  end
  if not out:find("%S") and x.output_file then out = read_file(x.output_file) or "" end
  local ok, doc = pcall(json.decode, out)
  local token, why = executable_answer(ok and doc or nil, what .. "'s answer")
  return token, why
end

local STS_URL = "https://sts.googleapis.com/v1/token"

-- An external account: its subject token traded at Google's STS (RFC
-- 8693), then the service account impersonated when the file names one.
local function from_external(c, path, env)
  for _, k in ipairs { "audience", "subject_token_type" } do
    if type(c[k]) ~= "string" then return nil, path .. " has no " .. k end
  end
  local bad = not_strings(c, { "token_url", "client_id", "client_secret", "workforce_pool_user_project",
    "service_account_impersonation_url" })
  if bad then return nil, ("%s's %s must be a string"):format(path, bad) end
  local subject, why = subject_token(c, path, env)
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

local function from_impersonated(c, path, env)
  local src = c.source_credentials
  if type(src) ~= "table" or not SOURCES[src.type] then
    return nil, ("%s has source credentials of type %q, which tide does not take (authorized_user and "
      .. "service_account are)"):format(path, tostring(type(src) == "table" and src.type or nil))
  end
  local url = c.service_account_impersonation_url
  local principal = principal_of(url)
  if not principal then return nil, path .. "'s service_account_impersonation_url names no service account" end
  local token, why = from_info(src, path .. "'s source credentials", env)
  if not token then return nil, why end
  return impersonate(url, token, c.delegates, 3600, "the impersonation of " .. principal)
end

-- An access token from a credentials file's JSON (path for messages).
local function from_file(text, path, env)
  local ok, c = pcall(json.decode, text)
  if not ok or type(c) ~= "table" then return nil, path .. " is not a JSON credentials file" end
  return from_info(c, path, env)
end

from_info = function(c, path, env)
  if c.token_uri ~= nil and type(c.token_uri) ~= "string" then return nil, path .. "'s token_uri must be a string" end
  if c.type == "impersonated_service_account" then return from_impersonated(c, path, env) end
  if c.type == "external_account" then return from_external(c, path, env) end
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
      local token, ttl = from_file(text, path, env)
      if not token then error(ttl, 0) end
      return token, ttl
    end
    local dir = env("CLOUDSDK_CONFIG") or (env("HOME") and env("HOME") .. "/.config/gcloud")
    local well_known = dir and dir .. "/application_default_credentials.json"
    local text = well_known and read_file(well_known)
    if text then
      local token, ttl = from_file(text, well_known, env)
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
