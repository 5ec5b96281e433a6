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
 *
 * The watchdog, a timer once a second, also refreshes this worker's
 * /metrics snapshots in shared memory, and reads each engine's heartbeat.  An
 * engine that has work but finished no step for watchdog= (a kernel that
 * never returns, a deadlock), or that went to LLM_STATE_FAILED after it had
 * served (a lost CUDA context, repeated forward failures), cannot recover
 * inside this process: the worker fails that model's requests at once
 * (503 / an SSE error event), answers 503 from then on (/health says why)
 * and shuts down gracefully, so that the master starts a fresh worker.
 */
#include "ngx_http_llm_module.h"

#include <sys/eventfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define NGX_HTTP_LLM_READY_BATCH  64
#define NGX_HTTP_LLM_WATCHDOG_TICK  1000    /* ms */


void
ngx_http_llm_engine_notify(void *data)
{
    ngx_http_llm_notify_t  *n = data;
    uint64_t                one = 1;

    /*
     * Engine thread.  One write per run of the handler: a token made while
     * the event loop has yet to take the previous one costs no syscall
     * (ngx_atomic_cmp_set is a full barrier: the events pushed before it
     * are seen by the handler that clears the flag after it).
     */
    if (!ngx_atomic_cmp_set(&n->pending, 0, 1)) {
        return;
    }

    /* a failed write means the counter is already non-zero (EAGAIN) and
     * the event loop will wake anyway */
    if (write(n->fd, &one, sizeof(one)) != sizeof(one)) {
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
ngx_http_llm_report_load(ngx_http_llm_main_conf_t *mcf,
    ngx_http_llm_model_t *m, ngx_log_t *log)
{
    char            err[LLM_ERR_MAX];
    llm_model_info  info;

    err[0] = '\0';
    switch (llm_engine_get_state(m->engine, err, sizeof(err))) {
    case LLM_STATE_LOADING:
        return;
    case LLM_STATE_READY:
        /* scrapes answered by other workers see the loaded engine (its
         * KV blocks) from the moment this line is in error_log */
        ngx_http_llm_metrics_publish(mcf);
        llm_engine_model_info(m->engine, &info);
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "llm_model \"%V\": worker %ui serves on %s "
                      "(%L KV blocks of %d tokens, %s)", &m->name,
                      ngx_worker, info.device, (int64_t) info.kv_blocks_total,
                      info.block_size, info.kv_cache_dtype);
        break;
    default:
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "llm_model \"%V\": worker %ui failed to load on %s: "
                      "%s", &m->name, ngx_worker, m->worker_device, err);
        break;
    }
    m->load_reported = 1;
}


/*
 * The model's engine cannot serve any more: fail its requests now and have
 * the worker replaced.  stuck: the engine thread does not return (it is
 * neither joined nor freed at exit).
 */
static void
ngx_http_llm_model_broken(ngx_http_llm_main_conf_t *mcf,
    ngx_http_llm_model_t *m, ngx_uint_t stuck, ngx_log_t *log)
{
    ngx_queue_t         *q;
    ngx_http_llm_ctx_t  *ctx;
    ngx_connection_t    *c;
    oai_error            err;
    ngx_uint_t           n = 0;

    m->broken = 1;
    m->stuck = stuck;

    for (q = ngx_queue_head(&m->requests);
         q != ngx_queue_sentinel(&m->requests);
         q = ngx_queue_next(q))
    {
        n++;
    }

    if (ngx_process == NGX_PROCESS_WORKER) {
        ngx_log_error(NGX_LOG_ALERT, log, 0,
                      "llm_model \"%V\": %s; %ui requests failed, worker "
                      "%ui exits to be replaced", &m->name, m->failure, n,
                      ngx_worker);
        /* as on nginx -s quit: requests still writing finish, the master
         * starts a fresh worker when this one has exited */
        ngx_quit = 1;
    } else {
        /* no master to start another process: keep answering 503 */
        ngx_log_error(NGX_LOG_ALERT, log, 0,
                      "llm_model \"%V\": %s; %ui requests failed, "
                      "answering 503 until nginx is restarted "
                      "(master_process off)", &m->name, m->failure, n);
    }

    oai_error_set(&err, NGX_HTTP_SERVICE_UNAVAILABLE,
                  "service_unavailable_error", "model_failed", NULL, "%s",
                  m->failure);

    while (!ngx_queue_empty(&m->requests)) {
        q = ngx_queue_head(&m->requests);
        ctx = ngx_queue_data(q, ngx_http_llm_ctx_t, link);
        ngx_queue_remove(q);
        ctx->linked = 0;
        c = ctx->request->connection;
        ngx_http_llm_abort(ctx, &err);
        ngx_http_run_posted_requests(c);
    }
}


/* An engine that failed after it had served (not a failed load). */
static void
ngx_http_llm_check_failed(ngx_http_llm_main_conf_t *mcf,
    ngx_http_llm_model_t *m, ngx_log_t *log)
{
    char  err[LLM_ERR_MAX];

    if (m->engine == NULL || m->broken) {
        return;
    }
    err[0] = '\0';
    switch (llm_engine_get_state(m->engine, err, sizeof(err))) {
    case LLM_STATE_READY:
        m->served = 1;
        return;
    case LLM_STATE_LOADING:
        return;
    default:
        if (!m->served) {
            return;    /* a failed load: reported once, answered with 503 */
        }
        /* the engine's message is bounded so that the prefix fits */
        snprintf(m->failure, sizeof(m->failure), "the engine failed: %.400s",
                 err[0] ? err : "no reason given");
        ngx_http_llm_model_broken(mcf, m, 0, log);
    }
}


static double
ngx_http_llm_monotonic(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + ts.tv_nsec / 1e9;
}


static void
ngx_http_llm_watchdog(ngx_event_t *ev)
{
    ngx_http_llm_main_conf_t  *mcf = ev->data;
    ngx_http_llm_model_t      *m;
    llm_engine_heartbeat       hb;
    ngx_uint_t                 i;
    double                     stalled;

    m = mcf->models.elts;
    for (i = 0; i < mcf->models.nelts; i++) {
        if (m[i].engine == NULL || m[i].broken) {
            continue;
        }
        ngx_http_llm_check_failed(mcf, &m[i], ev->log);
        if (m[i].broken || !m[i].served) {
            continue;
        }
        llm_engine_heartbeat_get(m[i].engine, &hb);
        stalled = ngx_http_llm_monotonic() - hb.last_progress;
        if (hb.busy && stalled * 1000 > (double) m[i].watchdog) {
            snprintf(m[i].failure, sizeof(m[i].failure),
                     "the engine made no progress for %.1f s with requests "
                     "in flight (watchdog=%lums, %llu steps done)", stalled,
                     (unsigned long) m[i].watchdog,
                     (unsigned long long) hb.steps);
            ngx_http_llm_model_broken(mcf, &m[i], 1, ev->log);
        }
    }

    /* a scrape answered by another worker reads these snapshots */
    ngx_http_llm_metrics_publish(mcf);
    ngx_add_timer(ev, NGX_HTTP_LLM_WATCHDOG_TICK);
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

    /*
     * Edge-triggered (epoll), every write is an edge of its own: the
     * counter is never read, one syscall less per token on the TTFT/ITL
     * path (it grows by one per wake-up at most: 2^64 is out of reach).
     * Level-triggered (other event methods), one read resets it.
     */
    if (!mcf->efd_clear
        && read(mcf->notify.fd, &count, sizeof(count)) != sizeof(count))
    {
        /* EAGAIN: a wake-up whose counter an earlier read took */
    }

    /* before the engines are polled: a notify after this writes again */
    (void) ngx_atomic_cmp_set(&mcf->notify.pending, 1, 0);

    models = mcf->models.elts;
    for (m = 0; m < mcf->models.nelts; m++) {
        if (models[m].engine == NULL) {
            continue;
        }
        if (!models[m].load_reported) {
            ngx_http_llm_report_load(mcf, &models[m], rev->log);
        }
        if (models[m].broken) {
            continue;      /* its requests are failed and orphaned */
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

        /* a state change notifies too */
        ngx_http_llm_check_failed(mcf, &models[m], rev->log);
    }

    if (orphans && !mcf->reaper.posted) {
        ngx_post_event(&mcf->reaper, &ngx_posted_events);
    }
}


ngx_int_t
ngx_http_llm_bridge_init(ngx_cycle_t *cycle, ngx_http_llm_main_conf_t *mcf)
{
    ngx_connection_t      *c;
    ngx_http_llm_model_t  *models = mcf->models.elts;
    ngx_uint_t             m;

    ngx_queue_init(&mcf->orphans);
    mcf->reaper.handler = ngx_http_llm_reap;
    mcf->reaper.data = mcf;
    mcf->reaper.log = cycle->log;

    for (m = 0; m < mcf->models.nelts; m++) {
        ngx_queue_init(&models[m].requests);
        models[m].served = 0;
        models[m].broken = 0;
        models[m].stuck = 0;
        models[m].failure[0] = '\0';
    }

    mcf->notify.pending = 0;
    mcf->notify.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (mcf->notify.fd == -1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "llm: eventfd() failed");
        return NGX_ERROR;
    }

    c = ngx_get_connection(mcf->notify.fd, cycle->log);
    if (c == NULL) {
        close(mcf->notify.fd);
        mcf->notify.fd = -1;
        return NGX_ERROR;
    }
    c->pool = cycle->pool;
    c->data = mcf;
    c->read->handler = ngx_http_llm_wakeup;
    c->read->log = cycle->log;
    c->write->log = cycle->log;

    /* edge-triggered where the event method has it (epoll), else
     * level-triggered as ngx_add_channel_event() registers channels */
    mcf->efd_clear = (ngx_event_flags & NGX_USE_CLEAR_EVENT) ? 1 : 0;
    if (ngx_add_event(c->read, NGX_READ_EVENT,
                      mcf->efd_clear ? NGX_CLEAR_EVENT : 0)
        == NGX_ERROR)
    {
        ngx_free_connection(c);
        close(mcf->notify.fd);
        mcf->notify.fd = -1;
        return NGX_ERROR;
    }
    mcf->efd_conn = c;

    /* cancelable: a graceful shutdown does not wait for it */
    mcf->watchdog.handler = ngx_http_llm_watchdog;
    mcf->watchdog.data = mcf;
    mcf->watchdog.log = cycle->log;
    mcf->watchdog.cancelable = 1;
    ngx_add_timer(&mcf->watchdog, NGX_HTTP_LLM_WATCHDOG_TICK);
    return NGX_OK;
}


void
ngx_http_llm_bridge_exit(ngx_cycle_t *cycle, ngx_http_llm_main_conf_t *mcf)
{
    ngx_http_llm_model_t  *models = mcf->models.elts;
    ngx_queue_t           *q;
    ngx_http_llm_slot_t   *slot;
    ngx_connection_t      *c;
    ngx_uint_t             m, stuck = 0;

    if (mcf->watchdog.timer_set) {
        ngx_del_timer(&mcf->watchdog);
    }

    /* engines first: they join their threads, so no notify runs after */
    for (m = 0; m < mcf->models.nelts; m++) {
        if (models[m].engine == NULL) {
            continue;
        }
        if (models[m].stuck) {
            /*
             * llm_engine_destroy() joins the engine thread, which does not
             * return from its step: the worker would never exit.  The
             * engine is left as it is; the process ends right after this.
             */
            ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                          "llm_model \"%V\": the stalled engine is not "
                          "destroyed (its thread cannot be joined)",
                          &models[m].name);
            stuck = 1;
        } else {
            llm_engine_destroy(models[m].engine);
        }
        models[m].engine = NULL;
    }

    if (mcf->orphans.next != NULL) {
        while (!ngx_queue_empty(&mcf->orphans)) {
            q = ngx_queue_head(&mcf->orphans);
            slot = ngx_queue_data(q, ngx_http_llm_slot_t, queue);
            ngx_queue_remove(q);
            /* the caller's reference only: a stuck engine keeps its own */
            llm_request_release(slot->req);
            free(slot);
        }
    }
    if (mcf->reaper.posted) {
        ngx_delete_posted_event(&mcf->reaper);
    }

    c = mcf->efd_conn;
    if (c != NULL) {
        if (stuck) {
            /*
             * A stuck engine thread still holds the notify hook: the
             * eventfd stays open until the process ends, so that a late
             * write lands there and not in whatever file would reuse the
             * descriptor.  The connection is freed (no "open socket" alert).
             */
            if (c->read->active) {
                ngx_del_event(c->read, NGX_READ_EVENT, 0);
            }
            ngx_free_connection(c);
            c->fd = (ngx_socket_t) -1;
        } else {
            ngx_close_connection(c);           /* closes the eventfd */
            mcf->notify.fd = -1;
        }
        mcf->efd_conn = NULL;
    }
}
