/*
** reply.c -- the shell every C reply parser shares: the userdata a provider
** makes for one streamed reply, its Lua methods (feed, finish, close), its
** sink (what req:pump feeds in place), the failure it keeps, the spare
** parsers a state reuses, and the one parser per state and wire format that
** scans whole (non-streamed) replies.
**
** A wire format (openai.c, anthropic.c) brings a tide_reply_kind: what one
** SSE event means, how the reply is finished, how its own buffers are
** emptied and freed. Everything else is here, once, so that the two parsers
** hand text over, fail and get reused by the same rules.
**
** Memory: the parser is malloc'ed apart from its userdata and taken only
** when the first bytes come, so that a request waiting on a slow provider
** holds nothing but the small userdata; a closed userdata gives its parser
** to the state's spares, emptied, with its buffers kept for the next reply.
** Nothing raises while a parser is inconsistent: the kinds' scanners never
** raise, and Lua values are made only between events.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

/* Buffers up to this size are kept between replies; larger ones freed. */
#define REUSE_MAX 16384
/* Parsers a state keeps for new streams, of all kinds together. */
#define SPARES_MAX 64

/* The userdata of a stream. */
typedef struct reply_ud {
  tide_reply *r; /* NULL until fed, and once closed */
  const tide_reply_kind *kind;
  tide_ctx *ctx; /* whose spares it takes from and gives back to */
  size_t max;
  int closed;
  int aws; /* read as an AWS event stream (tide__reply_aws) */
} reply_ud;

/* ------------------------------------------------------------ parsers -- */

/* A parser as new: nothing held, caps of max bytes. */
static tide_reply *new_parser(const tide_reply_kind *kind, size_t max) {
  tide_reply *r = calloc(1, kind->size);
  if (r == NULL) return NULL;
  r->kind = kind;
  kind->reset(r, 0, max);
  r->sse.max = r->es.max = max;
  return r;
}

void tide__reply_tier(tide_reply *r, const char *s, size_t n) {
  if (n == 0 || n >= TIDE_TIER_MAX) return;
  memcpy(r->tier, s, n);
  r->tier_len = n;
}

void tide__reply_push_tier(lua_State *L, const tide_reply *r) {
  if (r->tier_len == 0) return;
  lua_pushlstring(L, r->tier, r->tier_len);
  lua_setfield(L, -2, "service_tier");
}

/* Frees everything a parser holds (idempotent); the struct itself stays. */
static void free_buffers(tide_reply *r) {
  tide__sse_free(&r->sse);
  tide__es_free(&r->es);
  tide__buf_free(&r->text);
  r->kind->free(r);
}

/* Empties a parser for the next reply, keeping its buffers up to
** REUSE_MAX bytes: a reply's scan then mallocs nothing in steady state. */
static void empty(tide_reply *r, size_t max) {
  tide__buf_keep(&r->sse.line, REUSE_MAX);
  tide__buf_keep(&r->sse.data, REUSE_MAX);
  tide__buf_keep(&r->sse.event, REUSE_MAX);
  tide__buf_keep(&r->sse.id, REUSE_MAX);
  r->sse.cr = r->sse.started = 0;
  r->sse.max = r->es.max = max;
  if (r->aws) tide__es_reset(&r->es, REUSE_MAX); /* (an SSE parser never touched it) */
  r->aws = 0;
  tide__buf_keep(&r->text, REUSE_MAX);
  r->tier_len = 0;
  r->failed = 0;
  r->busy = 0;
  r->kind->reset(r, REUSE_MAX, max);
}

static void free_spares(tide_ctx *ctx) {
  for (tide_reply *r = ctx->spare_replies, *next; r; r = next) {
    next = r->next_spare;
    free_buffers(r);
    free(r);
  }
  ctx->spare_replies = NULL;
  ctx->nspare_replies = 0;
}

/* Takes a closed stream's parser: kept among the state's spares, emptied,
** or freed when there are enough (or the state is closing). */
static void park(tide_ctx *ctx, tide_reply *r) {
  if (ctx->closing || ctx->loop == NULL || ctx->nspare_replies >= SPARES_MAX ||
      tide__on_shutdown(ctx, free_spares) != 0) {
    free_buffers(r);
    free(r);
    return;
  }
  empty(r, r->sse.max);
  r->next_spare = ctx->spare_replies;
  ctx->spare_replies = r;
  ctx->nspare_replies++;
}

/* The stream's parser: a spare one of its kind, or new. */
static tide_reply *parser_of(lua_State *L, reply_ud *u) {
  if (u->r) return u->r;
  tide_ctx *ctx = u->ctx;
  tide_reply *r = NULL;
  for (tide_reply **at = &ctx->spare_replies; *at; at = &(*at)->next_spare) {
    if ((*at)->kind == u->kind) {
      r = *at;
      *at = r->next_spare;
      ctx->nspare_replies--;
      r->next_spare = NULL;
      r->sse.max = r->es.max = u->max;
      u->kind->reset(r, REUSE_MAX, u->max);
      break;
    }
  }
  if (r == NULL && (r = new_parser(u->kind, u->max)) == NULL) luaL_error(L, "not enough memory");
  r->aws = u->aws;
  u->r = r;
  return r;
}

/* --------------------------------------------------------------- deltas -- */

int tide__reply_text(tide_reply_feed *fc, const char *s, size_t n) {
  if (n == 0) return 0;
  if (tide__buf_add(&fc->r->text, s, n) != 0) return fc->nomem = 1, -1;
  if (fc->out) { /* may raise: every buffer is consistent here */
    lua_pushlstring(fc->L, s, n);
    lua_rawseti(fc->L, fc->out, ++fc->nout);
  }
  return 0;
}

void tide__reply_reasoning(tide_reply_feed *fc, const char *s, size_t n) {
  if (n == 0 || !fc->rout) return;
  lua_pushlstring(fc->L, s, n); /* may raise: every buffer is consistent here */
  lua_rawseti(fc->L, fc->rout, ++fc->nrout);
}

void tide__reply_tool_input(tide_reply_feed *fc, lua_Integer index, const char *id, size_t idl,
                            const char *name, size_t namel, const char *s, size_t n) {
  if (!fc->tout || (n == 0 && idl == 0 && namel == 0)) return;
  lua_State *L = fc->L; /* may raise: every buffer is consistent here */
  lua_pushinteger(L, index);
  lua_rawseti(L, fc->tout, ++fc->ntout);
  if (idl > 0) lua_pushlstring(L, id, idl); else lua_pushboolean(L, 0);
  lua_rawseti(L, fc->tout, ++fc->ntout);
  if (namel > 0) lua_pushlstring(L, name, namel); else lua_pushboolean(L, 0);
  lua_rawseti(L, fc->tout, ++fc->ntout);
  lua_pushlstring(L, n > 0 ? s : "", n);
  lua_rawseti(L, fc->tout, ++fc->ntout);
}

/* ------------------------------------------------------------- feeding -- */

/* The SSE callback: one event, for the kind to apply. Stops the feed
** (returns 1) with an error on the Lua stack, or when out of memory. */
static int on_event(void *ud, const tide_sse_event *e) {
  tide_reply_feed *fc = ud;
  if (fc->r->kind->event(fc, e)) return 1;
  return fc->nomem;
}

/* Records the error at the top of the stack as the failure of the stream at
** idx (every later call returns it) and frees what the parser no longer
** needs. */
static void set_failed(lua_State *L, int idx, tide_reply *r) {
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, idx, 1);
  r->failed = 1;
  tide__sse_free(&r->sse);
  tide__es_free(&r->es);
  r->kind->free(r);
}

/* Feeds n bytes of SSE (or of an AWS event stream) to r, the parser of the
** stream at idx. Returns 0, or
** 1 with the error at the top of the stack and the stream failed. */
static int feed_bytes(lua_State *L, int idx, tide_reply *r, tide_reply_feed *fc,
                      const char *s, size_t n) {
  int rc = r->aws ? tide__es_feed(&r->es, s, n, on_event, fc) : tide__sse_feed(&r->sse, s, n, on_event, fc);
  if (rc == TIDE_SSE_NOMEM || fc->nomem) return luaL_error(L, "not enough memory");
  if (rc == TIDE_ES_BAD) tide__push_error(L, "MalformedResponse", "invalid AWS event stream: %s", r->es.why);
  if (rc == TIDE_SSE_EVENT_BIG && r->aws) {
    char cap[32];
    snprintf(cap, sizeof cap, "%zu", r->es.max);
    tide__push_error(L, "MalformedResponse", "invalid AWS event stream: a frame exceeds the limit of %s bytes", cap);
    lua_pushliteral(L, "StreamTooLarge");
    lua_setfield(L, -2, "cause");
  } else if (rc == TIDE_SSE_LINE_BIG || rc == TIDE_SSE_EVENT_BIG) {
    /* As core.sse_parser reports it to a Lua stream. */
    char cap[32];
    snprintf(cap, sizeof cap, "%zu", r->sse.max);
    tide__push_error(L, "MalformedResponse",
                     "invalid event stream: SSE %s exceeds the limit of %s bytes",
                     rc == TIDE_SSE_LINE_BIG ? "line" : "event", cap);
    lua_pushliteral(L, "StreamTooLarge");
    lua_setfield(L, -2, "cause");
  }
  if (rc == 0) return 0;
  set_failed(L, idx, r); /* the error is at the top */
  return 1;
}

static reply_ud *check_open(lua_State *L, const tide_reply_kind *kind) {
  reply_ud *u = tide__checkudata(L, 1, kind->name);
  if (u->closed) luaL_error(L, "attempt to use a closed %s", kind->what);
  return u;
}

/* The stream's sink (see tide_sink): what req:pump feeds in place. */
static int sink_feed(lua_State *L, int idx, const char *s, size_t n) {
  reply_ud *u = lua_touserdata(L, idx); /* the sink is found through its metatable */
  if (u->closed) luaL_error(L, "attempt to use a closed %s", u->kind->what);
  tide_reply *r = parser_of(L, u);
  if (r->failed) {
    lua_getiuservalue(L, idx, 1);
    return 1;
  }
  tide_reply_feed fc = {L, r, 0, 0, 0, 0, 0, 0, 0};
  return feed_bytes(L, idx, r, &fc, s, n);
}

/* s:feed(chunk [, out [, rout [, tout]]]) -> delta_text | nil  or  nil, err [, delta_text]
** delta_text joins the text deltas of this chunk (nil when there were none);
** on failure it is the text that came before the failing event. With a table
** `out`, the deltas are stored one per event in out[1..n] instead, and feed
** returns n, or nil, err, n: callers that hand text over event by event keep
** the boundaries, with no table per chunk. With out = false, no text is
** handed back at all (nobody listens; finish still has all of it). With a
** table `rout`, reasoning deltas are appended to it after its last element
** (the caller empties it); without one, none is made into a string. With a
** table `tout`, tool-call input goes there the same way, four values a
** piece (tide__reply_tool_input). */
static int l_feed(lua_State *L) {
  const tide_reply_kind *kind = lua_touserdata(L, lua_upvalueindex(1));
  reply_ud *u = check_open(L, kind);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  int quiet = lua_isboolean(L, 3) && !lua_toboolean(L, 3);
  int has_out = !quiet && !lua_isnoneornil(L, 3);
  if (has_out) luaL_checktype(L, 3, LUA_TTABLE);
  int has_rout = !lua_isnoneornil(L, 4);
  if (has_rout) luaL_checktype(L, 4, LUA_TTABLE);
  int has_tout = !lua_isnoneornil(L, 5);
  if (has_tout) luaL_checktype(L, 5, LUA_TTABLE);
  tide_reply *r = parser_of(L, u);
  if (r->failed) {
    lua_pushnil(L);
    lua_getiuservalue(L, 1, 1);
    if (has_out) {
      lua_pushinteger(L, 0);
      return 3;
    }
    return 2;
  }
  lua_settop(L, 5);
  size_t start = r->text.len;
  tide_reply_feed fc = {L, r, 0, has_out ? 3 : 0, 0, has_rout ? 4 : 0,
                        has_rout ? (lua_Integer)lua_rawlen(L, 4) : 0, has_tout ? 5 : 0,
                        has_tout ? (lua_Integer)lua_rawlen(L, 5) : 0};
  if (feed_bytes(L, 1, r, &fc, s, n)) {
    lua_pushnil(L);
    lua_insert(L, -2);
    if (has_out) {
      lua_pushinteger(L, fc.nout);
      return 3;
    }
    if (!quiet && r->text.len > start) {
      lua_pushlstring(L, r->text.p + start, r->text.len - start);
      return 3;
    }
    return 2;
  }
  if (has_out)
    lua_pushinteger(L, fc.nout);
  else if (!quiet && r->text.len > start)
    lua_pushlstring(L, r->text.p + start, r->text.len - start);
  else
    lua_pushnil(L);
  return 1;
}

/* s:finish() -> reply | nil, err: the kind's reply once the stream ended. */
static int l_finish(lua_State *L) {
  const tide_reply_kind *kind = lua_touserdata(L, lua_upvalueindex(1));
  tide_reply *r = parser_of(L, check_open(L, kind));
  if (r->failed) {
    lua_pushnil(L);
    lua_getiuservalue(L, 1, 1);
    return 2;
  }
  tide__sse_finish(&r->sse); /* an unterminated tail is the kind's to judge */
  r->es.frame.len = 0;       /* (as is an unfinished frame) */
  return kind->finish(L, r);
}

/* __gc, __close and s:close(): idempotent. */
static int l_close(lua_State *L) {
  const tide_reply_kind *kind = lua_touserdata(L, lua_upvalueindex(1));
  reply_ud *u = tide__checkudata(L, 1, kind->name);
  tide_reply *r = u->r;
  u->closed = 1;
  u->r = NULL;
  if (r) park(u->ctx, r);
  return 0;
}

static int l_tostring(lua_State *L) {
  const tide_reply_kind *kind = lua_touserdata(L, lua_upvalueindex(1));
  reply_ud *u = tide__checkudata(L, 1, kind->name);
  if (u->closed)
    lua_pushfstring(L, "%s (closed)", kind->name);
  else
    lua_pushfstring(L, "%s (%p)", kind->name, (void *)u);
  return 1;
}

/* ------------------------------------------------------------ the API -- */

size_t tide__check_max(lua_State *L, int arg, size_t def) {
  if (lua_isnoneornil(L, arg)) return def;
  luaL_argcheck(L, lua_isinteger(L, arg), arg, "max_bytes must be an integer");
  lua_Integer max = lua_tointeger(L, arg);
  luaL_argcheck(L, max > 0, arg, "max_bytes must be positive");
  return (lua_Unsigned)max > SIZE_MAX ? SIZE_MAX : (size_t)max;
}

void tide__reply_new(lua_State *L, const tide_reply_kind *kind, size_t max) {
  tide_ctx *ctx = tide__ctx(L);
  reply_ud *u = lua_newuserdatauv(L, sizeof *u, 1);
  u->r = NULL;
  u->kind = kind;
  u->ctx = ctx;
  u->max = max;
  u->closed = 0;
  u->aws = 0;
  luaL_setmetatable(L, kind->name);
}

void tide__reply_aws(lua_State *L) {
  reply_ud *u = lua_touserdata(L, -1);
  u->aws = 1;
}

tide_reply *tide__reply_whole(lua_State *L, const tide_reply_kind *kind, size_t max) {
  /* One parser per state and kind serves every call (a scan never yields,
  ** and no Lua runs during one): no userdata and no finalizer per reply.
  ** It hangs off a userdata in the registry, so __gc frees it should a call
  ** raise; a call that raised left it busy, and it is emptied then. */
  tide_reply *r;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, kind) == LUA_TUSERDATA) {
    r = parser_of(L, lua_touserdata(L, -1));
    if (r->busy) empty(r, max);
    r->sse.max = max;
    kind->reset(r, REUSE_MAX, max);
  } else {
    lua_pop(L, 1);
    tide__reply_new(L, kind, max);
    r = parser_of(L, lua_touserdata(L, -1));
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, kind);
  }
  lua_pop(L, 1);
  r->busy = 1;
  return r;
}

void tide__reply_whole_done(tide_reply *r) {
  empty(r, r->sse.max);
}

void tide__reply_register(lua_State *L, const tide_reply_kind *kind) {
  static const luaL_Reg meta[] = {{"__gc", l_close}, {"__close", l_close},
                                  {"__tostring", l_tostring}, {NULL, NULL}};
  static const luaL_Reg methods[] = {
      {"feed", l_feed}, {"finish", l_finish}, {"close", l_close}, {NULL, NULL}};
  static const tide_sink sink = {sink_feed};
  tide__register_type(L, kind->name, NULL, NULL);
  luaL_getmetatable(L, kind->name);
  lua_pushlightuserdata(L, (void *)kind);
  luaL_setfuncs(L, meta, 1);
  lua_newtable(L);
  lua_pushlightuserdata(L, (void *)kind);
  luaL_setfuncs(L, methods, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  tide__register_sink(L, kind->name, &sink);
}
