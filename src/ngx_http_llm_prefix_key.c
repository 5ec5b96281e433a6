/*
 * $llm_prefix_key: a key for nginx's "hash" upstream balancer that sends
 * requests sharing a conversation prefix to the same backend, where that
 * prefix already sits in the prefix cache.
 *
 *   upstream llm { hash $llm_prefix_key consistent; server a:8000; ... }
 *
 * The key is the hex MD5 of the body's "model" and the first
 * llm_prefix_key_bytes bytes of the conversation's leading part: for chat,
 * the messages up to the first assistant (or tool) message, that is the
 * system prompt and the first user message(s), which every later turn of
 * the conversation repeats; for completions, the prompt.  Conversations that
 * share a system prompt longer than the limit get one key.
 *
 * A front nginx has no model loaded: this is a plain http-level variable.
 * It reads r->request_body, which proxy_pass (with the default
 * proxy_request_buffering on) has read completely before the upstream peer
 * is chosen.  Before that, or for a body that is not an OpenAI request
 * (invalid JSON, no messages/prompt), the value is empty.  The variable is
 * not cached, so an evaluation before the body was read does not stick.
 */
#include "ngx_http_llm_module.h"

#include <cJSON.h>
#include <ngx_md5.h>


/* Feeds bytes to the hash until the byte budget is spent. */
typedef struct {
    ngx_md5_t   md5;
    size_t      left;                   /* prefix bytes still hashed */
} ngx_http_llm_prefix_hash_t;


static void
ngx_http_llm_prefix_feed(ngx_http_llm_prefix_hash_t *h, const char *p,
    size_t len)
{
    if (len > h->left) {
        len = h->left;
    }
    if (len > 0) {
        ngx_md5_update(&h->md5, p, len);
        h->left -= len;
    }
}


static void
ngx_http_llm_prefix_feed_str(ngx_http_llm_prefix_hash_t *h, const char *s)
{
    ngx_http_llm_prefix_feed(h, s, ngx_strlen(s));
}


/* A message's content: a string, or an array of parts whose text counts. */
static void
ngx_http_llm_prefix_feed_content(ngx_http_llm_prefix_hash_t *h,
    const cJSON *content)
{
    const cJSON  *part, *text;

    if (cJSON_IsString(content)) {
        ngx_http_llm_prefix_feed_str(h, content->valuestring);
        return;
    }
    if (!cJSON_IsArray(content)) {
        return;
    }
    cJSON_ArrayForEach(part, content) {
        text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (cJSON_IsString(text)) {
            ngx_http_llm_prefix_feed_str(h, text->valuestring);
        }
    }
}


/*
 * The leading messages: everything before the first assistant or tool
 * message.  Turn k of a conversation repeats turn 1's leading messages, so
 * all turns get the same key.  Returns the number of messages hashed.
 */
static ngx_uint_t
ngx_http_llm_prefix_feed_messages(ngx_http_llm_prefix_hash_t *h,
    const cJSON *messages)
{
    const cJSON  *msg, *role;
    ngx_uint_t    n = 0;

    cJSON_ArrayForEach(msg, messages) {
        role = cJSON_GetObjectItemCaseSensitive(msg, "role");
        if (!cJSON_IsString(role)) {
            break;
        }
        if (ngx_strcmp(role->valuestring, "assistant") == 0
            || ngx_strcmp(role->valuestring, "tool") == 0)
        {
            break;
        }
        /* role and separators count against the budget too, so the key
         * covers exactly the first N bytes of this serialization */
        ngx_http_llm_prefix_feed_str(h, role->valuestring);
        ngx_http_llm_prefix_feed(h, "\n", 1);
        ngx_http_llm_prefix_feed_content(h,
            cJSON_GetObjectItemCaseSensitive(msg, "content"));
        ngx_http_llm_prefix_feed(h, "\n", 1);
        n++;
    }
    return n;
}


/* A prompt: a string, token ids, or a batch of either (the first counts). */
static ngx_uint_t
ngx_http_llm_prefix_feed_prompt(ngx_http_llm_prefix_hash_t *h,
    const cJSON *prompt)
{
    const cJSON  *item;
    char          num[32];
    int           n;
    ngx_uint_t    ids = 0;

    if (cJSON_IsString(prompt)) {
        ngx_http_llm_prefix_feed_str(h, prompt->valuestring);
        return 1;
    }
    if (!cJSON_IsArray(prompt) || cJSON_GetArraySize(prompt) == 0) {
        return 0;
    }
    item = cJSON_GetArrayItem(prompt, 0);
    if (cJSON_IsString(item) || cJSON_IsArray(item)) {
        return ngx_http_llm_prefix_feed_prompt(h, item);
    }
    cJSON_ArrayForEach(item, prompt) {
        if (!cJSON_IsNumber(item) || h->left == 0) {
            break;
        }
        n = snprintf(num, sizeof(num), "%.0f ", item->valuedouble);
        if (n > 0) {
            ngx_http_llm_prefix_feed(h, num, (size_t) n);
        }
        ids++;
    }
    return ids > 0;        /* a list of something else: no prefix known */
}


/* Fills key (32 hex digits) and returns NGX_OK, or NGX_DECLINED. */
static ngx_int_t
ngx_http_llm_prefix_key_of(const u_char *body, size_t len, size_t bytes,
    u_char key[32])
{
    ngx_http_llm_prefix_hash_t   h;
    cJSON                       *root;
    const cJSON                 *model, *messages, *prompt;
    ngx_uint_t                   fed = 0;
    u_char                       digest[16];

    root = cJSON_ParseWithLength((const char *) body, len);
    if (root == NULL) {
        return NGX_DECLINED;
    }
    ngx_md5_init(&h.md5);

    /* the model name is outside the byte budget: two models never share
     * a key, however long the shared prompt */
    model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (cJSON_IsString(model)) {
        ngx_md5_update(&h.md5, model->valuestring,
                       ngx_strlen(model->valuestring));
    }
    ngx_md5_update(&h.md5, "\0", 1);

    h.left = bytes;
    messages = cJSON_GetObjectItemCaseSensitive(root, "messages");
    prompt = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (cJSON_IsArray(messages)) {
        ngx_md5_update(&h.md5, "chat\0", 5);
        fed = ngx_http_llm_prefix_feed_messages(&h, messages);
    } else if (prompt != NULL) {
        ngx_md5_update(&h.md5, "prompt\0", 7);
        fed = ngx_http_llm_prefix_feed_prompt(&h, prompt);
    }
    cJSON_Delete(root);
    if (fed == 0) {
        return NGX_DECLINED;
    }

    ngx_md5_final(digest, &h.md5);
    ngx_hex_dump(key, digest, sizeof(digest));
    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_prefix_key_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_loc_conf_t  *lcf;
    u_char                   *body, *key;
    size_t                    len;

    v->not_found = 1;
    if (r->request_body == NULL || r->request_body->rest > 0) {
        return NGX_OK;                  /* not (completely) read yet */
    }
    if (ngx_http_llm_read_body(r, &body, &len) != NGX_OK) {
        return NGX_ERROR;
    }
    if (len == 0) {
        return NGX_OK;
    }
    key = ngx_pnalloc(r->pool, 32);
    if (key == NULL) {
        return NGX_ERROR;
    }
    lcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    if (ngx_http_llm_prefix_key_of(body, len, (size_t) lcf->prefix_key_bytes,
                                   key) != NGX_OK)
    {
        return NGX_OK;
    }
    v->data = key;
    v->len = 32;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    return NGX_OK;
}


ngx_int_t
ngx_http_llm_add_variables(ngx_conf_t *cf)
{
    static ngx_str_t      name = ngx_string("llm_prefix_key");
    ngx_http_variable_t  *var;

    var = ngx_http_add_variable(cf, &name, NGX_HTTP_VAR_NOCACHEABLE);
    if (var == NULL) {
        return NGX_ERROR;
    }
    var->get_handler = ngx_http_llm_prefix_key_variable;
    return NGX_OK;
}
