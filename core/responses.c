/*
** responses.c -- the OpenAI Responses API wire format in C (POST
** /responses): the streamed reply parser (a kind of the reply shell,
** reply.c) and the whole-reply scanner.
**
** A Responses reply is a list of output items (reasoning, message,
** function_call, and server-side tools' items tide neither runs nor sends
** back). A stream announces each item, streams its pieces, repeats it whole
** in response.output_item.done, and ends with response.completed (or
** .incomplete) carrying the whole response again: the request's
** instructions and tools echoed, every item, the usage. Decoding that last
** event into tables was most of a round trip's cost in Lua; here its JSON
** is scanned in place (json.c), the echoed request skipped without
** building anything, and only the fields below are decoded.
**
** What is read, and from where:
**   text       the response.output_text.delta events (what on_delta hears;
**              a whole reply: its message items' output_text parts)
**   reasoning  response.reasoning_summary_text.delta and
**              response.reasoning_text.delta go to a listener, if any, one
**              string per event, and nowhere else; the reply's reasoning
**              parts come from the reasoning items
**   items      the finished response's output (or, when it has none, the
**              items of the response.output_item.done events, kept raw
**              until then): message content parts output_text {text} and
**              refusal {refusal}; function_call {call_id, name,
**              arguments}; custom_tool_call {call_id, name, input} (a
**              custom tool's: the call says custom = true, its input the
**              arguments); reasoning {id, encrypted_content, summary[].text}
**   the rest   status, service_tier, incomplete_details.reason, error.{code, type,
**              message}, usage.{input_tokens, output_tokens,
**              input_tokens_details.cached_tokens,
**              output_tokens_details.reasoning_tokens}; an error event's
**              code, type and message
** Events the reply takes nothing from are skipped by their SSE event name,
** without looking at their data (the streamed argument deltas among them:
** the finished item carries the whole arguments). Events without a name are
** scanned and told apart by their "type".
**
** The rules are those of the Lua parser this replaces (kept as the
** reference in spec/support/reference.lua, with a differential spec): a
** field of the wrong type counts as absent, the last of duplicate keys
** wins, an item tide could not send back (a function_call without call_id
** or name, a reasoning item without id) is a MalformedResponse, and so is
** an event that is not a JSON object. Because keys may come in any order
** (an item's "type" after its content), an item's fields are gathered
** first and the item is taken once it has been scanned whole.
**
** Memory: every buffer is a malloc'ed part of the parser (reply.c keeps it
** for the next reply). Nothing raises while they are inconsistent: the
** scanner never raises, and Lua values are built only after it returns.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"
#include "json.h"

/* The provider tag of the reasoning parts this wire format makes (and
** alone sends back): provider/responses.lua's M.REASONING. */
#define REASONING_PROVIDER "openai_responses"

/* Why an output item cannot be taken (the first such item fails the reply). */
enum { ITEM_OK, ITEM_NOT_OBJECT, ITEM_CALL, ITEM_CUSTOM, ITEM_REASONING, ITEM_TOO_LARGE };

/* A string field: a span of the scratch buffer when has is set. */
typedef struct str_field {
  int has;
  span s;
} str_field;

/* An error object's fields (response.error, or an error event's own); an
** error that is not an object has none of them. */
typedef struct err_fields {
  str_field code, type;
  int msg_kind;  /* V_ kind of "message": V_STRING in scratch, others raw */
  span msg;
} err_fields;

/* What a response object says (a finished response, or a whole reply). */
typedef struct response_state {
  int kind;               /* V_ kind of the response itself */
  str_field status, reason; /* reason: incomplete_details.reason */
  int err_kind;           /* V_ kind of "error" */
  err_fields err;
  int output_kind;        /* V_ kind of "output" */
  int output_filled;      /* it has an element, or a member */
  int has_usage;          /* usage is an object or an array */
  lua_Integer input, output, cached, reasoning_tokens;
  str_field tier;         /* service_tier: the tier that served it */
} response_state;

/* What an event says besides its response. */
typedef struct event_state {
  str_field type, delta;
  err_fields err; /* an error event's code, type and message */
  /* a call's input as it streams, for a listener: its item's place in the
  ** output, and (output_item.added) the item's type, call id and name */
  int has_index;
  lua_Integer output_index;
  str_field item_type, item_call_id, item_name;
} event_state;

/* The output item being scanned, until it can be taken. */
typedef struct item_state {
  str_field type, call_id, name, arguments, input, id, data;
  int refused;   /* a refusal part in its content */
  int nsummary;  /* summary texts joined so far */
} item_state;

/* A content part or summary part being scanned. */
typedef struct part_state {
  str_field type, text, refusal;
} part_state;

/* A reasoning item taken: its strings in the parser's `parts` buffer. Or,
** `whole`, a hosted tool's item (HOSTED_ITEMS) kept as its raw JSON in
** `data`: sent back as it came, the record of what the service ran. */
typedef struct reasoning_part {
  span id, summary, data;
  int has_data, whole;
} reasoning_part;

typedef struct responses_stream {
  tide_reply base;  /* the shell's: SSE framing, the text, the failure */
  tide_buf scratch; /* decoded strings of the document being scanned */
  tide_buf key;     /* an object key that had escapes */
  event_state ev;
  response_state resp;
  item_state item;
  part_state part;
  tide_buf item_text, item_refusal, summary; /* the item's, until it is taken */
  /* The output items taken (the finished response's, or the held ones). */
  tide_asm calls;
  tide_buf refusal;
  int refused;
  tide_buf parts; /* the reasoning items' strings */
  reasoning_part *reasoning;
  size_t nreasoning, reasoning_cap;
  lua_Integer searches; /* web_search_call items: the built-in web search's calls, billed apart */
  lua_Integer file_searches; /* file_search_call items: the file search's calls, billed apart too */
  int item_err;   /* ITEM_ of the first item that could not be taken */
  size_t item_err_at; /* its position, from 1 */
  /* The data of response.output_item.done events, each as a size_t
  ** length, the bytes and a NUL (the scanner reads numbers up to one). */
  tide_buf held;
  span held_item; /* the raw "item" of the held event being read */
  int whole; /* a whole (non-streamed) response: its text is its items' */
  int done;  /* response.completed or .incomplete came: nothing after counts */
  /* The event is one SKIPPED names, read only for a tool-input listener:
  ** its data counts as input or not at all, whatever type it claims. */
  int input_only;
} responses_stream;

/* -------------------------------------------------------------- scanning -- */

static responses_stream *stream_of(const tide_json *p) { return (responses_stream *)p->ud; }

/* The scratch buffer's bytes ("" before anything went in). */
static const char *scratch_of(const responses_stream *st) {
  return st->scratch.p ? st->scratch.p : "";
}

/* Whether the string field f (of scratch buffer b) is lit. */
static int span_is(const tide_buf *b, const str_field *f, const char *lit) {
  return f->has && tide__json_key_is(b->p ? b->p + f->s.off : "", f->s.len, lit);
}

/* Reads the value at p->i into f when it is a string; consumes it. */
static int take_string(tide_json *p, str_field *f) {
  f->has = tide__json_peek(p) == '"';
  if (f->has) return tide__json_scratch(p, &f->s);
  return tide__json_skip(p);
}

static int content_part_member(tide_json *p, const char *k, size_t kl) {
  responses_stream *st = stream_of(p);
  part_state *pt = &st->part;
  if (tide__json_key_is(k, kl, "type")) return take_string(p, &pt->type);
  /* A streamed reply's text is its deltas': the parts' is not needed. */
  if (st->whole && tide__json_key_is(k, kl, "text")) return take_string(p, &pt->text);
  if (tide__json_key_is(k, kl, "refusal")) return take_string(p, &pt->refusal);
  return tide__json_skip(p);
}

static int content_element(tide_json *p, size_t idx) {
  responses_stream *st = stream_of(p);
  (void)idx;
  if (tide__json_peek(p) != '{') return tide__json_skip(p);
  memset(&st->part, 0, sizeof st->part);
  int rc = tide__json_each_member(p, content_part_member);
  if (rc != J_OK) return rc;
  const part_state *pt = &st->part;
  const char *scratch = scratch_of(st);
  if (span_is(&st->scratch, &pt->type, "output_text") && pt->text.has) {
    if (tide__buf_add(&st->item_text, scratch + pt->text.s.off, pt->text.s.len)) return J_NOMEM;
  } else if (span_is(&st->scratch, &pt->type, "refusal") && pt->refusal.has) {
    st->item.refused = 1;
    if (tide__buf_add(&st->item_refusal, scratch + pt->refusal.s.off, pt->refusal.s.len))
      return J_NOMEM;
  }
  return J_OK;
}

static int summary_part_member(tide_json *p, const char *k, size_t kl) {
  if (tide__json_key_is(k, kl, "text")) return take_string(p, &stream_of(p)->part.text);
  return tide__json_skip(p);
}

/* A summary part: its text joins the item's summary, paragraphs apart. */
static int summary_element(tide_json *p, size_t idx) {
  responses_stream *st = stream_of(p);
  (void)idx;
  if (tide__json_peek(p) != '{') return tide__json_skip(p);
  memset(&st->part, 0, sizeof st->part);
  int rc = tide__json_each_member(p, summary_part_member);
  if (rc != J_OK || !st->part.text.has) return rc;
  if (st->item.nsummary++ > 0 && tide__buf_add(&st->summary, "\n\n", 2)) return J_NOMEM;
  if (tide__buf_add(&st->summary, scratch_of(st) + st->part.text.s.off, st->part.text.s.len))
    return J_NOMEM;
  return J_OK;
}

static int item_member(tide_json *p, const char *k, size_t kl) {
  responses_stream *st = stream_of(p);
  item_state *it = &st->item;
  if (tide__json_key_is(k, kl, "type")) return take_string(p, &it->type);
  if (tide__json_key_is(k, kl, "call_id")) return take_string(p, &it->call_id);
  if (tide__json_key_is(k, kl, "name")) return take_string(p, &it->name);
  if (tide__json_key_is(k, kl, "arguments")) return take_string(p, &it->arguments);
  if (tide__json_key_is(k, kl, "input")) return take_string(p, &it->input);
  if (tide__json_key_is(k, kl, "id")) return take_string(p, &it->id);
  if (tide__json_key_is(k, kl, "encrypted_content")) return take_string(p, &it->data);
  if (tide__json_key_is(k, kl, "summary")) {
    st->summary.len = 0;
    it->nsummary = 0;
    if (tide__json_peek(p) == '[') return tide__json_each_element(p, summary_element);
  } else if (tide__json_key_is(k, kl, "content")) {
    st->item_text.len = st->item_refusal.len = 0;
    it->refused = 0;
    if (tide__json_peek(p) == '[') return tide__json_each_element(p, content_element);
  }
  return tide__json_skip(p);
}

/* Empties what the output items taken so far gave. */
static void reset_output(responses_stream *st) {
  tide__asm_reset(&st->calls, st->calls.max);
  st->refusal.len = st->parts.len = 0;
  st->refused = 0;
  st->nreasoning = 0;
  st->searches = st->file_searches = 0;
  st->item_err = ITEM_OK;
  st->item_err_at = 0;
  if (st->whole) st->base.text.len = 0;
}

/* A string field of the item into the reasoning parts' buffer. */
static int keep_part(responses_stream *st, const char *s, size_t n, span *at) {
  at->off = st->parts.len;
  at->len = n;
  return tide__buf_add(&st->parts, s, n) ? J_NOMEM : J_OK;
}

/* Room for one more reasoning part; the part, zeroed, or NULL. */
static reasoning_part *new_part(responses_stream *st) {
  if (st->nreasoning == st->reasoning_cap) {
    size_t cap = st->reasoning_cap ? st->reasoning_cap * 2 : 4;
    if (cap > SIZE_MAX / sizeof *st->reasoning) return NULL;
    reasoning_part *q = realloc(st->reasoning, cap * sizeof *q);
    if (q == NULL) return NULL;
    st->reasoning = q;
    st->reasoning_cap = cap;
  }
  reasoning_part *r = &st->reasoning[st->nreasoning];
  memset(r, 0, sizeof *r);
  return r;
}

/* The items of tools the service runs itself (hosted tools), which the
** API takes back in a request's input as they came, and a remote MCP
** server's approval request (provider.responses makes it a call that waits
** for a person's decision; the request goes back before its answer), and
** the service's own compaction of the conversation (context_management:
** its encrypted summary stands for what came before it). Not
** the calls a client runs (computer, shell, apply_patch: tide offers none;
** a custom tool's call is one of tide's). */
static const char *const HOSTED_ITEMS[] = {
  "web_search_call", "file_search_call", "code_interpreter_call", "image_generation_call",
  "mcp_call", "mcp_list_tools", "mcp_approval_request", "compaction",
};

static int is_hosted(const tide_buf *b, const str_field *type) {
  for (size_t k = 0; k < sizeof HOSTED_ITEMS / sizeof HOSTED_ITEMS[0]; k++)
    if (span_is(b, type, HOSTED_ITEMS[k])) return 1;
  return 0;
}

/* Takes the item just scanned, the output's item number i (from 1), whose
** JSON is raw (rawn bytes). */
static int take_item(responses_stream *st, size_t i, const char *raw, size_t rawn) {
  const item_state *it = &st->item;
  const tide_buf *sb = &st->scratch;
  const char *scratch = scratch_of(st);
  if (span_is(sb, &it->type, "message")) {
    if (st->whole && tide__buf_add(&st->base.text, st->item_text.p, st->item_text.len))
      return J_NOMEM;
    if (it->refused) {
      st->refused = 1;
      if (tide__buf_add(&st->refusal, st->item_refusal.p, st->item_refusal.len)) return J_NOMEM;
    }
  } else if (span_is(sb, &it->type, "function_call") || span_is(sb, &it->type, "custom_tool_call")) {
    /* a custom (freeform) tool's call: its input, text, for arguments */
    int custom = span_is(sb, &it->type, "custom_tool_call");
    const str_field *args = custom ? &it->input : &it->arguments;
    if (!it->call_id.has || !it->name.has) {
      st->item_err = custom ? ITEM_CUSTOM : ITEM_CALL;
      st->item_err_at = i;
      return J_OK;
    }
    lua_Integer at = (lua_Integer)st->calls.n;
    int rc = tide__asm_add(&st->calls, at, scratch + it->call_id.s.off, it->call_id.s.len,
                           scratch + it->name.s.off, it->name.s.len,
                           args->has ? scratch + args->s.off : NULL, args->s.len);
    if (rc == 0 && custom) tide__asm_custom(&st->calls, at);
    if (rc == TIDE_ASM_NOMEM) return J_NOMEM;
    if (rc == TIDE_ASM_TOO_LARGE) {
      st->item_err = ITEM_TOO_LARGE;
      st->item_err_at = i;
    }
  } else if (span_is(sb, &it->type, "reasoning")) {
    if (!it->id.has || it->id.s.len == 0) {
      st->item_err = ITEM_REASONING;
      st->item_err_at = i;
      return J_OK;
    }
    reasoning_part *r = new_part(st);
    if (r == NULL) return J_NOMEM;
    r->has_data = it->data.has;
    if (keep_part(st, scratch + it->id.s.off, it->id.s.len, &r->id) ||
        keep_part(st, st->summary.p, st->summary.len, &r->summary) ||
        (r->has_data && keep_part(st, scratch + it->data.s.off, it->data.s.len, &r->data)))
      return J_NOMEM;
    st->nreasoning++;
  } else if (is_hosted(sb, &it->type)) {
    /* counted for what they cost (usage.web_searches, usage.file_searches) */
    if (span_is(sb, &it->type, "web_search_call")) st->searches++;
    if (span_is(sb, &it->type, "file_search_call")) st->file_searches++;
    /* Kept whole among the reasoning parts, in order: the next requests
    ** carry it back, so that the model still knows what the service ran
    ** for it and what came of it, and a reasoning item before it keeps
    ** the item it led to. The service takes these back with their ids
    ** even when nothing is stored (the Vercel AI SDK's recorded replay of
    ** a web search, October 2026; OpenAI's Codex keeps web search and
    ** image generation items in the history it sends with store off). */
    if (it->id.has && it->id.s.len > 0) {
      reasoning_part *r = new_part(st);
      if (r == NULL) return J_NOMEM;
      r->whole = r->has_data = 1;
      if (keep_part(st, scratch + it->id.s.off, it->id.s.len, &r->id) ||
          keep_part(st, raw, rawn, &r->data))
        return J_NOMEM;
      st->nreasoning++;
    }
  }
  /* Other server-side tools' items are not tide's to send back or run. */
  return J_OK;
}

/* One output item at p->i, the output's item number i (from 1): scanned
** whole, then taken. After an item that could not be taken, the rest are
** only validated: the reply has failed. */
static int scan_item(tide_json *p, size_t i) {
  responses_stream *st = stream_of(p);
  int c = tide__json_peek(p);
  if (st->item_err != ITEM_OK || c == '[') return tide__json_skip(p); /* [ ]: no fields */
  if (c != '{') {
    st->item_err = ITEM_NOT_OBJECT;
    st->item_err_at = i;
    return tide__json_skip(p);
  }
  memset(&st->item, 0, sizeof st->item);
  st->item_text.len = st->item_refusal.len = st->summary.len = 0;
  size_t start = p->i;
  int rc = tide__json_each_member(p, item_member);
  if (rc != J_OK) return rc;
  return take_item(st, i, p->s + start, p->i - start);
}

static int output_element(tide_json *p, size_t idx) {
  stream_of(p)->resp.output_filled = 1;
  return scan_item(p, idx + 1);
}

/* A member of an output given as an object: there are no items in it (no
** element 1), but it is not empty. */
static int output_member(tide_json *p, const char *k, size_t kl) {
  (void)k, (void)kl;
  stream_of(p)->resp.output_filled = 1;
  return tide__json_skip(p);
}

/* The fields of an error object into e. */
static int error_fields(tide_json *p, const char *k, size_t kl, err_fields *e) {
  if (tide__json_key_is(k, kl, "code")) return take_string(p, &e->code);
  if (tide__json_key_is(k, kl, "type")) return take_string(p, &e->type);
  if (tide__json_key_is(k, kl, "message")) {
    e->msg_kind = tide__json_kind(tide__json_peek(p));
    if (e->msg_kind == V_STRING) return tide__json_scratch(p, &e->msg);
    if (e->msg_kind == V_BOOL && tide__json_peek(p) == 'f') e->msg_kind = V_NONE; /* false: absent */
    return tide__json_skip_raw(p, &e->msg);
  }
  return tide__json_skip(p);
}

static int response_error_member(tide_json *p, const char *k, size_t kl) {
  return error_fields(p, k, kl, &stream_of(p)->resp.err);
}

static int incomplete_member(tide_json *p, const char *k, size_t kl) {
  if (tide__json_key_is(k, kl, "reason")) return take_string(p, &stream_of(p)->resp.reason);
  return tide__json_skip(p);
}

static int input_details_member(tide_json *p, const char *k, size_t kl) {
  if (tide__json_key_is(k, kl, "cached_tokens")) stream_of(p)->resp.cached = tide__json_count(p);
  return tide__json_skip(p);
}

static int output_details_member(tide_json *p, const char *k, size_t kl) {
  if (tide__json_key_is(k, kl, "reasoning_tokens"))
    stream_of(p)->resp.reasoning_tokens = tide__json_count(p);
  return tide__json_skip(p);
}

static int usage_member(tide_json *p, const char *k, size_t kl) {
  response_state *r = &stream_of(p)->resp;
  if (tide__json_key_is(k, kl, "input_tokens")) {
    r->input = tide__json_count(p);
  } else if (tide__json_key_is(k, kl, "output_tokens")) {
    r->output = tide__json_count(p);
  } else if (tide__json_key_is(k, kl, "input_tokens_details")) {
    r->cached = 0;
    if (tide__json_peek(p) == '{') return tide__json_each_member(p, input_details_member);
  } else if (tide__json_key_is(k, kl, "output_tokens_details")) {
    r->reasoning_tokens = 0;
    if (tide__json_peek(p) == '{') return tide__json_each_member(p, output_details_member);
  }
  return tide__json_skip(p);
}

static int response_member(tide_json *p, const char *k, size_t kl) {
  responses_stream *st = stream_of(p);
  response_state *r = &st->resp;
  if (tide__json_key_is(k, kl, "status")) return take_string(p, &r->status);
  if (tide__json_key_is(k, kl, "service_tier")) return take_string(p, &r->tier);
  if (tide__json_key_is(k, kl, "incomplete_details")) {
    r->reason.has = 0;
    if (tide__json_peek(p) == '{') return tide__json_each_member(p, incomplete_member);
  } else if (tide__json_key_is(k, kl, "error")) {
    r->err_kind = tide__json_kind(tide__json_peek(p));
    memset(&r->err, 0, sizeof r->err);
    if (r->err_kind == V_OBJECT) return tide__json_each_member(p, response_error_member);
  } else if (tide__json_key_is(k, kl, "output")) {
    reset_output(st);
    r->output_kind = tide__json_kind(tide__json_peek(p));
    r->output_filled = 0;
    if (r->output_kind == V_ARRAY) return tide__json_each_element(p, output_element);
    if (r->output_kind == V_OBJECT) return tide__json_each_member(p, output_member);
  } else if (tide__json_key_is(k, kl, "usage")) {
    int kind = tide__json_kind(tide__json_peek(p));
    r->has_usage = kind == V_OBJECT || kind == V_ARRAY;
    r->input = r->output = r->cached = r->reasoning_tokens = 0;
    if (kind == V_OBJECT) return tide__json_each_member(p, usage_member);
  }
  return tide__json_skip(p);
}

/* An output_item.added event's item: what a listener of a call's input
** needs (its type, call id, name). */
static int added_item_member(tide_json *p, const char *k, size_t kl) {
  event_state *ev = &stream_of(p)->ev;
  if (tide__json_key_is(k, kl, "type")) return take_string(p, &ev->item_type);
  if (tide__json_key_is(k, kl, "call_id")) return take_string(p, &ev->item_call_id);
  if (tide__json_key_is(k, kl, "name")) return take_string(p, &ev->item_name);
  return tide__json_skip(p);
}

static int event_member(tide_json *p, const char *k, size_t kl) {
  responses_stream *st = stream_of(p);
  event_state *ev = &st->ev;
  if (tide__json_key_is(k, kl, "type")) return take_string(p, &ev->type);
  if (tide__json_key_is(k, kl, "delta")) return take_string(p, &ev->delta);
  if (tide__json_key_is(k, kl, "output_index")) {
    ev->has_index = tide__json_tointeger(p, &ev->output_index);
    return tide__json_skip(p);
  }
  if (tide__json_key_is(k, kl, "item") && tide__json_peek(p) == '{') return tide__json_each_member(p, added_item_member);
  if (tide__json_key_is(k, kl, "response")) {
    memset(&st->resp, 0, sizeof st->resp);
    reset_output(st);
    st->resp.kind = tide__json_kind(tide__json_peek(p));
    if (st->resp.kind == V_OBJECT) return tide__json_each_member(p, response_member);
    return tide__json_skip(p);
  }
  return error_fields(p, k, kl, &ev->err); /* code, message (type is above) */
}

/* ---------------------------------------------------------------- errors -- */

/* Pushes the string of an error's message as tostring(e.message or code)
** gives it for the decoded error (numbers are floats there). */
static void push_message(lua_State *L, const responses_stream *st, const err_fields *e,
                         const str_field *code, const char *doc) {
  const char *scratch = scratch_of(st);
  if (e->msg_kind == V_STRING) {
    tide__push_excerpt(L, scratch + e->msg.off, e->msg.len, TIDE_MESSAGE_MAX);
  } else if (e->msg_kind == V_NUMBER) {
    /* (the document is followed by a byte that ends a number) */
    lua_pushnumber(L, strtod(doc + e->msg.off, NULL));
    luaL_tolstring(L, -1, NULL);
    lua_remove(L, -2);
  } else if (e->msg_kind != V_NONE) {
    tide__push_excerpt(L, doc + e->msg.off, e->msg.len, TIDE_MESSAGE_MAX);
  } else if (code->has) {
    tide__push_excerpt(L, scratch + code->s.off, code->s.len, TIDE_MESSAGE_MAX);
  } else {
    lua_pushliteral(L, "nil");
  }
}

/* Pushes the error of a failed response or an error event, as the real API
** names its codes: rate_limit_exceeded and server_error are worth another
** attempt (RateLimited 429, ProviderError 500), anything else is not. The
** code is e's code, else its type; body, when given, is the event's data. */
static void push_failure(lua_State *L, const responses_stream *st, const char *where,
                         const err_fields *e, const char *doc, const char *body, size_t bodyl) {
  const str_field *code = e->code.has ? &e->code : &e->type;
  const char *kind = "ProviderError";
  int status = 0;
  if (span_is(&st->scratch, code, "rate_limit_exceeded"))
    kind = "RateLimited", status = 429;
  else if (span_is(&st->scratch, code, "server_error"))
    status = 500;
  push_message(L, st, e, code, doc);
  char prefix[64];
  snprintf(prefix, sizeof prefix, "openai %s: ", where);
  tide__push_error_from(L, kind, prefix);
  if (code->has) {
    lua_pushlstring(L, scratch_of(st) + code->s.off, code->s.len);
    lua_setfield(L, -2, "type");
  }
  if (status) {
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
  }
  if (body) {
    lua_pushlstring(L, body, bodyl);
    lua_setfield(L, -2, "body");
  }
  lua_pushboolean(L, status != 0);
  lua_setfield(L, -2, "retryable");
}

/* Pushes the error of a response that failed: its error when it has one,
** else "no error given" when its status is "failed". Returns 0, pushing
** nothing, when it has neither (a response.failed event whose response
** does not say so is failed by the event: the caller's error). */
static int push_failed(lua_State *L, const responses_stream *st, const char *doc) {
  const response_state *r = &st->resp;
  if (r->err_kind != V_NONE && r->err_kind != V_NULL) {
    push_failure(L, st, "response failed", &r->err, doc, NULL, 0);
    return 1;
  }
  if (span_is(&st->scratch, &r->status, "failed")) {
    tide__push_error(L, "ProviderError", "openai response failed: no error given");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "retryable");
    return 1;
  }
  return 0;
}

/* The error of the first output item that could not be taken. */
static void push_item_error(lua_State *L, const responses_stream *st) {
  lua_Integer at = (lua_Integer)st->item_err_at;
  switch (st->item_err) {
    case ITEM_NOT_OBJECT:
      tide__push_error(L, "MalformedResponse", "openai output[%I] is not an object", at);
      break;
    case ITEM_CALL:
      tide__push_error(L, "MalformedResponse",
                       "openai output[%I] (function_call) has no call_id or name", at);
      break;
    case ITEM_CUSTOM:
      tide__push_error(L, "MalformedResponse",
                       "openai output[%I] (custom_tool_call) has no call_id or name", at);
      break;
    case ITEM_REASONING:
      tide__push_error(L, "MalformedResponse", "openai output[%I] (reasoning) has no id", at);
      break;
    default:
      tide__push_asm_too_large(L, &st->calls);
  }
}

/* ----------------------------------------------------------------- reply -- */

static void push_span(lua_State *L, const tide_buf *b, span s) {
  lua_pushlstring(L, b->p ? b->p + s.off : "", s.len);
}

/* Pushes the reply as the session gets it: text, finished tool calls,
** reasoning parts and refusal when there were any, usage (zeros when the
** response had none), and the stop reason mapped and as sent: an
** incomplete response says why it stopped (max_output_tokens is "length",
** content_filter itself, anything else "length"); a complete one stopped
** for a refusal, for its calls, or at its end. */
static void push_reply(lua_State *L, responses_stream *st) {
  const response_state *r = &st->resp;
  const tide_buf *sb = &st->scratch;
  lua_createtable(L, 0, 10); /* room for what the provider adds: no rehash */
  lua_pushlstring(L, st->base.text.p ? st->base.text.p : "", st->base.text.len);
  lua_setfield(L, -2, "text");
  tide__asm_push_finished(L, &st->calls);
  lua_setfield(L, -2, "tool_calls");
  if (st->nreasoning > 0) {
    lua_createtable(L, (int)(st->nreasoning > INT32_MAX ? 0 : st->nreasoning), 0);
    for (size_t i = 0; i < st->nreasoning; i++) {
      const reasoning_part *part = &st->reasoning[i];
      lua_createtable(L, 0, 5);
      if (part->whole) { /* { type = "item", id, item = raw JSON, provider } */
        lua_pushliteral(L, "item");
        lua_setfield(L, -2, "type");
        push_span(L, &st->parts, part->id);
        lua_setfield(L, -2, "id");
        push_span(L, &st->parts, part->data);
        lua_setfield(L, -2, "item");
        lua_pushliteral(L, REASONING_PROVIDER);
        lua_setfield(L, -2, "provider");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
        continue;
      }
      lua_pushliteral(L, "encrypted");
      lua_setfield(L, -2, "type");
      push_span(L, &st->parts, part->id);
      lua_setfield(L, -2, "id");
      lua_pushliteral(L, REASONING_PROVIDER);
      lua_setfield(L, -2, "provider");
      push_span(L, &st->parts, part->summary);
      lua_setfield(L, -2, "summary");
      if (part->has_data) {
        push_span(L, &st->parts, part->data);
        lua_setfield(L, -2, "data");
      }
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "reasoning");
  }
  if (st->refused) {
    lua_pushlstring(L, st->refusal.p ? st->refusal.p : "", st->refusal.len);
    lua_setfield(L, -2, "refusal");
  }
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, r->has_usage ? r->input : 0);
  lua_setfield(L, -2, "input");
  lua_pushinteger(L, r->has_usage ? r->output : 0);
  lua_setfield(L, -2, "output");
  lua_pushinteger(L, r->has_usage ? r->cached : 0);
  lua_setfield(L, -2, "cached");
  lua_pushinteger(L, 0); /* the Responses API reports no cache writes */
  lua_setfield(L, -2, "cache_write");
  lua_pushinteger(L, r->has_usage ? r->reasoning_tokens : 0);
  lua_setfield(L, -2, "reasoning");
  if (st->searches > 0) {
    lua_pushinteger(L, st->searches);
    lua_setfield(L, -2, "web_searches");
  }
  if (st->file_searches > 0) {
    lua_pushinteger(L, st->file_searches);
    lua_setfield(L, -2, "file_searches");
  }
  if (r->tier.has) tide__reply_tier(&st->base, scratch_of(st) + r->tier.s.off, r->tier.s.len);
  tide__reply_push_tier(L, &st->base);
  lua_setfield(L, -2, "usage");
  if (span_is(sb, &r->status, "incomplete")) {
    const char *stop = span_is(sb, &r->reason, "content_filter") ? "content_filter" : "length";
    lua_pushstring(L, stop);
    lua_setfield(L, -2, "stop");
    if (r->reason.has)
      push_span(L, sb, r->reason.s);
    else
      lua_pushliteral(L, "incomplete");
    lua_setfield(L, -2, "stop_raw");
    return;
  }
  lua_pushstring(L, st->refused ? "refusal" : st->calls.n > 0 ? "tool_calls" : "stop");
  lua_setfield(L, -2, "stop");
  if (r->status.has) {
    push_span(L, sb, r->status.s);
    lua_setfield(L, -2, "stop_raw");
  }
}

/* -------------------------------------------------------------- streams -- */

/* The events nothing is taken from, by SSE event name: skipped unread. */
#define NAME(s) {s, sizeof(s) - 1}
static const struct {
  const char *s;
  size_t n;
} SKIPPED[] = {
    NAME("response.created"), NAME("response.in_progress"), NAME("response.output_item.added"),
    NAME("response.content_part.added"), NAME("response.content_part.done"),
    NAME("response.output_text.done"), NAME("response.function_call_arguments.delta"),
    NAME("response.function_call_arguments.done"), NAME("response.reasoning_summary_part.added"),
    NAME("response.reasoning_summary_part.done"), NAME("response.reasoning_summary_text.done"),
    NAME("response.output_text.annotation.added"), NAME("response.refusal.delta"),
    NAME("response.refusal.done"), NAME("response.custom_tool_call_input.delta"),
    NAME("response.custom_tool_call_input.done"),
};
#undef NAME

/* Of those, the ones a listener of tool-call input reads. */
static int input_event(const char *s, size_t n) {
  return tide__json_key_is(s, n, "response.output_item.added") ||
         tide__json_key_is(s, n, "response.function_call_arguments.delta") ||
         tide__json_key_is(s, n, "response.custom_tool_call_input.delta");
}

/* 1 if the event is skipped; *input_only set when it is read only for
** the tool-input listener. */
static int skipped(const tide_reply_feed *fc, const tide_sse_event *e, int *input_only) {
  *input_only = 0;
  for (size_t i = 0; i < tide__nelem(SKIPPED); i++)
    if (SKIPPED[i].n == e->event_len && memcmp(SKIPPED[i].s, e->event, e->event_len) == 0) {
      *input_only = tide__reply_wants_tool_input(fc) && input_event(e->event, e->event_len);
      return !*input_only;
    }
  return 0;
}

/* Keeps an output_item.done event's data, unread: its item is needed only
** if the finished response carries no output. 0, or 1 to stop the feed. */
static int hold(tide_reply_feed *fc, responses_stream *st, const tide_sse_event *e) {
  size_t n = e->data_len;
  size_t room = st->base.sse.max > st->held.len ? st->base.sse.max - st->held.len : 0;
  if (n > room || room - n < sizeof n + 1) {
    char cap[32];
    snprintf(cap, sizeof cap, "%zu", st->base.sse.max);
    tide__push_error(fc->L, "StreamTooLarge", "output items exceed the limit of %s bytes", cap);
    return 1;
  }
  if (tide__buf_add(&st->held, (const char *)&n, sizeof n) || tide__buf_add(&st->held, e->data, n) ||
      tide__buf_add(&st->held, "", 1))
    return fc->nomem = 1, 0;
  return 0;
}

/* Applies an event once scanned whole. Returns 0, or 1 with an error pushed. */
static int apply_event(tide_reply_feed *fc, const tide_sse_event *e) {
  lua_State *L = fc->L;
  responses_stream *st = (responses_stream *)fc->r;
  const event_state *ev = &st->ev;
  if (!ev->type.has) return 0; /* carries nothing tide needs */
  const char *scratch = scratch_of(st), *type = scratch + ev->type.s.off;
  size_t typel = ev->type.s.len;
  if (st->input_only && !input_event(type, typel)) return 0;
  if (tide__json_key_is(type, typel, "response.output_text.delta")) {
    if (ev->delta.has && ev->delta.s.len > 0)
      tide__reply_text(fc, scratch + ev->delta.s.off, ev->delta.s.len);
  } else if (tide__json_key_is(type, typel, "response.reasoning_summary_text.delta") ||
             tide__json_key_is(type, typel, "response.reasoning_text.delta")) {
    if (ev->delta.has && ev->delta.s.len > 0)
      tide__reply_reasoning(fc, scratch + ev->delta.s.off, ev->delta.s.len);
  } else if (tide__json_key_is(type, typel, "response.output_item.done")) { /* a server that names no events */
    return hold(fc, st, e);
  } else if (tide__reply_wants_tool_input(fc) && input_event(type, typel) && ev->has_index) {
    if (tide__json_key_is(type, typel, "response.output_item.added")) {
      const char *it = ev->item_type.has ? scratch + ev->item_type.s.off : "";
      size_t itl = ev->item_type.has ? ev->item_type.s.len : 0;
      if (tide__json_key_is(it, itl, "function_call") || tide__json_key_is(it, itl, "custom_tool_call"))
        tide__reply_tool_input(fc, ev->output_index, ev->item_call_id.has ? scratch + ev->item_call_id.s.off : NULL,
                               ev->item_call_id.has ? ev->item_call_id.s.len : 0,
                               ev->item_name.has ? scratch + ev->item_name.s.off : NULL,
                               ev->item_name.has ? ev->item_name.s.len : 0, NULL, 0);
    } else if (ev->delta.has) {
      tide__reply_tool_input(fc, ev->output_index, NULL, 0, NULL, 0, scratch + ev->delta.s.off, ev->delta.s.len);
    }
  } else if (tide__json_key_is(type, typel, "response.completed") ||
             tide__json_key_is(type, typel, "response.incomplete")) {
    if (st->resp.kind != V_OBJECT && st->resp.kind != V_ARRAY) {
      lua_pushlstring(L, type, typel);
      tide__push_malformed(L, NULL, 0, "openai %s has no response", lua_tostring(L, -1));
      lua_remove(L, -2);
      return 1;
    }
    st->done = 1; /* the rest is read at the end (finish_stream) */
  } else if (tide__json_key_is(type, typel, "response.failed")) {
    if (!push_failed(L, st, e->data)) { /* nothing in it says so: the event does */
      tide__push_error(L, "ProviderError", "openai response failed: no error given");
      lua_pushlstring(L, e->data, e->data_len);
      lua_setfield(L, -2, "body");
      lua_pushboolean(L, 0);
      lua_setfield(L, -2, "retryable");
    }
    return 1;
  } else if (tide__json_key_is(type, typel, "error")) {
    err_fields err = ev->err;
    err.type = ev->type; /* the event's own: "error", the code when none is given */
    push_failure(L, st, "stream error", &err, e->data, e->data, e->data_len);
    return 1;
  }
  /* Unknown events carry nothing tide needs. */
  return 0;
}

/* The kind's event: one SSE event. Returns 1 with an error on the Lua
** stack, or 0 (out of memory: fc->nomem). */
static int responses_event(tide_reply_feed *fc, const tide_sse_event *e) {
  responses_stream *st = (responses_stream *)fc->r;
  if (st->done || e->done || skipped(fc, e, &st->input_only)) return 0;
  if (tide__json_key_is(e->event, e->event_len, "response.output_item.done")) return hold(fc, st, e);
  tide_json p = {e->data, e->data_len, 0, 0, NULL, 0, &st->scratch, &st->key, st};
  memset(&st->ev, 0, sizeof st->ev);
  st->scratch.len = 0;
  /* An event's own "response" counts, never an earlier event's
  ** (response.created has one too). */
  st->resp.kind = V_NONE;
  int kind, rc = tide__json_scan_root(&p, event_member, &kind);
  if (rc == J_NOMEM) return fc->nomem = 1, 0;
  /* What is read only for a listener never fails the reply it would not
  ** have failed unread. */
  if (st->input_only && (rc == J_SYNTAX || (kind != V_OBJECT && kind != V_ARRAY))) return 0;
  if (rc == J_SYNTAX) {
    tide__push_malformed(fc->L, e->data, e->data_len,
                         "openai stream event is not a JSON object (invalid JSON: %s at character %I)", p.err,
                         (lua_Integer)p.err_at + 1);
    return 1;
  }
  if (kind != V_OBJECT && kind != V_ARRAY) {
    tide__push_malformed(fc->L, e->data, e->data_len, "openai stream event is not a JSON object");
    return 1;
  }
  return apply_event(fc, e);
}

static int held_member(tide_json *p, const char *k, size_t kl) {
  if (tide__json_key_is(k, kl, "item")) return tide__json_skip_raw(p, &stream_of(p)->held_item);
  return tide__json_skip(p);
}

/* Takes the items of the held output_item.done events, as the output of a
** finished response that carried none: in order, up to the first event
** that is not JSON, or has no item (or a false one). */
static int take_held(responses_stream *st) {
  reset_output(st);
  size_t at = 0;
  for (size_t i = 1; at < st->held.len; i++) {
    size_t n;
    memcpy(&n, st->held.p + at, sizeof n);
    const char *doc = st->held.p + at + sizeof n;
    at += sizeof n + n + 1;
    tide_json p = {doc, n, 0, 0, NULL, 0, &st->scratch, &st->key, st};
    span *item = &st->held_item;
    item->off = item->len = 0;
    int kind, rc = tide__json_scan_root(&p, held_member, &kind);
    if (rc == J_NOMEM) return J_NOMEM;
    /* (output[i] = obj.item: no item, or false, ends the list there) */
    if (rc != J_OK || kind != V_OBJECT || item->len == 0 || doc[item->off] == 'f') break;
    p.i = item->off;
    p.depth = 1;
    if ((rc = scan_item(&p, i)) == J_NOMEM) return J_NOMEM;
    if (st->item_err != ITEM_OK) break;
  }
  return J_OK;
}

/* The kind's reset: emptied for the next reply, its buffers (those up to
** keep bytes) kept. */
static void responses_reset(tide_reply *r, size_t keep, size_t max) {
  responses_stream *st = (responses_stream *)r, old = *st;
  tide__buf_keep(&old.scratch, keep);
  tide__buf_keep(&old.key, keep);
  tide__buf_keep(&old.item_text, keep);
  tide__buf_keep(&old.item_refusal, keep);
  tide__buf_keep(&old.summary, keep);
  tide__asm_reset(&old.calls, keep);
  tide__buf_keep(&old.refusal, keep);
  tide__buf_keep(&old.parts, keep);
  tide__buf_keep(&old.held, keep);
  memset((char *)st + sizeof st->base, 0, sizeof *st - sizeof st->base);
  st->scratch = old.scratch;
  st->key = old.key;
  st->item_text = old.item_text;
  st->item_refusal = old.item_refusal;
  st->summary = old.summary;
  st->calls = old.calls;
  st->calls.max = max;
  st->refusal = old.refusal;
  st->parts = old.parts;
  st->reasoning = old.reasoning;
  st->reasoning_cap = old.reasoning_cap;
  st->held = old.held;
}

/* The kind's free: what the parser holds beyond the shell's part. */
static void responses_free(tide_reply *r) {
  responses_stream *st = (responses_stream *)r;
  tide__buf_free(&st->scratch);
  tide__buf_free(&st->key);
  tide__buf_free(&st->item_text);
  tide__buf_free(&st->item_refusal);
  tide__buf_free(&st->summary);
  tide__asm_free(&st->calls);
  tide__buf_free(&st->refusal);
  tide__buf_free(&st->parts);
  tide__buf_free(&st->held);
  free(st->reasoning);
  st->reasoning = NULL;
  st->nreasoning = st->reasoning_cap = 0;
}

/* The kind's finish: the reply, once the stream has ended after its finished
** response. Its text is what the deltas said (what on_delta heard),
** whatever the output repeats. */
static int responses_finish(lua_State *L, tide_reply *r) {
  responses_stream *st = (responses_stream *)r;
  if (!st->done) {
    lua_pushnil(L);
    tide__push_malformed(L, NULL, 0, "openai stream ended before response.completed");
    lua_pushlstring(L, r->text.p ? r->text.p : "", r->text.len);
    lua_setfield(L, -2, "partial_text");
    return 2;
  }
  if (!st->resp.output_filled && take_held(st) == J_NOMEM) {
    responses_free(r);
    return luaL_error(L, "not enough memory");
  }
  if (st->item_err != ITEM_OK) {
    lua_pushnil(L);
    push_item_error(L, st);
    return 2;
  }
  push_reply(L, st);
  return 1;
}

static const tide_reply_kind RESPONSES = {
    "tide.responses_stream", "responses stream", sizeof(responses_stream),
    responses_event, responses_finish, responses_reset, responses_free};

/* ------------------------------------------------------------- bindings -- */

/* core.responses_stream([max_bytes]) -> stream */
static int l_responses_stream(lua_State *L) {
  tide__reply_new(L, &RESPONSES, tide__check_max(L, 1, TIDE_REPLY_DEFAULT_MAX));
  return 1;
}

/* Puts nil below the error of a whole reply; returns 2. */
static int whole_error(lua_State *L) {
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

/* core.responses_parse(body | req[, max_bytes]) -> reply | nil, err
** A whole (non-streamed) response, scanned in place as a finished
** response is in a stream, its text from its message items. Every failure
** is said here, as the Lua parser said it: a body that is not a JSON
** object, a failed response, no output array, an item tide cannot send
** back. Errors carry no body: the caller adds its excerpt. */
static int l_responses_parse(lua_State *L) {
  size_t n;
  /* the body: a string, or read in place from a finished http_post */
  const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n)
                                                : tide__http_body(L, 1, &n);
  if (s == NULL) luaL_typeerror(L, 1, "string or http request");
  size_t max = tide__check_max(L, 2, TIDE_REPLY_DEFAULT_MAX);
  /* The state's one parser of whole replies (the shell's): the caller keeps
  ** the body anchored. */
  responses_stream *st = (responses_stream *)tide__reply_whole(L, &RESPONSES, max);
  st->whole = 1;
  tide_json p = {s, n, 0, 0, NULL, 0, &st->scratch, &st->key, st};
  int kind, nret = 1, rc = tide__json_scan_root(&p, response_member, &kind);
  if (rc == J_NOMEM) {
    responses_free(&st->base);
    return luaL_error(L, "not enough memory");
  }
  if (rc == J_SYNTAX) {
    tide__push_error(L, "MalformedResponse", "openai response is not valid JSON (%s at character %I)",
                     p.err, (lua_Integer)p.err_at + 1);
    nret = whole_error(L);
  } else if (kind != V_OBJECT && kind != V_ARRAY) {
    tide__push_error(L, "MalformedResponse", "openai response is not a JSON object");
    nret = whole_error(L);
  } else if (push_failed(L, st, s)) {
    nret = whole_error(L);
  } else if (st->resp.output_kind != V_OBJECT && st->resp.output_kind != V_ARRAY) {
    tide__push_error(L, "MalformedResponse", "openai response has no output array");
    nret = whole_error(L);
  } else if (st->item_err != ITEM_OK) {
    push_item_error(L, st);
    nret = whole_error(L);
  } else {
    push_reply(L, st);
  }
  tide__reply_whole_done(&st->base);
  return nret;
}

/// Registers core.responses_stream and core.responses_parse into the module
/// table at the top of the stack, and (re)creates the
/// "tide.responses_stream" metatable with the reply shell's methods and
/// sink.
void tide__open_responses(lua_State *L) {
  static const luaL_Reg fns[] = {{"responses_stream", l_responses_stream},
                                 {"responses_parse", l_responses_parse},
                                 {NULL, NULL}};
  tide__reply_register(L, &RESPONSES);
  luaL_setfuncs(L, fns, 0);
}
