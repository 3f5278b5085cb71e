--- Row 12: an MCP tools/call round trip (server-everything's echo tool, one
--- call at a time), over stdio and over Streamable HTTP: tide's client
--- beside the official TypeScript SDK's client against the same server.
--- The server is the same Node.js program on both sides, so the ratio shows
--- what each client adds. Needs the npm test peers (./dev test installs
--- them in $TIDE_NPM_DIR).
local common = require "bench.common"
local tide = require "tide"
local core = require "tide.core"

local npm = os.getenv("TIDE_NPM_DIR") or ((os.getenv("HOME") or "") .. "/.cache/tide-npm")
local EVERYTHING = npm .. "/node_modules/@modelcontextprotocol/server-everything/dist/index.js"

local function sdk(args)
  local out = common.capture(("NODE_PATH=%s node %s %s 2>/dev/null"):format(common.sh(npm .. "/node_modules"),
    common.sh(common.bench .. "/mcp_sdk.cjs"), args))
  local r = common.json_decode(out:match("{.*}") or "")
  if not r then error("the SDK client printed: " .. out) end
  return r.us_per_call
end

local function tide_us(src, n)
  return tide.run(function()
    assert(src:fetch())
    for _ = 1, 50 do assert(src:execute("echo", { message = "warm" })) end
    local t0 = common.hrtime()
    for _ = 1, n do assert(src:execute("echo", { message = "hello" })) end
    return (common.hrtime() - t0) / 1e3 / n
  end)
end

local function line(label, t, s)
  return common.line(label, common.num(t) .. " us", "official TS SDK client " .. common.num(s) .. " us; goal: faster",
    ("%s%s"):format(common.x(t / s), t < s and " ok" or " MISSED"), { tide = t, sdk = s })
end

return function()
  local f = io.open(EVERYTHING)
  if not f then
    return { common.line("MCP tools/call round trip", "skipped", "npm peers not installed (./dev test installs them)", "") }
  end
  f:close()
  local n = common.reps(1000, 200)
  local reps = common.reps(3, 1)
  local lines = {}
  -- stdio: each client starts its own server process
  local ts, ss = {}, {}
  for i = 1, reps do
    local src = tide.integrations.mcp { name = "everything", command = { "node", EVERYTHING, "stdio" }, timeout_ms = 20000 }
    ts[i] = tide_us(src, n)
    src:close()
    ss[i] = sdk(("stdio %d -- node %s stdio"):format(n, common.sh(EVERYTHING)))
  end
  lines[#lines + 1] = line("MCP tools/call round trip, stdio", common.median(ts), common.median(ss))
  -- Streamable HTTP: one server on loopback for both clients
  local port = 21000 + math.random(0, 9000)
  local proc = assert(core.process_spawn { argv = { "node", EVERYTHING, "streamableHttp" },
    env = { PATH = os.getenv("PATH"), HOME = os.getenv("HOME"), PORT = tostring(port) } })
  local ok, err = pcall(function()
    tide.run(function()
      for _ = 1, 400 do
        if proc:stderr():find("listening", 1, true) then return end
        tide.sleep(25)
      end
      error("the HTTP server did not start")
    end)
    local url = ("http://127.0.0.1:%d/mcp"):format(port)
    local th, sh_ = {}, {}
    for i = 1, reps do
      local src = tide.integrations.mcp { name = "remote", url = url, timeout_ms = 20000 }
      th[i] = tide_us(src, n)
      src:close()
      sh_[i] = sdk(("http %d %s"):format(n, common.sh(url)))
    end
    lines[#lines + 1] = line("MCP tools/call round trip, Streamable HTTP", common.median(th), common.median(sh_))
  end)
  tide.run(function() proc:close(2000) end)
  if not ok then error(err, 0) end
  return lines
end
