/*
** fuzz_aws_eventstream.c -- core.aws_eventstream(max): d:feed(chunk),
** d:pending(), d:close(): the raw AWS event stream decoder under Bedrock's
** Converse stream (its frames go to a sink written in Lua).
**
** Input: four header bytes, then the stream.
**   [0] the cap (see cap() in harness.c)   [1] the longest chunk (0: one piece)
**   [2] the seed of the cut points
**   [3] % 2 == 1: every whole frame's two CRCs are made right first, so that
**       mutations reach the headers and payloads behind them
** The stream is decoded once in one piece and once cut into chunks: the
** frames (type, payload, whether an exception) and the failure must not
** depend on where it was cut; a failed decoder must refuse what follows
** (it raises), and `pending` must count the bytes of an unfinished frame
** only.
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "local h, stream = header(input, 4)\n"
    "local max = cap(h[1])\n"
    "if h[4] % 2 == 1 then stream = mend_frames(stream, core.crc32) end\n"
    /* Feeds the pieces to a new decoder: the frames in order, the failure
    ** (nil when none), the bytes left pending; nil when a call raised. */
    "local function run(pieces)\n"
    "  local ok, d = try(core.aws_eventstream, max)\n"
    "  if not ok then return nil end\n"
    "  local frames, failure = {}, nil\n"
    "  for _, piece in ipairs(pieces) do\n"
    "    if failure then\n"
    "      check(raises(d.feed, d, piece), 'a failed decoder took another chunk')\n"
    "      break\n"
    "    end\n"
    "    local ok2, fs, err = try(d.feed, d, piece)\n"
    "    if not ok2 then return nil end\n"
    "    if fs then\n"
    "      for _, f in ipairs(fs) do\n"
    "        check(type(f.type) == 'string' and type(f.data) == 'string', 'a frame without type or data', f)\n"
    "        check(f.exception == nil or f.exception == true, 'a frame with a strange exception flag', f)\n"
    "        frames[#frames + 1] = f\n"
    "      end\n"
    "    else\n"
    "      check(type(err) == 'table' and err.code == 'MalformedResponse' and type(err.message) == 'string',\n"
    "            'feed failed without a MalformedResponse error', err)\n"
    "      failure = err\n"
    "    end\n"
    "  end\n"
    "  local pending = d:pending()\n"
    "  check(math.type(pending) == 'integer' and pending >= 0 and pending <= #stream,\n"
    "        'pending is not a count of bytes held', pending)\n"
    "  d:close()\n"
    "  d:close()\n"
    "  check(raises(d.feed, d, ''), 'a closed decoder took a chunk')\n"
    "  return { frames = frames, failure = failure, pending = failure == nil and pending or nil }\n"
    "end\n"
    "local whole = run({ stream })\n"
    "local cut = run(chunks(stream, h[2], h[3]))\n"
    "if whole and cut then\n"
    "  check((whole.failure == nil) == (cut.failure == nil), 'chunking changed whether the stream failed',\n"
    "        whole.failure, cut.failure)\n"
    "  if whole.failure then\n"
    "    check(same(whole.failure, cut.failure), 'chunking changed the error', whole.failure, cut.failure)\n"
    /* (a chunk that fails gives none of its frames: each run holds the
    ** frames of the stream up to some point, so one prefixes the other) */
    "    local a, b = whole.frames, cut.frames\n"
    "    if #a > #b then a, b = b, a end\n"
    "    for i = 1, #a do\n"
    "      check(same(a[i], b[i]), 'chunking changed a frame before the failure', i)\n"
    "    end\n"
    "  else\n"
    "    check(same(whole, cut), 'chunking changed the frames', whole, cut)\n"
    "  end\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
