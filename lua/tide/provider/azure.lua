--- tide.provider.azure: Microsoft Entra ID tokens as azure-identity's
--- DefaultAzureCredential finds them, for Azure OpenAI and Claude on
--- Microsoft Foundry when no key is given.
---
--- In DefaultAzureCredential's order: the environment's service principal
--- (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET: the client
--- credentials grant); workload identity (AKS: AZURE_FEDERATED_TOKEN_FILE,
--- the file's token as the client assertion); managed identity (App Service
--- and Functions: IDENTITY_ENDPOINT and IDENTITY_HEADER; elsewhere the
--- instance metadata service, a user-assigned identity by AZURE_CLIENT_ID);
--- the Azure CLI's login (`az account get-access-token`); the Azure
--- Developer CLI's (`azd auth token`). The environment's service principal
--- proves itself with AZURE_CLIENT_SECRET, or with the certificate of
--- AZURE_CLIENT_CERTIFICATE_PATH (PEM: its key signs a JWT assertion, as
--- MSAL signs one). Each gives a token for the resource's scope and the
--- seconds it lasts; the provider's token machinery renews it a minute
--- before. A CLI that fails lets the chain go on, as inside
--- DefaultAzureCredential. Not followed: Visual Studio Code and PowerShell
--- logins, PKCS#12 certificates (give `token` a function).
local core = require "tide.core"
local json = require "tide.json"
local base = require "tide.provider.base"

local M = {}

--- The scopes of the services tide calls.
M.COGNITIVE_SERVICES = "https://cognitiveservices.azure.com/.default" -- Azure OpenAI
M.AI_FOUNDRY = "https://ai.azure.com/.default" -- Microsoft Foundry

local IMDS = "http://169.254.169.254"
local IMDS_TIMEOUT_MS = 1000 -- (DefaultAzureCredential's probe is as short)

-- azure-core's RetryPolicy statuses (408, 429 and the 5xx but 501 and 505)
local TRANSIENT = { [408] = true, [429] = true, [500] = true, [502] = true, [503] = true, [504] = true }
-- the instance metadata service's: also 404 and 410 (updating), all 5xx
local IMDS_TRANSIENT = { [404] = true, [410] = true, [429] = true }
for status = 500, 599 do IMDS_TRANSIENT[status] = true end

--- How requests for a token are sent again after a transient failure, as
--- azure-identity sends them (tide.provider.base._fetch's policies; a
--- program may tune them). `token_endpoint` (Entra ID's, and App
--- Service's identity endpoint): azure-core's RetryPolicy, four tries
--- 0.8, 1.6 and 3.2 s apart (or as Retry-After says), after a 408, 429,
--- 500, 502, 503 or 504 or no response. `imds`: ManagedIdentityCredential's
--- (backoff factor 0.8 since azure-identity 1.16), six tries 0.8 s
--- doubling, after a 404, 410, 429 or 5xx or no response; but an instance
--- metadata service that does not answer the first (a second's probe) is
--- not there (not on Azure), and the chain goes on.
M.retry = {
  token_endpoint = { attempts = 4, delay_ms = 800, max_delay_ms = 120000, statuses = TRANSIENT, errors = true,
    retry_after = true },
  imds = { attempts = 6, delay_ms = 800, max_delay_ms = 60000, statuses = IMDS_TRANSIENT, errors = true, probe = true,
    retry_after = true },
}

local function http(opts, policy)
  local res, err = base._fetch(opts, policy)
  if not res then return nil, tostring(err and err.message or err), err end
  return res
end

local form, token_of = base._form, base._access_token

-- The Entra ID authority: AZURE_AUTHORITY_HOST as azure-identity reads it
-- (its constants have no scheme: "login.microsoftonline.us" is https), or
-- nil and why for one that is not https (a client secret never goes out in
-- the clear; plain http only to this machine's loopback, where nothing
-- leaves it).
local LOOPBACK = { ["127.0.0.1"] = true, ["localhost"] = true, ["[::1]"] = true }
local function authority_host(env)
  local host = (env("AZURE_AUTHORITY_HOST") or "https://login.microsoftonline.com"):gsub("/+$", "")
  local scheme = host:match("^(%a[%w+.-]*)://")
  if not scheme then return "https://" .. host end
  local name = host:match("^[^:]+://(%b[])") or host:match("^[^:]+://([^/:]*)")
  scheme = scheme:lower()
  if scheme == "https" or (scheme == "http" and LOOPBACK[name:lower()]) then return host end
  return nil, "AZURE_AUTHORITY_HOST must be an https URL, got " .. host
end

-- The client credentials grant at the tenant's token endpoint, with the
-- secret or the federated token as the client's proof.
local function client_credentials(env, scope, proof, what)
  local authority, aerr = authority_host(env)
  if not authority then return nil, what .. ": " .. aerr end
  local fields = { { "grant_type", "client_credentials" }, { "client_id", env("AZURE_CLIENT_ID") }, { "scope", scope } }
  for _, kv in ipairs(proof) do fields[#fields + 1] = kv end
  local res, err = http({ method = "POST", url = ("%s/%s/oauth2/v2.0/token"):format(authority, env("AZURE_TENANT_ID")),
    headers = { ["content-type"] = "application/x-www-form-urlencoded" }, body = form(fields), timeout_ms = 10000 },
    M.retry.token_endpoint)
  if not res then return nil, what .. ": " .. err end
  return token_of(res, what)
end

-- A random UUID (version 4), a JWT's jti.
local function uuid4()
  local r = math.random
  return ("%08x-%04x-4%03x-%04x-%06x%06x"):format(r(0, 0xffffffff), r(0, 0xffff), r(0, 0xfff),
    0x8000 | r(0, 0x3fff), r(0, 0xffffff), r(0, 0xffffff))
end

-- The client assertion a certificate proves a service principal with, as
-- MSAL makes it: a JWT for the token endpoint, RS256 by the certificate's
-- key, the certificate's SHA-1 thumbprint as x5t (and the certificate
-- certificates, the chain, as x5c when asked); or nil and why.
local function certificate_assertion(env, path, token_url)
  local pem = base._read_file(path)
  if not pem then return nil, "cannot be read" end
  local cert = pem:match("%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-(.-)%-%-%-%-%-END CERTIFICATE%-%-%-%-%-")
  if not cert then
    if not pem:find("-----BEGIN", 1, true) then
      return nil, "is not PEM (a PKCS#12 file? `openssl pkcs12 -in cert.pfx -out cert.pem -nodes` makes one)"
    end
    return nil, "holds no certificate (PEM with the private key and the certificate)"
  end
  cert = cert:gsub("%s", "")
  local der = core.base64_decode(cert)
  if not der then return nil, "holds a certificate that is not base64" end
  local b64url, id, now = base._base64url, env("AZURE_CLIENT_ID"), os.time()
  local header = { alg = "RS256", typ = "JWT", x5t = b64url(core.sha1(der)) }
  if (env("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN") or ""):lower() == "true" or env("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN") == "1" then
    -- every certificate of the file, the leaf first (what MSAL sends)
    local chain = {}
    for c in pem:gmatch("%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-(.-)%-%-%-%-%-END CERTIFICATE%-%-%-%-%-") do
      chain[#chain + 1] = (c:gsub("%s", ""))
    end
    header.x5c = chain
  end
  local claims = { aud = token_url, iss = id, sub = id, jti = uuid4(), iat = now, nbf = now, exp = now + 600 }
  local signing = b64url(json.canonical(header)) .. "." .. b64url(json.canonical(claims))
  local sig, why = core.rsa_sha256_sign(pem, signing, env("AZURE_CLIENT_CERTIFICATE_PASSWORD"))
  if not sig then return nil, "has a private key tide cannot sign with (" .. why .. ")" end
  return signing .. "." .. b64url(sig)
end

local sources = {}

function sources.environment(env, scope)
  if not (env("AZURE_TENANT_ID") and env("AZURE_CLIENT_ID")) then return nil end
  if env("AZURE_CLIENT_SECRET") then
    return client_credentials(env, scope, { { "client_secret", env("AZURE_CLIENT_SECRET") } },
      "the service principal of AZURE_CLIENT_ID")
  end
  local path = env("AZURE_CLIENT_CERTIFICATE_PATH")
  if not path then return nil end
  local what = "the certificate of AZURE_CLIENT_CERTIFICATE_PATH"
  local authority, aerr = authority_host(env)
  if not authority then return nil, what .. ": " .. aerr end
  local assertion, why = certificate_assertion(env, path,
    ("%s/%s/oauth2/v2.0/token"):format(authority, env("AZURE_TENANT_ID")))
  if not assertion then return nil, ("%s (%s) %s"):format(what, path, why) end
  return client_credentials(env, scope, {
    { "client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" },
    { "client_assertion", assertion } }, "the service principal of AZURE_CLIENT_ID (its certificate)")
end

function sources.workload_identity(env, scope)
  local file = env("AZURE_FEDERATED_TOKEN_FILE")
  if not (file and env("AZURE_TENANT_ID") and env("AZURE_CLIENT_ID")) then return nil end
  local assertion = base._read_file(file)
  if not assertion or assertion == "" then return nil, "the federated token file " .. file .. " cannot be read" end
  return client_credentials(env, scope, {
    { "client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" },
    { "client_assertion", (assertion:gsub("%s+$", "")) } }, "the workload identity of AZURE_CLIENT_ID")
end

function sources.managed_identity(env, scope)
  local resource = scope:gsub("/%.default$", "")
  local client = env("AZURE_CLIENT_ID")
  local endpoint, header = env("IDENTITY_ENDPOINT"), env("IDENTITY_HEADER")
  if endpoint and header then -- App Service, Functions
    local res, err = http({ url = endpoint .. "?api-version=2019-08-01&resource=" .. base._percent_encode(resource)
      .. (client and ("&client_id=" .. base._percent_encode(client)) or ""),
      headers = { ["x-identity-header"] = header }, timeout_ms = 10000 }, M.retry.token_endpoint)
    if not res then return nil, "App Service's managed identity: " .. err end
    return token_of(res, "App Service's managed identity")
  end
  local host = (env("AZURE_POD_IDENTITY_AUTHORITY_HOST") or IMDS):gsub("/+$", "")
  local res, why, err = http({ url = host .. "/metadata/identity/oauth2/token?api-version=2018-02-01&resource="
    .. base._percent_encode(resource) .. (client and ("&client_id=" .. base._percent_encode(client)) or ""),
    headers = { metadata = "true" }, timeout_ms = IMDS_TIMEOUT_MS }, M.retry.imds)
  if not res then
    -- (it answered before: there, but failing)
    if err and err.attempts > 1 then return nil, "the managed identity: " .. why end
    return nil -- (not on Azure)
  end
  if res.status == 400 then return nil end -- (no identity assigned: the chain goes on, as azure-identity's does)
  return token_of(res, "the managed identity")
end

-- The environment a CLI runs with: its own settings and what reaching
-- Entra ID through a proxy or a private CA takes (azure-identity passes
-- the whole environment; the chain's `env` may be a program's own view).
local CLI_ENV = { "HOME", "AZURE_CONFIG_DIR", "AZD_CONFIG_DIR", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
  "http_proxy", "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR" }
local function cli_env(env, extra)
  local out = { PATH = env("PATH") or "/usr/bin:/bin" }
  for _, k in ipairs(CLI_ENV) do out[k] = env(k) end
  for k, v in pairs(extra or {}) do out[k] = v end
  return out
end

function sources.azure_cli(env, scope)
  local status, out, stderr = base._run({ argv = { "az", "account", "get-access-token", "--output", "json", "--scope",
    scope }, env = cli_env(env) }, 10000)
  if not status then return nil end -- (no az)
  if status ~= 0 then
    local why = stderr:match("ERROR: ([^\r\n]+)")
    if why and why:find("az login", 1, true) then return nil end -- (installed, not logged in)
    return nil, "the Azure CLI failed" .. (why and (": " .. why) or ""), true
  end
  local ok, doc = pcall(json.decode, out)
  if not ok or type(doc) ~= "table" or type(doc.accessToken) ~= "string" then
    return nil, "the Azure CLI gave no access token", true
  end
  local until_ = math.tointeger(tonumber(doc.expires_on))
  if not until_ and type(doc.expiresOn) == "string" then
    -- (az before 2.54 gives only expiresOn, in local time)
    local y, mo, d, h, mi, sec = doc.expiresOn:match("^(%d+)%-(%d+)%-(%d+) (%d+):(%d+):(%d+)")
    if y then
      until_ = os.time { year = tonumber(y), month = tonumber(mo), day = tonumber(d), hour = tonumber(h),
        min = tonumber(mi), sec = tonumber(sec) }
    end
  end
  return doc.accessToken, until_ and until_ - os.time() or nil
end

-- The Azure Developer CLI's token (`azd auth token`, its expiresOn in UTC).
function sources.azure_developer_cli(env, scope)
  local argv = { "azd", "auth", "token", "--output", "json", "--scope", scope }
  if env("AZURE_TENANT_ID") then
    argv[#argv + 1], argv[#argv + 2] = "--tenant-id", env("AZURE_TENANT_ID")
  end
  local status, out, stderr = base._run({ argv = argv, env = cli_env(env, { NO_COLOR = "true" }) }, 10000)
  if not status then return nil end -- (no azd)
  if status ~= 0 then
    if stderr:find("azd auth login", 1, true) then return nil end -- (installed, not logged in)
    local why = stderr:gsub('"token": "[^"]*"', '"token": "****"'):match("^%s*([^\r\n]+)")
    return nil, "the Azure Developer CLI failed" .. (why and (": " .. why) or ""), true
  end
  local ok, doc = pcall(json.decode, out)
  local until_ = ok and type(doc) == "table" and base._epoch(doc.expiresOn)
  if not (until_ and type(doc.token) == "string" and doc.token ~= "") then
    return nil, "the Azure Developer CLI gave no access token", true
  end
  return doc.token, until_ - os.time()
end

local ORDER = { "environment", "workload_identity", "managed_identity", "azure_cli", "azure_developer_cli" }

--- DefaultAzureCredential's chain, as a `token` function for `scope`: a
--- token and the seconds it lasts, or an error saying why there is none.
---@param env fun(name:string):string|nil
---@param scope string
---@return fun():(string, integer|nil)
function M.default_credential(env, scope)
  return function()
    local failed = {}
    for _, name in ipairs(ORDER) do
      local token, ttl, go_on = sources[name](env, scope)
      if token then return token, ttl end
      if ttl and not go_on then error(ttl, 0) end -- there, but it failed: the chain stops
      if ttl then failed[#failed + 1] = ttl end -- (a CLI's failure: the next may have a token)
    end
    if #failed > 0 then error(table.concat(failed, "; "), 0) end
    error("no Microsoft Entra ID credentials found (AZURE_CLIENT_SECRET or a certificate, a workload identity, a "
      .. "managed identity, the Azure CLI and the Azure Developer CLI have none)", 0)
  end
end

return M
