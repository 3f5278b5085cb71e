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

#endif
