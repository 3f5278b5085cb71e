/*
** process.c -- child processes whose pipes live on the loop.
**
** A child is spawned with its stdin, stdout and stderr as pipes: stdin is
** written without waiting (bytes the pipe cannot take at once are queued in
** a uv_write request), stdout is read as lines by one waiting task at a time,
** and stderr is drained into a small ring kept for error messages (a child
** blocked on a full stderr pipe would otherwise stop answering).
**
** Lifetimes: the six handles (process, three pipes, two timers) live in one
** malloc'ed struct, freed by the last close callback, because libuv touches
** them after the userdata may be gone. The process handle is never closed
** before the child has exited: closing it earlier would leave the child
** unreaped (a zombie). Closing is therefore "stdin closed, SIGTERM, SIGKILL
** after a grace period, then close every handle from the exit callback";
** p:close() inside a task waits for that, __gc and __close start it and let
** the loop finish it (the process handle stays referenced until the exit, so
** a tide.run that ends meanwhile waits for at most the grace period).
** The userdata and the struct point at each other until one of them goes:
** the userdata's __gc clears proc->ud, the struct's release clears ud->p.
**
** Nothing here keeps tide.run alive by itself: every handle is unref'd, and
** the stdout pipe is referenced only while a task waits for a line and the
** process is "held" (p:hold, on by default), so that an idle reader -- a task
** that waits for whatever a server may send between requests -- does not
** stop the program from ending.
*/
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

#define PROCESS_MT "tide.process"

#define DEFAULT_MAX_LINE (16 * 1024 * 1024)
#define DEFAULT_GRACE_MS 2000
#define READ_CHUNK (64 * 1024)
#define ERR_RING 8192
#define MAX_PENDING_WRITE (64 * 1024 * 1024)
#define LINE_TOO_LONG 1 /* out_error value beside negative libuv codes */

static const char list_key = 'p'; /* address used as a registry key */

typedef struct proc proc;

typedef struct proc_list {
  proc *head;
} proc_list;

/* What Lua holds. closed: the Lua side is done with it (methods raise);
** the exit status is copied here so that it stays readable after close. */
typedef struct proc_ud {
  proc *p; /* NULL once the struct is released */
  int closed;
  int exited;
  int64_t exit_status;
  int term_signal;
  int pid;
} proc_ud;

struct proc {
  uv_process_t process;
  uv_pipe_t in, out, err;
  uv_timer_t read_timer, exit_timer;
  tide_ctx *ctx;
  proc_ud *ud; /* NULL once the userdata is collected (or the state closes) */
  proc_list *list;
  proc *prev, *next;
  int open_handles; /* close callbacks still to come */
  int spawned;
  int exited;
  int64_t exit_status;
  int term_signal;
  int closing;      /* SIGTERM sent; the exit timer escalates to SIGKILL */
  int in_open;      /* stdin not yet closed */
  int write_error;  /* first failed write (libuv code), 0 if none */
  size_t write_pending; /* bytes held by uv_write requests */
  /* stdout: bytes [out_start, out.len) not yet returned as lines; no '\n'
  ** in [out_start, out_scan). */
  tide_buf out_buf;
  size_t out_start, out_scan, max_line;
  int out_reading, out_eof, out_error;
  int hold;        /* a waiting reader keeps the loop alive */
  tide_task *reader;
  tide_wait read_wait;
  int read_timed_out;
  tide_task *exit_waiter; /* p:wait or p:close */
  tide_wait exit_wait;
  int exit_timed_out;
  /* stderr: the last ERR_RING bytes */
  size_t ring_len, ring_pos;
  char ring[ERR_RING];
  char err_chunk[4096];
};

typedef struct write_req {
  uv_write_t req;
  size_t n;
  char data[];
} write_req;

/* ----------------------------------------------------------- the list -- */

static void process_shutdown(tide_ctx *ctx);

static proc_list *get_list(lua_State *L) {
  return tide__state_block(L, &list_key, sizeof(proc_list));
}

/* ------------------------------------------------------------ closing -- */

static void handle_closed(uv_handle_t *h) {
  proc *p = h->data;
  if (--p->open_handles > 0) return;
  if (p->prev)
    p->prev->next = p->next;
  else
    p->list->head = p->next;
  if (p->next) p->next->prev = p->prev;
  if (p->ud) p->ud->p = NULL;
  tide__buf_free(&p->out_buf);
  free(p);
}

static void close_handle(proc *p, uv_handle_t *h) {
  (void)p;
  if (!uv_is_closing(h)) uv_close(h, handle_closed);
}

/* Closes every handle: only once the child has exited (or was never
** spawned), so that libuv has reaped it. */
static void close_all(proc *p) {
  p->in_open = 0;
  close_handle(p, (uv_handle_t *)&p->in);
  close_handle(p, (uv_handle_t *)&p->out);
  close_handle(p, (uv_handle_t *)&p->err);
  close_handle(p, (uv_handle_t *)&p->read_timer);
  close_handle(p, (uv_handle_t *)&p->exit_timer);
  close_handle(p, (uv_handle_t *)&p->process);
}

static void close_stdin(proc *p) {
  if (!p->in_open) return;
  p->in_open = 0;
  close_handle(p, (uv_handle_t *)&p->in); /* pending writes end ECANCELED */
}

static void update_ref(proc *p) {
  if (p->reader && p->hold) {
    uv_ref((uv_handle_t *)&p->out);
    uv_ref((uv_handle_t *)&p->read_timer);
  } else {
    uv_unref((uv_handle_t *)&p->out);
    uv_unref((uv_handle_t *)&p->read_timer);
  }
}

static void wake_reader(proc *p) {
  tide_task *t = p->reader;
  if (t == NULL) return;
  p->reader = NULL;
  uv_timer_stop(&p->read_timer);
  update_ref(p);
  tide__wake(t);
}

static void wake_exit_waiter(proc *p) {
  tide_task *t = p->exit_waiter;
  if (t == NULL) return;
  p->exit_waiter = NULL;
  if (!p->closing) {
    uv_timer_stop(&p->exit_timer);
    uv_unref((uv_handle_t *)&p->exit_timer);
    uv_unref((uv_handle_t *)&p->process);
  }
  tide__wake(t);
}

static void kill_timer_cb(uv_timer_t *h) {
  proc *p = h->data;
  if (!p->exited) uv_process_kill(&p->process, SIGKILL);
}

/* Starts the end of the child: stdin closed, SIGTERM, SIGKILL after
** grace_ms; the exit callback closes the handles. Until then the process
** handle and the timer hold the loop, so the child is always reaped. */
static void begin_close(proc *p, uint64_t grace_ms) {
  close_stdin(p);
  wake_reader(p);
  if (p->exited) {
    wake_exit_waiter(p);
    close_all(p);
    return;
  }
  if (p->closing) return;
  p->closing = 1;
  uv_process_kill(&p->process, SIGTERM);
  uv_timer_start(&p->exit_timer, kill_timer_cb, grace_ms, 0);
  uv_ref((uv_handle_t *)&p->exit_timer);
  uv_ref((uv_handle_t *)&p->process);
}

static void process_shutdown(tide_ctx *ctx) {
  proc_list *list = tide__state_block_if(ctx->L, &list_key);
  if (list == NULL) return;
  /* The state is closing: no grace period. Userdata may be freed before the
  ** last close callback runs, so both sides forget each other first. */
  for (proc *p = list->head; p; p = p->next) {
    if (p->ud) p->ud->p = NULL;
    p->ud = NULL;
    p->reader = p->exit_waiter = NULL;
    if (!p->exited) {
      begin_close(p, 0);
      uv_process_kill(&p->process, SIGKILL);
    } else {
      close_all(p);
    }
  }
}

/* ---------------------------------------------------------- callbacks -- */

static void exit_cb(uv_process_t *h, int64_t status, int sig) {
  proc *p = h->data;
  p->exited = 1;
  p->exit_status = status;
  p->term_signal = sig;
  if (p->ud) {
    p->ud->exited = 1;
    p->ud->exit_status = status;
    p->ud->term_signal = sig;
  }
  uv_timer_stop(&p->exit_timer);
  wake_exit_waiter(p);
  if (p->closing) close_all(p);
}

static void out_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out) {
  (void)hint;
  proc *p = h->data;
  tide_buf *b = &p->out_buf;
  if (p->out_start > 0 && p->out_start >= b->len / 2) { /* compact */
    memmove(b->p, b->p + p->out_start, b->len - p->out_start);
    b->len -= p->out_start;
    p->out_scan -= p->out_start;
    p->out_start = 0;
  }
  if (tide__buf_reserve(b, READ_CHUNK) != 0) {
    *out = uv_buf_init(NULL, 0); /* read_cb gets UV_ENOBUFS */
    return;
  }
  *out = uv_buf_init(b->p + b->len, (unsigned)(b->cap - b->len - 1));
}

static int has_line(proc *p) {
  tide_buf *b = &p->out_buf;
  if (p->out_scan < p->out_start) p->out_scan = p->out_start;
  if (p->out_scan < b->len && memchr(b->p + p->out_scan, '\n', b->len - p->out_scan))
    return 1;
  p->out_scan = b->len;
  return 0;
}

static void out_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  proc *p = st->data;
  if (n < 0) {
    if (n == UV_EOF)
      p->out_eof = 1;
    else
      p->out_error = (int)n;
    uv_read_stop(st);
    p->out_reading = 0;
    wake_reader(p);
    return;
  }
  tide_buf *b = &p->out_buf;
  b->len += (size_t)n;
  int line = has_line(p);
  size_t pending = b->len - p->out_start;
  if (!line && pending > p->max_line) {
    /* The stream's framing is lost: the error is sticky. */
    p->out_error = LINE_TOO_LONG;
    tide__buf_free(b);
    p->out_start = p->out_scan = 0;
    uv_read_stop(st);
    p->out_reading = 0;
  } else if (pending > p->max_line) {
    uv_read_stop(st); /* bounded memory: resume once lines are taken */
    p->out_reading = 0;
  }
  if (line || p->out_error) wake_reader(p);
}

static void err_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out) {
  (void)hint;
  proc *p = h->data;
  *out = uv_buf_init(p->err_chunk, sizeof p->err_chunk);
}

static void err_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  proc *p = st->data;
  if (n < 0) {
    uv_read_stop(st);
    return;
  }
  for (ssize_t i = 0; i < n; i++) {
    p->ring[p->ring_pos] = buf->base[i];
    p->ring_pos = (p->ring_pos + 1) % ERR_RING;
  }
  p->ring_len += (size_t)n;
  if (p->ring_len > ERR_RING) p->ring_len = ERR_RING;
}

static void write_cb(uv_write_t *req, int status) {
  write_req *w = (write_req *)req;
  proc *p = req->handle->data;
  p->write_pending -= w->n;
  if (status < 0 && status != UV_ECANCELED && p->write_error == 0) p->write_error = status;
  free(w);
}

static void read_timeout_cb(uv_timer_t *h) {
  proc *p = h->data;
  if (p->reader == NULL) return;
  p->read_timed_out = 1;
  wake_reader(p);
}

static void wait_timeout_cb(uv_timer_t *h) {
  proc *p = h->data;
  if (p->exit_waiter == NULL) return;
  p->exit_timed_out = 1;
  wake_exit_waiter(p);
}

/* ----------------------------------------------------------- bindings -- */

static proc_ud *check_ud(lua_State *L) {
  return tide__checkudata(L, 1, PROCESS_MT);
}

/* The open process at index 1; raises on a closed one. */
static proc *check_proc(lua_State *L) {
  proc_ud *ud = check_ud(L);
  if (ud->closed || ud->p == NULL) luaL_error(L, "attempt to use a closed process");
  return ud->p;
}

/* "K=V" strings of the environment table at idx, in a new table pushed on
** the stack (it anchors them while uv_spawn reads them). */
static const char **env_array(lua_State *L, int idx) {
  lua_newtable(L);
  int tbl = lua_gettop(L);
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "bad argument #1 to 'process_spawn' (env must map names to strings)");
    lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
    lua_rawseti(L, tbl, ++n);
    lua_pop(L, 1);
  }
  const char **env = lua_newuserdatauv(L, sizeof(char *) * ((size_t)n + 1), 0);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, tbl, i + 1);
    env[i] = lua_tostring(L, -1); /* anchored by tbl */
    lua_pop(L, 1);
  }
  env[n] = NULL;
  return env;
}

/* core.process_spawn{ argv = { file, args... }, env = { NAME = value } | nil
** (nil: inherit this process's environment), cwd = dir | nil, max_line =
** bytes (16 MiB) } -> process | nil, err (SpawnFailed). */
static int l_process_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  tide_ctx *ctx = tide__ctx(L);
  if (lua_getfield(L, 1, "argv") != LUA_TTABLE) /* 2 */
    return luaL_error(L, "bad argument #1 to 'process_spawn' (field 'argv' must be a table)");
  lua_Integer argc = (lua_Integer)lua_rawlen(L, 2);
  luaL_argcheck(L, argc >= 1, 1, "field 'argv' must name a program");
  const char **argv = lua_newuserdatauv(L, sizeof(char *) * ((size_t)argc + 1), 0); /* 3 */
  for (lua_Integer i = 1; i <= argc; i++) {
    if (lua_rawgeti(L, 2, i) != LUA_TSTRING)
      return luaL_error(L, "bad argument #1 to 'process_spawn' (argv[%d] must be a string)", (int)i);
    argv[i - 1] = lua_tostring(L, -1); /* anchored by the argv table */
    lua_pop(L, 1);
  }
  argv[argc] = NULL;
  const char **env = NULL;
  int t = lua_getfield(L, 1, "env"); /* 4 */
  if (t == LUA_TTABLE)
    env = env_array(L, 4);
  else if (t != LUA_TNIL)
    return luaL_error(L, "bad argument #1 to 'process_spawn' (field 'env' must be a table)");
  lua_settop(L, 4);
  const char *cwd = NULL;
  t = lua_getfield(L, 1, "cwd"); /* 5 */
  if (t == LUA_TSTRING)
    cwd = lua_tostring(L, 5);
  else if (t != LUA_TNIL)
    return luaL_error(L, "bad argument #1 to 'process_spawn' (field 'cwd' must be a string)");
  lua_Integer max_line = DEFAULT_MAX_LINE;
  if (lua_getfield(L, 1, "max_line") != LUA_TNIL) { /* 6 */
    max_line = luaL_checkinteger(L, -1);
    luaL_argcheck(L, max_line > 0, 1, "field 'max_line' must be positive");
  }
  proc_list *list = get_list(L);
  if (tide__on_shutdown(ctx, process_shutdown) != 0)
    return luaL_error(L, "tide: no room for the process shutdown hook");
  /* Everything that can raise is done: the userdata is created closed, then
  ** the struct, which from here on is only freed by its close callbacks. */
  proc_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  memset(ud, 0, sizeof *ud);
  ud->closed = 1;
  luaL_setmetatable(L, PROCESS_MT);
  proc *p = calloc(1, sizeof *p);
  if (p == NULL) return luaL_error(L, "not enough memory");
  p->ctx = ctx;
  p->list = list;
  p->max_line = (size_t)max_line;
  p->hold = 1;
  p->next = list->head;
  if (list->head) list->head->prev = p;
  list->head = p;
  uv_pipe_init(ctx->loop, &p->in, 0);
  uv_pipe_init(ctx->loop, &p->out, 0);
  uv_pipe_init(ctx->loop, &p->err, 0);
  uv_timer_init(ctx->loop, &p->read_timer);
  uv_timer_init(ctx->loop, &p->exit_timer);
  p->in.data = p->out.data = p->err.data = p;
  p->read_timer.data = p->exit_timer.data = p->process.data = p;
  p->open_handles = 6;
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
  stdio[0].data.stream = (uv_stream_t *)&p->in;
  stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[1].data.stream = (uv_stream_t *)&p->out;
  stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[2].data.stream = (uv_stream_t *)&p->err;
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.exit_cb = exit_cb;
  o.file = argv[0];
  o.args = (char **)argv;
  o.env = (char **)env;
  o.cwd = cwd;
  o.stdio_count = 3;
  o.stdio = stdio;
  int rc = uv_spawn(ctx->loop, &p->process, &o);
  if (rc < 0) {
    /* A failed uv_spawn leaves an initialised handle to close; no child. */
    p->exited = 1;
    close_all(p);
    return tide__fail(L, "SpawnFailed", "cannot start '%s': %s", argv[0], uv_strerror(rc));
  }
  p->spawned = 1;
  p->in_open = 1;
  p->ud = ud;
  ud->p = p;
  ud->closed = 0;
  ud->pid = p->process.pid;
  uv_read_start((uv_stream_t *)&p->out, out_alloc, out_read);
  uv_read_start((uv_stream_t *)&p->err, err_alloc, err_read);
  p->out_reading = 1;
  uv_unref((uv_handle_t *)&p->process);
  uv_unref((uv_handle_t *)&p->in);
  uv_unref((uv_handle_t *)&p->out);
  uv_unref((uv_handle_t *)&p->err);
  uv_unref((uv_handle_t *)&p->read_timer);
  uv_unref((uv_handle_t *)&p->exit_timer);
  return 1;
}

/* p:write(s) -> true | nil, err. Never waits: what the pipe cannot take now
** is queued (up to 64 MiB). A failed earlier write is reported here. */
static int l_write(lua_State *L) {
  proc *p = check_proc(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (!p->in_open) return tide__fail(L, "ConnectionClosed", "the process's stdin is closed");
  if (p->write_error)
    return tide__fail(L, "ConnectionClosed", "writing to the process failed: %s",
                      uv_strerror(p->write_error));
  size_t off = 0;
  if (p->write_pending == 0 && n > 0) { /* keep the order of queued bytes */
    uv_buf_t b = uv_buf_init((char *)s, (unsigned)n);
    int rc = uv_try_write((uv_stream_t *)&p->in, &b, 1);
    if (rc > 0) {
      off = (size_t)rc;
    } else if (rc < 0 && rc != UV_EAGAIN) {
      p->write_error = rc;
      return tide__fail(L, "ConnectionClosed", "writing to the process failed: %s",
                        uv_strerror(rc));
    }
  }
  if (off < n) {
    size_t rest = n - off;
    if (p->write_pending + rest > MAX_PENDING_WRITE)
      return tide__fail(L, "StreamTooLarge", "the process is not reading its stdin "
                        "(over %d bytes queued)", MAX_PENDING_WRITE);
    write_req *w = malloc(sizeof *w + rest);
    if (w == NULL) return luaL_error(L, "not enough memory");
    memcpy(w->data, s + off, rest);
    w->n = rest;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)rest);
    int rc = uv_write(&w->req, (uv_stream_t *)&p->in, &b, 1, write_cb);
    if (rc < 0) {
      free(w);
      p->write_error = rc;
      return tide__fail(L, "ConnectionClosed", "writing to the process failed: %s",
                        uv_strerror(rc));
    }
    p->write_pending += rest;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Pushes the next line (without "\n" or "\r\n") or nil at the end, or nil
** plus the stream's error; returns 0 when nothing is there yet. */
static int take_line(lua_State *L, proc *p) {
  tide_buf *b = &p->out_buf;
  if (has_line(p)) {
    char *start = b->p + p->out_start;
    char *nl = memchr(b->p + p->out_scan, '\n', b->len - p->out_scan);
    size_t n = (size_t)(nl - start);
    lua_pushlstring(L, start, n > 0 && nl[-1] == '\r' ? n - 1 : n);
    p->out_start = p->out_scan = (size_t)(nl - b->p) + 1;
    if (p->out_start == b->len) {
      tide__buf_keep(b, 4 * READ_CHUNK);
      p->out_start = p->out_scan = 0;
    }
    if (!p->out_reading && !p->out_eof && !p->out_error &&
        b->len - p->out_start <= p->max_line) {
      uv_read_start((uv_stream_t *)&p->out, out_alloc, out_read);
      p->out_reading = 1;
    }
    return 1;
  }
  if (p->out_error == LINE_TOO_LONG)
    return tide__fail(L, "StreamTooLarge", "the process wrote a line over %d bytes",
                      (int)(p->max_line > INT32_MAX ? INT32_MAX : p->max_line));
  if (p->out_error)
    return tide__fail(L, "ConnectionClosed", "reading from the process failed: %s",
                      uv_strerror(p->out_error));
  if (p->out_eof) {
    if (p->out_start < b->len) { /* a last line without its newline */
      lua_pushlstring(L, b->p + p->out_start, b->len - p->out_start);
      p->out_start = p->out_scan = b->len;
      return 1;
    }
    lua_pushnil(L);
    return 1;
  }
  return 0;
}

static void read_cancel(tide_wait *w) {
  proc *p = (proc *)((char *)w - offsetof(proc, read_wait));
  p->reader = NULL;
  uv_timer_stop(&p->read_timer);
  update_ref(p);
}

static int read_line_k(lua_State *L, int status, lua_KContext kctx);

static int read_line(lua_State *L, proc *p, tide_task *t, lua_Integer timeout) {
  if (p->reader) return luaL_error(L, "the process already has a task waiting for a line");
  p->reader = t;
  p->read_timed_out = 0;
  p->read_wait.cancel = read_cancel;
  if (timeout >= 0) uv_timer_start(&p->read_timer, read_timeout_cb, (uint64_t)timeout, 0);
  update_ref(p);
  return tide__wait(L, t, &p->read_wait, read_line_k, (lua_KContext)timeout);
}

/* p:read_line([timeout_ms]) -> line | nil (end of output) | nil, err
** (Timeout, StreamTooLarge, ConnectionClosed). Waits in a task; one task at
** a time. A line longer than max_line breaks the stream for good. */
static int l_read_line(lua_State *L) {
  proc *p = check_proc(L);
  lua_Integer timeout = luaL_optinteger(L, 2, -1);
  lua_settop(L, 2);
  if (take_line(L, p)) return lua_gettop(L) - 2;
  tide_task *t = tide__check_task(L, "process:read_line");
  tide__check_cancel(L, t);
  return read_line(L, p, t, timeout);
}

static int read_line_k(lua_State *L, int status, lua_KContext kctx) {
  (void)status;
  tide_task *t = tide__current(L);
  tide__check_cancel(L, t);
  proc_ud *ud = check_ud(L);
  if (ud->closed || ud->p == NULL)
    return tide__fail(L, "ConnectionClosed", "the process was closed while reading");
  proc *p = ud->p;
  if (take_line(L, p)) return lua_gettop(L) - 2;
  if (p->read_timed_out) {
    p->read_timed_out = 0;
    return tide__fail(L, "Timeout", "no line from the process within %d ms", (int)kctx);
  }
  return read_line(L, p, t, -1); /* woken without a line: keep waiting */
}

static void exit_cancel(tide_wait *w) {
  proc *p = (proc *)((char *)w - offsetof(proc, exit_wait));
  p->exit_waiter = NULL;
  if (!p->closing) {
    uv_timer_stop(&p->exit_timer);
    uv_unref((uv_handle_t *)&p->exit_timer);
    uv_unref((uv_handle_t *)&p->process);
  }
}

static int push_status(lua_State *L, proc_ud *ud) {
  if (!ud->exited) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushinteger(L, (lua_Integer)ud->exit_status);
  lua_pushinteger(L, ud->term_signal);
  return 2;
}

static int exit_k(lua_State *L, int status, lua_KContext kctx) {
  (void)status;
  tide_task *t = tide__current(L);
  proc_ud *ud = check_ud(L);
  if (!ud->exited && ud->p) {
    /* Timed out, or cancelled: p:wait stops waiting; a close goes on
    ** without us (the timer sends SIGKILL, the exit closes the handles). */
    proc *p = ud->p;
    if (p->exit_waiter == t) exit_cancel(&p->exit_wait);
    tide__check_cancel(L, t);
    if (p->exit_timed_out) {
      p->exit_timed_out = 0;
      return tide__fail(L, "Timeout", "the process did not exit within %d ms", (int)kctx);
    }
  }
  tide__check_cancel(L, t);
  return push_status(L, ud);
}

static int wait_exit(lua_State *L, proc *p, tide_task *t, lua_Integer timeout) {
  if (p->exit_waiter) return luaL_error(L, "the process already has a task waiting for its exit");
  p->exit_waiter = t;
  p->exit_timed_out = 0;
  p->exit_wait.cancel = exit_cancel;
  uv_ref((uv_handle_t *)&p->process);
  if (!p->closing && timeout >= 0) {
    uv_timer_start(&p->exit_timer, wait_timeout_cb, (uint64_t)timeout, 0);
    uv_ref((uv_handle_t *)&p->exit_timer);
  }
  return tide__wait(L, t, &p->exit_wait, exit_k, (lua_KContext)timeout);
}

/* p:wait([timeout_ms]) -> exit_status, term_signal | nil, err (Timeout).
** Waits in a task for the child to exit. */
static int l_wait(lua_State *L) {
  proc *p = check_proc(L);
  lua_Integer timeout = luaL_optinteger(L, 2, -1);
  lua_settop(L, 1);
  if (p->exited) return push_status(L, check_ud(L));
  tide_task *t = tide__check_task(L, "process:wait");
  tide__check_cancel(L, t);
  return wait_exit(L, p, t, timeout);
}

/* p:close([grace_ms]) -> exit_status, term_signal. Closes stdin, sends
** SIGTERM, then SIGKILL after grace_ms (2000); inside a task waits for the
** exit, outside one lets the loop finish it. Idempotent (a closed process
** answers its status, or nil). */
static int l_close(lua_State *L) {
  proc_ud *ud = check_ud(L);
  lua_Integer grace = luaL_optinteger(L, 2, DEFAULT_GRACE_MS);
  luaL_argcheck(L, grace >= 0, 2, "must be >= 0");
  lua_settop(L, 1);
  proc *p = ud->p;
  if (ud->closed || p == NULL) {
    ud->closed = 1;
    return push_status(L, ud);
  }
  ud->closed = 1;
  /* An exit waiter (p:wait) learns of the close at once. */
  if (p->exit_waiter && !p->exited) wake_exit_waiter(p);
  begin_close(p, (uint64_t)grace);
  tide_task *t = tide__current(L);
  if (p->exited || t == NULL || p->exit_waiter) return push_status(L, ud);
  return wait_exit(L, p, t, -1);
}

/* __gc and __close: as close without waiting; the struct forgets us. */
static int l_gc(lua_State *L) {
  proc_ud *ud = check_ud(L);
  proc *p = ud->p;
  if (p && !ud->closed) {
    ud->closed = 1;
    begin_close(p, DEFAULT_GRACE_MS);
  }
  if (p && lua_type(L, 2) == LUA_TNONE) { /* __gc (a __close gets an error arg) */
    p->ud = NULL;
    ud->p = NULL;
  }
  return 0;
}

/* p:close_stdin(): the child reads end of input. */
static int l_close_stdin(lua_State *L) {
  close_stdin(check_proc(L));
  return 0;
}

/* p:kill([signal]) -> true | nil, err. signal: a number or "TERM", "KILL",
** "INT", "HUP", "STOP", "CONT", "USR1", "USR2" (default "TERM"). */
static int l_kill(lua_State *L) {
  proc *p = check_proc(L);
  static const char *const names[] = {"TERM", "KILL", "INT", "HUP", "STOP", "CONT", "USR1", "USR2", NULL};
  static const int sigs[] = {SIGTERM, SIGKILL, SIGINT, SIGHUP, SIGSTOP, SIGCONT, SIGUSR1, SIGUSR2};
  int sig = lua_type(L, 2) == LUA_TNUMBER ? (int)luaL_checkinteger(L, 2)
                                          : sigs[luaL_checkoption(L, 2, "TERM", names)];
  if (p->exited) return tide__fail(L, "ConnectionClosed", "the process has exited");
  int rc = uv_process_kill(&p->process, sig);
  if (rc < 0) return tide__fail(L, "ConnectionClosed", "cannot signal the process: %s", uv_strerror(rc));
  lua_pushboolean(L, 1);
  return 1;
}

/* p:status() -> nil while running | exit_status, term_signal. Also after
** close. */
static int l_status(lua_State *L) { return push_status(L, check_ud(L)); }

/* p:pid() -> the child's process id. */
static int l_pid(lua_State *L) {
  lua_pushinteger(L, check_ud(L)->pid);
  return 1;
}

/* p:stderr() -> the last bytes (up to 8 KiB) the child wrote to stderr. */
static int l_stderr(lua_State *L) {
  proc_ud *ud = check_ud(L);
  proc *p = ud->p;
  if (p == NULL || p->ring_len == 0) {
    lua_pushliteral(L, "");
    return 1;
  }
  size_t start = (p->ring_pos + ERR_RING - p->ring_len) % ERR_RING;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (size_t i = 0; i < p->ring_len; i++) luaL_addchar(&b, p->ring[(start + i) % ERR_RING]);
  luaL_pushresult(&b);
  return 1;
}

/* p:hold(on): whether a task waiting for a line keeps the loop alive (on by
** default). A reader that waits for what a server may send between requests
** holds it off, so that an idle connection never keeps tide.run going. */
static int l_hold(lua_State *L) {
  proc *p = check_proc(L);
  p->hold = lua_toboolean(L, 2);
  update_ref(p);
  return 0;
}

/* p:closed() -> true once closed. */
static int l_closed(lua_State *L) {
  proc_ud *ud = check_ud(L);
  lua_pushboolean(L, ud->closed || ud->p == NULL);
  return 1;
}

static int l_tostring(lua_State *L) {
  proc_ud *ud = check_ud(L);
  if (ud->closed || ud->p == NULL)
    lua_pushfstring(L, "tide.process (%d, closed)", ud->pid);
  else
    lua_pushfstring(L, "tide.process (%d)", ud->pid);
  return 1;
}

extern char **environ;

/* core.environ() -> { NAME = value }: this process's environment, for a
** program that runs with it and a few variables more (env_array's input). */
static int l_environ(lua_State *L) {
  lua_newtable(L);
  for (char **e = environ; e != NULL && *e != NULL; e++) {
    const char *eq = strchr(*e, '=');
    if (eq == NULL || eq == *e) continue; /* (not NAME=value: left out) */
    lua_pushlstring(L, *e, (size_t)(eq - *e));
    lua_pushstring(L, eq + 1);
    lua_rawset(L, -3);
  }
  return 1;
}

void tide__open_process(lua_State *L) {
  static const luaL_Reg meta[] = {{"__gc", l_gc},
                                  {"__close", l_gc},
                                  {"__tostring", l_tostring},
                                  {NULL, NULL}};
  static const luaL_Reg methods[] = {{"write", l_write},   {"read_line", l_read_line},
                                     {"close_stdin", l_close_stdin},
                                     {"kill", l_kill},     {"wait", l_wait},
                                     {"close", l_close},   {"status", l_status},
                                     {"pid", l_pid},       {"stderr", l_stderr},
                                     {"hold", l_hold},     {"closed", l_closed},
                                     {NULL, NULL}};
  static const luaL_Reg fns[] = {{"process_spawn", l_process_spawn}, {"environ", l_environ}, {NULL, NULL}};
  tide__register_type(L, PROCESS_MT, meta, methods);
  get_list(L);
  luaL_setfuncs(L, fns, 0);
}
