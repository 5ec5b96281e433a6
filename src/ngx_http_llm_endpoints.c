/*
 * The small endpoints: GET .../models, GET /health, GET /metrics (Prometheus
 * text with vLLM's metric names under the "llm:" prefix), GET /version,
 * POST /tokenize and /detokenize (vLLM's request and response shapes).
 * Also the helpers the generation path shares: the request body as one
 * buffer and the "model" field check.
 */
#include "ngx_http_llm_module.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        return ngx_http_llm_error(r, NGX_HTTP_NOT_FOUND,
                                  "invalid_request_error", "model_not_found",
                                  "The model '%.*s' does not exist",
                                  (int) ngx_min(id->len, 200), id->data);
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

typedef struct {
    ngx_http_llm_model_t  *model;
    llm_stats              stats;
    int                    have;
} ngx_http_llm_metrics_src_t;

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
        if (ngx_http_llm_printf(b, "%s{model_name=\"%.*s\"} %.17g\n", name,
                                (int) s->model->served_name.len,
                                s->model->served_name.data,
                                s->have ? get(&s->stats) : 0.0) < 0)
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
        int   nl = (int) s->model->served_name.len;
        char *mn = (char *) s->model->served_name.data;

        h = s->have ? (const llm_histogram *) ((const char *) &s->stats
                                                + offset)
                    : &empty;
        for (i = 0; i < h->n && i < LLM_HIST_BUCKETS; i++) {
            if (ngx_http_llm_printf(b, "%s_bucket{model_name=\"%.*s\","
                                    "le=\"%g\"} %llu\n", name, nl, mn,
                                    h->le[i],
                                    (unsigned long long) h->count[i]) < 0)
            {
                return -1;
            }
        }
        if (ngx_http_llm_printf(b, "%s_bucket{model_name=\"%.*s\",le=\"+Inf\"}"
                                " %llu\n%s_sum{model_name=\"%.*s\"} %.17g\n"
                                "%s_count{model_name=\"%.*s\"} %llu\n",
                                name, nl, mn, (unsigned long long) h->total,
                                name, nl, mn, h->sum, name, nl, mn,
                                (unsigned long long) h->total) < 0)
        {
            return -1;
        }
    }
    return 0;
}

static double m_running(const llm_stats *s) { return s->running; }
static double m_waiting(const llm_stats *s) { return s->waiting; }
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
    ngx_http_llm_model_t        *models;
    ngx_http_llm_metrics_src_t  *src, *s;
    oai_buf                      b = { 0 };
    ngx_uint_t                   m;
    ngx_int_t                    rc;
    int                          ok, f;
    static const char           *reasons[] = { NULL, "stop", "length",
                                               "abort", "error" };

    mcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);
    models = mcf->models.elts;
    src = ngx_pcalloc(r->pool, (mcf->models.nelts + 1) * sizeof(*src));
    if (src == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    for (m = 0; m < mcf->models.nelts; m++) {
        src[m].model = &models[m];
        if (models[m].engine != NULL) {
            llm_engine_stats(models[m].engine, &src[m].stats);
            src[m].have = 1;
        }
    }

    ok = ngx_http_llm_gauge(&b, src, "llm:num_requests_running", "gauge",
                            "Number of requests in model execution batches.",
                            m_running) == 0
      && ngx_http_llm_gauge(&b, src, "llm:num_requests_waiting", "gauge",
                            "Number of requests waiting to be processed.",
                            m_waiting) == 0
      && ngx_http_llm_gauge(&b, src, "llm:kv_cache_usage_perc", "gauge",
                            "KV-cache usage. 1 means 100 percent usage.",
                            m_kv_usage) == 0
      && ngx_http_llm_gauge(&b, src, "llm:kv_cache_used_blocks", "gauge",
                            "KV-cache blocks held by running requests.",
                            m_kv_used) == 0
      && ngx_http_llm_gauge(&b, src, "llm:kv_cache_total_blocks", "gauge",
                            "KV-cache blocks in the pool.", m_kv_total) == 0
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
                                     "model_name=\"%.*s\",finished_reason="
                                     "\"%s\"} %llu\n",
                                     (int) s->model->served_name.len,
                                     s->model->served_name.data, reasons[f],
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

static const char *
ngx_http_llm_token_text_cb(void *engine, int32_t id, size_t *len)
{
    return llm_token_text(engine, id, len);
}


static ngx_int_t
ngx_http_llm_do_tokenize(ngx_http_request_t *r, u_char *body, size_t len)
{
    ngx_http_llm_loc_conf_t  *lcf;
    oai_tokenize_request      t;
    oai_error                 err;
    char                      msg[LLM_ERR_MAX], *text = NULL, *json;
    const char               *src;
    size_t                    src_len, out_len = 0;
    int32_t                  *ids;
    int                       n, max;
    ngx_int_t                 rc;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    if (oai_parse_tokenize((const char *) body, len, &t, &err) != 0) {
        return ngx_http_llm_send_error(r, &err);
    }
    if (ngx_http_llm_check_model(r, t.model, &err) != NGX_OK) {
        oai_tokenize_request_free(&t);
        return ngx_http_llm_send_error(r, &err);
    }

    msg[0] = '\0';
    if (t.prompt != NULL) {
        src = t.prompt;
        src_len = t.prompt_len;
    } else {
        text = llm_render_chat(lcf->model->engine, t.messages_json,
                               t.tools_json, t.kwargs_json,
                               t.add_generation_prompt, msg, sizeof(msg));
        if (text == NULL) {
            oai_tokenize_request_free(&t);
            return ngx_http_llm_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_request_error", NULL,
                                      "chat template: %s", msg);
        }
        src = text;
        src_len = strlen(text);
    }

    /* byte-level BPE: never more ids than bytes, plus special tokens */
    max = (int) ngx_min(src_len + 16, (size_t) 0x7fffffff);
    ids = malloc((size_t) max * sizeof(int32_t));
    if (ids == NULL) {
        free(text);
        oai_tokenize_request_free(&t);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    n = llm_tokenize(lcf->model->engine, src, src_len, t.add_special_tokens,
                     ids, max, msg, sizeof(msg));
    free(text);
    if (n < 0) {
        free(ids);
        oai_tokenize_request_free(&t);
        return ngx_http_llm_error(r, NGX_HTTP_BAD_REQUEST,
                                  "invalid_request_error", NULL,
                                  "tokenize: %s", msg);
    }
    json = oai_tokenize_json(ids, ngx_min(n, max),
                             ngx_http_llm_max_model_len(lcf->model),
                             t.return_token_strs ? ngx_http_llm_token_text_cb
                                                 : NULL,
                             lcf->model->engine, &out_len);
    free(ids);
    oai_tokenize_request_free(&t);
    rc = ngx_http_llm_send_owned(r, NGX_HTTP_OK, json, out_len);
    return rc;
}


static ngx_int_t
ngx_http_llm_do_detokenize(ngx_http_request_t *r, u_char *body, size_t len)
{
    ngx_http_llm_loc_conf_t  *lcf;
    oai_error                 err;
    char                      msg[LLM_ERR_MAX], *model, *text, *json;
    int32_t                  *ids;
    int                       n;
    size_t                    text_len = 0, out_len = 0;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    if (oai_parse_detokenize((const char *) body, len, &model, &ids, &n, &err)
        != 0)
    {
        return ngx_http_llm_send_error(r, &err);
    }
    if (ngx_http_llm_check_model(r, model, &err) != NGX_OK) {
        free(model);
        free(ids);
        return ngx_http_llm_send_error(r, &err);
    }
    free(model);
    msg[0] = '\0';
    text = llm_detokenize(lcf->model->engine, ids, n, 0, &text_len, msg,
                          sizeof(msg));
    free(ids);
    if (text == NULL) {
        return ngx_http_llm_error(r, NGX_HTTP_BAD_REQUEST,
                                  "invalid_request_error", NULL,
                                  "detokenize: %s", msg);
    }
    json = oai_detokenize_json(text, text_len, &out_len);
    free(text);
    return ngx_http_llm_send_owned(r, NGX_HTTP_OK, json, out_len);
}


static void
ngx_http_llm_tokenize_body(ngx_http_request_t *r, ngx_uint_t detokenize)
{
    ngx_http_llm_loc_conf_t  *lcf;
    u_char                   *body;
    size_t                    len;

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
    ngx_http_finalize_request(r, detokenize
                              ? ngx_http_llm_do_detokenize(r, body, len)
                              : ngx_http_llm_do_tokenize(r, body, len));
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
