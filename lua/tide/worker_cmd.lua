--- tide.worker_cmd: `tide worker`, a process that serves a turn queue.
---
---   tide worker --redis URL --agents DIR [--prompts DIR] [--queue NAME]
---               [--concurrency N] [--provider openai|anthropic|bedrock]
---               [--claim-idle-ms N] [--lease-ms N] [--drain-ms N] [--prefix P]
---               [--session-ttl-ms N] [--name NAME]
---
--- Agent files and prompts are watched (a change applies to sessions built
--- afterwards, that is, to the next turns). The provider comes from the
--- environment as for `tide chat` (OPENAI_BASE_URL, OPENAI_API_KEY,
--- TIDE_MODEL; or ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN). It prints
--- "serving <queue> as <name>" once the queue's group exists, then serves until stopped.
--- SIGTERM stops it gracefully: it takes no more turns, lets those in flight
--- finish (for up to --drain-ms, default 30,000) and exits with 0; a second
--- SIGTERM ends it at once. Ctrl-C (SIGINT) cancels the turns in flight,
--- whose entries another worker claims; so does any other end of the
--- process.
---@class tide.worker_cmd
local M = {}

local USAGE = "usage: tide worker --redis URL --agents DIR [--prompts DIR] [--queue NAME] [--concurrency N]\n"
  .. "                   [--provider openai|anthropic|bedrock] [--claim-idle-ms N] [--lease-ms N] [--drain-ms N]\n"
  .. "                   [--prefix P] [--session-ttl-ms N] [--name NAME]\n"

local VALUED = { redis = "string", agents = "string", prompts = "string", queue = "string", provider = "string",
  prefix = "string", name = "string", concurrency = "int", ["claim-idle-ms"] = "int", ["lease-ms"] = "int", ["drain-ms"] = "uint",
  ["session-ttl-ms"] = "int" }

local function parse(argv)
  local o = {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    local name, inline = a:match("^%-%-([%w-]+)=(.*)$")
    name = name or a:match("^%-%-([%w-]+)$")
    if a == "-h" or name == "help" then
      o.help = true
    elseif name and VALUED[name] then
      local v = inline
      if v == nil then
        i = i + 1
        v = argv[i]
      end
      if v == nil then error("tide worker: --" .. name .. " needs a value", 0) end
      if VALUED[name] ~= "string" then
        -- (decimal digits only: tonumber would take 0x10 or 1e3 too)
        local n = v:match("^%d+$") and math.tointeger(tonumber(v))
        if VALUED[name] == "uint" then
          -- (--drain-ms 0: stop at once, the turns in flight cancelled)
          if not n then error("tide worker: --" .. name .. " needs a non-negative integer", 0) end
        elseif not n or n <= 0 then
          error("tide worker: --" .. name .. " needs a positive integer", 0)
        end
        v = n
      end
      o[name] = v
    else
      error("tide worker: unknown argument " .. a, 0)
    end
    i = i + 1
  end
  return o
end

-- What is wrong with the options that tide.cluster and tide.worker would
-- raise on, as a message naming the flag (never quoting the URL: it may
-- hold a password); nil when nothing is.
local function usage_problem(o)
  local _, perr = require("tide.cluster").parse_url(o.redis or os.getenv("TIDE_REDIS_URL"))
  if perr then return (o.redis and "--redis" or "TIDE_REDIS_URL") .. ": " .. perr end
  if o.prefix and not o.prefix:match("^[%w_.-]+$") then
    return "--prefix must be letters, digits, '_', '.' or '-'"
  end
  for _, k in ipairs { "queue", "name" } do
    local v = o[k]
    if v and (v == "" or #v > 512 or v:find("[%c%s]")) then
      return ("--%s must be a non-empty name without spaces"):format(k)
    end
  end
  if o.provider and o.provider ~= "openai" and o.provider ~= "anthropic" and o.provider ~= "bedrock" then
    return "--provider must be openai, anthropic or bedrock"
  end
  if not o.provider and not (os.getenv("OPENAI_API_KEY") or os.getenv("OPENAI_BASE_URL")
      or os.getenv("ANTHROPIC_API_KEY") or os.getenv("ANTHROPIC_AUTH_TOKEN")) then
    return "no provider: set OPENAI_API_KEY (or OPENAI_BASE_URL), ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN, or give --provider"
  end
  return nil
end

--- Runs the worker; `argv` are the arguments after `worker`. Returns an
--- exit code (it returns only when the worker cannot start or is stopped).
---@param argv string[]
---@return integer
function M.main(argv)
  local ok, o = pcall(parse, argv)
  if not ok then
    io.stderr:write(o, "\n", USAGE)
    return 2
  end
  if o.help then
    io.stdout:write(USAGE)
    return 0
  end
  if not o.redis and not os.getenv("TIDE_REDIS_URL") then
    io.stderr:write("tide worker: --redis URL (or TIDE_REDIS_URL) is required\n", USAGE)
    return 2
  end
  if not o.agents then
    io.stderr:write("tide worker: --agents DIR is required\n", USAGE)
    return 2
  end
  -- Checked here, as usage errors: left to tide.cluster and tide.worker,
  -- which raise on misuse, they would end the process with a traceback.
  local problem = usage_problem(o)
  if problem then
    io.stderr:write("tide worker: ", problem, "\n", USAGE)
    return 2
  end
  local tide = require "tide"
  local status = 0
  local run_ok, err = pcall(tide.run, function()
    local provider
    if o.provider == "openai" then
      provider = tide.provider.openai {}
    elseif o.provider == "anthropic" then
      provider = tide.provider.anthropic {}
    elseif o.provider == "bedrock" then
      provider = tide.provider.bedrock {}
    elseif o.provider then
      error("tide worker: unknown provider " .. o.provider, 0)
    end
    local function report(e)
      local where = e.file and (e.file .. (e.line and (":" .. e.line) or "")) or ""
      io.stderr:write("tide worker: reload failed: ", where, " ", tostring(e.message or e), "\n")
    end
    local watchers = {}
    for _, what in ipairs { "agents", "prompts" } do
      if o[what] then
        local w, werr = tide[what].watch(o[what], { on_error = report })
        if not w then
          io.stderr:write(("tide worker: --%s %s: %s\n"):format(what, o[what], tostring(werr)))
          status = 1
          for _, open in ipairs(watchers) do open:close() end
          return
        end
        watchers[#watchers + 1] = w
      end
    end
    tide.cluster { redis = o.redis, prefix = o.prefix, session_ttl_ms = o["session-ttl-ms"] }
    local w, werr = tide.worker { queue = o.queue or "turns", concurrency = o.concurrency, provider = provider,
      claim_idle_ms = o["claim-idle-ms"], lease_ms = o["lease-ms"], name = o.name }
    if not w then
      io.stderr:write("tide worker: ", tostring(werr), "\n")
      status = 1
      for _, open in ipairs(watchers) do open:close() end
      return
    end
    local term <close> = w:stop_on_sigterm(o["drain-ms"])
    io.stdout:write("serving ", o.queue or "turns", " as ", w.name, "\n")
    io.stdout:flush()
    w:wait()
    for _, open in ipairs(watchers) do open:close() end
  end)
  if not run_ok then
    if type(err) == "table" and err.code == "Interrupted" then return 130 end
    io.stderr:write("tide worker: ", tostring(err), "\n")
    return 1
  end
  return status
end

return M
