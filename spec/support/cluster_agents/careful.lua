-- An agent of the cluster specs whose `delete` waits for a person's approval
-- (tide.submit's decisions). Its tools write a line to $TIDE_TOOL_LOG each
-- time they run, then sleep ($TIDE_TOOL_SLEEP_MS for delete,
-- $TIDE_LOOKUP_SLEEP_MS for lookup: a worker killed mid-call).
local function log_and_sleep(what, args, sleep_var)
  local log = os.getenv("TIDE_TOOL_LOG")
  if log then
    local f = assert(io.open(log, "a"))
    f:write(what, " ", tostring(args.q), " ", tostring(os.getenv("TIDE_WORKER_NAME")), "\n")
    f:close()
  end
  local ms = tonumber(os.getenv(sleep_var) or "0")
  if ms > 0 then tide.sleep(ms) end
end

return {
  id = "careful",
  prompt = "You are careful.",
  -- a turn of the gated call and one more takes three provider calls
  max_iterations = 3,
  tools = {
    tide.tool {
      name = "delete", description = "Deletes.", approval = true,
      parameters = { type = "object", properties = { q = { type = "string" } } },
      handler = function(args)
        log_and_sleep("delete", args, "TIDE_TOOL_SLEEP_MS")
        return "deleted " .. tostring(args.q)
      end,
    },
    tide.tool {
      name = "lookup", description = "Looks a thing up.",
      parameters = { type = "object", properties = { q = { type = "string" } } },
      handler = function(args)
        log_and_sleep("lookup", args, "TIDE_LOOKUP_SLEEP_MS")
        return "found " .. tostring(args.q)
      end,
    },
  },
}
