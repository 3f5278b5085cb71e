--- The integration source of row 13 (bench/cluster_cache.lua), in a process
--- of its own: `GET /toolkits?user=<n>` answers that user's toolkits after
--- `delay_ms` (a realistic listing latency, so that concurrent misses really
--- overlap), and counts every such request; `GET /count` answers
--- { fetches, users, max_per_user } so far.
---
---   lua5.4 bench/cluster_cache_source.lua <delay_ms>
dofile((arg[0]:match("^(.*)/") or ".") .. "/paths.lua")()
local cjson = require "cjson"
local core = require "tide.core"
local testing = require "tide.testing"

local delay = math.tointeger(tonumber(arg[1] or "100")) or 100
local fetches, per_user, users = 0, {}, 0

-- Five toolkits of eight actions each, one gated, named for the user: about
-- the size of a Composio account's listing.
local function toolkits(user)
  local out = {}
  for k = 1, 5 do
    local slug = ("app%d"):format(k)
    local tk = { slug = slug, description = ("App %d of user %s."):format(k, user), connected = true,
                 tools = {}, gated_tools = { { name = slug:upper() .. "_ADMIN", description = "Administers.",
                 reason = "needs the admin scope" } } }
    for a = 1, 8 do
      tk.tools[a] = { name = ("%s_ACTION_%d"):format(slug:upper(), a),
        description = ("Action %d of app %d for %s."):format(a, k, user),
        parameters = { type = "object", properties = { id = { type = "string", description = "The id." } },
                       required = { "id" } } }
    end
    out[k] = tk
  end
  return out
end

local ok, err = core.run(function()
  local srv = assert(testing.mock_server { port = 0, ref = true, record = false, routes = {
    ["/toolkits"] = function(req)
      local user = req.path:match("[?&]user=([%w_-]+)") or "?"
      fetches = fetches + 1
      if not per_user[user] then users = users + 1 end
      per_user[user] = (per_user[user] or 0) + 1
      return { delay_ms = delay, headers = { ["content-type"] = "application/json" },
               body = cjson.encode(toolkits(user)) }
    end,
    ["/count"] = function()
      local max = 0
      for _, c in pairs(per_user) do max = math.max(max, c) end
      return { headers = { ["content-type"] = "application/json" },
               body = cjson.encode { fetches = fetches, users = users, max_per_user = max } }
    end,
  } })
  io.stdout:write("listening on ", srv.url, "\n")
  io.stdout:flush()
end)
if not ok then
  io.stderr:write("cluster_cache_source: ", tostring(err), "\n")
  os.exit(1)
end
