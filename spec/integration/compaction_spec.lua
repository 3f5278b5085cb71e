-- Compaction: a long conversation kept inside the context window.
local tide = require "tide"
local testing = require "tide.testing"
local json = require "tide.json"
local helpers = require "helpers"

local BIG = ("x"):rep(4000) -- a tool result of about 1,000 tokens

-- A mock that calls `lookup` once per user turn, answers after the result,
-- reports usage from the request's size (a quarter token a byte), and
-- writes a summary when asked by the compaction prompt.
local function mock(opts)
  opts = opts or {}
  local overflowed = false
  return testing.mock_server { default = function(req)
    local body = req.json
    local msgs = body.messages
    if msgs[1].content:find("memory of a conversation", 1, true) then
      if opts.summary_fails then return { fault = "status", status = 500 } end
      return { text = "They asked about A and B; lookups found x." }
    end
    local prompt_tokens = #req.body // 4
    if opts.overflow_at and prompt_tokens > opts.overflow_at and not overflowed then
      overflowed = true
      return { fault = "status", status = 400, body = { error = {
        message = "This model's maximum context length is 4000 tokens.", code = "context_length_exceeded" } } }
    end
    local last = msgs[#msgs]
    local usage = { input = prompt_tokens, output = 5 }
    if last.role == "tool" then return { text = "noted", usage = usage } end
    return { tool_calls = { { name = "lookup", arguments = { q = "a" } } }, usage = usage }
  end }
end

local function paired(msgs)
  local open = {}
  for _, m in ipairs(msgs) do
    if m.role == "tool" then open[m.tool_call_id] = nil
    else
      if next(open) then return false end
      for _, c in ipairs(m.tool_calls or {}) do open[c.id] = true end
    end
  end
  return next(open) == nil
end

-- Every request `srv` took pairs each call with its result and fits the
-- window (one result past it at most: the estimate runs a round behind).
local function requests_fit(srv, window)
  for _, r in ipairs(srv:requests()) do
    assert.is_true(paired(r.json.messages))
    assert.is_true(#r.body // 4 < window + 1200, "a request past the window: " .. #r.body // 4)
  end
end

-- An on_event listener that keeps the compaction events in `events`.
local function compactions_into(events)
  return function(ev) if ev.type == "compaction" then events[#events + 1] = ev end end
end

describe("compaction", function()
  local dir
  before_each(function()
    dir = helpers.tmpdir()
    tide.agent { id = "long", prompt = "You look things up.", tools = { tide.tool { name = "lookup",
      description = "Looks up.", handler = function() return BIG end } } }
  end)
  after_each(function() helpers.rmdir(dir) end)

  it("drops old tool results, then old turns, never splitting a call from its result", function()
    local srv = mock()
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local path = dir .. "/run.jsonl"
    local events = {}
    local s = tide.session { agent = "long", provider = p, transcript = path,
      context = { window = 4000, reserve = 500, strategy = "drop" } }
    for i = 1, 6 do
      assert.are.equal("noted", s:turn("question " .. i, { on_event = compactions_into(events) }))
    end
    assert.is_true(s:stats().compactions >= 1)
    assert.is_true(#events >= 1)
    requests_fit(srv, 4000)
    -- the frozen prefix is untouched
    local last = srv:requests()[#srv:requests()].json
    assert.are.equal("You look things up.", last.messages[1].content)
    -- a resumed session has the compacted state
    s:close()
    local r = assert(tide.session { agent = "long", provider = p, resume = path,
      context = { window = 4000, reserve = 500, strategy = "drop" } })
    assert.are.equal(#s:history(), #r:history())
    assert.are.same(s:history()[1], r:history()[1])
    r:close()
    srv:close()
  end)

  it("summarizes the older conversation into the first message kept", function()
    local srv = mock()
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local s = tide.session { agent = "long", provider = p, context = { window = 4000, reserve = 500 } }
    for i = 1, 4 do assert.are.equal("noted", s:turn("question " .. i)) end
    assert.is_true(s:stats().compactions >= 1)
    local first = s:history()[1]
    assert.are.equal("user", first.role)
    assert.matches("They asked about A and B", first.content, 1, true)
    assert.matches("[Summary of the earlier conversation]", first.content, 1, true)
    -- the summary calls count as the turn's calls do
    assert.are.equal(#srv:requests(), s:stats().provider_calls)
    srv:close()
  end)

  it("resumes a summarized conversation with its summary, and sends what the original sends", function()
    local srv = mock()
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local path, copy = dir .. "/run.jsonl", dir .. "/copy.jsonl"
    local ctx = { window = 4000, reserve = 500, strategy = "summarize" }
    local s = tide.session { agent = "long", provider = p, transcript = path, context = ctx }
    local i = 0
    repeat
      i = i + 1
      assert.are.equal("noted", s:turn("question " .. i))
    until s:stats().compactions > 0 or i == 10
    assert.are.equal(1, s:stats().compactions)
    assert.matches("[Summary of the earlier conversation]\nThey asked about A and B", s:history()[1].content, 1, true)
    local compacted = json.canonical(s:history())
    -- the transcript as it stands, for a session resumed from it below
    helpers.write(copy, helpers.read(path))
    -- the requests of the original's next turn (its call, then the answer)
    local function next_turn(session)
      local n = #srv:requests()
      assert.are.equal("noted", session:turn("question next"))
      local h = session:history()
      local id = h[#h - 2].tool_calls[1].id -- the turn's new call: ids are the mock's, counted
      local bodies = {}
      for k = n + 1, #srv:requests() do
        bodies[#bodies + 1] = (srv:requests()[k].body:gsub(id:gsub("%p", "%%%0"), "call_new"))
      end
      return bodies
    end
    local original = next_turn(s)
    assert.are.equal(2, #original)
    assert.are.equal(1, s:stats().compactions) -- (no second compaction to tell apart)
    s:close()
    local r = assert(tide.session { agent = "long", provider = p, resume = copy, context = ctx })
    assert.are.equal(1, r:stats().compactions)
    assert.are.equal(compacted, json.canonical(r:history()))
    assert.matches("They asked about A and B", r:history()[1].content, 1, true)
    local resumed = next_turn(r)
    assert.are.same(original, resumed)
    assert.are.equal(1, r:stats().compactions)
    r:close()
    srv:close()
  end)

  it("compacts once and retries when the provider says the prompt is too long", function()
    local srv = mock { overflow_at = 2500 }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    -- a window it believes large: only the provider's error can tell
    local s = tide.session { agent = "long", provider = p,
      context = { window = 1000000, strategy = "drop" } }
    for i = 1, 4 do assert.are.equal("noted", s:turn("question " .. i)) end
    assert.are.equal(1, s:stats().compactions)
    srv:close()
  end)

  it("knows the servers' ways of saying the prompt does not fit", function()
    local is_overflow = require("tide.compaction").is_overflow
    for _, body in ipairs {
      '{"error":{"message":"This model\'s maximum context length is 128000 tokens. However, your messages resulted '
        .. 'in 130412 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}',
      '{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 204871 tokens > 200000 maximum"}}',
      '{"object":"error","message":"Prompt contains 40012 tokens and 0 draft tokens, too large for model with 32768 '
        .. 'maximum context length","type":"invalid_request_message_order","param":null,"code":"3051"}',
      '{"error":{"code":400,"message":"request (9412 tokens) exceeds the available context size (8192 tokens), try '
        .. 'increasing it","type":"exceed_context_size_error","n_prompt_tokens":9412,"n_ctx":8192}}',
      '[{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed '
        .. '(1048576).","status":"INVALID_ARGUMENT"}}]',
    } do
      assert.is_true(is_overflow({ code = "ProviderError", message = "x returned HTTP 400", body = body }), body)
    end
    assert.is_false(is_overflow({ code = "ProviderError", message = "openai returned HTTP 400: bad tool schema",
      body = '{"error":{"message":"Invalid schema for function lookup"}}' }))
    assert.is_false(is_overflow({ code = "RateLimited", message = "too many tokens per minute" }))
  end)

  it("fails clearly when the summary cannot be made, and loses nothing", function()
    local srv = mock { summary_fails = true }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false,
      retry = { attempts = 1 } }
    local s = tide.session { agent = "long", provider = p, context = { window = 4000, reserve = 500 } }
    local err
    for i = 1, 4 do
      local reply
      reply, err = s:turn("question " .. i)
      if not reply then break end
    end
    assert.are.equal("CompactionFailed", err.code)
    assert.are.equal(0, s:stats().compactions)
    assert.are.equal("question 1", s:history()[1].content)
    srv:close()
  end)

  it("counts a resumed history's size before its first request", function()
    local srv = mock()
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local path = dir .. "/resumed.jsonl"
    local ctx = { window = 100000, reserve = 1000, strategy = "drop" }
    local s = tide.session { agent = "long", provider = p, transcript = path, context = ctx }
    assert(s:turn("look A up"))
    local before = require("tide.compaction").estimate(s)
    s:close()
    local r = tide.session { agent = "long", provider = p, resume = path, context = ctx }
    -- (restored messages are encoded on first use: the estimate counts them all the same)
    assert.is_true(require("tide.compaction").estimate(r) >= 1000)
    assert.is_true(before >= 1000)
    r:close()
    srv:close()
  end)

  it("never cuts between tool results written as text with an image and their call", function()
    local c = require "tide.compaction"
    local marks = c._boundaries {
      { role = "user", content = "what is on my screen?" },
      { role = "assistant", content = '<tool_call>{"name":"shot"}</tool_call>' },
      { role = "user", content = { { type = "text", text = '<tool_result name="shot">\nhere\n</tool_result>' },
        { type = "image", mime = "image/png", data = "AAAA" } } },
      { role = "user", content = "and now?" },
    }
    assert.are.same({ 1, 4 }, marks)
  end)

  -- One request that needs twelve lookups, each about 1,000 tokens: a long
  -- agentic turn whose own results outgrow the window.
  local function long_turn_mock(opts)
    opts = opts or {}
    return testing.mock_server { default = function(req)
      local msgs = req.json.messages
      if msgs[1].content:find("memory of a conversation", 1, true) then
        return { text = "They asked about A and B; lookups found x." }
      end
      local prompt_tokens = #req.body // 4
      if prompt_tokens > (opts.hard_limit or 1e9) then
        return { fault = "status", status = 400, body = { error = {
          message = "This model's maximum context length is 4000 tokens.", code = "context_length_exceeded" } } }
      end
      local usage = { input = prompt_tokens, output = 5 }
      local n = 0
      for _, m in ipairs(msgs) do if m.role == "tool" then n = n + 1 end end
      if n >= 12 then return { text = "done after " .. n, usage = usage } end
      return { tool_calls = { { name = "lookup", arguments = { q = "item " .. n } } }, usage = usage }
    end }
  end

  for _, strategy in ipairs { "summarize", "drop" } do
    it("keeps one long turn inside the window by emptying its older results (" .. strategy .. ")", function()
      local srv = long_turn_mock()
      local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
      local path = dir .. "/long.jsonl"
      local events = {}
      local s = tide.session { agent = "long", provider = p, transcript = path, max_iterations = 20,
        context = { window = 4000, reserve = 500, strategy = strategy } }
      assert.are.equal("done after 12", s:turn("look up twelve things", { on_event = compactions_into(events) }))
      assert.is_true(s:stats().compactions >= 1)
      assert.is_true(#events >= 1)
      requests_fit(srv, 4000)
      -- the user's request and the latest results are whole; older ones emptied
      local last = srv:requests()[#srv:requests()].json.messages
      assert.are.equal("look up twelve things", last[2].content)
      assert.are.equal(BIG, last[#last].content)
      assert.matches("dropped to save context", last[4].content, 1, true)
      -- every call still has its result, and a resumed session has the same state
      s:close()
      local r = assert(tide.session { agent = "long", provider = p, resume = path, max_iterations = 20,
        context = { window = 4000, reserve = 500, strategy = strategy } })
      assert.are.same(s:history(), r:history())
      r:close()
      srv:close()
    end)
  end

  it("keeps a long turn inside the window when the model calls its tools as text", function()
    -- A model without native tools: calls as <tool_call> tags, results come
    -- back as user messages of <tool_result> tags, two calls a round.
    local srv = testing.mock_server { default = function(req)
      local msgs = req.json.messages
      local usage = { input = #req.body // 4, output = 5 }
      local n = 0
      for _, m in ipairs(msgs) do
        if m.role == "user" and m.content:find("^<tool_result") then n = n + 1 end
      end
      if n >= 8 then return { text = "done after " .. n, usage = usage } end
      return { text = ('<tool_call>{"name":"lookup","arguments":{"q":"a%d"}}</tool_call>\n'
        .. '<tool_call>{"name":"lookup","arguments":{"q":"b%d"}}</tool_call>'):format(n, n), usage = usage }
    end }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local path = dir .. "/text.jsonl"
    local s = tide.session { agent = "long", provider = p, transcript = path, max_iterations = 20,
      context = { window = 6000, reserve = 500, strategy = "drop" } }
    assert.are.equal("done after 8", s:turn("look up sixteen things"))
    assert.is_true(s:stats().compactions >= 1)
    for _, r in ipairs(srv:requests()) do
      assert.is_true(#r.body // 4 < 6000 + 2400, "a request past the window: " .. #r.body // 4)
    end
    local last = srv:requests()[#srv:requests()].json.messages
    assert.are.equal("look up sixteen things", last[2].content)
    -- an emptied round keeps both of its results' tags, in order; the latest is whole
    assert.are.equal('<tool_result name="lookup">\n[tool result dropped to save context]\n</tool_result>\n'
      .. '<tool_result name="lookup">\n[tool result dropped to save context]\n</tool_result>', last[4].content)
    assert.are.equal('<tool_result name="lookup">\n' .. BIG .. '\n</tool_result>\n<tool_result name="lookup">\n'
      .. BIG .. "\n</tool_result>", last[#last].content)
    s:close()
    local r = assert(tide.session { agent = "long", provider = p, resume = path, max_iterations = 20,
      context = { window = 6000, reserve = 500, strategy = "drop" } })
    assert.are.same(s:history(), r:history())
    r:close()
    srv:close()
  end)

  it("empties a long turn's results when the provider says it does not fit, keeping the latest", function()
    local srv = long_turn_mock { hard_limit = 3500 }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local s = tide.session { agent = "long", provider = p, max_iterations = 20,
      context = { window = 1000000, strategy = "drop" } }
    assert.are.equal("done after 12", s:turn("look up twelve things"))
    assert.is_true(s:stats().compactions >= 1)
    local last = srv:requests()[#srv:requests()].json.messages
    assert.are.equal(BIG, last[#last].content)
    srv:close()
  end)

  it("checks its options", function()
    local p = tide.provider.openai { base_url = "http://127.0.0.1:1", api_key = "k", model = "m" }
    assert.has_error(function() tide.session { agent = "long", provider = p, context = { strategy = "fold" } } end,
      'tide.session: \'context.strategy\' must be "summarize" or "drop"')
    assert.has_error(function() tide.session { agent = "long", provider = p, context = { windw = 1 } } end,
      "tide.session: unknown option 'context.windw'")
    assert.are.equal(128000, require("tide.compaction").window_of("gpt-4o-mini"))
    assert.are.equal(1047576, require("tide.compaction").window_of("gpt-4.1-mini"))
  end)
end)
