-- An agent `tide mcp-server` offers in the specs (spec/integration/
-- mcp_server_spec.lua): a tool of its own, so that a call shows progress.
return {
  id = "helper",
  prompt = "You help by looking things up.",
  when_to_use = "Looks things up and answers.",
  tools = {
    tide.tool {
      name = "lookup", description = "Looks a thing up.",
      parameters = { type = "object", properties = { q = { type = "string" } } },
      handler = function(args) return "found " .. tostring(args.q) end,
    },
  },
}
