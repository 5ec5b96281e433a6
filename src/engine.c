/*
 * The engine: llm.h's implementation.
 *
 * Threads
 *   engine thread  loads the model (async or not), then runs the step loop:
 *                  schedule -> backend forward -> sample each logits row ->
 *                  incremental detokenize -> stop checks -> publish events
 *                  -> notify once per step.
 *   prep thread    renders chat templates and tokenizes submitted requests
 *                  (a 1 MB prompt never stalls decoding), checks lengths,
 *                  publishes STARTED, then hands them to the engine thread.
 *   caller         llm_submit / llm_engine_ready / llm_request_next_event.
 *
 * Locks: e->mu guards the prep and incoming queues, the queue counter and
 * the stop flag; e->ready_mu guards the ready list; e->stats_mu the stats;
 * each request's ev_mu its event list.  The scheduler and KV cache are
 * touched by the engine thread only.
 */
#include "engine_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "chat_template.h"
#include "kv_cache.h"
#include "model.h"

/* CPU KV pool when the options give no size.  The CPU backend keeps KV in
 * f32: 512 MiB hold 2,336 tokens of Qwen3-0.6B (28 layers * 2 * 8 heads *
 * 128 * 4 bytes = 112 KiB a token) or 1,820 of Qwen3-4B (288 KiB a token),
 * and millions for the tiny test models.  kv_cache_bytes overrides it; a
 * request that cannot fit in the whole pool is refused with both numbers. */
#define ENGINE_CPU_KV_BYTES      ((int64_t) 512 << 20)
#define ENGINE_CUDA_KV_FRACTION  0.90
#define ENGINE_DEFAULT_MAX_LEN   32768

/* Consecutive failed forward passes after which the engine gives up
 * (LLM_STATE_FAILED): one failure may be a bad batch, three in a row mean
 * the device is gone.  A backend's LLM_BACKEND_FATAL gives up at once. */
#define ENGINE_MAX_FORWARD_FAILURES 3

typedef struct {
    llm_request *head, *tail;
    int          n;
} req_queue;

struct llm_engine {
    llm_engine_options opt;
    char              *model_dir, *tokenizer_dir, *device;
    int                cuda_device;          /* -1: cpu */

    pthread_mutex_t    mu;
    pthread_cond_t     engine_cond;          /* work for the engine thread */
    pthread_cond_t     prep_cond;            /* work for the prep thread */
    req_queue          prep_q, incoming;
    int                n_queued;             /* submitted, not yet running */
    int                stop;
    atomic_int         state;
    char               load_err[LLM_ERR_MAX];

    pthread_mutex_t    ready_mu;
    pthread_cond_t     ready_cond;
    llm_request      **ready;
    int                n_ready, ready_cap;

    pthread_mutex_t    stats_mu;
    llm_stats          stats;

    pthread_t          engine_thread, prep_thread;
    int                engine_started, prep_started;

    /* loaded state (engine thread; read-only for others once READY) */
    model             *m;
    llm_backend       *be;
    tokenizer         *tok;
    chat_template     *ct;
    char               ct_err[LLM_ERR_MAX];
    kv_cache          *kv;
    scheduler         *sched;
    sampler_scratch   *scratch;
    grammar_vocab     *gvocab;              /* token trie for constrained
                                               requests: the prep thread
                                               makes it at the first */
    float             *logits;
    size_t             logits_cap;           /* floats */
    /* forward_sample's per-row inputs and results (backends with it) */
    llm_sample_row    *srows;
    sampler_history   *shist;
    sampler_result    *sres;
    int                srows_cap;
    int                max_model_len;
    int                block_size;
    int                n_blocks;
    int                prefix_caching;
    int                vocab;
    uint64_t           n_submitted;          /* seeds unseeded requests */
    char               device_name[32];
    char              *out;                  /* one token's output text */
    size_t             out_len, out_cap;

    engine_logits_hook logits_hook;
    void              *logits_hook_ctx;

    /* Heartbeat (llm_engine_heartbeat_get).  The engine thread writes
     * hb_steps and hb_eng_*, the prep thread hb_prep_*; whoever hands a
     * thread work while it is idle (llm_submit, the prep thread, a kick)
     * sets its busy flag and stamps the time, under e->mu, as the thread
     * itself clears busy under e->mu before it sleeps. */
    _Atomic uint64_t   hb_steps;
    _Atomic int64_t    hb_eng_ns, hb_prep_ns;   /* CLOCK_MONOTONIC ns */
    atomic_int         hb_eng_busy, hb_prep_busy;
    int                kick;                 /* under mu: re-examine the
                                                sequences (resume, cancel) */

    /* LLM_TEST_FAULT; -1: none */
    int64_t            fault_hang_after, fault_fail_after;
    int64_t            fault_load_delay_ms;
    int                forward_failures;     /* consecutive; engine thread */
    int                failed_at_runtime;    /* under mu: load_err tells why
                                                a loaded engine gave up */
};

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static char *dup_str(const char *s)
{
    size_t n;
    char *d;

    if (s == NULL) {
        return NULL;
    }
    n = strlen(s) + 1;
    d = malloc(n);
    if (d) {
        memcpy(d, s, n);
    }
    return d;
}

/* ---- options ------------------------------------------------------------- */

void llm_engine_options_init(llm_engine_options *o)
{
    memset(o, 0, sizeof(*o));
    o->device = "cpu";
    o->enable_prefix_caching = -1;
    o->load_format = LLM_LOAD_AUTO;
}

void llm_request_params_init(llm_request_params *p)
{
    memset(p, 0, sizeof(*p));
    p->kind = LLM_PROMPT_TEXT;
    p->sampling.temperature = -1;
    p->sampling.top_p = -1;
    p->sampling.top_k = -1;
    p->sampling.min_p = -1;
    p->sampling.repetition_penalty = -1;
    p->add_generation_prompt = 1;
    p->skip_special_tokens = 1;
}

/* ---- stats --------------------------------------------------------------- */

static void hist_init(llm_histogram *h, const double *le, int n)
{
    memset(h, 0, sizeof(*h));
    h->n = n;
    memcpy(h->le, le, (size_t) n * sizeof(double));
}

static void hist_add(llm_histogram *h, double v)
{
    int i;

    for (i = 0; i < h->n; i++) {
        if (v <= h->le[i]) {
            h->count[i]++;
        }
    }
    h->total++;
    h->sum += v;
}

static void stats_init(llm_stats *s)
{
    /* vLLM's bucket bounds */
    static const double ttft[] = { 0.001, 0.005, 0.01, 0.02, 0.04, 0.06,
        0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0 };
    static const double itl[] = { 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
        0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0 };
    static const double e2e[] = { 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0,
        10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0 };
    static const double step[] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02,
        0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0 };

    memset(s, 0, sizeof(*s));
    hist_init(&s->ttft, ttft, 16);
    hist_init(&s->itl, itl, 16);
    hist_init(&s->e2e, e2e, 16);
    hist_init(&s->step_time, step, 16);
}

void llm_engine_stats(llm_engine *e, llm_stats *s)
{
    pthread_mutex_lock(&e->stats_mu);
    *s = e->stats;
    pthread_mutex_unlock(&e->stats_mu);
}

/* ---- queues and the ready list --------------------------------------------- */

static void q_push(req_queue *q, llm_request *r)
{
    r->qnext = NULL;
    if (q->tail) q->tail->qnext = r; else q->head = r;
    q->tail = r;
    q->n++;
}

static llm_request *q_pop(req_queue *q)
{
    llm_request *r = q->head;

    if (r != NULL) {
        q->head = r->qnext;
        if (q->head == NULL) {
            q->tail = NULL;
        }
        r->qnext = NULL;
        q->n--;
    }
    return r;
}

/* Marks r as having unseen events (at most once until llm_engine_ready
 * hands it out).  The ready list holds its own reference. */
static void mark_ready(llm_engine *e, llm_request *r)
{
    pthread_mutex_lock(&e->ready_mu);
    if (!r->in_ready) {
        if (e->n_ready == e->ready_cap) {
            int cap = e->ready_cap ? e->ready_cap * 2 : 64;
            llm_request **nr = realloc(e->ready, (size_t) cap * sizeof(*nr));

            if (nr == NULL) {
                /* The events stay queued; the caller finds them on its next
                 * pass over its requests. */
                pthread_mutex_unlock(&e->ready_mu);
                return;
            }
            e->ready = nr;
            e->ready_cap = cap;
        }
        r->in_ready = 1;
        atomic_fetch_add(&r->refs, 1);
        e->ready[e->n_ready++] = r;
        pthread_cond_broadcast(&e->ready_cond);
    }
    pthread_mutex_unlock(&e->ready_mu);
}

int llm_engine_ready(llm_engine *e, llm_request **out, int max)
{
    int n = 0, i, k = 0;

    pthread_mutex_lock(&e->ready_mu);
    for (i = 0; i < e->n_ready; i++) {
        llm_request *r = e->ready[i];

        if (n == max) {
            e->ready[k++] = r;
            continue;
        }
        r->in_ready = 0;
        if (!atomic_load(&r->caller_released)) {
            out[n++] = r;
        }
        /* The list's own reference goes: a handed-out request lives on by
         * the caller's reference; a released one may be freed right here
         * (freeing takes no engine lock). */
        engine_request_unref(r);
    }
    e->n_ready = k;
    pthread_mutex_unlock(&e->ready_mu);
    return n;
}

void llm_engine_wait(llm_engine *e, int timeout_ms)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long) (timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&e->ready_mu);
    while (e->n_ready == 0 && atomic_load(&e->state) != LLM_STATE_FAILED) {
        if (pthread_cond_timedwait(&e->ready_cond, &e->ready_mu, &ts)
            == ETIMEDOUT)
        {
            break;
        }
    }
    pthread_mutex_unlock(&e->ready_mu);
}

static void notify(llm_engine *e)
{
    if (e->opt.notify) {
        e->opt.notify(e->opt.notify_ctx);
    }
}

static void update_gauges(llm_engine *e);

/* ---- heartbeat ------------------------------------------------------------ */

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Under e->mu: the engine thread has work from now on; an idle engine's
 * clock starts at this moment. */
static void eng_busy_locked(llm_engine *e)
{
    if (!atomic_load(&e->hb_eng_busy)) {
        atomic_store(&e->hb_eng_ns, now_ns());
        atomic_store(&e->hb_eng_busy, 1);
    }
}

void engine_kick(llm_engine *e)
{
    pthread_mutex_lock(&e->mu);
    e->kick = 1;
    eng_busy_locked(e);
    pthread_cond_signal(&e->engine_cond);
    pthread_mutex_unlock(&e->mu);
}

/*
 * Busy if either thread has work; last_progress is then the older of the
 * busy threads' clocks, so neither a long tokenization on the prep thread
 * hides a stuck engine thread nor the other way round.  Flags are read
 * before clocks: a thread stamps its clock before it sets busy.
 */
void llm_engine_heartbeat_get(llm_engine *e, llm_engine_heartbeat *hb)
{
    int eb = atomic_load(&e->hb_eng_busy);
    int pb = atomic_load(&e->hb_prep_busy);
    int64_t en = atomic_load(&e->hb_eng_ns);
    int64_t pn = atomic_load(&e->hb_prep_ns);
    int64_t t;

    if (eb && pb) {
        t = en < pn ? en : pn;
    } else if (pb) {
        t = pn;
    } else {
        t = en;
    }
    hb->steps = atomic_load(&e->hb_steps);
    hb->busy = eb || pb;
    hb->last_progress = (double) t * 1e-9;
}

/* ---- request endings --------------------------------------------------- */

/* Leaves the "submitted but not yet running" count (once). */
static void leave_queue(llm_engine *e, llm_request *r)
{
    if (r->queued) {
        r->queued = 0;
        pthread_mutex_lock(&e->mu);
        e->n_queued--;
        pthread_mutex_unlock(&e->mu);
    }
}

static void count_finish(llm_engine *e, llm_request *r,
                         llm_finish_reason reason)
{
    pthread_mutex_lock(&e->stats_mu);
    e->stats.requests_finished[reason]++;
    if (reason != LLM_FINISH_ERROR) {
        hist_add(&e->stats.e2e, engine_now() - r->t_submit);
    }
    pthread_mutex_unlock(&e->stats_mu);
}

/* Final error event; drops the engine's reference. */
static void finish_error(llm_engine *e, llm_request *r, llm_status st,
                         const char *param, const char *msg)
{
    leave_queue(e, r);
    count_finish(e, r, LLM_FINISH_ERROR);
    engine_push_error(r, st, param, msg);
    mark_ready(e, r);
    engine_request_unref(r);
}

/* Final FINISH event (after any text still held back); removes the
 * sequence from the scheduler and drops the engine's reference. */
static void finish_request(llm_engine *e, llm_request *r,
                           llm_finish_reason reason, const char *stop_reason,
                           int32_t stop_token)
{
    llm_event ev;

    leave_queue(e, r);
    count_finish(e, r, reason);
    if (r->seq_inited && r->seq.state != SEQ_DONE && r->seq.state != SEQ_NEW) {
        /* Only the engine thread (or destroy, after joining it) gets here:
         * the sequence is in the scheduler.  Gauges first, so a caller
         * woken by this event sees its blocks returned. */
        scheduler_remove(e->sched, &r->seq);
        update_gauges(e);
    }
    memset(&ev, 0, sizeof(ev));
    ev.type = LLM_EV_FINISH;
    ev.finish_reason = reason;
    ev.stop_reason = stop_reason;
    ev.stop_token = stop_token;
    ev.usage.prompt_tokens = r->seq_inited ? r->seq.n_prompt : 0;
    ev.usage.completion_tokens = r->n_generated;
    ev.usage.cached_tokens = r->seq_inited ? r->seq.n_cached : 0;
    engine_push_event(r, &ev);
    mark_ready(e, r);
    engine_request_unref(r);
}

/* ---- prep thread ---------------------------------------------------------- */

/* Tokenizes r's prompt into r->seq.  Returns 0, or -1 after publishing an
 * error event (and dropping the engine's reference). */
static const char *grammar_token_bytes(void *ctx, int32_t id, size_t *len);

static int prep_request(llm_engine *e, llm_request *r)
{
    char err[LLM_ERR_MAX];
    int32_t *ids = NULL;
    int n = 0, need;
    const char *what = "prompt";

    err[0] = '\0';
    if (r->grammar != NULL && e->gvocab == NULL) {
        /* The token trie for constrained decoding, built once, here rather
         * than on the engine thread so that running requests do not stall
         * for it.  Only this thread writes e->gvocab; the engine reads it
         * for requests that came through here after it was set. */
        e->gvocab = grammar_vocab_new(e->vocab, grammar_token_bytes, e,
                                      e->m->cfg.eos_token_ids,
                                      e->m->cfg.n_eos);
        if (e->gvocab == NULL) {
            finish_error(e, r, LLM_ERR_INTERNAL, NULL,
                         "out of memory for the constrained-decoding "
                         "vocabulary");
            return -1;
        }
    }
    if (r->kind == LLM_PROMPT_TOKENS) {
        ids = r->prompt_ids;
        n = r->n_prompt_ids;
        r->prompt_ids = NULL;
    } else if (r->kind == LLM_PROMPT_TEXT) {
        n = tokenizer_encode(e->tok, r->text, r->text_len, 1, &ids, err,
                             sizeof(err));
        if (n < 0) {
            finish_error(e, r, LLM_ERR_INVALID, "prompt", err);
            return -1;
        }
    } else {
        size_t len = 0;
        char *text;

        what = "messages";
        if (e->ct == NULL) {
            finish_error(e, r, LLM_ERR_INVALID, "messages", e->ct_err);
            return -1;
        }
        text = chat_template_render(e->ct, r->messages_json, r->tools_json,
                                    r->kwargs_json, r->add_generation_prompt,
                                    &len, err, sizeof(err));
        if (text == NULL) {
            finish_error(e, r, LLM_ERR_INVALID, "messages", err);
            return -1;
        }
        n = tokenizer_encode(e->tok, text, len, 0, &ids, err, sizeof(err));
        free(text);
        if (n < 0) {
            finish_error(e, r, LLM_ERR_INVALID, "messages", err);
            return -1;
        }
    }
    if (n == 0) {
        free(ids);
        finish_error(e, r, LLM_ERR_INVALID, "prompt",
                     "the prompt is empty: at least one token is needed");
        return -1;
    }
    /* Prompt plus completion must fit max_model_len and the KV pool. */
    need = r->max_tokens_given ? n + r->max_tokens : n + 1;
    if (need > e->max_model_len) {
        if (r->max_tokens_given) {
            snprintf(err, sizeof(err), "This model's maximum context length "
                     "is %d tokens. However, you requested %d tokens (%d in "
                     "the %s, %d in the completion). Please reduce the "
                     "length of the %s or completion.", e->max_model_len,
                     need, n, what, r->max_tokens, what);
        } else {
            snprintf(err, sizeof(err), "This model's maximum context length "
                     "is %d tokens. However, your %s resulted in %d tokens. "
                     "Please reduce the length of the %s.", e->max_model_len,
                     what, n, what);
        }
        free(ids);
        finish_error(e, r, LLM_ERR_TOO_LONG, what, err);
        return -1;
    }
    if ((int64_t) need > (int64_t) e->n_blocks * e->block_size) {
        snprintf(err, sizeof(err), "The request needs %d tokens of KV cache "
                 "(%d in the %s, %d in the completion), but the whole KV "
                 "cache holds only %d tokens (%d blocks of %d); reduce the "
                 "request or raise the KV cache size.", need, n, what,
                 need - n, e->n_blocks * e->block_size, e->n_blocks,
                 e->block_size);
        free(ids);
        finish_error(e, r, LLM_ERR_TOO_LONG, what, err);
        return -1;
    }
    if (!r->max_tokens_given) {
        r->max_tokens = e->max_model_len - n;
    }
    if (sched_seq_init(&r->seq, ids, n, r) != 0) {
        free(ids);
        finish_error(e, r, LLM_ERR_INTERNAL, NULL, "out of memory");
        return -1;
    }
    free(ids);
    r->seq_inited = 1;
    return 0;
}

/* STARTED: prompt token count, and with echo the prompt itself. */
static void publish_started(llm_engine *e, llm_request *r)
{
    llm_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.type = LLM_EV_STARTED;
    ev.stop_token = -1;
    ev.usage.prompt_tokens = r->seq.n_prompt;
    if (r->echo) {
        char err[LLM_ERR_MAX];
        size_t len = 0;
        int i;

        ev.text = tokenizer_decode(e->tok, r->seq.tokens, r->seq.n_prompt, 0,
                                   &len, err, sizeof(err));
        ev.text_len = ev.text ? len : 0;
        ev.tokens = calloc((size_t) r->seq.n_prompt, sizeof(llm_token_info));
        if (ev.tokens != NULL) {
            ev.n_tokens = r->seq.n_prompt;
            for (i = 0; i < r->seq.n_prompt; i++) {
                ev.tokens[i].token = r->seq.tokens[i];
            }
        }
    }
    engine_push_event(r, &ev);
    mark_ready(e, r);
}

static void *prep_main(void *arg)
{
    llm_engine *e = arg;

    for (;;) {
        llm_request *r;

        pthread_mutex_lock(&e->mu);
        while (!e->stop && e->prep_q.head == NULL) {
            atomic_store(&e->hb_prep_busy, 0);
            pthread_cond_wait(&e->prep_cond, &e->mu);
        }
        if (e->stop) {
            pthread_mutex_unlock(&e->mu);
            break;
        }
        r = q_pop(&e->prep_q);
        /* Progress: one preparation starts; the watchdog allows each one
         * its whole limit, however long the queue. */
        atomic_store(&e->hb_prep_ns, now_ns());
        pthread_mutex_unlock(&e->mu);

        if (atomic_load(&r->cancelled)) {
            finish_request(e, r, LLM_FINISH_ABORT, NULL, -1);
            notify(e);
            continue;
        }
        if (atomic_load(&e->state) == LLM_STATE_FAILED) {
            char msg[LLM_ERR_MAX];

            pthread_mutex_lock(&e->mu);
            snprintf(msg, sizeof(msg), "%s", e->load_err);
            pthread_mutex_unlock(&e->mu);
            finish_error(e, r, LLM_ERR_NOT_READY, NULL, msg);
            notify(e);
            continue;
        }
        if (prep_request(e, r) != 0) {
            notify(e);
            continue;
        }
        publish_started(e, r);
        pthread_mutex_lock(&e->mu);
        q_push(&e->incoming, r);
        eng_busy_locked(e);
        if (e->prep_q.head == NULL) {
            /* Done, in the same breath as the engine thread takes over,
             * so no moment shows this thread's older stamp. */
            atomic_store(&e->hb_prep_busy, 0);
        }
        pthread_cond_signal(&e->engine_cond);
        pthread_mutex_unlock(&e->mu);
        notify(e);
    }
    return NULL;
}

/* A short prompt without a grammar is prepared on the submitting thread
 * when nothing waits for the prep thread: tokenizing it takes tens of
 * microseconds, and the hop to the prep thread (a wake-up, and on a
 * machine whose CPUs the engine and the event loop keep busy, a wait for
 * a CPU) was most of what nginx added to the time to first token.  Long
 * prompts and chat templates of long conversations still go to the prep
 * thread, so a submit never stalls the event loop for long; a grammar's
 * vocabulary is built only there.  Called with e->mu held. */
#define PREP_INLINE_BYTES 4096

static int prep_inline_ok(llm_engine *e, const llm_request *r)
{
    if (e->prep_q.head != NULL || r->grammar != NULL) {
        return 0;               /* keep the order; gvocab is prep's own */
    }
    switch (r->kind) {
    case LLM_PROMPT_TOKENS:
        return 1;
    case LLM_PROMPT_TEXT:
        return r->text_len <= PREP_INLINE_BYTES;
    default:
        /* strnlen: a long conversation is not scanned under e->mu */
        return r->messages_json != NULL
               && strnlen(r->messages_json, PREP_INLINE_BYTES + 1)
                  <= PREP_INLINE_BYTES
               && (r->tools_json == NULL
                   || strnlen(r->tools_json, PREP_INLINE_BYTES + 1)
                      <= PREP_INLINE_BYTES);
    }
}

/* What prep_main does for one request, on the submitting thread (the
 * engine is READY: llm_submit checked). */
static void prep_inline(llm_engine *e, llm_request *r)
{
    if (prep_request(e, r) == 0) {
        publish_started(e, r);
        pthread_mutex_lock(&e->mu);
        q_push(&e->incoming, r);
        eng_busy_locked(e);
        pthread_cond_signal(&e->engine_cond);
        pthread_mutex_unlock(&e->mu);
    }
    notify(e);
}

/* ---- loading --------------------------------------------------------------- */

static int parse_device(llm_engine *e, const char *dev, char *err,
                        size_t errlen)
{
    if (dev == NULL || strcmp(dev, "cpu") == 0) {
        e->cuda_device = -1;
        snprintf(e->device_name, sizeof(e->device_name), "cpu");
        return 0;
    }
    if (strncmp(dev, "cuda", 4) == 0) {
        int idx = 0;

        if (dev[4] == ':') {
            char *end;
            long v = strtol(dev + 5, &end, 10);

            if (end == dev + 5 || *end != '\0' || v < 0 || v > 64) {
                seterr(err, errlen, "device \"%s\": expected cuda:N", dev);
                return -1;
            }
            idx = (int) v;
        } else if (dev[4] != '\0') {
            seterr(err, errlen, "device \"%s\": expected cpu, cuda or cuda:N",
                   dev);
            return -1;
        }
        e->cuda_device = idx;
        snprintf(e->device_name, sizeof(e->device_name), "cuda:%d", idx);
        return 0;
    }
    seterr(err, errlen, "device \"%s\": expected cpu, cuda or cuda:N", dev);
    return -1;
}

static int path_join(char *out, size_t cap, const char *dir, const char *file)
{
    int n = snprintf(out, cap, "%s/%s", dir, file);

    return n > 0 && (size_t) n < cap ? 0 : -1;
}

/* Tokenizer and chat template (engine and llm_model_check). */
static int load_tokenizer(const char *dir, tokenizer **tok,
                          chat_template **ct, char *ct_err, size_t ct_errlen,
                          char *err, size_t errlen)
{
    char path[4096];

    if (path_join(path, sizeof(path), dir, "tokenizer.json") != 0) {
        seterr(err, errlen, "tokenizer directory path too long");
        return -1;
    }
    *tok = tokenizer_load(path, err, errlen);
    if (*tok == NULL) {
        return -1;
    }
    if (path_join(path, sizeof(path), dir, "tokenizer_config.json") != 0) {
        seterr(err, errlen, "tokenizer directory path too long");
        return -1;
    }
    /* A model without a chat template still serves completions; chat
     * requests then fail with this message. */
    *ct = chat_template_load(path, ct_err, ct_errlen);
    return 0;
}

/* The KV cache's elements: bf16 on CUDA (its only type), and on the CPU
 * when asked, or by default with the fast precision (llama.cpp-like: its
 * caches are f16); f32 for the exact CPU precision. */
static int engine_kv_bf16(const llm_engine *e)
{
    return e->cuda_device >= 0
           || e->opt.kv_cache_dtype == LLM_KV_BFLOAT16
           || (e->opt.kv_cache_dtype == LLM_KV_AUTO
               && e->opt.cpu_precision == LLM_CPU_FAST);
}

static int engine_load(llm_engine *e, char *err, size_t errlen)
{
    const model_config *cfg;
    int64_t kv_bytes;
    size_t block_bytes;
    sched_config sc;

    if (e->fault_load_delay_ms > 0) {   /* LLM_TEST_FAULT=load_delay_ms=N */
        struct timespec ts = { e->fault_load_delay_ms / 1000,
                               (e->fault_load_delay_ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
            /* the rest of the delay */
        }
    }

    if (load_tokenizer(e->tokenizer_dir, &e->tok, &e->ct, e->ct_err,
                       sizeof(e->ct_err), err, errlen) != 0)
    {
        return -1;
    }
    e->m = model_load(e->model_dir, e->opt.load_format == LLM_LOAD_DUMMY,
                      e->opt.seed, err, errlen);
    if (e->m == NULL) {
        return -1;
    }
    cfg = &e->m->cfg;
    e->vocab = cfg->vocab_size;

    if (e->opt.max_model_len > 0) {
        /* Capped by what the model was trained for (config.json). */
        e->max_model_len = e->opt.max_model_len < cfg->max_position_embeddings
                         ? e->opt.max_model_len : cfg->max_position_embeddings;
    } else {
        e->max_model_len = cfg->max_position_embeddings < ENGINE_DEFAULT_MAX_LEN
                         ? cfg->max_position_embeddings : ENGINE_DEFAULT_MAX_LEN;
    }

    if (e->cuda_device < 0) {
        e->be = cpu_backend_create_ex(e->m, e->opt.threads,
                                      e->opt.cpu_precision == LLM_CPU_FAST
                                      ? CPU_PRECISION_FAST : CPU_PRECISION_EXACT,
                                      engine_kv_bf16(e) ? CPU_KV_BF16
                                                        : CPU_KV_F32,
                                      err, errlen);
    } else if (e->opt.kv_cache_dtype == LLM_KV_FLOAT32) {
        seterr(err, errlen, "device %s: kv_cache_dtype=float32 is CPU only "
               "(the CUDA backend keeps the KV cache in bfloat16)",
               e->device_name);
    } else {
#ifdef LLM_HAVE_CUDA
        e->be = cuda_backend_create(e->m, e->cuda_device, err, errlen);
#else
        seterr(err, errlen, "device %s: built without CUDA (rebuild with "
               "CUDA=1 where nvcc is installed)", e->device_name);
        return -1;
#endif
    }
    if (e->be == NULL) {
        return -1;
    }

    block_bytes = e->be->ops->kv_block_bytes(e->be, e->block_size);
    if (block_bytes == 0) {
        seterr(err, errlen, "backend %s reports 0 bytes per KV block",
               e->be->ops->name);
        return -1;
    }
    if (e->opt.kv_cache_bytes > 0) {
        kv_bytes = e->opt.kv_cache_bytes;
    } else if (e->cuda_device >= 0) {
        double frac = e->opt.kv_cache_fraction > 0 ? e->opt.kv_cache_fraction
                                                   : ENGINE_CUDA_KV_FRACTION;
        kv_bytes = (int64_t) (frac * (double) e->be->ops->free_memory(e->be));
    } else {
        kv_bytes = ENGINE_CPU_KV_BYTES;
    }
    if ((uint64_t) kv_bytes / block_bytes > (uint64_t) INT32_MAX / 2) {
        kv_bytes = (int64_t) block_bytes * (INT32_MAX / 2);
    }
    e->n_blocks = (int) ((uint64_t) kv_bytes / block_bytes);
    if (e->n_blocks < 1) {
        seterr(err, errlen, "KV cache of %lld bytes holds no block of %zu "
               "bytes (%d tokens); raise the KV cache size",
               (long long) kv_bytes, block_bytes, e->block_size);
        return -1;
    }
    if (e->be->ops->kv_alloc(e->be, e->n_blocks, e->block_size, err, errlen)
        != 0)
    {
        return -1;
    }
    e->kv = kv_cache_create(e->n_blocks, e->block_size, e->prefix_caching);
    sc.max_num_seqs = e->opt.max_num_seqs;
    sc.max_num_batched_tokens = e->opt.max_num_batched_tokens;
    e->sched = e->kv ? scheduler_create(&sc, e->kv) : NULL;
    e->scratch = sampler_scratch_create(e->vocab);
    if (e->kv == NULL || e->sched == NULL || e->scratch == NULL) {
        seterr(err, errlen, "out of memory creating the scheduler");
        return -1;
    }
    pthread_mutex_lock(&e->stats_mu);
    e->stats.kv_blocks_total = e->n_blocks;
    e->stats.kv_block_size = e->block_size;
    e->stats.kv_cache_bf16 = engine_kv_bf16(e);
    pthread_mutex_unlock(&e->stats_mu);
    return 0;
}

/* ---- the step loop ----------------------------------------------------------- */

static int in_list(const int32_t *ids, int n, int32_t t)
{
    int i;

    for (i = 0; i < n; i++) {
        if (ids[i] == t) {
            return 1;
        }
    }
    return 0;
}

/* Appends to the engine's per-token output buffer. */
static int out_append(llm_engine *e, const char *text, size_t len)
{
    if (e->out_len + len + 1 > e->out_cap) {
        size_t cap = (e->out_len + len + 1) * 2;
        char *o = realloc(e->out, cap);

        if (o == NULL) {
            return -1;
        }
        e->out = o;
        e->out_cap = cap;
    }
    memcpy(e->out + e->out_len, text, len);
    e->out_len += len;
    return 0;
}

/* New text of r through its stop matcher (when it has one and check is
 * set) into the output buffer; *stop_reason is set on a match. */
static int out_text(llm_engine *e, llm_request *r, const char *text,
                    size_t len, int check, const char **stop_reason)
{
    stop_output so;

    if (r->sm == NULL || !check) {
        return out_append(e, text, len);
    }
    if (stop_matcher_feed(r->sm, text, len, &so) != 0
        || out_append(e, so.text, so.len) != 0)
    {
        return -1;
    }
    if (so.stopped) {
        *stop_reason = stop_matcher_string(r->sm, so.stop_index);
    }
    return 0;
}

/* Error event for a request whose sequence is in the scheduler. */
static void fail_running(llm_engine *e, llm_request *r, llm_status st,
                         const char *param, const char *msg)
{
    if (r->seq_inited && r->seq.state != SEQ_DONE && r->seq.state != SEQ_NEW) {
        scheduler_remove(e->sched, &r->seq);
        update_gauges(e);
    }
    finish_error(e, r, st, param, msg);
}

/* Token bytes for the constrained-decoding vocabulary: special tokens
 * (eos among them, added by grammar_vocab_new itself) and the padding rows
 * past the tokenizer never appear in constrained output. */
static const char *grammar_token_bytes(void *ctx, int32_t id, size_t *len)
{
    llm_engine *e = ctx;

    if (id >= tokenizer_vocab_size(e->tok) || tokenizer_is_special(e->tok, id)) {
        return NULL;
    }
    return tokenizer_token_bytes(e->tok, id, len);
}

/* Masks r's logits to the tokens its constraint allows next.  Returns 0,
 * or -1 after finishing the request with an error. */
static int constrain_logits(llm_engine *e, llm_request *r, float *logits)
{
    const uint64_t *words;
    int left, ctx_left;

    /* e->gvocab was built by the prep thread before r got here. */
    if (r->gm == NULL && e->gvocab != NULL) {
        r->gm = grammar_matcher_new(r->grammar, e->gvocab);
    }
    if (r->gm == NULL) {
        fail_running(e, r, LLM_ERR_INTERNAL, NULL,
                     "out of memory for the constrained-decoding masks");
        return -1;
    }
    left = r->max_tokens - r->n_generated;
    ctx_left = e->max_model_len - r->seq.n_tokens;
    grammar_matcher_set_budget(r->gm, left < ctx_left ? left : ctx_left);
    if (grammar_matcher_mask(r->gm, &words) <= 0) {
        fail_running(e, r, LLM_ERR_INTERNAL, NULL,
                     "the output constraint allows no next token");
        return -1;
    }
    grammar_apply_mask(logits, e->vocab, words);
    return 0;
}

/* Samples one token for r from its logits row (or takes the one the
 * backend sampled: pre) and publishes what follows from it; finishes the
 * request when a stop condition holds. */
static void process_token(llm_engine *e, llm_request *r, float *logits,
                          const sampler_result *pre)
{
    sched_seq *seq = &r->seq;
    sampler_history h;
    sampler_result res;
    llm_token_info ti;
    char piece[512];
    const char *stop_reason = NULL;
    int n_piece = 0, check;
    int32_t tok, stop_token = -1;
    llm_finish_reason reason = LLM_FINISH_NONE;
    double now;

    if (pre != NULL) {
        res = *pre;
        goto sampled;
    }
    if (e->logits_hook) {
        e->logits_hook(e->logits_hook_ctx, r, r->n_generated, logits, e->vocab);
    }
    h.prompt = seq->tokens;
    h.n_prompt = seq->n_prompt;
    h.generated = seq->tokens + seq->n_prompt;
    h.n_generated = r->n_generated;
    if (r->grammar != NULL && constrain_logits(e, r, logits) != 0) {
        return;
    }
    r->sp.suppress_eos = r->n_generated < r->min_tokens;
    memset(&res, 0, sizeof(res));
    if (sampler_sample(logits, e->vocab, &r->sp, &h, &r->rng, e->scratch,
                       &res) != 0)
    {
        /* Parameters are validated at submit; this is a bug, not input. */
        finish_request(e, r, LLM_FINISH_ERROR, NULL, -1);
        return;
    }
sampled:
    tok = res.token;
    if (r->gm != NULL && grammar_matcher_accept(r->gm, tok) != 0) {
        /* Only when min_tokens or a logit bias removed every allowed
         * token: the output cannot go on within the constraint. */
        fail_running(e, r, LLM_ERR_INVALID, "min_tokens",
                     "the output constraint and min_tokens/logit_bias leave "
                     "no token to generate");
        return;
    }
    if (sched_seq_append(seq, tok) != 0) {
        finish_request(e, r, LLM_FINISH_ERROR, NULL, -1);
        return;
    }
    r->n_generated++;

    now = engine_now();
    pthread_mutex_lock(&e->stats_mu);
    if (r->n_generated == 1) {
        hist_add(&e->stats.ttft, now - r->t_submit);
        r->t_first = now;
    } else {
        hist_add(&e->stats.itl, now - r->t_last);
    }
    e->stats.generation_tokens++;
    pthread_mutex_unlock(&e->stats_mu);
    r->t_last = now;

    /* Stop tokens and eos end the text without adding their own. */
    e->out_len = 0;
    check = r->n_generated >= r->min_tokens;
    if ((check && !r->ignore_eos && in_list(r->suppress_ids, r->n_eos_ids, tok))
        || (r->gm != NULL && in_list(r->suppress_ids, r->n_eos_ids, tok)))
    {
        /* A constrained output takes eos only where it is complete. */
        reason = LLM_FINISH_STOP;
    } else if (check && in_list(r->stop_ids, r->n_stop_ids, tok)) {
        reason = LLM_FINISH_STOP;
        stop_token = tok;
    } else {
        n_piece = tokenizer_stream_feed(e->tok, &r->ts, tok, piece,
                                        sizeof(piece));
        if (n_piece < 0) {
            /* An id past the tokenizer's vocabulary (padding rows of the
             * embedding): it has no text. */
            n_piece = 0;
        }
        /* Stop strings count only from min_tokens on (as vLLM). */
        if (out_text(e, r, piece, (size_t) n_piece, check, &stop_reason) != 0) {
            finish_request(e, r, LLM_FINISH_ERROR, NULL, -1);
            return;
        }
        if (stop_reason != NULL) {
            reason = LLM_FINISH_STOP;
        }
    }
    if (reason == LLM_FINISH_NONE && r->gm != NULL
        && grammar_matcher_terminal(r->gm))
    {
        /* The constrained output is complete and nothing may follow. */
        reason = LLM_FINISH_STOP;
    }
    if (reason == LLM_FINISH_NONE
        && (r->n_generated >= r->max_tokens || seq->n_tokens >= e->max_model_len))
    {
        reason = LLM_FINISH_LENGTH;
    }
    if (reason != LLM_FINISH_NONE && stop_reason == NULL) {
        /* Finishing without a stop-string match: what the decoder and the
         * stop matcher still hold is part of the output. */
        char tail[16];
        int n_tail = tokenizer_stream_flush(e->tok, &r->ts, tail, sizeof(tail));

        if (n_tail > 0
            && out_text(e, r, tail, (size_t) n_tail, check, &stop_reason) != 0)
        {
            finish_request(e, r, LLM_FINISH_ERROR, NULL, -1);
            return;
        }
        if (r->sm != NULL && stop_reason == NULL) {
            stop_output so;

            stop_matcher_flush(r->sm, &so);
            if (out_append(e, so.text, so.len) != 0) {
                finish_request(e, r, LLM_FINISH_ERROR, NULL, -1);
                return;
            }
        }
        if (stop_reason != NULL) {
            reason = LLM_FINISH_STOP;
        }
    }

    memset(&ti, 0, sizeof(ti));
    ti.token = tok;
    if (r->sp.logprobs) {
        ti.logprob = res.logprob;
        ti.n_top = res.n_top;
        ti.top = res.n_top > 0 ? res.top : NULL;
    }
    ti.text_off = 0;
    engine_push_tokens(r, &ti, 1, e->out, e->out_len);
    if (reason != LLM_FINISH_NONE) {
        finish_request(e, r, reason, stop_reason, stop_token);
    } else {
        mark_ready(e, r);
    }
}

/* Takes the prepared requests over into the scheduler. */
static void admit_incoming(llm_engine *e)
{
    llm_request *list, *r;

    pthread_mutex_lock(&e->mu);
    list = e->incoming.head;
    e->incoming.head = e->incoming.tail = NULL;
    e->incoming.n = 0;
    pthread_mutex_unlock(&e->mu);
    while ((r = list) != NULL) {
        list = r->qnext;
        r->qnext = NULL;
        scheduler_add(e->sched, &r->seq);
    }
}

/* Cancelled requests leave the scheduler and their blocks return now. */
static int reap_cancelled(llm_engine *e)
{
    sched_seq *s, *next;
    int n = 0, pass;

    for (pass = 0; pass < 2; pass++) {
        for (s = pass ? scheduler_waiting(e->sched) : scheduler_running(e->sched);
             s != NULL; s = next)
        {
            llm_request *r = s->owner;

            next = s->next;
            if (atomic_load(&r->cancelled)) {
                finish_request(e, r, LLM_FINISH_ABORT, NULL, -1);
                n++;
            }
        }
    }
    return n;
}

/* Requests whose reader has LLM_PAUSE_UNREAD_TOKENS or more generated
 * tokens queued sit out of the batches until it catches up (the scheduler
 * skips sequences with the flag).  Engine thread, before each schedule. */
static void refresh_paused(llm_engine *e)
{
    sched_seq *s;
    int pass;

    for (pass = 0; pass < 2; pass++) {
        for (s = pass ? scheduler_waiting(e->sched) : scheduler_running(e->sched);
             s != NULL; s = s->next)
        {
            llm_request *r = s->owner;

            s->paused = atomic_load(&r->unread_tokens) >= LLM_PAUSE_UNREAD_TOKENS;
        }
    }
}

static int count_paused(llm_engine *e)
{
    sched_seq *s;
    int pass, n = 0;

    for (pass = 0; pass < 2; pass++) {
        for (s = pass ? scheduler_waiting(e->sched) : scheduler_running(e->sched);
             s != NULL; s = s->next)
        {
            n += s->paused;
        }
    }
    return n;
}

/* Requests prepared after the engine failed: error them. */
static void fail_incoming(llm_engine *e)
{
    char msg[LLM_ERR_MAX];
    llm_request *list, *r;

    pthread_mutex_lock(&e->mu);
    list = e->incoming.head;
    e->incoming.head = e->incoming.tail = NULL;
    e->incoming.n = 0;
    snprintf(msg, sizeof(msg), "%s", e->load_err);
    pthread_mutex_unlock(&e->mu);
    while ((r = list) != NULL) {
        list = r->qnext;
        r->qnext = NULL;
        finish_error(e, r, LLM_ERR_NOT_READY, NULL, msg);
    }
}

/*
 * The engine gives up after a fatal backend error or too many failed
 * forward passes in a row: state FAILED with why as its error text, every
 * request in it (running, paused, waiting, prepared) ends with an error
 * event, and llm_submit refuses from now on (the prep thread errors what
 * it still holds).  Engine thread: engine_set_failed, then the failing
 * batch's errors, then engine_fail_all.
 */
static void engine_set_failed(llm_engine *e, const char *why)
{
    pthread_mutex_lock(&e->mu);
    snprintf(e->load_err, sizeof(e->load_err), "%s", why);
    e->failed_at_runtime = 1;
    pthread_mutex_unlock(&e->mu);
    atomic_store(&e->state, LLM_STATE_FAILED);
}

/* After engine_set_failed: ends every request still in the engine. */
static void engine_fail_all(llm_engine *e, const char *why)
{
    char msg[LLM_ERR_MAX];
    sched_seq *s;

    snprintf(msg, sizeof(msg), "%s", why);
    while ((s = scheduler_running(e->sched)) != NULL) {
        fail_running(e, s->owner, LLM_ERR_NOT_READY, NULL, msg);
    }
    while ((s = scheduler_waiting(e->sched)) != NULL) {
        fail_running(e, s->owner, LLM_ERR_NOT_READY, NULL, msg);
    }
    fail_incoming(e);
    update_gauges(e);
    pthread_mutex_lock(&e->ready_mu);
    pthread_cond_broadcast(&e->ready_cond);
    pthread_mutex_unlock(&e->ready_mu);
}

static void update_gauges(llm_engine *e)
{
    kv_cache_stats ks;
    int queued, paused = count_paused(e);

    kv_cache_get_stats(e->kv, &ks);
    pthread_mutex_lock(&e->mu);
    queued = e->prep_q.n + e->incoming.n;
    pthread_mutex_unlock(&e->mu);
    pthread_mutex_lock(&e->stats_mu);
    e->stats.running = scheduler_num_running(e->sched);
    e->stats.waiting = scheduler_num_waiting(e->sched) + queued;
    e->stats.kv_blocks_used = ks.blocks_used;
    e->stats.prefix_cache_queries = ks.queries;
    e->stats.prefix_cache_hits = ks.hits;
    e->stats.preemptions = scheduler_num_preemptions(e->sched);
    e->stats.paused = paused;
    pthread_mutex_unlock(&e->stats_mu);
}

/* Whether this step samples on the device: the backend can
 * (forward_sample), no logits hook watches the rows and no sampled request
 * has an output constraint (grammar masks are host work).  If so, fills
 * e->srows with each request's parameters, history and its one uniform
 * draw, taken only when the row is not greedy as sampler_sample() takes
 * it, so a request's RNG stream is the same whichever path samples a step.
 * Returns 1, 0 (host sampling), or -1 when out of memory. */
static int device_sampling(llm_engine *e, const sched_output *out)
{
    int i, k, n = out->batch.n_logits;

    if (e->be->ops->forward_sample == NULL || e->logits_hook != NULL
        || n <= 0)
    {
        return 0;
    }
    for (i = 0; i < out->n_entries; i++) {
        const llm_request *r = out->entries[i].seq->owner;

        if (out->entries[i].sample && r->grammar != NULL) {
            return 0;
        }
    }
    if (n > e->srows_cap) {
        llm_sample_row *sr = realloc(e->srows, (size_t) n * sizeof(*sr));
        sampler_history *sh;
        sampler_result *rs;

        if (sr == NULL) {
            return -1;
        }
        e->srows = sr;
        sh = realloc(e->shist, (size_t) n * sizeof(*sh));
        if (sh == NULL) {
            return -1;
        }
        e->shist = sh;
        rs = realloc(e->sres, (size_t) n * sizeof(*rs));
        if (rs == NULL) {
            return -1;
        }
        e->sres = rs;
        e->srows_cap = n;
    }
    for (i = 0, k = 0; i < out->n_entries && k < n; i++) {
        llm_request *r = out->entries[i].seq->owner;
        sched_seq *seq = &r->seq;

        if (!out->entries[i].sample) {
            continue;
        }
        r->sp.suppress_eos = r->n_generated < r->min_tokens;
        e->shist[k].prompt = seq->tokens;
        e->shist[k].n_prompt = seq->n_prompt;
        e->shist[k].generated = seq->tokens + seq->n_prompt;
        e->shist[k].n_generated = r->n_generated;
        e->srows[k].p = &r->sp;
        e->srows[k].h = &e->shist[k];
        /* 1e-5: the sampler's greedy threshold (SAMPLER_GREEDY_EPS) */
        e->srows[k].uniform = r->sp.temperature < 1e-5f
                              ? 0.0 : sampler_rng_uniform(&r->rng);
        k++;
    }
    return 1;
}

/* One engine step.  Returns 1 if work was done, 0 if idle. */
static int engine_step(llm_engine *e)
{
    sched_output out;
    char err[LLM_ERR_MAX];
    int n, i, k, rc, gpu, events = 0;
    uint64_t prompt_tok = 0, steps;
    double t0;

    admit_incoming(e);
    events += reap_cancelled(e);
    refresh_paused(e);

    n = scheduler_schedule(e->sched, &out);
    if (n < 0) {
        /* Out of memory planning the step: fail what is running rather
         * than spin. */
        sched_seq *s;

        while ((s = scheduler_running(e->sched)) != NULL) {
            finish_request(e, s->owner, LLM_FINISH_ERROR, NULL, -1);
        }
        notify(e);
        return 1;
    }
    for (i = 0; i < out.n_failed; i++) {
        /* It cannot grow even alone in the pool: its length is reached. */
        finish_request(e, out.failed[i]->owner, LLM_FINISH_LENGTH, NULL, -1);
        events++;
    }
    for (i = 0; i < out.n_entries; i++) {
        llm_request *r = out.entries[i].seq->owner;

        if (r->queued && out.entries[i].seq->admissions > 0) {
            leave_queue(e, r);
        }
    }
    if (n == 0) {
        update_gauges(e);
        if (events) {
            notify(e);
        }
        if (events == 0
            && count_paused(e) < scheduler_num_running(e->sched)
                                 + scheduler_num_waiting(e->sched))
        {
            /* Runnable sequences but nothing scheduled (cannot happen with
             * a sane pool): retry without spinning, do not sleep on them. */
            usleep(1000);
            return 1;
        }
        return events > 0;
    }

    gpu = device_sampling(e, &out);
    if (gpu < 0) {
        for (i = 0; i < out.n_entries; i++) {
            finish_request(e, out.entries[i].seq->owner,
                           LLM_FINISH_ERROR, NULL, -1);
        }
        notify(e);
        return 1;
    }
    if (!gpu && (size_t) out.batch.n_logits * e->vocab > e->logits_cap) {
        size_t cap = (size_t) out.batch.n_logits * e->vocab;
        float *l = realloc(e->logits, cap * sizeof(float));

        if (l == NULL) {
            for (i = 0; i < out.n_entries; i++) {
                finish_request(e, out.entries[i].seq->owner,
                               LLM_FINISH_ERROR, NULL, -1);
            }
            notify(e);
            return 1;
        }
        e->logits = l;
        e->logits_cap = cap;
    }
    t0 = engine_now();
    err[0] = '\0';
    steps = atomic_load(&e->hb_steps);
    if (e->fault_hang_after >= 0 && steps >= (uint64_t) e->fault_hang_after) {
        /* Injected hang: as if this forward pass never returned.  Only
         * llm_engine_destroy ends it; the heartbeat stays busy and stale. */
        pthread_mutex_lock(&e->mu);
        while (!e->stop) {
            pthread_cond_wait(&e->engine_cond, &e->mu);
        }
        pthread_mutex_unlock(&e->mu);
        return 1;
    }
    if (e->fault_fail_after >= 0 && steps >= (uint64_t) e->fault_fail_after) {
        snprintf(err, sizeof(err), "injected fault: the forward pass failed "
                 "(LLM_TEST_FAULT=fail_forward_after_steps=%lld)",
                 (long long) e->fault_fail_after);
        rc = -1;
    } else if (gpu) {
        rc = e->be->ops->forward_sample(e->be, &out.batch, e->srows,
                                        e->sres, err, sizeof(err));
    } else {
        rc = e->be->ops->forward(e->be, &out.batch, e->logits, err,
                                 sizeof(err));
    }
    if (rc != 0) {
        char why[LLM_ERR_MAX];
        int give_up;

        if (err[0] == '\0') {
            snprintf(err, sizeof(err), "the %s backend's forward pass failed",
                     e->be->ops->name);
        }
        pthread_mutex_lock(&e->stats_mu);
        e->stats.forward_errors++;
        pthread_mutex_unlock(&e->stats_mu);
        e->forward_failures++;
        give_up = rc == LLM_BACKEND_FATAL
                  || e->forward_failures >= ENGINE_MAX_FORWARD_FAILURES;
        if (give_up) {
            if (rc == LLM_BACKEND_FATAL) {
                snprintf(why, sizeof(why), "the engine stopped: fatal %s "
                         "backend error: %.400s", e->be->ops->name, err);
            } else {
                snprintf(why, sizeof(why), "the engine stopped after %d "
                         "failed forward passes in a row; the last: %.400s",
                         e->forward_failures, err);
            }
            /* FAILED before any of these errors is seen: a caller that
             * reads one and asks for the state gets the truth. */
            engine_set_failed(e, why);
        }
        /* A failed forward leaves the batch's KV undefined: end those
         * requests with the backend's message. */
        for (i = 0; i < out.n_entries; i++) {
            scheduler_remove(e->sched, out.entries[i].seq);
        }
        update_gauges(e);
        for (i = 0; i < out.n_entries; i++) {
            finish_error(e, out.entries[i].seq->owner, LLM_ERR_INTERNAL, NULL,
                         err);
        }
        if (give_up) {
            engine_fail_all(e, why);
        }
        notify(e);
        return 1;
    }
    e->forward_failures = 0;
    scheduler_step_done(e->sched, &out);
    for (i = 0; i < out.n_entries; i++) {
        const sched_entry *en = &out.entries[i];

        if (en->start < en->seq->n_prompt) {
            int end = en->start + en->n;

            prompt_tok += (uint64_t) ((end < en->seq->n_prompt ? end
                                       : en->seq->n_prompt) - en->start);
        }
    }
    pthread_mutex_lock(&e->stats_mu);
    hist_add(&e->stats.step_time, engine_now() - t0);
    e->stats.steps++;
    e->stats.prompt_tokens += prompt_tok;
    pthread_mutex_unlock(&e->stats_mu);

    for (i = 0, k = 0; i < out.n_entries; i++) {
        if (out.entries[i].sample) {
            process_token(e, out.entries[i].seq->owner,
                          gpu ? NULL : e->logits + (size_t) k * e->vocab,
                          gpu ? &e->sres[k] : NULL);
            k++;
        }
    }
    update_gauges(e);
    /* The step is finished, its tokens published: stamp, then count. */
    atomic_store(&e->hb_eng_ns, now_ns());
    atomic_fetch_add(&e->hb_steps, 1);
    notify(e);
    return 1;
}

static void *engine_main(void *arg)
{
    llm_engine *e = arg;
    int progressed = 1;
    uint64_t steps;

    if (atomic_load(&e->state) == LLM_STATE_LOADING) {
        char err[LLM_ERR_MAX];

        err[0] = '\0';
        if (engine_load(e, err, sizeof(err)) != 0) {
            pthread_mutex_lock(&e->mu);
            snprintf(e->load_err, sizeof(e->load_err), "%s", err);
            pthread_mutex_unlock(&e->mu);
            atomic_store(&e->state, LLM_STATE_FAILED);
            pthread_mutex_lock(&e->ready_mu);
            pthread_cond_broadcast(&e->ready_cond);
            pthread_mutex_unlock(&e->ready_mu);
            notify(e);
            return NULL;
        }
        atomic_store(&e->state, LLM_STATE_READY);
        notify(e);
    }

    for (;;) {
        /* Sleep while there is nothing to do: no sequences, or the last
         * step found none it could run (all paused for their readers)
         * and nothing changed since (a kick: a reader caught up, a
         * cancel; new requests). */
        pthread_mutex_lock(&e->mu);
        while (!e->stop && !e->kick && e->incoming.head == NULL
               && (!progressed
                   || (scheduler_num_running(e->sched) == 0
                       && scheduler_num_waiting(e->sched) == 0)))
        {
            atomic_store(&e->hb_eng_busy, 0);
            pthread_cond_wait(&e->engine_cond, &e->mu);
        }
        if (e->stop) {
            pthread_mutex_unlock(&e->mu);
            break;
        }
        e->kick = 0;
        eng_busy_locked(e);
        pthread_mutex_unlock(&e->mu);
        if (atomic_load(&e->state) == LLM_STATE_FAILED) {
            fail_incoming(e);
            notify(e);
            progressed = 0;
            continue;
        }
        steps = atomic_load(&e->hb_steps);
        progressed = engine_step(e);
        if (atomic_load(&e->hb_steps) == steps) {
            /* An iteration without a forward pass (failed, or only
             * endings): the thread is alive all the same. */
            atomic_store(&e->hb_eng_ns, now_ns());
        }
    }
    return NULL;
}

/* ---- create / destroy --------------------------------------------------------- */

/* LLM_TEST_FAULT (llm.h): "hang_after_steps=N",
 * "fail_forward_after_steps=N" or "load_delay_ms=N"; unset or empty: no
 * fault. */
static int parse_fault(llm_engine *e, char *err, size_t errlen)
{
    static const struct { const char *key; size_t len; } keys[] = {
        { "hang_after_steps=", sizeof("hang_after_steps=") - 1 },
        { "fail_forward_after_steps=", sizeof("fail_forward_after_steps=") - 1 },
        { "load_delay_ms=", sizeof("load_delay_ms=") - 1 }
    };
    const char *v = getenv("LLM_TEST_FAULT");
    int i;

    e->fault_hang_after = -1;
    e->fault_fail_after = -1;
    e->fault_load_delay_ms = 0;
    if (v == NULL || v[0] == '\0') {
        return 0;
    }
    for (i = 0; i < 3; i++) {
        if (strncmp(v, keys[i].key, keys[i].len) == 0) {
            const char *num = v + keys[i].len;
            char *end;
            long long n;

            errno = 0;
            n = strtoll(num, &end, 10);
            if (num[0] < '0' || num[0] > '9' || *end != '\0'
                || errno != 0)
            {
                break;
            }
            if (i == 0) {
                e->fault_hang_after = n;
            } else if (i == 1) {
                e->fault_fail_after = n;
            } else {
                e->fault_load_delay_ms = n;
            }
            return 0;
        }
    }
    seterr(err, errlen, "LLM_TEST_FAULT=\"%.200s\": expected "
           "\"hang_after_steps=N\", \"fail_forward_after_steps=N\" or "
           "\"load_delay_ms=N\" with N a non-negative integer", v);
    return -1;
}

static void engine_free_all(llm_engine *e);

llm_engine *llm_engine_create(const llm_engine_options *o, char *err,
                              size_t errlen)
{
    llm_engine *e;

    if (o == NULL || o->model_dir == NULL) {
        seterr(err, errlen, "model_dir is required");
        return NULL;
    }
    if (o->max_model_len < 0 || o->max_num_seqs < 0
        || o->max_num_batched_tokens < 0 || o->block_size < 0
        || o->kv_cache_bytes < 0 || o->max_queue < 0 || o->threads < 0
        || o->kv_cache_fraction < 0 || o->kv_cache_fraction > 1)
    {
        seterr(err, errlen, "engine options must not be negative "
               "(kv_cache_fraction in [0, 1])");
        return NULL;
    }
    e = calloc(1, sizeof(*e));
    if (e == NULL) {
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    e->opt = *o;
    e->model_dir = dup_str(o->model_dir);
    e->tokenizer_dir = dup_str(o->tokenizer_dir ? o->tokenizer_dir
                                                : o->model_dir);
    e->device = dup_str(o->device ? o->device : "cpu");
    e->opt.model_dir = e->model_dir;
    e->opt.tokenizer_dir = e->tokenizer_dir;
    e->opt.device = e->device;
    if (e->opt.max_num_seqs == 0) e->opt.max_num_seqs = 256;
    if (e->opt.max_num_batched_tokens == 0) e->opt.max_num_batched_tokens = 2048;
    e->block_size = o->block_size ? o->block_size : 16;
    e->prefix_caching = o->enable_prefix_caching != 0;
    atomic_init(&e->state, LLM_STATE_LOADING);
    stats_init(&e->stats);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->engine_cond, NULL);
    pthread_cond_init(&e->prep_cond, NULL);
    pthread_mutex_init(&e->ready_mu, NULL);
    pthread_cond_init(&e->ready_cond, NULL);
    pthread_mutex_init(&e->stats_mu, NULL);
    if (!e->model_dir || !e->tokenizer_dir || !e->device) {
        seterr(err, errlen, "out of memory");
        engine_free_all(e);
        return NULL;
    }
    if (parse_device(e, e->device, err, errlen) != 0
        || parse_fault(e, err, errlen) != 0)
    {
        engine_free_all(e);
        return NULL;
    }
    atomic_init(&e->hb_steps, 0);
    atomic_init(&e->hb_eng_ns, now_ns());
    atomic_init(&e->hb_prep_ns, now_ns());
    atomic_init(&e->hb_eng_busy, 0);
    atomic_init(&e->hb_prep_busy, 0);
    if (!o->load_async) {
        if (engine_load(e, err, errlen) != 0) {
            engine_free_all(e);
            return NULL;
        }
        atomic_store(&e->state, LLM_STATE_READY);
    }
    if (pthread_create(&e->engine_thread, NULL, engine_main, e) != 0) {
        seterr(err, errlen, "cannot start the engine thread");
        engine_free_all(e);
        return NULL;
    }
    e->engine_started = 1;
    if (pthread_create(&e->prep_thread, NULL, prep_main, e) != 0) {
        seterr(err, errlen, "cannot start the request preparation thread");
        llm_engine_destroy(e);
        return NULL;
    }
    e->prep_started = 1;
    return e;
}

static void engine_free_all(llm_engine *e)
{
    free(e->logits);
    free(e->srows);
    free(e->shist);
    free(e->sres);
    free(e->out);
    sampler_scratch_free(e->scratch);
    grammar_vocab_free(e->gvocab);
    e->gvocab = NULL;
    scheduler_free(e->sched);
    kv_cache_free(e->kv);
    if (e->be) e->be->ops->destroy(e->be);
    if (e->m) model_free(e->m);
    if (e->ct) chat_template_free(e->ct);
    if (e->tok) tokenizer_free(e->tok);
    free(e->ready);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->engine_cond);
    pthread_cond_destroy(&e->prep_cond);
    pthread_mutex_destroy(&e->ready_mu);
    pthread_cond_destroy(&e->ready_cond);
    pthread_mutex_destroy(&e->stats_mu);
    free(e->model_dir);
    free(e->tokenizer_dir);
    free(e->device);
    free(e);
}

void llm_engine_destroy(llm_engine *e)
{
    llm_request *r;
    sched_seq *s;
    int i;

    if (e == NULL) {
        return;
    }
    pthread_mutex_lock(&e->mu);
    e->stop = 1;
    pthread_cond_broadcast(&e->engine_cond);
    pthread_cond_broadcast(&e->prep_cond);
    pthread_mutex_unlock(&e->mu);
    if (e->engine_started) pthread_join(e->engine_thread, NULL);
    if (e->prep_started) pthread_join(e->prep_thread, NULL);

    /* Everything still in flight ends with abort, so a caller draining
     * its requests sees a last event. */
    while ((r = q_pop(&e->prep_q)) != NULL) {
        finish_request(e, r, LLM_FINISH_ABORT, NULL, -1);
    }
    while ((r = q_pop(&e->incoming)) != NULL) {
        finish_request(e, r, LLM_FINISH_ABORT, NULL, -1);
    }
    if (e->sched) {
        while ((s = scheduler_running(e->sched)) != NULL) {
            finish_request(e, s->owner, LLM_FINISH_ABORT, NULL, -1);
        }
        while ((s = scheduler_waiting(e->sched)) != NULL) {
            finish_request(e, s->owner, LLM_FINISH_ABORT, NULL, -1);
        }
    }
    notify(e);
    for (i = 0; i < e->n_ready; i++) {
        e->ready[i]->in_ready = 0;
        engine_request_unref(e->ready[i]);
    }
    e->n_ready = 0;
    engine_free_all(e);
}

llm_engine_state llm_engine_get_state(llm_engine *e, char *err, size_t errlen)
{
    llm_engine_state st = (llm_engine_state) atomic_load(&e->state);

    if (st == LLM_STATE_FAILED) {
        pthread_mutex_lock(&e->mu);
        seterr(err, errlen, "%s", e->load_err);
        pthread_mutex_unlock(&e->mu);
    }
    return st;
}

void llm_engine_model_info(llm_engine *e, llm_model_info *info)
{
    memset(info, 0, sizeof(*info));
    info->device = e->device_name;
    info->block_size = e->block_size;
    info->kv_cache_dtype = engine_kv_bf16(e) ? "bfloat16" : "float32";
    if (atomic_load(&e->state) != LLM_STATE_READY) {
        return;
    }
    info->model_type = e->m->cfg.model_type;
    info->max_model_len = e->max_model_len;
    info->vocab_size = e->m->cfg.vocab_size;
    info->n_layers = e->m->cfg.n_layers;
    info->hidden_size = e->m->cfg.hidden_size;
    info->kv_blocks_total = e->n_blocks;
}

void engine_set_logits_hook(llm_engine *e, engine_logits_hook fn, void *ctx)
{
    e->logits_hook = fn;
    e->logits_hook_ctx = ctx;
}

/* ---- submit ------------------------------------------------------------------ */

llm_request *llm_submit(llm_engine *e, const llm_request_params *p,
                        llm_status *status, char *err, size_t errlen)
{
    engine_request_defaults d;
    llm_request *r;
    llm_status st_local;

    if (status == NULL) {
        status = &st_local;
    }
    if (p == NULL) {
        *status = LLM_ERR_INVALID;
        seterr(err, errlen, "no request parameters");
        return NULL;
    }
    switch (atomic_load(&e->state)) {
    case LLM_STATE_READY:
        break;
    case LLM_STATE_LOADING:
        *status = LLM_ERR_NOT_READY;
        seterr(err, errlen, "the model is still loading");
        return NULL;
    default:
        *status = LLM_ERR_NOT_READY;
        pthread_mutex_lock(&e->mu);
        if (e->failed_at_runtime) {
            seterr(err, errlen, "%s", e->load_err);
        } else {
            seterr(err, errlen, "the model failed to load: %s", e->load_err);
        }
        pthread_mutex_unlock(&e->mu);
        return NULL;
    }
    memset(&d, 0, sizeof(d));
    d.gen = e->m->gen;
    d.eos_ids = e->m->cfg.eos_token_ids;
    d.n_eos = e->m->cfg.n_eos;
    d.vocab = e->vocab;
    d.max_model_len = e->max_model_len;

    pthread_mutex_lock(&e->mu);
    if (e->opt.max_queue > 0 && e->n_queued >= e->opt.max_queue) {
        pthread_mutex_unlock(&e->mu);
        *status = LLM_ERR_QUEUE_FULL;
        seterr(err, errlen, "too many requests waiting (max_queue %d)",
               e->opt.max_queue);
        return NULL;
    }
    d.seed = e->opt.seed * 0x9e3779b97f4a7c15ULL + ++e->n_submitted;
    pthread_mutex_unlock(&e->mu);

    r = engine_request_new(p, &d, status, err, errlen);
    if (r == NULL) {
        return NULL;
    }
    pthread_mutex_lock(&e->mu);
    if (e->opt.max_queue > 0 && e->n_queued >= e->opt.max_queue) {
        /* Someone else took the last slot meanwhile. */
        pthread_mutex_unlock(&e->mu);
        engine_request_unref(r);
        engine_request_unref(r);
        *status = LLM_ERR_QUEUE_FULL;
        seterr(err, errlen, "too many requests waiting (max_queue %d)",
               e->opt.max_queue);
        return NULL;
    }
    r->queued = 1;
    r->engine = e;
    e->n_queued++;
    if (prep_inline_ok(e, r)) {
        pthread_mutex_unlock(&e->mu);
        prep_inline(e, r);
        *status = LLM_OK;
        return r;
    }
    q_push(&e->prep_q, r);
    if (!atomic_load(&e->hb_prep_busy)) {
        atomic_store(&e->hb_prep_ns, now_ns());
        atomic_store(&e->hb_prep_busy, 1);
    }
    pthread_cond_signal(&e->prep_cond);
    pthread_mutex_unlock(&e->mu);
    *status = LLM_OK;
    return r;
}

/* ---- tokenizer access ------------------------------------------------------- */

static int tok_ready(llm_engine *e, char *err, size_t errlen)
{
    if (atomic_load(&e->state) != LLM_STATE_READY) {
        seterr(err, errlen, "the model is not loaded");
        return 0;
    }
    return 1;
}

int llm_tokenize(llm_engine *e, const char *text, size_t len,
                 int add_special_tokens, int32_t *ids, int max,
                 char *err, size_t errlen)
{
    int32_t *all = NULL;
    int n;

    if (!tok_ready(e, err, errlen)) {
        return -1;
    }
    n = tokenizer_encode(e->tok, text, len, add_special_tokens, &all, err,
                         errlen);
    if (n < 0) {
        return -1;
    }
    if (ids != NULL && max > 0) {
        memcpy(ids, all, (size_t) (n < max ? n : max) * sizeof(int32_t));
    }
    free(all);
    return n;
}

char *llm_render_chat(llm_engine *e, const char *messages_json,
                      const char *tools_json, const char *kwargs_json,
                      int add_generation_prompt, char *err, size_t errlen)
{
    size_t len;

    if (!tok_ready(e, err, errlen)) {
        return NULL;
    }
    if (e->ct == NULL) {
        seterr(err, errlen, "%s", e->ct_err);
        return NULL;
    }
    return chat_template_render(e->ct, messages_json, tools_json, kwargs_json,
                                add_generation_prompt, &len, err, errlen);
}

char *llm_detokenize(llm_engine *e, const int32_t *ids, int n,
                     int skip_special_tokens, size_t *len,
                     char *err, size_t errlen)
{
    if (!tok_ready(e, err, errlen)) {
        return NULL;
    }
    return tokenizer_decode(e->tok, ids, n, skip_special_tokens, len, err,
                            errlen);
}

const char *llm_token_text(llm_engine *e, int32_t id, size_t *len)
{
    if (atomic_load(&e->state) != LLM_STATE_READY) {
        return NULL;
    }
    return tokenizer_token_bytes(e->tok, id, len);
}

int llm_model_check(const char *model_dir, const char *tokenizer_dir,
                    char *err, size_t errlen)
{
    model_config cfg;
    generation_defaults gen;
    tokenizer *tok = NULL;
    chat_template *ct = NULL;
    char ct_err[LLM_ERR_MAX];

    if (model_dir == NULL) {
        seterr(err, errlen, "model directory is required");
        return -1;
    }
    if (model_config_load(model_dir, &cfg, &gen, err, errlen) != 0) {
        return -1;
    }
    if (load_tokenizer(tokenizer_dir ? tokenizer_dir : model_dir, &tok, &ct,
                       ct_err, sizeof(ct_err), err, errlen) != 0)
    {
        return -1;
    }
    if (ct) chat_template_free(ct);
    tokenizer_free(tok);
    return 0;
}
