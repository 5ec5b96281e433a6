/*
 * llm-generate: offline generation with the engine, no server.
 *
 *   llm-generate MODEL_DIR --prompt "text"            completion of raw text
 *   llm-generate MODEL_DIR --chat "question"          one user message through
 *                                                     the chat template
 *   llm-generate MODEL_DIR --messages '[{...}]'       OpenAI messages (JSON)
 *
 * Text is printed as it is generated; a summary (finish reason, token
 * counts, speed) goes to stderr.  See --help for the options.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cJSON.h>

#include "llm.h"

#define MAX_STOP 16

static void print_usage(FILE *f)
{
    fprintf(f,
"usage: llm-generate MODEL_DIR (--prompt TEXT | --chat TEXT | --messages JSON)\n"
"  --system TEXT           system message (with --chat)\n"
"  --no-think              chat template kwarg enable_thinking=false\n"
"  --max-tokens N          (default 128)\n"
"  --min-tokens N\n"
"  --temperature F         (default: generation_config.json; 0 greedy)\n"
"  --top-p F  --top-k N  --min-p F  --repetition-penalty F\n"
"  --presence-penalty F  --frequency-penalty F\n"
"  --seed N                request seed\n"
"  --stop STRING           stop string (repeatable, up to %d)\n"
"  --ignore-eos\n"
"  --logprobs N            print the sampled token's logprob and N alternatives\n"
"  --tokens                print token ids after the text\n"
"  --device cpu|cuda|cuda:N  --threads N  --max-model-len N\n"
"  --kv-cache-bytes N  --load-format auto|dummy\n", MAX_STOP);
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + ts.tv_nsec * 1e-9;
}

static const char *finish_name(llm_finish_reason r)
{
    switch (r) {
    case LLM_FINISH_STOP:   return "stop";
    case LLM_FINISH_LENGTH: return "length";
    case LLM_FINISH_ABORT:  return "abort";
    case LLM_FINISH_ERROR:  return "error";
    default:                return "none";
    }
}

/* Builds the messages array for --chat. */
static char *chat_messages(const char *system, const char *user)
{
    cJSON *arr = cJSON_CreateArray(), *m;
    char *out;

    if (arr == NULL) {
        return NULL;
    }
    if (system) {
        m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "system");
        cJSON_AddStringToObject(m, "content", system);
        cJSON_AddItemToArray(arr, m);
    }
    m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", "user");
    cJSON_AddStringToObject(m, "content", user);
    cJSON_AddItemToArray(arr, m);
    out = cJSON_PrintUnformatted(arr);
    cJSON_Delete(arr);
    return out;
}

int main(int argc, char **argv)
{
    llm_engine_options o;
    llm_request_params p;
    llm_engine *e;
    llm_request *r, *ready;
    llm_status st;
    char err[LLM_ERR_MAX];
    const char *prompt = NULL, *chat = NULL, *messages = NULL, *system = NULL;
    const char *stops[MAX_STOP];
    char *owned_messages = NULL;
    int n_stop = 0, print_tokens = 0, no_think = 0, done = 0, i;
    int32_t *ids = NULL;
    int n_ids = 0, cap_ids = 0, rc = 0;
    double t0, t_first = 0, t_end;
    llm_usage usage = { 0, 0, 0 };

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        print_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    llm_engine_options_init(&o);
    llm_request_params_init(&p);
    o.model_dir = argv[1];
    p.max_tokens = 128;

    for (i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;

#define ARG(name) (strcmp(a, name) == 0 && v != NULL && ++i)
        if (ARG("--prompt")) prompt = v;
        else if (ARG("--chat")) chat = v;
        else if (ARG("--messages")) messages = v;
        else if (ARG("--system")) system = v;
        else if (ARG("--max-tokens")) p.max_tokens = atoi(v);
        else if (ARG("--min-tokens")) p.min_tokens = atoi(v);
        else if (ARG("--temperature")) p.sampling.temperature = (float) atof(v);
        else if (ARG("--top-p")) p.sampling.top_p = (float) atof(v);
        else if (ARG("--top-k")) p.sampling.top_k = atoi(v);
        else if (ARG("--min-p")) p.sampling.min_p = (float) atof(v);
        else if (ARG("--repetition-penalty")) p.sampling.repetition_penalty = (float) atof(v);
        else if (ARG("--presence-penalty")) p.sampling.presence_penalty = (float) atof(v);
        else if (ARG("--frequency-penalty")) p.sampling.frequency_penalty = (float) atof(v);
        else if (ARG("--seed")) { p.sampling.has_seed = 1; p.sampling.seed = strtoull(v, NULL, 10); }
        else if (ARG("--stop")) {
            if (n_stop == MAX_STOP) {
                fprintf(stderr, "llm-generate: at most %d --stop\n", MAX_STOP);
                return 2;
            }
            stops[n_stop++] = v;
        }
        else if (ARG("--logprobs")) { p.sampling.logprobs = 1; p.sampling.top_logprobs = atoi(v); }
        else if (ARG("--device")) o.device = v;
        else if (ARG("--threads")) o.threads = atoi(v);
        else if (ARG("--max-model-len")) o.max_model_len = atoi(v);
        else if (ARG("--kv-cache-bytes")) o.kv_cache_bytes = strtoll(v, NULL, 10);
        else if (ARG("--load-format")) {
            if (strcmp(v, "dummy") == 0) o.load_format = LLM_LOAD_DUMMY;
            else if (strcmp(v, "auto") == 0) o.load_format = LLM_LOAD_AUTO;
            else { fprintf(stderr, "llm-generate: --load-format auto|dummy\n"); return 2; }
        }
        else if (strcmp(a, "--ignore-eos") == 0) p.ignore_eos = 1;
        else if (strcmp(a, "--tokens") == 0) print_tokens = 1;
        else if (strcmp(a, "--no-think") == 0) no_think = 1;
        else {
            fprintf(stderr, "llm-generate: unknown or incomplete option %s\n", a);
            print_usage(stderr);
            return 2;
        }
#undef ARG
    }
    if (!!prompt + !!chat + !!messages != 1) {
        fprintf(stderr, "llm-generate: give exactly one of --prompt, --chat, --messages\n");
        return 2;
    }
    if (prompt) {
        p.kind = LLM_PROMPT_TEXT;
        p.text = prompt;
        p.text_len = strlen(prompt);
    } else {
        p.kind = LLM_PROMPT_CHAT;
        if (chat) {
            owned_messages = chat_messages(system, chat);
            if (owned_messages == NULL) {
                fprintf(stderr, "llm-generate: out of memory\n");
                return 1;
            }
            messages = owned_messages;
        }
        p.messages_json = messages;
        p.add_generation_prompt = 1;
        if (no_think) {
            p.template_kwargs_json = "{\"enable_thinking\": false}";
        }
    }
    p.stop = stops;
    p.n_stop = n_stop;

    t0 = now_s();
    e = llm_engine_create(&o, err, sizeof(err));
    if (e == NULL) {
        fprintf(stderr, "llm-generate: %s\n", err);
        free(owned_messages);
        return 1;
    }
    fprintf(stderr, "loaded %s in %.2f s\n", o.model_dir, now_s() - t0);

    t0 = now_s();
    r = llm_submit(e, &p, &st, err, sizeof(err));
    if (r == NULL) {
        fprintf(stderr, "llm-generate: request refused (%d): %s\n", (int) st, err);
        llm_engine_destroy(e);
        free(owned_messages);
        return 1;
    }
    while (!done) {
        llm_event ev;

        llm_engine_wait(e, 100);
        while (llm_engine_ready(e, &ready, 1) == 1) {
        }
        while (!done && llm_request_next_event(r, &ev)) {
            switch (ev.type) {
            case LLM_EV_TOKEN:
                if (t_first == 0 && ev.n_tokens > 0) {
                    t_first = now_s();
                }
                fwrite(ev.text, 1, ev.text_len, stdout);
                fflush(stdout);
                for (i = 0; i < ev.n_tokens; i++) {
                    if (n_ids == cap_ids) {
                        int32_t *n;

                        cap_ids = cap_ids ? cap_ids * 2 : 256;
                        n = realloc(ids, (size_t) cap_ids * sizeof(int32_t));
                        if (n == NULL) {
                            fprintf(stderr, "llm-generate: out of memory\n");
                            return 1;
                        }
                        ids = n;
                    }
                    ids[n_ids++] = ev.tokens[i].token;
                    if (p.sampling.logprobs) {
                        int k;

                        fprintf(stderr, "[%d %.4f", ev.tokens[i].token,
                                ev.tokens[i].logprob);
                        for (k = 0; k < ev.tokens[i].n_top; k++) {
                            fprintf(stderr, " %d:%.4f", ev.tokens[i].top[k].token,
                                    ev.tokens[i].top[k].logprob);
                        }
                        fprintf(stderr, "]\n");
                    }
                }
                break;
            case LLM_EV_FINISH:
                done = 1;
                usage = ev.usage;
                fprintf(stderr, "\nfinish_reason=%s%s%s", finish_name(ev.finish_reason),
                        ev.stop_reason ? " stop=" : "",
                        ev.stop_reason ? ev.stop_reason : "");
                break;
            case LLM_EV_ERROR:
                done = 1;
                rc = 1;
                fprintf(stderr, "\nllm-generate: error (%d): %s\n", (int) ev.status,
                        ev.message ? ev.message : "");
                break;
            default:
                break;
            }
            llm_event_free(&ev);
        }
    }
    t_end = now_s();
    printf("\n");
    if (print_tokens) {
        for (i = 0; i < n_ids; i++) {
            printf("%s%d", i ? " " : "", ids[i]);
        }
        printf("\n");
    }
    if (rc == 0) {
        fprintf(stderr, " prompt_tokens=%d completion_tokens=%d cached_tokens=%d"
                " ttft=%.3fs decode=%.2f tok/s\n",
                usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
                t_first > 0 ? t_first - t0 : 0.0,
                usage.completion_tokens > 1 && t_end > t_first
                    ? (usage.completion_tokens - 1) / (t_end - t_first) : 0.0);
    }
    llm_request_release(r);
    llm_engine_destroy(e);
    free(ids);
    free(owned_messages);
    return rc;
}
