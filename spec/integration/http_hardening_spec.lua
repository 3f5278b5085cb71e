-- Hardening of the HTTP client (issue 20): what a caller passes never
-- becomes part of the request's framing, and running out of descriptors
-- leaves the process able to open files and connections again.
local tide = require "tide"
local core = require "tide.core"
local helpers = require "helpers"

-- The message fn(...) raises (fails when it does not raise).
local raised = require("helpers").raised

-- Calls through a field, as a caller would (an error names the function as
-- it was called then).
local function headers(t) local h = core.http_headers(t) return h end
local function request(t) local r = core.http_request(t) return r end

describe("tide.http header and request-line injection", function()
  local srv, seen
  before_each(function()
    seen = {}
    srv = assert(require("tide.testing.server").listen {
      handler = function(req)
        seen[#seen + 1] = req
        return { status = 200, body = "ok" }
      end,
    })
  end)
  after_each(function()
    srv:close()
    helpers.assert_quiet()
  end)
  local function url(p) return ("http://127.0.0.1:%d%s"):format(srv:port(), p or "/") end

  -- Every way a header name, header value or method can smuggle framing in.
  local bad_values = {
    { "1\r\nx-injected: yes", "has a CR or LF in its value" },
    { "1\nx-injected: yes", "has a CR or LF in its value" },
    { "1\rx-injected: yes", "has a CR or LF in its value" },
    { "1\0x-injected: yes", "has a NUL in its value" },
  }
  local bad_names = {
    { "x-a\r\nx-injected", "header name is not a token" },
    { "x-injected: yes\r\nx-a", "header name is not a token" },
    { "x a", "header name is not a token" },
    { "x-a:", "header name is not a token" },
    { "x-a\0", "header name is not a token" },
    { "", "header name is empty" },
  }
  local bad_methods = {
    "GET / HTTP/1.1\r\nx-injected: yes\r\n\r\nGET",
    "GET\r\nx-injected: yes",
    "PO ST",
    "GET\0",
    "",
  }

  local function assert_not_injected()
    for _, req in ipairs(seen) do
      assert.is_nil(req.headers["x-injected"], "an injected header reached the server")
    end
  end

  it("raises for a bad header in core.http_headers, naming it but not its value", function()
    for _, case in ipairs(bad_values) do
      local msg = raised(headers, { ["x-a"] = case[1] })
      assert.matches(": bad argument #1 to 'http_headers' (header 'x-a' " .. case[2] .. ")", msg, 1, true)
      assert.is_nil(msg:find("injected", 1, true), "the value is in the message")
    end
    for _, case in ipairs(bad_names) do
      local msg = raised(headers, { [case[1]] = "1" })
      assert.matches(": bad argument #1 to 'http_headers' %(" .. case[2], msg)
      assert.is_nil(msg:find("injected", 1, true), "the name is in the message")
    end
    -- a secret never shows, whichever way it is misplaced
    local key = "sk-secret-0123456789"
    assert.is_nil(raised(headers, { authorization = "Bearer " .. key .. "\n" }):find(key, 1, true))
    assert.is_nil(raised(headers, { ["Bearer " .. key] = "authorization" }):find(key, 1, true))
  end)

  it("raises for a bad header or method in a request, and none reaches the server", function()
    tide.run(function()
      for _, case in ipairs(bad_values) do
        assert.matches(": bad argument #1 to 'http_request' (header 'x-a' " .. case[2] .. ")",
          raised(request, { url = url(), headers = { ["x-a"] = case[1] } }), 1, true)
        -- tide.http passes the headers on: the same check raises
        assert.matches("(header 'x-a' " .. case[2] .. ")",
          raised(tide.http.request, { url = url(), headers = { ["x-a"] = case[1] } }), 1, true)
      end
      for _, case in ipairs(bad_names) do
        assert.matches(": bad argument #1 to 'http_request' %(" .. case[2],
          raised(request, { url = url(), headers = { [case[1]] = "1" } }))
      end
      for _, method in ipairs(bad_methods) do
        local msg = raised(request, { url = url(), method = method, body = "b" })
        assert.matches(": bad argument #1 to 'http_request' %(method ", msg)
        assert.is_nil(msg:find("injected", 1, true), "the method is in the message")
        assert.matches("bad argument #1 to '[%w_]+' %(method ",
          raised(tide.http.request, { url = url(), method = method }))
      end
      -- libcurl's URL parser refuses control bytes itself: a failure, not a raise
      local res, err = tide.http.request { url = url("/\r\nx-injected: yes") }
      assert.is_nil(res)
      assert.are.equal("BadURL", err.code)
    end)
    assert_not_injected()
    assert.are.same({}, seen)
    -- nothing is left behind by the requests that raised
    assert.are.equal(0, core.http_stats().active)
  end)

  it("raises at the caller's line, naming 'request', and sends nothing", function()
    -- The checks of core.http_request ran inside the request's task: the
    -- error named 'http_request' at a line of tide/http.lua, and a URL
    -- went out cut at its first NUL.
    local here = debug.getinfo(1, "S").short_src
    local function call(opts)
      local ok, err = pcall(function() local r = tide.http.request(opts) return r end)
      assert.is_false(ok)
      return err
    end
    tide.run(function()
      for _, case in ipairs {
        { { url = url(), method = "GET\r\nx-injected: yes" }, "(method is not a token (it has a CR or LF))" },
        { { url = url(), method = "" }, "(method is empty)" },
        { { url = url(), headers = { ["x-a"] = "1\r\nx-injected: yes" } }, "(header 'x-a' has a CR or LF in its value)" },
        { { url = url(), headers = { ["x-a"] = "1\0x-injected: yes" } }, "(header 'x-a' has a NUL in its value)" },
        { { url = url(), headers = { ["x a"] = "1" } }, "(header name is not a token (it has white space))" },
        { { url = url("/a\0/injected") }, "(field 'url' has a NUL)" },
        { { url = url(), timeout_ms = 1e300 }, "(field 'timeout_ms' must be a non-negative number up to 2^53, got 1e+300)" },
        { { url = url(), max_body_bytes = 2 ^ 63 }, "(field 'max_body_bytes' must be a non-negative number up to 2^53" },
      } do
        local msg = call(case[1])
        assert.matches("^" .. here:gsub("%p", "%%%0") .. ":%d+: bad argument #1 to 'request' ", msg)
        assert.is_truthy(msg:find(case[2], 1, true), msg)
        assert.is_nil(msg:find("injected", 1, true), "the value is in the message")
      end
      -- the largest counts still go through
      assert.are.equal(200, tide.http.request { url = url(), timeout_ms = 2 ^ 53, max_body_bytes = 2 ^ 53 }.status)
    end)
    assert_not_injected()
    assert.are.equal(1, #seen)
    assert.are.equal(0, core.http_stats().active)
  end)

  it("still sends good headers and methods, including every token character", function()
    local name = "x-!#$%&'*+.^_`|~09AZaz"
    local res = tide.http.request { url = url("/p"), method = "PATCH", body = "b",
      headers = { [name] = "v\tw é", ["x-n"] = 5 } }
    assert.are.equal(200, res.status)
    local got = seen[1]
    assert.are.equal("PATCH", got.method)
    assert.are.equal("v\tw é", got.headers[name:lower()])
    assert.are.equal("5", got.headers["x-n"])
    local h = core.http_headers { ["x-prepared"] = "yes" }
    local status = tide.run(function()
      local req <close> = core.http_post(url("/post"), h, "{}", 5000, 1024, false)
      local _, s = req:next()
      return s
    end)
    assert.are.equal(200, status)
    assert.are.equal("yes", seen[2].headers["x-prepared"])
    assert_not_injected()
  end)

  it("rejects an API key or extra header with a stray newline when a provider is made", function()
    local key = "sk-secret-0123456789"
    for _, kind in ipairs { "openai", "anthropic" } do
      local make = tide.provider[kind]
      local msg = raised(make, { api_key = key .. "\n" })
      assert.matches("tide.provider." .. kind .. ": 'api_key' must not contain a CR, LF or NUL", msg, 1, true)
      assert.is_nil(msg:find(key, 1, true), "the key is in the message")
      msg = raised(make, { api_key = key, headers = { ["x-org"] = "o\r\nx-injected: yes" } })
      assert.matches("tide.provider." .. kind .. ": 'headers': header 'x-org' has a CR or LF in its value",
        msg, 1, true)
      msg = raised(make, { api_key = key, headers = { ["x org"] = "o" } })
      assert.matches("tide.provider." .. kind .. ": 'headers': header name is not a token", msg, 1, true)
      -- a good one still sends its headers (the reply is no model's: only
      -- what the server saw counts)
      local p = make { api_key = key, base_url = url(), stream = false, retry = { attempts = 1 },
        headers = { ["x-org"] = "o" } }
      p:complete(p:body(p:encode_prefix("terse", {}), { p:encode_message { role = "user", content = "hi" } }))
      assert.are.equal("o", seen[#seen].headers["x-org"])
    end
    assert.are.equal(2, #seen)
    assert_not_injected()
  end)
end)

-- Runs Lua source `src` as a process of its own on this build, after the
-- shell words `prefix` (a ulimit, env assignments); returns the popen'ed
-- file of its output (mode "r") for the caller to read and close.
local function start_process(prefix, src)
  local script = os.tmpname()
  helpers.write(script, src)
  local build = os.getenv("TIDE_BUILD_DIR") or "build"
  local p = io.popen(("%s LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' ASAN_OPTIONS=detect_leaks=0 "
    .. "lua5.4 %s 2>&1; rm -f %s"):format(prefix, build, script, script))
  return p
end

describe("tide.http after the descriptors ran out", function()
  it("keeps few idle connections, and lets them go once a transfer hits FdLimit", function()
    -- The server is a process of its own, as a provider would be: it must
    -- not share the client's descriptor table. It answers /slow late, so
    -- that a batch is in flight all at once, and stops on /quit (or after a
    -- minute, should the spec fail before it asks).
    local server = start_process("", [[
local tide = require "tide"
local quit = false
local srv = assert(require("tide.testing.server").listen { handler = function(req)
  if req.path == "/quit" then quit = true end
  return { status = 200, body = "x", delay_ms = req.path == "/slow" and 300 or 0 }
end })
io.write(srv:port(), "\n")
io.stdout:flush()
tide.run(function()
  for _ = 1, 3000 do
    if quit then break end
    tide.sleep(20)
  end
end)
srv:close()
]])
    local port = assert(tonumber(server:read("l")), "the server did not start")
    local client = start_process("ulimit -n 256;", ([[
local tide = require "tide"
require "tide.http" -- loaded before the descriptors run out
local url = "http://127.0.0.1:%d"
-- How many more descriptors the process can open now (closed again).
local function free()
  local files = {}
  while true do
    local f = io.open("/dev/null")
    if not f then break end
    files[#files + 1] = f
  end
  for _, f in ipairs(files) do f:close() end
  return #files
end
local function batch(n)
  local ts, seen = {}, {}
  for i = 1, n do
    ts[i] = tide.spawn(function()
      local r, e = tide.http.request { url = url .. "/slow" }
      return r and "ok" or e.code
    end)
  end
  for i = 1, n do local c = ts[i]:join(); seen[c] = (seen[c] or 0) + 1 end
  return seen
end
tide.run(function()
  -- HTTP started first: a libcurl multi handle holds two descriptors of its
  -- own (a wake-up socket pair), a second shard two more
  assert(tide.http.request { url = url .. "/" })
  local base = free()
  -- 150 connections at once, all of them fine: no more than 64 stay open
  -- (half the limit, less a reserve of 64)
  local small = batch(150)
  io.write("small ok=", small.ok or 0, " held=", base - free(), "\n")
  -- 1,000 at once: some fail with FdLimit; then every idle one is let go
  local big = batch(1000)
  io.write("big ", (big.FdLimit or 0) > 0 and "FdLimit" or "none", " ", (big.ok or 0) > 0 and "ok" or "none",
    " held=", base - free(), "\n")
  local path = os.tmpname()
  local f, err = io.open(path, "w")
  io.write("open ", f and "ok" or tostring(err), "\n")
  if f then f:close() end
  os.remove(path)
  local ok, msg = pcall(require, "tide.prompts")
  io.write("require ", ok and "ok" or msg:match("[^\n]*"), "\n")
  local r, e = tide.http.request { url = url .. "/" }
  io.write("request ", r and r.body or tostring(e), "\n")
end)
]]):format(port))
    local out = client:read("a")
    client:close()
    tide.http.request { url = ("http://127.0.0.1:%d/quit"):format(port) }
    server:read("a")
    server:close()
    local held_small = tonumber(out:match("small ok=150 held=(%-?%d+)"))
    assert.is_number(held_small, out)
    assert.is_true(held_small <= 64 + 2, out) -- 149 when every connection stays

    local held_big = tonumber(out:match("\nbig FdLimit ok held=(%-?%d+)\n"))
    assert.is_number(held_big, out)
    assert.is_true(held_big <= 2 + 2, out) -- 64 when the idle ones stay
    assert.matches("\nopen ok\nrequire ok\nrequest x\n$", out)
  end)
end)

describe("an API key from the environment", function()
  it("is checked like the option, naming the variable and never the key", function()
    local out = io.popen([[OPENAI_API_KEY="$(printf 'sk-env-secret\r')" LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH=']]
      .. (os.getenv("TIDE_BUILD_DIR") or "build") .. [[/?.so;;' ASAN_OPTIONS=detect_leaks=0 lua5.4 -e '
local ok, err = pcall(require("tide").provider.openai, {})
io.write(tostring(ok), " ", tostring(err))' 2>&1]]):read("a")
    assert.matches("^false ", out)
    assert.matches("OPENAI_API_KEY must not contain a CR, LF or NUL", out, 1, true)
    assert.is_nil(out:find("sk-env-secret", 1, true))
  end)

  it("is Azure's own at an Azure resource, sent as api-key, never OpenAI's", function()
    local out = io.popen([[OPENAI_API_KEY=sk-openai-secret AZURE_OPENAI_API_KEY=az-key LUA_PATH='lua/?.lua;lua/?/init.lua;;' ]]
      .. [[LUA_CPATH=']] .. (os.getenv("TIDE_BUILD_DIR") or "build") .. [[/?.so;;' ASAN_OPTIONS=detect_leaks=0 lua5.4 -e '
local openai = require("tide").provider.openai
for _, url in ipairs { "https://my-res.openai.azure.com/openai/v1", "https://x.cognitiveservices.azure.com/openai",
                       "https://y.services.ai.azure.com/openai/v1", "https://api.openai.com/v1" } do
  local h = openai({ base_url = url, api = url:find("services") and "responses" or nil }):_headers()
  io.write(url, " ", tostring(h["api-key"]), " ", tostring(h.authorization), "\n")
end
local h = openai({ base_url = "https://my-res.openai.azure.com/openai/v1", api_key = "given" }):_headers()
io.write("given ", tostring(h["api-key"]), " ", tostring(h.authorization), "\n")' 2>&1]]):read("a")
    assert.are.equal(table.concat({
      "https://my-res.openai.azure.com/openai/v1 az-key nil",
      "https://x.cognitiveservices.azure.com/openai az-key nil",
      "https://y.services.ai.azure.com/openai/v1 az-key nil",
      "https://api.openai.com/v1 nil Bearer sk-openai-secret",
      "given given nil", "" }, "\n"), out)
  end)

  it("is never another service's: Azure without its own variable sends none", function()
    local out = io.popen([[OPENAI_API_KEY=sk-openai-secret ANTHROPIC_API_KEY=sk-ant-secret LUA_PATH='lua/?.lua;lua/?/init.lua;;' ]]
      .. [[LUA_CPATH=']] .. (os.getenv("TIDE_BUILD_DIR") or "build") .. [[/?.so;;' ASAN_OPTIONS=detect_leaks=0 lua5.4 -e '
local p = require("tide").provider
local h = p.openai({ base_url = "https://my-res.openai.azure.com/openai/v1" }):_headers()
io.write(tostring(h["api-key"]), " ", tostring(h.authorization), "\n")
h = p.anthropic({ base_url = "https://my-res.services.ai.azure.com/anthropic/v1" }):_headers()
io.write(tostring(h["api-key"]), " ", tostring(h["x-api-key"]), "\n")' 2>&1]]):read("a")
    assert.are.equal("nil nil\nnil nil\n", out)
  end)

  it("is Foundry's own for Claude on Microsoft Foundry, sent as x-api-key and api-key", function()
    local out = io.popen([[ANTHROPIC_API_KEY=sk-ant-secret ANTHROPIC_FOUNDRY_API_KEY=fd-key LUA_PATH='lua/?.lua;lua/?/init.lua;;' ]]
      .. [[LUA_CPATH=']] .. (os.getenv("TIDE_BUILD_DIR") or "build") .. [[/?.so;;' ASAN_OPTIONS=detect_leaks=0 lua5.4 -e '
local anthropic = require("tide").provider.anthropic
for _, url in ipairs { "https://my-res.services.ai.azure.com/anthropic/v1", "https://api.anthropic.com/v1" } do
  local h = anthropic({ base_url = url }):_headers()
  io.write(tostring(h["x-api-key"]), " ", tostring(h["api-key"]), "\n")
end' 2>&1]]):read("a")
    assert.are.equal("fd-key fd-key\nsk-ant-secret nil\n", out)
  end)
end)
