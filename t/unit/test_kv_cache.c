/*
 * Paged KV block manager: allocation, refcounts, prefix cache, LRU.
 */
#include "unit.h"
#include "kv_cache.h"

static void fill(int32_t *t, int n, int base)
{
    int i;

    for (i = 0; i < n; i++) {
        t[i] = base + i;
    }
}

static void test_allocate_release(void)
{
    kv_cache *kv = kv_cache_create(10, 16, 0);
    kv_seq a, b;
    kv_cache_stats st;

    REQUIRE(kv != NULL, "create");
    kv_seq_init(&a);
    kv_seq_init(&b);
    CHECK(kv_cache_allocate(kv, &a, 1) == 0, "one token");
    CHECK(a.n_blocks == 1, "%d blocks", a.n_blocks);
    CHECK(kv_cache_allocate(kv, &a, 16) == 0 && a.n_blocks == 1, "same block");
    CHECK(kv_cache_allocate(kv, &a, 17) == 0 && a.n_blocks == 2, "grows");
    CHECK(kv_cache_blocks_needed(kv, &a, 100) == 5, "needed %d",
          kv_cache_blocks_needed(kv, &a, 100));
    /* 8 left: 9 blocks more is refused, all or nothing */
    CHECK(kv_cache_allocate(kv, &b, 16 * 9) != 0, "too many");
    CHECK(b.n_blocks == 0, "nothing taken");
    CHECK(kv_cache_num_available(kv) == 8, "avail %d",
          kv_cache_num_available(kv));
    CHECK(kv_cache_allocate(kv, &b, 16 * 8) == 0, "exactly the rest");
    kv_cache_get_stats(kv, &st);
    CHECK(st.blocks_used == 10 && st.blocks_total == 10, "used %lld",
          (long long) st.blocks_used);
    /* distinct blocks */
    {
        int seen[10] = {0}, i, dup = 0;

        for (i = 0; i < a.n_blocks; i++) dup += seen[a.blocks[i]]++;
        for (i = 0; i < b.n_blocks; i++) dup += seen[b.blocks[i]]++;
        CHECK(dup == 0, "a block handed out twice");
    }
    kv_cache_release(kv, &a);
    kv_cache_release(kv, &b);
    kv_cache_get_stats(kv, &st);
    CHECK(st.blocks_used == 0, "used %lld after release",
          (long long) st.blocks_used);
    CHECK(kv_cache_num_available(kv) == 10, "all back");
    kv_seq_destroy(&a);
    kv_seq_destroy(&b);
    kv_cache_free(kv);
}

static void test_prefix_hit(void)
{
    kv_cache *kv = kv_cache_create(32, 16, 1);
    int32_t p1[70], p2[70];
    kv_seq a, b, c;
    int hit, i;
    kv_cache_stats st;

    REQUIRE(kv != NULL, "create");
    fill(p1, 70, 1000);
    memcpy(p2, p1, sizeof(p1));
    p2[40] = 7;                      /* differs inside block 2 */
    kv_seq_init(&a);
    kv_seq_init(&b);
    kv_seq_init(&c);

    CHECK(kv_cache_match_prefix(kv, &a, p1, 70, 1) == 0, "cold cache");
    REQUIRE(kv_cache_allocate(kv, &a, 70) == 0, "alloc a");
    kv_cache_commit(kv, &a, p1, 70);
    CHECK(a.n_hashed == 4, "4 full blocks hashed, got %d", a.n_hashed);

    hit = kv_cache_match_prefix(kv, &b, p2, 70, 1);
    CHECK(hit == 32, "shared prefix of two blocks, got %d", hit);
    for (i = 0; i < 2 && i < b.n_blocks; i++) {
        CHECK(b.blocks[i] == a.blocks[i], "block %d shared", i);
    }
    REQUIRE(kv_cache_allocate(kv, &b, 70) == 0, "alloc b");
    CHECK(b.blocks[2] != a.blocks[2], "new tokens go to a private block");
    kv_cache_get_stats(kv, &st);
    CHECK(st.queries == 140 && st.hits == 32, "queries %llu hits %llu",
          (unsigned long long) st.queries, (unsigned long long) st.hits);
    CHECK(st.blocks_used == 5 + 3, "used %lld", (long long) st.blocks_used);

    /* Exactly 64 tokens cached but a 64-token prompt: the last block is
     * recomputed so the last token has logits. */
    hit = kv_cache_match_prefix(kv, &c, p1, 64, 1);
    CHECK(hit == 48, "capped below the prompt length, got %d", hit);
    kv_cache_release(kv, &c);

    /* Released cached blocks stay findable until evicted. */
    kv_cache_release(kv, &a);
    kv_cache_release(kv, &b);
    kv_cache_get_stats(kv, &st);
    CHECK(st.blocks_used == 0, "used %lld", (long long) st.blocks_used);
    CHECK(st.blocks_cached_free == 4, "cached %lld",
          (long long) st.blocks_cached_free);
    hit = kv_cache_match_prefix(kv, &c, p1, 70, 1);
    CHECK(hit == 64, "hit after release, got %d", hit);
    kv_cache_release(kv, &c);

    kv_seq_destroy(&a);
    kv_seq_destroy(&b);
    kv_seq_destroy(&c);
    kv_cache_free(kv);
}

static void test_lru_eviction(void)
{
    kv_cache *kv = kv_cache_create(4, 4, 1);
    int32_t p[9], q[16];
    kv_seq a, b;
    int hit;

    REQUIRE(kv != NULL, "create");
    fill(p, 9, 1);
    fill(q, 16, 500);
    kv_seq_init(&a);
    kv_seq_init(&b);
    REQUIRE(kv_cache_allocate(kv, &a, 9) == 0, "a");
    kv_cache_commit(kv, &a, p, 9);
    kv_cache_release(kv, &a);           /* 2 cached, 1 free (partial block) */
    CHECK(kv_cache_num_available(kv) == 4, "cached blocks are available");
    /* Needing 3 blocks: 2 free first, then the LRU one, which is the later
     * block of the chain (released first). */
    REQUIRE(kv_cache_allocate(kv, &b, 12) == 0, "b evicts");
    kv_cache_release(kv, &b);
    hit = kv_cache_match_prefix(kv, &a, p, 9, 1);
    CHECK(hit == 4, "first block survived, second evicted: hit %d", hit);
    kv_cache_release(kv, &a);
    /* Disabled caching never hits. */
    kv_cache_reset_prefix_cache(kv);
    hit = kv_cache_match_prefix(kv, &a, p, 9, 1);
    CHECK(hit == 0, "reset drops the cache, got %d", hit);
    kv_cache_release(kv, &a);
    (void) q;
    kv_seq_destroy(&a);
    kv_seq_destroy(&b);
    kv_cache_free(kv);
}

static void test_shared_refcount(void)
{
    kv_cache *kv = kv_cache_create(8, 4, 1);
    int32_t p[9];
    kv_seq a, b;
    kv_cache_stats st;

    REQUIRE(kv != NULL, "create");
    fill(p, 9, 7);
    kv_seq_init(&a);
    kv_seq_init(&b);
    REQUIRE(kv_cache_allocate(kv, &a, 9) == 0, "a");
    kv_cache_commit(kv, &a, p, 9);
    CHECK(kv_cache_match_prefix(kv, &b, p, 9, 1) == 8, "b shares");
    REQUIRE(kv_cache_allocate(kv, &b, 9) == 0, "b");
    kv_cache_release(kv, &a);
    kv_cache_get_stats(kv, &st);
    /* b still holds the two shared blocks and its own third */
    CHECK(st.blocks_used == 3, "used %lld", (long long) st.blocks_used);
    CHECK(st.blocks_cached_free == 0, "shared blocks not evictable");
    kv_cache_release(kv, &b);
    kv_cache_get_stats(kv, &st);
    CHECK(st.blocks_used == 0 && st.blocks_cached_free == 2,
          "used %lld cached %lld", (long long) st.blocks_used,
          (long long) st.blocks_cached_free);
    kv_seq_destroy(&a);
    kv_seq_destroy(&b);
    kv_cache_free(kv);
}

int main(void)
{
    RUN(test_allocate_release);
    RUN(test_prefix_hit);
    RUN(test_lru_eviction);
    RUN(test_shared_refcount);
    return unit_done();
}
