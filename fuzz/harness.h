/*
** harness.h -- what every fuzz target shares.
**
** A target is a Lua driver (a chunk of source) that receives tide.core and
** the fuzz input and feeds the input through the module's Lua API, exactly as
** the Lua layer calls it. The targets never call tide__ functions: the C files
** behind the API may be split and renamed without touching them.
*/
#ifndef TIDE_FUZZ_HARNESS_H
#define TIDE_FUZZ_HARNESS_H

#include <stddef.h>
#include <stdint.h>

/// Runs `driver` on one input in a fresh Lua state with tide.core opened,
/// then closes the state. A Lua error raised by a parser is not a bug (the
/// driver catches it); a failed check in the driver (`bug(msg)`), an error
/// escaping the driver, a crash or a sanitizer report is. Returns 0, as
/// LLVMFuzzerTestOneInput must.
int tide_fuzz_run(const char *driver, const uint8_t *data, size_t size);

/// The driver of a provider's Lua stream (its `_stream(emit, on_reasoning)`),
/// fed SSE events by core.sse_parser as the exchange feeds it, whole and cut
/// at fuzzer-chosen points: malformed input must come back as an error,
/// never raise, and the reply (or the error) must not depend on the cuts.
/// PROVIDER is a Lua expression that makes the provider. Input: three
/// header bytes ([0] the cap, [1] the longest chunk, [2] the cut seed),
/// then the stream.
#define TIDE_FUZZ_LUA_STREAM_DRIVER(PROVIDER) \
    "local core, input = ...\n" \
    "local h, stream = header(input, 3)\n" \
    "local max = cap(h[1])\n" \
    "local provider = " PROVIDER "\n" \
    "local function run(pieces)\n" \
    "  local text, reasoning = {}, {}\n" \
    "  local st = provider:_stream(function(t) text[#text + 1] = t end,\n" \
    "    function(t) reasoning[#reasoning + 1] = t end)\n" \
    "  local ok, sse = try(core.sse_parser, max)\n" \
    "  if not ok then return nil end\n" \
    "  for _, piece in ipairs(pieces) do\n" \
    "    local okf, events = try(sse.feed, sse, piece)\n" \
    "    if not okf then bug('sse feed raised', events) end\n" \
    "    if not events then sse:close(); return { failed = 'sse' } end\n" \
    "    for _, ev in ipairs(events) do\n" \
    "      local oke, err = try(st.event, st, ev)\n" \
    "      if not oke then bug('the stream raised on an event', err) end\n" \
    "      if err then\n" \
    "        check(type(err) == 'table' and type(err.code) == 'string', 'an error without a code', err)\n" \
    "        sse:close()\n" \
    "        return { err = err.code }\n" \
    "      end\n" \
    "    end\n" \
    "  end\n" \
    "  sse:close()\n" \
    "  local okn, out, err = try(st.finish, st)\n" \
    "  if not okn then bug('finish raised', out) end\n" \
    "  if not out then\n" \
    "    check(type(err) == 'table' and type(err.code) == 'string', 'finish failed without a code', err)\n" \
    "    return { err = err.code }\n" \
    "  end\n" \
    "  check(type(out.tool_calls) == 'table', 'a reply without tool_calls', out)\n" \
    "  return { text = table.concat(text), reasoning = table.concat(reasoning), stop = out.stop }\n" \
    "end\n" \
    "local whole = run({ stream })\n" \
    "local cut = run(chunks(stream, h[2], h[3]))\n" \
    "if whole and cut and not whole.failed and not cut.failed then\n" \
    "  check(same(whole, cut), 'chunking changed the reply', whole, cut)\n" \
    "end\n"

#endif
