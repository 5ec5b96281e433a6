/*
 * Paged KV block manager with prefix caching (see kv_cache.h).
 *
 * Block states:
 *   free      refcnt 0, not cached   on the free stack
 *   cached    refcnt 0, cached       on the LRU list (evictable)
 *   used      refcnt > 0             cached or private
 * A cached block is in the hash table, keyed by (parent hash, tokens); the
 * tokens and parent are stored so a 64-bit hash collision can never share
 * the wrong KV.
 */
#include "kv_cache.h"

#include <stdlib.h>
#include <string.h>

struct kv_cache {
    int       n_blocks;
    int       block_size;
    int       prefix_caching;

    int32_t  *refcnt;
    int32_t  *free_stack;
    int       n_free;

    /* prefix cache */
    uint8_t  *cached;         /* block is in the hash table */
    uint64_t *hash;
    uint64_t *parent;
    int32_t  *tokens;         /* n_blocks * block_size */
    int32_t  *bucket;         /* heads, -1 empty */
    int32_t  *hnext;          /* chain in a bucket */
    uint64_t  bucket_mask;

    /* LRU of cached, unreferenced blocks: head is evicted first */
    int32_t  *lru_prev, *lru_next;
    int32_t   lru_head, lru_tail;
    int       lru_count;

    uint64_t  queries, hits;
};

/* splitmix64 finalizer: cheap and well mixed. */
static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t block_hash(uint64_t parent, const int32_t *tokens, int n)
{
    uint64_t h = mix64(parent ^ 0x6c6c6d2d6b76ULL);
    int i;

    for (i = 0; i < n; i++) {
        h = mix64(h ^ (uint32_t) tokens[i]);
    }
    /* 0 means "no parent"; keep real hashes distinct from it. */
    return h ? h : 1;
}

kv_cache *kv_cache_create(int n_blocks, int block_size, int prefix_caching)
{
    kv_cache *kv;
    uint64_t nb = 1;
    int i;

    if (n_blocks < 1 || block_size < 1) {
        return NULL;
    }
    kv = calloc(1, sizeof(*kv));
    if (kv == NULL) {
        return NULL;
    }
    kv->n_blocks = n_blocks;
    kv->block_size = block_size;
    kv->prefix_caching = prefix_caching;
    while (nb < (uint64_t) n_blocks * 2) {
        nb <<= 1;
    }
    kv->bucket_mask = nb - 1;

    kv->refcnt = calloc((size_t) n_blocks, sizeof(int32_t));
    kv->free_stack = malloc((size_t) n_blocks * sizeof(int32_t));
    kv->cached = calloc((size_t) n_blocks, 1);
    kv->hash = calloc((size_t) n_blocks, sizeof(uint64_t));
    kv->parent = calloc((size_t) n_blocks, sizeof(uint64_t));
    kv->tokens = malloc((size_t) n_blocks * block_size * sizeof(int32_t));
    kv->bucket = malloc(nb * sizeof(int32_t));
    kv->hnext = malloc((size_t) n_blocks * sizeof(int32_t));
    kv->lru_prev = malloc((size_t) n_blocks * sizeof(int32_t));
    kv->lru_next = malloc((size_t) n_blocks * sizeof(int32_t));
    if (!kv->refcnt || !kv->free_stack || !kv->cached || !kv->hash
        || !kv->parent || !kv->tokens || !kv->bucket || !kv->hnext
        || !kv->lru_prev || !kv->lru_next)
    {
        kv_cache_free(kv);
        return NULL;
    }
    for (i = 0; i < (int) nb; i++) {
        kv->bucket[i] = -1;
    }
    /* Lowest block numbers on top of the stack: handed out first. */
    for (i = 0; i < n_blocks; i++) {
        kv->free_stack[i] = n_blocks - 1 - i;
        kv->hnext[i] = -1;
        kv->lru_prev[i] = kv->lru_next[i] = -1;
    }
    kv->n_free = n_blocks;
    kv->lru_head = kv->lru_tail = -1;
    return kv;
}

void kv_cache_free(kv_cache *kv)
{
    if (kv == NULL) {
        return;
    }
    free(kv->refcnt);
    free(kv->free_stack);
    free(kv->cached);
    free(kv->hash);
    free(kv->parent);
    free(kv->tokens);
    free(kv->bucket);
    free(kv->hnext);
    free(kv->lru_prev);
    free(kv->lru_next);
    free(kv);
}

int kv_cache_block_size(const kv_cache *kv) { return kv->block_size; }
int kv_cache_num_blocks(const kv_cache *kv) { return kv->n_blocks; }

int kv_cache_num_available(const kv_cache *kv)
{
    return kv->n_free + kv->lru_count;
}

void kv_cache_get_stats(const kv_cache *kv, kv_cache_stats *s)
{
    s->blocks_total = kv->n_blocks;
    s->blocks_used = kv->n_blocks - kv->n_free - kv->lru_count;
    s->blocks_cached_free = kv->lru_count;
    s->queries = kv->queries;
    s->hits = kv->hits;
}

void kv_seq_init(kv_seq *s)
{
    memset(s, 0, sizeof(*s));
}

void kv_seq_destroy(kv_seq *s)
{
    free(s->blocks);
    memset(s, 0, sizeof(*s));
}

static int seq_reserve(kv_seq *s, int n)
{
    int32_t *nb;
    int cap;

    if (n <= s->cap) {
        return 0;
    }
    cap = s->cap ? s->cap : 8;
    while (cap < n) {
        cap *= 2;
    }
    nb = realloc(s->blocks, (size_t) cap * sizeof(int32_t));
    if (nb == NULL) {
        return -1;
    }
    s->blocks = nb;
    s->cap = cap;
    return 0;
}

/* ---- LRU ---------------------------------------------------------------- */

static void lru_remove(kv_cache *kv, int32_t b)
{
    int32_t p = kv->lru_prev[b], n = kv->lru_next[b];

    if (p >= 0) kv->lru_next[p] = n; else kv->lru_head = n;
    if (n >= 0) kv->lru_prev[n] = p; else kv->lru_tail = p;
    kv->lru_prev[b] = kv->lru_next[b] = -1;
    kv->lru_count--;
}

static void lru_append(kv_cache *kv, int32_t b)
{
    kv->lru_prev[b] = kv->lru_tail;
    kv->lru_next[b] = -1;
    if (kv->lru_tail >= 0) kv->lru_next[kv->lru_tail] = b;
    else kv->lru_head = b;
    kv->lru_tail = b;
    kv->lru_count++;
}

/* ---- hash table --------------------------------------------------------- */

static int32_t cache_lookup(const kv_cache *kv, uint64_t h, uint64_t parent,
                            const int32_t *tokens)
{
    int32_t b;
    size_t bytes = (size_t) kv->block_size * sizeof(int32_t);

    for (b = kv->bucket[h & kv->bucket_mask]; b >= 0; b = kv->hnext[b]) {
        if (kv->hash[b] == h && kv->parent[b] == parent
            && memcmp(kv->tokens + (size_t) b * kv->block_size, tokens,
                      bytes) == 0)
        {
            return b;
        }
    }
    return -1;
}

static void cache_insert(kv_cache *kv, int32_t b, uint64_t h, uint64_t parent,
                         const int32_t *tokens)
{
    uint64_t slot = h & kv->bucket_mask;

    kv->cached[b] = 1;
    kv->hash[b] = h;
    kv->parent[b] = parent;
    memcpy(kv->tokens + (size_t) b * kv->block_size, tokens,
           (size_t) kv->block_size * sizeof(int32_t));
    kv->hnext[b] = kv->bucket[slot];
    kv->bucket[slot] = b;
}

static void cache_remove(kv_cache *kv, int32_t b)
{
    int32_t *pp = &kv->bucket[kv->hash[b] & kv->bucket_mask];

    while (*pp >= 0 && *pp != b) {
        pp = &kv->hnext[*pp];
    }
    if (*pp == b) {
        *pp = kv->hnext[b];
    }
    kv->hnext[b] = -1;
    kv->cached[b] = 0;
}

/* ---- sequences ---------------------------------------------------------- */

int kv_cache_match_prefix(kv_cache *kv, kv_seq *s, const int32_t *tokens,
                          int n, int count_query)
{
    int bs = kv->block_size;
    int max_full, i;
    uint64_t parent = 0;

    if (count_query) {
        kv->queries += (uint64_t) (n > 0 ? n : 0);
    }
    if (!kv->prefix_caching || n <= 1 || s->n_blocks != 0) {
        return 0;
    }
    /* Leave at least the last token to compute. */
    max_full = (n - 1) / bs;
    if (seq_reserve(s, max_full) != 0) {
        return -1;
    }
    for (i = 0; i < max_full; i++) {
        const int32_t *bt = tokens + (size_t) i * bs;
        uint64_t h = block_hash(parent, bt, bs);
        int32_t b = cache_lookup(kv, h, parent, bt);

        if (b < 0) {
            break;
        }
        if (kv->refcnt[b] == 0) {
            lru_remove(kv, b);
        }
        kv->refcnt[b]++;
        s->blocks[s->n_blocks++] = b;
        parent = h;
    }
    s->n_hashed = i;
    s->last_hash = parent;
    if (count_query) {
        kv->hits += (uint64_t) i * bs;
    }
    return i * bs;
}

int kv_cache_blocks_needed(const kv_cache *kv, const kv_seq *s, int n_tokens)
{
    int want = (n_tokens + kv->block_size - 1) / kv->block_size;

    return want > s->n_blocks ? want - s->n_blocks : 0;
}

int kv_cache_allocate(kv_cache *kv, kv_seq *s, int n_tokens)
{
    int need = kv_cache_blocks_needed(kv, s, n_tokens);
    int i;

    if (need == 0) {
        return 0;
    }
    if (need > kv_cache_num_available(kv)
        || seq_reserve(s, s->n_blocks + need) != 0)
    {
        return -1;
    }
    for (i = 0; i < need; i++) {
        int32_t b;

        if (kv->n_free > 0) {
            b = kv->free_stack[--kv->n_free];
        } else {
            b = kv->lru_head;
            lru_remove(kv, b);
            cache_remove(kv, b);
        }
        kv->refcnt[b] = 1;
        s->blocks[s->n_blocks++] = b;
    }
    return 0;
}

void kv_cache_commit(kv_cache *kv, kv_seq *s, const int32_t *tokens,
                     int n_computed)
{
    int bs = kv->block_size;

    if (!kv->prefix_caching) {
        return;
    }
    while (s->n_hashed < s->n_blocks && (s->n_hashed + 1) * bs <= n_computed) {
        const int32_t *bt = tokens + (size_t) s->n_hashed * bs;
        int32_t b = s->blocks[s->n_hashed];
        uint64_t h = block_hash(s->last_hash, bt, bs);

        /* A block another sequence already cached with the same content
         * stays the cached one; ours remains private and is freed later. */
        if (!kv->cached[b] && cache_lookup(kv, h, s->last_hash, bt) < 0) {
            cache_insert(kv, b, h, s->last_hash, bt);
        }
        s->last_hash = h;
        s->n_hashed++;
    }
}

void kv_cache_release(kv_cache *kv, kv_seq *s)
{
    int i;

    /* Last blocks first: they join the LRU earlier and are evicted before
     * the shared prefix blocks they depend on. */
    for (i = s->n_blocks - 1; i >= 0; i--) {
        int32_t b = s->blocks[i];

        if (--kv->refcnt[b] > 0) {
            continue;
        }
        if (kv->cached[b]) {
            lru_append(kv, b);
        } else {
            kv->free_stack[kv->n_free++] = b;
        }
    }
    s->n_blocks = 0;
    s->n_hashed = 0;
    s->last_hash = 0;
}

void kv_cache_reset_prefix_cache(kv_cache *kv)
{
    while (kv->lru_head >= 0) {
        int32_t b = kv->lru_head;

        lru_remove(kv, b);
        cache_remove(kv, b);
        kv->free_stack[kv->n_free++] = b;
    }
}
