--- Row 7: rendering the orchestrator prompt with 20 connected toolkits (20
--- actions each) and 100 gated actions (summarised per toolkit), from render data shaped by
--- prompts.data (docs/internals.md). The template is compiled before timing;
--- each render is timed on its own.
local common = require "bench.common"
local fixtures = require "bench.fixtures"
local prompts = require "tide.prompts"

return function()
  local toolkits = fixtures.toolkits(20, 20, 5)
  local tools = { { name = "lookup", description = "Looks a thing up." },
                  { name = "delegate_researcher", description = "Open-ended research." } }
  for _, tk in ipairs(toolkits) do
    tools[#tools + 1] = { name = "delegate_" .. tk.slug, description = "Delegate to " .. tk.slug }
  end
  local data = prompts.data {
    agent = { id = "orchestrator", display_name = "Tide", when_to_use = "The user's assistant." },
    toolkits = toolkits, tools = tools,
    subagents = { { id = "researcher", tool = "delegate_researcher", when_to_use = "Open-ended research." } },
  }
  local text = assert(prompts.render("orchestrator", data))
  -- the gated catalogue is summarised per toolkit ("N <slug> actions are hidden")
  local gated = 0
  for n in text:gmatch("(%d+) %S+ actions are hidden") do gated = gated + tonumber(n) end
  assert(gated == 100, "expected 100 gated actions in the prompt, found " .. gated)
  local n = common.reps(3000, 500)
  local hr = common.hrtime
  local xs = {}
  for i = 1, 200 do prompts.render("orchestrator", data) end
  common.gc()
  for i = 1, n do
    local t0 = hr()
    prompts.render("orchestrator", data)
    xs[i] = (hr() - t0) / 1e3
  end
  local m = common.median(xs)
  return {
    common.line(("Prompt render, orchestrator (20 toolkits, 100 gated; %d bytes)"):format(#text),
      common.num(m) .. " us", "", "", { median = m, p99 = common.percentile(xs, 99), bytes = #text }),
  }
end
