/*
** fuzz_sse.c -- core.sse_parser(max): p:feed(chunk), p:finish(), p:close().
**
** Input: three header bytes, then the stream.
**   [0] the cap (see cap() in harness.c)   [1] the longest chunk (0: one piece)
**   [2] the seed of the cut points
** The stream is fed once in one piece and once cut into chunks; the events,
** the failure and finish() must not depend on where it was cut (sse.c
** promises as much).
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "local h, stream = header(input, 3)\n"
    "local max = cap(h[1])\n"
    /* Feeds the pieces to a new parser: the events in order, the failure
    ** (nil when none), finish()'s verdict; nil when a call raised. */
    "local function run(pieces)\n"
    "  local ok, p = try(core.sse_parser, max)\n"
    "  if not ok then return nil end\n"
    "  local events, failure = {}, nil\n"
    "  for _, piece in ipairs(pieces) do\n"
    "    local ok2, evs, err = try(p.feed, p, piece)\n"
    "    if not ok2 then return nil end\n"
    "    if evs then\n"
    "      check(failure == nil, 'a failed parser gave events', failure, evs)\n"
    "      for _, ev in ipairs(evs) do events[#events + 1] = ev end\n"
    "    else\n"
    "      check(type(err) == 'table' and err.code == 'StreamTooLarge',\n"
    "            'feed failed without a StreamTooLarge error', err)\n"
    "      check(failure == nil or failure == err, 'a failed parser changed its error', failure, err)\n"
    "      failure = err\n"
    "    end\n"
    "  end\n"
    "  local ok3, clean = try(p.finish, p)\n"
    "  if not ok3 then return nil end\n"
    "  check(not (failure and clean), 'a failed stream finished clean', failure)\n"
    "  p:close()\n"
    "  p:close()\n"
    "  check(raises(p.feed, p, 'data: x\\n\\n'), 'a closed parser took a chunk')\n"
    "  return { events = events, failure = failure, clean = clean }\n"
    "end\n"
    "local whole = run({ stream })\n"
    "local cut = run(chunks(stream, h[2], h[3]))\n"
    "if whole and cut then\n"
    "  check((whole.failure == nil) == (cut.failure == nil), 'chunking changed whether the stream failed',\n"
    "        whole.failure, cut.failure)\n"
    "  if whole.failure then\n"
    "    check(same(whole.failure, cut.failure), 'chunking changed the error', whole.failure, cut.failure)\n"
    "  else\n"
    "    check(same(whole, cut), 'chunking changed the events', whole, cut)\n"
    "  end\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
