/*
 * A persistent pool of compute threads with a cheap fork/join: the caller
 * publishes a job (function, context, task count), every thread including
 * the caller takes tasks from a shared counter until none are left, and
 * the caller returns when all are done.  Idle workers spin briefly (a
 * forward pass forks hundreds of times per token, microseconds apart) and
 * then sleep on a futex so an idle engine costs no CPU.
 */
#ifndef LLM_THREAD_POOL_H
#define LLM_THREAD_POOL_H

#include <stddef.h>

typedef struct thread_pool thread_pool;

/* task in [0, n_tasks); thread in [0, thread_pool_size()) identifies the
 * executing thread (0 is the caller), for per-thread scratch. */
typedef void (*thread_pool_fn)(void *ctx, int task, int thread);

/* n_threads counts the caller: 1 means no extra threads. */
thread_pool *thread_pool_create(int n_threads, char *err, size_t errlen);
int thread_pool_size(const thread_pool *p);
/* Runs fn for every task and returns when all have finished.  Not
 * reentrant: one job at a time, from one caller thread. */
void thread_pool_run(thread_pool *p, int n_tasks, thread_pool_fn fn,
                     void *ctx);
/* The same for many small tasks of equal cost that stream memory in task
 * order (e.g. 16 rows of a matrix each): thread i runs the i-th contiguous
 * range of the tasks, [n_tasks * i / T, n_tasks * (i + 1) / T) for T
 * threads, in order, then steals from the back of the ranges of threads
 * that have not finished theirs (callers may size tasks by that split).
 * Which thread runs which task differs from thread_pool_run; nothing else
 * does. */
void thread_pool_run_ranged(thread_pool *p, int n_tasks, thread_pool_fn fn,
                            void *ctx);
/* Idle workers stop spinning and sleep at once, until the next job: the
 * caller says so when no fork follows soon (the end of a forward pass),
 * so the pool does not hold CPUs the rest of the process (the event loop
 * sending the tokens just made) needs.  The next job wakes them through
 * the futex: a few microseconds once per pass. */
void thread_pool_park(thread_pool *p);
void thread_pool_destroy(thread_pool *p);

#endif
