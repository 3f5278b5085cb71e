--- Row 3: the cost of one provider round trip inside a tool loop. Sessions
--- run a 10-lookup tool loop (testing.tool_loop(10): 11 provider calls per
--- session) against the standalone mock; raw_curl then replays the very
--- request bodies tide sent (captured from an in-process mock in a warm-up
--- session), one in flight, against a mock of its own. The tide
--- figure covers everything a round trip costs: encoding the new messages,
--- the HTTP exchange, parsing the reply (SSE when streaming), running the
--- tool in a task, and the session build amortised over its 11 calls.
--- The same row runs the Responses API (api = "responses") and Anthropic
--- Messages beside chat.
--- Client and mock share one core (see bench.common, pinning), so a round
--- trip costs what both sides spend on it.
local common = require "bench.common"
local fixtures = require "bench.fixtures"
local tide = require "tide"

local LOOP = 10
local CALLS = LOOP + 1

local function define_agent()
  -- 10 tool calls and the answer are 11 iterations: one more than the default.
  tide.agent { id = "looper", prompt = "You look things up, one at a time, until you are done.",
               max_iterations = CALLS,
               tools = { fixtures.lookup() } }
end

-- One warm-up session on an in-process mock; returns the bodies and the
-- request headers tide sent.
local function capture(stream, api)
  return tide.run(function()
    local srv = assert(tide.testing.mock_server { default = tide.testing.tool_loop(LOOP) })
    local s = tide.session { agent = "looper", provider = fixtures.provider(srv.url, stream, api) }
    local reply, err = s:turn("look up ten things")
    if not reply then error("warm-up session failed: " .. tostring(err)) end
    local reqs = srv:requests()
    srv:close()
    if #reqs ~= CALLS then error(("expected %d requests, got %d"):format(CALLS, #reqs)) end
    return reqs
  end)
end

local function tide_us(url, stream, sessions, api)
  local p = fixtures.provider(url, stream, api)
  return tide.run(function()
    -- One untimed session opens the connection.
    assert(tide.session { agent = "looper", provider = p }:turn("warm up"))
    local t0 = common.hrtime()
    for _ = 1, sessions do
      local s = tide.session { agent = "looper", provider = p }
      local reply, err = s:turn("look up ten things")
      if reply ~= ("done after %d lookups"):format(LOOP) then
        error("session failed: " .. tostring(reply or err))
      end
    end
    return (common.hrtime() - t0) / 1e3 / (sessions * CALLS)
  end)
end

return function()
  define_agent()
  common.pin(0)
  local reps = common.reps(25, 3)
  local sessions = common.reps(60, 20)
  local lines = {}
  -- Chat completions, then the Responses API: the same loop, each against
  -- the floor replaying its own bodies.
  local runs = {}
  for _, api in ipairs { "chat", "responses", "anthropic" } do
    for _, stream in ipairs { true, false } do runs[#runs + 1] = { api = api, stream = stream } end
  end
  for _, run in ipairs(runs) do
    local api, stream = run.api, run.stream
    local path = api == "responses" and "/v1/responses" or api == "anthropic" and "/v1/messages"
      or "/v1/chat/completions"
    local reqs = capture(stream, api)
    local files, hargs = {}, {}
    for i, r in ipairs(reqs) do
      files[i] = common.tmpname()
      common.write(files[i], r.body)
    end
    for _, h in ipairs { "content-type", "accept", "authorization", "x-api-key", "anthropic-version" } do
      local v = reqs[1].headers[h]
      if v then hargs[#hargs + 1] = "-H " .. common.sh(h .. ": " .. v) end
    end
    local quoted = {}
    for i, f in ipairs(files) do quoted[i] = common.sh(f) end
    -- One mock for each side, kept for every repetition (the tool-loop mock
    -- answers from the request alone, so a session leaves nothing behind);
    -- many short repetitions, each side's run right beside the other's, so
    -- that the machine's slow drifts fall on both sides of a pair alike.
    local tide_mock = common.start_mock { tool_loop = LOOP, cpu = 0 }
    local raw_mock = common.start_mock { tool_loop = LOOP, cpu = 0 }
    local raw_cmd = ("%s --warmup 1 %s replay %d %s"):format(table.concat(hargs, " "),
      common.sh(raw_mock.url .. path), sessions, table.concat(quoted, " "))
    local t, w = {}, {}
    local ok, err = pcall(function()
      for rep = 1, reps do
        local function tide_side() t[#t + 1] = tide_us(tide_mock.url, stream, sessions, api) end
        local function raw_side() w[#w + 1] = common.raw_curl(raw_cmd, 0).us_per_req end
        if rep % 2 == 1 then tide_side() raw_side() else raw_side() tide_side() end
      end
    end)
    tide_mock.stop()
    raw_mock.stop()
    if not ok then error(err, 0) end
    for _, f in ipairs(files) do os.remove(f) end
    -- The ratio is the median of each repetition's own ratio (its tide and
    -- raw sides ran back to back), with the range beside it: on a noisy
    -- machine the floor itself moves between repetitions, and a ratio of
    -- two medians taken apart would hide how far single pairs stray.
    local ratios = {}
    for i = 1, #t do ratios[i] = t[i] / w[i] end
    local mt, mw, mr = common.median(t), common.median(w), common.median(ratios)
    local lo, hi = math.min(table.unpack(ratios)), math.max(table.unpack(ratios))
    local bytes = 0
    for _, r in ipairs(reqs) do bytes = bytes + #r.body end
    lines[#lines + 1] = common.line(
      ("Tool loop%s, per provider round trip (%s)"):format(api == "responses" and ", Responses API"
        or api == "anthropic" and ", Anthropic" or "",
        stream and "streaming" or "non-streaming"),
      common.num(mt) .. " us", "raw libcurl " .. common.num(mw) .. " us; goal <= 1.5x",
      ("%s (%s to %s over %d pairs)%s"):format(common.x(mr), common.x(lo), common.x(hi), #ratios,
        mr <= 1.5 and " ok" or " MISSED"),
      { tide = t, raw = w, ratios = ratios, mean_body_bytes = bytes // #reqs })
  end
  -- Tracing on (every span exported to a collector process on loopback:
  -- the standalone mock takes POST /v1/traces as a collector does) against
  -- tracing off, streamed chat, pair by pair. Goal: within 1.1x.
  do
    local mock = common.start_mock { tool_loop = LOOP, cpu = 0 }
    local collector = common.start_mock { tool_loop = LOOP, cpu = 1 }
    local tracing = require "tide.tracing"
    local off, on, ratios = {}, {}, {}
    local ok, err = pcall(function()
      for rep = 1, common.reps(15, 3) do
        local a = tide_us(mock.url, true, sessions, "chat")
        tracing.setup { endpoint = collector.url }
        local b = tide_us(mock.url, true, sessions, "chat")
        tracing.setup(false)
        off[rep], on[rep], ratios[rep] = a, b, b / a
      end
    end)
    tracing.setup(false)
    mock.stop()
    collector.stop()
    if not ok then error(err, 0) end
    local mr = common.median(ratios)
    lines[#lines + 1] = common.line("Tool loop with tracing on (streaming, spans exported)",
      common.num(common.median(on)) .. " us", "tracing off " .. common.num(common.median(off)) .. " us; goal <= 1.1x",
      ("%s (%s to %s over %d pairs)%s"):format(common.x(mr), common.x(math.min(table.unpack(ratios))),
        common.x(math.max(table.unpack(ratios))), #ratios, mr <= 1.1 and " ok" or " MISSED"),
      { off = off, on = on, ratios = ratios })
  end
  return lines
end
