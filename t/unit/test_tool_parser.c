/*
 * Tool-call parser: whole texts, and the same texts streamed in two pieces
 * split at every byte position and byte by byte, which must reassemble to
 * the whole-text result without markup in content.
 */
#include "unit.h"

#include <stdint.h>

#include "openai.h"
#include "tool_parser.h"

#include <cJSON.h>

typedef struct {
    const char *name;
    const char *text;
    const char *content;        /* expected content */
    int         n_calls;
    const char *call_names[3];
    const char *call_args[3];
    int         markup_ok;      /* content may hold markup (fallbacks) */
} parse_case;

static const parse_case cases[] = {
    { "plain text", "Hello, world!\n", "Hello, world!\n", 0, {0}, {0}, 0 },
    { "one call",
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
      "\"Paris\"}}\n</tool_call>",
      "", 1, { "get_weather" }, { "{\"city\": \"Paris\"}" }, 0 },
    { "text, two calls, text",
      "Let me check.\n\n<tool_call>\n{\"name\": \"a\", \"arguments\": "
      "{\"x\": \"}{\\\"\", \"y\": [1, {\"z\": 2}]}}\n</tool_call>\n"
      "<tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>\n"
      "Done.",
      "Let me check.Done.", 2, { "a", "b" },
      { "{\"x\": \"}{\\\"\", \"y\": [1, {\"z\": 2}]}", "{}" }, 0 },
    { "escaped name, compact",
      "<tool_call>{\"name\":\"caf\\u00e9\",\"arguments\":{\"q\":1}}</tool_call>",
      "", 1, { "caf\xc3\xa9" }, { "{\"q\":1}" }, 0 },
    { "malformed block is content",
      "Hi <tool_call>\n{\"oops\": 1}\n</tool_call> bye",
      "Hi <tool_call>\n{\"oops\": 1}\n</tool_call> bye", 0, {0}, {0}, 1 },
    { "arguments not an object",
      "<tool_call>\n{\"name\": \"f\", \"arguments\": \"x\"}\n</tool_call>",
      "<tool_call>\n{\"name\": \"f\", \"arguments\": \"x\"}\n</tool_call>",
      0, {0}, {0}, 1 },
    { "cut short in the arguments",
      "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"city\": \"Par",
      "", 1, { "f" }, { "{\"city\": \"Par" }, 0 },
    { "cut short in the head",
      "ok <tool_call>\n{\"name\": \"f",
      "ok <tool_call>\n{\"name\": \"f", 0, {0}, {0}, 1 },
    { "junk after the arguments is dropped",
      "<tool_call>\n{\"name\": \"f\", \"arguments\": {}, \"x\": 1}\n"
      "</tool_call>tail",
      "tail", 1, { "f" }, { "{}" }, 0 },
    { "a lone '<' and a near tag",
      "a < b <tool_cal c", "a < b <tool_cal c", 0, {0}, {0}, 0 },
};

#define N_CASES (int) (sizeof(cases) / sizeof(cases[0]))

typedef struct {
    char  content[1024];
    size_t content_len;
    char  names[3][64];
    char  ids[3][64];
    char  args[3][256];
    int   n_calls;
    int   markup_in_content;
    int   bad;
} collected;

static void collect(collected *c, const tool_deltas *ds)
{
    int i;

    for (i = 0; i < ds->n; i++) {
        const tool_delta *d = &ds->d[i];

        if (d->kind == TOOL_DELTA_CONTENT) {
            if (c->content_len + d->len < sizeof(c->content)) {
                memcpy(c->content + c->content_len, d->text, d->len);
                c->content_len += d->len;
                c->content[c->content_len] = '\0';
            }
            if (strstr(d->text, "<tool_call>") != NULL) {
                c->markup_in_content = 1;
            }
        } else {
            if (d->index < 0 || d->index >= 3) {
                c->bad = 1;
                continue;
            }
            if (d->id != NULL) {
                /* First delta of a call: in order, once. */
                if (d->index != c->n_calls) {
                    c->bad = 1;
                }
                c->n_calls = d->index + 1;
                snprintf(c->ids[d->index], 64, "%s", d->id);
                snprintf(c->names[d->index], 64, "%s", d->name);
            } else if (d->index >= c->n_calls) {
                c->bad = 1;           /* arguments before the call */
            }
            strncat(c->args[d->index], d->text,
                    sizeof(c->args[0]) - strlen(c->args[d->index]) - 1);
        }
    }
}

/* Feeds text split at the given cut points (sorted, may be empty). */
static void run_split(const char *text, const size_t *cuts, int n_cuts,
                      collected *c)
{
    tool_parser *p = tool_parser_new(7);
    tool_deltas ds = { NULL, 0, 0 };
    size_t at = 0, len = strlen(text);
    int i;

    memset(c, 0, sizeof(*c));
    for (i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;

        if (tool_parser_feed(p, text + at, end - at, &ds) != 0) {
            c->bad = 1;
        }
        collect(c, &ds);
        tool_deltas_clear(&ds);
        at = end;
    }
    if (tool_parser_finish(p, &ds) != 0) {
        c->bad = 1;
    }
    collect(c, &ds);
    tool_deltas_free(&ds);
    tool_parser_free(p);
}

static void check_case(const parse_case *pc, const collected *c,
                       const char *how)
{
    int i;

    CHECK(!c->bad, "%s (%s): bad delta order", pc->name, how);
    CHECK(strcmp(c->content, pc->content) == 0,
          "%s (%s): content [%s], want [%s]", pc->name, how, c->content,
          pc->content);
    CHECK(c->n_calls == pc->n_calls, "%s (%s): %d calls, want %d", pc->name,
          how, c->n_calls, pc->n_calls);
    for (i = 0; i < c->n_calls && i < pc->n_calls; i++) {
        CHECK(strcmp(c->names[i], pc->call_names[i]) == 0,
              "%s (%s): name %s", pc->name, how, c->names[i]);
        CHECK(strcmp(c->args[i], pc->call_args[i]) == 0,
              "%s (%s): args [%s], want [%s]", pc->name, how, c->args[i],
              pc->call_args[i]);
        CHECK(strncmp(c->ids[i], "call_", 5) == 0 && strlen(c->ids[i]) == 29,
              "%s (%s): id %s", pc->name, how, c->ids[i]);
    }
    if (!pc->markup_ok) {
        CHECK(!c->markup_in_content, "%s (%s): markup in content", pc->name,
              how);
    }
}

static void test_whole_texts(void)
{
    int k;

    for (k = 0; k < N_CASES; k++) {
        collected c;

        run_split(cases[k].text, NULL, 0, &c);
        check_case(&cases[k], &c, "whole");
    }
}

static void test_split_at_every_byte(void)
{
    int k;

    for (k = 0; k < N_CASES; k++) {
        size_t len = strlen(cases[k].text), cut;
        collected whole, c;

        run_split(cases[k].text, NULL, 0, &whole);
        for (cut = 0; cut <= len; cut++) {
            char how[32];

            run_split(cases[k].text, &cut, 1, &c);
            snprintf(how, sizeof(how), "cut at %zu", cut);
            check_case(&cases[k], &c, how);
            /* Same ids too: they come from the seed, in call order. */
            CHECK(c.n_calls == 0 || strcmp(c.ids[0], whole.ids[0]) == 0,
                  "%s: ids differ", cases[k].name);
        }
    }
}

static void test_byte_by_byte(void)
{
    int k;

    for (k = 0; k < N_CASES; k++) {
        size_t len = strlen(cases[k].text), i;
        size_t *cuts = malloc((len + 1) * sizeof(size_t));
        collected c;

        for (i = 0; i < len; i++) {
            cuts[i] = i + 1;
        }
        run_split(cases[k].text, cuts, (int) len, &c);
        check_case(&cases[k], &c, "byte by byte");
        free(cuts);
    }
}

static void test_parse_text_and_ids(void)
{
    tool_parse_result r;
    const char *t = "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n"
                    "</tool_call>\n<tool_call>\n{\"name\": \"b\", "
                    "\"arguments\": {\"k\": [1]}}\n</tool_call>";

    REQUIRE(tool_parse_text(t, strlen(t), 1, &r) == 0, "parse");
    CHECK(r.n_calls == 2 && r.content_len == 0, "%d calls, content [%s]",
          r.n_calls, r.content);
    if (r.n_calls == 2) {
        CHECK(strcmp(r.calls[0].name, "a") == 0
              && strcmp(r.calls[0].arguments, "{}") == 0, "call 0");
        CHECK(strcmp(r.calls[1].name, "b") == 0
              && strcmp(r.calls[1].arguments, "{\"k\": [1]}") == 0, "call 1");
        CHECK(strcmp(r.calls[0].id, r.calls[1].id) != 0, "distinct ids");
    }
    tool_parse_result_free(&r);
}

/* ---- through the OpenAI response layer ------------------------------- */

static const oai_limits limits = { 0, 0, 0 };

static const char *chat_body(int stream)
{
    return stream
        ? "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
          "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\"}},"
          "{\"type\":\"function\",\"function\":{\"name\":\"b\"}}],"
          "\"stream\":true}"
        : "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
          "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\"}},"
          "{\"type\":\"function\",\"function\":{\"name\":\"b\"}}]}";
}

static void token_event(llm_event *ev, const char *text, size_t len)
{
    memset(ev, 0, sizeof(*ev));
    ev->type = LLM_EV_TOKEN;
    ev->text = (char *) text;
    ev->text_len = len;
}

/* Reassembles an SSE stream: content, calls (name + arguments joined by
 * index), finish_reason; and fails on markup in any content delta. */
static void reassemble(const char *sse, cJSON *msg, char *finish, size_t fl)
{
    const char *p = sse;
    cJSON *calls = cJSON_AddArrayToObject(msg, "tool_calls");
    char content[2048] = "";

    while ((p = strstr(p, "data: ")) != NULL) {
        const char *end = strstr(p, "\n\n");
        cJSON *o, *ch, *delta, *tc, *x;

        p += 6;
        if (strncmp(p, "[DONE]", 6) == 0) {
            break;
        }
        o = cJSON_ParseWithLength(p, (size_t) (end - p));
        p = end;
        ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
        delta = cJSON_GetObjectItem(ch, "delta");
        x = cJSON_GetObjectItem(ch, "finish_reason");
        if (cJSON_IsString(x)) {
            snprintf(finish, fl, "%s", x->valuestring);
        }
        x = cJSON_GetObjectItem(delta, "content");
        if (cJSON_IsString(x)) {
            CHECK(strstr(x->valuestring, "<tool_call>") == NULL,
                  "markup streamed: %s", x->valuestring);
            strncat(content, x->valuestring,
                    sizeof(content) - strlen(content) - 1);
        }
        cJSON_ArrayForEach(tc, cJSON_GetObjectItem(delta, "tool_calls")) {
            int idx = cJSON_GetObjectItem(tc, "index")->valueint;
            cJSON *fn = cJSON_GetObjectItem(tc, "function");
            cJSON *call = cJSON_GetArrayItem(calls, idx), *args;
            const cJSON *piece = cJSON_GetObjectItem(fn, "arguments");
            char *joined;

            if (call == NULL) {
                CHECK(cJSON_GetArraySize(calls) == idx
                      && cJSON_GetObjectItem(tc, "id") != NULL
                      && cJSON_GetObjectItem(fn, "name") != NULL,
                      "first delta of call %d lacks id/name", idx);
                call = cJSON_CreateObject();
                cJSON_AddItemToArray(calls, call);
                cJSON_AddStringToObject(call, "name",
                    cJSON_GetStringValue(cJSON_GetObjectItem(fn, "name")));
                cJSON_AddStringToObject(call, "arguments", "");
            }
            args = cJSON_GetObjectItem(call, "arguments");
            joined = malloc(strlen(args->valuestring)
                            + strlen(piece ? piece->valuestring : "") + 1);
            strcpy(joined, args->valuestring);
            strcat(joined, piece ? piece->valuestring : "");
            cJSON_SetValuestring(args, joined);
            free(joined);
        }
        cJSON_Delete(o);
    }
    cJSON_AddStringToObject(msg, "content", content);
}

static void test_stream_reassembles_to_non_stream(void)
{
    const char *text = "Sure.\n<tool_call>\n{\"name\": \"a\", \"arguments\": "
                       "{\"city\": \"Par\\\"is\", \"n\": [1, 2]}}\n"
                       "</tool_call>\n<tool_call>\n{\"name\": \"b\", "
                       "\"arguments\": {}}\n</tool_call>";
    size_t len = strlen(text), step;

    for (step = 1; step <= len; step += (step < 8 ? 1 : 13)) {
        oai_request sreq, nreq;
        oai_response srs, nrs;
        oai_error err;
        oai_buf sse = { NULL, 0, 0 };
        llm_event ev;
        size_t at, jl;
        char *body, finish[32] = "";
        cJSON *want, *wmsg, *got = cJSON_CreateObject(), *wcalls;
        int k;

        REQUIRE(oai_parse_request(OAI_CHAT, chat_body(1), strlen(chat_body(1)),
                                  &limits, &sreq, &err) == 0, "%s", err.message);
        REQUIRE(oai_parse_request(OAI_CHAT, chat_body(0), strlen(chat_body(0)),
                                  &limits, &nreq, &err) == 0, "%s", err.message);
        REQUIRE(oai_response_init(&srs, &sreq, "m", NULL, NULL) == 0, "init");
        REQUIRE(oai_response_init(&nrs, &nreq, "m", NULL, NULL) == 0, "init");
        for (at = 0; at < len; at += step) {
            size_t n = len - at < step ? len - at : step;

            token_event(&ev, text + at, n);
            REQUIRE(oai_stream_event(&srs, 0, &ev, &sse) == 0, "stream");
            REQUIRE(oai_collect_event(&nrs, 0, &ev) == 0, "collect");
        }
        memset(&ev, 0, sizeof(ev));
        ev.type = LLM_EV_FINISH;
        ev.finish_reason = LLM_FINISH_STOP;
        ev.stop_token = -1;
        REQUIRE(oai_stream_event(&srs, 0, &ev, &sse) == 0, "stream finish");
        REQUIRE(oai_collect_event(&nrs, 0, &ev) == 0, "collect finish");
        REQUIRE(oai_stream_done(&srs, &sse) == 0, "done");
        REQUIRE(oai_buf_append(&sse, "", 1) == 0, "nul");
        body = oai_response_json(&nrs, &jl);
        want = cJSON_Parse(body);
        wmsg = cJSON_GetObjectItem(cJSON_GetArrayItem(
                   cJSON_GetObjectItem(want, "choices"), 0), "message");
        reassemble(sse.data, got, finish, sizeof(finish));
        CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(
                  cJSON_GetArrayItem(cJSON_GetObjectItem(want, "choices"), 0),
                  "finish_reason")), "tool_calls") == 0, "non-stream finish");
        CHECK(strcmp(finish, "tool_calls") == 0, "stream finish %s", finish);
        CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(got, "content")),
                     "Sure.") == 0
              && strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(wmsg,
                        "content")), "Sure.") == 0, "content: %s", body);
        wcalls = cJSON_GetObjectItem(wmsg, "tool_calls");
        CHECK(cJSON_GetArraySize(wcalls) == 2
              && cJSON_GetArraySize(cJSON_GetObjectItem(got, "tool_calls"))
                 == 2, "two calls each (step %zu): %s", step, body);
        for (k = 0; k < cJSON_GetArraySize(wcalls); k++) {
            cJSON *w = cJSON_GetArrayItem(wcalls, k);
            cJSON *wf = cJSON_GetObjectItem(w, "function");
            cJSON *g = cJSON_GetArrayItem(cJSON_GetObjectItem(got,
                                                              "tool_calls"), k);

            CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(w, "type")),
                         "function") == 0
                  && strncmp(cJSON_GetStringValue(cJSON_GetObjectItem(w,
                             "id")), "call_", 5) == 0, "id/type");
            CHECK(g != NULL
                  && strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(wf,
                            "name")), cJSON_GetStringValue(
                            cJSON_GetObjectItem(g, "name"))) == 0
                  && strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(wf,
                            "arguments")), cJSON_GetStringValue(
                            cJSON_GetObjectItem(g, "arguments"))) == 0,
                  "call %d differs (step %zu)", k, step);
        }
        free(body);
        cJSON_Delete(want);
        cJSON_Delete(got);
        oai_buf_free(&sse);
        oai_response_free(&srs);
        oai_response_free(&nrs);
        oai_request_free(&sreq);
        oai_request_free(&nreq);
    }
}

static void test_tool_choice_and_response_format_checks(void)
{
    static const struct {
        const char *extra, *param, *in_message;
    } bad[] = {
        { "\"tool_choice\":\"required\"", "tool_choice", "needs 'tools'" },
        { "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\"}}],"
          "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":"
          "\"zz\"}}", "tool_choice", "\"zz\"" },
        { "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\"}}],"
          "\"tool_choice\":\"sometimes\"", "tool_choice", "tool_choice" },
        { "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":"
          "{\"name\":\"x\",\"schema\":{\"type\":\"string\",\"format\":"
          "\"email\"}}}", "response_format", "\"format\"" },
        { "\"response_format\":{\"type\":\"yaml\"}", "response_format",
          "yaml" },
    };
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char body[1024];
        oai_request req;
        oai_error err;

        snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\","
                 "\"content\":\"hi\"}],%s}", bad[i].extra);
        memset(&err, 0, sizeof(err));
        CHECK(oai_parse_request(OAI_CHAT, body, strlen(body), &limits, &req,
                                &err) == -1, "accepted: %s", body);
        CHECK(err.status == 400 && strcmp(err.param, bad[i].param) == 0
              && strstr(err.message, bad[i].in_message) != NULL,
              "%s: %d %s %s", body, err.status, err.param, err.message);
    }
    {
        const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":"
            "\"hi\"}],\"response_format\":{\"type\":\"json_schema\","
            "\"json_schema\":{\"name\":\"x\",\"schema\":{\"type\":\"object\","
            "\"properties\":{\"a\":{\"type\":\"integer\"}}}}}}";
        oai_request req;
        oai_error err;
        llm_request_params p;

        REQUIRE(oai_parse_request(OAI_CHAT, body, strlen(body), &limits, &req,
                                  &err) == 0, "%s", err.message);
        oai_request_params(&req, 0, &p);
        CHECK(p.constraint_json != NULL
              && strstr(p.constraint_json, "\"json_schema\"") != NULL,
              "constraint %s", p.constraint_json ? p.constraint_json : "-");
        oai_request_free(&req);
    }
}

int main(void)
{
    RUN(test_whole_texts);
    RUN(test_split_at_every_byte);
    RUN(test_byte_by_byte);
    RUN(test_parse_text_and_ids);
    RUN(test_stream_reassembles_to_non_stream);
    RUN(test_tool_choice_and_response_format_checks);
    return unit_done();
}
