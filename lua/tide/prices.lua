--- tide.prices: what model calls cost, in US dollars per million tokens.
---
--- A shipped table covers common OpenAI, Anthropic, Gemini, DeepSeek and
--- Amazon Nova models (list prices; `tide.prices{ [model] = {...} }` overrides or adds,
--- for negotiated prices, other models or newer lists). A model is found by
--- its exact name, else by the longest name that prefixes it (so a dated
--- snapshot, "gpt-4o-mini-2024-07-18", takes "gpt-4o-mini"'s prices).
---
--- Usage means the same from every provider (tide.turn): `input` is the
--- whole prompt, of which `cached` were read from the provider's cache and
--- `cache_write` written to it (`cache_write_1h` of those for an hour:
--- Anthropic's longer cache, billed higher); `reasoning` is part of
--- `output`. So a call costs (input - cached - cache_write) x input +
--- cached x cached + (cache_write - cache_write_1h) x cache_write +
--- cache_write_1h x cache_write_1h + output x output, and reasoning tokens
--- priced apart (where a price says so) replace their share of the output
--- price.
--- A server tool's web searches (`usage.web_searches`: Anthropic's web
--- search, the Responses API's) cost `web_search` US dollars per 1,000
--- searches on top, and the Responses API's file searches
--- (`usage.file_searches`) `file_search` per 1,000 calls.
---
--- A long prompt can cost more per token: `long_context = { above, input,
--- output, ... }` prices the whole call (its output too) at those prices
--- when its prompt (`input`, cache reads and writes included) is longer
--- than `above` tokens, as Anthropic bills Claude Sonnet 4 and later with
--- the 1M-token window, and Google Gemini 2.5 Pro, past 200,000. Cache
--- prices the tier leaves out are the base ones scaled by the tier's input
--- price (the multipliers stack).
---
--- The service tier that served a call can bill it apart: `service_tiers =
--- { [name] = { input, output, ... } }` prices a call whose reply names that
--- tier (`usage.service_tier`: OpenAI's "flex" and "priority", Anthropic's
--- "priority"), its missing cache prices scaled as a long prompt's are (a
--- tier's prices win over `long_context`). A tier without prices is billed
--- at the base ones. Shipped: OpenAI's Flex processing for the models that
--- offer it, at half the standard prices (the Batch API's).
---@class tide.prices
local M = {}

-- USD per 1M tokens: input, cached (cache read), cache_write (five
-- minutes' cache), cache_write_1h (an hour's: Anthropic's twice the input
-- price), output. A missing cached price is the input price; a missing
-- cache_write price is the input price (providers that do not bill writes
-- apart); a missing cache_write_1h price is the cache_write price. web_search:
-- USD per 1,000 searches of the provider's own web search tool ($10 for
-- Claude and OpenAI's reasoning models, $25 for gpt-4o and gpt-4.1, whose
-- search content tokens are free). file_search: USD per 1,000 calls of the
-- Responses API's file search ($2.50 whatever the model).
-- Claude Sonnet's prices past 200,000 prompt tokens (the 1M-token window)
local SONNET_1M = { above = 200000, input = 6.00, output = 22.50 }

-- OpenAI's Flex processing: half the standard prices
local function flex(p) return { input = p.input / 2, cached = p.cached / 2, output = p.output / 2 } end

local SHIPPED = {
  ["gpt-4o"] = { input = 2.50, cached = 1.25, output = 10.00, web_search = 25, file_search = 2.5 },
  ["gpt-4o-mini"] = { input = 0.15, cached = 0.075, output = 0.60, web_search = 25, file_search = 2.5 },
  -- (the first gpt-4o snapshot kept its launch price, and had no cache)
  ["gpt-4o-2024-05-13"] = { input = 5.00, output = 15.00 },
  ["gpt-4.1"] = { input = 2.00, cached = 0.50, output = 8.00, web_search = 25, file_search = 2.5 },
  ["gpt-4.1-mini"] = { input = 0.40, cached = 0.10, output = 1.60, web_search = 25, file_search = 2.5 },
  ["gpt-4.1-nano"] = { input = 0.10, cached = 0.025, output = 0.40, file_search = 2.5 },
  ["gpt-5"] = { input = 1.25, cached = 0.125, output = 10.00, web_search = 10, file_search = 2.5 },
  ["gpt-5-mini"] = { input = 0.25, cached = 0.025, output = 2.00, web_search = 10, file_search = 2.5 },
  ["gpt-5-nano"] = { input = 0.05, cached = 0.005, output = 0.40, web_search = 10, file_search = 2.5 },
  ["o3"] = { input = 2.00, cached = 0.50, output = 8.00, web_search = 10, file_search = 2.5 },
  ["o3-mini"] = { input = 1.10, cached = 0.55, output = 4.40, file_search = 2.5 },
  ["o4-mini"] = { input = 1.10, cached = 0.275, output = 4.40, web_search = 10, file_search = 2.5 },
  ["claude-opus-4"] = { input = 15.00, cached = 1.50, cache_write = 18.75, cache_write_1h = 30.00, output = 75.00, web_search = 10 },
  ["claude-opus-4-1"] = { input = 15.00, cached = 1.50, cache_write = 18.75, cache_write_1h = 30.00, output = 75.00, web_search = 10 },
  ["claude-opus-4-5"] = { input = 5.00, cached = 0.50, cache_write = 6.25, cache_write_1h = 10.00, output = 25.00, web_search = 10 },
  ["claude-opus-4-6"] = { input = 5.00, cached = 0.50, cache_write = 6.25, cache_write_1h = 10.00, output = 25.00, web_search = 10 },
  ["claude-sonnet-4"] = { input = 3.00, cached = 0.30, cache_write = 3.75, cache_write_1h = 6.00, output = 15.00, web_search = 10,
    long_context = SONNET_1M },
  ["claude-sonnet-4-5"] = { input = 3.00, cached = 0.30, cache_write = 3.75, cache_write_1h = 6.00, output = 15.00, web_search = 10,
    long_context = SONNET_1M },
  ["claude-sonnet-4-6"] = { input = 3.00, cached = 0.30, cache_write = 3.75, cache_write_1h = 6.00, output = 15.00, web_search = 10,
    long_context = SONNET_1M },
  ["claude-3-7-sonnet"] = { input = 3.00, cached = 0.30, cache_write = 3.75, cache_write_1h = 6.00, output = 15.00, web_search = 10 },
  ["claude-haiku-4-5"] = { input = 1.00, cached = 0.10, cache_write = 1.25, cache_write_1h = 2.00, output = 5.00, web_search = 10 },
  ["claude-3-5-haiku"] = { input = 0.80, cached = 0.08, cache_write = 1.00, cache_write_1h = 1.60, output = 4.00, web_search = 10 },
  ["claude-3-haiku"] = { input = 0.25, cached = 0.03, cache_write = 0.30, cache_write_1h = 0.50, output = 1.25 },
  ["claude-3-opus"] = { input = 15.00, cached = 1.50, cache_write = 18.75, cache_write_1h = 30.00, output = 75.00 },
  ["gemini-2.5-pro"] = { input = 1.25, cached = 0.31, output = 10.00,
    long_context = { above = 200000, input = 2.50, cached = 0.625, output = 15.00 } },
  ["gemini-2.5-flash"] = { input = 0.30, cached = 0.075, output = 2.50 },
  ["gemini-2.5-flash-lite"] = { input = 0.10, cached = 0.025, output = 0.40 },
  ["deepseek-chat"] = { input = 0.28, cached = 0.028, output = 0.42 },
  ["deepseek-reasoner"] = { input = 0.28, cached = 0.028, output = 0.42 },
  -- Amazon Nova on Bedrock (tide.provider.bedrock); cache reads at a quarter
  ["amazon.nova-micro"] = { input = 0.035, cached = 0.00875, output = 0.14 },
  ["amazon.nova-lite"] = { input = 0.06, cached = 0.015, output = 0.24 },
  ["amazon.nova-pro"] = { input = 0.80, cached = 0.20, output = 3.20 },
  ["amazon.nova-premier"] = { input = 2.50, cached = 0.625, output = 12.50 },
}

-- (the models OpenAI's Flex processing serves)
for _, m in ipairs { "gpt-5", "gpt-5-mini", "gpt-5-nano", "o3", "o4-mini" } do
  SHIPPED[m].service_tiers = { flex = flex(SHIPPED[m]) }
end

local overrides = {}
-- The prices found for each model name (false: none), so that a name is
-- matched once, not on every response; emptied when prices change.
local found = {}
local FIELDS = { input = true, cached = true, cache_write = true, cache_write_1h = true, output = true, reasoning = true,
  web_search = true, file_search = true, long_context = true, service_tiers = true }
-- Priced per call, not per token: a long prompt's tier does not change them.
local PER_CALL = { web_search = true, file_search = true }

-- Checks one table of prices (`what` names it); raises at `level`.
-- `tier`: "long" for a long prompt's (which needs `above`), "service" for a
-- service tier's.
local function check_prices(what, p, level, tier)
  if type(p) ~= "table" then error(("tide.prices: '%s' must be a table of prices"):format(what), level + 1) end
  for k, v in pairs(p) do
    if k == "long_context" and not tier then
      check_prices(what .. ".long_context", v, level + 1, "long")
    elseif k == "service_tiers" and not tier then
      if type(v) ~= "table" then
        error(("tide.prices: '%s.service_tiers' must be a table of tier names to prices"):format(what), level + 1)
      end
      for name, tp in pairs(v) do
        if type(name) ~= "string" or name == "" then
          error(("tide.prices: '%s.service_tiers' must be keyed by tier names"):format(what), level + 1)
        end
        check_prices(what .. ".service_tiers." .. name, tp, level + 1, "service")
      end
    elseif k == "above" and tier == "long" then
      if math.type(v) ~= "integer" or v <= 0 then
        error(("tide.prices: '%s.above' must be a positive integer (prompt tokens)"):format(what), level + 1)
      end
    elseif not FIELDS[k] or k == "long_context" or k == "service_tiers" or (tier and PER_CALL[k]) then
      error(("tide.prices: unknown price '%s' for '%s'"):format(tostring(k), what), level + 1)
    elseif type(v) ~= "number" or v < 0 or v ~= v or v == math.huge then
      error(("tide.prices: '%s.%s' must be a non-negative number"):format(what, k), level + 1)
    end
  end
  if p.input == nil or p.output == nil then
    error(("tide.prices: '%s' needs 'input' and 'output'"):format(what), level + 1)
  end
  if tier == "long" and p.above == nil then error(("tide.prices: '%s' needs 'above'"):format(what), level + 1) end
end

--- Sets or adds prices: `{ [model] = { input, cached, cache_write,
--- cache_write_1h, output, reasoning, web_search, file_search,
--- long_context, service_tiers } }` in USD per million tokens
--- (`long_context = { above, input, output, ... }`: the prices of a call
--- whose prompt is longer than `above`; `service_tiers = { [name] = {
--- input, output, ... } }`: the prices of a call the named service tier
--- served; `web_search`, `file_search`: per 1,000 calls; `input` and
--- `output` required). `false` for a model removes its price.
---@param tbl table<string, table|false>
function M.set(tbl)
  if type(tbl) ~= "table" then
    error(("bad argument #1 to 'prices' (table expected, got %s)"):format(type(tbl)), 2)
  end
  for model, p in pairs(tbl) do
    if type(model) ~= "string" or model == "" then error("tide.prices: a model name must be a non-empty string", 2) end
    if p ~= false then check_prices(model, p, 2) end
    overrides[model] = p
  end
  found = {}
end

--- The prices of `model`, or nil when tide has none.
---@param model string
---@return table|nil
function M.of(model)
  if type(model) ~= "string" then return nil end
  local f = found[model]
  if f ~= nil then return f or nil end
  f = M._lookup(model)
  found[model] = f or false
  return f
end

-- The model a cloud platform's id names, in Anthropic's words: Vertex AI's
-- "claude-sonnet-4-5@20250929", Bedrock's
-- "us.anthropic.claude-sonnet-4-5-20250929-v1:0" (an inference profile's
-- geography or "global.", the model's version) are both
-- "claude-sonnet-4-5-20250929". (The list price: Bedrock and Vertex bill
-- some regional endpoints more; tide.prices takes the exact id.)
local function platform_name(model)
  -- (an Amazon model's id keeps its "amazon." and loses its geography)
  return (model:gsub("^[%a%-]+%.anthropic%.", ""):gsub("^anthropic%.", ""):gsub("^[%a%-]+%.amazon%.", "amazon.")
    :gsub("%-v%d+:%d+.*$", ""):gsub("@", "-"))
end

-- A suffix that names a snapshot of a priced model, not another model: a
-- date ("-2024-08-06", "-20250929"), "-latest", a version ("-001"), a
-- preview or experimental release. "gpt-5-pro" or "o3-deep-research" are
-- other models, priced apart (or not at all), never as their prefix.
local SNAPSHOT = { "^%-%d%d%d%d%-%d%d%-%d%d$", "^%-%d%d%d%d%d%d%d%d$", "^%-latest$", "^%-%d%d%d$",
  "^%-preview[%-%d]*$", "^%-exp[%-%d]*$" }
local function snapshot_suffix(s)
  for _, pattern in ipairs(SNAPSHOT) do
    if s:find(pattern) then return true end
  end
  return false
end

function M._lookup(model)
  local o = overrides[model]
  if o ~= nil then return o or nil end
  model = platform_name(model)
  o = overrides[model]
  if o ~= nil then return o or nil end
  if SHIPPED[model] then return SHIPPED[model] end
  local best, best_len
  for _, t in ipairs { overrides, SHIPPED } do
    for name, p in pairs(t) do
      if p and #name < #model and model:sub(1, #name + 1) == name .. "-" and snapshot_suffix(model:sub(#name + 1))
          and (not best_len or #name > best_len) then
        best, best_len = p, #name
      end
    end
  end
  return best
end

--- What a call with `usage` cost on `model`, in USD; nil when the model has
--- no price.
---@param model string
---@param usage {input?:integer, output?:integer, cached?:integer, cache_write?:integer, cache_write_1h?:integer, reasoning?:integer, web_searches?:integer, file_searches?:integer, service_tier?:string}
---@return number|nil
function M.cost(model, usage)
  local p = found[model] -- (M.of, without its call for a model seen before)
  if p == nil then p = M.of(model) end
  if not p or not usage then return nil end
  local input, output = usage.input or 0, usage.output or 0
  local cached, written, reasoning = usage.cached or 0, usage.cache_write or 0, usage.reasoning or 0
  local fresh = math.max(0, input - cached - written)
  local hour = math.min(written, usage.cache_write_1h or 0)
  local base = p
  local long = p.long_context
  local tiers, tier = p.service_tiers, usage.service_tier
  local served = tiers and tier and tiers[tier]
  if served then
    p = served
  elseif long and input > long.above then
    p = long
  end
  -- a tier's missing cache prices: the base ones at the tier's input price
  local scale = base.input > 0 and p.input / base.input or 1
  local read_price = p.cached or (base.cached or base.input) * scale
  local write_price = p.cache_write or (base.cache_write or base.input) * scale
  local hour_price = p.cache_write_1h or (base.cache_write_1h and base.cache_write_1h * scale) or write_price
  local usd = fresh * p.input + cached * read_price + (written - hour) * write_price + hour * hour_price
    + output * p.output
  local reasoning_price = p.reasoning or base.reasoning and base.reasoning * (base.output > 0 and p.output / base.output or 1)
  if reasoning_price then usd = usd + reasoning * (reasoning_price - p.output) end
  usd = usd / 1e6
  local searches, files = usage.web_searches, usage.file_searches
  if searches and base.web_search then usd = usd + searches * base.web_search / 1000 end
  if files and base.file_search then usd = usd + files * base.file_search / 1000 end
  return usd
end

return M
