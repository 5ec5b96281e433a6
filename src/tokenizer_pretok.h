/*
 * Pre-tokenizer: the Split(Regex, behavior Isolated) stages of
 * tokenizer.json, run with PCRE2 (JIT when available).  Hugging Face runs
 * these regexes with Oniguruma, whose Unicode \s is the White_Space
 * property (it includes U+0085, which PCRE2's \s does not): the pattern is
 * rewritten with \s and \S spelled out so both engines agree.  Matches and
 * the gaps between them are the pieces (Isolated); each stage splits the
 * pieces of the stage before.
 */
#ifndef LLM_TOKENIZER_PRETOK_H
#define LLM_TOKENIZER_PRETOK_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#define PRETOK_MAX_STAGES 4

/* GPT-2's regex, applied by ByteLevel when its use_regex is true. */
#define PRETOK_GPT2_PATTERN \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

typedef struct {
    pcre2_code *re[PRETOK_MAX_STAGES];
    int         n_stages;
} pretok;

/* Per-thread matching state (PCRE2 match data and JIT stack are not
 * shareable between threads). */
typedef struct {
    pcre2_match_data    *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack     *jit_stack;
} pretok_thread;

/* Adds a stage.  Returns 0, or -1 with a message in err (bad pattern,
 * too many stages). */
int  pretok_add_regex(pretok *p, const char *pattern, char *err, size_t errlen);
void pretok_free(pretok *p);

/* Rewrites \s and \S of pattern into Oniguruma's Unicode White_Space set
 * (spelled out; \S inside a character class becomes \P{White_Space}).
 * Returns a malloc'ed pattern, or NULL when out of memory. */
char *pretok_onig_pattern(const char *pattern, char *err, size_t errlen);

int  pretok_thread_init(pretok_thread *th);
void pretok_thread_free(pretok_thread *th);

/* Called for each piece in order; a non-zero return stops the split and
 * is returned by pretok_split. */
typedef int (*pretok_piece_fn)(void *ctx, const uint8_t *piece, size_t n);

/* Splits valid UTF-8 s[0..n) with every stage.  Returns 0, the callback's
 * non-zero value, or -1 on a matching error (message in err). */
int pretok_split(const pretok *p, pretok_thread *th, const uint8_t *s, size_t n,
                 pretok_piece_fn fn, void *ctx, char *err, size_t errlen);

#endif
