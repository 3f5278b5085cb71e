/*
** stdio.c -- reading lines from standard input without blocking the loop.
**
** The chat waits for the user's next line while the loop goes on serving
** file-watch events (prompt reloads) and anything else in flight. A tty or a
** pipe is read with uv_read_start; a regular file cannot block, so it is read
** with plain stdio. The handle is referenced only while a task waits on it, so
** an idle stdin never keeps tide.run alive.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

#define STDIN_MAX_PENDING (1024 * 1024)

typedef struct tide_stdin {
  uv_handle_t *h; /* uv_tty_t or uv_pipe_t, malloc'ed; NULL for a file */
  int is_file;
  int reading;
  int eof;
  tide_buf in; /* bytes read, not yet returned as lines */
  char chunk[4096];
  tide_task *waiter;
  tide_wait wait;
} tide_stdin;

static const char stdin_key = 's';

static void close_free_cb(uv_handle_t *h) { free(h); }

static int stdin_gc(lua_State *L) {
  tide_stdin *s = lua_touserdata(L, 1);
  tide_ctx *ctx = tide__ctx(L);
  if (s->h && ctx->loop) {
    if (!uv_is_closing(s->h)) uv_close(s->h, close_free_cb);
    s->h = NULL;
  }
  tide__buf_free(&s->in);
  return 0;
}

static tide_stdin *get_stdin(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &stdin_key) == LUA_TUSERDATA) {
    tide_stdin *s = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return s;
  }
  lua_pop(L, 1);
  tide_ctx *ctx = tide__ctx(L);
  tide_stdin *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, stdin_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &stdin_key);
  uv_handle_type type = uv_guess_handle(0);
  if (type == UV_TTY) {
    uv_tty_t *t = malloc(sizeof *t);
    if (t && uv_tty_init(ctx->loop, t, 0, 1) == 0) {
      s->h = (uv_handle_t *)t;
    } else {
      free(t);
      s->is_file = 1;
    }
  } else if (type == UV_NAMED_PIPE || type == UV_TCP) {
    uv_pipe_t *p = malloc(sizeof *p);
    if (p && uv_pipe_init(ctx->loop, p, 0) == 0 && uv_pipe_open(p, 0) == 0) {
      s->h = (uv_handle_t *)p;
    } else {
      if (p) uv_close((uv_handle_t *)p, close_free_cb);
      s->is_file = 1;
    }
  } else {
    s->is_file = 1;
  }
  if (s->h) {
    s->h->data = s;
    uv_unref(s->h);
  }
  return s;
}

static int has_line(tide_stdin *s) {
  return s->in.len > 0 && memchr(s->in.p, '\n', s->in.len) != NULL;
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *out) {
  (void)hint;
  tide_stdin *s = h->data;
  *out = uv_buf_init(s->chunk, sizeof s->chunk);
}

static void read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  tide_stdin *s = st->data;
  if (n < 0) {
    s->eof = 1;
    uv_read_stop(st);
    s->reading = 0;
  } else if (n > 0) {
    if (tide__buf_add(&s->in, b->base, (size_t)n) != 0) s->eof = 1;
    /* Bounded memory: stop reading until the task takes what is here. */
    if (s->in.len > STDIN_MAX_PENDING && s->reading) {
      uv_read_stop(st);
      s->reading = 0;
    }
  }
  if (s->waiter && (s->eof || has_line(s) || s->in.len > STDIN_MAX_PENDING)) {
    tide_task *t = s->waiter;
    s->waiter = NULL;
    uv_unref((uv_handle_t *)st);
    tide__wake(t);
  }
}

/* Pushes the next line (without its newline) or the rest at EOF; 0 when
** nothing can be returned yet. */
static int take_line(lua_State *L, tide_stdin *s) {
  tide_buf *in = &s->in;
  char *nl = in->len ? memchr(in->p, '\n', in->len) : NULL;
  size_t n;
  if (nl) {
    n = (size_t)(nl - in->p);
    size_t end = n;
    if (end > 0 && in->p[end - 1] == '\r') end--;
    lua_pushlstring(L, in->p, end);
    n++;
  } else if (s->eof || in->len > STDIN_MAX_PENDING) {
    if (in->len == 0) {
      lua_pushnil(L);
      return 1;
    }
    lua_pushlstring(L, in->p, in->len);
    n = in->len;
  } else {
    return 0;
  }
  memmove(in->p, in->p + n, in->len - n);
  in->len -= n;
  return 1;
}

static void stdin_cancel(tide_wait *w) {
  tide_stdin *s = (tide_stdin *)((char *)w - offsetof(tide_stdin, wait));
  s->waiter = NULL;
  if (s->h) uv_unref(s->h);
}

static int read_line_k(lua_State *L, int status, lua_KContext kctx);

/* core.read_line() -> the next line of stdin (no newline), or nil at EOF.
** Inside a task it waits without blocking the loop. */
static int l_read_line(lua_State *L) {
  tide_stdin *s = get_stdin(L);
  if (s->is_file) {
    char line[4096];
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    int got = 0;
    while (fgets(line, sizeof line, stdin)) {
      got = 1;
      size_t n = strlen(line);
      int done = n > 0 && line[n - 1] == '\n';
      if (done) n--;
      if (done && n > 0 && line[n - 1] == '\r') n--;
      luaL_addlstring(&b, line, n);
      if (done) break;
    }
    luaL_pushresult(&b);
    if (!got) lua_pushnil(L);
    return 1;
  }
  if (take_line(L, s)) return 1;
  tide_task *t = tide__check_task(L, "read_line");
  tide__check_cancel(L, t);
  if (s->waiter) return luaL_error(L, "stdin already has a waiting task");
  if (!s->reading && !s->eof) {
    uv_read_start((uv_stream_t *)s->h, alloc_cb, read_cb);
    s->reading = 1;
  }
  s->waiter = t;
  uv_ref(s->h);
  s->wait.cancel = stdin_cancel;
  return tide__wait(L, t, &s->wait, read_line_k, 0);
}

static int read_line_k(lua_State *L, int status, lua_KContext kctx) {
  (void)status;
  (void)kctx;
  tide__check_cancel(L, tide__current(L));
  return l_read_line(L);
}

void tide__stdio_shutdown(tide_ctx *ctx) {
  lua_State *L = ctx->L;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &stdin_key) == LUA_TUSERDATA) {
    tide_stdin *s = lua_touserdata(L, -1);
    if (s->h && !uv_is_closing(s->h)) uv_close(s->h, close_free_cb);
    s->h = NULL;
  }
  lua_pop(L, 1);
}

void tide__open_stdio(lua_State *L) {
  static const luaL_Reg fns[] = {{"read_line", l_read_line}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
