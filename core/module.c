/*
** module.c -- luaopen_tide_core: assembles the C module from its parts.
**
** Safe to run twice (busted reloads modules): all per-state objects are found
** again through the registry, and curl_global_init is guarded by libcurl's own
** reference count.
*/
#include <string.h>

#include "tide.h"

void tide__register_type(lua_State *L, const char *name, const luaL_Reg *meta,
                         const luaL_Reg *methods) {
  luaL_newmetatable(L, name);
  lua_pushlightuserdata(L, (void *)name);
  lua_rawseti(L, -2, 1);
  if (meta) luaL_setfuncs(L, meta, 0);
  if (methods) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

void *tide__testudata(lua_State *L, int idx, const char *name) {
  if (lua_type(L, idx) == LUA_TUSERDATA && lua_getmetatable(L, idx)) {
    int tagged = lua_rawgeti(L, -1, 1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == name;
    lua_pop(L, 2);
    if (tagged) return lua_touserdata(L, idx);
  }
  return luaL_testudata(L, idx, name);
}

void *tide__checkudata(lua_State *L, int idx, const char *name) {
  void *p = tide__testudata(L, idx, name);
  if (p == NULL) luaL_typeerror(L, idx, name);
  return p;
}

void *tide__state_block_if(lua_State *L, const void *key) {
  void *p = lua_rawgetp(L, LUA_REGISTRYINDEX, key) == LUA_TUSERDATA ? lua_touserdata(L, -1) : NULL;
  lua_pop(L, 1);
  return p;
}

void *tide__state_block(lua_State *L, const void *key, size_t size) {
  void *p = tide__state_block_if(L, key);
  if (p) return p;
  p = lua_newuserdatauv(L, size, 0);
  memset(p, 0, size);
  lua_rawsetp(L, LUA_REGISTRYINDEX, key);
  return p;
}

void tide__register_sink(lua_State *L, const char *name, const tide_sink *sink) {
  luaL_getmetatable(L, name);
  lua_pushlightuserdata(L, (void *)sink);
  lua_rawseti(L, -2, 2);
  lua_pop(L, 1);
}

const tide_sink *tide__sink_of(lua_State *L, int idx) {
  const tide_sink *sink = NULL;
  if (lua_type(L, idx) == LUA_TUSERDATA && lua_getmetatable(L, idx)) {
    if (lua_rawgeti(L, -1, 2) == LUA_TLIGHTUSERDATA) sink = lua_touserdata(L, -1);
    lua_pop(L, 2);
  }
  return sink;
}

const char *tide__field_str(lua_State *L, int idx, const char *k, size_t *len) {
  const char *s = NULL;
  if (lua_getfield(L, idx, k) == LUA_TSTRING) s = lua_tolstring(L, -1, len);
  lua_pop(L, 1);
  return s;
}

int tide__result_strings(lua_State *L, int idx, lua_Integer i, const char **c, size_t *cl,
                         const char **id, size_t *il, int *is_error) {
  if (lua_rawgeti(L, idx, i) != LUA_TTABLE) {
    lua_pop(L, 1);
    return 0;
  }
  int t = lua_gettop(L);
  *c = tide__field_str(L, t, "content", cl);
  *id = tide__field_str(L, t, "id", il);
  if (is_error) {
    *is_error = lua_getfield(L, t, "is_error") == LUA_TBOOLEAN && lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return *c && *id;
}

void tide__add_header(lua_State *L, const char *name, size_t nl,
                      const char *v, size_t vl) {
  luaL_Buffer b;
  char *lower = luaL_buffinitsize(L, &b, nl);
  for (size_t i = 0; i < nl; i++)
    lower[i] = (name[i] >= 'A' && name[i] <= 'Z') ? (char)(name[i] + 32) : name[i];
  luaL_pushresultsize(&b, nl); /* t, name */
  lua_pushvalue(L, -1);
  if (lua_rawget(L, -3) == LUA_TSTRING) { /* repeated */
    lua_pushliteral(L, ", ");
    lua_pushlstring(L, v, vl);
    lua_concat(L, 3);
  } else {
    lua_pop(L, 1);
    lua_pushlstring(L, v, vl);
  }
  lua_rawset(L, -3);
}

int tide__on_shutdown(tide_ctx *ctx, void (*fn)(tide_ctx *ctx)) {
  for (int i = 0; i < ctx->nshutdown_hooks; i++)
    if (ctx->shutdown_hooks[i] == fn) return 0;
  if (ctx->nshutdown_hooks >= TIDE_MAX_HOOKS) return -1;
  ctx->shutdown_hooks[ctx->nshutdown_hooks++] = fn;
  return 0;
}

static const tide_api api = {tide__ctx,          tide__pcall,        tide__add_header,
                             tide__push_error,   tide__on_shutdown,  tide__check_task,
                             tide__wait,         tide__wake,         tide__check_cancel,
                             tide__current};

/// Opens the `tide.core` module: the event loop and tasks, HTTP, SSE, JSON
/// primitives, the wire buffer, tool-call assembly, the OpenAI (chat and
/// Responses) and Anthropic wire formats, the integration cache, templates,
/// file watching and process signals. The public API is the Lua facade
/// `tide`, built on top.
__attribute__((visibility("default"))) int luaopen_tide_core(lua_State *L) {
  static void (*const parts[])(lua_State *) = {
      tide__open_error,  tide__open_loop,     tide__open_depth,
      tide__open_json,   tide__open_wire,     tide__open_http,
      tide__open_sse,    tide__open_toolcall, tide__open_openai,
      tide__open_anthropic, tide__open_responses, tide__open_cache,
      tide__open_template, tide__open_watch,  tide__open_stdio,
      tide__open_base64, tide__open_process, tide__open_signal,
      tide__open_digest, tide__open_eventstream, tide__open_file,
      tide__open_otlp, tide__open_compress};
  lua_pushlightuserdata(L, (void *)&api);
  lua_setfield(L, LUA_REGISTRYINDEX, TIDE_API_KEY);
  lua_newtable(L);
  for (size_t i = 0; i < tide__nelem(parts); i++) parts[i](L);
  lua_pushliteral(L, TIDE_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}
