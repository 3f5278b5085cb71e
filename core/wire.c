/*
** wire.c -- a session's encoded history (core.wire) and the joining of a
** request body from its prefix and messages (core.join_wire), which the
** HTTP layer does straight into a request's own buffer.
*/
#include <stdlib.h>
#include <string.h>

#include "tide.h"

/* Bodies up to this size are joined on the C stack. */
#define JOIN_STACK 16384

#define WIRE_MT "tide.wire"

/* A session's encoded history (core.wire()): its messages' encodings,
** comma-joined in one growing buffer, as a request body carries them. A
** request then copies them in one piece, however long the history, and an
** encoder in C writes a message straight into it (no Lua string for it). */
struct tide_wire {
  tide_buf joined; /* e1 "," e2 "," ... en (no comma before the first) */
  lua_Integer n;   /* entries (non-empty encodings) */
};

tide_wire *tide__to_wire(lua_State *L, int idx) {
  return tide__testudata(L, idx, WIRE_MT);
}

char *tide__wire_reserve(tide_wire *w, size_t n) {
  size_t sep = w->n > 0;
  if (tide__buf_reserve(&w->joined, sep + n) != 0) return NULL;
  char *out = w->joined.p + w->joined.len;
  if (sep) *out++ = ',';
  return out;
}

void tide__wire_commit(tide_wire *w, size_t n) {
  w->joined.len += (w->n > 0) + n;
  w->n++;
}

size_t tide__wire_size(lua_State *L, size_t plen, int idx, int arg,
                       const char *fname) {
  tide_wire *w = tide__to_wire(L, idx);
  if (w) return plen + 1 + w->joined.len + 2;
  lua_Integer n = luaL_len(L, idx);
  size_t total = plen + 2;
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_rawgeti(L, idx, i) != LUA_TSTRING)
      luaL_error(L, "bad argument #%d to '%s' (entry %d is a %s, not a string)",
                 arg, fname, (int)i, luaL_typename(L, -1));
    total += lua_rawlen(L, -1) + 1;
    lua_pop(L, 1);
  }
  return total;
}

size_t tide__wire_write(lua_State *L, const char *prefix, size_t plen, int idx,
                        size_t total, char *out) {
  memcpy(out, prefix, plen);
  size_t k = plen;
  /* as prefix .. "," .. joined when joined is not empty */
  int after_open = plen > 0 && prefix[plen - 1] == '[';
  tide_wire *w = tide__to_wire(L, idx);
  if (w) {
    if (w->joined.len > 0) {
      if (!after_open) out[k++] = ',';
      memcpy(out + k, w->joined.p, w->joined.len);
      k += w->joined.len;
    }
  } else {
    lua_Integer n = luaL_len(L, idx);
    int sep = (n > 1 || total > plen + 3) && (plen == 0 || !after_open);
    for (lua_Integer i = 1; i <= n; i++) {
      size_t len;
      lua_rawgeti(L, idx, i);
      const char *e = lua_tolstring(L, -1, &len);
      if (sep) out[k++] = ',';
      sep = 1;
      memcpy(out + k, e, len);
      k += len;
      lua_pop(L, 1);
    }
  }
  out[k++] = ']';
  out[k++] = '}';
  return k;
}

/* core.join_wire(prefix, encodings) -> prefix .. table.concat(encodings, ",")
** .. "]}", with a "," after the prefix unless it ends in "[": the request
** body of a session's call (the frozen prefix, then its messages, each
** encoded once). `encodings` is a list of strings or a core.wire(). One Lua
** string per call instead of the two and the growing buffers a join in Lua
** makes. (A provider's own requests skip even that: core.http_post joins
** the same way into the request's C buffer.) */
static int l_join_wire(lua_State *L) {
  size_t plen;
  const char *prefix = luaL_checklstring(L, 1, &plen);
  if (!tide__to_wire(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  size_t total = tide__wire_size(L, plen, 2, 2, "join_wire");
  /* Up to JOIN_STACK bytes on the C stack (then one copy into the string);
  ** larger bodies in a Lua buffer, which frees itself should Lua raise. */
  char stackbuf[JOIN_STACK];
  luaL_Buffer b;
  char *out = total <= sizeof stackbuf ? stackbuf : luaL_buffinitsize(L, &b, total);
  size_t k = tide__wire_write(L, prefix, plen, 2, total, out);
  if (out == stackbuf)
    lua_pushlstring(L, out, k);
  else
    luaL_pushresultsize(&b, k);
  return 1;
}

/* core.wire() -> an empty encoded history. */
static int l_wire(lua_State *L) {
  tide_wire *w = lua_newuserdatauv(L, sizeof *w, 0);
  memset(w, 0, sizeof *w);
  luaL_setmetatable(L, WIRE_MT);
  return 1;
}

/* w:add(encoding): appends one message's encoding ("" adds nothing: a
** message a provider leaves out of its requests). */
static int l_wire_add(lua_State *L) {
  tide_wire *w = tide__checkudata(L, 1, WIRE_MT);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (n == 0) return 0;
  char *out = tide__wire_reserve(w, n);
  if (out == NULL) return luaL_error(L, "not enough memory");
  memcpy(out, s, n);
  tide__wire_commit(w, n);
  return 0;
}

/* w:count() -> the entries added (non-empty encodings). */
static int l_wire_count(lua_State *L) {
  tide_wire *w = tide__checkudata(L, 1, WIRE_MT);
  lua_pushinteger(L, w->n);
  return 1;
}

/* w:bytes() -> the size of the joined entries (what a request carries
** after its prefix), without making the string. */
static int l_wire_bytes(lua_State *L) {
  tide_wire *w = tide__checkudata(L, 1, WIRE_MT);
  lua_pushinteger(L, (lua_Integer)w->joined.len);
  return 1;
}

/* w:joined() -> the entries, comma-joined (what a request body carries
** after its prefix). */
static int l_wire_joined(lua_State *L) {
  tide_wire *w = tide__checkudata(L, 1, WIRE_MT);
  lua_pushlstring(L, w->joined.p ? w->joined.p : "", w->joined.len);
  return 1;
}

static int l_wire_gc(lua_State *L) {
  tide_wire *w = tide__checkudata(L, 1, WIRE_MT);
  tide__buf_free(&w->joined);
  w->n = 0;
  return 0;
}

static int l_wire_tostring(lua_State *L) {
  tide_wire *w = tide__checkudata(L, 1, WIRE_MT);
  lua_pushfstring(L, "tide.wire (%d entries, %d bytes)", (int)w->n, (int)w->joined.len);
  return 1;
}

/// Registers core.wire and core.join_wire into the module table at the top
/// of the stack and (re)creates the "tide.wire" metatable.
void tide__open_wire(lua_State *L) {
  static const luaL_Reg meta[] = {{"__gc", l_wire_gc}, {"__tostring", l_wire_tostring}, {NULL, NULL}};
  static const luaL_Reg methods[] = {{"add", l_wire_add},
                                     {"count", l_wire_count},
                                     {"bytes", l_wire_bytes},
                                     {"joined", l_wire_joined},
                                     {NULL, NULL}};
  static const luaL_Reg fns[] = {{"join_wire", l_join_wire}, {"wire", l_wire}, {NULL, NULL}};
  tide__register_type(L, WIRE_MT, meta, methods);
  luaL_setfuncs(L, fns, 0);
}
