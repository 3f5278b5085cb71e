--- tide.testing.cassette: a provider's real HTTP traffic recorded to a JSONL
--- cassette, and served back on loopback, so that a script that once talked
--- to a model runs again offline with the same result.
---
--- Recording changes no provider code: `record` starts a loopback proxy
--- (tide.testing.server) and hands back a copy of the provider whose
--- `base_url` points at it. The proxy forwards each request to the real
--- endpoint with tide.http, writes the exchange, and answers the client with
--- what came back. (A server handler cannot wait, so it defers its answer
--- and a task sends it: see testing/server.c.) The client therefore gets the
--- response once it is complete upstream; the cassette keeps the chunks as
--- they arrived and when.
---
--- The file: line 1 `{"cassette":"tide","version":1,"provider":kind,
--- "base_path":"/v1"}`, then one exchange per line, in the order the requests
--- arrived: `{"n":1,"request":{"method","path","headers","body"},
--- "response":{"status","headers","ttfb_ms", and "body" or "chunks":
--- [{"ms","data"}]}}`. Bodies and chunks are the bytes as sent, as JSON
--- strings; a response whose bytes are not UTF-8 text (Bedrock's AWS
--- event stream) has `"encoding":"base64"` and its body or chunks in
--- base64. `ms` counts from the moment the request went upstream. Keys are
--- sorted, so a re-recorded cassette diffs cleanly.
---
--- A provider that signs each request (Bedrock with IAM credentials: the
--- signature covers the host) signs the recording copy's requests for the
--- real endpoint, which the proxy forwards them to unchanged; the signing
--- headers are not written.
---@class tide.testing.cassette
local M = {}

local core = require "tide.core"
local json = require "tide.json"
local http = require "tide.http"

local VERSION = 1

-- Request headers never written: credentials, and what the transport owns.
local DROP_REQUEST = {
  authorization = true, ["x-api-key"] = true, ["api-key"] = true,
  ["proxy-authorization"] = true, cookie = true,
  host = true, ["content-length"] = true, connection = true, ["transfer-encoding"] = true,
  expect = true, ["keep-alive"] = true, te = true, upgrade = true,
  ["user-agent"] = true, ["accept-encoding"] = true,
  -- a signature's time and hash (SigV4): new on every request
  ["x-amz-date"] = true, ["x-amz-content-sha256"] = true,
}

-- Custom headers (a provider's `headers`) may carry credentials under any
-- name; a name that sounds like one is dropped too.
local function secret_name(name)
  return name:find("key", 1, true) or name:find("token", 1, true) or name:find("secret", 1, true)
    or name:find("auth", 1, true) or name:find("cookie", 1, true) or name:find("session", 1, true)
end

-- Response headers worth keeping: what the client parses (content type,
-- Retry-After) and what identifies the exchange at the provider.
local function relevant_response(name)
  return name == "content-type" or name == "retry-after" or name == "retry-after-ms"
    or name:find("request-id", 1, true) ~= nil or name:find("ratelimit", 1, true) ~= nil
end

-- Keys shorter than this are not searched for in bodies: they would match
-- ordinary text and corrupt what is recorded. Headers holding them are
-- still dropped.
local MIN_SCRUB = 8
local REDACTED = "[REDACTED]"

-- JSON with sorted keys, "/" left unescaped (lua-cjson writes "\/"): a
-- backslash run before "/" of odd length ends in that escape.
local function encode(v)
  return (json.canonical(v):gsub("(\\+)/", function(b)
    if #b % 2 == 1 then return b:sub(2) .. "/" end
  end))
end

local function cassette_error(path, line, message, fields)
  fields = fields or {}
  fields.path, fields.line = path, line
  local where = line and ("%s:%d: "):format(path, line) or (path .. ": ")
  return core.error("CassetteError", where .. message, fields)
end

local function ms_since(t0)
  return math.floor((core.hrtime() - t0) / 1e5 + 0.5) / 10
end

-- An integer of a request body beyond 64 bits, as its digits: replay
-- compares such numbers exactly (see `exact` below).
local BIG = { __name = "tide.testing.cassette.big_integer" }

-- `v` with each BIG in it as the float nearest, for the encoder.
local function encodable(v)
  if type(v) ~= "table" then return v end
  if getmetatable(v) == BIG then return tonumber(v.text) end
  local out = setmetatable({}, getmetatable(v))
  for k, x in pairs(v) do out[k] = encodable(x) end
  return out
end

-- A value for a message: its JSON, cut to `max` bytes.
local function show(v, max)
  max = max or 80
  local s
  if v == nil then
    s = "(absent)"
  elseif getmetatable(v) == BIG then
    s = v.text
  else
    local ok, enc = pcall(encode, encodable(v))
    s = ok and enc or tostring(v)
  end
  if #s > max then s = s:sub(1, max - 3) .. "..." end
  return s
end

local function json_error(status, kind, message)
  return {
    -- (x-should-retry: a mismatch is the same on every attempt; clients
    -- would retry a 409, as the official SDKs do)
    status = status, headers = { ["content-type"] = "application/json", ["x-should-retry"] = "false" },
    -- Shaped so that both providers' error parsers read the message.
    body = encode({ type = "error", error = { type = kind, message = message } }),
  }
end

-- What makes `v`, a cassette's first line decoded, no header this tide
-- reads, or nil.
local function header_problem(v)
  if v.cassette ~= "tide" then
    return "not a tide cassette: the first line must be {\"cassette\":\"tide\",...}"
  end
  if v.version ~= VERSION then
    return ("cassette version %s, this tide reads version %d"):format(show(v.version), VERSION)
  end
  if type(v.provider) ~= "string" then return "the header has no 'provider'" end
end

-- ------------------------------------------------------------------ record

-- A recording proxy's state; the provider copy holds it as `_recorder`.
local Recorder = {}
Recorder.__index = Recorder

-- A secret as it stands in a URL: a provider's `query` values go out
-- percent-encoded (provider._url_of), and a base64 signature (an Azure SAS
-- sig) has "+", "/" and "=" to encode; one taken from a URL is encoded
-- already and may be echoed decoded.
local function url_forms(s)
  local base = require "tide.provider.base"
  return base._percent_encode(s), base._percent_decode(s)
end

-- The secrets of one exchange: the provider's (its key, token, credential
-- headers, AWS secrets, URL query values: provider.exchange's list) and
-- the credentials the request itself carried (a token renewed since), each
-- also in its URL forms.
function Recorder:_secrets_for(headers)
  local redact = require "tide.redact"
  local list, seen = {}, {}
  local function add(v)
    if #v >= MIN_SCRUB and not seen[v] then
      seen[v] = true
      list[#list + 1] = v
    end
  end
  for _, v in ipairs(require("tide.provider.exchange").secrets(self.provider)) do add(v) end
  for _, v in ipairs(redact.secrets(nil, headers)) do add(v) end
  for i = 1, #list do
    local enc, dec = url_forms(list[i])
    add(enc)
    add(dec)
  end
  table.sort(list, function(a, b) return #a > #b end)
  return list
end

-- Every occurrence of each secret, as it stands, replaced.
local function replace_plain(s, secrets)
  return require("tide.redact").replace(s, secrets, REDACTED)
end

local function count_marks(s)
  return select(2, s:gsub("%[REDACTED%]", ""))
end

-- tide.redact.string writes out JSON's \u escapes of ASCII before it looks
-- (a server may echo the key so): fine for an error message, but a cassette
-- must keep the bytes as they were, and an escaped backslash before
-- "u0041" (text that speaks of \u0041) would become an invalid escape.
-- Its answer is kept only when it hid more than the secrets as they stand.
function Recorder:_scrub(s, secrets)
  if type(s) ~= "string" then return s end
  secrets = secrets or self:_secrets_for({})
  local plain = replace_plain(s, secrets)
  local thorough = require("tide.redact").string(s, secrets, REDACTED)
  if count_marks(thorough) > count_marks(plain) then return thorough end
  return plain
end

function Recorder:_request_headers(headers, secrets)
  local out = {}
  for name, value in pairs(headers) do
    if not DROP_REQUEST[name] and not secret_name(name) and self:_scrub(value, secrets) == value then
      out[name] = value
    end
  end
  return out
end

function Recorder:_response_headers(headers, secrets)
  local out = {}
  for name, value in pairs(headers) do
    if relevant_response(name) then out[name] = self:_scrub(value, secrets) end
  end
  return out
end

-- Writes the exchanges whose turn has come: lines keep the order in which
-- the requests arrived even when concurrent requests finish out of order.
-- A slot holds false for a request that got no response to record.
function Recorder:_flush()
  local pending = self.pending
  while pending[self.written + 1] ~= nil do
    self.written = self.written + 1
    local line = pending[self.written]
    pending[self.written] = nil
    if line and self.file then
      self.file:write(line, "\n")
      self.file:flush()
    end
  end
end

-- Runs as a task per request: forwards it, records it, answers the client.
function Recorder:_forward(req, n)
  local headers = {}
  for name, value in pairs(req.headers) do
    if name ~= "host" and name ~= "content-length" and name ~= "connection" and name ~= "expect"
      and name ~= "transfer-encoding" then
      headers[name] = value
    end
  end
  local chunks = {}
  local t0 = core.hrtime()
  local res, err = http.request {
    method = req.method, url = self.origin .. req.path, headers = headers,
    body = req.body ~= "" and req.body or nil,
    timeout_ms = self.timeout_ms, max_body_bytes = self.max_body_bytes,
    on_data = function(data) chunks[#chunks + 1] = { ms = ms_since(t0), data = data } end,
  }
  local answer
  if not res then
    -- A transport failure is no exchange: nothing is written, and the
    -- client sees a gateway error (retryable, as the failure would be).
    self.pending[n] = false
    answer = json_error(502, "record_upstream_failed",
      "tide.testing.record: the upstream request failed: " .. tostring(err))
  else
    local secrets = self:_secrets_for(req.headers)
    local sent = self:_response_headers(res.headers, secrets)
    local response = { status = res.status, headers = sent, ttfb_ms = res.timing and res.timing.ttfb_ms }
    answer = { status = res.status, headers = sent }
    local ctype = res.headers["content-type"] or ""
    local body = res.body
    if #chunks > 0 then
      local parts = {}
      for i, c in ipairs(chunks) do parts[i] = c.data end
      body = table.concat(parts)
    end
    -- bytes that are not text (an AWS event stream) go in base64
    local binary = utf8.len(body) == nil
    local function kept(bytes)
      bytes = self:_scrub(bytes, secrets)
      return binary and core.base64(bytes) or bytes
    end
    -- a secret in the stream may straddle two chunks: then the stream is
    -- kept as one chunk, scrubbed whole
    if #chunks > 1 and self:_scrub(body, secrets) ~= body then chunks = { { ms = chunks[1].ms, data = body } } end
    if binary then response.encoding = "base64" end
    -- SSE and AWS event streams (application/vnd.amazon.eventstream) keep
    -- their chunks and timing
    if #chunks > 0 and (ctype:find("event-stream", 1, true) or ctype:find("eventstream", 1, true)) then
      local data = {}
      for i, c in ipairs(chunks) do
        data[i] = c.data
        c.data = kept(c.data)
      end
      response.chunks = chunks
      answer.chunks = data
    else
      response.body = kept(body)
      answer.body = body
    end
    local request = {
      method = req.method, path = self:_scrub(req.path, secrets),
      headers = self:_request_headers(req.headers, secrets), body = self:_scrub(req.body, secrets),
    }
    self.pending[n] = encode({ n = n, request = request, response = response })
  end
  self:_flush()
  if self.server and not self.closed then self.server:respond(req.id, answer) end
end

function Recorder:_handle(req)
  self.seq = self.seq + 1
  core.spawn(self._forward, self, req, self.seq)
  return { defer = true }
end

function Recorder:close()
  if self.closed then return end
  self.closed = true
  if self.server then self.server:close() end
  if self.file then
    self:_flush()
    self.file:close()
    self.file = nil
  end
end

-- The header of the cassette at `path`, which a recording will append to,
-- and its line; false when the file holds no header yet (it is empty);
-- nil, err when it is no cassette this tide reads.
local function existing_header(path)
  local file, ferr = io.open(path, "r")
  if not file then return nil, cassette_error(path, nil, "cannot open: " .. tostring(ferr)) end
  local lineno = 0
  for line in file:lines() do
    lineno = lineno + 1
    if not line:match("^%s*$") then
      file:close()
      local v = json.decode(line)
      local problem = type(v) ~= "table" and "not a tide cassette: the first line is not a JSON object"
        or header_problem(v)
      if problem then return nil, cassette_error(path, lineno, problem) end
      return v, lineno
    end
  end
  file:close()
  return false
end

-- Why a recording from provider `kind` at `base_path` cannot go into the
-- cassette with `header`, or nil. Replay serves every exchange to one
-- provider at one base path, as the header says: another's exchanges would
-- come back in shapes its client does not read.
local function mixed(header, kind, base_path)
  if header.provider ~= kind then
    return ("recorded from a '%s' provider, cannot append a '%s' provider's exchanges"):format(header.provider, kind)
  end
  local recorded = type(header.base_path) == "string" and header.base_path or ""
  if recorded ~= base_path then
    -- (a query in a base_url may hold a key: only the paths are named)
    local function bare(s) return show((s:gsub("[?#].*", ""))) end
    return ("recorded from a '%s' provider at base path %s, cannot append one at %s"):format(kind, bare(recorded),
      bare(base_path))
  end
end

---@class tide.testing.record_opts
---@field provider table a provider (tide.provider.openai / .anthropic / any with a `base_url`)
---@field cassette string the JSONL file to write
---@field append? boolean add to an existing cassette (recorded from the same provider kind and base path)
---instead of starting it afresh

--- Records a provider's traffic. Returns a copy of `provider` that talks to
--- a loopback proxy in front of the real endpoint: every exchange (request
--- method, path, body and headers; response status, headers and bytes as
--- they streamed, with their timing) is appended to the cassette as it
--- completes. Never written: `authorization`, `x-api-key`, `api-key`,
--- `proxy-authorization` and `cookie` headers, any header whose name sounds
--- like a credential or whose value holds the provider's `api_key`, and the
--- key itself wherever it occurs, percent-encoded in a URL too (replaced by
--- `[REDACTED]`; keys shorter than 8 bytes are only kept out of headers).
--- The copy has `cassette` (the path) and `close()` (stops the proxy, closes
--- the file; idempotent).
--- A request that fails upstream (no HTTP response) is not recorded; the
--- client gets a 502.
---@param opts tide.testing.record_opts
---@return table|nil provider the recording copy
---@return table|nil err `CassetteError` (the file cannot be opened or is not a regular file; appending:
---it is no tide cassette, or one recorded from another provider or base path) or `ListenFailed`
function M.record(opts)
  if type(opts) ~= "table" then
    error(("bad argument #1 to 'record' (table expected, got %s)"):format(type(opts)), 2)
  end
  local p, path = opts.provider, opts.cassette
  if type(p) ~= "table" or type(p.base_url) ~= "string" then
    error("bad argument #1 to 'record' (field 'provider' must be a provider with a base_url)", 2)
  end
  if type(path) ~= "string" or path == "" then
    error("bad argument #1 to 'record' (field 'cassette' must be a file path)", 2)
  end
  if opts.append ~= nil and type(opts.append) ~= "boolean" then
    error("bad argument #1 to 'record' (field 'append' must be a boolean)", 2)
  end
  for k in pairs(opts) do
    if k ~= "provider" and k ~= "cassette" and k ~= "append" then
      error(("bad argument #1 to 'record' (unknown option '%s')"):format(tostring(k)), 2)
    end
  end
  local origin, base_path = p.base_url:match("^(https?://[^/]+)(.*)$")
  if not origin then
    error("bad argument #1 to 'record' (the provider's base_url is not an http(s) URL)", 2)
  end
  -- (opening a FIFO for writing blocks until a reader comes; a directory
  -- or a device holds no cassette)
  local kind = core.file_kind(path)
  if kind and kind ~= "file" then
    return nil, cassette_error(path, nil, "cannot open for writing: not a regular file")
  end
  local header
  if opts.append and kind == "file" then
    local where
    header, where = existing_header(path)
    if header == nil then return nil, where end
    local problem = header and mixed(header, p.kind or "unknown", base_path)
    if problem then return nil, cassette_error(path, where, problem) end
  end
  local file, ferr = io.open(path, opts.append and "a" or "w")
  if not file then return nil, cassette_error(path, nil, "cannot open for writing: " .. tostring(ferr)) end
  local self = setmetatable({
    origin = origin, provider = p,
    timeout_ms = p.timeout_ms, max_body_bytes = p.max_body_bytes,
    file = file, seq = 0, written = 0, pending = {}, closed = false,
  }, Recorder)
  if not header then
    file:write(encode({ cassette = "tide", version = VERSION, provider = p.kind or "unknown",
                                base_path = base_path }), "\n")
    file:flush()
  end
  local srv, err = require("tide.testing.server").listen {
    host = "127.0.0.1", handler = function(req) return self:_handle(req) end,
  }
  if not srv then
    file:close()
    return nil, err
  end
  self.server = srv
  local copy = {}
  for k, v in pairs(p) do copy[k] = v end
  -- The endpoint cache (exchange.lua) is rebuilt from the new base_url.
  copy._wire = nil
  copy.base_url = ("http://127.0.0.1:%d%s"):format(srv:port(), base_path)
  copy.cassette = path
  copy._recorder = self
  if p._sign then
    -- A request signed for the proxy's host would be refused upstream: the
    -- copy signs for the real one, where the proxy forwards it as it is.
    local sign, proxy = p._sign, ("http://127.0.0.1:%d"):format(srv:port())
    copy._sign = function(provider, url, body)
      if url:sub(1, #proxy) == proxy then url = origin .. url:sub(#proxy + 1) end
      return sign(provider, url, body)
    end
  end
  copy.close = function() self:close() end
  return setmetatable(copy, getmetatable(p))
end

-- ------------------------------------------------------------------ replay

-- Request bodies are compared as JSON values, which lua-cjson 2.1.0 does
-- not quite give: it reads every number as a double (2^53 + 1 comes back
-- as 2^53) and `[]` like `{}`, as an empty table. So a body is decoded
-- from a rewrite of itself in which, outside strings, each number is the
-- string "n" followed by its text and each empty array the string "a";
-- each string value gets an "s" in front, so that none passes for either
-- (keys stay as they are). `exact` then puts the values back: a number as
-- Lua reads its text (an integer stays an integer; one beyond 64 bits is a
-- BIG), an empty array marked with json.array_mt.
local function tagged(text)
  local out, i = {}, 1
  while true do
    local s, _, c = text:find('(["%[%-%d])', i)
    if not s then break end
    out[#out + 1] = text:sub(i, s - 1)
    if c == '"' then
      local j, e = s + 1, nil
      repeat
        local q, _, qc = text:find('(["\\])', j)
        if not q then return nil end
        if qc == "\\" then j = q + 2 else e = q end
      until e
      out[#out + 1] = text:find("^%s*:", e + 1) and text:sub(s, e) or '"s' .. text:sub(s + 1, e)
      i = e + 1
    elseif c == "[" then
      local _, e = text:find("^%[%s*%]", s)
      out[#out + 1] = e and '"a"' or "["
      i = (e or s) + 1
    else
      local _, e = text:find("^[%-+%d%.eE]+", s)
      out[#out + 1] = '"n' .. text:sub(s, e) .. '"'
      i = e + 1
    end
  end
  out[#out + 1] = text:sub(i)
  return table.concat(out)
end

local function untagged(v)
  if type(v) == "string" then
    local tag = v:sub(1, 1)
    if tag == "s" then return v:sub(2) end
    if tag == "a" then return json.array() end
    local text = v:sub(2)
    local n = tonumber(text)
    -- (Lua reads an integer too wide for 64 bits as a float)
    if math.type(n) == "float" and not text:find("[.eE]") then return setmetatable({ text = text }, BIG) end
    return math.tointeger(n) or n
  elseif type(v) == "table" then
    for k, x in pairs(v) do v[k] = untagged(x) end
  end
  return v
end

-- Body `text` decoded exactly; nil when it is not JSON. (lua-cjson also
-- reads NaN, Infinity and hex numbers, which are not JSON: a body with one
-- is compared byte for byte.)
local function exact(text)
  if text == "" or json.decode_fast(text) == nil then return nil end
  local rewritten = tagged(text)
  local v = rewritten and json.decode_fast(rewritten)
  if v == nil then return nil end
  return untagged(v)
end

-- A number's value in full, when it is beyond what an integer holds: a
-- BIG's digits, or those of a whole float ("%.0f" writes them all).
local function digits(v)
  if getmetatable(v) == BIG then return v.text end
  if math.type(v) == "float" and v == math.floor(v) then return ("%.0f"):format(v) end
end

-- Where two decoded JSON values differ, as "path: what" strings, at most
-- `limit` of them (then `out.more` counts the rest). Array indices are
-- 0-based, as in JSONPath.
local function is_array(t)
  if getmetatable(t) == json.array_mt then return true end
  local n = #t
  if n == 0 then return false end
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 or k > n then return false end
  end
  return true
end

local function push(out, limit, msg)
  if #out < limit then out[#out + 1] = msg else out.more = (out.more or 0) + 1 end
end

local function json_diff(exp, got, path, out, limit)
  local te, tg = type(exp), type(got)
  if getmetatable(exp) == BIG or getmetatable(got) == BIG then
    local d = digits(exp)
    if d and d == digits(got) then return end
  elseif te == "table" and tg == "table" then
    -- (an empty array is marked, so an empty table is an object)
    local ae, ag = is_array(exp), is_array(got)
    if ae and ag then
      local n = math.max(#exp, #got)
      for i = 1, n do
        local sub = ("%s[%d]"):format(path, i - 1)
        if exp[i] == nil then
          push(out, limit, ("%s: not in the cassette (got %s)"):format(sub, show(got[i])))
        elseif got[i] == nil then
          push(out, limit, ("%s: missing from the request (expected %s)"):format(sub, show(exp[i])))
        else
          json_diff(exp[i], got[i], sub, out, limit)
        end
      end
      return
    elseif not ae and not ag then
      local keys = {}
      for k in pairs(exp) do keys[#keys + 1] = tostring(k) end
      for k in pairs(got) do if exp[k] == nil then keys[#keys + 1] = tostring(k) end end
      table.sort(keys)
      for _, k in ipairs(keys) do
        local sub = k:match("^[%a_][%w_]*$") and (path .. "." .. k) or ("%s[%s]"):format(path, json.quote(k))
        if exp[k] == nil then
          push(out, limit, ("%s: not in the cassette (got %s)"):format(sub, show(got[k])))
        elseif got[k] == nil then
          push(out, limit, ("%s: missing from the request (expected %s)"):format(sub, show(exp[k])))
        else
          json_diff(exp[k], got[k], sub, out, limit)
        end
      end
      return
    end
  elseif exp == got then
    return
  end
  push(out, limit, ("%s: expected %s, got %s"):format(path, show(exp), show(got)))
end

-- The first byte offset at which two strings differ.
local function first_difference(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    if a:byte(i) ~= b:byte(i) then return i end
  end
  return n + 1
end

local LIMIT = 20

-- Whether a received path is the recorded one, where a secret the recorder
-- hid (a Gemini ?key=, an Azure &sig=) stands for whatever the replaying
-- provider sends in its place.
local function same_path(exp, got)
  if exp == got then return true end
  if not exp:find(REDACTED, 1, true) then return false end
  local pattern = exp:gsub("%p", "%%%0"):gsub("%%%[REDACTED%%%]", "[^/?&#]*")
  return got:match("^" .. pattern .. "$") ~= nil
end

-- Every difference between a recorded request and a received one: method,
-- path, and the body (JSON compared as values, so key order and spacing do
-- not count; anything else byte for byte).
local function differences(exp, got)
  local out = {}
  if exp.method ~= got.method then
    push(out, LIMIT, ("method: expected %s, got %s"):format(exp.method, got.method))
  end
  if not same_path(exp.path, got.path) then
    push(out, LIMIT, ("path: expected %s, got %s"):format(exp.path, got.path))
  end
  if exp.body ~= got.body then
    local je, jg = exact(exp.body), exact(got.body)
    if je ~= nil and jg ~= nil and je ~= false and jg ~= false then
      json_diff(je, jg, "body $", out, LIMIT)
    else
      local i = first_difference(exp.body, got.body)
      push(out, LIMIT, ("body (at byte %d): expected %s, got %s"):format(i,
        show(exp.body:sub(i)), show(got.body:sub(i))))
    end
  end
  return out
end

-- A header name (RFC 9110's token), and the longest wait a chunk's `ms`
-- may ask of the test server (testing/server.c's field_ms).
local TOKEN = "^[%w!#$%%&'*+%-.^_`|~]+$"
local MAX_MS = 1000000000000

-- Reads and checks a cassette: the header, and the exchanges in order.
local function load(path, want_kind)
  -- (a directory opens, then raises on the first read; a FIFO would block
  -- until a writer came)
  local kind = core.file_kind(path)
  if kind and kind ~= "file" then return nil, cassette_error(path, nil, "cannot open: not a regular file") end
  local file, ferr = io.open(path, "r")
  if not file then return nil, cassette_error(path, nil, "cannot open: " .. tostring(ferr)) end
  local header, exchanges = nil, {}
  local lineno = 0
  for line in file:lines() do
    lineno = lineno + 1
    if line:match("^%s*$") then goto continue end
    do
      local v, derr = json.decode(line)
      if type(v) ~= "table" then
        file:close()
        return nil, cassette_error(path, lineno, v == nil and ("not JSON (%s)"):format(
          tostring(derr and derr.message or derr)) or "not a JSON object")
      end
      local function bad(what)
        file:close()
        return nil, cassette_error(path, lineno, what)
      end
      if not header then
        local problem = header_problem(v)
        if problem then return bad(problem) end
        if want_kind and v.provider ~= want_kind then
          return bad(("recorded from a '%s' provider, not '%s'"):format(v.provider, want_kind))
        end
        header = v
        goto continue
      end
      local req, res = v.request, v.response
      if type(req) ~= "table" then return bad("the exchange has no 'request' object") end
      if type(res) ~= "table" then return bad("the exchange has no 'response' object") end
      if type(req.method) ~= "string" then return bad("request.method must be a string") end
      if type(req.path) ~= "string" or req.path:sub(1, 1) ~= "/" then
        return bad("request.path must be a string starting with /")
      end
      if type(req.body) ~= "string" then return bad("request.body must be a string") end
      if math.type(res.status) ~= "integer" or res.status < 100 or res.status > 599 then
        return bad("response.status must be an HTTP status")
      end
      if res.headers ~= nil and type(res.headers) ~= "table" then
        return bad("response.headers must be an object")
      end
      for name, value in pairs(res.headers or {}) do
        if type(name) ~= "string" or type(value) ~= "string" then
          return bad("response.headers must map names to strings")
        end
        -- what the replay server would refuse to send, found now rather
        -- than as a 500 in the middle of a run
        if not name:match(TOKEN) then
          return bad(("response.headers: %s is not a header name"):format(show(name)))
        end
        if value:find("[\r\n\0]") then
          return bad(("response.headers[%s] has a CR, LF or NUL in its value"):format(show(name)))
        end
      end
      if (res.body == nil) == (res.chunks == nil) then
        return bad("the response needs either 'body' or 'chunks'")
      end
      if res.body ~= nil and type(res.body) ~= "string" then return bad("response.body must be a string") end
      if res.encoding ~= nil and res.encoding ~= "base64" then
        return bad("response.encoding must be \"base64\" when it is there")
      end
      if res.chunks ~= nil then
        if type(res.chunks) ~= "table" or #res.chunks == 0 then
          return bad("response.chunks must be a non-empty array")
        end
        for i, c in ipairs(res.chunks) do
          if type(c) ~= "table" or type(c.data) ~= "string" or type(c.ms) ~= "number" then
            return bad(("response.chunks[%d] must be {\"ms\": number, \"data\": string}"):format(i - 1))
          end
          -- realtime replay waits that long: the test server takes at most MAX_MS
          if not (c.ms >= 0 and c.ms <= MAX_MS) then
            return bad(("response.chunks[%d].ms must be from 0 to %d, got %s"):format(i - 1, MAX_MS, show(c.ms)))
          end
        end
      end
      if res.encoding == "base64" then -- the bytes themselves from here on
        if res.body then
          res.body = core.base64_decode(res.body)
          if not res.body then return bad("response.body is not base64") end
        else
          for i, c in ipairs(res.chunks) do
            c.data = core.base64_decode(c.data)
            if not c.data then return bad(("response.chunks[%d].data is not base64"):format(i - 1)) end
          end
        end
        res.encoding = nil
      end
      exchanges[#exchanges + 1] = { line = lineno, request = req, response = res }
    end
    ::continue::
  end
  file:close()
  if not header then return nil, cassette_error(path, nil, "empty: no cassette header") end
  return header, exchanges
end

---@class tide.testing.ReplayServer
---@field url string "http://127.0.0.1:<port>": a provider's base_url is this plus the recorded base path
---@field port integer
---@field provider string the kind of provider the cassette was recorded from
---@field base_path string the recorded base_url's path, e.g. "/v1"
local Replay = {}
Replay.__index = Replay

function Replay:_answer(res)
  local headers = {}
  for k, v in pairs(res.headers or {}) do headers[k] = v end
  if res.body then return { status = res.status, headers = headers, body = res.body } end
  local data = {}
  for i, c in ipairs(res.chunks) do data[i] = c.data end
  local out = { status = res.status, headers = headers, chunks = data, chunk_delay_ms = self.chunk_delay_ms }
  if self.realtime then
    -- The test server paces chunks evenly: the recorded first byte, then the
    -- mean gap between chunks.
    local first, last = res.chunks[1].ms, res.chunks[#res.chunks].ms
    out.delay_ms = math.max(0, math.floor(first + 0.5))
    out.chunk_delay_ms = #data > 1 and math.max(1, math.floor((last - first) / (#data - 1) + 0.5)) or 0
  end
  return out
end

function Replay:_handle(req)
  local n = #self._requests + 1
  self._requests[n] = { method = req.method, path = req.path, headers = req.headers, body = req.body }
  local ex = self._exchanges[n]
  local diffs
  if not ex then
    diffs = { ("the cassette holds %d exchange%s; this request is not in it: %s %s"):format(
      #self._exchanges, #self._exchanges == 1 and "" or "s", req.method, req.path) }
  else
    diffs = differences(ex.request, req)
  end
  if #diffs == 0 then return self:_answer(ex.response) end
  local message = ("request %d differs from the cassette: %s"):format(n, diffs[1])
  local extra = #diffs - 1 + (diffs.more or 0)
  if extra > 0 then message = message .. (" (and %d more)"):format(extra) end
  self._mismatches[#self._mismatches + 1] = {
    request = n, line = ex and ex.line, message = message, differences = diffs,
  }
  return json_error(409, "cassette_mismatch", message)
end

--- Every request that did not match the cassette, oldest first: `{ request
--- = n, line = cassette line (nil past the end), message, differences = {
--- "body $.messages[2].content: expected \"a\", got \"b\"", ... } }`.
---@return {request:integer, line:integer|nil, message:string, differences:string[]}[]
function Replay:mismatches()
  return table.move(self._mismatches, 1, #self._mismatches, 1, {})
end

--- Every request received so far, oldest first: `{ method, path, headers, body }`.
---@return table[]
function Replay:requests()
  return table.move(self._requests, 1, #self._requests, 1, {})
end

--- The number of recorded exchanges not yet asked for.
---@return integer
function Replay:pending()
  return math.max(0, #self._exchanges - #self._requests)
end

--- Stops serving (idempotent).
function Replay:close()
  self._server:close()
end
Replay.__close = Replay.close

---@class tide.testing.replay_opts
---@field provider? string|table the provider kind (or a provider) the cassette must come from
---@field realtime? boolean pace responses as recorded (first byte, then the mean gap between chunks)
---@field chunk_delay_ms? integer otherwise: the gap between streamed chunks (default 1, so that each
---chunk reaches the client as a read of its own)

--- Serves a cassette on 127.0.0.1: the n-th request gets the n-th recorded
--- response, streamed chunk by chunk when it was streamed. A request whose
--- method, path or body (JSON compared as values, exactly: an integer past
--- 2^53 as an integer, `[]` apart from `{}`) differs from the
--- recorded one (a `[REDACTED]` in the recorded path matches whatever the
--- replaying provider sends there), or one past the end of the cassette, is
--- answered 409 with "request N differs from the cassette: <first
--- difference>", which the provider's error carries; `srv:mismatches()`
--- lists every difference.
---@param path string
---@param opts? tide.testing.replay_opts
---@return tide.testing.ReplayServer|nil server
---@return table|nil err `CassetteError` (`path`, `line`: unreadable file, a line that is not JSON,
---an exchange missing a field, a cassette from another provider) or `ListenFailed`
function M.replay(path, opts)
  if type(path) ~= "string" or path == "" then
    error(("bad argument #1 to 'replay' (file path expected, got %s)"):format(type(path)), 2)
  end
  opts = opts or {}
  if type(opts) ~= "table" then
    error(("bad argument #2 to 'replay' (table expected, got %s)"):format(type(opts)), 2)
  end
  for k in pairs(opts) do
    if k ~= "provider" and k ~= "realtime" and k ~= "chunk_delay_ms" then
      error(("bad argument #2 to 'replay' (unknown option '%s')"):format(tostring(k)), 2)
    end
  end
  local want = opts.provider
  if type(want) == "table" then want = want.kind end
  if want ~= nil and type(want) ~= "string" then
    error("bad argument #2 to 'replay' (field 'provider' must be a provider or its kind)", 2)
  end
  local cd = opts.chunk_delay_ms
  if cd ~= nil and (math.type(cd) ~= "integer" or cd < 0) then
    error("bad argument #2 to 'replay' (field 'chunk_delay_ms' must be a non-negative integer)", 2)
  end
  local header, exchanges = load(path, want)
  if not header then return nil, exchanges end
  local self = setmetatable({
    provider = header.provider, base_path = type(header.base_path) == "string" and header.base_path or "",
    realtime = opts.realtime == true, chunk_delay_ms = cd or 1,
    _exchanges = exchanges, _requests = {}, _mismatches = {},
  }, Replay)
  local srv, err = require("tide.testing.server").listen {
    host = "127.0.0.1", handler = function(req) return self:_handle(req) end,
  }
  if not srv then return nil, err end
  self._server = srv
  self.port = srv:port()
  self.url = ("http://127.0.0.1:%d"):format(self.port)
  return self
end

return M
