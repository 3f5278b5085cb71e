--- tide.redact: keeps credentials out of what tide reports. An error carries
--- excerpts of what a server answered, and a server may echo the request back,
--- headers and all; the errors of providers and integration sources pass
--- through here before anyone sees them, with every occurrence of the key
--- (raw or as a JSON encoder escapes it) replaced by `[redacted]`.
---@class tide.redact
local M = {}

local json = require "tide.json"

--- What stands in for a secret.
M.MARK = "[redacted]"

--- Request headers whose values are credentials (lower-case names); any
--- header whose name says key, token, secret, auth, cookie, session,
--- signature or password is one too (M.secret_header).
M.SECRET_HEADERS = {
  authorization = true, ["proxy-authorization"] = true, ["x-api-key"] = true, ["api-key"] = true,
}

local SECRET_WORDS = { "key", "token", "secret", "auth", "cookie", "session", "signature", "password", "credential" }

--- Whether header (or query parameter) `name`, in lower case, carries a
--- credential.
---@param name string
---@return boolean
function M.secret_header(name)
  if M.SECRET_HEADERS[name] or name == "sig" or name == "code" then return true end
  for _, w in ipairs(SECRET_WORDS) do
    if name:find(w, 1, true) then return true end
  end
  return false
end

--- The values of a URL's credential-named query parameters and its user
--- information (a Gemini ?key=, an Azure SAS &sig=, user:pass@): what a
--- URL may carry that is a credential (an api-version is none).
---@param url any
---@return string[]
function M.url_secrets(url)
  local out = {}
  if type(url) ~= "string" then return out end
  local userinfo = url:match("^%a[%w+.-]*://([^/?#]*)@")
  if userinfo then
    out[#out + 1] = userinfo
    for part in userinfo:gmatch("[^:]+") do out[#out + 1] = part end
  end
  local query = url:match("%?([^#]*)")
  for pair in (query or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if v and v ~= "" and M.secret_header(k:lower()) then out[#out + 1] = v end
  end
  return out
end

--- `url` without its query and user information, fit for a message.
---@param url string
---@return string
function M.url_for_message(url)
  return (tostring(url):gsub("^(%a[%w+.-]*://)[^/?#]*@", "%1"):gsub("[?#].*$", ""))
end

-- Shorter values are left alone: a secret that short protects nothing, and
-- replacing it everywhere would mangle ordinary words (specs use keys like
-- "k"). The same length bounds the stub of a secret cut off at the end of an
-- excerpt.
local MIN_LEN = 8

local function add_one(list, seen, s)
  if seen[s] then return end
  seen[s] = true
  list[#list + 1] = s
end

local function add(list, seen, s)
  if type(s) ~= "string" or #s < MIN_LEN then return end
  add_one(list, seen, s)
  -- As a JSON string: servers that echo the request encode it, and "/" is
  -- escaped by some encoders (cjson's among them) and not by others.
  add_one(list, seen, json.quote(s):sub(2, -2))
  add_one(list, seen, (s:gsub("/", "\\/")))
end

--- The strings to hide for a request made with `api_key` (and an OAuth
--- `token`) and `headers`: the key, the token, the value of every header
--- named in SECRET_HEADERS and the credential after its scheme ("Bearer
--- <token>"), each also as JSON escapes it. Longest first, so that a whole
--- value goes before its parts.
---@param api_key? string
---@param headers? table<string,string> names in lower case
---@param token? string
---@param extra? string[] other secrets (an AWS secret key and session token)
---@return string[]
function M.secrets(api_key, headers, token, extra)
  local list, seen = {}, {}
  add(list, seen, api_key)
  add(list, seen, token)
  for _, v in ipairs(extra or {}) do add(list, seen, v) end
  for name, value in pairs(headers or {}) do
    if type(name) == "string" and M.secret_header(name:lower()) and type(value) == "string" then
      add(list, seen, value)
      add(list, seen, value:match("^%a+%s+(.+)$"))
    end
  end
  table.sort(list, function(a, b) return #a > #b end)
  return list
end

-- How many bytes of the start of `secret` (MIN_LEN or more, but not all of
-- it) `s` ends with, or nil: an excerpt cut in the middle of the secret.
local function stub_length(s, secret)
  for n = math.min(#secret - 1, #s), MIN_LEN, -1 do
    if s:sub(-n) == secret:sub(1, n) then return n end
  end
  return nil
end

-- JSON's \u escapes of printable ASCII (other than the quote and the
-- backslash), written out: some servers' encoders escape "/", "+" or "="
-- that way, and a secret echoed so would not match as it was sent.
local function unescape_ascii(s)
  if not s:find("\\u00") then return s end
  return (s:gsub("\\u00([2-7]%x)", function(h)
    local c = tonumber(h, 16)
    if c < 0x20 or c > 0x7e or c == 0x22 or c == 0x5c then return nil end
    return string.char(c)
  end))
end

--- `s` with every occurrence of each secret of `secrets`, as it stands,
--- replaced by `mark` (MARK); nothing else is looked at.
---@param s string
---@param secrets string[]
---@param mark? string
---@return string
function M.replace(s, secrets, mark)
  mark = mark or M.MARK
  for _, secret in ipairs(secrets) do
    local i = s:find(secret, 1, true)
    if i then
      local parts, j = {}, 1
      while i do
        parts[#parts + 1] = s:sub(j, i - 1)
        j = i + #secret
        i = s:find(secret, j, true)
      end
      parts[#parts + 1] = s:sub(j)
      s = table.concat(parts, mark)
    end
  end
  return s
end

--- `s` with every secret of `secrets` (from `M.secrets`) replaced by `mark`
--- (MARK), and the start of one at its very end (an excerpt cut through it)
--- too. JSON escapes of printable ASCII in `s` are written out first.
---@param s string
---@param secrets string[]
---@param mark? string
---@return string
function M.string(s, secrets, mark)
  mark = mark or M.MARK
  if #secrets == 0 then return s end
  s = M.replace(unescape_ascii(s), secrets, mark)
  for _, secret in ipairs(secrets) do
    local n = stub_length(s, secret)
    if n then
      s = s:sub(1, -n - 1) .. mark
      break
    end
  end
  return s
end

local function walk(t, secrets, visited)
  visited[t] = true
  for k, v in pairs(t) do
    if type(v) == "string" then
      t[k] = M.string(v, secrets)
    elseif type(v) == "table" and not visited[v] then
      walk(v, secrets, visited)
    end
  end
end

--- Redacts, in place, every string field of the error `err` and of the
--- tables it holds (a `cause`, details), however deep; returns `err`.
---@param err table
---@param secrets string[]
---@return table err
function M.error(err, secrets)
  if type(err) == "table" and #secrets > 0 then walk(err, secrets, {}) end
  return err
end

return M
