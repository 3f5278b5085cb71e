--- Row 10: leak check at scale. Ten rounds of 1,000 tool-using sessions in
--- one client process (bench/scale_client.lua leak), against a mock in
--- another process answering at once. After each round a full collection
--- runs and the RSS is read; what the table shows is RSS after round 1,
--- after round 10, and the growth between them. Lua heap sizes are kept in
--- the raw record.
local common = require "bench.common"

-- A leak shows as a Lua heap that keeps growing after round 2 (round 1
-- fills caches once), or as RSS growing by kilobytes per session; RSS alone
-- moves in steps of a few MB with malloc's arenas, and the Lua heap in steps
-- of 64 KB when the string table doubles for a busier round.
local function verdict(r1, r10, h2, h10, n, rounds, live_tasks)
  local rss_per = (r10 - r1) / (n * (rounds - 1))
  local heap_per = (h10 - h2) / (n * (rounds - 2))
  local leak = heap_per > 16 or rss_per > 1024 or live_tasks ~= 0
  return ("RSS %+.0f B/session, Lua heap %+.0f B/session%s: %s"):format(rss_per, heap_per,
    live_tasks ~= 0 and (", " .. live_tasks .. " tasks left") or "", leak and "LEAK?" or "no leak")
end

return function()
  local n, rounds = 1000, 10
  local m = common.start_mock { tool_loop = 1, cpu = 1 }
  local ok, out = pcall(common.capture, ("%s %slua5.4 %s leak %s %d %d"):format(common.lua_env(),
    common.on_cpu(0), common.sh(common.bench .. "/scale_client.lua"), common.sh(m.url), n, rounds))
  m.stop()
  if not ok then error(out, 0) end
  local r = common.json_decode(out:match("{.*}") or "")
  if not r then error("scale_client printed: " .. out) end
  if r.errors > 0 then error(("%d sessions failed: %s"):format(r.errors, r.first_error)) end
  local r1, r10 = r.rss[1], r.rss[rounds]
  local h1, h10 = r.heap[1], r.heap[rounds]
  local mb = function(b) return common.num(b / 2^20) .. " MB" end
  return {
    common.line("Leak check, 10 x 1,000 sessions: RSS round 1 -> 10",
      ("%s -> %s (%s%s)"):format(mb(r1), mb(r10), r10 >= r1 and "+" or "-", mb(math.abs(r10 - r1))),
      ("Lua heap %s -> %s"):format(mb(h1), mb(h10)),
      verdict(r1, r10, r.heap[2], h10, n, rounds, r.live_tasks),
      { rss = r.rss, heap = r.heap, wall_s = r.wall_s, live_tasks = r.live_tasks,
        active_handles = r.active_handles, connections = r.connections, requests = r.requests }),
  }
end
