--- tide.provider.bedrock: Amazon Bedrock's Converse API, the one request
--- shape for every model Bedrock serves (Amazon Nova, Meta Llama, Mistral,
--- DeepSeek, Qwen, OpenAI's open-weight models, Claude too): `POST
--- /model/{modelId}/converse`, and `/converse-stream` for an AWS event
--- stream of Converse events. (Claude's own Messages API on Bedrock is
--- tide.provider.anthropic{ bedrock = ... }.)
---
--- Access as for Claude on Bedrock (tide.provider.aws): a Bedrock API key
--- (`api_key` or AWS_BEARER_TOKEN_BEDROCK) as a bearer token, else IAM
--- credentials signing each request with Signature Version 4
--- (`credentials`, the environment's keys, or the AWS SDKs' default chain
--- for `profile`), in `region`.
---
--- Body layout, as the other wire formats': every field but `messages` in
--- sorted key order, each value canonical, then `"messages":[` so that what
--- precedes them is a reusable prefix. The system prompt is `system`'s one
--- text block; tools are `toolConfig.tools[].toolSpec` (the schema as
--- `inputSchema.json`); `max_tokens`, `temperature` and `stop` go in
--- `inferenceConfig`; the model's own fields go in
--- `additionalModelRequestFields`: `thinking` for Claude (Anthropic's
--- object), `reasoning.effort` for Amazon Nova 2 (`reasoningConfig`) and
--- OpenAI's open-weight models (`reasoning_effort`), and `extra_body`'s
--- fields, which win (Nova's `inferenceConfig.topK` ...). `prompt_cache`
--- puts a `cachePoint` after the system prompt and after the tools.
---
--- Messages: a user's text and parts (images and documents as bytes, in
--- base64), an assistant's reasoning (this API's reasoningContent, sent back
--- as it came: Claude's and DeepSeek's want it), text and toolUse blocks, a
--- tool message as the user's toolResult blocks. Converse refuses a blank
--- text block: an assistant message with nothing to say is sent as
--- "(no answer)", a tool's empty text as "(no output)".
---
--- Replies are parsed in Lua: a whole one from its JSON, a streamed one
--- from the event stream's frames (core.aws_eventstream reads the framing,
--- in C, as for Claude on Bedrock) by a sink with the C parsers' interface.
local provider = require "tide.provider.base"
local core = require "tide.core"
local json = require "tide.json"
local content = require "tide.content"
local aws = require "tide.provider.aws"
local reply = require "tide.provider.reply"

local M = {}

--- The `provider` tag of the reasoning parts this wire format makes and
--- sends back.
M.REASONING = "bedrock"

local Provider = provider.class("tide.provider.bedrock")

local canonical, quote, concat = json.canonical, json.quote, table.concat
local fail = require("tide.provider.errors").fail

function Provider:__tostring()
  return ("tide.provider.bedrock(%s, %s)"):format(self.model, self.base_url)
end

local OWN = { region = true, credentials = true, profile = true, mfa_code = true }

-- The geographies of cross-region inference profiles (us.amazon.nova-...).
local GEOGRAPHIES = { us = true, eu = true, apac = true, global = true, ["us-gov"] = true, jp = true, au = true,
  ca = true }

-- The model's maker, from its id: "anthropic" for anthropic.claude-... and
-- us.anthropic.claude-... (a cross-region inference profile's geography
-- first), and for a foundation model's ARN; nil for an ARN that names no
-- model (an application inference profile, a provisioned model).
local function family(model)
  if model:find("^arn:") then
    local id = model:match(":foundation%-model/(.+)$") or model:match(":inference%-profile/(.+)$")
    if not id then return nil end
    model = id
  end
  local first, second = model:match("^([%w%-]+)%.([%w%-]+)%.")
  if first and GEOGRAPHIES[first] then return second end
  return model:match("^([%w%-]+)%.")
end
M._family = family

-- The reasoning options as the model's own request fields (a table for
-- additionalModelRequestFields), or nil plus a misuse message: Claude takes
-- Anthropic's `thinking` object, Nova 2 a `reasoningConfig`, OpenAI's
-- open-weight models a `reasoning_effort`; other models have no such
-- field (extra_body still sends any field).
local function reasoning_fields(self, opts, where)
  local t, r = opts.thinking, opts.reasoning
  if t == nil and r == nil then return nil end
  local maker = family(self.model)
  local fields = {}
  if t ~= nil then
    if maker ~= "anthropic" and maker ~= nil then
      return nil, where .. "'thinking' is Claude's; " .. self.model .. " is not a Claude model"
        .. " (reasoning = { effort } for Nova 2 and gpt-oss, extra_body for a model's own fields)"
    end
    if t.budget_tokens and t.budget_tokens < 1024 then -- (Claude's least)
      return nil, ("%s'thinking.budget_tokens' (%d) must be at least 1024"):format(where, t.budget_tokens)
    end
    if t.budget_tokens and self.max_tokens and t.budget_tokens >= self.max_tokens then
      return nil, ("%s'thinking.budget_tokens' (%d) must be less than max_tokens (%d)"):format(where,
        t.budget_tokens, self.max_tokens)
    end
    -- Claude refuses other temperatures, and a forced tool, with thinking on
    if self.temperature ~= nil and self.temperature ~= 1 then
      return nil, ("%s'temperature' (%s) cannot be set with 'thinking' (Claude takes only 1)"):format(where,
        tostring(self.temperature))
    end
    if opts.tool_choice ~= nil and opts.tool_choice ~= "auto" then
      return nil, where .. "'tool_choice' can only be \"auto\" with 'thinking' (Claude refuses a forced tool)"
    end
    fields.thinking = { type = t.type or "enabled", budget_tokens = t.budget_tokens, display = t.display }
  end
  if r ~= nil then
    local effort = r.effort
    if maker == "amazon" and self.model:find("nova%-2") then
      fields.reasoningConfig = { type = "enabled", maxReasoningEffort = effort }
    elseif maker == "openai" then
      fields.reasoning_effort = effort
    else
      return nil, where .. "'reasoning' is for Amazon Nova 2 and OpenAI's open-weight models"
        .. (maker == "anthropic" and " (Claude's is 'thinking')" or "") .. "; " .. self.model
        .. " has no effort Converse can set (extra_body sends a model's own fields)"
    end
  end
  return fields
end

--- Creates the provider object, or returns nil plus a misuse message.
---@param opts? tide.provider.opts
function M.new(opts)
  local where = "tide.provider.bedrock: "
  if opts ~= nil and type(opts) ~= "table" then
    return nil, ("%soptions must be a table, got %s"):format(where, type(opts))
  end
  opts = opts or {}
  local b, berr = aws.bedrock_options({ region = opts.region, credentials = opts.credentials, profile = opts.profile,
    mfa_code = opts.mfa_code }, opts, where, "", OWN)
  if not b then return nil, berr end
  local self, msg = provider._new("bedrock", opts, {
    -- (AWS's own variable for the service's endpoint)
    base_url = provider._env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME")
      or ("https://bedrock-runtime.%s.amazonaws.com"):format(b.region),
    api_key = b.key,
    model = provider._env("TIDE_MODEL"),
  })
  if not self then return nil, msg end
  if not self.model then
    return nil, where .. "'model' is required: a Bedrock model id, inference profile or ARN (us.amazon.nova-pro-v1:0, "
      .. "us.meta.llama3-3-70b-instruct-v1:0, ...)"
  end
  local stop = opts.stop
  if type(stop) == "string" then stop = { stop } end
  if stop ~= nil then
    local ok = type(stop) == "table" and #stop > 0
    for _, v in ipairs(ok and stop or {}) do ok = ok and type(v) == "string" and v ~= "" end
    if not ok then return nil, where .. "'stop' must be a string or a list of strings" end
  end
  self.stop_sequences = stop
  -- Converse's tool choice: auto, any (required) or one tool by name
  local choice = opts.tool_choice
  if choice ~= nil then
    if choice == "auto" or choice == "required" then
      self.tool_choice = choice == "auto" and '{"auto":{}}' or '{"any":{}}'
    elseif type(choice) == "table" and type(choice.name) == "string" and choice.name ~= "" and next(choice, next(choice)) == nil then
      self.tool_choice = '{"tool":{"name":' .. quote(choice.name) .. "}}"
    else
      return nil, where .. "'tool_choice' must be \"auto\", \"required\" or { name = tool }"
    end
  end
  -- A turn's schema: asked of the model in its message and checked (the
  -- default: every model), or held by Converse's structured output
  -- (outputConfig.textFormat) for the models that have it.
  local so = opts.structured_output
  if so ~= nil and so ~= "native" and so ~= "prompt" then
    return nil, where .. "'structured_output' must be \"native\" or \"prompt\""
  end
  if so == "native" then self._native_schema = true end
  local model_fields, rmsg = reasoning_fields(self, opts, where)
  if rmsg then return nil, rmsg end
  self.model_fields = model_fields
  self.bedrock = { region = b.region, service = "bedrock" }
  aws.bedrock_credentials(self, b)
  return setmetatable(self, Provider)
end

-- ---------------------------------------------------------------- encoding

-- A cache point, for the prompt cache's time to live.
local CACHE_POINT = { ["5m"] = '{"cachePoint":{"type":"default"}}',
  ["1h"] = '{"cachePoint":{"ttl":"1h","type":"default"}}' }

--- The request body up to and including the `[` that opens the messages;
--- with `schema` (a turn's, with structured_output = "native"),
--- outputConfig.textFormat holds the model to it.
---@param system string|nil the frozen system prompt
---@param tools? {name:string, description?:string, parameters?:table}[]
---@param schema? table a JSON schema
---@return string
function Provider:encode_prefix(system, tools, schema)
  if system ~= nil and type(system) ~= "string" then
    error(("tide.provider.bedrock: 'system' must be a string, got %s"):format(type(system)), 2)
  end
  local list = provider._tools("bedrock", tools, 2)
  local cache = self.prompt_cache and CACHE_POINT[self.prompt_cache]
  local fields = {}
  if self.extra_json or self.model_fields then
    local own = {}
    for k, v in pairs(self.model_fields or {}) do own[k] = canonical(v) end
    for k, v in pairs(self.extra_json or {}) do own[k] = v end -- (extra_body's win)
    local keys = {}
    for k in pairs(own) do keys[#keys + 1] = k end
    table.sort(keys)
    for i, k in ipairs(keys) do keys[i] = quote(k) .. ":" .. own[k] end
    fields.additionalModelRequestFields = "{" .. concat(keys, ",") .. "}"
  end
  local config = { maxTokens = self.max_tokens, temperature = self.temperature,
    stopSequences = self.stop_sequences and json.array(self.stop_sequences) }
  if next(config) then fields.inferenceConfig = canonical(config) end
  if system ~= nil and system ~= "" then
    fields.system = "[" .. '{"text":' .. quote(system) .. "}" .. (cache and ("," .. cache) or "") .. "]"
  end
  if #list > 0 then
    local encoded = {}
    for i, t in ipairs(list) do
      -- (a description, when there is one, of at least a character: Converse's rule)
      encoded[i] = canonical({ toolSpec = { name = t.name, description = t.description ~= "" and t.description or nil,
        inputSchema = { json = t.parameters or { type = "object", properties = {} } } } })
    end
    if cache then encoded[#encoded + 1] = cache end
    fields.toolConfig = (self.tool_choice and ('{"toolChoice":' .. self.tool_choice .. ",") or "{")
      .. '"tools":[' .. concat(encoded, ",") .. "]}"
  end
  if schema ~= nil then -- (the schema itself as a string, as Converse takes it)
    fields.outputConfig = canonical({ textFormat = { type = "json_schema",
      structure = { jsonSchema = { name = "output", schema = canonical(schema) } } } })
  end
  local keys = {}
  for k in pairs(fields) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = quote(k) .. ":" .. fields[k] end
  return "{" .. concat(parts, ",") .. (#parts > 0 and "," or "") .. '"messages":['
end

-- The formats Converse names images and documents by.
local IMAGE_FORMAT = { ["image/png"] = "png", ["image/jpeg"] = "jpeg", ["image/gif"] = "gif", ["image/webp"] = "webp" }
local DOCUMENT_FORMAT = { ["application/pdf"] = "pdf", ["text/plain"] = "txt", ["text/markdown"] = "md",
  ["text/csv"] = "csv", ["text/html"] = "html" }

-- A document's name as Converse takes one: letters, digits, spaces (never
-- two in a row), hyphens, parentheses and square brackets.
local function document_name(name)
  local n = tostring(name or "document"):gsub("%.[%w]+$", ""):gsub("[^%w%s%-%(%)%[%]]", "-"):gsub("%s+", " ")
  return n ~= "" and n or "document"
end

--- Converse's shape of neutral parts (images and documents as base64
--- bytes; blank text left out, and one block at least). An image given as
--- a link cannot be sent (Converse reads only bytes or S3): it raises, or
--- with `links_as_text` (a tool's result) goes as its link in words.
---@param parts table[]
---@param links_as_text? boolean
---@return table[]
function M.parts(parts, links_as_text)
  local out = {}
  for _, p in ipairs(parts) do
    if p.type == "text" then
      -- (Converse refuses a blank text block: one says nothing anyway)
      if type(p.text) == "string" and p.text:find("%S") then out[#out + 1] = { text = p.text } end
    elseif p.type == "image" and p.url then
      if not links_as_text then
        error("tide.provider.bedrock: Converse takes images as bytes (a path, data or a data: URL), not a link", 2)
      end
      -- (a tool's result, an MCP server's say: the link as words, not a failed turn)
      out[#out + 1] = { text = "[image: " .. p.url .. "]" }
    elseif p.type == "image" then
      out[#out + 1] = { image = { format = IMAGE_FORMAT[p.mime] or "png", source = { bytes = p.data } } }
    elseif p.type == "file" and (DOCUMENT_FORMAT[p.mime] or p.text) then
      -- (any other text, JSON say, is a plain text document)
      out[#out + 1] = { document = { format = DOCUMENT_FORMAT[p.mime] or "txt", name = document_name(p.name),
        source = { bytes = p.data or core.base64(p.text or "") } } }
    else
      error(("tide.provider.bedrock: Converse takes PDF, text, Markdown, CSV and HTML documents, not '%s'"):format(
        tostring(p.mime or p.type)), 2)
    end
  end
  if #out == 0 then out[1] = { text = "(empty)" } end
  return out
end

-- A text block; Converse refuses a blank one.
local function text_block(text, blank)
  if text == nil or not text:find("%S") then text = blank end
  return '{"text":' .. quote(text) .. "}"
end

-- A call's input as a JSON object: its raw arguments when they are one (as
-- the model wrote them: decoded and encoded again, an empty array in them
-- would go back an object), `{}` otherwise (the session records such a
-- call as an error).
local function input_json(args)
  if type(args) == "table" then return canonical(args) end
  if type(args) ~= "string" then return "{}" end
  local trimmed = args:match("^%s*(.-)%s*$")
  local ok, v = pcall(json.decode, trimmed)
  if not ok or type(v) ~= "table" or trimmed:sub(1, 1) ~= "{" then return "{}" end
  return trimmed
end

-- The reasoning blocks of an assistant message: this API's parts only, as
-- received.
local function reasoning_blocks(reasoning, out)
  for _, r in ipairs(reasoning or {}) do
    if type(r) == "table" and r.provider == M.REASONING then
      if r.type == "redacted" and type(r.data) == "string" then
        out[#out + 1] = '{"reasoningContent":{"redactedContent":' .. quote(r.data) .. "}}"
      elseif r.type == "text" and type(r.text) == "string" then
        out[#out + 1] = '{"reasoningContent":{"reasoningText":{'
          .. (type(r.signature) == "string" and ('"signature":' .. quote(r.signature) .. ",") or "")
          .. '"text":' .. quote(r.text) .. "}}}"
      end
    end
  end
end

-- A user message's content: text, or neutral parts.
local function user_content(c)
  if type(c) == "table" and content.is_neutral(c) then return canonical(M.parts(c)) end
  if type(c) == "table" and next(c) ~= nil then return canonical(c) end
  return "[" .. text_block(type(c) == "string" and c or nil, "(empty)") .. "]"
end

--- One neutral message as Converse's JSON; with the message before it
--- (`prev`), a turn between them when both are the same role's.
---@param msg table a neutral message (see docs/internals.md)
---@param prev? table the message before it
---@return string
function Provider:encode_message(msg, prev)
  provider._check_message("bedrock", msg, 2)
  return self:_encode(msg, 3, prev)
end

-- Converse wants the roles to alternate, from the user's first ("A
-- conversation must alternate between user and assistant roles"), where
-- the other APIs take two turns of one role in a row (a turn whose
-- request failed, then the next user message): a turn of the other role,
-- saying so, goes between them.
local BETWEEN = { user = '{"content":[{"text":"(no answer)"}],"role":"assistant"},',
  assistant = '{"content":[{"text":"(continue)"}],"role":"user"},' }

local function converse_role(role) return role == "assistant" and "assistant" or "user" end

-- encode_message without the shape checks, for messages the session built
-- itself.
function Provider:_encode(msg, _, prev)
  local role = converse_role(msg.role)
  local between = ""
  if prev and converse_role(prev.role) == role then between = BETWEEN[role] end
  return between .. self:_encode_one(msg)
end

function Provider:_encode_one(msg)
  local role = msg.role
  if role == "tool" then
    local blocks = {}
    for i, r in ipairs(msg.results) do
      local c = r.content
      local body
      if type(c) == "table" and content.is_neutral(c) then
        body = canonical(M.parts(content.text_files_inline(c), true))
      else
        body = "[" .. text_block(provider._result_text(c), "(no output)") .. "]"
      end
      blocks[i] = '{"toolResult":{"content":' .. body .. (r.is_error and ',"status":"error"' or "")
        .. ',"toolUseId":' .. quote(r.id) .. "}}"
    end
    -- (a message's content is one block at least)
    if #blocks == 0 then blocks[1] = text_block(nil, "(no output)") end
    return '{"content":[' .. concat(blocks, ",") .. '],"role":"user"}'
  end
  if role == "assistant" then
    local blocks = {}
    reasoning_blocks(msg.reasoning, blocks)
    local text = msg.content
    if type(text) == "string" and text:find("%S") then blocks[#blocks + 1] = text_block(text) end
    -- (a custom tool is a function here)
    for _, c in ipairs(provider._function_calls(msg.tool_calls or {})) do
      blocks[#blocks + 1] = '{"toolUse":{"input":' .. input_json(c.arguments) .. ',"name":' .. quote(c.name)
        .. ',"toolUseId":' .. quote(c.id) .. "}}"
    end
    if #blocks == 0 then blocks[1] = text_block(nil, "(no answer)") end
    return '{"content":[' .. concat(blocks, ",") .. '],"role":"assistant"}'
  end
  -- (a system message in the history speaks as the user: Converse has no other role)
  return '{"content":' .. user_content(msg.content) .. ',"role":"user"}'
end

-- ------------------------------------------------------------------- wire

function Provider:_url()
  return ("%s/model/%s/%s"):format(self.base_url, aws.model_path(self.model),
    self.stream and "converse-stream" or "converse")
end

function Provider:_headers()
  local h = { ["content-type"] = "application/json", ["accept"] = "application/json" }
  local token = self.bearer or self.api_key
  if token then h["authorization"] = "Bearer " .. token end
  for k, v in pairs(self.headers) do h[k] = v end
  return h
end

-- Converse's stop reasons, in tide's words.
local STOPS = { end_turn = "stop", stop_sequence = "stop", tool_use = "tool_calls", max_tokens = "length",
  model_context_window_exceeded = "length", guardrail_intervened = "content_filter",
  content_filtered = "content_filter" }

-- Usage in tide's terms: the whole prompt as `input` (Converse counts cache
-- reads and writes apart from inputTokens, as Anthropic does).
-- `hour`: the cache points tide sent last an hour (prompt_cache = "1h"),
-- so every write is billed at the hour's price.
local function usage_of(u, hour)
  local count = reply.count
  u = type(u) == "table" and u or {}
  local read, write = count(u.cacheReadInputTokens), count(u.cacheWriteInputTokens)
  return { input = count(u.inputTokens) + read + write, output = count(u.outputTokens), cached = read,
    cache_write = write, cache_write_1h = hour and write or nil, reasoning = 0 }
end

-- The reply a stop reason ends: the error for the ones that end no answer.
local function stop_error(raw, text)
  if raw == "malformed_model_output" or raw == "malformed_tool_use" then
    return fail("ProviderError", ("bedrock: the model's %s was malformed (stopReason %s)"):format(
      raw == "malformed_tool_use" and "tool use" or "output", raw), { stop_raw = raw, partial_text = text })
  end
end

-- The neutral reply of Converse's content blocks (a whole reply's, or a
-- stream's assembled the same way).
local function finish_reply(blocks, raw, usage)
  local text, calls, reasoning = {}, {}, nil
  for _, b in ipairs(blocks) do
    if type(b.text) == "string" then
      text[#text + 1] = b.text
    elseif type(b.toolUse) == "table" then
      local t = b.toolUse
      local input = t.input
      calls[#calls + 1] = { id = t.toolUseId, name = t.name,
        arguments = type(input) == "string" and input or canonical(type(input) == "table" and input or {}) }
    elseif type(b.reasoningContent) == "table" then
      local r = b.reasoningContent
      reasoning = reasoning or {}
      if type(r.redactedContent) == "string" then
        reasoning[#reasoning + 1] = { type = "redacted", data = r.redactedContent, provider = M.REASONING }
      elseif type(r.reasoningText) == "table" then
        reasoning[#reasoning + 1] = { type = "text", text = tostring(r.reasoningText.text or ""),
          signature = type(r.reasoningText.signature) == "string" and r.reasoningText.signature or nil,
          provider = M.REASONING }
      end
    end
  end
  local s = concat(text)
  local err = stop_error(raw, s)
  if err then return nil, err end
  calls = reply.finish_calls(calls)
  return { text = s, tool_calls = calls, reasoning = reasoning, usage = usage,
    stop = STOPS[raw] or reply.stop(raw, #calls > 0), stop_raw = type(raw) == "string" and raw or nil }
end

--- A whole (non-streamed) Converse response, decoded (`text`: its body):
--- the reply, or nil and the error. A call's input goes on as the body
--- wrote it (core.json_raw_values): decoded and encoded again, an empty
--- array in it would come back an object.
---@param obj table
---@param text string
---@return tide.provider.response|nil
---@return table|nil err
function Provider:_parse(obj, text)
  local msg = type(obj.output) == "table" and obj.output.message
  if type(msg) ~= "table" or type(msg.content) ~= "table" then
    return nil, fail("MalformedResponse", "bedrock response has no output.message.content")
  end
  local uses = type(text) == "string" and core.json_raw_values(text, "toolUse") or {}
  local k = 0
  for _, b in ipairs(msg.content) do
    if type(b) == "table" and type(b.toolUse) == "table" then
      k = k + 1
      local raw = uses[k] and core.json_raw_values(uses[k], "input")
      if raw and raw[1] and raw[1]:match("^%s*{") then b.toolUse.input = raw[1] end
    end
  end
  return finish_reply(msg.content, obj.stopReason, usage_of(obj.usage, self.prompt_cache == "1h"))
end

-- ---------------------------------------------------------------- streams

-- Bedrock's stream exceptions, as the errors tide retries (or not).
local EXCEPTIONS = {
  throttlingException = { "RateLimited", 429, true },
  serviceUnavailableException = { "ProviderError", 503, true },
  internalServerException = { "ProviderError", 500, true },
  modelStreamErrorException = { "ProviderError", 424, false },
  validationException = { "ProviderError", 400, false },
}

local function exception_error(e)
  local ok, obj = pcall(json.decode, e.data)
  local message = ok and type(obj) == "table" and (obj.message or obj.Message) or nil
  local kind = EXCEPTIONS[e.type] or { "ProviderError", 500, false }
  return fail(kind[1], ("bedrock stream failed: %s%s"):format(e.type,
    type(message) == "string" and (": " .. message) or ""),
    { status = kind[2], retryable = kind[3] or nil, type = e.type, body = e.data })
end

-- A ConverseStream sink: the interface of the C reply parsers (feed,
-- finish, close; text and reasoning deltas handed over only when asked).
local Sink = {}
Sink.__index = Sink
function Sink:__close() self:close() end

function Sink:close()
  if self.decoder then self.decoder:close() end
end

-- The block at `index` (0-based, as Converse numbers them).
local function block(self, index)
  local i = math.tointeger(index)
  if not i or i < 0 then return nil end
  local b = self.blocks[i + 1]
  if not b then
    b = {}
    self.blocks[i + 1] = b
  end
  return b
end

-- One Converse event; a text delta returned when there is one.
local function apply(self, name, obj)
  if name == "contentBlockStart" then
    local b = block(self, obj.contentBlockIndex)
    local start = type(obj.start) == "table" and obj.start or {}
    if b and type(start.toolUse) == "table" then
      b.toolUse = { toolUseId = start.toolUse.toolUseId, name = start.toolUse.name, input = {} }
      local t = self.tout
      if t then -- (a listener of the calls' input: the call starts)
        local n = #t
        t[n + 1], t[n + 2] = obj.contentBlockIndex, type(b.toolUse.toolUseId) == "string" and b.toolUse.toolUseId or false
        t[n + 3], t[n + 4] = type(b.toolUse.name) == "string" and b.toolUse.name or false, ""
      end
    end
  elseif name == "contentBlockDelta" then
    local b = block(self, obj.contentBlockIndex)
    local d = type(obj.delta) == "table" and obj.delta or {}
    if not b then return end
    if type(d.text) == "string" then
      b.parts = b.parts or {}
      b.parts[#b.parts + 1] = d.text
      return d.text
    elseif type(d.toolUse) == "table" and type(d.toolUse.input) == "string" then
      b.toolUse = b.toolUse or { input = {} }
      b.toolUse.input[#b.toolUse.input + 1] = d.toolUse.input
      local t = self.tout
      if t then
        local n = #t
        t[n + 1], t[n + 2], t[n + 3], t[n + 4] = obj.contentBlockIndex, false, false, d.toolUse.input
      end
    elseif type(d.reasoningContent) == "table" then
      local r = d.reasoningContent
      b.reasoning = b.reasoning or { text = {} }
      if type(r.text) == "string" then
        b.reasoning.text[#b.reasoning.text + 1] = r.text
        return nil, r.text
      end
      if type(r.signature) == "string" then b.reasoning.signature = r.signature end
      if type(r.redactedContent) == "string" then b.reasoning.redacted = r.redactedContent end
    end
  elseif name == "messageStop" then
    self.stop_raw = type(obj.stopReason) == "string" and obj.stopReason or "end_turn"
  elseif name == "metadata" then
    self.usage = usage_of(obj.usage, self.hour)
  end
end

--- Feeds a chunk of the event stream: the text deltas put in `deltas`, the
--- reasoning deltas in `rdeltas` and the calls' input in `tout` (four
--- values a piece, as the C parsers give them: index, id or false, name or
--- false, the piece), each when given, and the count of text deltas; or
--- nil, the error that ends the stream and the count before it.
function Sink:feed(chunk, deltas, rdeltas, tout)
  self.tout = tout or nil
  local events, err = self.decoder:feed(chunk)
  if not events then return nil, err, 0 end
  local n = 0
  for _, e in ipairs(events) do
    if e.exception then return nil, exception_error(e), n end
    local ok, obj = pcall(json.decode, e.data)
    if not ok or type(obj) ~= "table" then
      return nil, fail("MalformedResponse", "bedrock stream event " .. e.type .. " is not a JSON object",
        { body = e.data }), n
    end
    local text, thought = apply(self, e.type, obj)
    if text and deltas then
      n = n + 1
      deltas[n] = text
    elseif thought and rdeltas then
      rdeltas[#rdeltas + 1] = thought
    end
  end
  return n
end

--- The reply once the stream has ended; or nil and the error (a stream
--- cut before its messageStop, or one that ends no answer).
function Sink:finish()
  if not self.stop_raw or self.decoder:pending() > 0 then
    local parts = {}
    for _, b in ipairs(self.blocks) do if b.parts then parts[#parts + 1] = concat(b.parts) end end
    return nil, fail("MalformedResponse", "bedrock stream ended before its messageStop",
      { partial_text = concat(parts) })
  end
  local blocks = {}
  for i, b in ipairs(self.blocks) do
    if b.toolUse then
      local input = concat(b.toolUse.input or {})
      blocks[i] = { toolUse = { toolUseId = b.toolUse.toolUseId, name = b.toolUse.name,
        input = input ~= "" and input or "{}" } }
    elseif b.reasoning then
      blocks[i] = { reasoningContent = b.reasoning.redacted and { redactedContent = b.reasoning.redacted }
        or { reasoningText = { text = concat(b.reasoning.text), signature = b.reasoning.signature } } }
    else
      blocks[i] = { text = concat(b.parts or {}) }
    end
  end
  return finish_reply(blocks, self.stop_raw, self.usage or usage_of(nil))
end

--- The parser of one streamed response: a Lua sink over core.aws_eventstream
--- (the exchange feeds it as it does the C sinks; no pump).
function Provider:_c_stream()
  return setmetatable({ decoder = core.aws_eventstream(self.max_body_bytes), blocks = {},
    hour = self.prompt_cache == "1h" }, Sink)
end

return M
