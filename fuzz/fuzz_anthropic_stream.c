/*
** fuzz_anthropic_stream.c -- core.anthropic_stream(max): s:feed(chunk, out,
** rout), s:finish(), s:close().
**
** Input: four header bytes, then the SSE stream of a Messages reply.
**   [0] the cap (see cap() in harness.c)   [1] the longest chunk (0: one piece)
**   [2] the seed of the cut points
**   [3] how deltas come back: % 3 == 0 text in an `out` table and reasoning
**       in `rout`, 1 text as a string per chunk, 2 neither (out = false)
** The stream is parsed once in one piece and once cut into chunks, by two
** streams in turn, so that the second takes the parser the first one left
** behind when it closed. The replies (or the errors) must be the same; the
** text deltas must add up to the reply's text and the reasoning deltas to
** its thinking; the reasoning parts must be what the encoder can send back.
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "local h, stream = header(input, 4)\n"
    "local max, mode = cap(h[1]), h[4] % 3\n"
    "local function run(pieces)\n"
    "  local ok, s = try(core.anthropic_stream, max)\n"
    "  if not ok then return nil end\n"
    "  local deltas, rdeltas, failure = {}, {}, nil\n"
    "  for _, piece in ipairs(pieces) do\n"
    "    local out = false\n"
    "    if mode == 0 then out = {} elseif mode == 1 then out = nil end\n"
    "    local rout = mode == 0 and rdeltas or nil\n"
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
    "      check(table.concat(deltas) == reply.text, 'the deltas do not add up to the text', deltas, reply.text)\n"
    "    end\n"
    "    local thought = {}\n"
    "    for _, r in ipairs(reply.reasoning or {}) do\n"
    "      check(r.provider == 'anthropic', 'a reasoning part of another provider', r)\n"
    "      if r.type == 'text' then\n"
    "        check(type(r.text) == 'string' and type(r.signature) == 'string' and r.signature ~= '',\n"
    "              'a thinking part without its signature', r)\n"
    "        thought[#thought + 1] = r.text\n"
    "      else\n"
    "        check(r.type == 'redacted' and type(r.data) == 'string' and r.data ~= '', 'a redacted part without data', r)\n"
    "      end\n"
    "    end\n"
    "    if mode == 0 then\n"
    "      check(table.concat(rdeltas) == table.concat(thought), 'the reasoning deltas do not add up', rdeltas, thought)\n"
    "    end\n"
    "    check(reply.reasoning == nil or #reply.reasoning > 0, 'an empty reasoning list', reply.reasoning)\n"
    "    for _, c in ipairs(reply.tool_calls) do\n"
    "      check(type(c.id) == 'string' and c.id ~= '' and type(c.name) == 'string' and type(c.arguments) == 'string',\n"
    "            'a call without its fields', c)\n"
    "    end\n"
    "    local u = reply.usage\n"
    "    check(math.type(u.input) == 'integer' and u.input >= u.cached + u.cache_write and u.reasoning == 0,\n"
    "          'usage that does not add up', u)\n"
    "    check(reply.stop == nil or type(reply.stop_raw) == 'string', 'a stop without its raw reason', reply)\n"
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
