/*
 * Attention over the paged KV cache (bf16, [block][kv_head][slot][dim]).
 *
 * Decode (one query token per entry): GQA-aware, one block per
 * (kv head, query token, context split) so a single read of each K/V row
 * serves all query heads of the group.  Lanes are grouped so that each
 * group reads one 16-byte vector per lane per token (head_dim 128: 16
 * lanes per token, two tokens per warp step); every group keeps its own
 * online-softmax state, merged by shuffles, then across warps in shared
 * memory, then (split-K) across blocks by attn_combine_kernel.
 *
 * Prefill: flash-attention-2 style with mma.sync m16n8k16 bf16 tensor-core
 * instructions.  A block takes 64 query tokens of one sequence and one
 * query head (4 warps x 16 rows), walks the causal KV range in tiles of 64
 * tokens staged in shared memory, keeps S, P and O in registers (the
 * accumulator layout of m16n8 is what lets P feed the second product
 * without a trip through memory).
 */
#include "cuda_kernels.cuh"

#define DEC_WARPS 4
#define LOG2E 1.4426950408889634f

template <int D, int MG>
__global__ void __launch_bounds__(DEC_WARPS * 32)
attn_decode_kernel(llm_attn_args a, const int32_t *__restrict__ tok_list,
                   int split_tokens, int n_splits, float *__restrict__ part_o,
                   float *__restrict__ part_ml)
{
    constexpr int LPT = D / 8;          /* lanes per KV token */
    constexpr int TPW = 32 / LPT;       /* KV tokens per warp step */
    __shared__ float sm_m[DEC_WARPS][MG], sm_l[DEC_WARPS][MG];
    __shared__ float sm_acc[DEC_WARPS][MG][D];

    const int kvh = blockIdx.x, entry = blockIdx.y, z = blockIdx.z;
    const int t = tok_list[entry];
    const int seq = a.tok_seq[t];
    const int ctx = a.positions[t] + 1;
    const int G = a.n_heads / a.n_kv;
    const int begin = z * split_tokens;
    const int end = min(ctx, begin + split_tokens);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gi = lane / LPT, li = lane % LPT;
    const float qscale = a.scale * LOG2E;

    float q[MG][8];
#pragma unroll
    for (int g = 0; g < MG; g++) {
        if (g < G) {
            const uint4 u = *reinterpret_cast<const uint4 *>(
                a.q + ((size_t)t * a.n_heads + kvh * G + g) * D + li * 8);
            llm_bf16x8_to_float(u, q[g]);
#pragma unroll
            for (int i = 0; i < 8; i++)
                q[g][i] *= qscale;
        } else {
#pragma unroll
            for (int i = 0; i < 8; i++)
                q[g][i] = 0.0f;
        }
    }
    float m[MG], l[MG], acc[MG][8];
#pragma unroll
    for (int g = 0; g < MG; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++)
            acc[g][i] = 0.0f;
    }

    const int32_t *bt = a.block_tables + (size_t)seq * a.bt_stride;
    /* The loop bound is the same for the whole warp (shuffles inside). */
    for (int base = begin + warp * TPW; base < end; base += DEC_WARPS * TPW) {
        const int j = base + gi;
        const bool valid = j < end;
        uint4 ku = make_uint4(0, 0, 0, 0), vu = make_uint4(0, 0, 0, 0);
        if (valid) {
            const int page = bt[j / a.block_size];
            const size_t off = (((size_t)page * a.n_kv + kvh) * a.block_size +
                                j % a.block_size) * D + li * 8;
            ku = *reinterpret_cast<const uint4 *>(a.k_cache + off);
            vu = *reinterpret_cast<const uint4 *>(a.v_cache + off);
        }
        float kf[8], vf[8];
        llm_bf16x8_to_float(ku, kf);
        llm_bf16x8_to_float(vu, vf);
#pragma unroll
        for (int g = 0; g < MG; g++) {
            if (g >= G)
                break;
            float d = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++)
                d += q[g][i] * kf[i];
#pragma unroll
            for (int o = LPT / 2; o > 0; o >>= 1)
                d += __shfl_xor_sync(0xffffffffu, d, o);
            if (valid) {
                const float mn = fmaxf(m[g], d);
                const float c = exp2f(m[g] - mn);
                const float p = exp2f(d - mn);
                l[g] = l[g] * c + p;
#pragma unroll
                for (int i = 0; i < 8; i++)
                    acc[g][i] = acc[g][i] * c + p * vf[i];
                m[g] = mn;
            }
        }
    }

    /* Merge the lane groups of the warp (lanes with equal li hold the
     * same dims). */
#pragma unroll
    for (int o = LPT; o < 32; o <<= 1) {
#pragma unroll
        for (int g = 0; g < MG; g++) {
            const float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
            const float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
            const float M = fmaxf(m[g], mo);
            const float ca = llm_exp2_safe(m[g], M), cb = llm_exp2_safe(mo, M);
            l[g] = l[g] * ca + lo * cb;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const float ao = __shfl_xor_sync(0xffffffffu, acc[g][i], o);
                acc[g][i] = acc[g][i] * ca + ao * cb;
            }
            m[g] = M;
        }
    }
    if (gi == 0) {
#pragma unroll
        for (int g = 0; g < MG; g++) {
            if (lane == 0) {
                sm_m[warp][g] = m[g];
                sm_l[warp][g] = l[g];
            }
#pragma unroll
            for (int i = 0; i < 8; i++)
                sm_acc[warp][g][li * 8 + i] = acc[g][i];
        }
    }
    __syncthreads();

    for (int idx = threadIdx.x; idx < G * D; idx += blockDim.x) {
        const int g = idx / D, d = idx % D;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++)
            M = fmaxf(M, sm_m[w][g]);
        float L = 0.0f, O = 0.0f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++) {
            const float c = llm_exp2_safe(sm_m[w][g], M);
            L += sm_l[w][g] * c;
            O += sm_acc[w][g][d] * c;
        }
        const int head = kvh * G + g;
        if (n_splits == 1) {
            a.out[((size_t)t * a.n_heads + head) * D + d] =
                __float2bfloat16(L > 0.0f ? O / L : 0.0f);
        } else {
            const size_t p = ((size_t)entry * a.n_heads + head) * n_splits + z;
            part_o[p * D + d] = O;
            if (d == 0) {
                part_ml[2 * p] = M;
                part_ml[2 * p + 1] = L;
            }
        }
    }
}

__global__ void attn_combine_kernel(llm_attn_args a,
                                    const int32_t *__restrict__ tok_list,
                                    int n_splits, int D,
                                    const float *__restrict__ part_o,
                                    const float *__restrict__ part_ml)
{
    const int entry = blockIdx.x, head = blockIdx.y;
    const int t = tok_list[entry];
    const size_t base = ((size_t)entry * a.n_heads + head) * n_splits;
    float M = -INFINITY;
    for (int z = 0; z < n_splits; z++)
        M = fmaxf(M, part_ml[2 * (base + z)]);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float L = 0.0f, O = 0.0f;
        for (int z = 0; z < n_splits; z++) {
            const float c = llm_exp2_safe(part_ml[2 * (base + z)], M);
            L += part_ml[2 * (base + z) + 1] * c;
            O += part_o[(base + z) * D + d] * c;
        }
        a.out[((size_t)t * a.n_heads + head) * D + d] =
            __float2bfloat16(L > 0.0f ? O / L : 0.0f);
    }
}

int llm_attn_supported(int head_dim, int group)
{
    const bool dim_ok = head_dim == 16 || head_dim == 32 || head_dim == 64 ||
                        head_dim == 128 || head_dim == 256;
    return dim_ok && group >= 1 && group <= 8;
}

template <int D>
static cudaError_t launch_decode_d(const llm_attn_args *a,
                                   const int32_t *tok_list, int n_list,
                                   int split_tokens, int n_splits,
                                   float *part_o, float *part_ml,
                                   cudaStream_t st)
{
    const int G = a->n_heads / a->n_kv;
    dim3 grid(a->n_kv, n_list, n_splits);
    if (G <= 4)
        attn_decode_kernel<D, 4><<<grid, DEC_WARPS * 32, 0, st>>>(
            *a, tok_list, split_tokens, n_splits, part_o, part_ml);
    else
        attn_decode_kernel<D, 8><<<grid, DEC_WARPS * 32, 0, st>>>(
            *a, tok_list, split_tokens, n_splits, part_o, part_ml);
    cudaError_t e = llm_launch_status();
    if (e != cudaSuccess || n_splits == 1)
        return e;
    attn_combine_kernel<<<dim3(n_list, a->n_heads), D, 0, st>>>(
        *a, tok_list, n_splits, D, part_o, part_ml);
    return llm_launch_status();
}

cudaError_t llm_attn_decode(const llm_attn_args *a, const int32_t *tok_list,
                            int n_list, int split_tokens, int n_splits,
                            float *part_o, float *part_ml, cudaStream_t st)
{
    if (n_list <= 0)
        return cudaSuccess;
    if (!llm_attn_supported(a->head_dim, a->n_heads / a->n_kv) ||
        n_splits < 1 || split_tokens < 1 || n_splits > 65535 || n_list > 65535)
        return cudaErrorInvalidValue;
    switch (a->head_dim) {
    case 16:  return launch_decode_d<16>(a, tok_list, n_list, split_tokens, n_splits, part_o, part_ml, st);
    case 32:  return launch_decode_d<32>(a, tok_list, n_list, split_tokens, n_splits, part_o, part_ml, st);
    case 64:  return launch_decode_d<64>(a, tok_list, n_list, split_tokens, n_splits, part_o, part_ml, st);
    case 128: return launch_decode_d<128>(a, tok_list, n_list, split_tokens, n_splits, part_o, part_ml, st);
    default:  return launch_decode_d<256>(a, tok_list, n_list, split_tokens, n_splits, part_o, part_ml, st);
    }
}

/* ---- prefill: tensor cores ------------------------------------------- */

#define PF_BQ LLM_PREFILL_TILE  /* query tokens per block: 4 warps x 16 */
#define PF_BK 64                /* KV tokens per shared-memory tile */
#define PF_PAD 8                /* bf16 of row padding: conflict-free reads */

__device__ __forceinline__ void mma_bf16_16816(float c[4], const uint32_t a[4],
                                               uint32_t b0, uint32_t b1)
{
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi)
{
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}

__device__ __forceinline__ uint32_t pack_bf16_pair(bf16 lo, bf16 hi)
{
    __nv_bfloat162 h;
    h.x = lo;
    h.y = hi;
    return *reinterpret_cast<uint32_t *>(&h);
}

/*
 * Fragment layouts of mma.m16n8k16 (PTX ISA), lane = 4 * grp + tig:
 *   A 16x16: reg0 (row grp,   cols 2tig..+1), reg1 (row grp+8, same cols),
 *            reg2 (row grp,   cols 8+2tig..), reg3 (row grp+8, cols 8+..)
 *   B 16x8:  reg0 (k 2tig..+1, col grp), reg1 (k 8+2tig..+1, col grp)
 *   C 16x8:  c0,c1 (row grp, cols 2tig..+1), c2,c3 (row grp+8, same)
 */
template <int D>
__global__ void __launch_bounds__(128)
attn_prefill_kernel(llm_attn_args a, const int32_t *__restrict__ work)
{
    constexpr int LDS = D + PF_PAD;
    constexpr int KS = D / 16;          /* k-steps of Q K^T */
    constexpr int NT = PF_BK / 8;       /* n-tiles of S */
    constexpr int DN = D / 8;           /* n-tiles of O */
    __shared__ __align__(16) bf16 Ks[PF_BK * LDS];
    __shared__ __align__(16) bf16 Vs[PF_BK * LDS];

    const int first = work[2 * blockIdx.x], count = work[2 * blockIdx.x + 1];
    const int head = blockIdx.y;
    const int G = a.n_heads / a.n_kv, kvh = head / G;
    const int seq = a.tok_seq[first];
    const int pos0 = a.positions[first];
    const int kv_len = pos0 + count;    /* causal end of the last query */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int grp = lane >> 2, tig = lane & 3;
    const int r0 = warp * 16 + grp, r1 = r0 + 8;
    const int qp0 = pos0 + r0, qp1 = pos0 + r1;
    const bool warp_active = warp * 16 < count;
    const float sl2 = a.scale * LOG2E;

    uint32_t qa[KS][4];
    {
        const bf16 *q0 = a.q + ((size_t)(first + r0) * a.n_heads + head) * D;
        const bf16 *q1 = a.q + ((size_t)(first + r1) * a.n_heads + head) * D;
        const bool v0 = r0 < count, v1 = r1 < count;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            const int c = ks * 16 + tig * 2;
            qa[ks][0] = v0 ? *reinterpret_cast<const uint32_t *>(q0 + c) : 0u;
            qa[ks][1] = v1 ? *reinterpret_cast<const uint32_t *>(q1 + c) : 0u;
            qa[ks][2] = v0 ? *reinterpret_cast<const uint32_t *>(q0 + c + 8) : 0u;
            qa[ks][3] = v1 ? *reinterpret_cast<const uint32_t *>(q1 + c + 8) : 0u;
        }
    }
    float o[DN][4];
#pragma unroll
    for (int dn = 0; dn < DN; dn++)
        o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    /* Causal: this warp's rows see nothing past its last valid query. */
    const int warp_last = pos0 + min(warp * 16 + 15, count - 1);

    const int32_t *bt = a.block_tables + (size_t)seq * a.bt_stride;
    for (int kb = 0; kb < kv_len; kb += PF_BK) {
        __syncthreads();                 /* the previous tile is consumed */
        for (int v = threadIdx.x; v < PF_BK * D / 8; v += blockDim.x) {
            const int r = v / (D / 8), c = (v % (D / 8)) * 8;
            const int j = kb + r;
            uint4 ku = make_uint4(0, 0, 0, 0), vu = make_uint4(0, 0, 0, 0);
            if (j < kv_len) {
                const int page = bt[j / a.block_size];
                const size_t off = (((size_t)page * a.n_kv + kvh) * a.block_size +
                                    j % a.block_size) * D + c;
                ku = *reinterpret_cast<const uint4 *>(a.k_cache + off);
                vu = *reinterpret_cast<const uint4 *>(a.v_cache + off);
            }
            *reinterpret_cast<uint4 *>(Ks + r * LDS + c) = ku;
            *reinterpret_cast<uint4 *>(Vs + r * LDS + c) = vu;
        }
        __syncthreads();
        if (!warp_active || kb > warp_last)
            continue;

        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const bf16 *kp = Ks + (nt * 8 + grp) * LDS + ks * 16 + tig * 2;
                const uint32_t b0 = *reinterpret_cast<const uint32_t *>(kp);
                const uint32_t b1 = *reinterpret_cast<const uint32_t *>(kp + 8);
                mma_bf16_16816(s[nt], qa[ks], b0, b1);
            }
        }
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int j = kb + nt * 8 + tig * 2 + (e & 1);
                const int qp = e < 2 ? qp0 : qp1;
                const float v = j <= qp ? s[nt][e] * sl2 : -INFINITY;
                s[nt][e] = v;
                if (e < 2)
                    mx0 = fmaxf(mx0, v);
                else
                    mx1 = fmaxf(mx1, v);
            }
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        const float c0 = llm_exp2_safe(m0, mn0), c1 = llm_exp2_safe(m1, mn1);
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            s[nt][0] = llm_exp2_safe(s[nt][0], mn0);
            s[nt][1] = llm_exp2_safe(s[nt][1], mn0);
            s[nt][2] = llm_exp2_safe(s[nt][2], mn1);
            s[nt][3] = llm_exp2_safe(s[nt][3], mn1);
            sum0 += s[nt][0] + s[nt][1];
            sum1 += s[nt][2] + s[nt][3];
        }
        l0 = l0 * c0 + sum0;
        l1 = l1 * c1 + sum1;
        m0 = mn0;
        m1 = mn1;
#pragma unroll
        for (int dn = 0; dn < DN; dn++) {
            o[dn][0] *= c0;
            o[dn][1] *= c0;
            o[dn][2] *= c1;
            o[dn][3] *= c1;
        }
#pragma unroll
        for (int kk = 0; kk < PF_BK / 16; kk++) {
            uint32_t pa[4];
            pa[0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            const bf16 *v0 = Vs + (kk * 16 + tig * 2) * LDS + grp;
#pragma unroll
            for (int dn = 0; dn < DN; dn++) {
                const bf16 *vp = v0 + dn * 8;
                const uint32_t b0 = pack_bf16_pair(vp[0], vp[LDS]);
                const uint32_t b1 = pack_bf16_pair(vp[8 * LDS], vp[9 * LDS]);
                mma_bf16_16816(o[dn], pa, b0, b1);
            }
        }
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f;
    const float inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    bf16 *out0 = a.out + ((size_t)(first + r0) * a.n_heads + head) * D + tig * 2;
    bf16 *out1 = a.out + ((size_t)(first + r1) * a.n_heads + head) * D + tig * 2;
#pragma unroll
    for (int dn = 0; dn < DN; dn++) {
        if (r0 < count)
            *reinterpret_cast<__nv_bfloat162 *>(out0 + dn * 8) =
                __floats2bfloat162_rn(o[dn][0] * inv0, o[dn][1] * inv0);
        if (r1 < count)
            *reinterpret_cast<__nv_bfloat162 *>(out1 + dn * 8) =
                __floats2bfloat162_rn(o[dn][2] * inv1, o[dn][3] * inv1);
    }
}

/* ---- prefill v2: ldmatrix fragments, cp.async double buffering ------- */

/*
 * Same tiling and softmax as attn_prefill_kernel; what changes is how the
 * data reaches the tensor cores.  K/V tiles stream into two shared-memory
 * stages with cp.async (the copy of tile i+1 overlaps the math on tile i;
 * rows past the context are zero-filled by the copy itself), and the B
 * fragments come from ldmatrix: .x4 on K rows gives the fragments of two
 * n-tiles of S at once; .x4.trans on V rows gives the k-major fragments of
 * P V without scalar shared-memory loads.
 */
__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(dst), "l"(src), "r"(src_bytes));
}

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t &r0, uint32_t &r1,
                                        uint32_t &r2, uint32_t &r3)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t addr, uint32_t &r0, uint32_t &r1,
                                              uint32_t &r2, uint32_t &r3)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

template <int D>
__global__ void __launch_bounds__(128)
attn_prefill2_kernel(llm_attn_args a, const int32_t *__restrict__ work)
{
    constexpr int LDS = D + PF_PAD;
    constexpr int KS = D / 16;
    constexpr int NT = PF_BK / 8;
    constexpr int DN = D / 8;
    constexpr int TILE = PF_BK * LDS;          /* elements of one K or V tile */
    extern __shared__ __align__(16) unsigned char pf2_smem[];
    bf16 *sm = reinterpret_cast<bf16 *>(pf2_smem);  /* [stage][K|V][TILE] */

    const int first = work[2 * blockIdx.x], count = work[2 * blockIdx.x + 1];
    const int head = blockIdx.y;
    const int G = a.n_heads / a.n_kv, kvh = head / G;
    const int seq = a.tok_seq[first];
    const int pos0 = a.positions[first];
    const int kv_len = pos0 + count;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int grp = lane >> 2, tig = lane & 3;
    const int r0 = warp * 16 + grp, r1 = r0 + 8;
    const int qp0 = pos0 + r0, qp1 = pos0 + r1;
    const bool warp_active = warp * 16 < count;
    const int warp_last = pos0 + min(warp * 16 + 15, count - 1);
    const float sl2 = a.scale * LOG2E;
    const int32_t *bt = a.block_tables + (size_t)seq * a.bt_stride;
    const int n_tiles = (kv_len + PF_BK - 1) / PF_BK;

    /* Issues the copies of tile `it` into stage `st` (whole block). */
    auto load_tile = [&](int it, int st) {
        bf16 *ks = sm + (size_t)st * 2 * TILE, *vs = ks + TILE;
        for (int v = threadIdx.x; v < PF_BK * D / 8; v += blockDim.x) {
            const int r = v / (D / 8), c = (v % (D / 8)) * 8;
            const int j = it * PF_BK + r;
            const bf16 *kg = a.k_cache, *vg = a.v_cache;
            int bytes = 0;
            if (j < kv_len) {
                const size_t off = (((size_t)bt[j / a.block_size] * a.n_kv + kvh) *
                                    a.block_size + j % a.block_size) * D + c;
                kg += off;
                vg += off;
                bytes = 16;
            }
            cp_async16(smem_u32(ks + r * LDS + c), kg, bytes);
            cp_async16(smem_u32(vs + r * LDS + c), vg, bytes);
        }
        asm volatile("cp.async.commit_group;\n" ::);
    };

    uint32_t qa[KS][4];
    {
        const bf16 *q0 = a.q + ((size_t)(first + r0) * a.n_heads + head) * D;
        const bf16 *q1 = a.q + ((size_t)(first + r1) * a.n_heads + head) * D;
        const bool v0 = r0 < count, v1 = r1 < count;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            const int c = ks * 16 + tig * 2;
            qa[ks][0] = v0 ? *reinterpret_cast<const uint32_t *>(q0 + c) : 0u;
            qa[ks][1] = v1 ? *reinterpret_cast<const uint32_t *>(q1 + c) : 0u;
            qa[ks][2] = v0 ? *reinterpret_cast<const uint32_t *>(q0 + c + 8) : 0u;
            qa[ks][3] = v1 ? *reinterpret_cast<const uint32_t *>(q1 + c + 8) : 0u;
        }
    }
    float o[DN][4];
#pragma unroll
    for (int dn = 0; dn < DN; dn++)
        o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    /* ldmatrix row addresses: lane -> (matrix lane/8, row lane%8). */
    const int lm = lane >> 3, lr = lane & 7;

    load_tile(0, 0);
    for (int it = 0; it < n_tiles; it++) {
        if (it + 1 < n_tiles) {
            load_tile(it + 1, (it + 1) & 1);
            asm volatile("cp.async.wait_group 1;\n" ::);
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::);
        }
        __syncthreads();
        const int kb = it * PF_BK;
        const bf16 *ks_t = sm + (size_t)(it & 1) * 2 * TILE, *vs_t = ks_t + TILE;
        if (warp_active && kb <= warp_last) {
            float s[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
                s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
#pragma unroll
                for (int nt = 0; nt < NT; nt += 2) {
                    /* matrices: (nt, dims lo), (nt, dims hi), (nt+1, lo), (nt+1, hi) */
                    const int tok = (nt + (lm >> 1)) * 8 + lr;
                    const int dim = ks * 16 + (lm & 1) * 8;
                    uint32_t b00, b01, b10, b11;
                    ldsm_x4(smem_u32(ks_t + tok * LDS + dim), b00, b01, b10, b11);
                    mma_bf16_16816(s[nt], qa[ks], b00, b01);
                    mma_bf16_16816(s[nt + 1], qa[ks], b10, b11);
                }
            }
            float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = kb + nt * 8 + tig * 2 + (e & 1);
                    const int qp = e < 2 ? qp0 : qp1;
                    const float v = j <= qp ? s[nt][e] * sl2 : -INFINITY;
                    s[nt][e] = v;
                    if (e < 2)
                        mx0 = fmaxf(mx0, v);
                    else
                        mx1 = fmaxf(mx1, v);
                }
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
            const float c0 = llm_exp2_safe(m0, mn0), c1 = llm_exp2_safe(m1, mn1);
            float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                s[nt][0] = llm_exp2_safe(s[nt][0], mn0);
                s[nt][1] = llm_exp2_safe(s[nt][1], mn0);
                s[nt][2] = llm_exp2_safe(s[nt][2], mn1);
                s[nt][3] = llm_exp2_safe(s[nt][3], mn1);
                sum0 += s[nt][0] + s[nt][1];
                sum1 += s[nt][2] + s[nt][3];
            }
            l0 = l0 * c0 + sum0;
            l1 = l1 * c1 + sum1;
            m0 = mn0;
            m1 = mn1;
#pragma unroll
            for (int dn = 0; dn < DN; dn++) {
                o[dn][0] *= c0;
                o[dn][1] *= c0;
                o[dn][2] *= c1;
                o[dn][3] *= c1;
            }
#pragma unroll
            for (int kk = 0; kk < PF_BK / 16; kk++) {
                uint32_t pa[4];
                pa[0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
                pa[1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
                pa[2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                pa[3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
                for (int dn = 0; dn < DN; dn += 2) {
                    /* matrices: (tokens lo, dn), (tokens hi, dn),
                     * (tokens lo, dn+1), (tokens hi, dn+1), transposed */
                    const int tok = kk * 16 + (lm & 1) * 8 + lr;
                    const int dim = (dn + (lm >> 1)) * 8;
                    uint32_t b00, b01, b10, b11;
                    ldsm_x4_trans(smem_u32(vs_t + tok * LDS + dim), b00, b01, b10, b11);
                    mma_bf16_16816(o[dn], pa, b00, b01);
                    mma_bf16_16816(o[dn + 1], pa, b10, b11);
                }
            }
        }
        __syncthreads();             /* stage it&1 is refilled next round */
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f;
    const float inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    bf16 *out0 = a.out + ((size_t)(first + r0) * a.n_heads + head) * D + tig * 2;
    bf16 *out1 = a.out + ((size_t)(first + r1) * a.n_heads + head) * D + tig * 2;
#pragma unroll
    for (int dn = 0; dn < DN; dn++) {
        if (r0 < count)
            *reinterpret_cast<__nv_bfloat162 *>(out0 + dn * 8) =
                __floats2bfloat162_rn(o[dn][0] * inv0, o[dn][1] * inv0);
        if (r1 < count)
            *reinterpret_cast<__nv_bfloat162 *>(out1 + dn * 8) =
                __floats2bfloat162_rn(o[dn][2] * inv1, o[dn][3] * inv1);
    }
}

static int prefill2_smem(int D)
{
    return 2 * 2 * PF_BK * (D + PF_PAD) * (int)sizeof(bf16);
}

/* Above 48 KB of shared memory a kernel must opt in; done once per device
 * before any launch (and before graph capture). */
cudaError_t llm_attn_init(void)
{
    cudaError_t e = cudaFuncSetAttribute(attn_prefill2_kernel<64>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         prefill2_smem(64));
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(attn_prefill2_kernel<128>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 prefill2_smem(128));
    return e;
}

template <int D>
static cudaError_t launch_prefill2(const llm_attn_args *a, const int32_t *work,
                                   dim3 grid, cudaStream_t st)
{
    attn_prefill2_kernel<D><<<grid, 128, prefill2_smem(D), st>>>(*a, work);
    return llm_launch_status();
}

cudaError_t llm_attn_prefill(const llm_attn_args *a, const int32_t *work,
                             int n_work, int variant, cudaStream_t st)
{
    if (n_work <= 0)
        return cudaSuccess;
    if (a->n_heads > 65535)
        return cudaErrorInvalidValue;
    dim3 grid(n_work, a->n_heads);
    if (variant == 2 && (a->head_dim == 64 || a->head_dim == 128)) {
        return a->head_dim == 64 ? launch_prefill2<64>(a, work, grid, st)
                                 : launch_prefill2<128>(a, work, grid, st);
    }
    switch (a->head_dim) {
    case 16:  attn_prefill_kernel<16><<<grid, 128, 0, st>>>(*a, work); break;
    case 32:  attn_prefill_kernel<32><<<grid, 128, 0, st>>>(*a, work); break;
    case 64:  attn_prefill_kernel<64><<<grid, 128, 0, st>>>(*a, work); break;
    case 128: attn_prefill_kernel<128><<<grid, 128, 0, st>>>(*a, work); break;
    default:  return cudaErrorInvalidValue;  /* 256: use the decode kernel */
    }
    return llm_launch_status();
}
