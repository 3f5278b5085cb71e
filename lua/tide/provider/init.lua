--- tide.provider: model providers, OpenAI-compatible chat completions and
--- Anthropic Messages, behind one interface (docs/internals.md lists its
--- hooks).
---
--- A provider object encodes requests in pieces so that a session encodes its
--- frozen prefix once and each message once (`encode_prefix`,
--- `encode_message`, `body`), then sends the bytes with `complete`.
---
--- The parts: `base` (options, shared checks, the interface's common
--- methods), `exchange` (one request and its reply), `retry` (backoff and
--- Retry-After), `errors`, `reply` (the neutral reply), and one file per wire
--- format (`openai`, `responses`, `anthropic`, `bedrock`).
---@class tide.provider
local base = require "tide.provider.base"

local provider = {
  DEFAULT_TIMEOUT_MS = base.DEFAULT_TIMEOUT_MS,
  DEFAULT_MAX_BODY = base.DEFAULT_MAX_BODY,
  DEFAULT_RETRY = base.DEFAULT_RETRY,
  ERROR_BODY_MAX = base.ERROR_BODY_MAX,
  Base = base.Base,
  retry_after_ms = base.retry_after_ms,
  backoff_ms = base.backoff_ms,
}

--- An OpenAI-compatible chat-completions provider (OpenAI, Ollama, llama.cpp
--- server, vLLM, OpenRouter...), or with `api = "responses"` OpenAI's
--- Responses API (stateless: `store = false` unless asked). Defaults:
--- OPENAI_BASE_URL ("https://api.openai.com/v1"), OPENAI_API_KEY, TIDE_MODEL
--- ("gpt-4o-mini").
---@param opts? tide.provider.opts
---@return tide.provider.Provider
function provider.openai(opts)
  -- The option itself is checked with the others (base.lua); only a valid
  -- choice picks the wire format.
  local api = type(opts) == "table" and opts.api == "responses" and "responses" or "openai"
  local p, msg = require("tide.provider." .. api).new(opts)
  if not p then error(msg, 2) end
  return p
end

--- An Anthropic Messages provider. Defaults: ANTHROPIC_BASE_URL
--- ("https://api.anthropic.com/v1"), ANTHROPIC_API_KEY, TIDE_MODEL
--- ("claude-sonnet-4-5"), max_tokens 4096.
---@param opts? tide.provider.opts
---@return tide.provider.Provider
function provider.anthropic(opts)
  local p, msg = require("tide.provider.anthropic").new(opts)
  if not p then error(msg, 2) end
  return p
end

--- Amazon Bedrock's Converse API: every model Bedrock serves, in one
--- request shape (tide.provider.bedrock). `model` is required; `region`,
--- `credentials` and `profile` as for Claude on Bedrock.
---@param opts? tide.provider.opts
---@return tide.provider.Provider
function provider.bedrock(opts)
  local p, msg = require("tide.provider.bedrock").new(opts)
  if not p then error(msg, 2) end
  return p
end

--- A provider that moves on to the next of `list` once one has spent its
--- retries on a rate limit, a server error, a timeout or a failed
--- connection (tide.provider.fallback).
---@param list table[] providers, in order
---@return table
function provider.fallback(list)
  local p, msg = require("tide.provider.fallback").new(list)
  if not p then error(msg, 2) end
  return p
end

--- True when `v` is a provider object made by this module.
function provider.is(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and type(mt.__index) == "table" and mt.__index.complete == base.Base.complete
end

-- The underscore helpers stay reachable here for code written against the
-- single-file module.
return setmetatable(provider, { __index = base })
