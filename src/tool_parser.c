/*
 * Incremental parser of Hermes-style tool calls (see tool_parser.h).
 */
#include "tool_parser.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#define TAG_OPEN      "<tool_call>"
#define TAG_CLOSE     "</tool_call>"
#define TAG_OPEN_LEN  11
#define TAG_CLOSE_LEN 12
#define MAX_HEAD      4096   /* bytes before a head counts as malformed */

enum { M_TEXT, M_HEAD, M_ARGS, M_TAIL, M_SKIP };

struct tool_parser {
    int      mode;
    char    *buf;            /* bytes not decided yet */
    size_t   len, cap;
    int      after_call;     /* drop whitespace at the start of text */
    char     ws[64];         /* blanks before the open tag, given back if */
    size_t   n_ws;           /* the block turns out not to be a call */
    int      n_calls;
    int      depth, in_str, esc;   /* arguments scanner */
    uint64_t rng;
};

void tool_deltas_clear(tool_deltas *ds)
{
    int i;

    for (i = 0; i < ds->n; i++) {
        free(ds->d[i].id);
        free(ds->d[i].name);
        free(ds->d[i].text);
    }
    ds->n = 0;
}

void tool_deltas_free(tool_deltas *ds)
{
    tool_deltas_clear(ds);
    free(ds->d);
    ds->d = NULL;
    ds->cap = 0;
}

tool_parser *tool_parser_new(uint64_t seed)
{
    tool_parser *p = calloc(1, sizeof(*p));

    if (p != NULL) {
        p->rng = seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
        if (p->rng == 0) {
            p->rng = 1;
        }
    }
    return p;
}

void tool_parser_free(tool_parser *p)
{
    if (p != NULL) {
        free(p->buf);
        free(p);
    }
}

int tool_parser_num_calls(const tool_parser *p)
{
    return p->n_calls;
}

static int is_ws(char c)
{
    return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

static void consume(tool_parser *p, size_t n)
{
    memmove(p->buf, p->buf + n, p->len - n);
    p->len -= n;
}

static tool_delta *new_delta(tool_deltas *out)
{
    tool_delta *d;

    if (out->n == out->cap) {
        int cap = out->cap ? out->cap * 2 : 8;
        tool_delta *nd = realloc(out->d, (size_t) cap * sizeof(*nd));

        if (nd == NULL) {
            return NULL;
        }
        out->d = nd;
        out->cap = cap;
    }
    d = &out->d[out->n];
    memset(d, 0, sizeof(*d));
    d->text = calloc(1, 1);
    if (d->text == NULL) {
        return NULL;
    }
    out->n++;
    return d;
}

static int append_text(tool_delta *d, const char *s, size_t n)
{
    char *t = realloc(d->text, d->len + n + 1);

    if (t == NULL) {
        return -1;
    }
    memcpy(t + d->len, s, n);
    d->len += n;
    t[d->len] = '\0';
    d->text = t;
    return 0;
}

static int emit_content(tool_deltas *out, const char *s, size_t n)
{
    tool_delta *d;

    if (n == 0) {
        return 0;
    }
    if (out->n > 0 && out->d[out->n - 1].kind == TOOL_DELTA_CONTENT) {
        d = &out->d[out->n - 1];
    } else if ((d = new_delta(out)) == NULL) {
        return -1;
    }
    d->kind = TOOL_DELTA_CONTENT;
    return append_text(d, s, n);
}

static int emit_args(tool_parser *p, tool_deltas *out, const char *s, size_t n)
{
    tool_delta *d;
    int index = p->n_calls - 1;

    if (n == 0) {
        return 0;
    }
    if (out->n > 0 && out->d[out->n - 1].kind == TOOL_DELTA_CALL
        && out->d[out->n - 1].index == index)
    {
        d = &out->d[out->n - 1];
    } else if ((d = new_delta(out)) == NULL) {
        return -1;
    } else {
        d->kind = TOOL_DELTA_CALL;
        d->index = index;
    }
    return append_text(d, s, n);
}

static int emit_call_start(tool_parser *p, tool_deltas *out, char *name)
{
    static const char alnum[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    tool_delta *d = new_delta(out);
    int i;

    if (d == NULL || (d->id = malloc(5 + 24 + 1)) == NULL) {
        free(name);
        return -1;
    }
    memcpy(d->id, "call_", 5);
    for (i = 0; i < 24; i++) {
        p->rng ^= p->rng << 13;
        p->rng ^= p->rng >> 7;
        p->rng ^= p->rng << 17;
        d->id[5 + i] = alnum[p->rng % 62];
    }
    d->id[29] = '\0';
    d->kind = TOOL_DELTA_CALL;
    d->index = p->n_calls++;
    d->name = name;
    return 0;
}

/* Head of a block: {"name": "...", "arguments": {  Returns 1 with the
 * decoded name and the offset of the arguments' '{', 0 when more bytes
 * are needed, -1 when malformed. */
enum { HEAD_FAIL = -1, HEAD_NEED = 0, HEAD_OK = 1 };

static void skip_ws(const char *b, size_t len, size_t *i)
{
    while (*i < len && is_ws(b[*i])) {
        (*i)++;
    }
}

static int expect(const char *b, size_t len, size_t *i, const char *lit)
{
    size_t n = strlen(lit), have = len - *i < n ? len - *i : n;

    if (memcmp(b + *i, lit, have) != 0) {
        return HEAD_FAIL;
    }
    if (have < n) {
        return HEAD_NEED;
    }
    *i += n;
    return HEAD_OK;
}

static int parse_head(const char *b, size_t len, char **name, size_t *off)
{
    static const char *const before_name[] = { "{", "\"name\"", ":" };
    static const char *const after_name[] = { ",", "\"arguments\"", ":" };
    size_t i = 0, start, name_end;
    int k, r;
    cJSON *s;

    for (k = 0; k < 3; k++) {
        skip_ws(b, len, &i);
        if ((r = expect(b, len, &i, before_name[k])) != HEAD_OK) {
            return r;
        }
    }
    skip_ws(b, len, &i);
    if (i == len) {
        return HEAD_NEED;
    }
    if (b[i] != '"') {
        return HEAD_FAIL;
    }
    start = i++;
    while (i < len && b[i] != '"') {
        i += b[i] == '\\' ? 2 : 1;
    }
    if (i >= len) {
        return HEAD_NEED;
    }
    name_end = ++i;
    for (k = 0; k < 3; k++) {
        skip_ws(b, len, &i);
        if ((r = expect(b, len, &i, after_name[k])) != HEAD_OK) {
            return r;
        }
    }
    skip_ws(b, len, &i);
    if (i == len) {
        return HEAD_NEED;
    }
    if (b[i] != '{') {
        return HEAD_FAIL;
    }
    s = cJSON_ParseWithLength(b + start, name_end - start);
    if (s == NULL || !cJSON_IsString(s) || s->valuestring[0] == '\0') {
        cJSON_Delete(s);
        return HEAD_FAIL;
    }
    *name = strdup(s->valuestring);
    cJSON_Delete(s);
    if (*name == NULL) {
        return HEAD_FAIL;
    }
    *off = i;
    return HEAD_OK;
}

/* Longest suffix of b that is a proper prefix of tag. */
static size_t partial_tag(const char *b, size_t len, const char *tag,
                          size_t tag_len)
{
    size_t k = len < tag_len - 1 ? len : tag_len - 1;

    for (; k > 0; k--) {
        if (memcmp(b + len - k, tag, k) == 0) {
            return k;
        }
    }
    return 0;
}

static int drain(tool_parser *p, tool_deltas *out, int final)
{
    for (;;) {
        switch (p->mode) {
        case M_TEXT: {
            char *tag;
            size_t e, k;

            if (p->after_call) {
                size_t i = 0;

                skip_ws(p->buf, p->len, &i);
                consume(p, i);
                if (p->len == 0) {
                    return 0;
                }
                p->after_call = 0;
            }
            tag = memmem(p->buf, p->len, TAG_OPEN, TAG_OPEN_LEN);
            if (tag != NULL) {
                e = (size_t) (tag - p->buf);
                k = e;
                while (k > 0 && is_ws(p->buf[k - 1])) {
                    k--;
                }
                if (emit_content(out, p->buf, k) != 0) {
                    return -1;
                }
                p->n_ws = e - k < sizeof(p->ws) ? e - k : sizeof(p->ws);
                memcpy(p->ws, p->buf + e - p->n_ws, p->n_ws);
                consume(p, e + TAG_OPEN_LEN);
                p->mode = M_HEAD;
                continue;
            }
            if (final) {
                /* Trailing blanks after calls are no content. */
                e = p->len;
                if (p->n_calls > 0) {
                    while (e > 0 && is_ws(p->buf[e - 1])) {
                        e--;
                    }
                }
                if (emit_content(out, p->buf, e) != 0) {
                    return -1;
                }
                p->len = 0;
                return 0;
            }
            /* Hold back what may start a tag, and blanks before it. */
            e = p->len - partial_tag(p->buf, p->len, TAG_OPEN, TAG_OPEN_LEN);
            while (e > 0 && is_ws(p->buf[e - 1])) {
                e--;
            }
            if (emit_content(out, p->buf, e) != 0) {
                return -1;
            }
            consume(p, e);
            return 0;
        }
        case M_HEAD: {
            char *name = NULL;
            size_t off = 0;
            int r = parse_head(p->buf, p->len, &name, &off);

            if (r == HEAD_NEED && !final && p->len < MAX_HEAD) {
                return 0;
            }
            if (r != HEAD_OK) {
                /* Not a call: the markup and all are plain text. */
                if (emit_content(out, p->ws, p->n_ws) != 0
                    || emit_content(out, TAG_OPEN, TAG_OPEN_LEN) != 0)
                {
                    return -1;
                }
                p->n_ws = 0;
                p->mode = M_TEXT;
                continue;
            }
            if (emit_call_start(p, out, name) != 0) {
                return -1;
            }
            consume(p, off);
            p->mode = M_ARGS;
            p->depth = p->in_str = p->esc = 0;
            continue;
        }
        case M_ARGS: {
            size_t i;
            int ended = 0;

            for (i = 0; i < p->len && !ended; i++) {
                char c = p->buf[i];

                if (p->in_str) {
                    if (p->esc) {
                        p->esc = 0;
                    } else if (c == '\\') {
                        p->esc = 1;
                    } else if (c == '"') {
                        p->in_str = 0;
                    }
                } else if (c == '"') {
                    p->in_str = 1;
                } else if (c == '{' || c == '[') {
                    p->depth++;
                } else if (c == '}' || c == ']') {
                    ended = --p->depth == 0;
                }
            }
            if (emit_args(p, out, p->buf, i) != 0) {
                return -1;
            }
            consume(p, i);
            if (!ended) {
                if (final) {
                    p->len = 0;
                }
                return 0;
            }
            p->mode = M_TAIL;
            continue;
        }
        case M_TAIL: {
            size_t i = 0;
            int r;

            skip_ws(p->buf, p->len, &i);
            if (i < p->len && p->buf[i] == '}') {
                i++;
                skip_ws(p->buf, p->len, &i);
            }
            r = i < p->len ? expect(p->buf, p->len, &i, TAG_CLOSE) : HEAD_NEED;
            if (r == HEAD_OK) {
                consume(p, i);
                p->mode = M_TEXT;
                p->after_call = 1;
                continue;
            }
            if (r == HEAD_NEED) {
                if (final) {
                    p->len = 0;
                }
                return 0;
            }
            p->mode = M_SKIP;
            continue;
        }
        case M_SKIP: {
            char *tag = memmem(p->buf, p->len, TAG_CLOSE, TAG_CLOSE_LEN);

            if (tag != NULL) {
                consume(p, (size_t) (tag - p->buf) + TAG_CLOSE_LEN);
                p->mode = M_TEXT;
                p->after_call = 1;
                continue;
            }
            if (final) {
                p->len = 0;
            } else {
                consume(p, p->len - partial_tag(p->buf, p->len, TAG_CLOSE,
                                                TAG_CLOSE_LEN));
            }
            return 0;
        }
        }
        return -1;
    }
}

int tool_parser_feed(tool_parser *p, const char *text, size_t len,
                     tool_deltas *out)
{
    if (p->len + len + 1 > p->cap) {
        size_t cap = (p->len + len + 1) * 2;
        char *b = realloc(p->buf, cap);

        if (b == NULL) {
            return -1;
        }
        p->buf = b;
        p->cap = cap;
    }
    memcpy(p->buf + p->len, text, len);
    p->len += len;
    return drain(p, out, 0);
}

int tool_parser_finish(tool_parser *p, tool_deltas *out)
{
    return drain(p, out, 1);
}

void tool_parse_result_free(tool_parse_result *r)
{
    int i;

    free(r->content);
    for (i = 0; i < r->n_calls; i++) {
        free(r->calls[i].id);
        free(r->calls[i].name);
        free(r->calls[i].arguments);
    }
    free(r->calls);
    memset(r, 0, sizeof(*r));
}

int tool_parse_text(const char *text, size_t len, uint64_t seed,
                    tool_parse_result *out)
{
    tool_parser *p = tool_parser_new(seed);
    tool_deltas ds = { NULL, 0, 0 };
    int i, rc = -1;

    memset(out, 0, sizeof(*out));
    if (p == NULL || tool_parser_feed(p, text, len, &ds) != 0
        || tool_parser_finish(p, &ds) != 0)
    {
        goto done;
    }
    out->content = calloc(1, 1);
    out->calls = calloc((size_t) p->n_calls + 1, sizeof(*out->calls));
    if (out->content == NULL || out->calls == NULL) {
        goto done;
    }
    out->n_calls = p->n_calls;
    for (i = 0; i < ds.n; i++) {
        tool_delta *d = &ds.d[i];

        if (d->kind == TOOL_DELTA_CONTENT) {
            char *c = realloc(out->content, out->content_len + d->len + 1);

            if (c == NULL) {
                goto done;
            }
            memcpy(c + out->content_len, d->text, d->len);
            out->content_len += d->len;
            c[out->content_len] = '\0';
            out->content = c;
        } else {
            tool_call_result *c = &out->calls[d->index];
            size_t have = c->arguments ? strlen(c->arguments) : 0;
            char *a = realloc(c->arguments, have + d->len + 1);

            if (a == NULL) {
                goto done;
            }
            memcpy(a + have, d->text, d->len);
            a[have + d->len] = '\0';
            c->arguments = a;
            if (d->id != NULL) {
                c->id = d->id;
                c->name = d->name;
                d->id = d->name = NULL;
            }
        }
    }
    rc = 0;
done:
    tool_deltas_free(&ds);
    tool_parser_free(p);
    if (rc != 0) {
        tool_parse_result_free(out);
    }
    return rc;
}
