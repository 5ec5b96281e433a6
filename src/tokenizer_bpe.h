/*
 * Byte-pair encoding of one pre-tokenized piece, exactly as Hugging Face
 * `tokenizers` (models/bpe/word.rs merge_all) does it: a min-heap of
 * candidate merges ordered by (rank, position), stale entries skipped, so a
 * piece of n bytes costs O(n log n) even when it is a megabyte of one
 * letter.  Results of short pieces are kept in a small per-thread cache.
 */
#ifndef LLM_TOKENIZER_BPE_H
#define LLM_TOKENIZER_BPE_H

#include <stddef.h>
#include <stdint.h>

/* Merge table: (left id, right id) -> (rank, id of the merged token). */
typedef struct {
    struct bpe_merge_entry {
        uint64_t key;       /* left << 32 | right; BPE_EMPTY_KEY when free */
        int32_t  rank;
        int32_t  new_id;
    }       *slots;
    size_t   mask;
    size_t   count;
} bpe_merges;

typedef struct {
    bpe_merges merges;
    int32_t    byte_ids[256];   /* id of each single-byte token */
} bpe_model;

/* Per-thread working memory: symbol list, heap and the piece cache. */
typedef struct bpe_scratch bpe_scratch;

int  bpe_merges_init(bpe_merges *m, size_t expected);
void bpe_merges_free(bpe_merges *m);
/* Adds or replaces (a later duplicate wins, as in HF's HashMap collect).
 * Returns -1 when the table is full (cannot happen when expected was
 * right: the table is sized for it). */
int  bpe_merges_put(bpe_merges *m, int32_t left, int32_t right,
                    int32_t rank, int32_t new_id);
/* Returns 1 and sets rank/new_id when the pair merges, else 0. */
int  bpe_merges_get(const bpe_merges *m, int32_t left, int32_t right,
                    int32_t *rank, int32_t *new_id);

bpe_scratch *bpe_scratch_new(void);
void bpe_scratch_free(bpe_scratch *s);

/*
 * Encodes the raw bytes p[0..n) (n >= 1) into out, which has room for n
 * ids.  Returns the number of ids, or -1 when out of memory.
 */
long bpe_encode_piece(const bpe_model *m, bpe_scratch *s,
                      const uint8_t *p, size_t n, int32_t *out);

#endif
