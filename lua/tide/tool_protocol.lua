--- The text tool-call protocol, for models without native tool calls.
---
--- Recognised: <tool_call>{"name":..,"arguments":..}</tool_call> and the tags
--- <toolcall>, <tool-call>, <invoke> (an unclosed tag runs to the end of the
--- text), and ```tool_call fenced blocks. Bare JSON in prose is never a call:
--- text a model quotes from a web page must not be able to invoke tools.
local M = {}

local json = require "tide.json"

local TAGS = { "tool_call", "toolcall", "tool%-call", "invoke" }

local function to_call(body)
  local v = json.decode(body)
  if type(v) ~= "table" then return { malformed = "the tool call is not valid JSON", raw = body } end
  local name = v.name or v.tool
  if type(name) ~= "string" or name == "" then
    return { malformed = "the tool call has no \"name\"", raw = body }
  end
  local args = v.arguments
  if args == nil then args = v.parameters or v.input end
  if args == nil then
    args = "{}"
  elseif type(args) == "table" then
    args = json.canonical(args)
  elseif type(args) ~= "string" then
    return { malformed = "\"arguments\" must be an object", raw = body, name = name }
  end
  return { name = name, arguments = args }
end

--- Extracts the calls in `text`. Returns `calls` (each `{ name, arguments }`
--- or `{ malformed = reason, raw }`), in order of appearance, and the text
--- with the calls removed.
---@param text string
---@return table[] calls
---@return string rest
function M.parse(text)
  local found = {}
  if type(text) ~= "string" or not (text:find("<", 1, true) or text:find("```", 1, true)) then
    return found, text
  end
  local spans = {}
  for _, tag in ipairs(TAGS) do
    local pos = 1
    while true do
      local s, e = text:find("<" .. tag .. "%s*>", pos)
      if not s then break end
      local cs, ce = text:find("</" .. tag .. "%s*>", e + 1)
      local body
      if cs then
        body = text:sub(e + 1, cs - 1)
      else
        body, ce = text:sub(e + 1), #text -- unclosed: recover to the end
      end
      spans[#spans + 1] = { s = s, e = ce, body = body }
      pos = ce + 1
    end
  end
  local pos = 1
  while true do
    local s, e = text:find("```tool_call[ \t]*\n", pos)
    if not s then break end
    local cs, ce = text:find("\n```", e, true)
    local body
    if cs then body = text:sub(e + 1, cs - 1) else body, ce = text:sub(e + 1), #text end
    spans[#spans + 1] = { s = s, e = ce, body = body }
    pos = ce + 1
  end
  table.sort(spans, function(a, b) return a.s < b.s end)
  local rest, last = {}, 1
  for _, sp in ipairs(spans) do
    if sp.s >= last then
      found[#found + 1] = to_call(sp.body:match("^%s*(.-)%s*$"))
      rest[#rest + 1] = text:sub(last, sp.s - 1)
      last = sp.e + 1
    end
  end
  rest[#rest + 1] = text:sub(last)
  return found, (table.concat(rest):match("^%s*(.-)%s*$"))
end

return M
