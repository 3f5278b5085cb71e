-- Several integration sources in one session: one delegate per toolkit,
-- each action run on the source it came from, each source cached apart.
local tide = require "tide"
local testing = require "tide.testing"
local cache = require "tide.integrations.cache"

describe("several integration sources", function()
  local ran, a, b
  before_each(function()
    cache.invalidate_all()
    ran = {}
    a = tide.integrations.static { id = "src-a", toolkits = { { slug = "github", description = "GitHub",
      connected = true, tools = { { name = "GITHUB_LIST", description = "Lists.",
        handler = function() ran[#ran + 1] = "a:GITHUB_LIST"; return "repos" end } } } } }
    b = tide.integrations.static { id = "src-b", approval = true, toolkits = { { slug = "files",
      description = "Files", connected = true, tools = { { name = "read_file", description = "Reads.",
        handler = function() ran[#ran + 1] = "b:read_file"; return "contents" end } } } } }
    tide.agent { id = "multi", prompt = "You delegate.", subagents = { { toolkits = "*" } } }
  end)

  it("offers one delegate per toolkit, prewarmed when every source is warm", function()
    local p = tide.provider.openai { base_url = "http://127.0.0.1:9", api_key = "k", model = "m" }
    local cold = tide.session { agent = "multi", provider = p, integrations = { a, b } }
    assert.is_false(cold:stats().prewarmed)
    cache.get(a)
    assert.is_nil(cache.peek(tide.session { agent = "multi", provider = p, integrations = { a, b } }.src))
    cache.get(b)
    local list = { a, b }
    local s1 = tide.session { agent = "multi", provider = p, integrations = list }
    local s2 = tide.session { agent = "multi", provider = p, integrations = list }
    assert.is_true(s1:stats().prewarmed)
    assert.are.same({ "delegate_files", "delegate_github" }, s1:tools())
    assert.are.equal(s1.surface, s2.surface) -- the same combined snapshot: one surface
  end)

  it("runs each action on its own source, with that source's approval rule", function()
    cache.get(a)
    cache.get(b)
    local srv = testing.mock_server { default = function(req)
      local msgs = req.json.messages
      local last = msgs[#msgs]
      if last.role == "tool" then return "done: " .. last.content end
      if msgs[1].content:find("You delegate", 1, true) then
        return { tool_calls = { { id = "d1", name = "delegate_github", arguments = { task = "list" } },
                                { id = "d2", name = "delegate_files", arguments = { task = "read" } } } }
      end
      local name = msgs[1].content:find("files", 1, true) and "read_file" or "GITHUB_LIST"
      return { tool_calls = { { id = "x1", name = name, arguments = {} } } }
    end }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local s = tide.session { agent = "multi", provider = p, integrations = { a, b } }
    local _, err = s:turn("go")
    -- files' source asks for approval of every action; github's does not
    assert.are.equal("ApprovalRequired", err.code)
    assert.are.equal("read_file", err.pending[1].name)
    assert.are.same({ "a:GITHUB_LIST" }, ran)
    assert(s:approve(err.pending[1].id))
    assert(s:resume())
    assert.are.same({ "a:GITHUB_LIST", "b:read_file" }, ran)
    srv:close()
  end)

  it("refreshes at the next turn when one source changes", function()
    cache.get(a)
    cache.get(b)
    local srv = testing.mock_server { default = "ok" }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local s = tide.session { agent = "multi", provider = p, integrations = { a, b } }
    assert.are.equal("ok", s:turn("hi"))
    b:set { { slug = "files", connected = true, tools = {} }, { slug = "notes", connected = true, tools = {} } }
    cache.invalidate(b)
    cache.get(b)
    assert.are.equal("ok", s:turn("again"))
    assert.are.same({ "delegate_files", "delegate_github", "delegate_notes" }, s:tools())
    srv:close()
  end)

  it("offers a toolkit's actions directly to an agent that asks for them", function()
    cache.get(a)
    cache.get(b)
    tide.agent { id = "direct", prompt = "You read.", tools = { { toolkit = "files", only = { "read_file" } },
      { toolkit = "github" } } }
    local srv = testing.mock_server { default = function(req)
      local msgs = req.json.messages
      if msgs[#msgs].role == "tool" then return "done: " .. msgs[#msgs].content end
      return { tool_calls = { { id = "r1", name = "read_file", arguments = {} } } }
    end }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local s = tide.session { agent = "direct", provider = p, integrations = { a, b } }
    assert.are.same({ "GITHUB_LIST", "read_file" }, (function() local l = s:tools(); table.sort(l); return l end)())
    local _, err = s:turn("read it")
    assert.are.equal("ApprovalRequired", err.code) -- files' source asks for every action
    assert(s:approve("r1"))
    assert.are.equal("done: contents", s:resume())
    assert.are.same({ "b:read_file" }, ran)
    assert.has_error(function() tide.agent { id = "bad", prompt = "x", tools = { { toolkit = "files", olny = {} } } } end)
    srv:close()
  end)

  it("checks a toolkit action's and a delegate's arguments against their schemas before anything runs", function()
    local c = tide.integrations.static { id = "src-c", toolkits = { { slug = "issues", description = "Issues",
      connected = true, tools = { { name = "ISSUE_GET", description = "Gets an issue.",
        parameters = { type = "object", required = { "number" }, properties = { number = { type = "integer" } } },
        handler = function(args) ran[#ran + 1] = "c:" .. tostring(args.number); return "issue" end } } } } }
    cache.get(c)
    tide.agent { id = "checked", prompt = "You read issues.", tools = { { toolkit = "issues" } },
      subagents = { { toolkits = "*" } } }
    local calls = {
      { id = "i1", name = "ISSUE_GET", arguments = { number = "seven" } },
      { id = "i2", name = "delegate_issues", arguments = { job = "x" } },
      { id = "i3", name = "ISSUE_GET", arguments = { number = 7 } },
    }
    local srv = testing.mock_server { default = function(req)
      local msgs = req.json.messages
      if msgs[#msgs].role == "tool" then return "fin" end
      return { tool_calls = calls }
    end }
    local p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local s = tide.session { agent = "checked", provider = p, integrations = { c } }
    assert.are.equal("fin", s:turn("go"))
    local results = {}
    for _, m in ipairs(s:history()) do
      for _, r in ipairs(m.results or {}) do results[r.id] = r.content end
    end
    assert.matches("#/number: expected integer, got string", results.i1, 1, true)
    assert.matches("missing required property 'task'", results.i2, 1, true)
    assert.are.equal("issue", results.i3)
    assert.are.same({ "c:7" }, ran) -- (one request: the delegate's sub-agent never ran)
    assert.are.equal(2, #srv:requests())
    srv:close()
  end)
end)
