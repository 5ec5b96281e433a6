/*
 * The CPU backend's fast precision (bf16 activations): close to the exact
 * precision on the tiny fixture, and still independent of how tokens are
 * batched: one full prefill and a prefill followed by step-by-step decode
 * give bit-identical logits, whatever the thread count.
 */
#include "unit.h"

#include <stdint.h>

#include "backend.h"
#include "cpu_kernels.h"
#include "model.h"

#define BS       16
#define N_BLOCKS 8
#define N_TOK    40

/* Runs ids[0..n) at positions pos0.. of one sequence whose blocks are
 * table[]; logits of the last token into out. */
static int run(llm_backend *be, const int32_t *ids, int n, int pos0,
               const int32_t *table, float *out)
{
    int32_t pos[N_TOK], start[2] = { 0, n }, len = pos0 + n, row = n - 1;
    llm_batch b;
    char err[256];

    for (int i = 0; i < n; i++) {
        pos[i] = pos0 + i;
    }
    memset(&b, 0, sizeof(b));
    b.n_tokens = n;
    b.token_ids = ids;
    b.positions = pos;
    b.n_seqs = 1;
    b.seq_start = start;
    b.seq_len = &len;
    b.block_tables = table;
    b.max_blocks = N_BLOCKS;
    b.logit_rows = &row;
    b.n_logits = 1;
    if (be->ops->forward(be, &b, out, err, sizeof(err)) != 0) {
        fprintf(stderr, "  forward: %s\n", err);
        return -1;
    }
    return 0;
}

static llm_backend *open_backend_kv(const model *m, int threads,
                                    cpu_precision p, cpu_kv_dtype kv)
{
    char err[256];
    llm_backend *be = cpu_backend_create_ex(m, threads, p, kv, err,
                                            sizeof(err));

    if (be == NULL) {
        fprintf(stderr, "  cpu_backend_create_ex: %s\n", err);
        return NULL;
    }
    if (be->ops->kv_alloc(be, N_BLOCKS, BS, err, sizeof(err)) != 0) {
        fprintf(stderr, "  kv_alloc: %s\n", err);
        be->ops->destroy(be);
        return NULL;
    }
    return be;
}

static llm_backend *open_backend(const model *m, int threads,
                                 cpu_precision p)
{
    return open_backend_kv(m, threads, p, CPU_KV_F32);
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++) {
        best = x[i] > x[best] ? i : best;
    }
    return best;
}

/* Relative L2 distance of got from ref. */
static double rel_l2(const float *got, const float *ref, int n)
{
    double num = 0, den = 0;

    for (int i = 0; i < n; i++) {
        num += ((double) got[i] - ref[i]) * ((double) got[i] - ref[i]);
        den += (double) ref[i] * ref[i];
    }
    return sqrt(num / den);
}

/* be (another thread count than ref's backend): a prefill of `split`
 * tokens then the rest one token at a time, and one prefill of all, must
 * both give ref's bits. */
static void check_steps_and_threads(llm_backend *be, const int32_t *ids,
                                    int split, const int32_t *table,
                                    const float *ref, int vocab,
                                    const char *what)
{
    float *steps = malloc((size_t) vocab * sizeof(float));
    float *whole = malloc((size_t) vocab * sizeof(float));

    if (steps == NULL || whole == NULL) {
        free(steps);
        free(whole);
        CHECK(0, "%s: out of memory", what);
        return;
    }
    CHECK(run(be, ids, split, 0, table, steps) == 0, "%s: prefill", what);
    for (int i = split; i < N_TOK; i++) {
        CHECK(run(be, ids + i, 1, i, table, steps) == 0, "%s: step", what);
    }
    CHECK(memcmp(steps, ref, (size_t) vocab * sizeof(float)) == 0,
          "%s: decode step by step differs from one prefill", what);
    CHECK(run(be, ids, N_TOK, 0, table, whole) == 0, "%s: prefill 3", what);
    CHECK(memcmp(whole, ref, (size_t) vocab * sizeof(float)) == 0,
          "%s: 3 threads differ from 2", what);
    free(steps);
    free(whole);
}

static void test_fast_precision(void)
{
    char err[256];
    model *m = model_load("t/fixtures/tiny-qwen3", 0, 1, err, sizeof(err));
    int32_t ids[N_TOK], table[N_BLOCKS];
    float *exact, *fast;
    llm_backend *be_exact, *be_fast, *be_fast3;
    int vocab;
    double e;

    REQUIRE(m != NULL, "model_load: %s", err);
    vocab = m->cfg.vocab_size;
    for (int i = 0; i < N_TOK; i++) {
        ids[i] = (i * 37 + 11) % vocab;
    }
    for (int i = 0; i < N_BLOCKS; i++) {
        table[i] = N_BLOCKS - 1 - i;
    }
    exact = malloc((size_t) vocab * sizeof(float));
    fast = malloc((size_t) vocab * sizeof(float));
    be_exact = open_backend(m, 1, CPU_PRECISION_EXACT);
    be_fast = open_backend(m, 2, CPU_PRECISION_FAST);
    be_fast3 = open_backend(m, 3, CPU_PRECISION_FAST);
    REQUIRE(exact && fast && be_exact && be_fast && be_fast3, "setup");

    REQUIRE(run(be_exact, ids, N_TOK, 0, table, exact) == 0, "exact");
    REQUIRE(run(be_fast, ids, N_TOK, 0, table, fast) == 0, "fast");
    e = rel_l2(fast, exact, vocab);
    printf("# %s: fast vs exact rel err %.3g\n", kern_isa_name(kern_get_isa()),
           e);
    /* bf16 activations keep ~3 significant digits */
    CHECK(e < 3e-2, "fast vs exact rel err %g", e);
    CHECK(argmax(fast, vocab) == argmax(exact, vocab), "argmax differs");
    if (kern_get_isa() >= KERN_ISA_AVX512BF16) {
        /* the fast path really ran (bf16 fixture weights) */
        CHECK(e > 0, "fast precision gave the exact logits");
    }
    /* prefill 24, then decode the rest one token at a time, other threads */
    check_steps_and_threads(be_fast3, ids, 24, table, fast, vocab, "fast");

    be_exact->ops->destroy(be_exact);
    be_fast->ops->destroy(be_fast);
    be_fast3->ops->destroy(be_fast3);
    free(exact);
    free(fast);
    model_free(m);
}

/* The bf16 KV cache: close to the f32 one (K and V keep ~3 significant
 * digits), the same argmax, and as batch-independent: prefill then
 * step-by-step decode, and another thread count, give the bits of one
 * prefill. */
static void test_bf16_kv_cache(void)
{
    char err[256];
    model *m = model_load("t/fixtures/tiny-qwen3", 0, 1, err, sizeof(err));
    int32_t ids[N_TOK], table[N_BLOCKS];
    float *f32kv, *bf;
    llm_backend *be_f32, *be_bf, *be_bf3;
    int vocab;
    double e;

    REQUIRE(m != NULL, "model_load: %s", err);
    vocab = m->cfg.vocab_size;
    for (int i = 0; i < N_TOK; i++) {
        ids[i] = (i * 53 + 7) % vocab;
    }
    for (int i = 0; i < N_BLOCKS; i++) {
        table[i] = (i * 3 + 1) % N_BLOCKS;
    }
    f32kv = malloc((size_t) vocab * sizeof(float));
    bf = malloc((size_t) vocab * sizeof(float));
    be_f32 = open_backend_kv(m, 2, CPU_PRECISION_EXACT, CPU_KV_F32);
    be_bf = open_backend_kv(m, 2, CPU_PRECISION_EXACT, CPU_KV_BF16);
    be_bf3 = open_backend_kv(m, 3, CPU_PRECISION_EXACT, CPU_KV_BF16);
    REQUIRE(f32kv && bf && be_f32 && be_bf && be_bf3, "setup");
    CHECK(be_bf->ops->kv_block_bytes(be_bf, BS) * 2
          == be_f32->ops->kv_block_bytes(be_f32, BS),
          "a bf16 block is not half an f32 one");

    REQUIRE(run(be_f32, ids, N_TOK, 0, table, f32kv) == 0, "f32 KV");
    REQUIRE(run(be_bf, ids, N_TOK, 0, table, bf) == 0, "bf16 KV");
    e = rel_l2(bf, f32kv, vocab);
    printf("# bf16 vs f32 KV cache: logits rel err %.3g\n", e);
    CHECK(e > 0, "the bf16 cache gave the f32 cache's logits");
    CHECK(e < 3e-2, "bf16 vs f32 KV rel err %g", e);
    CHECK(argmax(bf, vocab) == argmax(f32kv, vocab), "argmax differs");
    check_steps_and_threads(be_bf3, ids, 20, table, bf, vocab, "bf16 KV");
    be_f32->ops->destroy(be_f32);
    be_bf->ops->destroy(be_bf);
    be_bf3->ops->destroy(be_bf3);
    free(f32kv);
    free(bf);
    model_free(m);
}

int main(void)
{
    RUN(test_fast_precision);
    RUN(test_bf16_kv_cache);
    return unit_done();
}
