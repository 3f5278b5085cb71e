/*
** alloc.c -- a free-list cache in front of the Lua state's allocator.
**
** A turn's round trip makes and drops a few hundred small Lua objects
** (tables, strings, closures, the tool's coroutine), and the GC frees them
** in bursts of one size. glibc keeps seven freed blocks of a size at hand;
** the rest of a burst goes down its slow paths (fast bins, the unsorted
** bin, consolidation when libcurl next asks for its buffer), which cost a
** round trip more than the Lua code that made the objects. This cache
** keeps freed small blocks in lists by size and hands them straight back.
**
** Every block still comes from the host's allocator and may go back to it
** at any time, so nothing else in the process can tell. The cache is put
** in only when the state runs on lauxlib's own allocator (realloc and free):
** then every block is malloc's, malloc_usable_size tells its room, and free
** needs no size. It is bounded (CACHE_MAX bytes), is emptied whenever the
** host's allocator fails, and takes itself out when the state closes.
** TIDE_ALLOC_CACHE=0 leaves it out.
*/
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

/* Classes follow glibc's block sizes (16 bytes apart from 24 up): class k
** holds blocks with room for at least 16 * k + 8 bytes. */
#define NCLASS 64 /* so blocks up to 1032 bytes are cached */
#define CLASS_ROOM(k) ((size_t)(k) * 16 + 8)
#define CACHE_MAX (1u << 20)

typedef struct block_cache {
  lua_Alloc prev;
  void *prev_ud;
  size_t bytes;           /* what the lists hold, counted by class room */
  void *head[NCLASS + 1]; /* head[k]: blocks of class k, linked through their first word */
} block_cache;

static void flush(block_cache *c) {
  for (int k = 0; k <= NCLASS; k++) {
    while (c->head[k]) {
      void *p = c->head[k];
      c->head[k] = *(void **)p;
      c->prev(c->prev_ud, p, CLASS_ROOM(k), 0);
    }
  }
  c->bytes = 0;
}

/* A freed block joins the class its room fills (rounded down); a request
** for n bytes takes from the smallest class with room for n: a block handed
** out is never smaller than what was asked. */
static void *cached_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  block_cache *c = ud;
  if (nsize == 0) {
    if (ptr == NULL) return NULL;
    size_t room = malloc_usable_size(ptr), k = (room - 8) / 16;
    if (room >= CLASS_ROOM(0) && k <= NCLASS && c->bytes + CLASS_ROOM(k) <= CACHE_MAX) {
      *(void **)ptr = c->head[k];
      c->head[k] = ptr;
      c->bytes += CLASS_ROOM(k);
      return NULL;
    }
    return c->prev(c->prev_ud, ptr, osize, 0);
  }
  if (ptr == NULL && nsize <= CLASS_ROOM(NCLASS)) {
    size_t k = nsize <= 8 ? 0 : (nsize - 8 + 15) / 16;
    void *p = c->head[k];
    if (p) {
      c->head[k] = *(void **)p;
      c->bytes -= CLASS_ROOM(k);
      return p;
    }
  }
  void *p = c->prev(c->prev_ud, ptr, osize, nsize);
  if (p == NULL && c->bytes > 0) { /* short of memory: give the cache back first */
    flush(c);
    p = c->prev(c->prev_ud, ptr, osize, nsize);
  }
  return p;
}

/* Runs when the state closes: the allocator goes back to what it was
** (objects freed after this finalizer go straight to it) and the cached
** blocks are freed. If something wrapped the allocator after tide did, the
** cache stays in place, as that wrapper still calls it. */
static int cache_gc(lua_State *L) {
  block_cache **slot = lua_touserdata(L, 1);
  void *ud;
  if (*slot && lua_getallocf(L, &ud) == cached_alloc && ud == *slot) {
    block_cache *c = *slot;
    lua_setallocf(L, c->prev, c->prev_ud);
    flush(c);
    free(c);
    *slot = NULL;
  }
  return 0;
}

/* core.alloc_cache() -> bytes the cache holds, or nil when it is not in
** place (for the specs). */
static int l_alloc_cache(lua_State *L) {
  void *ud;
  if (lua_getallocf(L, &ud) != cached_alloc) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushinteger(L, (lua_Integer)((block_cache *)ud)->bytes);
  return 1;
}

void tide__open_alloc(lua_State *L) {
  lua_pushcfunction(L, l_alloc_cache);
  lua_setfield(L, -2, "alloc_cache");
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  if (f == cached_alloc) return; /* loaded again into the same state */
  /* Off for memory debuggers: a block in the cache is one they cannot see
  ** freed (the sanitizer run of the specs turns it off). */
  const char *env = getenv("TIDE_ALLOC_CACHE");
  if (env && strcmp(env, "0") == 0) return;
  /* lauxlib's allocator is a static function: a throwaway state shows
  ** which one it is. */
  lua_State *probe = luaL_newstate();
  if (probe == NULL) return;
  lua_Alloc standard = lua_getallocf(probe, NULL);
  lua_close(probe);
  if (f != standard) return; /* the host brought an allocator of its own */
  block_cache *c = calloc(1, sizeof *c);
  if (c == NULL) return;
  c->prev = f;
  c->prev_ud = ud;
  block_cache **slot = lua_newuserdatauv(L, sizeof *slot, 0);
  *slot = c;
  lua_newtable(L);
  lua_pushcfunction(L, cache_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, (void *)&cached_alloc);
  lua_setallocf(L, cached_alloc, c);
}
