--- Row 13: one turn through the queue beside a direct `s:turn()`. One turn
--- at a time (no tools: one round trip) against the same mock (another
--- process, no delay): direct, on a fresh in-memory session built before
--- the clock starts; through the queue, `tide.submit` on a fresh session id
--- served by a `tide worker` process (the session made in Redis, its lease,
--- every record appended there, the reply published back); and, between
--- the two, a direct turn on a Redis session (what keeping the transcript
--- in Redis costs without the queue). Rounds alternate so that drift of
--- the machine falls on all three. Goal: the queue adds at most 1 ms at
--- the median.
local common = require "bench.common"

return function()
  local tide = require "tide"
  local core = require "tide.core"
  local per_round = common.reps(60, 15)
  local rounds = common.reps(5, 2)
  local redis = common.start_redis()
  local mock = common.start_mock { cpu = 1 }
  local prefix = "bench" .. math.random(1, 1e9)
  local worker = common.start_worker { redis = redis.url, prefix = prefix, queue = "bench", mock = mock.url,
    cpu = 1, name = "w1" }
  local ok, res = pcall(function()
    common.pin(0)
    tide.agents.load(common.bench .. "/agents")
    tide.cluster { redis = redis.url, prefix = prefix }
    local p = tide.provider.openai { base_url = mock.url .. "/v1", api_key = "k", model = "m" }
    return tide.run(function()
      local direct, queued, in_redis = {}, {}, {}
      local n = 0
      -- warm: modules, connections, the reply subscription, the worker's agent
      for _ = 1, 5 do
        n = n + 1
        assert(tide.session { agent = "echoer", provider = p }):turn("hi")
        assert(tide.submit { queue = "bench", session = "warm" .. n, agent = "echoer", text = "hi" })
        assert(assert(tide.session { id = "rwarm" .. n, store = "redis", agent = "echoer", provider = p }):turn("hi"))
      end
      for _ = 1, rounds do
        for _ = 1, per_round do
          local s = tide.session { agent = "echoer", provider = p }
          local t0 = core.hrtime()
          assert(s:turn("hi"))
          direct[#direct + 1] = (core.hrtime() - t0) / 1e6
        end
        for _ = 1, per_round do
          n = n + 1
          local t0 = core.hrtime()
          local reply, err = tide.submit { queue = "bench", session = "q" .. n, agent = "echoer", text = "hi" }
          queued[#queued + 1] = (core.hrtime() - t0) / 1e6
          assert(reply, tostring(err))
        end
        for _ = 1, per_round do
          n = n + 1
          local s = assert(tide.session { id = "r" .. n, store = "redis", agent = "echoer", provider = p })
          local t0 = core.hrtime()
          assert(s:turn("hi"))
          in_redis[#in_redis + 1] = (core.hrtime() - t0) / 1e6
        end
      end
      return { direct = direct, queued = queued, in_redis = in_redis }
    end)
  end)
  worker.stop()
  mock.stop()
  redis:close()
  if not ok then error(res, 0) end
  local d, q, r = common.median(res.direct), common.median(res.queued), common.median(res.in_redis)
  return {
    common.line("a turn through the queue (submit, worker process, reply)", common.num(q) .. " ms",
      ("direct s:turn() %s ms; goal <= +1 ms"):format(common.num(d)),
      ("+%s ms: %s"):format(common.num(q - d), q - d <= 1 and "ok" or "MISSED"),
      { direct_ms = res.direct, queued_ms = res.queued }),
    common.line("a direct turn on a Redis session (lease, records in Redis)", common.num(r) .. " ms",
      ("direct s:turn() %s ms"):format(common.num(d)), ("+%s ms"):format(common.num(r - d)),
      { in_redis_ms = res.in_redis }),
  }
end
