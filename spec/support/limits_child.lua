-- A worker of spec/integration/cluster_limits_spec.lua: joins the cluster
-- at arg[1] and makes arg[3] requests at once against the mock at arg[2],
-- under limits = { rpm = arg[4] } shared through Redis.
local redis_url, mock_url, n, rpm = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])
local tide = require "tide"
tide.cluster { redis = redis_url }
tide.agent { id = "lim", prompt = "You answer." }
local p = tide.provider.openai { base_url = mock_url, api_key = "k", model = "m", limits = { rpm = rpm } }
io.write("ready\n")
io.flush()
io.read("l") -- go
tide.run(function()
  local tasks = {}
  for i = 1, n do
    tasks[i] = tide.spawn(function() return tide.session { agent = "lim", provider = p }:turn("hi") end)
  end
  for _, t in ipairs(tasks) do assert(t:join() == "ok") end
end)
local st = require("tide.provider.limits").state(p)
io.write(("done remote=%d fallbacks=%d\n"):format(st.remote, st.local_fallbacks))
