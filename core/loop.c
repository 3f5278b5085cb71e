/*
** loop.c -- the per-state libuv loop and the tasks it schedules.
**
** A task is a Lua coroutine plus a tide_task struct living in the memory of a
** full userdata (uservalue 1 is the thread, uservalue 2 the task-local table).
** While a task is not finished, one registry reference anchors its userdata,
** so C may hold tide_task pointers (ready queue, timers, joiners) without the
** collector freeing them.
**
** Scheduling: a woken task goes on the ready queue; the queue is drained by a
** check handle (right after the poll phase) and an idle handle (active only
** while the queue is non-empty, so that the poll phase does not block). No
** libuv callback resumes a task directly, and a task is only ever resumed with
** lua_resume, which is a protected call.
*/
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <time.h>

#include "tide.h"

static const char ctx_key = 'c'; /* address used as a registry key */

/* Ready tasks resumed per pass of the check or idle handle (see drain_ready). */
#define DRAIN_BUDGET 256

/* ------------------------------------------------------------- context -- */

static void close_free_cb(uv_handle_t *h) { free(h); }

static void drain_ready(tide_ctx *ctx);

static void idle_cb(uv_idle_t *h) { drain_ready(h->data); }
static void check_cb(uv_check_t *h) { drain_ready(h->data); }

static void walk_close_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Runs when the Lua state closes (the context userdata's __gc). Every part
** closes its handles in order, then the loop runs until every close callback
** has fired, so that uv_loop_close returns 0. The context itself lives in the
** userdata's memory, which Lua frees only after all finalizers have run; other
** finalizers may therefore still look at ctx->loop (NULL once closed). */
static int ctx_gc(lua_State *L) {
  tide_ctx *ctx = tide__checkudata(L, 1, "tide.ctx");
  if (ctx->loop == NULL) return 0;
  ctx->closing = 1;
  /* Tasks still alive at close: release their timers. */
  for (tide_task *t = ctx->live_head; t; t = t->next_live) {
    if (t->wait && t->wait->cancel) t->wait->cancel(t->wait);
    t->wait = NULL;
    if (t->sleep_timer) {
      uv_close((uv_handle_t *)t->sleep_timer, close_free_cb);
      t->sleep_timer = NULL;
    }
  }
  tide__http_shutdown(ctx);
  tide__watch_shutdown(ctx);
  tide__cache_shutdown(ctx);
  tide__stdio_shutdown(ctx);
  for (int i = 0; i < ctx->nshutdown_hooks; i++) ctx->shutdown_hooks[i](ctx);
  uv_close((uv_handle_t *)ctx->idle, close_free_cb);
  uv_close((uv_handle_t *)ctx->check, close_free_cb);
  uv_run(ctx->loop, UV_RUN_DEFAULT);
  if (uv_loop_close(ctx->loop) != 0) {
    /* Something forgot a handle: close whatever is left rather than leak the
    ** loop, and say so, because it is a bug in tide. */
    fprintf(stderr, "tide: handles still open at exit; closing them\n");
    uv_walk(ctx->loop, walk_close_cb, NULL);
    uv_run(ctx->loop, UV_RUN_DEFAULT);
    uv_loop_close(ctx->loop);
  }
  free(ctx->loop);
  ctx->loop = NULL;
  return 0;
}

tide_ctx *tide__ctx(lua_State *L) {
  tide_ctx *ctx;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &ctx_key) == LUA_TUSERDATA) {
    ctx = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return ctx;
  }
  lua_pop(L, 1);
  ctx = lua_newuserdatauv(L, sizeof(tide_ctx), 0);
  memset(ctx, 0, sizeof *ctx);
  ctx->max_spawn_depth = TIDE_DEFAULT_MAX_SPAWN_DEPTH;
  ctx->next_task_id = 1;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  ctx->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  /* Allocate everything before anything can raise, so a failure leaves no
  ** half-built context behind. */
  ctx->loop = malloc(sizeof(uv_loop_t));
  ctx->idle = malloc(sizeof(uv_idle_t));
  ctx->check = malloc(sizeof(uv_check_t));
  if (!ctx->loop || !ctx->idle || !ctx->check || uv_loop_init(ctx->loop) != 0) {
    free(ctx->loop);
    free(ctx->idle);
    free(ctx->check);
    ctx->loop = NULL;
    luaL_error(L, "tide: cannot initialise the event loop");
  }
  uv_idle_init(ctx->loop, ctx->idle);
  ctx->idle->data = ctx;
  uv_check_init(ctx->loop, ctx->check);
  ctx->check->data = ctx;
  uv_check_start(ctx->check, check_cb);
  uv_unref((uv_handle_t *)ctx->check); /* never keeps the loop alive itself */
  if (luaL_newmetatable(L, "tide.ctx")) {
    lua_pushcfunction(L, ctx_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &ctx_key);
  return ctx;
}

/* --------------------------------------------------------- protected call */

static int traceback_handler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL && !lua_isnoneornil(L, 1)) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)",
                            luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int tide__pcall(lua_State *L, int nargs, int nresults, const char *where) {
  int base = lua_gettop(L) - nargs; /* the function's index */
  lua_pushcfunction(L, traceback_handler);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  if (status != LUA_OK) {
    fprintf(stderr, "tide: error in %s: %s\n", where, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  return status;
}

/* ------------------------------------------------------------- tasks -- */

/* The task running L in ctx, or NULL. */
static tide_task *current_in(tide_ctx *ctx, lua_State *L) {
  tide_task *t = ctx->current;
  return (t && t->co == L) ? t : NULL;
}

tide_task *tide__current(lua_State *L) { return current_in(tide__ctx(L), L); }

tide_task *tide__check_task(lua_State *L, const char *what) {
  tide_task *t = tide__current(L);
  if (t == NULL) luaL_error(L, "%s must be called inside a task", what);
  return t;
}

static void push_ready(tide_ctx *ctx, tide_task *t) {
  t->state = TIDE_TASK_READY;
  t->next_ready = NULL;
  if (ctx->ready_tail)
    ctx->ready_tail->next_ready = t;
  else
    ctx->ready_head = t;
  ctx->ready_tail = t;
  if (!ctx->closing && !uv_is_active((uv_handle_t *)ctx->idle))
    uv_idle_start(ctx->idle, idle_cb);
}

void tide__wake(tide_task *t) {
  if (t->state == TIDE_TASK_WAITING) {
    t->wait = NULL;
    push_ready(t->ctx, t);
  } else if (t->state == TIDE_TASK_RUNNING) {
    t->wait = NULL; /* woken before it yielded: it is requeued at the yield */
  }
}

void tide__check_cancel(lua_State *L, tide_task *t) {
  if (t->cancelled) tide__raise(L, "Cancelled", "task %d was cancelled", (int)t->id);
  if (t->interrupted) {
    t->interrupted = 0;
    tide__raise(L, "Cancelled", "task %d was interrupted", (int)t->id);
  }
}

int tide__wait(lua_State *L, tide_task *t, tide_wait *w, lua_KFunction k,
               lua_KContext kctx) {
  t->wait = w;
  return lua_yieldk(L, 0, kctx, k);
}

static void unlink_live(tide_ctx *ctx, tide_task *t) {
  if (t->prev_live)
    t->prev_live->next_live = t->next_live;
  else
    ctx->live_head = t->next_live;
  if (t->next_live) t->next_live->prev_live = t->prev_live;
  t->prev_live = t->next_live = NULL;
}

static void unlink_child(tide_task *t) {
  if (t->parent) {
    if (t->prev_sibling)
      t->prev_sibling->next_sibling = t->next_sibling;
    else
      t->parent->first_child = t->next_sibling;
    if (t->next_sibling) t->next_sibling->prev_sibling = t->prev_sibling;
  }
  t->parent = NULL;
  t->prev_sibling = t->next_sibling = NULL;
}

/* Adds a traceback to a failed task's error, in protected mode: a string
** becomes "message + traceback", a table gets a `traceback` field. */
static int decorate_error(lua_State *L) {
  lua_State *co = ((tide_task *)lua_touserdata(L, 1))->co;
  if (lua_type(co, -1) == LUA_TSTRING) {
    luaL_traceback(L, co, lua_tostring(co, -1), 0);
    lua_xmove(L, co, 1);
    lua_replace(co, -2);
  } else if (lua_type(co, -1) == LUA_TTABLE) {
    lua_pushvalue(co, -1);
    lua_xmove(co, L, 1);
    if (lua_getfield(L, -1, "traceback") == LUA_TNIL) {
      luaL_traceback(L, co, NULL, 0);
      lua_setfield(L, -3, "traceback");
    }
  }
  return 0;
}

static void close_thread(lua_State *co, lua_State *from) {
#if LUA_VERSION_RELEASE_NUM >= 50406
  lua_closethread(co, from);
#else
  (void)from;
  lua_resetthread(co);
#endif
}

/* Coroutines of finished tasks, kept for new tasks: a tool
** call's task then costs no thread (a lua_State, its stack and its call
** frames, allocated, initialised and collected each time). The registry
** table at &spare_key holds them, 1..ctx->spare_threads. */
#define SPARE_THREADS_MAX 64
static const char spare_key = 0;

/* Pushes a thread for a new task: a spare one when there is one. */
static lua_State *push_thread(lua_State *L, tide_ctx *ctx) {
  if (ctx->spare_threads == 0) return lua_newthread(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &spare_key); /* made with the first spare */
  lua_rawgeti(L, -1, ctx->spare_threads);
  lua_pushnil(L);
  lua_rawseti(L, -3, ctx->spare_threads--);
  lua_remove(L, -2);
  return lua_tothread(L, -1);
}

/* Puts the coroutine on the top of L's stack (popped) among the spares,
** reset so that it starts afresh on the next lua_resume, as a new thread
** would; or drops it when there are enough. It must sit at its base level:
** its task returned. */
static void park_thread(lua_State *L, tide_ctx *ctx) {
  lua_State *co = lua_tothread(L, -1);
  if (ctx->closing || ctx->spare_threads >= SPARE_THREADS_MAX || lua_status(co) != LUA_OK) {
    lua_pop(L, 1);
    return;
  }
  lua_settop(co, 0);
  lua_sethook(co, NULL, 0, 0); /* a debug hook set on it is the old task's */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &spare_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, SPARE_THREADS_MAX, 0);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &spare_key);
  }
  lua_insert(L, -2);
  lua_rawseti(L, -2, ++ctx->spare_threads);
  lua_pop(L, 1);
}

/* Keeps the coroutine of a task being collected (its userdata at index 1)
** for reuse, if the task ran to its end. */
static void spare_thread(lua_State *L, tide_task *t) {
  t->co = NULL;
  if (t->ctx == NULL || t->state != TIDE_TASK_DONE || !t->ok) return;
  if (lua_getiuservalue(L, 1, 1) == LUA_TTHREAD)
    park_thread(L, t->ctx);
  else
    lua_pop(L, 1);
}

/* A task that returned one value or none gives its coroutine back as it
** finishes, not when it is collected (a tool call's task is joined and
** dropped, and collected much later): the value takes the coroutine's place
** as the userdata's uservalue 1. Anyone still holding the coroutine itself
** (coroutine.running() saved by the task) sees it reused. */
static void keep_result(tide_ctx *ctx, tide_task *t, lua_State *L) {
  lua_State *co = t->co;
  if (ctx->closing || ctx->spare_threads >= SPARE_THREADS_MAX || t->ref == LUA_NOREF ||
      !lua_checkstack(L, 4))
    return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref); /* ud */
  if (t->nres == 1)
    lua_xmove(co, L, 1);
  else
    lua_pushnil(L);                           /* ud, v */
  lua_getiuservalue(L, -2, 1);                /* ud, v, co */
  lua_insert(L, -2);                          /* ud, co, v */
  lua_setiuservalue(L, -3, 1);                /* ud, co */
  t->co = NULL;
  t->result_kept = 1;
  park_thread(L, ctx);
  lua_pop(L, 1);
}

static void cancel_task(tide_task *t);

/* Whether cancelled task t ended with the Cancelled error its cancellation
** raised (and not with an error of its own, raised while it unwound). */
static int ended_by_cancel(tide_task *t) {
  lua_State *co = t->co;
  if (!t->cancelled || lua_type(co, -1) != LUA_TTABLE || !lua_checkstack(co, 2)) return 0;
  lua_pushliteral(co, "code");
  lua_rawget(co, -2); /* (raw: this runs unprotected, and a table may be anyone's) */
  const char *code = lua_type(co, -1) == LUA_TSTRING ? lua_tostring(co, -1) : NULL;
  int cancelled = code != NULL && strcmp(code, "Cancelled") == 0;
  lua_pop(co, 1);
  return cancelled;
}

/* Task t has ended. L is the running thread (the one that resumed t), on
** whose stack the outcome is arranged. */
static void finish(tide_ctx *ctx, tide_task *t, int ok, int nres, lua_State *L) {
  t->state = TIDE_TASK_DONE;
  t->ok = ok;
  t->nres = nres;
  t->wait = NULL;
  if (!ok) {
    /* The coroutine's stack was not unwound; make room before touching it.
    ** A task ended by its own cancellation gets no traceback: where it was
    ** waiting tells nothing, and a traceback costs tens of microseconds
    ** (Lua names each frame's function by a search of package.loaded),
    ** paid by every lease renewal and every timed-out wait given up. */
    if (!ended_by_cancel(t) && lua_checkstack(t->co, 2)) {
      lua_pushcfunction(L, decorate_error);
      lua_pushlightuserdata(L, t);
      if (lua_pcall(L, 1, 0, 0) != LUA_OK) lua_pop(L, 1); /* out of memory */
    }
    /* A coroutine that died by error keeps its to-be-closed variables open:
    ** reset it so they close (a cancelled task releases what it holds), and
    ** keep the original error as the task's outcome. */
    lua_pushvalue(t->co, -1);
    lua_xmove(t->co, L, 1);
    close_thread(t->co, L);
    lua_settop(t->co, 0);
    lua_xmove(L, t->co, 1);
  }
  if (t->sleep_timer) {
    uv_close((uv_handle_t *)t->sleep_timer, close_free_cb);
    t->sleep_timer = NULL;
  }
  /* A root task that failed ends the run: the tasks still running (a
  ** server, a worker, a renewal loop) are cancelled, so that the error is
  ** reported rather than hidden behind a loop that never empties. */
  if (t == ctx->root && !ok) {
    ctx->root = NULL;
    for (tide_task *o = ctx->live_head; o; o = o->next_live) cancel_task(o);
  }
  /* Children outlive their parent: they are detached, not cancelled. */
  for (tide_task *c = t->first_child, *next; c; c = next) {
    next = c->next_sibling;
    c->parent = NULL;
    c->prev_sibling = c->next_sibling = NULL;
  }
  t->first_child = NULL;
  unlink_child(t);
  unlink_live(ctx, t);
  for (tide_task *j = t->first_joiner, *next; j; j = next) {
    next = j->next_joiner;
    j->next_joiner = NULL;
    tide__wake(j);
  }
  t->first_joiner = NULL;
  if (ok && nres <= 1) keep_result(ctx, t, L);
  int ref = t->ref;
  t->ref = LUA_NOREF;
  /* After this the userdata may be collected once Lua drops it. */
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
}

/* Runs task t until it waits or ends. `from` is the thread resuming it: the
** main thread from the loop, the spawning task for core.spawn_now. */
static void resume(tide_ctx *ctx, tide_task *t, lua_State *from) {
  lua_State *co = t->co;
  int nargs = 0, nres = 0;
  if (!t->started) {
    t->started = 1;
    if (t->cancelled) {
      /* Cancelled before it ever ran: finish without running any of it. */
      lua_settop(co, 0);
      tide__push_error(co, "Cancelled", "task %d was cancelled", (int)t->id);
      finish(ctx, t, 0, 0, from);
      return;
    }
    nargs = lua_gettop(co) - 1;
  }
  t->state = TIDE_TASK_RUNNING;
  t->wait = NULL;
  tide_task *prev = ctx->current;
  ctx->current = t;
  int status = lua_resume(co, from, nargs, &nres);
  ctx->current = prev;
  if (status == LUA_YIELD) {
    if (t->wait) {
      t->state = TIDE_TASK_WAITING;
      lua_pop(co, nres);
    } else {
      /* A plain coroutine.yield (or woken before it yielded): run it again
      ** on the next pass of the loop. */
      lua_pop(co, nres);
      push_ready(ctx, t);
    }
  } else if (status == LUA_OK) {
    finish(ctx, t, 1, nres, from);
  } else {
    finish(ctx, t, 0, 0, from);
  }
}

static void drain_ready(tide_ctx *ctx) {
  if (ctx->closing) return;
  /* Run only the tasks that were ready when the pass started, so that a task
  ** yielding in a loop cannot starve I/O, and at most DRAIN_BUDGET of them:
  ** when ten thousand sessions start at once, the first requests are on the
  ** wire (the loop goes round: libcurl's timers, then the sockets) while the
  ** later sessions are still being built, instead of after all of them. */
  tide_task *last = ctx->ready_tail;
  int budget = DRAIN_BUDGET;
  while (ctx->ready_head && budget-- > 0) {
    tide_task *t = ctx->ready_head;
    ctx->ready_head = t->next_ready;
    if (ctx->ready_head == NULL) ctx->ready_tail = NULL;
    t->next_ready = NULL;
    resume(ctx, t, ctx->L);
    if (t == last) break;
  }
  if (ctx->ready_head == NULL) uv_idle_stop(ctx->idle);
}

static int task_gc(lua_State *L) {
  tide_task *t = tide__checkudata(L, 1, TIDE_TASK_MT);
  if (t->state == TIDE_TASK_DONE && !t->ok && !t->reported && t->co) {
    t->reported = 1;
    int cancelled = 0;
    if (lua_type(t->co, -1) == LUA_TTABLE) {
      lua_getfield(t->co, -1, "code");
      cancelled = lua_isstring(t->co, -1) &&
                  strcmp(lua_tostring(t->co, -1), "Cancelled") == 0;
      lua_pop(t->co, 1);
    }
    if (!cancelled) {
      const char *msg = luaL_tolstring(t->co, -1, NULL);
      fprintf(stderr, "tide: task %d failed and was never joined: %s\n",
              (int)t->id, msg);
      lua_pop(t->co, 1);
    }
  }
  if (t->co) spare_thread(L, t);
  return 0;
}

/* Pushes task t's own task-local table, making it if it has none yet or
** has only its parent's (then it reads through to the parent's by
** __index). t's userdata is on the top of the stack (and stays). */
static void own_locals(lua_State *L, tide_task *t) {
  int ty = lua_getiuservalue(L, -1, 2);
  if (ty == LUA_TTABLE && !t->locals_inherited) return;
  lua_createtable(L, 0, 2); /* ud, plocals|nil, locals */
  if (ty == LUA_TTABLE) {
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
  }
  lua_remove(L, -2);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, -3, 2);
  t->locals_inherited = 0;
}

/* A new task of ctx for the function at fnidx and the nargs values after
** it, spawned by parent (NULL: none) running L; its userdata pushed;
** queued to run when `ready`. (Callers have ctx and parent at hand: the registry lookup of
** tide__ctx costs more than the rest of a task's bookkeeping.) */
static tide_task *new_task(lua_State *L, tide_ctx *ctx, tide_task *parent, int fnidx, int nargs,
                           int depth, int ready) {
  fnidx = lua_absindex(L, fnidx);
  luaL_checktype(L, fnidx, LUA_TFUNCTION);
  tide_task *t = lua_newuserdatauv(L, sizeof(tide_task), 2);
  luaL_setmetatable(L, TIDE_TASK_MT);
  memset(t, 0, sizeof *t);
  lua_State *co = push_thread(L, ctx);
  lua_setiuservalue(L, -2, 1);
  /* Child tasks see their parent's task-local table through __index, so
  ** writes in the child never leak into the parent. The child's own table
  ** is made when it first asks for it (l_context): until then uservalue 2
  ** is the parent's table itself, and most tool tasks never write one. */
  if (parent) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, parent->ref); /* t, parent */
    if (lua_getiuservalue(L, -1, 2) == LUA_TTABLE) { /* t, parent, plocals */
      if (parent->locals_inherited) { /* later writes of the parent show */
        lua_pop(L, 1);
        own_locals(L, parent);
      }
      lua_setiuservalue(L, -3, 2);
      t->locals_inherited = 1;
      lua_pop(L, 1);
    } else {
      lua_pop(L, 2);
    }
  }
  lua_checkstack(co, nargs + 1);
  lua_pushvalue(L, fnidx);
  lua_xmove(L, co, 1);
  for (int i = 1; i <= nargs; i++) {
    lua_pushvalue(L, fnidx + i);
    lua_xmove(L, co, 1);
  }
  t->ctx = ctx;
  t->co = co;
  t->id = ctx->next_task_id++;
  t->depth = depth;
  t->max_depth = parent ? parent->max_depth : ctx->max_spawn_depth;
  t->state = TIDE_TASK_NEW;
  lua_pushvalue(L, -1);
  t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  t->next_live = ctx->live_head;
  if (ctx->live_head) ctx->live_head->prev_live = t;
  ctx->live_head = t;
  if (parent) {
    t->parent = parent;
    t->next_sibling = parent->first_child;
    if (parent->first_child) parent->first_child->prev_sibling = t;
    parent->first_child = t;
  }
  if (ready) push_ready(ctx, t);
  return t;
}

tide_task *tide__spawn(lua_State *L, int fnidx, int nargs, int depth) {
  tide_ctx *ctx = tide__ctx(L);
  return new_task(L, ctx, current_in(ctx, L), fnidx, nargs, depth, 1);
}

static void cancel_task(tide_task *t) {
  if (t->state == TIDE_TASK_DONE || t->cancelled) return;
  t->cancelled = 1;
  for (tide_task *c = t->first_child; c; c = c->next_sibling) cancel_task(c);
  if (t->state == TIDE_TASK_WAITING) {
    tide_wait *w = t->wait;
    t->wait = NULL;
    if (w && w->cancel) w->cancel(w);
    push_ready(t->ctx, t);
  }
  /* NEW and READY tasks see the flag when resumed; a RUNNING task (one that
  ** cancels itself) sees it at its next wait. */
}

/* ----------------------------------------------------------- bindings -- */

/* The task a method is called on (index 1). */
static tide_task *self_task(lua_State *L) {
  return tide__checkudata(L, 1, TIDE_TASK_MT);
}

/* core.spawn(fn, ...) -> task. The child inherits its parent's depth. */
static int l_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  tide_task *parent = tide__current(L);
  tide__spawn(L, 1, lua_gettop(L) - 1, parent ? parent->depth : 0);
  return 1;
}

/* core.spawn_now(fn, ...) -> task (inside a task)
** As spawn, but the new task runs at once, inside the caller, until it first
** waits or ends; the caller goes on from there. For a task the caller is
** about to join (a tool call): one that never waits is done before the
** join, which then returns at once instead of a pass of the loop for the
** new task and another for the caller. */
static int l_spawn_now(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  tide__spawn_now(L, NULL, 1, lua_gettop(L) - 1); /* raises outside a task */
  return 1;
}

tide_task *tide__spawn_now(lua_State *L, tide_task *caller, int fnidx, int nargs) {
  tide_task *parent = caller ? caller : tide__check_task(L, "core.spawn_now");
  tide_task *t = new_task(L, parent->ctx, parent, fnidx, nargs, parent->depth, 0);
  resume(parent->ctx, t, L);
  return t;
}

/* Pushes a finished task's outcome onto L: its results, or nil plus error.
** The task's userdata is at index udidx. */
static int push_outcome(lua_State *L, tide_task *t, int udidx) {
  if (t->result_kept) {
    if (t->nres == 0) return 0;
    lua_getiuservalue(L, udidx, 1);
    return 1;
  }
  lua_State *co = t->co;
  if (co == NULL) /* finalized (and its coroutine reused) but resurrected */
    return luaL_error(L, "task %d was collected", (int)t->id);
  if (!t->ok) {
    t->reported = 1;
    lua_pushnil(L);
    lua_checkstack(co, 1);
    lua_pushvalue(co, -1);
    lua_xmove(co, L, 1);
    return 2;
  }
  int n = t->nres, top = lua_gettop(co);
  luaL_checkstack(L, n, "too many results");
  lua_checkstack(co, 1);
  for (int i = top - n + 1; i <= top; i++) {
    lua_pushvalue(co, i);
    lua_xmove(co, L, 1);
  }
  return n;
}

static void join_cancel(tide_wait *w) {
  tide_task *self = (tide_task *)((char *)w - offsetof(tide_task, join_wait));
  tide_task *target = self->join_target;
  if (target) {
    tide_task **p = &target->first_joiner;
    while (*p && *p != self) p = &(*p)->next_joiner;
    if (*p) *p = self->next_joiner;
  }
  self->join_target = NULL;
  self->next_joiner = NULL;
  if (self->sleep_timer) uv_timer_stop(self->sleep_timer); /* a join timeout */
}

static void join_timeout_cb(uv_timer_t *h) {
  tide_task *self = h->data;
  if (self->state != TIDE_TASK_WAITING || self->wait != &self->join_wait) return;
  join_cancel(&self->join_wait);
  self->join_timed_out = 1;
  tide__wake(self);
}

static int join_k(lua_State *L, int status, lua_KContext kctx) {
  (void)status;
  tide_task *self = tide__current(L);
  self->join_target = NULL;
  if (kctx && self->sleep_timer) uv_timer_stop(self->sleep_timer);
  tide__check_cancel(L, self);
  tide_task *t = self_task(L);
  if (self->join_timed_out) {
    self->join_timed_out = 0;
    return tide__fail(L, "Timeout", "task %d did not finish in time", (int)t->id);
  }
  if (t->state != TIDE_TASK_DONE) /* spurious wake-up cannot happen */
    return luaL_error(L, "tide: join woke before the task finished");
  return push_outcome(L, t, 1);
}

static int ensure_timer(lua_State *L, tide_task *t) {
  if (t->sleep_timer == NULL) {
    uv_timer_t *h = malloc(sizeof *h);
    if (h == NULL) return luaL_error(L, "out of memory");
    uv_timer_init(t->ctx->loop, h);
    h->data = t;
    t->sleep_timer = h;
  }
  return 0;
}

/* task:join([timeout_ms]) -> results... | nil, err
** With a timeout, gives up after timeout_ms with a Timeout error; the task
** itself goes on (cancel it if it must stop). */
static int l_join(lua_State *L) {
  tide_task *t = self_task(L);
  lua_Integer timeout = luaL_optinteger(L, 2, -1);
  lua_settop(L, 1);
  if (t->state == TIDE_TASK_DONE) return push_outcome(L, t, 1);
  tide_task *self = tide__check_task(L, "task:join");
  if (self == t) return luaL_error(L, "a task cannot join itself");
  tide__check_cancel(L, self);
  self->join_target = t;
  self->next_joiner = t->first_joiner;
  t->first_joiner = self;
  self->join_wait.cancel = join_cancel;
  self->join_timed_out = 0;
  if (timeout >= 0) {
    ensure_timer(L, self);
    uv_ref((uv_handle_t *)self->sleep_timer); /* (a weak sleep may have left it unref'd) */
    uv_timer_start(self->sleep_timer, join_timeout_cb, (uint64_t)timeout, 0);
  }
  return tide__wait(L, self, &self->join_wait, join_k, timeout >= 0);
}

/* task:interrupt() -> true if the task was live. Like cancel, but one-shot
** and for this task only: its current wait (or its next one) raises
** Cancelled, and after that it runs on normally. A session uses it to stop a
** turn that runs in its caller's task without ending the caller. */
static int l_interrupt(lua_State *L) {
  tide_task *t = self_task(L);
  if (t->state == TIDE_TASK_DONE) {
    lua_pushboolean(L, 0);
    return 1;
  }
  t->interrupted = 1;
  if (t->state == TIDE_TASK_WAITING) {
    tide_wait *w = t->wait;
    t->wait = NULL;
    if (w && w->cancel) w->cancel(w);
    push_ready(t->ctx, t);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* core.clear_interrupt() -> whether an interrupt of the current task was
** still pending (and is now dropped). */
static int l_clear_interrupt(lua_State *L) {
  tide_task *t = tide__current(L);
  int was = t && t->interrupted;
  if (t) t->interrupted = 0;
  lua_pushboolean(L, was);
  return 1;
}

/* task:cancel() -> true if the task was still running. Cancels its
** descendants too; takes effect at each task's next wait. */
static int l_cancel(lua_State *L) {
  tide_task *t = self_task(L);
  int live = t->state != TIDE_TASK_DONE && !t->cancelled;
  cancel_task(t);
  lua_pushboolean(L, live);
  return 1;
}

static int l_status(lua_State *L) {
  static const char *const names[] = {"new", "ready", "running", "waiting",
                                      "done"};
  tide_task *t = self_task(L);
  if (t->state == TIDE_TASK_DONE && !t->ok)
    lua_pushliteral(L, "failed");
  else
    lua_pushstring(L, names[t->state]);
  return 1;
}

static int l_task_id(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)self_task(L)->id);
  return 1;
}

static int l_task_depth(lua_State *L) {
  lua_pushinteger(L, self_task(L)->depth);
  return 1;
}

static int l_task_tostring(lua_State *L) {
  tide_task *t = self_task(L);
  lua_pushfstring(L, "tide.task %d", (int)t->id);
  return 1;
}

/* core.current() -> the running task or nil. */
static int l_current(lua_State *L) {
  tide_task *t = tide__current(L);
  if (t == NULL) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
  return 1;
}

/* core.context() -> the current task's task-local table (made on first
** use); core.context(key) -> the value at key as the task sees it, making
** nothing. Nothing outside a task. */
static int l_context(lua_State *L) {
  tide_task *t = tide__current(L);
  if (t == NULL) return 0;
  int key = !lua_isnoneornil(L, 1);
  if (key) luaL_checktype(L, 1, LUA_TSTRING);
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
  if (!key) {
    own_locals(L, t);
    return 1;
  }
  if (lua_getiuservalue(L, -1, 2) != LUA_TTABLE) return 0;
  lua_pushvalue(L, 1);
  lua_gettable(L, -2);
  return 1;
}

static void sleep_cb(uv_timer_t *h) { tide__wake(h->data); }

static void sleep_cancel(tide_wait *w) {
  tide_task *t = (tide_task *)((char *)w - offsetof(tide_task, sleep_wait));
  if (t->sleep_timer) uv_timer_stop(t->sleep_timer);
}

static int sleep_k(lua_State *L, int status, lua_KContext kctx) {
  (void)status;
  (void)kctx;
  tide__check_cancel(L, tide__current(L));
  return 0;
}

/* core.sleep(ms [, hold]): suspends the current task for ms milliseconds.
** With hold = false the sleep keeps no tide.run alive (a background task
** waiting to reconnect): once nothing else holds the loop, run ends and the
** task is cancelled. */
static int l_sleep(lua_State *L) {
  lua_Integer ms = luaL_checkinteger(L, 1);
  luaL_argcheck(L, ms >= 0, 1, "must be >= 0");
  int hold = lua_isnoneornil(L, 2) || lua_toboolean(L, 2);
  tide_task *t = tide__check_task(L, "tide.sleep");
  tide__check_cancel(L, t);
  ensure_timer(L, t);
  if (hold)
    uv_ref((uv_handle_t *)t->sleep_timer);
  else
    uv_unref((uv_handle_t *)t->sleep_timer);
  uv_timer_start(t->sleep_timer, sleep_cb, (uint64_t)ms, 0);
  t->sleep_wait.cancel = sleep_cancel;
  return tide__wait(L, t, &t->sleep_wait, sleep_k, 0);
}

/* Cancels every live task (used when run ends with tasks that can never be
** woken) and lets them unwind. */
static void cancel_all(tide_ctx *ctx) {
  for (tide_task *t = ctx->live_head; t; t = t->next_live) cancel_task(t);
  uv_run(ctx->loop, UV_RUN_DEFAULT);
}

/* Ctrl-C while the loop runs: lua.c's own handler only runs when Lua code
** does, which an idle loop never gets to, so tide watches SIGINT itself and
** cancels every task; the program unwinds (to-be-closed variables run) and
** tide.run reports Interrupted. */
static void sigint_cb(uv_signal_t *h, int signum) {
  (void)signum;
  tide_ctx *ctx = h->data;
  ctx->interrupted = 1;
  for (tide_task *t = ctx->live_head; t; t = t->next_live) cancel_task(t);
}

/* core.run(fn, ...) -> true, results... | false, err
** Runs fn as the root task and drives the loop until every task has ended. */
/* What a process that runs tide's loop needs, done by the first run of a
** state's loop rather than by require "tide", so that loading the module
** changes nothing process-wide. Thousands of sessions in flight need
** thousands of sockets: the soft descriptor limit is raised to the hard one,
** as servers do at start-up (when even the hard limit is too low, connects
** fail with FdLimit). Writing to a socket the peer has closed must be an
** error, not a fatal signal: SIGPIPE is ignored, unless the host already
** chose a disposition. */
static void process_setup(tide_ctx *ctx) {
  if (ctx->process_ready) return;
  ctx->process_ready = 1;
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
    signal(SIGPIPE, SIG_IGN);
}

static int l_run(lua_State *L) {
  tide_ctx *ctx = tide__ctx(L);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  process_setup(ctx);
  if (ctx->running)
    return luaL_error(L, "tide.run: the loop is already running (it cannot be "
                         "run from inside itself)");
  tide_task *root = tide__spawn(L, 1, lua_gettop(L) - 1, 0);
  int rootidx = lua_gettop(L);
  ctx->root = root;
  ctx->running = 1;
  ctx->interrupted = 0;
  uv_signal_t *sig = malloc(sizeof *sig);
  if (sig) {
    uv_signal_init(ctx->loop, sig);
    sig->data = ctx;
    uv_signal_start(sig, sigint_cb, SIGINT);
    uv_unref((uv_handle_t *)sig);
  }
  uv_run(ctx->loop, UV_RUN_DEFAULT);
  int deadlock = root->state != TIDE_TASK_DONE;
  ctx->root = NULL;
  if (ctx->live_head) cancel_all(ctx);
  if (sig) {
    uv_close((uv_handle_t *)sig, close_free_cb);
    uv_run(ctx->loop, UV_RUN_NOWAIT); /* let the close callback run */
  }
  ctx->running = 0;
  if (ctx->interrupted && root->state == TIDE_TASK_DONE && !root->ok) {
    root->reported = 1;
    lua_pushboolean(L, 0);
    tide__push_error(L, "Interrupted", "interrupted (SIGINT)");
    return 2;
  }
  if (deadlock) {
    root->reported = 1;
    lua_pushboolean(L, 0);
    tide__push_error(L, "Deadlock",
                     "the root task is waiting on something that can never "
                     "happen (no I/O or timer left)");
    return 2;
  }
  lua_pushboolean(L, root->ok);
  int n = push_outcome(L, root, rootidx);
  if (!root->ok) {
    lua_remove(L, -2); /* false, err instead of false, nil, err */
    n = 1;
  }
  return n + 1;
}

/* core.running() -> true while tide.run drives the loop. */
static int l_running(lua_State *L) {
  lua_pushboolean(L, tide__ctx(L)->running);
  return 1;
}

/* core.now() -> the loop's cached time in milliseconds. */
static int l_now(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)uv_now(tide__ctx(L)->loop));
  return 1;
}

/* core.wall_ns() -> the wall clock (since the epoch) in nanoseconds: the
** times of trace spans. */
static int l_wall_ns(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushinteger(L, (lua_Integer)ts.tv_sec * 1000000000 + ts.tv_nsec);
  return 1;
}

/* core.hrtime() -> a monotonic clock in nanoseconds. */
static int l_hrtime(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)uv_hrtime());
  return 1;
}

/* core.stats() -> counts of live and ready tasks (for leak checks in specs). */
static int l_loop_stats(lua_State *L) {
  tide_ctx *ctx = tide__ctx(L);
  int live = 0, ready = 0, handles = 0;
  for (tide_task *t = ctx->live_head; t; t = t->next_live) live++;
  for (tide_task *t = ctx->ready_head; t; t = t->next_ready) ready++;
  handles = ctx->loop->active_handles;
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, live);
  lua_setfield(L, -2, "live_tasks");
  lua_pushinteger(L, ready);
  lua_setfield(L, -2, "ready_tasks");
  lua_pushinteger(L, handles);
  lua_setfield(L, -2, "active_handles");
  return 1;
}

/* core.max_rss() -> the process's peak resident set size in bytes. */
static int l_max_rss(lua_State *L) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  lua_pushinteger(L, (lua_Integer)ru.ru_maxrss * 1024);
  return 1;
}

/* core.raise_fd_limit([want]) -> soft limit now, or nil, err when the hard
** limit is lower than wanted. */
static int l_raise_fd_limit(lua_State *L) {
  lua_Integer want = luaL_optinteger(L, 1, 0);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return tide__fail(L, "FdLimit", "getrlimit failed");
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  if (want > 0 && (lua_Integer)rl.rlim_cur < want)
    return tide__fail(L, "FdLimit",
                      "need %d file descriptors but the hard limit is %d "
                      "(raise it with ulimit -Hn)",
                      (int)want, (int)rl.rlim_cur);
  lua_pushinteger(L, (lua_Integer)rl.rlim_cur);
  return 1;
}

void tide__open_loop(lua_State *L) {
  static const luaL_Reg task_meta[] = {
      {"__gc", task_gc}, {"__tostring", l_task_tostring}, {NULL, NULL}};
  static const luaL_Reg task_methods[] = {
      {"join", l_join},     {"cancel", l_cancel}, {"status", l_status},
      {"interrupt", l_interrupt},
      {"id", l_task_id},    {"depth", l_task_depth}, {NULL, NULL}};
  static const luaL_Reg fns[] = {
      {"run", l_run},
      {"spawn", l_spawn},
      {"spawn_now", l_spawn_now},
      {"sleep", l_sleep},
      {"current", l_current},
      {"context", l_context},
      {"running", l_running},
      {"now", l_now},
      {"wall_ns", l_wall_ns},
      {"hrtime", l_hrtime},
      {"loop_stats", l_loop_stats},
      {"max_rss", l_max_rss},
      {"raise_fd_limit", l_raise_fd_limit},
      {"clear_interrupt", l_clear_interrupt},
      {NULL, NULL}};
  tide__register_type(L, TIDE_TASK_MT, task_meta, task_methods);
  luaL_setfuncs(L, fns, 0);
  tide__ctx(L);
}
