/*
** turn.c -- the tool round of a turn, in C: the step a tool loop repeats
** after every response that calls tools.
**
** A round appends the assistant message, runs its calls as tasks and
** appends their results. In Lua that is some 250 VM instructions and thirty
** function calls per round. Here it is one call from the turn loop
** (session.lua), for the usual case: native calls to
** visible tools with JSON-object arguments, a history in the OpenAI wire
** shape, no callbacks, event sink or budget to report to. Anything else the
** round declines before it changes anything, and the Lua loop does it.
**
** What is Lua stays Lua: the tool worker (session.lua's tool_worker, run as
** the call's task, exactly as the Lua loop runs it), lua-cjson's decoder for
** the arguments (the integers put back as json.decode does) and the
** transcript's record function. A call that waits, or
** a round of several calls, goes back to the Lua loop for its joins, with
** the assistant message appended and the tasks started.
**
** The same two encoders serve provider.openai's encode_message, so that the
** bytes of a message never depend on which of the two built it.
*/
#include <math.h>
#include <string.h>

#include "tide.h"

/* The fields of a round table (built once a turn by session.lua's
** _turn_body): integer keys, read with lua_rawgeti. */
enum {
  R_SELF = 1,     /* the session (its surface's map says which tools are visible) */
  R_MESSAGES,     /* self.messages */
  R_WIRE,         /* self.wire (a core.wire()) */
  R_COUNTERS,     /* self.counters */
  R_WORKER,       /* tool_worker(self, tool, args, call, opts, t0, sink, depth) */
  R_OPTS,         /* the turn's options */
  R_DEPTH,        /* the turn's spawn depth */
  R_TURN,         /* the turn's context (pending, tasks) */
  R_DECODE,       /* cjson.safe's decode (json.decode without its integers) */
  R_RECORD,       /* record(self, msg): the transcript, if the session has one */
  R_TIMEOUT,      /* the session's default tool timeout (ms) */
  R_UNMADE        /* self.unmade: messages kept as parts, made on reading */
};

/* The field names the round reads and writes, interned once: every function
** here has them as upvalues, so that a field costs a raw lookup of a string
** Lua already holds, not the hashing of a C string (lua_getfield). Fields
** are read raw: the tables are the session's own, plain ones. */
#define KEYS(X)                                                                \
  X(K_ARGUMENTS, "arguments") X(K_NAME, "name") X(K_ID, "id")                 \
  X(K_CONTENT, "content") X(K_MALFORMED, "malformed") X(K_SURFACE, "surface") \
  X(K_MAP, "map") X(K_NENCODED, "nencoded") X(K_WRITER, "writer")             \
  X(K_ENCODED, "prompt_bytes_encoded") X(K_TOOL_CALLS, "tool_calls")          \
  X(K_PENDING, "pending") X(K_TEXTUAL, "textual") X(K_TASKS, "tasks")         \
  X(K_TIMEOUT, "timeout_ms") X(K_ROLE, "role") X(K_RESULTS, "results")        \
  X(K_ASSISTANT, "assistant") X(K_TOOL, "tool") X(K_IS_ERROR, "is_error")
#define KEY_ENUM(k, s) k,
#define KEY_NAME(k, s) s,
enum { KEYS(KEY_ENUM) NKEYS };
static const char *const key_names[] = {KEYS(KEY_NAME)};

#define KEY(k) lua_upvalueindex((k) + 1)

/* Pushes t[k] (t at idx) and returns its type. */
static int get(lua_State *L, int idx, int k) {
  lua_pushvalue(L, KEY(k));
  return lua_rawget(L, idx);
}

/* t[k] = the value at the top of the stack (popped); t at idx. */
static void set(lua_State *L, int idx, int k) {
  lua_pushvalue(L, KEY(k));
  lua_insert(L, -2);
  lua_rawset(L, idx);
}

/* ------------------------------------------------------------ encoding -- */

/* The string field k of the table at idx, or NULL when it is not a string.
** The value is popped: the table keeps the string alive, and the bytes stay
** where they are while it does. */
static const char *field_str(lua_State *L, int idx, int k, size_t *len) {
  const char *s = NULL;
  if (get(L, idx, k) == LUA_TSTRING) s = lua_tolstring(L, -1, len);
  lua_pop(L, 1);
  return s;
}

static const char CALL_OPEN[] = "{\"function\":{\"arguments\":";
static const char CALL_NAME[] = ",\"name\":";
static const char CALL_ID[] = "},\"id\":";
static const char CALL_CLOSE[] = ",\"type\":\"function\"}";
static const char ASSISTANT_OPEN[] = "{\"content\":";
static const char ASSISTANT_CALLS[] = ",\"role\":\"assistant\",\"tool_calls\":[";
static const char RESULT_OPEN[] = "{\"content\":";
static const char RESULT_ID[] = ",\"role\":\"tool\",\"tool_call_id\":";

#define LIT(s) (sizeof(s) - 1)

/* Appends s (n bytes) to the buffer at out + *k. */
static void put(char *out, size_t *k, const char *s, size_t n) {
  memcpy(out + *k, s, n);
  *k += n;
}

static void put_quoted(char *out, size_t *k, const char *s, size_t n) {
  *k += tide__json_write_quoted(out + *k, (const unsigned char *)s, n);
}

/* The pieces of result i of the list at idx (i = 0: of the result at idx
** itself); 0 when one is not a string. */
static int result_pieces(lua_State *L, int idx, lua_Integer i, const char **c,
                         size_t *cl, const char **id, size_t *il) {
  int type;
  if (i == 0) {
    lua_pushvalue(L, idx);
    type = lua_type(L, -1);
  } else {
    type = lua_rawgeti(L, idx, i);
  }
  if (type != LUA_TTABLE) {
    lua_pop(L, 1);
    return 0;
  }
  int t = lua_gettop(L);
  *c = field_str(L, t, K_CONTENT, cl);
  *id = field_str(L, t, K_ID, il);
  lua_pop(L, 1);
  return *c && *id;
}

/* Where an encoding of `total` bytes is written: straight into the wire w,
** or (w NULL) a Lua buffer b whose string encoding_end pushes. */
static char *encoding_begin(lua_State *L, tide_wire *w, luaL_Buffer *b, size_t total) {
  char *out = w ? tide__wire_reserve(w, total) : luaL_buffinitsize(L, b, total);
  if (out == NULL) luaL_error(L, "not enough memory");
  return out;
}

/* Ends an encoding of k bytes begun by encoding_begin: adds it to w (its
** size in *size), or pushes it as a string. */
static void encoding_end(tide_wire *w, luaL_Buffer *b, size_t k, size_t *size) {
  if (w) {
    tide__wire_commit(w, k);
    *size = k;
  } else {
    luaL_pushresultsize(b, k);
  }
}

/* A call's three strings, read once (the round reads them checking the
** calls, and hands them to the encoder). The call tables keep them alive. */
typedef struct call_strings {
  const char *a, *nm, *id;
  size_t al, nl, il;
} call_strings;

/* The round hands over the strings of up to this many calls. */
#define ROUND_STRINGS 8

/* Call i's strings: from `known` (the round's, for the first ROUND_STRINGS
** calls) or read from the calls list at callsidx; 0 when one is not a
** string. */
static int call_strings_of(lua_State *L, int callsidx, lua_Integer i, const call_strings *known,
                           call_strings *c) {
  if (known && i <= ROUND_STRINGS) {
    *c = known[i - 1];
    return 1;
  }
  if (lua_rawgeti(L, callsidx, i) != LUA_TTABLE) {
    lua_pop(L, 1);
    return 0;
  }
  int t = lua_gettop(L);
  c->a = field_str(L, t, K_ARGUMENTS, &c->al);
  c->nm = field_str(L, t, K_NAME, &c->nl);
  c->id = field_str(L, t, K_ID, &c->il);
  lua_pop(L, 1);
  return c->a && c->nm && c->id;
}

/* Pushes the wire encoding of an assistant message with content (nil or a
** string; "" counts as none) and the calls at callsidx, as
** provider.openai encodes it: keys sorted, content null without text,
** arguments as a JSON string. Returns 0 (pushing nothing) when a call is not
** a table of string id, name and arguments, or has no calls. Two passes over
** the calls: the first sizes the string, the second writes it. With w, the
** encoding goes straight into that wire (nothing pushed) and *size gets its
** bytes; nothing is added to w unless the whole message encodes. With
** `known` (the round's), the calls' strings are not read again. */
static int assistant_wire(lua_State *L, const char *text, size_t tl, int callsidx,
                          const call_strings *known, tide_wire *w, size_t *size) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, callsidx);
  if (n < 1) return 0;
  size_t total = LIT(ASSISTANT_OPEN) + LIT(ASSISTANT_CALLS) + 2;
  total += tl > 0 ? tide__json_quoted_size((const unsigned char *)text, tl) : 4;
  for (lua_Integer i = 1; i <= n; i++) {
    call_strings c;
    if (!call_strings_of(L, callsidx, i, known, &c)) return 0;
    total += (i > 1) + LIT(CALL_OPEN) + LIT(CALL_NAME) + LIT(CALL_ID) + LIT(CALL_CLOSE) +
             tide__json_quoted_size((const unsigned char *)c.a, c.al) +
             tide__json_quoted_size((const unsigned char *)c.nm, c.nl) +
             tide__json_quoted_size((const unsigned char *)c.id, c.il);
  }
  luaL_Buffer b;
  char *out = encoding_begin(L, w, &b, total);
  size_t k = 0;
  put(out, &k, ASSISTANT_OPEN, LIT(ASSISTANT_OPEN));
  if (tl > 0)
    put_quoted(out, &k, text, tl);
  else
    put(out, &k, "null", 4);
  put(out, &k, ASSISTANT_CALLS, LIT(ASSISTANT_CALLS));
  for (lua_Integer i = 1; i <= n; i++) {
    call_strings c;
    call_strings_of(L, callsidx, i, known, &c); /* checked above */
    if (i > 1) out[k++] = ',';
    put(out, &k, CALL_OPEN, LIT(CALL_OPEN));
    put_quoted(out, &k, c.a, c.al);
    put(out, &k, CALL_NAME, LIT(CALL_NAME));
    put_quoted(out, &k, c.nm, c.nl);
    put(out, &k, CALL_ID, LIT(CALL_ID));
    put_quoted(out, &k, c.id, c.il);
    put(out, &k, CALL_CLOSE, LIT(CALL_CLOSE));
  }
  out[k++] = ']';
  out[k++] = '}';
  encoding_end(w, &b, k, size);
  return 1;
}

/* The bytes one result element takes, and writing it at out + *k. */
static size_t result_size(const char *c, size_t cl, const char *id, size_t il) {
  return LIT(RESULT_OPEN) + LIT(RESULT_ID) + 1 + tide__json_quoted_size((const unsigned char *)c, cl) +
         tide__json_quoted_size((const unsigned char *)id, il);
}

static void put_result(char *out, size_t *k, const char *c, size_t cl, const char *id, size_t il) {
  put(out, k, RESULT_OPEN, LIT(RESULT_OPEN));
  put_quoted(out, k, c, cl);
  put(out, k, RESULT_ID, LIT(RESULT_ID));
  put_quoted(out, k, id, il);
  out[(*k)++] = '}';
}

/* Pushes the wire encoding of the tool results at idx (with `one`, of the
** one result at idx): one role "tool" element per result, comma-joined.
** Returns 0 (pushing nothing) when a result is not a table of string id and
** content, or there is none. With w, as assistant_wire. */
static int results_wire(lua_State *L, int idx, int one, tide_wire *w, size_t *size) {
  lua_Integer n = one ? 1 : (lua_Integer)lua_rawlen(L, idx);
  if (n < 1) return 0;
  size_t total = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    const char *c = NULL, *id = NULL;
    size_t cl = 0, il = 0;
    if (!result_pieces(L, idx, one ? 0 : i, &c, &cl, &id, &il)) return 0;
    total += (i > 1) + result_size(c, cl, id, il);
  }
  luaL_Buffer b;
  char *out = encoding_begin(L, w, &b, total);
  size_t k = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    const char *c = NULL, *id = NULL;
    size_t cl = 0, il = 0;
    result_pieces(L, idx, one ? 0 : i, &c, &cl, &id, &il); /* checked above */
    if (i > 1) out[k++] = ',';
    put_result(out, &k, c, cl, id, il);
  }
  encoding_end(w, &b, k, size);
  return 1;
}

/* Writes into w the one result element of the call with id `id` whose plain
** result is the string at textidx (what a tool task returns when nobody
** hears of its result: see session.lua's tool_worker). */
static void text_result_wire(lua_State *L, const char *id, size_t il, int textidx, tide_wire *w,
                             size_t *size) {
  size_t cl;
  const char *c = lua_tolstring(L, textidx, &cl);
  luaL_Buffer b;
  char *out = encoding_begin(L, w, &b, result_size(c, cl, id, il));
  size_t k = 0;
  put_result(out, &k, c, cl, id, il);
  encoding_end(w, &b, k, size);
}

/* core.openai_assistant_wire(content, calls) -> string | nil
** The assistant message with tool calls, as provider.openai sends it; nil
** when a call is not a plain table of string id, name and arguments (the
** provider makes it one and asks again). */
static int l_assistant_wire(lua_State *L) {
  size_t tl = 0;
  const char *text = lua_isnil(L, 1) ? "" : luaL_checklstring(L, 1, &tl);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!assistant_wire(L, text, tl, 2, NULL, NULL, NULL)) lua_pushnil(L);
  return 1;
}

/* core.openai_results_wire(results) -> string | nil
** A tool message's results, as provider.openai sends them; nil when a result
** is not a plain table of string id and content. */
static int l_results_wire(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  if (!results_wire(L, 1, 0, NULL, NULL)) lua_pushnil(L);
  return 1;
}

/* ------------------------------------------------------------ integers -- */

/* lua-cjson 2.1.0 decodes every number as a float; JSON has no such
** distinction, and tool handlers expect {"n": 3} to give the integer 3. */
#define INTEGERS_MAX_DEPTH 200
#define TWO_53 9007199254740992.0

/* Turns every integral float in the table at idx (at any depth, up to the
** decoder's own depth limit) into an integer, in place. */
static void integers(lua_State *L, int idx, int depth) {
  if (depth > INTEGERS_MAX_DEPTH) return;
  luaL_checkstack(L, 4, "too many nested tables");
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int t = lua_type(L, -1);
    if (t == LUA_TNUMBER && !lua_isinteger(L, -1)) {
      lua_Number x = lua_tonumber(L, -1);
      if (x == floor(x) && x > -TWO_53 && x < TWO_53) {
        lua_pushvalue(L, -2);
        lua_pushinteger(L, (lua_Integer)x);
        lua_rawset(L, idx); /* an existing key: the traversal goes on */
      }
    } else if (t == LUA_TTABLE) {
      integers(L, lua_gettop(L), depth + 1);
    }
    lua_pop(L, 1);
  }
}

/* core.json_integers(t) -> t: json.integers (see json.lua). */
static int l_json_integers(lua_State *L) {
  if (lua_type(L, 1) == LUA_TTABLE) integers(L, 1, 0);
  lua_settop(L, 1);
  return 1;
}

/* ---------------------------------------------------------------- round -- */

static lua_Integer get_int(lua_State *L, int idx, int k) {
  get(L, idx, k);
  lua_Integer v = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

static void add_int(lua_State *L, int idx, int k, lua_Integer d) {
  lua_Integer v = get_int(L, idx, k);
  lua_pushinteger(L, v + d);
  set(L, idx, k);
}

/* The session's wire (round[R_WIRE]), or NULL when it is not a core.wire()
** (the round is then the Lua loop's). */
static tide_wire *round_wire(lua_State *L, int round) {
  lua_rawgeti(L, round, R_WIRE);
  tide_wire *w = tide__to_wire(L, -1);
  lua_pop(L, 1); /* the session holds it */
  return w;
}

/* The messages of the history so far: made ones and unmade ones. */
static lua_Integer history_length(lua_State *L, int round) {
  lua_rawgeti(L, round, R_MESSAGES);
  lua_rawgeti(L, round, R_UNMADE);
  lua_Integer n = (lua_Integer)lua_rawlen(L, -2) + (lua_Integer)lua_rawlen(L, -1) / 3;
  lua_pop(L, 2);
  return n;
}

/* Pushes the result table of the call at callidx whose plain result is the
** string at textidx: { id, name, content, is_error = false }. */
static void push_text_result(lua_State *L, int callidx, int textidx) {
  lua_createtable(L, 0, 4);
  int t = lua_gettop(L);
  get(L, callidx, K_ID);
  set(L, t, K_ID);
  get(L, callidx, K_NAME);
  set(L, t, K_NAME);
  lua_pushvalue(L, textidx);
  set(L, t, K_CONTENT);
  lua_pushboolean(L, 0);
  set(L, t, K_IS_ERROR);
}

/* Appends a message to the history; its encoding, `size` bytes, is in the
** wire already. A session without a transcript keeps it as its parts, three
** slots of self.unmade: the role (K_ASSISTANT or K_TOOL), then the content
** at a (false for none) and the calls at b; or, for the tool message of a
** lone call (a C round runs one), false and its result table at b (a is 0),
** or the call at a and its plain result's text at b. session.lua makes the
** message tables from them when the history is next read: most sessions'
** tool rounds never build them. With a transcript the table is made here,
** as the record needs it. */
static void append(lua_State *L, int round, size_t size, int role, int a, int b) {
  lua_rawgeti(L, round, R_SELF);
  int self = lua_gettop(L);
  /* the round began with every message encoded: nencoded counts them all */
  lua_Integer n = get_int(L, self, K_NENCODED) + 1;
  lua_rawgeti(L, round, R_COUNTERS);
  add_int(L, lua_gettop(L), K_ENCODED, (lua_Integer)size);
  lua_pushinteger(L, n);
  set(L, self, K_NENCODED);
  lua_settop(L, self);
  if (get(L, self, K_WRITER) == LUA_TNIL) {
    lua_rawgeti(L, round, R_UNMADE);
    lua_Integer u = (lua_Integer)lua_rawlen(L, -1);
    lua_pushvalue(L, KEY(role));
    lua_rawseti(L, -2, u + 1);
    if (a && !lua_isnil(L, a))
      lua_pushvalue(L, a);
    else
      lua_pushboolean(L, 0);
    lua_rawseti(L, -2, u + 2);
    lua_pushvalue(L, b);
    lua_rawseti(L, -2, u + 3);
    lua_settop(L, self - 1);
    return;
  }
  lua_settop(L, self);
  lua_createtable(L, 0, 3);
  int msg = lua_gettop(L);
  lua_pushvalue(L, KEY(role));
  set(L, msg, K_ROLE);
  if (role == K_ASSISTANT) {
    lua_pushvalue(L, a);
    set(L, msg, K_CONTENT);
    lua_pushvalue(L, b);
    set(L, msg, K_TOOL_CALLS);
  } else { /* a C round's tool message answers its lone call */
    lua_createtable(L, 1, 0);
    if (a) {
      push_text_result(L, a, b);
    } else {
      lua_pushvalue(L, b);
    }
    lua_rawseti(L, -2, 1);
    set(L, msg, K_RESULTS);
  }
  lua_rawgeti(L, round, R_MESSAGES);
  lua_pushvalue(L, msg);
  lua_rawseti(L, -2, n); /* no unmade messages: a transcript's session has none */
  lua_rawgeti(L, round, R_RECORD);
  lua_pushvalue(L, self);
  lua_pushvalue(L, msg);
  lua_call(L, 2, 0);
  lua_settop(L, self - 1);
}

/* core.tool_round(round, calls, text) -> true | "joins", running |
**   "results", results | false
** One round of a turn's tool loop (see the top of this file). false: the
** round is not one for C, and nothing was done. true: the assistant message,
** the calls' results and their encodings are appended. "joins": the
** assistant message is appended and the tasks started; running[3i-2 .. 3i]
** is call i's task, start (hrtime) and timeout (ms), for the Lua loop to
** join. "results": the calls ran, and results is theirs, for the Lua loop to
** append (a result C does not encode). */
static int l_tool_round(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TTABLE);
  size_t tl = 0;
  const char *text = lua_type(L, 3) == LUA_TSTRING ? lua_tolstring(L, 3, &tl) : NULL;
  if (text == NULL && !lua_isnoneornil(L, 3)) return lua_pushboolean(L, 0), 1;
  lua_settop(L, 3);
  tide_task *caller = tide__current(L);
  tide_wire *wire = round_wire(L, 1);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
  /* Five stack slots a call (a reply of more calls is the Lua loop's). */
  if (caller == NULL || wire == NULL || n < 1 || n > 100000 ||
      !lua_checkstack(L, (int)(5 * n + 16)))
    return lua_pushboolean(L, 0), 1;

  /* 1. Check every call, nothing changed yet: the history fully encoded, a
  ** visible tool, arguments that decode to an object. The session's tool
  ** map stays at 4; tools and decoded arguments go on the stack at
  ** 5 .. 4 + 2n. */
  lua_rawgeti(L, 1, R_SELF);
  int encoded = get_int(L, 4, K_NENCODED) == history_length(L, 1);
  if (!encoded || get(L, 4, K_SURFACE) != LUA_TTABLE || get(L, 5, K_MAP) != LUA_TTABLE)
    return lua_pushboolean(L, 0), 1;
  lua_replace(L, 4); /* the map where the session was */
  lua_settop(L, 4);
  call_strings strs[ROUND_STRINGS];
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_rawgeti(L, 2, i) != LUA_TTABLE) return lua_pushboolean(L, 0), 1;
    int call = lua_gettop(L);
    if (get(L, call, K_MALFORMED) != LUA_TNIL) return lua_pushboolean(L, 0), 1;
    lua_pop(L, 1);
    call_strings c = {NULL, NULL, NULL, 0, 0, 0};
    c.id = field_str(L, call, K_ID, &c.il);
    if (c.id == NULL || get(L, call, K_ARGUMENTS) != LUA_TSTRING) return lua_pushboolean(L, 0), 1;
    c.a = lua_tolstring(L, -1, &c.al); /* call, arguments */
    if (get(L, call, K_NAME) != LUA_TSTRING) return lua_pushboolean(L, 0), 1;
    c.nm = lua_tolstring(L, -1, &c.nl);
    if (i <= ROUND_STRINGS) strs[i - 1] = c;
    if (lua_rawget(L, 4) != LUA_TTABLE) return lua_pushboolean(L, 0), 1; /* call, arguments, tool */
    lua_replace(L, call); /* the tool where the call was */
    lua_rawgeti(L, 1, R_DECODE); /* tool, arguments, decode */
    lua_insert(L, -2);
    if (c.al == 0) {
      lua_pop(L, 1);
      lua_pushliteral(L, "{}");
    }
    lua_call(L, 1, 1);
    if (lua_type(L, -1) != LUA_TTABLE) return lua_pushboolean(L, 0), 1;
    integers(L, lua_gettop(L), 0);
  }

  /* 2. The assistant message, encoded straight into the wire. */
  size_t size;
  if (!assistant_wire(L, text ? text : "", tl, 2, strs, wire, &size))
    return lua_pushboolean(L, 0), 1;
  append(L, 1, size, K_ASSISTANT, 3, 2);
  lua_settop(L, 4 + 2 * (int)n);

  /* 3. The calls, one task each: a lone call runs at once (until it first
  ** waits), several all start before any runs, as the Lua loop does. Each
  ** call leaves its task, start (hrtime) and timeout (ms) on the stack. */
  lua_rawgeti(L, 1, R_TURN);
  int turn = lua_gettop(L);
  lua_pushvalue(L, 2);
  set(L, turn, K_PENDING);
  lua_pushboolean(L, 0);
  set(L, turn, K_TEXTUAL);
  get(L, turn, K_TASKS);
  int live = lua_gettop(L);
  lua_rawgeti(L, 1, R_COUNTERS);
  int counters = lua_gettop(L);
  for (lua_Integer i = 1; i <= n; i++) {
    int tool = 3 + 2 * (int)i, args = tool + 1;
    uint64_t t0 = uv_hrtime();
    add_int(L, counters, K_TOOL_CALLS, 1);
    lua_rawgeti(L, 1, R_WORKER);
    int fn = lua_gettop(L);
    lua_rawgeti(L, 1, R_SELF);
    lua_pushvalue(L, tool);
    lua_pushvalue(L, args);
    lua_rawgeti(L, 2, i);
    lua_rawgeti(L, 1, R_OPTS);
    lua_pushinteger(L, (lua_Integer)t0);
    lua_pushnil(L); /* no event sink */
    lua_rawgeti(L, 1, R_DEPTH);
    if (n == 1)
      tide__spawn_now(L, caller, fn, 8);
    else
      tide__spawn(L, fn, 8, caller->depth);
    lua_replace(L, fn); /* the task where its function was */
    lua_settop(L, fn);
    lua_pushvalue(L, fn);
    lua_rawseti(L, live, (lua_Integer)lua_rawlen(L, live) + 1);
    lua_pushinteger(L, (lua_Integer)t0);
    if (get(L, tool, K_TIMEOUT) == LUA_TNIL) {
      lua_pop(L, 1);
      lua_rawgeti(L, 1, R_TIMEOUT);
    }
  }
  int first = counters + 1; /* call i's task is at first + 3(i-1) */

  /* 4. A lone call done at once with its result (a table, or a plain
  ** result's text): the results, here. Anything else is joined by the Lua
  ** loop, from running[3i-2 .. 3i]. */
  int rtype = n > 1 ? LUA_TNONE : tide__task_result(L, first);
  if (rtype != LUA_TTABLE && rtype != LUA_TSTRING) {
    lua_settop(L, first + 3 * (int)n - 1);
    lua_createtable(L, (int)(3 * n), 0);
    for (int k = 3 * (int)n; k >= 1; k--) {
      lua_pushvalue(L, first + k - 1);
      lua_rawseti(L, -2, k);
    }
    lua_pushliteral(L, "joins");
    lua_insert(L, -2);
    return 2;
  }
  int r = lua_gettop(L);
  for (lua_Integer i = (lua_Integer)lua_rawlen(L, live); i >= 1; i--) {
    lua_pushnil(L);
    lua_rawseti(L, live, i);
  }
  lua_pushnil(L);
  set(L, turn, K_PENDING);
  if (rtype == LUA_TSTRING) { /* a plain result: its text, the call's id */
    lua_rawgeti(L, 2, 1);
    int call = lua_gettop(L);
    text_result_wire(L, strs[0].id, strs[0].il, r, wire, &size);
    append(L, 1, size, K_TOOL, call, r);
  } else if (!results_wire(L, r, 1, wire, &size)) {
    lua_pushliteral(L, "results");
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, r);
    lua_rawseti(L, -2, 1);
    return 2;
  } else {
    append(L, 1, size, K_TOOL, 0, r);
  }
  tide__recycle_task(L, first); /* nobody else has seen it */
  lua_pushboolean(L, 1);
  return 1;
}

/// Registers core.tool_round, core.json_integers, core.openai_assistant_wire
/// and core.openai_results_wire into the module table at the top of the stack.
void tide__open_turn(lua_State *L) {
  static const luaL_Reg fns[] = {{"tool_round", l_tool_round},
                                 {"json_integers", l_json_integers},
                                 {"openai_assistant_wire", l_assistant_wire},
                                 {"openai_results_wire", l_results_wire},
                                 {NULL, NULL}};
  luaL_checkstack(L, NKEYS, "tide: registering core.tool_round");
  for (int k = 0; k < NKEYS; k++) lua_pushstring(L, key_names[k]);
  luaL_setfuncs(L, fns, NKEYS);
}
