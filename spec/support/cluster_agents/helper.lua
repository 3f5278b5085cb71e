-- The agent of the cluster specs (spec/integration/cluster_*_spec.lua), for
-- the spec process and the workers it starts alike. Its tool writes a line
-- to $TIDE_TOOL_LOG each time it starts (how a spec counts runs across
-- processes), then sleeps $TIDE_TOOL_SLEEP_MS (how a spec kills a worker
-- mid-call).
return {
  id = "helper",
  prompt = "You help.",
  -- a one-tool turn takes two provider calls; a third is over the limit
  max_iterations = 2,
  tools = { tide.tool {
    name = "lookup", description = "Looks a thing up.",
    parameters = { type = "object", properties = { q = { type = "string" } } },
    handler = function(args)
      local log = os.getenv("TIDE_TOOL_LOG")
      if log then
        local f = assert(io.open(log, "a"))
        f:write(tostring(args.q), " ", tostring(os.getenv("TIDE_WORKER_NAME")), "\n")
        f:close()
      end
      local ms = tonumber(os.getenv("TIDE_TOOL_SLEEP_MS") or "0")
      if ms > 0 then tide.sleep(ms) end
      return "found " .. tostring(args.q)
    end,
  } },
}
