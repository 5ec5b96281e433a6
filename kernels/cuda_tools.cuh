/*
 * C-callable extras of the CUDA backend for tools (tools/llm-cuda-check.c):
 * memory accounting and the attention self-test.  Not part of the engine's
 * contract (src/backend.h); included from C with a relative path.
 */
#ifndef LLM_CUDA_TOOLS_CUH
#define LLM_CUDA_TOOLS_CUH

#include <stddef.h>
#include <stdint.h>
#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

struct llm_backend;

/* Number of usable CUDA devices; 0 with err when none (no driver, no GPU). */
int cuda_device_count(char *err, size_t errlen);

/* Device bytes held for weights, the KV pool, and step buffers/workspaces. */
void cuda_backend_memory(struct llm_backend *b, size_t *weights, size_t *kv,
                         size_t *scratch);

/* Prefill attention kernel: 1 (plain) or 2 (ldmatrix + cp.async). */
void cuda_backend_set_prefill_variant(struct llm_backend *b, int variant);

typedef struct {
    int ctx_len;        /* context of the last query token */
    int q_len;          /* query tokens (the last q_len positions) */
    int n_heads, n_kv, head_dim, block_size;
    int split_tokens;   /* decode kernel split length; 0: no split */
    uint64_t seed;
} cuda_attn_test;

/* Runs the decode kernel and, for head_dim <= 128, both prefill kernels on
 * random q/K/V in a shuffled paged cache against a plain float reference
 * on the device; returns 0 and the relative errors ||out-ref||/||ref||:
 * rel[0] decode, rel[1] prefill v1, rel[2] prefill v2 (-1 when not run),
 * or -1 with err. */
int cuda_attention_selftest(int device, const cuda_attn_test *t, double rel[3],
                            char *err, size_t errlen);

/* GEMV tuning table: one matrix-vector shape, run by the own GEMV with
 * `rows` weight rows per block (2 or 4), or by cuBLAS (rows 0).  Weights
 * rotate among copies larger than L2, so the time is device memory's. */
typedef struct {
    int N, K, T, rows;
} cuda_gemv_case;

typedef struct {
    double us;          /* median time per product */
    double gbps;        /* bytes moved (weights + x + y) per second / 1e9 */
    double rel_err;     /* vs cuBLAS (0 for cuBLAS itself) */
} cuda_gemv_result;

int cuda_gemv_bench(int device, const cuda_gemv_case *cases, int n,
                    cuda_gemv_result *res, char *err, size_t errlen);

/* Device sampling on logits the caller supplies (checks of forward_sample's
 * kernel without a model).  set_logits uploads rows [n][vocab]; sample runs
 * the kernel forward_sample runs over them (which edits them in place as
 * sampler_sample() does: eos mask, logit_bias, penalties); get_logits
 * downloads them.  Each returns 0, or -1 with err. */
typedef struct cuda_sampler cuda_sampler;
cuda_sampler *cuda_sampler_create(int device, int vocab, int max_rows,
                                  char *err, size_t errlen);
int cuda_sampler_set_logits(cuda_sampler *s, const float *logits, int n,
                            char *err, size_t errlen);
int cuda_sampler_get_logits(cuda_sampler *s, float *logits, int n,
                            char *err, size_t errlen);
int cuda_sampler_sample(cuda_sampler *s, const llm_sample_row *rows, int n,
                        sampler_result *out, char *err, size_t errlen);
/* Mean milliseconds per sample call over `reps` calls (rows as given). */
double cuda_sampler_time(cuda_sampler *s, const llm_sample_row *rows, int n,
                         int reps, char *err, size_t errlen);
void cuda_sampler_free(cuda_sampler *s);

#ifdef __cplusplus
}
#endif

#endif
