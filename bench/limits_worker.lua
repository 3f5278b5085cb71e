--- bench/limits_worker.lua: one worker of the limits row. Joins the cluster
--- at arg[1], then for arg[4] seconds keeps arg[5] sessions turning against
--- the mock at arg[2], under limits = { rpm = arg[3] } shared through Redis.
dofile((arg[0]:match("^(.*)/") or ".") .. "/paths.lua")()
local redis_url, mock_url = arg[1], arg[2]
local rpm, seconds, concurrency = tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5])
local tide = require "tide"
local core = require "tide.core"
tide.cluster { redis = redis_url }
tide.agent { id = "lim", prompt = "You answer." }
local p = tide.provider.openai { base_url = mock_url, api_key = "k", model = "m", limits = { rpm = rpm } }
io.write("ready\n")
io.flush()
io.read("l") -- go
local deadline = core.now() + seconds * 1000
local turns = 0
tide.run(function()
  local tasks = {}
  for i = 1, concurrency do
    tasks[i] = tide.spawn(function()
      while core.now() < deadline do
        assert(tide.session { agent = "lim", provider = p }:turn("hi") == "ok")
        turns = turns + 1
      end
    end)
  end
  for _, t in ipairs(tasks) do t:join() end
end)
local st = require("tide.provider.limits").state(p)
io.write(("done turns=%d remote=%d fallbacks=%d\n"):format(turns, st.remote, st.local_fallbacks))
