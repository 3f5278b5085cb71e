--- tide.prompts: prompt templates, found by name in the prompt directories,
--- compiled once per version, and reloaded while a program runs.
---
--- A prompt is either a bare name (letters, digits, `_ - .`), naming the file
--- `<dir>/<name>.md` in the first prompt directory that has it, or inline
--- template text. The directories are searched newest first: those added with
--- `add_dir`/`watch` (the later added winning), then the defaults shipped with
--- tide. Templates are the Mustache subset of `core.template_compile`; a
--- partial `{{> name}}` is a prompt file found the same way, never a path.
---
--- Each file is read and compiled once, then kept with a version: a number
--- from one counter shared by all files, taken when the file is loaded and
--- again at each successful reload by a watcher, so that a version names one
--- text of one file. A reload that fails to compile leaves the previous
--- version in force. The version of a prompt that uses partials names the
--- combination (its own version and each partial's), so it changes when a
--- partial does. Files in directories nobody watches are read once and kept.
---@class tide.prompts
local prompts = {}

local core = require "tide.core"

local NAME = "^[%w_%-%.]+$"
local INLINE_FILE = "(inline)"
local INLINE_CACHE_MAX = 128

local function dirname(path) return path:match("^(.*)/[^/]*$") or "." end

-- A prompt file is a regular file of at most MAX_FILE bytes: anything else
-- (a FIFO, which would block the opener, a device) is never read.
local MAX_FILE = 4 * 1024 * 1024

local function regular(path)
  local kind, size = core.file_kind(path)
  return kind == "file" and size <= MAX_FILE
end

-- The text of the file at path | nil (no such file) | nil, why (it is there
-- but cannot be a prompt). The difference matters: an override that grew
-- too large must not silently give way to the default, and a watched file
-- that did must keep its last good version.
local function read(path)
  local kind, size = core.file_kind(path)
  if kind == nil then return nil end
  if kind ~= "file" then return nil, "is not a regular file" end
  if size > MAX_FILE then return nil, ("is %d bytes, over the %d-byte limit"):format(size, MAX_FILE) end
  local f, ferr = io.open(path, "rb")
  if not f then return nil, "cannot be read (" .. tostring(ferr) .. ")" end
  local s = f:read("a")
  f:close()
  if not s then return nil, "cannot be read" end
  return s
end

local function exists(path)
  return regular(path)
end

local function canonical(dir)
  dir = dir:gsub("(.)/+$", "%1")
  return core.realpath(dir) or dir
end

-- The defaults ship in `prompts/` at the top of the source tree, or beside
-- this file (`<LUADIR>/tide/prompts`) when installed by LuaRocks or CMake.
local function find_defaults()
  local src = debug.getinfo(1, "S").source
  local here = src:sub(1, 1) == "@" and dirname(src:sub(2)) or "."
  local candidates = { here .. "/prompts", here .. "/../../prompts" }
  for _, dir in ipairs(candidates) do
    if exists(dir .. "/orchestrator.md") then return canonical(dir) end
  end
  return canonical(candidates[2])
end

local state = {
  defaults = find_defaults(),
  dirs = {},      -- user directories, in the order added (the last wins)
  files = {},     -- path -> entry { path, dir, name, source, template, partials, version }
  counter = 0,    -- the last version given
  combined = {},  -- "v,name=v,..." -> the version naming that combination
  inline = {}, ninline = 0,
}

--- True when `prompt` is a bare prompt name rather than inline text.
---@param prompt string
---@return boolean
function prompts.is_name(prompt)
  return type(prompt) == "string" and prompt:match(NAME) ~= nil
end
local is_name = prompts.is_name

local function search_dirs()
  local out = {}
  for i = #state.dirs, 1, -1 do out[#out + 1] = state.dirs[i] end
  out[#out + 1] = state.defaults
  return out
end

local function unknown(name)
  return ("unknown prompt '%s' (looked in: %s)"):format(name, table.concat(search_dirs(), ", "))
end

local function template_error(message, fields)
  return core.error("TemplateError", message, fields)
end

-- The line of the first `{{> name}}` tag in source, for errors about it.
local function partial_line(source, name)
  local pos = 1
  while true do
    local s, e, inner = source:find("{{>%s*(.-)%s*}}", pos)
    if not s then return nil end
    if inner == name then
      local _, newlines = source:sub(1, s):gsub("\n", "")
      return newlines + 1
    end
    pos = e + 1
  end
end

-- Compiles source; checks that every partial is a prompt name, so that a
-- bad reference is reported when the file is (re)loaded, not at some later
-- render.
local function compile(path, source)
  local t, err = core.template_compile(source, path)
  if not t then return nil, err end
  local partials = t:partials()
  for _, p in ipairs(partials) do
    if not p:match(NAME) or p:find("..", 1, true) then
      return nil, template_error(
        ("partial '%s' is outside the prompt directories (a partial is a prompt name)"):format(p),
        { file = path, line = partial_line(source, p), name = p })
    end
  end
  return { path = path, source = source, template = t, partials = partials }
end

local function next_version()
  state.counter = state.counter + 1
  return state.counter
end

local function install(entry)
  entry.version = next_version()
  state.files[entry.path] = entry
  return entry
end

-- Finds the entry for a prompt name: the loaded one, or the file read and
-- compiled now. Returns entry | nil, err (the file exists but is broken) |
-- nil (no directory has it). A broken file in a directory of higher
-- precedence is an error, not a reason to fall back to the defaults.
local function lookup(name)
  for _, dir in ipairs(search_dirs()) do
    local path = dir .. "/" .. name .. ".md"
    local e = state.files[path]
    if e then return e end
    local source, why = read(path)
    if why then return nil, template_error(path .. ": " .. why, { file = path }) end
    if source then
      local entry, err = compile(path, source)
      if not entry then return nil, err end
      entry.dir, entry.name = dir, name
      return install(entry)
    end
  end
end

local function inline_entry(text)
  local e = state.inline[text]
  if e then return e end
  local entry, err = compile(INLINE_FILE, text)
  if not entry then return nil, err end
  entry.version = next_version()
  if state.ninline >= INLINE_CACHE_MAX then state.inline, state.ninline = {}, 0 end
  state.inline[text] = entry
  state.ninline = state.ninline + 1
  return entry
end

-- The partials table for rendering entry: every partial it uses,
-- transitively, resolved now, so that a missing one is reported with the
-- file and line that names it.
-- Returns partials (nil when there are none), the version of the
-- combination | nil, nil, err.
local function collect_partials(entry)
  if entry.partials[1] == nil then return nil, entry.version end -- most prompts
  local out, seen, queue, i = nil, {}, { entry }, 1
  local key
  while queue[i] do
    local e = queue[i]
    i = i + 1
    for _, name in ipairs(e.partials) do
      if not seen[name] then
        seen[name] = true
        local p, err = lookup(name)
        if not p then
          return nil, nil, err or template_error(unknown(name),
            { file = e.path, line = partial_line(e.source, name), name = name })
        end
        out = out or {}
        out[name] = p.template
        queue[#queue + 1] = p
        key = (key or tostring(entry.version)) .. "," .. name .. "=" .. p.version
      end
    end
  end
  if not key then return out, entry.version end
  local v = state.combined[key]
  if not v then
    v = next_version()
    state.combined[key] = v
  end
  return out, v
end

-- Same inputs, same bytes: trailing blanks dropped from every line, runs of
-- blank lines collapsed to one, the whole trimmed. Sections rendered empty
-- therefore leave no gap. One pass in C (core/template.c): four gsub passes
-- over a 16 KB prompt cost more than rendering it.
local normalise = core.template_normalise

-- The flags templates use to show a heading once over a non-empty list are
-- derived when the caller did not give them.
local derived = { has_toolkits = "toolkits", has_tools = "tools", has_subagents = "subagents" }

local function view(data)
  local extra
  for flag, list in pairs(derived) do
    if data[flag] == nil and type(data[list]) == "table" then
      extra = extra or {}
      extra[flag] = #data[list] > 0
    end
  end
  if not extra then return data end
  return setmetatable(extra, { __index = data })
end

local function check_string(fn, prompt)
  if type(prompt) ~= "string" then
    error(("bad argument #1 to '%s' (string expected, got %s)"):format(fn, type(prompt)), 3)
  end
end

--- Resolves a prompt: `{ name, file, version }` for a bare name, or
--- `{ inline = text, version }`. The version is the one `render` would return
--- now. An unknown name raises. When the prompt cannot be rendered as it
--- stands (the file, or a partial it uses, does not compile or is missing),
--- `version` is nil and `error` holds the `TemplateError`.
---@param prompt string
---@return {name?:string, file?:string, inline?:string, version?:integer, error?:table}
function prompts.resolve(prompt)
  check_string("resolve", prompt)
  local e, err, out
  if is_name(prompt) then
    e, err = lookup(prompt)
    if not e and not err then error(unknown(prompt), 2) end
    out = { name = prompt, file = e and e.path or (err and err.file) }
  else
    e, err = inline_entry(prompt)
    out = { inline = prompt }
  end
  if e then
    local _, v, perr = collect_partials(e)
    out.version, err = v, perr
  end
  out.error = err
  return out
end

--- Renders a prompt with `data` (the render data in docs/internals.md).
--- Returns the normalised text and the prompt's version (inline text has one
--- too, taken when it is first compiled), or nil, err (`TemplateError` with `file` and `line` when they are known;
--- an unknown prompt name is one too, since the file may have gone since the
--- agent was defined).
---@param prompt string
---@param data table
---@return string|nil text
---@return integer|table version_or_err
function prompts.render(prompt, data)
  check_string("render", prompt)
  if type(data) ~= "table" then
    error(("bad argument #2 to 'render' (table expected, got %s)"):format(type(data)), 2)
  end
  local e, err
  if is_name(prompt) then
    e, err = lookup(prompt)
    if not e and not err then err = template_error(unknown(prompt), { name = prompt }) end
  else
    e, err = inline_entry(prompt)
  end
  if not e then return nil, err end
  local partials, version, perr = collect_partials(e)
  if not version then return nil, perr end
  local text, rerr = e.template:render(view(data), partials)
  if not text then return nil, rerr end
  return normalise(text), version
end

--- The version `render(name, ...)` would return now (see the top of this
--- file), or nil, err when the prompt cannot be rendered as it stands, or nil
--- when no directory has it.
---@param name string
---@return integer|nil
---@return table? err
function prompts.version(name)
  check_string("version", name)
  if not is_name(name) then
    error(("bad argument #1 to 'version' (prompt name expected, got %q)"):format(name), 2)
  end
  local e, err = lookup(name)
  if not e then return nil, err end
  local _, v, perr = collect_partials(e)
  if v then return v end
  return nil, perr
end

local function add_path(path)
  for i = #state.dirs, 1, -1 do
    if state.dirs[i] == path then table.remove(state.dirs, i) end
  end
  state.dirs[#state.dirs + 1] = path
end

--- Adds a prompt directory, searched before the defaults and before every
--- directory added earlier (adding one again moves it to the front).
--- Returns the directory's canonical path.
---@param dir string
---@return string
function prompts.add_dir(dir)
  check_string("add_dir", dir)
  local path = canonical(dir)
  if not core.scandir(path) then
    error(("prompt directory '%s' cannot be read"):format(dir), 2)
  end
  add_path(path)
  return path
end

--- Removes a directory added with add_dir or watch (a watcher on it keeps
--- running until closed, but its files are no longer found).
---@param dir string
function prompts.remove_dir(dir)
  check_string("remove_dir", dir)
  local path = canonical(dir)
  for i = #state.dirs, 1, -1 do
    if state.dirs[i] == path then table.remove(state.dirs, i) end
  end
  for p, e in pairs(state.files) do
    if e.dir == path then state.files[p] = nil end
  end
end

--- The prompt directories in search order (the defaults last).
---@return string[]
function prompts.dirs() return search_dirs() end

--- The directory of the default templates.
---@return string
function prompts.defaults_dir() return state.defaults end

local function call_back(what, fn, ...)
  local ok, err = xpcall(fn, debug.traceback, ...)
  if not ok then io.stderr:write(("tide: error in prompts %s: %s\n"):format(what, tostring(err))) end
end

local function report(opts, err)
  if opts.on_error then return call_back("on_error", opts.on_error, err) end
  io.stderr:write(("tide: prompt not reloaded: %s:%s: %s\n"):format(
    tostring(err.file), tostring(err.line), tostring(err.message)))
end

-- A watcher saw `name`.md change in dir: read it again. Unchanged text is
-- no new version; a vanished file is forgotten (the name then resolves to a
-- directory of lower precedence, if any). Returns true when what the name
-- stands for changed.
local function reload(dir, name, opts)
  local path = dir .. "/" .. name .. ".md"
  local old = state.files[path]
  local source, why = read(path)
  if why then
    report(opts, template_error(path .. ": " .. why, { file = path }))
    return false
  end
  if not source then
    state.files[path] = nil
    return old ~= nil
  end
  if old and old.source == source then return false end
  local entry, err = compile(path, source)
  if not entry then
    report(opts, err)
    return false
  end
  entry.dir, entry.name = dir, name
  install(entry)
  return true
end

--- Adds `dir` as a prompt directory and watches it: a changed `<name>.md` is
--- read and compiled again; on success it is the version used by every
--- render after it (`on_change(name, version)`); on failure the previous
--- version stays and `on_error(err)` receives the `TemplateError` (`file`,
--- `line`, `message`). Without on_error, failures are printed to stderr.
--- Events arrive while the loop runs (inside tide.run). Returns a handle
--- with `:close()`, or nil and a FileError (the directory cannot be read)
--- or WatchFailed; the directory is then not added.
---@param dir string
---@param opts? {on_error?:fun(err:table), on_change?:fun(name:string, version:integer), debounce_ms?:integer}
---@return {dir:string, close:fun(self)}|nil
---@return table? err
function prompts.watch(dir, opts)
  check_string("watch", dir)
  opts = opts or {}
  if type(opts) ~= "table" then
    error(("bad argument #2 to 'watch' (table expected, got %s)"):format(type(opts)), 2)
  end
  for k, v in pairs(opts) do
    if k == "on_error" or k == "on_change" then
      if type(v) ~= "function" then
        error(("tide.prompts.watch: '%s' must be a function, got %s"):format(k, type(v)), 2)
      end
    elseif k == "debounce_ms" then
      if math.type(v) ~= "integer" or v < 0 then
        error("tide.prompts.watch: 'debounce_ms' must be a non-negative integer, got " .. tostring(v), 2)
      end
    else
      error(("tide.prompts.watch: unknown option '%s'"):format(tostring(k)), 2)
    end
  end
  local path = canonical(dir)
  local listed, lerr = core.scandir(path)
  if not listed then
    return nil, core.error("FileError", "prompts.watch: " .. lerr.message, { dir = dir })
  end
  local w, err = core.watch(path, function(names)
    -- Every file first, then the notifications: a version computed for one
    -- name may read another (a partial) that changed in the same batch.
    local changed = {}
    for _, file in ipairs(names) do
      local name = file:match("^(.+)%.md$")
      if name and name:match(NAME) and reload(path, name, opts) then changed[#changed + 1] = name end
    end
    if opts.on_change then
      for _, name in ipairs(changed) do
        call_back("on_change", opts.on_change, name, (prompts.version(name)))
      end
    end
  end, opts.debounce_ms)
  if not w then return nil, err end
  add_path(path)
  local handle = { dir = path }
  function handle.close() w:close() end
  return setmetatable(handle, { __close = handle.close })
end

-- Render data -------------------------------------------------------------

local function sanitize(slug) return (slug:lower():gsub("[^a-z0-9_]", "_")) end

local function str(v) return v == nil and "" or tostring(v) end

local function tool_list(tools)
  local out = {}
  for _, t in ipairs(tools or {}) do
    out[#out + 1] = { name = str(t.name), description = str(t.description) }
  end
  return out
end

local function toolkit_data(tk, delegate)
  local gated = {}
  for _, g in ipairs(tk.gated_tools or {}) do
    gated[#gated + 1] = { name = str(g.name), description = str(g.description), reason = str(g.reason) }
  end
  -- The same summary of the gated catalogue as a session's render data
  -- (tide.surface, required here on use: it requires modules that need this one).
  local d = require("tide.surface").gated_summary(gated)
  d.slug, d.description, d.delegate = str(tk.slug), str(tk.description), delegate or ""
  d.tools, d.more = require("tide.surface").offered_actions(tool_list(tk.tools))
  return d
end

--- Builds the render data of docs/internals.md from a session's view, so
--- that every string a template may name is present (an empty string when
--- unknown: lookups are strict). Only connected toolkits are kept, sorted by
--- slug. `delegates` maps a slug to the delegate tool actually offered for
--- it; when given, toolkits without one are left out of the guide; when
--- absent, each gets `delegate_<slug>`.
---@param v {agent:table, toolkits?:table[], delegates?:table<string,string>, tools?:table[], subagents?:table[], toolkit?:table}
---@return table
function prompts.data(v)
  if type(v) ~= "table" then
    error(("bad argument #1 to 'data' (table expected, got %s)"):format(type(v)), 2)
  end
  local agent = v.agent or {}
  local connected = {}
  for _, tk in ipairs(v.toolkits or {}) do
    if tk.connected and type(tk.slug) == "string" then
      local delegate
      if v.delegates then
        delegate = v.delegates[tk.slug]
      else
        delegate = "delegate_" .. sanitize(tk.slug)
      end
      if delegate then connected[#connected + 1] = toolkit_data(tk, delegate) end
    end
  end
  table.sort(connected, function(a, b) return a.slug < b.slug end)
  local subagents = {}
  for _, s in ipairs(v.subagents or {}) do
    subagents[#subagents + 1] = { id = str(s.id), tool = str(s.tool), when_to_use = str(s.when_to_use) }
  end
  local tools = tool_list(v.tools)
  return {
    agent = { id = str(agent.id), display_name = str(agent.display_name or agent.id),
              when_to_use = str(agent.when_to_use) },
    toolkits = connected, has_toolkits = #connected > 0,
    tools = tools, has_tools = #tools > 0,
    subagents = subagents, has_subagents = #subagents > 0,
    toolkit = v.toolkit and toolkit_data(v.toolkit, v.toolkit.delegate) or nil,
  }
end

return prompts
