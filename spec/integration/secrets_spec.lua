-- API keys never leak: not into a transcript, an error (its message, body,
-- any field, its tostring), an on_retry report, an event, s:stats(), a
-- provider's tostring, the conversation sent back to the model, or the chat's
-- output; not even when a server echoes the request (headers and all) back
-- in its answer. Every case drives a real loopback server, collects all it
-- can see, and scans it for the keys at the end.
local tide = require "tide"
local testing = require "tide.testing"
local server = require "tide.testing.server"
local composio_mock = require "tide.testing.composio"
local demo = require "tide.testing.demo"
local cache = require "tide.integrations.cache"
local errors = require "tide.provider.errors"
local helpers = require "helpers"
local cjson = require("cjson").new()

-- Each key holds a "/", which JSON encoders (cjson, tide.json) escape as
-- "\/": an echoed key is then not the key's bytes.
local KEYS = {
  openai = "sk-test-SECRET-1234567890/abcdefOPENAI",
  anthropic = "sk-ant-SECRET-0987654321/fedcbaANTHROPIC",
  composio = "ck-test-SECRET-1357924680/acebdfCOMPOSIO",
}

-- What must never be seen: each key, raw and JSON-escaped, its last 12
-- bytes, and each of its halves.
local NEEDLES = {}
for name, key in pairs(KEYS) do
  local escaped = key:gsub("/", "\\/")
  for _, text in ipairs { key, escaped, key:sub(-12), escaped:sub(-12), key:match("^(.-)/"), key:match("/(.*)$") } do
    NEEDLES[#NEEDLES + 1] = { key = name, text = text }
  end
end

local REDACTED = "[redacted]"

-- --------------------------------------------------------------- collecting

local seen -- { where, text } of everything a case saw

local function see(where, text)
  seen[#seen + 1] = { where = where, text = text }
end

-- Every string in v (keys too), however deep, tables visited once.
local function walk(where, v, visited)
  visited = visited or {}
  if type(v) == "string" then
    see(where, v)
  elseif type(v) == "table" and not visited[v] then
    visited[v] = true
    for k, x in pairs(v) do
      if type(k) == "string" then see(where .. " (a key)", k) end
      walk(where .. "." .. tostring(k), x, visited)
    end
  end
end

local function see_error(where, err)
  see(where .. " tostring", tostring(err))
  walk(where, err)
end

local function see_file(where, path)
  local text = helpers.read(path)
  assert.is_string(text, "no file " .. path)
  see(where, text)
end

local function see_dir(where, dir)
  local n = 0
  for f in io.popen("ls " .. dir):lines() do
    see_file(where .. "/" .. f, dir .. "/" .. f)
    n = n + 1
  end
  return n
end

-- The event sink of a turn: every event, walked as it comes.
local function sink(where)
  local types = {}
  return function(ev)
    types[ev.type] = (types[ev.type] or 0) + 1
    walk(where .. " event " .. tostring(ev.type), ev)
  end, types
end

-- Raises naming where a key was seen, with the bytes around it.
local function assert_clean()
  assert.is_true(#seen > 0, "nothing was collected")
  for _, s in ipairs(seen) do
    for _, n in ipairs(NEEDLES) do
      local at = s.text:find(n.text, 1, true)
      if at then
        error(("the %s key leaks into %s: ...%s..."):format(n.key, s.where,
          s.text:sub(math.max(1, at - 60), at + #n.text + 20)), 2)
      end
    end
  end
end

-- Proof that a case is not vacuous: the key reached the error and was cut out.
local function assert_redacted(err, what)
  local text = tostring(err.message) .. " " .. tostring(err.body)
  assert.truthy(text:find(REDACTED, 1, true), what .. ": no " .. REDACTED .. " in " .. text)
end

-- ------------------------------------------------------------ echo answers

-- The request's credentials, as the server saw them.
local function credential(req)
  return req.headers.authorization or req.headers["x-api-key"] or "(none)"
end

local function header_lines(req)
  local names = {}
  for k in pairs(req.headers) do names[#names + 1] = k end
  table.sort(names)
  local out = {}
  for i, k in ipairs(names) do out[i] = k .. ": " .. req.headers[k] end
  return table.concat(out, "\n")
end

-- A provider-shaped JSON error that quotes the credential in its message
-- and echoes every header.
local function json_error(kind, req, message)
  message = message or ("invalid credentials: " .. credential(req))
  if kind == "anthropic" then
    return cjson.encode { type = "error", error = { type = "authentication_error", message = message },
      request = { headers = req.headers } }
  end
  return cjson.encode { error = { message = message, type = "invalid_request_error", code = 401 },
    request = { headers = req.headers } }
end

local JSON = { ["content-type"] = "application/json" }
local SSE = { ["content-type"] = "text/event-stream" }

-- The answers of the echo server, by case: each a function(kind, req).
local ANSWERS = {
  ["401 JSON"] = function(kind, req) return { status = 401, headers = JSON, body = json_error(kind, req) } end,
  ["403 plain text"] = function(_, req)
    return { status = 403, headers = { ["content-type"] = "text/plain" }, body = "forbidden\n" .. header_lines(req) }
  end,
  ["500 JSON"] = function(kind, req) return { status = 500, headers = JSON, body = json_error(kind, req) } end,
  ["429 JSON"] = function(kind, req)
    return { status = 429, headers = { ["content-type"] = "application/json", ["retry-after"] = "0" },
      body = json_error(kind, req) }
  end,
  -- the credential straddles the cut of the body excerpt
  ["400 cut body"] = function(_, req)
    local line = "authorization seen: " .. credential(req)
    return { status = 400, headers = { ["content-type"] = "text/plain" },
      body = string.rep("x", errors.BODY_MAX - #line + 12) .. line .. "\n" .. header_lines(req) }
  end,
  -- the credential straddles the cut of the message excerpt
  ["400 cut message"] = function(kind, req)
    local line = "credential " .. credential(req)
    return { status = 400, headers = JSON,
      body = json_error(kind, req, string.rep("m", 512 - #line + 12) .. line) }
  end,
  -- an error object inside a 200 (OpenRouter and proxies do this)
  ["200 embedded error"] = function(kind, req) return { status = 200, headers = JSON, body = json_error(kind, req) } end,
  ["200 not JSON"] = function(_, req)
    return { status = 200, headers = JSON, body = '{"echo":"' .. credential(req) .. '", broken' }
  end,
  ["stream error event"] = function(kind, req)
    if kind == "anthropic" then
      return { status = 200, headers = SSE, chunks = {
        "event: error\ndata: " .. cjson.encode { type = "error", error = { type = "invalid_request_error",
          message = "bad key " .. credential(req) }, headers = req.headers } .. "\n\n" } }
    end
    return { status = 200, headers = SSE, chunks = { "data: " .. json_error(kind, req) .. "\n\n" } }
  end,
  ["malformed stream"] = function(kind, req)
    local prefix = kind == "anthropic" and "event: content_block_delta\n" or ""
    return { status = 200, headers = SSE, chunks = {
      prefix .. 'data: {"echo":"' .. credential(req) .. '","headers":' .. cjson.encode(req.headers) .. ',\n\n' } }
  end,
  ["timeout"] = function() return { hang = true } end,
}

local CASES = {}
for name in pairs(ANSWERS) do CASES[#CASES + 1] = name end
table.sort(CASES)

local function provider_for(kind, url, opts)
  local o = { base_url = url .. "/v1", api_key = KEYS[kind], model = "m", retry = { attempts = 2, base_ms = 1, max_ms = 2 } }
  for k, v in pairs(opts or {}) do o[k] = v end
  return tide.provider[kind](o)
end

-- A model-side tool.
local lookup = tide.tool {
  name = "lookup", description = "Looks a term up.",
  parameters = { type = "object", properties = { q = { type = "string" } } },
  handler = function(args) return "found " .. tostring(args.q) end,
}

describe("tide.redact", function()
  local redact = require "tide.redact"

  it("hides a key raw and JSON-escaped, a secret header's value and its credential", function()
    local secrets = redact.secrets("sk-abc/defghij", { authorization = "Bearer tok-12345678",
      ["api-key"] = "azure-key-123", accept = "text/plain-not-secret" })
    assert.are.equal("a [redacted] b [redacted] c [redacted] d [redacted] e text/plain-not-secret",
      redact.string([[a sk-abc/defghij b sk-abc\/defghij c Bearer tok-12345678 d azure-key-123 e text/plain-not-secret]],
        secrets))
    assert.are.equal("x [redacted] y", redact.string("x tok-12345678 y", secrets))
  end)

  it("hides the start of a secret an excerpt cut through, and leaves short keys alone", function()
    local secrets = redact.secrets("sk-abc/defghij")
    assert.are.equal("body: [redacted]", redact.string("body: sk-abc/de", secrets))
    assert.are.equal("body: sk-abc", redact.string("body: sk-abc", secrets)) -- too short to mean anything
    assert.are.same({}, redact.secrets("k", { ["x-api-key"] = "k" }))
    assert.are.equal("keep k", redact.string("keep k", redact.secrets("k")))
  end)

  it("hides credential-named headers, URL credentials, and keys echoed with \\u escapes", function()
    local secrets = redact.secrets(nil, { cookie = "sid=abcdef123456", ["x-goog-api-key"] = "AIzaSyABCDEFGH",
      ["anthropic-beta"] = "prompt-caching-2024" }, nil,
      redact.url_secrets("https://user:pw12345678@host/v1?key=QUERYSECRET1&api-version=2024-10-21"))
    assert.are.equal("[redacted] [redacted] [redacted] [redacted] prompt-caching-2024 2024-10-21", redact.string(
      "sid=abcdef123456 AIzaSyABCDEFGH QUERYSECRET1 pw12345678 prompt-caching-2024 2024-10-21", secrets))
    local key = redact.secrets("ABSK+abc/def0123==")
    assert.are.equal("echo [redacted]", redact.string("echo ABSK\\u002babc\\u002Fdef0123\\u003d\\u003d", key))
    assert.are.equal("https://host/v1", redact.url_for_message("https://user:pw@host/v1?key=x"))
  end)

  it("walks an error's fields in place, nested ones too, once each", function()
    local secrets = redact.secrets("sk-abc/defghij")
    local cause = { message = "sk-abc/defghij" }
    local err = { message = "m sk-abc/defghij", body = 'b "sk-abc\\/defghij"', status = 401, cause = cause }
    err.self = err
    assert.are.equal(err, redact.error(err, secrets))
    assert.are.same({ "m [redacted]", 'b "[redacted]"', 401, "[redacted]" },
      { err.message, err.body, err.status, cause.message })
  end)
end)

describe("API keys", function()
  local dir

  before_each(function()
    seen = {}
    dir = helpers.tmpdir()
    cache.invalidate_all()
  end)

  after_each(function()
    helpers.rmdir(dir)
    helpers.assert_quiet()
  end)

  for _, kind in ipairs { "openai", "anthropic" } do
    for _, stream in ipairs { true, false } do
      it(("stay out of %s errors (stream %s) when the server echoes the request"):format(kind, stream), function()
        local case
        local srv = assert(server.listen { host = "127.0.0.1", port = 0,
          handler = function(req) return ANSWERS[case](kind, req) end })
        local url = "http://127.0.0.1:" .. srv:port()
        -- the key as the user's own header too (Azure's api-key)
        local p = provider_for(kind, url, { stream = stream, timeout_ms = 300,
          headers = { ["api-key"] = KEYS[kind] } })
        see("tostring(provider)", tostring(p))
        local body = p:body(p:encode_prefix("You are terse."), { p:encode_message { role = "user", content = "hi" } })
        for _, name in ipairs(CASES) do
          case = name
          local retries = 0
          local res, err = p:complete(body, { on_retry = function(info)
            retries = retries + 1
            see_error(name .. " on_retry", info.error)
          end })
          assert.is_nil(res, name)
          assert.is_table(err, name)
          see_error(name, err)
          if name ~= "timeout" then assert_redacted(err, name) end
          if name == "500 JSON" or name == "429 JSON" then assert.are.equal(1, retries, name) end
        end
        srv:close()
        assert_clean()
      end)
    end

    it(("stay out of a %s session: transcript, events, stats, errors"):format(kind), function()
      local srv = assert(testing.mock_server {})
      local p = provider_for(kind, srv.url)
      tide.agent { id = "keeper", prompt = "Agent keeper. You keep secrets.", tools = { lookup } }
      local path = dir .. "/keeper.jsonl"
      local s = tide.session { agent = "keeper", provider = p, transcript = path }
      local on_event, types = sink(kind)
      srv:push({ tool_calls = { { name = "lookup", arguments = { q = "tide" } } } }, "done looking")
      local reply, err = s:turn("look up tide", { on_event = on_event })
      assert.is_nil(err)
      assert.are.equal("done looking", reply)
      assert.are.equal(1, types.tool_start)
      assert.are.equal(1, types.tool_end)
      -- the key did go out, in its header
      local sent = srv:requests()[1].headers
      assert.are.equal(kind == "openai" and "Bearer " .. KEYS.openai or KEYS.anthropic,
        kind == "openai" and sent.authorization or sent["x-api-key"])
      -- a failed turn whose error echoes the request
      srv:push(function(req) return { fault = "status", status = 401, body = json_error(kind, req) } end)
      local none, terr = s:turn("again", { on_event = on_event })
      assert.is_nil(none)
      see_error("failed turn", terr)
      assert_redacted(terr, "failed turn")
      walk("stats", s:stats())
      see("reply", reply)
      see("tostring(provider)", tostring(p))
      s:close()
      see_file("transcript", path)
      srv:close()
      assert_clean()
    end)
  end

  it("stay out of sub-agents' transcripts, events and results when a child's call fails", function()
    local srv = assert(testing.mock_server {})
    local p = provider_for("openai", srv.url)
    tide.agent { id = "helper", prompt = "Agent helper.", when_to_use = "helps" }
    tide.agent { id = "boss", prompt = "Agent boss.", subagents = { "helper" } }
    srv.default = function(req)
      local sys = req.json.messages[1].content
      if sys:find("Agent helper.", 1, true) then
        return { fault = "status", status = 401, body = json_error("openai", req) }
      end
      for _, m in ipairs(req.json.messages) do
        if m.role == "tool" then return "boss done: " .. m.content end
      end
      return { tool_calls = { { name = "delegate_helper", arguments = { task = "help me" } } } }
    end
    local s = tide.session { agent = "boss", provider = p, transcript = dir .. "/boss.jsonl" }
    local on_event, types = sink("boss")
    local reply, err = s:turn("delegate it", { on_event = on_event })
    assert.is_nil(err)
    assert.matches("^boss done:", reply)
    assert.truthy(reply:find(REDACTED, 1, true), reply)
    assert.are.equal(1, types.subagent_start)
    assert.are.equal(1, types.subagent_end)
    see("reply", reply)
    walk("stats", s:stats())
    s:close()
    -- the conversation sent to the model holds the child's error too
    for i, r in ipairs(srv:requests()) do see("request body " .. i, r.body) end
    assert.are.equal(2, see_dir("transcripts", dir))
    srv:close()
    assert_clean()
  end)

  describe("of a Composio source", function()
    local mock, src

    -- A failure that quotes the key and echoes every header.
    local function echo(status)
      return function(req)
        return { status = status, headers = JSON, body = cjson.encode {
          error = { message = "rejected key " .. credential(req) }, successful = false, data = {},
          request = { headers = req.headers } } }
      end
    end

    before_each(function()
      mock = composio_mock.server { api_key = KEYS.composio }
      -- (github only: the demo model would delegate to git as often, "git"
      -- being in "github")
      src = tide.integrations.composio { api_key = KEYS.composio, base_url = mock.url, user_id = "u1",
        toolkits = { "github" } }
      see("tostring(source)", tostring(src))
    end)

    after_each(function() mock:close() end)

    it("stay out of a failed fetch, and of the stats of a session that met it", function()
      for _, status in ipairs { 401, 500 } do
        mock.fail = function(req, endpoint) if endpoint == "connected_accounts" then return echo(status)(req) end end
        cache.invalidate_all()
        local snap, err = helpers.run(function() return cache.get(src) end)
        assert.is_nil(snap)
        see_error("fetch " .. status, err)
        assert.truthy(tostring(err.cause and err.cause.body or err.body):find(REDACTED, 1, true))
      end
      local srv = assert(testing.mock_server { default = "fine" })
      tide.agent { id = "linked", prompt = "Agent linked.", subagents = { { toolkits = "*" } } }
      local s = tide.session { agent = "linked", provider = provider_for("openai", srv.url), integrations = src,
        transcript = dir .. "/linked.jsonl" }
      local on_event = sink("linked")
      assert.are.equal("fine", s:turn("hello", { on_event = on_event }))
      local st = s:stats()
      assert.are.equal("unavailable", st.integrations)
      walk("stats", st)
      s:close()
      see_dir("transcripts", dir)
      srv:close()
      assert_clean()
    end)

    it("stay out of a failed execute, direct and through an integrations agent", function()
      for _, status in ipairs { 401, 500, 200 } do
        mock.fail = function(req) if req.path:find("/tools/execute/", 1, true) then return echo(status)(req) end end
        local data, err = helpers.run(function() return src:execute("GITHUB_LIST_ISSUES", {}) end)
        assert.is_nil(data)
        see_error("execute " .. status, err)
        assert_redacted(err, "execute " .. status)
      end
      -- The demo model delegates to the github agent, which lists issues and
      -- reports what it found (here, the execute error) back up.
      local srv = assert(testing.mock_server { default = demo.model })
      tide.agent { id = "linked", prompt = "Agent linked.", subagents = { { toolkits = "*" } } }
      local s = tide.session { agent = "linked", provider = provider_for("openai", srv.url), integrations = src,
        transcript = dir .. "/linked.jsonl" }
      local on_event, types = sink("linked")
      local reply, err = s:turn("what are the open github issues?", { on_event = on_event })
      assert.is_nil(err)
      assert.are.equal(1, types.subagent_start)
      assert.truthy(reply:find(REDACTED, 1, true), reply)
      see("reply", reply)
      walk("stats", s:stats())
      s:close()
      for i, r in ipairs(srv:requests()) do see("request body " .. i, r.body) end
      assert.are.equal(2, see_dir("transcripts", dir))
      srv:close()
      assert_clean()
    end)
  end)

  it("stay out of the chat's output", function()
    local build = os.getenv("TIDE_BUILD_DIR") or "build"
    -- The provider runs in a process of its own: the chat's blocks this one.
    helpers.write(dir .. "/provider.lua", ([[
      local tide = require "tide"
      local testing = require "tide.testing"
      local demo = require "tide.testing.demo"
      local cjson = require "cjson"
      tide.run(function()
        local srv = assert(testing.mock_server { ref = true, default = function(req)
          local last = req.json.messages[#req.json.messages]
          if last.role == "user" and tostring(last.content):find("fail", 1, true) then
            return { fault = "status", status = 401, body = cjson.encode { error = {
              message = "invalid credentials: " .. tostring(req.headers.authorization) },
              request = { headers = req.headers } } }
          end
          return demo.model(req)
        end })
        io.stdout:write(srv.url, "\n")
        io.stdout:flush()
        tide.sleep(%d)
      end)
    ]]):format(30000))
    local env = ("LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' ASAN_OPTIONS=detect_leaks=0"):format(build)
    local out = helpers.sh(([[
      %s lua5.4 %s/provider.lua > %s/url & pid=$!
      for i in $(seq 500); do [ -s %s/url ] && break; sleep 0.01; done
      printf 'look up tide\nplease fail now\n/stats\n/tools\n/quit\n' |
        %s OPENAI_API_KEY='%s' OPENAI_BASE_URL="$(cat %s/url)/v1" TIDE_MODEL=m \
        timeout 30 lua5.4 bin/tide chat --provider openai --transcript %s/chat.jsonl
      echo "exit=$?"
      kill $pid
    ]]):format(env, dir, dir, dir, env, KEYS.openai, dir, dir))
    see("chat output", out)
    assert.matches("exit=0", out)
    assert.matches("└─ lookup", out)
    assert.matches("error: ProviderError: openai returned HTTP 401", out)
    assert.truthy(out:find(REDACTED, 1, true), out)
    assert.matches("provider_calls", out)
    see_file("chat transcript", dir .. "/chat.jsonl")
    assert_clean()
  end)
end)
