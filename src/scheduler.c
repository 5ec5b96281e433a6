/*
 * Continuous-batching scheduler (see scheduler.h for the policy).
 */
#include "scheduler.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    sched_seq *head, *tail;
    int        n;
} seq_list;

struct scheduler {
    sched_config cfg;
    kv_cache    *kv;
    seq_list     running;
    seq_list     waiting;
    uint64_t     preemptions;

    /* output buffers, grown on demand */
    sched_entry *entries;
    int          entries_cap;
    sched_seq  **preempted, **failed;
    int          preempted_cap, failed_cap;
    int32_t     *token_ids, *positions, *logit_rows;
    int          tokens_cap;
    int32_t     *seq_start, *seq_len;
    int          seqs_cap;
    int32_t     *block_tables;
    size_t       block_tables_cap;
};

/* ---- sequences ---------------------------------------------------------- */

int sched_seq_init(sched_seq *s, const int32_t *prompt, int n_prompt,
                   void *owner)
{
    memset(s, 0, sizeof(*s));
    s->cap = n_prompt + 16;
    s->tokens = malloc((size_t) s->cap * sizeof(int32_t));
    if (s->tokens == NULL) {
        return -1;
    }
    if (n_prompt > 0) {
        memcpy(s->tokens, prompt, (size_t) n_prompt * sizeof(int32_t));
    }
    s->n_tokens = s->n_prompt = n_prompt;
    kv_seq_init(&s->kv);
    s->state = SEQ_NEW;
    s->owner = owner;
    return 0;
}

int sched_seq_append(sched_seq *s, int32_t token)
{
    if (s->n_tokens == s->cap) {
        int cap = s->cap * 2;
        int32_t *t = realloc(s->tokens, (size_t) cap * sizeof(int32_t));

        if (t == NULL) {
            return -1;
        }
        s->tokens = t;
        s->cap = cap;
    }
    s->tokens[s->n_tokens++] = token;
    return 0;
}

void sched_seq_destroy(sched_seq *s)
{
    free(s->tokens);
    kv_seq_destroy(&s->kv);
    s->tokens = NULL;
    s->n_tokens = s->cap = 0;
}

/* ---- lists -------------------------------------------------------------- */

static void list_unlink(seq_list *l, sched_seq *s)
{
    if (s->prev) s->prev->next = s->next; else l->head = s->next;
    if (s->next) s->next->prev = s->prev; else l->tail = s->prev;
    s->prev = s->next = NULL;
    l->n--;
}

static void list_push_back(seq_list *l, sched_seq *s)
{
    s->next = NULL;
    s->prev = l->tail;
    if (l->tail) l->tail->next = s; else l->head = s;
    l->tail = s;
    l->n++;
}

static void list_push_front(seq_list *l, sched_seq *s)
{
    s->prev = NULL;
    s->next = l->head;
    if (l->head) l->head->prev = s; else l->tail = s;
    l->head = s;
    l->n++;
}

/* ---- scheduler ---------------------------------------------------------- */

scheduler *scheduler_create(const sched_config *cfg, kv_cache *kv)
{
    scheduler *s;

    if (cfg->max_num_seqs < 1 || cfg->max_num_batched_tokens < 1) {
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return NULL;
    }
    s->cfg = *cfg;
    s->kv = kv;
    return s;
}

void scheduler_free(scheduler *s)
{
    if (s == NULL) {
        return;
    }
    free(s->entries);
    free(s->preempted);
    free(s->failed);
    free(s->token_ids);
    free(s->positions);
    free(s->logit_rows);
    free(s->seq_start);
    free(s->seq_len);
    free(s->block_tables);
    free(s);
}

void scheduler_add(scheduler *s, sched_seq *seq)
{
    seq->state = SEQ_WAITING;
    list_push_back(&s->waiting, seq);
}

void scheduler_remove(scheduler *s, sched_seq *seq)
{
    if (seq->state == SEQ_RUNNING) {
        list_unlink(&s->running, seq);
    } else if (seq->state == SEQ_WAITING) {
        list_unlink(&s->waiting, seq);
    }
    kv_cache_release(s->kv, &seq->kv);
    seq->n_computed = 0;
    seq->state = SEQ_DONE;
}

int scheduler_num_running(const scheduler *s) { return s->running.n; }
int scheduler_num_waiting(const scheduler *s) { return s->waiting.n; }
uint64_t scheduler_num_preemptions(const scheduler *s)
{
    return s->preemptions;
}
sched_seq *scheduler_running(const scheduler *s) { return s->running.head; }
sched_seq *scheduler_waiting(const scheduler *s) { return s->waiting.head; }

static int grow(void **p, int *cap, int want, size_t elem)
{
    void *np;
    int c;

    if (want <= *cap) {
        return 0;
    }
    c = *cap ? *cap : 16;
    while (c < want) {
        c *= 2;
    }
    np = realloc(*p, (size_t) c * elem);
    if (np == NULL) {
        return -1;
    }
    *p = np;
    *cap = c;
    return 0;
}

static int push_seq(sched_seq ***arr, int *n, int *cap, sched_seq *seq)
{
    if (grow((void **) arr, cap, *n + 1, sizeof(sched_seq *)) != 0) {
        return -1;
    }
    (*arr)[(*n)++] = seq;
    return 0;
}

static int add_entry(scheduler *s, sched_output *out, sched_seq *seq, int n)
{
    sched_entry *e;

    if (grow((void **) &s->entries, &s->entries_cap, out->n_entries + 1,
             sizeof(sched_entry)) != 0)
    {
        return -1;
    }
    out->entries = s->entries;
    e = &s->entries[out->n_entries++];
    e->seq = seq;
    e->start = seq->n_computed;
    e->n = n;
    e->sample = seq->n_computed + n == seq->n_tokens;
    out->n_sample += e->sample;
    return 0;
}

/* Frees a running sequence's blocks and puts it at the waiting front. */
static int preempt(scheduler *s, sched_output *out, sched_seq *seq)
{
    list_unlink(&s->running, seq);
    kv_cache_release(s->kv, &seq->kv);
    seq->n_computed = 0;
    seq->state = SEQ_WAITING;
    list_push_front(&s->waiting, seq);
    s->preemptions++;
    if (push_seq(&s->preempted, &out->n_preempted, &s->preempted_cap,
                 seq) != 0)
    {
        return -1;
    }
    out->preempted = s->preempted;
    return 0;
}

/* Newest running paused sequence other than except, or NULL. */
static sched_seq *newest_paused(const scheduler *s, const sched_seq *except)
{
    sched_seq *seq;

    for (seq = s->running.tail; seq != NULL; seq = seq->prev) {
        if (seq->paused && seq != except) {
            return seq;
        }
    }
    return NULL;
}

static int fail_seq(scheduler *s, sched_output *out, sched_seq *seq)
{
    scheduler_remove(s, seq);
    if (push_seq(&s->failed, &out->n_failed, &s->failed_cap, seq) != 0) {
        return -1;
    }
    out->failed = s->failed;
    return 0;
}

static int build_batch(scheduler *s, sched_output *out, int n_tok)
{
    llm_batch *b = &out->batch;
    int max_blocks = 1, i, j, t = 0, row = 0;

    for (i = 0; i < out->n_entries; i++) {
        if (out->entries[i].seq->kv.n_blocks > max_blocks) {
            max_blocks = out->entries[i].seq->kv.n_blocks;
        }
    }
    if (n_tok > s->tokens_cap) {
        int c = n_tok * 2;
        int32_t *a;

        /* Each array keeps its old contents valid if a later one fails;
         * the shared capacity only grows once all three have. */
        if ((a = realloc(s->token_ids, (size_t) c * 4)) == NULL) return -1;
        s->token_ids = a;
        if ((a = realloc(s->positions, (size_t) c * 4)) == NULL) return -1;
        s->positions = a;
        if ((a = realloc(s->logit_rows, (size_t) c * 4)) == NULL) return -1;
        s->logit_rows = a;
        s->tokens_cap = c;
    }
    if (out->n_entries + 1 > s->seqs_cap) {
        int c = (out->n_entries + 1) * 2;
        int32_t *a = realloc(s->seq_start, (size_t) c * 4);
        int32_t *l;

        if (a == NULL) return -1;
        s->seq_start = a;
        l = realloc(s->seq_len, (size_t) c * 4);
        if (l == NULL) return -1;
        s->seq_len = l;
        s->seqs_cap = c;
    }
    if ((size_t) out->n_entries * max_blocks > s->block_tables_cap) {
        size_t c = (size_t) out->n_entries * max_blocks * 2;
        int32_t *a = realloc(s->block_tables, c * 4);

        if (a == NULL) return -1;
        s->block_tables = a;
        s->block_tables_cap = c;
    }

    for (i = 0; i < out->n_entries; i++) {
        const sched_entry *e = &out->entries[i];
        const sched_seq *seq = e->seq;
        int32_t *bt = s->block_tables + (size_t) i * max_blocks;

        s->seq_start[i] = t;
        s->seq_len[i] = e->start + e->n;
        for (j = 0; j < e->n; j++, t++) {
            s->token_ids[t] = seq->tokens[e->start + j];
            s->positions[t] = e->start + j;
        }
        if (e->sample) {
            s->logit_rows[row++] = t - 1;
        }
        memcpy(bt, seq->kv.blocks, (size_t) seq->kv.n_blocks * 4);
        for (j = seq->kv.n_blocks; j < max_blocks; j++) {
            bt[j] = -1;
        }
    }
    s->seq_start[out->n_entries] = t;

    b->n_tokens = t;
    b->token_ids = s->token_ids;
    b->positions = s->positions;
    b->n_seqs = out->n_entries;
    b->seq_start = s->seq_start;
    b->seq_len = s->seq_len;
    b->block_tables = s->block_tables;
    b->max_blocks = max_blocks;
    b->logit_rows = s->logit_rows;
    b->n_logits = row;
    return 0;
}

int scheduler_schedule(scheduler *s, sched_output *out)
{
    int budget = s->cfg.max_num_batched_tokens;
    int n_tok = 0, n_run = 0, n_active = 0;
    int preempted_any = 0;
    sched_seq *seq, *next;

    memset(out, 0, sizeof(*out));

    /* 1. running sequences, oldest first, paused ones left out */
    seq = s->running.head;
    while (seq != NULL && budget > 0 && n_run < s->cfg.max_num_seqs) {
        int need = seq->n_tokens - seq->n_computed;
        int n = need < budget ? need : budget;
        int scheduled = 1;

        if (seq->paused) {
            seq = seq->next;
            continue;
        }
        while (kv_cache_allocate(s->kv, &seq->kv, seq->n_computed + n) != 0) {
            sched_seq *victim = newest_paused(s, seq);

            if (victim == NULL) {
                victim = s->running.tail;
            }
            preempted_any = 1;
            if (victim != seq) {
                if (preempt(s, out, victim) != 0) {
                    return -1;
                }
                continue;
            }
            scheduled = 0;
            if (seq == s->running.head) {
                /* Alone and still no room: the pool cannot hold it. */
                if (fail_seq(s, out, seq) != 0) {
                    return -1;
                }
            } else if (preempt(s, out, seq) != 0) {
                return -1;
            }
            break;
        }
        if (!scheduled) {
            /* seq was the tail: nothing after it is running. */
            break;
        }
        if (add_entry(s, out, seq, n) != 0) {
            return -1;
        }
        budget -= n;
        n_tok += n;
        n_run++;
        seq = seq->next;
    }
    for (seq = s->running.head; seq != NULL; seq = seq->next) {
        n_active += !seq->paused;
    }

    /* 2. waiting sequences, first come first served (paused ones passed
     * over); none while memory is so tight that this step had to preempt. */
    for (seq = s->waiting.head;
         !preempted_any && seq != NULL && budget > 0
         && n_active < s->cfg.max_num_seqs;
         seq = next)
    {
        int need, n;

        next = seq->next;
        if (seq->paused) {
            continue;
        }
        if (seq->kv.n_blocks == 0) {
            int cached = kv_cache_match_prefix(s->kv, &seq->kv, seq->tokens,
                                               seq->n_tokens,
                                               !seq->prefix_queried);
            if (cached < 0) {
                return -1;
            }
            seq->prefix_queried = 1;
            seq->n_computed = cached;
        }
        need = seq->n_tokens - seq->n_computed;
        n = need < budget ? need : budget;
        if (kv_cache_allocate(s->kv, &seq->kv, seq->n_computed + n) != 0) {
            sched_seq *victim = newest_paused(s, NULL);

            if (victim != NULL) {
                /* A reader that is behind yields its memory: retry this
                 * sequence with the blocks freed (the prefix lookup is
                 * redone, as preemption may have dropped cached blocks). */
                kv_cache_release(s->kv, &seq->kv);
                seq->n_computed = 0;
                if (preempt(s, out, victim) != 0) {
                    return -1;
                }
                next = seq;
                continue;
            }
            kv_cache_release(s->kv, &seq->kv);
            seq->n_computed = 0;
            if (s->running.n == 0) {
                /* Even an empty pool cannot take this chunk. */
                if (fail_seq(s, out, seq) != 0) {
                    return -1;
                }
                continue;
            }
            break;
        }
        if (seq->admissions == 0) {
            seq->n_cached = seq->n_computed;
        }
        seq->admissions++;
        list_unlink(&s->waiting, seq);
        seq->state = SEQ_RUNNING;
        list_push_back(&s->running, seq);
        if (add_entry(s, out, seq, n) != 0) {
            return -1;
        }
        budget -= n;
        n_tok += n;
        n_active++;
    }

    if (n_tok > 0 && build_batch(s, out, n_tok) != 0) {
        return -1;
    }
    return n_tok;
}

void scheduler_step_done(scheduler *s, const sched_output *out)
{
    int i;

    for (i = 0; i < out->n_entries; i++) {
        sched_seq *seq = out->entries[i].seq;

        seq->n_computed += out->entries[i].n;
        kv_cache_commit(s->kv, &seq->kv, seq->tokens, seq->n_computed);
    }
}
