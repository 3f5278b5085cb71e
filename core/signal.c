/*
** signal.c -- process signals as Lua callbacks (core.on_signal), so that a
** server can stop gracefully: `tide worker` drains its queue on SIGTERM,
** which is how systemd, Docker and Kubernetes ask a process to stop.
**
** One uv_signal_t per handle, in a malloc'ed struct freed by its close
** callback (libuv may touch the handle after the userdata is gone). While
** open, a registry reference anchors the userdata, whose user value is the
** callback; every open handle is on a per-state list so that the shutdown
** hook can close them all.
**
** The handle does not keep the loop alive (it is unref'd): waiting for a
** signal is not work. The callback runs on the main thread, outside any
** task, through the one protected call; it must not wait, and may spawn a
** task that does. While any handle watches a signal, libuv has replaced
** its default action; once the last one is closed, the default comes back
** (a second SIGTERM after a handle closed itself ends the process).
*/
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

#define SIGNAL_MT "tide.signal"

static const char list_key = 's'; /* address used as a registry key */

typedef struct watched watched;

typedef struct signal_list {
  watched *head;
} signal_list;

typedef struct signal_ud {
  watched *s; /* NULL once closed */
} signal_ud;

struct watched {
  uv_signal_t h;
  tide_ctx *ctx;
  signal_ud *ud; /* valid while open: the registry reference anchors it */
  int ref;       /* registry reference to the userdata while open */
  int signum;
  signal_list *list;
  watched *prev, *next;
};

static const struct {
  const char *name;
  int signum;
} NAMES[] = {{"TERM", SIGTERM}, {"INT", SIGINT}, {"HUP", SIGHUP},
             {"USR1", SIGUSR1}, {"USR2", SIGUSR2}};

static signal_list *get_list(lua_State *L) {
  return tide__state_block(L, &list_key, sizeof(signal_list));
}

static void closed_cb(uv_handle_t *h) { free(h->data); }

/* Detaches s from Lua and hands its handle to libuv to close. Never raises. */
static void watched_close(lua_State *L, watched *s) {
  if (s->prev)
    s->prev->next = s->next;
  else
    s->list->head = s->next;
  if (s->next) s->next->prev = s->prev;
  s->ud->s = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, s->ref);
  uv_close((uv_handle_t *)&s->h, closed_cb);
}

static void signal_shutdown(tide_ctx *ctx) {
  lua_State *L = ctx->L;
  signal_list *list = tide__state_block_if(L, &list_key);
  if (list == NULL) return;
  while (list->head) watched_close(L, list->head);
}

static const char *name_of(int signum) {
  for (size_t i = 0; i < tide__nelem(NAMES); i++)
    if (NAMES[i].signum == signum) return NAMES[i].name;
  return "?";
}

/* Runs in protected mode: callback(name). The callback may close the
** handle; nothing here touches it after the call. */
static int fire(lua_State *L) {
  watched *s = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref);
  lua_getiuservalue(L, -1, 1);
  lua_pushstring(L, name_of(s->signum));
  lua_call(L, 1, 0);
  return 0;
}

static void signal_cb(uv_signal_t *h, int signum) {
  (void)signum;
  watched *s = h->data;
  tide_ctx *ctx = s->ctx;
  if (s->ud == NULL || ctx->closing) return;
  lua_State *L = ctx->L;
  if (!lua_checkstack(L, 3)) return;
  lua_pushcfunction(L, fire);
  lua_pushlightuserdata(L, s);
  tide__pcall(L, 1, 0, "signal callback");
}

/* core.on_signal(name, callback) -> handle | nil, err
** Calls callback(name) each time the process gets signal `name` ("TERM",
** "INT", "HUP", "USR1", "USR2"), until handle:close(). */
static int l_on_signal(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  int signum = 0;
  for (size_t i = 0; i < tide__nelem(NAMES); i++)
    if (strcmp(NAMES[i].name, name) == 0) signum = NAMES[i].signum;
  if (signum == 0)
    return luaL_argerror(L, 1, "expected \"TERM\", \"INT\", \"HUP\", \"USR1\" or \"USR2\"");
  tide_ctx *ctx = tide__ctx(L);
  signal_list *list = get_list(L);
  if (tide__on_shutdown(ctx, signal_shutdown) != 0) return luaL_error(L, "too many shutdown hooks");
  /* Everything that can raise comes before the malloc. */
  signal_ud *ud = lua_newuserdatauv(L, sizeof *ud, 1);
  ud->s = NULL;
  luaL_setmetatable(L, SIGNAL_MT);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, -1);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  watched *s = calloc(1, sizeof *s);
  if (s == NULL) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return luaL_error(L, "not enough memory");
  }
  s->ctx = ctx;
  s->ud = ud;
  s->ref = ref;
  s->signum = signum;
  s->list = list;
  uv_signal_init(ctx->loop, &s->h);
  s->h.data = s;
  s->next = list->head;
  if (list->head) list->head->prev = s;
  list->head = s;
  ud->s = s;
  int rc = uv_signal_start(&s->h, signal_cb, signum);
  if (rc < 0) {
    watched_close(L, s);
    return tide__fail(L, "SignalFailed", "cannot watch SIG%s: %s", name, uv_strerror(rc));
  }
  uv_unref((uv_handle_t *)&s->h);
  return 1;
}

/* handle:close(); also __gc and __close. Idempotent. */
static int l_signal_close(lua_State *L) {
  signal_ud *ud = tide__checkudata(L, 1, SIGNAL_MT);
  if (ud->s) watched_close(L, ud->s);
  return 0;
}

/* handle:closed() -> true once closed. */
static int l_signal_closed(lua_State *L) {
  lua_pushboolean(L, ((signal_ud *)tide__checkudata(L, 1, SIGNAL_MT))->s == NULL);
  return 1;
}

/// Registers on_signal.
void tide__open_signal(lua_State *L) {
  static const luaL_Reg meta[] = {{"__gc", l_signal_close}, {"__close", l_signal_close}, {NULL, NULL}};
  static const luaL_Reg methods[] = {{"close", l_signal_close}, {"closed", l_signal_closed}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"on_signal", l_on_signal}, {NULL, NULL}};
  tide__register_type(L, SIGNAL_MT, meta, methods);
  luaL_setfuncs(L, fns, 0);
}
