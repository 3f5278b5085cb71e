/*
** redis.c -- the Lua C module tide.redis: Redis connections on tide's loop,
** through hiredis's asynchronous API and its libuv adapter (as hiredis 1.x
** has it: see the adapter section).
**
** Built as its own shared object beside tide.core (not part of it): a script
** that never asks for a cluster loads no Redis code and needs no libhiredis.
** It runs on the state's tide loop through what tide.core lends (tide_api).
**
** A connection is a redisAsyncContext whose socket a uv_poll watches (the
** adapter below). A
** command suspends the calling task on a request record; hiredis calls the
** reply callback from the loop, the record keeps the converted reply and
** wakes the task. Several tasks may have commands in flight on one
** connection: Redis answers in order, hiredis pipelines them.
**
** Replies are converted to Lua in the callback, under a protected call (an
** allocation failure must not unwind through libuv), into a registry slot
** the woken task takes. A reply hiredis hands over as NULL (the connection
** broke, or it is being freed) touches no Lua at all.
**
** Pub/sub: a connection that subscribes carries one Lua handler, called for
** every message (and every subscription confirmation) with (kind, channel,
** payload), and once with ("disconnect", nil, why) when the connection
** breaks; such a connection takes no other commands, as Redis wants.
**
** Lifetimes: the connection struct is malloc'ed, because hiredis holds it
** (ac->data) until its disconnect callback; the userdata only points at it.
** It is freed once both are gone. Open connections are on a per-state list
** so that the shutdown hook closes them before tide.core's last loop run:
** the adapter's uv_poll must be closed while the loop still exists.
**
** hiredis 0.14 (Debian 12) has neither TLS nor RESP3: tide.redis.tls is
** false, and the Lua layer refuses rediss:// with a clear error.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netdb.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "tide.h"

#define CONN_MT "tide.redis.connection"
#define WAITER_MT "tide.redis.waiter"
#define STATE_KEY "tide.redis.state"
#define MAX_ARGS 4096

typedef struct rconn rconn;

typedef struct rstate {
  const tide_api *api;
  rconn *head; /* connections with a live context */
} rstate;

enum { CONNECTING, READY, CLOSED };

struct rconn {
  redisAsyncContext *ac; /* NULL once hiredis let it go */
  rstate *st;
  lua_State *L;          /* the main thread: handlers run there */
  rconn *prev, *next;    /* in st->head while ac != NULL */
  int state;
  int ud_gone;           /* the userdata was collected */
  int handler;           /* registry ref to the pub/sub handler, or LUA_NOREF */
  int subscribed;        /* took a SUBSCRIBE: no more plain commands */
  int inflight;          /* commands awaiting replies: the loop stays up */
  int calling;           /* a Lua handler runs: c outlives its userdata's collection */
  char err[256];         /* why it closed */
  /* connecting */
  tide_task *waiter;
  tide_wait wait;
  uv_timer_t *timer;     /* the connect timeout; freed by its close callback */
  struct resolve_req *resolving; /* the host name being resolved */
};

/* One command in flight, in two halves, because each side may be gone
** before the other is done with it. What hiredis holds (the reply
** callback's privdata) is malloc'ed and freed by that callback, which
** hiredis calls exactly once (with NULL when the connection goes). What the
** waiting task reads is a full userdata on its stack for the length of the
** wait (as cache.c's waiters are), so the continuation finds it whether the
** reply came or the wait was cancelled -- a cancelled task may be resumed
** after the reply has arrived and the malloc'ed half is freed. */
typedef struct rwaiter rwaiter;

typedef struct rreq {
  rconn *c;
  rwaiter *w; /* NULL once the task stopped waiting (cancelled) */
} rreq;

struct rwaiter {
  tide_wait wait; /* first member: a tide_wait * is an rwaiter * */
  tide_task *task;
  rreq *q;      /* NULL once the reply came or the wait was cancelled */
  rconn *c;
  int done;
  int ref;      /* registry ref to the converted reply */
  int is_error; /* the reply is a Redis error reply */
  int lost;     /* no reply: the connection went away */
};

static rstate *get_state(lua_State *L);

/* ------------------------------------------------------------ adapter -- */

/* hiredis's libuv adapter, as hiredis 1.x has it. The one Debian 12 ships
** (0.14) returns from its poll callback when libuv reports an error on the
** socket, so hiredis never learns that a connect was refused or a peer
** reset: the connection would hang until a timeout instead of failing at
** once. 1.x hands such an event to hiredis as readable/writable, which
** then sees the error on the socket. Otherwise the same: one uv_poll per
** context, freed by its close callback. */
typedef struct uv_events {
  redisAsyncContext *ac;
  uv_poll_t handle;
  int events;
} uv_events;

static void ev_poll(uv_poll_t *h, int status, int events) {
  uv_events *p = h->data;
  int ev = status ? p->events : events;
  if (p->ac && (ev & UV_READABLE)) redisAsyncHandleRead(p->ac);
  if (p->ac && (ev & UV_WRITABLE)) redisAsyncHandleWrite(p->ac);
}

static void ev_update(uv_events *p, int add, int flag) {
  int events = add ? (p->events | flag) : (p->events & ~flag);
  /* hiredis asks for reading again after every read and write: libuv's
  ** uv_poll_start takes the socket out of epoll and puts it back even when
  ** the events are the same, two system calls for nothing. */
  if (events == p->events) return;
  p->events = events;
  if (p->events) uv_poll_start(&p->handle, p->events, ev_poll);
  else uv_poll_stop(&p->handle);
}

static void ev_add_read(void *d) { ev_update(d, 1, UV_READABLE); }
static void ev_del_read(void *d) { ev_update(d, 0, UV_READABLE); }
static void ev_add_write(void *d) { ev_update(d, 1, UV_WRITABLE); }
static void ev_del_write(void *d) { ev_update(d, 0, UV_WRITABLE); }
static void ev_close_cb(uv_handle_t *h) { free(h->data); }

static void ev_cleanup(void *d) {
  uv_events *p = d;
  p->ac = NULL;
  uv_close((uv_handle_t *)&p->handle, ev_close_cb);
}

static int ev_attach(redisAsyncContext *ac, uv_loop_t *loop) {
  uv_events *p = calloc(1, sizeof *p);
  if (p == NULL) return REDIS_ERR;
  if (uv_poll_init(loop, &p->handle, ac->c.fd) != 0) {
    free(p);
    return REDIS_ERR;
  }
  p->handle.data = p;
  p->ac = ac;
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  ac->ev.cleanup = ev_cleanup;
  ac->ev.data = p;
  return REDIS_OK;
}

/* ------------------------------------------------------------ helpers -- */

static void list_remove(rconn *c) {
  if (c->prev) c->prev->next = c->next;
  else if (c->st->head == c) c->st->head = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
}

static void timer_free_cb(uv_handle_t *h) { free(h); }

static void stop_timer(rconn *c) {
  if (c->timer) {
    uv_close((uv_handle_t *)c->timer, timer_free_cb);
    c->timer = NULL;
  }
}

/* The socket keeps tide.run going only while something waits on it: a
** connecting task or a command in flight (an idle or subscribed connection
** never holds the loop up, as watch.c's handles do not). */
static void set_ref(rconn *c) {
  if (c->ac == NULL || c->ac->ev.data == NULL) return;
  uv_handle_t *h = (uv_handle_t *)&((uv_events *)c->ac->ev.data)->handle;
  if (c->inflight > 0 || c->state == CONNECTING) uv_ref(h);
  else uv_unref(h);
}

/* Frees c once nothing can reach it: hiredis let go of the context, the
** userdata is collected, the timer is closed, no reply callback (of a
** gracefully closing context) is still to come with a record pointing
** at it, and no handler of its runs (a collection during the handler
** would free c under the callback that called it). */
static void maybe_free(rconn *c) {
  if (c->ac == NULL && c->ud_gone && c->timer == NULL && c->inflight == 0 && !c->calling) free(c);
}

/* Calls c's pub/sub handler with the n values on top of L's stack. */
static void call_handler(rconn *c, lua_State *L, int n) {
  c->calling = 1;
  c->st->api->pcall(L, n, 0, "tide.redis message handler");
  c->calling = 0;
}

/* Wakes the task waiting for the connection to be made, if any. */
static void wake_waiter(rconn *c) {
  if (c->waiter) {
    tide_task *t = c->waiter;
    c->waiter = NULL;
    c->st->api->wake(t);
  }
}

/* hiredis is done with the context (it frees it after this returns, or has
** already): forget it, and wake a task still waiting for the connection. */
static void detach(rconn *c, const char *why) {
  if (c->ac) {
    c->ac->data = NULL;
    c->ac = NULL;
    list_remove(c);
  }
  if (c->state != CLOSED && why && !c->err[0]) snprintf(c->err, sizeof c->err, "%s", why);
  c->state = CLOSED;
  stop_timer(c);
  wake_waiter(c);
}

static void on_connect(const redisAsyncContext *ac, int status) {
  rconn *c = ac->data;
  if (c == NULL) return;
  if (status != REDIS_OK) {
    /* hiredis frees the context after this callback */
    detach(c, ac->errstr[0] ? ac->errstr : "connection failed");
    maybe_free(c);
    return;
  }
  c->state = READY;
  stop_timer(c);
  set_ref(c);
  wake_waiter(c);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  rconn *c = ac->data;
  if (c == NULL) return; /* closed from Lua: nobody to tell */
  detach(c, status == REDIS_OK ? "connection closed" : (ac->errstr[0] ? ac->errstr : "connection lost"));
  /* A subscriber learns that its subscriptions are gone, to make them
  ** again on a new connection. */
  if (c->handler != LUA_NOREF && !c->ud_gone) {
    lua_State *L = c->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->handler);
    lua_pushliteral(L, "disconnect");
    lua_pushnil(L);
    lua_pushstring(L, c->err);
    call_handler(c, L, 3);
  }
  maybe_free(c);
}

static void drop_resolving(rconn *c);

static void on_connect_timeout(uv_timer_t *h) {
  rconn *c = h->data;
  redisAsyncContext *ac = c->ac;
  drop_resolving(c);
  snprintf(c->err, sizeof c->err, "connect timed out");
  detach(c, NULL);
  /* Not yet connected: hiredis calls no disconnect callback for it. */
  if (ac) redisAsyncFree(ac);
  maybe_free(c);
}

/* ----------------------------------------------------- reply to Lua -- */

static void push_reply(lua_State *L, redisReply *r, int depth);

static int push_reply_p(lua_State *L) {
  redisReply *r = lua_touserdata(L, 1);
  lua_settop(L, 0);
  push_reply(L, r, 0);
  return 1;
}

/* nil replies become false (they sit in arrays, and nil is this API's
** failure); status replies are strings, error replies inside arrays (EXEC)
** are tables { error = text }. */
static void push_reply(lua_State *L, redisReply *r, int depth) {
  luaL_checkstack(L, 3, "redis reply too deep");
  switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
      lua_pushlstring(L, r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      lua_pushinteger(L, (lua_Integer)r->integer);
      break;
    case REDIS_REPLY_ARRAY:
      if (depth > 64) luaL_error(L, "redis reply too deep");
      lua_createtable(L, (int)r->elements, 0);
      for (size_t i = 0; i < r->elements; i++) {
        push_reply(L, r->element[i], depth + 1);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
      }
      break;
    case REDIS_REPLY_ERROR:
      lua_createtable(L, 0, 1);
      lua_pushlstring(L, r->str, r->len);
      lua_setfield(L, -2, "error");
      break;
    default:
      lua_pushboolean(L, 0);
      break;
  }
}

/* Converts r into a registry slot; LUA_NOREF when out of memory. */
static int keep_reply(lua_State *L, redisReply *r) {
  lua_pushcfunction(L, push_reply_p);
  lua_pushlightuserdata(L, r);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    return LUA_NOREF;
  }
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  rreq *q = privdata;
  redisReply *r = reply;
  rconn *c = q->c;
  rwaiter *w = q->w;
  free(q);
  if (c->inflight > 0 && --c->inflight == 0) set_ref(c);
  if (r == NULL && ac && ac->errstr[0] && !c->err[0])
    snprintf(c->err, sizeof c->err, "%s", ac->errstr);
  if (w == NULL) {
    /* its task was cancelled: nobody takes this reply; it may have been
    ** the last one a closed connection waited for */
    if (c->ac == NULL) maybe_free(c);
    return;
  }
  w->q = NULL;
  w->done = 1;
  if (r == NULL) {
    w->lost = 1;
  } else {
    w->is_error = r->type == REDIS_REPLY_ERROR;
    w->ref = keep_reply(c->L, r);
  }
  tide_task *t = w->task;
  w->task = NULL;
  c->st->api->wake(t);
}

static void on_message(redisAsyncContext *ac, void *reply, void *privdata) {
  (void)ac;
  rconn *c = privdata;
  redisReply *r = reply;
  if (r == NULL || c == NULL || c->handler == LUA_NOREF || c->ud_gone) return;
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 3) return;
  lua_State *L = c->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->handler);
  for (size_t i = 0; i < 3; i++) {
    redisReply *e = r->element[i];
    if (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS)
      lua_pushlstring(L, e->str, e->len);
    else if (e->type == REDIS_REPLY_INTEGER)
      lua_pushinteger(L, (lua_Integer)e->integer);
    else
      lua_pushnil(L);
  }
  /* pmessage: (pmessage, pattern, channel, payload): hand over channel and
  ** payload; the pattern is the handler's own. */
  if (r->elements == 4 && r->element[3]->type == REDIS_REPLY_STRING) {
    lua_pop(L, 2);
    lua_pushlstring(L, r->element[2]->str, r->element[2]->len);
    lua_pushlstring(L, r->element[3]->str, r->element[3]->len);
  }
  call_handler(c, L, 3);
  maybe_free(c); /* (its userdata collected during the handler) */
}

/* ------------------------------------------------------- connecting -- */

typedef struct resolve_req {
  uv_getaddrinfo_t req;
  rconn *c; /* NULL once nobody waits for it (timed out, cancelled) */
  uv_loop_t *loop;
  int port;
} resolve_req;

static int is_numeric(const char *host) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* Stops a resolution nobody waits for any more: its callback frees it. */
static void drop_resolving(rconn *c) {
  if (c->resolving) {
    c->resolving->c = NULL;
    uv_cancel((uv_req_t *)&c->resolving->req);
    c->resolving = NULL;
  }
}

/* Starts the connection proper (hiredis's non-blocking connect); -1 with
** c->err set and c CLOSED when it cannot start. */
static int start_connect(rconn *c, uv_loop_t *loop, const char *ip, int port, const char *path) {
  redisAsyncContext *ac = path ? redisAsyncConnectUnix(path) : redisAsyncConnect(ip, port);
  if (ac == NULL || ac->err) {
    snprintf(c->err, sizeof c->err, "%s", ac ? ac->errstr : "out of memory");
    if (ac) redisAsyncFree(ac);
    c->state = CLOSED;
    return -1;
  }
  if (ev_attach(ac, loop) != REDIS_OK) {
    snprintf(c->err, sizeof c->err, "cannot watch the socket");
    redisAsyncFree(ac);
    c->state = CLOSED;
    return -1;
  }
  ac->data = c;
  c->ac = ac;
  c->next = c->st->head;
  if (c->st->head) c->st->head->prev = c;
  c->st->head = c;
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  set_ref(c);
  return 0;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  resolve_req *r = (resolve_req *)req;
  rconn *c = r->c;
  char ip[INET6_ADDRSTRLEN] = "";
  if (c && status == 0 && res) {
    if (res->ai_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)res->ai_addr, ip, sizeof ip);
    else
      uv_ip4_name((struct sockaddr_in *)res->ai_addr, ip, sizeof ip);
  }
  if (res) uv_freeaddrinfo(res);
  uv_loop_t *loop = r->loop;
  int port = r->port;
  free(r);
  if (c == NULL) return;
  c->resolving = NULL;
  if (status != 0 || !ip[0]) {
    snprintf(c->err, sizeof c->err, "cannot resolve the host: %s",
             status ? uv_strerror(status) : "no address");
    detach(c, NULL);
  } else if (start_connect(c, loop, ip, port, NULL) != 0) {
    detach(c, NULL);
  }
}

/* ---------------------------------------------------------- Lua API -- */

typedef struct rbox {
  rconn *c;
} rbox;

static rconn *check_conn(lua_State *L) {
  rbox *b = luaL_checkudata(L, 1, CONN_MT);
  return b->c;
}

static int push_unavailable(lua_State *L, rconn *c, const char *what) {
  lua_pushnil(L);
  c->st->api->push_error(L, "ClusterUnavailable", "redis: %s: %s", what,
                         c->err[0] ? c->err : "not connected");
  return 2;
}

static void connect_cancel(tide_wait *w) {
  rconn *c = (rconn *)((char *)w - offsetof(rconn, wait));
  c->waiter = NULL;
}

static int connect_k(lua_State *L, int status, lua_KContext kctx) {
  (void)status;
  (void)kctx;
  rbox *b = lua_touserdata(L, 2);
  rconn *c = b->c;
  rstate *st = get_state(L);
  tide_task *t = st->api->current(L);
  if (c->state != READY) {
    /* timed out, refused, or cancelled while connecting */
    drop_resolving(c);
    if (c->state == CONNECTING && !c->ac) detach(c, "cancelled");
    if (c->state == CONNECTING && c->ac) {
      redisAsyncContext *ac = c->ac;
      detach(c, "cancelled");
      redisAsyncFree(ac);
    }
    st->api->check_cancel(L, t);
    return push_unavailable(L, c, "connect");
  }
  st->api->check_cancel(L, t);
  return 1;
}

static int conn_gc(lua_State *L) {
  rbox *b = lua_touserdata(L, 1);
  rconn *c = b->c;
  if (c == NULL) return 0;
  b->c = NULL;
  c->ud_gone = 1;
  if (c->handler != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, c->handler);
    c->handler = LUA_NOREF;
  }
  if (c->ac) {
    redisAsyncContext *ac = c->ac;
    int was_ready = c->state == READY;
    detach(c, "closed");
    if (was_ready) redisAsyncDisconnect(ac);
    else redisAsyncFree(ac);
  }
  maybe_free(c);
  return 0;
}

/* redis.connect{ host =, port =, path =, timeout_ms = } -> connection, or
** nil, err (ClusterUnavailable). Waits, inside a task, until connected. */
static int l_connect(lua_State *L) {
  rstate *st = get_state(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "host");
  const char *host = luaL_optstring(L, -1, "127.0.0.1");
  lua_getfield(L, 1, "port");
  int port = (int)luaL_optinteger(L, -1, 6379);
  lua_getfield(L, 1, "path");
  const char *path = luaL_optstring(L, -1, NULL);
  lua_getfield(L, 1, "timeout_ms");
  lua_Integer timeout = luaL_optinteger(L, -1, 5000);
  lua_pop(L, 4);
  if (port <= 0 || port > 65535) return luaL_argerror(L, 1, "port must be 1..65535");
  if (timeout <= 0) return luaL_argerror(L, 1, "timeout_ms must be positive");
  tide_task *t = st->api->check_task(L, "tide.redis.connect");
  st->api->check_cancel(L, t);
  tide_ctx *ctx = st->api->ctx(L);

  rbox *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->c = NULL;
  luaL_setmetatable(L, CONN_MT);
  rconn *c = calloc(1, sizeof *c);
  if (c == NULL) return luaL_error(L, "out of memory");
  c->st = st;
  c->handler = LUA_NOREF;
  c->state = CONNECTING;
  c->L = ctx->L;
  b->c = c;

  if (path) {
    if (start_connect(c, ctx->loop, NULL, 0, path) != 0) return push_unavailable(L, c, "connect");
  } else if (is_numeric(host)) {
    if (start_connect(c, ctx->loop, host, port, NULL) != 0) return push_unavailable(L, c, "connect");
  } else {
    /* hiredis would resolve a name with a blocking getaddrinfo */
    resolve_req *r = calloc(1, sizeof *r);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (r == NULL) return luaL_error(L, "out of memory");
    r->c = c;
    r->port = port;
    r->loop = ctx->loop;
    int rc = uv_getaddrinfo(ctx->loop, &r->req, on_resolved, host, NULL, &hints);
    if (rc != 0) {
      free(r);
      snprintf(c->err, sizeof c->err, "cannot resolve the host: %s", uv_strerror(rc));
      c->state = CLOSED;
      return push_unavailable(L, c, "connect");
    }
    c->resolving = r;
  }

  c->timer = malloc(sizeof *c->timer);
  if (c->timer == NULL || uv_timer_init(ctx->loop, c->timer) != 0) {
    free(c->timer);
    c->timer = NULL;
  } else {
    c->timer->data = c;
    uv_timer_start(c->timer, on_connect_timeout, (uint64_t)timeout, 0);
  }
  c->waiter = t;
  c->wait.cancel = connect_cancel;
  return st->api->wait(L, t, &c->wait, connect_k, 0);
}

/* The task stopped waiting: on_reply frees the request alone. */
static void req_cancel(tide_wait *wait) {
  rwaiter *w = (rwaiter *)wait;
  if (w->q) w->q->w = NULL;
  w->q = NULL;
  w->task = NULL;
}

static int call_k(lua_State *L, int status, lua_KContext kctx) {
  (void)status;
  rwaiter *w = luaL_checkudata(L, (int)kctx, WAITER_MT);
  rstate *st = get_state(L);
  tide_task *t = st->api->current(L);
  if (!w->done) {
    /* cancelled with the reply still to come */
    st->api->check_cancel(L, t);
    lua_pushnil(L);
    st->api->push_error(L, "Cancelled", "redis command interrupted");
    return 2;
  }
  int ref = w->ref, is_error = w->is_error, lost = w->lost;
  rconn *c = w->c;
  w->ref = LUA_NOREF;
  if (lost || ref == LUA_NOREF) {
    if (ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, ref);
    if (!lost) return luaL_error(L, "out of memory converting a redis reply");
    return push_unavailable(L, c, "command");
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  if (is_error) {
    lua_getfield(L, -1, "error");
    const char *msg = lua_tostring(L, -1);
    lua_pushnil(L);
    /* OOM, NOAUTH, WRONGPASS...: Redis's own prefix says which. */
    st->api->push_error(L, "RedisError", "redis: %s", msg ? msg : "error");
    return 2;
  }
  return 1;
}

/* Collects the arguments from index `first` on into argv (strings or
** numbers, as Redis takes them). */
static void collect_args(lua_State *L, int first, int n, const char **argv, size_t *lens) {
  if (n < 1) luaL_error(L, "redis command: no command name");
  for (int i = 0; i < n; i++) {
    int idx = first + i;
    int ty = lua_type(L, idx);
    if (ty != LUA_TSTRING && ty != LUA_TNUMBER)
      luaL_argerror(L, idx, "string or number expected");
    argv[i] = lua_tolstring(L, idx, &lens[i]); /* numbers become strings in place */
  }
}

/* conn:call(name, args...) -> reply, or nil, err. Inside a task. Error
** replies are RedisError; a connection that is gone, ClusterUnavailable. */
static int l_call(lua_State *L) {
  rconn *c = check_conn(L);
  rstate *st = get_state(L);
  if (c == NULL || c->ac == NULL || c->state != READY) {
    if (c == NULL) return luaL_error(L, "redis connection is closed");
    return push_unavailable(L, c, "command");
  }
  if (c->subscribed) return luaL_error(L, "redis connection is subscribed: it takes no commands");
  tide_task *t = st->api->check_task(L, "redis command");
  st->api->check_cancel(L, t);
  int n = lua_gettop(L) - 1;
  if (n > MAX_ARGS) return luaL_error(L, "redis command: more than %d arguments", MAX_ARGS);
  const char **argv = lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * (sizeof(char *) + sizeof(size_t)), 0);
  size_t *lens = (size_t *)(argv + (n > 0 ? n : 1));
  collect_args(L, 2, n, argv, lens);
  rwaiter *w = lua_newuserdatauv(L, sizeof *w, 0); /* made before the malloc: it can raise */
  memset(w, 0, sizeof *w);
  w->ref = LUA_NOREF;
  luaL_setmetatable(L, WAITER_MT);
  rreq *q = malloc(sizeof *q);
  if (q == NULL) return luaL_error(L, "out of memory");
  q->c = c;
  q->w = w;
  if (redisAsyncCommandArgv(c->ac, on_reply, q, n, argv, lens) != REDIS_OK) {
    free(q);
    return push_unavailable(L, c, "command");
  }
  lua_remove(L, -2); /* argv; the waiter stays on the stack for the wait */
  w->q = q;
  w->c = c;
  w->task = t;
  if (c->inflight++ == 0) set_ref(c);
  w->wait.cancel = req_cancel;
  return st->api->wait(L, t, &w->wait, call_k, (lua_KContext)lua_gettop(L));
}

/* conn:subscribe(handler, kind, channels...): kind is "SUBSCRIBE" or
** "PSUBSCRIBE". From then on handler(kind, channel, payload) runs for every
** message; the connection takes only more (p)subscriptions. */
static int l_subscribe(lua_State *L) {
  rconn *c = check_conn(L);
  if (c == NULL) return luaL_error(L, "redis connection is closed");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  const char *kind = luaL_checkstring(L, 3);
  if (strcmp(kind, "SUBSCRIBE") != 0 && strcmp(kind, "PSUBSCRIBE") != 0)
    return luaL_argerror(L, 3, "SUBSCRIBE or PSUBSCRIBE expected");
  if (c->ac == NULL || c->state != READY) return push_unavailable(L, c, "subscribe");
  int n = lua_gettop(L) - 2;
  if (n < 2) return luaL_argerror(L, 4, "a channel expected");
  if (n > MAX_ARGS) return luaL_error(L, "redis subscribe: more than %d channels", MAX_ARGS);
  const char **argv = lua_newuserdatauv(L, (size_t)n * (sizeof(char *) + sizeof(size_t)), 0);
  size_t *lens = (size_t *)(argv + n);
  lua_insert(L, 3); /* keep argv below the arguments */
  collect_args(L, 4, n, argv, lens);
  if (c->handler != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, c->handler);
  lua_pushvalue(L, 2);
  c->handler = luaL_ref(L, LUA_REGISTRYINDEX);
  if (redisAsyncCommandArgv(c->ac, on_message, c, n, argv, lens) != REDIS_OK)
    return push_unavailable(L, c, "subscribe");
  c->subscribed = 1;
  lua_pushboolean(L, 1);
  return 1;
}

/* Ends c's connection. Gracefully (hiredis's disconnect), commands already
** sent are still written and answered first, so that one sent just before
** (a lease's release) reaches Redis; aborted, the socket goes at once and
** commands in flight fail with ClusterUnavailable. */
static void close_conn(rconn *c, int abort) {
  if (c && c->ac) {
    redisAsyncContext *ac = c->ac;
    int was_ready = c->state == READY;
    snprintf(c->err, sizeof c->err, "closed");
    detach(c, NULL);
    if (was_ready && !abort) redisAsyncDisconnect(ac);
    else redisAsyncFree(ac);
  }
}

/* conn:close(): ends the connection once the commands in flight are
** answered (they get their replies). */
static int l_close(lua_State *L) {
  rbox *b = luaL_checkudata(L, 1, CONN_MT);
  close_conn(b->c, 0);
  return 0;
}

/* conn:abort(): ends the connection now; commands in flight fail with
** ClusterUnavailable. For a server that does not answer: a graceful close
** would wait for it, and its socket would keep the loop up meanwhile. */
static int l_abort(lua_State *L) {
  rbox *b = luaL_checkudata(L, 1, CONN_MT);
  close_conn(b->c, 1);
  return 0;
}

/* conn:connected() -> whether commands can be sent. */
static int l_connected(lua_State *L) {
  rconn *c = check_conn(L);
  lua_pushboolean(L, c && c->ac && c->state == READY);
  return 1;
}

/* conn:error() -> why the connection closed (a string), or nil. */
static int l_error(lua_State *L) {
  rconn *c = check_conn(L);
  if (c && c->state == CLOSED && c->err[0]) lua_pushstring(L, c->err);
  else lua_pushnil(L);
  return 1;
}

/* ----------------------------------------------------------- module -- */

static void shutdown_conns(tide_ctx *ctx) {
  lua_State *L = ctx->L;
  lua_getfield(L, LUA_REGISTRYINDEX, STATE_KEY);
  rstate *st = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (st == NULL) return;
  while (st->head) {
    rconn *c = st->head;
    redisAsyncContext *ac = c->ac;
    detach(c, "state closed");
    c->handler = LUA_NOREF; /* the registry goes with the state */
    redisAsyncFree(ac);
    maybe_free(c);
  }
}

static rstate *get_state(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, STATE_KEY);
  rstate *st = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (st) return st;
  lua_getfield(L, LUA_REGISTRYINDEX, TIDE_API_KEY);
  const tide_api *api = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (api == NULL) luaL_error(L, "tide.redis needs tide.core loaded first");
  st = lua_newuserdatauv(L, sizeof *st, 0);
  memset(st, 0, sizeof *st);
  st->api = api;
  lua_setfield(L, LUA_REGISTRYINDEX, STATE_KEY);
  if (api->on_shutdown(api->ctx(L), shutdown_conns) != 0)
    luaL_error(L, "tide.redis: no shutdown hook left");
  return st;
}

/// Opens `tide.redis`: connect, and a connection's call, subscribe,
/// connected, error, close and abort.
__attribute__((visibility("default"))) int luaopen_tide_redis(lua_State *L) {
  static const luaL_Reg methods[] = {{"call", l_call},           {"subscribe", l_subscribe},
                                     {"close", l_close},         {"abort", l_abort},
                                     {"connected", l_connected}, {"error", l_error},
                                     {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", conn_gc}, {"__close", l_close}, {NULL, NULL}};
  lua_getglobal(L, "require");
  lua_pushliteral(L, "tide.core");
  lua_call(L, 1, 0);
  get_state(L);
  if (luaL_newmetatable(L, CONN_MT)) {
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  /* Waiters carry a metatable only so that the continuation can check what
  ** it finds on its stack. */
  luaL_newmetatable(L, WAITER_MT);
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, l_connect);
  lua_setfield(L, -2, "connect");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "tls");
  lua_pushfstring(L, "%d.%d.%d", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
  lua_setfield(L, -2, "hiredis");
  return 1;
}
