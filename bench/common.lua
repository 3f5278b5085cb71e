--- bench.common: what every benchmark row shares: paths, the clock,
--- statistics, child processes (the standalone mock server, raw_curl) and
--- the result protocol between a row process and bench/run.lua.
---
--- A row runs in a process of its own (`lua5.4 bench/worker.lua <row>`), so
--- that one row's heap, connections and RSS never colour another's.
---@class bench.common
local M = {}

local function dirname(p) return p:match("^(.*)/[^/]*$") or "." end

-- An absolute path with "." and ".." resolved (no symlinks followed).
local function absolute(path)
  if path:sub(1, 1) ~= "/" then path = (os.getenv("PWD") or ".") .. "/" .. path end
  local parts = {}
  for part in path:gmatch("[^/]+") do
    if part == ".." then parts[#parts] = nil elseif part ~= "." then parts[#parts + 1] = part end
  end
  return "/" .. table.concat(parts, "/")
end
M.bench = dirname(absolute(debug.getinfo(1, "S").source:sub(2)))
M.root = dirname(M.bench)

M.build = os.getenv("TIDE_BUILD_DIR") or (M.root .. "/build-release")
M.core_so = M.build .. "/tide/core.so"
M.raw_curl_bin = M.build .. "/raw_curl"
M.quick = false

--- The environment prefix for a child lua5.4 that must load the same tide
--- (sources and release build) as this process.
function M.lua_env()
  return ("LUA_PATH=%s LUA_CPATH=%s"):format(
    M.sh(M.root .. "/?.lua;" .. M.root .. "/lua/?.lua;" .. M.root .. "/lua/?/init.lua;;"),
    M.sh(M.build .. "/?.so;;"))
end

--- Quotes `s` for sh.
function M.sh(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- ------------------------------------------------------------- the clock --

local core = require "tide.core"
M.core = core
M.hrtime = core.hrtime

-- ------------------------------------------------------------ statistics --

--- The median of a list of numbers (nil when empty).
function M.median(xs)
  local s = table.move(xs, 1, #xs, 1, {})
  table.sort(s)
  local n = #s
  if n == 0 then return nil end
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

--- The p-th percentile (nearest rank).
function M.percentile(xs, p)
  local s = table.move(xs, 1, #xs, 1, {})
  table.sort(s)
  if #s == 0 then return nil end
  local i = math.max(1, math.min(#s, math.ceil(p / 100 * #s)))
  return s[i]
end

--- Repetitions: `full` normally, `quick` with --quick.
function M.reps(full, quick) return M.quick and quick or full end

-- --------------------------------------------------------------- memory --

--- The resident set size now, in bytes (from /proc/self/statm).
function M.rss()
  local f = io.open("/proc/self/statm", "r")
  if not f then return 0 end
  local _, res = f:read("n", "n")
  f:close()
  return (res or 0) * 4096
end

--- Full collection, twice (finalizers run in the first one).
function M.gc()
  collectgarbage("collect")
  collectgarbage("collect")
end

-- ---------------------------------------------------------- child procs --

local children = {}

--- Kills a child started by this process (by pid, never by name).
function M.kill(pid)
  if pid and children[pid] then
    os.execute(("kill %d 2>/dev/null"):format(pid))
    children[pid] = nil
  end
end

--- Kills every child still running.
function M.kill_all()
  for pid in pairs(children) do M.kill(pid) end
end

--- Runs a shell command and returns its stdout (and whether it succeeded).
function M.capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok, code
end

--- A fresh temporary file name (the file exists, empty).
M.tmpname = os.tmpname
local tmpname = M.tmpname

--- The contents of a file, or nil.
function M.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- Writes `s` to a file (raises on failure).
function M.write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- --------------------------------------------------------------- pinning --

-- On a small machine the scheduler decides whether the client and the mock
-- share a core or not, and a round trip across cores costs several times one
-- within a core (idle wake-ups): unpinned, the same run can come out 3x
-- apart. Rows therefore place both sides explicitly with taskset: one core
-- for one-in-flight measurements (the round trip is then the CPU both sides
-- spend), separate cores for throughput.
local function count_cpus()
  local n = 0
  local f = io.open("/proc/cpuinfo", "r")
  if not f then return 1 end
  for line in f:lines() do if line:match("^processor%s*:") then n = n + 1 end end
  f:close()
  return math.max(n, 1)
end
M.cpus = count_cpus()
M.can_pin = M.cpus >= 2 and os.execute("command -v taskset >/dev/null 2>&1") == true

--- A command prefix that runs a child on `cpu` (empty when pinning is off).
function M.on_cpu(cpu)
  if not M.can_pin or cpu == nil then return "" end
  return ("taskset -c %d "):format(cpu % M.cpus)
end

-- This process's pid (the parent of every child it starts).
local function self_pid()
  local f = io.open("/proc/self/stat", "r")
  local pid = f and f:read("n")
  if f then f:close() end
  return math.tointeger(pid)
end

--- Pins this process to `cpu`.
function M.pin(cpu)
  if M.can_pin then os.execute(("taskset -p -c %d %d >/dev/null"):format(cpu % M.cpus, self_pid())) end
end

--- Starts `lua5.4 <args>` (`args` already quoted) in a process of its own,
--- with this tide on its paths (and `opts.env`, "NAME=value ..."), and
--- waits until its output matches `opts.ready` (default: "listening on
--- <url>", the url captured). Returns { url, pid, log, stop = function }
--- (`log`, its output file, kept with `opts.keep_log`). A small shell
--- watchdog kills the child when this process goes away without stopping
--- it (an error, a timeout, Ctrl-C), so that no child outlives its
--- benchmark.
---@param args string
---@param opts? {cpu?:integer, what?:string, env?:string, ready?:string, timeout_s?:number, keep_log?:boolean}
function M.start_lua(args, opts)
  opts = opts or {}
  local out, pidf = tmpname(), tmpname()
  local script = table.concat({
    -- thousands of connections need as many descriptors
    "ulimit -n $(ulimit -Hn) 2>/dev/null",
    ("%s %s %slua5.4 %s >%s 2>&1 &"):format(M.lua_env(), opts.env or "", M.on_cpu(opts.cpu), args, M.sh(out)),
    "m=$!",
    ("echo $m >%s"):format(M.sh(pidf)),
    ("(while kill -0 %d 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 0.2; done; kill $m 2>/dev/null) </dev/null >/dev/null 2>&1 &")
      :format(self_pid()),
  }, "\n")
  M.capture("sh -c " .. M.sh(script) .. " </dev/null")
  local pid = math.tointeger(tonumber((M.read(pidf) or ""):match("%d+")))
  os.remove(pidf)
  local what = opts.what or "the server"
  if not pid then error("bench: could not start " .. what) end
  children[pid] = true
  local url
  local deadline = core.hrtime() + (opts.timeout_s or 10) * 1e9
  while core.hrtime() < deadline do
    local s = M.read(out) or ""
    url = s:match(opts.ready or "listening on (http://[%d%.]+:%d+)")
    if url then break end
    if not os.execute(("kill -0 %d 2>/dev/null"):format(pid)) then break end -- it died
    os.execute("sleep 0.005")
  end
  local text = M.read(out)
  if not (url and opts.keep_log) then os.remove(out) end
  if not url then
    M.kill(pid)
    error(("bench: %s did not start: %s"):format(what, tostring(text)))
  end
  return { url = url, pid = pid, log = out, stop = function() M.kill(pid) end }
end

-- The mock is the peer here: with ten thousand connects in one burst, the
-- kernel's accept queue (net.core.somaxconn, 4096 by default) overflows and
-- dropped SYNs are retried only after a second. A real provider tunes its
-- own servers; for the loopback peer the bench raises the limit when it may
-- (as root) and puts it back afterwards. Returns a note for the table.
function M.raise_somaxconn()
  local f = io.open("/proc/sys/net/core/somaxconn")
  if not f then return nil, "somaxconn unknown" end
  local old = tonumber(f:read("l"))
  f:close()
  if old and old >= 16384 then return function() end, ("somaxconn %d"):format(old) end
  local w = io.open("/proc/sys/net/core/somaxconn", "w")
  if not w then return nil, ("somaxconn %d (not root: accept-queue drops likely)"):format(old or 0) end
  w:write("16384\n")
  w:close()
  return function()
    local r = io.open("/proc/sys/net/core/somaxconn", "w")
    if r then r:write(tostring(old), "\n") r:close() end
  end, ("somaxconn raised from %d to 16384 for the mock"):format(old)
end

--- Starts a redis-server on a loopback port (spec/support/redis.lua), with
--- no persistence; `r.url`, `r:close()`.
function M.start_redis()
  package.path = M.root .. "/spec/?.lua;" .. package.path
  return require("support.redis").start()
end

--- Starts `bin/tide worker` in a process of its own on the release build,
--- serving queue `opts.queue` of `opts.redis` (prefix `opts.prefix`) with
--- the agents of bench/agents and the mock at `opts.mock` as its provider;
--- on `opts.cpu` if given. Returns { pid, stop } once it serves; a
--- watchdog kills it when this process goes away.
---@param opts {redis:string, prefix:string, queue:string, mock:string, concurrency?:integer, cpu?:integer, name:string}
function M.start_worker(opts)
  local env = ("TIDE_BUILD_DIR=%s OPENAI_BASE_URL=%s OPENAI_API_KEY=k TIDE_MODEL=m"):format(M.sh(M.build),
    M.sh(opts.mock .. "/v1"))
  local args = ("%s worker --redis %s --prefix %s --queue %s --agents %s --concurrency %d --name %s"):format(
    M.sh(M.root .. "/bin/tide"), M.sh(opts.redis), M.sh(opts.prefix), M.sh(opts.queue), M.sh(M.bench .. "/agents"),
    opts.concurrency or 64, M.sh(opts.name))
  local w = M.start_lua(args, { cpu = opts.cpu, env = env, what = "a worker", ready = "()serving",
    timeout_s = 15, keep_log = true })
  return { pid = w.pid, log = w.log, stop = function()
    w.stop()
    -- kept for a look when asked (BENCH_KEEP_LOGS=1)
    if not os.getenv("BENCH_KEEP_LOGS") then os.remove(w.log) else io.stderr:write("worker log: ", w.log, "\n") end
  end }
end

--- Starts bin/tide-mock in a process of its own, on the release build
--- (see M.start_lua).
---@param opts? {delay_ms?:integer, tool_loop?:integer, cpu?:integer}
function M.start_mock(opts)
  opts = opts or {}
  -- bin/tide-mock puts its build tree (TIDE_BUILD_DIR, else <root>/build)
  -- first on its C path; preloading the release module makes the mock
  -- process run the same build as the client, whatever the environment says.
  local preload = ("package.preload['tide.core']=package.loadlib(%q,'luaopen_tide_core')"):format(M.core_so)
  local args = "--port 0"
  if opts.delay_ms then args = args .. " --delay-ms " .. opts.delay_ms end
  if opts.tool_loop then args = args .. " --tool-loop " .. opts.tool_loop end
  return M.start_lua(("-e %s %s %s"):format(M.sh(preload), M.sh(M.root .. "/bin/tide-mock"), args),
    { cpu = opts.cpu, what = "the mock server" })
end

--- Runs raw_curl with `args` (a string, already quoted), on `cpu` if given,
--- and returns its decoded JSON result.
function M.raw_curl(args, cpu)
  local out, ok = M.capture(M.on_cpu(cpu) .. M.sh(M.raw_curl_bin) .. " " .. args)
  local res = M.json_decode(out:match("{.*}") or "")
  if not ok or not res then error("bench: raw_curl failed: " .. out) end
  return res
end

-- ------------------------------------------------------------------ json --

local cjson = require("cjson").new()
function M.json_encode(v) return cjson.encode(v) end
function M.json_decode(s)
  local ok, v = pcall(cjson.decode, s)
  if ok then return v end
end

-- ------------------------------------------------------------- results --

--- A row of the table. `tide`, `floor` and `ratio` are display strings;
--- extra fields are raw numbers kept for the JSON record.
---@param name string
---@param tide string
---@param floor string
---@param ratio string
function M.line(name, tide, floor, ratio, raw)
  return { name = name, tide = tide, floor = floor or "", ratio = ratio or "", raw = raw }
end

--- "1.23x" / "0.81x".
function M.x(r)
  if r == nil or r ~= r then return "" end
  return ("%.2fx"):format(r)
end

--- The ratio against a goal `limit` (lower is better): "0.45x goal: ok".
function M.goal(value, limit)
  if value == nil then return "n/a" end
  local r = value / limit
  return ("%.2fx of goal: %s"):format(r, value <= limit and "ok" or "MISSED")
end

--- Formats a number with thousands separators.
function M.n(v, decimals)
  if v == nil then return "n/a" end
  local s = ("%." .. (decimals or 0) .. "f"):format(v)
  local int, frac = s:match("^(-?%d+)(.*)$")
  int = int:reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^(-?),", "%1")
  return int .. frac
end

--- Adaptive precision for µs / ms values.
function M.num(v)
  if v == nil then return "n/a" end
  local a = math.abs(v)
  if a >= 100 then return M.n(v, 0) end
  if a >= 10 then return ("%.1f"):format(v) end
  return ("%.2f"):format(v)
end

return M
