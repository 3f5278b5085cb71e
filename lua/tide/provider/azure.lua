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
--- the Azure CLI's login (`az account get-access-token`). Each gives a
--- token for the resource's scope and the seconds it lasts; the provider's
--- token machinery renews it a minute before. Not followed: certificates,
--- Visual Studio Code, PowerShell and azd logins (give `token` a function).
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

-- The client credentials grant at the tenant's token endpoint, with the
-- secret or the federated token as the client's proof.
local function client_credentials(env, scope, proof, what)
  local authority = (env("AZURE_AUTHORITY_HOST") or "https://login.microsoftonline.com"):gsub("/+$", "")
  local fields = { { "grant_type", "client_credentials" }, { "client_id", env("AZURE_CLIENT_ID") }, { "scope", scope } }
  for _, kv in ipairs(proof) do fields[#fields + 1] = kv end
  local res, err = http({ method = "POST", url = ("%s/%s/oauth2/v2.0/token"):format(authority, env("AZURE_TENANT_ID")),
    headers = { ["content-type"] = "application/x-www-form-urlencoded" }, body = form(fields), timeout_ms = 10000 },
    M.retry.token_endpoint)
  if not res then return nil, what .. ": " .. err end
  return token_of(res, what)
end

local sources = {}

function sources.environment(env, scope)
  if not (env("AZURE_TENANT_ID") and env("AZURE_CLIENT_ID") and env("AZURE_CLIENT_SECRET")) then return nil end
  return client_credentials(env, scope, { { "client_secret", env("AZURE_CLIENT_SECRET") } },
    "the service principal of AZURE_CLIENT_ID")
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

function sources.azure_cli(env, scope)
  local status, out, stderr = base._run({ argv = { "az", "account", "get-access-token", "--output", "json", "--scope",
    scope }, env = { PATH = env("PATH") or "/usr/bin:/bin", HOME = env("HOME"), AZURE_CONFIG_DIR = env("AZURE_CONFIG_DIR") } },
    10000)
  if not status then return nil end -- (no az)
  if status ~= 0 then
    local why = stderr:match("ERROR: ([^\r\n]+)")
    if why and why:find("az login", 1, true) then return nil end -- (installed, not logged in)
    return nil, "the Azure CLI failed" .. (why and (": " .. why) or "")
  end
  local ok, doc = pcall(json.decode, out)
  if not ok or type(doc) ~= "table" or type(doc.accessToken) ~= "string" then
    return nil, "the Azure CLI gave no access token"
  end
  local until_ = math.tointeger(tonumber(doc.expires_on))
  return doc.accessToken, until_ and until_ - os.time() or nil
end

local ORDER = { "environment", "workload_identity", "managed_identity", "azure_cli" }

--- DefaultAzureCredential's chain, as a `token` function for `scope`: a
--- token and the seconds it lasts, or an error saying why there is none.
---@param env fun(name:string):string|nil
---@param scope string
---@return fun():(string, integer|nil)
function M.default_credential(env, scope)
  return function()
    for _, name in ipairs(ORDER) do
      local token, ttl = sources[name](env, scope)
      if token then return token, ttl end
      if ttl then error(ttl, 0) end -- there, but it failed: the chain stops
    end
    error("no Microsoft Entra ID credentials found (AZURE_CLIENT_SECRET, a workload identity, a managed identity "
      .. "and the Azure CLI have none)", 0)
  end
end

return M
