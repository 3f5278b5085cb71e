-- A tool call's input as the model writes it (`tool_input` events, and a
-- provider's on_tool_input): from OpenAI's chat completions (with ids, and
-- Gemini's index-less calls), the Responses API (function and custom
-- calls), Anthropic's Messages and Bedrock's Converse, streamed piece by
-- piece and, not streamed, whole; the mock streams each call's arguments
-- in pieces as the real APIs do.
local helpers = require "helpers"
local tide = require "tide"
local json = require "tide.json"

local FAST = { attempts = 1 }
local CREDS = { access_key_id = "AKIAINPUT", secret_access_key = "input/Secret+Key0123456789EXAMPLE" }

local write = tide.tool { name = "write_file", description = "Writes a file.",
  parameters = { type = "object", properties = { path = { type = "string" }, text = { type = "string" } } },
  handler = function() return "written" end }
local note = tide.tool { name = "note", description = "Keeps a note.", format = "text",
  handler = function() return "kept" end }
tide.agent { id = "writer", prompt = "You write files.", tools = { write, note } }

local PROVIDERS = {
  chat = function(url, stream)
    return tide.provider.openai { base_url = url .. "/v1", api_key = "k", model = "gpt-5", stream = stream, retry = FAST,
      custom_tools = true }
  end,
  responses = function(url, stream)
    return tide.provider.openai { base_url = url .. "/v1", api_key = "k", model = "gpt-5", stream = stream, retry = FAST,
      api = "responses" }
  end,
  anthropic = function(url, stream)
    return tide.provider.anthropic { base_url = url, api_key = "k", model = "claude-sonnet-4-5", stream = stream,
      retry = FAST }
  end,
  converse = function(url, stream)
    return tide.provider.bedrock { base_url = url, model = "us.amazon.nova-pro-v1:0", region = "us-west-2",
      credentials = CREDS, stream = stream, retry = FAST }
  end,
}

local CALLS = {
  { id = "call_a", name = "write_file", arguments = { path = "a.txt", text = "a first, longer text" } },
  { id = "call_b", name = "write_file", arguments = { path = "b.txt", text = "second" } },
}

-- The model: two calls, then an answer once their results are in.
local function model(calls, extra)
  local n = 0
  return function()
    n = n + 1
    if n > 1 then return "done" end
    local r = { tool_calls = calls }
    for k, v in pairs(extra or {}) do r[k] = v end
    return r
  end
end

-- One turn on `api`: the tool_input events it gave, by call id, in order.
local function turn(api, stream, calls)
  return helpers.run(function()
    local mock = { default = model(calls or CALLS) }
    if api == "converse" then mock.bedrock = { credentials = CREDS, region = "us-west-2" } end
    local srv <close> = assert(tide.testing.mock_server(mock))
    local s = tide.session { agent = "writer", provider = PROVIDERS[api](srv.url, stream) }
    local events = {}
    assert.are.equal("done", s:turn("write two files", { on_event = function(e)
      if e.type == "tool_input" then events[#events + 1] = e end
    end }))
    s:close()
    return events
  end)
end

-- The events' pieces joined, by call id; the names and indexes seen.
local function joined(events)
  local by, names, indexes = {}, {}, {}
  for _, e in ipairs(events) do
    assert.is_string(e.id)
    by[e.id] = (by[e.id] or "") .. e.delta
    names[e.id] = e.name
    indexes[e.id] = indexes[e.id] or e.index
    assert.are.equal(indexes[e.id], e.index) -- (one call, one index)
    assert.are.equal(0, e.depth)
  end
  return by, names, indexes
end

describe("tool_input events", function()
  for _, api in ipairs { "chat", "responses", "anthropic", "converse" } do
    it("give each call's input in pieces as " .. api .. " streams it, then whole when it does not", function()
      local streamed = turn(api, true)
      assert.is_true(#streamed > 4) -- (pieces, not two wholes)
      local by, names, indexes = joined(streamed)
      for _, c in ipairs(CALLS) do
        assert.are.same(c.arguments, json.decode(by[c.id]))
        assert.are.equal("write_file", names[c.id])
      end
      assert.is_true(indexes.call_a < indexes.call_b)
      local whole = turn(api, false)
      assert.are.equal(2, #whole)
      for i, e in ipairs(whole) do
        assert.are.same(CALLS[i].arguments, json.decode(e.delta))
        assert.are.same({ i - 1, CALLS[i].id, "write_file" }, { e.index, e.id, e.name })
      end
    end)
  end

  it("give a custom tool's free text as the Responses API streams it", function()
    local events = turn("responses", true, { { id = "call_n", name = "note", input = "remember the milk" } })
    local by = joined(events)
    assert.are.equal("remember the milk", by.call_n)
  end)

  it("give Gemini's index-less calls apart", function()
    helpers.run(function()
      -- (Gemini's endpoint streams each call whole, without `index`)
      local srv <close> = assert(tide.testing.mock_server { default = model(CALLS, { call_index = false }) })
      local p = PROVIDERS.chat(srv.url, true)
      local events = {}
      local s = tide.session { agent = "writer", provider = p }
      assert.are.equal("done", s:turn("go", { on_event = function(e)
        if e.type == "tool_input" then events[#events + 1] = e end
      end }))
      local by = joined(events)
      assert.are.same(CALLS[2].arguments, json.decode(by.call_b))
      s:close()
    end)
  end)

  it("reach a provider's own on_tool_input, and stop the turn when a listener raises", function()
    helpers.run(function()
      local srv <close> = assert(tide.testing.mock_server { default = model(CALLS) })
      local p = PROVIDERS.anthropic(srv.url, true)
      local pieces = {}
      local body = p:body(p:encode_prefix("s", { { name = "write_file", description = "d",
        parameters = write.parameters } }), { p:encode_message { role = "user", content = "go" } })
      local r = assert(p:complete(body, { on_tool_input = function(index, id, name, piece)
        pieces[#pieces + 1] = { index, id, name, piece }
      end }))
      assert.are.equal(2, #r.tool_calls)
      assert.are.same({ 0, "call_a", "write_file", "" }, pieces[1]) -- (the call starts: its block, the first)
      assert.has_error(function() p:complete(body, { on_tool_input = 1 }) end)
      local srv2 <close> = assert(tide.testing.mock_server { default = model(CALLS) })
      local s = tide.session { agent = "writer", provider = PROVIDERS.anthropic(srv2.url, true) }
      local reply, err = s:turn("go", { on_event = function(e)
        if e.type == "tool_input" then error("enough") end
      end })
      assert.is_nil(reply)
      assert.are.equal("TurnFailed", err.code)
      assert.is_true(err.listener)
      s:close()
    end)
  end)
end)
