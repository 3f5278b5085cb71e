--- tide.bytecode: tide's own Lua modules, compiled once and kept.
---
--- Starting a script spent most of its time compiling tide's Lua source
--- (about 11,000 lines for a one-file agent: two thirds of its start-up).
--- A package searcher, put before Lua's own, loads `tide.*` modules from a
--- cache of their compiled chunks (`string.dump`, debug information kept:
--- errors and tracebacks name the source file and line as before), as
--- Python's __pycache__ does. An entry is used only while its source file
--- has the path, size and modification time it was compiled from, and when
--- its checksum holds; anything else (a file edited, a cache written by
--- another Lua, a torn write) compiles the source again and rewrites the
--- entry. Writing is best effort: a cache that cannot be written costs
--- nothing but the time it would have saved.
---
--- Where: `$TIDE_BYTECODE_CACHE`, else `$XDG_CACHE_HOME/tide/lua`, else
--- `~/.cache/tide/lua`; `TIDE_BYTECODE_CACHE=off` turns it off.
---@class tide.bytecode
local M = {}

local core = require "tide.core"

local HEADER = "tide bytecode 1\n"

-- The cache directory, or nil when there is none.
local function directory()
  local dir = os.getenv("TIDE_BYTECODE_CACHE")
  if dir == "off" then return nil end
  if dir and dir ~= "" then return dir end
  local base = os.getenv("XDG_CACHE_HOME")
  if not base or base == "" then
    local home = os.getenv("HOME")
    if not home or home == "" then return nil end
    base = home .. "/.cache"
  end
  return base .. "/tide/lua"
end

-- Makes dir and its parents (0700 where they are new); whether it exists.
local function make_dirs(dir)
  if core.file_kind(dir) == "directory" then return true end
  local path = dir:sub(1, 1) == "/" and "" or "."
  for part in dir:gmatch("[^/]+") do
    path = path .. "/" .. part
    if not core.make_dir(path) then return false end
  end
  return true
end

-- What an entry is valid for: the source's path, size and modification
-- time.
local function stamp(path)
  local kind, size, mtime = core.file_kind(path)
  if kind ~= "file" or path:find("\n", 1, true) then return nil end
  return size .. ":" .. mtime .. ":" .. path
end

-- The compiled chunk of `path` from entry `file` when it holds for
-- `want` (the source's stamp), or nil.
local function read_entry(file, want)
  local f = io.open(file, "rb")
  if not f then return nil end
  local data = f:read("a")
  f:close()
  local got, crc, at = data:match("^" .. HEADER .. "([^\n]*)\n(%d+)\n()")
  if got ~= want then return nil end
  local code = data:sub(at)
  if tonumber(crc) ~= core.crc32(code) then return nil end -- (torn or damaged)
  return load(code, nil, "b")
end

--- The package searcher: for a `tide.*` module found on package.path, its
--- chunk (from the cache, or compiled and written there) and its path; nil
--- for anything else, which Lua's own searchers then look for.
---@param dir string the cache directory
---@return function searcher
function M.searcher(dir)
  local ready -- whether dir exists (made on the first write)
  return function(name)
    if name:sub(1, 5) ~= "tide." then return nil end
    local path = package.searchpath(name, package.path)
    if not path then return nil end -- (Lua's searcher says where it looked)
    local want = stamp(path)
    if not want then return nil end
    -- (named by the module and its path: two installs keep two entries)
    local file = ("%s/%s-%08x.luac"):format(dir, name, core.crc32(path))
    local chunk = read_entry(file, want)
    if chunk then return chunk, path end
    local compiled, err = loadfile(path)
    if not compiled then error(("error loading module '%s' from file '%s':\n\t%s"):format(name, path, err), 0) end
    if ready == nil then ready = make_dirs(dir) end
    if ready then
      local code = string.dump(compiled)
      core.write_private(file, ("%s%s\n%d\n%s"):format(HEADER, want, core.crc32(code), code), false)
    end
    return compiled, path
  end
end

--- Puts the searcher before Lua's own (once), unless the cache is off.
function M.install()
  if M.installed then return end
  M.installed = true
  local dir = directory()
  if dir then table.insert(package.searchers, 2, M.searcher(dir)) end
end

return M
