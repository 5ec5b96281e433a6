/*
 * OpenAI HTTP API: request parsing/validation and response JSON (see
 * openai.h).  Field semantics follow OpenAI's API reference, with vLLM's
 * extensions (top_k, min_p, repetition_penalty, stop_token_ids, ignore_eos,
 * min_tokens, chat_template_kwargs, ...), so clients written for either work.
 */
#include "openai.h"
#include "json_schema.h"
#include "tool_parser.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define OAI_DEFAULT_MAX_CHOICES 128

/* ---- errors ------------------------------------------------------------ */

void oai_error_set(oai_error *e, int status, const char *type,
                   const char *code, const char *param, const char *fmt, ...)
{
    va_list ap;

    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof(e->param), "%s", param ? param : "");
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
}

void oai_error_from_llm(oai_error *e, llm_status st, const char *param,
                        const char *message)
{
    const char *msg = (message && *message) ? message : "request failed";

    switch (st) {
    case LLM_ERR_INVALID:
        oai_error_set(e, 400, "invalid_request_error", NULL, param, "%s", msg);
        break;
    case LLM_ERR_TOO_LONG:
        oai_error_set(e, 400, "invalid_request_error",
                      "context_length_exceeded", param, "%s", msg);
        break;
    case LLM_ERR_QUEUE_FULL:
        oai_error_set(e, 429, "rate_limit_error", "rate_limit_exceeded",
                      param, "%s", msg);
        break;
    case LLM_ERR_NOT_READY:
        oai_error_set(e, 503, "service_unavailable_error", "model_not_ready",
                      param, "%s", msg);
        break;
    default:
        oai_error_set(e, 500, "internal_server_error", NULL, param, "%s", msg);
        break;
    }
}

static char *print_json(cJSON *j, size_t *len)
{
    char *s;

    if (j == NULL) {
        return NULL;
    }
    s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (s != NULL && len != NULL) {
        *len = strlen(s);
    }
    return s;
}

static cJSON *error_object(const oai_error *e)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");

    if (err == NULL) {
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_AddStringToObject(err, "message", e->message);
    cJSON_AddStringToObject(err, "type", e->type ? e->type : "error");
    if (e->param[0]) {
        cJSON_AddStringToObject(err, "param", e->param);
    } else {
        cJSON_AddNullToObject(err, "param");
    }
    if (e->code) {
        cJSON_AddStringToObject(err, "code", e->code);
    } else {
        cJSON_AddNullToObject(err, "code");
    }
    return root;
}

char *oai_error_json(const oai_error *e, size_t *len)
{
    return print_json(error_object(e), len);
}

/* ---- buffer -------------------------------------------------------------- */

int oai_buf_append(oai_buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;

        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        p = realloc(b->data, cap);
        if (p == NULL) {
            return -1;
        }
        b->data = p;
        b->cap = cap;
    }
    if (n) {
        memcpy(b->data + b->len, s, n);
    }
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

void oai_buf_free(oai_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- utf-8 --------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t utf8_seq_len(const unsigned char *s, size_t avail)
{
    unsigned c = s[0];
    size_t n, i;
    uint32_t cp;

    if (c < 0x80) {
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        n = 2; cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        n = 3; cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        n = 4; cp = c & 0x07;
    } else {
        return 0;
    }
    if (avail < n) {
        return 0;
    }
    for (i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    /* overlong forms, surrogates and values past U+10FFFF are invalid */
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800)
        || (n == 4 && cp < 0x10000) || cp > 0x10FFFF
        || (cp >= 0xD800 && cp <= 0xDFFF))
    {
        return 0;
    }
    return n;
}

char *oai_utf8_sanitize(const char *s, size_t len, size_t *out_len)
{
    const unsigned char *p = (const unsigned char *) s;
    char *out = malloc(len * 3 + 1);
    size_t i = 0, o = 0;

    if (out == NULL) {
        return NULL;
    }
    while (i < len) {
        size_t n = utf8_seq_len(p + i, len - i);

        if (n == 0 || (n == 1 && p[i] == 0)) {
            /* NUL would end the C string cJSON works with */
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += 1;
            continue;
        }
        memcpy(out + o, p + i, n);
        o += n;
        i += n;
    }
    out[o] = '\0';
    if (out_len) {
        *out_len = o;
    }
    return out;
}

static size_t utf8_count_chars(const char *s, size_t len)
{
    size_t i, n = 0;

    for (i = 0; i < len; i++) {
        if (((unsigned char) s[i] & 0xC0) != 0x80) {
            n++;
        }
    }
    return n;
}

/* ---- body checks --------------------------------------------------------- */

/*
 * The whole body must be UTF-8: checked first, over every byte (keys and
 * fields we ignore included), so a request gets one error naming the first
 * bad byte before anything else is looked at.  cJSON copies bytes as they
 * are, so without this check invalid text would reach the template, stop
 * strings, logs and the 404 that echoes 'model'.
 */
static int check_utf8(const char *body, size_t len, oai_error *err)
{
    const unsigned char *p = (const unsigned char *) body;
    size_t i = 0, n;

    while (i < len) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        n = utf8_seq_len(p + i, len - i);
        if (n == 0) {
            oai_error_set(err, 400, "invalid_request_error", "invalid_utf8",
                          NULL, "invalid UTF-8 at byte %zu of the request "
                          "body", i);
            return -1;
        }
        i += n;
    }
    return 0;
}

/*
 * What cJSON accepts but must not get through, found by one pass over the
 * raw body that only tracks strings and brackets:
 *   - nesting over OAI_MAX_JSON_DEPTH: cJSON recurses once per level, so the
 *     depth is refused before the parser runs;
 *   - a NUL byte, or a \u0000 escape in any string: strings are C strings
 *     from here on, and everything after the NUL would silently vanish.
 * Anything else malformed is left to the parser's error.
 */
static int check_structure(const char *body, size_t len, oai_error *err)
{
    const unsigned char *p = (const unsigned char *) body;
    size_t i;
    int depth = 0, in_string = 0;

    for (i = 0; i < len; i++) {
        if (p[i] == '\0') {
            oai_error_set(err, 400, "invalid_request_error", "invalid_json",
                          NULL, "the request body contains a NUL byte at "
                          "byte %zu", i);
            return -1;
        }
        if (in_string) {
            if (p[i] == '\\' && i + 1 < len) {
                if (p[i + 1] == 'u' && i + 5 < len
                    && memcmp(p + i + 2, "0000", 4) == 0)
                {
                    oai_error_set(err, 400, "invalid_request_error",
                                  "invalid_value", NULL, "strings must not "
                                  "contain \\u0000 (at byte %zu of the "
                                  "request body)", i);
                    return -1;
                }
                i++;                 /* the escaped character */
            } else if (p[i] == '"') {
                in_string = 0;
            }
            continue;
        }
        switch (p[i]) {
        case '"':
            in_string = 1;
            break;
        case '[':
        case '{':
            if (++depth > OAI_MAX_JSON_DEPTH) {
                oai_error_set(err, 400, "invalid_request_error",
                              "nesting_too_deep", NULL, "the request body "
                              "nests arrays/objects more than %d levels deep "
                              "(at byte %zu)", OAI_MAX_JSON_DEPTH, i);
                return -1;
            }
            break;
        case ']':
        case '}':
            if (depth > 0) {
                depth--;
            }
            break;
        default:
            break;
        }
    }
    return 0;
}

/*
 * Checks, parses and returns the body's top-level object (caller deletes),
 * or NULL with err set.  Data after the value ("{...} {...}") is refused:
 * cJSON would ignore it.
 */
static cJSON *parse_body(const char *body, size_t len, oai_error *err)
{
    cJSON *root;
    const char *end = NULL;
    size_t i;

    if (check_utf8(body, len, err) < 0 || check_structure(body, len, err) < 0)
    {
        return NULL;
    }
    root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (root == NULL) {
        oai_error_set(err, 400, "invalid_request_error", "invalid_json", NULL,
                      "request body is not valid JSON (error near byte %ld)",
                      end ? (long) (end - body) : 0L);
        return NULL;
    }
    for (i = end ? (size_t) (end - body) : len; i < len; i++) {
        if (body[i] != ' ' && body[i] != '\t' && body[i] != '\n'
            && body[i] != '\r')
        {
            cJSON_Delete(root);
            oai_error_set(err, 400, "invalid_request_error", "invalid_json",
                          NULL, "unexpected data after the JSON value at "
                          "byte %zu", i);
            return NULL;
        }
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        oai_error_set(err, 400, "invalid_request_error", "invalid_json", NULL,
                      "request body must be a JSON object");
        return NULL;
    }
    return root;
}

/* ---- field access -------------------------------------------------------- */

/* Absent and JSON null both mean "not given", as in OpenAI's API. */
static cJSON *field(const cJSON *obj, const char *name)
{
    cJSON *f = cJSON_GetObjectItemCaseSensitive(obj, name);

    return (f == NULL || cJSON_IsNull(f)) ? NULL : f;
}

static int bad_type(oai_error *err, const char *name, const char *what)
{
    oai_error_set(err, 400, "invalid_request_error", "invalid_type", name,
                  "'%s' must be %s", name, what);
    return -1;
}

static int bad_value(oai_error *err, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int bad_value(oai_error *err, const char *name, const char *fmt, ...)
{
    va_list ap;

    oai_error_set(err, 400, "invalid_request_error", "invalid_value", name,
                  "%s", "");
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return -1;
}

static int get_bool(const cJSON *obj, const char *name, int *out,
                    oai_error *err)
{
    cJSON *f = field(obj, name);

    if (f == NULL) {
        return 0;
    }
    if (!cJSON_IsBool(f)) {
        return bad_type(err, name, "a boolean");
    }
    *out = cJSON_IsTrue(f) ? 1 : 0;
    return 0;
}

/* Returns 1 if present (value in *out), 0 if absent, -1 on error. */
static int get_number(const cJSON *obj, const char *name, double *out,
                      oai_error *err)
{
    cJSON *f = field(obj, name);

    if (f == NULL) {
        return 0;
    }
    if (!cJSON_IsNumber(f) || !isfinite(f->valuedouble)) {
        return bad_type(err, name, "a number");
    }
    *out = f->valuedouble;
    return 1;
}

static int is_integer(const cJSON *f)
{
    return cJSON_IsNumber(f) && isfinite(f->valuedouble)
           && f->valuedouble == floor(f->valuedouble)
           && fabs(f->valuedouble) < 9.007199254740992e15;
}

static int get_int(const cJSON *obj, const char *name, long long *out,
                   oai_error *err)
{
    cJSON *f = field(obj, name);

    if (f == NULL) {
        return 0;
    }
    if (!is_integer(f)) {
        return bad_type(err, name, "an integer");
    }
    *out = (long long) f->valuedouble;
    return 1;
}

static int number_in(const cJSON *obj, const char *name, double lo, double hi,
                     int lo_open, double *out, oai_error *err)
{
    int rc = get_number(obj, name, out, err);

    if (rc == 1 && (*out > hi || *out < lo || (lo_open && *out == lo))) {
        return bad_value(err, name, "'%s' must be %s %g and <= %g, got %g",
                         name, lo_open ? ">" : ">=", lo, hi, *out);
    }
    return rc;
}

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);

    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static int oom(oai_error *err)
{
    oai_error_set(err, 500, "internal_server_error", NULL, NULL,
                  "out of memory");
    return -1;
}

/* 'model' (optional) into *out, malloc'ed; bounded so it is echoed whole. */
static int get_model(const cJSON *root, char **out, oai_error *err)
{
    cJSON *f = field(root, "model");

    if (f == NULL) {
        return 0;
    }
    if (!cJSON_IsString(f)) {
        return bad_type(err, "model", "a string");
    }
    if (strlen(f->valuestring) > OAI_MAX_MODEL_NAME) {
        return bad_value(err, "model", "'model' must have at most %d bytes, "
                         "got %zu", OAI_MAX_MODEL_NAME,
                         strlen(f->valuestring));
    }
    if ((*out = strdup(f->valuestring)) == NULL) {
        return oom(err);
    }
    return 0;
}

/* 'tools' (optional): an array of at most OAI_MAX_TOOLS entries. */
static int check_tools(const cJSON *tools, oai_error *err)
{
    int n;

    if (tools == NULL) {
        return 0;
    }
    if (!cJSON_IsArray(tools)) {
        return bad_type(err, "tools", "an array");
    }
    n = cJSON_GetArraySize(tools);
    if (n > OAI_MAX_TOOLS) {
        return bad_value(err, "tools", "'tools' must have at most %d "
                         "entries, got %d", OAI_MAX_TOOLS, n);
    }
    return 0;
}

/* ---- messages ------------------------------------------------------------ */

/*
 * Validates OpenAI messages and returns a normalized copy for the chat
 * template: content arrays of text parts joined into one string (vLLM joins
 * them with "\n"), "developer" mapped to "system" (the Qwen3 template knows
 * no developer role).  Other fields (tool_calls, name, tool_call_id, ...) are
 * kept as they are.
 */
static cJSON *normalize_messages(const cJSON *msgs, oai_error *err)
{
    static const char *roles[] = { "system", "developer", "user", "assistant",
                                   "tool", "function" };
    cJSON *out, *m;
    int i = 0;
    char param[64];

    if (msgs == NULL) {
        bad_value(err, "messages", "'messages' is required");
        return NULL;
    }
    if (!cJSON_IsArray(msgs)) {
        bad_type(err, "messages", "an array");
        return NULL;
    }
    if (cJSON_GetArraySize(msgs) == 0) {
        bad_value(err, "messages", "'messages' must not be empty");
        return NULL;
    }
    if (cJSON_GetArraySize(msgs) > OAI_MAX_MESSAGES) {
        bad_value(err, "messages", "'messages' must have at most %d "
                  "entries, got %d", OAI_MAX_MESSAGES,
                  cJSON_GetArraySize(msgs));
        return NULL;
    }
    out = cJSON_CreateArray();
    if (out == NULL) {
        oom(err);
        return NULL;
    }
    cJSON_ArrayForEach(m, msgs) {
        cJSON *role, *content, *copy;
        size_t r;
        int known = 0;

        snprintf(param, sizeof(param), "messages[%d]", i);
        if (!cJSON_IsObject(m)) {
            bad_type(err, param, "an object");
            goto fail;
        }
        role = cJSON_GetObjectItemCaseSensitive(m, "role");
        snprintf(param, sizeof(param), "messages[%d].role", i);
        if (role == NULL) {
            bad_value(err, param, "'%s' is required", param);
            goto fail;
        }
        if (!cJSON_IsString(role)) {
            bad_type(err, param, "a string");
            goto fail;
        }
        for (r = 0; r < sizeof(roles) / sizeof(roles[0]); r++) {
            if (strcmp(role->valuestring, roles[r]) == 0) {
                known = 1;
            }
        }
        if (!known) {
            bad_value(err, param, "unknown role '%.32s' in %s (expected "
                      "system, developer, user, assistant or tool)",
                      role->valuestring, param);
            goto fail;
        }
        copy = cJSON_Duplicate(m, 1);
        if (copy == NULL) {
            oom(err);
            goto fail;
        }
        cJSON_AddItemToArray(out, copy);
        if (strcmp(role->valuestring, "developer") == 0) {
            cJSON_ReplaceItemInObjectCaseSensitive(copy, "role",
                                                   cJSON_CreateString("system"));
        }

        snprintf(param, sizeof(param), "messages[%d].content", i);
        content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (content == NULL || cJSON_IsNull(content)) {
            /* an assistant turn that only calls tools has no content;
             * templates test it with `in`, which fails on None */
            if (strcmp(role->valuestring, "assistant") != 0) {
                bad_value(err, param, "'%s' is required", param);
                goto fail;
            }
            if (content != NULL) {
                cJSON_ReplaceItemInObjectCaseSensitive(copy, "content",
                                                       cJSON_CreateString(""));
            } else {
                cJSON_AddStringToObject(copy, "content", "");
            }
        } else if (cJSON_IsArray(content)) {
            oai_buf joined = { 0 };
            cJSON *part;
            int k = 0;

            if (cJSON_GetArraySize(content) > OAI_MAX_CONTENT_PARTS) {
                bad_value(err, param, "'%s' must have at most %d parts, "
                          "got %d", param, OAI_MAX_CONTENT_PARTS,
                          cJSON_GetArraySize(content));
                goto fail;
            }
            cJSON_ArrayForEach(part, content) {
                cJSON *type, *text;
                char pparam[64];

                snprintf(pparam, sizeof(pparam), "messages[%d].content[%d]",
                         i, k);
                if (!cJSON_IsObject(part)) {
                    oai_buf_free(&joined);
                    bad_type(err, pparam, "an object");
                    goto fail;
                }
                type = cJSON_GetObjectItemCaseSensitive(part, "type");
                text = cJSON_GetObjectItemCaseSensitive(part, "text");
                if (!cJSON_IsString(type)
                    || strcmp(type->valuestring, "text") != 0)
                {
                    oai_buf_free(&joined);
                    bad_value(err, pparam, "content part type '%.32s' is not "
                              "supported (only 'text')",
                              cJSON_IsString(type) ? type->valuestring : "?");
                    goto fail;
                }
                if (!cJSON_IsString(text)) {
                    oai_buf_free(&joined);
                    bad_type(err, pparam, "a text part with a string 'text'");
                    goto fail;
                }
                if ((k > 0 && oai_buf_append(&joined, "\n", 1) != 0)
                    || oai_buf_append(&joined, text->valuestring,
                                      strlen(text->valuestring)) != 0)
                {
                    oai_buf_free(&joined);
                    oom(err);
                    goto fail;
                }
                k++;
            }
            cJSON_ReplaceItemInObjectCaseSensitive(copy, "content",
                cJSON_CreateString(joined.data ? joined.data : ""));
            oai_buf_free(&joined);
        } else if (!cJSON_IsString(content)) {
            bad_type(err, param, "a string or an array of text parts");
            goto fail;
        }
        i++;
    }
    return out;

fail:
    cJSON_Delete(out);
    return NULL;
}

/* ---- sampling and limits -------------------------------------------------- */

static int parse_stop(const cJSON *root, oai_request *req, oai_error *err)
{
    cJSON *f = field(root, "stop"), *s;
    int i = 0;

    if (f == NULL) {
        return 0;
    }
    if (cJSON_IsString(f)) {
        if (f->valuestring[0] == '\0') {
            return bad_value(err, "stop", "'stop' must not be empty");
        }
        if (strlen(f->valuestring) > OAI_MAX_STOP_BYTES) {
            return bad_value(err, "stop", "'stop' must have at most %d "
                             "bytes, got %zu", OAI_MAX_STOP_BYTES,
                             strlen(f->valuestring));
        }
        req->stop = calloc(1, sizeof(char *));
        if (req->stop == NULL || (req->stop[0] = strdup(f->valuestring)) == NULL) {
            return oom(err);
        }
        req->n_stop = 1;
        return 0;
    }
    if (!cJSON_IsArray(f)) {
        return bad_type(err, "stop", "a string or an array of strings");
    }
    if (cJSON_GetArraySize(f) > OAI_MAX_STOP) {
        return bad_value(err, "stop", "'stop' must have at most %d entries, "
                         "got %d", OAI_MAX_STOP, cJSON_GetArraySize(f));
    }
    req->stop = calloc(cJSON_GetArraySize(f) + 1, sizeof(char *));
    if (req->stop == NULL) {
        return oom(err);
    }
    cJSON_ArrayForEach(s, f) {
        if (!cJSON_IsString(s)) {
            return bad_type(err, "stop", "a string or an array of strings");
        }
        if (s->valuestring[0] == '\0') {
            return bad_value(err, "stop", "'stop' entries must not be empty");
        }
        if (strlen(s->valuestring) > OAI_MAX_STOP_BYTES) {
            return bad_value(err, "stop", "'stop' entries must have at most "
                             "%d bytes, entry %d has %zu", OAI_MAX_STOP_BYTES,
                             i, strlen(s->valuestring));
        }
        if ((req->stop[i] = strdup(s->valuestring)) == NULL) {
            return oom(err);
        }
        req->n_stop = ++i;
    }
    return 0;
}

static int parse_stop_token_ids(const cJSON *root, oai_request *req,
                                oai_error *err)
{
    cJSON *f = field(root, "stop_token_ids"), *s;
    int i = 0;

    if (f == NULL) {
        return 0;
    }
    if (!cJSON_IsArray(f)) {
        return bad_type(err, "stop_token_ids", "an array of integers");
    }
    req->stop_token_ids = calloc(cJSON_GetArraySize(f) + 1, sizeof(int32_t));
    if (req->stop_token_ids == NULL) {
        return oom(err);
    }
    cJSON_ArrayForEach(s, f) {
        if (!is_integer(s) || s->valuedouble < 0 || s->valuedouble > INT32_MAX) {
            return bad_type(err, "stop_token_ids",
                            "an array of non-negative integers");
        }
        req->stop_token_ids[i++] = (int32_t) s->valuedouble;
    }
    req->n_stop_token_ids = i;
    return 0;
}

static int parse_logit_bias(const cJSON *root, oai_request *req,
                            oai_error *err)
{
    cJSON *f = field(root, "logit_bias"), *s;
    int i = 0;

    if (f == NULL) {
        return 0;
    }
    if (!cJSON_IsObject(f)) {
        return bad_type(err, "logit_bias",
                        "an object mapping token ids to numbers");
    }
    if (cJSON_GetArraySize(f) > OAI_MAX_LOGIT_BIAS) {
        return bad_value(err, "logit_bias", "'logit_bias' must have at most "
                         "%d entries, got %d", OAI_MAX_LOGIT_BIAS,
                         cJSON_GetArraySize(f));
    }
    req->logit_bias = calloc(cJSON_GetArraySize(f) + 1, sizeof(llm_logit_bias));
    if (req->logit_bias == NULL) {
        return oom(err);
    }
    cJSON_ArrayForEach(s, f) {
        char *end;
        long id;

        errno = 0;
        id = strtol(s->string, &end, 10);
        if (s->string[0] == '\0' || *end != '\0' || errno != 0 || id < 0
            || id > INT32_MAX)
        {
            return bad_value(err, "logit_bias", "logit_bias key '%.32s' is "
                             "not a token id", s->string);
        }
        if (!cJSON_IsNumber(s) || s->valuedouble < -100
            || s->valuedouble > 100)
        {
            return bad_value(err, "logit_bias", "logit_bias values must be "
                             "numbers between -100 and 100");
        }
        req->logit_bias[i].token = (int32_t) id;
        req->logit_bias[i].bias = (float) s->valuedouble;
        i++;
    }
    req->n_logit_bias = i;
    return 0;
}

static int parse_sampling(const cJSON *root, oai_request *req,
                          const oai_limits *lim, oai_error *err)
{
    llm_request_params *p = &req->params;
    llm_sampling_params *s = &p->sampling;
    double v;
    long long n;
    int rc, b;

    if ((rc = number_in(root, "temperature", 0, 2, 0, &v, err)) < 0) {
        return -1;
    }
    if (rc) {
        s->temperature = (float) v;
    }
    if ((rc = number_in(root, "top_p", 0, 1, 1, &v, err)) < 0) {
        return -1;
    }
    if (rc) {
        s->top_p = (float) v;
    }
    if ((rc = get_int(root, "top_k", &n, err)) < 0) {
        return -1;
    }
    if (rc) {
        if (n < -1) {
            return bad_value(err, "top_k", "'top_k' must be -1 (off) or "
                             ">= 0, got %lld", n);
        }
        /* -1 and 0 both disable top-k, as in vLLM */
        s->top_k = n > 0 ? (int) (n > INT32_MAX ? INT32_MAX : n) : 0;
    }
    if ((rc = number_in(root, "min_p", 0, 1, 0, &v, err)) < 0) {
        return -1;
    }
    if (rc) {
        s->min_p = (float) v;
    }
    if ((rc = number_in(root, "presence_penalty", -2, 2, 0, &v, err)) < 0) {
        return -1;
    }
    if (rc) {
        s->presence_penalty = (float) v;
    }
    if ((rc = number_in(root, "frequency_penalty", -2, 2, 0, &v, err)) < 0) {
        return -1;
    }
    if (rc) {
        s->frequency_penalty = (float) v;
    }
    if ((rc = number_in(root, "repetition_penalty", 0, 2, 1, &v, err)) < 0) {
        return -1;
    }
    if (rc) {
        s->repetition_penalty = (float) v;
    }
    if ((rc = get_int(root, "seed", &n, err)) < 0) {
        return -1;
    }
    if (rc) {
        s->has_seed = 1;
        s->seed = (uint64_t) n;
    }

    /* max_completion_tokens is the newer name; it wins over max_tokens */
    n = 0;
    if ((rc = get_int(root, "max_tokens", &n, err)) < 0) {
        return -1;
    }
    if (rc && n < 1) {
        return bad_value(err, "max_tokens", "'max_tokens' must be at least 1, "
                         "got %lld", n);
    }
    if (req->kind == OAI_CHAT) {
        long long m;

        if ((rc = get_int(root, "max_completion_tokens", &m, err)) < 0) {
            return -1;
        }
        if (rc && m < 1) {
            return bad_value(err, "max_completion_tokens",
                             "'max_completion_tokens' must be at least 1, "
                             "got %lld", m);
        }
        if (rc) {
            n = m;
        }
    }
    if (n == 0) {
        n = lim->default_max_tokens;
    }
    if (lim->max_tokens_cap > 0 && n > lim->max_tokens_cap) {
        n = lim->max_tokens_cap;
    }
    p->max_tokens = n > INT32_MAX ? INT32_MAX : (int) n;

    if ((rc = get_int(root, "min_tokens", &n, err)) < 0) {
        return -1;
    }
    if (rc) {
        if (n < 0 || (p->max_tokens > 0 && n > p->max_tokens)) {
            return bad_value(err, "min_tokens", "'min_tokens' must be between "
                             "0 and max_tokens, got %lld", n);
        }
        p->min_tokens = (int) n;
    }
    if (get_bool(root, "ignore_eos", &p->ignore_eos, err) < 0
        || get_bool(root, "include_stop_str_in_output",
                    &p->include_stop_str_in_output, err) < 0
        || get_bool(root, "skip_special_tokens", &p->skip_special_tokens,
                    err) < 0)
    {
        return -1;
    }

    if (parse_stop(root, req, err) < 0
        || parse_stop_token_ids(root, req, err) < 0
        || parse_logit_bias(root, req, err) < 0)
    {
        return -1;
    }

    if ((rc = get_int(root, "n", &n, err)) < 0) {
        return -1;
    }
    if (rc) {
        int max = lim->max_choices > 0 ? lim->max_choices
                                       : OAI_DEFAULT_MAX_CHOICES;
        if (n < 1 || n > max) {
            return bad_value(err, "n", "'n' must be between 1 and %d, got %lld",
                             max, n);
        }
        req->n = (int) n;
    }
    /* best_of is a legacy knob we do not implement beyond its default */
    if ((rc = get_int(root, "best_of", &n, err)) < 0) {
        return -1;
    }
    if (rc && n != req->n) {
        return bad_value(err, "best_of", "'best_of' other than n is not "
                         "supported");
    }

    b = 0;
    if (get_bool(root, "stream", &b, err) < 0) {
        return -1;
    }
    req->stream = b;
    if (field(root, "stream_options") != NULL) {
        cJSON *so = field(root, "stream_options");

        if (!req->stream) {
            return bad_value(err, "stream_options", "'stream_options' is only "
                             "allowed when 'stream' is true");
        }
        if (!cJSON_IsObject(so)) {
            return bad_type(err, "stream_options", "an object");
        }
        if (get_bool(so, "include_usage", &req->include_usage, err) < 0) {
            snprintf(err->param, sizeof(err->param),
                     "stream_options.include_usage");
            return -1;
        }
    }
    return 0;
}

static int parse_logprobs(const cJSON *root, oai_request *req, oai_error *err)
{
    long long n;
    int rc;

    if (req->kind == OAI_CHAT) {
        if (get_bool(root, "logprobs", &req->logprobs, err) < 0) {
            return -1;
        }
        if ((rc = get_int(root, "top_logprobs", &n, err)) < 0) {
            return -1;
        }
        if (rc) {
            if (n < 0 || n > OAI_MAX_TOP_LOGPROBS) {
                return bad_value(err, "top_logprobs", "'top_logprobs' must be "
                                 "between 0 and %d, got %lld",
                                 OAI_MAX_TOP_LOGPROBS, n);
            }
            if (n > 0 && !req->logprobs) {
                return bad_value(err, "top_logprobs", "'top_logprobs' "
                                 "requires 'logprobs' to be true");
            }
            req->top_logprobs = (int) n;
        }
    } else {
        cJSON *f = field(root, "logprobs");

        if (f != NULL) {
            if (!is_integer(f)) {
                return bad_type(err, "logprobs", "an integer");
            }
            if (f->valuedouble < 0 || f->valuedouble > OAI_MAX_TOP_LOGPROBS) {
                return bad_value(err, "logprobs", "'logprobs' must be between "
                                 "0 and %d, got %g", OAI_MAX_TOP_LOGPROBS,
                                 f->valuedouble);
            }
            req->logprobs = 1;
            req->top_logprobs = (int) f->valuedouble;
        }
        if (get_bool(root, "echo", &req->echo, err) < 0) {
            return -1;
        }
    }
    req->params.sampling.logprobs = req->logprobs;
    req->params.sampling.top_logprobs = req->top_logprobs;
    return 0;
}

/* ---- prompts (completions) ------------------------------------------------ */

static int token_array(const cJSON *a, oai_prompt *p, oai_error *err)
{
    cJSON *t;
    int i = 0;

    p->is_tokens = 1;
    p->tokens = calloc(cJSON_GetArraySize(a) + 1, sizeof(int32_t));
    if (p->tokens == NULL) {
        return oom(err);
    }
    cJSON_ArrayForEach(t, a) {
        if (!is_integer(t) || t->valuedouble < 0 || t->valuedouble > INT32_MAX) {
            return bad_type(err, "prompt", "a string, an array of strings, "
                            "an array of token ids or an array of arrays of "
                            "token ids");
        }
        p->tokens[i++] = (int32_t) t->valuedouble;
    }
    p->n_tokens = i;
    if (i == 0) {
        return bad_value(err, "prompt", "'prompt' must not be empty");
    }
    return 0;
}

static int parse_prompts(const cJSON *root, oai_request *req, oai_error *err)
{
    cJSON *f = field(root, "prompt"), *first, *e;
    int n, i = 0;
    const char *what = "a string, an array of strings, an array of token ids "
                       "or an array of arrays of token ids";

    if (f == NULL) {
        return bad_value(err, "prompt", "'prompt' is required");
    }
    if (cJSON_IsString(f)) {
        req->prompts = calloc(1, sizeof(oai_prompt));
        if (req->prompts == NULL) {
            return oom(err);
        }
        req->n_prompts = 1;
        req->prompts[0].text_len = strlen(f->valuestring);
        req->prompts[0].text = dup_n(f->valuestring, req->prompts[0].text_len);
        return req->prompts[0].text ? 0 : oom(err);
    }
    if (!cJSON_IsArray(f)) {
        return bad_type(err, "prompt", what);
    }
    n = cJSON_GetArraySize(f);
    if (n == 0) {
        return bad_value(err, "prompt", "'prompt' must not be empty");
    }
    first = cJSON_GetArrayItem(f, 0);
    if (cJSON_IsNumber(first)) {
        /* one prompt given as token ids */
        req->prompts = calloc(1, sizeof(oai_prompt));
        if (req->prompts == NULL) {
            return oom(err);
        }
        req->n_prompts = 1;
        return token_array(f, &req->prompts[0], err);
    }
    req->prompts = calloc(n, sizeof(oai_prompt));
    if (req->prompts == NULL) {
        return oom(err);
    }
    cJSON_ArrayForEach(e, f) {
        oai_prompt *p = &req->prompts[i];

        req->n_prompts = ++i;
        if (cJSON_IsString(e)) {
            p->text_len = strlen(e->valuestring);
            p->text = dup_n(e->valuestring, p->text_len);
            if (p->text == NULL) {
                return oom(err);
            }
        } else if (cJSON_IsArray(e)) {
            if (token_array(e, p, err) < 0) {
                return -1;
            }
        } else {
            return bad_type(err, "prompt", what);
        }
    }
    return 0;
}

/* ---- request ------------------------------------------------------------- */

static char *json_text(const cJSON *j, oai_error *err)
{
    char *s = cJSON_PrintUnformatted(j);

    if (s == NULL) {
        oom(err);
    }
    return s;
}

/*
 * tools + tool_choice (none, auto, required, a named function) and
 * response_format (text, json_object, json_schema).  auto/required/named:
 * the output's <tool_call> blocks become tool_calls; required/named and
 * the JSON formats are enforced by constrained decoding, whose grammar is
 * compiled here once so that an unsupported schema is a 400 naming it.
 */
static int set_constraint(cJSON *spec, const char *param, oai_request *req,
                          oai_error *err)
{
    char msg[LLM_ERR_MAX];
    const char *which = param;
    grammar *g;

    if (spec == NULL) {
        return oom(err);
    }
    req->constraint_json = cJSON_PrintUnformatted(spec);
    cJSON_Delete(spec);
    if (req->constraint_json == NULL) {
        return oom(err);
    }
    msg[0] = '\0';
    g = json_schema_constraint(req->constraint_json, msg, sizeof(msg), &which);
    if (g == NULL) {
        return bad_value(err, param, "%s", msg);
    }
    grammar_free(g);
    return 0;
}

static int parse_tools(const cJSON *root, const cJSON *tools, const cJSON *tc,
                       oai_request *req, oai_error *err)
{
    const char *mode = tools != NULL && cJSON_GetArraySize(tools) > 0
                       ? "auto" : "none";
    const char *name = NULL;
    const cJSON *t, *rf;
    cJSON *spec;
    int parallel = 1;

    if (cJSON_IsString(tc)) {
        mode = tc->valuestring;
        if (strcmp(mode, "none") != 0 && strcmp(mode, "auto") != 0
            && strcmp(mode, "required") != 0)
        {
            return bad_value(err, "tool_choice", "tool_choice must be "
                             "'none', 'auto', 'required' or {\"type\": "
                             "\"function\", \"function\": {\"name\": ...}}");
        }
    } else if (tc != NULL) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(fn, "name");

        t = cJSON_GetObjectItemCaseSensitive(tc, "type");
        if (!cJSON_IsObject(tc) || !cJSON_IsString(t)
            || strcmp(t->valuestring, "function") != 0 || !cJSON_IsString(n))
        {
            return bad_type(err, "tool_choice", "'none', 'auto', 'required' "
                            "or {\"type\": \"function\", \"function\": "
                            "{\"name\": ...}}");
        }
        mode = "named";
        name = n->valuestring;
    }
    if (strcmp(mode, "none") != 0
        && (tools == NULL || cJSON_GetArraySize(tools) == 0))
    {
        return bad_value(err, "tool_choice", "tool_choice '%s' needs "
                         "'tools'", mode);
    }
    cJSON_ArrayForEach(t, tools) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");

        if (!cJSON_IsObject(fn)
            || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(fn, "name")))
        {
            return bad_value(err, "tools", "each tool needs a 'function' "
                             "with a 'name'");
        }
    }
    if (get_bool(root, "parallel_tool_calls", &parallel, err) < 0) {
        return -1;
    }
    req->tool_parsing = strcmp(mode, "none") != 0;
    if (strcmp(mode, "required") == 0 || strcmp(mode, "named") == 0) {
        spec = cJSON_CreateObject();
        if (spec == NULL
            || cJSON_AddStringToObject(spec, "type", "tool_calls") == NULL
            || !cJSON_AddItemToObject(spec, "tools",
                                      cJSON_Duplicate(tools, 1))
            || (name != NULL
                && cJSON_AddStringToObject(spec, "name", name) == NULL)
            || cJSON_AddBoolToObject(spec, "parallel", parallel) == NULL)
        {
            cJSON_Delete(spec);
            return oom(err);
        }
        return set_constraint(spec, name != NULL ? "tool_choice" : "tools",
                              req, err);
    }

    rf = field(root, "response_format");
    if (rf != NULL) {
        const cJSON *type = cJSON_IsObject(rf)
                            ? cJSON_GetObjectItemCaseSensitive(rf, "type")
                            : NULL;

        if (!cJSON_IsString(type)) {
            return bad_type(err, "response_format",
                            "an object with a string 'type'");
        }
        if (strcmp(type->valuestring, "text") == 0) {
            return 0;
        }
        if (strcmp(type->valuestring, "json_object") == 0) {
            return set_constraint(cJSON_Parse("{\"type\":\"json_object\"}"),
                                  "response_format", req, err);
        }
        if (strcmp(type->valuestring, "json_schema") == 0) {
            const cJSON *js = cJSON_GetObjectItemCaseSensitive(rf,
                                                               "json_schema");
            const cJSON *schema = cJSON_GetObjectItemCaseSensitive(js,
                                                                   "schema");

            if (!cJSON_IsObject(js) || !cJSON_IsObject(schema)) {
                return bad_type(err, "response_format",
                                "{\"type\": \"json_schema\", \"json_schema\": "
                                "{\"name\": ..., \"schema\": {...}}}");
            }
            spec = cJSON_CreateObject();
            if (spec == NULL
                || cJSON_AddStringToObject(spec, "type", "json_schema") == NULL
                || !cJSON_AddItemToObject(spec, "schema",
                                          cJSON_Duplicate(schema, 1)))
            {
                cJSON_Delete(spec);
                return oom(err);
            }
            return set_constraint(spec, "response_format", req, err);
        }
        return bad_value(err, "response_format", "response_format type "
                         "'%.32s' is not supported ('text', 'json_object', "
                         "'json_schema')", type->valuestring);
    }
    return 0;
}

static int parse_chat(const cJSON *root, oai_request *req, oai_error *err)
{
    cJSON *msgs, *tools, *kwargs, *tc;

    msgs = normalize_messages(field(root, "messages"), err);
    if (msgs == NULL) {
        return -1;
    }
    req->messages_json = json_text(msgs, err);
    cJSON_Delete(msgs);
    if (req->messages_json == NULL) {
        return -1;
    }

    tools = field(root, "tools");
    tc = field(root, "tool_choice");
    if (check_tools(tools, err) < 0) {
        return -1;
    }
    if (tools != NULL) {
        /* tool_choice "none": the model must not see the tools */
        if (!(cJSON_IsString(tc) && strcmp(tc->valuestring, "none") == 0)
            && cJSON_GetArraySize(tools) > 0)
        {
            if ((req->tools_json = json_text(tools, err)) == NULL) {
                return -1;
            }
        }
    }
    kwargs = field(root, "chat_template_kwargs");
    if (kwargs != NULL) {
        if (!cJSON_IsObject(kwargs)) {
            return bad_type(err, "chat_template_kwargs", "an object");
        }
        if ((req->kwargs_json = json_text(kwargs, err)) == NULL) {
            return -1;
        }
    }
    req->add_generation_prompt = 1;
    if (get_bool(root, "add_generation_prompt", &req->add_generation_prompt,
                 err) < 0)
    {
        return -1;
    }
    if (parse_tools(root, tools, tc, req, err) < 0) {
        return -1;
    }
    return 0;
}

int oai_parse_request(oai_kind kind, const char *body, size_t len,
                      const oai_limits *lim, oai_request *req, oai_error *err)
{
    cJSON *root;
    int max_choices;

    memset(req, 0, sizeof(*req));
    req->kind = kind;
    req->n = 1;
    llm_request_params_init(&req->params);

    root = parse_body(body, len, err);
    if (root == NULL) {
        return -1;
    }
    if (get_model(root, &req->model, err) < 0) {
        goto fail;
    }
    if (kind == OAI_CHAT) {
        if (parse_chat(root, req, err) < 0) {
            goto fail;
        }
    } else {
        cJSON *suffix = field(root, "suffix");

        if (parse_prompts(root, req, err) < 0) {
            goto fail;
        }
        if (suffix != NULL) {
            bad_value(err, "suffix", "'suffix' is not supported");
            goto fail;
        }
    }
    if (parse_sampling(root, req, lim, err) < 0
        || parse_logprobs(root, req, err) < 0)
    {
        goto fail;
    }
    max_choices = lim->max_choices > 0 ? lim->max_choices
                                       : OAI_DEFAULT_MAX_CHOICES;
    if (kind == OAI_COMPLETION && (long) req->n_prompts * req->n > max_choices) {
        bad_value(err, "n", "%d prompts times n=%d is more than %d choices",
                  req->n_prompts, req->n, max_choices);
        goto fail;
    }
    if (kind == OAI_CHAT) {
        req->n_prompts = 1;
    }
    cJSON_Delete(root);
    return 0;

fail:
    cJSON_Delete(root);
    oai_request_free(req);
    return -1;
}

void oai_request_params(const oai_request *req, int i, llm_request_params *p)
{
    *p = req->params;
    p->stop = (const char *const *) req->stop;
    p->n_stop = req->n_stop;
    p->stop_token_ids = req->stop_token_ids;
    p->n_stop_token_ids = req->n_stop_token_ids;
    p->sampling.logit_bias = req->logit_bias;
    p->sampling.n_logit_bias = req->n_logit_bias;
    p->echo = req->echo;
    if (req->kind == OAI_CHAT) {
        p->kind = LLM_PROMPT_CHAT;
        p->messages_json = req->messages_json;
        p->tools_json = req->tools_json;
        p->template_kwargs_json = req->kwargs_json;
        p->add_generation_prompt = req->add_generation_prompt;
        p->constraint_json = req->constraint_json;
    } else if (req->prompts[i].is_tokens) {
        p->kind = LLM_PROMPT_TOKENS;
        p->tokens = req->prompts[i].tokens;
        p->n_tokens = req->prompts[i].n_tokens;
    } else {
        p->kind = LLM_PROMPT_TEXT;
        p->text = req->prompts[i].text;
        p->text_len = req->prompts[i].text_len;
    }
}

int oai_check_token_ids(const oai_request *req, int vocab_size,
                        oai_error *err)
{
    int i, k;

    if (vocab_size <= 0) {
        return 0;
    }
    for (i = 0; i < req->n_logit_bias; i++) {
        if (req->logit_bias[i].token >= vocab_size) {
            return bad_value(err, "logit_bias", "logit_bias key %d is not a "
                             "token id of this model (ids are 0 to %d)",
                             (int) req->logit_bias[i].token, vocab_size - 1);
        }
    }
    for (k = 0; k < req->n_prompts && req->prompts != NULL; k++) {
        const oai_prompt *p = &req->prompts[k];

        for (i = 0; p->is_tokens && i < p->n_tokens; i++) {
            if (p->tokens[i] >= vocab_size) {
                return bad_value(err, "prompt", "token id %d in 'prompt' is "
                                 "not a token id of this model (ids are 0 to "
                                 "%d)", (int) p->tokens[i], vocab_size - 1);
            }
        }
    }
    return 0;
}

void oai_request_free(oai_request *req)
{
    int i;

    free(req->model);
    for (i = 0; i < req->n_prompts && req->prompts; i++) {
        free(req->prompts[i].text);
        free(req->prompts[i].tokens);
    }
    free(req->prompts);
    free(req->messages_json);
    free(req->tools_json);
    free(req->kwargs_json);
    free(req->constraint_json);
    for (i = 0; i < req->n_stop; i++) {
        free(req->stop[i]);
    }
    free(req->stop);
    free(req->stop_token_ids);
    free(req->logit_bias);
    memset(req, 0, sizeof(*req));
}

/* ---- responses ------------------------------------------------------------ */

void oai_make_id(const char *prefix, char *buf, size_t size)
{
    unsigned char r[16];
    char hex[33];
    size_t i;

    if (getrandom(r, sizeof(r), GRND_NONBLOCK) != (ssize_t) sizeof(r)) {
        /* no entropy yet: time and address still make ids unique enough */
        uint64_t t = (uint64_t) time(NULL) ^ (uint64_t) (uintptr_t) buf;

        for (i = 0; i < sizeof(r); i++) {
            t = t * 6364136223846793005ULL + 1442695040888963407ULL;
            r[i] = (unsigned char) (t >> 56);
        }
    }
    for (i = 0; i < sizeof(r); i++) {
        snprintf(hex + 2 * i, 3, "%02x", r[i]);
    }
    snprintf(buf, size, "%s-%s", prefix, hex);
}

int oai_response_init(oai_response *rs, const oai_request *req,
                      const char *model_name, oai_token_text_fn token_text,
                      void *token_ctx)
{
    int i;

    memset(rs, 0, sizeof(*rs));
    rs->kind = req->kind;
    oai_make_id(req->kind == OAI_CHAT ? "chatcmpl" : "cmpl", rs->id,
                sizeof(rs->id));
    rs->created = (long) time(NULL);
    rs->model = strdup(model_name);
    rs->stream = req->stream;
    rs->include_usage = req->include_usage;
    rs->echo = req->echo;
    rs->logprobs = req->logprobs;
    rs->top_logprobs = req->top_logprobs;
    rs->n_per_prompt = req->n;
    rs->n_choices = req->n * (req->kind == OAI_CHAT ? 1 : req->n_prompts);
    rs->choices = calloc(rs->n_choices, sizeof(oai_choice));
    rs->token_text = token_text;
    rs->token_ctx = token_ctx;
    if (rs->model == NULL || rs->choices == NULL) {
        oai_response_free(rs);
        return -1;
    }
    for (i = 0; i < rs->n_choices; i++) {
        rs->choices[i].stop_token = -1;
    }
    rs->tool_parsing = req->tool_parsing && req->kind == OAI_CHAT;
    for (i = 0; rs->tool_parsing && rs->stream && i < rs->n_choices; i++) {
        uint64_t seed;

        if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK)
            != (ssize_t) sizeof(seed))
        {
            seed = (uint64_t) time(NULL) ^ (uint64_t) (uintptr_t) rs ^ i;
        }
        rs->choices[i].tool_parser = tool_parser_new(seed);
        if (rs->choices[i].tool_parser == NULL) {
            oai_response_free(rs);
            return -1;
        }
    }
    return 0;
}

void oai_response_free(oai_response *rs)
{
    int i;

    for (i = 0; i < rs->n_choices && rs->choices; i++) {
        oai_buf_free(&rs->choices[i].text);
        cJSON_Delete(rs->choices[i].logprobs);
        free(rs->choices[i].stop_str);
        tool_parser_free(rs->choices[i].tool_parser);
    }
    free(rs->choices);
    free(rs->model);
    free(rs->chunk_prefix);
    memset(rs, 0, sizeof(*rs));
}

static const char *finish_name(llm_finish_reason f)
{
    switch (f) {
    case LLM_FINISH_STOP:   return "stop";
    case LLM_FINISH_LENGTH: return "length";
    case LLM_FINISH_ABORT:  return "abort";
    case LLM_FINISH_ERROR:  return "error";
    default:                return NULL;
    }
}

/* A turn that made tool calls finishes with "tool_calls" (as OpenAI). */
static const char *choice_finish_name(const oai_choice *c)
{
    if (c->n_tool_calls > 0 && c->finish == LLM_FINISH_STOP) {
        return "tool_calls";
    }
    return finish_name(c->finish);
}

static double clamp_logprob(float lp)
{
    /* JSON has no -Infinity; vLLM reports impossible tokens as -9999 */
    return (isfinite(lp) || lp > 0) ? (double) lp : -9999.0;
}

/* The token's text (sanitized) and its raw bytes as a JSON array. */
static cJSON *token_entry(oai_response *rs, int32_t id, float lp)
{
    cJSON *o = cJSON_CreateObject(), *bytes;
    size_t n = 0, i;
    const char *raw = rs->token_text ? rs->token_text(rs->token_ctx, id, &n)
                                     : NULL;
    char *text;

    if (o == NULL) {
        return NULL;
    }
    if (raw == NULL) {
        raw = "";
        n = 0;
    }
    text = oai_utf8_sanitize(raw, n, NULL);
    cJSON_AddStringToObject(o, "token", text ? text : "");
    free(text);
    cJSON_AddNumberToObject(o, "logprob", clamp_logprob(lp));
    bytes = cJSON_AddArrayToObject(o, "bytes");
    for (i = 0; bytes && i < n; i++) {
        cJSON_AddItemToArray(bytes,
                             cJSON_CreateNumber((unsigned char) raw[i]));
    }
    return o;
}

/* Chat logprobs: one {token, logprob, bytes, top_logprobs} per token. */
static int chat_logprobs_add(oai_response *rs, cJSON *content,
                             const llm_event *ev)
{
    int i, k;

    for (i = 0; i < ev->n_tokens; i++) {
        const llm_token_info *t = &ev->tokens[i];
        cJSON *e = token_entry(rs, t->token, t->logprob), *top;

        if (e == NULL) {
            return -1;
        }
        cJSON_AddItemToArray(content, e);
        top = cJSON_AddArrayToObject(e, "top_logprobs");
        if (top == NULL) {
            return -1;
        }
        for (k = 0; k < t->n_top && k < rs->top_logprobs; k++) {
            cJSON *a = token_entry(rs, t->top[k].token, t->top[k].logprob);

            if (a == NULL) {
                return -1;
            }
            cJSON_AddItemToArray(top, a);
        }
    }
    return 0;
}

static cJSON *legacy_logprobs_new(void)
{
    cJSON *o = cJSON_CreateObject();

    if (o == NULL || cJSON_AddArrayToObject(o, "tokens") == NULL
        || cJSON_AddArrayToObject(o, "token_logprobs") == NULL
        || cJSON_AddArrayToObject(o, "top_logprobs") == NULL
        || cJSON_AddArrayToObject(o, "text_offset") == NULL)
    {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/*
 * Legacy completions logprobs: parallel arrays; text_offset counts code
 * points from the start of the choice's text (prompt included with echo),
 * as OpenAI's and vLLM's Python servers do.  Prompt tokens (echo) have no
 * logprob: null, as OpenAI reports for a prompt's first token.
 */
static int legacy_logprobs_add(oai_response *rs, oai_choice *c, cJSON *lp,
                               const llm_event *ev, int is_prompt)
{
    cJSON *tokens = cJSON_GetObjectItem(lp, "tokens");
    cJSON *tlp = cJSON_GetObjectItem(lp, "token_logprobs");
    cJSON *top = cJSON_GetObjectItem(lp, "top_logprobs");
    cJSON *off = cJSON_GetObjectItem(lp, "text_offset");
    int i, k;

    size_t prompt_chars = 0;

    for (i = 0; i < ev->n_tokens; i++) {
        const llm_token_info *t = &ev->tokens[i];
        size_t n = 0, before = t->text_off <= ev->text_len ? t->text_off
                                                          : ev->text_len;
        const char *raw = rs->token_text ? rs->token_text(rs->token_ctx,
                                                          t->token, &n)
                                         : NULL;
        char *text = oai_utf8_sanitize(raw ? raw : "", raw ? n : 0, NULL);
        size_t offset;

        if (text == NULL) {
            return -1;
        }
        cJSON_AddItemToArray(tokens, cJSON_CreateString(text));
        free(text);
        if (is_prompt) {
            /* the echo event carries no offsets: sum the tokens' texts */
            offset = c->chars + prompt_chars;
            prompt_chars += utf8_count_chars(raw ? raw : "", raw ? n : 0);
        } else {
            offset = c->chars + utf8_count_chars(ev->text ? ev->text : "",
                                                 before);
        }
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double) offset));
        if (is_prompt) {
            cJSON_AddItemToArray(tlp, cJSON_CreateNull());
            cJSON_AddItemToArray(top, cJSON_CreateNull());
            continue;
        }
        cJSON_AddItemToArray(tlp, cJSON_CreateNumber(clamp_logprob(t->logprob)));
        {
            cJSON *d = cJSON_CreateObject();

            if (d == NULL) {
                return -1;
            }
            for (k = 0; k < t->n_top && k < rs->top_logprobs; k++) {
                size_t m = 0;
                const char *r2 = rs->token_text
                                 ? rs->token_text(rs->token_ctx,
                                                  t->top[k].token, &m) : NULL;
                char *key = oai_utf8_sanitize(r2 ? r2 : "", r2 ? m : 0, NULL);

                /* equal texts collapse into one key, as in vLLM */
                if (key != NULL && !cJSON_HasObjectItem(d, key)) {
                    cJSON_AddNumberToObject(d, key,
                                            clamp_logprob(t->top[k].logprob));
                }
                free(key);
            }
            cJSON_AddItemToArray(top, d);
        }
    }
    return 0;
}

static void choice_finish(oai_choice *c, const llm_event *ev)
{
    c->finish = ev->finish_reason;
    c->usage = ev->usage;
    c->stop_token = ev->stop_token;
    free(c->stop_str);
    c->stop_str = ev->stop_reason ? strdup(ev->stop_reason) : NULL;
    c->done = 1;
}

static void add_stop_reason(cJSON *o, const oai_choice *c)
{
    if (c->stop_str) {
        cJSON_AddStringToObject(o, "stop_reason", c->stop_str);
    } else if (c->stop_token >= 0 && c->finish == LLM_FINISH_STOP) {
        cJSON_AddNumberToObject(o, "stop_reason", c->stop_token);
    } else {
        cJSON_AddNullToObject(o, "stop_reason");
    }
}

static cJSON *usage_object(const oai_response *rs)
{
    llm_usage u;
    cJSON *o = cJSON_CreateObject(), *d;

    oai_response_usage(rs, &u);
    if (o == NULL) {
        return NULL;
    }
    cJSON_AddNumberToObject(o, "prompt_tokens", u.prompt_tokens);
    cJSON_AddNumberToObject(o, "completion_tokens", u.completion_tokens);
    cJSON_AddNumberToObject(o, "total_tokens",
                            u.prompt_tokens + u.completion_tokens);
    d = cJSON_AddObjectToObject(o, "prompt_tokens_details");
    if (d) {
        cJSON_AddNumberToObject(d, "cached_tokens", u.cached_tokens);
    }
    return o;
}

void oai_response_usage(const oai_response *rs, llm_usage *u)
{
    int i;

    memset(u, 0, sizeof(*u));
    for (i = 0; i < rs->n_choices; i++) {
        const oai_choice *c = &rs->choices[i];

        if (i % rs->n_per_prompt == 0) {
            u->prompt_tokens += c->usage.prompt_tokens;
            u->cached_tokens += c->usage.cached_tokens;
        }
        u->completion_tokens += c->usage.completion_tokens;
    }
}

static cJSON *chunk_header(oai_response *rs)
{
    cJSON *o = cJSON_CreateObject();

    if (o == NULL) {
        return NULL;
    }
    cJSON_AddStringToObject(o, "id", rs->id);
    cJSON_AddStringToObject(o, "object", rs->kind == OAI_CHAT
                            ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double) rs->created);
    cJSON_AddStringToObject(o, "model", rs->model);
    return o;
}

/* o printed without spaces, and deleted; NULL if o is (out of memory). */
static char *print_delete(cJSON *o)
{
    char *s;

    if (o == NULL) {
        return NULL;
    }
    s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static int emit(cJSON *o, oai_buf *out)
{
    char *s = print_delete(o);
    int rc;

    if (s == NULL) {
        return -1;
    }
    rc = (oai_buf_append(out, "data: ", 6) == 0
          && oai_buf_append(out, s, strlen(s)) == 0
          && oai_buf_append(out, "\n\n", 2) == 0) ? 0 : -1;
    free(s);
    return rc;
}

/*
 * The text chunks of a stream -- one a token -- are most of what a server
 * sends: they are written directly, the same bytes the cJSON path below
 * prints (t/unit/test_openai.c compares them), without its ~30 allocations
 * and number formatting a chunk.  The part before the choice's index is
 * the same in every chunk of a response: cJSON prints it once.
 */
static int stream_prefix_init(oai_response *rs)
{
    static const char choices[] = ",\"choices\":[{\"index\":";
    char *s;
    size_t n;

    if (rs->chunk_prefix != NULL) {
        return 0;
    }
    s = print_delete(chunk_header(rs));
    if (s == NULL) {
        return -1;
    }
    /* s is {"id":...,"model":"..."}: drop its closing brace */
    n = strlen(s) - 1;
    rs->chunk_prefix = malloc(6 + n + sizeof(choices));
    if (rs->chunk_prefix == NULL) {
        free(s);
        return -1;
    }
    memcpy(rs->chunk_prefix, "data: ", 6);
    memcpy(rs->chunk_prefix + 6, s, n);
    memcpy(rs->chunk_prefix + 6 + n, choices, sizeof(choices));
    rs->chunk_prefix_len = 6 + n + sizeof(choices) - 1;
    free(s);
    return 0;
}

/*
 * Appends text as the inside of a JSON string, byte for byte what cJSON
 * prints for oai_utf8_sanitize(text): a NUL and every byte of an invalid
 * UTF-8 sequence become U+FFFD; '"', '\\' and the control characters are
 * escaped (\b \f \n \r \t, the rest \u00xx); everything else is copied.
 */
static int append_json_text(oai_buf *out, const char *text, size_t len)
{
    const unsigned char *p = (const unsigned char *) text;
    size_t i = 0, run = 0;

    while (i < len) {
        size_t n = utf8_seq_len(p + i, len - i);
        char esc[8];
        const char *rep;
        size_t rep_len;

        if (n > 1 || (n == 1 && p[i] >= 0x20 && p[i] != '"'
                      && p[i] != '\\'))
        {
            i += n;
            continue;
        }
        if (n == 0 || p[i] == 0) {
            rep = "\xEF\xBF\xBD";
            rep_len = 3;
        } else {
            switch (p[i]) {
            case '"':  rep = "\\\""; break;
            case '\\': rep = "\\\\"; break;
            case '\b': rep = "\\b"; break;
            case '\f': rep = "\\f"; break;
            case '\n': rep = "\\n"; break;
            case '\r': rep = "\\r"; break;
            case '\t': rep = "\\t"; break;
            default:
                snprintf(esc, sizeof(esc), "\\u%04x", p[i]);
                rep = esc;
                break;
            }
            rep_len = strlen(rep);
        }
        if (oai_buf_append(out, text + run, i - run) != 0
            || oai_buf_append(out, rep, rep_len) != 0)
        {
            return -1;
        }
        i += 1;
        run = i;
    }
    return oai_buf_append(out, text + run, len - run);
}

/* A chunk of one choice's text, not its first (chat: no role) nor its
 * last, without logprobs. */
#define APPEND_LITERAL(out, lit) oai_buf_append(out, lit, sizeof(lit) - 1)

static int stream_text_chunk(oai_response *rs, int index, const char *text,
                             size_t text_len, oai_buf *out)
{
    int chat = rs->kind == OAI_CHAT;
    char num[16];
    int n;

    if (stream_prefix_init(rs) != 0) {
        return -1;
    }
    n = snprintf(num, sizeof(num), "%d", index);
    if (oai_buf_append(out, rs->chunk_prefix, rs->chunk_prefix_len) != 0
        || oai_buf_append(out, num, (size_t) n) != 0
        || (chat ? APPEND_LITERAL(out, ",\"delta\":{\"content\":\"")
                 : APPEND_LITERAL(out, ",\"text\":\"")) != 0
        || append_json_text(out, text, text_len) != 0
        || (chat ? APPEND_LITERAL(out, "\"}") : APPEND_LITERAL(out, "\"")) != 0
        || APPEND_LITERAL(out, ",\"logprobs\":null,\"finish_reason\":null}]")
           != 0)
    {
        return -1;
    }
    return rs->include_usage ? APPEND_LITERAL(out, ",\"usage\":null}\n\n")
                             : APPEND_LITERAL(out, "}\n\n");
}

/*
 * One chunk with one choice.  Chat: delta {role?, content?}; completions:
 * text.  finish (non-NULL) makes it the choice's final chunk.
 */
static int stream_chunk(oai_response *rs, int index, int with_role,
                        const char *text, size_t text_len, cJSON *logprobs,
                        const oai_choice *finish, oai_buf *out)
{
    cJSON *o, *choices, *ch;
    char *safe = NULL;

    if (text != NULL && logprobs == NULL && finish == NULL && !with_role) {
        return stream_text_chunk(rs, index, text, text_len, out);
    }
    o = chunk_header(rs);

    if (o == NULL) {
        cJSON_Delete(logprobs);
        return -1;
    }
    choices = cJSON_AddArrayToObject(o, "choices");
    ch = cJSON_CreateObject();
    if (choices == NULL || ch == NULL) {
        cJSON_Delete(logprobs);
        cJSON_Delete(ch);
        cJSON_Delete(o);
        return -1;
    }
    cJSON_AddItemToArray(choices, ch);
    cJSON_AddNumberToObject(ch, "index", index);
    if (text != NULL) {
        safe = oai_utf8_sanitize(text, text_len, NULL);
        if (safe == NULL) {
            cJSON_Delete(logprobs);
            cJSON_Delete(o);
            return -1;
        }
    }
    if (rs->kind == OAI_CHAT) {
        cJSON *delta = cJSON_AddObjectToObject(ch, "delta");

        if (with_role) {
            cJSON_AddStringToObject(delta, "role", "assistant");
        }
        if (safe != NULL) {
            cJSON_AddStringToObject(delta, "content", safe);
        }
        if (logprobs != NULL) {
            cJSON *lp = cJSON_AddObjectToObject(ch, "logprobs");

            cJSON_AddItemToObject(lp, "content", logprobs);
        } else {
            cJSON_AddNullToObject(ch, "logprobs");
        }
    } else {
        cJSON_AddStringToObject(ch, "text", safe ? safe : "");
        if (logprobs != NULL) {
            cJSON_AddItemToObject(ch, "logprobs", logprobs);
        } else {
            cJSON_AddNullToObject(ch, "logprobs");
        }
    }
    free(safe);
    if (finish != NULL) {
        cJSON_AddStringToObject(ch, "finish_reason",
                                choice_finish_name(finish));
        add_stop_reason(ch, finish);
    } else {
        cJSON_AddNullToObject(ch, "finish_reason");
    }
    if (rs->include_usage) {
        cJSON_AddNullToObject(o, "usage");
    }
    return emit(o, out);
}

/* A chunk with one tool-call delta: the call's id, type and name on its
 * first one, then pieces of its arguments. */
static int tool_call_chunk(oai_response *rs, int index, const tool_delta *d,
                           oai_buf *out)
{
    cJSON *o = chunk_header(rs), *choices, *ch, *delta, *calls, *call, *fn;

    if (o == NULL) {
        return -1;
    }
    choices = cJSON_AddArrayToObject(o, "choices");
    ch = cJSON_CreateObject();
    if (choices == NULL || ch == NULL) {
        cJSON_Delete(ch);
        cJSON_Delete(o);
        return -1;
    }
    cJSON_AddItemToArray(choices, ch);
    cJSON_AddNumberToObject(ch, "index", index);
    delta = cJSON_AddObjectToObject(ch, "delta");
    calls = cJSON_AddArrayToObject(delta, "tool_calls");
    call = cJSON_CreateObject();
    if (calls == NULL || call == NULL) {
        cJSON_Delete(call);
        cJSON_Delete(o);
        return -1;
    }
    cJSON_AddItemToArray(calls, call);
    cJSON_AddNumberToObject(call, "index", d->index);
    if (d->id != NULL) {
        cJSON_AddStringToObject(call, "id", d->id);
        cJSON_AddStringToObject(call, "type", "function");
    }
    fn = cJSON_AddObjectToObject(call, "function");
    if (d->name != NULL) {
        cJSON_AddStringToObject(fn, "name", d->name);
    }
    cJSON_AddStringToObject(fn, "arguments", d->text);
    cJSON_AddNullToObject(ch, "logprobs");
    cJSON_AddNullToObject(ch, "finish_reason");
    if (rs->include_usage) {
        cJSON_AddNullToObject(o, "usage");
    }
    return emit(o, out);
}

/* Streams text through the choice's tool-call parser: content deltas as
 * content, calls as tool_calls deltas; final flushes what it held. */
static int stream_tool_text(oai_response *rs, int i, const char *text,
                            size_t len, int final, oai_buf *out)
{
    oai_choice *c = &rs->choices[i];
    tool_deltas ds = { NULL, 0, 0 };
    int k, rc;

    rc = final ? tool_parser_finish(c->tool_parser, &ds)
               : tool_parser_feed(c->tool_parser, text, len, &ds);
    for (k = 0; rc == 0 && k < ds.n; k++) {
        if (ds.d[k].kind == TOOL_DELTA_CONTENT) {
            c->chars += utf8_count_chars(ds.d[k].text, ds.d[k].len);
            rc = stream_chunk(rs, i, 0, ds.d[k].text, ds.d[k].len, NULL,
                              NULL, out);
        } else {
            rc = tool_call_chunk(rs, i, &ds.d[k], out);
        }
    }
    c->n_tool_calls = tool_parser_num_calls(c->tool_parser);
    tool_deltas_free(&ds);
    return rc;
}

int oai_stream_event(oai_response *rs, int i, const llm_event *ev,
                     oai_buf *out)
{
    oai_choice *c = &rs->choices[i];
    cJSON *lp = NULL;

    switch (ev->type) {
    case LLM_EV_STARTED:
        if (c->started) {
            return 0;
        }
        c->started = 1;
        c->usage.prompt_tokens = ev->usage.prompt_tokens;
        if (rs->kind == OAI_CHAT) {
            /* the first delta carries the role (and empty content) */
            return stream_chunk(rs, i, 1, "", 0, NULL, NULL, out);
        }
        if (rs->echo && (ev->text_len > 0 || ev->n_tokens > 0)) {
            if (rs->logprobs) {
                lp = legacy_logprobs_new();
                if (lp == NULL || legacy_logprobs_add(rs, c, lp, ev, 1) < 0) {
                    cJSON_Delete(lp);
                    return -1;
                }
            }
            c->chars += utf8_count_chars(ev->text ? ev->text : "",
                                         ev->text_len);
            return stream_chunk(rs, i, 0, ev->text ? ev->text : "",
                                ev->text_len, lp, NULL, out);
        }
        return 0;

    case LLM_EV_TOKEN:
        if (rs->kind == OAI_CHAT && !c->started) {
            c->started = 1;
            if (stream_chunk(rs, i, 1, "", 0, NULL, NULL, out) < 0) {
                return -1;
            }
        }
        if (c->tool_parser != NULL) {
            return stream_tool_text(rs, i, ev->text ? ev->text : "",
                                    ev->text_len, 0, out);
        }
        if (ev->text_len == 0 && ev->n_tokens == 0) {
            return 0;
        }
        /* a token whose text is empty (held back for a stop string or an
         * unfinished UTF-8 sequence, or a token without text) still gets
         * its chunk, with empty text, as vLLM sends it: clients time the
         * first token and the gaps between tokens by chunks */
        if (rs->logprobs && ev->n_tokens > 0) {
            if (rs->kind == OAI_CHAT) {
                lp = cJSON_CreateArray();
                if (lp == NULL || chat_logprobs_add(rs, lp, ev) < 0) {
                    cJSON_Delete(lp);
                    return -1;
                }
            } else {
                lp = legacy_logprobs_new();
                if (lp == NULL || legacy_logprobs_add(rs, c, lp, ev, 0) < 0) {
                    cJSON_Delete(lp);
                    return -1;
                }
            }
        }
        c->chars += utf8_count_chars(ev->text ? ev->text : "", ev->text_len);
        return stream_chunk(rs, i, 0, ev->text ? ev->text : "", ev->text_len,
                            lp, NULL, out);

    case LLM_EV_FINISH:
        if (rs->kind == OAI_CHAT && !c->started) {
            c->started = 1;
            if (stream_chunk(rs, i, 1, "", 0, NULL, NULL, out) < 0) {
                return -1;
            }
        }
        if (c->tool_parser != NULL
            && stream_tool_text(rs, i, NULL, 0, 1, out) < 0)
        {
            return -1;
        }
        choice_finish(c, ev);
        /* the final chunk: empty delta (chat) or empty text + reason */
        return stream_chunk(rs, i, 0, rs->kind == OAI_CHAT ? NULL : "", 0,
                            NULL, c, out);

    default:
        return 0;
    }
}

int oai_stream_done(oai_response *rs, oai_buf *out)
{
    if (rs->include_usage) {
        cJSON *o = chunk_header(rs);

        if (o == NULL) {
            return -1;
        }
        cJSON_AddArrayToObject(o, "choices");
        cJSON_AddItemToObject(o, "usage", usage_object(rs));
        if (emit(o, out) < 0) {
            return -1;
        }
    }
    return oai_buf_append(out, "data: [DONE]\n\n", 14);
}

int oai_stream_error(const oai_error *e, oai_buf *out)
{
    cJSON *o = error_object(e);

    if (o == NULL) {
        return -1;
    }
    /* vLLM-style: the code is the HTTP status the request would have had */
    cJSON_ReplaceItemInObjectCaseSensitive(cJSON_GetObjectItem(o, "error"),
                                           "code",
                                           cJSON_CreateNumber(e->status));
    if (emit(o, out) < 0) {
        return -1;
    }
    return oai_buf_append(out, "data: [DONE]\n\n", 14);
}

int oai_collect_event(oai_response *rs, int i, const llm_event *ev)
{
    oai_choice *c = &rs->choices[i];

    switch (ev->type) {
    case LLM_EV_STARTED:
        c->started = 1;
        c->usage.prompt_tokens = ev->usage.prompt_tokens;
        if (rs->kind == OAI_COMPLETION && rs->echo) {
            if (rs->logprobs) {
                if (c->logprobs == NULL
                    && (c->logprobs = legacy_logprobs_new()) == NULL)
                {
                    return -1;
                }
                if (legacy_logprobs_add(rs, c, c->logprobs, ev, 1) < 0) {
                    return -1;
                }
            }
            c->chars += utf8_count_chars(ev->text ? ev->text : "",
                                         ev->text_len);
            return oai_buf_append(&c->text, ev->text ? ev->text : "",
                                  ev->text_len);
        }
        return 0;

    case LLM_EV_TOKEN:
        if (rs->logprobs && ev->n_tokens > 0) {
            if (c->logprobs == NULL) {
                c->logprobs = rs->kind == OAI_CHAT ? cJSON_CreateArray()
                                                   : legacy_logprobs_new();
                if (c->logprobs == NULL) {
                    return -1;
                }
            }
            if ((rs->kind == OAI_CHAT
                 ? chat_logprobs_add(rs, c->logprobs, ev)
                 : legacy_logprobs_add(rs, c, c->logprobs, ev, 0)) < 0)
            {
                return -1;
            }
        }
        c->chars += utf8_count_chars(ev->text ? ev->text : "", ev->text_len);
        return oai_buf_append(&c->text, ev->text ? ev->text : "",
                              ev->text_len);

    case LLM_EV_FINISH:
        choice_finish(c, ev);
        return 0;

    default:
        return 0;
    }
}

/* message.content and message.tool_calls from a whole output: content
 * null when it is empty and there are calls. */
static int add_tool_calls(cJSON *m, oai_choice *c, const char *text,
                          size_t len)
{
    tool_parse_result r;
    uint64_t seed;
    cJSON *calls;
    int k;

    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK)
        != (ssize_t) sizeof(seed))
    {
        seed = (uint64_t) time(NULL) ^ (uint64_t) (uintptr_t) c;
    }
    if (tool_parse_text(text, len, seed, &r) != 0) {
        return -1;
    }
    c->n_tool_calls = r.n_calls;
    if (r.n_calls > 0 && r.content_len == 0) {
        cJSON_AddNullToObject(m, "content");
    } else {
        cJSON_AddStringToObject(m, "content", r.content);
    }
    if (r.n_calls > 0) {
        calls = cJSON_AddArrayToObject(m, "tool_calls");
        for (k = 0; calls != NULL && k < r.n_calls; k++) {
            cJSON *call = cJSON_CreateObject(), *fn;

            if (call == NULL) {
                break;
            }
            cJSON_AddItemToArray(calls, call);
            cJSON_AddStringToObject(call, "id", r.calls[k].id);
            cJSON_AddStringToObject(call, "type", "function");
            fn = cJSON_AddObjectToObject(call, "function");
            cJSON_AddStringToObject(fn, "name", r.calls[k].name);
            cJSON_AddStringToObject(fn, "arguments", r.calls[k].arguments
                                    ? r.calls[k].arguments : "");
        }
    }
    tool_parse_result_free(&r);
    return 0;
}

char *oai_response_json(oai_response *rs, size_t *len)
{
    cJSON *o = cJSON_CreateObject(), *choices;
    int i;

    if (o == NULL) {
        return NULL;
    }
    cJSON_AddStringToObject(o, "id", rs->id);
    cJSON_AddStringToObject(o, "object", rs->kind == OAI_CHAT
                            ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double) rs->created);
    cJSON_AddStringToObject(o, "model", rs->model);
    choices = cJSON_AddArrayToObject(o, "choices");
    for (i = 0; choices && i < rs->n_choices; i++) {
        oai_choice *c = &rs->choices[i];
        cJSON *ch = cJSON_CreateObject();
        char *text = oai_utf8_sanitize(c->text.data ? c->text.data : "",
                                       c->text.len, NULL);

        if (ch == NULL || text == NULL) {
            cJSON_Delete(ch);
            free(text);
            cJSON_Delete(o);
            return NULL;
        }
        cJSON_AddItemToArray(choices, ch);
        cJSON_AddNumberToObject(ch, "index", i);
        if (rs->kind == OAI_CHAT) {
            cJSON *m = cJSON_AddObjectToObject(ch, "message");

            cJSON_AddStringToObject(m, "role", "assistant");
            if (rs->tool_parsing) {
                if (add_tool_calls(m, c, text, strlen(text)) < 0) {
                    free(text);
                    cJSON_Delete(o);
                    return NULL;
                }
            } else {
                cJSON_AddStringToObject(m, "content", text);
            }
            cJSON_AddNullToObject(m, "refusal");
            if (rs->logprobs) {
                cJSON *lp = cJSON_AddObjectToObject(ch, "logprobs");

                cJSON_AddItemToObject(lp, "content", c->logprobs
                                      ? c->logprobs : cJSON_CreateArray());
                c->logprobs = NULL;
            } else {
                cJSON_AddNullToObject(ch, "logprobs");
            }
        } else {
            cJSON_AddStringToObject(ch, "text", text);
            if (rs->logprobs) {
                cJSON_AddItemToObject(ch, "logprobs", c->logprobs
                                      ? c->logprobs : legacy_logprobs_new());
                c->logprobs = NULL;
            } else {
                cJSON_AddNullToObject(ch, "logprobs");
            }
        }
        free(text);
        if (choice_finish_name(c)) {
            cJSON_AddStringToObject(ch, "finish_reason",
                                    choice_finish_name(c));
        } else {
            cJSON_AddNullToObject(ch, "finish_reason");
        }
        add_stop_reason(ch, c);
    }
    cJSON_AddItemToObject(o, "usage", usage_object(rs));
    return print_json(o, len);
}

/* ---- models ---------------------------------------------------------------- */

static cJSON *model_object(const oai_model_entry *m)
{
    cJSON *o = cJSON_CreateObject();

    if (o == NULL) {
        return NULL;
    }
    cJSON_AddStringToObject(o, "id", m->id);
    cJSON_AddStringToObject(o, "object", "model");
    cJSON_AddNumberToObject(o, "created", (double) m->created);
    cJSON_AddStringToObject(o, "owned_by", "ngx_http_llm");
    cJSON_AddStringToObject(o, "root", m->root ? m->root : m->id);
    cJSON_AddNullToObject(o, "parent");
    cJSON_AddNumberToObject(o, "max_model_len", m->max_model_len);
    return o;
}

char *oai_models_json(const oai_model_entry *m, int n, int one_model,
                      size_t *len)
{
    cJSON *o, *data;
    int i;

    if (one_model) {
        return print_json(n > 0 ? model_object(&m[0]) : NULL, len);
    }
    o = cJSON_CreateObject();
    if (o == NULL) {
        return NULL;
    }
    cJSON_AddStringToObject(o, "object", "list");
    data = cJSON_AddArrayToObject(o, "data");
    for (i = 0; data && i < n; i++) {
        cJSON_AddItemToArray(data, model_object(&m[i]));
    }
    return print_json(o, len);
}

/* ---- tokenize / detokenize ---------------------------------------------- */

int oai_parse_tokenize(const char *body, size_t len, oai_tokenize_request *t,
                       oai_error *err)
{
    cJSON *root, *f;

    memset(t, 0, sizeof(*t));
    t->add_generation_prompt = 1;
    root = parse_body(body, len, err);
    if (root == NULL) {
        return -1;
    }
    if (get_model(root, &t->model, err) < 0) {
        goto fail;
    }
    f = field(root, "prompt");
    if (f != NULL) {
        if (!cJSON_IsString(f)) {
            bad_type(err, "prompt", "a string");
            goto fail;
        }
        t->prompt_len = strlen(f->valuestring);
        if ((t->prompt = dup_n(f->valuestring, t->prompt_len)) == NULL) {
            oom(err);
            goto fail;
        }
        t->add_special_tokens = 1;
    } else {
        cJSON *msgs = normalize_messages(field(root, "messages"), err), *x;

        if (msgs == NULL) {
            if (field(root, "messages") == NULL) {
                bad_value(err, "prompt", "either 'prompt' or 'messages' is "
                          "required");
            }
            goto fail;
        }
        t->messages_json = json_text(msgs, err);
        cJSON_Delete(msgs);
        if (t->messages_json == NULL) {
            goto fail;
        }
        x = field(root, "tools");
        if (check_tools(x, err) < 0) {
            goto fail;
        }
        if (x != NULL) {
            if ((t->tools_json = json_text(x, err)) == NULL) {
                goto fail;
            }
        }
        x = field(root, "chat_template_kwargs");
        if (x != NULL) {
            if (!cJSON_IsObject(x)) {
                bad_type(err, "chat_template_kwargs", "an object");
                goto fail;
            }
            if ((t->kwargs_json = json_text(x, err)) == NULL) {
                goto fail;
            }
        }
        if (get_bool(root, "add_generation_prompt", &t->add_generation_prompt,
                     err) < 0)
        {
            goto fail;
        }
    }
    if (get_bool(root, "add_special_tokens", &t->add_special_tokens, err) < 0
        || get_bool(root, "return_token_strs", &t->return_token_strs, err) < 0)
    {
        goto fail;
    }
    cJSON_Delete(root);
    return 0;

fail:
    cJSON_Delete(root);
    oai_tokenize_request_free(t);
    return -1;
}

void oai_tokenize_request_free(oai_tokenize_request *t)
{
    free(t->model);
    free(t->prompt);
    free(t->messages_json);
    free(t->tools_json);
    free(t->kwargs_json);
    memset(t, 0, sizeof(*t));
}

char *oai_tokenize_json(const int32_t *ids, int n, int max_model_len,
                        oai_token_text_fn token_text, void *token_ctx,
                        size_t *len)
{
    cJSON *o = cJSON_CreateObject(), *a, *s;
    int i;

    if (o == NULL) {
        return NULL;
    }
    cJSON_AddNumberToObject(o, "count", n);
    cJSON_AddNumberToObject(o, "max_model_len", max_model_len);
    a = cJSON_AddArrayToObject(o, "tokens");
    for (i = 0; a && i < n; i++) {
        cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
    }
    if (token_text == NULL) {
        cJSON_AddNullToObject(o, "token_strs");
        return print_json(o, len);
    }
    s = cJSON_AddArrayToObject(o, "token_strs");
    for (i = 0; s && i < n; i++) {
        size_t m = 0;
        const char *raw = token_text(token_ctx, ids[i], &m);
        char *txt = oai_utf8_sanitize(raw ? raw : "", raw ? m : 0, NULL);

        cJSON_AddItemToArray(s, cJSON_CreateString(txt ? txt : ""));
        free(txt);
    }
    return print_json(o, len);
}

int oai_parse_detokenize(const char *body, size_t len, char **model,
                         int32_t **ids, int *n, oai_error *err)
{
    cJSON *root, *f, *t;
    int i = 0;

    *model = NULL;
    *ids = NULL;
    *n = 0;
    root = parse_body(body, len, err);
    if (root == NULL) {
        return -1;
    }
    if (get_model(root, model, err) < 0) {
        goto fail;
    }
    f = field(root, "tokens");
    if (f == NULL) {
        bad_value(err, "tokens", "'tokens' is required");
        goto fail;
    }
    if (!cJSON_IsArray(f)) {
        bad_type(err, "tokens", "an array of token ids");
        goto fail;
    }
    *ids = calloc(cJSON_GetArraySize(f) + 1, sizeof(int32_t));
    if (*ids == NULL) {
        oom(err);
        goto fail;
    }
    cJSON_ArrayForEach(t, f) {
        if (!is_integer(t) || t->valuedouble < 0 || t->valuedouble > INT32_MAX) {
            bad_type(err, "tokens", "an array of token ids");
            goto fail;
        }
        (*ids)[i++] = (int32_t) t->valuedouble;
    }
    *n = i;
    cJSON_Delete(root);
    return 0;

fail:
    cJSON_Delete(root);
    free(*model);
    free(*ids);
    *model = NULL;
    *ids = NULL;
    return -1;
}

char *oai_detokenize_json(const char *text, size_t text_len, size_t *len)
{
    cJSON *o = cJSON_CreateObject();
    char *safe = oai_utf8_sanitize(text, text_len, NULL);

    if (o == NULL || safe == NULL) {
        cJSON_Delete(o);
        free(safe);
        return NULL;
    }
    cJSON_AddStringToObject(o, "prompt", safe);
    free(safe);
    return print_json(o, len);
}
