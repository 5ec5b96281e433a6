/*
 * Model description and weights: config.json, generation_config.json and
 * safetensors (single file or sharded), or random "dummy" weights.
 * Shared by every backend; the backend decides where the bytes live.
 */
#ifndef LLM_MODEL_H
#define LLM_MODEL_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    DTYPE_F32 = 0,
    DTYPE_F16,
    DTYPE_BF16
} llm_dtype;

size_t llm_dtype_size(llm_dtype t);

typedef enum {
    ROPE_SCALING_NONE = 0,
    ROPE_SCALING_LINEAR,
    ROPE_SCALING_DYNAMIC,
    ROPE_SCALING_YARN
} rope_scaling_type;

typedef struct {
    char   model_type[32];        /* "qwen3", "qwen2", "llama" */
    int    vocab_size;
    int    hidden_size;
    int    intermediate_size;
    int    n_layers;
    int    n_heads;
    int    n_kv_heads;
    int    head_dim;              /* may differ from hidden / heads */
    int    max_position_embeddings;
    float  rms_norm_eps;
    double rope_theta;
    rope_scaling_type rope_scaling;
    double rope_factor;
    int    rope_original_max_pos;
    double yarn_beta_fast, yarn_beta_slow;
    double rope_attention_factor; /* yarn: cos/sin scale; 0 = derived from
                                     rope_factor as transformers does */
    int    tie_word_embeddings;
    int    attention_bias;        /* qwen2: q/k/v bias */
    int    qk_norm;               /* qwen3: q_norm / k_norm per head */
    llm_dtype torch_dtype;
    int32_t bos_token_id;         /* -1 if none */
    int32_t eos_token_ids[8];     /* config + generation_config */
    int    n_eos;
} model_config;

/* Defaults from generation_config.json; negative when absent. */
typedef struct {
    float temperature;
    float top_p;
    int   top_k;
    float min_p;
    float repetition_penalty;
} generation_defaults;

/* One tensor: dtype, shape, and its bytes (mmap'ed or allocated). */
typedef struct {
    llm_dtype   dtype;
    int         ndim;
    int64_t     shape[4];
    const void *data;             /* NULL when absent (optional tensors) */
} tensor_ref;

typedef struct {
    tensor_ref input_norm;        /* [hidden] */
    tensor_ref q_proj, k_proj, v_proj, o_proj;   /* [out, in] */
    tensor_ref q_bias, k_bias, v_bias;           /* qwen2 only */
    tensor_ref q_norm, k_norm;    /* [head_dim], qwen3 only */
    tensor_ref post_norm;         /* [hidden] */
    tensor_ref gate_proj, up_proj, down_proj;
} layer_weights;

typedef struct model_weights model_weights;

typedef struct {
    model_config        cfg;
    generation_defaults gen;
    tensor_ref          embed;     /* [vocab, hidden] */
    tensor_ref          final_norm;
    tensor_ref          lm_head;   /* == embed when tied */
    layer_weights      *layers;    /* n_layers */
    model_weights      *storage;   /* mmaps / allocations, private */
} model;

/* Parses config.json and generation_config.json only (nginx -t). */
int model_config_load(const char *model_dir, model_config *cfg,
                      generation_defaults *gen, char *err, size_t errlen);

/* Loads the config and every tensor (checked by name, dtype, shape).
 * dummy: random bf16 weights of the configured shape from seed. */
model *model_load(const char *model_dir, int dummy, uint64_t seed,
                  char *err, size_t errlen);
void model_free(model *m);

#endif
