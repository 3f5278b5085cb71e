local prompts = require "tide.prompts"
local helpers = require "helpers"

-- 20 toolkits, as an integration source returns them: sorted by slug, half of
-- them connected, some with a gated catalogue.
local function toolkits()
  local out = {}
  for i = 1, 20 do
    local slug = ("kit%02d"):format(i)
    local tk = {
      slug = slug, description = "The " .. slug .. " service.", connected = i % 2 == 1,
      tools = {
        { name = slug:upper() .. "_LIST", description = "List things in " .. slug, parameters = {} },
        { name = slug:upper() .. "_GET", description = "Get one thing", parameters = {} },
      },
      gated_tools = {},
    }
    if i % 4 == 1 then
      tk.gated_tools = {
        { name = slug:upper() .. "_DELETE_ALL", description = "Delete everything", reason = "admin scope" },
        { name = slug:upper() .. "_EXPORT", description = "", reason = "curated out" },
      }
    end
    out[i] = tk
  end
  return out
end

local function data(extra)
  local v = {
    agent = { id = "orchestrator", display_name = "Tide" },
    toolkits = toolkits(),
    tools = { { name = "lookup", description = "Looks a word up." } },
    subagents = { { id = "researcher", tool = "delegate_researcher", when_to_use = "Deep research." } },
  }
  for k, x in pairs(extra or {}) do v[k] = x end
  return prompts.data(v)
end

local function render(prompt, d)
  local text, v = prompts.render(prompt, d)
  assert(text, v and tostring(v))
  return text, v
end

local function render_error(prompt, d)
  local text, err = prompts.render(prompt, d or data())
  assert.is_nil(text)
  assert.are.equal("TemplateError", err.code)
  return err
end

-- Every rendered prompt is normalised: no trailing blanks, at most one
-- blank line in a row, nothing around the whole.
local function assert_normal(text)
  assert.is_nil(text:find("[ \t]\n"), "trailing blanks")
  assert.is_nil(text:find("\n\n\n", 1, true), "more than one blank line")
  assert.is_nil(text:find("^%s"), "leading space")
  assert.is_nil(text:find("%s$"), "trailing space")
end

describe("tide.prompts", function()
  local dirs = {}
  local function tmpdir()
    local d = helpers.tmpdir()
    dirs[#dirs + 1] = d
    return d
  end

  after_each(function()
    for _, d in ipairs(dirs) do
      prompts.remove_dir(d)
      helpers.rmdir(d)
    end
    dirs = {}
    helpers.assert_quiet()
  end)

  describe("the default templates", function()
    it("are found beside the Lua layer", function()
      local dirs_now = prompts.dirs()
      assert.are.equal(prompts.defaults_dir(), dirs_now[#dirs_now])
      for _, name in ipairs { "orchestrator", "integrations_agent", "welcome", "subagent_contract" } do
        local r = prompts.resolve(name)
        assert.are.equal(name, r.name)
        assert.are.equal(prompts.defaults_dir() .. "/" .. name .. ".md", r.file)
        assert.is_number(r.version)
      end
    end)

    it("render the orchestrator with a Delegation Guide of the connected toolkits only", function()
      local text = render("orchestrator", data())
      assert_normal(text)
      assert.matches("^You are Tide, ", text)
      local guide = text:find("## Delegation Guide", 1, true)
      local subs = text:find("## Sub-agents", 1, true)
      local tools = text:find("## Tools", 1, true)
      assert.truthy(guide and subs and tools)
      assert.is_true(guide < subs and subs < tools)
      for i = 1, 20 do
        local slug = ("kit%02d"):format(i)
        local heading = ("### %s: use `delegate_%s`\nThe %s service."):format(slug, slug, slug)
        if i % 2 == 1 then
          assert.truthy(text:find(heading, 1, true), slug .. " is connected")
        else
          assert.is_nil(text:find(slug, 1, true), slug .. " is not connected")
        end
      end
      -- the gated catalogue: each hidden action with the reason it is hidden
      for _, i in ipairs { 1, 5, 9, 13, 17 } do
        local up = ("KIT%02d"):format(i)
        assert.truthy(text:find("- " .. up .. "_DELETE_ALL: Delete everything (hidden: admin scope)", 1, true))
        assert.truthy(text:find("- " .. up .. "_EXPORT (hidden: curated out)", 1, true))
      end
      assert.matches("cannot be called", text)
      assert.matches("what access would unlock it", text)
      assert.truthy(text:find("- `delegate_researcher` (researcher): Deep research.", 1, true))
      assert.truthy(text:find("- `lookup`: Looks a word up.", 1, true))
      -- callable actions are the integrations agents' business, not listed here
      assert.is_nil(text:find("KIT01_LIST", 1, true))
      -- nothing that varies per turn
      assert.is_nil(text:find("%d%d%d%d%-%d%d%-%d%d"))
      assert.is_nil(text:find("%d%d?:%d%d"))
    end)

    it("leave the Delegation Guide out when no toolkit is connected", function()
      local d = data { toolkits = {} }
      local text = render("orchestrator", d)
      assert_normal(text)
      assert.is_nil(text:find("Delegation Guide", 1, true))
      assert.truthy(text:find("## Tools", 1, true))
      local none = render("orchestrator", prompts.data { agent = { id = "o" } })
      assert.is_nil(none:find("##", 1, true))
      assert.matches("^You are o, ", none)
    end)

    it("render the data shape sessions build, deriving has_tools and has_subagents", function()
      local d = data()
      d.has_tools, d.has_subagents = nil, nil
      assert.are.equal(render("orchestrator", data()), render("orchestrator", d))
      assert.is_nil(d.has_tools) -- the caller's table is left alone
    end)

    it("render the integrations agent with direct access to its own toolkit", function()
      local d = data()
      d.toolkit = d.toolkits[1]
      local text = render("integrations_agent", d)
      assert_normal(text)
      assert.matches("^You are the kit01 agent%. You have direct access", text)
      assert.truthy(text:find("About kit01: The kit01 service.", 1, true))
      assert.truthy(text:find("- `KIT01_LIST`: List things in kit01", 1, true))
      assert.truthy(text:find("- KIT01_DELETE_ALL: Delete everything (hidden: admin scope)", 1, true))
      assert.matches("cannot be called", text)
      assert.is_nil(text:find("kit03", 1, true))
      d.toolkit = d.toolkits[2] -- kit03: no gated actions
      local plain = render("integrations_agent", d)
      assert.is_nil(plain:find("Not available", 1, true))
    end)

    it("need the integrations agent's toolkit", function()
      local err = render_error("integrations_agent", data())
      assert.matches("unknown variable 'toolkit.slug'", err.message)
      assert.are.equal(prompts.defaults_dir() .. "/integrations_agent.md", err.file)
      assert.is_number(err.line)
    end)

    it("render the welcome prompt and the sub-agent contract", function()
      local w = render("welcome", data())
      assert_normal(w)
      assert.truthy(w:find("- kit01: The kit01 service.", 1, true))
      local lonely = render("welcome", prompts.data { agent = { id = "welcome" } })
      assert.matches("No integrations are connected", lonely)
      local c = render("subagent_contract", {})
      assert_normal(c)
      assert.matches("only on that task", c)
      assert.matches("final message", c)
      assert.matches("Do not ask questions back", c)
      assert.matches("say so plainly", c)
    end)

    it("render byte-identically every time", function()
      for _, name in ipairs { "orchestrator", "welcome", "subagent_contract" } do
        local a, va = render(name, data())
        local b, vb = render(name, data())
        assert.are.equal(a, b)
        assert.are.equal(va, vb)
      end
      local d = data()
      d.toolkit = d.toolkits[3]
      assert.are.equal(render("integrations_agent", d), render("integrations_agent", data { toolkit = toolkits()[5] }))
    end)
  end)

  describe("prompt directories", function()
    it("let a user directory override a default, the last added winning", function()
      local a, b = tmpdir(), tmpdir()
      helpers.write(a .. "/welcome.md", "Welcome from A, {{agent.id}}.")
      helpers.write(b .. "/welcome.md", "Welcome from B.")
      local pa = prompts.add_dir(a)
      assert.are.equal("Welcome from A, w.", render("welcome", data { agent = { id = "w" } }))
      local pb = prompts.add_dir(b)
      assert.are.equal("Welcome from B.", render("welcome", data()))
      assert.are.same({ pb, pa, prompts.defaults_dir() }, prompts.dirs())
      prompts.add_dir(a) -- again: moves to the front
      assert.are.equal("Welcome from A, x.", render("welcome", data { agent = { id = "x" } }))
      prompts.remove_dir(a)
      prompts.remove_dir(b)
      assert.matches("^You are Tide, welcoming", (render("welcome", data())))
    end)

    it("give each file its own version, the same from resolve, version and render", function()
      local a = tmpdir()
      helpers.write(a .. "/one.md", "one")
      helpers.write(a .. "/two.md", "two")
      prompts.add_dir(a)
      local _, v1 = render("one", {})
      local _, v2 = render("two", {})
      assert.are_not.equal(v1, v2)
      assert.are.equal(v1, prompts.version("one"))
      assert.are.equal(v1, prompts.resolve("one").version)
      local _, again = render("one", {})
      assert.are.equal(v1, again)
      assert.is_nil(prompts.version("no_such_prompt"))
    end)

    it("resolve partials by prompt name, overrides included", function()
      local a = tmpdir()
      helpers.write(a .. "/outer.md", "Before\n  {{> inner}}\nAfter {{> tail}}")
      helpers.write(a .. "/inner.md", "line 1\nline 2 {{agent.id}}\n")
      helpers.write(a .. "/tail.md", "the end")
      prompts.add_dir(a)
      local text, v = render("outer", data { agent = { id = "x" } })
      assert.are.equal("Before\n  line 1\n  line 2 x\nAfter the end", text)
      assert.are_not.equal(v, prompts.resolve("inner").version)
      assert.are.equal(v, prompts.version("outer"))
      -- inline text may use partials too
      assert.are.equal("[the end]", render("[{{> tail}}]", {}))
    end)

    it("refuse a directory that cannot be read", function()
      assert.has_error(function() prompts.add_dir("/no/such/dir") end,
        "prompt directory '/no/such/dir' cannot be read")
    end)
  end)

  describe("inline prompts", function()
    it("render text that is not a bare name as a template", function()
      local text, v = render("You are {{agent.id}}.\n\n\n\nBe brief.   \n\n", data { agent = { id = "r" } })
      assert.are.equal("You are r.\n\nBe brief.", text)
      assert.is_number(v)
      assert.are.equal(v, prompts.resolve("You are {{agent.id}}.\n\n\n\nBe brief.   \n\n").version)
      assert.are.same({ inline = "You research things.", version = prompts.resolve("You research things.").version },
        prompts.resolve("You research things."))
    end)

    it("are normalised byte for byte as the gsub chain did before", function()
      local reference = helpers.normalise_reference
      local cases = {
        "Trailing spaces   \nand tabs\t\t\nhere",
        "CRLF lines\r\nnext\r\n\r\n\r\n\r\nafter three blank ones\r\n",
        "Three\n\n\nblank\n\n\n\n\nlines and \n  \n\t\n whitespace-only lines",
        "\n\n\n  Leading and trailing blank lines  \n\n\n",
        "\tTabs\tinside\tand\n\tindenting\n\t\n",
        "Lone\rreturns\r\r\nstay \r\n\r\nx\v\f",
        "{{#agent}}Hello {{id}}  {{/agent}}\r\n\r\n\r\n{{^agent}}never{{/agent}}\n\n\nend ",
      }
      for _, s in ipairs(cases) do
        local raw = assert(assert(require("tide.core").template_compile(s)):render(data()))
        assert.are.equal(reference(raw), render(s, data()), ("for %q"):format(s))
      end
    end)

    it("treat a bare word as a prompt name", function()
      assert.has_error(function() prompts.resolve("hello") end)
      local err = render_error("hello")
      assert.matches("^unknown prompt 'hello' %(looked in: .*prompts%)$", err.message)
    end)
  end)

  describe("errors", function()
    local a
    before_each(function()
      a = tmpdir()
      prompts.add_dir(a)
    end)

    it("name an unknown prompt and where it was looked for", function()
      local ok, msg = pcall(prompts.resolve, "greeter")
      assert.is_false(ok)
      assert.truthy(msg:find("unknown prompt 'greeter' (looked in: " .. prompts.dirs()[1] .. ", "
        .. prompts.defaults_dir() .. ")", 1, true))
    end)

    it("give file and line for an unknown variable", function()
      helpers.write(a .. "/typo.md", "Hello\n\n{{agent.nmae}}\n")
      local err = render_error("typo")
      assert.are.equal(prompts.dirs()[1] .. "/typo.md", err.file)
      assert.are.equal(3, err.line)
      assert.matches("unknown variable 'agent.nmae'", err.message)
    end)

    it("give file and line for an unclosed section, and keep resolve usable", function()
      helpers.write(a .. "/open.md", "one\ntwo\n{{#has_tools}}\nthree\n")
      local err = render_error("open")
      assert.are.equal(prompts.dirs()[1] .. "/open.md", err.file)
      assert.are.equal(3, err.line)
      assert.matches("unclosed section 'has_tools'", err.message)
      local r = prompts.resolve("open")
      assert.is_nil(r.version)
      assert.are.equal(err.message, r.error.message)
      local v, verr = prompts.version("open")
      assert.is_nil(v)
      assert.are.equal(3, verr.line)
    end)

    it("refuse a partial outside the prompt directories, with file and line", function()
      helpers.write(a .. "/escape.md", "x\n{{> ../secret}}\n")
      helpers.write(a .. "/slash.md", "x\ny\nz {{> sub/part}}")
      local err = render_error("escape")
      assert.are.equal(prompts.dirs()[1] .. "/escape.md", err.file)
      assert.are.equal(2, err.line)
      assert.matches("partial '../secret' is outside the prompt directories", err.message, 1, true)
      err = render_error("slash")
      assert.are.equal(3, err.line)
      err = render_error("{{> /etc/passwd}}")
      assert.are.equal("(inline)", err.file)
      assert.are.equal(1, err.line)
    end)

    it("give the including file and line for an unknown partial", function()
      helpers.write(a .. "/uses.md", "a\nb\n{{> missing_part}}\n")
      local err = render_error("uses")
      assert.are.equal(prompts.dirs()[1] .. "/uses.md", err.file)
      assert.are.equal(3, err.line)
      assert.matches("^unknown prompt 'missing_part' %(looked in: ", err.message)
    end)

    it("report a broken override instead of falling back to the default", function()
      helpers.write(a .. "/welcome.md", "{{/oops}}")
      local err = render_error("welcome")
      assert.are.equal(prompts.dirs()[1] .. "/welcome.md", err.file)
      assert.are.equal(1, err.line)
    end)

    it("report an override too large to read instead of falling back to the default", function()
      helpers.write(a .. "/welcome.md", ("x"):rep(4 * 1024 * 1024 + 1))
      local err = render_error("welcome")
      assert.are.equal("TemplateError", err.code)
      assert.are.equal(prompts.dirs()[1] .. "/welcome.md", err.file)
      assert.matches("over the 4194304%-byte limit", err.message)
      assert.are.equal(err.file, prompts.resolve("welcome").file)
      assert.are.equal("TemplateError", prompts.resolve("welcome").error.code)
    end)

    it("raise on misuse", function()
      assert.has_error(function() prompts.render(nil, {}) end)
      assert.has_error(function() prompts.render("welcome") end)
      assert.has_error(function() prompts.version("two words") end)
    end)
  end)
end)
