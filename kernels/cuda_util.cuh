/*
 * Small shared helpers of the CUDA backend: bf16 packing, warp reductions
 * and the error convention (every launcher returns cudaError_t; the
 * backend turns it into a message, never aborts).
 */
#ifndef LLM_CUDA_UTIL_CUH
#define LLM_CUDA_UTIL_CUH

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <stdint.h>

/* Returns the launch error of the kernel just queued (bad configuration,
 * too much shared memory); execution errors surface at the next sync. */
static inline cudaError_t llm_launch_status(void)
{
    return cudaGetLastError();
}

__device__ __forceinline__ float llm_warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float llm_warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* 8 bf16 values in one 16-byte vector, unpacked to float. */
__device__ __forceinline__ void llm_bf16x8_to_float(const uint4 &u, float f[8])
{
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __bfloat1622float2(h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}

__device__ __forceinline__ uint4 llm_float_to_bf16x8(const float f[8])
{
    uint4 u;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++)
        h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    return u;
}

/* exp2 that maps the "-inf - -inf" of an empty softmax state to 0
 * instead of NaN. */
__device__ __forceinline__ float llm_exp2_safe(float a, float b)
{
    return (b == -INFINITY) ? 0.0f : exp2f(a - b);
}

#endif
