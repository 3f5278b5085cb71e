-- A second process for spec/integration/cluster_session_spec.lua:
--   lua5.4 spec/support/cluster_child.lua <session id> <text>
-- opens the Redis session (TIDE_REDIS_URL; the provider from OPENAI_BASE_URL)
-- and runs one turn, printing "OPEN <messages>" then "REPLY <text>" or
-- "ERR <code> <message>". $LEASE_MS sets the session's lease.
local tide = require "tide"
local here = arg[0]:match("^(.*)/[^/]*$") or "."
tide.agents.load(here .. "/cluster_agents")
tide.cluster {}
local p = tide.provider.openai { api_key = "k", model = "m", stream = false }
local s, err = tide.session { id = arg[1], store = "redis", agent = "helper", provider = p,
  lease_ms = math.tointeger(tonumber(os.getenv("LEASE_MS") or "15000")), lease_wait_ms = 5000 }
if not s then
  io.stdout:write("ERR ", err.code, " ", err.message, "\n")
  os.exit(1)
end
io.stdout:write("OPEN ", #s:history(), "\n")
io.stdout:flush()
local reply, terr = s:turn(arg[2])
if reply then io.stdout:write("REPLY ", reply, "\n") else io.stdout:write("ERR ", terr.code, " ", terr.message, "\n") end
s:close()
