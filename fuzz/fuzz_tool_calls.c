/*
** fuzz_tool_calls.c -- core.tool_call_assembler(max): a:add(index, id, name,
** fragment), a:result(), a:count(), a:reset(), a:close().
**
** Input: one header byte (the cap, see cap() in harness.c), then operations.
** Each operation is a byte op followed by its operands:
**   op == 255: a:reset()
**   op & 64: the index is 8 bytes (little-endian, signed), else 1 byte
**   op bits 0-1, 2-3, 4-5: id, name, fragment: 0 nil, 1 "", else a string
**       of a length byte and that many bytes
**   op & 128: a:result() and a:count() after the add
** The assembler is checked against a model in Lua of what dispatch.c
** documents: id and name kept when first seen non-empty, fragments of an
** index appended in order, results ordered by index, a failure sticky until
** reset.
*/
#include "harness.h"

static const char DRIVER[] =
    "local core, input = ...\n"
    "local h, ops = header(input, 1)\n"
    "local max = cap(h[1])\n"
    "allow('index must be non-negative')\n"
    "local ok, a = try(core.tool_call_assembler, max)\n"
    "if not ok then return end\n"
    "local slots, failure = {}, nil\n"
    "local function expected()\n"
    "  local keys, out = {}, {}\n"
    "  for k in pairs(slots) do keys[#keys + 1] = k end\n"
    "  table.sort(keys)\n"
    "  for i, k in ipairs(keys) do\n"
    "    local s = slots[k]\n"
    "    out[i] = { index = k, id = s.id, name = s.name, arguments = table.concat(s.args) }\n"
    "  end\n"
    "  return out\n"
    "end\n"
    "local function compare()\n"
    "  local ok2, got, err = try(a.result, a)\n"
    "  if not ok2 then return end\n"
    "  if failure then\n"
    "    check(got == nil and err == failure, 'a failed assembler gave a result', got, err)\n"
    "    return\n"
    "  end\n"
    "  local want = expected()\n"
    "  check(same(got, want), 'the calls are not what the deltas say', got, want)\n"
    "  check(a:count() == #want, 'count() is not the number of calls', a:count(), #want)\n"
    "end\n"
    "local pos = 1\n"
    "local function take(n)\n"
    "  local s = ops:sub(pos, pos + n - 1)\n"
    "  pos = pos + n\n"
    "  return s\n"
    "end\n"
    "local function piece(mode)\n"
    "  if mode == 0 then return nil elseif mode == 1 then return '' end\n"
    "  return take(string.byte(take(1)) or 0)\n"
    "end\n"
    "while pos <= #ops do\n"
    "  local op = string.byte(take(1))\n"
    "  if op == 255 then\n"
    "    a:reset()\n"
    "    slots, failure = {}, nil\n"
    "  else\n"
    "    local index\n"
    "    if op & 64 ~= 0 then\n"
    "      index = string.unpack('<i8', take(8) .. string.rep('\\0', 8))\n"
    "    else\n"
    "      index = string.byte(take(1)) or 0\n"
    "    end\n"
    "    local id, name, frag = piece(op & 3), piece(op >> 2 & 3), piece(op >> 4 & 3)\n"
    "    local ok2, added, err = try(a.add, a, index, id, name, frag)\n"
    "    if not ok2 then\n"
    "      check(index < 0 or tostring(added):find('not enough memory'), 'add raised on a valid delta', added)\n"
    "    elseif added then\n"
    "      check(not failure, 'a failed assembler took a delta', failure)\n"
    "      local s = slots[index] or { args = {} }\n"
    "      slots[index] = s\n"
    "      if id and id ~= '' and not s.id then s.id = id end\n"
    "      if name and name ~= '' and not s.name then s.name = name end\n"
    "      if frag then s.args[#s.args + 1] = frag end\n"
    "    else\n"
    "      check(type(err) == 'table' and err.code == 'StreamTooLarge', 'add failed without StreamTooLarge', err)\n"
    "      check(max ~= nil, 'the default cap was exceeded by a small input', err)\n"
    "      check(not failure or failure == err, 'a failed assembler changed its error', failure, err)\n"
    "      failure = err\n"
    "    end\n"
    "    if op & 128 ~= 0 then compare() end\n"
    "  end\n"
    "end\n"
    "compare()\n"
    "a:close()\n"
    "a:close()\n"
    "check(raises(a.add, a, 0, 'id', 'name', '{}'), 'a closed assembler took a delta')\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return tide_fuzz_run(DRIVER, data, size);
}
