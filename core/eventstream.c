/*
** eventstream.c -- AWS event streams (application/vnd.amazon.eventstream),
** the binary framing Bedrock streams a model's reply in, read the way
** botocore's EventStreamBuffer reads them; and what the reply parsers get
** from them: the SSE events they already know.
**
** A frame: total length and headers length (big-endian 32-bit), the CRC-32
** of those eight bytes, the headers, the payload, the CRC-32 of everything
** before it. A header: its name's length (one byte) and name, a type byte
** and a value of that type (booleans, integers of 1/2/4/8 bytes, byte
** arrays and strings with a 16-bit length, timestamps, UUIDs).
**
** Bedrock sends `:message-type` "event" with `:event-type` "chunk" and the
** payload {"bytes": "<base64 of the model's own event JSON>", "p": "..."}
** (p is padding against length side channels); or `:message-type`
** "exception" with `:exception-type` (throttlingException, ...) and the
** payload {"message": "..."}. A chunk's bytes go to the reply parser as one
** event's data; an exception as the Anthropic error event it stands for,
** so that the parser fails and classifies it as it does Anthropic's own
** (a throttling is a rate limit, an unavailable service an overload).
** Anything else is refused: a bad CRC, a length out of bounds, a header of
** an unknown type, a chunk without bytes or with bytes that are not base64.
**
** Bedrock's Converse API (ConverseStream) frames its own events instead:
** `:event-type` messageStart, contentBlockDelta ... with the event's JSON
** as the payload. The raw mode hands each frame on as it is, for the
** Converse provider's parser (core.aws_eventstream, lua/tide/provider/
** bedrock.lua): the framing is read here, once, for both.
*/
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "tide.h"

/* The prelude (two lengths and their CRC) and the message CRC. */
#define PRELUDE 12
#define OVERHEAD 16

/* The headers that matter here, pointing into the frame. */
typedef struct frame {
  const char *message_type, *event_type, *exception_type;
  size_t message_type_len, event_type_len, exception_type_len;
  const char *payload;
  size_t payload_len;
} frame;

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int bad(tide_es *p, const char *why) {
  p->why = why;
  return TIDE_ES_BAD;
}

/* Reads the headers of the frame at f (len bytes, checked): the string
** values of the three that matter; 0, or TIDE_ES_BAD. */
static int read_headers(tide_es *p, const unsigned char *h, size_t hlen, frame *f) {
  size_t i = 0;
  while (i < hlen) {
    size_t nl = h[i++];
    if (nl == 0 || i + nl + 1 > hlen) return bad(p, "a header name runs past the headers");
    const char *name = (const char *)h + i;
    i += nl;
    int type = h[i++];
    size_t vl;
    const char *value = NULL;
    switch (type) {
    case 0: case 1: vl = 0; break;      /* true, false */
    case 2: vl = 1; break;              /* byte */
    case 3: vl = 2; break;              /* short */
    case 4: vl = 4; break;              /* integer */
    case 5: case 8: vl = 8; break;      /* long, timestamp */
    case 9: vl = 16; break;             /* UUID */
    case 6: case 7:                     /* byte array, string */
      if (i + 2 > hlen) return bad(p, "a header value runs past the headers");
      vl = (size_t)h[i] << 8 | h[i + 1];
      i += 2;
      value = (const char *)h + i;
      break;
    default: return bad(p, "a header has an unknown type");
    }
    if (i + vl > hlen) return bad(p, "a header value runs past the headers");
    if (type == 7) {
      if (tide__json_key_is(name, nl, ":message-type"))
        f->message_type = value, f->message_type_len = vl;
      else if (tide__json_key_is(name, nl, ":event-type"))
        f->event_type = value, f->event_type_len = vl;
      else if (tide__json_key_is(name, nl, ":exception-type"))
        f->exception_type = value, f->exception_type_len = vl;
    }
    i += vl;
  }
  return 0;
}

/* Decodes the whole frame at s (n = its total length, checked against the
** prelude): 0 with f filled, or TIDE_ES_BAD. */
static int decode_frame(tide_es *p, const unsigned char *s, size_t n, frame *f) {
  uint32_t hlen = be32(s + 4);
  if (hlen > n - OVERHEAD) return bad(p, "the headers are longer than the frame");
  if (tide__crc32(0, s, n - 4) != be32(s + n - 4)) return bad(p, "the message's CRC does not match");
  memset(f, 0, sizeof *f);
  if (read_headers(p, s + PRELUDE, hlen, f)) return TIDE_ES_BAD;
  f->payload = (const char *)s + PRELUDE + hlen;
  f->payload_len = n - OVERHEAD - hlen;
  return 0;
}

/* ------------------------------------------------------------ payloads -- */

/* What a payload scan keeps: "bytes" or "message", decoded into the
** scratch buffer. */
typedef struct payload_scan {
  const char *want;
  int found;
  span value;
} payload_scan;

static int payload_member(tide_json *j, const char *k, size_t kl) {
  payload_scan *ps = j->ud;
  if (!ps->found && tide__json_key_is(k, kl, ps->want) && tide__json_peek(j) == '"') {
    ps->found = 1;
    return tide__json_scratch(j, &ps->value);
  }
  return tide__json_skip(j);
}

/* The string member `want` of the JSON payload: 1 with *v (in p->scratch),
** 0 when there is none, TIDE_SSE_NOMEM, or TIDE_ES_BAD when the payload
** is not a JSON object. */
static int payload_string(tide_es *p, const frame *f, const char *want, span *v) {
  payload_scan ps = {want, 0, {0, 0}};
  p->scratch.len = 0;
  tide_json j = {f->payload, f->payload_len, 0, 0, NULL, 0, &p->scratch, &p->key, &ps};
  int kind, rc = tide__json_scan_root(&j, payload_member, &kind);
  if (rc == J_NOMEM) return TIDE_SSE_NOMEM;
  if (rc != J_OK || kind != V_OBJECT) return bad(p, "a frame's payload is not a JSON object");
  *v = ps.value;
  return ps.found;
}

/* A chunk: its bytes, base64-decoded, are the event. */
static int chunk_event(tide_es *p, const frame *f, tide_sse_event *e) {
  span v;
  int rc = payload_string(p, f, "bytes", &v);
  if (rc < 0) return rc;
  if (rc == 0) return bad(p, "a chunk has no \"bytes\"");
  p->data.len = 0;
  if (tide__buf_reserve(&p->data, v.len / 4 * 3 + 4)) return TIDE_SSE_NOMEM;
  long got = tide__base64_decode(p->scratch.p + v.off, v.len, p->data.p);
  if (got < 0) return bad(p, "a chunk's \"bytes\" are not base64");
  p->data.p[got] = '\n';
  p->data.len = (size_t)got;
  e->data = p->data.p;
  e->data_len = p->data.len;
  return 0;
}

/* Bedrock's exceptions as the Anthropic error types they stand for: what
** the reply parser retries and how (anthropic.c's push_stream_error). */
static const char *const EXCEPTIONS[][2] = {
    {"throttlingException", "rate_limit_error"},
    {"serviceUnavailableException", "overloaded_error"},
    {"internalServerException", "api_error"},
    {"modelStreamErrorException", "api_error"},
    {"modelTimeoutException", "timeout_error"},
    {"validationException", "invalid_request_error"},
};

/* An exception: the error event it stands for, its message and its AWS
** type in the message. */
static int exception_event(tide_es *p, const frame *f, tide_sse_event *e) {
  const char *xt = f->exception_type ? f->exception_type : "exception";
  size_t xl = f->exception_type ? f->exception_type_len : 9;
  const char *type = "api_error";
  for (size_t i = 0; i < sizeof EXCEPTIONS / sizeof EXCEPTIONS[0]; i++)
    if (tide__json_key_is(xt, xl, EXCEPTIONS[i][0])) type = EXCEPTIONS[i][1];
  span v = {0, 0};
  int rc = f->payload_len > 0 ? payload_string(p, f, "message", &v) : 0;
  if (rc == TIDE_SSE_NOMEM) return rc;
  /* "<exception type>: <message>", quoted once (the key buffer is free
  ** once the payload's scan is done) */
  tide_buf *t = &p->key;
  t->len = 0;
  if (tide__buf_add(t, xt, xl)) return TIDE_SSE_NOMEM;
  if (rc == 1 && v.len > 0 &&
      (tide__buf_add(t, ": ", 2) || tide__buf_add(t, p->scratch.p + v.off, v.len)))
    return TIDE_SSE_NOMEM;
  /* {"type":"error","error":{"type":"<type>","message":"..."}} */
  size_t size = TIDE_LIT("{\"type\":\"error\",\"error\":{\"type\":\"") + strlen(type) +
                TIDE_LIT("\",\"message\":") + tide__json_size_quoted(t->p, t->len) + TIDE_LIT("}}") + 1;
  p->data.len = 0;
  if (tide__buf_reserve(&p->data, size)) return TIDE_SSE_NOMEM;
  char *out = p->data.p;
  size_t k = 0;
  tide__json_put(out, &k, "{\"type\":\"error\",\"error\":{\"type\":\"",
                 TIDE_LIT("{\"type\":\"error\",\"error\":{\"type\":\""));
  tide__json_put(out, &k, type, strlen(type));
  tide__json_put(out, &k, "\",\"message\":", TIDE_LIT("\",\"message\":"));
  tide__json_put_quoted(out, &k, t->p, t->len);
  tide__json_put(out, &k, "}}", 2);
  out[k] = '\n';
  p->data.len = k;
  e->data = p->data.p;
  e->data_len = k;
  return 0;
}

/* A frame as it is (the raw mode): the type in p->key, the payload in
** p->data (the frame's bytes move on before the event is handed on). */
static int raw_event(tide_es *p, const frame *f, tide_sse_event *e, int exception) {
  const char *name = exception ? f->exception_type : f->event_type;
  size_t nl = exception ? f->exception_type_len : f->event_type_len;
  if (!name) return bad(p, exception ? "an exception has no :exception-type" : "an event has no :event-type");
  p->key.len = p->data.len = 0;
  if (tide__buf_add(&p->key, name, nl) || tide__buf_add(&p->data, f->payload, f->payload_len) ||
      tide__buf_reserve(&p->data, 1))
    return TIDE_SSE_NOMEM;
  e->event = p->key.p, e->event_len = nl;
  e->data = p->data.p ? p->data.p : "", e->data_len = f->payload_len;
  e->id = exception ? "exception" : "event", e->id_len = exception ? 9 : 5;
  return 1;
}

/* The event frame f carries, made in p->data: 1 with e set, 0 when the
** frame is not one of the reply's, or a TIDE_ code. */
static int event_of(tide_es *p, const frame *f, tide_sse_event *e) {
  const char *mt = f->message_type;
  size_t ml = f->message_type_len;
  int rc;
  if (p->raw && mt && (tide__json_key_is(mt, ml, "event") || tide__json_key_is(mt, ml, "exception") ||
                       tide__json_key_is(mt, ml, "error")))
    return raw_event(p, f, e, !tide__json_key_is(mt, ml, "event"));
  if (mt && tide__json_key_is(mt, ml, "event")) {
    /* (an event of another type, should Bedrock add one, is not the reply's) */
    if (!f->event_type || !tide__json_key_is(f->event_type, f->event_type_len, "chunk")) return 0;
    rc = chunk_event(p, f, e);
  } else if (mt && (tide__json_key_is(mt, ml, "exception") || tide__json_key_is(mt, ml, "error"))) {
    rc = exception_event(p, f, e);
  } else {
    return bad(p, "a frame has no known :message-type");
  }
  return rc ? rc : 1;
}

/* ---------------------------------------------------------------- feed -- */

static void drop(tide_es *p) {
  tide__buf_free(&p->frame);
  tide__buf_free(&p->data);
  tide__buf_free(&p->scratch);
  tide__buf_free(&p->key);
}

int tide__es_feed(tide_es *p, const char *s, size_t n, tide_sse_cb cb, void *ud) {
  if (n > 0 && tide__buf_add(&p->frame, s, n)) return TIDE_SSE_NOMEM;
  int rc = 0;
  while (p->frame.len >= PRELUDE) {
    const unsigned char *b = (const unsigned char *)p->frame.p;
    size_t total = be32(b);
    /* the prelude is checked first: a length read from corrupted bytes
    ** must not make the stream wait for, or refuse, a frame that is not */
    if (tide__crc32(0, b, 8) != be32(b + 8)) {
      rc = bad(p, "the prelude's CRC does not match");
      break;
    }
    if (total < OVERHEAD) {
      rc = bad(p, "a frame is shorter than its prelude");
      break;
    }
    if (total > p->max) {
      rc = TIDE_SSE_EVENT_BIG;
      break;
    }
    if (p->frame.len < total) return 0; /* the rest comes later */
    frame f;
    tide_sse_event e = {"message", NULL, NULL, 7, 0, 0, 0};
    rc = decode_frame(p, b, total, &f);
    if (rc == 0) rc = event_of(p, &f, &e);
    if (rc < 0) break;
    /* The frame is taken out before its event is handed on: cb may raise,
    ** and the next feed must not see the frame again. */
    memmove(p->frame.p, p->frame.p + total, p->frame.len - total);
    p->frame.len -= total;
    if (rc == 1 && (rc = cb(ud, &e)) != 0) return rc;
  }
  if (rc == TIDE_ES_BAD || rc == TIDE_SSE_EVENT_BIG) drop(p);
  return rc;
}

void tide__es_reset(tide_es *p, size_t keep) {
  tide__buf_keep(&p->frame, keep);
  tide__buf_keep(&p->data, keep);
  tide__buf_keep(&p->scratch, keep);
  tide__buf_keep(&p->key, keep);
  p->why = NULL;
}

void tide__es_free(tide_es *p) { drop(p); }

/* ----------------------------------------------------------------- Lua -- */

typedef struct frames_out {
  lua_State *L;
  lua_Integer n;
} frames_out;

/* core.aws_eventstream_frames(bytes) -> the events it carries, as the reply
** parsers get them: { { data = ... }, ... }, or nil and the error. */
static int collect(void *ud, const tide_sse_event *e) {
  frames_out *o = ud;
  lua_createtable(o->L, 0, 1);
  lua_pushlstring(o->L, e->data, e->data_len);
  lua_setfield(o->L, -2, "data");
  lua_rawseti(o->L, -2, ++o->n);
  return 0;
}

static int l_frames(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  tide_es p;
  memset(&p, 0, sizeof p);
  p.max = TIDE_REPLY_DEFAULT_MAX;
  lua_newtable(L);
  frames_out o = {L, 0};
  int rc = tide__es_feed(&p, s, n, collect, &o);
  size_t left = p.frame.len;
  drop(&p);
  if (rc == TIDE_SSE_NOMEM) return luaL_error(L, "not enough memory");
  if (rc == TIDE_ES_BAD) {
    lua_pushnil(L);
    tide__push_error(L, "MalformedResponse", "invalid AWS event stream: %s", p.why);
    return 2;
  }
  if (rc == TIDE_SSE_EVENT_BIG) {
    lua_pushnil(L);
    tide__push_error(L, "MalformedResponse", "invalid AWS event stream: a frame exceeds the limit");
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)left); /* bytes of an unfinished frame */
  return 2;
}

/* core.aws_eventstream([max_bytes]) -> a decoder of an AWS event stream in
** the raw mode: d:feed(bytes) -> the frames completed, { { type, data,
** exception = true|nil }, ... }, or nil and a MalformedResponse (the decoder
** is then spent); d:pending() -> the bytes of an unfinished frame;
** d:close(). */
#define ES_MT "tide.aws_eventstream"

typedef struct es_ud {
  tide_es es;
  int spent;
} es_ud;

static int collect_raw(void *ud, const tide_sse_event *e) {
  frames_out *o = ud;
  lua_createtable(o->L, 0, 3);
  lua_pushlstring(o->L, e->event, e->event_len);
  lua_setfield(o->L, -2, "type");
  lua_pushlstring(o->L, e->data, e->data_len);
  lua_setfield(o->L, -2, "data");
  if (e->id_len == 9) { /* an exception */
    lua_pushboolean(o->L, 1);
    lua_setfield(o->L, -2, "exception");
  }
  lua_rawseti(o->L, -2, ++o->n);
  return 0;
}

static int l_es_new(lua_State *L) {
  size_t max = tide__check_max(L, 1, TIDE_REPLY_DEFAULT_MAX);
  es_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  memset(u, 0, sizeof *u);
  u->es.max = max;
  u->es.raw = 1;
  luaL_setmetatable(L, ES_MT);
  return 1;
}

static int l_es_feed(lua_State *L) {
  es_ud *u = tide__checkudata(L, 1, ES_MT);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (u->spent) return luaL_error(L, "tide.aws_eventstream: the stream was already refused");
  lua_newtable(L);
  frames_out o = {L, 0};
  int rc = tide__es_feed(&u->es, s, n, collect_raw, &o);
  if (rc == TIDE_SSE_NOMEM) return luaL_error(L, "not enough memory");
  if (rc == TIDE_ES_BAD || rc == TIDE_SSE_EVENT_BIG) {
    u->spent = 1;
    lua_pushnil(L);
    if (rc == TIDE_ES_BAD)
      tide__push_error(L, "MalformedResponse", "invalid AWS event stream: %s", u->es.why);
    else
      tide__push_error(L, "MalformedResponse", "invalid AWS event stream: a frame exceeds the limit");
    return 2;
  }
  return 1;
}

static int l_es_pending(lua_State *L) {
  es_ud *u = tide__checkudata(L, 1, ES_MT);
  lua_pushinteger(L, (lua_Integer)u->es.frame.len);
  return 1;
}

static int l_es_close(lua_State *L) {
  es_ud *u = tide__checkudata(L, 1, ES_MT);
  tide__es_free(&u->es);
  u->spent = 1;
  return 0;
}

void tide__open_eventstream(lua_State *L) {
  static const luaL_Reg meta[] = {{"__gc", l_es_close}, {"__close", l_es_close}, {NULL, NULL}};
  static const luaL_Reg methods[] = {{"feed", l_es_feed}, {"pending", l_es_pending}, {"close", l_es_close},
                                     {NULL, NULL}};
  tide__register_type(L, ES_MT, meta, methods);
  lua_pushcfunction(L, l_frames);
  lua_setfield(L, -2, "aws_eventstream_frames");
  lua_pushcfunction(L, l_es_new);
  lua_setfield(L, -2, "aws_eventstream");
}
