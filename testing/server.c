/*
** server.c -- the C module tide.testing.server: a small HTTP/1.1 server on
** libuv TCP, for specs, the demo and benchmarks (tide.testing's mock model
** provider is built on it). A test fixture, so not part of tide.core: it runs
** on the state's tide loop through what tide.core lends (tide_api).
**
** One listener per server; each connection reads requests (Content-Length
** bodies only), calls the Lua handler on the main thread through tide's
** protected call (api->pcall),
** and turns the returned table into one C block (tide_resp) before any
** timing or writing happens. Timers and write callbacks never call Lua.
**
** The handler gets req = { id, method, path (with query), headers =
** {lowercased name -> value, repeats joined by ", "}, body } and returns a
** table:
**   status (200), headers = { name = string|number }, and either
**   body = "..."                     sent with Content-Length, or
**   chunks = { "...", ... }          Transfer-Encoding: chunked, one chunk each,
**                                    chunk_delay_ms apart;
**   delay_ms     wait before sending anything;
**   drop_after   k: streaming, send k chunks then end without the 0-chunk;
**                otherwise send half the announced body; then close;
**   close        send Connection: close and end after the response;
**   raw          bytes written verbatim instead of a response, then close;
**   hang         never answer (the connection stays until either side ends it);
**   defer        answer later: srv:respond(req.id, response) sends it (a
**                handler cannot wait, so one that must, e.g. a recording
**                proxy, starts a task and answers from there).
** Content-Length, Transfer-Encoding and Connection in `headers` are ignored:
** framing is the server's. A handler error answers 500. Requests with
** Transfer-Encoding get 411, a head over 64 KiB 431, a body over 64 MiB 413,
** anything unparsable 400; each then ends the connection.
**
** Lifetimes. A server is a malloc'ed tide_server pointed to by a userdata
** (server_box). While open it is anchored by one registry reference, so an
** open server is never collected; the handler is the userdata's uservalue 1.
** Closing unlinks it from the per-state list, clears the box and drops the
** reference at once; the C struct lives on until the listener and every
** connection have run their close callbacks. A connection embeds its TCP
** handle and one timer (delays, chunk pacing, lingering close); a response
** block is freed when it has been fully issued and its last write completed.
** libuv runs a stream's cancelled write callbacks before its close callback,
** so a connection is always freed after the responses that point at it.
**
** The per-state list (server_state) is a full userdata without __gc in the
** registry: Lua frees its memory only after every finalizer has run, so the
** close callbacks that run from the context finalizer may still update it.
*/
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "tide.h"

#define SERVER_MT "tide.server"
#define SERVERS_KEY "tide.testing.servers"

#define MAX_HEAD (64u * 1024u)          /* request line + headers */
#define MAX_BODY (64u * 1024u * 1024u)  /* request body */
#define MAX_NAME 256                    /* one header name */
#define MAX_RESPONSE 0x7fffffffu        /* one response block */
#define RBUF_SIZE (64u * 1024u)         /* per-server shared read buffer */
#define MIN_READ 4096u
#define KEEP_BUF (64u * 1024u) /* an idle connection keeps a buffer this big */
#define DRAIN_MS 2000          /* lingering close: wait for the peer's FIN */
#define BACKLOG 8192

typedef struct tide_server tide_server;
typedef struct tide_conn tide_conn;
typedef struct tide_resp tide_resp;

typedef struct server_state {
  const tide_api *api;    /* tide.core's, for this state */
  tide_server *head;      /* open servers */
  int live_servers;       /* C structs not yet freed (open or closing) */
  int live_conns;
} server_state;

typedef struct server_box {
  tide_server *s; /* NULL once closed */
} server_box;

/* A response, ready to write: `ngroups` contiguous byte ranges written one
** after another, `chunk_delay` ms apart. One malloc holds the struct, the
** write requests, the group ends and the bytes. */
struct tide_resp {
  size_t ngroups, next;
  uv_write_t *wreqs; /* one per group */
  size_t *ends;      /* ends[g]: end offset of group g in data */
  char *data;
  uint64_t chunk_delay;
  int pending;     /* writes in flight */
  int issued;      /* every group written, or the connection went away */
  int close_after; /* end the connection after the last group */
};

struct tide_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_shutdown_t shutdown;
  tide_server *server;
  tide_conn *prev, *next;
  char *in; /* bytes not yet consumed: in[in_off .. in_len) */
  size_t in_off, in_len, in_cap;
  tide_resp *resp; /* response being sent (delay or chunk pacing), or NULL */
  /* the request at the front of the input, once its head is parsed */
  size_t head_len, body_len;
  int have_head, keepalive, expect, continued, is_head;
  int closing, closes; /* uv_close called; close callbacks still to run */
  int eof;             /* the peer finished sending */
  int hung;            /* the handler asked never to answer */
  lua_Integer deferred; /* the id of the request awaiting srv:respond, or 0 */
  int draining;        /* write side shut down; waiting for the peer */
  int shut_done;
};

struct tide_server {
  uv_tcp_t tcp;
  tide_ctx *ctx;
  server_state *state;
  tide_server *prev, *next; /* in state->head while open */
  tide_conn *conns;
  server_box *box;
  int ref;                  /* registry ref to the userdata while open */
  int keep_loop;            /* opts.ref */
  int closing, listener_closed;
  int port, nconns;
  int rbuf_busy;
  lua_Integer requests;
  char rbuf[RBUF_SIZE];
};

/* ------------------------------------------------------------- helpers -- */

static const char *reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 529: return "Overloaded";
    default: return status < 400 ? "OK" : "Error";
  }
}

static int is_tchar(unsigned char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch >= '0' && ch <= '9') || (ch != 0 && strchr("!#$%&'*+-.^_`|~", ch));
}

static int ieq(const char *p, size_t n, const char *lit) {
  return strlen(lit) == n && strncasecmp(p, lit, n) == 0;
}

/* Does the comma-separated list [p, p+n) contain `token`? */
static int has_token(const char *p, size_t n, const char *token) {
  const char *end = p + n;
  while (p < end) {
    const char *comma = memchr(p, ',', (size_t)(end - p));
    const char *e = comma ? comma : end;
    const char *a = p, *b = e;
    while (a < b && (*a == ' ' || *a == '\t')) a++;
    while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
    if (ieq(a, (size_t)(b - a), token)) return 1;
    p = comma ? comma + 1 : end;
  }
  return 0;
}

/* What tide.core lends (its loop, protected call, errors): the server runs on
** the state's tide loop. tide.core is loaded first (luaopen below). */
static const tide_api *core_api(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, TIDE_API_KEY);
  const tide_api *api = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (api == NULL) luaL_error(L, "tide.testing.server needs tide.core loaded first");
  return api;
}

static server_state *get_state(lua_State *L, int create) {
  server_state *st = NULL;
  if (lua_getfield(L, LUA_REGISTRYINDEX, SERVERS_KEY) == LUA_TUSERDATA)
    st = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (st || !create) return st;
  st = lua_newuserdatauv(L, sizeof *st, 0);
  memset(st, 0, sizeof *st);
  lua_setfield(L, LUA_REGISTRYINDEX, SERVERS_KEY);
  st->api = core_api(L);
  return st;
}

/* ----------------------------------------------------------- responses -- */

static tide_resp *resp_alloc(size_t ngroups, size_t size) {
  size_t fixed = sizeof(tide_resp) + ngroups * (sizeof(uv_write_t) + sizeof(size_t));
  if (ngroups > MAX_RESPONSE / sizeof(uv_write_t) || size > MAX_RESPONSE)
    return NULL;
  tide_resp *r = malloc(fixed + size);
  if (r == NULL) return NULL;
  memset(r, 0, sizeof *r);
  r->ngroups = ngroups;
  r->wreqs = (uv_write_t *)(r + 1);
  r->ends = (size_t *)(r->wreqs + ngroups);
  r->data = (char *)(r->ends + ngroups);
  return r;
}

static void resp_release(tide_resp *r) {
  if (r->issued && r->pending == 0) free(r);
}

/* A plain-text response built in C (protocol errors, handler failures). */
static tide_resp *resp_simple(int status, const char *body, int close,
                              int is_head) {
  char head[256];
  size_t blen = strlen(body);
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
                   "Content-Length: %zu\r\n%s\r\n",
                   status, reason(status), blen,
                   close ? "Connection: close\r\n" : "");
  if (is_head) blen = 0;
  tide_resp *r = resp_alloc(1, (size_t)n + blen);
  if (r == NULL) return NULL;
  memcpy(r->data, head, (size_t)n);
  memcpy(r->data + n, body, blen);
  r->ends[0] = (size_t)n + blen;
  r->close_after = close;
  return r;
}

/* ---------------------------------------------------------- connections -- */

static void server_maybe_free(tide_server *s) {
  if (s->listener_closed && s->conns == NULL) {
    s->state->live_servers--;
    free(s);
  }
}

static void on_conn_closed(uv_handle_t *h) {
  tide_conn *c = h->data;
  if (--c->closes > 0) return;
  tide_server *s = c->server;
  if (c->prev)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->state->live_conns--;
  free(c->in);
  free(c);
  server_maybe_free(s);
}

/* Closes at once; writes still queued are cancelled. */
static void conn_close(tide_conn *c) {
  if (c->closing) return;
  c->closing = 1;
  c->server->nconns--;
  if (c->resp) {
    c->resp->issued = 1;
    resp_release(c->resp);
    c->resp = NULL;
  }
  c->closes = 2;
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_timer(uv_timer_t *t);

static void on_shutdown(uv_shutdown_t *req, int status) {
  tide_conn *c = req->handle->data;
  c->shut_done = 1;
  if (status < 0 || c->eof) conn_close(c);
}

/* Ends the connection gracefully: queued writes are flushed, then FIN; the
** socket is closed when the peer has closed its side too, or after DRAIN_MS.
** Closing at once could turn unread request bytes into a reset that destroys
** the response still in flight. */
static void conn_end(tide_conn *c) {
  if (c->closing || c->draining) return;
  c->draining = 1;
  if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    conn_close(c);
    return;
  }
  uv_timer_start(&c->timer, on_timer, DRAIN_MS, 0);
}

static void conn_idle_check(tide_conn *c) {
  if (!c->closing && !c->draining && c->eof && c->resp == NULL) conn_end(c);
}

static void on_write(uv_write_t *req, int status) {
  tide_resp *r = req->data;
  tide_conn *c = req->handle->data;
  r->pending--;
  resp_release(r);
  if (status < 0) conn_close(c);
}

static void free_write_cb(uv_write_t *req, int status) {
  (void)status;
  free(req);
}

/* Writes the next group of c's response. Returns 1 when the response has been
** fully issued and the connection may go on with the next request; 0 when it
** waits on the timer or the connection is ending. */
static int send_next(tide_conn *c) {
  tide_resp *r = c->resp;
  size_t g = r->next++;
  size_t start = g ? r->ends[g - 1] : 0, len = r->ends[g] - start;
  if (len > 0) {
    uv_buf_t buf = uv_buf_init(r->data + start, (unsigned)len);
    r->wreqs[g].data = r;
    if (uv_write(&r->wreqs[g], (uv_stream_t *)&c->tcp, &buf, 1, on_write) != 0) {
      conn_close(c);
      return 0;
    }
    r->pending++;
  }
  if (r->next < r->ngroups) {
    uv_timer_start(&c->timer, on_timer, r->chunk_delay, 0);
    return 0;
  }
  c->resp = NULL;
  r->issued = 1;
  int close = r->close_after;
  resp_release(r);
  if (close) {
    conn_end(c);
    return 0;
  }
  return 1;
}

static void send_continue(tide_conn *c) {
  static const char msg[] = "HTTP/1.1 100 Continue\r\n\r\n";
  c->continued = 1;
  uv_write_t *w = malloc(sizeof *w);
  if (w == NULL) return;
  uv_buf_t buf = uv_buf_init((char *)msg, sizeof msg - 1);
  if (uv_write(w, (uv_stream_t *)&c->tcp, &buf, 1, free_write_cb) != 0) free(w);
}

/* Answers a request that cannot be served, then ends the connection. */
static void conn_reject(tide_conn *c, int status) {
  c->have_head = 0;
  tide_resp *r = resp_simple(status, reason(status), 1, 0);
  if (r == NULL) {
    conn_close(c);
    return;
  }
  c->resp = r;
  send_next(c);
}

/* -------------------------------------------------------------- parsing -- */

/* Validates the head [p, p+len) (which ends with the blank line) and records
** what the connection needs: body length, keep-alive, 100-continue. Returns 0
** or the HTTP status to reject the request with. */
static int parse_head(tide_conn *c, const char *p, size_t len) {
  const char *end = p + len - 2; /* the blank line's CRLF */
  const char *eol = memchr(p, '\r', (size_t)(end - p));
  if (eol == NULL || eol[1] != '\n') return 400;
  /* request line: METHOD SP target SP HTTP/1.x */
  const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
  if (sp1 == NULL || sp1 == p || sp1 - p > 32) return 400;
  for (const char *q = p; q < sp1; q++)
    if (!is_tchar((unsigned char)*q)) return 400;
  const char *target = sp1 + 1;
  const char *sp2 = memchr(target, ' ', (size_t)(eol - target));
  if (sp2 == NULL || sp2 == target) return 400;
  for (const char *q = target; q < sp2; q++)
    if ((unsigned char)*q <= 0x20 || *q == 0x7f) return 400;
  if (eol - (sp2 + 1) != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0) return 400;
  char minor = sp2[8];
  if (minor != '0' && minor != '1') return 400;
  c->keepalive = minor == '1';
  c->is_head = ieq(p, (size_t)(sp1 - p), "HEAD");
  c->expect = 0;
  c->body_len = 0;
  int have_cl = 0, conn_close_tok = 0, conn_keep_tok = 0;
  /* header lines */
  for (const char *ls = eol + 2; ls < end;) {
    const char *le = memchr(ls, '\r', (size_t)(end + 2 - ls));
    if (le == NULL || le[1] != '\n') return 400;
    if (*ls == ' ' || *ls == '\t') return 400; /* obsolete line folding */
    const char *colon = memchr(ls, ':', (size_t)(le - ls));
    if (colon == NULL || colon == ls || colon - ls > MAX_NAME) return 400;
    for (const char *q = ls; q < colon; q++)
      if (!is_tchar((unsigned char)*q)) return 400;
    const char *v = colon + 1, *ve = le;
    while (v < ve && (*v == ' ' || *v == '\t')) v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
    for (const char *q = v; q < ve; q++) {
      unsigned char ch = (unsigned char)*q;
      if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return 400;
    }
    size_t nl = (size_t)(colon - ls), vl = (size_t)(ve - v);
    if (ieq(ls, nl, "content-length")) {
      size_t n = 0;
      if (vl == 0) return 400;
      for (const char *q = v; q < ve; q++) {
        if (*q < '0' || *q > '9') return 400;
        n = n * 10 + (size_t)(*q - '0');
        if (n > MAX_BODY) return 413;
      }
      if (have_cl && n != c->body_len) return 400;
      have_cl = 1;
      c->body_len = n;
    } else if (ieq(ls, nl, "transfer-encoding")) {
      return 411; /* request bodies must come with a Content-Length */
    } else if (ieq(ls, nl, "connection")) {
      conn_close_tok |= has_token(v, vl, "close");
      conn_keep_tok |= has_token(v, vl, "keep-alive");
    } else if (ieq(ls, nl, "expect")) {
      c->expect = has_token(v, vl, "100-continue");
    }
    ls = le + 2;
  }
  if (conn_close_tok)
    c->keepalive = 0;
  else if (conn_keep_tok)
    c->keepalive = 1;
  return 0;
}

/* ------------------------------------------------------------ dispatch -- */

typedef struct dispatch_args {
  tide_conn *c;
  const char *req; /* head followed by body */
  tide_resp *resp; /* out */
  uint64_t delay;  /* out */
  int hang;        /* out */
  int defer;       /* out */
  lua_Integer id;  /* the request's number on its server */
} dispatch_args;

static void push_request(lua_State *L, dispatch_args *a) {
  tide_conn *c = a->c;
  const char *p = a->req, *end = p + c->head_len - 2;
  const char *eol = memchr(p, '\r', (size_t)(end - p));
  const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
  const char *sp2 = memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1));
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, a->id);
  lua_setfield(L, -2, "id");
  lua_pushlstring(L, p, (size_t)(sp1 - p));
  lua_setfield(L, -2, "method");
  lua_pushlstring(L, sp1 + 1, (size_t)(sp2 - sp1 - 1));
  lua_setfield(L, -2, "path");
  lua_createtable(L, 0, 8);
  for (const char *ls = eol + 2; ls < end;) {
    const char *le = memchr(ls, '\r', (size_t)(end + 2 - ls));
    const char *colon = memchr(ls, ':', (size_t)(le - ls));
    const char *v = colon + 1, *ve = le;
    while (v < ve && (*v == ' ' || *v == '\t')) v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
    c->server->state->api->add_header(L, ls, (size_t)(colon - ls), v, (size_t)(ve - v));
    ls = le + 2;
  }
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, a->req + c->head_len, c->body_len);
  lua_setfield(L, -2, "body");
}

static uint64_t field_ms(lua_State *L, int t, const char *k) {
  uint64_t ms = 0;
  if (lua_getfield(L, t, k) != LUA_TNIL) {
    int ok;
    lua_Number n = lua_tonumberx(L, -1, &ok);
    if (!ok || !(n >= 0 && n <= 1e12))
      luaL_error(L, "response field '%s' must be a number of milliseconds >= 0", k);
    ms = (uint64_t)n;
  }
  lua_pop(L, 1);
  return ms;
}

static lua_Integer field_int(lua_State *L, int t, const char *k,
                             lua_Integer def, lua_Integer lo, lua_Integer hi) {
  lua_Integer v = def;
  if (lua_getfield(L, t, k) != LUA_TNIL) {
    int ok;
    v = lua_tointegerx(L, -1, &ok);
    if (!ok || v < lo || v > hi)
      luaL_error(L, "response field '%s' must be an integer in [%I, %I]", k,
                 (LUAI_UACINT)lo, (LUAI_UACINT)hi);
  }
  lua_pop(L, 1);
  return v;
}

static int field_bool(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  int b = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return b;
}

/* Pushes the response headers as (name, value) string pairs on the stack, so
** that they stay anchored while the block is filled. Framing headers are the
** server's business and are skipped. Returns the bytes of "name: value\r\n"
** lines. */
static size_t collect_headers(lua_State *L, int t) {
  size_t size = 0;
  int type = lua_getfield(L, t, "headers");
  if (type == LUA_TNIL) return 0;
  if (type != LUA_TTABLE) luaL_error(L, "response field 'headers' must be a table");
  int h = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, h)) {
    size_t kl, vl;
    int vt = lua_type(L, -1);
    if (lua_type(L, -2) != LUA_TSTRING || (vt != LUA_TSTRING && vt != LUA_TNUMBER))
      luaL_error(L, "response headers must map names to strings");
    const char *k = lua_tolstring(L, -2, &kl);
    if (kl == 0) luaL_error(L, "empty response header name");
    for (size_t i = 0; i < kl; i++)
      if (!is_tchar((unsigned char)k[i]))
        luaL_error(L, "invalid response header name '%s'", k);
    if (ieq(k, kl, "content-length") || ieq(k, kl, "transfer-encoding") ||
        ieq(k, kl, "connection")) {
      lua_pop(L, 1);
      continue;
    }
    const char *v = lua_tolstring(L, -1, &vl); /* a number becomes a string */
    for (size_t i = 0; i < vl; i++)
      if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0')
        luaL_error(L, "invalid character in response header '%s'", k);
    size += kl + vl + 4;
    luaL_checkstack(L, 3, "too many response headers");
    lua_pushvalue(L, -2);
    lua_pushvalue(L, -2); /* key value key' value' */
    lua_rotate(L, -4, 2); /* key' value' key value */
    lua_pop(L, 1);        /* key' value' key */
  }
  return size;
}

static size_t chunk_frame_size(size_t len) {
  char tmp[32];
  return len ? (size_t)snprintf(tmp, sizeof tmp, "%zx\r\n", len) + len + 2 : 0;
}

static char *put(char *w, const void *p, size_t n) {
  memcpy(w, p, n);
  return w + n;
}

/* Converts the handler's response table at index t into a tide_resp. Every
** check that can raise happens before the block is allocated; after it,
** only raw table reads of values already validated. */
static void read_response(lua_State *L, int t, dispatch_args *a) {
  tide_conn *c = a->c;
  if (!lua_istable(L, t))
    luaL_error(L, "server handler must return a table (got %s)", luaL_typename(L, t));
  a->delay = field_ms(L, t, "delay_ms");
  if (field_bool(L, t, "hang")) {
    a->hang = 1;
    return;
  }
  if (field_bool(L, t, "defer")) {
    a->hang = a->defer = 1;
    return;
  }
  if (lua_getfield(L, t, "raw") != LUA_TNIL) {
    size_t n;
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "response field 'raw' must be a string");
    const char *s = lua_tolstring(L, -1, &n);
    tide_resp *r = resp_alloc(1, n);
    if (r == NULL) luaL_error(L, "not enough memory for a %d-byte response", (int)n);
    memcpy(r->data, s, n);
    r->ends[0] = n;
    r->close_after = 1;
    a->resp = r;
    return;
  }
  lua_pop(L, 1);
  int status = (int)field_int(L, t, "status", 200, 100, 999);
  lua_Integer drop = field_int(L, t, "drop_after", -1, 0, INT_MAX);
  uint64_t chunk_delay = field_ms(L, t, "chunk_delay_ms");
  int close = field_bool(L, t, "close") || !c->keepalive || drop >= 0;
  int hfirst = lua_gettop(L) + 2; /* after the headers table itself */
  size_t hsize = collect_headers(L, t);
  int hlast = lua_gettop(L);
  int streaming = lua_getfield(L, t, "chunks") != LUA_TNIL;
  int chunks = lua_gettop(L);
  size_t nchunks = 0, blen = 0, bsend = 0;
  const char *body = NULL;
  size_t size = hsize, ngroups = 1;
  if (streaming) {
    if (!lua_istable(L, chunks)) luaL_error(L, "response field 'chunks' must be a table");
    nchunks = (size_t)lua_rawlen(L, chunks);
    if (drop >= 0 && (size_t)drop < nchunks) nchunks = (size_t)drop;
    if (c->is_head) nchunks = 0;
    for (size_t i = 1; i <= nchunks; i++) {
      if (lua_rawgeti(L, chunks, (lua_Integer)i) != LUA_TSTRING)
        luaL_error(L, "response chunk %d must be a string", (int)i);
      size += chunk_frame_size(lua_rawlen(L, -1));
      lua_pop(L, 1);
      if (size > MAX_RESPONSE) luaL_error(L, "response too large");
    }
    if (drop < 0 && !c->is_head) size += 5; /* the terminating 0-chunk */
    if (chunk_delay > 0 && nchunks > 1) ngroups = nchunks;
  } else {
    int bt = lua_getfield(L, t, "body");
    if (bt != LUA_TNIL && bt != LUA_TSTRING)
      luaL_error(L, "response field 'body' must be a string");
    body = bt == LUA_TSTRING ? lua_tolstring(L, -1, &blen) : "";
    bsend = c->is_head ? 0 : (drop >= 0 ? blen / 2 : blen);
    size += bsend;
  }
  char pre[64], post[96];
  int npre = snprintf(pre, sizeof pre, "HTTP/1.1 %d %s\r\n", status, reason(status));
  int npost;
  if (streaming)
    npost = snprintf(post, sizeof post, "Transfer-Encoding: chunked\r\n%s\r\n",
                     close ? "Connection: close\r\n" : "");
  else
    npost = snprintf(post, sizeof post, "Content-Length: %zu\r\n%s\r\n", blen,
                     close ? "Connection: close\r\n" : "");
  size += (size_t)npre + (size_t)npost;
  if (size > MAX_RESPONSE) luaL_error(L, "response too large");
  tide_resp *r = resp_alloc(ngroups, size);
  if (r == NULL) luaL_error(L, "not enough memory for a %d-byte response", (int)size);
  /* From here on nothing raises. */
  char *w = put(r->data, pre, (size_t)npre);
  for (int i = hfirst; i < hlast; i += 2) {
    size_t kl, vl;
    const char *k = lua_tolstring(L, i, &kl), *v = lua_tolstring(L, i + 1, &vl);
    w = put(w, k, kl);
    w = put(w, ": ", 2);
    w = put(w, v, vl);
    w = put(w, "\r\n", 2);
  }
  w = put(w, post, (size_t)npost);
  if (streaming) {
    for (size_t i = 1; i <= nchunks; i++) {
      size_t len;
      lua_rawgeti(L, chunks, (lua_Integer)i);
      const char *s = lua_tolstring(L, -1, &len); /* anchored by the table */
      lua_pop(L, 1);
      if (len > 0) {
        char frame[32];
        int flen = snprintf(frame, sizeof frame, "%zx\r\n", len);
        w = put(w, frame, (size_t)flen);
        w = put(w, s, len);
        w = put(w, "\r\n", 2);
      }
      if (ngroups > 1) r->ends[i - 1] = (size_t)(w - r->data);
    }
    if (drop < 0 && !c->is_head) w = put(w, "0\r\n\r\n", 5);
  } else {
    w = put(w, body, bsend);
  }
  r->ends[ngroups - 1] = (size_t)(w - r->data);
  r->chunk_delay = chunk_delay;
  r->close_after = close;
  a->resp = r;
}

/* Runs in protected mode: handler(req) -> response table -> tide_resp. */
static int l_dispatch(lua_State *L) {
  dispatch_args *a = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, a->c->server->ref);
  lua_getiuservalue(L, -1, 1);
  push_request(L, a);
  lua_call(L, 1, 1);
  read_response(L, lua_gettop(L), a);
  return 0;
}

/* Serves the complete request at p. Leaves c->resp set (or c->hung) when the
** answer is still to come. */
static void dispatch(tide_conn *c, const char *p) {
  tide_server *s = c->server;
  lua_State *L = s->ctx->L;
  dispatch_args a = {c, p, NULL, 0, 0, 0, ++s->requests};
  int top = lua_gettop(L), status = LUA_ERRMEM;
  if (lua_checkstack(L, 4)) {
    lua_pushcfunction(L, l_dispatch);
    lua_pushlightuserdata(L, &a);
    status = s->state->api->pcall(L, 1, 0, "server handler");
  }
  lua_settop(L, top);
  if (c->closing) { /* the handler closed its own server */
    if (a.resp) free(a.resp);
    return;
  }
  if (status != LUA_OK) {
    a.resp = resp_simple(500, "server handler failed\n", !c->keepalive, c->is_head);
    a.delay = 0;
    if (a.resp == NULL) {
      conn_close(c);
      return;
    }
  }
  if (a.hang) {
    c->hung = 1;
    if (a.defer) c->deferred = a.id;
    return;
  }
  c->resp = a.resp;
  if (a.delay > 0)
    uv_timer_start(&c->timer, on_timer, a.delay, 0);
  else
    send_next(c);
}

/* Serves every complete request in [p, p+n) until one must wait. Returns the
** number of bytes consumed. */
static size_t conn_parse(tide_conn *c, const char *p, size_t n) {
  size_t used = 0;
  while (!c->closing && !c->draining && c->resp == NULL && !c->hung) {
    const char *q = p + used;
    size_t avail = n - used;
    if (!c->have_head) {
      while (avail >= 2 && q[0] == '\r' && q[1] == '\n') { /* stray CRLFs */
        q += 2, avail -= 2, used += 2;
      }
      if (avail == 0) break;
      const char *e = memmem(q, avail < MAX_HEAD ? avail : MAX_HEAD, "\r\n\r\n", 4);
      if (e == NULL) {
        if (avail >= MAX_HEAD) conn_reject(c, 431);
        break;
      }
      c->head_len = (size_t)(e + 4 - q);
      int st = parse_head(c, q, c->head_len);
      if (st != 0) {
        conn_reject(c, st);
        break;
      }
      c->have_head = 1;
      c->continued = 0;
    }
    size_t total = c->head_len + c->body_len;
    if (avail < total) {
      if (c->expect && !c->continued) send_continue(c);
      break;
    }
    c->have_head = 0;
    used += total;
    dispatch(c, q);
  }
  return used;
}

/* Serves what is buffered on c (after a delayed response completed). */
static void conn_resume(tide_conn *c) {
  c->in_off += conn_parse(c, c->in + c->in_off, c->in_len - c->in_off);
  if (c->in_off == c->in_len) {
    c->in_off = c->in_len = 0;
    if (c->in_cap > KEEP_BUF) {
      free(c->in);
      c->in = NULL;
      c->in_cap = 0;
    }
  }
  conn_idle_check(c);
}

static void on_timer(uv_timer_t *t) {
  tide_conn *c = t->data;
  if (c->draining)
    conn_close(c);
  else if (c->resp && send_next(c))
    conn_resume(c);
}

/* Makes room for `want` more bytes at c->in + c->in_len. */
static int conn_reserve(tide_conn *c, size_t want) {
  if (c->in_off > 0) {
    memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
    c->in_len -= c->in_off;
    c->in_off = 0;
  }
  if (c->in_cap - c->in_len >= want) return 0;
  size_t cap = c->in_cap ? c->in_cap * 2 : MIN_READ;
  if (cap < c->in_len + want) cap = c->in_len + want;
  char *p = realloc(c->in, cap);
  if (p == NULL) return -1;
  c->in = p;
  c->in_cap = cap;
  return 0;
}

/* A connection with nothing buffered reads into the server's shared buffer
** and serves straight from it, so a request that arrives whole costs no
** allocation; only leftovers are copied to the connection. */
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  tide_conn *c = h->data;
  tide_server *s = c->server;
  if (!s->rbuf_busy &&
      (c->draining || (c->in_len == c->in_off && c->resp == NULL && !c->hung))) {
    *buf = uv_buf_init(s->rbuf, RBUF_SIZE);
    return;
  }
  size_t want = MIN_READ;
  if (c->have_head) { /* read the rest of a large body in one go */
    size_t need = c->head_len + c->body_len, have = c->in_len - c->in_off;
    if (need > have && need - have > want) want = need - have;
  }
  if (conn_reserve(c, want) != 0) {
    *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
    return;
  }
  size_t room = c->in_cap - c->in_len;
  *buf = uv_buf_init(c->in + c->in_len, room > UINT_MAX ? UINT_MAX : (unsigned)room);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  tide_conn *c = st->data;
  tide_server *s = c->server;
  if (nread == 0 || c->closing) return;
  if (nread < 0) {
    if (nread != UV_EOF) {
      conn_close(c);
    } else {
      c->eof = 1;
      if (c->draining) {
        if (c->shut_done) conn_close(c);
      } else {
        conn_idle_check(c);
      }
    }
    return;
  }
  if (c->draining) return; /* discarded */
  if (buf->base == s->rbuf) {
    s->rbuf_busy = 1;
    size_t used = conn_parse(c, buf->base, (size_t)nread);
    s->rbuf_busy = 0;
    size_t left = (size_t)nread - used;
    if (left > 0 && !c->closing && !c->draining) {
      if (conn_reserve(c, left) != 0) {
        conn_close(c);
        return;
      }
      memcpy(c->in + c->in_len, buf->base + used, left);
      c->in_len += left;
    }
    return;
  }
  c->in_len += (size_t)nread;
  if (c->resp || c->hung) { /* pipelined while an answer is pending */
    if (c->in_len - c->in_off > MAX_HEAD + MAX_BODY) conn_close(c);
    return;
  }
  conn_resume(c);
}

static void on_connection(uv_stream_t *ls, int status) {
  tide_server *s = ls->data;
  if (status < 0 || s->closing) return;
  tide_conn *c = calloc(1, sizeof *c);
  if (c == NULL) return;
  uv_tcp_init(ls->loop, &c->tcp);
  uv_timer_init(ls->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->server = s;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  s->state->live_conns++;
  if (!s->keep_loop) {
    uv_unref((uv_handle_t *)&c->tcp);
    uv_unref((uv_handle_t *)&c->timer);
  }
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) conn_close(c);
}

/* --------------------------------------------------------------- server -- */

static void on_listener_closed(uv_handle_t *h) {
  tide_server *s = h->data;
  s->listener_closed = 1;
  server_maybe_free(s);
}

static void server_close(lua_State *L, tide_server *s) {
  if (s->closing) return;
  s->closing = 1;
  if (s->prev)
    s->prev->next = s->next;
  else if (s->state->head == s)
    s->state->head = s->next;
  if (s->next) s->next->prev = s->prev;
  s->prev = s->next = NULL;
  if (s->box) s->box->s = NULL;
  s->box = NULL;
  if (s->ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, s->ref);
  s->ref = LUA_NOREF;
  uv_close((uv_handle_t *)&s->tcp, on_listener_closed);
  for (tide_conn *c = s->conns; c; c = c->next) conn_close(c);
}

/* Closes every server of the state and all their connections when the state
** closes (a tide_api shutdown hook); tide.core then runs the loop until the
** close callbacks have run. */
static void shutdown_servers(tide_ctx *ctx) {
  server_state *st = get_state(ctx->L, 0);
  if (st == NULL) return;
  while (st->head) server_close(ctx->L, st->head);
}

static tide_server *check_server(lua_State *L) {
  server_box *b = luaL_checkudata(L, 1, SERVER_MT);
  if (b->s == NULL) luaL_error(L, "attempt to use a closed server");
  return b->s;
}

/* srv:close(), also __gc and __close. Idempotent. */
static int l_server_close(lua_State *L) {
  server_box *b = luaL_checkudata(L, 1, SERVER_MT);
  if (b->s) server_close(L, b->s);
  return 0;
}

/* srv:respond(id, response) -> true, or false when request `id` is not
** awaiting an answer (its connection went away, or it was answered). The
** response table is the handler's. It is sent from the connection's timer,
** on the loop's next turn: sending may go on to serve pipelined requests,
** which calls the handler on the main thread, and this runs inside a task. */
static int l_server_respond(lua_State *L) {
  tide_server *s = check_server(L);
  lua_Integer id = luaL_checkinteger(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  tide_conn *c = s->conns;
  while (c && (c->closing || c->deferred != id || id == 0)) c = c->next;
  if (c == NULL) {
    lua_pushboolean(L, 0);
    return 1;
  }
  dispatch_args a = {c, NULL, NULL, 0, 0, 0, id};
  read_response(L, 3, &a); /* raises before it allocates */
  if (a.hang) {
    if (a.resp) free(a.resp);
    return luaL_argerror(L, 3, "a deferred answer cannot hang or defer");
  }
  c->deferred = 0;
  c->hung = 0;
  c->resp = a.resp;
  uv_timer_start(&c->timer, on_timer, a.delay, 0);
  lua_pushboolean(L, 1);
  return 1;
}

/* srv:port() -> the port the server listens on. */
static int l_server_port(lua_State *L) {
  lua_pushinteger(L, check_server(L)->port);
  return 1;
}

/* srv:stats() -> { port, connections = open now, requests = served so far } */
static int l_server_stats(lua_State *L) {
  tide_server *s = check_server(L);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, s->port);
  lua_setfield(L, -2, "port");
  lua_pushinteger(L, s->nconns);
  lua_setfield(L, -2, "connections");
  lua_pushinteger(L, s->requests);
  lua_setfield(L, -2, "requests");
  return 1;
}

static int l_server_tostring(lua_State *L) {
  server_box *b = luaL_checkudata(L, 1, SERVER_MT);
  if (b->s)
    lua_pushfstring(L, "tide.server (port %d)", b->s->port);
  else
    lua_pushliteral(L, "tide.server (closed)");
  return 1;
}

/* server.listen{ host = "127.0.0.1", port = 0, handler = fn, ref = false }
** -> server | nil, err */
static int l_server_listen(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "handler");
  luaL_argcheck(L, lua_isfunction(L, -1), 1, "opts.handler must be a function");
  int handler = lua_gettop(L);
  int ht = lua_getfield(L, 1, "host");
  luaL_argcheck(L, ht == LUA_TNIL || ht == LUA_TSTRING, 1, "opts.host must be a string");
  const char *host = ht == LUA_TNIL ? "127.0.0.1" : lua_tostring(L, -1);
  if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
  lua_getfield(L, 1, "port");
  int isint;
  lua_Integer port = lua_isnil(L, -1) ? 0 : lua_tointegerx(L, -1, &isint);
  luaL_argcheck(L, lua_isnil(L, -1) || (isint && port >= 0 && port <= 65535), 1,
                "opts.port must be an integer in [0, 65535]");
  lua_getfield(L, 1, "ref");
  int keep_loop = lua_toboolean(L, -1);
  struct sockaddr_storage addr;
  if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&addr) != 0 &&
      uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&addr) != 0)
    luaL_argerror(L, 1, "opts.host must be a numeric IPv4 or IPv6 address");
  server_state *st = get_state(L, 1);
  tide_ctx *ctx = st->api->ctx(L);
  st->api->on_shutdown(ctx, shutdown_servers);
  server_box *b = lua_newuserdatauv(L, sizeof *b, 1);
  b->s = NULL;
  luaL_setmetatable(L, SERVER_MT);
  lua_pushvalue(L, handler);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, -1);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  tide_server *s = malloc(sizeof *s);
  if (s == NULL) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return luaL_error(L, "not enough memory for a server");
  }
  memset(s, 0, offsetof(tide_server, rbuf));
  s->ctx = ctx;
  s->state = st;
  s->ref = LUA_NOREF;
  s->keep_loop = keep_loop;
  st->live_servers++;
  uv_tcp_init(ctx->loop, &s->tcp);
  s->tcp.data = s;
  int rc = uv_tcp_bind(&s->tcp, (struct sockaddr *)&addr, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&s->tcp, BACKLOG, on_connection);
  if (rc == 0) {
    struct sockaddr_storage name;
    int len = sizeof name;
    rc = uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&name, &len);
    if (rc == 0)
      s->port = ntohs(name.ss_family == AF_INET6
                          ? ((struct sockaddr_in6 *)&name)->sin6_port
                          : ((struct sockaddr_in *)&name)->sin_port);
  }
  if (rc != 0) {
    s->closing = 1;
    uv_close((uv_handle_t *)&s->tcp, on_listener_closed);
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    lua_pushnil(L);
    st->api->push_error(L, "ListenFailed", "cannot listen on %s port %d: %s", host,
                      (int)port, uv_strerror(rc));
    return 2;
  }
  if (!keep_loop) uv_unref((uv_handle_t *)&s->tcp);
  s->ref = ref;
  s->box = b;
  b->s = s;
  s->next = st->head;
  if (st->head) st->head->prev = s;
  st->head = s;
  return 1;
}

/* server.stats() -> { servers, connections }: C objects of this state's
** servers not yet freed (open, or waiting for close callbacks). */
static int l_server_live(lua_State *L) {
  server_state *st = get_state(L, 0);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, st ? st->live_servers : 0);
  lua_setfield(L, -2, "servers");
  lua_pushinteger(L, st ? st->live_conns : 0);
  lua_setfield(L, -2, "connections");
  return 1;
}

/// Opens the `tide.testing.server` module: `listen(opts)` (a server on
/// loopback, see the file's head) and `stats()`. Loads tide.core first: the
/// server runs on its loop.
__attribute__((visibility("default"))) int luaopen_tide_testing_server(lua_State *L) {
  static const luaL_Reg meta[] = {{"__gc", l_server_close},
                                  {"__close", l_server_close},
                                  {"__tostring", l_server_tostring},
                                  {NULL, NULL}};
  static const luaL_Reg methods[] = {{"port", l_server_port},
                                     {"close", l_server_close},
                                     {"stats", l_server_stats},
                                     {"respond", l_server_respond},
                                     {NULL, NULL}};
  static const luaL_Reg fns[] = {{"listen", l_server_listen}, {"stats", l_server_live}, {NULL, NULL}};
  lua_getglobal(L, "require");
  lua_pushliteral(L, "tide.core");
  lua_call(L, 1, 0);
  if (luaL_newmetatable(L, SERVER_MT)) {
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_newlib(L, fns);
  return 1;
}
