--- tide.provider.responses: the OpenAI Responses API wire format
--- (`POST /responses`), chosen by `tide.provider.openai{ api = "responses" }`.
---
--- Stateless: `store` is false unless asked, and every request carries the
--- whole input, so a session's frozen prefix and its once-encoded messages
--- work as they do for chat completions. Nothing refers to a response kept
--- server-side (no `previous_response_id`).
---
--- Body layout, as anthropic.lua's: every field but `input` in sorted key
--- order, each value canonical (`extra_body`'s fields among them), then
--- `"input":[` so that what precedes the items is a reusable prefix. The
--- system prompt is `instructions`. Function tools go out with `strict:
--- false`: the Responses API, unlike chat completions, treats a tool
--- without `strict` as strict and rewrites or refuses its schema.
---
--- Items. A neutral message may be several input items, comma-joined: an
--- assistant message is its reasoning items (this API's own, verbatim: the
--- API wants them before the calls they led to), its text as a `message`
--- item of `output_text`, then one `function_call` per call; a tool message
--- is one `function_call_output` per result.
---
--- Reasoning: with `reasoning` set, the request asks for
--- `reasoning.encrypted_content` (with `store = false` a reasoning item can
--- only be sent back with it). A reasoning item becomes `{ type =
--- "encrypted", id, data = encrypted_content, summary = "...", provider =
--- "openai_responses" }`; only such parts are ever sent back, and only here.
local provider = require "tide.provider.base"
local core = require "tide.core"
local json = require "tide.json"
local content = require "tide.content"

local M = {}

--- The `provider` tag of the reasoning parts this wire format makes and
--- sends back.
M.REASONING = "openai_responses"

local Provider = setmetatable({}, { __index = provider.Base })
Provider.__index = Provider
Provider.__name = "tide.provider.responses"

local canonical = json.canonical
local quote = json.quote
local fail = provider._fail
local concat = table.concat

function Provider:__tostring()
  return ("tide.provider.openai(responses, %s, %s)"):format(self.model, self.base_url)
end

--- Creates the provider object, or returns nil plus a misuse message.
---@param opts? tide.provider.opts
function M.new(opts)
  local self, msg = provider._new("openai", opts, require("tide.provider.openai").defaults())
  if not self then return nil, msg end
  opts = opts or {}
  self.reasoning_on = opts.reasoning ~= nil
  return setmetatable(self, Provider)
end

-- ---------------------------------------------------------------- encoding

--- The request body up to and including the `[` that opens `input`.
---@param system string|nil the frozen system prompt (sent as `instructions`)
---@param tools? {name:string, description?:string, parameters?:table}[]
---@return string
--- The model is held to a turn's schema by the API itself (`text.format`
--- json_schema): encode_prefix takes the schema.
Provider._native_schema = true

function Provider:encode_prefix(system, tools, schema)
  if system ~= nil and type(system) ~= "string" then
    error(("tide.provider.openai: 'system' must be a string, got %s"):format(type(system)), 2)
  end
  local list = provider._tools("openai", tools, 2)
  local fields = {
    model = canonical(self.model),
    store = self.store and "true" or "false",
    stream = self.stream and "true" or "false",
  }
  if system ~= nil and system ~= "" then fields.instructions = quote(system) end
  if self.temperature ~= nil then fields.temperature = canonical(self.temperature) end
  if self.max_tokens ~= nil then fields.max_output_tokens = canonical(self.max_tokens) end
  if self.reasoning_on then
    fields.reasoning = canonical({ effort = self.reasoning_effort, summary = self.reasoning_summary })
    -- Without the encrypted content a stateless follow-up cannot carry the
    -- reasoning back (the id alone names an item that was never stored).
    if not self.store then fields.include = '["reasoning.encrypted_content"]' end
  end
  if self.tool_choice ~= nil then fields.tool_choice = canonical(self.tool_choice) end
  if self.parallel_tool_calls ~= nil then
    fields.parallel_tool_calls = self.parallel_tool_calls and "true" or "false"
  end
  if #list > 0 then
    local encoded = {}
    for i, t in ipairs(list) do
      encoded[i] = canonical({ type = "function", name = t.name, description = t.description,
                               parameters = t.parameters, strict = false })
    end
    fields.tools = "[" .. concat(encoded, ",") .. "]"
  end
  if schema ~= nil then
    fields.text = canonical({ format = { type = "json_schema", name = "output", schema = schema,
      strict = require("tide.schema").strict_ok(schema) } })
  end
  for k, v in pairs(self.extra_json or {}) do fields[k] = v end
  local keys = {}
  for k in pairs(fields) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = quote(k) .. ":" .. fields[k] end
  return "{" .. concat(parts, ",") .. ',"input":['
end

-- Items are encoded by hand, keys in sorted order (the bytes json.canonical
-- would give), as the other wire formats do: the session encodes every
-- message once, on the path of every turn.

local function call_arguments(c)
  local args = c.arguments
  if type(args) == "table" then args = canonical(args) end
  if type(args) ~= "string" then args = "{}" end
  return args
end

-- The reasoning items of an assistant message: this API's parts only, each
-- as received. With `store = false` an item without its encrypted content
-- cannot be resolved by the server (the id names nothing stored) and would
-- fail the request, so it is left out.
local function reasoning_items(reasoning, store)
  if reasoning == nil then return nil end
  local items, n = nil, 0
  for _, r in ipairs(reasoning) do
    if type(r) == "table" and r.provider == M.REASONING and r.type == "encrypted" and type(r.id) == "string"
        and (store or type(r.data) == "string") then
      local summary = (type(r.summary) == "string" and r.summary ~= "")
        and '[{"text":' .. quote(r.summary) .. ',"type":"summary_text"}]' or "[]"
      n = n + 1
      items = items or {}
      items[n] = (type(r.data) == "string" and '{"encrypted_content":' .. quote(r.data) .. "," or "{")
        .. '"id":' .. quote(r.id) .. ',"summary":' .. summary .. ',"type":"reasoning"}'
    end
  end
  return items and concat(items, ",")
end

-- Checks the reasoning parts of a restored assistant message: the parts
-- this wire format would send back must hold what the API verifies.
local function check_reasoning(reasoning, level)
  if reasoning == nil then return end
  if type(reasoning) ~= "table" then
    error(("tide.provider.openai: 'reasoning' must be a table, got %s"):format(type(reasoning)), level + 1)
  end
  for i, r in ipairs(reasoning) do
    if type(r) ~= "table" then
      error(("tide.provider.openai: reasoning[%d] must be a table"):format(i), level + 1)
    end
    if r.provider == M.REASONING then
      if r.type ~= "encrypted" or type(r.id) ~= "string" or (r.data ~= nil and type(r.data) ~= "string")
          or (r.summary ~= nil and type(r.summary) ~= "string") then
        error(("tide.provider.openai: reasoning[%d] (a Responses reasoning item) needs type \"encrypted\", "
          .. "an 'id' string, and 'data' and 'summary' strings or nil"):format(i), level + 1)
      end
    end
  end
end

local function message_item(role, content_json)
  return '{"content":' .. content_json .. ',"role":"' .. role .. '","type":"message"}'
end

-- A user or system message's content: text, or neutral parts (tide.image /
-- tide.file), or a list already in this API's shape.
local function input_content(c)
  if c == nil or type(c) == "string" then
    return '[{"text":' .. quote(c or "") .. ',"type":"input_text"}]'
  end
  if content.is_neutral(c) then return canonical(content.openai_responses(c)) end
  return canonical(c)
end

--- One neutral message as comma-joined input item(s); "" for an assistant
--- message that holds nothing to send.
---@param msg table a neutral message (see docs/internals.md)
---@return string
function Provider:encode_message(msg)
  provider._check_message("openai", msg, 2)
  if msg.role == "assistant" then check_reasoning(msg.reasoning, 2) end
  return self:_encode(msg, 3)
end

-- encode_message without the shape checks, for messages the session built
-- itself.
function Provider:_encode(msg)
  local role = msg.role
  if role == "tool" then
    local results = msg.results
    local items, result_text = {}, provider._result_text
    for i, r in ipairs(results) do
      items[i] = '{"call_id":' .. quote(r.id) .. ',"output":' .. quote(result_text(r.content))
        .. ',"type":"function_call_output"}'
    end
    return concat(items, ",")
  end
  if role == "assistant" then
    local items, n = {}, 0
    local reasoning = msg.reasoning and reasoning_items(msg.reasoning, self.store)
    if reasoning then
      n = 1
      items[1] = reasoning
    end
    local text = msg.content
    if text ~= nil and text ~= "" then
      n = n + 1
      -- An assistant message's content is output_text: the API refuses
      -- input_text there.
      items[n] = message_item("assistant", '[{"annotations":[],"text":' .. quote(text) .. ',"type":"output_text"}]')
    end
    for _, c in ipairs(msg.tool_calls or {}) do
      n = n + 1
      items[n] = '{"arguments":' .. quote(call_arguments(c)) .. ',"call_id":' .. quote(c.id)
        .. ',"name":' .. quote(c.name) .. ',"type":"function_call"}'
    end
    return concat(items, ",")
  end
  return message_item(role, input_content(msg.content))
end

-- ------------------------------------------------------------------- wire

function Provider:_url() return provider._url_of(self.base_url, "/responses", self.query) end

Provider._headers = provider._bearer_headers

local count = provider._count
local decode_fast = json.decode_fast
local excerpt = provider._excerpt

-- input_tokens is the whole prompt, cached tokens included, and
-- output_tokens counts the reasoning tokens: what tide's fields mean.
local function usage_of(u)
  if type(u) ~= "table" then return { input = 0, output = 0, cached = 0, cache_write = 0, reasoning = 0 } end
  local inp, out = u.input_tokens_details, u.output_tokens_details
  return {
    input = count(u.input_tokens),
    output = count(u.output_tokens),
    cached = type(inp) == "table" and count(inp.cached_tokens) or 0,
    cache_write = 0,
    reasoning = type(out) == "table" and count(out.reasoning_tokens) or 0,
  }
end

-- The error codes (of `response.failed`'s error and of `error` events)
-- worth another attempt, and what they are called in tide.
local FAILED = {
  rate_limit_exceeded = { "RateLimited", 429 },
  server_error = { "ProviderError", 500 },
}

-- A failed response's error, or an `error` event: { code, message }.
local function failure(where, e, body)
  e = type(e) == "table" and e or {}
  local code = type(e.code) == "string" and e.code or type(e.type) == "string" and e.type or nil
  local kind = FAILED[code]
  return fail(kind and kind[1] or "ProviderError",
    ("openai %s: %s"):format(where, excerpt(tostring(e.message or code), 512)),
    { type = code, status = kind and kind[2] or nil, body = body and excerpt(body), retryable = kind ~= nil })
end

-- The neutral stop of a finished response: an incomplete one says why it
-- stopped (max_output_tokens, content_filter); a complete one is "stop" or
-- "tool_calls" by what it holds, "refusal" when the model refused.
local INCOMPLETE = { max_output_tokens = "length", content_filter = "content_filter" }
local function stop_of(obj, ncalls, refused)
  if obj.status == "incomplete" then
    local d = obj.incomplete_details
    local reason = type(d) == "table" and type(d.reason) == "string" and d.reason or "incomplete"
    return INCOMPLETE[reason] or "length", reason
  end
  local raw = type(obj.status) == "string" and obj.status or nil
  if refused then return "refusal", raw end
  return ncalls > 0 and "tool_calls" or "stop", raw
end

-- A reasoning part from a reasoning output item.
local function reasoning_part(item)
  local summary = {}
  if type(item.summary) == "table" then
    for _, s in ipairs(item.summary) do
      if type(s) == "table" and type(s.text) == "string" then summary[#summary + 1] = s.text end
    end
  end
  return { type = "encrypted", id = item.id, provider = M.REASONING, summary = concat(summary, "\n\n"),
           data = type(item.encrypted_content) == "string" and item.encrypted_content or nil }
end

-- Adds one finished output item to `acc` ({ text, calls, reasoning,
-- refusal }); an error for an item tide cannot send back.
local function add_item(acc, item, i)
  if type(item) ~= "table" then
    return fail("MalformedResponse", ("openai output[%d] is not an object"):format(i))
  end
  local ty = item.type
  if ty == "message" then
    if type(item.content) == "table" then
      for _, part in ipairs(item.content) do
        if type(part) == "table" then
          if part.type == "output_text" and type(part.text) == "string" then
            acc.text[#acc.text + 1] = part.text
          elseif part.type == "refusal" and type(part.refusal) == "string" then
            acc.refusal = (acc.refusal or "") .. part.refusal
          end
        end
      end
    end
  elseif ty == "function_call" then
    if type(item.call_id) ~= "string" or type(item.name) ~= "string" then
      return fail("MalformedResponse", ("openai output[%d] (function_call) has no call_id or name"):format(i))
    end
    acc.calls[#acc.calls + 1] = { id = item.call_id, name = item.name,
                                  arguments = type(item.arguments) == "string" and item.arguments or nil }
  elseif ty == "reasoning" then
    if type(item.id) ~= "string" or item.id == "" then
      return fail("MalformedResponse", ("openai output[%d] (reasoning) has no id"):format(i))
    end
    acc.reasoning = acc.reasoning or {}
    acc.reasoning[#acc.reasoning + 1] = reasoning_part(item)
  end
  -- Server-side tools' items (web_search_call, ...) are not tide's to send
  -- back or run.
  return nil
end

-- The neutral reply from a finished response object and what was gathered.
local function reply_of(obj, acc)
  local stop, raw = stop_of(obj, #acc.calls, acc.refusal ~= nil)
  return {
    text = concat(acc.text),
    tool_calls = acc.calls,
    reasoning = acc.reasoning,
    refusal = acc.refusal,
    usage = usage_of(obj.usage),
    stop = stop,
    stop_raw = raw,
  }
end

-- The error of a response whose status is "failed" (or that carries one).
local function failed_response(obj)
  local e = obj.error
  if e ~= nil and e ~= json.null then return failure("response failed", e) end
  if obj.status == "failed" then return failure("response failed", { message = "no error given" }) end
  return nil
end

--- Parses a complete (non-streamed) response body.
function Provider:_parse(obj)
  local err = failed_response(obj)
  if err then return nil, err end
  if type(obj.output) ~= "table" then
    return nil, fail("MalformedResponse", "openai response has no output array")
  end
  local acc = { text = {}, calls = {} }
  for i, item in ipairs(obj.output) do
    err = add_item(acc, item, i)
    if err then return nil, err end
  end
  return reply_of(obj, acc)
end

-- ------------------------------------------------------------- streaming

-- Events parsed in Lua, like Anthropic's. Text comes from the deltas as it
-- streams; everything else from the finished response that
-- response.completed (or .incomplete) carries whole, read by the same code
-- as a non-streamed reply. response.output_item.done events are kept
-- undecoded, for a server whose final response leaves its output out.
-- The event name is on the SSE `event:` line: events nothing is taken from
-- are skipped without decoding their JSON.
local SKIP = {
  ["response.created"] = true, ["response.in_progress"] = true, ["response.output_item.added"] = true,
  ["response.content_part.added"] = true, ["response.content_part.done"] = true,
  ["response.output_text.done"] = true, ["response.function_call_arguments.delta"] = true,
  ["response.function_call_arguments.done"] = true, ["response.reasoning_summary_part.added"] = true,
  ["response.reasoning_summary_part.done"] = true, ["response.reasoning_summary_text.done"] = true,
  ["response.output_text.annotation.added"] = true, ["response.refusal.delta"] = true,
  ["response.refusal.done"] = true,
}

local Stream = {}
Stream.__index = Stream

--- Handles one SSE event; returns an error to abandon the stream.
function Stream:event(ev)
  if self.done or ev.done then return nil end
  local name = ev.event
  if SKIP[name] then return nil end
  if name == "response.output_item.done" then
    local n = #self.items + 1
    self.items[n] = ev.data
    return nil
  end
  local obj, derr = decode_fast(ev.data)
  if type(obj) ~= "table" then
    return fail("MalformedResponse", "openai stream event is not a JSON object"
      .. (derr and (" (" .. derr.message .. ")") or ""), { body = excerpt(ev.data) })
  end
  local ty = obj.type
  if ty == "response.output_text.delta" then
    local d = obj.delta
    if type(d) == "string" and d ~= "" then
      local n = self.ntext + 1
      self.ntext = n
      self.text[n] = d
      self.emit(d)
    end
  elseif ty == "response.reasoning_summary_text.delta" then
    if self.on_reasoning and type(obj.delta) == "string" and obj.delta ~= "" then self.on_reasoning(obj.delta) end
  elseif ty == "response.output_item.done" then -- (a server that names no events)
    self.items[#self.items + 1] = ev.data
  elseif ty == "response.completed" or ty == "response.incomplete" then
    local r = obj.response
    if type(r) ~= "table" then return fail("MalformedResponse", "openai " .. ty .. " has no response") end
    self.final = r
    self.done = true
  elseif ty == "response.failed" then
    local r = type(obj.response) == "table" and obj.response or {}
    return failed_response(r) or failure("response failed", { message = "no error given" }, ev.data)
  elseif ty == "error" then
    return failure("stream error", obj, ev.data)
  end
  -- Unknown events carry nothing tide needs.
  return nil
end

--- The response once the HTTP stream ended.
function Stream:finish()
  if not self.done then
    return nil, fail("MalformedResponse", "openai stream ended before response.completed",
      { partial_text = concat(self.text) })
  end
  local final = self.final
  local output = final.output
  if type(output) ~= "table" or next(output) == nil then
    output = {}
    for i, data in ipairs(self.items) do
      local obj = decode_fast(data)
      output[i] = type(obj) == "table" and obj.item or nil
    end
  end
  local acc = { text = {}, calls = {} }
  for i, item in ipairs(output) do
    local err = add_item(acc, item, i)
    if err then return nil, err end
  end
  -- The text is what the deltas said (what on_delta heard), whatever the
  -- final output repeats.
  acc.text = self.text
  return reply_of(final, acc)
end

--- A parser for one streamed response; `emit(text)` receives text deltas,
--- `on_reasoning(text)` (optional) reasoning summary deltas.
function Provider:_stream(emit, on_reasoning)
  return setmetatable({
    emit = emit, on_reasoning = on_reasoning, text = {}, ntext = 0, done = false, items = {},
  }, Stream)
end

return M
