-- A tool that shows the model an image (a screenshot, a chart): its handler
-- returns text and tide.image{} parts, or an MCP server's result holds image
-- content. Each wire format puts the image where its tool results can hold
-- it, as the mock checks the way the APIs do: Anthropic's tool_result
-- content and the Responses API's function_call_output output take image
-- parts; a chat tool message takes text only (OpenAI refuses an image
-- there), so the image goes in a user message after the results.
local helpers = require "helpers"
local tide = require "tide"
local provider = require "tide.provider"
local cjson = require "cjson"

local FAST = { attempts = 2, base_ms = 1, max_ms = 2 }
local with_mock = helpers.with_mock

-- The bytes of a PNG (its signature is what tells the type) and their base64.
local PNG = "\137PNG\r\n\26\n\0\0\0\rIHDR\0\0\0\1\0\0\0\1\8\2\0\0\0"
local PNG_B64 = require("tide.core").base64(PNG)

local shot = tide.tool {
  name = "shot", description = "Takes a screenshot.", parameters = { type = "object", properties = {} },
  handler = function() return { "The screen:", tide.image { data = PNG } } end,
}
local missing = tide.tool {
  name = "missing", description = "Shows a file.", parameters = { type = "object", properties = {} },
  handler = function() return { tide.image { path = "/nonexistent/shot.png" } } end,
}
tide.agent { id = "looker", prompt = "You look at the screen.", tools = { shot, missing } }

local KINDS = {
  chat = function(url) return provider.openai { base_url = url .. "/v1", api_key = "k", model = "m", retry = FAST } end,
  responses = function(url)
    return provider.openai { api = "responses", base_url = url .. "/v1", api_key = "k", model = "m", retry = FAST }
  end,
  anthropic = function(url)
    return provider.anthropic { base_url = url .. "/v1", api_key = "k", model = "m", retry = FAST }
  end,
}

local CALL = { tool_calls = { { id = "call_s1", name = "shot", arguments = {} } } }

local blank = tide.tool {
  name = "blank", description = "Shows the screen, saying nothing.", parameters = { type = "object", properties = {} },
  handler = function() return { "", tide.image { data = PNG }, " \n" } end,
}
tide.agent { id = "quiet_looker", prompt = "You look at the screen.", tools = { blank } }

describe("a tool that shows the model an image", function()
  it("leaves a blank text part out of Anthropic's tool_result, which the API would refuse", function()
    -- (sent, the result would fail this request and every later one: the
    -- mock refuses it as the API does, "text content blocks must be non-empty")
    with_mock({ replies = { { tool_calls = { { id = "call_b1", name = "blank", arguments = {} } } }, "Red.", "Yes." } },
      function(srv)
        local s = tide.session { agent = "quiet_looker", provider = KINDS.anthropic(srv.url) }
        assert.are.equal("Red.", assert(s:turn("what is on screen?")))
        assert.are.equal("Yes.", assert(s:turn("sure?")))
        local result = srv:requests()[2].json.messages[3].content[1]
        assert.are.same({ { type = "image", source = { type = "base64", media_type = "image/png", data = PNG_B64 } } },
          result.content)
      end)
  end)

  it("goes in Anthropic's tool_result as an image block", function()
    with_mock({ replies = { CALL, "A red pixel." } }, function(srv)
      local s = tide.session { agent = "looker", provider = KINDS.anthropic(srv.url) }
      assert.are.equal("A red pixel.", assert(s:turn("what is on screen?")))
      local result = srv:requests()[2].json.messages[3].content[1]
      assert.are.equal("tool_result", result.type)
      assert.are.same({ { type = "text", text = "The screen:" },
        { type = "image", source = { type = "base64", media_type = "image/png", data = PNG_B64 } } }, result.content)
    end)
  end)

  it("goes in the Responses API's function_call_output as input_image", function()
    with_mock({ replies = { CALL, "A red pixel." } }, function(srv)
      local s = tide.session { agent = "looker", provider = KINDS.responses(srv.url) }
      assert.are.equal("A red pixel.", assert(s:turn("what is on screen?")))
      local out
      for _, item in ipairs(srv:requests()[2].json.input) do
        if item.type == "function_call_output" then out = item.output end
      end
      assert.are.same({ { type = "input_text", text = "The screen:" },
        { type = "input_image", detail = "auto", image_url = "data:image/png;base64," .. PNG_B64 } }, out)
    end)
  end)

  it("goes in a user message after a chat tool message, which says so", function()
    with_mock({ replies = { CALL, "A red pixel." } }, function(srv)
      local s = tide.session { agent = "looker", provider = KINDS.chat(srv.url) }
      assert.are.equal("A red pixel.", assert(s:turn("what is on screen?")))
      local msgs = srv:requests()[2].json.messages
      local tool, after = msgs[#msgs - 1], msgs[#msgs]
      assert.are.equal("tool", tool.role)
      assert.are.equal("The screen:\n[image: image/png]\n(1 attachment in the next message)", tool.content)
      assert.are.equal("user", after.role)
      assert.are.same({ { type = "text", text = "Images from shot (call call_s1):" },
        { type = "image_url", image_url = { url = "data:image/png;base64," .. PNG_B64 } } }, after.content)
    end)
  end)

  it("the mock refuses an image in a chat tool message, as OpenAI does", function()
    with_mock({ replies = { "never" } }, function(srv)
      local p = KINDS.chat(srv.url)
      local body = p:body(p:encode_prefix("s", {}), { p:encode_message({ role = "user", content = "q" }),
        p:encode_message({ role = "assistant", tool_calls = { { id = "c1", name = "shot", arguments = "{}" } } }),
        cjson.encode({ role = "tool", tool_call_id = "c1", content = { { type = "image_url",
          image_url = { url = "data:image/png;base64," .. PNG_B64 } } } }) })
      local _, err = p:complete(body)
      assert.are.equal(400, err.status)
      assert.matches("Image URLs are only allowed for messages with role 'user', but this message with role "
        .. "'tool' contains an image URL.", err.message, 1, true)
    end)
  end)

  for kind, make in pairs(KINDS) do
    it("keeps the image in the transcript: a resumed session sends it again (" .. kind .. ")", function()
      local path = helpers.tmp_transcript()
      with_mock({ replies = { CALL, "A red pixel.", "Still red." } }, function(srv)
        local s = tide.session { agent = "looker", provider = make(srv.url), transcript = path }
        assert.are.equal("A red pixel.", assert(s:turn("what is on screen?")))
        local r = tide.session { resume = path, agent = "looker", provider = make(srv.url) }
        assert.are.equal("Still red.", assert(r:turn("and now?")))
        assert.is_truthy(srv:requests()[3].body:find(PNG_B64, 1, true))
      end)
      os.remove(path)
    end)
  end

  it("answers a tool whose image cannot be read with the error, and the turn goes on", function()
    with_mock({ replies = { { tool_calls = { { id = "call_m", name = "missing", arguments = {} } } }, "No file." } },
      function(srv)
        local s = tide.session { agent = "looker", provider = KINDS.anthropic(srv.url) }
        local ends = {}
        assert.are.equal("No file.", assert(s:turn("show it", { on_tool_end = function(_, r) ends[#ends + 1] = r end })))
        local result = srv:requests()[2].json.messages[3].content[1]
        assert.is_true(result.is_error)
        assert.matches("^Error: FileError: cannot read image '/nonexistent/shot.png'", result.content)
        assert.is_true(ends[1].is_error)
      end)
  end)

  it("goes after the text of a model that calls tools in text, as a part of the user message", function()
    with_mock({ replies = { 'Let me look. <tool_call>{"name":"shot","arguments":{}}</tool_call>', "A red pixel." } },
      function(srv)
        local s = tide.session { agent = "looker", provider = KINDS.chat(srv.url) }
        assert.are.equal("A red pixel.", assert(s:turn("what is on screen?")))
        local msgs = srv:requests()[2].json.messages
        local last = msgs[#msgs]
        assert.are.equal("user", last.role)
        assert.matches('^<tool_result name="shot">\nThe screen:\n%[image: image/png%]\n</tool_result>$',
          last.content[1].text)
        assert.are.same({ type = "image_url", image_url = { url = "data:image/png;base64," .. PNG_B64 } },
          last.content[2])
      end)
  end)

  describe("and documents", function()
    local PDF = "%PDF-1.7\n1 0 obj << >> endobj\n%%EOF\n"
    local PDF_B64 = require("tide.core").base64(PDF)
    local docs = tide.tool { name = "docs", description = "Reads the documents.",
      parameters = { type = "object", properties = {} },
      handler = function()
        return { tide.file { data = PDF, name = "report.pdf" }, tide.file { data = "a,b\n1,2\n", name = "t.csv" } }
      end }
    local zip = tide.tool { name = "zip", description = "Gives an archive.", parameters = { type = "object", properties = {} },
      handler = function() return { tide.file { data = "PK\3\4", name = "a.zip", mime = "application/zip" } } end }
    tide.agent { id = "reader", prompt = "You read documents.", tools = { docs, zip } }
    local DOCS = { tool_calls = { { id = "call_d", name = "docs", arguments = {} } } }

    it("goes in Anthropic's tool_result as document blocks", function()
      with_mock({ replies = { DOCS, "Read." } }, function(srv)
        local s = tide.session { agent = "reader", provider = KINDS.anthropic(srv.url) }
        assert.are.equal("Read.", assert(s:turn("read them")))
        local content = srv:requests()[2].json.messages[3].content[1].content
        assert.are.same({ type = "document", source = { type = "base64", media_type = "application/pdf",
          data = PDF_B64 } }, content[1])
        assert.are.same({ type = "document", source = { type = "text", media_type = "text/plain",
          data = "a,b\n1,2\n" } }, content[2])
      end)
    end)

    it("goes in the Responses output as input_file, a text file as text", function()
      with_mock({ replies = { DOCS, "Read." } }, function(srv)
        local s = tide.session { agent = "reader", provider = KINDS.responses(srv.url) }
        assert.are.equal("Read.", assert(s:turn("read them")))
        local out
        for _, item in ipairs(srv:requests()[2].json.input) do
          if item.type == "function_call_output" then out = item.output end
        end
        assert.are.same({ type = "input_file", filename = "report.pdf",
          file_data = "data:application/pdf;base64," .. PDF_B64 }, out[1])
        assert.are.same({ type = "input_text", text = "[file: t.csv]\na,b\n1,2\n" }, out[2])
      end)
    end)

    it("goes in the user message after a chat tool message, a text file in the tool message", function()
      with_mock({ replies = { DOCS, "Read." } }, function(srv)
        local s = tide.session { agent = "reader", provider = KINDS.chat(srv.url) }
        assert.are.equal("Read.", assert(s:turn("read them")))
        local msgs = srv:requests()[2].json.messages
        assert.are.equal("[file: report.pdf, application/pdf]\n[file: t.csv]\na,b\n1,2\n\n(1 attachment in the "
          .. "next message)", msgs[#msgs - 1].content)
        assert.are.same({ type = "file", file = { filename = "report.pdf",
          file_data = "data:application/pdf;base64," .. PDF_B64 } }, msgs[#msgs].content[2])
      end)
    end)

    it("answers a file no wire format takes with a FileError", function()
      with_mock({ replies = { { tool_calls = { { id = "call_z", name = "zip", arguments = {} } } }, "No." } },
        function(srv)
          local s = tide.session { agent = "reader", provider = KINDS.anthropic(srv.url) }
          assert.are.equal("No.", assert(s:turn("open it")))
          local result = srv:requests()[2].json.messages[3].content[1]
          assert.is_true(result.is_error)
          assert.are.equal("Error: FileError: file 'a.zip' is of type 'application/zip' (PDF and text files are taken)",
            result.content)
        end)
    end)

    it("reads an MCP result's PDF resource as a file", function()
      local parts = require("tide.integrations.mcp")._parse.result_parts({ content = {
        { type = "text", text = "Here:" },
        { type = "resource", resource = { uri = "file:///tmp/r.pdf", mimeType = "application/pdf", blob = PDF_B64 } },
      } })
      assert.are.same({ "Here:", { type = "file", mime = "application/pdf", data = PDF_B64, name = "r.pdf" } }, parts)
      assert.is_nil(require("tide.integrations.mcp")._parse.result_parts({ content = { { type = "text", text = "x" } } }))
    end)
  end)

  it("gives the words of an error result that held an image, not the table", function()
    local broken = tide.tool { name = "broken", description = "d", parameters = { type = "object", properties = {} },
      handler = function() return { is_error = true, content = { "It broke:", tide.image { data = PNG } } } end }
    tide.agent { id = "broken_a", prompt = "You answer.", tools = { broken } }
    with_mock({ replies = { { tool_calls = { { id = "c", name = "broken", arguments = {} } } }, "ok" } }, function(srv)
      local s = tide.session { agent = "broken_a", provider = KINDS.anthropic(srv.url) }
      assert.are.equal("ok", assert(s:turn("go")))
      local result = srv:requests()[2].json.messages[3].content[1]
      assert.is_true(result.is_error)
      assert.are.equal("Error: It broke:", result.content)
    end)
  end)

  it("caps the text of an image result as a whole, never the image", function()
    local long = tide.tool { name = "long", description = "d", parameters = { type = "object", properties = {} },
      handler = function() return { string.rep("x", 100), tide.image { data = PNG },
        tide.file { data = string.rep("y", 100), name = "log.txt" } } end }
    tide.agent { id = "capped", prompt = "You answer.", tools = { long } }
    with_mock({ replies = { { tool_calls = { { id = "c", name = "long", arguments = {} } } }, "ok" } }, function(srv)
      local s = tide.session { agent = "capped", provider = KINDS.anthropic(srv.url), result_cap_bytes = 10 }
      assert.are.equal("ok", assert(s:turn("go")))
      local content = srv:requests()[2].json.messages[3].content[1].content
      assert.matches("^xxxxxxxxxx\n%[truncated: 90 bytes omitted%]$", content[1].text)
      assert.are.equal(PNG_B64, content[2].source.data)
      -- a text file's text is capped as text is, with what the parts
      -- before it left: nothing here
      assert.matches("^\n%[truncated: 100 bytes omitted%]$", content[3].source.data)
    end)
    with_mock({ replies = { { tool_calls = { { id = "c", name = "long", arguments = {} } } }, "ok" } }, function(srv)
      local s = tide.session { agent = "capped", provider = KINDS.anthropic(srv.url), result_cap_bytes = 150 }
      assert.are.equal("ok", assert(s:turn("go")))
      local content = srv:requests()[2].json.messages[3].content[1].content
      assert.are.equal(string.rep("x", 100), content[1].text)
      assert.matches("^" .. string.rep("y", 50) .. "\n%[truncated: 50 bytes omitted%]$", content[3].source.data)
    end)
  end)
end)
