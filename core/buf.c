/*
** buf.c -- growable byte buffers, malloc'ed, shared by the parts of the core
** that collect bytes outside Lua (HTTP bodies, SSE lines, tool-call
** arguments, stdin). Growing never raises: callers inside libcurl callbacks
** cannot, and callers in bindings raise themselves after freeing nothing
** (the buffer stays owned and consistent on failure). An encoder that may
** raise half way keeps its buffer in a userdata (tide__buf_push).
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

int tide__buf_reserve(tide_buf *b, size_t n) {
  if (b->cap - b->len <= n) { /* keep room for a terminating NUL */
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->len <= n) {
      if (cap > SIZE_MAX / 2) return -1;
      cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (p == NULL) return -1;
    b->p = p;
    b->cap = cap;
  }
  return 0;
}

int tide__buf_add(tide_buf *b, const char *s, size_t n) {
  if (n == 0) return 0;
  if (tide__buf_reserve(b, n) != 0) return -1;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
  return 0;
}

void tide__buf_keep(tide_buf *b, size_t max) {
  if (b->cap > max) tide__buf_free(b);
  b->len = 0;
}

void tide__buf_free(tide_buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

#define BUF_MT "tide.buf"

static int buf_gc(lua_State *L) {
  tide__buf_free(lua_touserdata(L, 1));
  return 0;
}

tide_buf *tide__buf_push(lua_State *L) {
  tide_buf *b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  if (luaL_newmetatable(L, BUF_MT)) {
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return b;
}
