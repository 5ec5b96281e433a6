/*
 * Requests: parameter copies and checks, reference counting, per-request
 * event queues, stop-string hold-back.
 */
#include "engine_internal.h"
#include "json_schema.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ENGINE_MAX_STOP      64
#define ENGINE_MAX_STOP_LEN  1024

double engine_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + ts.tv_nsec * 1e-9;
}

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

static void *dup_mem(const void *p, size_t n)
{
    void *q = malloc(n ? n : 1);

    if (q != NULL && n) {
        memcpy(q, p, n);
    }
    return q;
}

static char *dup_str(const char *s)
{
    return s ? dup_mem(s, strlen(s) + 1) : NULL;
}

static void request_free(llm_request *r)
{
    engine_event_node *n, *next;

    for (n = r->ev_head; n != NULL; n = next) {
        next = n->next;
        llm_event_free(&n->ev);
        free(n);
    }
    pthread_mutex_destroy(&r->ev_mu);
    free(r->text);
    free(r->prompt_ids);
    free(r->messages_json);
    free(r->tools_json);
    free(r->kwargs_json);
    free(r->logit_bias);
    stop_matcher_free(r->sm);
    free(r->stop_ids);
    free(r->suppress_ids);
    grammar_matcher_free(r->gm);
    grammar_free(r->grammar);
    if (r->seq_inited) {
        sched_seq_destroy(&r->seq);
    }
    free(r);
}

void engine_request_unref(llm_request *r)
{
    if (atomic_fetch_sub(&r->refs, 1) == 1) {
        request_free(r);
    }
}

static float pick(float v, float dflt, float neutral)
{
    if (v >= 0) {
        return v;
    }
    return dflt >= 0 ? dflt : neutral;
}

llm_request *engine_request_new(const llm_request_params *p,
                                const engine_request_defaults *d,
                                llm_status *status, char *err, size_t errlen)
{
    const llm_sampling_params *s = &p->sampling;
    llm_request *r;
    int i;

    *status = LLM_ERR_INVALID;
    switch (p->kind) {
    case LLM_PROMPT_TEXT:
        if (p->text == NULL) {
            seterr(err, errlen, "prompt text is missing");
            return NULL;
        }
        break;
    case LLM_PROMPT_TOKENS:
        if (p->n_tokens < 0 || (p->n_tokens > 0 && p->tokens == NULL)) {
            seterr(err, errlen, "prompt token ids are missing");
            return NULL;
        }
        for (i = 0; i < p->n_tokens; i++) {
            if (p->tokens[i] < 0 || p->tokens[i] >= d->vocab) {
                seterr(err, errlen, "prompt token id %d at index %d is out "
                       "of range [0, %d)", p->tokens[i], i, d->vocab);
                return NULL;
            }
        }
        break;
    case LLM_PROMPT_CHAT:
        if (p->messages_json == NULL) {
            seterr(err, errlen, "messages are missing");
            return NULL;
        }
        break;
    default:
        seterr(err, errlen, "unknown prompt kind %d", (int) p->kind);
        return NULL;
    }
    if (s->top_p == 0 || s->top_p > 1) {
        seterr(err, errlen, "top_p must be in (0, 1], got %g", s->top_p);
        return NULL;
    }
    if (s->min_p > 1) {
        seterr(err, errlen, "min_p must be in [0, 1], got %g", s->min_p);
        return NULL;
    }
    if (s->top_logprobs < 0 || s->top_logprobs > 20) {
        seterr(err, errlen, "top_logprobs must be in [0, 20], got %d",
               s->top_logprobs);
        return NULL;
    }
    if (p->min_tokens < 0 || (p->max_tokens > 0 && p->min_tokens > p->max_tokens)) {
        seterr(err, errlen, "min_tokens (%d) must be in [0, max_tokens]",
               p->min_tokens);
        return NULL;
    }
    if (p->n_stop < 0 || p->n_stop > ENGINE_MAX_STOP
        || (p->n_stop > 0 && p->stop == NULL))
    {
        seterr(err, errlen, "at most %d stop strings", ENGINE_MAX_STOP);
        return NULL;
    }
    for (i = 0; i < p->n_stop; i++) {
        size_t l = p->stop[i] ? strlen(p->stop[i]) : 0;

        if (l == 0 || l > ENGINE_MAX_STOP_LEN) {
            seterr(err, errlen, "stop string %d must have 1 to %d bytes", i,
                   ENGINE_MAX_STOP_LEN);
            return NULL;
        }
    }
    if (p->n_stop_token_ids < 0
        || (p->n_stop_token_ids > 0 && p->stop_token_ids == NULL))
    {
        seterr(err, errlen, "stop_token_ids are missing");
        return NULL;
    }
    if (s->n_logit_bias < 0 || (s->n_logit_bias > 0 && s->logit_bias == NULL)) {
        seterr(err, errlen, "logit_bias entries are missing");
        return NULL;
    }
    for (i = 0; i < s->n_logit_bias; i++) {
        if (s->logit_bias[i].token < 0 || s->logit_bias[i].token >= d->vocab) {
            seterr(err, errlen, "logit_bias token id %d is out of range "
                   "[0, %d)", s->logit_bias[i].token, d->vocab);
            return NULL;
        }
    }
    *status = LLM_ERR_INTERNAL;
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&r->refs, 2);
    atomic_init(&r->cancelled, 0);
    atomic_init(&r->caller_released, 0);
    atomic_init(&r->unread_tokens, 0);
    if (pthread_mutex_init(&r->ev_mu, NULL) != 0) {
        free(r);
        seterr(err, errlen, "pthread_mutex_init failed");
        return NULL;
    }
    r->user = p->user;
    r->kind = p->kind;
    r->add_generation_prompt = p->add_generation_prompt;
    if (p->kind == LLM_PROMPT_TEXT) {
        r->text_len = p->text_len ? p->text_len : strlen(p->text);
        if ((r->text = dup_mem(p->text, r->text_len + 1)) == NULL) goto oom;
        r->text[r->text_len] = '\0';
    } else if (p->kind == LLM_PROMPT_TOKENS) {
        r->n_prompt_ids = p->n_tokens;
        r->prompt_ids = dup_mem(p->tokens, (size_t) p->n_tokens * 4);
        if (r->prompt_ids == NULL) goto oom;
    } else {
        if ((r->messages_json = dup_str(p->messages_json)) == NULL) goto oom;
        if (p->tools_json && (r->tools_json = dup_str(p->tools_json)) == NULL)
            goto oom;
        if (p->template_kwargs_json
            && (r->kwargs_json = dup_str(p->template_kwargs_json)) == NULL)
            goto oom;
    }

    /* sampling, with generation_config.json defaults for the sentinels */
    r->sp.temperature = pick(s->temperature, d->gen.temperature, 1.0f);
    r->sp.top_p = pick(s->top_p, d->gen.top_p, 1.0f);
    r->sp.top_k = s->top_k >= 0 ? s->top_k
                  : (d->gen.top_k >= 0 ? d->gen.top_k : 0);
    r->sp.min_p = pick(s->min_p, d->gen.min_p, 0.0f);
    r->sp.presence_penalty = s->presence_penalty;
    r->sp.frequency_penalty = s->frequency_penalty;
    r->sp.repetition_penalty = s->repetition_penalty > 0
        ? s->repetition_penalty
        : (d->gen.repetition_penalty > 0 ? d->gen.repetition_penalty : 1.0f);
    if (s->n_logit_bias > 0 && s->logit_bias != NULL) {
        r->logit_bias = dup_mem(s->logit_bias,
                                (size_t) s->n_logit_bias * sizeof(llm_logit_bias));
        if (r->logit_bias == NULL) goto oom;
        r->sp.logit_bias = r->logit_bias;
        r->sp.n_logit_bias = s->n_logit_bias;
    }
    r->sp.logprobs = s->logprobs || s->top_logprobs > 0;
    r->sp.top_logprobs = s->top_logprobs;
    if (s->has_seed) {
        sampler_rng_seed(&r->rng, s->seed);
    } else {
        /* Unseeded requests must not all draw the same numbers: mix a
         * per-process request counter into the engine's seed. */
        static atomic_uint_fast64_t unseeded_count;
        uint64_t k = atomic_fetch_add(&unseeded_count, 1) + 1;
        sampler_rng_seed(&r->rng, d->seed ^ (k * 0x9E3779B97F4A7C15ull));
    }

    r->max_tokens_given = p->max_tokens > 0;
    r->max_tokens = p->max_tokens > 0 ? p->max_tokens : d->max_model_len;
    r->min_tokens = p->min_tokens;
    r->ignore_eos = p->ignore_eos;
    r->include_stop_str = p->include_stop_str_in_output;
    r->echo = p->echo;
    r->skip_special = p->skip_special_tokens;

    if (p->n_stop > 0) {
        r->sm = stop_matcher_create(p->stop, p->n_stop,
                                    p->include_stop_str_in_output, err, errlen);
        if (r->sm == NULL) {
            request_free(r);
            *status = LLM_ERR_INVALID;
            return NULL;
        }
    }
    if (p->constraint_json != NULL) {
        /* Compiled here so that an unsupported schema is refused at
         * submit (the caller answers 400 naming the keyword). */
        const char *param;

        r->grammar = json_schema_constraint(p->constraint_json, err, errlen,
                                            &param);
        if (r->grammar == NULL) {
            request_free(r);
            *status = LLM_ERR_INVALID;
            return NULL;
        }
    }
    if (p->n_stop_token_ids > 0) {
        r->stop_ids = dup_mem(p->stop_token_ids, (size_t) p->n_stop_token_ids * 4);
        if (r->stop_ids == NULL) goto oom;
        r->n_stop_ids = p->n_stop_token_ids;
    }
    /* eos ids first, then stop ids: masked together below min_tokens */
    r->suppress_ids = malloc((size_t) (d->n_eos + r->n_stop_ids + 1) * 4);
    if (r->suppress_ids == NULL) goto oom;
    for (i = 0; i < d->n_eos; i++) {
        r->suppress_ids[r->n_suppress_ids++] = d->eos_ids[i];
    }
    r->n_eos_ids = d->n_eos;
    for (i = 0; i < r->n_stop_ids; i++) {
        r->suppress_ids[r->n_suppress_ids++] = r->stop_ids[i];
    }
    r->sp.eos_ids = r->suppress_ids;
    r->sp.n_eos = r->n_suppress_ids;
    tokenizer_stream_init(&r->ts, r->skip_special);
    r->t_submit = engine_now();
    *status = LLM_OK;
    return r;

oom:
    request_free(r);
    seterr(err, errlen, "out of memory copying the request");
    return NULL;
}

/* ---- caller side -------------------------------------------------------- */

/* Wakes the engine for r unless r has ended.  The engine is alive while r
 * has not: llm_engine_destroy ends every request and runs on the caller's
 * thread, the only one that calls this. */
static void kick_engine(llm_request *r)
{
    int ended;

    pthread_mutex_lock(&r->ev_mu);
    ended = r->final_pushed;
    pthread_mutex_unlock(&r->ev_mu);
    if (!ended && r->engine != NULL) {
        engine_kick(r->engine);
    }
}

void llm_request_cancel(llm_request *r)
{
    if (r != NULL && !atomic_exchange(&r->cancelled, 1)) {
        /* A paused sequence is in no batch: the engine may be asleep. */
        kick_engine(r);
    }
}

void llm_request_release(llm_request *r)
{
    if (r == NULL) {
        return;
    }
    /* Nobody can read its events any more: stop generating too. */
    atomic_store(&r->caller_released, 1);
    llm_request_cancel(r);
    engine_request_unref(r);
}

void *llm_request_user(llm_request *r)
{
    return r ? r->user : NULL;
}

int llm_request_next_event(llm_request *r, llm_event *ev)
{
    engine_event_node *n;
    int resume = 0;

    memset(ev, 0, sizeof(*ev));
    pthread_mutex_lock(&r->ev_mu);
    n = r->ev_head;
    if (n != NULL) {
        r->ev_head = n->next;
        if (r->ev_head == NULL) {
            r->ev_tail = NULL;
        }
        if (n->ev.type == LLM_EV_TOKEN) {
            int before = atomic_fetch_sub(&r->unread_tokens, n->ev.n_tokens);

            /* Crossing back below the bound: the engine may have paused
             * this request and gone to sleep. */
            resume = before >= LLM_PAUSE_UNREAD_TOKENS
                     && before - n->ev.n_tokens < LLM_PAUSE_UNREAD_TOKENS
                     && !r->final_pushed;
        }
    }
    pthread_mutex_unlock(&r->ev_mu);
    if (n == NULL) {
        return 0;
    }
    if (resume && r->engine != NULL) {
        engine_kick(r->engine);
    }
    *ev = n->ev;
    free(n);
    return 1;
}

void llm_event_free(llm_event *ev)
{
    int i;

    if (ev == NULL) {
        return;
    }
    for (i = 0; i < ev->n_tokens; i++) {
        free(ev->tokens[i].top);
    }
    free(ev->tokens);
    free(ev->text);
    free(ev->message);
    memset(ev, 0, sizeof(*ev));
}

/* ---- engine side: events ------------------------------------------------ */

void engine_push_event(llm_request *r, llm_event *ev)
{
    engine_event_node *n = malloc(sizeof(*n));
    int final = ev->type == LLM_EV_FINISH || ev->type == LLM_EV_ERROR;

    if (n == NULL) {
        /* Out of memory: the event is lost, but its memory is not leaked;
         * a lost last event still ends the request for kick_engine. */
        if (final) {
            pthread_mutex_lock(&r->ev_mu);
            r->final_pushed = 1;
            pthread_mutex_unlock(&r->ev_mu);
        }
        llm_event_free(ev);
        return;
    }
    n->ev = *ev;
    n->next = NULL;
    pthread_mutex_lock(&r->ev_mu);
    if (r->ev_tail) r->ev_tail->next = n; else r->ev_head = n;
    r->ev_tail = n;
    r->ev_tail_open = ev->type == LLM_EV_TOKEN;
    if (ev->type == LLM_EV_TOKEN) {
        atomic_fetch_add(&r->unread_tokens, ev->n_tokens);
    }
    if (final) {
        r->final_pushed = 1;
    }
    pthread_mutex_unlock(&r->ev_mu);
    memset(ev, 0, sizeof(*ev));
}

/* Appends tokens (deep copy of their top lists) and text to ev. */
static int event_append(llm_event *ev, const llm_token_info *tok, int n,
                        const char *text, size_t len)
{
    char *t = realloc(ev->text, ev->text_len + len + 1);
    llm_token_info *ti;
    int i;

    if (t == NULL) {
        return -1;
    }
    ev->text = t;
    ti = realloc(ev->tokens, (size_t) (ev->n_tokens + n) * sizeof(*ti) + 1);
    if (ti == NULL) {
        return -1;
    }
    ev->tokens = ti;
    for (i = 0; i < n; i++) {
        llm_token_info *d = &ev->tokens[ev->n_tokens];

        *d = tok[i];
        d->text_off += (uint32_t) ev->text_len;
        d->top = NULL;
        if (tok[i].n_top > 0) {
            d->top = dup_mem(tok[i].top, (size_t) tok[i].n_top * sizeof(llm_top_logprob));
            if (d->top == NULL) {
                d->n_top = 0;
            }
        }
        ev->n_tokens++;
    }
    if (len) {
        memcpy(ev->text + ev->text_len, text, len);
    }
    ev->text_len += len;
    ev->text[ev->text_len] = '\0';
    return 0;
}

int engine_push_tokens(llm_request *r, const llm_token_info *tok, int n,
                       const char *text, size_t len)
{
    llm_event ev;
    int rc;

    pthread_mutex_lock(&r->ev_mu);
    if (r->ev_tail != NULL && r->ev_tail_open
        && r->ev_tail->ev.type == LLM_EV_TOKEN)
    {
        /* The consumer has not taken the last event yet: coalesce. */
        int before = r->ev_tail->ev.n_tokens;

        rc = event_append(&r->ev_tail->ev, tok, n, text, len);
        atomic_fetch_add(&r->unread_tokens, r->ev_tail->ev.n_tokens - before);
        pthread_mutex_unlock(&r->ev_mu);
        return rc;
    }
    pthread_mutex_unlock(&r->ev_mu);

    memset(&ev, 0, sizeof(ev));
    ev.type = LLM_EV_TOKEN;
    ev.stop_token = -1;
    if (event_append(&ev, tok, n, text, len) != 0) {
        llm_event_free(&ev);
        return -1;
    }
    engine_push_event(r, &ev);
    return 0;
}

int engine_push_error(llm_request *r, llm_status st, const char *param,
                      const char *msg)
{
    llm_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.type = LLM_EV_ERROR;
    ev.finish_reason = LLM_FINISH_ERROR;
    ev.stop_token = -1;
    ev.status = st;
    ev.param = param;
    ev.message = dup_str(msg);
    engine_push_event(r, &ev);
    return 0;
}
