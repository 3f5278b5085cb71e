-- Crash-safe resume: a process killed at any moment leaves a transcript
-- that resumes into a conversation real providers accept (every tool call
-- followed by its result).
local tide = require "tide"
local cjson = require "cjson"

-- A server that rejects unpaired calls the way OpenAI does (400), and
-- answers "resumed" otherwise.
local function strict_server()
  local rejected = 0
  local srv = assert(require("tide.testing.server").listen { handler = function(req)
    local body = cjson.decode(req.body)
    local open = {}
    local problem
    for _, m in ipairs(body.messages) do
      if m.role == "tool" then
        if not open[m.tool_call_id] then problem = "a tool message without a preceding call" end
        open[m.tool_call_id] = nil
      else
        if next(open) then problem = "an assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'" end
        if m.role == "assistant" and type(m.tool_calls) == "table" then
          for _, c in ipairs(m.tool_calls) do open[c.id] = true end
        end
      end
    end
    if next(open) then problem = "unanswered tool calls at the end" end
    if problem then
      rejected = rejected + 1
      return { status = 400, headers = { ["content-type"] = "application/json" },
        body = cjson.encode { error = { message = problem, type = "invalid_request_error" } } }
    end
    return { status = 200, headers = { ["content-type"] = "application/json" }, body = cjson.encode {
      id = "x", object = "chat.completion", model = "m", choices = { { index = 0,
        message = { role = "assistant", content = "resumed" }, finish_reason = "stop" } },
      usage = { prompt_tokens = 1, completion_tokens = 1 } } }
  end })
  return srv, function() return rejected end
end

describe("crash-safe resume", function()
  tide.agent { id = "crashy", prompt = "You look things up.", tools = { tide.tool { name = "lookup",
    description = "Looks a thing up.", parameters = { type = "object", properties = { q = { type = "string" } } },
    handler = function() return "found" end } } }

  it("answers a call left without its result with an interrupted error, in history and transcript", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write('{"type":"meta","version":1}\n{"role":"system","content":"You look things up."}\n',
      '{"content":"go","role":"user"}\n',
      '{"content":"","role":"assistant","tool_calls":[{"arguments":"{}","id":"c1","name":"lookup"},'
        .. '{"arguments":"{}","id":"c2","name":"lookup"}]}\n')
    f:close()
    local srv, rejected = strict_server()
    local p = tide.provider.openai { base_url = "http://127.0.0.1:" .. srv:port() .. "/v1", api_key = "k",
      model = "m", stream = false }
    local s = assert(tide.session { agent = "crashy", provider = p, resume = path })
    assert.are.equal(2, s.resumed.interrupted)
    local tool = s:history()[3]
    assert.are.equal("tool", tool.role)
    assert.are.same({ "c1", "c2" }, { tool.results[1].id, tool.results[2].id })
    assert.matches("interrupted", tool.results[1].content)
    assert.are.equal("resumed", s:turn("go on"))
    assert.are.equal(0, rejected())
    s:close()
    -- the transcript holds the repair: a second resume needs none
    local s2 = assert(tide.session { agent = "crashy", provider = p, resume = path })
    assert.is_nil(s2.resumed.interrupted)
    s2:close()
    os.remove(path)
    srv:close()
  end)

  it("resumes every transcript of a process killed at random moments #slow", function()
    local build = os.getenv("TIDE_BUILD_DIR") or "build"
    local srv, rejected = strict_server()
    local p = tide.provider.openai { base_url = "http://127.0.0.1:" .. srv:port() .. "/v1", api_key = "k",
      model = "m", stream = false }
    math.randomseed(20261206)
    local runs, resumed, with_calls = 200, 0, 0
    for _ = 1, runs do
      local path = os.tmpname()
      os.remove(path)
      local kill_after = math.random(30, 400) / 1000
      os.execute(("timeout -s KILL %.3f env LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' LUA_CPATH='%s/?.so;;' "
        .. "ASAN_OPTIONS=detect_leaks=0 lua5.4 spec/support/crash_child.lua %s >/dev/null 2>&1"):format(kill_after, build, path))
      local f = io.open(path, "rb")
      if f then
        local text = f:read("a")
        f:close()
        if text:find('"tool_calls"', 1, true) then with_calls = with_calls + 1 end
        local s, err = tide.session { agent = "crashy", provider = p, resume = path }
        assert(s, tostring(err))
        local reply, terr = s:turn("go on")
        assert.are.equal("resumed", reply, tostring(terr))
        s:close()
        resumed = resumed + 1
        os.remove(path)
      end
    end
    assert.are.equal(0, rejected())
    assert.is_true(resumed > runs / 2, "too few transcripts were written: " .. resumed)
    assert.is_true(with_calls > runs / 4, "too few kills landed in the tool loop: " .. with_calls)
    srv:close()
  end)
end)
