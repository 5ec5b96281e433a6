/*
 * Element-wise and per-row kernels of the decoder layer: embedding gather,
 * RMSNorm, the RoPE table, the QKV epilogue (bias, QK-norm, RoPE, paged KV
 * write) and SiLU*mul.  All are memory-bound and small next to the
 * projections; they keep activations in float where that costs nothing
 * (residual stream, qkv) and hand bf16 to the tensor cores.
 */
#include "cuda_kernels.cuh"

__global__ void embed_kernel(const bf16 *__restrict__ table,
                             const int32_t *__restrict__ tokens, int hidden,
                             float *__restrict__ x)
{
    const int t = blockIdx.x;
    const bf16 *row = table + (size_t)tokens[t] * hidden;
    float *dst = x + (size_t)t * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        dst[i] = __bfloat162float(row[i]);
}

cudaError_t llm_embed(const bf16 *table, const int32_t *tokens, int n_tokens,
                      int hidden, float *x, cudaStream_t st)
{
    if (n_tokens <= 0)
        return cudaSuccess;
    embed_kernel<<<n_tokens, 256, 0, st>>>(table, tokens, hidden, x);
    return llm_launch_status();
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024). */
__device__ float block_sum(float v)
{
    __shared__ float part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = llm_warp_sum(v);
    __syncthreads();              /* part[] may be in use by a prior call */
    if (lane == 0)
        part[warp] = v;
    __syncthreads();
    const int n_warps = blockDim.x >> 5;
    float s = (lane < n_warps) ? part[lane] : 0.0f;
    return llm_warp_sum(s);
}

__global__ void rmsnorm_kernel(const float *__restrict__ x,
                               const int32_t *__restrict__ rows, int hidden,
                               const float *__restrict__ w, float eps,
                               bf16 *__restrict__ out)
{
    const int r = blockIdx.x;
    const int src = rows ? rows[r] : r;
    const float *xr = x + (size_t)src * hidden;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        ss += xr[i] * xr[i];
    ss = block_sum(ss);
    const float inv = rsqrtf(ss / (float)hidden + eps);
    bf16 *o = out + (size_t)r * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        o[i] = __float2bfloat16(xr[i] * inv * w[i]);
}

cudaError_t llm_rmsnorm(const float *x, const int32_t *rows, int n_rows,
                        const float *w, int hidden, float eps, bf16 *out,
                        cudaStream_t st)
{
    if (n_rows <= 0)
        return cudaSuccess;
    const int threads = hidden >= 1024 ? 512 : (hidden >= 256 ? 256 : 64);
    rmsnorm_kernel<<<n_rows, threads, 0, st>>>(x, rows, hidden, w, eps, out);
    return llm_launch_status();
}

__global__ void rope_table_kernel(const int32_t *__restrict__ positions,
                                  const float *__restrict__ inv_freq, int half,
                                  float attn_factor, float2 *__restrict__ cs)
{
    const int t = blockIdx.x;
    const float p = (float)positions[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        /* The angle is rounded to float as Hugging Face computes it (a
         * float32 matmul of positions and inv_freq), so long contexts see
         * the same angles as the reference. */
        const float ang = p * inv_freq[i];
        float s, c;
        sincosf(ang, &s, &c);
        cs[(size_t)t * half + i] = make_float2(c * attn_factor, s * attn_factor);
    }
}

cudaError_t llm_rope_table(const int32_t *positions, int n_tokens,
                           const float *inv_freq, int half, float attn_factor,
                           float2 *cos_sin, cudaStream_t st)
{
    if (n_tokens <= 0)
        return cudaSuccess;
    rope_table_kernel<<<n_tokens, half < 128 ? 64 : 128, 0, st>>>(
        positions, inv_freq, half, attn_factor, cos_sin);
    return llm_launch_status();
}

#define QKV_HEADS_PER_BLOCK 4
#define QKV_MAX_PAIRS 4            /* head_dim <= 256: 128 pairs / 32 lanes */

/* One warp per (token, head).  Lane l owns rotation pairs (i, i + D/2)
 * for i = l, l + 32, ...: RoPE mixes exactly those two, so the whole
 * epilogue stays in registers. */
__global__ void qkv_finish_kernel(llm_qkv_args a)
{
    const int t = blockIdx.x;
    const int lane = threadIdx.x & 31;
    const int h = blockIdx.y * QKV_HEADS_PER_BLOCK + (threadIdx.x >> 5);
    const int n_total = a.n_heads + 2 * a.n_kv;
    if (h >= n_total)
        return;
    const int D = a.head_dim, half = D >> 1;
    const float *src = a.qkv + (size_t)t * n_total * D + (size_t)h * D;
    const float *bias = a.bias ? a.bias + (size_t)h * D : nullptr;
    const bool is_q = h < a.n_heads;
    const bool is_k = !is_q && h < a.n_heads + a.n_kv;

    float x1[QKV_MAX_PAIRS], x2[QKV_MAX_PAIRS];
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < QKV_MAX_PAIRS; k++) {
        const int i = lane + 32 * k;
        x1[k] = x2[k] = 0.0f;
        if (i < half) {
            x1[k] = src[i] + (bias ? bias[i] : 0.0f);
            x2[k] = src[i + half] + (bias ? bias[i + half] : 0.0f);
            ss += x1[k] * x1[k] + x2[k] * x2[k];
        }
    }
    if (is_q || is_k) {
        const float *nw = is_q ? a.q_norm : a.k_norm;
        if (nw) {
            ss = llm_warp_sum(ss);
            const float inv = rsqrtf(ss / (float)D + a.eps);
#pragma unroll
            for (int k = 0; k < QKV_MAX_PAIRS; k++) {
                const int i = lane + 32 * k;
                if (i < half) {
                    x1[k] *= inv * nw[i];
                    x2[k] *= inv * nw[i + half];
                }
            }
        }
        const float2 *cs = a.cos_sin + (size_t)t * half;
#pragma unroll
        for (int k = 0; k < QKV_MAX_PAIRS; k++) {
            const int i = lane + 32 * k;
            if (i < half) {
                const float2 c = cs[i];
                const float r1 = x1[k] * c.x - x2[k] * c.y;
                const float r2 = x2[k] * c.x + x1[k] * c.y;
                x1[k] = r1;
                x2[k] = r2;
            }
        }
    }
    bf16 *dst;
    if (is_q) {
        dst = a.q_out + ((size_t)t * a.n_heads + h) * D;
    } else {
        const int kvh = is_k ? h - a.n_heads : h - a.n_heads - a.n_kv;
        const int pos = a.positions[t];
        const int seq = a.tok_seq[t];
        const int page = a.block_tables[(size_t)seq * a.bt_stride + pos / a.block_size];
        const size_t off = (((size_t)page * a.n_kv + kvh) * a.block_size +
                            pos % a.block_size) * D;
        dst = (is_k ? a.k_cache : a.v_cache) + off;
    }
#pragma unroll
    for (int k = 0; k < QKV_MAX_PAIRS; k++) {
        const int i = lane + 32 * k;
        if (i < half) {
            dst[i] = __float2bfloat16(x1[k]);
            dst[i + half] = __float2bfloat16(x2[k]);
        }
    }
}

cudaError_t llm_qkv_finish(const llm_qkv_args *a, cudaStream_t st)
{
    if (a->n_tokens <= 0)
        return cudaSuccess;
    if (a->head_dim > 2 * 32 * QKV_MAX_PAIRS || (a->head_dim & 1))
        return cudaErrorInvalidValue;
    const int n_total = a->n_heads + 2 * a->n_kv;
    dim3 grid(a->n_tokens, (n_total + QKV_HEADS_PER_BLOCK - 1) / QKV_HEADS_PER_BLOCK);
    qkv_finish_kernel<<<grid, 32 * QKV_HEADS_PER_BLOCK, 0, st>>>(*a);
    return llm_launch_status();
}

__global__ void silu_mul_kernel(const __nv_bfloat162 *__restrict__ gu,
                                size_t n, bf16 *__restrict__ out)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float2 v = __bfloat1622float2(gu[i]);
        const float silu = v.x / (1.0f + __expf(-v.x));
        out[i] = __float2bfloat16(silu * v.y);
    }
}

cudaError_t llm_silu_mul(const bf16 *gu, int n_tokens, int inter, bf16 *out,
                         cudaStream_t st)
{
    const size_t n = (size_t)n_tokens * inter;
    if (n == 0)
        return cudaSuccess;
    size_t blocks = (n + 255) / 256;
    if (blocks > 65535)
        blocks = 65535;
    silu_mul_kernel<<<(unsigned)blocks, 256, 0, st>>>(
        reinterpret_cast<const __nv_bfloat162 *>(gu), n, out);
    return llm_launch_status();
}
