local core = require "tide.core"

-- Feeds each chunk in turn and returns every event dispatched, in order.
local function feed_all(p, chunks)
  local events = {}
  for _, chunk in ipairs(chunks) do
    local got, err = p:feed(chunk)
    assert(got, err and tostring(err))
    for _, e in ipairs(got) do events[#events + 1] = e end
  end
  return events
end

local function parse(s)
  return feed_all(core.sse_parser(), { s })
end

-- Returns the error message raised by fn (fails if it does not raise).
local raised = require("helpers").raised

describe("core.sse_parser", function()
  it("parses a single event", function()
    assert.are.same({ { event = "message", data = "hello" } }, parse("data: hello\n\n"))
  end)

  it("joins multi-line data with newlines", function()
    assert.are.same({ { event = "message", data = "a\nb\n\nc" } },
      parse("data: a\ndata: b\ndata:\ndata: c\n\n"))
  end)

  it("accepts CRLF and lone CR line endings", function()
    assert.are.same({ { event = "message", data = "a\nb" } }, parse("data: a\r\ndata: b\r\n\r\n"))
    assert.are.same({ { event = "message", data = "a\nb" } }, parse("data: a\rdata: b\r\r"))
    assert.are.same({
      { event = "message", data = "1" },
      { event = "message", data = "2" },
      { event = "message", data = "3" },
    }, parse("data: 1\r\rdata: 2\n\ndata: 3\r\n\r\n"))
  end)

  it("strips exactly one space after the colon", function()
    assert.are.same({ { event = "message", data = "x\n y\nz" } },
      parse("data: x\ndata:  y\ndata:z\n\n"))
  end)

  it("ignores comments and unknown fields", function()
    assert.are.same({ { event = "message", data = "x" } },
      parse(": keep-alive\n:\nfoo: bar\nretry: 1000\ndata: x\n: more\n\n"))
    assert.are.same({}, parse(": just a comment\n\n"))
  end)

  it("treats a line without a colon as a field with an empty value", function()
    assert.are.same({ { event = "message", data = "" } }, parse("data\n\n"))
    assert.are.same({ { event = "message", data = "\n" } }, parse("data\ndata\n\n"))
    assert.are.same({}, parse("event\n\n"))
  end)

  it("names events with the event field", function()
    assert.are.same({
      { event = "content_block_delta", data = "{\"x\":1}" },
      { event = "message", data = "plain" },
    }, parse("event: content_block_delta\ndata: {\"x\":1}\n\ndata: plain\n\n"))
  end)

  it("does not dispatch an event without data, and resets its type", function()
    assert.are.same({ { event = "message", data = "d" } },
      parse("event: ping\n\ndata: d\n\n"))
  end)

  it("reports the last event id, which persists across events", function()
    assert.are.same({
      { event = "message", data = "a", id = "1" },
      { event = "message", data = "b", id = "1" },
      { event = "message", data = "c" },
      { event = "message", data = "d", id = "7" },
    }, parse("id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 7\ndata: d\n\n"))
    -- An id containing NUL is ignored.
    assert.are.same({ { event = "message", data = "x", id = "2" } },
      parse("id: 2\nid: a\0b\ndata: x\n\n"))
  end)

  it("keeps the last event id and the last valid retry", function()
    local p = core.sse_parser()
    assert.is_nil(p:last_id())
    assert.is_nil(p:retry())
    -- the priming event MCP servers send: an id, a retry, empty data (an
    -- event, by WHATWG's rules: the data field was there)
    assert.are.same({ { event = "message", data = "", id = "0-primed" } },
      p:feed("id: 0-primed\nretry: 2000\ndata: \n\n"))
    assert.are.same({ "0-primed", 2000 }, { p:last_id(), p:retry() })
    -- only ASCII digits set it; anything else leaves it
    for _, bad in ipairs { "retry: 1.5", "retry: -3", "retry: 12a", "retry:", "retry: 1 " } do
      p:feed(bad .. "\n")
      assert.are.equal(2000, p:retry(), bad)
    end
    -- an id without an event (no data field) counts too
    p:feed("retry: 0\nid: 9\n\n")
    assert.are.same({ "9", 0 }, { p:last_id(), p:retry() })
    -- a huge one is held to a day
    p:feed("retry: 99999999999999999999999\n")
    assert.are.equal(86400000, p:retry())
  end)

  it("marks [DONE]", function()
    assert.are.same({
      { event = "message", data = "{}" },
      { event = "message", data = "[DONE]", done = true },
    }, parse("data: {}\n\ndata: [DONE]\n\n"))
    assert.are.same({ { event = "message", data = "[DONE] " } }, parse("data: [DONE] \n\n"))
  end)

  it("strips a leading byte order mark", function()
    assert.are.same({ { event = "message", data = "x" } }, parse("\xEF\xBB\xBFdata: x\n\n"))
    assert.are.same({ { event = "message", data = "x" } },
      feed_all(core.sse_parser(), { "\xEF", "\xBB", "\xBFdata: x\n\n" }))
  end)

  it("returns an empty array when a chunk completes no event", function()
    local p = core.sse_parser()
    assert.are.same({}, p:feed(""))
    assert.are.same({}, p:feed("data: partial"))
    assert.are.same({}, p:feed(" more\n"))
    assert.are.same({ { event = "message", data = "partial more" } }, p:feed("\n"))
  end)

  describe("chunk boundaries", function()
    local stream = table.concat {
      "\xEF\xBB\xBF: comment\r\n",
      "event: delta\r\n",
      "id: 42\r\n",
      "data: {\"a\": 1}\r\n",
      "data:second\r\n",
      "\r\n",
      "data: cr only\r\r",
      "retry: 5\n",
      "data\n",
      "\n",
      "event: x\rdata: lf\n\n",
      "data: [DONE]\n\n",
    }
    local whole = parse(stream)

    it("gives the expected events for the whole stream", function()
      assert.are.same({
        { event = "delta", data = "{\"a\": 1}\nsecond", id = "42" },
        { event = "message", data = "cr only", id = "42" },
        { event = "message", data = "", id = "42" },
        { event = "x", data = "lf", id = "42" },
        { event = "message", data = "[DONE]", id = "42", done = true },
      }, whole)
    end)

    it("gives the same events when split at every byte boundary", function()
      for i = 0, #stream do
        local p = core.sse_parser()
        local got = feed_all(p, { stream:sub(1, i), stream:sub(i + 1) })
        assert.are.same(whole, got, "split at " .. i)
        assert.is_true(p:finish())
      end
    end)

    it("gives the same events when split at every pair of boundaries", function()
      for i = 0, #stream do
        for j = i, #stream do
          local got = feed_all(core.sse_parser(),
            { stream:sub(1, i), stream:sub(i + 1, j), stream:sub(j + 1) })
          assert.are.same(whole, got, "split at " .. i .. " and " .. j)
        end
      end
    end)

    it("gives the same events when fed byte by byte", function()
      local chunks = {}
      for i = 1, #stream do chunks[i] = stream:sub(i, i) end
      local p = core.sse_parser()
      assert.are.same(whole, feed_all(p, chunks))
      assert.is_true(p:finish())
    end)

    it("treats CR at the end of a chunk and LF at the start of the next as one break", function()
      assert.are.same({ { event = "message", data = "a\nb" } },
        feed_all(core.sse_parser(), { "data: a\r", "\ndata: b\r", "\n\r", "\n" }))
      -- An empty chunk in between does not forget the CR.
      assert.are.same({ { event = "message", data = "a\nb" } },
        feed_all(core.sse_parser(), { "data: a\r", "", "\ndata: b\n\n" }))
      -- A CR followed by a chunk not starting with LF ends the line by itself.
      assert.are.same({ { event = "message", data = "a" } },
        feed_all(core.sse_parser(), { "data: a\r", "\r" }))
    end)
  end)

  describe("size cap", function()
    it("accepts data up to the cap", function()
      local p = core.sse_parser(10)
      assert.are.same({ { event = "message", data = "0123456789" } }, p:feed("data: 0123456789\n\n"))
      assert.are.same({ { event = "message", data = "01234\n6789" } }, p:feed("data: 01234\ndata: 6789\n\n"))
    end)

    it("fails with StreamTooLarge past the cap, and stays failed", function()
      local p = core.sse_parser(10)
      local events, err = p:feed("data: 01234\ndata: 01234\n")
      assert.is_nil(events)
      assert.are.equal("StreamTooLarge", err.code)
      assert.is_string(err.message)
      local again, err2 = p:feed("data: x\n\n")
      assert.is_nil(again)
      assert.are.equal(err, err2)
      assert.is_false(p:finish())
    end)

    it("fails on an endless line without buffering it all", function()
      local p = core.sse_parser(100)
      local ok = p:feed("data: " .. string.rep("x", 50))
      assert.are.same({}, ok)
      local events, err = p:feed(string.rep("x", 200))
      assert.is_nil(events)
      assert.are.equal("StreamTooLarge", err.code)
      -- The same line in one chunk is rejected too.
      events, err = core.sse_parser(100):feed(": " .. string.rep("x", 300) .. "\n")
      assert.is_nil(events)
      assert.are.equal("StreamTooLarge", err.code)
    end)

    it("defaults to 8 MiB", function()
      local big = string.rep("y", 8 * 1024 * 1024)
      local events = core.sse_parser():feed("data: " .. big .. "\n\n")
      assert.are.equal(big, events[1].data)
      local none, err = core.sse_parser():feed("data: " .. big .. "z\n\n")
      assert.is_nil(none)
      assert.are.equal("StreamTooLarge", err.code)
    end)
  end)

  describe("finish", function()
    it("is true when the stream ended on an event boundary", function()
      local p = core.sse_parser()
      assert.is_true(p:finish())
      p:feed("data: a\n\n: trailing comment\n")
      assert.is_true(p:finish())
    end)

    it("is false with a partial line", function()
      local p = core.sse_parser()
      p:feed("data: a\n\ndata: trunc")
      assert.is_false(p:finish())
    end)

    it("is false with undispatched data, which it discards", function()
      local p = core.sse_parser()
      assert.are.same({}, p:feed("data: a\n"))
      assert.is_false(p:finish())
      assert.are.same({}, p:feed("\n"))
      assert.is_true(p:finish())
    end)

    it("is false after a final lone CR ends a data line", function()
      local p = core.sse_parser()
      p:feed("data: a\r")
      assert.is_false(p:finish())
    end)
  end)

  describe("misuse", function()
    it("raises naming the argument", function()
      assert.matches("bad argument #1 to '[%w.]*sse_parser' %(number expected, got string%)",
        raised(core.sse_parser, "big"))
      assert.matches("bad argument #1 to '[%w.]*sse_parser' %(must be positive%)",
        raised(core.sse_parser, 0))
      assert.matches("bad argument #1 to '[%w.]*sse_parser'", raised(core.sse_parser, 1.5))
      local p = core.sse_parser()
      assert.matches("bad argument #1 to 'feed' %(string expected, got table%)",
        raised(function() return p:feed({}) end))
      assert.matches("bad argument #1 to 'feed' %(string expected, got no value%)",
        raised(function() return p:feed() end))
      assert.matches("tide.sse expected", raised(p.feed, {}, "x"))
    end)

    it("raises when used after close; close is idempotent", function()
      local p = core.sse_parser()
      p:feed("data: a")
      p:close()
      p:close()
      assert.has_error(function() p:feed("x") end, "attempt to use a closed sse parser")
      assert.has_error(function() p:finish() end, "attempt to use a closed sse parser")
      assert.matches("closed", tostring(p))
    end)

    it("is closed by a to-be-closed variable", function()
      local escaped
      do
        local p <close> = core.sse_parser()
        p:feed("data: a")
        escaped = p
      end
      assert.has_error(function() escaped:feed("x") end, "attempt to use a closed sse parser")
    end)
  end)
end)
