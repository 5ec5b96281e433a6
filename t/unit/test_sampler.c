/*
 * Sampler: greedy and ties, distributions (chi-square against the exact
 * truncated and renormalised distribution, fixed seeds so every run is the
 * same), penalties and logit bias on hand-computed values, min_tokens,
 * logprobs against a log-softmax in double, seeding.
 */
#include "unit.h"
#include "sampler.h"

#include <stdint.h>

static sampler_params default_params(void)
{
    sampler_params p;

    memset(&p, 0, sizeof(p));
    p.temperature = 1.0f;
    p.top_p = 1.0f;
    p.top_k = 0;
    p.min_p = 0.0f;
    p.repetition_penalty = 1.0f;
    return p;
}

/* Samples once from a copy of logits (the sampler modifies its input). */
static int32_t draw(const float *logits, int vocab, const sampler_params *p,
                    sampler_rng *rng, sampler_scratch *s, float *work)
{
    sampler_result r;

    memcpy(work, logits, (size_t) vocab * sizeof(float));
    if (sampler_sample(work, vocab, p, NULL, rng, s, &r) != 0) {
        return -1;
    }
    return r.token;
}

/* ---- the exact distribution after temperature, min-p, top-k, top-p ----- */

static const float *ref_logits;

static int ref_cmp(const void *a, const void *b)
{
    int ia = *(const int *) a, ib = *(const int *) b;

    if (ref_logits[ia] != ref_logits[ib]) {
        return ref_logits[ia] > ref_logits[ib] ? -1 : 1;
    }
    return ia - ib;
}

/* probs[vocab]: the distribution the sampler must draw from, in double,
 * by sorting (the definition, not the sampler's partial selection). */
static void reference_probs(const float *logits, int vocab,
                            const sampler_params *p, double *probs)
{
    int    *order = malloc((size_t) vocab * sizeof(int));
    double  max = -INFINITY, total = 0.0, mass = 0.0, kth = -INFINITY;
    int     i, k = p->top_k;

    for (i = 0; i < vocab; i++) {
        order[i] = i;
        probs[i] = exp((double) logits[i] / p->temperature);
        if (logits[i] / p->temperature > max) {
            max = logits[i] / p->temperature;
        }
    }
    ref_logits = logits;
    qsort(order, (size_t) vocab, sizeof(int), ref_cmp);
    /* min-p on the full distribution */
    for (i = 0; i < vocab; i++) {
        if (probs[i] < p->min_p * exp(max)) {
            probs[i] = 0.0;
        }
    }
    /* top-k: keep ties with the k-th */
    if (k > 0 && k < vocab) {
        int seen = 0;

        for (i = 0; i < vocab && seen < k; i++) {
            if (probs[order[i]] > 0.0) {
                kth = logits[order[i]];
                seen++;
            }
        }
        if (seen == k) {
            for (i = 0; i < vocab; i++) {
                if (logits[i] < kth) {
                    probs[i] = 0.0;
                }
            }
        }
    }
    for (i = 0; i < vocab; i++) {
        total += probs[i];
    }
    /* top-p: keep a token iff the mass before it is below top_p */
    for (i = 0; i < vocab; i++) {
        int id = order[i];

        if (mass >= p->top_p * total) {
            probs[id] = 0.0;
        }
        mass += probs[id];
    }
    total = 0.0;
    for (i = 0; i < vocab; i++) {
        total += probs[i];
    }
    for (i = 0; i < vocab; i++) {
        probs[i] /= total;
    }
    free(order);
}

/* Chi-square critical value at significance 1e-4 (Wilson-Hilferty). */
static double chi2_critical(int df)
{
    double z = 3.719, a = 2.0 / (9.0 * df);
    double t = 1.0 - a + z * sqrt(a);

    return df * t * t * t;
}

/*
 * Draws n tokens and checks them against the reference distribution:
 * tokens with probability 0 never drawn, chi-square over the rest below
 * the critical value.  Returns the statistic (negative on failure).
 */
static double check_distribution(const float *logits, int vocab,
                                 const sampler_params *p, uint64_t seed,
                                 int n, int *n_kept)
{
    sampler_scratch *s = sampler_scratch_create(vocab);
    float           *work = malloc((size_t) vocab * sizeof(float));
    double          *probs = malloc((size_t) vocab * sizeof(double));
    long            *counts = calloc((size_t) vocab, sizeof(long));
    sampler_rng      rng;
    double           stat = 0.0;
    int              i, kept = 0, bad = 0;

    reference_probs(logits, vocab, p, probs);
    sampler_rng_seed(&rng, seed);
    for (i = 0; i < n; i++) {
        int32_t t = draw(logits, vocab, p, &rng, s, work);

        if (t < 0 || t >= vocab) {
            bad++;
            continue;
        }
        counts[t]++;
    }
    for (i = 0; i < vocab; i++) {
        if (probs[i] == 0.0) {
            if (counts[i] != 0) {
                fprintf(stderr, "  token %d (probability 0) drawn %ld times\n",
                        i, counts[i]);
                bad++;
            }
            continue;
        }
        kept++;
        stat += (counts[i] - n * probs[i]) * (counts[i] - n * probs[i])
                / (n * probs[i]);
    }
    *n_kept = kept;
    sampler_scratch_free(s);
    free(work);
    free(probs);
    free(counts);
    return bad ? -1.0 : stat;
}

/* A small deterministic generator for test data. */
static uint64_t lcg_state = 0x12345678;
static float lcg_float(void)
{
    lcg_state = lcg_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float) ((lcg_state >> 40) / (double) (1 << 24)) * 8.0f - 4.0f;
}

static const float small_logits[8] = {
    2.0f, 1.5f, 1.0f, 0.5f, 0.0f, -0.5f, -1.0f, -3.0f
};

static void expect_fit_n(const float *logits, int vocab,
                         const sampler_params *p, int want_kept, int draws,
                         const char *what)
{
    int    kept = 0;
    double stat = check_distribution(logits, vocab, p, 1234, draws, &kept);

    CHECK(stat >= 0.0, "%s: impossible tokens drawn", what);
    CHECK(want_kept < 0 || kept == want_kept, "%s: %d tokens kept, want %d",
          what, kept, want_kept);
    if (kept > 1) {
        CHECK(stat < chi2_critical(kept - 1),
              "%s: chi-square %.2f over critical %.2f (df %d)", what, stat,
              chi2_critical(kept - 1), kept - 1);
    }
}

static void expect_fit(const float *logits, int vocab, const sampler_params *p,
                       int want_kept, const char *what)
{
    expect_fit_n(logits, vocab, p, want_kept, 200000, what);
}

static void test_greedy(void)
{
    float            logits[4] = { 0.1f, 3.0f, -1.0f, 2.9f };
    sampler_scratch *s = sampler_scratch_create(4);
    sampler_params   p = default_params();
    sampler_rng      rng, before;
    sampler_result   r;

    REQUIRE(s != NULL, "scratch");
    sampler_rng_seed(&rng, 7);
    before = rng;
    p.temperature = 0.0f;
    p.top_k = 1;              /* ignored by greedy */
    CHECK(sampler_sample(logits, 4, &p, NULL, &rng, s, &r) == 0, "sample");
    CHECK(r.token == 1, "greedy picked %d", r.token);
    /* below vLLM's epsilon is greedy too */
    p.temperature = 1e-6f;
    CHECK(sampler_sample(logits, 4, &p, NULL, &rng, s, &r) == 0, "sample");
    CHECK(r.token == 1, "near-zero temperature picked %d", r.token);
    CHECK(memcmp(&rng, &before, sizeof(rng)) == 0,
          "greedy consumed random numbers");
    sampler_scratch_free(s);
}

static void test_greedy_ties(void)
{
    float            tie[5] = { 1.0f, 5.0f, 2.0f, 5.0f, 5.0f };
    float            dead[3] = { -INFINITY, -INFINITY, -INFINITY };
    sampler_scratch *s = sampler_scratch_create(5);
    sampler_params   p = default_params();
    sampler_rng      rng;
    sampler_result   r;

    REQUIRE(s != NULL, "scratch");
    sampler_rng_seed(&rng, 1);
    p.temperature = 0.0f;
    CHECK(sampler_sample(tie, 5, &p, NULL, &rng, s, &r) == 0, "sample");
    CHECK(r.token == 1, "tie broken to %d, want lowest id 1", r.token);
    CHECK(sampler_sample(dead, 3, &p, NULL, &rng, s, &r) == 0, "sample");
    CHECK(r.token == 0, "all -inf gave %d", r.token);
    sampler_scratch_free(s);

    /* a vocabulary wider than the argmax's lanes: the lowest id among equal
     * maxima in different lanes and in the tail, NaN ignored, against a
     * plain scan */
    {
        enum { V = 1003 };
        static float big[V];
        const int    plant[][3] = { { 517, 203, 1001 }, { 1002, 1001, 999 },
                                    { 8, 16, 0 } };

        s = sampler_scratch_create(V);
        REQUIRE(s != NULL, "scratch");
        for (int c = 0; c < 3; c++) {
            int want = V;
            for (int i = 0; i < V; i++) {
                big[i] = (float) ((i * 7919) % 1000) / 100.0f;
            }
            big[5] = NAN;
            for (int k = 0; k < 3; k++) {
                big[plant[c][k]] = 50.0f;
                want = plant[c][k] < want ? plant[c][k] : want;
            }
            CHECK(sampler_sample(big, V, &p, NULL, &rng, s, &r) == 0, "sample");
            CHECK(r.token == want, "case %d: argmax %d, want %d", c, r.token,
                  want);
        }
        sampler_scratch_free(s);
    }
}

static void test_chi_square_temperature(void)
{
    sampler_params p = default_params();

    p.temperature = 1.0f;
    expect_fit(small_logits, 8, &p, 8, "temperature 1");
    p.temperature = 0.6f;
    expect_fit(small_logits, 8, &p, 8, "temperature 0.6");
    p.temperature = 1.7f;
    expect_fit(small_logits, 8, &p, 8, "temperature 1.7");
}

static void test_chi_square_top_k(void)
{
    sampler_params p = default_params();
    float          ties[6] = { 0.0f, 2.0f, 1.0f, 1.0f, -1.0f, 1.0f };

    p.top_k = 3;
    expect_fit(small_logits, 8, &p, 3, "top_k 3");
    p.top_k = 1;
    expect_fit(small_logits, 8, &p, 1, "top_k 1");
    /* the 2nd largest is tied three ways: all three stay (vLLM) */
    p.top_k = 2;
    expect_fit(ties, 6, &p, 4, "top_k 2 with ties");
}

/* A larger row: the heap skips whole blocks, and ties with the k-th far
 * apart in the row must still all be kept. */
static void test_top_k_large_ties(void)
{
    enum { V = 1000 };
    static float   logits[V];
    sampler_params p = default_params();
    int            i;

    for (i = 0; i < V; i++) {
        logits[i] = lcg_float();
    }
    logits[700] = 6.0f;
    logits[3] = 5.5f;
    logits[950] = 5.0f;
    logits[100] = logits[500] = logits[999] = 4.5f;
    p.top_k = 5;
    expect_fit_n(logits, V, &p, 6, 50000, "top_k 5 of 1000, 3 tied at 5th");
    p.top_k = 4;
    expect_fit_n(logits, V, &p, 6, 50000, "top_k 4 of 1000, 3 tied at 4th");
    p.top_k = 3;
    expect_fit_n(logits, V, &p, 3, 50000, "top_k 3 of 1000");
    /* a nucleus of about 18 inside the top 40 (count from the reference) */
    p.top_k = 40;
    p.top_p = 0.7f;
    expect_fit_n(logits, V, &p, -1, 50000, "top_k 40 + top_p 0.7");
}

/* Top-p alone over Qwen's vocabulary size (the weight-bucket path): every
 * draw inside the exact nucleus, for a flat row (nucleus of many thousand
 * tokens) and a peaked one (a few). */
static void test_top_p_full_vocab(void)
{
    enum { V = 151936, N = 400 };
    float           *logits = malloc(V * sizeof(float));
    float           *work = malloc(V * sizeof(float));
    double          *probs = malloc(V * sizeof(double));
    sampler_scratch *s = sampler_scratch_create(V);
    sampler_params   p = default_params();
    sampler_rng      rng;
    int              shape, i;

    REQUIRE(logits && work && probs && s, "out of memory");
    for (shape = 0; shape < 2; shape++) {
        int outside = 0, in_nucleus = 0, distinct = 0;
        static unsigned char hit[V];

        memset(hit, 0, sizeof(hit));
        for (i = 0; i < V; i++) {
            logits[i] = lcg_float();
        }
        if (shape == 1) {
            for (i = 0; i < 5; i++) {
                logits[i * 30011 + 7] = 16.0f - 0.25f * i;
            }
        }
        p.top_p = 0.9f;
        reference_probs(logits, V, &p, probs);
        for (i = 0; i < V; i++) {
            in_nucleus += probs[i] > 0.0;
        }
        sampler_rng_seed(&rng, 31 + shape);
        for (i = 0; i < N; i++) {
            int32_t t = draw(logits, V, &p, &rng, s, work);

            REQUIRE(t >= 0 && t < V, "draw failed");
            outside += probs[t] == 0.0;
            distinct += !hit[t];
            hit[t] = 1;
        }
        CHECK(outside == 0, "shape %d: %d of %d draws outside the nucleus "
              "of %d", shape, outside, N, in_nucleus);
        if (shape == 0) {
            CHECK(in_nucleus > 10000 && distinct > N / 2,
                  "flat: nucleus %d, %d distinct draws", in_nucleus,
                  distinct);
        } else {
            CHECK(in_nucleus >= 2 && in_nucleus <= 5 && distinct == in_nucleus,
                  "peaked: nucleus %d, %d distinct draws", in_nucleus,
                  distinct);
        }
    }
    sampler_scratch_free(s);
    free(logits);
    free(work);
    free(probs);
}

static void test_chi_square_top_p(void)
{
    sampler_params p = default_params();

    /* probabilities at T=1: .405 .245 .149 .090 .055 ...: the mass before
     * the 3rd is .650 < .75, before the 4th .799 */
    p.top_p = 0.75f;
    expect_fit(small_logits, 8, &p, 3, "top_p 0.75");
    p.top_p = 0.5f;
    expect_fit(small_logits, 8, &p, 2, "top_p 0.5");
    p.top_p = 0.1f;
    expect_fit(small_logits, 8, &p, 1, "top_p 0.1");
    /* T=0.5: .633 .233 .086 ...: before the 3rd .866, before the 4th .951 */
    p.temperature = 0.5f;
    p.top_p = 0.9f;
    expect_fit(small_logits, 8, &p, 3, "top_p 0.9 at T 0.5");
}

static void test_chi_square_min_p(void)
{
    sampler_params p = default_params();

    /* p_i / p_max = exp(l_i - 2): 1 .61 .37 .22 .14 .08 .05 .002 */
    p.min_p = 0.2f;
    expect_fit(small_logits, 8, &p, 4, "min_p 0.2");
    p.min_p = 0.05f;
    expect_fit(small_logits, 8, &p, 6, "min_p 0.05");
    p.temperature = 2.0f;   /* min-p after temperature: flatter keeps more */
    p.min_p = 0.2f;
    expect_fit(small_logits, 8, &p, 7, "min_p 0.2 at T 2");
}

static void test_chi_square_combined(void)
{
    sampler_params p = default_params();

    p.top_k = 4;
    p.top_p = 0.8f;   /* over the renormalised top 4: .454 .275 .167 .101 */
    expect_fit(small_logits, 8, &p, 3, "top_k 4 + top_p 0.8");
    p.min_p = 0.5f;   /* drops 1.0 and below first */
    p.top_k = 6;
    p.top_p = 1.0f;
    expect_fit(small_logits, 8, &p, 2, "min_p 0.5 + top_k 6");
    p.temperature = 0.8f;
    p.min_p = 0.1f;
    p.top_k = 5;
    p.top_p = 0.85f;
    expect_fit(small_logits, 8, &p, 3, "T 0.8 + min_p + top_k + top_p");
}

/* Top-p over a shuffled larger vocabulary with many tied logits: the
 * partial selection must keep exactly the sorted prefix (ties by id). */
static void test_top_p_large_shuffled(void)
{
    enum { V = 2000, HIGH = 10, N = 30000 };
    float            logits[V];
    int              high_id[HIGH], i, j, boundary = 0, zeros = 0;
    double           probs[V], high_total = 0.0, need, stat = 0.0, e;
    long             counts[V];
    sampler_scratch *s = sampler_scratch_create(V);
    sampler_params   p = default_params();
    sampler_rng      rng, pick;
    float            work[V];
    long             group = 0;
    double           group_p = 0.0;

    REQUIRE(s != NULL, "scratch");
    for (i = 0; i < V; i++) {
        logits[i] = 0.0f;
        counts[i] = 0;
    }
    sampler_rng_seed(&pick, 99);
    for (j = 0; j < HIGH; j++) {
        int id;

        do {
            id = (int) (sampler_rng_uniform(&pick) * V);
        } while (logits[id] != 0.0f);
        high_id[j] = id;
        logits[id] = 5.0f - 0.1f * j;
        high_total += exp(logits[id]);
    }
    p.top_p = 0.5f;
    /* the kept zero-logit tokens: the lowest ids until the mass is met */
    need = 0.5 * (high_total + (V - HIGH)) - high_total;
    for (i = 0; i < V && zeros < need; i++) {
        if (logits[i] == 0.0f) {
            zeros++;
            boundary = i;
        }
    }
    CHECK(zeros > 100 && zeros < V - HIGH - 100, "fixture: %d zeros", zeros);
    reference_probs(logits, V, &p, probs);
    sampler_rng_seed(&rng, 5);
    for (i = 0; i < N; i++) {
        int32_t t = draw(logits, V, &p, &rng, s, work);

        REQUIRE(t >= 0 && t < V, "draw failed");
        counts[t]++;
    }
    for (i = 0; i < V; i++) {
        int is_high = logits[i] != 0.0f;

        if (!is_high && i <= boundary) {
            CHECK(probs[i] > 0.0, "reference drops kept zero %d", i);
            group += counts[i];
            group_p += probs[i];
        } else if (!is_high) {
            CHECK(counts[i] == 0, "token %d beyond the nucleus drawn %ld",
                  i, counts[i]);
        }
    }
    for (j = 0; j < HIGH; j++) {
        e = N * probs[high_id[j]];
        stat += (counts[high_id[j]] - e) * (counts[high_id[j]] - e) / e;
    }
    e = N * group_p;
    stat += (group - e) * (group - e) / e;
    CHECK(stat < chi2_critical(HIGH), "chi-square %.2f over %.2f", stat,
          chi2_critical(HIGH));
    sampler_scratch_free(s);
}

static void test_penalties(void)
{
    float            logits[5] = { 2.0f, -2.0f, 1.0f, 0.5f, -1.0f };
    const int32_t    prompt[3] = { 0, 1, 0 };
    const int32_t    generated[3] = { 2, 2, 1 };
    const float      want[5] = { 1.0f, -4.75f, -0.5f, 0.5f, -1.0f };
    sampler_history  h = { prompt, 3, generated, 3 };
    sampler_scratch *s = sampler_scratch_create(5);
    sampler_params   p = default_params();
    sampler_rng      rng;
    sampler_result   r;
    int              i, round;

    REQUIRE(s != NULL, "scratch");
    sampler_rng_seed(&rng, 3);
    p.temperature = 0.0f;
    p.repetition_penalty = 2.0f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    /* twice: the scratch's marks must be clean after each call */
    for (round = 0; round < 2; round++) {
        float l[5];

        memcpy(l, logits, sizeof(l));
        CHECK(sampler_sample(l, 5, &p, &h, &rng, s, &r) == 0, "sample");
        for (i = 0; i < 5; i++) {
            CHECK(fabsf(l[i] - want[i]) < 1e-6f,
                  "round %d token %d: %g, want %g", round, i, l[i], want[i]);
        }
        CHECK(r.token == 0, "greedy after penalties picked %d", r.token);
    }
    /* frequency/presence only: prompt tokens untouched */
    {
        float l[5];

        memcpy(l, logits, sizeof(l));
        p.repetition_penalty = 1.0f;
        CHECK(sampler_sample(l, 5, &p, &h, &rng, s, &r) == 0, "sample");
        CHECK(l[0] == 2.0f, "prompt-only token penalised: %g", l[0]);
        CHECK(fabsf(l[2] - (1.0f - 0.5f - 0.5f)) < 1e-6f, "token 2: %g",
              l[2]);
        CHECK(fabsf(l[1] - (-2.0f - 0.25f - 0.5f)) < 1e-6f, "token 1: %g",
              l[1]);
    }
    sampler_scratch_free(s);
}

static void test_logit_bias(void)
{
    float            logits[6] = { 3.0f, 1.0f, 0.5f, 0.0f, -1.0f, -2.0f };
    llm_logit_bias   ban[1] = { { 0, -100.0f } };
    llm_logit_bias   force[2] = { { 5, 100.0f }, { 1, 0.5f } };
    sampler_scratch *s = sampler_scratch_create(6);
    sampler_params   p = default_params();
    sampler_rng      rng;
    sampler_result   r;
    float            work[6];
    int              i, banned_drawn = 0, forced = 0;

    REQUIRE(s != NULL, "scratch");
    sampler_rng_seed(&rng, 11);
    p.logit_bias = ban;
    p.n_logit_bias = 1;
    for (i = 0; i < 20000; i++) {
        banned_drawn += draw(logits, 6, &p, &rng, s, work) == 0;
    }
    CHECK(banned_drawn == 0, "banned token drawn %d times", banned_drawn);
    p.logit_bias = force;
    p.n_logit_bias = 2;
    for (i = 0; i < 20000; i++) {
        forced += draw(logits, 6, &p, &rng, s, work) == 5;
    }
    CHECK(forced == 20000, "forced token drawn %d of 20000", forced);
    /* the bias values themselves, under greedy */
    p.temperature = 0.0f;
    memcpy(work, logits, sizeof(work));
    CHECK(sampler_sample(work, 6, &p, NULL, &rng, s, &r) == 0, "sample");
    CHECK(work[5] == 98.0f && work[1] == 1.5f && work[0] == 3.0f,
          "biased logits %g %g %g", work[5], work[1], work[0]);
    CHECK(r.token == 5, "greedy with +100 picked %d", r.token);
    sampler_scratch_free(s);
}

static void test_min_tokens(void)
{
    float            logits[4] = { 0.0f, 4.0f, 1.0f, 4.0f };
    const int32_t    eos[2] = { 1, 3 };
    sampler_scratch *s = sampler_scratch_create(4);
    sampler_params   p = default_params();
    sampler_rng      rng;
    sampler_result   r;
    float            work[4];
    int              i, eos_drawn = 0;

    REQUIRE(s != NULL, "scratch");
    sampler_rng_seed(&rng, 2);
    p.eos_ids = eos;
    p.n_eos = 2;
    p.suppress_eos = 1;
    for (i = 0; i < 20000; i++) {
        int32_t t = draw(logits, 4, &p, &rng, s, work);

        eos_drawn += t == 1 || t == 3;
    }
    CHECK(eos_drawn == 0, "eos drawn %d times under min_tokens", eos_drawn);
    p.temperature = 0.0f;
    memcpy(work, logits, sizeof(work));
    CHECK(sampler_sample(work, 4, &p, NULL, &rng, s, &r) == 0, "sample");
    CHECK(r.token == 2, "greedy under min_tokens picked %d", r.token);
    p.suppress_eos = 0;
    memcpy(work, logits, sizeof(work));
    CHECK(sampler_sample(work, 4, &p, NULL, &rng, s, &r) == 0, "sample");
    CHECK(r.token == 1, "greedy after min_tokens picked %d", r.token);
    sampler_scratch_free(s);
}

static void test_logprobs(void)
{
    enum { V = 1000 };
    float            logits[V], work[V];
    double           ref[V], max = -INFINITY, sum = 0.0;
    int              order[V], i, trial;
    llm_logit_bias   bias[1] = { { 7, 3.0f } };
    const int32_t    gen[4] = { 3, 3, 10, 999 };
    sampler_history  h = { gen, 4, gen, 4 };
    sampler_scratch *s = sampler_scratch_create(V);
    sampler_params   p = default_params();
    sampler_rng      rng;
    sampler_result   r;

    REQUIRE(s != NULL, "scratch");
    for (i = 0; i < V; i++) {
        logits[i] = lcg_float();
    }
    logits[500] = 6.0f;         /* a tie at the top: lower id first */
    logits[10] = 6.0f;
    logits[20] = logits[21] = 5.5f;
    for (i = 0; i < V; i++) {
        if (logits[i] > max) {
            max = logits[i];
        }
    }
    for (i = 0; i < V; i++) {
        sum += exp((double) logits[i] - max);
    }
    for (i = 0; i < V; i++) {
        ref[i] = (double) logits[i] - max - log(sum);
        order[i] = i;
    }
    ref_logits = logits;
    qsort(order, V, sizeof(int), ref_cmp);

    /* processing must not change what is reported (raw logprobs) */
    p.temperature = 0.7f;
    p.top_k = 50;
    p.top_p = 0.9f;
    p.logit_bias = bias;
    p.n_logit_bias = 1;
    p.repetition_penalty = 1.3f;
    p.frequency_penalty = 0.2f;
    p.logprobs = 1;
    p.top_logprobs = 20;
    sampler_rng_seed(&rng, 77);
    for (trial = 0; trial < 50; trial++) {
        memcpy(work, logits, sizeof(work));
        REQUIRE(sampler_sample(work, V, &p, &h, &rng, s, &r) == 0, "sample");
        CHECK(fabs(r.logprob - ref[r.token]) < 1e-5,
              "token %d logprob %.7f, want %.7f", r.token, r.logprob,
              ref[r.token]);
        REQUIRE(r.n_top == 20, "n_top %d", r.n_top);
        for (i = 0; i < 20; i++) {
            CHECK(r.top[i].token == order[i], "top[%d] is %d, want %d", i,
                  r.top[i].token, order[i]);
            CHECK(fabs(r.top[i].logprob - ref[order[i]]) < 1e-5,
                  "top[%d] logprob %.7f, want %.7f", i, r.top[i].logprob,
                  ref[order[i]]);
        }
    }
    CHECK(r.top[0].token == 10 && r.top[1].token == 500, "tie order %d %d",
          r.top[0].token, r.top[1].token);

    /* only the sampled token's, greedy */
    p.top_logprobs = 0;
    p.temperature = 0.0f;
    memcpy(work, logits, sizeof(work));
    REQUIRE(sampler_sample(work, V, &p, NULL, &rng, s, &r) == 0, "sample");
    CHECK(r.n_top == 0, "n_top %d without top_logprobs", r.n_top);
    CHECK(fabs(r.logprob - ref[r.token]) < 1e-5, "greedy logprob %.7f",
          r.logprob);

    /* more alternatives asked than the vocabulary has */
    {
        float small[3] = { 0.0f, 1.0f, 2.0f };

        p.top_logprobs = 20;
        p.n_logit_bias = 0;
        REQUIRE(sampler_sample(small, 3, &p, NULL, &rng, s, &r) == 0,
                "sample");
        CHECK(r.n_top == 3 && r.top[0].token == 2 && r.top[2].token == 0,
              "n_top %d", r.n_top);
        CHECK(fabs(r.top[0].logprob - (2.0 - log(1 + exp(1) + exp(2))))
              < 1e-6, "top logprob %.7f", r.top[0].logprob);
    }
    sampler_scratch_free(s);
}

static void fill_sequence(uint64_t seed, int32_t *out, int n,
                          const float *logits, int vocab, sampler_scratch *s)
{
    sampler_params p = default_params();
    sampler_rng    rng;
    float          work[64];
    int            i;

    p.temperature = 1.0f;
    p.top_p = 0.95f;
    sampler_rng_seed(&rng, seed);
    for (i = 0; i < n; i++) {
        out[i] = draw(logits, vocab, &p, &rng, s, work);
    }
}

static void test_determinism(void)
{
    enum { V = 64, N = 500 };
    float            logits[V], other[V], work[V];
    int32_t          a[N], b[N], c[N], inter[N];
    sampler_scratch *s = sampler_scratch_create(V);
    sampler_params   p = default_params();
    sampler_rng      r1, r2;
    int              i, differ = 0;

    REQUIRE(s != NULL, "scratch");
    for (i = 0; i < V; i++) {
        logits[i] = lcg_float() * 0.5f;
        other[i] = lcg_float();
    }
    fill_sequence(42, a, N, logits, V, s);
    fill_sequence(42, b, N, logits, V, s);
    fill_sequence(43, c, N, logits, V, s);
    CHECK(memcmp(a, b, sizeof(a)) == 0, "same seed, different tokens");
    for (i = 0; i < N; i++) {
        differ += a[i] != c[i];
    }
    CHECK(differ > N / 4, "seeds 42 and 43 differ at only %d of %d", differ,
          N);
    /* another request drawing in between does not disturb this one */
    p.top_p = 0.95f;
    sampler_rng_seed(&r1, 42);
    sampler_rng_seed(&r2, 42);
    for (i = 0; i < N; i++) {
        inter[i] = draw(logits, V, &p, &r1, s, work);
        (void) draw(other, V, &p, &r2, s, work);
    }
    CHECK(memcmp(a, inter, sizeof(a)) == 0, "interleaving changed tokens");
    sampler_scratch_free(s);
}

static void test_rng(void)
{
    sampler_rng r1, r2;
    double      mean = 0.0, u;
    int         i, in_range = 1;

    sampler_rng_seed(&r1, 0);
    sampler_rng_seed(&r2, 0);
    for (i = 0; i < 100000; i++) {
        u = sampler_rng_uniform(&r1);
        in_range &= u >= 0.0 && u < 1.0;
        in_range &= u == sampler_rng_uniform(&r2);
        mean += u;
    }
    mean /= 100000;
    CHECK(in_range, "uniform out of [0,1) or not reproducible");
    /* standard error of the mean is 0.0009 */
    CHECK(fabs(mean - 0.5) < 0.005, "mean %.4f", mean);
}

static void test_invalid(void)
{
    float            logits[4] = { 1.0f, 2.0f, 3.0f, 4.0f };
    float            copy[4];
    llm_logit_bias   bias[1] = { { 4, 1.0f } };
    const int32_t    gen[1] = { -1 };
    sampler_history  h = { NULL, 0, gen, 1 };
    sampler_scratch *s = sampler_scratch_create(4);
    sampler_params   p = default_params();
    sampler_rng      rng;
    sampler_result   r;

    REQUIRE(s != NULL, "scratch");
    CHECK(sampler_scratch_create(0) == NULL, "scratch of vocab 0");
    sampler_rng_seed(&rng, 1);
    memcpy(copy, logits, sizeof(copy));
    CHECK(sampler_sample(logits, 5, &p, NULL, &rng, s, &r) == -1,
          "vocab over the scratch's accepted");
    p.logit_bias = bias;
    p.n_logit_bias = 1;
    CHECK(sampler_sample(logits, 4, &p, NULL, &rng, s, &r) == -1,
          "bias id 4 accepted");
    p.n_logit_bias = 0;
    p.frequency_penalty = 1.0f;
    CHECK(sampler_sample(logits, 4, &p, &h, &rng, s, &r) == -1,
          "history id -1 accepted");
    p.frequency_penalty = 0.0f;
    p.top_p = 0.0f;
    CHECK(sampler_sample(logits, 4, &p, NULL, &rng, s, &r) == -1,
          "top_p 0 accepted");
    p.top_p = 1.0f;
    p.top_logprobs = 21;
    CHECK(sampler_sample(logits, 4, &p, NULL, &rng, s, &r) == -1,
          "top_logprobs 21 accepted");
    p.top_logprobs = 0;
    p.temperature = NAN;
    CHECK(sampler_sample(logits, 4, &p, NULL, &rng, s, &r) == -1,
          "NaN temperature accepted");
    CHECK(memcmp(copy, logits, sizeof(copy)) == 0,
          "refused call modified the logits");
    sampler_scratch_free(s);
}

int main(void)
{
    RUN(test_greedy);
    RUN(test_greedy_ties);
    RUN(test_chi_square_temperature);
    RUN(test_chi_square_top_k);
    RUN(test_top_k_large_ties);
    RUN(test_chi_square_top_p);
    RUN(test_chi_square_min_p);
    RUN(test_chi_square_combined);
    RUN(test_top_p_large_shuffled);
    RUN(test_top_p_full_vocab);
    RUN(test_penalties);
    RUN(test_logit_bias);
    RUN(test_min_tokens);
    RUN(test_logprobs);
    RUN(test_determinism);
    RUN(test_rng);
    RUN(test_invalid);
    return unit_done();
}
