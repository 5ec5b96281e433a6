/*
 * llm-soak: soak test client for an OpenAI-compatible server (issue #9):
 * many concurrent clients for a bounded time, a mix of good and bad
 * requests, clients that go away mid-stream, a reload during the load and
 * a graceful quit with streams in flight.  tools/soak.sh starts nginx and
 * checks the server side (error_log, RSS); this program drives the load,
 * validates every answer and samples the server while it runs.
 *
 *   llm-soak --base-url http://127.0.0.1:PORT --clients 500 --duration 300 \
 *       [--model NAME] [--api-key KEY] [--pid-file nginx.pid] \
 *       [--reload-at 100 --reload-cmd "nginx -s reload ..."] \
 *       [--quit-cmd "nginx -s quit ..."] --json soak.json --table rss.txt
 *
 * Phases:
 *   load   every client loops until --duration: a streaming chat completion
 *          (most), a streaming completion, a non-streaming one, or a bad
 *          request that must get its 4xx and an OpenAI error body.  A share
 *          of the streams (--disconnect-frac) is dropped by us after k
 *          events or after a random number of milliseconds.  At --reload-at
 *          the reload command runs.
 *   drain  no new requests; the ones in flight end.
 *   idle   /metrics must come back to running 0, waiting 0, KV blocks 0
 *          on every worker (polled, --idle-wait at most).
 *   quit   --quit-streams long streams start; once each has its first
 *          event the quit command runs; every stream then in flight must
 *          still end well-formed (else it counts as lost), and the master
 *          must exit.
 *
 * Failures are grouped by reason and by window: a request alive when the
 * reload ran (or started within --reload-grace after it) is in the
 * "reload" window, the quit streams in "quit", everything else "load".
 *
 * Sampling, once a second: the workers (children of the master named by
 * --pid-file) and their VmRSS from /proc, and GET /metrics (each worker
 * reports its own engine under a worker="N" label: running, waiting, KV
 * blocks used).  The JSON summary holds the counts, the failures, the
 * samples and, per worker process, its RSS over the first and the last
 * window of its life under load; --table writes the RSS-over-time table.
 *
 * One thread drives everything with libcurl's multi interface, as
 * llm-serve-bench does.
 */
#include <ctype.h>
#include <dirent.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>
#include <curl/curl.h>

#define MAX_CHOICES    4          /* n of a good request: 1 or 2 */
#define RESP_MAX       (1 << 20)  /* bytes of a non-stream body kept */
#define MAX_WORKERS    64
#define NO_TIME        (-1.0)


#include "bench_stats.h"
#include "client_util.h"

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void) sig;
    interrupted = 1;
}

/* splitmix64: one seed gives one sequence of choices */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double rng_uniform(uint64_t *s)
{
    return (double) (rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

static int rng_int(uint64_t *s, int lo, int hi)        /* [lo, hi] */
{
    return lo + (int) (rng_next(s) % (uint64_t) (hi - lo + 1));
}


/* ---- failures, grouped by window and reason ------------------------------ */

typedef enum { WIN_LOAD, WIN_RELOAD, WIN_QUIT, WIN_N } window_e;
static const char *win_name[WIN_N] = { "load", "reload", "quit" };

typedef struct {
    char     *reason;
    char     *example;
    window_e  win;
    long      count;
    double    first_s, last_s;     /* when (from the load's start) */
} failure;

typedef struct {
    failure *v;
    int      n, cap;
    long     total[WIN_N];
} failures;

static void failures_add(failures *f, window_e win, const char *reason,
                         const char *example, double t)
{
    int i;

    f->total[win]++;
    for (i = 0; i < f->n; i++) {
        if (f->v[i].win == win && strcmp(f->v[i].reason, reason) == 0) {
            f->v[i].count++;
            f->v[i].last_s = t;
            return;
        }
    }
    if (f->n == f->cap) {
        int cap = f->cap ? f->cap * 2 : 16;
        failure *v = realloc(f->v, (size_t) cap * sizeof(*v));

        if (v == NULL) {
            return;                 /* the total still counts it */
        }
        f->v = v;
        f->cap = cap;
    }
    f->v[f->n].reason = strdup(reason);
    f->v[f->n].example = strdup(example);
    if (f->v[f->n].reason == NULL || f->v[f->n].example == NULL) {
        free(f->v[f->n].reason);
        free(f->v[f->n].example);
        return;
    }
    f->v[f->n].win = win;
    f->v[f->n].count = 1;
    f->v[f->n].first_s = f->v[f->n].last_s = t;
    f->n++;
}

/* ---- options --------------------------------------------------------------- */

typedef struct {
    const char *base_url;
    const char *model;
    const char *api_key;
    const char *pid_file;
    const char *reload_cmd;
    const char *quit_cmd;
    const char *json_path;
    const char *table_path;
    int         clients;
    int         workers;
    double      duration;
    double      disconnect_frac;
    double      bad_frac;
    int         max_tokens;
    long        max_body;
    double      timeout;
    double      reload_at;
    double      reload_grace;
    int         quit_streams;
    int         quit_tokens;
    double      idle_wait;
    double      quit_wait;
    double      rss_skip;
    uint64_t    seed;
} soak_opts;

/* ---- bad requests ------------------------------------------------------------ */

typedef enum { HDR_KEY, HDR_NOKEY, HDR_BADKEY } hdr_e;

typedef struct {
    const char *name;
    const char *method;            /* "POST" or "GET" */
    const char *path;
    int         status;
    const char *code;              /* expected error.code; NULL: any */
    hdr_e       hdr;
    const char *body;              /* NULL: generated (see bad_body) */
    int         needs_key;         /* only when --api-key is given */
    long        ok, started;
} bad_case;

#define CHAT_MSG "\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]"

static bad_case bad_cases[] = {
    { "malformed_json", "POST", "/v1/chat/completions", 400, "invalid_json",
      HDR_KEY, "{\"messages\": [{\"role\":\"user\",\"content\":\"x\"}", 0, 0, 0 },
    { "body_not_object", "POST", "/v1/chat/completions", 400, "invalid_json",
      HDR_KEY, "[1,2,3]", 0, 0, 0 },
    { "empty_body", "POST", "/v1/completions", 400, "invalid_json",
      HDR_KEY, "", 0, 0, 0 },
    { "lone_surrogate", "POST", "/v1/completions", 400, "invalid_json",
      HDR_KEY, "{\"prompt\":\"a\\ud800b\",\"max_tokens\":2}", 0, 0, 0 },
    /* cJSON's own limit (1000) says invalid_json; a limit of the module's
     * own may answer first with its own code */
    { "deep_nesting", "POST", "/v1/chat/completions", 400, NULL,
      HDR_KEY, NULL, 0, 0, 0 },
    { "messages_not_array", "POST", "/v1/chat/completions", 400, NULL,
      HDR_KEY, "{\"messages\":\"hello\"}", 0, 0, 0 },
    { "max_tokens_string", "POST", "/v1/chat/completions", 400, NULL,
      HDR_KEY, "{" CHAT_MSG ",\"max_tokens\":\"10\"}", 0, 0, 0 },
    { "stream_string", "POST", "/v1/chat/completions", 400, NULL,
      HDR_KEY, "{" CHAT_MSG ",\"stream\":\"yes\"}", 0, 0, 0 },
    { "content_number", "POST", "/v1/chat/completions", 400, NULL,
      HDR_KEY, "{\"messages\":[{\"role\":\"user\",\"content\":7}]}", 0, 0, 0 },
    { "bad_role", "POST", "/v1/chat/completions", 400, NULL,
      HDR_KEY, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 0, 0, 0 },
    { "temperature_range", "POST", "/v1/chat/completions", 400, NULL,
      HDR_KEY, "{" CHAT_MSG ",\"temperature\":7.5}", 0, 0, 0 },
    { "max_tokens_negative", "POST", "/v1/completions", 400, NULL,
      HDR_KEY, "{\"prompt\":\"x\",\"max_tokens\":-3}", 0, 0, 0 },
    { "max_tokens_huge", "POST", "/v1/chat/completions", 400,
      "context_length_exceeded",
      HDR_KEY, "{" CHAT_MSG ",\"max_tokens\":100000000}", 0, 0, 0 },
    { "max_tokens_huge_stream", "POST", "/v1/completions", 400,
      "context_length_exceeded",
      HDR_KEY, "{\"prompt\":\"x\",\"max_tokens\":100000000,\"stream\":true}", 0, 0, 0 },
    { "n_huge", "POST", "/v1/completions", 400, NULL,
      HDR_KEY, "{\"prompt\":\"x\",\"max_tokens\":2,\"n\":100000}", 0, 0, 0 },
    { "invalid_utf8_prompt", "POST", "/v1/completions", 400, NULL,
      HDR_KEY, "{\"prompt\":\"ab\xff\xfe" "cd\",\"max_tokens\":2}", 0, 0, 0 },
    { "invalid_utf8_message", "POST", "/v1/chat/completions", 400, NULL,
      HDR_KEY, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\xc3" "(y\"}],"
      "\"stream\":true}", 0, 0, 0 },
    { "nul_escape", "POST", "/v1/chat/completions", 400, NULL,
      HDR_KEY, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}",
      0, 0, 0 },
    { "data_after_json", "POST", "/v1/completions", 400, "invalid_json",
      HDR_KEY, "{\"prompt\":\"x\",\"max_tokens\":2} {\"prompt\":\"y\"}", 0, 0, 0 },
    { "unknown_model", "POST", "/v1/chat/completions", 404, "model_not_found",
      HDR_KEY, "{\"model\":\"no-such-model\"," CHAT_MSG "}", 0, 0, 0 },
    { "get_on_chat", "GET", "/v1/chat/completions", 405, "method_not_allowed",
      HDR_KEY, "", 0, 0, 0 },
    { "get_on_completions", "GET", "/v1/completions", 405, "method_not_allowed",
      HDR_KEY, "", 0, 0, 0 },
    { "post_on_models", "POST", "/v1/models", 405, "method_not_allowed",
      HDR_KEY, "{}", 0, 0, 0 },
    { "unknown_route", "GET", "/v1/engines", 404, "not_found",
      HDR_KEY, "", 0, 0, 0 },
    { "oversize_body", "POST", "/v1/chat/completions", 413, "request_too_large",
      HDR_KEY, NULL, 0, 0, 0 },
    { "missing_key", "POST", "/v1/chat/completions", 401, "invalid_api_key",
      HDR_NOKEY, "{" CHAT_MSG "}", 1, 0, 0 },
    { "wrong_key", "POST", "/v1/chat/completions", 401, "invalid_api_key",
      HDR_BADKEY, "{" CHAT_MSG "}", 1, 0, 0 },
};

#define N_BAD ((int) (sizeof(bad_cases) / sizeof(bad_cases[0])))

/* ---- one client's request -------------------------------------------------- */

typedef enum {
    K_STREAM_CHAT, K_STREAM_COMPL, K_CHAT, K_COMPL, K_BAD, K_N
} kind_e;
static const char *kind_name[K_N] = {
    "stream_chat", "stream_completions", "chat", "completions", "bad_request"
};

typedef struct {
    kind_e       kind;
    bad_case    *bad;
    CURL        *easy;
    char         curl_err[CURL_ERROR_SIZE];
    char        *body;             /* owned: good requests' bodies */
    long         status;
    buf          resp;             /* non-stream body, or a non-200 one */
    buf          line;             /* incomplete SSE line */
    int          n;                /* choices asked for */
    int          want_usage;
    int          quit_batch;       /* one of the quit phase's streams */
    int          disc_events;      /* > 0: we drop it after this many events */
    double       disc_at;          /* > 0: we drop it at this time */
    int          dropped;          /* we did drop it */
    /* stream validation */
    int          events, in_event, done;
    int          finish[MAX_CHOICES];
    int          usage_chunks;
    char         chunk_id[128];
    char         violation[256];   /* the first thing wrong with the stream */
    char         stream_err[300];  /* an error event's message */
    double       t_start, t_first;  /* request sent, first data event */
    double       next_start;       /* after a failure: a pause first */
} client;

/* ---- samples ------------------------------------------------------------------ */

typedef struct {
    double t;
    int    pid;
    long   kb;
} rss_sample;

typedef struct {
    double t;
    int    worker;
    double running, waiting, kv_used, kv_total;
} metrics_sample;

typedef struct {
    const soak_opts   *o;
    CURLM             *multi;
    struct curl_slist *h_key, *h_nokey, *h_badkey;
    char              *oversize, *deep;
    size_t             oversize_len;
    uint64_t           rng;
    double             t0;             /* start of the load phase */
    double             t_reload;       /* relative; NO_TIME: none yet */
    int                reload_rc;
    double             t_quit;
    int                quit_rc;
    int                in_flight, peak_in_flight;
    /* counts */
    long               started[K_N], completed[K_N];
    long               dropped_events, dropped_time, ended_before_drop;
    long               rejected_ok;
    long               quit_in_flight, quit_completed, quit_lost, quit_before;
    failures           fails;
    /* sampling */
    client             msl;            /* the /metrics request */
    int                msl_active;
    double             next_sample;
    rss_sample        *rss;
    size_t             n_rss, cap_rss;
    metrics_sample    *met;
    size_t             n_met, cap_met;
    metrics_sample     peak;           /* peaks over all workers */
    series             e2e, ttfe;      /* completed load-phase requests */
    double             t_load_end;     /* relative */
    double             master_exit_s;
} soak;

static double rel(const soak *S)
{
    return now_s() - S->t0;
}

/* ---- /proc: the master's children and their RSS ------------------------------- */

static int read_pid_file(const char *path)
{
    FILE *f = fopen(path, "r");
    int pid = 0;

    if (f == NULL) {
        return 0;
    }
    if (fscanf(f, "%d", &pid) != 1) {
        pid = 0;
    }
    fclose(f);
    return pid;
}


/* Children of pid: /proc/PID/task/PID/children where the kernel has it,
 * else a scan of /proc for processes whose parent is pid. */
static int children_of(int pid, int *out, int max)
{
    char path[96], line[4096], *p, *end;
    FILE *f;
    DIR *d;
    struct dirent *de;
    int n = 0;

    snprintf(path, sizeof(path), "/proc/%d/task/%d/children", pid, pid);
    f = fopen(path, "r");
    if (f != NULL) {
        if (fgets(line, sizeof(line), f) != NULL) {
            for (p = line; n < max; p = end) {
                long v = strtol(p, &end, 10);

                if (end == p) {
                    break;
                }
                out[n++] = (int) v;
            }
        }
        fclose(f);
        return n;
    }
    d = opendir("/proc");
    if (d == NULL) {
        return 0;
    }
    while (n < max && (de = readdir(d)) != NULL) {
        int child, ppid;
        char comm[256], state;

        if (!isdigit((unsigned char) de->d_name[0])) {
            continue;
        }
        child = atoi(de->d_name);
        snprintf(path, sizeof(path), "/proc/%d/stat", child);
        f = fopen(path, "r");
        if (f == NULL) {
            continue;
        }
        /* "pid (comm) state ppid": nginx's comm has no spaces or ')' */
        if (fscanf(f, "%*d (%255[^)]) %c %d", comm, &state, &ppid) == 3
            && ppid == pid)
        {
            out[n++] = child;
        }
        fclose(f);
    }
    closedir(d);
    return n;
}

static void sample_rss(soak *S)
{
    int master, pids[MAX_WORKERS], n, i;
    double t = rel(S);

    if (S->o->pid_file == NULL) {
        return;
    }
    master = read_pid_file(S->o->pid_file);
    if (master <= 0) {
        return;
    }
    n = children_of(master, pids, MAX_WORKERS);
    for (i = 0; i < n; i++) {
        long kb = read_rss_kb(pids[i]);

        if (kb < 0) {
            continue;
        }
        if (S->n_rss == S->cap_rss) {
            size_t cap = S->cap_rss ? S->cap_rss * 2 : 1024;
            rss_sample *v = realloc(S->rss, cap * sizeof(*v));

            if (v == NULL) {
                return;
            }
            S->rss = v;
            S->cap_rss = cap;
        }
        S->rss[S->n_rss].t = t;
        S->rss[S->n_rss].pid = pids[i];
        S->rss[S->n_rss].kb = kb;
        S->n_rss++;
    }
}

/* ---- /metrics ------------------------------------------------------------------- */

/* Value of `name{...worker="N"...} V` lines, into m[N]. */
static void metrics_parse(const char *text, double t, metrics_sample *m,
                          int *seen)
{
    static const struct { const char *name; size_t off; } want[] = {
        { "llm:num_requests_running{", offsetof(metrics_sample, running) },
        { "llm:num_requests_waiting{", offsetof(metrics_sample, waiting) },
        { "llm:kv_cache_used_blocks{", offsetof(metrics_sample, kv_used) },
        { "llm:kv_cache_total_blocks{", offsetof(metrics_sample, kv_total) },
    };
    const char *line = text, *nl, *w, *close;
    size_t i;

    for (; line != NULL && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
            size_t len = strlen(want[i].name);
            int worker;

            if (strncmp(line, want[i].name, len) != 0) {
                continue;
            }
            close = strchr(line, '}');
            w = strstr(line, "worker=\"");
            if (close == NULL || w == NULL || w > close) {
                break;
            }
            worker = atoi(w + 8);
            if (worker < 0 || worker >= MAX_WORKERS) {
                break;
            }
            *(double *) ((char *) &m[worker] + want[i].off) = strtod(close + 1, NULL);
            m[worker].worker = worker;
            m[worker].t = t;
            seen[worker] = 1;
            break;
        }
    }
}

static void metrics_record(soak *S, const char *text)
{
    metrics_sample m[MAX_WORKERS];
    int seen[MAX_WORKERS] = { 0 }, w;

    memset(m, 0, sizeof(m));
    metrics_parse(text, rel(S), m, seen);
    for (w = 0; w < MAX_WORKERS; w++) {
        if (!seen[w]) {
            continue;
        }
        if (S->n_met == S->cap_met) {
            size_t cap = S->cap_met ? S->cap_met * 2 : 512;
            metrics_sample *v = realloc(S->met, cap * sizeof(*v));

            if (v == NULL) {
                return;
            }
            S->met = v;
            S->cap_met = cap;
        }
        S->met[S->n_met++] = m[w];
        if (m[w].running > S->peak.running) S->peak.running = m[w].running;
        if (m[w].waiting > S->peak.waiting) S->peak.waiting = m[w].waiting;
        if (m[w].kv_used > S->peak.kv_used) S->peak.kv_used = m[w].kv_used;
        if (m[w].kv_total > S->peak.kv_total) S->peak.kv_total = m[w].kv_total;
    }
}

/* ---- requests --------------------------------------------------------------------- */

static void client_reset(client *c)
{
    free(c->body);
    c->body = NULL;
    c->easy = NULL;
    c->bad = NULL;
    c->curl_err[0] = '\0';
    c->status = 0;
    c->resp.len = 0;
    c->line.len = 0;
    c->n = 1;
    c->want_usage = 0;
    c->quit_batch = 0;
    c->disc_events = 0;
    c->disc_at = 0;
    c->dropped = 0;
    c->events = c->in_event = c->done = 0;
    memset(c->finish, 0, sizeof(c->finish));
    c->usage_chunks = 0;
    c->chunk_id[0] = '\0';
    c->t_first = 0;
    c->violation[0] = '\0';
    c->stream_err[0] = '\0';
}

static void violate(client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void violate(client *c, const char *fmt, ...)
{
    va_list ap;

    if (c->violation[0] != '\0') {
        return;                         /* the first one says most */
    }
    va_start(ap, fmt);
    vsnprintf(c->violation, sizeof(c->violation), fmt, ap);
    va_end(ap);
}

static int is_stream(kind_e k)
{
    return k == K_STREAM_CHAT || k == K_STREAM_COMPL;
}

static int is_chat(kind_e k)
{
    return k == K_STREAM_CHAT || k == K_CHAT;
}

/* Text of an OpenAI error object's message, or NULL. */
static const char *error_message(const cJSON *root)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");

    if (e == NULL) {
        return NULL;
    }
    return cJSON_IsString(m) ? m->valuestring : "(error without a message)";
}

/* One `data:` payload of a stream. */
static void stream_data(client *c, const char *d)
{
    cJSON *root, *id, *obj, *choices, *ch, *v;
    const char *msg, *want_obj = is_chat(c->kind) ? "chat.completion.chunk"
                                                  : "text_completion";

    if (c->done) {
        violate(c, "data after data: [DONE]");
        return;
    }
    c->events++;
    if (strcmp(d, "[DONE]") == 0) {
        c->done = 1;
        return;
    }
    root = cJSON_Parse(d);
    if (root == NULL) {
        violate(c, "a data line is not JSON: %.80s", d);
        return;
    }
    if ((msg = error_message(root)) != NULL) {
        if (c->stream_err[0] == '\0') {
            snprintf(c->stream_err, sizeof(c->stream_err), "%.250s", msg);
        }
        cJSON_Delete(root);
        return;
    }
    id = cJSON_GetObjectItemCaseSensitive(root, "id");
    if (!cJSON_IsString(id) || id->valuestring[0] == '\0') {
        violate(c, "a chunk without an id");
    } else if (c->chunk_id[0] == '\0') {
        snprintf(c->chunk_id, sizeof(c->chunk_id), "%s", id->valuestring);
    } else if (strcmp(c->chunk_id, id->valuestring) != 0) {
        violate(c, "chunk ids differ: %.40s then %.40s", c->chunk_id, id->valuestring);
    }
    obj = cJSON_GetObjectItemCaseSensitive(root, "object");
    if (!cJSON_IsString(obj) || strcmp(obj->valuestring, want_obj) != 0) {
        violate(c, "a chunk's object is not %s", want_obj);
    }
    choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    if (!cJSON_IsArray(choices)) {
        violate(c, "a chunk without a choices array");
        cJSON_Delete(root);
        return;
    }
    if (cJSON_GetArraySize(choices) == 0) {
        if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "usage"))) {
            violate(c, "a chunk with no choices and no usage");
        } else if (++c->usage_chunks > 1) {
            violate(c, "two usage chunks");
        } else if (!c->want_usage) {
            violate(c, "a usage chunk without stream_options.include_usage");
        }
        cJSON_Delete(root);
        return;
    }
    if (c->usage_chunks > 0) {
        violate(c, "a choice chunk after the usage chunk");
    }
    cJSON_ArrayForEach(ch, choices) {
        cJSON *idx = cJSON_GetObjectItemCaseSensitive(ch, "index");
        cJSON *fr = cJSON_GetObjectItemCaseSensitive(ch, "finish_reason");
        int i;

        if (!cJSON_IsNumber(idx) || idx->valueint < 0 || idx->valueint >= c->n) {
            violate(c, "a choice index outside 0..%d", c->n - 1);
            continue;
        }
        i = idx->valueint;
        if (c->finish[i] > 0) {
            violate(c, "a chunk for choice %d after its finish_reason", i);
        }
        if (is_chat(c->kind)) {
            v = cJSON_GetObjectItemCaseSensitive(ch, "delta");
            if (!cJSON_IsObject(v)) {
                violate(c, "a chat chunk without a delta object");
            }
        } else {
            v = cJSON_GetObjectItemCaseSensitive(ch, "text");
            if (!cJSON_IsString(v)) {
                violate(c, "a completion chunk without a text string");
            }
        }
        if (cJSON_IsString(fr)) {
            c->finish[i]++;
        } else if (fr != NULL && !cJSON_IsNull(fr)) {
            violate(c, "finish_reason neither null nor a string");
        }
    }
    cJSON_Delete(root);
}

/* One line of the stream, without its end of line. */
static void stream_line(client *c, const char *line, size_t len)
{
    const char *d;

    if (len == 0) {                     /* the blank line ends an event */
        c->in_event = 0;
        return;
    }
    if (line[0] == ':') {               /* a comment: the keepalive */
        return;
    }
    if (len >= 5 && memcmp(line, "data:", 5) == 0) {
        if (c->in_event) {
            violate(c, "an event with two data lines");
        }
        c->in_event = 1;
        if (c->t_first == 0) {
            c->t_first = now_s();
        }
        d = line + 5;
        if (*d == ' ') {
            d++;
        }
        stream_data(c, d);
        return;
    }
    violate(c, "an SSE line that is neither data nor a comment: %.60s", line);
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    client *c = ud;
    size_t len = size * nmemb, start = 0, i;

    if (c->status == 0) {
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
    }
    if (c->status != 200 || !is_stream(c->kind)) {
        size_t room = RESP_MAX > c->resp.len ? RESP_MAX - c->resp.len : 0;

        if (buf_add(&c->resp, ptr, len < room ? len : room) < 0) {
            return 0;
        }
        return len;
    }
    for (i = 0; i < len; i++) {
        if (ptr[i] != '\n') {
            continue;
        }
        if (buf_add(&c->line, ptr + start, i - start) < 0) {
            return 0;
        }
        start = i + 1;
        if (c->line.len > 0 && c->line.p[c->line.len - 1] == '\r') {
            c->line.p[--c->line.len] = '\0';
        }
        stream_line(c, c->line.p ? c->line.p : "", c->line.len);
        c->line.len = 0;
        if (c->disc_events > 0 && c->events >= c->disc_events && !c->done) {
            c->dropped = 1;             /* our planned disconnect */
            return 0;
        }
    }
    if (start < len && buf_add(&c->line, ptr + start, len - start) < 0) {
        return 0;
    }
    return len;
}

static const char *prompts[] = {
    "Tell me a story about the number %d.",
    "Write a haiku about request %d.",
    "What is %d plus %d?",
    "List three colours, then count to %d.",
    "Explain paged attention to a %d-year-old.",
    "Translate 'good morning' into language number %d.",
};

static char *good_body(soak *S, client *c)
{
    cJSON *b = cJSON_CreateObject(), *m, *msgs, *so;
    char prompt[256], *s;
    int p = rng_int(&S->rng, 0, (int) (sizeof(prompts) / sizeof(prompts[0])) - 1);
    int x = rng_int(&S->rng, 1, 100000);
    int max_tokens;

    if (b == NULL) {
        return NULL;
    }
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(prompt, sizeof(prompt), prompts[p], x, x + 1);
#pragma GCC diagnostic pop
    if (S->o->model != NULL) {
        cJSON_AddStringToObject(b, "model", S->o->model);
    }
    if (is_chat(c->kind)) {
        msgs = cJSON_AddArrayToObject(b, "messages");
        m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "user");
        cJSON_AddStringToObject(m, "content", prompt);
        cJSON_AddItemToArray(msgs, m);
    } else {
        cJSON_AddStringToObject(b, "prompt", prompt);
    }
    if (c->quit_batch) {
        max_tokens = S->o->quit_tokens;
        cJSON_AddTrueToObject(b, "ignore_eos");
    } else {
        max_tokens = rng_int(&S->rng, 4, S->o->max_tokens > 4 ? S->o->max_tokens : 4);
    }
    cJSON_AddNumberToObject(b, "max_tokens", max_tokens);
    cJSON_AddNumberToObject(b, "temperature",
                            (double) rng_int(&S->rng, 0, 100) / 100.0);
    /* a fifth of the requests ask for two choices: finish_reason per choice */
    c->n = (!c->quit_batch && rng_uniform(&S->rng) < 0.2) ? 2 : 1;
    if (c->n > 1) {
        cJSON_AddNumberToObject(b, "n", c->n);
    }
    if (is_stream(c->kind)) {
        cJSON_AddTrueToObject(b, "stream");
        c->want_usage = c->quit_batch || rng_uniform(&S->rng) < 0.5;
        if (c->want_usage) {
            so = cJSON_AddObjectToObject(b, "stream_options");
            cJSON_AddTrueToObject(so, "include_usage");
        }
    }
    s = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    return s;
}

static int start_client(soak *S, client *c, kind_e kind, int quit_batch)
{
    char url[1200];
    const char *path, *body;
    size_t body_len;
    struct curl_slist *h = S->h_key;
    int post = 1;
    CURL *e;

    client_reset(c);
    c->kind = kind;
    c->quit_batch = quit_batch;
    if (kind == K_BAD) {
        do {
            c->bad = &bad_cases[rng_int(&S->rng, 0, N_BAD - 1)];
        } while (c->bad->needs_key && S->o->api_key == NULL);
        c->bad->started++;
        path = c->bad->path;
        post = strcmp(c->bad->method, "POST") == 0;
        if (c->bad->body != NULL) {
            body = c->bad->body;
            body_len = strlen(body);
        } else if (strcmp(c->bad->name, "deep_nesting") == 0) {
            body = S->deep;
            body_len = strlen(body);
        } else {
            body = S->oversize;
            body_len = S->oversize_len;
        }
        h = c->bad->hdr == HDR_NOKEY ? S->h_nokey
            : c->bad->hdr == HDR_BADKEY ? S->h_badkey : S->h_key;
    } else {
        path = is_chat(kind) ? "/v1/chat/completions" : "/v1/completions";
        c->body = good_body(S, c);
        if (c->body == NULL) {
            return -1;
        }
        body = c->body;
        body_len = strlen(body);
        if (is_stream(kind) && !quit_batch
            && rng_uniform(&S->rng) < S->o->disconnect_frac)
        {
            if (rng_uniform(&S->rng) < 0.5) {
                c->disc_events = rng_int(&S->rng, 1, 24);
            } else {
                c->disc_at = now_s() + rng_int(&S->rng, 1, 3000) / 1000.0;
            }
        }
    }
    S->started[kind]++;
    snprintf(url, sizeof(url), "%s%s", S->o->base_url, path);
    e = curl_easy_init();
    if (e == NULL) {
        return -1;
    }
    c->easy = e;
    if (curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_HTTPHEADER, h) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_WRITEDATA, c) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_PRIVATE, c) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->curl_err) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long) (S->o->timeout * 1000)) != CURLE_OK)
    {
        curl_easy_cleanup(e);
        c->easy = NULL;
        return -1;
    }
    if (post) {
        if (curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long) body_len) != CURLE_OK
            || curl_easy_setopt(e, CURLOPT_POSTFIELDS, body) != CURLE_OK)
        {
            curl_easy_cleanup(e);
            c->easy = NULL;
            return -1;
        }
    }
    c->t_start = now_s();
    if (curl_multi_add_handle(S->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        c->easy = NULL;
        return -1;
    }
    S->in_flight++;
    if (S->in_flight > S->peak_in_flight) {
        S->peak_in_flight = S->in_flight;
    }
    return 0;
}

static kind_e pick_kind(soak *S)
{
    double r = rng_uniform(&S->rng), good = 1.0 - S->o->bad_frac;

    if (r >= good) {
        return K_BAD;
    }
    r /= good;                  /* of the good ones: */
    if (r < 0.60) return K_STREAM_CHAT;
    if (r < 0.80) return K_STREAM_COMPL;
    if (r < 0.92) return K_CHAT;
    return K_COMPL;
}

static window_e client_window(const soak *S, const client *c)
{
    double start = c->t_start - S->t0, end = rel(S);

    if (c->quit_batch) {
        return WIN_QUIT;
    }
    if (S->t_reload != NO_TIME && end >= S->t_reload
        && start <= S->t_reload + S->o->reload_grace)
    {
        return WIN_RELOAD;
    }
    return WIN_LOAD;
}

static void fail(soak *S, client *c, const char *reason, const char *detail)
{
    char r[400];

    /* a client whose request failed pauses 0.1-0.5 s, as a real one would
     * back off, rather than turning a refusing server into a request storm */
    c->next_start = now_s() + rng_int(&S->rng, 100, 500) / 1000.0;

    snprintf(r, sizeof(r), "%s: %s", c->bad ? c->bad->name : kind_name[c->kind], reason);
    failures_add(&S->fails, client_window(S, c), r, detail ? detail : r, rel(S));
}

/* A bad request's answer: its status and an OpenAI error body. */
static void check_bad(soak *S, client *c)
{
    bad_case *b = c->bad;
    cJSON *root, *e, *m, *t, *code;
    char why[600], reason[64];
    const char *ct = NULL;

    if (c->status != b->status) {
        snprintf(why, sizeof(why), "HTTP %ld instead of %d: %.300s", c->status,
                 b->status, c->resp.p ? c->resp.p : "(empty body)");
        snprintf(reason, sizeof(reason), "HTTP %ld instead of %d", c->status, b->status);
        fail(S, c, reason, why);
        return;
    }
    curl_easy_getinfo(c->easy, CURLINFO_CONTENT_TYPE, &ct);
    if (ct == NULL || strncmp(ct, "application/json", 16) != 0) {
        fail(S, c, "error body not application/json", ct ? ct : "(no Content-Type)");
        return;
    }
    root = c->resp.p ? cJSON_Parse(c->resp.p) : NULL;
    e = cJSON_GetObjectItemCaseSensitive(root, "error");
    m = cJSON_GetObjectItemCaseSensitive(e, "message");
    t = cJSON_GetObjectItemCaseSensitive(e, "type");
    code = cJSON_GetObjectItemCaseSensitive(e, "code");
    snprintf(why, sizeof(why), "%.500s", c->resp.p ? c->resp.p : "(empty body)");
    if (!cJSON_IsObject(e) || !cJSON_IsString(m) || m->valuestring[0] == '\0'
        || !cJSON_IsString(t) || cJSON_GetObjectItemCaseSensitive(e, "param") == NULL
        || code == NULL)
    {
        fail(S, c, "not an OpenAI error body", why);
    } else if (b->code != NULL
               && (!cJSON_IsString(code) || strcmp(code->valuestring, b->code) != 0))
    {
        fail(S, c, "unexpected error.code", why);
    } else {
        b->ok++;
        S->rejected_ok++;
    }
    cJSON_Delete(root);
}

static void check_stream(soak *S, client *c)
{
    const char *ct = NULL;
    int i;

    curl_easy_getinfo(c->easy, CURLINFO_CONTENT_TYPE, &ct);
    if (ct == NULL || strncmp(ct, "text/event-stream", 17) != 0) {
        violate(c, "Content-Type %s", ct ? ct : "(none)");
    }
    if (c->line.len > 0) {
        violate(c, "the stream ends inside a line");
    }
    if (c->in_event) {
        violate(c, "the stream ends inside an event (no blank line)");
    }
    if (c->stream_err[0] != '\0') {
        fail(S, c, "error event in the stream", c->stream_err);
        return;
    }
    if (!c->done) {
        violate(c, "no data: [DONE]");
    }
    for (i = 0; i < c->n; i++) {
        if (c->finish[i] != 1) {
            violate(c, "choice %d has %d finish_reasons", i, c->finish[i]);
        }
    }
    if (c->want_usage && c->usage_chunks != 1) {
        violate(c, "include_usage but no usage chunk");
    }
    if (c->violation[0] != '\0') {
        fail(S, c, "malformed stream", c->violation);
        return;
    }
    S->completed[c->kind]++;
    if (!c->quit_batch) {
        series_add(&S->e2e, now_s() - c->t_start);
        series_add(&S->ttfe, c->t_first - c->t_start);
    }
    if (c->disc_events > 0 || c->disc_at > 0) {
        S->ended_before_drop++;
    }
    if (c->quit_batch) {
        S->quit_completed++;
    }
}

static void check_json(soak *S, client *c)
{
    cJSON *root = c->resp.p ? cJSON_Parse(c->resp.p) : NULL, *obj, *choices, *ch, *usage;
    const char *want = is_chat(c->kind) ? "chat.completion" : "text_completion";
    char why[300] = "";
    int seen[MAX_CHOICES] = { 0 };

    if (root == NULL) {
        fail(S, c, "response is not JSON", c->resp.p ? c->resp.p : "(empty)");
        return;
    }
    obj = cJSON_GetObjectItemCaseSensitive(root, "object");
    choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    usage = cJSON_GetObjectItemCaseSensitive(root, "usage");
    if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(root, "id"))) {
        snprintf(why, sizeof(why), "no id");
    } else if (!cJSON_IsString(obj) || strcmp(obj->valuestring, want) != 0) {
        snprintf(why, sizeof(why), "object is not %s", want);
    } else if (!cJSON_IsArray(choices) || cJSON_GetArraySize(choices) != c->n) {
        snprintf(why, sizeof(why), "not %d choices", c->n);
    } else if (!cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens"))) {
        snprintf(why, sizeof(why), "no usage.completion_tokens");
    } else {
        cJSON_ArrayForEach(ch, choices) {
            cJSON *idx = cJSON_GetObjectItemCaseSensitive(ch, "index");
            cJSON *fr = cJSON_GetObjectItemCaseSensitive(ch, "finish_reason");
            cJSON *txt = is_chat(c->kind)
                ? cJSON_GetObjectItemCaseSensitive(
                      cJSON_GetObjectItemCaseSensitive(ch, "message"), "content")
                : cJSON_GetObjectItemCaseSensitive(ch, "text");

            if (!cJSON_IsNumber(idx) || idx->valueint < 0 || idx->valueint >= c->n
                || seen[idx->valueint]++)
            {
                snprintf(why, sizeof(why), "choice indexes wrong");
                break;
            }
            if (!cJSON_IsString(fr)) {
                snprintf(why, sizeof(why), "a choice without a finish_reason");
                break;
            }
            if (!cJSON_IsString(txt)) {
                snprintf(why, sizeof(why), "a choice without text");
                break;
            }
        }
    }
    if (why[0] == '\0' && error_message(root) != NULL) {
        snprintf(why, sizeof(why), "an error object in a 200 answer");
    }
    if (why[0] != '\0') {
        char ex[700];

        snprintf(ex, sizeof(ex), "%.280s: %.400s", why, c->resp.p);
        fail(S, c, "malformed JSON answer", ex);
    } else {
        S->completed[c->kind]++;
        series_add(&S->e2e, now_s() - c->t_start);
    }
    cJSON_Delete(root);
}

/* A finished transfer: classify it.  res is CURLE_OK or the error. */
static void finish_client(soak *S, client *c, CURLcode res)
{
    char why[600];

    if (c->status == 0) {
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
    }
    if (c->dropped) {
        S->dropped_events++;
    } else if (res != CURLE_OK) {
        snprintf(why, sizeof(why), "curl: %s (after %d events, HTTP %ld)",
                 c->curl_err[0] ? c->curl_err : curl_easy_strerror(res),
                 c->events, c->status);
        if (res == CURLE_OPERATION_TIMEDOUT) {
            fail(S, c, "client timeout (--timeout)", why);
        } else {
            char reason[200];

            snprintf(reason, sizeof(reason), "connection error: %s%s",
                     curl_easy_strerror(res), c->events > 0 ? " mid-stream" : "");
            fail(S, c, reason, why);
        }
    } else if (c->kind == K_BAD) {
        check_bad(S, c);
    } else if (c->status != 200) {
        cJSON *root = c->resp.p ? cJSON_Parse(c->resp.p) : NULL;
        const char *msg = root ? error_message(root) : NULL;
        char reason[64];

        snprintf(reason, sizeof(reason), "HTTP %ld", c->status);
        snprintf(why, sizeof(why), "HTTP %ld: %.400s", c->status,
                 msg ? msg : (c->resp.p ? c->resp.p : "(empty body)"));
        fail(S, c, reason, why);
        cJSON_Delete(root);
    } else if (is_stream(c->kind)) {
        check_stream(S, c);
    } else {
        check_json(S, c);
    }
    curl_multi_remove_handle(S->multi, c->easy);
    curl_easy_cleanup(c->easy);
    c->easy = NULL;
    S->in_flight--;
}

/* Our time-planned disconnect: the connection is closed mid-response. */
static void drop_client(soak *S, client *c)
{
    curl_multi_remove_handle(S->multi, c->easy);
    curl_easy_cleanup(c->easy);
    c->easy = NULL;
    S->in_flight--;
    S->dropped_time++;
}

/* ---- the /metrics sampler ------------------------------------------------------ */

static size_t on_metrics(char *ptr, size_t size, size_t nmemb, void *ud)
{
    return buf_add(ud, ptr, size * nmemb) < 0 ? 0 : size * nmemb;
}

static void start_metrics(soak *S)
{
    char url[1200];
    CURL *e = curl_easy_init();

    if (e == NULL) {
        return;
    }
    S->msl.resp.len = 0;
    snprintf(url, sizeof(url), "%s/metrics", S->o->base_url);
    if (curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_metrics) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_WRITEDATA, &S->msl.resp) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_PRIVATE, &S->msl) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK
        /* a fresh connection each time: with several workers, the one that
         * accepts it varies, so every worker's engine gets sampled */
        || curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L) != CURLE_OK
        || curl_multi_add_handle(S->multi, e) != CURLM_OK)
    {
        curl_easy_cleanup(e);
        return;
    }
    S->msl.easy = e;
    S->msl_active = 1;
}

static void finish_metrics(soak *S, CURLcode res)
{
    long status = 0;

    curl_easy_getinfo(S->msl.easy, CURLINFO_RESPONSE_CODE, &status);
    if (res == CURLE_OK && status == 200 && S->msl.resp.p != NULL) {
        metrics_record(S, S->msl.resp.p);
    }
    curl_multi_remove_handle(S->multi, S->msl.easy);
    curl_easy_cleanup(S->msl.easy);
    S->msl.easy = NULL;
    S->msl_active = 0;
}

/* ---- the loop ---------------------------------------------------------------------- */

/* One round: transfers progress, finished ones are classified, planned
 * time disconnects happen, samples are taken.  metrics: sample /metrics. */
static int pump(soak *S, client *cl, int ncl, int metrics, int wait_ms)
{
    CURLMsg *msg;
    int running, left, i;
    double t = now_s();

    if (t >= S->next_sample) {
        S->next_sample = t + 1.0;
        sample_rss(S);
        if (metrics && !S->msl_active) {
            start_metrics(S);
        }
    }
    for (i = 0; i < ncl; i++) {
        if (cl[i].easy != NULL && cl[i].disc_at > 0 && t >= cl[i].disc_at) {
            drop_client(S, &cl[i]);
        }
    }
    if (curl_multi_perform(S->multi, &running) != CURLM_OK) {
        fprintf(stderr, "llm-soak: curl_multi_perform failed\n");
        return -1;
    }
    while ((msg = curl_multi_info_read(S->multi, &left)) != NULL) {
        client *c;

        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        if (curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &c) != CURLE_OK) {
            fprintf(stderr, "llm-soak: lost a request's handle\n");
            return -1;
        }
        if (c == &S->msl) {
            finish_metrics(S, msg->data.result);
        } else {
            finish_client(S, c, msg->data.result);
        }
    }
    if (curl_multi_poll(S->multi, NULL, 0, wait_ms, NULL) != CURLM_OK) {
        fprintf(stderr, "llm-soak: curl_multi_poll failed\n");
        return -1;
    }
    return 0;
}

/* The reload and quit commands run beside the load (nginx -s takes seconds
 * on a busy machine: the client keeps reading its streams meanwhile). */
typedef struct {
    const char *what;
    pid_t       pid;               /* 0: not running */
    int         rc;
} command;

static int cmd_start(command *c, const char *what, const char *cmd)
{
    pid_t pid;

    fprintf(stderr, "llm-soak: %s: %s\n", what, cmd);
    c->what = what;
    c->rc = -1;
    pid = fork();
    if (pid < 0) {
        fprintf(stderr, "llm-soak: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *) NULL);
        _exit(127);
    }
    c->pid = pid;
    return 0;
}

/* 1 once the command has ended (its exit status in c->rc) */
static int cmd_done(command *c)
{
    int status;
    pid_t r;

    if (c->pid == 0) {
        return 1;
    }
    r = waitpid(c->pid, &status, WNOHANG);
    if (r == 0 || (r < 0 && errno == EINTR)) {
        return 0;
    }
    c->pid = 0;
    c->rc = r < 0 ? -1 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (c->rc != 0) {
        fprintf(stderr, "llm-soak: %s: exit status %d\n", c->what, c->rc);
    }
    return 1;
}

static int phase_load(soak *S, client *cl)
{
    const soak_opts *o = S->o;
    command reload = { 0 };
    double t;
    int i;

    S->t0 = now_s();
    S->next_sample = 0;
    while (!interrupted && rel(S) < o->duration) {
        if (o->reload_cmd != NULL && S->t_reload == NO_TIME && rel(S) >= o->reload_at) {
            S->t_reload = rel(S);
            if (cmd_start(&reload, "reload", o->reload_cmd) < 0) {
                return -1;
            }
        }
        if (cmd_done(&reload) && S->t_reload != NO_TIME) {
            S->reload_rc = reload.rc;
        }
        t = now_s();
        for (i = 0; i < o->clients; i++) {
            if (cl[i].easy == NULL && t >= cl[i].next_start
                && start_client(S, &cl[i], pick_kind(S), 0) < 0)
            {
                fprintf(stderr, "llm-soak: cannot start a request (libcurl)\n");
                return -1;
            }
        }
        if (pump(S, cl, o->clients, 1, 50) < 0) {
            return -1;
        }
    }
    S->t_load_end = rel(S);
    /* drain: no new requests; the ones in flight end or time out */
    while (S->in_flight > 0 || S->msl_active || !cmd_done(&reload)) {
        if (pump(S, cl, o->clients, 1, 100) < 0) {
            return -1;
        }
    }
    if (S->t_reload != NO_TIME) {
        S->reload_rc = reload.rc;
    }
    return 0;
}

/* After the load: every worker's engine back to running 0, waiting 0 and
 * no KV block held.  Fresh connections land on varying workers, so polling
 * a few times a second sees each.  Returns 1 when all were idle. */
static int phase_idle(soak *S, int *workers_seen, double *idle_after, cJSON *last)
{
    metrics_sample latest[MAX_WORKERS];
    int seen[MAX_WORKERS] = { 0 }, idle[MAX_WORKERS] = { 0 };
    int nworkers = 1, w, all = 0;
    double t_start = now_s();
    size_t first;

    /* the workers to hear from: --workers, else every worker="N" label the
     * load phase saw (the master's children can still include old workers
     * that a reload replaced and that drain their last streams) */
    if (S->o->workers > 0) {
        nworkers = S->o->workers;
    } else {
        for (first = 0; first < S->n_met; first++) {
            if (S->met[first].worker + 1 > nworkers) {
                nworkers = S->met[first].worker + 1;
            }
        }
    }
    memset(latest, 0, sizeof(latest));
    while (!interrupted && now_s() - t_start < S->o->idle_wait) {
        first = S->n_met;
        if (!S->msl_active) {
            start_metrics(S);
        }
        while (S->msl_active) {
            if (pump(S, NULL, 0, 0, 100) < 0) {
                return 0;
            }
        }
        for (; first < S->n_met; first++) {
            metrics_sample *m = &S->met[first];

            latest[m->worker] = *m;
            seen[m->worker] = 1;
            idle[m->worker] = m->running == 0 && m->waiting == 0 && m->kv_used == 0;
        }
        for (all = 1, w = 0; w < nworkers; w++) {
            all = all && seen[w] && idle[w];
        }
        if (all) {
            break;
        }
        usleep(200000);
    }
    *idle_after = now_s() - t_start;
    *workers_seen = 0;
    for (w = 0; w < MAX_WORKERS; w++) {
        cJSON *x;

        if (!seen[w]) {
            continue;
        }
        (*workers_seen)++;
        x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "worker", w);
        cJSON_AddNumberToObject(x, "running", latest[w].running);
        cJSON_AddNumberToObject(x, "waiting", latest[w].waiting);
        cJSON_AddNumberToObject(x, "kv_used_blocks", latest[w].kv_used);
        cJSON_AddNumberToObject(x, "kv_total_blocks", latest[w].kv_total);
        cJSON_AddBoolToObject(x, "idle", idle[w]);
        cJSON_AddItemToArray(last, x);
    }
    return all && *workers_seen >= nworkers;
}

static int phase_quit(soak *S)
{
    const soak_opts *o = S->o;
    int n = o->quit_streams, i, started_all;
    client *q = calloc((size_t) n, sizeof(*q));
    command quit = { 0 };
    double t_wait, t_end;

    if (q == NULL) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (start_client(S, &q[i], i % 4 == 3 ? K_STREAM_COMPL : K_STREAM_CHAT, 1) < 0) {
            fprintf(stderr, "llm-soak: cannot start a request (libcurl)\n");
            return -1;
        }
    }
    /* quit once every stream has its first event (it is generating), or
     * after 30 s at the latest */
    t_wait = now_s();
    for (;;) {
        started_all = 1;
        for (i = 0; i < n; i++) {
            if (q[i].easy != NULL && q[i].events == 0) {
                started_all = 0;
            }
        }
        if (started_all || interrupted || now_s() - t_wait > 30) {
            break;
        }
        if (pump(S, q, n, 0, 20) < 0) {
            return -1;
        }
    }
    for (i = 0; i < n; i++) {
        if (q[i].easy == NULL) {
            S->quit_before++;
        } else {
            S->quit_in_flight++;
        }
    }
    S->quit_completed = 0;          /* from here: the ones in flight */
    S->t_quit = rel(S);
    if (cmd_start(&quit, "quit", o->quit_cmd) < 0) {
        return -1;
    }
    while ((S->in_flight > 0 || !cmd_done(&quit)) && !interrupted) {
        if (pump(S, q, n, 0, 100) < 0) {
            return -1;
        }
    }
    S->quit_rc = quit.rc;
    S->quit_lost = S->quit_in_flight - S->quit_completed;
    /* the master exits once its workers have: engine threads joined */
    S->master_exit_s = -1;
    t_end = now_s();
    while (o->pid_file != NULL && now_s() - t_end < o->quit_wait) {
        int master = read_pid_file(o->pid_file);

        sample_rss(S);
        if (master <= 0 || (kill(master, 0) != 0 && errno == ESRCH)) {
            S->master_exit_s = now_s() - t_end;
            break;
        }
        usleep(100000);
    }
    for (i = 0; i < n; i++) {
        free(q[i].body);
        free(q[i].resp.p);
        free(q[i].line.p);
    }
    free(q);
    return 0;
}

/* ---- results ------------------------------------------------------------------------ */

typedef struct {
    int    pid;
    double first_t, last_t;
    long   first_kb, last_kb, max_kb;
    double first_win_kb, last_win_kb, win_s;
    int    n;
} rss_summary;

/* Per worker process: RSS over the first and the last window of its life
 * under load (see below), skipping its
 * first --rss-skip seconds (the engine's start, the KV pool's first use). */
static int rss_summarize(soak *S, rss_summary *out, int max)
{
    int n = 0, i;
    size_t k;

    for (k = 0; k < S->n_rss; k++) {
        rss_sample *s = &S->rss[k];

        for (i = 0; i < n && out[i].pid != s->pid; i++) {
        }
        /* under load: until the end of the load phase, and for a worker
         * the reload replaced, until the reload (then it drains and frees) */
        if (s->t > S->t_load_end
            || (S->t_reload != NO_TIME && s->t > S->t_reload
                && (i < n ? out[i].first_t : s->t) < S->t_reload))
        {
            continue;
        }
        if (i == n) {
            if (n == max) {
                continue;
            }
            memset(&out[n], 0, sizeof(out[n]));
            out[n].pid = s->pid;
            out[n].first_t = s->t;
            out[n].first_kb = s->kb;
            n++;
        }
        out[i].last_t = s->t;
        out[i].last_kb = s->kb;
        if (s->kb > out[i].max_kb) {
            out[i].max_kb = s->kb;
        }
        out[i].n++;
    }
    for (i = 0; i < n; i++) {
        double from = out[i].first_t + S->o->rss_skip, life = out[i].last_t - from;
        double w = life / 3 < 60 ? life / 3 : 60, a = 0, b = 0;
        int na = 0, nb = 0;

        if (life <= 0) {
            from = out[i].first_t;
            life = out[i].last_t - from;
            w = life / 3;
        }
        out[i].win_s = w;
        for (k = 0; k < S->n_rss; k++) {
            rss_sample *s = &S->rss[k];

            if (s->pid != out[i].pid || s->t > out[i].last_t) {
                continue;
            }
            if (s->t >= from && s->t <= from + w) {
                a += (double) s->kb;
                na++;
            }
            if (s->t >= out[i].last_t - w) {
                b += (double) s->kb;
                nb++;
            }
        }
        out[i].first_win_kb = na ? a / na : (double) out[i].first_kb;
        out[i].last_win_kb = nb ? b / nb : (double) out[i].last_kb;
    }
    return n;
}

/* The RSS-over-time table: one row per `every` seconds, the last sample of
 * each worker in that interval, and the engines' numbers then. */
static void write_table(soak *S, FILE *f, double every)
{
    double t, end = 0;
    size_t k, m;

    for (k = 0; k < S->n_rss; k++) {
        if (S->rss[k].t > end) {
            end = S->rss[k].t;
        }
    }
    fprintf(f, "%7s  %-40s  %7s %7s %8s\n", "t_s", "worker pid:RSS_kB",
            "running", "waiting", "kv_used");
    for (t = 0; t <= end + every; t += every) {
        char cols[512] = "";
        size_t len = 0;
        int pids[MAX_WORKERS], np = 0, i;
        long kbs[MAX_WORKERS];
        double run = 0, wait = 0, kv = 0;
        int have_m = 0, wseen[MAX_WORKERS] = { 0 };

        for (k = 0; k < S->n_rss; k++) {
            rss_sample *s = &S->rss[k];

            if (s->t < t || s->t >= t + every) {
                continue;
            }
            for (i = 0; i < np && pids[i] != s->pid; i++) {
            }
            if (i == np) {
                if (np == MAX_WORKERS) {
                    continue;
                }
                pids[np++] = s->pid;
            }
            kbs[i] = s->kb;
        }
        if (np == 0) {
            continue;
        }
        for (i = 0; i < np && len < sizeof(cols) - 32; i++) {
            len += (size_t) snprintf(cols + len, sizeof(cols) - len, "%s%d:%ld",
                                     i ? " " : "", pids[i], kbs[i]);
        }
        /* the last sample of each worker in the interval, summed */
        for (m = S->n_met; m-- > 0;) {
            metrics_sample *x = &S->met[m];

            if (x->t < t || x->t >= t + every || wseen[x->worker]) {
                continue;
            }
            wseen[x->worker] = 1;
            run += x->running;
            wait += x->waiting;
            kv += x->kv_used;
            have_m = 1;
        }
        if (have_m) {
            fprintf(f, "%7.0f  %-40s  %7.0f %7.0f %8.0f\n", t, cols, run, wait, kv);
        } else {
            fprintf(f, "%7.0f  %-40s  %7s %7s %8s\n", t, cols, "-", "-", "-");
        }
    }
}

static void print_usage(FILE *f)
{
    fprintf(f,
"usage: llm-soak [options]\n"
"  --base-url URL        server (default http://127.0.0.1:8000)\n"
"  --model NAME          model field of good requests (default: none sent)\n"
"  --api-key KEY         sent as Authorization: Bearer KEY; also enables the\n"
"                        missing-key and wrong-key bad requests (401)\n"
"  --clients N           concurrent clients (default 500)\n"
"  --duration S          load phase in seconds (default 300)\n"
"  --disconnect-frac F   streams we drop mid-way (default 0.3)\n"
"  --bad-frac F          bad requests among all (default 0.15)\n"
"  --max-tokens N        good requests ask for 4..N tokens (default 48)\n"
"  --max-body BYTES      the server's client_max_body_size (default 1048576)\n"
"  --timeout S           per-request limit (default 120)\n"
"  --pid-file PATH       nginx's pid file: sample the workers' RSS\n"
"  --reload-at S --reload-cmd CMD   run CMD (a reload) S seconds into the load\n"
"  --reload-grace S      requests started this long after the reload count in\n"
"                        its window (default 30)\n"
"  --quit-cmd CMD        after the load: start --quit-streams streams (default\n"
"                        100) of --quit-tokens tokens (default 200), run CMD\n"
"                        once they stream, wait --quit-wait s (default 60) for\n"
"                        the master to exit\n"
"  --idle-wait S         wait for idle engines after the load (default 30)\n"
"  --workers N           worker processes whose engines must be idle (default:\n"
"                        every worker=\"N\" label /metrics showed)\n"
"  --rss-skip S          RSS windows skip a worker's first S seconds: its\n"
"                        engine's load and ramp-up (default 30)\n"
"  --seed N              request mix (default 1)\n"
"  --json FILE           summary as JSON\n"
"  --table FILE          RSS-over-time table (also printed)\n");
}

static int parse_args(int argc, char **argv, soak_opts *o)
{
    int i;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;

#define ARG(name) (strcmp(a, name) == 0 && v != NULL && ++i)
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            print_usage(stdout);
            exit(0);
        }
        else if (ARG("--base-url")) o->base_url = v;
        else if (ARG("--model")) o->model = v;
        else if (ARG("--api-key")) o->api_key = v;
        else if (ARG("--clients")) o->clients = atoi(v);
        else if (ARG("--workers")) o->workers = atoi(v);
        else if (ARG("--duration")) o->duration = atof(v);
        else if (ARG("--disconnect-frac")) o->disconnect_frac = atof(v);
        else if (ARG("--bad-frac")) o->bad_frac = atof(v);
        else if (ARG("--max-tokens")) o->max_tokens = atoi(v);
        else if (ARG("--max-body")) o->max_body = atol(v);
        else if (ARG("--timeout")) o->timeout = atof(v);
        else if (ARG("--pid-file")) o->pid_file = v;
        else if (ARG("--reload-at")) o->reload_at = atof(v);
        else if (ARG("--reload-cmd")) o->reload_cmd = v;
        else if (ARG("--reload-grace")) o->reload_grace = atof(v);
        else if (ARG("--quit-cmd")) o->quit_cmd = v;
        else if (ARG("--quit-streams")) o->quit_streams = atoi(v);
        else if (ARG("--quit-tokens")) o->quit_tokens = atoi(v);
        else if (ARG("--quit-wait")) o->quit_wait = atof(v);
        else if (ARG("--idle-wait")) o->idle_wait = atof(v);
        else if (ARG("--rss-skip")) o->rss_skip = atof(v);
        else if (ARG("--seed")) o->seed = strtoull(v, NULL, 10);
        else if (ARG("--json")) o->json_path = v;
        else if (ARG("--table")) o->table_path = v;
        else {
            fprintf(stderr, "llm-soak: unknown or incomplete option %s\n", a);
            print_usage(stderr);
            return -1;
        }
#undef ARG
    }
    if (o->clients < 1 || o->duration <= 0 || o->disconnect_frac < 0
        || o->disconnect_frac > 1 || o->bad_frac < 0 || o->bad_frac >= 1
        || o->max_tokens < 1 || o->max_body < 1 || o->timeout <= 0
        || o->quit_streams < 1 || o->quit_tokens < 1)
    {
        fprintf(stderr, "llm-soak: counts and times must be positive, fractions in [0, 1]\n");
        return -1;
    }
    return 0;
}


static struct curl_slist *headers(const char *auth)
{
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");

    if (h != NULL) {
        h = curl_slist_append(h, "Expect:");   /* no 100-continue round trip */
    }
    if (h != NULL && auth != NULL) {
        h = curl_slist_append(h, auth);
    }
    return h;
}

int main(int argc, char **argv)
{
    soak_opts o = {
        .base_url = "http://127.0.0.1:8000", .clients = 500, .duration = 300,
        .disconnect_frac = 0.3, .bad_frac = 0.15, .max_tokens = 48,
        .max_body = 1048576, .timeout = 120, .reload_at = -1, .reload_grace = 30,
        .quit_streams = 100, .quit_tokens = 200, .idle_wait = 30, .quit_wait = 60,
        .rss_skip = 30, .seed = 1,
    };
    soak S;
    client *cl;
    char auth[600], started[32];
    cJSON *j, *x, *arr, *idle_workers;
    rss_summary rs[MAX_WORKERS];
    int i, nrs, idle_ok = 1, workers_seen = 0, rc = 0, deep_levels = 1200;
    double idle_after = 0;
    long total_fail;
    size_t k;
    time_t now;
    struct tm tm;

    if (parse_args(argc, argv, &o) < 0) {
        return 2;
    }
    if (o.reload_cmd != NULL && o.reload_at < 0) {
        o.reload_at = o.duration / 3;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "llm-soak: curl_global_init failed\n");
        return 1;
    }
    memset(&S, 0, sizeof(S));
    S.o = &o;
    S.t_reload = NO_TIME;
    S.t_quit = NO_TIME;
    S.master_exit_s = -1;
    S.rng = o.seed * 0x2545f4914f6cdd1dULL + 0x50a4ULL;
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", o.api_key ? o.api_key : "");
    S.h_key = headers(o.api_key ? auth : NULL);
    S.h_nokey = headers(NULL);
    S.h_badkey = headers("Authorization: Bearer not-the-key-0123456789");
    /* a body just over client_max_body_size, and JSON nested deeper than
     * cJSON's limit (1000) */
    S.oversize_len = (size_t) o.max_body + 4096;
    S.oversize = malloc(S.oversize_len + 1);
    S.deep = malloc((size_t) deep_levels * 2 + 32);
    cl = calloc((size_t) o.clients, sizeof(*cl));
    S.multi = curl_multi_init();
    if (S.h_key == NULL || S.h_nokey == NULL || S.h_badkey == NULL
        || S.oversize == NULL || S.deep == NULL || cl == NULL || S.multi == NULL)
    {
        fprintf(stderr, "llm-soak: out of memory\n");
        return 1;
    }
    {
        static const char head[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"";
        size_t hl = sizeof(head) - 1;

        memcpy(S.oversize, head, hl);
        memset(S.oversize + hl, 'x', S.oversize_len - hl - 4);
        memcpy(S.oversize + S.oversize_len - 4, "\"}]}", 4);
        S.oversize[S.oversize_len] = '\0';

        strcpy(S.deep, "{\"messages\":");
        k = strlen(S.deep);
        memset(S.deep + k, '[', (size_t) deep_levels);
        memset(S.deep + k + deep_levels, ']', (size_t) deep_levels);
        strcpy(S.deep + k + 2 * deep_levels, "}");
    }
    raise_nofile("llm-soak", o.clients + o.quit_streams);
    curl_multi_setopt(S.multi, CURLMOPT_MAXCONNECTS, (long) o.clients + o.quit_streams + 16);
    curl_multi_setopt(S.multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    curl_multi_setopt(S.multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, 0L);

    now = time(NULL);
    gmtime_r(&now, &tm);
    strftime(started, sizeof(started), "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(stderr, "llm-soak: %s, %d clients for %.0f s, %.0f%% of streams dropped, "
            "%.0f%% bad requests%s%s\n", o.base_url, o.clients, o.duration,
            o.disconnect_frac * 100, o.bad_frac * 100,
            o.reload_cmd ? ", reload" : "", o.quit_cmd ? ", quit" : "");

    if (phase_load(&S, cl) < 0) {
        return 1;
    }
    fprintf(stderr, "llm-soak: load phase over after %.1f s; waiting for idle engines\n",
            S.t_load_end);
    idle_workers = cJSON_CreateArray();
    idle_ok = phase_idle(&S, &workers_seen, &idle_after, idle_workers);
    if (o.quit_cmd != NULL && !interrupted) {
        if (phase_quit(&S) < 0) {
            return 1;
        }
    }

    /* ---- report ---- */
    total_fail = S.fails.total[WIN_LOAD] + S.fails.total[WIN_RELOAD] + S.fails.total[WIN_QUIT];
    nrs = rss_summarize(&S, rs, MAX_WORKERS);
    printf("============ Soak Result ============\n");
    printf("%-34s %s, %d clients, %.1f s load\n", "Server:", o.base_url, o.clients,
           S.t_load_end);
    for (i = 0; i < K_N; i++) {
        printf("%-34s started %ld, completed %ld\n", kind_name[i], S.started[i],
               i == K_BAD ? S.rejected_ok : S.completed[i]);
    }
    {
        summary e = summarize(&S.e2e), f = summarize(&S.ttfe);

        printf("%-34s p50 %.2f p90 %.2f p99 %.2f s; streams' first event p50 %.2f "
               "p99 %.2f s\n", "Latency of completed requests:", e.p50, e.p90, e.p99,
               f.p50, f.p99);
    }
    printf("%-34s %ld after k events, %ld after t ms (%ld ended first)\n",
           "Dropped by us:", S.dropped_events, S.dropped_time, S.ended_before_drop);
    printf("%-34s %ld\n", "Rejected as expected:", S.rejected_ok);
    printf("%-34s %ld (load %ld, reload %ld, quit %ld)\n", "Failures:", total_fail,
           S.fails.total[WIN_LOAD], S.fails.total[WIN_RELOAD], S.fails.total[WIN_QUIT]);
    for (i = 0; i < S.fails.n; i++) {
        printf("  [%s] x%ld %s (%.1f-%.1f s)\n      e.g. %.300s\n",
               win_name[S.fails.v[i].win], S.fails.v[i].count, S.fails.v[i].reason,
               S.fails.v[i].first_s, S.fails.v[i].last_s, S.fails.v[i].example);
    }
    printf("%-34s %d (peak), metrics peak: running %.0f waiting %.0f kv_used %.0f/%.0f\n",
           "Client requests in flight:", S.peak_in_flight, S.peak.running, S.peak.waiting,
           S.peak.kv_used, S.peak.kv_total);
    printf("%-34s %s after %.1f s (%d workers seen)\n", "Engines idle after the load:",
           idle_ok ? "yes" : "NO", idle_after, workers_seen);
    if (o.reload_cmd) {
        printf("%-34s at %.1f s, exit status %d\n", "Reload:", S.t_reload, S.reload_rc);
    }
    if (o.quit_cmd) {
        printf("%-34s %ld streams in flight (%ld ended before), %ld completed, %ld lost; "
               "master exited after %.1f s\n", "Quit:", S.quit_in_flight, S.quit_before,
               S.quit_completed, S.quit_lost, S.master_exit_s);
    }
    for (i = 0; i < nrs; i++) {
        printf("RSS pid %d (%.0f-%.0f s): first %ld kB, max %ld kB, last %ld kB; "
               "mean first %.0f s %.0f kB, last %.0f s %.0f kB (%+.1f%%)\n", rs[i].pid,
               rs[i].first_t, rs[i].last_t, rs[i].first_kb, rs[i].max_kb, rs[i].last_kb,
               rs[i].win_s, rs[i].first_win_kb, rs[i].win_s, rs[i].last_win_kb,
               rs[i].first_win_kb > 0
               ? (rs[i].last_win_kb - rs[i].first_win_kb) * 100 / rs[i].first_win_kb : 0);
    }
    {
        double every = S.t_load_end / 30 < 10 ? (S.t_load_end / 30 < 1 ? 1 : 2) : 10;

        if (S.t_load_end >= 100) {
            every = 10;
        } else if (S.t_load_end >= 30) {
            every = 5;
        }
        write_table(&S, stdout, every);
        if (o.table_path != NULL) {
            FILE *f = fopen(o.table_path, "w");

            if (f == NULL) {
                fprintf(stderr, "llm-soak: cannot write %s: %s\n", o.table_path,
                        strerror(errno));
                rc = 1;
            } else {
                write_table(&S, f, every);
                if (fclose(f) != 0) {
                    rc = 1;
                }
            }
        }
    }

    if (o.json_path != NULL) {
        FILE *f;
        char *s;

        j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "tool", "llm-soak");
        cJSON_AddStringToObject(j, "date", started);
        cJSON_AddStringToObject(j, "base_url", o.base_url);
        cJSON_AddNumberToObject(j, "clients", o.clients);
        cJSON_AddNumberToObject(j, "duration_s", o.duration);
        cJSON_AddNumberToObject(j, "load_s", S.t_load_end);
        cJSON_AddNumberToObject(j, "disconnect_frac", o.disconnect_frac);
        cJSON_AddNumberToObject(j, "bad_frac", o.bad_frac);
        cJSON_AddNumberToObject(j, "seed", (double) o.seed);
        cJSON_AddNumberToObject(j, "peak_in_flight", S.peak_in_flight);
        x = cJSON_AddObjectToObject(j, "started");
        for (i = 0; i < K_N; i++) {
            cJSON_AddNumberToObject(x, kind_name[i], S.started[i]);
        }
        x = cJSON_AddObjectToObject(j, "completed");
        for (i = 0; i < K_BAD; i++) {
            cJSON_AddNumberToObject(x, kind_name[i], S.completed[i]);
        }
        {
            summary e = summarize(&S.e2e), f = summarize(&S.ttfe);

            x = cJSON_AddObjectToObject(j, "latency_s");
            cJSON_AddNumberToObject(x, "e2e_p50", e.p50);
            cJSON_AddNumberToObject(x, "e2e_p90", e.p90);
            cJSON_AddNumberToObject(x, "e2e_p99", e.p99);
            cJSON_AddNumberToObject(x, "first_event_p50", f.p50);
            cJSON_AddNumberToObject(x, "first_event_p99", f.p99);
        }
        x = cJSON_AddObjectToObject(j, "dropped");
        cJSON_AddNumberToObject(x, "after_events", S.dropped_events);
        cJSON_AddNumberToObject(x, "after_time", S.dropped_time);
        cJSON_AddNumberToObject(x, "ended_before_drop", S.ended_before_drop);
        x = cJSON_AddObjectToObject(j, "rejected_as_expected");
        cJSON_AddNumberToObject(x, "total", S.rejected_ok);
        for (i = 0; i < N_BAD; i++) {
            if (bad_cases[i].started > 0) {
                cJSON *y = cJSON_AddObjectToObject(x, bad_cases[i].name);

                cJSON_AddNumberToObject(y, "sent", bad_cases[i].started);
                cJSON_AddNumberToObject(y, "ok", bad_cases[i].ok);
            }
        }
        x = cJSON_AddObjectToObject(j, "failures");
        cJSON_AddNumberToObject(x, "total", total_fail);
        for (i = 0; i < WIN_N; i++) {
            cJSON_AddNumberToObject(x, win_name[i], S.fails.total[i]);
        }
        arr = cJSON_AddArrayToObject(x, "reasons");
        for (i = 0; i < S.fails.n; i++) {
            cJSON *y = cJSON_CreateObject();

            cJSON_AddStringToObject(y, "window", win_name[S.fails.v[i].win]);
            cJSON_AddStringToObject(y, "reason", S.fails.v[i].reason);
            cJSON_AddNumberToObject(y, "count", S.fails.v[i].count);
            cJSON_AddNumberToObject(y, "first_s", S.fails.v[i].first_s);
            cJSON_AddNumberToObject(y, "last_s", S.fails.v[i].last_s);
            cJSON_AddStringToObject(y, "example", S.fails.v[i].example);
            cJSON_AddItemToArray(arr, y);
        }
        x = cJSON_AddObjectToObject(j, "idle_after_load");
        cJSON_AddBoolToObject(x, "ok", idle_ok);
        cJSON_AddNumberToObject(x, "after_s", idle_after);
        cJSON_AddItemToObject(x, "workers", idle_workers);
        idle_workers = NULL;
        x = cJSON_AddObjectToObject(j, "metrics_peak");
        cJSON_AddNumberToObject(x, "running", S.peak.running);
        cJSON_AddNumberToObject(x, "waiting", S.peak.waiting);
        cJSON_AddNumberToObject(x, "kv_used_blocks", S.peak.kv_used);
        cJSON_AddNumberToObject(x, "kv_total_blocks", S.peak.kv_total);
        if (o.reload_cmd != NULL) {
            x = cJSON_AddObjectToObject(j, "reload");
            cJSON_AddNumberToObject(x, "at_s", S.t_reload);
            cJSON_AddNumberToObject(x, "exit_status", S.reload_rc);
        }
        if (o.quit_cmd != NULL) {
            x = cJSON_AddObjectToObject(j, "quit");
            cJSON_AddNumberToObject(x, "at_s", S.t_quit);
            cJSON_AddNumberToObject(x, "exit_status", S.quit_rc);
            cJSON_AddNumberToObject(x, "streams", o.quit_streams);
            cJSON_AddNumberToObject(x, "ended_before_quit", S.quit_before);
            cJSON_AddNumberToObject(x, "in_flight", S.quit_in_flight);
            cJSON_AddNumberToObject(x, "completed", S.quit_completed);
            cJSON_AddNumberToObject(x, "lost", S.quit_lost);
            cJSON_AddNumberToObject(x, "master_exit_s", S.master_exit_s);
        }
        arr = cJSON_AddArrayToObject(j, "rss_workers");
        for (i = 0; i < nrs; i++) {
            cJSON *y = cJSON_CreateObject();

            cJSON_AddNumberToObject(y, "pid", rs[i].pid);
            cJSON_AddNumberToObject(y, "first_s", rs[i].first_t);
            cJSON_AddNumberToObject(y, "last_s", rs[i].last_t);
            cJSON_AddNumberToObject(y, "first_kb", (double) rs[i].first_kb);
            cJSON_AddNumberToObject(y, "max_kb", (double) rs[i].max_kb);
            cJSON_AddNumberToObject(y, "last_kb", (double) rs[i].last_kb);
            cJSON_AddNumberToObject(y, "window_s", rs[i].win_s);
            cJSON_AddNumberToObject(y, "first_window_kb", rs[i].first_win_kb);
            cJSON_AddNumberToObject(y, "last_window_kb", rs[i].last_win_kb);
            cJSON_AddNumberToObject(y, "growth_pct", rs[i].first_win_kb > 0
                ? (rs[i].last_win_kb - rs[i].first_win_kb) * 100 / rs[i].first_win_kb : 0);
            cJSON_AddItemToArray(arr, y);
        }
        arr = cJSON_AddArrayToObject(j, "rss_samples");   /* [t, pid, kB] */
        for (k = 0; k < S.n_rss; k++) {
            cJSON *y = cJSON_CreateArray();

            cJSON_AddItemToArray(y, cJSON_CreateNumber((double) (long) (S.rss[k].t * 10) / 10));
            cJSON_AddItemToArray(y, cJSON_CreateNumber(S.rss[k].pid));
            cJSON_AddItemToArray(y, cJSON_CreateNumber((double) S.rss[k].kb));
            cJSON_AddItemToArray(arr, y);
        }
        /* [t, worker, running, waiting, kv_used] */
        arr = cJSON_AddArrayToObject(j, "metrics_samples");
        for (k = 0; k < S.n_met; k++) {
            cJSON *y = cJSON_CreateArray();

            cJSON_AddItemToArray(y, cJSON_CreateNumber((double) (long) (S.met[k].t * 10) / 10));
            cJSON_AddItemToArray(y, cJSON_CreateNumber(S.met[k].worker));
            cJSON_AddItemToArray(y, cJSON_CreateNumber(S.met[k].running));
            cJSON_AddItemToArray(y, cJSON_CreateNumber(S.met[k].waiting));
            cJSON_AddItemToArray(y, cJSON_CreateNumber(S.met[k].kv_used));
            cJSON_AddItemToArray(arr, y);
        }
        s = cJSON_Print(j);
        f = fopen(o.json_path, "w");
        if (s == NULL || f == NULL || fputs(s, f) < 0 || fputc('\n', f) < 0
            || fclose(f) != 0)
        {
            fprintf(stderr, "llm-soak: cannot write %s\n", o.json_path);
            rc = 1;
        }
        free(s);
        cJSON_Delete(j);
    }
    cJSON_Delete(idle_workers);

    for (i = 0; i < o.clients; i++) {
        free(cl[i].body);
        free(cl[i].resp.p);
        free(cl[i].line.p);
    }
    free(cl);
    free(S.msl.resp.p);
    free(S.oversize);
    free(S.deep);
    free(S.rss);
    free(S.met);
    free(S.e2e.v);
    free(S.ttfe.v);
    for (i = 0; i < S.fails.n; i++) {
        free(S.fails.v[i].reason);
        free(S.fails.v[i].example);
    }
    free(S.fails.v);
    curl_multi_cleanup(S.multi);
    curl_slist_free_all(S.h_key);
    curl_slist_free_all(S.h_nokey);
    curl_slist_free_all(S.h_badkey);
    curl_global_cleanup();
    if (rc != 0) {
        return rc;
    }
    if (interrupted || total_fail > 0 || !idle_ok || S.quit_lost > 0) {
        return 1;
    }
    return 0;
}
