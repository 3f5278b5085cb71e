-- An agent of the cluster specs whose tool waits for a person's approval
-- (tide.submit's decisions). Its tool writes a line to $TIDE_TOOL_LOG each
-- time it runs, then sleeps $TIDE_TOOL_SLEEP_MS (a worker killed mid-call).
return {
  id = "careful",
  prompt = "You are careful.",
  tools = { tide.tool {
    name = "delete", description = "Deletes.", approval = true,
    parameters = { type = "object", properties = { q = { type = "string" } } },
    handler = function(args)
      local log = os.getenv("TIDE_TOOL_LOG")
      if log then
        local f = assert(io.open(log, "a"))
        f:write("delete ", tostring(args.q), " ", tostring(os.getenv("TIDE_WORKER_NAME")), "\n")
        f:close()
      end
      local ms = tonumber(os.getenv("TIDE_TOOL_SLEEP_MS") or "0")
      if ms > 0 then tide.sleep(ms) end
      return "deleted " .. tostring(args.q)
    end,
  } },
}
