/*
 * CPU backend: the decoder forward pass over a paged f32 KV cache.
 *
 * A batch (decode tokens and prefill chunks of several sequences) runs in
 * chunks of at most CPU_CHUNK_TOKENS tokens; per chunk and layer the
 * projections are matrix-matrix products over all the chunk's tokens,
 * split over the thread pool by blocks of output rows (each block of
 * weights stays in cache while every token passes over it).  Element-wise
 * steps run on the calling thread for small chunks and over the pool for
 * large ones.  Only the rows in batch.logit_rows go through the LM head.
 * Decode (one token) splits each matrix into ~1 MB blocks of rows, each
 * thread streaming a contiguous range of them (a ranged pool job) as four
 * sequential streams per block (cpu_kernels.c, bf16_rows4); between the
 * Q/K/V and O projections each KV head's norms, RoPE, K/V write and
 * attention run as one task, the heads in parallel (head_task).
 *
 * Exactness: activations, accumulations and the KV cache are f32 (the KV
 * cache in f32 costs 2x the memory of bf16 but keeps step-by-step decode
 * equal to a full prefill and both equal to transformers' f32 forward).
 * bf16 weights meet the activations through AVX512-BF16 dot products of
 * a two-term bf16 split of each activation (see cpu_kernels.h); the
 * "fast" precision drops the second term.  Every output element is summed
 * in an order that does not depend on the batch, so a token's logits
 * have the same bits alone, in any batch, decoded or prefilled in chunks.
 *
 * Memory besides weights and the KV pool ("scratch"), sized for
 * min(batch tokens, CPU_CHUNK_TOKENS) tokens and grown on demand: per
 * token 3 * hidden + 2 * q_dim + 2 * kv_dim + 2 * intermediate floats, the
 * bf16 hi/lo pair of the widest activation and a second pair for the
 * intermediate activation (the SiLU product is split while the gate/up
 * input is still being read), and the token's rope table.
 * Qwen3-0.6B: 86 KB a token, 44 MB at the 512-token chunk cap; Qwen3-4B:
 * 228 KB a token, 117 MB.  A max_num_batched_tokens above 512 costs no
 * more (the batch runs in 512-token chunks), below 512 proportionally
 * less.  Attention scores: at most 16 MB per thread (ATTN_SCORE_FLOATS);
 * logit rows keep one hidden vector each until the LM head.
 */
#include "backend.h"
#include "cpu_kernels.h"
#include "thread_pool.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CPU_CHUNK_TOKENS 512
/* decode: weights per pool task, and the fewest tasks per thread a
 * matrix is cut into (mm_block_rows) */
#define DECODE_BLOCK_BYTES ((size_t) 1024 * 1024)
#define DECODE_MIN_TASKS   4
/* decode: the small blocks that end each thread's range of a matrix job
 * (decode_task_rows): the last 1 MB of a thread's range in 128 KB tasks.
 * Measured (Qwen3-0.6B shape, 2 threads, 75-80 GB/s minutes, timers per
 * job): the two threads finish a job 3.4-3.5 us apart with 8, 5.0-6.1 us
 * with 4 -- ~0.2 ms a token over 113 jobs. */
#define DECODE_TAIL_TASKS  8
/* Attention tiles: up to ATTN_TILE tokens share each K/V load; fewer for
 * long contexts so that the scores of a tile stay under
 * ATTN_SCORE_FLOATS per thread (16 MB). */
#define ATTN_TILE         16
#define ATTN_SCORE_FLOATS (4u << 20)
/* Decode attention below this many flops stays on the calling thread
 * (a fork costs a microsecond or two when the workers spin). */
#define ATTN_PARALLEL_FLOPS 1e5
/* Chunks of at most this many tokens (decode steps) run everything
 * between the Q/K/V and O projections per KV head, the heads in parallel
 * (head_task), each head's K/V context prefetched first, at most
 * KV_PREFETCH_HEAD_BYTES of it (more would evict itself before the
 * attention reads it). */
#define DECODE_FUSED_TOKENS 8
#define KV_PREFETCH_HEAD_BYTES ((size_t) 512 * 1024)

typedef struct {
    float      *input_norm, *post_norm, *q_norm, *k_norm;
    float      *q_bias, *k_bias, *v_bias;
    kern_matrix q, k, v, o, gate, up, down;
} cpu_layer;

typedef struct {
    llm_backend  base;
    thread_pool *pool;
    int          n_threads;
    /* shape */
    int          H, Q, KV, I, hd, n_heads, n_kv, n_rep, vocab, n_layers;
    float        eps;
    /* weights: matrices in place, small vectors widened to f32 */
    cpu_layer   *layers;
    float       *final_norm;
    float       *small;          /* one allocation for all small vectors */
    kern_matrix  embed, lm_head;
    /* rope */
    float       *inv_freq;       /* [hd / 2] */
    float        rope_mscale;
    /* KV pool: [layer][K|V][n_blocks * block_size][KV] elements of
     * kv_esize bytes (f32, or bf16 with kv_bf16) */
    void        *kv;
    int          kv_bf16;
    size_t       kv_esize;
    size_t       kv_bytes;
    int          n_blocks, block_size;
    /* scratch, grown on demand */
    int          cap;            /* tokens */
    float       *x, *xn, *tmp, *q, *k, *v, *att, *g, *u;
    /* bf16 split of a matmul's input, written by the pass that produces
     * the input (per token or per block of rows, in parallel) instead of
     * serially before the matmul: hi/lo for xn and att, hi2/lo2 for the
     * SiLU product (its producer runs while the gate/up input is still
     * being read) */
    uint16_t    *hi, *lo, *hi2, *lo2;
    int          split;          /* layer weights take the split path */
    float       *rope_cos, *rope_sin;
    int32_t     *tok_seq;
    int          tok_cap;
    float       *scores;
    size_t       scores_per_thread;
    int          fast;           /* CPU_PRECISION_FAST */
    /* attention tiles of the current chunk: up to ATTN_TILE consecutive
     * tokens of one sequence */
    int         *tile_start, *tile_len;
    int          n_tiles, tile_cap;
    /* decode: the first row of each task of a ranged matrix job, and one
     * past the last (decode_task_rows) */
    int         *task_row;
    int          task_row_cap;
    int          attn_tile;      /* tile length limit of this forward */
    int          logit_cap;
    float       *final_rows;
    uint16_t    *final_hi, *final_lo;
} cpu_backend;

/* ---- small helpers ----------------------------------------------------- */

static void *xrealloc(void *p, size_t n, int *failed)
{
    void *q;

    if (*failed) {
        return p;
    }
    q = realloc(p, n ? n : 1);
    if (q == NULL) {
        *failed = 1;
        return p;
    }
    return q;
}

static kern_matrix mat_of(const tensor_ref *t)
{
    kern_matrix m;
    m.dtype = t->dtype;
    m.data = t->data;
    m.rows = (int) t->shape[0];
    m.cols = (int) t->shape[1];
    return m;
}

/* ---- rope tables ---------------------------------------------------------- */

/* inv_freq exactly as transformers computes it in float32:
 * 1 / base ** (arange(0, dim, 2) / dim). */
static void rope_default_inv_freq(double base, int hd, float *inv)
{
    for (int i = 0; i < hd / 2; i++) {
        float e = (float) (2 * i) / (float) hd;
        inv[i] = 1.0f / powf((float) base, e);
    }
}

static float round_to_dtype(float f, llm_dtype t)
{
    uint32_t u;

    memcpy(&u, &f, 4);
    if (t == DTYPE_BF16) {
        u += 0x7fffu + ((u >> 16) & 1u);
        u &= 0xffff0000u;
    } else if (t == DTYPE_F16) {
        /* inv_freq lies in (0, 1]: round the mantissa to 10 bits; values
         * below f16's normal range keep f16's absolute resolution */
        float r = f < 6.103515625e-05f
                  ? nearbyintf(f * 16777216.0f) / 16777216.0f : f;
        memcpy(&u, &r, 4);
        if (r >= 6.103515625e-05f) {
            u += 0xfffu + ((u >> 13) & 1u);
            u &= 0xffffe000u;
        }
    }
    memcpy(&f, &u, 4);
    return f;
}

static double yarn_correction_dim(double rot, int hd, double base, int max_pos)
{
    return (hd * log(max_pos / (rot * 2 * M_PI))) / (2 * log(base));
}

static void rope_init(cpu_backend *b, const model_config *c)
{
    int half = b->hd / 2;

    b->rope_mscale = 1.0f;
    rope_default_inv_freq(c->rope_theta, b->hd, b->inv_freq);
    switch (c->rope_scaling) {
    case ROPE_SCALING_LINEAR:
        for (int i = 0; i < half; i++) {
            b->inv_freq[i] = (float) (b->inv_freq[i] / c->rope_factor);
        }
        break;
    case ROPE_SCALING_YARN: {
        /* transformers' _compute_yarn_parameters */
        double low = floor(yarn_correction_dim(c->yarn_beta_fast, b->hd,
                                               c->rope_theta,
                                               c->rope_original_max_pos));
        double high = ceil(yarn_correction_dim(c->yarn_beta_slow, b->hd,
                                               c->rope_theta,
                                               c->rope_original_max_pos));
        if (low < 0) low = 0;
        if (high > b->hd - 1) high = b->hd - 1;
        if (low == high) high += 0.001;
        for (int i = 0; i < half; i++) {
            float pos_freq = powf((float) c->rope_theta,
                                  (float) (2 * i) / (float) b->hd);
            float extra = 1.0f / pos_freq;
            float inter = 1.0f / ((float) c->rope_factor * pos_freq);
            double ramp = (i - low) / (high - low);
            float extra_factor;
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            extra_factor = (float) (1.0 - ramp);
            b->inv_freq[i] = inter * (1 - extra_factor) + extra * extra_factor;
        }
        if (c->rope_attention_factor > 0) {
            b->rope_mscale = (float) c->rope_attention_factor;
        } else if (c->rope_factor > 1) {
            b->rope_mscale = (float) (0.1 * log(c->rope_factor) + 1.0);
        }
        break;
    }
    default:
        break;
    }
    /* transformers keeps inv_freq as a float buffer of the module, so a
     * model loaded in its checkpoint dtype (bf16 for Qwen3) rounds it to
     * that dtype before the float32 cos/sin are taken.  The reference
     * logits (and the model as trained and served by transformers) use
     * these rounded frequencies; with exact ones the logits drift by ~5e-4
     * relative over 64 positions. */
    for (int i = 0; i < half; i++) {
        b->inv_freq[i] = round_to_dtype(b->inv_freq[i], c->torch_dtype);
    }
}

/* cos/sin [hd/2] of one token.  Dynamic NTK scaling grows the base with
 * the sequence's length, per sequence (transformers uses the batch's
 * longest; per sequence keeps a request independent of its neighbours). */
static void rope_token(const cpu_backend *b, int pos, int seq_len,
                       float *cos_, float *sin_)
{
    const model_config *c = &b->base.m->cfg;
    int half = b->hd / 2;
    float inv_dyn[512];
    const float *inv = b->inv_freq;

    if (c->rope_scaling == ROPE_SCALING_DYNAMIC
        && seq_len > c->rope_original_max_pos && half <= 512) {
        double f = c->rope_factor;
        double base = c->rope_theta
            * pow(f * seq_len / c->rope_original_max_pos - (f - 1),
                  (double) b->hd / (b->hd - 2));
        rope_default_inv_freq(base, b->hd, inv_dyn);
        inv = inv_dyn;
    }
    for (int i = 0; i < half; i++) {
        float ang = (float) pos * inv[i];
        cos_[i] = cosf(ang) * b->rope_mscale;
        sin_[i] = sinf(ang) * b->rope_mscale;
    }
}

/* ---- matmul jobs over the pool ---------------------------------------------- */

typedef struct {
    const kern_matrix *w;
    float             *y;
    size_t             ldy;
} mm_target;

typedef struct {
    mm_target   t[3];
    int         n;
    int         block;           /* rows per task */
    int         tasks[4];        /* cumulative task counts */
    kern_acts   a;
    /* gate/up fusion: after the up block, y_gate = silu(y_gate) * y_up,
     * and (when split_hi is set) its bf16 split for the down projection */
    int         fuse_silu;
    uint16_t   *split_hi, *split_lo;
    /* decode: task i covers rows [row_at[i], row_at[i + 1]) of the
     * matrices one after the other (of gate and up alike when fused);
     * NULL: task i is block i of its matrix */
    const int  *row_at;
} mm_job;

/* Gate and up rows [r0, r1), then the SiLU product (and its bf16 split
 * for the down projection). */
static void mm_fused_rows(const mm_job *j, int r0, int r1)
{
    kern_matmul(j->t[0].w, r0, r1, &j->a, 0, j->a.n, j->t[0].y, j->t[0].ldy);
    kern_matmul(j->t[1].w, r0, r1, &j->a, 0, j->a.n, j->t[1].y, j->t[1].ldy);
    for (int t = 0; t < j->a.n; t++) {
        float *gy = j->t[0].y + (size_t) t * j->t[0].ldy;
        const float *uy = j->t[1].y + (size_t) t * j->t[1].ldy;
        kern_silu_mul(gy + r0, uy + r0, gy + r0, r1 - r0);
        if (j->split_hi) {
            size_t o = (size_t) t * j->t[0].ldy + (size_t) r0;
            kern_split_bf16(gy + r0, (size_t) (r1 - r0), j->split_hi + o,
                            j->split_lo ? j->split_lo + o : NULL);
        }
    }
}

/* Rows [r0, r1) of the job's matrices taken one after the other. */
static void mm_span_rows(const mm_job *j, int r0, int r1)
{
    int base = 0;

    for (int m = 0; m < j->n && r0 < r1; m++) {
        int rows = j->t[m].w->rows;
        if (r0 < base + rows) {
            int e = r1 < base + rows ? r1 : base + rows;
            kern_matmul(j->t[m].w, r0 - base, e - base, &j->a, 0, j->a.n,
                        j->t[m].y, j->t[m].ldy);
            r0 = e;
        }
        base += rows;
    }
}

static void mm_task(void *ctx, int task, int thread)
{
    mm_job *j = ctx;
    int m = 0, r0, r1;

    (void) thread;
    if (j->row_at != NULL) {
        r0 = j->row_at[task];
        r1 = j->row_at[task + 1];
        if (j->fuse_silu) {
            mm_fused_rows(j, r0, r1);
        } else {
            mm_span_rows(j, r0, r1);
        }
        return;
    }
    while (task >= j->tasks[m + 1]) {
        m++;
    }
    if (j->fuse_silu) {
        /* one task = the same rows of gate and up, then the product */
        r0 = task * j->block;
        r1 = r0 + j->block < j->t[0].w->rows ? r0 + j->block
                                             : j->t[0].w->rows;
        mm_fused_rows(j, r0, r1);
        return;
    }
    r0 = (task - j->tasks[m]) * j->block;
    r1 = r0 + j->block < j->t[m].w->rows ? r0 + j->block : j->t[m].w->rows;
    kern_matmul(j->t[m].w, r0, r1, &j->a, 0, j->a.n, j->t[m].y, j->t[m].ldy);
}

/*
 * Decode: the rows of a ranged job's tasks, into b->task_row; returns the
 * task count, or 0 to keep uniform blocks (too few rows, or no memory).
 * The pool starts thread i on tasks [n * i / T, n * (i + 1) / T)
 * (thread_pool.h), so with n a multiple of T every thread gets the same
 * number of tasks: its share of the rows cut
 * into blocks of ~blk rows, except the last blk rows, cut into
 * DECODE_TAIL_TASKS small blocks.  A thread that finishes its range
 * steals from the back of another's, so the threads meet at the end of
 * the job within a small block of each other instead of a whole one
 * (measured before: the caller waited ~5 us at each of ~140 joins a
 * token, Qwen3-0.6B shape).
 */
static int decode_task_rows(cpu_backend *b, int rows, int blk)
{
    int T = b->n_threads, min_share = rows / T;
    int tail = blk < min_share ? blk : min_share;
    int k_big = (min_share - tail + blk - 1) / blk;
    int per = k_big + DECODE_TAIL_TASKS, n = per * T;

    if (T < 2 || tail < DECODE_TAIL_TASKS * 4) {
        return 0;
    }
    if (n + 1 > b->task_row_cap) {
        int *p = realloc(b->task_row, (size_t) (n + 1) * sizeof(int));
        if (p == NULL) {
            return 0;
        }
        b->task_row = p;
        b->task_row_cap = n + 1;
    }
    for (int i = 0; i < T; i++) {
        int s0 = (int) ((int64_t) rows * i / T);
        int s1 = (int) ((int64_t) rows * (i + 1) / T);
        /* without big blocks the small ones take the whole share */
        int t_i = k_big == 0 ? s1 - s0 : tail, big_end = s1 - t_i;
        int *row = b->task_row + (size_t) i * per;
        for (int k = 0; k < k_big; k++) {
            row[k] = s0 + (int) ((int64_t) (big_end - s0) * k / k_big);
        }
        for (int k = 0; k < DECODE_TAIL_TASKS; k++) {
            row[k_big + k] = big_end + t_i * k / DECODE_TAIL_TASKS;
        }
    }
    b->task_row[n] = rows;
    return n;
}

/* Decode: a matrix job of `rows` output rows over the pool as a ranged
 * job, in the tasks decode_task_rows cuts, or in its `uniform` blocks of
 * j->block rows when it cuts none. */
static void run_decode_job(cpu_backend *b, mm_job *j, int rows, int uniform)
{
    int n_tasks = decode_task_rows(b, rows, j->block);

    if (n_tasks > 0) {
        j->row_at = b->task_row;
    } else {
        n_tasks = uniform;
    }
    thread_pool_run_ranged(b->pool, n_tasks, mm_task, j);
}

/* Rows per task: for one token, small blocks spread the weight stream
 * over all threads with room for dynamic balance; for many tokens, a block
 * whose weights fit in half of L2 while every token passes over it. */
static int mm_block_rows(const cpu_backend *b, const kern_matrix *w, int n_tok,
                         int total_rows)
{
    int blk;

    if (n_tok <= 1) {
        /* ~1 MB of weights a block (512 rows at K = 1024), which the
         * kernel reads as four sequential streams of 256 KB: the hardware
         * prefetchers keep 98-105% of a plain read over four streams of a
         * 512 KB-1 MB block, 92-100% over 256 KB, 67-80% over 32 KB blocks
         * of four adjacent rows at a time.  Each
         * thread streams its contiguous range of blocks and steals single
         * blocks from the back of an unfinished range
         * (thread_pool_run_ranged), so the threads wait at most one block
         * for each other; small matrices get smaller blocks, at least
         * DECODE_MIN_TASKS a thread.  Measured on the development machine
         * (Qwen3-0.6B shape): 32 KB blocks 37-40 tok/s, 256 KB 44-46 in
         * the same minutes; later, interleaved, 256 KB 40.6-43.4, 512 KB
         * 41.7-44.7, 1 MB 41.9-45.2 tok/s, 2 MB no better than 1 MB (the
         * tiny model's decode, all LM head, +3-13% from 256 KB to 1 MB). */
        blk = (int) (DECODE_BLOCK_BYTES
                     / ((size_t) w->cols * llm_dtype_size(w->dtype)));
        blk = blk < 16 ? 16 : blk & ~3;
        while (blk > 16
               && total_rows / blk < DECODE_MIN_TASKS * b->n_threads) {
            blk = (blk / 2) & ~3;
        }
        return blk;
    }
    /* half of a 1 MB L2: the rest holds the token tile being streamed;
     * larger blocks mean fewer passes of the activations from L3 (measured
     * on the development machine: the down projection, K = 3072, runs
     * 3-5% faster with 84-row blocks than with 40) */
    blk = (int) (512 * 1024 / ((size_t) w->cols * llm_dtype_size(w->dtype)));
    blk = blk < 16 ? 16 : blk > 128 ? 128 : blk;
    blk &= ~3;
    while (blk > 16 && total_rows / blk < 4 * b->n_threads) {
        blk /= 2;
    }
    return blk;
}

/* hi/lo: x's bf16 split when its producer already made it (b->split),
 * else NULL (made here if the weights want it). */
static void run_matmuls(cpu_backend *b, mm_target *targets, int n,
                        const float *x, const uint16_t *hi,
                        const uint16_t *lo, int n_tok, int cols,
                        int fuse_silu)
{
    mm_job j;
    int total_rows = 0, want_split = 0;

    memset(&j, 0, sizeof(j));
    for (int i = 0; i < n; i++) {
        j.t[i] = targets[i];
        total_rows += targets[i].w->rows;
        want_split |= kern_wants_split(targets[i].w->dtype);
    }
    j.n = n;
    j.fuse_silu = fuse_silu;
    j.a.x = x;
    j.a.n = n_tok;
    j.a.cols = cols;
    if (want_split) {
        if (hi == NULL) {
            kern_split_bf16(x, (size_t) n_tok * (size_t) cols, b->hi,
                            b->fast ? NULL : b->lo);
            hi = b->hi;
            lo = b->lo;
        }
        j.a.hi = hi;
        j.a.lo = b->fast ? NULL : lo;
    }
    if (fuse_silu && b->split) {
        j.split_hi = b->hi2;
        j.split_lo = b->fast ? NULL : b->lo2;
    }
    j.block = mm_block_rows(b, targets[0].w, n_tok, total_rows);
    j.tasks[0] = 0;
    if (fuse_silu) {
        j.tasks[1] = (targets[0].w->rows + j.block - 1) / j.block;
    } else {
        for (int i = 0; i < n; i++) {
            j.tasks[i + 1] = j.tasks[i]
                + (targets[i].w->rows + j.block - 1) / j.block;
        }
    }
    if (n_tok <= 1) {
        run_decode_job(b, &j, fuse_silu ? targets[0].w->rows : total_rows,
                       fuse_silu ? j.tasks[1] : j.tasks[n]);
    } else {
        thread_pool_run(b->pool, fuse_silu ? j.tasks[1] : j.tasks[n], mm_task,
                        &j);
    }
}

/* ---- per-token passes --------------------------------------------------------- */

typedef struct {
    cpu_backend     *b;
    const llm_batch *batch;
    int              c0;         /* chunk's first batch token */
    int              n;          /* chunk tokens */
    int              layer;
    int              per_task;
    int              what;
    int              add_tmp;    /* TOK_INPUT_NORM: x += tmp first (the
                                  * previous layer's down projection) */
} tok_job;

enum { TOK_INPUT_NORM, TOK_QKV_POST, TOK_POST_NORM, TOK_ATTN };

/* Layer l's K pool, then its V pool, each n_blocks * block_size * KV. */
static kern_kv layer_kv(const cpu_backend *b, int layer)
{
    kern_kv kv;
    size_t per = (size_t) b->n_blocks * (size_t) b->block_size * (size_t) b->KV
                 * b->kv_esize;

    kv.k = (char *) b->kv + (size_t) layer * 2 * per;
    kv.v = (char *) kv.k + per;
    kv.bf16 = b->kv_bf16;
    kv.n_kv = b->n_kv;
    kv.hd = b->hd;
    kv.bs = b->block_size;
    return kv;
}

/* Chunk token t, KV head g and its query heads, after the Q/K/V
 * projection: biases, Q/K norms, RoPE, then the token's K and V into the
 * cache.  Prefill runs it for every head of a token (TOK_QKV_POST),
 * decode per head (head_task): the same arithmetic either way. */
static void qkv_post_head(const tok_job *j, int t, int g)
{
    cpu_backend *b = j->b;
    const cpu_layer *L = &b->layers[j->layer];
    const llm_batch *bt = j->batch;
    int bi = j->c0 + t, pos = bt->positions[bi];
    const int32_t *table = bt->block_tables
                           + (size_t) b->tok_seq[bi] * bt->max_blocks;
    size_t qo = (size_t) g * b->n_rep * b->hd, ko = (size_t) g * b->hd;
    int nq = b->n_rep * b->hd;
    float *q = b->q + (size_t) t * b->Q + qo;
    float *k = b->k + (size_t) t * b->KV + ko;
    float *v = b->v + (size_t) t * b->KV + ko;
    const float *cs = b->rope_cos + (size_t) t * (b->hd / 2);
    const float *sn = b->rope_sin + (size_t) t * (b->hd / 2);
    kern_kv kv = layer_kv(b, j->layer);

    if (L->q_bias) {
        for (int i = 0; i < nq; i++) q[i] += L->q_bias[qo + i];
        for (int i = 0; i < b->hd; i++) k[i] += L->k_bias[ko + i];
        for (int i = 0; i < b->hd; i++) v[i] += L->v_bias[ko + i];
    }
    if (L->q_norm) {
        for (int h = 0; h < b->n_rep; h++) {
            kern_rmsnorm(q + (size_t) h * b->hd, L->q_norm, b->hd, b->eps,
                         q + (size_t) h * b->hd);
        }
        kern_rmsnorm(k, L->k_norm, b->hd, b->eps, k);
    }
    kern_rope(q, b->n_rep, b->hd, cs, sn);
    kern_rope(k, 1, b->hd, cs, sn);
    kern_kv_write_head(&kv, g, table[pos / b->block_size],
                       pos % b->block_size, k, v);
}

static void tok_one(tok_job *j, int t, int thread)
{
    cpu_backend *b = j->b;
    const cpu_layer *L = &b->layers[j->layer];

    switch (j->what) {
    case TOK_INPUT_NORM:
    case TOK_POST_NORM: {
        /* residual add (O or down projection), norm and bf16 split of one
         * token, fused so the matmul that follows starts at once */
        float *x = b->x + (size_t) t * b->H, *xn = b->xn + (size_t) t * b->H;
        const float *tmp = b->tmp + (size_t) t * b->H;
        if (j->what == TOK_POST_NORM || j->add_tmp) {
            for (int i = 0; i < b->H; i++) {
                x[i] += tmp[i];
            }
        }
        kern_rmsnorm(x, j->what == TOK_INPUT_NORM ? L->input_norm
                                                  : L->post_norm,
                     b->H, b->eps, xn);
        if (b->split) {
            kern_split_bf16(xn, (size_t) b->H, b->hi + (size_t) t * b->H,
                            b->fast ? NULL : b->lo + (size_t) t * b->H);
        }
        break;
    }
    case TOK_QKV_POST:
        for (int g = 0; g < b->n_kv; g++) {
            qkv_post_head(j, t, g);
        }
        break;
    default:
        break;
    }
    (void) thread;
}

/* Attention of KV head g's query heads over one tile, and the bf16
 * split of its output for the O projection. */
static void attn_one(tok_job *j, int g, int tile, int thread)
{
    cpu_backend *b = j->b;
    const llm_batch *bt = j->batch;
    int t = b->tile_start[tile], bi = j->c0 + t, s = b->tok_seq[bi];
    kern_kv kv = layer_kv(b, j->layer);
    size_t off = (size_t) t * b->Q + (size_t) g * b->n_rep * b->hd;

    kern_attention(&kv, g, bt->block_tables + (size_t) s * bt->max_blocks,
                   bt->positions[bi], b->tile_len[tile], b->n_rep,
                   1.0f / sqrtf((float) b->hd), b->q + off, (size_t) b->Q,
                   b->scores + (size_t) thread * b->scores_per_thread,
                   b->att + off, (size_t) b->Q);
    if (b->split) {
        for (int i = 0; i < b->tile_len[tile]; i++) {
            size_t o = off + (size_t) i * b->Q;
            kern_split_bf16(b->att + o, (size_t) b->n_rep * b->hd, b->hi + o,
                            b->fast ? NULL : b->lo + o);
        }
    }
}

/* Decode: asks for KV head g's K and V context at once, before the Q/K
 * norms, RoPE and K/V write of head_task: the attention that follows then
 * finds it in flight or in cache (the context of one head is scattered
 * over the paged blocks, which the hardware prefetchers do not follow).
 * Measured on the development machine, Qwen3-0.6B shape, 128 tokens
 * after a 16-token prompt: +4% decode tok/s; asking for the context
 * during the Q/K/V projection instead gained 1-2% (the weight stream
 * evicted most of it before attention). */
static void kv_prefetch_head(const cpu_backend *b, const tok_job *j, int g)
{
    kern_kv kv = layer_kv(b, j->layer);
    const char *kp = kv.k, *vp = kv.v;
    size_t span = (size_t) b->hd * (size_t) b->block_size * b->kv_esize;
    size_t asked = 0;

    for (int t = 0; t < b->n_tiles; t++) {
        int bi = j->c0 + b->tile_start[t];
        int ctx = j->batch->positions[bi] + b->tile_len[t];
        int n = (ctx + b->block_size - 1) / b->block_size;
        const int32_t *table = j->batch->block_tables
                               + (size_t) b->tok_seq[bi] * j->batch->max_blocks;
        /* in the order of use: the block the new K/V go into (the K write
         * touches every line of its K span), then the K spans the scores
         * read, then the V spans the weighted sum reads */
        for (int k = -1; k < 2 * n && asked < KV_PREFETCH_HEAD_BYTES; k++) {
            int blk = k < 0 ? n - 1 : k % n;
            size_t o = ((size_t) table[blk] * (size_t) b->n_kv + (size_t) g)
                       * span;
            if (k < 0) {
                kern_prefetch(kp + o, span);
                kern_prefetch(vp + o, span);
            } else {
                kern_prefetch((k < n ? kp : vp) + o, span);
            }
            asked += span;
        }
    }
}

/*
 * Decode chunks: everything between the Q/K/V and O projections for KV
 * head g and its query heads (biases, Q/K norms, RoPE, the K/V write,
 * attention over every tile), so that the heads run in parallel as a
 * ranged job (thread i takes a contiguous run of heads).  The same
 * operations as TOK_QKV_POST and TOK_ATTN, so the results have the same
 * bits.
 */
static void head_task(void *ctx, int g, int thread)
{
    tok_job *j = ctx;

    kv_prefetch_head(j->b, j, g);
    for (int t = 0; t < j->n; t++) {
        qkv_post_head(j, t, g);
    }
    for (int tile = 0; tile < j->b->n_tiles; tile++) {
        attn_one(j, g, tile, thread);
    }
}

static void tok_task(void *ctx, int task, int thread)
{
    tok_job *j = ctx;
    int t0 = task * j->per_task, t1 = t0 + j->per_task;

    if (j->what == TOK_ATTN) {
        /* task = (kv head, tile), head-major so that threads working at
         * the same time share that head's K/V blocks in cache */
        attn_one(j, task / j->b->n_tiles, task % j->b->n_tiles, thread);
        return;
    }
    if (t1 > j->n) {
        t1 = j->n;
    }
    for (int t = t0; t < t1; t++) {
        tok_one(j, t, thread);
    }
}

/* Flops of the chunk's attention (scores and weighted sum). */
static double attn_flops(const cpu_backend *b, const tok_job *j)
{
    double flops = 0;

    for (int t = 0; t < b->n_tiles; t++) {
        int bi = j->c0 + b->tile_start[t];
        flops += (double) b->tile_len[t] * (j->batch->positions[bi] + 1);
    }
    return flops * 4.0 * b->n_heads * b->hd;
}

/* Decode chunks: head_task for every KV head, over the pool unless the
 * attention is too small to pay for a fork. */
static void run_heads(cpu_backend *b, tok_job *j)
{
    if (attn_flops(b, j) < ATTN_PARALLEL_FLOPS) {
        for (int g = 0; g < b->n_kv; g++) {
            head_task(j, g, 0);
        }
        return;
    }
    thread_pool_run_ranged(b->pool, b->n_kv, head_task, j);
}

/* Runs a per-token pass; small chunks stay on this thread (a fork costs
 * more than normalizing one vector). */
static void run_tokens(cpu_backend *b, tok_job *j, int what)
{
    int tasks;

    j->what = what;
    if (what == TOK_ATTN) {
        /* prefill chunks (decode chunks take head_task) */
        tasks = b->n_tiles * b->n_kv;
        if (attn_flops(b, j) < 1e6) {
            for (int t = 0; t < tasks; t++) {
                tok_task(j, t, 0);
            }
            return;
        }
        thread_pool_run(b->pool, tasks, tok_task, j);
        return;
    }
    j->per_task = j->n < 16 ? j->n : (j->n + b->n_threads * 4 - 1)
                                       / (b->n_threads * 4);
    tasks = (j->n + j->per_task - 1) / j->per_task;
    if (j->n < 16) {
        for (int t = 0; t < tasks; t++) {
            tok_task(j, t, 0);
        }
        return;
    }
    thread_pool_run(b->pool, tasks, tok_task, j);
}

/* ---- forward -------------------------------------------------------------------- */

static int ensure_scratch(cpu_backend *b, int n_tok, int max_ctx,
                          int n_logits)
{
    int failed = 0;
    size_t widest = (size_t) b->H;

    if (n_tok > b->cap) {
        size_t n = (size_t) n_tok;
        widest = widest > (size_t) b->Q ? widest : (size_t) b->Q;
        widest = widest > (size_t) b->I ? widest : (size_t) b->I;
        b->x = xrealloc(b->x, n * b->H * sizeof(float), &failed);
        b->xn = xrealloc(b->xn, n * b->H * sizeof(float), &failed);
        b->tmp = xrealloc(b->tmp, n * b->H * sizeof(float), &failed);
        b->q = xrealloc(b->q, n * b->Q * sizeof(float), &failed);
        b->k = xrealloc(b->k, n * b->KV * sizeof(float), &failed);
        b->v = xrealloc(b->v, n * b->KV * sizeof(float), &failed);
        b->att = xrealloc(b->att, n * b->Q * sizeof(float), &failed);
        b->g = xrealloc(b->g, n * b->I * sizeof(float), &failed);
        b->u = xrealloc(b->u, n * b->I * sizeof(float), &failed);
        b->hi = xrealloc(b->hi, n * widest * sizeof(uint16_t), &failed);
        b->lo = xrealloc(b->lo, n * widest * sizeof(uint16_t), &failed);
        b->hi2 = xrealloc(b->hi2, n * b->I * sizeof(uint16_t), &failed);
        b->lo2 = xrealloc(b->lo2, n * b->I * sizeof(uint16_t), &failed);
        b->rope_cos = xrealloc(b->rope_cos, n * (b->hd / 2) * sizeof(float),
                               &failed);
        b->rope_sin = xrealloc(b->rope_sin, n * (b->hd / 2) * sizeof(float),
                               &failed);
        b->tile_start = xrealloc(b->tile_start, n * sizeof(int), &failed);
        b->tile_len = xrealloc(b->tile_len, n * sizeof(int), &failed);
        if (failed) {
            return -1;
        }
        b->cap = n_tok;
    }
    b->attn_tile = (int) (ATTN_SCORE_FLOATS
                          / kern_attention_scratch(b->n_rep, max_ctx,
                                                   b->block_size));
    b->attn_tile = b->attn_tile < 1 ? 1
                 : b->attn_tile > ATTN_TILE ? ATTN_TILE : b->attn_tile;
    if (kern_attention_scratch(b->attn_tile * b->n_rep, max_ctx, b->block_size)
        > b->scores_per_thread) {
        size_t per = kern_attention_scratch(b->attn_tile * b->n_rep, max_ctx,
                                            b->block_size);
        b->scores = xrealloc(b->scores, per * b->n_threads * sizeof(float),
                             &failed);
        if (failed) {
            return -1;
        }
        b->scores_per_thread = per;
    }
    if (n_logits > b->logit_cap) {
        size_t n = (size_t) n_logits * b->H;
        b->final_rows = xrealloc(b->final_rows, n * sizeof(float), &failed);
        b->final_hi = xrealloc(b->final_hi, n * sizeof(uint16_t), &failed);
        b->final_lo = xrealloc(b->final_lo, n * sizeof(uint16_t), &failed);
        if (failed) {
            return -1;
        }
        b->logit_cap = n_logits;
    }
    return 0;
}

static int tok_seq_ensure(cpu_backend *b, int n)
{
    int32_t *p;

    if (b->tok_seq != NULL && n <= b->tok_cap) {
        return 0;
    }
    p = realloc(b->tok_seq, (size_t) (n > 0 ? n : 1) * sizeof(int32_t));
    if (p == NULL) {
        return -1;
    }
    b->tok_seq = p;
    b->tok_cap = n;
    return 0;
}

/* Every index the forward will use, checked before any work: a bad batch
 * is an error, never an out-of-bounds access. */
static int validate_batch(cpu_backend *b, const llm_batch *bt, int *max_ctx,
                          char *err, size_t errlen)
{
    *max_ctx = 1;
    if (b->kv == NULL) {
        snprintf(err, errlen, "cpu backend: forward before kv_alloc");
        return -1;
    }
    if (bt->n_tokens < 0 || bt->n_seqs < 0 || bt->n_logits < 0
        || (bt->n_tokens > 0 && bt->n_seqs < 1)
        || bt->seq_start[0] != 0 || bt->seq_start[bt->n_seqs] != bt->n_tokens
        || bt->max_blocks < 1) {
        snprintf(err, errlen, "cpu backend: malformed batch (%d tokens, %d "
                 "sequences)", bt->n_tokens, bt->n_seqs);
        return -1;
    }
    if (tok_seq_ensure(b, bt->n_tokens) != 0) {
        snprintf(err, errlen, "cpu backend: out of memory");
        return -1;
    }
    for (int s = 0; s < bt->n_seqs; s++) {
        int a = bt->seq_start[s], e = bt->seq_start[s + 1];
        const int32_t *table = bt->block_tables + (size_t) s * bt->max_blocks;
        if (e < a || e > bt->n_tokens) {
            snprintf(err, errlen, "cpu backend: sequence %d has a bad token "
                     "range [%d, %d)", s, a, e);
            return -1;
        }
        for (int i = a; i < e; i++) {
            int pos = bt->positions[i];
            b->tok_seq[i] = s;
            if (pos < 0 || pos >= bt->seq_len[s]
                || pos / b->block_size >= bt->max_blocks) {
                snprintf(err, errlen, "cpu backend: token %d of sequence %d "
                         "has position %d (context %d, %d blocks)", i, s, pos,
                         bt->seq_len[s], bt->max_blocks);
                return -1;
            }
            if (bt->token_ids[i] < 0 || bt->token_ids[i] >= b->vocab) {
                snprintf(err, errlen, "cpu backend: token id %d out of the "
                         "vocabulary", bt->token_ids[i]);
                return -1;
            }
            for (int k = 0; k <= pos / b->block_size; k++) {
                if (table[k] < 0 || table[k] >= b->n_blocks) {
                    snprintf(err, errlen, "cpu backend: sequence %d block "
                             "table entry %d is %d (pool has %d blocks)", s,
                             k, table[k], b->n_blocks);
                    return -1;
                }
            }
            if (pos + 1 > *max_ctx) {
                *max_ctx = pos + 1;
            }
        }
    }
    for (int i = 0; i < bt->n_logits; i++) {
        if (bt->logit_rows[i] < 0 || bt->logit_rows[i] >= bt->n_tokens) {
            snprintf(err, errlen, "cpu backend: logit row %d out of the "
                     "batch", bt->logit_rows[i]);
            return -1;
        }
    }
    return 0;
}

/* Splits the chunk's tokens into attention tiles: runs of consecutive
 * positions of one sequence, at most ATTN_TILE long. */
static void build_tiles(cpu_backend *b, const llm_batch *bt, int c0, int n)
{
    b->n_tiles = 0;
    for (int t = 0; t < n; t++) {
        int bi = c0 + t;
        int k = b->n_tiles - 1;
        if (t > 0 && b->tok_seq[bi] == b->tok_seq[bi - 1]
            && bt->positions[bi] == bt->positions[bi - 1] + 1
            && b->tile_len[k] < b->attn_tile) {
            b->tile_len[k]++;
            continue;
        }
        b->tile_start[b->n_tiles] = t;
        b->tile_len[b->n_tiles] = 1;
        b->n_tiles++;
    }
}

static void layer_forward(cpu_backend *b, tok_job *j)
{
    const cpu_layer *L = &b->layers[j->layer];
    int n = j->n;
    const uint16_t *hi = b->split ? b->hi : NULL, *lo = b->split ? b->lo : NULL;
    mm_target t[3];

    j->add_tmp = j->layer > 0;
    run_tokens(b, j, TOK_INPUT_NORM);
    t[0] = (mm_target) { &L->q, b->q, (size_t) b->Q };
    t[1] = (mm_target) { &L->k, b->k, (size_t) b->KV };
    t[2] = (mm_target) { &L->v, b->v, (size_t) b->KV };
    run_matmuls(b, t, 3, b->xn, hi, lo, n, b->H, 0);
    if (n <= DECODE_FUSED_TOKENS) {
        run_heads(b, j);
    } else {
        run_tokens(b, j, TOK_QKV_POST);
        run_tokens(b, j, TOK_ATTN);
    }
    t[0] = (mm_target) { &L->o, b->tmp, (size_t) b->H };
    run_matmuls(b, t, 1, b->att, hi, lo, n, b->Q, 0);
    run_tokens(b, j, TOK_POST_NORM);
    t[0] = (mm_target) { &L->gate, b->g, (size_t) b->I };
    t[1] = (mm_target) { &L->up, b->u, (size_t) b->I };
    run_matmuls(b, t, 2, b->xn, hi, lo, n, b->H, 1);
    t[0] = (mm_target) { &L->down, b->tmp, (size_t) b->H };
    run_matmuls(b, t, 1, b->g, b->split ? b->hi2 : NULL,
                b->split ? b->lo2 : NULL, n, b->I, 0);
    /* the down projection's residual is added by the next layer's
     * TOK_INPUT_NORM pass, or after the last layer */
}

static int cpu_forward(llm_backend *base, const llm_batch *bt, float *logits,
                       char *err, size_t errlen)
{
    cpu_backend *b = (cpu_backend *) base;
    int max_ctx, chunk;

    if (validate_batch(b, bt, &max_ctx, err, errlen) != 0) {
        return -1;
    }
    if (bt->n_tokens == 0) {
        return 0;
    }
    /* producers split activations for the matmuls only when every layer
     * matrix takes the bf16 path (the ISA can be lowered at run time) */
    b->split = 1;
    for (int l = 0; l < b->n_layers; l++) {
        const cpu_layer *L = &b->layers[l];
        const kern_matrix *ms[] = { &L->q, &L->k, &L->v, &L->o, &L->gate,
                                    &L->up, &L->down };
        for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
            b->split &= kern_wants_split(ms[i]->dtype);
        }
    }
    chunk = bt->n_tokens < CPU_CHUNK_TOKENS ? bt->n_tokens : CPU_CHUNK_TOKENS;
    if (ensure_scratch(b, chunk, max_ctx, bt->n_logits) != 0) {
        snprintf(err, errlen, "cpu backend: out of memory for a %d-token "
                 "batch", bt->n_tokens);
        return -1;
    }
    for (int c0 = 0; c0 < bt->n_tokens; c0 += chunk) {
        tok_job j;
        int n = bt->n_tokens - c0 < chunk ? bt->n_tokens - c0 : chunk;

        memset(&j, 0, sizeof(j));
        j.b = b;
        j.batch = bt;
        j.c0 = c0;
        j.n = n;
        build_tiles(b, bt, c0, n);
        for (int t = 0; t < n; t++) {
            int bi = c0 + t;
            kern_row_to_f32(&b->embed, bt->token_ids[bi], b->x + (size_t) t * b->H);
            rope_token(b, bt->positions[bi], bt->seq_len[b->tok_seq[bi]],
                       b->rope_cos + (size_t) t * (b->hd / 2),
                       b->rope_sin + (size_t) t * (b->hd / 2));
        }
        for (int l = 0; l < b->n_layers; l++) {
            j.layer = l;
            layer_forward(b, &j);
        }
        for (size_t i = 0; i < (size_t) n * b->H; i++) {
            b->x[i] += b->tmp[i];
        }
        for (int i = 0; i < bt->n_logits; i++) {
            int r = bt->logit_rows[i];
            if (r >= c0 && r < c0 + n) {
                kern_rmsnorm(b->x + (size_t) (r - c0) * b->H, b->final_norm,
                             b->H, b->eps, b->final_rows + (size_t) i * b->H);
            }
        }
    }
    if (bt->n_logits > 0) {
        mm_job j;
        memset(&j, 0, sizeof(j));
        j.t[0] = (mm_target) { &b->lm_head, logits, (size_t) b->vocab };
        j.n = 1;
        j.a.x = b->final_rows;
        j.a.n = bt->n_logits;
        j.a.cols = b->H;
        if (kern_wants_split(b->lm_head.dtype)) {
            kern_split_bf16(b->final_rows, (size_t) bt->n_logits * b->H,
                            b->final_hi, b->final_lo);
            j.a.hi = b->final_hi;
            j.a.lo = b->fast ? NULL : b->final_lo;
        }
        j.block = mm_block_rows(b, &b->lm_head, bt->n_logits, b->vocab);
        j.tasks[1] = (b->vocab + j.block - 1) / j.block;
        if (bt->n_logits <= 1) {
            run_decode_job(b, &j, b->vocab, j.tasks[1]);
        } else {
            thread_pool_run(b->pool, j.tasks[1], mm_task, &j);
        }
    }
    /* the engine samples, detokenizes and publishes before the next pass:
     * let the workers sleep rather than spin on CPUs the server needs */
    thread_pool_park(b->pool);
    return 0;
}

/* ---- KV pool and lifetime ---------------------------------------------------- */

static size_t cpu_kv_block_bytes(llm_backend *base, int block_size)
{
    cpu_backend *b = (cpu_backend *) base;
    return (size_t) b->n_layers * 2 * (size_t) block_size * (size_t) b->KV
           * b->kv_esize;
}

/* Linux 5.14; older kernels answer EINVAL and the pages are touched */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* The KV pool is committed in parallel slices of this size. */
#define KV_COMMIT_SLICE ((size_t) 64 << 20)

typedef struct {
    uint8_t     *base;
    size_t       bytes;
    _Atomic int  err;          /* errno of a slice the kernel could not
                                * back (slices fail on any thread) */
} kv_commit_job;

static void kv_commit_task(void *ctx, int task, int thread)
{
    kv_commit_job *j = ctx;
    size_t off = (size_t) task * KV_COMMIT_SLICE;
    size_t len = j->bytes - off < KV_COMMIT_SLICE ? j->bytes - off
                                                  : KV_COMMIT_SLICE;
    long page = sysconf(_SC_PAGESIZE);

    (void) thread;
    if (madvise(j->base + off, len, MADV_POPULATE_WRITE) == 0) {
        return;
    }
    if (errno != EINVAL) {
        /* ENOMEM, EFAULT: the memory is not there to be had */
        atomic_store(&j->err, errno);
        return;
    }
    for (size_t p = 0; p < len; p += (size_t) (page > 0 ? page : 4096)) {
        ((volatile uint8_t *) j->base)[off + p] = 0;
    }
}

static int cpu_kv_alloc(llm_backend *base, int n_blocks, int block_size,
                        char *err, size_t errlen)
{
    cpu_backend *b = (cpu_backend *) base;
    size_t per = cpu_kv_block_bytes(base, block_size);
    kv_commit_job job;

    if (n_blocks < 1 || block_size < 1 || b->kv != NULL
        || per == 0 || (size_t) n_blocks > SIZE_MAX / per) {
        snprintf(err, errlen, "cpu backend: bad KV pool request (%d blocks "
                 "of %d tokens%s)", n_blocks, block_size,
                 b->kv ? ", already allocated" : "");
        return -1;
    }
    b->kv_bytes = per * (size_t) n_blocks;
    /* An anonymous mapping on huge pages where the kernel grants them
     * (decode reads every layer's context scattered over paged blocks:
     * with 4 KB pages each block of each head is a TLB miss.  Measured,
     * Qwen3-0.6B shape: the per-head phase of a decode step 2.1 -> 1.2 ms).
     *
     * Committed here, as vLLM and llama.cpp allocate theirs: a pool faulted
     * in as blocks are first used zeroed a 2 MB page in the middle of a
     * request whenever a block reached a fresh one (Qwen3-0.6B shape, 1 GB
     * pool, 32-token prompts: ~20 ms of kernel time per request and thread,
     * 10 % of the samples, TTFT swinging 117 / 150 ms from one request to
     * the next), and a pool the machine cannot back failed as an OOM kill
     * mid-request instead of an error at start-up. */
    b->kv = mmap(NULL, b->kv_bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b->kv == MAP_FAILED) {
        b->kv = NULL;
        snprintf(err, errlen, "cpu backend: cannot allocate %zu bytes of KV "
                 "cache (%d blocks): %s", b->kv_bytes, n_blocks,
                 strerror(errno));
        return -1;
    }
    (void) madvise(b->kv, b->kv_bytes, MADV_HUGEPAGE);
    job.base = (uint8_t *) b->kv;
    job.bytes = b->kv_bytes;
    atomic_init(&job.err, 0);
    thread_pool_run(b->pool,
                    (int) ((b->kv_bytes + KV_COMMIT_SLICE - 1) / KV_COMMIT_SLICE),
                    kv_commit_task, &job);
    thread_pool_park(b->pool);
    if (atomic_load(&job.err) != 0) {
        snprintf(err, errlen, "cpu backend: cannot commit %zu bytes of KV "
                 "cache (%d blocks): %s; lower kv_cache", b->kv_bytes,
                 n_blocks, strerror(atomic_load(&job.err)));
        munmap(b->kv, b->kv_bytes);
        b->kv = NULL;
        return -1;
    }
    b->n_blocks = n_blocks;
    b->block_size = block_size;
    return 0;
}

static size_t cpu_free_memory(llm_backend *base)
{
    (void) base;
    return 0;
}

static void cpu_destroy(llm_backend *base)
{
    cpu_backend *b = (cpu_backend *) base;

    if (b == NULL) {
        return;
    }
    thread_pool_destroy(b->pool);
    free(b->layers);
    free(b->small);
    free(b->inv_freq);
    if (b->kv != NULL) {
        munmap(b->kv, b->kv_bytes);
    }
    free(b->x); free(b->xn); free(b->tmp); free(b->q); free(b->k);
    free(b->v); free(b->att); free(b->g); free(b->u);
    free(b->hi); free(b->lo); free(b->hi2); free(b->lo2);
    free(b->rope_cos); free(b->rope_sin);
    free(b->tok_seq); free(b->scores);
    free(b->task_row);
    free(b->tile_start); free(b->tile_len);
    free(b->final_rows); free(b->final_hi); free(b->final_lo);
    free(b);
}

static const llm_backend_ops cpu_ops = {
    .name = "cpu",
    .kv_block_bytes = cpu_kv_block_bytes,
    .kv_alloc = cpu_kv_alloc,
    .forward = cpu_forward,
    .free_memory = cpu_free_memory,
    .destroy = cpu_destroy,
};

/* Widens a small vector (norm weight, bias) into *cursor; NULL if absent. */
static float *widen(const tensor_ref *t, float **cursor)
{
    float *dst;

    if (t->data == NULL) {
        return NULL;
    }
    dst = *cursor;
    kern_to_f32(t->dtype, t->data, (size_t) t->shape[0], dst);
    *cursor += t->shape[0];
    return dst;
}

llm_backend *cpu_backend_create(const model *m, int threads, char *err,
                                size_t errlen)
{
    return cpu_backend_create_ex(m, threads, CPU_PRECISION_EXACT, CPU_KV_F32,
                                 err, errlen);
}

llm_backend *cpu_backend_create_ex(const model *m, int threads,
                                   cpu_precision precision,
                                   cpu_kv_dtype kv_dtype, char *err,
                                   size_t errlen)
{
    const model_config *c = &m->cfg;
    cpu_backend *b;
    size_t small_n;
    float *cur;

    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int) n : 1;
    }
    if (threads > 256) {
        snprintf(err, errlen, "cpu backend: threads=%d is more than 256",
                 threads);
        return NULL;
    }
    b = calloc(1, sizeof(*b));
    if (b == NULL) {
        snprintf(err, errlen, "cpu backend: out of memory");
        return NULL;
    }
    b->base.ops = &cpu_ops;
    b->base.m = m;
    b->fast = precision == CPU_PRECISION_FAST;
    b->kv_bf16 = kv_dtype == CPU_KV_BF16;
    b->kv_esize = b->kv_bf16 ? sizeof(uint16_t) : sizeof(float);
    b->H = c->hidden_size;
    b->hd = c->head_dim;
    b->n_heads = c->n_heads;
    b->n_kv = c->n_kv_heads;
    b->n_rep = c->n_heads / c->n_kv_heads;
    b->Q = c->n_heads * c->head_dim;
    b->KV = c->n_kv_heads * c->head_dim;
    b->I = c->intermediate_size;
    b->vocab = c->vocab_size;
    b->n_layers = c->n_layers;
    b->eps = c->rms_norm_eps;
    b->embed = mat_of(&m->embed);
    b->lm_head = mat_of(&m->lm_head);
    small_n = (size_t) b->H
              + (size_t) c->n_layers * (2 * (size_t) b->H + 2 * (size_t) b->hd
                                        + (size_t) b->Q + 2 * (size_t) b->KV);
    b->small = malloc(small_n * sizeof(float));
    b->layers = calloc((size_t) c->n_layers, sizeof(*b->layers));
    b->inv_freq = malloc((size_t) (b->hd / 2) * sizeof(float));
    if (b->small == NULL || b->layers == NULL || b->inv_freq == NULL) {
        snprintf(err, errlen, "cpu backend: out of memory");
        cpu_destroy(&b->base);
        return NULL;
    }
    cur = b->small;
    b->final_norm = widen(&m->final_norm, &cur);
    for (int l = 0; l < c->n_layers; l++) {
        const layer_weights *w = &m->layers[l];
        cpu_layer *L = &b->layers[l];
        L->input_norm = widen(&w->input_norm, &cur);
        L->post_norm = widen(&w->post_norm, &cur);
        L->q_norm = c->qk_norm ? widen(&w->q_norm, &cur) : NULL;
        L->k_norm = c->qk_norm ? widen(&w->k_norm, &cur) : NULL;
        L->q_bias = c->attention_bias ? widen(&w->q_bias, &cur) : NULL;
        L->k_bias = c->attention_bias ? widen(&w->k_bias, &cur) : NULL;
        L->v_bias = c->attention_bias ? widen(&w->v_bias, &cur) : NULL;
        L->q = mat_of(&w->q_proj);
        L->k = mat_of(&w->k_proj);
        L->v = mat_of(&w->v_proj);
        L->o = mat_of(&w->o_proj);
        L->gate = mat_of(&w->gate_proj);
        L->up = mat_of(&w->up_proj);
        L->down = mat_of(&w->down_proj);
    }
    rope_init(b, c);
    b->pool = thread_pool_create(threads, err, errlen);
    if (b->pool == NULL) {
        cpu_destroy(&b->base);
        return NULL;
    }
    b->n_threads = thread_pool_size(b->pool);
    return &b->base;
}
