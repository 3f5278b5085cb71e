--- tide.provider.openai: the OpenAI chat-completions wire format, as spoken
--- by OpenAI and the servers that copy it (Ollama, llama.cpp, vLLM,
--- OpenRouter...).
---
--- Body layout. Canonical JSON would put "messages" first, which leaves no
--- reusable prefix; the body is therefore laid out by hand in a fixed key order
--- (model, stream, stream_options, temperature, max_completion_tokens or
--- max_tokens, reasoning_effort, tool_choice, parallel_tool_calls, stop, the
--- extra_body fields in sorted order, tools, messages) with every value
--- encoded canonically. Servers ignore key order; what matters is that the
--- same inputs give the same bytes.
---
--- max_tokens goes out as max_completion_tokens by default: OpenAI deprecated
--- max_tokens for it, and its reasoning models (o-series, gpt-5) reject
--- max_tokens with a 400; Azure, Groq, vLLM and recent llama.cpp take the
--- new name. `max_tokens_field = "max_tokens"` is for servers that only
--- know the old one; at api.deepseek.com, Ollama's localhost:11434 and
--- api.mistral.ai it is the default (DeepSeek and Ollama ignore the new
--- name, Mistral refuses it).
---
--- Reasoning: a reply's `reasoning_content` (DeepSeek, vLLM, Qwen, xAI) or
--- `reasoning` (OpenRouter, Groq) text becomes a part `{ type = "text",
--- text, provider = "openai" }` (with `field = "reasoning"` for the second
--- name), and goes back under the name it came as on the assistant message:
--- DeepSeek rejects a tool-call follow-up without its reasoning_content,
--- Groq any message with one.
--- Mistral's thinking chunks (content sent as a list of chunks) become the
--- same part with `via = "content"` (and the chunk's `signature`), and go
--- back as a thinking chunk of the content: Mistral refuses a
--- reasoning_content field. OpenRouter's `reasoning_details` (the
--- structured reasoning Gemini 3 and Claude need back after a tool call:
--- without it the follow-up gets a 400) becomes `{ type = "details", data
--- = JSON text of the array, provider = "openai" }` and goes back as
--- `reasoning_details`. Only servers that sent it ever see it back, and
--- never another provider's parts. Gemini's `extra_content` on a tool call
--- (its thought signature) is kept on the call as raw JSON text and sent
--- back verbatim.
local provider = require "tide.provider.base"
local core = require "tide.core"
local json = require "tide.json"
local unwrap_reply = require("tide.schema").unwrap_reply
-- (content parts: loaded when a message has some)
local function content() return require "tide.content" end

local M = {}

local Provider = provider.class("tide.provider.openai")

local canonical = json.canonical
local quote = json.quote
local fail = provider._fail

function Provider:__tostring()
  return ("tide.provider.openai(%s, %s)"):format(self.model, self.base_url)
end

--- The defaults of an OpenAI provider, chat or Responses: OPENAI_BASE_URL,
--- OPENAI_API_KEY, TIDE_MODEL.
function M.defaults()
  return {
    base_url = provider._env("OPENAI_BASE_URL") or "https://api.openai.com/v1",
    api_key = provider._env("OPENAI_API_KEY"), api_key_env = "OPENAI_API_KEY",
    model = provider._env("TIDE_MODEL") or "gpt-4o-mini",
  }
end

--- Creates the provider object, or returns nil plus a misuse message.
---@param opts? tide.provider.opts
function M.new(opts)
  local self, msg = provider._new("openai", opts, M.defaults())
  if not self then return nil, msg end
  return setmetatable(self, Provider)
end

-- ---------------------------------------------------------------- encoding

--- The request body up to the system message (or the `[` of the message
--- array when there is no system prompt).
---@param system string|nil the frozen system prompt
---@param tools? {name:string, description?:string, parameters?:table}[]
---@return string
--- The model is held to a turn's schema by the API itself
--- (`response_format` json_schema): encode_prefix takes the schema.
Provider._native_schema = true

function Provider:encode_prefix(system, tools, schema)
  if system ~= nil and type(system) ~= "string" then
    error(("tide.provider.openai: 'system' must be a string, got %s"):format(type(system)), 2)
  end
  local list = provider._tools("openai", tools, 2, self._custom_tools)
  local parts = { '{"model":', canonical(self.model), ',"stream":', self.stream and "true" or "false" }
  if self.stream and self.stream_usage then parts[#parts + 1] = ',"stream_options":{"include_usage":true}' end
  if self.temperature ~= nil then parts[#parts + 1] = ',"temperature":' .. canonical(self.temperature) end
  if self.max_tokens ~= nil then
    parts[#parts + 1] = ',"' .. self.max_tokens_field .. '":' .. canonical(self.max_tokens)
  end
  if self.reasoning_effort ~= nil then parts[#parts + 1] = ',"reasoning_effort":' .. quote(self.reasoning_effort) end
  -- (both only beside tools: the API refuses them without, as in a
  -- compaction's request)
  if self.tool_choice ~= nil and #list > 0 then parts[#parts + 1] = ',"tool_choice":' .. canonical(self.tool_choice) end
  if self.parallel_tool_calls ~= nil and #list > 0 then
    parts[#parts + 1] = ',"parallel_tool_calls":' .. (self.parallel_tool_calls and "true" or "false")
  end
  if self.stop_sequences ~= nil then parts[#parts + 1] = ',"stop":' .. canonical(self.stop_sequences) end
  if self.whole_without_thinking and not self.stream and not (self.extra_json and self.extra_json.enable_thinking) then
    parts[#parts + 1] = ',"enable_thinking":false' -- (DashScope thinks only in streamed requests)
  end
  if self.extra_json ~= nil then
    local keys = {}
    for k in pairs(self.extra_json) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      -- (a turn's schema is the response format: an extra one gives way)
      if not (schema ~= nil and k == "response_format") then
        parts[#parts + 1] = "," .. quote(k) .. ":" .. self.extra_json[k]
      end
    end
  end
  if schema ~= nil then
    local schemas = require "tide.schema"
    local sent, name = schemas.for_response_format(schema)
    parts[#parts + 1] = ',"response_format":' .. canonical({ type = "json_schema",
      json_schema = { name = name, schema = sent, strict = schemas.strict_ok(sent) } })
  end
  if #list > 0 then
    local encoded = {}
    for i, t in ipairs(list) do
      local f = t.format
      if f then
        -- a custom tool: chat completions nests a grammar one level deeper
        -- than the Responses API does
        encoded[i] = canonical({ type = "custom", custom = { name = t.name, description = t.description,
          format = f.type == "grammar" and { type = "grammar", grammar = { syntax = f.syntax,
            definition = f.definition } } or f } })
      else
        encoded[i] = canonical({ type = "function", ["function"] = t })
      end
    end
    parts[#parts + 1] = ',"tools":[' .. table.concat(encoded, ",") .. "]"
  end
  parts[#parts + 1] = ',"messages":['
  if system ~= nil and system ~= "" then
    parts[#parts + 1] = canonical({ role = "system", content = system })
  end
  return table.concat(parts)
end

-- Messages are encoded by hand, one fixed shape per kind of message, with
-- the keys in sorted order: the bytes are those json.canonical would give,
-- for a tenth of the cost (the session encodes every message once, on the
-- path of every turn). The assistant message with calls and the tool
-- results are written in C (core.openai_assistant_wire and
-- core.openai_results_wire, core/openai.c). Only table values (content
-- given as a table, arguments given as a table) go through the canonical
-- encoder first.
local assistant_wire, results_wire = core.openai_assistant_wire, core.openai_results_wire

-- The JSON of a user or system message's content, nil standing for "".
-- A user message's content: text, neutral parts (tide.image / tide.file)
-- in the chat-completions shape, or a list already in that shape.
local function content_json(c)
  if c == nil then return '""' end
  if type(c) == "string" then return quote(c) end
  if content().is_neutral(c) then return canonical(content().openai_chat(c)) end
  return canonical(c)
end

local function call_arguments(c)
  local args = c.arguments
  if type(args) == "table" then args = canonical(args) end
  if type(args) ~= "string" then args = "{}" end
  return args
end

-- The calls as the C encoder takes them, for a list it declined: plain
-- tables, arguments and extra_content as JSON text. (Calls a session built
-- are so already.)
local function plain_calls(calls)
  local copy = {}
  for i, c in ipairs(calls) do
    local extra = c.extra_content
    if type(extra) == "table" then extra = canonical(extra) end
    copy[i] = { id = c.id, name = c.name, arguments = call_arguments(c), extra_content = extra }
  end
  return copy
end

-- What goes back with an assistant message, of the reasoning parts this
-- wire format produced: the reasoning text (reasoning_content), the
-- thinking that came as content chunks (Mistral: { text, signature }) and
-- OpenRouter's reasoning_details (JSON text). Each nil when there is none.
local function reasoning_of(msg, kind)
  local parts = msg.reasoning
  if type(parts) ~= "table" then return nil end
  local text, thinking, details, field
  for _, p in ipairs(parts) do
    if type(p) == "table" and p.provider == kind then
      if p.type == "text" and type(p.text) == "string" then
        if p.via == "content" then
          thinking = thinking or {}
          thinking.text = (thinking.text or "") .. p.text
          if type(p.signature) == "string" then thinking.signature = p.signature end
        else
          text = (text or "") .. p.text
          field = field or (p.field == "reasoning" and "reasoning" or "reasoning_content")
        end
      elseif p.type == "details" and type(p.data) == "string" then
        details = p.data
      end
    end
  end
  if text == "" then text = nil end
  return text, thinking, details, field
end

-- The content of an assistant message whose reasoning came as a thinking
-- chunk: that chunk, then the text as a text chunk (Mistral's shape).
local function chunks_json(content, thinking)
  local list = { { type = "thinking", thinking = { { type = "text", text = thinking.text } },
                   signature = thinking.signature } }
  if content and content ~= "" then list[2] = { type = "text", text = content } end
  return canonical(list)
end

-- The results as the C encoder takes them: plain tables, content as text.
local result_text = provider._result_text
local function plain_results(results)
  local copy = {}
  for i, r in ipairs(results) do copy[i] = { id = r.id, content = result_text(r.content) } end
  return copy
end

-- A tool message whose results show the model images or PDFs. A chat tool
-- message holds text only (the API refuses an image there: "Image URLs are
-- only allowed for messages with role 'user'"), so each result's text (text
-- files inline) goes in its tool message, saying what follows, and one user
-- message after them carries the images and PDFs, each call's after a line
-- naming it.
local function parts_results(results)
  local out, images = {}, nil
  for i, r in ipairs(results) do
    local c = r.content
    local mine = {}
    if type(c) == "table" and content().is_neutral(c) then
      c = content().text_files_inline(c)
      for _, p in ipairs(c) do
        if p.type ~= "text" then mine[#mine + 1] = p end
      end
    end
    local text = result_text(c)
    if #mine > 0 then
      text = text .. ("\n(%d attachment%s in the next message)"):format(#mine, #mine == 1 and "" or "s")
      images = images or {}
      images[#images + 1] = { type = "text", text = ("Images from %s (call %s):"):format(tostring(r.name), r.id) }
      for _, p in ipairs(mine) do images[#images + 1] = p end
    end
    out[i] = canonical({ role = "tool", tool_call_id = r.id, content = text })
  end
  if images then out[#out + 1] = canonical({ role = "user", content = content().openai_chat(images) }) end
  return table.concat(out, ",")
end

--- One neutral message as JSON array element(s): a `tool` message becomes one
--- `role = "tool"` element per result, comma-joined (and a user message of
--- their images, when they show the model any).
---@param msg table a neutral message (see docs/internals.md)
---@return string
function Provider:encode_message(msg)
  provider._check_message("openai", msg, 2)
  if msg.role == "assistant" and type(msg.reasoning) == "table" then
    -- (a transcript line edited by hand: its details must still be JSON)
    for i, p in ipairs(msg.reasoning) do
      if type(p) == "table" and p.provider == "openai" and p.type == "details"
          and (type(p.data) ~= "string" or type(json.decode(p.data)) ~= "table") then
        error(("tide.provider.openai: reasoning[%d] (details) must hold the JSON text of an array"):format(i), 2)
      end
    end
  end
  return self:_encode(msg, 3)
end

-- encode_message without the shape checks, for messages the session built
-- itself.
function Provider:_encode(msg)
  local role = msg.role
  if role == "tool" then
    local results = msg.results
    if #results == 0 then return "" end
    -- (the C encoder takes text results, the usual ones, and declines the rest)
    local enc = results_wire(results)
    if enc then return enc end
    if provider._has_parts(results) then return parts_results(results) end
    enc = results_wire(plain_results(results))
    if not enc then error("tide.provider.openai: tool results need a string 'id'", 3) end
    return enc
  end
  if role == "assistant" then
    local content = msg.content
    local calls = msg.tool_calls
    local reasoning, thinking, details, field
    if msg.reasoning then reasoning, thinking, details, field = reasoning_of(msg, self.kind) end
    local raw = thinking and chunks_json(content, thinking)
    if calls and #calls > 0 then
      if not self._custom_tools then calls = provider._function_calls(calls) end -- (see provider.base)
      local enc = assistant_wire(content, calls, reasoning, details, raw, field)
        or assistant_wire(content, plain_calls(calls), reasoning, details, raw, field)
      if not enc then
        error("tide.provider.openai: tool_calls need string 'id' and 'name' (and extra_content a JSON object)", 3)
      end
      return enc
    end
    if reasoning or details or raw then
      return '{"content":' .. (raw or quote(content or ""))
        .. (reasoning and (',"' .. field .. '":' .. quote(reasoning)) or "")
        .. (details and (',"reasoning_details":' .. details) or "") .. ',"role":"assistant"}'
    end
    return '{"content":' .. quote(content or "") .. ',"role":"assistant"}'
  end
  return '{"content":' .. content_json(msg.content) .. ',"role":"' .. role .. '"}'
end

-- ------------------------------------------------------------------- wire

function Provider:_url() return provider._url_of(self.base_url, "/chat/completions", self.query) end

Provider._headers = provider._bearer_headers

local count = provider._count
local tointeger = math.tointeger

-- prompt_tokens counts the whole prompt, cached tokens included, and
-- completion_tokens the reasoning tokens: input and output mean what they
-- mean for every provider as they are. Cached tokens are DeepSeek's
-- prompt_cache_hit_tokens too (the larger count); cache writes and the
-- billed cost (USD) come from OpenRouter, as core/openai.c reads them.
local function usage_of(u, tier)
  -- the tier that served it, as core/openai.c keeps it (TIDE_TIER_MAX)
  if not (type(tier) == "string" and tier ~= "" and #tier < 24) then tier = nil end
  if type(u) ~= "table" then
    return { input = 0, output = 0, cached = 0, cache_write = 0, reasoning = 0, service_tier = tier }
  end
  local details, out = u.prompt_tokens_details, u.completion_tokens_details
  local cached = type(details) == "table" and count(details.cached_tokens) or 0
  local cost = u.cost
  return {
    service_tier = tier,
    input = count(u.prompt_tokens),
    output = count(u.completion_tokens),
    cached = math.max(cached, count(u.prompt_cache_hit_tokens)),
    cache_write = type(details) == "table" and count(details.cache_write_tokens) or 0,
    reasoning = type(out) == "table" and count(out.reasoning_tokens) or 0,
    cost_usd = type(cost) == "number" and cost >= 0 and cost < math.huge and cost or nil,
  }
end

-- The JSON text of arguments some servers send as an object rather than as
-- a string. Responses are decoded with decode_fast: the integers are put
-- back first, so that the text is what json.decode would have given.
local function object_arguments(args)
  return canonical(json.integers(args))
end

-- An error object inside a 200 body or stream event (OpenRouter and some
-- proxies report upstream failures this way).
local function embedded_error(obj, body)
  local e = obj.error
  local msg = type(e) == "table" and e.message or e
  local code = type(e) == "table" and tonumber(e.code) or nil
  code = code and tointeger(code) or code
  return fail(code == 429 and "RateLimited" or "ProviderError",
    "openai returned an error: " .. provider._excerpt(tostring(msg), 512),
    { status = code, body = body and provider._excerpt(body) })
end

-- Mistral's content chunks, as the C parser reads them: the text of the
-- text chunks, the thinking of the thinking chunks (their text pieces) and
-- the last thinking chunk's signature. A chunk without a type is what it
-- holds.
local function content_chunks(list)
  local text, thinking, signature = {}, {}, nil
  for _, c in ipairs(list) do
    if type(c) == "table" then
      local ty = type(c.type) == "string" and c.type or nil
      local pieces = c.thinking
      if ty == "thinking" or (ty == nil and type(pieces) == "table") then
        for _, piece in ipairs(type(pieces) == "table" and pieces or {}) do
          local pt = type(piece) == "table" and piece.type
          if type(piece) == "table" and (type(pt) ~= "string" or pt == "text") and type(piece.text) == "string" then
            thinking[#thinking + 1] = piece.text
          end
        end
        if type(c.signature) == "string" and c.signature ~= "" then signature = c.signature end
      elseif (ty == nil or ty == "text") and type(c.text) == "string" then
        text[#text + 1] = c.text
      end
    end
  end
  return table.concat(text), table.concat(thinking), signature
end

-- OpenRouter's reasoning_details of a reply, given as the JSON text of the
-- list of every event's array: one array. One event's array is kept as it
-- came; a stream's pieces are merged as OpenRouter's own SDK merges them:
-- consecutive reasoning.text entries become one (texts joined, the first
-- signature, format and id kept), the other entries stay as they came.
local function merge_details(data)
  local lists = json.decode(data)
  if type(lists) ~= "table" then return data end
  if #lists == 1 then return data:match("^%s*%[%s*(.-)%s*%]%s*$") or canonical(json.array(lists[1])) end
  local out = json.array()
  for _, list in ipairs(lists) do
    for _, d in ipairs(type(list) == "table" and list or {}) do
      local last = out[#out]
      if type(d) == "table" and d.type == "reasoning.text" and type(last) == "table"
          and last.type == "reasoning.text" then
        last.text = (last.text or "") .. (type(d.text) == "string" and d.text or "")
        for _, k in ipairs { "signature", "format", "id" } do
          if last[k] == nil or last[k] == json.null then last[k] = d[k] end
        end
      else
        out[#out + 1] = d -- (freshly decoded: merging into it changes nothing else)
      end
    end
  end
  return canonical(out)
end

--- Finishes a reply: OpenRouter's reasoning_details merged into one array;
--- the answer to a wrapped schema (tide.schema.for_response_format)
--- unwrapped.
function Provider:_finish_reply(res, body)
  unwrap_reply(res, body)
  local parts = res.reasoning
  if parts then
    for _, p in ipairs(parts) do
      if p.type == "details" then p.data = merge_details(p.data) end
    end
  end
  return res
end

--- Parses a complete (non-streamed) response body.
function Provider:_parse(obj)
  if obj.error ~= nil and obj.error ~= json.null then return nil, embedded_error(obj) end
  local choice = type(obj.choices) == "table" and obj.choices[1]
  if type(choice) ~= "table" or type(choice.message) ~= "table" then
    return nil, fail("MalformedResponse", "openai response has no choices[1].message")
  end
  local m = choice.message
  local calls = {}
  if type(m.tool_calls) == "table" then
    for i, c in ipairs(m.tool_calls) do
      local custom = type(c) == "table" and type(c.custom) == "table" and c.custom
      local f = type(c) == "table" and c["function"]
      if custom then
        -- a custom (freeform) tool's call: its input is text, not JSON
        calls[i] = { id = c.id, name = custom.name, custom = true,
                     arguments = type(custom.input) == "string" and custom.input or nil }
      elseif type(f) ~= "table" then
        return nil, fail("MalformedResponse", ("openai tool_calls[%d] has no function"):format(i))
      else
        local args = f.arguments
        if type(args) == "table" then args = object_arguments(args) end -- some servers send an object
        -- Gemini's thought signature rides here; kept as JSON text, as the C
        -- parser keeps it.
        local extra = type(c.extra_content) == "table" and object_arguments(c.extra_content) or nil
        calls[i] = { id = c.id, name = f.name, arguments = type(args) == "string" and args or nil,
                     extra_content = extra }
      end
    end
  end
  local raw = type(choice.finish_reason) == "string" and choice.finish_reason or nil
  if raw == "error" then -- (OpenRouter: the upstream failed mid-way; see core/openai.c)
    return nil, fail("ProviderError", 'openai reply finished with an error (finish_reason "error")',
      { partial_text = type(m.content) == "string" and m.content or "" })
  end
  local reasoning = type(m.reasoning_content) == "string" and m.reasoning_content
    or type(m.reasoning) == "string" and m.reasoning or ""
  local named = reasoning ~= "" and type(m.reasoning_content) ~= "string"
  local refusal = type(m.refusal) == "string" and m.refusal ~= "" and m.refusal or nil
  local text, thinking, signature = m.content, "", nil
  if type(text) == "table" then text, thinking, signature = content_chunks(text) end
  local parts = {}
  reasoning = reasoning .. thinking
  if reasoning ~= "" or signature then
    parts[1] = { type = "text", text = reasoning, signature = signature,
                 via = (thinking ~= "" or signature) and "content" or nil,
                 field = named and "reasoning" or nil, provider = "openai" }
  end
  local details = m.reasoning_details
  if type(details) == "table" and (next(details) == nil or details[1] ~= nil) then
    -- (an array: {} and [] decode alike, an object with members is none)
    -- as the C parser gives them: a list of the arrays that came
    parts[#parts + 1] = { type = "details", provider = "openai",
                          data = "[" .. canonical(json.array(json.integers(details))) .. "]" }
  end
  return {
    text = type(text) == "string" and text or "",
    tool_calls = calls,
    reasoning = #parts > 0 and parts or nil,
    refusal = refusal,
    usage = usage_of(obj.usage, obj.service_tier),
    stop = provider._stop(raw, #calls > 0, refusal ~= nil),
    stop_raw = raw,
  }
end

-- ------------------------------------------------------------- streaming

-- The stream is parsed in C (core.openai_stream: SSE framing, the JSON of
-- each event, tool-call assembly), so a reply costs at most one string per
-- text delta and one table at the end instead of tables for every event.
-- The exchange feeds it (provider/exchange.lua); these finish the result
-- and error tables.

--- The C parser of one streamed response. It allocates nothing until the
--- reply's bytes come (thousands of requests can wait on a slow provider
--- holding only the small userdata).
function Provider:_c_stream()
  return core.openai_stream(self.max_body_bytes)
end

--- A whole (non-streamed) response scanned in C, or nil for anything but a
--- plain reply (Provider:_parse then decodes it and says what is wrong).
--- Like the stream parser's, the reply comes finished (calls, usage, stop).
function Provider:_c_parse(body)
  return core.openai_parse(body, self.max_body_bytes)
end

return M
