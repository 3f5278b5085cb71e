-- bin/tide-mock, the mock provider standalone: a real lua5.4 process on
-- loopback that real sessions talk to, its flags, and how it ends.
local helpers = require "helpers"

describe("bin/tide-mock", function()
  local tide = require "tide"
  local core = require "tide.core"
  local build = os.getenv("TIDE_BUILD_DIR") or "build"
  -- (bin/tide-mock takes its build tree from TIDE_BUILD_DIR, which
  -- child_env passes on: under the sanitizers the mock runs their build)
  local env = helpers.child_env { LUA_PATH = os.getenv("LUA_PATH") or "lua/?.lua;lua/?/init.lua;;",
    LUA_CPATH = build .. "/?.so;;", ASAN_OPTIONS = "detect_leaks=0" }

  -- Inside a task: bin/tide-mock started with `args`, and the URL it says
  -- it listens on. The caller kills it; `pids` gets its pid, for the
  -- spec's finally to kill it should the spec fail first.
  local function start(args, pids)
    local argv = { "lua5.4", "bin/tide-mock" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local p = assert(core.process_spawn { argv = argv, env = env })
    pids[#pids + 1] = p:pid()
    local line = p:read_line(10000)
    local url = line and line:match("^listening on (http://127%.0%.0%.1:%d+)$")
    assert.is_string(url, ("no URL from tide-mock: %s %s"):format(tostring(line), p:stderr()))
    return p, url
  end

  local function kill_all(pids)
    for _, pid in ipairs(pids) do os.execute(("kill -9 %d 2>/dev/null"):format(pid)) end
  end

  local function providers_of(url)
    local shapes = {}
    for _, stream in ipairs { true, false } do
      shapes[#shapes + 1] = { "openai" .. (stream and " streaming" or ""), tide.provider.openai {
        base_url = url .. "/v1", api_key = "k", model = "m", stream = stream } }
      shapes[#shapes + 1] = { "anthropic" .. (stream and " streaming" or ""), tide.provider.anthropic {
        base_url = url .. "/v1", api_key = "k", model = "m", stream = stream } }
    end
    return shapes
  end

  it("runs a session's tool loop, both wire formats, streamed or not, and ends on SIGTERM", function()
    local pids = {}
    finally(function() kill_all(pids) end)
    local asked = {}
    tide.agent { id = "mockcmd", prompt = "You look things up.", tools = { tide.tool {
      name = "lookup", description = "Looks a thing up.",
      parameters = { type = "object", properties = { q = { type = "string" } }, required = { "q" } },
      handler = function(args)
        asked[#asked + 1] = args.q
        return "found " .. args.q
      end } } }
    helpers.run(function()
      local p, url = start({ "--port", "0", "--tool-loop", "2" }, pids)
      for _, shape in ipairs(providers_of(url)) do
        asked = {}
        local s = tide.session { agent = "mockcmd", provider = shape[2] }
        local deltas = {}
        local reply, err = s:turn("look two things up", { on_delta = function(d) deltas[#deltas + 1] = d end })
        assert.equal("done after 2 lookups", reply, shape[1] .. ": " .. tostring(err))
        assert.same({ "item 1", "item 2" }, asked, shape[1])
        local st = s:stats()
        assert.equal(3, st.provider_calls, shape[1])
        assert.equal(2, st.tool_calls, shape[1])
        assert.equal("done after 2 lookups", table.concat(deltas), shape[1])
        -- the tool results reached it: the last request held both
        assert.equal("found item 2", s:history()[5].results[1].content, shape[1])
      end
      -- its OTLP route takes spans as a collector does
      local r = assert(tide.http.request { method = "POST", url = url .. "/v1/traces", body = "\0\1",
        headers = { ["content-type"] = "application/x-protobuf" } })
      assert.equal(200, r.status)
      assert.equal("application/x-protobuf", r.headers["content-type"])
      assert.equal("", r.body)
      -- serves until killed
      assert.is_nil(p:status())
      assert(p:kill("TERM"))
      local status, signal = p:wait(10000)
      assert.equal(0, status)
      assert.equal(15, signal)
      p:close()
    end)
  end)

  it("echoes without --tool-loop, waits --delay-ms, and says when its port is taken", function()
    local pids = {}
    finally(function() kill_all(pids) end)
    tide.agent { id = "mockecho", prompt = "You echo." }
    helpers.run(function()
      local p, url = start({ "--delay-ms", "200" }, pids)
      for _, shape in ipairs(providers_of(url)) do
        local s = tide.session { agent = "mockecho", provider = shape[2] }
        assert.equal("echo: say this back", s:turn("say this back"), shape[1])
        -- a lower bound only, and half the delay: the two processes' clocks
        -- round apart (149.7 ms was seen for 150)
        assert.is_true(s:stats().ttfb_ms >= 100, shape[1] .. ": " .. s:stats().ttfb_ms)
      end
      -- a second one on the same port fails with ListenFailed, exit 1
      local port = url:match(":(%d+)$")
      local q = assert(core.process_spawn { argv = { "lua5.4", "bin/tide-mock", "--port", port }, env = env })
      pids[#pids + 1] = q:pid()
      assert.equal(1, q:wait(10000))
      assert.is_nil(q:read_line(1000)) -- it never said it listens
      assert.matches("tide-mock: ListenFailed: cannot listen on 127.0.0.1 port " .. port
        .. ": address already in use", q:stderr(), 1, true)
      q:close()
      p:close(0)
    end)
  end)

  it("refuses a bad flag with exit 2, a message naming it and the usage; --help prints the usage", function()
    local usage = "usage: tide-mock [--port N] [--delay-ms N] [--tool-loop N] [--record]"
    -- stdout, stderr and the exit status of tide-mock run with `args`
    -- (`timeout`: a flag taken by mistake would serve until killed)
    local function run(args)
      local errf = os.tmpname()
      local out = helpers.sh(("ASAN_OPTIONS=detect_leaks=0 timeout 10 lua5.4 bin/tide-mock %s 2>%s; echo \"status $?\"")
        :format(args, errf))
      local err = helpers.read(errf)
      os.remove(errf)
      local status = tonumber(out:match("status (%d+)%s*$"))
      return out:gsub("status %d+%s*$", ""), err, status
    end
    for _, case in ipairs {
      { "--bogus", "unknown argument --bogus" },
      { "extra", "unknown argument extra" },
      { "--port", "--port needs a non-negative integer" },
      { "--port -1", "--port needs a non-negative integer" },
      { "--port=abc", "--port needs a non-negative integer" },
      { "--port 0x10", "--port needs a non-negative integer" }, -- (tonumber would take it)
      { "--delay-ms 1e3", "--delay-ms needs a non-negative integer" },
      { "--port 70000", "--port must be at most 65535" },
      { "--delay-ms 1.5", "--delay-ms needs a non-negative integer" },
      { "--tool-loop x", "--tool-loop needs a non-negative integer" },
      { "--record=yes", "--record takes no value" },
    } do
      local out, err, status = run(case[1])
      assert.equal(2, status, case[1])
      assert.equal("", out, case[1])
      assert.equal("tide-mock: " .. case[2] .. "\n" .. usage .. "\n", err, case[1])
    end
    for _, flag in ipairs { "--help", "-h" } do
      local out, err, status = run(flag)
      assert.equal(0, status, flag)
      assert.equal(usage .. "\n", out, flag)
      assert.equal("", err, flag)
    end
  end)
end)
