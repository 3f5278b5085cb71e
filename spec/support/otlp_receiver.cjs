// A loopback OTLP/HTTP receiver for the tracing specs, decoding with the
// official OpenTelemetry JS packages' protobuf definitions
// (@opentelemetry/otlp-transformer's generated root), not tide's own code.
//   node otlp_receiver.cjs PORTFILE [FAIL_STATUS]
// Serves POST /v1/traces; GET /spans gives every span received so far as
// JSON (ids in hex, times as strings); FAIL_STATUS answers every export
// with that status instead. POST /v1/metrics takes metrics the same way
// (ExportMetricsServiceRequest); GET /metrics gives every export's metrics.
const http = require("http");
const fs = require("fs");
const root = require("@opentelemetry/otlp-transformer/build/src/generated/root");
const Req = root.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest;
const zlib = require("zlib");
const Res = root.opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse;
const MetricsReq = root.opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest;
const metricExports = [];
// failStatus: answer every export (or the first failCount) with it;
// partial: "rejected:message", a partial success (HTTP 200) for each export.
const [portFile, failStatus, failCount, partial] = process.argv.slice(2);
let failed = 0;
const encodings = [];
const spans = [];
let received = 0;

function value(v) {
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.boolValue !== undefined) return v.boolValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.doubleValue !== undefined) return v.doubleValue;
  if (v.arrayValue) return (v.arrayValue.values || []).map(value);
  return null;
}
function attrs(list) {
  const out = {};
  for (const kv of list || []) out[kv.key] = value(kv.value || {});
  return out;
}
const hex = (b) => Buffer.from(b || []).toString("hex");

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    if (req.method === "GET" && req.url === "/spans") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ exports: received, failed, encodings, spans }));
      return;
    }
    if (req.method === "GET" && req.url === "/metrics") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ exports: metricExports }));
      return;
    }
    if (req.method === "POST" && req.url === "/v1/metrics") {
      // each export: its resource, scope, and metrics with their points
      // (64-bit integers as strings, as toObject gives them)
      try {
        let body = Buffer.concat(chunks);
        if (req.headers["content-encoding"] === "gzip") body = zlib.gunzipSync(body);
        const msg = MetricsReq.toObject(MetricsReq.decode(body), { longs: String, defaults: true });
        for (const rm of msg.resourceMetrics || []) {
          const resource = attrs(rm.resource && rm.resource.attributes);
          for (const sm of rm.scopeMetrics || []) {
            metricExports.push({ resource, scope: sm.scope && sm.scope.name, metrics: (sm.metrics || []).map((m) => ({
              name: m.name, unit: m.unit, description: m.description,
              temporality: m.histogram && m.histogram.aggregationTemporality,
              points: ((m.histogram && m.histogram.dataPoints) || []).map((p) => ({
                attributes: attrs(p.attributes), start: p.startTimeUnixNano, time: p.timeUnixNano,
                count: Number(p.count), sum: p.sum, min: p.min, max: p.max,
                buckets: (p.bucketCounts || []).map(Number), bounds: p.explicitBounds,
              })),
            })) });
          }
        }
      } catch (e) {
        res.writeHead(400); res.end(String(e)); return;
      }
      res.writeHead(200, { "content-type": "application/x-protobuf" }); res.end();
      return;
    }
    if (req.method !== "POST" || req.url !== "/v1/traces") { res.writeHead(404); res.end(); return; }
    received++;
    if (failStatus && !(failCount && failed >= Number(failCount))) {
      failed++;
      res.writeHead(Number(failStatus)); res.end("failing on purpose"); return;
    }
    let msg;
    try {
      let body = Buffer.concat(chunks);
      encodings.push(req.headers["content-encoding"] || "identity");
      if (req.headers["content-encoding"] === "gzip") body = zlib.gunzipSync(body);
      msg = Req.toObject(Req.decode(body), { longs: String });
    } catch (e) {
      res.writeHead(400); res.end(String(e)); return;
    }
    for (const rs of msg.resourceSpans || []) {
      const resource = attrs(rs.resource && rs.resource.attributes);
      for (const ss of rs.scopeSpans || []) {
        for (const s of ss.spans || []) {
          spans.push({
            resource, scope: ss.scope && ss.scope.name, name: s.name, kind: s.kind,
            traceId: hex(s.traceId), spanId: hex(s.spanId), parentSpanId: hex(s.parentSpanId),
            start: s.startTimeUnixNano, end: s.endTimeUnixNano, attributes: attrs(s.attributes),
            events: (s.events || []).map((e) => ({ name: e.name, attributes: attrs(e.attributes) })),
            status: s.status || null,
          });
        }
      }
    }
    res.writeHead(200, { "content-type": "application/x-protobuf" });
    if (partial) {
      const [rejected, message] = partial.split(":");
      res.end(Res.encode({ partialSuccess: { rejectedSpans: Number(rejected), errorMessage: message } }).finish());
      return;
    }
    res.end();
  });
});
server.listen(0, "127.0.0.1", () => fs.writeFileSync(portFile, String(server.address().port)));
