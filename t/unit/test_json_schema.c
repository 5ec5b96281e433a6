/*
 * Constrained decoding through the engine with the tiny random model
 * (t/fixtures/tiny-qwen3): the model knows nothing, so every output that
 * parses and validates does so because of the constraint.  Also the
 * refusal of unsupported schemas at submit.
 */
#include "unit.h"

#include <cJSON.h>
#include <stdint.h>

#include "json_schema.h"
#include "llm.h"

#define MODEL "t/fixtures/tiny-qwen3"
#define HANG_GUARD_S 120.0

typedef struct {
    char             *text;
    size_t            len;
    int               n_tokens;
    llm_finish_reason reason;
    int               error;
    char              msg[LLM_ERR_MAX];
} outcome;

static llm_engine *engine;

static const char *person_schema =
    "{\"type\": \"object\", \"properties\": {"
    "\"name\": {\"type\": \"string\"},"
    "\"age\": {\"type\": \"integer\"},"
    "\"tags\": {\"type\": \"array\", \"items\": {\"enum\": [\"x\", \"y\"]},"
    "           \"maxItems\": 3},"
    "\"home\": {\"type\": \"object\", \"properties\": {"
    "    \"city\": {\"type\": \"string\"}, \"zip\": {\"type\": [\"string\","
    "    \"null\"]}}, \"required\": [\"city\"]},"
    "\"ok\": {\"type\": \"boolean\"}, \"score\": {\"type\": \"number\"}"
    "}, \"required\": [\"name\", \"age\", \"home\"]}";

static const char *tools_json =
    "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\","
    "\"description\": \"Weather of a city\", \"parameters\": {"
    "\"type\": \"object\", \"properties\": {"
    "\"city\": {\"type\": \"string\"},"
    "\"unit\": {\"type\": \"string\", \"enum\": [\"c\", \"f\"]}},"
    "\"required\": [\"city\"]}}},"
    "{\"type\": \"function\", \"function\": {\"name\": \"get_time\","
    "\"parameters\": {\"type\": \"object\", \"properties\": {}}}}]";

/* Runs one request to its end.  Returns 0, or -1 if refused at submit
 * (message in out->msg). */
static int run(const char *constraint, uint64_t seed, int max_tokens,
               outcome *out)
{
    llm_request_params p;
    llm_status st;
    llm_request *r;
    llm_event ev;
    double t0 = unit_now();
    int done = 0;

    memset(out, 0, sizeof(*out));
    llm_request_params_init(&p);
    p.kind = LLM_PROMPT_TEXT;
    p.text = "Reply in JSON:";
    p.text_len = strlen(p.text);
    p.max_tokens = max_tokens;
    p.sampling.temperature = 1.0f;
    p.sampling.top_p = 1.0f;
    p.sampling.top_k = 0;
    p.sampling.has_seed = 1;
    p.sampling.seed = seed;
    p.constraint_json = constraint;
    r = llm_submit(engine, &p, &st, out->msg, sizeof(out->msg));
    if (r == NULL) {
        return -1;
    }
    while (!done && unit_now() - t0 < HANG_GUARD_S) {
        if (!llm_request_next_event(r, &ev)) {
            llm_request *ready[4];

            /* Clear the ready list, or wait would return at once. */
            while (llm_engine_ready(engine, ready, 4) == 4) {
            }
            if (!llm_request_next_event(r, &ev)) {
                llm_engine_wait(engine, 20);
                continue;
            }
        }
        if (ev.type == LLM_EV_TOKEN) {
            out->text = realloc(out->text, out->len + ev.text_len + 1);
            memcpy(out->text + out->len, ev.text, ev.text_len);
            out->len += ev.text_len;
            out->text[out->len] = '\0';
            out->n_tokens += ev.n_tokens;
        } else if (ev.type == LLM_EV_FINISH) {
            out->reason = ev.finish_reason;
            done = 1;
        } else if (ev.type == LLM_EV_ERROR) {
            out->error = 1;
            snprintf(out->msg, sizeof(out->msg), "%s",
                     ev.message ? ev.message : "");
            done = 1;
        }
        llm_event_free(&ev);
    }
    llm_request_release(r);
    if (out->text == NULL) {
        out->text = calloc(1, 1);
    }
    return 0;
}

static char *schema_constraint(const char *schema)
{
    size_t n = strlen(schema) + 64;
    char *c = malloc(n);

    snprintf(c, n, "{\"type\": \"json_schema\", \"schema\": %s}", schema);
    return c;
}

static void check_valid(const char *schema_json, const outcome *o,
                        uint64_t seed)
{
    cJSON *schema = cJSON_Parse(schema_json);
    cJSON *v = cJSON_ParseWithLength(o->text, o->len);
    char err[256] = "";

    CHECK(!o->error, "seed %llu: error %s", (unsigned long long) seed, o->msg);
    CHECK(o->reason == LLM_FINISH_STOP, "seed %llu: finish %d",
          (unsigned long long) seed, (int) o->reason);
    CHECK(v != NULL, "seed %llu: does not parse: %s",
          (unsigned long long) seed, o->text);
    if (v != NULL) {
        CHECK(json_schema_validate(schema, v, err, sizeof(err)) == 1,
              "seed %llu: invalid (%s): %s", (unsigned long long) seed, err,
              o->text);
    }
    cJSON_Delete(v);
    cJSON_Delete(schema);
}

static void test_json_schema_outputs_validate(void)
{
    char *c = schema_constraint(person_schema);
    uint64_t seed;

    for (seed = 1; seed <= 24; seed++) {
        outcome o;

        REQUIRE(run(c, seed, 160, &o) == 0, "submit: %s", o.msg);
        check_valid(person_schema, &o, seed);
        CHECK(o.n_tokens <= 160, "%d tokens", o.n_tokens);
        free(o.text);
    }
    free(c);
}

static void test_small_budget_still_closes(void)
{
    /* 40 tokens for an object whose shortest form is 33 bytes long. */
    char *c = schema_constraint(person_schema);
    uint64_t seed;

    for (seed = 100; seed < 108; seed++) {
        outcome o;

        REQUIRE(run(c, seed, 40, &o) == 0, "submit: %s", o.msg);
        check_valid(person_schema, &o, seed);
        free(o.text);
    }
    free(c);
}

static void test_json_object_mode(void)
{
    const char *any = "{\"type\": \"object\"}";
    uint64_t seed;

    for (seed = 1; seed <= 10; seed++) {
        outcome o;

        REQUIRE(run("{\"type\": \"json_object\"}", seed, 80, &o) == 0,
                "submit: %s", o.msg);
        check_valid(any, &o, seed);
        free(o.text);
    }
}

static void check_tool_call(const char *text, const char *only)
{
    cJSON *tools = cJSON_Parse(tools_json);
    const char *p = text;
    int calls = 0;

    while (*p) {
        const char *open = "<tool_call>\n", *close = "\n</tool_call>";
        const char *end;
        cJSON *call, *tool;
        const cJSON *name, *args, *schema = NULL;
        char err[256];

        REQUIRE(strncmp(p, open, strlen(open)) == 0, "no opening tag: %s",
                text);
        p += strlen(open);
        end = strstr(p, close);
        REQUIRE(end != NULL, "no closing tag: %s", text);
        call = cJSON_ParseWithLength(p, (size_t) (end - p));
        REQUIRE(call != NULL, "call does not parse: %s", text);
        name = cJSON_GetObjectItem(call, "name");
        args = cJSON_GetObjectItem(call, "arguments");
        CHECK(cJSON_IsString(name) && cJSON_IsObject(args), "shape: %s",
              text);
        cJSON_ArrayForEach(tool, tools) {
            const cJSON *fn = cJSON_GetObjectItem(tool, "function");

            if (cJSON_IsString(name)
                && strcmp(cJSON_GetObjectItem(fn, "name")->valuestring,
                          name->valuestring) == 0)
            {
                schema = cJSON_GetObjectItem(fn, "parameters");
            }
        }
        CHECK(schema != NULL, "unknown function: %s", text);
        if (only != NULL && cJSON_IsString(name)) {
            CHECK(strcmp(name->valuestring, only) == 0, "not %s: %s", only,
                  text);
        }
        if (schema != NULL && args != NULL) {
            CHECK(json_schema_validate(schema, args, err, sizeof(err)) == 1,
                  "arguments invalid (%s): %s", err, text);
        }
        cJSON_Delete(call);
        calls++;
        p = end + strlen(close);
        if (*p == '\n') {
            p++;
        }
    }
    CHECK(calls >= 1, "no call: %s", text);
    cJSON_Delete(tools);
}

static void test_tool_choice_required_and_named(void)
{
    size_t n = strlen(tools_json) + 128;
    char *required = malloc(n), *named = malloc(n);
    uint64_t seed;

    snprintf(required, n, "{\"type\": \"tool_calls\", \"tools\": %s}",
             tools_json);
    snprintf(named, n, "{\"type\": \"tool_calls\", \"tools\": %s, "
             "\"name\": \"get_weather\"}", tools_json);
    for (seed = 1; seed <= 12; seed++) {
        outcome o;

        REQUIRE(run(required, seed, 120, &o) == 0, "submit: %s", o.msg);
        CHECK(!o.error && o.reason == LLM_FINISH_STOP, "seed %llu: %d %s",
              (unsigned long long) seed, (int) o.reason, o.msg);
        check_tool_call(o.text, NULL);
        free(o.text);
        REQUIRE(run(named, seed, 120, &o) == 0, "submit: %s", o.msg);
        CHECK(!o.error && o.reason == LLM_FINISH_STOP, "seed %llu: %d %s",
              (unsigned long long) seed, (int) o.reason, o.msg);
        check_tool_call(o.text, "get_weather");
        free(o.text);
    }
    free(required);
    free(named);
}

static void test_unsupported_schema_is_refused(void)
{
    outcome o;
    char *c = schema_constraint("{\"type\": \"object\", \"properties\": "
                                "{\"zip\": {\"type\": \"string\", "
                                "\"pattern\": \"[0-9]+\"}}}");

    CHECK(run(c, 1, 10, &o) == -1, "submitted");
    CHECK(strstr(o.msg, "\"pattern\"") != NULL
          && strstr(o.msg, "$.properties.zip") != NULL, "message: %s", o.msg);
    free(c);
    CHECK(run("{\"type\": \"tool_calls\", \"tools\": [], \"name\": \"f\"}", 1,
              10, &o) == -1, "unknown function submitted");
    CHECK(strstr(o.msg, "\"f\"") != NULL, "message: %s", o.msg);
}

int main(void)
{
    llm_engine_options o;
    char err[LLM_ERR_MAX];

    llm_engine_options_init(&o);
    o.model_dir = MODEL;
    o.threads = 1;
    o.max_model_len = 1024;
    engine = llm_engine_create(&o, err, sizeof(err));
    if (engine == NULL) {
        fprintf(stderr, "engine: %s\n", err);
        return 1;
    }
    RUN(test_unsupported_schema_is_refused);
    RUN(test_json_schema_outputs_validate);
    RUN(test_small_budget_still_closes);
    RUN(test_json_object_mode);
    RUN(test_tool_choice_required_and_named);
    llm_engine_destroy(engine);
    return unit_done();
}
