/*
 * The small endpoints: GET .../models, GET /health, GET /metrics (Prometheus
 * text with vLLM's metric names under the "llm:" prefix, every worker's
 * engines through a shared zone of per-worker snapshots), GET /version,
 * POST /tokenize and /detokenize (vLLM's request and response shapes).
 * Also the helpers the generation path shares: the request body as one
 * buffer and the "model" field check.
 */
#include "ngx_http_llm_module.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NGX_HTTP_LLM_VERSION  "0.1.0"


ngx_int_t
ngx_http_llm_read_body(ngx_http_request_t *r, u_char **body, size_t *len)
{
    ngx_chain_t  *cl;
    ngx_buf_t    *b;
    size_t        total = 0, n;
    u_char       *p;
    ssize_t       rd;

    *body = (u_char *) "";
    *len = 0;
    if (r->request_body == NULL) {
        return NGX_OK;
    }
    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        total += b->in_file ? (size_t) (b->file_last - b->file_pos)
                            : (size_t) (b->last - b->pos);
    }
    p = ngx_pnalloc(r->pool, total + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }
    *body = p;
    /* a body over client_body_buffer_size sits in a temp file */
    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        if (b->in_file) {
            n = (size_t) (b->file_last - b->file_pos);
            rd = ngx_read_file(b->file, p, n, b->file_pos);
            if (rd != (ssize_t) n) {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "llm: reading the request body from \"%V\" "
                              "failed", &b->file->name);
                return NGX_ERROR;
            }
            p += n;
        } else {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
        }
    }
    *p = '\0';
    *len = total;
    return NGX_OK;
}


ngx_int_t
ngx_http_llm_check_model(ngx_http_request_t *r, const char *name,
    oai_error *err)
{
    ngx_http_llm_loc_conf_t  *lcf;
    size_t                    len;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    if (name == NULL) {
        return NGX_OK;           /* the location's model */
    }
    len = strlen(name);
    if ((len == lcf->model->served_name.len
         && ngx_strncmp(name, lcf->model->served_name.data, len) == 0)
        || (len == lcf->model->name.len
            && ngx_strncmp(name, lcf->model->name.data, len) == 0))
    {
        return NGX_OK;
    }
    oai_error_set(err, NGX_HTTP_NOT_FOUND, "invalid_request_error",
                  "model_not_found", "model",
                  "The model '%.200s' does not exist (this endpoint serves "
                  "'%.*s')", name, (int) lcf->model->served_name.len,
                  lcf->model->served_name.data);
    return NGX_ERROR;
}


static ngx_int_t
ngx_http_llm_send_owned(ngx_http_request_t *r, ngx_uint_t status, char *json,
    size_t len)
{
    ngx_int_t  rc;

    if (json == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    rc = ngx_http_llm_send_json(r, status, json, len);
    free(json);
    return rc;
}


static int
ngx_http_llm_max_model_len(ngx_http_llm_model_t *m)
{
    llm_model_info  info;

    if (m->engine == NULL) {
        return (int) m->max_model_len;
    }
    llm_engine_model_info(m->engine, &info);
    return info.max_model_len;
}


ngx_int_t
ngx_http_llm_models(ngx_http_request_t *r, ngx_str_t *id)
{
    ngx_http_llm_loc_conf_t  *lcf;
    oai_model_entry           e;
    size_t                    len = 0;
    char                     *json;
    u_char                    root[NGX_MAX_PATH];

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (id != NULL
        && !(id->len == lcf->model->served_name.len
             && ngx_strncmp(id->data, lcf->model->served_name.data, id->len)
                == 0))
    {
        /* the id is valid UTF-8 (the dispatcher made it so): cut it at
         * 200 bytes before a character, not inside one */
        len = ngx_min(id->len, 200);
        while (len < id->len && len > 0 && (id->data[len] & 0xC0) == 0x80) {
            len--;
        }
        return ngx_http_llm_error(r, NGX_HTTP_NOT_FOUND,
                                  "invalid_request_error", "model_not_found",
                                  "The model '%.*s' does not exist",
                                  (int) len, id->data);
    }

    ngx_cpystrn(root, lcf->model->path.data,
                ngx_min(lcf->model->path.len + 1, sizeof(root)));
    e.id = (const char *) lcf->model->served_name.data;
    e.root = (const char *) root;
    e.created = (long) lcf->model->created;
    e.max_model_len = ngx_http_llm_max_model_len(lcf->model);

    json = oai_models_json(&e, 1, id != NULL, &len);
    return ngx_http_llm_send_owned(r, NGX_HTTP_OK, json, len);
}


ngx_int_t
ngx_http_llm_health(ngx_http_request_t *r)
{
    ngx_http_llm_loc_conf_t  *lcf;
    char                      err[LLM_ERR_MAX];

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    if (lcf->model->engine == NULL) {
        return ngx_http_llm_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                  "service_unavailable_error",
                                  "model_not_ready", "%s",
                                  lcf->model->error[0] ? lcf->model->error
                                  : "the model is not loaded");
    }
    if (lcf->model->broken) {
        /* stalled or failed while serving; this worker is being replaced */
        return ngx_http_llm_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                  "service_unavailable_error", "model_failed",
                                  "%s", lcf->model->failure);
    }
    err[0] = '\0';
    switch (llm_engine_get_state(lcf->model->engine, err, sizeof(err))) {
    case LLM_STATE_READY:
        return ngx_http_llm_send_body(r, NGX_HTTP_OK, "text/plain", "", 0);
    case LLM_STATE_LOADING:
        return ngx_http_llm_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                  "service_unavailable_error",
                                  "model_not_ready", "the model is loading");
    default:
        /* not serving either way; the message says why */
        return ngx_http_llm_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                  "service_unavailable_error", "model_failed",
                                  "the model failed to load: %s", err);
    }
}


ngx_int_t
ngx_http_llm_version(ngx_http_request_t *r)
{
    static const char  body[] = "{\"version\":\"" NGX_HTTP_LLM_VERSION "\"}";

    return ngx_http_llm_send_json(r, NGX_HTTP_OK, body, sizeof(body) - 1);
}


/* ---- metrics ------------------------------------------------------------ */

/*
 * Every series is labelled with the model, the engine's device and the
 * worker's index: with worker_processes N (one GPU each) a scrape reports
 * the N engines, and the labels keep their series apart.
 */
typedef struct {
    ngx_http_llm_model_t  *model;        /* NULL ends the list */
    llm_stats              stats;
    int                    have;
    char                   labels[256];  /* model_name="..",device="..",.. */
} ngx_http_llm_metrics_src_t;


/*
 * Whichever worker accepts a scrape's connection answers it, so each worker
 * publishes its engines' stats into a shared zone (one slot per model and
 * worker index) and a scrape renders every live worker's slot: one scrape,
 * all workers.  A worker refreshes its slots once a second (the bridge's
 * watchdog tick), right before it answers a scrape, when it starts and
 * when it exits (emptied).
 *
 * A slot is copied under a seqlock: its writer (only the worker with that
 * index) makes seq odd, writes, makes it even again; a reader copies the
 * slot and keeps the copy when seq was even and unchanged around it.  The
 * writer never waits (it runs on the event loop), a reader never sees a
 * torn snapshot, and a worker that dies mid-write blocks nobody: its slot
 * stays odd and is skipped until the replacement worker rewrites it.
 *
 * The zone is never reused across reloads (noreuse): each configuration
 * cycle gets a fresh one, written only by that cycle's workers, so the old
 * workers of a reload, still finishing their requests, do not appear in
 * the new workers' scrapes (and do not overwrite their slots).
 */
#define NGX_HTTP_LLM_METRICS_STALE  10000    /* ms: 10 refresh periods */
#define NGX_HTTP_LLM_METRICS_TRIES  100      /* seqlock read attempts */

typedef struct {
    ngx_atomic_t           seq;          /* odd while being written */
    ngx_pid_t              pid;          /* writer; 0: empty */
    ngx_uint_t             worker;       /* nginx's worker index */
    uint64_t               updated;      /* CLOCK_MONOTONIC ms */
    ngx_uint_t             have;         /* the worker has an engine */
    char                   device[32];   /* the engine's: cpu, cuda:1 */
    llm_stats              stats;
} ngx_http_llm_metrics_slot_t;

typedef struct {
    ngx_uint_t                   models;
    ngx_uint_t                   workers;
    ngx_http_llm_metrics_slot_t  slot[];  /* [model * workers + worker] */
} ngx_http_llm_metrics_shm_t;


static uint64_t
ngx_http_llm_metrics_now(void)
{
    struct timespec  ts;

    /* CLOCK_MONOTONIC is one clock for all processes of the host */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}


static ngx_int_t
ngx_http_llm_metrics_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_slab_pool_t             *shpool;
    ngx_http_llm_main_conf_t    *mcf = zone->data;
    ngx_http_llm_metrics_shm_t  *sh;
    size_t                       size;

    shpool = (ngx_slab_pool_t *) zone->shm.addr;
    if (data != NULL) {
        zone->data = data;       /* not with noreuse; kept for safety */
        return NGX_OK;
    }
    if (zone->shm.exists) {
        zone->data = shpool->data;
        return NGX_OK;
    }
    size = sizeof(ngx_http_llm_metrics_shm_t)
           + mcf->models.nelts * (size_t) mcf->metrics_workers
             * sizeof(ngx_http_llm_metrics_slot_t);
    sh = ngx_slab_calloc(shpool, size);
    if (sh == NULL) {
        return NGX_ERROR;
    }
    sh->models = mcf->models.nelts;
    sh->workers = (ngx_uint_t) mcf->metrics_workers;
    shpool->data = sh;
    zone->data = sh;
    return NGX_OK;
}


ngx_int_t
ngx_http_llm_metrics_zone(ngx_conf_t *cf, ngx_http_llm_main_conf_t *mcf)
{
    static ngx_str_t   name = ngx_string("llm_metrics");
    ngx_core_conf_t   *ccf;
    ngx_shm_zone_t    *zone;
    ngx_int_t          workers;
    size_t             size;

    /*
     * One slot per worker and model.  worker_processes is known here when
     * it comes before the http block (as usual); otherwise the zone has
     * room for as many workers as "auto" would start, and init_module
     * warns if the final count is larger.
     */
    ccf = (ngx_core_conf_t *) ngx_get_conf(cf->cycle->conf_ctx,
                                           ngx_core_module);
    workers = ccf->worker_processes;
    if (workers == NGX_CONF_UNSET || workers < 1) {
        workers = ngx_max(ngx_ncpu, 1);
    }
    size = sizeof(ngx_http_llm_metrics_shm_t)
           + mcf->models.nelts * (size_t) workers
             * sizeof(ngx_http_llm_metrics_slot_t);
    /* the slab pool's own pages and headers: as nginx's zones, 8 pages */
    size = ngx_align(size, ngx_pagesize) + 8 * ngx_pagesize;

    zone = ngx_shared_memory_add(cf, &name, size, &ngx_http_llm_module);
    if (zone == NULL) {
        return NGX_ERROR;
    }
    if (zone->data != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "shared memory zone \"%V\" is already in use",
                           &name);
        return NGX_ERROR;
    }
    zone->init = ngx_http_llm_metrics_init_zone;
    zone->data = mcf;            /* init_zone reads the counts from it */
    zone->noreuse = 1;           /* a fresh zone per cycle (see above) */
    mcf->metrics_zone = zone;
    mcf->metrics_workers = workers;
    return NGX_OK;
}


/* The slot of (model, worker), or NULL: no zone, or beyond its room. */
static ngx_http_llm_metrics_slot_t *
ngx_http_llm_metrics_slot(ngx_http_llm_main_conf_t *mcf, ngx_uint_t model,
    ngx_uint_t worker)
{
    ngx_http_llm_metrics_shm_t  *sh;

    if (mcf->metrics_zone == NULL) {
        return NULL;
    }
    sh = mcf->metrics_zone->data;
    if (model >= sh->models || worker >= sh->workers) {
        return NULL;
    }
    return &sh->slot[model * sh->workers + worker];
}


static const char *
ngx_http_llm_metrics_device(ngx_http_llm_model_t *m)
{
    return m->worker_device[0] ? m->worker_device
                               : (const char *) m->device.data;
}


/* This worker's numbers for a model: its engine's, or zeros without one. */
static ngx_uint_t
ngx_http_llm_metrics_local(ngx_http_llm_model_t *m, llm_stats *st)
{
    if (m->engine == NULL) {
        ngx_memzero(st, sizeof(*st));
        return 0;
    }
    llm_engine_stats(m->engine, st);
    return 1;
}


/* The writer side of the seqlock; pid 0 empties the slot. */
static void
ngx_http_llm_metrics_write(ngx_http_llm_metrics_slot_t *slot,
    ngx_http_llm_model_t *m, const llm_stats *st, ngx_uint_t have,
    ngx_pid_t pid)
{
    /* a writer killed mid-write left seq odd: start from the even value */
    ngx_atomic_uint_t  seq = slot->seq & ~(ngx_atomic_uint_t) 1;

    slot->seq = seq + 1;
    ngx_memory_barrier();
    slot->pid = pid;
    slot->worker = ngx_worker;
    slot->updated = ngx_http_llm_metrics_now();
    slot->have = have;
    ngx_cpystrn((u_char *) slot->device,
                (u_char *) ngx_http_llm_metrics_device(m),
                sizeof(slot->device));
    slot->stats = *st;
    ngx_memory_barrier();
    slot->seq = seq + 2;
}


void
ngx_http_llm_metrics_publish(ngx_http_llm_main_conf_t *mcf)
{
    ngx_http_llm_model_t         *models = mcf->models.elts;
    ngx_http_llm_metrics_slot_t  *slot;
    ngx_uint_t                    m, have;
    llm_stats                     st;

    for (m = 0; m < mcf->models.nelts; m++) {
        slot = ngx_http_llm_metrics_slot(mcf, m, ngx_worker);
        if (slot == NULL) {
            continue;
        }
        have = ngx_http_llm_metrics_local(&models[m], &st);
        ngx_http_llm_metrics_write(slot, &models[m], &st, have, ngx_pid);
    }
}


void
ngx_http_llm_metrics_retire(ngx_http_llm_main_conf_t *mcf)
{
    ngx_http_llm_model_t         *models = mcf->models.elts;
    ngx_http_llm_metrics_slot_t  *slot;
    ngx_uint_t                    m;
    llm_stats                     st;

    ngx_memzero(&st, sizeof(st));
    for (m = 0; m < mcf->models.nelts; m++) {
        slot = ngx_http_llm_metrics_slot(mcf, m, ngx_worker);
        if (slot != NULL && slot->pid == ngx_pid) {
            ngx_http_llm_metrics_write(slot, &models[m], &st, 0, 0);
        }
    }
}


/* The reader side of the seqlock: NGX_OK with a consistent copy. */
static ngx_int_t
ngx_http_llm_metrics_read(ngx_http_llm_metrics_slot_t *slot,
    ngx_http_llm_metrics_slot_t *copy)
{
    ngx_atomic_uint_t  seq;
    ngx_uint_t         i;

    for (i = 0; i < NGX_HTTP_LLM_METRICS_TRIES; i++) {
        seq = slot->seq;
        if (!(seq & 1)) {
            ngx_memory_barrier();
            ngx_memcpy(copy, slot, sizeof(*copy));
            ngx_memory_barrier();
            if (slot->seq == seq) {
                return NGX_OK;
            }
        }
        /* the writer is in its copy (microseconds) or was descheduled */
        ngx_sched_yield();
    }
    return NGX_AGAIN;
}


/*
 * Whether a copied slot belongs to a live worker.  Skipped rather than
 * shown (or marked): an empty slot (never written, or its worker exited);
 * one whose worker is gone (a crash: until the master's replacement
 * rewrites it); and one not refreshed for 10 refresh periods (a worker
 * whose event loop is stuck).  Their numbers are frozen at some past point;
 * showing them as current would hide that the engine is gone, while an
 * absent series is what Prometheus understands: it goes stale, and the
 * replacement's counters starting again at 0 are a counter reset.
 */
static ngx_uint_t
ngx_http_llm_metrics_live(const ngx_http_llm_metrics_slot_t *s, uint64_t now)
{
    if (s->pid == 0) {
        return 0;
    }
    if (now > s->updated && now - s->updated > NGX_HTTP_LLM_METRICS_STALE) {
        return 0;
    }
    /* EPERM would still mean the process exists */
    if (kill(s->pid, 0) == -1 && ngx_errno == NGX_ESRCH) {
        return 0;
    }
    return 1;
}

static int
ngx_http_llm_printf(oai_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int
ngx_http_llm_printf(oai_buf *b, const char *fmt, ...)
{
    char     line[512];
    va_list  ap;
    int      n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0) {
        return -1;
    }
    return oai_buf_append(b, line, (size_t) n < sizeof(line) ? (size_t) n
                                                             : sizeof(line) - 1);
}

static int
ngx_http_llm_gauge(oai_buf *b, ngx_http_llm_metrics_src_t *src, const char *name,
    const char *type, const char *help, double (*get)(const llm_stats *))
{
    ngx_http_llm_metrics_src_t  *s;

    if (ngx_http_llm_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help,
                            name, type) < 0)
    {
        return -1;
    }
    for (s = src; s->model; s++) {
        if (ngx_http_llm_printf(b, "%s{%s} %.17g\n", name, s->labels,
                                s->have ? get(&s->stats) : 0.0) < 0)
        {
            return -1;
        }
    }
    return 0;
}

/* vLLM's cache_config_info: the KV cache's configuration as labels of a
 * constant 1 (block size, element type and blocks once the engine has
 * loaded; empty before). */
static int
ngx_http_llm_cache_config(oai_buf *b, ngx_http_llm_metrics_src_t *src)
{
    ngx_http_llm_metrics_src_t  *s;
    int                          loaded;

    if (ngx_http_llm_printf(b, "# HELP llm:cache_config_info Information of "
                            "the KV cache configuration.\n"
                            "# TYPE llm:cache_config_info gauge\n") < 0)
    {
        return -1;
    }
    for (s = src; s->model; s++) {
        loaded = s->have && s->stats.kv_block_size > 0;
        if (ngx_http_llm_printf(b, "llm:cache_config_info{%s,block_size=\"%d\","
                                "cache_dtype=\"%s\",num_blocks=\"%lld\"} 1\n",
                                s->labels,
                                loaded ? s->stats.kv_block_size : 0,
                                !loaded ? ""
                                : s->stats.kv_cache_bf16 ? "bfloat16"
                                : "float32",
                                loaded ? (long long) s->stats.kv_blocks_total
                                       : 0LL) < 0)
        {
            return -1;
        }
    }
    return 0;
}

static int
ngx_http_llm_histogram(oai_buf *b, ngx_http_llm_metrics_src_t *src,
    const char *name, const char *help, size_t offset)
{
    ngx_http_llm_metrics_src_t  *s;
    const llm_histogram         *h;
    int                          i;

    if (ngx_http_llm_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name,
                            help, name) < 0)
    {
        return -1;
    }
    for (s = src; s->model; s++) {
        static const llm_histogram  empty;
        const char *l = s->labels;

        h = s->have ? (const llm_histogram *) ((const char *) &s->stats
                                                + offset)
                    : &empty;
        for (i = 0; i < h->n && i < LLM_HIST_BUCKETS; i++) {
            if (ngx_http_llm_printf(b, "%s_bucket{%s,le=\"%g\"} %llu\n",
                                    name, l, h->le[i],
                                    (unsigned long long) h->count[i]) < 0)
            {
                return -1;
            }
        }
        if (ngx_http_llm_printf(b, "%s_bucket{%s,le=\"+Inf\"} %llu\n"
                                "%s_sum{%s} %.17g\n%s_count{%s} %llu\n",
                                name, l, (unsigned long long) h->total,
                                name, l, h->sum, name, l,
                                (unsigned long long) h->total) < 0)
        {
            return -1;
        }
    }
    return 0;
}

/* Prometheus label values escape '\\', '"' and newlines. */
static void
ngx_http_llm_metrics_labels(ngx_http_llm_model_t *m, const char *device,
    ngx_uint_t worker, char *out, size_t size)
{
    char        name[128], *p = name;
    ngx_uint_t  i;

    for (i = 0; i < m->served_name.len && p + 3 < name + sizeof(name); i++) {
        u_char  c = m->served_name.data[i];

        if (c == '"' || c == '\\' || c == '\n') {
            *p++ = '\\';
            c = (c == '\n') ? 'n' : c;
        }
        *p++ = (char) c;
    }
    *p = '\0';
    snprintf(out, size, "model_name=\"%s\",device=\"%s\",worker=\"%lu\"",
             name, device, (unsigned long) worker);
}


static void
ngx_http_llm_metrics_src_set(ngx_http_llm_metrics_src_t *s,
    ngx_http_llm_model_t *m, const llm_stats *st, ngx_uint_t have,
    const char *device, ngx_uint_t worker)
{
    s->model = m;
    s->stats = *st;
    s->have = (int) have;
    ngx_http_llm_metrics_labels(m, device, worker, s->labels,
                                sizeof(s->labels));
}


/*
 * The series to render, by model and then worker index: this worker's from
 * its engine now (its slot is refreshed with the same numbers), the other
 * live workers' from their slots.  NULL when out of memory.
 */
static ngx_http_llm_metrics_src_t *
ngx_http_llm_metrics_sources(ngx_http_request_t *r,
    ngx_http_llm_main_conf_t *mcf)
{
    ngx_http_llm_model_t         *models = mcf->models.elts;
    ngx_http_llm_metrics_src_t   *src, *s;
    ngx_http_llm_metrics_slot_t  *slot, copy;
    ngx_uint_t                    m, w, workers, have;
    llm_stats                     own;
    uint64_t                      now;

    workers = mcf->metrics_zone != NULL
              ? ((ngx_http_llm_metrics_shm_t *) mcf->metrics_zone->data)
                ->workers
              : 0;
    /* + 1 per model: this worker when the zone has no room for it */
    src = ngx_pcalloc(r->pool, (mcf->models.nelts * (workers + 1) + 1)
                               * sizeof(*src));
    if (src == NULL) {
        return NULL;
    }
    now = ngx_http_llm_metrics_now();
    s = src;
    for (m = 0; m < mcf->models.nelts; m++) {
        have = ngx_http_llm_metrics_local(&models[m], &own);
        slot = ngx_http_llm_metrics_slot(mcf, m, ngx_worker);
        if (slot != NULL) {
            ngx_http_llm_metrics_write(slot, &models[m], &own, have,
                                       ngx_pid);
        }
        for (w = 0; w < workers; w++) {
            if (w == ngx_worker) {
                ngx_http_llm_metrics_src_set(s++, &models[m], &own, have,
                    ngx_http_llm_metrics_device(&models[m]), ngx_worker);
                continue;
            }
            slot = ngx_http_llm_metrics_slot(mcf, m, w);
            if (ngx_http_llm_metrics_read(slot, &copy) != NGX_OK) {
                ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                              "llm: /metrics skips worker %ui (its "
                              "snapshot is being written)", w);
                continue;
            }
            if (ngx_http_llm_metrics_live(&copy, now)) {
                copy.device[sizeof(copy.device) - 1] = '\0';
                ngx_http_llm_metrics_src_set(s++, &models[m], &copy.stats,
                                             copy.have, copy.device,
                                             copy.worker);
            }
        }
        if (ngx_worker >= workers) {
            ngx_http_llm_metrics_src_set(s++, &models[m], &own, have,
                ngx_http_llm_metrics_device(&models[m]), ngx_worker);
        }
    }
    return src;
}

static double m_running(const llm_stats *s) { return s->running; }
static double m_waiting(const llm_stats *s) { return s->waiting; }
static double m_paused(const llm_stats *s) { return s->paused; }
static double m_fwd_err(const llm_stats *s)
{
    return (double) s->forward_errors;
}
static double m_kv_usage(const llm_stats *s)
{
    return s->kv_blocks_total > 0
           ? (double) s->kv_blocks_used / (double) s->kv_blocks_total : 0.0;
}
static double m_kv_used(const llm_stats *s) { return (double) s->kv_blocks_used; }
static double m_kv_total(const llm_stats *s) { return (double) s->kv_blocks_total; }
static double m_pc_queries(const llm_stats *s)
{
    return (double) s->prefix_cache_queries;
}
static double m_pc_hits(const llm_stats *s)
{
    return (double) s->prefix_cache_hits;
}
static double m_preempt(const llm_stats *s) { return (double) s->preemptions; }
static double m_prompt(const llm_stats *s) { return (double) s->prompt_tokens; }
static double m_gen(const llm_stats *s)
{
    return (double) s->generation_tokens;
}
static double m_steps(const llm_stats *s) { return (double) s->steps; }


ngx_int_t
ngx_http_llm_metrics(ngx_http_request_t *r)
{
    ngx_http_llm_main_conf_t    *mcf;
    ngx_http_llm_metrics_src_t  *src, *s;
    oai_buf                      b = { 0 };
    ngx_int_t                    rc;
    int                          ok, f;
    static const char           *reasons[] = { NULL, "stop", "length",
                                               "abort", "error" };

    mcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);
    src = ngx_http_llm_metrics_sources(r, mcf);
    if (src == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ok = ngx_http_llm_gauge(&b, src, "llm:num_requests_running", "gauge",
                            "Number of requests in model execution batches.",
                            m_running) == 0
      && ngx_http_llm_gauge(&b, src, "llm:num_requests_waiting", "gauge",
                            "Number of requests waiting to be processed.",
                            m_waiting) == 0
      && ngx_http_llm_gauge(&b, src, "llm:num_requests_paused", "gauge",
                            "Requests (running or waiting) held until their "
                            "clients read what was generated.",
                            m_paused) == 0
      && ngx_http_llm_gauge(&b, src, "llm:kv_cache_usage_perc", "gauge",
                            "KV-cache usage. 1 means 100 percent usage.",
                            m_kv_usage) == 0
      && ngx_http_llm_gauge(&b, src, "llm:kv_cache_used_blocks", "gauge",
                            "KV-cache blocks held by running requests.",
                            m_kv_used) == 0
      && ngx_http_llm_gauge(&b, src, "llm:kv_cache_total_blocks", "gauge",
                            "KV-cache blocks in the pool.", m_kv_total) == 0
      && ngx_http_llm_cache_config(&b, src) == 0
      && ngx_http_llm_gauge(&b, src, "llm:prefix_cache_queries_total",
                            "counter", "Prefix cache queries, in terms of "
                            "number of queried tokens.", m_pc_queries) == 0
      && ngx_http_llm_gauge(&b, src, "llm:prefix_cache_hits_total", "counter",
                            "Prefix cache hits, in terms of number of cached "
                            "tokens.", m_pc_hits) == 0
      && ngx_http_llm_gauge(&b, src, "llm:num_preemptions_total", "counter",
                            "Cumulative number of preemptions from the "
                            "engine.", m_preempt) == 0
      && ngx_http_llm_gauge(&b, src, "llm:prompt_tokens_total", "counter",
                            "Number of prefill tokens processed.",
                            m_prompt) == 0
      && ngx_http_llm_gauge(&b, src, "llm:generation_tokens_total", "counter",
                            "Number of generation tokens processed.",
                            m_gen) == 0
      && ngx_http_llm_gauge(&b, src, "llm:engine_steps_total", "counter",
                            "Number of engine steps (batches) run.",
                            m_steps) == 0
      && ngx_http_llm_gauge(&b, src, "llm:forward_errors_total", "counter",
                            "Failed forward passes (their batch's requests "
                            "end with an error).", m_fwd_err) == 0
      && ngx_http_llm_histogram(&b, src, "llm:time_to_first_token_seconds",
                                "Histogram of time to first token in "
                                "seconds.", offsetof(llm_stats, ttft)) == 0
      && ngx_http_llm_histogram(&b, src, "llm:inter_token_latency_seconds",
                                "Histogram of inter-token latency in "
                                "seconds.", offsetof(llm_stats, itl)) == 0
      && ngx_http_llm_histogram(&b, src, "llm:e2e_request_latency_seconds",
                                "Histogram of end to end request latency in "
                                "seconds.", offsetof(llm_stats, e2e)) == 0
      && ngx_http_llm_printf(&b, "# HELP llm:request_success_total Count of "
                             "finished requests by finish reason.\n"
                             "# TYPE llm:request_success_total counter\n")
         >= 0;

    for (s = src; ok && s->model; s++) {
        for (f = LLM_FINISH_STOP; ok && f <= LLM_FINISH_ERROR; f++) {
            ok = ngx_http_llm_printf(&b, "llm:request_success_total{"
                                     "%s,finished_reason=\"%s\"} %llu\n",
                                     s->labels, reasons[f],
                                     (unsigned long long) (s->have
                                     ? s->stats.requests_finished[f] : 0))
                 >= 0;
        }
    }
    if (!ok) {
        oai_buf_free(&b);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        oai_buf_free(&b);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    rc = ngx_http_llm_send_body(r, NGX_HTTP_OK,
                                "text/plain; version=0.0.4; charset=utf-8",
                                b.data, b.len);
    oai_buf_free(&b);
    return rc;
}


/* ---- tokenize / detokenize -------------------------------------------- */

/*
 * Tokenizing a long prompt (and rendering a template) takes milliseconds to
 * seconds, so the work runs on nginx's "default" thread pool; the request
 * is parked (r->main->blocked, as nginx's own thread I/O does) until the
 * completion event.  Parsing and the reply stay on the event loop.
 */
typedef struct {
    ngx_http_request_t    *request;
    llm_engine            *engine;
    ngx_uint_t             detokenize;
    oai_tokenize_request   t;            /* tokenize input */
    int32_t               *ids;          /* detokenize input, tokenize output */
    int                    n;
    char                  *text;         /* detokenize output */
    size_t                 text_len;
    int                    failed;
    char                   err[LLM_ERR_MAX];
} ngx_http_llm_tok_job_t;


static const char *
ngx_http_llm_token_text_cb(void *engine, int32_t id, size_t *len)
{
    return llm_token_text(engine, id, len);
}


/* The work; any thread (the engine's tokenizer calls are thread-safe). */
static void
ngx_http_llm_tok_work(void *data, ngx_log_t *log)
{
    ngx_http_llm_tok_job_t  *job = data;
    char                    *rendered = NULL;
    const char              *src;
    size_t                   src_len;
    int                      max;

    (void) log;
    job->err[0] = '\0';

    if (job->detokenize) {
        job->text = llm_detokenize(job->engine, job->ids, job->n, 0,
                                   &job->text_len, job->err,
                                   sizeof(job->err));
        job->failed = job->text == NULL;
        return;
    }

    if (job->t.prompt != NULL) {
        src = job->t.prompt;
        src_len = job->t.prompt_len;
    } else {
        rendered = llm_render_chat(job->engine, job->t.messages_json,
                                   job->t.tools_json, job->t.kwargs_json,
                                   job->t.add_generation_prompt, job->err,
                                   sizeof(job->err));
        if (rendered == NULL) {
            job->failed = 1;
            return;
        }
        src = rendered;
        src_len = strlen(rendered);
    }

    /* byte-level BPE: never more ids than bytes, plus special tokens */
    max = (int) ngx_min(src_len + 16, (size_t) 0x7fffffff);
    job->ids = malloc((size_t) max * sizeof(int32_t));
    if (job->ids == NULL) {
        free(rendered);
        snprintf(job->err, sizeof(job->err), "out of memory");
        job->failed = 1;
        return;
    }
    job->n = llm_tokenize(job->engine, src, src_len, job->t.add_special_tokens,
                          job->ids, max, job->err, sizeof(job->err));
    free(rendered);
    if (job->n < 0) {
        job->failed = 1;
    } else if (job->n > max) {
        job->n = max;
    }
}


/* The reply, on the event loop; frees the job's buffers. */
static ngx_int_t
ngx_http_llm_tok_reply(ngx_http_llm_tok_job_t *job)
{
    ngx_http_request_t       *r = job->request;
    ngx_http_llm_loc_conf_t  *lcf;
    char                     *json = NULL;
    size_t                    len = 0;
    ngx_int_t                 rc;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    if (job->failed) {
        rc = ngx_http_llm_error(r, NGX_HTTP_BAD_REQUEST,
                                "invalid_request_error", NULL, "%s: %s",
                                job->detokenize ? "detokenize"
                                : job->t.prompt ? "tokenize" : "chat template",
                                job->err);
    } else {
        json = job->detokenize
               ? oai_detokenize_json(job->text, job->text_len, &len)
               : oai_tokenize_json(job->ids, job->n,
                                   ngx_http_llm_max_model_len(lcf->model),
                                   job->t.return_token_strs
                                   ? ngx_http_llm_token_text_cb : NULL,
                                   job->engine, &len);
        rc = ngx_http_llm_send_owned(r, NGX_HTTP_OK, json, len);
    }
    free(job->ids);
    free(job->text);
    job->ids = NULL;
    job->text = NULL;
    oai_tokenize_request_free(&job->t);
    return rc;
}


#if (NGX_THREADS)

static void
ngx_http_llm_tok_done(ngx_event_t *ev)
{
    ngx_http_llm_tok_job_t  *job = ev->data;
    ngx_http_request_t      *r = job->request;
    ngx_connection_t        *c = r->connection;

    r->main->blocked--;
    r->aio = 0;
    ngx_http_finalize_request(r, ngx_http_llm_tok_reply(job));
    ngx_http_run_posted_requests(c);
}

#endif


static void
ngx_http_llm_tokenize_body(ngx_http_request_t *r, ngx_uint_t detokenize)
{
    ngx_http_llm_loc_conf_t   *lcf;
    ngx_http_llm_tok_job_t    *job;
    oai_error                  err;
    u_char                    *body;
    size_t                     len;
    char                      *model = NULL;
    char                       why[LLM_ERR_MAX];
    llm_engine_state           state;
#if (NGX_THREADS)
    ngx_http_llm_main_conf_t  *mcf;
    ngx_thread_task_t         *task;
#endif

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    if (ngx_http_llm_read_body(r, &body, &len) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    if (lcf->model->engine == NULL) {
        ngx_http_finalize_request(r, ngx_http_llm_error(r,
                                  NGX_HTTP_SERVICE_UNAVAILABLE,
                                  "service_unavailable_error",
                                  "model_not_ready", "%s",
                                  lcf->model->error[0] ? lcf->model->error
                                  : "the model is not loaded"));
        return;
    }
    /* the engine tokenizes only when READY: anything else is a 503 with
     * the reason, as /health gives it, not the engine's 400 */
    why[0] = '\0';
    state = llm_engine_get_state(lcf->model->engine, why, sizeof(why));
    if (state != LLM_STATE_READY) {
        ngx_http_finalize_request(r, ngx_http_llm_error(r,
                                  NGX_HTTP_SERVICE_UNAVAILABLE,
                                  "service_unavailable_error",
                                  state == LLM_STATE_LOADING
                                  ? "model_not_ready" : "model_failed",
                                  "%s", state == LLM_STATE_LOADING
                                  ? "the model is loading" : why));
        return;
    }

#if (NGX_THREADS)
    task = ngx_thread_task_alloc(r->pool, sizeof(ngx_http_llm_tok_job_t));
    if (task == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    job = task->ctx;
#else
    job = ngx_pcalloc(r->pool, sizeof(ngx_http_llm_tok_job_t));
    if (job == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
#endif
    ngx_memzero(job, sizeof(*job));
    job->request = r;
    job->engine = lcf->model->engine;
    job->detokenize = detokenize;

    if (detokenize) {
        if (oai_parse_detokenize((const char *) body, len, &model, &job->ids,
                                 &job->n, &err) != 0)
        {
            ngx_http_finalize_request(r, ngx_http_llm_send_error(r, &err));
            return;
        }
    } else {
        if (oai_parse_tokenize((const char *) body, len, &job->t, &err) != 0) {
            ngx_http_finalize_request(r, ngx_http_llm_send_error(r, &err));
            return;
        }
    }
    if (ngx_http_llm_check_model(r, detokenize ? model : job->t.model, &err)
        != NGX_OK)
    {
        free(model);
        free(job->ids);
        oai_tokenize_request_free(&job->t);
        ngx_http_finalize_request(r, ngx_http_llm_send_error(r, &err));
        return;
    }
    free(model);

#if (NGX_THREADS)
    mcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);
    if (mcf->thread_pool != NULL) {
        task->handler = ngx_http_llm_tok_work;
        task->event.handler = ngx_http_llm_tok_done;
        task->event.data = job;
        if (ngx_thread_task_post(mcf->thread_pool, task) == NGX_OK) {
            /* as nginx's thread I/O: the request waits for the task */
            r->main->blocked++;
            r->aio = 1;
            return;
        }
    }
#endif

    ngx_http_llm_tok_work(job, r->connection->log);
    ngx_http_finalize_request(r, ngx_http_llm_tok_reply(job));
}


static void
ngx_http_llm_tokenize_handler(ngx_http_request_t *r)
{
    ngx_http_llm_tokenize_body(r, 0);
}


static void
ngx_http_llm_detokenize_handler(ngx_http_request_t *r)
{
    ngx_http_llm_tokenize_body(r, 1);
}


ngx_int_t
ngx_http_llm_tokenize(ngx_http_request_t *r, ngx_http_llm_route_e route)
{
    ngx_int_t  rc;

    rc = ngx_http_read_client_request_body(r,
             route == NGX_HTTP_LLM_ROUTE_DETOKENIZE
             ? ngx_http_llm_detokenize_handler
             : ngx_http_llm_tokenize_handler);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }
    return NGX_DONE;
}
