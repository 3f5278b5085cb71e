--- bench/toolloop_floor.lua: how low a turn loop written in Lua can go (a
--- diagnostic for row 3, not a row of the table).
---
---   bin/tide-mock --port 0 --tool-loop 10 &     # prints its URL
---   lua5.4 bench/toolloop_floor.lua URL [sessions] [floor|tide] [stream]
---
--- `floor` runs the 10-lookup tool loop with only the work no Lua turn loop
--- can skip while keeping tide's data model: the body joined from the
--- encoded prefix and messages, the reply parsed in C, the history kept as
--- message tables and encoded strings, the tool run in a task of its own.
--- No stats, callbacks, budgets, transcript, retries, events or checks.
--- `tide` runs the same loop as tide sessions. Both print microseconds per
--- round trip; for exact figures, count instructions (the VM's noise moves
--- wall time by tens of per cent, not instruction counts):
---
---   valgrind --tool=callgrind lua5.4 bench/toolloop_floor.lua URL 100 floor
---   (and 200; the difference over 1,100 round trips is one round trip)
dofile((arg[0]:match("^(.*)/") or ".") .. "/paths.lua")()
local tide = require "tide"
local core = require "tide.core"
local json = require "tide.json"
local fixtures = require "bench.fixtures"

local url, sessions, mode = arg[1], tonumber(arg[2] or 1000), arg[3] or "floor"
local stream = arg[4] == "stream"
if not url then
  io.stderr:write("usage: lua5.4 bench/toolloop_floor.lua URL [sessions] [floor|tide] [stream]\n")
  os.exit(2)
end
local LOOP = 10
local p = fixtures.provider(url, stream)
local lookup = fixtures.lookup()
tide.agent { id = "looper", prompt = "You look things up, one at a time, until you are done.",
             max_iterations = LOOP + 1, tools = { lookup } }

local prefix = p:encode_prefix("You look things up, one at a time, until you are done.",
  { { name = lookup.name, description = lookup.description, parameters = lookup.parameters } })
local headers, endpoint = core.http_headers(p:_headers()), p:_url()

local function worker(handler, args, call)
  local _, v = pcall(handler, args)
  return { id = call.id, name = call.name, content = v, is_error = false }
end

-- One response: a non-streamed one parsed in place, a streamed one fed to
-- the C stream parser chunk by chunk.
local function reply(wire)
  local req <close> = core.http_post(endpoint, headers, prefix, 60000, 8 << 20, stream, wire)
  if not stream then
    assert(req:next() == "done")
    return core.openai_parse(req)
  end
  local parser <close> = core.openai_stream(8 << 20)
  while true do
    local kind, chunk = req:next()
    if kind ~= "data" then break end
    parser:feed(chunk, false)
  end
  return parser:finish()
end

local function floor_session()
  local messages, wire = {}, {}
  local user = { role = "user", content = "look up ten things" }
  messages[1], wire[1] = user, p:_encode(user)
  while true do
    local resp = reply(wire)
    local calls = resp.tool_calls
    if #calls == 0 then
      messages[#messages + 1] = { role = "assistant", content = resp.text }
      return resp.text
    end
    local a = { role = "assistant", content = resp.text, tool_calls = calls }
    messages[#messages + 1], wire[#wire + 1] = a, p:_encode(a)
    local call = calls[1]
    local task = core.spawn_now(worker, lookup.handler, json.decode(call.arguments), call)
    local msg = { role = "tool", results = { task:join(120000) } }
    messages[#messages + 1], wire[#wire + 1] = msg, p:_encode(msg)
  end
end

local function tide_session()
  return tide.session { agent = "looper", provider = p }:turn("look up ten things")
end

local run = mode == "tide" and tide_session or floor_session
tide.run(function()
  assert(run() == "done after 10 lookups") -- opens the connection
  local t0 = core.hrtime()
  for _ = 1, sessions do assert(run() == "done after 10 lookups") end
  print(("%s: %.1f us a round trip"):format(mode, (core.hrtime() - t0) / 1e3 / (sessions * (LOOP + 1))))
end)
