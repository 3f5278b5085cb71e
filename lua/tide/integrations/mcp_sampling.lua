--- MCP sampling: a server's `sampling/createMessage` answered by a model.
---
--- A server that wants a completion (to summarise what a tool fetched, to
--- decide within a tool) asks its client for one instead of holding model
--- keys of its own. A source made with `sampling = { provider, approve,
--- max_tokens }` declares the `sampling` capability at initialize and
--- answers each request with one call of `provider`: the request's
--- `systemPrompt` as the system prompt, its messages (text and images) as
--- the conversation, its `maxTokens` as the most the model may write (never
--- more than the provider's own `max_tokens`, nor than `max_tokens` here).
--- `approve(request)` is the person in the loop the protocol asks for: it
--- sees the request's params and says yes (true) or no (false, and why);
--- a no is the protocol's "User rejected sampling request" (-1). Without
--- `approve` every request is served: configuring sampling is the consent.
---
--- What is not served, answered as the protocol says (-32602, Invalid
--- params): tools in the request (tide does not declare `sampling.tools`),
--- audio, tool use and tool result content. `temperature`,
--- `stopSequences`, `includeContext` and `modelPreferences` are requests a
--- client may ignore: the provider's own settings apply. The answer is the
--- model's text, its model, and its stop reason (`endTurn`, `maxTokens`,
--- `toolUse` or the provider's own word).
---
--- Each request is served in a task of its own: the connection goes on
--- reading (the server may ask again, or answer other calls) while the
--- model writes. Its cost is the source's (`src.sampling`: requests,
--- tokens), not any session's: the server asked, not a turn.
local core = require "tide.core"

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
  end
  -- audio, tool_use, tool_result: not what tide serves
  return nil, ("%s: %s content is not served (tide samples text and images)"):format(where, tostring(block.type))
end

-- The request's messages as neutral ones, or nil and what is wrong.
local function messages_of(params)
  local list = params.messages
  if type(list) ~= "table" or #list == 0 then return nil, "'messages' must be a non-empty array" end
  local out = {}
  for i, m in ipairs(list) do
    local where = ("messages[%d]"):format(i - 1)
    if type(m) ~= "table" or (m.role ~= "user" and m.role ~= "assistant") then
      return nil, where .. ".role must be \"user\" or \"assistant\""
    end
    local blocks = m.content
    if type(blocks) == "table" and blocks.type ~= nil then blocks = { blocks } end -- one block, or several
    if type(blocks) ~= "table" or #blocks == 0 then return nil, where .. ".content must be a content block" end
    local parts, text_only = {}, true
    for j, b in ipairs(blocks) do
      local p, why = part_of(b, ("%s.content[%d]"):format(where, j - 1))
      if not p then return nil, why end
      parts[j] = p
      text_only = text_only and p.type == "text"
    end
    if m.role == "assistant" and not text_only then return nil, where .. ": an assistant message holds text only" end
    local content = parts
    if text_only then
      local texts = {}
      for j, p in ipairs(parts) do texts[j] = p.text end
      content = table.concat(texts, "\n\n")
    end
    out[i] = { role = m.role, content = content }
  end
  return out
end

-- The protocol's stop reasons for tide's.
local STOPS = { stop = "endTurn", length = "maxTokens", tool_calls = "toolUse" }

-- The provider as it serves one request: its own, or (a request that
-- allows fewer tokens than it would write) a view of it that writes at
-- most `n`.
local function bounded(p, n)
  if p.max_tokens ~= nil and p.max_tokens <= n then return p end
  return setmetatable({ max_tokens = n }, { __index = p })
end

-- Serves one request; returns the answer to send.
local function serve(src, cfg, msg)
  local id, params = msg.id, msg.params
  if type(params) ~= "table" then return rpc_error(id, -32602, "Invalid params: no params") end
  if params.tools ~= nil or params.toolChoice ~= nil then
    -- (tide declares sampling without tools: the spec has the client refuse them)
    return rpc_error(id, -32602, "Invalid params: tools in a sampling request (tide declares no sampling.tools)")
  end
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
  local p = bounded(cfg.provider, n)
  local encoded = {}
  for i, m in ipairs(messages) do encoded[i] = p:encode_message(m) end
  src.sampling.requests = src.sampling.requests + 1
  local resp, err = p:_complete(p:encode_prefix(params.systemPrompt, {}), {}, encoded)
  if not resp then
    src.sampling.failed = src.sampling.failed + 1
    return rpc_error(id, -32603, "sampling failed: " .. tostring(err and err.message or err))
  end
  local u = resp.usage or {}
  src.sampling.input_tokens = src.sampling.input_tokens + (u.input or 0)
  src.sampling.output_tokens = src.sampling.output_tokens + (u.output or 0)
  return { jsonrpc = "2.0", id = id, result = { role = "assistant",
    content = { type = "text", text = resp.text or "" },
    model = resp.model or p.model or "unknown", stopReason = STOPS[resp.stop] or resp.stop_raw or resp.stop } }
end

--- Answers a server's `sampling/createMessage` request `msg` through
--- `reply(answer)`, from a task of its own.
---@param src table the MCP source (its `sampling` config and counters)
---@param msg table the JSON-RPC request
---@param reply fun(answer:table)
function M.handle(src, msg, reply)
  core.spawn(function()
    local ok, answer = pcall(serve, src, src.sampling_config, msg)
    if not ok then answer = rpc_error(msg.id, -32603, "sampling failed: " .. tostring(answer)) end
    -- (a server gone meanwhile has nobody to answer)
    pcall(reply, answer)
  end)
end

return M
