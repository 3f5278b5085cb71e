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

local uri_decode = base._percent_decode

--- The host header libcurl sends for `authority`: its port only when it is
--- not the scheme's own.
---@param scheme string lowercase
---@param authority string
---@return string
local function host_of(scheme, authority)
  local host, port = authority:match("^(.-):(%d+)$")
  if host and ((scheme == "https" and port == "443") or (scheme == "http" and port == "80")) then
    return host
  end
  return authority
end
M.host_of = host_of

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

-- ------------------------------------------------------ Bedrock's access

--- The Bedrock options of a provider (`b`: region, credentials, profile,
--- and for Claude's Mantle endpoint mantle; `opts`: the provider's, for
--- api_key and token) checked, the region filled in from the environment
--- or the profile, the credentials found: { region, credentials (a table,
--- or a function: the caller's, or the default chain with `chain`), key (a
--- Bedrock API key from the environment), mantle }; or nil and a misuse
--- message (`where` its prefix, `name` the options' own: "bedrock." for
--- tide.provider.anthropic's table, "" for tide.provider.bedrock's).
---@param b table
---@param opts table
---@param where string
---@param name string
---@param allowed table<string, boolean>
---@return table|nil
---@return string|nil
function M.bedrock_options(b, opts, where, name, allowed)
  -- the environment as providers read it now (tide.provider.base's `_env`),
  -- the one the default chain reads later too
  local env = base._env
  for k in pairs(b) do
    if not allowed[k] then return nil, where .. "unknown option '" .. name .. tostring(k) .. "'" end
  end
  if b.mantle ~= nil and type(b.mantle) ~= "boolean" then
    return nil, where .. "'" .. name .. "mantle' must be a boolean"
  end
  if b.profile ~= nil and (type(b.profile) ~= "string" or b.profile == "") then
    return nil, where .. "'" .. name .. "profile' must be the name of a profile of ~/.aws/config"
  end
  if b.profile ~= nil and b.credentials ~= nil then
    return nil, where .. "'" .. name .. "profile' and '" .. name .. "credentials' cannot both be given"
  end
  if b.mfa_code ~= nil and type(b.mfa_code) ~= "function" then
    return nil, where .. "'" .. name .. "mfa_code' must be a function (the MFA device's serial number -> its code)"
  end
  -- the SDK's order: AWS_REGION, then the profile's (AWS_DEFAULT_REGION,
  -- then the region of ~/.aws/config's profile, as boto3 reads it)
  local region = b.region or env("AWS_REGION") or env("AWS_DEFAULT_REGION")
    or require("tide.provider.aws_credentials").profile_region(env, b.profile)
  if type(region) ~= "string" or not region:match("^[%w%-]+$") then
    return nil, where .. "'" .. name .. "region' must be a region (or set AWS_REGION, or a region in the profile)"
  end
  local creds = b.credentials
  if creds ~= nil and type(creds) ~= "function" then
    local why = M.check(creds)
    if why then return nil, where .. "'" .. name .. "credentials' " .. why end
  end
  if creds ~= nil and (opts.api_key ~= nil or opts.token ~= nil) then
    return nil, where .. "'" .. name .. "credentials' and '" .. (opts.api_key and "api_key" or "token")
      .. "' cannot both be given (IAM credentials sign requests; a Bedrock API key is a bearer token)"
  end
  local key_env = "AWS_BEARER_TOKEN_BEDROCK"
  local key = opts.api_key == nil and opts.token == nil and creds == nil and env(key_env)
  if not key and b.mantle and opts.api_key == nil and opts.token == nil and creds == nil then
    key_env = "ANTHROPIC_AWS_API_KEY" -- (the SDK's second name for a Mantle key)
    key = env(key_env)
  end
  if key and key:find("[\r\n%z]") then
    return nil, where .. "the API key from " .. key_env .. " must not contain a CR, LF or NUL"
  end
  if creds == nil and not key and opts.api_key == nil and opts.token == nil then
    -- the environment's keys (not with a profile named: boto3 ignores them
    -- then), else the AWS SDKs' default chain, asked at the first request
    -- (the profile's role, SSO, process or keys, a web identity, the
    -- container's or the instance's endpoint: tide.provider.aws.chain)
    creds = not b.profile and M.from_env(env) or nil
    if creds then
      local why = M.check(creds)
      if why then return nil, where .. "the credentials from the environment: " .. why end
    else
      creds = M.chain(env, region, b.profile, b.mfa_code)
      return { region = region, credentials = creds, chain = true, mantle = b.mantle }
    end
  end
  return { region = region, credentials = creds, key = key or nil, mantle = b.mantle }
end


--- A model id as it goes in a Bedrock URL's path: every byte but the
--- unreserved ones and ':' encoded (an ARN's '/' as %2F), as the SDKs
--- write it.
---@param model string
---@return string
function M.model_path(model)
  return (model:gsub("[^%w%-_%.~:]", function(c) return ("%%%02X"):format(c:byte()) end))
end

--- Sets up a Bedrock provider's signing (`b`: bedrock_options' result):
--- IAM credentials given as a table sign each request; a function (the
--- caller's, or the default chain) is asked before a request once the
--- last credentials have run out, as a token function is.
---@param self table the provider
---@param b table
function M.bedrock_credentials(self, b)
  local creds = b.credentials
  if type(creds) == "function" then
    self.aws_credentials, self._before_request = creds, M.renew_credentials
    self.aws_chain = b.chain -- (the default chain, not the caller's function)
  elseif creds then
    self.aws = creds
  end
  if self.aws_credentials or self.aws then self._sign = M.sign_request end
end

--- The headers of one request to Bedrock with IAM credentials: the
--- provider's own, and the signature of this body at this second (for
--- `self.bedrock.service` in `self.bedrock.region`).
---@param self table the provider
---@param url string
---@param body string
---@return table<string,string>
function M.sign_request(self, url, body)
  local h = self:_headers()
  local signed = M.sign("POST", url, { ["content-type"] = h["content-type"] }, body, self.aws,
    self.bedrock.region, self.bedrock.service)
  for k, v in pairs(signed) do h[k] = v end
  return h
end

--- Before a request of a provider whose credentials come from a function:
--- asks it for credentials once the last have run out (the seconds it
--- said, less a minute; 55 minutes when it said nothing). True, or nil and
--- a ProviderError (no request is sent then).
---@param self table the provider
---@return true|nil
---@return table|nil err
function M.renew_credentials(self)
  if self._aws_until and core.hrtime() < self._aws_until then return true end
  local ok, creds, ttl = base._once(self, "_aws_call", self.aws_credentials)
  local why = not ok and tostring(creds) or M.check(creds)
  if why then
    return nil, core.error("ProviderError", ("tide.provider.%s: "):format(self.kind) .. (self.aws_chain and "Bedrock: "
      or "the bedrock.credentials function gave no credentials: ") .. why)
  end
  self.aws, self._aws_until = creds, base._deadline(ttl)
  return true
end

-- ------------------------------------------------------- the default chain

-- Where credentials come from when none are given is a concern of its own
-- (tide.provider.aws_credentials); its names are here too.
local chain = require "tide.provider.aws_credentials"

--- botocore's default credential chain, as a `bedrock.credentials`
--- function (tide.provider.aws_credentials.chain).
M.chain = chain.chain
--- The chain's retry policies (tide.provider.aws_credentials.retry).
M.retry = chain.retry
--- Seconds since the epoch of an ISO 8601 UTC time, or nil.
M.epoch = chain.epoch

return M
