/*
 * libllm: the public API of the inference engine.
 *
 * This is the only header the nginx module and the tools include.  It never
 * includes nginx headers and exposes no tensors.
 *
 * Threads.  An engine owns a loader/engine thread (the step loop) and a
 * preparation thread (chat template + tokenization of submitted requests).
 * Every function here may be called from any single caller thread (the
 * nginx event loop, a tool's main thread); the engine never calls back into
 * the caller except through the notify hook, which must be async-signal-ish
 * cheap (write to an eventfd, signal a condition variable).
 *
 * Ownership.  A request is reference counted: llm_submit() returns it with
 * one reference for the caller; the engine holds its own until it has
 * published the final event.  llm_request_release() drops the caller's
 * reference; memory is freed when neither side holds it, so a caller may
 * release (e.g. client went away) at any time, after llm_request_cancel().
 */
#ifndef LLM_H
#define LLM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LLM_ERR_MAX 512

typedef struct llm_engine  llm_engine;
typedef struct llm_request llm_request;

typedef enum {
    LLM_LOAD_AUTO = 0,     /* safetensors from the model directory */
    LLM_LOAD_DUMMY         /* random weights of the configured shape */
} llm_load_format;

/*
 * CPU matmul precision.  EXACT splits each activation into two bf16 terms
 * so that bf16 weights times f32 activations land within ~1e-5 of a float32
 * reference (the goldens' bar); FAST rounds activations to bf16 as
 * llama.cpp does: same decode speed (memory bound), about twice the
 * prefill throughput, ~1e-3 relative error in the logits.
 */
typedef enum {
    LLM_CPU_EXACT = 0,
    LLM_CPU_FAST
} llm_cpu_precision;

/*
 * KV cache element type.  AUTO: bfloat16 on CUDA and with the CPU's FAST
 * precision, float32 with the CPU's EXACT precision (the goldens' bar).
 * BFLOAT16 on the CPU halves the pool's bytes per token (twice the
 * sequences or context in the same kv_cache) and the bandwidth attention
 * needs, at ~3 significant digits for K and V.  FLOAT32 is CPU only.
 */
typedef enum {
    LLM_KV_AUTO = 0,
    LLM_KV_FLOAT32,
    LLM_KV_BFLOAT16
} llm_kv_dtype;

/*
 * FAILED: the model did not load, or a loaded engine gave up (a backend
 * reported a fatal error, or 3 forward passes failed in a row): every
 * request in it ended with an LLM_EV_ERROR (LLM_ERR_NOT_READY, or
 * LLM_ERR_INTERNAL for the failing batch) and llm_submit refuses with
 * LLM_ERR_NOT_READY.  llm_engine_get_state's text says which.
 */
typedef enum {
    LLM_STATE_LOADING = 0,
    LLM_STATE_READY,
    LLM_STATE_FAILED
} llm_engine_state;

typedef void (*llm_notify_fn)(void *ctx);

typedef struct {
    const char       *model_dir;      /* Hugging Face layout */
    const char       *tokenizer_dir;  /* NULL: model_dir */
    const char       *device;         /* "cpu" (default), "cuda", "cuda:N" */
    int               threads;        /* CPU compute threads; 0: online cores */
    int               max_model_len;  /* 0: min(config, 32768) */
    int               max_num_seqs;   /* 0: 256 */
    int               max_num_batched_tokens; /* 0: 2048 */
    int64_t           kv_cache_bytes; /* >0: bytes for the KV pool */
    double            kv_cache_fraction; /* used when bytes == 0; CUDA: of
                                           free device memory; CPU: ignored,
                                           default 512 MiB */
    int               block_size;     /* 0: 16 */
    int               enable_prefix_caching; /* -1: default (on), 0 off, 1 on */
    llm_load_format   load_format;
    llm_cpu_precision cpu_precision;  /* CPU backend: exact (default) or fast */
    llm_kv_dtype      kv_cache_dtype; /* KV cache elements (AUTO) */
    uint64_t          seed;           /* dummy weights and unseeded requests */
    int               max_queue;      /* waiting requests before submit
                                         refuses with LLM_ERR_QUEUE_FULL;
                                         0: unlimited */
    llm_notify_fn     notify;         /* called on the engine thread when
                                         some request has new events or
                                         the engine state changed */
    void             *notify_ctx;
    int               load_async;     /* 1: llm_engine_create returns at
                                         once, state LOADING until loaded */
} llm_engine_options;

void llm_engine_options_init(llm_engine_options *o);

/*
 * Cheap configuration-time check: parses config.json, generation_config.json
 * and tokenizer.json/tokenizer_config.json (no weights).  Returns 0, or -1
 * with a message naming the file in err.
 */
int llm_model_check(const char *model_dir, const char *tokenizer_dir,
                    char *err, size_t errlen);

/* Returns NULL with err filled on failure (synchronous part). */
llm_engine *llm_engine_create(const llm_engine_options *o,
                              char *err, size_t errlen);
/* Cancels everything, joins threads, frees.  Requests still referenced by
 * the caller stay valid until released. */
void llm_engine_destroy(llm_engine *e);

llm_engine_state llm_engine_get_state(llm_engine *e, char *err, size_t errlen);

/*
 * Liveness of the engine thread, read by a watchdog outside it (the nginx
 * worker's timer).  steps counts finished scheduler iterations; busy is 1
 * while requests wait or run; last_progress is CLOCK_MONOTONIC seconds of
 * the last finished step, or of the moment work arrived at an idle engine,
 * so "busy && now - last_progress > limit" means the engine is stuck.
 * Lock-free and safe from any thread.
 *
 * Fault injection for tests: the environment variable LLM_TEST_FAULT, read
 * by llm_engine_create, may hold "hang_after_steps=N" (the engine thread
 * stops making progress after N steps, as if a kernel never returned; it
 * still honours llm_engine_destroy), "fail_forward_after_steps=N" (every
 * forward pass after N steps fails, as a lost CUDA context would) or
 * "load_delay_ms=N" (loading takes N ms longer, as a large model's does).
 */
/*
 * Which thread does what (engine.c): the engine thread counts steps and
 * stamps each finished one; the preparation thread (chat template,
 * tokenization) stamps the start of each request it prepares.  busy is 1
 * while either thread has work: requests being prepared or queued for it,
 * or sequences the engine thread can run.  last_progress is then the older
 * stamp of the busy threads, so a long tokenization does not look like an
 * engine hang (each preparation gets the whole limit) and a steady stream
 * of preparations does not hide a stuck engine thread.  Sequences that are
 * all paused for slow readers (LLM_PAUSE_UNREAD_TOKENS) leave the engine
 * thread not busy: it waits for the readers, it is not stuck.  After a
 * runtime failure (LLM_STATE_FAILED) busy drops to 0.
 *
 * LLM_TEST_FAULT: any other value (and N not a non-negative decimal
 * number) makes llm_engine_create fail naming the variable; unset or empty
 * means no fault.  The hang happens in the forward pass of step N + 1 (so
 * an idle engine hangs on the next request it runs); failed passes do not
 * count as steps.
 */
typedef struct {
    uint64_t  steps;
    double    last_progress;
    int       busy;
} llm_engine_heartbeat;

void llm_engine_heartbeat_get(llm_engine *e, llm_engine_heartbeat *hb);

typedef struct {
    const char *model_type;       /* "qwen3" */
    int         max_model_len;
    int         vocab_size;
    int         n_layers;
    int         hidden_size;
    const char *device;           /* "cpu", "cuda:0" */
    int         block_size;
    int64_t     kv_blocks_total;
    const char *kv_cache_dtype;   /* "float32", "bfloat16" */
} llm_model_info;

void llm_engine_model_info(llm_engine *e, llm_model_info *info);

/* ---- requests ---------------------------------------------------------- */

typedef enum {
    LLM_PROMPT_TEXT = 0,    /* raw text, tokenized as is */
    LLM_PROMPT_TOKENS,      /* token ids */
    LLM_PROMPT_CHAT         /* messages rendered through the chat template */
} llm_prompt_kind;

typedef struct {
    int32_t token;
    float   bias;
} llm_logit_bias;

typedef struct {
    /* Negative / zero sentinel values mean "use generation_config.json's
     * default" where one exists, otherwise the neutral value. */
    float           temperature;        /* <0: default; 0: greedy */
    float           top_p;              /* <0: default; 1 off */
    int             top_k;              /* <0: default; 0 off */
    float           min_p;              /* <0: default; 0 off */
    float           presence_penalty;   /* 0 off */
    float           frequency_penalty;  /* 0 off */
    float           repetition_penalty; /* <=0: default; 1 off */
    int             has_seed;
    uint64_t        seed;
    int             logprobs;           /* 0: none; 1: sampled token's */
    int             top_logprobs;       /* alternatives per token, 0..20 */
    const llm_logit_bias *logit_bias;
    int             n_logit_bias;
} llm_sampling_params;

typedef struct {
    llm_prompt_kind kind;
    /* LLM_PROMPT_TEXT */
    const char     *text;
    size_t          text_len;
    /* LLM_PROMPT_TOKENS */
    const int32_t  *tokens;
    int             n_tokens;
    /* LLM_PROMPT_CHAT: JSON texts, parsed by the engine */
    const char     *messages_json;      /* array of OpenAI messages */
    const char     *tools_json;         /* array or NULL */
    const char     *template_kwargs_json; /* object or NULL */
    int             add_generation_prompt; /* chat: usually 1 */

    llm_sampling_params sampling;

    int             max_tokens;         /* <=0: up to max_model_len */
    int             min_tokens;
    int             ignore_eos;
    const char    *const *stop;         /* stop strings */
    int             n_stop;
    const int32_t  *stop_token_ids;
    int             n_stop_token_ids;
    int             include_stop_str_in_output;
    int             echo;               /* completions: events carry prompt */
    int             skip_special_tokens; /* 1 as in OpenAI servers */
    /* Constrained decoding (src/json_schema.h), JSON text or NULL:
     *   {"type": "json_object"}
     *   {"type": "json_schema", "schema": {...}}
     *   {"type": "tool_calls", "tools": [...OpenAI tools...],
     *    "name": "only_this_function" (optional), "parallel": bool}
     * Every generated token keeps the output a prefix of a match; the
     * request ends (finish stop) when the match is complete, and near
     * max_tokens the output is steered to close in time.  A schema
     * feature that is not supported refuses the request at submit. */
    const char     *constraint_json;

    void           *user;               /* caller's pointer, returned by
                                           llm_request_user() */
} llm_request_params;

void llm_request_params_init(llm_request_params *p);

typedef enum {
    LLM_OK = 0,
    LLM_ERR_INVALID = 1,     /* 400: bad parameter */
    LLM_ERR_TOO_LONG,        /* 400: prompt (+max_tokens) over max_model_len */
    LLM_ERR_QUEUE_FULL,      /* 429 */
    LLM_ERR_NOT_READY,       /* 503 */
    LLM_ERR_INTERNAL         /* 500 */
} llm_status;

/*
 * Copies everything it needs from p (the caller may free p's buffers on
 * return) and queues the request.  Returns NULL with *status and err set
 * when the request is refused synchronously (queue full, engine not ready,
 * obviously invalid parameters).  Errors found later (template error,
 * prompt too long after tokenization) arrive as an LLM_EV_ERROR event.
 */
llm_request *llm_submit(llm_engine *e, const llm_request_params *p,
                        llm_status *status, char *err, size_t errlen);

/* Stop generating; the engine publishes LLM_EV_FINISH(abort) and frees the
 * sequence's KV blocks within one step.  Safe to call more than once. */
void llm_request_cancel(llm_request *r);
void llm_request_release(llm_request *r);
void *llm_request_user(llm_request *r);

typedef enum {
    LLM_EV_NONE = 0,
    LLM_EV_STARTED,   /* prompt accepted: prompt_tokens known; send headers */
    LLM_EV_TOKEN,     /* one or more generated tokens and their text */
    LLM_EV_FINISH,    /* last event of a request */
    LLM_EV_ERROR      /* last event of a request, with status + message */
} llm_event_type;

typedef enum {
    LLM_FINISH_NONE = 0,
    LLM_FINISH_STOP,      /* eos, stop string, stop token */
    LLM_FINISH_LENGTH,    /* max_tokens or max_model_len */
    LLM_FINISH_ABORT,     /* cancelled */
    LLM_FINISH_ERROR
} llm_finish_reason;

typedef struct {
    int32_t token;
    float   logprob;
} llm_top_logprob;

typedef struct {
    int32_t          token;
    float            logprob;        /* of the sampled token (if asked) */
    int              n_top;
    llm_top_logprob *top;            /* n_top entries, most likely first */
    uint32_t         text_off;       /* byte offset of this token's text in
                                        the event's text (legacy logprobs) */
} llm_token_info;

typedef struct {
    int prompt_tokens;
    int completion_tokens;
    int cached_tokens;
} llm_usage;

typedef struct {
    llm_event_type    type;
    /* LLM_EV_TOKEN: text is the UTF-8-complete delta, stop strings held back
     * until they cannot match; may be empty while text is held back. */
    char             *text;
    size_t            text_len;
    int               n_tokens;
    llm_token_info   *tokens;        /* n_tokens (ids always; logprobs if asked) */
    /* LLM_EV_STARTED with echo: the prompt's tokens in tokens/text */
    llm_finish_reason finish_reason;
    const char       *stop_reason;   /* matched stop string, or NULL */
    int32_t           stop_token;    /* matched stop token id, or -1 */
    llm_usage         usage;         /* STARTED: prompt; FINISH: all */
    llm_status        status;        /* LLM_EV_ERROR */
    char             *message;       /* LLM_EV_ERROR */
    const char       *param;         /* LLM_EV_ERROR: offending field or NULL */
} llm_event;

/*
 * Pops the oldest pending event into *ev (caller frees with llm_event_free).
 * Returns 1 if an event was popped, 0 if none is pending.  Never blocks.
 *
 * Backpressure: once a request has LLM_PAUSE_UNREAD_TOKENS generated tokens
 * queued and not yet popped, the engine stops generating for it (it keeps
 * its KV blocks; they may be preempted for other requests, as any) until a
 * pop brings the count below the bound, which wakes the engine.  Tokens,
 * not events: consecutive TOKEN events coalesce while unread.  A paused
 * request does not count against max_num_seqs for admitting others.
 */
#define LLM_PAUSE_UNREAD_TOKENS 64

int  llm_request_next_event(llm_request *r, llm_event *ev);
void llm_event_free(llm_event *ev);

/*
 * Requests with events that the caller has not yet seen since the last call
 * (each at most once per call).  The caller holds its own reference; the
 * returned pointers are borrowed.  Returns the count (<= max); call again
 * while it returns max.
 */
int llm_engine_ready(llm_engine *e, llm_request **out, int max);

/* Blocks until some request has events or timeout_ms passes (tools). */
void llm_engine_wait(llm_engine *e, int timeout_ms);

/* ---- tokenizer access (thread-safe; for /tokenize, /detokenize) -------- */

/* Returns the number of ids (written up to max), or -1 with err. */
int llm_tokenize(llm_engine *e, const char *text, size_t len,
                 int add_special_tokens, int32_t *ids, int max,
                 char *err, size_t errlen);
/* Renders the chat template; returns malloc'ed text or NULL with err. */
char *llm_render_chat(llm_engine *e, const char *messages_json,
                      const char *tools_json, const char *kwargs_json,
                      int add_generation_prompt, char *err, size_t errlen);
/* Returns malloc'ed UTF-8 (invalid sequences replaced by U+FFFD) or NULL
 * with err (unknown id). */
char *llm_detokenize(llm_engine *e, const int32_t *ids, int n,
                     int skip_special_tokens, size_t *len,
                     char *err, size_t errlen);
/* Text of one token id as raw bytes (may be partial UTF-8); NULL if the id
 * is unknown.  The pointer is valid for the engine's lifetime. */
const char *llm_token_text(llm_engine *e, int32_t id, size_t *len);

/* ---- statistics --------------------------------------------------------- */

#define LLM_HIST_BUCKETS 16

typedef struct {
    int      n;                           /* buckets used */
    double   le[LLM_HIST_BUCKETS];        /* upper bounds (seconds) */
    uint64_t count[LLM_HIST_BUCKETS];     /* cumulative */
    uint64_t total;
    double   sum;
} llm_histogram;

typedef struct {
    int           running;
    int           waiting;
    int64_t       kv_blocks_total;
    int64_t       kv_blocks_used;
    int           kv_block_size;          /* tokens a block (once loaded) */
    int           kv_cache_bf16;          /* 1: bf16 K/V, 0: float32 */
    uint64_t      prefix_cache_queries;   /* prompt tokens looked up */
    uint64_t      prefix_cache_hits;      /* prompt tokens found */
    uint64_t      preemptions;
    uint64_t      prompt_tokens;          /* processed (prefilled) */
    uint64_t      generation_tokens;
    uint64_t      requests_finished[5];   /* by llm_finish_reason */
    uint64_t      steps;
    llm_histogram ttft;                   /* seconds */
    llm_histogram itl;                    /* inter-token latency */
    llm_histogram e2e;                    /* request latency */
    llm_histogram step_time;
    int           paused;                 /* of running + waiting: held
                                             for their readers */
    uint64_t      forward_errors;         /* failed forward passes */
} llm_stats;

void llm_engine_stats(llm_engine *e, llm_stats *s);

#ifdef __cplusplus
}
#endif

#endif /* LLM_H */
