/*
** fuzz_responses_stream.c -- the OpenAI Responses stream (provider
** openai{ api = "responses" }'s Lua stream, fed SSE events by
** core.sse_parser, as the
** exchange feeds it).
**
** Input: three header bytes, then the stream.
**   [0] the cap (see cap() in harness.c)   [1] the longest chunk (0: one piece)
**   [2] the seed of the cut points
** Malformed input must come back as an error, never raise; the reply (or
** the error) must not depend on where the stream was cut.
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "local h, stream = header(input, 3)\n"
    "local max = cap(h[1])\n"
    "local provider = require('tide.provider').openai { api = 'responses', api_key = 'k', model = 'm',\n"
    "  base_url = 'http://127.0.0.1:9' }\n"
    "local function run(pieces)\n"
    "  local text, reasoning = {}, {}\n"
    "  local st = provider:_stream(function(t) text[#text + 1] = t end,\n"
    "    function(t) reasoning[#reasoning + 1] = t end)\n"
    "  local ok, sse = try(core.sse_parser, max)\n"
    "  if not ok then return nil end\n"
    "  for _, piece in ipairs(pieces) do\n"
    "    local okf, events = try(sse.feed, sse, piece)\n"
    "    if not okf then bug('sse feed raised', events) end\n"
    "    if not events then sse:close(); return { failed = 'sse' } end\n"
    "    for _, ev in ipairs(events) do\n"
    "      local oke, err = try(st.event, st, ev)\n"
    "      if not oke then bug('the anthropic stream raised on an event', err) end\n"
    "      if err then\n"
    "        check(type(err) == 'table' and type(err.code) == 'string', 'an error without a code', err)\n"
    "        sse:close()\n"
    "        return { err = err.code }\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  sse:close()\n"
    "  local okn, out, err = try(st.finish, st)\n"
    "  if not okn then bug('finish raised', out) end\n"
    "  if not out then\n"
    "    check(type(err) == 'table' and type(err.code) == 'string', 'finish failed without a code', err)\n"
    "    return { err = err.code }\n"
    "  end\n"
    "  check(type(out.tool_calls) == 'table', 'a reply without tool_calls', out)\n"
    "  return { text = table.concat(text), reasoning = table.concat(reasoning), stop = out.stop }\n"
    "end\n"
    "local whole = run({ stream })\n"
    "local cut = run(chunks(stream, h[2], h[3]))\n"
    "if whole and cut and not whole.failed and not cut.failed then\n"
    "  check(same(whole, cut), 'chunking changed the reply', whole, cut)\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
