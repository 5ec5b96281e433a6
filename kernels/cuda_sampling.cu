/*
 * Sampling on the device (see cuda_sampling.cuh and src/sampler.h for the
 * processing order, which this follows step by step):
 *
 *   1. logprobs of the raw row (log-sum-exp, top-N by radix select), and
 *      the raw values of every id the next steps edit, kept for the sampled
 *      token's logprob;
 *   2-4. eos mask, logit_bias (in list order, one thread, as the CPU adds
 *      them), penalties: the generated ids are counted in a per-row table
 *      [V] of the device that is all zero between steps (only the
 *      history's ids are touched and cleared again), the first thread to
 *      claim an id applies repetition, frequency and presence once;
 *   5. greedy: argmax, lowest id on ties;
 *   6-9. weights exp((l - max) / T) in float as the CPU computes them,
 *      min-p, top-k (radix select of the k-th logit; ties kept), top-p
 *      (weighted radix select of the boundary weight; its ties kept lowest
 *      id first as far as needed);
 *  10. the draw: the caller's uniform times the kept mass, walked in id
 *      order.
 *
 * Masses are 64-bit fixed point (weight * 2^42, the largest weight is 1,
 * so a row of 4M tokens cannot overflow): integer sums are exact, so the
 * result does not depend on the order threads add in.  The CPU walks kept
 * tokens in another order, so the same uniform may pick another token;
 * the probabilities are the same (llm-cuda-check tests them).
 */
#include "cuda_sampling.cuh"

#include <limits.h>
#include <stdlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define SAMPLE_THREADS   1024
#define SAMPLE_WARPS     (SAMPLE_THREADS / 32)
#define SAMPLE_LIST_CAP  4096              /* top-k survivors in shared memory */
#define SAMPLE_FX        4398046511104.0   /* 2^42 */
#define SAMPLE_GREEDY_EPS 1e-5f            /* sampler.c's SAMPLER_GREEDY_EPS */
#define CNT_DONE         (1 << 30)
#define CNT_MASK         (CNT_DONE - 1)

typedef unsigned long long u64;

/* One row as the kernel reads it (packed by the host). */
typedef struct {
    double  uniform;
    float   temperature, top_p, min_p, presence, frequency, repetition;
    int32_t top_k, want_lp, n_top, penalties;
    /* ints[list_off ...]: eos ids, bias ids, prompt, generated */
    int32_t list_off, n_eos, n_bias, n_prompt, n_gen, pad;
} sample_row;

typedef struct {
    unsigned int hcnt[256];
    u64          hmass[256];
    int          ids[SAMPLE_LIST_CAP];
    float        rf[SAMPLE_WARPS];
    int          ri[SAMPLE_WARPS];
    double       rd[SAMPLE_WARPS];
    u64          ru[SAMPLE_WARPS];
    int          top_ids[32];
    float        top_v[32];
    int          n_top, n_list;
    /* select / walk results, written by one thread, read after a sync */
    int          sel_bin, sel_none;
    u64          sel_rem, sel_total;
    unsigned int sel_cnt;
    int          walk_warp, walk_res;
    u64          walk_x;
    float        raw_t;
} sample_smem;

/* ---- keys and block-wide helpers ---------------------------------------- */

/* Order-preserving key of a logit; 0 for -inf and NaN (never selected). */
__device__ __forceinline__ unsigned int logit_key(float l)
{
    if (isnan(l) || l == -INFINITY)
        return 0;
    const unsigned int u = __float_as_uint(l);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ u64 to_fx(float w)
{
    return __double2ull_rn((double)w * SAMPLE_FX);
}

__device__ float block_max(float v, sample_smem &s)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if ((threadIdx.x & 31) == 0)
        s.rf[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = s.rf[threadIdx.x];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (threadIdx.x == 0)
            s.rf[0] = v;
    }
    __syncthreads();
    v = s.rf[0];
    __syncthreads();
    return v;
}

/* Sums in a fixed tree: the same inputs give the same bits every run. */
__device__ double block_sum_d(double v, sample_smem &s)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0)
        s.rd[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = s.rd[threadIdx.x];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            v += __shfl_xor_sync(0xffffffffu, v, o);
        if (threadIdx.x == 0)
            s.rd[0] = v;
    }
    __syncthreads();
    v = s.rd[0];
    __syncthreads();
    return v;
}

__device__ u64 block_sum_u(u64 v, sample_smem &s)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0)
        s.ru[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = s.ru[threadIdx.x];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            v += __shfl_xor_sync(0xffffffffu, v, o);
        if (threadIdx.x == 0)
            s.ru[0] = v;
    }
    __syncthreads();
    v = s.ru[0];
    __syncthreads();
    return v;
}

/* Lowest id among the largest values (NaN as -inf); 0 when none beats
 * -inf, as sampler.c's argmax. */
__device__ int block_argmax(const float *L, int V, sample_smem &s)
{
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float l = L[i];
        if (l > bv) {           /* strictly: ids ascend within a thread */
            bv = l;
            bi = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    if ((threadIdx.x & 31) == 0) {
        s.rf[threadIdx.x >> 5] = bv;
        s.ri[threadIdx.x >> 5] = bi;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        bv = s.rf[threadIdx.x];
        bi = s.ri[threadIdx.x];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) {
                bv = ov;
                bi = oi;
            }
        }
        if (threadIdx.x == 0)
            s.ri[0] = (bv > -INFINITY && bi != INT_MAX) ? bi : 0;
    }
    __syncthreads();
    const int r = s.ri[0];
    __syncthreads();
    return r;
}

/*
 * Radix select over keys key(i) > 0, i < n: the largest key K with
 * W(key >= K) >= need, W counting elements (WEIGHTED false) or summing
 * mass(i).  4 passes of 8 bits, histograms in shared memory, the bins
 * scanned by warp 0 from the top.
 */
typedef struct {
    unsigned int key;     /* K; 1 with none (fewer than need in all) */
    int          none;    /* W of all keys < need: K = 1 takes them all */
    int          all_ge;  /* count select: exactly `need` keys >= K */
    u64          rem;     /* W still needed from the keys == K */
    unsigned int n_eq;    /* keys == K */
    u64          total;   /* W of all keys (pass 0) */
} select_result;

template <bool WEIGHTED, typename KeyF, typename MassF>
__device__ select_result block_select(sample_smem &s, int n, KeyF key, MassF mass,
                                      u64 need)
{
    select_result r;
    unsigned int prefix = 0;
    const int lane = threadIdx.x & 31;
    r.none = 0;
    r.all_ge = 0;
    r.total = 0;
    r.n_eq = 0;
    r.rem = need;
    for (int pass = 0; pass < 4; pass++) {
        const int shift = 24 - 8 * pass;
        for (int b = threadIdx.x; b < 256; b += blockDim.x) {
            s.hcnt[b] = 0;
            s.hmass[b] = 0;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const unsigned int k = key(i);
            if (k == 0 || (pass > 0 && (k >> (shift + 8)) != (prefix >> (shift + 8))))
                continue;
            const int b = (k >> shift) & 255;
            atomicAdd(&s.hcnt[b], 1u);
            if (WEIGHTED)
                atomicAdd(&s.hmass[b], mass(i));
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            /* lane l owns bins 255 - 8l down to 248 - 8l */
            u64 sum = 0;
            for (int j = 0; j < 8; j++) {
                const int b = 255 - 8 * lane - j;
                sum += WEIGHTED ? s.hmass[b] : (u64)s.hcnt[b];
            }
            u64 incl = sum;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const u64 t = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o)
                    incl += t;
            }
            const unsigned int hit = __ballot_sync(0xffffffffu, incl >= need);
            const u64 total = __shfl_sync(0xffffffffu, incl, 31);
            if (lane == 0) {
                s.sel_total = total;
                s.sel_none = hit == 0;
            }
            if (hit && lane == __ffs(hit) - 1) {
                u64 acc = incl - sum;
                for (int j = 0; j < 8; j++) {
                    const int b = 255 - 8 * lane - j;
                    const u64 w = WEIGHTED ? s.hmass[b] : (u64)s.hcnt[b];
                    if (acc + w >= need) {
                        s.sel_bin = b;
                        s.sel_rem = need - acc;
                        s.sel_cnt = s.hcnt[b];
                        break;
                    }
                    acc += w;
                }
            }
        }
        __syncthreads();
        if (pass == 0)
            r.total = s.sel_total;
        if (s.sel_none) {
            /* only in pass 0: the later passes look inside a bin that
             * holds what is needed */
            r.none = 1;
            r.key = 1;
            __syncthreads();
            return r;
        }
        prefix |= (unsigned int)s.sel_bin << shift;
        need = s.sel_rem;
        r.n_eq = s.sel_cnt;
        r.rem = need;
        __syncthreads();
        if (!WEIGHTED && r.n_eq == need) {
            /* every key of this bin is needed: K need not be exact */
            r.all_ge = 1;
            break;
        }
    }
    r.key = prefix;
    return r;
}

/*
 * The first index i < n (in index order) where the running sum of
 * weight(i) exceeds x; -1 when the total does not.  Each warp owns a
 * contiguous segment; the warp holding the crossing walks it 32 at a time.
 */
template <typename WF>
__device__ int block_walk(sample_smem &s, int n, WF weight, u64 x)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int seg = (n + SAMPLE_WARPS - 1) / SAMPLE_WARPS;
    const int lo = warp * seg, hi = min(n, lo + seg);
    u64 sum = 0;
    for (int i = lo + lane; i < hi; i += 32)
        sum += weight(i);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0)
        s.ru[warp] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        u64 acc = 0;
        s.walk_warp = -1;
        s.walk_res = -1;
        for (int w = 0; w < SAMPLE_WARPS; w++) {
            if (x < acc + s.ru[w]) {
                s.walk_warp = w;
                s.walk_x = x - acc;
                break;
            }
            acc += s.ru[w];
        }
    }
    __syncthreads();
    if (warp == s.walk_warp) {
        u64 xl = s.walk_x;
        for (int base = lo; base < hi; base += 32) {
            const int i = base + lane;
            const u64 v = i < hi ? weight(i) : 0;
            u64 incl = v;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const u64 t = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o)
                    incl += t;
            }
            const u64 chunk = __shfl_sync(0xffffffffu, incl, 31);
            if (xl < chunk) {
                if (incl > xl && incl - v <= xl)
                    s.walk_res = i;
                break;
            }
            xl -= chunk;
        }
    }
    __syncthreads();
    const int r = s.walk_res;
    __syncthreads();
    return r;
}

/* ---- the kernel ------------------------------------------------------------- */

__global__ void __launch_bounds__(SAMPLE_THREADS)
sample_kernel(float *__restrict__ logits, int V, const sample_row *__restrict__ rows,
              const int32_t *__restrict__ ints, const float *__restrict__ fvals,
              float *__restrict__ saved, int32_t *__restrict__ counts,
              int32_t *__restrict__ out_tok, llm_lp_out *__restrict__ out_lp)
{
    __shared__ sample_smem s;
    const sample_row r = rows[blockIdx.x];
    float *L = logits + (size_t)blockIdx.x * V;
    const int tid = threadIdx.x;
    const int32_t *list = ints + r.list_off;
    const int n_list = r.n_eos + r.n_bias + r.n_prompt + r.n_gen;
    double lse = 0.0;

    /* 1. logprobs of the raw row */
    if (r.want_lp) {
        float m = -INFINITY;
        for (int i = tid; i < V; i += blockDim.x)
            m = fmaxf(m, L[i]);
        m = block_max(m, s);
        if (!(m > -INFINITY)) {
            lse = 0.0;
        } else if (isinf(m)) {
            lse = m;
        } else {
            double acc = 0.0;
            for (int i = tid; i < V; i += blockDim.x)
                acc += (double)expf(L[i] - m);
            lse = (double)m + log(block_sum_d(acc, s));
        }
        if (r.n_top > 0) {
            if (tid == 0)
                s.n_top = 0;
            auto key = [&](int i) { return logit_key(L[i]); };
            auto none = [](int) { return (u64)0; };
            const select_result sel = block_select<false>(s, V, key, none, (u64)r.n_top);
            int cut = INT_MAX;              /* ties at K: indices <= cut */
            if (!sel.none && !sel.all_ge) {
                auto eq = [&](int i) { return (u64)(logit_key(L[i]) == sel.key); };
                cut = block_walk(s, V, eq, sel.rem - 1);
            }
            for (int i = tid; i < V; i += blockDim.x) {
                const unsigned int k = logit_key(L[i]);
                const bool in = sel.none || sel.all_ge ? k >= sel.key && k != 0
                                                       : k > sel.key || (k == sel.key && i <= cut);
                if (in) {
                    const int slot = atomicAdd(&s.n_top, 1);
                    if (slot < 32) {
                        s.top_ids[slot] = i;
                        s.top_v[slot] = L[i];
                    }
                }
            }
            __syncthreads();
            if (tid == 0) {
                int nt = s.n_top < r.n_top ? s.n_top : r.n_top;
                /* most likely first, lower id on ties */
                for (int a = 1; a < nt; a++) {
                    const float v = s.top_v[a];
                    const int id = s.top_ids[a];
                    int b = a;
                    while (b > 0 && (s.top_v[b - 1] < v ||
                                     (s.top_v[b - 1] == v && s.top_ids[b - 1] > id))) {
                        s.top_v[b] = s.top_v[b - 1];
                        s.top_ids[b] = s.top_ids[b - 1];
                        b--;
                    }
                    s.top_v[b] = v;
                    s.top_ids[b] = id;
                }
                out_lp[blockIdx.x].n_top = nt;
                for (int a = 0; a < nt; a++) {
                    out_lp[blockIdx.x].top_ids[a] = s.top_ids[a];
                    out_lp[blockIdx.x].top_lp[a] = (float)((double)s.top_v[a] - lse);
                }
            }
        } else if (tid == 0) {
            out_lp[blockIdx.x].n_top = 0;
        }
        for (int j = tid; j < n_list; j += blockDim.x)
            saved[r.list_off + j] = L[list[j]];
        __syncthreads();
    }

    /* 2-4. eos mask, logit_bias, penalties */
    for (int j = tid; j < r.n_eos; j += blockDim.x)
        L[list[j]] = -INFINITY;
    __syncthreads();
    if (r.n_bias > 0) {
        if (tid == 0) {
            const int32_t *bid = list + r.n_eos;
            const float *bv = fvals + r.list_off + r.n_eos;
            for (int j = 0; j < r.n_bias; j++)
                L[bid[j]] = __fadd_rn(L[bid[j]], bv[j]);
        }
        __syncthreads();
    }
    if (r.penalties) {
        const int32_t *hist = list + r.n_eos + r.n_bias;   /* prompt, then generated */
        const int n_hist = r.n_prompt + r.n_gen;
        int32_t *cnt = counts + (size_t)blockIdx.x * V;
        const bool use_rep = r.repetition != 1.0f;
        for (int j = tid; j < r.n_gen; j += blockDim.x)
            atomicAdd(&cnt[hist[r.n_prompt + j]], 1);
        __syncthreads();
        for (int j = tid; j < n_hist; j += blockDim.x) {
            const int id = hist[j];
            const int old = atomicOr(&cnt[id], CNT_DONE);
            if (old & CNT_DONE)
                continue;               /* another entry of the same id */
            float l = L[id];
            if (use_rep)
                l = l > 0.0f ? __fdiv_rn(l, r.repetition) : __fmul_rn(l, r.repetition);
            const int c = old & CNT_MASK;
            if (c > 0) {
                l = __fsub_rn(l, __fmul_rn(r.frequency, (float)c));
                l = __fsub_rn(l, r.presence);
            }
            L[id] = l;
        }
        __syncthreads();
        /* back to all zero for the next step */
        for (int j = tid; j < n_hist; j += blockDim.x)
            cnt[hist[j]] = 0;
        __syncthreads();
    }

    /* 5-10. the token */
    int token;
    if (r.temperature < SAMPLE_GREEDY_EPS) {
        token = block_argmax(L, V, s);
    } else {
        float m = -INFINITY;
        for (int i = tid; i < V; i += blockDim.x)
            m = fmaxf(m, L[i]);
        m = block_max(m, s);
        if (!(m > -INFINITY) || isinf(m)) {
            token = block_argmax(L, V, s);
        } else {
            const float inv_t = __fdiv_rn(1.0f, r.temperature);
            const float min_p = r.min_p;
            unsigned int kkey = 1;          /* kept: logit_key >= kkey */
            bool use_list = false;
            int n = V;
            if (r.top_k > 0 && r.top_k < V) {
                auto key = [&](int i) { return logit_key(L[i]); };
                auto none = [](int) { return (u64)0; };
                const select_result sel = block_select<false>(s, V, key, none, (u64)r.top_k);
                kkey = sel.key;
                const u64 n_ge = sel.none ? sel.total
                               : sel.all_ge ? (u64)r.top_k
                                            : (u64)r.top_k - sel.rem + sel.n_eq;
                if (n_ge <= SAMPLE_LIST_CAP) {
                    if (tid == 0)
                        s.n_list = 0;
                    __syncthreads();
                    for (int i = tid; i < V; i += blockDim.x) {
                        if (logit_key(L[i]) >= kkey) {
                            const int slot = atomicAdd(&s.n_list, 1);
                            if (slot < SAMPLE_LIST_CAP)
                                s.ids[slot] = i;
                        }
                    }
                    __syncthreads();
                    n = min(s.n_list, SAMPLE_LIST_CAP);
                    int n_pad = 1;
                    while (n_pad < n)
                        n_pad <<= 1;
                    for (int i = n + tid; i < n_pad; i += blockDim.x)
                        s.ids[i] = INT_MAX;
                    __syncthreads();
                    /* bitonic sort: the draw walks ids in ascending order */
                    for (int k = 2; k <= n_pad; k <<= 1) {
                        for (int j = k >> 1; j > 0; j >>= 1) {
                            for (int i = tid; i < n_pad; i += blockDim.x) {
                                const int ixj = i ^ j;
                                if (ixj > i) {
                                    const int a = s.ids[i], b = s.ids[ixj];
                                    if ((a > b) == ((i & k) == 0)) {
                                        s.ids[i] = b;
                                        s.ids[ixj] = a;
                                    }
                                }
                            }
                            __syncthreads();
                        }
                    }
                    use_list = true;
                }
            }
            /* index -> token id; weight of index, 0 when not kept */
            auto id_of = [&](int i) { return use_list ? s.ids[i] : i; };
            auto weight = [&](int i) -> float {
                const float l = L[id_of(i)];
                if (logit_key(l) < kkey)
                    return 0.0f;
                const float w = expf(__fmul_rn(__fsub_rn(l, m), inv_t));
                return (w >= min_p && w > 0.0f) ? w : 0.0f;
            };
            u64 part = 0;
            for (int i = tid; i < n; i += blockDim.x)
                part += to_fx(weight(i));
            const u64 total = block_sum_u(part, s);
            u64 kept_total = total;
            unsigned int t0 = 0;            /* kept: weight bits > t0, */
            int cut = INT_MAX;              /* or == t0 at index <= cut */
            if (r.top_p < 1.0f && total > 0) {
                u64 tgt = (u64)ceil((double)r.top_p * (double)total);
                tgt = tgt < 1 ? 1 : (tgt > total ? total : tgt);
                auto wkey = [&](int i) { return __float_as_uint(weight(i)); };
                auto wmass = [&](int i) { return to_fx(weight(i)); };
                const select_result sel = block_select<true>(s, n, wkey, wmass, tgt);
                if (!sel.none) {
                    /* the smallest most-likely-first prefix reaching tgt:
                     * every weight above the boundary weight, and of the
                     * tokens at it (lowest ids first) as many as needed */
                    t0 = sel.key;
                    const u64 fx_t0 = to_fx(__uint_as_float(t0));
                    u64 n_keep = sel.n_eq;
                    if (fx_t0 > 0) {
                        const u64 q = (sel.rem + fx_t0 - 1) / fx_t0;
                        n_keep = q < n_keep ? q : n_keep;
                    }
                    if (n_keep < sel.n_eq) {
                        auto eq = [&](int i) { return (u64)(wkey(i) == t0); };
                        cut = block_walk(s, n, eq, n_keep - 1);
                    }
                    kept_total = (tgt - sel.rem) + n_keep * fx_t0;
                }
            }
            auto kept = [&](int i) -> u64 {
                const float w = weight(i);
                const unsigned int b = __float_as_uint(w);
                return (b > t0 || (b == t0 && i <= cut)) ? to_fx(w) : 0;
            };
            u64 x = (u64)(r.uniform * (double)kept_total);
            if (kept_total > 0 && x >= kept_total)
                x = kept_total - 1;
            const int at = kept_total > 0 ? block_walk(s, n, kept, x) : -1;
            token = at >= 0 ? id_of(at) : block_argmax(L, V, s);
        }
    }

    if (tid == 0)
        out_tok[blockIdx.x] = token;
    if (r.want_lp) {
        if (tid == 0)
            s.raw_t = L[token];
        __syncthreads();
        /* an edited token's raw value was saved in step 1 */
        for (int j = tid; j < n_list; j += blockDim.x)
            if (list[j] == token)
                s.raw_t = saved[r.list_off + j];
        __syncthreads();
        if (tid == 0)
            out_lp[blockIdx.x].logprob = (float)((double)s.raw_t - lse);
    }
}

/* ---- host side ------------------------------------------------------------ */

static int smp_fail(char *err, size_t errlen, const char *what, cudaError_t e)
{
    snprintf(err, errlen, "cuda: sampling: %s: %s", what, cudaGetErrorString(e));
    return -1;
}

static int smp_bad(char *err, size_t errlen, int k, const char *what)
{
    snprintf(err, errlen, "cuda: sampling: row %d: %s", k, what);
    return -1;
}

/* sampler.c's params_valid and id checks: a bad row is an error before
 * anything runs, never an out-of-range store. */
static int row_check(const llm_sample_row *row, int k, int V, char *err, size_t errlen)
{
    const sampler_params *p = row->p;
    if (!p)
        return smp_bad(err, errlen, k, "no parameters");
    if (!(p->temperature >= 0.0f) || !(p->top_p > 0.0f && p->top_p <= 1.0f) ||
        p->top_k < 0 || !(p->min_p >= 0.0f && p->min_p <= 1.0f) ||
        !(p->repetition_penalty > 0.0f) || !isfinite(p->presence_penalty) ||
        !isfinite(p->frequency_penalty) || p->top_logprobs < 0 ||
        p->top_logprobs > SAMPLER_MAX_TOP_LOGPROBS || p->n_logit_bias < 0 ||
        (p->n_logit_bias > 0 && !p->logit_bias) || p->n_eos < 0 ||
        (p->n_eos > 0 && !p->eos_ids))
        return smp_bad(err, errlen, k, "parameter out of range");
    if (!(row->uniform >= 0.0 && row->uniform < 1.0))
        return smp_bad(err, errlen, k, "uniform outside [0, 1)");
    for (int i = 0; i < p->n_logit_bias; i++)
        if (p->logit_bias[i].token < 0 || p->logit_bias[i].token >= V ||
            isnan(p->logit_bias[i].bias))
            return smp_bad(err, errlen, k, "logit_bias entry out of range");
    const sampler_history *h = row->h;
    if (h) {
        if (h->n_prompt < 0 || h->n_generated < 0 ||
            (h->n_prompt > 0 && !h->prompt) || (h->n_generated > 0 && !h->generated))
            return smp_bad(err, errlen, k, "malformed history");
        for (int i = 0; i < h->n_prompt; i++)
            if (h->prompt[i] < 0 || h->prompt[i] >= V)
                return smp_bad(err, errlen, k, "prompt id outside the vocabulary");
        for (int i = 0; i < h->n_generated; i++)
            if (h->generated[i] < 0 || h->generated[i] >= V)
                return smp_bad(err, errlen, k, "generated id outside the vocabulary");
    }
    return 0;
}

static int grow_dev(void **p, size_t *cap, size_t need, size_t *bytes, const char *what,
                    char *err, size_t errlen)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 4096;
    while (c < need)
        c *= 2;
    if (*p) {
        cudaFree(*p);
        *bytes -= *cap;
        *p = NULL;
        *cap = 0;
    }
    cudaError_t e = cudaMalloc(p, c);
    if (e != cudaSuccess) {
        *p = NULL;
        return smp_fail(err, errlen, what, e);
    }
    *cap = c;
    *bytes += c;
    return 0;
}

int llm_sampling_enqueue(llm_sampling *s, float *d_logits, int V,
                         const llm_sample_row *rows, int n, cudaStream_t st,
                         char *err, size_t errlen)
{
    if (n <= 0 || V <= 0 || V > (1 << 22)) {
        snprintf(err, errlen, "cuda: sampling: %d rows of %d logits", n, V);
        return -1;
    }
    /* validate and size */
    size_t n_ints = 0;
    int any_pen = 0;
    s->any_lp = 0;
    for (int k = 0; k < n; k++) {
        if (row_check(&rows[k], k, V, err, errlen))
            return -1;
        const sampler_params *p = rows[k].p;
        const sampler_history *h = rows[k].h;
        const int use_rep = p->repetition_penalty != 1.0f;
        const int use_out = p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
        if (p->suppress_eos)
            n_ints += (size_t)p->n_eos;
        n_ints += (size_t)p->n_logit_bias;
        if (h && (use_rep || use_out)) {
            n_ints += (size_t)h->n_generated + (use_rep ? (size_t)h->n_prompt : 0);
            any_pen = 1;
        }
        if (p->logprobs || p->top_logprobs > 0)
            s->any_lp = 1;
    }
    const size_t rows_bytes = (size_t)n * sizeof(sample_row);
    const size_t ints_at = rows_bytes;
    const size_t fv_at = ints_at + n_ints * sizeof(int32_t);
    const size_t pack = fv_at + n_ints * sizeof(float);
    if (pack > s->cap_pack) {
        size_t c = s->cap_pack ? s->cap_pack : 65536;
        while (c < pack)
            c *= 2;
        if (s->h_pack)
            cudaFreeHost(s->h_pack);
        if (s->d_pack) {
            cudaFree(s->d_pack);
            s->bytes -= s->cap_pack;
        }
        s->h_pack = s->d_pack = NULL;
        s->cap_pack = 0;
        cudaError_t e = cudaMallocHost((void **)&s->h_pack, c);
        if (e != cudaSuccess)
            return smp_fail(err, errlen, "pinned inputs", e);
        e = cudaMalloc((void **)&s->d_pack, c);
        if (e != cudaSuccess)
            return smp_fail(err, errlen, "inputs", e);
        s->cap_pack = c;
        s->bytes += c;
    }
    size_t cap_saved = s->cap_list * sizeof(float);
    if (grow_dev((void **)&s->d_saved, &cap_saved, (n_ints ? n_ints : 1) * sizeof(float),
                 &s->bytes, "saved logits", err, errlen))
        return -1;
    s->cap_list = cap_saved / sizeof(float);
    if (n > s->cap_rows) {
        int c = s->cap_rows ? s->cap_rows : 8;
        while (c < n)
            c *= 2;
        if (s->d_tok) {
            cudaFree(s->d_tok);
            s->bytes -= (size_t)s->cap_rows * (sizeof(int32_t) + sizeof(llm_lp_out));
        }
        if (s->h_tok)
            cudaFreeHost(s->h_tok);
        s->d_tok = s->h_tok = NULL;
        s->d_lp = s->h_lp = NULL;
        s->cap_rows = 0;
        /* one allocation: tokens, then the logprob records */
        const size_t bytes = (size_t)c * (sizeof(int32_t) + sizeof(llm_lp_out));
        cudaError_t e = cudaMalloc((void **)&s->d_tok, bytes);
        if (e != cudaSuccess)
            return smp_fail(err, errlen, "results", e);
        e = cudaMallocHost((void **)&s->h_tok, bytes);
        if (e != cudaSuccess) {
            cudaFree(s->d_tok);
            s->d_tok = NULL;
            return smp_fail(err, errlen, "pinned results", e);
        }
        s->d_lp = (llm_lp_out *)(s->d_tok + c);
        s->h_lp = (llm_lp_out *)(s->h_tok + c);
        s->cap_rows = c;
        s->bytes += bytes;
    }
    if (any_pen && n > s->cap_count_rows) {
        int c = s->cap_count_rows ? s->cap_count_rows : 8;
        while (c < n)
            c *= 2;
        if (s->d_counts) {
            cudaFree(s->d_counts);
            s->bytes -= (size_t)s->cap_count_rows * s->V * sizeof(int32_t);
            s->d_counts = NULL;
            s->cap_count_rows = 0;
        }
        const size_t bytes = (size_t)c * V * sizeof(int32_t);
        cudaError_t e = cudaMalloc((void **)&s->d_counts, bytes);
        if (e != cudaSuccess)
            return smp_fail(err, errlen, "penalty counts", e);
        /* the kernel keeps them zero from here on */
        e = cudaMemsetAsync(s->d_counts, 0, bytes, st);
        if (e != cudaSuccess)
            return smp_fail(err, errlen, "penalty counts", e);
        s->cap_count_rows = c;
        s->bytes += bytes;
    }
    s->V = V;

    /* pack */
    sample_row *pr = (sample_row *)s->h_pack;
    int32_t *pi = (int32_t *)(s->h_pack + ints_at);
    float *pf = (float *)(s->h_pack + fv_at);
    size_t off = 0;
    for (int k = 0; k < n; k++) {
        const sampler_params *p = rows[k].p;
        const sampler_history *h = rows[k].h;
        sample_row *d = &pr[k];
        const int use_rep = p->repetition_penalty != 1.0f;
        const int use_out = p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
        memset(d, 0, sizeof(*d));
        d->uniform = rows[k].uniform;
        d->temperature = p->temperature;
        d->top_p = p->top_p;
        d->min_p = p->min_p;
        d->presence = p->presence_penalty;
        d->frequency = p->frequency_penalty;
        d->repetition = p->repetition_penalty;
        d->top_k = p->top_k;
        d->want_lp = p->logprobs || p->top_logprobs > 0;
        d->n_top = p->top_logprobs;
        d->list_off = (int32_t)off;
        if (p->suppress_eos)
            for (int i = 0; i < p->n_eos; i++)
                if (p->eos_ids[i] >= 0 && p->eos_ids[i] < V)   /* others ignored */
                    pi[off + d->n_eos++] = p->eos_ids[i];
        off += (size_t)d->n_eos;
        for (int i = 0; i < p->n_logit_bias; i++) {
            pi[off + i] = p->logit_bias[i].token;
            pf[off + i] = p->logit_bias[i].bias;
        }
        d->n_bias = p->n_logit_bias;
        off += (size_t)d->n_bias;
        if (h && (use_rep || use_out)) {
            d->penalties = 1;
            if (use_rep) {
                memcpy(pi + off, h->prompt, (size_t)h->n_prompt * sizeof(int32_t));
                d->n_prompt = h->n_prompt;
                off += (size_t)h->n_prompt;
            }
            memcpy(pi + off, h->generated, (size_t)h->n_generated * sizeof(int32_t));
            d->n_gen = h->n_generated;
            off += (size_t)h->n_generated;
        }
    }

    cudaError_t e = cudaMemcpyAsync(s->d_pack, s->h_pack, pack, cudaMemcpyHostToDevice, st);
    if (e != cudaSuccess)
        return smp_fail(err, errlen, "upload", e);
    sample_kernel<<<n, SAMPLE_THREADS, 0, st>>>(
        d_logits, V, (const sample_row *)s->d_pack,
        (const int32_t *)(s->d_pack + ints_at), (const float *)(s->d_pack + fv_at),
        s->d_saved, s->d_counts, s->d_tok, s->d_lp);
    e = llm_launch_status();
    if (e != cudaSuccess)
        return smp_fail(err, errlen, "launch", e);
    /* ids always; the logprob records only when a row asked */
    e = cudaMemcpyAsync(s->h_tok, s->d_tok, (size_t)n * sizeof(int32_t),
                        cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess && s->any_lp)
        e = cudaMemcpyAsync(s->h_lp, s->d_lp, (size_t)n * sizeof(llm_lp_out),
                            cudaMemcpyDeviceToHost, st);
    if (e != cudaSuccess)
        return smp_fail(err, errlen, "download", e);
    s->n = n;
    return 0;
}

void llm_sampling_collect(const llm_sampling *s, const llm_sample_row *rows,
                          sampler_result *out)
{
    for (int k = 0; k < s->n; k++) {
        const sampler_params *p = rows[k].p;
        sampler_result *o = &out[k];
        o->token = s->h_tok[k];
        o->logprob = 0.0f;
        o->n_top = 0;
        if (p->logprobs || p->top_logprobs > 0) {
            const llm_lp_out *l = &s->h_lp[k];
            o->logprob = l->logprob;
            o->n_top = l->n_top;
            for (int i = 0; i < l->n_top; i++) {
                o->top[i].token = l->top_ids[i];
                o->top[i].logprob = l->top_lp[i];
            }
        }
    }
}

void llm_sampling_free(llm_sampling *s)
{
    if (s->h_pack)
        cudaFreeHost(s->h_pack);
    if (s->h_tok)
        cudaFreeHost(s->h_tok);
    void *ps[] = { s->d_pack, s->d_saved, s->d_tok, s->d_counts };
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
        if (ps[i])
            cudaFree(ps[i]);
    memset(s, 0, sizeof(*s));
}

/* ---- tools: the kernel over caller-supplied logits (cuda_tools.cuh) ------- */

#include "cuda_tools.cuh"

struct cuda_sampler {
    int          device, V, max_rows;
    cudaStream_t st;
    float       *d_logits;
    llm_sampling smp;
};

extern "C" cuda_sampler *cuda_sampler_create(int device, int vocab, int max_rows,
                                             char *err, size_t errlen)
{
    cuda_sampler *s = (cuda_sampler *)calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "cuda: sampler: out of host memory");
        return NULL;
    }
    s->device = device;
    s->V = vocab;
    s->max_rows = max_rows;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&s->st, cudaStreamNonBlocking);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&s->d_logits, (size_t)max_rows * vocab * sizeof(float));
    if (e != cudaSuccess) {
        smp_fail(err, errlen, "create", e);
        cuda_sampler_free(s);
        return NULL;
    }
    return s;
}

extern "C" int cuda_sampler_set_logits(cuda_sampler *s, const float *logits, int n,
                                       char *err, size_t errlen)
{
    if (n < 1 || n > s->max_rows) {
        snprintf(err, errlen, "cuda: sampler: %d rows (at most %d)", n, s->max_rows);
        return -1;
    }
    cudaError_t e = cudaMemcpy(s->d_logits, logits, (size_t)n * s->V * sizeof(float),
                               cudaMemcpyHostToDevice);
    return e == cudaSuccess ? 0 : smp_fail(err, errlen, "upload logits", e);
}

extern "C" int cuda_sampler_get_logits(cuda_sampler *s, float *logits, int n,
                                       char *err, size_t errlen)
{
    if (n < 1 || n > s->max_rows) {
        snprintf(err, errlen, "cuda: sampler: %d rows (at most %d)", n, s->max_rows);
        return -1;
    }
    cudaError_t e = cudaStreamSynchronize(s->st);
    if (e == cudaSuccess)
        e = cudaMemcpy(logits, s->d_logits, (size_t)n * s->V * sizeof(float),
                       cudaMemcpyDeviceToHost);
    return e == cudaSuccess ? 0 : smp_fail(err, errlen, "download logits", e);
}

extern "C" int cuda_sampler_sample(cuda_sampler *s, const llm_sample_row *rows, int n,
                                   sampler_result *out, char *err, size_t errlen)
{
    if (n < 1 || n > s->max_rows) {
        snprintf(err, errlen, "cuda: sampler: %d rows (at most %d)", n, s->max_rows);
        return -1;
    }
    if (llm_sampling_enqueue(&s->smp, s->d_logits, s->V, rows, n, s->st, err, errlen))
        return -1;
    cudaError_t e = cudaStreamSynchronize(s->st);
    if (e != cudaSuccess)
        return smp_fail(err, errlen, "run", e);
    llm_sampling_collect(&s->smp, rows, out);
    return 0;
}

extern "C" double cuda_sampler_time(cuda_sampler *s, const llm_sample_row *rows, int n,
                                    int reps, char *err, size_t errlen)
{
    cudaEvent_t a = NULL, b = NULL;
    float ms = -1.0f;
    if (cudaEventCreate(&a) != cudaSuccess || cudaEventCreate(&b) != cudaSuccess) {
        snprintf(err, errlen, "cuda: sampler: event create failed");
        if (a)
            cudaEventDestroy(a);
        cudaGetLastError();
        return -1.0;
    }
    int rc = llm_sampling_enqueue(&s->smp, s->d_logits, s->V, rows, n, s->st, err, errlen);
    cudaEventRecord(a, s->st);
    for (int i = 0; rc == 0 && i < reps; i++)
        rc = llm_sampling_enqueue(&s->smp, s->d_logits, s->V, rows, n, s->st, err, errlen);
    cudaEventRecord(b, s->st);
    cudaError_t e = cudaEventSynchronize(b);
    if (rc == 0 && e == cudaSuccess && cudaEventElapsedTime(&ms, a, b) == cudaSuccess)
        ms /= reps > 0 ? reps : 1;
    else if (rc == 0) {
        smp_fail(err, errlen, "timing", e);
        ms = -1.0f;
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return rc == 0 ? ms : -1.0;
}

extern "C" void cuda_sampler_free(cuda_sampler *s)
{
    if (!s)
        return;
    cudaSetDevice(s->device);
    if (s->st)
        cudaStreamSynchronize(s->st);
    llm_sampling_free(&s->smp);
    if (s->d_logits)
        cudaFree(s->d_logits);
    if (s->st)
        cudaStreamDestroy(s->st);
    cudaGetLastError();
    free(s);
}
