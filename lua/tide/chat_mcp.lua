--- tide.chat_mcp: the chat's MCP servers (`tide chat --mcp NAME=COMMAND`
--- or `--mcp NAME=URL`), whose requests of the person at the terminal are
--- asked there: a form or a URL the server wants (elicitation), the model
--- call it wants to make through the chat's provider (sampling), and the
--- directory the chat runs in as its root. The model reads the servers'
--- resources (list_resources, read_resource); the person lists their
--- prompts with /mcp and sends one with /use.
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

-- The words of a /use line after its prompt: NAME=VALUE each, a value in
-- double quotes when it holds spaces; nil and what is wrong.
local function arguments_of(text)
  local args, rest = {}, text
  while true do
    rest = rest:match("^%s*(.-)$")
    if rest == "" then return args end
    local k, v, after = rest:match('^([%w_.-]+)="([^"]*)"(.*)$')
    if not k then k, v, after = rest:match("^([%w_.-]+)=(%S*)(.*)$") end
    if not k then return nil, ("expected NAME=VALUE, got %s"):format(rest:match("^%S+")) end
    args[k], rest = v, after
  end
end

--- /mcp: each server's prompts (what /use sends) and how many resources
--- the model can read.
---@param out file*
---@param servers table[] the chat's MCP sources
function M.list(out, servers)
  if #servers == 0 then
    out:write("  no MCP servers: start the chat with --mcp NAME=COMMAND or --mcp NAME=URL\n")
    return
  end
  for _, src in ipairs(servers) do
    local prompts, perr = src:prompts()
    local resources = src:resources()
    out:write(("  %s: %s\n"):format(src.name,
      resources and ("%d resources (the model reads them with read_resource)"):format(#resources) or "no resources"))
    for _, p in ipairs(prompts or {}) do
      local args = {}
      for _, a in ipairs(p.arguments) do args[#args + 1] = a.name .. (a.required and "*" or "") end
      out:write(("    /use %s:%s %s%s\n"):format(src.name, p.name, table.concat(args, " "),
        p.description and ("  - " .. p.description) or ""))
    end
    if not prompts then out:write("    (no prompts: ", perr.message, ")\n") end
  end
end

--- /use SERVER:PROMPT NAME=VALUE...: the prompt filled in by its server,
--- as the input of one turn (its user messages, text and parts in order);
--- or nil and what went wrong, for the terminal.
---@param line string
---@param servers table[]
---@return table|nil input
---@return string|nil why
function M.use(line, servers)
  local server, name, rest = line:match("^/use%s+([%w_-]+):(%S+)(.*)$")
  if not server then return nil, "usage: /use SERVER:PROMPT NAME=VALUE ... (/mcp lists them)" end
  local src
  for _, m in ipairs(servers) do if m.name == server then src = m end end
  if not src then return nil, ("no MCP server '%s' in this chat"):format(server) end
  local args, why = arguments_of(rest)
  if not args then return nil, why end
  local p, err = src:prompt(name, args)
  if not p then return nil, err.message end
  local input, skipped = {}, 0
  for _, m in ipairs(p.messages) do
    if m.role == "user" then input[#input + 1] = m.content else skipped = skipped + 1 end
  end
  if #input == 0 then return nil, ("prompt %s:%s has no user message to send"):format(server, name) end
  if #input == 1 and type(input[1]) == "string" then input = input[1] end -- (text goes as text)
  return input, skipped > 0 and ("(%d assistant message(s) of the prompt not sent: a turn is what the user says)")
    :format(skipped) or nil
end

--- The `authorize` of a remote server's OAuth: the person opens the URL,
--- consents, and pastes the address their browser was sent back to (it
--- holds the code; a browser on another machine works as well).
---@param out file*
---@param server string
---@return fun(url: string, redirect_uri: string): string|nil
function M.authorize(out, server)
  return function(url, redirect_uri)
    out:write(("\n  [%s wants you to sign in] open this address in a browser:\n    %s\n"):format(server, url))
    return ask(out, ("    then paste the address it sent you to (it starts with %s): "):format(redirect_uri))
  end
end

--- The source for one parsed `--mcp` value, served at the terminal.
---@param spec table from parse
---@param provider table the chat's provider (what sampling calls)
---@param out file*
---@return table source
function M.source(spec, provider, out)
  local opts = { name = spec.name, command = spec.command, url = spec.url, resources = true,
    elicit = M.elicit(out, spec.name),
    sampling = { provider = provider, approve = M.approve_sampling(out, spec.name) } }
  local cwd = os.getenv("PWD")
  if cwd and cwd:sub(1, 1) == "/" then opts.roots = { cwd } end
  -- (asked only when the server answers 401; the tokens last the chat)
  if spec.url then opts.oauth = { authorize = M.authorize(out, spec.name) } end
  return require("tide").integrations.mcp(opts)
end

return M
