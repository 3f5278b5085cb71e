-- tide demo: a whole agent harness, end to end, on the embedded mock provider
-- (loopback only, no network, no API key).
--
--   ./dev demo          (or: lua5.4 examples/demo.lua with tide on the paths)
--
-- It shows: a session prewarmed from the shared integration cache (its first
-- request already offers delegate_github / delegate_slack), a streamed reply,
-- tool calls and sub-agent delegations as a tree with timings, the gated-tool
-- catalogue in the frozen prompt, and the counters.
local tide = require "tide"
local demo = require "tide.testing.demo"

local function tree(ev)
  local pad = string.rep("  ", ev.depth + 1)
  if ev.type == "tool_start" then
    io.write("\n", pad, "-> ", ev.name, " ", ev.arguments or "", "\n")
  elseif ev.type == "tool_end" then
    io.write(pad, "<- ", ev.name, (" (%.1f ms)%s\n"):format(ev.ms, ev.is_error and " error" or ""))
  elseif ev.type == "subagent_start" then
    io.write(pad, "   [", ev.agent, " at depth ", ev.depth, "]\n")
  end
end

tide.run(function()
  local srv = assert(tide.testing.mock_server { default = demo.model })
  local provider = tide.provider.openai { base_url = srv.url .. "/v1", api_key = "demo", model = "demo-model" }
  local src = tide.integrations.static { id = "demo-user", toolkits = demo.toolkits() }
  demo.agents()

  -- Warm the shared cache once, as a long-running app would have.
  assert(tide.integrations.cache.get(src))

  local s = tide.session { agent = "orchestrator", provider = provider, integrations = src }
  print(("session built in %.1f us, prewarmed: %s"):format(s:stats().build_ms * 1000, tostring(s:stats().prewarmed)))
  print("tools: " .. table.concat(s:tools(), ", "))

  for _, question in ipairs {
    "What are the open issues on github?",
    "Please look up prewarm",
    "Can you research depth for me?",
  } do
    print("\n> " .. question)
    io.write("  ")
    local reply, err = s:turn(question, {
      on_delta = function(d) io.write(d) io.flush() end,
      on_event = tree,
    })
    if not reply then print("\nerror: " .. tostring(err)) end
    print()
  end

  local st = s:stats()
  print(("\nstats: provider_calls=%d tool_calls=%d integration_fetches=%d delegation_rebuilds=%d " ..
    "config_loads=%d prewarmed=%s spawn_depth_max=%d prompt_bytes_reencoded=%d")
    :format(st.provider_calls, st.tool_calls, st.integration_fetches, st.delegation_rebuilds,
      st.config_loads, tostring(st.prewarmed), st.spawn_depth_max, st.prompt_bytes_reencoded))
  print("turn 1 before the first provider call:")
  for _, step in ipairs(st.trace) do print(("  %-22s %.3f ms"):format(step.step, step.ms)) end
  local gated = s:system_prompt():match("Not available in github[^\n]*\n([^\n]+)")
  print("gated catalogue in the frozen prompt: " .. tostring(gated))
  srv:close()
end)
