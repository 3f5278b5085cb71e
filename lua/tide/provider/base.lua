--- tide.provider.base: what every provider object shares: its options
--- (checked strictly), the checks of neutral tool schemas and messages, and
--- the methods of the provider interface that do not depend on the wire
--- format (`body`, `complete`, `fingerprint`). A wire format (openai.lua,
--- anthropic.lua) adds the encoding hooks and the reply parser; the list of
--- hooks is in docs/internals.md.
local provider = {}

local core = require "tide.core"
local json = require "tide.json"
-- (content parts: loaded when a message has some)
local function neutral() return require "tide.content" end
local errors = require "tide.provider.errors"
local reply = require "tide.provider.reply"
local retry = require "tide.provider.retry"
local exchange = require "tide.provider.exchange"

-- ----------------------------------------------------------------- defaults

provider.DEFAULT_TIMEOUT_MS = 120000
provider.DEFAULT_MAX_BODY = 8 * 1024 * 1024
provider.DEFAULT_RETRY = retry.DEFAULTS
provider.ERROR_BODY_MAX = errors.BODY_MAX

-- ------------------------------------------------------------------ options

---@class tide.provider.retry
---@field attempts? integer total attempts, first included (default 4)
---@field base_ms? number backoff base (default 250)
---@field max_ms? number backoff ceiling (default 8000)
---@field max_retry_after_ms? number a longer Retry-After is not waited for; the jittered backoff is used instead (default 60000)

---@class tide.provider.opts
---@field base_url? string
---@field api_key? string sent as Authorization: Bearer (OpenAI: as api-key at an Azure resource's host, where it defaults to AZURE_OPENAI_API_KEY; Anthropic: as x-api-key, and api-key too at a Microsoft Foundry resource, where it defaults to ANTHROPIC_FOUNDRY_API_KEY)
---@field model? string
---@field stream? boolean default true
---@field temperature? number
---@field max_tokens? integer
---@field timeout_ms? integer per HTTP request (default 120000); for a streamed one, how long it may go without a byte (a stream lasts as long as it keeps coming), and its connect
---@field max_body_bytes? integer response size cap (default 8 MiB)
---@field retry? tide.provider.retry
---@field headers? table<string,string> extra request headers
---@field prompt_cache? boolean|"5m"|"1h" Anthropic only: cache the prefix (system, tools) and, on Anthropic's own API, the conversation (automatic caching), for five minutes (true, "5m") or an hour ("1h")
---@field max_tokens_field? "max_completion_tokens"|"max_tokens" OpenAI only: the body field max_tokens goes in (default max_completion_tokens; max_tokens for api.mistral.ai, api.deepseek.com and Ollama at localhost:11434)
---@field stream_usage? boolean OpenAI chat only: ask for usage in streamed replies (stream_options.include_usage; default true, false for api.mistral.ai, which refuses the field and reports usage anyway)
---@field reasoning? {effort:"none"|"minimal"|"low"|"medium"|"high"|"xhigh"|"max", summary?:"auto"|"concise"|"detailed"} OpenAI: reasoning_effort (chat), reasoning.effort and .summary (Responses); Anthropic: output_config.effort (low, medium, high, xhigh, max); Bedrock's Converse: Amazon Nova 2's reasoningConfig and OpenAI's open-weight models' reasoning_effort (low, medium, high)
---@field tool_choice? "auto"|"none"|"required"|table OpenAI only
---@field parallel_tool_calls? boolean OpenAI only
---@field stop? string|string[] OpenAI only: stop sequences
---@field query? table<string,string|number> OpenAI only: URL parameters (Azure's api-version)
---@field thinking? {budget_tokens?:integer, type?:"enabled"|"adaptive", display?:"summarized"|"omitted"} Anthropic and Claude on Bedrock's Converse: extended thinking with a budget (< max_tokens), or adaptive thinking (the model decides how much; Claude Opus 4.6 and later, where a budget is deprecated); display "omitted" keeps the thinking's signature without its text
---@field structured_output? "native"|"tool" Anthropic only: how a turn's schema holds the model: the API's structured outputs (output_config.format, the default), or a forced tool whose input is the answer, for models and servers without them
---@field extra_body? table fields merged into every request body (OpenAI and Anthropic)
---@field api? "chat"|"responses" OpenAI only: chat completions (default) or the Responses API
---@field store? boolean OpenAI Responses only: let OpenAI keep the responses (default false: stateless)
---@field vertex? {project?:string, region?:string} Anthropic only: Claude on Google Cloud's Vertex AI (project and region default to ANTHROPIC_VERTEX_PROJECT_ID and CLOUD_ML_REGION; its Google access token is `api_key` or comes from `token`)
---@field bedrock? {region?:string, credentials?:tide.aws.credentials|fun():tide.aws.credentials, integer?, profile?:string, mfa_code?:fun(serial:string):string} Anthropic only: Claude on Amazon Bedrock (region defaults to AWS_REGION; a Bedrock API key is `api_key` or AWS_BEARER_TOKEN_BEDROCK, else IAM credentials, or AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, sign each request)
---@field token? fun():string, number? an OAuth access token instead of a key, sent as Authorization: Bearer: what the function returns, and for how many seconds it holds (asked again a minute before; 55 minutes when it does not say): Microsoft Entra ID for Azure OpenAI and Foundry, Google's for Vertex AI
---@field custom_tools? boolean OpenAI only: offer custom tools (tide.tool's `format`) as the API's custom tools (default: for the Responses API, api.openai.com and Azure), else as functions of one string argument, `input`
---@field auth_token? string Anthropic's own API only: a token sent as Authorization: Bearer (a gateway's), beside the key if there is one, as the official SDK sends it (default ANTHROPIC_AUTH_TOKEN)
---@field organization? string OpenAI only: the organization a request bills (the OpenAI-Organization header; default OPENAI_ORG_ID, as in the official SDKs)
---@field project? string OpenAI only: the project a request bills (the OpenAI-Project header; default OPENAI_PROJECT_ID)
---@field server_tools? table[] tools the provider runs itself, sent as given beside the agent's tools: Anthropic's server tools (`{ type = "web_search_20250305", name = "web_search", max_uses = 5 }`, web fetch, code execution), the Responses API's built-in tools (`{ type = "web_search" }`); their calls and results stay in the reply's content, and a paused turn (Anthropic's pause_turn) goes on by itself

local option_types = {
  base_url = "string", api_key = "string", model = "string", stream = "boolean",
  temperature = "number", max_tokens = "integer", timeout_ms = "integer",
  max_body_bytes = "integer", retry = "table", headers = "table", prompt_cache = "any",
  max_tokens_field = "string", reasoning = "table", tool_choice = "any", parallel_tool_calls = "boolean",
  stop = "any", query = "table", extra_body = "table", thinking = "table", structured_output = "string",
  api = "string", store = "boolean", limits = "table", stream_usage = "boolean", server_tools = "table",
  vertex = "table", bedrock = "table", token = "function", organization = "string", project = "string",
  auth_token = "string", custom_tools = "boolean",
  region = "string", credentials = "any", profile = "string", mfa_code = "function", -- (tide.provider.bedrock's)
}

-- The options of tide.provider.bedrock (Bedrock's Converse API) besides the
-- common ones.
local BEDROCK_OWN = { region = true, credentials = true, profile = true, mfa_code = true }

-- The options only the OpenAI chat wire format reads.
local OPENAI_ONLY = {
  max_tokens_field = true, tool_choice = true, parallel_tool_calls = true,
  stop = true, query = true, api = true, store = true, stream_usage = true, organization = true, project = true,
  custom_tools = true,
}

-- The chat options the Responses API has no field for: sent anyway, the
-- real service answers 400 (unknown parameter), so they raise here.
local CHAT_ONLY = { max_tokens_field = "max_output_tokens is its only name", stop = "it has no stop sequences",
  stream_usage = "its streams always report usage" }
local SUMMARIES = { auto = true, concise = true, detailed = true }

-- The values the real API takes (reasoning_effort's enum in openai-openapi:
-- none and xhigh are newer models', minimal gpt-5's).
local EFFORTS = { none = true, minimal = true, low = true, medium = true, high = true, xhigh = true }
local TOOL_CHOICES = { auto = true, none = true, required = true }
-- Anthropic's (output_config.effort in anthropic-sdk-python's types).
local ANTHROPIC_EFFORTS = { low = true, medium = true, high = true, xhigh = true, max = true }

-- What tide knows of some servers' chat completions, by host: the defaults
-- of max_tokens_field and stream_usage there (the options still win).
-- Mistral refuses every field it does not document (a 422,
-- extra_forbidden): max_completion_tokens and stream_options among them;
-- it streams usage unasked. DeepSeek and Ollama (its OpenAI-compatible
-- request has max_tokens alone) ignore max_completion_tokens: the limit
-- would silently not hold. Ollama by its default port, or its cloud.
-- Alibaba Cloud's Model Studio (DashScope, compatible mode) thinks by
-- default with Qwen3's open models and refuses a request that is not
-- streamed unless it says enable_thinking: false ("parameter.
-- enable_thinking must be set to false for non-streaming calls"); its
-- other models take the field and do not think by default.
local OLD_NAME = { max_tokens_field = "max_tokens" }
-- DeepSeek also refuses the json_schema response format ("This
-- response_format type is unavailable now"): a turn's schema is asked of
-- the model in its message there, and checked.
local DEEPSEEK = { max_tokens_field = "max_tokens", native_schema = false }
local DASHSCOPE = { whole_without_thinking = true }
local HOST_DEFAULTS = {
  ["api.mistral.ai"] = { max_tokens_field = "max_tokens", stream_usage = false },
  ["api.deepseek.com"] = DEEPSEEK,
  ["localhost:11434"] = OLD_NAME, ["127.0.0.1:11434"] = OLD_NAME, ["ollama.com"] = OLD_NAME,
  ["dashscope.aliyuncs.com"] = DASHSCOPE, ["dashscope-intl.aliyuncs.com"] = DASHSCOPE,
  ["dashscope-us.aliyuncs.com"] = DASHSCOPE,
}

-- Azure OpenAI (its resources' hosts): the key goes in an api-key header,
-- and comes from AZURE_OPENAI_API_KEY, as in openai-python's AzureOpenAI.
-- Without a key, a Microsoft Entra ID token for the service's scope
-- (tide.provider.azure, as azure-identity's DefaultAzureCredential).
local AZURE = { key_header = "api-key", key_env = "AZURE_OPENAI_API_KEY",
  entra_scope = "https://cognitiveservices.azure.com/.default" }
local AZURE_FOUNDRY = { key_header = "api-key", key_env = "AZURE_OPENAI_API_KEY",
  entra_scope = "https://ai.azure.com/.default" }
local AZURE_HOSTS = { "%.openai%.azure%.com$", "%.cognitiveservices%.azure%.com$", "%.services%.ai%.azure%.com$" }

-- Claude on Microsoft Foundry (anthropic-sdk-python's AnthropicFoundry):
-- at a resource's `*.services.ai.azure.com/anthropic` the key comes from
-- ANTHROPIC_FOUNDRY_API_KEY, never ANTHROPIC_API_KEY, and goes as both
-- x-api-key and api-key.
local FOUNDRY = { key_header = "api-key", key_env = "ANTHROPIC_FOUNDRY_API_KEY",
  entra_scope = "https://ai.azure.com/.default" }

-- What HOST_DEFAULTS says for a base URL (by host and port, then host) of
-- a provider of `kind`.
local function host_defaults(url, kind)
  local authority = url:match("^%a+://([^/]+)") or ""
  local host = authority:match("^[^:]+") or ""
  for i, pattern in ipairs(AZURE_HOSTS) do
    if host:lower():find(pattern) then
      if kind == "anthropic" then return FOUNDRY end
      return i == 3 and AZURE_FOUNDRY or AZURE
    end
  end
  if kind ~= "openai" then return {} end
  return HOST_DEFAULTS[authority] or HOST_DEFAULTS[host] or {}
end

-- The body fields tide writes itself: extra_body may not set them (a second
-- key of the same name would leave the server to pick one).
local OWN_FIELDS = {
  model = "model", messages = true, stream = "stream", stream_options = "stream_usage", tools = true,
  temperature = "temperature", max_tokens = "max_tokens", max_completion_tokens = "max_tokens",
  reasoning_effort = "reasoning", tool_choice = "tool_choice",
  parallel_tool_calls = "parallel_tool_calls", stop = "stop",
}

-- The Responses API's own names for the fields tide writes itself.
local OWN_FIELDS_RESPONSES = {
  model = "model", input = true, stream = "stream", tools = true, instructions = true,
  temperature = "temperature", max_output_tokens = "max_tokens", reasoning = "reasoning",
  tool_choice = "tool_choice", parallel_tool_calls = "parallel_tool_calls", store = "store",
  include = true,
}

-- The checks of the OpenAI-only options; a message for the first bad one.
local function check_openai_options(where, opts)
  local api = opts.api
  if api ~= nil and api ~= "chat" and api ~= "responses" then
    return where .. "'api' must be \"chat\" or \"responses\""
  end
  local responses = api == "responses"
  if responses then
    for k, why in pairs(CHAT_ONLY) do
      if opts[k] ~= nil then
        return ("%s'%s' is not an option of the Responses API (%s)"):format(where, k, why)
      end
    end
  elseif opts.store ~= nil then
    return where .. "'store' is an option of the Responses API (api = \"responses\")"
  end
  local f = opts.max_tokens_field
  if f ~= nil and f ~= "max_completion_tokens" and f ~= "max_tokens" then
    return where .. "'max_tokens_field' must be \"max_completion_tokens\" or \"max_tokens\""
  end
  if opts.reasoning then
    for k, v in pairs(opts.reasoning) do
      -- Summaries are the Responses API's: chat completions has no field.
      if k == "summary" and responses then
        if not SUMMARIES[v] then
          return where .. "'reasoning.summary' must be one of auto, concise, detailed"
        end
      elseif k ~= "effort" then
        return where .. "unknown option 'reasoning." .. tostring(k) .. "'"
      elseif not EFFORTS[v] then
        return where .. "'reasoning.effort' must be one of none, minimal, low, medium, high, xhigh"
      end
    end
  end
  local tc = opts.tool_choice
  if tc ~= nil and not (TOOL_CHOICES[tc] or type(tc) == "table") then
    return where .. "'tool_choice' must be \"auto\", \"none\", \"required\" or a table"
  end
  local stop = opts.stop
  if stop ~= nil then
    local ok = type(stop) == "string"
    if type(stop) == "table" then
      ok = #stop > 0
      for k, v in pairs(stop) do
        if math.type(k) ~= "integer" or k < 1 or k > #stop or type(v) ~= "string" then ok = false end
      end
    end
    if not ok then return where .. "'stop' must be a string or a list of strings" end
  end
  if opts.query then
    for k, v in pairs(opts.query) do
      if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number") then
        return where .. "'query' must map strings to strings or numbers"
      end
    end
  end
  if opts.extra_body then
    for k in pairs(opts.extra_body) do
      if type(k) ~= "string" then return where .. "'extra_body' keys must be strings" end
      local own = (responses and OWN_FIELDS_RESPONSES or OWN_FIELDS)[k]
      if own then
        return ("%s'extra_body.%s' is a field tide sets itself%s"):format(where, k,
          type(own) == "string" and (" (use the option '" .. own .. "')") or "")
      end
    end
  end
  return nil
end

-- The Responses API's tools whose calls the client runs and answers: tide
-- runs none of them (a session would end in the API's 400 for a call left
-- without its output), so they are refused here, saying what to do instead.
-- (shell runs in the client only with a local environment; tool search
-- only with client execution; programmatic tool calling's program items
-- must go back as they came, which tide does not keep)
local CLIENT_RUN = {
  computer = "give the agent tools of its own that act on the screen",
  computer_use_preview = "give the agent tools of its own that act on the screen",
  local_shell = "give the agent a tool of its own that runs commands",
  apply_patch = "give the agent a custom tool of its own (tide.tool{ format = ... }) that applies patches",
  programmatic_tool_calling = "tide does not keep the program items it needs back",
}
local function client_run(t)
  if t.type == "shell" then
    local env = type(t.environment) == "table" and t.environment.type
    return env == "local" and "give the agent a tool of its own that runs commands, or a container environment"
      or nil
  end
  if t.type == "tool_search" then
    return t.execution == "client" and "tide runs no tool search of its own: leave execution to the server" or nil
  end
  return CLIENT_RUN[t.type]
end

-- Server tools: a list of tool tables the API runs itself, each with its
-- `type` (and, for Anthropic, its `name`); a function tool is an agent's.
local function check_server_tools(kind, opts, where)
  if kind == "openai" and opts.api ~= "responses" then
    return where .. "'server_tools' needs api = \"responses\" (chat completions runs no tools of its own)"
  end
  local list = opts.server_tools
  local n = 0
  for _ in pairs(list) do n = n + 1 end
  if n ~= #list then return where .. "'server_tools' must be a list of tool tables" end
  for i, t in ipairs(list) do
    if type(t) ~= "table" or type(t.type) ~= "string" or t.type == "" then
      return ("%s'server_tools[%d]' needs a 'type' string"):format(where, i)
    end
    if t.type == "function" or t.type == "custom" then
      return ("%s'server_tools[%d]' is a %s tool: give it to an agent's tools"):format(where, i, t.type)
    end
    local instead = kind == "openai" and client_run(t)
    if instead then
      return ("%s'server_tools[%d]' (%s) is a tool the client runs: %s"):format(where, i, t.type, instead)
    end
    if kind == "anthropic" and (type(t.name) ~= "string" or t.name == "") then
      return ("%s'server_tools[%d]' needs a 'name' string"):format(where, i)
    end
    local ok, err = pcall(json.canonical, t)
    if not ok then
      return ("%s'server_tools[%d]' cannot be encoded as JSON (%s)"):format(where, i, tostring(err))
    end
  end
  return nil
end

-- "float" says more than "number" when an integer was wanted.
local function type_name(v, want)
  if want == "integer" and math.type(v) == "float" then return "float" end
  return type(v)
end

-- Returns an error message for the first bad option, or nil.
local function check_options(kind, opts, allowed)
  local where = "tide.provider." .. kind .. ": "
  for k in pairs(opts) do
    if type(k) ~= "string" or not allowed[k] then
      return where .. "unknown option '" .. tostring(k) .. "'"
    end
  end
  for k in pairs(allowed) do
    local v, want = opts[k], option_types[k]
    if v ~= nil and want ~= "any" then
      local ok
      if want == "integer" then ok = math.type(v) == "integer" else ok = type(v) == want end
      if not ok then
        return ("%s'%s' must be a%s %s, got %s"):format(where, k, want == "integer" and "n" or "",
          want, type_name(v, want))
      end
    end
  end
  for _, k in ipairs({ "max_tokens", "timeout_ms", "max_body_bytes" }) do
    if opts[k] ~= nil and opts[k] <= 0 then return ("%s'%s' must be positive"):format(where, k) end
  end
  if opts.model ~= nil and opts.model == "" then return where .. "'model' must not be empty" end
  local pc = opts.prompt_cache
  if pc ~= nil and type(pc) ~= "boolean" and pc ~= "5m" and pc ~= "1h" then
    return where .. "'prompt_cache' must be true, false, \"5m\" or \"1h\""
  end
  if opts.base_url ~= nil and not opts.base_url:match("^https?://") then
    return where .. "'base_url' must start with http:// or https://"
  end
  -- The key and the headers go into request headers (core.http_headers
  -- refuses what would break the framing, but names neither the option nor
  -- the provider). Neither the key nor a value is ever put in the message.
  if opts.api_key ~= nil and opts.api_key:find("[\r\n\0]") then
    return where .. "'api_key' must not contain a CR, LF or NUL"
  end
  for _, k in ipairs({ "organization", "project", "auth_token" }) do
    local v = opts[k]
    if v ~= nil and (v == "" or v:find("[\r\n%z]")) then
      return ("%s'%s' must be a non-empty string without CR, LF or NUL"):format(where, k)
    end
  end
  if opts.headers then
    for k, v in pairs(opts.headers) do
      if type(k) ~= "string" or type(v) ~= "string" then
        return where .. "'headers' must map strings to strings"
      end
    end
    local ok, err = pcall(core.http_headers, opts.headers)
    if not ok then
      return where .. "'headers': " .. (tostring(err):match("%((.*)%)$") or "not valid")
    end
  end
  if kind == "openai" then
    local msg = check_openai_options(where, opts)
    if msg then return msg end
  end
  if opts.thinking then
    local t = opts.thinking
    for k in pairs(t) do
      if k ~= "budget_tokens" and k ~= "type" and k ~= "display" then
        return where .. "unknown option 'thinking." .. tostring(k) .. "'"
      end
    end
    if t.type ~= nil and t.type ~= "enabled" and t.type ~= "adaptive" then
      return where .. "'thinking.type' must be \"enabled\" or \"adaptive\""
    end
    if t.display ~= nil and t.display ~= "summarized" and t.display ~= "omitted" then
      return where .. "'thinking.display' must be \"summarized\" or \"omitted\""
    end
    local b = t.budget_tokens
    if t.type == "adaptive" then
      if b ~= nil then return where .. "'thinking.budget_tokens' is for type \"enabled\" (adaptive thinking sizes itself)" end
    elseif b == nil then
      return where .. "'thinking' needs 'budget_tokens' (or type = \"adaptive\")"
    elseif math.type(b) ~= "integer" or b <= 0 then
      return where .. "'thinking.budget_tokens' must be a positive integer"
    end
  end
  if kind == "bedrock" and opts.reasoning then
    -- the efforts the Converse models that take one know (Nova 2's
    -- maxReasoningEffort, gpt-oss's reasoning_effort)
    for k, v in pairs(opts.reasoning) do
      if k ~= "effort" then return where .. "unknown option 'reasoning." .. tostring(k) .. "'" end
      if v ~= "low" and v ~= "medium" and v ~= "high" then
        return where .. "'reasoning.effort' must be one of low, medium, high"
      end
    end
  end
  if kind == "anthropic" and opts.reasoning then
    -- Anthropic's effort (output_config.effort): how many tokens the model
    -- spends, thinking or not.
    for k, v in pairs(opts.reasoning) do
      if k ~= "effort" then return where .. "unknown option 'reasoning." .. tostring(k) .. "'" end
      if not ANTHROPIC_EFFORTS[v] then
        return where .. "'reasoning.effort' must be one of low, medium, high, xhigh, max"
      end
    end
  end
  if opts.extra_body then
    for k in pairs(opts.extra_body) do
      if type(k) ~= "string" then return where .. "'extra_body' keys must be strings" end
      -- Anthropic's own fields: messages are the session's; stream decides
      -- how the reply is read. (OpenAI's are checked above, by API.)
      if kind == "anthropic" and (k == "messages" or k == "stream") then
        return ("%s'extra_body' cannot set '%s' (%s)"):format(where, k,
          k == "stream" and "use the 'stream' option" or "the session sends them")
      end
    end
  end
  if opts.server_tools then
    local msg = check_server_tools(kind, opts, where)
    if msg then return msg end
  end
  if opts.limits then
    local msg = require("tide.provider.limits").check(opts.limits, where)
    if msg then return msg end
  end
  if opts.retry then
    for k, v in pairs(opts.retry) do
      if provider.DEFAULT_RETRY[k] == nil then
        return where .. "unknown option 'retry." .. tostring(k) .. "'"
      end
      if k == "attempts" then
        if math.type(v) ~= "integer" or v < 1 then
          return where .. "'retry.attempts' must be a positive integer"
        end
      elseif type(v) ~= "number" or v < 0 or v ~= v or v == math.huge then
        return ("%s'retry.%s' must be a non-negative number"):format(where, k)
      end
    end
  end
  return nil
end

--- Builds the common fields of a provider object from `opts` and the
--- protocol's defaults. Returns the object, or nil plus a message for a
--- misuse (the caller raises it at its caller's level).
---@param kind string
---@param opts table|nil
---@param defaults {base_url:string, api_key?:string, model:string, extra?:table<string,boolean>}
---@return table|nil, string|nil
function provider._new(kind, opts, defaults)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    return nil, ("tide.provider.%s: options must be a table, got %s"):format(kind, type(opts))
  end
  local allowed = {}
  for k in pairs(option_types) do allowed[k] = true end
  if kind ~= "anthropic" and kind ~= "bedrock" then allowed.prompt_cache = nil end
  if kind ~= "openai" then
    for k in pairs(OPENAI_ONLY) do allowed[k] = nil end
  end
  if kind ~= "anthropic" then -- only its encoder sends them
    allowed.thinking, allowed.structured_output, allowed.vertex, allowed.bedrock = nil, nil, nil, nil
    allowed.auth_token = nil
  end
  if kind == "bedrock" then -- (Converse: stop sequences, tool choice, its structured output, the models' reasoning)
    allowed.stop, allowed.tool_choice, allowed.structured_output, allowed.thinking = true, true, true, true
    allowed.server_tools = nil
  else
    for k in pairs(BEDROCK_OWN) do allowed[k] = nil end
  end
  local msg = check_options(kind, opts, allowed)
  if msg then return nil, msg end
  local retry = {}
  for k, v in pairs(provider.DEFAULT_RETRY) do retry[k] = v end
  for k, v in pairs(opts.retry or {}) do retry[k] = v end
  local headers = {}
  for k, v in pairs(opts.headers or {}) do headers[k:lower()] = v end
  local base_url = (opts.base_url or defaults.base_url):gsub("/+$", "")
  local known = host_defaults(base_url, kind)
  -- The key from the environment: the host's own variable where it has one
  -- (never another service's key: Azure's), else the provider's.
  local env_name = known.key_env or defaults.api_key_env
  local env_key = defaults.api_key
  if known.key_env then env_key = provider._env(known.key_env) end -- (unset: no key, not the provider's)
  -- A key from the environment (a CRLF .env file) is checked as the option
  -- is, and named by its variable; never echoed.
  if opts.api_key == nil and env_key and env_key:find("[\r\n%z]") then
    return nil, ("tide.provider.%s: the API key from %s must not contain a CR, LF or NUL"):format(kind,
      env_name or "the environment")
  end
  local self = {
    kind = kind,
    base_url = base_url,
    api_key = opts.api_key or env_key,
    model = opts.model or defaults.model,
    stream = opts.stream ~= false,
    temperature = opts.temperature,
    max_tokens = opts.max_tokens or defaults.max_tokens,
    timeout_ms = opts.timeout_ms or provider.DEFAULT_TIMEOUT_MS,
    max_body_bytes = opts.max_body_bytes or provider.DEFAULT_MAX_BODY,
    retry = retry,
    headers = headers,
    -- the cache's time to live, or false
    prompt_cache = (opts.prompt_cache == true and "5m") or opts.prompt_cache or false,
    limits = opts.limits, -- rpm / tpm, held process-wide (tide.provider.limits)
    key_header = known.key_header, -- the header the key goes in where it is not the usual one (Azure's)
  }
  if opts.extra_body then
    -- Encoded now, once: a value JSON cannot hold raises at construction,
    -- and a caller changing its table later cannot change the bytes of a
    -- prefix already sent (and cached server-side).
    local extra = {}
    for k, v in pairs(opts.extra_body) do
      local ok, enc = pcall(json.canonical, v)
      if not ok then
        return nil, ("tide.provider.%s: 'extra_body.%s' cannot be encoded as JSON (%s)"):format(kind, k,
          tostring(enc))
      end
      extra[k] = enc
    end
    self.extra_json = extra -- by key, each value encoded
  end
  if opts.token then
    -- An OAuth token instead of a key, asked for before a request once the
    -- last has run out (exchange.lua calls _before_request).
    self.token, self._before_request = opts.token, provider._renew_token
  elseif known.entra_scope and not self.api_key then
    -- An Azure resource without a key: Entra ID, as DefaultAzureCredential
    -- finds a token (asked at the first request)
    self.token = require("tide.provider.azure").default_credential(provider._env, known.entra_scope)
    self._before_request, self.token_from = provider._renew_token, "Microsoft Entra ID's default credentials"
  end
  if opts.server_tools then
    -- Encoded now, as extra_body is: the prefix's bytes cannot change later.
    local encoded, names = {}, {}
    for i, t in ipairs(opts.server_tools) do
      encoded[i] = json.canonical(t)
      if t.name then names[t.name] = true end
    end
    self.server_tools, self.server_tool_names = encoded, names
  end
  if kind == "openai" then
    self.max_tokens_field = opts.max_tokens_field or known.max_tokens_field or "max_completion_tokens"
    if opts.stream_usage ~= nil then
      self.stream_usage = opts.stream_usage
    else
      self.stream_usage = known.stream_usage ~= false
    end
    self.reasoning_effort = opts.reasoning and opts.reasoning.effort
    -- (a request that is not streamed says it does not think, unless extra_body says)
    self.whole_without_thinking = known.whole_without_thinking
    if known.native_schema == false then self._native_schema = false end
    self.tool_choice = opts.tool_choice
    self.parallel_tool_calls = opts.parallel_tool_calls
    self.stop_sequences = opts.stop
    self.query = opts.query
    -- The organization and project a request bills, as the official SDKs
    -- send them (their environment variables too); the `headers` option's
    -- own values win.
    for option, var in pairs({ organization = "OPENAI_ORG_ID", project = "OPENAI_PROJECT_ID" }) do
      local v = opts[option] or provider._env(var)
      if v and v:find("[\r\n%z]") then -- (from the environment: the option was checked)
        return nil, ("tide.provider.openai: %s must not contain a CR, LF or NUL"):format(var)
      end
      local header = "openai-" .. option
      if v and headers[header] == nil then headers[header] = v end
    end
    self.api = opts.api or "chat"
    -- Custom tools (tide.tool's format) go as such where the API has them:
    -- the Responses API, OpenAI's own chat completions and Azure's; the
    -- OpenAI-compatible servers have none (a request with one is refused),
    -- and get a function of one string argument instead. The option wins.
    if opts.custom_tools ~= nil then
      self._custom_tools = opts.custom_tools
    else
      self._custom_tools = self.api == "responses" or base_url:match("^https://([^/:]+)") == "api.openai.com"
        or known.key_header == "api-key"
    end
    if self.api == "responses" then
      self.store = opts.store == true
      self.reasoning_summary = opts.reasoning and opts.reasoning.summary
    end
  end
  return self
end

--- Before a request of a provider with a `token` function: asks it for a
--- new access token once the last has run out (the seconds it said, less
--- a minute; 55 minutes when it said nothing, as Entra ID's and Google's
--- tokens last an hour). True, or nil and a ProviderError when the
--- function failed (no request is sent then).
---@param self table a provider
---@return true|nil
---@return table|nil err
function provider._renew_token(self)
  if self._token_until and core.hrtime() < self._token_until then return true end
  local ok, token, ttl = provider._once(self, "_token_call", self.token)
  if not ok or type(token) ~= "string" or token == "" or token:find("[\r\n%z]") then
    return nil, core.error("ProviderError", ("tide.provider.%s: %s gave no access token%s")
      :format(self.kind, self.token_from or "the token function", not ok and (": " .. tostring(token)) or ""))
  end
  self.bearer, self._token_until = token, provider._deadline(ttl)
  return true
end

--- When credentials that last `ttl` seconds (nil: an hour) are to be asked
--- for again, in core.hrtime's nanoseconds: a minute before they run out;
--- ones that last two minutes or less at half their time, and ones
--- already out at once (the next request asks again).
---@param ttl integer|nil
---@return integer
function provider._deadline(ttl)
  if not math.type(ttl) then ttl = 3360 end
  local keep = ttl > 120 and ttl - 60 or math.max(ttl // 2, 0)
  return core.hrtime() + math.floor(keep) * 1000000000
end

--- Seconds since the epoch of an ISO 8601 time ("2026-12-06T20:00:00Z";
--- a zone offset, "+09:00", taken off; a space for the T; the AWS CLI's
--- older "2026-12-06T20:00:00UTC" too, Google's with fractions of a
--- second), or nil: when credentials run out.
---@param iso any
---@return integer|nil
function provider._epoch(iso)
  local y, mo, d, h, mi, sec, zone = tostring(iso):match(
    "^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)%.?%d*%s*(.*)$")
  if not y then return nil end
  local offset = 0
  local sign, oh, om = zone:match("^([+-])(%d%d):?(%d%d)$")
  if sign then
    offset = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "-" and -1 or 1)
  elseif zone ~= "" and zone ~= "Z" and zone ~= "z" and zone ~= "UTC" then
    return nil
  end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  -- days from the civil date (Howard Hinnant's algorithm): no time zone involved
  y = mo <= 2 and y - 1 or y
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * (mo + (mo > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec) - offset
end

--- The whole content of the file at `path`, or nil when it cannot be read
--- (credentials files: tide.provider.aws, tide.provider.google).
---@param path string
---@return string|nil
function provider._read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- `s` percent-encoded but for RFC 3986's unreserved bytes (A-Z a-z 0-9
--- - _ . ~), %XX in uppercase: a form value, or a path segment to sign.
---@param s string
---@return string
function provider._percent_encode(s)
  return (s:gsub("[^%w%-_%.~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

--- `s` with each %XX written out as its byte.
---@param s string
---@return string
function provider._percent_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- `s` in base64url without padding (RFC 7515's, for a JWT).
---@param s string
---@return string
function provider._base64url(s)
  return (core.base64(s):gsub("[+/=]", { ["+"] = "-", ["/"] = "_", ["="] = "" }))
end

--- `fields` ({ name, value } pairs, in order) as an
--- application/x-www-form-urlencoded body.
---@param fields {[1]:string, [2]:any}[]
---@return string
function provider._form(fields)
  local out = {}
  for i, kv in ipairs(fields) do out[i] = kv[1] .. "=" .. provider._percent_encode(tostring(kv[2])) end
  return table.concat(out, "&")
end

--- The access token of an OAuth token endpoint's response (`res`, from
--- tide.http) and the seconds it lasts, or nil and why, `what` naming the
--- endpoint. expires_in is a number from Entra ID and Google, a string from
--- Azure's instance metadata service; App Service says expires_on, an
--- epoch second, as a string.
---@param res tide.http.response
---@param what string
---@return string|nil token
---@return integer|string|nil seconds_or_why
function provider._access_token(res, what)
  local ok, doc = pcall(json.decode, res.body)
  if res.status ~= 200 or not ok or type(doc) ~= "table" or type(doc.access_token) ~= "string" then
    local why = ok and type(doc) == "table" and (doc.error_description or doc.error or doc.message) or nil
    -- (Google's errors: { error = { message } })
    if type(why) == "table" then why = type(why.message) == "string" and why.message or nil end
    return nil, ("%s: HTTP %d%s"):format(what, res.status, why and (" (" .. tostring(why):match("^[^\r\n]*") .. ")") or "")
  end
  local function seconds(v) -- (a count given as a number or a string, fractions dropped)
    local n = tonumber(v)
    return n and n == n and math.abs(n) < 2 ^ 53 and math.floor(n) or nil
  end
  local ttl = seconds(doc.expires_in)
  if not ttl and seconds(doc.expires_on) then ttl = seconds(doc.expires_on) - os.time() end
  return doc.access_token, ttl
end

-- The wait before the try after the `n`th, in ms: delay_ms doubled (or
-- times `multiplier`) for each earlier try, at most max_delay_ms; jitter
-- "full" waits a random share of it (botocore's), a fraction f waits
-- within ±f of it (google-auth's).
local function backoff_ms(policy, n)
  local ms = math.min((policy.delay_ms or 0) * (policy.multiplier or 2) ^ (n - 1), policy.max_delay_ms or math.huge)
  local j = policy.jitter
  if j == "full" then
    ms = math.random() * ms
  elseif j then
    ms = ms * (1 - j + 2 * j * math.random())
  end
  return math.floor(ms)
end

local function fetch(request, policy)
  local http = require "tide.http"
  local attempts = math.max(1, policy.attempts or 1)
  for n = 1, attempts do
    local res, err = http.request(request)
    local again
    if res then
      again = (policy.statuses and policy.statuses[res.status]) or (policy.retry_if and policy.retry_if(res))
    else
      -- a probe's endpoint that does not answer at all is not there
      again = policy.errors and not (policy.probe and n == 1)
    end
    if not again or n == attempts then
      if err then err.attempts = n end
      return res, err
    end
    local ms = backoff_ms(policy, n)
    local after = policy.retry_after and res and tonumber(res.headers["retry-after"])
    if after and after >= 0 then ms = math.floor(math.min(after * 1000, policy.max_delay_ms or math.huge)) end
    if ms > 0 then core.sleep(ms) end
  end
end

--- A request to an endpoint that hands out credentials (a token endpoint,
--- STS, a metadata service), sent again after a transient failure as the
--- cloud's own SDK sends it again: the policies are `retry` in
--- tide.provider.aws, .google and .azure. `policy`: `attempts` (all
--- tries); `delay_ms` (the first wait, doubled after each try or times
--- `multiplier`, at most `max_delay_ms`) and `jitter` ("full": a random
--- share of the wait; a fraction: within ± that share); `statuses` (a set
--- of HTTP statuses to try again); `retry_if(res)` (a further test of a
--- response); `errors` (a request that got no response, refused or timed
--- out, is tried again), `probe` (but not the first: the endpoint is not
--- there); `retry_after` (a Retry-After header sets the wait). Inside a
--- task or not. Returns the last response, or nil and tide.http's error
--- (its `attempts`: how many tries were made).
---@param request table tide.http.request's options
---@param policy table
---@return tide.http.response|nil
---@return table|nil err
function provider._fetch(request, policy)
  return require("tide")._blocking(fetch, request, policy)
end

--- Runs a program that hands out credentials (the Azure CLI, an AWS
--- credential_process) to its end: its exit status (128 + the signal for
--- one a signal ended, as a shell says it), its standard output (lines
--- joined by "\n") and standard error; nil and the error when it cannot
--- start or does not end. One still reading or running after `timeout_ms`
--- is killed. (Its output never goes into an error: it holds secrets.)
--- Inside a task.
---@param opts table core.process_spawn's options (argv, env)
---@param timeout_ms integer
---@return integer|nil status
---@return string|table stdout_or_err
---@return string|nil stderr
function provider._run(opts, timeout_ms)
  local proc, err = core.process_spawn(opts)
  if not proc then return nil, err end
  local lines = {}
  while true do
    local line, rerr = proc:read_line(timeout_ms)
    if not line then
      if rerr then proc:kill() end
      break
    end
    lines[#lines + 1] = line
  end
  local status, signal = proc:wait(timeout_ms)
  local stderr = proc:stderr()
  proc:close()
  if not status then return nil, signal end -- (the Timeout)
  if signal ~= 0 then status = 128 + signal end
  return status, table.concat(lines, "\n"), stderr
end

--- Calls `fn` protected (pcall's results), once for every caller that
--- asks while a call is under way: the sessions that start together on a
--- provider whose token ran out wait for one renewal, instead of sending
--- a token endpoint (a metadata service, STS, Entra ID) as many requests
--- as there are sessions. `slot` names the field the call is kept in.
---@param self table a provider
---@param slot string
---@param fn function
function provider._once(self, slot, fn)
  if not core.current() then return pcall(fn) end -- (outside a task: nothing runs beside it)
  local t = rawget(self, slot)
  if not t then
    t = core.spawn(pcall, fn)
    rawset(self, slot, t)
  end
  local ok, a, b = t:join() -- pcall's results, or nil and the task's error (cancelled)
  if rawget(self, slot) == t then rawset(self, slot, nil) end
  if ok == nil then return false, a end
  return ok, a, b
end

--- The value of environment variable `name`, or nil when unset or empty.
function provider._env(name)
  local v = os.getenv(name)
  if v == nil or v == "" then return nil end
  return v
end

-- --------------------------------------------------------- shared encoding

-- A custom tool (tide.tool's `format`) as a function of one string
-- argument, for the providers that have no custom tools: the format goes
-- in the argument's description, a grammar whole, for the model to follow.
local function custom_as_function(t)
  local f = t.format
  local what = f.type == "grammar"
    and ("The tool's input, text in this %s grammar:\n%s"):format(f.syntax == "lark" and "Lark" or "regular expression",
      f.definition)
    or "The tool's input, free text."
  return {
    name = t.name,
    description = t.description or "",
    parameters = { type = "object", properties = { input = { type = "string", description = what } },
                   required = json.array { "input" }, additionalProperties = false },
  }
end

--- The calls of an assistant message as a provider without custom tools
--- sends them: a custom tool's call (its input text) as a call of the
--- function that provider offers in its place (see custom_as_function),
--- `{ "input": text }`. The list itself when it holds none (the usual
--- case, on the path of every assistant message: looked for in place).
function provider._function_calls(calls)
  local n, first = #calls, nil
  for i = 1, n do
    if calls[i].custom then
      first = i
      break
    end
  end
  if not first then return calls end
  local copy = table.move(calls, 1, n, 1, {})
  for i = first, n do
    local c = copy[i]
    if c.custom then
      copy[i] = { id = c.id, name = c.name,
                  arguments = json.canonical { input = type(c.arguments) == "string" and c.arguments or "" } }
    end
  end
  return copy
end

--- The tools of a request, checked: each { name, description, parameters },
--- or, where the API takes custom tools (`custom`: OpenAI's), a custom
--- tool's { name, description, format }; elsewhere a custom tool is a
--- function of one string argument, `input`.
function provider._tools(kind, tools, level, custom)
  local out = {}
  if tools == nil then return out end
  if type(tools) ~= "table" then
    error(("tide.provider.%s: 'tools' must be a table, got %s"):format(kind, type(tools)), level + 1)
  end
  for i, t in ipairs(tools) do
    if type(t) ~= "table" or type(t.name) ~= "string" or t.name == "" then
      error(("tide.provider.%s: tools[%d] needs a 'name' string"):format(kind, i), level + 1)
    end
    if t.description ~= nil and type(t.description) ~= "string" then
      error(("tide.provider.%s: tools[%d].description must be a string"):format(kind, i), level + 1)
    end
    if t.parameters ~= nil and type(t.parameters) ~= "table" then
      error(("tide.provider.%s: tools[%d].parameters must be a table"):format(kind, i), level + 1)
    end
    local f = t.format
    if f ~= nil and (type(f) ~= "table" or (f.type ~= "text" and (f.type ~= "grammar"
        or (f.syntax ~= "lark" and f.syntax ~= "regex") or type(f.definition) ~= "string"))) then
      error(("tide.provider.%s: tools[%d].format must be { type = \"text\" } or { type = \"grammar\", "
        .. "syntax = \"lark\" or \"regex\", definition }"):format(kind, i), level + 1)
    end
    if f and custom then
      out[i] = { name = t.name, description = t.description or "", format = f }
    elseif f then
      out[i] = custom_as_function(t)
    else
      out[i] = {
        name = t.name,
        description = t.description or "",
        parameters = t.parameters or { type = "object", properties = {} },
      }
    end
  end
  return out
end

--- Checks the common shape of a neutral message (raises on misuse).
function provider._check_message(kind, msg, level)
  if type(msg) ~= "table" then
    error(("tide.provider.%s: a message must be a table, got %s"):format(kind, type(msg)), level + 1)
  end
  local role = msg.role
  if role ~= "system" and role ~= "user" and role ~= "assistant" and role ~= "tool" then
    error(("tide.provider.%s: unknown message role %s"):format(kind, tostring(role)), level + 1)
  end
  if role == "tool" then
    if type(msg.results) ~= "table" then
      error(("tide.provider.%s: a tool message needs a 'results' table"):format(kind), level + 1)
    end
    for i, r in ipairs(msg.results) do
      if type(r) ~= "table" or type(r.id) ~= "string" then
        error(("tide.provider.%s: results[%d] needs an 'id' string"):format(kind, i), level + 1)
      end
    end
  elseif role == "assistant" then
    if msg.content ~= nil and type(msg.content) ~= "string" then
      error(("tide.provider.%s: assistant content must be a string or nil"):format(kind), level + 1)
    end
    if msg.tool_calls ~= nil then
      if type(msg.tool_calls) ~= "table" then
        error(("tide.provider.%s: 'tool_calls' must be a table"):format(kind), level + 1)
      end
      for i, c in ipairs(msg.tool_calls) do
        if type(c) ~= "table" or type(c.id) ~= "string" or type(c.name) ~= "string" then
          error(("tide.provider.%s: tool_calls[%d] needs 'id' and 'name' strings"):format(kind, i),
            level + 1)
        end
      end
    end
  elseif msg.content ~= nil and type(msg.content) ~= "string" and type(msg.content) ~= "table" then
    error(("tide.provider.%s: %s content must be a string"):format(kind, role), level + 1)
  end
end

--- The text of a tool result's content (tables are sent as JSON; text and
--- image parts as their text, an image as a line that says so).
function provider._result_text(content)
  if content == nil then return "" end
  if type(content) == "string" then return content end
  if type(content) == "table" then
    if neutral().is_neutral(content) then return neutral().parts_text(content) end
    return json.canonical(content)
  end
  return tostring(content)
end

--- Whether any of `results` holds text and image parts (a tool that showed
--- the model an image) rather than text.
function provider._has_parts(results)
  for _, r in ipairs(results) do
    if type(r.content) == "table" and neutral().is_neutral(r.content) then return true end
  end
  return false
end

-- ----------------------------------------------------------- base methods

---@class tide.provider.Provider
---@field kind string "openai" | "anthropic"
---@field model string
local Base = {}
provider.Base = Base

--- The full request body: the prefix, the encoded messages (comma-joined),
--- and the closing brackets. Nothing is re-encoded.
---@param prefix string from encode_prefix
---@param encoded string[] from encode_message, in order
---@return string
function Base:body(prefix, encoded)
  if type(prefix) ~= "string" then
    error(("tide.provider.%s: body: 'prefix' must be a string, got %s"):format(self.kind, type(prefix)), 2)
  end
  if type(encoded) ~= "table" then
    error(("tide.provider.%s: body: 'encoded' must be a table, got %s"):format(self.kind, type(encoded)), 2)
  end
  -- Messages that encode as nothing are left out of the join.
  local wire, empty = encoded, false
  for i = 1, #encoded do
    local e = encoded[i]
    if type(e) ~= "string" then
      error(("tide.provider.%s: body: encoded[%d] must be a string, got %s"):format(self.kind, i, type(e)), 2)
    end
    if e == "" then empty = true end
  end
  if empty then
    wire = {}
    for i = 1, #encoded do
      if encoded[i] ~= "" then wire[#wire + 1] = encoded[i] end
    end
  end
  -- The session's requests are joined the same way, inside core.http_post.
  return core.join_wire(prefix, wire)
end

--- Alias of `body` (the name docs/internals.md mentions for the join).
Base.join = Base.body

-- ------------------------------------------------------------- complete

local complete = exchange.complete
local complete_fields = { on_delta = "function", on_reasoning = "function", on_tool_input = "function",
  on_retry = "function", timeout_ms = "integer" }

--- complete for the session's turn: already inside a task, options its own;
--- `_complete(prefix, opts, wire)` sends join_wire(prefix, wire) without
--- making it a Lua string.
Base._complete = complete

--- Sends a request body and returns the neutral response. Inside a task it
--- suspends only that task; outside any task it drives the loop itself.
--- Retries rate limits (429), server errors (500, 502, 503, 504, 529) and
--- connections that failed before any byte of a reply, with exponential
--- backoff and full jitter, honouring Retry-After; never once streamed text
--- has reached `on_delta`.
---@param body string from `body`
--- `on_reasoning` gets the reasoning text as it streams (reasoning_content
--- deltas); without it, no string is made of it until the reply is whole.
--- `on_tool_input(index, id, name, piece)` gets each tool call's input as
--- the model writes it (the call's index as the provider numbers it, its
--- id and name, and the piece: "" when the call starts; a reply that is not
--- streamed gives each call's input whole); the same: no string without it.
---@param opts? {on_delta?:fun(text:string), on_reasoning?:fun(text:string), on_tool_input?:fun(index:integer, id:string?, name:string?, piece:string), on_retry?:fun(info:{attempt:integer, delay_ms:integer, error:table}), timeout_ms?:integer}
---@return tide.provider.response|nil
---@return table|nil err `{ code = "RateLimited"|"ProviderError"|"MalformedResponse"|"Timeout"|..., message, status?, body?, attempts }`
function Base:complete(body, opts)
  if type(body) ~= "string" then
    error(("tide.provider.%s: complete: 'body' must be a string, got %s"):format(self.kind, type(body)), 2)
  end
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    error(("tide.provider.%s: complete: 'opts' must be a table, got %s"):format(self.kind, type(opts)), 2)
  end
  for k, want in pairs(complete_fields) do
    local v = opts[k]
    if v ~= nil then
      local ok = want == "integer" and math.type(v) == "integer" and v > 0 or type(v) == want
      if not ok then
        error(("tide.provider.%s: complete: '%s' must be a %s%s, got %s"):format(self.kind, k,
          want == "integer" and "positive " or "", want, type_name(v, want)), 2)
      end
    end
  end
  return require("tide")._blocking(complete, self, body, opts)
end

--- The stable identity of a prefix (for logs and cache checks): FNV-1a 64.
---@param prefix string
---@return string
function Base:fingerprint(prefix)
  return core.hash(prefix)
end


-- -------------------------------------------------------------- the wire

-- RFC 3986: everything but the unreserved characters is percent-encoded.
local escape = provider._percent_encode

--- `base .. path`, with `query` (a table, nil or empty: none) as URL
--- parameters, sorted and percent-encoded: the same URL for the same
--- options (Azure's api-version).
---@param base string
---@param path string
---@param query? table<string, string|number>
---@return string
function provider._url_of(base, path, query)
  local url = base .. path
  if query == nil or next(query) == nil then return url end
  local keys = {}
  for k in pairs(query) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do
    local v = query[k]
    if type(v) == "number" then v = tostring(math.tointeger(v) or v) end
    parts[i] = escape(k) .. "=" .. escape(v)
  end
  return url .. "?" .. table.concat(parts, "&")
end

--- The headers of an OpenAI request (chat or Responses): JSON, SSE when
--- streaming, the key as a bearer token, then the `headers` option.
function provider._bearer_headers(self)
  local h = { ["content-type"] = "application/json" }
  if self.stream then h["accept"] = "text/event-stream" end
  if self.bearer then -- an OAuth token (the `token` option): a bearer wherever a key would go
    h["authorization"] = "Bearer " .. self.bearer
  elseif self.api_key then
    if self.key_header then h[self.key_header] = self.api_key else h["authorization"] = "Bearer " .. self.api_key end
  end
  for k, v in pairs(self.headers) do h[k] = v end
  return h
end

-- The pieces the wire formats use, under the names they have always had.
provider._fail = errors.fail
provider._excerpt = errors.excerpt
provider._finish_calls = reply.finish_calls
provider._stop = reply.stop
provider._count = reply.count
provider.retry_after_ms = retry.after_ms
provider.backoff_ms = retry.backoff_ms

--- A provider class named `name`: Base's methods copied in rather than
--- inherited, so that a field a provider lacks (the request path asks for
--- several optional hooks on every call) is a miss of one table, not a walk
--- up a chain of them.
---@param name string the metatable's __name
---@return table
function provider.class(name)
  local c = {}
  for k, v in pairs(Base) do c[k] = v end
  c.__index, c.__name = c, name
  return c
end

return provider
