/*
** http.c -- HTTP requests through libcurl's multi interface on the libuv loop.
**
** Transfers are spread over a few CURLM "shards" per Lua state, each filled up
** to SHARD_TARGET transfers before the next is opened: libcurl 7.88 looks for
** a reusable connection by walking every connection it holds to the host,
** which is quadratic at ten thousand connections in one multi handle. Each
** shard has its own uv_timer_t (CURLMOPT_TIMERFUNCTION); sockets get one
** uv_poll_t each for the socket's whole life, found by descriptor, and it
** stays armed between transfers (see socket_cb), so a keep-alive connection
** reused by the next transfer costs no epoll_ctl at all. Completed transfers
** are collected with curl_multi_info_read after every
** curl_multi_socket_action.
**
** Re-entry rules: libcurl callbacks (write, header, socket, timer) never call
** Lua and never call libcurl; they copy bytes into C buffers and wake the
** waiting task. Lua code never runs inside curl_multi_socket_action, so a
** cancellation from Lua can remove an easy handle at once; the in_curl flag
** still defers it, should that ever change.
**
** A request is a malloc'ed tide_http pointed to by a Lua userdata. The task
** that waits on it keeps that userdata on its stack; the request body string
** is anchored as the userdata's uservalue, so libcurl reads it without a copy
** (or, for core.http_post with a wire list, is joined into the request's own
** buffer). A finished request goes to a small free list with its buffers, so
** a provider's round trip in steady state mallocs nothing of its own.
*/
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tide.h"

#define HTTP_MT "tide.http"
#define HEADERS_MT "tide.http_headers"
#define EASY_POOL_MAX 256
#define DEFAULT_MAX_BODY (64u * 1024u * 1024u)
#define DEFAULT_TIMEOUT_MS 120000L
/* libcurl's receive buffer is per transfer and lives as long as the
** transfer does: at ten thousand sessions in flight, each KiB is ten MB. So
** a transfer started while few are in flight gets libcurl's default 16 KiB
** (a reply in one recv), one started in a crowd 1 KiB, libcurl's minimum
** (more write callbacks on large bodies, and model replies arrive in small
** pieces anyway). An easy handle keeps the size it was first used with:
** libcurl 7.88 allocates the buffer at a handle's first transfer and does
** not grow it when CURLOPT_BUFFERSIZE grows, so a handle of one size reused
** with the other would take recv()s past its buffer's end. The pool hands
** a request a handle of the size it wants, or a new one. */
#define RECV_BUFFER_SIZE 16384L
#define RECV_BUFFER_CROWDED 1024L
#define CROWD 64
/* Idle kept-alive connections are capped by the descriptor limit, whatever
** it is: at most half of the soft limit less IDLE_RESERVE, across all
** shards, so that a burst that ended leaves the process descriptors for its
** files, transcripts, pipes and modules. MAX_IDLE_CONNECTIONS bounds a
** shard's share when the limit is huge or unlimited. */
#define MAX_IDLE_CONNECTIONS 16384
#define IDLE_RESERVE 64
#define SHARD_TARGET 512
#define MAX_SHARDS 64
/* Finished requests kept for reuse, and the largest buffer one keeps. */
#define SPARE_MAX 64
#define SPARE_BUF_MAX 16384

typedef struct tide_http_state tide_http_state;
typedef struct sock_ctx sock_ctx;

/* One CURLM and its timer. */
typedef struct shard {
  tide_http_state *hs;
  CURLM *multi;
  uv_timer_t *timer;
  int active;  /* transfers added */
  int weak;    /* of them, transfers that keep no loop alive (hold = false) */
  int release; /* let go of the idle connections once none is in flight */
} shard;

struct tide_http_state {
  tide_ctx *ctx;
  shard *shards[MAX_SHARDS];
  int nshards;
  sock_ctx **socks; /* watcher by socket descriptor */
  int nsocks;
  unsigned char *conn; /* by descriptor: 1 for a connection libcurl opened */
  int nconn;
  int in_curl;
  CURL *pool[EASY_POOL_MAX];
  unsigned char pool_plain[EASY_POOL_MAX]; /* pool[i] keeps a plain POST's options */
  unsigned char pool_small[EASY_POOL_MAX]; /* pool[i]'s receive buffer is RECV_BUFFER_CROWDED */
  int env_proxy; /* a proxy variable was set when HTTP started (see http_state) */
  char *ca_file, *ca_dir; /* SSL_CERT_FILE and SSL_CERT_DIR then, or NULL */
  int npool;
  tide_http *active;     /* requests added to the multi handle */
  int nactive;           /* how many */
  tide_http *deferred;   /* removals queued while inside libcurl */
  tide_http *spare;      /* finished requests for reuse (next_deferred links) */
  int nspare;
  uint64_t requests, connections;
  uint64_t idle_stirred; /* idle kept-alive sockets that stirred (poll_cb) */
};

struct tide_http {
  tide_ctx *ctx;        /* outlives hs: valid until every finalizer has run */
  tide_http_state *hs;
  shard *shard;         /* where the transfer runs */
  CURL *easy;
  struct curl_slist *headers; /* owned; NULL with prepared headers */
  int plain;            /* the easy handle has only the options of a POST */
  int small;            /* the easy handle's receive buffer is RECV_BUFFER_CROWDED */
  tide_http *next_active, *prev_active, *next_deferred;
  int in_multi;
  int done;
  int stream;           /* deliver 2xx bodies as chunks */
  int lean;             /* http_post: a lean result (see push_result) */
  int weak;             /* keeps no loop alive (hold = false) */
  int sse;              /* pump: the body was seen to be an event stream */
  int fed;              /* pump: some of it went to the parser */
  int too_large;
  int gone;             /* the Lua userdata was collected */
  int fd_exhausted;     /* failed while the process had no descriptor left */
  CURLcode result;
  long status;
  int code;             /* the status of the response being received (header_cb) */
  size_t max_body, received;
  tide_buf body;             /* whole body, or chunks not yet taken by next() */
  tide_buf head;             /* raw response header lines of the last response */
  tide_buf send;             /* the request body joined from a wire list */
  tide_task *task;      /* the task waiting in next(), if any */
  tide_wait wait;
  double total_s, ttfb_s, connect_s;
  long num_connects;
  char errbuf[CURL_ERROR_SIZE];
};

/* ------------------------------------------------------ the multi side -- */

struct sock_ctx {
  uv_poll_t poll;
  curl_socket_t fd;
  shard *sh;
  int events; /* what the watcher waits for (0: stopped) */
  int idle;   /* libcurl is done with the socket for now (see socket_cb) */
};

static void check_done(shard *sh);
static void drop_idle(shard *sh);
static void release_idle(tide_http_state *hs);

/* A request's end: onto the spare list while HTTP runs (buffers up to
** SPARE_BUF_MAX kept), freed otherwise. */
static void free_request(tide_http *r) {
  curl_slist_free_all(r->headers);
  r->headers = NULL;
  tide_http_state *hs = r->ctx->http;
  if (hs && hs->nspare < SPARE_MAX) {
    tide__buf_keep(&r->body, SPARE_BUF_MAX);
    tide__buf_keep(&r->head, SPARE_BUF_MAX);
    tide__buf_keep(&r->send, SPARE_BUF_MAX);
    r->next_deferred = hs->spare;
    hs->spare = r;
    hs->nspare++;
    return;
  }
  tide__buf_free(&r->body);
  tide__buf_free(&r->head);
  tide__buf_free(&r->send);
  free(r);
}

/* A zeroed request, with a spare one's buffers (empty) when there is one. */
static tide_http *new_request(tide_http_state *hs) {
  tide_http *r = hs->spare;
  if (r == NULL) return calloc(1, sizeof *r);
  hs->spare = r->next_deferred;
  hs->nspare--;
  tide_buf body = r->body, head = r->head, send = r->send;
  memset(r, 0, sizeof *r);
  r->body = body;
  r->head = head;
  r->send = send;
  return r;
}

/* A handle that served a plain POST goes back to the pool as it is: the next
** plain POST sets every option it has anyway (curl_easy_reset and twenty
** setopts are a tenth of a round trip's CPU on loopback). Any other is
** reset, and l_request resets a pooled handle before a request that is not
** plain. */
static void release_easy(tide_http_state *hs, CURL *e, int plain, int small) {
  if (hs->npool < EASY_POOL_MAX) {
    if (!plain) curl_easy_reset(e);
    hs->pool_plain[hs->npool] = (unsigned char)(plain != 0);
    hs->pool_small[hs->npool] = (unsigned char)(small != 0);
    hs->pool[hs->npool++] = e;
  } else {
    curl_easy_cleanup(e);
  }
}

static void unlink_active(tide_http *r) {
  tide_http_state *hs = r->hs;
  if (r->prev_active)
    r->prev_active->next_active = r->next_active;
  else
    hs->active = r->next_active;
  if (r->next_active) r->next_active->prev_active = r->prev_active;
  r->next_active = r->prev_active = NULL;
}

/* The shard's timer keeps the loop alive while a transfer that holds it is
** in flight, and only then: a weak transfer alone (a stream listened to in
** the background) lets tide.run end. */
static void hold_timer(shard *sh) {
  if (sh->active > sh->weak)
    uv_ref((uv_handle_t *)sh->timer);
  else
    uv_unref((uv_handle_t *)sh->timer);
}

/* Takes a request out of libcurl and returns its easy handle to the pool. */
static void detach(tide_http *r) {
  tide_http_state *hs = r->hs;
  if (r->in_multi) {
    curl_multi_remove_handle(r->shard->multi, r->easy);
    r->shard->active--;
    if (r->weak) r->shard->weak--;
    hold_timer(r->shard);
    hs->nactive--;
    unlink_active(r);
    r->in_multi = 0;
  }
  if (r->easy) {
    release_easy(hs, r->easy, r->plain, r->small);
    r->easy = NULL;
  }
}

static void run_deferred(tide_http_state *hs) {
  while (hs->deferred) {
    tide_http *r = hs->deferred;
    hs->deferred = r->next_deferred;
    r->next_deferred = NULL;
    detach(r);
    if (r->gone) free_request(r);
  }
}

static void socket_action(shard *sh, curl_socket_t fd, int flags) {
  tide_http_state *hs = sh->hs;
  int running;
  hs->in_curl = 1;
  curl_multi_socket_action(sh->multi, fd, flags, &running);
  hs->in_curl = 0;
  check_done(sh);
  run_deferred(hs);
}

static void poll_cb(uv_poll_t *h, int status, int events) {
  sock_ctx *s = h->data;
  int flags = 0;
  if (s->idle) {
    /* A kept-alive connection stirred between transfers (the server closed
    ** it, most likely): stop watching; libcurl checks the connection before
    ** it reuses it. */
    uv_poll_stop(&s->poll);
    s->events = 0;
    s->sh->hs->idle_stirred++;
    return;
  }
  if (status < 0) {
    flags = CURL_CSELECT_ERR;
  } else {
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  }
  socket_action(s->sh, s->fd, flags);
}

static void sock_close_cb(uv_handle_t *h) { free(h->data); }

static sock_ctx *sock_lookup(tide_http_state *hs, curl_socket_t fd) {
  return (fd >= 0 && fd < hs->nsocks) ? hs->socks[fd] : NULL;
}

static int sock_store(tide_http_state *hs, curl_socket_t fd, sock_ctx *s) {
  if (fd >= hs->nsocks) {
    int n = hs->nsocks ? hs->nsocks : 256;
    while (n <= fd) n *= 2;
    sock_ctx **p = realloc(hs->socks, (size_t)n * sizeof *p);
    if (p == NULL) return -1;
    memset(p + hs->nsocks, 0, (size_t)(n - hs->nsocks) * sizeof *p);
    hs->socks = p;
    hs->nsocks = n;
  }
  hs->socks[fd] = s;
  return 0;
}

/* Closes the watcher of a socket that is going away. */
static void sock_forget(tide_http_state *hs, curl_socket_t fd) {
  sock_ctx *s = sock_lookup(hs, fd);
  if (s == NULL) return;
  hs->socks[fd] = NULL;
  uv_close((uv_handle_t *)&s->poll, sock_close_cb);
}

/* Marks descriptor fd as a connection libcurl opened (on: 1) or not. */
static int mark_conn(tide_http_state *hs, curl_socket_t fd, int on) {
  if (fd < 0) return 0;
  if (fd >= hs->nconn) {
    if (!on) return 0;
    int n = hs->nconn ? hs->nconn : 256;
    while (n <= fd) n *= 2;
    unsigned char *p = realloc(hs->conn, (size_t)n);
    if (p == NULL) return -1;
    memset(p + hs->nconn, 0, (size_t)(n - hs->nconn));
    hs->conn = p;
    hs->nconn = n;
  }
  hs->conn[fd] = (unsigned char)on;
  return 0;
}

static int is_conn(const tide_http_state *hs, curl_socket_t fd) {
  return fd >= 0 && fd < hs->nconn && hs->conn[fd];
}

/* CURLOPT_OPENSOCKETFUNCTION: a connection's socket, marked as one: its
** watcher lives until closesocket_cb (an idle kept-alive connection stays
** watched between transfers). Any other socket libcurl asks to watch (its
** threaded resolver's socketpair) it closes itself, without closesocket_cb:
** that watcher goes as soon as libcurl stops asking (socket_cb), before the
** descriptor can be reused by another handle of the loop. */
static curl_socket_t opensocket_cb(void *clientp, curlsocktype purpose, struct curl_sockaddr *a) {
  (void)purpose;
  curl_socket_t fd = socket(a->family, a->socktype, a->protocol);
  if (fd != CURL_SOCKET_BAD && mark_conn(clientp, fd, 1) != 0) {
    close(fd);
    return CURL_SOCKET_BAD;
  }
  return fd;
}

/* CURLOPT_CLOSESOCKETFUNCTION: the socket's life ends here, and so does its
** watcher (closed before the descriptor can be reused by a new socket). */
static int closesocket_cb(void *clientp, curl_socket_t fd) {
  sock_forget(clientp, fd);
  mark_conn(clientp, fd, 0);
  return close(fd);
}

static int socket_cb(CURL *e, curl_socket_t fd, int what, void *userp,
                     void *socketp) {
  (void)socketp;
  shard *sh = userp;
  tide_http_state *hs = sh->hs;
  sock_ctx *s = sock_lookup(hs, fd);
  if (what == CURL_POLL_REMOVE) {
    if (!is_conn(hs, fd)) { /* not a connection: libcurl closes it unseen */
      sock_forget(hs, fd);
      return 0;
    }
    /* The transfer is done with the socket, but a kept-alive connection is
    ** likely to serve the next one at once. uv_poll_stop and uv_poll_start
    ** cost an epoll_ctl each (libuv deletes the descriptor from the epoll
    ** set on stop and re-adds it on start), so the watcher stays armed,
    ** unreferenced so that it keeps no loop alive; poll_cb stops it should
    ** the idle socket stir. */
    if (s && s->events) {
      s->idle = 1;
      uv_unref((uv_handle_t *)&s->poll);
    }
    return 0;
  }
  if (s == NULL) {
    s = malloc(sizeof *s);
    if (s == NULL) return -1;
    if (uv_poll_init_socket(hs->ctx->loop, &s->poll, fd) != 0 ||
        sock_store(hs, fd, s) != 0) {
      free(s);
      return -1;
    }
    s->fd = fd;
    s->events = 0;
    s->idle = 0;
    s->poll.data = s;
  }
  s->sh = sh;
  int events = 0;
  if (what & CURL_POLL_IN) events |= UV_READABLE;
  if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
  s->idle = 0;
  /* The watcher holds the loop for the transfer using the socket, unless
  ** that transfer is weak. */
  tide_http *owner = NULL;
  if (sh->weak > 0) curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&owner);
  if (owner && owner->weak)
    uv_unref((uv_handle_t *)&s->poll);
  else
    uv_ref((uv_handle_t *)&s->poll);
  if (events != s->events) {
    uv_poll_start(&s->poll, events, poll_cb);
    s->events = events;
  }
  return 0;
}

static void on_timeout(uv_timer_t *h) {
  socket_action(h->data, CURL_SOCKET_TIMEOUT, 0);
}

/* As CURLMOPT_TIMERFUNCTION documents: one timer, replaced on every call;
** -1 deletes it; libcurl is never called from inside this callback (a 0
** timeout fires on the next loop iteration instead). */
static int timer_cb(CURLM *m, long timeout_ms, void *userp) {
  (void)m;
  shard *sh = userp;
  if (timeout_ms < 0)
    uv_timer_stop(sh->timer);
  else
    uv_timer_start(sh->timer, on_timeout, (uint64_t)timeout_ms, 0);
  hold_timer(sh);
  return 0;
}

static void check_done(shard *sh) {
  tide_http_state *hs = sh->hs;
  CURLMsg *msg;
  int left, exhausted = 0;
  while ((msg = curl_multi_info_read(sh->multi, &left))) {
    if (msg->msg != CURLMSG_DONE) continue;
    tide_http *r = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
    if (r == NULL) continue;
    r->result = msg->data.result;
    r->done = 1;
    if (r->result != CURLE_OK && r->result != CURLE_ABORTED_BY_CALLBACK) {
      /* Running out of descriptors surfaces as assorted connect and poll
      ** errors; ask the kernel directly while the table is still full. */
      int fd = dup(2);
      if (fd < 0 && errno == EMFILE)
        r->fd_exhausted = exhausted = 1;
      else if (fd >= 0)
        close(fd);
    }
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
    curl_easy_getinfo(r->easy, CURLINFO_STARTTRANSFER_TIME, &r->ttfb_s);
    curl_easy_getinfo(r->easy, CURLINFO_NUM_CONNECTS, &r->num_connects);
    if (!r->lean) { /* a lean result reports neither */
      curl_easy_getinfo(r->easy, CURLINFO_TOTAL_TIME, &r->total_s);
      curl_easy_getinfo(r->easy, CURLINFO_CONNECT_TIME, &r->connect_s);
    }
    hs->connections += (uint64_t)r->num_connects;
    detach(r);
    if (r->gone) {
      free_request(r);
    } else if (r->task) {
      tide_task *t = r->task;
      r->task = NULL;
      tide__wake(t);
    }
  }
  /* After curl_multi_info_read is done with this shard's handle, which
  ** drop_idle may replace. */
  if (exhausted)
    release_idle(hs);
  else if (sh->release && sh->active == 0)
    drop_idle(sh);
}

static void timer_close_cb(uv_handle_t *h) { free(h); }

/* The idle connections one of nshards shards may keep (see IDLE_RESERVE):
** never 0, which libcurl would take as "no limit". The limit is read anew
** each time, as the host, or tide's first run of the loop, may raise it. */
static long idle_cap(int nshards) {
  struct rlimit rl;
  long total = (long)MAX_IDLE_CONNECTIONS * MAX_SHARDS;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      rl.rlim_cur / 2 < (rlim_t)total + IDLE_RESERVE)
    total = (long)(rl.rlim_cur / 2) - IDLE_RESERVE;
  long cap = total / (nshards > 1 ? nshards : 1);
  if (cap > MAX_IDLE_CONNECTIONS) cap = MAX_IDLE_CONNECTIONS;
  return cap < 1 ? 1 : cap;
}

/* Shares the idle cap among the shards there are now. A lower cap closes
** nothing at once: libcurl applies it as connections come back to its cache
** (closing the oldest idle one whenever the cache is over the cap). */
static void size_idle_caps(tide_http_state *hs) {
  long cap = idle_cap(hs->nshards);
  for (int i = 0; i < hs->nshards; i++)
    curl_multi_setopt(hs->shards[i]->multi, CURLMOPT_MAXCONNECTS, cap);
}

static CURLM *new_multi(shard *sh) {
  CURLM *multi = curl_multi_init();
  if (multi == NULL) return NULL;
  curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
  curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, sh);
  curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(multi, CURLMOPT_TIMERDATA, sh);
  curl_multi_setopt(multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  /* libcurl's default idle-connection cache is four times the number of
  ** transfers *currently* added, so the tail of a burst closes most of the
  ** connections the burst opened. Sessions come back to the same provider
  ** after each tool round: keep their connections, up to the cap the
  ** descriptor limit allows (set by size_idle_caps). */
  curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, idle_cap(sh->hs->nshards));
  return multi;
}

static shard *new_shard(tide_http_state *hs) {
  shard *sh = calloc(1, sizeof *sh);
  uv_timer_t *timer = malloc(sizeof *timer);
  CURLM *multi = NULL;
  if (sh) {
    sh->hs = hs;
    multi = new_multi(sh);
  }
  if (!sh || !timer || !multi) {
    free(sh);
    free(timer);
    if (multi) curl_multi_cleanup(multi);
    return NULL;
  }
  sh->multi = multi;
  sh->timer = timer;
  uv_timer_init(hs->ctx->loop, timer);
  timer->data = sh;
  hs->shards[hs->nshards++] = sh;
  size_idle_caps(hs);
  return sh;
}

/* Closes every idle connection of a shard that has no transfer in flight.
** Neither a lower CURLMOPT_MAXCONNECTS nor anything else in libcurl 7.88
** closes connections that sit idle in a multi handle's cache (a cap is
** applied only as a connection comes back to it), and shutting a socket
** down behind libcurl's back would not free its descriptor; only
** curl_multi_cleanup closes them all (through closesocket_cb, which also
** closes their watchers). So the shard gets a new multi handle. Called from
** check_done after libcurl has returned, never from a libcurl callback. */
static void drop_idle(shard *sh) {
  CURLM *multi = new_multi(sh);
  if (multi == NULL) return; /* the old one goes on; tried again next time */
  sh->release = 0;
  curl_multi_cleanup(sh->multi);
  uv_timer_stop(sh->timer);
  sh->multi = multi;
}

/* The process ran out of descriptors: every shard lets go of its idle
** connections, at once if nothing is in flight on it, otherwise when its
** last transfer ends (check_done). Descriptors held by idle connections
** are what a process that ran out needs first: for its files, its
** transcripts, the modules it loads, its next request. */
static void release_idle(tide_http_state *hs) {
  for (int i = 0; i < hs->nshards; i++) {
    shard *sh = hs->shards[i];
    sh->release = 1;
    if (sh->active == 0) drop_idle(sh);
  }
}

/* The first shard with room, so that a burst lands where the previous
** burst left its idle connections; a new shard only when all are full. */
static shard *pick_shard(tide_http_state *hs) {
  for (int i = 0; i < hs->nshards; i++)
    if (hs->shards[i]->active < SHARD_TARGET) return hs->shards[i];
  if (hs->nshards < MAX_SHARDS) {
    shard *sh = new_shard(hs);
    if (sh) return sh;
  }
  shard *best = hs->shards[0];
  for (int i = 1; i < hs->nshards; i++)
    if (hs->shards[i]->active < best->active) best = hs->shards[i];
  return best;
}

/* The HTTP side of ctx's state, made on first use (http_state: of L's). */
static tide_http_state *http_state_of(lua_State *L, tide_ctx *ctx) {
  if (ctx->http) return ctx->http;
  /* On first use, not at module load (it costs a millisecond of TLS set-up
  ** that a script without HTTP never needs). libcurl counts the calls. */
  curl_global_init(CURL_GLOBAL_DEFAULT);
  tide_http_state *hs = calloc(1, sizeof *hs);
  if (hs == NULL) luaL_error(L, "tide: cannot initialise HTTP");
  hs->ctx = ctx;
  /* libcurl reads the proxy variables (no_proxy, http_proxy, all_proxy...)
  ** from the environment on every transfer: five getenv scans a request.
  ** They are read here once; with none set, every handle is told "no proxy"
  ** outright. With any set, libcurl goes on reading them itself. */
  static const char *const proxy_vars[] = {"http_proxy", "HTTP_PROXY", "https_proxy",
                                           "HTTPS_PROXY", "all_proxy", "ALL_PROXY"};
  for (size_t i = 0; i < sizeof proxy_vars / sizeof proxy_vars[0]; i++)
    if (getenv(proxy_vars[i])) hs->env_proxy = 1;
  /* The certificate authorities of a network that inspects TLS (a company
  ** proxy's own CA): libcurl names its built-in bundle to OpenSSL, which
  ** then never looks at the variables OpenSSL, the official SDKs' httpx
  ** and the curl tool read. They are read here, once, as the proxy's. */
  const char *ca_file = getenv("SSL_CERT_FILE");
  if (ca_file == NULL || *ca_file == '\0') ca_file = getenv("CURL_CA_BUNDLE");
  const char *ca_dir = getenv("SSL_CERT_DIR");
  if (ca_file && *ca_file) hs->ca_file = strdup(ca_file);
  if (ca_dir && *ca_dir) hs->ca_dir = strdup(ca_dir);
  if (new_shard(hs) == NULL) {
    free(hs->ca_file);
    free(hs->ca_dir);
    free(hs);
    luaL_error(L, "tide: cannot initialise HTTP");
  }
  ctx->http = hs;
  return hs;
}

static tide_http_state *http_state(lua_State *L) { return http_state_of(L, tide__ctx(L)); }

void tide__http_shutdown(tide_ctx *ctx) {
  tide_http_state *hs = ctx->http;
  if (hs == NULL) return;
  /* In order: easy handles out of the multi handles, multi cleanup (which
  ** closes the sockets through closesocket_cb), the socket watchers left,
  ** then the timers. */
  while (hs->active) {
    tide_http *r = hs->active;
    detach(r);
    r->task = NULL;
    r->done = 1;
    r->result = CURLE_ABORTED_BY_CALLBACK;
    if (r->gone) free_request(r);
  }
  run_deferred(hs);
  for (int i = 0; i < hs->npool; i++) curl_easy_cleanup(hs->pool[i]);
  hs->npool = 0;
  for (int i = 0; i < hs->nshards; i++) {
    shard *sh = hs->shards[i];
    curl_multi_cleanup(sh->multi);
    uv_close((uv_handle_t *)sh->timer, timer_close_cb);
    free(sh);
  }
  hs->nshards = 0;
  for (int fd = 0; fd < hs->nsocks; fd++) sock_forget(hs, fd);
  free(hs->socks);
  free(hs->conn);
  ctx->http = NULL;
  while (hs->spare) {
    tide_http *r = hs->spare;
    hs->spare = r->next_deferred;
    free_request(r); /* freed for good: ctx->http is gone */
  }
  free(hs->ca_file);
  free(hs->ca_dir);
  free(hs);
}

/* ------------------------------------------------- libcurl callbacks -- */

/* Whether the response being received is a 2xx: its status line's code,
** kept by header_cb (curl_easy_getinfo would cost a few hundred
** instructions on every chunk of a stream). */
static int is_2xx(tide_http *r) { return r->code >= 200 && r->code < 300; }

static size_t write_cb(char *p, size_t size, size_t n, void *ud) {
  tide_http *r = ud;
  size_t len = size * n;
  /* The cap bounds what is held: a 2xx stream's chunks are handed over as
  ** they come (the parsers bound an event themselves), so what counts
  ** there is what waits in the buffer, not the stream's whole length. */
  size_t held = r->stream && is_2xx(r) ? r->body.len : r->received;
  if (held + len > r->max_body) {
    r->too_large = 1;
    return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
  }
  r->received += len;
  if (tide__buf_add(&r->body, p, len) != 0) return 0;
  if (r->stream && r->task && is_2xx(r)) {
    tide_task *t = r->task;
    r->task = NULL;
    tide__wake(t);
  }
  return len;
}

static size_t header_cb(char *p, size_t size, size_t n, void *ud) {
  tide_http *r = ud;
  size_t len = size * n;
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) { /* a new response: "HTTP/1.1 200 OK" */
    r->head.len = 0;
    const char *sp = memchr(p, ' ', len);
    r->code = 0;
    if (sp && (size_t)(sp - p) + 4 <= len && sp[1] >= '0' && sp[1] <= '9' && sp[2] >= '0' &&
        sp[2] <= '9' && sp[3] >= '0' && sp[3] <= '9')
      r->code = (sp[1] - '0') * 100 + (sp[2] - '0') * 10 + (sp[3] - '0');
  }
  if (len > 15 && strncasecmp(p, "content-length:", 15) == 0) {
    unsigned long long cl = strtoull(p + 15, NULL, 10);
    if (cl > r->max_body) {
      r->too_large = 1;
      return 0;
    }
  }
  if (r->head.len + len > 256 * 1024) return 0; /* absurd headers */
  if (tide__buf_add(&r->head, p, len) != 0) return 0;
  return len;
}

/* ------------------------------------------------------------ results -- */

static const char *code_for(tide_http *r) {
  if (r->too_large) return "BodyTooLarge";
  if (r->fd_exhausted || strstr(r->errbuf, "Too many open files")) return "FdLimit";
  switch (r->result) {
    case CURLE_COULDNT_CONNECT: return "ConnectFailed";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: return "ResolveFailed";
    case CURLE_OPERATION_TIMEDOUT: return "Timeout";
    case CURLE_FILESIZE_EXCEEDED: return "BodyTooLarge";
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM: return "ConnectionClosed";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE: return "TLSFailed";
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL: return "BadURL";
    case CURLE_ABORTED_BY_CALLBACK: return "Cancelled";
    default: return "HttpFailed";
  }
}

static void parse_headers(lua_State *L, const char *p, size_t len) {
  lua_createtable(L, 0, 8);
  const char *end = p + len;
  while (p && p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (eol == NULL) eol = end;
    const char *colon = memchr(p, ':', (size_t)(eol - p));
    if (colon && colon > p) {
      const char *v = colon + 1, *ve = eol;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ')) ve--;
      tide__add_header(L, p, (size_t)(colon - p), v, (size_t)(ve - v));
    }
    p = eol + 1;
  }
}

static void push_ms(lua_State *L, const char *k, double s) {
  lua_pushnumber(L, s * 1000.0);
  lua_setfield(L, -2, k);
}

static int push_result(lua_State *L, tide_http *r) {
  if (r->result != CURLE_OK || r->too_large) {
    const char *code = code_for(r);
    lua_pushnil(L);
    if (r->too_large)
      tide__push_error(L, code, "response body exceeds max_body_bytes (%d)",
                       (int)r->max_body);
    else if (code[0] == 'F' && strcmp(code, "FdLimit") == 0)
      tide__push_error(L, code,
                       "out of file descriptors (raise the hard limit, "
                       "ulimit -Hn): %s",
                       r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->result));
    else
      tide__push_error(L, code, "%s", r->errbuf[0] ? r->errbuf
                                                   : curl_easy_strerror(r->result));
    lua_pushinteger(L, (lua_Integer)r->result);
    lua_setfield(L, -2, "curl_code");
    if (r->status) {
      lua_pushinteger(L, r->status);
      lua_setfield(L, -2, "status");
    }
    return 2;
  }
  lua_pushliteral(L, "done");
  if (r->lean) {
    /* http_post's caller (a provider) reads the status and the time to
    ** first byte, and the body where it is (req:body(), or parsed in
    ** place); the headers only of a failure (req:headers_raw()). */
    lua_pushinteger(L, r->status);
    lua_pushnumber(L, r->ttfb_s * 1000.0);
    return 3;
  }
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, r->status);
  lua_setfield(L, -2, "status");
  /* The header table is built on first use (tide.http does it lazily):
  ** most successful responses are never asked for their headers. */
  lua_pushlstring(L, r->head.p ? r->head.p : "", r->head.len);
  lua_setfield(L, -2, "headers_raw");
  lua_pushlstring(L, r->body.p ? r->body.p : "", r->body.len);
  lua_setfield(L, -2, "body");
  lua_pushboolean(L, r->num_connects == 0);
  lua_setfield(L, -2, "reused");
  lua_createtable(L, 0, 3);
  push_ms(L, "total_ms", r->total_s);
  push_ms(L, "ttfb_ms", r->ttfb_s);
  push_ms(L, "connect_ms", r->connect_s);
  lua_setfield(L, -2, "timing");
  tide__buf_free(&r->body);
  return 2;
}

/* ----------------------------------------------------------- bindings -- */

static tide_http *check_req(lua_State *L) {
  tide_http **pp = tide__checkudata(L, 1, HTTP_MT);
  if (*pp == NULL) luaL_error(L, "attempt to use a closed http request");
  return *pp;
}

static void req_cancel_wait(tide_wait *w) {
  tide_http *r = (tide_http *)((char *)w - offsetof(tide_http, wait));
  r->task = NULL;
  /* A cancelled wait aborts the transfer too: nobody will read it. */
  if (!r->done) {
    r->done = 1;
    r->result = CURLE_ABORTED_BY_CALLBACK;
    if (r->hs->in_curl) {
      r->next_deferred = r->hs->deferred;
      r->hs->deferred = r;
    } else {
      detach(r);
    }
  }
}

/* Whether a streamed request has body bytes for its reader: a 2xx's, as they
** come; at the end, those that came before a failure too (the reader sees
** everything it was sent, then the error). */
static int has_data(tide_http *r) {
  if (!r->stream || r->body.len == 0) return 0;
  if (!r->done) return r->easy && is_2xx(r);
  return r->status >= 200 && r->status < 300 && !r->too_large &&
         r->result != CURLE_ABORTED_BY_CALLBACK;
}

/* Makes the running task wait for r, to go on in k. */
static int wait_for(lua_State *L, tide_http *r, tide_task *t, lua_KFunction k) {
  if (r->task) return luaL_error(L, "http request already has a waiting task");
  r->task = t;
  r->wait.cancel = req_cancel_wait;
  /* The continuation is handed the task (it runs in it: no lookup). */
  return tide__wait(L, t, &r->wait, k, (lua_KContext)t);
}

/* The request at 1, for a read by the running task (*t), which must not be
** cancelled. */
static tide_http *check_read(lua_State *L, tide_task **t) {
  tide_http *r = check_req(L);
  *t = tide__check_task(L, "http request");
  tide__check_cancel(L, *t);
  return r;
}

static int next_k(lua_State *L, int status, lua_KContext kctx);

/* next() for request r, read by task t. */
static int read_next(lua_State *L, tide_http *r, tide_task *t) {
  if (has_data(r)) {
    lua_pushliteral(L, "data");
    lua_pushlstring(L, r->body.p, r->body.len);
    r->body.len = 0;
    return 2;
  }
  if (r->done) return push_result(L, r);
  return wait_for(L, r, t, next_k);
}

/* req:next() -> "data", chunk | "done", res | nil, err  (waits in a task) */
static int l_next(lua_State *L) {
  tide_task *t;
  tide_http *r = check_read(L, &t);
  return read_next(L, r, t);
}

static int next_k(lua_State *L, int status, lua_KContext kctx) {
  (void)status;
  tide_task *t = (tide_task *)kctx;
  tide__check_cancel(L, t);
  return read_next(L, check_req(L), t);
}

static int pump_k(lua_State *L, int status, lua_KContext kctx);

/* pump() for request r, read by task t. */
static int read_pump(lua_State *L, tide_http *r, tide_task *t) {
  const tide_sink *sink = tide__sink_of(L, 2);
  luaL_argexpected(L, sink != NULL, 2, "reply parser");
  while (has_data(r)) {
    if (!r->sse) {
      /* Bytes before the first significant one are held until it comes, as
      ** the Lua reader holds them (white space as Lua's %s knows it). */
      size_t k = 0;
      while (k < r->body.len && isspace((unsigned char)r->body.p[k])) k++;
      if (k == r->body.len) {
        if (!r->done) return wait_for(L, r, t, pump_k);
        r->body.len = 0; /* only white space, ever: nothing to parse */
        break;
      }
      if (r->body.p[k] == '{') return read_next(L, r, t);
      r->sse = 1;
    }
    r->fed = 1;
    int failed = sink->feed(L, 2, r->body.p, r->body.len);
    r->body.len = 0;
    if (failed) {
      lua_pushliteral(L, "fail");
      lua_insert(L, -2);
      return 2;
    }
  }
  if (!r->done) return wait_for(L, r, t, pump_k);
  int n = push_result(L, r);
  if (n == 2 && lua_isnil(L, -2)) {
    lua_pushboolean(L, r->fed);
    n = 3;
  }
  return n;
}

/* req:pump(parser) -> what next() returns when the transfer ends, for a
** streamed request read by a reply parser that has a sink (tide_sink):
** every chunk of an event stream goes from the request's buffer straight
** into the parser, with no string made and no return to Lua between
** chunks. It stops early with "data", chunk when the reply is not an event
** stream (its first significant byte is '{': a JSON body, left to the
** caller's next()), and with "fail", err when the parser rejects the
** stream. A failure of the transfer comes as nil, err, fed: whether any
** bytes went to the parser. */
static int l_pump(lua_State *L) {
  tide_task *t;
  tide_http *r = check_read(L, &t);
  return read_pump(L, r, t);
}

static int pump_k(lua_State *L, int status, lua_KContext kctx) {
  (void)status;
  tide_task *t = (tide_task *)kctx;
  tide__check_cancel(L, t);
  return read_pump(L, check_req(L), t);
}

const char *tide__http_body(lua_State *L, int idx, size_t *len) {
  tide_http **pp = tide__testudata(L, idx, HTTP_MT);
  if (pp == NULL || *pp == NULL) return NULL;
  *len = (*pp)->body.len;
  return (*pp)->body.p ? (*pp)->body.p : "";
}

/* req:body() -> the body received and not yet handed over: a finished
** http_post's whole body (a streamed one's, if it was not a 2xx). */
static int l_req_body(lua_State *L) {
  tide_http *r = check_req(L);
  lua_pushlstring(L, r->body.p ? r->body.p : "", r->body.len);
  return 1;
}

/* req:headers_raw() -> the response's header block as received. */
static int l_req_headers_raw(lua_State *L) {
  tide_http *r = check_req(L);
  lua_pushlstring(L, r->head.p ? r->head.p : "", r->head.len);
  return 1;
}

/* req:cancel(): aborts the transfer (idempotent). */
static int l_req_cancel(lua_State *L) {
  tide_http **pp = tide__checkudata(L, 1, HTTP_MT);
  tide_http *r = *pp;
  if (r && !r->done) {
    tide_task *t = r->task;
    r->task = NULL;
    r->done = 1;
    r->result = CURLE_ABORTED_BY_CALLBACK;
    if (r->hs->in_curl) {
      r->next_deferred = r->hs->deferred;
      r->hs->deferred = r;
    } else {
      detach(r);
    }
    if (t) tide__wake(t);
  }
  return 0;
}

/* Lets go of the request a userdata holds (its __close and __gc). */
static void release(tide_http **pp) {
  tide_http *r = *pp;
  if (r == NULL) return;
  *pp = NULL;
  if (r->ctx->http == NULL) {
    /* The state is closing and HTTP was shut down already: every transfer
    ** was taken out of libcurl and the pool is gone. */
    if (r->easy) curl_easy_cleanup(r->easy);
    free_request(r);
    return;
  }
  r->task = NULL;
  if (r->in_multi && r->hs->in_curl) {
    r->gone = 1;
    r->next_deferred = r->hs->deferred;
    r->hs->deferred = r;
    return;
  }
  detach(r);
  free_request(r);
}

static int l_req_gc(lua_State *L) {
  release(tide__checkudata(L, 1, HTTP_MT));
  return 0;
}

/* Field k of table t as a string (and its length, in *len: it may hold a
** NUL), or def. */
static const char *opt_string(lua_State *L, int t, const char *k,
                              const char *def, size_t *len) {
  const char *v = def;
  int ty = lua_getfield(L, t, k);
  if (ty == LUA_TSTRING)
    v = lua_tolstring(L, -1, len);
  else if (ty != LUA_TNIL)
    luaL_error(L, "bad field '%s' (string expected, got %s)", k,
               luaL_typename(L, -1));
  lua_pop(L, 1); /* the string stays alive: it is referenced from opts */
  return v;
}

static lua_Integer opt_int(lua_State *L, int t, const char *k,
                           lua_Integer def) {
  lua_Integer v = def;
  int ty = lua_getfield(L, t, k);
  if (ty == LUA_TNUMBER && lua_isinteger(L, -1))
    v = lua_tointeger(L, -1);
  else if (ty == LUA_TNUMBER)
    v = (lua_Integer)lua_tonumber(L, -1);
  else if (ty != LUA_TNIL)
    luaL_error(L, "bad field '%s' (number expected, got %s)", k,
               luaL_typename(L, -1));
  lua_pop(L, 1);
  return v;
}

static int opt_bool(lua_State *L, int t, const char *k, int def) {
  int v = def;
  int ty = lua_getfield(L, t, k);
  if (ty != LUA_TNIL) v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* ------------------------------------------------- request framing -- */

/* Header names and the method are written into the request as they are
** given, and libcurl checks neither: a CR or LF in one would end the line
** early and start another (an extra header, a second request line), and a
** NUL would cut the line short. Both must be RFC 9110 tokens, and a header
** value must hold no CR, LF or NUL (RFC 9110, section 5.5). A bad one is the
** caller's mistake and raises; the message never shows the value, nor a
** name or method that is not a token, since an API key pasted in the wrong
** place would otherwise end up in a log. */

/* RFC 9110's tchar. */
static int is_tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Why [s, s+len) is not a token ("it has a CR or LF"...), NULL if it is. */
static const char *not_token(const char *s, size_t len) {
  if (len == 0) return "is empty";
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (is_tchar(c)) continue;
    if (c == '\r' || c == '\n') return "is not a token (it has a CR or LF)";
    if (c == '\0') return "is not a token (it has a NUL)";
    if (c == ' ' || c == '\t') return "is not a token (it has white space)";
    if (c == ':') return "is not a token (it has a colon)";
    return "is not a token (it has a byte a token cannot hold)";
  }
  return NULL;
}

/* Why a header value cannot be sent, NULL if it can. */
static const char *bad_value(const char *s, size_t len) {
  for (size_t i = 0; i < len; i++) {
    if (s[i] == '\r' || s[i] == '\n') return "has a CR or LF in its value";
    if (s[i] == '\0') return "has a NUL in its value";
  }
  return NULL;
}

/* The request header list of the { name = value } table at hidx (0: none),
** with "Expect:" added: no 100-continue round trip for large POST bodies.
** Raises on bad entries (as a bad argument arg) and on memory exhaustion,
** freeing the list first. */
static struct curl_slist *build_headers(lua_State *L, int hidx, int arg) {
  struct curl_slist *sl = NULL;
  if (hidx) {
    lua_pushnil(L);
    while (lua_next(L, hidx)) {
      if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1)) {
        curl_slist_free_all(sl);
        luaL_error(L, "bad field 'headers' (names and values must be strings)");
      }
      size_t nlen, vlen;
      const char *name = lua_tolstring(L, -2, &nlen);
      const char *value = lua_tolstring(L, -1, &vlen); /* a number becomes a string */
      const char *why = not_token(name, nlen);
      if (why) {
        curl_slist_free_all(sl);
        luaL_argerror(L, arg, lua_pushfstring(L, "header name %s", why));
      }
      if ((why = bad_value(value, vlen)) != NULL) {
        curl_slist_free_all(sl);
        luaL_argerror(L, arg, lua_pushfstring(L, "header '%s' %s", name, why));
      }
      lua_pushfstring(L, "%s: %s", name, value);
      struct curl_slist *n = curl_slist_append(sl, lua_tostring(L, -1));
      lua_pop(L, 2);
      if (n == NULL) {
        curl_slist_free_all(sl);
        luaL_error(L, "out of memory");
      }
      sl = n;
    }
  }
  struct curl_slist *n = curl_slist_append(sl, "Expect:");
  if (n == NULL) {
    curl_slist_free_all(sl);
    luaL_error(L, "out of memory");
  }
  return n;
}

typedef struct http_headers {
  struct curl_slist *sl;
} http_headers;

/* core.http_headers{ name = value } -> headers: the header list built once,
** for a client that sends the same headers on every request (a provider).
** Immutable; http_request takes it in place of a table. */
static int l_headers(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  http_headers *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->sl = NULL;
  luaL_setmetatable(L, HEADERS_MT);
  h->sl = build_headers(L, 1, 1);
  return 1;
}

static int l_headers_gc(lua_State *L) {
  http_headers *h = tide__checkudata(L, 1, HEADERS_MT);
  curl_slist_free_all(h->sl);
  h->sl = NULL;
  return 0;
}

/* What a request is made of, read from its arguments. The strings and the
** headers stay on the Lua stack (at bodyidx and hidx) while start_request
** runs. */
typedef struct req_args {
  const char *url, *method;
  lua_Integer timeout, ctimeout, maxb;
  int stream, verify;
  int bt, bodyidx; /* body type (LUA_TNIL or LUA_TSTRING) and index */
  int wireidx;     /* a wire list joined after the body (0: none) */
  int ht, hidx;    /* headers type (nil, table or userdata) and index */
  int lean;        /* the result has status, body, ttfb_ms (and the headers
                   ** of a non-2xx response) only */
  int weak;        /* hold = false */
} req_args;

static int start_request(lua_State *L, const req_args *a);

/* core.http_request{ method, url, headers, body, timeout_ms,
**   connect_timeout_ms, max_body_bytes, stream, verify, hold } -> req
** Starts the transfer at once; req:next() waits for it. With hold = false
** the transfer keeps no tide.run alive (a stream listened to in the
** background): once nothing else holds the loop, run ends and the task
** waiting in next() is cancelled. */
static int l_request(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  req_args a;
  size_t mlen = 0;
  a.url = opt_string(L, 1, "url", NULL, NULL);
  if (a.url == NULL) luaL_error(L, "bad field 'url' (string expected, got nil)");
  a.method = opt_string(L, 1, "method", NULL, &mlen);
  if (a.method) { /* sent as it is: it must not end the request line early */
    const char *why = not_token(a.method, mlen);
    if (why) luaL_argerror(L, 1, lua_pushfstring(L, "method %s", why));
  }
  a.timeout = opt_int(L, 1, "timeout_ms", DEFAULT_TIMEOUT_MS);
  a.ctimeout = opt_int(L, 1, "connect_timeout_ms", 0);
  a.maxb = opt_int(L, 1, "max_body_bytes", DEFAULT_MAX_BODY);
  luaL_argcheck(L, a.timeout >= 0, 1, "timeout_ms must be >= 0");
  luaL_argcheck(L, a.maxb >= 0, 1, "max_body_bytes must be >= 0");
  a.stream = opt_bool(L, 1, "stream", 0);
  a.verify = opt_bool(L, 1, "verify", 1);
  a.weak = !opt_bool(L, 1, "hold", 1);
  a.bt = lua_getfield(L, 1, "body");
  if (a.bt != LUA_TNIL && a.bt != LUA_TSTRING)
    luaL_error(L, "bad field 'body' (string expected, got %s)",
               luaL_typename(L, -1));
  a.bodyidx = lua_gettop(L);
  a.ht = lua_getfield(L, 1, "headers");
  if (a.ht != LUA_TNIL && a.ht != LUA_TTABLE && !tide__testudata(L, -1, HEADERS_MT))
    luaL_error(L, "bad field 'headers' (table or core.http_headers expected, got %s)",
               luaL_typename(L, -1));
  a.hidx = lua_gettop(L);
  a.lean = 0;
  a.wireidx = 0;
  return start_request(L, &a);
}

/* core.http_post(url, headers, body, timeout_ms, max_body_bytes, stream
**   [, wire]) -> req
** http_request for a client on its hot path (a provider): a POST of a body
** with prepared headers (core.http_headers), without an options table; its
** "done" result is { status, body, ttfb_ms, headers_raw (non-2xx only) }.
** With a wire (a list of strings or a core.wire()) the body sent is
** core.join_wire(body, wire), joined into the request's own buffer (no Lua
** string for it). */
/* http_post's arguments: url, headers, body, timeout_ms, max_body_bytes,
** and a wire at wireidx. */
static void post_args(lua_State *L, req_args *a, int wireidx) {
  a->url = luaL_checkstring(L, 1);
  tide__checkudata(L, 2, HEADERS_MT);
  luaL_checkstring(L, 3);
  a->timeout = luaL_checkinteger(L, 4);
  a->maxb = luaL_checkinteger(L, 5);
  luaL_argcheck(L, a->timeout >= 0, 4, "timeout_ms must be >= 0");
  luaL_argcheck(L, a->maxb >= 0, 5, "max_body_bytes must be >= 0");
  a->wireidx = 0;
  if (!lua_isnoneornil(L, wireidx)) {
    if (!tide__to_wire(L, wireidx)) luaL_checktype(L, wireidx, LUA_TTABLE);
    a->wireidx = wireidx;
  }
  a->stream = 0;
  a->method = NULL;
  a->ctimeout = 0;
  a->verify = 1;
  a->bt = LUA_TSTRING;
  a->bodyidx = 3;
  a->ht = LUA_TUSERDATA;
  a->hidx = 2;
  a->lean = 1;
  a->weak = 0;
}

static int l_post(lua_State *L) {
  req_args a;
  post_args(L, &a, 7);
  a.stream = lua_toboolean(L, 6);
  return start_request(L, &a);
}

static int start_request(lua_State *L, const req_args *a) {
  tide_http_state *hs = http_state(L);
  const char *url = a->url, *method = a->method;
  lua_Integer timeout = a->timeout, ctimeout = a->ctimeout, maxb = a->maxb;
  int stream = a->stream, verify = a->verify;
  int bt = a->bt, bodyidx = a->bodyidx, ht = a->ht, hidx = a->hidx;

  /* The userdata exists (closed) before anything is allocated, so that an
  ** error from here on leaks nothing: __gc frees whatever *pp holds. */
  tide_http **pp = lua_newuserdatauv(L, sizeof *pp, 2);
  *pp = NULL;
  luaL_setmetatable(L, HTTP_MT);
  int udidx = lua_gettop(L);
  tide_http *r = new_request(hs);
  if (r == NULL) return luaL_error(L, "out of memory");
  r->hs = hs;
  r->ctx = hs->ctx;
  *pp = r;
  r->max_body = (size_t)maxb;
  r->stream = stream;
  r->lean = a->lean;
  r->weak = a->weak;

  if (a->wireidx) { /* before anything can be half set up */
    size_t plen;
    const char *prefix = lua_tolstring(L, bodyidx, &plen);
    size_t total = tide__wire_size(L, plen, a->wireidx, a->wireidx, "http_post");
    if (tide__buf_reserve(&r->send, total) != 0) return luaL_error(L, "out of memory");
    r->send.len = tide__wire_write(L, prefix, plen, a->wireidx, total, r->send.p);
  }

  struct curl_slist *sl;
  if (ht == LUA_TUSERDATA) {
    sl = ((http_headers *)tide__checkudata(L, hidx, HEADERS_MT))->sl;
    lua_pushvalue(L, hidx);
    lua_setiuservalue(L, udidx, 2); /* anchors the list libcurl will read */
  } else {
    r->headers = sl = build_headers(L, ht == LUA_TTABLE ? hidx : 0, 1);
  }

  /* Plain: a POST with a body and nothing else of its own (see
  ** release_easy). */
  int https = strncmp(url, "https:", 6) == 0;
  r->plain = bt == LUA_TSTRING && (method == NULL || strcmp(method, "POST") == 0) &&
             ctimeout <= 0 && verify && !https;
  CURL *e = NULL;
  int configured = 0; /* e keeps the options every plain POST sets alike */
  int small = hs->nactive >= CROWD;
  if (hs->npool > 0) {
    e = hs->pool[--hs->npool];
    if (hs->pool_small[hs->npool] != small) { /* (a buffer of the other size: see RECV_BUFFER_SIZE) */
      curl_easy_cleanup(e);
      e = NULL;
    } else {
      configured = hs->pool_plain[hs->npool];
      if (!r->plain && configured) curl_easy_reset(e);
      configured = configured && r->plain;
    }
  }
  if (e == NULL) e = curl_easy_init();
  r->small = small;
  if (e == NULL) return luaL_error(L, "tide: curl_easy_init failed");
  r->easy = e;
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  if (stream) {
    /* A stream may rightly last longer than any total limit (a long answer
    ** streamed for minutes): its timeout is an idle one, no byte for that
    ** long (which also catches a server that stalls), and the connect's. */
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 0L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)((timeout + 999) / 1000));
    if (ctimeout <= 0) curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout);
  } else {
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 0L);
    if (ctimeout <= 0) curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 0L);
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, sl);
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, small ? RECV_BUFFER_CROWDED : RECV_BUFFER_SIZE);
  if (!configured) { /* the same for every plain POST (no connect timeout,
                     ** no https, verification on) */
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (ctimeout > 0) curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)ctimeout);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    /* Waiting for a connection that might multiplex only pays off where
    ** HTTP/2 is possible; over plain HTTP/1.1 it would serialise a first
    ** burst of requests behind the first connection. */
    if (https) curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    if (https && hs->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, hs->ca_file);
    if (https && hs->ca_dir) curl_easy_setopt(e, CURLOPT_CAPATH, hs->ca_dir);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, verify ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, opensocket_cb);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, hs);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, closesocket_cb);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, hs);
    if (!hs->env_proxy) {
      curl_easy_setopt(e, CURLOPT_PROXY, "");
      curl_easy_setopt(e, CURLOPT_NOPROXY, "");
    }
  }
  if (a->wireidx) { /* joined above */
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->send.len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->send.p);
  } else if (bt == LUA_TSTRING) {
    size_t blen;
    const char *body = lua_tolstring(L, bodyidx, &blen);
    lua_pushvalue(L, bodyidx);
    lua_setiuservalue(L, udidx, 1); /* anchors the bytes libcurl will read */
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
  }
  if (method) {
    if (strcmp(method, "GET") == 0 && bt != LUA_TSTRING)
      curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    else if (strcmp(method, "HEAD") == 0)
      curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, "POST") != 0 || bt != LUA_TSTRING)
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  }
  shard *sh = pick_shard(hs);
  if (curl_multi_add_handle(sh->multi, e) != CURLM_OK)
    return luaL_error(L, "tide: curl_multi_add_handle failed");
  r->shard = sh;
  sh->active++;
  if (r->weak) sh->weak++;
  hold_timer(sh);
  hs->nactive++;
  r->in_multi = 1;
  r->next_active = hs->active;
  if (hs->active) hs->active->prev_active = r;
  hs->active = r;
  hs->requests++;
  lua_settop(L, udidx);
  return 1;
}

/* core.http_parse_headers(raw) -> { lowercased name = value } */
static int l_parse_headers(lua_State *L) {
  size_t len;
  const char *p = luaL_checklstring(L, 1, &len);
  parse_headers(L, p, len);
  return 1;
}

/* core.http_stats() -> { requests, connections, active, idle_stirred }:
** connections opened so far (to show keep-alive reuse), transfers in
** flight, idle kept-alive connections that stirred (closed by the server). */
static int l_http_stats(lua_State *L) {
  tide_http_state *hs = http_state(L);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer)hs->idle_stirred);
  lua_setfield(L, -2, "idle_stirred");
  lua_pushinteger(L, (lua_Integer)hs->requests);
  lua_setfield(L, -2, "requests");
  lua_pushinteger(L, (lua_Integer)hs->connections);
  lua_setfield(L, -2, "connections");
  lua_pushinteger(L, hs->nactive);
  lua_setfield(L, -2, "active");
  return 1;
}

void tide__open_http(lua_State *L) {
  static const luaL_Reg meta[] = {
      {"__gc", l_req_gc}, {"__close", l_req_gc}, {NULL, NULL}};
  static const luaL_Reg methods[] = {
      {"next", l_next}, {"pump", l_pump}, {"cancel", l_req_cancel}, {"body", l_req_body},
      {"headers_raw", l_req_headers_raw}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"http_request", l_request},
                                 {"http_parse_headers", l_parse_headers},
                                 {"http_headers", l_headers},
                                 {"http_post", l_post},
                                 {"http_stats", l_http_stats},
                                 {NULL, NULL}};
  static const luaL_Reg headers_meta[] = {{"__gc", l_headers_gc}, {NULL, NULL}};
  tide__register_type(L, HTTP_MT, meta, methods);
  tide__register_type(L, HEADERS_MT, headers_meta, NULL);
  luaL_setfuncs(L, fns, 0);
}
