/*
 * Chat template: loads the Jinja2 template of a model (tokenizer_config.json,
 * or chat_template.jinja next to it, which transformers prefers) and renders
 * it with the variables transformers' apply_chat_template passes:
 *
 *   render(messages=..., tools=<list or None>, documents=None,
 *          add_generation_prompt=<bool>, **special_tokens_map, **kwargs)
 *
 * The template is parsed once at load; each render has its own interpreter
 * state (jinja_render), so rendering is thread-safe.
 */
#include "chat_template.h"
#include "jinja.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct chat_template {
    jinja_template *tpl;
    /* special tokens as a JSON object of template variables
     * (bos_token, eos_token, ..., additional_special_tokens) */
    char *specials_json;
};

/* Whole file into a malloc'ed NUL-terminated buffer, or NULL. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;

    if (f == NULL) {
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return NULL;
    }
    buf = malloc((size_t) n + 1);
    if (buf && fread(buf, 1, (size_t) n, f) != (size_t) n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len = (size_t) n;
    }
    return buf;
}

/* A special token is a string or an AddedToken object {"content": ...}. */
static const char *token_text(const cJSON *v)
{
    if (cJSON_IsString(v)) {
        return v->valuestring;
    }
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(c)) {
            return c->valuestring;
        }
    }
    return NULL;
}

static chat_template *build(const char *source, size_t len, const char *specials_json,
                            const char *origin, char *err, size_t errlen)
{
    char perr[512];
    chat_template *ct = calloc(1, sizeof(*ct));
    if (ct == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ct->tpl = jinja_parse(source, len, perr, sizeof(perr));
    if (ct->tpl == NULL) {
        snprintf(err, errlen, "%s: chat template syntax error at %s", origin, perr);
        free(ct);
        return NULL;
    }
    ct->specials_json = strdup(specials_json ? specials_json : "{}");
    if (ct->specials_json == NULL) {
        snprintf(err, errlen, "out of memory");
        chat_template_free(ct);
        return NULL;
    }
    return ct;
}

chat_template *chat_template_from_source(const char *source, const char *bos_token,
                                         const char *eos_token, char *err, size_t errlen)
{
    char dummy[8];
    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    if (source == NULL) {
        snprintf(err, errlen, "no chat template source");
        return NULL;
    }
    cJSON *sp = cJSON_CreateObject();
    if (sp == NULL
        || (bos_token && cJSON_AddStringToObject(sp, "bos_token", bos_token) == NULL)
        || (eos_token && cJSON_AddStringToObject(sp, "eos_token", eos_token) == NULL)) {
        cJSON_Delete(sp);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    char *specials = cJSON_PrintUnformatted(sp);
    cJSON_Delete(sp);
    if (specials == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    chat_template *ct = build(source, strlen(source), specials, "template", err, errlen);
    cJSON_free(specials);
    return ct;
}

chat_template *chat_template_load(const char *tokenizer_config_path, char *err, size_t errlen)
{
    static const char *const special_names[] = {
        "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
        "mask_token",
    };
    char dummy[8];
    size_t len = 0;
    char *text, *jinja_text = NULL, *jinja_path = NULL;
    const char *source = NULL, *origin = tokenizer_config_path;
    size_t source_len = 0;
    chat_template *ct = NULL;
    cJSON *cfg = NULL, *sp = NULL;

    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    text = read_file(tokenizer_config_path, &len);
    if (text == NULL) {
        snprintf(err, errlen, "%s: cannot read the file", tokenizer_config_path);
        return NULL;
    }
    cfg = cJSON_ParseWithLength(text, len);
    if (cfg == NULL || !cJSON_IsObject(cfg)) {
        snprintf(err, errlen, "%s: not a JSON object", tokenizer_config_path);
        goto done;
    }

    /* chat_template.jinja in the same directory takes priority, as in
     * transformers */
    const char *slash = strrchr(tokenizer_config_path, '/');
    size_t dirlen = slash ? (size_t) (slash - tokenizer_config_path) + 1 : 0;
    jinja_path = malloc(dirlen + sizeof("chat_template.jinja"));
    if (jinja_path == NULL) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    memcpy(jinja_path, tokenizer_config_path, dirlen);
    memcpy(jinja_path + dirlen, "chat_template.jinja", sizeof("chat_template.jinja"));
    jinja_text = read_file(jinja_path, &source_len);
    if (jinja_text) {
        source = jinja_text;
        origin = jinja_path;
    } else {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
        if (cJSON_IsString(t)) {
            source = t->valuestring;
        } else if (cJSON_IsArray(t)) {
            const cJSON *e;
            cJSON_ArrayForEach(e, t) {
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name");
                const cJSON *tp = cJSON_GetObjectItemCaseSensitive(e, "template");
                if (cJSON_IsString(nm) && cJSON_IsString(tp) && !strcmp(nm->valuestring, "default")) {
                    source = tp->valuestring;
                }
            }
            if (source == NULL) {
                snprintf(err, errlen, "%s: chat_template lists named templates but none is "
                         "named \"default\"", tokenizer_config_path);
                goto done;
            }
        } else if (t != NULL && !cJSON_IsNull(t)) {
            snprintf(err, errlen, "%s: chat_template must be a string or a list of "
                     "{name, template}", tokenizer_config_path);
            goto done;
        }
        if (source == NULL) {
            snprintf(err, errlen, "%s: no chat_template (and no chat_template.jinja beside it)",
                     tokenizer_config_path);
            goto done;
        }
        source_len = strlen(source);
    }

    /* the special tokens transformers passes as template variables */
    sp = cJSON_CreateObject();
    if (sp == NULL) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < sizeof(special_names) / sizeof(special_names[0]); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, special_names[i]);
        const char *tok = token_text(v);
        if (v != NULL && !cJSON_IsNull(v) && tok == NULL) {
            snprintf(err, errlen, "%s: %s must be a string or an object with \"content\"",
                     tokenizer_config_path, special_names[i]);
            goto done;
        }
        if (tok && cJSON_AddStringToObject(sp, special_names[i], tok) == NULL) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
    }
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(cfg, "additional_special_tokens");
    if (cJSON_IsArray(extra)) {
        cJSON *list = cJSON_AddArrayToObject(sp, "additional_special_tokens");
        const cJSON *e;
        if (list == NULL) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
        cJSON_ArrayForEach(e, extra) {
            const char *tok = token_text(e);
            if (tok == NULL) {
                snprintf(err, errlen, "%s: additional_special_tokens holds a non-token",
                         tokenizer_config_path);
                goto done;
            }
            cJSON_AddItemToArray(list, cJSON_CreateString(tok));
        }
    }
    char *specials = cJSON_PrintUnformatted(sp);
    if (specials == NULL) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    ct = build(source, source_len, specials, origin, err, errlen);
    cJSON_free(specials);
done:
    cJSON_Delete(sp);
    cJSON_Delete(cfg);
    free(text);
    free(jinja_text);
    free(jinja_path);
    return ct;
}

void chat_template_free(chat_template *ct)
{
    if (ct) {
        jinja_template_free(ct->tpl);
        free(ct->specials_json);
        free(ct);
    }
}

/* First non-blank character of a JSON text (0 when none). */
static char json_first(const char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') {
        s++;
    }
    return *s;
}

/* Is the JSON text the literal null? */
static int is_json_null(const char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') {
        s++;
    }
    if (strncmp(s, "null", 4) != 0) {
        return 0;
    }
    for (s += 4; *s == ' ' || *s == '\t' || *s == '\n' || *s == '\r'; s++) {
    }
    return *s == '\0';
}

char *chat_template_render(const chat_template *ct, const char *messages_json,
                           const char *tools_json, const char *kwargs_json,
                           int add_generation_prompt, size_t *out_len,
                           char *err, size_t errlen)
{
    static const char *const reserved[] = {
        "messages", "tools", "documents", "add_generation_prompt",
    };
    char dummy[8], jerr[512];
    jinja_render *r;
    char *text = NULL;

    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    if (ct == NULL || messages_json == NULL) {
        snprintf(err, errlen, "chat template: no template or no messages");
        return NULL;
    }
    if (json_first(messages_json) != '[') {
        snprintf(err, errlen, "messages must be a JSON array");
        return NULL;
    }
    r = jinja_render_new(NULL);
    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (jinja_set_json_object_vars(r, ct->specials_json, strlen(ct->specials_json),
                                   jerr, sizeof(jerr)) < 0) {
        snprintf(err, errlen, "special tokens: %s", jerr);
        goto done;
    }
    if (kwargs_json != NULL && !is_json_null(kwargs_json)) {
        if (json_first(kwargs_json) != '{') {
            snprintf(err, errlen, "chat template kwargs must be a JSON object");
            goto done;
        }
        /* kwargs override the special tokens, as in transformers */
        if (jinja_set_json_object_vars(r, kwargs_json, strlen(kwargs_json), jerr,
                                       sizeof(jerr)) < 0) {
            snprintf(err, errlen, "chat template kwargs: %s", jerr);
            goto done;
        }
        /* only kwargs can have set these so far; transformers would raise
         * "got multiple values for keyword argument" */
        for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
            if (jinja_has_var(r, reserved[i])) {
                snprintf(err, errlen, "chat template kwargs cannot set '%s'", reserved[i]);
                goto done;
            }
        }
    }
    if (jinja_set_json(r, "messages", messages_json, strlen(messages_json), jerr,
                       sizeof(jerr)) < 0) {
        snprintf(err, errlen, "messages: %s", jerr);
        goto done;
    }
    /* transformers passes tools=None when there are none */
    if (tools_json == NULL || is_json_null(tools_json)) {
        if (jinja_set_none(r, "tools") < 0) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
    } else {
        if (json_first(tools_json) != '[') {
            snprintf(err, errlen, "tools must be a JSON array");
            goto done;
        }
        if (jinja_set_json(r, "tools", tools_json, strlen(tools_json), jerr, sizeof(jerr)) < 0) {
            snprintf(err, errlen, "tools: %s", jerr);
            goto done;
        }
    }
    if (jinja_set_none(r, "documents") < 0
        || jinja_set_bool(r, "add_generation_prompt", add_generation_prompt) < 0) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    int raised = 0;
    text = jinja_render_run(r, ct->tpl, out_len, &raised, jerr, sizeof(jerr));
    if (text == NULL) {
        if (raised) {
            snprintf(err, errlen, "%s", jerr);
        } else {
            snprintf(err, errlen, "chat template error at %s", jerr);
        }
    }
done:
    jinja_render_free(r);
    return text;
}
