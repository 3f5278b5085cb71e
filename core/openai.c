/*
** openai.c -- the OpenAI chat-completions wire format in C: the streamed
** reply parser (a sink a request feeds in place), the whole-reply scanner,
** and the encoders of the two messages a tool loop repeats.
**
** The Lua path turned every SSE event into a table, decoded its JSON into a
** table tree and walked it; per reply that is hundreds of tables for a few
** hundred bytes of text. Here the SSE framing is sse.c's (tide__sse_feed),
** each event's JSON is scanned in place (json.c) for the handful of fields a reply is
** made of, and tool-call deltas go to toolcall.c's assembler. Lua sees one
** string per chunk (the text deltas) and one result table at the end.
**
** The scanner reads, and nothing else:
**   error                                  (an error object inside the stream)
**   service_tier                           (the tier that served it: what prices it)
**   usage.{prompt_tokens, completion_tokens, prompt_tokens_details.{cached_tokens,
**          cache_write_tokens}, prompt_cache_hit_tokens, cost,
**          completion_tokens_details.reasoning_tokens}
**   choices[0].delta.{content, refusal, reasoning_content, reasoning,
**                     reasoning_details}
**   choices[0].delta.content[*].{type, text, thinking[*].{type, text},
**                                signature}       (content as chunks)
**   choices[0].delta.tool_calls[*].{index, id, function.{name, arguments},
**                                   custom.{name, input}, extra_content}
**   choices[0].finish_reason
** reasoning_content is DeepSeek's (and vLLM's, Qwen's, xAI's) name for the
** model's reasoning text, reasoning OpenRouter's, Groq's and newer vLLM's;
** when an event has both, reasoning_content wins, for servers that send the
** same text under both names. The reply says which name the text came
** under (field = "reasoning"), for it goes back under the same name: Groq
** refuses a reasoning_content field, DeepSeek wants nothing else. extra_content is Gemini's: its thought signature
** must go back verbatim, so it is kept as the raw JSON text it came as.
** A custom (freeform) tool's call names itself under "custom" and carries
** its input, text that is not JSON, where a function's arguments go; the
** call says custom = true (streamed, its input comes in pieces as the
** arguments do: openai/openai-openapi#576 records the shape the schema
** lacks).
** prompt_cache_hit_tokens is DeepSeek's name for the cached tokens (it
** sends cached_tokens too, some of its proxies do not): the larger counts.
** cache_write_tokens and cost (USD, what the request was billed) are
** OpenRouter's. reasoning_details is OpenRouter's: the structured reasoning (text with
** signatures, encrypted blobs, summaries) it needs back to continue Gemini 3
** and Claude turns; each event's array is kept as its raw text, and the
** reply carries them all as one JSON array of arrays (provider.openai
** merges the streamed pieces, as OpenRouter's own SDK does). Mistral sends
** content as a list of chunks when its models reason: "text" chunks are the
** answer, "thinking" chunks (a list of text pieces, maybe a signature) the
** reasoning, which then goes back as a thinking chunk (the part says so:
** via = "content").
** Every other value is validated and skipped without recursion (a byte stack
** of open containers, 200 deep as tide.json allows). The fields above sit at
** a fixed depth, so the functions that descend into them recurse at most that
** far. An event is applied only once the whole of it has parsed, with the
** same rules the Lua code applied to the decoded table: the last of
** duplicate keys wins, values of the wrong type count as absent, and a
** malformed event anywhere is a MalformedResponse.
**
** The userdata, its methods and sink, the failure it keeps and the reuse of
** spare parsers are the shell's (reply.c); this file is what an OpenAI
** event means. Memory: the assembler, the reasoning and refusal, a scratch
** buffer for the strings of one event and the pending tool-call deltas of
** one event are malloc'ed in the parser. Nothing raises while they are
** inconsistent: the scanner never raises, and Lua values are built only
** after it returns.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "tide.h"
#include "json.h"

static const tide_reply_kind OPENAI;

/* One tool-call delta of the event being scanned. */
typedef struct pending_call {
  int is_table;        /* an object or an array (anything else is an error) */
  int has_index;       /* index is an integral number */
  lua_Integer index;
  int has_id;          /* id is a string */
  span id;
  int has_function;    /* function (or custom) is an object or an array */
  int is_custom;       /* a custom tool's call: custom.{name, input} */
  int has_name;        /* function.name (custom.name) is a string */
  span name;
  int args_kind;       /* V_STRING (scratch), V_OBJECT/V_ARRAY (raw data) */
  span args;
  int has_extra;       /* extra_content is an object (raw data) */
  span extra;
} pending_call;

/* What one event says, once scanned. Reset for every event. */
typedef struct event_state {
  int err_kind;        /* the value of "error", V_NONE when absent */
  span err_raw;        /* its raw text */
  int msg_kind;        /* error.message (or the error itself, a string) */
  span msg;            /* scratch when V_STRING, raw otherwise */
  int code_kind;       /* error.code: V_NUMBER (raw) or V_STRING (scratch) */
  span code;
  int has_usage;
  lua_Integer input, output, cached, reasoning_tokens, cache_hit, cache_write;
  int has_cost;        /* usage.cost is a finite number >= 0 */
  double cost;
  int choice_table;    /* choices[0] is an object */
  int delta_table;     /* choices[0].delta is an object */
  int has_content;
  span content;
  int content_chunks;  /* content was a list of chunks (Mistral): their text
                       ** and thinking are in the stream's ev_text and
                       ** ev_thinking, a signature in ev_sig */
  int has_details;     /* reasoning_details is an array (raw data) */
  int empty_details;   /* ... given as {} */
  span details;
  int has_reasoning_content, has_reasoning, has_refusal; /* strings */
  span reasoning_content, reasoning, refusal;
  int has_calls;       /* delta.tool_calls is an array */
  size_t ncalls;
  int has_finish;
  span finish;
  int has_tier;        /* service_tier is a string (in scratch) */
  span tier;
} event_state;

/* The content chunk being scanned, or one piece of its thinking. */
typedef struct chunk_state {
  int has_type, has_text, has_thinking, has_sig;
  span type, text, sig; /* in scratch */
} chunk_state;

typedef struct openai_stream {
  tide_reply base;  /* the shell's: SSE framing, the text, the failure */
  tide_asm calls;
  tide_buf reasoning; /* every reasoning delta so far */
  tide_buf details;   /* "[" and every reasoning_details array so far, comma-joined */
  tide_buf signature; /* the last thinking chunk's signature */
  tide_buf ev_text, ev_thinking, ev_sig; /* one event's content chunks */
  chunk_state chunk, piece;
  int via_content;    /* the reasoning came as thinking chunks */
  int named_reasoning; /* the last reasoning text came as "reasoning" */
  tide_buf refusal; /* every refusal delta so far */
  tide_buf finish;  /* the last finish_reason */
  tide_buf scratch; /* decoded strings of the current event */
  tide_buf key;     /* an object key that had escapes */
  pending_call *pending;
  size_t npending_cap;
  event_state ev;
  int has_finish;
  int has_usage;
  lua_Integer input, output, cached, reasoning_tokens, cache_write;
  int has_cost;
  double cost;
  int whole;  /* a whole (non-streamed) response: choices[0].message */
  int done;   /* [DONE] seen: nothing after it counts */
} openai_stream;

/* ---------------------------------------------------------- the fields -- */

/* The stream a scan belongs to (the scanner's ud). */
static openai_stream *stream_of(const tide_json *p) { return (openai_stream *)p->ud; }

static pending_call *current_call(tide_json *p) {
  return &stream_of(p)->pending[stream_of(p)->ev.ncalls - 1];
}

static int function_member(tide_json *p, const char *k, size_t kl) {
  pending_call *c = current_call(p);
  if (tide__json_key_is(k, kl, "name")) {
    c->has_name = tide__json_peek(p) == '"';
    if (c->has_name) return tide__json_scratch(p, &c->name);
  } else if (tide__json_key_is(k, kl, "arguments")) {
    int kind = tide__json_kind(tide__json_peek(p));
    c->args_kind = V_NONE;
    if (kind == V_STRING) {
      c->args_kind = V_STRING;
      return tide__json_scratch(p, &c->args);
    }
    if (kind == V_OBJECT || kind == V_ARRAY) {
      /* Some servers send the arguments as JSON rather than as a string of
      ** JSON: keep the text as it came. */
      c->args_kind = kind;
      return tide__json_skip_raw(p, &c->args);
    }
  }
  return tide__json_skip(p);
}

/* A custom (freeform) tool's call: its name, and its input, text that is
** not JSON, in place of the arguments. */
static int custom_member(tide_json *p, const char *k, size_t kl) {
  pending_call *c = current_call(p);
  if (tide__json_key_is(k, kl, "name")) {
    c->has_name = tide__json_peek(p) == '"';
    if (c->has_name) return tide__json_scratch(p, &c->name);
  } else if (tide__json_key_is(k, kl, "input")) {
    c->args_kind = tide__json_peek(p) == '"' ? V_STRING : V_NONE;
    if (c->args_kind == V_STRING) return tide__json_scratch(p, &c->args);
  }
  return tide__json_skip(p);
}

static int call_member(tide_json *p, const char *k, size_t kl) {
  pending_call *c = current_call(p);
  if (tide__json_key_is(k, kl, "index")) {
    c->has_index = tide__json_tointeger(p, &c->index);
  } else if (tide__json_key_is(k, kl, "id")) {
    c->has_id = tide__json_peek(p) == '"';
    if (c->has_id) return tide__json_scratch(p, &c->id);
  } else if (tide__json_key_is(k, kl, "function") && !c->is_custom) {
    /* (beside a custom object, the call is the custom tool's) */
    int kind = tide__json_kind(tide__json_peek(p));
    c->has_function = kind == V_OBJECT || kind == V_ARRAY;
    c->has_name = 0;
    c->args_kind = V_NONE;
    if (kind == V_OBJECT) return tide__json_each_member(p, function_member);
  } else if (tide__json_key_is(k, kl, "custom") && tide__json_peek(p) == '{') {
    /* (a custom that is no object is no call of a custom tool: skipped) */
    c->has_function = c->is_custom = 1;
    c->has_name = 0;
    c->args_kind = V_NONE;
    return tide__json_each_member(p, custom_member);
  } else if (tide__json_key_is(k, kl, "extra_content")) {
    c->has_extra = tide__json_peek(p) == '{';
    if (c->has_extra) return tide__json_skip_raw(p, &c->extra);
  }
  return tide__json_skip(p);
}

static int call_element(tide_json *p, size_t idx) {
  openai_stream *st = stream_of(p);
  (void)idx;
  if (st->ev.ncalls == st->npending_cap) {
    size_t cap = st->npending_cap ? st->npending_cap * 2 : 8;
    if (cap > SIZE_MAX / sizeof *st->pending) return J_NOMEM;
    pending_call *q = realloc(st->pending, cap * sizeof *q);
    if (q == NULL) return J_NOMEM;
    st->pending = q;
    st->npending_cap = cap;
  }
  pending_call *c = &st->pending[st->ev.ncalls++];
  memset(c, 0, sizeof *c);
  int kind = tide__json_kind(tide__json_peek(p));
  c->is_table = kind == V_OBJECT || kind == V_ARRAY;
  if (kind == V_OBJECT) return tide__json_each_member(p, call_member);
  return tide__json_skip(p);
}

/* Whether the scratch string at sp is lit. */
static int scratch_is(const tide_json *p, const span *sp, const char *lit) {
  return tide__json_key_is(p->scratch->p + sp->off, sp->len, lit);
}

static int chunk_member_into(tide_json *p, const char *k, size_t kl, chunk_state *c,
                             tide_json_element_fn thinking) {
  int kind = tide__json_kind(tide__json_peek(p));
  if (tide__json_key_is(k, kl, "type")) {
    c->has_type = kind == V_STRING;
    if (c->has_type) return tide__json_scratch(p, &c->type);
  } else if (tide__json_key_is(k, kl, "text")) {
    c->has_text = kind == V_STRING;
    if (c->has_text) return tide__json_scratch(p, &c->text);
  } else if (thinking && tide__json_key_is(k, kl, "thinking")) {
    c->has_thinking = tide__json_is_table(kind);
    if (kind == V_ARRAY) return tide__json_each_element(p, thinking);
  } else if (thinking && tide__json_key_is(k, kl, "signature")) {
    c->has_sig = kind == V_STRING;
    if (c->has_sig) return tide__json_scratch(p, &c->sig);
  }
  return tide__json_skip(p);
}

static int piece_member(tide_json *p, const char *k, size_t kl) {
  return chunk_member_into(p, k, kl, &stream_of(p)->piece, NULL);
}

/* One piece of a thinking chunk: its text when it is a text piece (a
** reference piece says nothing to keep). */
static int thinking_element(tide_json *p, size_t idx) {
  openai_stream *st = stream_of(p);
  (void)idx;
  if (tide__json_peek(p) != '{') return tide__json_skip(p);
  memset(&st->piece, 0, sizeof st->piece);
  int rc = tide__json_each_member(p, piece_member);
  if (rc != J_OK) return rc;
  chunk_state *c = &st->piece;
  if (c->has_text && (!c->has_type || scratch_is(p, &c->type, "text")) &&
      tide__buf_add(&st->ev_thinking, p->scratch->p + c->text.off, c->text.len))
    return J_NOMEM;
  return J_OK;
}

static int chunk_member(tide_json *p, const char *k, size_t kl) {
  return chunk_member_into(p, k, kl, &stream_of(p)->chunk, thinking_element);
}

/* One chunk of a content list: a text chunk's text goes to ev_text, a
** thinking chunk's pieces to ev_thinking (taken back if the chunk turns out
** to be of another type) and its signature to ev_sig. The type may be left
** out (Mistral's SDK marks it optional): then what the chunk holds says. */
static int content_element(tide_json *p, size_t idx) {
  openai_stream *st = stream_of(p);
  (void)idx;
  if (tide__json_peek(p) != '{') return tide__json_skip(p);
  memset(&st->chunk, 0, sizeof st->chunk);
  size_t mark = st->ev_thinking.len;
  int rc = tide__json_each_member(p, chunk_member);
  if (rc != J_OK) return rc;
  chunk_state *c = &st->chunk;
  const char *scratch = p->scratch->p;
  int thinking = c->has_type ? scratch_is(p, &c->type, "thinking") : c->has_thinking;
  if (!thinking) st->ev_thinking.len = mark;
  if (thinking && c->has_sig) {
    st->ev_sig.len = 0;
    if (tide__buf_add(&st->ev_sig, scratch + c->sig.off, c->sig.len)) return J_NOMEM;
  }
  if (!thinking && c->has_text && (!c->has_type || scratch_is(p, &c->type, "text")) &&
      tide__buf_add(&st->ev_text, scratch + c->text.off, c->text.len))
    return J_NOMEM;
  return J_OK;
}

static int delta_member(tide_json *p, const char *k, size_t kl) {
  event_state *ev = &stream_of(p)->ev;
  if (tide__json_key_is(k, kl, "content")) {
    int c = tide__json_peek(p);
    ev->has_content = c == '"';
    ev->content_chunks = c == '[';
    if (ev->has_content) return tide__json_scratch(p, &ev->content);
    if (ev->content_chunks) {
      openai_stream *st = stream_of(p);
      st->ev_text.len = st->ev_thinking.len = st->ev_sig.len = 0;
      return tide__json_each_element(p, content_element);
    }
  } else if (tide__json_key_is(k, kl, "reasoning_details")) {
    /* an array; {} is taken for an empty one (decoded, the two are alike) */
    int c = tide__json_peek(p);
    ev->has_details = c == '[' || c == '{';
    ev->empty_details = c == '{';
    if (ev->has_details) {
      int rc = tide__json_skip_raw(p, &ev->details);
      if (rc == J_OK && c == '{') {
        const char *raw = p->s + ev->details.off;
        size_t i = 1, n = ev->details.len;
        while (i < n && (raw[i] == ' ' || raw[i] == '\t' || raw[i] == '\n' || raw[i] == '\r')) i++;
        ev->has_details = i == n - 1; /* nothing but white space inside */
      }
      return rc;
    }
  } else if (tide__json_key_is(k, kl, "reasoning_content")) {
    ev->has_reasoning_content = tide__json_peek(p) == '"';
    if (ev->has_reasoning_content) return tide__json_scratch(p, &ev->reasoning_content);
  } else if (tide__json_key_is(k, kl, "reasoning")) {
    ev->has_reasoning = tide__json_peek(p) == '"';
    if (ev->has_reasoning) return tide__json_scratch(p, &ev->reasoning);
  } else if (tide__json_key_is(k, kl, "refusal")) {
    ev->has_refusal = tide__json_peek(p) == '"';
    if (ev->has_refusal) return tide__json_scratch(p, &ev->refusal);
  } else if (tide__json_key_is(k, kl, "tool_calls")) {
    ev->ncalls = 0;
    ev->has_calls = tide__json_peek(p) == '[';
    if (ev->has_calls) return tide__json_each_element(p, call_element);
  }
  return tide__json_skip(p);
}

static int choice_member(tide_json *p, const char *k, size_t kl) {
  event_state *ev = &stream_of(p)->ev;
  if (tide__json_key_is(k, kl, stream_of(p)->whole ? "message" : "delta")) {
    ev->delta_table = tide__json_peek(p) == '{';
    ev->has_content = ev->has_calls = ev->content_chunks = ev->has_details = ev->empty_details = 0;
    ev->has_reasoning_content = ev->has_reasoning = ev->has_refusal = 0;
    ev->ncalls = 0;
    if (ev->delta_table) return tide__json_each_member(p, delta_member);
  } else if (tide__json_key_is(k, kl, "finish_reason")) {
    ev->has_finish = tide__json_peek(p) == '"';
    if (ev->has_finish) return tide__json_scratch(p, &ev->finish);
  }
  return tide__json_skip(p);
}

static int choice_element(tide_json *p, size_t idx) {
  if (idx == 0 && tide__json_peek(p) == '{') {
    stream_of(p)->ev.choice_table = 1;
    return tide__json_each_member(p, choice_member);
  }
  return tide__json_skip(p);
}

static int details_member(tide_json *p, const char *k, size_t kl) {
  if (tide__json_key_is(k, kl, "cached_tokens")) stream_of(p)->ev.cached = tide__json_count(p);
  if (tide__json_key_is(k, kl, "cache_write_tokens")) stream_of(p)->ev.cache_write = tide__json_count(p);
  return tide__json_skip(p);
}

static int output_details_member(tide_json *p, const char *k, size_t kl) {
  if (tide__json_key_is(k, kl, "reasoning_tokens")) stream_of(p)->ev.reasoning_tokens = tide__json_count(p);
  return tide__json_skip(p);
}

static int usage_member(tide_json *p, const char *k, size_t kl) {
  event_state *ev = &stream_of(p)->ev;
  if (tide__json_key_is(k, kl, "prompt_tokens")) {
    ev->input = tide__json_count(p);
  } else if (tide__json_key_is(k, kl, "completion_tokens")) {
    ev->output = tide__json_count(p);
  } else if (tide__json_key_is(k, kl, "prompt_tokens_details")) {
    ev->cached = ev->cache_write = 0;
    if (tide__json_peek(p) == '{') return tide__json_each_member(p, details_member);
  } else if (tide__json_key_is(k, kl, "prompt_cache_hit_tokens")) {
    ev->cache_hit = tide__json_count(p);
  } else if (tide__json_key_is(k, kl, "cost")) {
    span raw;
    ev->has_cost = 0;
    if (tide__json_kind(tide__json_peek(p)) != V_NUMBER) return tide__json_skip(p);
    int rc = tide__json_skip_raw(p, &raw);
    if (rc != J_OK) return rc;
    /* (the document is followed by a byte that ends a number) */
    ev->cost = strtod(p->s + raw.off, NULL);
    ev->has_cost = isfinite(ev->cost) && ev->cost >= 0;
    return J_OK;
  } else if (tide__json_key_is(k, kl, "completion_tokens_details")) {
    ev->reasoning_tokens = 0;
    if (tide__json_peek(p) == '{') return tide__json_each_member(p, output_details_member);
  }
  return tide__json_skip(p);
}

static int error_member(tide_json *p, const char *k, size_t kl) {
  event_state *ev = &stream_of(p)->ev;
  if (tide__json_key_is(k, kl, "message")) {
    ev->msg_kind = tide__json_kind(tide__json_peek(p));
    if (ev->msg_kind == V_STRING) return tide__json_scratch(p, &ev->msg);
    return tide__json_skip_raw(p, &ev->msg);
  }
  if (tide__json_key_is(k, kl, "code")) {
    ev->code_kind = tide__json_kind(tide__json_peek(p));
    if (ev->code_kind == V_STRING) return tide__json_scratch(p, &ev->code);
    if (ev->code_kind != V_NUMBER) ev->code_kind = V_NONE;
    return tide__json_skip_raw(p, &ev->code);
  }
  return tide__json_skip(p);
}

static int root_member(tide_json *p, const char *k, size_t kl) {
  event_state *ev = &stream_of(p)->ev;
  if (tide__json_key_is(k, kl, "error")) {
    size_t start = p->i;
    int rc;
    ev->err_kind = tide__json_kind(tide__json_peek(p));
    ev->msg_kind = ev->code_kind = V_NONE;
    if (ev->err_kind == V_OBJECT) {
      rc = tide__json_each_member(p, error_member);
    } else if (ev->err_kind == V_STRING) {
      ev->msg_kind = V_STRING;
      rc = tide__json_scratch(p, &ev->msg);
    } else {
      rc = tide__json_skip(p);
    }
    ev->err_raw.off = start;
    ev->err_raw.len = p->i - start;
    return rc;
  }
  if (tide__json_key_is(k, kl, "service_tier")) {
    /* the tier that served the request, which may not be the one asked
    ** for: what it cost goes by it (tide.prices' service_tiers) */
    ev->has_tier = tide__json_peek(p) == '"';
    if (ev->has_tier) return tide__json_scratch(p, &ev->tier);
  } else if (tide__json_key_is(k, kl, "usage")) {
    int kind = tide__json_kind(tide__json_peek(p));
    ev->has_usage = kind == V_OBJECT || kind == V_ARRAY;
    ev->input = ev->output = ev->cached = ev->reasoning_tokens = ev->cache_hit = ev->cache_write = 0;
    ev->has_cost = 0;
    if (kind == V_OBJECT) return tide__json_each_member(p, usage_member);
  } else if (tide__json_key_is(k, kl, "choices")) {
    ev->choice_table = ev->delta_table = 0;
    ev->has_content = ev->has_calls = ev->has_finish = ev->content_chunks = 0;
    ev->has_details = ev->empty_details = 0;
    ev->has_reasoning_content = ev->has_reasoning = ev->has_refusal = 0;
    ev->ncalls = 0;
    if (tide__json_peek(p) == '[') return tide__json_each_element(p, choice_element);
  }
  return tide__json_skip(p);
}

/* -------------------------------------------------------------- events -- */

/* The error for an "error" value inside the stream, as openai.lua's
** embedded_error builds it; body is the event's data (the Lua side cuts it
** to the error body excerpt). */
static void push_embedded_error(lua_State *L, openai_stream *st,
                                const tide_sse_event *e) {
  const event_state *ev = &st->ev;
  const char *scratch = st->scratch.p ? st->scratch.p : "";
  luaL_Buffer b;
  int has_code = 0, rate_limited = 0;
  if (ev->err_kind == V_OBJECT && ev->code_kind != V_NONE) {
    if (ev->code_kind == V_STRING)
      lua_pushlstring(L, scratch + ev->code.off, ev->code.len);
    else
      lua_pushlstring(L, e->data + ev->code.off, ev->code.len);
    /* tonumber(code), then math.tointeger(code) or code */
    if (lua_stringtonumber(L, lua_tostring(L, -1)) != 0) {
      lua_remove(L, -2);
      if (!lua_isinteger(L, -1)) {
        lua_Integer n;
        if (lua_numbertointeger(lua_tonumber(L, -1), &n)) {
          lua_pop(L, 1);
          lua_pushinteger(L, n);
        }
      }
      has_code = 1;
      rate_limited = lua_tonumber(L, -1) == 429;
    } else {
      lua_pop(L, 1);
    }
  }
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "openai returned an error: ");
  if (ev->msg_kind == V_STRING) {
    tide__push_excerpt(L, scratch + ev->msg.off, ev->msg.len, TIDE_MESSAGE_MAX);
  } else if (ev->err_kind == V_OBJECT && ev->msg_kind != V_NONE) {
    tide__push_excerpt(L, e->data + ev->msg.off, ev->msg.len, TIDE_MESSAGE_MAX);
  } else if (ev->err_kind == V_OBJECT || ev->err_kind == V_ARRAY) {
    lua_pushliteral(L, "nil");
  } else {
    tide__push_excerpt(L, e->data + ev->err_raw.off, ev->err_raw.len, TIDE_MESSAGE_MAX);
  }
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  tide__push_error_from(L, rate_limited ? "RateLimited" : "ProviderError", "");
  if (has_code) {
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "status");
    lua_remove(L, -2); /* the code */
  }
  lua_pushlstring(L, e->data, e->data_len);
  lua_setfield(L, -2, "body");
}

/* Applies the scanned event, in the order openai.lua's Stream:event did.
** Returns 0, or 1 with an error pushed. */
static int apply_event(tide_reply_feed *fc, const tide_sse_event *e) {
  lua_State *L = fc->L;
  openai_stream *st = (openai_stream *)fc->r;
  event_state *ev = &st->ev;
  if (ev->err_kind != V_NONE && ev->err_kind != V_NULL) {
    push_embedded_error(L, st, e);
    return 1;
  }
  if (ev->has_usage) {
    st->has_usage = 1;
    st->input = ev->input;
    st->output = ev->output;
    st->cached = ev->cached > ev->cache_hit ? ev->cached : ev->cache_hit;
    st->reasoning_tokens = ev->reasoning_tokens;
    st->cache_write = ev->cache_write;
    st->has_cost = ev->has_cost;
    st->cost = ev->cost;
  }
  const char *scratch = st->scratch.p ? st->scratch.p : "";
  if (ev->has_tier) tide__reply_tier(&st->base, scratch + ev->tier.off, ev->tier.len);
  if (!ev->choice_table) return 0;
  if (ev->delta_table) {
    const span *r = ev->has_reasoning_content ? &ev->reasoning_content
                    : ev->has_reasoning       ? &ev->reasoning
                                              : NULL;
    if (r && r->len > 0) {
      if (tide__buf_add(&st->reasoning, scratch + r->off, r->len))
        return fc->nomem = 1, 0;
      tide__reply_reasoning(fc, scratch + r->off, r->len);
      st->named_reasoning = r == &ev->reasoning;
    }
    if (ev->content_chunks) { /* Mistral's thinking chunks */
      if (st->ev_thinking.len > 0) {
        if (tide__buf_add(&st->reasoning, st->ev_thinking.p, st->ev_thinking.len))
          return fc->nomem = 1, 0;
        tide__reply_reasoning(fc, st->ev_thinking.p, st->ev_thinking.len);
        st->via_content = 1;
      }
      if (st->ev_sig.len > 0) {
        st->signature.len = 0;
        if (tide__buf_add(&st->signature, st->ev_sig.p, st->ev_sig.len)) return fc->nomem = 1, 0;
        st->via_content = 1;
      }
    }
    if (ev->has_details &&
        (tide__buf_add(&st->details, st->details.len ? "," : "[", 1) ||
         (ev->empty_details ? tide__buf_add(&st->details, "[]", 2)
                            : tide__buf_add(&st->details, e->data + ev->details.off, ev->details.len))))
      return fc->nomem = 1, 0;
    if (ev->has_refusal && ev->refusal.len > 0 &&
        tide__buf_add(&st->refusal, scratch + ev->refusal.off, ev->refusal.len))
      return fc->nomem = 1, 0;
    if (ev->has_content && tide__reply_text(fc, scratch + ev->content.off, ev->content.len))
      return 0; /* out of memory: fc->nomem says so */
    if (ev->content_chunks && st->ev_text.len > 0 &&
        tide__reply_text(fc, st->ev_text.p, st->ev_text.len))
      return 0;
    for (size_t i = 0; ev->has_calls && i < ev->ncalls; i++) {
      const pending_call *c = &st->pending[i];
      if (!c->is_table) {
        tide__push_malformed(L, NULL, 0, "openai stream tool-call delta is not an object");
        return 1;
      }
      const char *id = NULL, *name = NULL, *args = NULL;
      size_t idl = 0, namel = 0, argsl = 0;
      if (c->has_id) id = scratch + c->id.off, idl = c->id.len;
      if (c->has_function && c->has_name)
        name = scratch + c->name.off, namel = c->name.len;
      /* A whole response's calls are in order; an index there means
      ** nothing (openai.lua's _parse went by position). A streamed delta
      ** without one is routed by what it carries. */
      lua_Integer index = st->whole     ? (lua_Integer)i
                          : c->has_index ? c->index
                                         : tide__asm_route(&st->calls, id, idl, name, namel);
      if (index < 0) {
        tide__push_malformed(L, NULL, 0, "openai stream tool-call index is negative");
        return 1;
      }
      if (c->has_function && c->args_kind == V_STRING)
        args = scratch + c->args.off, argsl = c->args.len;
      else if (c->has_function && c->args_kind != V_NONE)
        args = e->data + c->args.off, argsl = c->args.len;
      int rc = tide__asm_add(&st->calls, index, id, idl, name, namel, args, argsl);
      if (rc == 0 && c->is_custom) tide__asm_custom(&st->calls, index);
      if (rc == 0 && c->has_extra)
        rc = tide__asm_extra(&st->calls, index, e->data + c->extra.off, c->extra.len);
      if (rc == TIDE_ASM_NOMEM) return fc->nomem = 1, 0;
      if (rc == TIDE_ASM_TOO_LARGE) {
        tide__push_asm_too_large(L, &st->calls);
        return 1;
      }
      tide__reply_tool_input(fc, index, id, idl, name, namel, args, argsl);
    }
  }
  if (ev->has_finish) {
    /* OpenRouter ends a reply whose upstream failed mid-way with
    ** finish_reason "error" (the error itself, when it says one, in the
    ** event): the text so far is no answer. */
    if (tide__json_key_is(scratch + ev->finish.off, ev->finish.len, "error")) {
      tide__push_error(L, "ProviderError", "%s", "openai reply finished with an error (finish_reason \"error\")");
      lua_pushlstring(L, e->data, e->data_len);
      lua_setfield(L, -2, "body");
      lua_pushlstring(L, st->base.text.p ? st->base.text.p : "", st->base.text.len);
      lua_setfield(L, -2, "partial_text");
      return 1;
    }
    st->finish.len = 0;
    if (tide__buf_add(&st->finish, scratch + ev->finish.off, ev->finish.len))
      return fc->nomem = 1, 0;
    st->has_finish = 1;
  }
  return 0;
}

/* The kind's event: one SSE event. Returns 1 with an error on the Lua
** stack, or 0 (out of memory: fc->nomem). */
static int openai_event(tide_reply_feed *fc, const tide_sse_event *e) {
  openai_stream *st = (openai_stream *)fc->r;
  if (st->done) return 0; /* nothing counts after [DONE] */
  if (e->done) {
    st->done = 1;
    return 0;
  }
  tide_json p = {e->data, e->data_len, 0, 0, NULL, 0, &st->scratch, &st->key, st};
  int object;
  memset(&st->ev, 0, sizeof st->ev);
  st->scratch.len = 0;
  int kind, rc = tide__json_scan_root(&p, root_member, &kind);
  object = tide__json_is_table(kind);
  if (rc == J_NOMEM) return fc->nomem = 1, 0;
  if (rc == J_SYNTAX) {
    tide__push_malformed(fc->L, e->data, e->data_len,
                         "openai stream event is not valid JSON (%s at character %I)",
                         p.err, (lua_Integer)p.err_at + 1);
    return 1;
  }
  if (!object) {
    tide__push_malformed(fc->L, e->data, e->data_len, "openai stream event is not a JSON object");
    return 1;
  }
  return apply_event(fc, e);
}

/* -------------------------------------------------------------- parser -- */

/* core.openai_stream([max_bytes]) -> stream */
static int l_openai_stream(lua_State *L) {
  tide__reply_new(L, &OPENAI, tide__check_max(L, 1, TIDE_REPLY_DEFAULT_MAX));
  return 1;
}


/* The stop reason as the session reads it: provider._stop's mapping. */
static const char *const STOPS[][2] = {
    {"stop", "stop"},           {"end_turn", "stop"},
    {"stop_sequence", "stop"},  {"tool_calls", "tool_calls"},
    {"function_call", "tool_calls"}, {"tool_use", "tool_calls"},
    {"length", "length"},       {"max_tokens", "length"},
    {"content_filter", "content_filter"}, {"refusal", "refusal"},
};

/* The neutral stop reason, as reply.lua's stop(raw, has_calls, refused):
** a refusal says "refusal" whatever the finish reason; a reply with calls
** that says "stop" (Gemini's endpoint does) stopped for its calls. */
static void push_stop(lua_State *L, const tide_buf *raw, int has_calls, int refused) {
  size_t len = raw->len;
  const char *p = raw->p ? raw->p : "";
  if (refused) {
    lua_pushliteral(L, "refusal");
    return;
  }
  for (size_t i = 0; i < sizeof STOPS / sizeof STOPS[0]; i++) {
    if (strlen(STOPS[i][0]) == len && memcmp(STOPS[i][0], p, len) == 0) {
      if (has_calls && strcmp(STOPS[i][1], "stop") == 0)
        lua_pushliteral(L, "tool_calls");
      else
        lua_pushstring(L, STOPS[i][1]);
      return;
    }
  }
  lua_pushlstring(L, p, len);
}

/* Pushes the reply as the session gets it: text, finished tool calls,
** reasoning parts and refusal when there were any, usage (zeros when the
** server sent none), and the stop reason mapped and as sent. */
static void push_reply(lua_State *L, openai_stream *st) {
  /* Room for what the provider adds (ttfb_ms, attempts): no rehash. */
  lua_createtable(L, 0, 10);
  lua_pushlstring(L, st->base.text.p ? st->base.text.p : "", st->base.text.len);
  lua_setfield(L, -2, "text");
  tide__asm_push_finished(L, &st->calls);
  lua_setfield(L, -2, "tool_calls");
  int text_part = st->reasoning.len > 0 || st->signature.len > 0;
  if (text_part || st->details.len > 0) {
    int n = 0;
    lua_createtable(L, text_part + (st->details.len > 0), 0);
    if (text_part) {
      lua_createtable(L, 0, 5);
      lua_pushliteral(L, "text");
      lua_setfield(L, -2, "type");
      lua_pushlstring(L, st->reasoning.p ? st->reasoning.p : "", st->reasoning.len);
      lua_setfield(L, -2, "text");
      if (st->signature.len > 0) {
        lua_pushlstring(L, st->signature.p, st->signature.len);
        lua_setfield(L, -2, "signature");
      }
      if (st->via_content) {
        lua_pushliteral(L, "content");
        lua_setfield(L, -2, "via");
      }
      if (st->named_reasoning) {
        lua_pushliteral(L, "reasoning");
        lua_setfield(L, -2, "field");
      }
      lua_pushliteral(L, "openai");
      lua_setfield(L, -2, "provider");
      lua_rawseti(L, -2, ++n);
    }
    if (st->details.len > 0) {
      /* every event's array, as one array of arrays: provider.openai
      ** merges them (Provider:_finish_reply) */
      lua_createtable(L, 0, 3);
      lua_pushliteral(L, "details");
      lua_setfield(L, -2, "type");
      lua_pushlstring(L, st->details.p, st->details.len);
      lua_pushliteral(L, "]");
      lua_concat(L, 2);
      lua_setfield(L, -2, "data");
      lua_pushliteral(L, "openai");
      lua_setfield(L, -2, "provider");
      lua_rawseti(L, -2, ++n);
    }
    lua_setfield(L, -2, "reasoning");
  }
  if (st->refusal.len > 0) {
    lua_pushlstring(L, st->refusal.p, st->refusal.len);
    lua_setfield(L, -2, "refusal");
  }
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, st->has_usage ? st->input : 0);
  lua_setfield(L, -2, "input");
  lua_pushinteger(L, st->has_usage ? st->output : 0);
  lua_setfield(L, -2, "output");
  lua_pushinteger(L, st->has_usage ? st->cached : 0);
  lua_setfield(L, -2, "cached");
  lua_pushinteger(L, st->has_usage ? st->cache_write : 0); /* OpenRouter's, else 0 */
  lua_setfield(L, -2, "cache_write");
  lua_pushinteger(L, st->has_usage ? st->reasoning_tokens : 0);
  lua_setfield(L, -2, "reasoning");
  if (st->has_usage && st->has_cost) {
    lua_pushnumber(L, st->cost);
    lua_setfield(L, -2, "cost_usd");
  }
  tide__reply_push_tier(L, &st->base);
  lua_setfield(L, -2, "usage");
  if (st->has_finish || st->refusal.len > 0) {
    if (st->has_finish) {
      lua_pushlstring(L, st->finish.p ? st->finish.p : "", st->finish.len);
      lua_setfield(L, -2, "stop_raw");
    }
    push_stop(L, &st->finish, st->calls.n > 0, st->refusal.len > 0);
    lua_setfield(L, -2, "stop");
  }
}

/* The kind's finish: the reply once the stream ended. */
static int openai_finish(lua_State *L, tide_reply *r) {
  openai_stream *st = (openai_stream *)r;
  /* A stream that ends cleanly after its finish reason is whole without
  ** [DONE] (older llama.cpp, ik_llama.cpp and TGI send none); the usage
  ** event, when asked for, comes before the end all the same. */
  if (!st->done && !st->has_finish) {
    lua_pushnil(L);
    tide__push_error(L, "MalformedResponse", "%s",
                     "openai stream ended before its finish_reason and [DONE]");
    lua_pushlstring(L, r->text.p ? r->text.p : "", r->text.len);
    lua_setfield(L, -2, "partial_text");
    return 2;
  }
  push_reply(L, st);
  return 1;
}

/* The kind's free: what the parser holds beyond the shell's part. */
static void openai_free(tide_reply *r) {
  openai_stream *st = (openai_stream *)r;
  tide__asm_free(&st->calls);
  tide__buf_free(&st->reasoning);
  tide__buf_free(&st->details);
  tide__buf_free(&st->signature);
  tide__buf_free(&st->ev_text);
  tide__buf_free(&st->ev_thinking);
  tide__buf_free(&st->ev_sig);
  tide__buf_free(&st->refusal);
  tide__buf_free(&st->finish);
  tide__buf_free(&st->scratch);
  tide__buf_free(&st->key);
  free(st->pending);
  st->pending = NULL;
  st->npending_cap = 0;
}

/* The kind's reset: emptied for the next reply, its buffers (those up to
** keep bytes) and its pending-call slots kept. */
static void openai_reset(tide_reply *r, size_t keep, size_t max) {
  openai_stream *st = (openai_stream *)r;
  tide__asm_reset(&st->calls, keep);
  st->calls.max = max;
  tide__buf_keep(&st->reasoning, keep);
  tide__buf_keep(&st->details, keep);
  tide__buf_keep(&st->signature, keep);
  tide__buf_keep(&st->ev_text, keep);
  tide__buf_keep(&st->ev_thinking, keep);
  tide__buf_keep(&st->ev_sig, keep);
  tide__buf_keep(&st->refusal, keep);
  tide__buf_keep(&st->finish, keep);
  tide__buf_keep(&st->scratch, keep);
  tide__buf_keep(&st->key, keep);
  memset(&st->ev, 0, sizeof st->ev);
  st->has_finish = st->has_usage = 0;
  st->input = st->output = st->cached = st->reasoning_tokens = st->cache_write = 0;
  st->has_cost = 0;
  st->cost = 0;
  st->whole = st->done = st->via_content = st->named_reasoning = 0;
}

static const tide_reply_kind OPENAI = {
    "tide.openai_stream", "openai stream", sizeof(openai_stream),
    openai_event, openai_finish, openai_reset, openai_free};

/* core.openai_parse(body | req[, max_bytes]) -> reply | nil
** A whole (non-streamed) chat-completions response, scanned in place as a
** stream event is (choices[0].message in place of .delta): the reply table
** of s:finish(), without decoding the body into tables first. Gives nil for
** anything but a plain reply (invalid JSON, an error object, no message, a
** call without a function or with arguments that are not a string, a cap
** exceeded): the caller's full decoder then says what is wrong. */
static int openai_parse(lua_State *L, const char *s, size_t n, size_t max);

static int l_openai_parse(lua_State *L) {
  size_t n;
  /* the body: a string, or read in place from a finished http_post */
  const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n)
                                                : tide__http_body(L, 1, &n);
  if (s == NULL) luaL_typeerror(L, 1, "string or http request");
  size_t max = tide__check_max(L, 2, TIDE_REPLY_DEFAULT_MAX);
  openai_parse(L, s, n, max);
  return 1;
}

static int openai_parse(lua_State *L, const char *s, size_t n, size_t max) {
  /* The state's one parser of whole replies (the shell's): the caller keeps
  ** the body anchored. */
  int top = lua_gettop(L);
  openai_stream *st = (openai_stream *)tide__reply_whole(L, &OPENAI, max);
  st->whole = 1;
  tide_json p = {s, n, 0, 0, NULL, 0, &st->scratch, &st->key, st};
  int object, ok = 0;
  int kind, rc = tide__json_scan_root(&p, root_member, &kind);
  object = tide__json_is_table(kind);
  if (rc == J_NOMEM) {
    openai_free(&st->base);
    return luaL_error(L, "not enough memory");
  }
  event_state *ev = &st->ev;
  if (rc == J_OK && object && (ev->err_kind == V_NONE || ev->err_kind == V_NULL) &&
      ev->choice_table && ev->delta_table) {
    ok = 1;
    for (size_t i = 0; ev->has_calls && i < ev->ncalls; i++) {
      const pending_call *c = &st->pending[i];
      if (!c->is_table || !c->has_function ||
          (c->args_kind != V_STRING && c->args_kind != V_NONE)) {
        ok = 0;
        break;
      }
    }
  }
  if (ok) {
    tide_reply_feed fc = {L, &st->base, 0, 0, 0, 0, 0, 0, 0};
    tide_sse_event e = {0};
    e.data = s;
    e.data_len = n;
    if (apply_event(&fc, &e)) ok = 0; /* its error is on the stack: dropped */
    if (fc.nomem) {
      openai_free(&st->base);
      return luaL_error(L, "not enough memory");
    }
  }
  lua_settop(L, top); /* an error apply_event left */
  if (ok) {
    st->done = 1;
    push_reply(L, st);
  } else {
    lua_pushnil(L);
  }
  tide__reply_whole_done(&st->base);
  return ok;
}

/* ------------------------------------------------------------ messages -- */

/* The assistant message with tool calls and the tool results, written as
** provider.openai's encode_message gives them (keys sorted, as the canonical
** encoder would order them): a session encodes every such message of its
** tool loop, so these skip building the table tree lua-cjson would want. */

static const char CALL_EXTRA[] = "{\"extra_content\":";
static const char CALL_FUNCTION[] = ",\"function\":{\"arguments\":";
static const char CALL_OPEN[] = "{\"function\":{\"arguments\":";
static const char CALL_NAME[] = ",\"name\":";
static const char CALL_ID[] = "},\"id\":";
static const char CALL_CLOSE[] = ",\"type\":\"function\"}";
static const char CUSTOM_OPEN[] = "{\"custom\":{\"input\":";
static const char CUSTOM_CLOSE[] = ",\"type\":\"custom\"}";
static const char ASSISTANT_OPEN[] = "{\"content\":";
static const char ASSISTANT_REASONING[] = ",\"reasoning_content\":";
static const char ASSISTANT_REASONING_NAMED[] = ",\"reasoning\":";
static const char ASSISTANT_DETAILS[] = ",\"reasoning_details\":";
static const char ASSISTANT_CALLS[] = ",\"role\":\"assistant\",\"tool_calls\":[";
static const char RESULT_OPEN[] = "{\"content\":";
static const char RESULT_ID[] = ",\"role\":\"tool\",\"tool_call_id\":";

/* One call's strings. The call tables keep them alive. */
typedef struct call_strings {
  const char *a, *nm, *id, *x;
  size_t al, nl, il, xl;
  int custom; /* a custom tool's call: a its input */
} call_strings;

/* Call i of the list at idx; 0 when it is not a table of three strings, or
** its extra_content is there but not the JSON text of an object (a table
** is for the Lua side to encode). */
static int call_strings_of(lua_State *L, int idx, lua_Integer i, call_strings *c) {
  if (lua_rawgeti(L, idx, i) != LUA_TTABLE) {
    lua_pop(L, 1);
    return 0;
  }
  int t = lua_gettop(L);
  c->a = tide__field_str(L, t, "arguments", &c->al);
  c->nm = tide__field_str(L, t, "name", &c->nl);
  c->id = tide__field_str(L, t, "id", &c->il);
  int xt = lua_getfield(L, t, "extra_content");
  c->x = xt == LUA_TSTRING ? lua_tolstring(L, -1, &c->xl) : NULL;
  c->custom = lua_getfield(L, t, "custom") == LUA_TBOOLEAN && lua_toboolean(L, -1);
  lua_pop(L, 3);
  if (xt != LUA_TNIL && (c->x == NULL || !tide__json_is_object(c->x, c->xl))) return 0;
  return c->a && c->nm && c->id;
}

/* core.openai_assistant_wire(content, calls[, reasoning[, details[, content_json[, field]]]])
**   -> string | nil
** The assistant message with tool calls ("" content counts as none and is
** sent as null), with the reasoning text as reasoning_content when given
** and not "" (DeepSeek rejects a tool-call follow-up without it), or as
** reasoning when field says so (Groq refuses reasoning_content),
** OpenRouter's reasoning_details (JSON text, verbatim) when given, and each
** call's extra_content (raw JSON text) in front of its function, verbatim
** (a call with custom = true goes as a custom tool's, its arguments the
** input: {"custom":{"input","name"},"id","type":"custom"});
** content_json (JSON text: Mistral's list of chunks) stands for the content
** when given. nil when a call is not a table of string id, name and
** arguments (and JSON-text extra_content), or there is none (the provider
** makes plain calls and asks again). Two passes: the first sizes the
** string, the second writes it. */
static int l_assistant_wire(lua_State *L) {
  size_t tl = 0, rl = 0, dl = 0, cl = 0;
  const char *text = lua_isnil(L, 1) ? "" : luaL_checklstring(L, 1, &tl);
  luaL_checktype(L, 2, LUA_TTABLE);
  const char *reasoning = luaL_optlstring(L, 3, "", &rl);
  const char *details = luaL_optlstring(L, 4, NULL, &dl);
  const char *cjson = luaL_optlstring(L, 5, NULL, &cl);
  const char *field = luaL_optstring(L, 6, "reasoning_content");
  const char *rkey = ASSISTANT_REASONING;
  size_t rkl = TIDE_LIT(ASSISTANT_REASONING);
  if (strcmp(field, "reasoning") == 0) {
    rkey = ASSISTANT_REASONING_NAMED;
    rkl = TIDE_LIT(ASSISTANT_REASONING_NAMED);
  } else if (strcmp(field, "reasoning_content") != 0) {
    return luaL_argerror(L, 6, "\"reasoning_content\" or \"reasoning\" expected");
  }
  lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
  if (n < 1) return 0;
  size_t total = TIDE_LIT(ASSISTANT_OPEN) + TIDE_LIT(ASSISTANT_CALLS) + 2;
  total += cjson ? cl : tl > 0 ? tide__json_size_quoted(text, tl) : 4;
  if (rl > 0) total += rkl + tide__json_size_quoted(reasoning, rl);
  if (details) total += TIDE_LIT(ASSISTANT_DETAILS) + dl;
  for (lua_Integer i = 1; i <= n; i++) {
    call_strings c;
    if (!call_strings_of(L, 2, i, &c)) return 0;
    total += (i > 1) + TIDE_LIT(CALL_NAME) + TIDE_LIT(CALL_ID) + tide__json_size_quoted(c.a, c.al) +
             tide__json_size_quoted(c.nm, c.nl) + tide__json_size_quoted(c.id, c.il);
    if (c.custom)
      total += TIDE_LIT(CUSTOM_OPEN) + TIDE_LIT(CUSTOM_CLOSE);
    else if (c.x)
      total += TIDE_LIT(CALL_EXTRA) + c.xl + TIDE_LIT(CALL_FUNCTION) + TIDE_LIT(CALL_CLOSE);
    else
      total += TIDE_LIT(CALL_OPEN) + TIDE_LIT(CALL_CLOSE);
  }
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, total);
  size_t k = 0;
  tide__json_put(out, &k, ASSISTANT_OPEN, TIDE_LIT(ASSISTANT_OPEN));
  if (cjson)
    tide__json_put(out, &k, cjson, cl);
  else if (tl > 0)
    tide__json_put_quoted(out, &k, text, tl);
  else
    tide__json_put(out, &k, "null", 4);
  if (rl > 0) {
    tide__json_put(out, &k, rkey, rkl);
    tide__json_put_quoted(out, &k, reasoning, rl);
  }
  if (details) {
    tide__json_put(out, &k, ASSISTANT_DETAILS, TIDE_LIT(ASSISTANT_DETAILS));
    tide__json_put(out, &k, details, dl);
  }
  tide__json_put(out, &k, ASSISTANT_CALLS, TIDE_LIT(ASSISTANT_CALLS));
  for (lua_Integer i = 1; i <= n; i++) {
    call_strings c = {NULL, NULL, NULL, NULL, 0, 0, 0, 0, 0};
    call_strings_of(L, 2, i, &c); /* checked above */
    if (i > 1) out[k++] = ',';
    if (c.custom) {
      tide__json_put(out, &k, CUSTOM_OPEN, TIDE_LIT(CUSTOM_OPEN));
    } else if (c.x) {
      tide__json_put(out, &k, CALL_EXTRA, TIDE_LIT(CALL_EXTRA));
      tide__json_put(out, &k, c.x, c.xl);
      tide__json_put(out, &k, CALL_FUNCTION, TIDE_LIT(CALL_FUNCTION));
    } else {
      tide__json_put(out, &k, CALL_OPEN, TIDE_LIT(CALL_OPEN));
    }
    tide__json_put_quoted(out, &k, c.a, c.al);
    tide__json_put(out, &k, CALL_NAME, TIDE_LIT(CALL_NAME));
    tide__json_put_quoted(out, &k, c.nm, c.nl);
    tide__json_put(out, &k, CALL_ID, TIDE_LIT(CALL_ID));
    tide__json_put_quoted(out, &k, c.id, c.il);
    if (c.custom)
      tide__json_put(out, &k, CUSTOM_CLOSE, TIDE_LIT(CUSTOM_CLOSE));
    else
      tide__json_put(out, &k, CALL_CLOSE, TIDE_LIT(CALL_CLOSE));
  }
  out[k++] = ']';
  out[k++] = '}';
  luaL_pushresultsize(&b, k);
  return 1;
}

/* core.openai_results_wire(results) -> string | nil
** A tool message's results: one role "tool" element per result,
** comma-joined; nil when a result is not a table of string id and content,
** or there is none. */
static int l_results_wire(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
  if (n < 1) return 0;
  size_t total = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    const char *c = NULL, *id = NULL;
    size_t cl = 0, il = 0;
    if (!tide__result_strings(L, 1, i, &c, &cl, &id, &il, NULL)) return 0;
    total += (i > 1) + TIDE_LIT(RESULT_OPEN) + TIDE_LIT(RESULT_ID) + 1 + tide__json_size_quoted(c, cl) + tide__json_size_quoted(id, il);
  }
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, total);
  size_t k = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    const char *c = NULL, *id = NULL;
    size_t cl = 0, il = 0;
    tide__result_strings(L, 1, i, &c, &cl, &id, &il, NULL); /* checked above */
    if (i > 1) out[k++] = ',';
    tide__json_put(out, &k, RESULT_OPEN, TIDE_LIT(RESULT_OPEN));
    tide__json_put_quoted(out, &k, c, cl);
    tide__json_put(out, &k, RESULT_ID, TIDE_LIT(RESULT_ID));
    tide__json_put_quoted(out, &k, id, il);
    out[k++] = '}';
  }
  luaL_pushresultsize(&b, k);
  return 1;
}

/// Registers core.openai_stream, core.openai_parse and the message encoders
/// core.openai_assistant_wire and core.openai_results_wire into the module
/// table at the top of the stack, and (re)creates the "tide.openai_stream"
/// metatable with the reply shell's methods and sink.
void tide__open_openai(lua_State *L) {
  static const luaL_Reg fns[] = {{"openai_stream", l_openai_stream},
                                 {"openai_parse", l_openai_parse},
                                 {"openai_assistant_wire", l_assistant_wire},
                                 {"openai_results_wire", l_results_wire},
                                 {NULL, NULL}};
  tide__reply_register(L, &OPENAI);
  luaL_setfuncs(L, fns, 0);
}
