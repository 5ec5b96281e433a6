/*
 * Engine internals shared by engine.c (API, threads, step loop) and
 * engine_request.c (request memory, event queues, stop strings).
 * Not part of the public API: only engine files and engine tests use it.
 */
#ifndef LLM_ENGINE_INTERNAL_H
#define LLM_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "grammar.h"
#include "llm.h"
#include "model.h"
#include "sampler.h"
#include "scheduler.h"
#include "stop_matcher.h"
#include "tokenizer.h"

typedef struct engine_event_node {
    llm_event                 ev;
    struct engine_event_node *next;
} engine_event_node;

struct llm_request {
    /* Shared between the caller and the engine. */
    atomic_int         refs;             /* caller + engine (+ ready list) */
    atomic_int         cancelled;
    atomic_int         caller_released;
    pthread_mutex_t    ev_mu;            /* guards the event list */
    engine_event_node *ev_head, *ev_tail;
    int                ev_tail_open;     /* tail TOKEN event may coalesce */
    int                in_ready;         /* guarded by the engine's ready_mu */
    int                final_pushed;     /* FINISH/ERROR queued (ev_mu) */
    atomic_int         unread_tokens;    /* generated tokens queued and not
                                            yet popped (written under ev_mu,
                                            read by the engine to pause) */
    struct llm_engine *engine;           /* for waking it (resume, cancel);
                                            not touched after final_pushed */
    void              *user;

    /* Copied parameters (read-only after llm_submit). */
    llm_prompt_kind    kind;
    char              *text;
    size_t             text_len;
    int32_t           *prompt_ids;      /* LLM_PROMPT_TOKENS */
    int                n_prompt_ids;
    char              *messages_json, *tools_json, *kwargs_json;
    int                add_generation_prompt;
    llm_logit_bias    *logit_bias;
    sampler_params     sp;               /* resolved, no sentinels */
    int                max_tokens;       /* resolved: > 0 */
    int                max_tokens_given; /* caller asked for a limit */
    int                min_tokens;
    int                ignore_eos;
    stop_matcher      *sm;               /* NULL without stop strings */
    int32_t           *stop_ids;
    int                n_stop_ids;
    int32_t           *suppress_ids;     /* eos ids, then stop ids */
    int                n_suppress_ids;
    int                n_eos_ids;        /* leading eos entries of it */
    int                include_stop_str;
    int                echo;
    int                skip_special;
    grammar           *grammar;          /* constraint_json compiled, or NULL */

    /* Engine side: touched by the prep thread, then the engine thread. */
    struct llm_request *qnext;           /* prep / incoming queue link */
    sched_seq          seq;
    int                seq_inited;
    int                queued;           /* counted in the engine's queue */
    sampler_rng        rng;
    grammar_matcher   *gm;               /* engine thread: made at first token */
    tokenizer_stream   ts;
    int                n_generated;
    double             t_submit, t_first, t_last;
};

/* ---- engine_request.c -------------------------------------------------- */

/* What a request's defaults and checks need to know of the model. */
typedef struct {
    generation_defaults gen;
    const int32_t      *eos_ids;
    int                 n_eos;
    int                 vocab;
    int                 max_model_len;
    uint64_t            seed;        /* for requests without their own */
} engine_request_defaults;

/* Validates and copies p (strings, arrays) into a new request with
 * refs = 2 (caller + engine).  NULL with *status and err on failure. */
llm_request *engine_request_new(const llm_request_params *p,
                                const engine_request_defaults *d,
                                llm_status *status, char *err, size_t errlen);
/* Drops one reference; the last one frees. */
void engine_request_unref(llm_request *r);

/* Event queue (engine side pushes, caller pops). */
void engine_push_event(llm_request *r, llm_event *ev);
/* Appends tokens and text to the open TOKEN event at the tail, or pushes
 * a new one.  Takes ownership of nothing: copies. */
int  engine_push_tokens(llm_request *r, const llm_token_info *tok, int n,
                        const char *text, size_t len);
int  engine_push_error(llm_request *r, llm_status st, const char *param,
                       const char *msg);

double engine_now(void);

/* ---- engine.c, for engine_request.c ------------------------------------- */

/* Makes the engine thread re-examine its sequences (a paused one may run
 * again, a cancelled one must be reaped).  Caller thread; takes e->mu. */
void engine_kick(struct llm_engine *e);

/* ---- test hook (engine.c) ---------------------------------------------- */

/*
 * Called on the engine thread with each request's raw logits before it is
 * sampled (n_generated tokens generated so far).  Tests compare logits
 * across scheduling choices with it.  Set before submitting requests.
 */
typedef void (*engine_logits_hook)(void *ctx, llm_request *r, int n_generated,
                                   const float *logits, int vocab);
void engine_set_logits_hook(llm_engine *e, engine_logits_hook fn, void *ctx);

#endif
