/*
 * CPU kernels, see cpu_kernels.h.  SIMD variants are compiled with
 * function-level target attributes, so the file builds with the project's
 * generic flags and each path runs only where cpuid says it may.
 */
#include "cpu_kernels.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define KERN_X86 1
#else
#define KERN_X86 0
#endif

/* ---- ISA selection ----------------------------------------------------- */

static kern_isa isa_detected = (kern_isa) -1;
static kern_isa isa_current = (kern_isa) -1;

kern_isa kern_detect_isa(void)
{
    if ((int) isa_detected >= 0) {
        return isa_detected;
    }
    isa_detected = KERN_ISA_SCALAR;
#if KERN_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
        && __builtin_cpu_supports("f16c")) {
        isa_detected = KERN_ISA_AVX2;
        if (__builtin_cpu_supports("avx512f")
            && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512bf16")) {
            isa_detected = KERN_ISA_AVX512BF16;
        }
    }
#endif
    return isa_detected;
}

kern_isa kern_get_isa(void)
{
    if ((int) isa_current < 0) {
        isa_current = kern_detect_isa();
    }
    return isa_current;
}

kern_isa kern_set_isa(kern_isa want)
{
    kern_isa best = kern_detect_isa();

    isa_current = want > best ? best : want;
    return isa_current;
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
        __m256bh l = _mm512_cvtneps_pbh(_mm512_sub_ps(v, hf));
        _mm256_storeu_si256((__m256i *) (hi + i), (__m256i) h);
        _mm256_storeu_si256((__m256i *) (lo + i), (__m256i) l);
    }
    for (; i < n; i++) {
        hi[i] = f32_to_bf16_rne(x[i]);
        lo[i] = f32_to_bf16_rne(x[i] - bf16_to_f32(hi[i]));
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
        lo[i] = f32_to_bf16_rne(x[i] - bf16_to_f32(hi[i]));
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

AVX2_TARGET static inline __m256 avx2_load8(llm_dtype t, const void *p,
                                           size_t i)
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

AVX2_TARGET static inline float avx2_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* R rows x T tokens; every (row, token) accumulates k-steps of 8 in one
 * vector, then its scalar tail: the same order for any R and T. */
AVX2_TARGET static inline __attribute__((always_inline)) void
avx2_tile(llm_dtype dt, const void *W, size_t K, int r, int R,
          const float *X, int t, int T, float *y, size_t ldy)
{
    __m256 acc[4][4];
    float tail[4][4];
    size_t k, K8 = K & ~(size_t) 7;

    #pragma GCC unroll 8

    for (int i = 0; i < R; i++) {
        #pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            acc[i][j] = _mm256_setzero_ps();
            tail[i][j] = 0.0f;
        }
    }
    for (k = 0; k < K8; k += 8) {
        __m256 wv[4];
        #pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            wv[i] = avx2_load8(dt, W, (size_t) (r + i) * K + k);
        }
        #pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            __m256 xv = _mm256_loadu_ps(X + (size_t) (t + j) * K + k);
            #pragma GCC unroll 8
            for (int i = 0; i < R; i++) {
                acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
            }
        }
    }
    for (; k < K; k++) {
        #pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            float wk = load_w(dt, W, (size_t) (r + i) * K + k);
            #pragma GCC unroll 8
            for (int j = 0; j < T; j++) {
                tail[i][j] += wk * X[(size_t) (t + j) * K + k];
            }
        }
    }
    #pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
        #pragma GCC unroll 8
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

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* R rows x T tokens.  Per (row, token) one accumulator takes, for every
 * k-step of 32, the hi product and then the lo product; the tail step is
 * a masked load of the same shape, so the order never depends on R, T. */
BF16_TARGET static inline __attribute__((always_inline)) void
bf16_tile(const uint16_t *W, size_t K, int r, int R, const uint16_t *XH,
          const uint16_t *XL, int t, int T, float *y, size_t ldy)
{
    __m512 acc[8][6];
    size_t k = 0;

    #pragma GCC unroll 8

    for (int i = 0; i < R; i++) {
        #pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            acc[i][j] = _mm512_setzero_ps();
        }
    }
    for (; k + 32 <= K; k += 32) {
        __m512i wv[8];
        #pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            wv[i] = _mm512_loadu_si512(W + (size_t) (r + i) * K + k);
        }
        #pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            __m512i h = _mm512_loadu_si512(XH + (size_t) (t + j) * K + k);
            __m512i l = _mm512_loadu_si512(XL + (size_t) (t + j) * K + k);
            #pragma GCC unroll 8
            for (int i = 0; i < R; i++) {
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh) wv[i],
                                             (__m512bh) h);
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh) wv[i],
                                             (__m512bh) l);
            }
        }
    }
    if (k < K) {
        __mmask32 m = (__mmask32) ((1ULL << (K - k)) - 1);
        __m512i wv[8];
        #pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            wv[i] = _mm512_maskz_loadu_epi16(m, W + (size_t) (r + i) * K + k);
        }
        #pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            __m512i h = _mm512_maskz_loadu_epi16(m, XH + (size_t) (t + j) * K + k);
            __m512i l = _mm512_maskz_loadu_epi16(m, XL + (size_t) (t + j) * K + k);
            #pragma GCC unroll 8
            for (int i = 0; i < R; i++) {
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh) wv[i],
                                             (__m512bh) h);
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh) wv[i],
                                             (__m512bh) l);
            }
        }
    }
    #pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
        #pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            y[(size_t) (t + j) * ldy + (size_t) (r + i)] =
                _mm512_reduce_add_ps(acc[i][j]);
        }
    }
}

BF16_TARGET static void matmul_bf16(const kern_matrix *w, int r0, int r1,
                                    const kern_acts *a, int t0, int t1,
                                    float *y, size_t ldy)
{
    size_t K = (size_t) w->cols;
    const uint16_t *W = w->data;

    if (t1 - t0 == 1) {
        /* decode: more rows in flight hide the memory latency */
        int r = r0;
        for (; r + 8 <= r1; r += 8) {
            bf16_tile(W, K, r, 8, a->hi, a->lo, t0, 1, y, ldy);
        }
        for (; r < r1; r++) {
            bf16_tile(W, K, r, 1, a->hi, a->lo, t0, 1, y, ldy);
        }
        return;
    }
    for (int t = t0; t < t1; t += 6) {
        int nt = t1 - t < 6 ? t1 - t : 6;
        int r = r0;
        for (; r + 4 <= r1; r += 4) {
            switch (nt) {
            case 6: bf16_tile(W, K, r, 4, a->hi, a->lo, t, 6, y, ldy); break;
            case 5: bf16_tile(W, K, r, 4, a->hi, a->lo, t, 5, y, ldy); break;
            case 4: bf16_tile(W, K, r, 4, a->hi, a->lo, t, 4, y, ldy); break;
            case 3: bf16_tile(W, K, r, 4, a->hi, a->lo, t, 3, y, ldy); break;
            case 2: bf16_tile(W, K, r, 4, a->hi, a->lo, t, 2, y, ldy); break;
            default: bf16_tile(W, K, r, 4, a->hi, a->lo, t, 1, y, ldy); break;
            }
        }
        for (; r < r1; r++) {
            for (int j = 0; j < nt; j++) {
                bf16_tile(W, K, r, 1, a->hi, a->lo, t + j, 1, y, ldy);
            }
        }
    }
}

#endif /* KERN_X86 */

void kern_matmul(const kern_matrix *w, int r0, int r1, const kern_acts *a,
                 int t0, int t1, float *y, size_t ldy)
{
#if KERN_X86
    kern_isa isa = kern_get_isa();

    if (isa >= KERN_ISA_AVX512BF16 && w->dtype == DTYPE_BF16 && a->hi) {
        matmul_bf16(w, r0, r1, a, t0, t1, y, ldy);
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

void kern_rmsnorm(const float *x, const float *w, int n, float eps,
                  float *out)
{
    /* double accumulation: the mean of squares is the one reduction whose
     * rounding would otherwise depend on the vector width */
    double ss = 0.0;
    float inv;

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

void kern_silu_mul(const float *g, const float *u, float *y, int n)
{
    for (int i = 0; i < n; i++) {
        y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

/* ---- attention ----------------------------------------------------------- */

static float dot_scalar(const float *a, const float *b, int n)
{
    float s = 0.0f;
    for (int i = 0; i < n; i++) {
        s += a[i] * b[i];
    }
    return s;
}

static void axpy_scalar(float *y, float a, const float *x, int n)
{
    for (int i = 0; i < n; i++) {
        y[i] += a * x[i];
    }
}

#if KERN_X86
AVX2_TARGET static float dot_avx2(const float *a, const float *b, int n)
{
    __m256 acc = _mm256_setzero_ps();
    float tail = 0.0f;
    int i = 0;

    for (; i + 8 <= n; i += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    }
    for (; i < n; i++) {
        tail += a[i] * b[i];
    }
    return avx2_hsum(acc) + tail;
}

AVX2_TARGET static void axpy_avx2(float *y, float a, const float *x, int n)
{
    __m256 av = _mm256_set1_ps(a);
    int i = 0;

    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i),
                                                _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) {
        y[i] += a * x[i];
    }
}
#endif

void kern_attention(const float *q, int n_rep, int hd, float scale,
                    const float *k_cache, const float *v_cache,
                    size_t stride, const int32_t *block_table, int bs,
                    int ctx, float *scores, float *out)
{
    float (*dot)(const float *, const float *, int) = dot_scalar;
    void (*axpy)(float *, float, const float *, int) = axpy_scalar;

#if KERN_X86
    if (kern_get_isa() >= KERN_ISA_AVX2) {
        dot = dot_avx2;
        axpy = axpy_avx2;
    }
#endif
    /* scores: one pass over the keys serves all heads of the group */
    for (int j = 0; j < ctx; j++) {
        size_t slot = (size_t) block_table[j / bs] * (size_t) bs
                      + (size_t) (j % bs);
        const float *k = k_cache + slot * stride;
        for (int h = 0; h < n_rep; h++) {
            scores[(size_t) h * ctx + j] = dot(q + (size_t) h * hd, k, hd) * scale;
        }
    }
    for (int h = 0; h < n_rep; h++) {
        float *s = scores + (size_t) h * ctx, mx = -INFINITY, sum = 0.0f;
        for (int j = 0; j < ctx; j++) {
            mx = s[j] > mx ? s[j] : mx;
        }
        for (int j = 0; j < ctx; j++) {
            s[j] = expf(s[j] - mx);
            sum += s[j];
        }
        for (int j = 0; j < ctx; j++) {
            s[j] /= sum;
        }
        memset(out + (size_t) h * hd, 0, (size_t) hd * sizeof(float));
    }
    for (int j = 0; j < ctx; j++) {
        size_t slot = (size_t) block_table[j / bs] * (size_t) bs
                      + (size_t) (j % bs);
        const float *v = v_cache + slot * stride;
        for (int h = 0; h < n_rep; h++) {
            axpy(out + (size_t) h * hd, scores[(size_t) h * ctx + j], v, hd);
        }
    }
}
