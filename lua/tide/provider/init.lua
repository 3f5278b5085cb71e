--- tide.provider: model providers (OpenAI-compatible chat completions and
--- Anthropic Messages) and the machinery they share: option checking, the
--- HTTP call (streamed through the SSE parser), retries with backoff, error
--- shaping and the neutral response.
---
--- A provider object encodes requests in pieces so that a session encodes its
--- frozen prefix once and each message once (`encode_prefix`,
--- `encode_message`, `body`), then sends the bytes with `complete`.
---@class tide.provider
local provider = {}

local core = require "tide.core"
local json = require "tide.json"

-- ----------------------------------------------------------------- defaults

provider.DEFAULT_TIMEOUT_MS = 120000
provider.DEFAULT_MAX_BODY = 8 * 1024 * 1024
provider.DEFAULT_RETRY = { attempts = 4, base_ms = 250, max_ms = 8000, max_retry_after_ms = 60000 }
provider.ERROR_BODY_MAX = 2048

-- HTTP statuses worth another attempt: rate limits, server errors, gateway
-- errors and Anthropic's "overloaded".
local RETRY_STATUS = { [429] = true, [500] = true, [502] = true, [503] = true, [504] = true, [529] = true }

-- ------------------------------------------------------------------ options

---@class tide.provider.retry
---@field attempts? integer total attempts, first included (default 4)
---@field base_ms? number backoff base (default 250)
---@field max_ms? number backoff ceiling (default 8000)
---@field max_retry_after_ms? number a longer Retry-After is not waited for; the jittered backoff is used instead (default 60000)

---@class tide.provider.opts
---@field base_url? string
---@field api_key? string
---@field model? string
---@field stream? boolean default true
---@field temperature? number
---@field max_tokens? integer
---@field timeout_ms? integer per HTTP request (default 120000)
---@field max_body_bytes? integer response size cap (default 8 MiB)
---@field retry? tide.provider.retry
---@field headers? table<string,string> extra request headers
---@field prompt_cache? boolean Anthropic only: mark the prefix with cache_control

local option_types = {
  base_url = "string", api_key = "string", model = "string", stream = "boolean",
  temperature = "number", max_tokens = "integer", timeout_ms = "integer",
  max_body_bytes = "integer", retry = "table", headers = "table", prompt_cache = "boolean",
}

-- "float" says more than "number" when an integer was wanted.
local function type_name(v, want)
  if want == "integer" and math.type(v) == "float" then return "float" end
  return type(v)
end

-- Returns an error message for the first bad option, or nil.
local function check_options(kind, opts, allowed)
  local where = "tide.provider." .. kind .. ": "
  for k in pairs(opts) do
    if type(k) ~= "string" or not allowed[k] then
      return where .. "unknown option '" .. tostring(k) .. "'"
    end
  end
  for k in pairs(allowed) do
    local v, want = opts[k], option_types[k]
    if v ~= nil then
      local ok
      if want == "integer" then ok = math.type(v) == "integer" else ok = type(v) == want end
      if not ok then
        return ("%s'%s' must be a%s %s, got %s"):format(where, k, want == "integer" and "n" or "",
          want, type_name(v, want))
      end
    end
  end
  for _, k in ipairs({ "max_tokens", "timeout_ms", "max_body_bytes" }) do
    if opts[k] ~= nil and opts[k] <= 0 then return ("%s'%s' must be positive"):format(where, k) end
  end
  if opts.model ~= nil and opts.model == "" then return where .. "'model' must not be empty" end
  if opts.base_url ~= nil and not opts.base_url:match("^https?://") then
    return where .. "'base_url' must start with http:// or https://"
  end
  if opts.headers then
    for k, v in pairs(opts.headers) do
      if type(k) ~= "string" or type(v) ~= "string" then
        return where .. "'headers' must map strings to strings"
      end
    end
  end
  if opts.retry then
    for k, v in pairs(opts.retry) do
      if provider.DEFAULT_RETRY[k] == nil then
        return where .. "unknown option 'retry." .. tostring(k) .. "'"
      end
      if k == "attempts" then
        if math.type(v) ~= "integer" or v < 1 then
          return where .. "'retry.attempts' must be a positive integer"
        end
      elseif type(v) ~= "number" or v < 0 or v ~= v or v == math.huge then
        return ("%s'retry.%s' must be a non-negative number"):format(where, k)
      end
    end
  end
  return nil
end

--- Builds the common fields of a provider object from `opts` and the
--- protocol's defaults. Returns the object, or nil plus a message for a
--- misuse (the caller raises it at its caller's level).
---@param kind string
---@param opts table|nil
---@param defaults {base_url:string, api_key?:string, model:string, extra?:table<string,boolean>}
---@return table|nil, string|nil
function provider._new(kind, opts, defaults)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    return nil, ("tide.provider.%s: options must be a table, got %s"):format(kind, type(opts))
  end
  local allowed = {}
  for k in pairs(option_types) do allowed[k] = true end
  if kind ~= "anthropic" then allowed.prompt_cache = nil end
  local msg = check_options(kind, opts, allowed)
  if msg then return nil, msg end
  local retry = {}
  for k, v in pairs(provider.DEFAULT_RETRY) do retry[k] = v end
  for k, v in pairs(opts.retry or {}) do retry[k] = v end
  local headers = {}
  for k, v in pairs(opts.headers or {}) do headers[k:lower()] = v end
  local self = {
    kind = kind,
    base_url = (opts.base_url or defaults.base_url):gsub("/+$", ""),
    api_key = opts.api_key or defaults.api_key,
    model = opts.model or defaults.model,
    stream = opts.stream ~= false,
    temperature = opts.temperature,
    max_tokens = opts.max_tokens or defaults.max_tokens,
    timeout_ms = opts.timeout_ms or provider.DEFAULT_TIMEOUT_MS,
    max_body_bytes = opts.max_body_bytes or provider.DEFAULT_MAX_BODY,
    retry = retry,
    headers = headers,
    prompt_cache = opts.prompt_cache == true,
  }
  return self
end

--- The value of environment variable `name`, or nil when unset or empty.
function provider._env(name)
  local v = os.getenv(name)
  if v == nil or v == "" then return nil end
  return v
end

-- --------------------------------------------------------- shared encoding

--- Checks a neutral tool schema list and returns it as { name, description,
--- parameters } entries (raises on misuse, at level `level`).
function provider._tools(kind, tools, level)
  local out = {}
  if tools == nil then return out end
  if type(tools) ~= "table" then
    error(("tide.provider.%s: 'tools' must be a table, got %s"):format(kind, type(tools)), level + 1)
  end
  for i, t in ipairs(tools) do
    if type(t) ~= "table" or type(t.name) ~= "string" or t.name == "" then
      error(("tide.provider.%s: tools[%d] needs a 'name' string"):format(kind, i), level + 1)
    end
    if t.description ~= nil and type(t.description) ~= "string" then
      error(("tide.provider.%s: tools[%d].description must be a string"):format(kind, i), level + 1)
    end
    if t.parameters ~= nil and type(t.parameters) ~= "table" then
      error(("tide.provider.%s: tools[%d].parameters must be a table"):format(kind, i), level + 1)
    end
    out[i] = {
      name = t.name,
      description = t.description or "",
      parameters = t.parameters or { type = "object", properties = {} },
    }
  end
  return out
end

--- Checks the common shape of a neutral message (raises on misuse).
function provider._check_message(kind, msg, level)
  if type(msg) ~= "table" then
    error(("tide.provider.%s: a message must be a table, got %s"):format(kind, type(msg)), level + 1)
  end
  local role = msg.role
  if role ~= "system" and role ~= "user" and role ~= "assistant" and role ~= "tool" then
    error(("tide.provider.%s: unknown message role %s"):format(kind, tostring(role)), level + 1)
  end
  if role == "tool" then
    if type(msg.results) ~= "table" then
      error(("tide.provider.%s: a tool message needs a 'results' table"):format(kind), level + 1)
    end
    for i, r in ipairs(msg.results) do
      if type(r) ~= "table" or type(r.id) ~= "string" then
        error(("tide.provider.%s: results[%d] needs an 'id' string"):format(kind, i), level + 1)
      end
    end
  elseif role == "assistant" then
    if msg.content ~= nil and type(msg.content) ~= "string" then
      error(("tide.provider.%s: assistant content must be a string or nil"):format(kind), level + 1)
    end
    if msg.tool_calls ~= nil then
      if type(msg.tool_calls) ~= "table" then
        error(("tide.provider.%s: 'tool_calls' must be a table"):format(kind), level + 1)
      end
      for i, c in ipairs(msg.tool_calls) do
        if type(c) ~= "table" or type(c.id) ~= "string" or type(c.name) ~= "string" then
          error(("tide.provider.%s: tool_calls[%d] needs 'id' and 'name' strings"):format(kind, i),
            level + 1)
        end
      end
    end
  elseif msg.content ~= nil and type(msg.content) ~= "string" and type(msg.content) ~= "table" then
    error(("tide.provider.%s: %s content must be a string"):format(kind, role), level + 1)
  end
end

--- The text of a tool result's content (tables are sent as JSON).
function provider._result_text(content)
  if content == nil then return "" end
  if type(content) == "string" then return content end
  if type(content) == "table" then return json.canonical(content) end
  return tostring(content)
end

-- ----------------------------------------------------------- base methods

---@class tide.provider.response
---@field text string the assistant text ("" when none)
---@field tool_calls {id:string, name:string, arguments:string}[] arguments: raw JSON text
---@field usage {input:integer, output:integer, cached:integer}
---@field stop string|nil "stop", "tool_calls", "length", or the provider's own reason
---@field stop_raw string|nil the provider's finish/stop reason as sent
---@field ttfb_ms number request start to first body byte, for the attempt that answered
---@field attempts integer HTTP attempts made

---@class tide.provider.Provider
---@field kind string "openai" | "anthropic"
---@field model string
local Base = {}
provider.Base = Base

--- The full request body: the prefix, the encoded messages (comma-joined),
--- and the closing brackets. Nothing is re-encoded.
---@param prefix string from encode_prefix
---@param encoded string[] from encode_message, in order
---@return string
function Base:body(prefix, encoded)
  if type(prefix) ~= "string" then
    error(("tide.provider.%s: body: 'prefix' must be a string, got %s"):format(self.kind, type(prefix)), 2)
  end
  if type(encoded) ~= "table" then
    error(("tide.provider.%s: body: 'encoded' must be a table, got %s"):format(self.kind, type(encoded)), 2)
  end
  -- Messages that encode as nothing are left out of the join.
  local wire, empty = encoded, false
  for i = 1, #encoded do
    local e = encoded[i]
    if type(e) ~= "string" then
      error(("tide.provider.%s: body: encoded[%d] must be a string, got %s"):format(self.kind, i, type(e)), 2)
    end
    if e == "" then empty = true end
  end
  if empty then
    wire = {}
    for i = 1, #encoded do
      if encoded[i] ~= "" then wire[#wire + 1] = encoded[i] end
    end
  end
  -- The session's requests are joined the same way, inside core.http_post.
  return core.join_wire(prefix, wire)
end

--- Alias of `body` (the name docs/internals.md mentions for the join).
Base.join = Base.body

-- Bytes of an error body worth showing, cut at a UTF-8 boundary.
local function excerpt(s, max)
  max = max or provider.ERROR_BODY_MAX
  if type(s) ~= "string" then return "" end
  if #s <= max then return s end
  local j = max
  while j > 0 do
    local b = s:byte(j + 1)
    if not b or b < 0x80 or b >= 0xC0 then break end
    j = j - 1
  end
  return s:sub(1, j)
end
provider._excerpt = excerpt

-- ------------------------------------------------------------ Retry-After

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6,
                 jul = 7, aug = 8, sep = 9, oct = 10, nov = 11, dec = 12 }

-- Seconds since the epoch of a UTC civil date (no dependence on the local
-- time zone, unlike os.time).
local function timegm(y, m, d, hh, mm, ss)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = (153 * mp + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + hh * 3600 + mm * 60 + ss
end

-- Parses an HTTP date in any of the three forms RFC 9110 accepts.
local function http_date(s)
  local d, mon, y, hh, mm, ss = s:match("^%a+,%s*(%d+)%s+(%a+)%s+(%d+)%s+(%d+):(%d+):(%d+)%s*GMT$")
  if not d then -- RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
    d, mon, y, hh, mm, ss = s:match("^%a+,%s*(%d+)%-(%a+)%-(%d+)%s+(%d+):(%d+):(%d+)%s*GMT$")
  end
  if not d then -- asctime: Sun Nov  6 08:49:37 1994
    mon, d, hh, mm, ss, y = s:match("^%a+%s+(%a+)%s+(%d+)%s+(%d+):(%d+):(%d+)%s+(%d+)$")
  end
  if not d then return nil end
  local m = MONTHS[mon:sub(1, 3):lower()]
  if not m then return nil end
  y = tonumber(y)
  if y < 100 then y = y + (y < 70 and 2000 or 1900) end
  return timegm(y, m, tonumber(d), tonumber(hh), tonumber(mm), tonumber(ss))
end

--- Milliseconds to wait according to the response headers (`retry-after-ms`,
--- or `retry-after` as seconds or an HTTP date), or nil.
---@param headers table<string,string>|nil lowercased names
---@param now? integer seconds since the epoch (default os.time())
---@return integer|nil
function provider.retry_after_ms(headers, now)
  if type(headers) ~= "table" then return nil end
  local ms = headers["retry-after-ms"]
  if type(ms) == "string" then
    local n = tonumber((ms:match("^%s*([%d%.]+)%s*$")))
    if n then return math.floor(n + 0.5) end
  end
  local v = headers["retry-after"]
  if type(v) ~= "string" then return nil end
  v = v:match("^%s*(.-)%s*$")
  local secs = v:match("^[%d%.]+$") and tonumber(v)
  if secs then return math.floor(secs * 1000 + 0.5) end
  local t = http_date(v)
  if not t then return nil end
  return math.max(0, (t - (now or os.time())) * 1000)
end

--- The delay before attempt `attempt + 1`: the server's Retry-After when it
--- gave one no longer than `max_retry_after_ms`, otherwise full jitter,
--- uniform in [0, min(max_ms, base_ms * 2^(attempt-1))].
---@param retry tide.provider.retry
---@param attempt integer the attempt that just failed (1-based)
---@param after_ms integer|nil
---@return integer
function provider.backoff_ms(retry, attempt, after_ms)
  if after_ms and after_ms <= retry.max_retry_after_ms then return after_ms end
  local cap = math.min(retry.max_ms, retry.base_ms * 2 ^ (attempt - 1))
  cap = math.floor(cap)
  if cap <= 0 then return 0 end
  return math.random(0, cap)
end

-- --------------------------------------------------------------- errors

local function fail(code, message, fields)
  return core.error(code, message, fields)
end
provider._fail = fail

-- The error for a non-2xx response.
local function status_error(kind, res)
  local status = res.status
  local body = res.body or ""
  local detail
  local obj = body ~= "" and json.decode_fast(body)
  if type(obj) == "table" then
    local e = obj.error
    if type(e) == "table" and type(e.message) == "string" then
      detail = e.message
    elseif type(e) == "string" then
      detail = e
    elseif type(obj.message) == "string" then
      detail = obj.message
    end
  end
  local fields = {
    status = status,
    body = excerpt(body),
    retry_after_ms = provider.retry_after_ms(res.headers),
    retryable = RETRY_STATUS[status] == true,
  }
  local msg = ("%s returned HTTP %d"):format(kind, status)
  if detail then msg = msg .. ": " .. excerpt(detail, 512) end
  return fail(status == 429 and "RateLimited" or "ProviderError", msg, fields)
end

-- The error of a finished request (core.http_post) that did not answer 2xx.
local http_response = require("tide.http")._response
local function failed_status(kind, req, status)
  return status_error(kind, http_response {
    status = status, body = req:body(), headers_raw = req:headers_raw() })
end

-- ----------------------------------------------------------- tool calls

--- Finishes the tool calls of a response, in place (the list and its
--- entries are the parser's own): ids the server left out become "call_<n>"
--- (unique within the response), empty arguments become "{}", a missing
--- name "". Each call is left with id, name and arguments.
---@param calls {id?:string, name?:string, arguments?:string, index?:integer}[]
---@return {id:string, name:string, arguments:string}[]
function provider._finish_calls(calls)
  local n = #calls
  local seen
  for i = 1, n do
    local c = calls[i]
    local id = c.id
    if type(id) ~= "string" or id == "" then
      if not seen then
        seen = {}
        for _, o in ipairs(calls) do
          if type(o.id) == "string" and o.id ~= "" then seen[o.id] = true end
        end
      end
      id = "call_" .. i
      local k = 0
      while seen[id] do
        k = k + 1
        id = ("call_%d_%d"):format(i, k)
      end
      seen[id] = true
      c.id = id
    end
    local args = c.arguments
    if type(args) ~= "string" or not args:find("%S") then c.arguments = "{}" end
    if type(c.name) ~= "string" then c.name = "" end
    c.index = nil
  end
  return calls
end

--- Maps a provider's stop reason onto "stop" / "tool_calls" / "length",
--- leaving others as they are.
local STOPS = {
  stop = "stop", end_turn = "stop", stop_sequence = "stop",
  tool_calls = "tool_calls", function_call = "tool_calls", tool_use = "tool_calls",
  length = "length", max_tokens = "length",
}
function provider._stop(raw)
  if type(raw) ~= "string" then return nil end
  return STOPS[raw] or raw
end

--- An integer count from a decoded usage field (0 when absent).
function provider._count(v)
  if type(v) == "number" and v == v and v >= 0 and v < 2 ^ 53 then return math.floor(v) end
  return 0
end

-- ------------------------------------------------------------- complete

local byte = string.byte
local OPEN_BRACE = byte("{")

-- The first byte of s that is not white space, nil if there is none. (A
-- reply's first byte is the usual answer: no pattern match then.)
local function first_significant(s)
  local b = byte(s, 1)
  if b == nil or b > 32 then return b end
  local c = s:match("^%s*(.)")
  return c and byte(c)
end

-- The URL and headers of a provider's requests, built once and rebuilt only
-- when a field they come from changes.
local function endpoint(self)
  local w = self._wire
  if w and w.api_key == self.api_key and w.stream == self.stream and w.base_url == self.base_url
    and w.extra == self.headers then
    return w
  end
  w = { url = self:_url(), headers = core.http_headers(self:_headers()), api_key = self.api_key, stream = self.stream,
        base_url = self.base_url, extra = self.headers }
  rawset(self, "_wire", w)
  return w
end

-- A streamed chunk for a parser in C (OpenAI's: SSE framing and JSON in
-- C). Text deltas are asked for only when someone listens for them: one
-- string per event then, none at all otherwise. Returns whether text reached
-- on_delta, and the error that abandons the stream, if any.
local function feed_c(parser, chunk, on_delta, deltas)
  if not on_delta then
    local _, err = parser:feed(chunk, false)
    return false, err
  end
  local n, err, before = parser:feed(chunk, deltas)
  if n == nil then n = before end
  for i = 1, n do
    local d = deltas[i]
    deltas[i] = nil
    if d ~= "" then on_delta(d) end
  end
  return n > 0, err
end

-- A response parsed in Lua as the session gets it: calls finished, every
-- field there. (The C parsers hand theirs over finished.)
local function finished(out)
  out.tool_calls = provider._finish_calls(out.tool_calls or {})
  out.text = out.text or ""
  out.usage = out.usage or { input = 0, output = 0, cached = 0 }
  return out
end

-- Hands a whole reply's text to on_delta; whether there was any.
local function deliver(out, on_delta)
  local text = out.text
  if text == nil or text == "" then return false end
  if on_delta then on_delta(text) end
  return true
end

-- A whole JSON reply (a non-streamed one, or a streamed request answered
-- without SSE), a string or still in its finished request: the response, or
-- nil and the error; and whether its text reached on_delta. A plain reply is
-- scanned in C where the provider can (no table tree, and no string of the
-- body), written into `into` when given, unless the caller's scan declined
-- it already (`scanned`); anything else goes through the full decoder, which
-- says what is wrong.
local function whole_reply(self, src, on_delta, into, scanned)
  local out = not scanned and self._c_parse and self:_c_parse(src, into)
  local err
  if not out then
    local text = type(src) == "string" and src or src:body()
    local obj, derr = json.decode_fast(text)
    if obj == nil then
      return nil, fail("MalformedResponse", ("%s response is not valid JSON (%s)"):format(self.kind,
        derr.message), { body = excerpt(text) })
    end
    if type(obj) ~= "table" then
      return nil, fail("MalformedResponse", self.kind .. " response is not a JSON object",
        { body = excerpt(text) })
    end
    out, err = self:_parse(obj)
    if not out then
      if err.body == nil then err.body = excerpt(text) end
      return nil, err
    end
    finished(out)
  end
  return out, nil, deliver(out, on_delta)
end

-- One non-streamed HTTP attempt. Returns the response, or nil, an error and
-- two flags: whether any byte of a reply arrived (`received`) and whether
-- text reached on_delta (`delivered`), which decide if a retry is safe. With
-- `wire`, the body sent is join_wire(body, wire), joined in C into the
-- request itself; with `into`, a reply parsed in C is written into that
-- table (the session's, reused for every reply of a turn).
local function attempt_whole(self, body, opts, timeout_ms, wire, into)
  local w = endpoint(self)
  local req, scanned
  if self._c_post and not opts.on_delta then
    -- Posted, waited for and scanned in one step in C (core.openai_post):
    -- a plain reply comes back parsed; any other, with its finished
    -- request, read below as http_post's is (its scan is not tried again).
    local out
    out, req = core.openai_post(w.url, w.headers, body, timeout_ms, self.max_body_bytes, wire, into)
    if out then return out, nil, true, false end
    scanned = true
  else
    req = core.http_post(w.url, w.headers, body, timeout_ms, self.max_body_bytes, false, wire)
  end
  local _ <close> = req
  local kind, v, ttfb_ms = req:next() -- "done", status, ttfb_ms | nil, err
  if kind ~= "done" then return nil, v, v.status ~= nil, false end
  local status = v
  if status < 200 or status > 299 then
    return nil, failed_status(self.kind, req, status), true, false
  end
  local out, err, delivered = whole_reply(self, req, opts.on_delta, into, scanned)
  if not out then return nil, err, true, false end
  out.ttfb_ms = ttfb_ms
  return out, nil, true, delivered
end

-- One streamed HTTP attempt: as attempt_whole, the reply parsed as it comes.
local function attempt_stream(self, body, opts, timeout_ms, wire, into)
  local on_delta = opts.on_delta
  local received, delivered = false, false
  local t0 = core.hrtime()
  local ttfb_ms

  -- The reply's parser: in C where the provider has one (a userdata with
  -- feed, finish and close), else a Lua stream fed SSE events, which hands
  -- text to emit.
  local parser <close> = self._c_stream and self:_c_stream() or nil
  local emit, stream
  if not parser then
    emit = function(text)
      if text == nil or text == "" then return end
      delivered = true
      if on_delta then on_delta(text) end
    end
    stream = self:_stream(emit)
  end
  local sse <close> = stream and core.sse_parser(self.max_body_bytes) or nil
  local deltas = parser and on_delta and {} or nil
  local mode -- "sse" or "json" once the first significant byte is seen
  local held -- chunks before the mode is known, or of a streamed request answered with plain JSON
  local stream_err

  local w = endpoint(self)
  local req <close> = core.http_post(w.url, w.headers, body, timeout_ms, self.max_body_bytes, true, wire)
  -- With a C parser and nobody to hand text to, the request feeds the
  -- parser itself (req:pump): no string per chunk, no trip through this
  -- loop. It hands a reply that is not an event stream back as next() would.
  local pump = parser ~= nil and on_delta == nil
  local status, done_ttfb_ms, herr
  while true do
    local kind, v, ttfb
    if pump and mode ~= "json" then
      kind, v, ttfb = req:pump(parser)
      if kind == "fail" then
        received = true
        stream_err = self:_stream_error(v)
        break
      end
      -- (after a failed transfer the third value says whether bytes came)
      if kind == nil and ttfb then received = true end
    else
      kind, v, ttfb = req:next()
    end
    if kind ~= "data" then
      if kind == "done" then status, done_ttfb_ms = v, ttfb else herr = v end
      break
    end
    -- a streamed 2xx body, chunk by chunk
    if not received then
      received = true
      ttfb_ms = (core.hrtime() - t0) / 1e6
    end
    local chunk = v
    if mode == nil then
      if held then chunk = table.concat(held) .. chunk end
      local c = first_significant(chunk)
      if c == nil then
        held = { chunk }
        goto continue
      end
      held = nil
      mode = c == OPEN_BRACE and "json" or "sse"
    end
    if mode == "json" then
      held = held or {}
      held[#held + 1] = chunk
    elseif parser then
      local got, err = feed_c(parser, chunk, on_delta, deltas)
      if got then delivered = true end
      if err then
        stream_err = self:_stream_error(err)
        break
      end
    else
      local events, err = sse:feed(chunk)
      if not events then
        stream_err = fail("MalformedResponse", "invalid event stream: " .. tostring(err.message or err),
          { cause = err.code })
        break
      end
      for i = 1, #events do
        err = stream:event(events[i])
        if err then
          stream_err = err
          break
        end
      end
      if stream_err then break end
    end
    ::continue::
  end
  if stream_err then return nil, stream_err, received, delivered end
  if not status then
    if herr.status then received = true end
    return nil, herr, received, delivered
  end
  if status < 200 or status > 299 then
    return nil, failed_status(self.kind, req, status), true, delivered
  end

  if mode ~= "json" then
    local out, err
    if parser then
      out, err = parser:finish(into)
      if not out then err = self:_stream_error(err) end
    else
      out, err = stream:finish()
      if out then finished(out) end
    end
    if not out then return nil, err, received, delivered end
    -- A pumped stream's first byte is libcurl's to time.
    out.ttfb_ms = ttfb_ms or done_ttfb_ms or (core.hrtime() - t0) / 1e6
    return out
  end
  -- a streamed request answered with one JSON body
  local out, err, got = whole_reply(self, held and table.concat(held) or "", on_delta)
  if not out then return nil, err, received, delivered end
  out.ttfb_ms = ttfb_ms or done_ttfb_ms
  return out, nil, received, delivered or got
end

local function retryable(err, received, delivered)
  if delivered then return false end
  if err.retryable then return true end
  if (err.code == "ConnectFailed" or err.code == "ConnectionClosed") and not received then
    return true
  end
  return false
end

local complete_fields = { on_delta = "function", on_retry = "function", timeout_ms = "integer" }

local function complete(self, body, opts, wire, into)
  local n = 0
  local retry = self.retry
  local timeout_ms = opts.timeout_ms or self.timeout_ms
  local attempt = self.stream and attempt_stream or attempt_whole
  while true do
    n = n + 1
    local res, err, received, delivered = attempt(self, body, opts, timeout_ms, wire, into)
    if res then
      res.attempts = n
      return res
    end
    err.attempts = n
    if n >= retry.attempts or not retryable(err, received, delivered) then
      err.retryable = nil
      return nil, err
    end
    local delay = provider.backoff_ms(retry, n, err.retry_after_ms)
    if opts.on_retry then
      opts.on_retry({ attempt = n, delay_ms = delay, error = err })
    end
    core.sleep(math.tointeger(delay) or math.floor(delay))
  end
end

--- Sends a request body and returns the neutral response. Inside a task it
--- suspends only that task; outside any task it drives the loop itself.
--- Retries rate limits (429), server errors (500, 502, 503, 504, 529) and
--- connections that failed before any byte of a reply, with exponential
--- backoff and full jitter, honouring Retry-After; never once streamed text
--- has reached `on_delta`.
---@param body string from `body`
---@param opts? {on_delta?:fun(text:string), on_retry?:fun(info:{attempt:integer, delay_ms:integer, error:table}), timeout_ms?:integer}
---@return tide.provider.response|nil
---@return table|nil err `{ code = "RateLimited"|"ProviderError"|"MalformedResponse"|"Timeout"|..., message, status?, body?, attempts }`
-- complete for the session's turn: already inside a task, options its own;
-- `_complete(prefix, opts, wire, into)` sends join_wire(prefix, wire)
-- without making it a Lua string, and a reply parsed in C comes back in
-- `into` (a table the turn reuses: it holds the latest reply only).
Base._complete = complete

function Base:complete(body, opts)
  if type(body) ~= "string" then
    error(("tide.provider.%s: complete: 'body' must be a string, got %s"):format(self.kind, type(body)), 2)
  end
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    error(("tide.provider.%s: complete: 'opts' must be a table, got %s"):format(self.kind, type(opts)), 2)
  end
  for k, want in pairs(complete_fields) do
    local v = opts[k]
    if v ~= nil then
      local ok = want == "integer" and math.type(v) == "integer" and v > 0 or type(v) == want
      if not ok then
        error(("tide.provider.%s: complete: '%s' must be a %s%s, got %s"):format(self.kind, k,
          want == "integer" and "positive " or "", want, type_name(v, want)), 2)
      end
    end
  end
  return require("tide")._blocking(complete, self, body, opts)
end

--- The stable identity of a prefix (for logs and cache checks): FNV-1a 64.
---@param prefix string
---@return string
function Base:fingerprint(prefix)
  return core.hash(prefix)
end

-- ------------------------------------------------------------ constructors

--- An OpenAI-compatible chat-completions provider (OpenAI, Ollama, llama.cpp
--- server, vLLM, OpenRouter...). Defaults: OPENAI_BASE_URL
--- ("https://api.openai.com/v1"), OPENAI_API_KEY, TIDE_MODEL ("gpt-4o-mini").
---@param opts? tide.provider.opts
---@return tide.provider.Provider
function provider.openai(opts)
  local p, msg = require("tide.provider.openai").new(opts)
  if not p then error(msg, 2) end
  return p
end

--- An Anthropic Messages provider. Defaults: ANTHROPIC_BASE_URL
--- ("https://api.anthropic.com/v1"), ANTHROPIC_API_KEY, TIDE_MODEL
--- ("claude-sonnet-4-5"), max_tokens 4096.
---@param opts? tide.provider.opts
---@return tide.provider.Provider
function provider.anthropic(opts)
  local p, msg = require("tide.provider.anthropic").new(opts)
  if not p then error(msg, 2) end
  return p
end

--- True when `v` is a provider object made by this module.
function provider.is(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and type(mt.__index) == "table" and mt.__index.complete == Base.complete
end

return provider
