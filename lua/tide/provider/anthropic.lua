--- tide.provider.anthropic: the Anthropic Messages wire format.
---
--- Body layout: max_tokens, model, stream, system, temperature, tools, then
--- messages last so that everything before it is a reusable prefix. Every
--- value is encoded canonically; tool-use inputs are the model's own
--- argument text, spliced in verbatim once checked to be a JSON object (a
--- decode and re-encode would turn its empty arrays into objects).
local provider = require "tide.provider.base"
local core = require "tide.core"
local json = require "tide.json"

local M = {}

M.VERSION_HEADER = "2023-06-01"
M.DEFAULT_MAX_TOKENS = 4096

local Provider = setmetatable({}, { __index = provider.Base })
Provider.__index = Provider
Provider.__name = "tide.provider.anthropic"

local canonical = json.canonical
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
  local parts = {
    '{"max_tokens":', canonical(self.max_tokens),
    ',"model":', canonical(self.model),
    ',"stream":', self.stream and "true" or "false",
  }
  if system ~= nil and system ~= "" then
    if self.prompt_cache then
      parts[#parts + 1] = ',"system":' .. canonical({ { type = "text", text = system, cache_control = EPHEMERAL } })
    else
      parts[#parts + 1] = ',"system":' .. canonical(system)
    end
  end
  if self.temperature ~= nil then parts[#parts + 1] = ',"temperature":' .. canonical(self.temperature) end
  if #list > 0 then
    local encoded = {}
    for i, t in ipairs(list) do
      local tool = { name = t.name, description = t.description, input_schema = t.parameters }
      if self.prompt_cache and i == #list then tool.cache_control = EPHEMERAL end
      encoded[i] = canonical(tool)
    end
    parts[#parts + 1] = ',"tools":[' .. table.concat(encoded, ",") .. "]"
  end
  parts[#parts + 1] = ',"messages":['
  return table.concat(parts)
end

-- Messages are encoded by hand, one fixed shape per kind of message, with
-- the keys in sorted order: the bytes are those json.canonical would give,
-- for a fraction of the cost (the session encodes every message once, on the
-- path of every turn). Only table values go through the canonical encoder.
local quote = json.quote
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

--- One neutral message as a JSON array element. A `tool` message becomes one
--- user message of `tool_result` blocks; an assistant message with neither
--- text nor tool calls encodes as "" (nothing: `body` skips it).
---@param msg table a neutral message (see docs/internals.md)
---@return string
function Provider:encode_message(msg)
  provider._check_message("anthropic", msg, 2)
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
    if not calls or #calls == 0 then
      if text == "" then return "" end
      return '{"content":' .. quote(text) .. ',"role":"assistant"}'
    end
    if text == "" and #calls == 1 then -- the usual shape, without a table
      return '{"content":[' .. tool_use(calls[1]) .. '],"role":"assistant"}'
    end
    local blocks, n = {}, 0
    if text ~= "" then
      n = 1
      blocks[1] = '{"text":' .. quote(text) .. ',"type":"text"}'
    end
    for _, c in ipairs(calls) do
      n = n + 1
      blocks[n] = tool_use(c)
    end
    return '{"content":[' .. concat(blocks, ",") .. '],"role":"assistant"}'
  end
  local content = msg.content
  if content == nil then return '{"content":"","role":"user"}' end
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
  local text, calls = {}, {}
  for i, block in ipairs(obj.content) do
    if type(block) ~= "table" then
      return nil, fail("MalformedResponse", ("anthropic content[%d] is not an object"):format(i))
    end
    if block.type == "text" and type(block.text) == "string" then
      text[#text + 1] = block.text
    elseif block.type == "tool_use" then
      local input = block.input
      calls[#calls + 1] = {
        id = block.id, name = block.name,
        arguments = type(input) == "table" and canonical(json.integers(input)) or nil,
      }
    end
  end
  local u = type(obj.usage) == "table" and obj.usage or {}
  local raw = type(obj.stop_reason) == "string" and obj.stop_reason or nil
  return {
    text = table.concat(text),
    tool_calls = calls,
    usage = { input = count(u.input_tokens), output = count(u.output_tokens),
              cached = count(u.cache_read_input_tokens) },
    stop = provider._stop(raw),
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
    end
  elseif ty == "message_start" then
    local m = type(obj.message) == "table" and obj.message or {}
    local u = type(m.usage) == "table" and m.usage or {}
    self.usage.input = count(u.input_tokens)
    self.usage.cached = count(u.cache_read_input_tokens)
    self.usage.output = count(u.output_tokens)
    self.started = true
  elseif ty == "message_delta" then
    local d = type(obj.delta) == "table" and obj.delta or {}
    if type(d.stop_reason) == "string" then self.stop = d.stop_reason end
    local u = obj.usage
    if type(u) == "table" then
      -- output_tokens is cumulative; newer servers may restate the input.
      if u.output_tokens ~= nil then self.usage.output = count(u.output_tokens) end
      if type(u.input_tokens) == "number" then self.usage.input = count(u.input_tokens) end
      if type(u.cache_read_input_tokens) == "number" then
        self.usage.cached = count(u.cache_read_input_tokens)
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
  return {
    text = table.concat(self.text),
    tool_calls = calls,
    usage = self.usage,
    stop = provider._stop(self.stop),
    stop_raw = self.stop,
  }
end

--- A parser for one streamed response; `emit(text)` receives text deltas.
function Provider:_stream(emit)
  return setmetatable({
    emit = emit, text = {}, ntext = 0, done = false,
    usage = { input = 0, output = 0, cached = 0 },
    calls = core.tool_call_assembler(self.max_body_bytes),
  }, Stream)
end

return M
