--- tide.mcp_server: tide's agents as an MCP server over stdio (MCP
--- 2025-11-25, negotiated down to 2025-06-18 or 2025-03-26), for an MCP
--- client to call them: Claude Desktop or Code, an IDE, another agent
--- runtime. One tool per agent, named by its id, described by its
--- `when_to_use`; its input is `{ task, conversation }`, its result the
--- agent's answer after one turn of a session: a new one, or, given
--- `conversation`, the one an earlier call of the same agent began, which
--- remembers its turns (as Codex's MCP server has its codex-reply). Its
--- `structuredContent` is `{ reply, conversation }` (the reply a table for
--- an agent with `output_schema`), as the tool's `outputSchema` says; the
--- text is the reply and the conversation's id, for a model to go on with.
--- The server keeps `max_conversations` (32) sessions, closing the one
--- used longest ago to start another.
---
--- The protocol, as a server has it: `initialize` (the client's version
--- when tide speaks it, else tide's), `ping`, `tools/list`, `tools/call`
--- (each call in a task of its own: calls run at once, side by side), and
--- `notifications/cancelled`, which cancels that call's turn and sends no
--- answer for it. A call that carries a `progressToken` hears of the turn's
--- steps (tool calls, sub-agents) as `notifications/progress`. A turn that
--- fails is the tool's error (`isError`, what failed in its text), as the
--- specification has a server report what the model may correct; an
--- unknown tool is a JSON-RPC error (-32602). A line that is not JSON is
--- answered -32700; other methods -32601. stdout carries the protocol
--- only: what the agents' code prints must go to stderr.
local core = require "tide.core"
local json = require "tide.json"

local M = {}

local PROTOCOL = "2025-11-25"
local SUPPORTED = { ["2025-11-25"] = true, ["2025-06-18"] = true, ["2025-03-26"] = true }

local Server = {}
Server.__index = Server

-- One message on stdout, a line of JSON (never a raw newline in it).
function Server:send(msg)
  self.out:write(json.canonical(msg), "\n")
  self.out:flush()
end

function Server:result(id, result) self:send { jsonrpc = "2.0", id = id, result = result } end

function Server:error(id, code, message)
  self:send { jsonrpc = "2.0", id = id == nil and json.null or id, error = { code = code, message = message } }
end

-- The tools: one per agent.
local function tool_of(id, def)
  return { name = id, title = def.display_name,
    description = def.when_to_use or ("Ask the %s agent to do something, in words."):format(id),
    inputSchema = { type = "object", properties = {
      task = { type = "string", description = "What to do, in words: the agent reads it as a user's message." },
      conversation = { type = "string", description = "To go on with an earlier call's conversation (the agent "
        .. "remembers it): the id that call gave. Leave it out to start a new one." } },
      required = json.array { "task" } },
    outputSchema = { type = "object", properties = {
      reply = def.output_schema or { type = "string" },
      conversation = { type = "string", description = "Give it as `conversation` to go on." } },
      required = json.array { "reply", "conversation" } } }
end

-- A turn's events as progress, for a client that asked (its token).
local function progress(self, token)
  local n = 0
  return function(e)
    local msg
    if e.type == "tool_start" then
      msg = ("%s started"):format(e.name)
    elseif e.type == "tool_end" then
      msg = ("%s ended%s"):format(e.name, e.is_error and " with an error" or "")
    elseif e.type == "subagent_start" then
      msg = ("sub-agent %s started"):format(e.agent)
    else
      return
    end
    n = n + 1
    self:send { jsonrpc = "2.0", method = "notifications/progress",
      params = { progressToken = token, progress = n, message = msg } }
  end
end

local function tool_error(text) return { isError = true, content = { { type = "text", text = text } } } end

-- A new conversation of `agent`: its session, kept (the one used longest
-- ago closed when there are max_conversations already, unless it is busy).
-- nil and a tool error when the session cannot be made.
function Server:converse(agent)
  local s, serr = require("tide").session { agent = agent, provider = self.provider,
    integrations = self.integrations }
  if not s then return nil, tool_error(tostring(serr and serr.message or serr)) end
  if self.nconversations >= self.max_conversations then
    local oldest
    for _, c in pairs(self.conversations) do
      if not c.busy and (oldest == nil or c.used < oldest.used) then oldest = c end
    end
    if oldest then
      self.conversations[oldest.id] = nil
      self.nconversations = self.nconversations - 1
      oldest.session:close()
    end
  end
  self.nconversations, self.started = self.nconversations + 1, self.started + 1
  local c = { id = ("c%d-%06x"):format(self.started, math.random(0, 0xffffff)), agent = agent, session = s, used = 0 }
  self.conversations[c.id] = c
  return c
end

-- tools/call: one turn of the tool's agent, in a conversation new or given.
function Server:call(id, params)
  local tide = require "tide"
  local agent = type(params) == "table" and self.agents[params.name]
  if not agent then
    return self:error(id, -32602, ("Unknown tool: %s"):format(tostring(type(params) == "table" and params.name)))
  end
  local args = type(params.arguments) == "table" and params.arguments or {}
  if type(args.task) ~= "string" or args.task == "" then
    return self:result(id, { isError = true, content = { { type = "text", text = "'task' must be a non-empty string" } } })
  end
  local meta = type(params._meta) == "table" and params._meta or {}
  local token = meta.progressToken
  if token ~= nil and type(token) ~= "string" and math.type(token) ~= "integer" then token = nil end
  local c, cerr
  if args.conversation ~= nil then
    c = type(args.conversation) == "string" and self.conversations[args.conversation]
    if not c or c.agent ~= agent then
      return self:result(id, tool_error(("no conversation '%s' with %s here (closed to make room, or never "
        .. "begun): leave 'conversation' out to start a new one"):format(tostring(args.conversation), params.name)))
    end
    if c.busy then return self:result(id, tool_error("the conversation is busy with another call: wait for it")) end
  else
    c, cerr = self:converse(agent)
    if not c then return self:result(id, cerr) end
  end
  self.tick = self.tick + 1
  c.busy, c.used = true, self.tick
  local ok, reply, err = pcall(c.session.turn, c.session, args.task,
    { on_event = token ~= nil and progress(self, token) or nil })
  c.busy = false
  if self.cancelled[id] then return end -- (the client gave up on it: no answer, as the specification says)
  if not ok then reply, err = nil, reply end
  if reply == nil then
    local text = type(err) == "table" and ("%s: %s"):format(tostring(err.code), tostring(err.message)) or tostring(err)
    return self:result(id, tool_error(text))
  end
  -- (a structured answer, to the agent's output_schema, as its JSON text)
  local text = type(reply) == "table" and json.canonical(reply) or reply
  return self:result(id, { content = { { type = "text", text = text },
    { type = "text", text = ("(conversation %s: give it as `conversation` to go on)"):format(c.id) } },
    structuredContent = { reply = reply, conversation = c.id } })
end

function Server:request(msg)
  local id, method, params = msg.id, msg.method, msg.params
  if method == "initialize" then
    local asked = type(params) == "table" and params.protocolVersion
    self.protocol = SUPPORTED[asked] and asked or PROTOCOL
    return self:result(id, { protocolVersion = self.protocol,
      capabilities = { tools = { listChanged = false } },
      serverInfo = { name = self.name, version = core.version },
      instructions = "Each tool is an agent: give it a task in words, and it answers." })
  elseif method == "ping" then
    return self:result(id, {})
  elseif method == "tools/list" then
    return self:result(id, { tools = self.tools })
  elseif method == "tools/call" then
    -- each call in a task of its own; a cancellation finds it by id
    local key = id
    self.inflight[key] = core.spawn(function()
      local fine, e = pcall(self.call, self, id, params)
      self.inflight[key] = nil
      if not fine and not (type(e) == "table" and e.code == "Cancelled") then
        io.stderr:write("tide mcp-server: ", tostring(e), "\n")
        if not self.cancelled[id] then self:error(id, -32603, "Internal error") end
      end
    end)
    return
  end
  return self:error(id, -32601, ("Method not found: %s"):format(tostring(method)))
end

function Server:notification(msg)
  if msg.method == "notifications/cancelled" and type(msg.params) == "table" then
    local id = msg.params.requestId
    local t = id ~= nil and self.inflight[id]
    if t then
      self.cancelled[id] = true
      t:cancel()
    end
  end
  -- (notifications/initialized and the others ask nothing of a server)
end

-- One line from the client.
function Server:handle(line)
  if line == "" then return end
  local msg = json.decode(line)
  if type(msg) ~= "table" or msg.jsonrpc ~= "2.0" then return self:error(nil, -32700, "Parse error") end
  if type(msg.method) ~= "string" then return end -- (a response: tide asks the client nothing)
  if msg.id == nil or msg.id == json.null then return self:notification(msg) end
  return self:request(msg)
end

--- Serves MCP on stdin and stdout until stdin ends, then cancels the calls
--- still running. Runs inside tide.run. `agents` names the agents to
--- offer (default: every agent with a `when_to_use`); `provider` and
--- `integrations` are the sessions'. Raises naming a bad option or an
--- unknown agent.
---@param opts {agents?: string[], provider: table, integrations?: any, name?: string, out?: file*, read_line?: fun(): string|nil, max_conversations?: integer}
function M.serve(opts)
  if type(opts) ~= "table" then error("bad argument #1 to 'serve' (table expected)", 2) end
  for k in pairs(opts) do
    if not ({ agents = true, provider = true, integrations = true, name = true, out = true, read_line = true,
        max_conversations = true })[k] then
      error(("bad argument #1 to 'serve' (unknown option '%s')"):format(tostring(k)), 2)
    end
  end
  local cap = opts.max_conversations or 32
  if math.type(cap) ~= "integer" or cap < 1 then
    error("bad argument #1 to 'serve' (field 'max_conversations' must be a positive integer)", 2)
  end
  if not require("tide.provider").is(opts.provider) then
    error("bad argument #1 to 'serve' (field 'provider' must be a provider)", 2)
  end
  local registry = require "tide.agents"
  local ids = opts.agents
  if ids == nil then
    ids = {}
    for _, id in ipairs(registry.ids()) do
      if registry.get(id).when_to_use then ids[#ids + 1] = id end
    end
  end
  local self = setmetatable({ out = opts.out or io.stdout, provider = opts.provider, integrations = opts.integrations,
    name = opts.name or "tide", agents = {}, tools = json.array(), inflight = {}, cancelled = {},
    conversations = {}, nconversations = 0, max_conversations = cap, started = 0, tick = 0 }, Server)
  for _, id in ipairs(ids) do
    local def = registry.get(id)
    if not def then error(("bad argument #1 to 'serve' (no agent '%s')"):format(tostring(id)), 2) end
    local name = require("tide.subagent").legal_name(id, self.agents)
    self.agents[name] = id
    local t = tool_of(name, def)
    self.tools[#self.tools + 1] = t
  end
  local read_line = opts.read_line or core.read_line
  while true do
    local line = read_line()
    if line == nil then break end
    self:handle(line)
  end
  -- the client is gone: nobody waits for what still runs, nor for its
  -- conversations
  for id, t in pairs(self.inflight) do
    self.cancelled[id] = true
    t:cancel()
  end
  for _, c in pairs(self.conversations) do c.session:close() end
end

local USAGE = "usage: tide mcp-server [--agents DIR] [--prompts DIR] [--provider openai|anthropic|bedrock|demo]\n"
  .. "                        [--agent ID]...\n"

--- `tide mcp-server`: the agents of `--agents DIR` (the demo's without
--- one), each `--agent ID` or every one with a `when_to_use`, served on
--- stdio to an MCP client that runs this command. Returns an exit code.
---@param argv string[]
---@return integer
function M.main(argv)
  local o, ids = {}, nil
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "-h" or a == "--help" then
      io.stdout:write(USAGE)
      return 0
    elseif a == "--agents" or a == "--prompts" or a == "--provider" or a == "--agent" then
      local v = argv[i + 1]
      if not v then
        io.stderr:write("tide mcp-server: ", a, " needs a value\n", USAGE)
        return 2
      end
      if a == "--agent" then
        ids = ids or {}
        ids[#ids + 1] = v
      else
        o[a:sub(3)] = v
      end
      i = i + 2
    else
      io.stderr:write("tide mcp-server: unknown argument ", a, "\n", USAGE)
      return 2
    end
  end
  local tide = require "tide"
  local status = 0
  local ok, err = pcall(tide.run, function()
    if o.prompts then tide.prompts.add_dir(o.prompts) end
    if o.agents then
      local loaded, errs = tide.agents.load(o.agents)
      if not loaded then error(("--agents %s: %s"):format(o.agents, errs.message or tostring(errs)), 0) end
      for _, e in ipairs(errs) do io.stderr:write("tide mcp-server: ", tostring(e.message or e), "\n") end
    else
      require("tide.testing.demo").agents()
    end
    -- (what the provider has to say goes to stderr: stdout is the protocol's)
    local provider, label, srv = require("tide.chat").provider(o.provider, io.stderr)
    io.stderr:write(("tide mcp-server: serving on stdio with %s\n"):format(label))
    local served, serr = pcall(M.serve, { agents = ids, provider = provider })
    if srv then srv:close() end
    if not served then error(serr, 0) end
  end)
  if not ok then
    io.stderr:write("tide mcp-server: ", tostring(type(err) == "table" and err.message or err), "\n")
    status = 1
  end
  return status
end

return M
