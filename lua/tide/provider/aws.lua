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
