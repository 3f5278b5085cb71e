--- tide.budget: one budget for a whole agent tree.
---
--- The root turn creates it from `tide.session{ budget = {...} }`; sub-agent
--- turns find it in their task-local context and spend from the same one.
--- Spending past a limit raises BudgetExhausted, so that the whole tree
--- unwinds to the root turn, which returns it with a per-agent summary.
---@class tide.budget
local M = {}

local core = require "tide.core"

local hrtime = core.hrtime
local function ms_since(t0) return (hrtime() - t0) / 1e6 end

local budget_mt = { __name = "tide.budget" }
budget_mt.__index = budget_mt

--- A budget for one root turn and all its descendants.
---@param limits {provider_calls?:integer, tokens?:integer, tool_calls?:integer, wall_ms?:integer}
function M.new(limits)
  return setmetatable({
    limits = limits,
    used = { provider_calls = 0, tokens = 0, tool_calls = 0, usd = 0 },
    agents = {},
    started = hrtime(),
  }, budget_mt)
end

function budget_mt:agent(path)
  local a = self.agents[path]
  if not a then
    a = { provider_calls = 0, input_tokens = 0, output_tokens = 0, tool_calls = 0, usd = 0 }
    self.agents[path] = a
  end
  return a
end

function budget_mt:summary()
  local lines = {}
  local paths = {}
  for p in pairs(self.agents) do paths[#paths + 1] = p end
  table.sort(paths)
  for _, p in ipairs(paths) do
    local a = self.agents[p]
    lines[#lines + 1] = ("%s: %d provider calls, %d+%d tokens, %d tool calls, $%.4f"):format(
      p, a.provider_calls, a.input_tokens, a.output_tokens, a.tool_calls, a.usd)
  end
  return table.concat(lines, "\n")
end

function budget_mt:exhausted_error(what)
  if not self.exhausted then
    local l = self.limits
    self.exhausted = core.error("BudgetExhausted",
      ("the agent tree's %s budget (%s) is spent"):format(what, tostring(l[what])),
      { what = what, used = self.used, agents = self.agents, summary = self:summary() })
    -- The root turn stops now (tide.turn sets `on_exhausted`), not when
    -- every other call of its round has ended: a sibling tool may run
    -- for minutes.
    if self.on_exhausted then self.on_exhausted() end
  end
  return self.exhausted
end

--- The kind of budget with nothing left for another provider call: tokens
--- or dollars used up to the limit exactly (past it, the budget is already
--- exhausted); nil when there is room.
---@return string|nil what
function budget_mt:used_up()
  local l, u = self.limits, self.used
  if l.tokens and u.tokens >= l.tokens then return "tokens" end
  if l.usd and u.usd >= l.usd then return "usd" end
  return nil
end

-- Raises BudgetExhausted when `what` has reached its limit (so that the whole
-- tree unwinds), otherwise counts one more.
function budget_mt:spend(what, n, path)
  if self.exhausted then error(self.exhausted, 0) end
  if what == "provider_calls" then
    local spent = self:used_up()
    if spent then error(self:exhausted_error(spent), 0) end
  end
  local limit = self.limits[what]
  if limit and self.used[what] + (n or 1) > limit then error(self:exhausted_error(what), 0) end
  local w = self.limits.wall_ms
  if w and ms_since(self.started) > w then error(self:exhausted_error("wall_ms"), 0) end
  self.used[what] = self.used[what] + (n or 1)
  local a = self:agent(path)
  a[what] = (a[what] or 0) + (n or 1)
end

--- Counts a response's tokens (and its cost in USD, when the model has a
--- price) against the tree: past a limit, the budget is exhausted (the
--- response that spent it is still taken; the turn then stops). A response
--- that uses the budget up exactly is within it: its answer stands, and
--- no further provider call starts (used_up).
function budget_mt:tokens(input, output, path, usd)
  self.used.tokens = self.used.tokens + input + output
  local a = self:agent(path)
  a.input_tokens = a.input_tokens + input
  a.output_tokens = a.output_tokens + output
  if usd then
    self.used.usd = self.used.usd + usd
    a.usd = a.usd + usd
  end
  local limit = self.limits.tokens
  if limit and self.used.tokens > limit then self:exhausted_error("tokens") end
  local cap = self.limits.usd
  if cap and self.used.usd > cap then self:exhausted_error("usd") end
end

return M
