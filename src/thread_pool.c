/*
 * Fork/join thread pool, see thread_pool.h.
 *
 * A job is published as one 64-bit word: a ranged flag (1 bit),
 * generation (23 bits), task count (20 bits) and the next unclaimed task
 * (20 bits).  A thread claims a task with a compare-and-swap on that
 * word, so a claim is only ever granted for the job that is current, and
 * the job's function and context are read after the claim (the caller
 * cannot replace them while a claimed task is unfinished).  The caller
 * returns when every task is done, not when every thread has checked in:
 * on an oversubscribed machine a worker that the scheduler parked is
 * simply not waited for.
 *
 * A ranged job (thread_pool_run_ranged) gives every thread a contiguous
 * range of the tasks, claimed from its front one task at a time; a thread
 * whose range is empty steals from the back of the others'.  Decode's
 * matrices are streamed once from memory, and the hardware prefetcher
 * follows one long forward stream per thread far better than the short
 * interleaved runs of a shared counter (measured on the development
 * machine: 4 MB matrices, 2 threads, 40 GB/s interleaved, 50 GB/s in
 * ranges); stealing keeps a thread the scheduler parks from holding back
 * more than the task it is in.  Each range is one 64-bit word, generation
 * (23 bits) | front (20) | back (20), so a claim is granted only for the
 * current job, as above.
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
#define GEN_MASK   ((1ULL << 23) - 1)
/* in the job word: the tasks are claimed through the per-thread ranges */
#define RANGED     (1ULL << 63)

/* one per thread, on its own cache line (the owner claims at its front
 * for every task; the others touch it only to steal) */
typedef struct {
    _Alignas(64) _Atomic uint64_t word;   /* gen | front | back */
} task_range;

struct thread_pool {
    int                   n_threads;
    pthread_t            *threads;
    /* the job: valid for whoever holds a claim on the current generation */
    thread_pool_fn        fn;
    void                 *ctx;
    _Atomic uint64_t      job;        /* ranged | gen | n_tasks | next */
    task_range           *ranges;     /* [n_threads], ranged jobs */
    atomic_uint           wake;       /* futex word: bumped per job */
    atomic_int            sleepers;
    atomic_int            parked;     /* thread_pool_park: sleep, no spin */
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

/* Counts n finished tasks of a job of n_tasks; wakes a sleeping caller
 * with the last. */
static void tasks_done(thread_pool *p, unsigned n, uint64_t n_tasks)
{
    unsigned total;

    if (n == 0) {
        return;
    }
    total = atomic_fetch_add_explicit(&p->done, n, memory_order_acq_rel) + n;
    if (total == n_tasks && atomic_load(&p->caller_sleeping)) {
        futex_wake_all(&p->done);
    }
}

/* Claims one task of range r for generation gen: from the front (the
 * owner) or the back (a thief).  Returns the task, or -1 when the range
 * is empty or belongs to another job. */
static int claim_in_range(task_range *r, uint64_t gen, int front)
{
    uint64_t w = atomic_load_explicit(&r->word, memory_order_acquire);

    for (;;) {
        uint64_t lo = (w >> N_SHIFT) & FIELD_MASK, hi = w & FIELD_MASK;
        if ((w >> GEN_SHIFT) != gen || lo >= hi) {
            return -1;
        }
        if (atomic_compare_exchange_weak_explicit(
                &r->word, &w, front ? w + (1ULL << N_SHIFT) : w - 1,
                memory_order_acq_rel, memory_order_acquire)) {
            return (int) (front ? lo : hi - 1);
        }
    }
}

/* A ranged job: this thread's range front to back, then the others' from
 * their backs.  Finished tasks are counted once, on the way out, so the
 * shared counter costs one atomic per thread instead of one per task. */
static void run_ranged(thread_pool *p, int thread, uint64_t w)
{
    uint64_t gen = (w >> GEN_SHIFT) & GEN_MASK, n = (w >> N_SHIFT) & FIELD_MASK;
    unsigned ran = 0;
    int task;

    while ((task = claim_in_range(&p->ranges[thread], gen, 1)) >= 0) {
        p->fn(p->ctx, task, thread);
        ran++;
    }
    for (int i = 1; i < p->n_threads; i++) {
        task_range *r = &p->ranges[(thread + i) % p->n_threads];
        while ((task = claim_in_range(r, gen, 0)) >= 0) {
            p->fn(p->ctx, task, thread);
            ran++;
        }
    }
    tasks_done(p, ran, n);
}

/* Claims and runs tasks of the current job until none are left. */
static void run_tasks(thread_pool *p, int thread)
{
    uint64_t w = atomic_load_explicit(&p->job, memory_order_acquire);

    for (;;) {
        uint64_t n = (w >> N_SHIFT) & FIELD_MASK, next = w & FIELD_MASK;
        if (w & RANGED) {
            /* checked on every reload: the caller may have published a
             * ranged job since, whose word must never be claimed here */
            run_ranged(p, thread, w);
            return;
        }
        if (next >= n) {
            return;
        }
        if (!atomic_compare_exchange_weak_explicit(&p->job, &w, w + 1,
                                                   memory_order_acq_rel,
                                                   memory_order_acquire)) {
            continue;                     /* w reloaded: retry */
        }
        p->fn(p->ctx, (int) next, thread);
        tasks_done(p, 1, n);
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
            if (++spins < SPIN_ITERS
                && !atomic_load_explicit(&p->parked, memory_order_relaxed)) {
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
    if (p == NULL
        || (p->threads = calloc((size_t) n_threads, sizeof(pthread_t))) == NULL
        || (p->ranges = aligned_alloc(_Alignof(task_range),
                                      (size_t) n_threads * sizeof(task_range)))
           == NULL) {
        if (p != NULL) {
            free(p->threads);
        }
        free(p);
        snprintf(err, errlen, "thread pool: out of memory");
        return NULL;
    }
    for (int i = 0; i < n_threads; i++) {
        atomic_init(&p->ranges[i].word, 0);
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

/* One job of at most MAX_TASKS tasks, ranged or from the shared counter. */
static void run_job(thread_pool *p, int n_tasks, thread_pool_fn fn, void *ctx,
                    int ranged)
{
    uint64_t w = atomic_load(&p->job);
    uint64_t gen = ((w >> GEN_SHIFT) + 1) & GEN_MASK;
    int spins = 0;
    unsigned d;

    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    if (ranged) {
        /* thread i: tasks [n * i / T, n * (i + 1) / T) */
        for (int i = 0; i < p->n_threads; i++) {
            uint64_t lo = (uint64_t) n_tasks * (uint64_t) i
                          / (uint64_t) p->n_threads;
            uint64_t hi = (uint64_t) n_tasks * (uint64_t) (i + 1)
                          / (uint64_t) p->n_threads;
            atomic_store_explicit(&p->ranges[i].word,
                                  (gen << GEN_SHIFT) | (lo << N_SHIFT) | hi,
                                  memory_order_relaxed);
        }
    }
    atomic_store_explicit(&p->parked, 0, memory_order_relaxed);
    /* release: the ranges, fn and ctx are visible to whoever sees gen */
    atomic_store_explicit(&p->job, (ranged ? RANGED : 0) | (gen << GEN_SHIFT)
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
                int ranged)
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
        run_job(p, n_tasks, fn, ctx, ranged);
        return;
    }
    /* more tasks than the job word counts: slices of MAX_TASKS */
    for (int base = 0; base < n_tasks; base += MAX_TASKS) {
        slice_ctx s = { fn, ctx, base };
        run_job(p, n_tasks - base < MAX_TASKS ? n_tasks - base : MAX_TASKS,
                slice_task, &s, ranged);
    }
}

void thread_pool_run(thread_pool *p, int n_tasks, thread_pool_fn fn,
                     void *ctx)
{
    run(p, n_tasks, fn, ctx, 0);
}

void thread_pool_run_ranged(thread_pool *p, int n_tasks, thread_pool_fn fn,
                            void *ctx)
{
    run(p, n_tasks, fn, ctx, 1);
}

void thread_pool_park(thread_pool *p)
{
    atomic_store_explicit(&p->parked, 1, memory_order_relaxed);
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
    free(p->ranges);
    free(p);
}
