--- tide.metrics: the OpenTelemetry GenAI client metrics of provider calls,
--- exported with OTLP/HTTP beside the spans (tide.tracing{ metrics = true },
--- or OTEL_METRICS_EXPORTER=otlp).
---
--- Two histograms, as the GenAI semantic conventions define them:
---   gen_ai.client.operation.duration  (s)        every provider call, a
---                                                  failed one with error.type
---   gen_ai.client.token.usage          ({token})  each call's input and
---                                                  output tokens (gen_ai.token.type)
--- and the MCP conventions' one (tide.integrations.mcp_telemetry):
---   mcp.client.operation.duration      (s)        every request to an MCP
---                                                  server (mcp.method.name, ...)
--- with the conventions' bucket boundaries and the call's attributes
--- (gen_ai.operation.name, gen_ai.provider.name, gen_ai.request.model,
--- gen_ai.response.model, server.address). Every call is counted, whether
--- or not its trace is sampled: metrics are not sampled.
---
--- Aggregation is cumulative from the process's first measurement (OTLP's
--- default temporality); an export goes out `interval_ms` after the first
--- measurement since the last one (OTEL_METRIC_EXPORT_INTERVAL, 60 s), and
--- at once when tide.run's function returns, as queued spans do. Nothing is
--- sent while nothing was measured. A failed export costs a warning (the
--- tracing exporter's, and its retries); the next one carries the counts,
--- cumulative, again.
local core = require "tide.core"

local M = {}

-- The semantic conventions' ExplicitBucketBoundaries.
local TOKEN_BOUNDS = { 1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864 }
local DURATION_BOUNDS = { 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92 }
local MCP_BOUNDS = { 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300 }

local INSTRUMENTS = {
  duration = { name = "gen_ai.client.operation.duration", unit = "s", bounds = DURATION_BOUNDS,
               description = "GenAI operation duration" },
  tokens = { name = "gen_ai.client.token.usage", unit = "{token}", bounds = TOKEN_BOUNDS,
             description = "Number of input and output tokens used" },
  mcp = { name = "mcp.client.operation.duration", unit = "s", bounds = MCP_BOUNDS,
          description = "The duration of the MCP request as observed on the sender from the time it was sent "
            .. "until the response is received" },
}
local EXPORTED = { "duration", "tokens", "mcp" }

-- The series measured so far: instrument key -> { [attribute key] = series }
-- in order of first measurement; nil until the first.
local series, order
local start_ns -- the first measurement's time: every point's start
local dirty = false -- measured since the last export
local exporter -- the task waiting to export, if any
local exports, failures = 0, 0

local function tracing() return require "tide.tracing" end

-- A key for an attribute set: its pairs, sorted.
local function key_of(attrs)
  local keys = {}
  for k in pairs(attrs) do keys[#keys + 1] = k end
  table.sort(keys)
  for i, k in ipairs(keys) do keys[i] = k .. "=" .. tostring(attrs[k]) end
  return table.concat(keys, "\1")
end

local function record(which, attrs, v)
  local inst = INSTRUMENTS[which]
  if not series then series, order, start_ns = {}, {}, core.wall_ns() end
  local by = series[which]
  if not by then
    by = {}
    series[which] = by
  end
  local k = key_of(attrs)
  local s = by[k]
  if not s then
    s = { attrs = attrs, count = 0, sum = 0, min = v, max = v, buckets = {} }
    for i = 1, #inst.bounds + 1 do s.buckets[i] = 0 end
    by[k] = s
    order[#order + 1] = { which = which, series = s }
  end
  s.count, s.sum = s.count + 1, s.sum + v
  if v < s.min then s.min = v end
  if v > s.max then s.max = v end
  -- bucket i holds (bounds[i-1], bounds[i]]; the last, what is above them all
  local i = 1
  while i <= #inst.bounds and v > inst.bounds[i] do i = i + 1 end
  s.buckets[i] = s.buckets[i] + 1
end

-- ------------------------------------------------------------- protobuf --

local pack = string.pack

-- Every series of the process as an OTLP ExportMetricsServiceRequest
-- (opentelemetry/proto collector/metrics/v1, metrics/v1): one Metric per
-- instrument, its data points cumulative from start_ns to now.
function M.encode(service, resource_extra, now)
  local t = tracing()
  local field, varint = t._bytes_field, t._varint
  local resource, scope = t._envelope(service, resource_extra)
  local metrics = {}
  for _, which in ipairs(EXPORTED) do
    local inst, points = INSTRUMENTS[which], {}
    for _, o in ipairs(order or {}) do
      if o.which == which then
        local s = o.series
        local counts = {}
        for i, c in ipairs(s.buckets) do counts[i] = pack("<I8", c) end
        local bounds = {}
        for i, b in ipairs(inst.bounds) do bounds[i] = pack("<d", b) end
        -- HistogramDataPoint: attributes 9, start 2 and time 3 (fixed64),
        -- count 4 (fixed64), sum 5, bucket_counts 6 and explicit_bounds 7
        -- (packed), min 11, max 12 (doubles)
        points[#points + 1] = field(1, core.otlp_attributes(9, s.attrs)
          .. "\17" .. pack("<I8", start_ns) .. "\25" .. pack("<I8", now)
          .. "\33" .. pack("<I8", s.count) .. "\41" .. pack("<d", s.sum)
          .. field(6, table.concat(counts)) .. field(7, table.concat(bounds))
          .. "\89" .. pack("<d", s.min) .. "\97" .. pack("<d", s.max))
      end
    end
    if #points > 0 then
      -- Metric: name 1, description 2, unit 3, histogram 9 { data_points 1,
      -- aggregation_temporality 2 = CUMULATIVE (2) }
      metrics[#metrics + 1] = field(2, field(1, inst.name) .. field(2, inst.description) .. field(3, inst.unit)
        .. field(9, table.concat(points) .. "\16" .. varint(2)))
    end
  end
  local scope_metrics = field(1, scope) .. table.concat(metrics)
  return field(1, field(1, resource) .. field(2, scope_metrics))
end

-- ------------------------------------------------------------- export --

local function export()
  local cfg = tracing()._config()
  if not (cfg and cfg.metrics and dirty) then return end
  dirty = false
  local res, err = tracing()._post(cfg.metrics.url, M.encode(cfg.service, cfg.resource, core.wall_ns()))
  if res and res.status >= 200 and res.status < 300 then
    exports = exports + 1
    return
  end
  failures = failures + 1
  dirty = true -- (cumulative: the next export carries these counts too)
  io.stderr:write("tide: metrics: ", res and ("the collector answered HTTP " .. res.status) or tostring(err),
    " (the next export sends the counts again)\n")
end

-- An export `interval_ms` from now, unless one waits already. Its task
-- keeps tide.run alive while it waits (the end of the run exports at once:
-- see _drain_now).
local function schedule(interval_ms)
  if exporter or not core.running() then return end
  exporter = core.spawn(function()
    local ok, err = pcall(function()
      core.sleep(interval_ms)
      exporter = nil
      export()
    end)
    exporter = nil
    if not ok and not (type(err) == "table" and err.code == "Cancelled") then
      io.stderr:write("tide: metrics: ", tostring(err), "\n")
    end
  end)
end

--- The meter of provider calls, or nil when metrics are off: a function
--- (provider, resp, err, ns) that measures one call of `ns` nanoseconds.
--- The turn asks once a turn: off, a call costs nothing.
function M.meter()
  local cfg = tracing()._config()
  if not (cfg and cfg.metrics) then return nil end
  return M.chat
end

--- Measures one provider call (see meter).
function M.chat(provider, resp, err, ns)
  local cfg = tracing()._config()
  if not (cfg and cfg.metrics) then return end
  local base = require("tide.turn")._chat_attributes(provider)
  local attrs = { ["gen_ai.operation.name"] = "chat", ["gen_ai.provider.name"] = base["gen_ai.provider.name"],
    ["gen_ai.request.model"] = base["gen_ai.request.model"], ["server.address"] = base["server.address"] }
  if resp then
    attrs["gen_ai.response.model"] = resp.model or base["gen_ai.request.model"]
  else
    attrs["error.type"] = type(err) == "table" and err.code or "error"
  end
  record("duration", attrs, ns / 1e9)
  local u = resp and resp.usage
  if u then
    for _, kind in ipairs { "input", "output" } do
      local a = {}
      for k, v in pairs(attrs) do a[k] = v end
      a["gen_ai.token.type"] = kind
      record("tokens", a, u[kind] or 0)
    end
  end
  dirty = true
  schedule(cfg.metrics.interval_ms)
end

--- Measures one MCP request of `seconds` with `attrs` (the MCP semantic
--- conventions' metric attributes), when metrics are on.
---@param attrs table<string, string|integer>
---@param seconds number
function M.mcp(attrs, seconds)
  local cfg = tracing()._config()
  if not (cfg and cfg.metrics) then return end
  record("mcp", attrs, seconds)
  dirty = true
  schedule(cfg.metrics.interval_ms)
end

--- Whether measurements wait to be exported (tide.run exports them at its end).
function M._pending() return dirty and series ~= nil end

--- Exports now what was measured since the last export, the waiting
--- exporter cancelled (the end of tide.run's function).
function M._drain_now()
  if exporter then
    exporter:cancel()
    exporter = nil
  end
  if dirty then pcall(export) end
end

--- Counters: exports sent and failed, series kept.
function M.stats()
  local n = 0
  for _, by in pairs(series or {}) do for _ in pairs(by) do n = n + 1 end end
  return { exports = exports, failures = failures, series = n }
end

--- Forgets every series (specs).
function M._reset()
  series, order, start_ns, dirty, exports, failures = nil, nil, nil, false, 0, 0
end

return M
