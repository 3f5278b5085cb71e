--- tide.provider.aws_credentials: where AWS credentials come from when
--- none are given, as botocore's default chain finds them (its names are
--- also tide.provider.aws.chain, .retry and .epoch).
---
--- In botocore's order: the environment's keys (AWS_ACCESS_KEY_ID,
--- AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN); then the profile (the one
--- given, else AWS_PROFILE, AWS_DEFAULT_PROFILE or "default") of the shared
--- config file (AWS_CONFIG_FILE or ~/.aws/config) and credentials file
--- (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials): a role assumed at
--- STS (`role_arn` with `source_profile`, itself any profile, or
--- `credential_source`), a web identity token (AWS_WEB_IDENTITY_TOKEN_FILE
--- and AWS_ROLE_ARN, or the profile's `web_identity_token_file`, traded at
--- STS's AssumeRoleWithWebIdentity), IAM Identity Center (`sso_session` or
--- `sso_start_url`: the token `aws sso login` left in ~/.aws/sso/cache,
--- renewed with its refresh token, traded at the SSO portal for the role's
--- credentials), the credentials file's keys, an `aws login` session
--- (`login_session`: the credentials AWS Sign-In left in ~/.aws/login/cache,
--- renewed with its refresh token and a DPoP proof), a
--- `credential_process`, the config file's keys; then the container's
--- endpoint (ECS tasks, EKS Pod Identity) and the EC2 instance's metadata
--- service (IMDSv2). The first source that is there answers; one that is
--- there and fails stops the chain, as in botocore. A role whose profile
--- has `mfa_serial` is assumed with a code the caller's `mfa_code`
--- function gives, asked each time the role is assumed, as the Go SDK asks
--- its TokenProvider (botocore prompts once and refuses to renew such
--- credentials: a long-running process would stop an hour in).
local core = require "tide.core"
local json = require "tide.json"
local base = require "tide.provider.base"

local M = {}

-- tide.provider.aws loads this module; this one asks for it only when it
-- runs (the checker, the environment's keys, the signer).
local function aws() return require "tide.provider.aws" end

local ECS_HOST = "http://169.254.170.2"
local IMDS_HOST = "http://169.254.169.254"

-- The error codes STS answers a request worth sending again with (HTTP 400
-- and the code in its XML): botocore's throttling codes, and
-- IDPCommunicationError (the identity provider did not answer STS).
local STS_TRANSIENT = { Throttling = true, ThrottlingException = true, ThrottledException = true,
  RequestThrottledException = true, TooManyRequestsException = true, RequestLimitExceeded = true,
  LimitExceededException = true, IDPCommunicationError = true }

-- The code and message of an AWS query API's XML error, if it is one.
local function xml_error(body)
  local code = body:match("<Code>%s*([^<]-)%s*</Code>")
  return code, code and body:match("<Message>%s*([^<]-)%s*</Message>")
end

--- How the chain's requests are sent again after a transient failure, as
--- botocore sends them (tide.provider.base._fetch's policies; a program
--- may tune them). `sts` (and the SSO portal and token service): five
--- tries (botocore's legacy mode, its default; AWS_MAX_ATTEMPTS, or
--- AWS_RETRY_MODE standard or adaptive for three, change it), a random
--- share of 1, 2, 4, 8 s between, after a 5xx, a 429, a throttling code,
--- IDPCommunicationError or no response. `container`: three tries a second
--- apart, after anything but a 200 with credentials. The instance metadata
--- service is tried AWS_METADATA_SERVICE_NUM_ATTEMPTS times (1 unless
--- set), each limited to AWS_METADATA_SERVICE_TIMEOUT seconds (1 unless
--- set), with no wait.
M.retry = {
  sts = { attempts = 5, delay_ms = 1000, max_delay_ms = 20000, jitter = "full", errors = true,
    statuses = { [429] = true, [500] = true, [502] = true, [503] = true, [504] = true },
    retry_if = function(res) return res.status == 400 and STS_TRANSIENT[xml_error(res.body) or ""] == true end },
  container = { attempts = 3, delay_ms = 1000, multiplier = 1, errors = true },
}

-- The statuses IMDSv2's token request ends with (any other is tried again).
local TOKEN_ANSWERS = { [200] = true, [400] = true, [403] = true, [404] = true, [405] = true }

-- A positive integer from the environment variable `name`, or nil.
local function env_count(env, name)
  local n = math.tointeger(tonumber(env(name) or ""))
  return n and n > 0 and n or nil
end

-- The STS policy as the environment sets it (AWS_MAX_ATTEMPTS, AWS_RETRY_MODE).
local function sts_policy(env)
  local mode = (env("AWS_RETRY_MODE") or ""):lower()
  local attempts = env_count(env, "AWS_MAX_ATTEMPTS") or ((mode == "standard" or mode == "adaptive") and 3) or nil
  if not attempts then return M.retry.sts end
  return setmetatable({ attempts = attempts }, { __index = M.retry.sts })
end

--- Seconds since the epoch of an ISO 8601 UTC time, or nil
--- (tide.provider.base._epoch).
M.epoch = base._epoch

-- The seconds left until an ISO 8601 time, or nil.
local function seconds_until(iso)
  local t = M.epoch(iso)
  return t and math.max(0, t - os.time()) or nil
end

-- Checked credentials, or nil and why (`what` names where they came from).
local function checked(creds, what)
  local why = aws().check(creds)
  if why then return nil, what .. "'s credentials " .. why end
  return creds
end

-- Credentials from a JSON document of the container or instance endpoint
-- ({ AccessKeyId, SecretAccessKey, Token, Expiration }): creds and the
-- seconds they last, or nil and why.
local function from_document(body, where)
  local ok, doc = pcall(json.decode, body)
  if not ok or type(doc) ~= "table" or type(doc.AccessKeyId) ~= "string" or type(doc.SecretAccessKey) ~= "string" then
    return nil, where .. " answered no credentials"
  end
  local creds, why = checked({ access_key_id = doc.AccessKeyId, secret_access_key = doc.SecretAccessKey,
    session_token = type(doc.Token) == "string" and doc.Token ~= "" and doc.Token or nil }, where)
  if not creds then return nil, why end
  return creds, seconds_until(doc.Expiration)
end
M._from_document = from_document -- (Google's AWS-sourced federation reads the same document)

-- The response to `request` (sent again as `policy` says) when it is a
-- 2xx, or nil and why (an AWS error's code and message when it has one).
local function fetch(request, policy)
  local res, err = base._fetch(request, policy or {})
  if not res then return nil, tostring(err and err.message or err) end
  if res.status < 200 or res.status > 299 then
    local code, message = xml_error(res.body)
    if not code then -- the SSO services answer JSON: { message } or { error, error_description }
      local ok, doc = pcall(json.decode, res.body)
      if ok and type(doc) == "table" then
        code, message = doc.error or doc.__type, doc.message or doc.error_description
        code, message = type(code) == "string" and code or nil, type(message) == "string" and message or nil
      end
    end
    local why = "HTTP " .. res.status .. (code and (" " .. code) or "") .. (message and (": " .. message) or "")
    return nil, why, res
  end
  return res
end

-- The body of a 2xx response, or nil and why.
local function get(request, policy)
  local res, why = fetch(request, policy)
  return res and res.body, why
end

local read_file = base._read_file

-- ---------------------------------------------------------- shared config

-- An AWS shared config or credentials file as { [section] = { key = value } }:
-- botocore's reading (configparser's): `#` and `;` lines are comments, `=`
-- or `:` separates a key (lower-cased) from its value (trimmed); a line
-- indented deeper than the option above continues its value, or after
-- `key =` is a nested setting (s3's), kept out of the profile.
local function parse_ini(text)
  local sections, current, nested = {}, nil, false
  local last_indent -- the indent of the option line above, when there is one
  for line in text:gmatch("[^\r\n]+") do
    local name = line:match("^%[%s*(.-)%s*%]%s*$")
    if name then
      current = sections[name] or {}
      sections[name], nested, last_indent = current, false, nil
    elseif current and not line:match("^%s*[#;]") and not line:match("^%s*$") then
      local indent = #line:match("^%s*")
      if last_indent and indent > last_indent then
        -- indented below an option (as configparser reads it): a value's
        -- continuation, joined with a newline, or an empty value's nested
        -- settings ("s3 =" and its lines), which tide has no use for
        if not nested then
          local last = current._last
          if last then current[last] = current[last] .. "\n" .. line:match("^%s*(.-)%s*$") end
        end
      else
        local k, v = line:match("^%s*([^=:]-)%s*[=:]%s*(.-)%s*$")
        if k and k ~= "" then
          k = k:lower()
          nested, last_indent = v == "", indent
          if not nested then current[k], current._last = v, k else current._last = nil end
        end
      end
    end
  end
  for _, s in pairs(sections) do s._last = nil end
  return sections
end

-- The shared files' settings: `profiles` (the config file's [default] and
-- [profile name] sections), `credentials` (the credentials file's
-- sections), `sso_sessions` ([sso-session name]) and the paths.
local function load_config(env)
  local home = env("HOME")
  -- (a path given as ~/... is under HOME, as botocore expands it)
  local function path(var, default)
    local p = env(var)
    if p and home and (p == "~" or p:sub(1, 2) == "~/") then p = home .. p:sub(2) end
    return p or (home and home .. default)
  end
  local cfg = { profiles = {}, credentials = {}, sso_sessions = {},
    config_path = path("AWS_CONFIG_FILE", "/.aws/config"),
    credentials_path = path("AWS_SHARED_CREDENTIALS_FILE", "/.aws/credentials") }
  local text = cfg.config_path and read_file(cfg.config_path)
  if text then
    for name, s in pairs(parse_ini(text)) do
      if name == "default" then
        cfg.profiles.default = s
      elseif name:match("^profile%s") then
        -- (a name with spaces is quoted, as the AWS CLI writes it)
        local pname = name:match("^profile%s+(.-)$")
        pname = pname:match('^"(.*)"$') or pname:match("^'(.*)'$") or pname
        cfg.profiles[pname] = s
      elseif name:match("^sso%-session%s") then
        cfg.sso_sessions[name:match("^sso%-session%s+(.-)$")] = s
      end
    end
  end
  text = cfg.credentials_path and read_file(cfg.credentials_path)
  if text then cfg.credentials = parse_ini(text) end
  return cfg
end
M._load_config = load_config -- (for the specs)

-- A profile's settings, the credentials file's over the config file's (as
-- botocore merges them), or nil when neither file has it.
local function profile_of(cfg, name)
  local p, c = cfg.profiles[name], cfg.credentials[name]
  if not (p or c) then return nil end
  local out = {}
  for k, v in pairs(p or {}) do out[k] = v end
  for k, v in pairs(c or {}) do out[k] = v end
  return out
end

--- The profile a program uses: `name`, else AWS_PROFILE, else
--- AWS_DEFAULT_PROFILE, else "default".
---@param env fun(name:string):string|nil
---@param name? string
---@return string
function M.profile_name(env, name)
  return name or env("AWS_PROFILE") or env("AWS_DEFAULT_PROFILE") or "default"
end

--- The region of the profile's config (`region`), or nil: where a
--- program that sets no AWS_REGION runs, as the SDKs read it.
---@param env fun(name:string):string|nil
---@param name? string the profile (M.profile_name's)
---@return string|nil
function M.profile_region(env, name)
  local p = profile_of(load_config(env), M.profile_name(env, name))
  return p and p.region ~= "" and p.region or nil
end

-- Static keys of a section: creds, or nil (none), or nil and why.
local function keys_of(s, what)
  if not (s and s.aws_access_key_id) then return nil end
  local token = s.aws_session_token or s.aws_security_token
  return checked({ access_key_id = s.aws_access_key_id, secret_access_key = s.aws_secret_access_key,
    session_token = token ~= "" and token or nil }, what)
end

-- ------------------------------------------------------------ STS calls

-- The credentials of an STS AssumeRole* answer (XML) and the seconds they
-- last, or nil and why.
local function from_sts(body, action)
  local function tag(name) return body:match("<" .. name .. ">%s*([^<]-)%s*</" .. name .. ">") end
  local creds = { access_key_id = tag("AccessKeyId"), secret_access_key = tag("SecretAccessKey"),
    session_token = tag("SessionToken") }
  if aws().check(creds) then return nil, "STS " .. action .. " answered no credentials" end
  return creds, seconds_until(tag("Expiration"))
end

-- STS's URL for `region` (AWS_ENDPOINT_URL_STS or AWS_ENDPOINT_URL first).
local function sts_url(env, region)
  local url = env("AWS_ENDPOINT_URL_STS") or env("AWS_ENDPOINT_URL")
    or ("https://sts.%s.amazonaws.com"):format(region or "us-east-1")
  return url:gsub("/+$", "") .. "/"
end

-- A session name as botocore makes one when the profile names none.
local function session_name(given)
  return given or ("botocore-session-" .. os.time())
end

local q = base._percent_encode

-- AssumeRoleWithWebIdentity (unsigned): creds, ttl or nil, why.
local function web_identity(env, region, file, role, name)
  local token = read_file(file)
  if not token or token == "" then return nil, "the web identity token file " .. file .. " cannot be read" end
  local body, err = get({ method = "POST", url = sts_url(env, region), timeout_ms = 10000,
    headers = { ["content-type"] = "application/x-www-form-urlencoded" },
    body = "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=" .. q(role) .. "&RoleSessionName="
      .. q(session_name(name)) .. "&WebIdentityToken=" .. q(token:gsub("%s+$", "")) }, sts_policy(env))
  if not body then return nil, "STS AssumeRoleWithWebIdentity failed: " .. err end
  return from_sts(body, "AssumeRoleWithWebIdentity")
end

-- AssumeRole, signed with `source` (SigV4 for the service sts in `region`):
-- creds, ttl or nil, why.
local function assume_role(env, region, source, p, profile, token_code)
  region = p.region or region or "us-east-1"
  local url = sts_url(env, region)
  local form = "Action=AssumeRole&Version=2011-06-15&RoleArn=" .. q(p.role_arn) .. "&RoleSessionName="
    .. q(session_name(p.role_session_name))
  if p.external_id then form = form .. "&ExternalId=" .. q(p.external_id) end
  if p.duration_seconds then form = form .. "&DurationSeconds=" .. q(p.duration_seconds) end
  if token_code then form = form .. "&SerialNumber=" .. q(p.mfa_serial) .. "&TokenCode=" .. q(token_code) end
  local headers = { ["content-type"] = "application/x-www-form-urlencoded; charset=utf-8" }
  local signed = aws().sign("POST", url, headers, form, source, region, "sts")
  for k, v in pairs(signed) do headers[k] = v end
  local body, err = get({ method = "POST", url = url, headers = headers, body = form, timeout_ms = 10000 },
    sts_policy(env))
  if not body then return nil, ("STS AssumeRole of the profile %q failed: %s"):format(profile, err) end
  return from_sts(body, "AssumeRole")
end

-- ------------------------------------------------------------- the sources

-- The sources, each (env, ctx) -> creds, seconds | nil (not there) | nil,
-- why (there, but failed: the chain stops, as the SDKs do). ctx: the
-- shared files (`cfg`), the profile's name and settings, STS's region.
local sources = {}

function sources.environment(env)
  local creds = aws().from_env(env)
  if not creds then return nil end
  return checked(creds, "the environment")
end

-- Each setting from the environment, else the profile (botocore's
-- AssumeRoleWithWebIdentityProvider reads them one by one): a token file
-- without a role ARN is a configuration error, not an absent source.
function sources.web_identity(env, ctx)
  local p = ctx.profile or {}
  local function setting(key, var) return env(var) or p[key] end
  local file = setting("web_identity_token_file", "AWS_WEB_IDENTITY_TOKEN_FILE")
  if not file then return nil end
  local role = setting("role_arn", "AWS_ROLE_ARN")
  if not role then
    return nil, "a web identity token file is set (AWS_WEB_IDENTITY_TOKEN_FILE or web_identity_token_file) but no "
      .. "role to assume with it (AWS_ROLE_ARN or role_arn)"
  end
  return web_identity(env, ctx.region, file, role, setting("role_session_name", "AWS_ROLE_SESSION_NAME"))
end

-- The SSO token `aws sso login` cached for a session (or a legacy start
-- URL): its file and contents, renewed by sso-oidc's CreateToken when it
-- runs out within 15 minutes and the file holds a refresh token, as
-- botocore's SSOTokenProvider does (the renewed token is written back, so
-- that the CLI sees it too). token or nil and why.
local REFRESH_WINDOW_S = 15 * 60

local function sso_token(env, s, profile)
  local key = s.session or s.sso_start_url
  local home = env("HOME")
  local path = home and ("%s/.aws/sso/cache/%s.json"):format(home, aws().hex(core.sha1(key)))
  local login = ("run `aws sso login --profile %s`"):format(profile)
  local text = path and read_file(path)
  if not text then return nil, ("no SSO token for %s in ~/.aws/sso/cache: %s"):format(key, login) end
  local ok, t = pcall(json.decode, text)
  if not ok or type(t) ~= "table" or type(t.accessToken) ~= "string" or not M.epoch(t.expiresAt) then
    return nil, ("the SSO token cache %s is not a token: %s"):format(path, login)
  end
  local left = M.epoch(t.expiresAt) - os.time()
  if s.session and left < REFRESH_WINDOW_S and type(t.refreshToken) == "string" and type(t.clientId) == "string"
    and type(t.clientSecret) == "string" and (M.epoch(t.registrationExpiresAt) or 0) > os.time() then
    local url = (env("AWS_ENDPOINT_URL_SSO_OIDC") or env("AWS_ENDPOINT_URL")
      or ("https://oidc.%s.amazonaws.com"):format(s.sso_region)):gsub("/+$", "") .. "/token"
    local res = fetch({ method = "POST", url = url, timeout_ms = 10000,
      headers = { ["content-type"] = "application/json" },
      body = json.encode { grantType = "refresh_token", clientId = t.clientId, clientSecret = t.clientSecret,
        refreshToken = t.refreshToken } }, sts_policy(env))
    local ok2, doc = pcall(json.decode, res and res.body or "")
    if ok2 and type(doc) == "table" and type(doc.accessToken) == "string" and math.tointeger(doc.expiresIn) then
      t.accessToken = doc.accessToken
      t.expiresAt = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + doc.expiresIn)
      if type(doc.refreshToken) == "string" then t.refreshToken = doc.refreshToken end
      left = doc.expiresIn
      -- written whole or not at all (a reader never sees half a file), and
      -- for its owner's eyes only, as botocore writes it
      core.write_private(path, json.encode(t))
    end
    -- (a refresh that failed leaves the token as it was, as botocore does)
  end
  if left <= 0 then return nil, ("the SSO session %s has expired: %s"):format(key, login) end
  return t.accessToken
end

function sources.sso(env, ctx)
  local p = ctx.profile
  if not (p and (p.sso_account_id or p.sso_role_name)) then return nil end
  local s = { session = p.sso_session, sso_start_url = p.sso_start_url, sso_region = p.sso_region }
  if p.sso_session then
    local sess = ctx.cfg.sso_sessions[p.sso_session]
    if not sess then return nil, ('the sso-session "%s" of the profile "%s" does not exist'):format(p.sso_session,
      ctx.name) end
    for _, k in ipairs { "sso_start_url", "sso_region" } do
      if p[k] and sess[k] and p[k] ~= sess[k] then
        return nil, ('the profile "%s" and its sso-session disagree on %s'):format(ctx.name, k)
      end
      s[k] = sess[k] or p[k]
    end
  end
  local missing = {}
  for _, k in ipairs { "sso_role_name", "sso_account_id" } do if not p[k] then missing[#missing + 1] = k end end
  for _, k in ipairs { "sso_start_url", "sso_region" } do if not s[k] then missing[#missing + 1] = k end end
  if #missing > 0 then
    return nil, ('the profile "%s" is configured to use SSO but is missing required configuration: %s')
      :format(ctx.name, table.concat(missing, ", "))
  end
  local token, why = sso_token(env, s, ctx.name)
  if not token then return nil, why end
  local url = (env("AWS_ENDPOINT_URL_SSO") or env("AWS_ENDPOINT_URL")
    or ("https://portal.sso.%s.amazonaws.com"):format(s.sso_region)):gsub("/+$", "")
    .. "/federation/credentials?account_id=" .. q(p.sso_account_id) .. "&role_name=" .. q(p.sso_role_name)
  local res, err = fetch({ url = url, timeout_ms = 10000, headers = { ["x-amz-sso_bearer_token"] = token } },
    sts_policy(env))
  if not res then
    if err:match("^HTTP 401") then
      return nil, ("the SSO session of the profile %q is no longer valid: run `aws sso login --profile %s`")
        :format(ctx.name, ctx.name)
    end
    return nil, "the SSO portal's GetRoleCredentials failed: " .. err
  end
  local ok, doc = pcall(json.decode, res.body)
  local rc = ok and type(doc) == "table" and doc.roleCredentials
  if type(rc) ~= "table" then return nil, "the SSO portal answered no role credentials" end
  local creds, cwhy = checked({ access_key_id = rc.accessKeyId, secret_access_key = rc.secretAccessKey,
    session_token = rc.sessionToken }, "the SSO portal")
  if not creds then return nil, cwhy end
  local ms = math.tointeger(rc.expiration)
  return creds, ms and math.max(0, ms // 1000 - os.time()) or nil
end

-- ------------------------------------------------------------ aws login --

-- An `aws login` session's cached token (AWS Sign-In): the file, the
-- decoded token, or nil and why. As botocore and the Rust SDK read it:
-- AWS_LOGIN_CACHE_DIRECTORY or ~/.aws/login/cache, the file named by the
-- SHA-256 of the session's ARN.
local LOGIN_FIELDS = { "accessToken", "refreshToken", "dpopKey", "clientId" }
local ACCESS_FIELDS = { "accessKeyId", "secretAccessKey", "sessionToken", "accountId", "expiresAt" }

local function login_token(env, session)
  local home = env("HOME")
  local dir = env("AWS_LOGIN_CACHE_DIRECTORY")
  if dir and home and (dir == "~" or dir:sub(1, 2) == "~/") then dir = home .. dir:sub(2) end
  dir = dir or (home and home .. "/.aws/login/cache")
  local path = dir and ("%s/%s.json"):format(dir, aws().hex(core.sha256(session)))
  local text = path and read_file(path)
  if not text then
    return nil, ("no cached login session %s (in %s): run `aws login`"):format(session, dir or "~/.aws/login/cache")
  end
  local ok, t = pcall(json.decode, text)
  if not ok or type(t) ~= "table" then return nil, ("the login session cache %s is not JSON"):format(path) end
  local missing = {}
  for _, k in ipairs(LOGIN_FIELDS) do
    if t[k] == nil then missing[#missing + 1] = k end
  end
  if type(t.accessToken) == "table" then
    for _, k in ipairs(ACCESS_FIELDS) do
      if type(t.accessToken[k]) ~= "string" then missing[#missing + 1] = "accessToken." .. k end
    end
  end
  if #missing > 0 then
    return nil, ("the login session cache %s lacks %s: run `aws login`"):format(path, table.concat(missing, ", "))
  end
  return path, t
end

-- A DPoP proof (RFC 9449) for a POST to `url`, signed with the session's
-- key (ES256), its public key in the header, as AWS Sign-In asks; nil for
-- a key that is not a P-256 one.
local function dpop_proof(key_pem, url)
  local b64url = base._base64url
  local signed, x, y = core.es256_sign(key_pem, "") -- (its public point, for the header signed next)
  if not signed then return nil end
  local id = aws().hex(core.random_bytes(16))
  local header = ('{"typ":"dpop+jwt","alg":"ES256","jwk":{"kty":"EC","x":%s,"y":%s,"crv":"P-256"}}'):format(
    json.canonical(b64url(x)), json.canonical(b64url(y)))
  -- (jti: a random UUID, version 4)
  local jti = ("%s-%s-4%s-%x%s-%s"):format(id:sub(1, 8), id:sub(9, 12), id:sub(14, 16),
    8 + tonumber(id:sub(17, 17), 16) % 4, id:sub(18, 20), id:sub(21, 32))
  local payload = ('{"htm":"POST","htu":%s,"iat":%d,"jti":"%s"}'):format(
    json.canonical(url):gsub("\\/", "/"), os.time(), jti) -- (the URL's slashes as they are)
  local signing = b64url(header) .. "." .. b64url(payload)
  local sig = core.es256_sign(key_pem, signing)
  return signing .. "." .. b64url(sig)
end

-- AWS Sign-In's endpoint in `region`'s partition (botocore's rules).
local function signin_url(env, region)
  local url = env("AWS_ENDPOINT_URL_SIGNIN") or env("AWS_ENDPOINT_URL")
  if not url then
    local domain = region:match("^cn%-") and "signin.amazonaws.cn"
      or region:match("^us%-gov%-") and "signin.amazonaws-us-gov.com" or "signin.aws.amazon.com"
    url = ("https://%s.%s"):format(region, domain)
  end
  return url:gsub("/+$", "") .. "/v1/token"
end

-- What AWS Sign-In's AccessDeniedException means for the person at the
-- keyboard (the SDKs' words).
local LOGIN_DENIED = {
  TOKEN_EXPIRED = "the login session has expired: run `aws login` again",
  USER_CREDENTIALS_CHANGED = "the password changed since `aws login`: run it again",
  INSUFFICIENT_PERMISSIONS = "the login session may not renew itself (the signin:CreateOAuth2Token permission "
    .. "is missing)",
}

-- The credentials of an `aws login` session (a profile's `login_session`):
-- the cached ones while they last more than 5 minutes, else renewed at AWS
-- Sign-In's CreateOAuth2Token (the refresh token, a DPoP proof) and
-- written back, as botocore renews them. A renewal that fails leaves
-- credentials that have not run out in use.
local LOGIN_REFRESH_S = 5 * 60

function sources.login(env, ctx)
  local session = ctx.profile and ctx.profile.login_session
  if not session then return nil end
  local path, t = login_token(env, session)
  if not path then return nil, t end
  local a = t.accessToken
  local left = (M.epoch(a.expiresAt) or 0) - os.time()
  if left <= LOGIN_REFRESH_S then
    local why
    local url = ctx.region and signin_url(env, ctx.region)
    local proof = url and type(t.dpopKey) == "string" and dpop_proof(t.dpopKey, url)
    if not url then
      why = "no region to renew it in (AWS_REGION or the profile's region)"
    elseif not proof then
      why = "its dpopKey is not a P-256 EC private key"
    else
      local res, err = fetch({ method = "POST", url = url, timeout_ms = 10000,
        headers = { ["content-type"] = "application/json", dpop = proof },
        body = json.encode { clientId = t.clientId, grantType = "refresh_token", refreshToken = t.refreshToken } },
        sts_policy(env))
      local ok, doc = pcall(json.decode, res and res.body or "")
      local out = ok and type(doc) == "table" and doc
      local at = out and type(out.accessToken) == "table" and out.accessToken
      if at and type(at.accessKeyId) == "string" and type(at.secretAccessKey) == "string"
          and type(at.sessionToken) == "string" and math.tointeger(out.expiresIn) and type(out.refreshToken) == "string" then
        t.accessToken = { accessKeyId = at.accessKeyId, secretAccessKey = at.secretAccessKey,
          sessionToken = at.sessionToken, accountId = a.accountId,
          expiresAt = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + out.expiresIn) }
        t.refreshToken = out.refreshToken
        a, left = t.accessToken, out.expiresIn
        -- written whole, for its owner's eyes only, as the CLI writes it
        core.write_private(path, json.encode(t))
      else
        why = res and "AWS Sign-In answered no credentials"
          or LOGIN_DENIED[err and err:match("^HTTP %d+ ([%u_]+)")] or ("AWS Sign-In: " .. tostring(err))
      end
    end
    if why and left <= 0 then return nil, ("the login session %s cannot be renewed: %s"):format(session, why) end
  end
  local creds, cwhy = checked({ access_key_id = a.accessKeyId, secret_access_key = a.secretAccessKey,
    session_token = a.sessionToken }, "the login session " .. session)
  if not creds then return nil, cwhy end
  return creds, math.max(0, left)
end

function sources.shared_file(_, ctx)
  return keys_of(ctx.cfg.credentials[ctx.name], ("the profile %q of %s"):format(ctx.name, ctx.cfg.credentials_path))
end

-- A command line split as a POSIX shell splits words (botocore's
-- shlex.split): spaces separate, single quotes keep everything, double
-- quotes keep all but \" \\ \$ \`, a backslash outside quotes keeps the
-- next byte. nil and why for an unclosed quote.
local function split(line)
  local words, word, i, n = {}, nil, 1, #line
  while i <= n do
    local c = line:sub(i, i)
    if c:match("%s") then
      if word then words[#words + 1], word = word, nil end
    elseif c == "'" then
      local j = line:find("'", i + 1, true)
      if not j then return nil, "an unclosed ' quote" end
      word, i = (word or "") .. line:sub(i + 1, j - 1), j
    elseif c == '"' then
      word = word or ""
      i = i + 1
      while true do
        if i > n then return nil, 'an unclosed " quote' end
        local d = line:sub(i, i)
        if d == '"' then break end
        if d == "\\" and line:sub(i + 1, i + 1):match('["\\$`]') then i = i + 1; d = line:sub(i, i) end
        word, i = word .. d, i + 1
      end
    elseif c == "\\" then
      word, i = (word or "") .. line:sub(i + 1, i + 1), i + 1
    else
      word = (word or "") .. c
    end
    i = i + 1
  end
  if word then words[#words + 1] = word end
  return words
end
M._split = split -- (for the specs)

function sources.process(_, ctx)
  local p = ctx.profile
  local command = p and p.credential_process
  if not command then return nil end
  local what = ("the credential_process of the profile %q"):format(ctx.name)
  local argv, why = split(command)
  if not argv or #argv == 0 then return nil, what .. " is not a command" .. (why and (": " .. why) or "") end
  -- the program runs with this process's environment, as botocore's Popen does
  local status, out, stderr = base._run({ argv = argv }, 60000)
  if not status then return nil, what .. " cannot be run: " .. tostring(out and out.message or out) end
  if status ~= 0 then
    return nil, ("%s failed (exit %s)%s"):format(what, tostring(status),
      stderr ~= "" and (": " .. stderr:gsub("%s+$", "")) or "")
  end
  local ok, doc = pcall(json.decode, out)
  if not ok or type(doc) ~= "table" then return nil, what .. " printed no JSON" end
  if doc.Version ~= 1 then
    return nil, ("%s printed Version %s; the credential process format is Version 1"):format(what, tostring(doc.Version))
  end
  local creds, cwhy = checked({ access_key_id = doc.AccessKeyId, secret_access_key = doc.SecretAccessKey,
    session_token = type(doc.SessionToken) == "string" and doc.SessionToken ~= "" and doc.SessionToken or nil }, what)
  if not creds then return nil, cwhy end
  return creds, seconds_until(doc.Expiration)
end

function sources.config_file(_, ctx)
  return keys_of(ctx.cfg.profiles[ctx.name], ("the profile %q of %s"):format(ctx.name, ctx.cfg.config_path))
end

-- The hosts a full container URI may name over plain HTTP (botocore's:
-- loopback, ECS's and EKS Pod Identity's link-local addresses).
local CONTAINER_HOSTS = { ["127.0.0.1"] = true, localhost = true, ["[::1]"] = true, ["169.254.170.2"] = true,
  ["169.254.170.23"] = true, ["[fd00:ec2::23]"] = true }

function sources.container(env)
  local rel, full = env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"), env("AWS_CONTAINER_CREDENTIALS_FULL_URI")
  local url
  if rel then
    url = ECS_HOST .. rel
  elseif full then
    local scheme, host = full:match("^(%a+)://(%b[])")
    if not scheme then scheme, host = full:match("^(%a+)://([^/:]+)") end
    if not (scheme == "https" or (scheme == "http" and (CONTAINER_HOSTS[host] or (host or ""):match("^127%.")))) then
      return nil, "AWS_CONTAINER_CREDENTIALS_FULL_URI must be https or a loopback or container address"
    end
    url = full
  else
    return nil
  end
  local headers = {}
  local token_file = env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
  local token = token_file and read_file(token_file) or env("AWS_CONTAINER_AUTHORIZATION_TOKEN")
  if token then headers["authorization"] = (token:gsub("%s+$", "")) end
  -- botocore tries again after anything but credentials: a failed
  -- transfer, another status, a document without them
  local what = "the container credentials endpoint"
  local policy = setmetatable({ retry_if = function(res) return res.status ~= 200 or not from_document(res.body, what) end },
    { __index = M.retry.container })
  local body, err = get({ url = url, headers = headers, timeout_ms = 2000 }, policy)
  if not body then return nil, what .. " failed: " .. err end
  return from_document(body, what)
end

function sources.instance(env)
  if (env("AWS_EC2_METADATA_DISABLED") or ""):lower() == "true" then return nil end
  local imds = (env("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS_HOST):gsub("/+$", "")
  -- botocore's: as many tries as AWS_METADATA_SERVICE_NUM_ATTEMPTS says,
  -- each as long as AWS_METADATA_SERVICE_TIMEOUT, none waited for
  local timeout_ms = math.floor((tonumber(env("AWS_METADATA_SERVICE_TIMEOUT") or "") or 1) * 1000)
  local attempts = env_count(env, "AWS_METADATA_SERVICE_NUM_ATTEMPTS") or 1
  -- IMDSv2: a session token (a refused or unanswered PUT: not on EC2; 403,
  -- 404 and 405 say the same), then the role's name, then its credentials
  local token = get({ method = "PUT", url = imds .. "/latest/api/token", timeout_ms = timeout_ms,
    headers = { ["x-aws-ec2-metadata-token-ttl-seconds"] = "21600" } },
    { attempts = attempts, errors = true, retry_if = function(res) return not TOKEN_ANSWERS[res.status] end })
  if not token then return nil end -- (not on EC2)
  local h = { ["x-aws-ec2-metadata-token"] = token }
  local policy = { attempts = attempts, errors = true, retry_if = function(res) return res.status ~= 200 or res.body == "" end }
  local path = imds .. "/latest/meta-data/iam/security-credentials/"
  local roles, err = get({ url = path, headers = h, timeout_ms = timeout_ms }, policy)
  local role = roles and roles:match("^%s*([^\r\n]+)")
  if not role then return nil, "the instance has no IAM role" .. (err and (" (" .. err .. ")") or "") end
  local body
  body, err = get({ url = path .. role, headers = h, timeout_ms = timeout_ms }, policy)
  if not body then return nil, "the instance metadata service failed: " .. err end
  return from_document(body, "the instance metadata service")
end

-- A role's source, by its profile's credential_source (botocore's
-- canonical names).
local CREDENTIAL_SOURCES = { Environment = "environment", EcsContainer = "container",
  Ec2InstanceMetadata = "instance" }

-- What a profile that a role's source_profile names gives: its own role
-- (roles chain), else its web identity, SSO, keys or process, as
-- botocore's source profile chain looks. `seen` holds the profiles on the
-- way, so that a loop of source_profiles ends with a clear error.
local profile_credentials

function sources.assume_role(env, ctx, seen)
  local p = ctx.profile
  if not (p and p.role_arn) or p.web_identity_token_file then return nil end
  if not (p.source_profile or p.credential_source) then -- (botocore's PartialCredentialsError)
    return nil, ('the profile "%s" has a role_arn but neither source_profile nor credential_source to assume it '
      .. "with"):format(ctx.name)
  end
  if p.source_profile and p.credential_source then
    return nil, ('the profile "%s" has both source_profile and credential_source'):format(ctx.name)
  end
  if p.mfa_serial and not ctx.mfa then
    return nil, ('the profile "%s" needs an MFA code (mfa_serial): give the provider a function that returns '
      .. "the code of that device (tide.provider.bedrock's mfa_code, tide.provider.anthropic's bedrock.mfa_code), "
      .. "or credentials of your own"):format(ctx.name)
  end
  local source, why
  if p.credential_source then
    local name = CREDENTIAL_SOURCES[p.credential_source]
    if not name then
      return nil, ('the profile "%s" has the credential_source %q (Environment, EcsContainer and '
        .. "Ec2InstanceMetadata are)"):format(ctx.name, p.credential_source)
    end
    source, why = sources[name](env, ctx)
    if not source then
      return nil, why or ('the credential_source %s of the profile "%s" has no credentials'):format(
        p.credential_source, ctx.name)
    end
  else
    seen = seen or {}
    seen[ctx.name] = true
    local src = p.source_profile
    if src == ctx.name then -- (a profile may be its own source: its keys)
      source, why = keys_of(ctx.cfg.credentials[src] or ctx.cfg.profiles[src], ("the profile %q"):format(src))
    elseif seen[src] then
      return nil, ('the source_profile of "%s" leads back to "%s": a loop'):format(ctx.name, src)
    else
      source, why = profile_credentials(env, ctx.cfg, src, ctx.region, seen, ctx.mfa)
    end
    if not source then
      return nil, why or ('the source_profile "%s" of the profile "%s" has no credentials'):format(src, ctx.name)
    end
  end
  -- The code last, once the source answered: it lasts about 30 seconds.
  local code
  if p.mfa_serial then
    local ok, c = pcall(ctx.mfa, p.mfa_serial)
    if not ok then return nil, ('the mfa_code function failed for "%s": %s'):format(p.mfa_serial, tostring(c)) end
    if type(c) ~= "string" or not c:match("^%d%d%d%d%d%d$") then -- (STS's TokenCode: six digits)
      return nil, ('the mfa_code function gave no six-digit code for "%s"'):format(p.mfa_serial)
    end
    code = c
  end
  return assume_role(env, ctx.region, source, p, ctx.name, code)
end

profile_credentials = function(env, cfg, name, region, seen, mfa)
  local p = profile_of(cfg, name)
  if not p then return nil, ('the profile "%s" could not be found'):format(name) end
  local ctx = { cfg = cfg, name = name, profile = p, region = region, mfa = mfa }
  for _, source in ipairs { "assume_role", "web_identity_profile", "sso", "shared_file", "process", "config_file" } do
    local creds, why
    -- a source profile with keys of its own gives them, its own role
    -- unassumed (botocore's _resolve_credentials_from_profile)
    if source == "assume_role" and seen and p.aws_access_key_id then goto next_source end
    if source == "web_identity_profile" then -- (the profile's own, not the environment's)
      if p.web_identity_token_file and p.role_arn then
        creds, why = web_identity(env, region, p.web_identity_token_file, p.role_arn, p.role_session_name)
      end
    else
      creds, why = sources[source](env, ctx, seen)
    end
    if creds or why then return creds, why end
    ::next_source::
  end
  return nil
end

local ORDER = { "environment", "assume_role", "web_identity", "sso", "shared_file", "login", "process",
  "config_file", "container", "instance" }

-- The chain, run: creds and their seconds, or an error.
local function resolve(env, region, profile, mfa)
  local cfg = load_config(env)
  local name = M.profile_name(env, profile)
  local p = profile_of(cfg, name)
  -- a profile asked for by name must exist (botocore's ProfileNotFound)
  if not p and (profile or env("AWS_PROFILE") or env("AWS_DEFAULT_PROFILE")) then
    error(("the config profile (%s) could not be found"):format(name), 0)
  end
  local ctx = { cfg = cfg, name = name, profile = p, region = region or (p and p.region), mfa = mfa }
  for _, source in ipairs(ORDER) do
    -- (a profile named in code wins over the environment's keys, as
    -- boto3.Session(profile_name=...) has it)
    if source == "environment" and profile then goto next_source end
    local creds, ttl = sources[source](env, ctx)
    if creds then return creds, ttl end
    if ttl then error(ttl, 0) end -- a source that is there but failed
    ::next_source::
  end
  error("no AWS credentials found (the environment, the profile \"" .. name .. "\" of ~/.aws/config and "
    .. "~/.aws/credentials, a web identity, the container's endpoint and the instance's metadata service "
    .. "have none)", 0)
end

--- The default chain, as a `bedrock.credentials` function: the first
--- source that has credentials gives them (and the seconds they last);
--- an error saying why when none has. `env` reads the environment
--- (os.getenv's rules: nil for unset); `region` is STS's; `profile` the
--- shared files' profile (default: M.profile_name's); `mfa` gives the code
--- of an MFA device (its serial number given) for a role whose profile
--- names one. Runs in a task of its own when called outside one.
---@param env fun(name:string):string|nil
---@param region? string
---@param profile? string
---@param mfa? fun(serial:string):string
---@return fun():(tide.aws.credentials, integer|nil)
function M.chain(env, region, profile, mfa)
  return function() return require("tide")._blocking(resolve, env, region, profile, mfa) end
end

return M
