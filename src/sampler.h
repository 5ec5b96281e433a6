/*
 * Token sampling on host logits: penalties, logit bias, temperature,
 * top-k, top-p, min-p, seeded per request, logprobs with alternatives.
 */
#ifndef LLM_SAMPLER_H
#define LLM_SAMPLER_H

#include <stdint.h>
#include "llm.h"

/* Per-request RNG: same seed, same draws, whatever else is in the batch. */
typedef struct {
    uint64_t s[4];
} sampler_rng;

void sampler_rng_seed(sampler_rng *r, uint64_t seed);
double sampler_rng_uniform(sampler_rng *r);   /* [0, 1) */

/* Resolved parameters (defaults already applied, no sentinels). */
typedef struct {
    float temperature;        /* 0: greedy */
    float top_p;              /* 1: off */
    int   top_k;              /* 0: off */
    float min_p;              /* 0: off */
    float presence_penalty;
    float frequency_penalty;
    float repetition_penalty; /* 1: off */
    const llm_logit_bias *logit_bias;
    int   n_logit_bias;
    int   logprobs;           /* want the sampled token's logprob */
    int   top_logprobs;       /* 0..20 */
    int   suppress_eos;       /* min_tokens not reached: eos ids masked */
    const int32_t *eos_ids;
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

typedef struct {
    int32_t         token;
    float           logprob;          /* of token, from the processed
                                         distribution before top-k/p
                                         truncation, as vLLM reports */
    int             n_top;
    llm_top_logprob top[20];
} sampler_result;

/* Scratch space reused across calls (no allocation per token). */
typedef struct sampler_scratch sampler_scratch;
sampler_scratch *sampler_scratch_create(int vocab);
void sampler_scratch_free(sampler_scratch *s);

/* Samples from logits[vocab] (modified in place). Returns 0. */
int sampler_sample(float *logits, int vocab, const sampler_params *p,
                   const sampler_history *h, sampler_rng *rng,
                   sampler_scratch *scratch, sampler_result *out);

#endif
