/*
 * Fast reader of model.vocab and model.merges (see tokenizer_json.h).
 */
#include "tokenizer_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t skip_ws(const char *s, size_t len, size_t i)
{
    while (i < len && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) {
        i++;
    }
    return i;
}

/* Index just past the string whose '"' is at s[i], or 0. */
static size_t skip_string(const char *s, size_t len, size_t i)
{
    /* memchr to the next quote; it ends the string unless an odd number
     * of backslashes precedes it. */
    for (i++; i < len;) {
        const char *q = memchr(s + i, '"', len - i);
        size_t j, bs = 0;

        if (q == NULL) {
            return 0;
        }
        j = (size_t) (q - s);
        while (j - bs > i && s[j - bs - 1] == '\\') {
            bs++;
        }
        if (bs % 2 == 0) {
            return j + 1;
        }
        i = j + 1;
    }
    return 0;
}

size_t tjson_skip_value(const char *s, size_t len, size_t i)
{
    int depth = 0;

    i = skip_ws(s, len, i);
    if (i >= len) {
        return 0;
    }
    if (s[i] == '"') {
        return skip_string(s, len, i);
    }
    if (s[i] != '{' && s[i] != '[') {
        /* number, true, false, null */
        size_t j = i;

        while (j < len && s[j] != ',' && s[j] != '}' && s[j] != ']' && s[j] != ' '
               && s[j] != '\n' && s[j] != '\r' && s[j] != '\t') {
            j++;
        }
        return j > i ? j : 0;
    }
    for (; i < len; i++) {
        char c = s[i];

        if (c == '"') {
            i = skip_string(s, len, i);
            if (i == 0) {
                return 0;
            }
            i--;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth == 0) {
                return i + 1;
            }
        }
    }
    return 0;
}

int tjson_find_member(const char *s, size_t len, size_t obj, const char *key,
                      size_t *start, size_t *end)
{
    size_t klen = strlen(key), i = skip_ws(s, len, obj);

    if (i >= len || s[i] != '{') {
        return -1;
    }
    i++;
    for (;;) {
        size_t kstart, kend, vend;

        i = skip_ws(s, len, i);
        if (i < len && s[i] == '}') {
            return 0;
        }
        if (i >= len || s[i] != '"') {
            return -1;
        }
        kstart = i + 1;
        kend = skip_string(s, len, i);
        if (kend == 0) {
            return -1;
        }
        i = skip_ws(s, len, kend);
        if (i >= len || s[i] != ':') {
            return -1;
        }
        i = skip_ws(s, len, i + 1);
        if (end == NULL && kend - 1 - kstart == klen && memcmp(s + kstart, key, klen) == 0) {
            *start = i;         /* the caller does not need the end */
            return 1;
        }
        vend = tjson_skip_value(s, len, i);
        if (vend == 0) {
            return -1;
        }
        if (kend - 1 - kstart == klen && memcmp(s + kstart, key, klen) == 0) {
            *start = i;
            *end = vend;
            return 1;
        }
        i = skip_ws(s, len, vend);
        if (i < len && s[i] == ',') {
            i++;
        }
    }
}

static int hex4(const char *s, uint32_t *v)
{
    *v = 0;
    for (int k = 0; k < 4; k++) {
        char c = s[k];

        *v <<= 4;
        if (c >= '0' && c <= '9') {
            *v |= (uint32_t) (c - '0');
        } else if (c >= 'a' && c <= 'f') {
            *v |= (uint32_t) (c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            *v |= (uint32_t) (c - 'A' + 10);
        } else {
            return -1;
        }
    }
    return 0;
}

long tjson_read_string(const char *s, size_t end, size_t *i, char *out)
{
    size_t j = *i + 1;
    long o = 0;

    while (j < end && s[j] != '"') {
        uint32_t cp, lo;

        if (s[j] != '\\') {
            out[o++] = s[j++];
            continue;
        }
        if (j + 1 >= end) {
            return -1;
        }
        switch (s[j + 1]) {
        case '"': out[o++] = '"'; break;
        case '\\': out[o++] = '\\'; break;
        case '/': out[o++] = '/'; break;
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 't': out[o++] = '\t'; break;
        case 'u':
            if (j + 6 > end || hex4(s + j + 2, &cp) != 0) {
                return -1;
            }
            j += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (j + 8 > end || s[j + 2] != '\\' || s[j + 3] != 'u'
                    || hex4(s + j + 4, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF) {
                    return -1;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                j += 6;
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return -1;
            }
            /* The escape is at least as long as its UTF-8 (6 bytes for up
             * to 3, 12 for 4), so out never outgrows the raw length. */
            if (cp < 0x80) {
                out[o++] = (char) cp;
            } else if (cp < 0x800) {
                out[o++] = (char) (0xC0 | (cp >> 6));
                out[o++] = (char) (0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                out[o++] = (char) (0xE0 | (cp >> 12));
                out[o++] = (char) (0x80 | ((cp >> 6) & 0x3F));
                out[o++] = (char) (0x80 | (cp & 0x3F));
            } else {
                out[o++] = (char) (0xF0 | (cp >> 18));
                out[o++] = (char) (0x80 | ((cp >> 12) & 0x3F));
                out[o++] = (char) (0x80 | ((cp >> 6) & 0x3F));
                out[o++] = (char) (0x80 | (cp & 0x3F));
            }
            break;
        default:
            return -1;
        }
        j += 2;
    }
    if (j >= end) {
        return -1;
    }
    *i = j + 1;
    return o;
}

/* Counts the items of an object or array roughly (commas + 1): an upper
 * bound for the entry array. */
static size_t count_items(const char *s, size_t start, size_t end)
{
    size_t n = 1;

    for (size_t i = start; i < end; i++) {
        n += s[i] == ',';
    }
    return n;
}

long tjson_parse_vocab(const char *s, size_t start, size_t end,
                       tjson_vocab_entry **entries, char **strings,
                       char *err, size_t errlen)
{
    size_t cap = count_items(s, start, end), n = 0, i = skip_ws(s, end, start);
    tjson_vocab_entry *e = malloc(cap * sizeof(*e));
    char *buf = malloc(end - start + 1), *o = buf;

    *entries = NULL;
    *strings = NULL;
    if (e == NULL || buf == NULL) {
        snprintf(err, errlen, "model.vocab: out of memory");
        goto fail;
    }
    if (i >= end || s[i] != '{') {
        snprintf(err, errlen, "model.vocab is not an object");
        goto fail;
    }
    i = skip_ws(s, end, i + 1);
    while (i < end && s[i] != '}') {
        long klen;
        char *num_end;
        long id;

        if (s[i] != '"' || n == cap || (klen = tjson_read_string(s, end, &i, o)) < 0) {
            snprintf(err, errlen, "model.vocab: malformed entry %zu", n);
            goto fail;
        }
        i = skip_ws(s, end, i);
        if (i >= end || s[i] != ':') {
            snprintf(err, errlen, "model.vocab: malformed entry %zu", n);
            goto fail;
        }
        i = skip_ws(s, end, i + 1);
        /* strtol alone would also take "+5" or other leading space than
         * JSON's, which cJSON (the other reader) refuses */
        if (i >= end || (s[i] != '-' && (s[i] < '0' || s[i] > '9'))) {
            snprintf(err, errlen, "model.vocab[\"%.*s\"] is not a token id", (int) klen, o);
            goto fail;
        }
        id = strtol(s + i, &num_end, 10);
        if (num_end == s + i || id < 0 || id > TJSON_MAX_TOKEN_ID || *num_end == '.'
            || *num_end == 'e' || *num_end == 'E') {
            snprintf(err, errlen, "model.vocab[\"%.*s\"] is not a token id", (int) klen, o);
            goto fail;
        }
        e[n].key = o;
        e[n].len = (uint32_t) klen;
        e[n].id = (int32_t) id;
        n++;
        o += klen;
        i = skip_ws(s, end, (size_t) (num_end - s));
        if (i < end && s[i] == ',') {
            i = skip_ws(s, end, i + 1);
            if (i < end && s[i] == '}') {     /* JSON has no trailing comma */
                snprintf(err, errlen, "model.vocab: ',' before '}'");
                goto fail;
            }
        } else if (i >= end || s[i] != '}') {
            snprintf(err, errlen, "model.vocab: expected ',' or '}' after entry %zu", n);
            goto fail;
        }
    }
    *entries = e;
    *strings = buf;
    return (long) n;
fail:
    free(e);
    free(buf);
    return -1;
}

long tjson_parse_merges(const char *s, size_t start, size_t end,
                        tjson_merge_entry **entries, char **strings,
                        char *err, size_t errlen)
{
    size_t cap = count_items(s, start, end), n = 0, i = skip_ws(s, end, start);
    tjson_merge_entry *e = malloc(cap * sizeof(*e));
    char *buf = malloc(end - start + 1), *o = buf;

    *entries = NULL;
    *strings = NULL;
    if (e == NULL || buf == NULL) {
        snprintf(err, errlen, "model.merges: out of memory");
        goto fail;
    }
    if (i >= end || s[i] != '[') {
        snprintf(err, errlen, "model.merges is not an array");
        goto fail;
    }
    i = skip_ws(s, end, i + 1);
    while (i < end && s[i] != ']') {
        long len, len2;

        if (n == cap) {
            snprintf(err, errlen, "model.merges: malformed entry %zu", n);
            goto fail;
        }
        if (s[i] == '"') {
            char *sp;

            len = tjson_read_string(s, end, &i, o);
            sp = len > 0 ? memchr(o, ' ', (size_t) len) : NULL;
            if (sp == NULL) {
                snprintf(err, errlen, "model.merges[%zu] is not \"a b\"", n);
                goto fail;
            }
            e[n].a = o;
            e[n].alen = (uint32_t) (sp - o);
            e[n].b = sp + 1;
            e[n].blen = (uint32_t) (len - (sp + 1 - o));
            o += len;
        } else if (s[i] == '[') {
            i = skip_ws(s, end, i + 1);
            len = i < end && s[i] == '"' ? tjson_read_string(s, end, &i, o) : -1;
            i = skip_ws(s, end, i);
            if (len < 0 || i >= end || s[i] != ',') {
                snprintf(err, errlen, "model.merges[%zu] is not [\"a\", \"b\"]", n);
                goto fail;
            }
            i = skip_ws(s, end, i + 1);
            len2 = i < end && s[i] == '"' ? tjson_read_string(s, end, &i, o + len) : -1;
            i = skip_ws(s, end, i);
            if (len2 < 0 || i >= end || s[i] != ']') {
                snprintf(err, errlen, "model.merges[%zu] is not [\"a\", \"b\"]", n);
                goto fail;
            }
            i++;
            e[n].a = o;
            e[n].alen = (uint32_t) len;
            e[n].b = o + len;
            e[n].blen = (uint32_t) len2;
            o += len + len2;
        } else {
            snprintf(err, errlen, "model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", n);
            goto fail;
        }
        n++;
        i = skip_ws(s, end, i);
        if (i < end && s[i] == ',') {
            i = skip_ws(s, end, i + 1);
            if (i < end && s[i] == ']') {     /* JSON has no trailing comma */
                snprintf(err, errlen, "model.merges: ',' before ']'");
                goto fail;
            }
        } else if (i >= end || s[i] != ']') {
            snprintf(err, errlen, "model.merges: expected ',' or ']' after entry %zu", n);
            goto fail;
        }
    }
    *entries = e;
    *strings = buf;
    return (long) n;
fail:
    free(e);
    free(buf);
    return -1;
}
