-- OpenTelemetry traces: spans follow the GenAI semantic conventions and are
-- decoded by a receiver built on the official OpenTelemetry JS protobuf
-- definitions (spec/support/otlp_receiver.cjs), not by tide's own code.
local tide = require "tide"
local testing = require "tide.testing"
local tracing = require "tide.tracing"
local helpers = require "helpers"
local cjson = require "cjson"


local receiver = helpers.otlp_receiver

local function spans_of(url)
  local res = assert(tide.http.request { url = url .. "/spans" })
  return cjson.decode(res.body)
end

local function by_name(spans, prefix)
  local out = {}
  for _, s in ipairs(spans) do if s.name:sub(1, #prefix) == prefix then out[#out + 1] = s end end
  return out
end

-- What `code` prints in a child lua5.4 with tide.tracing as `t`, under
-- the environment `vars` (and no OTEL_EXPORTER_OTLP_ENDPOINT of this one).
local function in_child(vars, code)
  local env = {}
  for k, v in pairs(vars) do env[#env + 1] = ("%s=%q"):format(k, v) end
  return (helpers.sh(("env -u OTEL_EXPORTER_OTLP_ENDPOINT %s lua5.4 -e %q"):format(table.concat(env, " "),
    ('package.path=%q package.cpath=%q local t=require "tide.tracing" '):format(package.path, package.cpath) .. code))
    :gsub("%s+$", ""))
end

-- Export retries without their waits, for the spec that calls it.
local function quick_retries()
  local delays = tracing.RETRY_DELAYS_MS
  tracing.RETRY_DELAYS_MS = { 1, 1, 1 }
  finally(function() tracing.RETRY_DELAYS_MS = delays end)
end

describe("tracing", function()
  local srv, stop_receiver, url
  before_each(function()
    tracing._reset()
    url, stop_receiver = receiver()
    srv = testing.mock_server { default = function(req)
      local msgs = req.json.messages
      if msgs[1].content:find("You research", 1, true) then return "researched" end
      local last = msgs[#msgs]
      if last.role == "tool" then return "all done" end
      return { tool_calls = { { id = "c1", name = "lookup", arguments = { q = "a" } },
                              { id = "c2", name = "delegate_researcher", arguments = { task = "dig" } } } }
    end }
    tide.agent { id = "researcher", prompt = "You research.", when_to_use = "research" }
    tide.agent { id = "traced", prompt = "You trace.", subagents = { "researcher" }, tools = {
      tide.tool { name = "lookup", description = "d", handler = function() return "found" end } } }
  end)
  after_each(function()
    tracing.setup(false)
    srv:close()
    stop_receiver()
  end)

  it("exports invoke_agent, chat and execute_tool spans, nested, with GenAI attributes", function()
    tide.tracing { endpoint = url, service = "spec-agent" }
    local p = tide.provider.openai { base_url = srv.url, api_key = "sk-trace-SECRET-12345", model = "gpt-4o-mini",
      stream = false }
    local s = tide.session { agent = "traced", provider = p }
    tide.run(function() assert.are.equal("all done", s:turn("go", {
      traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" })) end)
    tracing.flush()
    local got = spans_of(url)
    local spans = got.spans
    local root = by_name(spans, "invoke_agent traced")[1]
    assert.is_table(root)
    assert.are.equal("spec-agent", root.resource["service.name"])
    -- it joined the caller's trace
    assert.are.equal("0af7651916cd43dd8448eb211c80319c", root.traceId)
    assert.are.equal("b7ad6b7169203331", root.parentSpanId)
    local chats = by_name(spans, "chat gpt-4o-mini")
    assert.is_true(#chats >= 3) -- root twice, the sub-agent once
    local c = chats[1]
    assert.are.equal("chat", c.attributes["gen_ai.operation.name"])
    assert.are.equal("openai", c.attributes["gen_ai.provider.name"])
    assert.are.equal("gpt-4o-mini", c.attributes["gen_ai.request.model"])
    assert.are.equal("127.0.0.1", c.attributes["server.address"])
    assert.is_number(c.attributes["gen_ai.usage.input_tokens"])
    assert.are.same({ "tool_calls" }, c.attributes["gen_ai.response.finish_reasons"])
    assert.are.equal("default", c.attributes["openai.response.service_tier"]) -- the tier that served it
    assert.are.equal(3, c.kind) -- CLIENT
    local tool = by_name(spans, "execute_tool lookup")[1]
    assert.are.equal("c1", tool.attributes["gen_ai.tool.call.id"])
    assert.are.equal(root.spanId, tool.parentSpanId)
    -- the sub-agent's run nests under the delegating tool's span
    local delegate = by_name(spans, "execute_tool delegate_researcher")[1]
    local sub = by_name(spans, "invoke_agent researcher")[1]
    assert.are.equal(delegate.spanId, sub.parentSpanId)
    assert.are.equal(root.traceId, sub.traceId)
    -- no content without capture_content, and never the key
    assert.is_nil(tool.attributes["gen_ai.tool.call.arguments"])
    local raw = cjson.encode(got)
    assert.is_nil(raw:find("SECRET", 1, true))
  end)

  it("captures content only when asked", function()
    tide.tracing { endpoint = url, capture_content = true }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local s = tide.session { agent = "traced", provider = p }
    tide.run(function() s:turn("go") end)
    tracing.flush()
    local tool = by_name(spans_of(url).spans, "execute_tool lookup")[1]
    assert.are.equal('{"q":"a"}', tool.attributes["gen_ai.tool.call.arguments"])
    assert.are.equal("found", tool.attributes["gen_ai.tool.call.result"])
  end)

  it("sends the spans of a cancelled task's turn, and of a later one", function()
    tide.tracing { endpoint = url }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    tide.agent { id = "plain_t", prompt = "You answer." }
    local s = tide.session { agent = "plain_t", provider = p }
    srv.default = "hi"
    tide.run(function()
      local t = tide.spawn(function() s:turn("go"); tide.sleep(10000) end)
      tide.sleep(50)
      t:cancel()
      t:join()
      s:turn("again")
    end)
    local spans = spans_of(url).spans
    assert.are.equal(2, #by_name(spans, "invoke_agent plain_t"))
  end)

  it("times spans by the wall clock, ids from the kernel, content as UTF-8, off without a fault", function()
    tide.tracing { endpoint = url, capture_content = true }
    local raw = tide.tool { name = "raw", description = "d", handler = function() return "caf\195\255 bytes" end }
    tide.agent { id = "raw_t", prompt = "You answer.", tools = { raw } }
    srv.default = function(req)
      local last = req.json.messages[#req.json.messages]
      if last.role == "tool" then return "done" end
      return { tool_calls = { { id = "r1", name = "raw", arguments = {} } } }
    end
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local before = os.time()
    math.randomseed(42) -- (a script's own seed makes no two runs' ids alike)
    tide.run(function() tide.session { agent = "raw_t", provider = p }:turn("go") end)
    tracing.flush()
    local spans = spans_of(url).spans
    local tool = by_name(spans, "execute_tool raw")[1]
    assert.are.equal("caf\u{FFFD}\u{FFFD} bytes", tool.attributes["gen_ai.tool.call.result"])
    local start = tonumber(tool.start) / 1e9
    assert.is_true(start >= before and start <= os.time() + 1)
    local ids = {}
    for _, sp in ipairs(spans) do
      assert.is_nil(ids[sp.spanId])
      ids[sp.spanId] = true
    end
    -- turning tracing off while a span runs ends it quietly
    local off = tide.tool { name = "off", description = "d", handler = function() tracing.setup(false) return "ok" end }
    tide.agent { id = "off_t", prompt = "You answer.", tools = { off } }
    srv.default = function(req)
      local last = req.json.messages[#req.json.messages]
      if last.role == "tool" then return "done" end
      return { tool_calls = { { id = "o1", name = "off", arguments = {} } } }
    end
    assert.are.equal("done", tide.run(function() return tide.session { agent = "off_t", provider = p }:turn("go") end))
  end)

  it("reads the OTEL_* variables as the specification says: disabled, empty, resource attributes", function()
    local function child(vars)
      return in_child(vars,
        'print(t.enabled(), t.enabled() and t._config().service, t.enabled() and t._config().resource.region)')
    end
    assert.are.equal("false\tfalse\tfalse", child { OTEL_SDK_DISABLED = "TRUE", OTEL_EXPORTER_OTLP_ENDPOINT = url })
    assert.are.equal("true\tbilling\teu", child { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = "",
      OTEL_EXPORTER_OTLP_ENDPOINT = url, OTEL_RESOURCE_ATTRIBUTES = "service.name=billing,region=eu" })
    assert.are.equal("true\torders\teu", child { OTEL_EXPORTER_OTLP_ENDPOINT = url, OTEL_SERVICE_NAME = "orders",
      OTEL_RESOURCE_ATTRIBUTES = "service.name=billing,region=eu" })
    -- the exporter's and the batch processor's, the traces' own over the general ones
    local function settings(vars)
      return in_child(vars, 't.enabled() local c = t._config() '
        .. 'print(c.timeout_ms, c.compression, c.queue_max, c.batch_max, c.delay_ms, c.headers.a)')
    end
    assert.are.equal("10000\tnil\t2048\t512\tnil\tnil", settings { OTEL_EXPORTER_OTLP_ENDPOINT = url })
    assert.are.equal("2500\tgzip\t100\t10\t50\ttraces", settings { OTEL_EXPORTER_OTLP_ENDPOINT = url,
      OTEL_EXPORTER_OTLP_TIMEOUT = "9000", OTEL_EXPORTER_OTLP_TRACES_TIMEOUT = "2500",
      OTEL_EXPORTER_OTLP_COMPRESSION = "gzip", OTEL_EXPORTER_OTLP_HEADERS = "a=general",
      OTEL_EXPORTER_OTLP_TRACES_HEADERS = "a=traces", OTEL_BSP_MAX_QUEUE_SIZE = "100",
      OTEL_BSP_MAX_EXPORT_BATCH_SIZE = "10", OTEL_BSP_SCHEDULE_DELAY = "50" })
    assert.are.equal("2147483647\tnil\t2048\t512\tnil\tnil", settings { OTEL_EXPORTER_OTLP_ENDPOINT = url,
      OTEL_EXPORTER_OTLP_TIMEOUT = "0", OTEL_EXPORTER_OTLP_TRACES_COMPRESSION = "none" })
  end)

  it("leaves turns unaffected when the collector fails or is down, counting the drops", function()
    quick_retries()
    stop_receiver()
    local failing
    failing, stop_receiver = receiver(503)
    tide.tracing { endpoint = failing }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local s = tide.session { agent = "traced", provider = p }
    tide.run(function() assert.are.equal("all done", s:turn("go")) end)
    tracing.flush()
    local st = tracing.stats()
    assert.is_true(st.dropped > 0)
    assert.is_true(st.failures > 0)
    -- a collector that is not there at all
    tracing.setup(false)
    tracing._reset()
    tide.tracing { endpoint = "http://127.0.0.1:9" }
    tide.run(function() assert.are.equal("all done", s:turn("again")) end)
    tracing.flush()
    assert.is_true(tracing.stats().dropped > 0)
  end)

  it("encodes every kind of attribute, event and status as the official decoder reads them", function()
    tide.tracing { endpoint = url }
    local long = ("é"):rep(40000) -- 80,000 bytes: cut to at most 64 KiB, at a character's start
    local root = tracing.start("bad\255name", 1, nil, { s = "caf\195\255", yes = true, no = false, neg = -5,
      big = 1 << 40, half = 0.5, list = { "a", 2, true, { "in" } }, long = long, [7] = "not a string key" })
    local child = tracing.start("child", 3, root)
    child:event("retry", { attempt = 2, ["error.type"] = "Timeout" })
    child:event("bare")
    child:finish({ code = "ToolError", message = "broke \255 here" })
    root:finish()
    tracing.flush()
    local spans = spans_of(url).spans
    assert.are.equal(2, #spans)
    local r, c = by_name(spans, "bad")[1], by_name(spans, "child")[1]
    assert.are.equal("bad\u{FFFD}name", r.name)
    local a = r.attributes
    assert.are.same({ "caf\u{FFFD}\u{FFFD}", true, false, -5, 2 ^ 40, 0.5 }, { a.s, a.yes, a.no, a.neg, a.big, a.half })
    assert.are.same({ "a", 2, true, { "in" } }, a.list)
    assert.are.equal(65536, #a.long)
    assert.are.equal(long:sub(1, 65536), a.long)
    assert.is_nil(a["7"])
    assert.are.equal(r.traceId, c.traceId)
    assert.are.equal(r.spanId, c.parentSpanId)
    assert.matches("^%x+$", r.traceId)
    assert.are.equal(32, #r.traceId)
    assert.are.equal(16, #c.spanId)
    assert.are.same({ { name = "retry", attributes = { attempt = 2, ["error.type"] = "Timeout" } },
      { name = "bare", attributes = {} } }, c.events)
    assert.are.equal("broke \u{FFFD} here", c.status.message)
    assert.are.equal(2, c.status.code) -- STATUS_CODE_ERROR
    assert.are.equal("ToolError", c.attributes["error.type"])
  end)

  it("sends a full batch at once: a busy process drops nothing while the delay runs", function()
    tide.tracing { endpoint = url }
    local delay = tracing.batch_delay_ms
    tracing.batch_delay_ms = 60000 -- (never over during this spec)
    local ok, err = pcall(tide.run, function()
      for i = 1, 5000 do -- more than the queue holds (2,048)
        tracing.start("s" .. i, 1, nil, { i = i }):finish()
        if i % 10 == 0 then tide.sleep(1) end -- (a turn waits for its provider now and then)
      end
      tide.sleep(200)
      assert.are.equal(0, tracing.stats().dropped)
      assert.is_true(tracing.stats().exported >= 4096) -- whole batches sent while the delay ran
      tracing._drain_now() -- (the rest, without waiting out the delay)
    end)
    tracing.batch_delay_ms = delay
    assert(ok, err)
    local got = spans_of(url)
    assert.are.equal(5000, #got.spans) -- (the last ones sent at the end of the run)
    assert.is_true(got.exports <= 11, got.exports .. " requests") -- full batches, not a few spans each
  end)

  it("tries a transient failure again, and counts what a partial success refused", function()
    quick_retries()
    -- 503 twice, then taken: nothing dropped
    stop_receiver()
    local flaky
    flaky, stop_receiver = receiver(503, 2)
    tide.tracing { endpoint = flaky }
    tracing.start("one", 1):finish()
    tracing.flush()
    local got = spans_of(flaky)
    assert.are.same({ 3, 2, 1 }, { got.exports, got.failed, #got.spans })
    assert.are.same({ exported = 1, dropped = 0, failures = 0 },
      { exported = tracing.stats().exported, dropped = tracing.stats().dropped, failures = tracing.stats().failures })
    -- 400 is final: one request, the batch dropped
    stop_receiver()
    tracing._reset()
    local bad
    bad, stop_receiver = receiver(400)
    tide.tracing { endpoint = bad }
    tracing.start("two", 1):finish()
    tracing.flush()
    assert.are.equal(1, spans_of(bad).exports)
    assert.are.same({ 0, 1, 1 }, { tracing.stats().exported, tracing.stats().dropped, tracing.stats().failures })
    -- a partial success: the refused spans are counted as dropped, and said
    stop_receiver()
    tracing._reset()
    local partial
    partial, stop_receiver = receiver(nil, nil, "2:spans too old")
    tide.tracing { endpoint = partial }
    for i = 1, 3 do tracing.start("p" .. i, 1):finish() end
    tracing.flush()
    assert.are.same({ 1, 2 }, { tracing.stats().exported, tracing.stats().dropped })
  end)

  it("sends gzip when asked, as the official decoder takes it", function()
    tide.tracing { endpoint = url, compression = "gzip" }
    tracing.start("zipped", 1, nil, { note = ("same words "):rep(100) }):finish()
    tracing.flush()
    local got = spans_of(url)
    assert.are.same({ "gzip" }, got.encodings)
    assert.are.equal("zipped", got.spans[1].name)
    assert.are.equal(("same words "):rep(100), got.spans[1].attributes.note)
  end)

  it("samples as OTEL_TRACES_SAMPLER says, by the trace id, a sub-agent with its turn", function()
    -- A child process per sampler: prints, for each traceparent, whether a
    -- turn under it made a span, then how many of 200 new traces were kept.
    local high = "00-0af7651916cd43dd00ffffffffffffff-b7ad6b7169203331-"   -- (the id's last 56 bits all ones)
    local low = "00-0af7651916cd43dd0000000000000001-b7ad6b7169203331-"
    local function child(vars)
      return in_child(vars, ('t.enabled() local out = {} for _, tp in ipairs { %q, %q, %q } do '
        .. 'out[#out + 1] = tostring(t.start("x", 1, t.parse_traceparent(tp)) ~= nil) end '
        .. 'local kept = 0 for _ = 1, 200 do if t.start("r", 1) then kept = kept + 1 end end '
        .. 'print(table.concat(out, " "), kept)'):format(high .. "00", high .. "01", low .. "01"))
    end
    local base = { OTEL_EXPORTER_OTLP_ENDPOINT = url }
    local function with(t) for k, v in pairs(base) do t[k] = t[k] or v end return t end
    assert.are.equal("false true true\t200", child(with {})) -- parentbased_always_on
    local r = child(with { OTEL_TRACES_SAMPLER = "traceidratio", OTEL_TRACES_SAMPLER_ARG = "0.5" })
    assert.matches("^true true false\t(%d+)$", r) -- the parent's flag ignored, the id decides
    local kept = tonumber(r:match("\t(%d+)$"))
    assert.is_true(kept > 60 and kept < 140, "kept " .. kept .. " of 200")
    assert.matches("^false true true\t%d+$",
      child(with { OTEL_TRACES_SAMPLER = "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG = "0.5" }))
    assert.are.equal("false true true\t0", child(with { OTEL_TRACES_SAMPLER = "parentbased_always_off" }))
    assert.are.equal("false false false\t0", child(with { OTEL_TRACES_SAMPLER = "always_off" }))
    assert.are.equal("true true true\t200", child(with { OTEL_TRACES_SAMPLER = "always_on" }))
    -- what cannot be read is ignored, with a word on stderr
    local out = child(with { OTEL_TRACES_SAMPLER = "jaeger_remote", OTEL_TRACES_SAMPLER_ARG = "2",
      OTEL_EXPORTER_OTLP_PROTOCOL = "grpc", OTEL_EXPORTER_OTLP_TIMEOUT = "-5", OTEL_BSP_MAX_QUEUE_SIZE = "x" })
    assert.matches("OTEL_TRACES_SAMPLER=jaeger_remote ignored", out, 1, true)
    assert.matches("OTEL_TRACES_SAMPLER_ARG=2 ignored", out, 1, true)
    assert.matches("OTEL_EXPORTER_OTLP_PROTOCOL=grpc ignored: tide exports OTLP/HTTP with protobuf", out, 1, true)
    assert.matches("OTEL_EXPORTER_OTLP_TIMEOUT=-5 ignored", out, 1, true)
    assert.matches("OTEL_BSP_MAX_QUEUE_SIZE=x ignored", out, 1, true)
    assert.matches("false true true\t200$", out) -- (the default sampler)
    -- a turn that is not sampled leaves its sub-agents' turns unsampled too
    tide.tracing { endpoint = url, sampler = "traceidratio", sample = 0.5 }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    tide.run(function()
      for _ = 1, 16 do assert(tide.session { agent = "traced", provider = p }:turn("go")) end
    end)
    tracing.flush()
    local spans = spans_of(url).spans
    local roots, subs = #by_name(spans, "invoke_agent traced"), by_name(spans, "invoke_agent researcher")
    assert.is_true(roots > 0 and roots < 16, roots .. " of 16 turns sampled")
    assert.are.equal(roots, #subs)
    for _, sp in ipairs(subs) do assert.are_not.equal("", sp.parentSpanId) end
  end)

  it("sends what a run queued when its function returns, not after the batch delay", function()
    tide.tracing { endpoint = url }
    local delay = tracing.batch_delay_ms
    tracing.batch_delay_ms = 60000
    finally(function() tracing.batch_delay_ms = delay end)
    local t0 = os.time()
    tide.run(function()
      tracing.start("quick", 1):finish()
      tide.sleep(1) -- (the sender is waiting its delay now)
    end)
    assert.is_true(os.time() - t0 < 10, "the run waited for the batch delay")
    assert.are.equal(0, tracing.stats().queued)
    assert.are.equal("quick", spans_of(url).spans[1].name)
  end)

  -- The events of `spans` named `name`, with the name of the span each is on.
  local function events_named(spans, name)
    local out = {}
    for _, sp in ipairs(spans) do
      for _, e in ipairs(sp.events) do
        if e.name == name then out[#out + 1] = { span = sp.name, attributes = e.attributes } end
      end
    end
    return out
  end

  local function failed(span) return span.status ~= cjson.null and (span.status or {}).code == 2 end

  it("puts each retry of a provider call on that call's chat span, in a real turn", function()
    tide.tracing { endpoint = url }
    tide.agent { id = "retry_t", prompt = "You answer." }
    srv:push({ fault = "status", status = 429, retry_after = 0.02 }, { fault = "status", status = 503 })
    srv.default = "hi"
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false,
      retry = { attempts = 3, base_ms = 1, max_ms = 1 } }
    assert.are.equal("hi", tide.session { agent = "retry_t", provider = p }:turn("go"))
    tracing.flush()
    local spans = spans_of(url).spans
    local chats = by_name(spans, "chat m")
    assert.are.equal(1, #chats) -- one provider call, tried three times
    local ev = chats[1].events
    assert.are.equal(2, #ev)
    -- the 429's Retry-After is the wait; the 503's is the backoff (base_ms 1, max_ms 1)
    assert.are.same({ name = "retry", attributes = { attempt = 1, delay_ms = 20, ["error.type"] = "RateLimited" } },
      ev[1])
    assert.are.same({ "retry", 2, "ProviderError" }, { ev[2].name, ev[2].attributes.attempt,
      ev[2].attributes["error.type"] })
    assert.is_true(ev[2].attributes.delay_ms == 0 or ev[2].attributes.delay_ms == 1)
    -- the call succeeded in the end, and the retries are the call's alone
    assert.is_false(failed(chats[1]))
    assert.are.same({ { span = "chat m", attributes = ev[1].attributes },
      { span = "chat m", attributes = ev[2].attributes } }, events_named(spans, "retry"))
  end)

  it("marks a turn that pauses for approval on its span, not as a failure", function()
    tide.tracing { endpoint = url }
    local ran = 0
    tide.agent { id = "gate_t", prompt = "You send.", tools = {
      tide.tool { name = "send", description = "d", approval = true, handler = function() ran = ran + 1; return "sent" end } } }
    srv.default = function(req)
      local msgs = req.json.messages
      if msgs[#msgs].role == "tool" then return "all sent" end
      return { tool_calls = { { id = "g1", name = "send", arguments = {} } } }
    end
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local s = tide.session { agent = "gate_t", provider = p }
    local _, err = s:turn("send it")
    assert.are.equal("ApprovalRequired", err.code)
    tracing.flush()
    local spans = spans_of(url).spans
    local root = by_name(spans, "invoke_agent gate_t")
    assert.are.equal(1, #root)
    assert.are.same({ { name = "approval_required", attributes = { count = 1 } } }, root[1].events)
    assert.is_false(failed(root[1]))
    assert.is_nil(root[1].attributes["error.type"])
    assert.are.equal(0, #by_name(spans, "execute_tool send")) -- it waits, unrun
    -- approved, the resumed turn runs it, and nothing more is marked
    assert(s:approve("g1"))
    assert.are.equal("all sent", s:resume())
    tracing.flush()
    spans = spans_of(url).spans
    assert.are.equal(1, ran)
    local tool = by_name(spans, "execute_tool send")
    assert.are.equal(1, #tool)
    assert.are.same({}, tool[1].events)
    assert.are.equal(1, #events_named(spans, "approval_required"))
  end)

  it("marks the delegating call's span, and each turn's, when a sub-agent pauses for approval", function()
    tide.tracing { endpoint = url }
    tide.agent { id = "mailer_t", prompt = "You send mail.", when_to_use = "sends mail", tools = {
      tide.tool { name = "send_email", description = "d", approval = true, handler = function() return "sent" end } } }
    tide.agent { id = "boss_t", prompt = "You delegate.", subagents = { "mailer_t" } }
    srv.default = function(req)
      local msgs = req.json.messages
      if msgs[#msgs].role == "tool" then return "done" end
      if msgs[1].content:find("You send mail", 1, true) then
        return { tool_calls = { { id = "m1", name = "send_email", arguments = {} } } }
      end
      return { tool_calls = { { id = "d1", name = "delegate_mailer_t", arguments = { task = "mail bob" } } } }
    end
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local _, err = tide.session { agent = "boss_t", provider = p }:turn("get bob mailed")
    assert.are.equal("ApprovalRequired", err.code)
    tracing.flush()
    local spans = spans_of(url).spans
    local root = by_name(spans, "invoke_agent boss_t")[1]
    local delegate = by_name(spans, "execute_tool delegate_mailer_t")[1]
    local sub = by_name(spans, "invoke_agent mailer_t")[1]
    assert.are.same({ root.spanId, delegate.spanId }, { delegate.parentSpanId, sub.parentSpanId })
    assert.are.same({ { name = "approval_required", attributes = { count = 1 } } }, root.events)
    assert.are.same({ { name = "approval_required", attributes = {} } }, delegate.events)
    assert.are.same({ { name = "approval_required", attributes = { count = 1 } } }, sub.events)
    for _, sp in ipairs { root, delegate, sub } do assert.is_false(failed(sp), sp.name) end
    assert.are.equal(0, #by_name(spans, "execute_tool send_email"))
  end)

  it("puts each compaction on its turn's span, as the event sink hears it", function()
    tide.tracing { endpoint = url }
    local big = ("x"):rep(4000) -- a tool result of about 1,000 tokens
    tide.agent { id = "long_t", prompt = "You look things up.", tools = {
      tide.tool { name = "lookup", description = "d", handler = function() return big end } } }
    srv.default = function(req)
      local msgs = req.json.messages
      if msgs[1].content:find("memory of a conversation", 1, true) then return "They asked; lookups found x." end
      local usage = { input = #req.body // 4, output = 5 }
      if msgs[#msgs].role == "tool" then return { text = "noted", usage = usage } end
      return { tool_calls = { { name = "lookup", arguments = { q = "a" } } }, usage = usage }
    end
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local s = tide.session { agent = "long_t", provider = p, context = { window = 4000, reserve = 500 } }
    local heard = {}
    for i = 1, 4 do
      assert.are.equal("noted", s:turn("question " .. i, { on_event = function(ev)
        if ev.type == "compaction" then heard[#heard + 1] = { strategy = ev.strategy, removed = ev.removed } end
      end }))
    end
    assert.is_true(s:stats().compactions >= 1)
    tracing.flush()
    local spans = spans_of(url).spans
    local seen = events_named(spans, "compaction")
    assert.are.equal(s:stats().compactions, #seen)
    -- every provider call has its chat span, a summary's too, and the
    -- tokens the turns counted are the ones their chat spans say
    local chats = by_name(spans, "chat m")
    assert.are.equal(s:stats().provider_calls, #chats)
    local input = 0
    for _, c in ipairs(chats) do input = input + c.attributes["gen_ai.usage.input_tokens"] end
    assert.are.equal(s:stats().tokens.input, input)
    for i, e in ipairs(seen) do
      assert.are.equal("invoke_agent long_t", e.span)
      assert.are.same(heard[i], e.attributes)
    end
    assert.are.equal("summarize", seen[1].attributes.strategy)
    assert.is_true(seen[1].attributes.removed > 0)
  end)

  it("checks its options", function()
    assert.has_error(function() tide.tracing { endpoint = "ftp://x" } end)
    assert.has_error(function() tide.tracing { endpont = "http://x" } end, "tide.tracing: unknown option 'endpont'")
    assert.has_error(function() tide.tracing { endpoint = "http://x", sample = 2 } end,
      "tide.tracing: 'sample' must be a number from 0 to 1")
    assert.has_error(function() tide.tracing { endpoint = "http://x", sampler = "xray" } end,
      "tide.tracing: 'sampler' \"xray\" is not a sampler tide has (always_on, always_off, traceidratio, "
      .. "parentbased_always_on, parentbased_always_off, parentbased_traceidratio)")
    assert.has_error(function() tide.tracing { endpoint = "http://x", compression = "zstd" } end,
      "tide.tracing: 'compression' must be \"gzip\" or \"none\"")
  end)
end)

describe("the GenAI client metrics", function()
  local metrics = require "tide.metrics"
  local url, stop_receiver
  before_each(function()
    tracing._reset()
    metrics._reset()
    url, stop_receiver = receiver()
    tide.agent { id = "metered", prompt = "You look up.", tools = {
      tide.tool { name = "lookup", description = "d", handler = function() return "found" end } } }
  end)
  after_each(function()
    tracing.setup(false)
    stop_receiver()
  end)

  local function exports_of()
    local res = assert(tide.http.request { url = url .. "/metrics" })
    return cjson.decode(res.body).exports
  end
  local function metric(export, name)
    for _, m in ipairs(export.metrics) do if m.name == name then return m end end
  end

  it("measure every provider call, as the semantic conventions have it, exported at the run's end", function()
    tide.tracing { endpoint = url, service = "metered-svc", metrics = true, sampler = "always_off" }
    local srv <close> = testing.mock_server { replies = {
      { tool_calls = { { name = "lookup", arguments = {} } }, usage = { input = 120, output = 9 } },
      { text = "done", usage = { input = 3000, output = 40 } },
      { fault = "status", status = 400 },
    } }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "gpt-4o-mini", stream = false,
      retry = { attempts = 1 } }
    local s = tide.session { agent = "metered", provider = p }
    tide.run(function()
      assert.are.equal("done", s:turn("go"))
      local r, err = s:turn("again")
      assert.is_nil(r)
      assert.are.equal("ProviderError", err.code)
    end)
    -- (no span was sampled: metrics are not)
    assert.are.equal(0, #spans_of(url).spans)
    local exports = exports_of()
    assert.are.equal(1, #exports)
    local e = exports[1]
    assert.are.equal("metered-svc", e.resource["service.name"])
    assert.are.equal("tide", e.scope)
    local duration = metric(e, "gen_ai.client.operation.duration")
    assert.are.same({ "s", 2 }, { duration.unit, duration.temporality }) -- (CUMULATIVE)
    -- the two answered calls in one series, the failed one in its own
    assert.are.equal(2, #duration.points)
    local ok_point, failed_point = duration.points[1], duration.points[2]
    assert.are.same({ ["gen_ai.operation.name"] = "chat", ["gen_ai.provider.name"] = "openai",
      ["gen_ai.request.model"] = "gpt-4o-mini", ["gen_ai.response.model"] = "gpt-4o-mini",
      ["server.address"] = "127.0.0.1" }, ok_point.attributes)
    assert.are.equal(2, ok_point.count)
    assert.are.equal("ProviderError", failed_point.attributes["error.type"])
    assert.are.equal(1, failed_point.count)
    assert.are.same({ 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92 },
      ok_point.bounds)
    local n = 0
    for _, c in ipairs(ok_point.buckets) do n = n + c end
    assert.are.equal(2, n)
    assert.is_true(ok_point.min > 0 and ok_point.min <= ok_point.max and ok_point.sum >= ok_point.max)
    -- tokens: input and output apart, their sums the calls' usage
    local tokens = metric(e, "gen_ai.client.token.usage")
    assert.are.equal("{token}", tokens.unit)
    local by_type = {}
    for _, pt in ipairs(tokens.points) do by_type[pt.attributes["gen_ai.token.type"]] = pt end
    assert.are.same({ 2, 3120, 120, 3000 }, { by_type.input.count, by_type.input.sum, by_type.input.min,
      by_type.input.max })
    assert.are.same({ 2, 49 }, { by_type.output.count, by_type.output.sum })
    -- 120 and 3000 input tokens: the buckets (64, 256] and (1024, 4096]
    assert.are.same({ 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0 }, by_type.input.buckets)
    assert.are.equal(s:stats().tokens.input, by_type.input.sum)
  end)

  it("keep counting, cumulative, across exports, and wait for the interval in between", function()
    tide.tracing { endpoint = url, metrics = { interval_ms = 50 } }
    local srv <close> = testing.mock_server { default = { text = "hi", usage = { input = 5, output = 1 } } }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    tide.run(function()
      local s = tide.session { agent = "metered", provider = p }
      assert(s:turn("one"))
      tide.sleep(300) -- (the interval passes: an export)
      assert.are.equal(1, #exports_of())
      assert(s:turn("two"))
      assert(s:turn("three"))
    end)
    local exports = exports_of()
    assert.are.equal(2, #exports) -- (the run's end sent the second)
    local first = metric(exports[1], "gen_ai.client.operation.duration").points[1]
    local second = metric(exports[2], "gen_ai.client.operation.duration").points[1]
    assert.are.same({ 1, 3 }, { first.count, second.count })
    assert.are.equal(first.start, second.start)
    assert.is_true(tonumber(second.time) > tonumber(first.time))
    assert.are.same({ exports = 2, failures = 0, series = 3 }, metrics.stats())
  end)

  it("are off unless asked for, and their options are checked", function()
    tide.tracing { endpoint = url }
    local srv <close> = testing.mock_server { default = "hi" }
    tide.run(function()
      local s = tide.session { agent = "metered", provider = tide.provider.openai { base_url = srv.url,
        api_key = "k", model = "m", stream = false } }
      assert(s:turn("one"))
    end)
    assert.are.equal(0, #exports_of())
    assert.has_error(function() tide.tracing { endpoint = url, metrics = "yes" } end,
      "tide.tracing: 'metrics' must be true, false or { interval_ms }")
    assert.has_error(function() tide.tracing { endpoint = url, metrics = { interval = 5 } } end,
      "tide.tracing: unknown option 'metrics.interval'")
    assert.has_error(function() tide.tracing { endpoint = url, metrics = { interval_ms = 0 } } end,
      "tide.tracing: 'metrics.interval_ms' must be a positive integer")
    -- the environment's way: OTEL_METRICS_EXPORTER=otlp, and its own endpoint and interval
    assert.are.equal("http://m.example/v1/metrics 1500", in_child({ OTEL_EXPORTER_OTLP_ENDPOINT = "http://t.example",
      OTEL_METRICS_EXPORTER = "otlp", OTEL_EXPORTER_OTLP_METRICS_ENDPOINT = "http://m.example/v1/metrics",
      OTEL_METRIC_EXPORT_INTERVAL = "1500" }, 't.enabled() local m = t._config().metrics print(m.url .. " " .. m.interval_ms)'))
    assert.are.equal("nil", in_child({ OTEL_EXPORTER_OTLP_ENDPOINT = "http://t.example", OTEL_METRICS_EXPORTER = "none" },
      't.enabled() print(t._config().metrics)'))
  end)
end)

describe("the local span tree", function()
  it("keeps the last turn's spans for /trace, without a collector", function()
    tracing.setup(false)
    tracing._reset()
    tracing.keep_last()
    local srv = testing.mock_server { default = testing.tool_loop(1, "lookup") }
    tide.agent { id = "treed", prompt = "You look.", tools = {
      tide.tool { name = "lookup", description = "d", handler = function() return "found" end } } }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m" }
    local s = tide.session { agent = "treed", provider = p }
    assert(s:turn("go"))
    local tree = tracing.last_tree()
    assert.matches("^invoke_agent treed  [%d%.]+ ms\n  chat m  [%d%.]+ ms\n  execute_tool lookup  [%d%.]+ ms\n  chat m", tree)
    assert.are.equal(0, tracing.stats().queued) -- nothing to export to
    tracing.setup(false)
    srv:close()
  end)
end)
