/*
** sse.c -- an incremental Server-Sent Events parser.
**
** Follows the WHATWG EventSource "interpret the stream" rules: lines end with
** CRLF, LF or CR; a CR that ends one chunk and an LF that starts the next are a
** single line break; "data" lines are joined with "\n"; one space after the
** colon is dropped; ':' starts a comment; a blank line dispatches the pending
** event. The result of feeding a stream does not depend on where it was cut
** into chunks.
**
** The parser owns three malloc'ed buffers (the partial line, the pending data,
** the pending event type) plus the last event id. They hang off the userdata,
** so a Lua error raised while an event table is being built leaves nothing to
** leak: the collector frees them through the shared __gc/__close function.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

#define SSE_MT "tide.sse"

/* Default cap on one event's data. Provider stream events are a few hundred
** bytes; the cap exists so that a broken or hostile server cannot make the
** parser buffer without bound. */
#define SSE_DEFAULT_MAX (8 * 1024 * 1024)

/* A line may be longer than the data it carries by its field name, colon and
** space ("data: "); allow that much, and a little more, over the data cap. */
#define SSE_LINE_SLACK 64

typedef tide_buf sse_buf;

typedef struct sse_parser {
  sse_buf line;  /* the unterminated tail of the last chunk */
  sse_buf data;  /* "data" values so far, each followed by '\n' */
  sse_buf event; /* the "event" field of the pending event */
  sse_buf id;    /* last event id: it persists across events, as specified */
  size_t max;    /* cap on one event's data */
  int cr;        /* the last chunk ended with CR: skip one LF at the next */
  int started;   /* a line has been completed (the BOM check is done) */
  int failed;    /* cap exceeded; the error is uservalue 1 */
  int closed;
} sse_parser;

/* -------------------------------------------------------------- buffers -- */

static void buf_free(sse_buf *b) { tide__buf_free(b); }

/* Appends n bytes. The buffer belongs to the userdata, so raising a memory
** error here leaves it consistent and owned. */
static void buf_add(lua_State *L, sse_buf *b, const char *s, size_t n) {
  if (tide__buf_add(b, s, n) != 0) luaL_error(L, "not enough memory");
}

static void buf_set(lua_State *L, sse_buf *b, const char *s, size_t n) {
  b->len = 0;
  buf_add(L, b, s, n);
}

/* --------------------------------------------------------------- parsing -- */

static sse_parser *check_parser(lua_State *L) {
  sse_parser *p = luaL_checkudata(L, 1, SSE_MT);
  if (p->closed) luaL_error(L, "attempt to use a closed sse parser");
  return p;
}

static size_t line_limit(const sse_parser *p) {
  return p->max > SIZE_MAX - SSE_LINE_SLACK ? SIZE_MAX : p->max + SSE_LINE_SLACK;
}

/* The limit for a line still being buffered: the first line of the stream
** may carry a byte order mark that does not count, and a chunked stream must
** fail exactly when the same stream in one piece would. */
static size_t pending_limit(const sse_parser *p) {
  size_t lim = line_limit(p);
  return p->started || lim > SIZE_MAX - 3 ? lim : lim + 3;
}

/* Records the StreamTooLarge error as uservalue 1 so that every later call
** returns the same error, and drops the buffers: the stream is unusable. */
static int fail_too_large(lua_State *L, sse_parser *p, const char *what) {
  char cap[32];
  snprintf(cap, sizeof cap, "%zu", p->max);
  tide__push_error(L, "StreamTooLarge", "SSE %s exceeds the limit of %s bytes",
                   what, cap);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, 1, 1);
  p->failed = 1;
  buf_free(&p->line);
  buf_free(&p->data);
  buf_free(&p->event);
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

/* Appends the pending event to the array at index `out`, then resets the
** per-event buffers. An event without data is not dispatched. */
static void dispatch(lua_State *L, sse_parser *p, int out) {
  if (p->data.len == 0) {
    p->event.len = 0;
    return;
  }
  size_t n = p->data.len - 1; /* drop the '\n' after the last value */
  lua_createtable(L, 0, 4);
  if (p->event.len)
    lua_pushlstring(L, p->event.p, p->event.len);
  else
    lua_pushliteral(L, "message");
  lua_setfield(L, -2, "event");
  lua_pushlstring(L, p->data.p, n);
  lua_setfield(L, -2, "data");
  if (p->id.len) {
    lua_pushlstring(L, p->id.p, p->id.len);
    lua_setfield(L, -2, "id");
  }
  if (n == 6 && memcmp(p->data.p, "[DONE]", 6) == 0) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "done");
  }
  lua_rawseti(L, out, (lua_Integer)lua_rawlen(L, out) + 1);
  p->data.len = 0;
  p->event.len = 0;
}

static int field_is(const char *s, size_t n, const char *name) {
  size_t k = strlen(name);
  return n == k && memcmp(s, name, k) == 0;
}

/* Interprets one complete line (without its terminator). Returns 0, or -1
** with nil, err pushed when the line or the event's data is too large. */
static int process_line(lua_State *L, sse_parser *p, const char *s, size_t n,
                        int out) {
  if (!p->started) {
    p->started = 1;
    if (n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) s += 3, n -= 3;
  }
  if (n > line_limit(p)) return fail_too_large(L, p, "line"), -1;
  if (n == 0) {
    dispatch(L, p, out);
    return 0;
  }
  if (s[0] == ':') return 0; /* comment */
  const char *colon = memchr(s, ':', n);
  size_t flen = colon ? (size_t)(colon - s) : n;
  const char *v = colon ? colon + 1 : s + n;
  size_t vlen = (size_t)(s + n - v);
  if (vlen && v[0] == ' ') v++, vlen--;
  if (field_is(s, flen, "data")) {
    if (p->data.len + vlen > p->max) return fail_too_large(L, p, "event"), -1;
    buf_add(L, &p->data, v, vlen);
    buf_add(L, &p->data, "\n", 1);
  } else if (field_is(s, flen, "event")) {
    buf_set(L, &p->event, v, vlen);
  } else if (field_is(s, flen, "id")) {
    if (memchr(v, '\0', vlen) == NULL) buf_set(L, &p->id, v, vlen);
  }
  /* "retry" and unknown fields are ignored: the caller owns reconnection. */
  return 0;
}

/* ------------------------------------------------------------- bindings -- */

/* core.sse_parser([max_event_bytes]) -> parser */
static int l_sse_parser(lua_State *L) {
  lua_Integer max = luaL_optinteger(L, 1, SSE_DEFAULT_MAX);
  luaL_argcheck(L, max > 0, 1, "must be positive");
  sse_parser *p = lua_newuserdatauv(L, sizeof *p, 1);
  memset(p, 0, sizeof *p);
  p->max = (lua_Unsigned)max > SIZE_MAX ? SIZE_MAX : (size_t)max;
  luaL_setmetatable(L, SSE_MT);
  return 1;
}

/* p:feed(chunk) -> events | nil, err */
static int l_feed(lua_State *L) {
  sse_parser *p = check_parser(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (p->failed) {
    lua_pushnil(L);
    lua_getiuservalue(L, 1, 1);
    return 2;
  }
  lua_settop(L, 2);
  lua_newtable(L);
  size_t i = 0;
  if (p->cr && n > 0) {
    if (s[0] == '\n') i = 1;
    p->cr = 0;
  }
  while (i < n) {
    size_t j = i;
    while (j < n && s[j] != '\n' && s[j] != '\r') j++;
    if (j == n) { /* unterminated: keep it for the next chunk */
      if (p->line.len + (n - i) > pending_limit(p))
        return fail_too_large(L, p, "line");
      buf_add(L, &p->line, s + i, n - i);
      break;
    }
    int rc;
    if (p->line.len) { /* the line began in an earlier chunk */
      if (p->line.len + (j - i) > pending_limit(p))
        return fail_too_large(L, p, "line");
      buf_add(L, &p->line, s + i, j - i);
      size_t len = p->line.len;
      p->line.len = 0;
      rc = process_line(L, p, p->line.p, len, 3);
    } else {
      rc = process_line(L, p, s + i, j - i, 3);
    }
    if (rc < 0) return 2;
    if (s[j] == '\r') {
      if (j + 1 == n)
        p->cr = 1;
      else if (s[j + 1] == '\n')
        j++;
    }
    i = j + 1;
  }
  return 1;
}

/* p:finish() -> true when the stream ended on an event boundary. Whatever is
** pending is discarded, as the specification says of an unterminated event. */
static int l_finish(lua_State *L) {
  sse_parser *p = check_parser(L);
  int clean = !p->failed && p->line.len == 0 && p->data.len == 0;
  p->line.len = p->data.len = p->event.len = 0;
  p->cr = 0;
  lua_pushboolean(L, clean);
  return 1;
}

/* __gc, __close and p:close(): idempotent. */
static int l_close(lua_State *L) {
  sse_parser *p = luaL_checkudata(L, 1, SSE_MT);
  buf_free(&p->line);
  buf_free(&p->data);
  buf_free(&p->event);
  buf_free(&p->id);
  p->closed = 1;
  return 0;
}

static int l_tostring(lua_State *L) {
  sse_parser *p = luaL_checkudata(L, 1, SSE_MT);
  if (p->closed)
    lua_pushliteral(L, "tide.sse (closed)");
  else
    lua_pushfstring(L, "tide.sse (%p)", (void *)p);
  return 1;
}

/// Registers core.sse_parser into the module table at the top of the stack
/// and (re)creates the "tide.sse" metatable.
void tide__open_sse(lua_State *L) {
  static const luaL_Reg meta[] = {{"__gc", l_close},
                                  {"__close", l_close},
                                  {"__tostring", l_tostring},
                                  {NULL, NULL}};
  static const luaL_Reg methods[] = {
      {"feed", l_feed}, {"finish", l_finish}, {"close", l_close}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"sse_parser", l_sse_parser}, {NULL, NULL}};
  luaL_newmetatable(L, SSE_MT);
  luaL_setfuncs(L, meta, 0);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_setfuncs(L, fns, 0);
}
