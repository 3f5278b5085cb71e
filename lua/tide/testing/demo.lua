--- tide.testing.demo: a small world for the demo and the chat when no API
--- key is set: a scripted model behind the loopback mock server, a local
--- `lookup` tool, and connected toolkits with gated actions.
---
--- The model is a plain function of the request, so it answers the same way
--- for every session: it reads the tools it is offered and the conversation,
--- and decides to call a tool or to answer.
---@class tide.testing.demo
local M = {}

local tide = require "tide"

local facts = {
  tide = "tide is a Lua-scriptable LLM agent runtime with a C core (libuv + libcurl).",
  prewarm = "A session built on a warm integration cache starts with its delegate tools and fetches nothing before its first model call.",
  depth = "Sub-agents nest at most MAX_SPAWN_DEPTH (3) levels deep; deeper spawns fail with SpawnDepthExceeded.",
  lua = "Lua 5.4 is a small, fast, embeddable scripting language.",
}

--- A local tool: looks a term up in a tiny knowledge base.
M.lookup = tide.tool {
  name = "lookup",
  description = "Looks a term up in the local knowledge base (tide, prewarm, depth, lua).",
  parameters = { type = "object", properties = { q = { type = "string", description = "the term" } }, required = { "q" } },
  handler = function(args)
    local q = tostring(args.q):lower()
    for k, v in pairs(facts) do
      if q:find(k, 1, true) then return v end
    end
    return "nothing found for '" .. args.q .. "'"
  end,
}

--- Toolkits of the demo user: github and slack connected, notion not.
function M.toolkits()
  return {
    { slug = "github", description = "Code hosting: repositories, issues, pull requests.", connected = true,
      tools = {
        { name = "GITHUB_LIST_ISSUES", description = "List open issues of a repository",
          parameters = { type = "object", properties = { repo = { type = "string" } } },
          handler = function() return "3 open issues: #12 flaky reload spec, #15 bench table, #17 docs" end },
        { name = "GITHUB_GET_REPO", description = "Get a repository",
          parameters = { type = "object", properties = { repo = { type = "string" } } },
          handler = function() return "tide: 42 stars, default branch main" end },
      },
      gated_tools = {
        { name = "GITHUB_DELETE_REPO", description = "Delete a repository", reason = "admin scope is off" },
        { name = "GITHUB_CREATE_WEBHOOK", description = "Create a webhook", reason = "write scope is off" },
      } },
    { slug = "slack", description = "Team chat: channels and messages.", connected = true,
      tools = {
        { name = "SLACK_LIST_CHANNELS", description = "List channels",
          parameters = { type = "object", properties = {} },
          handler = function() return "#general, #dev, #random" end },
      },
      gated_tools = { { name = "SLACK_DELETE_CHANNEL", description = "Delete a channel", reason = "admin scope is off" } } },
    { slug = "notion", description = "Docs and wikis.", connected = false, tools = {}, gated_tools = {} },
  }
end

--- Registers the demo agents: an orchestrator that delegates to a researcher
--- and to one integrations agent per connected toolkit.
function M.agents()
  tide.agent { id = "researcher", prompt = "You are a careful researcher. Use lookup to check facts before you answer.",
    tools = { "lookup" }, when_to_use = "Research a question using the knowledge base." }
  tide.agent { id = "orchestrator", prompt = "orchestrator", display_name = "tide's demo assistant",
    tools = { M.lookup }, subagents = { "researcher", { toolkits = "*" } } }
end

-- ------------------------------------------------------------ the model --

local function text_of(content)
  if type(content) == "string" then return content end
  if type(content) ~= "table" then return "" end
  local out = {}
  for _, b in ipairs(content) do
    if type(b) == "table" and b.type == "text" then out[#out + 1] = b.text end
  end
  return table.concat(out, "\n")
end

-- What the request looks like, for either wire shape.
local function view(req)
  local j = req.json or {}
  local v = { tools = {}, results = {}, user = "" }
  for _, t in ipairs(j.tools or {}) do v.tools[t["function"] and t["function"].name or t.name] = true end
  for _, m in ipairs(j.messages or {}) do
    if m.role == "user" and type(m.content) == "string" then
      v.user, v.results = m.content, {}
    elseif m.role == "user" and type(m.content) == "table" then
      local is_results = false
      for _, b in ipairs(m.content) do
        if b.type == "tool_result" then
          is_results = true
          v.results[#v.results + 1] = text_of(b.content)
        end
      end
      if not is_results then v.user, v.results = text_of(m.content), {} end
    elseif m.role == "tool" then
      v.results[#v.results + 1] = text_of(m.content)
    end
  end
  -- a sub-agent's task follows the date line on its user message
  v.task = v.user:match("\n\n(.*)$") or v.user
  return v
end

--- The scripted model: a reply for the mock server, given a request.
function M.model(req)
  local v = view(req)
  if #v.results > 0 then
    local found = table.concat(v.results, " / ")
    if found:find("^Here is what I found: ") then return found end -- a delegate's answer
    return "Here is what I found: " .. found
  end
  -- an integrations agent: use the listing action whose name best matches
  -- the task's words
  local action, best = nil, -1
  local words = v.task:upper()
  for name in pairs(v.tools) do
    if name:match("^[A-Z0-9_]+$") and (name:find("LIST", 1, true) or name:find("GET", 1, true)) then
      local score = 0
      for part in name:gmatch("[A-Z]+") do
        if #part > 3 and words:find(part, 1, true) then score = score + 1 end
      end
      if score > best or (score == best and name < action) then action, best = name, score end
    end
  end
  if action then return { tool_calls = { { name = action, arguments = {} } } } end
  local text = v.task:lower()
  for name in pairs(v.tools) do
    local slug = name:match("^delegate_(.+)$")
    if slug and slug ~= "researcher" and text:find(slug, 1, true) then
      return { tool_calls = { { name = name, arguments = { task = v.task } } } }
    end
  end
  if v.tools.delegate_researcher and text:find("research", 1, true) then
    return { tool_calls = { { name = "delegate_researcher", arguments = { task = v.task } } } }
  end
  local term = text:match("look up (%w+)") or text:match("lookup (%w+)") or text:match("what is (%w+)")
  if not term and v.tools.lookup and not v.tools.delegate_researcher then
    -- a researcher: look up the first known term the task mentions
    for _, k in ipairs { "prewarm", "depth", "tide", "lua" } do
      if text:find(k, 1, true) then term = k break end
    end
  end
  if term and v.tools.lookup then
    return { tool_calls = { { name = "lookup", arguments = { q = term } } } }
  end
  return "You said: " .. v.task .. ". I am tide's embedded demo model: ask me to look up tide, "
    .. "about your github issues, or to research prewarm."
end

return M
