-- tide.provider.openai against servers that speak chat completions their
-- own way, as the mock answers for them: OpenRouter's reasoning_details
-- (Gemini 3 and Claude behind it refuse a tool-call follow-up without them),
-- Mistral's API (content as a list of text and thinking chunks, a 422 for
-- every field it does not document, nine-character call ids) and Groq's
-- (reasoning as `reasoning`, a 400 for a reasoning_content field).
local tide = require "tide"
local core = require "tide.core"
local cjson = require "cjson"
local kit = require "support.openai_kit"

local make, with_mock, body_of, USER, lookup = kit.make, kit.with_mock, kit.body_of, kit.USER, kit.lookup

-- What Gemini 3 answers through OpenRouter: its thinking as text with a
-- signature, and the encrypted thought signature of the call.
local function gemini_details(n)
  return {
    { type = "reasoning.text", text = "The user wants the weather, step " .. n .. ".",
      signature = "CiQB0e2Kb" .. n .. "==", format = "google-gemini-v1", index = 0 },
    { type = "reasoning.encrypted", data = "EjQKMgEMOdbH" .. n .. "==", id = "tool_lookup_" .. n,
      format = "google-gemini-v1", index = 0 },
  }
end

local tmpname = require("helpers").tmp_transcript

for _, stream in ipairs({ true, false }) do
  local mode = stream and "streaming" or "non-streaming"

  describe("openai through OpenRouter (" .. mode .. ")", function()
    it("keeps reasoning_details, one array as the reply had it, and sends it back", function()
      local details = gemini_details(1)
      with_mock({ replies = {
        { reasoning_details = details, tool_calls = { { id = "tool_lookup_1", name = "lookup",
          arguments = { q = "Paris" } } } },
        "Sunny.",
      } }, function(srv)
        local p = make(srv.url, stream)
        local heard = {}
        local res = assert(p:complete(body_of(p, { USER }),
          { on_reasoning = function(t) heard[#heard + 1] = t end }))
        assert.are.equal("The user wants the weather, step 1.", table.concat(heard))
        assert.are.equal("text", res.reasoning[1].type)
        assert.are.equal("The user wants the weather, step 1.", res.reasoning[1].text)
        local part = res.reasoning[2]
        assert.are.equal("details", part.type)
        assert.are.equal("openai", part.provider)
        -- streamed in pieces, merged back into the entries the message had
        assert.are.same(details, cjson.decode(part.data))
        local follow = body_of(p, { USER, { role = "assistant", tool_calls = res.tool_calls, reasoning = res.reasoning },
          { role = "tool", results = { { id = "tool_lookup_1", content = "sunny" } } } })
        assert.are.equal("Sunny.", assert(p:complete(follow)).text)
        local sent = srv:requests()[2].json.messages[3]
        assert.are.same(details, sent.reasoning_details)
      end)
    end)

    it("gets OpenRouter's 400 when a follow-up drops them, and says why", function()
      with_mock({ replies = {
        { reasoning_details = gemini_details(2), tool_calls = { { id = "tool_lookup_2", name = "lookup",
          arguments = {} } } },
        "never",
      } }, function(srv)
        local p = make(srv.url, stream)
        local res = assert(p:complete(body_of(p, { USER })))
        local text_only = { res.reasoning[1] } -- the reasoning text kept, the details lost
        local _, err = p:complete(body_of(p, { USER, { role = "assistant", tool_calls = res.tool_calls,
          reasoning = text_only }, { role = "tool", results = { { id = "tool_lookup_2", content = "x" } } } }))
        assert.are.equal("ProviderError", err.code)
        assert.are.equal(400, err.status)
        -- the upstream cause, not only "Provider returned error"
        assert.matches("Provider returned error: Gemini models require OpenRouter reasoning details",
          err.message, 1, true)
        assert.matches("missing a thought_signature", err.message, 1, true)
      end)
    end)

    it("counts OpenRouter's cache writes and takes the cost it billed as the session's", function()
      with_mock({ replies = {
        { tool_calls = { { name = "lookup", arguments = { q = "x" } } },
          usage = { input = 4000, output = 20, cached = 0, cache_write = 3800, cost = 0.01534 } },
        { text = "done", usage = { input = 4100, output = 5, cached = 3800, cost = 0.00211 } },
      } }, function(srv)
        tide.agent { id = "or_cost", prompt = "You think.", tools = { lookup } }
        local s = tide.session { agent = "or_cost", provider = make(srv.url, stream) }
        assert.are.equal("done", assert(s:turn("look")))
        local st = s:stats()
        assert.are.same({ input = 8100, output = 25, cached = 3800, cache_write = 3800, reasoning = 0 }, st.tokens)
        -- the model has no tide.prices entry: the cost is OpenRouter's own
        assert.is_true(math.abs(st.cost_usd - (0.01534 + 0.00211)) < 1e-12)
        assert.are.equal(0, st.unpriced_calls)
      end)
    end)

    it("fails a reply OpenRouter ends with finish_reason error, never taking it for an answer", function()
      with_mock({ replies = { { text = "The capital of Australia is Syd", finish_reason = "error" } } }, function(srv)
        tide.agent { id = "or_plain", prompt = "You think." }
        local s = tide.session { agent = "or_plain", provider = make(srv.url, stream, { retry = { attempts = 1 } }) }
        local reply, err = s:turn("capital of Australia?")
        assert.is_nil(reply)
        assert.are.equal("ProviderError", err.code)
        assert.matches('finish_reason "error"', err.message, 1, true)
        assert.are.equal("The capital of Australia is Syd", err.partial_text)
        assert.are.equal(1, #srv:requests())
      end)
    end)

    it("runs a Gemini tool loop in a session, and a resumed session sends them back too", function()
      local path = tmpname()
      with_mock({ default = kit.two_lookups(function(n)
        return { reasoning_details = gemini_details(n), tool_calls = { { id = "tool_lookup_" .. n,
          name = "lookup", arguments = { q = "item " .. n } } } }
      end, { text = "two lookups" }) }, function(srv)
        tide.agent { id = "gemini_or", prompt = "You think.", tools = { lookup } }
        local s = tide.session { agent = "gemini_or", provider = make(srv.url, stream), transcript = path }
        assert.are.equal("two lookups", assert(s:turn("look twice")))
        local last = srv:requests()[3].json.messages
        local seen = {}
        for _, m in ipairs(last) do
          if m.role == "assistant" then seen[#seen + 1] = m.reasoning_details end
        end
        assert.are.same({ gemini_details(0), gemini_details(1) }, seen)
        -- the transcript keeps them: a resumed session's next turn sends
        -- the earlier rounds' details again, or OpenRouter would refuse it
        local r = tide.session { resume = path, agent = "gemini_or", provider = make(srv.url, stream) }
        assert.are.equal("two lookups", assert(r:turn("and again")))
        local again = srv:requests()[#srv:requests()].json.messages
        local kept = {}
        for _, m in ipairs(again) do
          if m.role == "assistant" and m.reasoning_details then kept[#kept + 1] = m.reasoning_details end
        end
        assert.are.same({ gemini_details(0), gemini_details(1) }, kept)
      end)
      os.remove(path)
    end)
  end)

  describe("openai against Mistral's API (" .. mode .. ")", function()
    local MISTRAL = { stream_usage = false, max_tokens_field = "max_tokens", max_tokens = 512 }

    it("reads thinking and text chunks, and sends the thinking back as a chunk", function()
      with_mock({ openai = { mistral = true }, replies = {
        { reasoning = "Weather needs a lookup.", signature = "mSig1", tool_calls = { { name = "lookup",
          arguments = { q = "Lyon" } } }, usage = { input = 20, output = 9 } },
        { reasoning = "It said sunny.", text = "Sunny in Lyon." },
      } }, function(srv)
        local p = make(srv.url, stream, MISTRAL)
        local heard = {}
        local res = assert(p:complete(body_of(p, { USER }),
          { on_reasoning = function(t) heard[#heard + 1] = t end }))
        assert.are.equal("Weather needs a lookup.", table.concat(heard))
        if stream then assert.is_true(#heard > 1) end
        assert.are.same({ { type = "text", text = "Weather needs a lookup.", signature = "mSig1", via = "content",
          provider = "openai" } }, res.reasoning)
        assert.are.equal("", res.text)
        assert.are.equal(20, res.usage.input) -- streamed on the finish chunk, unasked
        local id = res.tool_calls[1].id
        assert.matches("^%w%w%w%w%w%w%w%w%w$", id)
        local follow = body_of(p, { USER, { role = "assistant", tool_calls = res.tool_calls, reasoning = res.reasoning },
          { role = "tool", results = { { id = id, content = "sunny" } } } })
        local res2 = assert(p:complete(follow))
        assert.are.equal("Sunny in Lyon.", res2.text)
        assert.are.equal("It said sunny.", res2.reasoning[1].text)
        local sent = srv:requests()[2].json.messages[3]
        assert.is_nil(sent.reasoning_content) -- Mistral refuses the field
        assert.are.same({ { type = "thinking", signature = "mSig1",
          thinking = { { type = "text", text = "Weather needs a lookup." } } } }, sent.content)
        -- with text, the text follows as a text chunk
        local enc = cjson.decode(p:encode_message({ role = "assistant", content = "Sunny in Lyon.",
          reasoning = res2.reasoning }))
        assert.are.same({ { type = "thinking", thinking = { { type = "text", text = "It said sunny." } } },
          { type = "text", text = "Sunny in Lyon." } }, enc.content)
        assert.is_nil(enc.reasoning_content)
      end)
    end)

    it("gets Mistral's 422 for a field it does not document, and says which", function()
      with_mock({ openai = { mistral = true }, replies = { "never" } }, function(srv)
        local p = make(srv.url, stream, { max_tokens = 64 }) -- max_completion_tokens, stream_options
        local _, err = p:complete(body_of(p, { USER }))
        assert.are.equal("ProviderError", err.code)
        assert.are.equal(422, err.status)
        assert.matches("Extra inputs are not permitted (body.max_completion_tokens)", err.message, 1, true)
      end)
    end)

    it("runs a Magistral tool loop in a session", function()
      with_mock({ openai = { mistral = true }, default = kit.two_lookups(function(n)
        return { reasoning = "step " .. n } end, { reasoning = "done now", text = "two lookups" }) }, function(srv)
        tide.agent { id = "magistral", prompt = "You think.", tools = { lookup } }
        local s = tide.session { agent = "magistral", provider = make(srv.url, stream, MISTRAL) }
        assert.are.equal("two lookups", assert(s:turn("look twice")))
        local seen = {}
        for _, m in ipairs(srv:requests()[3].json.messages) do
          if m.role == "assistant" then seen[#seen + 1] = m.content[1].thinking[1].text end
        end
        assert.are.same({ "step 0", "step 1" }, seen)
        assert.are.equal("done now", s:history()[#s:history()].reasoning[1].text)
      end)
    end)
  end)

  describe("openai against DeepSeek's proxies (" .. mode .. ")", function()
    it("reads cached tokens named prompt_cache_hit_tokens", function()
      with_mock({ openai = { deepseek = true }, replies = { { text = "ok", usage = { input = 500, output = 3,
        cached = 448 } } } }, function(srv)
        local p = make(srv.url, stream)
        local res = assert(p:complete(body_of(p, { USER })))
        assert.are.same({ input = 500, output = 3, cached = 448, cache_write = 0, reasoning = 0,
          service_tier = "default" }, res.usage)
      end)
    end)
  end)

  describe("openai against Alibaba Cloud Model Studio (DashScope) (" .. mode .. ")", function()
    it("says enable_thinking: false in a request that is not streamed, which Qwen3's open models need", function()
      with_mock({ openai = { dashscope = true }, replies = { "ok", "ok" } }, function(srv)
        -- the provider of the real host, its requests sent to the mock
        local p = tide.provider.openai { base_url = "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
          api_key = "sk-dash", model = "qwen3-32b", stream = stream }
        rawset(p, "base_url", srv.url .. "/v1")
        assert.are.equal("ok", assert(p:complete(body_of(p, { USER }))).text)
        local sent = srv:requests()[1].json
        if stream then assert.is_nil(sent.enable_thinking) else assert.are.equal(false, sent.enable_thinking) end
        -- another host's provider sends nothing of the kind, and a whole request gets DashScope's 400
        local other = make(srv.url, stream)
        local res, err = other:complete(body_of(other, { USER }))
        if stream then
          assert.are.equal("ok", assert(res).text)
        else
          assert.are.equal(400, err.status)
          assert.matches("parameter.enable_thinking must be set to false for non-streaming calls", err.message, 1, true)
        end
      end)
      -- extra_body's own value wins
      local p = tide.provider.openai { base_url = "https://dashscope.aliyuncs.com/compatible-mode/v1", api_key = "k",
        model = "qwen-plus", stream = stream, extra_body = { enable_thinking = true } }
      local body = cjson.decode(p:body(p:encode_prefix("s"), {}))
      assert.are.equal(true, body.enable_thinking)
    end)
  end)

  describe("openai against Groq (" .. mode .. ")", function()
    it("sends a reasoning model's reasoning back as `reasoning`, which Groq takes", function()
      with_mock({ openai = { groq = true }, default = kit.two_lookups(function(n)
        return { reasoning = "need item " .. n } end, { reasoning = "have both", text = "two lookups" }) }, function(srv)
        tide.agent { id = "gpt_oss", prompt = "You think.", tools = { lookup } }
        local s = tide.session { agent = "gpt_oss", provider = make(srv.url, stream) }
        assert.are.equal("two lookups", assert(s:turn("look twice")))
        local seen = {}
        for _, m in ipairs(srv:requests()[3].json.messages) do
          if m.role == "assistant" then
            assert.is_nil(m.reasoning_content)
            seen[#seen + 1] = m.reasoning
          end
        end
        assert.are.same({ "need item 0", "need item 1" }, seen)
        local last = s:history()[#s:history()].reasoning[1]
        assert.are.same({ type = "text", text = "have both", field = "reasoning", provider = "openai" }, last)
        -- what tide sent before: Groq's 400, which the error now quotes
        srv:push("never")
        local p = make(srv.url, stream)
        local _, err = p:complete(body_of(p, { USER, { role = "assistant", content = "x",
          reasoning = { { type = "text", text = "t", provider = "openai" } } } }))
        assert.are.equal(400, err.status)
        assert.matches("property 'reasoning_content' is unsupported", err.message, 1, true)
      end)
    end)
  end)
end

describe("openai provider options and parts, server by server", function()
  it("speaks Mistral's dialect by default at api.mistral.ai", function()
    local p = tide.provider.openai { base_url = "https://api.mistral.ai/v1", api_key = "k", model = "magistral-medium-latest",
      max_tokens = 100 }
    local prefix = p:encode_prefix("x", {})
    assert.is_nil(prefix:find("stream_options", 1, true))
    assert.is_nil(prefix:find("max_completion_tokens", 1, true))
    assert.truthy(prefix:find('"max_tokens":100', 1, true))
    -- and the options still win
    p = tide.provider.openai { base_url = "https://api.mistral.ai/v1", api_key = "k", stream_usage = true }
    assert.truthy(p:encode_prefix("x", {}):find('"stream_options":{"include_usage":true}', 1, true))
    p = tide.provider.openai { api_key = "k" }
    assert.truthy(p:encode_prefix("x", {}):find('"stream_options":{"include_usage":true}', 1, true))
    p = tide.provider.openai { api_key = "k", stream_usage = false }
    assert.is_nil(p:encode_prefix("x", {}):find("stream_options", 1, true))
  end)

  it("sends max_tokens by its old name at DeepSeek and Ollama, which ignore the new one", function()
    local p = tide.provider.openai { base_url = "https://api.deepseek.com", api_key = "k", model = "deepseek-chat",
      max_tokens = 300 }
    local prefix = p:encode_prefix("x", {})
    assert.truthy(prefix:find('"max_tokens":300', 1, true))
    assert.truthy(prefix:find('"stream_options":{"include_usage":true}', 1, true))
    p = tide.provider.openai { base_url = "https://api.deepseek.com/v1", api_key = "k", max_tokens = 300,
      max_tokens_field = "max_completion_tokens" }
    assert.truthy(p:encode_prefix("x", {}):find('"max_completion_tokens":300', 1, true))
    -- and at Ollama's default port (its request has max_tokens alone)
    for _, url in ipairs { "http://localhost:11434/v1", "http://127.0.0.1:11434/v1", "https://ollama.com/v1" } do
      p = tide.provider.openai { base_url = url, api_key = "k", max_tokens = 300 }
      assert.truthy(p:encode_prefix("x", {}):find('"max_tokens":300', 1, true), url)
    end
    -- elsewhere the new name (OpenAI's reasoning models refuse the old)
    p = tide.provider.openai { base_url = "http://localhost:8080/v1", api_key = "k", max_tokens = 300 }
    assert.truthy(p:encode_prefix("x", {}):find('"max_completion_tokens":300', 1, true))
    p = tide.provider.openai { base_url = "https://api.groq.com/openai/v1", api_key = "k", max_tokens = 300 }
    assert.truthy(p:encode_prefix("x", {}):find('"max_completion_tokens":300', 1, true))
  end)

  it("bills the organization and project the options or OPENAI_ORG_ID and OPENAI_PROJECT_ID name", function()
    local helpers = require "helpers"
    with_mock({ replies = { "one", "two", "three" } }, function(srv)
      local function sent(p)
        assert(p:complete(body_of(p, { USER })))
        local reqs = srv:requests()
        local h = reqs[#reqs].headers
        return h["openai-organization"], h["openai-project"]
      end
      local env = { OPENAI_ORG_ID = "org-env", OPENAI_PROJECT_ID = "proj_env" }
      -- from the environment, as the official SDKs read it, chat and Responses alike
      local org, project = sent(helpers.provider_in_env(env, make, srv.url))
      assert.are.same({ "org-env", "proj_env" }, { org, project })
      -- the options win over the environment, and `headers` over both
      org, project = sent(helpers.provider_in_env(env, function(url)
        return make(url, false, { api = "responses", organization = "org-opt", project = "proj_opt" })
      end, srv.url))
      assert.are.same({ "org-opt", "proj_opt" }, { org, project })
      org, project = sent(helpers.provider_in_env(env, function(url)
        return make(url, true, { organization = "org-opt", headers = { ["OpenAI-Organization"] = "org-hdr" } })
      end, srv.url))
      assert.are.same({ "org-hdr", "proj_env" }, { org, project })
    end)
    -- none set, none sent
    local p = helpers.provider_in_env({}, function() return tide.provider.openai { api_key = "k" } end)
    assert.is_nil(p:_headers()["openai-organization"])
    assert.is_nil(p:_headers()["openai-project"])
    -- misuse, named; a variable that would break the request's framing, named
    for _, bad in ipairs({ { organization = "" }, { project = "a\r\nx: y" }, { organization = 7 } }) do
      local ok, err = pcall(tide.provider.openai, bad)
      assert.is_false(ok)
      assert.matches("'" .. next(bad) .. "' must be", tostring(err))
    end
    local ok, err = pcall(helpers.provider_in_env, { OPENAI_ORG_ID = "org-x\r" },
      function() return tide.provider.openai { api_key = "k" } end)
    assert.is_false(ok)
    assert.matches("OPENAI_ORG_ID must not contain a CR, LF or NUL", tostring(err))
    ok, err = pcall(tide.provider.anthropic, { organization = "org" })
    assert.is_false(ok)
    assert.matches("unknown option 'organization'", tostring(err))
  end)

  it("checks stream_usage, which the Responses API has no use for", function()
    local ok, err = pcall(tide.provider.openai, { stream_usage = "no" })
    assert.is_false(ok)
    assert.matches("'stream_usage' must be a boolean", tostring(err))
    ok, err = pcall(tide.provider.openai, { api = "responses", stream_usage = false })
    assert.is_false(ok)
    assert.matches("'stream_usage' is not an option of the Responses API", tostring(err))
    ok, err = pcall(tide.provider.openai, { extra_body = { stream_options = {} } })
    assert.is_false(ok)
    assert.matches("use the option 'stream_usage'", tostring(err))
  end)

  it("never sends these parts to another provider, nor details that are not JSON", function()
    local mine = { role = "assistant", content = "ok", reasoning = {
      { type = "details", data = '[{"type":"reasoning.encrypted","data":"x"}]', provider = "openai" },
      { type = "text", text = "mistral thought", via = "content", provider = "openai" } } }
    local a = tide.provider.anthropic { api_key = "k" }
    assert.are.same({ role = "assistant", content = "ok" }, cjson.decode(a:encode_message(mine)))
    local r = tide.provider.openai { api_key = "k", api = "responses" }
    assert.is_nil(r:encode_message(mine):find("reasoning", 1, true))
    local o = tide.provider.openai { api_key = "k" }
    local ok, err = pcall(o.encode_message, o, { role = "assistant", content = "ok", reasoning = {
      { type = "details", data = "[{torn", provider = "openai" } } })
    assert.is_false(ok)
    assert.matches("reasoning%[1%] %(details%) must hold the JSON text of an array", tostring(err))
  end)

  it("reads a whole reply the same whether C scans it or Lua decodes it", function()
    local p = tide.provider.openai { api_key = "k", stream = false }
    for _, body in ipairs {
      '{"choices":[{"message":{"role":"assistant","content":[{"type":"thinking","thinking":[{"type":"text",'
        .. '"text":"a"},{"type":"reference","reference_ids":[1]},{"text":"b"}],"signature":"s"},{"type":"text",'
        .. '"text":"The answer"},{"text":" is 4"}]},"finish_reason":"stop"}]}',
      '{"choices":[{"message":{"role":"assistant","content":null,"reasoning":"r","reasoning_details":['
        .. '{"type":"reasoning.text","text":"r","index":0},{"type":"reasoning.encrypted","data":"E=","index":1}],'
        .. '"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},'
        .. '"finish_reason":"tool_calls"}]}',
      '{"choices":[{"message":{"role":"assistant","content":[{"thinking":[]},{"type":"image_url"}],'
        .. '"reasoning_details":[]},"finish_reason":"stop"}]}',
    } do
      local c = assert(core.openai_parse(body))
      local l = assert(p:_parse(require("tide.json").decode_fast(body)))
      c, l = p:_finish_reply(c), p:_finish_reply(l)
      -- (the same details: C keeps the bytes that came, Lua writes them anew)
      for _, r in ipairs { c, l } do
        for _, part in ipairs(r.reasoning or {}) do
          if part.type == "details" then part.data = cjson.decode(part.data) end
        end
      end
      assert.are.same(c.reasoning, l.reasoning)
      assert.are.equal(c.text, l.text)
      assert.are.equal(#c.tool_calls, #l.tool_calls)
    end
  end)
end)
