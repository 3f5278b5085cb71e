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
--- "openai_responses" }`, and a hosted tool's item (`M.HOSTED`: a web or
--- file search, code run by the code interpreter, a generated image, a
--- remote MCP server's tools and calls), in its place among them, `{ type
--- = "item", id, item = its JSON as it came, provider = "openai_responses"
--- }`; only such parts are ever sent back, and only here.
---
--- A remote MCP server's call that waits for approval (an `mcp` tool's
--- `require_approval`, "always" by default) ends the response with an
--- `mcp_approval_request` item and no answer. The item is kept in its place
--- as a hosted one, and the reply gets a call for it, `{ id, name,
--- arguments, server = server_label }`: the turn waits for a person's
--- decision on it as on any call that needs approval (ApprovalRequired,
--- s:approve, s:reject, s:resume), and its result, `approve` true or false
--- (and the rejection as `reason`), goes back as an `mcp_approval_response`
--- after the request it answers, which is how a stateless conversation
--- gives an approval.
local provider = require "tide.provider.base"
local core = require "tide.core"
local json = require "tide.json"
local unwrap_reply = require("tide.schema").unwrap_reply
local content = require "tide.content"

local M = {}

--- The `provider` tag of the reasoning parts this wire format makes and
--- sends back.
M.REASONING = "openai_responses"

--- The items of tools the service runs itself, kept and sent back whole
--- (core/responses.c keeps the same list).
M.HOSTED = { web_search_call = true, file_search_call = true, code_interpreter_call = true,
             image_generation_call = true, mcp_call = true, mcp_list_tools = true,
             mcp_approval_request = true, compaction = true }

local Provider = provider.class("tide.provider.responses")

local canonical = json.canonical
local quote = json.quote
local concat = table.concat

function Provider:__tostring()
  return ("tide.provider.openai(responses, %s, %s)"):format(self.model, self.base_url)
end

-- It sends a remote MCP server's calls back (tide.provider.fallback leaves
-- them out for a provider that would not).
Provider._server_calls = true

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
  local list = provider._tools("openai", tools, 2, self._custom_tools)
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
  -- (both only beside tools: the API refuses them without)
  local server = self.server_tools or {}
  if self.tool_choice ~= nil and #list + #server > 0 then fields.tool_choice = canonical(self.tool_choice) end
  if self.parallel_tool_calls ~= nil and #list + #server > 0 then
    fields.parallel_tool_calls = self.parallel_tool_calls and "true" or "false"
  end
  -- The built-in tools (server_tools: web search, file search, ...) go
  -- first, as given; a reply's items of theirs go back with it (see
  -- reasoning_items).
  if #list + #server > 0 then
    local encoded = {}
    for i, t in ipairs(server) do encoded[i] = t end
    for i, t in ipairs(list) do
      encoded[#server + i] = t.format
        and canonical({ type = "custom", name = t.name, description = t.description, format = t.format })
        or canonical({ type = "function", name = t.name, description = t.description,
                       parameters = t.parameters, strict = false })
    end
    fields.tools = "[" .. concat(encoded, ",") .. "]"
  end
  for k, v in pairs(self.extra_json or {}) do fields[k] = v end
  if schema ~= nil then
    -- (beside extra_body's text options, gpt-5's verbosity say: the format joins them)
    local schemas = require "tide.schema"
    local sent, name = schemas.for_response_format(schema)
    local text = fields.text and json.decode(fields.text)
    text = type(text) == "table" and text or {}
    text.format = { type = "json_schema", name = name, schema = sent, strict = schemas.strict_ok(sent) }
    fields.text = canonical(text)
  end
  local keys = {}
  for k in pairs(fields) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = quote(k) .. ":" .. fields[k] end
  return "{" .. concat(parts, ",") .. ',"input":['
end

-- The calls of a reply's MCP approval requests (kept among its reasoning
-- parts as hosted items), after its function calls; or nil and the
-- MalformedResponse of a request without the fields the API gives it.
local function approval_calls(res)
  local calls = res.tool_calls
  for _, r in ipairs(res.reasoning) do
    local raw = r.type == "item" and r.item
    if raw and raw:find('"mcp_approval_request"', 1, true) then
      local item = json.decode(raw)
      if type(item) == "table" and item.type == "mcp_approval_request" then
        if type(item.name) ~= "string" or type(item.server_label) ~= "string"
            or type(item.arguments) ~= "string" then
          return nil, core.error("MalformedResponse", ("openai mcp_approval_request %s needs 'name', "
            .. "'server_label' and 'arguments' strings"):format(r.id))
        end
        calls[#calls + 1] = { id = r.id, name = item.name, server = item.server_label, arguments = item.arguments }
        res.stop = "tool_calls"
      end
    end
  end
  return res
end

--- Finishes a reply: the answer to a wrapped schema
--- (tide.schema.for_response_format) unwrapped, and a call for each MCP
--- approval request.
function Provider:_finish_reply(res, body)
  unwrap_reply(res, body)
  if res.reasoning then return approval_calls(res) end
  return res
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
-- fail the request, so it is left out; and an item with it goes without its
-- id: the encrypted content stands alone, and the id would be looked up and
-- not found ("Item with id 'rs_...' not found. Items are not persisted when
-- `store` is set to false": Azure always, OpenAI's API for newer models;
-- the Vercel AI SDK and other agent runtimes dropped the id in 2026).
-- A compaction item without its id: { encrypted_content, type } (the
-- input's CompactionSummaryItemParam, where the id is optional).
local function compaction_item(raw)
  local item = json.decode(raw)
  if type(item) ~= "table" or item.type ~= "compaction" or type(item.encrypted_content) ~= "string" then return raw end
  return '{"encrypted_content":' .. quote(item.encrypted_content) .. ',"type":"compaction"}'
end

local function reasoning_items(reasoning, store)
  if reasoning == nil then return nil end
  local items, n = nil, 0
  for _, r in ipairs(reasoning) do
    if type(r) == "table" and r.provider == M.REASONING and r.type == "item" and type(r.item) == "string" then
      -- a hosted tool's item, as it came, id and all; but the service's
      -- compaction (extra_body's context_management), which is what a
      -- reasoning item is: encrypted content that stands alone, its id
      -- naming nothing stored when nothing is (see above)
      n = n + 1
      items = items or {}
      items[n] = (not store and r.item:find('"compaction"', 1, true)) and compaction_item(r.item) or r.item
    elseif type(r) == "table" and r.provider == M.REASONING and r.type == "encrypted" and type(r.id) == "string"
        and (store or type(r.data) == "string") then
      local summary = (type(r.summary) == "string" and r.summary ~= "")
        and '[{"text":' .. quote(r.summary) .. ',"type":"summary_text"}]' or "[]"
      n = n + 1
      items = items or {}
      items[n] = (type(r.data) == "string" and '{"encrypted_content":' .. quote(r.data) .. "," or "{")
        .. (store and '"id":' .. quote(r.id) .. "," or "") .. '"summary":' .. summary .. ',"type":"reasoning"}'
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
    if r.provider == M.REASONING and r.type == "item" then
      local item = type(r.item) == "string" and r.item:match("^%s*{") and json.decode(r.item)
      if type(item) ~= "table" or not M.HOSTED[item.type] or type(item.id) ~= "string" then
        error(("tide.provider.openai: reasoning[%d] (a Responses hosted tool's item) needs 'item', the JSON "
          .. "object of a hosted tool's item (web_search_call, file_search_call, code_interpreter_call, "
          .. "image_generation_call, mcp_call, mcp_list_tools, mcp_approval_request, compaction) with its id"):format(i),
          level + 1)
      end
    elseif r.provider == M.REASONING then
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
      local c = r.content
      -- text, images and files: the output is a list of input_text,
      -- input_image and input_file (a PDF) parts, as the API takes it
      if r.approve ~= nil then
        -- a remote MCP server's call, decided: the reason only with a
        -- rejection (Azure refuses "'reason' cannot be provided when
        -- 'approve' is true")
        items[i] = '{"approval_request_id":' .. quote(r.id) .. ',"approve":' .. tostring(r.approve == true)
          .. (r.approve ~= true and type(r.reason) == "string" and ',"reason":' .. quote(r.reason) or "")
          .. ',"type":"mcp_approval_response"}'
      else
        local output = type(c) == "table" and content.is_neutral(c)
          and canonical(content.openai_responses(content.text_files_inline(c))) or quote(result_text(c))
        -- (a custom tool's call is answered by its own kind of item)
        items[i] = '{"call_id":' .. quote(r.id) .. ',"output":' .. output .. ',"type":"'
          .. (r.custom and self._custom_tools and "custom_tool_call_output" or "function_call_output") .. '"}'
      end
    end
    return concat(items, ",")
  end
  if role == "assistant" then
    local items, n = {}, 0
    -- A reasoning item must be followed by the output it led to: a reply
    -- cut off while reasoning (nothing after it) sends none, else every
    -- later request gets the API's 400.
    local follows = (msg.content ~= nil and msg.content ~= "") or (msg.tool_calls ~= nil and #msg.tool_calls > 0)
    local reasoning = follows and msg.reasoning and reasoning_items(msg.reasoning, self.store)
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
    local calls = msg.tool_calls or {}
    if not self._custom_tools then calls = provider._function_calls(calls) end -- (see provider.base)
    for _, c in ipairs(calls) do
      -- (an MCP approval request's call is its item, among the reasoning)
      if c.custom then
        -- a custom tool's call: its input, text as the model wrote it
        n = n + 1
        items[n] = '{"call_id":' .. quote(c.id) .. ',"input":' .. quote(type(c.arguments) == "string" and c.arguments or "")
          .. ',"name":' .. quote(c.name) .. ',"type":"custom_tool_call"}'
      elseif c.server == nil then
        n = n + 1
        items[n] = '{"arguments":' .. quote(call_arguments(c)) .. ',"call_id":' .. quote(c.id)
          .. ',"name":' .. quote(c.name) .. ',"type":"function_call"}'
      end
    end
    return concat(items, ",")
  end
  return message_item(role, input_content(msg.content))
end

-- ------------------------------------------------------------------- wire

function Provider:_url() return provider._url_of(self.base_url, "/responses", self.query) end

Provider._headers = provider._bearer_headers

-- Replies are parsed in C (core/responses.c): streamed ones by a sink the
-- request feeds in place, which hands Lua one string per text delta (and
-- per reasoning delta, when someone listens) and one table at the end;
-- whole ones by a scanner. The final response echoes the request's
-- instructions and tools: the C scan skips them without building a table.
-- The reply is the neutral one (see reply.lua): text, calls finished,
-- reasoning items as `{ type = "encrypted", id, data = encrypted_content,
-- summary, provider = "openai_responses" }`, usage, stop and stop_raw.

--- The C parser of one streamed response (core.responses_stream). It
--- allocates nothing until the reply's bytes come.
function Provider:_c_stream()
  return core.responses_stream(self.max_body_bytes)
end

--- A whole (non-streamed) response scanned in C: the reply, or nil and the
--- error (a body that is not a JSON object, a failed response, an item
--- tide cannot send back); there is no Lua parser behind it. The exchange
--- gives the error the body's excerpt.
---@param body string|userdata the body, or the finished request holding it
---@return tide.provider.response|nil
---@return table|nil err
function Provider:_c_parse(body)
  return core.responses_parse(body, self.max_body_bytes)
end

return M
