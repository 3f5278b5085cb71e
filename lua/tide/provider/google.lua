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
--- renews a minute before. Not followed: external accounts (workload
--- identity federation) and impersonation (give `token` a function).
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

-- base64url without padding (RFC 7515's, for a JWT)
local function b64url(s)
  return (core.base64(s):gsub("[+/=]", { ["+"] = "-", ["/"] = "_", ["="] = "" }))
end

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

-- An access token from a credentials file's JSON (path for messages).
local function from_file(text, path)
  local ok, c = pcall(json.decode, text)
  if not ok or type(c) ~= "table" then return nil, path .. " is not a JSON credentials file" end
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
  return nil, ("%s has credentials of type %q, which tide does not take (authorized_user and service_account "
    .. "are)"):format(path, tostring(c.type))
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
