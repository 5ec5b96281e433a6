/*
 * Fork/join thread pool, see thread_pool.h.
 *
 * A job is published as one 64-bit word: generation (24 bits), task count
 * (20 bits) and the next unclaimed task (20 bits).  A thread claims a task
 * with a compare-and-swap on that word, so a claim is only ever granted
 * for the job that is current, and the job's function and context are
 * read after the claim (the caller cannot replace them while a claimed
 * task is unfinished).  The caller returns when every task is done, not
 * when every thread has checked in: on an oversubscribed machine a worker
 * that the scheduler parked is simply not waited for.
 *
 * A guided job (thread_pool_run_guided) claims runs of tasks instead of
 * single ones: a claim takes 1/(2 * threads) of the tasks still unclaimed,
 * but at most 1/(8 * threads) of the job and at least one task, so a job
 * of thousands of small tasks costs a few dozen compare-and-swaps on the
 * shared word, the last claims, one task each, still balance the threads
 * to within one task, and a thread descheduled right after a claim holds
 * back no more of the job than a plain job's 8-per-thread split would.
 */
#include "thread_pool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Spin iterations (each one pause instruction, ~10-40 ns) before a thread
 * sleeps: long enough to bridge the gap between two forks of one forward
 * pass, short enough not to burn a shared core while the engine idles. */
#define SPIN_ITERS 20000

#define GEN_SHIFT  40
#define N_SHIFT    20
#define FIELD_MASK ((1ULL << 20) - 1)
#define MAX_TASKS  ((int) FIELD_MASK)

struct thread_pool {
    int                   n_threads;
    pthread_t            *threads;
    /* the job: valid for whoever holds a claim on the current generation */
    thread_pool_fn        fn;
    void                 *ctx;
    _Atomic uint64_t      job;        /* gen | n_tasks | next */
    atomic_int            guided;     /* claim divisor, 0: one task a claim */
    atomic_uint           wake;       /* futex word: bumped per job */
    atomic_int            sleepers;
    /* join */
    atomic_uint           done;       /* tasks finished in the current job */
    atomic_int            caller_sleeping;
    atomic_int            stop;
};

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

/* Claims and runs tasks of the current job until none are left.  Returns
 * the number run. */
static int run_tasks(thread_pool *p, int thread)
{
    uint64_t w = atomic_load_explicit(&p->job, memory_order_acquire);
    int ran = 0;

    for (;;) {
        uint64_t n = (w >> N_SHIFT) & FIELD_MASK, next = w & FIELD_MASK;
        uint64_t take = 1;
        int div;
        unsigned total;
        if (next >= n) {
            return ran;
        }
        /* a stale w (an older job) fails the exchange below, whatever
         * divisor it is paired with here */
        div = atomic_load_explicit(&p->guided, memory_order_relaxed);
        if (div > 0 && (n - next) / (uint64_t) div > 1) {
            /* at most 1/(4 * div) of the job: a worker the scheduler
             * parks right after a claim holds back no more than that */
            uint64_t cap = n / (4 * (uint64_t) div);
            take = (n - next) / (uint64_t) div;
            take = take > cap ? (cap > 1 ? cap : 1) : take;
        }
        if (!atomic_compare_exchange_weak_explicit(&p->job, &w, w + take,
                                                   memory_order_acq_rel,
                                                   memory_order_acquire)) {
            continue;                     /* w reloaded: retry */
        }
        for (uint64_t t = next; t < next + take; t++) {
            p->fn(p->ctx, (int) t, thread);
        }
        ran += (int) take;
        total = atomic_fetch_add_explicit(&p->done, (unsigned) take,
                                          memory_order_acq_rel) + (unsigned) take;
        if (total == n && atomic_load(&p->caller_sleeping)) {
            futex_wake_all(&p->done);
        }
        w = atomic_load_explicit(&p->job, memory_order_acquire);
    }
}

static void *worker_main(void *arg)
{
    thread_pool *p = ((void **) arg)[0];
    int id = (int) (intptr_t) ((void **) arg)[1];
    /* wake starts at 0: a thread the scheduler starts late must not take
     * a later value (a job's or destroy's bump) as its starting point */
    unsigned seen = 0;

    free(arg);
    for (;;) {
        int spins = 0;
        unsigned w;
        while ((w = atomic_load_explicit(&p->wake, memory_order_acquire))
               == seen && !atomic_load(&p->stop)) {
            if (++spins < SPIN_ITERS) {
                cpu_relax();
                continue;
            }
            /* The caller bumps wake before reading sleepers, and we count
             * ourselves before futex_wait re-checks wake: no lost wake-up. */
            atomic_fetch_add(&p->sleepers, 1);
            futex_wait(&p->wake, seen);
            atomic_fetch_sub(&p->sleepers, 1);
        }
        seen = w;
        if (atomic_load(&p->stop)) {
            return NULL;
        }
        run_tasks(p, id);
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
        void **arg = malloc(2 * sizeof(void *));
        int rc;
        if (arg == NULL) {
            snprintf(err, errlen, "thread pool: out of memory");
            thread_pool_destroy(p);
            return NULL;
        }
        arg[0] = p;
        arg[1] = (void *) (intptr_t) i;
        rc = pthread_create(&p->threads[i], NULL, worker_main, arg);
        if (rc != 0) {
            free(arg);
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

/* One job of at most MAX_TASKS tasks; guided: claim divisor or 0. */
static void run_job(thread_pool *p, int n_tasks, thread_pool_fn fn, void *ctx,
                    int guided)
{
    uint64_t w = atomic_load(&p->job);
    uint64_t gen = ((w >> GEN_SHIFT) + 1) & ((1ULL << 24) - 1);
    int spins = 0;
    unsigned d;

    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->guided, guided, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->job, (gen << GEN_SHIFT)
                                       | ((uint64_t) n_tasks << N_SHIFT),
                          memory_order_release);
    atomic_fetch_add(&p->wake, 1);
    if (atomic_load(&p->sleepers) > 0) {
        futex_wake_all(&p->wake);
    }
    run_tasks(p, 0);
    while ((d = atomic_load_explicit(&p->done, memory_order_acquire))
           != (unsigned) n_tasks) {
        if (++spins < SPIN_ITERS) {
            cpu_relax();
            continue;
        }
        atomic_store(&p->caller_sleeping, 1);
        d = atomic_load(&p->done);
        if (d != (unsigned) n_tasks) {
            futex_wait(&p->done, d);
        }
        atomic_store(&p->caller_sleeping, 0);
    }
}

typedef struct {
    thread_pool_fn fn;
    void          *ctx;
    int            base;
} slice_ctx;

static void slice_task(void *ctx, int task, int thread)
{
    slice_ctx *s = ctx;
    s->fn(s->ctx, s->base + task, thread);
}

static void run(thread_pool *p, int n_tasks, thread_pool_fn fn, void *ctx,
                int guided)
{
    if (n_tasks <= 0) {
        return;
    }
    if (p->n_threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++) {
            fn(ctx, t, 0);
        }
        return;
    }
    if (n_tasks <= MAX_TASKS) {
        run_job(p, n_tasks, fn, ctx, guided);
        return;
    }
    /* more tasks than the job word counts: slices of MAX_TASKS */
    for (int base = 0; base < n_tasks; base += MAX_TASKS) {
        slice_ctx s = { fn, ctx, base };
        run_job(p, n_tasks - base < MAX_TASKS ? n_tasks - base : MAX_TASKS,
                slice_task, &s, guided);
    }
}

void thread_pool_run(thread_pool *p, int n_tasks, thread_pool_fn fn,
                     void *ctx)
{
    run(p, n_tasks, fn, ctx, 0);
}

void thread_pool_run_guided(thread_pool *p, int n_tasks, thread_pool_fn fn,
                            void *ctx)
{
    run(p, n_tasks, fn, ctx, 2 * p->n_threads);
}

void thread_pool_destroy(thread_pool *p)
{
    if (p == NULL) {
        return;
    }
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->wake, 1);
    futex_wake_all(&p->wake);
    for (int i = 1; i < p->n_threads; i++) {
        pthread_join(p->threads[i], NULL);
    }
    free(p->threads);
    free(p);
}
