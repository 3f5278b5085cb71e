--- tide.provider.aws: AWS Signature Version 4, as Bedrock takes it, and
--- the credentials it signs with.
---
--- Bedrock's own keys (`AWS_BEARER_TOKEN_BEDROCK`) go as a bearer token and
--- need none of this; IAM credentials (an access key, its secret, and for
--- temporary ones a session token) sign every request instead: a canonical
--- form of the request, hashed and signed with a key derived from the
--- secret, the date, the region and the service. The rules are botocore's
--- SigV4Auth, checked against the AWS test suite it ships
--- (spec/unit/aws_sigv4_spec.lua). SHA-256 and HMAC come from OpenSSL
--- (core/digest.c). libcurl's CURLOPT_AWS_SIGV4 is not used: the libcurl
--- of Debian 12 signs the path as it is written, where AWS encodes it, so
--- every Bedrock model id (they hold a ':') would be refused.
local core = require "tide.core"
local base = require "tide.provider.base"

local M = {}

local sha256, hmac = core.sha256, core.hmac_sha256

--- The lowercase hex of `s`'s bytes.
---@param s string
---@return string
function M.hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end
local hex = M.hex

--- `s` percent-encoded as SigV4 wants it: every byte but the unreserved
--- ones (A-Z a-z 0-9 - _ . ~), and `/` too when `keep_slash`, as %XX with
--- uppercase hex.
---@param s string
---@param keep_slash? boolean
---@return string
function M.uri_encode(s, keep_slash)
  if not keep_slash then return base._percent_encode(s) end
  local parts = {}
  for part in (s .. "/"):gmatch("([^/]*)/") do parts[#parts + 1] = base._percent_encode(part) end
  return table.concat(parts, "/")
end
local uri_encode = M.uri_encode

local function uri_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The host header libcurl sends for `authority`: its port only when it is
-- not the scheme's own.
local function host_of(scheme, authority)
  local host, port = authority:match("^(.-):(%d+)$")
  if host and ((scheme == "https" and port == "443") or (scheme == "http" and port == "80")) then
    return host
  end
  return authority
end

-- The canonical query: each name and value decoded and encoded again the
-- SigV4 way, sorted by name, then value.
local function canonical_query(query)
  if query == nil or query == "" then return "" end
  local pairs_ = {}
  for part in query:gmatch("[^&]+") do
    local k, v = part:match("^([^=]*)=?(.*)$")
    pairs_[#pairs_ + 1] = { uri_encode(uri_decode(k)), uri_encode(uri_decode(v)) }
  end
  table.sort(pairs_, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
  for i, p in ipairs(pairs_) do pairs_[i] = p[1] .. "=" .. p[2] end
  return table.concat(pairs_, "&")
end

---@class tide.aws.credentials
---@field access_key_id string
---@field secret_access_key string
---@field session_token? string

--- The headers that sign one request: `authorization`, `x-amz-date`, and
--- `x-amz-security-token` with temporary credentials. `headers` (lowercase
--- names) are signed with the host and the date; send them unchanged.
--- `amz_date` ("20150830T123600Z") is now when not given.
---@param method string
---@param url string the URL the request goes to, path as it is sent
---@param headers table<string,string>
---@param body string
---@param creds tide.aws.credentials
---@param region string
---@param service string
---@param amz_date? string
---@return table<string,string>
function M.sign(method, url, headers, body, creds, region, service, amz_date)
  local scheme, authority, path, query = url:match("^(%a+)://([^/?#]+)([^?#]*)%??([^#]*)")
  if not scheme then error("tide.provider.aws: cannot sign the URL " .. tostring(url), 2) end
  amz_date = amz_date or os.date("!%Y%m%dT%H%M%SZ")
  local date = amz_date:sub(1, 8)
  local signed = { host = host_of(scheme:lower(), authority), ["x-amz-date"] = amz_date }
  if creds.session_token then signed["x-amz-security-token"] = creds.session_token end
  for k, v in pairs(headers) do signed[k] = v end
  local names = {}
  for k in pairs(signed) do names[#names + 1] = k end
  table.sort(names)
  local lines = {}
  for i, k in ipairs(names) do
    -- values trimmed, runs of spaces inside made one
    lines[i] = k .. ":" .. tostring(signed[k]):gsub("^%s+", ""):gsub("%s+$", ""):gsub("%s+", " ")
  end
  local signed_names = table.concat(names, ";")
  -- The path as it goes on the wire, encoded once more (every service but
  -- S3: a ':' sent as it is signs as %3A, a %3A as %253A).
  local canonical = table.concat({
    method, uri_encode(path == "" and "/" or path, true), canonical_query(query),
    table.concat(lines, "\n") .. "\n", signed_names, hex(sha256(body)),
  }, "\n")
  local scope = ("%s/%s/%s/aws4_request"):format(date, region, service)
  local to_sign = table.concat({ "AWS4-HMAC-SHA256", amz_date, scope, hex(sha256(canonical)) }, "\n")
  local key = hmac(hmac(hmac(hmac("AWS4" .. creds.secret_access_key, date), region), service), "aws4_request")
  local out = {
    authorization = ("AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s"):format(
      creds.access_key_id, scope, signed_names, hex(hmac(key, to_sign))),
    ["x-amz-date"] = amz_date,
  }
  if creds.session_token then out["x-amz-security-token"] = creds.session_token end
  return out
end

--- Checks credentials given as a table: nil when they will do, else what
--- is wrong.
---@param c any
---@return string|nil
function M.check(c)
  if type(c) ~= "table" then return "must be a table or a function" end
  for k in pairs(c) do
    if k ~= "access_key_id" and k ~= "secret_access_key" and k ~= "session_token" then
      return "has an unknown field '" .. tostring(k) .. "'"
    end
  end
  for _, k in ipairs { "access_key_id", "secret_access_key" } do
    if type(c[k]) ~= "string" or c[k] == "" then return "needs '" .. k .. "' (a string)" end
  end
  if c.session_token ~= nil and (type(c.session_token) ~= "string" or c.session_token == "") then
    return "'session_token' must be a non-empty string"
  end
  for _, k in ipairs { "access_key_id", "secret_access_key", "session_token" } do
    if c[k] and c[k]:find("[\r\n%z]") then return "'" .. k .. "' must not contain a CR, LF or NUL" end
  end
  return nil
end

--- The credentials of the environment (AWS_ACCESS_KEY_ID,
--- AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), or nil when there are none.
---@param env fun(name:string):string|nil
---@return tide.aws.credentials|nil
function M.from_env(env)
  local id, secret = env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")
  if not (id and secret) then return nil end
  return { access_key_id = id, secret_access_key = secret, session_token = env("AWS_SESSION_TOKEN") }
end

-- ------------------------------------------------------- the default chain
--
-- Where the AWS SDKs find credentials when none are given (botocore's
-- default chain, the sources a program running on AWS has), in this order:
-- the environment's keys; a web identity token (EKS service accounts:
-- AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, exchanged at STS's
-- AssumeRoleWithWebIdentity, which needs no signature); the shared
-- credentials file (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, the
-- profile AWS_PROFILE or "default"); the container's endpoint (ECS tasks,
-- EKS Pod Identity: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI,
-- with AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)); the EC2 instance's
-- metadata service (IMDSv2: a session token first; off with
-- AWS_EC2_METADATA_DISABLED=true, elsewhere with
-- AWS_EC2_METADATA_SERVICE_ENDPOINT). Not followed: SSO, credential_process
-- and roles assumed from ~/.aws/config (give `bedrock.credentials` a
-- function for those).

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
--- may tune them). `sts`: five tries (botocore's legacy mode, its default;
--- AWS_MAX_ATTEMPTS, or AWS_RETRY_MODE standard or adaptive for three,
--- change it), a random share of 1, 2, 4, 8 s between, after a 5xx, a
--- 429, a throttling code, IDPCommunicationError or no response.
--- `container`: three tries a second apart, after anything but a 200 with
--- credentials. The instance metadata service is tried
--- AWS_METADATA_SERVICE_NUM_ATTEMPTS times (1 unless set), each limited to
--- AWS_METADATA_SERVICE_TIMEOUT seconds (1 unless set), with no wait.
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

-- Seconds since the epoch of an ISO 8601 UTC time ("2026-12-06T20:00:00Z"),
-- or nil.
function M.epoch(iso)
  local y, mo, d, h, mi, sec = tostring(iso):match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)")
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  -- days from the civil date (Howard Hinnant's algorithm): no time zone involved
  y = mo <= 2 and y - 1 or y
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * (mo + (mo > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec)
end

-- Credentials from a JSON document of the container or instance endpoint
-- ({ AccessKeyId, SecretAccessKey, Token, Expiration }): creds and the
-- seconds they last, or nil and why.
local function from_document(body, where)
  local ok, doc = pcall(require("tide.json").decode, body)
  if not ok or type(doc) ~= "table" or type(doc.AccessKeyId) ~= "string" or type(doc.SecretAccessKey) ~= "string" then
    return nil, where .. " answered no credentials"
  end
  local creds = { access_key_id = doc.AccessKeyId, secret_access_key = doc.SecretAccessKey,
    session_token = type(doc.Token) == "string" and doc.Token ~= "" and doc.Token or nil }
  local why = M.check(creds)
  if why then return nil, where .. "'s credentials " .. why end
  local until_ = M.epoch(doc.Expiration)
  return creds, until_ and math.max(0, until_ - os.time()) or nil
end

-- The body of a 2xx response to `request` (sent again as `policy` says),
-- or nil and why.
local function get(request, policy)
  local res, err = base._fetch(request, policy or {})
  if not res then return nil, tostring(err and err.message or err) end
  if res.status < 200 or res.status > 299 then
    local code, message = xml_error(res.body)
    return nil, "HTTP " .. res.status .. (code and (" " .. code .. (message and (": " .. message) or "")) or "")
  end
  return res.body
end

local read_file = base._read_file

-- The sources, each: creds, seconds | nil (not there) | nil, why (there,
-- but failed: the chain stops, as the SDKs do).
local sources = {}

function sources.environment(env)
  return M.from_env(env)
end

function sources.web_identity(env, region)
  local file, role = env("AWS_WEB_IDENTITY_TOKEN_FILE"), env("AWS_ROLE_ARN")
  if not (file and role) then return nil end
  local token = read_file(file)
  if not token or token == "" then return nil, "the web identity token file " .. file .. " cannot be read" end
  local q = base._percent_encode
  local sts = env("AWS_ENDPOINT_URL_STS") or env("AWS_ENDPOINT_URL")
    or ("https://sts.%s.amazonaws.com"):format(region or "us-east-1")
  local policy = M.retry.sts
  local mode = (env("AWS_RETRY_MODE") or ""):lower()
  local attempts = env_count(env, "AWS_MAX_ATTEMPTS") or ((mode == "standard" or mode == "adaptive") and 3) or nil
  if attempts then policy = setmetatable({ attempts = attempts }, { __index = policy }) end
  local body, err = get({ method = "POST", url = sts:gsub("/+$", "") .. "/", timeout_ms = 10000,
    headers = { ["content-type"] = "application/x-www-form-urlencoded" },
    body = "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=" .. q(role) .. "&RoleSessionName="
      .. q(env("AWS_ROLE_SESSION_NAME") or ("tide-" .. os.time())) .. "&WebIdentityToken=" .. q(token:gsub("%s+$", "")) },
    policy)
  if not body then return nil, "STS AssumeRoleWithWebIdentity failed: " .. err end
  local function tag(name) return body:match("<" .. name .. ">%s*([^<]-)%s*</" .. name .. ">") end
  local creds = { access_key_id = tag("AccessKeyId"), secret_access_key = tag("SecretAccessKey"),
    session_token = tag("SessionToken") }
  if M.check(creds) then return nil, "STS AssumeRoleWithWebIdentity answered no credentials" end
  local until_ = M.epoch(tag("Expiration"))
  return creds, until_ and math.max(0, until_ - os.time()) or nil
end

function sources.shared_file(env)
  local path = env("AWS_SHARED_CREDENTIALS_FILE") or (env("HOME") and env("HOME") .. "/.aws/credentials")
  local text = path and read_file(path)
  if not text then return nil end
  local want, section, found = env("AWS_PROFILE") or "default", nil, {}
  for line in text:gmatch("[^\r\n]+") do
    local name = line:match("^%s*%[%s*([^%]]-)%s*%]")
    if name then
      section = name
    elseif section == want then
      local k, v = line:match("^%s*([%w_]+)%s*=%s*(.-)%s*$")
      if k then found[k] = v end
    end
  end
  if not found.aws_access_key_id then return nil end
  local creds = { access_key_id = found.aws_access_key_id, secret_access_key = found.aws_secret_access_key,
    session_token = found.aws_session_token ~= "" and found.aws_session_token or nil }
  local why = M.check(creds)
  if why then return nil, ("the profile %q of %s %s"):format(want, path, why) end
  return creds
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
    local scheme, host = full:match("^(%a+)://([^/:]+)")
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

local ORDER = { "environment", "web_identity", "shared_file", "container", "instance" }

--- The default chain, as a `bedrock.credentials` function: the first
--- source that has credentials gives them (and the seconds they last);
--- nil and why when none has. `env` reads the environment (os.getenv's
--- rules: nil for unset); `region` is STS's.
---@param env fun(name:string):string|nil
---@param region? string
---@return fun():(tide.aws.credentials|nil, integer|string|nil)
function M.chain(env, region)
  return function()
    for _, name in ipairs(ORDER) do
      local creds, ttl = sources[name](env, region)
      if creds then return creds, ttl end
      if ttl then error(ttl, 0) end -- a source that is there but failed
    end
    error("no AWS credentials found (the environment, a web identity, ~/.aws/credentials, the container's "
      .. "endpoint and the instance's metadata service have none)", 0)
  end
end

return M
