-- The process spec/integration/crash_resume_spec.lua kills at a random
-- moment: a session with a transcript in a long tool loop (30 ms tools)
-- against an in-process mock.
local path = arg[1]
local tide = require "tide"
local testing = require "tide.testing"
local srv = testing.mock_server { default = testing.tool_loop(40, "lookup") }
tide.agent { id = "crashy", prompt = "You look things up.", tools = { tide.tool { name = "lookup",
  description = "Looks a thing up.", parameters = { type = "object", properties = { q = { type = "string" } } },
  handler = function(args) tide.sleep(30); return "found " .. tostring(args.q) end } } }
local s = assert(tide.session { agent = "crashy", transcript = path, max_iterations = 50,
  provider = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = true } })
s:turn("look up forty things")
io.write("finished\n")
