-- Approvals: calls that wait for a person, across a pause and a restart.
local tide = require "tide"
local testing = require "tide.testing"
local helpers = require "helpers"

-- A mock that answers a conversation by its last message: the first user
-- message gets `calls`, a tool message gets "done: <results>".
local function scripted(calls_for)
  return function(req)
    local msgs = req.json.messages
    local last = msgs[#msgs]
    if last.role == "tool" then
      local seen = {}
      for i = #msgs, 1, -1 do
        if msgs[i].role ~= "tool" then break end
        table.insert(seen, 1, msgs[i].content)
      end
      return "done: " .. table.concat(seen, " | ")
    end
    return { tool_calls = calls_for(msgs) }
  end
end

describe("approvals", function()
  local srv, p, dir, runs
  before_each(function()
    dir = helpers.tmpdir()
    runs = {}
    srv = testing.mock_server { default = scripted(function()
      return { { id = "c1", name = "send_email", arguments = { to = "bob" } },
               { id = "c2", name = "lookup", arguments = { q = "x" } } }
    end) }
    p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    tide.agent { id = "assistant", prompt = "You help.", tools = {
      tide.tool { name = "send_email", description = "Sends an email.", approval = true,
        handler = function(args) runs[#runs + 1] = "send_email"; return "sent to " .. args.to end },
      tide.tool { name = "lookup", description = "Looks up.",
        handler = function(args) runs[#runs + 1] = "lookup"; return "found " .. args.q end },
    } }
  end)
  after_each(function() srv:close(); helpers.rmdir(dir) end)

  it("runs the other calls, pauses, and resumes the same turn once approved", function()
    local s = tide.session { agent = "assistant", provider = p }
    local reply, err = s:turn("mail bob")
    assert.is_nil(reply)
    assert.are.equal("ApprovalRequired", err.code)
    assert.are.same({ { id = "c1", name = "send_email", arguments = '{"to":"bob"}', agent = "assistant" } }, err.pending)
    assert.are.same({ "lookup" }, runs) -- the other call ran; the gated one did not
    assert.are.equal(1, #srv:requests())
    -- a new turn cannot start while one is paused
    local _, again = s:turn("something else")
    assert.are.equal("ApprovalRequired", again.code)
    assert(s:approve("c1", "ok by me"))
    assert.are.equal("done: sent to bob | found x", s:resume())
    assert.are.same({ "lookup", "send_email" }, runs)
    -- the history is a valid conversation: every call answered, in order
    local h = s:history()
    assert.are.equal("tool", h[3].role)
    assert.are.equal("c1", h[3].results[1].id)
  end)

  it("gives a rejected call its reason as the result and never runs it", function()
    local s = tide.session { agent = "assistant", provider = p }
    local _, err = s:turn("mail bob")
    assert.are.equal("ApprovalRequired", err.code)
    assert(s:reject("c1", "not today"))
    assert.are.equal("done: Error: rejected by the user: not today | found x", s:resume())
    assert.are.same({ "lookup" }, runs)
  end)

  it("says what is wrong with a decision, and resumes nothing twice", function()
    local s = tide.session { agent = "assistant", provider = p }
    local ok, e0 = s:approve("c1")
    assert.is_nil(ok)
    assert.are.equal("NothingPending", e0.code)
    local _, e1 = s:resume()
    assert.are.equal("NothingPending", e1.code)
    s:turn("mail bob")
    local _, e2 = s:approve("nope")
    assert.are.equal("UnknownApproval", e2.code)
    local _, e3 = s:resume() -- still undecided
    assert.are.equal("ApprovalRequired", e3.code)
    assert(s:approve("c1"))
    local _, e4 = s:reject("c1")
    assert.are.equal("AlreadyDecided", e4.code)
    assert.has_error(function() s:approve(42) end, "bad argument #1 to 'approve' (string expected, got number)")
    assert.has_error(function() s:reject("c1", "nope \195") end, "bad argument #2 to 'reject' (not UTF-8 text)")
    -- resume takes turn's listeners, each named when it is wrong; a misspelt
    -- one is never a listener silently not called
    assert.has_error(function() s:resume { on_dleta = print } end, "bad argument #1 to 'resume' (unknown option 'on_dleta')")
    assert.has_error(function() s:resume { context = "x" } end, "bad argument #1 to 'resume' (unknown option 'context')")
    assert.has_error(function() s:resume { on_delta = 1 } end,
      "bad argument #1 to 'resume' (field 'on_delta' must be a function)")
    assert.has_error(function() s:resume { truncated = "yes" } end,
      "bad argument #1 to 'resume' (field 'truncated' must be \"error\" or \"allow\")")
    assert.has_error(function() s:resume(1) end, "bad argument #1 to 'resume' (table expected, got number)")
    local ended = {}
    assert.are.equal("done: sent to bob | found x", s:resume { on_tool_end = function(c) ended[#ended + 1] = c.name end,
      truncated = "allow" })
    assert.are.same({ "send_email" }, ended)
  end)

  it("asks only when a rule says so", function()
    tide.agent { id = "ruled", prompt = "You help.", tools = {
      tide.tool { name = "send_email", description = "Sends.", approval = function(args) return args.to ~= "me" end,
        handler = function() runs[#runs + 1] = "send_email"; return "sent" end },
      tide.tool { name = "lookup", description = "Looks up.", handler = function() return "found" end },
    } }
    local s = tide.session { agent = "ruled", provider = p }
    local _, err = s:turn("mail bob")
    assert.are.equal("ApprovalRequired", err.code)
  end)

  it("survives a restart: the pause, the decisions and the results are in the transcript", function()
    local path = dir .. "/run.jsonl"
    local s = tide.session { agent = "assistant", provider = p, transcript = path }
    local _, err = s:turn("mail bob")
    assert.are.equal("ApprovalRequired", err.code)
    s:close()
    -- another process, later
    local r = assert(tide.session { agent = "assistant", provider = p, resume = path })
    assert.are.same({ "c1" }, { r:pending()[1].id })
    assert(r:approve("c1"))
    r:close()
    local r2 = assert(tide.session { agent = "assistant", provider = p, resume = path })
    assert.are.equal(0, #r2:pending()) -- decided, not yet resumed
    assert.are.equal("done: sent to bob | found x", r2:resume())
    assert.are.same({ "lookup", "send_email" }, runs) -- lookup ran once, before the pause
    r2:close()
    local r3 = assert(tide.session { agent = "assistant", provider = p, resume = path })
    assert.is_nil(r3.paused)
    r3:close()
  end)

  it("never runs an approved call twice when the process died while it ran", function()
    local path = dir .. "/run.jsonl"
    local s = tide.session { agent = "assistant", provider = p, transcript = path }
    s:turn("mail bob")
    assert(s:approve("c1"))
    -- what a process that died mid-call leaves: the running mark, no result
    require("tide.approval").running(s, { { id = "c1" } })
    s:close()
    local r = assert(tide.session { agent = "assistant", provider = p, resume = path })
    local reply = r:resume()
    assert.matches("interrupted", reply)
    assert.are.same({ "lookup" }, runs)
    r:close()
  end)

  it("pauses for a sub-agent's call at depth, and the sub-agent goes on where it stopped", function()
    tide.agent { id = "mailer", prompt = "You send mail.", when_to_use = "sends mail", tools = {
      tide.tool { name = "send_email", description = "Sends.", approval = true,
        handler = function(args) runs[#runs + 1] = "send_email"; return "sent to " .. args.to end },
    } }
    tide.agent { id = "boss", prompt = "You delegate.", subagents = { "mailer" } }
    srv:close()
    srv = testing.mock_server { default = scripted(function(msgs)
      if msgs[1].content:find("You send mail", 1, true) then
        return { { id = "m1", name = "send_email", arguments = { to = "bob" } } }
      end
      return { { id = "d1", name = "delegate_mailer", arguments = { task = "mail bob" } } }
    end) }
    p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local path = dir .. "/boss.jsonl"
    local s = tide.session { agent = "boss", provider = p, transcript = path }
    local _, err = s:turn("get bob mailed")
    assert.are.equal("ApprovalRequired", err.code)
    assert.are.equal(1, #err.pending)
    assert.are.equal("m1", err.pending[1].id)
    assert.are.equal("boss/mailer", err.pending[1].agent)
    assert(s:approve("m1"))
    assert.are.equal("done: done: sent to bob", s:resume())
    assert.are.same({ "send_email" }, runs)
    -- and across a restart: the sub-agent comes back from its own transcript
    local _, err2 = s:turn("again")
    assert.are.equal("ApprovalRequired", err2.code)
    s:close()
    local r = assert(tide.session { agent = "boss", provider = p, resume = path })
    local pending = r:pending()
    assert.are.equal(1, #pending)
    assert.are.equal("boss/mailer", pending[1].agent)
    assert(r:approve(pending[1].id))
    assert.are.equal("done: done: sent to bob", r:resume())
    assert.are.same({ "send_email", "send_email" }, runs)
    r:close()
  end)

  it("asks for an integration's destructive actions when its source says so", function()
    local deleted = 0
    local src = tide.integrations.static { approval = "destructive", toolkits = { {
      slug = "github", description = "GitHub", connected = true, tools = {
        { name = "GITHUB_DELETE_REPO", description = "Deletes a repo.", destructive = true,
          handler = function() deleted = deleted + 1; return "deleted" end },
        { name = "GITHUB_LIST_REPOS", description = "Lists repos.", handler = function() return "tide" end },
      } } } }
    require("tide.integrations.cache").get(src)
    tide.agent { id = "orch", prompt = "You delegate.", subagents = { { toolkits = "*" } } }
    srv:close()
    srv = testing.mock_server { default = scripted(function(msgs)
      if msgs[1].content:find("You delegate", 1, true) then
        return { { id = "d1", name = "delegate_github", arguments = { task = "delete the repo" } } }
      end
      return { { id = "g1", name = "GITHUB_DELETE_REPO", arguments = {} },
               { id = "g2", name = "GITHUB_LIST_REPOS", arguments = {} } }
    end) }
    p = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false }
    local s = tide.session { agent = "orch", provider = p, integrations = src }
    local _, err = s:turn("clean up")
    assert.are.equal("ApprovalRequired", err.code)
    assert.are.equal(1, #err.pending)
    assert.are.equal("GITHUB_DELETE_REPO", err.pending[1].name)
    assert.are.equal(0, deleted)
    assert(s:reject("g1", "keep it"))
    assert.are.equal("done: done: Error: rejected by the user: keep it | tide", s:resume())
    assert.are.equal(0, deleted)
    assert.has_error(function() tide.integrations.static { approval = "sometimes", toolkits = {} } end)
  end)

  it("reports a corrupt pause record as SessionCorrupt", function()
    local path = dir .. "/bad.jsonl"
    local f = assert(io.open(path, "w"))
    f:write('{"type":"meta","version":1}\n{"role":"system","content":"You help."}\n',
      '{"content":"go","role":"user"}\n',
      '{"content":"","role":"assistant","tool_calls":[{"arguments":"{}","id":"c1","name":"send_email"}]}\n',
      '{"type":"pause","calls":[],"results":[],"waiting":[{"index":1,"id":"c1"}]}\n')
    f:close()
    local s, err = tide.session { agent = "assistant", provider = p, resume = path }
    assert.is_nil(s)
    assert.are.equal("SessionCorrupt", err.code)
  end)
end)
