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

typedef struct {
    const char *name;             /* "cpu", "cuda" */
    /* Bytes one KV block takes (all layers, K and V). */
    size_t (*kv_block_bytes)(llm_backend *b, int block_size);
    /* Allocates the KV pool; called once before the first forward. */
    int    (*kv_alloc)(llm_backend *b, int n_blocks, int block_size,
                       char *err, size_t errlen);
    /* Runs the batch; writes n_logits * vocab floats to logits (host).
     * Returns 0, or -1 with err. */
    int    (*forward)(llm_backend *b, const llm_batch *batch, float *logits,
                      char *err, size_t errlen);
    /* Free device memory in bytes (for kv_cache fractions); CPU: 0. */
    size_t (*free_memory)(llm_backend *b);
    void   (*destroy)(llm_backend *b);
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

llm_backend *cpu_backend_create_ex(const model *m, int threads,
                                   cpu_precision precision,
                                   char *err, size_t errlen);

#ifdef LLM_HAVE_CUDA
/* CUDA backend; copies (or generates, dummy) weights to device `device`. */
llm_backend *cuda_backend_create(const model *m, int device,
                                 char *err, size_t errlen);
#endif

#endif
