--- tide.provider.anthropic: the Anthropic Messages wire format.
---
--- Body layout: max_tokens, model, output_config (the effort, a turn's schema), stream,
--- system, temperature, thinking, tool_choice and tools (with `extra_body`'s
--- fields merged in, in the same sorted order), then messages last so that
--- everything before it is a reusable prefix.
--- Every value is encoded canonically; tool-use inputs are the model's own
--- argument text, spliced in verbatim once checked to be a JSON object (a
--- decode and re-encode would turn its empty arrays into objects).
---
--- Replies are parsed in C (core/anthropic.c): usage is made to mean what
--- OpenAI's means (`input` is the whole prompt: Anthropic's `input_tokens`
--- counts only the part after the last cache breakpoint); thinking and
--- redacted_thinking blocks become the reply's `reasoning` parts, which the
--- encoder sends back first in the assistant message, verbatim, as the API
--- requires with tool use. A reply with a server tool's blocks (web search,
--- web fetch, code execution: `server_tools`, run by the API) keeps its
--- whole content as a `content` part, which the encoder sends back in
--- place of the message it would build.
local provider = require "tide.provider.base"
local core = require "tide.core"
local json = require "tide.json"
local parts = require "tide.content"

local M = {}

M.VERSION_HEADER = "2023-06-01"
M.DEFAULT_MAX_TOKENS = 4096

local Provider = provider.class("tide.provider.anthropic")

local canonical = json.canonical
local quote = json.quote

local aws_module -- tide.provider.aws, loaded by the first Bedrock provider
local function aws()
  aws_module = aws_module or require "tide.provider.aws"
  return aws_module
end

function Provider:__tostring()
  return ("tide.provider.anthropic(%s, %s)"):format(self.model, self.base_url)
end

-- ------------------------------------------------------------ Vertex AI
--
-- Claude on Google Cloud (anthropic-sdk-python's AnthropicVertex, whose
-- rules these are): POST {base}/projects/{project}/locations/{region}/
-- publishers/anthropic/models/{model}:rawPredict (:streamRawPredict when
-- streaming); the body without `model` and with `anthropic_version:
-- "vertex-2023-10-16"`; a Google OAuth access token (`api_key`, or from
-- the `token` option, else from Google's application default credentials:
-- tide.provider.google) as `Authorization: Bearer`, never an Anthropic key.

M.VERTEX_VERSION = "vertex-2023-10-16"

-- The host of a region, as the SDK picks it.
local function vertex_base(region)
  if region == "global" then return "https://aiplatform.googleapis.com/v1" end
  if region == "us" then return "https://aiplatform.us.rep.googleapis.com/v1" end
  if region == "eu" then return "https://aiplatform.eu.rep.googleapis.com/v1" end
  return ("https://%s-aiplatform.googleapis.com/v1"):format(region)
end

-- The vertex option checked, project and region filled in from the
-- environment; or nil and a misuse message.
local function vertex_of(v)
  local where = "tide.provider.anthropic: "
  for k in pairs(v) do
    if k ~= "project" and k ~= "region" then
      return nil, where .. "unknown option 'vertex." .. tostring(k) .. "'" .. (k == "token"
        and " (the access token function is the provider's 'token' option)" or "")
    end
  end
  local project = v.project or provider._env("ANTHROPIC_VERTEX_PROJECT_ID")
  local region = v.region or provider._env("CLOUD_ML_REGION")
  if type(project) ~= "string" or not project:match("^[%w%-]+$") then
    return nil, where .. "'vertex.project' must be a project id (or set ANTHROPIC_VERTEX_PROJECT_ID)"
  end
  if type(region) ~= "string" or not region:match("^[%w%-]+$") then
    return nil, where .. "'vertex.region' must be a region (or set CLOUD_ML_REGION)"
  end
  return { project = project, region = region }
end

-- -------------------------------------------------------------- Bedrock
--
-- Claude on Amazon Bedrock (anthropic-sdk-python's AnthropicBedrock, whose
-- rules these are): POST {base}/model/{model}/invoke
-- (/invoke-with-response-stream when streaming), the model id encoded but
-- for its ':'; the body without `model` and `stream`, with
-- `anthropic_version: "bedrock-2023-05-31"` and any anthropic-beta header
-- as `anthropic_beta`; a streamed reply framed as an AWS event stream
-- (core/eventstream.c). A Bedrock API key (`api_key`, or
-- AWS_BEARER_TOKEN_BEDROCK) goes as a bearer token; IAM credentials
-- (`bedrock.credentials`, or AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
-- AWS_SESSION_TOKEN, or the SDKs' default chain) sign every request
-- (tide.provider.aws). Never an Anthropic key. `mantle = true` speaks to
-- Bedrock's Mantle endpoint instead (the SDK's AnthropicBedrockMantle): the
-- Messages API itself at bedrock-mantle.{region}.api.aws/anthropic, its
-- body, headers and SSE as Anthropic's, signed for "bedrock-mantle".

M.BEDROCK_VERSION = "bedrock-2023-05-31"

-- The bedrock option checked, its region filled in from the environment;
-- or nil and a misuse message (tide.provider.aws.bedrock_options).
local function bedrock_of(b, opts)
  return aws().bedrock_options(b, opts, "tide.provider.anthropic: ", "bedrock.",
    { region = true, credentials = true, mantle = true, profile = true, mfa_code = true })
end

--- Creates the provider object, or returns nil plus a misuse message.
---@param opts? tide.provider.opts
function M.new(opts)
  local vertex, bedrock
  if type(opts) == "table" and type(opts.vertex) == "table" then
    local verr
    vertex, verr = vertex_of(opts.vertex)
    if not vertex then return nil, verr end
  end
  if type(opts) == "table" and type(opts.bedrock) == "table" then
    if vertex then return nil, "tide.provider.anthropic: 'vertex' and 'bedrock' cannot both be given" end
    local berr
    bedrock, berr = bedrock_of(opts.bedrock, opts)
    if not bedrock then return nil, berr end
  end
  local self, msg = provider._new("anthropic", opts, bedrock and {
    -- (an Anthropic key is never sent to Amazon)
    base_url = bedrock.mantle and (provider._env("ANTHROPIC_BEDROCK_MANTLE_BASE_URL")
        or ("https://bedrock-mantle.%s.api.aws/anthropic"):format(bedrock.region))
      or provider._env("ANTHROPIC_BEDROCK_BASE_URL") or ("https://bedrock-runtime.%s.amazonaws.com"):format(bedrock.region),
    api_key = bedrock.key,
    -- (an inference profile: Bedrock refuses the newer models' own ids
    -- for on-demand throughput; the global profile serves every
    -- commercial region)
    model = provider._env("TIDE_MODEL") or "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
    max_tokens = M.DEFAULT_MAX_TOKENS,
  } or vertex and {
    -- (an Anthropic key is never sent to Google)
    base_url = provider._env("ANTHROPIC_VERTEX_BASE_URL") or vertex_base(vertex.region),
    model = provider._env("TIDE_MODEL") or "claude-sonnet-4-5",
    max_tokens = M.DEFAULT_MAX_TOKENS,
  } or {
    base_url = provider._env("ANTHROPIC_BASE_URL") or "https://api.anthropic.com/v1",
    api_key = provider._env("ANTHROPIC_API_KEY"), api_key_env = "ANTHROPIC_API_KEY",
    model = provider._env("TIDE_MODEL") or "claude-sonnet-4-5",
    max_tokens = M.DEFAULT_MAX_TOKENS,
  })
  if not self then return nil, msg end
  self.vertex = vertex
  -- A gateway's token (what the official SDK's auth_token is for), on
  -- Anthropic's own API; Vertex AI and Bedrock have credentials of their own.
  local auth_token = type(opts) == "table" and opts.auth_token or nil
  if auth_token and (vertex or bedrock) then
    return nil, ("tide.provider.anthropic: 'auth_token' is for Anthropic's API, not %s"):format(
      vertex and "Vertex AI (give 'api_key' or 'token')" or "Bedrock (give 'api_key' or 'bedrock.credentials')")
  end
  if not (vertex or bedrock or self.key_header) then
    auth_token = auth_token or provider._env("ANTHROPIC_AUTH_TOKEN")
    if auth_token and auth_token:find("[\r\n%z]") then -- (from the environment: the option was checked)
      return nil, "tide.provider.anthropic: ANTHROPIC_AUTH_TOKEN must not contain a CR, LF or NUL"
    end
    self.auth_token = auth_token
  end
  if vertex and not self.api_key and not self.token then
    -- no access token given: Google's application default credentials
    -- (tide.provider.google), asked at the first request, renewed as the
    -- token option's are
    self.token, self._before_request = require("tide.provider.google").adc(provider._env), provider._renew_token
    self.token_from = "Google's application default credentials"
  end
  if bedrock then
    -- Mantle (the Messages API itself on Bedrock) signs for its own service
    self.bedrock = { region = bedrock.region, mantle = bedrock.mantle or nil,
      service = bedrock.mantle and "bedrock-mantle" or "bedrock" }
    -- an anthropic-beta header goes in the body (Bedrock's runtime reads it there)
    local betas = not bedrock.mantle and self.headers["anthropic-beta"]
    if betas then
      local list = {}
      for b in tostring(betas):gmatch("[^,%s]+") do list[#list + 1] = b end
      self.bedrock.betas, self.headers["anthropic-beta"] = list, nil
    end
    aws().bedrock_credentials(self, bedrock)
  end
  opts = opts or {}
  if opts.thinking then
    local t = opts.thinking
    -- The budget comes out of max_tokens: the API refuses a budget that
    -- leaves nothing for the answer.
    if t.budget_tokens and t.budget_tokens < 1024 then -- (the API's least)
      return nil, ("tide.provider.anthropic: 'thinking.budget_tokens' (%d) must be at least 1024"):format(t.budget_tokens)
    end
    if t.budget_tokens and t.budget_tokens >= self.max_tokens then
      return nil, ("tide.provider.anthropic: 'thinking.budget_tokens' (%d) must be less than max_tokens (%d)")
        :format(t.budget_tokens, self.max_tokens)
    end
    -- The API refuses any temperature but 1 with thinking on (a 400 on
    -- every request): said here, once, instead.
    if self.temperature ~= nil and self.temperature ~= 1 then
      return nil, ("tide.provider.anthropic: 'temperature' (%s) cannot be set with 'thinking' (the API takes only 1)")
        :format(tostring(self.temperature))
    end
    self.thinking = { type = t.type or "enabled", budget_tokens = t.budget_tokens, display = t.display }
  end
  self.effort = opts.reasoning and opts.reasoning.effort
  local so = opts.structured_output
  if so ~= nil and so ~= "native" and so ~= "tool" then
    return nil, "tide.provider.anthropic: 'structured_output' must be \"native\" or \"tool\""
  end
  self.structured_output = so or "native"
  -- Only a forced tool's answer needs taking out of the calls.
  if self.structured_output == "tool" then self._finish_reply = M._tool_answer end
  return setmetatable(self, Provider)
end

-- ---------------------------------------------------------------- encoding

-- The cache breakpoint of each time to live: five minutes' is the API's
-- default (no ttl, the bytes every request sent before "1h" was offered).
local CACHE_CONTROL = { ["5m"] = { type = "ephemeral" }, ["1h"] = { type = "ephemeral", ttl = "1h" } }

-- ------------------------------------------------------ structured output
--
-- A turn's schema holds the model in one of two ways (`structured_output`):
--
-- "native" (the default): the Messages API's structured outputs,
-- `output_config.format = { type = "json_schema", schema }` (generally
-- available, no beta header; the SDKs' `output_format` is the beta name of
-- the same). The API constrains decoding to the schema, but takes only part
-- of JSON Schema: every object must say `additionalProperties: false`, and
-- numeric bounds, string lengths, patterns, `maxItems` and `minItems` above
-- 1 are refused. The schema is sent as the official SDKs send it: objects
-- closed, `oneOf` as `anyOf`, what the API does not take moved into the
-- description (`{minimum: 1}`) so that the model may still follow it.
-- tide validates the answer against the whole schema all the same, and a
-- miss gets the repair turn. (An open object, a map of anything, is sent
-- closed: use "tool" for such a schema.)
--
-- "tool": for models and servers without structured outputs (older
-- models, some cloud endpoints and proxies answer `output_config.format:
-- Extra inputs are not permitted`): the schema is the input schema of one
-- more tool, `structured_output`, which the model is forced to call
-- (`tool_choice` `{type = "tool"}`, or `{type = "any"}` when the agent has
-- tools of its own, so that it can still use them first). Its input is the
-- answer (a schema whose root is not an object is wrapped in a `value`
-- property, tools taking only objects). With extended thinking the API
-- refuses a forced tool ("Thinking may not be enabled when tool_choice
-- forces tool use"), so the tool is offered with `tool_choice` auto: the
-- model is asked, not forced, and validation and the repair turn do the
-- rest. The reply comes back as if the model had answered the JSON as text
-- (text deltas do not stream it).

--- The name of the tool a "tool" provider answers through; no tool of an
--- agent may have it.
M.OUTPUT_TOOL = "structured_output"
local OUTPUT_DESCRIPTION = "Give your final answer by calling this tool: its input is the answer."
local OUTPUT_DESCRIPTION_VALUE = "Give your final answer by calling this tool: its `value` is the answer."
local OUTPUT_WRAPPED = json.quote(OUTPUT_DESCRIPTION_VALUE)

--- The Messages API holds the model to a turn's schema (natively or by a
--- forced tool): encode_prefix takes the schema.
Provider._native_schema = true

-- What the API's structured outputs take, as the SDKs' transform_schema
-- keeps it; other keywords go into the description.
local KEEP = { type = true, enum = true, const = true, required = true, description = true, title = true,
  ["$ref"] = true }
local NAMED = { properties = true, ["$defs"] = true, definitions = true }
local FORMATS = { ["date-time"] = true, time = true, date = true, duration = true, email = true, hostname = true,
  uri = true, ipv4 = true, ipv6 = true, uuid = true }
local SILENT = { ["$schema"] = true, strict = true } -- say nothing to the model

local function is_object_schema(s)
  local t = s.type
  if t == "object" or s.properties ~= nil then return true end
  if type(t) == "table" then
    for _, v in ipairs(t) do if v == "object" then return true end end
  end
  return false
end

-- A list as a JSON array even when empty.
local function list_of(v)
  if type(v) ~= "table" then return v end
  return json.array(table.move(v, 1, #v, 1, {}))
end

-- The schema as the API's structured outputs take it (see above).
local function api_schema(s)
  if type(s) ~= "table" then return s end
  local out, notes = {}, nil
  for k, v in pairs(s) do
    if NAMED[k] and type(v) == "table" then
      local m = {}
      for name, sub in pairs(v) do m[name] = api_schema(sub) end
      out[k] = m
    elseif k == "items" then
      out.items = api_schema(v)
    elseif k == "anyOf" or k == "oneOf" or k == "allOf" then
      local l = json.array()
      for i, sub in ipairs(v) do l[i] = api_schema(sub) end
      out[k == "allOf" and "allOf" or "anyOf"] = l
    elseif KEEP[k] then
      out[k] = (k == "required" or k == "enum" or (k == "type" and type(v) == "table")) and list_of(v) or v
    elseif (k == "minItems" and (v == 0 or v == 1)) or (k == "format" and FORMATS[v]) then
      out[k] = v
    elseif k ~= "additionalProperties" and not SILENT[k] then
      notes = notes or {}
      notes[#notes + 1] = k .. ": " .. canonical(v)
    end
  end
  if is_object_schema(s) then out.additionalProperties = false end
  if notes then
    table.sort(notes)
    local d = type(out.description) == "string" and (out.description .. "\n\n") or ""
    out.description = d .. "{" .. table.concat(notes, ", ") .. "}"
  end
  return out
end

-- The output tool's input schema: the schema itself when its root is an
-- object, else wrapped in a `value` property (its definitions kept at the
-- root, where its references look for them); and whether it was wrapped.
local function tool_schema(s)
  if s.type == "object" then return s, false end
  local inner, wrapper = {}, { type = "object", required = json.array({ "value" }), additionalProperties = false }
  for k, v in pairs(s) do
    if NAMED[k] and k ~= "properties" then wrapper[k] = v else inner[k] = v end
  end
  wrapper.properties = { value = inner }
  return wrapper, true
end

-- The output tool and the tool_choice that makes the model call it, as
-- encoded JSON.
function Provider:_output_tool(schema, own_tools)
  local input, wrapped = tool_schema(schema)
  local tool = { name = M.OUTPUT_TOOL, description = wrapped and OUTPUT_DESCRIPTION_VALUE or OUTPUT_DESCRIPTION,
    input_schema = input }
  local choice
  if self.thinking then
    choice = { type = "auto" } -- a forced tool is refused with thinking on
  elseif own_tools > 0 then
    choice = { type = "any" }
  else
    choice = { type = "tool", name = M.OUTPUT_TOOL }
  end
  return tool, canonical(choice)
end

--- A "tool" provider's reply, finished for the session (exchange.lua calls
--- it with the request's prefix): an answer given through the output tool
--- becomes the reply's text, as if the model had written the JSON, and the
--- reply stops ("stop"; stop_raw stays "tool_use"). An answer that came
--- beside calls of other tools is dropped: they run first, and the model
--- answers after their results.
---@param res tide.provider.response
---@param prefix string the request's prefix (or whole body)
---@return tide.provider.response
function M._tool_answer(_, res, prefix)
  local calls = res.tool_calls
  local at
  for i = 1, #calls do
    if calls[i].name == M.OUTPUT_TOOL then at = i break end
  end
  if not at then return res end
  local call = table.remove(calls, at)
  -- The content as sent holds the output tool's use, which no result will
  -- answer: the message goes back built from its parts instead.
  local reasoning = res.reasoning
  for i = #(reasoning or {}), 1, -1 do
    if reasoning[i].type == "content" then table.remove(reasoning, i) end
  end
  if #calls > 0 then return res end
  local text = call.arguments
  if string.find(prefix, OUTPUT_WRAPPED, 1, true) then
    local v = json.decode(text)
    if type(v) == "table" and v.value ~= nil then text = canonical(v.value) end
  end
  res.text = text
  -- the tool's input is the answer: its call ends the answer, but an
  -- input cut short by max_tokens is a truncated one
  if res.stop == "tool_calls" then res.stop = "stop" end
  return res
end

--- The request body up to and including the `[` that opens the messages.
--- With `prompt_cache`, the system prompt and the last tool carry
--- `cache_control` breakpoints so that the prefix is cached server-side,
--- and on Anthropic's own API the request's top-level `cache_control`
--- (automatic caching) caches the conversation too: the API puts that
--- breakpoint on the last block and moves it as the conversation grows,
--- so that each request of a tool loop reads the one before from the
--- cache. (Not on Vertex AI or Bedrock, which take breakpoints on blocks
--- only: their requests cache the prefix.) Every breakpoint has the same
--- time to live, as the API wants them ordered.
--- With `schema` (a turn's structured output), the prefix holds the model
--- to it: `output_config.format`, or the output tool and its tool_choice
--- (see `structured_output`).
---@param system string|nil the frozen system prompt
---@param tools? {name:string, description?:string, parameters?:table}[]
---@param schema? table a JSON schema (tide.schema checked it)
---@return string
function Provider:encode_prefix(system, tools, schema)
  if system ~= nil and type(system) ~= "string" then
    error(("tide.provider.anthropic: 'system' must be a string, got %s"):format(type(system)), 2)
  end
  if schema ~= nil and type(schema) ~= "table" then
    error(("tide.provider.anthropic: 'schema' must be a table, got %s"):format(type(schema)), 2)
  end
  local list = provider._tools("anthropic", tools, 2)
  local by_tool = self.structured_output == "tool"
  if by_tool then
    for i, t in ipairs(list) do
      if t.name == M.OUTPUT_TOOL then
        error(("tide.provider.anthropic: tools[%d] is named %q, the tool structured_output = \"tool\" answers "
          .. "through"):format(i, M.OUTPUT_TOOL), 2)
      end
    end
  end
  -- Every field but messages, as encoded JSON by key; extra_body's fields
  -- take the place of tide's own, but for those that hold the model to a
  -- turn's schema. Sorted keys give the canonical bytes.
  local fields = {
    max_tokens = canonical(self.max_tokens),
    model = canonical(self.model),
    stream = self.stream and "true" or "false",
  }
  if self.vertex then -- the model is in the URL; the version in the body
    fields.model, fields.anthropic_version = nil, quote(M.VERTEX_VERSION)
  elseif self.bedrock and not self.bedrock.mantle then -- so is the stream; the betas are in the body too
    fields.model, fields.stream, fields.anthropic_version = nil, nil, quote(M.BEDROCK_VERSION)
    if self.bedrock.betas then fields.anthropic_beta = canonical(json.array(self.bedrock.betas)) end
  end
  local cache = self.prompt_cache and CACHE_CONTROL[self.prompt_cache]
  if system ~= nil and system ~= "" then
    if cache then
      fields.system = canonical({ { type = "text", text = system, cache_control = cache } })
    else
      fields.system = canonical(system)
    end
  end
  if cache and not (self.vertex or self.bedrock) then fields.cache_control = canonical(cache) end
  if self.temperature ~= nil then fields.temperature = canonical(self.temperature) end
  if self.thinking then fields.thinking = canonical(self.thinking) end
  local choice
  if schema ~= nil and by_tool then
    local tool
    tool, choice = self:_output_tool(schema, #list)
    list[#list + 1] = { name = tool.name, description = tool.description, parameters = tool.input_schema }
  end
  -- The server tools (the API runs them) go first, as given; the agent's
  -- follow, the last one carrying the cache breakpoint.
  local server = self.server_tools or {}
  for i, t in ipairs(list) do
    if self.server_tool_names and self.server_tool_names[t.name] then
      error(("tide.provider.anthropic: tools[%d] is named %q, as a server tool is"):format(i, t.name), 2)
    end
  end
  if #list + #server > 0 then
    local encoded = {}
    for i, t in ipairs(server) do encoded[i] = t end
    for i, t in ipairs(list) do
      local tool = { name = t.name, description = t.description, input_schema = t.parameters }
      if cache and i == #list then tool.cache_control = cache end
      encoded[#server + i] = canonical(tool)
    end
    fields.tools = "[" .. table.concat(encoded, ",") .. "]"
  end
  local tools = fields.tools
  for k, v in pairs(self.extra_json or {}) do fields[k] = v end
  if choice then
    fields.tools, fields.tool_choice = tools, choice
  end
  if (schema ~= nil and not choice) or self.effort then
    -- output_config: the effort and a turn's schema, extra_body's other
    -- fields kept
    local config = fields.output_config and json.decode(fields.output_config)
    if type(config) ~= "table" then config = {} end
    if schema ~= nil and not choice then config.format = { type = "json_schema", schema = api_schema(schema) } end
    if self.effort then config.effort = self.effort end
    fields.output_config = canonical(config)
  end
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
-- path of every turn). The assistant message with tool calls and the tool
-- results are written in C (core.anthropic_assistant_wire and
-- core.anthropic_results_wire, core/anthropic.c). Only table values go
-- through the canonical encoder.
local concat = table.concat
local assistant_wire, results_wire = core.anthropic_assistant_wire, core.anthropic_results_wire
local decode_fast = json.decode_fast
local byte, find = string.byte, string.find

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

-- The calls as the C encoder takes them when it declined a list: each
-- input the JSON text it is sent as (the encoder then writes it as it is).
local function plain_calls(calls)
  local copy = {}
  for i, c in ipairs(calls) do copy[i] = { id = c.id, name = c.name, arguments = input_json(c.arguments) } end
  return copy
end

-- The results as the C encoder takes them: plain tables, content as text.
local result_text = provider._result_text
local function plain_results(results)
  local copy = {}
  for i, r in ipairs(results) do copy[i] = { id = r.id, content = result_text(r.content), is_error = r.is_error } end
  return copy
end

-- A tool message whose results show the model images: a tool_result's
-- content is then a list of text and image blocks (the Messages API takes
-- them there), the other results' content text as ever.
local function parts_results(results)
  local blocks = {}
  for i, r in ipairs(results) do
    local c = r.content
    if type(c) == "table" and parts.is_neutral(c) then c = parts.anthropic(c) else c = result_text(c) end
    if type(r.id) ~= "string" then error("tide.provider.anthropic: tool results need a string 'id'", 4) end
    blocks[i] = canonical({ type = "tool_result", tool_use_id = r.id, content = c, is_error = r.is_error == true })
  end
  return '{"content":[' .. concat(blocks, ",") .. '],"role":"user"}'
end

-- The thinking blocks of an assistant message, as the content blocks that
-- open it: only parts this provider produced (another provider's reasoning
-- means nothing here, and its signatures would be refused), each exactly as
-- received. Returns the blocks joined, or nil when there are none; and the
-- message's whole content as the API sent it, when it has a content part
-- (a reply with a server tool's blocks: sent back as it is).
local function thinking_blocks(reasoning)
  if reasoning == nil then return nil end
  local blocks, n = nil, 0
  for _, r in ipairs(reasoning) do
    if r.provider == "anthropic" and r.type == "content" then return nil, r.data end
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

-- A reply's content as it goes back (a content part's), without its blank
-- text blocks: the API refuses a text block that is empty or white space
-- alone, and its own replies hold one now and then (before a server tool's
-- use, say); sent back as it came, it would fail every later request of
-- the session. Every other block is kept byte for byte. Nil when nothing
-- is left.
local BLANK_TEXT = '"text"%s*:%s*"[%s\\nrt]*"'
local function without_blank_text(content)
  if not content:find(BLANK_TEXT) then return content end
  local elements = core.json_elements(content)
  if not elements then return content end -- (check_reasoning vouched for it)
  local kept = {}
  for _, raw in ipairs(elements) do
    local block = raw:find(BLANK_TEXT) and json.decode_fast(raw)
    local blank = type(block) == "table" and block.type == "text" and type(block.text) == "string"
      and not block.text:find("%S")
    if not blank then kept[#kept + 1] = raw end
  end
  if #kept == 0 then return nil end
  return "[" .. concat(kept, ",") .. "]"
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
      elseif r.type == "content" then
        local ok, v = pcall(json.decode, r.data)
        if type(r.data) ~= "string" or not ok or type(v) ~= "table" or r.data:match("^%s*(.)") ~= "[" then
          error(("tide.provider.anthropic: reasoning[%d] (content) needs 'data', the content's JSON array"):format(i),
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
    local results = msg.results
    if #results == 0 then return "" end
    -- (the C encoder takes text results, the usual ones, and declines the rest)
    local enc = results_wire(results)
    if enc then return enc end
    if provider._has_parts(results) then return parts_results(results) end
    enc = results_wire(plain_results(results))
    if not enc then error("tide.provider.anthropic: tool results need a string 'id'", level) end
    return enc
  end
  if role == "assistant" then
    local calls = msg.tool_calls
    local text = msg.content or ""
    -- (the API refuses a text block of white space alone, and a reply of
    -- only "\n\n" would otherwise fail every later request of the session)
    if not text:find("%S") then text = "" end
    local thinking, content = thinking_blocks(msg.reasoning)
    if content then
      content = without_blank_text(content)
      if content == nil then return "" end
      return '{"content":' .. content .. ',"role":"assistant"}'
    end
    if not calls or #calls == 0 then
      if text == "" then return "" end
      if not thinking then return '{"content":' .. quote(text) .. ',"role":"assistant"}' end
      return '{"content":[' .. thinking .. ',{"text":' .. quote(text) .. ',"type":"text"}],"role":"assistant"}'
    end
    calls = provider._function_calls(calls) -- (a custom tool is a function here)
    local enc = assistant_wire(text, calls, thinking) or assistant_wire(text, plain_calls(calls), thinking, true)
    if not enc then error("tide.provider.anthropic: tool_calls need string 'id' and 'name'", level) end
    return enc
  end
  local content = msg.content
  if content == nil then return '{"content":"","role":"user"}' end
  -- neutral parts (tide.image / tide.file) in the Messages shape
  if type(content) == "table" and parts.is_neutral(content) then content = parts.anthropic(content) end
  return '{"content":' .. (type(content) == "string" and quote(content) or canonical(content))
    .. ',"role":"user"}'
end

--- The prefix of a request that runs in `container` (the id a reply gave:
--- a server tool's code ran there): the container field before the
--- messages. `extra_body`'s own container wins.
---@param prefix string from encode_prefix
---@param id string
---@return string
function Provider:_container_prefix(prefix, id)
  if self.extra_json and self.extra_json.container then return prefix end
  local tail = ',"messages":['
  return prefix:sub(1, #prefix - #tail) .. ',"container":' .. quote(id) .. tail
end

-- ------------------------------------------------------------------- wire

function Provider:_url()
  if self.bedrock and self.bedrock.mantle then return self.base_url .. "/v1/messages" end
  if self.bedrock then
    return ("%s/model/%s/%s"):format(self.base_url, aws().model_path(self.model),
      self.stream and "invoke-with-response-stream" or "invoke")
  end
  local v = self.vertex
  if not v then return self.base_url .. "/messages" end
  return ("%s/projects/%s/locations/%s/publishers/anthropic/models/%s:%s"):format(self.base_url, v.project, v.region,
    self.model, self.stream and "streamRawPredict" or "rawPredict")
end

function Provider:_headers()
  local h = { ["content-type"] = "application/json", ["anthropic-version"] = M.VERSION_HEADER }
  if self.stream then h["accept"] = "text/event-stream" end
  if self.bedrock then
    if not self.bedrock.mantle then
      -- (what the SDK sends: the event stream comes all the same)
      h["anthropic-version"], h["accept"] = nil, "application/json"
    end
    local token = self.bearer or self.api_key
    if token then h["authorization"] = "Bearer " .. token end
  elseif self.vertex then
    h["anthropic-version"] = nil
    local token = self.bearer or self.api_key
    if token then h["authorization"] = "Bearer " .. token end
  elseif self.bearer then -- an OAuth token (the `token` option; Foundry's Entra ID)
    h["authorization"] = "Bearer " .. self.bearer
  else
    if self.api_key then
      h["x-api-key"] = self.api_key
      -- (Microsoft Foundry takes it as api-key too, as its SDK sends it)
      if self.key_header then h[self.key_header] = self.api_key end
    end
    -- (a gateway's token goes beside the key, as the SDK sends both)
    if self.auth_token then h["authorization"] = "Bearer " .. self.auth_token end
  end
  for k, v in pairs(self.headers) do h[k] = v end
  return h
end


-- The reply is parsed in C (core.anthropic_stream: SSE framing, the JSON of
-- each event, tool-input assembly; core.anthropic_parse: a whole reply), so
-- a reply costs one string per text delta (none when nobody listens), one
-- per thinking delta only for a reasoning listener, and one table at the
-- end. The exchange (provider/exchange.lua) feeds it. What the parser reads
-- and how it maps it (usage, thinking parts, stop reasons): core/anthropic.c
-- and docs/internals.md.

--- The C parser of one streamed response. It allocates nothing until the
--- reply's bytes come.
function Provider:_c_stream()
  return core.anthropic_stream(self.max_body_bytes, self.bedrock and not self.bedrock.mantle and "aws" or "sse")
end

--- A whole (non-streamed) response scanned in C: the reply, or nil and the
--- error (not JSON, an error object, a block that cannot be taken), which
--- the exchange gives the body's excerpt.
function Provider:_c_parse(body)
  return core.anthropic_parse(body, self.max_body_bytes)
end

return M
