local core = require "tide.core"
local helpers = require "helpers"

local function compile(src, name)
  local t, err = core.template_compile(src, name or "test.md")
  assert(t, err and tostring(err))
  return t
end

-- Compiles and renders; fails the test on any error.
local function render(src, data, partials)
  local out, err = compile(src):render(data or {}, partials)
  assert(out, err and tostring(err))
  return out
end

-- Returns the compile error for src (fails if it compiles).
local function compile_error(src)
  local t, err = core.template_compile(src, "bad.md")
  assert.is_nil(t)
  assert.are.equal("TemplateError", err.code)
  assert.are.equal("bad.md", err.file)
  return err
end

-- Returns the render error (fails if it renders).
local function render_error(src, data, partials)
  local out, err = compile(src, "r.md"):render(data or {}, partials)
  assert.is_nil(out)
  assert.are.equal("TemplateError", err.code)
  return err
end

local raised = require("helpers").raised

describe("core.template_compile", function()
  describe("variables", function()
    it("interpolates names", function()
      assert.are.equal("Hello, Ada!", render("Hello, {{name}}!", { name = "Ada" }))
      assert.are.equal("Hello, Ada!", render("Hello, {{ name }}!", { name = "Ada" }))
      assert.are.equal("no tags\n", render("no tags\n"))
      assert.are.equal("", render(""))
    end)

    it("looks up dotted names", function()
      local data = { user = { name = "Ada", address = { city = "London" } } }
      assert.are.equal("Ada, London", render("{{user.name}}, {{user.address.city}}", data))
    end)

    it("never escapes, with {{ }}, {{{ }}} or {{& }}", function()
      local data = { x = "<b> & \"q\"" }
      assert.are.equal("<b> & \"q\"|<b> & \"q\"|<b> & \"q\"",
        render("{{x}}|{{{x}}}|{{& x}}", data))
    end)

    it("formats numbers and booleans", function()
      assert.are.equal("42 -7 3 2.5 0.33333333333333 1e+100 true false",
        render("{{i}} {{n}} {{f}} {{h}} {{third}} {{big}} {{yes}} {{no}}", {
          i = 42, n = -7, f = 3.0, h = 2.5, third = 1 / 3, big = 1e100, yes = true, no = false,
        }))
      assert.are.equal(tostring(math.mininteger), render("{{m}}", { m = math.mininteger }))
    end)

    it("renders JSON null as nothing", function()
      local cjson = require "cjson"
      assert.are.equal("[]", render("[{{x}}]", { x = cjson.null }))
    end)

    it("refuses to render a table as text", function()
      local err = render_error("\n{{t}}", { t = {} })
      assert.are.equal("cannot render table 't' as text", err.message)
      assert.are.equal(2, err.line)
    end)
  end)

  describe("sections", function()
    it("repeats over arrays, pushing each element", function()
      assert.are.equal("a,b,c,", render("{{#xs}}{{.}},{{/xs}}", { xs = { "a", "b", "c" } }))
      assert.are.equal("Ada=1 Bob=2 ", render("{{#users}}{{name}}={{id}} {{/users}}", {
        users = { { name = "Ada", id = 1 }, { name = "Bob", id = 2 } },
      }))
    end)

    it("renders a map once with it pushed", function()
      assert.are.equal("Ada (London)", render("{{#user}}{{name}} ({{city}}){{/user}}", {
        user = { name = "Ada", city = "London" },
      }))
    end)

    it("renders once for true, non-empty strings and numbers", function()
      assert.are.equal("yes", render("{{#b}}yes{{/b}}", { b = true }))
      assert.are.equal("[hi]", render("{{#s}}[{{.}}]{{/s}}", { s = "hi" }))
      assert.are.equal("n=0", render("{{#n}}n={{.}}{{/n}}", { n = 0 }))
    end)

    it("skips false, empty arrays and empty strings", function()
      local data = { f = false, e = {}, s = "" }
      assert.are.equal("||", render("{{#f}}x{{/f}}|{{#e}}x{{/e}}|{{#s}}x{{/s}}", data))
      assert.are.equal("", render("{{#n}}x{{/n}}", { n = require("cjson").null }))
    end)

    it("renders inverted sections when the section would be skipped", function()
      local data = { f = false, e = {}, s = "", t = true, xs = { 1 }, m = { a = 1 } }
      assert.are.equal("1|2|3",
        render("{{^f}}1{{/f}}|{{^e}}2{{/e}}|{{^s}}3{{/s}}{{^t}}4{{/t}}{{^xs}}5{{/xs}}{{^m}}6{{/m}}", data))
      assert.are.equal("No tools.", render("{{#tools}}- {{name}}{{/tools}}{{^tools}}No tools.{{/tools}}",
        { tools = {} }))
    end)

    it("nests, looking names up from the innermost context outward", function()
      local data = {
        team = "core",
        name = "root",
        groups = {
          { label = "g1", members = { { name = "Ada" }, { name = "Bob", team = "infra" } } },
          { label = "g2", members = {} },
        },
      }
      local src = "{{#groups}}{{label}}:{{#members}} {{name}}@{{team}}{{/members}}"
        .. "{{^members}} none ({{name}}){{/members}};{{/groups}}"
      assert.are.equal("g1: Ada@core Bob@infra;g2: none (root);", render(src, data))
    end)

    it("resolves only the first part of a dotted name through the stack", function()
      local data = { a = { b = { c = "deep" } }, outer = { x = 1 } }
      assert.are.equal("deep", render("{{#outer}}{{a.b.c}}{{/outer}}", data))
      local err = render_error("{{#a}}{{b.x}}{{/a}}", { a = { b = {} }, b = { x = 1 } })
      assert.are.equal("unknown variable 'b.x'", err.message)
    end)

    it("rejects a function as a section", function()
      local err = render_error("{{#f}}x{{/f}}", { f = print })
      assert.are.equal("cannot use function 'f' as a section", err.message)
    end)
  end)

  describe("standalone lines", function()
    it("removes section, inverted, comment and close tags alone on a line", function()
      local src = table.concat({
        "Tools:",
        "{{#tools}}",
        "  - {{name}}",
        "{{/tools}}",
        "  {{! a comment, indented }}",
        "{{^tools}}",
        "none",
        "\t{{/tools}}  ",
        "End.",
      }, "\n")
      assert.are.equal("Tools:\n  - a\n  - b\nEnd.",
        render(src, { tools = { { name = "a" }, { name = "b" } } }))
      assert.are.equal("Tools:\nnone\nEnd.", render(src, { tools = {} }))
    end)

    it("handles CRLF, the first line and the last line without newline", function()
      assert.are.equal("x\r\ny\r\n", render("{{#a}}\r\nx\r\n{{/a}}\r\ny\r\n", { a = true }))
      assert.are.equal("#\n/", render("  {{#b}}\n#{{/b}}\n/", { b = true }))
      assert.are.equal("#\n/\n", render("#{{#b}}\n/\n  {{/b}}", { b = true }))
    end)

    it("removes a multi-line comment standing alone", function()
      assert.are.equal("Begin.\nEnd.\n", render("Begin.\n{{!\nsomething\n}}\nEnd.\n"))
    end)

    it("keeps lines where the tag is not alone", function()
      assert.are.equal(" x \n", render(" {{#a}}x{{/a}} \n", { a = true }))
      assert.are.equal("a\nb\n", render("a{{#t}}\n{{/t}}b\n", { t = true }))
      assert.are.equal(" 1\n", render(" {{v}}\n", { v = 1 }))
      assert.are.equal("\n", render("{{#a}}{{/a}}\n", { a = true }))
    end)
  end)

  describe("partials", function()
    it("lists the partials a template references, once each", function()
      local t = compile("{{> header}}\n{{#x}}{{>item}}{{/x}}{{> header }}{{>footer}}")
      assert.are.same({ "header", "item", "footer" }, t:partials())
      assert.are.same({}, compile("no partials"):partials())
    end)

    it("renders partials with the current context stack", function()
      local item = compile("- {{name}} ({{team}})\n", "item.md")
      local t = compile("Team {{team}}:\n{{#people}}\n{{> item}}\n{{/people}}Done.")
      assert.are.equal("Team core:\n- Ada (core)\n- Bob (core)\nDone.",
        assert(t:render({ team = "core", people = { { name = "Ada" }, { name = "Bob" } } },
          { item = item })))
    end)

    it("renders inline partials in place", function()
      local p = compile("<{{x}}>", "p.md")
      assert.are.equal("a <1> b", render("a {{>p}} b", { x = 1 }, { p = p }))
    end)

    it("indents every line of a standalone partial", function()
      local p = compile("|\n{{{content}}}\n|\n", "p.md")
      assert.are.equal("\\\n |\n <\n->\n |\n/\n",
        render("\\\n {{>p}}\n/\n", { content = "<\n->" }, { p = p }))
      -- Nested standalone partials accumulate their indentation.
      local inner = compile("i1\ni2\n", "inner.md")
      local outer = compile("o1\n  {{>inner}}\no2\n", "outer.md")
      -- An inline partial is not indented, but its own standalone partials are.
      assert.are.equal("> o1\n  i1\n  i2\no2\n",
        render("> {{>outer}}", {}, { outer = outer, inner = inner }))
      assert.are.equal("  o1\n    i1\n    i2\n  o2\n",
        render("  {{>outer}}\n", {}, { outer = outer, inner = inner }))
    end)

    it("fails on an unknown partial", function()
      local err = render_error("a\nb {{> missing}}\n", {}, {})
      assert.are.equal("unknown partial 'missing'", err.message)
      assert.are.equal("r.md", err.file)
      assert.are.equal(2, err.line)
      err = render_error("{{> missing}}", {})
      assert.are.equal("unknown partial 'missing'", err.message)
    end)

    it("reports errors inside a partial with the partial's name and line", function()
      local p = compile("ok\n{{nope}}", "role.md")
      local err = render_error("x {{>role}}", {}, { role = p })
      assert.are.equal("unknown variable 'nope'", err.message)
      assert.are.equal("role.md", err.file)
      assert.are.equal(2, err.line)
    end)

    it("guards against recursion", function()
      local loop = compile("again {{> loop}}", "loop.md")
      local out, err = loop:render({}, { loop = loop })
      assert.is_nil(out)
      assert.are.equal("TemplateError", err.code)
      assert.are.equal("partial recursion too deep", err.message)
      assert.are.equal("loop.md", err.file)
      -- Bounded recursion through data is fine.
      local tree = compile("{{name}}[{{#children}}{{> tree}}{{/children}}]", "tree.md")
      assert.are.equal("a[b[]c[d[]]]", tree:render({
        name = "a",
        children = { { name = "b", children = {} }, { name = "c", children = { { name = "d", children = {} } } } },
      }, { tree = tree }))
    end)

    it("raises when a partial is not a compiled template", function()
      local t = compile("{{> p}}")
      assert.matches("bad argument #2 to 'render' %(partial 'p' is not a template%)",
        raised(function() return t:render({}, { p = "text" }) end))
    end)
  end)

  describe("errors", function()
    it("reports an unknown variable with its line", function()
      local err = render_error("line 1\nline 2 {{user.name}}\n", { user = {} })
      assert.are.equal("unknown variable 'user.name'", err.message)
      assert.are.equal("r.md", err.file)
      assert.are.equal(2, err.line)
      assert.are.equal("TemplateError: unknown variable 'user.name'", tostring(err))
      err = render_error("{{!\n\n}}\n{{x}}", {})
      assert.are.equal(4, err.line)
    end)

    it("reports an unknown section name", function()
      local err = render_error("\n\n{{#tools}}x{{/tools}}", {})
      assert.are.equal("unknown variable 'tools'", err.message)
      assert.are.equal(3, err.line)
      err = render_error("{{^tools}}x{{/tools}}", {})
      assert.are.equal("unknown variable 'tools'", err.message)
    end)

    it("reports an unclosed section at its opening line", function()
      local err = compile_error("a\n{{#tools}}\n- {{name}}\n")
      assert.are.equal("unclosed section 'tools'", err.message)
      assert.are.equal(2, err.line)
      err = compile_error("{{#a}}\n{{#b}}\n{{/b}}")
      assert.are.equal("unclosed section 'a'", err.message)
      assert.are.equal(1, err.line)
    end)

    it("reports a mismatched closing tag", function()
      local err = compile_error("{{#y}}\n\n{{/x}}")
      assert.are.equal("unexpected closing tag 'x' (open section is 'y')", err.message)
      assert.are.equal(3, err.line)
      err = compile_error("ok\n{{/x}}")
      assert.are.equal("unexpected closing tag 'x'", err.message)
      assert.are.equal(2, err.line)
    end)

    it("reports an unclosed tag", function()
      local err = compile_error("a\nb {{name\nc")
      assert.are.equal("unclosed tag", err.message)
      assert.are.equal(2, err.line)
      assert.are.equal("unclosed tag", compile_error("{{{x}}").message)
    end)

    it("reports empty tags and invalid names", function()
      assert.are.equal("empty tag", compile_error("{{}}").message)
      assert.are.equal("empty tag", compile_error("{{ }}").message)
      assert.are.equal("empty tag", compile_error("{{#}}{{/}}").message)
      assert.are.equal("invalid name 'a b'", compile_error("{{a b}}").message)
      assert.are.equal("invalid name 'a..b'", compile_error("{{a..b}}").message)
      assert.are.equal("invalid name '.a'", compile_error("{{.a}}").message)
      assert.are.equal("set-delimiter tags are not supported", compile_error("{{=<% %>=}}").message)
    end)

    it("shows a name in a message cut at 80 bytes and with control bytes as '?'", function()
      local long = string.rep("x", 100000)
      assert.are.equal("invalid name '" .. string.rep("x", 79) .. "?...'",
        compile_error("{{" .. string.rep("x", 79) .. "\0 " .. long .. "}}").message)
      assert.are.equal("invalid name 'a?b'", compile_error("{{a\0b}}").message)
      assert.are.equal("invalid name 'a?b'", compile_error("{{a\1b}}").message)
      assert.are.equal("unclosed section '" .. string.rep("s", 80) .. "...'",
        compile_error("{{#" .. string.rep("s", 5000) .. "}}").message)
      local err = render_error("{{" .. string.rep("v", 300) .. "}}", {})
      assert.are.equal("unknown variable '" .. string.rep("v", 80) .. "...'", err.message)
    end)

    it("names the template 'template' when no name is given", function()
      local _, err = core.template_compile("{{#x}}")
      assert.are.equal("template", err.file)
    end)
  end)

  describe("rendering", function()
    it("is deterministic and reusable", function()
      local t = compile("{{#xs}}{{k}}={{v}};{{/xs}}{{#m}}{{a}}{{b}}{{/m}}")
      local data = { xs = { { k = "a", v = 1 }, { k = "b", v = 2.5 } }, m = { a = "A", b = "B" } }
      local first = assert(t:render(data))
      assert.are.equal("a=1;b=2.5;AB", first)
      for _ = 1, 200 do assert.are.equal(first, t:render(data)) end
    end)

    it("renders {{.}} of scalars pushed by sections", function()
      assert.are.equal("true|1,2,", render("{{#a}}{{.}}{{/a}}|{{#xs}}{{.}},{{/xs}}", { a = true, xs = { 1, 2 } }))
    end)

    it("handles large outputs", function()
      local xs = {}
      for i = 1, 5000 do xs[i] = { n = i } end
      local out = render("{{#xs}}line {{n}}\n{{/xs}}", { xs = xs })
      local lines = select(2, out:gsub("\n", "\n"))
      assert.are.equal(5000, lines)
      assert.are.equal("line 5000\n", out:sub(-10))
    end)
  end)

  describe("normalise", function()
    local reference = helpers.normalise_reference

    local tricky = {
      "", " ", "\n", "\r\n", "\t \n", "a", "  a  ", "\n\n\na\n\n\n",
      "trailing   \nspaces\t\t\nand tabs \t \n",
      "crlf\r\nlines\r\n\r\n\r\n\r\nend\r\n",
      "lone\rreturn\r\r\ndouble \r\r\n", "blank \r\n \r\n\t\r\n\r\nx",
      "three\n\n\nblank\n\n\n\n\nlines", "mixed\n \n\t\n  \t \n\nend",
      "\n\n  leading and trailing  \n\n", "\v\f vertical \f\v", "x\v\n\n\ny\f \n",
      "keep  inner  spaces\tand\ttabs", "\t\tindented\n\t\tlines\n",
      "nul\0\n \0 \n\n\n\0", "utf-8 \226\128\148 dash \n\n\n\195\169 ",
      ("line with trailing blanks   \r\n"):rep(50) .. ("\n"):rep(10) .. "tail",
    }

    it("gives what the gsub chain it replaced gave, on tricky inputs", function()
      for _, s in ipairs(tricky) do
        assert.are.equal(reference(s), core.template_normalise(s), ("for %q"):format(s))
      end
    end)

    it("gives what the gsub chain gave, on random inputs", function()
      local pieces = { " ", "\t", "\n", "\r", "\r\n", "a", "bc", "\v", "\f", "\0", "\255",
                       "  \n", "\n\n\n", " \r\n", "\r\r\n", "\t\r\n\r\n" }
      local rng = 12345
      local function rand(n) -- a fixed LCG: the same cases on every run
        rng = (rng * 1103515245 + 12345) % 2147483648
        return rng % n + 1
      end
      for _ = 1, 20000 do
        local t = {}
        for j = 1, rand(16) - 1 do t[j] = pieces[rand(#pieces)] end
        local s = table.concat(t)
        assert.are.equal(reference(s), core.template_normalise(s), ("for %q"):format(s))
      end
    end)

    it("handles large text and raises on a non-string", function()
      local big = ("word \t\r\n\n\n\n"):rep(20000)
      assert.are.equal(reference(big), core.template_normalise(big))
      assert.matches("bad argument #1 to '[%w.]*template_normalise' %(string expected, got table%)",
        raised(core.template_normalise, {}))
    end)
  end)

  describe("misuse", function()
    it("raises naming the argument", function()
      assert.matches("bad argument #1 to '[%w.]*template_compile' %(string expected, got nil%)",
        raised(core.template_compile, nil, "x"))
      assert.matches("bad argument #2 to '[%w.]*template_compile' %(string expected, got table%)",
        raised(core.template_compile, "x", {}))
      local t = compile("x")
      assert.matches("bad argument #1 to 'render' %(table expected, got string%)",
        raised(function() return t:render("data") end))
      assert.matches("bad argument #1 to 'render' %(table expected, got no value%)",
        raised(function() return t:render() end))
      assert.matches("bad argument #2 to 'render' %(table expected, got number%)",
        raised(function() return t:render({}, 5) end))
      assert.matches("tide.template expected", raised(t.render, {}, {}))
      assert.matches("tide.template expected", raised(t.partials, "x"))
    end)
  end)
end)
