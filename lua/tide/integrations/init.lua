--- tide.integrations: where connected toolkits come from.
---
--- A *source* is any table with a `kind`, an `identity()` (the cache key) and
--- a `fetch()`; tide ships `static`, `composio` and `mcp`, and authors can write
--- their own in Lua. Sessions never call `fetch()` themselves: they go through
--- the shared cache (`tide.integrations.cache`), which fetches once per key
--- and TTL however many sessions ask.
---@class tide.integrations
local integrations = {}

---@class tide.integrations.source
---@field kind string a short name of the source type ("static", "composio", ...)
local source = {}

--- The cache key: kind + endpoint + user (+ whatever else changes what
--- `fetch` returns). Two sources with the same identity share a snapshot.
---@return string
function source:identity() end

--- Fetches the toolkits. Runs inside a task and may wait (HTTP, sleep).
--- Returns an array of toolkits `{ slug, description, connected, tools,
--- gated_tools }` (any order: the cache sorts and normalises it), or
--- `nil, err` on failure. Raising counts as failure too.
---@return tide.integrations.toolkit[]|nil toolkits
---@return table|string|nil err
function source:fetch() end
source = nil -- documentation only

--- A source serving fixed toolkits (see `tide.integrations.static`).
---@param opts {toolkits: table, id?: string, delay_ms?: integer, fail?: boolean|string|table}
---@return tide.integrations.static
function integrations.static(opts)
  return require("tide.integrations.static").new(opts)
end

--- A source backed by the Composio v3 REST API (see
--- `tide.integrations.composio`).
---@param opts table
---@return tide.integrations.composio
function integrations.composio(opts)
  return require("tide.integrations.composio").new(opts)
end

--- A source serving the tools of one MCP server (stdio `command` or
--- Streamable HTTP `url`) as one toolkit (see `tide.integrations.mcp`).
---@param opts table
---@return tide.integrations.mcp
function integrations.mcp(opts)
  local src = require("tide.integrations.mcp").new(opts) -- (no tail call: its errors name the caller's line)
  return src
end

--- True when `v` looks like an integration source.
---@param v any
---@return boolean
function integrations.is_source(v)
  return type(v) == "table" and type(v.identity) == "function" and type(v.fetch) == "function"
end

setmetatable(integrations, {
  __index = function(t, k)
    if k == "cache" then
      local v = require "tide.integrations.cache"
      rawset(t, k, v)
      return v
    end
  end,
})

return integrations
