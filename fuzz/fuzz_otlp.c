/*
** fuzz_otlp.c -- core.otlp_spans(spans) and core.otlp_attributes(field,
** attrs), as lua/tide/tracing.lua calls them, with the bytes a span can
** carry from outside: tool names, error messages, captured arguments and
** results, any bytes at all.
**
** Input: pieces separated by NUL bytes: the span's name, its error, then
** key and value pairs for its attributes and an event's (values become
** strings, integers, floats, booleans and lists by their first byte).
** The output is walked as OTLP's messages (trace/v1 Span, common/v1
** KeyValue and AnyValue): every length must fit, every string field must
** be valid UTF-8, and a string that was valid UTF-8 (and short) must come
** back as it was.
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "local pieces = {}\n"
    "for p in (input .. '\\0'):gmatch('([^%z]*)%z') do pieces[#pieces + 1] = p end\n"
    "local function value(p)\n"
    "  local c = p:sub(1, 1)\n"
    "  if c == 'i' then return #p * (#p % 2 == 0 and 1 or -1) * 1103515245 end\n"
    "  if c == 'f' then return #p / 7 end\n"
    "  if c == 'b' then return #p % 2 == 0 end\n"
    "  if c == 'l' then return { p:sub(2), #p, { p } } end\n"
    "  return p\n"
    "end\n"
    "local attrs, ev = {}, {}\n"
    "for i = 3, #pieces - 1, 2 do\n"
    "  local t = (i // 2) % 2 == 0 and attrs or ev\n"
    "  t[pieces[i]] = value(pieces[i + 1])\n"
    "end\n"
    "local span = { trace_id = ('ab'):rep(16), span_id = ('cd'):rep(8), parent_id = pieces[5],\n"
    "  name = pieces[1] or '', kind = 1, start_ns = 1, end_ns = #input, attributes = attrs,\n"
    "  events = { { name = pieces[2] or '', time_ns = 2, attributes = ev }, { name = 'e' } },\n"
    "  error = pieces[2] }\n"
    /* A protobuf reader of just the messages written. */
    "local function varint(s, i)\n"
    "  local v, shift = 0, 0\n"
    "  while true do\n"
    "    check(i <= #s, 'varint runs past the end')\n"
    "    local b = s:byte(i)\n"
    "    v = v | ((b & 0x7f) << shift)\n"
    "    i, shift = i + 1, shift + 7\n"
    "    if b < 0x80 then return v, i end\n"
    "    check(shift < 70, 'varint too long')\n"
    "  end\n"
    "end\n"
    "local MSG = {\n"
    "  top = { [2] = 'span' },\n"
    "  span = { [1] = 'bytes', [2] = 'bytes', [4] = 'bytes', [5] = 'string', [6] = 'varint', [7] = 'fixed64',\n"
    "           [8] = 'fixed64', [9] = 'kv', [11] = 'event', [15] = 'status' },\n"
    "  kv = { [1] = 'string', [2] = 'any' },\n"
    "  any = { [1] = 'string', [2] = 'varint', [3] = 'varint', [4] = 'fixed64', [5] = 'array' },\n"
    "  array = { [1] = 'any' },\n"
    "  event = { [1] = 'fixed64', [2] = 'string', [3] = 'kv' },\n"
    "  status = { [2] = 'string', [3] = 'varint' },\n"
    "}\n"
    "local strings = {}\n"
    "local function walk(kind, s)\n"
    "  local i = 1\n"
    "  while i <= #s do\n"
    "    local key\n"
    "    key, i = varint(s, i)\n"
    "    local field, wt = key >> 3, key & 7\n"
    "    local t = MSG[kind][field]\n"
    "    check(t ~= nil, 'unknown field', kind, field)\n"
    "    if wt == 0 then check(t == 'varint', 'varint for', t); local _; _, i = varint(s, i)\n"
    "    elseif wt == 1 then check(t == 'fixed64', 'fixed64 for', t); i = i + 8; check(i <= #s + 1, 'fixed64 cut')\n"
    "    else\n"
    "      check(wt == 2, 'wire type', wt)\n"
    "      local n\n"
    "      n, i = varint(s, i)\n"
    "      check(i + n <= #s + 1, 'length past the end')\n"
    "      local body = s:sub(i, i + n - 1)\n"
    "      i = i + n\n"
    "      if t == 'string' then\n"
    "        check(utf8.len(body) ~= nil, 'a string field is not UTF-8', body)\n"
    "        check(#body <= 65536, 'a string field past 64 KiB', #body)\n"
    "        strings[body] = true\n"
    "      elseif MSG[t] then walk(t, body)\n"
    "      else check(t == 'bytes', 'bytes for', t) end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local ok, out = try(core.otlp_spans, { span, span })\n"
    "check(ok, 'otlp_spans raised', out)\n"
    "walk('top', out)\n"
    "local expect = { span.name, span.error }\n"
    "for _, t in ipairs { attrs, ev } do\n"
    "  for k, v in pairs(t) do\n"
    "    expect[#expect + 1] = k\n"
    "    if type(v) == 'string' then expect[#expect + 1] = v end\n"
    "    if type(v) == 'table' then expect[#expect + 1] = v[1]; expect[#expect + 1] = v[3][1] end\n"
    "  end\n"
    "end\n"
    "for _, p in pairs(expect) do\n"
    "  if utf8.len(p) and #p <= 65536 then check(strings[p], 'a valid string did not come back as it was', p) end\n"
    "end\n"
    "local ok2, res = try(core.otlp_attributes, 1, attrs)\n"
    "check(ok2, 'otlp_attributes raised', res)\n"
    "local i = 1\n"
    "while i <= #res do\n"
    "  local key, n\n"
    "  key, i = varint(res, i)\n"
    "  check(key == (1 << 3 | 2), 'resource attribute key', key)\n"
    "  n, i = varint(res, i)\n"
    "  walk('kv', res:sub(i, i + n - 1))\n"
    "  i = i + n\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
