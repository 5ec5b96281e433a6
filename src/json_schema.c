/*
 * JSON Schema subset -> grammar nodes; tool-call grammar; validator.
 * See json_schema.h for what is supported.
 */
#include "json_schema.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REFS 64

typedef struct {
    grammar    *g;
    const cJSON *root;
    int         lenient;
    int         any_node;          /* shared "any value" node, -1 not yet */
    char       *ref_names[MAX_REFS];
    int         ref_nodes[MAX_REFS];
    int         n_refs;
    char       *err;
    size_t      errlen;
} compiler;

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const char *const annotation_keys[] = {
    "title", "description", "default", "examples", "$schema", "$id",
    "$comment", "deprecated", "readOnly", "writeOnly", "$defs",
    "definitions", NULL
};

static const char *const supported_keys[] = {
    "type", "properties", "required", "additionalProperties", "items",
    "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "$ref", NULL
};

static int in_names(const char *const *names, const char *k)
{
    int i;

    for (i = 0; names[i] != NULL; i++) {
        if (strcmp(names[i], k) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Checks that schema holds only supported keywords (strict mode). */
static int check_keys(compiler *c, const cJSON *schema, const char *path)
{
    const cJSON *k;

    cJSON_ArrayForEach(k, schema) {
        if (in_names(supported_keys, k->string)
            || in_names(annotation_keys, k->string))
        {
            continue;
        }
        if (c->lenient) {
            continue;
        }
        seterr(c->err, c->errlen, "unsupported JSON Schema keyword \"%s\" "
               "at %s", k->string, path);
        return -1;
    }
    return 0;
}

static int oom(compiler *c)
{
    seterr(c->err, c->errlen, "out of memory compiling the JSON schema");
    return -1;
}

static int any_node(compiler *c)
{
    if (c->any_node < 0) {
        c->any_node = grammar_add(c->g, GN_ANY);
    }
    return c->any_node;
}

static int compile(compiler *c, const cJSON *schema, const char *path);

/* The JSON text of a value as the model must write it (compact). */
static int add_value_text(compiler *c, int node, const cJSON *v,
                          const char *path)
{
    char *text = cJSON_PrintUnformatted(v);
    int r;

    if (text == NULL) {
        return oom(c);
    }
    r = grammar_add_text(c->g, node, text, strlen(text), -1);
    free(text);
    if (r < 0) {
        seterr(c->err, c->errlen, "too many enum values at %s (at most %d)",
               path, GRAMMAR_MAX_CHOICES);
        return -1;
    }
    return 0;
}

static int get_count(compiler *c, const cJSON *schema, const char *key,
                     const char *path, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(schema, key);

    if (v == NULL) {
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 65535
        || v->valuedouble != floor(v->valuedouble))
    {
        seterr(c->err, c->errlen, "\"%s\" at %s must be an integer from 0 "
               "to 65535", key, path);
        return -1;
    }
    *out = (int) v->valuedouble;
    return 1;
}

static int compile_object(compiler *c, const cJSON *schema, const char *path)
{
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(schema, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(schema, "required");
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(schema,
                                                         "additionalProperties");
    const cJSON *p, *r;
    char sub[512];
    int node = grammar_add(c->g, GN_OBJECT), additional = -1;

    if (node < 0) {
        return oom(c);
    }
    if (props != NULL && !cJSON_IsObject(props)) {
        seterr(c->err, c->errlen, "\"properties\" at %s must be an object",
               path);
        return -1;
    }
    if (req != NULL && !cJSON_IsArray(req)) {
        seterr(c->err, c->errlen, "\"required\" at %s must be an array", path);
        return -1;
    }
    cJSON_ArrayForEach(r, req) {
        if (!cJSON_IsString(r)) {
            seterr(c->err, c->errlen, "\"required\" at %s must list strings",
                   path);
            return -1;
        }
        if (props == NULL
            || cJSON_GetObjectItemCaseSensitive(props, r->valuestring) == NULL)
        {
            seterr(c->err, c->errlen, "required property \"%s\" at %s is not "
                   "in \"properties\"", r->valuestring, path);
            return -1;
        }
    }
    cJSON_ArrayForEach(p, props) {
        cJSON *name = cJSON_CreateString(p->string);
        char *text;
        int value, required = 0;

        if (name == NULL) {
            return oom(c);
        }
        text = cJSON_PrintUnformatted(name);
        cJSON_Delete(name);
        if (text == NULL) {
            return oom(c);
        }
        cJSON_ArrayForEach(r, req) {
            required |= strcmp(r->valuestring, p->string) == 0;
        }
        snprintf(sub, sizeof(sub), "%s.properties.%s", path, p->string);
        value = compile(c, p, sub);
        if (value < 0) {
            free(text);
            return -1;
        }
        /* The name as it appears between the quotes, escapes included. */
        if (grammar_add_prop(c->g, node, text + 1, strlen(text) - 2, value,
                             required) < 0)
        {
            free(text);
            seterr(c->err, c->errlen, "too many properties at %s (at most "
                   "%d)", path, GRAMMAR_MAX_CHOICES);
            return -1;
        }
        free(text);
    }
    if (addl == NULL) {
        additional = props == NULL ? any_node(c) : -1;
    } else if (cJSON_IsBool(addl)) {
        additional = cJSON_IsTrue(addl) ? any_node(c) : -1;
    } else if (cJSON_IsObject(addl)) {
        snprintf(sub, sizeof(sub), "%s.additionalProperties", path);
        additional = compile(c, addl, sub);
        if (additional < 0) {
            return -1;
        }
    } else {
        seterr(c->err, c->errlen, "\"additionalProperties\" at %s must be a "
               "boolean or a schema", path);
        return -1;
    }
    if (additional < 0 && ((addl == NULL && props == NULL)
                           || cJSON_IsTrue(addl)))
    {
        return oom(c);          /* any_node() failed */
    }
    c->g->nodes[node].additional = additional;
    return node;
}

static int compile_array(compiler *c, const cJSON *schema, const char *path)
{
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(schema, "items");
    char sub[512];
    int node = grammar_add(c->g, GN_ARRAY), item, mn = 0, mx = -1;

    if (node < 0) {
        return oom(c);
    }
    if (get_count(c, schema, "minItems", path, &mn) < 0
        || get_count(c, schema, "maxItems", path, &mx) < 0)
    {
        return -1;
    }
    if (mx >= 0 && mn > mx) {
        seterr(c->err, c->errlen, "minItems is over maxItems at %s", path);
        return -1;
    }
    if (items == NULL || cJSON_IsTrue(items)) {
        item = any_node(c);
    } else if (cJSON_IsObject(items)) {
        snprintf(sub, sizeof(sub), "%s.items", path);
        item = compile(c, items, sub);
    } else {
        seterr(c->err, c->errlen, "\"items\" at %s must be a schema (tuple "
               "items are not supported)", path);
        return -1;
    }
    if (item < 0) {
        return -1;
    }
    c->g->nodes[node].items = item;
    c->g->nodes[node].min_items = mn;
    c->g->nodes[node].max_items = mx;
    return node;
}

static int compile_words(compiler *c, const char *a, const char *b)
{
    int node = grammar_add(c->g, GN_ENUM);

    if (node < 0 || grammar_add_text(c->g, node, a, strlen(a), -1) < 0
        || (b != NULL && grammar_add_text(c->g, node, b, strlen(b), -1) < 0))
    {
        return oom(c);
    }
    return node;
}

/* One type name with the schema's keywords. */
static int compile_type(compiler *c, const cJSON *schema, const char *type,
                        const char *path)
{
    if (strcmp(type, "object") == 0) {
        return compile_object(c, schema, path);
    }
    if (strcmp(type, "array") == 0) {
        return compile_array(c, schema, path);
    }
    if (strcmp(type, "string") == 0) {
        int n = grammar_add(c->g, GN_STRING);
        return n < 0 ? oom(c) : n;
    }
    if (strcmp(type, "number") == 0) {
        int n = grammar_add(c->g, GN_NUMBER);
        return n < 0 ? oom(c) : n;
    }
    if (strcmp(type, "integer") == 0) {
        int n = grammar_add(c->g, GN_INTEGER);
        return n < 0 ? oom(c) : n;
    }
    if (strcmp(type, "boolean") == 0) {
        return compile_words(c, "true", "false");
    }
    if (strcmp(type, "null") == 0) {
        return compile_words(c, "null", NULL);
    }
    seterr(c->err, c->errlen, "unknown type \"%s\" at %s", type, path);
    return -1;
}

/* First bytes a node's values may start with (union disjointness). */
static void first_bytes(const grammar *g, int node, uint8_t set[256], int d)
{
    const grammar_node *n = &g->nodes[node];
    int i;

    if (d > GRAMMAR_MAX_DEPTH) {
        return;
    }
    switch (n->kind) {
    case GN_ANY:
        set['{'] = set['['] = set['"'] = set['-'] = 1;
        set['t'] = set['f'] = set['n'] = 1;
        for (i = '0'; i <= '9'; i++) set[i] = 1;
        break;
    case GN_OBJECT: set['{'] = 1; break;
    case GN_ARRAY:  set['['] = 1; break;
    case GN_STRING: set['"'] = 1; break;
    case GN_NUMBER:
    case GN_INTEGER:
        set['-'] = 1;
        for (i = '0'; i <= '9'; i++) set[i] = 1;
        break;
    case GN_ENUM:
    case GN_LITERAL:
    case GN_SWITCH:
        for (i = 0; i < n->n_texts; i++) set[(uint8_t) n->texts[i][0]] = 1;
        break;
    case GN_UNION:
        for (i = 0; i < n->n_children; i++) {
            first_bytes(g, n->children[i], set, d + 1);
        }
        break;
    case GN_SEQ:
        if (n->n_children > 0) first_bytes(g, n->children[0], set, d + 1);
        break;
    case GN_REPEAT:
        first_bytes(g, n->items, set, d + 1);
        break;
    }
}

/* A union of alternatives that the first byte tells apart. */
static int make_union(compiler *c, const int *alts, int n, const char *what,
                      const char *path)
{
    uint8_t seen[256], mine[256];
    int node, i, j;

    if (n == 1) {
        return alts[0];
    }
    memset(seen, 0, sizeof(seen));
    for (i = 0; i < n; i++) {
        memset(mine, 0, sizeof(mine));
        first_bytes(c->g, alts[i], mine, 0);
        for (j = 0; j < 256; j++) {
            if (mine[j] && seen[j]) {
                seterr(c->err, c->errlen, "unsupported \"%s\" at %s: its "
                       "alternatives must differ in type (two alternatives "
                       "may both start with '%c')", what, path, j);
                return -1;
            }
            seen[j] |= mine[j];
        }
    }
    node = grammar_add(c->g, GN_UNION);
    if (node < 0) {
        return oom(c);
    }
    for (i = 0; i < n; i++) {
        if (grammar_add_child(c->g, node, alts[i]) < 0) {
            return oom(c);
        }
    }
    return node;
}

static int compile_ref(compiler *c, const char *ref, const char *path)
{
    const cJSON *target = NULL;
    int i, node;

    for (i = 0; i < c->n_refs; i++) {
        if (strcmp(c->ref_names[i], ref) == 0) {
            return c->ref_nodes[i];
        }
    }
    if (strcmp(ref, "#") == 0) {
        target = c->root;
    } else if (strncmp(ref, "#/$defs/", 8) == 0) {
        target = cJSON_GetObjectItemCaseSensitive(
                     cJSON_GetObjectItemCaseSensitive(c->root, "$defs"),
                     ref + 8);
    } else if (strncmp(ref, "#/definitions/", 14) == 0) {
        target = cJSON_GetObjectItemCaseSensitive(
                     cJSON_GetObjectItemCaseSensitive(c->root, "definitions"),
                     ref + 14);
    } else {
        seterr(c->err, c->errlen, "unsupported \"$ref\" \"%s\" at %s (only "
               "\"#\", \"#/$defs/...\" and \"#/definitions/...\")", ref, path);
        return -1;
    }
    if (target == NULL || !cJSON_IsObject(target)) {
        seterr(c->err, c->errlen, "\"$ref\" \"%s\" at %s names no schema",
               ref, path);
        return -1;
    }
    if (c->n_refs == MAX_REFS) {
        seterr(c->err, c->errlen, "too many \"$ref\" targets at %s", path);
        return -1;
    }
    /* A one-child union stands for the target, so that a recursive
     * reference finds its node before the target is compiled. */
    node = grammar_add(c->g, GN_UNION);
    if (node < 0 || (c->ref_names[c->n_refs] = strdup(ref)) == NULL) {
        return oom(c);
    }
    c->ref_nodes[c->n_refs++] = node;
    i = compile(c, target, ref);
    if (i < 0) {
        return -1;
    }
    if (i == node) {
        seterr(c->err, c->errlen, "\"$ref\" \"%s\" refers to itself", ref);
        return -1;
    }
    if (grammar_add_child(c->g, node, i) < 0) {
        return oom(c);
    }
    return node;
}

static int compile(compiler *c, const cJSON *schema, const char *path)
{
    const cJSON *type, *en, *cn, *any, *ref;
    char sub[512];
    int alts[16], n = 0, i;

    if (cJSON_IsTrue(schema)) {
        return any_node(c) < 0 ? oom(c) : c->any_node;
    }
    if (!cJSON_IsObject(schema)) {
        seterr(c->err, c->errlen, "the schema at %s must be an object", path);
        return -1;
    }
    if (check_keys(c, schema, path) != 0) {
        return -1;
    }
    ref = cJSON_GetObjectItemCaseSensitive(schema, "$ref");
    if (ref != NULL) {
        if (!cJSON_IsString(ref)) {
            seterr(c->err, c->errlen, "\"$ref\" at %s must be a string", path);
            return -1;
        }
        return compile_ref(c, ref->valuestring, path);
    }
    en = cJSON_GetObjectItemCaseSensitive(schema, "enum");
    cn = cJSON_GetObjectItemCaseSensitive(schema, "const");
    if (en != NULL || cn != NULL) {
        const cJSON *v;
        int node = grammar_add(c->g, GN_ENUM);

        if (node < 0) {
            return oom(c);
        }
        if (cn != NULL) {
            return add_value_text(c, node, cn, path) < 0 ? -1 : node;
        }
        if (!cJSON_IsArray(en) || cJSON_GetArraySize(en) == 0) {
            seterr(c->err, c->errlen, "\"enum\" at %s must be a non-empty "
                   "array", path);
            return -1;
        }
        cJSON_ArrayForEach(v, en) {
            if (add_value_text(c, node, v, path) < 0) {
                return -1;
            }
        }
        return node;
    }
    any = cJSON_GetObjectItemCaseSensitive(schema, "anyOf");
    if (any == NULL) {
        any = cJSON_GetObjectItemCaseSensitive(schema, "oneOf");
    }
    if (any != NULL) {
        const cJSON *a;
        const char *what = any->string;

        if (!cJSON_IsArray(any) || cJSON_GetArraySize(any) == 0
            || cJSON_GetArraySize(any) > 16)
        {
            seterr(c->err, c->errlen, "\"%s\" at %s must be an array of 1 to "
                   "16 schemas", what, path);
            return -1;
        }
        i = 0;
        cJSON_ArrayForEach(a, any) {
            snprintf(sub, sizeof(sub), "%s.%s[%d]", path, what, i++);
            if ((alts[n++] = compile(c, a, sub)) < 0) {
                return -1;
            }
        }
        return make_union(c, alts, n, what, path);
    }
    type = cJSON_GetObjectItemCaseSensitive(schema, "type");
    if (type == NULL) {
        if (cJSON_GetObjectItemCaseSensitive(schema, "properties") != NULL) {
            return compile_object(c, schema, path);
        }
        if (cJSON_GetObjectItemCaseSensitive(schema, "items") != NULL) {
            return compile_array(c, schema, path);
        }
        return any_node(c) < 0 ? oom(c) : c->any_node;
    }
    if (cJSON_IsString(type)) {
        return compile_type(c, schema, type->valuestring, path);
    }
    if (cJSON_IsArray(type) && cJSON_GetArraySize(type) > 0
        && cJSON_GetArraySize(type) <= 7)
    {
        const cJSON *t;
        int has_number = 0;

        cJSON_ArrayForEach(t, type) {
            if (!cJSON_IsString(t)) {
                break;
            }
            has_number |= strcmp(t->valuestring, "number") == 0;
        }
        cJSON_ArrayForEach(t, type) {
            if (!cJSON_IsString(t)) {
                seterr(c->err, c->errlen, "\"type\" at %s must list type "
                       "names", path);
                return -1;
            }
            /* every integer is a number: one alternative covers both */
            if (has_number && strcmp(t->valuestring, "integer") == 0) {
                continue;
            }
            if ((alts[n++] = compile_type(c, schema, t->valuestring, path))
                < 0)
            {
                return -1;
            }
        }
        return make_union(c, alts, n, "type", path);
    }
    seterr(c->err, c->errlen, "\"type\" at %s must be a type name or a list "
           "of them", path);
    return -1;
}

static void compiler_done(compiler *c)
{
    int i;

    for (i = 0; i < c->n_refs; i++) {
        free(c->ref_names[i]);
    }
}

static void compiler_init(compiler *c, grammar *g, const cJSON *root,
                          int lenient, char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    c->g = g;
    c->root = root;
    c->lenient = lenient;
    c->any_node = -1;
    c->err = err;
    c->errlen = errlen;
}

grammar *json_schema_compile(const cJSON *schema, int lenient,
                             char *err, size_t errlen)
{
    grammar *g = grammar_new();
    compiler c;
    int root;

    if (g == NULL) {
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    compiler_init(&c, g, schema, lenient, err, errlen);
    root = compile(&c, schema, "$");
    compiler_done(&c);
    if (root < 0) {
        grammar_free(g);
        return NULL;
    }
    g->root = root;
    return g;
}

grammar *json_schema_any_object(char *err, size_t errlen)
{
    cJSON *s = cJSON_Parse("{\"type\": \"object\"}");
    grammar *g;

    if (s == NULL) {
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    g = json_schema_compile(s, 0, err, errlen);
    cJSON_Delete(s);
    return g;
}

#define CALL_OPEN   "<tool_call>\n{\"name\": "
#define CALL_ARGS   ", \"arguments\": "
#define CALL_CLOSE  "}\n</tool_call>"

grammar *json_schema_tool_calls(const cJSON *tools, const char *only_name,
                                int parallel, char *err, size_t errlen)
{
    grammar *g = grammar_new();
    compiler c;
    const cJSON *t;
    int names, call, rep, sep, open, n_fn = 0, i = 0;
    char path[300];

    if (g == NULL) {
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    if (!cJSON_IsArray(tools)) {
        seterr(err, errlen, "\"tools\" must be an array");
        grammar_free(g);
        return NULL;
    }
    names = grammar_add(g, GN_SWITCH);
    cJSON_ArrayForEach(t, tools) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn,
                                                               "parameters");
        char *quoted;
        int args, seq, a, cl;

        snprintf(path, sizeof(path), "tools[%d].function.parameters", i++);
        if (!cJSON_IsObject(fn) || !cJSON_IsString(name)) {
            seterr(err, errlen, "tools[%d] needs a \"function\" with a "
                   "\"name\"", i - 1);
            goto fail;
        }
        if (only_name != NULL && strcmp(only_name, name->valuestring) != 0) {
            continue;
        }
        compiler_init(&c, g, params, 1, err, errlen);
        if (params == NULL) {
            /* no parameters: an object without any */
            args = grammar_add(g, GN_OBJECT);
        } else {
            args = compile(&c, params, path);
        }
        compiler_done(&c);
        if (args < 0) {
            goto fail;
        }
        quoted = cJSON_PrintUnformatted(name);
        seq = grammar_add(g, GN_SEQ);
        a = grammar_add_literal(g, CALL_ARGS, strlen(CALL_ARGS));
        cl = grammar_add_literal(g, CALL_CLOSE, strlen(CALL_CLOSE));
        if (quoted == NULL || seq < 0 || a < 0 || cl < 0
            || grammar_add_child(g, seq, a) < 0
            || grammar_add_child(g, seq, args) < 0
            || grammar_add_child(g, seq, cl) < 0
            || grammar_add_text(g, names, quoted, strlen(quoted), seq) < 0)
        {
            free(quoted);
            seterr(err, errlen, "too many tools (at most %d)",
                   GRAMMAR_MAX_CHOICES);
            goto fail;
        }
        free(quoted);
        n_fn++;
    }
    if (n_fn == 0) {
        if (only_name != NULL) {
            seterr(err, errlen, "tool_choice names the function \"%s\", "
                   "which is not in \"tools\"", only_name);
        } else {
            seterr(err, errlen, "tool_choice \"required\" needs at least one "
                   "function in \"tools\"");
        }
        goto fail;
    }
    open = grammar_add_literal(g, CALL_OPEN, strlen(CALL_OPEN));
    call = grammar_add(g, GN_SEQ);
    sep = grammar_add_literal(g, "\n", 1);
    rep = grammar_add(g, GN_REPEAT);
    if (open < 0 || call < 0 || sep < 0 || rep < 0
        || grammar_add_child(g, call, open) < 0
        || grammar_add_child(g, call, names) < 0)
    {
        seterr(err, errlen, "out of memory");
        goto fail;
    }
    g->nodes[rep].items = call;
    g->nodes[rep].separator = sep;
    g->nodes[rep].min_items = 1;
    g->nodes[rep].max_items = parallel && only_name == NULL ? -1 : 1;
    g->root = rep;
    return g;
fail:
    grammar_free(g);
    return NULL;
}

grammar *json_schema_constraint(const char *constraint_json,
                                char *err, size_t errlen, const char **param)
{
    cJSON *root = cJSON_Parse(constraint_json);
    const cJSON *type;
    grammar *g = NULL;

    *param = "response_format";
    if (root == NULL || !cJSON_IsObject(root)) {
        seterr(err, errlen, "the constraint is not a JSON object");
        cJSON_Delete(root);
        return NULL;
    }
    type = cJSON_GetObjectItemCaseSensitive(root, "type");
    if (!cJSON_IsString(type)) {
        seterr(err, errlen, "the constraint needs a \"type\"");
    } else if (strcmp(type->valuestring, "json_object") == 0) {
        g = json_schema_any_object(err, errlen);
    } else if (strcmp(type->valuestring, "json_schema") == 0) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "schema");

        if (s == NULL) {
            seterr(err, errlen, "json_schema needs a \"schema\"");
        } else {
            g = json_schema_compile(s, 0, err, errlen);
        }
    } else if (strcmp(type->valuestring, "tool_calls") == 0) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(root, "name");
        const cJSON *par = cJSON_GetObjectItemCaseSensitive(root, "parallel");

        *param = name != NULL ? "tool_choice" : "tools";
        g = json_schema_tool_calls(
                cJSON_GetObjectItemCaseSensitive(root, "tools"),
                cJSON_IsString(name) ? name->valuestring : NULL,
                par == NULL || cJSON_IsTrue(par), err, errlen);
    } else {
        seterr(err, errlen, "unknown constraint type \"%s\"",
               type->valuestring);
    }
    cJSON_Delete(root);
    return g;
}

/* ---- validator ----------------------------------------------------------- */

static int resolve(const cJSON *root, const cJSON **schema, char *err,
                   size_t errlen)
{
    int hops = 0;

    while (cJSON_IsObject(*schema)) {
        const cJSON *ref = cJSON_GetObjectItemCaseSensitive(*schema, "$ref");
        const char *r;

        if (ref == NULL) {
            return 0;
        }
        if (!cJSON_IsString(ref) || ++hops > 32) {
            seterr(err, errlen, "bad $ref");
            return -1;
        }
        r = ref->valuestring;
        if (strcmp(r, "#") == 0) {
            *schema = root;
        } else if (strncmp(r, "#/$defs/", 8) == 0) {
            *schema = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(root, "$defs"), r + 8);
        } else if (strncmp(r, "#/definitions/", 14) == 0) {
            *schema = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(root, "definitions"), r + 14);
        } else {
            seterr(err, errlen, "unsupported $ref %s", r);
            return -1;
        }
    }
    if (*schema == NULL) {
        seterr(err, errlen, "$ref names no schema");
        return -1;
    }
    return 0;
}

static int type_ok(const char *t, const cJSON *v)
{
    if (strcmp(t, "object") == 0) return cJSON_IsObject(v);
    if (strcmp(t, "array") == 0) return cJSON_IsArray(v);
    if (strcmp(t, "string") == 0) return cJSON_IsString(v);
    if (strcmp(t, "number") == 0) return cJSON_IsNumber(v);
    if (strcmp(t, "integer") == 0) {
        return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble)
               && fabs(v->valuedouble) < 9007199254740992.0;
    }
    if (strcmp(t, "boolean") == 0) return cJSON_IsBool(v);
    if (strcmp(t, "null") == 0) return cJSON_IsNull(v);
    return 0;
}

static int validate(const cJSON *root, const cJSON *schema, const cJSON *v,
                    const char *path, int depth, char *err, size_t errlen)
{
    const cJSON *x, *k;
    char sub[512];

    if (depth > 64) {
        seterr(err, errlen, "too deep at %s", path);
        return 0;
    }
    if (resolve(root, &schema, err, errlen) != 0) {
        return -1;
    }
    if (cJSON_IsTrue(schema)) {
        return 1;
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(schema, "const")) != NULL
        && !cJSON_Compare(x, v, 1))
    {
        seterr(err, errlen, "%s is not the const value", path);
        return 0;
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(schema, "enum")) != NULL) {
        int found = 0;

        cJSON_ArrayForEach(k, x) {
            found |= cJSON_Compare(k, v, 1);
        }
        if (!found) {
            seterr(err, errlen, "%s is not one of the enum values", path);
            return 0;
        }
    }
    x = cJSON_GetObjectItemCaseSensitive(schema, "anyOf");
    if (x == NULL) {
        x = cJSON_GetObjectItemCaseSensitive(schema, "oneOf");
    }
    if (x != NULL) {
        int matched = 0, r;

        cJSON_ArrayForEach(k, x) {
            if ((r = validate(root, k, v, path, depth + 1, err, errlen)) < 0) {
                return -1;
            }
            matched += r;
        }
        if (matched == 0) {
            seterr(err, errlen, "%s matches no alternative", path);
            return 0;
        }
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(schema, "type")) != NULL) {
        int ok = 0;

        if (cJSON_IsString(x)) {
            ok = type_ok(x->valuestring, v);
        } else {
            cJSON_ArrayForEach(k, x) {
                ok |= cJSON_IsString(k) && type_ok(k->valuestring, v);
            }
        }
        if (!ok) {
            seterr(err, errlen, "%s has the wrong type", path);
            return 0;
        }
    }
    if (cJSON_IsObject(v)) {
        const cJSON *props = cJSON_GetObjectItemCaseSensitive(schema,
                                                              "properties");
        const cJSON *addl = cJSON_GetObjectItemCaseSensitive(schema,
                                                   "additionalProperties");

        cJSON_ArrayForEach(k, cJSON_GetObjectItemCaseSensitive(schema,
                                                              "required")) {
            if (cJSON_GetObjectItemCaseSensitive(v, k->valuestring) == NULL) {
                seterr(err, errlen, "%s lacks required \"%s\"", path,
                       k->valuestring);
                return 0;
            }
        }
        cJSON_ArrayForEach(k, v) {
            const cJSON *ps = cJSON_GetObjectItemCaseSensitive(props,
                                                               k->string);
            int r;

            snprintf(sub, sizeof(sub), "%s.%s", path, k->string);
            if (ps == NULL) {
                if (cJSON_IsFalse(addl)) {
                    seterr(err, errlen, "%s is not allowed", sub);
                    return 0;
                }
                ps = cJSON_IsObject(addl) ? addl : NULL;
            }
            if (ps != NULL
                && (r = validate(root, ps, k, sub, depth + 1, err, errlen))
                   != 1)
            {
                return r;
            }
        }
    }
    if (cJSON_IsArray(v)) {
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(schema, "items");
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(schema, "minItems");
        const cJSON *mx = cJSON_GetObjectItemCaseSensitive(schema, "maxItems");
        int n = cJSON_GetArraySize(v), i = 0, r;

        if ((mn != NULL && n < mn->valuedouble)
            || (mx != NULL && n > mx->valuedouble))
        {
            seterr(err, errlen, "%s has %d items, outside minItems/maxItems",
                   path, n);
            return 0;
        }
        if (cJSON_IsObject(items)) {
            cJSON_ArrayForEach(k, v) {
                snprintf(sub, sizeof(sub), "%s[%d]", path, i++);
                if ((r = validate(root, items, k, sub, depth + 1, err, errlen))
                    != 1)
                {
                    return r;
                }
            }
        }
    }
    return 1;
}

int json_schema_validate(const cJSON *schema, const cJSON *value,
                         char *err, size_t errlen)
{
    return validate(schema, schema, value, "$", 0, err, errlen);
}
