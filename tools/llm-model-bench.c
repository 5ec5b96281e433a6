/*
 * llm-model-bench: speed of the CPU forward pass against this machine's
 * memory-bandwidth roofline.
 *
 *   llm-model-bench MODEL_DIR [--dummy] [--threads N] [--prompt 16]
 *                   [--gen 128] [--prefill 512] [--runs 3] [--seed S] [--fast]
 *                   [--kv-bf16]
 *
 * Once: the huge-page coverage of the weights and of the bandwidth buffer,
 * and the 1-thread and N-thread read bandwidth.  Per run: the N-thread
 * read bandwidth (a stream over a buffer at least as large as the
 * weights), batch-1 decode (--gen tokens after a --prompt-token prompt,
 * greedy) and its roofline ratio tok/s / (bandwidth / weight bytes read
 * per token), the prefill speed of one --prefill-token prompt, and the
 * share of the threads' CPU time each phase got (a warning when decode got
 * less than 90%: the machine was busy), and the decode kernel alone over
 * the same bytes (measure_kernel: the ceiling of the roofline ratio).
 * Prints best and median over the runs, and the RSS after loading.
 * --fast: the backend's fast precision (bf16 activations, as llama.cpp);
 * the default is the exact precision the server uses.  --kv-bf16: the KV
 * cache in bf16 (kv_cache_dtype=bfloat16); the default is f32.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "cpu_kernels.h"
#include "model.h"
#include "thread_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define BLOCK_SIZE 16

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

/* CPU seconds of the whole process: with wall time, it tells how much of
 * the machine the run actually got (the development machine is shared). */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;

    if (f == NULL) {
        return -1;
    }
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
        }
    }
    fclose(f);
    return kb;
}

/* ---- read bandwidth --------------------------------------------------------- */

/*
 * The roofline's bandwidth: what the pool's threads read together from a
 * buffer larger than the weights, with the loads decode uses (AVX-512
 * when the bf16 kernels run) and the pages decode has (huge pages where
 * the kernel grants them: the report says how many of both were granted).
 * The buffer is allocated and faulted in once, so every run reads the same
 * pages.  The buffer is cut into 1 MB pieces taken from the pool's shared
 * counter, as decode's row blocks are: a worker the scheduler parks does
 * not leave half of the buffer to one thread.
 */
#define BW_PIECE ((size_t) 1 << 20)

typedef struct {
    const uint8_t *buf;
    int            wide;          /* 1: AVX-512 loads, 0: AVX2, 2: AVX-512
                                   * loads in four streams */
    double         sink[256];
} bw_job;

#if defined(__x86_64__)
__attribute__((target("avx2")))
static double sum_avx2(const uint8_t *p, size_t n)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *) (p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *) (p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *) (p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *) (p + i + 96)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    return (double) _mm256_extract_epi64(a0, 0);
}

__attribute__((target("avx512f")))
static double sum_avx512(const uint8_t *p, size_t n)
{
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 256 <= n; i += 256) {
        a0 = _mm512_add_epi64(a0, _mm512_load_si512((const void *) (p + i)));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512((const void *) (p + i + 64)));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512((const void *) (p + i + 128)));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512((const void *) (p + i + 192)));
    }
    a0 = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
    return (double) _mm512_reduce_add_epi64(a0);
}

/* The decode kernel's pattern without its arithmetic: the four quarters
 * of the piece side by side, one 64-byte load from each per step. */
__attribute__((target("avx512f")))
static double sum_avx512_streams4(const uint8_t *p, size_t n)
{
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    size_t q = n / 4;
    for (size_t i = 0; i + 64 <= q; i += 64) {
        a0 = _mm512_add_epi64(a0, _mm512_load_si512((const void *) (p + i)));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512((const void *) (p + q + i)));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512((const void *) (p + 2 * q + i)));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512((const void *) (p + 3 * q + i)));
    }
    a0 = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
    return (double) _mm512_reduce_add_epi64(a0);
}
#endif

static void bw_task(void *ctx, int task, int thread)
{
    bw_job *j = ctx;
    const uint8_t *p = j->buf + BW_PIECE * (size_t) task;
    double s = 0;

#if defined(__x86_64__)
    if (j->wide == 2 && kern_detect_isa() >= KERN_ISA_AVX512BF16) {
        s = sum_avx512_streams4(p, BW_PIECE);
    } else if (j->wide && kern_detect_isa() >= KERN_ISA_AVX512BF16) {
        s = sum_avx512(p, BW_PIECE);
    } else if (kern_detect_isa() >= KERN_ISA_AVX2) {
        s = sum_avx2(p, BW_PIECE);
    } else
#endif
    {
        const uint64_t *q = (const uint64_t *) p;
        uint64_t acc = 0;
        for (size_t i = 0; i < BW_PIECE / 8; i++) {
            acc += q[i];
        }
        s = (double) acc;
    }
    j->sink[thread & 255] += s;
}

/* A buffer of at least `bytes` (whole pieces), huge pages requested as
 * for the dummy weights, faulted in. */
static uint8_t *bw_buffer(size_t *bytes)
{
    size_t n = (*bytes + BW_PIECE - 1) & ~(BW_PIECE - 1);
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED) {
        return NULL;
    }
    (void) madvise(p, n, MADV_HUGEPAGE);
    memset(p, 1, n);
    *bytes = n;
    return p;
}

/* Bytes per second the pool's threads read together over the whole
 * buffer with 256-bit (wide 0) or 512-bit loads (wide 1): the best of
 * `passes` passes after one warm-up pass. */
static double measure_width(thread_pool *pool, const uint8_t *buf,
                            size_t bytes, int passes, int wide)
{
    static bw_job j;
    double best = 0;

    j.buf = buf;
    j.wide = wide;
    for (int r = 0; r <= passes; r++) {
        double t0 = now(), dt;
        thread_pool_run(pool, (int) (bytes / BW_PIECE), bw_task, &j);
        dt = now() - t0;
        if (r > 0 && bytes / dt > best) {      /* first pass warms up */
            best = (double) bytes / dt;
        }
    }
    return best;
}

/*
 * The roofline's bandwidth: the best of the read patterns.  On the
 * development VM (AMD Zen 5, 2 vCPUs) 512-bit loads streamed at ~27 GB/s
 * with one or two threads while 256-bit loads reached ~38 GB/s with two;
 * and four streams a thread (each piece's quarters side by side, decode's
 * pattern) read 71-76 GB/s where one stream read 62-71 (2026-11-30 13:30
 * UTC; before, decode could exceed the "roofline" in the VM's slow
 * minutes).  The machine can deliver the highest figure, so the roofline
 * uses it: a pattern the kernel does not reach is a cost of the kernel,
 * not of the machine.
 */
static double measure_bandwidth(thread_pool *pool, const uint8_t *buf,
                                size_t bytes, int passes)
{
    double best = measure_width(pool, buf, bytes, passes, 0);

    if (kern_detect_isa() >= KERN_ISA_AVX512BF16) {
        for (int wide = 1; wide <= 2; wide++) {
            double bw = measure_width(pool, buf, bytes, passes, wide);
            best = bw > best ? bw : best;
        }
    }
    return best;
}

/*
 * The decode kernel alone: the bandwidth buffer read as one bf16 matrix
 * of `cols` columns, times one token's activations (split hi/lo, or hi
 * only with --fast), in 1 MB blocks over the pool as one ranged job --
 * decode's kernel and task shape without its ~110 joins a token, its
 * attention or its norms.  Its bandwidth over the read bandwidth is the
 * ceiling of decode's roofline ratio with this kernel on this machine.
 */
typedef struct {
    kern_matrix w;
    kern_acts   a;
    float      *y;
    int         blk;
} kernel_job;

static void kernel_task(void *ctx, int task, int thread)
{
    kernel_job *j = ctx;
    int r0 = task * j->blk;
    int r1 = r0 + j->blk < j->w.rows ? r0 + j->blk : j->w.rows;

    (void) thread;
    kern_matmul(&j->w, r0, r1, &j->a, 0, 1, j->y, (size_t) j->w.rows);
}

/* Bytes per second of the kernel over the buffer: the best of `passes`
 * after a warm-up pass; 0 without memory. */
static double measure_kernel(thread_pool *pool, const uint8_t *buf,
                             size_t bytes, int cols, int fast, int passes)
{
    kernel_job j;
    float *x = malloc((size_t) cols * sizeof(float));
    uint16_t *hi = malloc((size_t) cols * sizeof(uint16_t));
    uint16_t *lo = malloc((size_t) cols * sizeof(uint16_t));
    double best = 0;
    int n;

    memset(&j, 0, sizeof(j));
    j.w.dtype = DTYPE_BF16;
    j.w.data = buf;
    j.w.cols = cols;
    j.w.rows = (int) (bytes / ((size_t) cols * 2));
    j.y = malloc((size_t) j.w.rows * sizeof(float));
    if (x == NULL || hi == NULL || lo == NULL || j.y == NULL) {
        free(x);
        free(hi);
        free(lo);
        free(j.y);
        return 0;
    }
    for (int i = 0; i < cols; i++) {
        x[i] = (float) ((i * 37) % 101) / 101.0f - 0.5f;
    }
    kern_split_bf16(x, (size_t) cols, hi, fast ? NULL : lo);
    j.a.x = x;
    j.a.hi = hi;
    j.a.lo = fast ? NULL : lo;
    j.a.n = 1;
    j.a.cols = cols;
    j.blk = (int) (BW_PIECE / ((size_t) cols * 2)) & ~3;
    j.blk = j.blk < 16 ? 16 : j.blk;
    n = (j.w.rows + j.blk - 1) / j.blk;
    for (int r = 0; r <= passes; r++) {
        double t0 = now(), dt;
        thread_pool_run_ranged(pool, n, kernel_task, &j);
        dt = now() - t0;
        if (r > 0 && (double) j.w.rows * cols * 2 / dt > best) {
            best = (double) j.w.rows * cols * 2 / dt;
        }
    }
    free(x);
    free(hi);
    free(lo);
    free(j.y);
    return best;
}

/* kB of [p, p + n) that the kernel backs with transparent huge pages:
 * AnonHugePages of the mappings that overlap the range (all of a mapping
 * that overlaps only partly; -1 if /proc/self/smaps is unreadable). */
static long thp_kb(const void *p, size_t n)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    uintptr_t lo = (uintptr_t) p, hi = lo + n;
    int in = 0;
    long kb = 0;

    if (f == NULL) {
        return -1;
    }
    while (fgets(line, sizeof(line), f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-')
            < strchr(line, ' ')) {
            in = a < hi && b > lo;
            continue;
        }
        if (in && strncmp(line, "AnonHugePages:", 14) == 0) {
            kb += strtol(line + 14, NULL, 10);
        }
    }
    fclose(f);
    return kb;
}

/* ---- model runs --------------------------------------------------------------- */

static size_t matrix_bytes(const tensor_ref *t)
{
    return (size_t) t->shape[0] * (size_t) (t->ndim == 2 ? t->shape[1] : 1)
           * llm_dtype_size(t->dtype);
}

/* Weight bytes one decode step reads: every layer matrix and vector, the
 * final norm, the LM head, one embedding row. */
static size_t bytes_per_token(const model *m)
{
    size_t b = matrix_bytes(&m->final_norm) + matrix_bytes(&m->lm_head)
               + (size_t) m->cfg.hidden_size * llm_dtype_size(m->embed.dtype);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const layer_weights *w = &m->layers[l];
        const tensor_ref *ts[] = { &w->input_norm, &w->q_proj, &w->k_proj,
                                   &w->v_proj, &w->o_proj, &w->q_bias,
                                   &w->k_bias, &w->v_bias, &w->q_norm,
                                   &w->k_norm, &w->post_norm, &w->gate_proj,
                                   &w->up_proj, &w->down_proj };
        for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++) {
            if (ts[i]->data) {
                b += matrix_bytes(ts[i]);
            }
        }
    }
    return b;
}

/* Widens [*lo, *hi) to cover tensor t's bytes. */
static void cover(const tensor_ref *t, const uint8_t **lo, const uint8_t **hi)
{
    const uint8_t *p = t->data;

    if (p == NULL) {
        return;
    }
    if (*lo == NULL || p < *lo) {
        *lo = p;
    }
    if (*hi == NULL || p + matrix_bytes(t) > *hi) {
        *hi = p + matrix_bytes(t);
    }
}

/* The address range the model's matrices span (the dummy weights are one
 * mapping; safetensors files are mappings of their own). */
static void weight_range(const model *m, const uint8_t **lo,
                         const uint8_t **hi)
{
    *lo = NULL;
    *hi = NULL;
    cover(&m->embed, lo, hi);
    cover(&m->lm_head, lo, hi);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const layer_weights *w = &m->layers[l];
        cover(&w->q_proj, lo, hi);
        cover(&w->k_proj, lo, hi);
        cover(&w->v_proj, lo, hi);
        cover(&w->o_proj, lo, hi);
        cover(&w->gate_proj, lo, hi);
        cover(&w->up_proj, lo, hi);
        cover(&w->down_proj, lo, hi);
    }
}

typedef struct {
    llm_backend *be;
    int          vocab;
    int32_t     *table;
    int          max_blocks;
    float       *logits;
} runner;

/* Runs n tokens at positions [pos0, pos0 + n) of the one sequence;
 * logits of the last token only. */
static int run(runner *r, const int32_t *ids, int n, int pos0)
{
    int32_t *pos = malloc((size_t) n * sizeof(int32_t));
    int32_t start[2] = { 0, n }, len = pos0 + n, row = n - 1;
    llm_batch b;
    char err[512];
    int rc;

    if (pos == NULL) {
        return -1;
    }
    for (int i = 0; i < n; i++) {
        pos[i] = pos0 + i;
    }
    memset(&b, 0, sizeof(b));
    b.n_tokens = n;
    b.token_ids = ids;
    b.positions = pos;
    b.n_seqs = 1;
    b.seq_start = start;
    b.seq_len = &len;
    b.block_tables = r->table;
    b.max_blocks = r->max_blocks;
    b.logit_rows = &row;
    b.n_logits = 1;
    rc = r->be->ops->forward(r->be, &b, r->logits, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "llm-model-bench: forward: %s\n", err);
    }
    free(pos);
    return rc;
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++) {
        best = x[i] > x[best] ? i : best;
    }
    return best;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t) n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double best_of(const double *v, int n)
{
    double b = v[0];
    for (int i = 1; i < n; i++) {
        b = v[i] > b ? v[i] : b;
    }
    return b;
}

static void usage(void)
{
    fprintf(stderr, "usage: llm-model-bench MODEL_DIR [--dummy] [--threads N] "
            "[--prompt 16] [--gen 128] [--prefill 512] [--runs 3] [--seed S] "
            "[--fast] [--kv-bf16]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    int dummy = 0, fast = 0, kv_bf16 = 0, threads = 0, prompt = 16, gen = 128, prefill = 512, runs = 3;
    uint64_t seed = 1;
    char err[512];
    model *m;
    llm_backend *be;
    thread_pool *pool;
    runner r;
    int32_t *ids;
    double t0, load_s, bw[64], dec[64], roof[64], pre[64];
    double dec_share[64], pre_share[64], bw_before, bw_after, kern_bw[64];
    int moved = 0;
    long rss_load, rss_ready;
    size_t bpt, bw_bytes;
    uint8_t *bw_buf;
    const uint8_t *w_lo, *w_hi;
    int ctx, n_blocks;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--dummy") == 0) {
            dummy = 1;
        } else if (strcmp(a, "--fast") == 0) {
            fast = 1;
        } else if (strcmp(a, "--kv-bf16") == 0) {
            kv_bf16 = 1;
        } else if (i + 1 < argc && strcmp(a, "--threads") == 0) {
            threads = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--prompt") == 0) {
            prompt = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--gen") == 0) {
            gen = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--prefill") == 0) {
            prefill = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--runs") == 0) {
            runs = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(a, "--seed") == 0) {
            seed = strtoull(argv[++i], NULL, 10);
        } else if (a[0] != '-' && dir == NULL) {
            dir = a;
        } else {
            usage();
        }
    }
    if (dir == NULL || prompt < 1 || gen < 1 || prefill < 1 || runs < 1
        || runs > 64 || threads < 0) {
        usage();
    }
    t0 = now();
    m = model_load(dir, dummy, seed, err, sizeof(err));
    if (m == NULL) {
        fprintf(stderr, "llm-model-bench: %s\n", err);
        return 1;
    }
    load_s = now() - t0;
    rss_load = rss_kb();
    be = cpu_backend_create_ex(m, threads, fast ? CPU_PRECISION_FAST
                                                : CPU_PRECISION_EXACT,
                               kv_bf16 ? CPU_KV_BF16 : CPU_KV_F32,
                               err, sizeof(err));
    if (be == NULL) {
        fprintf(stderr, "llm-model-bench: %s\n", err);
        return 1;
    }
    if (threads == 0) {
        threads = (int) sysconf(_SC_NPROCESSORS_ONLN);
    }
    ctx = (prompt + gen > prefill ? prompt + gen : prefill);
    r.max_blocks = (ctx + BLOCK_SIZE - 1) / BLOCK_SIZE;
    n_blocks = r.max_blocks;
    if (be->ops->kv_alloc(be, n_blocks, BLOCK_SIZE, err, sizeof(err)) != 0) {
        fprintf(stderr, "llm-model-bench: %s\n", err);
        return 1;
    }
    r.be = be;
    r.vocab = m->cfg.vocab_size;
    r.table = malloc((size_t) r.max_blocks * sizeof(int32_t));
    r.logits = malloc((size_t) r.vocab * sizeof(float));
    ids = malloc((size_t) ctx * sizeof(int32_t));
    pool = thread_pool_create(threads, err, sizeof(err));
    if (r.table == NULL || r.logits == NULL || ids == NULL || pool == NULL) {
        fprintf(stderr, "llm-model-bench: out of memory\n");
        return 1;
    }
    for (int i = 0; i < r.max_blocks; i++) {
        r.table[i] = r.max_blocks - 1 - i;   /* paged, not contiguous */
    }
    for (int i = 0; i < ctx; i++) {
        ids[i] = (int32_t) ((i * 7919 + 13) % (r.vocab > 151000 ? 151000 : r.vocab));
    }
    bpt = bytes_per_token(m);
    {
        /* the machine's load when the run starts: numbers from a shared
         * machine mean little without it */
        FILE *f = fopen("/proc/loadavg", "r");
        char la[128];
        if (f != NULL) {
            if (fgets(la, sizeof(la), f) != NULL) {
                la[strcspn(la, "\n")] = '\0';
                printf("load average at start: %s\n", la);
            }
            fclose(f);
        }
    }
    printf("model %s%s: %d layers, hidden %d, vocab %d; weights read per "
           "token %.3f GB; kernels %s, %s precision, KV cache %s; threads "
           "%d\n", dir, dummy ? " (dummy weights)" : "", m->cfg.n_layers,
           m->cfg.hidden_size, r.vocab, bpt / 1e9,
           kern_isa_name(kern_get_isa()), fast ? "fast" : "exact",
           kv_bf16 ? "bf16" : "f32", threads);
    /* warm-up: touch every weight page, and the KV pool and scratch a
     * prefill uses, once: the runs measure the steady state, not page
     * faults of first use */
    if (run(&r, ids, prefill, 0) != 0 || run(&r, ids, prompt, 0) != 0) {
        return 1;
    }
    rss_ready = rss_kb();
    printf("load %.2f s; RSS after load %.1f MB, after backend + KV pool "
           "(%d blocks) + first forward %.1f MB\n", load_s, rss_load / 1024.0,
           n_blocks, rss_ready / 1024.0);
    /* after the RSS figures: the buffer is the benchmark's, not the
     * model's */
    weight_range(m, &w_lo, &w_hi);
    /* at least the weights: a smaller buffer could hide in a larger L3 of
     * another machine, and must cover as many pages as decode touches */
    bw_bytes = bpt > ((size_t) 1 << 30) ? bpt : (size_t) 1 << 30;
    bw_buf = bw_buffer(&bw_bytes);
    if (bw_buf == NULL) {
        fprintf(stderr, "llm-model-bench: cannot allocate the %zu-byte "
                "bandwidth buffer: %s\n", bw_bytes, strerror(errno));
        return 1;
    }
    {
        /* huge pages decide both the bandwidth and decode's speed (TLB
         * misses): a roofline ratio means something only when weights and
         * buffer got the same kind of pages */
        long wk = thp_kb(w_lo, (size_t) (w_hi - w_lo));
        long bk = thp_kb(bw_buf, bw_bytes);
        FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
        char thp[128] = "?";
        if (f != NULL) {
            if (fgets(thp, sizeof(thp), f) == NULL) {
                snprintf(thp, sizeof(thp), "?");
            }
            thp[strcspn(thp, "\n")] = '\0';
            fclose(f);
        }
        /* file-backed weights (safetensors) live in the page cache:
         * AnonHugePages does not count them */
        printf("transparent huge pages (%s): %s weights %.0f%% of %.0f MB, "
               "bandwidth buffer %.0f%% of %.0f MB\n", thp,
               dummy ? "dummy" : "file-mapped (not anonymous memory)",
               wk < 0 ? -1.0 : 100.0 * wk * 1024 / (double) (w_hi - w_lo),
               (w_hi - w_lo) / 1e6,
               bk < 0 ? -1.0 : 100.0 * bk * 1024 / (double) bw_bytes,
               bw_bytes / 1e6);
    }
    {
        thread_pool *one = thread_pool_create(1, err, sizeof(err));
        if (one != NULL) {
            printf("read bandwidth (%.0f MB buffer): 256-bit loads 1 thread "
                   "%.1f GB/s, %d threads %.1f GB/s; 512-bit loads 1 thread "
                   "%.1f GB/s, %d threads %.1f GB/s; 512-bit loads in four "
                   "streams 1 thread %.1f GB/s, %d threads %.1f GB/s (the "
                   "roofline takes the best)\n", bw_bytes / 1e6,
                   measure_width(one, bw_buf, bw_bytes, 2, 0) / 1e9, threads,
                   measure_width(pool, bw_buf, bw_bytes, 2, 0) / 1e9,
                   measure_width(one, bw_buf, bw_bytes, 2, 1) / 1e9, threads,
                   measure_width(pool, bw_buf, bw_bytes, 2, 1) / 1e9,
                   measure_width(one, bw_buf, bw_bytes, 2, 2) / 1e9, threads,
                   measure_width(pool, bw_buf, bw_bytes, 2, 2) / 1e9);
            thread_pool_destroy(one);
        }
    }
    for (int k = 0; k < runs; k++) {
        int32_t next;
        double td, tp, cd, cp;

        bw_before = measure_bandwidth(pool, bw_buf, bw_bytes, 3);
        if (run(&r, ids, prompt, 0) != 0) {
            return 1;
        }
        next = argmax(r.logits, r.vocab);
        td = now();
        cd = cpu_now();
        for (int g = 0; g < gen; g++) {
            if (run(&r, &next, 1, prompt + g) != 0) {
                return 1;
            }
            next = argmax(r.logits, r.vocab);
        }
        td = now() - td;
        cd = cpu_now() - cd;
        /* The VM's bandwidth can move by half within minutes: measured on
         * both sides of decode, the roofline takes their mean, and a run
         * whose two readings differ by more than 10% is flagged (its
         * ratio compares decode with a machine it may not have met). */
        bw_after = measure_bandwidth(pool, bw_buf, bw_bytes, 3);
        bw[k] = (bw_before + bw_after) / 2;
        kern_bw[k] = measure_kernel(pool, bw_buf, bw_bytes,
                                    m->cfg.hidden_size, fast, 3);
        dec[k] = gen / td;
        dec_share[k] = cd / (td * threads);
        roof[k] = dec[k] / (bw[k] / (double) bpt);
        tp = now();
        cp = cpu_now();
        if (run(&r, ids, prefill, 0) != 0) {
            return 1;
        }
        tp = now() - tp;
        cp = cpu_now() - cp;
        pre[k] = prefill / tp;
        pre_share[k] = cp / (tp * threads);
        moved += fabs(bw_after - bw_before) > 0.1 * bw_before;
        printf("run %d: bandwidth %.1f GB/s (%.1f before decode, %.1f "
               "after%s; roofline %.1f tok/s); decode "
               "%.2f tok/s = %.1f%% of roofline; kernel alone %.1f GB/s = "
               "%.1f%% (decode's ceiling); prefill %d: %.1f tok/s; "
               "CPU share of %d threads: decode %.0f%%, prefill %.0f%%\n",
               k + 1, bw[k] / 1e9, bw_before / 1e9, bw_after / 1e9,
               fabs(bw_after - bw_before) > 0.1 * bw_before ? ": MOVED" : "",
               bw[k] / (double) bpt, dec[k],
               100 * roof[k], kern_bw[k] / 1e9, 100 * kern_bw[k] / bw[k],
               prefill, pre[k], threads, 100 * dec_share[k],
               100 * pre_share[k]);
        kern_bw[k] /= bw[k];
        fflush(stdout);
    }
    {
        /* a run that did not get the whole of its threads measured the
         * machine's other tenants as much as this code (and with Linux's
         * autogroup scheduling, other sessions' `nice` does not keep them
         * out of the way) */
        int busy = 0;
        for (int k = 0; k < runs; k++) {
            busy += dec_share[k] < 0.9;
        }
        if (moved > 0) {
            printf("WARNING: in %d of %d runs the bandwidth before and after "
                   "decode differed by more than 10%%: the machine changed "
                   "during those runs\n", moved, runs);
        }
        if (busy > 0) {
            printf("WARNING: %d of %d runs got less than 90%% of %d CPUs "
                   "during decode: the machine is busy, these numbers are "
                   "not its own\n", busy, runs, threads);
        }
    }
    printf("best:   decode %.2f tok/s, roofline ratio %.1f%%, prefill %.1f "
           "tok/s, bandwidth %.1f GB/s, kernel alone %.1f%%\n",
           best_of(dec, runs), 100 * best_of(roof, runs), best_of(pre, runs),
           best_of(bw, runs) / 1e9, 100 * best_of(kern_bw, runs));
    printf("median: decode %.2f tok/s, roofline ratio %.1f%%, prefill %.1f "
           "tok/s, bandwidth %.1f GB/s, kernel alone %.1f%%\n",
           median(dec, runs), 100 * median(roof, runs), median(pre, runs),
           median(bw, runs) / 1e9, 100 * median(kern_bw, runs));
    printf("RSS after the runs (weights, KV pool, scratch of a %d-token "
           "prefill; not the bandwidth buffer): %.1f MB\n", prefill,
           (rss_kb() - (long) (bw_bytes / 1024)) / 1024.0);
    thread_pool_destroy(pool);
    munmap(bw_buf, bw_bytes);
    be->ops->destroy(be);
    model_free(m);
    free(r.table);
    free(r.logits);
    free(ids);
    return 0;
}
