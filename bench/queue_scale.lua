--- Row 14: N sessions in flight through the queue, across 4 `tide worker`
--- processes, beside the same N in one process (row 9's client, measured
--- in the same run). Every session is row 9's tool-using one (two round
--- trips against a mock that waits 1 s before each reply: the floor is
--- 2 s). One submitting process sends the N turns at once and waits for
--- every reply. Goal: within 1.3x of the single process.
---
--- On the 2-core machine the project is built on, the four workers, the
--- submitter, Redis and the mock share two cores (the single process has
--- one core and the mock the other), so the ratio says what the queue
--- costs on a machine that small, not what four machines would do.
local common = require "bench.common"

return function()
  local n = common.reps(10000, 1000)
  local reps = common.reps(2, 1)
  local singles, queued = {}, {}
  local restore = common.raise_somaxconn and common.raise_somaxconn()
  local ok, err = pcall(function()
    for i = 1, reps do
      local m = common.start_mock { delay_ms = 1000, tool_loop = 1, cpu = 1 }
      local out = common.capture(("%s %slua5.4 %s scale %s %d"):format(common.lua_env(), common.on_cpu(0),
        common.sh(common.bench .. "/scale_client.lua"), common.sh(m.url), n))
      m.stop()
      local r = common.json_decode(out:match("{.*}") or "")
      if not r or r.errors > 0 then error("scale_client: " .. out) end
      singles[i] = r.wall_s

      local redis = common.start_redis()
      m = common.start_mock { delay_ms = 1000, tool_loop = 1, cpu = 1 }
      local prefix = "scale" .. i
      local workers = {}
      local wok, werr = pcall(function()
        for k = 1, 4 do
          workers[k] = common.start_worker { redis = redis.url, prefix = prefix, queue = "bench", mock = m.url,
            concurrency = n // 4 + 64, name = "w" .. k }
        end
        out = common.capture(("%s lua5.4 %s %s %s %d"):format(common.lua_env(),
          common.sh(common.bench .. "/queue_client.lua"), common.sh(redis.url), prefix, n))
      end)
      for _, w in ipairs(workers) do w.stop() end
      m.stop()
      redis:close()
      if not wok then error(werr, 0) end
      r = common.json_decode(out:match("{.*}") or "")
      if not r or r.errors > 0 then error("queue_client: " .. out) end
      queued[i] = r.wall_s
    end
  end)
  if restore then restore() end
  if not ok then error(err, 0) end
  local s, q = common.median(singles), common.median(queued)
  return {
    common.line(("%s sessions through the queue, 4 worker processes: wall"):format(common.n(n)),
      common.num(q) .. " s", ("one process %s s; goal <= 1.3x"):format(common.num(s)),
      ("%s%s"):format(common.x(q / s), q / s <= 1.3 and " ok" or " MISSED"),
      { queued_walls = queued, single_walls = singles }),
  }
end
