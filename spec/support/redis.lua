-- A real Redis for the cluster specs: redis-server on a loopback port, with
-- no persistence, started by the spec and stopped by it. Several can run at
-- once (each on its own port and directory).
local M = {}

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  p:close()
  return out
end

local function pid_alive(pid)
  return pid and os.execute("kill -0 " .. pid .. " 2>/dev/null") == true
end

local Server = {}
Server.__index = Server

local function start_on(self)
  -- a SIGKILLed server leaves its pid file: the new one's pid must be read
  os.remove(self.dir .. "/redis.pid")
  local args = {
    "redis-server", "--port", tostring(self.port), "--bind", "127.0.0.1",
    "--save", "''", "--appendonly", "no", "--daemonize", "yes",
    "--dir", self.dir, "--pidfile", self.dir .. "/redis.pid",
    "--logfile", self.dir .. "/redis.log",
  }
  for _, a in ipairs(self.extra) do args[#args + 1] = a end
  sh(table.concat(args, " "))
  -- wait for it to answer
  for _ = 1, 200 do
    local f = io.open(self.dir .. "/redis.pid")
    -- (read too early, the file is there but still empty: a server whose
    -- pid is not known would never be stopped)
    local pid = f and f:read("l")
    if f then f:close() end
    if pid and pid:match("^%d+$") then
      self.pid = pid
      local pong = sh(("redis-cli -p %d %s ping"):format(self.port,
        self.password and ("--no-auth-warning -a '" .. self.password .. "'") or ""))
      if pong:match("PONG") then return true end
    end
    os.execute("sleep 0.02")
  end
  return false
end

--- Starts a redis-server; `opts.password` sets requirepass, `opts.args`
--- adds arguments. Raises when it cannot start (no redis-server: CI and
--- `./dev test` install it).
function M.start(opts)
  opts = opts or {}
  assert(sh("command -v redis-server"):match("redis%-server"),
    "redis-server not found: `./dev test` installs it (Debian package redis-server)")
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local self = setmetatable({ dir = dir, password = opts.password, extra = opts.args or {} }, Server)
  if opts.password then
    self.extra[#self.extra + 1] = "--requirepass"
    self.extra[#self.extra + 1] = opts.password
  end
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)
  for _ = 1, 20 do
    self.port = math.random(20000, 60000)
    if start_on(self) then
      self.url = ("redis://127.0.0.1:%d/0"):format(self.port)
      return self
    end
    self:stop()
  end
  error("could not start redis-server: " .. (io.open(dir .. "/redis.log") or { read = function() return "" end }):read("a"))
end

--- Inside a describe block: a redis-server for the block, the agents of
--- `agents_dir` loaded, and around each case a current tide.cluster on it
--- under a fresh prefix (`letter` and a random number), closed after the
--- case. Returns a table whose `server` field is the server once the
--- block runs.
function M.cluster_per_case(letter, agents_dir)
  -- busted's block functions live in the spec's environment, not in _G
  local b = require "busted"
  local setup, teardown, before_each, after_each = b.setup, b.teardown, b.before_each, b.after_each
  local tide = require "tide"
  local cluster = require "tide.cluster"
  local box = {}
  setup(function()
    box.server = M.start()
    tide.agents.load(agents_dir)
  end)
  teardown(function()
    cluster.set_current(nil)
    if box.server then box.server:close() end
  end)
  before_each(function() tide.cluster { redis = box.server.url, prefix = letter .. math.random(1, 1e9) } end)
  after_each(function()
    local c = cluster.current()
    if c then tide.run(function() c:close() end) end
  end)
  return box
end

--- The URL of a Redis that was there and is gone: a loopback port where
--- nothing listens now.
function M.gone_url()
  local s = M.start()
  local url = s.url
  s:close()
  return url
end

--- Stops it (SIGKILL; SIGTERM when `kill9` is false), waiting until it is gone.
function Server:stop(kill9)
  if pid_alive(self.pid) then
    -- SIGKILL unless asked otherwise: there is nothing to save, and
    -- Redis takes over a second to shut down on SIGTERM
    os.execute(("kill %s %s"):format(kill9 == false and "" or "-9", self.pid))
    for _ = 1, 500 do
      if not pid_alive(self.pid) then break end
      os.execute("sleep 0.01")
    end
  end
  self.pid = nil
end

--- Starts it again on the same port (a restart).
function Server:restart()
  self:stop()
  assert(start_on(self), "redis-server did not come back")
end

--- Runs redis-cli with `args`; its output.
function Server:cli(args)
  return sh(("redis-cli -p %d %s %s"):format(self.port,
    self.password and ("--no-auth-warning -a '" .. self.password .. "'") or "", args))
end

--- Stops it and removes its directory.
function Server:close()
  self:stop()
  if self.dir:match("^/tmp/") then os.execute("rm -rf " .. self.dir) end
end

return M
