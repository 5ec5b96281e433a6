/*
 * The narrow interface every backend (CPU, CUDA) implements: run one
 * scheduled batch over the paged KV cache and return logits of the rows
 * that need them.  Scheduling, KV bookkeeping, sampling, tokenization and
 * stop handling are shared code and never live in a backend.
 *
 * KV layout is the backend's business; the engine only hands out block
 * numbers.  Token t of a sequence lives in block
 * block_table[t / block_size] at slot t % block_size.
 */
#ifndef LLM_BACKEND_H
#define LLM_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include "model.h"
#include "sampler.h"

typedef struct {
    int            n_tokens;      /* tokens in this step, all sequences */
    const int32_t *token_ids;     /* [n_tokens] */
    const int32_t *positions;     /* [n_tokens] position in its sequence */
    int            n_seqs;
    /* Sequence s owns tokens [seq_start[s], seq_start[s+1]) of the batch,
     * with consecutive positions; its context after this step is
     * seq_len[s] tokens (earlier ones are already in the KV cache). */
    const int32_t *seq_start;     /* [n_seqs + 1] */
    const int32_t *seq_len;       /* [n_seqs] */
    const int32_t *block_tables;  /* [n_seqs * max_blocks] */
    int            max_blocks;    /* row stride of block_tables */
    /* Batch token indices whose logits are wanted, in output order. */
    const int32_t *logit_rows;    /* [n_logits] */
    int            n_logits;
} llm_batch;

typedef struct llm_backend llm_backend;

/* forward's return value when no later call can succeed. */
#define LLM_BACKEND_FATAL (-2)

/* One logits row of an on-device sampling step (forward_sample).  p and h
 * are sampler_sample()'s; uniform is the row's one draw in [0, 1), taken by
 * the caller from the request's own RNG (sampler_rng_uniform) only when
 * the row is not greedy, so a request's stream of draws is the same
 * whichever path samples a step, and no other row can change it. */
typedef struct {
    const sampler_params  *p;
    const sampler_history *h;        /* NULL: no history */
    double                 uniform;
} llm_sample_row;

typedef struct {
    const char *name;             /* "cpu", "cuda" */
    /* Bytes one KV block takes (all layers, K and V). */
    size_t (*kv_block_bytes)(llm_backend *b, int block_size);
    /* Allocates the KV pool; called once before the first forward. */
    int    (*kv_alloc)(llm_backend *b, int n_blocks, int block_size,
                       char *err, size_t errlen);
    /* Runs the batch; writes n_logits * vocab floats to logits (host).
     * Returns 0, -1 with err (this batch failed), or LLM_BACKEND_FATAL
     * with err (the device is unusable, e.g. a sticky CUDA error: the
     * engine fails every request and goes to LLM_STATE_FAILED). */
    int    (*forward)(llm_backend *b, const llm_batch *batch, float *logits,
                      char *err, size_t errlen);
    /* Free device memory in bytes (for kv_cache fractions); CPU: 0. */
    size_t (*free_memory)(llm_backend *b);
    void   (*destroy)(llm_backend *b);
    /* Optional; NULL when the backend has none (CPU).  Runs the batch like
     * forward, then samples row k of batch->logit_rows on the device with
     * rows[k], in sampler.h's order and with its parameter ranges
     * (penalties, logit_bias, min_tokens' eos mask, temperature, min-p,
     * top-k, top-p, logprobs), and writes out[k]; the logits stay on the
     * device.  Grammar masks and logits hooks are host work: a step with
     * such a row goes through forward.  Results equal sampler_sample()'s
     * up to float rounding at truncation boundaries (the order in which
     * kept tokens are walked for the draw differs, so the same uniform can
     * pick a different token; the distribution is the same).
     * Returns as forward does. */
    int    (*forward_sample)(llm_backend *b, const llm_batch *batch,
                             const llm_sample_row *rows, sampler_result *out,
                             char *err, size_t errlen);
} llm_backend_ops;

struct llm_backend {
    const llm_backend_ops *ops;
    const model           *m;
};

/* CPU backend over a loaded model; threads 0 = online cores. */
llm_backend *cpu_backend_create(const model *m, int threads,
                                char *err, size_t errlen);

/* CPU arithmetic: EXACT (the default) keeps f32-grade results (relative
 * error ~1e-5 against transformers' f32 forward); FAST rounds activations
 * to bf16 before the bf16 weight products, as llama.cpp does: about twice
 * the prefill speed on CPUs with AVX512-BF16, ~1e-3 relative error. */
typedef enum {
    CPU_PRECISION_EXACT = 0,
    CPU_PRECISION_FAST
} cpu_precision;

/* KV cache elements: F32 (the default, exact), or BF16: half the memory
 * and bandwidth, K and V rounded to ~3 significant digits (as the CUDA
 * backend always keeps them). */
typedef enum {
    CPU_KV_F32 = 0,
    CPU_KV_BF16
} cpu_kv_dtype;

llm_backend *cpu_backend_create_ex(const model *m, int threads,
                                   cpu_precision precision,
                                   cpu_kv_dtype kv_dtype,
                                   char *err, size_t errlen);

#ifdef LLM_HAVE_CUDA
/* CUDA backend; copies (or generates, dummy) weights to device `device`. */
llm_backend *cuda_backend_create(const model *m, int device,
                                 char *err, size_t errlen);
#endif

#endif
