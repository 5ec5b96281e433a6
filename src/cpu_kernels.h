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
/* x = hi + lo + O(2^-17 |x|), hi and lo bf16 (round to nearest even). */
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

/* y = silu(g) * u elementwise */
void kern_silu_mul(const float *g, const float *u, float *y, int n);

/* Causal attention of n_rep query heads (q: [n_rep][hd], adjacent) sharing
 * one KV head, over the first ctx positions of a sequence whose position
 * j lives at k_cache/v_cache + (block_table[j / bs] * bs + j % bs) * stride.
 * scores: scratch of n_rep * ctx floats.  out: [n_rep][hd]. */
void kern_attention(const float *q, int n_rep, int hd, float scale,
                    const float *k_cache, const float *v_cache,
                    size_t stride, const int32_t *block_table, int bs,
                    int ctx, float *scores, float *out);

#endif
