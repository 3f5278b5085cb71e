/*
** fuzz_schema.c -- tide.schema: check, validate, mark_arrays and
** decode_answer on arbitrary JSON schemas and values.
**
** Input: one header byte, then the schema's JSON, a NUL, and the answer
** text (the value's JSON, maybe fenced).
**   [0] unused (room for options)
** A schema that check() accepts must validate any decoded value without
** raising, giving a list of strings; mark_arrays must not raise either; a
** value that validates must still validate once its arrays are marked; the
** yes-or-no lenient check agrees with validate_lenient's list, and
** passes whatever validate passes; and on any table as a schema (a tool's
** parameters or an MCP output schema from another party) the lenient
** check never raises.
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "local _, rest = header(input, 1)\n"
    "local nul = rest:find('\\0', 1, true)\n"
    "if not nul then return end\n"
    "local schema_text, answer = rest:sub(1, nul - 1), rest:sub(nul + 1)\n"
    "local schema = require 'tide.schema'\n"
    "local okd, s = pcall(require('cjson').new().decode, schema_text)\n"
    "if not okd or type(s) ~= 'table' then return end\n"
    /* any table as a tool's parameters or an MCP output schema: the lenient
    ** check never raises, whatever another party put in the schema */
    "local okv, anyvalue = pcall(require('tide.json').decode, answer)\n"
    "if okv then\n"
    "  local okl, got = try(schema.validate_lenient, anyvalue, s)\n"
    "  if not okl then bug('validate_lenient raised on an unchecked schema', got) end\n"
    "end\n"
    "if not pcall(schema.check, s, 'fuzz', 1) then return end\n"
    "local ok1, value, why = try(schema.decode_answer, answer)\n"
    "if not ok1 then bug('decode_answer raised', value) end\n"
    "if value == nil then\n"
    "  check(type(why) == 'string', 'decode_answer failed without a reason', why)\n"
    "  return\n"
    "end\n"
    "local ok2, errs = try(schema.validate, value, s)\n"
    "if not ok2 then bug('validate raised on a checked schema', errs) end\n"
    "check(type(errs) == 'table', 'validate gave no list', errs)\n"
    "for _, e in ipairs(errs) do check(type(e) == 'string', 'a failure that is not a string', e) end\n"
    "local ok3, marked = try(schema.mark_arrays, value, s)\n"
    "if not ok3 then bug('mark_arrays raised', marked) end\n"
    "if #errs == 0 then\n"
    "  check(#schema.validate(marked, s) == 0, 'marking arrays made a valid value invalid', value)\n"
    "end\n"
    /* a tool's arguments: the yes-or-no check and the listing agree */
    "local ok4, valid = try(function() return schema.lenient_checker(s)(value) end)\n"
    "if not ok4 then bug('the arguments check raised', valid) end\n"
    "local ok5, listed = try(schema.validate_lenient, value, s)\n"
    "if not ok5 then bug('validate_lenient raised', listed) end\n"
    "check((valid == true) == (listed == nil), 'the yes-or-no check and the listing disagree', value)\n"
    "if listed then check(#listed > 0, 'invalid arguments listed nothing', value) end\n"
    "if #errs == 0 then check(valid == true, 'lenient arguments check refused a valid value', value) end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
