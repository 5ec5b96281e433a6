/*
 * Memory-bound matrix-vector products for decode batches of 1..8 tokens.
 *
 * cuBLAS reaches ~65% of the H200's copy bandwidth on decode shapes; the
 * weights (8 GB for Qwen3-4B) are read once per step, so every byte/s is
 * output tokens/s.  Here a block of 4 warps owns 2 consecutive weight rows
 * and splits K among its 128 threads (each reads 16 bytes of each row per
 * step, 4 steps unrolled: 8 independent 16-byte loads in flight), reduces
 * through shuffles and shared memory, and applies the epilogue: store,
 * residual add, bf16 store, or SiLU(gate) * up for interleaved gate/up rows
 * (so the MLP's intermediate never exists un-activated in memory).
 * Deterministic: the same summation order at every run.
 */
#include "cuda_kernels.cuh"

#define GEMV_THREADS 128
#define GEMV_ROWS 2
#define GEMV_UNROLL 4

template <int T>
__global__ void __launch_bounds__(GEMV_THREADS)
gemv_kernel(const bf16 *__restrict__ W, const bf16 *__restrict__ x, int N,
            int K, void *__restrict__ y, int mode)
{
    const int row0 = blockIdx.x * GEMV_ROWS;
    const int tid = threadIdx.x;
    const bool has_r1 = row0 + 1 < N;
    const bf16 *w0 = W + (size_t)row0 * K;
    const bf16 *w1 = has_r1 ? w0 + K : w0;

    float acc[GEMV_ROWS][T];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
        for (int t = 0; t < T; t++)
            acc[r][t] = 0.0f;

    constexpr int STEP = GEMV_THREADS * 8;
    for (int kb = tid * 8; kb < K; kb += STEP * GEMV_UNROLL) {
        uint4 wa[GEMV_UNROLL], wb[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int k = kb + u * STEP;
            if (k < K) {
                wa[u] = __ldg(reinterpret_cast<const uint4 *>(w0 + k));
                wb[u] = __ldg(reinterpret_cast<const uint4 *>(w1 + k));
            } else {
                wa[u] = wb[u] = make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int k = kb + u * STEP;
            if (k >= K)
                break;
            float fa[8], fb[8];
            llm_bf16x8_to_float(wa[u], fa);
            llm_bf16x8_to_float(wb[u], fb);
#pragma unroll
            for (int t = 0; t < T; t++) {
                float xf[8];
                llm_bf16x8_to_float(
                    __ldg(reinterpret_cast<const uint4 *>(x + (size_t)t * K + k)), xf);
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    acc[0][t] += fa[i] * xf[i];
                    acc[1][t] += fb[i] * xf[i];
                }
            }
        }
    }

    __shared__ float part[GEMV_THREADS / 32][GEMV_ROWS][T];
    const int lane = tid & 31, warp = tid >> 5;
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float v = llm_warp_sum(acc[r][t]);
            if (lane == 0)
                part[warp][r][t] = v;
        }
    __syncthreads();
    if (mode == LLM_GEMV_SILU_MUL) {
        /* Row pair (gate_j, up_j) -> one activated output. */
        if (tid >= T)
            return;
        float g = 0.0f, u = 0.0f;
#pragma unroll
        for (int w = 0; w < GEMV_THREADS / 32; w++) {
            g += part[w][0][tid];
            u += part[w][1][tid];
        }
        const float silu = g / (1.0f + __expf(-g));
        static_cast<bf16 *>(y)[(size_t)tid * (N / 2) + row0 / 2] =
            __float2bfloat16(silu * u);
        return;
    }
    if (tid >= GEMV_ROWS * T)
        return;
    const int r = tid / T, t = tid % T;
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < GEMV_THREADS / 32; w++)
        v += part[w][r][t];
    const int row = row0 + r;
    if (row >= N)
        return;
    if (mode == LLM_GEMV_F32_STORE)
        static_cast<float *>(y)[(size_t)t * N + row] = v;
    else if (mode == LLM_GEMV_F32_ADD)
        static_cast<float *>(y)[(size_t)t * N + row] += v;
    else
        static_cast<bf16 *>(y)[(size_t)t * N + row] = __float2bfloat16(v);
}

cudaError_t llm_gemv(const bf16 *W, const bf16 *x, int T, int N, int K,
                     void *y, llm_gemv_mode mode, cudaStream_t st)
{
    if (T < 1 || T > LLM_GEMV_MAX_T || K % 8 != 0 || N < 1 ||
        (mode == LLM_GEMV_SILU_MUL && N % 2 != 0))
        return cudaErrorInvalidValue;
    const unsigned blocks = (unsigned)((N + GEMV_ROWS - 1) / GEMV_ROWS);
    switch (T) {
    case 1: gemv_kernel<1><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    case 2: gemv_kernel<2><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    case 3: gemv_kernel<3><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    case 4: gemv_kernel<4><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    case 5: gemv_kernel<5><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    case 6: gemv_kernel<6><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    case 7: gemv_kernel<7><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    default: gemv_kernel<8><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    }
    return llm_launch_status();
}
