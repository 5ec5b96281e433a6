/* Host emulation of the CUDA pieces cuda_sampling.cu uses (see
 * sampling_emu.cpp): 1024 std::threads per block, barriers for
 * __syncthreads and warp shuffles, runtime calls on host memory. */
#pragma once
#include <barrier>
#include <thread>
#include <vector>
#include <functional>
#include <math.h>
#include <string.h>
#include <stdint.h>
#include <stdlib.h>
#include <algorithm>
using std::min;
struct emu_dim { unsigned x, y, z; };
extern thread_local emu_dim threadIdx;
extern thread_local emu_dim blockIdx;
extern emu_dim blockDim;
extern std::barrier<> *g_block_bar;
extern std::barrier<> *g_warp_bar[32];
extern uint64_t g_x[32][32];
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
inline int emu_lane() { return threadIdx.x & 31; }
inline int emu_warp() { return threadIdx.x >> 5; }
template <class T> T emu_xchg(T v, int src) {
    static_assert(sizeof(T) <= 8, "");
    uint64_t bits = 0; memcpy(&bits, &v, sizeof v);
    g_x[emu_warp()][emu_lane()] = bits;
    g_warp_bar[emu_warp()]->arrive_and_wait();
    uint64_t o = g_x[emu_warp()][src];
    g_warp_bar[emu_warp()]->arrive_and_wait();
    T r; memcpy(&r, &o, sizeof r); return r;
}
template <class T> T __shfl_xor_sync(unsigned, T v, int o) { return emu_xchg(v, emu_lane() ^ o); }
template <class T> T __shfl_up_sync(unsigned, T v, int o) { int l = emu_lane(); return emu_xchg(v, l >= o ? l - o : l); }
template <class T> T __shfl_sync(unsigned, T v, int src) { return emu_xchg(v, src); }
inline unsigned __ballot_sync(unsigned, int p) {
    g_x[emu_warp()][emu_lane()] = p ? 1 : 0;
    g_warp_bar[emu_warp()]->arrive_and_wait();
    unsigned m = 0; for (int i = 0; i < 32; i++) if (g_x[emu_warp()][i]) m |= 1u << i;
    g_warp_bar[emu_warp()]->arrive_and_wait();
    return m;
}
inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
template <class T, class U> T atomicAdd(T *p, U v) { return __atomic_fetch_add(p, (T)v, __ATOMIC_SEQ_CST); }
template <class T, class U> T atomicOr(T *p, U v) { return __atomic_fetch_or(p, (T)v, __ATOMIC_SEQ_CST); }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline unsigned long long __double2ull_rn(double d) { return (unsigned long long)nearbyint(d); }
typedef int cudaError_t;
typedef void *cudaStream_t;
enum { cudaSuccess = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2 };
inline const char *cudaGetErrorString(cudaError_t) { return "emu error"; }
inline cudaError_t llm_launch_status(void) { return cudaSuccess; }
inline cudaError_t cudaMalloc(void **p, size_t n) { *p = calloc(1, n); return *p ? 0 : 2; }
inline cudaError_t cudaMallocHost(void **p, size_t n) { *p = calloc(1, n); return *p ? 0 : 2; }
inline cudaError_t cudaFree(void *p) { free(p); return 0; }
inline cudaError_t cudaFreeHost(void *p) { free(p); return 0; }
inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, int, cudaStream_t) { memcpy(d, s, n); return 0; }
inline cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t) { memset(d, v, n); return 0; }
void emu_launch(int n, std::function<void()> k);
#define EMU_LAUNCH(n, ...) emu_launch(n, [=]() { sample_kernel(__VA_ARGS__); })
