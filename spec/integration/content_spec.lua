-- Content parts: tide.image{} and tide.file{} in s:turn({ ... }).
local tide = require "tide"
local testing = require "tide.testing"
local helpers = require "helpers"
local content = require "tide.content"

local PNG = "\137PNG\r\n\26\n" .. ("\0"):rep(24)
local PDF = "%PDF-1.4\n1 0 obj\n<<>>\nendobj\n%%EOF\n"

describe("content parts", function()
  local dir, srv
  before_each(function()
    dir = helpers.tmpdir()
    helpers.write(dir .. "/x.png", PNG)
    helpers.write(dir .. "/a.pdf", PDF)
    helpers.write(dir .. "/notes.txt", "plain notes")
    helpers.write(dir .. "/blob.bin", "\1\2\3")
    srv = testing.mock_server { default = "seen" }
    tide.agent { id = "eyes", prompt = "You look." }
  end)
  after_each(function() srv:close(); helpers.rmdir(dir) end)

  it("reads files at the turn into neutral parts, typed by their bytes", function()
    local parts = assert(content.resolve { "Describe", tide.image { path = dir .. "/x.png" },
      tide.file { path = dir .. "/a.pdf" }, tide.file { path = dir .. "/notes.txt" },
      tide.image { url = "https://example.com/a.png" } })
    assert.are.same({ type = "text", text = "Describe" }, parts[1])
    assert.are.equal("image/png", parts[2].mime)
    assert.are.equal(require("tide.core").base64(PNG), parts[2].data)
    assert.are.equal("application/pdf", parts[3].mime)
    assert.are.equal("a.pdf", parts[3].name)
    assert.are.equal("plain notes", parts[4].text)
    assert.are.equal("https://example.com/a.png", parts[5].url)
  end)

  it("maps parts to the OpenAI and Anthropic shapes", function()
    local parts = assert(content.resolve { "hi", tide.image { data = PNG }, tide.file { path = dir .. "/a.pdf" } })
    local o = content.openai_chat(parts)
    assert.are.equal("image_url", o[2].type)
    assert.matches("^data:image/png;base64,", o[2].image_url.url)
    assert.are.equal("a.pdf", o[3].file.filename)
    local a = content.anthropic(parts)
    assert.are.same({ type = "base64", media_type = "image/png", data = parts[2].data }, a[2].source)
    assert.are.equal("document", a[3].type)
  end)

  it("refuses, before the history changes, files no provider would take", function()
    os.execute(("mkdir -p %q"):format(dir .. "/folder.png"))
    helpers.write(dir .. "/empty.pdf", "")
    helpers.write(dir .. "/latin1.txt", "caf\233 cr\232me")
    helpers.write(dir .. "/fake.jpg", "not really a jpeg")
    helpers.write(dir .. "/pic.png", PNG)
    for _, case in ipairs {
      { tide.image { path = dir .. "/folder.png" }, "cannot read image '" .. dir .. "/folder.png'" },
      { tide.file { path = dir .. "/empty.pdf" }, "file '" .. dir .. "/empty.pdf' is empty" },
      { tide.file { path = dir .. "/latin1.txt" }, "is not UTF-8 text" },
      { tide.image { path = dir .. "/fake.jpg" }, "cannot tell the type of image" },
      { tide.file { path = dir .. "/pic.png" }, "is of type 'image/png' (PDF and text files are taken)" },
      { tide.file { data = "PK\3\4zip", name = "a.zip", mime = "application/zip" }, "of type 'application/zip'" },
    } do
      local parts, err = content.resolve { case[1] }
      assert.is_nil(parts)
      assert.are.equal("FileError", err.code)
      assert.matches(case[2], err.message, 1, true)
    end
    -- chat completions takes a text file as text (its file parts are PDFs)
    local parts = assert(content.resolve { tide.file { path = dir .. "/notes.txt" } })
    assert.are.same({ type = "text", text = "[file: notes.txt]\nplain notes" }, content.openai_chat(parts)[1])
  end)

  it("takes a data: URL as the image's bytes, for every provider", function()
    local core = require "tide.core"
    local url = "data:image/png;base64," .. core.base64(PNG)
    local parts = assert(content.resolve { tide.image { url = url } })
    assert.are.same({ type = "image", mime = "image/png", data = core.base64(PNG) }, parts[1])
    -- Anthropic's image sources take no data URL: bytes, as base64
    assert.are.same({ type = "base64", media_type = "image/png", data = core.base64(PNG) },
      content.anthropic(parts)[1].source)
    assert.are.same({ image = { format = "png", source = { bytes = core.base64(PNG) } } },
      require("tide.provider.bedrock").parts(parts)[1])
    assert.are.equal(url, content.openai_chat(parts)[1].image_url.url)
    for _, case in ipairs {
      { { url = "data:image/png," .. PNG }, "'url' must be a data:image/<type>;base64, URL" },
      { { url = "data:image/tiff;base64,AAAA" }, "a data: URL's type must be one of image/png" },
      { { url = "data:image/png;base64,@@@" }, "the data: URL's bytes are not valid base64" },
      { { url = url, mime = "image/jpeg" }, "'mime' (image/jpeg) is not the data: URL's type (image/png)" },
      { { url = "ftp://x/y.png" }, "'url' must be an http(s) or data: URL" },
    } do
      local ok, err = pcall(tide.image, case[1])
      assert.is_false(ok)
      assert.matches(case[2], tostring(err), 1, true)
    end
  end)

  it("fails the turn with FileError for an unreadable or untyped file, before the history changes", function()
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m" }
    local s = tide.session { agent = "eyes", provider = p }
    local reply, err = s:turn { "look", tide.image { path = dir .. "/missing.png" } }
    assert.is_nil(reply)
    assert.are.equal("FileError", err.code)
    assert.matches("missing.png", err.message, 1, true)
    local _, err2 = s:turn { "look", tide.file { path = dir .. "/blob.bin" } }
    assert.are.equal("FileError", err2.code)
    assert.are.equal(0, #s:history())
    assert.are.equal(0, #srv:requests())
  end)

  it("sends parts in each provider's own shape", function()
    for _, kind in ipairs { "openai", "anthropic" } do
      srv:close()
      srv = testing.mock_server { default = "seen" }
      local p = tide.provider[kind] { base_url = srv.url, api_key = "k", model = "m" }
      local s = tide.session { agent = "eyes", provider = p }
      assert.are.equal("seen", (s:turn { "look", tide.image { path = dir .. "/x.png" }, tide.file { path = dir .. "/a.pdf" } }))
      local msgs = srv:requests()[1].json.messages
      local c = msgs[#msgs].content
      assert.are.same({ type = "text", text = "look" }, c[1])
      if kind == "openai" then
        assert.are.equal("image_url", c[2].type)
        assert.matches("^data:image/png;base64,", c[2].image_url.url)
        assert.are.equal("file", c[3].type)
        assert.matches("^data:application/pdf;base64,", c[3].file.file_data)
      else
        assert.are.same({ type = "base64", media_type = "image/png", data = require("tide.core").base64(PNG) }, c[2].source)
        assert.are.equal("document", c[3].type)
      end
    end
  end)

  it("keeps parts in the history and raises on misuse", function()
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m" }
    local s = tide.session { agent = "eyes", provider = p }
    assert(s:turn({ "look", tide.image { data = PNG } }, { context = "ctx" }))
    local user = s:history()[1]
    assert.are.equal("ctx", user.content[1].text)
    assert.are.equal("look", user.content[2].text)
    assert.are.equal("image", user.content[3].type)
    assert.has_error(function() s:turn {} end, "bad argument #1 to 'turn' (an empty list of parts)")
    assert.has_error(function() s:turn { "a", 3 } end)
    assert.has_error(function() tide.image { path = "a", url = "https://x" } end,
      "tide.image: give exactly one of 'path', 'url' or 'data'")
    assert.has_error(function() tide.image { paht = "a" } end, "tide.image: unknown option 'paht'")
    -- raised at the caller's line, whatever check failed
    for _, make in ipairs { function() local p = tide.image { paht = "a" }; return p end,
      function() local p = tide.file { path = 5 }; return p end,
      function() local p = tide.image(nil); return p end,
      function() local p = tide.image { path = "a", url = "https://x" }; return p end } do
      local _, e = pcall(make)
      assert.matches("content_spec%.lua:%d+: tide%.%a+: ", e)
    end
    assert.has_error(function() tide.image { data = PNG, mime = "image/tiff" } end)
  end)
end)
