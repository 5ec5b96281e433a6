/*
 * ngx_http_llm_module: types shared by the module's files.
 *
 *   ngx_http_llm_module.c       directives, configuration, lifecycle, dispatch
 *   src/ngx_http_llm_bridge.c   engine -> event loop: eventfd, ready requests,
 *                               orphaned engine requests
 *   src/ngx_http_llm_generate.c chat/completions: body, submit, streaming,
 *                               backpressure, keepalive, timeouts, cleanup
 *   src/ngx_http_llm_endpoints.c models, health, metrics (and the shared zone
 *                               of every worker's stats), tokenize, detokenize
 *   src/ngx_http_llm_reply.c    JSON replies and OpenAI errors, including the
 *                               filter that turns nginx's own HTML error
 *                               pages (413, ...) into JSON in llm locations
 *   src/ngx_http_llm_prefix_key.c  $llm_prefix_key, the upstream hash key
 *                               of a front nginx (prefix-cache affinity)
 */
#ifndef NGX_HTTP_LLM_MODULE_H
#define NGX_HTTP_LLM_MODULE_H

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "llm.h"
#include "openai.h"

typedef struct ngx_http_llm_ctx_s  ngx_http_llm_ctx_t;

/*
 * Build with -DNGX_HTTP_LLM_TIMING=1 (e.g. NGX_CC_OPT) to log, per
 * generation request at the notice level, CLOCK_MONOTONIC timestamps of the
 * way to the first token: content handler, body read, submitted, STARTED
 * popped, first token popped, first token passed to nginx's output.  Used
 * for the TTFT overhead analysis in docs/benchmarks-serving.md.
 */
#ifndef NGX_HTTP_LLM_TIMING
#define NGX_HTTP_LLM_TIMING  0
#endif

enum {
    NGX_HTTP_LLM_T_HANDLER = 0,
    NGX_HTTP_LLM_T_BODY,
    NGX_HTTP_LLM_T_SUBMITTED,
    NGX_HTTP_LLM_T_STARTED,
    NGX_HTTP_LLM_T_TOKEN,
    NGX_HTTP_LLM_T_WRITTEN,
    NGX_HTTP_LLM_T_N
};

/* One llm_model directive; the engine exists in worker processes only. */
typedef struct {
    ngx_str_t               name;            /* llm_model NAME */
    ngx_str_t               path;            /* model directory */
    ngx_str_t               tokenizer;       /* "" = path */
    ngx_str_t               device;          /* cpu | cuda | cuda:N */
    ngx_array_t            *devices;         /* devices=0,2,3: ngx_uint_t
                                                GPU per worker, or NULL */
    ngx_str_t               served_name;     /* "model" in the API */
    ngx_int_t               threads;
    ngx_int_t               max_model_len;
    ngx_int_t               max_num_seqs;
    ngx_int_t               max_num_batched_tokens;
    int64_t                 kv_cache_bytes;
    double                  kv_cache_fraction;
    ngx_int_t               prefix_caching;  /* -1 default, 0, 1 */
    ngx_uint_t              dummy;           /* load_format=dummy */
    ngx_uint_t              fast;            /* precision=fast (CPU) */
    ngx_uint_t              kv_dtype;        /* kv_cache_dtype=: llm_kv_dtype */
    ngx_int_t               seed;
    ngx_msec_t              watchdog;        /* watchdog=: stall limit */
    time_t                  created;

    /* per worker */
    llm_engine             *engine;
    char                    worker_device[32]; /* this worker's: cuda:1 */
    ngx_uint_t              load_reported;   /* load end in error_log */
    char                    error[LLM_ERR_MAX]; /* why engine is NULL */
    ngx_int_t               active;          /* engine requests in flight */
    ngx_queue_t             requests;        /* ngx_http_llm_ctx_t with
                                                engine requests */
    ngx_uint_t              served;          /* the engine reached READY */
    ngx_uint_t              broken;          /* stalled or failed after
                                                READY: 503s until the
                                                worker is replaced */
    ngx_uint_t              stuck;           /* the engine thread hangs:
                                                it cannot be joined */
    char                    failure[LLM_ERR_MAX]; /* why broken */
} ngx_http_llm_model_t;

/*
 * What the engines' notify hook needs, shared by every engine of a worker:
 * the eventfd, and "pending", set by the engine thread whose write wakes the
 * event loop and cleared by the handler before it polls the engines; while
 * it is set, further notifies need no write (the handler has yet to run).
 */
typedef struct {
    int                     fd;
    ngx_atomic_t            pending;
} ngx_http_llm_notify_t;

typedef struct {
    ngx_array_t             models;          /* ngx_http_llm_model_t */

    /* per worker: the engines' wake-up channel */
    ngx_http_llm_notify_t   notify;
    ngx_connection_t       *efd_conn;
    ngx_uint_t              efd_clear;       /* edge-triggered: no read() */
    ngx_queue_t             orphans;         /* ngx_http_llm_slot_t */
    ngx_event_t             reaper;          /* releases finished orphans */
    ngx_event_t             watchdog;        /* heartbeats, once a second;
                                                also refreshes this worker's
                                                /metrics snapshots */
    ngx_shm_zone_t         *metrics_zone;    /* every worker's engine stats
                                                (NULL without llm_model) */
    ngx_int_t               metrics_workers; /* worker slots per model */
#if (NGX_THREADS)
    ngx_thread_pool_t      *thread_pool;     /* tokenize/detokenize work */
#endif
} ngx_http_llm_main_conf_t;

typedef struct {
    ngx_str_t               pass_name;       /* llm_pass NAME */
    ngx_http_llm_model_t   *model;           /* resolved at merge */
    ngx_array_t            *api_keys;        /* ngx_str_t; NULL: unset,
                                                empty: off */
    ngx_uint_t              api_key_exempt;  /* NGX_HTTP_LLM_EXEMPT_* routes
                                                answered without the key */
    ngx_int_t               max_tokens;
    ngx_int_t               queue_size;
    ngx_msec_t              request_timeout;
    ngx_msec_t              sse_keepalive;
    ngx_int_t               max_n;
    ngx_int_t               prefix_key_bytes; /* llm_prefix_key_bytes */
} ngx_http_llm_loc_conf_t;

/*
 * One engine request.  malloc'ed, not from the request pool: it outlives the
 * HTTP request when the client goes away before the engine has published the
 * final event (then ctx is NULL and the slot waits in mcf->orphans).
 */
typedef struct {
    ngx_http_llm_ctx_t     *ctx;
    llm_request            *req;
    ngx_http_llm_model_t   *model;
    ngx_uint_t              index;           /* choice index */
    ngx_queue_t             queue;           /* in mcf->orphans */
    unsigned                done:1;          /* final event popped */
} ngx_http_llm_slot_t;

typedef enum {
    NGX_HTTP_LLM_ROUTE_NONE = 0,
    NGX_HTTP_LLM_ROUTE_CHAT,
    NGX_HTTP_LLM_ROUTE_COMPLETIONS,
    NGX_HTTP_LLM_ROUTE_MODELS,
    NGX_HTTP_LLM_ROUTE_MODEL,                /* /models/{id} */
    NGX_HTTP_LLM_ROUTE_HEALTH,
    NGX_HTTP_LLM_ROUTE_METRICS,
    NGX_HTTP_LLM_ROUTE_TOKENIZE,
    NGX_HTTP_LLM_ROUTE_DETOKENIZE,
    NGX_HTTP_LLM_ROUTE_VERSION
} ngx_http_llm_route_e;

/* llm_api_key_exempt: routes that do not need the key (bit mask) */
#define NGX_HTTP_LLM_EXEMPT_HEALTH     0x01
#define NGX_HTTP_LLM_EXEMPT_METRICS    0x02
#define NGX_HTTP_LLM_EXEMPT_MODELS     0x04
#define NGX_HTTP_LLM_EXEMPT_TOKENIZE   0x08
#define NGX_HTTP_LLM_EXEMPT_VERSION    0x10

/* Per HTTP request of the chat/completions endpoints (request pool). */
struct ngx_http_llm_ctx_s {
    ngx_http_request_t       *request;
    ngx_http_llm_loc_conf_t  *lcf;
    ngx_http_llm_main_conf_t *mcf;
    ngx_http_llm_route_e      route;
    oai_request               oreq;
    oai_response              oresp;
    ngx_uint_t                n_slots;
    ngx_http_llm_slot_t     **slots;
    ngx_uint_t                n_done;
    oai_buf                   out;           /* SSE bytes not yet passed on */
    ngx_chain_t              *free;
    ngx_chain_t              *busy;
    ngx_event_t               tick;          /* keepalive comments; before
                                                submit: the load wait */
    ngx_event_t               timeout;       /* llm_request_timeout */
    ngx_msec_t                load_wait_start; /* parked while loading */
    oai_error                 error;         /* the request's failure */
    ngx_queue_t               link;          /* in model->requests */
    unsigned                  parsed:1;
    unsigned                  headers_sent:1;
    unsigned                  blocked:1;     /* nginx holds unsent output */
    unsigned                  failed:1;      /* error is set */
    unsigned                  completed:1;   /* final response passed on */
    unsigned                  sent_since_tick:1;
    unsigned                  in_drain:1;
    unsigned                  linked:1;      /* link is in a queue */
    unsigned                  load_waiting:1; /* load_wait_start is set */
#if (NGX_HTTP_LLM_TIMING)
    /* CLOCK_MONOTONIC ms of the first-token path, logged at the end */
    double                    t[NGX_HTTP_LLM_T_N];
#endif
};

extern ngx_module_t  ngx_http_llm_module;

/* ngx_http_llm_bridge.c */
ngx_int_t ngx_http_llm_bridge_init(ngx_cycle_t *cycle,
    ngx_http_llm_main_conf_t *mcf);
void ngx_http_llm_bridge_exit(ngx_cycle_t *cycle,
    ngx_http_llm_main_conf_t *mcf);
void ngx_http_llm_engine_notify(void *data);
void ngx_http_llm_orphan(ngx_http_llm_main_conf_t *mcf,
    ngx_http_llm_slot_t *slot);

/* ngx_http_llm_generate.c */
ngx_int_t ngx_http_llm_generate(ngx_http_request_t *r,
    ngx_http_llm_route_e route);
void ngx_http_llm_drain(ngx_http_llm_ctx_t *ctx);
/* Ends the request now with err (stream: error event + [DONE]); engine
 * requests still running become orphans instead of being waited for. */
void ngx_http_llm_abort(ngx_http_llm_ctx_t *ctx, const oai_error *err);
const char *ngx_http_llm_token_text(void *engine, int32_t id, size_t *len);

/* ngx_http_llm_endpoints.c */
ngx_int_t ngx_http_llm_models(ngx_http_request_t *r, ngx_str_t *id);
ngx_int_t ngx_http_llm_health(ngx_http_request_t *r);
ngx_int_t ngx_http_llm_metrics(ngx_http_request_t *r);
/*
 * /metrics over all workers: a shared zone holds, per (model, worker), a
 * snapshot of that worker's engine stats.  _zone adds it at configuration
 * time (one per cycle), _publish refreshes this worker's snapshots (from
 * the watchdog tick and before each scrape), _retire empties them when
 * the worker exits.
 */
ngx_int_t ngx_http_llm_metrics_zone(ngx_conf_t *cf,
    ngx_http_llm_main_conf_t *mcf);
void ngx_http_llm_metrics_publish(ngx_http_llm_main_conf_t *mcf);
void ngx_http_llm_metrics_retire(ngx_http_llm_main_conf_t *mcf);
ngx_int_t ngx_http_llm_version(ngx_http_request_t *r);
ngx_int_t ngx_http_llm_tokenize(ngx_http_request_t *r,
    ngx_http_llm_route_e route);
/* Body of a request as one NUL-terminated buffer (memory or temp file). */
ngx_int_t ngx_http_llm_read_body(ngx_http_request_t *r, u_char **body,
    size_t *len);
/* The model the request names, or the location's; an error if unknown. */
ngx_int_t ngx_http_llm_check_model(ngx_http_request_t *r, const char *name,
    oai_error *err);

/* ngx_http_llm_prefix_key.c */
ngx_int_t ngx_http_llm_add_variables(ngx_conf_t *cf);

/* ngx_http_llm_reply.c */
ngx_int_t ngx_http_llm_send_json(ngx_http_request_t *r, ngx_uint_t status,
    const char *body, size_t len);
ngx_int_t ngx_http_llm_send_body(ngx_http_request_t *r, ngx_uint_t status,
    const char *content_type, const char *body, size_t len);
ngx_int_t ngx_http_llm_send_error(ngx_http_request_t *r, const oai_error *e);
ngx_int_t ngx_http_llm_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *type, const char *code, const char *fmt, ...);
ngx_int_t ngx_http_llm_add_header(ngx_http_request_t *r, const char *name,
    const char *value);
ngx_int_t ngx_http_llm_filter_init(ngx_conf_t *cf);

#endif /* NGX_HTTP_LLM_MODULE_H */
