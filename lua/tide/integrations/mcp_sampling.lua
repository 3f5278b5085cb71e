--- MCP sampling: a server's `sampling/createMessage` answered by a model.
---
--- A server that wants a completion (to summarise what a tool fetched, to
--- decide within a tool) asks its client for one instead of holding model
--- keys of its own. A source made with `sampling = { provider, approve,
--- max_tokens }` declares the `sampling` capability (with `tools`) at
--- initialize and answers each request with one call of `provider`: the
--- request's `systemPrompt` as the system prompt, its messages (text and
--- images) as the conversation, its `maxTokens` as the most the model may
--- write (never more than the provider's own `max_tokens`, nor than
--- `max_tokens` here).
--- `approve(request)` is the person in the loop the protocol asks for: it
--- sees the request's params and says yes (true) or no (false, and why);
--- a no is the protocol's "User rejected sampling request" (-1). Without
--- `approve` every request is served: configuring sampling is the consent.
---
--- Tools (2025-11-25): a request's `tools` are offered to the model, with
--- `toolChoice` (`auto`, `required`, `none`) as each API says it; the
--- model's calls come back as `tool_use` blocks (stop reason `toolUse`),
--- and the server, which runs them, sends the history again with its
--- `tool_result` blocks. The specification's rules are checked: a message
--- of results holds results only, and every call is answered by the next
--- message.
---
--- What is not served, answered as the protocol says (-32602, Invalid
--- params): audio, images inside a tool result, `toolChoice` other than
--- `auto` where the provider has no such setting. Claude thinks within
--- `max_tokens` and refuses a forced tool while it thinks: a request whose
--- `maxTokens` leaves no room beside the thinking budget, or that requires
--- a tool, is served without thinking. `temperature`,
--- `stopSequences`, `includeContext` and `modelPreferences` are requests a
--- client may ignore: the provider's own settings apply. The answer is the
--- model's text (and calls), its model, and its stop reason (`endTurn`,
--- `maxTokens`, `toolUse` or the provider's own word).
---
--- Each request is served in a task of its own: the connection goes on
--- reading (the server may ask again, or answer other calls) while the
--- model writes. Its cost is the source's (`src.sampling`: requests,
--- tokens), not any session's: the server asked, not a turn.
local core = require "tide.core"
local json = require "tide.json"

local M = {}

local OPTIONS = { provider = true, approve = true, max_tokens = true }
local IMAGE_MIMES = { ["image/png"] = true, ["image/jpeg"] = true, ["image/gif"] = true, ["image/webp"] = true }

--- Checks a source's `sampling` option: the option normalised, or nil and
--- what is wrong with it.
---@param s any
---@return table|nil
---@return string|nil
function M.check(s)
  if type(s) ~= "table" then return nil, "field 'sampling' must be a table { provider, approve, max_tokens }" end
  for k in pairs(s) do
    if not OPTIONS[k] then return nil, ("unknown option 'sampling.%s'"):format(tostring(k)) end
  end
  if not require("tide.provider").is(s.provider) then
    return nil, "field 'sampling.provider' must be a provider (tide.provider.openai{...} or anthropic{...})"
  end
  if s.approve ~= nil and type(s.approve) ~= "function" then
    return nil, "field 'sampling.approve' must be a function"
  end
  if s.max_tokens ~= nil and (math.type(s.max_tokens) ~= "integer" or s.max_tokens <= 0) then
    return nil, "field 'sampling.max_tokens' must be a positive integer"
  end
  return { provider = s.provider, approve = s.approve, max_tokens = s.max_tokens }
end

-- A JSON-RPC error answer.
local function rpc_error(id, code, message)
  return { jsonrpc = "2.0", id = id, error = { code = code, message = message } }
end

-- One content block of a sampling message as a neutral part, or nil and
-- why it cannot be sent.
local function part_of(block, where)
  if type(block) ~= "table" then return nil, where .. " is not a content block" end
  if block.type == "text" then
    if type(block.text) ~= "string" then return nil, where .. ".text must be a string" end
    return { type = "text", text = block.text }
  elseif block.type == "image" then
    if not IMAGE_MIMES[block.mimeType] then
      return nil, ("%s: images are PNG, JPEG, GIF or WebP, not %s"):format(where, tostring(block.mimeType))
    end
    if type(block.data) ~= "string" or not core.base64_decode(block.data) then
      return nil, where .. ".data must be base64"
    end
    return { type = "image", mime = block.mimeType, data = block.data }
  elseif block.type == "tool_use" then
    if type(block.id) ~= "string" or block.id == "" or type(block.name) ~= "string" or type(block.input) ~= "table" then
      return nil, where .. ": a tool_use needs an id, a name and an input object"
    end
    return { type = "tool_use", id = block.id, name = block.name, arguments = json.canonical(block.input) }
  elseif block.type == "tool_result" then
    if type(block.toolUseId) ~= "string" or type(block.content) ~= "table" then
      return nil, where .. ": a tool_result needs a toolUseId and a content array"
    end
    local texts = {}
    for k, c in ipairs(block.content) do
      if type(c) ~= "table" or c.type ~= "text" or type(c.text) ~= "string" then
        return nil, ("%s.content[%d]: a tool result holds text only here"):format(where, k - 1)
      end
      texts[k] = c.text
    end
    if #texts == 0 and type(block.structuredContent) == "table" then texts[1] = json.canonical(block.structuredContent) end
    return { type = "tool_result", id = block.toolUseId, text = table.concat(texts, "\n"), is_error = block.isError == true }
  end
  -- audio: not what tide serves
  return nil, ("%s: %s content is not served (tide samples text, images and tools)"):format(where, tostring(block.type))
end

-- A message's parts as the neutral message: an assistant's text and tool
-- calls, a user's results (answers to `calls`, the calls still open, by
-- id), or a user's text and images; nil and what breaks the protocol.
local function message_of(role, parts, calls, where)
  local kinds = {}
  for _, p in ipairs(parts) do kinds[p.type] = true end
  if kinds.tool_result then
    if role ~= "user" or kinds.text or kinds.image or kinds.tool_use then
      return nil, where .. ": a message of tool results is a user's, and holds tool results only"
    end
    local results = {}
    for i, p in ipairs(parts) do
      local name = calls[p.id]
      if not name then return nil, ("%s: tool_result %q answers no tool_use of the message before"):format(where, p.id) end
      calls[p.id] = nil
      results[i] = { id = p.id, name = name, content = p.text, is_error = p.is_error }
    end
    if next(calls) then
      return nil, ("%s: tool_use %q has no tool_result"):format(where, (next(calls)))
    end
    return { role = "tool", results = results }
  end
  if next(calls) then return nil, ("%s: tool_use %q has no tool_result"):format(where, (next(calls))) end
  if kinds.tool_use then
    if role ~= "assistant" or kinds.image then
      return nil, where .. ": tool_use is an assistant's, beside text only"
    end
    local texts, list = {}, {}
    for _, p in ipairs(parts) do
      if p.type == "text" then
        texts[#texts + 1] = p.text
      else
        list[#list + 1] = { id = p.id, name = p.name, arguments = p.arguments }
        calls[p.id] = p.name
      end
    end
    return { role = "assistant", content = #texts > 0 and table.concat(texts, "\n\n") or nil, tool_calls = list }
  end
  if role == "assistant" and kinds.image then return nil, where .. ": an assistant message holds text only" end
  if not kinds.image then
    local texts = {}
    for j, p in ipairs(parts) do texts[j] = p.text end
    return { role = role, content = table.concat(texts, "\n\n") }
  end
  return { role = role, content = parts }
end

-- The request's messages as neutral ones, or nil and what is wrong.
local function messages_of(params)
  local list = params.messages
  if type(list) ~= "table" or #list == 0 then return nil, "'messages' must be a non-empty array" end
  local out, calls = {}, {}
  for i, m in ipairs(list) do
    local where = ("messages[%d]"):format(i - 1)
    if type(m) ~= "table" or (m.role ~= "user" and m.role ~= "assistant") then
      return nil, where .. ".role must be \"user\" or \"assistant\""
    end
    local blocks = m.content
    if type(blocks) == "table" and blocks.type ~= nil then blocks = { blocks } end -- one block, or several
    if type(blocks) ~= "table" or #blocks == 0 then return nil, where .. ".content must be a content block" end
    local parts = {}
    for j, b in ipairs(blocks) do
      local p, why = part_of(b, ("%s.content[%d]"):format(where, j - 1))
      if not p then return nil, why end
      parts[j] = p
    end
    local msg, why = message_of(m.role, parts, calls, where)
    if not msg then return nil, why end
    out[i] = msg
  end
  if next(calls) then
    -- (the model's calls end the conversation: nobody ran them)
    return nil, ("tool_use %q has no tool_result"):format((next(calls)))
  end
  return out
end

-- The request's tools as tide's tool specs, or nil and what is wrong.
local function tools_of(list)
  if list == nil then return {} end
  if type(list) ~= "table" then return nil, "'tools' must be an array" end
  local out = {}
  for i, t in ipairs(list) do
    if type(t) ~= "table" or type(t.name) ~= "string" or t.name == "" or type(t.inputSchema) ~= "table" then
      return nil, ("tools[%d] needs a name and an inputSchema"):format(i - 1)
    end
    out[i] = { name = t.name, description = type(t.description) == "string" and t.description or t.name,
      parameters = t.inputSchema }
  end
  return out
end

-- toolChoice's mode as each API takes it: the field of a view of the
-- provider that sends it, or nil and why it cannot be said.
local CHOICES = {
  openai = { auto = "auto", required = "required", none = "none" },
  anthropic = { auto = '{"type":"auto"}', required = '{"type":"any"}', none = '{"type":"none"}' },
  bedrock = { auto = '{"auto":{}}', required = '{"any":{}}' },
}
local function choice_of(p, choice)
  if choice == nil or choice == json.null then return {} end
  local mode = type(choice) == "table" and choice.mode or nil
  if mode == nil then mode = "auto" end
  if mode ~= "auto" and mode ~= "required" and mode ~= "none" then
    return nil, "'toolChoice.mode' must be \"auto\", \"required\" or \"none\""
  end
  if mode == "auto" then return {} end
  local word = CHOICES[p.kind] and CHOICES[p.kind][mode]
  if not word then return nil, ("toolChoice %q cannot be said to this provider (%s)"):format(mode, tostring(p.kind)) end
  if p.kind == "anthropic" then -- (its tool_choice goes as a body field)
    local extra = {}
    for k, v in pairs(p.extra_json or {}) do extra[k] = v end
    extra.tool_choice = word
    local fields = { extra_json = extra }
    -- (Claude refuses a forced tool while it thinks: it does not, here)
    if mode == "required" and p.thinking then fields.thinking = false end
    return fields
  end
  return { tool_choice = word }
end

-- The protocol's stop reasons for tide's.
local STOPS = { stop = "endTurn", length = "maxTokens", tool_calls = "toolUse" }

-- The provider as it serves one request: a view of it that writes at
-- most `n` tokens (its own max_tokens when that is fewer) and says the
-- request's tool choice (`fields`).
local function view(p, n, fields)
  if p.max_tokens == nil or p.max_tokens > n then fields.max_tokens = n end
  -- Claude's thinking comes out of max_tokens: a request that leaves no
  -- room beside its budget is served without thinking.
  local t = p.kind == "anthropic" and p.thinking
  if t and t.budget_tokens and t.budget_tokens >= (fields.max_tokens or p.max_tokens) then fields.thinking = false end
  if next(fields) == nil then return p end
  return setmetatable(fields, { __index = p })
end

-- Serves one request; returns the answer to send.
local function serve(src, cfg, msg)
  local id, params = msg.id, msg.params
  if type(params) ~= "table" then return rpc_error(id, -32602, "Invalid params: no params") end
  local tools, terr = tools_of(params.tools)
  if not tools then return rpc_error(id, -32602, "Invalid params: " .. terr) end
  local fields, cerr = choice_of(cfg.provider, params.toolChoice)
  if not fields then return rpc_error(id, -32602, "Invalid params: " .. cerr) end
  if math.type(params.maxTokens) == nil or params.maxTokens < 1 then
    return rpc_error(id, -32602, "Invalid params: 'maxTokens' must be a positive number")
  end
  if params.systemPrompt ~= nil and type(params.systemPrompt) ~= "string" then
    return rpc_error(id, -32602, "Invalid params: 'systemPrompt' must be a string")
  end
  local messages, why = messages_of(params)
  if not messages then return rpc_error(id, -32602, "Invalid params: " .. why) end
  if cfg.approve then
    local ok, yes, reason = pcall(cfg.approve, params)
    if not ok or not yes then
      src.sampling.rejected = src.sampling.rejected + 1
      return rpc_error(id, -1, "User rejected sampling request" .. (ok and type(reason) == "string"
        and (": " .. reason) or ""))
    end
  end
  local n = math.floor(params.maxTokens)
  if cfg.max_tokens and cfg.max_tokens < n then n = cfg.max_tokens end
  local p = view(cfg.provider, n, fields)
  local encoded = {}
  for i, m in ipairs(messages) do encoded[i] = p:encode_message(m) end
  src.sampling.requests = src.sampling.requests + 1
  local resp, err = p:_complete(p:encode_prefix(params.systemPrompt, tools), {}, encoded)
  if not resp then
    src.sampling.failed = src.sampling.failed + 1
    return rpc_error(id, -32603, "sampling failed: " .. tostring(err and err.message or err))
  end
  local u = resp.usage or {}
  src.sampling.input_tokens = src.sampling.input_tokens + (u.input or 0)
  src.sampling.output_tokens = src.sampling.output_tokens + (u.output or 0)
  local content = { type = "text", text = resp.text or "" }
  if resp.tool_calls and #resp.tool_calls > 0 then
    -- the model's calls, for the server to run: its text first, if any
    content = json.array()
    if (resp.text or "") ~= "" then content[1] = { type = "text", text = resp.text } end
    for _, c in ipairs(resp.tool_calls) do
      local input = json.decode(c.arguments ~= "" and c.arguments or "{}")
      if type(input) ~= "table" or (next(input) ~= nil and #input > 0) then
        src.sampling.failed = src.sampling.failed + 1
        return rpc_error(id, -32603, ("sampling failed: the model called %s with arguments that are not a JSON object")
          :format(tostring(c.name)))
      end
      content[#content + 1] = { type = "tool_use", id = c.id, name = c.name, input = input }
    end
  end
  return { jsonrpc = "2.0", id = id, result = { role = "assistant", content = content,
    model = resp.model or p.model or "unknown", stopReason = STOPS[resp.stop] or resp.stop_raw or resp.stop } }
end

--- Answers a server's `sampling/createMessage` request `msg` through
--- `reply(answer)`, from a task of its own, which it returns.
---@param src table the MCP source (its `sampling` config and counters)
---@param msg table the JSON-RPC request
---@param reply fun(answer:table)
---@return table task
function M.handle(src, msg, reply)
  return core.spawn(function()
    local ok, answer = pcall(serve, src, src.sampling_config, msg)
    if not ok then answer = rpc_error(msg.id, -32603, "sampling failed: " .. tostring(answer)) end
    -- (a server gone meanwhile has nobody to answer)
    pcall(reply, answer)
  end)
end

return M
