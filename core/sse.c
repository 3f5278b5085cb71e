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
** The parser proper (tide__sse_feed) never raises and calls back once per
** event: core.sse_parser builds event tables from it, and the reply parsers
** in C (openai.c, anthropic.c, responses.c, through reply.c) read events in
** place. The parser owns three malloc'ed buffers (the partial line, the
** pending data, the pending event type) plus the last event id. They hang
** off the userdata, so a Lua error raised while an event table is being
** built leaves nothing to leak: the collector frees them through the shared
** __gc/__close function.
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

typedef struct sse_parser {
  tide_sse sse;
  int failed; /* cap exceeded; the error is uservalue 1 */
  int closed;
} sse_parser;

/* --------------------------------------------------------------- parsing -- */

static void free_pending(tide_sse *p) {
  tide__buf_free(&p->line);
  tide__buf_free(&p->data);
  tide__buf_free(&p->event);
}

static int buf_set(tide_buf *b, const char *s, size_t n) {
  b->len = 0;
  return tide__buf_add(b, s, n);
}

static size_t line_limit(const tide_sse *p) {
  return p->max > SIZE_MAX - SSE_LINE_SLACK ? SIZE_MAX : p->max + SSE_LINE_SLACK;
}

/* The limit for a line still being buffered: the first line of the stream
** may carry a byte order mark that does not count, and a chunked stream must
** fail exactly when the same stream in one piece would. */
static size_t pending_limit(const tide_sse *p) {
  size_t lim = line_limit(p);
  return p->started || lim > SIZE_MAX - 3 ? lim : lim + 3;
}

/* A cap was exceeded: the stream is unusable, so its buffers go now. */
static int too_large(tide_sse *p, int code) {
  free_pending(p);
  return code;
}

/* Hands the pending event to cb, then resets the per-event buffers (before
** cb runs, as far as the lengths go, so that a callback that raises leaves a
** parser that has dispatched the event). An event without data is not
** dispatched. */
static int dispatch(tide_sse *p, tide_sse_cb cb, void *ud) {
  if (p->data.len == 0) {
    p->event.len = 0;
    return 0;
  }
  tide_sse_event ev;
  ev.data = p->data.p;
  ev.data_len = p->data.len - 1; /* drop the '\n' after the last value */
  if (p->event.len) {
    ev.event = p->event.p;
    ev.event_len = p->event.len;
  } else {
    ev.event = "message";
    ev.event_len = 7;
  }
  ev.id = p->id.len ? p->id.p : NULL;
  ev.id_len = p->id.len;
  ev.done = ev.data_len == 6 && memcmp(ev.data, "[DONE]", 6) == 0;
  p->data.len = 0;
  p->event.len = 0;
  return cb(ud, &ev);
}

static int field_is(const char *s, size_t n, const char *name) {
  size_t k = strlen(name);
  return n == k && memcmp(s, name, k) == 0;
}

/* Interprets one complete line (without its terminator). */
static int process_line(tide_sse *p, const char *s, size_t n, tide_sse_cb cb,
                        void *ud) {
  if (!p->started) {
    p->started = 1;
    if (n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) s += 3, n -= 3;
  }
  if (n > line_limit(p)) return too_large(p, TIDE_SSE_LINE_BIG);
  if (n == 0) return dispatch(p, cb, ud);
  if (s[0] == ':') return 0; /* comment */
  const char *colon = memchr(s, ':', n);
  size_t flen = colon ? (size_t)(colon - s) : n;
  const char *v = colon ? colon + 1 : s + n;
  size_t vlen = (size_t)(s + n - v);
  if (vlen && v[0] == ' ') v++, vlen--;
  if (field_is(s, flen, "data")) {
    if (p->data.len + vlen > p->max) return too_large(p, TIDE_SSE_EVENT_BIG);
    if (tide__buf_add(&p->data, v, vlen) != 0 ||
        tide__buf_add(&p->data, "\n", 1) != 0)
      return TIDE_SSE_NOMEM;
  } else if (field_is(s, flen, "event")) {
    if (buf_set(&p->event, v, vlen) != 0) return TIDE_SSE_NOMEM;
  } else if (field_is(s, flen, "id")) {
    if (memchr(v, '\0', vlen) == NULL && buf_set(&p->id, v, vlen) != 0)
      return TIDE_SSE_NOMEM;
  } else if (field_is(s, flen, "retry")) {
    /* Only ASCII digits set the reconnection time (anything else is
    ** ignored); it is kept for the caller, who owns reconnection. */
    long ms = 0;
    size_t k = 0;
    for (; k < vlen && v[k] >= '0' && v[k] <= '9'; k++)
      if (ms <= 86400000L) ms = ms * 10 + (v[k] - '0'); /* (saturates past a day) */
    if (vlen > 0 && k == vlen) {
      p->retry_ms = ms > 86400000L ? 86400000L : ms;
      p->has_retry = 1;
    }
  }
  /* Unknown fields are ignored. */
  return 0;
}

int tide__sse_feed(tide_sse *p, const char *s, size_t n, tide_sse_cb cb,
                   void *ud) {
  size_t i = 0;
  if (p->cr && n > 0) {
    if (s[0] == '\n') i = 1;
    p->cr = 0;
  }
  while (i < n) {
    /* The line ends at the first CR or LF; memchr scans a word at a time. */
    const char *lf = memchr(s + i, '\n', n - i);
    size_t j = lf ? (size_t)(lf - s) : n;
    const char *cr = memchr(s + i, '\r', j - i);
    if (cr) j = (size_t)(cr - s);
    if (j == n) { /* unterminated: keep it for the next chunk */
      if (p->line.len + (n - i) > pending_limit(p))
        return too_large(p, TIDE_SSE_LINE_BIG);
      if (tide__buf_add(&p->line, s + i, n - i) != 0) return TIDE_SSE_NOMEM;
      break;
    }
    /* The terminator is consumed before the line is processed, so that a
    ** callback that stops the feed (or raises) leaves a consistent parser. */
    size_t next = j + 1;
    if (s[j] == '\r') {
      if (j + 1 == n)
        p->cr = 1;
      else if (s[j + 1] == '\n')
        next = j + 2;
    }
    int rc;
    if (p->line.len) { /* the line began in an earlier chunk */
      if (p->line.len + (j - i) > pending_limit(p))
        return too_large(p, TIDE_SSE_LINE_BIG);
      if (tide__buf_add(&p->line, s + i, j - i) != 0) return TIDE_SSE_NOMEM;
      size_t len = p->line.len;
      p->line.len = 0;
      rc = process_line(p, p->line.p, len, cb, ud);
    } else {
      rc = process_line(p, s + i, j - i, cb, ud);
    }
    if (rc != 0) return rc;
    i = next;
  }
  return 0;
}

int tide__sse_finish(tide_sse *p) {
  int clean = p->line.len == 0 && p->data.len == 0;
  p->line.len = p->data.len = p->event.len = 0;
  p->cr = 0;
  return clean;
}

void tide__sse_free(tide_sse *p) {
  free_pending(p);
  tide__buf_free(&p->id);
}

/* ------------------------------------------------------------- bindings -- */

static sse_parser *check_parser(lua_State *L) {
  sse_parser *p = tide__checkudata(L, 1, SSE_MT);
  if (p->closed) luaL_error(L, "attempt to use a closed sse parser");
  return p;
}

/* core.sse_parser([max_event_bytes]) -> parser */
static int l_sse_parser(lua_State *L) {
  lua_Integer max = luaL_optinteger(L, 1, SSE_DEFAULT_MAX);
  luaL_argcheck(L, max > 0, 1, "must be positive");
  sse_parser *p = lua_newuserdatauv(L, sizeof *p, 1);
  memset(p, 0, sizeof *p);
  p->sse.max = (lua_Unsigned)max > SIZE_MAX ? SIZE_MAX : (size_t)max;
  luaL_setmetatable(L, SSE_MT);
  return 1;
}

/* Appends one event table to the array at index 3. */
static int push_event(void *ud, const tide_sse_event *ev) {
  lua_State *L = ud;
  lua_createtable(L, 0, 4);
  lua_pushlstring(L, ev->event, ev->event_len);
  lua_setfield(L, -2, "event");
  lua_pushlstring(L, ev->data, ev->data_len);
  lua_setfield(L, -2, "data");
  if (ev->id) {
    lua_pushlstring(L, ev->id, ev->id_len);
    lua_setfield(L, -2, "id");
  }
  if (ev->done) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "done");
  }
  lua_rawseti(L, 3, (lua_Integer)lua_rawlen(L, 3) + 1);
  return 0;
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
  int rc = tide__sse_feed(&p->sse, s, n, push_event, L);
  if (rc == TIDE_SSE_NOMEM) return luaL_error(L, "not enough memory");
  if (rc == TIDE_SSE_LINE_BIG || rc == TIDE_SSE_EVENT_BIG) {
    /* Every later call returns the same error (uservalue 1). */
    char cap[32];
    snprintf(cap, sizeof cap, "%zu", p->sse.max);
    p->failed = 1;
    tide__push_error(L, "StreamTooLarge", "SSE %s exceeds the limit of %s bytes",
                     rc == TIDE_SSE_LINE_BIG ? "line" : "event", cap);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 1, 1);
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  return 1;
}

/* p:last_id() -> the last event id the stream set, or nil (an id set by
** an event without data counts: the spec's priming event is one). */
static int l_last_id(lua_State *L) {
  sse_parser *p = check_parser(L);
  if (p->sse.id.len == 0) return lua_pushnil(L), 1;
  lua_pushlstring(L, p->sse.id.p, p->sse.id.len);
  return 1;
}

/* p:retry() -> the reconnection time in ms the stream's last valid "retry"
** field gave (capped at a day), or nil. */
static int l_retry(lua_State *L) {
  sse_parser *p = check_parser(L);
  if (!p->sse.has_retry) return lua_pushnil(L), 1;
  lua_pushinteger(L, p->sse.retry_ms);
  return 1;
}

/* p:finish() -> true when the stream ended on an event boundary. Whatever is
** pending is discarded, as the specification says of an unterminated event. */
static int l_finish(lua_State *L) {
  sse_parser *p = check_parser(L);
  int clean = tide__sse_finish(&p->sse) && !p->failed;
  lua_pushboolean(L, clean);
  return 1;
}

/* __gc, __close and p:close(): idempotent. */
static int l_close(lua_State *L) {
  sse_parser *p = tide__checkudata(L, 1, SSE_MT);
  tide__sse_free(&p->sse);
  p->closed = 1;
  return 0;
}

static int l_tostring(lua_State *L) {
  sse_parser *p = tide__checkudata(L, 1, SSE_MT);
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
      {"feed", l_feed}, {"finish", l_finish}, {"last_id", l_last_id}, {"retry", l_retry},
      {"close", l_close}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"sse_parser", l_sse_parser}, {NULL, NULL}};
  tide__register_type(L, SSE_MT, meta, methods);
  luaL_setfuncs(L, fns, 0);
}
