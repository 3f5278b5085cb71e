/*
** fuzz_openai_stream.c -- core.openai_stream(max): s:feed(chunk, out),
** s:finish(), s:close().
**
** Input: four header bytes, then the SSE stream of a chat completion.
**   [0] the cap (see cap() in harness.c)   [1] the longest chunk (0: one piece)
**   [2] the seed of the cut points
**   [3] how text deltas come back: % 3 == 0 in an `out` table, 1 as a string
**       per chunk, 2 not at all (out = false)
** The stream is parsed once in one piece and once cut into chunks, by two
** streams in turn, so that the second takes the parser the first one left
** behind when it closed (reply_runs in harness.c). The replies (or the
** errors) and the deltas must be the same, and the deltas must add up to
** the reply's text and reasoning.
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "local h, stream = header(input, 4)\n"
    "local max, mode = cap(h[1]), h[4] % 3\n"
    /* What a chat reply promises beyond the shell's protocol (harness.c). */
    /* reasoning: a text part (text, or a thinking chunk's signature), then
    ** OpenRouter's details (the list of every event's array), each optional */
    "local function check_reply(reply, _, reasoning)\n"
    "  local parts = reply.reasoning or {}\n"
    "  local t = parts[1] and parts[1].type == 'text' and parts[1] or nil\n"
    "  local d = parts[#parts] and parts[#parts].type == 'details' and parts[#parts] or nil\n"
    "  if reasoning then\n"
    "    local r = t and t.text or ''\n"
    "    check(reasoning == r, 'the reasoning deltas do not add up', reasoning, r)\n"
    "  end\n"
    "  check(reply.reasoning == nil or (#parts == (t and 1 or 0) + (d and 1 or 0) and #parts > 0),\n"
    "        'a reasoning part of the wrong shape', reply.reasoning)\n"
    "  check(t == nil or (t.provider == 'openai' and (t.text ~= '' or t.signature ~= nil)\n"
    "        and (t.via == nil or t.via == 'content') and (t.field == nil or t.field == 'reasoning')),\n"
    "        'a reasoning part of the wrong shape', t)\n"
    "  if d then\n"
    "    local ok, list = pcall(require('cjson').new().decode, d.data)\n"
    "    check(d.provider == 'openai' and ok and type(list) == 'table' and #list > 0,\n"
    "          'details that are not a list of arrays', d)\n"
    "  end\n"
    "  check(reply.refusal == nil or (type(reply.refusal) == 'string' and reply.refusal ~= ''),\n"
    "        'an empty refusal', reply.refusal)\n"
    "  for _, c in ipairs(reply.tool_calls) do\n"
    "    check(c.extra_content == nil or (type(c.extra_content) == 'string' and\n"
    "          core.openai_assistant_wire('', { c }) ~= nil), 'extra_content the encoder declines', c)\n"
    "  end\n"
    "  local u = reply.usage\n"
    "  check(math.type(u.reasoning) == 'integer' and math.type(u.cache_write) == 'integer'\n"
    "        and (u.cost_usd == nil or (u.cost_usd >= 0 and u.cost_usd < math.huge)), 'usage without its fields', u)\n"
    "end\n"
    "reply_runs(function() return core.openai_stream(max) end, stream, h[2], h[3], mode, check_reply)\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
