/*
** fuzz_mcp.c -- what an MCP server sends (tide.integrations.mcp): an HTTP
** answer's messages (JSON or an event stream), a tools/call result's text
** and a tools/list page.
**
** Input: one header byte, then the answer's body.
**   [0] & 1: the body is an event stream (else JSON)
** Nothing a server sends may raise except the documented refusals of a
** tools/list page ("tools/list ..."); a result's text is always a string.
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "local h, body = header(input, 1)\n"
    "local parse = require('tide.integrations.mcp')._parse\n"
    "allow('tools/list')\n"
    "local res = { headers = { ['content-type'] = h[1] & 1 == 1 and 'text/event-stream' or 'application/json' },\n"
    "  body = body }\n"
    "local ok, msgs = try(parse.messages_of, res)\n"
    "if not ok then return end\n"
    "check(type(msgs) == 'table', 'messages_of gave no list', msgs)\n"
    "for _, m in ipairs(msgs) do\n"
    "  if type(m) == 'table' and type(m.result) == 'table' then\n"
    "    local ok2, text = try(parse.result_text, m.result)\n"
    "    if ok2 then check(type(text) == 'string', 'a result text that is not a string', text) end\n"
    "    try(parse.add_tools, { schemas = {} }, {}, m.result.tools)\n"
    "  end\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
