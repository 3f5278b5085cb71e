/*
** fuzz_openai_parse.c -- core.openai_parse(body, max), the scanner
** of a non-streamed chat.completion.
**
** Input: three header bytes, then the response body.
**   [0] the cap (see cap() in harness.c)   [1] where the body is cut in two
**   [2] unused (kept so that the seed corpus stays valid)
** The body is scanned, then its two halves, then the body again: one parser
** serves every call of a state, and the second scan of the body must give
** what the first gave. A reply the scanner gives must be what lua-cjson's
** decoding of the body says (the provider's decoder, which the scanner
** spares): the same text, finish reason, usage and tool calls.
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "local h, body = header(input, 3)\n"
    "local max = cap(h[1])\n"
    "local cut = h[2] % (#body + 1)\n"
    "local function parse(s)\n"
    "  local ok, reply = try(core.openai_parse, s, max)\n"
    "  if not ok then return nil, false end\n"
    "  return reply, true\n"
    "end\n"
    "local first, ok1 = parse(body)\n"
    "parse(body:sub(1, cut))\n"
    "parse(body:sub(cut + 1))\n"
    "local again, ok2 = parse(body)\n"
    "if ok1 and ok2 then\n"
    "  check(same(first, again), 'openai_parse depends on the calls before it', first, again)\n"
    "end\n"
    "if not first then return end\n"
    /* The reply as provider/openai.lua's _parse reads the decoded body. */
    "local okd, obj = pcall(require('cjson').new().decode, body)\n"
    "check(okd and type(obj) == 'table', 'openai_parse took a body lua-cjson rejects', body, obj)\n"
    "local choice = obj.choices[1]\n"
    "local m = choice.message\n"
    /* Mistral's chunks: text chunks the text, thinking pieces the reasoning */
    "local text, thinking, sig = type(m.content) == 'string' and m.content or '', '', nil\n"
    "if type(m.content) == 'table' then\n"
    "  local tx, th = {}, {}\n"
    "  for _, c in ipairs(m.content) do\n"
    "    if type(c) == 'table' then\n"
    "      local ty = type(c.type) == 'string' and c.type or nil\n"
    "      if ty == 'thinking' or (ty == nil and type(c.thinking) == 'table') then\n"
    "        for _, p in ipairs(type(c.thinking) == 'table' and c.thinking or {}) do\n"
    "          local pt = type(p) == 'table' and p.type\n"
    "          if type(p) == 'table' and (type(pt) ~= 'string' or pt == 'text') and type(p.text) == 'string' then\n"
    "            th[#th + 1] = p.text\n"
    "          end\n"
    "        end\n"
    "        if type(c.signature) == 'string' and c.signature ~= '' then sig = c.signature end\n"
    "      elseif (ty == nil or ty == 'text') and type(c.text) == 'string' then\n"
    "        tx[#tx + 1] = c.text\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  text, thinking = table.concat(tx), table.concat(th)\n"
    "end\n"
    "check(first.text == text, 'the text is not what lua-cjson decodes', first.text, text)\n"
    "local raw = type(choice.finish_reason) == 'string' and choice.finish_reason or nil\n"
    "check(first.stop_raw == raw, 'the finish reason is not what lua-cjson decodes', first.stop_raw, raw)\n"
    "local function count(v)\n"
    "  if type(v) == 'number' and v == v and v >= 0 and v < 2 ^ 53 then return math.floor(v) end\n"
    "  return 0\n"
    "end\n"
    "local u = type(obj.usage) == 'table' and obj.usage or {}\n"
    "local d = type(u.prompt_tokens_details) == 'table' and u.prompt_tokens_details or {}\n"
    "local od = type(u.completion_tokens_details) == 'table' and u.completion_tokens_details or {}\n"
    /* DeepSeek's name for cached tokens too (the larger); OpenRouter's writes and cost */
    "local cost = u.cost\n"
    "local usage = { input = count(u.prompt_tokens), output = count(u.completion_tokens),\n"
    "                cached = math.max(count(d.cached_tokens), count(u.prompt_cache_hit_tokens)),\n"
    "                cache_write = count(d.cache_write_tokens), reasoning = count(od.reasoning_tokens),\n"
    "                cost_usd = type(cost) == 'number' and cost >= 0 and cost < math.huge and cost or nil }\n"
    /* the tier that served it: a name shorter than 24 bytes */
    "local tier = obj.service_tier\n"
    "if type(tier) == 'string' and tier ~= '' and #tier < 24 then usage.service_tier = tier end\n"
    "check(same(first.usage, usage), 'the usage is not what lua-cjson decodes', first.usage, usage)\n"
    /* reasoning_content wins over reasoning; the refusal is apart from the text */
    "local r = (type(m.reasoning_content) == 'string' and m.reasoning_content\n"
    "  or type(m.reasoning) == 'string' and m.reasoning or '') .. thinking\n"
    "local parts = first.reasoning or {}\n"
    "local tp = parts[1] and parts[1].type == 'text' and parts[1] or {}\n"
    /* the name it came under, when that was `reasoning` (it goes back under it) */
    "local named = type(m.reasoning_content) ~= 'string' and type(m.reasoning) == 'string' and m.reasoning ~= ''\n"
    "check((tp.text or '') == r and tp.signature == sig and tp.field == (named and 'reasoning' or nil),\n"
    "      'the reasoning is not what lua-cjson decodes', first.reasoning, r)\n"
    /* OpenRouter's details: the array as it came ({} and [] alike) */
    "local det = m.reasoning_details\n"
    "if type(det) ~= 'table' or not (next(det) == nil or det[1] ~= nil) then det = nil end\n"
    "local dp = parts[#parts] and parts[#parts].type == 'details' and parts[#parts] or nil\n"
    "local okl, list = pcall(require('cjson').new().decode, dp and dp.data or '[]')\n"
    "check(okl and same(list[1], det), 'the details are not what lua-cjson decodes', dp, det)\n"
    "local rf = type(m.refusal) == 'string' and m.refusal or ''\n"
    "check((first.refusal or '') == rf, 'the refusal is not what lua-cjson decodes', first.refusal, rf)\n"
    "local calls = type(m.tool_calls) == 'table' and m.tool_calls or {}\n"
    "check(#first.tool_calls == #calls, 'the calls are not what lua-cjson decodes', first.tool_calls, calls)\n"
    "for i, c in ipairs(calls) do\n"
    /* a custom tool's call: custom.{name, input}, the input kept as it came */
    "  local custom = type(c.custom) == 'table' and next(c.custom) ~= nil and c.custom[1] == nil\n"
    "  local got, f = first.tool_calls[i], custom and c.custom or c['function']\n"
    "  local name = type(f.name) == 'string' and f.name or ''\n"
    "  local piece = custom and f.input or f.arguments\n"
    "  local args = type(piece) == 'string' and piece or ''\n"
    "  if not custom and args:match('^%s*$') then args = '{}' end\n"
    /* ({} and [] decode alike: an empty custom cannot be told from none) */
    "  local unsure = type(c.custom) == 'table' and next(c.custom) == nil\n"
    "  check(unsure or (got.name == name and got.arguments == args and got.custom == (custom or nil)),\n"
    "        'a call is not what lua-cjson decodes', got, c)\n"
    "  local x = type(c.extra_content) == 'table' and c.extra_content or nil\n"
    /* (an empty object and an empty array decode alike: only a named member proves an object) */
    "  if x and next(x) ~= nil and x[1] == nil then\n"
    "    check(got.extra_content ~= nil, 'extra_content was dropped', got, c)\n"
    "  end\n"
    "  if got.extra_content then\n"
    "    local okx, gx = pcall(require('cjson').new().decode, got.extra_content)\n"
    "    check(okx and same(gx, x), 'extra_content is not the text it came as', got, c)\n"
    "  end\n"
    "  if type(c.id) == 'string' and c.id ~= '' then\n"
    "    check(got.id == c.id, 'a call id is not what lua-cjson decodes', got, c)\n"
    "  end\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
