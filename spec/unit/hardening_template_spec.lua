-- Hardening: a template's rendered output is capped, however its partials
-- multiply it (issue 20).
local core = require "tide.core"
local helpers = require "helpers"

local MiB = 1024 * 1024

local function compile(src, name)
  return assert(core.template_compile(src, name))
end

-- Partials p0 .. p<levels>: p0 is `leaf`, each other includes the one
-- below it twice, so p<levels> renders 2^levels copies of the leaf.
local function doubling(levels, leaf, sep)
  local partials = { p0 = compile(leaf, "p0.md") }
  for i = 1, levels do
    partials["p" .. i] = compile(("{{> p%d}}%s{{> p%d}}"):format(i - 1, sep or "", i - 1), "p" .. i .. ".md")
  end
  return partials
end

local function render_error(t, data, partials, max)
  local out, err = t:render(data, partials, max)
  assert.is_nil(out)
  assert.are.equal("TemplateError", err.code)
  return err
end

describe("template output cap", function()
  it("stops partials that double each other at 16 MiB by default", function()
    local leaf = ("x"):rep(1023) .. "\n"
    local partials = doubling(15, leaf) -- 32 MiB if rendered whole
    local root = compile("{{> p15}}", "bomb.md")
    local err = render_error(root, {}, partials)
    assert.matches("rendering 'bomb.md' passes the output cap of 16777216 bytes", err.message, 1, true)
    assert.are.equal("p0.md", err.file) -- where the cap was reached
    -- half of it fits
    local ok = assert(compile("{{> p14}}", "half.md"):render({}, partials))
    assert.are.equal(16 * MiB, #ok)
  end)

  it("takes a cap as the third argument, counting text, values and indentation", function()
    local t = compile("{{a}}{{b}}", "vars.md")
    assert.are.equal("12345", t:render({ a = "123", b = 45 }, nil, 5))
    local err = render_error(t, { a = "123", b = 456 }, nil, 5)
    assert.are.equal(1, err.line)
    assert.are.equal("vars.md", err.file)
    render_error(compile("abcdef", "text.md"), {}, nil, 5)
    render_error(compile("{{x}}", "bool.md"), { x = false }, nil, 4)
    render_error(compile("{{x}}", "float.md"), { x = 1.5 }, nil, 2)
    -- a standalone partial's indentation is output too
    local indented = compile("  {{> p}}\n", "indent.md")
    local p = { p = compile("a\nb\n", "p.md") }
    assert.are.equal("  a\n  b\n", indented:render({}, p, 8))
    render_error(indented, {}, p, 7)
    assert.are.equal("", compile("", "empty.md"):render({}, nil, 0))
    assert.has_error(function() t:render({}, nil, -1) end)
  end)

  it("stops a 1 GiB partial bomb in a prompt directory quickly, naming the file", function()
    local prompts = require "tide.prompts"
    local dir = helpers.tmpdir()
    finally(function() prompts.remove_dir(dir); helpers.rmdir(dir) end)
    helpers.write(dir .. "/h_p0.md", ("y"):rep(1023) .. "\n")
    for i = 1, 20 do
      helpers.write(dir .. ("/h_p%d.md"):format(i), ("{{> h_p%d}}{{> h_p%d}}"):format(i - 1, i - 1))
    end
    helpers.write(dir .. "/h_bomb.md", "Hello.\n{{> h_p20}}\n")
    prompts.add_dir(dir)
    local t0 = os.clock()
    local text, err = prompts.render("h_bomb", {})
    assert.is_nil(text)
    assert.are.equal("TemplateError", err.code)
    assert.truthy(err.message:find(dir .. "/h_bomb.md", 1, true), err.message)
    assert.truthy(err.message:find("output cap", 1, true))
    assert.is_true(os.clock() - t0 < 5, "took " .. (os.clock() - t0) .. " s")
  end)
end)

describe("template work cap", function()
  it("stops sections nested over lists that write nothing, naming file and line", function()
    -- 64 sections over a list of two run 2^64 bodies: an endless loop in C
    -- the event loop could not interrupt, and no output for the cap to see
    local t = compile("Hi.\n" .. ("{{#a}}"):rep(64) .. ("{{/a}}"):rep(64), "nested.md")
    local t0 = os.clock()
    local err = render_error(t, { a = { 1, 2 } })
    assert.matches("rendering 'nested.md' takes more than 4194304 steps", err.message, 1, true)
    assert.are.equal("nested.md", err.file)
    assert.are.equal(2, err.line)
    -- one empty section over a long list counts its iterations too
    local long = {}
    for i = 1, 5000000 do long[i] = true end
    render_error(compile("{{#a}}{{/a}}", "long.md"), { a = long })
    assert.is_true(os.clock() - t0 < 20, "took " .. (os.clock() - t0) .. " s")
    -- ordinary nesting is untouched
    local xs = {}
    for i = 1, 100 do xs[i] = { ys = { 1, 2, 3 } } end
    local out = assert(compile("{{#xs}}{{#ys}}{{.}}{{/ys}}{{/xs}}", "ok.md"):render({ xs = xs }))
    assert.are.equal(300, #out)
  end)
end)
