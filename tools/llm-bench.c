/*
 * llm-bench: offline throughput/latency benchmark of the engine, in the
 * spirit of vLLM's benchmark_serving with random prompts, but without a
 * server in between.
 *
 *   llm-bench MODEL_DIR --input-len 128 --output-len 128 --num-prompts 64 \
 *             --concurrency 16 [--device cpu|cuda] [--load-format dummy] \
 *             [--json FILE]
 *
 * Prompts are random token ids (seeded), generation ignores eos so every
 * request produces exactly --output-len tokens, sampling is greedy.  At
 * most --concurrency requests are in flight; a new one is submitted as
 * soon as one finishes.  Latencies are measured on the caller's thread
 * when events arrive, as a client would see them:
 *   TTFT  submit -> first token          E2E   submit -> last token
 *   TPOT  (E2E - TTFT) / (tokens - 1)    ITL   gap between token events
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llm.h"

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    llm_request *r;
    int32_t     *prompt;
    double       t_submit, t_first, t_last;
    int          n_out;
    int          done;
} bench_req;

#include "bench_stats.h"

/* What one run of requests measured. */
typedef struct {
    series    ttft, tpot, itl, e2e;
    long long total_out, total_in;
    int       failed;
} run_metrics;

static void run_metrics_free(run_metrics *m)
{
    free(m->ttft.v);
    free(m->tpot.v);
    free(m->itl.v);
    free(m->e2e.v);
}

/* Runs requests reqs[0..n) with at most `concurrency` in flight, a new one
 * submitted as soon as one finishes.  -1 if the engine refused one. */
static int run_requests(llm_engine *e, bench_req *reqs, int n,
                        int concurrency, int input_len, int output_len,
                        run_metrics *m)
{
    char err[LLM_ERR_MAX];
    int next = 0, in_flight = 0, finished = 0, i;

    while (finished < n) {
        llm_request *ready[64];

        while (in_flight < concurrency && next < n) {
            llm_request_params p;
            llm_status st;
            bench_req *b = &reqs[next];

            llm_request_params_init(&p);
            p.kind = LLM_PROMPT_TOKENS;
            p.tokens = b->prompt;
            p.n_tokens = input_len;
            p.max_tokens = output_len;
            p.ignore_eos = 1;
            p.sampling.temperature = 0;
            b->t_submit = now_s();
            b->r = llm_submit(e, &p, &st, err, sizeof(err));
            if (b->r == NULL) {
                fprintf(stderr, "llm-bench: request %d refused: %s\n", next, err);
                return -1;
            }
            next++;
            in_flight++;
        }
        llm_engine_wait(e, 50);
        while (llm_engine_ready(e, ready, 64) > 0) {
        }
        for (i = 0; i < next; i++) {
            bench_req *b = &reqs[i];
            llm_event ev;

            if (b->done) {
                continue;
            }
            while (!b->done && llm_request_next_event(b->r, &ev)) {
                double t = now_s();

                if (ev.type == LLM_EV_TOKEN && ev.n_tokens > 0) {
                    if (b->n_out == 0) {
                        b->t_first = t;
                    } else {
                        series_add(&m->itl, t - b->t_last);
                    }
                    b->t_last = t;
                    b->n_out += ev.n_tokens;
                } else if (ev.type == LLM_EV_FINISH || ev.type == LLM_EV_ERROR) {
                    if (ev.type == LLM_EV_ERROR) {
                        fprintf(stderr, "llm-bench: request %d failed: %s\n", i,
                                ev.message ? ev.message : "");
                        m->failed++;
                    }
                    b->done = 1;
                    finished++;
                    in_flight--;
                }
                llm_event_free(&ev);
            }
            if (b->done && b->r) {
                llm_request_release(b->r);
                b->r = NULL;
                if (b->n_out > 0) {
                    series_add(&m->ttft, b->t_first - b->t_submit);
                    series_add(&m->e2e, b->t_last - b->t_submit);
                    if (b->n_out > 1) {
                        series_add(&m->tpot, (b->t_last - b->t_first) / (b->n_out - 1));
                    }
                    m->total_out += b->n_out;
                    m->total_in += input_len;
                }
            }
        }
    }
    return 0;
}

static void print_usage(FILE *f)
{
    fprintf(f,
"usage: llm-bench MODEL_DIR [options]\n"
"  --input-len N              prompt tokens per request (default 128)\n"
"  --output-len N             generated tokens per request (default 128)\n"
"  --num-prompts N            requests in total (default 32)\n"
"  --concurrency N            requests in flight at most (default: all)\n"
"  --device cpu|cuda|cuda:N   (default cpu)\n"
"  --threads N                CPU compute threads (default: online cores)\n"
"  --load-format auto|dummy   dummy: random weights of the configured shape\n"
"  --precision exact|fast     CPU matmul precision (default exact)\n"
"  --kv-cache-dtype auto|float32|bfloat16  KV cache elements (default auto)\n"
"  --max-num-seqs N  --max-num-batched-tokens N  --max-model-len N\n"
"  --kv-cache-bytes N  --kv-cache-fraction F  --no-prefix-caching\n"
"  --seed N                   prompt and weight seed (default 0)\n"
"  --warmup N                 unmeasured requests first (default 0)\n"
"  --json FILE                also write the results as JSON\n");
}

int main(int argc, char **argv)
{
    llm_engine_options o;
    llm_engine *e;
    llm_model_info info;
    char err[LLM_ERR_MAX];
    int input_len = 128, output_len = 128, num_prompts = 32, concurrency = 0;
    uint64_t seed = 0, x;
    const char *json_path = NULL;
    bench_req *reqs;
    run_metrics m = { 0 };
    summary s_ttft, s_tpot, s_itl, s_e2e;
    llm_stats es, es0;
    int warmup = 0, failed, i, j;
    long long total_out, total_in;
    double t_load, t_start, t_end, dur, cpu, cpu_end;

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        print_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    llm_engine_options_init(&o);
    o.model_dir = argv[1];
    for (i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;

#define ARG(name) (strcmp(a, name) == 0 && v != NULL && ++i)
        if (ARG("--input-len")) input_len = atoi(v);
        else if (ARG("--output-len")) output_len = atoi(v);
        else if (ARG("--num-prompts")) num_prompts = atoi(v);
        else if (ARG("--concurrency")) concurrency = atoi(v);
        else if (ARG("--device")) o.device = v;
        else if (ARG("--threads")) o.threads = atoi(v);
        else if (ARG("--max-num-seqs")) o.max_num_seqs = atoi(v);
        else if (ARG("--max-num-batched-tokens")) o.max_num_batched_tokens = atoi(v);
        else if (ARG("--max-model-len")) o.max_model_len = atoi(v);
        else if (ARG("--kv-cache-bytes")) o.kv_cache_bytes = strtoll(v, NULL, 10);
        else if (ARG("--kv-cache-fraction")) o.kv_cache_fraction = atof(v);
        else if (ARG("--seed")) seed = strtoull(v, NULL, 10);
        else if (ARG("--warmup")) warmup = atoi(v);
        else if (ARG("--json")) json_path = v;
        else if (ARG("--load-format")) {
            if (strcmp(v, "dummy") == 0) o.load_format = LLM_LOAD_DUMMY;
            else if (strcmp(v, "auto") == 0) o.load_format = LLM_LOAD_AUTO;
            else { fprintf(stderr, "llm-bench: --load-format auto|dummy\n"); return 2; }
        }
        else if (ARG("--precision")) {
            if (strcmp(v, "fast") == 0) o.cpu_precision = LLM_CPU_FAST;
            else if (strcmp(v, "exact") == 0) o.cpu_precision = LLM_CPU_EXACT;
            else { fprintf(stderr, "llm-bench: --precision exact|fast\n"); return 2; }
        }
        else if (ARG("--kv-cache-dtype")) {
            if (strcmp(v, "auto") == 0) o.kv_cache_dtype = LLM_KV_AUTO;
            else if (strcmp(v, "float32") == 0) o.kv_cache_dtype = LLM_KV_FLOAT32;
            else if (strcmp(v, "bfloat16") == 0) o.kv_cache_dtype = LLM_KV_BFLOAT16;
            else { fprintf(stderr, "llm-bench: --kv-cache-dtype auto|float32|bfloat16\n"); return 2; }
        }
        else if (strcmp(a, "--no-prefix-caching") == 0) o.enable_prefix_caching = 0;
        else {
            fprintf(stderr, "llm-bench: unknown or incomplete option %s\n", a);
            print_usage(stderr);
            return 2;
        }
#undef ARG
    }
    if (input_len < 1 || output_len < 1 || num_prompts < 1 || concurrency < 0
        || warmup < 0) {
        fprintf(stderr, "llm-bench: lengths and counts must be positive\n");
        return 2;
    }
    if (concurrency == 0 || concurrency > num_prompts) {
        concurrency = num_prompts;
    }
    o.seed = seed;
    if (o.max_model_len == 0 && input_len + output_len > 32768) {
        o.max_model_len = input_len + output_len;
    }

    t_load = now_s();
    e = llm_engine_create(&o, err, sizeof(err));
    if (e == NULL) {
        fprintf(stderr, "llm-bench: %s\n", err);
        return 1;
    }
    t_load = now_s() - t_load;
    llm_engine_model_info(e, &info);

    /* the warm-up's requests follow the measured ones (own prompts) */
    reqs = calloc((size_t) (num_prompts + warmup), sizeof(*reqs));
    if (reqs == NULL) {
        fprintf(stderr, "llm-bench: out of memory\n");
        return 1;
    }
    /* Random prompts below the tokenizer's regular vocabulary (no special
     * tokens), distinct per request so the prefix cache cannot help. */
    x = seed * 0x9e3779b97f4a7c15ULL + 0x1234567ULL;
    for (i = 0; i < num_prompts + warmup; i++) {
        reqs[i].prompt = malloc((size_t) input_len * sizeof(int32_t));
        if (reqs[i].prompt == NULL) {
            fprintf(stderr, "llm-bench: out of memory\n");
            return 1;
        }
        for (j = 0; j < input_len; j++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            reqs[i].prompt[j] = (int32_t) ((x >> 33)
                % (uint64_t) (info.vocab_size < 151643 ? info.vocab_size : 151643));
        }
    }

    fprintf(stderr, "model %s (%s, %d layers, hidden %d) on %s, loaded in "
            "%.1f s; KV %lld blocks of %d, %s\n", o.model_dir,
            info.model_type, info.n_layers, info.hidden_size, info.device,
            t_load, (long long) info.kv_blocks_total, info.block_size,
            info.kv_cache_dtype);
    fprintf(stderr, "%d prompts (after %d unmeasured), input %d, output %d, "
            "concurrency %d\n", num_prompts, warmup, input_len, output_len,
            concurrency);

    if (warmup > 0) {
        run_metrics w = { 0 };
        int rc = run_requests(e, reqs + num_prompts, warmup,
                              concurrency < warmup ? concurrency : warmup,
                              input_len, output_len, &w);
        run_metrics_free(&w);
        if (rc != 0 || w.failed) {
            fprintf(stderr, "llm-bench: the warm-up failed\n");
            llm_engine_destroy(e);
            return 1;
        }
    }
    llm_engine_stats(e, &es0);
    cpu = cpu_self_s();
    t_start = now_s();
    if (run_requests(e, reqs, num_prompts, concurrency, input_len, output_len,
                     &m) != 0) {
        llm_engine_destroy(e);
        return 1;
    }
    t_end = now_s();
    cpu_end = cpu_self_s();
    /* the engine's threads (and the sampling, here in the engine thread):
     * what the same load costs through HTTP is compared with it */
    cpu = cpu >= 0 && cpu_end >= 0 ? cpu_end - cpu : -1;
    dur = t_end - t_start;
    failed = m.failed;
    total_out = m.total_out;
    total_in = m.total_in;

    s_ttft = summarize(&m.ttft);
    s_tpot = summarize(&m.tpot);
    s_itl = summarize(&m.itl);
    s_e2e = summarize(&m.e2e);

    printf("============ llm-bench result ============\n");
    printf("%-32s %s\n", "Model:", o.model_dir);
    printf("%-32s %s%s\n", "Device:", info.device,
           o.load_format == LLM_LOAD_DUMMY ? " (dummy weights)" : "");
    printf("%-32s %d\n", "Successful requests:", num_prompts - failed);
    printf("%-32s %.2f\n", "Benchmark duration (s):", dur);
    printf("%-32s %lld\n", "Total input tokens:", total_in);
    printf("%-32s %lld\n", "Total generated tokens:", total_out);
    printf("%-32s %.3f\n", "Request throughput (req/s):", (num_prompts - failed) / dur);
    printf("%-32s %.2f\n", "Output token throughput (tok/s):", total_out / dur);
    printf("%-32s %.2f\n", "Total token throughput (tok/s):", (total_in + total_out) / dur);
    printf("%-32s %.2f (%.1f us an output token)\n", "CPU time, all threads (s):", cpu,
           total_out ? cpu * 1e6 / (double) total_out : 0.0);
#define ROW(name, s) \
    printf("%-8s ms  mean %9.2f  p50 %9.2f  p90 %9.2f  p99 %9.2f\n", name, \
           (s).mean * 1e3, (s).p50 * 1e3, (s).p90 * 1e3, (s).p99 * 1e3)
    llm_engine_stats(e, &es);
    /* the measured run's share (the warm-up's steps are before es0) */
    es.steps -= es0.steps;
    es.step_time.sum -= es0.step_time.sum;
    es.prompt_tokens -= es0.prompt_tokens;
    es.generation_tokens -= es0.generation_tokens;
    es.preemptions -= es0.preemptions;
    printf("%-32s %llu (mean %.2f ms, %.1f tokens)\n", "Engine steps:",
           (unsigned long long) es.steps,
           es.steps ? es.step_time.sum / es.steps * 1e3 : 0.0,
           es.steps ? (double) (es.prompt_tokens + es.generation_tokens) / es.steps : 0.0);
    printf("%-32s %llu\n", "Preemptions:", (unsigned long long) es.preemptions);
    ROW("TTFT", s_ttft);
    ROW("TPOT", s_tpot);
    ROW("ITL", s_itl);
    ROW("E2E", s_e2e);
#undef ROW

    if (json_path) {
        FILE *f = fopen(json_path, "w");

        if (f == NULL) {
            fprintf(stderr, "llm-bench: cannot write %s\n", json_path);
        } else {
#define JS(name, s) \
            fprintf(f, "  \"mean_" name "_ms\": %.4f, \"median_" name "_ms\": %.4f, " \
                    "\"p90_" name "_ms\": %.4f, \"p99_" name "_ms\": %.4f,\n", \
                    (s).mean * 1e3, (s).p50 * 1e3, (s).p90 * 1e3, (s).p99 * 1e3)
            fprintf(f, "{\n  \"model\": \"%s\", \"device\": \"%s\", \"load_format\": \"%s\",\n",
                    o.model_dir, info.device,
                    o.load_format == LLM_LOAD_DUMMY ? "dummy" : "auto");
            fprintf(f, "  \"input_len\": %d, \"output_len\": %d, \"num_prompts\": %d, "
                    "\"concurrency\": %d,\n", input_len, output_len, num_prompts,
                    concurrency);
            fprintf(f, "  \"completed\": %d, \"duration_s\": %.4f, \"total_input_tokens\": %lld, "
                    "\"total_output_tokens\": %lld,\n", num_prompts - failed, dur,
                    total_in, total_out);
            fprintf(f, "  \"request_throughput\": %.4f, \"output_throughput\": %.4f, "
                    "\"total_token_throughput\": %.4f,\n", (num_prompts - failed) / dur,
                    total_out / dur, (total_in + total_out) / dur);
            JS("ttft", s_ttft);
            JS("tpot", s_tpot);
            JS("itl", s_itl);
            JS("e2e", s_e2e);
            fprintf(f, "  \"engine_steps\": %llu, \"mean_step_ms\": %.4f, "
                    "\"preemptions\": %llu,\n", (unsigned long long) es.steps,
                    es.steps ? es.step_time.sum / es.steps * 1e3 : 0.0,
                    (unsigned long long) es.preemptions);
            fprintf(f, "  \"cpu_s\": %.4f,\n", cpu);
            fprintf(f, "  \"warmup\": %d, \"load_s\": %.3f\n}\n", warmup,
                    t_load);
            fclose(f);
#undef JS
        }
    }

    for (i = 0; i < num_prompts + warmup; i++) {
        free(reqs[i].prompt);
    }
    free(reqs);
    run_metrics_free(&m);
    llm_engine_destroy(e);
    return failed ? 1 : 0;
}
