/*
 * Paged KV block manager: a pool of fixed-size blocks, a free list,
 * reference counts, per-sequence block tables and a prefix cache.
 *
 * The manager only hands out block numbers; the backend owns the memory
 * (token t of a sequence lives in block table[t / block_size], slot
 * t % block_size).
 *
 * Prefix cache.  A full block whose tokens have all been computed is keyed
 * by a hash chain: hash(parent block's hash, the block's tokens).  A new
 * sequence looks its prompt up block by block and shares the blocks found
 * (reference count + 1).  A block whose reference count drops to zero
 * stays cached, on an LRU list, until a new allocation needs it; blocks
 * that were never cached go straight back to the free list.
 *
 * Not thread-safe: only the engine thread touches it.
 */
#ifndef LLM_KV_CACHE_H
#define LLM_KV_CACHE_H

#include <stdint.h>

typedef struct kv_cache kv_cache;

/* One sequence's block table and its prefix-cache bookkeeping. */
typedef struct {
    int32_t  *blocks;       /* block numbers, in token order */
    int       n_blocks;
    int       cap;
    int       n_hashed;     /* leading full blocks whose hash is known */
    uint64_t  last_hash;    /* hash of block n_hashed - 1 (0: none) */
} kv_seq;

typedef struct {
    int64_t  blocks_total;
    int64_t  blocks_used;        /* referenced by some sequence */
    int64_t  blocks_cached_free; /* unreferenced but still in the cache */
    uint64_t queries;            /* prompt tokens looked up */
    uint64_t hits;               /* prompt tokens found */
} kv_cache_stats;

/* Returns NULL if n_blocks < 1, block_size < 1 or memory runs out. */
kv_cache *kv_cache_create(int n_blocks, int block_size, int prefix_caching);
void kv_cache_free(kv_cache *kv);

int kv_cache_block_size(const kv_cache *kv);
int kv_cache_num_blocks(const kv_cache *kv);
/* Blocks an allocation may take: free ones plus evictable cached ones. */
int kv_cache_num_available(const kv_cache *kv);
void kv_cache_get_stats(const kv_cache *kv, kv_cache_stats *s);

void kv_seq_init(kv_seq *s);
/* Releases the table itself; the sequence must hold no blocks. */
void kv_seq_destroy(kv_seq *s);

/*
 * Looks up the longest cached prefix of tokens[0..n) in whole blocks, but
 * never all n tokens: at least the last token is left to compute, so its
 * logits exist and new KV is always written into a private block.  The
 * sequence must hold no blocks.  Found blocks are referenced and appended
 * to the table.  Returns the number of cached tokens (a multiple of the
 * block size), or -1 if the table cannot grow (out of memory).
 * count_query: add n to the query statistics and the result to the hits
 * (off when a preempted sequence is readmitted).
 */
int kv_cache_match_prefix(kv_cache *kv, kv_seq *s, const int32_t *tokens,
                          int n, int count_query);

/* Blocks the sequence needs beyond what it holds to cover n_tokens. */
int kv_cache_blocks_needed(const kv_cache *kv, const kv_seq *s, int n_tokens);

/*
 * Makes the table cover n_tokens positions, taking free blocks first and
 * evicting least recently used cached blocks after.  All or nothing:
 * returns 0, or -1 (nothing allocated) when not enough blocks are left.
 */
int kv_cache_allocate(kv_cache *kv, kv_seq *s, int n_tokens);

/*
 * Tells the cache that tokens[0..n_computed) of the sequence now have
 * their KV written: full blocks among them get their hash and enter the
 * prefix cache (unless an identical block is already cached).
 */
void kv_cache_commit(kv_cache *kv, kv_seq *s, const int32_t *tokens,
                     int n_computed);

/* Drops the sequence's references; the table becomes empty. */
void kv_cache_release(kv_cache *kv, kv_seq *s);

/* Forgets every cached but unreferenced block (tests, reset). */
void kv_cache_reset_prefix_cache(kv_cache *kv);

#endif
