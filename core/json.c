/*
** json.c -- JSON primitives shared by the C parsers and encoders: an in-place
** scanner (validate and skip any value without recursion, decode strings,
** walk an object's members or an array's elements through callbacks),
** string quoting exactly as lua-cjson writes it, the walk that gives
** decoded numbers back their integers (core.json_integers), and the
** canonical encoder of Lua values (json.canonical).
**
** The scanner never raises and never builds a Lua value: a caller scans a
** whole document first, then makes what it found into Lua values, so that
** nothing is left inconsistent when a Lua allocation fails. Decoded strings
** go to the caller's scratch buffer and are addressed by spans (offsets),
** which stay valid when the buffer grows.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "tide.h"
#include "json.h"

/* tide.json's decode depth (json.lua sets lua-cjson's to it): a document
** the scanners take is one the Lua decoders take, and the other way round. */
#define JSON_MAX_DEPTH 200

/* ------------------------------------------------------------- scanning -- */

int tide__json_syntax(tide_json *p, const char *what) {
  if (p->err == NULL) {
    p->err = what;
    p->err_at = p->i;
  }
  return J_SYNTAX;
}

void tide__json_skip_ws(tide_json *p) {
  while (p->i < p->n) {
    char c = p->s[p->i];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
    p->i++;
  }
}

int tide__json_peek(const tide_json *p) {
  return p->i < p->n ? (unsigned char)p->s[p->i] : -1;
}

int tide__json_kind(int c) {
  switch (c) {
    case '{': return V_OBJECT;
    case '[': return V_ARRAY;
    case '"': return V_STRING;
    case 'n': return V_NULL;
    case 't': case 'f': return V_BOOL;
    default: return (c == '-' || (c >= '0' && c <= '9')) ? V_NUMBER : V_NONE;
  }
}

static int hex4(const char *s, unsigned *out) {
  unsigned v = 0;
  for (int k = 0; k < 4; k++) {
    char c = s[k];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return -1;
  }
  *out = v;
  return 0;
}

static int add_utf8(tide_buf *b, unsigned cp) {
  char u[4];
  size_t n;
  if (cp < 0x80) {
    u[0] = (char)cp, n = 1;
  } else if (cp < 0x800) {
    u[0] = (char)(0xC0 | (cp >> 6)), u[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
  } else if (cp < 0x10000) {
    u[0] = (char)(0xE0 | (cp >> 12)), u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    u[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
  } else {
    u[0] = (char)(0xF0 | (cp >> 18)), u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), u[3] = (char)(0x80 | (cp & 0x3F));
    n = 4;
  }
  return tide__buf_add(b, u, n);
}

/* Bytes in memory order, lowest first, whatever the machine's order. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define load_le64(w) __builtin_bswap64(w)
#else
#define load_le64(w) (w)
#endif

/* The index of the first '"', '\\' or NUL at or after i (n if none), eight
** bytes at a time. A byte b is one of them when one of b ^ '"', b ^ '\\', b
** is zero; (x - ones) & ~x & highs marks x's zero bytes exactly up to the
** first (only bytes above a zero can be marked falsely), so the lowest mark
** of the three masks is the byte sought. With SSE2, sixteen bytes at a time
** first; the eight-byte steps then only see a string's tail. */
static size_t skip_plain(const char *s, size_t i, size_t n) {
#ifdef __SSE2__
  /* Sixteen bytes at a time where SSE2 is there (every x86-64): one compare
  ** per byte sought, the three masks or'ed, the first set bit is the byte. */
  const __m128i quote = _mm_set1_epi8('"'), slash = _mm_set1_epi8('\\'),
                nul = _mm_setzero_si128();
  while (i + 16 <= n) {
    __m128i w = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
    __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(w, quote), _mm_cmpeq_epi8(w, slash)),
                               _mm_cmpeq_epi8(w, nul));
    unsigned m = (unsigned)_mm_movemask_epi8(hit);
    if (m) return i + (size_t)__builtin_ctz(m);
    i += 16;
  }
#endif
  const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
  const uint64_t quotes = ones * (unsigned char)'"', slashes = ones * (unsigned char)'\\';
  while (i + 8 <= n) {
    uint64_t w, q, b, m;
    memcpy(&w, s + i, 8);
    w = load_le64(w);
    q = w ^ quotes;
    b = w ^ slashes;
    m = (((q - ones) & ~q) | ((b - ones) & ~b) | ((w - ones) & ~w)) & highs;
    if (m) return i + ((size_t)__builtin_ctzll(m) >> 3);
    i += 8;
  }
  while (i < n && s[i] != '"' && s[i] != '\\' && s[i] != '\0') i++;
  return i;
}

/* Scans the string at p->i (its opening quote). With out, appends the
** decoded bytes to it and sets *dec to where they are; *raw always gets the
** bytes between the quotes, *escaped whether any backslash occurred. */
int tide__json_string(tide_json *p, tide_buf *out, span *dec, span *raw,
                       int *escaped) {
  const char *s = p->s;
  size_t i = ++p->i, run = i;
  size_t start = out ? out->len : 0;
  int esc = 0;
  for (;;) {
    i = skip_plain(s, i, p->n);
    if (out && i > run && tide__buf_add(out, s + run, i - run) != 0)
      return J_NOMEM;
    if (i >= p->n || s[i] == '\0') {
      p->i = i;
      return tide__json_syntax(p, "unexpected end of string");
    }
    if (s[i] == '"') break;
    esc = 1;
    if (i + 1 >= p->n) {
      p->i = i;
      return tide__json_syntax(p, "unexpected end of string");
    }
    char c = s[i + 1], one = 0;
    switch (c) {
      case '"': one = '"'; break;
      case '\\': one = '\\'; break;
      case '/': one = '/'; break;
      case 'b': one = '\b'; break;
      case 'f': one = '\f'; break;
      case 'n': one = '\n'; break;
      case 'r': one = '\r'; break;
      case 't': one = '\t'; break;
      case 'u': break;
      default:
        p->i = i;
        return tide__json_syntax(p, "invalid escape code");
    }
    if (c != 'u') {
      if (out && tide__buf_add(out, &one, 1) != 0) return J_NOMEM;
      i += 2;
    } else {
      unsigned cp, lo;
      if (i + 6 > p->n || hex4(s + i + 2, &cp) != 0) {
        p->i = i;
        return tide__json_syntax(p, "invalid unicode escape code");
      }
      i += 6;
      if (cp >= 0xDC00 && cp <= 0xDFFF) {
        p->i = i - 6;
        return tide__json_syntax(p, "invalid unicode escape code");
      }
      if (cp >= 0xD800 && cp <= 0xDBFF) { /* needs a low surrogate */
        if (i + 6 > p->n || s[i] != '\\' || s[i + 1] != 'u' ||
            hex4(s + i + 2, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF) {
          p->i = i - 6;
          return tide__json_syntax(p, "invalid unicode escape code");
        }
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        i += 6;
      }
      if (out && add_utf8(out, cp) != 0) return J_NOMEM;
    }
    run = i;
  }
  raw->off = p->i;
  raw->len = i - p->i;
  if (dec) {
    dec->off = start;
    dec->len = out ? out->len - start : 0;
  }
  if (escaped) *escaped = esc;
  p->i = i + 1;
  return J_OK;
}

/* Skips the string at p->i (its opening quote) and sets *raw to the bytes
** between the quotes: the common case, a string without escapes, in one
** skip_plain; anything else goes to tide__json_string, which validates escapes.
** *escaped (if given) says whether there was a backslash. */
int tide__json_pass_string(tide_json *p, span *raw, int *escaped) {
  size_t i = skip_plain(p->s, p->i + 1, p->n);
  if (i < p->n && p->s[i] == '"') {
    raw->off = p->i + 1;
    raw->len = i - raw->off;
    if (escaped) *escaped = 0;
    p->i = i + 1;
    return J_OK;
  }
  return tide__json_string(p, NULL, NULL, raw, escaped);
}

static int scan_number(tide_json *p) {
  const char *s = p->s;
  size_t i = p->i;
#define DIGIT(k) ((k) < p->n && s[k] >= '0' && s[k] <= '9')
  if (i < p->n && s[i] == '-') i++;
  if (i < p->n && s[i] == '0') {
    i++;
  } else if (DIGIT(i)) {
    while (DIGIT(i)) i++;
  } else {
    return tide__json_syntax(p, "invalid number");
  }
  if (i < p->n && s[i] == '.') {
    i++;
    if (!DIGIT(i)) return p->i = i, tide__json_syntax(p, "invalid number");
    while (DIGIT(i)) i++;
  }
  if (i < p->n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < p->n && (s[i] == '+' || s[i] == '-')) i++;
    if (!DIGIT(i)) return p->i = i, tide__json_syntax(p, "invalid number");
    while (DIGIT(i)) i++;
  }
#undef DIGIT
  p->i = i;
  return J_OK;
}

static int scan_literal(tide_json *p, const char *word, size_t n) {
  if (p->n - p->i < n || memcmp(p->s + p->i, word, n) != 0)
    return tide__json_syntax(p, "invalid token");
  p->i += n;
  return J_OK;
}

/* A scalar at p->i. */
static int scan_scalar(tide_json *p) {
  span raw;
  switch (tide__json_peek(p)) {
    case '"': return tide__json_pass_string(p, &raw, NULL);
    case 't': return scan_literal(p, "true", 4);
    case 'f': return scan_literal(p, "false", 5);
    case 'n': return scan_literal(p, "null", 4);
    case -1: return tide__json_syntax(p, "unexpected end of input");
    default:
      if (tide__json_kind(tide__json_peek(p)) == V_NUMBER) return scan_number(p);
      return tide__json_syntax(p, "invalid token");
  }
}

/* Skips any value at p->i, without recursion: open containers are a stack
** of bytes, as deep as the depth limit allows. */
int tide__json_skip(tide_json *p) {
  char stack[JSON_MAX_DEPTH];
  int top = 0, rc;
  for (;;) {
    tide__json_skip_ws(p);
    int c = tide__json_peek(p);
    if (c == '{' || c == '[') {
      if (p->depth + top + 1 > JSON_MAX_DEPTH)
        return tide__json_syntax(p, "too many nested data structures");
      p->i++;
      tide__json_skip_ws(p);
      if (tide__json_peek(p) == (c == '{' ? '}' : ']')) {
        p->i++;
      } else {
        stack[top++] = (char)c;
        if (c == '{') {
          span raw;
          if (tide__json_peek(p) != '"') return tide__json_syntax(p, "expected object key string");
          if ((rc = tide__json_pass_string(p, &raw, NULL)) != J_OK) return rc;
          tide__json_skip_ws(p);
          if (tide__json_peek(p) != ':') return tide__json_syntax(p, "expected colon");
          p->i++;
        }
        continue;
      }
    } else if ((rc = scan_scalar(p)) != J_OK) {
      return rc;
    }
    /* A value ended: close containers until one has a next member. */
    for (;;) {
      if (top == 0) return J_OK;
      tide__json_skip_ws(p);
      char open = stack[top - 1];
      c = tide__json_peek(p);
      if (c == ',') {
        p->i++;
        if (open == '{') {
          span raw;
          tide__json_skip_ws(p);
          if (tide__json_peek(p) != '"') return tide__json_syntax(p, "expected object key string");
          if ((rc = tide__json_pass_string(p, &raw, NULL)) != J_OK) return rc;
          tide__json_skip_ws(p);
          if (tide__json_peek(p) != ':') return tide__json_syntax(p, "expected colon");
          p->i++;
        }
        break;
      }
      if (c != (open == '{' ? '}' : ']'))
        return tide__json_syntax(p, open == '{' ? "expected comma or object end"
                                     : "expected comma or array end");
      p->i++;
      top--;
    }
  }
}

/* Skips the value at p->i and returns its raw text in *raw. */
int tide__json_skip_raw(tide_json *p, span *raw) {
  tide__json_skip_ws(p);
  size_t start = p->i;
  int rc = tide__json_skip(p);
  raw->off = start;
  raw->len = p->i - start;
  return rc;
}

/* Decodes the string at p->i into the scratch buffer. */
int tide__json_scratch(tide_json *p, span *dec) {
  span raw;
  return tide__json_string(p, p->scratch, dec, &raw, NULL);
}

/* Calls fn for each member of the object at p->i, with p->i at the value
** (after whitespace); fn consumes the value. */
int tide__json_each_member(tide_json *p, tide_json_member_fn fn) {
  int rc;
  if (++p->depth > JSON_MAX_DEPTH)
    return tide__json_syntax(p, "too many nested data structures");
  p->i++; /* '{' */
  tide__json_skip_ws(p);
  if (tide__json_peek(p) == '}') {
    p->i++;
    p->depth--;
    return J_OK;
  }
  for (;;) {
    span raw;
    int escaped;
    tide__json_skip_ws(p);
    if (tide__json_peek(p) != '"') return tide__json_syntax(p, "expected object key string");
    size_t at = p->i;
    if ((rc = tide__json_pass_string(p, &raw, &escaped)) != J_OK) return rc;
    const char *k = p->s + raw.off;
    size_t kl = raw.len;
    if (escaped) { /* rare: decode it (scanning again cannot fail) */
      size_t after = p->i;
      span dec;
      p->key->len = 0;
      p->i = at;
      if ((rc = tide__json_string(p, p->key, &dec, &raw, NULL)) != J_OK)
        return rc;
      p->i = after;
      k = p->key->p ? p->key->p : "";
      kl = p->key->len;
    }
    tide__json_skip_ws(p);
    if (tide__json_peek(p) != ':') return tide__json_syntax(p, "expected colon");
    p->i++;
    tide__json_skip_ws(p);
    if ((rc = fn(p, k, kl)) != J_OK) return rc;
    tide__json_skip_ws(p);
    int c = tide__json_peek(p);
    p->i++;
    if (c == '}') break;
    if (c != ',') return p->i--, tide__json_syntax(p, "expected comma or object end");
  }
  p->depth--;
  return J_OK;
}

/* Calls fn for each element of the array at p->i, as tide__json_each_member does. */
int tide__json_each_element(tide_json *p, tide_json_element_fn fn) {
  int rc;
  if (++p->depth > JSON_MAX_DEPTH)
    return tide__json_syntax(p, "too many nested data structures");
  p->i++; /* '[' */
  tide__json_skip_ws(p);
  if (tide__json_peek(p) == ']') {
    p->i++;
    p->depth--;
    return J_OK;
  }
  for (size_t idx = 0;; idx++) {
    tide__json_skip_ws(p);
    if ((rc = fn(p, idx)) != J_OK) return rc;
    tide__json_skip_ws(p);
    int c = tide__json_peek(p);
    p->i++;
    if (c == ']') break;
    if (c != ',') return p->i--, tide__json_syntax(p, "expected comma or array end");
  }
  p->depth--;
  return J_OK;
}

int tide__json_scan_root(tide_json *p, tide_json_member_fn fn, int *kind) {
  int rc;
  tide__json_skip_ws(p);
  *kind = tide__json_kind(tide__json_peek(p));
  if (*kind == V_OBJECT)
    rc = tide__json_each_member(p, fn);
  else
    rc = tide__json_skip(p);
  if (rc != J_OK) return rc;
  tide__json_skip_ws(p);
  if (p->i != p->n) return tide__json_syntax(p, "expected the end");
  return J_OK;
}

/* The number at p->i when it is plain digits (at most 15, so exact in a
** double) not followed by a fraction or exponent: the usual count or index,
** read without strtod. Returns 0 when it is not, and the caller asks strtod. */
int tide__json_digits(const tide_json *p, lua_Integer *v) {
  size_t i = p->i, end = p->i + 15;
  lua_Integer x = 0;
  while (i < p->n && i < end && p->s[i] >= '0' && p->s[i] <= '9')
    x = x * 10 + (p->s[i++] - '0');
  if (i == p->i || i >= p->n) return 0;
  char c = p->s[i];
  if ((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E') return 0;
  *v = x;
  return 1;
}

/* A usage count: what provider._count gives for the decoded value. */
lua_Integer tide__json_count(tide_json *p) {
  lua_Integer plain;
  if (tide__json_digits(p, &plain)) return plain;
  if (tide__json_kind(tide__json_peek(p)) != V_NUMBER) return 0;
  /* The data is followed by '\n' and a NUL, so strtod stops in bounds. */
  double v = strtod(p->s + p->i, NULL);
  if (v != v || v < 0 || v >= 9007199254740992.0) return 0;
  return (lua_Integer)floor(v);
}

/* The number at p->i as math.tointeger gives it for the decoded value:
** 1 with *v when it is integral and in range, else 0 (not a number, a
** fraction, too large). p->i stays where it was. */
int tide__json_tointeger(const tide_json *p, lua_Integer *v) {
  if (tide__json_digits(p, v)) return 1;
  if (tide__json_kind(tide__json_peek(p)) != V_NUMBER) return 0;
  /* The data is followed by a byte that is no digit, so strtod stops in
  ** bounds. */
  double x = strtod(p->s + p->i, NULL);
  if (x != floor(x) || x < -9223372036854775808.0 || x >= 9223372036854775808.0) return 0;
  *v = (lua_Integer)x;
  return 1;
}

/* ------------------------------------------------------------ quoting -- */

/* How many bytes more than itself each byte takes in a JSON string as
** lua-cjson writes it (so as json.quote and the canonical encoder do):
** \" \\ \/ and the short control escapes take 2, other controls and DEL
** take \u00XX. */
#define U6 5
static const unsigned char JSON_EXTRA[256] = {
    U6, U6, U6, U6, U6, U6, U6, U6, 1,  1,  1,  U6, 1,  1,  U6, U6,
    U6, U6, U6, U6, U6, U6, U6, U6, U6, U6, U6, U6, U6, U6, U6, U6,
    ['"'] = 1, ['/'] = 1, ['\\'] = 1, [0x7f] = U6};
#undef U6

size_t tide__json_quoted_size(const unsigned char *s, size_t n) {
  size_t k = n + 2;
  for (size_t i = 0; i < n; i++) k += JSON_EXTRA[s[i]];
  return k;
}

size_t tide__json_write_quoted(char *out, const unsigned char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  size_t k = 0;
  out[k++] = '"';
  for (size_t i = 0; i < n; i++) {
    unsigned char c = s[i];
    if (JSON_EXTRA[c] == 0) {
      out[k++] = (char)c;
      continue;
    }
    out[k++] = '\\';
    switch (c) {
    case '\b': out[k++] = 'b'; break;
    case '\t': out[k++] = 't'; break;
    case '\n': out[k++] = 'n'; break;
    case '\f': out[k++] = 'f'; break;
    case '\r': out[k++] = 'r'; break;
    case '"': case '/': case '\\': out[k++] = (char)c; break;
    default:
      out[k++] = 'u';
      out[k++] = '0';
      out[k++] = '0';
      out[k++] = hex[c >> 4];
      out[k++] = hex[c & 15];
    }
  }
  out[k++] = '"';
  return k;
}


int tide__json_is_object(const char *s, size_t n) {
  tide_json p = {s, n, 0, 0, NULL, 0, NULL, NULL, NULL};
  tide__json_skip_ws(&p);
  if (tide__json_peek(&p) != '{' || tide__json_skip(&p) != J_OK) return 0;
  tide__json_skip_ws(&p);
  return p.i == p.n;
}

/* ----------------------------------------------------------- canonical -- */

/* tide.json.canonical of what json.decode gives for a document: the bytes a
** reply's tool input had when the Lua parser decoded and re-encoded it
** (tool handlers and the prefix's hash see the same text from either). */

/* As tide.json's decoder: deeper is an error there. */
#define CANON_MAX_DEPTH 200
#define TWO_53 9007199254740992.0

/* One member of an object being written: its key (decoded, in the keys
** buffer), where its value starts in the document, and its place in it. */
typedef struct canon_member {
  size_t key, klen, at, order;
} canon_member;

typedef struct canon {
  tide_json *p;
  tide_buf *out;
  tide_buf keys;    /* decoded keys of the open objects, and one string */
  canon_member *m;  /* the members of every open object, a stack */
  size_t n, cap;
} canon;

/* Keys compare as Lua compares strings in the C locale: bytewise, a prefix
** first. */
static int key_cmp(const canon *c, const canon_member *a, const canon_member *b) {
  size_t n = a->klen < b->klen ? a->klen : b->klen;
  int r = n ? memcmp(c->keys.p + a->key, c->keys.p + b->key, n) : 0;
  if (r) return r;
  return (a->klen > b->klen) - (a->klen < b->klen);
}

/* Sorts n members from c->m[lo], stably (equal keys stay in document
** order): a bottom-up merge sort, linear in memory, n log n whatever the
** input. */
static int sort_members(canon *c, size_t lo, size_t n) {
  if (n < 2) return J_OK;
  if (n > SIZE_MAX / sizeof(canon_member)) return J_NOMEM;
  canon_member *tmp = malloc(n * sizeof *tmp);
  if (tmp == NULL) return J_NOMEM;
  canon_member *a = c->m + lo;
  for (size_t width = 1; width < n; width *= 2) {
    for (size_t i = 0; i < n; i += 2 * width) {
      size_t mid = i + width < n ? i + width : n;
      size_t hi = mid + width < n ? mid + width : n;
      size_t x = i, y = mid, k = i;
      while (x < mid && y < hi) tmp[k++] = key_cmp(c, &a[y], &a[x]) < 0 ? a[y++] : a[x++];
      while (x < mid) tmp[k++] = a[x++];
      while (y < hi) tmp[k++] = a[y++];
    }
    memcpy(a, tmp, n * sizeof *a);
  }
  free(tmp);
  return J_OK;
}

/* A float as the canonical encoder writes one: the shorter of %.14g and
** %.17g that reads back, null when it is not finite. tmp holds 64 bytes;
** returns the length. */
static int float_text(char *tmp, double v) {
  if (v != v || v == HUGE_VAL || v == -HUGE_VAL) return snprintf(tmp, 64, "null");
  int len = snprintf(tmp, 64, "%.14g", v);
  if (strtod(tmp, NULL) != v) len = snprintf(tmp, 64, "%.17g", v);
  return len;
}

/* A number as json.integers then the canonical encoder write it: integral
** and below 2^53 as an integer, anything else as float_text writes it. */
static int canon_number(tide_buf *out, double v) {
  char tmp[64];
  int len;
  if (v == floor(v) && v > -TWO_53 && v < TWO_53)
    len = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
  else
    len = float_text(tmp, v);
  return tide__buf_add(out, tmp, (size_t)len) ? J_NOMEM : J_OK;
}

static int canon_quoted(tide_buf *out, const char *s, size_t n) {
  size_t q = tide__json_quoted_size((const unsigned char *)s, n);
  if (tide__buf_reserve(out, q) != 0) return J_NOMEM;
  out->len += tide__json_write_quoted(out->p + out->len, (const unsigned char *)s, n);
  out->p[out->len] = '\0';
  return J_OK;
}

static int canon_value(canon *c, int depth);

static int canon_object(canon *c, int depth) {
  tide_json *p = c->p;
  size_t base = c->n, mark = c->keys.len;
  int rc;
  p->i++; /* '{' */
  tide__json_skip_ws(p);
  if (tide__json_peek(p) == '}') {
    p->i++;
    return tide__buf_add(c->out, "{}", 2) ? J_NOMEM : J_OK;
  }
  /* Every member first (its key decoded, its value validated and skipped),
  ** then the values written in key order. */
  for (size_t order = 0;; order++) {
    span dec, raw;
    tide__json_skip_ws(p);
    if (tide__json_peek(p) != '"') return tide__json_syntax(p, "expected object key string");
    if ((rc = tide__json_string(p, &c->keys, &dec, &raw, NULL)) != J_OK) return rc;
    tide__json_skip_ws(p);
    if (tide__json_peek(p) != ':') return tide__json_syntax(p, "expected colon");
    p->i++;
    tide__json_skip_ws(p);
    if (c->n == c->cap) {
      size_t cap = c->cap ? c->cap * 2 : 16;
      if (cap > SIZE_MAX / sizeof *c->m) return J_NOMEM;
      canon_member *m = realloc(c->m, cap * sizeof *m);
      if (m == NULL) return J_NOMEM;
      c->m = m;
      c->cap = cap;
    }
    c->m[c->n++] = (canon_member){dec.off, dec.len, p->i, order};
    p->depth = depth;
    if ((rc = tide__json_skip(p)) != J_OK) return rc;
    tide__json_skip_ws(p);
    int ch = tide__json_peek(p);
    if (ch == '}') break;
    if (ch != ',') return tide__json_syntax(p, "expected comma or object end");
    p->i++;
  }
  size_t end = p->i + 1;
  if ((rc = sort_members(c, base, c->n - base)) != J_OK) return rc;
  if (tide__buf_add(c->out, "{", 1)) return J_NOMEM;
  int first = 1;
  for (size_t k = base; k < c->n; k++) {
    /* Of equal keys the last one in the document counts, as in the
    ** decoded table; sorted stably, it is the last of its run. */
    if (k + 1 < c->n && key_cmp(c, &c->m[k], &c->m[k + 1]) == 0) continue;
    if (!first && tide__buf_add(c->out, ",", 1)) return J_NOMEM;
    first = 0;
    const char *key = c->keys.p ? c->keys.p + c->m[k].key : ""; /* "" when every key was */
    if ((rc = canon_quoted(c->out, key, c->m[k].klen)) != J_OK) return rc;
    if (tide__buf_add(c->out, ":", 1)) return J_NOMEM;
    p->i = c->m[k].at;
    if ((rc = canon_value(c, depth + 1)) != J_OK) return rc;
  }
  c->n = base;
  c->keys.len = mark;
  p->i = end;
  return tide__buf_add(c->out, "}", 1) ? J_NOMEM : J_OK;
}

static int canon_value(canon *c, int depth) {
  tide_json *p = c->p;
  int rc;
  tide__json_skip_ws(p);
  int ch = tide__json_peek(p);
  switch (tide__json_kind(ch)) {
    case V_STRING: {
      span dec, raw;
      size_t mark = c->keys.len;
      if ((rc = tide__json_string(p, &c->keys, &dec, &raw, NULL)) != J_OK) return rc;
      rc = canon_quoted(c->out, c->keys.p ? c->keys.p + dec.off : "", dec.len);
      c->keys.len = mark;
      return rc;
    }
    case V_NUMBER: {
      size_t start = p->i;
      if ((rc = scan_number(p)) != J_OK) return rc;
      return canon_number(c->out, strtod(p->s + start, NULL));
    }
    case V_NULL: case V_BOOL: {
      size_t start = p->i;
      if ((rc = scan_scalar(p)) != J_OK) return rc;
      return tide__buf_add(c->out, p->s + start, p->i - start) ? J_NOMEM : J_OK;
    }
    case V_OBJECT:
    case V_ARRAY:
      if (depth >= CANON_MAX_DEPTH) return tide__json_syntax(p, "too many nested data structures");
      if (ch == '{') return canon_object(c, depth);
      break;
    default:
      return scan_scalar(p); /* the error it gives */
  }
  /* An array, in order. (Decoded, an empty one is an empty table, which
  ** the canonical encoder writes "{}": here it stays "[]".) */
  p->i++;
  if (tide__buf_add(c->out, "[", 1)) return J_NOMEM;
  tide__json_skip_ws(p);
  if (tide__json_peek(p) == ']') {
    p->i++;
    return tide__buf_add(c->out, "]", 1) ? J_NOMEM : J_OK;
  }
  for (;;) {
    if ((rc = canon_value(c, depth + 1)) != J_OK) return rc;
    tide__json_skip_ws(p);
    ch = tide__json_peek(p);
    if (ch == ']') break;
    if (ch != ',') return tide__json_syntax(p, "expected comma or array end");
    if (tide__buf_add(c->out, ",", 1)) return J_NOMEM;
    p->i++;
  }
  p->i++;
  return tide__buf_add(c->out, "]", 1) ? J_NOMEM : J_OK;
}

int tide__json_canonical(tide_json *p, tide_buf *out) {
  canon c = {p, out, {0}, NULL, 0, 0};
  size_t len = out->len;
  int rc = canon_value(&c, 0);
  tide__buf_free(&c.keys);
  free(c.m);
  if (rc != J_OK) {
    out->len = len; /* nothing half-written */
    if (out->p) out->p[len] = '\0';
  }
  return rc;
}

/* ------------------------------------------------------------ integers -- */

/* lua-cjson 2.1.0 decodes every number as a float; JSON has no such
** distinction, and tool handlers expect {"n": 3} to give the integer 3. */
#define INTEGERS_MAX_DEPTH 200

/* Turns every integral float in the table at idx (at any depth, up to the
** decoder's own depth limit) into an integer, in place. */
static void integers(lua_State *L, int idx, int depth) {
  if (depth > INTEGERS_MAX_DEPTH) return;
  luaL_checkstack(L, 4, "too many nested tables");
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int t = lua_type(L, -1);
    if (t == LUA_TNUMBER && !lua_isinteger(L, -1)) {
      lua_Number x = lua_tonumber(L, -1);
      if (x == floor(x) && x > -TWO_53 && x < TWO_53) {
        lua_pushvalue(L, -2);
        lua_pushinteger(L, (lua_Integer)x);
        lua_rawset(L, idx); /* an existing key: the traversal goes on */
      }
    } else if (t == LUA_TTABLE) {
      integers(L, lua_gettop(L), depth + 1);
    }
    lua_pop(L, 1);
  }
}

/* core.json_integers(t) -> t: json.integers (see json.lua). */
static int l_json_integers(lua_State *L) {
  if (lua_type(L, 1) == LUA_TTABLE) integers(L, 1, 0);
  lua_settop(L, 1);
  return 1;
}


/* ---------------------------------------------------- canonical encoder -- */

/* json.canonical: a Lua value as JSON with every object's keys sorted, so
** that equal values give equal bytes (the frozen request prefix, the
** integration hashes and every transcript record rely on it). It writes
** what the Lua encoder it replaced wrote, byte for byte
** (spec/support/reference.lua keeps that one; spec/unit/differential_spec.lua
** compares them): strings quoted as lua-cjson quotes them, integers as
** integers, floats as the shorter of %.14g and %.17g that reads back, what
** is not finite as null; a table marked with json.array_mt, or with a
** length, is an array, any other an object whose number keys are written
** as tostring writes them. Tables are read as Lua code reads them
** (metamethods apply), except that keys come from next (no __pairs). */

#define ENCODE_SMALL_OBJECT 32

typedef struct enc {
  lua_State *L;
  tide_buf *b;
  int array_mt; /* stack index of json.array_mt */
} enc;

static void enc_nomem(lua_State *L) {
  lua_pushliteral(L, "not enough memory");
  lua_error(L);
}

static void enc_add(enc *e, const char *s, size_t n) {
  if (tide__buf_add(e->b, s, n)) enc_nomem(e->L);
}

static void enc_quoted(enc *e, const char *s, size_t n) {
  if (canon_quoted(e->b, s, n) != J_OK) enc_nomem(e->L);
}

static void enc_number(enc *e, int idx) {
  char tmp[64];
  int len;
  if (lua_isinteger(e->L, idx))
    len = snprintf(tmp, sizeof tmp, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(e->L, idx));
  else
    len = float_text(tmp, (double)lua_tonumber(e->L, idx));
  enc_add(e, tmp, (size_t)len);
}

/* Lua's own string order (lstrlib's l_strcmp, as table.sort uses it):
** strcoll, piece by piece across embedded zeros. */
static int lua_order(const char *l, size_t ll, const char *r, size_t lr) {
  for (;;) {
    int temp = strcoll(l, r);
    if (temp != 0) return temp;
    size_t len = strlen(l);
    if (len == lr) return (len == ll) ? 0 : 1;
    if (len == ll) return -1;
    len++;
    l += len, ll -= len;
    r += len, lr -= len;
  }
}

typedef struct enc_key {
  const char *s;
  size_t n;
} enc_key;

static int enc_key_cmp(const void *a, const void *b) {
  const enc_key *x = a, *y = b;
  return lua_order(x->s, x->n, y->s, y->n);
}

static void enc_value(enc *e, int idx, int depth);

static void enc_object(enc *e, int t, int depth) {
  lua_State *L = e->L;
  int base = lua_gettop(L);
  size_t n = 0;
  /* Every key, as text, on the stack. */
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    luaL_checkstack(L, 3, "tide.json: too many keys");
    int kt = lua_type(L, -1);
    if (kt == LUA_TNUMBER) {
      lua_pushvalue(L, -1);
      luaL_tolstring(L, -1, NULL); /* as tostring writes it */
      lua_replace(L, -2);
      lua_insert(L, -2); /* the text below, the key on top for next */
    } else if (kt == LUA_TSTRING) {
      lua_pushvalue(L, -1);
      lua_insert(L, -2);
    } else {
      lua_pushfstring(L, "tide.json: cannot encode a %s key", luaL_typename(L, -1));
      lua_error(L);
    }
    n++;
  }
  enc_key small[ENCODE_SMALL_OBJECT], *keys = small;
  if (n > ENCODE_SMALL_OBJECT) {
    if (n > SIZE_MAX / sizeof *keys) enc_nomem(L);
    keys = lua_newuserdatauv(L, n * sizeof *keys, 0); /* freed by the collector */
  }
  for (size_t i = 0; i < n; i++) keys[i].s = lua_tolstring(L, base + 1 + (int)i, &keys[i].n);
  qsort(keys, n, sizeof *keys, enc_key_cmp);
  enc_add(e, "{", 1);
  for (size_t i = 0; i < n; i++) {
    if (i > 0) enc_add(e, ",", 1);
    enc_quoted(e, keys[i].s, keys[i].n);
    enc_add(e, ":", 1);
    /* v[k], and v[tonumber(k)] when that is nil */
    lua_pushlstring(L, keys[i].s, keys[i].n);
    if (lua_gettable(L, t) == LUA_TNIL) {
      lua_pop(L, 1);
      size_t read = lua_stringtonumber(L, keys[i].s);
      if (read != keys[i].n + 1) { /* not a number, or not all of it */
        if (read) lua_pop(L, 1);
        lua_pushnil(L);
      }
      lua_gettable(L, t);
    }
    enc_value(e, lua_gettop(L), depth + 1);
    lua_pop(L, 1);
  }
  enc_add(e, "}", 1);
  lua_settop(L, base);
}

/* Whether every key of table t is an integer from 1 to n. A table with a
** list part and other keys ({1, 2, a = 3}) is written as an object, its
** numbers as keys: as a list, the other keys would be lost without a word. */
static int only_list_keys(lua_State *L, int t, lua_Integer n) {
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    int isint;
    lua_Integer k = lua_tointegerx(L, -1, &isint);
    if (!isint || lua_type(L, -1) != LUA_TNUMBER || k < 1 || k > n) {
      lua_pop(L, 1);
      return 0;
    }
  }
  return 1;
}

static void enc_table(enc *e, int t, int depth) {
  lua_State *L = e->L;
  if (depth > JSON_MAX_DEPTH) {
    lua_pushliteral(L, "tide.json: nesting too deep");
    lua_error(L);
  }
  luaL_checkstack(L, 8, "tide.json: nesting too deep");
  int has_mt = lua_getmetatable(L, t);
  int marked = has_mt && lua_rawequal(L, -1, e->array_mt);
  if (has_mt) lua_pop(L, 1);
  lua_Integer n = has_mt ? luaL_len(L, t) : (lua_Integer)lua_rawlen(L, t);
  if (!marked && n > 0 && !only_list_keys(L, t, n)) n = 0; /* an object, as lua-cjson writes it */
  if (marked || n > 0) {
    enc_add(e, "[", 1);
    for (lua_Integer i = 1; i <= n; i++) {
      if (i > 1) enc_add(e, ",", 1);
      lua_geti(L, t, i);
      enc_value(e, lua_gettop(L), depth + 1);
      lua_pop(L, 1);
    }
    enc_add(e, "]", 1);
    return;
  }
  enc_object(e, t, depth);
}

static void enc_value(enc *e, int idx, int depth) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    enc_quoted(e, s, n);
    return;
  }
  case LUA_TNUMBER: enc_number(e, idx); return;
  case LUA_TBOOLEAN:
    if (lua_toboolean(L, idx)) enc_add(e, "true", 4);
    else enc_add(e, "false", 5);
    return;
  case LUA_TNIL: enc_add(e, "null", 4); return;
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) { /* json.null */
      enc_add(e, "null", 4);
      return;
    }
    break;
  case LUA_TTABLE: enc_table(e, idx, depth); return;
  default: break;
  }
  lua_pushfstring(L, "tide.json: cannot encode a %s", luaL_typename(L, idx));
  lua_error(L);
}

/* encode(v) -> text: the closure core.json_canonical_encoder makes; its
** upvalue is json.array_mt. The buffer is a userdata, so that an error
** mid-way (a value JSON cannot hold) leaves nothing to free by hand. */
static int l_encode_canonical(lua_State *L) {
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  tide_buf *b = tide__buf_push(L);
  enc e = {L, b, 2};
  enc_value(&e, 1, 0);
  lua_pushlstring(L, b->p ? b->p : "", b->len);
  tide__buf_free(b);
  return 1;
}

/* ---------------------------------------------------- raw values by key -- */

/* What a walk for raw values keeps: the key sought, the Lua list. */
typedef struct raw_walk {
  lua_State *L;
  const char *want;
  size_t want_len;
  lua_Integer n;
} raw_walk;

static int raw_value(tide_json *p);

static int raw_member(tide_json *p, const char *k, size_t kl) {
  raw_walk *w = p->ud;
  int kind = tide__json_kind(tide__json_peek(p));
  if (kl == w->want_len && memcmp(k, w->want, kl) == 0 && (kind == V_OBJECT || kind == V_ARRAY)) {
    span raw;
    int rc = tide__json_skip_raw(p, &raw);
    if (rc != J_OK) return rc;
    lua_pushlstring(w->L, p->s + raw.off, raw.len);
    lua_rawseti(w->L, -2, ++w->n);
    return J_OK;
  }
  return raw_value(p);
}

static int raw_element(tide_json *p, size_t index) {
  (void)index;
  return raw_value(p);
}

/* Walks the value at p->i: objects and arrays into, the rest skipped. */
static int raw_value(tide_json *p) {
  switch (tide__json_kind(tide__json_peek(p))) {
  case V_OBJECT: return tide__json_each_member(p, raw_member);
  case V_ARRAY: return tide__json_each_element(p, raw_element);
  default: return tide__json_skip(p);
  }
}

/* The end of a walk of a whole document (core.json_raw_values,
** core.json_elements): the list on the stack, or nil and why; the
** scanner's buffers freed. */
static int walk_done(lua_State *L, tide_json *p, int rc) {
  if (rc == J_OK) {
    tide__json_skip_ws(p);
    if (p->i != p->n) rc = tide__json_syntax(p, "expected the end");
  }
  tide__buf_free(p->scratch);
  tide__buf_free(p->key);
  if (rc == J_NOMEM) return luaL_error(L, "not enough memory");
  if (rc != J_OK) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s at character %I", p->err ? p->err : "invalid JSON", (lua_Integer)p->err_at + 1);
    return 2;
  }
  return 1;
}

/* core.json_raw_values(text, key) -> the raw JSON text of every member
** named key whose value is an object or an array, in document order (a
** member inside one found is not looked into); or nil and why. For a
** reply decoded in Lua whose tool inputs must go on byte for byte (an
** empty array decoded by lua-cjson would come back an object). */
static int l_json_raw_values(lua_State *L) {
  size_t n, kl;
  const char *s = luaL_checklstring(L, 1, &n);
  const char *key = luaL_checklstring(L, 2, &kl);
  tide_buf scratch = {0}, kbuf = {0};
  lua_newtable(L);
  raw_walk w = {L, key, kl, 0};
  tide_json p = {s, n, 0, 0, NULL, 0, &scratch, &kbuf, &w};
  tide__json_skip_ws(&p);
  int rc = raw_value(&p);
  return walk_done(L, &p, rc);
}

/* core.json_elements(text) -> the raw JSON text of each element of the
** array text is, in order; or nil and why (not an array, invalid JSON). For
** content that goes back byte for byte but for the blocks an API refuses
** (provider.anthropic's blank text blocks). */
static int elements_element(tide_json *p, size_t index) {
  (void)index;
  span raw;
  int rc = tide__json_skip_raw(p, &raw);
  if (rc != J_OK) return rc;
  lua_State *L = p->ud;
  lua_pushlstring(L, p->s + raw.off, raw.len);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  return J_OK;
}

static int l_json_elements(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  tide_buf scratch = {0}, kbuf = {0};
  lua_newtable(L);
  tide_json p = {s, n, 0, 0, NULL, 0, &scratch, &kbuf, L};
  tide__json_skip_ws(&p);
  int rc = tide__json_peek(&p) == '[' ? tide__json_each_element(&p, elements_element)
                                      : tide__json_syntax(&p, "expected an array");
  return walk_done(L, &p, rc);
}

/* core.json_canonical_encoder(array_mt) -> encode (see json.lua). */
static int l_json_canonical_encoder(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_pushcclosure(L, l_encode_canonical, 1);
  return 1;
}

/// Registers core.json_integers, core.json_canonical_encoder,
/// core.json_raw_values and core.json_elements into the module table at the
/// top of the stack.
void tide__open_json(lua_State *L) {
  static const luaL_Reg fns[] = {{"json_integers", l_json_integers},
                                 {"json_canonical_encoder", l_json_canonical_encoder},
                                 {"json_raw_values", l_json_raw_values},
                                 {"json_elements", l_json_elements},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
