/*
** stream.c -- an OpenAI chat-completions stream, parsed in C.
**
** The Lua path turned every SSE event into a table, decoded its JSON into a
** table tree and walked it; per reply that is hundreds of tables for a few
** hundred bytes of text. Here the SSE framing is sse.c's (tide__sse_feed),
** each event's JSON is scanned in place for the handful of fields a reply is
** made of, and tool-call deltas go to dispatch.c's assembler. Lua sees one
** string per chunk (the text deltas) and one result table at the end.
**
** The scanner reads, and nothing else:
**   error                                  (an error object inside the stream)
**   usage.{prompt_tokens, completion_tokens, prompt_tokens_details.cached_tokens}
**   choices[0].delta.content
**   choices[0].delta.tool_calls[*].{index, id, function.{name, arguments}}
**   choices[0].finish_reason
** Every other value is validated and skipped without recursion (a byte stack
** of open containers, 1000 deep as lua-cjson allows). The fields above sit at
** a fixed depth, so the functions that descend into them recurse at most that
** far. An event is applied only once the whole of it has parsed, with the
** same rules the Lua code applied to the decoded table: the last of
** duplicate keys wins, values of the wrong type count as absent, and a
** malformed event anywhere is a MalformedResponse.
**
** Memory: the SSE parser, the assembler, the reply's text, a scratch buffer
** for the strings of one event and the pending tool-call deltas of one event
** are all malloc'ed and hang off the userdata, freed by the one __gc/__close
** function. Nothing raises while they are inconsistent: the scanner never
** raises, and Lua values are built only after it returns.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "tide.h"

#define STREAM_MT "tide.openai_stream"
static const char parse_key = 0; /* its address: the registry's parser for openai_parse */

/* Default cap on one event's data and on all tool-call bytes of one reply,
** as for core.sse_parser and core.tool_call_assembler. */
#define STREAM_DEFAULT_MAX (8 * 1024 * 1024)

/* lua-cjson's default decode depth: a deeper event was an error before. */
#define JSON_MAX_DEPTH 1000

/* Error messages quote at most this much of the server's message. */
#define MESSAGE_MAX 512

/* Kinds of JSON values, from their first byte. */
enum { V_NONE, V_NULL, V_BOOL, V_NUMBER, V_STRING, V_OBJECT, V_ARRAY };

/* Scanner results. */
#define J_OK 0
#define J_SYNTAX (-1)
#define J_NOMEM (-2)

/* A byte range: in the scratch buffer for decoded strings, in the event's
** data for raw JSON text. */
typedef struct span {
  size_t off, len;
} span;

/* One tool-call delta of the event being scanned. */
typedef struct pending_call {
  int is_table;        /* an object or an array (anything else is an error) */
  int has_index;       /* index is an integral number */
  lua_Integer index;
  int has_id;          /* id is a string */
  span id;
  int has_function;    /* function is an object or an array */
  int has_name;        /* function.name is a string */
  span name;
  int args_kind;       /* V_STRING (scratch), V_OBJECT/V_ARRAY (raw data) */
  span args;
} pending_call;

/* What one event says, once scanned. Reset for every event. */
typedef struct event_state {
  int err_kind;        /* the value of "error", V_NONE when absent */
  span err_raw;        /* its raw text */
  int msg_kind;        /* error.message (or the error itself, a string) */
  span msg;            /* scratch when V_STRING, raw otherwise */
  int code_kind;       /* error.code: V_NUMBER (raw) or V_STRING (scratch) */
  span code;
  int has_usage;
  lua_Integer input, output, cached;
  int choice_table;    /* choices[0] is an object */
  int delta_table;     /* choices[0].delta is an object */
  int has_content;
  span content;
  int has_calls;       /* delta.tool_calls is an array */
  size_t ncalls;
  int has_finish;
  span finish;
} event_state;

typedef struct openai_stream {
  tide_sse sse;
  tide_asm calls;
  tide_buf text;    /* every text delta so far */
  tide_buf finish;  /* the last finish_reason */
  tide_buf scratch; /* decoded strings of the current event */
  tide_buf key;     /* an object key that had escapes */
  pending_call *pending;
  size_t npending_cap;
  event_state ev;
  int has_finish;
  int has_usage;
  lua_Integer input, output, cached;
  int whole;  /* a whole (non-streamed) response: choices[0].message */
  int done;   /* [DONE] seen: nothing after it counts */
  int busy;   /* openai_parse is (or was, if it raised) using it */
  int failed; /* the stream is abandoned; the error is uservalue 1 */
  struct openai_stream *next_spare; /* in the state's list of spares */
} openai_stream;

/* The userdata of a stream. The parser lives apart and is taken when the
** first bytes come: a stream waiting on a slow provider holds none of it,
** and a closed stream's parser, with its buffers, serves the next one. */
typedef struct stream_ud {
  openai_stream *st; /* NULL until fed, and once closed */
  tide_ctx *ctx;     /* whose spare parsers it takes from and gives back to */
  size_t max;
  int closed;
} stream_ud;

/* ------------------------------------------------------------- scanning -- */

typedef struct scanner {
  const char *s;
  size_t n, i;
  int depth;
  const char *err; /* what was wrong, for the MalformedResponse message */
  size_t err_at;
  openai_stream *st;
} scanner;

static int syntax(scanner *p, const char *what) {
  if (p->err == NULL) {
    p->err = what;
    p->err_at = p->i;
  }
  return J_SYNTAX;
}

static void skip_ws(scanner *p) {
  while (p->i < p->n) {
    char c = p->s[p->i];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
    p->i++;
  }
}

static int peek(const scanner *p) {
  return p->i < p->n ? (unsigned char)p->s[p->i] : -1;
}

static int kind_of(int c) {
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
static int scan_string(scanner *p, tide_buf *out, span *dec, span *raw,
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
      return syntax(p, "unexpected end of string");
    }
    if (s[i] == '"') break;
    esc = 1;
    if (i + 1 >= p->n) {
      p->i = i;
      return syntax(p, "unexpected end of string");
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
        return syntax(p, "invalid escape code");
    }
    if (c != 'u') {
      if (out && tide__buf_add(out, &one, 1) != 0) return J_NOMEM;
      i += 2;
    } else {
      unsigned cp, lo;
      if (i + 6 > p->n || hex4(s + i + 2, &cp) != 0) {
        p->i = i;
        return syntax(p, "invalid unicode escape code");
      }
      i += 6;
      if (cp >= 0xDC00 && cp <= 0xDFFF) {
        p->i = i - 6;
        return syntax(p, "invalid unicode escape code");
      }
      if (cp >= 0xD800 && cp <= 0xDBFF) { /* needs a low surrogate */
        if (i + 6 > p->n || s[i] != '\\' || s[i + 1] != 'u' ||
            hex4(s + i + 2, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF) {
          p->i = i - 6;
          return syntax(p, "invalid unicode escape code");
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
** skip_plain; anything else goes to scan_string, which validates escapes.
** *escaped (if given) says whether there was a backslash. */
static int pass_string(scanner *p, span *raw, int *escaped) {
  size_t i = skip_plain(p->s, p->i + 1, p->n);
  if (i < p->n && p->s[i] == '"') {
    raw->off = p->i + 1;
    raw->len = i - raw->off;
    if (escaped) *escaped = 0;
    p->i = i + 1;
    return J_OK;
  }
  return scan_string(p, NULL, NULL, raw, escaped);
}

static int scan_number(scanner *p) {
  const char *s = p->s;
  size_t i = p->i;
#define DIGIT(k) ((k) < p->n && s[k] >= '0' && s[k] <= '9')
  if (i < p->n && s[i] == '-') i++;
  if (i < p->n && s[i] == '0') {
    i++;
  } else if (DIGIT(i)) {
    while (DIGIT(i)) i++;
  } else {
    return syntax(p, "invalid number");
  }
  if (i < p->n && s[i] == '.') {
    i++;
    if (!DIGIT(i)) return p->i = i, syntax(p, "invalid number");
    while (DIGIT(i)) i++;
  }
  if (i < p->n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < p->n && (s[i] == '+' || s[i] == '-')) i++;
    if (!DIGIT(i)) return p->i = i, syntax(p, "invalid number");
    while (DIGIT(i)) i++;
  }
#undef DIGIT
  p->i = i;
  return J_OK;
}

static int scan_literal(scanner *p, const char *word, size_t n) {
  if (p->n - p->i < n || memcmp(p->s + p->i, word, n) != 0)
    return syntax(p, "invalid token");
  p->i += n;
  return J_OK;
}

/* A scalar at p->i. */
static int scan_scalar(scanner *p) {
  span raw;
  switch (peek(p)) {
    case '"': return pass_string(p, &raw, NULL);
    case 't': return scan_literal(p, "true", 4);
    case 'f': return scan_literal(p, "false", 5);
    case 'n': return scan_literal(p, "null", 4);
    case -1: return syntax(p, "unexpected end of input");
    default:
      if (kind_of(peek(p)) == V_NUMBER) return scan_number(p);
      return syntax(p, "invalid token");
  }
}

/* Skips any value at p->i, without recursion: open containers are a stack
** of bytes, as deep as the depth limit allows. */
static int skip_value(scanner *p) {
  char stack[JSON_MAX_DEPTH];
  int top = 0, rc;
  for (;;) {
    skip_ws(p);
    int c = peek(p);
    if (c == '{' || c == '[') {
      if (p->depth + top + 1 > JSON_MAX_DEPTH)
        return syntax(p, "too many nested data structures");
      p->i++;
      skip_ws(p);
      if (peek(p) == (c == '{' ? '}' : ']')) {
        p->i++;
      } else {
        stack[top++] = (char)c;
        if (c == '{') {
          span raw;
          if (peek(p) != '"') return syntax(p, "expected object key string");
          if ((rc = pass_string(p, &raw, NULL)) != J_OK) return rc;
          skip_ws(p);
          if (peek(p) != ':') return syntax(p, "expected colon");
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
      skip_ws(p);
      char open = stack[top - 1];
      c = peek(p);
      if (c == ',') {
        p->i++;
        if (open == '{') {
          span raw;
          skip_ws(p);
          if (peek(p) != '"') return syntax(p, "expected object key string");
          if ((rc = pass_string(p, &raw, NULL)) != J_OK) return rc;
          skip_ws(p);
          if (peek(p) != ':') return syntax(p, "expected colon");
          p->i++;
        }
        break;
      }
      if (c != (open == '{' ? '}' : ']'))
        return syntax(p, open == '{' ? "expected comma or object end"
                                     : "expected comma or array end");
      p->i++;
      top--;
    }
  }
}

/* Skips the value at p->i and returns its raw text in *raw. */
static int skip_raw(scanner *p, span *raw) {
  skip_ws(p);
  size_t start = p->i;
  int rc = skip_value(p);
  raw->off = start;
  raw->len = p->i - start;
  return rc;
}

/* Decodes the string at p->i into the scratch buffer. */
static int scratch_string(scanner *p, span *dec) {
  span raw;
  return scan_string(p, &p->st->scratch, dec, &raw, NULL);
}

typedef int (*member_fn)(scanner *p, const char *key, size_t klen);
typedef int (*element_fn)(scanner *p, size_t index);

static int key_is(const char *k, size_t kl, const char *name) {
  size_t n = strlen(name);
  return kl == n && memcmp(k, name, n) == 0;
}

/* Calls fn for each member of the object at p->i, with p->i at the value
** (after whitespace); fn consumes the value. */
static int each_member(scanner *p, member_fn fn) {
  int rc;
  if (++p->depth > JSON_MAX_DEPTH)
    return syntax(p, "too many nested data structures");
  p->i++; /* '{' */
  skip_ws(p);
  if (peek(p) == '}') {
    p->i++;
    p->depth--;
    return J_OK;
  }
  for (;;) {
    span raw;
    int escaped;
    skip_ws(p);
    if (peek(p) != '"') return syntax(p, "expected object key string");
    size_t at = p->i;
    if ((rc = pass_string(p, &raw, &escaped)) != J_OK) return rc;
    const char *k = p->s + raw.off;
    size_t kl = raw.len;
    if (escaped) { /* rare: decode it (scanning again cannot fail) */
      size_t after = p->i;
      span dec;
      p->st->key.len = 0;
      p->i = at;
      if ((rc = scan_string(p, &p->st->key, &dec, &raw, NULL)) != J_OK)
        return rc;
      p->i = after;
      k = p->st->key.p ? p->st->key.p : "";
      kl = p->st->key.len;
    }
    skip_ws(p);
    if (peek(p) != ':') return syntax(p, "expected colon");
    p->i++;
    skip_ws(p);
    if ((rc = fn(p, k, kl)) != J_OK) return rc;
    skip_ws(p);
    int c = peek(p);
    p->i++;
    if (c == '}') break;
    if (c != ',') return p->i--, syntax(p, "expected comma or object end");
  }
  p->depth--;
  return J_OK;
}

/* Calls fn for each element of the array at p->i, as each_member does. */
static int each_element(scanner *p, element_fn fn) {
  int rc;
  if (++p->depth > JSON_MAX_DEPTH)
    return syntax(p, "too many nested data structures");
  p->i++; /* '[' */
  skip_ws(p);
  if (peek(p) == ']') {
    p->i++;
    p->depth--;
    return J_OK;
  }
  for (size_t idx = 0;; idx++) {
    skip_ws(p);
    if ((rc = fn(p, idx)) != J_OK) return rc;
    skip_ws(p);
    int c = peek(p);
    p->i++;
    if (c == ']') break;
    if (c != ',') return p->i--, syntax(p, "expected comma or array end");
  }
  p->depth--;
  return J_OK;
}

/* The number at p->i when it is plain digits (at most 15, so exact in a
** double) not followed by a fraction or exponent: the usual count or index,
** read without strtod. Returns 0 when it is not, and the caller asks strtod. */
static int plain_digits(const scanner *p, lua_Integer *v) {
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
static lua_Integer count_at(scanner *p) {
  lua_Integer plain;
  if (plain_digits(p, &plain)) return plain;
  if (kind_of(peek(p)) != V_NUMBER) return 0;
  /* The data is followed by '\n' and a NUL, so strtod stops in bounds. */
  double v = strtod(p->s + p->i, NULL);
  if (v != v || v < 0 || v >= 9007199254740992.0) return 0;
  return (lua_Integer)floor(v);
}

/* ---------------------------------------------------------- the fields -- */

static pending_call *current_call(scanner *p) {
  return &p->st->pending[p->st->ev.ncalls - 1];
}

static int function_member(scanner *p, const char *k, size_t kl) {
  pending_call *c = current_call(p);
  if (key_is(k, kl, "name")) {
    c->has_name = peek(p) == '"';
    if (c->has_name) return scratch_string(p, &c->name);
  } else if (key_is(k, kl, "arguments")) {
    int kind = kind_of(peek(p));
    c->args_kind = V_NONE;
    if (kind == V_STRING) {
      c->args_kind = V_STRING;
      return scratch_string(p, &c->args);
    }
    if (kind == V_OBJECT || kind == V_ARRAY) {
      /* Some servers send the arguments as JSON rather than as a string of
      ** JSON: keep the text as it came. */
      c->args_kind = kind;
      return skip_raw(p, &c->args);
    }
  }
  return skip_value(p);
}

static int call_member(scanner *p, const char *k, size_t kl) {
  pending_call *c = current_call(p);
  if (key_is(k, kl, "index")) {
    c->has_index = 0;
    lua_Integer plain;
    if (plain_digits(p, &plain)) {
      c->has_index = 1;
      c->index = plain;
    } else if (kind_of(peek(p)) == V_NUMBER) {
      double v = strtod(p->s + p->i, NULL);
      /* math.tointeger: integral and in range */
      if (v == floor(v) && v >= -9223372036854775808.0 &&
          v < 9223372036854775808.0) {
        c->has_index = 1;
        c->index = (lua_Integer)v;
      }
    }
  } else if (key_is(k, kl, "id")) {
    c->has_id = peek(p) == '"';
    if (c->has_id) return scratch_string(p, &c->id);
  } else if (key_is(k, kl, "function")) {
    int kind = kind_of(peek(p));
    c->has_function = kind == V_OBJECT || kind == V_ARRAY;
    c->has_name = 0;
    c->args_kind = V_NONE;
    if (kind == V_OBJECT) return each_member(p, function_member);
  }
  return skip_value(p);
}

static int call_element(scanner *p, size_t idx) {
  openai_stream *st = p->st;
  (void)idx;
  if (st->ev.ncalls == st->npending_cap) {
    size_t cap = st->npending_cap ? st->npending_cap * 2 : 8;
    if (cap > SIZE_MAX / sizeof *st->pending) return J_NOMEM;
    pending_call *q = realloc(st->pending, cap * sizeof *q);
    if (q == NULL) return J_NOMEM;
    st->pending = q;
    st->npending_cap = cap;
  }
  pending_call *c = &st->pending[st->ev.ncalls++];
  memset(c, 0, sizeof *c);
  int kind = kind_of(peek(p));
  c->is_table = kind == V_OBJECT || kind == V_ARRAY;
  if (kind == V_OBJECT) return each_member(p, call_member);
  return skip_value(p);
}

static int delta_member(scanner *p, const char *k, size_t kl) {
  event_state *ev = &p->st->ev;
  if (key_is(k, kl, "content")) {
    ev->has_content = peek(p) == '"';
    if (ev->has_content) return scratch_string(p, &ev->content);
  } else if (key_is(k, kl, "tool_calls")) {
    ev->ncalls = 0;
    ev->has_calls = peek(p) == '[';
    if (ev->has_calls) return each_element(p, call_element);
  }
  return skip_value(p);
}

static int choice_member(scanner *p, const char *k, size_t kl) {
  event_state *ev = &p->st->ev;
  if (key_is(k, kl, p->st->whole ? "message" : "delta")) {
    ev->delta_table = peek(p) == '{';
    ev->has_content = ev->has_calls = 0;
    ev->ncalls = 0;
    if (ev->delta_table) return each_member(p, delta_member);
  } else if (key_is(k, kl, "finish_reason")) {
    ev->has_finish = peek(p) == '"';
    if (ev->has_finish) return scratch_string(p, &ev->finish);
  }
  return skip_value(p);
}

static int choice_element(scanner *p, size_t idx) {
  if (idx == 0 && peek(p) == '{') {
    p->st->ev.choice_table = 1;
    return each_member(p, choice_member);
  }
  return skip_value(p);
}

static int details_member(scanner *p, const char *k, size_t kl) {
  if (key_is(k, kl, "cached_tokens")) p->st->ev.cached = count_at(p);
  return skip_value(p);
}

static int usage_member(scanner *p, const char *k, size_t kl) {
  event_state *ev = &p->st->ev;
  if (key_is(k, kl, "prompt_tokens")) {
    ev->input = count_at(p);
  } else if (key_is(k, kl, "completion_tokens")) {
    ev->output = count_at(p);
  } else if (key_is(k, kl, "prompt_tokens_details")) {
    ev->cached = 0;
    if (peek(p) == '{') return each_member(p, details_member);
  }
  return skip_value(p);
}

static int error_member(scanner *p, const char *k, size_t kl) {
  event_state *ev = &p->st->ev;
  if (key_is(k, kl, "message")) {
    ev->msg_kind = kind_of(peek(p));
    if (ev->msg_kind == V_STRING) return scratch_string(p, &ev->msg);
    return skip_raw(p, &ev->msg);
  }
  if (key_is(k, kl, "code")) {
    ev->code_kind = kind_of(peek(p));
    if (ev->code_kind == V_STRING) return scratch_string(p, &ev->code);
    if (ev->code_kind != V_NUMBER) ev->code_kind = V_NONE;
    return skip_raw(p, &ev->code);
  }
  return skip_value(p);
}

static int root_member(scanner *p, const char *k, size_t kl) {
  event_state *ev = &p->st->ev;
  if (key_is(k, kl, "error")) {
    size_t start = p->i;
    int rc;
    ev->err_kind = kind_of(peek(p));
    ev->msg_kind = ev->code_kind = V_NONE;
    if (ev->err_kind == V_OBJECT) {
      rc = each_member(p, error_member);
    } else if (ev->err_kind == V_STRING) {
      ev->msg_kind = V_STRING;
      rc = scratch_string(p, &ev->msg);
    } else {
      rc = skip_value(p);
    }
    ev->err_raw.off = start;
    ev->err_raw.len = p->i - start;
    return rc;
  }
  if (key_is(k, kl, "usage")) {
    int kind = kind_of(peek(p));
    ev->has_usage = kind == V_OBJECT || kind == V_ARRAY;
    ev->input = ev->output = ev->cached = 0;
    if (kind == V_OBJECT) return each_member(p, usage_member);
  } else if (key_is(k, kl, "choices")) {
    ev->choice_table = ev->delta_table = 0;
    ev->has_content = ev->has_calls = ev->has_finish = 0;
    ev->ncalls = 0;
    if (peek(p) == '[') return each_element(p, choice_element);
  }
  return skip_value(p);
}

/* Scans one event's data into st->ev. Returns J_OK, J_NOMEM, or J_SYNTAX
** with p->err set; *object is 0 when the data is valid JSON but not an
** object (an array counts as one: the decoded table had no fields). */
static int scan_event(scanner *p, int *object) {
  int rc;
  *object = 1;
  skip_ws(p);
  int kind = kind_of(peek(p));
  if (kind == V_OBJECT)
    rc = each_member(p, root_member);
  else
    rc = skip_value(p);
  if (rc != J_OK) return rc;
  skip_ws(p);
  if (p->i != p->n) return syntax(p, "expected the end");
  if (kind != V_OBJECT && kind != V_ARRAY) *object = 0;
  return J_OK;
}

/* -------------------------------------------------------------- events -- */

typedef struct feed_ctx {
  lua_State *L;
  openai_stream *st;
  int nomem;
  int out;          /* stack index of the table of deltas, or 0 */
  lua_Integer nout; /* deltas stored in it */
} feed_ctx;

/* Pushes the longest prefix of s no longer than max that does not end
** inside a UTF-8 sequence (provider._excerpt). */
static void push_excerpt(lua_State *L, const char *s, size_t n, size_t max) {
  if (n > max) {
    size_t j = max;
    while (j > 0) {
      unsigned char b = (unsigned char)s[j];
      if (b < 0x80 || b >= 0xC0) break;
      j--;
    }
    n = j;
  }
  lua_pushlstring(L, s, n);
}

/* The error for an "error" value inside the stream, as openai.lua's
** embedded_error builds it; body is the event's data (the Lua side cuts it
** to the error body excerpt). */
static void push_embedded_error(lua_State *L, openai_stream *st,
                                const tide_sse_event *e) {
  const event_state *ev = &st->ev;
  const char *scratch = st->scratch.p ? st->scratch.p : "";
  luaL_Buffer b;
  int has_code = 0, rate_limited = 0;
  if (ev->err_kind == V_OBJECT && ev->code_kind != V_NONE) {
    if (ev->code_kind == V_STRING)
      lua_pushlstring(L, scratch + ev->code.off, ev->code.len);
    else
      lua_pushlstring(L, e->data + ev->code.off, ev->code.len);
    /* tonumber(code), then math.tointeger(code) or code */
    if (lua_stringtonumber(L, lua_tostring(L, -1)) != 0) {
      lua_remove(L, -2);
      if (!lua_isinteger(L, -1)) {
        lua_Integer n;
        if (lua_numbertointeger(lua_tonumber(L, -1), &n)) {
          lua_pop(L, 1);
          lua_pushinteger(L, n);
        }
      }
      has_code = 1;
      rate_limited = lua_tonumber(L, -1) == 429;
    } else {
      lua_pop(L, 1);
    }
  }
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "openai returned an error: ");
  if (ev->msg_kind == V_STRING) {
    push_excerpt(L, scratch + ev->msg.off, ev->msg.len, MESSAGE_MAX);
  } else if (ev->err_kind == V_OBJECT && ev->msg_kind != V_NONE) {
    push_excerpt(L, e->data + ev->msg.off, ev->msg.len, MESSAGE_MAX);
  } else if (ev->err_kind == V_OBJECT || ev->err_kind == V_ARRAY) {
    lua_pushliteral(L, "nil");
  } else {
    push_excerpt(L, e->data + ev->err_raw.off, ev->err_raw.len, MESSAGE_MAX);
  }
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  tide__push_error(L, rate_limited ? "RateLimited" : "ProviderError", "%s",
                   lua_tostring(L, -1));
  lua_remove(L, -2); /* the message */
  if (has_code) {
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "status");
    lua_remove(L, -2); /* the code */
  }
  lua_pushlstring(L, e->data, e->data_len);
  lua_setfield(L, -2, "body");
}

static void push_malformed(lua_State *L, const tide_sse_event *e,
                           const char *fmt, const char *detail, size_t at) {
  if (detail)
    tide__push_error(L, "MalformedResponse", fmt, detail, (lua_Integer)at + 1);
  else
    tide__push_error(L, "MalformedResponse", "%s", fmt);
  if (e) {
    lua_pushlstring(L, e->data, e->data_len);
    lua_setfield(L, -2, "body");
  }
}

/* Applies the scanned event, in the order openai.lua's Stream:event did.
** Returns 0, or 1 with an error pushed. */
static int apply_event(feed_ctx *fc, const tide_sse_event *e) {
  lua_State *L = fc->L;
  openai_stream *st = fc->st;
  event_state *ev = &st->ev;
  if (ev->err_kind != V_NONE && ev->err_kind != V_NULL) {
    push_embedded_error(L, st, e);
    return 1;
  }
  if (ev->has_usage) {
    st->has_usage = 1;
    st->input = ev->input;
    st->output = ev->output;
    st->cached = ev->cached;
  }
  if (!ev->choice_table) return 0;
  const char *scratch = st->scratch.p ? st->scratch.p : "";
  if (ev->delta_table) {
    if (ev->has_content && ev->content.len > 0) {
      if (tide__buf_add(&st->text, scratch + ev->content.off, ev->content.len))
        return fc->nomem = 1, 0;
      if (fc->out) { /* may raise: every buffer is consistent here */
        lua_pushlstring(L, scratch + ev->content.off, ev->content.len);
        lua_rawseti(L, fc->out, ++fc->nout);
      }
    }
    for (size_t i = 0; ev->has_calls && i < ev->ncalls; i++) {
      const pending_call *c = &st->pending[i];
      if (!c->is_table) {
        push_malformed(L, NULL,
                       "openai stream tool-call delta is not an object", NULL, 0);
        return 1;
      }
      /* A whole response's calls are in order; an index there means
      ** nothing (openai.lua's _parse went by position). */
      lua_Integer index = c->has_index && !st->whole ? c->index : (lua_Integer)i;
      if (index < 0) {
        push_malformed(L, NULL, "openai stream tool-call index is negative",
                       NULL, 0);
        return 1;
      }
      const char *id = NULL, *name = NULL, *args = NULL;
      size_t idl = 0, namel = 0, argsl = 0;
      if (c->has_id) id = scratch + c->id.off, idl = c->id.len;
      if (c->has_function && c->has_name)
        name = scratch + c->name.off, namel = c->name.len;
      if (c->has_function && c->args_kind == V_STRING)
        args = scratch + c->args.off, argsl = c->args.len;
      else if (c->has_function && c->args_kind != V_NONE)
        args = e->data + c->args.off, argsl = c->args.len;
      int rc = tide__asm_add(&st->calls, index, id, idl, name, namel, args, argsl);
      if (rc == TIDE_ASM_NOMEM) return fc->nomem = 1, 0;
      if (rc == TIDE_ASM_TOO_LARGE) {
        tide__push_asm_too_large(L, &st->calls);
        return 1;
      }
    }
  }
  if (ev->has_finish) {
    st->finish.len = 0;
    if (tide__buf_add(&st->finish, scratch + ev->finish.off, ev->finish.len))
      return fc->nomem = 1, 0;
    st->has_finish = 1;
  }
  return 0;
}

/* The SSE callback: one event. Stops the feed (returns 1) with an error on
** the Lua stack, or when out of memory (fc->nomem). */
static int on_event(void *ud, const tide_sse_event *e) {
  feed_ctx *fc = ud;
  openai_stream *st = fc->st;
  if (st->done) return 0; /* nothing counts after [DONE] */
  if (e->done) {
    st->done = 1;
    return 0;
  }
  scanner p = {e->data, e->data_len, 0, 0, NULL, 0, st};
  int object;
  memset(&st->ev, 0, sizeof st->ev);
  st->scratch.len = 0;
  int rc = scan_event(&p, &object);
  if (rc == J_NOMEM) return fc->nomem = 1;
  if (rc == J_SYNTAX) {
    push_malformed(fc->L, e,
                   "openai stream event is not valid JSON (%s at character %I)",
                   p.err, p.err_at);
    return 1;
  }
  if (!object) {
    push_malformed(fc->L, e, "openai stream event is not a JSON object", NULL, 0);
    return 1;
  }
  if (apply_event(fc, e)) return 1;
  return fc->nomem;
}

/* ------------------------------------------------------------- bindings -- */

static stream_ud *check_stream(lua_State *L) {
  stream_ud *u = tide__check_self(L, STREAM_MT);
  if (u->closed) luaL_error(L, "attempt to use a closed openai stream");
  return u;
}

/* The max_bytes argument at index arg (none or nil: the default). */
static size_t check_max(lua_State *L, int arg) {
  lua_Integer max = STREAM_DEFAULT_MAX;
  if (!lua_isnoneornil(L, arg)) {
    luaL_argcheck(L, lua_isinteger(L, arg), arg, "max_bytes must be an integer");
    max = lua_tointeger(L, arg);
    luaL_argcheck(L, max > 0, arg, "max_bytes must be positive");
  }
  return (lua_Unsigned)max > SIZE_MAX ? SIZE_MAX : (size_t)max;
}

/* A stream as new: nothing held, caps of max bytes. */
static void init_stream(openai_stream *st, size_t max) {
  memset(st, 0, sizeof *st);
  st->sse.max = st->calls.max = max;
}

/* Pushes a new stream (no parser yet). */
static stream_ud *new_stream(lua_State *L, size_t max) {
  tide_ctx *ctx = tide__ctx(L);
  stream_ud *u = lua_newuserdatauv(L, sizeof *u, 1);
  u->st = NULL;
  u->ctx = ctx;
  u->max = max;
  u->closed = 0;
  luaL_setmetatable(L, STREAM_MT);
  return u;
}

/* The stream's parser: a spare one, emptied when it was parked, or new. */
static openai_stream *parser_of(lua_State *L, stream_ud *u) {
  if (u->st) return u->st;
  tide_ctx *ctx = u->ctx;
  openai_stream *st = ctx->spare_streams;
  if (st) {
    ctx->spare_streams = st->next_spare;
    ctx->nspare_streams--;
    st->next_spare = NULL;
    st->sse.max = st->calls.max = u->max;
  } else {
    st = malloc(sizeof *st);
    if (st == NULL) luaL_error(L, "not enough memory");
    init_stream(st, u->max);
  }
  u->st = st;
  return st;
}

/* core.openai_stream([max_bytes]) -> stream */
static int l_openai_stream(lua_State *L) {
  new_stream(L, check_max(L, 1));
  return 1;
}

/* Records the error at the top of the stack as the failure of the stream at
** idx (every later call returns it) and frees what the stream no longer needs. */
static void set_failed(lua_State *L, int idx, openai_stream *st) {
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, idx, 1);
  st->failed = 1;
  tide__sse_free(&st->sse);
  tide__asm_free(&st->calls);
}

/* Feeds n bytes of SSE to st, the parser of the stream at idx; fc says where
** text deltas go. Returns 0, or 1 with the error at the top of the stack and
** the stream failed. */
static int feed_bytes(lua_State *L, int idx, openai_stream *st, feed_ctx *fc,
                      const char *s, size_t n) {
  int rc = tide__sse_feed(&st->sse, s, n, on_event, fc);
  if (rc == TIDE_SSE_NOMEM || fc->nomem) return luaL_error(L, "not enough memory");
  if (rc == TIDE_SSE_LINE_BIG || rc == TIDE_SSE_EVENT_BIG) {
    /* As the Lua path reported a failure of core.sse_parser. */
    char cap[32];
    snprintf(cap, sizeof cap, "%zu", st->sse.max);
    tide__push_error(L, "MalformedResponse",
                     "invalid event stream: SSE %s exceeds the limit of %s bytes",
                     rc == TIDE_SSE_LINE_BIG ? "line" : "event", cap);
    lua_pushliteral(L, "StreamTooLarge");
    lua_setfield(L, -2, "cause");
  }
  if (rc == 0) return 0;
  set_failed(L, idx, st); /* the error is at the top */
  return 1;
}

int tide__openai_feed(lua_State *L, int idx, const char *s, size_t n) {
  stream_ud *u = tide__checkudata(L, idx, STREAM_MT);
  if (u->closed) luaL_error(L, "attempt to use a closed openai stream");
  openai_stream *st = parser_of(L, u);
  if (st->failed) {
    lua_getiuservalue(L, idx, 1);
    return 1;
  }
  feed_ctx fc = {L, st, 0, 0, 0};
  return feed_bytes(L, idx, st, &fc, s, n);
}

/* s:feed(chunk [, out]) -> delta_text | nil  or  nil, err [, delta_text]
** delta_text joins the text deltas of this chunk (nil when there were none);
** on failure it is the text that came before the failing event. With a table
** `out`, the deltas are stored one per event in out[1..n] instead, and feed
** returns n, or nil, err, n: callers that hand text over event by event keep
** the boundaries, with no table per chunk. With out = false, no text is
** handed back at all (nobody listens; finish still has all of it). */
static int l_feed(lua_State *L) {
  stream_ud *u = check_stream(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  int quiet = lua_isboolean(L, 3) && !lua_toboolean(L, 3);
  int has_out = !quiet && !lua_isnoneornil(L, 3);
  if (has_out) luaL_checktype(L, 3, LUA_TTABLE);
  openai_stream *st = parser_of(L, u);
  if (st->failed) {
    lua_pushnil(L);
    lua_getiuservalue(L, 1, 1);
    if (has_out) {
      lua_pushinteger(L, 0);
      return 3;
    }
    return 2;
  }
  lua_settop(L, 3);
  size_t start = st->text.len;
  feed_ctx fc = {L, st, 0, has_out ? 3 : 0, 0};
  if (feed_bytes(L, 1, st, &fc, s, n)) {
    lua_pushnil(L);
    lua_insert(L, -2);
    if (has_out) {
      lua_pushinteger(L, fc.nout);
      return 3;
    }
    if (!quiet && st->text.len > start) {
      lua_pushlstring(L, st->text.p + start, st->text.len - start);
      return 3;
    }
    return 2;
  }
  if (has_out)
    lua_pushinteger(L, fc.nout);
  else if (!quiet && st->text.len > start)
    lua_pushlstring(L, st->text.p + start, st->text.len - start);
  else
    lua_pushnil(L);
  return 1;
}

/* The stop reason as the session reads it: provider._stop's mapping. */
static const char *const STOPS[][2] = {
    {"stop", "stop"},           {"end_turn", "stop"},
    {"stop_sequence", "stop"},  {"tool_calls", "tool_calls"},
    {"function_call", "tool_calls"}, {"tool_use", "tool_calls"},
    {"length", "length"},       {"max_tokens", "length"},
};

static void push_stop(lua_State *L, const tide_buf *raw) {
  size_t len = raw->len;
  const char *p = raw->p ? raw->p : "";
  for (size_t i = 0; i < sizeof STOPS / sizeof STOPS[0]; i++) {
    if (strlen(STOPS[i][0]) == len && memcmp(STOPS[i][0], p, len) == 0) {
      lua_pushstring(L, STOPS[i][1]);
      return;
    }
  }
  lua_pushlstring(L, p, len);
}

/* Pushes the reply as the session gets it: text, finished tool calls, usage
** (zeros when the server sent none), and the stop reason mapped and as
** sent. In a new table, or in `into` (the index of a table a session reuses
** for every reply of a turn, with its usage table: it holds one reply at a
** time, and each of its fields is written again, so nothing of the last
** reply stays). Reuse spares the turn two tables a round trip. */
static void push_reply(lua_State *L, openai_stream *st, int into) {
  if (into) {
    lua_pushvalue(L, into);
  } else {
    /* Room for what the provider adds (ttfb_ms, attempts): no rehash. */
    lua_createtable(L, 0, 8);
  }
  lua_pushlstring(L, st->text.p ? st->text.p : "", st->text.len);
  lua_setfield(L, -2, "text");
  tide__asm_push_finished(L, &st->calls);
  lua_setfield(L, -2, "tool_calls");
  int reused = into && lua_getfield(L, -1, "usage") == LUA_TTABLE;
  if (!reused) {
    if (into) lua_pop(L, 1);
    lua_createtable(L, 0, 3);
  }
  lua_pushinteger(L, st->has_usage ? st->input : 0);
  lua_setfield(L, -2, "input");
  lua_pushinteger(L, st->has_usage ? st->output : 0);
  lua_setfield(L, -2, "output");
  lua_pushinteger(L, st->has_usage ? st->cached : 0);
  lua_setfield(L, -2, "cached");
  if (reused)
    lua_pop(L, 1); /* it is into's usage already */
  else
    lua_setfield(L, -2, "usage");
  if (st->has_finish) {
    lua_pushlstring(L, st->finish.p ? st->finish.p : "", st->finish.len);
    lua_setfield(L, -2, "stop_raw");
    push_stop(L, &st->finish);
    lua_setfield(L, -2, "stop");
  } else if (into) {
    lua_pushnil(L);
    lua_setfield(L, -2, "stop_raw");
    lua_pushnil(L);
    lua_setfield(L, -2, "stop");
  }
}

/* The optional table a reply is written into (see push_reply): its index,
** or 0 when the argument is none or nil. */
static int reply_into(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return 0;
  luaL_checktype(L, arg, LUA_TTABLE);
  return arg;
}

/* s:finish([into]) -> { text, tool_calls, usage, stop, stop_raw } | nil, err
** (the reply written into `into` when given: see push_reply) */
static int l_finish(lua_State *L) {
  openai_stream *st = parser_of(L, check_stream(L));
  int into = reply_into(L, 2);
  if (st->failed) {
    lua_pushnil(L);
    lua_getiuservalue(L, 1, 1);
    return 2;
  }
  tide__sse_finish(&st->sse); /* once [DONE] was seen, the tail is moot */
  if (!st->done) {
    tide__push_error(L, "MalformedResponse", "%s",
                     st->has_finish
                         ? "openai stream ended without [DONE]"
                         : "openai stream ended before its finish_reason and [DONE]");
    lua_pushlstring(L, st->text.p ? st->text.p : "", st->text.len);
    lua_setfield(L, -2, "partial_text");
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  push_reply(L, st, into);
  return 1;
}

/* Frees what the parser holds (idempotent); the struct itself stays. */
static void stream_free(openai_stream *st) {
  tide__sse_free(&st->sse);
  tide__asm_free(&st->calls);
  tide__buf_free(&st->text);
  tide__buf_free(&st->finish);
  tide__buf_free(&st->scratch);
  tide__buf_free(&st->key);
  free(st->pending);
  st->pending = NULL;
  st->npending_cap = 0;
}

/* A parser between replies: emptied, with its buffers (those up to
** REUSE_MAX bytes) kept for the next, so a reply's scan mallocs nothing in
** steady state. */
#define REUSE_MAX 16384
#define SPARE_STREAMS_MAX 64

static void stream_reuse(openai_stream *st, size_t max) {
  openai_stream old = *st;
  tide__buf_keep(&old.sse.line, REUSE_MAX);
  tide__buf_keep(&old.sse.data, REUSE_MAX);
  tide__buf_keep(&old.sse.event, REUSE_MAX);
  tide__buf_keep(&old.sse.id, REUSE_MAX);
  tide__asm_reset(&old.calls, REUSE_MAX);
  tide__buf_keep(&old.text, REUSE_MAX);
  tide__buf_keep(&old.finish, REUSE_MAX);
  tide__buf_keep(&old.scratch, REUSE_MAX);
  tide__buf_keep(&old.key, REUSE_MAX);
  init_stream(st, max);
  st->sse.line = old.sse.line;
  st->sse.data = old.sse.data;
  st->sse.event = old.sse.event;
  st->sse.id = old.sse.id;
  st->calls = old.calls;
  st->calls.max = max;
  st->text = old.text;
  st->finish = old.finish;
  st->scratch = old.scratch;
  st->key = old.key;
  st->pending = old.pending;
  st->npending_cap = old.npending_cap;
}

/* Takes a closed stream's parser: kept among the state's spares, emptied,
** or freed when there are enough (or the state is closing). */
static void park_stream(tide_ctx *ctx, openai_stream *st) {
  if (ctx->closing || ctx->loop == NULL || ctx->nspare_streams >= SPARE_STREAMS_MAX) {
    stream_free(st);
    free(st);
    return;
  }
  stream_reuse(st, STREAM_DEFAULT_MAX);
  st->next_spare = ctx->spare_streams;
  ctx->spare_streams = st;
  ctx->nspare_streams++;
}

void tide__stream_shutdown(tide_ctx *ctx) {
  for (openai_stream *st = ctx->spare_streams, *next; st; st = next) {
    next = st->next_spare;
    stream_free(st);
    free(st);
  }
  ctx->spare_streams = NULL;
  ctx->nspare_streams = 0;
}

/* __gc, __close and s:close(): idempotent. */
static int l_close(lua_State *L) {
  stream_ud *u = tide__check_self(L, STREAM_MT);
  openai_stream *st = u->st;
  u->closed = 1;
  u->st = NULL;
  if (st) park_stream(u->ctx, st);
  return 0;
}

/* core.openai_parse(body | req[, max_bytes[, into]]) -> reply | nil
** A whole (non-streamed) chat-completions response, scanned in place as a
** stream event is (choices[0].message in place of .delta): the reply table
** of s:finish(), without decoding the body into tables first. Gives nil for
** anything but a plain reply (invalid JSON, an error object, no message, a
** call without a function or with arguments that are not a string, a cap
** exceeded): the caller's full decoder then says what is wrong. With
** `into`, the reply is written into that table (see push_reply). */
static int l_openai_parse(lua_State *L) {
  size_t n;
  /* the body: a string, or read in place from a finished http_post */
  const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n)
                                                : tide__http_body(L, 1, &n);
  if (s == NULL) luaL_typeerror(L, 1, "string or http request");
  size_t max = check_max(L, 2);
  int into = reply_into(L, 3);
  tide__openai_parse(L, s, n, max, into);
  return 1;
}

int tide__openai_parse(lua_State *L, const char *s, size_t n, size_t max, int into) {
  /* One parser per Lua state serves every call (a scan never yields, and
  ** no Lua runs during one): no userdata and no finalizer per reply. Its
  ** buffers are freed after each call, and by __gc should something
  ** raise. The caller keeps the body anchored. */
  int top = lua_gettop(L);
  openai_stream *st;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &parse_key) == LUA_TUSERDATA) {
    st = ((stream_ud *)lua_touserdata(L, -1))->st;
    if (st->busy)
      stream_reuse(st, max); /* a call that raised left it as it was */
    else
      st->sse.max = st->calls.max = max; /* emptied by the last call */
  } else {
    lua_pop(L, 1);
    st = parser_of(L, new_stream(L, max));
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &parse_key);
  }
  st->busy = 1;
  st->whole = 1;
  scanner p = {s, n, 0, 0, NULL, 0, st};
  int object, ok = 0;
  int rc = scan_event(&p, &object);
  if (rc == J_NOMEM) {
    stream_free(st);
    return luaL_error(L, "not enough memory");
  }
  event_state *ev = &st->ev;
  if (rc == J_OK && object && (ev->err_kind == V_NONE || ev->err_kind == V_NULL) &&
      ev->choice_table && ev->delta_table) {
    ok = 1;
    for (size_t i = 0; ev->has_calls && i < ev->ncalls; i++) {
      const pending_call *c = &st->pending[i];
      if (!c->is_table || !c->has_function ||
          (c->args_kind != V_STRING && c->args_kind != V_NONE)) {
        ok = 0;
        break;
      }
    }
  }
  if (ok) {
    feed_ctx fc = {L, st, 0, 0, 0};
    tide_sse_event e = {0};
    e.data = s;
    e.data_len = n;
    if (apply_event(&fc, &e)) ok = 0; /* its error is on the stack: dropped */
    if (fc.nomem) {
      stream_free(st);
      return luaL_error(L, "not enough memory");
    }
  }
  lua_settop(L, top); /* the parser's userdata, and an error apply_event left */
  if (ok) {
    st->done = 1;
    push_reply(L, st, into);
  } else {
    lua_pushnil(L);
  }
  stream_reuse(st, max); /* and no longer busy */
  return ok;
}

static int l_tostring(lua_State *L) {
  stream_ud *u = luaL_checkudata(L, 1, STREAM_MT);
  if (u->closed)
    lua_pushliteral(L, "tide.openai_stream (closed)");
  else
    lua_pushfstring(L, "tide.openai_stream (%p)", (void *)u);
  return 1;
}

/// Registers core.openai_stream into the module table at the top of the
/// stack and (re)creates the "tide.openai_stream" metatable.
void tide__open_stream(lua_State *L) {
  static const luaL_Reg meta[] = {{"__gc", l_close},
                                  {"__close", l_close},
                                  {"__tostring", l_tostring},
                                  {NULL, NULL}};
  static const luaL_Reg methods[] = {
      {"feed", l_feed}, {"finish", l_finish}, {"close", l_close}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"openai_stream", l_openai_stream},
                                 {"openai_parse", l_openai_parse},
                                 {NULL, NULL}};
  tide__register_type(L, STREAM_MT, meta, methods);
  luaL_setfuncs(L, fns, 0);
}
