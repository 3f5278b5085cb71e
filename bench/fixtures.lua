--- bench.fixtures: the agents, tools, toolkits and providers the rows share.
---@class bench.fixtures
local M = {}

local tide = require "tide"

--- The `lookup` tool the tool loops call.
function M.lookup()
  return tide.tool {
    name = "lookup",
    description = "Looks a thing up and returns what it found.",
    parameters = { type = "object", properties = { q = { type = "string" } }, required = { "q" } },
    handler = function(args) return "found " .. tostring(args.q) end,
  }
end

--- `n` connected toolkits of `actions` callable actions and `gated` gated
--- ones each, shaped like a Composio account.
function M.toolkits(n, actions, gated)
  local out = {}
  for k = 1, n do
    local slug = ("toolkit%02d"):format(k)
    local tk = {
      slug = slug,
      description = ("Toolkit %d: reads and changes the user's %s data (issues, files, messages)."):format(k, slug),
      connected = true, tools = {}, gated_tools = {},
    }
    for a = 1, actions do
      tk.tools[a] = {
        name = ("%s_ACTION_%02d"):format(slug:upper(), a),
        description = ("Action %d of %s: does one specific thing with the account's data."):format(a, slug),
        parameters = {
          type = "object",
          properties = {
            id = { type = "string", description = "The object id." },
            limit = { type = "integer", description = "How many results." },
          },
          required = { "id" },
        },
      }
    end
    for g = 1, gated do
      tk.gated_tools[g] = {
        name = ("%s_ADMIN_%02d"):format(slug:upper(), g),
        description = ("Administrative action %d of %s."):format(g, slug),
        reason = "needs the admin scope",
      }
    end
    out[k] = tk
  end
  return out
end

--- A provider for the mock at `url` (streaming unless stream == false):
--- OpenAI chat completions, the Responses API (api = "responses"), or
--- Anthropic Messages (api = "anthropic").
function M.provider(url, stream, api)
  if api == "anthropic" then
    return tide.provider.anthropic {
      base_url = url .. "/v1", api_key = "bench-key", model = "bench-model",
      stream = stream ~= false, retry = { attempts = 1 },
    }
  end
  return tide.provider.openai {
    base_url = url .. "/v1", api_key = "bench-key", model = "bench-model",
    stream = stream ~= false, retry = { attempts = 1 }, api = api,
  }
end

--- The orchestrator setup of rows 5 and 6: an orchestrator with
--- `{ toolkits = "*" }` and a named sub-agent, over 20 toolkits x 20 actions
--- (5 gated each: 100 gated actions). Returns the source.
function M.orchestrator(opts)
  opts = opts or {}
  tide.agent {
    id = "researcher", prompt = "You research things carefully and report what you found.",
    when_to_use = "Open-ended research that needs several lookups.",
    tools = { M.lookup() },
  }
  tide.agent {
    id = "orchestrator", prompt = "orchestrator",
    when_to_use = "The user's assistant.",
    tools = { M.lookup() },
    subagents = { "researcher", { toolkits = "*" } },
  }
  return tide.integrations.static {
    id = opts.id or "bench-20x20", delay_ms = opts.delay_ms,
    toolkits = M.toolkits(20, 20, 5),
  }
end

return M
