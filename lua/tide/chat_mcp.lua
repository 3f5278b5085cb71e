--- tide.chat_mcp: the chat's MCP servers (`tide chat --mcp NAME=COMMAND`
--- or `--mcp NAME=URL`), whose requests of the person at the terminal are
--- asked there: a form or a URL the server wants (elicitation), the model
--- call it wants to make through the chat's provider (sampling), and the
--- directory the chat runs in as its root.
---
--- The prompts read the terminal while the turn that led to them waits:
--- the chat's own loop reads nothing then, so the two never compete.
local M = {}

--- A `--mcp` value as the options of tide.integrations.mcp: `NAME=URL`
--- (http or https: Streamable HTTP) or `NAME=COMMAND ARGS...` (stdio, split
--- on white space). Raises a message for a value that is neither.
---@param spec string
---@return table
function M.parse(spec)
  local name, rest = spec:match("^([%w_-]+)=(.+)$")
  if not name then error("tide chat: --mcp takes NAME=COMMAND or NAME=URL, got " .. spec, 0) end
  if rest:match("^https?://") then return { name = name, url = rest } end
  local argv = {}
  for a in rest:gmatch("%S+") do argv[#argv + 1] = a end
  return { name = name, command = argv }
end

-- One line typed at the terminal, trimmed (tide.chat's; loaded with it).
local function ask(out, prompt) return require("tide.chat").ask(out, prompt) end

-- A typed answer as the property's type wants it, or nil and why not.
local function value_of(text, prop)
  local ty = prop.type
  if ty == "boolean" then
    if text == "y" or text == "yes" or text == "true" then return true end
    if text == "n" or text == "no" or text == "false" then return false end
    return nil, "y or n"
  elseif ty == "integer" or ty == "number" then
    local n = tonumber(text)
    if n == nil or (ty == "integer" and math.type(n) ~= "integer") then
      return nil, ty == "integer" and "an integer" or "a number"
    end
    return n
  elseif ty == "array" then
    local list = {}
    for item in text:gmatch("[^,]+") do list[#list + 1] = item:match("^%s*(.-)%s*$") end
    return list
  end
  return text
end

-- The choices a property offers (an enum, titled consts, an array's items'), shown beside it.
local function choices_of(prop)
  local items = prop.type == "array" and type(prop.items) == "table" and prop.items or prop
  local list = {}
  for _, v in ipairs(type(items.enum) == "table" and items.enum or {}) do list[#list + 1] = tostring(v) end
  for _, alt in ipairs(type(items.oneOf) == "table" and items.oneOf or type(items.anyOf) == "table" and items.anyOf or {}) do
    if type(alt) == "table" and alt.const ~= nil then
      list[#list + 1] = tostring(alt.const) .. (alt.title and (" (" .. tostring(alt.title) .. ")") or "")
    end
  end
  return #list > 0 and (" [" .. table.concat(list, ", ") .. "]") or ""
end

--- The function a source's `elicit` is: a form asked field by field (the
--- required ones first, then by name; empty for a field's default, or to
--- leave an optional one out; /decline or /cancel at any prompt), a URL
--- shown and its opening confirmed.
---@param out file*
---@param server string
---@return fun(request:table, errors?:string[]):string, table?
function M.elicit(out, server)
  return function(request, errors)
    out:write(("\n  [%s asks] %s\n"):format(server, request.message))
    for _, e in ipairs(errors or {}) do out:write("    not taken: ", e, "\n") end
    if request.mode == "url" then
      local a = ask(out, ("    open %s\n    opened it? [y]es, [n]o, [c]ancel: "):format(request.url))
      if a == nil or a == "c" or a == "cancel" then return "cancel" end
      return (a == "y" or a == "yes") and "accept" or "decline"
    end
    local props, required = request.schema.properties, {}
    for _, k in ipairs(type(request.schema.required) == "table" and request.schema.required or {}) do required[k] = true end
    local names = {}
    for k in pairs(props) do names[#names + 1] = k end
    table.sort(names, function(a, b)
      if (required[a] or false) ~= (required[b] or false) then return required[a] == true end
      return a < b
    end)
    local content = {}
    for _, k in ipairs(names) do
      local prop = props[k]
      while true do
        local label = type(prop.title) == "string" and prop.title or k
        local hint = type(prop.description) == "string" and (" (" .. prop.description .. ")") or ""
        local default = prop.default ~= nil and type(prop.default) ~= "table" and (" default " .. tostring(prop.default)) or ""
        local a = ask(out, ("    %s%s%s%s%s: "):format(label, hint, choices_of(prop), default, required[k] and " *" or ""))
        if a == nil or a == "/cancel" then return "cancel" end
        if a == "/decline" then return "decline" end
        if a == "" then
          if prop.default ~= nil then content[k] = prop.default end
          break
        end
        local v, want = value_of(a, prop)
        if v ~= nil then
          content[k] = v
          break
        end
        out:write("    (", want, ", please)\n")
      end
    end
    return "accept", content
  end
end

--- The `approve` of a source's sampling: the person sees what the server
--- would have the model read and allows it or not.
---@param out file*
---@param server string
---@return fun(params:table):boolean, string?
function M.approve_sampling(out, server)
  return function(params)
    local last = params.messages[#params.messages]
    local c = last and last.content
    local text = type(c) == "table" and (c.text or (c[1] and c[1].text)) or "(no text)"
    if #text > 200 then text = text:sub(1, 197) .. "..." end
    local a = ask(out, ("\n  [%s asks the model, at most %s tokens] %s\n    allow? [y/N]: "):format(server,
      tostring(params.maxTokens), text))
    if a == "y" or a == "yes" then return true end
    return false, "not allowed at the terminal"
  end
end

--- The source for one parsed `--mcp` value, served at the terminal.
---@param spec table from parse
---@param provider table the chat's provider (what sampling calls)
---@param out file*
---@return table source
function M.source(spec, provider, out)
  local opts = { name = spec.name, command = spec.command, url = spec.url,
    elicit = M.elicit(out, spec.name),
    sampling = { provider = provider, approve = M.approve_sampling(out, spec.name) } }
  local cwd = os.getenv("PWD")
  if cwd and cwd:sub(1, 1) == "/" then opts.roots = { cwd } end
  return require("tide").integrations.mcp(opts)
end

return M
