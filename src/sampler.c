/*
 * Token sampler: see sampler.h for the processing order and its reasons.
 */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Below this temperature sampling is greedy (vLLM's _SAMPLING_EPS). */
#define SAMPLER_GREEDY_EPS 1e-5f

/* Ranges below this size are finished by insertion sort in top-p. */
#define SAMPLER_SMALL_RANGE 16

typedef struct {
    double  weight;     /* exp(logit - max logit) */
    float   logit;      /* after temperature */
    int32_t id;
} sampler_candidate;

struct sampler_scratch {
    int                vocab;
    sampler_candidate *cand;     /* tokens that survive min-p and top-k */
    float             *raw;      /* raw logits, kept for the logprob */
    float             *heap;     /* top-k min-heap */
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
    s->raw = malloc(n * sizeof(*s->raw));
    s->heap = malloc(n * sizeof(*s->heap));
    s->counts = calloc(n, sizeof(*s->counts));
    s->seen = calloc(n, sizeof(*s->seen));
    s->touched = malloc(n * sizeof(*s->touched));
    if (!s->cand || !s->raw || !s->heap || !s->counts || !s->seen
        || !s->touched)
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
    free(s->raw);
    free(s->heap);
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

/* ---- logprobs ----------------------------------------------------------- */

/* Order of the reported alternatives: higher logit first, lower id first. */
static inline int top_before(float la, int32_t ia, float lb, int32_t ib)
{
    return la > lb || (la == lb && ia < ib);
}

/* Min-heap on top_before: the root is the entry that leaves first. */
static void top_sift_down(llm_top_logprob *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        llm_top_logprob t;

        if (l < n && top_before(h[m].logprob, h[m].token,
                                h[l].logprob, h[l].token)) {
            m = l;
        }
        if (r < n && top_before(h[m].logprob, h[m].token,
                                h[r].logprob, h[r].token)) {
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

/*
 * Log-sum-exp of the raw logits and their n_top best entries (most likely
 * first) with log-probabilities.  The heap holds logits until the end.
 */
static double raw_logprobs(const float *logits, int vocab, int n_top,
                           llm_top_logprob *top)
{
    float  max = -INFINITY;
    double sum = 0.0, lse;
    int    i, n = 0, count;

    for (i = 0; i < vocab; i++) {
        float l = logits[i];

        if (l > max) {
            max = l;
        }
        if (n_top == 0) {
            continue;
        }
        if (n < n_top) {
            int c = n++;

            /* sift up */
            top[c].token = i;
            top[c].logprob = l;
            while (c > 0) {
                int             parent = (c - 1) / 2;
                llm_top_logprob t;

                if (!top_before(top[parent].logprob, top[parent].token,
                                top[c].logprob, top[c].token)) {
                    break;
                }
                t = top[parent];
                top[parent] = top[c];
                top[c] = t;
                c = parent;
            }
        } else if (l > top[0].logprob) {
            /* equal logits never enter: the earlier (lower) id stays */
            top[0].token = i;
            top[0].logprob = l;
            top_sift_down(top, n, 0);
        }
    }
    if (!(max > -INFINITY)) {
        /* nothing has any probability: every logprob comes out -inf */
        lse = 0.0;
    } else if (isinf(max)) {
        lse = max;
    } else {
        for (i = 0; i < vocab; i++) {
            sum += expf(logits[i] - max);
        }
        lse = max + log(sum);
    }
    /* heap sort: repeatedly move the root (the worst) to the end */
    count = n;
    while (n > 1) {
        llm_top_logprob t = top[0];

        top[0] = top[n - 1];
        top[n - 1] = t;
        n--;
        top_sift_down(top, n, 0);
    }
    for (i = 0; i < count; i++) {
        top[i].logprob = (float) ((double) top[i].logprob - lse);
    }
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

/* Lowest id among the largest logits; 0 when none beats -inf. */
static int32_t argmax(const float *logits, int vocab)
{
    float   best = -INFINITY;
    int32_t arg = 0;
    int     i;

    for (i = 0; i < vocab; i++) {
        if (logits[i] > best) {
            best = logits[i];
            arg = i;
        }
    }
    return arg;
}

/* ---- top-k: the k-th largest logit through a min-heap of k -------------- */

static void float_sift_down(float *h, int n, int i)
{
    for (;;) {
        int   l = 2 * i + 1, r = l + 1, m = i;
        float t;

        if (l < n && h[l] < h[m]) {
            m = l;
        }
        if (r < n && h[r] < h[m]) {
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

/* The k-th largest of the logits >= floor, or -inf if fewer than k. */
static float kth_largest(const float *logits, int vocab, int k, float floor,
                         float *heap)
{
    int n = 0, i;

    for (i = 0; i < vocab; i++) {
        float l = logits[i];

        if (!(l >= floor)) {
            continue;
        }
        if (n < k) {
            int c = n++;

            heap[c] = l;
            while (c > 0 && heap[(c - 1) / 2] > heap[c]) {
                float t = heap[(c - 1) / 2];

                heap[(c - 1) / 2] = heap[c];
                heap[c] = t;
                c = (c - 1) / 2;
            }
        } else if (l > heap[0]) {
            heap[0] = l;
            float_sift_down(heap, n, 0);
        }
    }
    return n < k ? -INFINITY : heap[0];
}

/* ---- top-p: weighted quickselect ---------------------------------------- */

/* Strict total order of candidates: more likely first, then lower id. */
static inline int cand_before(const sampler_candidate *a,
                              const sampler_candidate *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
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
            upper += c[i].weight;
        }
        if (upper >= need) {
            hi = p;
        } else if (upper + c[p].weight >= need) {
            return p + 1;
        } else {
            need -= upper + c[p].weight;
            lo = p + 1;
        }
    }
    cand_insertion_sort(c, lo, hi);
    acc = 0.0;
    for (i = lo; i < hi; i++) {
        acc += c[i].weight;
        if (acc >= need) {
            return i + 1;
        }
    }
    return hi > 0 ? hi : (n > 0 ? 1 : 0);
}

/* ---- random sampling ---------------------------------------------------- */

static int32_t sample_random(float *logits, int vocab, const sampler_params *p,
                             sampler_rng *rng, sampler_scratch *s)
{
    sampler_candidate *cand = s->cand;
    float              inv_t = 1.0f / p->temperature;
    float              max = -INFINITY, floor = -INFINITY;
    double             total = 0.0, u, acc;
    int                n = 0, kept, i;

    for (i = 0; i < vocab; i++) {
        float l = logits[i] * inv_t;

        logits[i] = l;
        if (l > max) {
            max = l;
        }
    }
    if (!(max > -INFINITY) || isinf(max)) {
        /* nothing drawable, or +inf logits that no softmax can weigh */
        return argmax(logits, vocab);
    }
    if (p->min_p > 0.0f) {
        /* p_i >= min_p * p_max  <=>  l_i >= max + log(min_p) */
        floor = max + logf(p->min_p);
    }
    if (p->top_k > 0 && p->top_k < vocab) {
        float kth = kth_largest(logits, vocab, p->top_k, floor, s->heap);

        if (kth > floor) {
            floor = kth;
        }
    }
    for (i = 0; i < vocab; i++) {
        float l = logits[i];

        if (l >= floor && l > -INFINITY) {
            double w = expf(l - max);

            cand[n].weight = w;
            cand[n].logit = l;
            cand[n].id = i;
            total += w;
            n++;
        }
    }
    kept = n;
    if (p->top_p < 1.0f) {
        kept = nucleus_select(cand, n, (double) p->top_p * total);
        total = 0.0;
        for (i = 0; i < kept; i++) {
            total += cand[i].weight;
        }
    }
    u = sampler_rng_uniform(rng) * total;
    acc = 0.0;
    for (i = 0; i < kept; i++) {
        acc += cand[i].weight;
        if (u < acc) {
            return cand[i].id;
        }
    }
    /* u within rounding of the total: the last token with weight */
    for (i = kept - 1; i > 0 && cand[i].weight == 0.0; i--) {
    }
    return cand[i].id;
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
        lse = raw_logprobs(logits, vocab, p->top_logprobs, out->top);
        out->n_top = p->top_logprobs < vocab ? p->top_logprobs : vocab;
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
    } else {
        out->token = sample_random(logits, vocab, p, rng, s);
    }
    if (want_logprobs) {
        out->logprob = (float) ((double) s->raw[out->token] - lse);
    }
    return 0;
}
