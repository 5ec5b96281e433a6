/*
 * Memory-bound matrix-vector products for decode batches of 1..8 tokens.
 *
 * cuBLAS reaches ~65% of the H200's copy bandwidth on decode shapes; the
 * weights (8 GB for Qwen3-4B) are read once per step, so every byte/s is
 * output tokens/s.  Here a block of 4 warps owns 2 consecutive weight rows
 * (or 4: the `rows` argument) and splits K among its 128 threads (each
 * reads 16 bytes of each row per step, 4 steps unrolled: 8 or 16
 * independent 16-byte loads in flight), reduces
 * through shuffles and shared memory, and applies the epilogue: store,
 * residual add, bf16 store, or SiLU(gate) * up for interleaved gate/up rows
 * (so the MLP's intermediate never exists un-activated in memory).
 * Deterministic: the same summation order at every run.
 */
#include "cuda_kernels.cuh"

#define GEMV_THREADS 128
#define GEMV_UNROLL 4

template <int T, int GEMV_ROWS>
__global__ void __launch_bounds__(GEMV_THREADS)
gemv_kernel(const bf16 *__restrict__ W, const bf16 *__restrict__ x, int N,
            int K, void *__restrict__ y, int mode)
{
    const int row0 = blockIdx.x * GEMV_ROWS;
    const int tid = threadIdx.x;
    /* Rows past N (last block) re-read row0 and are never stored. */
    const bf16 *wr[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
        wr[r] = W + (size_t)(row0 + r < N ? row0 + r : row0) * K;

    float acc[GEMV_ROWS][T];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
        for (int t = 0; t < T; t++)
            acc[r][t] = 0.0f;

    constexpr int STEP = GEMV_THREADS * 8;
    for (int kb = tid * 8; kb < K; kb += STEP * GEMV_UNROLL) {
        uint4 wv[GEMV_UNROLL][GEMV_ROWS];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int k = kb + u * STEP;
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++)
                wv[u][r] = k < K ? __ldg(reinterpret_cast<const uint4 *>(wr[r] + k))
                                 : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int k = kb + u * STEP;
            if (k >= K)
                break;
            float wf[GEMV_ROWS][8];
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++)
                llm_bf16x8_to_float(wv[u][r], wf[r]);
#pragma unroll
            for (int t = 0; t < T; t++) {
                float xf[8];
                llm_bf16x8_to_float(
                    __ldg(reinterpret_cast<const uint4 *>(x + (size_t)t * K + k)), xf);
#pragma unroll
                for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
                    for (int i = 0; i < 8; i++)
                        acc[r][t] += wf[r][i] * xf[i];
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
        /* Row pairs (gate_j, up_j) -> one activated output each. */
        if (tid >= T * (GEMV_ROWS / 2))
            return;
        const int pr = tid / T, t = tid % T;
        if (row0 + 2 * pr + 1 >= N)
            return;
        float g = 0.0f, u = 0.0f;
#pragma unroll
        for (int w = 0; w < GEMV_THREADS / 32; w++) {
            g += part[w][2 * pr][t];
            u += part[w][2 * pr + 1][t];
        }
        const float silu = g / (1.0f + __expf(-g));
        static_cast<bf16 *>(y)[(size_t)t * (N / 2) + row0 / 2 + pr] =
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

template <int R>
static void launch_rows(const bf16 *W, const bf16 *x, int T, int N, int K,
                        void *y, int mode, cudaStream_t st)
{
    const unsigned blocks = (unsigned)((N + R - 1) / R);
    switch (T) {
    case 1: gemv_kernel<1, R><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    case 2: gemv_kernel<2, R><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    case 3: gemv_kernel<3, R><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    case 4: gemv_kernel<4, R><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    case 5: gemv_kernel<5, R><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    case 6: gemv_kernel<6, R><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    case 7: gemv_kernel<7, R><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    default: gemv_kernel<8, R><<<blocks, GEMV_THREADS, 0, st>>>(W, x, N, K, y, mode); break;
    }
}

cudaError_t llm_gemv(const bf16 *W, const bf16 *x, int T, int N, int K,
                     void *y, llm_gemv_mode mode, int rows, cudaStream_t st)
{
    if (T < 1 || T > LLM_GEMV_MAX_T || K % 8 != 0 || N < 1 ||
        (mode == LLM_GEMV_SILU_MUL && N % 2 != 0) || (rows != 2 && rows != 4))
        return cudaErrorInvalidValue;
    if (rows == 4)
        launch_rows<4>(W, x, T, N, K, y, mode, st);
    else
        launch_rows<2>(W, x, T, N, K, y, mode, st);
    return llm_launch_status();
}
