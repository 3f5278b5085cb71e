-- A one-file agent, as an author would write it: a tool, an agent, a
-- provider (here the in-process mock) and one turn. bench/startup.lua runs
-- it as a fresh process many times; it prints the reply.
local tide = require "tide"

local lookup = tide.tool {
  name = "lookup",
  description = "Looks a thing up.",
  parameters = { type = "object", properties = { q = { type = "string" } }, required = { "q" } },
  handler = function(args) return "found " .. args.q end,
}

tide.agent { id = "helper", prompt = "You help by looking things up.", tools = { lookup } }

tide.run(function()
  local srv = assert(tide.testing.mock_server { default = tide.testing.tool_loop(1) })
  local s = tide.session {
    agent = "helper",
    provider = tide.provider.openai { base_url = srv.url .. "/v1", api_key = "k", model = "m" },
  }
  print(assert(s:turn("find one thing")))
  srv:close()
end)
