/*
** base64.c -- core.base64(s): standard base64 (RFC 4648, with padding), for
** images and files sent inline to providers. Megabytes at a time: in C, not
** Lua, so that an image costs one pass and one string.
*/
#include "tide.h"

static const char ALPHABET[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* core.base64(s) -> the base64 text of s */
static int l_base64(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  luaL_argcheck(L, n / 3 < (SIZE_MAX - 4) / 4, 1, "string too long");
  size_t out_len = (n + 2) / 3 * 4;
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, out_len);
  size_t i = 0, k = 0;
  for (; i + 2 < n; i += 3) {
    unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
    out[k++] = ALPHABET[v >> 18];
    out[k++] = ALPHABET[(v >> 12) & 63];
    out[k++] = ALPHABET[(v >> 6) & 63];
    out[k++] = ALPHABET[v & 63];
  }
  if (i < n) {
    unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0);
    out[k++] = ALPHABET[v >> 18];
    out[k++] = ALPHABET[(v >> 12) & 63];
    out[k++] = i + 1 < n ? ALPHABET[(v >> 6) & 63] : '=';
    out[k++] = '=';
  }
  luaL_pushresultsize(&b, k);
  return 1;
}

/// Registers core.base64 into the module table at the top of the stack.
void tide__open_base64(lua_State *L) {
  lua_pushcfunction(L, l_base64);
  lua_setfield(L, -2, "base64");
}
