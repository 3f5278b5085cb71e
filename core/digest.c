/*
** digest.c -- the hashes and signatures cloud credentials ask for: SHA-256
** and HMAC-SHA-256 for AWS Signature Version 4 (provider/aws.lua signs
** Bedrock requests with them), CRC-32 for the frames of AWS event streams
** (eventstream.c checks them, the mock makes them), RSA-SHA-256 for the
** JWT a Google service account trades for an access token
** (provider/google.lua), ECDSA P-256 for the DPoP proofs that renew an
** `aws login` session, SHA-1 for the names of the AWS CLI's SSO token
** cache files (provider/aws.lua), and the random bytes of ids. OpenSSL's
** libcrypto and zlib compute them: well-kept implementations, not
** hand-written ones.
*/
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <zlib.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

static int digest(lua_State *L, const EVP_MD *md_type, const char *name) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(s, n, md, &len, md_type, NULL) != 1) return luaL_error(L, "tide: %s failed", name);
  lua_pushlstring(L, (const char *)md, len);
  return 1;
}

/* core.sha256(s) -> the 32 bytes of SHA-256(s) */
static int l_sha256(lua_State *L) { return digest(L, EVP_sha256(), "SHA-256"); }

/* core.sha1(s) -> the 20 bytes of SHA-1(s) (a file name, not a signature) */
static int l_sha1(lua_State *L) { return digest(L, EVP_sha1(), "SHA-1"); }

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

/* The passphrase of an encrypted key: the caller's, or none. Never
** OpenSSL's default, which would ask on the terminal and wait. */
static int passphrase_cb(char *buf, int size, int rwflag, void *u) {
  (void)rwflag;
  const char *pass = u;
  if (pass == NULL) return -1;
  size_t n = strlen(pass);
  if (n > (size_t)size) return -1;
  memcpy(buf, pass, n);
  return (int)n;
}

/* core.rsa_sha256_sign(pem, s [, passphrase]) -> the RSASSA-PKCS1-v1_5
** SHA-256 signature of s with the PEM private key (JWT's RS256), or nil
** and why (an encrypted key without its passphrase among the reasons) */
static int l_rsa_sha256_sign(lua_State *L) {
  size_t kn, n;
  const char *pem = luaL_checklstring(L, 1, &kn);
  const char *s = luaL_checklstring(L, 2, &n);
  const char *pass = luaL_optstring(L, 3, NULL);
  luaL_argcheck(L, kn <= INT_MAX, 1, "key too long");
  BIO *bio = BIO_new_mem_buf(pem, (int)kn);
  /* (the first private key of the text: a certificate beside it is skipped) */
  EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, passphrase_cb, (void *)pass) : NULL;
  BIO_free(bio);
  if (key == NULL || EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA) {
    EVP_PKEY_free(key);
    lua_pushnil(L);
    lua_pushliteral(L, "not a PEM RSA private key, or an encrypted one without its passphrase");
    return 2;
  }
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  size_t len = (size_t)EVP_PKEY_get_size(key);
  unsigned char *sig = md ? malloc(len) : NULL;
  int ok = sig && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
           EVP_DigestSign(md, sig, &len, (const unsigned char *)s, n) == 1;
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(key);
  if (!ok) {
    free(sig);
    return luaL_error(L, "tide: RSA-SHA-256 signing failed");
  }
  lua_pushlstring(L, (const char *)sig, len);
  free(sig);
  return 1;
}

/* core.random_bytes(n) -> n bytes from OpenSSL's generator (seeded by the
** kernel): ids no other process or run can repeat, a DPoP proof's jti, a
** span's. */
static int l_random_bytes(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0 && n <= 4096, 1, "from 0 to 4096 bytes");
  unsigned char buf[4096];
  if (n > 0 && RAND_bytes(buf, (int)n) != 1) return luaL_error(L, "tide: no random bytes");
  lua_pushlstring(L, (const char *)buf, (size_t)n);
  return 1;
}

/* Random bytes for ids, taken a few at a time from a pool that OpenSSL's
** generator fills (one call for many span ids: each call costs about as
** much as a span). One pool per thread; a forked child empties its copy,
** which its parent goes on drawing from. */
static _Thread_local struct {
  unsigned char b[256];
  size_t left;
} pool;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void pool_forget(void) {
  OPENSSL_cleanse(pool.b, sizeof pool.b);
  pool.left = 0;
}

/* (glibc drops the handler when this module is unloaded) */
static void pool_at_fork(void) { pthread_atfork(NULL, NULL, pool_forget); }

/* core.random_hex(n) -> 2n lowercase hex digits of n random bytes, never
** all zeros (1 to 32 bytes): trace and span ids (W3C Trace Context). */
static int l_random_hex(lua_State *L) {
  static const char digits[] = "0123456789abcdef";
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 32, 1, "from 1 to 32 bytes");
  if (pool.left < (size_t)n) {
    if (RAND_bytes(pool.b, (int)sizeof pool.b) != 1) return luaL_error(L, "tide: no random bytes");
    pool.left = sizeof pool.b;
  }
  const unsigned char *r = pool.b + pool.left - (size_t)n;
  char out[64];
  int zero = 1;
  for (lua_Integer i = 0; i < n; i++) {
    out[2 * i] = digits[r[i] >> 4];
    out[2 * i + 1] = digits[r[i] & 15];
    zero = zero && r[i] == 0;
  }
  if (zero) out[2 * n - 1] = '1';
  OPENSSL_cleanse(pool.b + pool.left - (size_t)n, (size_t)n); /* (used once) */
  pool.left -= (size_t)n;
  lua_pushlstring(L, out, (size_t)(2 * n));
  return 1;
}

/* The 32 bytes of a P-256 number, big-endian, into out; 0 on failure. */
static int p256_bytes(const BIGNUM *n, unsigned char *out) { return n != NULL && BN_bn2binpad(n, out, 32) == 32; }

/* core.es256_sign(pem, s) -> the ECDSA P-256 SHA-256 signature of s with
** the PEM private key as JWS's ES256 wants it (r and s, 32 bytes each),
** and the key's public point (x and y, 32 bytes each, a JWK's); or nil
** and why. For the DPoP proofs of AWS Sign-In's `aws login` sessions
** (provider/aws_credentials.lua). An encrypted key is refused, never
** asked about on the terminal. */
static int l_es256_sign(lua_State *L) {
  size_t kn, n;
  const char *pem = luaL_checklstring(L, 1, &kn);
  const char *s = luaL_checklstring(L, 2, &n);
  luaL_argcheck(L, kn <= INT_MAX, 1, "key too long");
  BIO *bio = BIO_new_mem_buf(pem, (int)kn);
  EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, passphrase_cb, NULL) : NULL;
  BIO_free(bio);
  char group[64] = {0};
  if (key == NULL || EVP_PKEY_get_base_id(key) != EVP_PKEY_EC ||
      EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, NULL) != 1 ||
      strcmp(group, "prime256v1") != 0) {
    EVP_PKEY_free(key);
    lua_pushnil(L);
    lua_pushliteral(L, "not a PEM P-256 EC private key");
    return 2;
  }
  unsigned char out[128]; /* r, s, x, y */
  BIGNUM *x = NULL, *y = NULL;
  int ok = EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, &x) == 1 &&
           EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, &y) == 1 && p256_bytes(x, out + 64) &&
           p256_bytes(y, out + 96);
  BN_free(x);
  BN_free(y);
  if (!ok) {
    EVP_PKEY_free(key);
    lua_pushnil(L);
    lua_pushliteral(L, "the EC private key holds no public point");
    return 2;
  }
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  unsigned char der[128];
  size_t len = sizeof der;
  ok = md != NULL && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
       EVP_DigestSign(md, der, &len, (const unsigned char *)s, n) == 1;
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(key);
  const unsigned char *dp = der;
  ECDSA_SIG *sig = ok ? d2i_ECDSA_SIG(NULL, &dp, (long)len) : NULL;
  ok = sig != NULL && p256_bytes(ECDSA_SIG_get0_r(sig), out) && p256_bytes(ECDSA_SIG_get0_s(sig), out + 32);
  ECDSA_SIG_free(sig);
  if (!ok) return luaL_error(L, "tide: ES256 signing failed");
  lua_pushlstring(L, (const char *)out, 64);
  lua_pushlstring(L, (const char *)out + 64, 32);
  lua_pushlstring(L, (const char *)out + 96, 32);
  return 3;
}

/// Registers core.sha256, core.sha1, core.hmac_sha256, core.crc32,
/// core.rsa_sha256_sign, core.es256_sign and core.random_bytes into the
/// module table at the top of the stack.
void tide__open_digest(lua_State *L) {
  static const luaL_Reg fns[] = {{"sha256", l_sha256},
                                 {"sha1", l_sha1},
                                 {"hmac_sha256", l_hmac_sha256},
                                 {"crc32", l_crc32},
                                 {"rsa_sha256_sign", l_rsa_sha256_sign},
                                 {"es256_sign", l_es256_sign},
                                 {"random_bytes", l_random_bytes},
                                 {"random_hex", l_random_hex},
                                 {NULL, NULL}};
  pthread_once(&pool_once, pool_at_fork);
  luaL_setfuncs(L, fns, 0);
}
