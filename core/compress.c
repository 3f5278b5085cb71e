/*
** compress.c -- gzip (RFC 1952) of a request body, by zlib: what an OTLP
** exporter sends with `Content-Encoding: gzip` when asked
** (OTEL_EXPORTER_OTLP_COMPRESSION), a batch of spans being mostly the same
** attribute names over and over.
*/
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "tide.h"

/* core.gzip(s) -> the gzip member of s (zlib's default level). */
static int l_gzip(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  z_stream z;
  memset(&z, 0, sizeof z);
  /* windowBits 15 + 16: a gzip header and trailer rather than zlib's */
  if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    return luaL_error(L, "tide: gzip could not start");
  uLong bound = deflateBound(&z, (uLong)n);
  unsigned char *out = malloc(bound);
  if (out == NULL) {
    deflateEnd(&z);
    return luaL_error(L, "not enough memory");
  }
  z.next_in = (Bytef *)(uintptr_t)s; /* (zlib's API is not const; it only reads) */
  z.avail_in = (uInt)n;
  z.next_out = out;
  z.avail_out = (uInt)bound;
  int rc = n > UINT32_MAX ? Z_BUF_ERROR : deflate(&z, Z_FINISH);
  size_t len = bound - z.avail_out;
  deflateEnd(&z);
  if (rc != Z_STREAM_END) {
    free(out);
    return luaL_error(L, "tide: gzip failed");
  }
  lua_pushlstring(L, (const char *)out, len);
  free(out);
  return 1;
}

/// Registers core.gzip into the module table at the top of the stack.
void tide__open_compress(lua_State *L) {
  lua_pushcfunction(L, l_gzip);
  lua_setfield(L, -2, "gzip");
}
