--- tide.tracing: OpenTelemetry traces of what agents do, following the
--- GenAI semantic conventions, exported with OTLP/HTTP.
---
--- Spans: `invoke_agent {agent}` per turn and per sub-agent run (nested
--- under the delegating tool's span), `chat {model}` per provider call,
--- `execute_tool {name}` per tool call; retries, compactions and approvals
--- are events. Message content only with `capture_content = true`.
---
--- Export: OTLP/HTTP with **protobuf** bodies (`application/x-protobuf`,
--- POST <endpoint>/v1/traces). Protobuf is the encoding every OTLP receiver
--- must accept and the default of the OpenTelemetry SDKs; OTLP/JSON is
--- optional for collectors and its ids and 64-bit integers have their own
--- mapping rules. Spans wait in a bounded queue (drops counted), go out in
--- batches from a task on the libuv loop (a turn never waits for them), and
--- a pending batch keeps `tide.run` alive until it is sent: flushed at exit
--- (`tide.tracing.flush()` sends at once).
--- An unreachable or failing collector costs one warning and the dropped
--- spans, never a turn.
---@class tide.tracing
local M = {}

local core = require "tide.core"

local QUEUE_MAX = 2048
local BATCH_MAX = 512

-- One config per process (a Lua state); nil while tracing is off.
local config
local queue, dropped, exported, failures, warned = {}, 0, 0, 0, false
local flushing = false

-- ------------------------------------------------------------- protobuf --

-- The few protobuf encoders OTLP needs: varints, length-delimited fields,
-- fixed64 and doubles. Field numbers and types are those of
-- opentelemetry/proto (collector/trace/v1, trace/v1, common/v1).
local char, pack = string.char, string.pack

-- (a span's lengths, keys and counts are nearly all under 2^14: one or two
-- bytes, without the loop)
local function varint(n)
  if n >= 0 and n < 0x80 then return char(n) end
  if n >= 0 and n < 0x4000 then return char(n & 0x7f | 0x80, n >> 7) end
  local out = ""
  repeat
    local b = n & 0x7f
    n = n >> 7 -- (logical: a negative number takes ten bytes, as protobuf's int64)
    if n ~= 0 then b = b | 0x80 end
    out = out .. char(b)
  until n == 0
  return out
end

-- (every field number OTLP uses here is below 16: its key is one byte)
local function bytes_field(field, s)
  local n = #s
  if n < 0x80 then return char(field << 3 | 2, n) .. s end
  return char(field << 3 | 2) .. varint(n) .. s
end
local string_field = bytes_field
local function varint_field(field, n) return char(field << 3) .. varint(n) end
local function fixed64_field(field, n) return pack("<Bi8", field << 3 | 1, n) end
local function double_field(field, x) return pack("<Bd", field << 3 | 1, x) end

-- A string attribute as protobuf takes one: valid UTF-8 (a tool's raw
-- bytes, captured content, each bad byte a U+FFFD), at most ATTR_MAX bytes.
local ATTR_MAX = 64 * 1024
local function attr_string(v)
  if #v > ATTR_MAX then
    v = v:sub(1, ATTR_MAX)
    while #v > 0 and (v:byte(-1) & 0xC0) == 0x80 do v = v:sub(1, -2) end -- (no half character)
  end
  if utf8.len(v) then return v end
  local out, i = {}, 1
  while true do
    local n, bad = utf8.len(v, i)
    if n then out[#out + 1] = v:sub(i) return table.concat(out) end
    out[#out + 1] = v:sub(i, bad - 1) .. "\u{FFFD}"
    i = bad + 1
  end
end

local function any_value(v)
  local t = type(v)
  if t == "string" then return string_field(1, attr_string(v)) end
  if t == "boolean" then return varint_field(2, v and 1 or 0) end
  if math.type(v) == "integer" then return varint_field(3, v) end
  if t == "number" then return double_field(4, v) end
  if t == "table" then -- a list: ArrayValue of its values
    local values = {}
    for i, x in ipairs(v) do values[i] = bytes_field(1, any_value(x)) end
    return bytes_field(5, table.concat(values))
  end
  return string_field(1, tostring(v))
end

local function key_value(k, v) return string_field(1, k) .. bytes_field(2, any_value(v)) end

local function attributes(field, attrs)
  local keys = {}
  for k in pairs(attrs) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for i, k in ipairs(keys) do out[i] = bytes_field(field, key_value(k, attrs[k])) end
  return table.concat(out)
end

-- The bytes of a trace or span id (32 or 16 hex digits), four at a time.
local function hex_bytes(h)
  if #h == 16 then return pack(">I4I4", tonumber(h:sub(1, 8), 16), tonumber(h:sub(9, 16), 16)) end
  if #h == 32 then
    return pack(">I4I4I4I4", tonumber(h:sub(1, 8), 16), tonumber(h:sub(9, 16), 16), tonumber(h:sub(17, 24), 16),
      tonumber(h:sub(25, 32), 16))
  end
  return (h:gsub("%x%x", function(x) return char(tonumber(x, 16)) end))
end

local function encode_span(s)
  local parts = {
    bytes_field(1, hex_bytes(s.trace_id)), bytes_field(2, hex_bytes(s.span_id)),
  }
  if s.parent_id then parts[#parts + 1] = bytes_field(4, hex_bytes(s.parent_id)) end
  parts[#parts + 1] = string_field(5, s.name)
  parts[#parts + 1] = varint_field(6, s.kind)
  parts[#parts + 1] = fixed64_field(7, s.start_ns)
  parts[#parts + 1] = fixed64_field(8, s.end_ns)
  parts[#parts + 1] = attributes(9, s.attributes)
  for _, ev in ipairs(s.events or {}) do
    parts[#parts + 1] = bytes_field(11, fixed64_field(1, ev.time_ns) .. string_field(2, ev.name)
      .. attributes(3, ev.attributes or {}))
  end
  if s.error then -- Status { message = 2, code = 3 (2: ERROR) }
    parts[#parts + 1] = bytes_field(15, string_field(2, s.error) .. varint_field(3, 2))
  end
  return table.concat(parts)
end

--- The OTLP ExportTraceServiceRequest of `spans`, protobuf-encoded.
function M.encode(spans, service, extra)
  local encoded = {}
  for i, s in ipairs(spans) do encoded[i] = bytes_field(2, encode_span(s)) end
  local res = {}
  for k, v in pairs(extra or {}) do res[k] = v end
  res["service.name"], res["telemetry.sdk.name"], res["telemetry.sdk.language"] = service, "tide", "lua"
  local resource = attributes(1, res)
  local scope = string_field(1, "tide") .. string_field(2, core.version or "")
  local scope_spans = bytes_field(1, scope) .. table.concat(encoded)
  local resource_spans = bytes_field(1, resource) .. bytes_field(2, scope_spans)
  return bytes_field(1, resource_spans)
end

-- ---------------------------------------------------------------- ids --

-- Ids from OpenSSL's generator, which the kernel seeds (Lua's is seeded
-- from the time and an address, and a script's math.randomseed would
-- make every run's ids alike). Never all zeros.
local function random_hex(nbytes)
  local b = core.random_bytes(nbytes)
  if not b:find("[^%z]") then b = b:sub(1, -2) .. "\1" end
  return (b:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function now_ns() return core.wall_ns() end

-- ---------------------------------------------------------------- spans --

local SPAN_MT = {}
SPAN_MT.__index = SPAN_MT

--- Starts a span under `parent` (a span, a parsed traceparent, or nil for a
--- new trace). kind: 1 INTERNAL, 3 CLIENT. Nil when tracing is off or the
--- trace is not sampled.
function M.start(name, kind, parent, attrs)
  if not config then return nil end
  local trace_id, parent_id
  if parent then
    if parent.sampled == false then return nil end
    trace_id, parent_id = parent.trace_id, parent.span_id
  else
    if config.sample < 1 and math.random() >= config.sample then
      return nil
    end
    trace_id = random_hex(16)
  end
  if config.keep_last and (parent == nil or getmetatable(parent) ~= SPAN_MT) then
    M._last, M._last_trace = {}, trace_id -- a new root: the trace /trace shows
  end
  return setmetatable({ trace_id = trace_id, span_id = random_hex(8), parent_id = parent_id, name = name,
    kind = kind, start_ns = now_ns(), attributes = attrs or {} }, SPAN_MT)
end

--- Adds an event to the span.
function SPAN_MT:event(name, attrs)
  local evs = self.events or {}
  self.events = evs
  evs[#evs + 1] = { name = name, time_ns = now_ns(), attributes = attrs }
end

--- Ends the span (err: the error table that ended it, if any) and queues it.
function SPAN_MT:finish(err)
  if self.end_ns then return end
  self.end_ns = now_ns()
  if not config then return end -- (tracing was turned off while the span ran)
  if err then
    self.error = type(err) == "table" and tostring(err.message or err) or tostring(err)
    self.attributes["error.type"] = type(err) == "table" and err.code or "error"
  end
  -- the spans of the last trace, for a local view (the chat's /trace)
  if config.keep_last and self.trace_id == M._last_trace and #M._last < QUEUE_MAX then
    M._last[#M._last + 1] = self
  end
  if not config.url then return end
  if #queue >= QUEUE_MAX then
    dropped = dropped + 1
    return
  end
  queue[#queue + 1] = self
  M._schedule()
end

--- Whether content (messages, arguments, results) goes on spans.
function M.capture_content() return config ~= nil and config.capture_content end

-- ------------------------------------------------------------- export --

local function warn(msg)
  if warned then return end
  warned = true
  io.stderr:write("tide: tracing: ", msg, " (spans are dropped; further failures are counted)\n")
end

local function send(batch)
  local http = require "tide.http"
  local headers = { ["content-type"] = "application/x-protobuf" }
  for k, v in pairs(config.headers) do headers[k] = v end
  local res, err = http.request { method = "POST", url = config.url, headers = headers,
    body = M.encode(batch, config.service, config.resource), timeout_ms = config.timeout_ms }
  if res and res.status >= 200 and res.status < 300 then
    exported = exported + #batch
    return true
  end
  failures = failures + 1
  dropped = dropped + #batch
  warn(res and ("the collector answered HTTP " .. res.status) or tostring(err))
  return false
end

-- Sends the queue, a batch at a time.
local function drain()
  while config and #queue > 0 do
    local n = math.min(BATCH_MAX, #queue)
    local batch = table.move(queue, 1, n, 1, {})
    table.move(queue, n + 1, #queue + n, 1)
    send(batch)
  end
end

--- Sends what is queued, now (in a task, or driving the loop).
function M.flush()
  if not config then return true end
  return require("tide")._blocking(function() drain() return true end)
end

--- How long spans wait to be sent together (ms). A plain script's blocking
--- call sends what its turn queued before it returns (init.lua's
--- `blocking` calls `_drain_now`), so only tide.run applications wait it.
M.batch_delay_ms = 100

local flusher -- the task waiting to send, if any

-- A task that sends the queue after `batch_delay_ms` (at once when a batch
-- is full): spans go out in batches, and while it waits, tide.run stays
-- alive: flushed at exit. The turns that ended the spans never wait for it.
function M._schedule()
  if flushing or not core.running() then return end
  flushing = true
  flusher = core.spawn(function()
    -- (a child of the task that ended the span: when that task is
    -- cancelled, so is this one, and the spans wait in the queue for the
    -- next sender, or the end of the run)
    local ok, err = pcall(function()
      core.sleep(#queue >= BATCH_MAX and 0 or M.batch_delay_ms)
      flusher = nil
      drain()
    end)
    flusher, flushing = nil, false
    if not ok and not (type(err) == "table" and err.code == "Cancelled") then warn(tostring(err)) end
  end)
end

function M._config() return config end -- (for the specs)

--- Whether spans wait to be sent (tide.run sends them at its end).
function M._pending() return config ~= nil and config.url ~= nil and #queue > 0 end

--- Sends what is queued from the running task, the waiting sender
--- cancelled: the end of a blocking call, which would otherwise wait for
--- the batch delay.
function M._drain_now()
  if flusher then
    flusher:cancel()
    flusher, flushing = nil, false
  end
  if config and #queue > 0 then pcall(drain) end
end

--- Keeps the spans of the last trace in memory (`last_tree()`), exporting
--- them only when an endpoint is set: the chat's /trace turns this on.
function M.keep_last()
  if not config then
    config = { headers = {}, service = "tide", capture_content = false, sample = 1, timeout_ms = 10000 }
  end
  config.keep_last = true
  M._last = M._last or {}
end

--- The last trace's spans as an indented tree with durations, one line a
--- span (children in start order), or nil when none was kept.
function M.last_tree()
  local spans = M._last
  if not spans or #spans == 0 then return nil end
  local children, ids = {}, {}
  for _, s in ipairs(spans) do ids[s.span_id] = true end
  for _, s in ipairs(spans) do
    local parent = ids[s.parent_id or ""] and s.parent_id or "root"
    children[parent] = children[parent] or {}
    table.insert(children[parent], s)
  end
  local lines = {}
  local function walk(id, depth)
    local list = children[id] or {}
    table.sort(list, function(a, b) return a.start_ns < b.start_ns end)
    for _, s in ipairs(list) do
      lines[#lines + 1] = ("%s%s  %.1f ms%s"):format(("  "):rep(depth), s.name, (s.end_ns - s.start_ns) / 1e6,
        s.error and ("  [" .. (s.attributes["error.type"] or "error") .. "]") or "")
      walk(s.span_id, depth + 1)
    end
  end
  walk("root", 0)
  return table.concat(lines, "\n")
end

--- Counters: spans exported and dropped, failed exports, queued.
function M.stats()
  return { exported = exported, dropped = dropped, failures = failures, queued = #queue,
    enabled = config ~= nil }
end

-- ------------------------------------------------------------ context --

--- Parses a W3C traceparent ("00-<trace>-<span>-<flags>"), or nil.
function M.parse_traceparent(s)
  if type(s) ~= "string" then return nil end
  local trace, span, flags = s:match("^00%-(%x+)%-(%x+)%-(%x%x)$")
  if not trace or #trace ~= 32 or #span ~= 16 or trace == ("0"):rep(32) or span == ("0"):rep(16) then return nil end
  return { trace_id = trace:lower(), span_id = span:lower(), sampled = tonumber(flags, 16) & 1 == 1 }
end

--- The W3C traceparent of a span.
function M.traceparent(span)
  return ("00-%s-%s-01"):format(span.trace_id, span.span_id)
end

-- ------------------------------------------------------------- config --

local OPTIONS = { endpoint = true, headers = true, service = true, capture_content = true, sample = true,
  timeout_ms = true }

-- An OTEL_* variable; an empty one is unset, as the specification says.
local function env(name)
  local v = os.getenv(name)
  if v == nil or v:match("^%s*$") then return nil end
  return v
end

-- A list of key=value pairs, comma-separated, values percent-encoded (the
-- OTEL_*_HEADERS and OTEL_RESOURCE_ATTRIBUTES form).
local function pairs_of(s, lower)
  local h = {}
  for pair in (s or ""):gmatch("[^,]+") do
    local k, v = pair:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
    if k and k ~= "" then
      h[lower and k:lower() or k] = v:gsub("%%(%x%x)", function(x) return char(tonumber(x, 16)) end)
    end
  end
  return h
end

local function env_headers()
  return pairs_of(env("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env("OTEL_EXPORTER_OTLP_HEADERS"), true)
end

--- Turns tracing on: `endpoint` (default $OTEL_EXPORTER_OTLP_ENDPOINT; a
--- $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as the full URL), `headers`
--- ($OTEL_EXPORTER_OTLP_HEADERS), `service` ($OTEL_SERVICE_NAME, "tide"),
--- `capture_content` (false), `sample` (the ratio of root traces kept, 1),
--- `timeout_ms` (export requests, 10000). `tide.tracing(false)` turns it off.
---@param opts table|false|nil
function M.setup(opts, level)
  level = level or 2
  if opts == false then
    config = nil
    return
  end
  opts = opts or {}
  if type(opts) ~= "table" then error("bad argument #1 to 'tracing' (table expected)", level) end
  for k in pairs(opts) do
    if not OPTIONS[k] then error(("tide.tracing: unknown option '%s'"):format(tostring(k)), level) end
  end
  local url = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
  local endpoint = opts.endpoint or env("OTEL_EXPORTER_OTLP_ENDPOINT")
  if opts.endpoint or not url then
    if type(endpoint) ~= "string" or not endpoint:match("^https?://") then
      error("tide.tracing: 'endpoint' must be an http(s) URL (or set OTEL_EXPORTER_OTLP_ENDPOINT)", level)
    end
    url = endpoint:gsub("/+$", "") .. "/v1/traces"
  end
  if opts.headers ~= nil and type(opts.headers) ~= "table" then error("tide.tracing: 'headers' must be a table", level) end
  if opts.sample ~= nil and (type(opts.sample) ~= "number" or opts.sample < 0 or opts.sample > 1) then
    error("tide.tracing: 'sample' must be a number from 0 to 1", level)
  end
  if opts.service ~= nil and type(opts.service) ~= "string" then error("tide.tracing: 'service' must be a string", level) end
  if opts.timeout_ms ~= nil and (math.type(opts.timeout_ms) ~= "integer" or opts.timeout_ms <= 0) then
    error("tide.tracing: 'timeout_ms' must be a positive integer", level)
  end
  local headers = {}
  for k, v in pairs(env_headers()) do headers[k] = v end
  for k, v in pairs(opts.headers or {}) do headers[k:lower()] = v end
  -- the resource's attributes: OTEL_RESOURCE_ATTRIBUTES, the service name
  -- over its own (option, then OTEL_SERVICE_NAME)
  local resource = pairs_of(env("OTEL_RESOURCE_ATTRIBUTES"), false)
  config = {
    url = url, headers = headers, resource = resource,
    service = opts.service or env("OTEL_SERVICE_NAME") or resource["service.name"] or "tide",
    capture_content = opts.capture_content == true, sample = opts.sample or 1,
    timeout_ms = opts.timeout_ms or 10000, keep_last = config and config.keep_last,
  }
end

--- Whether tracing is on (turned on by the OTEL_* variables at first use).
function M.enabled()
  if config == nil and not M._env_checked then
    M._env_checked = true
    local disabled = (env("OTEL_SDK_DISABLED") or ""):lower() == "true"
    if not disabled and (env("OTEL_EXPORTER_OTLP_ENDPOINT") or env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) then
      pcall(M.setup, {})
    end
  end
  return config ~= nil
end

--- Resets counters and the queue (specs).
function M._reset()
  queue, dropped, exported, failures, warned, flushing = {}, 0, 0, 0, false, false
end

-- tide.tracing{...} is setup; tide.tracing.flush(), .stats() the rest.
return setmetatable(M, { __call = function(_, opts)
  M.setup(opts, 3) -- (no tail call: its errors name the caller's line)
end })
