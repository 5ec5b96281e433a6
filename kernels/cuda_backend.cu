/*
 * The CUDA backend: src/backend.h's llm_backend_ops on one NVIDIA GPU.
 *
 * Weights live on the device in bf16 (norm weights and biases in float),
 * the Q/K/V projections fused into one matrix and gate/up interleaved row by
 * row (gate_j, up_j) so one pass computes SiLU(gate) * up.  The residual
 * stream stays in float: the O and down projections add into it directly
 * (cuBLAS beta = 1, or the GEMV's add epilogue), which is the "RMSNorm
 * fused with the residual add" of the design without a separate pass.
 *
 * A step: one host->device copy of all integer inputs (tokens, positions,
 * block tables, work lists), the layers, the LM head over logit_rows only,
 * one device->host copy of the logits.  Decode-only steps of a batch size
 * seen before replay a captured CUDA graph.
 *
 * Every CUDA or cuBLAS failure becomes a -1 with a message in err; nothing
 * here aborts the process.
 */
#ifndef LLM_HAVE_CUDA
#define LLM_HAVE_CUDA 1
#endif
extern "C" {
#include "backend.h"
}
#include "cuda_kernels.cuh"
#include "cuda_sampling.cuh"
#include "cuda_tools.cuh"

#include <cublas_v2.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PART_ENTRIES_SPLITS 1024  /* n_list * n_splits bound of split-K */
#define MAX_SPLITS 64
#define MAX_GRAPHS 64
#define STAGING_BYTES (32u << 20)
#define BLAS_WS_BYTES (32u << 20)

typedef struct {
    bf16  *w_qkv;                 /* [(nq + 2 nkv) D][H] */
    bf16  *w_o;                   /* [H][nq D] */
    bf16  *w_gu;                  /* [2 I][H], gate/up interleaved */
    bf16  *w_down;                /* [H][I] */
    float *input_norm, *post_norm;/* [H] */
    float *q_norm, *k_norm;       /* [D] or NULL */
    float *qkv_bias;              /* [(nq + 2 nkv) D] or NULL */
} dev_layer;

typedef struct {
    int             n_tokens, n_logits, split_tokens, bt_stride, n_splits;
    cudaGraphExec_t exec;
    unsigned long   last_use;
} graph_entry;

/* Device addresses of one step's integer inputs, fixed for a given set of
 * capacities so captured graphs stay valid. */
typedef struct {
    int32_t *tokens, *positions, *tok_seq, *dec_list, *pf_work, *logit_rows,
            *block_tables;
} step_ints;

typedef struct {
    llm_backend   base;           /* first: the engine sees this */
    int           device;
    int           n_sms;
    cudaStream_t  stream;
    cublasHandle_t blas;
    void         *blas_ws;

    int H, I, nq, nkv, D, V, qkv_dim, n_layers;
    float eps;
    bf16      *embed, *lm_head;   /* lm_head == embed when tied */
    float     *final_norm;
    dev_layer *layers;
    float     *inv_freq;          /* [D/2] */
    float      attn_factor;
    size_t     weight_bytes;

    /* KV pool: per layer K then V, each [n_blocks][nkv][bs][D] bf16. */
    void   *kv_pool;
    int     n_blocks, block_size;
    size_t  kv_layer_elems;

    /* Step buffers, sized by capacities below. */
    int     cap_tokens, cap_seqs, cap_stride, cap_logits;
    size_t  ints_count;
    int32_t *d_ints, *h_ints;     /* pinned host staging of the same size */
    step_ints dev;                /* views into d_ints */
    size_t  off_tokens, off_positions, off_tok_seq, off_dec, off_pf,
            off_logit_rows, off_bt;
    float  *x, *qkv, *part_o, *part_ml, *logits_d, *h_logits;
    bf16   *h, *q, *attn, *gu, *act, *hf;
    float2 *cos_sin;
    size_t  scratch_bytes;

    /* Knobs (environment, for checks and benchmarks). */
    int gemv_max_t;               /* LLM_CUDA_GEMV_MAX_T, 0 = cuBLAS only */
    int gemv_rows;                /* LLM_CUDA_GEMV_ROWS: 2 or 4 per block */
    int use_graphs;               /* LLM_CUDA_GRAPHS=0 disables */
    int prefill_kernel;           /* LLM_CUDA_ATTN=decode: 0 */
    int prefill_variant;          /* LLM_CUDA_PREFILL: 1 or 2 (default) */

    llm_sampling smp;             /* forward_sample's buffers */

    const void *pinned_probe_ptr; /* host_is_pinned()'s cache */
    bool        pinned_probe_result;

    graph_entry graphs[MAX_GRAPHS];
    int         n_graphs;
    unsigned long use_clock;
} cuda_backend;

/* ---- errors ------------------------------------------------------------ */

static int cu_fail(char *err, size_t errlen, const char *what, cudaError_t e)
{
    if (err && errlen)
        snprintf(err, errlen, "cuda: %s: %s", what, cudaGetErrorString(e));
    return -1;
}

static int blas_fail(char *err, size_t errlen, const char *what,
                     cublasStatus_t s)
{
    if (err && errlen)
        snprintf(err, errlen, "cublas: %s: %s", what, cublasGetStatusString(s));
    return -1;
}

#define CU_TRY(what, call)                                         \
    do {                                                           \
        cudaError_t e_ = (call);                                   \
        if (e_ != cudaSuccess)                                     \
            return cu_fail(err, errlen, (what), e_);               \
    } while (0)

/* ---- host dtype conversion --------------------------------------------- */

static float half_to_float(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ffu, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {                  /* subnormal: renormalize */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) {
                man <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp - 15 + 127) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t float_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);          /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                  /* round to even */
    return (uint16_t)(u >> 16);
}

static float elem_to_float(const tensor_ref *t, size_t i)
{
    switch (t->dtype) {
    case DTYPE_F32: return ((const float *)t->data)[i];
    case DTYPE_F16: return half_to_float(((const uint16_t *)t->data)[i]);
    default: {
        const uint32_t u = (uint32_t)((const uint16_t *)t->data)[i] << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    }
}

static size_t tensor_numel(const tensor_ref *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return t->ndim > 0 ? n : 0;
}

/* ---- weight upload ------------------------------------------------------ */

/* Double-buffered pinned staging: the host converts chunk k+1 while the
 * copy engine moves chunk k. */
typedef struct {
    void        *pinned[2];
    cudaEvent_t  done[2];
    int          cur;
} uploader;

static int check_tensor(const tensor_ref *t, const char *name, int layer,
                        size_t rows, size_t cols, char *err, size_t errlen)
{
    if (!t->data || tensor_numel(t) != rows * cols) {
        if (layer >= 0)
            snprintf(err, errlen,
                     "cuda: layer %d tensor %s: %s (expected %zu x %zu elements)",
                     layer, name, t->data ? "wrong shape" : "missing", rows, cols);
        else
            snprintf(err, errlen,
                     "cuda: tensor %s: %s (expected %zu x %zu elements)",
                     name, t->data ? "wrong shape" : "missing", rows, cols);
        return -1;
    }
    return 0;
}

/* Copies a [rows][cols] tensor as bf16 to dst + dst_row0 * dst_pitch rows,
 * consecutive source rows dst_step rows apart (2 interleaves gate/up). */
static int upload_matrix(cuda_backend *b, uploader *up, bf16 *dst,
                         size_t dst_row0, size_t dst_step,
                         const tensor_ref *t, size_t rows, size_t cols,
                         char *err, size_t errlen)
{
    const size_t row_bytes = cols * sizeof(bf16);
    size_t per_chunk = STAGING_BYTES / row_bytes;
    if (per_chunk == 0) {
        snprintf(err, errlen, "cuda: tensor row of %zu bytes exceeds staging",
                 row_bytes);
        return -1;
    }
    for (size_t r0 = 0; r0 < rows; r0 += per_chunk) {
        const size_t n = rows - r0 < per_chunk ? rows - r0 : per_chunk;
        CU_TRY("wait staging", cudaEventSynchronize(up->done[up->cur]));
        uint16_t *stage = (uint16_t *)up->pinned[up->cur];
        if (t->dtype == DTYPE_BF16) {
            memcpy(stage, (const uint16_t *)t->data + r0 * cols, n * row_bytes);
        } else {
            for (size_t i = 0; i < n * cols; i++)
                stage[i] = float_to_bf16(elem_to_float(t, r0 * cols + i));
        }
        bf16 *d = dst + (dst_row0 + r0 * dst_step) * cols;
        CU_TRY("copy weights",
               cudaMemcpy2DAsync(d, dst_step * row_bytes, stage, row_bytes,
                                 row_bytes, n, cudaMemcpyHostToDevice, b->stream));
        CU_TRY("record staging", cudaEventRecord(up->done[up->cur], b->stream));
        up->cur ^= 1;
    }
    return 0;
}

static int dev_alloc(cuda_backend *b, void **p, size_t bytes, const char *what,
                     char *err, size_t errlen)
{
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        *p = NULL;
        size_t free_b = 0, total_b = 0;
        cudaGetLastError();
        cudaMemGetInfo(&free_b, &total_b);
        snprintf(err, errlen,
                 "cuda: out of device memory allocating %s (%zu MiB, %zu MiB free of %zu): %s",
                 what, bytes >> 20, free_b >> 20, total_b >> 20,
                 cudaGetErrorString(e));
        return -1;
    }
    (void)b;
    return 0;
}

/* Small vectors go as float. */
static int upload_vector(cuda_backend *b, float **dst, const tensor_ref *t,
                         size_t n, const char *name, int layer, char *err,
                         size_t errlen)
{
    if (check_tensor(t, name, layer, 1, n, err, errlen))
        return -1;
    float *h = (float *)malloc(n * sizeof(float));
    if (!h) {
        snprintf(err, errlen, "cuda: out of host memory for %s", name);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        h[i] = elem_to_float(t, i);
    int rc = dev_alloc(b, (void **)dst, n * sizeof(float), name, err, errlen);
    if (rc == 0) {
        cudaError_t e = cudaMemcpy(*dst, h, n * sizeof(float), cudaMemcpyHostToDevice);
        if (e != cudaSuccess)
            rc = cu_fail(err, errlen, name, e);
        b->weight_bytes += n * sizeof(float);
    }
    free(h);
    return rc;
}

static int upload_layer(cuda_backend *b, uploader *up, int li, char *err,
                        size_t errlen)
{
    const layer_weights *lw = &b->base.m->layers[li];
    dev_layer *dl = &b->layers[li];
    const size_t H = b->H, I = b->I, D = b->D, qd = (size_t)b->nq * D,
                 kd = (size_t)b->nkv * D;

    if (check_tensor(&lw->q_proj, "q_proj", li, qd, H, err, errlen) ||
        check_tensor(&lw->k_proj, "k_proj", li, kd, H, err, errlen) ||
        check_tensor(&lw->v_proj, "v_proj", li, kd, H, err, errlen) ||
        check_tensor(&lw->o_proj, "o_proj", li, H, qd, err, errlen) ||
        check_tensor(&lw->gate_proj, "gate_proj", li, I, H, err, errlen) ||
        check_tensor(&lw->up_proj, "up_proj", li, I, H, err, errlen) ||
        check_tensor(&lw->down_proj, "down_proj", li, H, I, err, errlen))
        return -1;

    const size_t qkv_bytes = (size_t)b->qkv_dim * H * sizeof(bf16);
    const size_t o_bytes = H * qd * sizeof(bf16);
    const size_t gu_bytes = 2 * I * H * sizeof(bf16);
    const size_t down_bytes = H * I * sizeof(bf16);
    if (dev_alloc(b, (void **)&dl->w_qkv, qkv_bytes, "qkv weights", err, errlen) ||
        dev_alloc(b, (void **)&dl->w_o, o_bytes, "o_proj weights", err, errlen) ||
        dev_alloc(b, (void **)&dl->w_gu, gu_bytes, "gate/up weights", err, errlen) ||
        dev_alloc(b, (void **)&dl->w_down, down_bytes, "down_proj weights", err, errlen))
        return -1;
    b->weight_bytes += qkv_bytes + o_bytes + gu_bytes + down_bytes;

    if (upload_matrix(b, up, dl->w_qkv, 0, 1, &lw->q_proj, qd, H, err, errlen) ||
        upload_matrix(b, up, dl->w_qkv, qd, 1, &lw->k_proj, kd, H, err, errlen) ||
        upload_matrix(b, up, dl->w_qkv, qd + kd, 1, &lw->v_proj, kd, H, err, errlen) ||
        upload_matrix(b, up, dl->w_o, 0, 1, &lw->o_proj, H, qd, err, errlen) ||
        upload_matrix(b, up, dl->w_gu, 0, 2, &lw->gate_proj, I, H, err, errlen) ||
        upload_matrix(b, up, dl->w_gu, 1, 2, &lw->up_proj, I, H, err, errlen) ||
        upload_matrix(b, up, dl->w_down, 0, 1, &lw->down_proj, H, I, err, errlen))
        return -1;

    if (upload_vector(b, &dl->input_norm, &lw->input_norm, H, "input_layernorm", li, err, errlen) ||
        upload_vector(b, &dl->post_norm, &lw->post_norm, H, "post_attention_layernorm", li, err, errlen))
        return -1;
    if (b->base.m->cfg.qk_norm) {
        if (upload_vector(b, &dl->q_norm, &lw->q_norm, D, "q_norm", li, err, errlen) ||
            upload_vector(b, &dl->k_norm, &lw->k_norm, D, "k_norm", li, err, errlen))
            return -1;
    }
    if (b->base.m->cfg.attention_bias) {
        /* One float vector [q | k | v] matching the fused projection. */
        if (check_tensor(&lw->q_bias, "q_proj.bias", li, 1, qd, err, errlen) ||
            check_tensor(&lw->k_bias, "k_proj.bias", li, 1, kd, err, errlen) ||
            check_tensor(&lw->v_bias, "v_proj.bias", li, 1, kd, err, errlen))
            return -1;
        float *h = (float *)malloc((size_t)b->qkv_dim * sizeof(float));
        if (!h) {
            snprintf(err, errlen, "cuda: out of host memory for biases");
            return -1;
        }
        for (size_t i = 0; i < qd; i++)
            h[i] = elem_to_float(&lw->q_bias, i);
        for (size_t i = 0; i < kd; i++) {
            h[qd + i] = elem_to_float(&lw->k_bias, i);
            h[qd + kd + i] = elem_to_float(&lw->v_bias, i);
        }
        int rc = dev_alloc(b, (void **)&dl->qkv_bias, (size_t)b->qkv_dim * sizeof(float),
                           "qkv bias", err, errlen);
        if (rc == 0) {
            cudaError_t e = cudaMemcpy(dl->qkv_bias, h, (size_t)b->qkv_dim * sizeof(float),
                                       cudaMemcpyHostToDevice);
            if (e != cudaSuccess)
                rc = cu_fail(err, errlen, "qkv bias", e);
        }
        free(h);
        if (rc)
            return -1;
    }
    return 0;
}

/* ---- RoPE frequencies (Hugging Face's rope_init functions) -------------- */

/* inv_freq rounded to the checkpoint dtype as transformers stores it
 * (round to nearest even; the same arithmetic as the CPU backend's
 * round_to_dtype). */
static float round_inv_freq(float f, llm_dtype t)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if (t == DTYPE_BF16) {
        u += 0x7fffu + ((u >> 16) & 1u);
        u &= 0xffff0000u;
    } else if (t == DTYPE_F16) {
        /* inv_freq lies in (0, 1]: round the mantissa to 10 bits; values
         * below f16's normal range keep f16's absolute resolution */
        float r = f < 6.103515625e-05f ? nearbyintf(f * 16777216.0f) / 16777216.0f : f;
        memcpy(&u, &r, 4);
        if (r >= 6.103515625e-05f) {
            u += 0xfffu + ((u >> 13) & 1u);
            u &= 0xffffe000u;
        }
    }
    memcpy(&f, &u, 4);
    return f;
}

static int rope_setup(cuda_backend *b, char *err, size_t errlen)
{
    const model_config *c = &b->base.m->cfg;
    const int half = b->D / 2;
    float *inv = (float *)malloc((size_t)half * sizeof(float));
    if (!inv) {
        snprintf(err, errlen, "cuda: out of host memory");
        return -1;
    }
    b->attn_factor = 1.0f;
    /* In float, as transformers computes 1 / base ** (arange(0, d, 2) / d)
     * (and as the CPU backend does). */
    for (int i = 0; i < half; i++)
        inv[i] = 1.0f / powf((float)c->rope_theta, (float)(2 * i) / (float)b->D);
    if (c->rope_scaling == ROPE_SCALING_LINEAR) {
        for (int i = 0; i < half; i++)
            inv[i] = (float)(inv[i] / c->rope_factor);
    } else if (c->rope_scaling == ROPE_SCALING_YARN) {
        const double factor = c->rope_factor, base = c->rope_theta;
        const double dim = b->D;
        const double fast = c->yarn_beta_fast > 0 ? c->yarn_beta_fast : 32.0;
        const double slow = c->yarn_beta_slow > 0 ? c->yarn_beta_slow : 1.0;
        const double orig = c->rope_original_max_pos > 0 ? c->rope_original_max_pos
                                                         : c->max_position_embeddings;
        double low = floor(dim * log(orig / (fast * 2 * M_PI)) / (2 * log(base)));
        double high = ceil(dim * log(orig / (slow * 2 * M_PI)) / (2 * log(base)));
        if (low < 0)
            low = 0;
        if (high > dim - 1)
            high = dim - 1;
        if (low == high)
            high += 0.001;
        for (int i = 0; i < half; i++) {
            const float pos_freq = powf((float)base, (float)(2 * i) / (float)dim);
            double ramp = ((double)i - low) / (high - low);
            ramp = ramp < 0 ? 0 : (ramp > 1 ? 1 : ramp);
            const float extrap = (float)(1.0 - ramp);
            const float extra = 1.0f / pos_freq;
            const float inter = 1.0f / ((float)factor * pos_freq);
            inv[i] = inter * (1 - extrap) + extra * extrap;
        }
        if (c->rope_attention_factor > 0)
            b->attn_factor = (float)c->rope_attention_factor;
        else
            b->attn_factor = (float)(factor > 1 ? 0.1 * log(factor) + 1.0 : 1.0);
    } else if (c->rope_scaling != ROPE_SCALING_NONE) {
        free(inv);
        snprintf(err, errlen, "cuda: rope_scaling type %d (dynamic) is not "
                 "supported by the CUDA backend", (int)c->rope_scaling);
        return -1;
    }
    /* transformers keeps inv_freq as a float buffer of the module, so a
     * model loaded in its checkpoint dtype (bf16 for Qwen3) has it rounded
     * to that dtype before cos/sin are taken; the goldens and the CPU
     * backend (src/cpu_backend.c, rope_init) use the rounded values, and
     * exact ones drift by ~5e-4 relative over 64 positions. */
    for (int i = 0; i < half; i++)
        inv[i] = round_inv_freq(inv[i], c->torch_dtype);
    int rc = dev_alloc(b, (void **)&b->inv_freq, (size_t)half * sizeof(float),
                       "rope table", err, errlen);
    if (rc == 0) {
        cudaError_t e = cudaMemcpy(b->inv_freq, inv, (size_t)half * sizeof(float),
                                   cudaMemcpyHostToDevice);
        if (e != cudaSuccess)
            rc = cu_fail(err, errlen, "rope table", e);
    }
    free(inv);
    return rc;
}

/* ---- step buffers --------------------------------------------------------- */

static void free_graphs(cuda_backend *b)
{
    for (int i = 0; i < b->n_graphs; i++)
        cudaGraphExecDestroy(b->graphs[i].exec);
    b->n_graphs = 0;
}

static void free_step_buffers(cuda_backend *b)
{
    free_graphs(b);
    void *dev[] = { b->d_ints, b->x, b->qkv, b->part_o, b->part_ml,
                    b->logits_d, b->h, b->q, b->attn, b->gu, b->act, b->hf,
                    b->cos_sin };
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i])
            cudaFree(dev[i]);
    if (b->h_ints)
        cudaFreeHost(b->h_ints);
    if (b->h_logits)
        cudaFreeHost(b->h_logits);
    b->d_ints = b->h_ints = NULL;
    b->x = b->qkv = b->part_o = b->part_ml = b->logits_d = b->h_logits = NULL;
    b->h = b->q = b->attn = b->gu = b->act = b->hf = NULL;
    b->cos_sin = NULL;
    b->cap_tokens = b->cap_seqs = b->cap_stride = b->cap_logits = 0;
    b->scratch_bytes = 0;
}

static int round_cap(int need, int floor_v)
{
    int c = floor_v;
    while (c < need)
        c *= 2;
    return c;
}

static int ensure_capacity(cuda_backend *b, const llm_batch *bt, char *err,
                           size_t errlen)
{
    if (bt->n_tokens <= b->cap_tokens && bt->n_seqs <= b->cap_seqs &&
        bt->max_blocks <= b->cap_stride && bt->n_logits <= b->cap_logits)
        return 0;
    const int T = round_cap(bt->n_tokens > b->cap_tokens ? bt->n_tokens : b->cap_tokens, 64);
    const int S = round_cap(bt->n_seqs > b->cap_seqs ? bt->n_seqs : b->cap_seqs, 64);
    const int W = round_cap(bt->max_blocks > b->cap_stride ? bt->max_blocks : b->cap_stride, 16);
    const int L = round_cap(bt->n_logits > b->cap_logits ? bt->n_logits : b->cap_logits, 8);
    CU_TRY("sync before resize", cudaStreamSynchronize(b->stream));
    free_step_buffers(b);

    /* Integer arena: fixed offsets so graph-captured kernels keep their
     * pointers.  Prefill work: at most T/64 + S runs, 2 ints each. */
    size_t off = 0;
    b->off_tokens = off;     off += T;
    b->off_positions = off;  off += T;
    b->off_tok_seq = off;    off += T;
    b->off_dec = off;        off += T;
    b->off_pf = off;         off += 2 * ((size_t)T / LLM_PREFILL_TILE + S + 1);
    b->off_logit_rows = off; off += L;
    b->off_bt = off;         off += (size_t)S * W;
    b->ints_count = off;

    const size_t H = b->H, qd = (size_t)b->nq * b->D;
    struct { void **p; size_t bytes; const char *what; } want[] = {
        { (void **)&b->d_ints, off * sizeof(int32_t), "step inputs" },
        { (void **)&b->x, (size_t)T * H * sizeof(float), "residual stream" },
        { (void **)&b->qkv, (size_t)T * b->qkv_dim * sizeof(float), "qkv activations" },
        { (void **)&b->h, (size_t)T * H * sizeof(bf16), "normalized activations" },
        { (void **)&b->q, (size_t)T * qd * sizeof(bf16), "queries" },
        { (void **)&b->attn, (size_t)T * qd * sizeof(bf16), "attention output" },
        { (void **)&b->gu, (size_t)T * 2 * b->I * sizeof(bf16), "gate/up activations" },
        { (void **)&b->act, (size_t)T * b->I * sizeof(bf16), "mlp activations" },
        { (void **)&b->cos_sin, (size_t)T * (b->D / 2) * sizeof(float2), "rope cos/sin" },
        { (void **)&b->part_o, (size_t)PART_ENTRIES_SPLITS * qd * sizeof(float), "split-K partials" },
        { (void **)&b->part_ml, (size_t)PART_ENTRIES_SPLITS * b->nq * 2 * sizeof(float), "split-K stats" },
        { (void **)&b->hf, (size_t)L * H * sizeof(bf16), "final hidden rows" },
        { (void **)&b->logits_d, (size_t)L * b->V * sizeof(float), "logits" },
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (dev_alloc(b, want[i].p, want[i].bytes, want[i].what, err, errlen)) {
            free_step_buffers(b);
            return -1;
        }
        b->scratch_bytes += want[i].bytes;
    }
    CU_TRY("pinned step inputs", cudaMallocHost((void **)&b->h_ints, off * sizeof(int32_t)));
    CU_TRY("pinned logits", cudaMallocHost((void **)&b->h_logits, (size_t)L * b->V * sizeof(float)));
    b->dev.tokens = b->d_ints + b->off_tokens;
    b->dev.positions = b->d_ints + b->off_positions;
    b->dev.tok_seq = b->d_ints + b->off_tok_seq;
    b->dev.dec_list = b->d_ints + b->off_dec;
    b->dev.pf_work = b->d_ints + b->off_pf;
    b->dev.logit_rows = b->d_ints + b->off_logit_rows;
    b->dev.block_tables = b->d_ints + b->off_bt;
    b->cap_tokens = T;
    b->cap_seqs = S;
    b->cap_stride = W;
    b->cap_logits = L;
    return 0;
}

/* ---- projections ---------------------------------------------------------- */

/* y = W x over T tokens.  Small T: own GEMV (memory-bound); otherwise
 * cuBLAS with bf16 inputs and float accumulation. */
static int project(cuda_backend *b, const bf16 *W, int N, int K, const bf16 *x,
                   int T, void *y, llm_gemv_mode mode, char *err, size_t errlen)
{
    if (T <= b->gemv_max_t && K % 8 == 0) {
        CU_TRY("gemv", llm_gemv(W, x, T, N, K, y, mode, b->gemv_rows, b->stream));
        return 0;
    }
    const float alpha = 1.0f;
    const float beta = mode == LLM_GEMV_F32_ADD ? 1.0f : 0.0f;
    void *out = mode == LLM_GEMV_SILU_MUL ? (void *)b->gu : y;
    const cudaDataType_t ctype =
        (mode == LLM_GEMV_F32_STORE || mode == LLM_GEMV_F32_ADD) ? CUDA_R_32F : CUDA_R_16BF;
    /* Column-major view: C[N x T] = W^T(stored K x N)^T * X[K x T]. */
    cublasStatus_t s = cublasGemmEx(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K,
                                    &alpha, W, CUDA_R_16BF, K, x, CUDA_R_16BF, K,
                                    &beta, out, ctype, N, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        return blas_fail(err, errlen, "cublasGemmEx", s);
    if (mode == LLM_GEMV_SILU_MUL)
        CU_TRY("silu_mul", llm_silu_mul(b->gu, T, N / 2, (bf16 *)y, b->stream));
    return 0;
}

/* ---- the forward ------------------------------------------------------------ */

typedef struct {
    int T, n_seqs, n_dec, n_pf, n_logits;
    int split_tokens, n_splits;
    int bt_stride;                /* block-table row stride of this step */
} step_plan;

/* Queues the whole forward on b->stream (capturable). */
static int enqueue_forward(cuda_backend *b, const step_plan *p, char *err,
                           size_t errlen)
{
    const int T = p->T, H = b->H, D = b->D;
    const model_config *c = &b->base.m->cfg;
    CU_TRY("embedding", llm_embed(b->embed, b->dev.tokens, T, H, b->x, b->stream));
    CU_TRY("rope table", llm_rope_table(b->dev.positions, T, b->inv_freq, D / 2,
                                        b->attn_factor, b->cos_sin, b->stream));
    for (int li = 0; li < b->n_layers; li++) {
        const dev_layer *L = &b->layers[li];
        bf16 *kc = (bf16 *)b->kv_pool + 2 * (size_t)li * b->kv_layer_elems;
        bf16 *vc = kc + b->kv_layer_elems;

        CU_TRY("input norm", llm_rmsnorm(b->x, NULL, T, L->input_norm, H, b->eps,
                                         b->h, b->stream));
        if (project(b, L->w_qkv, b->qkv_dim, H, b->h, T, b->qkv,
                    LLM_GEMV_F32_STORE, err, errlen))
            return -1;
        llm_qkv_args qa;
        qa.qkv = b->qkv;
        qa.bias = L->qkv_bias;
        qa.q_norm = c->qk_norm ? L->q_norm : NULL;
        qa.k_norm = c->qk_norm ? L->k_norm : NULL;
        qa.eps = b->eps;
        qa.cos_sin = b->cos_sin;
        qa.n_tokens = T;
        qa.n_heads = b->nq;
        qa.n_kv = b->nkv;
        qa.head_dim = D;
        qa.tok_seq = b->dev.tok_seq;
        qa.positions = b->dev.positions;
        qa.block_tables = b->dev.block_tables;
        qa.bt_stride = p->bt_stride;
        qa.block_size = b->block_size;
        qa.q_out = b->q;
        qa.k_cache = kc;
        qa.v_cache = vc;
        CU_TRY("qk-norm/rope/kv write", llm_qkv_finish(&qa, b->stream));

        llm_attn_args aa;
        aa.q = b->q;
        aa.k_cache = kc;
        aa.v_cache = vc;
        aa.tok_seq = b->dev.tok_seq;
        aa.positions = b->dev.positions;
        aa.block_tables = b->dev.block_tables;
        aa.bt_stride = p->bt_stride;
        aa.block_size = b->block_size;
        aa.n_heads = b->nq;
        aa.n_kv = b->nkv;
        aa.head_dim = D;
        aa.scale = 1.0f / sqrtf((float)D);
        aa.out = b->attn;
        if (p->n_dec > 0)
            CU_TRY("decode attention",
                   llm_attn_decode(&aa, b->dev.dec_list, p->n_dec, p->split_tokens,
                                   p->n_splits, b->part_o, b->part_ml, b->stream));
        if (p->n_pf > 0)
            CU_TRY("prefill attention",
                   llm_attn_prefill(&aa, b->dev.pf_work, p->n_pf, b->prefill_variant,
                                    b->stream));

        if (project(b, L->w_o, H, b->nq * D, b->attn, T, b->x, LLM_GEMV_F32_ADD,
                    err, errlen))
            return -1;
        CU_TRY("post norm", llm_rmsnorm(b->x, NULL, T, L->post_norm, H, b->eps,
                                        b->h, b->stream));
        if (project(b, L->w_gu, 2 * b->I, H, b->h, T, b->act, LLM_GEMV_SILU_MUL,
                    err, errlen))
            return -1;
        if (project(b, L->w_down, H, b->I, b->act, T, b->x, LLM_GEMV_F32_ADD,
                    err, errlen))
            return -1;
    }
    if (p->n_logits > 0) {
        CU_TRY("final norm", llm_rmsnorm(b->x, b->dev.logit_rows, p->n_logits,
                                         b->final_norm, H, b->eps, b->hf, b->stream));
        if (project(b, b->lm_head, b->V, H, b->hf, p->n_logits, b->logits_d,
                    LLM_GEMV_F32_STORE, err, errlen))
            return -1;
    }
    return 0;
}

static int next_pow2(int v)
{
    int p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

/* Checks the batch against the pool and fills the pinned integer arena.
 * Work lists: single-token sequences (decode) go to the split-K kernel;
 * longer runs go to the tensor-core prefill kernel in 64-token pieces. */
static int plan_step(cuda_backend *b, const llm_batch *bt, step_plan *p,
                     char *err, size_t errlen)
{
    const int T = bt->n_tokens;
    int32_t *hi = b->h_ints;
    int32_t *tok = hi + b->off_tokens, *pos = hi + b->off_positions,
            *seqv = hi + b->off_tok_seq, *dec = hi + b->off_dec,
            *pf = hi + b->off_pf, *rows = hi + b->off_logit_rows,
            *tables = hi + b->off_bt;
    memset(p, 0, sizeof *p);
    p->T = T;
    p->n_seqs = bt->n_seqs;
    p->n_logits = bt->n_logits;
    if (bt->seq_start[0] != 0 || bt->seq_start[bt->n_seqs] != T) {
        snprintf(err, errlen, "cuda: batch seq_start does not cover its %d tokens", T);
        return -1;
    }
    /* Block tables go up packed at the smallest power-of-two stride that
     * holds this step's longest sequence, not the engine's max_blocks: a
     * decode step of 256 sequences then moves kilobytes, not megabytes. */
    int max_nb = 1;
    for (int s = 0; s < bt->n_seqs; s++) {
        const int nb = (bt->seq_len[s] + b->block_size - 1) / b->block_size;
        if (nb > max_nb)
            max_nb = nb;
    }
    p->bt_stride = round_cap(max_nb, 16);
    if (p->bt_stride > b->cap_stride)
        p->bt_stride = b->cap_stride;
    int max_ctx = 1;
    for (int s = 0; s < bt->n_seqs; s++) {
        const int a = bt->seq_start[s], e = bt->seq_start[s + 1];
        if (e < a || e - a < 1) {
            snprintf(err, errlen, "cuda: batch sequence %d has no tokens", s);
            return -1;
        }
        const int ctx = bt->seq_len[s];
        const int nb = (ctx + b->block_size - 1) / b->block_size;
        if (ctx < e - a || nb > bt->max_blocks) {
            snprintf(err, errlen, "cuda: batch sequence %d: seq_len %d does not fit "
                     "its %d tokens and %d blocks", s, ctx, e - a, bt->max_blocks);
            return -1;
        }
        const int32_t *row = bt->block_tables + (size_t)s * bt->max_blocks;
        for (int k = 0; k < nb; k++) {
            if (row[k] < 0 || row[k] >= b->n_blocks) {
                snprintf(err, errlen, "cuda: batch sequence %d: block %d is outside "
                         "the pool of %d", s, row[k], b->n_blocks);
                return -1;
            }
        }
        memcpy(tables + (size_t)s * p->bt_stride, row, (size_t)nb * sizeof(int32_t));
        for (int t = a; t < e; t++) {
            if (bt->token_ids[t] < 0 || bt->token_ids[t] >= b->V ||
                bt->positions[t] != ctx - (e - t)) {
                snprintf(err, errlen, "cuda: batch token %d: id %d / position %d "
                         "inconsistent with its sequence", t, bt->token_ids[t],
                         bt->positions[t]);
                return -1;
            }
            tok[t] = bt->token_ids[t];
            pos[t] = bt->positions[t];
            seqv[t] = s;
        }
        if (e - a >= 2 && b->prefill_kernel && b->D <= 128) {
            for (int t = a; t < e; t += LLM_PREFILL_TILE) {
                pf[2 * p->n_pf] = t;
                pf[2 * p->n_pf + 1] = (e - t) < LLM_PREFILL_TILE ? (e - t) : LLM_PREFILL_TILE;
                p->n_pf++;
            }
        } else {
            for (int t = a; t < e; t++) {
                dec[p->n_dec++] = t;
                if (bt->positions[t] + 1 > max_ctx)
                    max_ctx = bt->positions[t] + 1;
            }
        }
    }
    for (int i = 0; i < bt->n_logits; i++) {
        if (bt->logit_rows[i] < 0 || bt->logit_rows[i] >= T) {
            snprintf(err, errlen, "cuda: batch logit row %d is not a batch token",
                     bt->logit_rows[i]);
            return -1;
        }
        rows[i] = bt->logit_rows[i];
    }
    if (p->n_dec > 0) {
        /* Enough blocks to fill the GPU twice over; a power-of-two split
         * length keeps the set of captured graphs small. */
        int target = (2 * b->n_sms + b->nkv * p->n_dec - 1) / (b->nkv * p->n_dec);
        int cap = PART_ENTRIES_SPLITS / p->n_dec;
        if (target > MAX_SPLITS)
            target = MAX_SPLITS;
        if (target > cap)
            target = cap;
        if (target < 1)
            target = 1;
        /* At least 128 tokens a split: shorter ones buy nothing, and a
         * fixed floor keeps one graph per batch size up to ~4k context. */
        int split = next_pow2((max_ctx + target - 1) / target);
        if (split < 128)
            split = 128;
        p->split_tokens = split;
        /* Decode-only steps (the graph-captured ones) always launch
         * `target` splits, so a graph stays valid while the context grows
         * within target * split; splits past a context end at once. */
        if (p->n_pf == 0)
            p->n_splits = target;
        else
            p->n_splits = (max_ctx + split - 1) / split;
        if (p->n_splits < 1)
            p->n_splits = 1;
    }
    return 0;
}

static int run_graph(cuda_backend *b, const step_plan *p, char *err, size_t errlen)
{
    graph_entry *g = NULL;
    for (int i = 0; i < b->n_graphs; i++) {
        graph_entry *e = &b->graphs[i];
        if (e->n_tokens == p->T && e->n_logits == p->n_logits &&
            e->split_tokens == p->split_tokens && e->bt_stride == p->bt_stride &&
            e->n_splits == p->n_splits) {
            g = e;
            break;
        }
    }
    if (!g) {
        if (b->n_graphs == MAX_GRAPHS) {       /* evict the least recently used */
            int lru = 0;
            for (int i = 1; i < b->n_graphs; i++)
                if (b->graphs[i].last_use < b->graphs[lru].last_use)
                    lru = i;
            cudaGraphExecDestroy(b->graphs[lru].exec);
            b->graphs[lru] = b->graphs[--b->n_graphs];
        }
        cudaGraph_t graph;
        CU_TRY("begin graph capture",
               cudaStreamBeginCapture(b->stream, cudaStreamCaptureModeThreadLocal));
        int rc = enqueue_forward(b, p, err, errlen);
        cudaError_t e = cudaStreamEndCapture(b->stream, &graph);
        if (rc) {
            if (e == cudaSuccess)
                cudaGraphDestroy(graph);
            cudaGetLastError();
            return -1;
        }
        if (e != cudaSuccess)
            return cu_fail(err, errlen, "end graph capture", e);
        cudaGraphExec_t exec;
        e = cudaGraphInstantiate(&exec, graph, 0);
        cudaGraphDestroy(graph);
        if (e != cudaSuccess)
            return cu_fail(err, errlen, "instantiate graph", e);
        g = &b->graphs[b->n_graphs++];
        g->n_tokens = p->T;
        g->n_logits = p->n_logits;
        g->split_tokens = p->split_tokens;
        g->bt_stride = p->bt_stride;
        g->n_splits = p->n_splits;
        g->exec = exec;
    }
    g->last_use = ++b->use_clock;
    CU_TRY("launch graph", cudaGraphLaunch(g->exec, b->stream));
    return 0;
}

/* Whether host memory at p is page-locked (cudaMallocHost or registered);
 * the answer for the last pointer asked about is cached. */
static bool host_is_pinned(cuda_backend *b, const void *p)
{
    if (p == b->pinned_probe_ptr)
        return b->pinned_probe_result;
    cudaPointerAttributes attr;
    bool pinned = false;
    if (cudaPointerGetAttributes(&attr, p) == cudaSuccess)
        pinned = attr.type == cudaMemoryTypeHost;
    else
        cudaGetLastError();
    b->pinned_probe_ptr = p;
    b->pinned_probe_result = pinned;
    return pinned;
}

/* Validates the batch and queues its forward on the stream: on success the
 * logits of the batch's logit rows will be in b->logits_d. */
static int forward_enqueue(cuda_backend *b, const llm_batch *bt, char *err,
                           size_t errlen)
{
    if (!b->kv_pool) {
        snprintf(err, errlen, "cuda: forward before kv_alloc");
        return -1;
    }
    if (bt->n_tokens < 1 || bt->n_seqs < 1 || bt->n_logits < 0 ||
        bt->n_logits > bt->n_tokens || bt->max_blocks < 1) {
        snprintf(err, errlen, "cuda: malformed batch (%d tokens, %d sequences, "
                 "%d logit rows)", bt->n_tokens, bt->n_seqs, bt->n_logits);
        return -1;
    }
    CU_TRY("set device", cudaSetDevice(b->device));
    if (ensure_capacity(b, bt, err, errlen))
        return -1;
    step_plan p;
    if (plan_step(b, bt, &p, err, errlen))
        return -1;
    const size_t n_ints = b->off_bt + (size_t)bt->n_seqs * p.bt_stride;
    CU_TRY("upload step inputs",
           cudaMemcpyAsync(b->d_ints, b->h_ints, n_ints * sizeof(int32_t),
                           cudaMemcpyHostToDevice, b->stream));
    const bool graphable = b->use_graphs && p.n_pf == 0 && p.n_dec == p.T;
    int rc = graphable ? run_graph(b, &p, err, errlen) : enqueue_forward(b, &p, err, errlen);
    if (rc) {
        cudaStreamSynchronize(b->stream);
        return -1;
    }
    return 0;
}

/*
 * A failed step either leaves the context usable (an allocation refused, a
 * malformed batch: the engine fails that batch and goes on) or poisons it:
 * after an illegal address or a launch failure every later CUDA call fails
 * with the same "sticky" error until the process ends.  A device-wide
 * synchronize tells them apart; the sticky kind is LLM_BACKEND_FATAL so the
 * engine stops at once (and nginx's watchdog replaces the worker) instead
 * of failing three more batches.
 */
static int classify_failure(cuda_backend *b, char *err, size_t errlen)
{
    (void)b;
    cudaError_t st = cudaDeviceSynchronize();
    if (st == cudaSuccess) {
        (void)cudaGetLastError();    /* clear a non-sticky error */
        return -1;
    }
    size_t n = strnlen(err, errlen);
    if (n + 1 < errlen)
        snprintf(err + n, errlen - n, "%sdevice context lost: %s",
                 n ? "; " : "", cudaGetErrorString(st));
    return LLM_BACKEND_FATAL;
}

static int cuda_forward_logits(llm_backend *base, const llm_batch *bt,
                               float *logits, char *err, size_t errlen);
static int cuda_forward_sampled(llm_backend *base, const llm_batch *bt,
                                const llm_sample_row *rows,
                                sampler_result *out, char *err,
                                size_t errlen);

static int cuda_forward(llm_backend *base, const llm_batch *bt, float *logits,
                        char *err, size_t errlen)
{
    if (cuda_forward_logits(base, bt, logits, err, errlen) == 0)
        return 0;
    return classify_failure((cuda_backend *)base, err, errlen);
}

static int cuda_forward_sample(llm_backend *base, const llm_batch *bt,
                               const llm_sample_row *rows, sampler_result *out,
                               char *err, size_t errlen)
{
    if (cuda_forward_sampled(base, bt, rows, out, err, errlen) == 0)
        return 0;
    return classify_failure((cuda_backend *)base, err, errlen);
}

static int cuda_forward_logits(llm_backend *base, const llm_batch *bt,
                               float *logits, char *err, size_t errlen)
{
    cuda_backend *b = (cuda_backend *)base;
    if (forward_enqueue(b, bt, err, errlen))
        return -1;
    const size_t lbytes = (size_t)bt->n_logits * b->V * sizeof(float);
    /* A page-locked caller buffer takes the copy directly; otherwise the
     * logits go through our pinned buffer (a pageable destination would
     * make the driver stage it anyway, slower). */
    const bool direct = lbytes && host_is_pinned(b, logits);
    if (lbytes)
        CU_TRY("download logits",
               cudaMemcpyAsync(direct ? logits : b->h_logits, b->logits_d, lbytes,
                               cudaMemcpyDeviceToHost, b->stream));
    CU_TRY("forward", cudaStreamSynchronize(b->stream));
    if (lbytes && !direct)
        memcpy(logits, b->h_logits, lbytes);
    return 0;
}

/* forward, then sampling on the device: the logits never cross PCIe,
 * only ids (and logprobs rows asked for). */
static int cuda_forward_sampled(llm_backend *base, const llm_batch *bt,
                                const llm_sample_row *rows,
                                sampler_result *out, char *err,
                                size_t errlen)
{
    cuda_backend *b = (cuda_backend *)base;
    if (forward_enqueue(b, bt, err, errlen))
        return -1;
    if (bt->n_logits > 0) {
        if (llm_sampling_enqueue(&b->smp, b->logits_d, b->V, rows, bt->n_logits,
                                 b->stream, err, errlen)) {
            cudaStreamSynchronize(b->stream);
            return -1;
        }
    }
    CU_TRY("forward and sampling", cudaStreamSynchronize(b->stream));
    if (bt->n_logits > 0)
        llm_sampling_collect(&b->smp, rows, out);
    return 0;
}

/* ---- the rest of the interface ----------------------------------------------- */

static size_t cuda_kv_block_bytes(llm_backend *base, int block_size)
{
    cuda_backend *b = (cuda_backend *)base;
    return (size_t)b->n_layers * 2 * b->nkv * (size_t)block_size * b->D * sizeof(bf16);
}

static int cuda_kv_alloc(llm_backend *base, int n_blocks, int block_size,
                         char *err, size_t errlen)
{
    cuda_backend *b = (cuda_backend *)base;
    if (b->kv_pool) {
        snprintf(err, errlen, "cuda: kv_alloc called twice");
        return -1;
    }
    if (n_blocks < 1 || block_size < 1) {
        snprintf(err, errlen, "cuda: kv_alloc: bad pool %d x %d", n_blocks, block_size);
        return -1;
    }
    CU_TRY("set device", cudaSetDevice(b->device));
    const size_t bytes = (size_t)n_blocks * cuda_kv_block_bytes(base, block_size);
    if (dev_alloc(b, &b->kv_pool, bytes, "KV cache pool", err, errlen))
        return -1;
    b->n_blocks = n_blocks;
    b->block_size = block_size;
    b->kv_layer_elems = (size_t)n_blocks * b->nkv * block_size * b->D;
    /* Never-written slots hold zeros, not garbage that could be NaN. */
    CU_TRY("clear KV cache", cudaMemset(b->kv_pool, 0, bytes));
    return 0;
}

static size_t cuda_free_memory(llm_backend *base)
{
    cuda_backend *b = (cuda_backend *)base;
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(b->device) != cudaSuccess ||
        cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    /* Keep room for the step buffers of large batches and graphs. */
    const size_t reserve = (size_t)1 << 30;
    return free_b > reserve ? free_b - reserve : 0;
}

static void cuda_destroy(llm_backend *base)
{
    cuda_backend *b = (cuda_backend *)base;
    if (!b)
        return;
    cudaSetDevice(b->device);
    if (b->stream)
        cudaStreamSynchronize(b->stream);
    free_step_buffers(b);
    llm_sampling_free(&b->smp);
    if (b->layers) {
        for (int i = 0; i < b->n_layers; i++) {
            dev_layer *l = &b->layers[i];
            void *ps[] = { l->w_qkv, l->w_o, l->w_gu, l->w_down, l->input_norm,
                           l->post_norm, l->q_norm, l->k_norm, l->qkv_bias };
            for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++)
                if (ps[k])
                    cudaFree(ps[k]);
        }
        free(b->layers);
    }
    if (b->lm_head && b->lm_head != b->embed)
        cudaFree(b->lm_head);
    void *ps[] = { b->embed, b->final_norm, b->inv_freq, b->kv_pool, b->blas_ws };
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++)
        if (ps[k])
            cudaFree(ps[k]);
    if (b->blas)
        cublasDestroy(b->blas);
    if (b->stream)
        cudaStreamDestroy(b->stream);
    cudaGetLastError();            /* leave no sticky error to the next user */
    free(b);
}

static const llm_backend_ops cuda_ops = {
    "cuda",
    cuda_kv_block_bytes,
    cuda_kv_alloc,
    cuda_forward,
    cuda_free_memory,
    cuda_destroy,
    cuda_forward_sample,
};

static int env_int(const char *name, int def)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return def;
    char *end;
    long x = strtol(v, &end, 10);
    return *end ? def : (int)x;
}

static int cuda_init(cuda_backend *b, const model *m, int device, char *err,
                     size_t errlen)
{
    const model_config *c = &m->cfg;
    int n_dev = 0;
    CU_TRY("count devices", cudaGetDeviceCount(&n_dev));
    if (device < 0 || device >= n_dev) {
        snprintf(err, errlen, "cuda: device %d does not exist (%d found)", device, n_dev);
        return -1;
    }
    CU_TRY("set device", cudaSetDevice(device));
    cudaDeviceProp prop;
    CU_TRY("device properties", cudaGetDeviceProperties(&prop, device));
    if (prop.major < 8) {
        snprintf(err, errlen, "cuda: %s (sm_%d%d) lacks bf16 tensor cores; "
                 "sm_80 or newer is needed", prop.name, prop.major, prop.minor);
        return -1;
    }
    b->n_sms = prop.multiProcessorCount;
    b->H = c->hidden_size;
    b->I = c->intermediate_size;
    b->nq = c->n_heads;
    b->nkv = c->n_kv_heads;
    b->D = c->head_dim;
    b->V = c->vocab_size;
    b->n_layers = c->n_layers;
    b->eps = c->rms_norm_eps;
    if (b->nkv < 1 || b->nq % b->nkv != 0 || !llm_attn_supported(b->D, b->nq / b->nkv)) {
        snprintf(err, errlen, "cuda: attention shape %d heads / %d kv heads of dim %d "
                 "is not supported (head_dim 16/32/64/128/256, up to 8 query heads per "
                 "kv head)", b->nq, b->nkv, b->D);
        return -1;
    }
    if (b->H % 8 || b->I % 8 || (b->nq * b->D) % 8) {
        snprintf(err, errlen, "cuda: hidden/intermediate sizes must be multiples of 8");
        return -1;
    }
    b->qkv_dim = (b->nq + 2 * b->nkv) * b->D;
    b->gemv_max_t = env_int("LLM_CUDA_GEMV_MAX_T", LLM_GEMV_MAX_T);
    if (b->gemv_max_t > LLM_GEMV_MAX_T)
        b->gemv_max_t = LLM_GEMV_MAX_T;
    b->gemv_rows = env_int("LLM_CUDA_GEMV_ROWS", 4) == 2 ? 2 : 4;
    b->prefill_variant = env_int("LLM_CUDA_PREFILL", 2) == 1 ? 1 : 2;
    b->use_graphs = env_int("LLM_CUDA_GRAPHS", 1);
    {
        const char *a = getenv("LLM_CUDA_ATTN");
        b->prefill_kernel = !(a && strcmp(a, "decode") == 0);
    }

    CU_TRY("attention kernels", llm_attn_init());
    CU_TRY("create stream", cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking));
    cublasStatus_t s = cublasCreate(&b->blas);
    if (s != CUBLAS_STATUS_SUCCESS)
        return blas_fail(err, errlen, "create handle", s);
    if ((s = cublasSetStream(b->blas, b->stream)) != CUBLAS_STATUS_SUCCESS)
        return blas_fail(err, errlen, "set stream", s);
    /* An explicit workspace: cuBLAS must not allocate during graph capture. */
    if (dev_alloc(b, &b->blas_ws, BLAS_WS_BYTES, "cuBLAS workspace", err, errlen))
        return -1;
    if ((s = cublasSetWorkspace(b->blas, b->blas_ws, BLAS_WS_BYTES)) != CUBLAS_STATUS_SUCCESS)
        return blas_fail(err, errlen, "set workspace", s);

    /* Weights. */
    b->layers = (dev_layer *)calloc((size_t)b->n_layers, sizeof(dev_layer));
    if (!b->layers) {
        snprintf(err, errlen, "cuda: out of host memory");
        return -1;
    }
    uploader up;
    memset(&up, 0, sizeof up);
    int rc = 0;
    for (int i = 0; i < 2 && rc == 0; i++) {
        cudaError_t e = cudaMallocHost(&up.pinned[i], STAGING_BYTES);
        if (e == cudaSuccess)
            e = cudaEventCreateWithFlags(&up.done[i], cudaEventDisableTiming);
        if (e != cudaSuccess)
            rc = cu_fail(err, errlen, "pinned staging", e);
    }
    if (rc == 0) {
        const size_t H = b->H, V = b->V;
        rc = check_tensor(&m->embed, "embed_tokens", -1, V, H, err, errlen);
        if (rc == 0)
            rc = dev_alloc(b, (void **)&b->embed, V * H * sizeof(bf16), "embeddings", err, errlen);
        if (rc == 0) {
            b->weight_bytes += V * H * sizeof(bf16);
            rc = upload_matrix(b, &up, b->embed, 0, 1, &m->embed, V, H, err, errlen);
        }
        if (rc == 0) {
            if (m->lm_head.data == NULL || m->lm_head.data == m->embed.data) {
                b->lm_head = b->embed;          /* tied */
            } else {
                rc = check_tensor(&m->lm_head, "lm_head", -1, V, H, err, errlen);
                if (rc == 0)
                    rc = dev_alloc(b, (void **)&b->lm_head, V * H * sizeof(bf16),
                                   "lm_head", err, errlen);
                if (rc == 0) {
                    b->weight_bytes += V * H * sizeof(bf16);
                    rc = upload_matrix(b, &up, b->lm_head, 0, 1, &m->lm_head, V, H,
                                       err, errlen);
                }
            }
        }
        for (int li = 0; li < b->n_layers && rc == 0; li++)
            rc = upload_layer(b, &up, li, err, errlen);
        if (rc == 0)
            rc = upload_vector(b, &b->final_norm, &m->final_norm, H, "norm", -1, err, errlen);
        if (rc == 0)
            rc = rope_setup(b, err, errlen);
        if (rc == 0) {
            cudaError_t e = cudaStreamSynchronize(b->stream);
            if (e != cudaSuccess)
                rc = cu_fail(err, errlen, "weight upload", e);
        }
    }
    if (b->stream)
        cudaStreamSynchronize(b->stream);
    for (int i = 0; i < 2; i++) {
        if (up.pinned[i])
            cudaFreeHost(up.pinned[i]);
        if (up.done[i])
            cudaEventDestroy(up.done[i]);
    }
    return rc;
}

extern "C" llm_backend *cuda_backend_create(const model *m, int device,
                                            char *err, size_t errlen)
{
    cuda_backend *b = (cuda_backend *)calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, errlen, "cuda: out of host memory");
        return NULL;
    }
    b->base.ops = &cuda_ops;
    b->base.m = m;
    b->device = device;
    if (cuda_init(b, m, device, err, errlen)) {
        cuda_destroy(&b->base);
        return NULL;
    }
    return &b->base;
}

/* Tools: switch the prefill attention kernel between steps (benchmarks
 * compare them on one loaded model).  Graphs hold decode steps only. */
extern "C" void cuda_backend_set_prefill_variant(llm_backend *base, int variant)
{
    ((cuda_backend *)base)->prefill_variant = variant == 1 ? 1 : 2;
}

/* Device memory the backend holds besides the KV pool (for reports). */
extern "C" void cuda_backend_memory(llm_backend *base, size_t *weights,
                                    size_t *kv, size_t *scratch)
{
    cuda_backend *b = (cuda_backend *)base;
    *weights = b->weight_bytes;
    *kv = b->kv_pool ? (size_t)b->n_blocks *
                       cuda_kv_block_bytes(base, b->block_size) : 0;
    *scratch = b->scratch_bytes + BLAS_WS_BYTES + b->smp.bytes;
}
