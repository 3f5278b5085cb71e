--- tide.chat: a terminal chat for prompt tinkerers.
---
---   tide chat [agent] [--prompts DIR] [--agents DIR] [--provider openai|anthropic|bedrock|demo]
---             [--transcript FILE] [--mcp NAME=COMMAND | --mcp NAME=URL]...
---
--- The reply streams as it comes; tool calls and delegations print as an
--- indented tree with timings. Prompt and agent directories are watched: edit
--- a prompt while chatting, type /new, and the new session uses the new text
--- (the live one keeps its frozen prompt). With no API key in the environment
--- it runs on the embedded demo model over a loopback mock server. Each
--- --mcp adds an MCP server's tools; what such a server asks of the person
--- (a form, a URL, a model call) is asked at the terminal (tide.chat_mcp).
---@class tide.chat
local M = {}

local tide = require "tide"
local core = require "tide.core"

local HELP = [[
commands:
  /new      start a fresh session (it picks up edited prompts and agents)
  /stats    print the session's counters
  /prompt   print the session's frozen system prompt
  /tools    list the tools the model sees
  /trace    the last turn's span tree, with timings
  /mcp      the MCP servers' prompts and resources
  /use SERVER:PROMPT NAME=VALUE ...
            send an MCP server's prompt, filled in
  /help     this help
  /quit     leave (Ctrl-D too)
  //text    sends "/text" (any other /word is taken for a mistyped command)]]

local function parse(argv)
  local o = { agent = nil, mcp = {} }
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "--mcp" then
      if not argv[i + 1] then error("tide chat: --mcp needs a value", 0) end
      o.mcp[#o.mcp + 1] = require("tide.chat_mcp").parse(argv[i + 1])
      i = i + 2
    elseif a == "--prompts" or a == "--agents" or a == "--provider" or a == "--transcript" then
      o[a:sub(3)] = argv[i + 1]
      if not argv[i + 1] then error("tide chat: " .. a .. " needs a value", 0) end
      i = i + 2
    elseif a == "-h" or a == "--help" then
      o.help = true
      i = i + 1
    elseif a:sub(1, 1) == "-" then
      error("tide chat: unknown option " .. a, 0)
    else
      o.agent = a
      i = i + 1
    end
  end
  return o
end

--- One line typed at the terminal after `prompt`, trimmed; nil at the end
--- of input. (The chat's prompts, and its MCP servers' in tide.chat_mcp.)
---@param out file*
---@param prompt string
---@return string|nil
function M.ask(out, prompt)
  out:write(prompt)
  out:flush()
  local line = core.read_line()
  return line and line:match("^%s*(.-)%s*$")
end

-- A role behind MFA (a profile's mfa_serial) is assumed with the code the
-- person types, asked for when the role is (again at each renewal).
local function mfa_prompt(out)
  return function(serial) return M.ask(out, ("  MFA code for %s: "):format(serial)) end
end

--- The provider a command line names (`openai`, `anthropic`, `bedrock`,
--- `demo`), else the one an API key in the environment says, else the
--- embedded demo model; its label, and the demo's mock server to close.
--- Raises a message for an unknown name. (tide chat's and tide
--- mcp-server's.)
---@param kind? string
---@param out file* where a prompt for an MFA code goes
---@return table provider
---@return string label
---@return table? server
function M.provider(kind, out)
  -- (a gateway's ANTHROPIC_AUTH_TOKEN stands for a key, as in the official SDK)
  kind = kind or (os.getenv("OPENAI_API_KEY") and "openai")
    or ((os.getenv("ANTHROPIC_API_KEY") or os.getenv("ANTHROPIC_AUTH_TOKEN")) and "anthropic") or "demo"
  if kind == "openai" then return tide.provider.openai {}, "openai " .. (os.getenv("TIDE_MODEL") or "") end
  if kind == "anthropic" then return tide.provider.anthropic {}, "anthropic " .. (os.getenv("TIDE_MODEL") or "") end
  -- (Bedrock's Converse: TIDE_MODEL names the model, AWS's own variables the rest)
  if kind == "bedrock" then
    return tide.provider.bedrock { mfa_code = mfa_prompt(out) }, "bedrock " .. (os.getenv("TIDE_MODEL") or "")
  end
  if kind ~= "demo" then error("unknown provider " .. kind, 0) end
  local demo = require "tide.testing.demo"
  local srv = assert(tide.testing.mock_server { default = demo.model })
  return tide.provider.openai { base_url = srv.url .. "/v1", api_key = "demo", model = "demo-model" },
    "embedded demo model (no API key set)", srv
end

-- The tree view of what the agent does: indented by spawn depth.
local function printer(out, state)
  return function(ev)
    local pad = string.rep("  ", ev.depth - state.base + 1)
    if ev.type == "delta" then
      if ev.depth == state.base then
        if state.line_open == false then out:write("  ") end
        out:write(ev.text)
        state.line_open = true
      end
      return
    end
    if ev.type == "tool_input" then return end -- (partial JSON: the call shows whole at tool_start)
    if state.line_open then out:write("\n") end
    state.line_open = false
    if ev.type == "tool_start" then
      local args = ev.arguments or ""
      if #args > 60 then args = args:sub(1, 57) .. "..." end
      out:write(pad, "├─ ", ev.name, " ", args, "\n")
    elseif ev.type == "tool_progress" then
      out:write(pad, "│  ", ev.tool, " ", tostring(ev.progress), ev.total and ("/" .. tostring(ev.total)) or "",
        ev.message and ("  " .. ev.message) or "", "\n")
    elseif ev.type == "tool_status" then -- (an MCP tool run as a task)
      out:write(pad, "│  ", ev.tool, " ", ev.status, ev.message and ("  " .. ev.message) or "", "\n")
    elseif ev.type == "tool_end" then
      out:write(pad, "└─ ", ev.name, (" %.1f ms%s\n"):format(ev.ms, ev.is_error and " (error)" or ""))
    elseif ev.type == "subagent_start" then
      out:write(pad, "   ↳ ", ev.agent, "\n")
    elseif ev.type == "subagent_end" then
      out:write(pad, "   ↲ ", ev.agent, (" %.1f ms\n"):format(ev.ms))
    end
    out:flush()
  end
end

local function print_stats(out, s)
  local st = s:stats()
  local keys = {}
  for k, v in pairs(st) do if type(v) ~= "table" then keys[#keys + 1] = k end end
  table.sort(keys)
  for _, k in ipairs(keys) do out:write(("  %-24s %s\n"):format(k, tostring(st[k]))) end
  out:write(("  %-24s in=%d out=%d cached=%d\n"):format("tokens", st.tokens.input, st.tokens.output, st.tokens.cached))
end

--- Runs the chat; `argv` are the arguments after `chat`. Returns an exit code.
---@param argv string[]
---@param io_out? file* (default io.stdout)
---@return integer
function M.main(argv, io_out)
  local out = io_out or io.stdout
  local ok, o = pcall(parse, argv)
  if not ok then
    io.stderr:write(o, "\n")
    return 2
  end
  if o.help then
    out:write("usage: tide chat [agent] [--prompts DIR] [--agents DIR] [--provider openai|anthropic|bedrock|demo]\n",
      "         [--transcript FILE] [--mcp NAME=COMMAND | --mcp NAME=URL]...\n", HELP, "\n")
    return 0
  end
  local status = 0
  local run_ok, err = pcall(tide.run, function()
    local provider, label, srv = M.provider(o.provider, out)
    local watchers = {}
    local function report(e)
      local where = e.file and (e.file .. (e.line and (":" .. e.line) or "")) or ""
      out:write("\n[reload failed] ", where, " ", tostring(e.message or e), "\n")
      out:flush()
    end
    -- A directory that cannot be watched (missing, unreadable) ends the
    -- chat before it starts: chatting on without the files the user named
    -- would hide the mistake.
    local function watching(option, w, err)
      if w then
        watchers[#watchers + 1] = w
        return true
      end
      io.stderr:write(("tide chat: --%s %s: %s\n"):format(option, o[option], tostring(err)))
      status = 1
      for _, open in ipairs(watchers) do open:close() end
      if srv then srv:close() end
      return false
    end
    local src
    if o.prompts and not watching("prompts", tide.prompts.watch(o.prompts, {
        on_error = report,
        on_change = function(name, v) out:write(("\n[prompt %s reloaded: version %s; /new to use it]\n"):format(name, v)) end,
      })) then
      return
    end
    local demo = require "tide.testing.demo"
    if not o.agents or not tide.agents.get(o.agent or "orchestrator") then demo.agents() end
    if o.agents and not watching("agents", tide.agents.watch(o.agents, {
        on_error = report,
        on_change = function(id) out:write(("\n[agent %s reloaded; /new to use it]\n"):format(id)) end,
      })) then
      return
    end
    if not o.provider or o.provider == "demo" then
      src = tide.integrations.static { id = "chat-demo", toolkits = demo.toolkits() }
      tide.integrations.cache.get(src)
    end
    -- MCP servers beside it, each a toolkit of its own
    local chat_mcp = require "tide.chat_mcp"
    local servers = {}
    for i, spec in ipairs(o.mcp) do servers[i] = chat_mcp.source(spec, provider, out) end
    if #servers > 0 then
      local all = { src } -- (the demo's toolkits first, when there are)
      for _, m in ipairs(servers) do all[#all + 1] = m end
      src = all
    end
    local agent = o.agent or "orchestrator"
    local function new_session()
      local s = tide.session { agent = agent, provider = provider, integrations = src, transcript = o.transcript }
      return s
    end
    -- /trace shows the last turn's spans (exported too when OTEL_* or
    -- tide.tracing configured an endpoint).
    local tracing = require "tide.tracing"
    tracing.enabled()
    tracing.keep_last()
    local s = new_session()
    out:write(("tide %s chat with '%s' on %s. /help for commands.\n"):format(tide.version, agent, label))
    local state = { base = 0, line_open = false }
    -- One turn of `input` (a line, or a prompt's parts), its tree printed
    -- as it goes.
    local function send(input)
      local t0 = core.hrtime()
      state.line_open = false
      local reply, terr = s:turn(input, { on_event = printer(out, state) })
      -- Calls that wait for a person are asked about here, one by one;
      -- the turn then goes on where it paused.
      while not reply and terr and terr.code == "ApprovalRequired" do
        if state.line_open then out:write("\n"); state.line_open = false end
        local asked = true
        for _, p in ipairs(terr.pending) do
          -- (a remote MCP server's call, which the provider asks about, says whose)
          local name = p.server and (p.server .. ": " .. p.name) or p.name
          local answer = M.ask(out, ("  approve %s %s (by %s)? [y]es, or a reason to reject: "):format(name,
            p.arguments, p.agent))
          if answer == nil then asked = false break end
          if answer == "y" or answer == "yes" then s:approve(p.id) else s:reject(p.id, answer ~= "" and answer or nil) end
        end
        if not asked then break end
        reply, terr = s:resume { on_event = printer(out, state) }
      end
      if state.line_open then out:write("\n") end
      if reply then
        out:write(("  (%.0f ms, $%.4f)\n"):format((core.hrtime() - t0) / 1e6, s:stats().turn_cost_usd))
      else
        out:write("  error: ", tostring(terr), "\n")
      end
    end
    while true do
      local line = M.ask(out, "> ")
      if line == nil then break end
      if line == "/quit" or line == "/exit" then
        break
      elseif line == "/new" then
        s:close()
        s = new_session()
        out:write("new session\n")
      elseif line == "/stats" then
        print_stats(out, s)
      elseif line == "/prompt" then
        out:write(s:system_prompt() or "(not frozen yet: it is rendered at the first turn)", "\n")
      elseif line == "/trace" then
        out:write(require("tide.tracing").last_tree() or "(no turn traced yet)", "\n")
      elseif line == "/tools" then
        out:write("  ", table.concat(s:tools(), ", "), "\n")
      elseif line == "/help" then
        out:write(HELP, "\n")
      elseif line == "/mcp" then
        chat_mcp.list(out, servers)
      elseif line:match("^/use%f[%s%z]") then
        local input, why = chat_mcp.use(line, servers)
        if why then out:write("  ", why, "\n") end
        if input then send(input) end
      elseif line:match("^/[%w_-]*$") or line:match("^/[%w_-]+%s") then
        -- (a mistyped command is no message: with a real model it would be
        -- a paid call; "//" sends a line that starts with "/")
        out:write(("  unknown command %s: /help lists them (start a message with // to send a /)\n"):format(
          line:match("^%S+")))
      elseif line ~= "" then
        if line:sub(1, 2) == "//" then line = line:sub(2) end
        send(line)
      end
    end
    s:close()
    for _, w in ipairs(watchers) do w:close() end
    for _, m in ipairs(servers) do m:close() end
    if srv then srv:close() end
  end)
  if not run_ok then
    if type(err) == "table" and err.code == "Interrupted" then
      out:write("\n")
    else
      io.stderr:write("tide chat: ", tostring(err), "\n")
      status = 1
    end
  end
  return status
end

return M
