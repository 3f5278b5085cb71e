/*
** template.c -- a Mustache subset for prompts, compiled once, rendered in C.
**
** Tags: {{name}} {{a.b}} {{.}} {{{name}}} {{&name}} (all the same: prompts are
** never HTML-escaped), {{#name}}..{{/name}}, {{^name}}..{{/name}}, {{! note}}
** and {{> partial}}. A section, inverted, closing, comment or partial tag alone
** on its line takes the whole line with it ("standalone" lines), and the
** indentation of a standalone partial is applied to each line of the partial,
** as in the Mustache specification.
**
** Lookup is strict: a name found in no context is an error, so a typo in a
** prompt fails loudly instead of silently rendering as nothing.
**
** A compiled template is a userdata that owns malloc'ed copies of the source,
** the instruction array and the names; text instructions are spans of the
** source. Rendering writes into a luaL_Buffer and keeps the context stack in
** a Lua table, so that the buffer's stack discipline holds and a Lua error
** raised mid-render (a failing __index, out of memory) leaks nothing. Render
** failures are recorded in C while unwinding and returned as nil, err.
**
** The output is capped (16 MiB unless the caller says otherwise). The depth
** of partials is bounded, but not their fan-out: ten partials that each
** include the next twice render 2^10 copies of the last, so a few lines of
** prompt can ask for gigabytes. Every append is checked against the cap
** before the buffer grows. Sections nested over lists multiply the same way
** without writing a byte (24 nested sections over a list of two run 2^24
** bodies, seconds of C the loop cannot interrupt): the work is capped too.
*/
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tide.h"

#define TEMPLATE_MT "tide.template"

#define MAX_NESTING 64        /* open sections in one template */
#define MAX_PARTIAL_DEPTH 32  /* partials inside partials, while rendering */
#define DEFAULT_MAX_OUTPUT ((lua_Integer)16 << 20) /* rendered bytes */
/* Instructions run and section iterations made, per render: far above what
** a prompt of any real size needs, and under a second of work. */
#define MAX_STEPS ((uint64_t)4 << 20)
#define MAX_STEPS_S "4194304"

enum {
  OP_TEXT,     /* a = offset in src, b = length */
  OP_VAR,      /* a = name */
  OP_SECTION,  /* a = name, b = index of the first op after the body */
  OP_INVERTED, /* a = name, b = as for OP_SECTION */
  OP_PARTIAL   /* a = name; b, c = offset, length of the indentation */
};

typedef struct tmpl_op {
  uint8_t op;
  uint8_t standalone; /* OP_PARTIAL: its own line, indentation in b, c */
  uint32_t line;      /* of the tag, 1-based, for errors */
  uint32_t a, b, c;
} tmpl_op;

/* A name: "a.b.c" is stored in strs as "a.b.c\0a\0b\0c\0". `.` has nseg 0.
** Partial names are stored whole (nseg 0) and never split. */
typedef struct tmpl_name {
  uint32_t full, seg, nseg;
} tmpl_name;

typedef struct tide_template {
  char *src; /* NUL-terminated copy of the source */
  size_t srclen;
  char *file; /* the name given at compile time, for errors */
  tmpl_op *ops;
  uint32_t nops, capops;
  tmpl_name *names;
  uint32_t nnames, capnames;
  char *strs;
  size_t nstrs, capstrs;
} tide_template;

/* ---------------------------------------------------------- allocation -- */

static void template_free(tide_template *t) {
  free(t->src);
  free(t->file);
  free(t->ops);
  free(t->names);
  free(t->strs);
  memset(t, 0, sizeof *t);
}

/* Grows an array owned by the template userdata; raising from here is safe
** because the collector will free whatever the userdata holds. */
static void *grow(lua_State *L, void *p, uint32_t *cap, uint32_t need,
                  size_t elem) {
  if (need <= *cap) return p;
  uint32_t n = *cap ? *cap : 16;
  while (n < need) {
    if (n > UINT32_MAX / 2) luaL_error(L, "template too large");
    n *= 2;
  }
  void *q = realloc(p, (size_t)n * elem);
  if (q == NULL) luaL_error(L, "not enough memory");
  *cap = n;
  return q;
}

static tmpl_op *add_op(lua_State *L, tide_template *t, int op, uint32_t line) {
  t->ops = grow(L, t->ops, &t->capops, t->nops + 1, sizeof *t->ops);
  tmpl_op *o = &t->ops[t->nops++];
  memset(o, 0, sizeof *o);
  o->op = (uint8_t)op;
  o->line = line;
  return o;
}

/* Appends s[0..n) and a NUL to strs; returns its offset. */
static uint32_t add_str(lua_State *L, tide_template *t, const char *s,
                        size_t n) {
  if (t->capstrs - t->nstrs < n + 1) {
    size_t cap = t->capstrs ? t->capstrs : 64;
    while (cap - t->nstrs < n + 1) cap *= 2;
    if (cap > UINT32_MAX) luaL_error(L, "template too large");
    char *q = realloc(t->strs, cap);
    if (q == NULL) luaL_error(L, "not enough memory");
    t->strs = q;
    t->capstrs = cap;
  }
  uint32_t off = (uint32_t)t->nstrs;
  memcpy(t->strs + off, s, n);
  t->strs[off + n] = '\0';
  t->nstrs += n + 1;
  return off;
}

/* ------------------------------------------------------------ compiling -- */

typedef struct compiler {
  lua_State *L;
  tide_template *t;
  const char *s; /* == t->src */
  size_t n;
  uint32_t line;    /* line number at `counted` */
  size_t counted;   /* newlines before this offset are counted in line */
  uint32_t err_line;
  struct {
    uint32_t op;        /* index of the OP_SECTION / OP_INVERTED */
    size_t name, nlen;  /* the name, as offset and length in s */
  } open[MAX_NESTING];
  int nopen;
} compiler;

static uint32_t line_at(compiler *c, size_t pos) {
  for (; c->counted < pos; c->counted++)
    if (c->s[c->counted] == '\n') c->line++;
  return c->line;
}

static int is_space(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* Pushes name (n bytes) as an error message shows it: at most 80 bytes of
** it, then "...", and control bytes (a NUL, which would end the message
** there, a newline) as '?'. Returns the pushed string. */
#define SHOWN_NAME_MAX 80
static const char *push_shown_name(lua_State *L, const char *s, size_t n) {
  char buf[SHOWN_NAME_MAX + 4] = ""; /* (an error path: its cost does not count) */
  size_t k = n > SHOWN_NAME_MAX ? SHOWN_NAME_MAX : n;
  for (size_t i = 0; i < k; i++) {
    unsigned char ch = (unsigned char)s[i];
    buf[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
  }
  if (k < n) {
    memcpy(buf + k, "...", 3);
    k += 3;
  }
  return lua_pushlstring(L, buf, k);
}

/* Pushes a TemplateError for the compiler's current line; returns -1. The
** detail is formatted with lua_pushfstring, so '%s' takes a C string and a
** name in the source is passed through a pushed Lua string. */
static int compile_error(compiler *c, const char *fmt, const char *name,
                         size_t nlen, const char *name2, size_t nlen2) {
  lua_State *L = c->L;
  push_shown_name(L, name ? name : "", nlen);
  push_shown_name(L, name2 ? name2 : "", nlen2);
  tide__push_error(L, "TemplateError", fmt, lua_tostring(L, -2),
                   lua_tostring(L, -1));
  lua_pushstring(L, c->t->file);
  lua_setfield(L, -2, "file");
  lua_pushinteger(L, c->err_line);
  lua_setfield(L, -2, "line");
  lua_replace(L, -3);
  lua_pop(L, 1);
  return -1;
}

/* Adds a name op operand: validates and splits "a.b" into segments. */
static int add_name(compiler *c, const char *s, size_t n, int split,
                    uint32_t *out) {
  tide_template *t = c->t;
  tmpl_name nm = {0, 0, 0};
  if (split && !(n == 1 && s[0] == '.')) {
    for (size_t i = 0; i < n; i++)
      /* (a control byte too: a NUL would cut the name where it is looked up) */
      if (is_space(s[i]) || s[i] == '{' || s[i] == '}' || (unsigned char)s[i] < 0x20 || s[i] == 0x7f)
        return compile_error(c, "invalid name '%s'", s, n, NULL, 0);
    if (s[0] == '.' || s[n - 1] == '.' || memmem(s, n, "..", 2))
      return compile_error(c, "invalid name '%s'", s, n, NULL, 0);
  }
  nm.full = add_str(c->L, t, s, n);
  if (split && !(n == 1 && s[0] == '.')) {
    size_t i = 0;
    while (i <= n) {
      size_t j = i;
      while (j < n && s[j] != '.') j++;
      uint32_t off = add_str(c->L, t, s + i, j - i);
      if (nm.nseg++ == 0) nm.seg = off;
      i = j + 1;
    }
  }
  t->names = grow(c->L, t->names, &t->capnames, t->nnames + 1, sizeof nm);
  t->names[t->nnames] = nm;
  *out = t->nnames++;
  return 0;
}

static void emit_text(compiler *c, size_t from, size_t to) {
  if (to <= from) return;
  tmpl_op *o = add_op(c->L, c->t, OP_TEXT, 0);
  o->a = (uint32_t)from;
  o->b = (uint32_t)(to - from);
}

/* Compiles c->s into c->t. Returns 0, or -1 with an error table pushed. */
static int compile(compiler *c) {
  const char *s = c->s;
  size_t n = c->n, text = 0, pos = 0;
  for (;;) {
    const char *open = memmem(s + pos, n - pos, "{{", 2);
    if (open == NULL) break;
    size_t at = (size_t)(open - s), body, close, end;
    c->err_line = line_at(c, at);
    char kind = s[at + 2];
    const char *found;
    if (kind == '{') { /* {{{name}}} */
      body = at + 3;
      found = memmem(s + body, n - body, "}}}", 3);
      if (found == NULL) return compile_error(c, "unclosed tag", NULL, 0, NULL, 0);
      close = (size_t)(found - s);
      end = close + 3;
      kind = '&';
    } else {
      if (kind != '\0' && strchr("#^/!>&=", kind))
        body = at + 3;
      else
        body = at + 2, kind = 'v';
      found = memmem(s + body, n - body, "}}", 2);
      if (found == NULL) return compile_error(c, "unclosed tag", NULL, 0, NULL, 0);
      close = (size_t)(found - s);
      end = close + 2;
    }
    /* The trimmed tag content. */
    size_t nb = body, ne = close;
    while (nb < ne && is_space(s[nb])) nb++;
    while (ne > nb && is_space(s[ne - 1])) ne--;
    const char *name = s + nb;
    size_t nlen = ne - nb;
    if (kind == '=')
      return compile_error(c, "set-delimiter tags are not supported", NULL, 0,
                           NULL, 0);
    if (nlen == 0 && kind != '!')
      return compile_error(c, "empty tag", NULL, 0, NULL, 0);

    /* Standalone: only blanks between the line's start and the tag, and
    ** between the tag and the line's end. `text` bounds the look-back so a
    ** tag earlier on the same line disqualifies it. */
    size_t text_end = at, next = end, ws = at;
    int standalone = 0;
    if (strchr("#^/!>", kind)) {
      size_t q = end;
      while (ws > text && (s[ws - 1] == ' ' || s[ws - 1] == '\t')) ws--;
      while (q < n && (s[q] == ' ' || s[q] == '\t')) q++;
      int line_start = ws == 0 || s[ws - 1] == '\n';
      int line_end = q == n || s[q] == '\n' ||
                     (s[q] == '\r' && q + 1 < n && s[q + 1] == '\n');
      if (line_start && line_end) {
        standalone = 1;
        text_end = ws;
        next = q == n ? n : q + (s[q] == '\r' ? 2 : 1);
      }
    }
    emit_text(c, text, text_end);
    text = pos = next;

    uint32_t idx;
    switch (kind) {
      case '!':
        break;
      case '>': {
        if (add_name(c, name, nlen, 0, &idx) < 0) return -1;
        tmpl_op *o = add_op(c->L, c->t, OP_PARTIAL, c->err_line);
        o->a = idx;
        if (standalone) { /* its indentation applies to each of its lines */
          o->standalone = 1;
          o->b = (uint32_t)ws;
          o->c = (uint32_t)(at - ws);
        }
        break;
      }
      case '#':
      case '^': {
        if (c->nopen == MAX_NESTING)
          return compile_error(c, "sections nested too deeply", NULL, 0, NULL,
                               0);
        if (add_name(c, name, nlen, 1, &idx) < 0) return -1;
        tmpl_op *o = add_op(c->L, c->t, kind == '#' ? OP_SECTION : OP_INVERTED,
                            c->err_line);
        o->a = idx;
        c->open[c->nopen].op = c->t->nops - 1;
        c->open[c->nopen].name = nb;
        c->open[c->nopen].nlen = nlen;
        c->nopen++;
        break;
      }
      case '/': {
        if (c->nopen == 0)
          return compile_error(c, "unexpected closing tag '%s'", name, nlen,
                               NULL, 0);
        size_t on = c->open[c->nopen - 1].name, ol = c->open[c->nopen - 1].nlen;
        if (ol != nlen || memcmp(s + on, name, nlen) != 0)
          return compile_error(c,
                               "unexpected closing tag '%s' (open section is "
                               "'%s')",
                               name, nlen, s + on, ol);
        c->nopen--;
        c->t->ops[c->open[c->nopen].op].b = c->t->nops;
        break;
      }
      default: /* 'v', '&' */
        if (add_name(c, name, nlen, 1, &idx) < 0) return -1;
        add_op(c->L, c->t, OP_VAR, c->err_line)->a = idx;
        break;
    }
  }
  emit_text(c, text, n);
  if (c->nopen > 0) {
    uint32_t op = c->open[c->nopen - 1].op;
    c->err_line = c->t->ops[op].line;
    return compile_error(c, "unclosed section '%s'",
                         s + c->open[c->nopen - 1].name,
                         c->open[c->nopen - 1].nlen, NULL, 0);
  }
  return 0;
}

/* ------------------------------------------------------------- rendering -- */

/* The indentation of the standalone partials being rendered, innermost
** first; each lives in the source of the template that included it. */
typedef struct indent {
  const char *s;
  size_t n;
  const struct indent *outer;
} indent;

typedef struct render {
  lua_State *L;
  luaL_Buffer b;
  int ctxs, nctx;    /* stack index of the context table, and its depth */
  int held, nheld;   /* values kept alive while in use (arrays, partials) */
  int partials;      /* stack index of the partials table, or 0 */
  int depth;         /* partial depth */
  const indent *ind; /* NULL outside standalone partials */
  int pending;       /* at a line start: ind is owed before the next output */
  size_t max;        /* the output cap */
  int overflow;      /* an append was refused: the cap would have been passed */
  uint64_t steps;    /* instructions run and iterations made (MAX_STEPS) */
  const char *root;  /* the file of the template being rendered */
  char max_s[24];    /* max as text, for the error */
  /* the failure, formatted once the buffer has been dropped */
  const char *err_fmt, *err_a, *err_b, *err_file;
  uint32_t err_line;
} render;

/* True when n more bytes fit under the cap; otherwise records the overflow,
** which render_ops turns into the error after the op that caused it. Once
** set, nothing more is appended. */
static int room(render *r, size_t n) {
  if (!r->overflow && n > r->max - luaL_bufflen(&r->b)) r->overflow = 1;
  return !r->overflow;
}

static void add(render *r, const char *s, size_t n) {
  if (room(r, n)) luaL_addlstring(&r->b, s, n);
}

static int render_fail(render *r, const tide_template *t, const tmpl_op *o,
                       const char *fmt, const char *a, const char *b) {
  r->err_fmt = fmt;
  r->err_a = a;
  r->err_b = b;
  r->err_file = t->file;
  r->err_line = o->line;
  return -1;
}

static void add_indent(render *r, const indent *ind) {
  if (ind == NULL) return;
  add_indent(r, ind->outer);
  add(r, ind->s, ind->n);
}

static void flush_indent(render *r) {
  if (r->pending) {
    r->pending = 0;
    add_indent(r, r->ind);
  }
}

static void put_text(render *r, const char *s, size_t n) {
  if (r->ind == NULL) {
    add(r, s, n);
    return;
  }
  /* Inside a standalone partial, each line starts with the indentation. The
  ** indentation is owed, not written, after a newline, so that the partial's
  ** last newline is not followed by stray blanks. */
  while (n > 0 && !r->overflow) {
    flush_indent(r);
    const char *nl = memchr(s, '\n', n);
    size_t k = nl ? (size_t)(nl - s) + 1 : n;
    add(r, s, k);
    if (nl) r->pending = 1;
    s += k;
    n -= k;
  }
}

/* Pushes the value of name and returns 1, or returns 0 (nothing pushed) when
** no context has it. Balanced between buffer operations: it leaves exactly
** the one value it pushes. */
static int lookup(render *r, const tide_template *t, const tmpl_name *nm) {
  lua_State *L = r->L;
  if (nm->nseg == 0) { /* "." */
    if (lua_rawgeti(L, r->ctxs, r->nctx) != LUA_TNIL) return 1;
    lua_pop(L, 1);
    return 0;
  }
  const char *seg = t->strs + nm->seg;
  int k;
  for (k = r->nctx; k >= 1; k--) {
    if (lua_rawgeti(L, r->ctxs, k) == LUA_TTABLE) {
      if (lua_getfield(L, -1, seg) != LUA_TNIL) {
        lua_remove(L, -2);
        break;
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  if (k < 1) return 0;
  for (uint32_t i = 1; i < nm->nseg; i++) {
    seg += strlen(seg) + 1;
    if (lua_type(L, -1) != LUA_TTABLE) {
      lua_pop(L, 1);
      return 0;
    }
    if (lua_getfield(L, -1, seg) == LUA_TNIL) {
      lua_pop(L, 2);
      return 0;
    }
    lua_remove(L, -2);
  }
  return 1;
}

static int is_null(lua_State *L, int idx) { /* cjson.null */
  return lua_islightuserdata(L, idx) && lua_touserdata(L, idx) == NULL;
}

static void push_context(render *r) {
  lua_rawseti(r->L, r->ctxs, ++r->nctx);
}

static void pop_context(render *r) {
  lua_pushnil(r->L);
  lua_rawseti(r->L, r->ctxs, r->nctx--);
}

enum { SKIP, ONCE, EACH, BAD };

/* Classifies the section value at the top of the stack. */
static int section_kind(lua_State *L) {
  switch (lua_type(L, -1)) {
    case LUA_TBOOLEAN:
      return lua_toboolean(L, -1) ? ONCE : SKIP;
    case LUA_TNUMBER:
      return ONCE;
    case LUA_TSTRING:
      return lua_rawlen(L, -1) > 0 ? ONCE : SKIP;
    case LUA_TTABLE:
      if (lua_rawlen(L, -1) > 0) return EACH;
      lua_pushnil(L);
      if (lua_next(L, -2)) {
        lua_pop(L, 2);
        return ONCE;
      }
      return SKIP;
    case LUA_TLIGHTUSERDATA:
      if (is_null(L, -1)) return SKIP;
      return BAD;
    default:
      return BAD;
  }
}

static int render_ops(render *r, const tide_template *t, uint32_t lo,
                      uint32_t hi);

static int too_much_work(render *r, const tide_template *t, const tmpl_op *o) {
  return render_fail(r, t, o,
                     "rendering '%s' takes more than %s steps (sections nested "
                     "over lists multiply)",
                     r->root, MAX_STEPS_S);
}

static int render_partial(render *r, const tide_template *t,
                          const tmpl_op *o) {
  lua_State *L = r->L;
  const char *name = t->strs + t->names[o->a].full;
  if (r->partials == 0 || lua_getfield(L, r->partials, name) == LUA_TNIL) {
    if (r->partials) lua_pop(L, 1);
    return render_fail(r, t, o, "unknown partial '%s'", name, NULL);
  }
  tide_template *p = tide__testudata(L, -1, TEMPLATE_MT);
  if (p == NULL || p->src == NULL)
    return luaL_argerror(
        L, 3, lua_pushfstring(L, "partial '%s' is not a template", name));
  if (r->depth >= MAX_PARTIAL_DEPTH) {
    lua_pop(L, 1);
    return render_fail(r, t, o, "partial recursion too deep", NULL, NULL);
  }
  lua_rawseti(L, r->held, ++r->nheld); /* the partials table may change */
  const indent *saved = r->ind;
  indent ind;
  if (o->standalone) {
    ind.s = t->src + o->b;
    ind.n = o->c;
    ind.outer = r->ind;
    r->ind = &ind;
    r->pending = 1;
  } else {
    /* An inline partial continues the current line: pay any owed
    ** indentation now, and do not indent the partial's own lines. */
    flush_indent(r);
    r->ind = NULL;
  }
  r->depth++;
  int rc = render_ops(r, p, 0, p->nops);
  r->depth--;
  r->ind = saved;
  r->pending = o->standalone && saved != NULL;
  lua_pushnil(L);
  lua_rawseti(L, r->held, r->nheld--);
  return rc;
}

static int render_ops(render *r, const tide_template *t, uint32_t lo,
                      uint32_t hi) {
  lua_State *L = r->L;
  for (uint32_t i = lo; i < hi; i++) {
    const tmpl_op *o = &t->ops[i];
    const tmpl_name *nm = o->op == OP_TEXT ? NULL : &t->names[o->a];
    if (++r->steps > MAX_STEPS) return too_much_work(r, t, o);
    switch (o->op) {
      case OP_TEXT:
        put_text(r, t->src + o->a, o->b);
        break;
      case OP_VAR: {
        flush_indent(r);
        if (!lookup(r, t, nm))
          return render_fail(r, t, o, "unknown variable '%s'",
                             t->strs + nm->full, NULL);
        switch (lua_type(L, -1)) {
          case LUA_TSTRING:
            if (room(r, lua_rawlen(L, -1)))
              luaL_addvalue(&r->b);
            else
              lua_pop(L, 1);
            break;
          case LUA_TNUMBER:
            if (lua_isinteger(L, -1)) {
              size_t len;
              lua_tolstring(L, -1, &len); /* converts in place */
              if (room(r, len))
                luaL_addvalue(&r->b);
              else
                lua_pop(L, 1);
            } else {
              char num[64];
              snprintf(num, sizeof num, "%.14g", (double)lua_tonumber(L, -1));
              lua_pop(L, 1);
              add(r, num, strlen(num));
            }
            break;
          case LUA_TBOOLEAN: {
            int v = lua_toboolean(L, -1);
            lua_pop(L, 1);
            add(r, v ? "true" : "false", v ? 4 : 5);
            break;
          }
          default:
            if (is_null(L, -1)) { /* JSON null renders as nothing */
              lua_pop(L, 1);
              break;
            }
            return render_fail(r, t, o, "cannot render %s '%s' as text",
                               luaL_typename(L, -1), t->strs + nm->full);
        }
        break;
      }
      case OP_SECTION:
      case OP_INVERTED: {
        if (!lookup(r, t, nm))
          return render_fail(r, t, o, "unknown variable '%s'",
                             t->strs + nm->full, NULL);
        int kind = section_kind(L);
        if (kind == BAD)
          return render_fail(r, t, o, "cannot use %s '%s' as a section",
                             luaL_typename(L, -1), t->strs + nm->full);
        if (o->op == OP_INVERTED) {
          lua_pop(L, 1);
          if (kind == SKIP && render_ops(r, t, i + 1, o->b) < 0) return -1;
        } else if (kind == SKIP) {
          lua_pop(L, 1);
        } else if (kind == ONCE) {
          push_context(r);
          if (render_ops(r, t, i + 1, o->b) < 0) return -1;
          pop_context(r);
        } else { /* EACH */
          lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
          lua_rawseti(L, r->held, ++r->nheld);
          int arr = r->nheld;
          for (lua_Integer k = 1; k <= n; k++) {
            /* (an empty body runs no instruction to count) */
            if (++r->steps > MAX_STEPS) return too_much_work(r, t, o);
            lua_rawgeti(L, r->held, arr);
            lua_rawgeti(L, -1, k);
            lua_remove(L, -2);
            push_context(r);
            if (render_ops(r, t, i + 1, o->b) < 0) return -1;
            pop_context(r);
          }
          lua_pushnil(L);
          lua_rawseti(L, r->held, r->nheld--);
        }
        i = o->b - 1; /* continue after the body */
        break;
      }
      case OP_PARTIAL:
        if (render_partial(r, t, o) < 0) return -1;
        break;
    }
    if (r->overflow)
      return render_fail(r, t, o,
                         "rendering '%s' passes the output cap of %s bytes",
                         r->root, r->max_s);
  }
  return 0;
}

/* ------------------------------------------------------------- bindings -- */

static tide_template *check_template(lua_State *L, int idx) {
  return tide__checkudata(L, idx, TEMPLATE_MT);
}

/* core.template_compile(source [, name]) -> template | nil, err */
static int l_template_compile(lua_State *L) {
  size_t n;
  const char *src = luaL_checklstring(L, 1, &n);
  const char *file = luaL_optstring(L, 2, "template");
  if (n >= UINT32_MAX) {
    tide__push_error(L, "TemplateError", "template too large");
    lua_pushstring(L, file);
    lua_setfield(L, -2, "file");
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  /* Created empty and with its metatable first, so that whatever is
  ** allocated below is freed by __gc if anything raises. */
  tide_template *t = lua_newuserdatauv(L, sizeof *t, 0);
  memset(t, 0, sizeof *t);
  luaL_setmetatable(L, TEMPLATE_MT);
  size_t flen = strlen(file);
  if ((t->src = malloc(n + 1)) == NULL || (t->file = malloc(flen + 1)) == NULL)
    return luaL_error(L, "not enough memory");
  memcpy(t->src, src, n);
  t->src[n] = '\0';
  t->srclen = n;
  memcpy(t->file, file, flen + 1);
  compiler c;
  memset(&c, 0, sizeof c);
  c.L = L;
  c.t = t;
  c.s = t->src;
  c.n = n;
  c.line = 1;
  if (compile(&c) < 0) {
    template_free(t); /* the error table holds copies of what it needs */
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  return 1;
}

/* t:partials() -> { name, ... } in order of first use */
static int l_partials(lua_State *L) {
  tide_template *t = check_template(L, 1);
  lua_settop(L, 1);
  lua_newtable(L); /* 2: result */
  lua_newtable(L); /* 3: seen */
  lua_Integer k = 0;
  for (uint32_t i = 0; i < t->nops; i++) {
    if (t->ops[i].op != OP_PARTIAL) continue;
    const char *name = t->strs + t->names[t->ops[i].a].full;
    if (lua_getfield(L, 3, name) == LUA_TNIL) {
      lua_pushboolean(L, 1);
      lua_setfield(L, 3, name);
      lua_pushstring(L, name);
      lua_rawseti(L, 2, ++k);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 1;
}

/* t:render(data [, partials [, max_bytes]]) -> string | nil, err
** max_bytes caps the output (default 16 MiB): past it, a TemplateError. The
** buffer never holds more than the cap, though luaL_Buffer's growth may
** reserve up to half as much again. */
static int l_render(lua_State *L) {
  tide_template *t = check_template(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lua_Integer max = luaL_optinteger(L, 4, DEFAULT_MAX_OUTPUT);
  luaL_argcheck(L, max >= 0, 4, "must be non-negative");
  lua_settop(L, 3);
  render r;
  memset(&r, 0, sizeof r);
  r.L = L;
  r.max = (size_t)max;
  r.root = t->file;
  snprintf(r.max_s, sizeof r.max_s, "%lld", (long long)max);
  r.partials = lua_istable(L, 3) ? 3 : 0;
  lua_createtable(L, 8, 0); /* 4: the context stack */
  r.ctxs = 4;
  lua_pushvalue(L, 2);
  push_context(&r);
  lua_createtable(L, 4, 0); /* 5: held values */
  r.held = 5;
  luaL_buffinit(L, &r.b);
  if (render_ops(&r, t, 0, t->nops) == 0) {
    luaL_pushresult(&r.b);
    return 1;
  }
  /* Drop the buffer (and anything left above it); the names in the error
  ** live in templates that are still anchored by arguments 1 and 3, and
  ** are copied as messages show them. */
  lua_settop(L, 5);
  lua_pushnil(L);
  const char *a = r.err_a ? push_shown_name(L, r.err_a, strlen(r.err_a)) : NULL;
  const char *b = r.err_b ? push_shown_name(L, r.err_b, strlen(r.err_b)) : NULL;
  tide__push_error(L, "TemplateError", r.err_fmt, a, b);
  if (lua_gettop(L) > 7) { /* the error next to the nil, the names dropped */
    lua_replace(L, 7);
    lua_settop(L, 7);
  }
  lua_pushstring(L, r.err_file);
  lua_setfield(L, -2, "file");
  if (r.err_line > 0) { /* text has no line of its own: no line, not 0 */
    lua_pushinteger(L, r.err_line);
    lua_setfield(L, -2, "line");
  }
  return 2;
}

/* ------------------------------------------------------------ normalise -- */

/* The layout rules of a rendered prompt, in one pass over s into out (which
** has room for n bytes: the result is never longer). Byte for byte what this
** Lua chain gives, which it replaced (four unanchored passes over the text):
**   s:gsub("\r\n", "\n"):gsub("[ \t]+\n", "\n"):gsub("\n\n\n+", "\n\n")
** Each "\r\n" loses its "\r"; a run of spaces and tabs followed by a
** newline is dropped (such a run never spans a dropped "\r", since the "\n"
** after that ends it, so it is one span of s); a newline is written only while
** fewer than two were written with nothing but dropped runs between them.
** Returns the number of bytes written. */
static size_t normalise_lines(const char *s, size_t n, char *out) {
  size_t o = 0, blank = 0, nblank = 0;
  int newlines = 0;
  size_t i = 0;
  while (i < n) {
    char c = s[i];
    if (c == ' ' || c == '\t') {
      if (nblank++ == 0) blank = i;
      i++;
    } else if (c == '\n') {
      nblank = 0;
      if (newlines < 2) {
        newlines++;
        out[o++] = '\n';
      }
      i++;
    } else if (c == '\r' && i + 1 < n && s[i + 1] == '\n') {
      i++; /* dropped: the "\n" that follows decides */
    } else {
      if (nblank > 0) {
        memcpy(out + o, s + blank, nblank);
        o += nblank;
        nblank = 0;
      }
      newlines = 0;
      /* Copy the run of ordinary bytes up to the next one that matters (a
      ** "\r" is copied here only when it is not followed by "\n"). */
      do {
        out[o++] = s[i++];
      } while (i < n && (c = s[i]) != ' ' && c != '\t' && c != '\n' && c != '\r');
    }
  }
  if (nblank > 0) {
    memcpy(out + o, s + blank, nblank);
    o += nblank;
  }
  return o;
}

/* core.template_normalise(text) -> text: trailing blanks dropped from every
** line ("\r\n" read as "\n"), runs of blank lines collapsed to one, and the
** whole trimmed of whitespace as Lua's "%s" knows it (isspace, as lstrlib
** uses): what :gsub("^%s+", ""):gsub("%s+$", "") did after the chain above. */
static int l_template_normalise(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, n);
  size_t len = normalise_lines(s, n, out);
  size_t lo = 0;
  while (lo < len && isspace((unsigned char)out[lo])) lo++;
  while (len > lo && isspace((unsigned char)out[len - 1])) len--;
  if (lo > 0) memmove(out, out + lo, len - lo);
  luaL_pushresultsize(&b, len - lo);
  return 1;
}

static int l_gc(lua_State *L) {
  template_free(check_template(L, 1));
  return 0;
}

static int l_tostring(lua_State *L) {
  tide_template *t = check_template(L, 1);
  lua_pushfstring(L, "tide.template (%s)", t->file ? t->file : "invalid");
  return 1;
}

/// Registers core.template_compile and core.template_normalise into the
/// module table at the top of the stack and (re)creates the "tide.template"
/// metatable.
void tide__open_template(lua_State *L) {
  static const luaL_Reg meta[] = {
      {"__gc", l_gc}, {"__tostring", l_tostring}, {NULL, NULL}};
  static const luaL_Reg methods[] = {
      {"render", l_render}, {"partials", l_partials}, {NULL, NULL}};
  static const luaL_Reg fns[] = {{"template_compile", l_template_compile},
                                 {"template_normalise", l_template_normalise},
                                 {NULL, NULL}};
  tide__register_type(L, TEMPLATE_MT, meta, methods);
  luaL_setfuncs(L, fns, 0);
}
