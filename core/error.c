/*
** error.c -- structured errors: { code = "Timeout", message = "...", ... }.
**
** Runtime failures are values, not exceptions: bindings return nil plus one of
** these tables, and the Lua layer passes them on. Codes are stable strings
** (listed in README.md); messages are for people.
*/
#include <stdarg.h>
#include <string.h>

#include "tide.h"

/* "Code: message", every byte of both (a message may quote a server's
** bytes, NULs included). */
static int error_tostring(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "code");
  lua_getfield(L, 1, "message");
  size_t cl = 0, ml = 0;
  const char *code = lua_tolstring(L, -2, &cl);
  const char *msg = lua_tolstring(L, -1, &ml);
  if (code && msg) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, code, cl);
    luaL_addstring(&b, ": ");
    luaL_addlstring(&b, msg, ml);
    luaL_pushresult(&b);
  } else if (code || msg) {
    lua_pushvalue(L, code ? -2 : -1);
  } else {
    lua_pushliteral(L, "tide error");
  }
  return 1;
}

static void push_error_mt(lua_State *L) {
  if (luaL_newmetatable(L, TIDE_ERROR_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "tide.error");
    lua_setfield(L, -2, "__name");
  }
}

/* Replaces the message string on top of the stack with the error table
** { code = code, message = that string }. */
static void wrap_message(lua_State *L, const char *code) {
  lua_createtable(L, 0, 3);
  lua_pushstring(L, code);
  lua_setfield(L, -2, "code");
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "message");
  push_error_mt(L);
  lua_setmetatable(L, -2);
  lua_remove(L, -2);
}

static void push_errorv(lua_State *L, const char *code, const char *fmt,
                        va_list ap) {
  lua_pushvfstring(L, fmt, ap);
  wrap_message(L, code);
}

void tide__push_error(lua_State *L, const char *code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  push_errorv(L, code, fmt, ap);
  va_end(ap);
}

void tide__push_error_from(lua_State *L, const char *code, const char *prefix) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, prefix);
  lua_pushvalue(L, -2); /* the message, below the buffer */
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  lua_remove(L, -2); /* the message alone */
  wrap_message(L, code);
}

void tide__push_malformed(lua_State *L, const char *body, size_t n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  push_errorv(L, "MalformedResponse", fmt, ap);
  va_end(ap);
  if (body) {
    lua_pushlstring(L, body, n);
    lua_setfield(L, -2, "body");
  }
}

void tide__push_excerpt(lua_State *L, const char *s, size_t n, size_t max) {
  if (n > max) {
    size_t j = max;
    while (j > 0) {
      unsigned char b = (unsigned char)s[j];
      if (b < 0x80 || b >= 0xC0) break;
      j--;
    }
    n = j;
  }
  lua_pushlstring(L, s, n);
}

int tide__fail(lua_State *L, const char *code, const char *fmt, ...) {
  va_list ap;
  lua_pushnil(L);
  va_start(ap, fmt);
  push_errorv(L, code, fmt, ap);
  va_end(ap);
  return 2;
}

int tide__raise(lua_State *L, const char *code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  push_errorv(L, code, fmt, ap);
  va_end(ap);
  return lua_error(L);
}

/* core.error(code, message [, fields]) -> error table; used by the Lua layer so
** that every error in tide shares one metatable. */
static int l_error(lua_State *L) {
  luaL_checkstring(L, 1);
  /* the message is the code when absent; either is kept whole (the values
  ** themselves, not C strings that would end at a NUL) */
  int msg = lua_isnoneornil(L, 2) ? 1 : (luaL_checkstring(L, 2), 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  if (lua_istable(L, 3)) {
    lua_pushvalue(L, 3);
  } else {
    lua_createtable(L, 0, 2);
  }
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "code");
  lua_pushvalue(L, msg);
  lua_setfield(L, -2, "message");
  push_error_mt(L);
  lua_setmetatable(L, -2);
  return 1;
}

/* core.is_error(v) -> true when v carries the tide.error metatable. */
static int l_is_error(lua_State *L) {
  int is = 0;
  if (lua_getmetatable(L, 1)) {
    luaL_getmetatable(L, TIDE_ERROR_MT);
    is = lua_rawequal(L, -1, -2);
  }
  lua_pushboolean(L, is);
  return 1;
}

void tide__open_error(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"error", l_error}, {"is_error", l_is_error}, {NULL, NULL}};
  push_error_mt(L);
  lua_setfield(L, -2, "error_mt");
  luaL_setfuncs(L, fns, 0);
}
