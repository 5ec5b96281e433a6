/*
 * Model loading: config.json and generation_config.json, the safetensors
 * weights (checked tensor by tensor against the config and used in place
 * from the mapping), or deterministic random "dummy" weights in one bf16
 * allocation.
 */
#include "model.h"
#include "safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

struct model_weights {
    st_set *files;          /* safetensors mappings, or NULL */
    void   *dummy;          /* one anonymous mapping of bf16 weights */
    size_t  dummy_bytes;
};

size_t llm_dtype_size(llm_dtype t)
{
    switch (t) {
    case DTYPE_F32:  return 4;
    case DTYPE_F16:  return 2;
    case DTYPE_BF16: return 2;
    }
    return 0;
}

/* ---- JSON helpers ------------------------------------------------------ */

static cJSON *read_json(const char *path, int optional, int *absent,
                        char *err, size_t errlen)
{
    FILE *f;
    long n;
    char *text;
    cJSON *root;

    if (absent) {
        *absent = 0;
    }
    f = fopen(path, "rb");
    if (f == NULL) {
        if (optional && errno == ENOENT) {
            *absent = 1;
            return NULL;
        }
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0
        || fseek(f, 0, SEEK_SET) != 0 || n > 16L * 1024 * 1024) {
        snprintf(err, errlen, "%s: cannot read (or larger than 16 MB)", path);
        fclose(f);
        return NULL;
    }
    text = malloc((size_t) n + 1);
    if (text == NULL || fread(text, 1, (size_t) n, f) != (size_t) n) {
        snprintf(err, errlen, "%s: cannot read", path);
        free(text);
        fclose(f);
        return NULL;
    }
    fclose(f);
    root = cJSON_ParseWithLength(text, (size_t) n);
    free(text);
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* Integer field: 0 and *v set when present; 1 when absent or null;
 * -1 (err set) when present but not an integer in [lo, hi]. */
static int get_int(const cJSON *o, const char *key, long lo, long hi,
                   long *v, const char *file, char *err, size_t errlen)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, key);

    if (n == NULL || cJSON_IsNull(n)) {
        return 1;
    }
    if (!cJSON_IsNumber(n) || floor(n->valuedouble) != n->valuedouble
        || n->valuedouble < (double) lo || n->valuedouble > (double) hi) {
        snprintf(err, errlen, "%s: \"%s\" must be an integer in [%ld, %ld]",
                 file, key, lo, hi);
        return -1;
    }
    *v = (long) n->valuedouble;
    return 0;
}

static int get_num(const cJSON *o, const char *key, double *v,
                   const char *file, char *err, size_t errlen)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, key);

    if (n == NULL || cJSON_IsNull(n)) {
        return 1;
    }
    if (!cJSON_IsNumber(n) || !isfinite(n->valuedouble)) {
        snprintf(err, errlen, "%s: \"%s\" must be a number", file, key);
        return -1;
    }
    *v = n->valuedouble;
    return 0;
}

static int get_bool(const cJSON *o, const char *key, int *v,
                    const char *file, char *err, size_t errlen)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, key);

    if (n == NULL || cJSON_IsNull(n)) {
        return 1;
    }
    if (!cJSON_IsBool(n)) {
        snprintf(err, errlen, "%s: \"%s\" must be true or false", file, key);
        return -1;
    }
    *v = cJSON_IsTrue(n);
    return 0;
}

static int add_eos_one(model_config *cfg, const cJSON *e, const char *file,
                       char *err, size_t errlen)
{
    int32_t id;

    if (!cJSON_IsNumber(e) || e->valuedouble < 0
        || e->valuedouble > 2147483647.0
        || floor(e->valuedouble) != e->valuedouble) {
        snprintf(err, errlen, "%s: \"eos_token_id\" holds a value that is "
                 "not a token id", file);
        return -1;
    }
    id = (int32_t) e->valuedouble;
    for (int i = 0; i < cfg->n_eos; i++) {
        if (cfg->eos_token_ids[i] == id) {
            return 0;
        }
    }
    if (cfg->n_eos < 8) {
        cfg->eos_token_ids[cfg->n_eos++] = id;
    }
    return 0;
}

/* Adds the eos ids of an int-or-array field, without duplicates. */
static int add_eos(model_config *cfg, const cJSON *o, const char *file,
                   char *err, size_t errlen)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, "eos_token_id");
    const cJSON *e;

    if (n == NULL || cJSON_IsNull(n)) {
        return 0;
    }
    if (cJSON_IsNumber(n)) {
        return add_eos_one(cfg, n, file, err, errlen);
    }
    if (!cJSON_IsArray(n)) {
        snprintf(err, errlen, "%s: \"eos_token_id\" must be an integer or "
                 "a list of integers", file);
        return -1;
    }
    cJSON_ArrayForEach(e, n) {
        if (add_eos_one(cfg, e, file, err, errlen) != 0) {
            return -1;
        }
    }
    return 0;
}

/* ---- config.json ------------------------------------------------------- */

static int parse_rope_scaling(model_config *cfg, const cJSON *rs,
                              const char *file, char *err, size_t errlen)
{
    const cJSON *type;
    double v;
    long iv;
    const char *t;

    cfg->rope_scaling = ROPE_SCALING_NONE;
    cfg->rope_factor = 1.0;
    cfg->rope_original_max_pos = cfg->max_position_embeddings;
    cfg->yarn_beta_fast = 32.0;
    cfg->yarn_beta_slow = 1.0;
    cfg->rope_attention_factor = 0.0;
    if (rs == NULL || cJSON_IsNull(rs)) {
        return 0;
    }
    if (!cJSON_IsObject(rs)) {
        snprintf(err, errlen, "%s: \"rope_scaling\" must be an object or null",
                 file);
        return -1;
    }
    type = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!cJSON_IsString(type)) {
        type = cJSON_GetObjectItemCaseSensitive(rs, "type");
    }
    if (!cJSON_IsString(type)) {
        snprintf(err, errlen, "%s: rope_scaling without a \"type\"", file);
        return -1;
    }
    t = type->valuestring;
    if (strcmp(t, "default") == 0) {
        return 0;
    } else if (strcmp(t, "linear") == 0) {
        cfg->rope_scaling = ROPE_SCALING_LINEAR;
    } else if (strcmp(t, "dynamic") == 0) {
        cfg->rope_scaling = ROPE_SCALING_DYNAMIC;
    } else if (strcmp(t, "yarn") == 0) {
        cfg->rope_scaling = ROPE_SCALING_YARN;
    } else {
        snprintf(err, errlen, "%s: rope_scaling type '%.32s' is not supported "
                 "(linear, dynamic, yarn)", file, t);
        return -1;
    }
    if (get_num(rs, "factor", &cfg->rope_factor, file, err, errlen) != 0
        || !(cfg->rope_factor > 0.0)) {
        snprintf(err, errlen, "%s: rope_scaling needs a positive \"factor\"",
                 file);
        return -1;
    }
    switch (get_int(rs, "original_max_position_embeddings", 1, 1L << 30, &iv,
                    file, err, errlen)) {
    case -1: return -1;
    case 0: cfg->rope_original_max_pos = (int) iv; break;
    default: break;
    }
    if (get_num(rs, "beta_fast", &cfg->yarn_beta_fast, file, err, errlen) < 0
        || get_num(rs, "beta_slow", &cfg->yarn_beta_slow, file, err, errlen) < 0) {
        return -1;
    }
    switch (get_num(rs, "attention_factor", &v, file, err, errlen)) {
    case -1: return -1;
    case 0:
        if (!(v > 0.0)) {
            snprintf(err, errlen, "%s: rope_scaling.attention_factor must be "
                     "positive", file);
            return -1;
        }
        cfg->rope_attention_factor = v;
        break;
    default: break;
    }
    return 0;
}

static llm_dtype parse_dtype(const char *s, int *ok)
{
    *ok = 1;
    if (strcmp(s, "bfloat16") == 0) return DTYPE_BF16;
    if (strcmp(s, "float16") == 0 || strcmp(s, "half") == 0) return DTYPE_F16;
    if (strcmp(s, "float32") == 0 || strcmp(s, "float") == 0) return DTYPE_F32;
    *ok = 0;
    return DTYPE_BF16;
}

static int parse_config(const cJSON *c, const char *file, model_config *cfg,
                        char *err, size_t errlen)
{
    static const struct { const char *key; int *dst; long lo, hi; } req[] = {
        { "vocab_size", NULL, 1, 1L << 24 },
        { "hidden_size", NULL, 1, 1L << 17 },
        { "intermediate_size", NULL, 1, 1L << 19 },
        { "num_hidden_layers", NULL, 1, 1024 },
        { "num_attention_heads", NULL, 1, 1024 },
    };
    int *dsts[] = { &cfg->vocab_size, &cfg->hidden_size,
                    &cfg->intermediate_size, &cfg->n_layers, &cfg->n_heads };
    const cJSON *mt, *dt, *rp;
    long v;
    double d;
    int r, ok;

    memset(cfg, 0, sizeof(*cfg));
    mt = cJSON_GetObjectItemCaseSensitive(c, "model_type");
    if (!cJSON_IsString(mt)) {
        snprintf(err, errlen, "%s: missing \"model_type\"", file);
        return -1;
    }
    if (strcmp(mt->valuestring, "qwen3") != 0
        && strcmp(mt->valuestring, "qwen2") != 0
        && strcmp(mt->valuestring, "llama") != 0) {
        snprintf(err, errlen, "%s: model_type '%.32s' is not supported "
                 "(qwen3, qwen2, llama)", file, mt->valuestring);
        return -1;
    }
    snprintf(cfg->model_type, sizeof(cfg->model_type), "%s", mt->valuestring);
    for (size_t i = 0; i < sizeof(req) / sizeof(req[0]); i++) {
        r = get_int(c, req[i].key, req[i].lo, req[i].hi, &v, file, err, errlen);
        if (r < 0) {
            return -1;
        }
        if (r > 0) {
            snprintf(err, errlen, "%s: missing \"%s\"", file, req[i].key);
            return -1;
        }
        *dsts[i] = (int) v;
    }
    cfg->n_kv_heads = cfg->n_heads;
    if ((r = get_int(c, "num_key_value_heads", 1, 1024, &v, file, err,
                     errlen)) < 0) {
        return -1;
    }
    if (r == 0) {
        cfg->n_kv_heads = (int) v;
    }
    if (cfg->n_heads % cfg->n_kv_heads != 0) {
        snprintf(err, errlen, "%s: num_attention_heads %d is not a multiple "
                 "of num_key_value_heads %d", file, cfg->n_heads,
                 cfg->n_kv_heads);
        return -1;
    }
    cfg->head_dim = cfg->hidden_size / cfg->n_heads;
    if ((r = get_int(c, "head_dim", 2, 4096, &v, file, err, errlen)) < 0) {
        return -1;
    }
    if (r == 0) {
        cfg->head_dim = (int) v;
    }
    if (cfg->head_dim < 2 || cfg->head_dim % 2 != 0) {
        snprintf(err, errlen, "%s: head_dim %d must be even and positive",
                 file, cfg->head_dim);
        return -1;
    }
    cfg->max_position_embeddings = 2048;
    if ((r = get_int(c, "max_position_embeddings", 1, 1L << 30, &v, file,
                     err, errlen)) < 0) {
        return -1;
    }
    if (r == 0) {
        cfg->max_position_embeddings = (int) v;
    }
    cfg->rms_norm_eps = 1e-6f;
    if ((r = get_num(c, "rms_norm_eps", &d, file, err, errlen)) < 0) {
        return -1;
    }
    if (r == 0) {
        cfg->rms_norm_eps = (float) d;
    }
    /* transformers 5 moves rope settings into "rope_parameters". */
    rp = cJSON_GetObjectItemCaseSensitive(c, "rope_parameters");
    cfg->rope_theta = 10000.0;
    if ((r = get_num(cJSON_IsObject(rp) ? rp : c, "rope_theta", &d, file, err,
                     errlen)) < 0) {
        return -1;
    }
    if (r > 0 && cJSON_IsObject(rp)) {
        r = get_num(c, "rope_theta", &d, file, err, errlen);
        if (r < 0) {
            return -1;
        }
    }
    if (r == 0) {
        if (!(d > 1.0)) {
            snprintf(err, errlen, "%s: rope_theta must be greater than 1", file);
            return -1;
        }
        cfg->rope_theta = d;
    }
    if (parse_rope_scaling(cfg, cJSON_IsObject(rp)
                                ? rp
                                : cJSON_GetObjectItemCaseSensitive(c, "rope_scaling"),
                           file, err, errlen) != 0) {
        return -1;
    }
    cfg->tie_word_embeddings = 0;
    if (get_bool(c, "tie_word_embeddings", &cfg->tie_word_embeddings, file,
                 err, errlen) < 0) {
        return -1;
    }
    /* Qwen2 always has q/k/v biases; Qwen3 and Llama take the flag. */
    cfg->attention_bias = strcmp(cfg->model_type, "qwen2") == 0;
    if (get_bool(c, "attention_bias", &cfg->attention_bias, file, err,
                 errlen) < 0) {
        return -1;
    }
    if (cfg->attention_bias && strcmp(cfg->model_type, "llama") == 0) {
        snprintf(err, errlen, "%s: llama with attention_bias (o_proj bias) is "
                 "not supported", file);
        return -1;
    }
    {
        int sliding = 0;
        if (get_bool(c, "use_sliding_window", &sliding, file, err, errlen) < 0) {
            return -1;
        }
        if (sliding) {
            snprintf(err, errlen, "%s: use_sliding_window true is not "
                     "supported (full attention only)", file);
            return -1;
        }
    }
    cfg->qk_norm = strcmp(cfg->model_type, "qwen3") == 0;
    cfg->torch_dtype = DTYPE_BF16;
    dt = cJSON_GetObjectItemCaseSensitive(c, "torch_dtype");
    if (!cJSON_IsString(dt)) {
        dt = cJSON_GetObjectItemCaseSensitive(c, "dtype");
    }
    if (cJSON_IsString(dt)) {
        cfg->torch_dtype = parse_dtype(dt->valuestring, &ok);
        if (!ok) {
            snprintf(err, errlen, "%s: torch_dtype '%.32s' is not supported "
                     "(bfloat16, float16, float32)", file, dt->valuestring);
            return -1;
        }
    }
    cfg->bos_token_id = -1;
    if ((r = get_int(c, "bos_token_id", 0, 2147483647L, &v, file, err,
                     errlen)) < 0) {
        return -1;
    }
    if (r == 0) {
        cfg->bos_token_id = (int32_t) v;
    }
    return add_eos(cfg, c, file, err, errlen);
}

static int parse_generation(const cJSON *g, const char *file,
                            model_config *cfg, generation_defaults *gen,
                            char *err, size_t errlen)
{
    double d;
    long v;
    int r;

    if ((r = get_num(g, "temperature", &d, file, err, errlen)) < 0) return -1;
    if (r == 0) gen->temperature = (float) d;
    if ((r = get_num(g, "top_p", &d, file, err, errlen)) < 0) return -1;
    if (r == 0) gen->top_p = (float) d;
    if ((r = get_int(g, "top_k", 0, 1L << 30, &v, file, err, errlen)) < 0) {
        return -1;
    }
    if (r == 0) gen->top_k = (int) v;
    if ((r = get_num(g, "min_p", &d, file, err, errlen)) < 0) return -1;
    if (r == 0) gen->min_p = (float) d;
    if ((r = get_num(g, "repetition_penalty", &d, file, err, errlen)) < 0) {
        return -1;
    }
    if (r == 0) gen->repetition_penalty = (float) d;
    return add_eos(cfg, g, file, err, errlen);
}

int model_config_load(const char *model_dir, model_config *cfg,
                      generation_defaults *gen, char *err, size_t errlen)
{
    char path[4096];
    cJSON *root;
    int absent, rc;

    gen->temperature = -1.0f;
    gen->top_p = -1.0f;
    gen->top_k = -1;
    gen->min_p = -1.0f;
    gen->repetition_penalty = -1.0f;
    if ((size_t) snprintf(path, sizeof(path), "%s/config.json", model_dir)
        >= sizeof(path)) {
        snprintf(err, errlen, "%s: path too long", model_dir);
        return -1;
    }
    root = read_json(path, 0, NULL, err, errlen);
    if (root == NULL) {
        return -1;
    }
    rc = parse_config(root, path, cfg, err, errlen);
    cJSON_Delete(root);
    if (rc != 0) {
        return -1;
    }
    snprintf(path, sizeof(path), "%s/generation_config.json", model_dir);
    root = read_json(path, 1, &absent, err, errlen);
    if (root == NULL) {
        return absent ? 0 : -1;
    }
    rc = parse_generation(root, path, cfg, gen, err, errlen);
    cJSON_Delete(root);
    return rc;
}

/* ---- tensor table ------------------------------------------------------ */

/* Every tensor the model needs, in a fixed order: the single place that
 * knows names and shapes. */
typedef struct {
    char        name[96];
    tensor_ref *dst;
    int         ndim;
    int64_t     shape[2];
    int         kind;           /* 0 norm, 1 embedding, 2 projection, 3 bias */
} tensor_spec;

static int build_specs(model *m, tensor_spec **out, int *n_out)
{
    const model_config *c = &m->cfg;
    int64_t h = c->hidden_size, q = (int64_t) c->n_heads * c->head_dim;
    int64_t kv = (int64_t) c->n_kv_heads * c->head_dim;
    int64_t in = c->intermediate_size;
    int per_layer = 9 + (c->attention_bias ? 3 : 0) + (c->qk_norm ? 2 : 0);
    int n = 0, cap = 3 + c->n_layers * per_layer;
    tensor_spec *s = calloc((size_t) cap, sizeof(*s));

    if (s == NULL) {
        return -1;
    }
#define SPEC(dst_, kind_, nd_, d0_, d1_, ...)                                 \
    do {                                                                      \
        snprintf(s[n].name, sizeof(s[n].name), __VA_ARGS__);                  \
        s[n].dst = (dst_); s[n].kind = (kind_); s[n].ndim = (nd_);            \
        s[n].shape[0] = (d0_); s[n].shape[1] = (d1_); n++;                    \
    } while (0)
    SPEC(&m->embed, 1, 2, c->vocab_size, h, "model.embed_tokens.weight");
    SPEC(&m->final_norm, 0, 1, h, 0, "model.norm.weight");
    if (!c->tie_word_embeddings) {
        SPEC(&m->lm_head, 2, 2, c->vocab_size, h, "lm_head.weight");
    }
    for (int i = 0; i < c->n_layers; i++) {
        layer_weights *l = &m->layers[i];
        const char *p = "model.layers";
        SPEC(&l->input_norm, 0, 1, h, 0, "%s.%d.input_layernorm.weight", p, i);
        SPEC(&l->q_proj, 2, 2, q, h, "%s.%d.self_attn.q_proj.weight", p, i);
        SPEC(&l->k_proj, 2, 2, kv, h, "%s.%d.self_attn.k_proj.weight", p, i);
        SPEC(&l->v_proj, 2, 2, kv, h, "%s.%d.self_attn.v_proj.weight", p, i);
        if (c->attention_bias) {
            SPEC(&l->q_bias, 3, 1, q, 0, "%s.%d.self_attn.q_proj.bias", p, i);
            SPEC(&l->k_bias, 3, 1, kv, 0, "%s.%d.self_attn.k_proj.bias", p, i);
            SPEC(&l->v_bias, 3, 1, kv, 0, "%s.%d.self_attn.v_proj.bias", p, i);
        }
        if (c->qk_norm) {
            SPEC(&l->q_norm, 0, 1, c->head_dim, 0,
                 "%s.%d.self_attn.q_norm.weight", p, i);
            SPEC(&l->k_norm, 0, 1, c->head_dim, 0,
                 "%s.%d.self_attn.k_norm.weight", p, i);
        }
        SPEC(&l->o_proj, 2, 2, h, q, "%s.%d.self_attn.o_proj.weight", p, i);
        SPEC(&l->post_norm, 0, 1, h, 0,
             "%s.%d.post_attention_layernorm.weight", p, i);
        SPEC(&l->gate_proj, 2, 2, in, h, "%s.%d.mlp.gate_proj.weight", p, i);
        SPEC(&l->up_proj, 2, 2, in, h, "%s.%d.mlp.up_proj.weight", p, i);
        SPEC(&l->down_proj, 2, 2, h, in, "%s.%d.mlp.down_proj.weight", p, i);
    }
#undef SPEC
    *out = s;
    *n_out = n;
    return 0;
}

static int64_t spec_elems(const tensor_spec *s)
{
    return s->ndim == 1 ? s->shape[0] : s->shape[0] * s->shape[1];
}

static int bind_file_tensor(const st_set *files, const tensor_spec *s,
                            char *err, size_t errlen)
{
    const st_tensor *t = st_set_find(files, s->name);
    char want[64], got[96];
    int pos = 0;

    if (t == NULL) {
        snprintf(err, errlen, "model weights: tensor '%s' is missing "
                 "(looked in %d safetensors file%s, first %s)", s->name,
                 files->n_files, files->n_files == 1 ? "" : "s",
                 files->n_files ? files->files[0]->path : "-");
        return -1;
    }
    switch (t->dtype) {
    case ST_BF16: s->dst->dtype = DTYPE_BF16; break;
    case ST_F16:  s->dst->dtype = DTYPE_F16; break;
    case ST_F32:  s->dst->dtype = DTYPE_F32; break;
    default:
        snprintf(err, errlen, "%s: tensor '%s' has dtype %s (need BF16, F16 "
                 "or F32)", t->file, s->name, st_dtype_name(t->dtype));
        return -1;
    }
    if (t->ndim != s->ndim || t->shape[0] != s->shape[0]
        || (s->ndim == 2 && t->shape[1] != s->shape[1])) {
        if (s->ndim == 1) {
            snprintf(want, sizeof(want), "[%lld]", (long long) s->shape[0]);
        } else {
            snprintf(want, sizeof(want), "[%lld, %lld]",
                     (long long) s->shape[0], (long long) s->shape[1]);
        }
        pos = snprintf(got, sizeof(got), "[");
        for (int i = 0; i < t->ndim && pos < (int) sizeof(got) - 24; i++) {
            pos += snprintf(got + pos, sizeof(got) - (size_t) pos, "%s%lld",
                            i ? ", " : "", (long long) t->shape[i]);
        }
        snprintf(got + pos, sizeof(got) - (size_t) pos, "]");
        snprintf(err, errlen, "%s: tensor '%s' has shape %s, config.json "
                 "implies %s", t->file, s->name, got, want);
        return -1;
    }
    s->dst->ndim = s->ndim;
    s->dst->shape[0] = s->shape[0];
    s->dst->shape[1] = s->ndim == 2 ? s->shape[1] : 0;
    s->dst->data = t->data;
    return 0;
}

/* ---- dummy weights ----------------------------------------------------- */

/* splitmix64 of a counter: value i of a stream is a pure function of
 * (seed, i), so any slice of a tensor can be filled independently. */
static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t) (u >> 16);
}

/* Fills elements [from, to) of one tensor: norms uniform in [0.5, 1.5],
 * embeddings N(0, 1), projections N(0, 1/fan_in), biases N(0, 0.02^2),
 * like the fixtures.  The normal draw is a sum of four 16-bit uniforms
 * (Irwin-Hall), close enough for benchmark weights and far cheaper than
 * Box-Muller. */
static void fill_dummy(uint16_t *dst, const tensor_spec *s, uint64_t seed,
                       int64_t from, int64_t to)
{
    /* Irwin-Hall of 4 uniforms on [0, 65535]: mean 131070, var 4*(2^32-1)/12 */
    const double ih_mean = 4 * 32767.5, ih_sd = sqrt(4.0 * 4294967295.0 / 12.0);
    double sd = s->kind == 1 ? 1.0
              : s->kind == 2 ? 1.0 / sqrt((double) s->shape[1]) : 0.02;
    float scale = (float) (sd / ih_sd), shift = (float) ih_mean;

    for (int64_t i = from; i < to; i++) {
        uint64_t r = mix64(seed + (uint64_t) (i + 1) * 0x9e3779b97f4a7c15ULL);
        float v;
        if (s->kind == 0) {
            v = 0.5f + (float) (r >> 40) * (1.0f / 16777216.0f);
        } else {
            float sum = (float) ((r & 0xffff) + ((r >> 16) & 0xffff)
                                 + ((r >> 32) & 0xffff) + (r >> 48));
            v = (sum - shift) * scale;
        }
        dst[i] = f32_to_bf16(v);
    }
}

typedef struct {
    tensor_spec *specs;
    int          n;
    uint64_t     seed;
    int          worker, n_workers;
} fill_job;

static uint64_t tensor_seed(uint64_t seed, int i)
{
    /* one stream per tensor, so tensors do not depend on each other */
    return mix64(seed ^ (0xd1b54a32d192ed03ULL * (uint64_t) (i + 1)));
}

/* Each worker fills its share of every tensor: the result does not depend
 * on the number of workers. */
static void *fill_worker(void *arg)
{
    fill_job *j = arg;

    for (int i = 0; i < j->n; i++) {
        tensor_spec *s = &j->specs[i];
        int64_t n = spec_elems(s);
        int64_t from = n * j->worker / j->n_workers;
        int64_t to = n * (j->worker + 1) / j->n_workers;
        fill_dummy((uint16_t *) (uintptr_t) s->dst->data, s,
                   tensor_seed(j->seed, i), from, to);
    }
    return NULL;
}

static int load_dummy(model *m, tensor_spec *specs, int n, uint64_t seed,
                      char *err, size_t errlen)
{
    size_t total = 0, off = 0;
    uint8_t *base;
    fill_job jobs[16];
    pthread_t th[16];
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n_workers = cores < 1 ? 1 : cores > 16 ? 16 : (int) cores;
    int started = 0;

    for (int i = 0; i < n; i++) {
        /* 64-byte aligned tensors: SIMD rows never straddle odd bounds */
        total += ((size_t) spec_elems(&specs[i]) * 2 + 63) & ~(size_t) 63;
    }
    base = mmap(NULL, total, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        snprintf(err, errlen, "dummy weights: cannot allocate %zu bytes: %s",
                 total, strerror(errno));
        return -1;
    }
    (void) madvise(base, total, MADV_HUGEPAGE);  /* fewer TLB misses */
    m->storage->dummy = base;
    m->storage->dummy_bytes = total;
    for (int i = 0; i < n; i++) {
        tensor_spec *s = &specs[i];
        s->dst->dtype = DTYPE_BF16;
        s->dst->ndim = s->ndim;
        s->dst->shape[0] = s->shape[0];
        s->dst->shape[1] = s->ndim == 2 ? s->shape[1] : 0;
        s->dst->data = base + off;
        off += ((size_t) spec_elems(s) * 2 + 63) & ~(size_t) 63;
    }
    for (int w = 0; w < n_workers; w++) {
        jobs[w] = (fill_job) { specs, n, seed, w, n_workers };
    }
    for (int w = 1; w < n_workers; w++) {
        if (pthread_create(&th[w], NULL, fill_worker, &jobs[w]) != 0) {
            break;
        }
        started = w;
    }
    /* workers that did not start are done here */
    fill_worker(&jobs[0]);
    for (int w = started + 1; w < n_workers; w++) {
        fill_worker(&jobs[w]);
    }
    for (int w = 1; w <= started; w++) {
        pthread_join(th[w], NULL);
    }
    return 0;
}

/* ---- load / free ------------------------------------------------------- */

static int has_tensor(const st_set *f, const char *fmt, int layer)
{
    char name[96];
    snprintf(name, sizeof(name), fmt, layer);
    return st_set_find(f, name) != NULL;
}

model *model_load(const char *model_dir, int dummy, uint64_t seed,
                  char *err, size_t errlen)
{
    model *m = calloc(1, sizeof(*m));
    tensor_spec *specs = NULL;
    int n_specs = 0;

    if (m == NULL || (m->storage = calloc(1, sizeof(*m->storage))) == NULL) {
        free(m);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (model_config_load(model_dir, &m->cfg, &m->gen, err, errlen) != 0) {
        goto fail;
    }
    m->layers = calloc((size_t) m->cfg.n_layers, sizeof(*m->layers));
    if (m->layers == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (!dummy) {
        m->storage->files = st_set_open(model_dir, err, errlen);
        if (m->storage->files == NULL) {
            goto fail;
        }
        /* The tensors, not only the config, say which optional parts exist
         * (a Qwen2 export always has biases; a Qwen3 one has QK-norm). */
        if (has_tensor(m->storage->files, "model.layers.%d.self_attn.q_proj.bias", 0)) {
            m->cfg.attention_bias = 1;
        }
        if (has_tensor(m->storage->files, "model.layers.%d.self_attn.q_norm.weight", 0)) {
            m->cfg.qk_norm = 1;
        }
        if (m->cfg.tie_word_embeddings == 0
            && st_set_find(m->storage->files, "lm_head.weight") == NULL) {
            snprintf(err, errlen, "model weights: tensor 'lm_head.weight' is "
                     "missing and config.json says tie_word_embeddings false");
            goto fail;
        }
    }
    if (build_specs(m, &specs, &n_specs) != 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (dummy) {
        if (load_dummy(m, specs, n_specs, seed, err, errlen) != 0) {
            goto fail;
        }
    } else {
        for (int i = 0; i < n_specs; i++) {
            if (bind_file_tensor(m->storage->files, &specs[i], err, errlen)
                != 0) {
                goto fail;
            }
        }
    }
    if (m->cfg.tie_word_embeddings) {
        m->lm_head = m->embed;
    }
    free(specs);
    return m;
fail:
    free(specs);
    model_free(m);
    return NULL;
}

void model_free(model *m)
{
    if (m == NULL) {
        return;
    }
    if (m->storage) {
        st_set_close(m->storage->files);
        if (m->storage->dummy) {
            munmap(m->storage->dummy, m->storage->dummy_bytes);
        }
        free(m->storage);
    }
    free(m->layers);
    free(m);
}
