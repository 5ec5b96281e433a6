/*
 * Continuous-batching scheduler over the paged KV cache.
 *
 * Each step fills a token budget (max_num_batched_tokens):
 *   1. running sequences, oldest first: a decode token each, or the next
 *      chunk of a prompt still being prefilled (chunked prefill);
 *   2. waiting sequences, first come first served, while fewer than
 *      max_num_seqs run and budget is left (prefix cache looked up first).
 * When a running sequence needs a block and none is left, the newest
 * running sequence is preempted: its blocks are freed and it goes back to
 * the front of the waiting queue to be recomputed later (prompt plus the
 * tokens generated so far), so no request fails because memory was tight.
 * Only a sequence that cannot grow even alone in the whole pool is handed
 * back as "failed" (the engine finishes it with length).
 *
 * Paused sequences (the engine sets seq->paused for a request whose reader
 * is behind) are left out of every batch: a running one keeps its blocks
 * but does not count against max_num_seqs, a waiting one is not admitted
 * and does not hold up the queue behind it.  When blocks run short, paused
 * running sequences are preempted first (newest first), both for a running
 * sequence that needs to grow and for a waiting one to be admitted, so
 * readers that stop reading cannot starve the others of memory.  Because
 * paused sequences do not count, more than max_num_seqs may be running;
 * each step still schedules at most max_num_seqs of them, oldest first.
 *
 * Not thread-safe: only the engine thread touches it.
 */
#ifndef LLM_SCHEDULER_H
#define LLM_SCHEDULER_H

#include <stdint.h>
#include "backend.h"
#include "kv_cache.h"

typedef enum {
    SEQ_NEW = 0,         /* not yet added */
    SEQ_WAITING,
    SEQ_RUNNING,
    SEQ_DONE             /* removed */
} sched_seq_state;

typedef struct sched_seq {
    int32_t  *tokens;         /* prompt, then generated tokens */
    int       n_tokens;
    int       cap;
    int       n_prompt;
    int       n_computed;     /* leading tokens whose KV is in the cache */
    int       n_cached;       /* prefix-cache hit at the first admission */
    int       admissions;     /* times moved from waiting to running */
    int       prefix_queried; /* counted in the prefix-cache statistics */
    int       paused;         /* set by the caller: leave out of batches */
    kv_seq    kv;
    sched_seq_state state;
    struct sched_seq *prev, *next;   /* waiting or running list */
    void     *owner;          /* the engine's request */
} sched_seq;

/* Copies the prompt.  Returns 0 or -1 (out of memory). */
int  sched_seq_init(sched_seq *s, const int32_t *prompt, int n_prompt,
                    void *owner);
int  sched_seq_append(sched_seq *s, int32_t token);
/* Frees the token array; the sequence must have been removed. */
void sched_seq_destroy(sched_seq *s);

typedef struct {
    int max_num_seqs;
    int max_num_batched_tokens;
} sched_config;

/* One sequence's part of a step: tokens [start, start + n). */
typedef struct {
    sched_seq *seq;
    int        start;
    int        n;
    int        sample;        /* last row yields the next token */
} sched_entry;

typedef struct {
    sched_entry *entries;
    int          n_entries;
    int          n_sample;    /* entries with sample = 1 */
    llm_batch    batch;       /* arrays owned by the scheduler */
    sched_seq  **preempted;   /* moved back to waiting in this step */
    int          n_preempted;
    sched_seq  **failed;      /* cannot fit alone: removed, finish them */
    int          n_failed;
} sched_output;

typedef struct scheduler scheduler;

scheduler *scheduler_create(const sched_config *cfg, kv_cache *kv);
void scheduler_free(scheduler *s);

/* Appends to the waiting queue. */
void scheduler_add(scheduler *s, sched_seq *seq);
/* Removes from whichever queue holds it and frees its blocks. */
void scheduler_remove(scheduler *s, sched_seq *seq);

int scheduler_num_running(const scheduler *s);
int scheduler_num_waiting(const scheduler *s);
uint64_t scheduler_num_preemptions(const scheduler *s);
/* First running / waiting sequence (iterate with ->next). */
sched_seq *scheduler_running(const scheduler *s);
sched_seq *scheduler_waiting(const scheduler *s);

/*
 * Plans one step into *out (valid until the next call).  Returns the
 * number of tokens scheduled (0: nothing to run), or -1 out of memory.
 */
int scheduler_schedule(scheduler *s, sched_output *out);

/*
 * After the forward pass: advances each scheduled sequence's computed
 * count and registers its full blocks in the prefix cache.  Call before
 * appending sampled tokens.
 */
void scheduler_step_done(scheduler *s, const sched_output *out);

#endif
