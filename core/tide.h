/*
** tide.h -- the internal interface shared by the files of tide.core.
**
** Naming: tide_ for types and the public entry, tide__ for helpers shared
** between files; everything else is static. Only luaopen_tide_core is
** exported from the module.
**
** The central rule: no libuv or libcurl callback ever calls into Lua directly
** except through tide__task_resume (lua_resume is itself protected) or
** tide__pcall (lua_pcall with a traceback handler). Callbacks record results in
** C structures and wake the waiting task; the task's continuation turns those
** results into Lua values, inside the coroutine, where an error is an ordinary
** Lua error and not a longjmp through C frames.
*/
#ifndef TIDE_H
#define TIDE_H

#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>
#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#define TIDE_VERSION "0.1.0"

#define TIDE_DEFAULT_MAX_SPAWN_DEPTH 3

/* Registry keys (strings, so reloading the module finds the same objects). */
#define TIDE_CTX_KEY "tide.core.ctx"
#define TIDE_ERROR_MT "tide.error"
#define TIDE_TASK_MT "tide.task"

typedef struct tide_ctx tide_ctx;
typedef struct tide_task tide_task;
typedef struct tide_wait tide_wait;
typedef struct tide_http tide_http;

/* -------------------------------------------------------------- buffers -- */

/// A growable, malloc'ed byte buffer (always NUL-terminated once non-empty).
typedef struct tide_buf {
  char *p;
  size_t len, cap;
} tide_buf;

/// Appends n bytes; returns 0, or -1 when out of memory (nothing changed).
int tide__buf_add(tide_buf *b, const char *s, size_t n);
/// Frees the buffer's memory and leaves it empty.
void tide__buf_free(tide_buf *b);
/// Empties the buffer for reuse, keeping its memory when that is at most
/// max bytes (freeing it otherwise).
void tide__buf_keep(tide_buf *b, size_t max);
/// Makes room for n bytes in all (and the NUL after them); returns 0, or -1
/// when out of memory (nothing changed). The length is left as it was.
int tide__buf_reserve(tide_buf *b, size_t n);
/// A new empty buffer owned by a userdata pushed on L's stack: the collector
/// frees it, so that an encoder that raises half way (a value it cannot
/// encode, no memory) leaves nothing to free by hand; freeing it sooner
/// (tide__buf_free) is fine.
tide_buf *tide__buf_push(lua_State *L);

/* ------------------------------------------------------------------ sse -- */

/// The state of an incremental Server-Sent Events parser (sse.c). Zero it,
/// set max (the cap on one event's data), feed it, free it.
typedef struct tide_sse {
  tide_buf line;  /* the unterminated tail of the last chunk */
  tide_buf data;  /* "data" values so far, each followed by '\n' */
  tide_buf event; /* the "event" field of the pending event */
  tide_buf id;    /* last event id: it persists across events */
  long retry_ms;  /* the last valid "retry" field's reconnection time (has_retry) */
  int has_retry;  /* a "retry" field came */
  size_t max;     /* cap on one event's data */
  int cr;         /* the last chunk ended with CR: skip one LF at the next */
  int started;    /* a line has been completed (the BOM check is done) */
} tide_sse;

/// One dispatched event. The pointers are valid only during the callback;
/// data is followed by one readable byte ('\n'), so it is never read past.
typedef struct tide_sse_event {
  const char *event, *data, *id; /* event is "message" when absent */
  size_t event_len, data_len, id_len;
  int done; /* the data is exactly "[DONE]" */
} tide_sse_event;

/// Receives each event; a non-zero (positive) return stops the feed.
typedef int (*tide_sse_cb)(void *ud, const tide_sse_event *ev);

#define TIDE_SSE_NOMEM (-1)      /* out of memory: the parser is unusable */
#define TIDE_SSE_LINE_BIG (-2)   /* a line exceeds the cap (buffers freed) */
#define TIDE_SSE_EVENT_BIG (-3)  /* an event exceeds the cap (buffers freed) */

/// Feeds n bytes. Returns 0, a negative TIDE_SSE_ code, or the first
/// non-zero value cb returned. cb may raise a Lua error: the parser's
/// buffers are consistent at every call.
int tide__sse_feed(tide_sse *p, const char *s, size_t n, tide_sse_cb cb,
                   void *ud);
/// Ends the stream: returns 1 when it ended on an event boundary, and
/// discards whatever is pending.
int tide__sse_finish(tide_sse *p);
/// Frees the parser's buffers (idempotent).
void tide__sse_free(tide_sse *p);

/* ---------------------------------------------------------- eventstream -- */

/// The state of an incremental decoder of AWS event streams
/// (application/vnd.amazon.eventstream, eventstream.c): Bedrock's streamed
/// replies. Zero it, set max (the cap on one frame), feed it, free it.
typedef struct tide_es {
  tide_buf frame;   /* the bytes of the frame being received */
  tide_buf data;    /* the event handed on: a chunk's bytes, or an error */
  tide_buf scratch; /* the payload's JSON scan */
  tide_buf key;
  size_t max;       /* cap on one frame */
  const char *why;  /* what was wrong, when the feed returned TIDE_ES_BAD */
  int raw;          /* hand each frame on as it is (Converse): its :event-type
                    ** (or :exception-type) as the event's name, its payload as
                    ** the data, "event" or "exception" as the id */
} tide_es;

#define TIDE_ES_BAD (-4) /* not an event stream (why says what): buffers freed */

/// Feeds n bytes of an AWS event stream and hands each of its events to cb
/// as the SSE event it carries: a chunk's decoded bytes as the data, an
/// exception as an Anthropic-shaped error event ({"type":"error","error":
/// {"type","message"}}). Returns 0, TIDE_SSE_NOMEM, TIDE_SSE_EVENT_BIG (a
/// frame over max), TIDE_ES_BAD, or the first non-zero value cb returned.
int tide__es_feed(tide_es *p, const char *s, size_t n, tide_sse_cb cb, void *ud);
/// Empties the decoder for the next stream, keeping buffers up to keep bytes.
void tide__es_reset(tide_es *p, size_t keep);
/// Frees the decoder's buffers (idempotent).
void tide__es_free(tide_es *p);

/* ------------------------------------------------------------- assembler -- */

/// One tool call being assembled from streamed deltas (toolcall.c).
typedef struct tide_asm_slot {
  lua_Integer index;
  tide_buf id, name, args;
  tide_buf extra; /* raw JSON of the call's extra_content (Gemini's signature) */
  int has_id, has_name, has_extra;
  int custom; /* a custom (freeform) tool's call: args is its raw input */
} tide_asm_slot;

/// Tool-call deltas assembled by index. Zero it, set max (the cap on the
/// bytes of all calls together), add deltas, free it.
typedef struct tide_asm {
  tide_asm_slot *slots; /* sorted by index */
  size_t n, cap;
  size_t total; /* bytes counted against max */
  size_t kept;  /* slots up to here hold buffers (emptied ones past n) */
  size_t max;
} tide_asm;

#define TIDE_ASM_NOMEM (-1)     /* out of memory */
#define TIDE_ASM_TOO_LARGE (-2) /* the cap is exceeded: every slot was freed */

/// Adds one delta for index (>= 0): id and name are kept when first seen
/// non-empty, fragments are appended. id, name and frag may be NULL.
/// Returns 0 or a negative TIDE_ASM_ code. Never raises.
int tide__asm_add(tide_asm *a, lua_Integer index, const char *id, size_t idl,
                  const char *name, size_t namel, const char *frag,
                  size_t fragl);
/// The index a delta that came without one belongs to: the last call's,
/// unless the delta starts a new call (an id other than the last call's,
/// or a name once the last call's arguments are complete JSON), then the
/// one after it. Gemini's OpenAI endpoint streams parallel calls so.
lua_Integer tide__asm_route(const tide_asm *a, const char *id, size_t idl,
                            const char *name, size_t namel);
/// Sets the raw extra_content JSON of the call at index (added before),
/// replacing an earlier one. Returns 0 or a negative TIDE_ASM_ code.
int tide__asm_extra(tide_asm *a, lua_Integer index, const char *s, size_t n);
/// Marks the call at index (added before) as a custom tool's: its
/// arguments are the tool's raw input text, not JSON.
void tide__asm_custom(tide_asm *a, lua_Integer index);
/// Frees every slot (idempotent); keeps max.
void tide__asm_free(tide_asm *a);
/// Empties the assembler for the next reply, keeping its slots' buffers
/// (those of up to keep_max bytes) for the calls to come.
void tide__asm_reset(tide_asm *a, size_t keep_max);
/// Pushes { { index, id, name, arguments }, ... } ordered by index (id and
/// name nil when never seen, arguments "" when no fragment came).
void tide__asm_push(lua_State *L, const tide_asm *a);
/// Pushes the calls as a response carries them to the session: { { id,
/// name, arguments }, ... } ordered by index, finished as
/// provider._finish_calls finishes them: an id missing or empty becomes
/// "call_<n>" (n its position; "call_<n>_<k>" while that is taken), a
/// missing name "", arguments of only white space (or none) "{}". A
/// custom tool's call has `custom = true` and its input as it came.
void tide__asm_push_finished(lua_State *L, const tide_asm *a);
/// Pushes the StreamTooLarge error for an assembler whose cap was exceeded.
void tide__push_asm_too_large(lua_State *L, const tide_asm *a);

/// The body an http request (the userdata at idx) holds, or NULL when idx is
/// not an open request. The pointer is valid until the request is used again.
const char *tide__http_body(lua_State *L, int idx, size_t *len);

/* ---------------------------------------------------------------- sinks -- */

/// A reply parser a request can feed in place (req:pump): the parser's
/// userdata type carries one (tide__register_sink), and the request hands it
/// every chunk of an event stream straight from its buffer, with no Lua
/// string made. feed gets the parser at idx; it returns 0, or 1 with the
/// error at the top of the stack (the parser is failed: later feeds return
/// it too). The HTTP layer knows the sink, not the protocol behind it.
typedef struct tide_sink {
  int (*feed)(lua_State *L, int idx, const char *s, size_t n);
} tide_sink;
/// Attaches sink to the userdata type registered as name.
void tide__register_sink(lua_State *L, const char *name, const tide_sink *sink);
/// The sink of the value at idx, or NULL when it has none.
const tide_sink *tide__sink_of(lua_State *L, int idx);

/* --------------------------------------------------------------- replies -- */

typedef struct tide_reply tide_reply;
typedef struct tide_reply_feed tide_reply_feed;

/// The longest service tier name a reply keeps, plus one ("default", "flex",
/// "priority": a longer one is not a tier anyone prices).
#define TIDE_TIER_MAX 24

/// What a wire format's reply parser brings (openai.c, anthropic.c,
/// responses.c); the
/// shell in reply.c does the rest: the userdata and its methods (feed,
/// finish, close), the sink, the kept failure, spare parsers, the parser of
/// whole replies. A kind is a static constant; its address names it.
typedef struct tide_reply_kind {
  const char *name; /* the metatable ("tide.openai_stream"), also in tostring */
  const char *what; /* "openai stream", in "attempt to use a closed ..." */
  size_t size;      /* of the kind's parser, a struct that starts with a tide_reply */
  /// Applies one SSE event. Returns 0, or 1 with the error pushed (the
  /// stream fails); out of memory sets fc->nomem instead. Text goes through
  /// tide__reply_text, reasoning through tide__reply_reasoning.
  int (*event)(tide_reply_feed *fc, const tide_sse_event *e);
  /// Once the stream ended (its SSE tail dropped): pushes the reply and
  /// returns 1, or pushes nil and the error and returns 2.
  int (*finish)(lua_State *L, tide_reply *r);
  /// Empties the kind's part of the parser for the next reply, keeping
  /// buffers of up to keep bytes; caps of max bytes. Runs on a zeroed
  /// struct first, and on one whose buffers were freed.
  void (*reset)(tide_reply *r, size_t keep, size_t max);
  /// Frees what the kind's part holds (idempotent), leaving it empty.
  void (*free)(tide_reply *r);
} tide_reply_kind;

/// The part of a parser the shell owns.
struct tide_reply {
  const tide_reply_kind *kind;
  tide_sse sse;
  tide_es es;             /* the framing when aws: an AWS event stream's */
  int aws;                /* framed as an AWS event stream (Bedrock), not SSE */
  tide_buf text;          /* every text delta so far */
  char tier[TIDE_TIER_MAX]; /* the service tier the reply last named (tide__reply_tier) */
  size_t tier_len;
  int failed;             /* the stream is abandoned; the error is uservalue 1 */
  int busy;               /* the parser of whole replies is in a call */
  tide_reply *next_spare; /* in the state's list of spares */
};

/// Where one feed hands what it reads.
struct tide_reply_feed {
  lua_State *L;
  tide_reply *r;
  int nomem;          /* out of memory: the feed stops, the caller raises */
  int out;            /* stack index of the table of text deltas, or 0 */
  lua_Integer nout;   /* deltas stored in it */
  int rout;           /* stack index of the table of reasoning deltas, or 0 */
  lua_Integer nrout;
  int tout;           /* stack index of the table of tool-input deltas, or 0 */
  lua_Integer ntout;
};

/// Keeps the service tier a reply names (n bytes at s: the tier that served
/// it, which prices the call), when it is a name: 0 < n < TIDE_TIER_MAX. A
/// later one replaces it.
void tide__reply_tier(tide_reply *r, const char *s, size_t n);
/// Sets service_tier in the usage table at the top of the stack, when the
/// reply named one.
void tide__reply_push_tier(lua_State *L, const tide_reply *r);

/// Appends text to the reply's text and hands it to the listener, if any.
/// Returns 0, or -1 when out of memory (fc->nomem set). May raise while
/// making the listener's string: call it where the parser is consistent.
int tide__reply_text(tide_reply_feed *fc, const char *s, size_t n);
/// Hands reasoning text to its listener, if any (the kind keeps its own
/// copy); no string is made when nobody listens. May raise, as above.
void tide__reply_reasoning(tide_reply_feed *fc, const char *s, size_t n);
/// Hands a piece of a tool call's input (n bytes at s, perhaps none) to its
/// listener, if any, as four values appended to the feed's table: the
/// call's index in the reply, its id and its name (or false, when this
/// event does not carry them: the listener remembers them by index), the
/// piece. No string is made when nobody listens. May raise, as above.
void tide__reply_tool_input(tide_reply_feed *fc, lua_Integer index, const char *id, size_t idl,
                            const char *name, size_t namel, const char *s, size_t n);
/// Whether the feed has a listener for tool-call input (a kind may skip
/// reading the events that only carry it when not).
#define tide__reply_wants_tool_input(fc) ((fc)->tout != 0)
/// Pushes a new stream of kind (no parser taken yet), with caps of max.
void tide__reply_new(lua_State *L, const tide_reply_kind *kind, size_t max);
/// Makes the new stream at the top of the stack read an AWS event stream
/// (Bedrock's framing) instead of SSE.
void tide__reply_aws(lua_State *L);
/// The state's parser of kind for whole replies, emptied, caps of max,
/// marked busy. Give it back with tide__reply_whole_done.
tide_reply *tide__reply_whole(lua_State *L, const tide_reply_kind *kind, size_t max);
/// Empties the parser of whole replies for the next call.
void tide__reply_whole_done(tide_reply *r);
/// (Re)creates the metatable kind->name with the shell's methods and sink.
void tide__reply_register(lua_State *L, const tide_reply_kind *kind);
/// The max_bytes argument at arg: def when none or nil; raises unless it is
/// a positive integer.
size_t tide__check_max(lua_State *L, int arg, size_t def);
/// The reply parsers' default cap (core.openai_stream, anthropic_stream,
/// responses_stream and their whole-reply scanners): on one event's data
/// and on the bytes one reply's calls or output items may hold. Real
/// replies are a few KiB; the cap exists so that a broken or hostile server
/// cannot make a parser buffer without bound. The same as core.sse_parser's
/// and core.tool_call_assembler's.
#define TIDE_REPLY_DEFAULT_MAX (8 * 1024 * 1024)

/* ---------------------------------------------------------------- wire -- */

/// A session's encoded history (core.wire, wire.c).
typedef struct tide_wire tide_wire;
/// The wire at idx, or NULL when the value there is not one.
tide_wire *tide__to_wire(lua_State *L, int idx);
/// Room for one more entry of n bytes (n > 0): where to write it, or NULL
/// when out of memory (nothing changed). tide__wire_commit(w, n) adds it.
char *tide__wire_reserve(tide_wire *w, size_t n);
/// Adds the entry of n bytes written where tide__wire_reserve said.
void tide__wire_commit(tide_wire *w, size_t n);

/// The size of prefix .. "," .. (the strings of the list at idx, or the
/// entries of the wire there, comma-joined) .. "]}" (an upper bound by one
/// comma); raises naming argument arg of fname when an entry is not a string.
size_t tide__wire_size(lua_State *L, size_t plen, int idx, int arg,
                       const char *fname);
/// Writes that join into out, which has room for the total tide__wire_size
/// gave for the same (unchanged, checked) list; returns the bytes written.
size_t tide__wire_write(lua_State *L, const char *prefix, size_t plen, int idx,
                        size_t total, char *out);

/* ---------------------------------------------------------------- waits -- */

/* A task suspended on a C operation points at the operation's tide_wait. If
** the task is cancelled while waiting, cancel() runs (from Lua, never from a
** libuv or libcurl callback) and must detach the operation from the task so
** that it never wakes it again. */
struct tide_wait {
  void (*cancel)(tide_wait *w);
};

/* ----------------------------------------------------------------- tasks -- */

enum tide_task_state {
  TIDE_TASK_NEW,     /* spawned, not yet started */
  TIDE_TASK_READY,   /* in the ready queue */
  TIDE_TASK_RUNNING, /* currently resumed */
  TIDE_TASK_WAITING, /* suspended on a tide_wait */
  TIDE_TASK_DONE     /* finished: results or error kept on its thread */
};

/* Shutdown hooks a state can hold (tide_api.on_shutdown). */
#define TIDE_MAX_HOOKS 8

struct tide_task {
  tide_ctx *ctx;
  lua_State *co;          /* the coroutine; anchored as the userdata's uservalue 1;
                          ** NULL once given back (see result_kept) */
  int ref;                /* registry ref to the task userdata while not done */
  uint64_t id;
  int state;              /* enum tide_task_state */
  int started;            /* resumed at least once */
  int cancelled;          /* cancellation requested (sticky) */
  int interrupted;        /* one-shot: the current or next wait raises */
  int join_timed_out;     /* join(timeout) gave up waiting */
  int ok;                 /* when done: 1 = returned, 0 = raised */
  int nres;               /* when done and ok: number of results on co */
  int result_kept;        /* done, ok, nres <= 1: the coroutine went back to the
                          ** spares and the result (if any) is uservalue 1 */
  int reported;           /* the error was retrieved (join) or printed */
  int depth;              /* spawn depth: root 0, sub-agent parent + 1 */
  int max_depth;          /* limit inherited by children */
  int locals_inherited;   /* uservalue 2 is the parent's task-local table */
  tide_wait *wait;        /* what the task is suspended on, if WAITING */
  tide_task *parent;      /* NULL once the parent is done */
  tide_task *first_child, *next_sibling, *prev_sibling;
  tide_task *next_ready;
  tide_task *prev_live, *next_live; /* all tasks not yet done */
  /* join support: the tasks waiting for this one form a list */
  tide_task *first_joiner;
  tide_task *next_joiner;
  tide_task *join_target;
  tide_wait join_wait;
  /* sleep support */
  uv_timer_t *sleep_timer;
  tide_wait sleep_wait;
};

/* ------------------------------------------------------------ per state -- */

/* One per Lua state (kept in the registry under TIDE_CTX_KEY). The loop and
** all handles are malloc'ed so that they outlive the garbage collector until
** their close callbacks have run. */
struct tide_ctx {
  lua_State *L; /* main thread */
  uv_loop_t *loop;
  int running;  /* tide.run is driving the loop */
  int closing;  /* the state is being closed */
  int interrupted; /* SIGINT arrived while tide.run drove the loop */
  uint64_t next_task_id;
  tide_task *ready_head, *ready_tail;
  tide_task *live_head;
  tide_task *current;  /* the task being resumed, or NULL */
  tide_task *root;     /* tide.run's root task while it runs, or NULL */
  uv_idle_t *idle;     /* active while tasks are ready: keeps poll non-blocking */
  uv_check_t *check;   /* drains the ready queue right after the poll phase */
  int max_spawn_depth; /* runtime default for MAX_SPAWN_DEPTH */
  int spare_threads;   /* finished tasks' coroutines kept for reuse (loop.c) */
  /* Shutdown hooks of C modules built beside tide.core (tide_api). */
  void (*shutdown_hooks[TIDE_MAX_HOOKS])(tide_ctx *ctx);
  int nshutdown_hooks;
  int process_ready;   /* the first run set up the process (loop.c) */
  struct tide_reply *spare_replies; /* closed streams' parsers (reply.c) */
  int nspare_replies;
  /* HTTP (http.c) */
  struct tide_http_state *http;
  /* integration cache (cache.c) */
  struct tide_cache *cache;
};

/* ------------------------------------------------------------- loop.c -- */

/// Returns the per-state context, creating it on first use.
tide_ctx *tide__ctx(lua_State *L);
/// Returns the task whose coroutine is L, or NULL when L is not a task.
tide_task *tide__current(lua_State *L);
/// Like tide__current, but raises "<what> must be called inside a task".
tide_task *tide__check_task(lua_State *L, const char *what);
/// Suspends the running task on w. Returns through lua_yieldk: call as
/// `return tide__wait(L, t, w, k, kctx);`. The continuation k runs when the
/// task is woken; it must start with tide__check_cancel(L).
int tide__wait(lua_State *L, tide_task *t, tide_wait *w, lua_KFunction k,
               lua_KContext kctx);
/// Queues a waiting task to be resumed. Safe to call from any libuv or
/// libcurl callback: it touches no Lua state.
void tide__wake(tide_task *t);
/// Creates a task running the function at index fnidx with the nargs values
/// above it, at spawn depth `depth`, as a child of the current task (if any),
/// and queues it. Pushes the task userdata.
tide_task *tide__spawn(lua_State *L, int fnidx, int nargs, int depth);
/// As core.spawn_now: spawns fnidx(nargs values after it) at the caller's
/// depth and runs it at once, inside the calling task, until it first waits
/// or ends. Pushes the task's userdata. caller is the task running L, when
/// the caller has it at hand (NULL: looked up; raises outside a task).
tide_task *tide__spawn_now(lua_State *L, tide_task *caller, int fnidx, int nargs);
/// Raises the Cancelled error if the current task has been cancelled.
void tide__check_cancel(lua_State *L, tide_task *t);
/// Calls the function at the top of L's stack (with nargs below it... see
/// implementation) in protected mode with a traceback. On error, prints the
/// error to stderr prefixed by `where` and returns non-zero.
int tide__pcall(lua_State *L, int nargs, int nresults, const char *where);

/* ------------------------------------------------------------ error.c -- */

/// Pushes a structured error { code = code, message = msg } carrying the
/// tide.error metatable (whose __tostring prints "code: message").
void tide__push_error(lua_State *L, const char *code, const char *fmt, ...);
/// Replaces the string on top of the stack (a message quoting a server,
/// which may hold any byte) with a structured error of `code` whose message
/// is `prefix` and every byte of that string.
void tide__push_error_from(lua_State *L, const char *code, const char *prefix);
/// Pushes nil plus a structured error; returns 2 for `return` from a binding.
int tide__fail(lua_State *L, const char *code, const char *fmt, ...);
/// Pushes a MalformedResponse error whose message is fmt formatted as
/// lua_pushfstring does, with body (n bytes; none when NULL) as its body.
void tide__push_malformed(lua_State *L, const char *body, size_t n, const char *fmt, ...);
/// Pushes the longest prefix of s no longer than max bytes that does not
/// end inside a UTF-8 sequence (provider._excerpt's cut).
void tide__push_excerpt(lua_State *L, const char *s, size_t n, size_t max);
/// How much of a server's error message a reply parser's error quotes.
#define TIDE_MESSAGE_MAX 512
/// Raises a structured error (never returns).
int tide__raise(lua_State *L, const char *code, const char *fmt, ...);

/* ------------------------------------------------------------- module -- */

/// Creates the metatable `name` in the registry, or refreshes it when the
/// module is opened again: the metamethods of `meta` and an `__index` table of
/// `methods` (either may be NULL), and at [1] the address `name` as a tag
/// (see tide__testudata). Leaves the stack as it found it.
void tide__register_type(lua_State *L, const char *name, const luaL_Reg *meta,
                         const luaL_Reg *methods);
/// The one userdata type check of tide.core (as luaL_testudata): for a type
/// registered by tide__register_type, its metatable's tag is compared with
/// the address `name` (the same macro's string, which the compiler merges)
/// instead of looking the metatable up in the registry by name on every
/// method call. Falls back to luaL_testudata when the tags do not match.
void *tide__testudata(lua_State *L, int idx, const char *name);
/// As luaL_checkudata, through tide__testudata.
void *tide__checkudata(lua_State *L, int idx, const char *name);
/// The per-state block of `size` zeroed bytes kept in the registry under
/// `key` (an address), made on first use and alive as long as the state:
/// the list of a part's open handles, which its shutdown hook closes.
void *tide__state_block(lua_State *L, const void *key, size_t size);
/// The block tide__state_block made under `key`, or NULL when none was (a
/// shutdown hook of a part that was never used).
void *tide__state_block_if(lua_State *L, const void *key);
/// The string field k of the table at idx, or NULL when it is not a string.
/// The value is popped: the table keeps the string alive.
const char *tide__field_str(lua_State *L, int idx, const char *k, size_t *len);
/// Result i of the tool-result list at idx (the encoders of the tool
/// message): its content and id strings (valid while the list holds them)
/// and, when is_error is not NULL, whether its is_error is true. 0 when it
/// is not a table of string id and content.
int tide__result_strings(lua_State *L, int idx, lua_Integer i, const char **c, size_t *cl,
                         const char **id, size_t *il, int *is_error);
/// Sets header name (lowercased here) to value in the table at the top of
/// the stack; a repeated header is joined with ", " as RFC 9110 allows.
void tide__add_header(lua_State *L, const char *name, size_t nl,
                      const char *v, size_t vl);

/* Each file registers its functions into the module table at the top of the
** stack. */
/// Registers tasks and the loop: run, spawn, sleep, current, context, ...
void tide__open_loop(lua_State *L);
/// Registers error, is_error and the shared error metatable.
void tide__open_error(lua_State *L);
/// Registers spawn_nested, depth and max_spawn_depth.
void tide__open_depth(lua_State *L);
/// Registers http_request (libcurl on the loop), http_parse_headers, http_stats.
void tide__open_http(lua_State *L);
/// Registers sse_parser.
void tide__open_sse(lua_State *L);
/// Registers the OpenAI wire format in C: openai_stream, openai_parse and
/// the message encoders.
void tide__open_openai(lua_State *L);
/// Registers the Anthropic wire format in C: anthropic_stream,
/// anthropic_parse and the message encoders.
void tide__open_anthropic(lua_State *L);
/// Registers the OpenAI Responses API's reply parsers in C:
/// responses_stream and responses_parse.
void tide__open_responses(lua_State *L);
/// Registers json_integers, json_canonical_encoder, json_raw_values and
/// json_elements.
void tide__open_json(lua_State *L);
/// Registers the integration cache (cache_lookup, cache_store, cache_peek,
/// ...) and hash.
void tide__open_cache(lua_State *L);
/// Registers tool_call_assembler.
void tide__open_toolcall(lua_State *L);
/// Registers wire and join_wire.
void tide__open_wire(lua_State *L);
/// Registers template_compile.
void tide__open_template(lua_State *L);
/// Registers watch, scandir and realpath.
void tide__open_watch(lua_State *L);
/// Registers base64.
void tide__open_base64(lua_State *L);
/// Decodes the n bytes of standard base64 at s (RFC 4648, padding optional)
/// into out, which has room for n / 4 * 3 + 3 bytes; returns the length
/// written, or -1 when s is not base64.
long tide__base64_decode(const char *s, size_t n, char *out);
/// Registers the hashes, signatures and random bytes of digest.c.
void tide__open_digest(lua_State *L);
/// CRC-32 (IEEE, zlib's) of n bytes, continuing crc (0 to start).
uint32_t tide__crc32(uint32_t crc, const void *s, size_t n);
/// Registers aws_eventstream_frames (eventstream.c).
void tide__open_eventstream(lua_State *L);
/// Registers read_line (stdin without blocking the loop).
void tide__open_stdio(lua_State *L);
/// Registers process_spawn (child processes with pipes on the loop).
void tide__open_process(lua_State *L);
/// Registers on_signal (process signals as callbacks).
void tide__open_signal(lua_State *L);
/// Registers write_private (files written whole, 0600), truncate, file_kind
/// and make_dir.
void tide__open_file(lua_State *L);
/// Registers otlp_spans and otlp_attributes (OpenTelemetry's protobuf, otlp.c).
void tide__open_otlp(lua_State *L);
/// Registers gzip (compress.c).
void tide__open_compress(lua_State *L);

/* Shutdown hooks, run in order when the state closes (before uv_loop_close).
** Each closes the handles its part owns; the loop then runs until every close
** callback has fired. */
/// Takes every transfer out of libcurl, cleans up the multi handles, closes
/// socket watchers and timers.
void tide__http_shutdown(tide_ctx *ctx);
/// Closes every file watcher still open.
void tide__watch_shutdown(tide_ctx *ctx);
/// Frees the integration cache's entries.
void tide__cache_shutdown(tide_ctx *ctx);
/// Closes the stdin reader's handle.
void tide__stdio_shutdown(tide_ctx *ctx);
/// Runs fn (once, however often it is asked) when the state closes, after
/// the parts above: for parts that only sometimes hold something to free,
/// and for the C modules built beside tide.core (tide_api). 0, or -1 when
/// the hooks are full (TIDE_MAX_HOOKS).
int tide__on_shutdown(tide_ctx *ctx, void (*fn)(tide_ctx *ctx));

/* ------------------------------------------------------------------ api -- */

/// What tide.core lends the C modules built beside it (tide.testing.server,
/// tide.redis),
/// which are separate shared objects and cannot link to its hidden symbols:
/// a pointer to this table is in the registry under TIDE_API_KEY once
/// tide.core is loaded.
typedef struct tide_api {
  /// The state's context (its loop), made on first use.
  tide_ctx *(*ctx)(lua_State *L);
  /// tide__pcall: the one protected call with a traceback.
  int (*pcall)(lua_State *L, int nargs, int nresults, const char *where);
  /// tide__add_header.
  void (*add_header)(lua_State *L, const char *name, size_t nl, const char *v, size_t vl);
  /// tide__push_error: pushes a tide error table.
  void (*push_error)(lua_State *L, const char *code, const char *fmt, ...);
  /// Runs fn when the state closes, before the loop's last run (with the
  /// parts of tide.core); 0, or -1 when the hooks are full.
  int (*on_shutdown)(tide_ctx *ctx, void (*fn)(tide_ctx *ctx));
  /// tide__check_task, tide__wait, tide__wake, tide__check_cancel: for the
  /// modules whose operations suspend the calling task (tide.redis).
  tide_task *(*check_task)(lua_State *L, const char *what);
  int (*wait)(lua_State *L, tide_task *t, tide_wait *w, lua_KFunction k, lua_KContext kctx);
  void (*wake)(tide_task *t);
  void (*check_cancel)(lua_State *L, tide_task *t);
  /// tide__current.
  tide_task *(*current)(lua_State *L);
} tide_api;
#define TIDE_API_KEY "tide.core.api"

/* depth.c */
/// Computes the depth of a child of `parent`: 0 on success with *out set,
/// -1 when parent + 1 would exceed `limit` (or overflow).
int tide__depth_next(int parent, int limit, int *out);

/* Small helpers. */
#define tide__nelem(a) (sizeof(a) / sizeof((a)[0]))

#endif
