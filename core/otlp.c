/*
** otlp.c -- the protobuf bytes of OpenTelemetry spans (OTLP/HTTP, what
** tide.tracing exports): a span's fields, its attributes and events, as
** opentelemetry/proto's trace/v1 and common/v1 number them. Encoded here
** rather than in Lua because a span is a few dozen tiny fields, each a
** string in Lua: a traced round trip spent more on its two spans than on
** the round trip itself. tide.tracing keeps the envelope (resource, scope),
** written once per batch.
**
** A nested message's length comes before it; it is written in one byte
** first and the message moved along when it needs more (rarely: most are
** under 128 bytes).
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

/* A string attribute is cut at this many bytes (a tool's whole output,
** captured): receivers refuse huge attributes, and a span is not a log. */
#define ATTR_MAX (64 * 1024)
#define ATTR_DEPTH 8 /* lists in lists, as far as attributes nest */

typedef struct otlp {
  lua_State *L;
  tide_buf *b;
} otlp;

static void nomem(otlp *o) {
  lua_pushliteral(o->L, "not enough memory");
  lua_error(o->L);
}

/* tide__buf_add, inlined: a span is many writes of a byte or two. */
static void add(otlp *o, const void *s, size_t n) {
  tide_buf *b = o->b;
  if (b->cap - b->len <= n && tide__buf_reserve(b, n)) nomem(o);
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void add_byte(otlp *o, unsigned char c) { add(o, &c, 1); }

/* A varint; a negative int64 takes ten bytes, as protobuf's int64 does. */
static void add_varint(otlp *o, uint64_t v) {
  unsigned char tmp[10];
  size_t n = 0;
  do {
    unsigned char c = v & 0x7f;
    v >>= 7;
    tmp[n++] = v ? (c | 0x80) : c;
  } while (v);
  add(o, tmp, n);
}

/* The key of field `field` with wire type `wt` (every field OTLP uses here
** is below 16: one byte). */
static void add_key(otlp *o, int field, int wt) { add_byte(o, (unsigned char)(field << 3 | wt)); }

static void add_fixed64(otlp *o, int field, uint64_t v) {
  unsigned char tmp[8];
  for (int i = 0; i < 8; i++) tmp[i] = (unsigned char)(v >> (8 * i));
  add_key(o, field, 1);
  add(o, tmp, 8);
}

static void add_bytes(otlp *o, int field, const char *s, size_t n) {
  add_key(o, field, 2);
  add_varint(o, n);
  add(o, s, n);
}

/* Opens a length-delimited field: returns where its one-byte length went. */
static size_t open_field(otlp *o, int field) {
  add_key(o, field, 2);
  add_byte(o, 0);
  return o->b->len;
}

/* Closes the field opened at `at`: its length written, the bytes moved
** along when the length takes more than one byte. */
static void close_field(otlp *o, size_t at) {
  size_t n = o->b->len - at;
  if (n < 0x80) {
    o->b->p[at - 1] = (char)n;
    return;
  }
  unsigned char tmp[10];
  size_t k = 0;
  for (size_t v = n; v; v >>= 7) tmp[k++] = (unsigned char)((v & 0x7f) | (v >> 7 ? 0x80 : 0));
  if (tide__buf_reserve(o->b, k - 1)) nomem(o);
  memmove(o->b->p + at - 1 + k, o->b->p + at, n);
  memcpy(o->b->p + at - 1, tmp, k);
  o->b->len += k - 1;
  o->b->p[o->b->len] = '\0';
}

/* The length of the valid UTF-8 sequence at s (n bytes left), or 0: the
** well-formed sequences of Unicode's table 3-7 (no overlong forms, no
** surrogates, nothing past U+10FFFF), what protobuf's string takes. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  if (c < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) len = 2;
  else if (c == 0xe0) len = 3, lo = 0xa0;
  else if (c == 0xed) len = 3, hi = 0x9f;
  else if (c >= 0xe1 && c <= 0xef) len = 3;
  else if (c == 0xf0) len = 4, lo = 0x90;
  else if (c == 0xf4) len = 4, hi = 0x8f;
  else if (c >= 0xf1 && c <= 0xf3) len = 4;
  else return 0;
  if (n < len || s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if ((s[i] & 0xc0) != 0x80) return 0;
  return len;
}

/* A string field as protobuf takes one: valid UTF-8, each byte that is
** not a U+FFFD, at most ATTR_MAX bytes (cut at a character's start). */
static void add_text(otlp *o, int field, const char *str, size_t n) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0, len;
  for (;;) { /* (ASCII a byte at a time; the rest a character at a time) */
    while (i < n && i < ATTR_MAX && s[i] < 0x80) i++;
    if (i >= n || i >= ATTR_MAX || (len = utf8_seq(s + i, n - i)) == 0 || i + len > ATTR_MAX) break;
    i += len;
  }
  if (i == n) { /* the usual case: valid and short as it is */
    add_bytes(o, field, str, n);
    return;
  }
  size_t at = open_field(o, field);
  add(o, s, i);
  size_t out = i;
  while (i < n) {
    len = utf8_seq(s + i, n - i);
    size_t w = len ? len : 3;
    if (out + w > ATTR_MAX) break;
    if (len) add(o, s + i, len);
    else add(o, "\xef\xbf\xbd", 3);
    out += w;
    i += len ? len : 1;
  }
  close_field(o, at);
}

/* AnyValue { string 1, bool 2, int64 3, double 4, ArrayValue 5 } of the
** value at idx; a list is an ArrayValue { repeated AnyValue values = 1 }
** of its values (ipairs), anything else its tostring. */
static void add_any(otlp *o, int idx, int depth) {
  lua_State *L = o->L;
  switch (lua_type(L, idx)) {
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    add_text(o, 1, s, n);
    return;
  }
  case LUA_TBOOLEAN:
    add_key(o, 2, 0);
    add_varint(o, (uint64_t)lua_toboolean(L, idx));
    return;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      add_key(o, 3, 0);
      add_varint(o, (uint64_t)lua_tointeger(L, idx));
    } else {
      double d = (double)lua_tonumber(L, idx);
      uint64_t bits;
      memcpy(&bits, &d, sizeof bits);
      add_fixed64(o, 4, bits);
    }
    return;
  case LUA_TTABLE:
    if (depth < ATTR_DEPTH) {
      luaL_checkstack(L, 2, "tide.tracing: attribute nested too deep");
      size_t arr = open_field(o, 5);
      for (lua_Integer i = 1; lua_geti(L, idx, i) != LUA_TNIL; i++) {
        size_t v = open_field(o, 1);
        add_any(o, lua_gettop(L), depth + 1);
        close_field(o, v);
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
      close_field(o, arr);
      return;
    }
    break;
  default: break;
  }
  size_t n;
  const char *s = luaL_tolstring(L, idx, &n);
  add_text(o, 1, s, n);
  lua_pop(L, 1);
}

typedef struct attr_key {
  const char *s;
  size_t n;
  int value; /* the value's stack index */
} attr_key;

static int key_cmp(const void *a, const void *b) {
  const attr_key *x = a, *y = b;
  int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
  return c ? c : (x->n > y->n) - (x->n < y->n);
}

/* The attributes of table t, each a KeyValue { key 1, AnyValue value 2 }
** in field `field`, in key order (the same attributes give the same
** bytes). Keys that are not strings are skipped. */
static void add_attributes(otlp *o, int t, int field) {
  lua_State *L = o->L;
  int base = lua_gettop(L);
  size_t n = 0;
  luaL_checkstack(L, 3, "tide.tracing: too many attributes");
  lua_pushnil(L);
  while (lua_next(L, t)) { /* each key and value left on the stack, the key copied for next */
    if (lua_type(L, -2) != LUA_TSTRING) {
      lua_pop(L, 1);
      continue;
    }
    luaL_checkstack(L, 3, "tide.tracing: too many attributes");
    lua_pushvalue(L, -2);
    n++;
  }
  attr_key small[32], *keys = small;
  if (n > 32) keys = lua_newuserdatauv(L, n * sizeof *keys, 0); /* (freed by the collector) */
  for (size_t i = 0; i < n; i++) {
    keys[i].s = lua_tolstring(L, base + 1 + 2 * (int)i, &keys[i].n);
    keys[i].value = base + 2 + 2 * (int)i;
  }
  /* (a span has a dozen attributes: sorted by insertion, as qsort's merge
  ** sort allocates; many, by qsort) */
  if (n > 32) qsort(keys, n, sizeof *keys, key_cmp);
  for (size_t i = 1; i < n && n <= 32; i++) {
    attr_key k = keys[i];
    size_t j = i;
    for (; j > 0 && key_cmp(&keys[j - 1], &k) > 0; j--) keys[j] = keys[j - 1];
    keys[j] = k;
  }
  for (size_t i = 0; i < n; i++) {
    size_t kv = open_field(o, field);
    add_text(o, 1, keys[i].s, keys[i].n);
    size_t v = open_field(o, 2);
    add_any(o, keys[i].value, 0);
    close_field(o, v);
    close_field(o, kv);
  }
  lua_settop(L, base);
}

/* The bytes of a hex id (32 or 16 digits) in field `field`; an id that is
** not hex gives what its digits give, as far as they go. */
static void add_id(otlp *o, int field, const char *h, size_t n) {
  unsigned char out[16];
  size_t k = 0;
  for (size_t i = 0; i + 1 < n && k < sizeof out; i += 2) {
    int v = 0;
    for (int j = 0; j < 2; j++) {
      char c = h[i + j];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : 0;
      v = v << 4 | d;
    }
    out[k++] = (unsigned char)v;
  }
  add_bytes(o, field, (const char *)out, k);
}

static const char *field_string(otlp *o, int t, const char *name, size_t *n) {
  lua_getfield(o->L, t, name);
  const char *s = lua_tolstring(o->L, -1, n); /* (stays on the stack until the caller's settop) */
  return s;
}

static uint64_t field_u64(otlp *o, int t, const char *name) {
  lua_getfield(o->L, t, name);
  uint64_t v = (uint64_t)lua_tointeger(o->L, -1);
  lua_pop(o->L, 1);
  return v;
}

/* Span { trace_id 1, span_id 2, parent_span_id 4, name 5, kind 6,
** start 7, end 8, attributes 9, events 11, status 15 } of the table at t. */
static void add_span(otlp *o, int t) {
  lua_State *L = o->L;
  int base = lua_gettop(L);
  size_t n;
  const char *s = field_string(o, t, "trace_id", &n);
  add_id(o, 1, s ? s : "", s ? n : 0);
  s = field_string(o, t, "span_id", &n);
  add_id(o, 2, s ? s : "", s ? n : 0);
  s = field_string(o, t, "parent_id", &n);
  if (s) add_id(o, 4, s, n);
  s = field_string(o, t, "name", &n);
  add_text(o, 5, s ? s : "", s ? n : 0);
  lua_settop(L, base);
  add_key(o, 6, 0);
  add_varint(o, field_u64(o, t, "kind"));
  add_fixed64(o, 7, field_u64(o, t, "start_ns"));
  add_fixed64(o, 8, field_u64(o, t, "end_ns"));
  if (lua_getfield(L, t, "attributes") == LUA_TTABLE) add_attributes(o, lua_gettop(L), 9);
  lua_settop(L, base);
  if (lua_getfield(L, t, "events") == LUA_TTABLE) {
    int evs = lua_gettop(L);
    for (lua_Integer i = 1; lua_geti(L, evs, i) == LUA_TTABLE; i++) {
      int ev = lua_gettop(L);
      size_t at = open_field(o, 11); /* Event { time 1, name 2, attributes 3 } */
      add_fixed64(o, 1, field_u64(o, ev, "time_ns"));
      s = field_string(o, ev, "name", &n);
      add_text(o, 2, s ? s : "", s ? n : 0);
      lua_pop(L, 1);
      if (lua_getfield(L, ev, "attributes") == LUA_TTABLE) add_attributes(o, lua_gettop(L), 3);
      lua_settop(L, ev - 1);
      close_field(o, at);
    }
  }
  lua_settop(L, base);
  s = field_string(o, t, "error", &n);
  if (s) { /* Status { message 2, code 3 (2: ERROR) } */
    size_t at = open_field(o, 15);
    add_text(o, 2, s, n);
    add_key(o, 3, 0);
    add_varint(o, 2);
    close_field(o, at);
  }
  lua_settop(L, base);
}

static int push_buf(lua_State *L, tide_buf *b) {
  lua_pushlstring(L, b->p ? b->p : "", b->len);
  tide__buf_free(b);
  return 1;
}

/* core.otlp_spans(spans) -> the bytes of `spans` (a list of span tables,
** see tide.tracing) as the repeated Span field 2 of a ScopeSpans. */
static int l_otlp_spans(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  otlp o = {L, tide__buf_push(L)};
  for (lua_Integer i = 1; lua_geti(L, 1, i) == LUA_TTABLE; i++) {
    size_t at = open_field(&o, 2);
    add_span(&o, 3);
    close_field(&o, at);
    lua_pop(L, 1);
  }
  return push_buf(L, o.b);
}

/* core.otlp_attributes(field, attrs) -> the bytes of attrs as repeated
** KeyValue field `field` (a Resource's attributes are field 1). */
static int l_otlp_attributes(lua_State *L) {
  lua_Integer field = luaL_checkinteger(L, 1);
  luaL_argcheck(L, field > 0 && field < 16, 1, "a field number from 1 to 15");
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  otlp o = {L, tide__buf_push(L)};
  add_attributes(&o, 2, (int)field);
  return push_buf(L, o.b);
}

/// Registers core.otlp_spans and core.otlp_attributes into the module
/// table at the top of the stack.
void tide__open_otlp(lua_State *L) {
  static const luaL_Reg fns[] = {{"otlp_spans", l_otlp_spans}, {"otlp_attributes", l_otlp_attributes}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
