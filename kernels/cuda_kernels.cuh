/*
 * Launchers of the CUDA backend's own kernels.  Every launcher queues its
 * work on `st` and returns the launch status; none synchronizes, so a
 * whole forward can be captured into a CUDA graph.
 *
 * Layouts (row-major):
 *   residual stream x     float [T][hidden]
 *   normalized h          bf16  [T][hidden]
 *   fused qkv projection  float [T][(n_heads + 2 n_kv) * head_dim]
 *   q after norm + rope   bf16  [T][n_heads][head_dim]
 *   KV cache (one layer)  bf16  [block][n_kv][block_size][head_dim], K and V
 *   gate/up projection    bf16  [T][2 * inter], gate and up interleaved per
 *                         output row (g0 u0 g1 u1 ...), see cuda_backend.cu
 */
#ifndef LLM_CUDA_KERNELS_CUH
#define LLM_CUDA_KERNELS_CUH

#include "cuda_util.cuh"

typedef __nv_bfloat16 bf16;

/* x[t] = float(table[tokens[t]]) */
cudaError_t llm_embed(const bf16 *table, const int32_t *tokens, int n_tokens,
                      int hidden, float *x, cudaStream_t st);

/* out[r] = bf16(x[rows[r]] * rsqrt(mean(x^2) + eps) * w); rows NULL: r. */
cudaError_t llm_rmsnorm(const float *x, const int32_t *rows, int n_rows,
                        const float *w, int hidden, float eps, bf16 *out,
                        cudaStream_t st);

/* cos_sin[t][i] = (cos, sin)(positions[t] * inv_freq[i]) * attn_factor,
 * i < half (= head_dim / 2). */
cudaError_t llm_rope_table(const int32_t *positions, int n_tokens,
                           const float *inv_freq, int half, float attn_factor,
                           float2 *cos_sin, cudaStream_t st);

typedef struct {
    const float   *qkv;          /* [T][(nq + 2 nkv) * D] */
    const float   *bias;         /* [(nq + 2 nkv) * D] or NULL */
    const float   *q_norm;       /* [D] or NULL (no QK-norm) */
    const float   *k_norm;
    float          eps;
    const float2  *cos_sin;      /* [T][D/2] */
    int            n_tokens, n_heads, n_kv, head_dim;
    const int32_t *tok_seq;      /* [T] sequence of each token */
    const int32_t *positions;    /* [T] */
    const int32_t *block_tables; /* [n_seqs][bt_stride] */
    int            bt_stride, block_size;
    bf16          *q_out;        /* [T][nq][D] */
    bf16          *k_cache, *v_cache; /* this layer's pools */
} llm_qkv_args;

/* Bias, QK-norm, neox RoPE, then K and V into the paged cache. */
cudaError_t llm_qkv_finish(const llm_qkv_args *a, cudaStream_t st);

/* out[t][j] = silu(gu[t][2j]) * gu[t][2j+1] */
cudaError_t llm_silu_mul(const bf16 *gu, int n_tokens, int inter, bf16 *out,
                         cudaStream_t st);

typedef struct {
    const bf16    *q;            /* [T][nq][D] */
    const bf16    *k_cache, *v_cache;
    const int32_t *tok_seq, *positions, *block_tables;
    int            bt_stride, block_size, n_heads, n_kv, head_dim;
    float          scale;        /* softmax scale, 1/sqrt(D) */
    bf16          *out;          /* [T][nq][D] */
} llm_attn_args;

/* Once per device before the first attention launch. */
cudaError_t llm_attn_init(void);

/* Head dims the attention kernels are instantiated for. */
int llm_attn_supported(int head_dim, int group);

/* One query token per entry of tok_list (any token: it attends to
 * positions 0..pos of its sequence).  The context is cut into n_splits
 * ranges of split_tokens; with n_splits > 1 partial results go to
 * part_o [n_list][nq][n_splits][D] and part_ml [n_list][nq][n_splits][2]
 * and a second kernel merges them. */
cudaError_t llm_attn_decode(const llm_attn_args *a, const int32_t *tok_list,
                            int n_list, int split_tokens, int n_splits,
                            float *part_o, float *part_ml, cudaStream_t st);

/* Tensor-core flash attention for runs of query tokens of one sequence:
 * work[2i] = first batch token, work[2i+1] = count (<= 64), consecutive
 * positions.  Causal over the paged cache.  variant 1: plain shared-memory
 * loads; 2: ldmatrix + cp.async double buffering (head_dim 64/128; other
 * head dims use 1).  head_dim <= 128. */
#define LLM_PREFILL_TILE 64
cudaError_t llm_attn_prefill(const llm_attn_args *a, const int32_t *work,
                             int n_work, int variant, cudaStream_t st);

/* Memory-bound matrix-vector products for T <= LLM_GEMV_MAX_T tokens:
 * y[t][n] = sum_k W[n][k] x[t][k], W bf16 [N][K], x bf16 [T][K]. */
#define LLM_GEMV_MAX_T 8
typedef enum {
    LLM_GEMV_F32_STORE = 0,  /* y float [T][N] = */
    LLM_GEMV_F32_ADD,        /* y float [T][N] += (residual add) */
    LLM_GEMV_BF16_STORE,     /* y bf16 [T][N] = */
    LLM_GEMV_SILU_MUL        /* rows (2j, 2j+1) = (gate, up): y bf16 [T][N/2] */
} llm_gemv_mode;
/* rows: weight rows per block, 2 or 4 (LLM_CUDA_GEMV_ROWS). */
cudaError_t llm_gemv(const bf16 *W, const bf16 *x, int T, int N, int K,
                     void *y, llm_gemv_mode mode, int rows, cudaStream_t st);

#endif
