--- tide.integrations.mcp_resources: what an MCP server offers besides its
--- tools, its resources and its prompts (MCP 2025-11-25, "Resources" and
--- "Prompts"), for Lua code (src:resources(), src:resource_templates(),
--- src:read(uri), src:subscribe(uri), src:unsubscribe(uri), src:prompts(),
--- src:prompt(name, args)) and, for a source
--- made with `resources = true`, for the model: two tools in the server's
--- toolkit, `list_resources` and `read_resource`, as the Claude Agent SDK
--- gives its agents the resources of their MCP servers.
---
--- Lists are followed through `nextCursor`. A server that does not declare
--- the capability is not asked (it would answer "Method not found"): the
--- call fails with ProviderError saying so.
local core = require "tide.core"
local json = require "tide.json"

local M = {}

-- The most resources list_resources shows the model (the rest are counted).
M.MAX_LISTED = 200

local function fail(code, message, fields)
  return nil, core.error(code, message, fields)
end

local function str(v) return type(v) == "string" and v or nil end

-- The live connection, when the server declares `capability`.
local function connection(src, capability)
  local conn, err = src:_connection()
  if not conn then return nil, err end
  local caps = conn.capabilities
  if type(caps) ~= "table" or type(caps[capability]) ~= "table" then
    return fail("ProviderError", ("MCP server '%s' declares no '%s' capability"):format(src.name, capability))
  end
  return conn
end

-- Every page of `method`: the entries under `key` (tables only).
local function all_pages(src, capability, method, key)
  local conn, err = connection(src, capability)
  if not conn then return nil, err end
  local out = {}
  local ok, perr = require("tide.integrations.mcp")._each_page(src, conn, method, key, function(res)
    if type(res) ~= "table" or type(res[key]) ~= "table" then
      return ("MCP server '%s' answered %s without a '%s' array"):format(src.name, method, key)
    end
    for _, x in ipairs(res[key]) do
      if type(x) == "table" then out[#out + 1] = x end
    end
  end)
  if not ok then return nil, perr end
  return out
end

--- The server's resources (every page): `{ uri, name, title, description,
--- mime, size }` each; or nil and an error.
---@param src tide.integrations.mcp
---@return {uri: string, name: string, title?: string, description?: string, mime?: string, size?: number}[]|nil
---@return table|nil err
function M.resources(src)
  local list, err = all_pages(src, "resources", "resources/list", "resources")
  if not list then return nil, err end
  local out = {}
  for _, r in ipairs(list) do
    if type(r.uri) == "string" then
      out[#out + 1] = { uri = r.uri, name = str(r.name) or r.uri, title = str(r.title), description = str(r.description),
        mime = str(r.mimeType), size = math.type(r.size) and r.size or nil }
    end
  end
  return out
end

--- The server's resource templates (RFC 6570 URI templates): `{
--- uri_template, name, title, description, mime }` each.
---@param src tide.integrations.mcp
---@return table[]|nil
---@return table|nil err
function M.resource_templates(src)
  local list, err = all_pages(src, "resources", "resources/templates/list", "resourceTemplates")
  if not list then return nil, err end
  local out = {}
  for _, r in ipairs(list) do
    if type(r.uriTemplate) == "string" then
      out[#out + 1] = { uri_template = r.uriTemplate, name = str(r.name) or r.uriTemplate, title = str(r.title),
        description = str(r.description), mime = str(r.mimeType) }
    end
  end
  return out
end

--- The contents of resource `uri`: `{ uri, mime, text }` or `{ uri, mime,
--- data }` (a blob, its bytes base64 as the server sent them) each; or nil
--- and an error (ProviderError with the server's own, e.g. -32002
--- "Resource not found").
---@param src tide.integrations.mcp
---@param uri string
---@return {uri: string, mime?: string, text?: string, data?: string}[]|nil
---@return table|nil err
function M.read(src, uri)
  local conn, err = connection(src, "resources")
  if not conn then return nil, err end
  local res, rerr = conn:request("resources/read", { uri = uri }, src.timeout_ms)
  if not res then return nil, rerr end
  if type(res) ~= "table" or type(res.contents) ~= "table" then
    return fail("MalformedResponse", ("MCP server '%s' answered resources/read without 'contents'"):format(src.name))
  end
  local out = {}
  for _, c in ipairs(res.contents) do
    if type(c) == "table" and (type(c.text) == "string" or type(c.blob) == "string") then
      out[#out + 1] = { uri = str(c.uri) or uri, mime = str(c.mimeType), text = str(c.text),
        data = type(c.text) ~= "string" and c.blob or nil }
    end
  end
  return out
end

--- Asks the server to tell of changes to resource `uri` (`resources/
--- subscribe`), or to stop (`unsubscribe`); each change reaches the
--- source's `on_resource_updated(uri)`. True, or nil and an error
--- (ProviderError when the server offers no subscriptions).
---@param src tide.integrations.mcp
---@param uri string
---@param stop? boolean
---@return true|nil
---@return table|nil err
function M.subscribe(src, uri, stop)
  local conn, err = connection(src, "resources")
  if not conn then return nil, err end
  if conn.capabilities.resources.subscribe ~= true then
    return fail("ProviderError", ("MCP server '%s' offers no resource subscriptions"):format(src.name))
  end
  local res, serr = conn:request(stop and "resources/unsubscribe" or "resources/subscribe", { uri = uri }, src.timeout_ms)
  if res == nil then return nil, serr end
  return true
end

--- The server's prompts (every page): `{ name, title, description,
--- arguments = { { name, description, required } } }` each.
---@param src tide.integrations.mcp
---@return table[]|nil
---@return table|nil err
function M.prompts(src)
  local list, err = all_pages(src, "prompts", "prompts/list", "prompts")
  if not list then return nil, err end
  local out = {}
  for _, p in ipairs(list) do
    if type(p.name) == "string" then
      local args = {}
      for _, a in ipairs(type(p.arguments) == "table" and p.arguments or {}) do
        if type(a) == "table" and type(a.name) == "string" then
          args[#args + 1] = { name = a.name, description = str(a.description), required = a.required == true }
        end
      end
      out[#out + 1] = { name = p.name, title = str(p.title), description = str(p.description), arguments = args }
    end
  end
  return out
end

-- One content block of a prompt's message, as turn input: text as a
-- string, an image as a tide.image part, an embedded resource as its text
-- (a PDF as a tide.file part), anything else as a line saying what it is.
local function content_of(b)
  local content = require "tide.content"
  if type(b) ~= "table" then return "" end
  if b.type == "text" then return str(b.text) or "" end
  if b.type == "image" and type(b.data) == "string" and type(b.mimeType) == "string" then
    local ok, part = pcall(content.image, { url = ("data:%s;base64,%s"):format(b.mimeType, b.data) })
    if ok then return part end
    return ("[image: %s]"):format(b.mimeType)
  end
  if b.type == "resource" and type(b.resource) == "table" then
    local r = b.resource
    if type(r.text) == "string" then return r.text end
    if r.mimeType == "application/pdf" and type(r.blob) == "string" then
      local bytes = core.base64_decode(r.blob)
      if bytes then
        return content.file { data = bytes, mime = "application/pdf", name = tostring(r.uri):match("[^/]+$") }
      end
    end
    return ("[resource: %s]"):format(tostring(r.uri))
  end
  if b.type == "resource_link" then return ("[resource: %s]"):format(tostring(b.uri)) end
  return ("[%s]"):format(tostring(b.type))
end

--- `args` checked as prompts/get takes them (names to strings): a copy;
--- raises naming what is wrong, at the caller of the caller.
---@param name any
---@param args any
---@return table<string, string>
function M.prompt_args(name, args)
  if type(name) ~= "string" or name == "" then
    error("bad argument #1 to 'prompt' (a prompt name expected)", 3)
  end
  if args ~= nil and type(args) ~= "table" then error("bad argument #2 to 'prompt' (table expected)", 3) end
  local sent = {}
  for k, v in pairs(args or {}) do
    if type(k) ~= "string" or type(v) ~= "string" then
      error(("bad argument #2 to 'prompt' (argument '%s' must be a string, got %s)"):format(tostring(k), type(v)), 3)
    end
    sent[k] = v
  end
  return sent
end

--- Prompt `name` filled with `args` (see prompt_args): `{ description,
--- messages = { { role, content } } }`, each content a string or a
--- tide.image / tide.file part, so that a user message goes to s:turn()
--- as it is; nil and an error for what the server refuses (a missing
--- required argument, an unknown prompt: ProviderError with its words).
---@param src tide.integrations.mcp
---@param name string
---@param args table<string, string>
---@return {description?: string, messages: {role: string, content: string|table}[]}|nil
---@return table|nil err
function M.prompt(src, name, args)
  local conn, err = connection(src, "prompts")
  if not conn then return nil, err end
  local res, perr = conn:request("prompts/get", { name = name, arguments = args }, src.timeout_ms)
  if not res then return nil, perr end
  if type(res) ~= "table" or type(res.messages) ~= "table" then
    return fail("MalformedResponse", ("MCP server '%s' answered prompts/get without 'messages'"):format(src.name))
  end
  local messages = {}
  for _, m in ipairs(res.messages) do
    if type(m) == "table" and (m.role == "user" or m.role == "assistant") then
      messages[#messages + 1] = { role = m.role, content = content_of(m.content) }
    end
  end
  return { description = str(res.description), messages = messages }
end

-- ------------------------------------------------------ for the model --

--- The model's two tools for a server that declares resources, as
--- toolkit entries; none where the server has a tool of the same name.
---@param src tide.integrations.mcp
---@param taken table<string, boolean> the server's own tool names
---@return table[]
function M.tool_entries(src, taken)
  local out = {}
  if not taken.list_resources then
    out[#out + 1] = { name = "list_resources", mcp_resources = true,
      description = ("Lists the resources the MCP server %s offers (documents, files, records): each one's URI, name, "
        .. "type and description, and the URI templates it answers. Read one with read_resource."):format(src.name),
      parameters = { type = "object", properties = {} } }
  end
  if not taken.read_resource then
    out[#out + 1] = { name = "read_resource", mcp_resources = true,
      description = ("Reads one resource of the MCP server %s by its URI (from list_resources, a template, "
        .. "or a resource link a tool gave)."):format(src.name),
      parameters = { type = "object", properties = { uri = { type = "string", description = "The resource's URI." } },
        required = { "uri" } } }
  end
  return out
end

local function list_text(src)
  local list, err = M.resources(src)
  if not list then return nil, err end
  local lines = {}
  for i, r in ipairs(list) do
    if i > M.MAX_LISTED then
      lines[#lines + 1] = ("(%d more resources not shown)"):format(#list - M.MAX_LISTED)
      break
    end
    local line = r.uri .. " - " .. (r.title or r.name)
    if r.mime then line = line .. " (" .. r.mime .. ")" end
    if r.description then line = line .. ": " .. r.description end
    lines[#lines + 1] = line
  end
  if #list == 0 then lines[1] = "No resources are listed." end
  local templates = M.resource_templates(src) -- (optional: a server may list none)
  if templates and #templates > 0 then
    lines[#lines + 1] = "URI templates (fill in the {names} to read one):"
    for _, t in ipairs(templates) do
      local line = t.uri_template .. " - " .. (t.title or t.name)
      if t.description then line = line .. ": " .. t.description end
      lines[#lines + 1] = line
    end
  end
  return table.concat(lines, "\n")
end

local function textual(mime)
  return type(mime) == "string" and (mime:match("^text/") or mime:match("[/+]json$") or mime:match("[/+]xml$")) ~= nil
end

local IMAGE = { ["image/png"] = true, ["image/jpeg"] = true, ["image/gif"] = true, ["image/webp"] = true }

-- A resource's contents for the model: text as text; an image or a PDF as
-- a part it sees; another blob as a line that says what it is.
local function read_result(src, uri)
  local contents, err = M.read(src, uri)
  if not contents then return nil, err end
  local out, seen = {}, false
  for _, c in ipairs(contents) do
    if c.text then
      out[#out + 1] = c.text
    elseif IMAGE[c.mime] then
      out[#out + 1] = { type = "image", mime = c.mime, data = c.data }
      seen = true
    elseif c.mime == "application/pdf" then
      out[#out + 1] = { type = "file", mime = "application/pdf", data = c.data, name = c.uri:match("[^/]+$") or "document.pdf" }
      seen = true
    else
      -- a blob of text (text/*, JSON) is read as text when it is UTF-8
      local bytes = textual(c.mime) and core.base64_decode(c.data)
      if bytes and utf8.len(bytes) then
        out[#out + 1] = bytes
      else
        out[#out + 1] = ("[binary resource %s: %s, %d bytes of base64]"):format(c.uri, c.mime or "no type", #c.data)
      end
    end
  end
  if #out == 0 then return "The resource is empty." end
  if not seen then return table.concat(out, "\n") end
  return out
end

--- Runs one of the model's resource tools: its result, or nil and a
--- ToolError.
---@param src tide.integrations.mcp
---@param action "list_resources"|"read_resource"
---@param args table|string|nil
---@return string|table|nil
---@return table|nil err
function M.execute(src, action, args)
  if type(args) == "string" then args = json.decode(args ~= "" and args or "{}") end
  local r, err
  if action == "list_resources" then
    r, err = list_text(src)
  else
    local uri = type(args) == "table" and args.uri
    if type(uri) ~= "string" or uri == "" then return fail("ToolError", "read_resource needs 'uri', a string") end
    r, err = read_result(src, uri)
  end
  if r == nil then
    return fail("ToolError", ("MCP server '%s': %s"):format(src.name, err and err.message or "failed"), { cause = err })
  end
  return r
end

return M
