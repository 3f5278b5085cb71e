--- tide.testing: a loopback mock of model providers, for specs, the demo and
--- benchmarks.
---
--- `mock_server` listens on 127.0.0.1 and answers POST `.../chat/completions`
--- in the OpenAI Chat Completions wire format, POST `.../responses` in the
--- OpenAI Responses format (see "OpenAI Responses rendering" below) and POST
--- `.../messages` in the Anthropic Messages format, streaming (SSE) or not as the request's `stream`
--- field asks. Replies are scripted in a provider-neutral form and rendered
--- into the right shape; faults (status codes, dropped connections, malformed
--- or truncated streams, oversized bodies, hangs) are replies too.
---
--- Replies (`tide.testing.reply`): a string (assistant text); a table
--- `{ text, tool_calls = { { name, arguments = table|raw string, id } },
--- usage = { input, output, cached }, delay_ms, chunk_delay_ms, headers }`;
--- a fault table (below); or a function(req) returning one of these.
--- Faults:
---   status    HTTP `status` (default 500) with a provider-shaped error body or
---             `body`; `retry_after` sets Retry-After.
---   drop      streaming: the connection closes after `after` (default 2) SSE
---             chunks; otherwise after half of the announced Content-Length.
---   malformed a 200 whose body (or one SSE data line) is not valid JSON.
---   truncate  streaming: a clean HTTP response whose SSE stream stops before
---             the finish chunk/[DONE] (OpenAI) or message_delta/message_stop
---             (Anthropic); otherwise a clean response with half the JSON.
---   oversize  a 200 of `bytes` bytes: valid JSON whose content is padding (when
---             streaming, `bytes` of content in 16 KiB deltas).
---   hang      no answer at all, until the client gives up or the server closes.
---
--- OpenAI chat completions, as real servers send them (reply fields):
---   reasoning       text streamed as `reasoning_content` deltas (DeepSeek) and
---                   in message.reasoning_content; `reasoning_field = "reasoning"`
---                   uses OpenRouter's name. A call sent with reasoning must come
---                   back with that reasoning_content, or the follow-up gets
---                   DeepSeek's 400.
---   tool_calls[i].thought_signature  Gemini's extra_content.google.thought_signature
---                   on the call; a follow-up that drops it gets Gemini's 400.
---   call_index = false  tool-call deltas without `index`, one whole call per
---                   delta (Gemini's endpoint)
---   done = false    the stream ends cleanly without `data: [DONE]`
---   refusal         message.refusal / refusal deltas, finish_reason "stop"
---   finish_reason   sent as given ("length", "content_filter", ...)
---   usage.reasoning completion_tokens_details.reasoning_tokens
---   usage.cache_write, usage.cost  OpenRouter's cache_write_tokens and
---                   billed cost (USD)
---   reasoning_details  OpenRouter's structured reasoning: a list of
---                   `{ type = "reasoning.text", text, signature?, format? }`,
---                   `{ type = "reasoning.encrypted", data, id? }` or
---                   `{ type = "reasoning.summary", summary }` entries, as the
---                   message's `reasoning_details` (and its text as
---                   `reasoning`); streamed, text entries come in pieces with
---                   the signature on the last, as OpenRouter streams them. A
---                   call sent with them must come back with them all, or the
---                   follow-up gets OpenRouter's 400 for Gemini models.
--- Server option `openai = { reasoning_model = true }` answers as OpenAI's
--- reasoning models do: a request with `max_tokens`, or a temperature other
--- than 1, gets the real 400.
--- Server option `openai = { deepseek = true }` counts cached tokens as
--- `prompt_cache_hit_tokens` alone, as DeepSeek's proxies do.
--- Server option `openai = { groq = true }` answers as Groq does: reasoning
--- comes as `reasoning`, and a message with a `reasoning_content` field gets
--- its 400 ("property 'reasoning_content' is unsupported").
--- Server option `openai = { dashscope = true }` answers as Alibaba Cloud
--- Model Studio's compatible mode does with Qwen3's open models, which
--- think by default: a request that is not streamed and does not say
--- `enable_thinking: false` gets its 400.
--- Server option `openai = { mistral = true }` answers as Mistral's API does:
--- any body or message field it does not document gets its 422
--- (extra_forbidden: stream_options, max_completion_tokens, an assistant's
--- reasoning_content...); call ids are nine letters and digits, and a tool
--- message or call with another id gets its 400; `reasoning` (with an
--- optional `signature`) comes as thinking chunks of the content, the text
--- then as text chunks; a stream's usage rides on its finish chunk.
---
--- Anthropic Messages, structured output (see anthropic.validate below):
---   output_config.format json_schema: the schema is checked as the API
---                   checks it (objects closed, no numeric or length bounds);
---                   the scripted text is the answer. Server option
---                   `anthropic = { structured_outputs = false }` answers as
---                   a model or endpoint without them: the real 400.
---   tool_choice     `{ type = "tool", name }` makes a text-only scripted
---                   reply the input of that tool, as the real API answers;
---                   `{ type = "any" }` makes it the input of the request's
---                   last tool (where tide puts its output tool). Forcing a
---                   tool with thinking on gets the real 400.
---   thinking        `{ type = "enabled", budget_tokens }` or `{ type =
---                   "adaptive" }`: replies open with thinking blocks
---                   (`reasoning`); with `display = "omitted"` a block comes
---                   with its signature and no text, as the API sends it.
---   server_tools    `{ { name = "web_search" | "web_fetch", input, before,
---                   pending } }`: the API's own tools ran (see "Anthropic
---                   server tools" below): each use and its result in the
---                   content, the text after them cited; a follow-up that
---                   alters them, or leaves a use without its result, gets
---                   the 400.
---
--- It is built on `tide.testing.server` (testing/server.c) and on lua-cjson
--- directly, not on tide.json, so that what the mock sends never depends on
--- the encoder of the code under test.
---@class tide.testing
local testing = {}

local core = require "tide.core"
local cjson = require("cjson").new()

local null = cjson.null
-- lua-cjson 2.1.0 encodes an empty table as {}; where the wire format wants an
-- empty array, this marker is put in and replaced after encoding.
local EMPTY = "__tide_mock_empty_array__"
local EMPTY_JSON = '"' .. EMPTY .. '"'

local function encode(v)
  local s = cjson.encode(v)
  if s:find(EMPTY_JSON, 1, true) then s = s:gsub(EMPTY_JSON, "[]") end
  return s
end

local function decode(s)
  if type(s) ~= "string" or s == "" then return nil end
  local ok, v = pcall(cjson.decode, s)
  if ok then return v end
  return nil
end

-- (a Bedrock model id as the path carries it: ':' and an ARN's '/' encoded)
local function percent_decode(s) return require("tide.provider.base")._percent_decode(s) end

local function tokens(nbytes)
  return math.max(1, (nbytes + 3) // 4)
end

--- Splits `s` into at most `n` pieces of similar size, never inside a UTF-8
--- sequence (each piece stays valid text on its own).
local function split(s, n)
  local out, len = {}, #s
  if len == 0 then return out end
  local size = math.max(1, (len + n - 1) // n)
  local i = 1
  while i <= len do
    local j = math.min(len, i + size - 1)
    -- Move the cut forward past continuation bytes (10xxxxxx).
    while j < len do
      local b = s:byte(j + 1)
      if b < 0x80 or b >= 0xC0 then break end
      j = j + 1
    end
    out[#out + 1] = s:sub(i, j)
    i = j + 1
  end
  return out
end

local JSON_HEADERS = { ["content-type"] = "application/json" }
local SSE_HEADERS = { ["content-type"] = "text/event-stream", ["cache-control"] = "no-cache" }

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

local function headers_with(base, extra)
  if not extra then return base end
  local h = copy(base)
  for k, v in pairs(extra) do h[k] = v end
  return h
end

local function json_error(status, message)
  return { status = status, headers = JSON_HEADERS,
           body = encode({ error = { message = message, type = "mock_error" } }) }
end

-- ------------------------------------------------------------------ replies

---@alias tide.testing.reply string|tide.testing.reply_table|fun(req:tide.testing.request):tide.testing.reply

---@class tide.testing.tool_call
---@field name string
---@field arguments? table|string a table is JSON-encoded; a string is sent verbatim
---@field id? string default "call_<n>" (OpenAI) or "toolu_<n>" (Anthropic)

---@class tide.testing.reply_table
---@field text? string assistant text
---@field tool_calls? tide.testing.tool_call[]
---@field usage? {input?:integer, output?:integer, cached?:integer}
---@field delay_ms? integer wait before answering
---@field service_tier? string the tier the reply says served it (default: what the request asked, as
--- OpenAI answers it, "default" when it asked none; Anthropic's "standard")
---@field chunk_delay_ms? integer streaming: wait between SSE chunks
---@field headers? table<string,string> extra response headers
---@field fault? "status"|"drop"|"malformed"|"truncate"|"oversize"|"hang"|"exception" ("exception": Bedrock only, its stream ends with an exception frame)
---@field exception? string the :exception-type of fault "exception" (default "throttlingException")
---@field status? integer fault = "status": the HTTP status (429, 500, 503...)
---@field retry_after? number fault = "status": sets Retry-After (seconds)
---@field body? string|table fault = "status": the error body (default: provider-shaped)
---@field after? integer fault = "drop", streaming: chunks sent before the drop (default 2)
---@field bytes? integer fault = "oversize": body size

---@class tide.testing.request
---@field method string
---@field path string including the query
---@field headers table<string,string> lowercased names
---@field body string
---@field json? any the decoded body, or nil when it is not JSON

local function resolve(reply, req)
  for _ = 1, 8 do
    if type(reply) ~= "function" then break end
    reply = reply(req)
  end
  if type(reply) == "string" then return { text = reply } end
  if type(reply) ~= "table" then
    error(("mock: a reply must be a string, a table or a function (got %s)"):format(type(reply)), 0)
  end
  return reply
end

-- The names of the custom tools a request offers (chat's { type =
-- "custom", custom = { name } }, the Responses API's { type = "custom",
-- name }): the model calls those with text, as custom calls.
local function custom_tools(body)
  local names
  for _, t in ipairs(type(body) == "table" and type(body.tools) == "table" and body.tools or {}) do
    if type(t) == "table" and t.type == "custom" then
      local name = type(t.custom) == "table" and t.custom.name or t.name
      if type(name) == "string" then
        names = names or {}
        names[name] = true
      end
    end
  end
  return names
end

-- Normalised tool calls: { id, name, args = JSON text, input = table|string },
-- and for a tool `custom` names, `custom = true` and args its input text (a
-- script's `input`, or its arguments given as a string).
local function tool_calls(self, reply, prefix, custom)
  local out = {}
  for i, tc in ipairs(reply.tool_calls or {}) do
    if type(tc) ~= "table" or type(tc.name) ~= "string" then
      error(("mock: tool_calls[%d] needs a name"):format(i), 0)
    end
    self._ids = self._ids + 1
    local args, input = tc.arguments, nil
    if custom and custom[tc.name] then
      local text = tc.input or args
      if type(text) ~= "string" then error(("mock: tool_calls[%d] calls a custom tool: give its input text"):format(i), 0) end
      out[i] = { id = tc.id or (prefix .. self._ids), name = tc.name, args = text, input = text, custom = true }
      goto next_call
    end
    if type(args) == "string" then
      input = decode(args)
      if type(input) ~= "table" then input = args end
    else
      input = args or {}
      args = encode(input)
    end
    out[i] = { id = tc.id or (prefix .. self._ids), name = tc.name, args = args, input = input }
    ::next_call::
  end
  return out
end

local function usage_of(reply, req, text, calls)
  local u = reply.usage or {}
  local out_bytes = #text
  for _, c in ipairs(calls) do out_bytes = out_bytes + #c.name + #c.args end
  return {
    input = u.input or tokens(#req.body),
    output = u.output or tokens(out_bytes),
    cached = u.cached or 0,
  }
end

-- -------------------------------------------------------- OpenAI rendering

local openai = { custom_tools = true }

function openai.error_body(status, message)
  local kind = status == 429 and "rate_limit_error" or (status >= 500 and "server_error" or "invalid_request_error")
  return encode({ error = { message = message, type = kind, param = null, code = null } })
end

-- The OpenAI usage object: prompt_tokens counts cached tokens too, and
-- completion_tokens the reasoning tokens (as OpenAI and DeepSeek count).
-- OpenRouter adds cache writes (prompt_tokens_details.cache_write_tokens)
-- and what it billed (cost, USD); DeepSeek counts cached tokens as
-- prompt_cache_hit_tokens (server option openai.deepseek: that name alone,
-- as some of its proxies send it).
local function openai_usage(ctx)
  local u = ctx.usage
  local scripted = ctx.reply and ctx.reply.usage or {}
  local r = scripted.reasoning or 0
  local out = { prompt_tokens = u.input, completion_tokens = u.output, total_tokens = u.input + u.output,
           prompt_tokens_details = { cached_tokens = u.cached, audio_tokens = 0,
                                     cache_write_tokens = scripted.cache_write },
           completion_tokens_details = { reasoning_tokens = r, audio_tokens = 0,
                                         accepted_prediction_tokens = 0, rejected_prediction_tokens = 0 },
           cost = scripted.cost }
  if ctx.deepseek then
    out.prompt_tokens_details = nil
    out.prompt_cache_hit_tokens, out.prompt_cache_miss_tokens = u.cached, u.input - u.cached
  end
  return out
end

-- The reply's OpenAI-only fields, with their defaults.
local function openai_extras(ctx)
  local r = ctx.reply or {}
  local finish = r.finish_reason or (#ctx.calls > 0 and "tool_calls" or "stop")
  return r, finish, r.reasoning_field or (ctx.groq and "reasoning") or "reasoning_content"
end

-- Gemini's extra_content for call i, when the script gave it a signature.
local function extra_content(ctx, i)
  local tc = ctx.reply and ctx.reply.tool_calls and ctx.reply.tool_calls[i]
  local sig = type(tc) == "table" and tc.thought_signature
  if sig then return { google = { thought_signature = sig } } end
  return nil
end

-- Remembers what a follow-up must send back with the calls of this reply
-- (the real servers check it: see openai.validate). Mistral and Groq check
-- none of it.
local function remember_calls(self, ctx)
  local r = ctx.reply or {}
  if ctx.mistral or ctx.groq then return end
  for i, c in ipairs(ctx.calls) do
    local tc = r.tool_calls and r.tool_calls[i]
    local sig = type(tc) == "table" and tc.thought_signature or nil
    if r.reasoning or sig or r.reasoning_details then
      self._openai_calls = self._openai_calls or {}
      self._openai_calls[c.id] = { reasoning = not r.reasoning_details and r.reasoning or nil, signature = sig,
                                   details = r.reasoning_details, name = c.name }
    end
  end
end

-- The text of OpenRouter reasoning_details' text entries, joined.
local function details_text(list)
  local parts = {}
  for _, d in ipairs(list) do
    if d.type == "reasoning.text" and d.text then parts[#parts + 1] = d.text end
  end
  return table.concat(parts)
end

-- Mistral's thinking chunk of a reply's reasoning text.
local function thinking_chunk(text, signature)
  return { type = "thinking", thinking = { { type = "text", text = text } }, signature = signature }
end

function openai.completion(ctx)
  local r, finish, rfield = openai_extras(ctx)
  local msg = { role = "assistant", content = ctx.text ~= "" and ctx.text or null, refusal = r.refusal or null }
  if ctx.mistral then
    msg.refusal = nil
    if r.reasoning then
      msg.content = { thinking_chunk(r.reasoning, r.signature) }
      if ctx.text ~= "" then msg.content[2] = { type = "text", text = ctx.text } end
    end
  elseif r.reasoning_details then
    msg.reasoning = details_text(r.reasoning_details)
    msg.reasoning_details = r.reasoning_details
  elseif r.reasoning then
    msg[rfield] = r.reasoning
  end
  if #ctx.calls > 0 then
    msg.tool_calls = {}
    for i, c in ipairs(ctx.calls) do
      msg.tool_calls[i] = c.custom and { id = c.id, type = "custom", custom = { name = c.name, input = c.args } }
        or { id = c.id, type = "function", ["function"] = { name = c.name, arguments = c.args },
             extra_content = extra_content(ctx, i) }
    end
  elseif ctx.text == "" and not r.refusal and not (ctx.mistral and r.reasoning) then
    msg.content = ""
  end
  return encode({
    id = ctx.id, object = "chat.completion", created = ctx.created, model = ctx.model,
    choices = { { index = 0, message = msg, logprobs = null, finish_reason = finish } },
    usage = openai_usage(ctx), service_tier = ctx.tier,
  })
end

local function sse_data(obj)
  return "data: " .. (type(obj) == "string" and obj or encode(obj)) .. "\n\n"
end

-- The SSE events of a streamed completion, one HTTP chunk each except the
-- tail (finish, usage and [DONE] share one chunk, to exercise parsers).
-- With `truncate`, the stream stops before the finish chunk. Reasoning
-- deltas come first, as DeepSeek sends them; with call_index = false each
-- call is one delta without an index, as Gemini's endpoint sends them.
function openai.stream(ctx, truncate)
  local function chunk(delta, finish)
    return sse_data({ id = ctx.id, object = "chat.completion.chunk", created = ctx.created,
                      model = ctx.model, service_tier = ctx.tier,
                      choices = { { index = 0, delta = delta, logprobs = null,
                                    finish_reason = finish or null } } })
  end
  local r, finish, rfield = openai_extras(ctx)
  local chunks = {}
  chunks[1] = chunk({ role = "assistant", content = ctx.text ~= "" and "" or null })
  if ctx.mistral and r.reasoning then
    -- thinking chunks, the signature on the last; then the text as chunks
    local pieces = split(r.reasoning, 3)
    for i, piece in ipairs(pieces) do
      chunks[#chunks + 1] = chunk({ content = { thinking_chunk(piece, i == #pieces and r.signature or nil) } })
    end
    for _, piece in ipairs(ctx.text_pieces) do
      chunks[#chunks + 1] = chunk({ content = { { type = "text", text = piece } } })
    end
  elseif r.reasoning_details then
    for _, d in ipairs(r.reasoning_details) do
      if d.type == "reasoning.text" then
        local pieces = split(d.text or "", 3)
        if #pieces == 0 then pieces[1] = "" end
        for i, piece in ipairs(pieces) do
          local e = { type = d.type, text = piece, format = d.format, index = d.index or 0 }
          if i == #pieces then e.signature, e.id = d.signature, d.id end
          chunks[#chunks + 1] = chunk({ reasoning = piece, reasoning_details = { e } })
        end
      else
        chunks[#chunks + 1] = chunk({ reasoning_details = { d } })
      end
    end
  else
    for _, piece in ipairs(split(r.reasoning or "", 3)) do chunks[#chunks + 1] = chunk({ [rfield] = piece }) end
  end
  if not (ctx.mistral and r.reasoning) then
    for _, piece in ipairs(ctx.text_pieces) do chunks[#chunks + 1] = chunk({ content = piece }) end
  end
  for _, piece in ipairs(split(r.refusal or "", 2)) do chunks[#chunks + 1] = chunk({ refusal = piece }) end
  for i, c in ipairs(ctx.calls) do
    if c.custom then
      -- a custom tool's call: named first, its input in pieces (the shape
      -- openai/openai-openapi#576 records; the schema has no custom chunk)
      chunks[#chunks + 1] = chunk({ tool_calls = { { index = i - 1, id = c.id, type = "custom",
        custom = { name = c.name, input = "" } } } })
      for _, piece in ipairs(split(c.args, 3)) do
        chunks[#chunks + 1] = chunk({ tool_calls = { { index = i - 1, custom = { input = piece } } } })
      end
    elseif r.call_index == false then
      chunks[#chunks + 1] = chunk({ tool_calls = { { id = c.id, type = "function",
        ["function"] = { name = c.name, arguments = c.args }, extra_content = extra_content(ctx, i) } } })
    else
      chunks[#chunks + 1] = chunk({ tool_calls = { { index = i - 1, id = c.id, type = "function",
        ["function"] = { name = c.name, arguments = "" }, extra_content = extra_content(ctx, i) } } })
      for _, piece in ipairs(split(c.args, 3)) do
        chunks[#chunks + 1] = chunk({ tool_calls = { { index = i - 1, ["function"] = { arguments = piece } } } })
      end
    end
  end
  if truncate then return chunks end
  if ctx.mistral then -- the usage rides on the finish chunk, unasked
    chunks[#chunks + 1] = sse_data({ id = ctx.id, object = "chat.completion.chunk", created = ctx.created,
      model = ctx.model, choices = { { index = 0, delta = { content = "" }, finish_reason = finish } },
      usage = openai_usage(ctx), service_tier = ctx.tier }) .. (r.done == false and "" or "data: [DONE]\n\n")
    return chunks
  end
  chunks[#chunks + 1] = chunk({}, finish)
    .. sse_data({ id = ctx.id, object = "chat.completion.chunk", created = ctx.created,
                  model = ctx.model, choices = EMPTY, usage = openai_usage(ctx), service_tier = ctx.tier })
    .. (r.done == false and "" or "data: [DONE]\n\n")
  return chunks
end

-- A 400 with the body a real server gives.
local function openai_reject(message, param, code, kind)
  return { status = 400, headers = JSON_HEADERS, body = encode({ error = {
    message = message, type = kind or "invalid_request_error", param = param or null, code = code or null } }) }
end

-- What both OpenAI APIs refuse in a custom tool's format: a type other
-- than text or grammar, a grammar without its syntax (lark or regex) or
-- definition. Chat nests the grammar's fields under `grammar` (`nested`).
local function custom_format_error(f, where, nested)
  if f == nil then return nil end -- (free text, the default)
  if type(f) ~= "table" or (f.type ~= "text" and f.type ~= "grammar") then
    return openai_reject(("Invalid value: '%s'. Supported values are: 'text' and 'grammar'."):format(
      tostring(type(f) == "table" and f.type or f)), where .. ".type", "invalid_value")
  end
  if f.type == "text" then return nil end
  local g = nested and f.grammar or f
  local at = nested and where .. ".grammar" or where
  if type(g) ~= "table" then
    return openai_reject(("Missing required parameter: '%s'."):format(at), at, "missing_required_parameter")
  end
  if g.syntax ~= "lark" and g.syntax ~= "regex" then
    return openai_reject(("Invalid value: '%s'. Supported values are: 'lark' and 'regex'."):format(tostring(g.syntax)),
      at .. ".syntax", "invalid_value")
  end
  if type(g.definition) ~= "string" then
    return openai_reject(("Missing required parameter: '%s.definition'."):format(at), at .. ".definition",
      "missing_required_parameter")
  end
  return nil
end

-- Checks a request the way the real services do, for what tide must get
-- right: nil when it passes, else the error response.
--   * OpenAI reasoning models (server option openai.reasoning_model) reject
--     max_tokens and a temperature other than 1.
--   * DeepSeek's thinking mode rejects an assistant tool-call message that
--     lacks the reasoning_content it came with.
--   * Gemini rejects a replayed call without its thought signature.
-- Whether two decoded JSON values are the same.
local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- What Mistral's API documents, and refuses anything else with a 422.
local MISTRAL_BODY = {}
for k in ([[model temperature top_p max_tokens stream stop random_seed metadata messages response_format
  tools tool_choice presence_penalty frequency_penalty n prediction parallel_tool_calls reasoning_effort
  prompt_mode guardrails prompt_cache_key safe_prompt]]):gmatch("%S+") do MISTRAL_BODY[k] = true end
local MISTRAL_MESSAGE = {
  system = { role = true, content = true },
  user = { role = true, content = true },
  assistant = { role = true, content = true, tool_calls = true, prefix = true },
  tool = { role = true, content = true, tool_call_id = true, name = true },
}

local function mistral_forbidden(loc, input)
  return { status = 422, headers = JSON_HEADERS, body = encode({ object = "error", message = { detail = { {
    type = "extra_forbidden", loc = loc, msg = "Extra inputs are not permitted", input = input } } },
    type = "invalid_request_error", param = null, code = null }) }
end

-- Mistral's own checks of a chat request.
local function mistral_validate(body)
  local keys = {}
  for k in pairs(body) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    if not MISTRAL_BODY[k] then return mistral_forbidden({ "body", k }, body[k]) end
  end
  for i, m in ipairs(type(body.messages) == "table" and body.messages or {}) do
    local allowed = type(m) == "table" and MISTRAL_MESSAGE[m.role]
    if allowed then
      local mk = {}
      for k in pairs(m) do mk[#mk + 1] = k end
      table.sort(mk)
      for _, k in ipairs(mk) do
        if not allowed[k] then return mistral_forbidden({ "body", "messages", i - 1, m.role, k }, m[k]) end
      end
      local ids = {}
      if m.role == "tool" then ids[1] = m.tool_call_id end
      for _, c in ipairs(type(m.tool_calls) == "table" and m.tool_calls or {}) do ids[#ids + 1] = c.id end
      for _, id in ipairs(ids) do
        if type(id) ~= "string" or not id:match("^%w%w%w%w%w%w%w%w%w$") then
          return { status = 400, headers = JSON_HEADERS, body = encode({ object = "error",
            message = ("Tool call id was %s but must be a-z, A-Z, 0-9, with a length of 9."):format(tostring(id)),
            type = "invalid_request_message_order", param = null, code = "3230" }) }
        end
      end
    end
  end
  return nil
end

function openai.validate(self, req)
  local body = type(req.json) == "table" and req.json or {}
  local o = self._opts.openai or {}
  if o.mistral then return mistral_validate(body) end
  for i, t in ipairs(type(body.tools) == "table" and body.tools or {}) do
    if type(t) == "table" and t.type == "custom" then
      local where = ("tools[%d].custom"):format(i - 1)
      if type(t.custom) ~= "table" or type(t.custom.name) ~= "string" then
        return openai_reject(("Missing required parameter: '%s.name'."):format(where), where .. ".name",
          "missing_required_parameter")
      end
      local bad = custom_format_error(t.custom.format, where .. ".format", true)
      if bad then return bad end
    end
  end
  if o.dashscope and body.stream ~= true and body.enable_thinking ~= false then
    return { status = 400, headers = JSON_HEADERS, body = encode({ error = { code = "invalid_parameter_error",
      param = null, message = "parameter.enable_thinking must be set to false for non-streaming calls",
      type = "invalid_request_error" }, id = "chatcmpl-mock", request_id = "mock-dashscope-request" }) }
  end
  if o.groq then
    for i, m in ipairs(type(body.messages) == "table" and body.messages or {}) do
      for _, k in ipairs { "reasoning_content", "reasoning_details" } do
        if type(m) == "table" and m[k] ~= nil then
          return { status = 400, headers = JSON_HEADERS, body = encode({ error = {
            message = ("'messages.%d' : for 'role:%s' the following must be satisfied[('messages.%d' : "
              .. "property '%s' is unsupported)]"):format(i - 1, tostring(m.role), i - 1, k),
            type = "invalid_request_error" } }) }
        end
      end
    end
    return nil
  end
  if o.reasoning_model then
    if body.max_tokens ~= nil then
      return openai_reject("Unsupported parameter: 'max_tokens' is not supported with this model. "
        .. "Use 'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
    end
    if body.temperature ~= nil and body.temperature ~= 1 then
      return openai_reject(("Unsupported value: 'temperature' does not support %s with this model. "
        .. "Only the default (1) value is supported."):format(tostring(body.temperature)),
        "temperature", "unsupported_value")
    end
  end
  -- Images go in user messages only (a tool's image, OpenAI's own answer
  -- to one in a tool message). Looked for only in a body that has one.
  if type(req.body) == "string" and req.body:find('"image_url"', 1, true) then
    for i, m in ipairs(type(body.messages) == "table" and body.messages or {}) do
      if type(m) == "table" and m.role ~= "user" and type(m.content) == "table" then
        for _, part in ipairs(m.content) do
          if type(part) == "table" and part.type == "image_url" then
            return openai_reject(("Invalid 'messages[%d]'. Image URLs are only allowed for messages with role "
              .. "'user', but this message with role '%s' contains an image URL."):format(i - 1, tostring(m.role)),
              ("messages[%d]"):format(i - 1), "invalid_value")
          end
        end
      end
    end
  end
  local sent = self._openai_calls
  if not sent then return nil end
  for _, m in ipairs(type(body.messages) == "table" and body.messages or {}) do
    if type(m) == "table" and m.role == "assistant" and type(m.tool_calls) == "table" then
      for _, c in ipairs(m.tool_calls) do
        local want = type(c) == "table" and sent[c.id]
        if want and want.details and not same(m.reasoning_details, want.details) then
          local upstream = ('{\n  "error": {\n    "code": 400,\n    "message": "Function call is missing a '
            .. 'thought_signature in functionCall parts. This is required for tools to work correctly, and '
            .. 'missing thought_signature may lead to degraded model performance. Additional data, function '
            .. 'call `default_api:%s` , position 2. Please refer to https://ai.google.dev/gemini-api/docs/'
            .. 'thought-signatures for more details.",\n    "status": "INVALID_ARGUMENT"\n  }\n}\n'):format(want.name)
          return { status = 400, headers = JSON_HEADERS, body = encode({ error = {
            message = "Provider returned error", code = 400, metadata = {
              raw = "Gemini models require OpenRouter reasoning details to be preserved in each request. "
                .. "Please refer to our docs: https://openrouter.ai/docs/guides/best-practices/"
                .. "reasoning-tokens#preserving-reasoning-blocks. Upstream error: " .. upstream,
              provider_name = "Google AI Studio" } }, user_id = "user_mock" }) }
        end
        if want and want.reasoning and m.reasoning_content ~= want.reasoning then
          return openai_reject("The `reasoning_content` in the thinking mode must be passed back to the API.",
            nil, "invalid_request_error")
        end
        local extra = want and want.signature and type(c.extra_content) == "table" and c.extra_content.google
        if want and want.signature and not (type(extra) == "table" and extra.thought_signature == want.signature) then
          return { status = 400, headers = JSON_HEADERS, body = encode({ { error = { code = 400,
            message = ("Function call is missing a thought_signature in functionCall parts. This is required "
              .. "for tools to work correctly, and missing thought_signature may lead to degraded model "
              .. "performance. Additional data, function call `default_api:%s`. Please refer to "
              .. "https://ai.google.dev/gemini-api/docs/thought-signatures for more details."):format(want.name),
            status = "INVALID_ARGUMENT" } } }) }
        end
      end
    end
  end
  return nil
end
openai.remember_calls = remember_calls

function openai.malformed_stream(ctx)
  return {
    sse_data({ id = ctx.id, object = "chat.completion.chunk", created = ctx.created, model = ctx.model,
               choices = { { index = 0, delta = { role = "assistant", content = "" }, finish_reason = null } } }),
    'data: {"id":"' .. ctx.id .. '","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"oo\n\n',
    "data: [DONE]\n\n",
  }
end

-- ----------------------------------------------------- Anthropic rendering

local anthropic = {}

function anthropic.error_body(status, message)
  local kind = status == 429 and "rate_limit_error" or (status == 529 and "overloaded_error")
    or (status >= 500 and "api_error" or "invalid_request_error")
  return encode({ type = "error", error = { type = kind, message = message } })
end

-- The mock scripts usage in tide's neutral terms (`input` is the whole
-- prompt, as OpenAI counts it); Anthropic's input_tokens is only the part
-- after the last cache breakpoint, so the cached and cache-written tokens
-- come out of it. Unscripted, they are what the mock's prompt cache read
-- and wrote (anthropic.cache below).
local function anthropic_usage(ctx, output)
  local u = ctx.usage
  local scripted = type(ctx.reply.usage) == "table" and ctx.reply.usage.cache_write
  local write = scripted or ctx.cache_write or 0
  local out = { input_tokens = math.max(0, u.input - u.cached - write), output_tokens = output,
                cache_read_input_tokens = u.cached, cache_creation_input_tokens = write, service_tier = ctx.tier }
  if not scripted and ctx.cache_write then
    out.cache_creation = { ephemeral_5m_input_tokens = write - ctx.cache_write_1h,
                           ephemeral_1h_input_tokens = ctx.cache_write_1h }
  end
  if ctx.server_counts then
    out.server_tool_use = { web_search_requests = ctx.server_counts.web_search or 0,
                            web_fetch_requests = ctx.server_counts.web_fetch or 0 }
  end
  -- thinking's share of output_tokens (usage.reasoning scripts it)
  if type(ctx.reply.usage) == "table" and ctx.reply.usage.reasoning then
    out.output_tokens_details = { thinking_tokens = ctx.reply.usage.reasoning }
  end
  return out
end

-- Signatures and redacted data the mock hands out, and checks when they
-- come back: a digest of what they cover stands in for the real service's
-- cryptographic signature, so that any change to a block is caught without
-- the mock keeping state.
local function thinking_signature(text)
  return "EqMock" .. core.hash("thinking|" .. text)
end

local function redacted_data(payload)
  return "EmwMock" .. payload .. "." .. core.hash("redacted|" .. payload)
end

local function redacted_ok(data)
  local payload, digest = data:match("^EmwMock(.*)%.(%x+)$")
  return payload ~= nil and digest == core.hash("redacted|" .. payload)
end

-- Whether a request enables extended thinking (with a budget, or adaptive).
local function thinking_enabled(json)
  return type(json.thinking) == "table" and (json.thinking.type == "enabled" or json.thinking.type == "adaptive")
end

-- With display "omitted" the API sends a thinking block's signature and no
-- text: the signature still covers the text, so the mock marks it as one
-- that cannot be checked against what comes back.
local function omitted_signature(text)
  return "EqMockOmit" .. core.hash("omitted|" .. text)
end

local function signature_ok(b)
  if b.thinking == "" and type(b.signature) == "string" and b.signature:match("^EqMockOmit%x+$") then return true end
  return b.signature == thinking_signature(b.thinking)
end

-- The thinking blocks of a reply, in order. The real service answers with
-- thinking only when the request enables it, and then always opens the turn
-- with a thinking block: `reply.reasoning` (a string, or a list of strings,
-- `{ text = ... }` and `{ redacted = data | true }`) says which; false
-- means none.
local function anthropic_thinking(ctx)
  if not thinking_enabled(ctx.json) then return {} end
  local r = ctx.reply.reasoning
  if r == false then return {} end
  if r == nil then r = { "Let me think about this." } end
  if type(r) == "string" then r = { r } end
  local out = {}
  for i, item in ipairs(r) do
    if type(item) == "string" then item = { text = item } end
    if type(item) ~= "table" then error(("mock: reasoning[%d] must be a string or a table"):format(i), 0) end
    if item.redacted then
      local payload = item.redacted == true and ("r" .. i) or tostring(item.redacted)
      out[i] = { type = "redacted_thinking", data = redacted_data(payload) }
    elseif ctx.json.thinking.display == "omitted" then
      out[i] = { type = "thinking", thinking = "", signature = omitted_signature(tostring(item.text or "")) }
    else
      local text = tostring(item.text or "")
      out[i] = { type = "thinking", thinking = text, signature = item.signature or thinking_signature(text) }
    end
  end
  return out
end

-- ------------------------------------------------ Anthropic server tools
--
-- The tools the API runs itself (platform.claude.com, "Server tools" and
-- "Web search tool"; anthropic-sdk-python's ServerToolUseBlock,
-- WebSearchToolResultBlock, WebFetchToolResultBlock and
-- CitationsWebSearchResultLocation). A reply scripts them as
-- `server_tools = { { name = "web_search" | "web_fetch", input, before,
-- pending } }`: each is the server's use of the tool (after the text
-- `before`), then its result, unless `pending` (the turn paused before it
-- ran: script `stop_reason = "pause_turn"`); the reply's text comes after
-- them, citing the first search result. A request that continues a paused
-- turn (its last message the assistant's, ending with a use that has no
-- result) gets that result first, as the API runs it then. Ids, encrypted
-- contents and indexes are digests of what they cover, so that a block
-- sent back altered is caught without the mock keeping state.
--
-- Tools that run in a code execution container (code_execution_*, and web
-- search and web fetch from their _20260209 versions) put the reply's
-- `container` ({ id, expires_at }); the request's `container` names one to
-- reuse, and a paused turn of such a tool is refused unless it goes on in
-- its container (the mock's wording: the API's own is not documented).

-- Whether a server tool's type runs in a container.
local function in_container(ty)
  if type(ty) ~= "string" then return false end
  if ty:match("^code_execution_") then return true end
  local date = ty:match("^web_search_(%d+)$") or ty:match("^web_fetch_(%d+)$")
  return date ~= nil and tonumber(date) >= 20260209
end

-- The container a request runs in: the one it names, else a new one when
-- it offers a tool that needs one; nil otherwise.
local function container_of(ctx)
  local json = ctx.json
  local needs = false
  for _, t in ipairs(type(json.tools) == "table" and json.tools or {}) do
    if type(t) == "table" and in_container(t.type) then needs = true end
  end
  if not needs then return nil end
  local id = type(json.container) == "string" and json.container or ("container_mock" .. ctx.n)
  return { id = id, expires_at = "2026-12-06T13:00:00Z" }
end

-- JSON with sorted keys, for the digests.
local function canon(v)
  if type(v) ~= "table" then return cjson.encode(v) end
  if #v > 0 or next(v) == nil then
    local out = {}
    for i, x in ipairs(v) do out[i] = canon(x) end
    return "[" .. table.concat(out, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  for i, k in ipairs(keys) do keys[i] = cjson.encode(k) .. ":" .. canon(v[k]) end
  return "{" .. table.concat(keys, ",") .. "}"
end

local function server_id(name, input)
  return "srvtoolu_mock" .. core.hash("use|" .. tostring(name) .. "|" .. canon(input))
end

local function encrypted(what, ...) return "EncMock" .. core.hash(what .. "|" .. table.concat({ ... }, "|")) end

-- The result block of a server tool's use, as the API gives it.
local function server_result(use)
  local input = type(use.input) == "table" and use.input or {}
  local content
  if use.name == "web_search" then
    local query = tostring(input.query or "")
    content = {}
    for i = 1, 2 do
      local url = ("https://search.example/%d/%s"):format(i, query:gsub("%W", "-"))
      local title = ("%s, result %d"):format(query, i)
      content[i] = { type = "web_search_result", url = url, title = title, page_age = null,
                     encrypted_content = encrypted("content", url, title) }
    end
  elseif use.name == "web_fetch" then
    local url = tostring(input.url or "")
    content = { type = "web_fetch_result", url = url, retrieved_at = "2026-12-06T12:00:00Z",
      content = { type = "document", title = url, citations = null,
        source = { type = "text", media_type = "text/plain", data = "The page at " .. url .. "." } } }
  else
    error(("mock: server tool %q is not mocked (web_search, web_fetch)"):format(tostring(use.name)), 0)
  end
  return { type = use.name .. "_tool_result", tool_use_id = use.id, content = content }
end

-- A citation of a search result, on the text after it.
local function citation_of(result)
  return { type = "web_search_result_location", url = result.url, title = result.title,
           cited_text = result.title, encrypted_index = encrypted("index", result.url) }
end

-- The request's messages with consecutive assistant turns combined into
-- one, as the API reads them.
local function combined(msgs)
  local out = {}
  for _, m in ipairs(msgs) do
    local last = out[#out]
    local content = type(m) == "table" and m.content
    if type(content) == "string" then content = { { type = "text", text = content } } end
    if type(m) == "table" and m.role == "assistant" and last and last.role == "assistant" then
      for _, b in ipairs(type(content) == "table" and content or {}) do last.content[#last.content + 1] = b end
    else
      local copy = {}
      for i, b in ipairs(type(content) == "table" and content or {}) do copy[i] = b end
      out[#out + 1] = { role = type(m) == "table" and m.role or nil, content = copy }
    end
  end
  return out
end

-- The server tool use a request leaves to run: the last block of a last
-- assistant message, a use without its result.
local function pending_use(json)
  local msgs = combined(type(json.messages) == "table" and json.messages or {})
  local last = msgs[#msgs]
  local b = last and last.role == "assistant" and last.content[#last.content]
  if type(b) == "table" and b.type == "server_tool_use" then return b end
  return nil
end

-- A reply's server blocks, in order (the pending use's result first), the
-- citations the text after them gets, and the requests made, by tool.
-- The first image block of a user message (or of a tool_result in one)
-- that the API would refuse, as its error message; nil when all are good.
local ANTHROPIC_IMAGE_TYPES = { ["image/jpeg"] = true, ["image/png"] = true, ["image/gif"] = true,
  ["image/webp"] = true }
local function image_refusal(json)
  local function check(b, where)
    if type(b) ~= "table" or b.type ~= "image" then return nil end
    local src = b.source
    if type(src) ~= "table" then return where .. ".source: Field required" end
    if src.type == "base64" then
      if not ANTHROPIC_IMAGE_TYPES[src.media_type] then
        return where .. (".source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or "
          .. "'image/webp'")
      end
      if type(src.data) ~= "string" or src.data == "" then return where .. ".source.base64.data: Field required" end
    elseif src.type ~= "url" or type(src.url) ~= "string" then
      return where .. ".source: Input tag does not match any of the expected tags: 'base64', 'url', 'file'"
    end
    return nil
  end
  for i, m in ipairs(type(json.messages) == "table" and json.messages or {}) do
    if type(m) == "table" and m.role == "user" and type(m.content) == "table" then
      for j, b in ipairs(m.content) do
        local where = ("messages.%d.content.%d"):format(i - 1, j - 1)
        local e = check(b, where)
        if e then return e end
        if type(b) == "table" and b.type == "tool_result" and type(b.content) == "table" then
          for k, inner in ipairs(b.content) do
            e = check(inner, ("%s.content.%d"):format(where, k - 1))
            if e then return e end
          end
        end
      end
    end
  end
  return nil
end

-- Whether a request offers a tool the API runs itself (it has a type).
local function offers_server_tool(json)
  for _, t in ipairs(type(json.tools) == "table" and json.tools or {}) do
    if type(t) == "table" and t.type ~= nil then return true end
  end
  return false
end

local function anthropic_server(ctx)
  if ctx.server_blocks then return ctx.server_blocks, ctx.server_cites end
  local blocks, cites, counts = {}, nil, {}
  if not (ctx.reply.server_tools or offers_server_tool(ctx.json)) then
    ctx.server_blocks = blocks -- (no server tool: nothing to look for in the messages)
    return blocks, nil
  end
  local function ran(use)
    local r = server_result(use)
    blocks[#blocks + 1] = r
    counts[use.name] = (counts[use.name] or 0) + 1
    if use.name == "web_search" and not cites then cites = { citation_of(r.content[1]) } end
  end
  local pending = pending_use(ctx.json)
  if pending then ran(pending) end
  local offered = {}
  for _, t in ipairs(type(ctx.json.tools) == "table" and ctx.json.tools or {}) do
    if type(t) == "table" and type(t.type) == "string" and type(t.name) == "string" then offered[t.name] = true end
  end
  for i, st in ipairs(ctx.reply.server_tools or {}) do
    if not offered[st.name] then
      error(("mock: server_tools[%d] uses %q, which the request does not offer"):format(i, tostring(st.name)), 0)
    end
    if st.before then blocks[#blocks + 1] = { type = "text", text = st.before } end
    local input = st.input or {}
    local use = { type = "server_tool_use", id = server_id(st.name, input), name = st.name, input = input,
                  caller = { type = "direct" } }
    blocks[#blocks + 1] = use
    if not st.pending then ran(use) end
  end
  ctx.server_blocks, ctx.server_cites = blocks, cites
  if next(counts) then ctx.server_counts = counts end
  return blocks, cites
end

-- Checks the server tools' blocks a request sends back: each use is the
-- mock's own and is followed by its result (but for a paused turn's last
-- use), each result and citation unaltered, and no tool_result answers a
-- server's use. Returns the 400, or nil.
local function server_refusal(json)
  local msgs = combined(type(json.messages) == "table" and json.messages or {})
  local pending = pending_use(json)
  if pending and json.container == nil then
    for _, t in ipairs(type(json.tools) == "table" and json.tools or {}) do
      if type(t) == "table" and t.name == pending.name and in_container(t.type) then
        return ("container: the paused `%s` runs in a container: continue it with the response's "
          .. "container id"):format(tostring(pending.name))
      end
    end
  end
  local seen = {}
  for i, m in ipairs(msgs) do
    local content = m.content
    for j, b in ipairs(content) do
      local where = ("messages.%d.content.%d"):format(i - 1, j - 1)
      if type(b) ~= "table" then goto next_block end
      if b.type == "server_tool_use" then
        if b.id ~= server_id(b.name, b.input) then
          return ("%s: `server_tool_use` block with id `%s` was not produced by the server"):format(where, tostring(b.id))
        end
        local nxt = content[j + 1]
        local last = i == #msgs and j == #content
        if not last and not (type(nxt) == "table" and nxt.tool_use_id == b.id
            and tostring(nxt.type):match("_tool_result$")) then
          return ("%s: `%s` tool use with id `%s` was found without a corresponding `%s_tool_result` block"):format(
            where, tostring(b.name), b.id, tostring(b.name))
        end
        seen[b.id] = true
      elseif type(b.type) == "string" and b.type:match("_tool_result$") and b.type ~= "tool_result" then
        if not seen[b.tool_use_id] then
          return ("%s: `%s` block with tool_use_id `%s` does not follow its server_tool_use"):format(where, b.type,
            tostring(b.tool_use_id))
        end
        for _, r in ipairs(type(b.content) == "table" and b.content or {}) do
          if type(r) == "table" and r.type == "web_search_result"
              and r.encrypted_content ~= encrypted("content", r.url, r.title) then
            return where .. ": invalid `encrypted_content` in `web_search_result`"
          end
        end
      elseif b.type == "text" then
        for _, c in ipairs(type(b.citations) == "table" and b.citations or {}) do
          if type(c) == "table" and c.type == "web_search_result_location"
              and c.encrypted_index ~= encrypted("index", c.url) then
            return where .. ": invalid `encrypted_index` in citation"
          end
        end
      elseif b.type == "tool_result" and type(b.tool_use_id) == "string" and seen[b.tool_use_id] then
        return ("%s: `tool_result` block for `%s`, a server tool's use: the server runs it"):format(where,
          b.tool_use_id)
      end
      ::next_block::
    end
  end
  return nil
end

-- The stop reason: scripted (`stop_reason`: "max_tokens", "refusal",
-- "pause_turn", ...), else what the content says.
local function anthropic_stop(ctx)
  return ctx.reply.stop_reason or (#ctx.calls > 0 and "tool_use" or "end_turn")
end

-- A refusal comes with structured details (the SDK's RefusalStopDetails).
local function anthropic_stop_details(stop, ctx)
  if stop ~= "refusal" then return null end
  return { type = "refusal", category = null, explanation = ctx.reply.refusal or null }
end

-- ------------------------------------------------ Anthropic's prompt cache
--
-- The mock caches prompts as the API does, so that a spec sees what a
-- request's breakpoints buy. A request is its blocks in the API's order
-- (tools, then system, then each message's content blocks) and its
-- breakpoints: `cache_control` on a block, and the request's top-level
-- `cache_control` (automatic caching) on its last block. A breakpoint's
-- prefix (every block up to it) is read from the cache when a request
-- before wrote it (a read looks back 20 blocks before each breakpoint),
-- and written otherwise, for five minutes or an hour from its last use; a
-- prefix shorter than the model's minimum (the server option
-- anthropic.cache_min_tokens, default 1024) is not cached. Tokens are the
-- mock's own count: a quarter of the bytes. The API's refusals come
-- first: more than four breakpoints, a ttl other than 5m and 1h, an hour's
-- breakpoint after a five minutes' one, a top-level ttl that differs from
-- the one on its block.

local CACHE_TTL_S = { ["5m"] = 300, ["1h"] = 3600 }
local CACHE_LOOKBACK = 20

-- The blocks of a request body (decoded) and its breakpoints: nil and the
-- API's refusal, or blocks ({ enc, path }) and breakpoints ({ index, ttl }).
local function cache_plan(json)
  local blocks, marks = {}, {}
  local function add(b, path)
    blocks[#blocks + 1] = { enc = encode(b), path = path }
    if type(b) == "table" and b.cache_control ~= nil then marks[#marks + 1] = { #blocks, b.cache_control } end
  end
  for i, t in ipairs(type(json.tools) == "table" and json.tools or {}) do add(t, ("tools.%d"):format(i - 1)) end
  if type(json.system) == "string" then
    add(json.system, "system")
  elseif type(json.system) == "table" then
    for i, b in ipairs(json.system) do add(b, ("system.%d"):format(i - 1)) end
  end
  for i, m in ipairs(type(json.messages) == "table" and json.messages or {}) do
    local content = type(m) == "table" and m.content
    if type(content) == "table" then
      for j, b in ipairs(content) do add(b, ("messages.%d.content.%d"):format(i - 1, j - 1)) end
    else
      add(content, ("messages.%d.content"):format(i - 1))
    end
  end
  local points = {}
  for _, mark in ipairs(marks) do
    local cc, path = mark[2], blocks[mark[1]].path
    if type(cc) ~= "table" or cc.type ~= "ephemeral" then
      return nil, path .. ".cache_control.type: Input should be 'ephemeral'"
    end
    local ttl = cc.ttl or "5m"
    if not CACHE_TTL_S[ttl] then return nil, path .. ".cache_control.ttl: Input should be '5m' or '1h'" end
    points[#points + 1] = { index = mark[1], ttl = ttl }
  end
  if json.cache_control ~= nil and #blocks > 0 then
    local cc = json.cache_control
    local ttl = type(cc) == "table" and (cc.ttl or "5m")
    if type(cc) ~= "table" or cc.type ~= "ephemeral" or not CACHE_TTL_S[ttl] then
      return nil, "cache_control: Input should be a valid cache control (type 'ephemeral', ttl '5m' or '1h')"
    end
    local last = points[#points]
    if last and last.index == #blocks then
      if last.ttl ~= ttl then
        return nil, ("Top-level cache_control has ttl='%s' but the target block already has cache_control with "
          .. "ttl='%s'"):format(ttl, last.ttl)
      end
    else
      points[#points + 1] = { index = #blocks, ttl = ttl }
    end
  end
  if #points > 4 then
    return nil, ("A maximum of 4 blocks with cache_control may be provided. Found %d."):format(#points)
  end
  local seen_5m = false
  for _, pt in ipairs(points) do
    if pt.ttl == "5m" then
      seen_5m = true
    elseif seen_5m then
      return nil, blocks[pt.index].path .. ".cache_control.ttl: a ttl='1h' cache_control block must not come "
        .. "after a ttl='5m' cache_control block. Note that blocks are processed in the following order: "
        .. "`tools`, `system`, `messages`."
    end
  end
  return blocks, points
end

-- Reads and writes the mock's prompt cache for a request with
-- breakpoints: ctx.usage.cached, ctx.cache_write and ctx.cache_write_1h.
function anthropic.cache(self, json, ctx)
  local blocks, points = cache_plan(json)
  if not blocks or #points == 0 then return end
  local store = self._prompt_cache
  if not store then store = {}; self._prompt_cache = store end
  local now = core.hrtime() / 1e9
  local min = (self._opts.anthropic or {}).cache_min_tokens or 1024
  -- a key and a token count for the prefix ending at each block
  local keys, counts, key, bytes = {}, {}, tostring(json.model), 0
  for i, b in ipairs(blocks) do
    key = core.sha256(key .. "\0" .. b.enc)
    bytes = bytes + #b.enc
    keys[i], counts[i] = key, tokens(bytes)
  end
  local read = 0
  for _, pt in ipairs(points) do
    for j = pt.index, math.max(1, pt.index - CACHE_LOOKBACK + 1), -1 do
      local e = store[keys[j]]
      if e and e.expires > now then
        if counts[j] > read then read = counts[j] end
        e.expires = now + e.ttl_s -- (a read refreshes it)
        break
      end
    end
  end
  local written, hour, upto = 0, 0, read
  for _, pt in ipairs(points) do
    local n = counts[pt.index]
    if n > upto and n >= min then
      store[keys[pt.index]] = { expires = now + CACHE_TTL_S[pt.ttl], ttl_s = CACHE_TTL_S[pt.ttl] }
      written = written + (n - upto)
      if pt.ttl == "1h" then hour = hour + (n - upto) end
      upto = n
    end
  end
  local total = ctx.usage.input
  ctx.usage.cached = math.min(read, total)
  ctx.cache_write = math.min(written, total - ctx.usage.cached)
  ctx.cache_write_1h = math.min(hour, ctx.cache_write)
end

function anthropic.completion(ctx)
  local content = anthropic_thinking(ctx)
  local server, cites = anthropic_server(ctx)
  for _, b in ipairs(server) do content[#content + 1] = b end
  if ctx.text ~= "" then content[#content + 1] = { type = "text", text = ctx.text, citations = cites } end
  for _, c in ipairs(ctx.calls) do
    content[#content + 1] = { type = "tool_use", id = c.id, name = c.name, input = c.input }
  end
  local stop = anthropic_stop(ctx)
  return encode({
    id = ctx.id, type = "message", role = "assistant", model = ctx.model, container = container_of(ctx) or null,
    content = #content > 0 and content or EMPTY,
    stop_reason = stop, stop_sequence = null, stop_details = anthropic_stop_details(stop, ctx),
    usage = anthropic_usage(ctx, ctx.usage.output),
  })
end

local function event(name, obj)
  return "event: " .. name .. "\ndata: " .. (type(obj) == "string" and obj or encode(obj)) .. "\n\n"
end

local function message_start(ctx)
  return event("message_start", { type = "message_start", message = {
    id = ctx.id, type = "message", role = "assistant", model = ctx.model, content = EMPTY,
    stop_reason = null, stop_sequence = null, usage = anthropic_usage(ctx, 1) } })
end

-- With `truncate`, the stream stops before message_delta and message_stop.
function anthropic.stream(ctx, truncate)
  local server, cites = anthropic_server(ctx) -- (before message_start: its usage counts the searches)
  local chunks = { message_start(ctx), event("ping", { type = "ping" }) }
  local index = 0
  local function add(s) chunks[#chunks + 1] = s end
  -- One content block: its start, a delta per piece (delta_of(piece)), any
  -- last deltas, its stop.
  local function block(content_block, pieces, delta_of, last)
    add(event("content_block_start", { type = "content_block_start", index = index,
                                       content_block = content_block }))
    for _, piece in ipairs(pieces) do
      add(event("content_block_delta", { type = "content_block_delta", index = index,
                                         delta = delta_of(piece) }))
    end
    for _, d in ipairs(last or {}) do
      add(event("content_block_delta", { type = "content_block_delta", index = index, delta = d }))
    end
    add(event("content_block_stop", { type = "content_block_stop", index = index }))
    index = index + 1
  end
  -- Thinking streams as thinking_delta pieces, then its whole signature in
  -- one signature_delta just before the block stops; redacted thinking
  -- arrives whole in its block's start.
  for _, t in ipairs(anthropic_thinking(ctx)) do
    if t.type == "thinking" then
      block({ type = "thinking", thinking = "", signature = "" }, split(t.thinking, 3),
        function(piece) return { type = "thinking_delta", thinking = piece } end,
        { { type = "signature_delta", signature = t.signature } })
    else
      block(t, {})
    end
  end
  -- A server tool's use streams its input as input_json_delta pieces; a
  -- result comes whole at its start; citations come as citations_delta
  -- before the text they support.
  for _, b in ipairs(server) do
    if b.type == "server_tool_use" then
      block({ type = b.type, id = b.id, name = b.name, input = {}, caller = b.caller }, split(cjson.encode(b.input), 3),
        function(piece) return { type = "input_json_delta", partial_json = piece } end)
    elseif b.type == "text" then
      block({ type = "text", text = "" }, split(b.text, 2),
        function(piece) return { type = "text_delta", text = piece } end)
    else
      block(b, {})
    end
  end
  if ctx.text ~= "" then
    local first = {}
    for i, c in ipairs(cites or {}) do first[i] = { type = "citations_delta", citation = c } end
    add(event("content_block_start", { type = "content_block_start", index = index,
      content_block = { type = "text", text = "" } }))
    for _, d in ipairs(first) do
      add(event("content_block_delta", { type = "content_block_delta", index = index, delta = d }))
    end
    for _, piece in ipairs(ctx.text_pieces) do
      add(event("content_block_delta", { type = "content_block_delta", index = index,
        delta = { type = "text_delta", text = piece } }))
    end
    add(event("content_block_stop", { type = "content_block_stop", index = index }))
    index = index + 1
  end
  for _, c in ipairs(ctx.calls) do
    block({ type = "tool_use", id = c.id, name = c.name, input = {} }, split(c.args, 3),
      function(piece) return { type = "input_json_delta", partial_json = piece } end)
  end
  if truncate then return chunks end
  -- Current servers restate every count, cumulatively, in message_delta.
  local stop = anthropic_stop(ctx)
  add(event("message_delta", { type = "message_delta",
      delta = { stop_reason = stop, stop_sequence = null, stop_details = anthropic_stop_details(stop, ctx),
                container = container_of(ctx) or null },
      usage = anthropic_usage(ctx, ctx.usage.output) })
    .. event("message_stop", { type = "message_stop" }))
  return chunks
end

-- The real service's 400 for a request it refuses.
local function invalid_request(message)
  return { status = 400, headers = JSON_HEADERS,
           body = encode({ type = "error", error = { type = "invalid_request_error", message = message },
                           request_id = "req_mock_invalid" }) }
end

local THINKING_DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"

-- What structured outputs refuse in a schema: an object not closed (the
-- API's own message), and the bounds it does not take (this message is
-- the mock's wording; the API refuses them with a 400 too). nil for a
-- schema it takes.
local SCHEMA_REFUSED = { minimum = true, maximum = true, exclusiveMinimum = true, exclusiveMaximum = true,
  multipleOf = true, minLength = true, maxLength = true, maxItems = true, oneOf = true, pattern = true }
local function schema_refusal(s, depth)
  if type(s) ~= "table" or depth > 64 then return nil end
  local where = "output_config.format.schema: "
  if s.type == "object" or s.properties ~= nil then
    if s.additionalProperties == true then
      return where .. "For 'object' type, 'additionalProperties: true' is not supported. Please set "
        .. "'additionalProperties' to false"
    elseif s.additionalProperties ~= false then
      return where .. "For 'object' type, 'additionalProperties' must be explicitly set to false"
    end
  end
  for k, v in pairs(s) do
    if SCHEMA_REFUSED[k] or (k == "minItems" and v ~= 0 and v ~= 1) then
      return where .. ("'%s' is not supported"):format(k)
    end
  end
  for _, key in ipairs({ "properties", "$defs", "definitions" }) do
    if type(s[key]) == "table" then
      for _, sub in pairs(s[key]) do
        local e = schema_refusal(sub, depth + 1)
        if e then return e end
      end
    end
  end
  for _, key in ipairs({ "anyOf", "allOf" }) do
    for _, sub in ipairs(type(s[key]) == "table" and s[key] or {}) do
      local e = schema_refusal(sub, depth + 1)
      if e then return e end
    end
  end
  return schema_refusal(s.items, depth + 1)
end

-- The structured-output checks of a request: output_config.format (and
-- the beta name output_format, without its beta header), and a tool_choice
-- that forces a tool with thinking on or names no tool of the request.
local function structured_refusal(self, req, json)
  local o = self._opts.anthropic or {}
  local config = json.output_config
  local format = type(config) == "table" and config.format or nil
  if format ~= nil and format ~= null then
    if o.structured_outputs == false then
      return invalid_request("output_config.format: Extra inputs are not permitted")
    end
    if type(format) ~= "table" or format.type ~= "json_schema" or type(format.schema) ~= "table" then
      return invalid_request("output_config.format: Input tag does not match the expected tag 'json_schema'")
    end
    local e = schema_refusal(format.schema, 0)
    if e then return invalid_request(e) end
  end
  local beta = req.headers and req.headers["anthropic-beta"] or ""
  if json.output_format ~= nil and not beta:find("structured-outputs-2025-11-13", 1, true) then
    return invalid_request("output_format: Extra inputs are not permitted")
  end
  local choice = json.tool_choice
  if type(choice) == "table" and (choice.type == "any" or choice.type == "tool") then
    if thinking_enabled(json) then
      return invalid_request("Thinking may not be enabled when tool_choice forces tool use.")
    end
    if choice.type == "tool" then
      local found = false
      for _, t in ipairs(type(json.tools) == "table" and json.tools or {}) do
        if type(t) == "table" and t.name == choice.name then found = true end
      end
      if not found then
        return invalid_request(("tool_choice.name: Tool '%s' not found in tools"):format(tostring(choice.name)))
      end
    end
  end
  return nil
end

-- A reply to a request whose tool_choice forces a tool: a scripted reply
-- without calls becomes a call of the forced tool (for "any", the
-- request's last tool) whose input is the scripted text, as the real API
-- answers (no text beside it).
function anthropic.forced(json, reply)
  local choice = json.tool_choice
  if type(choice) ~= "table" or (choice.type ~= "tool" and choice.type ~= "any") then return reply end
  if reply.tool_calls and #reply.tool_calls > 0 then return reply end
  local name = choice.name
  if choice.type == "any" then
    local tools = type(json.tools) == "table" and json.tools or {}
    name = type(tools[#tools]) == "table" and tools[#tools].name or nil
  end
  if type(name) ~= "string" then return reply end
  local forced = copy(reply)
  forced.tool_calls = { { name = name, arguments = reply.text or "{}" } }
  forced.text = nil
  return forced
end

-- The API refuses a text block with nothing in it, or white space alone,
-- in any message (a tool_result's content included), in its own words.
local function blank_text_refusal(json)
  local function check(content)
    for _, b in ipairs(type(content) == "table" and content or {}) do
      if type(b) == "table" then
        if b.type == "text" and type(b.text) == "string" and not b.text:find("%S") then
          return b.text == "" and "messages: text content blocks must be non-empty"
            or "messages: text content blocks must contain non-whitespace text"
        end
        if b.type == "tool_result" then
          local why = check(b.content)
          if why then return why end
        end
      end
    end
  end
  for _, m in ipairs(type(json.messages) == "table" and json.messages or {}) do
    local why = type(m) == "table" and check(m.content)
    if why then return why end
  end
end

-- Checks a request the way the Messages API does where tide can get it
-- wrong: the thinking budget, thinking blocks sent back altered, and a tool
-- round whose assistant turn lost its thinking. Returns the 400 response,
-- or nil for a request the real service accepts.
function anthropic.validate(self, req)
  local json = req.json
  if type(json) ~= "table" then return nil end
  local refused = structured_refusal(self, req, json)
  if refused then return refused end
  -- (breakpoints are looked at only in a body that has one)
  if type(req.body) == "string" and req.body:find('"cache_control"', 1, true) then
    local blocks, why = cache_plan(json)
    if not blocks then return invalid_request(why) end
  end
  -- (only for a request that offers a server tool: the checks copy every
  -- message, a cost the benchmarks' floors would share and hide)
  local why = offers_server_tool(json) and server_refusal(json)
  if why then return invalid_request(why) end
  -- (looked for only in a body that has a text of white space at most)
  if type(req.body) == "string" and req.body:find('"text"%s*:%s*"[%s\\nrt]*"') then
    why = blank_text_refusal(json)
    if why then return invalid_request(why) end
  end
  -- Images (a user's, or a tool's in its tool_result) as the API takes
  -- them; looked for only in a body that has one.
  if type(req.body) == "string" and req.body:find('"image"', 1, true) then
    why = image_refusal(json)
    if why then return invalid_request(why) end
  end
  if thinking_enabled(json) and json.thinking.type == "enabled" then
    local budget = json.thinking.budget_tokens
    -- (lua-cjson decodes every number as a float)
    if type(budget) ~= "number" or budget % 1 ~= 0 or budget < 1024 then
      return invalid_request("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
    end
    if type(json.max_tokens) == "number" and json.max_tokens <= budget then
      return invalid_request("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
        .. "documentation at " .. THINKING_DOCS .. "#max-tokens-and-context-window-size")
    end
  end
  local msgs = type(json.messages) == "table" and json.messages or {}
  for i, m in ipairs(msgs) do
    if type(m) == "table" and m.role == "assistant" and type(m.content) == "table" then
      for j, b in ipairs(m.content) do
        if type(b) == "table" and b.type == "thinking" and (type(b.thinking) ~= "string" or not signature_ok(b)) then
          return invalid_request(("messages.%d.content.%d: Invalid `signature` in `thinking` block"):format(
            i - 1, j - 1))
        elseif type(b) == "table" and b.type == "redacted_thinking"
            and (type(b.data) ~= "string" or not redacted_ok(b.data)) then
          return invalid_request(("messages.%d.content.%d: Invalid `data` in `redacted_thinking` block"):format(
            i - 1, j - 1))
        end
      end
    end
  end
  -- With thinking on, the assistant turn before the last tool results must
  -- open with its thinking.
  local last, prev = msgs[#msgs], msgs[#msgs - 1]
  if thinking_enabled(json) and type(last) == "table" and last.role == "user" and type(last.content) == "table"
      and type(prev) == "table" and prev.role == "assistant" then
    local has_result = false
    for _, b in ipairs(last.content) do
      if type(b) == "table" and b.type == "tool_result" then has_result = true end
    end
    local first = type(prev.content) == "table" and prev.content[1] or nil
    local found = type(first) == "table" and tostring(first.type) or "text"
    if has_result and found ~= "thinking" and found ~= "redacted_thinking" then
      return invalid_request(("messages.%d.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
        .. "`%s`. When `thinking` is enabled, a final `assistant` message must start with a thinking block "
        .. "(preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include "
        .. "thinking blocks from previous turns. To avoid this requirement, disable `thinking`. Please consult "
        .. "our documentation at %s"):format(#msgs - 2, found, THINKING_DOCS))
    end
  end
  return nil
end

-- What Vertex AI answers a request to Claude it refuses: no OAuth token
-- (Google's 401), or a body without its anthropic_version.
function anthropic.vertex_refusal(req)
  local auth = req.headers and req.headers["authorization"] or ""
  if not auth:match("^Bearer %S+$") then
    return { status = 401, headers = JSON_HEADERS, body = encode({ error = { code = 401, status = "UNAUTHENTICATED",
      message = "Request is missing required authentication credential. Expected OAuth 2 access token, login "
        .. "cookie or other valid authentication credential." } }) }
  end
  local json = type(req.json) == "table" and req.json or {}
  if json.anthropic_version ~= "vertex-2023-10-16" then
    return invalid_request("anthropic_version: Field required")
  end
  return nil
end

-- ------------------------------------------------------- Claude on Bedrock
--
-- Amazon Bedrock's runtime as it answers Claude (POST /model/{id}/invoke
-- and /invoke-with-response-stream): the Messages body without `model` and
-- `stream`, with anthropic_version "bedrock-2023-05-31", refused otherwise
-- with Bedrock's own "Malformed input request" words; a bearer key, or a
-- Signature Version 4 the mock checks in full against the credentials
-- given as `bedrock = { credentials = {...}, api_key = "...", region = "..." }`
-- (its canonical request made here, apart from tide.provider.aws's); errors
-- as { message } with x-amzn-ErrorType; a streamed reply as an AWS event
-- stream whose chunks carry each Anthropic event base64-encoded, padded
-- with "p", the last with amazon-bedrock-invocationMetrics. A reply's
-- fault = "exception" ends its stream with an exception frame
-- (reply.exception: its :exception-type, throttlingException by default).

local BEDROCK_VERSION = "bedrock-2023-05-31"
local ES_HEADERS = { ["content-type"] = "application/vnd.amazon.eventstream",
  ["x-amzn-bedrock-content-type"] = "application/json" }

-- A Bedrock error: status, its x-amzn-ErrorType and { message }.
local function bedrock_error(status, kind, message)
  return { status = status, headers = { ["content-type"] = "application/json",
    ["x-amzn-errortype"] = kind .. ":http://internal.amazon.com/coral/com.amazon.bedrock/",
    ["x-amzn-requestid"] = "mock-bedrock-request" }, body = encode({ message = message }) }
end

local function hexs(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end

-- SigV4's encoding of a path or a query part, written for the server side.
local function aws_encode(s, slash)
  return (s:gsub("[^A-Za-z0-9%-_%.~" .. (slash and "/" or "") .. "]", function(c)
    return ("%%%02X"):format(c:byte()) end))
end

-- Whether `auth` (an Authorization header) signs `req` with `creds` in
-- `region`, as Bedrock checks it: nil, or Bedrock's 403.
local function check_sigv4(req, auth, creds, region, want_service)
  local id, date, reg, service, signed, sig = auth:match(
    "^AWS4%-HMAC%-SHA256 Credential=([^/]+)/(%d+)/([^/]+)/([^/]+)/aws4_request, SignedHeaders=([%w%-;]+), Signature=(%x+)$")
  if not id then
    return bedrock_error(400, "IncompleteSignatureException", "Authorization header requires 'Credential', "
      .. "'SignedHeaders' and 'Signature' parameters.")
  end
  if not creds or id ~= creds.access_key_id then
    return bedrock_error(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
  end
  local h = req.headers
  if reg ~= region then
    return bedrock_error(403, "InvalidSignatureException", "Credential should be scoped to a valid region.")
  end
  if service ~= want_service then
    return bedrock_error(403, "InvalidSignatureException", ("Credential should be scoped to correct service: '%s'.")
      :format(want_service))
  end
  if creds.session_token and h["x-amz-security-token"] ~= creds.session_token then
    return bedrock_error(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
  end
  local amz_date = h["x-amz-date"] or ""
  if amz_date:sub(1, 8) ~= date then
    return bedrock_error(403, "InvalidSignatureException", "Date in Credential scope does not match YYYYMMDD from "
      .. "ISO-8601 version of date from HTTP: '" .. date .. "' != '" .. amz_date:sub(1, 8) .. "', from '"
      .. amz_date .. "'.")
  end
  local names = {}
  for name in signed:gmatch("[^;]+") do names[#names + 1] = name end
  local has = {}
  for _, n in ipairs(names) do has[n] = true end
  if not (has.host and has["x-amz-date"]) or (creds.session_token and not has["x-amz-security-token"]) then
    return bedrock_error(403, "InvalidSignatureException", "The request signature we calculated does not match "
      .. "the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service "
      .. "documentation for details.")
  end
  local lines = {}
  for i, n in ipairs(names) do
    lines[i] = n .. ":" .. tostring(h[n] or ""):gsub("^%s+", ""):gsub("%s+$", ""):gsub("%s+", " ")
  end
  local path, query = req.path:match("^([^?]*)%??(.*)$")
  local q = {}
  for part in query:gmatch("[^&]+") do q[#q + 1] = part end
  table.sort(q)
  local canonical = table.concat({ req.method, aws_encode(path, true), table.concat(q, "&"),
    table.concat(lines, "\n") .. "\n", signed, hexs(core.sha256(req.body or "")) }, "\n")
  local to_sign = table.concat({ "AWS4-HMAC-SHA256", amz_date, ("%s/%s/%s/aws4_request"):format(date, reg, service),
    hexs(core.sha256(canonical)) }, "\n")
  local key = "AWS4" .. creds.secret_access_key
  for _, part in ipairs { date, reg, service, "aws4_request" } do key = core.hmac_sha256(key, part) end
  if hexs(core.hmac_sha256(key, to_sign)) ~= sig then
    return bedrock_error(403, "InvalidSignatureException", "The request signature we calculated does not match "
      .. "the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service "
      .. "documentation for details.")
  end
  return nil
end

-- Bedrock's check of a request's credentials (for `service`): nil, or
-- its refusal.
local function bedrock_auth(self, req, service)
  local opts = self._opts.bedrock or {}
  local auth = req.headers and req.headers["authorization"]
  if not auth then
    return bedrock_error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
  end
  local bearer = auth:match("^Bearer (%S+)$")
  if bearer then
    if opts.api_key and bearer ~= opts.api_key then
      return bedrock_error(403, "AccessDeniedException", "Invalid API Key format: Must start with pre-defined "
        .. "prefix")
    end
    return nil
  end
  return check_sigv4(req, auth, opts.credentials, opts.region or "us-east-1", service)
end

-- What Bedrock's Mantle endpoint (the Messages API itself, at
-- bedrock-mantle.{region}.api.aws/anthropic) refuses for its credentials,
-- or nil: SigV4 for the service "bedrock-mantle", or a bearer key.
function anthropic.mantle_refusal(self, req)
  return bedrock_auth(self, req, "bedrock-mantle")
end

-- The models Bedrock serves on demand only through an inference profile
-- (us., eu., apac., global. ...): their own ids are refused.
local PROFILE_ONLY = { "^anthropic%.claude%-3%-5%-sonnet%-20241022", "^anthropic%.claude%-3%-7", "^anthropic%.claude%-sonnet%-4",
  "^anthropic%.claude%-opus%-4", "^anthropic%.claude%-haiku%-4" }

-- What Bedrock answers a request to Claude it refuses, or nil.
function anthropic.bedrock_refusal(self, req)
  local refused = bedrock_auth(self, req, "bedrock")
  if refused then return refused end
  local id = percent_decode(req.path:match("^/model/([^/]+)/"))
  for _, pattern in ipairs(PROFILE_ONLY) do
    if id:find(pattern) then
      return bedrock_error(400, "ValidationException", ("Invocation of model ID %s with on-demand throughput "
        .. "isn\u{2019}t supported. Retry your request with the ID or ARN of an inference profile that contains this "
        .. "model."):format(id))
    end
  end
  local json = type(req.json) == "table" and req.json or nil
  if not json then
    return bedrock_error(400, "ValidationException", "Malformed input request, please reformat your input and try again.")
  end
  if json.anthropic_version == nil then
    return bedrock_error(400, "ValidationException", "Malformed input request: #: required key [anthropic_version] "
      .. "not found, please reformat your input and try again.")
  end
  if json.anthropic_version ~= BEDROCK_VERSION then
    return bedrock_error(400, "ValidationException", "Invalid API version")
  end
  for _, k in ipairs { "model", "stream" } do
    if json[k] ~= nil then
      return bedrock_error(400, "ValidationException", ("Malformed input request: #: extraneous key [%s] is not "
        .. "permitted, please reformat your input and try again."):format(k))
    end
  end
  return nil
end

--- Whether `req` (a mock route's request) is signed with Signature
--- Version 4 by `creds` for `service` in `region`, as AWS checks it (the
--- mock's own canonical request, not tide's signer): nil, or the message
--- AWS would refuse it with. For specs of AWS endpoints other than
--- Bedrock's (STS's AssumeRole).
---@param req table
---@param creds tide.aws.credentials
---@param region string
---@param service string
---@return string|nil
function testing.sigv4_refusal(req, creds, region, service)
  local auth = req.headers and req.headers["authorization"]
  if not auth then return "Missing Authentication Token" end
  local refused = check_sigv4(req, auth, creds, region, service)
  return refused and decode(refused.body).message or nil
end

--- One AWS event stream frame, as Bedrock sends them: `headers` ({ name,
--- string value } pairs, in order), then `payload`, with both CRCs.
---@param headers {[1]:string, [2]:string}[]
---@param payload string
---@return string
function testing.aws_frame(headers, payload)
  local h = {}
  for _, kv in ipairs(headers) do
    h[#h + 1] = string.pack(">s1Bs2", kv[1], 7, kv[2])
  end
  h = table.concat(h)
  local total = 16 + #h + #payload
  local prelude = string.pack(">I4I4", total, #h)
  prelude = prelude .. string.pack(">I4", core.crc32(prelude))
  local msg = prelude .. h .. payload
  return msg .. string.pack(">I4", core.crc32(msg))
end
local es_frame = testing.aws_frame

-- Padding against length side channels, as Bedrock adds it ("p").
local PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

-- The SSE chunks of a rendered Anthropic stream as Bedrock frames them.
local function bedrock_chunks(chunks, exception)
  local out, input, output = {}, 0, 0
  for _, chunk in ipairs(chunks) do
    local frames = {}
    for data in chunk:gmatch("data: ([^\n]*)\n") do
      local obj = decode(data)
      if type(obj) == "table" and obj.type == "message_start" and type(obj.message) == "table" then
        input = (obj.message.usage or {}).input_tokens or 0
      elseif type(obj) == "table" and obj.type == "message_delta" then
        output = (obj.usage or {}).output_tokens or output
      elseif type(obj) == "table" and obj.type == "message_stop" then
        if exception then -- (the stream fails before its end)
          frames[#frames + 1] = es_frame({ { ":exception-type", exception }, { ":content-type", "application/json" },
            { ":message-type", "exception" } }, encode({ message = exception == "throttlingException"
            and "Too many requests, please wait before trying again." or "The system encountered an unexpected error "
            .. "during processing. Try your request again." }))
          break
        end
        -- Bedrock's own metrics ride on the last event
        data = encode({ type = "message_stop", ["amazon-bedrock-invocationMetrics"] = {
          inputTokenCount = input, outputTokenCount = output, invocationLatency = 412, firstByteLatency = 180 } })
      end
      frames[#frames + 1] = es_frame({ { ":event-type", "chunk" }, { ":content-type", "application/json" },
        { ":message-type", "event" } }, encode({ bytes = core.base64(data), p = PAD:sub(1, #data % #PAD + 1) }))
    end
    out[#out + 1] = table.concat(frames)
  end
  return out
end

local BEDROCK_ERRORS = { [400] = "ValidationException", [403] = "AccessDeniedException",
  [404] = "ResourceNotFoundException", [429] = "ThrottlingException", [500] = "InternalServerException",
  [503] = "ServiceUnavailableException" }

-- A scripted failure as Bedrock answers one: the error type its status
-- stands for, the message given (else the status), the reply's headers and
-- delay.
local function bedrock_failure(res, reply, message)
  local r = bedrock_error(res.status, BEDROCK_ERRORS[res.status] or "InternalServerException",
    type(message) == "string" and message or ("mock: HTTP " .. res.status))
  r.headers = headers_with(r.headers, reply.headers)
  r.delay_ms = res.delay_ms
  return r
end

-- A rendered Anthropic reply (or refusal) as Bedrock sends it: a stream
-- framed, an error as Bedrock's.
function anthropic.bedrock_response(res, reply)
  if res.chunks then
    res.headers = headers_with(ES_HEADERS, reply.headers)
    res.chunks = bedrock_chunks(res.chunks, reply.fault == "exception" and (reply.exception or "throttlingException"))
    if reply.fault == "malformed" then -- a frame whose CRC does not match
      local i = #res.chunks > 1 and 2 or 1
      local c = res.chunks[i]
      res.chunks[i] = c:sub(1, -2) .. string.char((c:byte(-1) + 1) % 256)
    end
    return res
  end
  if res.status and res.status >= 400 then
    local obj = decode(res.body or "") or {}
    return bedrock_failure(res, reply, type(obj.error) == "table" and obj.error.message)
  end
  if res.body then
    local obj = decode(res.body)
    local u = type(obj) == "table" and type(obj.usage) == "table" and obj.usage or {}
    res.headers = headers_with(res.headers or JSON_HEADERS, { ["x-amzn-requestid"] = "mock-bedrock-request",
      ["x-amzn-bedrock-input-token-count"] = tostring(u.input_tokens or 0),
      ["x-amzn-bedrock-output-token-count"] = tostring(u.output_tokens or 0) })
  end
  return res
end

function anthropic.malformed_stream(ctx)
  return {
    message_start(ctx),
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_de\n\n',
    event("message_stop", { type = "message_stop" }),
  }
end

-- ------------------------------------------------ OpenAI Responses rendering

-- The Responses API (POST /responses), as the real service answers and
-- refuses. Reply fields beyond the common ones:
--   reasoning   a reasoning item first in the output (a string is its
--               summary text). Its summary is sent only when the request
--               asks for one (reasoning.summary), its encrypted_content only
--               when `include` holds "reasoning.encrypted_content", as the
--               real service does.
--   incomplete  "max_output_tokens" or "content_filter": status
--               "incomplete" with that reason (response.incomplete event).
--   refusal     a refusal content part in the message item.
--   usage.reasoning  output_tokens_details.reasoning_tokens.
--   server_tools  `{ { name = "web_search", input = { query } } }`: the
--               built-in web search ran: a web_search_call item each
--               (action search, status completed) before the message, whose
--               text cites the first as a url_citation annotation; the
--               request must offer a web_search tool, as the API requires.
--               The other hosted tools alike, each item in the shape the
--               API gives it: `file_search` (input.queries),
--               `code_interpreter` (input.code: a code_interpreter_call with
--               its container), `image_generation` (input.result: the
--               image's base64), `mcp` (input.name, input.arguments,
--               input.output: an mcp_list_tools item first, then the
--               mcp_call); each needs its tool type offered. A remote MCP
--               server's call waits for approval unless its tool says
--               require_approval = "never" (the API's default is
--               "always"): `{ name = "mcp", approval = true, input }` asks
--               for it (an mcp_approval_request item, id "mcpr_..."), and
--               a plain `mcp` entry then needs the request and an
--               approving mcp_approval_response for a call of that name
--               in the input (its mcp_call names the request, as the
--               service's does).
-- Faults render as the chat ones do; `status` bodies are OpenAI's error
-- shape; a stream truncated stops before response.completed.
local responses = { id_prefix = "resp_mock", call_prefix = "call_", custom_tools = true }

-- The hosted tools (run by the service) the mock runs, and their items'
-- id prefixes.
local HOSTED_TOOLS = { web_search = "ws", file_search = "fs", code_interpreter = "ci", image_generation = "ig", mcp = "mcp" }

-- The events a streamed hosted tool's item has between added and done
-- (code, arguments: their delta and done events).
local HOSTED_EVENTS = {
  web_search_call = { "in_progress", "searching", "completed" },
  file_search_call = { "in_progress", "searching", "completed" },
  code_interpreter_call = { "in_progress", "code", "interpreting", "completed" },
  image_generation_call = { "in_progress", "generating", "completed" },
  mcp_list_tools = { "in_progress", "completed" },
  mcp_call = { "in_progress", "arguments", "completed" },
  mcp_approval_request = {}, -- (added whole, then done)
  compaction = {},
}

-- A hosted tool's item coming back in a request: the fields the API
-- requires of it (its OpenAPI schema), and what they must be.
local HOSTED_INPUT = {
  web_search_call = { id = "string", status = "string", action = "table" },
  file_search_call = { id = "string", status = "string", queries = "table" },
  code_interpreter_call = { id = "string", status = "string", container_id = "string", code = "string",
                            outputs = "any" },
  image_generation_call = { id = "string", status = "string", result = "string" },
  mcp_call = { id = "string", server_label = "string", name = "string", arguments = "string" },
  mcp_list_tools = { id = "string", server_label = "string", tools = "table" },
  mcp_approval_request = { id = "string", server_label = "string", name = "string", arguments = "string" },
}

-- The approval a request's input gives a remote MCP server's call of
-- `name` on `label`: the id of the request an mcp_approval_response
-- approved, or nil.
local function mcp_approved(json, label, name)
  local asked = {}
  for _, item in ipairs(type(json.input) == "table" and json.input or {}) do
    if type(item) == "table" and item.type == "mcp_approval_request" and item.server_label == label
        and item.name == name then
      asked[item.id] = true
    elseif type(item) == "table" and item.type == "mcp_approval_response" and item.approve == true
        and asked[item.approval_request_id] then
      return item.approval_request_id
    end
  end
  return nil
end

responses.error_body = openai.error_body

-- The encrypted content the mock hands out, and checks when it comes back:
-- the item's id and a payload with a digest over both stand in for the
-- real service's encryption, so an altered item is refused without the
-- mock keeping state. Like the real one it stands alone: an item sent back
-- without its id is understood (and one with an id must match it).
local function encrypted_for(id, payload)
  return "gAAAAMock" .. id .. "~" .. payload .. "." .. core.hash("rs|" .. id .. "|" .. payload)
end

local function encrypted_ok(id, data)
  local inner, payload, digest = data:match("^gAAAAMock([^~]*)~(.-)%.(%x+)$")
  return inner ~= nil and digest == core.hash("rs|" .. inner .. "|" .. payload) and (id == nil or id == inner)
end

local function wants_encrypted(json)
  for _, v in ipairs(type(json.include) == "table" and json.include or {}) do
    if v == "reasoning.encrypted_content" then return true end
  end
  return false
end

-- The output items of a reply, whole, in the order the service sends them:
-- reasoning, the message, the function calls.
local function responses_output(ctx)
  local r, json, items = ctx.reply, ctx.json, {}
  local annotations = EMPTY
  -- The service's compaction (context_management): once the input passes
  -- its threshold, an encrypted summary of it comes first.
  local threshold
  for _, cm in ipairs(type(json.context_management) == "table" and json.context_management or {}) do
    if type(cm) == "table" and cm.type == "compaction" then threshold = tonumber(cm.compact_threshold) or 0 end
  end
  if r.compaction or (threshold and ctx.usage.input >= threshold) then
    local id = "cmp_mock" .. ctx.n
    items[1] = { type = "compaction", id = id, encrypted_content = encrypted_for(id, "c" .. ctx.n) }
  end
  if r.reasoning then
    local id = "rs_mock" .. ctx.n
    local summary = EMPTY
    local rs = type(json.reasoning) == "table" and json.reasoning.summary
    if type(rs) == "string" and type(r.reasoning) == "string" then
      summary = { { type = "summary_text", text = r.reasoning } }
    end
    items[#items + 1] = { type = "reasoning", id = id, summary = summary,
      encrypted_content = wants_encrypted(json) and encrypted_for(id, "p" .. ctx.n) or null }
  end
  for i, st in ipairs(r.server_tools or {}) do
    local offered
    for _, t in ipairs(type(json.tools) == "table" and json.tools or {}) do
      if type(t) == "table" and type(t.type) == "string"
          and (t.type == st.name or st.name == "web_search" and t.type:match("^web_search")) then
        offered = t
      end
    end
    if not (HOSTED_TOOLS[st.name] and offered) then
      error(("mock: server_tools[%d] needs a hosted tool's name (web_search, file_search, code_interpreter, "
        .. "image_generation, mcp) and a request offering it"):format(i), 0)
    end
    local input, id = st.input or {}, ("%s_mock%d_%d"):format(HOSTED_TOOLS[st.name], ctx.n, i)
    if st.name == "web_search" then
      local query = tostring(input.query or "")
      items[#items + 1] = { type = "web_search_call", id = id, status = "completed",
                            action = { type = "search", query = query } }
      if annotations == EMPTY and ctx.text ~= "" then
        annotations = { { type = "url_citation", start_index = 0, end_index = utf8.len(ctx.text) or #ctx.text,
          url = "https://search.example/" .. query:gsub("%W", "-"), title = query } }
      end
    elseif st.name == "file_search" then
      items[#items + 1] = { type = "file_search_call", id = id, status = "completed",
                            queries = input.queries or { "" }, results = null }
    elseif st.name == "code_interpreter" then
      -- (outputs only when `include` asks for them, as the service does)
      items[#items + 1] = { type = "code_interpreter_call", id = id, status = "completed",
                            container_id = "cntr_mock" .. ctx.n, code = tostring(input.code or ""), outputs = null }
    elseif st.name == "image_generation" then
      items[#items + 1] = { type = "image_generation_call", id = id, status = "completed",
                            result = tostring(input.result or ""), revised_prompt = input.revised_prompt }
    else
      local label, name = offered.server_label, tostring(input.name or "tool")
      local asks = offered.require_approval ~= "never"
      if st.approval and not asks then
        error(("mock: server_tools[%d] asks for an approval its tool does not want (require_approval = "
          .. "\"never\")"):format(i), 0)
      end
      local approved = not st.approval and asks and mcp_approved(json, label, name)
      if asks and not st.approval and not approved then
        error(("mock: server_tools[%d]: the service would ask for an approval first (approval = true), "
          .. "or the input needs an approved request for '%s'"):format(i, name), 0)
      end
      items[#items + 1] = { type = "mcp_list_tools", id = id .. "_list", server_label = label,
        tools = { { name = name, input_schema = { type = "object" } } } }
      if st.approval then
        items[#items + 1] = { type = "mcp_approval_request", id = ("mcpr_mock%d_%d"):format(ctx.n, i),
          server_label = label, name = name, arguments = tostring(input.arguments or "{}") }
      else
        items[#items + 1] = { type = "mcp_call", id = id, server_label = label, name = name,
          arguments = tostring(input.arguments or "{}"), output = tostring(input.output or ""), error = null,
          approval_request_id = approved or nil }
      end
    end
  end
  if ctx.text ~= "" or r.refusal then
    local parts = {}
    if ctx.text ~= "" then
      parts[1] = { type = "output_text", text = ctx.text, annotations = annotations, logprobs = EMPTY }
    end
    if r.refusal then parts[#parts + 1] = { type = "refusal", refusal = r.refusal } end
    items[#items + 1] = { type = "message", id = "msg_mock" .. ctx.n, status = "completed", role = "assistant",
                          content = parts }
  end
  for i, c in ipairs(ctx.calls) do
    items[#items + 1] = c.custom
      and { type = "custom_tool_call", id = "ctc_mock" .. ctx.n .. "_" .. i, call_id = c.id, name = c.name,
            input = c.args, status = "completed" }
      or { type = "function_call", id = "fc_mock" .. ctx.n .. "_" .. i, call_id = c.id,
           name = c.name, arguments = c.args, status = "completed" }
  end
  return items
end

local function responses_usage(ctx)
  local u = ctx.usage
  local reasoning = type(ctx.reply.usage) == "table" and ctx.reply.usage.reasoning or 0
  return { input_tokens = u.input, input_tokens_details = { cached_tokens = u.cached },
           output_tokens = u.output, output_tokens_details = { reasoning_tokens = reasoning },
           total_tokens = u.input + u.output }
end

-- The response object; `status` "in_progress" (no output, no usage yet) for
-- response.created.
local function response_object(ctx, status, output)
  local json, r = ctx.json, ctx.reply
  local incomplete = status == "incomplete" and { reason = r.incomplete } or null
  return {
    id = ctx.id, object = "response", created_at = ctx.created, status = status, error = null,
    incomplete_details = incomplete, instructions = json.instructions or null,
    max_output_tokens = json.max_output_tokens or null, model = ctx.model,
    output = output and #output > 0 and output or EMPTY,
    parallel_tool_calls = json.parallel_tool_calls ~= false, previous_response_id = null,
    reasoning = type(json.reasoning) == "table" and json.reasoning or { effort = null, summary = null },
    store = json.store ~= false, temperature = json.temperature or 1,
    text = { format = { type = "text" } }, tool_choice = json.tool_choice or "auto",
    tools = type(json.tools) == "table" and #json.tools > 0 and json.tools or EMPTY, top_p = 1,
    truncation = "disabled", usage = status ~= "in_progress" and responses_usage(ctx) or null,
    user = null, metadata = {}, service_tier = ctx.tier,
  }
end

local function responses_status(ctx)
  return ctx.reply.incomplete and "incomplete" or "completed"
end

function responses.completion(ctx)
  return encode(response_object(ctx, responses_status(ctx), responses_output(ctx)))
end

-- Every event: `event: <type>` and its data, with the sequence number the
-- service counts from 0.
function responses.stream(ctx, truncate)
  local seq = -1
  local chunks = {}
  local function ev(obj)
    seq = seq + 1
    obj.sequence_number = seq
    chunks[#chunks + 1] = "event: " .. obj.type .. "\ndata: " .. encode(obj) .. "\n\n"
  end
  ev({ type = "response.created", response = response_object(ctx, "in_progress") })
  ev({ type = "response.in_progress", response = response_object(ctx, "in_progress") })
  local output = responses_output(ctx)
  for i, item in ipairs(output) do
    local index = i - 1
    if item.type == "reasoning" then
      ev({ type = "response.output_item.added", output_index = index,
           item = { type = "reasoning", id = item.id, summary = EMPTY } })
      for k, s in ipairs(item.summary ~= EMPTY and item.summary or {}) do
        local part = { item_id = item.id, output_index = index, summary_index = k - 1 }
        ev({ type = "response.reasoning_summary_part.added", item_id = item.id, output_index = index,
             summary_index = k - 1, part = { type = "summary_text", text = "" } })
        for _, piece in ipairs(split(s.text, 3)) do
          ev({ type = "response.reasoning_summary_text.delta", item_id = part.item_id, output_index = index,
               summary_index = k - 1, delta = piece })
        end
        ev({ type = "response.reasoning_summary_text.done", item_id = item.id, output_index = index,
             summary_index = k - 1, text = s.text })
        ev({ type = "response.reasoning_summary_part.done", item_id = item.id, output_index = index,
             summary_index = k - 1, part = s })
      end
    elseif item.type == "message" then
      ev({ type = "response.output_item.added", output_index = index,
           item = { type = "message", id = item.id, status = "in_progress", role = "assistant", content = EMPTY } })
      for k, part in ipairs(item.content) do
        local base = { item_id = item.id, output_index = index, content_index = k - 1 }
        local function with(t) for key, v in pairs(base) do t[key] = v end return t end
        if part.type == "output_text" then
          ev(with({ type = "response.content_part.added",
                    part = { type = "output_text", text = "", annotations = EMPTY } }))
          for _, piece in ipairs(ctx.text_pieces) do
            ev(with({ type = "response.output_text.delta", delta = piece, logprobs = EMPTY }))
          end
          for a, ann in ipairs(part.annotations ~= EMPTY and part.annotations or {}) do
            ev(with({ type = "response.output_text.annotation.added", annotation_index = a - 1, annotation = ann }))
          end
          ev(with({ type = "response.output_text.done", text = part.text, logprobs = EMPTY }))
        else
          ev(with({ type = "response.content_part.added", part = { type = "refusal", refusal = "" } }))
          ev(with({ type = "response.refusal.delta", delta = part.refusal }))
          ev(with({ type = "response.refusal.done", refusal = part.refusal }))
        end
        ev(with({ type = "response.content_part.done", part = part }))
      end
    elseif HOSTED_EVENTS[item.type] then
      -- a hosted tool's item: announced in progress, its progress events
      -- (the code and arguments streamed as the service streams them), then
      -- done whole
      local added = { type = item.type, id = item.id, status = "in_progress" }
      if item.type == "mcp_approval_request" then
        added = item
      elseif item.type:match("^mcp") then
        added = { type = item.type, id = item.id, server_label = item.server_label }
      end
      ev({ type = "response.output_item.added", output_index = index, item = added })
      for _, phase in ipairs(HOSTED_EVENTS[item.type]) do
        if phase == "code" then
          ev({ type = "response.code_interpreter_call_code.delta", item_id = item.id, output_index = index,
               delta = item.code })
          ev({ type = "response.code_interpreter_call_code.done", item_id = item.id, output_index = index,
               code = item.code })
        elseif phase == "arguments" then
          ev({ type = "response.mcp_call_arguments.delta", item_id = item.id, output_index = index,
               delta = item.arguments })
          ev({ type = "response.mcp_call_arguments.done", item_id = item.id, output_index = index,
               arguments = item.arguments })
        else
          ev({ type = "response." .. item.type .. "." .. phase, item_id = item.id, output_index = index })
        end
      end
    else
      -- a function's call, or a custom tool's: announced empty, its text
      -- (arguments, or a custom tool's input) streamed in pieces, then whole
      local custom = item.type == "custom_tool_call"
      local field = custom and "input" or "arguments"
      local event = custom and "response.custom_tool_call_input" or "response.function_call_arguments"
      local added = { type = item.type, id = item.id, call_id = item.call_id, name = item.name, status = "in_progress" }
      added[field] = ""
      ev({ type = "response.output_item.added", output_index = index, item = added })
      for _, piece in ipairs(split(item[field], 3)) do
        ev({ type = event .. ".delta", item_id = item.id, output_index = index, delta = piece })
      end
      local done = { type = event .. ".done", item_id = item.id, output_index = index }
      done[field] = item[field]
      ev(done)
    end
    ev({ type = "response.output_item.done", output_index = index, item = item })
  end
  if truncate then return chunks end
  local status = responses_status(ctx)
  -- The last event shares the chunk before it, to exercise parsers.
  local last = #chunks
  ev({ type = "response." .. status, response = response_object(ctx, status, output) })
  chunks[last] = chunks[last] .. table.remove(chunks)
  return chunks
end

function responses.malformed_stream(ctx)
  return {
    "event: response.created\ndata: " .. encode({ type = "response.created", sequence_number = 0,
      response = response_object(ctx, "in_progress") }) .. "\n\n",
    'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"oo\n\n',
  }
end

local function responses_reject(message, param, code)
  return openai_reject(message, param, code)
end

-- The service's answer to encrypted content (a reasoning item's, a
-- compaction's) it cannot verify.
local function unverified(data)
  return responses_reject(("The encrypted content %s...%s could not be verified."):format(data:sub(1, 4),
    data:sub(-4)), nil, "invalid_encrypted_content")
end

-- What the Responses API refuses where tide could get it wrong:
--   * chat's names: max_tokens (moved to max_output_tokens), messages,
--     stop, reasoning_effort;
--   * a function tool in chat's nested shape, or strict (the default when
--     `strict` is left out) with a schema that is not closed;
--   * an assistant message whose content is not output_text / refusal;
--   * a function_call_output whose call_id no earlier function_call has,
--     and a function_call left without its output;
--   * a reasoning item without encrypted content when store is false, with
--     altered encrypted content, or with nothing after it;
--   * an mcp_approval_response without the request it answers before it,
--     or with a reason for an approval.
function responses.validate(_, req)
  local body = req.json
  if type(body) ~= "table" then return responses_reject("We could not parse the JSON body of your request.") end
  if body.max_tokens ~= nil then
    return responses_reject("Unsupported parameter: 'max_tokens'. In the Responses API, this parameter has "
      .. "moved to 'max_output_tokens'.", "max_tokens", "unsupported_parameter")
  end
  for _, k in ipairs({ "messages", "stop", "reasoning_effort", "max_completion_tokens", "stream_options" }) do
    if body[k] ~= nil then
      return responses_reject(("Unknown parameter: '%s'."):format(k), k, "unknown_parameter")
    end
  end
  for i, t in ipairs(type(body.tools) == "table" and body.tools or {}) do
    local where = ("tools[%d]"):format(i - 1)
    if type(t) == "table" and t.type == "custom" then
      local bad = custom_format_error(t.format, where .. ".format", false)
      if bad then return bad end
      goto next_tool
    end
    if type(t) == "table" and type(t.type) == "string" and t.type ~= "function" then
      goto next_tool -- a built-in tool (web_search, file_search, ...): no name
    end
    if type(t) ~= "table" or type(t.name) ~= "string" then
      return responses_reject(("Missing required parameter: '%s.name'."):format(where), where .. ".name",
        "missing_required_parameter")
    end
    local params = t.parameters
    if t.strict ~= false and type(params) == "table" and params.additionalProperties ~= false then
      return responses_reject(("Invalid schema for function '%s': In context=(), 'additionalProperties' is "
        .. "required to be supplied and to be false."):format(t.name), where .. ".parameters",
        "invalid_function_parameters")
    end
    ::next_tool::
  end
  local input = body.input
  if type(input) == "string" then return nil end
  if type(input) ~= "table" then return nil end
  local store = body.store ~= false
  local calls, answered, asked, custom = {}, {}, {}, {}
  for i, item in ipairs(input) do
    local where = ("input[%d]"):format(i - 1)
    if type(item) ~= "table" then return responses_reject("Invalid type for '" .. where .. "'.", where) end
    local ty = item.type or (item.role and "message")
    -- Without store, an item's id names nothing the service kept: it looks
    -- it up and fails (what OpenAI's API answers for newer models, and
    -- Azure's always).
    -- (but for a hosted tool's call, which it takes whole, id and all: the
    -- Vercel AI SDK's recorded replay of a web_search_call, October 2026)
    if not store and item.id ~= nil and not HOSTED_INPUT[ty] then
      return responses_reject(("Item with id '%s' not found. Items are not persisted when `store` is set to false. "
        .. "Try again with `store` set to true, or remove this item from your input."):format(tostring(item.id)),
        "input")
    end
    if ty == "message" then
      if item.role == "assistant" and type(item.content) == "table" then
        for j, part in ipairs(item.content) do
          local pt = type(part) == "table" and part.type
          if pt ~= "output_text" and pt ~= "refusal" then
            return responses_reject(("Invalid value: '%s'. Supported values are: 'output_text' and 'refusal'.")
              :format(tostring(pt)), ("%s.content[%d]"):format(where, j - 1), "invalid_value")
          end
        end
      elseif type(item.content) == "table" then
        for j, part in ipairs(item.content) do
          local pt = type(part) == "table" and part.type
          if pt ~= "input_text" and pt ~= "input_image" and pt ~= "input_file" then
            return responses_reject(("Invalid value: '%s'. Supported values are: 'input_text', 'input_image', "
              .. "and 'input_file'."):format(tostring(pt)), ("%s.content[%d]"):format(where, j - 1), "invalid_value")
          end
        end
      end
    elseif ty == "compaction" then
      -- (CompactionSummaryItemParam: the encrypted content, as it was given)
      local data = item.encrypted_content
      if type(data) ~= "string" then
        return responses_reject(("Missing required parameter: '%s.encrypted_content'."):format(where),
          where .. ".encrypted_content", "missing_required_parameter")
      end
      if not encrypted_ok(item.id, data) then
        return unverified(data)
      end
    elseif HOSTED_INPUT[ty] then
      if ty == "mcp_approval_request" then asked[item.id] = true end
      local fields = {}
      for f in pairs(HOSTED_INPUT[ty]) do fields[#fields + 1] = f end
      table.sort(fields)
      for _, f in ipairs(fields) do
        local want = HOSTED_INPUT[ty][f]
        if item[f] == nil then
          return responses_reject(("Missing required parameter: '%s.%s'."):format(where, f), where .. "." .. f,
            "missing_required_parameter")
        end
        if want ~= "any" and type(item[f]) ~= want then
          return responses_reject(("Invalid type for '%s.%s': expected %s."):format(where, f,
            want == "table" and "an object or array" or "a string"), where .. "." .. f, "invalid_type")
        end
      end
      if ty == "web_search_call" and type(item.action.type) ~= "string" then
        return responses_reject(("Invalid type for '%s.action': expected an object."):format(where),
          where .. ".action", "invalid_type")
      end
    elseif ty == "mcp_approval_response" then
      if type(item.approval_request_id) ~= "string" then
        return responses_reject(("Missing required parameter: '%s.approval_request_id'."):format(where),
          where .. ".approval_request_id", "missing_required_parameter")
      end
      if type(item.approve) ~= "boolean" then
        return responses_reject(("Invalid type for '%s.approve': expected a boolean."):format(where),
          where .. ".approve", "invalid_type")
      end
      -- (Azure's words; a reason goes with a rejection only)
      if item.approve and item.reason ~= nil then
        return responses_reject("'reason' cannot be provided when 'approve' is true.", where .. ".reason")
      end
      -- Nothing stored: the request it answers must be in the input, before
      -- it (the mock's words, after the function_call_output's).
      if not asked[item.approval_request_id] then
        return responses_reject(("No approval request found for mcp_approval_response with "
          .. "approval_request_id %s."):format(item.approval_request_id), "input")
      end
    elseif ty == "function_call" then
      if type(item.call_id) ~= "string" or type(item.name) ~= "string" or type(item.arguments) ~= "string" then
        return responses_reject("Missing required parameter: '" .. where .. ".call_id'.", where,
          "missing_required_parameter")
      end
      calls[#calls + 1] = item.call_id
      calls[item.call_id] = true
    elseif ty == "custom_tool_call" then
      for _, f in ipairs { "call_id", "name", "input" } do
        if type(item[f]) ~= "string" then
          return responses_reject(("Missing required parameter: '%s.%s'."):format(where, f), where .. "." .. f,
            "missing_required_parameter")
        end
      end
      calls[#calls + 1] = item.call_id
      custom[item.call_id] = true
    elseif ty == "function_call_output" or ty == "custom_tool_call_output" then
      if type(item.output) == "table" then -- a list of input_text / input_image / input_file parts
        for j, part in ipairs(item.output) do
          local pt = type(part) == "table" and part.type
          if pt ~= "input_text" and pt ~= "input_image" and pt ~= "input_file" then
            return responses_reject(("Invalid value: '%s'. Supported values are: 'input_text', 'input_image', "
              .. "and 'input_file'."):format(tostring(pt)), ("%s.output[%d]"):format(where, j - 1), "invalid_value")
          end
          if pt == "input_image" and type(part.image_url) ~= "string" and type(part.file_id) ~= "string" then
            return responses_reject(("Missing required parameter: '%s.output[%d].image_url'."):format(where, j - 1),
              ("%s.output[%d]"):format(where, j - 1), "missing_required_parameter")
          end
        end
      elseif type(item.output) ~= "string" then
        return responses_reject(("Invalid type for '%s.output': expected a string or an array."):format(where),
          where .. ".output", "invalid_type")
      end
      -- (a custom tool's call is answered by its own kind of item only)
      local of_custom = ty == "custom_tool_call_output"
      if not (of_custom and custom or calls)[item.call_id] then
        return responses_reject(("No tool call found for %s output with call_id %s."):format(
          of_custom and "custom tool call" or "function call", tostring(item.call_id)), "input")
      end
      answered[item.call_id] = true
    elseif ty == "reasoning" then
      local data = item.encrypted_content
      if type(data) ~= "string" then
        if not store then
          return responses_reject(("Item with id '%s' not found. Items are not persisted when `store` is set "
            .. "to false. Try again with `store` set to true, or remove this item from your input.")
            :format(tostring(item.id)), "input")
        end
      elseif not encrypted_ok(item.id, data) then
        return unverified(data)
      end
      local nxt = input[i + 1]
      local nty = type(nxt) == "table" and (nxt.type or (nxt.role and "message")) or nil
      if not (nty == "function_call" or nty == "custom_tool_call" or nty == "reasoning" or HOSTED_INPUT[nty]
          or (nty == "message" and nxt.role == "assistant")) then
        return responses_reject(("Item '%s' of type 'reasoning' was provided without its required following item.")
          :format(tostring(item.id)), "input")
      end
    end
  end
  for _, id in ipairs(calls) do
    if not answered[id] then
      return responses_reject(("No tool output found for %s %s."):format(custom[id] and "custom tool call"
        or "function call", id), "input")
    end
  end
  return nil
end

-- -------------------------------------------------------------- rendering

-- ------------------------------------------ Bedrock's Converse rendering
--
-- Bedrock's Converse API (tide.provider.bedrock): a whole reply's JSON, a
-- stream's AWS event stream of Converse events (each payload with the `p`
-- padding Bedrock adds), errors as Bedrock's. What it refuses, it refuses
-- in Bedrock's words: a conversation that does not start with the user or
-- does not alternate, a blank text block, tool blocks without a
-- toolConfig, results that do not answer the calls before them, and (when
-- the reply had reasoning) a follow-up that drops the reasoning it came
-- with.
local converse = { id_prefix = "converse_mock", call_prefix = "tooluse_" }

function converse.error_body(_, message) return encode({ message = message }) end

local function converse_usage(ctx)
  local u = ctx.usage
  local write = ctx.cache_write or (type(ctx.reply.usage) == "table" and ctx.reply.usage.cache_write) or 0
  local out = { inputTokens = math.max(0, u.input - u.cached - write), outputTokens = u.output }
  if u.cached > 0 or write > 0 then out.cacheReadInputTokens, out.cacheWriteInputTokens = u.cached, write end
  out.totalTokens = out.inputTokens + out.outputTokens + u.cached + write
  return out
end

-- The reasoning of a scripted reply as Converse's blocks, with signatures.
local function converse_reasoning(ctx)
  local r = ctx.reply.reasoning
  if r == nil then return {} end
  local list = type(r) == "table" and r or { r }
  local out = {}
  for i, item in ipairs(list) do
    local text = type(item) == "table" and item.text or item
    out[i] = { text = tostring(text), signature = (type(item) == "table" and item.signature) or ("EqConverse" .. i) }
  end
  return out
end

local function converse_stop(ctx)
  if ctx.reply.finish_reason then return ctx.reply.finish_reason end
  return #ctx.calls > 0 and "tool_use" or "end_turn"
end

-- What the mock remembers of a reply's calls: the reasoning the follow-up
-- must send back with them.
local function converse_remember(self, ctx, reasoning)
  if #reasoning == 0 then return end
  self._converse_reasoning = self._converse_reasoning or {}
  for _, c in ipairs(ctx.calls) do self._converse_reasoning[c.id] = reasoning[1].signature end
end

function converse.completion(ctx)
  local content = {}
  local reasoning = converse_reasoning(ctx)
  for _, r in ipairs(reasoning) do
    content[#content + 1] = { reasoningContent = { reasoningText = { text = r.text, signature = r.signature } } }
  end
  if ctx.text ~= "" then content[#content + 1] = { text = ctx.text } end
  -- (each call's input as the script wrote it, spliced in: an empty array
  -- decoded and encoded again would come out an object)
  for i, c in ipairs(ctx.calls) do
    content[#content + 1] = { toolUse = { toolUseId = c.id, name = c.name, input = "__tide_mock_input_" .. i .. "__" } }
  end
  converse_remember(ctx.server, ctx, reasoning)
  local body = encode({ output = { message = { role = "assistant", content = #content > 0 and content or EMPTY } },
    stopReason = converse_stop(ctx), usage = converse_usage(ctx), metrics = { latencyMs = 321 } })
  return (body:gsub('"__tide_mock_input_(%d+)__"', function(i)
    local args = ctx.calls[tonumber(i)].args
    return args:match("^%s*{") and args or "{}"
  end))
end

local function converse_frame(name, obj)
  local payload = obj
  payload.p = PAD:sub(1, (#encode(obj) % #PAD) + 1)
  return es_frame({ { ":event-type", name }, { ":content-type", "application/json" }, { ":message-type", "event" } },
    encode(payload))
end

function converse.stream(ctx, truncate)
  local frames = { converse_frame("messageStart", { role = "assistant" }) }
  local index = 0
  local reasoning = converse_reasoning(ctx)
  for _, r in ipairs(reasoning) do
    for _, piece in ipairs(split(r.text, 2)) do
      frames[#frames + 1] = converse_frame("contentBlockDelta", { contentBlockIndex = index,
        delta = { reasoningContent = { text = piece } } })
    end
    frames[#frames + 1] = converse_frame("contentBlockDelta", { contentBlockIndex = index,
      delta = { reasoningContent = { signature = r.signature } } })
    frames[#frames + 1] = converse_frame("contentBlockStop", { contentBlockIndex = index })
    index = index + 1
  end
  if ctx.text ~= "" then
    for _, piece in ipairs(ctx.text_pieces) do
      frames[#frames + 1] = converse_frame("contentBlockDelta", { contentBlockIndex = index, delta = { text = piece } })
    end
    frames[#frames + 1] = converse_frame("contentBlockStop", { contentBlockIndex = index })
    index = index + 1
  end
  for _, c in ipairs(ctx.calls) do
    frames[#frames + 1] = converse_frame("contentBlockStart", { contentBlockIndex = index,
      start = { toolUse = { toolUseId = c.id, name = c.name } } })
    for _, piece in ipairs(split(c.args, 2)) do
      frames[#frames + 1] = converse_frame("contentBlockDelta", { contentBlockIndex = index,
        delta = { toolUse = { input = piece } } })
    end
    frames[#frames + 1] = converse_frame("contentBlockStop", { contentBlockIndex = index })
    index = index + 1
  end
  converse_remember(ctx.server, ctx, reasoning)
  if truncate then return frames end
  if ctx.reply.exception then -- (the stream fails before its end)
    frames[#frames + 1] = es_frame({ { ":exception-type", ctx.reply.exception }, { ":content-type", "application/json" },
      { ":message-type", "exception" } }, encode({ message = "Too many requests, please wait before trying again." }))
    return frames
  end
  frames[#frames + 1] = converse_frame("messageStop", { stopReason = converse_stop(ctx) })
  frames[#frames + 1] = converse_frame("metadata", { usage = converse_usage(ctx),
    metrics = { latencyMs = 321 } })
  return frames
end

function converse.malformed_stream(ctx)
  local frames = converse.stream(ctx)
  local c = frames[2]
  frames[2] = c:sub(1, -2) .. string.char((c:byte(-1) + 1) % 256) -- (its CRC does not match)
  return frames
end

local function validation(message) return bedrock_error(400, "ValidationException", message) end

-- The model's own fields (additionalModelRequestFields) as the models
-- behind Converse take them: Claude's (its Messages API's fields, thinking
-- with the API's rules), Amazon Nova's (Nova 2's reasoningConfig), OpenAI's
-- open-weight models' reasoning_effort; a key the model does not know is
-- refused in Bedrock's words. Other makers' fields pass unchecked.
local MODEL_FIELDS = {
  anthropic = { thinking = true, top_k = true, anthropic_beta = true, output_config = true },
  amazon = { inferenceConfig = true },
  nova2 = { inferenceConfig = true, reasoningConfig = true },
  openai = { reasoning_effort = true },
}
local EFFORT = { low = true, medium = true, high = true }

local function converse_model_fields(req, json)
  local extra = json.additionalModelRequestFields
  if extra == nil then return nil end
  local id = percent_decode(req.path:match("^/model/([^/]+)/"))
  local maker = require("tide.provider.bedrock")._family(id)
  if maker == "amazon" and id:find("nova%-2") then maker = "nova2" end
  local known = MODEL_FIELDS[maker]
  if not known then return nil end
  for k in pairs(extra) do
    if not known[k] then
      return validation(("Malformed input request: #: extraneous key [%s] is not permitted, please reformat your "
        .. "input and try again."):format(k))
    end
  end
  local config = type(json.inferenceConfig) == "table" and json.inferenceConfig or {}
  local t = extra.thinking
  if type(t) == "table" and t.type == "enabled" then
    local budget = t.budget_tokens
    if type(budget) ~= "number" or budget % 1 ~= 0 or budget < 1024 then
      return validation("The model returned the following errors: thinking.enabled.budget_tokens: Input should be "
        .. "greater than or equal to 1024")
    end
    if config.maxTokens and config.maxTokens <= budget then
      return validation("The model returned the following errors: `max_tokens` must be greater than "
        .. "`thinking.budget_tokens`.")
    end
  end
  if type(t) == "table" and t.type ~= "disabled" then
    if config.temperature ~= nil and config.temperature ~= 1 then
      return validation("The model returned the following errors: `temperature` may only be set to 1 when thinking "
        .. "is enabled or in adaptive mode.")
    end
    local choice = type(json.toolConfig) == "table" and json.toolConfig.toolChoice
    if type(choice) == "table" and (choice.any or choice.tool) then
      return validation("The model returned the following errors: Thinking may not be enabled when tool_choice "
        .. "forces tool use.")
    end
  end
  local r = extra.reasoningConfig
  if r ~= nil and (type(r) ~= "table" or (r.type ~= "enabled" and r.type ~= "disabled")
      or (r.type == "enabled" and not EFFORT[r.maxReasoningEffort])) then
    return validation("Malformed input request: #/reasoningConfig: type must be enabled or disabled, and "
      .. "maxReasoningEffort one of low, medium, high")
  end
  if extra.reasoning_effort ~= nil and not EFFORT[extra.reasoning_effort] then
    return validation("Malformed input request: #/reasoning_effort: must be one of low, medium, high")
  end
  return nil
end

function converse.validate(self, req)
  local json = req.json
  local refused = converse_model_fields(req, json)
  if refused then return refused end
  local msgs = type(json.messages) == "table" and json.messages or {}
  local tool_blocks, pending = false, nil
  for i, m in ipairs(msgs) do
    if type(m) ~= "table" or (m.role ~= "user" and m.role ~= "assistant") or type(m.content) ~= "table" then
      return validation(("Malformed input request: messages.%d must have a role and content"):format(i - 1))
    end
    if #m.content == 0 then
      return validation(("The content field in the Message object at messages.%d is empty. Add a ContentBlock object "
        .. "to the content field and try again."):format(i - 1))
    end
    if i == 1 and m.role ~= "user" then
      return validation("A conversation must start with a user message. Try again with a conversation that starts "
        .. "with a user message.")
    end
    if i > 1 and msgs[i - 1].role == m.role then
      return validation("A conversation must alternate between user and assistant roles. Make sure the conversation "
        .. "alternates between user and assistant roles and try again.")
    end
    local answered, signature = {}, nil
    for j, b in ipairs(m.content) do
      if type(b) == "table" and b.text ~= nil and (type(b.text) ~= "string" or not b.text:find("%S")) then
        return validation(("The text field in the ContentBlock object at messages.%d.content.%d is blank. Add text "
          .. "to the text field, and try again."):format(i - 1, j - 1))
      end
      if type(b) == "table" and (b.toolUse or b.toolResult) then tool_blocks = true end
      if type(b) == "table" and type(b.toolResult) == "table" then answered[b.toolResult.toolUseId] = true end
      if type(b) == "table" and type(b.reasoningContent) == "table" and type(b.reasoningContent.reasoningText) == "table" then
        signature = b.reasoningContent.reasoningText.signature
      end
      if type(b) == "table" and type(b.toolUse) == "table" then
        local want = self._converse_reasoning and self._converse_reasoning[b.toolUse.toolUseId]
        if want and signature ~= want then
          return validation(("messages.%d.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
            .. "`%s`. When `thinking` is enabled, a final `assistant` message must start with a thinking block."):format(
            i - 1, type(m.content[1]) == "table" and m.content[1].text and "text" or "tool_use"))
        end
      end
    end
    if pending then
      local missing = {}
      for _, id in ipairs(pending) do if not answered[id] then missing[#missing + 1] = id end end
      if #missing > 0 then
        return validation(("Expected toolResult blocks at messages.%d.content for the following Ids: %s"):format(i - 1,
          table.concat(missing, ", ")))
      end
    end
    pending = nil
    if m.role == "assistant" then
      for _, b in ipairs(m.content) do
        if type(b) == "table" and type(b.toolUse) == "table" then
          pending = pending or {}
          pending[#pending + 1] = b.toolUse.toolUseId
        end
      end
    end
  end
  local tools = type(json.toolConfig) == "table" and type(json.toolConfig.tools) == "table" and json.toolConfig.tools or {}
  for i, t in ipairs(tools) do
    local spec = type(t) == "table" and t.toolSpec
    if type(spec) == "table" and spec.description ~= nil and (type(spec.description) ~= "string" or spec.description == "") then
      return validation(("1 validation error detected: Value '' at 'toolConfig.tools.%d.member.toolSpec.description' "
        .. "failed to satisfy constraint: Member must have length greater than or equal to 1"):format(i))
    end
  end
  if tool_blocks and type(json.toolConfig) ~= "table" then
    return validation("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
  end
  if json.outputConfig ~= nil then -- structured output: a JSON schema, as a string
    local f = type(json.outputConfig) == "table" and json.outputConfig.textFormat
    local def = type(f) == "table" and type(f.structure) == "table" and f.structure.jsonSchema
    local schema = type(def) == "table" and type(def.schema) == "string" and decode(def.schema)
    if type(f) ~= "table" or f.type ~= "json_schema" or type(schema) ~= "table" then
      return validation("Malformed input request: #/outputConfig/textFormat: the json_schema structure needs a "
        .. "schema string holding a JSON schema")
    end
  end
  return nil
end

-- A rendered Converse reply as Bedrock sends it: a stream as an event
-- stream, an error as Bedrock's.
function converse.response(res, reply)
  if res.chunks then
    res.headers = headers_with(ES_HEADERS, reply.headers)
    return res
  end
  if res.status and res.status >= 400 then
    local obj = decode(res.body or "") or {}
    return bedrock_failure(res, reply, obj.message)
  end
  res.headers = headers_with(res.headers or JSON_HEADERS, { ["x-amzn-requestid"] = "mock-bedrock-request" })
  return res
end

local shapes = { openai = openai, anthropic = anthropic, responses = responses, converse = converse }

-- Fills `text` so that the body rendered by `render_body(text)` is `n` bytes.
local function fill_to(n, render_body)
  local body = render_body("")
  local fill = n - #body
  if fill <= 0 then return body end
  body = render_body(string.rep("x", fill))
  local diff = n - #body -- only the content string changed; correct once
  if diff ~= 0 then body = render_body(string.rep("x", math.max(0, fill + diff))) end
  return body
end

local function render(self, shape_name, reply, req)
  local shape = shapes[shape_name]
  local json = type(req.json) == "table" and req.json or {}
  local stream = json.stream == true
  local delay = reply.delay_ms or self._opts.delay_ms
  local chunk_delay = reply.chunk_delay_ms or self._opts.chunk_delay_ms
  local fault = reply.fault

  if fault == "hang" then return { hang = true } end
  if fault == "status" then
    local status = reply.status or 500
    local h = copy(JSON_HEADERS)
    if reply.retry_after then h["retry-after"] = tostring(reply.retry_after) end
    local body = reply.body
    if type(body) == "table" then body = encode(body) end
    return { status = status, headers = headers_with(h, reply.headers), delay_ms = delay,
             body = body or shape.error_body(status, ("mock: HTTP %d"):format(status)) }
  end
  if fault ~= nil and fault ~= "drop" and fault ~= "malformed" and fault ~= "truncate"
      and fault ~= "oversize" then
    error(("mock: unknown fault %q"):format(tostring(fault)), 0)
  end

  if shape.forced then reply = shape.forced(json, reply) end
  local text = reply.text or ""
  if type(text) ~= "string" then error("mock: reply.text must be a string", 0) end
  local calls = tool_calls(self, reply, shape.call_prefix or (shape_name == "openai" and "call_" or "toolu_"),
    shape.custom_tools and custom_tools(json))
  local mistral = shape_name == "openai" and (self._opts.openai or {}).mistral or nil
  local groq = shape_name == "openai" and (self._opts.openai or {}).groq or nil
  local deepseek = shape_name == "openai" and (self._opts.openai or {}).deepseek or nil
  if mistral then -- Mistral's call ids: nine letters and digits
    for i, c in ipairs(calls) do
      if not (reply.tool_calls[i] and reply.tool_calls[i].id) then c.id = ("mc%07d"):format(self._ids - #calls + i) end
    end
  end
  local ctx = {
    mistral = mistral, groq = groq, deepseek = deepseek,
    id = (shape.id_prefix or (shape_name == "openai" and "chatcmpl-mock" or "msg_mock")) .. self._count,
    n = self._count,
    created = os.time(),
    model = type(json.model) == "string" and json.model or "mock-model",
    text = text, calls = calls,
    reply = reply, json = json, -- for a shape's own fields (reasoning, stop_reason)
    server = self,
  }
  ctx.usage = usage_of(reply, req, text, calls)
  ctx.reply = reply -- the wire formats' own fields (reasoning, signatures...)
  -- The service tier that served it, as the services say it: OpenAI's
  -- "flex" for a flex request, "priority" for "priority" and "fast", else
  -- "default"; Anthropic's "standard" (the mock has no priority capacity).
  -- A script's `service_tier` wins (a flex request served at default).
  local asked = json.service_tier
  ctx.tier = type(reply.service_tier) == "string" and reply.service_tier
    or (shape_name == "anthropic" and "standard")
    or (asked == "flex" and "flex") or ((asked == "priority" or asked == "fast") and "priority") or "default"
  -- a prompt cache's reads and writes, unless the script says them
  local scripted = type(reply.usage) == "table" and (reply.usage.cached or reply.usage.cache_write)
  if shape.cache and not scripted and type(req.body) == "string" and req.body:find('"cache_control"', 1, true) then
    shape.cache(self, json, ctx)
  end

  if fault == "oversize" then
    local n = math.tointeger(reply.bytes) or error("mock: fault 'oversize' needs bytes = n", 0)
    ctx.calls = {}
    ctx.usage.output = tokens(n)
    if stream then
      ctx.text = string.rep("x", n)
      ctx.text_pieces = split(ctx.text, math.max(1, (n + 16383) // 16384))
      return { status = 200, headers = headers_with(SSE_HEADERS, reply.headers),
               delay_ms = delay, chunks = shape.stream(ctx) }
    end
    return { status = 200, headers = headers_with(JSON_HEADERS, reply.headers), delay_ms = delay,
             body = fill_to(n, function(t) ctx.text = t; return shape.completion(ctx) end) }
  end

  ctx.text_pieces = split(text, 3)
  if shape.remember_calls then shape.remember_calls(self, ctx) end
  if not stream then
    local body = fault == "malformed"
      and '{"id":"' .. ctx.id .. '","object":"chat.completion","choices":[{"message":{"content":'
      or shape.completion(ctx)
    local res = { status = 200, headers = headers_with(JSON_HEADERS, reply.headers),
                  delay_ms = delay, body = body }
    if fault == "drop" then res.drop_after = 0 end
    -- A clean HTTP response whose JSON stops half-way.
    if fault == "truncate" then res.body = body:sub(1, #body // 2) end
    return res
  end
  local chunks
  if fault == "malformed" then
    chunks = shape.malformed_stream(ctx)
  else
    chunks = shape.stream(ctx, fault == "truncate")
  end
  return { status = 200, headers = headers_with(SSE_HEADERS, reply.headers), delay_ms = delay,
           chunk_delay_ms = chunk_delay, chunks = chunks,
           drop_after = fault == "drop" and (reply.after or 2) or nil }
end

-- ------------------------------------------------------------ mock server

---@class tide.testing.mock_server_opts
---@field replies? tide.testing.reply[] scripted replies, consumed in order
---@field default? tide.testing.reply used when no scripted reply is left
---@field delay_ms? integer default delay before every reply
---@field chunk_delay_ms? integer default delay between streamed chunks
---@field routes? table<string, fun(req:tide.testing.request):table> other paths: raw responses
---@field port? integer default 0 (ephemeral)
---@field ref? boolean keep tide.run's loop alive while listening (default false)
---@field record? boolean keep every request for `requests()` (default true); a long-running
---mock passes false, so that memory does not grow with the requests it answers

-- The options of mock_server and what each must be.
local MOCK_OPTIONS = {
  replies = "table", default = "reply", delay_ms = "delay", chunk_delay_ms = "delay",
  routes = "table", port = "port", ref = "boolean", record = "boolean",
  openai = "table", -- OpenAI-only checks (see openai.validate)
  anthropic = "table", -- Anthropic-only behaviour (see anthropic.validate)
  bedrock = "table", -- Claude on Bedrock: { api_key, credentials, region } it checks requests against
}

---@class tide.testing.MockServer
---@field url string "http://127.0.0.1:<port>"
---@field port integer
local Mock = {}
Mock.__index = Mock

function Mock:_handle(req)
  self._count = self._count + 1
  local rec = { method = req.method, path = req.path, headers = req.headers, body = req.body,
                json = decode(req.body) }
  if self._record then
    local reqs = self._requests
    reqs[#reqs + 1] = rec
  end
  local route = req.path:match("^[^?]*")
  local shape, bedrock, converse_rec
  if req.method == "POST" and route:match("/chat/completions$") then
    shape = "openai"
  elseif req.method == "POST" and route:match("/messages$") then
    shape = "anthropic"
    if route == "/anthropic/v1/messages" and self._opts.bedrock then -- Bedrock's Mantle endpoint
      local refused = anthropic.mantle_refusal(self, rec)
      if refused then return refused end
    end
  elseif req.method == "POST" and route:match("/publishers/anthropic/models/[^/:]+:%a+$")
      and (route:match(":rawPredict$") or route:match(":streamRawPredict$")) then
    -- Claude on Vertex AI: Google's credentials, the version in the body
    local refused = anthropic.vertex_refusal(rec)
    if refused then return refused end
    shape = "anthropic"
  elseif req.method == "POST" and route:match("/responses$") then
    shape = "responses"
  elseif req.method == "POST" and (route:match("^/model/[^/]+/invoke$")
      or route:match("^/model/[^/]+/invoke%-with%-response%-stream$")) then
    -- Claude on Bedrock: AWS's credentials, the version in the body, the
    -- stream by the path (and framed as AWS frames it)
    local refused = anthropic.bedrock_refusal(self, rec)
    if refused then return refused end
    shape, bedrock = "anthropic", rec
    local json = copy(rec.json)
    json.stream = route:match("stream$") ~= nil
    -- the reply names the model as Anthropic does
    local id = percent_decode(route:match("^/model/([^/]+)/"))
    json.model = id:match("anthropic%.(claude[%w%-%.]-)%-v%d+:%d+$") or id
    rec = setmetatable({ json = json }, { __index = rec })
  elseif req.method == "POST" and (route:match("^/model/[^/]+/converse$")
      or route:match("^/model/[^/]+/converse%-stream$")) then
    -- Bedrock's Converse API: AWS's credentials, the stream by the path
    local refused = bedrock_auth(self, rec, "bedrock")
    if refused then return refused end
    shape, converse_rec = "converse", true
    local json = copy(type(rec.json) == "table" and rec.json or {})
    json.stream = route:match("stream$") ~= nil
    json.model = percent_decode(route:match("^/model/([^/]+)/"))
    rec = setmetatable({ json = json }, { __index = rec })
  else
    local routes = self._opts.routes
    local h = routes and (routes[req.path] or routes[route])
    if h == nil then return json_error(404, ("mock: no route for %s %s"):format(req.method, req.path)) end
    local res = h(rec)
    if type(res) == "string" then res = { body = res } end
    return res
  end
  -- A request the real service would refuse is refused before any scripted
  -- reply is spent on it.
  local reject = shapes[shape].validate and shapes[shape].validate(self, rec)
  if reject then return bedrock and anthropic.bedrock_response(reject, {}) or reject end
  local wrap = converse_rec and function(res, r) return converse.response(res, r) end
  local reply
  if self._head <= self._tail then
    reply = self._queue[self._head]
    self._queue[self._head] = nil
    self._head = self._head + 1
  elseif (self.default or self._opts.default) ~= nil then
    -- `srv.default = r` may be set at any time, for the requests after it.
    reply = self.default or self._opts.default
  else
    local res = { status = 500, headers = JSON_HEADERS,
                  body = shapes[shape].error_body(500, "mock: no scripted reply left") }
    if wrap then return wrap(res, {}) end
    return bedrock and anthropic.bedrock_response(res, {}) or res
  end
  reply = resolve(reply, rec)
  if wrap then
    local r = reply
    if reply.fault == "exception" then -- (a stream that ends with an exception frame)
      r = copy(reply)
      r.fault, r.exception = nil, reply.exception or "throttlingException"
    end
    return wrap(render(self, shape, r, rec), reply)
  end
  if bedrock then
    local r = reply
    if reply.fault == "exception" then -- (rendered whole; bedrock_response fails it)
      r = copy(reply)
      r.fault = nil
    end
    return anthropic.bedrock_response(render(self, shape, r, rec), reply)
  end
  return render(self, shape, reply, rec)
end

--- Every request received so far, oldest first (a copy of the list); empty
--- when the server was started with `record = false`.
---@return tide.testing.request[]
function Mock:requests()
  return table.move(self._requests, 1, #self._requests, 1, {})
end

--- The number of requests handled so far, recorded or not.
---@return integer
function Mock:request_count()
  return self._count
end

--- Appends scripted replies.
---@param ... tide.testing.reply
function Mock:push(...)
  for i = 1, select("#", ...) do
    self._tail = self._tail + 1
    self._queue[self._tail] = (select(i, ...))
  end
end

--- The number of scripted replies not yet consumed.
---@return integer
function Mock:pending()
  return self._tail - self._head + 1
end

--- The server's counters: `{ port, connections, requests }`.
---@return {port:integer, connections:integer, requests:integer}
function Mock:stats()
  return self._server:stats()
end

--- Closes the listener and every connection (idempotent). A mock server that
--- is never closed lives until the Lua state closes.
function Mock:close()
  self._server:close()
end
Mock.__close = Mock.close

--- Starts a mock model provider on 127.0.0.1.
---@param opts? tide.testing.mock_server_opts
---@return tide.testing.MockServer|nil server
---@return table|nil err `{ code = "ListenFailed", message }` when the port cannot be bound
function testing.mock_server(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error(("bad argument #1 to 'mock_server' (table expected, got %s)"):format(type(opts)), 2)
  end
  for k, v in pairs(opts) do
    local want = MOCK_OPTIONS[k]
    if want == nil then
      error(("bad argument #1 to 'mock_server' (unknown option '%s')"):format(tostring(k)), 2)
    end
    if want == "delay" and (math.type(v) ~= "integer" or v < 0) then
      error(("bad argument #1 to 'mock_server' (field '%s' must be a non-negative integer)"):format(k), 2)
    elseif want == "port" and (math.type(v) ~= "integer" or v < 0 or v > 65535) then
      error("bad argument #1 to 'mock_server' (field 'port' must be an integer from 0 to 65535)", 2)
    elseif want == "reply" and type(v) ~= "string" and type(v) ~= "table" and type(v) ~= "function" then
      error(("bad argument #1 to 'mock_server' (field 'default' must be a string, table or function, got %s)"):format(
        type(v)), 2)
    elseif (want == "boolean" or want == "table") and type(v) ~= want then
      error(("bad argument #1 to 'mock_server' (field '%s' must be a %s)"):format(k, want), 2)
    end
  end
  local self = setmetatable({ _opts = opts, _queue = {}, _head = 1, _tail = 0,
                              _requests = {}, _record = opts.record ~= false,
                              _ids = 0, _count = 0 }, Mock)
  self:push(table.unpack(opts.replies or {}))
  local srv, err = require("tide.testing.server").listen({
    host = "127.0.0.1", port = opts.port or 0, ref = opts.ref == true,
    handler = function(req) return self:_handle(req) end,
  })
  if not srv then return nil, err end
  self._server = srv
  self.port = srv:port()
  self.url = ("http://127.0.0.1:%d"):format(self.port)
  return self
end

-- ---------------------------------------------------------- reply helpers

-- The request's messages: chat's and Anthropic's `messages`, or the
-- Responses API's `input` items.
local function messages(req)
  local json = req.json
  if type(json) ~= "table" then return {} end
  if type(json.messages) == "table" then return json.messages end
  return type(json.input) == "table" and json.input or {}
end

--- Counts tool results in a request: OpenAI `role = "tool"` messages and
--- Anthropic `tool_result` content blocks.
---@param req tide.testing.request
---@return integer
function testing.count_tool_results(req)
  local n = 0
  for _, m in ipairs(messages(req)) do
    if type(m) == "table" then
      if m.role == "tool" or m.type == "function_call_output" then
        n = n + 1
      elseif type(m.content) == "table" then
        for _, block in ipairs(m.content) do
          -- (Anthropic's tool_result, Converse's toolResult)
          if type(block) == "table" and (block.type == "tool_result" or block.toolResult ~= nil) then n = n + 1 end
        end
      end
    end
  end
  return n
end

--- A reply function that calls `tool_name` (arguments `{ q = "item <k>" }`)
--- while the request holds fewer than `n` tool results, then answers
--- "done after <n> lookups". Works for both wire formats.
---@param n integer
---@param tool_name? string default "lookup"
---@return fun(req:tide.testing.request):tide.testing.reply
function testing.tool_loop(n, tool_name)
  if math.type(n) ~= "integer" or n < 0 then
    error("bad argument #1 to 'tool_loop' (non-negative integer expected)", 2)
  end
  tool_name = tool_name or "lookup"
  return function(req)
    local k = testing.count_tool_results(req)
    if k < n then
      return { tool_calls = { { name = tool_name, arguments = { q = "item " .. (k + 1) } } } }
    end
    return ("done after %d lookups"):format(n)
  end
end

local function text_of(content)
  if type(content) == "string" then return content end
  if type(content) ~= "table" then return nil end
  local parts = {}
  for _, part in ipairs(content) do
    if type(part) == "table" and (part.type == "text" or part.type == "input_text")
        and type(part.text) == "string" then
      parts[#parts + 1] = part.text
    end
  end
  return #parts > 0 and table.concat(parts) or nil
end

--- A reply function answering "echo: <text of the last user message>".
---@param req tide.testing.request
---@return string
function testing.echo(req)
  local msgs = messages(req)
  for i = #msgs, 1, -1 do
    local m = msgs[i]
    if type(m) == "table" and m.role == "user" then
      local text = text_of(m.content)
      if text then return "echo: " .. text end
    end
  end
  return "echo: "
end

-- The mock wire helpers, shared with tide.testing.composio.
testing._wire = { encode = encode, decode = decode, null = null, EMPTY = EMPTY }

-- ------------------------------------------------- record and replay

--- A copy of `opts.provider` that records its traffic to `opts.cassette`
--- (see tide.testing.cassette).
---@param opts tide.testing.record_opts
---@return table|nil provider
---@return table|nil err
function testing.record(opts) return require("tide.testing.cassette").record(opts) end

--- Serves a recorded cassette on loopback (see tide.testing.cassette).
---@param path string
---@param opts? tide.testing.replay_opts
---@return tide.testing.ReplayServer|nil server
---@return table|nil err `CassetteError`
function testing.replay(path, opts) return require("tide.testing.cassette").replay(path, opts) end

return testing
