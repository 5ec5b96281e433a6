/*
 * ngx_http_llm_module: nginx as an OpenAI-compatible LLM inference server.
 *
 *   llm_model qwen3 /models/Qwen3-4B-Instruct-2507 device=cuda;
 *   server { listen 8000; location /v1/ { llm_pass qwen3; } }
 *
 * This file: directives, configuration (models are checked at configuration
 * time with llm_model_check(), so "nginx -t" names a bad model directory),
 * the worker lifecycle (engines are created in init_process and destroyed
 * in exit_process) and the content handler that dispatches on the URI's
 * final segments.  See src/ngx_http_llm_module.h for the other files.
 */
#include "ngx_http_llm_module.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>

#define NGX_HTTP_LLM_DEFAULT_KEEPALIVE  15000    /* ms between SSE comments */
#define NGX_HTTP_LLM_DEFAULT_MAX_N      128
/* about the first 500 tokens of English text: a system prompt plus the
 * start of the first user message */
#define NGX_HTTP_LLM_DEFAULT_PREFIX_KEY_BYTES  2048

static ngx_int_t ngx_http_llm_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_llm_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_llm_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_llm_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_llm_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_llm_model_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llm_pass_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llm_api_key_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_llm_api_key_exempt_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_llm_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_llm_init_process(ngx_cycle_t *cycle);
static void ngx_http_llm_exit_process(ngx_cycle_t *cycle);


static ngx_command_t  ngx_http_llm_commands[] = {

    { ngx_string("llm_model"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_llm_model_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_pass"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_llm_pass_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_api_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_llm_api_key_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_api_key_exempt"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_llm_api_key_exempt_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_max_tokens"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, max_tokens),
      NULL },

    { ngx_string("llm_queue_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, queue_size),
      NULL },

    { ngx_string("llm_request_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, request_timeout),
      NULL },

    { ngx_string("llm_sse_keepalive"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, sse_keepalive),
      NULL },

    { ngx_string("llm_max_n"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, max_n),
      NULL },

    { ngx_string("llm_prefix_key_bytes"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, prefix_key_bytes),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_llm_module_ctx = {
    ngx_http_llm_preconfiguration,         /* preconfiguration */
    ngx_http_llm_postconfiguration,        /* postconfiguration */

    ngx_http_llm_create_main_conf,         /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_llm_create_loc_conf,          /* create location configuration */
    ngx_http_llm_merge_loc_conf            /* merge location configuration */
};


ngx_module_t  ngx_http_llm_module = {
    NGX_MODULE_V1,
    &ngx_http_llm_module_ctx,              /* module context */
    ngx_http_llm_commands,                 /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_llm_init_module,              /* init module */
    ngx_http_llm_init_process,             /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_llm_exit_process,             /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/* ---- configuration ----------------------------------------------------- */

static void *
ngx_http_llm_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_llm_main_conf_t  *mcf;

    mcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_main_conf_t));
    if (mcf == NULL) {
        return NULL;
    }
    if (ngx_array_init(&mcf->models, cf->pool, 2,
                       sizeof(ngx_http_llm_model_t)) != NGX_OK)
    {
        return NULL;
    }
    mcf->notify.fd = -1;
    return mcf;
}


static void *
ngx_http_llm_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_llm_loc_conf_t  *lcf;

    lcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_loc_conf_t));
    if (lcf == NULL) {
        return NULL;
    }
    lcf->api_keys = NGX_CONF_UNSET_PTR;
    lcf->api_key_exempt = NGX_CONF_UNSET_UINT;
    lcf->max_tokens = NGX_CONF_UNSET;
    lcf->queue_size = NGX_CONF_UNSET;
    lcf->request_timeout = NGX_CONF_UNSET_MSEC;
    lcf->sse_keepalive = NGX_CONF_UNSET_MSEC;
    lcf->max_n = NGX_CONF_UNSET;
    lcf->prefix_key_bytes = NGX_CONF_UNSET;
    return lcf;
}


static char *
ngx_http_llm_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_llm_loc_conf_t   *prev = parent;
    ngx_http_llm_loc_conf_t   *conf = child;
    ngx_http_llm_main_conf_t  *mcf;
    ngx_http_llm_model_t      *models;
    ngx_uint_t                 i;

    ngx_conf_merge_ptr_value(conf->api_keys, prev->api_keys, NULL);
    /* load-balancer probes carry no key (as in vLLM); everything else,
     * /metrics and /tokenize included, needs it unless listed */
    ngx_conf_merge_uint_value(conf->api_key_exempt, prev->api_key_exempt,
                              NGX_HTTP_LLM_EXEMPT_HEALTH);
    ngx_conf_merge_value(conf->max_tokens, prev->max_tokens, 0);
    ngx_conf_merge_value(conf->queue_size, prev->queue_size, 1024);
    ngx_conf_merge_msec_value(conf->request_timeout, prev->request_timeout, 0);
    ngx_conf_merge_msec_value(conf->sse_keepalive, prev->sse_keepalive,
                              NGX_HTTP_LLM_DEFAULT_KEEPALIVE);
    ngx_conf_merge_value(conf->max_n, prev->max_n,
                         NGX_HTTP_LLM_DEFAULT_MAX_N);
    ngx_conf_merge_value(conf->prefix_key_bytes, prev->prefix_key_bytes,
                         NGX_HTTP_LLM_DEFAULT_PREFIX_KEY_BYTES);

    if (conf->max_tokens < 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_max_tokens\" must not be negative");
        return NGX_CONF_ERROR;
    }
    if (conf->max_n < 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_max_n\" must be at least 1");
        return NGX_CONF_ERROR;
    }
    if (conf->prefix_key_bytes < 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_prefix_key_bytes\" must be at least 1");
        return NGX_CONF_ERROR;
    }

    /* llm_pass names a model declared anywhere in the http block; all
     * llm_model directives have been read when locations are merged */
    if (conf->pass_name.len && conf->model == NULL) {
        mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);
        models = mcf->models.elts;
        for (i = 0; i < mcf->models.nelts; i++) {
            if (models[i].name.len == conf->pass_name.len
                && ngx_strncmp(models[i].name.data, conf->pass_name.data,
                               conf->pass_name.len) == 0)
            {
                conf->model = &models[i];
                break;
            }
        }
        if (conf->model == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_pass: no \"llm_model %V\" in the http "
                               "block", &conf->pass_name);
            return NGX_CONF_ERROR;
        }
    }
    return NGX_CONF_OK;
}


/* A NUL-terminated copy for the engine's C API. */
static char *
ngx_http_llm_cstr(ngx_pool_t *pool, ngx_str_t *s)
{
    char  *p = ngx_pnalloc(pool, s->len + 1);

    if (p != NULL) {
        ngx_memcpy(p, s->data, s->len);
        p[s->len] = '\0';
    }
    return p;
}


static ngx_int_t
ngx_http_llm_parse_int_opt(ngx_conf_t *cf, ngx_str_t *v, const char *name,
    ngx_int_t min, ngx_int_t *out)
{
    ngx_int_t  n = ngx_atoi(v->data, v->len);

    if (n == NGX_ERROR || n < min) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_model: invalid %s=\"%V\" (an integer >= %i "
                           "is expected)", name, v, min);
        return NGX_ERROR;
    }
    *out = n;
    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_parse_kv_cache(ngx_conf_t *cf, ngx_str_t *v,
    ngx_http_llm_model_t *m)
{
    char    *s, *end;
    double   f;
    off_t    bytes;

    /* a fraction (0.9) of device memory, or a size with k/m/g */
    if (ngx_strlchr(v->data, v->data + v->len, '.') != NULL) {
        s = ngx_http_llm_cstr(cf->pool, v);
        if (s == NULL) {
            return NGX_ERROR;
        }
        f = strtod(s, &end);
        if (*end != '\0' || !(f > 0.0 && f <= 1.0)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_model: invalid kv_cache=\"%V\" (a "
                               "fraction in (0, 1] or a size such as 512m)",
                               v);
            return NGX_ERROR;
        }
        m->kv_cache_fraction = f;
        return NGX_OK;
    }
    bytes = ngx_parse_offset(v);
    if (bytes == NGX_ERROR || bytes <= 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_model: invalid kv_cache=\"%V\" (a size such "
                           "as 512m or 8g, or a fraction such as 0.9)", v);
        return NGX_ERROR;
    }
    m->kv_cache_bytes = bytes;
    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_valid_device(ngx_str_t *d)
{
    u_char  *p;

    if ((d->len == 3 && ngx_strncmp(d->data, "cpu", 3) == 0)
        || (d->len == 4 && ngx_strncmp(d->data, "cuda", 4) == 0))
    {
        return 1;
    }
    if (d->len > 5 && ngx_strncmp(d->data, "cuda:", 5) == 0) {
        for (p = d->data + 5; p < d->data + d->len; p++) {
            if (*p < '0' || *p > '9') {
                return 0;
            }
        }
        return 1;
    }
    return 0;
}


/*
 * devices=0,2,3: worker i runs on the i-th GPU of the list.  Entries are
 * GPU indices (or cuda:N); a GPU belongs to one worker, so none repeats.
 */
static ngx_int_t
ngx_http_llm_parse_devices(ngx_conf_t *cf, ngx_str_t *v,
    ngx_http_llm_model_t *m)
{
    u_char      *p, *end, *comma;
    ngx_str_t    item;
    ngx_int_t    gpu;
    ngx_uint_t  *slot, *seen, i;

    m->devices = ngx_array_create(cf->pool, 4, sizeof(ngx_uint_t));
    if (m->devices == NULL) {
        return NGX_ERROR;
    }
    end = v->data + v->len;
    for (p = v->data; p <= end; p = comma + 1) {
        comma = ngx_strlchr(p, end, ',');
        if (comma == NULL) {
            comma = end;
        }
        item.data = p;
        item.len = comma - p;
        if (item.len > 5 && ngx_strncmp(item.data, "cuda:", 5) == 0) {
            item.data += 5;
            item.len -= 5;
        }
        gpu = ngx_atoi(item.data, item.len);
        if (gpu == NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_model: invalid devices=\"%V\": \"%*s\" "
                               "is not a GPU index (a list such as 0,2,3)",
                               v, (size_t) (comma - p), p);
            return NGX_ERROR;
        }
        seen = m->devices->elts;
        for (i = 0; i < m->devices->nelts; i++) {
            if (seen[i] == (ngx_uint_t) gpu) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llm_model: invalid devices=\"%V\": GPU "
                                   "%i is listed twice (a GPU belongs to one "
                                   "worker)", v, gpu);
                return NGX_ERROR;
            }
        }
        slot = ngx_array_push(m->devices);
        if (slot == NULL) {
            return NGX_ERROR;
        }
        *slot = (ngx_uint_t) gpu;
    }
    return NGX_OK;
}


static char *
ngx_http_llm_model_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t  *mcf = conf;
    ngx_http_llm_model_t      *m, *models;
    ngx_str_t                 *value, key, val;
    ngx_uint_t                 i, device_given = 0;
    u_char                    *eq;
    char                       err[LLM_ERR_MAX], *path, *tok;

    value = cf->args->elts;

    models = mcf->models.elts;
    for (i = 0; i < mcf->models.nelts; i++) {
        if (models[i].name.len == value[1].len
            && ngx_strncmp(models[i].name.data, value[1].data,
                           value[1].len) == 0)
        {
            return "names a model twice";
        }
    }

    m = ngx_array_push(&mcf->models);
    if (m == NULL) {
        return NGX_CONF_ERROR;
    }
    ngx_memzero(m, sizeof(*m));
    m->name = value[1];
    m->path = value[2];
    ngx_str_set(&m->device, "cpu");
    m->served_name = value[1];
    m->prefix_caching = -1;
    m->created = ngx_time();
    m->watchdog = 60000;

    if (ngx_conf_full_name(cf->cycle, &m->path, 0) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    for (i = 3; i < cf->args->nelts; i++) {
        eq = ngx_strlchr(value[i].data, value[i].data + value[i].len, '=');
        if (eq == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_model: option \"%V\" is not NAME=VALUE",
                               &value[i]);
            return NGX_CONF_ERROR;
        }
        key.data = value[i].data;
        key.len = eq - value[i].data;
        val.data = eq + 1;
        val.len = value[i].data + value[i].len - val.data;

#define KEY_IS(s) (key.len == sizeof(s) - 1 && ngx_strncmp(key.data, s, key.len) == 0)

        if (KEY_IS("device")) {
            if (!ngx_http_llm_valid_device(&val)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llm_model: invalid device=\"%V\" "
                                   "(cpu, cuda or cuda:N)", &val);
                return NGX_CONF_ERROR;
            }
            m->device = val;
            device_given = 1;
        } else if (KEY_IS("devices")) {
            if (m->devices != NULL) {
                return "has devices= twice";
            }
            if (ngx_http_llm_parse_devices(cf, &val, m) != NGX_OK) {
                return NGX_CONF_ERROR;
            }
        } else if (KEY_IS("threads")) {
            if (ngx_http_llm_parse_int_opt(cf, &val, "threads", 0,
                                           &m->threads) != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }
        } else if (KEY_IS("max_model_len")) {
            if (ngx_http_llm_parse_int_opt(cf, &val, "max_model_len", 1,
                                           &m->max_model_len) != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }
        } else if (KEY_IS("max_num_seqs")) {
            if (ngx_http_llm_parse_int_opt(cf, &val, "max_num_seqs", 1,
                                           &m->max_num_seqs) != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }
        } else if (KEY_IS("max_num_batched_tokens")) {
            if (ngx_http_llm_parse_int_opt(cf, &val, "max_num_batched_tokens",
                                           1, &m->max_num_batched_tokens)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }
        } else if (KEY_IS("kv_cache")) {
            if (ngx_http_llm_parse_kv_cache(cf, &val, m) != NGX_OK) {
                return NGX_CONF_ERROR;
            }
        } else if (KEY_IS("tokenizer")) {
            m->tokenizer = val;
            if (ngx_conf_full_name(cf->cycle, &m->tokenizer, 0) != NGX_OK) {
                return NGX_CONF_ERROR;
            }
        } else if (KEY_IS("served_name")) {
            if (val.len == 0) {
                return "has an empty served_name";
            }
            m->served_name = val;
        } else if (KEY_IS("load_format")) {
            if (val.len == 4 && ngx_strncmp(val.data, "auto", 4) == 0) {
                m->dummy = 0;
            } else if (val.len == 5 && ngx_strncmp(val.data, "dummy", 5) == 0) {
                m->dummy = 1;
            } else {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llm_model: invalid load_format=\"%V\" "
                                   "(auto or dummy)", &val);
                return NGX_CONF_ERROR;
            }
        } else if (KEY_IS("precision")) {
            if (val.len == 5 && ngx_strncmp(val.data, "exact", 5) == 0) {
                m->fast = 0;
            } else if (val.len == 4 && ngx_strncmp(val.data, "fast", 4) == 0) {
                m->fast = 1;
            } else {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llm_model: invalid precision=\"%V\" "
                                   "(exact or fast)", &val);
                return NGX_CONF_ERROR;
            }
        } else if (KEY_IS("kv_cache_dtype")) {
            if (val.len == 4 && ngx_strncmp(val.data, "auto", 4) == 0) {
                m->kv_dtype = LLM_KV_AUTO;
            } else if (val.len == 7
                       && ngx_strncmp(val.data, "float32", 7) == 0)
            {
                m->kv_dtype = LLM_KV_FLOAT32;
            } else if (val.len == 8
                       && ngx_strncmp(val.data, "bfloat16", 8) == 0)
            {
                m->kv_dtype = LLM_KV_BFLOAT16;
            } else {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llm_model: invalid kv_cache_dtype=\"%V\" "
                                   "(auto, float32 or bfloat16)", &val);
                return NGX_CONF_ERROR;
            }
        } else if (KEY_IS("prefix_caching")) {
            if (val.len == 2 && ngx_strncmp(val.data, "on", 2) == 0) {
                m->prefix_caching = 1;
            } else if (val.len == 3 && ngx_strncmp(val.data, "off", 3) == 0) {
                m->prefix_caching = 0;
            } else {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llm_model: invalid prefix_caching=\"%V\" "
                                   "(on or off)", &val);
                return NGX_CONF_ERROR;
            }
        } else if (KEY_IS("seed")) {
            if (ngx_http_llm_parse_int_opt(cf, &val, "seed", 0, &m->seed)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }
        } else if (KEY_IS("watchdog")) {
            /* a busy engine without progress this long is declared hung */
            m->watchdog = ngx_parse_time(&val, 0);
            if (m->watchdog == (ngx_msec_t) NGX_ERROR || m->watchdog == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llm_model: invalid watchdog=\"%V\" "
                                   "(a time such as 60s)", &val);
                return NGX_CONF_ERROR;
            }
        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_model: unknown option \"%V\"", &key);
            return NGX_CONF_ERROR;
        }
#undef KEY_IS
    }

    /* a list implies device=cuda; any other device contradicts it */
    if (m->devices != NULL) {
        if (!device_given) {
            ngx_str_set(&m->device, "cuda");
        }
        if (!(m->device.len == 4
              && ngx_strncmp(m->device.data, "cuda", 4) == 0))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_model \"%V\": devices= gives each worker "
                               "a GPU and cannot go with device=%V (use "
                               "device=cuda or leave device= out)",
                               &m->name, &m->device);
            return NGX_CONF_ERROR;
        }
    }

    /* the CUDA backend keeps its KV cache in bf16 only */
    if (m->kv_dtype == LLM_KV_FLOAT32
        && !(m->device.len == 3 && ngx_strncmp(m->device.data, "cpu", 3) == 0))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_model \"%V\": kv_cache_dtype=float32 is CPU "
                           "only (device=%V keeps the KV cache in bfloat16)",
                           &m->name, &m->device);
        return NGX_CONF_ERROR;
    }

    /* NUL-terminated copies, kept for the engine in the workers */
    path = ngx_http_llm_cstr(cf->pool, &m->path);
    tok = m->tokenizer.len ? ngx_http_llm_cstr(cf->pool, &m->tokenizer) : NULL;
    if (path == NULL || (m->tokenizer.len && tok == NULL)) {
        return NGX_CONF_ERROR;
    }
    m->path.data = (u_char *) path;
    if (tok) {
        m->tokenizer.data = (u_char *) tok;
    }
    if ((m->served_name.data = (u_char *) ngx_http_llm_cstr(cf->pool,
                                                  &m->served_name)) == NULL
        || (m->device.data = (u_char *) ngx_http_llm_cstr(cf->pool,
                                                          &m->device)) == NULL)
    {
        return NGX_CONF_ERROR;
    }

    /* config, generation config and tokenizer now, weights in the worker */
    err[0] = '\0';
    if (llm_model_check(path, tok, err, sizeof(err)) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_model \"%V\": %s", &m->name, err);
        return NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}


static char *
ngx_http_llm_pass_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t   *lcf = conf;
    ngx_http_core_loc_conf_t  *clcf;
    ngx_str_t                 *value = cf->args->elts;

    if (lcf->pass_name.len) {
        return "is duplicate";
    }
    lcf->pass_name = value[1];

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_llm_handler;
    return NGX_CONF_OK;
}


static char *
ngx_http_llm_api_key_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t  *lcf = conf;
    ngx_str_t                *value = cf->args->elts, *key, file;
    ngx_file_t                f;
    ngx_file_info_t           fi;
    u_char                   *buf, *p, *line, *end;
    ssize_t                   n;
    size_t                    size;

    if (lcf->api_keys != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }
    lcf->api_keys = ngx_array_create(cf->pool, 1, sizeof(ngx_str_t));
    if (lcf->api_keys == NULL) {
        return NGX_CONF_ERROR;
    }

    if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
        return NGX_CONF_OK;      /* an empty list turns inherited keys off */
    }

    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_api_key: the key is empty (use \"off\" for "
                           "no key)");
        return NGX_CONF_ERROR;
    }

    if (value[1].len <= 5 || ngx_strncmp(value[1].data, "file=", 5) != 0) {
        key = ngx_array_push(lcf->api_keys);
        if (key == NULL) {
            return NGX_CONF_ERROR;
        }
        *key = value[1];
        return NGX_CONF_OK;
    }

    /* file=PATH: one key a line; blank lines and #comments are skipped */
    file.data = value[1].data + 5;
    file.len = value[1].len - 5;
    if (ngx_conf_full_name(cf->cycle, &file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }
    ngx_memzero(&f, sizeof(f));
    f.name = file;
    f.log = cf->log;
    f.fd = ngx_open_file(file.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (f.fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "llm_api_key: cannot open \"%V\"", &file);
        return NGX_CONF_ERROR;
    }
    if (ngx_fd_info(f.fd, &fi) == NGX_FILE_ERROR) {
        ngx_close_file(f.fd);
        return "cannot stat the key file";
    }
    size = (size_t) ngx_file_size(&fi);
    buf = ngx_pnalloc(cf->pool, size + 1);
    if (buf == NULL) {
        ngx_close_file(f.fd);
        return NGX_CONF_ERROR;
    }
    n = ngx_read_file(&f, buf, size, 0);
    ngx_close_file(f.fd);
    if (n != (ssize_t) size) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_api_key: cannot read \"%V\"", &file);
        return NGX_CONF_ERROR;
    }
    end = buf + size;
    for (p = buf; p < end; p = line + 1) {
        u_char  *s, *e;

        line = ngx_strlchr(p, end, '\n');
        if (line == NULL) {
            line = end;
        }
        for (s = p; s < line && (*s == ' ' || *s == '\t'); s++) { /* void */ }
        for (e = line; e > s && (e[-1] == ' ' || e[-1] == '\t'
                                 || e[-1] == '\r'); e--) { /* void */ }
        if (e == s || *s == '#') {
            continue;
        }
        key = ngx_array_push(lcf->api_keys);
        if (key == NULL) {
            return NGX_CONF_ERROR;
        }
        key->data = s;
        key->len = e - s;
    }
    if (lcf->api_keys->nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm_api_key: no key in \"%V\"", &file);
        return NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}


/*
 * llm_api_key_exempt health metrics ... | off: routes answered without the
 * key.  models covers /models and /models/ID, tokenize covers /tokenize and
 * /detokenize; chat and completions always need the key.
 */
static char *
ngx_http_llm_api_key_exempt_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llm_loc_conf_t  *lcf = conf;
    ngx_str_t                *value = cf->args->elts;
    ngx_uint_t                i, j, mask = 0;

    static const struct {
        ngx_str_t   name;
        ngx_uint_t  bit;
    } routes[] = {
        { ngx_string("health"), NGX_HTTP_LLM_EXEMPT_HEALTH },
        { ngx_string("metrics"), NGX_HTTP_LLM_EXEMPT_METRICS },
        { ngx_string("models"), NGX_HTTP_LLM_EXEMPT_MODELS },
        { ngx_string("tokenize"), NGX_HTTP_LLM_EXEMPT_TOKENIZE },
        { ngx_string("version"), NGX_HTTP_LLM_EXEMPT_VERSION }
    };

    if (lcf->api_key_exempt != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
        if (cf->args->nelts > 2) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_api_key_exempt: \"off\" cannot be "
                               "combined with routes");
            return NGX_CONF_ERROR;
        }
        lcf->api_key_exempt = 0;
        return NGX_CONF_OK;
    }

    for (i = 1; i < cf->args->nelts; i++) {
        for (j = 0; j < sizeof(routes) / sizeof(routes[0]); j++) {
            if (value[i].len == routes[j].name.len
                && ngx_strncmp(value[i].data, routes[j].name.data,
                               value[i].len) == 0)
            {
                break;
            }
        }
        if (j == sizeof(routes) / sizeof(routes[0])) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "llm_api_key_exempt: invalid value \"%V\" "
                               "(health, metrics, models, tokenize, version "
                               "or off)", &value[i]);
            return NGX_CONF_ERROR;
        }
        mask |= routes[j].bit;
    }
    lcf->api_key_exempt = mask;
    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_llm_preconfiguration(ngx_conf_t *cf)
{
    /* $llm_prefix_key works without any llm_model (a front nginx) */
    return ngx_http_llm_add_variables(cf);
}


static ngx_int_t
ngx_http_llm_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_llm_main_conf_t  *mcf;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);
    /* every worker's engine stats, so that one scrape reports them all */
    if (mcf->models.nelts > 0 && ngx_http_llm_metrics_zone(cf, mcf) != NGX_OK)
    {
        return NGX_ERROR;
    }
#if (NGX_THREADS)
    /* /tokenize and /detokenize work on nginx's "default" thread pool
     * (created here unless the configuration declares it) */
    if (mcf->models.nelts > 0) {
        mcf->thread_pool = ngx_thread_pool_add(cf, NULL);
        if (mcf->thread_pool == NULL) {
            return NGX_ERROR;
        }
    }
#endif
    return ngx_http_llm_filter_init(cf);
}


/* ---- lifecycle ------------------------------------------------------------ */

/* GPUs the NVIDIA driver exposes, or -1 when it cannot tell. */
static ngx_int_t
ngx_http_llm_gpu_count(void)
{
    DIR            *d = opendir("/proc/driver/nvidia/gpus");
    struct dirent  *e;
    ngx_int_t       n = 0;

    if (d == NULL) {
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') {
            n++;
        }
    }
    closedir(d);
    return n;
}


static ngx_int_t
ngx_http_llm_init_module(ngx_cycle_t *cycle)
{
    ngx_http_llm_main_conf_t  *mcf;
    ngx_http_llm_model_t      *models;
    ngx_core_conf_t           *ccf;
    ngx_uint_t                 i;
    ngx_int_t                  gpus;

    mcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_llm_module);
    if (mcf == NULL) {
        return NGX_OK;
    }
    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);
    models = mcf->models.elts;

    /* the metrics zone was sized when the http block ended; a
     * worker_processes after it can ask for more workers than that */
    if (mcf->metrics_zone != NULL
        && ccf->worker_processes > mcf->metrics_workers)
    {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "llm: the /metrics zone has room for workers 0-%i "
                      "(worker_processes %i comes after the http block): "
                      "the others appear only in the scrapes they answer "
                      "themselves; put worker_processes before http {}",
                      mcf->metrics_workers - 1, ccf->worker_processes);
    }

    /* a GPU belongs to one worker: worker i takes cuda:i with device=cuda,
     * or the i-th entry of devices= */
    for (i = 0; i < mcf->models.nelts; i++) {
        if (models[i].devices != NULL
            && (ngx_int_t) models[i].devices->nelts < ccf->worker_processes)
        {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                          "llm_model \"%V\": devices= lists %ui GPU(s) but "
                          "worker_processes is %i; each worker needs its own "
                          "GPU: list one per worker or lower "
                          "worker_processes", &models[i].name,
                          models[i].devices->nelts, ccf->worker_processes);
            return NGX_ERROR;
        }
        if (ngx_strncmp(models[i].device.data, "cuda:", 5) == 0
            && ccf->worker_processes > 1)
        {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                          "llm_model \"%V\": device=%V pins one GPU but "
                          "worker_processes is %i; use worker_processes 1, "
                          "or device=cuda to give worker i GPU i",
                          &models[i].name, &models[i].device,
                          ccf->worker_processes);
            return NGX_ERROR;
        }
        if (ngx_strcmp(models[i].device.data, "cuda") == 0
            && models[i].devices == NULL)
        {
            /* the driver's count; CUDA_VISIBLE_DEVICES may show fewer, which
             * only the worker learns (cudaGetDeviceCount): its engine then
             * fails to load, says so in error_log and /health answers 503 */
            gpus = ngx_http_llm_gpu_count();
            if (gpus >= 0 && ccf->worker_processes > gpus) {
                ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                              "llm_model \"%V\": device=cuda with "
                              "worker_processes %i but only %i GPU(s); "
                              "one worker per GPU", &models[i].name,
                              ccf->worker_processes, gpus);
                return NGX_ERROR;
            }
        }
    }
    return NGX_OK;
}


/*
 * This worker's device: cuda -> cuda:<worker>, devices= -> its entry.
 * NGX_ERROR when the list has no entry for this worker (init_module rejects
 * such a configuration, so this is a guard, not a fallback).
 */
static ngx_int_t
ngx_http_llm_worker_device(ngx_http_llm_model_t *m, char *out, size_t size)
{
    ngx_uint_t  *gpus;

    if (m->devices != NULL) {
        if (ngx_worker >= m->devices->nelts) {
            snprintf(out, size, "none");
            return NGX_ERROR;
        }
        gpus = m->devices->elts;
        snprintf(out, size, "cuda:%lu", (unsigned long) gpus[ngx_worker]);
    } else if (ngx_strcmp(m->device.data, "cuda") == 0) {
        snprintf(out, size, "cuda:%lu", (unsigned long) ngx_worker);
    } else {
        snprintf(out, size, "%s", (const char *) m->device.data);
    }
    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_init_process(ngx_cycle_t *cycle)
{
    ngx_http_llm_main_conf_t  *mcf;
    ngx_http_llm_model_t      *m;
    llm_engine_options         o;
    ngx_uint_t                 i;
    char                      *device;

    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }
    mcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_llm_module);
    if (mcf == NULL || mcf->models.nelts == 0) {
        return NGX_OK;
    }
    if (ngx_http_llm_bridge_init(cycle, mcf) != NGX_OK) {
        return NGX_ERROR;
    }

    m = mcf->models.elts;
    for (i = 0; i < mcf->models.nelts; i++) {
        llm_engine_options_init(&o);
        device = m[i].worker_device;
        m[i].load_reported = 0;
        if (ngx_http_llm_worker_device(&m[i], device,
                                       sizeof(m[i].worker_device)) != NGX_OK)
        {
            snprintf(m[i].error, sizeof(m[i].error), "devices= has no GPU "
                     "for worker %lu", (unsigned long) ngx_worker);
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0, "llm_model \"%V\": "
                          "%s", &m[i].name, m[i].error);
            m[i].engine = NULL;
            m[i].load_reported = 1;
            continue;
        }
        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "llm_model \"%V\": worker %ui loads on %s",
                      &m[i].name, ngx_worker, device);
        o.model_dir = (const char *) m[i].path.data;
        o.tokenizer_dir = m[i].tokenizer.len
                          ? (const char *) m[i].tokenizer.data : NULL;
        o.device = device;
        o.threads = (int) m[i].threads;
        o.max_model_len = (int) m[i].max_model_len;
        o.max_num_seqs = (int) m[i].max_num_seqs;
        o.max_num_batched_tokens = (int) m[i].max_num_batched_tokens;
        o.kv_cache_bytes = m[i].kv_cache_bytes;
        o.kv_cache_fraction = m[i].kv_cache_fraction;
        o.enable_prefix_caching = (int) m[i].prefix_caching;
        o.load_format = m[i].dummy ? LLM_LOAD_DUMMY : LLM_LOAD_AUTO;
        o.cpu_precision = m[i].fast ? LLM_CPU_FAST : LLM_CPU_EXACT;
        o.kv_cache_dtype = (llm_kv_dtype) m[i].kv_dtype;
        o.seed = (uint64_t) m[i].seed;
        o.notify = ngx_http_llm_engine_notify;
        o.notify_ctx = &mcf->notify;
        /* weights load on the engine's thread: the worker serves /health
         * (503) meanwhile instead of stalling its event loop */
        o.load_async = 1;

        m[i].error[0] = '\0';
        m[i].active = 0;
        m[i].engine = llm_engine_create(&o, m[i].error, sizeof(m[i].error));
        if (m[i].engine == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                          "llm_model \"%V\": engine not created on %s "
                          "(worker %ui): %s", &m[i].name, device, ngx_worker,
                          m[i].error);
            m[i].load_reported = 1;
            /* the worker stays up; /health and requests answer 503 */
        }
    }
    /* this worker's slots now: a replacement (after a crash or the
     * watchdog) takes over its index at once */
    ngx_http_llm_metrics_publish(mcf);
    return NGX_OK;
}


static void
ngx_http_llm_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_llm_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_llm_module);
    if (mcf == NULL || mcf->models.nelts == 0) {
        return;
    }
    /* before the engines go: no scrape shows this worker after it */
    ngx_http_llm_metrics_retire(mcf);
    ngx_http_llm_bridge_exit(cycle, mcf);
}


/* ---- content handler -------------------------------------------------- */

static ngx_uint_t
ngx_http_llm_ends_with(ngx_str_t *uri, const char *suffix)
{
    size_t  n = ngx_strlen(suffix);

    return uri->len >= n
           && ngx_strncmp(uri->data + uri->len - n, suffix, n) == 0;
}


/*
 * The route is the URI's final segments, so the API works under any
 * location prefix ("location /", "location /v1/", exact matches).
 */
static ngx_http_llm_route_e
ngx_http_llm_route(ngx_str_t *uri, ngx_str_t *model_id)
{
    u_char  *p, *end = uri->data + uri->len;

    if (ngx_http_llm_ends_with(uri, "/chat/completions")) {
        return NGX_HTTP_LLM_ROUTE_CHAT;
    }
    if (ngx_http_llm_ends_with(uri, "/completions")) {
        return NGX_HTTP_LLM_ROUTE_COMPLETIONS;
    }
    if (ngx_http_llm_ends_with(uri, "/models")) {
        return NGX_HTTP_LLM_ROUTE_MODELS;
    }
    if (ngx_http_llm_ends_with(uri, "/detokenize")) {
        return NGX_HTTP_LLM_ROUTE_DETOKENIZE;
    }
    if (ngx_http_llm_ends_with(uri, "/tokenize")) {
        return NGX_HTTP_LLM_ROUTE_TOKENIZE;
    }
    if (ngx_http_llm_ends_with(uri, "/health")) {
        return NGX_HTTP_LLM_ROUTE_HEALTH;
    }
    if (ngx_http_llm_ends_with(uri, "/metrics")) {
        return NGX_HTTP_LLM_ROUTE_METRICS;
    }
    if (ngx_http_llm_ends_with(uri, "/version")) {
        return NGX_HTTP_LLM_ROUTE_VERSION;
    }
    /* GET /v1/models/{id}; ids may contain '/' ("Qwen/Qwen3-4B") */
    for (p = uri->data; p + 8 < end; p++) {
        if (ngx_strncmp(p, "/models/", 8) == 0) {
            model_id->data = p + 8;
            model_id->len = end - (p + 8);
            return NGX_HTTP_LLM_ROUTE_MODEL;
        }
    }
    return NGX_HTTP_LLM_ROUTE_NONE;
}


/*
 * Whether the token equals the key, in a time that depends only on the
 * token's length (which the client knows), not on the key's content or
 * length: the loop runs over the token and reads the key cyclically, and a
 * length difference counts as a difference.  No early exit.
 */
static ngx_uint_t
ngx_http_llm_key_equal(const ngx_str_t *key, const ngx_str_t *token)
{
    size_t      i, j = 0;
    ngx_uint_t  diff;

    if (key->len == 0) {
        return 0;                /* never configured: refused at load */
    }
    diff = key->len ^ token->len;
    for (i = 0; i < token->len; i++) {
        diff |= (ngx_uint_t) (key->data[j] ^ token->data[i]);
        j++;
        j &= (size_t) 0 - (size_t) (j != key->len);   /* j = 0 at the end */
    }
    return diff == 0;
}


/*
 * Bearer token against every configured key (no early exit at the first
 * match either), so the time tells neither where a token differs nor the
 * keys' lengths.
 */
static ngx_uint_t
ngx_http_llm_authorized(ngx_http_request_t *r, ngx_http_llm_loc_conf_t *lcf)
{
    ngx_str_t   *keys, token;
    ngx_uint_t   k, ok = 0;

    if (lcf->api_keys == NULL || lcf->api_keys->nelts == 0) {
        return 1;
    }
    if (r->headers_in.authorization == NULL) {
        return 0;
    }
    token = r->headers_in.authorization->value;
    if (token.len < 7 || ngx_strncasecmp(token.data, (u_char *) "Bearer ", 7)
                         != 0)
    {
        return 0;
    }
    token.data += 7;
    token.len -= 7;
    while (token.len && token.data[0] == ' ') {
        token.data++;
        token.len--;
    }

    keys = lcf->api_keys->elts;
    for (k = 0; k < lcf->api_keys->nelts; k++) {
        ok |= ngx_http_llm_key_equal(&keys[k], &token);
    }
    return ok;
}


/* The llm_api_key_exempt bit of a route; 0: the key is always needed. */
static ngx_uint_t
ngx_http_llm_exempt_bit(ngx_http_llm_route_e route)
{
    switch (route) {
    case NGX_HTTP_LLM_ROUTE_HEALTH:
        return NGX_HTTP_LLM_EXEMPT_HEALTH;
    case NGX_HTTP_LLM_ROUTE_METRICS:
        return NGX_HTTP_LLM_EXEMPT_METRICS;
    case NGX_HTTP_LLM_ROUTE_MODELS:
    case NGX_HTTP_LLM_ROUTE_MODEL:
        return NGX_HTTP_LLM_EXEMPT_MODELS;
    case NGX_HTTP_LLM_ROUTE_TOKENIZE:
    case NGX_HTTP_LLM_ROUTE_DETOKENIZE:
        return NGX_HTTP_LLM_EXEMPT_TOKENIZE;
    case NGX_HTTP_LLM_ROUTE_VERSION:
        return NGX_HTTP_LLM_EXEMPT_VERSION;
    default:
        return 0;
    }
}


/*
 * Part of the URI for an error message: at most max bytes, as valid UTF-8
 * (nginx has decoded %XX escapes, so any byte can be there, and messages go
 * into JSON strings).  From the request pool; "" when out of memory.
 */
static ngx_str_t
ngx_http_llm_safe_text(ngx_http_request_t *r, ngx_str_t *in, size_t max)
{
    ngx_str_t   text = ngx_string("");
    size_t      len;
    char       *safe;

    safe = oai_utf8_sanitize((const char *) in->data, ngx_min(in->len, max),
                             &len);
    if (safe == NULL) {
        return text;
    }
    /* U+FFFD takes 3 bytes: keep max, cut before a character */
    if (len > max) {
        len = max;
        while (len > 0 && ((u_char) safe[len] & 0xC0) == 0x80) {
            len--;
        }
    }
    text.data = ngx_pnalloc(r->pool, len);
    if (text.data != NULL) {
        ngx_memcpy(text.data, safe, len);
        text.len = len;
    }
    free(safe);
    return text;
}


static ngx_int_t
ngx_http_llm_handler(ngx_http_request_t *r)
{
    ngx_http_llm_loc_conf_t  *lcf;
    ngx_http_llm_route_e      route;
    ngx_str_t                 model_id = ngx_null_string, uri;
    ngx_uint_t                post;
    const char               *allow;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    if (r != r->main) {
        return NGX_DECLINED;         /* not for subrequests */
    }

    route = ngx_http_llm_route(&r->uri, &model_id);
    if (route == NGX_HTTP_LLM_ROUTE_NONE) {
        uri = ngx_http_llm_safe_text(r, &r->uri, 200);
        return ngx_http_llm_error(r, NGX_HTTP_NOT_FOUND,
                                  "invalid_request_error", "not_found",
                                  "Unknown route: %.*s", (int) uri.len,
                                  uri.data);
    }

    post = route == NGX_HTTP_LLM_ROUTE_CHAT
           || route == NGX_HTTP_LLM_ROUTE_COMPLETIONS
           || route == NGX_HTTP_LLM_ROUTE_TOKENIZE
           || route == NGX_HTTP_LLM_ROUTE_DETOKENIZE;
    if (post ? r->method != NGX_HTTP_POST
             : !(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD)))
    {
        allow = post ? "POST" : "GET, HEAD";
        if (ngx_http_llm_add_header(r, "Allow", allow) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        uri = ngx_http_llm_safe_text(r, &r->uri, 200);
        return ngx_http_llm_error(r, NGX_HTTP_NOT_ALLOWED,
                                  "invalid_request_error",
                                  "method_not_allowed",
                                  "Method %.*s is not allowed for %.*s "
                                  "(use %s)",
                                  (int) r->method_name.len,
                                  r->method_name.data,
                                  (int) uri.len, uri.data, allow);
    }

    if (!(ngx_http_llm_exempt_bit(route) & lcf->api_key_exempt)
        && !ngx_http_llm_authorized(r, lcf))
    {
        return ngx_http_llm_error(r, NGX_HTTP_UNAUTHORIZED,
                                  "invalid_request_error", "invalid_api_key",
                                  r->headers_in.authorization
                                  ? "Incorrect API key provided"
                                  : "Missing API key: send "
                                    "\"Authorization: Bearer <key>\"");
    }

    switch (route) {
    case NGX_HTTP_LLM_ROUTE_CHAT:
    case NGX_HTTP_LLM_ROUTE_COMPLETIONS:
        return ngx_http_llm_generate(r, route);
    case NGX_HTTP_LLM_ROUTE_TOKENIZE:
    case NGX_HTTP_LLM_ROUTE_DETOKENIZE:
        return ngx_http_llm_tokenize(r, route);
    case NGX_HTTP_LLM_ROUTE_MODELS:
        return ngx_http_llm_models(r, NULL);
    case NGX_HTTP_LLM_ROUTE_MODEL:
        /* the 404 echoes the id: an id that is not UTF-8 (it cannot name
         * a model) is passed on with U+FFFD for its bad bytes */
        uri = ngx_http_llm_safe_text(r, &model_id, 3 * model_id.len);
        if (uri.len > 0                  /* "": out of memory */
            && (uri.len != model_id.len
                || ngx_memcmp(uri.data, model_id.data, uri.len) != 0))
        {
            model_id = uri;
        }
        return ngx_http_llm_models(r, &model_id);
    case NGX_HTTP_LLM_ROUTE_HEALTH:
        return ngx_http_llm_health(r);
    case NGX_HTTP_LLM_ROUTE_METRICS:
        return ngx_http_llm_metrics(r);
    case NGX_HTTP_LLM_ROUTE_VERSION:
        return ngx_http_llm_version(r);
    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}
