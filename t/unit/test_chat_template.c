/*
 * Chat template: every case of t/fixtures/chat_template_goldens.jsonl
 * (rendered by transformers' apply_chat_template) must render byte for
 * byte, and its tokens must equal the golden ids; plus loading, kwargs,
 * errors, and a render-time measurement of the largest case (printed, not
 * asserted).
 */
#include "unit.h"

#include <cJSON.h>
#include <pthread.h>
#include <unistd.h>

#include "chat_template.h"
#include "tokenizer.h"

#define CONFIG "t/fixtures/qwen3-tokenizer/tokenizer_config.json"
#define GOLDENS "t/fixtures/chat_template_goldens.jsonl"
#define TOKENIZER "t/fixtures/qwen3-tokenizer/tokenizer.json"

typedef struct {
    char *messages, *tools, *kwargs, *text;
    size_t text_len;
    int add_generation_prompt;
    int32_t *ids;
    int n_ids;      /* -1: the golden has no ids */
} golden;

static golden goldens[256];
static int n_goldens;

static int load_goldens(void)
{
    size_t len;
    char *all = unit_read_file(GOLDENS, &len), *line, *save = NULL;
    if (all == NULL) {
        return -1;
    }
    for (line = strtok_r(all, "\n", &save); line && n_goldens < 256;
         line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        golden *g = &goldens[n_goldens];
        if (j == NULL) {
            free(all);
            return -1;
        }
        memset(g, 0, sizeof(*g));
        g->messages = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "messages"));
        const cJSON *tools = cJSON_GetObjectItem(j, "tools");
        g->tools = tools ? cJSON_PrintUnformatted(tools) : NULL;
        const cJSON *think = cJSON_GetObjectItem(j, "enable_thinking");
        if (think) {
            g->kwargs = strdup(cJSON_IsTrue(think) ? "{\"enable_thinking\": true}"
                                                   : "{\"enable_thinking\": false}");
        }
        g->add_generation_prompt = cJSON_IsTrue(cJSON_GetObjectItem(j, "add_generation_prompt"));
        const cJSON *text = cJSON_GetObjectItem(j, "text");
        g->text = strdup(text->valuestring);
        g->text_len = strlen(g->text);
        const cJSON *ids = cJSON_GetObjectItem(j, "ids");
        g->n_ids = -1;
        if (cJSON_IsArray(ids)) {
            g->n_ids = cJSON_GetArraySize(ids);
            g->ids = malloc(sizeof(int32_t) * (size_t) (g->n_ids + 1));
            for (int i = 0; i < g->n_ids; i++) {
                g->ids[i] = (int32_t) cJSON_GetArrayItem(ids, i)->valuedouble;
            }
        }
        cJSON_Delete(j);
        n_goldens++;
    }
    free(all);
    return 0;
}

static void free_goldens(void)
{
    for (int i = 0; i < n_goldens; i++) {
        cJSON_free(goldens[i].messages);
        cJSON_free(goldens[i].tools);
        free(goldens[i].kwargs);
        free(goldens[i].text);
        free(goldens[i].ids);
    }
}

/* where two texts first differ, for a readable failure */
static void show_diff(const char *want, size_t wn, const char *got, size_t gn)
{
    size_t i = 0;
    while (i < wn && i < gn && want[i] == got[i]) {
        i++;
    }
    size_t from = i > 40 ? i - 40 : 0;
    fprintf(stderr, "    first difference at byte %zu\n    want: %.*s\n    got:  %.*s\n", i,
            (int) ((wn - from) > 120 ? 120 : wn - from), want + from,
            (int) ((gn - from) > 120 ? 120 : gn - from), got + from);
}

static void test_goldens_render_exactly(void)
{
    char err[512];
    chat_template *ct = chat_template_load(CONFIG, err, sizeof(err));
    REQUIRE(ct != NULL, "load: %s", err);
    REQUIRE(n_goldens >= 30, "only %d goldens", n_goldens);
    int ok = 0;
    for (int i = 0; i < n_goldens; i++) {
        golden *g = &goldens[i];
        size_t n = 0;
        char *text = chat_template_render(ct, g->messages, g->tools, g->kwargs,
                                          g->add_generation_prompt, &n, err, sizeof(err));
        CHECK(text != NULL, "case %d: %s", i, err);
        if (text == NULL) {
            continue;
        }
        int same = n == g->text_len && memcmp(text, g->text, n) == 0;
        CHECK(same, "case %d renders differently", i);
        if (!same) {
            show_diff(g->text, g->text_len, text, n);
        }
        ok += same;
        free(text);
    }
    printf("# %d/%d golden chat templates render byte-for-byte\n", ok, n_goldens);
    chat_template_free(ct);
}

static void test_goldens_token_ids(void)
{
    char err[512];
    chat_template *ct = chat_template_load(CONFIG, err, sizeof(err));
    tokenizer *tk = tokenizer_load(TOKENIZER, err, sizeof(err));
    REQUIRE(ct != NULL, "load template");
    REQUIRE(tk != NULL, "load tokenizer: %s", err);
    int checked = 0;
    for (int i = 0; i < n_goldens; i++) {
        golden *g = &goldens[i];
        if (g->n_ids < 0) {
            continue;
        }
        size_t n = 0;
        char *text = chat_template_render(ct, g->messages, g->tools, g->kwargs,
                                          g->add_generation_prompt, &n, err, sizeof(err));
        CHECK(text != NULL, "case %d: %s", i, err);
        if (text == NULL) {
            continue;
        }
        int32_t *ids = NULL;
        int nids = tokenizer_encode(tk, text, n, 0, &ids, err, sizeof(err));
        CHECK(nids == g->n_ids, "case %d: %d ids, golden %d (%s)", i, nids, g->n_ids,
              nids < 0 ? err : "");
        if (nids == g->n_ids) {
            int same = memcmp(ids, g->ids, sizeof(int32_t) * (size_t) nids) == 0;
            CHECK(same, "case %d: ids differ", i);
        }
        checked++;
        free(ids);
        free(text);
    }
    CHECK(checked >= 15, "only %d goldens carry ids", checked);
    printf("# token ids checked for %d goldens\n", checked);
    tokenizer_free(tk);
    chat_template_free(ct);
}

/* many threads render the same template at once and agree with the golden */
typedef struct {
    chat_template *ct;
    int failures;
} thread_arg;

static void *render_thread(void *p)
{
    thread_arg *a = p;
    char err[256];
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < n_goldens; i++) {
            size_t n;
            char *text = chat_template_render(a->ct, goldens[i].messages, goldens[i].tools,
                                              goldens[i].kwargs,
                                              goldens[i].add_generation_prompt, &n, err,
                                              sizeof(err));
            if (text == NULL || n != goldens[i].text_len || memcmp(text, goldens[i].text, n)) {
                a->failures++;
            }
            free(text);
        }
    }
    return NULL;
}

static void test_concurrent_renders(void)
{
    char err[256];
    chat_template *ct = chat_template_load(CONFIG, err, sizeof(err));
    REQUIRE(ct != NULL, "load: %s", err);
    pthread_t th[4];
    thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i].ct = ct;
        args[i].failures = 0;
        REQUIRE(pthread_create(&th[i], NULL, render_thread, &args[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK(args[i].failures == 0, "thread %d: %d wrong renders", i, args[i].failures);
    }
    chat_template_free(ct);
}

static void test_tools_none_vs_empty_vs_absent(void)
{
    char err[256];
    /* transformers passes tools=None when absent: defined, and none */
    chat_template *ct = chat_template_from_source(
        "{{ tools is defined }} {{ tools is none }} {{ documents is none }}"
        " {{ add_generation_prompt }} {{ bos_token }}|{{ eos_token }}",
        "<s>", "</s>", err, sizeof(err));
    REQUIRE(ct != NULL, "%s", err);
    size_t n;
    char *t = chat_template_render(ct, "[]", NULL, NULL, 1, &n, err, sizeof(err));
    REQUIRE(t != NULL, "%s", err);
    CHECK(!strcmp(t, "True True True True <s>|</s>"), "got '%s'", t);
    free(t);
    t = chat_template_render(ct, "[]", "[]", NULL, 0, &n, err, sizeof(err));
    REQUIRE(t != NULL, "%s", err);
    CHECK(!strcmp(t, "True False True False <s>|</s>"), "got '%s'", t);
    free(t);
    chat_template_free(ct);
}

static void test_kwargs(void)
{
    char err[256];
    chat_template *ct = chat_template_from_source(
        "{% if enable_thinking is defined and enable_thinking is false %}off"
        "{% else %}on{% endif %}|{{ custom | default('none') }}|{{ eos_token }}",
        NULL, "</s>", err, sizeof(err));
    REQUIRE(ct != NULL, "%s", err);
    size_t n;
    char *t = chat_template_render(ct, "[]", NULL, "{\"enable_thinking\": false}", 0, &n,
                                   err, sizeof(err));
    REQUIRE(t != NULL, "%s", err);
    CHECK(!strcmp(t, "off|none|</s>"), "got '%s'", t);
    free(t);
    /* kwargs override special tokens, as in transformers */
    t = chat_template_render(ct, "[]", NULL, "{\"custom\": 5, \"eos_token\": \"E\"}", 0, &n,
                             err, sizeof(err));
    REQUIRE(t != NULL, "%s", err);
    CHECK(!strcmp(t, "on|5|E"), "got '%s'", t);
    free(t);
    t = chat_template_render(ct, "[]", NULL, "{\"messages\": []}", 0, &n, err, sizeof(err));
    CHECK(t == NULL && strstr(err, "messages") != NULL, "reserved kwarg: %s", err);
    free(t);
    t = chat_template_render(ct, "[]", NULL, "[1]", 0, &n, err, sizeof(err));
    CHECK(t == NULL && strstr(err, "object") != NULL, "kwargs not an object: %s", err);
    free(t);
    chat_template_free(ct);
}

static void test_errors(void)
{
    char err[256];
    chat_template *ct = chat_template_load(CONFIG, err, sizeof(err));
    REQUIRE(ct != NULL, "%s", err);
    size_t n;
    char *t = chat_template_render(ct, "{\"role\": \"user\"}", NULL, NULL, 1, &n, err, sizeof(err));
    CHECK(t == NULL && strstr(err, "array") != NULL, "messages object: %s", err);
    t = chat_template_render(ct, "[{\"role\": \"user\", \"content\": \"x\"", NULL, NULL, 1, &n,
                             err, sizeof(err));
    CHECK(t == NULL && strstr(err, "messages") != NULL, "truncated JSON: %s", err);
    t = chat_template_render(ct, "[{\"role\": \"user\", \"content\": \"x\"}]", "{}", NULL, 1, &n,
                             err, sizeof(err));
    CHECK(t == NULL && strstr(err, "tools") != NULL, "tools object: %s", err);
    /* no messages: the template itself fails on messages[0].role */
    t = chat_template_render(ct, "[]", NULL, NULL, 1, &n, err, sizeof(err));
    CHECK(t == NULL && strstr(err, "line 13") != NULL, "empty messages: %s", err);
    chat_template_free(ct);

    ct = chat_template_from_source("{% if x %}unclosed", NULL, NULL, err, sizeof(err));
    CHECK(ct == NULL && strstr(err, "endif") != NULL, "syntax error: %s", err);
    ct = chat_template_from_source("{{ raise_exception('Only user and assistant roles') }}",
                                   NULL, NULL, err, sizeof(err));
    REQUIRE(ct != NULL, "%s", err);
    t = chat_template_render(ct, "[]", NULL, NULL, 0, &n, err, sizeof(err));
    CHECK(t == NULL && !strcmp(err, "Only user and assistant roles"), "raise: '%s'", err);
    chat_template_free(ct);

    ct = chat_template_load("t/fixtures/no-such-dir/tokenizer_config.json", err, sizeof(err));
    CHECK(ct == NULL && strstr(err, "no-such-dir") != NULL, "missing file: %s", err);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void test_config_forms(void)
{
    char dir[] = "/tmp/llm_ct_XXXXXX", path[256], jpath[256], err[256];
    size_t n;
    REQUIRE(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    snprintf(jpath, sizeof(jpath), "%s/chat_template.jinja", dir);

    /* list form with a default entry; AddedToken-style special tokens */
    write_file(path, "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"},"
                     " {\"name\": \"default\", \"template\": \"{{ bos_token }}D{{ eos_token }}\"}],"
                     " \"bos_token\": {\"content\": \"<s>\", \"lstrip\": false},"
                     " \"eos_token\": \"</s>\"}");
    chat_template *ct = chat_template_load(path, err, sizeof(err));
    REQUIRE(ct != NULL, "%s", err);
    char *t = chat_template_render(ct, "[]", NULL, NULL, 0, &n, err, sizeof(err));
    CHECK(t && !strcmp(t, "<s>D</s>"), "list form: %s", t ? t : err);
    free(t);
    chat_template_free(ct);

    /* chat_template.jinja beside the config wins, as in transformers */
    write_file(jpath, "J{{ eos_token }}\n");
    ct = chat_template_load(path, err, sizeof(err));
    REQUIRE(ct != NULL, "%s", err);
    t = chat_template_render(ct, "[]", NULL, NULL, 0, &n, err, sizeof(err));
    CHECK(t && !strcmp(t, "J</s>"), "jinja file: %s", t ? t : err);
    free(t);
    chat_template_free(ct);
    unlink(jpath);

    write_file(path, "{\"chat_template\": [{\"name\": \"x\", \"template\": \"T\"}]}");
    ct = chat_template_load(path, err, sizeof(err));
    CHECK(ct == NULL && strstr(err, "default") != NULL, "no default: %s", err);
    write_file(path, "{\"eos_token\": \"</s>\"}");
    ct = chat_template_load(path, err, sizeof(err));
    CHECK(ct == NULL && strstr(err, "no chat_template") != NULL, "none: %s", err);
    write_file(path, "{\"chat_template\": \"{% for %}\"}");
    ct = chat_template_load(path, err, sizeof(err));
    CHECK(ct == NULL && strstr(err, "line 1, column") != NULL, "syntax: %s", err);
    write_file(path, "not json");
    ct = chat_template_load(path, err, sizeof(err));
    CHECK(ct == NULL && strstr(err, "tokenizer_config.json") != NULL, "bad json: %s", err);
    unlink(path);
    rmdir(dir);
}

static void bench_largest_golden(void)
{
    char err[256];
    chat_template *ct = chat_template_load(CONFIG, err, sizeof(err));
    REQUIRE(ct != NULL, "%s", err);
    int big = 0;
    for (int i = 1; i < n_goldens; i++) {
        if (goldens[i].text_len > goldens[big].text_len) {
            big = i;
        }
    }
    golden *g = &goldens[big];
    int iters = 2000;
    double t0 = unit_now();
    for (int i = 0; i < iters; i++) {
        size_t n;
        char *t = chat_template_render(ct, g->messages, g->tools, g->kwargs,
                                       g->add_generation_prompt, &n, err, sizeof(err));
        CHECK(t != NULL, "%s", err);
        free(t);
    }
    double dt = unit_now() - t0;
    printf("# render of the largest golden (case %d, %zu bytes): %.1f us per render "
           "(%d renders)\n", big, g->text_len, dt / iters * 1e6, iters);

    /* a long conversation: 256 turns of 4 KiB, about 1 MiB of text */
    size_t turn = 4096, nturns = 256, cap = nturns * (turn + 64) + 16, o = 0;
    char *msgs = malloc(cap);
    REQUIRE(msgs != NULL, "malloc");
    msgs[o++] = '[';
    for (size_t i = 0; i < nturns; i++) {
        o += (size_t) snprintf(msgs + o, cap - o, "%s{\"role\": \"%s\", \"content\": \"",
                               i ? ", " : "", i % 2 ? "assistant" : "user");
        for (size_t k = 0; k < turn; k++) {
            msgs[o++] = (char) ('a' + (k * 7 + i) % 26);
        }
        o += (size_t) snprintf(msgs + o, cap - o, "\"}");
    }
    msgs[o++] = ']';
    msgs[o] = '\0';
    t0 = unit_now();
    size_t n = 0;
    char *t = chat_template_render(ct, msgs, NULL, NULL, 1, &n, err, sizeof(err));
    dt = unit_now() - t0;
    CHECK(t != NULL && n > nturns * turn, "long conversation: %s", t ? "short" : err);
    printf("# render of a %zu-turn conversation (%zu bytes of text): %.2f ms\n", nturns, n,
           dt * 1e3);
    free(t);
    free(msgs);
    chat_template_free(ct);
}

int main(void)
{
    if (load_goldens() < 0) {
        printf("not ok - cannot read %s\n", GOLDENS);
        return 1;
    }
    RUN(test_goldens_render_exactly);
    RUN(test_goldens_token_ids);
    RUN(test_concurrent_renders);
    RUN(test_tools_none_vs_empty_vs_absent);
    RUN(test_kwargs);
    RUN(test_errors);
    RUN(test_config_forms);
    RUN(bench_largest_golden);
    free_goldens();
    return unit_done();
}
