/*
** fuzz_anthropic_stream.c -- core.anthropic_stream(max, framing):
** s:feed(chunk, out, rout), s:finish(), s:close().
**
** Input: four header bytes, then the SSE stream of a Messages reply.
**   [0] the cap (see cap() in harness.c)   [1] the longest chunk (0: one piece)
**   [2] the seed of the cut points
**   [3] how deltas come back: % 3 == 0 in `out` and `rout` tables, 1 text
**       as a string per chunk (reasoning in `rout`), 2 neither (out = false);
**       // 3 % 2 == 1: the stream is framed as an AWS event stream (Claude
**       on Bedrock: core.anthropic_stream(max, "aws")), not SSE; and then
**       // 6 % 2 == 1: every whole frame's two CRCs are made right first,
**       so that mutations reach the headers and payloads behind them
** The stream is parsed once in one piece and once cut into chunks, by two
** streams in turn, so that the second takes the parser the first one left
** behind when it closed (reply_runs in harness.c). The replies (or the
** errors) and the deltas must be the same; the text deltas must add up to
** the reply's text and the reasoning deltas to its thinking; the reasoning
** parts must be what the encoder can send back (a content part: a JSON
** array of blocks, each with a type, holding every call as a tool_use).
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "local h, stream = header(input, 4)\n"
    "local max, mode = cap(h[1]), h[4] % 3\n"
    "local framing = (h[4] // 3) % 2 == 1 and 'aws' or 'sse'\n"
    "if framing == 'aws' and (h[4] // 6) % 2 == 1 then stream = mend_frames(stream, core.crc32) end\n"
    /* What a Messages reply promises beyond the shell's protocol (harness.c). */
    "local function check_reply(reply, _, reasoning)\n"
    "  local thought = {}\n"
    "  for _, r in ipairs(reply.reasoning or {}) do\n"
    "    check(r.provider == 'anthropic', 'a reasoning part of another provider', r)\n"
    "    if r.type == 'content' then\n"
    "      local ok, c = pcall(require('cjson').new().decode, r.data)\n"
    "      check(ok and type(c) == 'table' and #c > 0, 'a content part that is not a JSON array', r.data)\n"
    "      local uses = 0\n"
    "      for _, b in ipairs(c) do\n"
    "        check(type(b) == 'table' and type(b.type) == 'string', 'a content block without a type', b)\n"
    "        if b.type == 'tool_use' then uses = uses + 1 end\n"
    "      end\n"
    "      check(uses == #reply.tool_calls, 'a content part without every call', c, reply.tool_calls)\n"
    "    elseif r.type == 'text' then\n"
    "      check(type(r.text) == 'string' and type(r.signature) == 'string' and r.signature ~= '',\n"
    "            'a thinking part without its signature', r)\n"
    "      thought[#thought + 1] = r.text\n"
    "    else\n"
    "      check(r.type == 'redacted' and type(r.data) == 'string' and r.data ~= '', 'a redacted part without data', r)\n"
    "    end\n"
    "  end\n"
    "  if reasoning then\n"
    "    check(reasoning == table.concat(thought), 'the reasoning deltas do not add up', reasoning, thought)\n"
    "  end\n"
    "  check(reply.reasoning == nil or #reply.reasoning > 0, 'an empty reasoning list', reply.reasoning)\n"
    "  for _, c in ipairs(reply.tool_calls) do\n"
    "    check(type(c.id) == 'string' and c.id ~= '' and type(c.name) == 'string' and type(c.arguments) == 'string',\n"
    "          'a call without its fields', c)\n"
    "  end\n"
    "  local u = reply.usage\n"
    "  check(math.type(u.input) == 'integer' and u.input >= u.cached + u.cache_write and math.type(u.reasoning) == 'integer'\n"
    "        and u.reasoning >= 0,\n"
    "        'usage that does not add up', u)\n"
    "  check(reply.stop == nil or type(reply.stop_raw) == 'string', 'a stop without its raw reason', reply)\n"
    "end\n"
    "reply_runs(function() return core.anthropic_stream(max, framing) end, stream, h[2], h[3], mode, check_reply)\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
