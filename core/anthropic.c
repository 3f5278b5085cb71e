/*
** anthropic.c -- the Anthropic Messages wire format in C: the streamed reply
** parser (a kind of the reply shell, reply.c) and the whole-reply scanner.
**
** Beside it, the encoders of the two messages a tool loop repeats (the
** assistant message with its tool_use blocks, the tool results).
**
** The Lua parser decoded every SSE event into a table tree and walked it;
** here each event's JSON is scanned in place (json.c) for the fields a reply
** is made of, tool_use input goes to toolcall.c's assembler, and Lua sees
** one string per text delta (none when nobody listens), one per thinking
** delta only when someone listens for reasoning, and one table at the end.
**
** The scanner reads, and nothing else:
**   type (else the SSE event's name), index
**   message.usage.{input_tokens, output_tokens, cache_read_input_tokens,
**                  cache_creation_input_tokens,
**                  cache_creation.ephemeral_1h_input_tokens,
**                  output_tokens_details.thinking_tokens,
**                  server_tool_use.web_search_requests, service_tier},
**   message.container.id                                        message_start
**   content_block.{type, id, name, input, text, thinking, signature, data,
**                  citations}; other blocks whole           content_block_start
**   delta.{type, text, partial_json, thinking, signature, citation}
**                                                         content_block_delta
**   delta.{stop_reason, container.id, stop_details.explanation},
**   usage.{the six counts, service_tier}                         message_delta
**   error.{type, message}                                               error
** and of a whole reply: type, error, content[*] (the block fields above;
** the array whole), usage, stop_reason, container.id,
** stop_details.explanation. Every other value is validated and
** skipped (ping, content_block_stop and event types newer than this file
** carry nothing a reply needs). An event is applied once the whole of it has parsed, by the
** rules the Lua parser applied to the decoded table: the last of duplicate
** keys wins, values of the wrong type count as absent, a malformed event
** anywhere is a MalformedResponse, nothing after message_stop counts.
**
** Thinking blocks keep their order and index: a thinking block's text comes
** in thinking_delta pieces and its signature in one signature_delta, a
** redacted_thinking block's data whole at its start; a block that ends
** without them cannot be sent back as the API requires, and the reply is
** refused. Usage is made to mean what OpenAI's means: `input` is the whole
** prompt (Anthropic's input_tokens counts only what follows the last cache
** breakpoint), and `reasoning` is the thinking's share of output_tokens.
**
** A block tide does not model (a server tool's use or result, web search's
** or code execution's, and whatever type comes next) makes the reply keep
** its whole content, which goes back in place of the message tide would
** build: the API needs a server tool's use and result, their encrypted
** contents and the citations of the text that used them, in their order.
** A whole reply keeps its content array byte for byte; a stream's is
** rebuilt from the blocks kept in order (thinking, text with its
** citations, the other blocks as they started, a server tool's input from
** its input_json_delta fragments) and the calls. It is the last reasoning
** part: { type = "content", data = JSON, provider = "anthropic" }.
*/
#include <stdlib.h>
#include <string.h>

#include "tide.h"
#include "json.h"

static const tide_reply_kind ANTHROPIC;

/* A string-valued field: whether it was a string, and its decoded bytes
** (in the scratch buffer). */
typedef struct text_field {
  int has;
  span at;
} text_field;

/* The four counts of a usage object: their values (provider._count's: 0 when
** absent or not a count), whether each was a number, and whether
** output_tokens was there at all. */
typedef struct usage_fields {
  lua_Integer input, output, read, write;
  int num_input, num_read, num_write, seen_output;
  lua_Integer thinking; /* output_tokens_details.thinking_tokens: the part of output that was thinking */
  int num_thinking;
  lua_Integer searches; /* server_tool_use.web_search_requests: billed apart */
  int num_searches;
  lua_Integer write_1h; /* cache_creation.ephemeral_1h_input_tokens: the part of write cached for an hour */
  int num_write_1h;
  text_field tier; /* service_tier ("standard", "priority", "batch"): what prices the call */
} usage_fields;

/* A content block: content_block of content_block_start, or an element of
** a whole reply's content. */
typedef struct block_fields {
  int table;        /* an object or an array */
  text_field type, text, id, name, thinking, signature, data;
  int input_kind;   /* V_OBJECT / V_ARRAY: a table, raw in the document */
  span input;
  int input_filled; /* the table has a member or an element */
  span raw;         /* the whole block, raw in the document */
  int has_input;    /* an "input" member (its raw text in input) */
  span citations;   /* a text block's citations array, raw, when it has elements */
} block_fields;

/* What one event says (or a whole reply's root), once scanned. */
typedef struct event_state {
  text_field type;
  int index_kind;   /* V_NUMBER (index_ok, index) or V_STRING (index_str) */
  int index_ok;
  lua_Integer index;
  span index_str;
  usage_fields message_usage;
  int delta_table;
  text_field dtype, dtext, partial, dthinking, dsignature, stop_reason;
  span citation;    /* a citations_delta's citation, raw (len 0: none) */
  /* the one member read of the nested object being scanned (one_text, one_count) */
  const char *want;
  text_field *want_text;
  lua_Integer *want_count;
  int *want_num;
  text_field container; /* container.id: of the message, the delta or a whole reply */
  text_field explanation; /* stop_details.explanation: why the model refused */
  block_fields block;
  int usage_table;
  usage_fields usage;
  int err_kind;     /* the value of "error" */
  text_field etype;
  int emsg_kind;    /* error.message: V_STRING (scratch) or raw in the document */
  span emsg;
  span etype_raw;   /* error.type as it came, when it is not a string */
  int etype_kind;
  /* a whole reply */
  int content_kind;
  span content;     /* the content array, raw */
  int bad_block;    /* the first content element the reply is refused for (1-based), or 0 */
  const char *bad_why;
  const char *bad_type;
} event_state;

/* The blocks a reply keeps beside its text and calls, in block order:
** thinking and redacted_thinking (its reasoning parts), and, in a stream,
** where each text block's text lies and what a block tide does not model
** holds (a server tool's use or result, ...). A reply with such a block
** goes back as its whole content, rebuilt from these and the calls. */
enum { K_THINKING, K_REDACTED, K_TEXT, K_OTHER };

typedef struct kept_block {
  lua_Integer index;
  int kind;
  int has_sig;    /* thinking: a signature came as a string */
  int has_data;   /* redacted: its data is a string */
  int has_input;  /* other: input_json_delta fragments came (in sig) */
  size_t from, to; /* text: its bytes in the reply's text; other: its input's raw span in text */
  tide_buf text;  /* the thinking text, the redacted data, or the other block's raw JSON */
  tide_buf sig;   /* the signature, a text block's citations (raw, joined by commas), or the
                     other block's input fragments */
} kept_block;

typedef struct anthropic_stream {
  tide_reply base;  /* the shell's: SSE framing, the text, the failure */
  tide_asm calls;
  tide_buf scratch; /* decoded strings of the current event */
  tide_buf key;     /* an object key that had escapes */
  tide_buf canon;   /* the canonical text of a whole tool input */
  tide_buf stop;    /* the last stop_reason */
  tide_buf container; /* the id of the container the request ran in (server tools' code execution) */
  tide_buf refusal;   /* stop_details.explanation of a refusal */
  kept_block *blocks;
  size_t nblocks, kept, cap; /* blocks past nblocks up to kept hold emptied buffers */
  size_t nthinking;          /* of them thinking or redacted_thinking */
  size_t nother;             /* of them, or of a whole reply's content, blocks tide does not model */
  size_t cur_text;           /* the text block text deltas go to, +1 (0: none) */
  tide_buf content;          /* a stream's content, rebuilt when it has other blocks */
  const char *doc;           /* a whole reply's body, while it is scanned */
  event_state ev;
  lua_Integer input, output, read, write, write_1h, thinking_tokens, searches;
  int has_stop;
  int done;         /* message_stop seen: nothing after it counts */
  int whole;        /* scanning a whole reply */
} anthropic_stream;

/* ---------------------------------------------------------- the fields -- */

static anthropic_stream *stream_of(const tide_json *p) { return (anthropic_stream *)p->ud; }

/* The scratch buffer's bytes ("" before the first string: an empty one
** leaves it unallocated). */
static const char *scratch_of(const anthropic_stream *st) { return st->scratch.p ? st->scratch.p : ""; }

/* Keeps the service tier usage object u named (its string in scratch). */
static void keep_tier(anthropic_stream *st, const usage_fields *u) {
  if (u->tier.has) tide__reply_tier(&st->base, scratch_of(st) + u->tier.at.off, u->tier.at.len);
}

/* A string member into f, or skipped (and f absent) when it is not one. */
static int text_member(tide_json *p, text_field *f) {
  f->has = tide__json_peek(p) == '"';
  if (f->has) return tide__json_scratch(p, &f->at);
  return tide__json_skip(p);
}


/* A nested object of which one member is read (container.id,
** stop_details.explanation, output_tokens_details.thinking_tokens,
** server_tool_use.web_search_requests): the field is absent (or 0) unless
** the value is an object with that member. Nothing nests deeper, so the
** one `want` of the event suffices. */
static int want_member(tide_json *p, const char *k, size_t kl) {
  event_state *ev = &stream_of(p)->ev;
  if (!tide__json_key_is(k, kl, ev->want)) return tide__json_skip(p);
  if (ev->want_text) return text_member(p, ev->want_text);
  *ev->want_num = tide__json_kind(tide__json_peek(p)) == V_NUMBER;
  *ev->want_count = tide__json_count(p);
  return tide__json_skip(p);
}

static int scan_want(tide_json *p, const char *key, text_field *text, lua_Integer *count, int *num) {
  event_state *ev = &stream_of(p)->ev;
  if (text) text->has = 0;
  if (count) *count = 0, *num = 0;
  if (tide__json_peek(p) != '{') return tide__json_skip(p);
  ev->want = key, ev->want_text = text, ev->want_count = count, ev->want_num = num;
  return tide__json_each_member(p, want_member);
}

/* The string member `key` of the object at p->i, into f. */
static int one_text(tide_json *p, const char *key, text_field *f) { return scan_want(p, key, f, NULL, NULL); }

/* The count member `key` of the object at p->i, into *v (*num: it was a number). */
static int one_count(tide_json *p, const char *key, lua_Integer *v, int *num) {
  return scan_want(p, key, NULL, v, num);
}

static int usage_member(tide_json *p, const char *k, size_t kl, usage_fields *u) {
  int num = tide__json_kind(tide__json_peek(p)) == V_NUMBER;
  if (tide__json_key_is(k, kl, "output_tokens_details"))
    return one_count(p, "thinking_tokens", &u->thinking, &u->num_thinking);
  if (tide__json_key_is(k, kl, "server_tool_use"))
    return one_count(p, "web_search_requests", &u->searches, &u->num_searches);
  if (tide__json_key_is(k, kl, "cache_creation")) /* billed at the hour's price */
    return one_count(p, "ephemeral_1h_input_tokens", &u->write_1h, &u->num_write_1h);
  if (tide__json_key_is(k, kl, "service_tier")) return text_member(p, &u->tier);
  if (tide__json_key_is(k, kl, "input_tokens")) {
    u->input = tide__json_count(p), u->num_input = num;
  } else if (tide__json_key_is(k, kl, "output_tokens")) {
    u->output = tide__json_count(p), u->seen_output = 1;
  } else if (tide__json_key_is(k, kl, "cache_read_input_tokens")) {
    u->read = tide__json_count(p), u->num_read = num;
  } else if (tide__json_key_is(k, kl, "cache_creation_input_tokens")) {
    u->write = tide__json_count(p), u->num_write = num;
  }
  return tide__json_skip(p);
}

static int top_usage_member(tide_json *p, const char *k, size_t kl) {
  return usage_member(p, k, kl, &stream_of(p)->ev.usage);
}

static int message_usage_member(tide_json *p, const char *k, size_t kl) {
  return usage_member(p, k, kl, &stream_of(p)->ev.message_usage);
}

/* A "container" member: its id (null in most replies). */
static int container_value(tide_json *p) { return one_text(p, "id", &stream_of(p)->ev.container); }

/* A "stop_details" member: a refusal's explanation, when it has one. */
static int stop_details_value(tide_json *p) { return one_text(p, "explanation", &stream_of(p)->ev.explanation); }

static int message_member(tide_json *p, const char *k, size_t kl) {
  if (tide__json_key_is(k, kl, "container")) return container_value(p);
  if (tide__json_key_is(k, kl, "usage")) {
    usage_fields *u = &stream_of(p)->ev.message_usage;
    memset(u, 0, sizeof *u);
    if (tide__json_peek(p) == '{') return tide__json_each_member(p, message_usage_member);
  }
  return tide__json_skip(p);
}

static int delta_member(tide_json *p, const char *k, size_t kl) {
  event_state *ev = &stream_of(p)->ev;
  if (tide__json_key_is(k, kl, "type")) return text_member(p, &ev->dtype);
  if (tide__json_key_is(k, kl, "text")) return text_member(p, &ev->dtext);
  if (tide__json_key_is(k, kl, "partial_json")) return text_member(p, &ev->partial);
  if (tide__json_key_is(k, kl, "thinking")) return text_member(p, &ev->dthinking);
  if (tide__json_key_is(k, kl, "signature")) return text_member(p, &ev->dsignature);
  if (tide__json_key_is(k, kl, "stop_reason")) return text_member(p, &ev->stop_reason);
  if (tide__json_key_is(k, kl, "container")) return container_value(p);
  if (tide__json_key_is(k, kl, "stop_details")) return stop_details_value(p);
  if (tide__json_key_is(k, kl, "citation")) {
    if (tide__json_peek(p) == '{') return tide__json_skip_raw(p, &ev->citation);
    ev->citation.len = 0;
  }
  return tide__json_skip(p);
}

/* Whether the table at p->i has a member or an element (json.decode's
** table is then not empty); p->i does not move. */
static int filled(const tide_json *p) {
  size_t i = p->i + 1;
  while (i < p->n && (p->s[i] == ' ' || p->s[i] == '\t' || p->s[i] == '\n' || p->s[i] == '\r')) i++;
  return i < p->n && p->s[i] != '}' && p->s[i] != ']';
}

static int block_member(tide_json *p, const char *k, size_t kl) {
  block_fields *b = &stream_of(p)->ev.block;
  if (tide__json_key_is(k, kl, "type")) return text_member(p, &b->type);
  if (tide__json_key_is(k, kl, "text")) return text_member(p, &b->text);
  if (tide__json_key_is(k, kl, "id")) return text_member(p, &b->id);
  if (tide__json_key_is(k, kl, "name")) return text_member(p, &b->name);
  if (tide__json_key_is(k, kl, "thinking")) return text_member(p, &b->thinking);
  if (tide__json_key_is(k, kl, "signature")) return text_member(p, &b->signature);
  if (tide__json_key_is(k, kl, "data")) return text_member(p, &b->data);
  if (tide__json_key_is(k, kl, "input")) {
    b->input_kind = tide__json_kind(tide__json_peek(p));
    b->input_filled = tide__json_is_table(b->input_kind) && filled(p);
    b->has_input = 1;
    return tide__json_skip_raw(p, &b->input);
  }
  if (tide__json_key_is(k, kl, "citations")) {
    int array = tide__json_peek(p) == '[' && filled(p);
    int rc = tide__json_skip_raw(p, &b->citations);
    if (!array) b->citations.len = 0;
    return rc;
  }
  return tide__json_skip(p);
}

/* The block at p->i into ev.block (reset first: a repeated key replaces
** the whole block). */
static int scan_block(tide_json *p) {
  block_fields *b = &stream_of(p)->ev.block;
  memset(b, 0, sizeof *b);
  int kind = tide__json_kind(tide__json_peek(p));
  b->table = tide__json_is_table(kind);
  b->raw.off = p->i;
  int rc = kind == V_OBJECT ? tide__json_each_member(p, block_member) : tide__json_skip(p);
  b->raw.len = p->i - b->raw.off;
  return rc;
}

static int error_member(tide_json *p, const char *k, size_t kl) {
  event_state *ev = &stream_of(p)->ev;
  if (tide__json_key_is(k, kl, "type")) {
    ev->etype_kind = tide__json_kind(tide__json_peek(p));
    if (ev->etype_kind == V_STRING) return text_member(p, &ev->etype);
    ev->etype.has = 0;
    return tide__json_skip_raw(p, &ev->etype_raw);
  }
  if (tide__json_key_is(k, kl, "message")) {
    ev->emsg_kind = tide__json_kind(tide__json_peek(p));
    if (ev->emsg_kind == V_STRING) return tide__json_scratch(p, &ev->emsg);
    return tide__json_skip_raw(p, &ev->emsg);
  }
  return tide__json_skip(p);
}

static int apply_block(tide_json *p, size_t pos);

static int content_element(tide_json *p, size_t idx) {
  int rc = scan_block(p);
  if (rc != J_OK) return rc;
  return apply_block(p, idx + 1);
}

static int reset_content(anthropic_stream *st);

static int root_member(tide_json *p, const char *k, size_t kl) {
  anthropic_stream *st = stream_of(p);
  event_state *ev = &st->ev;
  if (tide__json_key_is(k, kl, "type")) return text_member(p, &ev->type);
  if (tide__json_key_is(k, kl, "index")) {
    ev->index_kind = tide__json_kind(tide__json_peek(p));
    ev->index_ok = 0;
    if (ev->index_kind == V_STRING) return tide__json_scratch(p, &ev->index_str);
    if (ev->index_kind == V_NUMBER) ev->index_ok = tide__json_tointeger(p, &ev->index);
    return tide__json_skip(p);
  }
  if (tide__json_key_is(k, kl, "error")) {
    ev->err_kind = tide__json_kind(tide__json_peek(p));
    ev->etype.has = 0;
    ev->etype_kind = ev->emsg_kind = V_NONE;
    if (ev->err_kind == V_OBJECT) return tide__json_each_member(p, error_member);
    return tide__json_skip(p);
  }
  if (tide__json_key_is(k, kl, "usage")) {
    int kind = tide__json_kind(tide__json_peek(p));
    memset(&ev->usage, 0, sizeof ev->usage);
    ev->usage_table = tide__json_is_table(kind);
    if (kind == V_OBJECT) return tide__json_each_member(p, top_usage_member);
    return tide__json_skip(p);
  }
  if (st->whole) {
    if (tide__json_key_is(k, kl, "container")) return container_value(p);
    if (tide__json_key_is(k, kl, "stop_details")) return stop_details_value(p);
    if (tide__json_key_is(k, kl, "content")) {
      ev->content_kind = tide__json_kind(tide__json_peek(p));
      int rc = reset_content(st);
      if (rc != J_OK) return rc;
      if (ev->content_kind == V_ARRAY) {
        ev->content.off = p->i;
        rc = tide__json_each_element(p, content_element);
        ev->content.len = p->i - ev->content.off;
        return rc;
      }
    } else if (tide__json_key_is(k, kl, "stop_reason")) {
      return text_member(p, &ev->stop_reason);
    }
    return tide__json_skip(p);
  }
  if (tide__json_key_is(k, kl, "message")) {
    memset(&ev->message_usage, 0, sizeof ev->message_usage);
    ev->container.has = 0;
    if (tide__json_peek(p) == '{') return tide__json_each_member(p, message_member);
  } else if (tide__json_key_is(k, kl, "delta")) {
    int kind = tide__json_kind(tide__json_peek(p));
    ev->delta_table = tide__json_is_table(kind);
    ev->dtype.has = ev->dtext.has = ev->partial.has = 0;
    ev->dthinking.has = ev->dsignature.has = ev->stop_reason.has = 0;
    ev->citation.len = 0;
    ev->container.has = ev->explanation.has = 0;
    if (kind == V_OBJECT) return tide__json_each_member(p, delta_member);
  } else if (tide__json_key_is(k, kl, "content_block")) {
    return scan_block(p);
  }
  return tide__json_skip(p);
}

/* ------------------------------------------------------- kept blocks -- */

static int is_thinking(const kept_block *b) { return b->kind == K_THINKING || b->kind == K_REDACTED; }

/* The kept block with this index that is thinking (thinking set) or not,
** the last one; or NULL. */
static kept_block *block_at(anthropic_stream *st, lua_Integer index, int thinking) {
  for (size_t i = st->nblocks; i > 0; i--) {
    kept_block *b = &st->blocks[i - 1];
    if (b->index == index && is_thinking(b) == thinking) return b;
  }
  return NULL;
}

/* A new block after the others (its buffers, when an earlier reply left
** some, emptied), or NULL when out of memory. */
static kept_block *add_block(anthropic_stream *st, lua_Integer index, int kind) {
  if (st->nblocks == st->cap) {
    size_t cap = st->cap ? st->cap * 2 : 4;
    if (cap > SIZE_MAX / sizeof *st->blocks) return NULL;
    kept_block *b = realloc(st->blocks, cap * sizeof *b);
    if (b == NULL) return NULL;
    memset(b + st->cap, 0, (cap - st->cap) * sizeof *b);
    st->blocks = b;
    st->cap = cap;
  }
  kept_block *b = &st->blocks[st->nblocks++];
  if (st->nblocks > st->kept) st->kept = st->nblocks;
  b->index = index;
  b->kind = kind;
  b->has_sig = b->has_data = b->has_input = 0;
  b->from = b->to = 0;
  b->text.len = b->sig.len = 0;
  if (kind == K_THINKING || kind == K_REDACTED) st->nthinking++;
  if (kind == K_OTHER) st->nother++;
  return b;
}

static int set_buf(tide_buf *b, const char *s, size_t n) {
  b->len = 0;
  return n ? tide__buf_add(b, s, n) : 0;
}

/* --------------------------------------------------------- tool inputs -- */

/* The canonical text of the table at input (raw in doc), in st->canon:
** what the Lua parser's decode and re-encode gave (json.c). Returns J_OK,
** J_NOMEM or J_SYNTAX (nested deeper than the decoder allows). */
static int canonical_input(anthropic_stream *st, const char *doc, span input) {
  tide_json q = {doc + input.off, input.len, 0, 0, NULL, 0, NULL, NULL, NULL};
  st->canon.len = 0;
  return tide__json_canonical(&q, &st->canon);
}

/* ------------------------------------------------------ a whole reply -- */

static int reset_content(anthropic_stream *st) {
  /* A repeated "content" key replaces the blocks: the last one counts. */
  st->base.text.len = 0;
  tide__asm_reset(&st->calls, SIZE_MAX); /* this reply's own buffers */
  st->nblocks = st->nthinking = st->nother = 0;
  st->ev.bad_block = 0;
  st->ev.bad_type = st->ev.bad_why = NULL;
  return J_OK;
}

static void refuse_block(event_state *ev, size_t pos, const char *type, const char *why) {
  if (ev->bad_block) return; /* the first one in content order is reported */
  ev->bad_block = (int)(pos > 0x7fffffff ? 0x7fffffff : pos);
  ev->bad_type = type;
  ev->bad_why = why;
}

/* Takes content element pos (1-based), scanned into ev.block, into the
** reply: text, a tool call, a reasoning part; or records why the reply is
** refused. */
static int apply_block(tide_json *p, size_t pos) {
  anthropic_stream *st = stream_of(p);
  event_state *ev = &st->ev;
  const block_fields *b = &ev->block;
  const char *scratch = scratch_of(st);
  if (ev->bad_block) return J_OK;
  if (!b->table) {
    refuse_block(ev, pos, NULL, "is not an object");
    return J_OK;
  }
  if (!b->type.has) return J_OK;
  const char *ty = scratch + b->type.at.off;
  size_t tl = b->type.at.len;
  if (tide__json_key_is(ty, tl, "text")) {
    if (b->text.has && tide__buf_add(&st->base.text, scratch + b->text.at.off, b->text.at.len))
      return J_NOMEM;
  } else if (tide__json_key_is(ty, tl, "tool_use")) {
    const char *args = NULL;
    size_t argsl = 0;
    if (tide__json_is_table(b->input_kind)) {
      int rc = canonical_input(st, p->s, b->input);
      if (rc != J_OK) return rc == J_SYNTAX ? tide__json_syntax(p, "too many nested data structures") : rc;
      args = st->canon.p, argsl = st->canon.len;
    }
    int rc = tide__asm_add(&st->calls, (lua_Integer)st->calls.n,
                           b->id.has ? scratch + b->id.at.off : NULL, b->id.at.len,
                           b->name.has ? scratch + b->name.at.off : NULL, b->name.at.len, args, argsl);
    if (rc == TIDE_ASM_NOMEM) return J_NOMEM;
    if (rc == TIDE_ASM_TOO_LARGE) refuse_block(ev, pos, "tool_use", NULL);
  } else if (tide__json_key_is(ty, tl, "thinking")) {
    if (!b->signature.has || b->signature.at.len == 0) {
      refuse_block(ev, pos, "thinking", "has no signature");
    } else if (!b->thinking.has) {
      refuse_block(ev, pos, "thinking", "has no thinking text");
    } else {
      kept_block *t = add_block(st, 0, K_THINKING);
      if (t == NULL || set_buf(&t->text, scratch + b->thinking.at.off, b->thinking.at.len) ||
          set_buf(&t->sig, scratch + b->signature.at.off, b->signature.at.len))
        return J_NOMEM;
      t->has_sig = 1;
    }
  } else if (tide__json_key_is(ty, tl, "redacted_thinking")) {
    if (!b->data.has || b->data.at.len == 0) {
      refuse_block(ev, pos, "redacted_thinking", "has no data");
    } else {
      kept_block *t = add_block(st, 0, K_REDACTED);
      if (t == NULL || set_buf(&t->text, scratch + b->data.at.off, b->data.at.len)) return J_NOMEM;
      t->has_data = 1;
    }
  } else {
    /* A block tide does not model (a server tool's use or result, ...):
    ** the reply then goes back as its content array, byte for byte. */
    st->nother++;
  }
  return J_OK;
}

/* ---------------------------------------------------------- tool_use -- */

static int json_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Whether the input text s[0..n) goes out as it is: one JSON object, white
** space around it cut (*from, *len: what is sent). Text the Lua encoder
** would re-encode (control characters, or "nan", "inf", "0x" in any case,
** where lua-cjson might have read more than JSON) is declined, so that both
** send the same bytes. */
static int input_as_is(const char *s, size_t n, size_t *from, size_t *len) {
  size_t i = 0, j = n;
  while (i < j && json_space(s[i])) i++;
  while (j > i && json_space(s[j - 1])) j--;
  if (j - i < 2 || s[i] != '{' || s[j - 1] != '}') return 0;
  for (size_t k = i; k < j; k++) {
    unsigned char c = (unsigned char)s[k], d = k + 1 < j ? (unsigned char)(s[k + 1] | 0x20) : 0;
    if (c < 0x20 || c == 0x7f) return 0;
    c |= 0x20; /* lower case, for letters */
    if ((c == 'n' && d == 'a' && k + 2 < j && (s[k + 2] | 0x20) == 'n') ||
        (c == 'i' && d == 'n' && k + 2 < j && (s[k + 2] | 0x20) == 'f') || (c == '0' && d == 'x'))
      return 0;
  }
  if (!tide__json_is_object(s + i, j - i)) return 0;
  *from = i;
  *len = j - i;
  return 1;
}

/* One call's strings (the call tables keep them alive), its input cut. */
typedef struct use_strings {
  const char *id, *name, *args;
  size_t il, nl, from, al;
} use_strings;

/* Call i of the list at idx; 0 when it is not a table of string id, name
** and arguments, or (unless the caller checked them) its arguments are not
** JSON object text as it is sent. */
static int use_strings_of(lua_State *L, int idx, lua_Integer i, int checked, use_strings *c) {
  if (lua_rawgeti(L, idx, i) != LUA_TTABLE) {
    lua_pop(L, 1);
    return 0;
  }
  int t = lua_gettop(L);
  size_t n = 0;
  c->args = tide__field_str(L, t, "arguments", &n);
  c->name = tide__field_str(L, t, "name", &c->nl);
  c->id = tide__field_str(L, t, "id", &c->il);
  lua_pop(L, 1);
  if (!(c->args && c->name && c->id)) return 0;
  if (checked) {
    c->from = 0, c->al = n;
    return 1;
  }
  return input_as_is(c->args, n, &c->from, &c->al);
}

/* ------------------------------------------------------------ replies -- */

/* Anthropic's stop reasons in the neutral set. model_context_window_exceeded
** leaves an unfinished answer tide cannot continue: "length", so that a
** cut-off reply is never taken for a complete one. pause_turn (the server
** paused its own loop of server tools) is "pause": the turn loop sends the
** reply back as it is, and the model goes on. */
static const char *const STOPS[][2] = {
    {"end_turn", "stop"},       {"stop_sequence", "stop"},
    {"tool_use", "tool_calls"}, {"max_tokens", "length"},
    {"pause_turn", "pause"},    {"model_context_window_exceeded", "length"},
    {"refusal", "refusal"},
};

/* Pushes the neutral stop: a reason newer than the table is read from what
** the reply holds. */
static void push_stop(lua_State *L, const anthropic_stream *st) {
  const char *p = st->stop.p ? st->stop.p : "";
  for (size_t i = 0; i < tide__nelem(STOPS); i++) {
    if (tide__json_key_is(p, st->stop.len, STOPS[i][0])) {
      lua_pushstring(L, STOPS[i][1]);
      return;
    }
  }
  if (st->calls.n > 0)
    lua_pushliteral(L, "tool_calls");
  else
    lua_pushliteral(L, "stop");
}

/* Appends s[0..n) quoted (lua-cjson's quoting) to b; -1 when out of memory. */
static int add_quoted(tide_buf *b, const char *s, size_t n) {
  size_t size = tide__json_size_quoted(s, n);
  if (size > SIZE_MAX - b->len - 1 || tide__buf_reserve(b, b->len + size)) return -1;
  b->len += tide__json_write_quoted(b->p + b->len, (const unsigned char *)s, n);
  b->p[b->len] = '\0';
  return 0;
}

#define ADD_LIT(b, s) tide__buf_add((b), (s), sizeof(s) - 1)

/* Appends the JSON of kept block k to out, as the API sent it; 0, or -1
** when out of memory. An empty text block is left out (the API refuses
** one sent back). */
static int write_kept(tide_buf *out, const anthropic_stream *st, const kept_block *k) {
  switch (k->kind) {
  case K_THINKING:
    return ADD_LIT(out, "{\"signature\":") || add_quoted(out, k->sig.p, k->sig.len) ||
           ADD_LIT(out, ",\"thinking\":") || add_quoted(out, k->text.p, k->text.len) ||
           ADD_LIT(out, ",\"type\":\"thinking\"},");
  case K_REDACTED:
    return ADD_LIT(out, "{\"data\":") || add_quoted(out, k->text.p, k->text.len) ||
           ADD_LIT(out, ",\"type\":\"redacted_thinking\"},");
  case K_TEXT:
    if (k->to <= k->from) return 0;
    return ADD_LIT(out, "{") ||
           (k->sig.len > 0 && (ADD_LIT(out, "\"citations\":[") || tide__buf_add(out, k->sig.p, k->sig.len) ||
                               ADD_LIT(out, "],"))) ||
           ADD_LIT(out, "\"text\":") || add_quoted(out, st->base.text.p + k->from, k->to - k->from) ||
           ADD_LIT(out, ",\"type\":\"text\"},");
  default: /* the block as it started, its input the fragments that came */
    if (!k->has_input) return tide__buf_add(out, k->text.p, k->text.len) || ADD_LIT(out, ",");
    return tide__buf_add(out, k->text.p, k->from) || tide__buf_add(out, k->sig.p, k->sig.len) ||
           tide__buf_add(out, k->text.p + k->to, k->text.len - k->to) || ADD_LIT(out, ",");
  }
}

/* Appends call i (1-based) of the finished calls at idx as a tool_use
** block: its input the arguments, white space around them cut, when they
** are one JSON object, else {}; 0, or -1 when out of memory. */
static int write_call(lua_State *L, tide_buf *out, int idx, lua_Integer i) {
  use_strings c;
  use_strings_of(L, idx, i, 1, &c); /* finished calls: id, name and arguments are strings */
  while (c.al > 0 && json_space(c.args[c.from])) c.from++, c.al--;
  while (c.al > 0 && json_space(c.args[c.from + c.al - 1])) c.al--;
  if (!tide__json_is_object(c.args + c.from, c.al)) c.args = "{}", c.from = 0, c.al = 2;
  return ADD_LIT(out, "{\"id\":") || add_quoted(out, c.id, c.il) || ADD_LIT(out, ",\"input\":") ||
         tide__buf_add(out, c.args + c.from, c.al) || ADD_LIT(out, ",\"name\":") ||
         add_quoted(out, c.name, c.nl) || ADD_LIT(out, ",\"type\":\"tool_use\"},");
}

/* A stream's content array into st->content: the kept blocks and the
** finished calls (the table at calls) merged in block order, as the API
** sent them. 0, or -1 when out of memory. */
static int rebuild_content(lua_State *L, anthropic_stream *st, int calls) {
  tide_buf *out = &st->content;
  out->len = 0;
  if (ADD_LIT(out, "[")) return -1;
  size_t k = 0, c = 0, nc = st->calls.n;
  while (k < st->nblocks || c < nc) {
    int take_kept = c == nc || (k < st->nblocks && st->blocks[k].index <= st->calls.slots[c].index);
    if (take_kept ? write_kept(out, st, &st->blocks[k++]) : write_call(L, out, calls, (lua_Integer)++c)) return -1;
  }
  if (out->p[out->len - 1] == ',') out->len--;
  return ADD_LIT(out, "]");
}

/* Adds the reply's content part to the reasoning list at the top of the
** stack: the content as the API sent it (a whole reply's raw array, a
** stream's rebuilt), which the encoder sends back in place of the message
** it would build. */
static void push_content_part(lua_State *L, anthropic_stream *st, int reply) {
  const char *p;
  size_t n;
  if (st->whole) {
    p = st->doc + st->ev.content.off, n = st->ev.content.len;
  } else {
    lua_getfield(L, reply, "tool_calls");
    int rc = rebuild_content(L, st, lua_gettop(L));
    lua_pop(L, 1);
    if (rc) luaL_error(L, "not enough memory");
    p = st->content.p, n = st->content.len;
  }
  lua_createtable(L, 0, 3);
  lua_pushliteral(L, "content");
  lua_setfield(L, -2, "type");
  lua_pushlstring(L, p, n);
  lua_setfield(L, -2, "data");
  lua_pushliteral(L, "anthropic");
  lua_setfield(L, -2, "provider");
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

/* Pushes the reply as the session gets it: text, finished tool calls, the
** reasoning parts in block order (when there were any; then the content
** part when the reply has blocks tide does not model), usage, and the
** stop reason mapped and as sent. */
static void push_reply(lua_State *L, anthropic_stream *st) {
  /* Room for what the provider adds (ttfb_ms, attempts): no rehash. */
  lua_createtable(L, 0, 9);
  int reply = lua_gettop(L);
  lua_pushlstring(L, st->base.text.p ? st->base.text.p : "", st->base.text.len);
  lua_setfield(L, -2, "text");
  tide__asm_push_finished(L, &st->calls);
  lua_setfield(L, -2, "tool_calls");
  if (st->nthinking > 0 || st->nother > 0) {
    lua_createtable(L, (int)(st->nthinking + 1 > INT32_MAX ? 0 : st->nthinking + 1), 0);
    for (size_t i = 0, n = 0; i < st->nblocks; i++) {
      const kept_block *b = &st->blocks[i];
      if (!is_thinking(b)) continue;
      lua_createtable(L, 0, 4);
      if (b->kind == K_REDACTED) {
        lua_pushliteral(L, "redacted");
        lua_setfield(L, -2, "type");
        lua_pushlstring(L, b->text.p, b->text.len);
        lua_setfield(L, -2, "data");
      } else {
        lua_pushliteral(L, "text");
        lua_setfield(L, -2, "type");
        lua_pushlstring(L, b->text.p ? b->text.p : "", b->text.len);
        lua_setfield(L, -2, "text");
        lua_pushlstring(L, b->sig.p, b->sig.len);
        lua_setfield(L, -2, "signature");
      }
      lua_pushliteral(L, "anthropic");
      lua_setfield(L, -2, "provider");
      lua_rawseti(L, -2, (lua_Integer)++n);
    }
    if (st->nother > 0) push_content_part(L, st, reply);
    lua_setfield(L, -2, "reasoning");
  }
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, st->input + st->read + st->write);
  lua_setfield(L, -2, "input");
  lua_pushinteger(L, st->output);
  lua_setfield(L, -2, "output");
  lua_pushinteger(L, st->read);
  lua_setfield(L, -2, "cached");
  lua_pushinteger(L, st->write);
  lua_setfield(L, -2, "cache_write");
  if (st->write_1h > 0) { /* (part of cache_write) */
    lua_pushinteger(L, st->write_1h);
    lua_setfield(L, -2, "cache_write_1h");
  }
  lua_pushinteger(L, st->thinking_tokens); /* inside output, as OpenAI's reasoning tokens */
  lua_setfield(L, -2, "reasoning");
  if (st->searches > 0) {
    lua_pushinteger(L, st->searches);
    lua_setfield(L, -2, "web_searches");
  }
  tide__reply_push_tier(L, &st->base);
  lua_setfield(L, -2, "usage");
  if (st->container.len > 0) {
    lua_pushlstring(L, st->container.p, st->container.len);
    lua_setfield(L, -2, "container");
  }
  if (st->refusal.len > 0) {
    lua_pushlstring(L, st->refusal.p, st->refusal.len);
    lua_setfield(L, -2, "refusal");
  }
  if (st->has_stop) {
    lua_pushlstring(L, st->stop.p ? st->stop.p : "", st->stop.len);
    lua_setfield(L, -2, "stop_raw");
    push_stop(L, st);
    lua_setfield(L, -2, "stop");
  }
}

/* Pushes the message of an error object: its message when a string, else
** (fallback) error.type when a string, else the raw JSON of what was there,
** else "nil", as tostring of the decoded value would read for the cases
** that matter. */
static void push_error_message(lua_State *L, const anthropic_stream *st, const char *doc,
                               int fallback) {
  const event_state *ev = &st->ev;
  const char *scratch = scratch_of(st);
  if (ev->err_kind == V_OBJECT && ev->emsg_kind == V_STRING)
    tide__push_excerpt(L, scratch + ev->emsg.off, ev->emsg.len, TIDE_MESSAGE_MAX);
  else if (ev->err_kind == V_OBJECT && ev->emsg_kind != V_NONE)
    tide__push_excerpt(L, doc + ev->emsg.off, ev->emsg.len, TIDE_MESSAGE_MAX);
  else if (fallback && ev->err_kind == V_OBJECT && ev->etype.has)
    tide__push_excerpt(L, scratch + ev->etype.at.off, ev->etype.at.len, TIDE_MESSAGE_MAX);
  else if (fallback && ev->err_kind == V_OBJECT && ev->etype_kind != V_NONE)
    tide__push_excerpt(L, doc + ev->etype_raw.off, ev->etype_raw.len, TIDE_MESSAGE_MAX);
  else
    lua_pushliteral(L, "nil");
}

/* Whether error.type is name. */
static int etype_is(const anthropic_stream *st, const char *name) {
  const event_state *ev = &st->ev;
  return ev->err_kind == V_OBJECT && ev->etype.has &&
         tide__json_key_is(scratch_of(st) + ev->etype.at.off, ev->etype.at.len, name);
}

/* Sets err.type to error.type when it is a string. */
static void set_error_type(lua_State *L, const anthropic_stream *st) {
  const event_state *ev = &st->ev;
  if (ev->err_kind != V_OBJECT || !ev->etype.has) return;
  lua_pushlstring(L, scratch_of(st) + ev->etype.at.off, ev->etype.at.len);
  lua_setfield(L, -2, "type");
}

/* An error event mid-stream. Overloaded, api_error and rate limits may be
** retried by the exchange as long as no text reached on_delta; body is the
** event's data (the Lua side cuts it to the error body excerpt). */
static void push_stream_error(lua_State *L, const anthropic_stream *st, const tide_sse_event *e) {
  int rate = etype_is(st, "rate_limit_error");
  int retryable = rate || etype_is(st, "overloaded_error") || etype_is(st, "api_error");
  push_error_message(L, st, e->data, 1);
  tide__push_error_from(L, rate ? "RateLimited" : "ProviderError", "anthropic stream error: ");
  set_error_type(L, st);
  lua_pushlstring(L, e->data, e->data_len);
  lua_setfield(L, -2, "body");
  lua_pushboolean(L, retryable);
  lua_setfield(L, -2, "retryable");
}

/* ------------------------------------------------------------- events -- */

/* The event's index as math.tointeger reads the decoded value: a number, or
** a string Lua converts; 1 with *v, else 0. */
static int event_index(lua_State *L, const anthropic_stream *st, lua_Integer *v) {
  const event_state *ev = &st->ev;
  if (ev->index_kind == V_NUMBER) {
    *v = ev->index;
    return ev->index_ok;
  }
  if (ev->index_kind != V_STRING) return 0;
  const char *s = scratch_of(st) + ev->index_str.off;
  size_t n = ev->index_str.len;
  char tmp[64];
  if (n == 0 || n >= sizeof tmp || memchr(s, '\0', n)) return 0;
  memcpy(tmp, s, n);
  tmp[n] = '\0';
  if (lua_stringtonumber(L, tmp) == 0) return 0;
  int ok;
  *v = lua_tointegerx(L, -1, &ok);
  lua_pop(L, 1);
  return ok;
}

/* Whether the text field f of the scratch buffer is name. */
static int field_is(const anthropic_stream *st, const text_field *f, const char *name) {
  return f->has && tide__json_key_is(scratch_of(st) + f->at.off, f->at.len, name);
}

static int asm_failed(tide_reply_feed *fc, anthropic_stream *st, int rc) {
  if (rc == TIDE_ASM_NOMEM) return fc->nomem = 1, 0;
  tide__push_asm_too_large(fc->L, &st->calls);
  return 1;
}

static int block_start(tide_reply_feed *fc, anthropic_stream *st, const tide_sse_event *e) {
  lua_State *L = fc->L;
  const block_fields *b = &st->ev.block;
  const char *scratch = scratch_of(st);
  if (!b->table) {
    tide__push_malformed(L, NULL, 0, "anthropic content_block_start has no block");
    return 1;
  }
  lua_Integer index;
  int valid = event_index(L, st, &index) && index >= 0;
  st->cur_text = 0; /* text deltas go to a text block only until the next block starts */
  if (field_is(st, &b->type, "tool_use")) {
    if (!valid) {
      tide__push_malformed(L, NULL, 0, "anthropic tool_use block has no valid index");
      return 1;
    }
    /* The input arrives as input_json_delta fragments; a server that sends
    ** it whole here is taken at its word. */
    const char *args = NULL;
    size_t argsl = 0;
    if (b->input_filled) {
      int rc = canonical_input(st, e->data, b->input);
      if (rc == J_NOMEM) return fc->nomem = 1, 0;
      if (rc != J_OK) {
        tide__push_malformed(L, e->data, e->data_len,
                             "anthropic stream event is not valid JSON (too many nested data structures)");
        return 1;
      }
      args = st->canon.p, argsl = st->canon.len;
    }
    int rc = tide__asm_add(&st->calls, index, b->id.has ? scratch + b->id.at.off : NULL, b->id.at.len,
                           b->name.has ? scratch + b->name.at.off : NULL, b->name.at.len, args, argsl);
    if (rc) return asm_failed(fc, st, rc);
    tide__reply_tool_input(fc, index, b->id.has ? scratch + b->id.at.off : NULL, b->id.has ? b->id.at.len : 0,
                           b->name.has ? scratch + b->name.at.off : NULL, b->name.has ? b->name.at.len : 0, args,
                           args ? argsl : 0);
  } else if (field_is(st, &b->type, "text")) {
    /* Where its text lies (and its citations), for a reply that goes back
    ** whole. */
    kept_block *t = add_block(st, valid ? index : -1, K_TEXT);
    if (t == NULL) return fc->nomem = 1, 0;
    t->from = t->to = st->base.text.len;
    st->cur_text = st->nblocks;
    if (b->citations.len > 2 &&
        set_buf(&t->sig, e->data + b->citations.off + 1, b->citations.len - 2)) /* inside [ ] */
      return fc->nomem = 1, 0;
    if (b->text.has && tide__reply_text(fc, scratch + b->text.at.off, b->text.at.len)) return 0;
    st->blocks[st->cur_text - 1].to = st->base.text.len;
  } else if (field_is(st, &b->type, "thinking") || field_is(st, &b->type, "redacted_thinking")) {
    int redacted = field_is(st, &b->type, "redacted_thinking");
    if (!valid || block_at(st, index, 1)) {
      tide__push_malformed(L, NULL, 0, "anthropic %s block has no valid index",
                           redacted ? "redacted_thinking" : "thinking");
      return 1;
    }
    /* Kept in block order; a thinking block's text and signature arrive as
    ** deltas and are checked when the stream ends. */
    kept_block *t = add_block(st, index, redacted ? K_REDACTED : K_THINKING);
    if (t == NULL) return fc->nomem = 1, 0;
    if (redacted) {
      t->has_data = b->data.has;
      if (b->data.has && set_buf(&t->text, scratch + b->data.at.off, b->data.at.len))
        return fc->nomem = 1, 0;
    } else {
      t->has_sig = b->signature.has;
      if (b->signature.has && set_buf(&t->sig, scratch + b->signature.at.off, b->signature.at.len))
        return fc->nomem = 1, 0;
      if (b->thinking.has && b->thinking.at.len > 0) {
        if (set_buf(&t->text, scratch + b->thinking.at.off, b->thinking.at.len)) return fc->nomem = 1, 0;
        tide__reply_reasoning(fc, scratch + b->thinking.at.off, b->thinking.at.len);
      }
    }
  } else if (b->type.has) {
    /* A block tide does not model (a server tool's use or result, ...),
    ** kept as it started; input_json_delta fragments make its input. */
    kept_block *o = add_block(st, valid ? index : -1, K_OTHER);
    if (o == NULL || set_buf(&o->text, e->data + b->raw.off, b->raw.len)) return fc->nomem = 1, 0;
    if (b->has_input) o->from = b->input.off - b->raw.off, o->to = o->from + b->input.len;
  }
  return 0;
}

static int block_delta(tide_reply_feed *fc, anthropic_stream *st, const tide_sse_event *e) {
  lua_State *L = fc->L;
  const event_state *ev = &st->ev;
  const char *scratch = scratch_of(st);
  if (!ev->delta_table) {
    tide__push_malformed(L, NULL, 0, "anthropic content_block_delta has no delta");
    return 1;
  }
  if (field_is(st, &ev->dtype, "text_delta")) {
    if (!ev->dtext.has || ev->dtext.at.len == 0) return 0;
    if (st->cur_text == 0) { /* text outside a text block is one of its own */
      kept_block *t = add_block(st, -1, K_TEXT);
      if (t == NULL) return fc->nomem = 1, 0;
      t->from = st->base.text.len;
      st->cur_text = st->nblocks;
    }
    if (tide__reply_text(fc, scratch + ev->dtext.at.off, ev->dtext.at.len)) return 0;
    st->blocks[st->cur_text - 1].to = st->base.text.len;
  } else if (field_is(st, &ev->dtype, "input_json_delta")) {
    lua_Integer index;
    if (!event_index(L, st, &index) || index < 0) {
      tide__push_malformed(L, NULL, 0, "anthropic input_json_delta has no valid index");
      return 1;
    }
    const char *frag = ev->partial.has ? scratch + ev->partial.at.off : NULL;
    kept_block *o = block_at(st, index, 0);
    if (o != NULL && o->kind == K_OTHER) { /* a server tool's input, not a call of tide's */
      /* (an input without arguments streams as one empty fragment: the
      ** block keeps the input it started with, {}) */
      if (frag == NULL || ev->partial.at.len == 0) return 0;
      if (tide__buf_add(&o->sig, frag, ev->partial.at.len)) return fc->nomem = 1, 0;
      o->has_input = 1;
      return 0;
    }
    int rc = tide__asm_add(&st->calls, index, NULL, 0, NULL, 0, frag, ev->partial.at.len);
    if (rc) return asm_failed(fc, st, rc);
    tide__reply_tool_input(fc, index, NULL, 0, NULL, 0, frag, frag ? ev->partial.at.len : 0);
  } else if (field_is(st, &ev->dtype, "citations_delta")) {
    lua_Integer index;
    kept_block *t = event_index(L, st, &index) ? block_at(st, index, 0) : NULL;
    if (t != NULL && t->kind == K_TEXT && ev->citation.len > 0 &&
        ((t->sig.len > 0 && tide__buf_add(&t->sig, ",", 1)) ||
         tide__buf_add(&t->sig, e->data + ev->citation.off, ev->citation.len)))
      return fc->nomem = 1, 0;
  } else if (field_is(st, &ev->dtype, "thinking_delta") || field_is(st, &ev->dtype, "signature_delta")) {
    int sig = field_is(st, &ev->dtype, "signature_delta");
    lua_Integer index;
    kept_block *t = event_index(L, st, &index) ? block_at(st, index, 1) : NULL;
    if (t == NULL || t->kind == K_REDACTED) {
      tide__push_malformed(L, NULL, 0, "anthropic %s outside a thinking block",
                           sig ? "signature_delta" : "thinking_delta");
      return 1;
    }
    if (sig) {
      /* The whole signature, sent once just before the block stops. */
      if (ev->dsignature.has) {
        if (set_buf(&t->sig, scratch + ev->dsignature.at.off, ev->dsignature.at.len))
          return fc->nomem = 1, 0;
        t->has_sig = 1;
      }
    } else if (ev->dthinking.has && ev->dthinking.at.len > 0) {
      if (tide__buf_add(&t->text, scratch + ev->dthinking.at.off, ev->dthinking.at.len))
        return fc->nomem = 1, 0;
      tide__reply_reasoning(fc, scratch + ev->dthinking.at.off, ev->dthinking.at.len);
    }
  }
  return 0;
}

/* The kind's event: one SSE event. Returns 1 with an error on the Lua
** stack, or 0 (out of memory: fc->nomem). */
static int anthropic_event(tide_reply_feed *fc, const tide_sse_event *e) {
  anthropic_stream *st = (anthropic_stream *)fc->r;
  /* "[DONE]" is not Anthropic's, but proxies add it. */
  if (st->done || e->done) return 0;
  tide_json p = {e->data, e->data_len, 0, 0, NULL, 0, &st->scratch, &st->key, st};
  int object;
  memset(&st->ev, 0, sizeof st->ev);
  st->scratch.len = 0;
  int kind, rc = tide__json_scan_root(&p, root_member, &kind);
  object = tide__json_is_table(kind);
  if (rc == J_NOMEM) return fc->nomem = 1, 0;
  if (rc == J_SYNTAX) {
    tide__push_malformed(fc->L, e->data, e->data_len,
                         "anthropic stream event is not valid JSON (%s at character %I)", p.err,
                         (lua_Integer)p.err_at + 1);
    return 1;
  }
  if (!object) {
    tide__push_malformed(fc->L, e->data, e->data_len, "anthropic stream event is not a JSON object");
    return 1;
  }
  event_state *ev = &st->ev;
  const char *ty = e->event;
  size_t tl = e->event_len;
  if (ev->type.has) ty = scratch_of(st) + ev->type.at.off, tl = ev->type.at.len;
  if (tide__json_key_is(ty, tl, "content_block_delta")) return block_delta(fc, st, e);
  if (tide__json_key_is(ty, tl, "content_block_start")) return block_start(fc, st, e);
  if (tide__json_key_is(ty, tl, "message_start")) {
    const usage_fields *u = &ev->message_usage;
    st->input = u->input, st->read = u->read, st->write = u->write, st->output = u->output;
    st->write_1h = u->write_1h, st->thinking_tokens = u->thinking, st->searches = u->searches;
    keep_tier(st, u);
    if (ev->container.has && set_buf(&st->container, scratch_of(st) + ev->container.at.off, ev->container.at.len))
      return fc->nomem = 1, 0;
  } else if (tide__json_key_is(ty, tl, "message_delta")) {
    if (ev->delta_table && ev->container.has &&
        set_buf(&st->container, scratch_of(st) + ev->container.at.off, ev->container.at.len))
      return fc->nomem = 1, 0;
    if (ev->delta_table && ev->explanation.has &&
        set_buf(&st->refusal, scratch_of(st) + ev->explanation.at.off, ev->explanation.at.len))
      return fc->nomem = 1, 0;
    if (ev->delta_table && ev->stop_reason.has) {
      if (set_buf(&st->stop, scratch_of(st) + ev->stop_reason.at.off, ev->stop_reason.at.len))
        return fc->nomem = 1, 0;
      st->has_stop = 1;
    }
    /* Every count here is cumulative; the input ones are restated by newer
    ** servers (and then final), left out by older ones. */
    const usage_fields *u = &ev->usage;
    if (ev->usage_table) {
      if (u->seen_output) st->output = u->output;
      if (u->num_input) st->input = u->input;
      if (u->num_read) st->read = u->read;
      if (u->num_write) st->write = u->write;
      if (u->num_write_1h) st->write_1h = u->write_1h;
      if (u->num_thinking) st->thinking_tokens = u->thinking;
      if (u->num_searches) st->searches = u->searches;
      keep_tier(st, u);
    }
  } else if (tide__json_key_is(ty, tl, "message_stop")) {
    st->done = 1;
  } else if (tide__json_key_is(ty, tl, "error")) {
    push_stream_error(fc->L, st, e);
    return 1;
  }
  /* ping, content_block_stop and unknown events carry nothing a reply needs. */
  return 0;
}

/* The kind's finish: the reply once the stream ended. */
static int anthropic_finish(lua_State *L, tide_reply *r) {
  anthropic_stream *st = (anthropic_stream *)r;
  lua_pushnil(L);
  if (!st->done) {
    tide__push_malformed(L, NULL, 0, "anthropic stream ended before message_stop");
    lua_pushlstring(L, r->text.p ? r->text.p : "", r->text.len);
    lua_setfield(L, -2, "partial_text");
    return 2;
  }
  lua_Integer n = 0;
  for (size_t i = 0; i < st->nblocks; i++) {
    const kept_block *b = &st->blocks[i];
    if (!is_thinking(b)) continue;
    int redacted = b->kind == K_REDACTED;
    n++;
    if (redacted ? !b->has_data || b->text.len == 0 : !b->has_sig || b->sig.len == 0) {
      tide__push_malformed(L, NULL, 0, "anthropic %s block %I %s", redacted ? "redacted_thinking" : "thinking", n,
                           redacted ? "has no data" : "has no signature");
      return 2;
    }
  }
  /* A server tool's input must be what the API would take back. */
  for (size_t i = 0; i < st->nblocks; i++) {
    const kept_block *b = &st->blocks[i];
    if (b->kind == K_OTHER && b->has_input && (b->to == b->from || !tide__json_is_object(b->sig.p ? b->sig.p : "", b->sig.len))) {
      tide__push_malformed(L, NULL, 0, "anthropic content block %I has an input that is not a JSON object",
                           b->index);
      return 2;
    }
  }
  lua_pop(L, 1);
  push_reply(L, st);
  return 1;
}

/* The kind's free: what the parser holds beyond the shell's part. */
static void anthropic_free(tide_reply *r) {
  anthropic_stream *st = (anthropic_stream *)r;
  tide__asm_free(&st->calls);
  tide__buf_free(&st->scratch);
  tide__buf_free(&st->key);
  tide__buf_free(&st->canon);
  tide__buf_free(&st->stop);
  tide__buf_free(&st->content);
  tide__buf_free(&st->container);
  tide__buf_free(&st->refusal);
  for (size_t i = 0; i < st->kept; i++) {
    tide__buf_free(&st->blocks[i].text);
    tide__buf_free(&st->blocks[i].sig);
  }
  free(st->blocks);
  st->blocks = NULL;
  st->nblocks = st->kept = st->cap = st->nthinking = st->nother = st->cur_text = 0;
}

/* The kind's reset: emptied for the next reply, its buffers (those up to
** keep bytes) and its blocks' buffers kept. */
static void anthropic_reset(tide_reply *r, size_t keep, size_t max) {
  anthropic_stream *st = (anthropic_stream *)r;
  tide__asm_reset(&st->calls, keep);
  st->calls.max = max;
  tide__buf_keep(&st->scratch, keep);
  tide__buf_keep(&st->key, keep);
  tide__buf_keep(&st->canon, keep);
  tide__buf_keep(&st->stop, keep);
  tide__buf_keep(&st->content, keep);
  tide__buf_keep(&st->container, keep);
  tide__buf_keep(&st->refusal, keep);
  for (size_t i = 0; i < st->kept; i++) {
    tide__buf_keep(&st->blocks[i].text, keep);
    tide__buf_keep(&st->blocks[i].sig, keep);
  }
  st->nblocks = st->nthinking = st->nother = st->cur_text = 0;
  st->doc = NULL;
  memset(&st->ev, 0, sizeof st->ev);
  st->input = st->output = st->read = st->write = st->write_1h = st->thinking_tokens = st->searches = 0;
  st->has_stop = st->done = st->whole = 0;
}

static const tide_reply_kind ANTHROPIC = {
    "tide.anthropic_stream", "anthropic stream", sizeof(anthropic_stream),
    anthropic_event, anthropic_finish, anthropic_reset, anthropic_free};

/* ------------------------------------------------------------ bindings -- */

/* core.anthropic_stream([max_bytes [, framing]]) -> stream
** framing: "sse" (the default), or "aws" for an AWS event stream (Bedrock). */
static int l_anthropic_stream(lua_State *L) {
  static const char *const framings[] = {"sse", "aws", NULL};
  int aws = luaL_checkoption(L, 2, "sse", framings);
  tide__reply_new(L, &ANTHROPIC, tide__check_max(L, 1, TIDE_REPLY_DEFAULT_MAX));
  if (aws) tide__reply_aws(L); /* Claude on Bedrock: eventstream.c */
  return 1;
}

/* Whether a whole reply is an error object: type "error", or an error
** table and no content at all. */
static int is_error_reply(const anthropic_stream *st) {
  const event_state *ev = &st->ev;
  return field_is(st, &ev->type, "error") || (tide__json_is_table(ev->err_kind) && ev->content_kind == V_NONE);
}

/* Pushes nil and the error of a whole reply the scan took but the reply
** refuses, in the order the Lua parser checked: an error object, no
** content array, the first block that cannot be taken. */
static int whole_error(lua_State *L, anthropic_stream *st, const char *s) {
  const event_state *ev = &st->ev;
  lua_pushnil(L);
  if (is_error_reply(st)) {
    push_error_message(L, st, s, 0);
    tide__push_error_from(L, etype_is(st, "rate_limit_error") ? "RateLimited" : "ProviderError",
                          "anthropic returned an error: ");
    set_error_type(L, st);
  } else if (!tide__json_is_table(ev->content_kind)) {
    tide__push_malformed(L, NULL, 0, "anthropic response has no content array");
  } else if (ev->bad_type && !ev->bad_why) {
    tide__push_asm_too_large(L, &st->calls);
  } else if (ev->bad_type) {
    tide__push_malformed(L, NULL, 0, "anthropic content[%d] (%s) %s", ev->bad_block, ev->bad_type,
                         ev->bad_why);
  } else {
    tide__push_malformed(L, NULL, 0, "anthropic content[%d] %s", ev->bad_block, ev->bad_why);
  }
  return 2;
}

/* core.anthropic_parse(body | req[, max_bytes]) -> reply | nil, err
** A whole (non-streamed) Messages response, scanned in place: the reply
** table of s:finish(), without decoding the body into tables first; or the
** error it is: not JSON, an error object (ProviderError, RateLimited), no
** content array, a block that cannot be taken (MalformedResponse). Errors
** carry no body: the caller adds its excerpt. */
static int l_anthropic_parse(lua_State *L) {
  size_t n;
  /* the body: a string, or read in place from a finished http_post */
  const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n) : tide__http_body(L, 1, &n);
  if (s == NULL) luaL_typeerror(L, 1, "string or http request");
  size_t max = tide__check_max(L, 2, TIDE_REPLY_DEFAULT_MAX);
  /* The state's one parser of whole replies (the shell's): the caller keeps
  ** the body anchored. */
  anthropic_stream *st = (anthropic_stream *)tide__reply_whole(L, &ANTHROPIC, max);
  st->whole = 1;
  st->doc = s;
  tide_json p = {s, n, 0, 0, NULL, 0, &st->scratch, &st->key, st};
  int object, ret;
  int kind, rc = tide__json_scan_root(&p, root_member, &kind);
  object = tide__json_is_table(kind);
  event_state *ev = &st->ev;
  if (rc == J_NOMEM) {
    anthropic_free(&st->base);
    return luaL_error(L, "not enough memory");
  }
  if (rc == J_SYNTAX) {
    lua_pushnil(L);
    tide__push_malformed(L, NULL, 0, "anthropic response is not valid JSON (%s at character %I)", p.err,
                         (lua_Integer)p.err_at + 1);
    ret = 2;
  } else if (!object) {
    lua_pushnil(L);
    tide__push_malformed(L, NULL, 0, "anthropic response is not a JSON object");
    ret = 2;
  } else if (is_error_reply(st) || !tide__json_is_table(ev->content_kind) || ev->bad_block) {
    ret = whole_error(L, st, s);
  } else {
    usage_fields *u = &ev->usage;
    st->input = u->input, st->output = u->output, st->read = u->read, st->write = u->write;
    st->write_1h = u->write_1h, st->thinking_tokens = u->thinking, st->searches = u->searches;
    keep_tier(st, u);
    if ((ev->container.has &&
         set_buf(&st->container, scratch_of(st) + ev->container.at.off, ev->container.at.len)) ||
        (ev->explanation.has &&
         set_buf(&st->refusal, scratch_of(st) + ev->explanation.at.off, ev->explanation.at.len)) ||
        (ev->stop_reason.has &&
         set_buf(&st->stop, scratch_of(st) + ev->stop_reason.at.off, ev->stop_reason.at.len))) {
      anthropic_free(&st->base);
      return luaL_error(L, "not enough memory");
    }
    st->has_stop = ev->stop_reason.has;
    st->done = 1;
    push_reply(L, st);
    ret = 1;
  }
  tide__reply_whole_done(&st->base);
  return ret;
}

/* ------------------------------------------------------------ messages -- */

/* The assistant message with tool calls and the tool results, written as
** provider.anthropic's encoder writes them (keys sorted, as the canonical
** encoder would order them): a session encodes every such message of its
** tool loop. Two passes, as openai.c's encoders: the first sizes the string
** and checks every value, the second writes it. */

static const char MSG_OPEN[] = "{\"content\":[";
static const char ASSISTANT_CLOSE[] = "],\"role\":\"assistant\"}";
static const char USER_CLOSE[] = "],\"role\":\"user\"}";
static const char TEXT_OPEN[] = "{\"text\":";
static const char TEXT_CLOSE[] = ",\"type\":\"text\"}";
static const char USE_OPEN[] = "{\"id\":";
static const char USE_INPUT[] = ",\"input\":";
static const char USE_NAME[] = ",\"name\":";
static const char USE_CLOSE[] = ",\"type\":\"tool_use\"}";
static const char RESULT_OPEN[] = "{\"content\":";
static const char RESULT_ERROR[] = ",\"is_error\":true,\"tool_use_id\":";
static const char RESULT_OK[] = ",\"is_error\":false,\"tool_use_id\":";
static const char RESULT_CLOSE[] = ",\"type\":\"tool_result\"}";

/* core.anthropic_assistant_wire(text, calls[, thinking[, checked]]) -> string | nil
** The assistant message with tool calls: the thinking blocks (their JSON,
** joined, as the Lua encoder makes them) first, then the text block unless
** the text is "" or nil, then one tool_use block per call with its
** arguments as the input; nil when there is no call, or a call is not a
** table of string id, name and arguments that are one JSON object as it
** is sent. The provider then makes each input what it sends (checked: the
** arguments are written as they are) and asks again. */
static int l_assistant_wire(lua_State *L) {
  size_t tl = 0, hl = 0;
  const char *text = lua_isnil(L, 1) ? "" : luaL_checklstring(L, 1, &tl);
  luaL_checktype(L, 2, LUA_TTABLE);
  const char *thinking = luaL_optlstring(L, 3, "", &hl);
  int checked = lua_toboolean(L, 4);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
  if (n < 1) return 0;
  size_t total = TIDE_LIT(MSG_OPEN) + TIDE_LIT(ASSISTANT_CLOSE);
  if (hl > 0) total += hl + 1;
  if (tl > 0) total += TIDE_LIT(TEXT_OPEN) + tide__json_size_quoted(text, tl) + TIDE_LIT(TEXT_CLOSE) + 1;
  for (lua_Integer i = 1; i <= n; i++) {
    use_strings c;
    if (!use_strings_of(L, 2, i, checked, &c)) return 0;
    total += (i > 1) + TIDE_LIT(USE_OPEN) + TIDE_LIT(USE_INPUT) + TIDE_LIT(USE_NAME) + TIDE_LIT(USE_CLOSE) +
             tide__json_size_quoted(c.id, c.il) + c.al + tide__json_size_quoted(c.name, c.nl);
  }
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, total);
  size_t k = 0;
  tide__json_put(out, &k, MSG_OPEN, TIDE_LIT(MSG_OPEN));
  if (hl > 0) {
    tide__json_put(out, &k, thinking, hl);
    out[k++] = ',';
  }
  if (tl > 0) {
    tide__json_put(out, &k, TEXT_OPEN, TIDE_LIT(TEXT_OPEN));
    tide__json_put_quoted(out, &k, text, tl);
    tide__json_put(out, &k, TEXT_CLOSE, TIDE_LIT(TEXT_CLOSE));
    out[k++] = ',';
  }
  for (lua_Integer i = 1; i <= n; i++) {
    use_strings c = {NULL, NULL, NULL, 0, 0, 0, 0};
    use_strings_of(L, 2, i, checked, &c); /* checked above */
    if (i > 1) out[k++] = ',';
    tide__json_put(out, &k, USE_OPEN, TIDE_LIT(USE_OPEN));
    tide__json_put_quoted(out, &k, c.id, c.il);
    tide__json_put(out, &k, USE_INPUT, TIDE_LIT(USE_INPUT));
    tide__json_put(out, &k, c.args + c.from, c.al);
    tide__json_put(out, &k, USE_NAME, TIDE_LIT(USE_NAME));
    tide__json_put_quoted(out, &k, c.name, c.nl);
    tide__json_put(out, &k, USE_CLOSE, TIDE_LIT(USE_CLOSE));
  }
  tide__json_put(out, &k, ASSISTANT_CLOSE, TIDE_LIT(ASSISTANT_CLOSE));
  luaL_pushresultsize(&b, k);
  return 1;
}

/* core.anthropic_results_wire(results) -> string | nil
** A tool message's results: one user message of tool_result blocks
** (is_error true only for a result whose is_error is true); nil when a
** result is not a table of string id and content, or there is none. */
static int l_results_wire(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
  if (n < 1) return 0;
  size_t total = TIDE_LIT(MSG_OPEN) + TIDE_LIT(USER_CLOSE);
  for (lua_Integer i = 1; i <= n; i++) {
    const char *c = NULL, *id = NULL;
    size_t cl = 0, il = 0;
    int err;
    if (!tide__result_strings(L, 1, i, &c, &cl, &id, &il, &err)) return 0;
    total += (i > 1) + TIDE_LIT(RESULT_OPEN) + (err ? TIDE_LIT(RESULT_ERROR) : TIDE_LIT(RESULT_OK)) +
             TIDE_LIT(RESULT_CLOSE) + tide__json_size_quoted(c, cl) + tide__json_size_quoted(id, il);
  }
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, total);
  size_t k = 0;
  tide__json_put(out, &k, MSG_OPEN, TIDE_LIT(MSG_OPEN));
  for (lua_Integer i = 1; i <= n; i++) {
    const char *c = NULL, *id = NULL;
    size_t cl = 0, il = 0;
    int err = 0;
    tide__result_strings(L, 1, i, &c, &cl, &id, &il, &err); /* checked above */
    if (i > 1) out[k++] = ',';
    tide__json_put(out, &k, RESULT_OPEN, TIDE_LIT(RESULT_OPEN));
    tide__json_put_quoted(out, &k, c, cl);
    if (err)
      tide__json_put(out, &k, RESULT_ERROR, TIDE_LIT(RESULT_ERROR));
    else
      tide__json_put(out, &k, RESULT_OK, TIDE_LIT(RESULT_OK));
    tide__json_put_quoted(out, &k, id, il);
    tide__json_put(out, &k, RESULT_CLOSE, TIDE_LIT(RESULT_CLOSE));
  }
  tide__json_put(out, &k, USER_CLOSE, TIDE_LIT(USER_CLOSE));
  luaL_pushresultsize(&b, k);
  return 1;
}

/// Registers core.anthropic_stream, core.anthropic_parse and the message
/// encoders core.anthropic_assistant_wire and core.anthropic_results_wire
/// into the module table at the top of the stack, and (re)creates the
/// "tide.anthropic_stream" metatable with the reply shell's methods and
/// sink.
void tide__open_anthropic(lua_State *L) {
  static const luaL_Reg fns[] = {{"anthropic_stream", l_anthropic_stream},
                                 {"anthropic_parse", l_anthropic_parse},
                                 {"anthropic_assistant_wire", l_assistant_wire},
                                 {"anthropic_results_wire", l_results_wire},
                                 {NULL, NULL}};
  tide__reply_register(L, &ANTHROPIC);
  luaL_setfuncs(L, fns, 0);
}
