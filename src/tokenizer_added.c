/*
 * Added-token matching (see tokenizer_added.h).
 */
#include "tokenizer_added.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer_unicode.h"

static int added_cmp(const void *a, const void *b, void *ctx)
{
    const added_token *tokens = ctx;
    const added_token *x = &tokens[*(const int *) a];
    const added_token *y = &tokens[*(const int *) b];
    unsigned char fx = (unsigned char) x->content[0];
    unsigned char fy = (unsigned char) y->content[0];

    if (fx != fy) {
        return fx < fy ? -1 : 1;
    }
    if (x->len != y->len) {
        return x->len > y->len ? -1 : 1;
    }
    return *(const int *) a - *(const int *) b;
}

int added_matcher_init(added_matcher *m, const added_token *tokens, int n,
                       int normalized)
{
    int k = 0;

    memset(m, 0, sizeof(*m));
    m->tokens = tokens;
    m->order = malloc((size_t) (n > 0 ? n : 1) * sizeof(int));
    if (m->order == NULL) {
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (tokens[i].len > 0 && (int) tokens[i].normalized == normalized) {
            m->order[k++] = i;
        }
    }
    m->count = k;
    qsort_r(m->order, (size_t) k, sizeof(int), added_cmp, (void *) tokens);
    for (int i = 0, b = 0; b <= 256; b++) {
        while (i < k && (unsigned char) tokens[m->order[i]].content[0] < b) {
            i++;
        }
        m->bucket[b] = (uint32_t) i;
    }
    return 0;
}

void added_matcher_free(added_matcher *m)
{
    free(m->order);
    m->order = NULL;
    m->count = 0;
}

/* Decodes the code point that ends at s[end) (end > 0). */
static uint32_t cp_before(const uint8_t *s, size_t end, size_t *start)
{
    size_t i = end - 1;
    uint32_t cp = s[i];

    while (i > 0 && (s[i] & 0xC0) == 0x80 && end - i < 4) {
        i--;
    }
    if (utf8_scan(s + i, end - i, &cp) <= 0) {
        cp = s[end - 1];
        i = end - 1;
    }
    *start = i;
    return cp;
}

static int is_white_space(uint32_t cp)
{
    /* Rust's char::is_whitespace: the White_Space property. */
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0
           || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028
           || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

static int is_word_char(uint32_t cp)
{
    /* HF's single_word test: alphanumeric or underscore. */
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t) cp);

    return cp == '_' || (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO)
           || (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO);
}

int added_next(const added_matcher *m, const uint8_t *s, size_t n,
               size_t text_start, size_t *pos, added_split *split)
{
    if (m->count == 0) {
        *pos = n;
        return 0;
    }
    for (size_t i = *pos; i < n; i++) {
        uint32_t lo = m->bucket[s[i]], hi = m->bucket[s[i] + 1];
        const added_token *tok = NULL;
        int idx = -1;
        size_t start, end;

        for (uint32_t j = lo; j < hi; j++) {
            const added_token *t = &m->tokens[m->order[j]];

            if (t->len <= n - i && memcmp(s + i, t->content, t->len) == 0) {
                tok = t;
                idx = m->order[j];
                break;
            }
        }
        if (tok == NULL) {
            continue;
        }
        start = i;
        end = i + tok->len;
        *pos = end;
        if (tok->single_word) {
            size_t b;
            uint32_t cp;

            if (start > 0 && is_word_char(cp_before(s, start, &b))) {
                i = end - 1;
                continue;
            }
            if (end < n && utf8_scan(s + end, n - end, &cp) > 0 && is_word_char(cp)) {
                i = end - 1;
                continue;
            }
        }
        if (tok->lstrip) {
            while (start > text_start) {
                size_t b;

                if (!is_white_space(cp_before(s, start, &b))) {
                    break;
                }
                start = b;
            }
        }
        if (tok->rstrip) {
            while (end < n) {
                uint32_t cp;
                int r = utf8_scan(s + end, n - end, &cp);

                if (r <= 0 || !is_white_space(cp)) {
                    break;
                }
                end += (size_t) r;
            }
            *pos = end;
        }
        split->start = start;
        split->end = end;
        split->token = idx;
        return 1;
    }
    *pos = n;
    return 0;
}
