/*
** raw_curl.c -- the libcurl floor for bench/run.lua.
**
** The fewest instructions a client can spend on an HTTP round trip through
** libcurl's multi interface: no event loop of its own (curl_multi_poll), no
** Lua, response bytes counted and dropped. tide's HTTP client is libcurl multi
** on libuv with Lua tasks on top, so the ratio of the two is what tide adds.
** The easy-handle options are the ones core/http.c sets, so both sides speak
** the same HTTP/1.1 over the same kept-alive connections, with two
** exceptions that make this the best libcurl can do rather than a copy of
** tide's choices: no CURLOPT_PIPEWAIT (over plain-HTTP/1.1 it parks a burst
** of new transfers behind the first response; RAW_CURL_PIPEWAIT=1 turns it
** on), and in concurrent mode CURLMOPT_MAXCONNECTS = C, so that kept-alive
** connections are not closed as transfers come and go.
**
**   raw_curl [options] URL sequential N        N requests, one in flight
**   raw_curl [options] URL concurrent N C      N requests, C in flight
**   raw_curl [options] URL replay R FILE...    R rounds; each round sends the
**                                              bodies of FILE... in order,
**                                              one in flight
** options:
**   --body FILE      request body (sequential, concurrent); default: a small
**                    OpenAI chat-completions request
**   -H 'Name: value' an extra request header (repeatable)
**   --warmup K       K untimed requests first (concurrent: K rounds of C), so
**                    that connections are open before the clock starts
**   --plain          print only requests per second
**
** Prints one JSON object: {"mode", "requests", "errors", "connections",
** "seconds", "rps", "us_per_req", "cpu_us_per_req", "bytes_in",
** "max_rss_kb"}. Exits 1 if any request failed.
*/
#define _XOPEN_SOURCE 700

#include <curl/curl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_HEADERS 32

static const char default_body[] =
    "{\"model\":\"bench\",\"stream\":false,\"messages\":[{\"role\":\"user\","
    "\"content\":\"hello\"}]}";

typedef struct body {
  char *p;
  size_t len;
} body;

typedef struct client {
  CURLM *multi;
  struct curl_slist *headers;
  const char *url;
  unsigned long long bytes_in;
  long errors;
  long connections;
} client;

/* Process CPU time: when the server is the bottleneck, wall time hides how
** much work the client did; CPU time per request does not. */
static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *msg, const char *arg) {
  fprintf(stderr, "raw_curl: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
  exit(2);
}

static body read_file(const char *path) {
  body b = {NULL, 0};
  FILE *f = fopen(path, "rb");
  if (f == NULL) die("cannot open", path);
  size_t cap = 4096;
  b.p = malloc(cap);
  if (b.p == NULL) die("out of memory", NULL);
  size_t n;
  while ((n = fread(b.p + b.len, 1, cap - b.len, f)) > 0) {
    b.len += n;
    if (b.len == cap) {
      cap *= 2;
      char *np = realloc(b.p, cap);
      if (np == NULL) die("out of memory", NULL);
      b.p = np;
    }
  }
  fclose(f);
  return b;
}

static size_t write_cb(char *p, size_t size, size_t n, void *ud) {
  (void)p;
  client *c = ud;
  c->bytes_in += size * n;
  return size * n;
}

/* The options core/http.c gives every request, minus the Lua plumbing. */
static CURL *new_easy(client *c) {
  CURL *e = curl_easy_init();
  if (e == NULL) die("curl_easy_init failed", NULL);
  curl_easy_setopt(e, CURLOPT_URL, c->url);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 120000L);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 8192L);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  if (getenv("RAW_CURL_PIPEWAIT")) curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
  return e;
}

static void set_body(CURL *e, const body *b) {
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)b->len);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, b->p);
}

/* Collects finished transfers; returns how many finished. Each finished
** handle is taken out of the multi handle and handed to `done`. */
static int reap(client *c, void (*done)(client *, CURL *, void *), void *ud) {
  CURLMsg *msg;
  int left, n = 0;
  while ((msg = curl_multi_info_read(c->multi, &left))) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL *e = msg->easy_handle;
    long status = 0, connects = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &connects);
    c->connections += connects;
    if (msg->data.result != CURLE_OK || status != 200) {
      if (c->errors < 5)
        fprintf(stderr, "raw_curl: request failed: %s (HTTP %ld)\n",
                curl_easy_strerror(msg->data.result), status);
      c->errors++;
    }
    curl_multi_remove_handle(c->multi, e);
    n++;
    done(c, e, ud);
  }
  return n;
}

/* ------------------------------------------------------ one in flight -- */

static void noop_done(client *c, CURL *e, void *ud) {
  (void)c;
  (void)e;
  (void)ud;
}

static void one(client *c, CURL *e, const body *b) {
  set_body(e, b);
  curl_multi_add_handle(c->multi, e);
  int running = 1;
  curl_multi_perform(c->multi, &running);
  while (reap(c, noop_done, NULL) == 0) {
    curl_multi_poll(c->multi, NULL, 0, 1000, NULL);
    curl_multi_perform(c->multi, &running);
  }
}

/* ---------------------------------------------------- many in flight -- */

typedef struct conc {
  long started, target;
  const body *b;
} conc;

static void conc_done(client *c, CURL *e, void *ud) {
  conc *k = ud;
  if (k->started < k->target) {
    k->started++;
    curl_multi_add_handle(c->multi, e);
  }
}

/* Runs `n` requests with at most `inflight` at once on `easies`. */
static void concurrent(client *c, CURL **easies, long inflight, long n,
                       const body *b) {
  conc k = {0, n, b};
  long done = 0;
  for (long i = 0; i < inflight && k.started < n; i++) {
    set_body(easies[i], b);
    curl_multi_add_handle(c->multi, easies[i]);
    k.started++;
  }
  int running;
  for (;;) {
    curl_multi_perform(c->multi, &running);
    done += reap(c, conc_done, &k);
    if (done >= n) break;
    /* Only after reaping: a transfer that the perform finished leaves
    ** nothing to poll for, and the poll would sleep its whole timeout. */
    curl_multi_poll(c->multi, NULL, 0, 1000, NULL);
  }
}

/* --------------------------------------------------------------- main -- */

int main(int argc, char **argv) {
  const char *body_path = NULL, *hdrs[MAX_HEADERS];
  int nhdrs = 0, plain = 0;
  long warmup = 0;
  int i = 1;
  for (; i < argc && argv[i][0] == '-'; i++) {
    if (strcmp(argv[i], "--body") == 0 && i + 1 < argc) {
      body_path = argv[++i];
    } else if (strcmp(argv[i], "-H") == 0 && i + 1 < argc) {
      if (nhdrs == MAX_HEADERS) die("too many headers", NULL);
      hdrs[nhdrs++] = argv[++i];
    } else if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc) {
      warmup = atol(argv[++i]);
    } else if (strcmp(argv[i], "--plain") == 0) {
      plain = 1;
    } else {
      die("unknown option", argv[i]);
    }
  }
  if (argc - i < 3)
    die("usage: raw_curl [--body FILE] [-H 'k: v'] [--warmup K] [--plain] URL "
        "sequential N | concurrent N C | replay R FILE...", NULL);
  client c = {0};
  c.url = argv[i];
  const char *mode = argv[i + 1];
  long n = atol(argv[i + 2]);
  if (n <= 0) die("N must be positive", argv[i + 2]);

  /* Thousands of connections need as many descriptors: take the hard limit. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  c.multi = curl_multi_init();
  struct curl_slist *sl = curl_slist_append(NULL, "Expect:");
  int has_ct = 0;
  for (int h = 0; h < nhdrs; h++) {
    if (strncmp(hdrs[h], "content-type:", 13) == 0) has_ct = 1;
    sl = curl_slist_append(sl, hdrs[h]);
  }
  if (!has_ct) sl = curl_slist_append(sl, "content-type: application/json");
  c.headers = sl;

  body def = {(char *)default_body, sizeof default_body - 1};
  body given = {NULL, 0};
  if (body_path) given = read_file(body_path);
  const body *b = body_path ? &given : &def;

  long requests = 0;
  double t0 = 0, t1 = 0, c0 = 0, c1 = 0;
  if (strcmp(mode, "sequential") == 0) {
    CURL *e = new_easy(&c);
    for (long w = 0; w < warmup; w++) one(&c, e, b);
    c.connections = 0;
    c0 = cpu_s();
    t0 = now_s();
    for (long k = 0; k < n; k++) one(&c, e, b);
    t1 = now_s();
    c1 = cpu_s();
    requests = n;
    curl_easy_cleanup(e);
  } else if (strcmp(mode, "concurrent") == 0) {
    if (argc - i < 4) die("concurrent needs N and C", NULL);
    long inflight = atol(argv[i + 3]);
    if (inflight <= 0) die("C must be positive", argv[i + 3]);
    curl_multi_setopt(c.multi, CURLMOPT_MAXCONNECTS, inflight);
    CURL **easies = calloc((size_t)inflight, sizeof *easies);
    if (easies == NULL) die("out of memory", NULL);
    for (long k = 0; k < inflight; k++) easies[k] = new_easy(&c);
    for (long w = 0; w < warmup; w++) concurrent(&c, easies, inflight, inflight, b);
    c.connections = 0;
    c0 = cpu_s();
    t0 = now_s();
    concurrent(&c, easies, inflight, n, b);
    t1 = now_s();
    c1 = cpu_s();
    requests = n;
    for (long k = 0; k < inflight; k++) curl_easy_cleanup(easies[k]);
    free(easies);
  } else if (strcmp(mode, "replay") == 0) {
    int nfiles = argc - (i + 3);
    if (nfiles < 1) die("replay needs at least one body file", NULL);
    body *bodies = calloc((size_t)nfiles, sizeof *bodies);
    if (bodies == NULL) die("out of memory", NULL);
    for (int f = 0; f < nfiles; f++) bodies[f] = read_file(argv[i + 3 + f]);
    CURL *e = new_easy(&c);
    for (long w = 0; w < warmup; w++)
      for (int f = 0; f < nfiles; f++) one(&c, e, &bodies[f]);
    c.connections = 0;
    c0 = cpu_s();
    t0 = now_s();
    for (long r = 0; r < n; r++)
      for (int f = 0; f < nfiles; f++) one(&c, e, &bodies[f]);
    t1 = now_s();
    c1 = cpu_s();
    requests = n * nfiles;
    curl_easy_cleanup(e);
    for (int f = 0; f < nfiles; f++) free(bodies[f].p);
    free(bodies);
  } else {
    die("unknown mode", mode);
  }

  double secs = t1 - t0;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double rps = secs > 0 ? (double)requests / secs : 0;
  if (plain) {
    printf("%.1f\n", rps);
  } else {
    printf("{\"mode\":\"%s\",\"requests\":%ld,\"errors\":%ld,\"connections\":%ld,"
           "\"seconds\":%.6f,\"rps\":%.1f,\"us_per_req\":%.3f,\"cpu_us_per_req\":%.3f,"
           "\"bytes_in\":%llu,\"max_rss_kb\":%ld}\n",
           mode, requests, c.errors, c.connections, secs, rps,
           requests ? secs * 1e6 / (double)requests : 0.0,
           requests ? (c1 - c0) * 1e6 / (double)requests : 0.0, c.bytes_in,
           ru.ru_maxrss);
  }
  free(given.p);
  curl_slist_free_all(c.headers);
  curl_multi_cleanup(c.multi);
  curl_global_cleanup();
  return c.errors ? 1 : 0;
}
