/*
 * Token sampling on host logits: penalties, logit bias, temperature,
 * top-k, top-p, min-p, seeded per request, logprobs with alternatives.
 *
 * One sequence per call; the engine calls sampler_sample() once per row of
 * logits.  The processing order is vLLM's (v1 sampler):
 *
 *   1. logprobs, when asked: log-softmax of the raw logits as they come in,
 *      before any of the steps below (vLLM's default
 *      logprobs_mode=raw_logprobs: the model's own distribution, not the
 *      one after penalties, temperature or truncation);
 *   2. min_tokens: eos ids set to -inf while suppress_eos;
 *   3. logit_bias: added to the listed ids;
 *   4. penalties: repetition (over prompt + generated tokens, once per
 *      distinct token: positive logits divided, negative multiplied), then
 *      frequency (times the count in the generated tokens) and presence
 *      (once if present in the generated tokens) subtracted;
 *   5. temperature < 1e-5: greedy argmax (lowest id on ties), the rest is
 *      skipped and no random number is drawn;
 *   6. logits divided by temperature;
 *   7. min-p: tokens with probability < min_p * max probability dropped;
 *   8. top-k: tokens with a logit below the k-th largest dropped (tokens
 *      tied with the k-th are kept, as in vLLM);
 *   9. top-p: the smallest set of most likely tokens whose probability
 *      (renormalised over what 7-8 kept) reaches top_p; ties in the order
 *      are broken by lower id first;
 *  10. one uniform draw from the renormalised remaining distribution.
 *
 * Nothing sorts the vocabulary: top-k keeps a heap of k over the raw
 * logits (temperature does not change the order), top-p finds the weight
 * bucket where the cumulative mass crosses top_p and runs a weighted
 * quickselect (expected linear time) inside it.  Measured per call at
 * vocab 151936 on the 2-core development VM (best of 50): greedy 11 us,
 * top_k=20 + top_p=0.8 24 us, top_p alone 0.6-0.7 ms, temperature alone
 * 0.4 ms (one expf per token dominates the last two).
 */
#ifndef LLM_SAMPLER_H
#define LLM_SAMPLER_H

#include <stdint.h>
#include "llm.h"

/* Per-request RNG (xoshiro256** seeded through splitmix64): same seed, same
 * draws, whatever else is in the batch. */
typedef struct {
    uint64_t s[4];
} sampler_rng;

void sampler_rng_seed(sampler_rng *r, uint64_t seed);
double sampler_rng_uniform(sampler_rng *r);   /* [0, 1) */

/* Resolved parameters (defaults already applied, no sentinels). */
typedef struct {
    float temperature;        /* < 1e-5: greedy */
    float top_p;              /* (0, 1]; 1: off */
    int   top_k;              /* >= 0; 0 (or >= vocab): off */
    float min_p;              /* [0, 1]; 0: off */
    float presence_penalty;
    float frequency_penalty;
    float repetition_penalty; /* > 0; 1: off */
    const llm_logit_bias *logit_bias;
    int   n_logit_bias;
    int   logprobs;           /* want the sampled token's logprob */
    int   top_logprobs;       /* 0..20 (implies logprobs) */
    int   suppress_eos;       /* min_tokens not reached: eos ids masked */
    const int32_t *eos_ids;   /* ids outside the vocabulary are ignored */
    int   n_eos;
} sampler_params;

/* Token history for penalties: prompt tokens (repetition penalty) and
 * generated tokens (all three). */
typedef struct {
    const int32_t *prompt;
    int            n_prompt;
    const int32_t *generated;
    int            n_generated;
} sampler_history;

#define SAMPLER_MAX_TOP_LOGPROBS 20

typedef struct {
    int32_t         token;
    float           logprob;          /* of token, from the raw model
                                         distribution (see step 1 above);
                                         0 when not asked */
    int             n_top;            /* = top_logprobs when asked */
    llm_top_logprob top[SAMPLER_MAX_TOP_LOGPROBS]; /* most likely first,
                                         lower id first on ties */
} sampler_result;

/* Scratch space reused across calls (no allocation per token).  One per
 * thread that samples; about 22 bytes per vocabulary entry.  NULL when out
 * of memory or vocab <= 0. */
typedef struct sampler_scratch sampler_scratch;
sampler_scratch *sampler_scratch_create(int vocab);
void sampler_scratch_free(sampler_scratch *s);

/*
 * Samples from logits[vocab].  The logits are modified in place: on return
 * they hold the values after steps 2-4 (temperature and truncation are
 * applied to the few tokens that need them, not written back).
 * h may be NULL (no history).  Returns 0, or -1 when an argument is out of
 * range (vocab larger than the scratch's, a parameter outside the ranges
 * above, a logit_bias or history id outside the vocabulary); the logits
 * are untouched then.
 *
 * Degenerate rows: when every logit is -inf (or NaN) the result is token 0;
 * +inf logits win outright (the lowest such id).
 */
int sampler_sample(float *logits, int vocab, const sampler_params *p,
                   const sampler_history *h, sampler_rng *rng,
                   sampler_scratch *scratch, sampler_result *out);

#endif
