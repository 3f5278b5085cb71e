--- Row 11: sessions that last. Resuming a 10,000-message transcript (build
--- and restore, first encoding left to the first request), and a
--- compaction's own work on a 200-message history (the "drop" strategy,
--- forced; the summary strategy adds one model call).
local common = require "bench.common"
local json = require "tide.json"
local tide = require "tide"
local compaction = require "tide.compaction"

-- A conversation of n messages: user, assistant call, tool result, answer.
local function conversation(n)
  local msgs = {}
  for i = 1, n // 4 do
    msgs[#msgs + 1] = { role = "user", content = "question " .. i }
    msgs[#msgs + 1] = { role = "assistant", content = "", tool_calls = { { id = "c" .. i, name = "lookup",
      arguments = '{"q":"a"}' } } }
    msgs[#msgs + 1] = { role = "tool", results = { { id = "c" .. i, name = "lookup",
      content = ("r"):rep(400), is_error = false } } }
    msgs[#msgs + 1] = { role = "assistant", content = "answer " .. i }
  end
  return msgs
end

return function()
  tide.agent { id = "bench_history", prompt = "x", tools = { tide.tool { name = "lookup", description = "d",
    handler = function() return "" end } } }
  local p = tide.provider.openai { base_url = "http://127.0.0.1:9", api_key = "k", model = "m" }
  local hr = common.hrtime

  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write('{"type":"meta","version":1}\n{"role":"system","content":"x"}\n')
  for _, m in ipairs(conversation(10000)) do f:write(json.canonical(m), "\n") end
  f:close()
  local resumes = {}
  for i = 1, common.reps(15, 5) do
    local t0 = hr()
    local s = assert(tide.session { agent = "bench_history", provider = p, resume = path })
    resumes[i] = (hr() - t0) / 1e6
    s:close()
  end
  os.remove(path)
  local resume_ms = common.median(resumes)

  local compacts = {}
  for i = 1, common.reps(200, 50) do
    local s = tide.session { agent = "bench_history", provider = p, context = { window = 4000, strategy = "drop" } }
    s.conversation:restore("x", 1, conversation(200))
    s.conversation:encoded()
    local t0 = hr()
    compaction.compact(s, nil, true)
    compacts[i] = (hr() - t0) / 1e6
  end
  local compact_ms = common.median(compacts)
  return {
    common.line("Resume a 10,000-message transcript", common.num(resume_ms) .. " ms", "goal < 50 ms",
      common.goal(resume_ms, 50), { median = resume_ms }),
    common.line("Compaction's own work, 200 messages (drop)", common.num(compact_ms) .. " ms", "goal < 1 ms",
      common.goal(compact_ms, 1), { median = compact_ms }),
  }
end
