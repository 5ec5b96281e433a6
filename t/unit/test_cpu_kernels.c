/*
 * The CPU attention kernel on its own, over a paged KV pool filled with
 * random values: every instruction set agrees with the scalar reference,
 * and a token's output has the same bits whether it runs alone or in a
 * tile with its neighbours (the property batch invariance rests on).
 * Shapes: head_dim 128 (Qwen3), 80 and 256 (not one vector pass), block
 * sizes 16 and 7, 1-5 query heads per KV head, contexts from 1 to 1100
 * positions (well past L1 and L2 for one head's V).  The same for a bf16
 * cache, whose results must also have exactly the bits of an f32 cache
 * holding the same (bf16-rounded) values.
 */
#include "unit.h"

#include <math.h>
#include <stdint.h>

#include "cpu_kernels.h"

#define N_KV 2

typedef struct {
    int    hd, bs, n_blocks;
    float *k, *v;               /* [n_blocks][n_kv][...] per kern_kv */
    uint16_t *k16, *v16;        /* the same values rounded to bf16 */
    float *kr, *vr;             /* ... and widened back to f32 */
    int32_t *table;             /* a shuffled block order */
} pool;

/* f32 -> bf16, round to nearest even (finite inputs) */
static uint16_t to_bf16(float f)
{
    uint32_t u, lsb;

    memcpy(&u, &f, 4);
    lsb = (u >> 16) & 1u;
    return (uint16_t) ((u + 0x7fffu + lsb) >> 16);
}

static float from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t) h << 16;
    float f;

    memcpy(&f, &u, 4);
    return f;
}

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
    p->kr = malloc(per * sizeof(float));
    p->vr = malloc(per * sizeof(float));
    p->k16 = malloc(per * sizeof(uint16_t));
    p->v16 = malloc(per * sizeof(uint16_t));
    p->table = malloc((size_t) p->n_blocks * sizeof(int32_t));
    if (p->k == NULL || p->v == NULL || p->kr == NULL || p->vr == NULL
        || p->k16 == NULL || p->v16 == NULL || p->table == NULL) {
        return -1;
    }
    for (size_t i = 0; i < per; i++) {
        p->k[i] = frand();
        p->v[i] = frand();
        p->k16[i] = to_bf16(p->k[i]);
        p->v16[i] = to_bf16(p->v[i]);
        p->kr[i] = from_bf16(p->k16[i]);
        p->vr[i] = from_bf16(p->v16[i]);
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
    free(p->kr);
    free(p->vr);
    free(p->k16);
    free(p->v16);
    free(p->table);
}

/* which: 0 the f32 values, 1 their bf16 rounding as bf16, 2 the same
 * rounded values as f32 */
static kern_kv pool_kv(const pool *p, int which)
{
    kern_kv kv;

    kv.k = which == 0 ? (void *) p->k : which == 1 ? (void *) p->k16
                                                   : (void *) p->kr;
    kv.v = which == 0 ? (void *) p->v : which == 1 ? (void *) p->v16
                                                   : (void *) p->vr;
    kv.bf16 = which == 1;
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
static void attend(const pool *p, int which, int ctx, int n_tok, int n_rep,
                   const float *q, float *out, float *scratch)
{
    kern_kv kv = pool_kv(p, which);
    size_t stride = (size_t) n_rep * (size_t) p->hd;

    kern_attention(&kv, 1, p->table, ctx - n_tok, n_tok, n_rep,
                   1.0f / sqrtf((float) p->hd), q, stride, scratch, out,
                   stride);
}

typedef struct {
    int    cases, tile_mismatch, bf16_mismatch;
    double worst_isa;
} stats;

/* One shape on one cache (which: pool_kv): the best ISA against the
 * scalar reference, each token of the tile alone, and for the bf16 cache
 * the bits of the f32 cache of the same values. */
static void check_case(const pool *p, int which, int ctx, int n_rep,
                       int n_tok, stats *st)
{
    kern_isa best = kern_detect_isa();
    int hd = p->hd, bs = p->bs;
    size_t per = (size_t) n_rep * (size_t) hd, n = (size_t) n_tok * per;
    size_t scr = kern_attention_scratch(n_tok * n_rep, ctx, bs);
    float *q = malloc(n * sizeof(float)), *ref = malloc(n * sizeof(float));
    float *got = malloc(n * sizeof(float)), *one = malloc(per * sizeof(float));
    float *scratch = malloc(scr * sizeof(float));
    double e;

    REQUIRE(q && ref && got && one && scratch, "memory");
    for (size_t i = 0; i < n; i++) {
        q[i] = frand() * 3.0f;
    }
    kern_set_isa(KERN_ISA_SCALAR);
    attend(p, which, ctx, n_tok, n_rep, q, ref, scratch);
    kern_set_isa(best);
    attend(p, which, ctx, n_tok, n_rep, q, got, scratch);
    e = max_rel(got, ref, n);
    st->worst_isa = e > st->worst_isa ? e : st->worst_isa;
    CHECK(e <= 1e-5, "%s hd %d bs %d ctx %d rep %d tok %d: %s vs scalar rel "
          "err %g", which ? "bf16" : "f32", hd, bs, ctx, n_rep, n_tok,
          kern_isa_name(best), e);
    /* each token of the tile alone: the same bits */
    for (int i = 0; i < n_tok; i++) {
        attend(p, which, ctx - n_tok + i + 1, 1, n_rep, q + (size_t) i * per,
               one, scratch);
        if (memcmp(one, got + (size_t) i * per, per * sizeof(float)) != 0) {
            st->tile_mismatch++;
            CHECK(0, "%s hd %d bs %d ctx %d rep %d tok %d: token %d alone "
                  "differs", which ? "bf16" : "f32", hd, bs, ctx, n_rep,
                  n_tok, i);
        }
    }
    if (which == 1) {
        /* the f32 cache of the rounded values: the same bits, with the
         * scalar code (ref) and with the best ISA (got) */
        float *f32r = malloc(n * sizeof(float));
        REQUIRE(f32r, "memory");
        for (int isa = 0; isa < 2; isa++) {
            kern_set_isa(isa ? best : KERN_ISA_SCALAR);
            attend(p, 2, ctx, n_tok, n_rep, q, f32r, scratch);
            if (memcmp(isa ? got : ref, f32r, n * sizeof(float)) != 0) {
                st->bf16_mismatch++;
                CHECK(0, "hd %d bs %d ctx %d rep %d tok %d: %s: the bf16 "
                      "cache differs from an f32 one of the same values", hd,
                      bs, ctx, n_rep, n_tok,
                      kern_isa_name(isa ? best : KERN_ISA_SCALAR));
            }
        }
        kern_set_isa(best);
        free(f32r);
    }
    st->cases++;
    free(q);
    free(ref);
    free(got);
    free(one);
    free(scratch);
}

static void test_attention_shapes(void)
{
    static const int hds[] = { 128, 80, 256 };
    static const int bss[] = { 16, 7 };
    static const int ctxs[] = { 1, 15, 16, 17, 300, 1100 };
    static const int reps[] = { 1, 2, 4, 5 };
    static const int toks[] = { 1, 3, 16 };
    stats st = { 0, 0, 0, 0 };

    for (size_t h = 0; h < sizeof(hds) / sizeof(hds[0]); h++) {
        for (size_t bi = 0; bi < sizeof(bss) / sizeof(bss[0]); bi++) {
            pool p;
            REQUIRE(pool_make(&p, hds[h], bss[bi], 1100) == 0, "pool");
            for (size_t c = 0; c < sizeof(ctxs) / sizeof(ctxs[0]); c++) {
                for (size_t r = 0; r < sizeof(reps) / sizeof(reps[0]); r++) {
                    for (size_t t = 0; t < sizeof(toks) / sizeof(toks[0]); t++) {
                        if (toks[t] > ctxs[c]) {
                            continue;
                        }
                        for (int which = 0; which < 2; which++) {
                            check_case(&p, which, ctxs[c], reps[r], toks[t],
                                       &st);
                        }
                    }
                }
            }
            pool_free(&p);
        }
    }
    printf("# %d cases, %s vs scalar worst rel err %.3g, tile vs alone "
           "mismatches %d, bf16 vs f32-of-same-values mismatches %d\n",
           st.cases, kern_isa_name(kern_detect_isa()), st.worst_isa,
           st.tile_mismatch, st.bf16_mismatch);
    CHECK(st.cases > 200, "only %d cases ran", st.cases);
}

/* A bf16 cache stores K and V rounded to nearest even, at the places
 * the layout gives. */
static void test_bf16_write(void)
{
    enum { HD = 80, BS = 7, NB = 3 };
    size_t per = (size_t) NB * N_KV * BS * HD;
    uint16_t *k16 = calloc(per, 2), *v16 = calloc(per, 2);
    float k[HD], v[HD];
    kern_kv kv;
    int bad = 0;

    REQUIRE(k16 && v16, "memory");
    kv.k = k16;
    kv.v = v16;
    kv.n_kv = N_KV;
    kv.hd = HD;
    kv.bs = BS;
    kv.bf16 = 1;
    for (int d = 0; d < HD; d++) {
        /* ties and near-ties: 1 + 2^-8 (tie, even down), 1 + 3 * 2^-8 (tie,
         * odd up), then random values */
        k[d] = d == 0 ? 1.00390625f : d == 1 ? 1.01171875f : frand() * 100;
        v[d] = -k[d] * 0.5f;
    }
    kern_kv_write_head(&kv, 1, 2, 5, k, v);
    for (int d = 0; d < HD; d++) {
        size_t span = ((size_t) 2 * N_KV + 1) * HD * BS;
        bad += k16[span + (size_t) d * BS + 5] != to_bf16(k[d]);
        bad += v16[span + (size_t) 5 * HD + (size_t) d] != to_bf16(v[d]);
    }
    CHECK(k16[((size_t) 2 * N_KV + 1) * HD * BS + 5] == 0x3f80, "tie to even "
          "down: %#x", k16[((size_t) 2 * N_KV + 1) * HD * BS + 5]);
    CHECK(k16[((size_t) 2 * N_KV + 1) * HD * BS + BS + 5] == 0x3f82, "tie to "
          "even up: %#x", k16[((size_t) 2 * N_KV + 1) * HD * BS + BS + 5]);
    CHECK(bad == 0, "%d values not rounded to nearest even at their place",
          bad);
    free(k16);
    free(v16);
}

int main(void)
{
    RUN(test_attention_shapes);
    RUN(test_bf16_write);
    return unit_done();
}
