/*
 * llm-grammar-bench: decode throughput of constrained (JSON schema, JSON
 * object, forced tool call) against unconstrained generation, one request
 * at a time (batch 1), on the same engine.
 *
 *   llm-grammar-bench MODEL_DIR [--load-format dummy] [--tokenizer DIR]
 *       [--device cpu] [--threads N] [--tokens N] [--requests N]
 *
 * Sampling is temperature 1 (top_p 1, seeded) in every mode, so the
 * sampler costs the same; unconstrained requests ignore eos and run to
 * --tokens, constrained ones end when their JSON is complete.  Decode
 * throughput counts tokens after the first over the time from the first
 * token to the last, so prefill and the one-time vocabulary trie (built at
 * the first constrained request, reported apart) are left out.
 */
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
    const char *name;
    const char *constraint;     /* NULL: unconstrained */
} bench_mode;

static const bench_mode modes[] = {
    { "unconstrained", NULL },
    { "json_schema",
      "{\"type\":\"json_schema\",\"schema\":{\"type\":\"object\","
      "\"properties\":{\"title\":{\"type\":\"string\"},"
      "\"year\":{\"type\":\"integer\"},"
      "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},"
      "\"rating\":{\"type\":\"number\"}},"
      "\"required\":[\"title\",\"year\",\"tags\",\"rating\"]}}" },
    { "json_object", "{\"type\":\"json_object\"}" },
    { "tool_call",
      "{\"type\":\"tool_calls\",\"tools\":[{\"type\":\"function\","
      "\"function\":{\"name\":\"search\",\"parameters\":{\"type\":\"object\","
      "\"properties\":{\"query\":{\"type\":\"string\"},\"limit\":{\"type\":"
      "\"integer\"}},\"required\":[\"query\"]}}}]}" },
};

#define N_MODES ((int) (sizeof(modes) / sizeof(modes[0])))

/* Runs one request; adds its decode tokens and seconds.  Returns the
 * seconds from submit to the first token, or -1 on an error. */
static double run_one(llm_engine *e, const bench_mode *m, int tokens,
                      uint64_t seed, long *dec_tokens, double *dec_s)
{
    static const int32_t prompt[] = { 151644, 872, 198, 9707, 0, 151645, 198,
                                      151644, 77091, 198 };
    llm_request_params p;
    llm_status st;
    char err[LLM_ERR_MAX];
    llm_request *r;
    llm_event ev;
    double t0 = now_s(), t_first = 0, t_last = 0;
    int n = 0, done = 0, failed = 0;

    llm_request_params_init(&p);
    p.kind = LLM_PROMPT_TOKENS;
    p.tokens = prompt;
    p.n_tokens = (int) (sizeof(prompt) / sizeof(prompt[0]));
    p.max_tokens = tokens;
    p.ignore_eos = m->constraint == NULL;
    p.sampling.temperature = 1.0f;
    p.sampling.top_p = 1.0f;
    p.sampling.top_k = 0;
    p.sampling.has_seed = 1;
    p.sampling.seed = seed;
    p.constraint_json = m->constraint;
    r = llm_submit(e, &p, &st, err, sizeof(err));
    if (r == NULL) {
        fprintf(stderr, "llm-grammar-bench: %s: %s\n", m->name, err);
        return -1;
    }
    while (!done) {
        if (!llm_request_next_event(r, &ev)) {
            llm_request *ready[4];

            /* Clear the ready list, or wait would return at once. */
            while (llm_engine_ready(e, ready, 4) == 4) {
            }
            if (!llm_request_next_event(r, &ev)) {
                llm_engine_wait(e, 5);
                continue;
            }
        }
        if (ev.type == LLM_EV_TOKEN && ev.n_tokens > 0) {
            t_last = now_s();
            if (n == 0) {
                t_first = t_last;
            }
            n += ev.n_tokens;
        } else if (ev.type == LLM_EV_FINISH || ev.type == LLM_EV_ERROR) {
            if (ev.type == LLM_EV_ERROR) {
                fprintf(stderr, "llm-grammar-bench: %s: %s\n", m->name,
                        ev.message ? ev.message : "error");
                failed = 1;
            }
            done = 1;
        }
        llm_event_free(&ev);
    }
    llm_request_release(r);
    if (failed) {
        return -1;
    }
    if (n > 1) {
        *dec_tokens += n - 1;
        *dec_s += t_last - t_first;
    }
    return t_first - t0;
}

int main(int argc, char **argv)
{
    llm_engine_options o;
    llm_engine *e;
    char err[LLM_ERR_MAX];
    int tokens = 128, requests = 4, i, k;
    long dec_tokens[N_MODES] = { 0 };
    double dec_s[N_MODES] = { 0 }, base = 0;

    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: llm-grammar-bench MODEL_DIR [--load-format "
                "dummy] [--tokenizer DIR] [--device D] [--threads N] "
                "[--tokens N] [--requests N]\n");
        return 2;
    }
    llm_engine_options_init(&o);
    o.model_dir = argv[1];
    for (i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (v == NULL) {
            fprintf(stderr, "llm-grammar-bench: %s needs a value\n", a);
            return 2;
        }
        if (strcmp(a, "--load-format") == 0) {
            o.load_format = strcmp(v, "dummy") == 0 ? LLM_LOAD_DUMMY
                                                    : LLM_LOAD_AUTO;
        } else if (strcmp(a, "--tokenizer") == 0) {
            o.tokenizer_dir = v;
        } else if (strcmp(a, "--device") == 0) {
            o.device = v;
        } else if (strcmp(a, "--threads") == 0) {
            o.threads = atoi(v);
        } else if (strcmp(a, "--tokens") == 0) {
            tokens = atoi(v);
        } else if (strcmp(a, "--requests") == 0) {
            requests = atoi(v);
        } else {
            fprintf(stderr, "llm-grammar-bench: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    o.max_num_seqs = 1;
    o.max_model_len = tokens + 64;
    e = llm_engine_create(&o, err, sizeof(err));
    if (e == NULL) {
        fprintf(stderr, "llm-grammar-bench: %s\n", err);
        return 1;
    }
    /* Warm-up request per mode (the first constrained one builds the
     * vocabulary trie), then the modes take turns request by request, so
     * that a busy machine slows them alike. */
    for (k = 0; k < N_MODES; k++) {
        long wt = 0;
        double ws = 0, ttft = run_one(e, &modes[k], tokens, 1000 + k, &wt, &ws);

        if (ttft < 0) {
            llm_engine_destroy(e);
            return 1;
        }
        if (k == 1) {
            printf("# first constrained request: %.0f ms to its first token "
                   "(vocabulary trie built once per engine)\n", ttft * 1e3);
        }
    }
    for (i = 0; i < requests; i++) {
        for (k = 0; k < N_MODES; k++) {
            if (run_one(e, &modes[k], tokens, (uint64_t) i + 1,
                        &dec_tokens[k], &dec_s[k]) < 0)
            {
                llm_engine_destroy(e);
                return 1;
            }
        }
    }
    printf("%-14s %9s %12s %10s %12s\n", "mode", "requests", "dec tokens",
           "tok/s", "vs uncon.");
    for (k = 0; k < N_MODES; k++) {
        double tps = dec_s[k] > 0 ? dec_tokens[k] / dec_s[k] : 0;

        if (k == 0) {
            base = tps;
        }
        printf("%-14s %9d %12ld %10.1f %11.1f%%\n", modes[k].name, requests,
               dec_tokens[k], tps, base > 0 ? 100.0 * tps / base : 0.0);
    }
    llm_engine_destroy(e);
    return 0;
}
