-- The chat for prompt tinkerers, driven through a real pty with tmux: it
-- streams, shows the tool tree, keeps a live session pinned to its frozen
-- prompt, and /new picks up an edited prompt file.
local helpers = require "helpers"

local sh = helpers.sh

describe("tide chat in a terminal", function()
  local dir, name
  local root = sh("pwd"):gsub("%s+$", "")

  local function pane() return sh("tmux capture-pane -p -J -S -500 -t " .. name) end

  local function wait_for(pattern, count)
    count = count or 1
    for _ = 1, 500 do
      local text = pane()
      local _, n = text:gsub(pattern, "")
      if n >= count then return text end
      os.execute("sleep 0.02")
    end
    error(("timed out waiting for %q (x%d) in:\n%s"):format(pattern, count, pane()), 2)
  end

  local function send(line)
    os.execute(("tmux send-keys -t %s -l %q"):format(name, line))
    os.execute(("tmux send-keys -t %s Enter"):format(name))
  end

  before_each(function()
    assert.is_truthy(sh("command -v tmux"):match("tmux"), "tmux is needed (./dev test installs it)")
    dir = helpers.tmpdir()
    helpers.write(dir .. "/orchestrator.md", "You are Alpha, the first draft.\n")
    name = "tidechat" .. tostring(math.random(1e9))
    local build = os.getenv("TIDE_BUILD_DIR") or "build"
    local cmd = ("cd %s && LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' " ..
      "ASAN_OPTIONS=detect_leaks=0 lua5.4 bin/tide chat --prompts %s --provider demo; sleep 30"):format(root, build, dir)
    local preload = os.getenv("LD_PRELOAD")
    if preload then cmd = ("LD_PRELOAD='%s' "):format(preload) .. cmd end
    os.execute(("tmux new-session -d -s %s -x 200 -y 60 %q"):format(name, cmd))
    wait_for("/help for commands")
  end)

  after_each(function()
    os.execute("tmux kill-session -t " .. name .. " 2>/dev/null")
    helpers.rmdir(dir)
  end)

  it("streams replies, draws the tool tree, and pins live sessions while /new sees an edit", function()
    send("hello there")
    wait_for("You said: hello there")
    send("look up tide")
    wait_for("├─ lookup")
    wait_for("└─ lookup [%d%.]+ ms")
    wait_for("Here is what I found: tide is a Lua%-scriptable")
    send("what are the open github issues?")
    wait_for("↳ orchestrator/integrations:github")
    wait_for("GITHUB_LIST_ISSUES")
    wait_for("3 open issues")
    send("/prompt")
    wait_for("You are Alpha, the first draft%.")
    -- edit the prompt while the chat is open
    helpers.write(dir .. "/orchestrator.md", "You are Beta, the second draft.\n")
    wait_for("%[prompt orchestrator reloaded")
    send("/prompt")
    wait_for("You are Alpha, the first draft%.", 2) -- the live session keeps its frozen prompt
    assert.is_nil(pane():find("Beta", 1, true) and pane():find("You are Beta", 1, true))
    send("/new")
    wait_for("new session")
    send("hi again")
    wait_for("You said: hi again")
    send("/prompt")
    wait_for("You are Beta, the second draft%.")
    -- a broken edit is reported and the previous version stays in force
    helpers.write(dir .. "/orchestrator.md", "You are {{#broken}} unclosed\n")
    wait_for("%[reload failed%].-orchestrator%.md:1")
    send("/new")
    wait_for("new session", 2)
    send("again")
    wait_for("You said: again")
    send("/prompt")
    wait_for("You are Beta, the second draft%.", 2)
    send("/stats")
    wait_for("provider_calls%s+%d")
    wait_for("prewarmed%s+true")
    send("/quit")
  end)
end)

describe("tide chat with a directory it cannot watch", function()
  local root = helpers.sh("pwd"):gsub("%s+$", "")

  -- Runs the chat on an empty stdin; its output (stderr too) and exit status.
  local function chat(args)
    local build = os.getenv("TIDE_BUILD_DIR") or "build"
    local out = helpers.sh(("(cd %s && LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' " ..
      "ASAN_OPTIONS=detect_leaks=0 timeout 20 lua5.4 bin/tide chat %s --provider demo </dev/null; echo \"exit=$?\")")
      :format(root, build, args))
    return out, tonumber(out:match("exit=(%d+)%s*$"))
  end

  it("exits with 1 and names the option and the directory", function()
    local dir = helpers.tmpdir()
    for _, case in ipairs {
      { "--prompts " .. dir .. "/missing", "^tide chat: %-%-prompts " .. dir .. "/missing: FileError: prompts%.watch: " },
      { "--agents " .. dir .. "/gone", "^tide chat: %-%-agents " .. dir .. "/gone: FileError: agents%.watch: " },
      -- the prompts are watched, then the agents directory is missing
      { "--prompts " .. dir .. " --agents " .. dir .. "/gone", "^tide chat: %-%-agents " },
    } do
      local out, status = chat(case[1])
      assert.are.equal(1, status, out)
      assert.matches(case[2], out)
      assert.matches("no such file or directory", out)
      assert.is_nil(out:find("traceback", 1, true), out)
      assert.is_nil(out:find("chat with", 1, true), out) -- it never started
    end
    helpers.rmdir(dir)
  end)
end)

describe("tide chat with calls that need approval", function()
  local root = helpers.sh("pwd"):gsub("%s+$", "")

  it("asks inline, then goes on with the approved call or the reason for rejecting it", function()
    local dir = helpers.tmpdir()
    helpers.write(dir .. "/orchestrator.lua", [[
return { id = "orchestrator", prompt = "You look things up.", tools = {
  tide.tool { name = "lookup", description = "Looks a term up.", approval = true,
    parameters = { type = "object", properties = { q = { type = "string" } } },
    handler = function(args) return "tide is a Lua-scriptable agent runtime" end } } }
]])
    local build = os.getenv("TIDE_BUILD_DIR") or "build"
    local out = helpers.sh(("(cd %s && printf 'look up tide\\ny\\nlook up tide\\nnot today\\n/trace\\n/quit\\n' | "
      .. "LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' ASAN_OPTIONS=detect_leaks=0 "
      .. "timeout 30 lua5.4 bin/tide chat --agents %s --provider demo)"):format(root, build, dir))
    helpers.rmdir(dir)
    local _, asked = out:gsub("approve lookup {\"q\":\"tide\"} %(by orchestrator%)%?", "")
    assert.are.equal(2, asked, out)
    assert.matches("Here is what I found: tide is a Lua%-scriptable", out)
    assert.matches("rejected by the user: not today", out)
    -- /trace: the last turn's spans (the resumed part of it)
    assert.matches("invoke_agent orchestrator  [%d%.]+ ms", out)
    assert.matches("\n  chat demo%-model  [%d%.]+ ms", out)
  end)
end)

describe("tide chat --provider bedrock", function()
  it("speaks Bedrock's Converse, and says what it lacks without a model", function()
    local root = helpers.sh("pwd"):gsub("%s+$", "")
    local build = os.getenv("TIDE_BUILD_DIR") or "build"
    local out = helpers.sh(("(cd %s && env -u TIDE_MODEL LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' "
      .. "AWS_REGION=us-east-1 ASAN_OPTIONS=detect_leaks=0 timeout 20 lua5.4 bin/tide chat --provider bedrock "
      .. "</dev/null; echo \"exit=$?\")"):format(root, build))
    assert.matches("tide.provider.bedrock: 'model' is required", out, 1, true)
    assert.are_not.equal(0, tonumber(out:match("exit=(%d+)%s*$")))
  end)
end)

describe("tide chat --provider bedrock with a role behind MFA", function()
  it("asks for the code when the role is assumed, and chats on the role's keys", function()
    local tide = require "tide"
    local core = require "tide.core"
    local root = helpers.sh("pwd"):gsub("%s+$", "")
    local build = os.getenv("TIDE_BUILD_DIR") or "build"
    local home = helpers.tmpdir()
    os.execute(("mkdir -p %q"):format(home .. "/.aws"))
    helpers.write(home .. "/.aws/credentials", "[base]\naws_access_key_id = AKIABASE\naws_secret_access_key = s\n")
    helpers.write(home .. "/.aws/config", "[profile mfa]\nrole_arn = arn:aws:iam::1:role/m\nsource_profile = base\n"
      .. "mfa_serial = arn:aws:iam::1:mfa/me\nregion = us-east-1\n")
    local sts = {}
    helpers.run(function()
      -- STS (POST /) and Converse on one loopback server
      -- (Converse checks the request is signed by the role's keys, as Bedrock does)
      local srv = assert(tide.testing.mock_server { default = "Hello from Bedrock.", bedrock = { region = "us-east-1",
        credentials = { access_key_id = "ASIAROLE", secret_access_key = "r", session_token = "t" } },
        routes = { ["/"] = function(req)
        sts[#sts + 1] = helpers.form_fields(req.body)
        return { status = 200, headers = { ["content-type"] = "text/xml" }, body = "<AssumeRoleResponse><AssumeRoleResult>"
          .. "<Credentials><AccessKeyId>ASIAROLE</AccessKeyId><SecretAccessKey>r</SecretAccessKey><SessionToken>t"
          .. "</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleResult>"
          .. "</AssumeRoleResponse>" }
      end } })
      local env = helpers.child_env { HOME = home, AWS_PROFILE = "mfa", AWS_ENDPOINT_URL_STS = srv.url,
        AWS_ENDPOINT_URL_BEDROCK_RUNTIME = srv.url, TIDE_MODEL = "us.amazon.nova-pro-v1:0",
        LUA_PATH = "lua/?.lua;lua/?/init.lua;;", LUA_CPATH = build .. "/?.so;;", ASAN_OPTIONS = "detect_leaks=0" }
      local p = assert(core.process_spawn { argv = { "lua5.4", "bin/tide", "chat", "--provider", "bedrock" },
        env = env, cwd = root })
      assert(p:write("hello\n123456\n/quit\n"))
      local lines = {}
      for _ = 1, 200 do
        local line = p:read_line(20000)
        if not line then break end
        lines[#lines + 1] = line
      end
      p:close()
      srv:close()
      local out = table.concat(lines, "\n")
      assert.matches("MFA code for arn:aws:iam::1:mfa/me: ", out, 1, true)
      assert.matches("Hello from Bedrock.", out, 1, true)
      assert.is_nil(out:find("123456", 1, true))
      -- the code went to STS with the serial
      assert.are.same({ "arn:aws:iam::1:mfa/me", "123456" }, { sts[1].SerialNumber, sts[1].TokenCode })
      local converse = srv:requests()[#srv:requests()]
      assert.matches("/converse", converse.path)
      assert.matches("Credential=ASIAROLE/", converse.headers["authorization"], 1, true)
    end)
    helpers.rmdir(home)
  end)
end)

describe("tide chat's provider from the environment", function()
  it("takes Anthropic behind a gateway from ANTHROPIC_AUTH_TOKEN alone, the demo model from nothing", function()
    local root = helpers.sh("pwd"):gsub("%s+$", "")
    local build = os.getenv("TIDE_BUILD_DIR") or "build"
    local function banner(env)
      return helpers.sh(("(cd %s && env -u OPENAI_API_KEY -u OPENAI_BASE_URL -u ANTHROPIC_API_KEY "
        .. "-u ANTHROPIC_AUTH_TOKEN %s TIDE_MODEL=claude-x LUA_PATH='lua/?.lua;lua/?/init.lua;;' "
        .. "LUA_CPATH='%s/?.so;;' ASAN_OPTIONS=detect_leaks=0 timeout 20 lua5.4 bin/tide chat </dev/null)")
        :format(root, env, build))
    end
    local out = banner("ANTHROPIC_AUTH_TOKEN=gw-token-123")
    assert.matches("on anthropic claude-x", out, 1, true)
    assert.is_nil(out:find("gw-token-123", 1, true))
    assert.matches("on embedded demo model", banner(""), 1, true)
  end)
end)

describe("tide chat --transcript", function()
  it("keeps the session's transcript in the file, which a session can resume", function()
    local root = helpers.sh("pwd"):gsub("%s+$", "")
    local build = os.getenv("TIDE_BUILD_DIR") or "build"
    local dir = helpers.tmpdir()
    local file = dir .. "/chat.jsonl"
    local out = helpers.sh(("(cd %s && printf 'hello there\\n/quit\\n' | LUA_PATH='lua/?.lua;lua/?/init.lua;;' "
      .. "LUA_CPATH='%s/?.so;;' ASAN_OPTIONS=detect_leaks=0 timeout 30 lua5.4 bin/tide chat --provider demo "
      .. "--transcript %s)"):format(root, build, file))
    local text = helpers.read(file)
    assert.is_truthy(text, out)
    assert.matches('"role":"user"', text)
    assert.matches("hello there", text)
    assert.matches('"role":"assistant"', text)
    -- the file is a transcript a session resumes from
    local tide = require "tide"
    helpers.run(function()
      local srv = assert(tide.testing.mock_server { default = "again" })
      tide.agent { id = "chat_resumed", prompt = "You help." }
      local s = assert(tide.session { agent = "chat_resumed", resume = file,
        provider = tide.provider.openai { base_url = srv.url, api_key = "k", model = "m", stream = false } })
      assert.are.equal("hello there", s:history()[1].content)
      srv:close()
    end)
    helpers.rmdir(dir)
  end)
end)

describe("tide chat's commands", function()
  it("lists the tool surface at /tools without a model call, and sends no mistyped command to the model", function()
    local root = helpers.sh("pwd"):gsub("%s+$", "")
    local build = os.getenv("TIDE_BUILD_DIR") or "build"
    local out = helpers.sh(("(cd %s && printf '/tools\\n/stats\\n/frobnicate now\\n/stat\\n//frobnicate now\\n/stats\\n/quit\\n' | "
      .. "LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' ASAN_OPTIONS=detect_leaks=0 "
      .. "timeout 30 lua5.4 bin/tide chat --provider demo; echo \"exit=$?\")"):format(root, build))
    assert.matches("exit=0%s*$", out)
    -- the demo orchestrator's surface, in order: its tool, its sub-agent,
    -- one delegate per connected toolkit (notion is not connected)
    assert.matches("\n>   lookup, delegate_researcher, delegate_github, delegate_slack\n", out, 1, true)
    local calls = {}
    for n in out:gmatch("provider_calls%s+(%d+)") do calls[#calls + 1] = tonumber(n) end
    assert.same({ 0, 1 }, calls, out)
    -- a command the chat does not know is said so, and costs no call (the
    -- calls counted: none, then one for the "//" line); "//" sends a "/"
    assert.matches("unknown command /frobnicate: /help lists them", out, 1, true)
    assert.matches("unknown command /stat: /help lists them", out, 1, true)
    assert.matches("You said: /frobnicate now.", out, 1, true)
  end)
end)
