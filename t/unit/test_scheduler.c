/*
 * Scheduler: token budget, chunked prefill, FCFS admission, max_num_seqs,
 * preemption by recompute, batch layout.  No model: a step "generates" a
 * fixed token for every sampled row.
 */
#include "unit.h"
#include "scheduler.h"

/* Runs one step and appends token 9 to every sampled sequence. */
static int step(scheduler *s, sched_output *out)
{
    int n = scheduler_schedule(s, out), i;

    if (n <= 0) {
        return n;
    }
    scheduler_step_done(s, out);
    for (i = 0; i < out->n_entries; i++) {
        if (out->entries[i].sample) {
            sched_seq_append(out->entries[i].seq, 9);
        }
    }
    return n;
}

static void test_chunked_prefill_budget(void)
{
    kv_cache *kv = kv_cache_create(64, 16, 0);
    sched_config cfg = { 8, 7 };
    scheduler *s = scheduler_create(&cfg, kv);
    sched_output out;
    int32_t prompt[20];
    sched_seq a;
    int i, n;

    REQUIRE(kv && s, "create");
    for (i = 0; i < 20; i++) prompt[i] = i + 1;
    REQUIRE(sched_seq_init(&a, prompt, 20, NULL) == 0, "seq");
    scheduler_add(s, &a);

    /* 20 tokens in chunks of 7, 7, 6; only the last one samples */
    n = step(s, &out);
    CHECK(n == 7 && out.n_sample == 0 && out.batch.n_logits == 0,
          "chunk 1: %d tokens, %d samples", n, out.n_sample);
    CHECK(out.batch.positions[0] == 0 && out.batch.seq_len[0] == 7, "pos");
    n = step(s, &out);
    CHECK(n == 7 && out.batch.positions[0] == 7 && out.batch.seq_len[0] == 14,
          "chunk 2");
    CHECK(out.batch.token_ids[0] == 8, "token ids follow the prompt");
    n = step(s, &out);
    CHECK(n == 6 && out.n_sample == 1 && out.batch.n_logits == 1
          && out.batch.logit_rows[0] == 5, "chunk 3 samples its last row");
    CHECK(a.n_tokens == 21, "sampled token appended");
    n = step(s, &out);
    CHECK(n == 1 && out.batch.positions[0] == 20 && out.batch.token_ids[0] == 9,
          "decode step");
    CHECK(out.batch.max_blocks == 2 && out.batch.block_tables[0] == a.kv.blocks[0],
          "block table");
    scheduler_remove(s, &a);
    CHECK(kv_cache_num_available(kv) == 64, "blocks back");
    sched_seq_destroy(&a);
    scheduler_free(s);
    kv_cache_free(kv);
}

static void test_mixed_batch_and_max_seqs(void)
{
    kv_cache *kv = kv_cache_create(64, 16, 0);
    sched_config cfg = { 2, 100 };
    scheduler *s = scheduler_create(&cfg, kv);
    sched_output out;
    int32_t prompt[30];
    sched_seq q[3];
    int i, n;

    REQUIRE(kv && s, "create");
    for (i = 0; i < 30; i++) prompt[i] = 100 + i;
    for (i = 0; i < 3; i++) {
        REQUIRE(sched_seq_init(&q[i], prompt, 10 + 10 * i, NULL) == 0, "seq");
        scheduler_add(s, &q[i]);
    }
    n = step(s, &out);
    CHECK(n == 30 && out.n_entries == 2, "two admitted (max_num_seqs): %d %d",
          n, out.n_entries);
    CHECK(scheduler_num_waiting(s) == 1 && scheduler_num_running(s) == 2,
          "third waits");
    CHECK(out.batch.seq_start[1] == 10 && out.batch.seq_start[2] == 30
          && out.batch.logit_rows[0] == 9 && out.batch.logit_rows[1] == 29,
          "layout");
    scheduler_remove(s, &q[0]);
    n = step(s, &out);
    /* q[1] decodes 1 token, q[2] prefills 30: mixed step */
    CHECK(n == 31 && out.n_entries == 2 && out.entries[0].seq == &q[1]
          && out.entries[1].seq == &q[2], "mixed decode + prefill: %d", n);
    for (i = 1; i < 3; i++) {
        scheduler_remove(s, &q[i]);
    }
    for (i = 0; i < 3; i++) {
        sched_seq_destroy(&q[i]);
    }
    CHECK(kv_cache_num_available(kv) == 64, "blocks back");
    scheduler_free(s);
    kv_cache_free(kv);
}

static void test_preemption(void)
{
    /* 4 blocks of 4 tokens: two sequences of 7 prompt tokens take 2 blocks
     * each; growing past 8 tokens needs a fifth block -> the newest is
     * preempted, recomputed later, and both finish. */
    kv_cache *kv = kv_cache_create(4, 4, 0);
    sched_config cfg = { 8, 64 };
    scheduler *s = scheduler_create(&cfg, kv);
    sched_output out;
    int32_t prompt[7] = { 1, 2, 3, 4, 5, 6, 7 };
    sched_seq a, b;
    int steps = 0, saw_preempt = 0;

    REQUIRE(kv && s, "create");
    REQUIRE(sched_seq_init(&a, prompt, 7, NULL) == 0, "a");
    REQUIRE(sched_seq_init(&b, prompt, 7, NULL) == 0, "b");
    scheduler_add(s, &a);
    scheduler_add(s, &b);
    while (steps++ < 100) {
        int n = step(s, &out);

        REQUIRE(n >= 0, "schedule error");
        CHECK(out.n_failed == 0, "no sequence fails");
        if (out.n_preempted) {
            saw_preempt = 1;
            CHECK(out.preempted[0] == &b, "newest preempted");
            CHECK(b.n_computed == 0 && b.kv.n_blocks == 0, "b freed");
        }
        if (a.state == SEQ_RUNNING && a.n_tokens >= 12) {
            scheduler_remove(s, &a);       /* a finishes */
        }
        if (b.state == SEQ_RUNNING && b.n_tokens >= 12) {
            scheduler_remove(s, &b);
        }
        if (a.state == SEQ_DONE && b.state == SEQ_DONE) {
            break;
        }
    }
    CHECK(saw_preempt, "preemption happened");
    CHECK(scheduler_num_preemptions(s) >= 1, "counted");
    CHECK(a.state == SEQ_DONE && b.state == SEQ_DONE, "both finished");
    CHECK(b.n_tokens == 12 && b.tokens[7] == 9, "b kept its tokens");
    CHECK(kv_cache_num_available(kv) == 4, "blocks back");
    sched_seq_destroy(&a);
    sched_seq_destroy(&b);
    scheduler_free(s);
    kv_cache_free(kv);
}

static void test_cannot_fit_alone(void)
{
    kv_cache *kv = kv_cache_create(2, 4, 0);
    sched_config cfg = { 8, 64 };
    scheduler *s = scheduler_create(&cfg, kv);
    sched_output out;
    int32_t prompt[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    sched_seq a;

    REQUIRE(kv && s, "create");
    REQUIRE(sched_seq_init(&a, prompt, 7, NULL) == 0, "a");
    scheduler_add(s, &a);
    CHECK(step(s, &out) == 7, "prefill");
    CHECK(step(s, &out) == 1, "decode to 8 tokens");
    /* 9th token needs a third block of a 2-block pool */
    CHECK(scheduler_schedule(s, &out) == 0 && out.n_failed == 1
          && out.failed[0] == &a, "handed back as failed");
    CHECK(a.state == SEQ_DONE && kv_cache_num_available(kv) == 2, "freed");
    sched_seq_destroy(&a);
    scheduler_free(s);
    kv_cache_free(kv);
}

static void test_prefix_cache_admission(void)
{
    kv_cache *kv = kv_cache_create(32, 4, 1);
    sched_config cfg = { 8, 64 };
    scheduler *s = scheduler_create(&cfg, kv);
    sched_output out;
    int32_t prompt[10] = { 5, 6, 7, 8, 9, 10, 11, 12, 13, 14 };
    sched_seq a, b;

    REQUIRE(kv && s, "create");
    REQUIRE(sched_seq_init(&a, prompt, 10, NULL) == 0, "a");
    REQUIRE(sched_seq_init(&b, prompt, 10, NULL) == 0, "b");
    scheduler_add(s, &a);
    CHECK(step(s, &out) == 10, "a prefill");
    scheduler_add(s, &b);
    CHECK(step(s, &out) == 1 + 2, "a decodes, b computes 2 of 10");
    CHECK(b.n_cached == 8, "b cached %d", b.n_cached);
    CHECK(out.entries[1].start == 8, "b starts after the cached blocks");
    scheduler_remove(s, &a);
    scheduler_remove(s, &b);
    sched_seq_destroy(&a);
    sched_seq_destroy(&b);
    scheduler_free(s);
    kv_cache_free(kv);
}

/* Paused sequences sit out of batches, keep their blocks and do not count
 * against max_num_seqs; at most max_num_seqs run in one step. */
static void test_paused_left_out(void)
{
    kv_cache *kv = kv_cache_create(64, 4, 0);
    sched_config cfg = { 2, 100 };
    scheduler *s = scheduler_create(&cfg, kv);
    sched_output out;
    int32_t prompt[4] = { 1, 2, 3, 4 };
    sched_seq a, b, c;
    int n, a_blocks;

    REQUIRE(kv && s, "create");
    REQUIRE(sched_seq_init(&a, prompt, 4, NULL) == 0, "a");
    REQUIRE(sched_seq_init(&b, prompt, 4, NULL) == 0, "b");
    REQUIRE(sched_seq_init(&c, prompt, 4, NULL) == 0, "c");
    scheduler_add(s, &a);
    scheduler_add(s, &b);
    scheduler_add(s, &c);
    n = step(s, &out);
    CHECK(n == 8 && out.n_entries == 2 && scheduler_num_waiting(s) == 1,
          "a and b admitted, c waits: %d tokens", n);

    a.paused = 1;
    a_blocks = a.kv.n_blocks;
    n = step(s, &out);
    CHECK(n == 5 && out.n_entries == 2 && out.entries[0].seq == &b
          && out.entries[1].seq == &c, "b decodes, c admitted past paused a: "
          "%d tokens, %d entries", n, out.n_entries);
    CHECK(a.state == SEQ_RUNNING && a.kv.n_blocks == a_blocks
          && a.n_tokens == 5, "a keeps its blocks and tokens");
    CHECK(scheduler_num_running(s) == 3, "three running, one paused");

    a.paused = 0;
    n = step(s, &out);
    CHECK(n == 2 && out.n_entries == 2 && out.entries[0].seq == &a
          && out.entries[1].seq == &b, "a resumes; max_num_seqs 2 a step, "
          "oldest first: %d", n);
    CHECK(c.state == SEQ_RUNNING && c.n_computed == 4, "c waits its turn");

    scheduler_remove(s, &a);
    n = step(s, &out);
    CHECK(n == 2 && out.entries[1].seq == &c, "c runs again");
    scheduler_remove(s, &b);
    scheduler_remove(s, &c);
    CHECK(kv_cache_num_available(kv) == 64, "blocks back");
    sched_seq_destroy(&a);
    sched_seq_destroy(&b);
    sched_seq_destroy(&c);
    scheduler_free(s);
    kv_cache_free(kv);
}

/* When blocks run short, paused sequences are preempted first, for a
 * running sequence that grows and for a waiting one to be admitted; a
 * paused waiting sequence does not hold up the queue behind it. */
static void test_paused_yield_memory(void)
{
    kv_cache *kv = kv_cache_create(4, 4, 0);
    sched_config cfg = { 8, 64 };
    scheduler *s = scheduler_create(&cfg, kv);
    sched_output out;
    int32_t prompt[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    sched_seq a, b, c, d;
    int n;

    REQUIRE(kv && s, "create");
    REQUIRE(sched_seq_init(&a, prompt, 7, NULL) == 0, "a");
    REQUIRE(sched_seq_init(&b, prompt, 7, NULL) == 0, "b");
    REQUIRE(sched_seq_init(&c, prompt, 4, NULL) == 0, "c");
    REQUIRE(sched_seq_init(&d, prompt, 4, NULL) == 0, "d");
    scheduler_add(s, &a);
    scheduler_add(s, &b);
    CHECK(step(s, &out) == 14, "a and b prefill (2 blocks each)");
    CHECK(kv_cache_num_available(kv) == 0, "pool full");

    /* b needs a third block with the pool full: paused a goes, although
     * b is the newest (without pauses b would preempt itself) */
    a.paused = 1;
    CHECK(step(s, &out) == 1 && out.n_preempted == 0, "b decodes its 8th");
    n = step(s, &out);
    CHECK(n == 1 && out.n_preempted == 1 && out.preempted[0] == &a
          && out.entries[0].seq == &b, "paused a preempted for b: %d "
          "tokens, %d preempted", n, out.n_preempted);
    CHECK(a.state == SEQ_WAITING && a.kv.n_blocks == 0 && a.n_tokens == 8,
          "a waits with its tokens");
    CHECK(b.kv.n_blocks == 3, "b grew");

    /* a is at the front of the queue, paused: c is admitted past it */
    scheduler_add(s, &c);
    n = step(s, &out);
    CHECK(n == 1 + 4 && out.n_entries == 2 && out.entries[1].seq == &c,
          "c admitted past paused a: %d", n);
    CHECK(a.state == SEQ_WAITING, "a still waits");

    /* everything running paused and the pool full: d's admission
     * preempts the newest paused running sequence (c) */
    b.paused = 1;
    c.paused = 1;
    scheduler_add(s, &d);
    n = step(s, &out);
    CHECK(n == 4 && out.n_entries == 1 && out.entries[0].seq == &d
          && out.n_preempted == 1 && out.preempted[0] == &c,
          "d admitted by preempting paused c: %d tokens, %d preempted", n,
          out.n_preempted);
    CHECK(b.state == SEQ_RUNNING && b.kv.n_blocks == 3, "b keeps its blocks");

    /* readers caught up: everyone finishes */
    a.paused = b.paused = c.paused = 0;
    for (n = 0; n < 200 && (a.state != SEQ_DONE || b.state != SEQ_DONE
                            || c.state != SEQ_DONE || d.state != SEQ_DONE); n++)
    {
        sched_seq *q[4] = { &a, &b, &c, &d };
        int i;

        REQUIRE(step(s, &out) >= 0, "schedule error");
        CHECK(out.n_failed == 0, "nothing fails");
        for (i = 0; i < 4; i++) {
            if (q[i]->state == SEQ_RUNNING && q[i]->n_tokens >= 14) {
                scheduler_remove(s, q[i]);
            }
        }
    }
    CHECK(a.state == SEQ_DONE && b.state == SEQ_DONE && c.state == SEQ_DONE
          && d.state == SEQ_DONE, "all finished");
    CHECK(a.n_tokens == 14 && a.tokens[7] == 9 && b.n_tokens == 14,
          "a kept its tokens");
    CHECK(kv_cache_num_available(kv) == 4, "blocks back");
    sched_seq_destroy(&a);
    sched_seq_destroy(&b);
    sched_seq_destroy(&c);
    sched_seq_destroy(&d);
    scheduler_free(s);
    kv_cache_free(kv);
}

int main(void)
{
    RUN(test_chunked_prefill_budget);
    RUN(test_mixed_batch_and_max_seqs);
    RUN(test_preemption);
    RUN(test_cannot_fit_alone);
    RUN(test_prefix_cache_admission);
    RUN(test_paused_left_out);
    RUN(test_paused_yield_memory);
    return unit_done();
}
