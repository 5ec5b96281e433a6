/*
 * POST .../chat/completions and .../completions.
 *
 * The content handler reads the body (memory or temp file), validates it
 * (openai.c), submits one engine request per choice and returns NGX_DONE.
 * Engine events arrive through the bridge, which calls
 * ngx_http_llm_drain().  Streaming responses send their headers at the first
 * LLM_EV_STARTED (so a prompt error can still be a 400) and pass every
 * batch of SSE bytes on with flush; while nginx holds unsent output the
 * request stops consuming events (backpressure) and resumes on the write
 * event, under send_timeout.  A request cleanup hands unfinished engine
 * requests to the bridge's orphan list, which cancels and releases them.
 */
#include "ngx_http_llm_module.h"

#include <stdlib.h>
#include <string.h>

#define NGX_HTTP_LLM_IDLE_TICK  60000   /* ms; keeps a timer while waiting */

#if (NGX_HTTP_LLM_TIMING)
#include <time.h>

static void
ngx_http_llm_stamp(ngx_http_llm_ctx_t *ctx, ngx_uint_t i)
{
    struct timespec  ts;

    if (ctx->t[i] == 0) {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ctx->t[i] = ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
    }
}

static void
ngx_http_llm_log_timing(ngx_http_llm_ctx_t *ctx)
{
    double  *t = ctx->t;

    ngx_log_error(NGX_LOG_NOTICE, ctx->request->connection->log, 0,
                  "llm timing (ms after the content handler): body %.3f "
                  "submitted %.3f started %.3f token %.3f written %.3f",
                  t[1] - t[0], t[2] - t[0], t[3] - t[0], t[4] - t[0],
                  t[5] - t[0]);
}

#define ngx_http_llm_timing(ctx, i)  ngx_http_llm_stamp(ctx, i)
#else
#define ngx_http_llm_timing(ctx, i)
#endif

static void ngx_http_llm_body_handler(ngx_http_request_t *r);
static void ngx_http_llm_cleanup(void *data);
static void ngx_http_llm_write_handler(ngx_http_request_t *r);
static void ngx_http_llm_tick(ngx_event_t *ev);
static void ngx_http_llm_start(ngx_http_llm_ctx_t *ctx);
static void ngx_http_llm_load_wait(ngx_event_t *ev);
static void ngx_http_llm_timed_out(ngx_event_t *ev);
static void ngx_http_llm_complete(ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_pass_out(ngx_http_llm_ctx_t *ctx,
    ngx_uint_t last);


const char *
ngx_http_llm_token_text(void *engine, int32_t id, size_t *len)
{
    return llm_token_text(engine, id, len);
}


ngx_int_t
ngx_http_llm_generate(ngx_http_request_t *r, ngx_http_llm_route_e route)
{
    ngx_int_t                  rc;
    ngx_http_llm_ctx_t        *ctx;
    ngx_http_cleanup_t        *cln;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_llm_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ctx->request = r;
    ctx->route = route;
    ngx_http_llm_timing(ctx, NGX_HTTP_LLM_T_HANDLER);
    ctx->lcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    ctx->mcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    cln->handler = ngx_http_llm_cleanup;
    cln->data = ctx;

    /* the body handler finds ctx through the cleanup it just added */
    rc = ngx_http_read_client_request_body(r, ngx_http_llm_body_handler);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }
    return NGX_DONE;
}


static ngx_http_llm_ctx_t *
ngx_http_llm_find_ctx(ngx_http_request_t *r)
{
    ngx_http_cleanup_t  *cln;

    for (cln = r->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_llm_cleanup) {
            return cln->data;
        }
    }
    return NULL;
}


static ngx_int_t
ngx_http_llm_submit(ngx_http_llm_ctx_t *ctx, oai_error *err)
{
    ngx_http_request_t    *r = ctx->request;
    ngx_http_llm_model_t  *model = ctx->lcf->model;
    ngx_http_llm_slot_t   *slot;
    llm_request_params     p;
    llm_status             st;
    llm_stats              stats;
    llm_model_info         info;
    char                   msg[LLM_ERR_MAX];
    ngx_uint_t             i;
    int                    per_prompt = ctx->oreq.n;

    if (model->engine == NULL) {
        oai_error_from_llm(err, LLM_ERR_NOT_READY, NULL, model->error[0]
                           ? model->error : "the model is not loaded");
        return NGX_ERROR;
    }
    if (model->broken) {
        /* a stalled or failed engine: the worker is being replaced */
        oai_error_set(err, NGX_HTTP_SERVICE_UNAVAILABLE,
                      "service_unavailable_error", "model_failed", NULL,
                      "%s", model->failure);
        return NGX_ERROR;
    }
    msg[0] = '\0';
    switch (llm_engine_get_state(model->engine, msg, sizeof(msg))) {
    case LLM_STATE_READY:
        model->served = 1;      /* a later FAILED is a runtime failure */
        break;
    case LLM_STATE_LOADING:
        oai_error_from_llm(err, LLM_ERR_NOT_READY, NULL,
                           "the model is still loading");
        return NGX_ERROR;
    default:
        /* after serving, the engine's text already says what stopped it */
        oai_error_set(err, NGX_HTTP_SERVICE_UNAVAILABLE,
                      "service_unavailable_error", "model_failed", NULL,
                      model->served ? "%s" : "the model failed to load: %s",
                      msg);
        return NGX_ERROR;
    }

    /* token ids (logit_bias, token prompts) against this model's vocabulary:
     * a 400 naming the param rather than the engine's refusal without one */
    llm_engine_model_info(model->engine, &info);
    if (oai_check_token_ids(&ctx->oreq, info.vocab_size, err) != 0) {
        return NGX_ERROR;
    }

    /*
     * llm_queue_size: engine requests of this worker the engine is not
     * running.  Each of the n choices is one engine request, so all of
     * them must fit; n above the limit could never fit, and a 429 would
     * only make the client retry forever.
     */
    if (ctx->lcf->queue_size > 0) {
        if ((ngx_int_t) ctx->n_slots > ctx->lcf->queue_size) {
            oai_error_set(err, NGX_HTTP_BAD_REQUEST, "invalid_request_error",
                          "invalid_value", "n",
                          "this request needs %lu engine requests (n times "
                          "the prompts), more than this server queues "
                          "(llm_queue_size %ld)",
                          (unsigned long) ctx->n_slots,
                          (long) ctx->lcf->queue_size);
            return NGX_ERROR;
        }
        llm_engine_stats(model->engine, &stats);
        if (model->active - stats.running + (ngx_int_t) ctx->n_slots
            > ctx->lcf->queue_size)
        {
            oai_error_from_llm(err, LLM_ERR_QUEUE_FULL, NULL,
                               "too many requests waiting; retry later");
            return NGX_ERROR;
        }
    }

    ctx->slots = ngx_pcalloc(r->pool,
                             ctx->n_slots * sizeof(ngx_http_llm_slot_t *));
    if (ctx->slots == NULL) {
        oai_error_from_llm(err, LLM_ERR_INTERNAL, NULL, "out of memory");
        return NGX_ERROR;
    }

    for (i = 0; i < ctx->n_slots; i++) {
        oai_request_params(&ctx->oreq, (int) i / per_prompt, &p);
        /* n choices with one seed must still differ: choice j uses seed+j */
        if (p.sampling.has_seed) {
            p.sampling.seed += i % per_prompt;
        }

        slot = calloc(1, sizeof(ngx_http_llm_slot_t));
        if (slot == NULL) {
            oai_error_from_llm(err, LLM_ERR_INTERNAL, NULL, "out of memory");
            return NGX_ERROR;
        }
        slot->ctx = ctx;
        slot->model = model;
        slot->index = i;
        p.user = slot;

        msg[0] = '\0';
        slot->req = llm_submit(model->engine, &p, &st, msg, sizeof(msg));
        if (slot->req == NULL) {
            free(slot);
            oai_error_from_llm(err, st, NULL, msg);
            return NGX_ERROR;
        }
        model->active++;
        ctx->slots[i] = slot;
        if (!ctx->linked) {
            /* the watchdog finds the requests of a stalled engine here */
            ngx_queue_insert_tail(&model->requests, &ctx->link);
            ctx->linked = 1;
        }
    }
    return NGX_OK;
}


/* Ends a request that never started generating (or failed to). */
static void
ngx_http_llm_reject(ngx_http_llm_ctx_t *ctx, ngx_int_t rc)
{
    ctx->completed = 1;
    ngx_http_finalize_request(ctx->request, rc);
}


static void
ngx_http_llm_body_handler(ngx_http_request_t *r)
{
    ngx_http_llm_ctx_t  *ctx = ngx_http_llm_find_ctx(r);
    oai_limits           lim;
    oai_error            err;
    u_char              *body;
    size_t               len;

    if (ctx == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    ngx_http_llm_timing(ctx, NGX_HTTP_LLM_T_BODY);

    if (ngx_http_llm_read_body(r, &body, &len) != NGX_OK) {
        ngx_http_llm_reject(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_memzero(&lim, sizeof(lim));
    lim.default_max_tokens = (int) ctx->lcf->max_tokens;
    lim.max_tokens_cap = (int) ctx->lcf->max_tokens;
    lim.max_choices = (int) ctx->lcf->max_n;

    if (oai_parse_request(ctx->route == NGX_HTTP_LLM_ROUTE_CHAT ? OAI_CHAT
                                                                : OAI_COMPLETION,
                          (const char *) body, len, &lim, &ctx->oreq, &err)
        != 0)
    {
        ngx_http_llm_reject(ctx, ngx_http_llm_send_error(r, &err));
        return;
    }
    ctx->parsed = 1;

    if (ngx_http_llm_check_model(r, ctx->oreq.model, &err) != NGX_OK) {
        ngx_http_llm_reject(ctx, ngx_http_llm_send_error(r, &err));
        return;
    }

    if (oai_response_init(&ctx->oresp, &ctx->oreq,
                          (const char *) ctx->lcf->model->served_name.data,
                          ngx_http_llm_token_text, ctx->lcf->model->engine)
        != 0)
    {
        ngx_http_llm_reject(ctx, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    ctx->n_slots = ctx->oresp.n_choices;

    ngx_http_llm_start(ctx);
}


/*
 * A request that arrives while this worker's engine is still loading waits
 * for it (polling every NGX_HTTP_LLM_LOAD_POLL ms) instead of getting a 503:
 * after "nginx -s reload" the old workers stop accepting as soon as the new
 * ones start, so the new workers' loading time would otherwise fail every
 * request sent during it.  The wait is bounded by llm_request_timeout, or
 * NGX_HTTP_LLM_LOAD_WAIT without one, and ends when the worker shuts down;
 * then the request gets the 503 "still loading" it would have got at once.
 * /health keeps answering 503 meanwhile (readiness).
 */
#define NGX_HTTP_LLM_LOAD_POLL  50
#define NGX_HTTP_LLM_LOAD_WAIT  60000

static ngx_uint_t
ngx_http_llm_should_wait(ngx_http_llm_ctx_t *ctx)
{
    ngx_http_llm_model_t  *model = ctx->lcf->model;
    ngx_msec_t             limit;

    if (model->engine == NULL || model->broken || ngx_exiting || ngx_quit
        || llm_engine_get_state(model->engine, NULL, 0) != LLM_STATE_LOADING)
    {
        return 0;
    }
    if (!ctx->load_waiting) {
        ctx->load_waiting = 1;
        ctx->load_wait_start = ngx_current_msec;
        return 1;
    }
    limit = ctx->lcf->request_timeout ? ctx->lcf->request_timeout
                                      : NGX_HTTP_LLM_LOAD_WAIT;
    return ngx_current_msec - ctx->load_wait_start < limit;
}


static void
ngx_http_llm_load_wait(ngx_event_t *ev)
{
    ngx_http_llm_ctx_t  *ctx = ev->data;
    ngx_connection_t    *c = ctx->request->connection;

    ngx_http_llm_start(ctx);
    ngx_http_run_posted_requests(c);
}


/* Submits a parsed request and starts its response (or its wait). */
static void
ngx_http_llm_start(ngx_http_llm_ctx_t *ctx)
{
    ngx_http_request_t  *r = ctx->request;
    oai_error            err;
    ngx_msec_t           tick;

    if (ngx_http_llm_should_wait(ctx)) {
        /* a client that goes away meanwhile is noticed on the read event;
         * the cleanup deletes the timer */
        r->read_event_handler = ngx_http_test_reading;
        ctx->tick.handler = ngx_http_llm_load_wait;
        ctx->tick.data = ctx;
        ctx->tick.log = r->connection->log;
        ngx_add_timer(&ctx->tick, NGX_HTTP_LLM_LOAD_POLL);
        return;
    }

    if (ngx_http_llm_submit(ctx, &err) != NGX_OK) {
        /* submitted slots become orphans in the cleanup */
        ngx_http_llm_reject(ctx, ngx_http_llm_send_error(r, &err));
        return;
    }

    ngx_http_llm_timing(ctx, NGX_HTTP_LLM_T_SUBMITTED);

    /* a client that goes away is noticed on the read event */
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_llm_write_handler;

    /*
     * A timer per request: keepalive comments for streams, and during a
     * graceful shutdown nginx waits for requests with pending timers.
     */
    tick = ctx->lcf->sse_keepalive ? ctx->lcf->sse_keepalive
                                   : NGX_HTTP_LLM_IDLE_TICK;
    ctx->tick.handler = ngx_http_llm_tick;
    ctx->tick.data = ctx;
    ctx->tick.log = r->connection->log;
    ngx_add_timer(&ctx->tick, tick);

    if (ctx->lcf->request_timeout) {
        ctx->timeout.handler = ngx_http_llm_timed_out;
        ctx->timeout.data = ctx;
        ctx->timeout.log = r->connection->log;
        ngx_add_timer(&ctx->timeout, ctx->lcf->request_timeout);
    }

    /* events may already be waiting (a synchronous error, say) */
    ngx_http_llm_drain(ctx);
}


static ngx_int_t
ngx_http_llm_send_sse_headers(ngx_http_llm_ctx_t *ctx)
{
    ngx_http_request_t        *r = ctx->request;
    ngx_int_t                  rc;
    ngx_http_core_loc_conf_t  *clcf;

    r->headers_out.status = NGX_HTTP_OK;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.content_length_n = -1;
    ngx_http_clear_content_length(r);
    ngx_http_clear_accept_ranges(r);
    ngx_http_clear_last_modified(r);

    if (ngx_http_llm_add_header(r, "Cache-Control", "no-cache") != NGX_OK
        || ngx_http_llm_add_header(r, "X-Accel-Buffering", "no") != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* Events are small writes spaced by decode steps: without TCP_NODELAY
     * Nagle holds each one back until the previous is acknowledged (nginx
     * itself sets it only on keepalive and upstream connections, as
     * ngx_http_upstream_send_response does here). */
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
    if (clcf->tcp_nodelay && ngx_tcp_nodelay(r->connection) != NGX_OK)
    {
        return NGX_ERROR;
    }

    ctx->headers_sent = 1;
    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) {
        return NGX_ERROR;
    }
    return NGX_OK;
}


/* Records the request's first failure and stops its other choices. */
static void
ngx_http_llm_fail(ngx_http_llm_ctx_t *ctx, const oai_error *err)
{
    ngx_uint_t  i;

    if (ctx->failed) {
        return;
    }
    ctx->failed = 1;
    ctx->error = *err;
    for (i = 0; i < ctx->n_slots; i++) {
        if (ctx->slots[i] != NULL && !ctx->slots[i]->done) {
            llm_request_cancel(ctx->slots[i]->req);
        }
    }
}


/* One event; returns NGX_ERROR when the response cannot be built. */
static ngx_int_t
ngx_http_llm_event(ngx_http_llm_ctx_t *ctx, ngx_http_llm_slot_t *slot,
    llm_event *ev)
{
    oai_error  err;
    int        rc = 0;

#if (NGX_HTTP_LLM_TIMING)
    if (ev->type == LLM_EV_STARTED) {
        ngx_http_llm_timing(ctx, NGX_HTTP_LLM_T_STARTED);
    } else if (ev->type == LLM_EV_TOKEN && ev->text_len > 0) {
        ngx_http_llm_timing(ctx, NGX_HTTP_LLM_T_TOKEN);
    }
#endif

    if (ev->type == LLM_EV_FINISH || ev->type == LLM_EV_ERROR) {
        slot->done = 1;
        slot->model->active--;
        ctx->n_done++;
    }

    if (ev->type == LLM_EV_ERROR) {
        oai_error_from_llm(&err, ev->status, ev->param, ev->message);
        ngx_http_llm_fail(ctx, &err);
        return NGX_OK;
    }
    if (ctx->failed) {
        return NGX_OK;     /* the other choices' aborts carry nothing */
    }

    if (!ctx->oreq.stream) {
        rc = oai_collect_event(&ctx->oresp, (int) slot->index, ev);
        return rc == 0 ? NGX_OK : NGX_ERROR;
    }

    if (!ctx->headers_sent && ev->type != LLM_EV_NONE) {
        if (ngx_http_llm_send_sse_headers(ctx) != NGX_OK) {
            return NGX_ERROR;
        }
    }
    rc = oai_stream_event(&ctx->oresp, (int) slot->index, ev, &ctx->out);
    return rc == 0 ? NGX_OK : NGX_ERROR;
}


void
ngx_http_llm_drain(ngx_http_llm_ctx_t *ctx)
{
    ngx_http_request_t   *r = ctx->request;
    ngx_http_llm_slot_t  *slot;
    llm_event             ev;
    ngx_uint_t            i;
    ngx_int_t             rc;

    if (ctx->blocked || ctx->completed || ctx->in_drain) {
        return;
    }
    ctx->in_drain = 1;

    for (i = 0; i < ctx->n_slots; i++) {
        slot = ctx->slots[i];
        while (slot != NULL && !slot->done && llm_request_next_event(slot->req, &ev)) {
            rc = ngx_http_llm_event(ctx, slot, &ev);
            llm_event_free(&ev);
            if (rc != NGX_OK) {
                ctx->in_drain = 0;
                ctx->completed = 1;
                ngx_http_finalize_request(r, NGX_ERROR);
                return;
            }
        }
    }
    ctx->in_drain = 0;

    if (ctx->n_done == ctx->n_slots) {
        ngx_http_llm_complete(ctx);
        return;
    }

    if (ctx->out.len > 0) {
        rc = ngx_http_llm_pass_out(ctx, 0);
        if (rc == NGX_ERROR) {
            ctx->completed = 1;
            ngx_http_finalize_request(r, NGX_ERROR);
            return;
        }
#if (NGX_HTTP_LLM_TIMING)
        if (ctx->t[NGX_HTTP_LLM_T_TOKEN] != 0) {
            ngx_http_llm_timing(ctx, NGX_HTTP_LLM_T_WRITTEN);
        }
#endif
    }
}


void
ngx_http_llm_abort(ngx_http_llm_ctx_t *ctx, const oai_error *err)
{
    ngx_uint_t  i;

    if (ctx->completed) {
        return;
    }
    ngx_http_llm_fail(ctx, err);

    /*
     * Do not wait for the engine to acknowledge the cancels: it may be busy
     * with a long prefill step, or not run at all (a stalled engine).  The
     * unfinished slots become orphans; the reaper releases them when their
     * final event arrives.
     */
    for (i = 0; i < ctx->n_slots; i++) {
        if (ctx->slots[i] != NULL && !ctx->slots[i]->done) {
            ngx_http_llm_orphan(ctx->mcf, ctx->slots[i]);
            ctx->slots[i] = NULL;
        }
    }
    ctx->n_done = ctx->n_slots;
    ngx_http_llm_complete(ctx);
}


static void
ngx_http_llm_unlink(ngx_http_llm_ctx_t *ctx)
{
    if (ctx->linked) {
        ngx_queue_remove(&ctx->link);
        ctx->linked = 0;
    }
}


static void
ngx_http_llm_complete(ngx_http_llm_ctx_t *ctx)
{
    ngx_http_request_t  *r = ctx->request;
    char                *json;
    size_t               len = 0;
    ngx_int_t            rc;

    ctx->completed = 1;
    ngx_http_llm_unlink(ctx);
#if (NGX_HTTP_LLM_TIMING)
    ngx_http_llm_log_timing(ctx);
#endif
    if (ctx->tick.timer_set) {
        ngx_del_timer(&ctx->tick);
    }
    if (ctx->timeout.timer_set) {
        ngx_del_timer(&ctx->timeout);
    }

    if (ctx->failed && !ctx->headers_sent) {
        ngx_http_finalize_request(r, ngx_http_llm_send_error(r, &ctx->error));
        return;
    }

    if (!ctx->oreq.stream) {
        json = oai_response_json(&ctx->oresp, &len);
        if (json == NULL) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }
        rc = ngx_http_llm_send_json(r, NGX_HTTP_OK, json, len);
        free(json);
        ngx_http_finalize_request(r, rc);
        return;
    }

    if (!ctx->headers_sent && ngx_http_llm_send_sse_headers(ctx) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }
    if ((ctx->failed ? oai_stream_error(&ctx->error, &ctx->out)
                     : oai_stream_done(&ctx->oresp, &ctx->out)) != 0)
    {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }
    /* nginx's writer flushes what the client has not taken yet */
    ngx_http_finalize_request(r, ngx_http_llm_pass_out(ctx, 1));
}


/* Passes ctx->out on (flushed); sets up backpressure on NGX_AGAIN. */
static ngx_int_t
ngx_http_llm_pass_out(ngx_http_llm_ctx_t *ctx, ngx_uint_t last)
{
    ngx_http_request_t        *r = ctx->request;
    ngx_http_core_loc_conf_t  *clcf;
    ngx_chain_t               *cl;
    ngx_buf_t                 *b;
    ngx_int_t                  rc;
    size_t                     size;

    /* reuse a free buffer that fits, else allocate one */
    cl = ngx_chain_get_free_buf(r->pool, &ctx->free);
    if (cl == NULL) {
        return NGX_ERROR;
    }
    b = cl->buf;
    size = ngx_max(ctx->out.len, 4096);
    if (b->start == NULL || (size_t) (b->end - b->start) < ctx->out.len) {
        b->start = ngx_palloc(r->pool, size);
        if (b->start == NULL) {
            return NGX_ERROR;
        }
        b->end = b->start + size;
    }
    b->pos = b->start;
    b->last = ngx_cpymem(b->pos, ctx->out.data ? ctx->out.data : "",
                         ctx->out.len);
    b->temporary = 1;
    b->memory = 0;
    b->flush = 1;
    b->tag = (ngx_buf_tag_t) &ngx_http_llm_module;
    b->last_buf = (last && r == r->main) ? 1 : 0;
    b->last_in_chain = last ? 1 : 0;
    ctx->out.len = 0;
    ctx->sent_since_tick = 1;

    rc = ngx_http_output_filter(r, cl);
    ngx_chain_update_chains(r->pool, &ctx->free, &ctx->busy, &cl,
                            (ngx_buf_tag_t) &ngx_http_llm_module);
    if (rc == NGX_ERROR || last) {
        return rc;
    }

    if (rc == NGX_AGAIN || ctx->busy != NULL) {
        /* slow client: stop taking events until the socket drains */
        ctx->blocked = 1;
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
        if (!r->connection->write->delayed) {
            ngx_add_timer(r->connection->write, clcf->send_timeout);
        }
        if (ngx_handle_write_event(r->connection->write, clcf->send_lowat)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }
    return NGX_OK;
}


static void
ngx_http_llm_write_handler(ngx_http_request_t *r)
{
    ngx_http_llm_ctx_t        *ctx = ngx_http_llm_find_ctx(r);
    ngx_http_core_loc_conf_t  *clcf;
    ngx_event_t               *wev = r->connection->write;
    ngx_chain_t               *none = NULL;
    ngx_int_t                  rc;

    if (ctx == NULL || ctx->completed) {
        return;
    }
    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, NGX_ETIMEDOUT,
                      "client timed out");
        r->connection->timedout = 1;
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }
    if (!ctx->blocked) {
        return;
    }

    rc = ngx_http_output_filter(r, NULL);
    /* the function reads *out: an empty chain, not NULL */
    ngx_chain_update_chains(r->pool, &ctx->free, &ctx->busy, &none,
                            (ngx_buf_tag_t) &ngx_http_llm_module);
    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
    if (rc == NGX_AGAIN || ctx->busy != NULL) {
        if (!wev->delayed) {
            ngx_add_timer(wev, clcf->send_timeout);
        }
        if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_ERROR);
        }
        return;
    }
    if (wev->timer_set) {
        ngx_del_timer(wev);
    }
    ctx->blocked = 0;
    ngx_http_llm_drain(ctx);
}


static void
ngx_http_llm_tick(ngx_event_t *ev)
{
    ngx_http_llm_ctx_t  *ctx = ev->data;
    ngx_http_request_t  *r = ctx->request;
    ngx_connection_t    *c = r->connection;
    ngx_msec_t           tick;

    tick = ctx->lcf->sse_keepalive ? ctx->lcf->sse_keepalive
                                   : NGX_HTTP_LLM_IDLE_TICK;
    ngx_add_timer(&ctx->tick, tick);

    /* an SSE comment keeps proxies' read timeouts from cutting a stream
     * that waits in the queue or in a long prefill */
    if (ctx->lcf->sse_keepalive && ctx->oreq.stream && ctx->headers_sent
        && !ctx->blocked && !ctx->sent_since_tick)
    {
        if (oai_buf_append(&ctx->out, ": keepalive\n\n", 13) != 0
            || ngx_http_llm_pass_out(ctx, 0) == NGX_ERROR)
        {
            ctx->completed = 1;
            ngx_http_finalize_request(r, NGX_ERROR);
            ngx_http_run_posted_requests(c);
            return;
        }
    }
    ctx->sent_since_tick = 0;
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_llm_timed_out(ngx_event_t *ev)
{
    ngx_http_llm_ctx_t  *ctx = ev->data;
    ngx_connection_t    *c = ctx->request->connection;
    oai_error            err;

    oai_error_set(&err, NGX_HTTP_GATEWAY_TIME_OUT, "timeout_error",
                  "request_timeout", NULL,
                  "the request did not finish within llm_request_timeout "
                  "(%lu ms)", (unsigned long) ctx->lcf->request_timeout);
    ngx_http_llm_abort(ctx, &err);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_llm_cleanup(void *data)
{
    ngx_http_llm_ctx_t  *ctx = data;
    ngx_uint_t           i;

    if (ctx->tick.timer_set) {
        ngx_del_timer(&ctx->tick);
    }
    if (ctx->timeout.timer_set) {
        ngx_del_timer(&ctx->timeout);
    }
    ngx_http_llm_unlink(ctx);
    for (i = 0; i < ctx->n_slots && ctx->slots; i++) {
        if (ctx->slots[i] != NULL) {
            ngx_http_llm_orphan(ctx->mcf, ctx->slots[i]);
            ctx->slots[i] = NULL;
        }
    }
    if (ctx->parsed) {
        oai_request_free(&ctx->oreq);
    }
    oai_response_free(&ctx->oresp);
    oai_buf_free(&ctx->out);
    ctx->completed = 1;
}
