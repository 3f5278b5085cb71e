-- Loaded by busted before any spec (see .busted): puts the build on the
-- C path and offers the helpers specs share.
local build = os.getenv("TIDE_BUILD_DIR") or "build"
package.cpath = build .. "/?.so;" .. package.cpath

local helpers = {}

-- How long a spec's run may take before it is taken for a hang: far
-- above the slowest spec under the sanitizers, far below CI's limit.
local HANG_MS = 300000

--- Runs fn as the root task; raises its error, returns its results. A run
--- still going after HANG_MS is cancelled and fails naming the hang (the
--- tasks it left are then cancelled too: tide.run ends a failed program),
--- so that one spec that hangs fails alone instead of stalling the suite.
function helpers.run(fn, ...)
  local tide = require "tide"
  return tide.run(function(...)
    local root, hung = tide.current(), false
    local dog = tide.spawn(function()
      tide.sleep(HANG_MS)
      hung = true
      root:cancel()
    end)
    local r = table.pack(pcall(fn, ...))
    dog:cancel()
    if hung then error(("the spec's run was still going after %d ms (a hang?)"):format(HANG_MS), 0) end
    if not r[1] then error(r[2], 0) end
    return table.unpack(r, 2, r.n)
  end, ...)
end

--- Inside a task: sleeps until cond() is true, raising once `ms` (default
--- 5,000) have passed, so that a spec whose awaited event never comes fails
--- instead of hanging the suite.
function helpers.wait_until(cond, what, ms)
  local core = require "tide.core"
  local deadline = core.hrtime() + (ms or 5000) * 1e6
  while not cond() do
    if core.hrtime() > deadline then error("timed out waiting for " .. what, 2) end
    require("tide").sleep(1)
  end
end

--- The environment for a child lua5.4 of a spec: `vars`, plus what the
--- sanitizer build needs to load the module there (LD_PRELOAD and the
--- sanitizers' options) and PATH, HOME, PWD.
function helpers.child_env(vars)
  local env = {}
  for _, k in ipairs { "PATH", "HOME", "PWD", "LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "TIDE_BUILD_DIR" } do
    env[k] = os.getenv(k)
  end
  for k, v in pairs(vars or {}) do env[k] = v end
  return env
end

--- The folder the npm test peers are installed in (./dev test installs
--- them, pinned), and the path of one of their files.
helpers.NPM = os.getenv("TIDE_NPM_DIR") or ((os.getenv("HOME") or "/tmp") .. "/.cache/tide-npm")
function helpers.npm(path) return helpers.NPM .. "/node_modules/" .. path end

--- Inside a task: `node script args...` serving on a free port, tried on
--- up to five ports (another spec may hold one): `env_of(port)` gives the
--- variables that tell it the port, `ready(proc)` says it listens. Returns
--- the process and its port.
function helpers.node_server(script, args, env_of, ready)
  local core = require "tide.core"
  for _ = 1, 5 do
    local port = 20000 + math.random(0, 12000)
    local env = { PATH = os.getenv("PATH"), HOME = os.getenv("HOME") }
    for k, v in pairs(env_of(port)) do env[k] = v end
    local argv = { "node", script }
    for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
    local proc = assert(core.process_spawn { argv = argv, env = env })
    helpers.wait_until(function() return proc:status() ~= nil or ready(proc) end, script .. " to listen", 20000)
    if not proc:status() then return proc, port end
    proc:close(2000)
  end
  error("could not start " .. script .. " on a free port", 2)
end

--- The OTLP receiver built on the official OpenTelemetry JS decoders
--- (spec/support/otlp_receiver.cjs): answering every export with
--- `fail_status` when given, or only the first `fail_count`; with
--- `partial`, "n:why", a partial success refusing n spans. Returns its URL
--- and a function that stops it.
function helpers.otlp_receiver(fail_status, fail_count, partial)
  local portfile = os.tmpname()
  os.remove(portfile)
  local pidfile = os.tmpname()
  os.execute(("NODE_PATH=%s/node_modules node spec/support/otlp_receiver.cjs %s '%s' '%s' '%s' >/dev/null 2>&1 & "
    .. "echo $! > %s"):format(helpers.NPM, portfile, fail_status or "", fail_count or "", partial or "", pidfile))
  local port
  for _ = 1, 500 do
    local f = io.open(portfile)
    if f then port = f:read("n"); f:close() end
    if port then break end
    os.execute("sleep 0.02")
  end
  local pid = io.open(pidfile):read("n")
  os.remove(pidfile)
  assert(port, "the OTLP receiver did not start (is " .. helpers.NPM .. " installed? ./dev test installs it)")
  return "http://127.0.0.1:" .. port, function()
    os.execute("kill " .. pid .. " 2>/dev/null")
    os.remove(portfile)
  end
end

--- Calls fn(...), which must raise; the error as a string.
function helpers.raised(fn, ...)
  local ok, err = pcall(fn, ...)
  -- busted's assert is the spec's, not this file's global
  require("luassert").is_false(ok, "expected an error")
  return tostring(err)
end

--- Runs fn(srv) inside tide.run with a mock provider server of `opts`
--- (tide.testing.mock_server), closed after, whatever fn did.
function helpers.with_mock(opts, fn)
  return helpers.run(function()
    local srv <close> = assert(require("tide.testing").mock_server(opts))
    fn(srv)
  end)
end

--- A path for a transcript that does not exist yet (the caller removes it).
function helpers.tmp_transcript()
  local path = os.tmpname()
  os.remove(path)
  return path .. ".jsonl"
end

--- A fresh temporary directory (removed by helpers.rmdir).
function helpers.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p " .. p))
  return p
end

function helpers.rmdir(p)
  if p and p:match("^/tmp/") then os.execute("rm -rf " .. p) end
end

function helpers.write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

--- A new temporary file holding `text`; its path (the caller removes it).
function helpers.tmpfile(text)
  local path = os.tmpname()
  helpers.write(path, text)
  return path
end

--- Runs a shell command; its output, stderr included.
function helpers.sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  p:close()
  return out
end

--- The lines of a file (none when it does not exist yet).
function helpers.lines_of(path)
  local out = {}
  local f = io.open(path)
  if not f then return out end
  for l in f:lines() do out[#out + 1] = l end
  f:close()
  return out
end

function helpers.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- The Lua prompt normalise that one C pass (core.template_normalise)
--- replaced: its output is the contract, byte for byte.
function helpers.normalise_reference(text)
  text = text:gsub("\r\n", "\n"):gsub("[ \t]+\n", "\n"):gsub("\n\n\n+", "\n\n")
  return (text:gsub("^%s+", ""):gsub("%s+$", ""))
end

--- Asserts that no task is left alive and no handle is active on the loop.
function helpers.assert_quiet()
  local assert = require "luassert"
  local core = require "tide.core"
  collectgarbage()
  local st = core.loop_stats()
  assert.are.equal(0, st.live_tasks, "tasks left alive")
  assert.are.equal(0, st.ready_tasks, "tasks left ready")
  assert.are.equal(0, st.active_handles, "handles left active")
end

--- Runs fn() with the waits of retry `policies` (tide.provider.base._fetch's,
--- e.g. tide.provider.aws.retry) cut to a millisecond, restored after: the
--- specs count the tries, not the seconds between them.
function helpers.quick_retries(policies, fn)
  local saved = {}
  for name, p in pairs(policies) do saved[name] = p.delay_ms; p.delay_ms = 1 end
  local ok, err = pcall(fn)
  for name, p in pairs(policies) do p.delay_ms = saved[name] end
  if not ok then error(err, 0) end
end

--- base64url (RFC 4648's URL alphabet, padding or not), decoded: a JWT's
--- parts read back, written apart from the code under test.
function helpers.base64url_decode(s)
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
  local bits = s:gsub("=", ""):gsub(".", function(c)
    local v = alphabet:find(c, 1, true) - 1
    local b = ""
    for i = 5, 0, -1 do b = b .. ((v >> i) & 1) end
    return b
  end)
  -- whole bytes only: the padding bits of the last character are dropped
  -- (not by a pattern on the result, whose own last bytes may be "0" or "1")
  bits = bits:sub(1, #bits - #bits % 8)
  return (bits:gsub("%d%d%d%d%d%d%d%d", function(byte) return string.char(tonumber(byte, 2)) end))
end

--- The fields of an application/x-www-form-urlencoded body, decoded.
function helpers.form_fields(body)
  local out = {}
  for k, v in (body or ""):gmatch("([^&=]+)=([^&]*)") do
    out[k] = v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  end
  return out
end

--- A mock route that answers the responses of `list` in turn (the last one
--- from then on), counting the requests in `list.seen`.
function helpers.answers(list)
  list.seen = 0
  return function()
    list.seen = list.seen + 1
    return list[math.min(list.seen, #list)]
  end
end

package.loaded["helpers"] = helpers

--- A provider made by `make(opts)` while the environment providers read
--- (tide.provider.base's `_env`) is `vars` alone: what the credential chains
--- it sets up will read later. Raises what `make` raised.
function helpers.provider_in_env(vars, make, opts)
  local base = require "tide.provider.base"
  local real = base._env
  base._env = function(name) return vars[name] end
  local ok, p = pcall(make, opts)
  base._env = real
  if not ok then error(p, 2) end
  return p
end

return helpers
