--- tide.provider.fallback: the next provider once the first has spent its
--- retries on a rate limit, a server error, a timeout or a connection that
--- failed.
---
--- `tide.provider.fallback{ p1, p2, ... }` is a provider: sessions encode
--- their prefix and messages with p1's encoders (its frozen prefix, its
--- prompt cache), and only when p1 fails for one of those reasons is the
--- request made again for p2 (then p3...), encoded anew for it from the
--- neutral conversation: p2 may speak another wire format, another model.
--- The reply says which provider answered (`reply.fallback`), the session
--- counts it (`stats().fallbacks`) and tells the event sink.
local core = require "tide.core"

local M = {}

local Fallback = {}
Fallback.__index = function(self, k)
  local v = rawget(Fallback, k)
  if v ~= nil then return v end
  return self.providers[1][k] -- kind, model, encoders: the first provider's
end
Fallback.__name = "tide.provider.fallback"

-- The failures the next provider is tried for.
local function moves_on(err)
  local c = err and err.code
  if c == "RateLimited" or c == "Timeout" or c == "ConnectFailed" or c == "ConnectionClosed"
    or c == "ResolveFailed" or c == "TLSFailed" then return true end
  return c == "ProviderError" and type(err.status) == "number" and err.status >= 500
end

local function label(p) return ("%s:%s"):format(p.kind, tostring(p.model)) end

-- The messages as `p` can send them: a remote MCP server's calls (and
-- their decisions, see tide.provider.responses) are the Responses API's
-- own; to any other provider they would be calls of tools it never offered.
-- A message left with nothing to send goes.
local function portable(p, messages)
  if p._server_calls then return messages end
  local out = {}
  for _, m in ipairs(messages) do
    local field = m.role == "assistant" and "tool_calls" or m.role == "tool" and "results" or nil
    local list = field and m[field] or {}
    local kept = {}
    for _, x in ipairs(list) do
      if x.server == nil and x.approve == nil then kept[#kept + 1] = x end
    end
    if #kept < #list then
      local copy = {}
      for k, v in pairs(m) do copy[k] = v end
      copy[field] = #kept > 0 and kept or nil
      -- (nothing left: a tool message goes, and an assistant one without text)
      m = (#kept > 0 or (field == "tool_calls" and (m.content or "") ~= "")) and copy or nil
    end
    if m then out[#out + 1] = m end
  end
  return out
end

--- Sends the request to the first provider, then to the next ones in turn
--- while each fails for a reason worth moving on (opts.conversation, given
--- by the turn, lets them encode the request anew, the turn's schema
--- included).
function Fallback:_complete(prefix, opts, wire)
  local first = self.providers[1]
  local resp, err = first:_complete(prefix, opts, wire)
  if resp or not moves_on(err) then return resp, err end
  local conv = opts.conversation
  if not conv then return nil, err end
  for i = 2, #self.providers do
    local p = self.providers[i]
    local encoded, messages = {}, portable(p, conv.messages)
    for j, m in ipairs(messages) do encoded[j] = p:encode_message(m, messages[j - 1]) end
    -- (a turn's schema goes in the prefix of a provider that takes one,
    -- as the session's own prefix does for the first)
    local schema = p._native_schema and conv.schema or nil
    local r, e = p:_complete(p:encode_prefix(conv.system, conv.specs, schema), opts, encoded)
    if r then
      r.fallback = { from = label(first), to = label(p), error = err.code }
      r.model = r.model or p.model
      return r
    end
    if not moves_on(e) then return nil, e end
    err = e
  end
  return nil, err
end

--- As complete for a provider: the body is the first provider's.
function Fallback:complete(body, opts)
  return self.providers[1]:complete(body, opts)
end

Fallback._fallback = true

--- Makes the fallback provider (misuse: a message).
function M.new(list)
  if type(list) ~= "table" or #list < 2 then
    return nil, "tide.provider.fallback: give a list of at least two providers"
  end
  local base = require "tide.provider.base"
  for i, p in ipairs(list) do
    local mt = getmetatable(p)
    if type(p) ~= "table" or type(mt) ~= "table" or type(mt.__index) ~= "table"
      or mt.__index.complete ~= base.Base.complete then
      return nil, ("tide.provider.fallback: [%d] is not a provider"):format(i)
    end
  end
  for k in pairs(list) do
    if math.type(k) ~= "integer" then return nil, ("tide.provider.fallback: unknown option '%s'"):format(tostring(k)) end
  end
  return setmetatable({ providers = list }, Fallback)
end

M.moves_on = moves_on
return M
