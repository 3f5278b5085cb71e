/*
** json.h -- the JSON scanner and quoting shared by tide's C parsers and
** encoders (json.c). Internal to tide.core.
*/
#ifndef TIDE_JSON_H
#define TIDE_JSON_H

#include <string.h>

#include "tide.h"

/* Kinds of JSON values, from their first byte. */
enum { V_NONE, V_NULL, V_BOOL, V_NUMBER, V_STRING, V_OBJECT, V_ARRAY };

/* Scanner results. */
#define J_OK 0
#define J_SYNTAX (-1)
#define J_NOMEM (-2)

/* A byte range: in the scratch buffer for decoded strings, in the document
** for raw JSON text. */
typedef struct span {
  size_t off, len;
} span;

/* A scan of one document s[0..n) (followed by a NUL, so that strtod stops in
** bounds). */
typedef struct tide_json {
  const char *s;
  size_t n, i;
  int depth;
  const char *err;  /* what was wrong, for the caller's error message */
  size_t err_at;
  tide_buf *scratch; /* decoded strings (tide__json_scratch) */
  tide_buf *key;     /* an object key that had escapes */
  void *ud;          /* the caller's, for its member and element callbacks */
} tide_json;

typedef int (*tide_json_member_fn)(tide_json *p, const char *key, size_t klen);
typedef int (*tide_json_element_fn)(tide_json *p, size_t index);

/* Records the first syntax error (what, at p->i); returns J_SYNTAX. */
int tide__json_syntax(tide_json *p, const char *what);
void tide__json_skip_ws(tide_json *p);
/* The byte at p->i, or -1 at the end. */
int tide__json_peek(const tide_json *p);
/* The V_ kind of a value that starts with byte c. */
int tide__json_kind(int c);
/* Scans the string at p->i: decoded into out (at *dec) when out is given,
** its raw bytes in *raw, *escaped whether it had a backslash. */
int tide__json_string(tide_json *p, tide_buf *out, span *dec, span *raw, int *escaped);
/* Skips the string at p->i, its raw bytes in *raw. */
int tide__json_pass_string(tide_json *p, span *raw, int *escaped);
/* Validates and skips any value, without recursion. */
int tide__json_skip(tide_json *p);
/* Skips the value at p->i, its raw text in *raw. */
int tide__json_skip_raw(tide_json *p, span *raw);
/* Decodes the string at p->i into p->scratch. */
int tide__json_scratch(tide_json *p, span *dec);
/* Whether the key k[0..kl) is name. Inline: the scanners compare every key
** of a reply with a few literals, whose lengths the compiler then knows. */
static inline int tide__json_key_is(const char *k, size_t kl, const char *name) {
  size_t n = strlen(name);
  return kl == n && memcmp(k, name, n) == 0;
}
/* Calls fn for each member of the object at p->i, positioned at its value;
** fn consumes the value. */
int tide__json_each_member(tide_json *p, tide_json_member_fn fn);
/* Calls fn for each element of the array at p->i. */
int tide__json_each_element(tide_json *p, tide_json_element_fn fn);
/* Scans a whole document (one event's data, or a whole reply): fn for each
** member when it is an object, else the value is validated and skipped;
** nothing may follow it. J_OK, J_NOMEM, or J_SYNTAX with p->err set;
** *kind is the document's V_ kind. */
int tide__json_scan_root(tide_json *p, tide_json_member_fn fn, int *kind);
/* Whether a value of this V_ kind decodes to a table (the Lua parsers took
** an array for an object without fields). */
static inline int tide__json_is_table(int kind) { return kind == V_OBJECT || kind == V_ARRAY; }
/* A plain non-negative integer at p->i (digits only), in *v. */
int tide__json_digits(const tide_json *p, lua_Integer *v);
/* The number at p->i as math.tointeger gives it for the decoded value: 1
** with *v when it is integral and fits, else 0. p->i does not move. */
int tide__json_tointeger(const tide_json *p, lua_Integer *v);
/* A token count at p->i as provider._count gives it (0 when not a count). */
lua_Integer tide__json_count(tide_json *p);

/* Appends the value at p->i to out as tide.json.canonical writes what
** json.decode gives for it: object keys sorted (of equal keys the last),
** integral numbers below 2^53 as integers, other numbers the shorter of
** %.14g and %.17g that reads back, strings quoted as lua-cjson quotes them;
** 200 levels deep at most, as the decoder. One difference, on purpose: an
** empty array stays [] (decoded, it would be an empty table, written {}).
** Returns J_OK, J_SYNTAX (p->err set) or J_NOMEM; out is unchanged then. */
int tide__json_canonical(tide_json *p, tide_buf *out);

/* The size of s quoted as lua-cjson quotes it, and writing it at out. */
size_t tide__json_quoted_size(const unsigned char *s, size_t n);
size_t tide__json_write_quoted(char *out, const unsigned char *s, size_t n);

/* Whether s[0..n) is one JSON object, white space around it allowed (s is
** followed by a NUL or another byte that ends a number). */
int tide__json_is_object(const char *s, size_t n);

/* Writing a message whose size was summed first (the encoders of the two
** messages a tool loop repeats): bytes go to out at *k. */
#define TIDE_LIT(s) (sizeof(s) - 1)
static inline void tide__json_put(char *out, size_t *k, const char *s, size_t n) {
  memcpy(out + *k, s, n);
  *k += n;
}
static inline void tide__json_put_quoted(char *out, size_t *k, const char *s, size_t n) {
  *k += tide__json_write_quoted(out + *k, (const unsigned char *)s, n);
}
static inline size_t tide__json_size_quoted(const char *s, size_t n) {
  return tide__json_quoted_size((const unsigned char *)s, n);
}

#endif
