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
