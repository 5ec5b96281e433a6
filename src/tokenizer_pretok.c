/*
 * Regex pre-tokenizer (see tokenizer_pretok.h).
 */
#include "tokenizer_pretok.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Oniguruma's \s in Unicode mode: the White_Space property. */
#define ONIG_SPACE_SET \
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}" \
    "\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

char *pretok_onig_pattern(const char *pattern, char *err, size_t errlen)
{
    size_t len = strlen(pattern), o = 0;
    size_t cap = len * (sizeof(ONIG_SPACE_SET) + 4) + 1;
    char *out = malloc(cap);
    int in_class = 0;

    if (out == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < len; i++) {
        char c = pattern[i];

        if (c == '\\' && i + 1 < len) {
            char e = pattern[i + 1];

            i++;
            if (e == 's') {
                o += (size_t) sprintf(out + o, in_class ? "%s" : "[%s]", ONIG_SPACE_SET);
            } else if (e == 'S') {
                /* A negated set cannot be spelled inside a class; the
                 * White_Space property (PCRE2 >= 10.40) is the same set. */
                if (in_class) {
                    o += (size_t) sprintf(out + o, "\\P{White_Space}");
                } else {
                    o += (size_t) sprintf(out + o, "[^%s]", ONIG_SPACE_SET);
                }
            } else {
                out[o++] = c;
                out[o++] = e;
            }
            continue;
        }
        if (c == '[') {
            in_class++;
        } else if (c == ']' && in_class > 0) {
            in_class--;
        }
        out[o++] = c;
    }
    out[o] = '\0';
    return out;
}

int pretok_add_regex(pretok *p, const char *pattern, char *err, size_t errlen)
{
    char *onig;
    int errcode;
    PCRE2_SIZE erroff;
    pcre2_code *re;

    if (p->n_stages >= PRETOK_MAX_STAGES) {
        snprintf(err, errlen, "more than %d regex pre-tokenizer stages", PRETOK_MAX_STAGES);
        return -1;
    }
    onig = pretok_onig_pattern(pattern, err, errlen);
    if (onig == NULL) {
        return -1;
    }
    re = pcre2_compile((PCRE2_SPTR) onig, PCRE2_ZERO_TERMINATED,
                       PCRE2_UTF | PCRE2_UCP, &errcode, &erroff, NULL);
    free(onig);
    if (re == NULL) {
        PCRE2_UCHAR msg[160];

        pcre2_get_error_message(errcode, msg, sizeof(msg));
        snprintf(err, errlen, "pre-tokenizer regex: %s at offset %zu of the rewritten pattern",
                 (const char *) msg, (size_t) erroff);
        return -1;
    }
    /* Without JIT (a platform PCRE2 lacks it for) the interpreter gives
     * the same matches, only slower. */
    (void) pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    p->re[p->n_stages++] = re;
    return 0;
}

void pretok_free(pretok *p)
{
    for (int i = 0; i < p->n_stages; i++) {
        pcre2_code_free(p->re[i]);
        p->re[i] = NULL;
    }
    p->n_stages = 0;
}

int pretok_thread_init(pretok_thread *th)
{
    /* One pair of offsets is all the splitter reads; PCRE2 reports a
     * match with rc 0 when groups do not fit, offsets still set. */
    th->md = pcre2_match_data_create(1, NULL);
    th->mctx = pcre2_match_context_create(NULL);
    /* Whitespace runs backtrack one character at a time; a large JIT
     * stack keeps megabyte-long runs matching. */
    th->jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (th->md == NULL || th->mctx == NULL || th->jit_stack == NULL) {
        pretok_thread_free(th);
        return -1;
    }
    pcre2_jit_stack_assign(th->mctx, NULL, th->jit_stack);
    return 0;
}

void pretok_thread_free(pretok_thread *th)
{
    pcre2_match_data_free(th->md);
    pcre2_match_context_free(th->mctx);
    pcre2_jit_stack_free(th->jit_stack);
    th->md = NULL;
    th->mctx = NULL;
    th->jit_stack = NULL;
}

static int pretok_stage(const pretok *p, pretok_thread *th, int stage,
                        const uint8_t *s, size_t n, pretok_piece_fn fn, void *ctx,
                        char *err, size_t errlen)
{
    const pcre2_code *re;
    PCRE2_SIZE *ov;
    size_t off = 0;
    int rc;

    if (stage == p->n_stages) {
        return n > 0 ? fn(ctx, s, n) : 0;
    }
    re = p->re[stage];
    ov = pcre2_get_ovector_pointer(th->md);
    while (off < n) {
        size_t start, end;

        /* PCRE2_NOTEMPTY: an empty match would split nothing (and the
         * tokenizer.json patterns in use never match empty). */
        rc = pcre2_match(re, s, n, off, PCRE2_NO_UTF_CHECK | PCRE2_NOTEMPTY,
                         th->md, th->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) {
            break;
        }
        if (rc < 0) {
            PCRE2_UCHAR msg[160];

            pcre2_get_error_message(rc, msg, sizeof(msg));
            snprintf(err, errlen, "pre-tokenizer regex failed at byte %zu: %s",
                     off, (const char *) msg);
            return -1;
        }
        start = ov[0];
        end = ov[1];
        if (start > off) {
            rc = pretok_stage(p, th, stage + 1, s + off, start - off, fn, ctx, err, errlen);
            if (rc != 0) {
                return rc;
            }
        }
        rc = pretok_stage(p, th, stage + 1, s + start, end - start, fn, ctx, err, errlen);
        if (rc != 0) {
            return rc;
        }
        off = end;
    }
    if (off < n) {
        return pretok_stage(p, th, stage + 1, s + off, n - off, fn, ctx, err, errlen);
    }
    return 0;
}

int pretok_split(const pretok *p, pretok_thread *th, const uint8_t *s, size_t n,
                 pretok_piece_fn fn, void *ctx, char *err, size_t errlen)
{
    return pretok_stage(p, th, 0, s, n, fn, ctx, err, errlen);
}
