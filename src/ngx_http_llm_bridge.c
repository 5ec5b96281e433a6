/*
 * Engine -> event loop bridge.
 *
 * Each worker owns one eventfd, registered as an nginx read event the way
 * ngx_add_channel_event() does (not ngx_notify(): its single handler slot is
 * shared with thread pools and two users lose wake-ups).  Every engine's
 * notify hook writes to it from the engine thread; the handler drains the
 * counter, asks each engine for the requests with new events and lets each
 * HTTP request consume them, then runs the posted requests of that
 * connection as nginx's own event handlers do.
 *
 * Engine requests are released only by the reaper, a posted event: a ready
 * batch from llm_engine_ready() holds borrowed pointers, so nothing may be
 * released while a batch is being walked.
 */
#include "ngx_http_llm_module.h"

#include <sys/eventfd.h>
#include <stdlib.h>
#include <unistd.h>

#define NGX_HTTP_LLM_READY_BATCH  64


void
ngx_http_llm_engine_notify(void *data)
{
    int       *efd = data;
    uint64_t   one = 1;

    /* engine thread: a failed write means the counter is already non-zero
     * (EAGAIN) and the event loop will wake anyway */
    if (write(*efd, &one, sizeof(one)) != sizeof(one)) {
        return;
    }
}


/* Pops and frees the events of a slot whose HTTP request is gone. */
static void
ngx_http_llm_orphan_drain(ngx_http_llm_slot_t *slot)
{
    llm_event  ev;

    while (!slot->done && llm_request_next_event(slot->req, &ev)) {
        if (ev.type == LLM_EV_FINISH || ev.type == LLM_EV_ERROR) {
            slot->done = 1;
            slot->model->active--;
        }
        llm_event_free(&ev);
    }
}


static void
ngx_http_llm_reap(ngx_event_t *ev)
{
    ngx_http_llm_main_conf_t  *mcf = ev->data;
    ngx_queue_t               *q, *next;
    ngx_http_llm_slot_t       *slot;

    for (q = ngx_queue_head(&mcf->orphans);
         q != ngx_queue_sentinel(&mcf->orphans);
         q = next)
    {
        next = ngx_queue_next(q);
        slot = ngx_queue_data(q, ngx_http_llm_slot_t, queue);

        ngx_http_llm_orphan_drain(slot);
        if (slot->done) {
            ngx_queue_remove(q);
            llm_request_release(slot->req);
            free(slot);
        }
    }
}


void
ngx_http_llm_orphan(ngx_http_llm_main_conf_t *mcf, ngx_http_llm_slot_t *slot)
{
    slot->ctx = NULL;
    if (!slot->done) {
        llm_request_cancel(slot->req);
    }
    ngx_queue_insert_tail(&mcf->orphans, &slot->queue);
    if (!mcf->reaper.posted) {
        ngx_post_event(&mcf->reaper, &ngx_posted_events);
    }
}


/*
 * Weights load on the engine thread (load_async), which notifies when done:
 * the first wake-up after that says in error_log which device this worker's
 * engine runs on, or why it failed (e.g. a GPU index that
 * cudaGetDeviceCount does not show; /health answers 503 with the reason).
 */
static void
ngx_http_llm_report_load(ngx_http_llm_model_t *m, ngx_log_t *log)
{
    char            err[LLM_ERR_MAX];
    llm_model_info  info;

    err[0] = '\0';
    switch (llm_engine_get_state(m->engine, err, sizeof(err))) {
    case LLM_STATE_LOADING:
        return;
    case LLM_STATE_READY:
        llm_engine_model_info(m->engine, &info);
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "llm_model \"%V\": worker %ui serves on %s "
                      "(%L KV blocks of %d tokens)", &m->name, ngx_worker,
                      info.device, (int64_t) info.kv_blocks_total,
                      info.block_size);
        break;
    default:
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "llm_model \"%V\": worker %ui failed to load on %s: "
                      "%s", &m->name, ngx_worker, m->worker_device, err);
        break;
    }
    m->load_reported = 1;
}


static void
ngx_http_llm_wakeup(ngx_event_t *rev)
{
    ngx_connection_t          *c = rev->data, *rc;
    ngx_http_llm_main_conf_t  *mcf = c->data;
    ngx_http_llm_model_t      *models;
    ngx_http_llm_slot_t       *slot;
    llm_request               *ready[NGX_HTTP_LLM_READY_BATCH];
    uint64_t                   count;
    ngx_uint_t                 m;
    int                        n, i, orphans = 0;

    /* reset the counter; the engines are polled below either way */
    while (read(mcf->efd, &count, sizeof(count)) == sizeof(count)) {
        /* nothing */
    }

    models = mcf->models.elts;
    for (m = 0; m < mcf->models.nelts; m++) {
        if (models[m].engine == NULL) {
            continue;
        }
        if (!models[m].load_reported) {
            ngx_http_llm_report_load(&models[m], rev->log);
        }
        do {
            n = llm_engine_ready(models[m].engine, ready,
                                 NGX_HTTP_LLM_READY_BATCH);
            for (i = 0; i < n; i++) {
                slot = llm_request_user(ready[i]);
                if (slot == NULL) {
                    continue;
                }
                if (slot->ctx == NULL) {
                    orphans = 1;
                    continue;
                }
                rc = slot->ctx->request->connection;
                ngx_http_llm_drain(slot->ctx);
                ngx_http_run_posted_requests(rc);
            }
        } while (n == NGX_HTTP_LLM_READY_BATCH);
    }

    if (orphans && !mcf->reaper.posted) {
        ngx_post_event(&mcf->reaper, &ngx_posted_events);
    }
}


ngx_int_t
ngx_http_llm_bridge_init(ngx_cycle_t *cycle, ngx_http_llm_main_conf_t *mcf)
{
    ngx_connection_t  *c;

    ngx_queue_init(&mcf->orphans);
    mcf->reaper.handler = ngx_http_llm_reap;
    mcf->reaper.data = mcf;
    mcf->reaper.log = cycle->log;

    mcf->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (mcf->efd == -1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "llm: eventfd() failed");
        return NGX_ERROR;
    }

    c = ngx_get_connection(mcf->efd, cycle->log);
    if (c == NULL) {
        close(mcf->efd);
        mcf->efd = -1;
        return NGX_ERROR;
    }
    c->pool = cycle->pool;
    c->data = mcf;
    c->read->handler = ngx_http_llm_wakeup;
    c->read->log = cycle->log;
    c->write->log = cycle->log;

    /* level-triggered, as ngx_add_channel_event() registers channels */
    if (ngx_add_event(c->read, NGX_READ_EVENT, 0) == NGX_ERROR) {
        ngx_free_connection(c);
        close(mcf->efd);
        mcf->efd = -1;
        return NGX_ERROR;
    }
    mcf->efd_conn = c;
    return NGX_OK;
}


void
ngx_http_llm_bridge_exit(ngx_cycle_t *cycle, ngx_http_llm_main_conf_t *mcf)
{
    ngx_http_llm_model_t  *models = mcf->models.elts;
    ngx_queue_t           *q;
    ngx_http_llm_slot_t   *slot;
    ngx_uint_t             m;

    /* engines first: they join their threads, so no notify runs after */
    for (m = 0; m < mcf->models.nelts; m++) {
        if (models[m].engine != NULL) {
            llm_engine_destroy(models[m].engine);
            models[m].engine = NULL;
        }
    }

    if (mcf->orphans.next != NULL) {
        while (!ngx_queue_empty(&mcf->orphans)) {
            q = ngx_queue_head(&mcf->orphans);
            slot = ngx_queue_data(q, ngx_http_llm_slot_t, queue);
            ngx_queue_remove(q);
            llm_request_release(slot->req);
            free(slot);
        }
    }
    if (mcf->reaper.posted) {
        ngx_delete_posted_event(&mcf->reaper);
    }

    if (mcf->efd_conn != NULL) {
        ngx_close_connection(mcf->efd_conn);   /* closes the eventfd */
        mcf->efd_conn = NULL;
        mcf->efd = -1;
    }
    (void) cycle;
}
