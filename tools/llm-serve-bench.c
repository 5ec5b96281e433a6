/*
 * llm-serve-bench: serving benchmark for any OpenAI-compatible server (this
 * module under nginx, vLLM, llama.cpp's server, ...), in the spirit of
 * `vllm bench serve` and sglang's bench_serving.
 *
 *   llm-serve-bench --base-url http://127.0.0.1:8000 --tokenizer MODEL_DIR \
 *       [--endpoint completions|chat] [--model NAME] \
 *       --input-len 128 --output-len 128 [--range-ratio 0.0] \
 *       --num-prompts 64 [--max-concurrency 16] [--request-rate 4] \
 *       [--warmup 2] [--json FILE]
 *
 * Prompts are random text of an exact token count: random ids of the
 * tokenizer's vocabulary are decoded and the text re-encoded, repeating
 * until the count holds (decoding and re-encoding random ids rarely gives
 * the same ids back).  Every request asks for `ignore_eos`, `max_tokens`
 * and `min_tokens` equal to its output length, greedy sampling, streaming
 * with `stream_options.include_usage`, so output lengths hold and the
 * server's own token counts come back.
 *
 * One thread drives all requests with libcurl's multi interface, event
 * driven (curl_multi_socket_action over epoll): thousands of concurrent
 * streams cost one socket each, no threads, and a wake-up costs one
 * epoll_wait and the reads of the sockets that have data — on a machine
 * the server shares, the client's CPU per token is taken from the server
 * being measured.  Times are taken when the bytes arrive:
 *   TTFT  request start -> first chunk with generated text
 *   E2E   request start -> end of the stream
 *   TPOT  (E2E - TTFT) / (output tokens - 1)       (as vLLM computes it)
 *   ITL   gap between consecutive chunks with generated text
 * Percentiles interpolate linearly between order statistics (numpy's
 * default), as vLLM reports them.  CPU: the client's own over the measured
 * requests, and with --server-pid the server process's over the same
 * window (what the HTTP path costs beside the engine, when both share a
 * machine).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>
#include <curl/curl.h>

#include "tokenizer.h"

#define ERRBODY_MAX  4096      /* bytes of a failed response kept */
#define PROMPT_TRIES 64        /* decode/re-encode rounds per prompt */

#include "bench_stats.h"
#include "client_util.h"

/* Seeded generator for lengths, prompt ids and arrival times (splitmix64),
 * so two runs with one seed send the same requests at the same offsets. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double rng_uniform(uint64_t *s)        /* [0, 1) */
{
    return (double) (rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}


/* ---- failures, grouped by reason ----------------------------------------- */

typedef struct {
    char *reason;              /* what groups failures: kind and message */
    char *example;             /* the first one's full text */
    int   count;
} failure;

typedef struct {
    failure *v;
    int      n, cap;
} failures;

static void failures_add(failures *f, const char *reason, const char *example)
{
    int i;

    for (i = 0; i < f->n; i++) {
        if (strcmp(f->v[i].reason, reason) == 0) {
            f->v[i].count++;
            return;
        }
    }
    if (f->n == f->cap) {
        int cap = f->cap ? f->cap * 2 : 8;
        failure *v = realloc(f->v, (size_t) cap * sizeof(*v));

        if (v == NULL) {
            return;             /* the count in "failed" still holds */
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
    f->v[f->n].count = 1;
    f->n++;
}

/* ---- options --------------------------------------------------------------- */

typedef enum { EP_COMPLETIONS, EP_CHAT } endpoint_kind;

typedef struct {
    const char    *base_url;
    endpoint_kind  endpoint;
    const char    *model;
    const char    *tokenizer_path;
    const char    *api_key;
    const char    *json_path;
    const char    *label;
    const char    *extra_body;       /* JSON object merged into each body */
    int            input_len, output_len;
    double         range_ratio;
    int            num_prompts, max_concurrency, warmup;
    double         request_rate;     /* requests/s; 0: all at once */
    double         temperature;
    uint64_t       seed;
    long           timeout_ms;
    int            watch_pid;        /* sample this process's RSS */
    int            server_pid;       /* its CPU time over the measured run */
    cJSON         *metadata;         /* --metadata KEY=VALUE pairs */
    int            save_detailed;    /* per-request lists in the JSON */
} bench_opts;

/* ---- one request ----------------------------------------------------------- */

typedef struct {
    int           index;
    char         *prompt;            /* text of exactly prompt_len tokens */
    int           prompt_len;
    int           output_len;
    char         *body;              /* request JSON */
    double        arrival;           /* offset from phase start (rate mode) */

    CURL         *easy;
    char          curl_err[CURL_ERROR_SIZE];
    long          http_status;
    buf           line;              /* incomplete SSE line */
    buf           errbody;           /* body of a non-200 response */
    buf           text;              /* generated text */
    double        t_start, t_first, t_last_token, t_end;
    int           n_token_chunks;
    int           usage_prompt, usage_completion;   /* -1: not reported */
    int           got_done;
    char         *stream_error;
    series        itl;
    int           out_tokens;        /* counted when it finished */
    char         *error;             /* why it failed, NULL: it did not */
} bench_req;

static void req_reset_run(bench_req *q)
{
    q->easy = NULL;
    q->curl_err[0] = '\0';
    q->http_status = 0;
    q->line.len = q->errbody.len = q->text.len = 0;
    q->t_start = q->t_first = q->t_last_token = q->t_end = 0;
    q->n_token_chunks = 0;
    q->usage_prompt = q->usage_completion = -1;
    q->got_done = 0;
    free(q->stream_error);
    q->stream_error = NULL;
    q->itl.n = 0;
    q->out_tokens = 0;
    free(q->error);
    q->error = NULL;
}

static void req_free(bench_req *q)
{
    free(q->prompt);
    free(q->body);
    free(q->line.p);
    free(q->errbody.p);
    free(q->text.p);
    free(q->stream_error);
    free(q->itl.v);
    free(q->error);
}

/* Text of an OpenAI error object, or NULL. */
static const char *error_message(const cJSON *root)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");
    const cJSON *m;

    if (cJSON_IsString(e)) {
        return e->valuestring;            /* some servers send a string */
    }
    m = cJSON_GetObjectItemCaseSensitive(e, "message");
    return cJSON_IsString(m) ? m->valuestring : (e ? "error without message" : NULL);
}

static void set_stream_error(bench_req *q, const char *msg)
{
    if (q->stream_error == NULL) {
        q->stream_error = strdup(msg);
    }
}

/* One `data:` payload of the event stream. */
static void on_sse_data(bench_req *q, const char *data, double t)
{
    cJSON *root, *choices, *c0, *usage, *v;
    const char *msg, *text = NULL;
    int is_token = 0;

    q->t_end = t;
    if (strcmp(data, "[DONE]") == 0) {
        q->got_done = 1;
        return;
    }
    root = cJSON_Parse(data);
    if (root == NULL) {
        set_stream_error(q, "stream: a data line is not JSON");
        return;
    }
    if ((msg = error_message(root)) != NULL) {
        char m[512];

        snprintf(m, sizeof(m), "stream error: %s", msg);
        set_stream_error(q, m);
        cJSON_Delete(root);
        return;
    }
    choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    c0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    if (c0 != NULL) {
        cJSON *delta = cJSON_GetObjectItemCaseSensitive(c0, "delta");
        cJSON *fr = cJSON_GetObjectItemCaseSensitive(c0, "finish_reason");

        if (delta != NULL) {                         /* chat.completion.chunk */
            v = cJSON_GetObjectItemCaseSensitive(delta, "content");
            if (!cJSON_IsString(v) || v->valuestring[0] == '\0') {
                cJSON *r = cJSON_GetObjectItemCaseSensitive(delta, "reasoning_content");
                v = cJSON_IsString(r) ? r : v;
            }
            /* the first delta (the role) comes before any token */
            is_token = cJSON_IsString(v)
                       && !cJSON_HasObjectItem(delta, "role");
        } else {                                     /* text_completion */
            v = cJSON_GetObjectItemCaseSensitive(c0, "text");
            is_token = cJSON_IsString(v);
        }
        /* a chunk of its own with the finish reason carries no token */
        is_token = is_token && (fr == NULL || cJSON_IsNull(fr));
        if (cJSON_IsString(v) && v->valuestring[0] != '\0') {
            text = v->valuestring;
        }
    }
    /* every token's chunk counts, its text empty or not (a token without
     * text, or text held back for a stop string), as vLLM's client counts
     * them: TTFT is the first such chunk, ITL the gaps between them */
    if (is_token) {
        if (q->n_token_chunks == 0) {
            q->t_first = t;
        } else if (series_add(&q->itl, t - q->t_last_token) < 0) {
            set_stream_error(q, "client: out of memory");
        }
        q->t_last_token = t;
        q->n_token_chunks++;
    }
    if (text != NULL) {
        if (buf_add(&q->text, text, strlen(text)) < 0) {
            set_stream_error(q, "client: out of memory");
        }
    }
    usage = cJSON_GetObjectItemCaseSensitive(root, "usage");
    if (cJSON_IsObject(usage)) {
        v = cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens");
        if (cJSON_IsNumber(v)) {
            q->usage_completion = v->valueint;
        }
        v = cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens");
        if (cJSON_IsNumber(v)) {
            q->usage_prompt = v->valueint;
        }
    }
    cJSON_Delete(root);
}

/* libcurl write callback: split the stream into lines, hand on `data:`. */
static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    bench_req *q = ud;
    size_t len = size * nmemb, start, i;
    double t = now_s();

    if (q->http_status == 0) {
        curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &q->http_status);
    }
    if (q->http_status != 200) {
        size_t room = ERRBODY_MAX > q->errbody.len ? ERRBODY_MAX - q->errbody.len : 0;

        if (buf_add(&q->errbody, ptr, len < room ? len : room) < 0) {
            return 0;           /* aborts the transfer: reported by curl */
        }
        return len;
    }
    start = 0;
    for (i = 0; i < len; i++) {
        if (ptr[i] != '\n') {
            continue;
        }
        if (buf_add(&q->line, ptr + start, i - start) < 0) {
            return 0;
        }
        start = i + 1;
        if (q->line.len > 0 && q->line.p[q->line.len - 1] == '\r') {
            q->line.p[--q->line.len] = '\0';
        }
        /* SSE: "data:" with an optional space; comments (":") and other
         * fields (event:, id:, retry:) carry nothing we measure */
        if (q->line.len >= 5 && memcmp(q->line.p, "data:", 5) == 0) {
            const char *d = q->line.p + 5;

            if (*d == ' ') {
                d++;
            }
            on_sse_data(q, d, t);
        }
        q->line.len = 0;
    }
    if (start < len && buf_add(&q->line, ptr + start, len - start) < 0) {
        return 0;
    }
    return len;
}

/* ---- prompts ---------------------------------------------------------------- */

/*
 * Random text of exactly n tokens.  Decoding random ids and re-encoding
 * the text merges or splits tokens at their seams; each round keeps the
 * re-encoded ids cut to n (or extended by fresh random ids) and tries
 * again, which settles within a few rounds.
 */
static char *make_prompt(const tokenizer *tok, int n, uint64_t *rng,
                         char *err, size_t errlen)
{
    int vocab = tokenizer_vocab_size(tok), m = 0, i, round;
    int32_t *ids = malloc((size_t) (n + 1) * sizeof(int32_t)), *enc = NULL;
    char *text = NULL;
    size_t tlen;

    if (ids == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (round = 0; round < PROMPT_TRIES; round++) {
        /* ids[0..m) are kept from the last round; top up with random ones */
        while (m < n) {
            int32_t id = (int32_t) (rng_next(rng) % (uint64_t) vocab);
            const char *bytes = tokenizer_token_bytes(tok, id, &tlen);

            /* no special tokens, and no NUL byte: the prompt travels as
             * a C string in JSON, where a NUL would cut it short */
            if (bytes == NULL || tokenizer_is_special(tok, id)
                || memchr(bytes, '\0', tlen) != NULL)
            {
                continue;
            }
            ids[m++] = id;
        }
        free(text);
        text = tokenizer_decode(tok, ids, n, 1, &tlen, err, errlen);
        if (text == NULL) {
            free(ids);
            return NULL;
        }
        free(enc);
        enc = NULL;
        m = tokenizer_encode(tok, text, tlen, 0, &enc, err, errlen);
        if (m < 0) {
            free(text);
            free(ids);
            return NULL;
        }
        if (m == n) {
            free(enc);
            free(ids);
            return text;
        }
        if (m > n) {
            m = n;
        }
        for (i = 0; i < m; i++) {
            ids[i] = enc[i];
        }
        /* the last kept id sits on a seam that just moved: redraw it */
        if (m > 0) {
            m--;
        }
    }
    free(enc);
    free(text);
    free(ids);
    snprintf(err, errlen, "no text of exactly %d tokens after %d rounds", n, PROMPT_TRIES);
    return NULL;
}

static int draw_len(int len, double ratio, uint64_t *rng)
{
    int lo, hi;

    if (ratio <= 0) {
        return len;
    }
    lo = (int) floor(len * (1.0 - ratio));
    hi = (int) ceil(len * (1.0 + ratio));
    if (lo < 1) {
        lo = 1;
    }
    return lo + (int) (rng_next(rng) % (uint64_t) (hi - lo + 1));
}

static char *make_body(const bench_opts *o, const bench_req *q,
                       const cJSON *extra)
{
    cJSON *b = cJSON_CreateObject(), *so, *item;
    char *s;

    if (b == NULL) {
        return NULL;
    }
    cJSON_AddStringToObject(b, "model", o->model);
    if (o->endpoint == EP_CHAT) {
        cJSON *msgs = cJSON_AddArrayToObject(b, "messages");
        cJSON *m = cJSON_CreateObject();

        cJSON_AddStringToObject(m, "role", "user");
        cJSON_AddStringToObject(m, "content", q->prompt);
        cJSON_AddItemToArray(msgs, m);
    } else {
        cJSON_AddStringToObject(b, "prompt", q->prompt);
    }
    cJSON_AddNumberToObject(b, "max_tokens", q->output_len);
    cJSON_AddNumberToObject(b, "min_tokens", q->output_len);
    cJSON_AddTrueToObject(b, "ignore_eos");
    cJSON_AddNumberToObject(b, "temperature", o->temperature);
    cJSON_AddTrueToObject(b, "stream");
    so = cJSON_AddObjectToObject(b, "stream_options");
    cJSON_AddTrueToObject(so, "include_usage");
    if (extra != NULL) {
        cJSON_ArrayForEach(item, extra) {
            cJSON_DeleteItemFromObjectCaseSensitive(b, item->string);
            cJSON_AddItemToObject(b, item->string, cJSON_Duplicate(item, 1));
        }
    }
    s = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    return s;
}

/* ---- the run ------------------------------------------------------------------ */

typedef struct {
    long before_kb, peak_kb, after_kb;
    int  in_flight_at_peak;
    double last_sample;
} rss_watch;


typedef struct {
    CURLM               *multi;
    int                  epfd;       /* the sockets libcurl asks to watch */
    double               deadline;   /* libcurl's timeout (now_s), or < 0 */
    struct curl_slist   *headers;
    char                 url[1024];
    const bench_opts    *o;
    rss_watch           *rss;
    int                  peak_in_flight;
} runner;

static int start_request(runner *r, bench_req *q)
{
    CURL *e = curl_easy_init();

    req_reset_run(q);
    if (e == NULL) {
        return -1;
    }
    q->easy = e;
    if (curl_easy_setopt(e, CURLOPT_URL, r->url) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_POSTFIELDS, q->body) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long) strlen(q->body)) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_WRITEDATA, q) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_PRIVATE, q) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_ERRORBUFFER, q->curl_err) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1) != CURLE_OK
        || curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, r->o->timeout_ms) != CURLE_OK)
    {
        curl_easy_cleanup(e);
        q->easy = NULL;
        return -1;
    }
    q->t_start = now_s();
    if (curl_multi_add_handle(r->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        q->easy = NULL;
        return -1;
    }
    return 0;
}

/* Why a finished transfer failed, or NULL for a success.  The reason
 * groups failures; a transport error's detail (which varies: "after 12
 * ms") goes to detail only. */
static const char *request_failure(bench_req *q, CURLcode res, char *why, size_t len,
                                   char *detail, size_t dlen)
{
    detail[0] = '\0';
    if (res != CURLE_OK) {
        snprintf(why, len, "curl: %s", curl_easy_strerror(res));
        snprintf(detail, dlen, "curl: %s", q->curl_err[0] ? q->curl_err : curl_easy_strerror(res));
        return why;
    }
    if (q->http_status == 0) {
        curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &q->http_status);
    }
    if (q->http_status != 200) {
        cJSON *root = q->errbody.p ? cJSON_Parse(q->errbody.p) : NULL;
        const char *msg = root ? error_message(root) : NULL;

        snprintf(why, len, "HTTP %ld: %.300s", q->http_status,
                 msg ? msg : (q->errbody.p ? q->errbody.p : "(empty body)"));
        cJSON_Delete(root);
        return why;
    }
    if (q->stream_error != NULL) {
        snprintf(why, len, "%s", q->stream_error);
        return why;
    }
    if (!q->got_done) {
        snprintf(why, len, "stream ended without data: [DONE]");
        return why;
    }
    if (q->n_token_chunks == 0) {
        snprintf(why, len, "no token in the stream");
        return why;
    }
    return NULL;
}

typedef struct {
    int     completed, failed, len_mismatch;
    long long input_tokens, output_tokens, server_prompt_tokens;
    series  ttft, tpot, itl, e2e;
    failures why;
    double  duration;
} phase_result;

static void phase_result_free(phase_result *p)
{
    int i;

    free(p->ttft.v);
    free(p->tpot.v);
    free(p->itl.v);
    free(p->e2e.v);
    for (i = 0; i < p->why.n; i++) {
        free(p->why.v[i].reason);
        free(p->why.v[i].example);
    }
    free(p->why.v);
}

static void finish_request(runner *r, bench_req *q, CURLcode res,
                           const tokenizer *tok, phase_result *pr)
{
    char why[512], detail[512];
    const char *fail = request_failure(q, res, why, sizeof(why), detail, sizeof(detail));
    int out;
    size_t i;

    (void) r;
    if (q->t_end == 0) {
        q->t_end = now_s();
    }
    if (fail != NULL) {
        pr->failed++;
        failures_add(&pr->why, fail, detail[0] ? detail : fail);
        q->error = strdup(detail[0] ? detail : fail);
        return;
    }
    out = q->usage_completion;
    if (out < 0) {
        /* no usage chunk: count the generated text's tokens, as vLLM does */
        int32_t *ids = NULL;
        char err[256];

        out = tokenizer_encode(tok, q->text.p, q->text.len, 0, &ids, err, sizeof(err));
        free(ids);
        if (out < 0) {
            out = q->n_token_chunks;
        }
    }
    if (out != q->output_len) {
        pr->len_mismatch++;
    }
    q->out_tokens = out;
    pr->completed++;
    pr->input_tokens += q->prompt_len;
    pr->output_tokens += out;
    if (q->usage_prompt >= 0) {
        pr->server_prompt_tokens += q->usage_prompt;
    }
    series_add(&pr->ttft, q->t_first - q->t_start);
    series_add(&pr->e2e, q->t_end - q->t_start);
    if (out > 1) {
        series_add(&pr->tpot, (q->t_end - q->t_first) / (out - 1));
    }
    for (i = 0; i < q->itl.n; i++) {
        series_add(&pr->itl, q->itl.v[i]);
    }
}

static void sample_rss(runner *r, int in_flight, int force)
{
    rss_watch *w = r->rss;
    double t;
    long kb;

    if (w == NULL) {
        return;
    }
    t = now_s();
    if (!force && t - w->last_sample < 0.02) {
        return;
    }
    w->last_sample = t;
    kb = read_rss_kb(r->o->watch_pid);
    if (kb > w->peak_kb) {
        w->peak_kb = kb;
        w->in_flight_at_peak = in_flight;
    }
}

/* --save-detailed: the measured requests in submission order, under
 * vLLM's names (times in seconds; a failed request has ttft 0, no itls,
 * output length 0 and its reason in errors, "" otherwise). */
static void add_detailed(cJSON *j, const bench_req *reqs, int n)
{
    cJSON *in = cJSON_AddArrayToObject(j, "input_lens");
    cJSON *out = cJSON_AddArrayToObject(j, "output_lens");
    cJSON *ttft = cJSON_AddArrayToObject(j, "ttfts");
    cJSON *itls = cJSON_AddArrayToObject(j, "itls");
    cJSON *err = cJSON_AddArrayToObject(j, "errors");
    cJSON *text = cJSON_AddArrayToObject(j, "generated_texts");
    int i;

    for (i = 0; i < n; i++) {
        const bench_req *q = &reqs[i];
        cJSON *l = cJSON_CreateArray();
        size_t k;

        cJSON_AddItemToArray(in, cJSON_CreateNumber(q->prompt_len));
        cJSON_AddItemToArray(out, cJSON_CreateNumber(q->out_tokens));
        cJSON_AddItemToArray(ttft, cJSON_CreateNumber(q->error ? 0 : q->t_first - q->t_start));
        for (k = 0; q->error == NULL && k < q->itl.n; k++) {
            cJSON_AddItemToArray(l, cJSON_CreateNumber(q->itl.v[k]));
        }
        cJSON_AddItemToArray(itls, l);
        cJSON_AddItemToArray(err, cJSON_CreateString(q->error ? q->error : ""));
        cJSON_AddItemToArray(text, cJSON_CreateString(q->text.len > 0 && !q->error ? q->text.p : ""));
    }
}

/* CURLMOPT_SOCKETFUNCTION: watch a socket for what libcurl waits for */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp,
                     void *socketp)
{
    runner *r = userp;
    struct epoll_event ev;

    (void) easy;
    (void) socketp;
    if (what == CURL_POLL_REMOVE) {
        /* ENOENT or EBADF: libcurl closed it first, epoll forgot it */
        (void) epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL);
        return 0;
    }
    memset(&ev, 0, sizeof(ev));
    ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0)
                | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0);
    ev.data.fd = fd;
    /* a descriptor number can come back for a new socket: MOD or ADD,
     * whichever epoll accepts */
    if (epoll_ctl(r->epfd, EPOLL_CTL_MOD, fd, &ev) == 0) {
        return 0;
    }
    if (errno == ENOENT && epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev) == 0) {
        return 0;
    }
    fprintf(stderr, "llm-serve-bench: epoll_ctl(%d): %s\n", (int) fd, strerror(errno));
    return -1;
}

/* CURLMOPT_TIMERFUNCTION: when to call socket_action(CURL_SOCKET_TIMEOUT) */
static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    runner *r = userp;

    (void) multi;
    r->deadline = timeout_ms < 0 ? -1.0 : now_s() + (double) timeout_ms / 1000.0;
    return 0;
}

/* Lets libcurl act on the ready sockets, or on its timeout once it is
 * due; waits at most wait_ms for either. */
static int drive_sockets(runner *r, int wait_ms)
{
    struct epoll_event evs[256];
    int n, i, running;

    if (r->deadline >= 0) {
        double due_ms = (r->deadline - now_s()) * 1000.0;

        if (due_ms < wait_ms) {
            wait_ms = due_ms <= 0 ? 0 : (int) due_ms + 1;
        }
    }
    n = epoll_wait(r->epfd, evs, (int) (sizeof(evs) / sizeof(evs[0])), wait_ms);
    if (n < 0 && errno != EINTR) {
        fprintf(stderr, "llm-serve-bench: epoll_wait: %s\n", strerror(errno));
        return -1;
    }
    for (i = 0; i < n; i++) {
        int mask = ((evs[i].events & EPOLLIN) ? CURL_CSELECT_IN : 0)
                   | ((evs[i].events & EPOLLOUT) ? CURL_CSELECT_OUT : 0)
                   | ((evs[i].events & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);

        if (curl_multi_socket_action(r->multi, evs[i].data.fd, mask, &running) != CURLM_OK) {
            fprintf(stderr, "llm-serve-bench: curl_multi_socket_action failed\n");
            return -1;
        }
    }
    if (r->deadline >= 0 && now_s() >= r->deadline) {
        r->deadline = -1.0;
        if (curl_multi_socket_action(r->multi, CURL_SOCKET_TIMEOUT, 0, &running) != CURLM_OK) {
            fprintf(stderr, "llm-serve-bench: curl_multi_socket_action failed\n");
            return -1;
        }
    }
    return 0;
}

/*
 * Runs n requests: at most max_conc in flight, each sent no earlier than
 * its arrival offset when a request rate is set.  Returns 0, or -1 when
 * libcurl itself fails (not for failed requests: those are counted).
 */
static int run_phase(runner *r, bench_req *reqs, int n, int max_conc,
                     int use_arrivals, const tokenizer *tok, phase_result *pr)
{
    int next = 0, in_flight = 0, finished = 0;
    double t0 = now_s(), t_last_done = t0;
    CURLMsg *msg;
    int left;

    while (finished < n) {
        int wait_ms = 1000;

        /* a finished request freed a slot: the next one starts before the
         * sockets are waited on again */
        while (next < n && in_flight < max_conc) {
            if (use_arrivals && reqs[next].arrival > now_s() - t0) {
                double dt = reqs[next].arrival - (now_s() - t0);

                wait_ms = (int) (dt * 1000) + 1;
                break;
            }
            if (start_request(r, &reqs[next]) < 0) {
                fprintf(stderr, "llm-serve-bench: cannot start request %d (libcurl)\n", next);
                return -1;
            }
            next++;
            in_flight++;
            if (in_flight > r->peak_in_flight) {
                r->peak_in_flight = in_flight;
            }
        }
        if (drive_sockets(r, wait_ms) < 0) {
            return -1;
        }
        sample_rss(r, in_flight, 0);
        while ((msg = curl_multi_info_read(r->multi, &left)) != NULL) {
            bench_req *q;

            if (msg->msg != CURLMSG_DONE) {
                continue;
            }
            if (curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &q) != CURLE_OK) {
                fprintf(stderr, "llm-serve-bench: lost a request's handle\n");
                return -1;
            }
            finish_request(r, q, msg->data.result, tok, pr);
            curl_multi_remove_handle(r->multi, q->easy);
            curl_easy_cleanup(q->easy);
            q->easy = NULL;
            in_flight--;
            finished++;
            t_last_done = now_s();
        }
    }
    pr->duration = t_last_done - t0;
    return 0;
}

/* ---- model name from /v1/models ------------------------------------------------ */

static size_t collect_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    return buf_add(ud, ptr, size * nmemb) < 0 ? 0 : size * nmemb;
}

static char *first_model(const char *base_url, struct curl_slist *headers)
{
    CURL *e = curl_easy_init();
    buf body = { 0 };
    char url[1024];
    long status = 0;
    cJSON *root, *data, *id;
    char *name = NULL;

    if (e == NULL) {
        return NULL;
    }
    snprintf(url, sizeof(url), "%s/v1/models", base_url);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L);
    if (curl_easy_perform(e) != CURLE_OK
        || curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK
        || status != 200 || body.p == NULL)
    {
        fprintf(stderr, "llm-serve-bench: GET %s failed (HTTP %ld); pass --model\n", url, status);
    } else if ((root = cJSON_Parse(body.p)) != NULL) {
        data = cJSON_GetObjectItemCaseSensitive(root, "data");
        id = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(data, 0), "id");
        if (cJSON_IsString(id)) {
            name = strdup(id->valuestring);
        }
        cJSON_Delete(root);
    }
    curl_easy_cleanup(e);
    free(body.p);
    return name;
}

/* ---- output ---------------------------------------------------------------------- */

static void add_summary(cJSON *j, const char *name, series *s)
{
    summary m = summarize(s);
    char key[64];

#define PUT(prefix, v) \
    snprintf(key, sizeof(key), prefix "_%s_ms", name); \
    cJSON_AddNumberToObject(j, key, (v) * 1e3)
    PUT("mean", m.mean);
    PUT("std", m.std);
    PUT("median", m.p50);
    PUT("p90", m.p90);
    PUT("p99", m.p99);
#undef PUT
}

static void print_row(const char *name, series *s)
{
    summary m = summarize(s);

    printf("%-5s ms  mean %9.2f  p50 %9.2f  p90 %9.2f  p99 %9.2f\n", name,
           m.mean * 1e3, m.p50 * 1e3, m.p90 * 1e3, m.p99 * 1e3);
}

static void print_usage(FILE *f)
{
    fprintf(f,
"usage: llm-serve-bench --tokenizer PATH [options]\n"
"  --base-url URL             server (default http://127.0.0.1:8000)\n"
"  --endpoint completions|chat  /v1/completions (default) or /v1/chat/completions\n"
"  --model NAME               model field (default: first of GET /v1/models)\n"
"  --tokenizer PATH           tokenizer.json or a model directory holding it\n"
"  --input-len N              prompt tokens (default 128; chat: of the content)\n"
"  --output-len N             generated tokens (default 128)\n"
"  --range-ratio R            lengths uniform in [len*(1-R), len*(1+R)] (default 0)\n"
"  --num-prompts N            measured requests (default 64)\n"
"  --max-concurrency N        requests in flight at most (default: all)\n"
"  --request-rate R           Poisson arrivals, R requests/s (default: all at once)\n"
"  --warmup N                 unmeasured requests first (default 0)\n"
"  --temperature T            (default 0: greedy)\n"
"  --seed N                   lengths, prompts and arrivals (default 0)\n"
"  --api-key KEY              sent as Authorization: Bearer KEY\n"
"  --extra-body JSON          object merged into every request body\n"
"  --timeout S                per-request limit in seconds (default 0: none)\n"
"  --watch-pid PID            report this process's RSS before/peak/after\n"
"  --server-pid PID           report this process's CPU time over the run\n"
"  --label TEXT  --metadata KEY=VALUE (repeatable)   copied into the JSON\n"
"  --json FILE                also write the results as JSON\n"
"  --save-detailed            with --json: per request input_lens, output_lens,\n"
"                             ttfts, itls (seconds), errors, generated_texts\n");
}

static int parse_args(int argc, char **argv, bench_opts *o)
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
        else if (ARG("--tokenizer")) o->tokenizer_path = v;
        else if (ARG("--input-len")) o->input_len = atoi(v);
        else if (ARG("--output-len")) o->output_len = atoi(v);
        else if (ARG("--range-ratio")) o->range_ratio = atof(v);
        else if (ARG("--num-prompts")) o->num_prompts = atoi(v);
        else if (ARG("--max-concurrency")) o->max_concurrency = atoi(v);
        else if (ARG("--request-rate")) o->request_rate = strcmp(v, "inf") == 0 ? 0 : atof(v);
        else if (ARG("--warmup")) o->warmup = atoi(v);
        else if (ARG("--temperature")) o->temperature = atof(v);
        else if (ARG("--seed")) o->seed = strtoull(v, NULL, 10);
        else if (ARG("--api-key")) o->api_key = v;
        else if (ARG("--extra-body")) o->extra_body = v;
        else if (ARG("--timeout")) o->timeout_ms = (long) (atof(v) * 1000);
        else if (ARG("--watch-pid")) o->watch_pid = atoi(v);
        else if (ARG("--server-pid")) o->server_pid = atoi(v);
        else if (ARG("--label")) o->label = v;
        else if (ARG("--json")) o->json_path = v;
        else if (strcmp(a, "--save-detailed") == 0) o->save_detailed = 1;
        else if (ARG("--endpoint")) {
            if (strcmp(v, "chat") == 0) o->endpoint = EP_CHAT;
            else if (strcmp(v, "completions") == 0) o->endpoint = EP_COMPLETIONS;
            else { fprintf(stderr, "llm-serve-bench: --endpoint chat|completions\n"); return -1; }
        }
        else if (ARG("--metadata")) {
            const char *eq = strchr(v, '=');
            char key[128];

            if (eq == NULL || eq == v || (size_t) (eq - v) >= sizeof(key)) {
                fprintf(stderr, "llm-serve-bench: --metadata wants KEY=VALUE, got %s\n", v);
                return -1;
            }
            memcpy(key, v, (size_t) (eq - v));
            key[eq - v] = '\0';
            cJSON_AddStringToObject(o->metadata, key, eq + 1);
        }
        else {
            fprintf(stderr, "llm-serve-bench: unknown or incomplete option %s\n", a);
            print_usage(stderr);
            return -1;
        }
#undef ARG
    }
    if (o->tokenizer_path == NULL) {
        fprintf(stderr, "llm-serve-bench: --tokenizer is required (exact prompt lengths)\n");
        return -1;
    }
    if (o->input_len < 1 || o->output_len < 1 || o->num_prompts < 1
        || o->max_concurrency < 0 || o->warmup < 0 || o->request_rate < 0
        || o->range_ratio < 0 || o->range_ratio >= 1 || o->timeout_ms < 0)
    {
        fprintf(stderr, "llm-serve-bench: lengths and counts must be positive, "
                "--range-ratio in [0, 1)\n");
        return -1;
    }
    return 0;
}


static void utc_now(char *out, size_t len)
{
    time_t t = time(NULL);
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int main(int argc, char **argv)
{
    bench_opts o = {
        .base_url = "http://127.0.0.1:8000", .endpoint = EP_COMPLETIONS,
        .input_len = 128, .output_len = 128, .num_prompts = 64,
    };
    char err[512], tok_path[1024], started[32], *model_owned = NULL;
    tokenizer *tok;
    cJSON *extra = NULL, *j;
    bench_req *reqs;
    runner r;
    rss_watch rss = { 0 };
    phase_result warm = { 0 }, pr = { 0 };
    uint64_t rng;
    double t_prep, arrival = 0, cpu_client, cpu_server = -1;
    int n_total, i, max_conc, rc = 0;
    struct stat st;

    o.metadata = cJSON_CreateObject();
    if (o.metadata == NULL || parse_args(argc, argv, &o) < 0) {
        return 2;
    }
    if (o.server_pid > 0 && cpu_proc_s(o.server_pid) < 0) {
        /* before any request: a wrong pid must not cost a warm-up */
        fprintf(stderr, "llm-serve-bench: cannot read /proc/%d/stat\n", o.server_pid);
        return 1;
    }
    if (o.extra_body != NULL) {
        extra = cJSON_Parse(o.extra_body);
        if (!cJSON_IsObject(extra)) {
            fprintf(stderr, "llm-serve-bench: --extra-body is not a JSON object\n");
            return 2;
        }
    }
    snprintf(tok_path, sizeof(tok_path), "%s", o.tokenizer_path);
    if (stat(tok_path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(tok_path, sizeof(tok_path), "%s/tokenizer.json", o.tokenizer_path);
    }
    tok = tokenizer_load(tok_path, err, sizeof(err));
    if (tok == NULL) {
        fprintf(stderr, "llm-serve-bench: %s\n", err);
        return 1;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "llm-serve-bench: curl_global_init failed\n");
        return 1;
    }

    memset(&r, 0, sizeof(r));
    r.o = &o;
    r.headers = curl_slist_append(NULL, "Content-Type: application/json");
    r.headers = curl_slist_append(r.headers, "Accept: text/event-stream");
    /* no "Expect: 100-continue" round trip before larger bodies */
    r.headers = curl_slist_append(r.headers, "Expect:");
    if (o.api_key != NULL) {
        char h[512];

        snprintf(h, sizeof(h), "Authorization: Bearer %s", o.api_key);
        r.headers = curl_slist_append(r.headers, h);
    }
    if (r.headers == NULL) {
        fprintf(stderr, "llm-serve-bench: out of memory\n");
        return 1;
    }
    if (o.model == NULL) {
        o.model = model_owned = first_model(o.base_url, r.headers);
        if (o.model == NULL) {
            return 1;
        }
    }
    snprintf(r.url, sizeof(r.url), "%s%s", o.base_url,
             o.endpoint == EP_CHAT ? "/v1/chat/completions" : "/v1/completions");

    /* the requests: warm-up first, then the measured ones */
    n_total = o.warmup + o.num_prompts;
    reqs = calloc((size_t) n_total, sizeof(*reqs));
    if (reqs == NULL) {
        fprintf(stderr, "llm-serve-bench: out of memory\n");
        return 1;
    }
    rng = o.seed * 0x2545f4914f6cdd1dULL + 0x5eedULL;
    t_prep = now_s();
    for (i = 0; i < n_total; i++) {
        bench_req *q = &reqs[i];

        q->index = i;
        q->prompt_len = draw_len(o.input_len, o.range_ratio, &rng);
        q->output_len = draw_len(o.output_len, o.range_ratio, &rng);
        q->prompt = make_prompt(tok, q->prompt_len, &rng, err, sizeof(err));
        if (q->prompt == NULL) {
            fprintf(stderr, "llm-serve-bench: prompt %d: %s\n", i, err);
            return 1;
        }
        q->body = make_body(&o, q, extra);
        if (q->body == NULL) {
            fprintf(stderr, "llm-serve-bench: out of memory\n");
            return 1;
        }
        if (i >= o.warmup && o.request_rate > 0) {
            /* Poisson process: exponential gaps of mean 1/rate */
            if (i > o.warmup) {
                arrival += -log(1.0 - rng_uniform(&rng)) / o.request_rate;
            }
            q->arrival = arrival;
        }
    }
    t_prep = now_s() - t_prep;

    max_conc = o.max_concurrency > 0 ? o.max_concurrency : o.num_prompts;
    if (max_conc > o.num_prompts) {
        max_conc = o.num_prompts;
    }
    raise_nofile("llm-serve-bench", max_conc);
    r.multi = curl_multi_init();
    if (r.multi == NULL) {
        fprintf(stderr, "llm-serve-bench: curl_multi_init failed\n");
        return 1;
    }
    /* keep every connection for reuse; no per-host cap (default is none,
     * but the connection cache must hold all concurrent ones) */
    curl_multi_setopt(r.multi, CURLMOPT_MAXCONNECTS, (long) max_conc + 16);
    curl_multi_setopt(r.multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    curl_multi_setopt(r.multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, 0L);
    r.deadline = -1.0;
    r.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (r.epfd < 0) {
        fprintf(stderr, "llm-serve-bench: epoll_create1: %s\n", strerror(errno));
        return 1;
    }
    if (curl_multi_setopt(r.multi, CURLMOPT_SOCKETFUNCTION, on_socket) != CURLM_OK
        || curl_multi_setopt(r.multi, CURLMOPT_SOCKETDATA, &r) != CURLM_OK
        || curl_multi_setopt(r.multi, CURLMOPT_TIMERFUNCTION, on_timer) != CURLM_OK
        || curl_multi_setopt(r.multi, CURLMOPT_TIMERDATA, &r) != CURLM_OK)
    {
        fprintf(stderr, "llm-serve-bench: curl_multi_setopt failed\n");
        return 1;
    }

    fprintf(stderr, "llm-serve-bench: %s model %s, %d prompts (+%d warm-up) of %d "
            "input / %d output tokens (range %.2f), concurrency %d, rate %s; "
            "prompts made in %.2f s\n", r.url, o.model, o.num_prompts, o.warmup,
            o.input_len, o.output_len, o.range_ratio, max_conc,
            o.request_rate > 0 ? "Poisson" : "inf", t_prep);

    if (o.warmup > 0) {
        int wc = o.warmup < max_conc ? o.warmup : max_conc;

        if (run_phase(&r, reqs, o.warmup, wc, 0, tok, &warm) < 0) {
            return 1;
        }
        if (warm.failed > 0) {
            fprintf(stderr, "llm-serve-bench: %d of %d warm-up requests failed: %s\n",
                    warm.failed, o.warmup, warm.why.n ? warm.why.v[0].reason : "");
        }
    }
    if (o.watch_pid > 0) {
        rss.before_kb = read_rss_kb(o.watch_pid);
        if (rss.before_kb < 0) {
            fprintf(stderr, "llm-serve-bench: cannot read /proc/%d/status\n", o.watch_pid);
            return 1;
        }
        rss.peak_kb = rss.before_kb;
        r.rss = &rss;
    }
    r.peak_in_flight = 0;
    if (o.server_pid > 0) {
        cpu_server = cpu_proc_s(o.server_pid);
        if (cpu_server < 0) {
            fprintf(stderr, "llm-serve-bench: cannot read /proc/%d/stat\n", o.server_pid);
            return 1;
        }
    }
    cpu_client = cpu_self_s();
    utc_now(started, sizeof(started));
    if (run_phase(&r, reqs + o.warmup, o.num_prompts, max_conc, o.request_rate > 0,
                  tok, &pr) < 0)
    {
        return 1;
    }
    cpu_client = cpu_self_s() - cpu_client;
    if (o.server_pid > 0) {
        double c = cpu_proc_s(o.server_pid);
        cpu_server = c >= 0 ? c - cpu_server : -1;
    }
    if (r.rss != NULL) {
        sample_rss(&r, 0, 1);
        rss.after_kb = read_rss_kb(o.watch_pid);
    }

    printf("============ Serving Benchmark Result ============\n");
    printf("%-36s %s\n", "Endpoint:", r.url);
    printf("%-36s %s\n", "Model:", o.model);
    printf("%-36s %d\n", "Successful requests:", pr.completed);
    printf("%-36s %d\n", "Failed requests:", pr.failed);
    printf("%-36s %d\n", "Maximum request concurrency:", max_conc);
    printf("%-36s %.2f\n", "Benchmark duration (s):", pr.duration);
    printf("%-36s %lld\n", "Total input tokens:", pr.input_tokens);
    printf("%-36s %lld\n", "Total generated tokens:", pr.output_tokens);
    printf("%-36s %.3f\n", "Request throughput (req/s):", pr.completed / pr.duration);
    printf("%-36s %.2f\n", "Output token throughput (tok/s):", pr.output_tokens / pr.duration);
    printf("%-36s %.2f\n", "Total token throughput (tok/s):",
           (pr.input_tokens + pr.output_tokens) / pr.duration);
    if (pr.len_mismatch > 0) {
        printf("%-36s %d\n", "Output length != requested:", pr.len_mismatch);
    }
    printf("%-36s %.2f (%.1f us an output token)\n", "Client CPU time (s):", cpu_client,
           pr.output_tokens ? cpu_client * 1e6 / (double) pr.output_tokens : 0.0);
    if (o.server_pid > 0) {
        printf("%-36s %.2f (%.1f us an output token)\n", "Server CPU time (s):", cpu_server,
               pr.output_tokens ? cpu_server * 1e6 / (double) pr.output_tokens : 0.0);
    }
    print_row("TTFT", &pr.ttft);
    print_row("TPOT", &pr.tpot);
    print_row("ITL", &pr.itl);
    print_row("E2E", &pr.e2e);
    if (r.rss != NULL) {
        printf("RSS of pid %d: before %ld kB, peak %ld kB (%d in flight then), after %ld kB; "
               "%.1f kB per connection (%d at most)\n",
               o.watch_pid, rss.before_kb, rss.peak_kb, rss.in_flight_at_peak, rss.after_kb,
               (double) (rss.peak_kb - rss.before_kb) / r.peak_in_flight, r.peak_in_flight);
    }
    for (i = 0; i < pr.why.n; i++) {
        printf("failure x%d: %s\n", pr.why.v[i].count, pr.why.v[i].example);
    }

    if (o.json_path != NULL) {
        FILE *f;
        char *s;
        cJSON *fa;

        j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "tool", "llm-serve-bench");
        if (o.label) {
            cJSON_AddStringToObject(j, "label", o.label);
        }
        cJSON_AddStringToObject(j, "date", started);
        cJSON_AddStringToObject(j, "base_url", o.base_url);
        cJSON_AddStringToObject(j, "endpoint", o.endpoint == EP_CHAT ? "chat" : "completions");
        cJSON_AddStringToObject(j, "model", o.model);
        cJSON_AddStringToObject(j, "tokenizer", tok_path);
        cJSON_AddNumberToObject(j, "input_len", o.input_len);
        cJSON_AddNumberToObject(j, "output_len", o.output_len);
        cJSON_AddNumberToObject(j, "range_ratio", o.range_ratio);
        cJSON_AddNumberToObject(j, "num_prompts", o.num_prompts);
        cJSON_AddNumberToObject(j, "warmup", o.warmup);
        cJSON_AddNumberToObject(j, "max_concurrency", max_conc);
        cJSON_AddNumberToObject(j, "peak_in_flight", r.peak_in_flight);
        if (o.request_rate > 0) {
            cJSON_AddNumberToObject(j, "request_rate", o.request_rate);
        } else {
            cJSON_AddStringToObject(j, "request_rate", "inf");
        }
        cJSON_AddNumberToObject(j, "temperature", o.temperature);
        cJSON_AddNumberToObject(j, "seed", (double) o.seed);
        cJSON_AddNumberToObject(j, "completed", pr.completed);
        cJSON_AddNumberToObject(j, "failed", pr.failed);
        fa = cJSON_AddArrayToObject(j, "failures");
        for (i = 0; i < pr.why.n; i++) {
            cJSON *x = cJSON_CreateObject();

            cJSON_AddStringToObject(x, "reason", pr.why.v[i].reason);
            cJSON_AddStringToObject(x, "example", pr.why.v[i].example);
            cJSON_AddNumberToObject(x, "count", pr.why.v[i].count);
            cJSON_AddItemToArray(fa, x);
        }
        cJSON_AddNumberToObject(j, "output_len_mismatch", pr.len_mismatch);
        cJSON_AddNumberToObject(j, "duration_s", pr.duration);
        cJSON_AddNumberToObject(j, "client_cpu_s", cpu_client);
        if (o.server_pid > 0) {
            cJSON_AddNumberToObject(j, "server_pid", o.server_pid);
            cJSON_AddNumberToObject(j, "server_cpu_s", cpu_server);
        }
        cJSON_AddNumberToObject(j, "total_input_tokens", (double) pr.input_tokens);
        cJSON_AddNumberToObject(j, "total_output_tokens", (double) pr.output_tokens);
        cJSON_AddNumberToObject(j, "server_prompt_tokens", (double) pr.server_prompt_tokens);
        cJSON_AddNumberToObject(j, "request_throughput", pr.completed / pr.duration);
        cJSON_AddNumberToObject(j, "output_throughput", pr.output_tokens / pr.duration);
        cJSON_AddNumberToObject(j, "total_token_throughput",
                                (pr.input_tokens + pr.output_tokens) / pr.duration);
        add_summary(j, "ttft", &pr.ttft);
        add_summary(j, "tpot", &pr.tpot);
        add_summary(j, "itl", &pr.itl);
        add_summary(j, "e2e", &pr.e2e);
        if (r.rss != NULL) {
            cJSON *x = cJSON_AddObjectToObject(j, "rss");

            cJSON_AddNumberToObject(x, "pid", o.watch_pid);
            cJSON_AddNumberToObject(x, "before_kb", (double) rss.before_kb);
            cJSON_AddNumberToObject(x, "peak_kb", (double) rss.peak_kb);
            cJSON_AddNumberToObject(x, "in_flight_at_peak", rss.in_flight_at_peak);
            cJSON_AddNumberToObject(x, "after_kb", (double) rss.after_kb);
            /* growth over the idle (warmed-up) RSS, spread over the most
             * connections that were open at once */
            cJSON_AddNumberToObject(x, "per_connection_kb",
                                    (double) (rss.peak_kb - rss.before_kb)
                                    / r.peak_in_flight);
        }
        if (o.save_detailed) {
            add_detailed(j, reqs + o.warmup, o.num_prompts);
        }
        cJSON_AddItemToObject(j, "metadata", o.metadata);
        o.metadata = NULL;
        s = cJSON_Print(j);
        f = fopen(o.json_path, "w");
        if (s == NULL || f == NULL || fputs(s, f) < 0 || fputc('\n', f) < 0
            || fclose(f) != 0)
        {
            fprintf(stderr, "llm-serve-bench: cannot write %s\n", o.json_path);
            rc = 1;
        }
        free(s);
        cJSON_Delete(j);
    }

    for (i = 0; i < n_total; i++) {
        req_free(&reqs[i]);
    }
    free(reqs);
    phase_result_free(&warm);
    phase_result_free(&pr);
    curl_multi_cleanup(r.multi);
    close(r.epfd);
    curl_slist_free_all(r.headers);
    curl_global_cleanup();
    cJSON_Delete(extra);
    cJSON_Delete(o.metadata);
    free(model_owned);
    tokenizer_free(tok);
    return rc != 0 ? rc : (pr.failed > 0 ? 1 : 0);
}
