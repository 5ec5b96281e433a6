/*
 * BPE merging (see tokenizer_bpe.h).
 */
#include "tokenizer_bpe.h"

#include <stdlib.h>
#include <string.h>

#define BPE_EMPTY_KEY UINT64_MAX

/* Piece cache: direct-mapped, 64-byte entries, pieces up to 26 bytes that
 * encode to at most 8 ids (nearly every English/code piece). */
#define BPE_CACHE_SLOTS   8192
#define BPE_CACHE_BYTES   26
#define BPE_CACHE_IDS     8

/* Scratch kept between pieces: up to 64K symbols (4 MB with the heap). */
#define BPE_SCRATCH_KEEP  65536

typedef struct {
    uint32_t hash;
    uint8_t  len;           /* 0: empty slot */
    uint8_t  n_ids;
    uint8_t  bytes[BPE_CACHE_BYTES];
    int32_t  ids[BPE_CACHE_IDS];
} bpe_cache_entry;

typedef struct {
    int32_t id;
    int32_t prev;
    int32_t next;
    int32_t len;            /* bytes covered; 0 once merged into prev */
} bpe_symbol;

typedef struct {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
    int32_t len;            /* bytes the pair covered when pushed */
} bpe_candidate;

struct bpe_scratch {
    bpe_symbol      *syms;
    bpe_candidate   *heap;
    size_t           cap;       /* symbols; the heap holds 3 * cap */
    bpe_cache_entry *cache;
};

static inline uint64_t bpe_mix(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

int bpe_merges_init(bpe_merges *m, size_t expected)
{
    size_t n = 1024;

    /* Load factor at most 2/3 (Qwen3: 151K merges in 256K slots, 4 MB):
     * lookups of pairs that do not merge end after a few probes in the
     * same cache lines. */
    while (n < expected + expected / 2) {
        n *= 2;
    }
    m->slots = malloc(n * sizeof(*m->slots));
    if (m->slots == NULL) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        m->slots[i].key = BPE_EMPTY_KEY;
    }
    m->mask = n - 1;
    m->count = 0;
    return 0;
}

void bpe_merges_free(bpe_merges *m)
{
    free(m->slots);
    m->slots = NULL;
}

int bpe_merges_put(bpe_merges *m, int32_t left, int32_t right,
                   int32_t rank, int32_t new_id)
{
    uint64_t key = (uint64_t) (uint32_t) left << 32 | (uint32_t) right;
    size_t i = bpe_mix(key) & m->mask;

    for (;;) {
        struct bpe_merge_entry *e = &m->slots[i];

        if (e->key == key) {
            e->rank = rank;
            e->new_id = new_id;
            return 0;
        }
        if (e->key == BPE_EMPTY_KEY) {
            if (3 * (m->count + 1) > 2 * (m->mask + 1)) {
                return -1;
            }
            e->key = key;
            e->rank = rank;
            e->new_id = new_id;
            m->count++;
            return 0;
        }
        i = (i + 1) & m->mask;
    }
}

int bpe_merges_get(const bpe_merges *m, int32_t left, int32_t right,
                   int32_t *rank, int32_t *new_id)
{
    uint64_t key = (uint64_t) (uint32_t) left << 32 | (uint32_t) right;
    size_t i = bpe_mix(key) & m->mask;

    for (;;) {
        const struct bpe_merge_entry *e = &m->slots[i];

        if (e->key == key) {
            *rank = e->rank;
            *new_id = e->new_id;
            return 1;
        }
        if (e->key == BPE_EMPTY_KEY) {
            return 0;
        }
        i = (i + 1) & m->mask;
    }
}

bpe_scratch *bpe_scratch_new(void)
{
    bpe_scratch *s = calloc(1, sizeof(*s));

    if (s == NULL) {
        return NULL;
    }
    s->cache = calloc(BPE_CACHE_SLOTS, sizeof(*s->cache));
    if (s->cache == NULL) {
        free(s);
        return NULL;
    }
    return s;
}

void bpe_scratch_free(bpe_scratch *s)
{
    if (s == NULL) {
        return;
    }
    free(s->syms);
    free(s->heap);
    free(s->cache);
    free(s);
}

static int bpe_scratch_reserve(bpe_scratch *s, size_t n)
{
    bpe_symbol *syms;
    bpe_candidate *heap;
    size_t cap = s->cap ? s->cap : 256;

    if (n <= s->cap) {
        return 0;
    }
    while (cap < n) {
        cap *= 2;
    }
    syms = malloc(cap * sizeof(*syms));
    heap = malloc(3 * cap * sizeof(*heap));
    if (syms == NULL || heap == NULL) {
        free(syms);
        free(heap);
        return -1;
    }
    free(s->syms);
    free(s->heap);
    s->syms = syms;
    s->heap = heap;
    s->cap = cap;
    return 0;
}

/* Heap order of merges.rs: lowest rank first, then leftmost position. */
static inline int bpe_before(const bpe_candidate *a, const bpe_candidate *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static inline void bpe_heap_push(bpe_candidate *h, size_t *n, bpe_candidate c)
{
    size_t i = (*n)++;

    while (i > 0) {
        size_t parent = (i - 1) / 2;

        if (!bpe_before(&c, &h[parent])) {
            break;
        }
        h[i] = h[parent];
        i = parent;
    }
    h[i] = c;
}

static inline bpe_candidate bpe_heap_pop(bpe_candidate *h, size_t *n)
{
    bpe_candidate top = h[0], last = h[--(*n)];
    size_t i = 0, count = *n;

    for (;;) {
        size_t child = 2 * i + 1;

        if (child >= count) {
            break;
        }
        if (child + 1 < count && bpe_before(&h[child + 1], &h[child])) {
            child++;
        }
        if (!bpe_before(&h[child], &last)) {
            break;
        }
        h[i] = h[child];
        i = child;
    }
    if (count > 0) {
        h[i] = last;
    }
    return top;
}

static inline uint32_t bpe_piece_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull ^ n;

    for (size_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 0x100000001b3ull;
    }
    return (uint32_t) (h ^ (h >> 32));
}

long bpe_encode_piece(const bpe_model *m, bpe_scratch *s,
                      const uint8_t *p, size_t n, int32_t *out)
{
    bpe_cache_entry *ce = NULL;
    uint32_t hash = 0;
    bpe_symbol *sy;
    bpe_candidate *heap;
    size_t heap_n = 0;
    long n_out = 0;

    if (n == 1) {
        out[0] = m->byte_ids[p[0]];
        return 1;
    }
    if (n <= BPE_CACHE_BYTES) {
        hash = bpe_piece_hash(p, n);
        ce = &s->cache[hash & (BPE_CACHE_SLOTS - 1)];
        if (ce->len == n && ce->hash == hash && memcmp(ce->bytes, p, n) == 0) {
            memcpy(out, ce->ids, ce->n_ids * sizeof(int32_t));
            return ce->n_ids;
        }
    }
    if (bpe_scratch_reserve(s, n) != 0) {
        return -1;
    }
    sy = s->syms;
    heap = s->heap;
    for (size_t i = 0; i < n; i++) {
        sy[i].id = m->byte_ids[p[i]];
        sy[i].prev = (int32_t) i - 1;
        sy[i].next = i + 1 < n ? (int32_t) i + 1 : -1;
        sy[i].len = 1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        bpe_candidate c;

        if (bpe_merges_get(&m->merges, sy[i].id, sy[i + 1].id, &c.rank, &c.new_id)) {
            c.pos = (int32_t) i;
            c.len = 2;
            bpe_heap_push(heap, &heap_n, c);
        }
    }
    while (heap_n > 0) {
        bpe_candidate top = bpe_heap_pop(heap, &heap_n), c;
        bpe_symbol *cur = &sy[top.pos];
        int32_t next, rank, new_id;

        if (cur->len == 0 || cur->next < 0) {
            continue;
        }
        next = cur->next;
        /* An entry is stale when the pair at its position no longer
         * merges into the same token (merges.rs compares new ids).  Symbols
         * only grow, so the pair is unchanged exactly when it covers as
         * many bytes as when pushed: then no lookup is needed.  Otherwise
         * ask as merges.rs does (a different pair whose merged string is a
         * different token never gives the same id). */
        if (cur->len + sy[next].len != top.len
            && (!bpe_merges_get(&m->merges, cur->id, sy[next].id, &rank, &new_id)
                || new_id != top.new_id)) {
            continue;
        }
        cur->id = top.new_id;
        cur->len += sy[next].len;
        cur->next = sy[next].next;
        sy[next].len = 0;
        if (cur->next >= 0) {
            sy[cur->next].prev = top.pos;
        }
        if (cur->prev >= 0
            && bpe_merges_get(&m->merges, sy[cur->prev].id, cur->id, &c.rank, &c.new_id)) {
            c.pos = cur->prev;
            c.len = sy[cur->prev].len + cur->len;
            bpe_heap_push(heap, &heap_n, c);
        }
        if (cur->next >= 0
            && bpe_merges_get(&m->merges, cur->id, sy[cur->next].id, &c.rank, &c.new_id)) {
            c.pos = top.pos;
            c.len = cur->len + sy[cur->next].len;
            bpe_heap_push(heap, &heap_n, c);
        }
    }
    for (int32_t i = 0; i >= 0; i = sy[i].next) {
        out[n_out++] = sy[i].id;
    }
    if (ce != NULL && n_out <= BPE_CACHE_IDS) {
        ce->hash = hash;
        ce->len = (uint8_t) n;
        ce->n_ids = (uint8_t) n_out;
        memcpy(ce->bytes, p, n);
        memcpy(ce->ids, out, (size_t) n_out * sizeof(int32_t));
    }
    if (s->cap > BPE_SCRATCH_KEEP) {
        /* A huge piece (a megabyte of one letter) needed 64 bytes a byte
         * of scratch: give it back rather than keep it for the thread's
         * life. */
        free(s->syms);
        free(s->heap);
        s->syms = NULL;
        s->heap = NULL;
        s->cap = 0;
    }
    return n_out;
}
