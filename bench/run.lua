#!/usr/bin/env lua5.4
--- bench/run.lua: every tide benchmark, one table.
---
---   lua5.4 bench/run.lua [--quick] [--only row,row...]
---
--- Builds the release tree if needed (build-release, or TIDE_BUILD_DIR), then
--- runs each row in a process of its own (bench/worker.lua) and prints the
--- machine, then one table of medians: benchmark | tide | floor/goal | ratio.
--- Floors (raw libcurl, a bare Lua coroutine, a bare lua5.4 start) are
--- measured in the same run. --quick: fewer repetitions and 1,000 instead of
--- 10,000 sessions, for a smoke run under a minute. The raw samples of every
--- row go to <build>/bench-results.json.
---
--- Rows: http, tasks, toolloop, startup, build, turn1, render, reload,
--- scale, leak, history, mcp, limits, cluster_cache, queue, queue_scale (see the file of
--- the same name for what each measures).

-- Paths are set now; tide.core is required only after the build below.
local root, build = dofile((arg[0]:match("^(.*)/") or ".") .. "/paths.lua")()

local function sh(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local quick, only = false, nil
do
  local i = 1
  while i <= #arg do
    local a = arg[i]
    if a == "--quick" then
      quick = true
    elseif a == "--only" and arg[i + 1] then
      only = {}
      for r in arg[i + 1]:gmatch("[%w_]+") do only[r] = true end
      i = i + 1
    elseif a == "-h" or a == "--help" then
      io.stdout:write("usage: lua5.4 bench/run.lua [--quick] [--only row,row...]\n")
      os.exit(0)
    else
      io.stderr:write("bench: unknown argument ", a, "\n")
      os.exit(2)
    end
    i = i + 1
  end
end

-- ---------------------------------------------------------------- build --

local function run(cmd)
  local ok = os.execute(cmd)
  if not ok then
    io.stderr:write("bench: failed: ", cmd, "\n")
    os.exit(1)
  end
end

do
  local f = io.open(build .. "/CMakeCache.txt", "r")
  if f then
    f:close()
  else
    run(("cmake -S %s -B %s -DCMAKE_BUILD_TYPE=Release >/dev/null"):format(sh(root), sh(build)))
  end
  run(("cmake --build %s -j2 >/dev/null"):format(sh(build)))
end

local common = require "bench.common"
local core = common.core

-- -------------------------------------------------------------- machine --

local function first_line(cmd)
  local p = io.popen(cmd)
  local s = p and p:read("l") or ""
  if p then p:close() end
  return s
end

local function machine()
  local cpu, cores = "unknown CPU", 0
  for line in io.lines("/proc/cpuinfo") do
    local m = line:match("^model name%s*:%s*(.-)%s*$")
    if m and cpu == "unknown CPU" then cpu = m end
    if line:match("^processor%s*:") then cores = cores + 1 end
  end
  local kernel = (common.read("/proc/sys/kernel/osrelease") or "?"):gsub("%s+$", "")
  local curl = first_line("curl-config --version 2>/dev/null"):gsub("^libcurl ", "")
  return ("machine: %s, %d cores, Linux %s, libcurl %s, %s  [%s mode]"):format(
    cpu, cores, kernel, curl ~= "" and curl or "?", os.date("!%Y-%m-%d %H:%M UTC"), quick and "quick" or "full")
end

-- ----------------------------------------------------------------- rows --

local ROWS = {
  { "http", 180 }, { "tasks", 60 }, { "toolloop", 240 }, { "startup", 60 }, { "build", 60 },
  { "turn1", 60 }, { "render", 60 }, { "reload", 60 }, { "scale", 120 }, { "leak", 120 },
  { "history", 60 }, { "mcp", 120 }, { "limits", 150 }, { "cluster_cache", 300 }, { "queue", 120 },
  { "queue_scale", 300 },
}

local function run_row(name, limit)
  local cmd = ("%s timeout --foreground -k 5 %d lua5.4 %s %s%s"):format(common.lua_env(), limit,
    sh(root .. "/bench/worker.lua"), name, quick and " --quick" or "")
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok, _, code = p:close()
  local line = out:match("BENCH%-RESULT ([^\n]*)")
  local res = line and common.json_decode(line)
  if not res then
    return { error = ok and "no result" or (code == 124 and ("timed out after %d s"):format(limit)
      or ("exit status " .. tostring(code))) }
  end
  return res
end

io.stdout:write(machine(), "\n")
io.stdout:flush()
local started = core.hrtime()
local results, table_rows = {}, {}
for i, row in ipairs(ROWS) do
  local name, limit = row[1], row[2]
  if not only or only[name] then
    local t0 = core.hrtime()
    io.stderr:write(("bench: %2d/%d %-9s"):format(i, #ROWS, name))
    io.stderr:flush()
    local res = run_row(name, limit)
    io.stderr:write(("%6.1f s%s\n"):format((core.hrtime() - t0) / 1e9, res.error and "  FAILED" or ""))
    results[name] = res
    if res.error then
      table_rows[#table_rows + 1] = { ("%d. %s"):format(i, name), "FAILED: " .. res.error, "", "" }
    else
      for j, l in ipairs(res.lines) do
        local label = j == 1 and ("%d. %s"):format(i, l.name) or ("   " .. l.name)
        table_rows[#table_rows + 1] = { label, l.tide, l.floor, l.ratio }
      end
    end
  end
end

-- ---------------------------------------------------------------- table --

local head = { "benchmark", "tide", "floor/goal", "ratio" }
local width = {}
for c = 1, 4 do
  width[c] = utf8.len(head[c])
  for _, r in ipairs(table_rows) do width[c] = math.max(width[c], utf8.len(r[c]) or #r[c]) end
end
local function fmt(r)
  local cells = {}
  for c = 1, 4 do
    local pad = width[c] - (utf8.len(r[c]) or #r[c])
    cells[c] = c == 2 and (string.rep(" ", pad) .. r[c]) or (r[c] .. string.rep(" ", pad))
  end
  return (table.concat(cells, " | "):gsub("%s+$", ""))
end
local rule = {}
for c = 1, 4 do rule[c] = string.rep("-", width[c]) end
io.stdout:write("\n", fmt(head), "\n", table.concat(rule, "-+-"), "\n")
for _, r in ipairs(table_rows) do io.stdout:write(fmt(r), "\n") end
io.stdout:write(("\ntotal %.0f s; raw samples in %s\n"):format((core.hrtime() - started) / 1e9,
  build .. "/bench-results.json"))

local f = io.open(build .. "/bench-results.json", "w")
if f then
  f:write(common.json_encode({ machine = machine(), quick = quick, rows = results }), "\n")
  f:close()
end
local failed = false
for _, r in pairs(results) do if r.error then failed = true end end
os.exit(failed and 1 or 0)
