-- AWS event streams (core/eventstream.c), the framing of Bedrock's streamed
-- replies: botocore's own test frames (tests/unit/test_eventstream.py) for
-- the prelude, the headers of every type and the CRCs; frames as Bedrock
-- sends them (a chunk's bytes base64-encoded, padded; an exception) for
-- what the reply parser gets; and a whole Claude stream fed through
-- core.anthropic_stream(max, "aws") in pieces of every size.
local core = require "tide.core"
local frames = core.aws_eventstream_frames

-- A frame as Bedrock makes it: string headers, then the payload.
local frame = require("tide.testing").aws_frame

local function chunk(json)
  return frame({ { ":event-type", "chunk" }, { ":content-type", "application/json" }, { ":message-type", "event" } },
    '{"bytes":"' .. core.base64(json) .. '","p":"abcdefghij"}')
end

local function exception(kind, message)
  return frame({ { ":exception-type", kind }, { ":content-type", "application/json" },
    { ":message-type", "exception" } }, '{"message":"' .. message .. '"}')
end

-- botocore's test frames
local ONE_STR_HEADER = "\0\0\0=\0\0\0 \7\253\131\150\12content-type\7\0\16application/json{'foo':'bar'}\141\156\8\177"
local ALL_HEADER_TYPES = "\0\0\0\98\0\0\0\82\3\181\203\156\1\48\0\1\49\1\1\50\2\2\1\51\3\0\3\1\52\4\0\0\0\4\1\53\5"
  .. "\0\0\0\0\0\0\0\5\1\54\6\0\5bytes\1\55\7\0\4utf8\1\56\8\0\0\0\0\0\0\0\8\1\57\0090123456789abcdef\99\53\54\113"

describe("core.aws_eventstream_frames", function()
  it("reads botocore's frames: prelude, CRCs, headers of every type", function()
    -- (they carry no :message-type: read through, then refused for that)
    for _, f in ipairs { ONE_STR_HEADER, ALL_HEADER_TYPES } do
      local out, err = frames(f)
      assert.is_nil(out)
      assert.are.equal("invalid AWS event stream: a frame has no known :message-type", err.message)
    end
  end)

  it("refuses botocore's corrupted frames for their CRC", function()
    local corrupted = ONE_STR_HEADER:gsub("content%-type", "content+type")
    local _, err = frames(corrupted)
    assert.are.equal("MalformedResponse", err.code)
    assert.matches("the message's CRC does not match", err.message, 1, true)
    _, err = frames("\1" .. ONE_STR_HEADER:sub(2))
    assert.matches("the prelude's CRC does not match", err.message, 1, true)
  end)

  it("hands on a chunk's bytes, and keeps an unfinished frame for later", function()
    local a, b = chunk('{"type":"ping"}'), chunk('{"type":"message_stop"}')
    local out, left = frames(a .. b)
    assert.are.same({ { data = '{"type":"ping"}' }, { data = '{"type":"message_stop"}' } }, out)
    assert.are.equal(0, left)
    out, left = frames(a .. b:sub(1, 20))
    assert.are.equal(1, #out)
    assert.are.equal(20, left)
  end)

  it("makes an exception the Anthropic error it stands for", function()
    local out = frames(exception("throttlingException", "Too many requests, please wait before trying again."))
    assert.are.same({ type = "error", error = { type = "rate_limit_error",
      message = "throttlingException: Too many requests, please wait before trying again." } },
      require("cjson").decode(out[1].data))
    out = frames(exception("serviceUnavailableException", "Bedrock is unable to process your request."))
    assert.matches('"type":"overloaded_error"', out[1].data, 1, true)
  end)

  it("refuses what Bedrock would never send", function()
    local function refused(bytes, why)
      local out, err = frames(bytes)
      assert.is_nil(out)
      assert.matches(why, err.message, 1, true)
    end
    refused(frame({ { ":message-type", "event" }, { ":event-type", "chunk" } }, '{"p":"x"}'), 'a chunk has no "bytes"')
    refused(frame({ { ":message-type", "event" }, { ":event-type", "chunk" } }, '{"bytes":"!!"}'), "not base64")
    refused(frame({ { ":message-type", "event" }, { ":event-type", "chunk" } }, "[1]"), "payload is not a JSON object")
    refused(string.pack(">I4I4", 8, 0) .. string.pack(">I4", core.crc32(string.pack(">I4I4", 8, 0))),
      "shorter than its prelude")
    -- a header of type 10, which does not exist
    local h = string.pack(">s1B", "x", 10)
    local prelude = string.pack(">I4I4", 16 + #h, #h)
    prelude = prelude .. string.pack(">I4", core.crc32(prelude))
    refused(prelude .. h .. string.pack(">I4", core.crc32(prelude .. h)), "unknown type")
    -- headers longer than the frame (the CRCs right all the same)
    prelude = string.pack(">I4I4", 16, 4)
    prelude = prelude .. string.pack(">I4", core.crc32(prelude))
    refused(prelude .. string.pack(">I4", core.crc32(prelude)), "headers are longer than the frame")
  end)

  it("skips an event of another type", function()
    local other = frame({ { ":message-type", "event" }, { ":event-type", "initial-response" } }, "{}")
    local out = frames(other .. chunk('{"type":"ping"}'))
    assert.are.same({ { data = '{"type":"ping"}' } }, out)
  end)
end)

describe("core.anthropic_stream with the aws framing", function()
  local EVENTS = {
    '{"type":"message_start","message":{"id":"msg_bdrk_1","type":"message","role":"assistant","model":"claude-x",'
      .. '"content":[],"stop_reason":null,"usage":{"input_tokens":12,"output_tokens":1}}}',
    '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
    '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}',
    '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there"}}',
    '{"type":"content_block_stop","index":0}',
    '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}',
    '{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":12,"outputTokenCount":7,'
      .. '"invocationLatency":412,"firstByteLatency":180}}',
  }
  local function stream_bytes()
    local out = {}
    for i, e in ipairs(EVENTS) do out[i] = chunk(e) end
    return table.concat(out)
  end

  it("reads a whole reply fed in pieces of every size", function()
    local bytes = stream_bytes()
    for _, size in ipairs { 1, 3, 7, 64, #bytes } do
      local p <close> = core.anthropic_stream(nil, "aws")
      local text = {}
      for i = 1, #bytes, size do
        local d, err = p:feed(bytes:sub(i, i + size - 1))
        assert.is_nil(err)
        if d then text[#text + 1] = d end
      end
      local r = assert(p:finish())
      assert.are.equal("Hello there", r.text)
      assert.are.equal("Hello there", table.concat(text))
      assert.are.equal("stop", r.stop)
      assert.are.equal(12, r.usage.input)
      assert.are.equal(7, r.usage.output)
    end
  end)

  it("fails on an exception as on Anthropic's error event: a rate limit, retryable", function()
    local p <close> = core.anthropic_stream(nil, "aws")
    local _, err = p:feed(chunk(EVENTS[1]) .. exception("throttlingException", "Too many requests."))
    assert.are.equal("RateLimited", err.code)
    assert.is_true(err.retryable)
    assert.matches("throttlingException: Too many requests.", err.message, 1, true)
    local _, again = p:feed(chunk(EVENTS[2]))
    assert.are.equal(err, again) -- (the stream stays failed)
  end)

  it("fails on a bad frame with MalformedResponse, and on a frame over the cap", function()
    local bytes = stream_bytes()
    local p <close> = core.anthropic_stream(nil, "aws")
    local _, err = p:feed(bytes:sub(1, -2) .. "\0")
    assert.are.equal("MalformedResponse", err.code)
    assert.matches("invalid AWS event stream: the message's CRC does not match", err.message, 1, true)
    local small <close> = core.anthropic_stream(64, "aws")
    _, err = small:feed(bytes)
    assert.are.equal("StreamTooLarge", err.cause)
  end)

  it("still reads SSE by default, and refuses an unknown framing", function()
    local p <close> = core.anthropic_stream()
    local _, err = p:feed("event: ping\ndata: {\"type\":\"ping\"}\n\n")
    assert.is_nil(err)
    assert.has_error(function() core.anthropic_stream(nil, "xml") end)
  end)
end)

describe("core.aws_eventstream (the raw mode, Converse's)", function()
  local frame = require("tide.testing").aws_frame
  local function event(name, payload)
    return frame({ { ":message-type", "event" }, { ":event-type", name }, { ":content-type", "application/json" } },
      payload)
  end

  it("hands each frame's type and payload on, fed in pieces of every size", function()
    local bytes = event("messageStart", '{"role":"assistant"}') .. event("contentBlockDelta",
      '{"contentBlockIndex":0,"delta":{"text":"Hi"},"p":"abc"}') .. frame({ { ":message-type", "exception" },
      { ":exception-type", "throttlingException" } }, '{"message":"slow down"}')
    for size = 1, #bytes do
      local d <close> = core.aws_eventstream()
      local got = {}
      for i = 1, #bytes, size do
        for _, e in ipairs(assert(d:feed(bytes:sub(i, i + size - 1)))) do got[#got + 1] = e end
      end
      assert.are.same({ { type = "messageStart", data = '{"role":"assistant"}' },
        { type = "contentBlockDelta", data = '{"contentBlockIndex":0,"delta":{"text":"Hi"},"p":"abc"}' },
        { type = "throttlingException", data = '{"message":"slow down"}', exception = true } }, got)
      assert.are.equal(0, d:pending())
    end
  end)

  it("keeps an unfinished frame, and refuses a corrupt one for good", function()
    local d <close> = core.aws_eventstream()
    local f = event("metadata", '{"usage":{}}')
    assert.are.same({}, d:feed(f:sub(1, 10)))
    assert.are.equal(10, d:pending())
    local bad = f:sub(1, -2) .. string.char((f:byte(-1) + 1) % 256)
    local events, err = core.aws_eventstream():feed(bad)
    assert.is_nil(events)
    assert.are.equal("MalformedResponse", err.code)
    assert.matches("the message's CRC does not match", err.message, 1, true)
    local e2 = core.aws_eventstream()
    assert.is_nil((e2:feed(bad)))
    assert.has_error(function() e2:feed(f) end, "tide.aws_eventstream: the stream was already refused")
    -- a frame with no :event-type
    events, err = core.aws_eventstream():feed(frame({ { ":message-type", "event" } }, "{}"))
    assert.is_nil(events)
    assert.matches("an event has no :event-type", err.message, 1, true)
  end)
end)
