/*
 * The CPU attention kernel on its own, over a paged KV pool filled with
 * random values: every instruction set agrees with the scalar reference,
 * and a token's output has the same bits whether it runs alone or in a
 * tile with its neighbours (the property batch invariance rests on).
 * Shapes: head_dim 128 (Qwen3), 80 and 256 (not one vector pass), block
 * sizes 16 and 7, 1-5 query heads per KV head, contexts from 1 to 1100
 * positions (well past L1 and L2 for one head's V).
 */
#include "unit.h"

#include <math.h>
#include <stdint.h>

#include "cpu_kernels.h"

#define N_KV 2

typedef struct {
    int    hd, bs, n_blocks;
    float *k, *v;               /* [n_blocks][n_kv][...] per kern_kv */
    int32_t *table;             /* a shuffled block order */
} pool;

static uint64_t rng = 88172645463325252ULL;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float) ((double) (rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static int pool_make(pool *p, int hd, int bs, int ctx)
{
    size_t per;

    p->hd = hd;
    p->bs = bs;
    p->n_blocks = (ctx + bs - 1) / bs + 1;
    per = (size_t) p->n_blocks * N_KV * (size_t) bs * (size_t) hd;
    p->k = malloc(per * sizeof(float));
    p->v = malloc(per * sizeof(float));
    p->table = malloc((size_t) p->n_blocks * sizeof(int32_t));
    if (p->k == NULL || p->v == NULL || p->table == NULL) {
        return -1;
    }
    for (size_t i = 0; i < per; i++) {
        p->k[i] = frand();
        p->v[i] = frand();
    }
    /* blocks in reverse order, the first one last: scattered as in use */
    for (int i = 0; i < p->n_blocks; i++) {
        p->table[i] = (int32_t) ((p->n_blocks - 1 - i + 1) % p->n_blocks);
    }
    return 0;
}

static void pool_free(pool *p)
{
    free(p->k);
    free(p->v);
    free(p->table);
}

static kern_kv pool_kv(const pool *p)
{
    kern_kv kv;

    kv.k = p->k;
    kv.v = p->v;
    kv.n_kv = N_KV;
    kv.hd = p->hd;
    kv.bs = p->bs;
    return kv;
}

static double max_rel(const float *a, const float *ref, size_t n)
{
    double num = 0, den = 0;

    for (size_t i = 0; i < n; i++) {
        double d = fabs((double) a[i] - (double) ref[i]);
        num = d > num ? d : num;
        den = fabs((double) ref[i]) > den ? fabs((double) ref[i]) : den;
    }
    return den > 0 ? num / den : num;
}

/* Attention of n_tok tokens ending at position ctx - 1, KV head 1. */
static void attend(const pool *p, int ctx, int n_tok, int n_rep,
                   const float *q, float *out, float *scratch)
{
    kern_kv kv = pool_kv(p);
    size_t stride = (size_t) n_rep * (size_t) p->hd;

    kern_attention(&kv, 1, p->table, ctx - n_tok, n_tok, n_rep,
                   1.0f / sqrtf((float) p->hd), q, stride, scratch, out,
                   stride);
}

static void test_attention_shapes(void)
{
    static const int hds[] = { 128, 80, 256 };
    static const int bss[] = { 16, 7 };
    static const int ctxs[] = { 1, 15, 16, 17, 300, 1100 };
    static const int reps[] = { 1, 2, 4, 5 };
    static const int toks[] = { 1, 3, 16 };
    kern_isa best = kern_detect_isa();
    double worst_isa = 0;
    int cases = 0, tile_mismatch = 0;

    for (size_t h = 0; h < sizeof(hds) / sizeof(hds[0]); h++) {
        for (size_t bi = 0; bi < sizeof(bss) / sizeof(bss[0]); bi++) {
            pool p;
            int hd = hds[h], bs = bss[bi];
            REQUIRE(pool_make(&p, hd, bs, 1100) == 0, "pool");
            for (size_t c = 0; c < sizeof(ctxs) / sizeof(ctxs[0]); c++) {
                for (size_t r = 0; r < sizeof(reps) / sizeof(reps[0]); r++) {
                    for (size_t t = 0; t < sizeof(toks) / sizeof(toks[0]); t++) {
                        int ctx = ctxs[c], n_rep = reps[r], n_tok = toks[t];
                        size_t per = (size_t) n_rep * (size_t) hd;
                        size_t n = (size_t) n_tok * per;
                        size_t scr = kern_attention_scratch(n_tok * n_rep,
                                                            ctx, bs);
                        float *q, *ref, *got, *one, *scratch;
                        if (n_tok > ctx) {
                            continue;
                        }
                        q = malloc(n * sizeof(float));
                        ref = malloc(n * sizeof(float));
                        got = malloc(n * sizeof(float));
                        one = malloc(per * sizeof(float));
                        scratch = malloc(scr * sizeof(float));
                        REQUIRE(q && ref && got && one && scratch, "memory");
                        for (size_t i = 0; i < n; i++) {
                            q[i] = frand() * 3.0f;
                        }
                        kern_set_isa(KERN_ISA_SCALAR);
                        attend(&p, ctx, n_tok, n_rep, q, ref, scratch);
                        kern_set_isa(best);
                        attend(&p, ctx, n_tok, n_rep, q, got, scratch);
                        {
                            double e = max_rel(got, ref, n);
                            worst_isa = e > worst_isa ? e : worst_isa;
                            CHECK(e <= 1e-5, "hd %d bs %d ctx %d rep %d tok %d: "
                                  "%s vs scalar rel err %g", hd, bs, ctx,
                                  n_rep, n_tok, kern_isa_name(best), e);
                        }
                        /* each token of the tile alone: the same bits */
                        for (int i = 0; i < n_tok; i++) {
                            attend(&p, ctx - n_tok + i + 1, 1, n_rep,
                                   q + (size_t) i * per, one, scratch);
                            if (memcmp(one, got + (size_t) i * per,
                                       per * sizeof(float)) != 0) {
                                tile_mismatch++;
                                CHECK(0, "hd %d bs %d ctx %d rep %d tok %d: "
                                      "token %d alone differs", hd, bs, ctx,
                                      n_rep, n_tok, i);
                            }
                        }
                        cases++;
                        free(q);
                        free(ref);
                        free(got);
                        free(one);
                        free(scratch);
                    }
                }
            }
            pool_free(&p);
        }
    }
    kern_set_isa(best);
    printf("# %d cases, %s vs scalar worst rel err %.3g, tile vs alone "
           "mismatches %d\n", cases, kern_isa_name(best), worst_isa,
           tile_mismatch);
    CHECK(cases > 100, "only %d cases ran", cases);
}

int main(void)
{
    RUN(test_attention_shapes);
    return unit_done();
}
