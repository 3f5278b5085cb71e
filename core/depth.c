/*
** depth.c -- spawn-depth gating for sub-agents.
**
** The depth lives on each task's own context (tide_task.depth), set once when
** the child is created from its parent's value. Nothing is ever incremented
** or decremented in a shared place, so a child that fails cannot leave the
** parent's depth changed, and parallel spawns each compute parent + 1 from
** the same parent value: none of them can slip past the limit.
*/
#include <limits.h>

#include "tide.h"

int tide__depth_next(int parent, int limit, int *out) {
  if (parent < 0 || parent == INT_MAX) return -1; /* checked: no wrap-around */
  int next = parent + 1;
  if (next > limit) return -1;
  *out = next;
  return 0;
}

/* core.spawn_nested(limit, fn, ...) -> task | nil, err
** Spawns fn as a child task one level deeper than the current task. limit
** (nil: the runtime's MAX_SPAWN_DEPTH) caps the child's depth; exceeding it
** fails with SpawnDepthExceeded before anything runs. */
static int l_spawn_nested(lua_State *L) {
  tide_ctx *ctx = tide__ctx(L);
  lua_Integer limit = luaL_optinteger(L, 1, ctx->max_spawn_depth);
  luaL_argcheck(L, limit >= 0 && limit <= INT_MAX, 1, "must be >= 0");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  tide_task *parent = tide__current(L);
  int pdepth = parent ? parent->depth : 0, depth;
  if (tide__depth_next(pdepth, (int)limit, &depth) != 0) {
    lua_pushnil(L);
    tide__push_error(L, "SpawnDepthExceeded",
                     "spawn depth %d would exceed the limit of %d", pdepth + 1,
                     (int)limit);
    lua_pushinteger(L, pdepth == INT_MAX ? pdepth : pdepth + 1);
    lua_setfield(L, -2, "depth");
    lua_pushinteger(L, limit);
    lua_setfield(L, -2, "limit");
    return 2;
  }
  tide__spawn(L, 2, lua_gettop(L) - 2, depth);
  return 1;
}

/* core.depth() -> the current task's spawn depth (0 outside any task). */
static int l_depth(lua_State *L) {
  tide_task *t = tide__current(L);
  lua_pushinteger(L, t ? t->depth : 0);
  return 1;
}

/* core.max_spawn_depth([n]) -> the runtime default (after setting it). */
static int l_max_spawn_depth(lua_State *L) {
  tide_ctx *ctx = tide__ctx(L);
  if (!lua_isnoneornil(L, 1)) {
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 0 && n <= 1000, 1, "must be between 0 and 1000");
    ctx->max_spawn_depth = (int)n;
  }
  lua_pushinteger(L, ctx->max_spawn_depth);
  return 1;
}

void tide__open_depth(lua_State *L) {
  static const luaL_Reg fns[] = {{"spawn_nested", l_spawn_nested},
                                 {"depth", l_depth},
                                 {"max_spawn_depth", l_max_spawn_depth},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
