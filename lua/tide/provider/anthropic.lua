--- tide.provider.anthropic: the Anthropic Messages wire format.
---
--- Body layout: max_tokens, model, stream, system, temperature, thinking,
--- tools (with `extra_body`'s fields merged in, in the same sorted order),
--- then messages last so that everything before it is a reusable prefix.
--- Every value is encoded canonically; tool-use inputs are the model's own
--- argument text, spliced in verbatim once checked to be a JSON object (a
--- decode and re-encode would turn its empty arrays into objects).
---
--- Replies: usage is made to mean what OpenAI's means (`input` is the whole
--- prompt: Anthropic's `input_tokens` counts only the part after the last
--- cache breakpoint); thinking and redacted_thinking blocks become the
--- reply's `reasoning` parts, which the encoder sends back first in the
--- assistant message, verbatim, as the API requires with tool use.
local provider = require "tide.provider.base"
local core = require "tide.core"
local json = require "tide.json"
local parts = require "tide.content"

local M = {}

M.VERSION_HEADER = "2023-06-01"
M.DEFAULT_MAX_TOKENS = 4096

local Provider = setmetatable({}, { __index = provider.Base })
Provider.__index = Provider
Provider.__name = "tide.provider.anthropic"

local canonical = json.canonical
local quote = json.quote
local fail = provider._fail

function Provider:__tostring()
  return ("tide.provider.anthropic(%s, %s)"):format(self.model, self.base_url)
end

--- Creates the provider object, or returns nil plus a misuse message.
---@param opts? tide.provider.opts
function M.new(opts)
  local self, msg = provider._new("anthropic", opts, {
    base_url = provider._env("ANTHROPIC_BASE_URL") or "https://api.anthropic.com/v1",
    api_key = provider._env("ANTHROPIC_API_KEY"), api_key_env = "ANTHROPIC_API_KEY",
    model = provider._env("TIDE_MODEL") or "claude-sonnet-4-5",
    max_tokens = M.DEFAULT_MAX_TOKENS,
  })
  if not self then return nil, msg end
  opts = opts or {}
  if opts.thinking then
    -- The budget comes out of max_tokens: the API refuses a budget that
    -- leaves nothing for the answer.
    if opts.thinking.budget_tokens >= self.max_tokens then
      return nil, ("tide.provider.anthropic: 'thinking.budget_tokens' (%d) must be less than max_tokens (%d)")
        :format(opts.thinking.budget_tokens, self.max_tokens)
    end
    self.thinking = { type = "enabled", budget_tokens = opts.thinking.budget_tokens }
  end
  return setmetatable(self, Provider)
end

-- ---------------------------------------------------------------- encoding

local EPHEMERAL = { type = "ephemeral" }

--- The request body up to and including the `[` that opens the messages.
--- With `prompt_cache`, the system prompt and the last tool carry
--- `cache_control` breakpoints so that the prefix is cached server-side.
---@param system string|nil the frozen system prompt
---@param tools? {name:string, description?:string, parameters?:table}[]
---@return string
function Provider:encode_prefix(system, tools)
  if system ~= nil and type(system) ~= "string" then
    error(("tide.provider.anthropic: 'system' must be a string, got %s"):format(type(system)), 2)
  end
  local list = provider._tools("anthropic", tools, 2)
  -- Every field but messages, as encoded JSON by key; extra_body's fields
  -- take the place of tide's own. Sorted keys give the canonical bytes.
  local fields = {
    max_tokens = canonical(self.max_tokens),
    model = canonical(self.model),
    stream = self.stream and "true" or "false",
  }
  if system ~= nil and system ~= "" then
    if self.prompt_cache then
      fields.system = canonical({ { type = "text", text = system, cache_control = EPHEMERAL } })
    else
      fields.system = canonical(system)
    end
  end
  if self.temperature ~= nil then fields.temperature = canonical(self.temperature) end
  if self.thinking then fields.thinking = canonical(self.thinking) end
  if #list > 0 then
    local encoded = {}
    for i, t in ipairs(list) do
      local tool = { name = t.name, description = t.description, input_schema = t.parameters }
      if self.prompt_cache and i == #list then tool.cache_control = EPHEMERAL end
      encoded[i] = canonical(tool)
    end
    fields.tools = "[" .. table.concat(encoded, ",") .. "]"
  end
  for k, v in pairs(self.extra_json or {}) do fields[k] = v end
  local keys = {}
  for k in pairs(fields) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = quote(k) .. ":" .. fields[k] end
  -- messages go last, whatever their key's place: the prefix is reused.
  return "{" .. table.concat(parts, ",") .. ',"messages":['
end

-- Messages are encoded by hand, one fixed shape per kind of message, with
-- the keys in sorted order: the bytes are those json.canonical would give,
-- for a fraction of the cost (the session encodes every message once, on the
-- path of every turn). Only table values go through the canonical encoder.
local concat = table.concat
local decode_fast = json.decode_fast
local byte, find = string.byte, string.find
local tointeger = math.tointeger

-- The JSON of a tool call's input: the raw arguments when they are a JSON
-- object, `{}` otherwise (the session records such a call as an error; the
-- raw text is not sent back).
local function input_json(args)
  if type(args) == "table" then return canonical(args) end
  if type(args) ~= "string" then return "{}" end
  local trimmed = args
  if byte(args, 1) ~= 123 or byte(args, -1) ~= 125 then -- not already "{...}"
    trimmed = args:match("^%s*(.-)%s*$")
    if byte(trimmed, 1) ~= 123 then return "{}" end
  end
  -- Decoded only to check that it is an object: the text is what is sent.
  local v = decode_fast(trimmed)
  if type(v) ~= "table" then return "{}" end
  -- lua-cjson accepts a little more than JSON (NaN, Infinity, hex numbers,
  -- raw control characters in strings): text that might hold any of it (in
  -- any case) is re-encoded instead, which is always valid. json.decode
  -- gives the integers the canonical encoder should see.
  local lower = trimmed:lower()
  if find(trimmed, "%c") or find(lower, "nan", 1, true) or find(lower, "inf", 1, true)
      or find(lower, "0x", 1, true) then
    return canonical((json.decode(trimmed)))
  end
  return trimmed
end

local function tool_use(c)
  return '{"id":' .. quote(c.id) .. ',"input":' .. input_json(c.arguments)
    .. ',"name":' .. quote(c.name) .. ',"type":"tool_use"}'
end

-- The thinking blocks of an assistant message, as the content blocks that
-- open it: only parts this provider produced (another provider's reasoning
-- means nothing here, and its signatures would be refused), each exactly as
-- received. Returns the blocks joined, or nil when there are none.
local function thinking_blocks(reasoning)
  if reasoning == nil then return nil end
  local blocks, n = nil, 0
  for _, r in ipairs(reasoning) do
    if r.provider == "anthropic" then
      local b
      if r.type == "redacted" then
        b = '{"data":' .. quote(r.data) .. ',"type":"redacted_thinking"}'
      elseif r.type == "text" then
        b = '{"signature":' .. quote(r.signature) .. ',"thinking":' .. quote(r.text) .. ',"type":"thinking"}'
      end
      if b then
        n = n + 1
        blocks = blocks or {}
        blocks[n] = b
      end
    end
  end
  return blocks and concat(blocks, ",")
end

-- Checks the reasoning parts of a restored assistant message: the parts
-- this provider would send back must hold what the API verifies.
local function check_reasoning(reasoning, level)
  if reasoning == nil then return end
  if type(reasoning) ~= "table" then
    error(("tide.provider.anthropic: 'reasoning' must be a table, got %s"):format(type(reasoning)), level + 1)
  end
  for i, r in ipairs(reasoning) do
    if type(r) ~= "table" then
      error(("tide.provider.anthropic: reasoning[%d] must be a table"):format(i), level + 1)
    end
    if r.provider == "anthropic" then
      if r.type == "text" then
        if type(r.text) ~= "string" or type(r.signature) ~= "string" then
          error(("tide.provider.anthropic: reasoning[%d] (thinking) needs 'text' and 'signature' strings"):format(i),
            level + 1)
        end
      elseif r.type == "redacted" then
        if type(r.data) ~= "string" then
          error(("tide.provider.anthropic: reasoning[%d] (redacted thinking) needs a 'data' string"):format(i),
            level + 1)
        end
      else
        error(("tide.provider.anthropic: reasoning[%d] has unknown type %s"):format(i, tostring(r.type)), level + 1)
      end
    end
  end
end

--- One neutral message as a JSON array element. A `tool` message becomes one
--- user message of `tool_result` blocks; an assistant message with neither
--- text nor tool calls encodes as "" (nothing: `body` skips it). An
--- assistant message's Anthropic reasoning parts open its content, as
--- thinking / redacted_thinking blocks.
---@param msg table a neutral message (see docs/internals.md)
---@return string
function Provider:encode_message(msg)
  provider._check_message("anthropic", msg, 2)
  if msg.role == "assistant" then check_reasoning(msg.reasoning, 2) end
  return self:_encode(msg, 3)
end

-- encode_message without the shape checks, for messages the session built
-- itself. `level` is where a misuse error points.
function Provider:_encode(msg, level)
  level = level or 2
  local role = msg.role
  if role == "system" then
    error("tide.provider.anthropic: a system message cannot be sent as a message (give it to encode_prefix)", level)
  end
  if role == "tool" then
    if #msg.results == 0 then return "" end
    local blocks, result_text = {}, provider._result_text
    for i, r in ipairs(msg.results) do
      blocks[i] = '{"content":' .. quote(result_text(r.content))
        .. (r.is_error == true and ',"is_error":true,"tool_use_id":' or ',"is_error":false,"tool_use_id":')
        .. quote(r.id) .. ',"type":"tool_result"}'
    end
    return '{"content":[' .. concat(blocks, ",") .. '],"role":"user"}'
  end
  if role == "assistant" then
    local calls = msg.tool_calls
    local text = msg.content or ""
    local thinking = thinking_blocks(msg.reasoning)
    if not calls or #calls == 0 then
      if text == "" then return "" end
      if not thinking then return '{"content":' .. quote(text) .. ',"role":"assistant"}' end
      return '{"content":[' .. thinking .. ',{"text":' .. quote(text) .. ',"type":"text"}],"role":"assistant"}'
    end
    if text == "" and #calls == 1 and not thinking then -- the usual shape, without a table
      return '{"content":[' .. tool_use(calls[1]) .. '],"role":"assistant"}'
    end
    local blocks, n = {}, 0
    if thinking then
      n = 1
      blocks[1] = thinking
    end
    if text ~= "" then
      n = n + 1
      blocks[n] = '{"text":' .. quote(text) .. ',"type":"text"}'
    end
    for _, c in ipairs(calls) do
      n = n + 1
      blocks[n] = tool_use(c)
    end
    return '{"content":[' .. concat(blocks, ",") .. '],"role":"assistant"}'
  end
  local content = msg.content
  if content == nil then return '{"content":"","role":"user"}' end
  -- neutral parts (tide.image / tide.file) in the Messages shape
  if type(content) == "table" and parts.is_neutral(content) then content = parts.anthropic(content) end
  return '{"content":' .. (type(content) == "string" and quote(content) or canonical(content))
    .. ',"role":"user"}'
end

-- ------------------------------------------------------------------- wire

function Provider:_url()
  return self.base_url .. "/messages"
end

function Provider:_headers()
  local h = { ["content-type"] = "application/json", ["anthropic-version"] = M.VERSION_HEADER }
  if self.stream then h["accept"] = "text/event-stream" end
  if self.api_key then h["x-api-key"] = self.api_key end
  for k, v in pairs(self.headers) do h[k] = v end
  return h
end

local count = provider._count

-- The usage of a reply in tide's terms, which are OpenAI's: `input` is the
-- whole prompt. Anthropic's input_tokens is only the part after the last
-- cache breakpoint; the prompt is that plus the tokens read from the cache
-- plus those written to it. Thinking is billed inside output_tokens, with
-- no separate count, so `reasoning` is 0.
local function usage(input, read, write, output)
  return { input = input + read + write, output = output, cached = read, cache_write = write, reasoning = 0 }
end

-- Anthropic's stop reasons in the neutral set. pause_turn (the server
-- paused its own loop of server tools) and model_context_window_exceeded
-- both leave an unfinished answer that tide cannot continue by itself: they
-- are "length", so that a cut-off reply is never taken for a complete one.
local STOPS = {
  end_turn = "stop", stop_sequence = "stop", tool_use = "tool_calls",
  max_tokens = "length", pause_turn = "length", model_context_window_exceeded = "length",
  refusal = "refusal",
}

-- The neutral stop of a reply; a reason newer than this table is read from
-- what the reply holds (stop_raw keeps it as sent).
local function stop_of(raw, calls)
  if raw == nil then return nil end
  return STOPS[raw] or (#calls > 0 and "tool_calls" or "stop")
end

-- A reasoning part from a thinking block (a text and its signature) or a
-- redacted_thinking block (opaque data), or nil and the reason it cannot
-- be sent back as the API requires.
local function reasoning_part(block)
  if block.type == "thinking" then
    if type(block.signature) ~= "string" or block.signature == "" then return nil, "has no signature" end
    if type(block.thinking) ~= "string" then return nil, "has no thinking text" end
    return { type = "text", text = block.thinking, signature = block.signature, provider = "anthropic" }
  end
  if type(block.data) ~= "string" or block.data == "" then return nil, "has no data" end
  return { type = "redacted", data = block.data, provider = "anthropic" }
end

--- Parses a complete (non-streamed) response body.
function Provider:_parse(obj)
  if obj.type == "error" or (type(obj.error) == "table" and obj.content == nil) then
    local e = type(obj.error) == "table" and obj.error or {}
    return nil, fail(e.type == "rate_limit_error" and "RateLimited" or "ProviderError",
      "anthropic returned an error: " .. provider._excerpt(tostring(e.message), 512), { type = e.type })
  end
  if type(obj.content) ~= "table" then
    return nil, fail("MalformedResponse", "anthropic response has no content array")
  end
  local text, calls, reasoning = {}, {}, nil
  for i, block in ipairs(obj.content) do
    if type(block) ~= "table" then
      return nil, fail("MalformedResponse", ("anthropic content[%d] is not an object"):format(i))
    end
    local ty = block.type
    if ty == "text" and type(block.text) == "string" then
      text[#text + 1] = block.text
    elseif ty == "tool_use" then
      local input = block.input
      calls[#calls + 1] = {
        id = block.id, name = block.name,
        arguments = type(input) == "table" and canonical(json.integers(input)) or nil,
      }
    elseif ty == "thinking" or ty == "redacted_thinking" then
      local part, why = reasoning_part(block)
      if not part then
        return nil, fail("MalformedResponse", ("anthropic content[%d] (%s) %s"):format(i, ty, why))
      end
      reasoning = reasoning or {}
      reasoning[#reasoning + 1] = part
    end
  end
  local u = type(obj.usage) == "table" and obj.usage or {}
  local raw = type(obj.stop_reason) == "string" and obj.stop_reason or nil
  return {
    text = table.concat(text),
    tool_calls = calls,
    reasoning = reasoning,
    usage = usage(count(u.input_tokens), count(u.cache_read_input_tokens),
      count(u.cache_creation_input_tokens), count(u.output_tokens)),
    stop = stop_of(raw, calls),
    stop_raw = raw,
  }
end

-- ------------------------------------------------------------- streaming

local Stream = {}
Stream.__index = Stream

function Stream:__close()
  self.calls:close()
end

-- Mid-stream errors: retryable ones (overloaded, api_error, rate limits) may
-- be retried by complete() as long as no text reached on_delta.
local STREAM_ERRORS = {
  overloaded_error = { "ProviderError", 529 },
  api_error = { "ProviderError", 500 },
  rate_limit_error = { "RateLimited", 429 },
}

local function stream_error(obj, data)
  local e = type(obj.error) == "table" and obj.error or {}
  local kind = STREAM_ERRORS[e.type]
  return fail(kind and kind[1] or "ProviderError",
    "anthropic stream error: " .. provider._excerpt(tostring(e.message or e.type), 512),
    { type = e.type, body = provider._excerpt(data), retryable = kind ~= nil })
end

--- Handles one SSE event; returns an error to abandon the stream.
function Stream:event(ev)
  if self.done or ev.done then return nil end -- "[DONE]" is not Anthropic's, but proxies add it
  local obj, err = decode_fast(ev.data)
  if obj == nil then
    return fail("MalformedResponse", "anthropic stream event is not valid JSON (" .. err.message .. ")",
      { body = provider._excerpt(ev.data) })
  end
  if type(obj) ~= "table" then
    return fail("MalformedResponse", "anthropic stream event is not a JSON object",
      { body = provider._excerpt(ev.data) })
  end
  local ty = type(obj.type) == "string" and obj.type or ev.event
  if ty == "content_block_delta" then
    local d = obj.delta
    if type(d) ~= "table" then return fail("MalformedResponse", "anthropic content_block_delta has no delta") end
    local dtype = d.type
    if dtype == "text_delta" then
      local text = d.text
      if type(text) == "string" and text ~= "" then
        local n = self.ntext + 1
        self.ntext = n
        self.text[n] = text
        self.emit(text)
      end
    elseif dtype == "input_json_delta" then
      local index = tointeger(obj.index)
      if not index or index < 0 then
        return fail("MalformedResponse", "anthropic input_json_delta has no valid index")
      end
      local ok, aerr = self.calls:add(index, nil, nil,
        type(d.partial_json) == "string" and d.partial_json or nil)
      if not ok then return aerr end
    elseif dtype == "thinking_delta" or dtype == "signature_delta" then
      local part = self.thinking[tointeger(obj.index) or -1]
      if not part or part.type ~= "text" then
        return fail("MalformedResponse", ("anthropic %s outside a thinking block"):format(dtype))
      end
      if dtype == "signature_delta" then
        -- The whole signature, sent once just before the block stops.
        if type(d.signature) == "string" then part.signature = d.signature end
      elseif type(d.thinking) == "string" and d.thinking ~= "" then
        local buf = part.buf
        buf[#buf + 1] = d.thinking
        if self.on_reasoning then self.on_reasoning(d.thinking) end
      end
    end
  elseif ty == "content_block_start" then
    local b = obj.content_block
    if type(b) ~= "table" then return fail("MalformedResponse", "anthropic content_block_start has no block") end
    if b.type == "tool_use" then
      local index = tointeger(obj.index)
      if not index or index < 0 then
        return fail("MalformedResponse", "anthropic tool_use block has no valid index")
      end
      -- The input arrives as input_json_delta fragments; a server that sends
      -- it whole here is taken at its word.
      local whole = type(b.input) == "table" and next(b.input) ~= nil and canonical(json.integers(b.input))
        or nil
      local ok, aerr = self.calls:add(index, type(b.id) == "string" and b.id or nil,
        type(b.name) == "string" and b.name or nil, whole)
      if not ok then return aerr end
    elseif b.type == "text" and type(b.text) == "string" and b.text ~= "" then
      local n = self.ntext + 1
      self.ntext = n
      self.text[n] = b.text
      self.emit(b.text)
    elseif b.type == "thinking" or b.type == "redacted_thinking" then
      local index = tointeger(obj.index)
      if not index or index < 0 or self.thinking[index] then
        return fail("MalformedResponse", ("anthropic %s block has no valid index"):format(b.type))
      end
      -- Kept in block order; a thinking block's text and signature arrive
      -- as deltas and are checked when the stream ends.
      local part
      if b.type == "thinking" then
        local first = type(b.thinking) == "string" and b.thinking or ""
        part = { type = "text", buf = { first }, signature = type(b.signature) == "string" and b.signature or nil }
        if first ~= "" and self.on_reasoning then self.on_reasoning(first) end
      else
        part = { type = "redacted", data = b.data }
      end
      self.thinking[index] = part
      self.reasoning[#self.reasoning + 1] = part
    end
  elseif ty == "message_start" then
    local m = type(obj.message) == "table" and obj.message or {}
    local u = type(m.usage) == "table" and m.usage or {}
    self.input = count(u.input_tokens)
    self.cache_read = count(u.cache_read_input_tokens)
    self.cache_write = count(u.cache_creation_input_tokens)
    self.output = count(u.output_tokens)
    self.started = true
  elseif ty == "message_delta" then
    local d = type(obj.delta) == "table" and obj.delta or {}
    if type(d.stop_reason) == "string" then self.stop = d.stop_reason end
    local u = obj.usage
    if type(u) == "table" then
      -- Every count here is cumulative; the input ones are restated by
      -- newer servers (and then final), left out by older ones.
      if u.output_tokens ~= nil then self.output = count(u.output_tokens) end
      if type(u.input_tokens) == "number" then self.input = count(u.input_tokens) end
      if type(u.cache_read_input_tokens) == "number" then self.cache_read = count(u.cache_read_input_tokens) end
      if type(u.cache_creation_input_tokens) == "number" then
        self.cache_write = count(u.cache_creation_input_tokens)
      end
    end
  elseif ty == "message_stop" then
    self.done = true
  elseif ty == "error" then
    return stream_error(obj, ev.data)
  end
  -- ping, content_block_stop and unknown events carry nothing we need.
  return nil
end

--- The response once the HTTP stream ended.
function Stream:finish()
  if not self.done then
    return nil, fail("MalformedResponse", "anthropic stream ended before message_stop",
      { partial_text = table.concat(self.text) })
  end
  local calls, err = self.calls:result()
  if not calls then return nil, err end
  local reasoning
  for i, p in ipairs(self.reasoning) do
    local block = p.type == "text" and { type = "thinking", thinking = concat(p.buf), signature = p.signature }
      or { type = "redacted_thinking", data = p.data }
    local part, why = reasoning_part(block)
    if not part then
      return nil, fail("MalformedResponse", ("anthropic %s block %d %s"):format(block.type, i, why))
    end
    reasoning = reasoning or {}
    reasoning[i] = part
  end
  return {
    text = table.concat(self.text),
    tool_calls = calls,
    reasoning = reasoning,
    usage = usage(self.input, self.cache_read, self.cache_write, self.output),
    stop = stop_of(self.stop, calls),
    stop_raw = self.stop,
  }
end

--- A parser for one streamed response; `emit(text)` receives text deltas,
--- `on_reasoning(text)` (optional) thinking deltas.
function Provider:_stream(emit, on_reasoning)
  return setmetatable({
    emit = emit, on_reasoning = on_reasoning, text = {}, ntext = 0, done = false,
    input = 0, output = 0, cache_read = 0, cache_write = 0,
    thinking = {}, reasoning = {}, -- thinking blocks by index, and in block order
    calls = core.tool_call_assembler(self.max_body_bytes),
  }, Stream)
end

return M
