-- tide.testing.record / replay: a real session recorded through the
-- loopback proxy against the mock provider, then run again offline from the
-- cassette with the mock gone.
local tide = require "tide"
local testing = require "tide.testing"
local cjson = require "cjson"

local KEY = "sk-cassette-SECRET-7f3a9c1e5b"

local function tmpfile()
  local path = os.tmpname()
  os.remove(path)
  return path .. ".jsonl"
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function lines(path)
  local out = {}
  for line in read(path):gmatch("[^\n]+") do out[#out + 1] = cjson.decode(line) end
  return out
end

-- The script under test: a tool loop of two lookups, then an answer.
local function script(provider, text)
  local s = tide.session { agent = "cassette_looper", provider = provider }
  local reply, err = s:turn(text or "find two things")
  return reply, err, s:history()
end

local function make(kind, base_url, stream, key)
  return tide.provider[kind] { base_url = base_url, api_key = key or KEY, model = "m", stream = stream }
end

describe("tide.testing.record and replay", function()
  before_each(function()
    tide.agent { id = "cassette_looper", prompt = "You look things up.", tools = {
      tide.tool { name = "lookup", description = "Looks an item up.",
        parameters = { type = "object", properties = { q = { type = "string" } }, required = { "q" } },
        handler = function(a) return "found " .. a.q end },
    } }
  end)

  for _, kind in ipairs { "openai", "anthropic" } do
    for _, stream in ipairs { true, false } do
      local label = ("%s, %s"):format(kind, stream and "streamed" or "not streamed")

      it("records a tool loop without keys and replays it offline (" .. label .. ")", function()
        local path = tmpfile()
        local mock = assert(testing.mock_server { default = testing.tool_loop(2) })
        local rec = assert(testing.record { provider = make(kind, mock.url .. "/v1", stream), cassette = path })
        assert.are.equal(path, rec.cassette)
        local reply1, err1, history1 = script(rec)
        assert.is_nil(err1)
        assert.are.equal("done after 2 lookups", reply1)
        rec:close()
        mock:close()

        -- The mock saw the key; the cassette never does.
        local auth = kind == "openai" and "authorization" or "x-api-key"
        assert.is_truthy(mock:requests()[1].headers[auth]:find(KEY, 1, true))
        local text = read(path)
        assert.is_nil(text:find(KEY, 1, true))
        assert.is_nil(text:lower():find('"authorization"', 1, true))
        assert.is_nil(text:lower():find('"x-api-key"', 1, true))
        local recorded = lines(path)
        assert.are.equal(4, #recorded) -- header + 3 exchanges
        assert.are.same({ base_path = "/v1", cassette = "tide", provider = kind, version = 1 }, recorded[1])
        for i = 2, 4 do
          local ex = recorded[i]
          assert.are.equal(i - 1, ex.n)
          assert.are.equal("POST", ex.request.method)
          assert.are.equal(200, ex.response.status)
          assert.is_truthy(ex.response.headers["content-type"])
          if stream then
            assert.is_table(ex.response.chunks)
            assert.is_nil(ex.response.body)
          else
            assert.is_string(ex.response.body)
          end
        end

        -- Offline: the mock is closed, another key, the same script.
        local srv = assert(testing.replay(path, { provider = kind }))
        local reply2, err2, history2 = script(make(kind, srv.url .. srv.base_path, stream, "another-key"))
        assert.is_nil(err2)
        assert.are.equal(reply1, reply2)
        assert.are.same(history1, history2)
        assert.are.same({}, srv:mismatches())
        assert.are.equal(3, #srv:requests())
        assert.are.equal(0, srv:pending())
        srv:close()
        os.remove(path)
      end)
    end
  end

  -- Claude on Bedrock with IAM credentials: the mock checks each request's
  -- Signature Version 4 for its own host, as Bedrock does, so a request
  -- signed for the proxy's would be refused.
  local CREDS = { access_key_id = "AKIACASSETTE", secret_access_key = "cassette/Secret+Key0123456789EXAMPLE",
    session_token = "IQoJcassette//session+token=" }
  local MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
  local function on_bedrock(url, stream, creds)
    return tide.provider.anthropic { base_url = url, model = MODEL, stream = stream,
      bedrock = { region = "eu-west-3", credentials = creds or CREDS } }
  end

  for _, stream in ipairs { true, false } do
    it("records Claude on Bedrock signed for Bedrock, and replays it (" .. (stream and "an event stream" or "JSON")
      .. ")", function()
      local path = tmpfile()
      local mock = assert(testing.mock_server { default = testing.tool_loop(2),
        bedrock = { credentials = CREDS, region = "eu-west-3" } })
      local rec = assert(testing.record { provider = on_bedrock(mock.url, stream), cassette = path })
      local reply1, err1, history1 = script(rec)
      assert.is_nil(err1)
      assert.are.equal("done after 2 lookups", reply1)
      rec:close()
      mock:close()
      assert.matches("^AWS4%-HMAC%-SHA256 Credential=AKIACASSETTE/", mock:requests()[1].headers["authorization"])

      -- neither the signature nor the session token is written
      local text = read(path)
      for _, secret in ipairs { CREDS.secret_access_key, CREDS.session_token, "AWS4-HMAC-SHA256", "x-amz-date" } do
        assert.is_nil(text:find(secret, 1, true), secret)
      end
      local recorded = lines(path)
      assert.are.equal(4, #recorded)
      for i = 2, 4 do
        local res = recorded[i].response
        assert.are.equal(200, res.status)
        if stream then -- the event stream's frames, binary, in base64, chunk by chunk
          assert.are.equal("application/vnd.amazon.eventstream", res.headers["content-type"])
          assert.are.equal("base64", res.encoding)
          assert.is_table(res.chunks)
          local parts = {}
          for j, c in ipairs(res.chunks) do parts[j] = tide.core.base64_decode(c.data) end
          local bytes, at, n = table.concat(parts), 1, 0
          while at <= #bytes do -- whole frames, each its total length first
            at, n = at + string.unpack(">I4", bytes, at), n + 1
          end
          assert.are.equal(#bytes + 1, at)
          assert.is_true(n >= 3)
        else -- JSON stays text
          assert.is_nil(res.encoding)
          assert.is_table(cjson.decode(res.body).content)
        end
      end

      -- offline, with other credentials: the same conversation
      local srv = assert(testing.replay(path, { provider = "anthropic" }))
      local reply2, err2, history2 = script(on_bedrock(srv.url, stream, { access_key_id = "AKIAOTHER",
        secret_access_key = "other" }))
      assert.is_nil(err2)
      assert.are.equal(reply1, reply2)
      assert.are.same(history1, history2)
      assert.are.same({}, srv:mismatches())
      srv:close()
      os.remove(path)
    end)
  end

  it("decodes base64 as core.base64 encodes it", function()
    local core = tide.core
    for _, bytes in ipairs { "", "a", "ab", "abc", "\0\255\1 binary \r\n", string.rep("\xff", 1000) } do
      assert.are.equal(bytes, core.base64_decode(core.base64(bytes)))
    end
    assert.are.equal("a", core.base64_decode("YQ")) -- padding optional
    assert.is_nil(core.base64_decode("Y"))
    assert.is_nil(core.base64_decode("YQ=!"))
    assert.is_nil(core.base64_decode("-_-_")) -- base64url is not this alphabet
  end)

  it("reports a changed request with the JSON paths that differ", function()
    local path = tmpfile()
    local mock = assert(testing.mock_server { default = testing.tool_loop(2) })
    local rec = assert(testing.record { provider = make("openai", mock.url .. "/v1", true), cassette = path })
    assert.are.equal("done after 2 lookups", (script(rec)))
    rec:close()
    mock:close()

    local srv = assert(testing.replay(path))
    local reply, err = script(make("openai", srv.url .. "/v1", true), "find three things")
    assert.is_nil(reply)
    assert.are.equal(409, err.status)
    assert.is_truthy(err.message:find('request 1 differs from the cassette: body $.messages[1].content: '
      .. 'expected "find two things", got "find three things"', 1, true))
    local m = srv:mismatches()
    assert.are.equal(1, #m)
    assert.are.equal(1, m[1].request)
    assert.are.equal(2, m[1].line)
    assert.are.same({ 'body $.messages[1].content: expected "find two things", got "find three things"' },
      m[1].differences)
    srv:close()

    -- A different path, a missing field, an extra one.
    srv = assert(testing.replay(path))
    local body = cjson.decode(lines(path)[2].request.body)
    body.stream_options = nil
    body.temperature = 0.5
    local res = assert(tide.http.request { method = "POST", url = srv.url .. "/v2/chat/completions",
      body = cjson.encode(body) })
    assert.are.equal(409, res.status)
    assert.are.same({
      "path: expected /v1/chat/completions, got /v2/chat/completions",
      'body $.stream_options: missing from the request (expected {"include_usage":true})',
      "body $.temperature: not in the cassette (got 0.5)",
    }, srv:mismatches()[1].differences)
    srv:close()
    os.remove(path)
  end)

  it("answers a request past the end of the cassette with a clear error", function()
    local path = tmpfile()
    local mock = assert(testing.mock_server { replies = { "hello" } })
    local rec = assert(testing.record { provider = make("anthropic", mock.url .. "/v1", false), cassette = path })
    assert.are.equal("hello", (script(rec, "hi")))
    rec:close()
    mock:close()
    local srv = assert(testing.replay(path))
    local p = make("anthropic", srv.url .. "/v1", false)
    assert.are.equal("hello", (script(p, "hi")))
    local reply, err = script(p, "hi")
    assert.is_nil(reply)
    assert.is_truthy(err.message:find("request 2 differs from the cassette: the cassette holds 1 exchange; "
      .. "this request is not in it: POST /v1/messages", 1, true))
    srv:close()
    os.remove(path)
  end)

  it("records an error status and its Retry-After, so the retry replays too", function()
    local path = tmpfile()
    local mock = assert(testing.mock_server { replies = { { fault = "status", status = 429, retry_after = 0 }, "after the wait" } })
    local rec = assert(testing.record { provider = make("openai", mock.url .. "/v1", true), cassette = path })
    local s = tide.session { agent = "cassette_looper", provider = rec }
    assert.are.equal("after the wait", s:turn("hi"))
    rec:close()
    mock:close()
    local ex = lines(path)[2]
    assert.are.equal(429, ex.response.status)
    assert.are.equal("0", ex.response.headers["retry-after"])
    assert.is_string(ex.response.body)

    local srv = assert(testing.replay(path))
    s = tide.session { agent = "cassette_looper", provider = make("openai", srv.url .. "/v1", true) }
    assert.are.equal("after the wait", s:turn("hi"))
    assert.are.equal(2, #srv:requests())
    assert.are.equal(0, srv:pending())
    assert.are.same({}, srv:mismatches())
    srv:close()
    os.remove(path)
  end)

  it("keeps the key out of bodies, custom headers and response headers", function()
    local path = tmpfile()
    local mock = assert(testing.mock_server { default = testing.echo })
    local p = tide.provider.openai { base_url = mock.url .. "/v1", api_key = KEY, model = "m", stream = false,
      headers = { ["X-Trace"] = "t-" .. KEY, ["X-Session-Token"] = "abc", ["X-Tenant"] = "acme" } }
    local rec = assert(testing.record { provider = p, cassette = path })
    local s = tide.session { agent = "cassette_looper", provider = rec }
    assert.are.equal("echo: my key is " .. KEY, s:turn("my key is " .. KEY))
    rec:close()
    mock:close()
    assert.are.equal(KEY, mock:requests()[1].headers["x-trace"]:sub(3))
    local text = read(path)
    assert.is_nil(text:find(KEY, 1, true))
    local ex = lines(path)[2]
    assert.are.equal("acme", ex.request.headers["x-tenant"])
    assert.is_nil(ex.request.headers["x-trace"])
    assert.is_nil(ex.request.headers["x-session-token"])
    assert.is_truthy(ex.request.body:find("my key is [REDACTED]", 1, true))
    assert.is_truthy(ex.response.body:find("echo: my key is [REDACTED]", 1, true))
    os.remove(path)
  end)

  it("keeps the bytes of text that speaks of \\u escapes, so that the run replays", function()
    -- the key's redaction wrote out JSON's \u escapes of ASCII everywhere:
    -- an escaped backslash before "u0041" became "\A", an invalid escape
    local text = [[in Java write \u0041 for A, and \u003c for <]]
    local path = tmpfile()
    local mock = assert(testing.mock_server { default = testing.echo })
    local rec = assert(testing.record { provider = make("openai", mock.url .. "/v1", false), cassette = path })
    local s = tide.session { agent = "cassette_looper", provider = rec }
    assert.are.equal("echo: " .. text, s:turn(text))
    rec:close()
    mock:close()
    local ex = lines(path)[2]
    assert.is_truthy(cjson.decode(ex.request.body))
    assert.is_truthy(cjson.decode(ex.response.body))
    assert.are.equal(mock:requests()[1].body, ex.request.body)
    local srv = assert(testing.replay(path))
    s = tide.session { agent = "cassette_looper", provider = make("openai", srv.url .. "/v1", false) }
    assert.are.equal("echo: " .. text, s:turn(text))
    assert.are.same({}, srv:mismatches())
    srv:close()
    os.remove(path)
  end)

  it("keeps a percent-encoded query secret out, and replays with another in its place", function()
    -- an Azure SAS signature: base64, so "+", "/" and "=" go out as %2B, %2F, %3D
    local sig = "AbCdEf+gh/IJ=kl=="
    local path = tmpfile()
    local mock = assert(testing.mock_server { default = testing.echo })
    local function provider(url, s)
      return tide.provider.openai { base_url = url .. "/v1", api_key = KEY, model = "m", stream = false,
        query = { sig = s, ["api-version"] = "2024-10-21" } }
    end
    local rec = assert(testing.record { provider = provider(mock.url, sig), cassette = path })
    local s = tide.session { agent = "cassette_looper", provider = rec }
    assert.are.equal("echo: hi", s:turn("hi"))
    rec:close()
    mock:close()
    local sent = mock:requests()[1].path
    assert.is_truthy(sent:find("sig=AbCdEf%2Bgh%2FIJ%3Dkl%3D%3D", 1, true), sent)
    local text = read(path)
    assert.is_nil(text:find("AbCdEf", 1, true), text)
    local ex = lines(path)[2]
    assert.are.equal("/v1/chat/completions?api-version=2024-10-21&sig=[REDACTED]", ex.request.path)
    -- whatever signature the replaying provider has stands in for the hidden one
    local srv = assert(testing.replay(path))
    s = tide.session { agent = "cassette_looper", provider = provider(srv.url, "another+one/==") }
    assert.are.equal("echo: hi", s:turn("hi"))
    assert.are.same({}, srv:mismatches())
    srv:close()
    -- but the rest of the path still counts
    srv = assert(testing.replay(path))
    local p = tide.provider.openai { base_url = srv.url .. "/v1", api_key = KEY, model = "m", stream = false,
      query = { sig = "x", ["api-version"] = "2025-01-01" } }
    local reply, err = tide.session { agent = "cassette_looper", provider = p }:turn("hi")
    assert.is_nil(reply)
    assert.is_truthy(tostring(err):find("path: expected", 1, true), tostring(err))
    srv:close()
    os.remove(path)
  end)

  it("records streamed chunks with their timing and replays them chunk by chunk, in order", function()
    local path = tmpfile()
    local mock = assert(testing.mock_server { replies = { "one two three four five six" }, chunk_delay_ms = 15 })
    local rec = assert(testing.record { provider = make("openai", mock.url .. "/v1", true), cassette = path })
    local deltas1 = {}
    local s = tide.session { agent = "cassette_looper", provider = rec }
    assert.are.equal("one two three four five six",
      s:turn("hi", { on_delta = function(d) deltas1[#deltas1 + 1] = d end }))
    rec:close()
    mock:close()
    local chunks = lines(path)[2].response.chunks
    assert.is_true(#chunks > 2)
    for i = 2, #chunks do assert.is_true(chunks[i].ms >= chunks[i - 1].ms) end
    assert.is_true(chunks[#chunks].ms - chunks[1].ms >= 15)

    -- Straight off the replay server: the same chunks, in order.
    local srv = assert(testing.replay(path, { chunk_delay_ms = 10 }))
    local ex = lines(path)[2]
    local got = {}
    local res = assert(tide.http.request { method = "POST", url = srv.url .. ex.request.path,
      body = ex.request.body, on_data = function(c) got[#got + 1] = c end })
    assert.are.equal(200, res.status)
    local want = {}
    for i, c in ipairs(chunks) do want[i] = c.data end
    assert.are.equal(table.concat(want), table.concat(got))
    assert.is_true(#got >= 2)
    srv:close()

    -- And through a session, paced as recorded: the same deltas.
    srv = assert(testing.replay(path, { realtime = true }))
    local deltas2 = {}
    s = tide.session { agent = "cassette_looper", provider = make("openai", srv.url .. "/v1", true) }
    local t0 = tide.core.hrtime()
    assert.are.equal("one two three four five six",
      s:turn("hi", { on_delta = function(d) deltas2[#deltas2 + 1] = d end }))
    assert.is_true((tide.core.hrtime() - t0) / 1e6 >= 15)
    assert.are.same(deltas1, deltas2)
    srv:close()
    os.remove(path)
  end)

  describe("a cassette it cannot serve", function()
    local good_header = '{"base_path":"/v1","cassette":"tide","provider":"openai","version":1}\n'
    local good_line = '{"n":1,"request":{"body":"{}","headers":{},"method":"POST","path":"/v1/chat/completions"},'
      .. '"response":{"body":"{}","headers":{},"status":200}}\n'

    local function fails(content, line, pattern, opts)
      local path = tmpfile()
      write(path, content)
      local srv, err = testing.replay(path, opts)
      os.remove(path)
      assert.is_nil(srv)
      assert.are.equal("CassetteError", err.code)
      assert.are.equal(path, err.path)
      assert.are.equal(line, err.line)
      assert.is_truthy(err.message:find(path .. ":" .. line .. ": ", 1, true), err.message)
      assert.is_truthy(err.message:find(pattern, 1, true), err.message)
    end

    it("names the line that is not JSON", function()
      fails(good_header .. good_line .. '{"n":2,"request":\n', 3, "not JSON")
    end)

    it("names the line of an exchange missing a field", function()
      fails(good_header .. good_line .. '{"n":2,"request":{"method":"POST","path":"/v1/x","body":""}}\n', 3,
        "no 'response' object")
      fails(good_header .. '{"n":1,"request":{"body":"{}","method":"POST","path":"/v1/x"},'
        .. '"response":{"status":200}}\n', 2, "either 'body' or 'chunks'")
      fails(good_header .. '{"n":1,"request":{"body":"{}","method":"POST","path":"/v1/x"},'
        .. '"response":{"status":200,"chunks":[{"data":"x"}]}}\n', 2, "response.chunks[0]")
    end)

    it("names a binary response that is not base64", function()
      local function ex(response) return '{"n":1,"request":{"body":"{}","method":"POST","path":"/v1/x"},"response":'
        .. response .. '}\n' end
      fails(good_header .. ex('{"status":200,"encoding":"hex","body":"00"}'), 2, 'response.encoding must be "base64"')
      fails(good_header .. ex('{"status":200,"encoding":"base64","body":"not base64!"}'), 2, "response.body is not base64")
      fails(good_header .. ex('{"status":200,"encoding":"base64","chunks":[{"ms":1,"data":"AAAA"},{"ms":2,"data":"@"}]}'),
        2, "response.chunks[1].data is not base64")
    end)

    it("names a response header or a chunk time the replay server could not send", function()
      local function ex(response) return '{"n":1,"request":{"body":"{}","method":"POST","path":"/v1/x"},"response":'
        .. response .. '}\n' end
      -- each once loaded, then answered 500 "server handler failed" when asked for
      fails(good_header .. ex('{"status":200,"body":"","headers":{"x-a":"b\\r\\nx-injected: 1"}}'), 2,
        'response.headers["x-a"] has a CR, LF or NUL in its value')
      fails(good_header .. ex('{"status":200,"body":"","headers":{"x a:":"b"}}'), 2,
        'response.headers: "x a:" is not a header name')
      fails(good_header .. ex('{"status":200,"body":"","headers":{"":"b"}}'), 2, '"" is not a header name')
      fails(good_header .. ex('{"status":200,"chunks":[{"ms":1,"data":"a"},{"ms":1e308,"data":"b"}]}'), 2,
        "response.chunks[1].ms must be from 0 to 1000000000000, got 1e+308")
      fails(good_header .. ex('{"status":200,"chunks":[{"ms":-5,"data":"a"}]}'), 2, "response.chunks[0].ms must be")
    end)

    it("reports a directory or a FIFO instead of raising or blocking", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute(("mkdir %q && mkfifo %q"):format(dir, dir .. "/fifo.jsonl")))
      for _, path in ipairs { dir, dir .. "/fifo.jsonl" } do
        local ok, srv, err = pcall(testing.replay, path)
        assert.is_true(ok, srv)
        assert.is_nil(srv)
        assert.are.equal("CassetteError", err.code)
        assert.are.equal(path .. ": cannot open: not a regular file", err.message)
      end
      os.remove(dir .. "/fifo.jsonl")
      os.remove(dir)
    end)

    it("refuses another recorder's format and another provider's cassette", function()
      fails('{"interactions":[{"request":{"uri":"https://api.openai.com"}}]}\n', 1, "not a tide cassette")
      fails(good_header .. good_line, 1, "recorded from a 'openai' provider, not 'anthropic'",
        { provider = tide.provider.anthropic { base_url = "http://127.0.0.1:1/v1", api_key = "k", model = "m" } })
    end)

    it("reports a missing or empty file", function()
      local srv, err = testing.replay("/nonexistent/dir/x.jsonl")
      assert.is_nil(srv)
      assert.are.equal("CassetteError", err.code)
      assert.is_truthy(err.message:find("/nonexistent/dir/x.jsonl: cannot open", 1, true))
      local path = tmpfile()
      write(path, "\n")
      srv, err = testing.replay(path)
      os.remove(path)
      assert.is_nil(srv)
      assert.are.equal(path .. ": empty: no cassette header", err.message)
    end)
  end)

  it("rests on test-server handlers that answer later (srv:respond)", function()
    local server = require "tide.testing.server"
    local ids, seen = {}, {}
    local srv
    srv = assert(server.listen { handler = function(req)
      ids[#ids + 1] = req.id
      if req.path == "/late" then
        tide.spawn(function()
          tide.sleep(20)
          seen.hang = select(2, pcall(srv.respond, srv, req.id, { hang = true }))
          seen.first = srv:respond(req.id, { status = 201, body = "later" })
          seen.second = srv:respond(req.id, { body = "twice" })
        end)
      end
      return { defer = true }
    end })
    local url = "http://127.0.0.1:" .. srv:port()
    local res = assert(tide.http.request { url = url .. "/late" })
    assert.are.equal(201, res.status)
    assert.are.equal("later", res.body)
    assert.is_truthy(tostring(seen.hang):find("cannot hang or defer", 1, true))
    assert.is_true(seen.first)
    assert.is_false(seen.second)
    -- The client gave up: its request no longer waits for an answer.
    local _, err = tide.http.request { url = url .. "/never", timeout_ms = 50 }
    assert.are.equal("Timeout", err.code)
    tide.sleep(20)
    assert.are.same({ 1, 2 }, ids)
    assert.is_false(srv:respond(2, { body = "too late" }))
    srv:close()
    assert.has_error(function() srv:respond(1, { body = "x" }) end, "attempt to use a closed server")
  end)

  describe("a file it must not record to", function()
    it("reports a FIFO or a directory at once instead of blocking", function()
      local dir = os.tmpname()
      os.remove(dir)
      local fifo = dir .. "/fifo.jsonl"
      assert(os.execute(("mkdir %q && mkfifo %q"):format(dir, fifo)))
      -- A reader for the FIFO, so that an open that waited for one comes back
      -- (and the spec fails rather than hangs); it gives up on its own.
      assert(os.execute(("timeout 3 cat %q >/dev/null 2>&1 &"):format(fifo)))
      for _, path in ipairs { fifo, dir } do
        for _, append in ipairs { false, true } do
          local ok, rec, err = pcall(testing.record, { provider = make("openai", "http://127.0.0.1:1/v1", false),
            cassette = path, append = append })
          if ok and rec then rec:close() end
          assert.is_true(ok, rec)
          assert.is_true(rec == nil, "recording to a " .. (path == fifo and "FIFO" or "directory"))
          assert.are.equal("CassetteError", err.code)
          assert.are.equal(path .. ": cannot open for writing: not a regular file", err.message)
        end
      end
      os.remove(fifo)
      os.remove(dir)
    end)

    it("refuses to append another provider's or base path's exchanges, and leaves the file as it was", function()
      local path = tmpfile()
      local mock = assert(testing.mock_server { replies = { "hello", "hello", "hello" } })
      local rec = assert(testing.record { provider = make("anthropic", mock.url .. "/v1", false), cassette = path })
      assert.are.equal("hello", (script(rec, "hi")))
      rec:close()
      local before = read(path)
      local function refused(p, pattern)
        local r, err = testing.record { provider = p, cassette = path, append = true }
        if r then r:close() end
        assert.is_true(r == nil, "appended")
        assert.are.equal("CassetteError", err.code)
        assert.are.equal(1, err.line)
        assert.are.equal(path .. ":1: " .. pattern, err.message)
        assert.are.equal(before, read(path))
      end
      refused(make("openai", mock.url .. "/v1", false),
        "recorded from a 'anthropic' provider, cannot append a 'openai' provider's exchanges")
      -- the same kind elsewhere (Claude on Bedrock has no /v1): other paths, other shapes
      refused(make("anthropic", mock.url .. "/api/v1?key=" .. KEY, false),
        'recorded from a \'anthropic\' provider at base path "/v1", cannot append one at "/api/v1"')
      -- and a file that is no cassette is not made one
      write(path, "my notes\n")
      before = read(path)
      refused(make("anthropic", mock.url .. "/v1", false), "not a tide cassette: the first line is not a JSON object")

      -- The same provider at the same base path appends under the one header.
      os.remove(path)
      for _, text in ipairs { "one", "two" } do
        rec = assert(testing.record { provider = make("anthropic", mock.url .. "/v1", false), cassette = path,
          append = true })
        assert.are.equal("hello", (script(rec, text)))
        rec:close()
      end
      mock:close()
      local recorded = lines(path)
      assert.are.equal(3, #recorded)
      assert.are.equal("tide", recorded[1].cassette)
      local srv = assert(testing.replay(path, { provider = "anthropic" }))
      local p = make("anthropic", srv.url .. srv.base_path, false)
      assert.are.equal("hello", (script(p, "one")))
      assert.are.equal("hello", (script(p, "two")))
      assert.are.same({}, srv:mismatches())
      srv:close()
      os.remove(path)
    end)
  end)

  it("compares integers beyond 2^53 and empty arrays and objects exactly", function()
    local recorded = '{"seed":9007199254740993,"tools":[],"meta":{},"n":[1,2.5],'
      .. '"big":123456789012345678901234567890,"s":"n5","t":"a","nested":[{"content":[ ]}]}'
    local path = tmpfile()
    write(path, '{"base_path":"/v1","cassette":"tide","provider":"openai","version":1}\n'
      .. cjson.encode({ n = 1, request = { method = "POST", path = "/v1/chat/completions", headers = {},
        body = recorded }, response = { status = 200, headers = {}, body = "{}" } }) .. "\n")
    -- the recorded body with `from` put in place of `to`
    local function differences(from, to)
      local body = recorded:gsub(from:gsub("%p", "%%%0"), (to:gsub("%%", "%%%%")))
      assert.are_not.equal(recorded, body)
      local srv = assert(testing.replay(path))
      local res = assert(tide.http.request { method = "POST", url = srv.url .. "/v1/chat/completions", body = body })
      local m = srv:mismatches()
      srv:close()
      assert.are.equal(#m == 0 and 200 or 409, res.status)
      return #m == 0 and {} or m[1].differences
    end
    -- what never counted still does not: spacing, key order, 1 written 1.0
    assert.are.same({}, differences('"seed":9007199254740993,', ' "seed" : 9007199254740993 , '))
    assert.are.same({}, differences('"n":[1,2.5],', '"n":[1.0,2.5],'))
    assert.are.same({}, differences('"tools":[],"meta":{}', '"meta":{ },"tools":[ ]'))
    assert.are.same({ "body $.seed: expected 9007199254740993, got 9007199254740992" },
      differences("9007199254740993", "9007199254740992"))
    assert.are.same({ "body $.big: expected 123456789012345678901234567890, got 123456789012345678901234567891" },
      differences("123456789012345678901234567890", "123456789012345678901234567891"))
    assert.are.same({ "body $.tools: expected [], got {}" }, differences('"tools":[]', '"tools":{}'))
    assert.are.same({ "body $.meta: expected {}, got []" }, differences('"meta":{}', '"meta":[]'))
    assert.are.same({ "body $.nested[0].content: expected [], got {}" },
      differences('"content":[ ]', '"content":{}'))
    -- strings that look like the rewrite's numbers and arrays stay strings
    assert.are.same({ 'body $.s: expected "n5", got 5' }, differences('"s":"n5"', '"s":5'))
    assert.are.same({ 'body $.t: expected "a", got []' }, differences('"t":"a"', '"t":[]'))
    os.remove(path)
  end)

  it("raises on misuse", function()
    assert.has_error(function() testing.record { cassette = "x.jsonl" } end)
    assert.has_error(function() testing.record { provider = make("openai", "http://127.0.0.1:1/v1", true) } end)
    assert.has_error(function() testing.replay(42) end)
    assert.has_error(function() testing.replay("x.jsonl", { speed = 2 }) end)
  end)
end)
