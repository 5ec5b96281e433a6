/*
 * Fork/join thread pool: generation counter + futex.  See thread_pool.h.
 */
#include "thread_pool.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Spin iterations (each one pause instruction, ~10-40 ns) before a thread
 * sleeps: long enough to bridge the gap between two forks of one forward
 * pass, short enough not to burn a shared core while the engine idles. */
#define SPIN_ITERS 20000

struct thread_pool {
    int             n_threads;
    pthread_t      *threads;
    /* the job */
    thread_pool_fn  fn;
    void           *ctx;
    int             n_tasks;
    atomic_int      next_task;
    /* fork: bumped once per job; workers wait for it to change */
    atomic_uint     generation;
    atomic_int      sleepers;
    /* join: workers still running the current job */
    atomic_int      pending;
    atomic_int      caller_sleeping;
    atomic_int      stop;
};

typedef struct {
    thread_pool *pool;
    int          id;
} worker_arg;

static void futex_wait(atomic_uint *addr, unsigned val)
{
    syscall(SYS_futex, (unsigned *) addr, FUTEX_WAIT_PRIVATE, val, NULL,
            NULL, 0);
}

static void futex_wake_all(atomic_uint *addr)
{
    syscall(SYS_futex, (unsigned *) addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL,
            NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

static void run_tasks(thread_pool *p, int thread)
{
    int t;

    while ((t = atomic_fetch_add_explicit(&p->next_task, 1,
                                          memory_order_relaxed)) < p->n_tasks) {
        p->fn(p->ctx, t, thread);
    }
}

static void *worker_main(void *arg)
{
    worker_arg *wa = arg;
    thread_pool *p = wa->pool;
    int id = wa->id;
    unsigned seen = 0, g;

    free(wa);
    for (;;) {
        int spins = 0;
        while ((g = atomic_load_explicit(&p->generation,
                                         memory_order_acquire)) == seen) {
            if (++spins < SPIN_ITERS) {
                cpu_relax();
                continue;
            }
            /* The caller bumps generation before reading sleepers, and we
             * count ourselves before re-checking it in futex_wait, so a
             * wake-up cannot be lost. */
            atomic_fetch_add(&p->sleepers, 1);
            futex_wait(&p->generation, seen);
            atomic_fetch_sub(&p->sleepers, 1);
        }
        seen = g;
        if (atomic_load(&p->stop)) {
            return NULL;
        }
        run_tasks(p, id);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1
            && atomic_load(&p->caller_sleeping)) {
            futex_wake_all((atomic_uint *) &p->pending);
        }
    }
}

thread_pool *thread_pool_create(int n_threads, char *err, size_t errlen)
{
    thread_pool *p;

    if (n_threads < 1) {
        n_threads = 1;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL || (p->threads = calloc((size_t) n_threads,
                                          sizeof(pthread_t))) == NULL) {
        free(p);
        snprintf(err, errlen, "thread pool: out of memory");
        return NULL;
    }
    p->n_threads = 1;
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof(*wa));
        int rc;
        if (wa == NULL) {
            snprintf(err, errlen, "thread pool: out of memory");
            thread_pool_destroy(p);
            return NULL;
        }
        wa->pool = p;
        wa->id = i;
        rc = pthread_create(&p->threads[i], NULL, worker_main, wa);
        if (rc != 0) {
            free(wa);
            snprintf(err, errlen, "thread pool: cannot start thread %d: %s",
                     i, strerror(rc));
            thread_pool_destroy(p);
            return NULL;
        }
        p->n_threads++;
    }
    return p;
}

int thread_pool_size(const thread_pool *p)
{
    return p->n_threads;
}

void thread_pool_run(thread_pool *p, int n_tasks, thread_pool_fn fn,
                     void *ctx)
{
    int spins = 0, left;

    if (n_tasks <= 0) {
        return;
    }
    if (p->n_threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++) {
            fn(ctx, t, 0);
        }
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next_task, 0, memory_order_relaxed);
    atomic_store_explicit(&p->pending, p->n_threads - 1, memory_order_relaxed);
    atomic_fetch_add(&p->generation, 1);          /* publishes the job */
    if (atomic_load(&p->sleepers) > 0) {
        futex_wake_all(&p->generation);
    }
    run_tasks(p, 0);
    while ((left = atomic_load_explicit(&p->pending, memory_order_acquire))
           != 0) {
        if (++spins < SPIN_ITERS) {
            cpu_relax();
            continue;
        }
        atomic_store(&p->caller_sleeping, 1);
        left = atomic_load(&p->pending);
        if (left != 0) {
            futex_wait((atomic_uint *) &p->pending, (unsigned) left);
        }
        atomic_store(&p->caller_sleeping, 0);
    }
}

void thread_pool_destroy(thread_pool *p)
{
    if (p == NULL) {
        return;
    }
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->generation, 1);
    futex_wake_all(&p->generation);
    for (int i = 1; i < p->n_threads; i++) {
        pthread_join(p->threads[i], NULL);
    }
    free(p->threads);
    free(p);
}
