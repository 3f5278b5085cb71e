-- What the specs of tide.provider.openai against the mock share
-- (spec/integration/openai_real_spec.lua, openai_compat_spec.lua): a
-- provider on a mock, a mock for the length of a function, the body of a
-- request of neutral messages, a user message and a lookup tool.
local tide = require "tide"
local testing = require "tide.testing"
local helpers = require "helpers"

local M = {}

local FAST = { attempts = 2, base_ms = 1, max_ms = 2 }

--- A chat-completions provider on the mock at `url`, options in `extra`.
function M.make(url, stream, extra)
  local o = { base_url = url .. "/v1", api_key = "k", model = "m", stream = stream, retry = FAST }
  for k, v in pairs(extra or {}) do o[k] = v end
  return tide.provider.openai(o)
end

--- Runs fn(srv) inside tide.run with a mock of `opts`, closed after.
function M.with_mock(opts, fn)
  return helpers.run(function()
    local srv = assert(testing.mock_server(opts))
    local ok, err = pcall(fn, srv)
    srv:close()
    if not ok then error(err, 0) end
  end)
end

--- The request body of `msgs` (neutral messages) with one lookup tool.
function M.body_of(p, msgs)
  local enc = {}
  for i, m in ipairs(msgs) do enc[i] = p:encode_message(m) end
  return p:body(p:encode_prefix("Be brief.", { { name = "lookup", parameters = { type = "object" } } }), enc)
end

M.USER = { role = "user", content = "weather?" }

--- A mock's default reply for a tool loop of two lookups: a call of
--- lookup merged with `step(n)` for n = 0 and 1 (the results so far), then
--- `last`.
function M.two_lookups(step, last)
  return function(req)
    local n = testing.count_tool_results(req)
    if n >= 2 then return last end
    local r = { tool_calls = { { name = "lookup", arguments = { q = "item " .. n } } } }
    for k, v in pairs(step(n)) do r[k] = v end
    return r
  end
end

M.lookup = tide.tool {
  name = "lookup",
  description = "Looks a thing up.",
  parameters = { type = "object", properties = { q = { type = "string" } } },
  handler = function(args) return "found " .. tostring(args.q) end,
}

return M
