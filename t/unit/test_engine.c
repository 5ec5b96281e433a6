/*
 * The engine end to end on t/fixtures/tiny-qwen3 (CPU backend, greedy):
 * batch invariance, chunked prefill, preemption, prefix caching, cancel,
 * stop strings, streamed text, length and queue limits, async load.
 */
#include "unit.h"
#include "engine_internal.h"

#include <stdatomic.h>
#include <unistd.h>

#define MODEL "t/fixtures/tiny-qwen3"
#define MAXTOK 512
/* Guard against a hang only; no test depends on how fast anything runs. */
#define HANG_GUARD_S 600.0

typedef struct {
    llm_request      *r;
    int32_t           toks[MAXTOK];
    int               n;
    char             *text;
    size_t            text_len;
    int               started, finished, prompt_tokens, n_top;
    llm_finish_reason reason;
    llm_usage         usage;
    llm_status        status;
    char              msg[LLM_ERR_MAX];
    char              stop_reason[64];
} result;

static uint64_t rng_state = 12345;

static int32_t rand_token(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (int32_t) ((rng_state >> 33) % 151000);
}

static void opts_default(llm_engine_options *o)
{
    llm_engine_options_init(o);
    o->model_dir = MODEL;
    o->threads = 1;
    o->max_model_len = 2048;
}

static llm_engine *open_engine(const llm_engine_options *o)
{
    char err[LLM_ERR_MAX];
    llm_engine *e = llm_engine_create(o, err, sizeof(err));

    if (e == NULL) {
        fprintf(stderr, "  engine: %s\n", err);
    }
    return e;
}

static void params_tokens(llm_request_params *p, const int32_t *ids, int n,
                          int max_tokens)
{
    llm_request_params_init(p);
    p->kind = LLM_PROMPT_TOKENS;
    p->tokens = ids;
    p->n_tokens = n;
    p->max_tokens = max_tokens;
    p->ignore_eos = 1;
    p->sampling.temperature = 0;
}

static void drain(result *res)
{
    llm_event ev;
    int i;

    while (!res->finished && llm_request_next_event(res->r, &ev)) {
        switch (ev.type) {
        case LLM_EV_STARTED:
            res->started = 1;
            res->prompt_tokens = ev.usage.prompt_tokens;
            break;
        case LLM_EV_TOKEN:
            for (i = 0; i < ev.n_tokens && res->n < MAXTOK; i++) {
                res->toks[res->n++] = ev.tokens[i].token;
                if (ev.tokens[i].n_top > res->n_top) {
                    res->n_top = ev.tokens[i].n_top;
                }
            }
            res->text = realloc(res->text, res->text_len + ev.text_len + 1);
            memcpy(res->text + res->text_len, ev.text, ev.text_len);
            res->text_len += ev.text_len;
            res->text[res->text_len] = '\0';
            break;
        case LLM_EV_FINISH:
            res->finished = 1;
            res->reason = ev.finish_reason;
            res->usage = ev.usage;
            if (ev.stop_reason) {
                snprintf(res->stop_reason, sizeof(res->stop_reason), "%s",
                         ev.stop_reason);
            }
            break;
        case LLM_EV_ERROR:
            res->finished = 1;
            res->reason = LLM_FINISH_ERROR;
            res->status = ev.status;
            snprintf(res->msg, sizeof(res->msg), "%s",
                     ev.message ? ev.message : "");
            break;
        default:
            break;
        }
        llm_event_free(&ev);
    }
}

/* Drives the engine until every result has finished.  Returns 0, or -1
 * when the hang guard fired. */
static int run_until_done(llm_engine *e, result *res, int n)
{
    double t0 = unit_now();
    llm_request *ready[64];
    int i, left;

    for (;;) {
        int k;

        while ((k = llm_engine_ready(e, ready, 64)) > 0) {
            (void) ready;
        }
        left = 0;
        for (i = 0; i < n; i++) {
            if (res[i].r && !res[i].finished) {
                drain(&res[i]);
                left += !res[i].finished;
            }
        }
        if (left == 0) {
            return 0;
        }
        if (unit_now() - t0 > HANG_GUARD_S) {
            return -1;
        }
        llm_engine_wait(e, 50);
    }
}

static void release_all(result *res, int n)
{
    int i;

    for (i = 0; i < n; i++) {
        if (res[i].r) {
            llm_request_release(res[i].r);
        }
        free(res[i].text);
    }
    memset(res, 0, sizeof(*res) * (size_t) n);
}

static int submit(llm_engine *e, const llm_request_params *p, result *res)
{
    char err[LLM_ERR_MAX];
    llm_status st;

    memset(res, 0, sizeof(*res));
    res->r = llm_submit(e, p, &st, err, sizeof(err));
    if (res->r == NULL) {
        res->status = st;
        snprintf(res->msg, sizeof(res->msg), "%s", err);
        return -1;
    }
    return 0;
}

static int same_tokens(const result *a, const result *b)
{
    return a->n == b->n
        && memcmp(a->toks, b->toks, (size_t) a->n * sizeof(int32_t)) == 0;
}

static int64_t used_blocks(llm_engine *e)
{
    llm_stats st;

    llm_engine_stats(e, &st);
    return st.kv_blocks_used;
}

/* ---- batch invariance --------------------------------------------------- */

#define NB 64
static int32_t bprompt[NB][200];
static int     blen[NB];

static void test_batch_invariance(void)
{
    llm_engine_options o;
    llm_engine *e;
    llm_request_params p;
    static result alone[NB], batch[NB];
    int i, mismatches = 0;

    opts_default(&o);
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    for (i = 0; i < NB; i++) {
        int j;

        blen[i] = 1 + (i * 37) % 190;
        for (j = 0; j < blen[i]; j++) bprompt[i][j] = rand_token();
    }
    for (i = 0; i < NB; i++) {
        params_tokens(&p, bprompt[i], blen[i], 12);
        REQUIRE(submit(e, &p, &alone[i]) == 0, "submit: %s", alone[i].msg);
        REQUIRE(run_until_done(e, &alone[i], 1) == 0, "hang");
        CHECK(alone[i].reason == LLM_FINISH_LENGTH && alone[i].n == 12,
              "alone %d: reason %d, %d tokens", i, alone[i].reason, alone[i].n);
        CHECK(alone[i].usage.prompt_tokens == blen[i], "prompt tokens");
    }
    for (i = 0; i < NB; i++) {
        params_tokens(&p, bprompt[i], blen[i], 12);
        REQUIRE(submit(e, &p, &batch[i]) == 0, "submit");
    }
    REQUIRE(run_until_done(e, batch, NB) == 0, "hang");
    for (i = 0; i < NB; i++) {
        mismatches += !same_tokens(&alone[i], &batch[i]);
    }
    CHECK(mismatches == 0, "%d of %d requests differ in a batch", mismatches,
          NB);
    {
        llm_stats st;

        llm_engine_stats(e, &st);
        CHECK(st.requests_finished[LLM_FINISH_LENGTH] == 2 * NB,
              "finished %llu", (unsigned long long) st.requests_finished[2]);
        CHECK(st.generation_tokens == 2 * NB * 12, "generation tokens %llu",
              (unsigned long long) st.generation_tokens);
        CHECK(st.running == 0 && st.waiting == 0 && st.kv_blocks_used == 0,
              "idle at the end: running %d waiting %d used %lld", st.running,
              st.waiting, (long long) st.kv_blocks_used);
        CHECK(st.ttft.total == 2 * NB && st.e2e.total == 2 * NB
              && st.step_time.total == st.steps, "histograms");
    }
    release_all(alone, NB);
    release_all(batch, NB);
    llm_engine_destroy(e);
}

/* ---- chunked prefill ---------------------------------------------------- */

typedef struct {
    float *first;        /* logits before the first generated token */
    int    vocab;
} logits_capture;

static void capture_first(void *ctx, llm_request *r, int n_generated,
                          const float *logits, int vocab)
{
    logits_capture *c = ctx;

    (void) r;
    if (n_generated == 0 && c->first == NULL) {
        c->first = malloc((size_t) vocab * sizeof(float));
        memcpy(c->first, logits, (size_t) vocab * sizeof(float));
        c->vocab = vocab;
    }
}

static void run_chunked(int budget, const int32_t *prompt, int n,
                        logits_capture *cap, result *res)
{
    llm_engine_options o;
    llm_engine *e;
    llm_request_params p;

    opts_default(&o);
    o.max_num_batched_tokens = budget;
    o.enable_prefix_caching = 0;
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    engine_set_logits_hook(e, capture_first, cap);
    params_tokens(&p, prompt, n, 16);
    REQUIRE(submit(e, &p, res) == 0, "submit");
    CHECK(run_until_done(e, res, 1) == 0, "hang");
    llm_engine_destroy(e);
}

static void test_chunked_prefill(void)
{
    int32_t prompt[100];
    logits_capture a = { NULL, 0 }, b = { NULL, 0 };
    result ra, rb;
    double num = 0, den = 0;
    int i;

    for (i = 0; i < 100; i++) prompt[i] = rand_token();
    run_chunked(2048, prompt, 100, &a, &ra);
    run_chunked(7, prompt, 100, &b, &rb);
    REQUIRE(a.first && b.first, "logits captured");
    for (i = 0; i < a.vocab; i++) {
        double d = (double) a.first[i] - b.first[i];

        num += d * d;
        den += (double) a.first[i] * a.first[i];
    }
    CHECK(sqrt(num / den) <= 1e-5, "rel err %g of logits, chunks of 7 vs one",
          sqrt(num / den));
    CHECK(ra.n == 16 && same_tokens(&ra, &rb), "same tokens");
    free(a.first);
    free(b.first);
    release_all(&ra, 1);
    release_all(&rb, 1);
}

/* ---- preemption --------------------------------------------------------- */

static int64_t block_bytes_probe(void)
{
    llm_engine_options o;
    llm_engine *e;
    llm_model_info info;

    opts_default(&o);
    o.kv_cache_bytes = (int64_t) 1 << 24;
    e = open_engine(&o);
    if (e == NULL) {
        return -1;
    }
    llm_engine_model_info(e, &info);
    llm_engine_destroy(e);
    return info.kv_blocks_total > 0 ? ((int64_t) 1 << 24) / info.kv_blocks_total
                                    : -1;
}

static void test_preemption(void)
{
    enum { N = 16, PL = 40, OUT = 40 };
    llm_engine_options o;
    llm_engine *e;
    llm_request_params p;
    static int32_t prompts[N][PL];
    static result ref[N], tight[N];
    llm_model_info info;
    llm_stats st;
    int64_t bb = block_bytes_probe();
    int i, j, mismatches = 0;

    REQUIRE(bb > 0, "block size probe");
    for (i = 0; i < N; i++)
        for (j = 0; j < PL; j++) prompts[i][j] = rand_token();

    opts_default(&o);
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    for (i = 0; i < N; i++) {
        params_tokens(&p, prompts[i], PL, OUT);
        REQUIRE(submit(e, &p, &ref[i]) == 0, "submit");
    }
    REQUIRE(run_until_done(e, ref, N) == 0, "hang");
    llm_engine_destroy(e);

    /* 12 blocks of 16 = 192 tokens; each request needs 80 (5 blocks), all
     * together 80 blocks. */
    opts_default(&o);
    o.kv_cache_bytes = bb * 12;
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    llm_engine_model_info(e, &info);
    CHECK(info.kv_blocks_total == 12, "pool of %lld blocks",
          (long long) info.kv_blocks_total);
    for (i = 0; i < N; i++) {
        params_tokens(&p, prompts[i], PL, OUT);
        REQUIRE(submit(e, &p, &tight[i]) == 0, "submit");
    }
    REQUIRE(run_until_done(e, tight, N) == 0, "hang");
    for (i = 0; i < N; i++) {
        CHECK(tight[i].reason == LLM_FINISH_LENGTH, "request %d: reason %d %s",
              i, tight[i].reason, tight[i].msg);
        mismatches += !same_tokens(&ref[i], &tight[i]);
    }
    CHECK(mismatches == 0, "%d requests differ after preemption", mismatches);
    llm_engine_stats(e, &st);
    CHECK(st.preemptions > 0, "preemptions %llu",
          (unsigned long long) st.preemptions);
    CHECK(st.kv_blocks_used == 0, "used %lld", (long long) st.kv_blocks_used);

    /* One request larger than the whole pool is refused, clearly. */
    {
        static int32_t big[300];
        result r;

        for (i = 0; i < 300; i++) big[i] = rand_token();
        params_tokens(&p, big, 300, 10);
        REQUIRE(submit(e, &p, &r) == 0, "submit");
        REQUIRE(run_until_done(e, &r, 1) == 0, "hang");
        CHECK(r.reason == LLM_FINISH_ERROR && r.status == LLM_ERR_TOO_LONG
              && strstr(r.msg, "KV cache") != NULL, "refused: %s", r.msg);
        release_all(&r, 1);
    }
    release_all(ref, N);
    release_all(tight, N);
    llm_engine_destroy(e);
}

/* ---- prefix caching ----------------------------------------------------- */

static void run_prefix_pair(int caching, const int32_t *a, const int32_t *b,
                            int n, result *ra, result *rb)
{
    llm_engine_options o;
    llm_engine *e;
    llm_request_params p;
    llm_stats st;

    opts_default(&o);
    o.enable_prefix_caching = caching;
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    params_tokens(&p, a, n, 10);
    REQUIRE(submit(e, &p, ra) == 0, "submit");
    REQUIRE(run_until_done(e, ra, 1) == 0, "hang");
    params_tokens(&p, b, n, 10);
    REQUIRE(submit(e, &p, rb) == 0, "submit");
    REQUIRE(run_until_done(e, rb, 1) == 0, "hang");
    llm_engine_stats(e, &st);
    if (caching) {
        CHECK(st.prefix_cache_queries == (uint64_t) 2 * n
              && st.prefix_cache_hits == (uint64_t) rb->usage.cached_tokens,
              "queries %llu hits %llu", (unsigned long long) st.prefix_cache_queries,
              (unsigned long long) st.prefix_cache_hits);
    } else {
        CHECK(st.prefix_cache_hits == 0, "no hits without caching");
    }
    llm_engine_destroy(e);
}

static void test_prefix_caching(void)
{
    int32_t a[230], b[230];
    result ca, cb, na, nb;
    int i;

    for (i = 0; i < 200; i++) a[i] = b[i] = rand_token();
    for (i = 200; i < 230; i++) {
        a[i] = rand_token();
        b[i] = rand_token();
    }
    run_prefix_pair(1, a, b, 230, &ca, &cb);
    run_prefix_pair(0, a, b, 230, &na, &nb);
    CHECK(ca.usage.cached_tokens == 0, "first request: no hit");
    CHECK(cb.usage.cached_tokens >= 192, "second request cached %d",
          cb.usage.cached_tokens);
    CHECK(nb.usage.cached_tokens == 0, "caching off: %d",
          nb.usage.cached_tokens);
    CHECK(same_tokens(&ca, &na) && same_tokens(&cb, &nb),
          "same tokens with and without the prefix cache");
    release_all(&ca, 1);
    release_all(&cb, 1);
    release_all(&na, 1);
    release_all(&nb, 1);
}

/* ---- cancel ------------------------------------------------------------- */

static void test_cancel(void)
{
    enum { N = 32, PL = 24, OUT = 60 };
    llm_engine_options o;
    llm_engine *e;
    llm_request_params p;
    static int32_t prompts[N][PL];
    static result res[N], ref[N];
    llm_request *ready[64];
    llm_stats st;
    double t0 = unit_now();
    int i, j, all_going = 0, mismatches = 0;

    for (i = 0; i < N; i++)
        for (j = 0; j < PL; j++) prompts[i][j] = rand_token();
    opts_default(&o);
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    for (i = 0; i < N; i++) {
        params_tokens(&p, prompts[i], PL, OUT);
        REQUIRE(submit(e, &p, &res[i]) == 0, "submit");
    }
    /* wait until every request has produced a token */
    while (!all_going && unit_now() - t0 < HANG_GUARD_S) {
        llm_engine_wait(e, 20);
        while (llm_engine_ready(e, ready, 64) == 64) {
        }
        all_going = 1;
        for (i = 0; i < N; i++) {
            drain(&res[i]);
            all_going &= res[i].n > 0;
        }
    }
    REQUIRE(all_going, "requests did not start");
    for (i = 0; i < N; i += 2) {
        llm_request_cancel(res[i].r);
        llm_request_cancel(res[i].r);   /* twice is harmless */
    }
    /* Once every cancelled request has its abort event, its sequence has
     * left the engine (gauges are updated before the event). */
    {
        int aborted = 0;

        while (aborted < N / 2 && unit_now() - t0 < HANG_GUARD_S) {
            llm_engine_wait(e, 20);
            while (llm_engine_ready(e, ready, 64) == 64) {
            }
            aborted = 0;
            for (i = 0; i < N; i += 2) {
                drain(&res[i]);
                aborted += res[i].finished;
            }
        }
        llm_engine_stats(e, &st);
        CHECK(aborted == N / 2 && st.running + st.waiting <= N / 2,
              "after the aborts: %d aborted, %d running, %d waiting", aborted,
              st.running, st.waiting);
    }
    REQUIRE(run_until_done(e, res, N) == 0, "hang");
    for (i = 0; i < N; i++) {
        if (i % 2 == 0) {
            CHECK(res[i].reason == LLM_FINISH_ABORT && res[i].n < OUT,
                  "cancelled %d: reason %d after %d tokens", i, res[i].reason,
                  res[i].n);
        } else {
            CHECK(res[i].reason == LLM_FINISH_LENGTH && res[i].n == OUT,
                  "survivor %d: reason %d, %d tokens", i, res[i].reason,
                  res[i].n);
        }
    }
    llm_engine_stats(e, &st);
    CHECK(st.kv_blocks_used == 0 && st.running == 0,
          "used blocks %lld, running %d at the end",
          (long long) st.kv_blocks_used, st.running);
    CHECK(st.requests_finished[LLM_FINISH_ABORT] == N / 2, "aborted %llu",
          (unsigned long long) st.requests_finished[LLM_FINISH_ABORT]);

    /* survivors produced what they produce without the others */
    for (i = 1; i < N; i += 2) {
        params_tokens(&p, prompts[i], PL, OUT);
        REQUIRE(submit(e, &p, &ref[i]) == 0, "submit");
    }
    REQUIRE(run_until_done(e, ref, N) == 0, "hang");
    for (i = 1; i < N; i += 2) {
        mismatches += !same_tokens(&res[i], &ref[i]);
    }
    CHECK(mismatches == 0, "%d survivors differ", mismatches);
    release_all(res, N);
    release_all(ref, N);
    CHECK(used_blocks(e) == 0, "no blocks used");
    llm_engine_destroy(e);
}

/* Release without reading: the engine frees the request itself. */
static void test_release_early(void)
{
    llm_engine_options o;
    llm_engine *e;
    llm_request_params p;
    int32_t prompt[30];
    result res[8];
    llm_stats st;
    int i;

    for (i = 0; i < 30; i++) prompt[i] = rand_token();
    opts_default(&o);
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    for (i = 0; i < 8; i++) {
        params_tokens(&p, prompt, 30, 200);
        REQUIRE(submit(e, &p, &res[i]) == 0, "submit");
        llm_request_release(res[i].r);       /* client went away at once */
        res[i].r = NULL;
    }
    /* one more keeps running to completion */
    params_tokens(&p, prompt, 30, 20);
    REQUIRE(submit(e, &p, &res[0]) == 0, "submit");
    REQUIRE(run_until_done(e, res, 1) == 0, "hang");
    for (i = 0; i < 200; i++) {
        llm_engine_stats(e, &st);
        if (st.running == 0 && st.waiting == 0) break;
        llm_engine_wait(e, 10);
    }
    CHECK(st.requests_finished[LLM_FINISH_ABORT] == 8, "aborted %llu",
          (unsigned long long) st.requests_finished[LLM_FINISH_ABORT]);
    CHECK(st.kv_blocks_used == 0, "used %lld", (long long) st.kv_blocks_used);
    release_all(res, 1);
    llm_engine_destroy(e);
}

/* ---- text, stop strings ------------------------------------------------- */

static void text_params(llm_request_params *p, const char *prompt, int max)
{
    llm_request_params_init(p);
    p->kind = LLM_PROMPT_TEXT;
    p->text = prompt;
    p->max_tokens = max;
    p->ignore_eos = 1;
    p->sampling.temperature = 1.0f;
    p->sampling.top_p = 1.0f;
    p->sampling.top_k = 0;
    p->sampling.min_p = 0;
    p->sampling.has_seed = 1;
    p->sampling.seed = 42;
}

static void test_text_and_stop_strings(void)
{
    llm_engine_options o;
    llm_engine *e;
    llm_request_params p;
    result full, st1, st2;
    char err[LLM_ERR_MAX], stop[16];
    char *oneshot;
    size_t len;
    const char *stops[1];
    int k, found = 0;
    size_t cut = 0;

    /* The untied model: the tied one keeps repeating its last token. */
    opts_default(&o);
    o.model_dir = "t/fixtures/tiny-qwen3-untied";
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    text_params(&p, "Hello, my name is", 48);
    REQUIRE(submit(e, &p, &full) == 0, "submit");
    REQUIRE(run_until_done(e, &full, 1) == 0, "hang");
    REQUIRE(full.n == 48, "%d tokens", full.n);

    /* deltas concatenate to the one-shot decode of the same ids */
    oneshot = llm_detokenize(e, full.toks, full.n, 1, &len, err, sizeof(err));
    REQUIRE(oneshot != NULL, "detokenize: %s", err);
    CHECK(len == full.text_len && memcmp(oneshot, full.text, len) == 0,
          "streamed text (%zu bytes) != one-shot (%zu bytes)", full.text_len,
          len);

    /* a stop string spanning a token boundary: 2 bytes either side of the
     * end of token k's text, all ASCII */
    for (k = 4; k < full.n - 4 && !found; k++) {
        char *pre = llm_detokenize(e, full.toks, k, 1, &len, err, sizeof(err));
        size_t j;
        int ok = pre != NULL && len >= 2 && len + 2 <= full.text_len
                 && memcmp(pre, oneshot, len) == 0;

        for (j = len - 2; ok && j < len + 2; j++) {
            unsigned char c = (unsigned char) oneshot[j];
            ok = c > 32 && c < 127;
        }
        /* the token before must have a text of its own: boundary inside */
        if (ok) {
            memcpy(stop, oneshot + len - 2, 4);
            stop[4] = '\0';
            cut = (size_t) (strstr(oneshot, stop) - oneshot);
            found = 1;
        }
        free(pre);
    }
    REQUIRE(found, "no ASCII token boundary in: %s", oneshot);

    stops[0] = stop;
    text_params(&p, "Hello, my name is", 48);
    p.stop = stops;
    p.n_stop = 1;
    REQUIRE(submit(e, &p, &st1) == 0, "submit");
    REQUIRE(run_until_done(e, &st1, 1) == 0, "hang");
    CHECK(st1.reason == LLM_FINISH_STOP && strcmp(st1.stop_reason, stop) == 0,
          "stopped by \"%s\": reason %d", stop, st1.reason);
    CHECK(st1.text_len == cut && memcmp(st1.text, oneshot, cut) == 0,
          "text before the stop string only: got %zu bytes, want %zu",
          st1.text_len, cut);
    CHECK(strstr(st1.text ? st1.text : "", stop) == NULL, "stop not emitted");

    p.include_stop_str_in_output = 1;
    REQUIRE(submit(e, &p, &st2) == 0, "submit");
    REQUIRE(run_until_done(e, &st2, 1) == 0, "hang");
    CHECK(st2.text_len == cut + 4 && memcmp(st2.text, oneshot, cut + 4) == 0,
          "include_stop_str_in_output: %zu bytes", st2.text_len);
    free(oneshot);
    release_all(&full, 1);
    release_all(&st1, 1);
    release_all(&st2, 1);
    llm_engine_destroy(e);
}

static void test_logprobs_and_stop_token(void)
{
    llm_engine_options o;
    llm_engine *e;
    llm_request_params p;
    int32_t prompt[20];
    result a, b;
    int i;

    for (i = 0; i < 20; i++) prompt[i] = rand_token();
    opts_default(&o);
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    params_tokens(&p, prompt, 20, 8);
    p.sampling.logprobs = 1;
    p.sampling.top_logprobs = 3;
    REQUIRE(submit(e, &p, &a) == 0, "submit");
    REQUIRE(run_until_done(e, &a, 1) == 0, "hang");
    CHECK(a.n == 8 && a.n_top == 3, "top logprobs: %d", a.n_top);

    /* stop on the 3rd token's id: finish stop after 3 tokens, or earlier
     * if it appeared before */
    params_tokens(&p, prompt, 20, 8);
    p.stop_token_ids = &a.toks[2];
    p.n_stop_token_ids = 1;
    REQUIRE(submit(e, &p, &b) == 0, "submit");
    REQUIRE(run_until_done(e, &b, 1) == 0, "hang");
    CHECK(b.reason == LLM_FINISH_STOP && b.n <= 3
          && b.toks[b.n - 1] == a.toks[2], "stop token: reason %d n %d",
          b.reason, b.n);
    /* below min_tokens the stop token is masked: it cannot end the
     * request early, and the greedy first token changes */
    release_all(&b, 1);
    params_tokens(&p, prompt, 20, 8);
    p.stop_token_ids = &a.toks[0];
    p.n_stop_token_ids = 1;
    p.min_tokens = 3;
    REQUIRE(submit(e, &p, &b) == 0, "submit");
    REQUIRE(run_until_done(e, &b, 1) == 0, "hang");
    CHECK(b.n >= 3 && b.toks[0] != a.toks[0] && b.toks[1] != a.toks[0]
          && b.toks[2] != a.toks[0], "min_tokens: %d tokens, first %d (masked %d)",
          b.n, b.toks[0], a.toks[0]);
    release_all(&a, 1);
    release_all(&b, 1);
    llm_engine_destroy(e);
}

/* ---- limits ------------------------------------------------------------- */

static void test_too_long(void)
{
    llm_engine_options o;
    llm_engine *e;
    llm_request_params p;
    int32_t prompt[60];
    result a, b;
    int i;

    for (i = 0; i < 60; i++) prompt[i] = rand_token();
    opts_default(&o);
    o.max_model_len = 64;
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    params_tokens(&p, prompt, 60, 10);
    REQUIRE(submit(e, &p, &a) == 0, "submit");
    REQUIRE(run_until_done(e, &a, 1) == 0, "hang");
    CHECK(a.reason == LLM_FINISH_ERROR && a.status == LLM_ERR_TOO_LONG,
          "too long: reason %d status %d", a.reason, a.status);
    CHECK(strstr(a.msg, "64 tokens") && strstr(a.msg, "70 tokens")
          && strstr(a.msg, "60 in the") && strstr(a.msg, "10 in the completion"),
          "message states both numbers: %s", a.msg);

    /* without max_tokens: runs until max_model_len */
    params_tokens(&p, prompt, 60, 0);
    REQUIRE(submit(e, &p, &b) == 0, "submit");
    REQUIRE(run_until_done(e, &b, 1) == 0, "hang");
    CHECK(b.reason == LLM_FINISH_LENGTH && b.n == 4, "length at 64: %d %d",
          b.reason, b.n);
    release_all(&a, 1);
    release_all(&b, 1);
    llm_engine_destroy(e);
}

static void test_queue_full(void)
{
    llm_engine_options o;
    llm_engine *e;
    llm_request_params p;
    int32_t prompt[10];
    result run, q1, q2, q3;
    double t0 = unit_now();
    int i;

    for (i = 0; i < 10; i++) prompt[i] = rand_token();
    opts_default(&o);
    o.max_num_seqs = 1;
    o.max_queue = 2;
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    params_tokens(&p, prompt, 10, 1000);
    REQUIRE(submit(e, &p, &run) == 0, "submit");
    while (run.n == 0 && unit_now() - t0 < HANG_GUARD_S) {
        llm_engine_wait(e, 10);
        drain(&run);
    }
    REQUIRE(run.n > 0, "first request runs");
    REQUIRE(submit(e, &p, &q1) == 0, "queued 1: %s", q1.msg);
    REQUIRE(submit(e, &p, &q2) == 0, "queued 2: %s", q2.msg);
    CHECK(submit(e, &p, &q3) != 0 && q3.status == LLM_ERR_QUEUE_FULL,
          "third waiting request refused: status %d", q3.status);
    llm_request_cancel(run.r);
    llm_request_cancel(q1.r);
    llm_request_cancel(q2.r);
    REQUIRE(run_until_done(e, &run, 1) == 0, "hang");
    REQUIRE(run_until_done(e, &q1, 1) == 0, "hang");
    REQUIRE(run_until_done(e, &q2, 1) == 0, "hang");
    CHECK(run.reason == LLM_FINISH_ABORT && q1.reason == LLM_FINISH_ABORT
          && q2.reason == LLM_FINISH_ABORT, "aborted");
    release_all(&run, 1);
    release_all(&q1, 1);
    release_all(&q2, 1);
    llm_engine_destroy(e);
}

/* ---- async load ----------------------------------------------------------- */

static atomic_int notified;

static void on_notify(void *ctx)
{
    (void) ctx;
    atomic_fetch_add(&notified, 1);
}

static void test_async_load(void)
{
    llm_engine_options o;
    llm_engine *e;
    llm_request_params p;
    char err[LLM_ERR_MAX];
    llm_status st;
    int32_t prompt[3] = { 1, 2, 3 };
    double t0 = unit_now();
    llm_engine_state s;

    opts_default(&o);
    o.load_async = 1;
    o.notify = on_notify;
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    params_tokens(&p, prompt, 3, 2);
    while ((s = llm_engine_get_state(e, err, sizeof(err))) == LLM_STATE_LOADING) {
        CHECK(llm_submit(e, &p, &st, err, sizeof(err)) == NULL
              && st == LLM_ERR_NOT_READY, "refused while loading");
        usleep(1000);
        if (unit_now() - t0 > HANG_GUARD_S) break;
    }
    CHECK(s == LLM_STATE_READY, "ready: %d", s);
    /* the engine thread calls notify right after it publishes the state:
     * this thread can see READY first (seen once under TSan in CI) */
    t0 = unit_now();
    while (atomic_load(&notified) < 1 && unit_now() - t0 < HANG_GUARD_S) {
        usleep(1000);
    }
    CHECK(atomic_load(&notified) >= 1, "notified of the state change");
    llm_engine_destroy(e);

    o.model_dir = "t/fixtures/no-such-model";
    e = open_engine(&o);
    REQUIRE(e != NULL, "async create returns at once");
    t0 = unit_now();
    while ((s = llm_engine_get_state(e, err, sizeof(err))) == LLM_STATE_LOADING
           && unit_now() - t0 < HANG_GUARD_S)
    {
        usleep(1000);
    }
    CHECK(s == LLM_STATE_FAILED && strstr(err, "no-such-model") != NULL,
          "failed load names the directory: %s", err);
    CHECK(llm_submit(e, &p, &st, err, sizeof(err)) == NULL
          && st == LLM_ERR_NOT_READY, "refused after a failed load");
    llm_engine_destroy(e);
}

/* Destroy with requests in flight: they end with abort and stay readable. */
static void test_destroy_in_flight(void)
{
    llm_engine_options o;
    llm_engine *e;
    llm_request_params p;
    int32_t prompt[10];
    result res[4];
    int i;

    for (i = 0; i < 10; i++) prompt[i] = rand_token();
    opts_default(&o);
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    for (i = 0; i < 4; i++) {
        params_tokens(&p, prompt, 10, 1000);
        REQUIRE(submit(e, &p, &res[i]) == 0, "submit");
    }
    llm_engine_destroy(e);
    for (i = 0; i < 4; i++) {
        drain(&res[i]);
        CHECK(res[i].finished && res[i].reason == LLM_FINISH_ABORT,
              "request %d ends with abort: %d", i, res[i].reason);
    }
    release_all(res, 4);
}

/* Chat messages go through the template; echo returns the prompt. */
static void test_chat_and_echo(void)
{
    const char *msgs = "[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                       "{\"role\":\"user\",\"content\":\"Hello!\"}]";
    llm_engine_options o;
    llm_engine *e;
    llm_request_params p;
    char err[LLM_ERR_MAX];
    char *text;
    int n_ids;
    result a, b;
    llm_event ev;
    int got_echo = 0;
    double t0 = unit_now();

    opts_default(&o);
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    text = llm_render_chat(e, msgs, NULL, NULL, 1, err, sizeof(err));
    REQUIRE(text != NULL, "render: %s", err);
    CHECK(strstr(text, "<|im_start|>assistant") != NULL, "template: %s", text);
    n_ids = llm_tokenize(e, text, strlen(text), 0, NULL, 0, err, sizeof(err));
    CHECK(n_ids > 5, "tokenize: %d %s", n_ids, err);

    llm_request_params_init(&p);
    p.kind = LLM_PROMPT_CHAT;
    p.messages_json = msgs;
    p.max_tokens = 4;
    p.ignore_eos = 1;
    p.sampling.temperature = 0;
    REQUIRE(submit(e, &p, &a) == 0, "submit");
    REQUIRE(run_until_done(e, &a, 1) == 0, "hang");
    CHECK(a.started && a.prompt_tokens == n_ids && a.usage.prompt_tokens == n_ids,
          "prompt tokens %d, want %d", a.prompt_tokens, n_ids);
    CHECK(a.reason == LLM_FINISH_LENGTH && a.n == 4, "generated");

    /* a template error arrives as an error event */
    p.messages_json = "{\"not\": \"an array\"}";
    REQUIRE(submit(e, &p, &b) == 0, "submit");
    REQUIRE(run_until_done(e, &b, 1) == 0, "hang");
    CHECK(b.reason == LLM_FINISH_ERROR && b.status == LLM_ERR_INVALID,
          "bad messages: %d %s", b.status, b.msg);
    release_all(&b, 1);

    /* echo: STARTED carries the prompt's tokens and text */
    llm_request_params_init(&p);
    p.kind = LLM_PROMPT_TEXT;
    p.text = "Echo me";
    p.echo = 1;
    p.max_tokens = 1;
    p.sampling.temperature = 0;
    REQUIRE(submit(e, &p, &b) == 0, "submit");
    while (!got_echo && unit_now() - t0 < HANG_GUARD_S) {
        llm_engine_wait(e, 20);
        if (llm_request_next_event(b.r, &ev)) {
            if (ev.type == LLM_EV_STARTED) {
                CHECK(ev.text_len == 7 && memcmp(ev.text, "Echo me", 7) == 0
                      && ev.n_tokens == ev.usage.prompt_tokens && ev.n_tokens > 0,
                      "echo: '%.*s' %d tokens", (int) ev.text_len,
                      ev.text ? ev.text : "", ev.n_tokens);
                got_echo = 1;
            }
            llm_event_free(&ev);
        }
    }
    CHECK(got_echo, "STARTED event");
    release_all(&a, 1);
    release_all(&b, 1);
    free(text);
    llm_engine_destroy(e);
}

/* ---- heartbeat, faults, failure, backpressure ----------------------------- */

static void heartbeat(llm_engine *e, llm_engine_heartbeat *hb)
{
    memset(hb, 0, sizeof(*hb));
    llm_engine_heartbeat_get(e, hb);
}

/* Polls until the engine reports not busy (or the hang guard). */
static int wait_not_busy(llm_engine *e, llm_engine_heartbeat *hb)
{
    double t0 = unit_now();

    for (;;) {
        heartbeat(e, hb);
        if (!hb->busy) {
            return 0;
        }
        if (unit_now() - t0 > HANG_GUARD_S) {
            return -1;
        }
        usleep(1000);
    }
}

static llm_engine *open_with_fault(const char *fault, llm_engine_options *o,
                                   char *err, size_t errlen)
{
    llm_engine *e;

    setenv("LLM_TEST_FAULT", fault, 1);
    e = llm_engine_create(o, err, errlen);
    unsetenv("LLM_TEST_FAULT");
    return e;
}

static void test_heartbeat(void)
{
    llm_engine_options o;
    llm_engine *e;
    llm_engine_heartbeat hb, hb1;
    llm_request_params p;
    llm_stats st;
    int32_t prompt[10];
    result res;
    double t_before;
    int i, ended;

    for (i = 0; i < 10; i++) prompt[i] = rand_token();
    opts_default(&o);
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    heartbeat(e, &hb);
    CHECK(hb.busy == 0 && hb.steps == 0 && hb.last_progress > 0,
          "fresh engine idle: busy %d steps %llu", hb.busy,
          (unsigned long long) hb.steps);

    t_before = unit_now();
    params_tokens(&p, prompt, 10, 40);
    REQUIRE(submit(e, &p, &res) == 0, "submit: %s", res.msg);
    heartbeat(e, &hb);
    pthread_mutex_lock(&res.r->ev_mu);
    ended = res.r->final_pushed;
    pthread_mutex_unlock(&res.r->ev_mu);
    /* From llm_submit's return to the last event the engine is busy (the
     * request may have run to its end before the first look). */
    CHECK((hb.busy == 1 || ended) && hb.last_progress >= t_before,
          "busy from the submit on, its clock starting then: busy %d, "
          "%.6f < %.6f", hb.busy, hb.last_progress, t_before);
    REQUIRE(run_until_done(e, &res, 1) == 0, "hang guard");
    CHECK(res.n == 40 && res.reason == LLM_FINISH_LENGTH, "40 tokens: %d",
          res.n);
    CHECK(wait_not_busy(e, &hb1) == 0, "not busy once idle");
    llm_engine_stats(e, &st);
    CHECK(hb1.steps >= 40 && hb1.steps == st.steps, "steps %llu (stats %llu)",
          (unsigned long long) hb1.steps, (unsigned long long) st.steps);
    CHECK(hb1.last_progress >= t_before && hb1.last_progress <= unit_now(),
          "last progress during the run");
    release_all(&res, 1);

    params_tokens(&p, prompt, 10, 4);
    REQUIRE(submit(e, &p, &res) == 0, "submit: %s", res.msg);
    REQUIRE(run_until_done(e, &res, 1) == 0, "hang guard");
    CHECK(wait_not_busy(e, &hb) == 0, "idle again");
    CHECK(hb.steps >= hb1.steps + 4 && hb.last_progress >= hb1.last_progress,
          "advances with work: %llu after %llu", (unsigned long long) hb.steps,
          (unsigned long long) hb1.steps);
    release_all(&res, 1);
    llm_engine_destroy(e);
}

static void test_fault_bad_values(void)
{
    static const char *bad[] = { "bogus", "hang_after_steps=", "hang_after_steps=-1",
        "hang_after_steps=3x", "fail_forward_after_steps= 2",
        "hang_after_steps=99999999999999999999999" };
    llm_engine_options o;
    llm_engine *e;
    char err[LLM_ERR_MAX];
    size_t i;

    opts_default(&o);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        e = open_with_fault(bad[i], &o, err, sizeof(err));
        CHECK(e == NULL && strstr(err, "LLM_TEST_FAULT") != NULL,
              "\"%s\" refused: %s", bad[i], err);
        if (e != NULL) {
            llm_engine_destroy(e);
        }
    }
    e = open_with_fault("", &o, err, sizeof(err));
    CHECK(e != NULL, "empty means no fault: %s", err);
    llm_engine_destroy(e);
}

/* hang_after_steps=3: three tokens, then the heartbeat stays busy and
 * stale and nothing progresses; destroy still returns and aborts. */
static void test_fault_hang(void)
{
    llm_engine_options o;
    llm_engine *e;
    llm_engine_heartbeat hb, hb2;
    llm_request_params p;
    char err[LLM_ERR_MAX];
    int32_t prompt[10];
    result res;
    double t0;
    int i;

    for (i = 0; i < 10; i++) prompt[i] = rand_token();
    opts_default(&o);
    e = open_with_fault("hang_after_steps=3", &o, err, sizeof(err));
    REQUIRE(e != NULL, "engine: %s", err);
    params_tokens(&p, prompt, 10, 50);
    REQUIRE(submit(e, &p, &res) == 0, "submit: %s", res.msg);
    t0 = unit_now();
    do {
        heartbeat(e, &hb);
        drain(&res);
        if (unit_now() - t0 > HANG_GUARD_S) break;
        usleep(1000);
    } while (hb.steps < 3 || res.n < 3);
    CHECK(hb.steps == 3 && hb.busy == 1, "stuck after 3 steps: %llu, busy %d",
          (unsigned long long) hb.steps, hb.busy);
    /* A while later: no step, no token, the same stamp. */
    usleep(100 * 1000);
    drain(&res);
    heartbeat(e, &hb2);
    CHECK(hb2.steps == 3 && hb2.busy == 1
          && hb2.last_progress == hb.last_progress,
          "heartbeat stale while busy: steps %llu, %.6f vs %.6f",
          (unsigned long long) hb2.steps, hb2.last_progress, hb.last_progress);
    CHECK(res.n == 3 && !res.finished, "3 tokens and no end: %d", res.n);
    CHECK(llm_engine_get_state(e, NULL, 0) == LLM_STATE_READY,
          "a hang is for the watchdog to find, not the engine");
    llm_engine_destroy(e);
    drain(&res);
    CHECK(res.finished && res.reason == LLM_FINISH_ABORT,
          "destroy returned and aborted the request: %d", res.reason);
    release_all(&res, 1);
}

/* Polls until the engine reports n paused requests (or the hang guard). */
static int wait_paused(llm_engine *e, int n);

/* fail_forward_after_steps=N: every pass after N steps fails; three in a
 * row put the engine in FAILED, erroring what it still holds (here a
 * request paused for its reader) and every later submit. */
static void test_fault_fail_forward(void)
{
    llm_engine_options o;
    llm_engine *e;
    llm_engine_heartbeat hb;
    llm_request_params p;
    llm_stats st;
    llm_status status;
    char err[LLM_ERR_MAX], fault[64];
    int32_t prompt[10];
    result x, res[3];
    int i;

    for (i = 0; i < 10; i++) prompt[i] = rand_token();
    opts_default(&o);
    snprintf(fault, sizeof(fault), "fail_forward_after_steps=%d",
             LLM_PAUSE_UNREAD_TOKENS);
    e = open_with_fault(fault, &o, err, sizeof(err));
    REQUIRE(e != NULL, "engine: %s", err);

    /* X, not read, takes exactly the good steps and pauses. */
    params_tokens(&p, prompt, 10, 200);
    REQUIRE(submit(e, &p, &x) == 0, "submit: %s", x.msg);
    REQUIRE(wait_paused(e, 1) == 0, "X paused");

    /* One request at a time, each in its own failing batch. */
    for (i = 0; i < 3; i++) {
        CHECK(llm_engine_get_state(e, NULL, 0) == LLM_STATE_READY,
              "%d failures are not the end", i);
        params_tokens(&p, prompt, 10, 50);
        REQUIRE(submit(e, &p, &res[i]) == 0, "submit %d: %s", i, res[i].msg);
        REQUIRE(run_until_done(e, &res[i], 1) == 0, "hang guard");
        CHECK(res[i].reason == LLM_FINISH_ERROR
              && res[i].status == LLM_ERR_INTERNAL && res[i].n == 0
              && strstr(res[i].msg, "injected fault") != NULL,
              "request %d: its batch failed: %d %s", i, res[i].status,
              res[i].msg);
    }
    err[0] = '\0';
    CHECK(llm_engine_get_state(e, err, sizeof(err)) == LLM_STATE_FAILED
          && strstr(err, "3 failed forward passes") != NULL
          && strstr(err, "injected fault") != NULL, "FAILED: %s", err);
    REQUIRE(run_until_done(e, &x, 1) == 0, "hang guard: X never ended");
    CHECK(x.n == LLM_PAUSE_UNREAD_TOKENS && x.reason == LLM_FINISH_ERROR
          && x.status == LLM_ERR_NOT_READY
          && strstr(x.msg, "3 failed forward passes") != NULL,
          "the paused request ends with the failure: %d tokens, %d %s", x.n,
          x.status, x.msg);
    CHECK(llm_submit(e, &p, &status, err, sizeof(err)) == NULL
          && status == LLM_ERR_NOT_READY
          && strstr(err, "failed forward passes") != NULL,
          "submit refused: %s", err);
    llm_engine_stats(e, &st);
    CHECK(st.forward_errors == 3 && st.running == 0 && st.waiting == 0
          && st.paused == 0 && st.kv_blocks_used == 0, "errors %llu, "
          "running %d, waiting %d, paused %d, blocks %lld",
          (unsigned long long) st.forward_errors, st.running, st.waiting,
          st.paused, (long long) st.kv_blocks_used);
    CHECK(wait_not_busy(e, &hb) == 0, "a failed engine is not busy");
    release_all(&x, 1);
    release_all(res, 3);
    llm_engine_destroy(e);
}

/* Polls until the engine reports n paused requests (or the hang guard). */
static int wait_paused(llm_engine *e, int n)
{
    double t0 = unit_now();
    llm_stats st;

    for (;;) {
        llm_engine_stats(e, &st);
        if (st.paused == n) {
            return 0;
        }
        if (unit_now() - t0 > HANG_GUARD_S) {
            return -1;
        }
        usleep(1000);
    }
}

/* A request whose events are not read stops at LLM_PAUSE_UNREAD_TOKENS
 * while another runs to its end; read, it resumes and ends with the same
 * tokens as when read all along.  A cancel reaches a paused request. */
static void test_slow_reader(void)
{
    llm_engine_options o;
    llm_engine *e;
    llm_engine_heartbeat hb;
    llm_request_params p;
    llm_request *ready[64];
    llm_stats st;
    int32_t pa[20], pb[20];
    static result ref[2], res[2], c;
    double t0;
    int i;

    for (i = 0; i < 20; i++) {
        pa[i] = rand_token();
        pb[i] = rand_token();
    }
    opts_default(&o);
    e = open_engine(&o);
    REQUIRE(e != NULL, "engine");
    params_tokens(&p, pa, 20, 200);
    REQUIRE(submit(e, &p, &ref[0]) == 0, "submit");
    params_tokens(&p, pb, 20, 150);
    REQUIRE(submit(e, &p, &ref[1]) == 0, "submit");
    REQUIRE(run_until_done(e, ref, 2) == 0, "hang guard");
    CHECK(ref[0].n == 200 && ref[1].n == 150, "references %d %d", ref[0].n,
          ref[1].n);

    params_tokens(&p, pa, 20, 200);
    REQUIRE(submit(e, &p, &res[0]) == 0, "submit");
    params_tokens(&p, pb, 20, 150);
    REQUIRE(submit(e, &p, &res[1]) == 0, "submit");
    /* Read only B. */
    t0 = unit_now();
    while (!res[1].finished && unit_now() - t0 < HANG_GUARD_S) {
        while (llm_engine_ready(e, ready, 64) > 0) {
        }
        drain(&res[1]);
        llm_engine_wait(e, 50);
    }
    CHECK(res[1].finished && same_tokens(&res[1], &ref[1]),
          "B ran to its end while A was not read: %d tokens", res[1].n);
    REQUIRE(wait_paused(e, 1) == 0, "A paused");
    CHECK(wait_not_busy(e, &hb) == 0, "waiting for a reader is not busy");
    CHECK(atomic_load(&res[0].r->unread_tokens) == LLM_PAUSE_UNREAD_TOKENS,
          "A stopped at the bound: %d unread",
          atomic_load(&res[0].r->unread_tokens));
    llm_engine_stats(e, &st);
    CHECK(st.running == 1 && st.kv_blocks_used > 0,
          "A keeps its place and blocks: running %d", st.running);

    /* Read A: it resumes and ends as if read all along. */
    drain(&res[0]);
    CHECK(res[0].n == LLM_PAUSE_UNREAD_TOKENS && !res[0].finished,
          "A's first %d tokens", res[0].n);
    REQUIRE(run_until_done(e, res, 1) == 0, "hang guard: A never resumed");
    CHECK(res[0].reason == LLM_FINISH_LENGTH && same_tokens(&res[0], &ref[0]),
          "A resumed to the same %d tokens (got %d)", ref[0].n, res[0].n);
    release_all(res, 2);

    /* A paused request is cancelled: the engine wakes and aborts it. */
    params_tokens(&p, pa, 20, 200);
    REQUIRE(submit(e, &p, &c) == 0, "submit");
    REQUIRE(wait_paused(e, 1) == 0, "C paused");
    llm_request_cancel(c.r);
    REQUIRE(run_until_done(e, &c, 1) == 0, "hang guard: cancel not seen");
    CHECK(c.reason == LLM_FINISH_ABORT && c.n == LLM_PAUSE_UNREAD_TOKENS,
          "C aborted after %d tokens: %d", c.n, c.reason);
    CHECK(wait_paused(e, 0) == 0, "nothing paused");
    CHECK(used_blocks(e) == 0, "blocks back");
    release_all(&c, 1);
    release_all(ref, 2);
    llm_engine_destroy(e);
}

int main(void)
{
    RUN(test_batch_invariance);
    RUN(test_chunked_prefill);
    RUN(test_preemption);
    RUN(test_prefix_caching);
    RUN(test_cancel);
    RUN(test_release_early);
    RUN(test_text_and_stop_strings);
    RUN(test_logprobs_and_stop_token);
    RUN(test_chat_and_echo);
    RUN(test_too_long);
    RUN(test_queue_full);
    RUN(test_async_load);
    RUN(test_destroy_in_flight);
    RUN(test_heartbeat);
    RUN(test_fault_bad_values);
    RUN(test_fault_hang);
    RUN(test_fault_fail_forward);
    RUN(test_slow_reader);
    return unit_done();
}
