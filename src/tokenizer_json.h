/*
 * A fast reader for the two big members of tokenizer.json, model.vocab
 * (an object of 150K "token": id pairs) and model.merges (150K "a b"
 * strings or ["a", "b"] pairs).  cJSON builds a node and a string per
 * item -- a million allocations and most of the load time -- so the
 * loader cuts these two members out, gives cJSON the rest, and reads
 * them here into flat arrays.  When the layout is not the expected one
 * the loader falls back to cJSON for everything.
 */
#ifndef LLM_TOKENIZER_JSON_H
#define LLM_TOKENIZER_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *key;        /* UTF-8, not NUL-terminated */
    uint32_t    len;
    int32_t     id;
} tjson_vocab_entry;

typedef struct {
    const char *a, *b;      /* the two halves, not NUL-terminated */
    uint32_t    alen, blen;
} tjson_merge_entry;

/* Largest token id accepted (as model config's vocab_size bound, 1 << 24).
 * Per-id tables are sized by the largest id, so a file naming id 1e9
 * would ask for some 25 GB however few tokens it has. */
#define TJSON_MAX_TOKEN_ID ((1 << 24) - 1)

/* Index just past the JSON value starting at s[i] (after whitespace), or
 * 0 when it is malformed. */
size_t tjson_skip_value(const char *s, size_t len, size_t i);

/* In the object whose '{' is at s[obj], finds member key (plain ASCII
 * key): sets the value's [start, end) and returns 1; 0 when absent, -1
 * when malformed.  end may be NULL: then the value is not scanned. */
int tjson_find_member(const char *s, size_t len, size_t obj, const char *key,
                      size_t *start, size_t *end);

/* Decodes the JSON string whose '"' is at s[*i] (s[0..end)) into out, which
 * has room for the raw length; moves *i past it.  Returns the decoded
 * length (U+0000 included as a byte), or -1 when malformed. */
long tjson_read_string(const char *s, size_t end, size_t *i, char *out);

/* Parses the vocab object s[start..end).  Decoded keys go to *strings
 * (malloc'ed, freed by the caller with the entries).  Returns the number
 * of entries, or -1 with err. */
long tjson_parse_vocab(const char *s, size_t start, size_t end,
                       tjson_vocab_entry **entries, char **strings,
                       char *err, size_t errlen);

/* Parses the merges array s[start..end): "a b" strings (split at the
 * first space) or ["a", "b"] pairs.  Returns the count, or -1 with err. */
long tjson_parse_merges(const char *s, size_t start, size_t end,
                        tjson_merge_entry **entries, char **strings,
                        char *err, size_t errlen);

/* tokenizer_load() without the fast reader: cJSON parses everything.
 * For tests that check both readers agree. */
struct tokenizer;
struct tokenizer *tokenizer_load_cjson_only(const char *tokenizer_json_path,
                                            char *err, size_t errlen);

#endif
