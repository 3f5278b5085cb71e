/*
** cache.c -- the shared integration cache: one per Lua state, keyed by an
** integration source's identity string.
**
** An entry is empty, fetching or ready. A lookup that finds nothing fresh
** makes the caller the fetcher ("miss"); lookups that arrive while that fetch
** is in flight wait for it, so concurrent misses on one key cost one fetch.
** The fetcher completes with cache_store (the snapshot is cached and handed
** to every waiter) or cache_fail (the error is handed to every waiter and
** nothing is cached, so the next lookup misses again). The Lua layer
** (lua/tide/integrations/cache.lua) guarantees one of the two runs, even when
** the fetching task is cancelled or raises.
**
** Lifetimes. Entries are malloc'ed and linked into the per-state tide_cache
** (ctx->cache); each ready entry anchors its snapshot with one registry
** reference. A waiter is a full userdata left on the waiting coroutine's
** stack for the length of the wait, so its memory lives exactly as long as
** the wait can be completed: the wait ends either by completion (the waiter
** is unlinked before the task is woken) or by cancellation (tide_wait.cancel
** unlinks it). The result handed to a waiter is anchored by a registry
** reference until its continuation takes it.
**
** The few keys a process has (one per integration source) make a linked list
** the right structure.
*/
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

#define CACHE_DEFAULT_TTL_MS 60000
#define WAITER_MT "tide.cache.waiter"

enum { ENTRY_EMPTY, ENTRY_FETCHING, ENTRY_READY };
enum { OUTCOME_PENDING, OUTCOME_HIT, OUTCOME_ERROR };

typedef struct cache_entry cache_entry;
typedef struct cache_waiter cache_waiter;

struct cache_waiter {
  tide_wait wait; /* first member: a tide_wait * is a cache_waiter * */
  tide_task *task;
  cache_entry *entry; /* NULL once completed or cancelled */
  cache_waiter *prev, *next;
  int outcome;
  int ref; /* the snapshot or the error, until the continuation takes it */
};

struct cache_entry {
  cache_entry *prev, *next;
  int state;
  int snap_ref;        /* registry ref to the snapshot while ready */
  uint64_t expires_at; /* loop time (ms) */
  uint64_t owner;      /* id of the fetching task; 0 outside any task */
  int discard;         /* invalidated while fetching: do not keep the result */
  cache_waiter *first, *last;
  size_t keylen;
  char key[]; /* keylen bytes plus a NUL, for messages */
};

struct tide_cache {
  cache_entry *head;
  uint64_t ttl_ms;
  lua_Integer hits, misses, fetches, waits, failures;
};

/* -------------------------------------------------------------- hashing -- */

/* FNV-1a, 64 bits: fast, stable across runs and platforms, and plenty for
** telling integration snapshots apart (it is not a security boundary). */
static uint64_t fnv1a64(const char *s, size_t n) {
  uint64_t h = UINT64_C(0xcbf29ce484222325);
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= UINT64_C(0x100000001b3);
  }
  return h;
}

/* -------------------------------------------------------------- entries -- */

/* The cache's notion of "now". uv_now is only refreshed when the loop turns,
** so a lookup made outside tide.run (or late in a long callback) would judge
** freshness by a stale clock; refreshing it is cheap and harmless. */
static uint64_t now_ms(tide_ctx *ctx) {
  uv_update_time(ctx->loop);
  return uv_now(ctx->loop);
}

static cache_entry *find(struct tide_cache *c, const char *key, size_t len) {
  for (cache_entry *e = c->head; e; e = e->next)
    if (e->keylen == len && memcmp(e->key, key, len) == 0) return e;
  return NULL;
}

static cache_entry *create(lua_State *L, struct tide_cache *c, const char *key,
                           size_t len) {
  cache_entry *e = malloc(sizeof *e + len + 1);
  if (e == NULL) luaL_error(L, "not enough memory for a cache entry");
  memset(e, 0, sizeof *e);
  e->state = ENTRY_EMPTY;
  e->snap_ref = LUA_NOREF;
  e->keylen = len;
  memcpy(e->key, key, len);
  e->key[len] = '\0';
  e->next = c->head;
  if (c->head) c->head->prev = e;
  c->head = e;
  return e;
}

static void release_snapshot(lua_State *L, cache_entry *e) {
  if (e->snap_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, e->snap_ref);
  e->snap_ref = LUA_NOREF;
}

/* Frees an entry that holds nothing and that nobody waits on. */
static void maybe_free(struct tide_cache *c, cache_entry *e) {
  if (e->state != ENTRY_EMPTY || e->first != NULL) return;
  if (e->prev)
    e->prev->next = e->next;
  else
    c->head = e->next;
  if (e->next) e->next->prev = e->prev;
  free(e);
}

static int is_fresh(tide_ctx *ctx, cache_entry *e) {
  return e->state == ENTRY_READY && now_ms(ctx) < e->expires_at;
}

/* Hands the value at index idx to every waiter of e and wakes them. Each
** waiter is unlinked only after its reference is taken, so a memory error
** half-way leaves the remaining waiters linked and consistent. */
static void complete_waiters(lua_State *L, cache_entry *e, int outcome, int idx) {
  idx = lua_absindex(L, idx);
  while (e->first) {
    cache_waiter *w = e->first;
    lua_pushvalue(L, idx);
    w->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    w->outcome = outcome;
    e->first = w->next;
    if (e->first)
      e->first->prev = NULL;
    else
      e->last = NULL;
    w->prev = w->next = NULL;
    w->entry = NULL;
    tide__wake(w->task);
  }
}

/* tide_wait.cancel: the waiting task was cancelled (or the state is closing);
** forget the waiter so the fetch's completion never touches it. */
static void waiter_cancel(tide_wait *wait) {
  cache_waiter *w = (cache_waiter *)wait;
  cache_entry *e = w->entry;
  if (e == NULL) return;
  if (w->prev)
    w->prev->next = w->next;
  else
    e->first = w->next;
  if (w->next)
    w->next->prev = w->prev;
  else
    e->last = w->prev;
  w->prev = w->next = NULL;
  w->entry = NULL;
}

/* ------------------------------------------------------------- bindings -- */

static struct tide_cache *get_cache(lua_State *L) {
  tide_ctx *ctx = tide__ctx(L);
  if (ctx->loop == NULL || ctx->closing)
    luaL_error(L, "tide: the integration cache is gone (the state is closing)");
  if (ctx->cache == NULL) {
    struct tide_cache *c = malloc(sizeof *c);
    if (c == NULL) luaL_error(L, "not enough memory for the integration cache");
    memset(c, 0, sizeof *c);
    c->ttl_ms = CACHE_DEFAULT_TTL_MS;
    ctx->cache = c;
  }
  return ctx->cache;
}

static const char *check_key(lua_State *L, size_t *len) {
  const char *key = luaL_checklstring(L, 1, len);
  luaL_argcheck(L, *len > 0, 1, "the cache key must not be empty");
  return key;
}

static int lookup_k(lua_State *L, int status, lua_KContext kctx) {
  (void)status;
  (void)kctx;
  cache_waiter *w = tide__checkudata(L, 2, WAITER_MT);
  tide_task *t = tide__current(L);
  int outcome = w->outcome;
  /* Take the result first: a cancelled task must not leave it anchored. */
  if (w->ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->ref);
    luaL_unref(L, LUA_REGISTRYINDEX, w->ref);
    w->ref = LUA_NOREF;
  } else {
    lua_pushnil(L);
  }
  tide__check_cancel(L, t);
  if (outcome == OUTCOME_PENDING)
    return luaL_error(L, "tide: cache wait woke before the fetch completed");
  lua_pushstring(L, outcome == OUTCOME_HIT ? "hit" : "error");
  lua_insert(L, -2);
  return 2;
}

/* core.cache_lookup(key) -> "hit", snapshot | "miss" | "error", err
** "miss" makes the caller the fetcher: it must call cache_store or
** cache_fail. While another task fetches, waits for that fetch. */
static int l_lookup(lua_State *L) {
  size_t len;
  const char *key = check_key(L, &len);
  struct tide_cache *c = get_cache(L);
  tide_ctx *ctx = tide__ctx(L);
  tide_task *t = tide__current(L);
  cache_entry *e = find(c, key, len);
  if (e && e->state == ENTRY_READY) {
    if (is_fresh(ctx, e)) {
      c->hits++;
      lua_pushliteral(L, "hit");
      lua_rawgeti(L, LUA_REGISTRYINDEX, e->snap_ref);
      return 2;
    }
    release_snapshot(L, e); /* expired */
    e->state = ENTRY_EMPTY;
  }
  if (e && e->state == ENTRY_FETCHING) {
    if (t == NULL)
      return luaL_error(L, "core.cache_lookup must be called inside a task "
                           "while a fetch for the key is in flight");
    if (e->owner == t->id) {
      lua_pushliteral(L, "error");
      tide__push_error(L, "IntegrationsUnavailable",
                       "the fetch for '%s' is already in progress in this task "
                       "(a source's fetch must not look up its own key)",
                       e->key);
      return 2;
    }
    tide__check_cancel(L, t);
    lua_settop(L, 1);
    cache_waiter *w = lua_newuserdatauv(L, sizeof *w, 0);
    memset(w, 0, sizeof *w);
    w->ref = LUA_NOREF;
    luaL_setmetatable(L, WAITER_MT);
    w->wait.cancel = waiter_cancel;
    w->task = t;
    w->entry = e;
    w->prev = e->last;
    if (e->last)
      e->last->next = w;
    else
      e->first = w;
    e->last = w;
    c->misses++;
    c->waits++;
    return tide__wait(L, t, &w->wait, lookup_k, 0);
  }
  if (e == NULL) e = create(L, c, key, len);
  e->state = ENTRY_FETCHING;
  e->owner = t ? t->id : 0;
  e->discard = 0;
  c->misses++;
  c->fetches++;
  lua_pushliteral(L, "miss");
  return 1;
}

/* core.cache_peek(key) -> snapshot | nil. Never waits, never fetches. */
static int l_peek(lua_State *L) {
  size_t len;
  const char *key = check_key(L, &len);
  struct tide_cache *c = get_cache(L);
  cache_entry *e = find(c, key, len);
  if (e && is_fresh(tide__ctx(L), e))
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->snap_ref);
  else
    lua_pushnil(L);
  return 1;
}

/* core.cache_store(key, snapshot [, ttl_ms]) -> kept
** Completes a fetch (every waiter gets the snapshot) and caches the
** snapshot, unless the key was invalidated while the fetch was in flight:
** then the waiters still get it but it is not kept (returns false). May also
** be called without a preceding miss, to seed the cache. */
static int l_store(lua_State *L) {
  size_t len;
  const char *key = check_key(L, &len);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer ttl = luaL_optinteger(L, 3, -1);
  luaL_argcheck(L, ttl >= -1, 3, "must be >= 0");
  lua_settop(L, 2);
  struct tide_cache *c = get_cache(L);
  tide_ctx *ctx = tide__ctx(L);
  cache_entry *e = find(c, key, len);
  if (e == NULL) e = create(L, c, key, len);
  if (e->state == ENTRY_FETCHING) complete_waiters(L, e, OUTCOME_HIT, 2);
  int keep = !e->discard;
  release_snapshot(L, e);
  e->owner = 0;
  e->discard = 0;
  if (keep) {
    lua_pushvalue(L, 2);
    e->snap_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    e->expires_at = now_ms(ctx) + (ttl >= 0 ? (uint64_t)ttl : c->ttl_ms);
    e->state = ENTRY_READY;
  } else {
    e->state = ENTRY_EMPTY;
    maybe_free(c, e);
  }
  lua_pushboolean(L, keep);
  return 1;
}

/* core.cache_fail(key, err) -> completed
** Completes a fetch with a failure: every waiter gets err, nothing is cached
** and the next lookup misses again. Returns false when no fetch was in
** flight for the key. Never raises for a valid key: it runs from __close
** handlers of fetching tasks that are being unwound. */
static int l_fail(lua_State *L) {
  size_t len;
  const char *key = check_key(L, &len);
  if (lua_isnoneornil(L, 2)) {
    lua_settop(L, 1);
    tide__push_error(L, "IntegrationsUnavailable", "the fetch for '%s' failed",
                     key);
  }
  lua_settop(L, 2);
  struct tide_cache *c = get_cache(L);
  cache_entry *e = find(c, key, len);
  if (e == NULL || e->state != ENTRY_FETCHING) {
    lua_pushboolean(L, 0);
    return 1;
  }
  complete_waiters(L, e, OUTCOME_ERROR, 2);
  e->state = ENTRY_EMPTY;
  e->owner = 0;
  e->discard = 0;
  c->failures++;
  maybe_free(c, e);
  lua_pushboolean(L, 1);
  return 1;
}

/* Drops what e holds. A fetch in flight is not interrupted: its result is
** delivered to its waiters but not kept. Returns 1 if e held anything. */
static int invalidate(lua_State *L, struct tide_cache *c, cache_entry *e) {
  if (e->state == ENTRY_FETCHING) {
    e->discard = 1;
    return 1;
  }
  int had = e->state == ENTRY_READY;
  release_snapshot(L, e);
  e->state = ENTRY_EMPTY;
  maybe_free(c, e);
  return had;
}

/* core.cache_invalidate(key) -> true if the key held a snapshot or a fetch */
static int l_invalidate(lua_State *L) {
  size_t len;
  const char *key = check_key(L, &len);
  struct tide_cache *c = get_cache(L);
  cache_entry *e = find(c, key, len);
  lua_pushboolean(L, e ? invalidate(L, c, e) : 0);
  return 1;
}

/* core.cache_invalidate_all() -> number of keys dropped */
static int l_invalidate_all(lua_State *L) {
  struct tide_cache *c = get_cache(L);
  lua_Integer n = 0;
  for (cache_entry *e = c->head, *next; e; e = next) {
    next = e->next; /* invalidate may free e */
    n += invalidate(L, c, e);
  }
  lua_pushinteger(L, n);
  return 1;
}

/* core.cache_ttl_ms([ms]) -> the default TTL in force (after setting it).
** Applies to snapshots stored from now on. */
static int l_ttl(lua_State *L) {
  struct tide_cache *c = get_cache(L);
  if (!lua_isnoneornil(L, 1)) {
    lua_Integer ms = luaL_checkinteger(L, 1);
    luaL_argcheck(L, ms >= 0, 1, "must be >= 0");
    c->ttl_ms = (uint64_t)ms;
  }
  lua_pushinteger(L, (lua_Integer)c->ttl_ms);
  return 1;
}

/* core.cache_stats() -> { hits, misses, fetches, waits, failures, entries,
** in_flight, waiting }. misses = fetches + waits; entries counts keys holding
** a snapshot (fresh or not yet found expired); in_flight counts fetches;
** waiting counts tasks waiting on them now. */
static int l_stats(lua_State *L) {
  struct tide_cache *c = get_cache(L);
  lua_Integer entries = 0, in_flight = 0, waiting = 0;
  for (cache_entry *e = c->head; e; e = e->next) {
    entries += e->state == ENTRY_READY;
    in_flight += e->state == ENTRY_FETCHING;
    for (cache_waiter *w = e->first; w; w = w->next) waiting++;
  }
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, c->hits);
  lua_setfield(L, -2, "hits");
  lua_pushinteger(L, c->misses);
  lua_setfield(L, -2, "misses");
  lua_pushinteger(L, c->fetches);
  lua_setfield(L, -2, "fetches");
  lua_pushinteger(L, c->waits);
  lua_setfield(L, -2, "waits");
  lua_pushinteger(L, c->failures);
  lua_setfield(L, -2, "failures");
  lua_pushinteger(L, entries);
  lua_setfield(L, -2, "entries");
  lua_pushinteger(L, in_flight);
  lua_setfield(L, -2, "in_flight");
  lua_pushinteger(L, waiting);
  lua_setfield(L, -2, "waiting");
  return 1;
}

/* core.cache_reset_stats(): zeroes the counters (specs and benchmarks). */
static int l_reset_stats(lua_State *L) {
  struct tide_cache *c = get_cache(L);
  c->hits = c->misses = c->fetches = c->waits = c->failures = 0;
  return 0;
}

/* core.hash(str) -> 16 lowercase hex digits of FNV-1a 64. Not a
** cryptographic hash: it fingerprints integration lists and request prefixes
** so that a change is noticed, and nothing trusts it against an adversary.
** (core.cache_hash is the same function under its older name.) */
static int l_hash(lua_State *L) {
  size_t len;
  luaL_argexpected(L, lua_type(L, 1) == LUA_TSTRING, 1, "string");
  const char *s = lua_tolstring(L, 1, &len);
  char buf[17];
  snprintf(buf, sizeof buf, "%016" PRIx64, fnv1a64(s, len));
  lua_pushlstring(L, buf, 16);
  return 1;
}

/// Registers core.cache_* into the module table at the top of the stack.
/// The cache itself is created on first use, once per state.
void tide__open_cache(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"cache_lookup", l_lookup},
      {"cache_peek", l_peek},
      {"cache_store", l_store},
      {"cache_fail", l_fail},
      {"cache_invalidate", l_invalidate},
      {"cache_invalidate_all", l_invalidate_all},
      {"cache_ttl_ms", l_ttl},
      {"cache_stats", l_stats},
      {"cache_reset_stats", l_reset_stats},
      {"cache_hash", l_hash},
      {"hash", l_hash},
      {NULL, NULL}};
  /* Waiters carry a metatable only so that the continuation can check what it
  ** finds on its stack; they need no methods and no __gc. */
  tide__register_type(L, WAITER_MT, NULL, NULL);
  luaL_setfuncs(L, fns, 0);
}

/// Frees every entry. Waits were cancelled before this runs (the context
/// finalizer cancels every live task's wait first), so no waiter is linked;
/// registry references are left to the closing state.
void tide__cache_shutdown(tide_ctx *ctx) {
  struct tide_cache *c = ctx->cache;
  if (c == NULL) return;
  for (cache_entry *e = c->head, *next; e; e = next) {
    next = e->next;
    free(e);
  }
  free(c);
  ctx->cache = NULL;
}
