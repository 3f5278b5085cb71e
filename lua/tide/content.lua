--- tide.content: what a user message can carry besides text. `tide.image{}`
--- and `tide.file{}` make parts; `s:turn({ "Describe this", tide.image{ path
--- = "x.png" } })` sends them. A part that names a file is read when the turn
--- starts, so a file that cannot be read fails the turn (`nil, FileError`)
--- before anything reaches the history or the transcript.
---
--- Neutral parts, as the history and transcripts keep them:
---
---     { type = "text", text = "..." }
---     { type = "image", mime = "image/png", data = "<base64>" }  -- or url = "https://..."
---     { type = "file", mime = "application/pdf", name = "a.pdf", data = "<base64>" }
---     { type = "file", mime = "text/plain", name = "a.txt", text = "..." }      -- text files stay text
---
--- Each wire format maps them to its own shape (`M.openai_chat`,
--- `M.openai_responses`, `M.anthropic`).
---@class tide.content
local M = {}

local core = require "tide.core"

--- The largest image or file read from disk or given as data (20 MiB: what
--- the providers accept inline, at most).
M.MAX_BYTES = 20 * 1024 * 1024

local part_mt = { __name = "tide.content.part" }

local IMAGE_MIMES = { ["image/png"] = true, ["image/jpeg"] = true, ["image/gif"] = true, ["image/webp"] = true }
local BY_EXTENSION = { png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg", gif = "image/gif",
  webp = "image/webp", pdf = "application/pdf", txt = "text/plain", md = "text/markdown",
  csv = "text/csv", json = "application/json" }

-- The type the bytes say they are (their magic number), or nil.
local function sniff(bytes)
  if bytes:sub(1, 8) == "\137PNG\r\n\26\n" then return "image/png" end
  if bytes:sub(1, 3) == "\255\216\255" then return "image/jpeg" end
  if bytes:sub(1, 4) == "GIF8" then return "image/gif" end
  if bytes:sub(1, 4) == "RIFF" and bytes:sub(9, 12) == "WEBP" then return "image/webp" end
  if bytes:sub(1, 5) == "%PDF-" then return "application/pdf" end
  return nil
end

-- (raised at the caller of tide.image or tide.file: `depth` 1 from them,
-- 2 from a function they call)
local function bad(fn, msg, depth) error(("tide.%s: %s"):format(fn, msg), 2 + (depth or 1)) end

local function check(fn, spec, allowed)
  if type(spec) ~= "table" then bad(fn, "expects a table of options", 2) end
  for k in pairs(spec) do
    if not allowed[k] then bad(fn, ("unknown option '%s'"):format(tostring(k)), 2) end
  end
  for k, v in pairs(spec) do
    if type(v) ~= "string" then bad(fn, ("'%s' must be a string"):format(k), 2) end
  end
end

--- An image part: `path` (read at the turn), `url` (an http(s) link, sent
--- as one; a data: URL, taken as its bytes), or `data` (the raw bytes);
--- `mime` when the bytes or extension do not say.
---@param spec {path?:string, url?:string, data?:string, mime?:string}
---@return table part
function M.image(spec)
  check("image", spec, { path = true, url = true, data = true, mime = true })
  local n = (spec.path and 1 or 0) + (spec.url and 1 or 0) + (spec.data and 1 or 0)
  if n ~= 1 then bad("image", "give exactly one of 'path', 'url' or 'data'") end
  if spec.mime and not IMAGE_MIMES[spec.mime] then
    bad("image", ("'mime' must be one of image/png, image/jpeg, image/gif, image/webp, got %s"):format(spec.mime))
  end
  local url, bytes, mime = spec.url, spec.data, spec.mime
  if url and url:match("^data:") then
    -- A data: URL is the image's bytes, and goes as bytes to every provider
    -- (Anthropic's image sources and Converse take no data URL).
    local m, b64 = url:match("^data:(image/[%w%.%+%-]+);base64,(.*)$")
    if not m then bad("image", "'url' must be a data:image/<type>;base64, URL") end
    if not IMAGE_MIMES[m] then
      bad("image", ("a data: URL's type must be one of image/png, image/jpeg, image/gif, image/webp, got %s"):format(m))
    end
    if mime and mime ~= m then bad("image", ("'mime' (%s) is not the data: URL's type (%s)"):format(mime, m)) end
    bytes = core.base64_decode(b64)
    if not bytes then bad("image", "the data: URL's bytes are not valid base64") end
    url, mime = nil, m
  elseif url and not url:match("^https?://") then
    bad("image", "'url' must be an http(s) or data: URL")
  end
  if bytes and #bytes > M.MAX_BYTES then
    bad("image", ("'data' is %d bytes, over the %d-byte limit"):format(#bytes, M.MAX_BYTES))
  end
  return setmetatable({ type = "image", path = spec.path, url = url, bytes = bytes, mime = mime }, part_mt)
end

--- A file part (a PDF, or text): `path` (read at the turn) or `data` with
--- `name`; `mime` when the bytes or extension do not say.
---@param spec {path?:string, data?:string, name?:string, mime?:string}
---@return table part
function M.file(spec)
  check("file", spec, { path = true, data = true, name = true, mime = true })
  if (spec.path == nil) == (spec.data == nil) then bad("file", "give exactly one of 'path' or 'data'") end
  if spec.data and #spec.data > M.MAX_BYTES then
    bad("file", ("'data' is %d bytes, over the %d-byte limit"):format(#spec.data, M.MAX_BYTES))
  end
  return setmetatable({ type = "file", path = spec.path, bytes = spec.data, name = spec.name or
    (spec.path and spec.path:match("[^/]+$")) or "file", mime = spec.mime }, part_mt)
end

--- True when `v` is a part made by tide.image or tide.file.
function M.is(v) return getmetatable(v) == part_mt end

-- Reads a part's file; the bytes, or nil and a FileError.
local function read(part)
  local f, err = io.open(part.path, "rb")
  if not f then
    return nil, core.error("FileError", ("cannot read %s '%s': %s"):format(part.type, part.path, err), { file = part.path })
  end
  local bytes, rerr = f:read(M.MAX_BYTES + 1)
  f:close()
  if rerr then -- (a directory opens, and fails to read)
    return nil, core.error("FileError", ("cannot read %s '%s': %s"):format(part.type, part.path, rerr), { file = part.path })
  end
  if bytes == nil or bytes == "" then
    return nil, core.error("FileError", ("%s '%s' is empty"):format(part.type, part.path), { file = part.path })
  end
  if #bytes > M.MAX_BYTES then
    return nil, core.error("FileError", ("%s '%s' is over the %d-byte limit"):format(part.type, part.path, M.MAX_BYTES),
      { file = part.path })
  end
  return bytes
end

--- The neutral content of a user message given as a list of strings and
--- parts, files read and encoded; or nil and the error (FileError for a file
--- that cannot be read, is empty, or whose type cannot be told or is not
--- taken: images are PNG, JPEG, GIF or WebP by their bytes or `mime`, files
--- PDF or UTF-8 text).
---@param list (string|table)[]
---@return table[]|nil parts
---@return table|nil err
function M.resolve(list)
  local out = {}
  for i, p in ipairs(list) do
    if type(p) == "string" then
      out[i] = { type = "text", text = p }
    elseif p.url then
      out[i] = { type = "image", url = p.url }
    else
      local bytes, err = p.bytes, nil
      if not bytes then
        bytes, err = read(p)
        if not bytes then return nil, err end
      end
      if bytes == "" then
        return nil, core.error("FileError", ("%s 'data' is empty"):format(p.type))
      end
      -- An image's type is what its bytes say (an extension says nothing of
      -- a HEIC named .jpg); a file's may come from its name's extension.
      local named = p.type == "file" and (p.path or p.name)
      local mime = p.mime or sniff(bytes) or (named and BY_EXTENSION[(named:match("%.(%w+)$") or ""):lower()])
      if not mime or (p.type == "image" and not IMAGE_MIMES[mime]) then
        return nil, core.error("FileError", ("cannot tell the type of %s '%s' (give 'mime')"):format(p.type,
          p.path or "data"), { file = p.path })
      end
      local text = p.type == "file" and (mime:match("^text/") or mime == "application/json")
      if text and not utf8.len(bytes) then
        return nil, core.error("FileError", ("file '%s' is not UTF-8 text"):format(p.path or p.name), { file = p.path })
      end
      if p.type == "file" and not text and mime ~= "application/pdf" then
        return nil, core.error("FileError", ("file '%s' is of type '%s' (PDF and text files are taken)"):format(
          p.path or p.name, mime), { file = p.path })
      end
      if text then
        -- Text stays text: readable in the transcript, and Anthropic takes it as is.
        out[i] = { type = "file", mime = mime, name = p.name, text = bytes }
      else
        out[i] = { type = p.type, mime = mime, data = core.base64(bytes), name = p.type == "file" and p.name or nil }
      end
    end
  end
  return out
end

-- ------------------------------------------------------------ tool results
--
-- A tool's result may show the model images or documents (a screenshot, a
-- chart, a PDF): its handler returns a list of strings and `tide.image{}` /
-- `tide.file{}` parts, or an MCP server's result holds image content or a
-- PDF resource. Such a result is a list of neutral parts; each wire format
-- puts the images and files where its tool results can hold them (see the
-- encoders).

-- Whether `p` is an image or file part: tide.image's or tide.file's, or a
-- neutral one.
local function attached_part(p)
  if getmetatable(p) == part_mt then return true end
  if type(p) ~= "table" then return false end
  if p.type == "image" then return type(p.data) == "string" or type(p.url) == "string" end
  return p.type == "file" and type(p.mime) == "string" and (type(p.data) == "string" or type(p.text) == "string")
end

--- True when a tool's result `v` is a list of parts with an image or a
--- file among them (strings, `tide.image{}` and `tide.file{}` parts,
--- neutral `{ type = "text" | "image" | "file" }` tables), not a value to
--- send as JSON.
---@param v any
---@return boolean
function M.is_tool_parts(v)
  if type(v) ~= "table" or getmetatable(v) ~= nil or #v == 0 then return false end
  local attached = false
  for _, p in ipairs(v) do
    if attached_part(p) then
      attached = true
    elseif not (type(p) == "string" or (type(p) == "table" and p.type == "text" and type(p.text) == "string")) then
      return false
    end
  end
  return attached
end

--- The neutral parts of a tool's result list (M.is_tool_parts): files
--- read, images and files checked; or nil and the error (FileError) to
--- give the model.
---@param list table
---@return table[]|nil parts
---@return table|nil err
function M.resolve_tool_parts(list)
  local out = {}
  for i, p in ipairs(list) do
    if type(p) == "string" or M.is(p) then
      local one, err = M.resolve({ p })
      if not one then return nil, err end
      out[i] = one[1]
    elseif p.type == "text" then
      out[i] = { type = "text", text = p.text }
    elseif p.url then
      out[i] = { type = "image", url = p.url }
    elseif p.type == "file" then
      local size = p.text and #p.text or #(p.data or "") * 3 // 4
      if size > M.MAX_BYTES then
        return nil, core.error("FileError", ("a file over the %d-byte limit"):format(M.MAX_BYTES))
      end
      out[i] = { type = "file", mime = p.mime, name = type(p.name) == "string" and p.name or "file", data = p.data,
                 text = p.text }
    else
      if not IMAGE_MIMES[p.mime] then
        return nil, core.error("FileError", ("an image of type '%s' (png, jpeg, gif or webp are taken)")
          :format(tostring(p.mime)))
      end
      if #p.data > M.MAX_BYTES * 4 // 3 + 4 then
        return nil, core.error("FileError", ("an image over the %d-byte limit"):format(M.MAX_BYTES))
      end
      out[i] = { type = "image", mime = p.mime, data = p.data }
    end
    -- every wire format takes PDF and text files in a tool result; no other
    local f = out[i]
    if f.type == "file" and f.mime ~= "application/pdf" and not f.text then
      return nil, core.error("FileError", ("a file of type '%s' (PDF and text files are taken)"):format(f.mime))
    end
  end
  return out
end

--- A tool result's parts with each text file made a text part (its name,
--- then its text): for the wire formats whose tool results take images and
--- PDFs but no text file.
---@param parts table[]
---@return table[]
function M.text_files_inline(parts)
  local out = {}
  for i, p in ipairs(parts) do
    if p.type == "file" and p.text then
      out[i] = { type = "text", text = ("[file: %s]\n%s"):format(tostring(p.name), p.text) }
    else
      out[i] = p
    end
  end
  return out
end

--- The text of a tool result's parts, an image or a file as a line that
--- says so.
---@param parts table[]
---@return string
function M.parts_text(parts)
  local out = {}
  for i, p in ipairs(parts) do
    if p.type == "text" then
      out[i] = p.text
    elseif p.type == "file" then
      out[i] = ("[file: %s, %s]"):format(tostring(p.name), tostring(p.mime))
    else
      out[i] = ("[image: %s]"):format(p.mime or p.url or "?")
    end
  end
  return table.concat(out, "\n")
end

--- Checks the list form of a turn's input (misuse raises at `level`).
function M.check_list(list, level)
  if #list == 0 then error("bad argument #1 to 'turn' (an empty list of parts)", level + 1) end
  local n = 0
  for _ in pairs(list) do n = n + 1 end
  if n ~= #list then error("bad argument #1 to 'turn' (a list of parts must have no holes or keys)", level + 1) end
  for i, p in ipairs(list) do
    if type(p) ~= "string" and not M.is(p) then
      error(("bad argument #1 to 'turn' (part %d must be a string, tide.image{} or tide.file{}, got %s)")
        :format(i, type(p)), level + 1)
    end
    if type(p) == "string" and not utf8.len(p) then
      error(("bad argument #1 to 'turn' (part %d is not UTF-8 text)"):format(i), level + 1)
    end
    if type(p) == "string" and not p:find("%S") then
      error(("bad argument #1 to 'turn' (part %d is empty text)"):format(i), level + 1)
    end
  end
end

--- True when `list` is neutral parts (what tide.content.resolve makes), not
--- content already in a provider's own shape.
function M.is_neutral(list)
  if type(list) ~= "table" or #list == 0 then return false end
  for _, p in ipairs(list) do
    if type(p) ~= "table" then return false end
    if p.type == "image" then
      if p.source or p.image_url or not (p.data or p.url) then return false end
    elseif p.type == "file" then
      if p.file or not (p.data or p.text) then return false end
    elseif p.type ~= "text" then
      return false
    end
  end
  return true
end

-- A part's bytes as a data URL (an image given as a link stays a link).
local function data_url(p)
  return p.url or ("data:%s;base64,%s"):format(p.mime, p.data or core.base64(p.text))
end

--- The OpenAI chat-completions shape of neutral parts.
function M.openai_chat(parts)
  local out = {}
  -- (its file parts take PDF alone: a text file goes as text)
  for i, p in ipairs(M.text_files_inline(parts)) do
    if p.type == "text" then
      out[i] = { type = "text", text = p.text }
    elseif p.type == "image" then
      out[i] = { type = "image_url", image_url = { url = data_url(p) } }
    elseif p.type == "file" then
      out[i] = { type = "file", file = { filename = p.name, file_data = data_url(p) } }
    else
      error(("tide.content: unknown content part type '%s'"):format(tostring(p.type)), 2)
    end
  end
  return out
end

--- The OpenAI Responses shape of neutral parts: `input_text`, `input_image`
--- (a link or a data URL in `image_url`, a plain string there, unlike chat's
--- object) and `input_file` (`file_data` as a data URL, with `filename`).
function M.openai_responses(parts)
  local out = {}
  for i, p in ipairs(parts) do
    if p.type == "text" then
      out[i] = { type = "input_text", text = p.text }
    elseif p.type == "image" then
      out[i] = { type = "input_image", detail = "auto", image_url = data_url(p) }
    elseif p.type == "file" then
      out[i] = { type = "input_file", filename = p.name, file_data = data_url(p) }
    else
      error(("tide.content: unknown content part type '%s'"):format(tostring(p.type)), 2)
    end
  end
  return out
end

--- The Anthropic Messages shape of neutral parts (PDFs as documents). A
--- text part of white space at most is left out: the API refuses such a
--- block, and in a tool's result it would fail every later request.
function M.anthropic(parts)
  local out = {}
  for _, p in ipairs(parts) do
    local block
    if p.type == "text" then
      block = p.text:find("%S") and { type = "text", text = p.text } or nil
    elseif p.type == "image" then
      block = { type = "image", source = p.url and { type = "url", url = p.url }
        or { type = "base64", media_type = p.mime, data = p.data } }
    elseif p.type == "file" and p.mime == "application/pdf" then
      block = { type = "document", source = { type = "base64", media_type = p.mime, data = p.data } }
    elseif p.type == "file" and p.text then
      block = { type = "document", source = { type = "text", media_type = "text/plain", data = p.text } }
    else
      error(("tide.content: Anthropic takes PDF and text files, not '%s'"):format(tostring(p.mime or p.type)), 2)
    end
    out[#out + 1] = block
  end
  return out
end

return M
