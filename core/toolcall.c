/*
** toolcall.c -- streamed tool-call deltas assembled by index
** (core.tool_call_assembler, and tide_asm for the C stream parsers).
**
** A streamed reply describes each tool call in pieces: the first delta of a
** call carries its index, id and name, later ones only the index and a
** fragment of the JSON arguments, and the deltas of parallel calls may
** interleave. The assembler keeps one slot per index, sorted by index, each
** with four malloc'ed growable buffers (id, name, arguments, and the raw
** extra_content some servers attach to a call). Deltas that come without an
** index (Gemini's OpenAI endpoint) are routed by tide__asm_route.
** Everything hangs off the userdata, so a Lua error raised while a result
** table is being built leaks nothing: the collector frees the buffers
** through the shared __gc/__close function.
*/
#include <stdlib.h>
#include <string.h>

#include "tide.h"
#include "json.h"

#define ASSEMBLER_MT "tide.assembler"

/* Default cap on the bytes one reply's tool calls may hold (ids, names and
** arguments together). Real calls are a few KiB; the cap exists so that a
** broken or hostile server cannot make the assembler buffer without bound. */
#define ASSEMBLER_DEFAULT_MAX (8 * 1024 * 1024)

/* Each slot counts this much against the cap besides its bytes, so that a
** stream of empty deltas with ever new indices is bounded too. */
#define SLOT_COST 64

typedef struct assembler {
  tide_asm a;
  int failed; /* cap exceeded; the error is uservalue 1 */
  int closed;
} assembler;

/* ---------------------------------------------------------------- slots -- */

void tide__asm_free(tide_asm *a) {
  size_t n = a->n > a->kept ? a->n : a->kept;
  for (size_t i = 0; i < n; i++) {
    tide__buf_free(&a->slots[i].id);
    tide__buf_free(&a->slots[i].name);
    tide__buf_free(&a->slots[i].args);
    tide__buf_free(&a->slots[i].extra);
  }
  free(a->slots);
  a->slots = NULL;
  a->n = a->cap = a->kept = 0;
  a->total = 0;
}

void tide__asm_reset(tide_asm *a, size_t keep_max) {
  for (size_t i = 0; i < a->n; i++) {
    tide__buf_keep(&a->slots[i].id, keep_max);
    tide__buf_keep(&a->slots[i].name, keep_max);
    tide__buf_keep(&a->slots[i].args, keep_max);
    tide__buf_keep(&a->slots[i].extra, keep_max);
  }
  if (a->n > a->kept) a->kept = a->n;
  a->n = 0;
  a->total = 0;
}

/* Finds the slot for `index`; when there is none, returns NULL and sets *pos
** to where it belongs. Indices arrive in order in practice, so the common
** case (the last slot, or a new one after it) costs no search. */
static tide_asm_slot *find_slot(tide_asm *a, lua_Integer index, size_t *pos) {
  size_t lo = 0, hi = a->n;
  if (a->n > 0 && a->slots[a->n - 1].index <= index) {
    if (a->slots[a->n - 1].index == index) return &a->slots[a->n - 1];
    *pos = a->n;
    return NULL;
  }
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (a->slots[mid].index < index)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < a->n && a->slots[lo].index == index) return &a->slots[lo];
  *pos = lo;
  return NULL;
}

/* Inserts an empty slot for `index` at `pos` (from find_slot), or returns
** NULL (nothing changed) when out of memory. */
static tide_asm_slot *insert_slot(tide_asm *a, lua_Integer index, size_t pos) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 4;
    if (cap > SIZE_MAX / sizeof *a->slots) return NULL;
    tide_asm_slot *p = realloc(a->slots, cap * sizeof *p);
    if (p == NULL) return NULL;
    a->slots = p;
    a->cap = cap;
  }
  /* Slots from n to kept hold emptied buffers of an earlier reply (see
  ** tide__asm_reset): the new slot takes slot n's. */
  tide_buf id = {0}, name = {0}, args = {0}, extra = {0};
  if (a->n < a->kept) {
    id = a->slots[a->n].id;
    name = a->slots[a->n].name;
    args = a->slots[a->n].args;
    extra = a->slots[a->n].extra;
  }
  memmove(&a->slots[pos + 1], &a->slots[pos], (a->n - pos) * sizeof *a->slots);
  memset(&a->slots[pos], 0, sizeof *a->slots);
  a->slots[pos].index = index;
  a->slots[pos].id = id;
  a->slots[pos].name = name;
  a->slots[pos].args = args;
  a->slots[pos].extra = extra;
  a->n++;
  return &a->slots[pos];
}

int tide__asm_add(tide_asm *a, lua_Integer index, const char *id, size_t idl,
                  const char *name, size_t namel, const char *frag,
                  size_t fragl) {
  size_t pos = 0;
  tide_asm_slot *s = find_slot(a, index, &pos);
  size_t need = (s ? 0 : SLOT_COST);
  if (id && idl && !(s && s->has_id)) need += idl;
  if (name && namel && !(s && s->has_name)) need += namel;
  if (frag) {
    if (fragl > SIZE_MAX - need) need = SIZE_MAX; else need += fragl;
  }
  if (need > a->max - a->total) {
    tide__asm_free(a); /* the reply is unusable */
    return TIDE_ASM_TOO_LARGE;
  }
  if (s == NULL && (s = insert_slot(a, index, pos)) == NULL)
    return TIDE_ASM_NOMEM;
  a->total += need;
  if (id && idl && !s->has_id) {
    if (tide__buf_add(&s->id, id, idl) != 0) return TIDE_ASM_NOMEM;
    s->has_id = 1;
  }
  if (name && namel && !s->has_name) {
    if (tide__buf_add(&s->name, name, namel) != 0) return TIDE_ASM_NOMEM;
    s->has_name = 1;
  }
  if (frag && tide__buf_add(&s->args, frag, fragl) != 0) return TIDE_ASM_NOMEM;
  return 0;
}

/* Whether b holds exactly one JSON value (b keeps a NUL after its bytes,
** which the scanner's number parsing needs). */
static int complete_json(const tide_buf *b) {
  if (b->len == 0) return 0;
  tide_json p = {b->p, b->len, 0, 0, NULL, 0, NULL, NULL, NULL};
  tide__json_skip_ws(&p);
  if (p.i == p.n || tide__json_skip(&p) != J_OK) return 0;
  tide__json_skip_ws(&p);
  return p.i == p.n;
}

lua_Integer tide__asm_route(const tide_asm *a, const char *id, size_t idl,
                            const char *name, size_t namel) {
  if (a->n == 0) return 0;
  /* Index-less deltas continue the call that came last, which is the
  ** highest index: interleaving needs an index to be told apart. */
  const tide_asm_slot *last = &a->slots[a->n - 1];
  int fresh = 0;
  if (id && idl > 0 && last->has_id)
    fresh = last->id.len != idl || memcmp(last->id.p, id, idl) != 0;
  else if (name && namel > 0 && last->has_name)
    fresh = complete_json(&last->args);
  if (!fresh) return last->index;
  return last->index == LUA_MAXINTEGER ? last->index : last->index + 1;
}

int tide__asm_extra(tide_asm *a, lua_Integer index, const char *s, size_t n) {
  size_t pos = 0;
  tide_asm_slot *slot = find_slot(a, index, &pos);
  if (slot == NULL) return 0; /* tide__asm_add failed first */
  size_t old = slot->has_extra ? slot->extra.len : 0;
  if (n > old && n - old > a->max - a->total) {
    tide__asm_free(a);
    return TIDE_ASM_TOO_LARGE;
  }
  a->total = a->total - old + n;
  slot->extra.len = 0;
  if (tide__buf_add(&slot->extra, s, n) != 0) return TIDE_ASM_NOMEM;
  slot->has_extra = n > 0;
  return 0;
}

void tide__asm_custom(tide_asm *a, lua_Integer index) {
  size_t pos = 0;
  tide_asm_slot *slot = find_slot(a, index, &pos);
  if (slot != NULL) slot->custom = 1;
}

void tide__push_asm_too_large(lua_State *L, const tide_asm *a) {
  char cap[32];
  snprintf(cap, sizeof cap, "%zu", a->max);
  tide__push_error(L, "StreamTooLarge",
                   "tool-call deltas exceed the limit of %s bytes", cap);
}

void tide__asm_push(lua_State *L, const tide_asm *a) {
  lua_createtable(L, (int)(a->n > INT32_MAX ? 0 : a->n), 0);
  for (size_t i = 0; i < a->n; i++) {
    const tide_asm_slot *s = &a->slots[i];
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, s->index);
    lua_setfield(L, -2, "index");
    if (s->has_id) {
      lua_pushlstring(L, s->id.p, s->id.len);
      lua_setfield(L, -2, "id");
    }
    if (s->has_name) {
      lua_pushlstring(L, s->name.p, s->name.len);
      lua_setfield(L, -2, "name");
    }
    lua_pushlstring(L, s->args.p ? s->args.p : "", s->args.len);
    lua_setfield(L, -2, "arguments");
    if (s->has_extra) {
      lua_pushlstring(L, s->extra.p, s->extra.len);
      lua_setfield(L, -2, "extra_content");
    }
    if (s->custom) {
      lua_pushboolean(L, 1);
      lua_setfield(L, -2, "custom");
    }
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

static int blank(const tide_buf *b) {
  for (size_t i = 0; i < b->len; i++) {
    char c = b->p[i];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\v' && c != '\f') return 0;
  }
  return 1;
}

void tide__asm_push_finished(lua_State *L, const tide_asm *a) {
  /* A made id can clash only with an id of the server's own that starts
  ** "call_": then the ids taken go into a set (a Lua table, so that a reply
  ** of many calls costs linear time), else "call_<n>" is unique as it is. */
  int missing = 0, clashing = 0;
  for (size_t i = 0; i < a->n; i++) {
    const tide_asm_slot *s = &a->slots[i];
    if (!s->has_id || s->id.len == 0)
      missing = 1;
    else if (s->id.len >= 5 && memcmp(s->id.p, "call_", 5) == 0)
      clashing = 1;
  }
  int taken = 0;
  if (missing && clashing) {
    lua_createtable(L, 0, (int)(a->n > INT32_MAX ? 0 : a->n));
    taken = lua_gettop(L);
    for (size_t i = 0; i < a->n; i++) {
      const tide_asm_slot *s = &a->slots[i];
      if (!s->has_id || s->id.len == 0) continue;
      lua_pushlstring(L, s->id.p, s->id.len);
      lua_pushboolean(L, 1);
      lua_rawset(L, taken);
    }
  }
  lua_createtable(L, (int)(a->n > INT32_MAX ? 0 : a->n), 0);
  for (size_t i = 0; i < a->n; i++) {
    const tide_asm_slot *s = &a->slots[i];
    lua_createtable(L, 0, 3);
    if (s->has_id && s->id.len > 0) {
      lua_pushlstring(L, s->id.p, s->id.len);
    } else {
      char id[48];
      int len = snprintf(id, sizeof id, "call_%zu", i + 1);
      if (taken) {
        for (unsigned k = 1;; k++) {
          lua_pushlstring(L, id, (size_t)len);
          if (lua_rawget(L, taken) == LUA_TNIL) break;
          lua_pop(L, 1);
          len = snprintf(id, sizeof id, "call_%zu_%u", i + 1, k);
        }
        lua_pop(L, 1);
        lua_pushlstring(L, id, (size_t)len);
        lua_pushboolean(L, 1);
        lua_rawset(L, taken);
      }
      lua_pushlstring(L, id, (size_t)len);
    }
    lua_setfield(L, -2, "id");
    if (s->has_name)
      lua_pushlstring(L, s->name.p, s->name.len);
    else
      lua_pushliteral(L, "");
    lua_setfield(L, -2, "name");
    /* (a custom tool's input is text: empty is empty) */
    if (!s->custom && blank(&s->args))
      lua_pushliteral(L, "{}");
    else
      lua_pushlstring(L, s->args.p ? s->args.p : "", s->args.len);
    lua_setfield(L, -2, "arguments");
    if (s->has_extra) {
      lua_pushlstring(L, s->extra.p, s->extra.len);
      lua_setfield(L, -2, "extra_content");
    }
    if (s->custom) {
      lua_pushboolean(L, 1);
      lua_setfield(L, -2, "custom");
    }
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  if (taken) lua_remove(L, taken);
}

/* ------------------------------------------------------------- bindings -- */

static assembler *check_assembler(lua_State *L) {
  assembler *a = tide__checkudata(L, 1, ASSEMBLER_MT);
  if (a->closed) luaL_error(L, "attempt to use a closed assembler");
  return a;
}

/* An optional string argument: nil (or none) gives NULL. */
static const char *opt_piece(lua_State *L, int arg, const char *what,
                             size_t *len) {
  int t = lua_type(L, arg);
  *len = 0;
  if (t == LUA_TNONE || t == LUA_TNIL) return NULL;
  if (t != LUA_TSTRING)
    luaL_argerror(L, arg,
                  lua_pushfstring(L, "%s must be a string or nil, got %s",
                                  what, luaL_typename(L, arg)));
  return lua_tolstring(L, arg, len);
}

/* core.tool_call_assembler([max_bytes]) -> assembler */
static int l_assembler(lua_State *L) {
  lua_Integer max = ASSEMBLER_DEFAULT_MAX;
  if (!lua_isnoneornil(L, 1)) {
    luaL_argcheck(L, lua_isinteger(L, 1), 1, "max_bytes must be an integer");
    max = lua_tointeger(L, 1);
    luaL_argcheck(L, max > 0, 1, "max_bytes must be positive");
  }
  assembler *a = lua_newuserdatauv(L, sizeof *a, 1);
  memset(a, 0, sizeof *a);
  a->a.max = (lua_Unsigned)max > SIZE_MAX ? SIZE_MAX : (size_t)max;
  luaL_setmetatable(L, ASSEMBLER_MT);
  return 1;
}

/* a:add(index, id, name, fragment) -> true | nil, err
** id and name are kept when first seen (a non-empty string); fragments of one
** index are appended in the order they arrive. A nil index is routed as
** tide__asm_route says (deltas of servers that send none). */
static int l_add(lua_State *L) {
  assembler *a = check_assembler(L);
  int routed = lua_isnoneornil(L, 2);
  luaL_argcheck(L, routed || lua_isinteger(L, 2), 2, "index must be an integer or nil");
  lua_Integer index = routed ? 0 : lua_tointeger(L, 2);
  luaL_argcheck(L, index >= 0, 2, "index must be non-negative");
  size_t idl, namel, fragl;
  const char *id = opt_piece(L, 3, "id", &idl);
  const char *name = opt_piece(L, 4, "name", &namel);
  const char *frag = opt_piece(L, 5, "fragment", &fragl);
  if (routed) index = tide__asm_route(&a->a, id, idl, name, namel);
  if (a->failed) {
    lua_pushnil(L);
    lua_getiuservalue(L, 1, 1);
    return 2;
  }
  int rc = tide__asm_add(&a->a, index, id, idl, name, namel, frag, fragl);
  if (rc == TIDE_ASM_NOMEM) return luaL_error(L, "not enough memory");
  if (rc == TIDE_ASM_TOO_LARGE) {
    /* Every later add returns the same error (uservalue 1). */
    a->failed = 1;
    tide__push_asm_too_large(L, &a->a);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 1, 1);
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* a:result() -> { { index, id, name, arguments }, ... } ordered by index.
** id and name are nil when never seen; arguments is "" when no fragment came. */
static int l_result(lua_State *L) {
  assembler *a = check_assembler(L);
  if (a->failed) {
    lua_pushnil(L);
    lua_getiuservalue(L, 1, 1);
    return 2;
  }
  tide__asm_push(L, &a->a);
  return 1;
}

/* a:reset(): forgets every call (and a recorded failure); keeps the cap. */
static int l_reset(lua_State *L) {
  assembler *a = check_assembler(L);
  tide__asm_free(&a->a);
  a->failed = 0;
  lua_pushnil(L);
  lua_setiuservalue(L, 1, 1);
  return 0;
}

/* a:count() -> number of distinct indices seen. */
static int l_count(lua_State *L) {
  assembler *a = check_assembler(L);
  lua_pushinteger(L, (lua_Integer)a->a.n);
  return 1;
}

/* __gc, __close and a:close(): idempotent. */
static int l_close(lua_State *L) {
  assembler *a = tide__checkudata(L, 1, ASSEMBLER_MT);
  tide__asm_free(&a->a);
  a->closed = 1;
  return 0;
}

static int l_tostring(lua_State *L) {
  assembler *a = tide__checkudata(L, 1, ASSEMBLER_MT);
  if (a->closed)
    lua_pushliteral(L, "tide.assembler (closed)");
  else
    lua_pushfstring(L, "tide.assembler (%p)", (void *)a);
  return 1;
}

/// Registers core.tool_call_assembler into the module table at the top of
/// the stack and (re)creates the "tide.assembler" metatable.
void tide__open_toolcall(lua_State *L) {
  static const luaL_Reg meta[] = {{"__gc", l_close},
                                  {"__close", l_close},
                                  {"__tostring", l_tostring},
                                  {NULL, NULL}};
  static const luaL_Reg methods[] = {{"add", l_add},     {"result", l_result},
                                     {"reset", l_reset}, {"count", l_count},
                                     {"close", l_close}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"tool_call_assembler", l_assembler}, {NULL, NULL}};
  tide__register_type(L, ASSEMBLER_MT, meta, methods);
  luaL_setfuncs(L, fns, 0);
}
