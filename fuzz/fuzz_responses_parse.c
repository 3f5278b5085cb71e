/*
** fuzz_responses_parse.c -- core.responses_parse(body, max), the scanner
** of a whole (non-streamed) Responses API reply.
**
** Input: three header bytes, then the response body.
**   [0] the cap (see cap() in harness.c)   [1] where the body is cut in two
**   [2] unused
** The body is scanned, then its two halves, then the body again: one parser
** serves every call of a state, and the second scan of the body must give
** what the first gave. With the default cap, the reply (or the error) must
** be what the Lua reference reads from the body through lua-cjson
** (spec/support/reference.lua), unless one of the two JSON decoders refuses
** what the other takes.
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "package.path = '" TIDE_SOURCE_DIR "/spec/?.lua;" TIDE_SOURCE_DIR "/lua/?.lua;' .. package.path\n"
    "local h, body = header(input, 3)\n"
    "local max = cap(h[1])\n"
    "local cut = h[2] % (#body + 1)\n"
    "local function parse(s)\n"
    "  local ok, reply, err = try(core.responses_parse, s, max)\n"
    "  if not ok then return nil end\n"
    "  check((reply == nil) ~= (err == nil), 'neither a reply nor an error (or both)', reply, err)\n"
    "  if err then\n"
    "    check(type(err) == 'table' and type(err.code) == 'string' and err.body == nil,\n"
    "          'an error without a code, or with a body (the exchange adds its excerpt)', err)\n"
    "  else\n"
    "    check(type(reply.text) == 'string' and type(reply.tool_calls) == 'table' and type(reply.usage) == 'table'\n"
    "          and type(reply.stop) == 'string', 'a reply without its fields', reply)\n"
    "  end\n"
    "  return { reply = reply, err = err }\n"
    "end\n"
    "local first = parse(body)\n"
    "parse(body:sub(1, cut))\n"
    "parse(body:sub(cut + 1))\n"
    "local again = parse(body)\n"
    "if first and again then\n"
    "  check(same(first, again), 'responses_parse depends on the calls before it', first, again)\n"
    "end\n"
    "if not first or h[1] ~= 0 then return end\n"
    "local function json_trouble(e)\n"
    "  return e and e.code == 'MalformedResponse' and e.message:find('valid JSON', 1, true) ~= nil\n"
    "end\n"
    "local ok, want, werr = pcall(require('support.reference').responses_parse, body)\n"
    "if not ok then\n"
    "  if tostring(want):find('not enough memory', 1, true) then return end\n"
    "  bug('the reference raised: ' .. tostring(want))\n"
    "end\n"
    "if json_trouble(werr) or json_trouble(first.err) then return end\n"
    "if werr then\n"
    "  check(first.err and first.err.code == werr.code, 'not the reference\\'s error', werr, first.err)\n"
    /* (tostring of a decoded table or null names an address) */
    "  if not werr.message:find(': 0x', 1, true) and not werr.message:find('userdata', 1, true) then\n"
    "    check(first.err.message == werr.message, 'not the reference\\'s message', werr, first.err)\n"
    "  end\n"
    "else\n"
    /* (a hosted tool's item compared as the reference keeps it: canonical) */
    "  local got = require('support.reference').canonical_items(first.reply)\n"
    "  check(same(want, got), 'not the reference\\'s reply', want, got or first.err)\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
