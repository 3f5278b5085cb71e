--- bench/limits_worker.lua: one worker of the limits row (and of
--- spec/integration/cluster_limits_spec.lua). Joins the cluster at arg[1],
--- says "ready", and on a line from stdin keeps arg[5] sessions turning
--- against the mock at arg[2] under limits = { rpm = arg[3] } shared
--- through Redis, until `arg[4]` is spent: "s=SECONDS" or "n=TURNS" (in
--- all). Prints what it did and what its limits saw.
dofile((arg[0]:match("^(.*)/") or ".") .. "/paths.lua")()
local redis_url, mock_url, rpm, until_, concurrency = arg[1], arg[2], tonumber(arg[3]), arg[4], tonumber(arg[5])
local tide = require "tide"
local core = require "tide.core"
local cluster = tide.cluster { redis = redis_url }
tide.agent { id = "lim", prompt = "You answer." }
local p = tide.provider.openai { base_url = mock_url, api_key = "k", model = "m", limits = { rpm = rpm } }
local seconds, turns_max = until_:match("^s=(%d+)$"), until_:match("^n=(%d+)$")
io.write("ready\n")
io.flush()
io.read("l") -- go
local deadline = seconds and core.now() + tonumber(seconds) * 1000 or math.huge
local started, turns = 0, 0
tide.run(function()
  local tasks = {}
  for i = 1, concurrency do
    tasks[i] = tide.spawn(function()
      while core.now() < deadline and started < (tonumber(turns_max) or math.huge) do
        started = started + 1
        assert(tide.session { agent = "lim", provider = p }:turn("hi") == "ok")
        turns = turns + 1
      end
    end)
  end
  for _, t in ipairs(tasks) do t:join() end
  cluster:close() -- (nothing left running at exit)
end)
local st = require("tide.provider.limits").state(p)
io.write(("done turns=%d remote=%d fallbacks=%d\n"):format(turns, st.remote, st.local_fallbacks))
-- (out before the exit handlers run: under the sanitizers, LeakSanitizer's
-- check at exit has been seen to crash before stdio was flushed)
io.stdout:flush()
