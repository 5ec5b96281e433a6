/*
 * Added tokens of tokenizer.json (special tokens and the like): matched in
 * the text before anything else and never split, as Hugging Face's
 * AddedVocabulary does (leftmost-longest, then single_word / lstrip /
 * rstrip).  Tokens with normalized=false are matched on the raw text,
 * those with normalized=true on the NFC-normalized text.
 */
#ifndef LLM_TOKENIZER_ADDED_H
#define LLM_TOKENIZER_ADDED_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char    *content;       /* UTF-8, NUL-terminated */
    size_t   len;
    int32_t  id;
    unsigned special : 1;
    unsigned lstrip : 1;
    unsigned rstrip : 1;
    unsigned single_word : 1;
    unsigned normalized : 1;
} added_token;

/* Tokens of one kind (raw or normalized), bucketed by first byte and
 * longest first inside a bucket, so the first hit is the longest. */
typedef struct {
    const added_token *tokens;  /* the tokenizer's array */
    int               *order;   /* indexes into tokens */
    uint32_t           bucket[257];
    int                count;
} added_matcher;

/* Builds the matcher of the tokens whose normalized flag equals
 * `normalized`.  Returns -1 when out of memory. */
int  added_matcher_init(added_matcher *m, const added_token *tokens, int n,
                        int normalized);
void added_matcher_free(added_matcher *m);

/* One split of the text: either plain text or an added token. */
typedef struct {
    size_t start, end;
    int    token;               /* index in tokens, or -1 for text */
} added_split;

/*
 * Finds the next added token at or after *pos in s[0..n): sets *split to
 * the token's span (lstrip/rstrip whitespace included, never reaching back
 * before text_start) and returns 1; 0 when there is none.  *pos moves past
 * the match either way.
 */
int added_next(const added_matcher *m, const uint8_t *s, size_t n,
               size_t text_start, size_t *pos, added_split *split);

#endif
