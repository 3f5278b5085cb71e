/*
** fuzz_anthropic_parse.c -- core.anthropic_parse(body, max), the scanner of
** a non-streamed Messages reply.
**
** Input: two header bytes, then the response body.
**   [0] the cap (see cap() in harness.c)   [1] where the body is cut in two
** The body is scanned, then its two halves, then the body again: one parser
** serves every call of a state, and the second scan of the body must give
** what the first gave. A reply the scanner gives must be what lua-cjson's
** decoding of the body says (the Lua parser it replaced read that): the
** same text, stop reason, container, usage, reasoning and tool calls, and for a reply
** with a block tide does not model, its content array as a last part that
** decodes to the body's content; an error must be an error table.
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "local h, body = header(input, 2)\n"
    "local max = cap(h[1])\n"
    "local cut = h[2] % (#body + 1)\n"
    "local function parse(s)\n"
    "  local ok, reply, err = try(core.anthropic_parse, s, max)\n"
    "  if not ok then return nil, nil, false end\n"
    "  check(reply ~= nil or (type(err) == 'table' and type(err.code) == 'string'),\n"
    "        'a failure without an error table', err)\n"
    "  return reply, err, true\n"
    "end\n"
    "local first, ferr, ok1 = parse(body)\n"
    "parse(body:sub(1, cut))\n"
    "parse(body:sub(cut + 1))\n"
    "local again, aerr, ok2 = parse(body)\n"
    "if ok1 and ok2 then\n"
    "  check(same(first, again) and same(ferr, aerr), 'anthropic_parse depends on the calls before it',\n"
    "        first or ferr, again or aerr)\n"
    "end\n"
    "if not first then return end\n"
    "local cjson = require('cjson').new()\n"
    "local okd, obj = pcall(cjson.decode, body)\n"
    "check(okd and type(obj) == 'table', 'anthropic_parse took a body lua-cjson rejects', body, obj)\n"
    "check(type(obj.content) == 'table', 'a reply without a content array', obj)\n"
    "local function count(v)\n"
    "  if type(v) == 'number' and v == v and v >= 0 and v < 2 ^ 53 then return math.floor(v) end\n"
    "  return 0\n"
    "end\n"
    "local u = type(obj.usage) == 'table' and obj.usage or {}\n"
    "local read, write = count(u.cache_read_input_tokens), count(u.cache_creation_input_tokens)\n"
    "local d = type(u.output_tokens_details) == 'table' and u.output_tokens_details or {}\n"
    "local usage = { input = count(u.input_tokens) + read + write, output = count(u.output_tokens),\n"
    "                cached = read, cache_write = write, reasoning = count(d.thinking_tokens) }\n"
    "local stu = type(u.server_tool_use) == 'table' and u.server_tool_use or {}\n"
    "if count(stu.web_search_requests) > 0 then usage.web_searches = count(stu.web_search_requests) end\n"
    "local cc = type(u.cache_creation) == 'table' and u.cache_creation or {}\n"
    "if count(cc.ephemeral_1h_input_tokens) > 0 then usage.cache_write_1h = count(cc.ephemeral_1h_input_tokens) end\n"
    "local tier = u.service_tier\n"
    "if type(tier) == 'string' and tier ~= '' and #tier < 24 then usage.service_tier = tier end\n"
    "check(same(first.usage, usage), 'the usage is not what lua-cjson decodes', first.usage, usage)\n"
    "local box = type(obj.container) == 'table' and obj.container.id or nil\n"
    "if type(box) ~= 'string' or box == '' then box = nil end\n"
    "check(first.container == box, 'the container is not what lua-cjson decodes', first.container, box)\n"
    "local raw = type(obj.stop_reason) == 'string' and obj.stop_reason or nil\n"
    "check(first.stop_raw == raw, 'the stop reason is not what lua-cjson decodes', first.stop_raw, raw)\n"
    "local text, calls, parts, other = {}, {}, {}, false\n"
    "for _, b in ipairs(obj.content) do\n"
    "  check(type(b) == 'table', 'a block that is not an object was taken', b)\n"
    "  if b.type == 'text' then text[#text + 1] = type(b.text) == 'string' and b.text or nil\n"
    "  elseif b.type == 'tool_use' then calls[#calls + 1] = b\n"
    "  elseif b.type == 'thinking' then parts[#parts + 1] = { type = 'text', text = b.thinking,\n"
    "    signature = b.signature, provider = 'anthropic' }\n"
    "  elseif b.type == 'redacted_thinking' then parts[#parts + 1] = { type = 'redacted', data = b.data,\n"
    "    provider = 'anthropic' }\n"
    "  elseif type(b.type) == 'string' then other = true end\n"
    "end\n"
    /* the content part: the body's content array, byte for byte */
    "if other then\n"
    "  local last = first.reasoning and table.remove(first.reasoning)\n"
    "  check(last and last.type == 'content' and last.provider == 'anthropic', 'no content part', first.reasoning)\n"
    "  local okc, c = pcall(cjson.decode, last.data)\n"
    "  check(okc and same(c, obj.content) and body:find(last.data, 1, true),\n"
    "        'the content part is not the content of the body', last.data)\n"
    "  if first.reasoning and #first.reasoning == 0 then first.reasoning = nil end\n"
    "end\n"
    "check(first.text == table.concat(text), 'the text is not what lua-cjson decodes', first.text, text)\n"
    "check(same(first.reasoning or {}, parts), 'the reasoning is not what lua-cjson decodes', first.reasoning, parts)\n"
    "check(#first.tool_calls == #calls, 'the calls are not what lua-cjson decodes', first.tool_calls, calls)\n"
    "for i, c in ipairs(calls) do\n"
    "  local got = first.tool_calls[i]\n"
    "  check(got.name == (type(c.name) == 'string' and c.name or ''), 'a call name is not what lua-cjson decodes', got, c)\n"
    "  if type(c.id) == 'string' and c.id ~= '' then\n"
    "    check(got.id == c.id, 'a call id is not what lua-cjson decodes', got, c)\n"
    "  end\n"
    "  if type(c.input) == 'table' then\n"
    /* the canonical text decodes to what the input decodes to (an empty
    ** array and an empty object decode alike) */
    "    local okx, gx = pcall(cjson.decode, got.arguments)\n"
    "    check(okx and same(gx, c.input), 'the arguments are not the input', got, c)\n"
    "  else\n"
    "    check(got.arguments == '{}', 'arguments without an input', got, c)\n"
    "  end\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
