/*
** watch.c -- directory watching for hot reload, plus the two small
** file-system helpers the reloaders need (listing a directory, resolving a
** path).
**
** A watcher watches a DIRECTORY with a uv_fs_event handle: editors that save
** by writing a temporary file and renaming it over the original replace the
** file's inode, which a watch on the file itself would lose, while the
** directory sees both names change. Events are debounced per watcher with a
** uv_timer: every event restarts the timer, and once the directory has been
** quiet for the debounce period the Lua callback runs once with the changed
** basenames, deduplicated, in order of first change.
**
** Lifetimes: both handles live in one malloc'ed struct, freed by the second
** close callback, because libuv may touch them after the userdata is gone.
** The userdata holds only a pointer to it (NULL once closed) and the callback
** as its user value. While open, one registry reference anchors the userdata,
** so a watcher nobody holds keeps watching until it is closed (or the state
** closes): `tide.prompts.watch(dir)` without keeping the handle must work.
** Every open watcher is on a per-state list, kept in a userdata reached
** through the registry, so that tide__watch_shutdown can close them all.
**
** Neither handle keeps the loop alive (both are unref'd): a program that wants
** to wait for reloads keeps tide.run busy with its own tasks.
*/
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

#define WATCH_MT "tide.watch"
#define SCANDIR_MT "tide.scandir"

#define DEFAULT_DEBOUNCE_MS 30

static const char list_key = 'w'; /* address used as a registry key */

typedef struct watcher watcher;

typedef struct watch_list {
  watcher *head;
} watch_list;

typedef struct watch_ud {
  watcher *w; /* NULL once closed */
} watch_ud;

struct watcher {
  uv_fs_event_t event;
  uv_timer_t timer;
  tide_ctx *ctx;
  watch_ud *ud;      /* valid while open: the registry reference anchors it */
  int ref;           /* registry reference to the userdata while open */
  int open_handles;  /* close callbacks still to come */
  uint64_t debounce; /* ms */
  char *names;       /* pending basenames, each NUL-terminated */
  size_t len, cap;
  watch_list *list;
  watcher *prev, *next;
};

/* ----------------------------------------------------------- the list -- */

static watch_list *get_list(lua_State *L) {
  return tide__state_block(L, &list_key, sizeof(watch_list));
}

static void unlink_watcher(watcher *w) {
  if (w->prev)
    w->prev->next = w->next;
  else
    w->list->head = w->next;
  if (w->next) w->next->prev = w->prev;
  w->prev = w->next = NULL;
}

/* ------------------------------------------------------------ closing -- */

static void handle_closed(uv_handle_t *h) {
  watcher *w = h->data;
  if (--w->open_handles == 0) {
    free(w->names);
    free(w);
  }
}

/* Detaches w from Lua and hands its handles to libuv to close; the memory
** goes in the last close callback. Never raises. */
static void watcher_close(lua_State *L, watcher *w) {
  unlink_watcher(w);
  w->ud->w = NULL;
  w->ud = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, w->ref);
  w->ref = LUA_NOREF;
  uv_close((uv_handle_t *)&w->event, handle_closed);
  uv_close((uv_handle_t *)&w->timer, handle_closed);
}

void tide__watch_shutdown(tide_ctx *ctx) {
  lua_State *L = ctx->L;
  watch_list *list = tide__state_block_if(L, &list_key);
  if (list == NULL) return;
  while (list->head) watcher_close(L, list->head);
}

/* ---------------------------------------------------------- callbacks -- */

/* Records a changed name unless it is already pending. Allocation failure
** drops the name (the callback still runs): a libuv callback cannot raise. */
static void add_name(watcher *w, const char *name) {
  size_t n = strlen(name);
  for (size_t off = 0; off < w->len; off += strlen(w->names + off) + 1)
    if (strcmp(w->names + off, name) == 0) return;
  if (w->cap - w->len < n + 1) {
    size_t cap = w->cap ? w->cap : 256;
    while (cap - w->len < n + 1) cap *= 2;
    char *p = realloc(w->names, cap);
    if (p == NULL) return;
    w->names = p;
    w->cap = cap;
  }
  memcpy(w->names + w->len, name, n + 1);
  w->len += n + 1;
}

static void timer_cb(uv_timer_t *h);

static void event_cb(uv_fs_event_t *h, const char *filename, int events,
                     int status) {
  watcher *w = h->data;
  (void)events;
  if (w->ud == NULL) return; /* closed; the close callback is pending */
  if (status == 0 && filename != NULL) {
    const char *base = strrchr(filename, '/');
    add_name(w, base ? base + 1 : filename);
  }
  uv_timer_start(&w->timer, timer_cb, w->debounce, 0);
}

/* Runs in protected mode with the watcher as a light userdata: builds the
** array of names, clears the pending set, calls the callback. The callback
** may close the watcher; nothing here touches it after the call. */
static int fire(lua_State *L) {
  watcher *w = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->ref);
  lua_getiuservalue(L, -1, 1);
  lua_createtable(L, 4, 0);
  lua_Integer k = 0;
  for (size_t off = 0; off < w->len; off += strlen(w->names + off) + 1) {
    lua_pushstring(L, w->names + off);
    lua_rawseti(L, -2, ++k);
  }
  w->len = 0;
  lua_call(L, 1, 0);
  return 0;
}

static void timer_cb(uv_timer_t *h) {
  watcher *w = h->data;
  tide_ctx *ctx = w->ctx;
  if (w->ud == NULL || ctx->closing) return;
  lua_State *L = ctx->L;
  if (!lua_checkstack(L, 3)) return;
  lua_pushcfunction(L, fire);
  lua_pushlightuserdata(L, w);
  tide__pcall(L, 1, 0, "watch callback");
}

/* ----------------------------------------------------------- bindings -- */

static watch_ud *check_watch(lua_State *L) {
  return tide__checkudata(L, 1, WATCH_MT);
}

/* core.watch(path, callback [, debounce_ms]) -> watcher | nil, err
** Watches the directory `path`; callback({ name, ... }) runs on the main
** thread, outside any task, once changes have been quiet for debounce_ms
** (default 30). It must not wait; it may tide.spawn work that does. */
static int l_watch(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_Integer debounce = luaL_optinteger(L, 3, DEFAULT_DEBOUNCE_MS);
  luaL_argcheck(L, debounce >= 0 && debounce <= 3600000, 3,
                "must be between 0 and 3600000");
  tide_ctx *ctx = tide__ctx(L);
  watch_list *list = get_list(L);
  /* Everything that can raise happens before the malloc: the userdata is
  ** created closed, and the reference is taken before the handles exist. */
  watch_ud *ud = lua_newuserdatauv(L, sizeof *ud, 1);
  ud->w = NULL;
  luaL_setmetatable(L, WATCH_MT);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, -1);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  watcher *w = calloc(1, sizeof *w);
  if (w == NULL) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return luaL_error(L, "not enough memory");
  }
  w->ctx = ctx;
  w->ud = ud;
  w->ref = ref;
  w->debounce = (uint64_t)debounce;
  w->list = list;
  uv_fs_event_init(ctx->loop, &w->event);
  uv_timer_init(ctx->loop, &w->timer);
  w->event.data = w->timer.data = w;
  w->open_handles = 2;
  w->next = list->head;
  if (list->head) list->head->prev = w;
  list->head = w;
  ud->w = w;
  int rc = uv_fs_event_start(&w->event, event_cb, path, 0);
  if (rc < 0) {
    watcher_close(L, w);
    return tide__fail(L, "WatchFailed", "cannot watch '%s': %s", path,
                      uv_strerror(rc));
  }
  uv_unref((uv_handle_t *)&w->event);
  uv_unref((uv_handle_t *)&w->timer);
  return 1;
}

/* w:close(); also __gc and __close. Idempotent. */
static int l_watch_close(lua_State *L) {
  watch_ud *ud = check_watch(L);
  if (ud->w) watcher_close(L, ud->w);
  return 0;
}

/* w:closed() -> true once closed. */
static int l_watch_closed(lua_State *L) {
  lua_pushboolean(L, check_watch(L)->w == NULL);
  return 1;
}

static int l_watch_tostring(lua_State *L) {
  watch_ud *ud = check_watch(L);
  if (ud->w == NULL) {
    lua_pushliteral(L, "tide.watch (closed)");
  } else {
    char buf[PATH_MAX];
    size_t n = sizeof buf;
    if (uv_fs_event_getpath(&ud->w->event, buf, &n) == 0)
      lua_pushfstring(L, "tide.watch (%s)", buf);
    else
      lua_pushliteral(L, "tide.watch");
  }
  return 1;
}

/* The scandir request lives in a userdata so that an error raised while the
** names are copied out (out of memory) still releases libuv's list. */
static int scandir_gc(lua_State *L) {
  uv_fs_t *req = tide__checkudata(L, 1, SCANDIR_MT);
  if (req->type == UV_FS) uv_fs_req_cleanup(req);
  req->type = UV_UNKNOWN_REQ;
  return 0;
}

/* core.scandir(dir) -> { name, ... } ("." and ".." left out, in no promised
** order: callers sort) | nil, err. Synchronous: directories of prompts and
** agents are small. */
static int l_scandir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  tide_ctx *ctx = tide__ctx(L);
  uv_fs_t *req = lua_newuserdatauv(L, sizeof *req, 0);
  req->type = UV_UNKNOWN_REQ;
  luaL_setmetatable(L, SCANDIR_MT);
  int rc = uv_fs_scandir(ctx->loop, req, path, 0, NULL);
  if (rc < 0) {
    uv_fs_req_cleanup(req);
    req->type = UV_UNKNOWN_REQ;
    return tide__fail(L, "FileError", "cannot list '%s': %s", path,
                      uv_strerror(rc));
  }
  lua_createtable(L, rc, 0);
  uv_dirent_t ent;
  lua_Integer k = 0;
  while (uv_fs_scandir_next(req, &ent) != UV_EOF) {
    lua_pushstring(L, ent.name);
    lua_rawseti(L, -2, ++k);
  }
  uv_fs_req_cleanup(req);
  req->type = UV_UNKNOWN_REQ;
  return 1;
}

/* core.realpath(path) -> absolute path with links resolved | nil, err */
static int l_realpath(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char buf[PATH_MAX];
  if (realpath(path, buf) == NULL)
    return tide__fail(L, "FileError", "cannot resolve '%s': %s", path,
                      strerror(errno));
  lua_pushstring(L, buf);
  return 1;
}

void tide__open_watch(lua_State *L) {
  static const luaL_Reg meta[] = {{"__gc", l_watch_close},
                                  {"__close", l_watch_close},
                                  {"__tostring", l_watch_tostring},
                                  {NULL, NULL}};
  static const luaL_Reg scandir_meta[] = {{"__gc", scandir_gc}, {NULL, NULL}};
  static const luaL_Reg methods[] = {
      {"close", l_watch_close}, {"closed", l_watch_closed}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"watch", l_watch},
                                 {"scandir", l_scandir},
                                 {"realpath", l_realpath},
                                 {NULL, NULL}};
  tide__register_type(L, WATCH_MT, meta, methods);
  tide__register_type(L, SCANDIR_MT, scandir_meta, NULL);
  get_list(L);
  luaL_setfuncs(L, fns, 0);
}
