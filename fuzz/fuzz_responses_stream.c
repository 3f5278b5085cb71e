/*
** fuzz_responses_stream.c -- core.responses_stream(max): s:feed(chunk, out,
** rout), s:finish(), s:close(): the OpenAI Responses API's event stream.
**
** Input: four header bytes, then the SSE stream of a response.
**   [0] the cap (see cap() in harness.c)   [1] the longest chunk (0: one piece)
**   [2] the seed of the cut points
**   [3] how deltas come back: % 3 == 0 in `out` tables, 1 as a string per
**       chunk, 2 not at all (out = false, and no reasoning table)
** The stream is parsed once in one piece and once cut into chunks, by two
** streams in turn (the second takes the parser the first left behind;
** reply_runs in harness.c): the replies or errors, and the deltas on the
** way, must be the same. With the
** default cap, the reply must be what the Lua reference reads from the same
** stream through lua-cjson (spec/support/reference.lua), unless one of the
** two JSON decoders refuses what the other takes (lua-cjson stops at depth
** 200 and takes NaN and hex numbers; the scanner does neither).
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "package.path = '" TIDE_SOURCE_DIR "/spec/?.lua;" TIDE_SOURCE_DIR "/lua/?.lua;' .. package.path\n"
    "local h, stream = header(input, 4)\n"
    "local max, mode = cap(h[1]), h[4] % 3\n"
    "local STOPS = { stop = true, tool_calls = true, length = true, content_filter = true, refusal = true }\n"
    /* What a Responses reply promises beyond the shell's protocol (harness.c). */
    "local function check_reply(reply)\n"
    "  for _, r in ipairs(reply.reasoning or {}) do\n"
    "    check(r.type == 'encrypted' and r.provider == 'openai_responses' and type(r.id) == 'string'\n"
    "          and r.id ~= '' and type(r.summary) == 'string' and (r.data == nil or type(r.data) == 'string'),\n"
    "          'a reasoning part the encoder could not send back', r)\n"
    "  end\n"
    "  check(reply.reasoning == nil or #reply.reasoning > 0, 'an empty reasoning list', reply.reasoning)\n"
    "  check(reply.refusal == nil or type(reply.refusal) == 'string', 'a refusal that is not text', reply.refusal)\n"
    "  for _, c in ipairs(reply.tool_calls) do\n"
    "    check(type(c.id) == 'string' and c.id ~= '' and type(c.name) == 'string' and\n"
    "          type(c.arguments) == 'string' and (c.custom or c.arguments:find('%S') ~= nil), 'an unfinished call', c)\n"
    "  end\n"
    "  local u = reply.usage\n"
    "  check(math.type(u.input) == 'integer' and math.type(u.output) == 'integer' and\n"
    "        math.type(u.cached) == 'integer' and math.type(u.reasoning) == 'integer' and u.cache_write == 0,\n"
    "        'usage without its fields', u)\n"
    "  check(STOPS[reply.stop], 'a stop reason the session does not know', reply.stop)\n"
    "end\n"
    "local whole = reply_runs(function() return core.responses_stream(max) end, stream, h[2], h[3], mode,\n"
    "                         check_reply)\n"
    /* The Lua reference, on the same bytes, with the default cap. */
    "if not whole or h[1] ~= 0 or mode == 2 then return end\n"
    "local function json_trouble(e)\n"
    "  return e and e.code == 'MalformedResponse' and e.message:find('invalid JSON', 1, true) ~= nil\n"
    "end\n"
    "local ok, want = pcall(require('support.reference').responses_stream, stream)\n"
    "if not ok then\n"
    "  if tostring(want):find('not enough memory', 1, true) then return end\n"
    "  bug('the reference raised: ' .. tostring(want))\n"
    "end\n"
    "if json_trouble(want.err) or json_trouble(whole.err) then return end\n"
    "check(table.concat(want.text) == whole.text, 'the text deltas are not the reference\\'s', want.text, whole.text)\n"
    "check(table.concat(want.reasoning) == whole.reasoning, 'the reasoning deltas are not the reference\\'s',\n"
    "      want.reasoning, whole.reasoning)\n"
    "if want.err then\n"
    "  check(whole.err and whole.err.code == want.err.code, 'not the reference\\'s error', want.err, whole.err)\n"
    "else\n"
    /* (a hosted tool's item compared as the reference keeps it: canonical) */
    "  local got = require('support.reference').canonical_items(whole.reply)\n"
    "  check(same(want.reply, got), 'not the reference\\'s reply', want.reply, got or whole.err)\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
