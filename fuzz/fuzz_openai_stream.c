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
** behind when it closed. The replies (or the errors) must be the same, and
** the text deltas must add up to the reply's text.
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "local h, stream = header(input, 4)\n"
    "local max, mode = cap(h[1]), h[4] % 3\n"
    /* The reply or the error of the pieces fed to a new stream, and the text
    ** deltas handed back on the way; nil when a call raised. */
    "local function run(pieces)\n"
    "  local ok, s = try(core.openai_stream, max)\n"
    "  if not ok then return nil end\n"
    "  local deltas, rdeltas, failure = {}, {}, nil\n"
    "  for _, piece in ipairs(pieces) do\n"
    "    local out = false\n"
    "    if mode == 0 then out = {} elseif mode == 1 then out = nil end\n"
    "    local rout = mode ~= 2 and {} or nil\n"
    "    local ok2, a, err, c = try(s.feed, s, piece, out, rout)\n"
    "    if not ok2 then return nil end\n"
    "    if err ~= nil then\n"
    "      check(type(err) == 'table' and type(err.code) == 'string', 'feed failed without an error table', err)\n"
    "      check(a == nil, 'feed failed with a value', a)\n"
    "      check(failure == nil or failure == err, 'a failed stream changed its error', failure, err)\n"
    "      failure = err\n"
    "    elseif mode == 0 then\n"
    "      check(a == #out, 'feed counted its deltas wrong', a, out)\n"
    "    end\n"
    "    if rout then\n"
    "      for i = 1, #rout do rdeltas[#rdeltas + 1] = rout[i] end\n"
    "    end\n"
    "    if mode == 0 then\n"
    "      for i = 1, #out do deltas[#deltas + 1] = out[i] end\n"
    "    elseif mode == 1 and (a or c) then\n"
    "      deltas[#deltas + 1] = a or c\n"
    "    end\n"
    "  end\n"
    "  local ok3, reply, err = try(s.finish, s)\n"
    "  if not ok3 then return nil end\n"
    "  if failure then check(err == failure, 'finish forgot the failure', failure, err) end\n"
    "  if reply then\n"
    "    check(type(reply.text) == 'string' and type(reply.tool_calls) == 'table' and\n"
    "          type(reply.usage) == 'table', 'a reply without its fields', reply)\n"
    "    if mode ~= 2 then\n"
    "      check(table.concat(deltas) == reply.text, 'the deltas do not add up to the text',\n"
    "            deltas, reply.text)\n"
    "      local r = reply.reasoning and reply.reasoning[1].text or ''\n"
    "      check(table.concat(rdeltas) == r, 'the reasoning deltas do not add up', rdeltas, r)\n"
    "    end\n"
    "    check(reply.reasoning == nil or (#reply.reasoning == 1 and reply.reasoning[1].provider == 'openai'\n"
    "          and reply.reasoning[1].text ~= ''), 'a reasoning part of the wrong shape', reply.reasoning)\n"
    "    check(reply.refusal == nil or (type(reply.refusal) == 'string' and reply.refusal ~= ''),\n"
    "          'an empty refusal', reply.refusal)\n"
    "    for _, c in ipairs(reply.tool_calls) do\n"
    "      check(c.extra_content == nil or (type(c.extra_content) == 'string' and\n"
    "            core.openai_assistant_wire('', { c }) ~= nil), 'extra_content the encoder declines', c)\n"
    "    end\n"
    "    local u = reply.usage\n"
    "    check(math.type(u.reasoning) == 'integer' and u.cache_write == 0, 'usage without its fields', u)\n"
    "  else\n"
    "    check(type(err) == 'table' and type(err.code) == 'string', 'finish failed without an error table', err)\n"
    "  end\n"
    "  s:close()\n"
    "  s:close()\n"
    "  check(raises(s.feed, s, 'data: {}\\n\\n'), 'a closed stream took a chunk')\n"
    "  return { reply = reply, err = err }\n"
    "end\n"
    "local whole = run({ stream })\n"
    "local cut = run(chunks(stream, h[2], h[3]))\n"
    "if whole and cut then\n"
    "  check(same(whole, cut), 'chunking (or a reused parser) changed the result', whole, cut)\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
