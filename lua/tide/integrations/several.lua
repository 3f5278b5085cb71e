--- tide.integrations.several: several sources as one, for a session built
--- with `integrations = { composio, files, remote }`.
---
--- Each source keeps its own cache entry (its TTL, its single-flight, its
--- invalidation: an MCP server's list_changed drops its entry alone); the
--- session sees their toolkits together, one `delegate_<slug>` each, and an
--- action runs on the source it came from. `tide.integrations.cache`
--- combines the parts' snapshots (peek: only when every part is warm; get:
--- fetching the cold ones) into one snapshot, the same table while the
--- parts do not change, so that sessions still share surfaces.
---@class tide.integrations.several
local M = {}

local Several = {}
Several.__index = Several

--- A source made of `list` (each a source). Misuse raises at `level`.
function M.new(list, level)
  level = (level or 1) + 1
  if type(list) ~= "table" or #list == 0 then error("integrations: a list of sources must not be empty", level) end
  local ids = {}
  for i, src in ipairs(list) do
    if type(src) ~= "table" or type(src.identity) ~= "function" or type(src.fetch) ~= "function" then
      error(("integrations[%d] must be an integration source (identity() and fetch())"):format(i), level)
    end
    ids[i] = src:identity()
  end
  return setmetatable({ kind = "several", parts = list, id = "several|" .. table.concat(ids, "|") }, Several)
end

function Several:identity() return self.id end

--- Never called by sessions (the cache combines the parts); fetches every
--- part through the cache, for code that calls fetch() itself.
function Several:fetch()
  local snap, err = require("tide.integrations.cache").get(self)
  if not snap then return nil, err end
  return snap.toolkits
end

-- The part whose snapshot holds toolkit `slug` or action `action`.
local function owner(self, action)
  local cache = require "tide.integrations.cache"
  for _, src in ipairs(self.parts) do
    local snap = cache.peek(src)
    for _, tk in ipairs(snap and snap.toolkits or {}) do
      for _, a in ipairs(tk.tools or {}) do
        if a.name == action then return src end
      end
    end
  end
  return nil
end

--- Runs `action` on the source whose toolkit has it.
function Several:execute(action, args, ctx)
  local src = owner(self, action)
  if not src then return nil, require("tide.core").error("ToolError", ("no source has action '%s'"):format(action)) end
  if type(src.execute) ~= "function" then
    return nil, require("tide.core").error("ToolError", "this integration source cannot execute actions")
  end
  return src:execute(action, args, ctx)
end

--- The approval rule of the source that owns `action`.
function Several:rule_for(action)
  local src = owner(self, action)
  return src and src.approval
end

--- Closes the parts that can be closed.
function Several:close()
  for _, src in ipairs(self.parts) do
    if type(src.close) == "function" then src:close() end
  end
end

return M
