/*
 * Model loading and the CPU forward pass against transformers' goldens,
 * through the paged-KV path the engine uses: prefill, then decode step by
 * step.  Also: decode == prefill, chunked == whole prefill, batched ==
 * alone, thread counts and instruction sets agree, dummy weights, and the
 * loader's errors on broken model directories (written under /tmp).
 */
#include "unit.h"

#include <cJSON.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "cpu_kernels.h"
#include "model.h"
#include "safetensors.h"
#include "thread_pool.h"

#define BS         16
#define MAX_BLOCKS 16
#define N_BLOCKS   96

typedef struct {
    model       *m;
    llm_backend *be;
    int          vocab;
} fixture;

static int fixture_open(fixture *f, const char *dir, int dummy, int threads)
{
    char err[512];

    f->m = model_load(dir, dummy, 1234, err, sizeof(err));
    if (f->m == NULL) {
        fprintf(stderr, "  model_load(%s): %s\n", dir, err);
        return -1;
    }
    f->be = cpu_backend_create(f->m, threads, err, sizeof(err));
    if (f->be == NULL) {
        fprintf(stderr, "  cpu_backend_create: %s\n", err);
        model_free(f->m);
        return -1;
    }
    if (f->be->ops->kv_alloc(f->be, N_BLOCKS, BS, err, sizeof(err)) != 0) {
        fprintf(stderr, "  kv_alloc: %s\n", err);
        f->be->ops->destroy(f->be);
        model_free(f->m);
        return -1;
    }
    f->vocab = f->m->cfg.vocab_size;
    return 0;
}

static void fixture_close(fixture *f)
{
    if (f->be) f->be->ops->destroy(f->be);
    model_free(f->m);
}

/* One sequence's state: its block table (deliberately non-contiguous and
 * different per sequence) and how many tokens are cached. */
typedef struct {
    int32_t table[MAX_BLOCKS];
    int     len;
} seq_state;

static void seq_init(seq_state *s, int first_block, int stride)
{
    for (int i = 0; i < MAX_BLOCKS; i++) {
        s->table[i] = (first_block + i * stride) % N_BLOCKS;
    }
    s->len = 0;
}

/* Runs n tokens of several sequences in one batch: seqs[i] gets ids[i]
 * (counts[i] tokens).  all_rows: logits for every token, else only each
 * sequence's last; written in batch order.  Returns 0 on success. */
static int run_batch(fixture *f, int n_seqs, seq_state **seqs,
                     const int32_t **ids, const int *counts, int all_rows,
                     float *logits)
{
    int32_t tok[1024], pos[1024], start[9], len[8], rows[1024];
    int32_t tables[8 * MAX_BLOCKS];
    int n = 0, nl = 0;
    llm_batch b;
    char err[512];

    for (int s = 0; s < n_seqs; s++) {
        start[s] = n;
        for (int i = 0; i < counts[s]; i++) {
            tok[n] = ids[s][i];
            pos[n] = seqs[s]->len + i;
            if (all_rows || i == counts[s] - 1) {
                rows[nl++] = n;
            }
            n++;
        }
        len[s] = seqs[s]->len + counts[s];
        memcpy(tables + s * MAX_BLOCKS, seqs[s]->table, sizeof(seqs[s]->table));
    }
    start[n_seqs] = n;
    memset(&b, 0, sizeof(b));
    b.n_tokens = n;
    b.token_ids = tok;
    b.positions = pos;
    b.n_seqs = n_seqs;
    b.seq_start = start;
    b.seq_len = len;
    b.block_tables = tables;
    b.max_blocks = MAX_BLOCKS;
    b.logit_rows = rows;
    b.n_logits = nl;
    if (f->be->ops->forward(f->be, &b, logits, err, sizeof(err)) != 0) {
        fprintf(stderr, "  forward: %s\n", err);
        return -1;
    }
    for (int s = 0; s < n_seqs; s++) {
        seqs[s]->len += counts[s];
    }
    return 0;
}

static int run_one(fixture *f, seq_state *s, const int32_t *ids, int n,
                   int all_rows, float *logits)
{
    return run_batch(f, 1, &s, &ids, &n, all_rows, logits);
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++) {
        if (x[i] > x[best]) {
            best = i;
        }
    }
    return best;
}

static double rel_err(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double) a[i] - (double) b[i];
        num += d * d;
        den += (double) b[i] * (double) b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static int read_ids(const cJSON *arr, int32_t *out, int max)
{
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        if (n < max) {
            out[n++] = (int32_t) e->valuedouble;
        }
    }
    return n;
}

static int top10_equal(const float *logits, int vocab, const int32_t *want)
{
    /* the golden top-10 in order: each is the largest of what remains */
    for (int k = 0; k < 10; k++) {
        float v = logits[want[k]];
        int above = 0;
        for (int i = 0; i < vocab; i++) {
            above += logits[i] > v;
        }
        if (above != k) {
            return 0;
        }
    }
    return 1;
}

/* ---- goldens ------------------------------------------------------------- */

static void check_goldens(const char *dir)
{
    char path[256];
    char *text;
    cJSON *root, *p;
    fixture f;
    int k = 0;

    snprintf(path, sizeof(path), "%s/golden.json", dir);
    text = unit_read_file(path, NULL);
    REQUIRE(text != NULL, "cannot read %s", path);
    root = cJSON_Parse(text);
    free(text);
    REQUIRE(root != NULL, "bad %s", path);
    if (fixture_open(&f, dir, 0, 2) != 0) {
        cJSON_Delete(root);
        REQUIRE(0, "cannot open %s", dir);
    }
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(root, "prompts")) {
        int32_t ids[128], top10[10], pargmax[128], greedy[24];
        int n = read_ids(cJSON_GetObjectItem(p, "ids"), ids, 128);
        size_t gl;
        float *ref, *logits = malloc((size_t) (n + 1) * f.vocab * sizeof(float));
        seq_state s;
        double err;
        int ok = 1;

        read_ids(cJSON_GetObjectItem(p, "last_top10_ids"), top10, 10);
        read_ids(cJSON_GetObjectItem(p, "positions_argmax"), pargmax, 128);
        read_ids(cJSON_GetObjectItem(p, "greedy_24"), greedy, 24);
        snprintf(path, sizeof(path), "%s/logits_last_%d.f32", dir, k);
        ref = (float *) unit_read_file(path, &gl);
        CHECK(ref != NULL && gl == (size_t) f.vocab * 4, "%s", path);
        seq_init(&s, 3 + 7 * k, 5);
        CHECK(run_one(&f, &s, ids, n, 1, logits) == 0, "prefill");
        for (int i = 0; i < n; i++) {
            int a = argmax(logits + (size_t) i * f.vocab, f.vocab);
            if (a != pargmax[i]) {
                ok = 0;
                CHECK(a == pargmax[i], "%s prompt %d position %d: argmax %d, "
                      "golden %d", dir, k, i, a, pargmax[i]);
            }
        }
        if (ref) {
            err = rel_err(logits + (size_t) (n - 1) * f.vocab, ref, f.vocab);
            printf("# %s prompt %d (%d tokens): last-logits rel err %.3g\n",
                   dir, k, n, err);
            CHECK(err <= 1e-4, "%s prompt %d: rel err %g", dir, k, err);
        }
        CHECK(top10_equal(logits + (size_t) (n - 1) * f.vocab, f.vocab, top10),
              "%s prompt %d: top-10 differs", dir, k);
        /* greedy, step by step through the KV cache */
        {
            int32_t next = argmax(logits + (size_t) (n - 1) * f.vocab, f.vocab);
            for (int g = 0; g < 24 && ok; g++) {
                if (next != greedy[g]) {
                    CHECK(next == greedy[g], "%s prompt %d greedy step %d: %d, "
                          "golden %d", dir, k, g, next, greedy[g]);
                    break;
                }
                if (g == 23) break;
                CHECK(run_one(&f, &s, &next, 1, 0, logits) == 0, "decode");
                next = argmax(logits, f.vocab);
            }
        }
        free(ref);
        free(logits);
        k++;
    }
    CHECK(k == 4, "%d prompts", k);
    fixture_close(&f);
    cJSON_Delete(root);
}

static void test_golden_tied(void)   { check_goldens("t/fixtures/tiny-qwen3"); }
static void test_golden_untied(void) { check_goldens("t/fixtures/tiny-qwen3-untied"); }

/* A fixed mixed prompt of length n. */
static void make_prompt(int32_t *ids, int n, int salt)
{
    for (int i = 0; i < n; i++) {
        ids[i] = (int32_t) ((i * 7919 + salt * 104729 + 13) % 151000);
    }
}

/* Decode step by step == one prefill over the same tokens; prefill in
 * chunks of 7 == one chunk. */
static void test_decode_and_chunks_equal_prefill(void)
{
    fixture f;
    int32_t ids[60];
    int n = 60, p = 20;
    float *full, *step, *chunked;
    seq_state s;
    double worst = 0, worst_chunk = 0;

    REQUIRE(fixture_open(&f, "t/fixtures/tiny-qwen3-untied", 0, 2) == 0, "open");
    make_prompt(ids, n, 1);
    full = malloc((size_t) n * f.vocab * sizeof(float));
    step = malloc((size_t) n * f.vocab * sizeof(float));
    chunked = malloc((size_t) n * f.vocab * sizeof(float));
    seq_init(&s, 0, 1);
    REQUIRE(run_one(&f, &s, ids, n, 1, full) == 0, "full prefill");
    seq_init(&s, 40, 3);
    REQUIRE(run_one(&f, &s, ids, p, 1, step) == 0, "prompt");
    for (int i = p; i < n; i++) {
        REQUIRE(run_one(&f, &s, ids + i, 1, 0, step + (size_t) i * f.vocab) == 0,
                "decode %d", i);
    }
    for (int i = 0; i < n; i++) {
        double e = rel_err(step + (size_t) i * f.vocab, full + (size_t) i * f.vocab,
                           f.vocab);
        worst = e > worst ? e : worst;
    }
    printf("# decode vs prefill: worst rel err %.3g\n", worst);
    CHECK(worst <= 1e-5, "decode vs prefill rel err %g", worst);
    seq_init(&s, 17, 7);
    for (int i = 0; i < n; i += 7) {
        int c = n - i < 7 ? n - i : 7;
        REQUIRE(run_one(&f, &s, ids + i, c, 1, chunked + (size_t) i * f.vocab) == 0,
                "chunk at %d", i);
    }
    for (int i = 0; i < n; i++) {
        double e = rel_err(chunked + (size_t) i * f.vocab,
                           full + (size_t) i * f.vocab, f.vocab);
        worst_chunk = e > worst_chunk ? e : worst_chunk;
    }
    printf("# chunks of 7 vs one prefill: worst rel err %.3g\n", worst_chunk);
    CHECK(worst_chunk <= 1e-5, "chunked rel err %g", worst_chunk);
    free(full);
    free(step);
    free(chunked);
    fixture_close(&f);
}

/* Two sequences in one batch (prefill together, then a mixed step with one
 * decoding and one prefilling, then decode together) == each alone. */
static void test_batch_equals_alone(void)
{
    fixture f;
    int32_t a[40], bb[33];
    float *alone_a, *alone_b, *both;
    seq_state sa, sb, *two[2];
    const int32_t *ids[2];
    int counts[2];
    double worst = 0;
    int V;

    REQUIRE(fixture_open(&f, "t/fixtures/tiny-qwen3", 0, 2) == 0, "open");
    V = f.vocab;
    make_prompt(a, 40, 2);
    make_prompt(bb, 33, 3);
    alone_a = malloc((size_t) 40 * V * sizeof(float));
    alone_b = malloc((size_t) 40 * V * sizeof(float));
    both = malloc((size_t) 80 * V * sizeof(float));
    /* alone: a = 30 prefill + 10 decode; b = 20 prefill + 13 chunk */
    seq_init(&sa, 0, 2);
    REQUIRE(run_one(&f, &sa, a, 40, 1, alone_a) == 0, "a alone");
    seq_init(&sb, 1, 2);
    REQUIRE(run_one(&f, &sb, bb, 33, 1, alone_b) == 0, "b alone");
    /* together, with other blocks: step 1 prefill 30 + 20 */
    seq_init(&sa, 50, 5);
    seq_init(&sb, 51, 3);
    two[0] = &sa; two[1] = &sb;
    ids[0] = a; ids[1] = bb; counts[0] = 30; counts[1] = 20;
    REQUIRE(run_batch(&f, 2, two, ids, counts, 1, both) == 0, "step 1");
    for (int i = 0; i < 30; i++) {
        double e = rel_err(both + (size_t) i * V, alone_a + (size_t) i * V, V);
        worst = e > worst ? e : worst;
    }
    for (int i = 0; i < 20; i++) {
        double e = rel_err(both + (size_t) (30 + i) * V, alone_b + (size_t) i * V, V);
        worst = e > worst ? e : worst;
    }
    /* step 2: a decodes one token while b prefills its last 13 */
    ids[0] = a + 30; ids[1] = bb + 20; counts[0] = 1; counts[1] = 13;
    REQUIRE(run_batch(&f, 2, two, ids, counts, 1, both) == 0, "step 2");
    worst = fmax(worst, rel_err(both, alone_a + (size_t) 30 * V, V));
    for (int i = 0; i < 13; i++) {
        double e = rel_err(both + (size_t) (1 + i) * V, alone_b + (size_t) (20 + i) * V, V);
        worst = e > worst ? e : worst;
    }
    /* steps 3..: a decodes alone-in-batch with b decoding its own tokens */
    for (int i = 31; i < 40; i++) {
        int32_t nb = bb[(i * 5) % 33];
        ids[0] = a + i; ids[1] = &nb; counts[0] = 1; counts[1] = 1;
        REQUIRE(run_batch(&f, 2, two, ids, counts, 0, both) == 0, "step %d", i);
        worst = fmax(worst, rel_err(both, alone_a + (size_t) i * V, V));
    }
    printf("# batched vs alone: worst rel err %.3g\n", worst);
    CHECK(worst <= 1e-6, "batched vs alone rel err %g", worst);
    free(alone_a);
    free(alone_b);
    free(both);
    fixture_close(&f);
}

/* 1 thread == 3 threads, and every instruction set this CPU has agrees
 * with the scalar reference. */
static void test_threads_and_isas_agree(void)
{
    kern_isa best = kern_detect_isa();
    int32_t ids[37];
    float *ref, *got;
    fixture f;
    seq_state s;
    int V = 151936;

    make_prompt(ids, 37, 4);
    ref = malloc((size_t) 37 * V * sizeof(float));
    got = malloc((size_t) 37 * V * sizeof(float));
    kern_set_isa(KERN_ISA_SCALAR);
    REQUIRE(fixture_open(&f, "t/fixtures/tiny-qwen3-untied", 0, 1) == 0, "open");
    seq_init(&s, 0, 1);
    REQUIRE(run_one(&f, &s, ids, 37, 1, ref) == 0, "scalar");
    fixture_close(&f);
    for (int isa = KERN_ISA_AVX2; isa <= (int) best; isa++) {
        for (int th = 1; th <= 3; th += 2) {
            double e;
            kern_set_isa((kern_isa) isa);
            REQUIRE(fixture_open(&f, "t/fixtures/tiny-qwen3-untied", 0, th) == 0,
                    "open");
            seq_init(&s, 9, 4);
            REQUIRE(run_one(&f, &s, ids, 37, 1, got) == 0, "run");
            e = rel_err(got, ref, (size_t) 37 * V);
            printf("# %s, %d thread(s) vs scalar: rel err %.3g\n",
                   kern_isa_name((kern_isa) isa), th, e);
            CHECK(e <= 2e-5, "%s threads %d: rel err %g",
                  kern_isa_name((kern_isa) isa), th, e);
            fixture_close(&f);
        }
    }
    kern_set_isa(best);
    free(ref);
    free(got);
}

/* Dummy models of other shapes: head_dim 128 (vector-aligned) and 80
 * (masked tails), block sizes 16 and 5: decode == prefill, block size
 * does not change a bit, every ISA agrees with the scalar reference. */
static void write_config(const char *dir, int head_dim, const char *type)
{
    char p[512];
    FILE *f;

    mkdir(dir, 0755);
    snprintf(p, sizeof(p), "%s/config.json", dir);
    f = fopen(p, "w");
    if (f == NULL) {
        return;
    }
    fprintf(f, "{\"model_type\": \"%s\", \"vocab_size\": 1000, "
            "\"hidden_size\": 192, \"intermediate_size\": 160, "
            "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
            "\"num_key_value_heads\": 2, \"head_dim\": %d, "
            "\"max_position_embeddings\": 4096, \"rms_norm_eps\": 1e-6, "
            "\"rope_theta\": 1000000, \"tie_word_embeddings\": false, "
            "\"torch_dtype\": \"bfloat16\"}\n", type, head_dim);
    fclose(f);
}

static int run_shape(const char *dir, int bs, int threads, float *logits, int n,
                     const int32_t *ids, int step_from)
{
    char err[256];
    model *m = model_load(dir, 1, 99, err, sizeof(err));
    llm_backend *be;
    fixture f;
    seq_state s;
    int rc = 0;

    if (m == NULL) {
        fprintf(stderr, "  %s\n", err);
        return -1;
    }
    be = cpu_backend_create(m, threads, err, sizeof(err));
    if (be == NULL || be->ops->kv_alloc(be, N_BLOCKS, bs, err, sizeof(err)) != 0) {
        fprintf(stderr, "  %s\n", err);
        if (be) be->ops->destroy(be);
        model_free(m);
        return -1;
    }
    f.m = m;
    f.be = be;
    f.vocab = m->cfg.vocab_size;
    seq_init(&s, 11, 3);
    rc |= run_one(&f, &s, ids, step_from, 1, logits);
    for (int i = step_from; i < n && rc == 0; i++) {
        rc |= run_one(&f, &s, ids + i, 1, 0, logits + (size_t) i * f.vocab);
    }
    fixture_close(&f);
    return rc;
}

static void test_other_shapes(void)
{
    const int hds[] = { 128, 80 };
    const char *types[] = { "qwen3", "qwen2" };
    kern_isa best = kern_detect_isa();
    int32_t ids[70];
    int n = 70, V = 1000;
    float *ref = malloc((size_t) n * V * sizeof(float));
    float *got = malloc((size_t) n * V * sizeof(float));
    char dir[256];

    for (int i = 0; i < n; i++) {
        ids[i] = (int32_t) ((i * 37 + 5) % V);
    }
    for (int c = 0; c < 2; c++) {
        double e;
        snprintf(dir, sizeof(dir), "/tmp/llm-test-shape-%d-%d", (int) getpid(), c);
        write_config(dir, hds[c], types[c]);
        /* reference: one prefill, block size 16, best ISA */
        REQUIRE(run_shape(dir, 16, 2, ref, n, ids, n) == 0, "%s prefill", dir);
        REQUIRE(run_shape(dir, 5, 2, got, n, ids, 9) == 0, "%s decode bs 5", dir);
        e = rel_err(got, ref, (size_t) n * V);
        printf("# head_dim %d %s: decode with block size 5 vs prefill with 16: "
               "rel err %.3g\n", hds[c], types[c], e);
        CHECK(e <= 1e-6, "head_dim %d: rel err %g", hds[c], e);
        kern_set_isa(KERN_ISA_SCALAR);
        REQUIRE(run_shape(dir, 16, 1, got, n, ids, n) == 0, "%s scalar", dir);
        kern_set_isa(best);
        e = rel_err(got, ref, (size_t) n * V);
        printf("# head_dim %d %s: %s vs scalar: rel err %.3g\n", hds[c],
               types[c], kern_isa_name(best), e);
        CHECK(e <= 2e-5, "head_dim %d: %s vs scalar rel err %g", hds[c],
              kern_isa_name(best), e);
        snprintf(dir + strlen(dir), sizeof(dir) - strlen(dir), "/config.json");
        unlink(dir);
        dir[strlen(dir) - strlen("/config.json")] = '\0';
        rmdir(dir);
    }
    free(ref);
    free(got);
}

/* ---- thread pool ---------------------------------------------------------- */

typedef struct {
    int *hits;
    int  n;
} hit_job;

static void hit_task(void *ctx, int task, int thread)
{
    hit_job *j = ctx;
    (void) thread;
    __atomic_fetch_add(&j->hits[task], 1, __ATOMIC_RELAXED);
}

/* Every task of every job runs exactly once, jobs back to back, plain
 * and ranged (contiguous ranges, stealing) jobs mixed; pools are created and
 * destroyed at once (threads the scheduler starts late must still see the
 * stop). */
static void test_thread_pool(void)
{
    char err[128];
    static int hits[3000];
    int bad = 0;

    for (int round = 0; round < 50; round++) {
        thread_pool *p = thread_pool_create(1 + round % 4, err, sizeof(err));
        REQUIRE(p != NULL, "%s", err);
        for (int job = 0; job < (round % 5 == 0 ? 0 : 400); job++) {
            hit_job j = { hits, 1 + (job * 37 + round) % (job % 3 ? 300 : 3000) };
            memset(hits, 0, sizeof(hits));
            if (job % 2) {
                thread_pool_run_ranged(p, j.n, hit_task, &j);
            } else {
                thread_pool_run(p, j.n, hit_task, &j);
            }
            for (int t = 0; t < j.n; t++) {
                bad += hits[t] != 1;
            }
        }
        thread_pool_destroy(p);
    }
    CHECK(bad == 0, "%d tasks did not run exactly once", bad);
}

/* ---- config and dummy weights ---------------------------------------------- */

static void test_config_qwen3_4b(void)
{
    model_config c;
    generation_defaults g;
    char err[256];

    REQUIRE(model_config_load("t/fixtures/configs/qwen3-4b-instruct-2507", &c,
                              &g, err, sizeof(err)) == 0, "%s", err);
    CHECK(strcmp(c.model_type, "qwen3") == 0, "type %s", c.model_type);
    CHECK(c.n_layers == 36 && c.hidden_size == 2560 && c.n_heads == 32
          && c.n_kv_heads == 8 && c.head_dim == 128
          && c.intermediate_size == 9728 && c.vocab_size == 151936,
          "shape");
    CHECK(c.rope_theta == 5000000.0, "theta %g", c.rope_theta);
    CHECK(c.max_position_embeddings == 262144, "max pos");
    CHECK(c.tie_word_embeddings && c.qk_norm && !c.attention_bias, "flags");
    CHECK(c.torch_dtype == DTYPE_BF16, "dtype");
    CHECK(c.n_eos >= 2, "eos ids %d", c.n_eos);
    CHECK(fabsf(g.temperature - 0.7f) < 1e-6 && fabsf(g.top_p - 0.8f) < 1e-6
          && g.top_k == 20, "generation defaults");
    CHECK(g.min_p < 0 && g.repetition_penalty < 0, "absent defaults");
}

/* config.json variants: rope_scaling types, defaults, rejections. */
static int config_from(const char *json, model_config *c, char *err,
                       size_t errlen)
{
    char dir[128], p[256];
    generation_defaults g;
    FILE *f;
    int rc;

    snprintf(dir, sizeof(dir), "/tmp/llm-test-cfg-%d", (int) getpid());
    mkdir(dir, 0755);
    snprintf(p, sizeof(p), "%s/config.json", dir);
    f = fopen(p, "w");
    if (f == NULL) {
        return -2;
    }
    fputs(json, f);
    fclose(f);
    rc = model_config_load(dir, c, &g, err, errlen);
    unlink(p);
    rmdir(dir);
    return rc;
}

#define BASE_CFG "\"vocab_size\": 100, \"hidden_size\": 64, " \
    "\"intermediate_size\": 96, \"num_hidden_layers\": 1, " \
    "\"num_attention_heads\": 4, \"max_position_embeddings\": 4096"

static void test_config_variants(void)
{
    model_config c;
    char err[256];

    REQUIRE(config_from("{\"model_type\": \"llama\", " BASE_CFG "}", &c, err,
                        sizeof(err)) == 0, "%s", err);
    CHECK(c.n_kv_heads == 4 && c.head_dim == 16 && !c.qk_norm
          && !c.attention_bias && !c.tie_word_embeddings
          && c.rope_theta == 10000.0 && c.rope_scaling == ROPE_SCALING_NONE,
          "llama defaults");
    REQUIRE(config_from("{\"model_type\": \"qwen2\", " BASE_CFG
                        ", \"eos_token_id\": [5, 6, 5]}", &c, err,
                        sizeof(err)) == 0, "%s", err);
    CHECK(c.attention_bias && !c.qk_norm && c.n_eos == 2, "qwen2 flags");
    REQUIRE(config_from("{\"model_type\": \"qwen3\", " BASE_CFG
                        ", \"rope_scaling\": {\"rope_type\": \"yarn\", "
                        "\"factor\": 4.0, \"original_max_position_embeddings\":"
                        " 1024}}", &c, err, sizeof(err)) == 0, "%s", err);
    CHECK(c.rope_scaling == ROPE_SCALING_YARN && c.rope_factor == 4.0
          && c.rope_original_max_pos == 1024 && c.yarn_beta_fast == 32.0
          && c.yarn_beta_slow == 1.0, "yarn");
    REQUIRE(config_from("{\"model_type\": \"qwen3\", " BASE_CFG
                        ", \"rope_scaling\": {\"type\": \"linear\", "
                        "\"factor\": 2}}", &c, err, sizeof(err)) == 0, "%s", err);
    CHECK(c.rope_scaling == ROPE_SCALING_LINEAR && c.rope_factor == 2.0, "linear");
    REQUIRE(config_from("{\"model_type\": \"qwen3\", " BASE_CFG
                        ", \"rope_parameters\": {\"rope_type\": \"dynamic\", "
                        "\"factor\": 2, \"rope_theta\": 500000}}", &c, err,
                        sizeof(err)) == 0, "%s", err);
    CHECK(c.rope_scaling == ROPE_SCALING_DYNAMIC && c.rope_theta == 500000.0,
          "transformers 5 rope_parameters");
    CHECK(config_from("{\"model_type\": \"qwen3\", " BASE_CFG
                      ", \"rope_scaling\": {\"type\": \"longrope\", "
                      "\"factor\": 2}}", &c, err, sizeof(err)) != 0
          && strstr(err, "longrope") && strstr(err, "config.json"),
          "longrope: %s", err);
    CHECK(config_from("{\"model_type\": \"gpt2\", " BASE_CFG "}", &c, err,
                      sizeof(err)) != 0 && strstr(err, "gpt2"), "%s", err);
    CHECK(config_from("{\"model_type\": \"qwen3\", \"vocab_size\": 100}", &c,
                      err, sizeof(err)) != 0 && strstr(err, "hidden_size"),
          "%s", err);
    CHECK(config_from("{\"model_type\": \"qwen3\", " BASE_CFG
                      ", \"num_key_value_heads\": 3}", &c, err,
                      sizeof(err)) != 0 && strstr(err, "multiple"), "%s", err);
    CHECK(config_from("{\"model_type\": \"qwen3\", \"vocab_size\": 100, "
                      "\"hidden_size\": -5, \"intermediate_size\": 96, "
                      "\"num_hidden_layers\": 1, \"num_attention_heads\": 4}",
                      &c, err, sizeof(err)) != 0 && strstr(err, "hidden_size"),
          "negative hidden: %s", err);
    CHECK(config_from("{\"model_type\": \"qwen2\", " BASE_CFG
                      ", \"use_sliding_window\": true}", &c, err,
                      sizeof(err)) != 0 && strstr(err, "sliding"), "%s", err);
    CHECK(config_from("not json", &c, err, sizeof(err)) != 0
          && strstr(err, "config.json"), "%s", err);
}

/* Every rope scaling type runs (dummy weights) and gives finite logits
 * that differ from unscaled rope at positions past the original range. */
static void test_rope_scaling_runs(void)
{
    const char *scalings[] = {
        "null",
        "{\"type\": \"linear\", \"factor\": 4}",
        "{\"type\": \"dynamic\", \"factor\": 4, \"original_max_position_embeddings\": 8}",
        "{\"type\": \"yarn\", \"factor\": 4, \"original_max_position_embeddings\": 8}",
    };
    int32_t ids[40];
    float *out[4];
    char dir[128], p[256], err[256];
    int V = 1000;

    for (int i = 0; i < 40; i++) {
        ids[i] = (int32_t) ((i * 13 + 1) % V);
    }
    snprintf(dir, sizeof(dir), "/tmp/llm-test-rope-%d", (int) getpid());
    mkdir(dir, 0755);
    snprintf(p, sizeof(p), "%s/config.json", dir);
    for (int k = 0; k < 4; k++) {
        FILE *f = fopen(p, "w");
        model *m;
        fixture fx;
        seq_state s;
        REQUIRE(f != NULL, "write config");
        fprintf(f, "{\"model_type\": \"qwen3\", \"vocab_size\": 1000, "
                "\"hidden_size\": 64, \"intermediate_size\": 96, "
                "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
                "\"num_key_value_heads\": 2, \"head_dim\": 32, "
                "\"max_position_embeddings\": 4096, \"rope_scaling\": %s}\n",
                scalings[k]);
        fclose(f);
        out[k] = malloc((size_t) V * sizeof(float));
        m = model_load(dir, 1, 5, err, sizeof(err));
        REQUIRE(m != NULL, "%s", err);
        fx.m = m;
        fx.be = cpu_backend_create(m, 2, err, sizeof(err));
        REQUIRE(fx.be != NULL, "%s", err);
        REQUIRE(fx.be->ops->kv_alloc(fx.be, N_BLOCKS, BS, err, sizeof(err)) == 0,
                "%s", err);
        fx.vocab = V;
        seq_init(&s, 0, 1);
        CHECK(run_one(&fx, &s, ids, 40, 0, out[k]) == 0, "run %d", k);
        for (int i = 0; i < V; i++) {
            if (!isfinite(out[k][i])) {
                CHECK(0, "scaling %d: logit %d not finite", k, i);
                break;
            }
        }
        fixture_close(&fx);
    }
    for (int k = 1; k < 4; k++) {
        CHECK(rel_err(out[k], out[0], (size_t) V) > 1e-4,
              "scaling %d changes nothing", k);
    }
    for (int k = 0; k < 4; k++) {
        free(out[k]);
    }
    unlink(p);
    rmdir(dir);
}

static double bf16_sumsq(const tensor_ref *t, size_t n)
{
    double ss = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        uint32_t u;
        float v;
        memcpy(&h, (const uint8_t *) t->data + 2 * i, 2);
        u = (uint32_t) h << 16;
        memcpy(&v, &u, 4);
        ss += (double) v * v;
    }
    return ss;
}

/* Qwen3-0.6B's shape from its config alone; same seed same weights. */
static void test_dummy_weights(void)
{
    char err[256];
    const char *tiny = "t/fixtures/tiny-qwen3-untied";
    model *a = model_load("t/fixtures/configs/qwen3-0.6b", 1, 7, err, sizeof(err));
    model *t1, *t2, *t3;
    const layer_weights *l;
    size_t n;
    double var;

    REQUIRE(a != NULL, "dummy load: %s", err);
    l = &a->layers[27];
    CHECK(a->cfg.n_layers == 28, "layers");
    CHECK(l->gate_proj.shape[0] == 3072 && l->gate_proj.shape[1] == 1024
          && l->gate_proj.dtype == DTYPE_BF16, "gate shape");
    CHECK(l->q_proj.shape[0] == 2048 && l->o_proj.shape[1] == 2048, "q/o shape");
    CHECK(l->q_norm.shape[0] == 128 && l->k_norm.data != NULL, "qk norm");
    CHECK(a->lm_head.data == a->embed.data, "tied head");
    n = (size_t) l->down_proj.shape[0] * l->down_proj.shape[1];
    var = bf16_sumsq(&l->down_proj, n) / n * 3072;     /* N(0, 1/3072) */
    CHECK(fabs(var - 1.0) < 0.05, "down_proj variance x fan_in %g", var);
    var = bf16_sumsq(&a->embed, (size_t) 1024 * 151936) / (1024.0 * 151936);
    CHECK(fabs(var - 1.0) < 0.05, "embedding variance %g", var);
    model_free(a);

    t1 = model_load(tiny, 1, 7, err, sizeof(err));
    t2 = model_load(tiny, 1, 7, err, sizeof(err));
    t3 = model_load(tiny, 1, 8, err, sizeof(err));
    REQUIRE(t1 && t2 && t3, "tiny dummy: %s", err);
    CHECK(t1->lm_head.data != t1->embed.data, "untied head");
    n = (size_t) 151936 * 48 * 2;
    CHECK(memcmp(t1->lm_head.data, t2->lm_head.data, n) == 0,
          "same seed, same weights");
    CHECK(memcmp(t1->lm_head.data, t3->lm_head.data, n) != 0,
          "other seed, other weights");
    CHECK(memcmp(t1->layers[2].up_proj.data, t2->layers[2].up_proj.data,
                 80 * 48 * 2) == 0, "same seed, same layer weights");
    model_free(t1);
    model_free(t2);
    model_free(t3);
}

/* ---- broken model directories ------------------------------------------------- */

static int copy_file(const char *from, const char *to)
{
    size_t n;
    char *d = unit_read_file(from, &n);
    FILE *f;
    int ok;

    if (d == NULL || (f = fopen(to, "wb")) == NULL) {
        free(d);
        return -1;
    }
    ok = fwrite(d, 1, n, f) == n;
    fclose(f);
    free(d);
    return ok ? 0 : -1;
}

/* A fresh /tmp model directory with the tiny model's configs. */
static void make_dir(char *dir, size_t len, const char *tag)
{
    char p[512];

    snprintf(dir, len, "/tmp/llm-test-model-%d-%s", (int) getpid(), tag);
    mkdir(dir, 0755);
    snprintf(p, sizeof(p), "%s/config.json", dir);
    copy_file("t/fixtures/tiny-qwen3/config.json", p);
    snprintf(p, sizeof(p), "%s/generation_config.json", dir);
    copy_file("t/fixtures/tiny-qwen3/generation_config.json", p);
}

static void rm_dir(const char *dir)
{
    char p[512];
    const char *names[] = { "config.json", "generation_config.json",
                            "model.safetensors", "model.safetensors.index.json",
                            "model-00001-of-00002.safetensors",
                            "model-00002-of-00002.safetensors" };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* Writes a safetensors file holding the tensors of src selected by
 * keep(name) (NULL: all), with rename/reshape hooks applied to the header.
 * Returns 0 on success. */
typedef struct {
    const char *drop;          /* tensor left out of the header */
    const char *reshape;       /* tensor whose two dims are swapped */
    int         shard;         /* 0 all, 1 layers 0, 2 the rest */
    long        truncate_by;   /* bytes cut from the end */
    int         garbage_header;
} rewrite;

static int in_shard(const char *name, int shard)
{
    int first = strncmp(name, "model.layers.0.", 15) == 0;
    return shard == 0 || (shard == 1 && first) || (shard == 2 && !first);
}

static int write_model(const char *path, const rewrite *rw)
{
    char err[256];
    st_file *src = st_file_open("t/fixtures/tiny-qwen3/model.safetensors", err,
                                sizeof(err));
    cJSON *hdr = cJSON_CreateObject();
    char *json;
    uint64_t off = 0, hlen;
    FILE *f;
    long total;
    int rc = -1;

    if (src == NULL) {
        fprintf(stderr, "  %s\n", err);
        return -1;
    }
    for (int i = 0; i < src->n_tensors; i++) {
        const st_tensor *t = &src->tensors[i];
        cJSON *e, *shape, *offs;
        if (!in_shard(t->name, rw->shard)
            || (rw->drop && strcmp(t->name, rw->drop) == 0)) {
            continue;
        }
        e = cJSON_AddObjectToObject(hdr, t->name);
        cJSON_AddStringToObject(e, "dtype", st_dtype_name(t->dtype));
        shape = cJSON_AddArrayToObject(e, "shape");
        for (int d = 0; d < t->ndim; d++) {
            int dd = (rw->reshape && strcmp(t->name, rw->reshape) == 0
                      && t->ndim == 2) ? 1 - d : d;
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double) t->shape[dd]));
        }
        offs = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double) off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double) (off + t->nbytes)));
        off += t->nbytes;
    }
    json = cJSON_PrintUnformatted(hdr);
    if (rw->garbage_header) {
        memset(json, '{', strlen(json) / 2);
    }
    hlen = strlen(json);
    f = fopen(path, "wb");
    if (f != NULL) {
        unsigned char len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (unsigned char) (hlen >> (8 * i));
        fwrite(len8, 1, 8, f);
        fwrite(json, 1, hlen, f);
        for (int i = 0; i < src->n_tensors; i++) {
            const st_tensor *t = &src->tensors[i];
            if (!in_shard(t->name, rw->shard)
                || (rw->drop && strcmp(t->name, rw->drop) == 0)) {
                continue;
            }
            fwrite(t->data, 1, t->nbytes, f);
        }
        total = ftell(f);
        fclose(f);
        rc = 0;
        if (rw->truncate_by > 0 && truncate(path, total - rw->truncate_by) != 0) {
            rc = -1;
        }
    }
    free(json);
    cJSON_Delete(hdr);
    st_file_close(src);
    return rc;
}

static void expect_load_error(const char *dir, const char *want1,
                              const char *want2)
{
    char err[512] = "";
    model *m = model_load(dir, 0, 0, err, sizeof(err));

    CHECK(m == NULL, "%s loaded although broken", dir);
    model_free(m);
    CHECK(strstr(err, want1) != NULL, "error lacks '%s': %s", want1, err);
    if (want2) {
        CHECK(strstr(err, want2) != NULL, "error lacks '%s': %s", want2, err);
    }
    printf("# expected error: %s\n", err);
}

static void test_broken_models(void)
{
    char dir[256], p[512];
    rewrite rw;

    make_dir(dir, sizeof(dir), "broken");
    snprintf(p, sizeof(p), "%s/model.safetensors", dir);

    memset(&rw, 0, sizeof(rw));
    rw.drop = "model.layers.1.mlp.up_proj.weight";
    REQUIRE(write_model(p, &rw) == 0, "write");
    expect_load_error(dir, "model.layers.1.mlp.up_proj.weight", "missing");

    memset(&rw, 0, sizeof(rw));
    rw.reshape = "model.layers.0.self_attn.q_proj.weight";
    REQUIRE(write_model(p, &rw) == 0, "write");
    expect_load_error(dir, "model.layers.0.self_attn.q_proj.weight", "shape");

    memset(&rw, 0, sizeof(rw));
    rw.truncate_by = 100;
    REQUIRE(write_model(p, &rw) == 0, "write");
    expect_load_error(dir, "model.safetensors", "truncated");

    memset(&rw, 0, sizeof(rw));
    rw.garbage_header = 1;
    REQUIRE(write_model(p, &rw) == 0, "write");
    expect_load_error(dir, "model.safetensors", "JSON");

    unlink(p);
    expect_load_error(dir, dir, "model.safetensors");
    rm_dir(dir);
}

/* A model split into two shards loads and computes what the single file
 * does; without its second shard it is an error naming the shard. */
static void test_shards(void)
{
    char dir[256], p[512];
    rewrite rw;
    cJSON *idx, *map;
    st_file *src;
    char err[256], *json;
    FILE *f;
    fixture sharded, single;
    int32_t ids[12];
    float *la, *lb;
    seq_state s;

    make_dir(dir, sizeof(dir), "shards");
    memset(&rw, 0, sizeof(rw));
    for (int sh = 1; sh <= 2; sh++) {
        rw.shard = sh;
        snprintf(p, sizeof(p), "%s/model-0000%d-of-00002.safetensors", dir, sh);
        REQUIRE(write_model(p, &rw) == 0, "write shard %d", sh);
    }
    src = st_file_open("t/fixtures/tiny-qwen3/model.safetensors", err, sizeof(err));
    REQUIRE(src != NULL, "%s", err);
    idx = cJSON_CreateObject();
    map = cJSON_AddObjectToObject(idx, "weight_map");
    for (int i = 0; i < src->n_tensors; i++) {
        cJSON_AddStringToObject(map, src->tensors[i].name,
                                in_shard(src->tensors[i].name, 1)
                                    ? "model-00001-of-00002.safetensors"
                                    : "model-00002-of-00002.safetensors");
    }
    st_file_close(src);
    json = cJSON_Print(idx);
    snprintf(p, sizeof(p), "%s/model.safetensors.index.json", dir);
    f = fopen(p, "w");
    REQUIRE(f != NULL, "write index");
    fputs(json, f);
    fclose(f);
    free(json);
    cJSON_Delete(idx);

    REQUIRE(fixture_open(&sharded, dir, 0, 1) == 0, "sharded load");
    REQUIRE(fixture_open(&single, "t/fixtures/tiny-qwen3", 0, 1) == 0, "single");
    make_prompt(ids, 12, 5);
    la = malloc((size_t) sharded.vocab * sizeof(float));
    lb = malloc((size_t) sharded.vocab * sizeof(float));
    seq_init(&s, 0, 1);
    CHECK(run_one(&sharded, &s, ids, 12, 0, la) == 0, "run sharded");
    seq_init(&s, 0, 1);
    CHECK(run_one(&single, &s, ids, 12, 0, lb) == 0, "run single");
    CHECK(memcmp(la, lb, (size_t) sharded.vocab * sizeof(float)) == 0,
          "sharded and single logits differ");
    free(la);
    free(lb);
    fixture_close(&sharded);
    fixture_close(&single);

    snprintf(p, sizeof(p), "%s/model-00002-of-00002.safetensors", dir);
    unlink(p);
    expect_load_error(dir, "model-00002-of-00002.safetensors", "index");
    rm_dir(dir);
}

/* The forward refuses malformed batches instead of reading out of bounds. */
/* Resident set of this process, kB (VmRSS), or -1. */
static long rss_kb(void)
{
    char line[256];
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");

    if (f == NULL) {
        return -1;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) {
            break;
        }
    }
    fclose(f);
    return kb;
}

/* vm.overcommit_memory: 0 heuristic, 1 always, 2 never; -1 unknown */
static int overcommit_mode(void)
{
    int mode = -1;
    FILE *f = fopen("/proc/sys/vm/overcommit_memory", "r");

    if (f != NULL) {
        if (fscanf(f, "%d", &mode) != 1) {
            mode = -1;
        }
        fclose(f);
    }
    return mode;
}

/* The KV pool is committed when it is allocated (no page faults in the
 * middle of requests), and a pool the machine cannot hold is an error
 * naming the KV cache, not a crash later. */
static void test_kv_pool_committed(void)
{
    char err[256];
    model *m = model_load("t/fixtures/tiny-qwen3", 0, 1, err, sizeof(err));
    llm_backend *be, *be2;
    size_t per;
    int n;
    long before, after;

    REQUIRE(m != NULL, "%s", err);
    be = cpu_backend_create(m, 2, err, sizeof(err));
    REQUIRE(be != NULL, "%s", err);
    per = be->ops->kv_block_bytes(be, BS);
    n = (int) (((size_t) 48 << 20) / per);
    before = rss_kb();
    REQUIRE(be->ops->kv_alloc(be, n, BS, err, sizeof(err)) == 0, "%s", err);
    after = rss_kb();
    CHECK(before > 0 && after - before >= (long) ((size_t) n * per / 1024) * 9 / 10,
          "RSS grew by %ld kB for a %zu kB pool", after - before,
          (size_t) n * per / 1024);
    be->ops->destroy(be);

    if (overcommit_mode() == 1) {
        /* "always overcommit": the mapping succeeds and committing it
         * would call the OOM killer; nothing to check safely here */
        model_free(m);
        return;
    }
    be2 = cpu_backend_create(m, 2, err, sizeof(err));
    REQUIRE(be2 != NULL, "%s", err);
    /* 64 TiB: more than any machine this runs on has */
    n = (int) (((size_t) 64 << 40) / per > INT32_MAX / 2
               ? INT32_MAX / 2 : ((size_t) 64 << 40) / per);
    err[0] = '\0';
    CHECK(be2->ops->kv_alloc(be2, n, BS, err, sizeof(err)) != 0,
          "a %zu-byte pool was allocated", (size_t) n * per);
    CHECK(strstr(err, "KV cache") != NULL, "error: %s", err);
    be2->ops->destroy(be2);
    model_free(m);
}

static void test_bad_batches(void)
{
    fixture f;
    int32_t tok[2] = { 5, 6 }, pos[2] = { 0, 1 }, start[2] = { 0, 2 };
    int32_t len[1] = { 2 }, table[2] = { 0, 1 }, rows[1] = { 1 };
    llm_batch b;
    float *logits;
    char err[256];

    REQUIRE(fixture_open(&f, "t/fixtures/tiny-qwen3", 0, 1) == 0, "open");
    logits = malloc((size_t) f.vocab * sizeof(float));
    memset(&b, 0, sizeof(b));
    b.n_tokens = 2; b.token_ids = tok; b.positions = pos; b.n_seqs = 1;
    b.seq_start = start; b.seq_len = len; b.block_tables = table;
    b.max_blocks = 2; b.logit_rows = rows; b.n_logits = 1;
    CHECK(f.be->ops->forward(f.be, &b, logits, err, sizeof(err)) == 0, "%s", err);
    table[0] = N_BLOCKS;
    CHECK(f.be->ops->forward(f.be, &b, logits, err, sizeof(err)) != 0, "block");
    table[0] = 0;
    tok[1] = -1;
    CHECK(f.be->ops->forward(f.be, &b, logits, err, sizeof(err)) != 0, "token");
    tok[1] = 6;
    pos[1] = 2;
    CHECK(f.be->ops->forward(f.be, &b, logits, err, sizeof(err)) != 0, "pos");
    pos[1] = 1;
    rows[0] = 2;
    CHECK(f.be->ops->forward(f.be, &b, logits, err, sizeof(err)) != 0, "row");
    free(logits);
    fixture_close(&f);
}

int main(void)
{
    printf("# kernels: %s\n", kern_isa_name(kern_get_isa()));
    RUN(test_thread_pool);
    RUN(test_golden_tied);
    RUN(test_golden_untied);
    RUN(test_decode_and_chunks_equal_prefill);
    RUN(test_batch_equals_alone);
    RUN(test_threads_and_isas_agree);
    RUN(test_other_shapes);
    RUN(test_config_qwen3_4b);
    RUN(test_config_variants);
    RUN(test_rope_scaling_runs);
    RUN(test_dummy_weights);
    RUN(test_broken_models);
    RUN(test_shards);
    RUN(test_bad_batches);
    RUN(test_kv_pool_committed);
    return unit_done();
}
