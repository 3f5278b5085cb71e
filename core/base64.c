/*
** base64.c -- core.base64(s): standard base64 (RFC 4648, with padding), for
** images and files sent inline to providers. Megabytes at a time: in C, not
** Lua, so that an image costs one pass and one string. And the decoder the
** AWS event stream's chunks need (eventstream.c), also core.base64_decode
** for cassettes that keep binary replies (testing/cassette.lua).
*/
#include <limits.h>

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

/* The value of a base64 digit, or -1. */
static int digit(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

long tide__base64_decode(const char *s, size_t n, char *out) {
  /* padding, when there is any, completes the last group of four */
  if (n % 4 == 0 && n > 0 && s[n - 1] == '=') n -= (n > 1 && s[n - 2] == '=') ? 2 : 1;
  if (n % 4 == 1) return -1;
  size_t k = 0;
  unsigned v = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    int d = digit((unsigned char)s[i]);
    if (d < 0) return -1;
    v = (v << 6 | (unsigned)d) & 0xFFFFFF;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[k++] = (char)((v >> bits) & 0xFF);
    }
  }
  if (k > (size_t)LONG_MAX) return -1;
  return (long)k;
}

/* core.base64_decode(text) -> the bytes, or nil when text is not standard
** base64 (RFC 4648's alphabet; padding optional) */
static int l_base64_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, n / 4 * 3 + 3);
  long k = tide__base64_decode(s, n, out);
  if (k < 0) {
    luaL_pushresultsize(&b, 0);
    lua_pushnil(L);
    return 1;
  }
  luaL_pushresultsize(&b, (size_t)k);
  return 1;
}

/// Registers core.base64 and core.base64_decode into the module table at
/// the top of the stack.
void tide__open_base64(lua_State *L) {
  lua_pushcfunction(L, l_base64);
  lua_setfield(L, -2, "base64");
  lua_pushcfunction(L, l_base64_decode);
  lua_setfield(L, -2, "base64_decode");
}
