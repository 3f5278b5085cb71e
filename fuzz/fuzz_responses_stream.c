/*
** fuzz_responses_stream.c -- the OpenAI Responses stream (provider
** openai{ api = "responses" }'s Lua stream). See TIDE_FUZZ_LUA_STREAM_DRIVER in harness.h.
*/
#include "harness.h"

static const char DRIVER[] = TIDE_FUZZ_LUA_STREAM_DRIVER("require('tide.provider').openai { api = 'responses', api_key = 'k', model = 'm', base_url = 'http://127.0.0.1:9' }");

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
