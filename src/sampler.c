/*
 * Token sampler: see sampler.h for the processing order and its reasons.
 *
 * Speed.  A row has ~152k logits and the sampler runs once per sequence per
 * step, so every pass over the vocabulary counts.  The passes are written
 * in blocks of independent lanes (max, exp and sums) so that the compiler's
 * straight-line vectoriser can use SIMD at -O2, and selection never sorts:
 *   - top-k (Qwen3's generation_config sets top_k=20, so this is the common
 *     path) keeps a min-heap of k over the raw logits, skipping whole blocks
 *     whose maximum cannot enter; temperature is monotone, so only the k
 *     survivors are scaled and exponentiated;
 *   - without top-k every token is exponentiated once into a weight array
 *     with per-block sums; the draw walks block sums, then one block;
 *   - top-p over many tokens first finds the weight bucket (exponent and 3
 *     mantissa bits of the float weight) where the cumulative mass crosses
 *     top_p, then selects exactly inside that bucket only.
 */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Below this temperature sampling is greedy (vLLM's _SAMPLING_EPS). */
#define SAMPLER_GREEDY_EPS 1e-5f

/* Lanes of the blocked passes and the block of the weight sums. */
#define SAMPLER_LANES  8
#define SAMPLER_BLOCK  64

/* Ranges below this size are finished by insertion sort in top-p. */
#define SAMPLER_SMALL_RANGE 16

/* Up to this vocabulary size top-p selects over all tokens directly. */
#define SAMPLER_DIRECT_TOP_P 1024

/* Weight buckets: bits(w) >> 20 for w in [0, 1] is at most 0x3F8. */
#define SAMPLER_BUCKETS 1024
#define SAMPLER_BUCKET_COPIES 4

typedef struct {
    float   w;          /* exp((logit - max) / temperature), in [0, 1] */
    int32_t id;
} sampler_candidate;

typedef struct {
    float   v;          /* raw logit */
    int32_t id;
} sampler_entry;

struct sampler_scratch {
    int                vocab;
    sampler_candidate *cand;     /* candidates; in top-p over the whole
                                    vocabulary the sure tokens from the
                                    front, the boundary bucket from the
                                    back */
    float             *w;        /* per token weight (no top-k) */
    double            *block;    /* per SAMPLER_BLOCK tokens: weight sum */
    double            *bucket;   /* SAMPLER_BUCKET_COPIES x SAMPLER_BUCKETS */
    sampler_entry     *heap;     /* top-k and top-logprobs min-heap */
    float             *raw;      /* raw logits, kept for the logprob */
    int32_t           *counts;   /* per id: count in generated tokens */
    uint8_t           *seen;     /* per id: in prompt or generated */
    int32_t           *touched;  /* distinct ids of the history */
};

/* ---- RNG ---------------------------------------------------------------- */

static uint64_t splitmix64_next(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void sampler_rng_seed(sampler_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    int      i;

    /* splitmix64 never yields four zero words, the one state xoshiro must
     * not start from. */
    for (i = 0; i < 4; i++) {
        r->s[i] = splitmix64_next(&x);
    }
}

static uint64_t xoshiro256ss_next(sampler_rng *r)
{
    uint64_t *s = r->s;
    uint64_t  result = rotl64(s[1] * 5, 7) * 9;
    uint64_t  t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

double sampler_rng_uniform(sampler_rng *r)
{
    /* the top 53 bits: every double in [0, 1) on a 2^-53 grid */
    return (double) (xoshiro256ss_next(r) >> 11) * 0x1.0p-53;
}

/* ---- scratch ------------------------------------------------------------ */

sampler_scratch *sampler_scratch_create(int vocab)
{
    sampler_scratch *s;
    size_t           n = (size_t) vocab;

    if (vocab <= 0) {
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return NULL;
    }
    s->vocab = vocab;
    s->cand = malloc(n * sizeof(*s->cand));
    s->w = malloc(n * sizeof(*s->w));
    s->block = malloc((n / SAMPLER_BLOCK + 1) * sizeof(*s->block));
    s->bucket = malloc(SAMPLER_BUCKET_COPIES * SAMPLER_BUCKETS
                       * sizeof(*s->bucket));
    s->heap = malloc(n * sizeof(*s->heap));
    s->raw = malloc(n * sizeof(*s->raw));
    s->counts = calloc(n, sizeof(*s->counts));
    s->seen = calloc(n, sizeof(*s->seen));
    s->touched = malloc(n * sizeof(*s->touched));
    if (!s->cand || !s->w || !s->block || !s->bucket || !s->heap || !s->raw
        || !s->counts || !s->seen || !s->touched)
    {
        sampler_scratch_free(s);
        return NULL;
    }
    return s;
}

void sampler_scratch_free(sampler_scratch *s)
{
    if (s == NULL) {
        return;
    }
    free(s->cand);
    free(s->w);
    free(s->block);
    free(s->bucket);
    free(s->heap);
    free(s->raw);
    free(s->counts);
    free(s->seen);
    free(s->touched);
    free(s);
}

/* ---- validation --------------------------------------------------------- */

static int params_valid(const sampler_params *p)
{
    int i;

    /* written so that NaN fails every test */
    if (!(p->temperature >= 0.0f) || !(p->top_p > 0.0f && p->top_p <= 1.0f)
        || p->top_k < 0 || !(p->min_p >= 0.0f && p->min_p <= 1.0f)
        || !(p->repetition_penalty > 0.0f)
        || !isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty)
        || p->top_logprobs < 0 || p->top_logprobs > SAMPLER_MAX_TOP_LOGPROBS
        || p->n_logit_bias < 0 || (p->n_logit_bias > 0 && !p->logit_bias)
        || p->n_eos < 0 || (p->n_eos > 0 && !p->eos_ids))
    {
        return 0;
    }
    for (i = 0; i < p->n_logit_bias; i++) {
        if (isnan(p->logit_bias[i].bias)) {
            return 0;
        }
    }
    return 1;
}

static int ids_in_vocab(const int32_t *ids, int n, int vocab)
{
    int i;

    if (n < 0 || (n > 0 && ids == NULL)) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= vocab) {
            return 0;
        }
    }
    return 1;
}

/* ---- blocked passes ----------------------------------------------------- */

static inline float max2(float a, float b)
{
    return a > b ? a : b;   /* NaN in a is ignored */
}

/* Largest of x[0, n); -inf when none is larger (NaN ignored). */
static float row_max(const float *x, int n)
{
    float m[SAMPLER_LANES], r;
    int   i = 0, j;

    for (j = 0; j < SAMPLER_LANES; j++) {
        m[j] = -INFINITY;
    }
    for (; i + SAMPLER_LANES <= n; i += SAMPLER_LANES) {
        for (j = 0; j < SAMPLER_LANES; j++) {
            m[j] = max2(x[i + j], m[j]);
        }
    }
    for (; i < n; i++) {
        m[0] = max2(x[i], m[0]);
    }
    r = m[0];
    for (j = 1; j < SAMPLER_LANES; j++) {
        r = max2(m[j], r);
    }
    return r;
}

/* Lowest id among the largest logits; 0 when none beats -inf (NaN
 * ignored).  One pass in blocks of ARGMAX_BLOCK: each block's maximum in
 * lanes (vectorized), the first block whose maximum is strictly larger
 * than all before it kept, then that block scanned for the first id
 * holding it.  It was a maximum pass and then a scalar scan of the row
 * up to that id: 24-46 us a call at a vocabulary of 151,936 against
 * 14 us (development machine), 10-20 % of a tiny-model decode step. */
#define ARGMAX_BLOCK 64

static int32_t argmax(const float *logits, int vocab)
{
    float best = -INFINITY;
    int   at = -1, i = 0, j, k;

    for (; i + ARGMAX_BLOCK <= vocab; i += ARGMAX_BLOCK) {
        float m[SAMPLER_LANES], r;

        for (j = 0; j < SAMPLER_LANES; j++) {
            m[j] = -INFINITY;
        }
        for (k = 0; k < ARGMAX_BLOCK; k += SAMPLER_LANES) {
            for (j = 0; j < SAMPLER_LANES; j++) {
                m[j] = max2(logits[i + k + j], m[j]);
            }
        }
        r = m[0];
        for (j = 1; j < SAMPLER_LANES; j++) {
            r = max2(m[j], r);
        }
        if (r > best) {
            best = r;
            at = i;
        }
    }
    if (at >= 0) {
        for (k = at; logits[k] != best; k++) {
        }
        at = k;
    }
    for (; i < vocab; i++) {            /* the tail: only a larger value */
        if (logits[i] > best) {
            best = logits[i];
            at = i;
        }
    }
    return at < 0 ? 0 : at;
}

/* Sum of exp(x[i] - max) over the row, in double. */
static double row_sum_exp(const float *x, int n, float max)
{
    double s[SAMPLER_LANES], r = 0.0;
    int    i = 0, j;

    for (j = 0; j < SAMPLER_LANES; j++) {
        s[j] = 0.0;
    }
    for (; i + SAMPLER_LANES <= n; i += SAMPLER_LANES) {
        for (j = 0; j < SAMPLER_LANES; j++) {
            s[j] += expf(x[i + j] - max);
        }
    }
    for (; i < n; i++) {
        s[0] += expf(x[i] - max);
    }
    for (j = 0; j < SAMPLER_LANES; j++) {
        r += s[j];
    }
    return r;
}

/* ---- the best n entries: a min-heap over the row ------------------------ */

/* Heap order: the root is the entry that leaves first (smaller value, and
 * on equal values the higher id, so that lower ids stay). */
static inline int entry_leaves_first(const sampler_entry *a,
                                     const sampler_entry *b)
{
    return a->v < b->v || (a->v == b->v && a->id > b->id);
}

static void entry_sift_down(sampler_entry *h, int n, int i)
{
    for (;;) {
        int           l = 2 * i + 1, r = l + 1, m = i;
        sampler_entry t;

        if (l < n && entry_leaves_first(&h[l], &h[m])) {
            m = l;
        }
        if (r < n && entry_leaves_first(&h[r], &h[m])) {
            m = r;
        }
        if (m == i) {
            return;
        }
        t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void entry_push(sampler_entry *h, int *n, float v, int32_t id)
{
    int c = (*n)++;

    h[c].v = v;
    h[c].id = id;
    while (c > 0 && entry_leaves_first(&h[c], &h[(c - 1) / 2])) {
        sampler_entry t = h[c];

        h[c] = h[(c - 1) / 2];
        h[(c - 1) / 2] = t;
        c = (c - 1) / 2;
    }
}

/*
 * The k largest logits (ties: lower ids) into heap[0, return), root first
 * to leave.  -inf and NaN never enter.  *outside gets the largest value that
 * did not end in the heap (-inf if none), which tells whether tokens tied
 * with the k-th were left out.  Blocks whose maximum cannot beat the root
 * are skipped after one vectorisable max.
 */
static int top_entries(const float *x, int vocab, int k, sampler_entry *heap,
                       float *outside)
{
    float out = -INFINITY;
    int   n = 0, i, j;

    for (i = 0; i < vocab; i += SAMPLER_BLOCK) {
        int end = i + SAMPLER_BLOCK < vocab ? i + SAMPLER_BLOCK : vocab;

        if (n == k && end - i == SAMPLER_BLOCK) {
            float bm = row_max(x + i, SAMPLER_BLOCK);

            if (!(bm > heap[0].v)) {
                out = max2(bm, out);
                continue;
            }
        }
        for (j = i; j < end; j++) {
            float l = x[j];

            if (!(l > -INFINITY)) {
                continue;
            }
            if (n < k) {
                entry_push(heap, &n, l, j);
            } else if (l > heap[0].v) {
                out = max2(heap[0].v, out);
                heap[0].v = l;
                heap[0].id = j;
                entry_sift_down(heap, n, 0);
            } else {
                out = max2(l, out);
            }
        }
    }
    *outside = out;
    return n;
}

/* Sorts a heap in place into most likely first (lower id on ties). */
static void entries_sort(sampler_entry *h, int n)
{
    while (n > 1) {
        sampler_entry t = h[0];

        h[0] = h[n - 1];
        h[n - 1] = t;
        n--;
        entry_sift_down(h, n, 0);
    }
}

/* ---- logprobs ----------------------------------------------------------- */

/*
 * Log-sum-exp of the raw logits, and their n_top best entries (most likely
 * first) with log-probabilities.
 */
static double raw_logprobs(const float *logits, int vocab, int n_top,
                           sampler_entry *heap, llm_top_logprob *top,
                           int *n_out)
{
    float  max = row_max(logits, vocab), outside;
    double lse;
    int    n = 0, i;

    if (!(max > -INFINITY)) {
        lse = 0.0;          /* nothing has probability: all come out -inf */
    } else if (isinf(max)) {
        lse = max;
    } else {
        lse = max + log(row_sum_exp(logits, vocab, max));
    }
    if (n_top > 0) {
        n = top_entries(logits, vocab, n_top, heap, &outside);
        entries_sort(heap, n);
    }
    for (i = 0; i < n; i++) {
        top[i].token = heap[i].id;
        top[i].logprob = (float) ((double) heap[i].v - lse);
    }
    *n_out = n;
    return lse;
}

/* ---- logits processors -------------------------------------------------- */

/*
 * Marks the history in the scratch (counts of generated ids, ids seen in
 * prompt or generated) and applies the penalties to the touched ids only,
 * then clears the marks: cost linear in the history, not the vocabulary.
 */
static void apply_penalties(float *logits, const sampler_params *p,
                            const sampler_history *h, sampler_scratch *s)
{
    int   use_rep = p->repetition_penalty != 1.0f;
    int   use_out = p->presence_penalty != 0.0f
                    || p->frequency_penalty != 0.0f;
    int   n_touched = 0, i;
    float rep = p->repetition_penalty;

    if (h == NULL || (!use_rep && !use_out)) {
        return;
    }
    if (use_rep) {
        for (i = 0; i < h->n_prompt; i++) {
            int32_t id = h->prompt[i];

            if (!s->seen[id]) {
                s->seen[id] = 1;
                s->touched[n_touched++] = id;
            }
        }
    }
    for (i = 0; i < h->n_generated; i++) {
        int32_t id = h->generated[i];

        s->counts[id]++;
        if (!s->seen[id]) {
            s->seen[id] = 1;
            s->touched[n_touched++] = id;
        }
    }
    for (i = 0; i < n_touched; i++) {
        int32_t id = s->touched[i];
        float   l = logits[id];

        if (use_rep) {
            l = l > 0.0f ? l / rep : l * rep;
        }
        if (s->counts[id] > 0) {
            l -= p->frequency_penalty * (float) s->counts[id];
            l -= p->presence_penalty;
        }
        logits[id] = l;
        s->counts[id] = 0;
        s->seen[id] = 0;
    }
}

/* ---- top-p: weighted quickselect ---------------------------------------- */

/* Strict total order of candidates: more likely first, then lower id. */
static inline int cand_before(const sampler_candidate *a,
                              const sampler_candidate *b)
{
    return a->w > b->w || (a->w == b->w && a->id < b->id);
}

static inline void cand_swap(sampler_candidate *a, sampler_candidate *b)
{
    sampler_candidate t = *a;

    *a = *b;
    *b = t;
}

/* Partitions c[lo, hi) around a median-of-three pivot; returns the pivot's
 * final index: everything before it in the order sits left of it. */
static int cand_partition(sampler_candidate *c, int lo, int hi)
{
    int mid = lo + (hi - lo) / 2, last = hi - 1, i, j;

    /* median of three into c[last] */
    if (cand_before(&c[mid], &c[lo])) {
        cand_swap(&c[mid], &c[lo]);
    }
    if (cand_before(&c[last], &c[lo])) {
        cand_swap(&c[last], &c[lo]);
    }
    if (cand_before(&c[mid], &c[last])) {
        cand_swap(&c[mid], &c[last]);
    }
    i = lo;
    for (j = lo; j < last; j++) {
        if (cand_before(&c[j], &c[last])) {
            cand_swap(&c[i], &c[j]);
            i++;
        }
    }
    cand_swap(&c[i], &c[last]);
    return i;
}

static void cand_insertion_sort(sampler_candidate *c, int lo, int hi)
{
    int i, j;

    for (i = lo + 1; i < hi; i++) {
        sampler_candidate t = c[i];

        for (j = i; j > lo && cand_before(&t, &c[j - 1]); j--) {
            c[j] = c[j - 1];
        }
        c[j] = t;
    }
}

/*
 * Rearranges c[0, n) so that its first m entries are the smallest prefix,
 * in cand_before order, whose weight reaches target (all n if rounding
 * never gets there), and returns m (>= 1 when n >= 1).  A token is kept iff
 * the weight strictly before it is below target, as vLLM's top-p mask.
 * Expected linear time: each round keeps one side of a partition.
 */
static int nucleus_select(sampler_candidate *c, int n, double target)
{
    int    lo = 0, hi = n, p, i;
    double need = target, upper, acc;

    /* invariant: c[0, lo) are kept and the answer lies within [lo, hi] */
    while (hi - lo > SAMPLER_SMALL_RANGE) {
        p = cand_partition(c, lo, hi);
        upper = 0.0;
        for (i = lo; i < p; i++) {
            upper += c[i].w;
        }
        if (upper >= need) {
            hi = p;
        } else if (upper + c[p].w >= need) {
            return p + 1;
        } else {
            need -= upper + c[p].w;
            lo = p + 1;
        }
    }
    cand_insertion_sort(c, lo, hi);
    acc = 0.0;
    for (i = lo; i < hi; i++) {
        acc += c[i].w;
        if (acc >= need) {
            return i + 1;
        }
    }
    return hi > 0 ? hi : (n > 0 ? 1 : 0);
}

/* Draws from c[0, n) by weight, given u uniform in [0, total). Returns -1
 * when u is not below the running sum at the end (rounding). */
static int32_t draw_from(const sampler_candidate *c, int n, double *u)
{
    int i;

    for (i = 0; i < n; i++) {
        if (*u < c[i].w) {
            return c[i].id;
        }
        *u -= c[i].w;
    }
    return -1;
}

/* The last candidate with weight: where a draw lands that rounding pushed
 * past the end. */
static int32_t last_with_weight(const sampler_candidate *c, int n)
{
    int i;

    for (i = n - 1; i > 0 && c[i].w == 0.0f; i--) {
    }
    return c[i].id;
}

/* ---- sampling with top-k ------------------------------------------------ */

static int32_t sample_top_k(const float *logits, int vocab,
                            const sampler_params *p, sampler_rng *rng,
                            sampler_scratch *s)
{
    sampler_candidate *cand = s->cand;
    float              inv_t = 1.0f / p->temperature, outside, kth, max;
    double             total = 0.0, u;
    int                n, kept, i, j;
    int32_t            t;

    n = top_entries(logits, vocab, p->top_k, s->heap, &outside);
    if (n == 0) {
        return 0;               /* every logit -inf or NaN */
    }
    kth = s->heap[0].v;
    max = s->heap[0].v;
    for (i = 1; i < n; i++) {
        max = max2(s->heap[i].v, max);
    }
    if (isinf(max)) {
        return argmax(logits, vocab);   /* +inf wins outright */
    }
    if (n == p->top_k && outside == kth) {
        /* tokens tied with the k-th were left out: vLLM keeps them all */
        n = 0;
        for (i = 0; i < vocab; i++) {
            if (logits[i] >= kth) {
                cand[n].id = i;
                cand[n].w = logits[i];
                n++;
            }
        }
    } else {
        for (i = 0; i < n; i++) {
            cand[i].id = s->heap[i].id;
            cand[i].w = s->heap[i].v;
        }
    }
    /* cand[].w holds the raw logit until here; now the weight, min-p
     * relative to the most likely token (weight 1) */
    for (i = 0, j = 0; i < n; i++) {
        float w = expf((cand[i].w - max) * inv_t);

        if (w >= p->min_p && w > 0.0f) {
            cand[j].id = cand[i].id;
            cand[j].w = w;
            total += w;
            j++;
        }
    }
    n = j;
    kept = n;
    if (p->top_p < 1.0f) {
        kept = nucleus_select(cand, n, (double) p->top_p * total);
        total = 0.0;
        for (i = 0; i < kept; i++) {
            total += cand[i].w;
        }
    }
    u = sampler_rng_uniform(rng) * total;
    t = draw_from(cand, kept, &u);
    return t >= 0 ? t : last_with_weight(cand, kept);
}

/* ---- sampling over the whole vocabulary --------------------------------- */

static inline uint32_t weight_bucket(float w)
{
    uint32_t bits;

    memcpy(&bits, &w, sizeof(bits));
    return bits >> 20;          /* monotone in w >= 0; at most 0x3F8 */
}

/* Fills s->w with the weights (min-p applied) and s->block with their
 * per-block sums; returns the total. */
static double fill_weights(const float *logits, int vocab, float max,
                           float inv_t, float min_p, sampler_scratch *s)
{
    double total = 0.0;
    int    b, i, j;

    for (b = 0; b * SAMPLER_BLOCK < vocab; b++) {
        int    base = b * SAMPLER_BLOCK;
        int    end = base + SAMPLER_BLOCK < vocab ? base + SAMPLER_BLOCK
                                                  : vocab;
        double sum[SAMPLER_LANES], block = 0.0;

        for (j = 0; j < SAMPLER_LANES; j++) {
            sum[j] = 0.0;
        }
        for (i = base; i + SAMPLER_LANES <= end; i += SAMPLER_LANES) {
            for (j = 0; j < SAMPLER_LANES; j++) {
                float w = expf((logits[i + j] - max) * inv_t);

                w = w >= min_p ? w : 0.0f;      /* NaN goes to 0 too */
                s->w[i + j] = w;
                sum[j] += w;
            }
        }
        for (; i < end; i++) {
            float w = expf((logits[i] - max) * inv_t);

            w = w >= min_p ? w : 0.0f;
            s->w[i] = w;
            sum[0] += w;
        }
        for (j = 0; j < SAMPLER_LANES; j++) {
            block += sum[j];
        }
        s->block[b] = block;
        total += block;
    }
    return total;
}

/* Top-p over the weight array: returns the count of sure tokens (from
 * cand's front) and sets *boundary / *n_boundary to the kept prefix of the
 * crossing bucket (at cand's back). */
static int top_p_over_weights(int vocab, double target, sampler_scratch *s,
                              sampler_candidate **boundary, int *n_boundary)
{
    double  *bucket = s->bucket, acc = 0.0, above = 0.0;
    uint32_t cut = 0;
    int      i, c, n_sure = 0, n_bnd = 0;

    if (vocab <= SAMPLER_DIRECT_TOP_P) {
        /* small rows: the bucket pass would cost more than it saves */
        for (i = 0; i < vocab; i++) {
            s->cand[i].id = i;
            s->cand[i].w = s->w[i];
        }
        *boundary = s->cand;
        *n_boundary = nucleus_select(s->cand, vocab, target);
        return 0;
    }
    memset(bucket, 0, SAMPLER_BUCKET_COPIES * SAMPLER_BUCKETS
                      * sizeof(*bucket));
    /* interleaved copies: runs of tokens in one bucket do not chain */
    for (i = 0; i < vocab; i++) {
        bucket[(i % SAMPLER_BUCKET_COPIES) * SAMPLER_BUCKETS
               + weight_bucket(s->w[i])] += s->w[i];
    }
    for (i = SAMPLER_BUCKETS - 1; i >= 0; i--) {
        double mass = 0.0;

        for (c = 0; c < SAMPLER_BUCKET_COPIES; c++) {
            mass += bucket[c * SAMPLER_BUCKETS + i];
        }
        if (acc + mass >= target) {
            cut = (uint32_t) i;
            above = acc;
            break;
        }
        acc += mass;
    }
    /* split: tokens above the bucket are kept for sure; the bucket's own
     * tokens go to the back for an exact selection.  Both slots are written
     * every time (branch-free); they hold the same entry when they meet. */
    for (i = 0; i < vocab; i++) {
        uint32_t b = weight_bucket(s->w[i]);

        s->cand[n_sure].id = i;
        s->cand[n_sure].w = s->w[i];
        s->cand[vocab - 1 - n_bnd].id = i;
        s->cand[vocab - 1 - n_bnd].w = s->w[i];
        n_sure += b > cut;
        n_bnd += b == cut;
    }
    *boundary = s->cand + vocab - n_bnd;
    *n_boundary = n_bnd > 0 ? nucleus_select(*boundary, n_bnd,
                                             target - above) : 0;
    return n_sure;
}

static int32_t sample_full(const float *logits, int vocab,
                           const sampler_params *p, sampler_rng *rng,
                           sampler_scratch *s)
{
    float   inv_t = 1.0f / p->temperature;
    float   max = row_max(logits, vocab);
    double  total, u;
    int32_t t;
    int     b, i, end, n_blocks = (vocab + SAMPLER_BLOCK - 1) / SAMPLER_BLOCK;

    if (!(max > -INFINITY) || isinf(max)) {
        /* nothing drawable, or +inf logits that no softmax can weigh */
        return argmax(logits, vocab);
    }
    total = fill_weights(logits, vocab, max, inv_t, p->min_p, s);
    if (p->top_p < 1.0f) {
        sampler_candidate *bnd;
        int                n_bnd, n_sure;

        n_sure = top_p_over_weights(vocab, (double) p->top_p * total, s,
                                    &bnd, &n_bnd);
        total = 0.0;
        for (i = 0; i < n_sure; i++) {
            total += s->cand[i].w;
        }
        for (i = 0; i < n_bnd; i++) {
            total += bnd[i].w;
        }
        u = sampler_rng_uniform(rng) * total;
        t = draw_from(s->cand, n_sure, &u);
        if (t < 0) {
            t = draw_from(bnd, n_bnd, &u);
        }
        if (t < 0) {
            t = n_bnd > 0 ? last_with_weight(bnd, n_bnd)
                          : last_with_weight(s->cand, n_sure);
        }
        return t;
    }
    /* walk the block sums, then the block */
    u = sampler_rng_uniform(rng) * total;
    for (b = 0; b < n_blocks - 1 && u >= s->block[b]; b++) {
        u -= s->block[b];
    }
    end = (b + 1) * SAMPLER_BLOCK < vocab ? (b + 1) * SAMPLER_BLOCK : vocab;
    for (i = b * SAMPLER_BLOCK; i < end; i++) {
        if (u < s->w[i]) {
            return i;
        }
        u -= s->w[i];
    }
    /* rounding left u at or past the block's end: the last token with
     * weight up to there */
    for (i = end - 1; i >= 0; i--) {
        if (s->w[i] > 0.0f) {
            return i;
        }
    }
    return argmax(logits, vocab);
}

/* ---- entry point -------------------------------------------------------- */

int sampler_sample(float *logits, int vocab, const sampler_params *p,
                   const sampler_history *h, sampler_rng *rng,
                   sampler_scratch *s, sampler_result *out)
{
    int    want_logprobs, i;
    double lse = 0.0;

    if (logits == NULL || p == NULL || rng == NULL || s == NULL
        || out == NULL || vocab <= 0 || vocab > s->vocab || !params_valid(p))
    {
        return -1;
    }
    for (i = 0; i < p->n_logit_bias; i++) {
        if (p->logit_bias[i].token < 0 || p->logit_bias[i].token >= vocab) {
            return -1;
        }
    }
    if (h != NULL && (!ids_in_vocab(h->prompt, h->n_prompt, vocab)
                      || !ids_in_vocab(h->generated, h->n_generated, vocab)))
    {
        return -1;
    }

    want_logprobs = p->logprobs || p->top_logprobs > 0;
    out->logprob = 0.0f;
    out->n_top = 0;
    if (want_logprobs) {
        lse = raw_logprobs(logits, vocab, p->top_logprobs, s->heap, out->top,
                           &out->n_top);
        memcpy(s->raw, logits, (size_t) vocab * sizeof(*logits));
    }

    if (p->suppress_eos) {
        for (i = 0; i < p->n_eos; i++) {
            if (p->eos_ids[i] >= 0 && p->eos_ids[i] < vocab) {
                logits[p->eos_ids[i]] = -INFINITY;
            }
        }
    }
    for (i = 0; i < p->n_logit_bias; i++) {
        logits[p->logit_bias[i].token] += p->logit_bias[i].bias;
    }
    apply_penalties(logits, p, h, s);

    if (p->temperature < SAMPLER_GREEDY_EPS) {
        out->token = argmax(logits, vocab);
    } else if (p->top_k > 0 && p->top_k < vocab) {
        out->token = sample_top_k(logits, vocab, p, rng, s);
    } else {
        out->token = sample_full(logits, vocab, p, rng, s);
    }
    if (want_logprobs) {
        out->logprob = (float) ((double) s->raw[out->token] - lse);
    }
    return 0;
}
