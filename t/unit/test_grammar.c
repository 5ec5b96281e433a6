/*
 * Grammar automaton and token masks: accept/reject cases, masks equal to a
 * brute-force check of every token on sampled states (Qwen3 vocabulary),
 * and random walks through the masks always end in valid JSON.
 */
#include "unit.h"

#include <cJSON.h>
#include <stdint.h>

#include "grammar.h"
#include "json_schema.h"
#include "tokenizer.h"

#define TOKENIZER_PATH "t/fixtures/qwen3-tokenizer/tokenizer.json"

static tokenizer *tok;
static grammar_vocab *vocab;
static int32_t eos_id;

static grammar *compile_text(const char *schema_json, char *err, size_t n)
{
    cJSON *s = cJSON_Parse(schema_json);
    grammar *g;

    if (s == NULL) {
        snprintf(err, n, "bad test schema");
        return NULL;
    }
    g = json_schema_compile(s, 0, err, n);
    cJSON_Delete(s);
    return g;
}

/* 1: the whole text is accepted and may end there; 0: rejected at some
 * byte or incomplete. */
static int matches(const grammar *g, const char *text)
{
    grammar_state s;

    grammar_state_init(g, &s);
    if (grammar_state_feed(g, &s, text, strlen(text)) != 0) {
        return 0;
    }
    return grammar_state_accepting(g, &s);
}

/* A prefix of a valid text: every byte accepted. */
static int prefix_ok(const grammar *g, const char *text)
{
    grammar_state s;

    grammar_state_init(g, &s);
    return grammar_state_feed(g, &s, text, strlen(text)) == 0;
}

static const char *person_schema =
    "{\"type\": \"object\", \"properties\": {"
    "\"name\": {\"type\": \"string\"},"
    "\"age\": {\"type\": \"integer\"},"
    "\"score\": {\"type\": \"number\"},"
    "\"ok\": {\"type\": \"boolean\"},"
    "\"tags\": {\"type\": \"array\", \"items\": {\"type\": \"string\"},"
    "           \"maxItems\": 3},"
    "\"kind\": {\"enum\": [\"a\", \"b\", 12, null]},"
    "\"home\": {\"type\": \"object\", \"properties\": {"
    "    \"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]},"
    "\"maybe\": {\"type\": [\"string\", \"null\"]}"
    "}, \"required\": [\"name\", \"age\"]}";

static void test_accepts_and_rejects(void)
{
    char err[256];
    grammar *g = compile_text(person_schema, err, sizeof(err));
    static const char *good[] = {
        "{\"name\":\"x\",\"age\":3}",
        "{\"age\": -0, \"name\": \"\\u00e9\\n\\\"q\"}",
        "{ \"name\" : \"caf\xc3\xa9\" , \"age\" : 10 , \"score\": 1.5e-3 }",
        "{\"name\":\"x\",\"age\":3,\"tags\":[],\"ok\":true}",
        "{\"name\":\"x\",\"age\":3,\"tags\":[\"a\",\"b\",\"c\"]}",
        "{\"name\":\"x\",\"age\":3,\"kind\":12}",
        "{\"name\":\"x\",\"age\":3,\"kind\":null,\"maybe\":null}",
        "{\"name\":\"x\",\"age\":3,\"home\":{\"city\":\"P\"},\"maybe\":\"s\"}",
        "{\n  \"name\": \"x\",\n  \"age\": 3\n}",
        NULL
    };
    static const char *bad[] = {
        "{\"name\":\"x\"}",                        /* age required */
        "{\"name\":\"x\",\"age\":3.5}",            /* integer */
        "{\"name\":\"x\",\"age\":03}",             /* leading zero */
        "{\"name\":\"x\",\"age\":3,\"zzz\":1}",     /* unknown key */
        "{\"name\":\"x\",\"name\":\"y\",\"age\":3}", /* repeated key */
        "{\"name\":\"x\",\"age\":3,}",             /* trailing comma */
        "{\"name\":\"x\",\"age\":3,\"tags\":[\"a\",\"b\",\"c\",\"d\"]}",
        "{\"name\":\"x\",\"age\":3,\"kind\":\"c\"}",
        "{\"name\":\"x\",\"age\":3,\"kind\":1}",
        "{\"name\":\"x\",\"age\":3,\"home\":{}}",
        "{\"name\":\"\\x\",\"age\":3}",            /* bad escape */
        "{\"name\":\"\xc3\",\"age\":3}",           /* broken UTF-8 */
        "{\"name\":\"\xed\xa0\x80\",\"age\":3}",   /* surrogate in UTF-8 */
        "{\"name\":\"a\tb\",\"age\":3}",           /* control byte */
        "{\"name\":\"x\",\"age\":3} ",             /* nothing after */
        " {\"name\":\"x\",\"age\":3}",
        "[]",
        NULL
    };
    int i;

    REQUIRE(g != NULL, "compile: %s", err);
    for (i = 0; good[i] != NULL; i++) {
        CHECK(matches(g, good[i]), "should accept %s", good[i]);
    }
    for (i = 0; bad[i] != NULL; i++) {
        CHECK(!matches(g, bad[i]), "should reject %s", bad[i]);
    }
    grammar_free(g);
}

static void test_whitespace_is_bounded(void)
{
    char err[256], text[128];
    grammar *g = compile_text("{\"type\":\"object\"}", err, sizeof(err));

    REQUIRE(g != NULL, "compile: %s", err);
    snprintf(text, sizeof(text), "{%*s}", GRAMMAR_MAX_WS, "");
    CHECK(matches(g, text), "%d blanks allowed", GRAMMAR_MAX_WS);
    snprintf(text, sizeof(text), "{%*s}", GRAMMAR_MAX_WS + 1, "");
    CHECK(!matches(g, text), "%d blanks refused", GRAMMAR_MAX_WS + 1);
    CHECK(matches(g, "{\"a\":[1,{\"b\":null},\"x\",true,-2.5E+10]}"),
          "any object");
    CHECK(!matches(g, "{\"a\":tru}"), "broken literal");
    CHECK(!matches(g, "[1]"), "json_object is an object");
    grammar_free(g);
}

static void test_numbers_end_on_the_next_byte(void)
{
    char err[256];
    grammar *g = compile_text("{\"type\":\"number\"}", err, sizeof(err));
    grammar_state s;

    REQUIRE(g != NULL, "compile: %s", err);
    CHECK(matches(g, "0"), "0");
    CHECK(matches(g, "-12.5e3"), "-12.5e3");
    CHECK(!matches(g, "-"), "lone minus");
    CHECK(!matches(g, "1."), "dot without digits");
    CHECK(!matches(g, "1e"), "e without digits");
    CHECK(!matches(g, "00"), "00");
    grammar_state_init(g, &s);
    CHECK(grammar_state_feed(g, &s, "12", 2) == 0, "12");
    CHECK(grammar_state_accepting(g, &s) && !grammar_state_terminal(&s),
          "a number may go on");
    grammar_free(g);

    g = compile_text("{\"enum\": [1, 12, \"x\"]}", err, sizeof(err));
    REQUIRE(g != NULL, "compile: %s", err);
    CHECK(matches(g, "1") && matches(g, "12") && matches(g, "\"x\""),
          "enum values");
    CHECK(!matches(g, "123") && !matches(g, "\"y\"") && !matches(g, "2"),
          "non-members");
    grammar_free(g);
}

static void test_refs_and_unions(void)
{
    char err[256];
    grammar *g = compile_text(
        "{\"$defs\": {\"node\": {\"type\": \"object\", \"properties\": {"
        "\"v\": {\"type\": \"integer\"},"
        "\"next\": {\"anyOf\": [{\"$ref\": \"#/$defs/node\"},"
        "                      {\"type\": \"null\"}]}},"
        "\"required\": [\"v\", \"next\"]}},"
        "\"$ref\": \"#/$defs/node\"}", err, sizeof(err));

    REQUIRE(g != NULL, "compile: %s", err);
    CHECK(matches(g, "{\"v\":1,\"next\":{\"v\":2,\"next\":null}}"),
          "recursive list");
    CHECK(!matches(g, "{\"v\":1,\"next\":{\"v\":2}}"), "inner required");
    grammar_free(g);
}

static void test_schema_errors_name_the_keyword(void)
{
    static const struct {
        const char *schema, *want;
    } cases[] = {
        { "{\"type\":\"object\",\"properties\":{\"zip\":{\"type\":\"string\","
          "\"pattern\":\"^[0-9]+$\"}}}",
          "unsupported JSON Schema keyword \"pattern\" at $.properties.zip" },
        { "{\"type\":\"string\",\"minLength\":2}", "\"minLength\" at $" },
        { "{\"allOf\":[{}]}", "\"allOf\"" },
        { "{\"anyOf\":[{\"type\":\"string\"},{\"enum\":[\"a\"]}]}",
          "alternatives must differ" },
        { "{\"type\":\"strin\"}", "unknown type \"strin\"" },
        { "{\"$ref\":\"#/$defs/missing\"}", "names no schema" },
        { "{\"$ref\":\"http://x/y\"}", "unsupported \"$ref\"" },
        { "{\"type\":\"object\",\"required\":[\"a\"]}", "\"a\"" },
        { "{\"type\":\"array\",\"minItems\":3,\"maxItems\":2}", "minItems" },
        { "{\"enum\":[]}", "non-empty" },
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[256] = "";
        grammar *g = compile_text(cases[i].schema, err, sizeof(err));

        CHECK(g == NULL, "schema %s must fail", cases[i].schema);
        CHECK(strstr(err, cases[i].want) != NULL, "error \"%s\" lacks \"%s\"",
              err, cases[i].want);
        grammar_free(g);
    }
}

static void test_lenient_tool_parameters(void)
{
    char err[256];
    cJSON *tools = cJSON_Parse(
        "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
        "\"parameters\":{\"type\":\"object\",\"properties\":{"
        "\"city\":{\"type\":\"string\",\"minLength\":1},"
        "\"days\":{\"type\":\"integer\",\"minimum\":1}},"
        "\"required\":[\"city\"]}}},"
        "{\"type\":\"function\",\"function\":{\"name\":\"get\"}}]");
    grammar *g = json_schema_tool_calls(tools, NULL, 1, err, sizeof(err));
    grammar_state s;

    REQUIRE(g != NULL, "tool grammar: %s", err);
    CHECK(matches(g, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
                     "{\"city\": \"Paris\"}}\n</tool_call>"), "one call");
    CHECK(matches(g, "<tool_call>\n{\"name\": \"get\", \"arguments\": {}}\n"
                     "</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", "
                     "\"arguments\": {\"days\":2,\"city\":\"x\"}}\n"
                     "</tool_call>"), "two calls");
    CHECK(!matches(g, "<tool_call>\n{\"name\": \"put\", \"arguments\": {}}\n"
                      "</tool_call>"), "unknown function");
    CHECK(!matches(g, "<tool_call>\n{\"name\": \"get_weather\", "
                      "\"arguments\": {}}\n</tool_call>"), "required city");
    CHECK(!matches(g, "Sure! <tool_call>"), "text first");
    grammar_state_init(g, &s);
    CHECK(grammar_state_feed(g, &s, "<tool_call>\n{\"name\": \"get\", "
                             "\"arguments\": {}}\n</tool_call>", 57) == 0,
          "fed");
    CHECK(grammar_state_accepting(g, &s) && !grammar_state_terminal(&s),
          "parallel calls: may end or go on");
    grammar_free(g);

    g = json_schema_tool_calls(tools, "get", 1, err, sizeof(err));
    REQUIRE(g != NULL, "named tool grammar: %s", err);
    grammar_state_init(g, &s);
    CHECK(grammar_state_feed(g, &s, "<tool_call>\n{\"name\": \"get\", "
                             "\"arguments\": {}}\n</tool_call>", 57) == 0,
          "fed named");
    CHECK(grammar_state_terminal(&s), "a named call is one call");
    CHECK(!prefix_ok(g, "<tool_call>\n{\"name\": \"get_"), "only the named");
    grammar_free(g);

    CHECK(json_schema_tool_calls(tools, "nope", 1, err, sizeof(err)) == NULL
          && strstr(err, "\"nope\"") != NULL, "unknown name: %s", err);
    cJSON_Delete(tools);
}

/* ---- masks against the vocabulary ------------------------------------- */

static const char *tok_bytes(void *ctx, int32_t id, size_t *len)
{
    (void) ctx;
    if (tokenizer_is_special(tok, id)) {
        return NULL;
    }
    return tokenizer_token_bytes(tok, id, len);
}

static int brute_allowed(const grammar *g, const grammar_state *s, int32_t id)
{
    grammar_state t = *s;
    size_t len = 0;
    const char *b;

    if (id == eos_id) {
        return grammar_state_accepting(g, s);
    }
    b = tok_bytes(NULL, id, &len);
    if (b == NULL || len == 0) {
        return 0;
    }
    return grammar_state_feed(g, &t, b, len) == 0;
}

/* Compares the matcher's mask with a check of every token, at each state
 * along text.  Returns the number of states compared. */
static int compare_along(const grammar *g, const char *text, int every)
{
    size_t i, len = strlen(text);
    int rows = grammar_vocab_rows(vocab), n = 0;

    for (i = 0; i <= len; i += (size_t) every) {
        grammar_matcher *m = grammar_matcher_new(g, vocab);
        grammar_state s;
        const uint64_t *w;
        int count, id, diff = 0, brute = 0;

        if (m == NULL) {
            return -1;
        }
        grammar_state_init(g, &s);
        if (grammar_matcher_feed(m, text, i) != 0
            || grammar_state_feed(g, &s, text, i) != 0)
        {
            CHECK(0, "text prefix %zu rejected", i);
            grammar_matcher_free(m);
            break;
        }
        count = grammar_matcher_mask(m, &w);
        for (id = 0; id < rows; id++) {
            int a = (int) (w[id / 64] >> (id % 64) & 1);
            int b = brute_allowed(g, &s, id);

            brute += b;
            if (a != b && diff++ < 3) {
                size_t tl = 0;
                const char *tb = tok_bytes(NULL, id, &tl);

                CHECK(0, "at byte %zu of %s: token %d (%.*s) mask %d brute %d",
                      i, text, id, (int) tl, tb ? tb : "", a, b);
            }
        }
        CHECK(count == brute, "count %d brute %d", count, brute);
        n++;
        grammar_matcher_free(m);
    }
    return n;
}

static void test_masks_equal_brute_force(void)
{
    char err[256];
    grammar *g = compile_text(person_schema, err, sizeof(err));
    const char *doc = "{\"name\": \"a \\\"b\\\" \\u00e9\", \"age\": -12, "
                      "\"score\": 3.25e+2, \"tags\": [\"x\", \"y\"], "
                      "\"kind\": 12, \"home\": {\"city\": \"P\"}, "
                      "\"maybe\": null, \"ok\": false}";
    cJSON *tools;
    int n;

    REQUIRE(g != NULL, "compile: %s", err);
    REQUIRE(matches(g, doc), "the document matches");
    n = compare_along(g, doc, 3);
    CHECK(n > 30, "compared %d states", n);
    grammar_free(g);

    tools = cJSON_Parse("[{\"type\":\"function\",\"function\":{\"name\":"
                        "\"f\",\"parameters\":{\"type\":\"object\","
                        "\"properties\":{\"q\":{\"type\":\"string\"}}}}}]");
    g = json_schema_tool_calls(tools, NULL, 1, err, sizeof(err));
    REQUIRE(g != NULL, "tools: %s", err);
    n = compare_along(g, "<tool_call>\n{\"name\": \"f\", \"arguments\": "
                         "{\"q\": \"w\"}}\n</tool_call>", 4);
    CHECK(n > 10, "compared %d states", n);
    grammar_free(g);
    cJSON_Delete(tools);
}

/* Random token walks through the masks (what a model that knows nothing
 * does under the constraint) end in JSON that parses and validates. */
static void walk_and_validate(const char *schema_json, int seeds,
                              int budget)
{
    char err[256];
    cJSON *schema = cJSON_Parse(schema_json);
    grammar *g = json_schema_compile(schema, 0, err, sizeof(err));
    int seed, finished = 0;

    REQUIRE(g != NULL, "compile: %s", err);
    for (seed = 1; seed <= seeds; seed++) {
        grammar_matcher *m = grammar_matcher_new(g, vocab);
        uint64_t rng = 0x9E3779B97F4A7C15ULL * (uint64_t) seed;
        char out[8192];
        size_t len = 0;
        int steps;

        REQUIRE(m != NULL, "matcher");
        for (steps = 0; steps < budget && !grammar_matcher_terminal(m);
             steps++)
        {
            const uint64_t *w;
            int count, pick, id;

            grammar_matcher_set_budget(m, budget - steps);
            count = grammar_matcher_mask(m, &w);
            size_t tl = 0;
            const char *tb;

            REQUIRE(count > 0, "empty mask at step %d", steps);
            /* Parallel-call and number roots may end or go on: take eos
             * when it is the only choice, else any token (eos included). */
            if (count == 1 && (w[eos_id / 64] >> (eos_id % 64) & 1)) {
                break;
            }
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            pick = (int) (rng % (uint64_t) count);
            for (id = 0; ; id++) {
                if (w[id / 64] >> (id % 64) & 1) {
                    if (pick-- == 0) {
                        break;
                    }
                }
            }
            REQUIRE(grammar_matcher_accept(m, id) == 0, "masked token %d "
                    "refused", id);
            if (id == eos_id) {
                break;
            }
            tb = tok_bytes(NULL, id, &tl);
            if (len + tl < sizeof(out)) {
                memcpy(out + len, tb, tl);
                len += tl;
            }
        }
        out[len] = '\0';
        CHECK(grammar_matcher_accepting(m), "seed %d: unfinished after %d "
              "tokens: %s", seed, steps, out);
        if (grammar_matcher_accepting(m)) {
            cJSON *v = cJSON_ParseWithLength(out, len);

            finished++;
            CHECK(v != NULL, "seed %d: does not parse: %s", seed, out);
            if (v != NULL) {
                char verr[256];
                int ok = json_schema_validate(schema, v, verr, sizeof(verr));

                CHECK(ok == 1, "seed %d: invalid (%s): %s", seed, verr, out);
                cJSON_Delete(v);
            }
        }
        grammar_matcher_free(m);
    }
    /* Random tokens inside strings rarely close them: the budget's
     * closing mode must end every walk. */
    CHECK(finished == seeds, "only %d of %d walks finished", finished, seeds);
    grammar_free(g);
    cJSON_Delete(schema);
}

static void test_random_walks_validate(void)
{
    walk_and_validate(person_schema, 40, 200);
    walk_and_validate(person_schema, 10, 60);
    walk_and_validate("{\"type\":\"array\",\"items\":{\"type\":\"object\","
                      "\"properties\":{\"id\":{\"type\":\"integer\"},"
                      "\"on\":{\"type\":\"boolean\"}},"
                      "\"required\":[\"id\",\"on\"]},\"minItems\":1,"
                      "\"maxItems\":4}", 40, 120);
}

int main(void)
{
    char err[256];

    tok = tokenizer_load(TOKENIZER_PATH, err, sizeof(err));
    if (tok == NULL) {
        fprintf(stderr, "tokenizer: %s\n", err);
        return 1;
    }
    eos_id = tokenizer_token_id(tok, "<|im_end|>");
    {
        double t0 = unit_now();

        vocab = grammar_vocab_new(151936, tok_bytes, NULL, &eos_id, 1);
        fprintf(stderr, "# vocabulary trie built in %.0f ms\n",
                (unit_now() - t0) * 1e3);
    }
    if (vocab == NULL) {
        fprintf(stderr, "vocab: out of memory\n");
        return 1;
    }
    RUN(test_accepts_and_rejects);
    RUN(test_whitespace_is_bounded);
    RUN(test_numbers_end_on_the_next_byte);
    RUN(test_refs_and_unions);
    RUN(test_schema_errors_name_the_keyword);
    RUN(test_lenient_tool_parameters);
    RUN(test_masks_equal_brute_force);
    RUN(test_random_walks_validate);
    grammar_vocab_free(vocab);
    tokenizer_free(tok);
    return unit_done();
}
