/*
** digest.c -- the hashes AWS asks for: SHA-256 and HMAC-SHA-256 for
** Signature Version 4 (provider/aws.lua signs Bedrock requests with them),
** CRC-32 for the frames of its event streams (eventstream.c checks them,
** the mock makes them). OpenSSL's libcrypto and zlib compute them: well-kept
** implementations, not hand-written ones.
*/
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <zlib.h>

#include "tide.h"

/* core.sha256(s) -> the 32 bytes of SHA-256(s) */
static int l_sha256(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(s, n, md, &len, EVP_sha256(), NULL) != 1) return luaL_error(L, "tide: SHA-256 failed");
  lua_pushlstring(L, (const char *)md, len);
  return 1;
}

/* core.hmac_sha256(key, s) -> the 32 bytes of HMAC-SHA-256(key, s) */
static int l_hmac_sha256(lua_State *L) {
  size_t kn, n;
  const char *key = luaL_checklstring(L, 1, &kn);
  const char *s = luaL_checklstring(L, 2, &n);
  luaL_argcheck(L, kn <= INT_MAX, 1, "key too long");
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), key, (int)kn, (const unsigned char *)s, n, md, &len) == NULL)
    return luaL_error(L, "tide: HMAC-SHA-256 failed");
  lua_pushlstring(L, (const char *)md, len);
  return 1;
}

uint32_t tide__crc32(uint32_t crc, const void *s, size_t n) {
  const unsigned char *p = s;
  uLong c = crc;
  while (n > 0) { /* zlib takes a uInt length */
    uInt step = n > UINT_MAX ? UINT_MAX : (uInt)n;
    c = crc32(c, p, step);
    p += step;
    n -= step;
  }
  return (uint32_t)c;
}

/* core.crc32(s [, crc]) -> CRC-32 of s (IEEE, as zlib and AWS compute it),
** continuing crc when given */
static int l_crc32(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_Integer init = luaL_optinteger(L, 2, 0);
  luaL_argcheck(L, init >= 0 && init <= 0xFFFFFFFF, 2, "crc must be a 32-bit unsigned value");
  lua_pushinteger(L, (lua_Integer)tide__crc32((uint32_t)init, s, n));
  return 1;
}

/// Registers core.sha256, core.hmac_sha256 and core.crc32 into the module
/// table at the top of the stack.
void tide__open_digest(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"sha256", l_sha256}, {"hmac_sha256", l_hmac_sha256}, {"crc32", l_crc32}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
