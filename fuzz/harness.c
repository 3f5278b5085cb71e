/*
** harness.c -- one fresh Lua state per fuzz input, tide.core opened in it,
** the target's Lua driver run on the input, the state closed.
**
** A fresh state per input keeps inputs independent (a crash reproduces from
** its one input) and makes LeakSanitizer check, after every input, that
** closing the state frees everything the core allocated. Opening tide.core
** creates the libuv loop; the loop is never run by the parsers, and closing
** the state runs the module's context finalizer, which closes the loop.
**
** The state's allocator has a cap, so that a template that renders a huge
** string fails with a memory error instead of exhausting the machine, and so
** that the parsers' "not enough memory" paths get exercised.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "harness.h"

int luaopen_tide_core(lua_State *L);

#define LUA_MEMORY_CAP (64u * 1024 * 1024)

/* Helpers every driver may use, as globals. */
static const char PRELUDE[] =
    "local byte = string.byte\n"
    /* header(input, n) -> the first n bytes as numbers (0 when missing), the rest */
    "function header(input, n)\n"
    "  local h = { byte(input, 1, n) }\n"
    "  for i = #h + 1, n do h[i] = 0 end\n"
    "  return h, input:sub(n + 1)\n"
    "end\n"
    /* cap(b) -> a max_bytes argument chosen by one byte: 0 gives nil (the
    ** default), 255 the largest integer, anything else b * b (1 to 64516) */
    "function cap(b)\n"
    "  if b == 0 then return nil elseif b == 255 then return math.maxinteger end\n"
    "  return b * b\n"
    "end\n"
    /* chunks(s, most, seed) -> s cut into pieces of 0 to `most` bytes, at
    ** points drawn from seed; most == 0 gives s in one piece */
    "function chunks(s, most, seed)\n"
    "  if most == 0 then return { s } end\n"
    "  local out, i, x = {}, 1, seed\n"
    "  while i <= #s do\n"
    "    x = (x * 1103515245 + 12345) & 0x7fffffff\n"
    "    local k = (x >> 16) % (most + 1)\n"
    "    out[#out + 1] = s:sub(i, i + k - 1)\n"
    "    i = i + k\n"
    "  end\n"
    "  return out\n"
    "end\n"
    /* mend_frames(stream, crc32) -> stream with every whole AWS event
    ** stream frame's two CRCs made right, so that mutations reach the
    ** headers and payloads behind them; what follows the last whole frame
    ** stays as it is */
    "function mend_frames(stream, crc32)\n"
    "  local out, at = {}, 1\n"
    "  while at + 11 <= #stream do\n"
    "    local total = string.unpack('>I4', stream, at)\n"
    "    if total < 16 or at + total - 1 > #stream then break end\n"
    "    local f = stream:sub(at, at + total - 1)\n"
    "    f = f:sub(1, 8) .. string.pack('>I4', crc32(f:sub(1, 8))) .. f:sub(13, -5)\n"
    "    out[#out + 1] = f .. string.pack('>I4', crc32(f))\n"
    "    at = at + total\n"
    "  end\n"
    "  return table.concat(out) .. stream:sub(at)\n"
    "end\n"
    /* same(a, b) -> deep equality of acyclic values (metatables ignored) */
    "function same(a, b)\n"
    "  if type(a) ~= 'table' or type(b) ~= 'table' then\n"
    "    return a == b or (a ~= a and b ~= b)\n"
    "  end\n"
    "  for k, v in pairs(a) do if not same(v, b[k]) then return false end end\n"
    "  for k in pairs(b) do if rawget(a, k) == nil then return false end end\n"
    "  return true\n"
    "end\n"
    /* show(v) -> a readable dump of v for a bug report */
    "function show(v, depth)\n"
    "  depth = depth or 0\n"
    "  if type(v) == 'string' then return string.format('%q', v) end\n"
    "  if type(v) ~= 'table' or depth > 4 then return tostring(v) end\n"
    "  local keys = {}\n"
    "  for k in pairs(v) do keys[#keys + 1] = k end\n"
    "  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)\n"
    "  local parts = {}\n"
    "  for _, k in ipairs(keys) do\n"
    "    parts[#parts + 1] = tostring(k) .. ' = ' .. show(v[k], depth + 1)\n"
    "  end\n"
    "  return '{ ' .. table.concat(parts, ', ') .. ' }'\n"
    "end\n"
    /* try(f, ...) -> true, results... | false, error. The API raises on
    ** misuse and when memory runs out, never over bad input: an error that
    ** matches none of the allowed patterns (allow(text)) is a bug. */
    "local allowed = { 'not enough memory' }\n"
    "function allow(text) allowed[#allowed + 1] = text end\n"
    "function try(f, ...)\n"
    "  local r = table.pack(pcall(f, ...))\n"
    "  if not r[1] then\n"
    "    local msg = tostring(r[2])\n"
    "    local known = false\n"
    "    for _, text in ipairs(allowed) do known = known or msg:find(text, 1, true) ~= nil end\n"
    "    if not known then bug('the API raised: ' .. msg) end\n"
    "  end\n"
    "  return table.unpack(r, 1, r.n)\n"
    "end\n"
    /* raises(f, ...) -> whether f raised, for calls that must */
    "function raises(f, ...) return not pcall(f, ...) end\n"
    /* check(ok, what, a, b): a failed property is a bug, reported with both sides */
    "function check(ok, what, a, b)\n"
    "  if not ok then bug(what .. '\\n  first:  ' .. show(a) .. '\\n  second: ' .. show(b)) end\n"
    "end\n"
    /* reply_runs(open, stream, most, seed, mode, check_reply) -> the result
    ** of the stream in one piece, or nil when a call raised. Every C reply
    ** parser has the reply shell's protocol (core/reply.c): the stream
    ** open() makes is fed stream in one piece, then a second one is fed it
    ** in chunks (chunks(stream, most, seed)), taking the parser the first
    ** left behind, and the two results must be the same. Deltas come back as
    ** mode says (% 3 == 0 in `out` and `rout` tables, 1 text as a string
    ** per chunk and reasoning in `rout`, 2 neither: out = false; tool-call
    ** input in `tout` but in mode 2, joined by index); a failure
    ** sticks through finish; a closed stream refuses more. A result is {
    ** reply, err, text, reasoning }, the deltas joined (nil in mode 2);
    ** check_reply(reply, text, reasoning) checks what the wire format
    ** promises of a reply. */
    "local function reply_run(open, pieces, mode, check_reply)\n"
    "  local ok, s = try(open)\n"
    "  if not ok then return nil end\n"
    "  local deltas, rdeltas, tools, failure = {}, {}, {}, nil\n"
    "  for _, piece in ipairs(pieces) do\n"
    "    local out = false\n"
    "    if mode == 0 then out = {} elseif mode == 1 then out = nil end\n"
    "    local rout = mode ~= 2 and {} or nil\n"
    "    local tout = mode ~= 2 and {} or nil\n"
    "    local ok2, a, err, c = try(s.feed, s, piece, out, rout, tout)\n"
    "    if not ok2 then return nil end\n"
    /* a call's input: four values a piece (index, id or false, name or
    ** false, the piece), joined by index */
    "    check(tout == nil or #tout % 4 == 0, 'tool input not in fours', tout)\n"
    "    for i = 1, tout and #tout or 0, 4 do\n"
    "      local idx, id, name, bit = tout[i], tout[i + 1], tout[i + 2], tout[i + 3]\n"
    "      check(math.type(idx) == 'integer' and (id == false or type(id) == 'string') and\n"
    "            (name == false or type(name) == 'string') and type(bit) == 'string', 'a tool input piece of the wrong shape',\n"
    "            idx, id, name, bit)\n"
    "      tools[idx] = (tools[idx] or '') .. bit\n"
    "    end\n"
    "    if err ~= nil then\n"
    "      check(type(err) == 'table' and type(err.code) == 'string', 'feed failed without an error table', err)\n"
    "      check(a == nil, 'feed failed with a value', a)\n"
    "      check(failure == nil or failure == err, 'a failed stream changed its error', failure, err)\n"
    "      failure = err\n"
    "    elseif mode == 0 then\n"
    "      check(a == #out, 'feed counted its deltas wrong', a, out)\n"
    "    end\n"
    "    for i = 1, rout and #rout or 0 do rdeltas[#rdeltas + 1] = rout[i] end\n"
    "    if mode == 0 then\n"
    "      for i = 1, #out do deltas[#deltas + 1] = out[i] end\n"
    "    elseif mode == 1 and (a or c) then\n"
    "      deltas[#deltas + 1] = a or c\n"
    "    end\n"
    "  end\n"
    "  local ok3, reply, err = try(s.finish, s)\n"
    "  if not ok3 then return nil end\n"
    "  if failure then check(err == failure, 'finish forgot the failure', failure, err) end\n"
    "  local text, reasoning\n"
    "  if mode ~= 2 then text, reasoning = table.concat(deltas), table.concat(rdeltas) else tools = nil end\n"
    "  if reply then\n"
    "    check(type(reply.text) == 'string' and type(reply.tool_calls) == 'table' and\n"
    "          type(reply.usage) == 'table', 'a reply without its fields', reply)\n"
    "    check(text == nil or text == reply.text, 'the deltas do not add up to the text', deltas, reply.text)\n"
    "    check_reply(reply, text, reasoning)\n"
    "  else\n"
    "    check(type(err) == 'table' and type(err.code) == 'string', 'finish failed without an error table', err)\n"
    "  end\n"
    "  s:close()\n"
    "  s:close()\n"
    "  check(raises(s.feed, s, 'data: {}\\n\\n'), 'a closed stream took a chunk')\n"
    "  return { reply = reply, err = err, text = text, reasoning = reasoning, tools = tools }\n"
    "end\n"
    "function reply_runs(open, stream, most, seed, mode, check_reply)\n"
    "  local whole = reply_run(open, { stream }, mode, check_reply)\n"
    "  local cut = reply_run(open, chunks(stream, most, seed), mode, check_reply)\n"
    "  if whole and cut then\n"
    "    check(same(whole, cut), 'chunking (or a reused parser) changed the result', whole, cut)\n"
    "  end\n"
    "  return whole\n"
    "end\n";

typedef struct budget {
  size_t used;
} budget;

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  budget *b = ud;
  size_t old = ptr ? osize : 0; /* without ptr, osize is a type tag */
  if (nsize == 0) {
    free(ptr);
    b->used -= old;
    return NULL;
  }
  if (nsize > old && nsize - old > LUA_MEMORY_CAP - b->used) return NULL;
  void *p = realloc(ptr, nsize);
  if (p) b->used = b->used - old + nsize;
  return p;
}

/* bug(message): a driver's check failed. Abort, so that libFuzzer saves the
** input and prints the stack. */
static int l_bug(lua_State *L) {
  fprintf(stderr, "tide fuzz: %s\n", luaL_checkstring(L, 1));
  abort();
}

static int traceback(lua_State *L) {
  luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
  return 1;
}

static void load(lua_State *L, const char *src, const char *name) {
  if (luaL_loadbufferx(L, src, strlen(src), name, "t") != LUA_OK) {
    fprintf(stderr, "tide fuzz: %s\n", lua_tostring(L, -1));
    abort();
  }
}

int tide_fuzz_run(const char *driver, const uint8_t *data, size_t size) {
  budget b = {0};
  lua_State *L = lua_newstate(capped_alloc, &b);
  if (L == NULL) abort();
  luaL_openlibs(L);
  lua_pushcfunction(L, l_bug);
  lua_setglobal(L, "bug");
  lua_pushlightuserdata(L, NULL); /* cjson.null, as JSON data carries it */
  lua_setglobal(L, "null");
  lua_pushcfunction(L, traceback);
  int msgh = lua_gettop(L);
  load(L, PRELUDE, "=prelude");
  if (lua_pcall(L, 0, 0, msgh) != LUA_OK) {
    fprintf(stderr, "tide fuzz: %s\n", lua_tostring(L, -1));
    abort();
  }
  load(L, driver, "=driver");
  luaL_requiref(L, "tide.core", luaopen_tide_core, 0);
  lua_pushlstring(L, (const char *)data, size);
  int rc = lua_pcall(L, 2, 0, msgh);
  /* Running out of the capped memory outside a parser call is no bug. */
  if (rc != LUA_OK && rc != LUA_ERRMEM) {
    fprintf(stderr, "tide fuzz: the driver failed: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_close(L);
  if (b.used != 0) {
    fprintf(stderr, "tide fuzz: %zu bytes of Lua memory left after lua_close\n", b.used);
    abort();
  }
  return 0;
}
