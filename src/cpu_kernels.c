/*
 * CPU kernels, see cpu_kernels.h.  SIMD variants are compiled with
 * function-level target attributes, so the file builds with the project's
 * generic flags and each path runs only where cpuid says it may.
 */
#include "cpu_kernels.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define KERN_X86 1
#else
#define KERN_X86 0
#endif


/* ---- ISA selection ----------------------------------------------------- */

/* -1 until first use; atomics because the first use may come from any
 * compute thread (every thread computes the same value). */
static _Atomic int isa_detected = -1;
static _Atomic int isa_current = -1;

kern_isa kern_detect_isa(void)
{
    int isa = isa_detected;

    if (isa >= 0) {
        return (kern_isa) isa;
    }
    isa = KERN_ISA_SCALAR;
#if KERN_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
        && __builtin_cpu_supports("f16c")) {
        isa = KERN_ISA_AVX2;
        if (__builtin_cpu_supports("avx512f")
            && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512dq")
            && __builtin_cpu_supports("avx512bf16")) {
            isa = KERN_ISA_AVX512BF16;
        }
    }
#endif
    isa_detected = isa;
    return (kern_isa) isa;
}

kern_isa kern_get_isa(void)
{
    int isa = isa_current;

    if (isa < 0) {
        isa = (int) kern_detect_isa();
        isa_current = isa;
    }
    return (kern_isa) isa;
}

kern_isa kern_set_isa(kern_isa want)
{
    kern_isa best = kern_detect_isa();

    isa_current = (int) (want > best ? best : want);
    return (kern_isa) isa_current;
}

const char *kern_isa_name(kern_isa isa)
{
    switch (isa) {
    case KERN_ISA_AVX512BF16: return "avx512bf16";
    case KERN_ISA_AVX2:       return "avx2";
    case KERN_ISA_SCALAR:     return "scalar";
    }
    return "?";
}

/* ---- scalar conversions ------------------------------------------------ */

static inline float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t) h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16_rne(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t) ((u >> 16) | 0x40);        /* quiet NaN */
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t) (u >> 16);
}

static inline float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t) (h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    float f;

    if (exp == 0) {
        /* zero or subnormal: man * 2^-24 */
        f = ldexpf((float) man, -24);
        return sign ? -f : f;
    }
    if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 112) << 23) | (man << 13);
    }
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t load_u16(const void *p, size_t i)
{
    uint16_t v;
    memcpy(&v, (const uint8_t *) p + 2 * i, 2);
    return v;
}

static inline float load_w(llm_dtype t, const void *p, size_t i)
{
    float f;
    switch (t) {
    case DTYPE_BF16: return bf16_to_f32(load_u16(p, i));
    case DTYPE_F16:  return f16_to_f32(load_u16(p, i));
    case DTYPE_F32:  memcpy(&f, (const uint8_t *) p + 4 * i, 4); return f;
    }
    return 0.0f;
}

void kern_to_f32(llm_dtype t, const void *src, size_t n, float *out)
{
    for (size_t i = 0; i < n; i++) {
        out[i] = load_w(t, src, i);
    }
}

void kern_row_to_f32(const kern_matrix *w, int row, float *out)
{
    size_t es = llm_dtype_size(w->dtype);
    kern_to_f32(w->dtype, (const uint8_t *) w->data
                              + (size_t) row * (size_t) w->cols * es,
                (size_t) w->cols, out);
}

/* ---- split -------------------------------------------------------------- */

#if KERN_X86
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void split_avx512(const float *x, size_t n, uint16_t *hi, uint16_t *lo)
{
    size_t i = 0;

    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m256bh h = _mm512_cvtneps_pbh(v);
        __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32((__m256i) h), 16));
        _mm256_storeu_si256((__m256i *) (hi + i), (__m256i) h);
        if (lo != NULL) {
            __m256bh l = _mm512_cvtneps_pbh(_mm512_sub_ps(v, hf));
            _mm256_storeu_si256((__m256i *) (lo + i), (__m256i) l);
        }
    }
    for (; i < n; i++) {
        hi[i] = f32_to_bf16_rne(x[i]);
        if (lo != NULL) {
            lo[i] = f32_to_bf16_rne(x[i] - bf16_to_f32(hi[i]));
        }
    }
}
#endif

void kern_split_bf16(const float *x, size_t n, uint16_t *hi, uint16_t *lo)
{
#if KERN_X86
    if (kern_get_isa() >= KERN_ISA_AVX512BF16) {
        split_avx512(x, n, hi, lo);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) {
        hi[i] = f32_to_bf16_rne(x[i]);
        if (lo != NULL) {
            lo[i] = f32_to_bf16_rne(x[i] - bf16_to_f32(hi[i]));
        }
    }
}

int kern_wants_split(llm_dtype t)
{
    return t == DTYPE_BF16 && kern_get_isa() >= KERN_ISA_AVX512BF16;
}

/* ---- matmul: scalar ------------------------------------------------------ */

static void matmul_scalar(const kern_matrix *w, int r0, int r1,
                          const kern_acts *a, int t0, int t1, float *y,
                          size_t ldy)
{
    size_t K = (size_t) w->cols;

    for (int t = t0; t < t1; t++) {
        const float *x = a->x + (size_t) t * K;
        for (int r = r0; r < r1; r++) {
            float acc = 0.0f;
            size_t base = (size_t) r * K;
            for (size_t k = 0; k < K; k++) {
                acc += load_w(w->dtype, w->data, base + k) * x[k];
            }
            y[(size_t) t * ldy + (size_t) r] = acc;
        }
    }
}

#if KERN_X86

/* ---- matmul: AVX2 + FMA (any weight dtype, widened to f32) -------------- */

#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))
#define BF16_TARGET \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define INLINE static inline __attribute__((always_inline))

/* Lanes of a 16-wide vector that hold the first n (clamped to [0, 16]). */
INLINE __mmask16 mask16(int n)
{
    return n >= 16 ? (__mmask16) 0xffff
         : n <= 0 ? (__mmask16) 0 : (__mmask16) ((1u << n) - 1);
}


AVX2_TARGET INLINE __m256 avx2_load8(llm_dtype t, const void *p, size_t i)
{
    switch (t) {
    case DTYPE_BF16: {
        __m128i h = _mm_loadu_si128((const __m128i *) ((const uint16_t *) p + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case DTYPE_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128(
            (const __m128i *) ((const uint16_t *) p + i)));
    case DTYPE_F32:
        return _mm256_loadu_ps((const float *) p + i);
    }
    return _mm256_setzero_ps();
}

AVX2_TARGET INLINE float avx2_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* R rows x T tokens; every (row, token) accumulates k-steps of 8 in one
 * vector, then its scalar tail: the same order for any R and T.  The
 * loops have constant trip counts once inlined; the pragmas make GCC
 * unroll them at -O2 so the accumulators live in registers. */
AVX2_TARGET INLINE void avx2_tile(llm_dtype dt, const void *W, size_t K, int r,
                                  int R, const float *X, int t, int T,
                                  float *y, size_t ldy)
{
    __m256 acc[4][4];
    float tail[4][4];
    size_t k, K8 = K & ~(size_t) 7;

#pragma GCC unroll 4
    for (int i = 0; i < R; i++) {
#pragma GCC unroll 4
        for (int j = 0; j < T; j++) {
            acc[i][j] = _mm256_setzero_ps();
            tail[i][j] = 0.0f;
        }
    }
    for (k = 0; k < K8; k += 8) {
        __m256 wv[4];
#pragma GCC unroll 4
        for (int i = 0; i < R; i++) {
            wv[i] = avx2_load8(dt, W, (size_t) (r + i) * K + k);
        }
#pragma GCC unroll 4
        for (int j = 0; j < T; j++) {
            __m256 xv = _mm256_loadu_ps(X + (size_t) (t + j) * K + k);
#pragma GCC unroll 4
            for (int i = 0; i < R; i++) {
                acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
            }
        }
    }
    for (; k < K; k++) {
        for (int i = 0; i < R; i++) {
            float wk = load_w(dt, W, (size_t) (r + i) * K + k);
            for (int j = 0; j < T; j++) {
                tail[i][j] += wk * X[(size_t) (t + j) * K + k];
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; i++) {
#pragma GCC unroll 4
        for (int j = 0; j < T; j++) {
            y[(size_t) (t + j) * ldy + (size_t) (r + i)] =
                avx2_hsum(acc[i][j]) + tail[i][j];
        }
    }
}

AVX2_TARGET static void matmul_avx2(const kern_matrix *w, int r0, int r1,
                                    const kern_acts *a, int t0, int t1,
                                    float *y, size_t ldy)
{
    size_t K = (size_t) w->cols;
    llm_dtype dt = w->dtype;

    for (int t = t0; t < t1; t += 4) {
        int nt = t1 - t < 4 ? t1 - t : 4;
        int r = r0;
        for (; r + 4 <= r1; r += 4) {
            switch (nt) {
            case 4: avx2_tile(dt, w->data, K, r, 4, a->x, t, 4, y, ldy); break;
            case 3: avx2_tile(dt, w->data, K, r, 4, a->x, t, 3, y, ldy); break;
            case 2: avx2_tile(dt, w->data, K, r, 4, a->x, t, 2, y, ldy); break;
            default: avx2_tile(dt, w->data, K, r, 4, a->x, t, 1, y, ldy); break;
            }
        }
        for (; r < r1; r++) {
            for (int j = 0; j < nt; j++) {
                avx2_tile(dt, w->data, K, r, 1, a->x, t + j, 1, y, ldy);
            }
        }
    }
}

/* ---- matmul: AVX-512 BF16 dot products ------------------------------------ */

/* R rows x T tokens.  Per (row, token) one accumulator takes, for every
 * k-step of 32, the hi product and then (exact mode, LO) the lo product;
 * the tail step is a masked load of the same shape, so the order never
 * depends on R or T. */
BF16_TARGET INLINE void bf16_step(__m512 acc[8][6], const uint16_t *W, size_t K,
                                  int r, int R, const uint16_t *XH,
                                  const uint16_t *XL, int LO, int t, int T,
                                  size_t k, __mmask32 m)
{
    __m512i wv[8];

#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
        wv[i] = _mm512_maskz_loadu_epi16(m, W + (size_t) (r + i) * K + k);
    }
#pragma GCC unroll 6
    for (int j = 0; j < T; j++) {
        __m512i h = _mm512_maskz_loadu_epi16(m, XH + (size_t) (t + j) * K + k);
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh) wv[i],
                                         (__m512bh) h);
        }
        if (LO) {
            __m512i l = _mm512_maskz_loadu_epi16(m, XL + (size_t) (t + j) * K + k);
#pragma GCC unroll 8
            for (int i = 0; i < R; i++) {
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh) wv[i],
                                             (__m512bh) l);
            }
        }
    }
}

/* The sums of four accumulators at once (lanes of a only ever meet lanes
 * of a, so each sum has the same bits whatever the other three hold). */
BF16_TARGET INLINE __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d)
{
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512 abcd = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(abcd),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(
                                 _mm512_castps_pd(abcd), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

BF16_TARGET INLINE void bf16_tile(const uint16_t *W, size_t K, int r, int R,
                                  const uint16_t *XH, const uint16_t *XL,
                                  int LO, int t, int T, float *y, size_t ldy)
{
    __m512 acc[8][6];
    size_t k = 0;

#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
#pragma GCC unroll 6
        for (int j = 0; j < T; j++) {
            acc[i][j] = _mm512_setzero_ps();
        }
    }
    for (; k + 32 <= K; k += 32) {
        bf16_step(acc, W, K, r, R, XH, XL, LO, t, T, k, (__mmask32) ~0u);
    }
    if (k < K) {
        bf16_step(acc, W, K, r, R, XH, XL, LO, t, T, k,
                  (__mmask32) ((1ULL << (K - k)) - 1));
    }
#pragma GCC unroll 6
    for (int j = 0; j < T; j++) {
        float *yr = y + (size_t) (t + j) * ldy + (size_t) r;
        if (R == 1) {
            __m512 z = _mm512_setzero_ps();
            _mm_store_ss(yr, reduce4(acc[0][j], z, z, z));
        } else {
#pragma GCC unroll 2
            for (int i = 0; i < R; i += 4) {
                _mm_storeu_ps(yr + i, reduce4(acc[i][j], acc[i + 1][j],
                                              acc[i + 2][j], acc[i + 3][j]));
            }
        }
    }
}

/* Decode (one token): rows r, r + S, r + 2S and r + 3S at once, per row
 * the same order as bf16_tile (hi then lo per 32-k step, masked tail,
 * reduce4), written out so the loop is four loads and four or eight dot
 * products with nothing else in it.  The caller walks r through the first
 * quarter of a block of rows, so each of the four rows advances through
 * its own quarter: four long sequential streams that the hardware
 * prefetchers follow.  Measured on the development machine (2 threads,
 * 1.2 GB, K = 1024 and 3072): 256-512 KB blocks as four streams keep
 * 92-100% of a plain read, where four adjacent rows per pass (four
 * streams of one row each, prefetched in software one pass ahead) kept
 * 67-80%; software prefetch on top of the four streams costs 3-10%. */
BF16_TARGET INLINE void bf16_rows4(const uint16_t *W, size_t K, int r,
                                   int S, const uint16_t *XH,
                                   const uint16_t *XL, int LO, float *y)
{
    const uint16_t *w0 = W + (size_t) r * K, *w1 = w0 + (size_t) S * K,
                   *w2 = w1 + (size_t) S * K, *w3 = w2 + (size_t) S * K;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    float out[4];
    size_t k = 0;

#define ROWS4_STEP(LOAD)                                                    \
    do {                                                                    \
        __m512bh h = (__m512bh) LOAD(XH + k);                               \
        __m512bh v0 = (__m512bh) LOAD(w0 + k);                              \
        __m512bh v1 = (__m512bh) LOAD(w1 + k);                              \
        __m512bh v2 = (__m512bh) LOAD(w2 + k);                              \
        __m512bh v3 = (__m512bh) LOAD(w3 + k);                              \
        /* keep the four rows in registers: without this GCC loads each     \
         * one again for the lo products */                                 \
        __asm__("" : "+v"(v0), "+v"(v1), "+v"(v2), "+v"(v3));               \
        a0 = _mm512_dpbf16_ps(a0, v0, h);                                   \
        a1 = _mm512_dpbf16_ps(a1, v1, h);                                   \
        a2 = _mm512_dpbf16_ps(a2, v2, h);                                   \
        a3 = _mm512_dpbf16_ps(a3, v3, h);                                   \
        if (LO) {                                                           \
            __m512bh l = (__m512bh) LOAD(XL + k);                           \
            a0 = _mm512_dpbf16_ps(a0, v0, l);                               \
            a1 = _mm512_dpbf16_ps(a1, v1, l);                               \
            a2 = _mm512_dpbf16_ps(a2, v2, l);                               \
            a3 = _mm512_dpbf16_ps(a3, v3, l);                               \
        }                                                                   \
    } while (0)

    /* full steps with plain loads (measured: masked loads with a full
     * mask cost ~10% of the stream here), the tail with a masked one */
#define FULL_LOAD(p) _mm512_loadu_si512((const void *) (p))
#define TAIL_LOAD(p) _mm512_maskz_loadu_epi16(tail, (p))
    for (; k + 32 <= K; k += 32) {
        ROWS4_STEP(FULL_LOAD);
    }
    if (k < K) {
        __mmask32 tail = (__mmask32) ((1ULL << (K - k)) - 1);
        ROWS4_STEP(TAIL_LOAD);
    }
#undef FULL_LOAD
#undef TAIL_LOAD
#undef ROWS4_STEP
    _mm_storeu_ps(out, reduce4(a0, a1, a2, a3));
    y[r] = out[0];
    y[r + S] = out[1];
    y[r + 2 * S] = out[2];
    y[r + 3 * S] = out[3];
}

BF16_TARGET INLINE void matmul_bf16_body(const kern_matrix *w, int r0, int r1,
                                         const kern_acts *a, int LO, int t0,
                                         int t1, float *y, size_t ldy)
{
    size_t K = (size_t) w->cols;
    const uint16_t *W = w->data, *XH = a->hi, *XL = a->lo;

    if (t1 - t0 == 1) {
        /* four streams, one through each quarter of the block */
        int S = (r1 - r0) / 4, r = r0;
        for (; r < r0 + S; r++) {
            bf16_rows4(W, K, r, S, XH + (size_t) t0 * K,
                       LO ? XL + (size_t) t0 * K : NULL, LO,
                       y + (size_t) t0 * ldy);
        }
        for (r = r0 + 4 * S; r < r1; r++) {
            bf16_tile(W, K, r, 1, XH, XL, LO, t0, 1, y, ldy);
        }
        return;
    }
    for (int t = t0; t < t1; t += 6) {
        int nt = t1 - t < 6 ? t1 - t : 6;
        int r = r0;
        for (; r + 4 <= r1; r += 4) {
            switch (nt) {
            case 6: bf16_tile(W, K, r, 4, XH, XL, LO, t, 6, y, ldy); break;
            case 5: bf16_tile(W, K, r, 4, XH, XL, LO, t, 5, y, ldy); break;
            case 4: bf16_tile(W, K, r, 4, XH, XL, LO, t, 4, y, ldy); break;
            case 3: bf16_tile(W, K, r, 4, XH, XL, LO, t, 3, y, ldy); break;
            case 2: bf16_tile(W, K, r, 4, XH, XL, LO, t, 2, y, ldy); break;
            default: bf16_tile(W, K, r, 4, XH, XL, LO, t, 1, y, ldy); break;
            }
        }
        for (; r < r1; r++) {
            for (int j = 0; j < nt; j++) {
                bf16_tile(W, K, r, 1, XH, XL, LO, t + j, 1, y, ldy);
            }
        }
    }
}

/* Exact (hi + lo) and fast (hi only) instantiations. */
BF16_TARGET static void matmul_bf16_exact(const kern_matrix *w, int r0,
                                          int r1, const kern_acts *a, int t0,
                                          int t1, float *y, size_t ldy)
{
    matmul_bf16_body(w, r0, r1, a, 1, t0, t1, y, ldy);
}

BF16_TARGET static void matmul_bf16_fast(const kern_matrix *w, int r0, int r1,
                                         const kern_acts *a, int t0, int t1,
                                         float *y, size_t ldy)
{
    matmul_bf16_body(w, r0, r1, a, 0, t0, t1, y, ldy);
}

#endif /* KERN_X86 */

void kern_matmul(const kern_matrix *w, int r0, int r1, const kern_acts *a,
                 int t0, int t1, float *y, size_t ldy)
{
#if KERN_X86
    kern_isa isa = kern_get_isa();

    if (isa >= KERN_ISA_AVX512BF16 && w->dtype == DTYPE_BF16 && a->hi) {
        if (a->lo) {
            matmul_bf16_exact(w, r0, r1, a, t0, t1, y, ldy);
        } else {
            matmul_bf16_fast(w, r0, r1, a, t0, t1, y, ldy);
        }
        return;
    }
    if (isa >= KERN_ISA_AVX2) {
        matmul_avx2(w, r0, r1, a, t0, t1, y, ldy);
        return;
    }
#endif
    matmul_scalar(w, r0, r1, a, t0, t1, y, ldy);
}

/* ---- element-wise -------------------------------------------------------- */

#if KERN_X86
/* Sum of squares in double (8 lanes twice per 16 floats, one fixed order
 * for a given n), then the same two rounded products per element as the
 * scalar code. */
BF16_TARGET static void rmsnorm_512(const float *x, const float *w, int n,
                                    float eps, float *out)
{
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    __m512 vinv;
    float inv;
    int i;

    for (i = 0; i < n; i += 16) {
        __m512 v = _mm512_maskz_loadu_ps(mask16(n - i), x + i);
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(
            _mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        s0 = _mm512_fmadd_pd(lo, lo, s0);
        s1 = _mm512_fmadd_pd(hi, hi, s1);
    }
    inv = 1.0f / sqrtf((float) (_mm512_reduce_add_pd(_mm512_add_pd(s0, s1))
                                / n) + eps);
    vinv = _mm512_set1_ps(inv);
    for (i = 0; i < n; i += 16) {
        __mmask16 m = mask16(n - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vinv);
        _mm512_mask_storeu_ps(out + i, m,
                              _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + i), v));
    }
}

/* The scalar rotation's four rounded products and two sums, 16 lanes. */
BF16_TARGET static void rope_512(float *x, int n_heads, int hd,
                                 const float *cos_, const float *sin_)
{
    int half = hd / 2;

    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t) h * hd;
        for (int i = 0; i < half; i += 16) {
            __mmask16 m = mask16(half - i);
            __m512 x1 = _mm512_maskz_loadu_ps(m, v + i);
            __m512 x2 = _mm512_maskz_loadu_ps(m, v + i + half);
            __m512 c = _mm512_maskz_loadu_ps(m, cos_ + i);
            __m512 sn = _mm512_maskz_loadu_ps(m, sin_ + i);
            _mm512_mask_storeu_ps(v + i, m, _mm512_sub_ps(_mm512_mul_ps(x1, c),
                                                          _mm512_mul_ps(x2, sn)));
            _mm512_mask_storeu_ps(v + i + half, m,
                                  _mm512_add_ps(_mm512_mul_ps(x2, c),
                                                _mm512_mul_ps(x1, sn)));
        }
    }
}
#endif

void kern_rmsnorm(const float *x, const float *w, int n, float eps,
                  float *out)
{
    /* double accumulation: the mean of squares is the one reduction whose
     * rounding would otherwise depend on the vector width */
    double ss = 0.0;
    float inv;

#if KERN_X86
    if (kern_get_isa() >= KERN_ISA_AVX512BF16) {
        rmsnorm_512(x, w, n, eps, out);
        return;
    }
#endif
    for (int i = 0; i < n; i++) {
        ss += (double) x[i] * (double) x[i];
    }
    inv = 1.0f / sqrtf((float) (ss / n) + eps);
    for (int i = 0; i < n; i++) {
        out[i] = w[i] * (x[i] * inv);
    }
}

void kern_rope(float *x, int n_heads, int hd, const float *cos_,
               const float *sin_)
{
    int half = hd / 2;

#if KERN_X86
    if (kern_get_isa() >= KERN_ISA_AVX512BF16) {
        rope_512(x, n_heads, hd, cos_, sin_);
        return;
    }
#endif
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t) h * hd;
        for (int i = 0; i < half; i++) {
            float x1 = v[i], x2 = v[i + half];
            /* q * cos + rotate_half(q) * sin, rounded as transformers does */
            float a = x1 * cos_[i], b = x2 * sin_[i];
            float c = x2 * cos_[i], d = x1 * sin_[i];
            v[i] = a - b;
            v[i + half] = c + d;
        }
    }
}

#if KERN_X86
/* expf for 16 lanes: Cephes' range reduction and degree-6 polynomial,
 * within 2 ulp of expf over the range softmax and SiLU use. */
BF16_TARGET INLINE __m512 exp512(__m512 x)
{
    const __m512 hi = _mm512_set1_ps(88.3762626647949f);
    const __m512 lo = _mm512_set1_ps(-88.3762626647949f);
    __m512 fx, z, y;

    x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
    z = _mm512_mul_ps(x, x);
    y = _mm512_set1_ps(1.9875691500E-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507E-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073E-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894E-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459E-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201E-1f));
    y = _mm512_fmadd_ps(y, z, x);
    y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, fx);
}

BF16_TARGET static void silu_mul_512(const float *g, const float *u, float *y,
                                     int n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    int i = 0;

    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16) 0xffff
                                  : (__mmask16) ((1u << (n - i)) - 1);
        __m512 gv = _mm512_maskz_loadu_ps(m, g + i);
        __m512 uv = _mm512_maskz_loadu_ps(m, u + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        __m512 s = _mm512_div_ps(gv, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(s, uv));
    }
}
#endif

void kern_silu_mul(const float *g, const float *u, float *y, int n)
{
#if KERN_X86
    if (kern_get_isa() >= KERN_ISA_AVX512BF16) {
        silu_mul_512(g, u, y, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++) {
        y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

/* ---- paged KV cache and attention ----------------------------------------- */

void kern_kv_write_head(const kern_kv *kv, int g, int block, int slot,
                        const float *k, const float *v)
{
    size_t span = ((size_t) block * kv->n_kv + (size_t) g)
                  * (size_t) kv->hd * (size_t) kv->bs;
    size_t vo = span + (size_t) slot * (size_t) kv->hd;

    if (kv->bf16) {
        uint16_t *kb = (uint16_t *) kv->k + span, *vb = (uint16_t *) kv->v + vo;
        for (int d = 0; d < kv->hd; d++) {
            kb[(size_t) d * kv->bs + (size_t) slot] = f32_to_bf16_rne(k[d]);
            vb[d] = f32_to_bf16_rne(v[d]);
        }
        return;
    }
    for (int d = 0; d < kv->hd; d++) {
        ((float *) kv->k)[span + (size_t) d * kv->bs + (size_t) slot] = k[d];
    }
    memcpy((float *) kv->v + vo, v, (size_t) kv->hd * sizeof(float));
}

void kern_prefetch(const void *p, size_t bytes)
{
#if KERN_X86
    const char *c = p;

    for (size_t o = 0; o < bytes; o += 64) {
        _mm_prefetch(c + o, _MM_HINT_T0);
    }
#else
    (void) p;
    (void) bytes;
#endif
}

/* Scores are kept for whole blocks: rows of blocks * bs floats. */
size_t kern_attention_scratch(int n_q, int ctx, int bs)
{
    size_t blocks = ((size_t) ctx + (size_t) bs - 1) / (size_t) bs;
    return (size_t) n_q * blocks * (size_t) bs;
}

static inline size_t kv_esize(const kern_kv *kv)
{
    return kv->bf16 ? 2 : 4;
}

/* Block `block` of KV head g: its K (transposed) and its V row `slot`,
 * as byte addresses (the element type is kv->bf16's). */
static inline const char *k_block(const kern_kv *kv, int32_t block, int g)
{
    return (const char *) kv->k
           + ((size_t) block * kv->n_kv + (size_t) g) * (size_t) kv->hd
             * (size_t) kv->bs * kv_esize(kv);
}

static inline const char *v_row(const kern_kv *kv, int32_t block, int g,
                                int slot)
{
    return (const char *) kv->v
           + ((((size_t) block * kv->n_kv + (size_t) g) * (size_t) kv->bs
               + (size_t) slot) * (size_t) kv->hd) * kv_esize(kv);
}

/* Element i of a K block or V row, widened. */
static inline float kv_get(const kern_kv *kv, const char *p, size_t i)
{
    float f;

    if (kv->bf16) {
        return bf16_to_f32(load_u16(p, i));
    }
    memcpy(&f, p + 4 * i, 4);
    return f;
}

/* Portable version: the same arithmetic order per (query, key) as the
 * AVX-512 one (dimension by dimension, one fused multiply-add each where
 * the compiler contracts), plain expf. */
static void attention_scalar(const kern_kv *kv, int g, const int32_t *table,
                             int pos0, int n_tok, int n_rep, float scale,
                             const float *q, size_t q_stride, float *sc,
                             float *out, size_t out_stride)
{
    int hd = kv->hd, bs = kv->bs, ctx_max = pos0 + n_tok;
    size_t L = kern_attention_scratch(1, ctx_max, bs);

    for (int i = 0; i < n_tok; i++) {
        int ctx = pos0 + i + 1;
        for (int r = 0; r < n_rep; r++) {
            const float *qv = q + (size_t) i * q_stride + (size_t) r * hd;
            float *s = sc + ((size_t) i * n_rep + (size_t) r) * L;
            float *o = out + (size_t) i * out_stride + (size_t) r * hd;
            float mx = -INFINITY, sum = 0.0f;
            for (int j = 0; j < ctx; j++) {
                const char *kb = k_block(kv, table[j / bs], g);
                float acc = 0.0f;
                for (int d = 0; d < hd; d++) {
                    acc += qv[d] * kv_get(kv, kb, (size_t) d * bs
                                                  + (size_t) (j % bs));
                }
                s[j] = acc * scale;
                mx = s[j] > mx ? s[j] : mx;
            }
            for (int j = 0; j < ctx; j++) {
                s[j] = expf(s[j] - mx);
                sum += s[j];
            }
            memset(o, 0, (size_t) hd * sizeof(float));
            for (int j = 0; j < ctx; j++) {
                const char *vr = v_row(kv, table[j / bs], g, j % bs);
                float p = s[j] / sum;
                for (int d = 0; d < hd; d++) {
                    o[d] += p * kv_get(kv, vr, (size_t) d);
                }
            }
        }
    }
}

#if KERN_X86
/* 16 cached K or V values at byte address p (lanes outside m: 0),
 * widened from bf16 (KV16) or loaded as f32. */
BF16_TARGET INLINE __m512 kv_load16(const char *p, __mmask16 m, const int KV16)
{
    if (KV16) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
    }
    return _mm512_maskz_loadu_ps(m, p);
}

/* Raw scores of key chunks ci .. ci + CN - 1 (16 keys each, clamped to
 * n_chunks) for every query, QN queries at a time: QN x CN accumulators,
 * each K load serving QN queries.  The next pass's K lines are asked for
 * during the first query group (the context is scattered over paged
 * blocks that the hardware prefetchers do not follow from one to the
 * next; measured, Qwen3-0.6B decode: attention 0.8 -> 0.5 ms a token per
 * thread with the V prefetch of pv_block). */
BF16_TARGET INLINE void scores_pass(const kern_kv *kv, int g,
                                    const int32_t *table, int cpb, int bs,
                                    int n_chunks, int ci, int n_q, int n_rep,
                                    const float *q, size_t q_stride, int hd,
                                    size_t L, __m512 vscale, float *sc,
                                    const int QN, const int CN,
                                    const int KV16)
{
    int nc = n_chunks - ci < CN ? n_chunks - ci : CN;
    size_t es = KV16 ? 2 : 4, row = (size_t) bs * es;  /* bytes a dimension */
    const char *kp[4], *pk[4];
    __mmask16 km[4];
    size_t so[4];

#pragma GCC unroll 4
    for (int u = 0; u < CN; u++) {
        int cc = ci + (u < nc ? u : 0);
        int b = cc / cpb, c = (cc % cpb) * 16;
        kp[u] = k_block(kv, table[b], g) + (size_t) c * es;
        km[u] = mask16(bs - c);
        so[u] = (size_t) b * bs + (size_t) c;
        cc = ci + CN + u;
        pk[u] = cc < n_chunks
                ? k_block(kv, table[cc / cpb], g) + (size_t) (cc % cpb) * 16 * es
                : NULL;
    }
    for (int qi = 0; qi < n_q; qi += QN) {
        int nq = n_q - qi < QN ? n_q - qi : QN;
        const float *qp[4];
        __m512 acc[4][4];
#pragma GCC unroll 4
        for (int x = 0; x < QN; x++) {
            int qq = qi + (x < nq ? x : 0);
            qp[x] = q + (size_t) (qq / n_rep) * q_stride
                    + (size_t) (qq % n_rep) * hd;
#pragma GCC unroll 4
            for (int u = 0; u < CN; u++) {
                acc[u][x] = _mm512_setzero_ps();
            }
        }
        for (int d = 0; d < hd; d++) {
            __m512 kv_d[4];
#pragma GCC unroll 4
            for (int u = 0; u < CN; u++) {
                kv_d[u] = kv_load16(kp[u] + (size_t) d * row, km[u], KV16);
                if (qi == 0 && pk[u] != NULL) {
                    _mm_prefetch(pk[u] + (size_t) d * row, _MM_HINT_T0);
                }
            }
#pragma GCC unroll 4
            for (int x = 0; x < QN; x++) {
                __m512 qv = _mm512_set1_ps(qp[x][d]);
#pragma GCC unroll 4
                for (int u = 0; u < CN; u++) {
                    acc[u][x] = _mm512_fmadd_ps(qv, kv_d[u], acc[u][x]);
                }
            }
        }
        /* constant indices (guarded stores): GCC keeps the accumulators
         * in registers only if no loop indexes them by a run-time bound */
#pragma GCC unroll 4
        for (int u = 0; u < CN; u++) {
#pragma GCC unroll 4
            for (int x = 0; x < QN; x++) {
                if (u < nc && x < nq) {
                    _mm512_mask_storeu_ps(sc + (size_t) (qi + x) * L + so[u],
                                          km[u], _mm512_mul_ps(acc[u][x], vscale));
                }
            }
        }
    }
}

/* P.V of one V block (rows vb, jn keys) for queries qi .. qi + nq - 1
 * (nq <= QN) and dimensions d0 .. d0 + 16 * NV - 1, into out (first:
 * start from 0, else add to what out holds): QN x NV accumulators, each
 * V row load serving QN queries.  pv: the next block, asked for a share
 * at each key (pv_step bytes, up to pv_bytes). */
BF16_TARGET INLINE void pv_block(const char *vb, int hd, int d0, int jn,
                                 const float *sc, size_t L, size_t j0, int qi,
                                 int nq, int n_rep, float *out,
                                 size_t out_stride, int first, const char *pv,
                                 size_t pv_step, size_t *pv_at,
                                 size_t pv_bytes, const int QN, const int NV,
                                 const int KV16)
{
    size_t es = KV16 ? 2 : 4;
    __m512 acc[4][8];
    __mmask16 md[8];
    const float *sp[4];
    float *op[4];

#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
        md[v] = mask16(hd - d0 - 16 * v);
    }
#pragma GCC unroll 4
    for (int x = 0; x < QN; x++) {
        int qq = qi + (x < nq ? x : 0);
        sp[x] = sc + (size_t) qq * L + j0;
        op[x] = out + (size_t) (qq / n_rep) * out_stride
                + (size_t) (qq % n_rep) * hd + d0;
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) {
            acc[x][v] = first ? _mm512_setzero_ps()
                              : _mm512_maskz_loadu_ps(md[v], op[x] + 16 * v);
        }
    }
    for (int sl = 0; sl < jn; sl++) {
        const char *vr = vb + ((size_t) sl * hd + (size_t) d0) * es;
        __m512 vv[8];
        if (pv) {
            for (size_t e = *pv_at + pv_step; *pv_at < e && *pv_at < pv_bytes;
                 *pv_at += 64) {
                _mm_prefetch(pv + *pv_at, _MM_HINT_T0);
            }
        }
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) {
            vv[v] = kv_load16(vr + (size_t) 16 * v * es, md[v], KV16);
        }
#pragma GCC unroll 4
        for (int x = 0; x < QN; x++) {
            __m512 p = _mm512_set1_ps(sp[x][sl]);
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) {
                acc[x][v] = _mm512_fmadd_ps(p, vv[v], acc[x][v]);
            }
        }
    }
#pragma GCC unroll 4
    for (int x = 0; x < QN; x++) {
        if (x < nq) {
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) {
                _mm512_mask_storeu_ps(op[x] + 16 * v, md[v], acc[x][v]);
            }
        }
    }
}

/*
 * AVX-512: scores of 16 keys per vector from the transposed K blocks (no
 * horizontal sums), several queries sharing each K load (scores_pass);
 * softmax with exp512; P.V block by block (pv_block), several queries
 * sharing each V row load.  Per (query, key) the products
 * are summed dimension by dimension in one lane, the softmax sum lane-wise
 * over 16-key chunks from position 0, P.V key by key: nothing depends on
 * which other queries share the tile.  Keys a query must not see get
 * probability exactly 0 (their V rows are finite: this step wrote them).
 */
BF16_TARGET INLINE void attention_512(const kern_kv *kv, int g,
                                      const int32_t *table, int pos0,
                                      int n_tok, int n_rep, float scale,
                                      const float *q, size_t q_stride,
                                      float *sc, float *out,
                                      size_t out_stride, const int KV16)
{
    int hd = kv->hd, bs = kv->bs, ctx_max = pos0 + n_tok;
    int n_q = n_tok * n_rep, n_blocks = (ctx_max + bs - 1) / bs;
    size_t L = (size_t) n_blocks * (size_t) bs;
    int cpb = (bs + 15) / 16, n_chunks = n_blocks * cpb;
    const __m512 vscale = _mm512_set1_ps(scale);

    /* 1. raw scores, whole blocks (lanes past bs are not stored), eight
     * independent FMA chains a pass to hide the FMA latency: 4 queries x
     * 2 key chunks, or 2 x 4 where the tile has at most two queries (a
     * decode step with two query heads a KV head would waste half of a
     * four-query pass) */
    for (int ci = 0; ci < n_chunks; ci += n_q <= 2 ? 4 : 2) {
        if (n_q <= 2) {
            scores_pass(kv, g, table, cpb, bs, n_chunks, ci, n_q, n_rep, q,
                        q_stride, hd, L, vscale, sc, 2, 4, KV16);
        } else {
            scores_pass(kv, g, table, cpb, bs, n_chunks, ci, n_q, n_rep, q,
                        q_stride, hd, L, vscale, sc, 4, 2, KV16);
        }
    }
    /* 2. softmax per query over its own context; the rest becomes 0 */
    for (int qq = 0; qq < n_q; qq++) {
        int ctx = pos0 + qq / n_rep + 1;
        float *s = sc + (size_t) qq * L;
        __m512 vmax = _mm512_set1_ps(-INFINITY), vsum = _mm512_setzero_ps();
        float mx, sum;
        for (int j = 0; j < ctx; j += 16) {
            __mmask16 m = ctx - j >= 16 ? (__mmask16) 0xffff
                                        : (__mmask16) ((1u << (ctx - j)) - 1);
            vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_maskz_loadu_ps(m, s + j));
        }
        mx = _mm512_reduce_max_ps(vmax);
        for (int j = 0; j < ctx; j += 16) {
            __mmask16 m = ctx - j >= 16 ? (__mmask16) 0xffff
                                        : (__mmask16) ((1u << (ctx - j)) - 1);
            __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j),
                                            _mm512_set1_ps(mx)));
            e = _mm512_maskz_mov_ps(m, e);
            vsum = _mm512_add_ps(vsum, e);
            _mm512_mask_storeu_ps(s + j, m, e);
        }
        sum = _mm512_reduce_add_ps(vsum);
        for (int j = 0; j < ctx; j += 16) {
            __mmask16 m = ctx - j >= 16 ? (__mmask16) 0xffff
                                        : (__mmask16) ((1u << (ctx - j)) - 1);
            _mm512_mask_storeu_ps(s + j, m,
                                  _mm512_div_ps(_mm512_maskz_loadu_ps(m, s + j),
                                                _mm512_set1_ps(sum)));
        }
        for (int j = ctx; j < ctx_max; j++) {
            s[j] = 0.0f;
        }
    }
    /* 3. out = P.V, block by block: each V block is read from memory
     * once and then serves every query of the tile from L1, 2 queries x
     * 128 dimensions at a time where the tile has at most two queries
     * (decode), else 4 x 64 (fewest loads per FMA for 16 accumulators);
     * the accumulators go through out between blocks (exactly: a store
     * and a load round nothing).
     * Within a (query, dimension) lane the sum runs key by key from
     * position 0, whatever the grouping.  Before (dimensions outer, then
     * queries, then blocks) a decode step read each head's V once per 32
     * dimensions: four times from memory once the context outgrew L2. */
    for (int b = 0; b < n_blocks; b++) {
        int jn = ctx_max - b * bs < bs ? ctx_max - b * bs : bs;
        const char *vb = v_row(kv, table[b], g, 0);
        const char *pv = b + 1 < n_blocks
                         ? v_row(kv, table[b + 1], g, 0) : NULL;
        size_t j0 = (size_t) b * bs, pv_bytes = (size_t) bs * hd * kv_esize(kv);
        size_t pv_step = (pv_bytes / (size_t) jn + 63) & ~(size_t) 63, pv_at = 0;
        int qn = n_q <= 2 ? 2 : 4, dn = n_q <= 2 ? 128 : 64;
        for (int qi = 0; qi < n_q; qi += qn) {
            int nq = n_q - qi < qn ? n_q - qi : qn;
            for (int d0 = 0; d0 < hd; d0 += dn) {
                const char *ask = qi == 0 && d0 == 0 ? pv : NULL;
                if (n_q <= 2) {
                    pv_block(vb, hd, d0, jn, sc, L, j0, qi, nq, n_rep, out,
                             out_stride, b == 0, ask, pv_step, &pv_at,
                             pv_bytes, 2, 8, KV16);
                } else {
                    pv_block(vb, hd, d0, jn, sc, L, j0, qi, nq, n_rep, out,
                             out_stride, b == 0, ask, pv_step, &pv_at,
                             pv_bytes, 4, 4, KV16);
                }
            }
        }
    }
}
/* The two element types, each with its loads inlined. */
BF16_TARGET static void attention_512_f32(const kern_kv *kv, int g,
                                          const int32_t *table, int pos0,
                                          int n_tok, int n_rep, float scale,
                                          const float *q, size_t q_stride,
                                          float *sc, float *out,
                                          size_t out_stride)
{
    attention_512(kv, g, table, pos0, n_tok, n_rep, scale, q, q_stride, sc,
                  out, out_stride, 0);
}

BF16_TARGET static void attention_512_bf16(const kern_kv *kv, int g,
                                           const int32_t *table, int pos0,
                                           int n_tok, int n_rep, float scale,
                                           const float *q, size_t q_stride,
                                           float *sc, float *out,
                                           size_t out_stride)
{
    attention_512(kv, g, table, pos0, n_tok, n_rep, scale, q, q_stride, sc,
                  out, out_stride, 1);
}
#endif

void kern_attention(const kern_kv *kv, int g, const int32_t *block_table,
                    int pos0, int n_tok, int n_rep, float scale,
                    const float *q, size_t q_stride, float *scratch,
                    float *out, size_t out_stride)
{
#if KERN_X86
    if (kern_get_isa() >= KERN_ISA_AVX512BF16) {
        (kv->bf16 ? attention_512_bf16 : attention_512_f32)(
            kv, g, block_table, pos0, n_tok, n_rep, scale, q, q_stride,
            scratch, out, out_stride);
        return;
    }
#endif
    attention_scalar(kv, g, block_table, pos0, n_tok, n_rep, scale, q,
                     q_stride, scratch, out, out_stride);
}
