/*
 * Sampling on the device: src/sampler.h's processing order over logits
 * rows that never leave the GPU; only token ids (and, for rows that ask,
 * logprobs) come back.  Used by the backend's forward_sample and by the
 * checks (cuda_sampler_* in cuda_tools.cuh).
 *
 * One block of 1024 threads per row.  Nothing sorts the vocabulary:
 * top-k, the top logprobs and top-p's boundary are found by radix select
 * (4 passes of 8-bit histograms in shared memory; top-p's histograms
 * carry probability mass); after top-k the few survivors (<= 4096) are
 * compacted into shared memory and everything after works on them.
 * Masses are sums of weights in fixed point (2^-42 units, 64-bit integers),
 * so every sum is exact and independent of thread order: the same row and
 * uniform give the same token on every run, whatever else is in the batch.
 */
#ifndef LLM_CUDA_SAMPLING_CUH
#define LLM_CUDA_SAMPLING_CUH

#include "backend.h"
#include "cuda_util.cuh"

/* Per row logprob results on the device (and the pinned host copy). */
typedef struct {
    float   logprob;                        /* of the sampled token */
    int32_t n_top;
    int32_t top_ids[SAMPLER_MAX_TOP_LOGPROBS];
    float   top_lp[SAMPLER_MAX_TOP_LOGPROBS];
} llm_lp_out;

/* Buffers of the sampling step; zero-initialise, then enqueue/collect. */
typedef struct {
    int            V;
    size_t         cap_pack;              /* bytes of h_pack / d_pack */
    unsigned char *h_pack, *d_pack;       /* rows, then id lists, then biases */
    size_t         cap_list;              /* entries of d_saved */
    float         *d_saved;               /* raw logits of edited ids */
    int            cap_rows;
    int32_t       *d_tok, *h_tok;
    llm_lp_out    *d_lp, *h_lp;
    int            cap_count_rows;        /* rows of d_counts */
    int32_t       *d_counts;              /* [rows][V], all zero between steps */
    int            n, any_lp;             /* of the step in flight */
    size_t         bytes;                 /* device bytes held */
} llm_sampling;

/* Validates and packs rows[0, n), uploads them and queues the sampling of
 * logits rows [n][V] (d_logits; edited in place: eos mask, logit_bias and
 * penalties, as sampler_sample() leaves its logits) and the download of
 * the results on st.  Returns 0, or -1 with err (nothing queued). */
int llm_sampling_enqueue(llm_sampling *s, float *d_logits, int V,
                         const llm_sample_row *rows, int n, cudaStream_t st,
                         char *err, size_t errlen);

/* After st has been synchronized: the results of the step enqueued last. */
void llm_sampling_collect(const llm_sampling *s, const llm_sample_row *rows,
                          sampler_result *out);

void llm_sampling_free(llm_sampling *s);

#endif
