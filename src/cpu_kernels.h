/*
 * CPU compute kernels: weight-times-activation products over bf16, f16 and
 * f32 weights read in place, RMSNorm, RoPE, attention over a paged f32 KV
 * cache, SiLU(gate)*up.  The instruction set is chosen once at run time:
 *
 *   KERN_ISA_AVX512BF16  bf16 weights through vdpbf16ps; activations are
 *                        split into two bf16 terms (hi + lo) so a product
 *                        keeps ~16 mantissa bits (relative error ~4e-6)
 *                        instead of bf16's 8: f32-grade results at bf16
 *                        dot-product speed.  Other dtypes: AVX2 path.
 *   KERN_ISA_AVX2        AVX2 + FMA (+F16C): weights widened to f32.
 *   KERN_ISA_SCALAR      plain C, any CPU.
 *
 * Every product sums each output element in the same order whatever the
 * number of tokens in the call, so one token decoded alone and the same
 * token inside a long prefill get bit-identical results.
 */
#ifndef LLM_CPU_KERNELS_H
#define LLM_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include "model.h"

typedef enum {
    KERN_ISA_SCALAR = 0,
    KERN_ISA_AVX2 = 1,
    KERN_ISA_AVX512BF16 = 2
} kern_isa;

/* The best ISA this CPU has. */
kern_isa kern_detect_isa(void);
/* The ISA in use: the detected one unless lowered (tests compare paths).
 * Returns the ISA actually selected (never above the detected one). */
kern_isa kern_get_isa(void);
kern_isa kern_set_isa(kern_isa want);
const char *kern_isa_name(kern_isa isa);

/* A weight matrix [rows][cols], row-major, in its file dtype. */
typedef struct {
    llm_dtype   dtype;
    const void *data;
    int         rows;
    int         cols;
} kern_matrix;

/* Activations: n rows of cols f32 values; hi/lo hold the bf16 split
 * (kern_split_bf16) when the bf16 dot-product path may be used, else
 * NULL.  All three use row stride cols. */
typedef struct {
    const float    *x;
    const uint16_t *hi, *lo;
    int             n;
    int             cols;
} kern_acts;

/* Whether the current ISA wants kern_acts.hi/lo for weights of dtype t. */
int kern_wants_split(llm_dtype t);
/* With hi set and lo NULL, bf16 weights meet the activations as one bf16
 * term, as llama.cpp does: twice the prefill speed, about 3 significant
 * digits instead of 5 ("fast" precision of the CPU backend). */
/* x = hi + lo + O(2^-17 |x|), hi and lo bf16 (round to nearest even).
 * lo may be NULL (fast precision: hi only). */
void kern_split_bf16(const float *x, size_t n, uint16_t *hi, uint16_t *lo);

/* y[t * ldy + r] = dot(W[r], x[t]) for r in [r0, r1), t in [t0, t1). */
void kern_matmul(const kern_matrix *w, int r0, int r1, const kern_acts *a,
                 int t0, int t1, float *y, size_t ldy);

/* One row of a weight matrix (embedding lookup), widened to f32. */
void kern_row_to_f32(const kern_matrix *w, int row, float *out);
/* n values of any dtype widened to f32 (norm weights, biases). */
void kern_to_f32(llm_dtype t, const void *src, size_t n, float *out);

/* out = x / sqrt(mean(x^2) + eps) * w  (out may alias x) */
void kern_rmsnorm(const float *x, const float *w, int n, float eps,
                  float *out);

/* Rotates n_heads heads of dim hd in place, neox style (first half with
 * second half), with cos/sin [hd/2] of this position. */
void kern_rope(float *x, int n_heads, int hd, const float *cos_,
               const float *sin_);

/* y = silu(g) * u elementwise (y may alias g) */
void kern_silu_mul(const float *g, const float *u, float *y, int n);

/*
 * Paged KV cache of one layer, f32 or bf16 elements.  Block b of KV head g
 * holds bs slots:
 *   K: k + ((b * n_kv + g) * hd + d) * bs + slot   (transposed: a vector
 *      load gives one dimension of 16 keys, so scores of 16 keys need no
 *      horizontal sums)
 *   V: v + ((b * n_kv + g) * bs + slot) * hd + d
 * bf16: written rounded to nearest even, widened exactly on every read
 * (half the memory and the bandwidth of f32; ~3 significant digits).
 */
typedef struct {
    void  *k, *v;               /* float, or uint16_t when bf16 */
    int    n_kv, hd, bs;
    int    bf16;
} kern_kv;

/* Stores one token's K and V of KV head g (hd values each) at (block,
 * slot). */
void kern_kv_write_head(const kern_kv *kv, int g, int block, int slot,
                        const float *k, const float *v);

/* Asks for the cache lines of [p, p + bytes) (no-op without x86). */
void kern_prefetch(const void *p, size_t bytes);

/* Floats of scratch kern_attention needs for n_q query vectors over a
 * context of ctx positions. */
size_t kern_attention_scratch(int n_q, int ctx, int bs);

/*
 * Causal attention of n_tok consecutive tokens of one sequence (positions
 * pos0 .. pos0 + n_tok - 1, token i sees positions [0, pos0 + i]) for the
 * n_rep query heads sharing KV head g.  q and out: token i's heads at
 * q + i * q_stride + r * hd (r < n_rep).  Each (token, head) gets the
 * same bits whatever else is in the tile.
 */
void kern_attention(const kern_kv *kv, int g, const int32_t *block_table,
                    int pos0, int n_tok, int n_rep, float scale,
                    const float *q, size_t q_stride, float *scratch,
                    float *out, size_t out_stride);

#endif
