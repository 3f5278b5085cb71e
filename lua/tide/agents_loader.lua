--- tide.agents_loader: agent definition files, loaded and watched.
---
--- An agent file is a Lua chunk that returns one definition table; it runs in
--- an environment of its own (globals read through to `_G`, plus `tide`).
--- `tide.agents.load` and `tide.agents.watch` delegate here, passing the
--- registry's `define(def)`, which raises on a bad definition.
---
--- Failures never stop the others: a syntax error, a runtime error, a file
--- that runs past `loader.limits` or a bad definition becomes an
--- `AgentFileError` naming the file and line, and a file that fails on
--- reload leaves its previous definition in force.
---@class tide.agents_loader
local loader = {}

local core = require "tide.core"

--- What a user's Lua file (an agent file, a Lua config) may spend while it
--- runs: a file that loops or allocates without end fails like a broken
--- one instead of hanging the process. `memory_bytes` is growth of the Lua
--- heap, checked with the instructions, so one huge allocation in a single
--- call (`string.rep`) is not caught. Specs lower these.
loader.limits = { instructions = 100000000, memory_bytes = 256 * 1024 * 1024 }

-- How often the hook runs: rarely enough to cost nothing measurable, often
-- enough that the budget is met to within this many instructions.
local HOOK_EVERY = 1000

--- Calls `fn()` as xpcall does, with `handler` as its message handler, under
--- `loader.limits`: past them, the file's innermost frame raises "ran too
--- long" or "used too much memory" (with its position). The hook is this
--- thread's; the previous one is restored afterwards. Coroutines the file
--- makes through `loader.env`'s `coroutine` get the same hook (a hook is
--- per thread), and that environment's `debug` has no `sethook` to take it
--- off. A message handler of the file's own xpcall is not bounded (Lua runs
--- the handler of an error raised in a hook with hooks off).
---@param fn function
---@param handler fun(err:any):any
---@return boolean ok
---@return any ...
function loader.run_bounded(fn, handler)
  local limits = loader.limits
  local steps = math.max(1, limits.instructions // HOOK_EVERY)
  local max_kb = collectgarbage("count") + limits.memory_bytes / 1024
  local spent, over, disarmed = 0, nil, false
  local runner = coroutine.running()
  local guard
  local function hook()
    if disarmed then return end
    if over then
      -- Past a limit every instruction raises, so that a pcall in the file
      -- cannot catch its way round it; only the handler runs on.
      if debug.getinfo(2, "f").func ~= guard then error(over, 2) end
      return
    end
    spent = spent + 1
    if spent > steps then
      over = ("ran too long (more than %d instructions)"):format(limits.instructions)
    elseif collectgarbage("count") > max_kb then
      collectgarbage() -- garbage is not use: count only what survives
      if collectgarbage("count") > max_kb then
        over = ("used too much memory (more than %d bytes)"):format(limits.memory_bytes)
      end
    end
    if over then
      -- Every thread of the file raises from now on: a coroutine's resume
      -- catches its error like a pcall, and the file's own thread must
      -- not go on from there.
      debug.sethook(hook, "", 1)
      debug.sethook(runner, hook, "", 1)
      error(over, 2)
    end
  end
  guard = function(e)
    disarmed = true
    return handler(e)
  end
  local old, mask, count = debug.gethook()
  local outer = loader._active_hook
  loader._active_hook = hook
  debug.sethook(hook, "", HOOK_EVERY)
  local res = table.pack(xpcall(fn, guard))
  disarmed = true
  loader._active_hook = outer
  if type(old) == "function" then debug.sethook(old, mask, count) else debug.sethook() end
  return table.unpack(res, 1, res.n)
end

-- coroutine.create / wrap for user files: a new coroutine gets the hook of
-- the budget in force, so that `while true do end` inside one is bounded too.
local function bounded_create(f)
  local co = coroutine.create(f)
  local hook = loader._active_hook
  if hook then debug.sethook(co, hook, "", HOOK_EVERY) end
  return co
end

local bounded_coroutine = setmetatable({
  create = bounded_create,
  wrap = function(f)
    local co = bounded_create(f)
    return function(...)
      local r = table.pack(coroutine.resume(co, ...))
      if not r[1] then error(r[2], 2) end
      return table.unpack(r, 2, r.n)
    end
  end,
}, { __index = coroutine })

-- debug without the means to take the budget's hook off.
local guarded_debug = setmetatable({ sethook = function()
  error("debug.sethook is not available to agent and config files", 2)
end }, { __index = debug })

--- The environment a user file (agent file, Lua config) runs in: globals
--- read through to `_G`, plus `extra`, with a bounded `coroutine` and a
--- `debug` without `sethook`.
---@param extra? table
---@return table
function loader.env(extra)
  local env = { coroutine = bounded_coroutine, debug = guarded_debug }
  for k, v in pairs(extra or {}) do env[k] = v end
  return setmetatable(env, { __index = _G })
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Lua prefixes messages with a chunk id that it shortens to about 60
-- characters ("...end/of/path.lua:3: msg"): a position belongs to `path`
-- when the id, without its "...", is the end of the path.
local function split_position(path, msg)
  local id, line, rest = msg:match("^(.-):(%d+): (.*)$")
  if not id then return nil, msg end
  local tail = id:gsub("^%.%.%.", "")
  if tail ~= "" and path:sub(-#tail) == tail then return tonumber(line), rest end
  return nil, msg
end

-- The line of the file's last top-level `return`: where the definition that
-- `define` rejected was written.
local function return_line(path)
  local source = read(path)
  if not source then return nil end
  local n, found = 0, nil
  for line in (source .. "\n"):gmatch("(.-)\r?\n") do
    n = n + 1
    if line:match("^return%f[^%w_]") then found = n end
  end
  return found
end

--- The largest agent file read (bytes).
loader.MAX_FILE = 4 * 1024 * 1024

local function file_error(path, line, message)
  local where = line and ("%s:%d"):format(path, line) or path
  return core.error("AgentFileError", ("%s: %s"):format(where, message),
    { file = path, line = line })
end

-- The words of an error value a file raised, whatever it is (a table
-- whose metatable raises in turn included): never an error of its own.
local function message_of(e)
  if type(e) == "table" then
    local m = rawget(e, "message")
    if m ~= nil then e = m end
  end
  local ok, s = pcall(tostring, e)
  return ok and type(s) == "string" and s or "(an error that cannot be shown)"
end

--- Runs one agent file and registers what it returns.
--- Returns the agent id, or nil and an AgentFileError.
---@param path string
---@param define fun(def:table):table
---@return string|nil id
---@return table? err
function loader.load_file(path, define)
  -- The file's tide.agent only hands its definition back: the loader
  -- registers what the file returns once the whole file has run, so that a
  -- file that fails half way leaves the previous definition in force.
  local tide = require "tide"
  local env = loader.env { tide = setmetatable({ agent = function(d) return d end }, { __index = tide }) }
  -- (a FIFO would block the opener, a device read without end)
  local kind, size = core.file_kind(path)
  if kind ~= "file" then return nil, file_error(path, nil, "is not a regular file") end
  if size > loader.MAX_FILE then
    return nil, file_error(path, nil, ("is %d bytes, over the %d-byte limit"):format(size, loader.MAX_FILE))
  end
  local chunk, err = loadfile(path, "t", env)
  if not chunk then
    local line, msg = split_position(path, err)
    return nil, file_error(path, line, msg)
  end
  -- The handler runs before the stack unwinds: the innermost frame of this
  -- file is where the error happened, even when it was raised elsewhere (a
  -- bad argument to tide.tool, say).
  local source = "@" .. path
  local at
  local ok, def = loader.run_bounded(chunk, function(e)
    for level = 2, math.huge do
      local info = debug.getinfo(level, "Sl")
      if not info then break end
      if info.source == source and info.currentline > 0 then
        at = info.currentline
        break
      end
    end
    return e
  end)
  if not ok then
    local m = message_of(def)
    local line, msg = split_position(path, m)
    return nil, file_error(path, at or line, line and msg or m)
  end
  if type(def) ~= "table" or getmetatable(def) ~= nil then
    -- (a table with a metatable could run code as it is read, outside the budget)
    return nil, file_error(path, return_line(path),
      ("must return an agent definition table (got %s)"):format(type(def) == "table" and "a table with a metatable"
        or type(def)))
  end
  local okd, res = pcall(define, def)
  if not okd then
    local line, msg = split_position(path, message_of(res))
    return nil, file_error(path, line or return_line(path), msg)
  end
  local id = (type(res) == "table" and res.id) or def.id
  return id
end

-- The agent files of dir, or nil and a FileError (a missing directory is
-- the environment's failure, not a misuse).
local function agent_files(fn, dir)
  local names, err = core.scandir(dir)
  if not names then
    return nil, core.error("FileError", ("agents.%s: %s"):format(fn, err.message), { dir = dir })
  end
  local files = {}
  for _, n in ipairs(names) do
    if n:match("%.lua$") and not n:match("^%.") then files[#files + 1] = n end
  end
  table.sort(files)
  return files
end

local function check_args(fn, dir, define, level)
  if type(dir) ~= "string" then
    error(("bad argument #1 to '%s' (string expected, got %s)"):format(fn, type(dir)), level)
  end
  if type(define) ~= "function" then
    error(("bad argument to '%s' (define must be a function, got %s)"):format(fn, type(define)), level)
  end
end

--- Loads every `dir/*.lua` (sorted by name; dot-files skipped) and passes
--- each returned definition to `define`. Returns the ids defined, in file
--- order, and the AgentFileErrors of the files that failed; or nil and a
--- FileError (with `dir`) when the directory cannot be read.
---@param dir string
---@param define fun(def:table):table
---@return string[]|nil ids
---@return table[]|table errs
function loader.load(dir, define)
  check_args("load", dir, define, 3)
  dir = dir:gsub("(.)/+$", "%1")
  local files, err = agent_files("load", dir)
  if not files then return nil, err end
  local ids, errs = {}, {}
  for _, n in ipairs(files) do
    local id, ferr = loader.load_file(dir .. "/" .. n, define)
    if id then ids[#ids + 1] = id else errs[#errs + 1] = ferr end
  end
  return ids, errs
end

-- Raises on an unknown or mistyped option of agents.watch, at the level of
-- its caller (agents.watch tail-calls loader.watch, as check_args assumes).
local function check_watch_options(opts)
  for k, v in pairs(opts) do
    if k == "on_error" or k == "on_change" then
      if type(v) ~= "function" then
        error(("tide.agents.watch: '%s' must be a function, got %s"):format(k, type(v)), 3)
      end
    elseif k == "debounce_ms" then
      if math.type(v) ~= "integer" or v < 0 then
        error("tide.agents.watch: 'debounce_ms' must be a non-negative integer, got " .. tostring(v), 3)
      end
    else
      error(("tide.agents.watch: unknown option '%s'"):format(tostring(k)), 3)
    end
  end
end

local function call_back(what, fn, ...)
  local ok, err = xpcall(fn, debug.traceback, ...)
  if not ok then io.stderr:write(("tide: error in agents %s: %s\n"):format(what, tostring(err))) end
end

local function report(opts, err)
  if opts.on_error then return call_back("on_error", opts.on_error, err) end
  io.stderr:write(("tide: agent file not loaded: %s\n"):format(err.message))
end

--- Loads `dir` as `load` does, then watches it: a changed `*.lua` is run and
--- registered again (`opts.on_change(id)`); a failing one keeps its previous
--- definition and is reported to `opts.on_error(err)` (an AgentFileError with
--- `file` and `line`; printed to stderr without on_error), as are the
--- failures of the first load. An unchanged file is not run again; a deleted
--- file leaves its definition registered. Events arrive while the loop runs.
--- Returns a handle `{ dir, ids, errors, close }` (ids and errors of the
--- first load), or nil and a FileError when the directory cannot be read
--- (nothing is loaded then) or a WatchFailed when it cannot be watched.
---@param dir string
---@param opts? {on_error?:fun(err:table), on_change?:fun(id:string), debounce_ms?:integer}
---@param define fun(def:table):table
---@return table|nil handle
---@return table? err
function loader.watch(dir, opts, define)
  check_args("watch", dir, define, 3)
  opts = opts or {}
  if type(opts) ~= "table" then
    error(("bad argument #2 to 'watch' (table expected, got %s)"):format(type(opts)), 2)
  end
  check_watch_options(opts)
  dir = dir:gsub("(.)/+$", "%1")
  local files, err = agent_files("watch", dir)
  if not files then return nil, err end
  local loaded = {} -- path -> the source last registered
  local ids, errs = {}, {}
  for _, n in ipairs(files) do
    local path = dir .. "/" .. n
    local source = read(path)
    local id, ferr = loader.load_file(path, define)
    if id then
      ids[#ids + 1] = id
      loaded[path] = source
    else
      errs[#errs + 1] = ferr
      report(opts, ferr)
    end
  end
  local w, werr = core.watch(dir, function(names)
    for _, n in ipairs(names) do
      if n:match("%.lua$") and not n:match("^%.") then
        local path = dir .. "/" .. n
        local source = read(path)
        if source and source ~= loaded[path] then
          local id, ferr = loader.load_file(path, define)
          if id then
            loaded[path] = source
            if opts.on_change then call_back("on_change", opts.on_change, id) end
          else
            report(opts, ferr)
          end
        end
      end
    end
  end, opts.debounce_ms)
  if not w then return nil, werr end
  local handle = { dir = dir, ids = ids, errors = errs }
  function handle.close() w:close() end
  return setmetatable(handle, { __close = handle.close })
end

return loader
