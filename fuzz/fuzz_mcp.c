/*
** fuzz_mcp.c -- what an MCP server sends (tide.integrations.mcp): an HTTP
** answer's messages (JSON or an event stream), a tools/call result's text
** and a tools/list page; and the body read as a 401's WWW-Authenticate
** value (tide.integrations.mcp_oauth's challenge).
**
** Input: two header bytes, then the answer's body.
**   [0] & 1: the body is an event stream (else JSON)
**   [1]:     the size of the pieces the streamed reader is fed (1 + [1])
** Nothing a server sends may raise except the documented refusals of a
** tools/list page ("tools/list ..."); a result's text is always a string;
** the reader that takes an answer as it comes (answer_reader, fed in
** pieces) finds the messages messages_of finds in the whole body, when its
** look at the first byte agrees with the content type.
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "local h, body = header(input, 2)\n"
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
    "end\n"
    "local streamed = {}\n"
    "local function take(m) streamed[#streamed + 1] = m end\n"
    "local r = parse.answer_reader(#body + 16, take)\n"
    "local step = 1 + h[2]\n"
    "for i = 1, #body, step do r.feed(body:sub(i, i + step - 1)) end\n"
    "local rest = r.finish()\n"
    "check(type(rest) == 'string', 'the reader finished without a string', rest)\n"
    "if rest ~= '' then parse.each_message(rest, take) end\n"
    "local first = body:match('^%s*(%S)')\n"
    "local json_look = first == '{' or first == '['\n"
    "if first and json_look == (h[1] & 1 == 0) then\n"
    "  check(same(msgs, streamed), 'the streamed reader found other messages', msgs, streamed)\n"
    "end\n"
    "local c = require('tide.integrations.mcp_oauth').challenge(body)\n"
    "check(type(c) == 'table', 'a challenge that is not a table', c)\n"
    "for k, v in pairs(c) do\n"
    "  check(type(k) == 'string' and type(v) == 'string', 'a challenge parameter that is not a string', k, v)\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
