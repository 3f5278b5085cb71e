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
--- batches from a task on the libuv loop (a turn never waits for them);
--- what is queued when tide.run's function (or a plain script's blocking
--- call) returns is sent then, and a batch still waiting keeps the run
--- alive until it is sent: flushed at exit (`tide.tracing.flush()` sends
--- at once).
--- An unreachable or failing collector costs one warning and the dropped
--- spans, never a turn; what the protocol calls transient (429, 502, 503,
--- 504, no answer at all) is tried again, with backoff.
---
--- The OpenTelemetry SDKs' variables are read as the specification says:
--- OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, _COMPRESSION
--- (gzip), _PROTOCOL (http/protobuf, the one spoken), OTEL_SERVICE_NAME,
--- OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER and _ARG, OTEL_BSP_*
--- (delay, queue and batch sizes), OTEL_SDK_DISABLED; a value that cannot
--- be read is ignored with a warning.
---@class tide.tracing
local M = {}

local core = require "tide.core"

local QUEUE_MAX = 2048 -- (OTEL_BSP_MAX_QUEUE_SIZE's default)
local BATCH_MAX = 512 -- (OTEL_BSP_MAX_EXPORT_BATCH_SIZE's default)

-- One config per process (a Lua state); nil while tracing is off.
local config
local queue, dropped, exported, failures, warned = {}, 0, 0, 0, false
local flushing = false

-- ------------------------------------------------------------- protobuf --

-- The envelope around a batch's spans (the spans themselves are encoded in
-- C: core.otlp_spans): length-delimited fields, as opentelemetry/proto's
-- collector/trace/v1, trace/v1 and common/v1 number them.
local char = string.char

local function varint(n)
  local out = ""
  repeat
    local b = n & 0x7f
    n = n >> 7
    if n ~= 0 then b = b | 0x80 end
    out = out .. char(b)
  until n == 0
  return out
end

-- (every field number OTLP uses here is below 16: its key is one byte)
local function bytes_field(field, s) return char(field << 3 | 2) .. varint(#s) .. s end

-- The Resource (its attributes: the service and the SDK's, and `extra`)
-- and the InstrumentationScope every export names, encoded.
local function envelope(service, extra)
  local res = {}
  for k, v in pairs(extra or {}) do res[k] = v end
  res["service.name"], res["telemetry.sdk.name"], res["telemetry.sdk.language"] = service, "tide", "lua"
  return core.otlp_attributes(1, res), bytes_field(1, "tide") .. bytes_field(2, core.version or "")
end
M._envelope, M._bytes_field, M._varint = envelope, bytes_field, varint

--- The OTLP ExportTraceServiceRequest of `spans`, protobuf-encoded.
function M.encode(spans, service, extra)
  local resource, scope = envelope(service, extra)
  local scope_spans = bytes_field(1, scope) .. core.otlp_spans(spans)
  local resource_spans = bytes_field(1, resource) .. bytes_field(2, scope_spans)
  return bytes_field(1, resource_spans)
end

-- ---------------------------------------------------------------- ids --

-- Ids from OpenSSL's generator, which the kernel seeds (Lua's is seeded
-- from the time and an address, and a script's math.randomseed would
-- make every run's ids alike). Never all zeros.
local random_hex = core.random_hex

local now_ns = core.wall_ns

-- ---------------------------------------------------------------- spans --

local SPAN_MT = {}
SPAN_MT.__index = SPAN_MT

--- The parent of what runs under a turn that is not sampled (a sub-agent's
--- turn): nothing under it is sampled either.
M.UNSAMPLED = { sampled = false }

-- TraceIdRatioBased: whether `ratio` of traces keeps this one, decided by
-- its id alone, so that every process of a trace decides alike: the id's
-- last 56 bits (random, as W3C Trace Context level 2 says) against the
-- threshold (1 - ratio) * 2^56, as the OpenTelemetry specification has it.
local function keeps(trace_id, ratio)
  if ratio >= 1 then return true end
  if ratio <= 0 then return false end
  local r = tonumber(trace_id:sub(-14), 16)
  return r ~= nil and r >= math.floor((1 - ratio) * 2 ^ 56)
end

--- Starts a span under `parent` (a span, M.UNSAMPLED, a parsed traceparent,
--- or nil for a new trace). kind: 1 INTERNAL, 3 CLIENT. Nil when tracing is
--- off or the trace is not sampled: a span of this process is followed,
--- another process's decision (a traceparent's flag) as the sampler says.
function M.start(name, kind, parent, attrs)
  if not config then return nil end
  local trace_id, parent_id
  if parent == M.UNSAMPLED then return nil end
  if parent then
    trace_id, parent_id = parent.trace_id, parent.span_id
    if getmetatable(parent) ~= SPAN_MT then -- another process's decision
      local sampler = config.sampler
      if sampler.parent_based then
        if not parent.sampled then return nil end
      elseif not keeps(trace_id, sampler.ratio) then
        return nil
      end
    end
  else
    trace_id = random_hex(16)
    if not keeps(trace_id, config.sampler.ratio) then return nil end
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
  if config.keep_last and self.trace_id == M._last_trace and #M._last < config.queue_max then
    M._last[#M._last + 1] = self
  end
  if not config.url then return end
  if #queue >= config.queue_max then
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

-- A protobuf varint at i of s: its value and the index after it, or nil.
local function read_varint(s, i)
  local v, shift = 0, 0
  repeat
    local b = s:byte(i)
    if not b or shift > 63 then return nil end
    v, i, shift = v | (b & 0x7f) << shift, i + 1, shift + 7
  until b < 0x80
  return v, i
end

-- The varint and length-delimited fields of message s, by number (the
-- last of each), as far as s reads.
local function read_fields(s)
  local out, i = {}, 1
  while i <= #s do
    local key, v
    key, i = read_varint(s, i)
    if not key then return out end
    local wire = key & 7
    if wire == 0 then
      v, i = read_varint(s, i)
      if not v then return out end
      out[key >> 3] = v
    elseif wire == 2 then
      v, i = read_varint(s, i)
      if not v or i + v - 1 > #s then return out end
      out[key >> 3] = s:sub(i, i + v - 1)
      i = i + v
    elseif wire == 1 or wire == 5 then
      i = i + (wire == 1 and 8 or 4)
    else
      return out
    end
  end
  return out
end

-- What a collector's ExportTraceServiceResponse says of a batch it took in
-- part (partial_success = 1 { rejected_spans = 1, error_message = 2 }):
-- the spans it refused and why, or nil.
local function partial_success(body)
  local ps = type(body) == "string" and body ~= "" and read_fields(body)[1]
  if type(ps) ~= "string" then return nil end
  local f = read_fields(ps)
  local rejected = math.type(f[1]) == "integer" and f[1] or 0
  local why = type(f[2]) == "string" and f[2] or ""
  if rejected == 0 and why == "" then return nil end
  return rejected, why
end

-- Statuses the OTLP specification says to try again (and an answer that
-- never came); every other failure is final.
local TRANSIENT = { [429] = true, [502] = true, [503] = true, [504] = true }
M.RETRY_DELAYS_MS = { 250, 500, 1000 } -- (each with up to half again of jitter)
local RETRY_AFTER_MAX_MS = 5000

-- POSTs one OTLP/HTTP protobuf body to `url` (the configured headers and
-- compression), trying again what the protocol calls transient: the last
-- answer, or nil and the error. (Spans' and metrics' exports alike.)
local function post(url, body)
  local http = require "tide.http"
  local headers = { ["content-type"] = "application/x-protobuf" }
  for k, v in pairs(config.headers) do headers[k] = v end
  if config.compression == "gzip" then
    body = core.gzip(body)
    headers["content-encoding"] = "gzip"
  end
  local res, err
  for attempt = 1, #M.RETRY_DELAYS_MS + 1 do
    res, err = http.request { method = "POST", url = url, headers = headers, body = body,
      timeout_ms = config.timeout_ms }
    local transient = (res and TRANSIENT[res.status]) or (not res and err and err.code ~= "Cancelled")
    if not transient or attempt > #M.RETRY_DELAYS_MS then break end
    local wait = M.RETRY_DELAYS_MS[attempt]
    wait = wait + math.random(0, wait // 2)
    local after = res and tonumber(res.headers and res.headers["retry-after"])
    if after and after >= 0 then wait = math.min(after * 1000 // 1, RETRY_AFTER_MAX_MS) end
    core.sleep(wait)
  end
  return res, err
end
M._post = post

local function send(batch)
  local res, err = post(config.url, M.encode(batch, config.service, config.resource))
  if res and res.status >= 200 and res.status < 300 then
    local rejected, why = partial_success(res.body)
    rejected = math.min(rejected or 0, #batch)
    exported = exported + #batch - rejected
    dropped = dropped + rejected
    if why then warn(("the collector refused %d of %d spans: %s"):format(rejected, #batch, why)) end
    return true
  end
  failures = failures + 1
  dropped = dropped + #batch
  warn(res and ("the collector answered HTTP " .. res.status) or tostring(err))
  return false
end

-- Sends the queue, a batch at a time: all of it, or with `upto` that many
-- spans at most, or with `full` only full batches. (A sender that went on
-- while spans kept coming would send a few at a time, one request each
-- round trip of a busy process, for ever: the delayed one sends what was
-- queued when it woke, the rest waits for the next.)
local function drain(upto, full)
  upto = upto or math.huge
  while config and #queue > 0 and upto > 0 and not (full and #queue < config.batch_max) do
    local n = math.min(config.batch_max, #queue, upto)
    local batch = table.move(queue, 1, n, 1, {})
    table.move(queue, n + 1, #queue + n, 1)
    upto = upto - n
    send(batch)
  end
end

--- Sends what is queued, now (in a task, or driving the loop).
function M.flush()
  if not config then return true end
  return require("tide")._blocking(function() drain() return true end)
end

--- How long spans wait to be sent together (ms), unless
--- OTEL_BSP_SCHEDULE_DELAY says. The end of tide.run's function, or of a
--- plain script's blocking call, sends what is queued at once (init.lua's
--- `draining`), so only spans that tasks end after it wait out the delay.
M.batch_delay_ms = 100

local flusher -- the task waiting to send, if any
local sending = false -- whether a full batch is being sent at once

local function failed(err)
  if not (type(err) == "table" and err.code == "Cancelled") then warn(tostring(err)) end
end

-- A task that sends the queue after `batch_delay_ms`: spans go out in
-- batches, and while it waits, tide.run stays alive: flushed at exit. A
-- full batch goes at once, from a task of its own (a busy process fills
-- one long before the delay is over, and the queue would drop what comes
-- next). The turns that ended the spans never wait for either.
-- (Each a child of the task that ended the span: when that task is
-- cancelled, so is the sender, and the spans wait in the queue for the
-- next one, or the end of the run.)
function M._schedule()
  local full = #queue >= config.batch_max
  if flushing and (sending or not full) then return end -- (the usual case: a sender waits)
  if not core.running() then return end
  if full and not sending then
    sending = true
    core.spawn(function()
      local ok, err = pcall(drain, nil, true)
      sending = false
      if not ok then failed(err) end
    end)
  end
  if flushing then return end
  flushing = true
  local delay = config.delay_ms or M.batch_delay_ms
  flusher = core.spawn(function()
    local ok, err = pcall(function()
      core.sleep(delay)
      flusher = nil
      drain(#queue)
    end)
    flusher, flushing = nil, false
    if not ok then failed(err) elseif config and #queue > 0 then M._schedule() end -- (what came meanwhile)
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
    config = { headers = {}, service = "tide", capture_content = false, sampler = { parent_based = true, ratio = 1 },
      timeout_ms = 10000, queue_max = QUEUE_MAX, batch_max = BATCH_MAX }
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
  sampler = true, timeout_ms = true, compression = true, metrics = true }

-- An OTEL_* variable; an empty one is unset, as the specification says.
local function env(name)
  local v = os.getenv(name)
  if v == nil or v:match("^%s*$") then return nil end
  return v
end

-- A variable that cannot be read is ignored, with a warning (the
-- specification's rule for numbers and enums).
local function ignored(name, value, why)
  io.stderr:write(("tide: tracing: %s=%s ignored: %s\n"):format(name, value, why))
end

-- The traces variable or the general one (OTEL_EXPORTER_OTLP_TRACES_X over
-- OTEL_EXPORTER_OTLP_X), and its name.
local function otlp_env(what)
  local name = "OTEL_EXPORTER_OTLP_TRACES_" .. what
  local v = env(name)
  if v then return v, name end
  name = "OTEL_EXPORTER_OTLP_" .. what
  return env(name), name
end

-- A non-negative integer variable (milliseconds, sizes), or nil.
local function env_integer(name, value, positive)
  if not value then return nil end
  local n = math.tointeger(tonumber(value))
  if not n or n < 0 or (positive and n == 0) or n > 0x7fffffff then
    ignored(name, value, positive and "not a positive integer" or "not a non-negative integer")
    return nil
  end
  return n
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

-- The samplers of OTEL_TRACES_SAMPLER: whether another process's decision
-- (a traceparent's flag) is followed, and the ratio of the traces decided
-- here that are kept.
local SAMPLERS = {
  always_on = { parent_based = false, ratio = 1 }, always_off = { parent_based = false, ratio = 0 },
  traceidratio = { parent_based = false }, parentbased_always_on = { parent_based = true, ratio = 1 },
  parentbased_always_off = { parent_based = true, ratio = 0 }, parentbased_traceidratio = { parent_based = true },
}

-- The sampler of `name` (a ratio for the traceidratio ones from `arg`),
-- or nil and why not.
local SAMPLER_NAMES = "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, "
  .. "parentbased_traceidratio"
local function sampler_of(name, arg)
  local s = SAMPLERS[name]
  if not s then return nil, "not a sampler tide has (" .. SAMPLER_NAMES .. ")" end
  return { parent_based = s.parent_based, ratio = s.ratio or arg or 1 }
end

-- The sampler the environment asks for, or nil for the default.
local function env_sampler()
  local name = env("OTEL_TRACES_SAMPLER")
  if not name then return nil end
  local arg = env("OTEL_TRACES_SAMPLER_ARG")
  local ratio = arg and tonumber(arg)
  if arg and not (ratio and ratio >= 0 and ratio <= 1) then
    ignored("OTEL_TRACES_SAMPLER_ARG", arg, "not a number from 0 to 1")
    ratio = nil
  end
  local sampler, why = sampler_of(name:lower(), ratio)
  if not sampler then ignored("OTEL_TRACES_SAMPLER", name, why) end
  return sampler
end

-- The URL a signal ("TRACES", "METRICS") is exported to: its own variable
-- (OTEL_EXPORTER_OTLP_<signal>_ENDPOINT, a full URL) unless the option
-- named the endpoint, else <endpoint>/v1/<signal>; nil without an http(s)
-- endpoint to build on.
local function signal_url(signal, endpoint, explicit)
  local url = env("OTEL_EXPORTER_OTLP_" .. signal .. "_ENDPOINT")
  if url and not explicit then return url end
  if type(endpoint) ~= "string" or not endpoint:match("^https?://") then return nil end
  return endpoint:gsub("/+$", "") .. "/v1/" .. signal:lower()
end

--- Turns tracing on: `endpoint` (default $OTEL_EXPORTER_OTLP_ENDPOINT; a
--- $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as the full URL), `headers`
--- ($OTEL_EXPORTER_OTLP_HEADERS), `service` ($OTEL_SERVICE_NAME, "tide"),
--- `capture_content` (false), `sampler` (one of OTEL_TRACES_SAMPLER's
--- names, default $OTEL_TRACES_SAMPLER, else "parentbased_always_on") and
--- `sample` (the ratio the traceidratio samplers keep; `sample` alone is
--- "parentbased_traceidratio"), `timeout_ms` (each export request,
--- $OTEL_EXPORTER_OTLP_TIMEOUT, 10000), `compression` ("gzip" or "none",
--- $OTEL_EXPORTER_OTLP_COMPRESSION), `metrics` (true, or { interval_ms }:
--- the GenAI client metrics too, tide.metrics; default
--- $OTEL_METRICS_EXPORTER = "otlp", to $OTEL_EXPORTER_OTLP_METRICS_ENDPOINT
--- or <endpoint>/v1/metrics, every $OTEL_METRIC_EXPORT_INTERVAL or 60000
--- ms). `tide.tracing(false)` turns it off.
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
  local endpoint = opts.endpoint or env("OTEL_EXPORTER_OTLP_ENDPOINT")
  local url = signal_url("TRACES", endpoint, opts.endpoint ~= nil)
  if not url then
    error("tide.tracing: 'endpoint' must be an http(s) URL (or set OTEL_EXPORTER_OTLP_ENDPOINT)", level)
  end
  if opts.headers ~= nil and type(opts.headers) ~= "table" then error("tide.tracing: 'headers' must be a table", level) end
  if opts.sample ~= nil and (type(opts.sample) ~= "number" or opts.sample < 0 or opts.sample > 1) then
    error("tide.tracing: 'sample' must be a number from 0 to 1", level)
  end
  local sampler
  if opts.sampler ~= nil then
    local why
    sampler, why = sampler_of(opts.sampler, opts.sample)
    if not sampler then error(("tide.tracing: 'sampler' %q is %s"):format(tostring(opts.sampler), why), level) end
  elseif opts.sample ~= nil then
    sampler = { parent_based = true, ratio = opts.sample }
  else
    sampler = env_sampler() or { parent_based = true, ratio = 1 }
  end
  if opts.service ~= nil and type(opts.service) ~= "string" then error("tide.tracing: 'service' must be a string", level) end
  if opts.timeout_ms ~= nil and (math.type(opts.timeout_ms) ~= "integer" or opts.timeout_ms <= 0) then
    error("tide.tracing: 'timeout_ms' must be a positive integer", level)
  end
  if opts.compression ~= nil and opts.compression ~= "gzip" and opts.compression ~= "none" then
    error("tide.tracing: 'compression' must be \"gzip\" or \"none\"", level)
  end
  local compression = opts.compression
  if compression == nil then
    local v, name = otlp_env("COMPRESSION")
    if v and v ~= "gzip" and v ~= "none" then ignored(name, v, "not gzip or none") else compression = v end
  end
  local timeout_ms = opts.timeout_ms
  if timeout_ms == nil then
    local v, name = otlp_env("TIMEOUT")
    timeout_ms = env_integer(name, v)
    if timeout_ms == 0 then timeout_ms = 0x7fffffff end -- (0: no limit, as the specification says)
  end
  local protocol, pname = otlp_env("PROTOCOL")
  if protocol and protocol ~= "http/protobuf" then
    ignored(pname, protocol, "tide exports OTLP/HTTP with protobuf (http/protobuf) only")
  end
  -- the batch processor's variables (tide waits M.batch_delay_ms by default,
  -- not the specification's 5 s: a turn's spans should not wait that long)
  local queue_max = env_integer("OTEL_BSP_MAX_QUEUE_SIZE", env("OTEL_BSP_MAX_QUEUE_SIZE"), true) or QUEUE_MAX
  local batch_max = env_integer("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"), true)
  if batch_max and batch_max > queue_max then
    ignored("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", batch_max, "larger than the queue")
    batch_max = nil
  end
  local headers = {}
  for k, v in pairs(pairs_of((otlp_env("HEADERS")), true)) do headers[k] = v end
  for k, v in pairs(opts.headers or {}) do headers[k:lower()] = v end
  -- the resource's attributes: OTEL_RESOURCE_ATTRIBUTES, the service name
  -- over its own (option, then OTEL_SERVICE_NAME)
  local resource = pairs_of(env("OTEL_RESOURCE_ATTRIBUTES"), false)
  -- Metrics: asked for by the option, else by OTEL_METRICS_EXPORTER
  local metrics = opts.metrics
  if metrics ~= nil and type(metrics) ~= "boolean" and type(metrics) ~= "table" then
    error("tide.tracing: 'metrics' must be true, false or { interval_ms }", level)
  end
  if type(metrics) == "table" then
    for k in pairs(metrics) do
      if k ~= "interval_ms" then error(("tide.tracing: unknown option 'metrics.%s'"):format(tostring(k)), level) end
    end
    local ms = metrics.interval_ms
    if ms ~= nil and (math.type(ms) ~= "integer" or ms <= 0) then
      error("tide.tracing: 'metrics.interval_ms' must be a positive integer", level)
    end
  elseif metrics == nil then
    local exporter = env("OTEL_METRICS_EXPORTER")
    if exporter and exporter ~= "otlp" and exporter ~= "none" then
      ignored("OTEL_METRICS_EXPORTER", exporter, "tide exports metrics with otlp, or none")
    end
    metrics = exporter == "otlp"
  end
  if metrics then
    local murl = signal_url("METRICS", endpoint, opts.endpoint ~= nil)
    if not murl then
      error("tide.tracing: metrics need an endpoint (the option, OTEL_EXPORTER_OTLP_ENDPOINT or "
        .. "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT)", level)
    end
    metrics = { url = murl, interval_ms = type(metrics) == "table" and metrics.interval_ms
      or env_integer("OTEL_METRIC_EXPORT_INTERVAL", env("OTEL_METRIC_EXPORT_INTERVAL"), true) or 60000 }
  else
    metrics = nil
  end
  config = {
    metrics = metrics,
    url = url, headers = headers, resource = resource,
    service = opts.service or env("OTEL_SERVICE_NAME") or resource["service.name"] or "tide",
    capture_content = opts.capture_content == true, sampler = sampler,
    timeout_ms = timeout_ms or 10000, compression = compression == "gzip" and "gzip" or nil,
    queue_max = queue_max, batch_max = batch_max or math.min(BATCH_MAX, queue_max),
    delay_ms = env_integer("OTEL_BSP_SCHEDULE_DELAY", env("OTEL_BSP_SCHEDULE_DELAY")),
    keep_last = config and config.keep_last,
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
  queue, dropped, exported, failures, warned, flushing, sending = {}, 0, 0, 0, false, false, false
end

-- tide.tracing{...} is setup; tide.tracing.flush(), .stats() the rest.
return setmetatable(M, { __call = function(_, opts)
  M.setup(opts, 3) -- (no tail call: its errors name the caller's line)
end })
