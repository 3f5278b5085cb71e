/*
** fuzz_template.c -- core.template_compile(source, name), t:render(data,
** partials), t:partials() and core.template_normalise(text), as
** lua/tide/prompts.lua calls them.
**
** Input: up to three template sources separated by NUL bytes: the template,
** then the partials "a" and "b" (the template itself is the partial "self").
** Each is compiled; the template is rendered twice with fixed data, and
** the two renderings must agree. template_normalise must give what the Lua
** chain it replaced gives, for the source and for the rendering.
**
** Mustache data can make a short template render for ever (nested sections
** over a list, partials that include each other): the fuzzer's timeout would
** stop at those. Every lookup in the root context and every partial goes
** through an __index function that counts, and raises once a budget is
** spent; lists of more than one element are only in the root context, so
** that every multiplication of the work is counted.
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "local sources, from = {}, 1\n"
    "while #sources < 3 do\n"
    "  local nul = input:find('\\0', from, true)\n"
    "  if not nul or #sources == 2 then sources[#sources + 1] = input:sub(from); break end\n"
    "  sources[#sources + 1] = input:sub(from, nul - 1)\n"
    "  from = nul + 1\n"
    "end\n"
    /* What template_normalise replaced (its comment in template.c). */
    "local function normalise(s)\n"
    "  s = s:gsub('\\r\\n', '\\n'):gsub('[ \\t]+\\n', '\\n'):gsub('\\n\\n\\n+', '\\n\\n')\n"
    "  s = s:gsub('^%s+', ''):gsub('%s+$', '')\n"
    "  return s\n"
    "end\n"
    "local function check_normalise(s)\n"
    "  local ok, got = try(core.template_normalise, s)\n"
    "  if ok then\n"
    "    local want = normalise(s)\n"
    "    check(got == want, 'template_normalise differs from the Lua chain', got, want)\n"
    "  end\n"
    "end\n"
    "local compiled = {}\n"
    "for i, src in ipairs(sources) do\n"
    "  check_normalise(src)\n"
    "  local ok, t, err = try(core.template_compile, src, 'fuzz' .. i .. '.md')\n"
    "  if ok then\n"
    "    if t then\n"
    "      local ok2, names = try(t.partials, t)\n"
    "      check(not ok2 or type(names) == 'table', 'partials() gave no list', names)\n"
    "      compiled[i] = t\n"
    "    else\n"
    "      check(type(err) == 'table' and err.code == 'TemplateError' and err.file == 'fuzz' .. i .. '.md',\n"
    "            'compile failed without a TemplateError', err)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local t = compiled[1]\n"
    "if not t then return end\n"
    "allow('fuzz: render budget spent')\n"
    "allow('boom')\n"
    "allow('is not a template')\n"
    "local budget\n"
    "local function counted(real)\n"
    "  return setmetatable({}, { __index = function(_, k)\n"
    "    budget = budget - 1\n"
    "    if budget < 0 then error('fuzz: render budget spent') end\n"
    "    return real[k]\n"
    "  end })\n"
    "end\n"
    "local meta = setmetatable({ x = 'x' }, { __index = function(_, k)\n"
    "  if k == 'boom' then error('boom') end\n"
    "  return nil\n"
    "end })\n"
    "local data = counted({\n"
    "  name = 'Ada', s = 'two\\nlines\\n', empty = '', i = 42, n = -7, f = 2.5, big = 1e300,\n"
    "  nan = 0 / 0, inf = math.huge, mi = math.mininteger, yes = true, no = false,\n"
    "  null = null, fn = print, meta = meta, t = {}, co = coroutine.create(print),\n"
    "  list = { { name = 'x', tags = { 'one' } }, { name = 'y', obj = { a = 1 } }, 'str', 3, false },\n"
    "  nums = { 1, 2, 3 }, obj = { a = { b = { c = 'deep' } }, name = 'inner', list = { 'only' } },\n"
    "  agent = { display_name = 'Tide', id = 'orchestrator' }, has_toolkits = true,\n"
    "  toolkits = { { slug = 'github', delegate = 'delegate_github', description = 'Repos.',\n"
    "                 has_gated = true, gated_tools = { { name = 'delete', reason = 'scope' } } },\n"
    "               { slug = 'mail', delegate = 'delegate_mail', description = 'Mail.' } },\n"
    "})\n"
    "local partials = counted({ a = compiled[2], b = compiled[3], self = t, bad = {} })\n"
    "local function render()\n"
    "  budget = 2000\n"
    "  local ok, out, err = try(t.render, t, data, partials)\n"
    "  if not ok then return nil end\n"
    "  if out == nil then\n"
    "    check(type(err) == 'table' and err.code == 'TemplateError', 'render failed without a TemplateError', err)\n"
    "  else\n"
    "    check(type(out) == 'string', 'render gave no string', out)\n"
    "  end\n"
    "  return { out = out, err = err }\n"
    "end\n"
    "local first, again = render(), render()\n"
    "if first and again then\n"
    "  check(same(first, again), 'two renderings differ', first, again)\n"
    "end\n"
    "if first and first.out then check_normalise(first.out) end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
