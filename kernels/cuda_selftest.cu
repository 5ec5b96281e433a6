/*
 * Attention self-test: the paged decode (split-K) and prefill (tensor core)
 * kernels against a plain float reference, on random data in a cache whose
 * blocks are shuffled, at any context length (the tiny model fixtures only
 * reach a few dozen positions).
 */
#include "cuda_kernels.cuh"
#include "cuda_tools.cuh"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One block per (query token, head): scores to global scratch, then the
 * softmax and the weighted sum of V, all in float. */
__global__ void attn_reference_kernel(llm_attn_args a, int ctx_len,
                                      float *__restrict__ scores,
                                      float *__restrict__ out)
{
    const int qi = blockIdx.x, head = blockIdx.y, D = a.head_dim;
    const int G = a.n_heads / a.n_kv, kvh = head / G;
    const int pos = a.positions[qi];
    const int seq = a.tok_seq[qi];
    const int32_t *bt = a.block_tables + (size_t)seq * a.bt_stride;
    float *s = scores + ((size_t)qi * a.n_heads + head) * ctx_len;
    const bf16 *q = a.q + ((size_t)qi * a.n_heads + head) * D;
    __shared__ float red[32];
    float mx = -INFINITY;
    for (int j = threadIdx.x; j <= pos; j += blockDim.x) {
        const size_t off = (((size_t)bt[j / a.block_size] * a.n_kv + kvh) *
                            a.block_size + j % a.block_size) * D;
        float d = 0.0f;
        for (int i = 0; i < D; i++)
            d += __bfloat162float(q[i]) * __bfloat162float(a.k_cache[off + i]);
        d *= a.scale;
        s[j] = d;
        mx = fmaxf(mx, d);
    }
    mx = llm_warp_max(mx);
    if ((threadIdx.x & 31) == 0)
        red[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++)
        mx = fmaxf(mx, red[w]);
    __syncthreads();
    float sum = 0.0f;
    for (int j = threadIdx.x; j <= pos; j += blockDim.x) {
        const float p = expf(s[j] - mx);
        s[j] = p;
        sum += p;
    }
    sum = llm_warp_sum(sum);
    if ((threadIdx.x & 31) == 0)
        red[threadIdx.x >> 5] = sum;
    __syncthreads();
    sum = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++)
        sum += red[w];
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float o = 0.0f;
        for (int j = 0; j <= pos; j++) {
            const size_t off = (((size_t)bt[j / a.block_size] * a.n_kv + kvh) *
                                a.block_size + j % a.block_size) * D;
            o += s[j] * __bfloat162float(a.v_cache[off + d]);
        }
        out[((size_t)qi * a.n_heads + head) * D + d] = o / sum;
    }
}

extern "C" int cuda_device_count(char *err, size_t errlen)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        snprintf(err, errlen, "%s", cudaGetErrorString(e));
        return 0;
    }
    if (n == 0)
        snprintf(err, errlen, "no CUDA device");
    return n;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rng_normal(uint64_t *s)
{
    const double u1 = ((rng_next(s) >> 11) + 1.0) / 9007199254740993.0;
    const double u2 = (rng_next(s) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static double rel_error(const bf16 *out, const float *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double o = (double)__bfloat162float(out[i]);
        if (!isfinite(o))
            return INFINITY;
        num += (o - ref[i]) * (o - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

typedef struct {
    void *p[12];
    int n;
} dev_list;

static cudaError_t dmalloc(dev_list *l, void **p, size_t bytes)
{
    cudaError_t e = cudaMalloc(p, bytes);
    if (e == cudaSuccess)
        l->p[l->n++] = *p;
    return e;
}

#define ST_TRY(what, call)                                                  \
    do {                                                                    \
        cudaError_t e_ = (call);                                            \
        if (e_ != cudaSuccess) {                                            \
            snprintf(err, errlen, "cuda self-test: %s: %s", (what),        \
                     cudaGetErrorString(e_));                               \
            goto out;                                                       \
        }                                                                   \
    } while (0)

extern "C" int cuda_attention_selftest(int device, const cuda_attn_test *t,
                                       double rel[3], char *err, size_t errlen)
{
    int rc = -1;
    dev_list dl;
    dl.n = 0;
    const int D = t->head_dim, bs = t->block_size, nq = t->n_heads, nkv = t->n_kv;
    const int n_q = t->q_len, ctx = t->ctx_len;
    const int n_blocks = (ctx + bs - 1) / bs;
    const size_t kv_elems = (size_t)n_blocks * nkv * bs * D;
    const size_t q_elems = (size_t)n_q * nq * D;
    const int n_splits = t->split_tokens > 0 ? (ctx + t->split_tokens - 1) / t->split_tokens : 1;
    const int split = t->split_tokens > 0 ? t->split_tokens : ctx;
    bf16 *h_kv = NULL, *h_q = NULL, *h_out = NULL;
    int32_t *h_ints = NULL;
    float *h_ref = NULL;
    uint64_t rs = t->seed;
    rel[0] = rel[1] = rel[2] = -1.0;
    if (n_q < 1 || n_q > ctx || !llm_attn_supported(D, nq / nkv) || nq % nkv ||
        (size_t)n_q * nq * n_splits > ((size_t)1 << 26)) {
        snprintf(err, errlen, "cuda self-test: unsupported shape");
        return -1;
    }

    h_kv = (bf16 *)malloc(2 * kv_elems * sizeof(bf16));
    h_q = (bf16 *)malloc(q_elems * sizeof(bf16));
    h_out = (bf16 *)malloc(q_elems * sizeof(bf16));
    h_ref = (float *)malloc(q_elems * sizeof(float));
    /* ints: positions, tok_seq, tok_list [n_q] each, block table, work */
    const size_t n_work = (size_t)(n_q + LLM_PREFILL_TILE - 1) / LLM_PREFILL_TILE;
    const size_t n_ints = 3 * (size_t)n_q + n_blocks + 2 * n_work;
    h_ints = (int32_t *)malloc(n_ints * sizeof(int32_t));
    if (!h_kv || !h_q || !h_out || !h_ref || !h_ints) {
        snprintf(err, errlen, "cuda self-test: out of host memory");
        goto out;
    }
    for (size_t i = 0; i < 2 * kv_elems; i++)
        h_kv[i] = __float2bfloat16(rng_normal(&rs));
    for (size_t i = 0; i < q_elems; i++)
        h_q[i] = __float2bfloat16(rng_normal(&rs) * 2.0f);
    {
        int32_t *pos = h_ints, *seq = pos + n_q, *list = seq + n_q,
                *table = list + n_q, *work = table + n_blocks;
        for (int i = 0; i < n_q; i++) {
            pos[i] = ctx - n_q + i;
            seq[i] = 0;
            list[i] = i;
        }
        for (int i = 0; i < n_blocks; i++)      /* shuffled pages */
            table[i] = i;
        for (int i = n_blocks - 1; i > 0; i--) {
            const int j = (int)(rng_next(&rs) % (uint64_t)(i + 1));
            const int32_t tmp = table[i];
            table[i] = table[j];
            table[j] = tmp;
        }
        for (size_t w = 0; w < n_work; w++) {
            work[2 * w] = (int32_t)(w * LLM_PREFILL_TILE);
            const int left = n_q - (int)(w * LLM_PREFILL_TILE);
            work[2 * w + 1] = left < LLM_PREFILL_TILE ? left : LLM_PREFILL_TILE;
        }
    }
    {
        bf16 *d_kv, *d_q, *d_out;
        int32_t *d_ints;
        float *d_ref, *d_scores, *d_po, *d_pml;
        ST_TRY("set device", cudaSetDevice(device));
        ST_TRY("attention init", llm_attn_init());
        ST_TRY("alloc", dmalloc(&dl, (void **)&d_kv, 2 * kv_elems * sizeof(bf16)));
        ST_TRY("alloc", dmalloc(&dl, (void **)&d_q, q_elems * sizeof(bf16)));
        ST_TRY("alloc", dmalloc(&dl, (void **)&d_out, q_elems * sizeof(bf16)));
        ST_TRY("alloc", dmalloc(&dl, (void **)&d_ref, q_elems * sizeof(float)));
        ST_TRY("alloc", dmalloc(&dl, (void **)&d_scores, (size_t)n_q * nq * ctx * sizeof(float)));
        ST_TRY("alloc", dmalloc(&dl, (void **)&d_po, (size_t)n_q * nq * n_splits * D * sizeof(float)));
        ST_TRY("alloc", dmalloc(&dl, (void **)&d_pml, (size_t)n_q * nq * n_splits * 2 * sizeof(float)));
        ST_TRY("alloc", dmalloc(&dl, (void **)&d_ints, n_ints * sizeof(int32_t)));
        ST_TRY("upload", cudaMemcpy(d_kv, h_kv, 2 * kv_elems * sizeof(bf16), cudaMemcpyHostToDevice));
        ST_TRY("upload", cudaMemcpy(d_q, h_q, q_elems * sizeof(bf16), cudaMemcpyHostToDevice));
        ST_TRY("upload", cudaMemcpy(d_ints, h_ints, n_ints * sizeof(int32_t), cudaMemcpyHostToDevice));

        llm_attn_args a;
        a.q = d_q;
        a.k_cache = d_kv;
        a.v_cache = d_kv + kv_elems;
        a.positions = d_ints;
        a.tok_seq = d_ints + n_q;
        a.block_tables = d_ints + 3 * n_q;
        a.bt_stride = n_blocks;
        a.block_size = bs;
        a.n_heads = nq;
        a.n_kv = nkv;
        a.head_dim = D;
        a.scale = 1.0f / sqrtf((float)D);
        a.out = d_out;
        attn_reference_kernel<<<dim3(n_q, nq), 256>>>(a, ctx, d_scores, d_ref);
        ST_TRY("reference kernel", cudaGetLastError());
        ST_TRY("reference", cudaMemcpy(h_ref, d_ref, q_elems * sizeof(float), cudaMemcpyDeviceToHost));

        /* Poison the output: every element must be written. */
        ST_TRY("poison", cudaMemset(d_out, 0xff, q_elems * sizeof(bf16)));
        ST_TRY("decode kernel", llm_attn_decode(&a, d_ints + 2 * n_q, n_q, split, n_splits,
                                                d_po, d_pml, 0));
        ST_TRY("decode", cudaMemcpy(h_out, d_out, q_elems * sizeof(bf16), cudaMemcpyDeviceToHost));
        rel[0] = rel_error(h_out, h_ref, q_elems);

        for (int variant = 1; variant <= 2 && D <= 128; variant++) {
            if (variant == 2 && D != 64 && D != 128)
                break;
            ST_TRY("poison", cudaMemset(d_out, 0xff, q_elems * sizeof(bf16)));
            ST_TRY("prefill kernel", llm_attn_prefill(&a, d_ints + 3 * n_q + n_blocks,
                                                      (int)n_work, variant, 0));
            ST_TRY("prefill", cudaMemcpy(h_out, d_out, q_elems * sizeof(bf16), cudaMemcpyDeviceToHost));
            rel[variant] = rel_error(h_out, h_ref, q_elems);
        }
        rc = 0;
    }
out:
    for (int i = 0; i < dl.n; i++)
        cudaFree(dl.p[i]);
    free(h_kv);
    free(h_q);
    free(h_out);
    free(h_ref);
    free(h_ints);
    return rc;
}

/* ---- GEMV tuning table ---------------------------------------------------- */

#include <cublas_v2.h>

__global__ void fill_uniform_kernel(bf16 *p, size_t n, uint64_t seed, float scale)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = seed + i * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        p[i] = __float2bfloat16(((float)(z >> 40) / 16777216.0f * 2.0f - 1.0f) * scale);
    }
}

static double rel_error_f(const float *a, const float *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]))
            return INFINITY;
        num += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static int cmp_float(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

#define GB_REPS 31

static int gemv_case(cublasHandle_t h, const cuda_gemv_case *c, cuda_gemv_result *r,
                     char *err, size_t errlen)
{
    int rc = -1;
    const size_t wn = (size_t)c->N * c->K;
    int sets = (int)((1024ull << 20) / (wn * 2)) + 1;   /* > 1 GiB: no L2 reuse */
    if (sets > 64)
        sets = 64;
    bf16 *w = NULL, *x = NULL;
    float *y = NULL, *yref = NULL, *hy = NULL, *href = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    float times[GB_REPS];
    const float alpha = 1.0f, beta = 0.0f;
    hy = (float *)malloc((size_t)c->T * c->N * sizeof(float));
    href = (float *)malloc((size_t)c->T * c->N * sizeof(float));
    if (!hy || !href) {
        snprintf(err, errlen, "gemv bench: out of host memory");
        goto out;
    }
    ST_TRY("alloc", cudaMalloc((void **)&w, wn * sets * sizeof(bf16)));
    ST_TRY("alloc", cudaMalloc((void **)&x, (size_t)c->T * c->K * sizeof(bf16)));
    ST_TRY("alloc", cudaMalloc((void **)&y, (size_t)c->T * c->N * sizeof(float)));
    ST_TRY("alloc", cudaMalloc((void **)&yref, (size_t)c->T * c->N * sizeof(float)));
    fill_uniform_kernel<<<1024, 256>>>(w, wn * sets, 17, 1.0f / sqrtf((float)c->K));
    fill_uniform_kernel<<<64, 256>>>(x, (size_t)c->T * c->K, 23, 1.0f);
    ST_TRY("fill", cudaGetLastError());
    ST_TRY("events", cudaEventCreate(&e0));
    ST_TRY("events", cudaEventCreate(&e1));
    if (cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, c->N, c->T, c->K, &alpha, w,
                     CUDA_R_16BF, c->K, x, CUDA_R_16BF, c->K, &beta, yref,
                     CUDA_R_32F, c->N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)
        != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "gemv bench: cublasGemmEx failed");
        goto out;
    }
    r->rel_err = 0.0;
    if (c->rows) {
        ST_TRY("poison", cudaMemset(y, 0xff, (size_t)c->T * c->N * sizeof(float)));
        ST_TRY("gemv", llm_gemv(w, x, c->T, c->N, c->K, y, LLM_GEMV_F32_STORE, c->rows, 0));
        ST_TRY("gemv result", cudaMemcpy(hy, y, (size_t)c->T * c->N * sizeof(float),
                                         cudaMemcpyDeviceToHost));
        ST_TRY("reference", cudaMemcpy(href, yref, (size_t)c->T * c->N * sizeof(float),
                                       cudaMemcpyDeviceToHost));
        r->rel_err = rel_error_f(hy, href, (size_t)c->T * c->N);
    }
    for (int i = -3; i < GB_REPS; i++) {
        const bf16 *wi = w + wn * (size_t)((i + 3) % sets);
        ST_TRY("event", cudaEventRecord(e0, 0));
        if (c->rows) {
            ST_TRY("gemv", llm_gemv(wi, x, c->T, c->N, c->K, y, LLM_GEMV_F32_STORE, c->rows, 0));
        } else if (cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, c->N, c->T, c->K, &alpha, wi,
                                CUDA_R_16BF, c->K, x, CUDA_R_16BF, c->K, &beta, y,
                                CUDA_R_32F, c->N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)
                   != CUBLAS_STATUS_SUCCESS) {
            snprintf(err, errlen, "gemv bench: cublasGemmEx failed");
            goto out;
        }
        ST_TRY("event", cudaEventRecord(e1, 0));
        ST_TRY("sync", cudaEventSynchronize(e1));
        if (i >= 0)
            ST_TRY("time", cudaEventElapsedTime(&times[i], e0, e1));
    }
    qsort(times, GB_REPS, sizeof(float), cmp_float);
    r->us = times[GB_REPS / 2] * 1e3;
    r->gbps = (double)(wn * 2 + (size_t)c->T * c->K * 2 + (size_t)c->T * c->N * 4) /
              (r->us * 1e3);
    rc = 0;
out:
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    cudaFree(w);
    cudaFree(x);
    cudaFree(y);
    cudaFree(yref);
    free(hy);
    free(href);
    return rc;
}

extern "C" int cuda_gemv_bench(int device, const cuda_gemv_case *cases, int n,
                               cuda_gemv_result *res, char *err, size_t errlen)
{
    cublasHandle_t h = NULL;
    if (cudaSetDevice(device) != cudaSuccess || cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        cudaGetLastError();
        snprintf(err, errlen, "gemv bench: cannot set up device %d / cuBLAS", device);
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++)
        rc = gemv_case(h, &cases[i], &res[i], err, errlen);
    cublasDestroy(h);
    return rc;
}
