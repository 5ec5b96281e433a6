/*
 * OpenAI request parsing/validation and response JSON (src/openai.c),
 * without an engine: events are built by hand, token texts come from a
 * small table.
 */
#include "unit.h"

#include <cJSON.h>

#include "openai.h"

static const oai_limits no_limits = { 0, 0, 0 };

/* token id -> text: 1 "Hel", 2 "lo", 3 " wor", 4 "ld", 5 "\xE4\xB8" (half
 * of a CJK character), 6 "\xAD" (its end) */
static const char *fake_token_text(void *ctx, int32_t id, size_t *len)
{
    static const char *texts[] = { "", "Hel", "lo", " wor", "ld",
                                   "\xE4\xB8", "\xAD" };

    (void) ctx;
    if (id < 1 || id > 6) {
        return NULL;
    }
    *len = strlen(texts[id]);
    return texts[id];
}

static int parse(oai_kind kind, const char *body, oai_request *req,
                 oai_error *err)
{
    return oai_parse_request(kind, body, strlen(body), &no_limits, req, err);
}

/* Parses the body and expects a 400 naming param. */
static void expect_400(oai_kind kind, const char *body, const char *param)
{
    oai_request req;
    oai_error err;

    memset(&err, 0, sizeof(err));
    CHECK(parse(kind, body, &req, &err) == -1, "accepted: %s", body);
    CHECK(err.status == 400, "status %d for %s", err.status, body);
    CHECK(strcmp(err.param, param) == 0, "param '%s' (wanted '%s') for %s: %s",
          err.param, param, body, err.message);
    CHECK(err.message[0] != '\0', "no message for %s", body);
}

static void test_chat_params(void)
{
    oai_request req;
    oai_error err;
    llm_request_params p;
    const char *body =
        "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"S\"},"
        "{\"role\":\"user\",\"content\":\"hi\"}],"
        "\"temperature\":0.5,\"top_p\":0.9,\"top_k\":7,\"min_p\":0.1,"
        "\"presence_penalty\":1.5,\"frequency_penalty\":-1,"
        "\"repetition_penalty\":1.2,\"seed\":42,\"stop\":[\"a\",\"bc\"],"
        "\"stop_token_ids\":[5,6],\"max_tokens\":10,"
        "\"max_completion_tokens\":12,\"n\":3,\"logprobs\":true,"
        "\"top_logprobs\":2,\"logit_bias\":{\"17\":-100,\"3\":5.5},"
        "\"ignore_eos\":true,\"stream\":true,"
        "\"stream_options\":{\"include_usage\":true},"
        "\"chat_template_kwargs\":{\"enable_thinking\":false},"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
        "\"unknown_field\":{\"x\":1}}";

    REQUIRE(parse(OAI_CHAT, body, &req, &err) == 0, "%s", err.message);
    oai_request_params(&req, 0, &p);
    CHECK(p.kind == LLM_PROMPT_CHAT, "kind %d", p.kind);
    CHECK(strcmp(req.model, "m") == 0, "model");
    CHECK(fabsf(p.sampling.temperature - 0.5f) < 1e-6, "temperature");
    CHECK(fabsf(p.sampling.top_p - 0.9f) < 1e-6, "top_p");
    CHECK(p.sampling.top_k == 7, "top_k %d", p.sampling.top_k);
    CHECK(fabsf(p.sampling.min_p - 0.1f) < 1e-6, "min_p");
    CHECK(fabsf(p.sampling.presence_penalty - 1.5f) < 1e-6, "presence");
    CHECK(fabsf(p.sampling.frequency_penalty + 1.0f) < 1e-6, "frequency");
    CHECK(fabsf(p.sampling.repetition_penalty - 1.2f) < 1e-6, "repetition");
    CHECK(p.sampling.has_seed && p.sampling.seed == 42, "seed");
    CHECK(p.n_stop == 2 && strcmp(p.stop[1], "bc") == 0, "stop");
    CHECK(p.n_stop_token_ids == 2 && p.stop_token_ids[1] == 6, "stop ids");
    CHECK(p.max_tokens == 12, "max_completion_tokens wins: %d", p.max_tokens);
    CHECK(req.n == 3, "n");
    CHECK(p.sampling.logprobs == 1 && p.sampling.top_logprobs == 2,
          "logprobs");
    CHECK(p.sampling.n_logit_bias == 2, "logit_bias");
    CHECK(p.ignore_eos == 1, "ignore_eos");
    CHECK(req.stream == 1 && req.include_usage == 1, "stream");
    CHECK(p.template_kwargs_json
          && strstr(p.template_kwargs_json, "enable_thinking"), "kwargs");
    CHECK(p.tools_json && strstr(p.tools_json, "\"f\""), "tools");
    CHECK(p.add_generation_prompt == 1, "generation prompt");
    CHECK(strstr(p.messages_json, "\"system\"") != NULL, "messages");
    oai_request_free(&req);
}

static void test_chat_defaults(void)
{
    oai_request req;
    oai_error err;
    llm_request_params p;
    oai_limits lim = { 100, 200, 0 };
    const char *b = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    const char *big = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                      "\"max_tokens\":1000,\"top_k\":-1}";

    REQUIRE(oai_parse_request(OAI_CHAT, b, strlen(b), &lim, &req, &err) == 0,
            "%s", err.message);
    oai_request_params(&req, 0, &p);
    CHECK(req.model == NULL, "no model");
    CHECK(p.sampling.temperature < 0 && p.sampling.top_p < 0
          && p.sampling.top_k < 0, "unset sampling means engine defaults");
    CHECK(p.max_tokens == 100, "default max_tokens %d", p.max_tokens);
    CHECK(req.stream == 0 && req.n == 1, "defaults");
    oai_request_free(&req);

    REQUIRE(oai_parse_request(OAI_CHAT, big, strlen(big), &lim, &req, &err)
            == 0, "%s", err.message);
    oai_request_params(&req, 0, &p);
    CHECK(p.max_tokens == 200, "capped max_tokens %d", p.max_tokens);
    CHECK(p.sampling.top_k == 0, "top_k -1 is off: %d", p.sampling.top_k);
    oai_request_free(&req);
}

static void test_chat_content_parts(void)
{
    oai_request req;
    oai_error err;
    cJSON *m;
    const char *b = "{\"messages\":[{\"role\":\"developer\",\"content\":\"D\"},"
                    "{\"role\":\"user\",\"content\":[{\"type\":\"text\","
                    "\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
                    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":"
                    "[{\"id\":\"1\",\"type\":\"function\",\"function\":{\"name\":"
                    "\"f\",\"arguments\":\"{}\"}}]},"
                    "{\"role\":\"tool\",\"content\":\"r\",\"tool_call_id\":\"1\"}]}";

    REQUIRE(parse(OAI_CHAT, b, &req, &err) == 0, "%s", err.message);
    m = cJSON_Parse(req.messages_json);
    REQUIRE(m != NULL, "messages json");
    CHECK(strcmp(cJSON_GetObjectItem(cJSON_GetArrayItem(m, 0), "role")
                 ->valuestring, "system") == 0, "developer -> system");
    CHECK(strcmp(cJSON_GetObjectItem(cJSON_GetArrayItem(m, 1), "content")
                 ->valuestring, "a\nb") == 0, "parts joined");
    CHECK(cJSON_GetObjectItem(cJSON_GetArrayItem(m, 2), "tool_calls") != NULL,
          "tool calls kept");
    CHECK(cJSON_IsString(cJSON_GetObjectItem(cJSON_GetArrayItem(m, 2),
                                             "content")), "null content -> \"\"");
    cJSON_Delete(m);
    oai_request_free(&req);
}

static void test_chat_errors(void)
{
    oai_request req;
    oai_error err;

    CHECK(parse(OAI_CHAT, "{not json", &req, &err) == -1
          && err.status == 400 && strcmp(err.code, "invalid_json") == 0,
          "invalid json");
    CHECK(parse(OAI_CHAT, "[1]", &req, &err) == -1 && err.status == 400,
          "not an object");
    expect_400(OAI_CHAT, "{}", "messages");
    expect_400(OAI_CHAT, "{\"messages\":[]}", "messages");
    expect_400(OAI_CHAT, "{\"messages\":\"hi\"}", "messages");
    expect_400(OAI_CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":"
               "\"x\"}]}", "messages[0].role");
    expect_400(OAI_CHAT, "{\"messages\":[{\"content\":\"x\"}]}",
               "messages[0].role");
    expect_400(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}",
               "messages[0].content");
    expect_400(OAI_CHAT, "{\"messages\":[{\"role\":\"user\"}]}",
               "messages[0].content");
    expect_400(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":"
               "[{\"type\":\"image_url\",\"image_url\":{}}]}]}",
               "messages[0].content[0]");
#define MSG "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]"
    expect_400(OAI_CHAT, "{" MSG ",\"temperature\":2.5}", "temperature");
    expect_400(OAI_CHAT, "{" MSG ",\"temperature\":-0.1}", "temperature");
    expect_400(OAI_CHAT, "{" MSG ",\"temperature\":\"hot\"}", "temperature");
    expect_400(OAI_CHAT, "{" MSG ",\"top_p\":0}", "top_p");
    expect_400(OAI_CHAT, "{" MSG ",\"top_k\":-2}", "top_k");
    expect_400(OAI_CHAT, "{" MSG ",\"top_k\":1.5}", "top_k");
    expect_400(OAI_CHAT, "{" MSG ",\"min_p\":1.5}", "min_p");
    expect_400(OAI_CHAT, "{" MSG ",\"presence_penalty\":3}",
               "presence_penalty");
    expect_400(OAI_CHAT, "{" MSG ",\"frequency_penalty\":-3}",
               "frequency_penalty");
    expect_400(OAI_CHAT, "{" MSG ",\"repetition_penalty\":0}",
               "repetition_penalty");
    expect_400(OAI_CHAT, "{" MSG ",\"max_tokens\":0}", "max_tokens");
    expect_400(OAI_CHAT, "{" MSG ",\"max_tokens\":-5}", "max_tokens");
    expect_400(OAI_CHAT, "{" MSG ",\"max_tokens\":\"10\"}", "max_tokens");
    expect_400(OAI_CHAT, "{" MSG ",\"max_completion_tokens\":0}",
               "max_completion_tokens");
    expect_400(OAI_CHAT, "{" MSG ",\"n\":0}", "n");
    expect_400(OAI_CHAT, "{" MSG ",\"n\":1000}", "n");
    expect_400(OAI_CHAT, "{" MSG ",\"stop\":5}", "stop");
    expect_400(OAI_CHAT, "{" MSG ",\"stop\":[\"a\",1]}", "stop");
    expect_400(OAI_CHAT, "{" MSG ",\"stop\":\"\"}", "stop");
    expect_400(OAI_CHAT, "{" MSG ",\"stop_token_ids\":[-1]}",
               "stop_token_ids");
    expect_400(OAI_CHAT, "{" MSG ",\"seed\":\"x\"}", "seed");
    expect_400(OAI_CHAT, "{" MSG ",\"stream\":\"yes\"}", "stream");
    expect_400(OAI_CHAT, "{" MSG ",\"stream_options\":{\"include_usage\":"
               "true}}", "stream_options");
    expect_400(OAI_CHAT, "{" MSG ",\"stream\":true,\"stream_options\":"
               "{\"include_usage\":1}}", "stream_options.include_usage");
    expect_400(OAI_CHAT, "{" MSG ",\"logprobs\":1}", "logprobs");
    expect_400(OAI_CHAT, "{" MSG ",\"top_logprobs\":3}", "top_logprobs");
    expect_400(OAI_CHAT, "{" MSG ",\"logprobs\":true,\"top_logprobs\":21}",
               "top_logprobs");
    expect_400(OAI_CHAT, "{" MSG ",\"logit_bias\":{\"abc\":1}}",
               "logit_bias");
    expect_400(OAI_CHAT, "{" MSG ",\"logit_bias\":{\"5\":101}}",
               "logit_bias");
    expect_400(OAI_CHAT, "{" MSG ",\"ignore_eos\":1}", "ignore_eos");
    expect_400(OAI_CHAT, "{" MSG ",\"model\":5}", "model");
    expect_400(OAI_CHAT, "{" MSG ",\"tools\":{}}", "tools");
    expect_400(OAI_CHAT, "{" MSG ",\"chat_template_kwargs\":[]}",
               "chat_template_kwargs");
    expect_400(OAI_CHAT, "{" MSG ",\"response_format\":{\"type\":"
               "\"json_schema\"}}", "response_format");
#undef MSG
}

static void test_completion_prompts(void)
{
    oai_request req;
    oai_error err;
    llm_request_params p;

    REQUIRE(parse(OAI_COMPLETION, "{\"prompt\":\"abc\",\"echo\":true,"
                  "\"logprobs\":3}", &req, &err) == 0, "%s", err.message);
    oai_request_params(&req, 0, &p);
    CHECK(p.kind == LLM_PROMPT_TEXT && p.text_len == 3, "text prompt");
    CHECK(p.echo == 1 && req.logprobs == 1 && req.top_logprobs == 3
          && p.sampling.logprobs == 1, "echo/logprobs");
    oai_request_free(&req);

    REQUIRE(parse(OAI_COMPLETION, "{\"prompt\":[\"a\",\"b\"],\"n\":2}",
                  &req, &err) == 0, "%s", err.message);
    CHECK(req.n_prompts == 2 && req.n == 2, "two prompts");
    oai_request_params(&req, 1, &p);
    CHECK(p.kind == LLM_PROMPT_TEXT && strcmp(p.text, "b") == 0, "prompt 1");
    oai_request_free(&req);

    REQUIRE(parse(OAI_COMPLETION, "{\"prompt\":[1,2,3]}", &req, &err) == 0,
            "%s", err.message);
    oai_request_params(&req, 0, &p);
    CHECK(req.n_prompts == 1 && p.kind == LLM_PROMPT_TOKENS
          && p.n_tokens == 3 && p.tokens[2] == 3, "token prompt");
    oai_request_free(&req);

    REQUIRE(parse(OAI_COMPLETION, "{\"prompt\":[[1],[2,3]]}", &req, &err)
            == 0, "%s", err.message);
    oai_request_params(&req, 1, &p);
    CHECK(req.n_prompts == 2 && p.kind == LLM_PROMPT_TOKENS
          && p.n_tokens == 2, "token prompts");
    oai_request_free(&req);

    expect_400(OAI_COMPLETION, "{}", "prompt");
    expect_400(OAI_COMPLETION, "{\"prompt\":[]}", "prompt");
    expect_400(OAI_COMPLETION, "{\"prompt\":5}", "prompt");
    expect_400(OAI_COMPLETION, "{\"prompt\":[1,\"a\"]}", "prompt");
    expect_400(OAI_COMPLETION, "{\"prompt\":[[1],[]]}", "prompt");
    expect_400(OAI_COMPLETION, "{\"prompt\":\"a\",\"logprobs\":true}",
               "logprobs");
    expect_400(OAI_COMPLETION, "{\"prompt\":\"a\",\"logprobs\":21}",
               "logprobs");
    expect_400(OAI_COMPLETION, "{\"prompt\":\"a\",\"echo\":\"y\"}", "echo");
    expect_400(OAI_COMPLETION, "{\"prompt\":\"a\",\"suffix\":\"b\"}",
               "suffix");
    expect_400(OAI_COMPLETION, "{\"prompt\":\"a\",\"best_of\":3}",
               "best_of");
}

static llm_event token_event(int32_t *ids, int n, const char *text,
                             llm_token_info *infos, llm_top_logprob *top)
{
    llm_event ev;
    size_t off = 0;
    int i;

    memset(&ev, 0, sizeof(ev));
    ev.type = LLM_EV_TOKEN;
    ev.text = (char *) text;
    ev.text_len = strlen(text);
    ev.n_tokens = n;
    ev.tokens = infos;
    ev.stop_token = -1;
    for (i = 0; i < n; i++) {
        size_t len = 0;

        infos[i].token = ids[i];
        infos[i].logprob = -0.5f * (float) (i + 1);
        infos[i].n_top = 2;
        infos[i].top = top;
        infos[i].text_off = (uint32_t) off;
        fake_token_text(NULL, ids[i], &len);
        off += len;
    }
    return ev;
}

static llm_event finish_event(llm_finish_reason why, int prompt, int gen)
{
    llm_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.type = LLM_EV_FINISH;
    ev.finish_reason = why;
    ev.stop_token = -1;
    ev.usage.prompt_tokens = prompt;
    ev.usage.completion_tokens = gen;
    return ev;
}

/* Splits an SSE body into its data payloads. */
static int sse_events(const char *s, char out[][2048], int max)
{
    int n = 0;

    while (n < max && (s = strstr(s, "data: ")) != NULL) {
        const char *end = strstr(s, "\n\n");
        size_t len;

        if (end == NULL) {
            return -1;
        }
        len = (size_t) (end - s - 6);
        if (len >= 2048) {
            return -1;
        }
        memcpy(out[n], s + 6, len);
        out[n][len] = '\0';
        n++;
        s = end + 2;
    }
    return n;
}

static void test_chat_stream(void)
{
    oai_request req;
    oai_response rs;
    oai_error err;
    oai_buf out = { 0 };
    llm_event started, tok, fin;
    llm_token_info infos[2];
    llm_top_logprob top[2] = { { 1, -0.1f }, { 3, -2.0f } };
    int32_t ids[2] = { 1, 2 };
    char ev[8][2048];
    cJSON *j, *c0, *delta;
    char id[64] = "";
    int n, i;

    REQUIRE(parse(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":"
                  "\"x\"}],\"stream\":true,\"stream_options\":"
                  "{\"include_usage\":true},\"logprobs\":true,"
                  "\"top_logprobs\":1}", &req, &err) == 0, "%s", err.message);
    REQUIRE(oai_response_init(&rs, &req, "tiny", fake_token_text, NULL) == 0,
            "init");

    memset(&started, 0, sizeof(started));
    started.type = LLM_EV_STARTED;
    started.usage.prompt_tokens = 9;
    tok = token_event(ids, 2, "Hello", infos, top);
    fin = finish_event(LLM_FINISH_LENGTH, 9, 2);

    CHECK(oai_stream_event(&rs, 0, &started, &out) == 0, "started");
    CHECK(oai_stream_event(&rs, 0, &tok, &out) == 0, "token");
    CHECK(oai_stream_event(&rs, 0, &fin, &out) == 0, "finish");
    CHECK(oai_stream_done(&rs, &out) == 0, "done");

    n = sse_events(out.data, ev, 8);
    REQUIRE(n == 5, "%d events in %s", n, out.data);
    CHECK(strcmp(ev[4], "[DONE]") == 0, "last is [DONE]: %s", ev[4]);
    for (i = 0; i < 4; i++) {
        j = cJSON_Parse(ev[i]);
        REQUIRE(j != NULL, "event %d not JSON: %s", i, ev[i]);
        CHECK(strcmp(cJSON_GetObjectItem(j, "object")->valuestring,
                     "chat.completion.chunk") == 0, "object");
        if (i == 0) {
            snprintf(id, sizeof(id), "%s",
                     cJSON_GetObjectItem(j, "id")->valuestring);
        } else {
            CHECK(strcmp(id, cJSON_GetObjectItem(j, "id")->valuestring) == 0,
                  "one id per stream");
        }
        c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
        delta = c0 ? cJSON_GetObjectItem(c0, "delta") : NULL;
        switch (i) {
        case 0:
            CHECK(delta && cJSON_GetObjectItem(delta, "role")
                  && strcmp(cJSON_GetObjectItem(delta, "role")->valuestring,
                            "assistant") == 0, "role first: %s", ev[i]);
            CHECK(cJSON_IsNull(cJSON_GetObjectItem(c0, "finish_reason")),
                  "no finish yet");
            CHECK(cJSON_IsNull(cJSON_GetObjectItem(j, "usage")),
                  "usage null in chunks");
            break;
        case 1:
            CHECK(strcmp(cJSON_GetObjectItem(delta, "content")->valuestring,
                         "Hello") == 0, "content: %s", ev[i]);
            CHECK(cJSON_GetObjectItem(delta, "role") == NULL, "role once");
            {
                cJSON *lp = cJSON_GetObjectItem(cJSON_GetObjectItem(c0,
                            "logprobs"), "content");
                cJSON *t0 = cJSON_GetArrayItem(lp, 0);

                CHECK(cJSON_GetArraySize(lp) == 2, "two logprob entries");
                CHECK(t0 && strcmp(cJSON_GetObjectItem(t0, "token")
                                   ->valuestring, "Hel") == 0, "token text");
                CHECK(t0 && cJSON_GetArraySize(cJSON_GetObjectItem(t0,
                      "top_logprobs")) == 1, "top_logprobs limited to 1");
                CHECK(t0 && cJSON_GetArraySize(cJSON_GetObjectItem(t0,
                      "bytes")) == 3, "bytes");
            }
            break;
        case 2:
            CHECK(delta && cJSON_GetArraySize(delta) == 0, "empty final "
                  "delta: %s", ev[i]);
            CHECK(strcmp(cJSON_GetObjectItem(c0, "finish_reason")
                         ->valuestring, "length") == 0, "finish_reason");
            break;
        case 3:
            CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(j, "choices")) == 0,
                  "usage chunk has no choices");
            CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"),
                  "total_tokens")->valueint == 11, "usage: %s", ev[i]);
            break;
        }
        cJSON_Delete(j);
    }
    oai_buf_free(&out);
    oai_response_free(&rs);
    oai_request_free(&req);
}

static void test_chat_nonstream_n(void)
{
    oai_request req;
    oai_response rs;
    oai_error err;
    llm_event tok, fin;
    llm_token_info infos[2];
    llm_top_logprob top[2] = { { 1, -0.1f }, { 3, -2.0f } };
    int32_t ids[2] = { 3, 4 };
    char *json;
    size_t len = 0;
    cJSON *j, *ch, *usage;

    REQUIRE(parse(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":"
                  "\"x\"}],\"n\":2}", &req, &err) == 0, "%s", err.message);
    REQUIRE(oai_response_init(&rs, &req, "tiny", fake_token_text, NULL) == 0,
            "init");
    CHECK(rs.n_choices == 2, "choices %d", rs.n_choices);

    tok = token_event(ids, 2, " world", infos, top);
    fin = finish_event(LLM_FINISH_STOP, 5, 2);
    fin.stop_reason = "END";
    CHECK(oai_collect_event(&rs, 1, &tok) == 0, "tok");
    CHECK(oai_collect_event(&rs, 1, &fin) == 0, "fin");
    fin = finish_event(LLM_FINISH_LENGTH, 5, 0);
    CHECK(oai_collect_event(&rs, 0, &fin) == 0, "fin 0");

    json = oai_response_json(&rs, &len);
    REQUIRE(json && len == strlen(json), "json");
    j = cJSON_Parse(json);
    REQUIRE(j, "parse %s", json);
    CHECK(strcmp(cJSON_GetObjectItem(j, "object")->valuestring,
                 "chat.completion") == 0, "object");
    CHECK(strncmp(cJSON_GetObjectItem(j, "id")->valuestring, "chatcmpl-", 9)
          == 0, "id");
    ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 1);
    CHECK(cJSON_GetObjectItem(ch, "index")->valueint == 1, "index");
    CHECK(strcmp(cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "message"),
                 "content")->valuestring, " world") == 0, "content");
    CHECK(strcmp(cJSON_GetObjectItem(ch, "finish_reason")->valuestring,
                 "stop") == 0, "finish");
    CHECK(strcmp(cJSON_GetObjectItem(ch, "stop_reason")->valuestring, "END")
          == 0, "stop_reason");
    usage = cJSON_GetObjectItem(j, "usage");
    CHECK(cJSON_GetObjectItem(usage, "prompt_tokens")->valueint == 5,
          "prompt counted once: %s", json);
    CHECK(cJSON_GetObjectItem(usage, "completion_tokens")->valueint == 2,
          "completion summed");
    cJSON_Delete(j);
    free(json);
    oai_response_free(&rs);
    oai_request_free(&req);
}

static void test_completion_legacy_logprobs_echo(void)
{
    oai_request req;
    oai_response rs;
    oai_error err;
    llm_event started, tok, fin;
    llm_token_info pinfo[2], infos[2];
    llm_top_logprob top[2] = { { 1, -0.1f }, { 2, -2.0f } };
    int32_t ids[2] = { 3, 4 };
    char *json;
    cJSON *j, *ch, *lp, *off, *tlp, *tops;

    REQUIRE(parse(OAI_COMPLETION, "{\"prompt\":\"Hello\",\"echo\":true,"
                  "\"logprobs\":2,\"max_tokens\":2}", &req, &err) == 0,
            "%s", err.message);
    REQUIRE(oai_response_init(&rs, &req, "tiny", fake_token_text, NULL) == 0,
            "init");

    /* the engine's echo: prompt tokens and text, no logprobs */
    memset(&started, 0, sizeof(started));
    memset(pinfo, 0, sizeof(pinfo));
    started.type = LLM_EV_STARTED;
    started.text = "Hello";
    started.text_len = 5;
    started.n_tokens = 2;
    started.tokens = pinfo;
    pinfo[0].token = 1;
    pinfo[1].token = 2;
    started.usage.prompt_tokens = 2;
    tok = token_event(ids, 2, " world", infos, top);
    fin = finish_event(LLM_FINISH_LENGTH, 2, 2);

    CHECK(oai_collect_event(&rs, 0, &started) == 0, "started");
    CHECK(oai_collect_event(&rs, 0, &tok) == 0, "tok");
    CHECK(oai_collect_event(&rs, 0, &fin) == 0, "fin");
    json = oai_response_json(&rs, NULL);
    REQUIRE(json, "json");
    j = cJSON_Parse(json);
    REQUIRE(j, "parse");
    CHECK(strcmp(cJSON_GetObjectItem(j, "object")->valuestring,
                 "text_completion") == 0, "object");
    ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    CHECK(strcmp(cJSON_GetObjectItem(ch, "text")->valuestring,
                 "Hello world") == 0, "echo text: %s", json);
    lp = cJSON_GetObjectItem(ch, "logprobs");
    REQUIRE(lp, "logprobs: %s", json);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(lp, "tokens")) == 4,
          "tokens");
    off = cJSON_GetObjectItem(lp, "text_offset");
    CHECK(cJSON_GetArrayItem(off, 0)->valueint == 0
          && cJSON_GetArrayItem(off, 1)->valueint == 3
          && cJSON_GetArrayItem(off, 2)->valueint == 5
          && cJSON_GetArrayItem(off, 3)->valueint == 9, "text_offset: %s",
          json);
    tlp = cJSON_GetObjectItem(lp, "token_logprobs");
    CHECK(cJSON_IsNull(cJSON_GetArrayItem(tlp, 0)), "prompt logprob null");
    CHECK(fabs(cJSON_GetArrayItem(tlp, 2)->valuedouble + 0.5) < 1e-6,
          "token logprob");
    tops = cJSON_GetObjectItem(lp, "top_logprobs");
    CHECK(cJSON_GetArraySize(cJSON_GetArrayItem(tops, 3)) == 2
          && cJSON_GetObjectItem(cJSON_GetArrayItem(tops, 3), "lo"),
          "top_logprobs dict: %s", json);
    cJSON_Delete(j);
    free(json);
    oai_response_free(&rs);
    oai_request_free(&req);
}

static void test_completion_stream(void)
{
    oai_request req;
    oai_response rs;
    oai_error err;
    oai_buf out = { 0 };
    llm_event tok, fin;
    llm_token_info infos[1];
    llm_top_logprob top[2] = { { 1, -0.1f }, { 2, -2.0f } };
    int32_t ids[1] = { 1 };
    char ev[8][2048];
    cJSON *j;
    int n;

    REQUIRE(parse(OAI_COMPLETION, "{\"prompt\":[\"a\",\"b\"],\"stream\":true}",
                  &req, &err) == 0, "%s", err.message);
    REQUIRE(oai_response_init(&rs, &req, "tiny", fake_token_text, NULL) == 0,
            "init");
    tok = token_event(ids, 1, "Hel", infos, top);
    fin = finish_event(LLM_FINISH_STOP, 1, 1);
    CHECK(oai_stream_event(&rs, 1, &tok, &out) == 0, "tok");
    CHECK(oai_stream_event(&rs, 1, &fin, &out) == 0, "fin");
    CHECK(oai_stream_event(&rs, 0, &fin, &out) == 0, "fin");
    CHECK(oai_stream_done(&rs, &out) == 0, "done");
    n = sse_events(out.data, ev, 8);
    REQUIRE(n == 4, "%d events: %s", n, out.data);
    j = cJSON_Parse(ev[0]);
    REQUIRE(j, "json");
    CHECK(strcmp(cJSON_GetObjectItem(j, "object")->valuestring,
                 "text_completion") == 0, "object");
    CHECK(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j,
          "choices"), 0), "index")->valueint == 1, "index of prompt 1");
    CHECK(strcmp(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(
          j, "choices"), 0), "text")->valuestring, "Hel") == 0, "text");
    cJSON_Delete(j);
    CHECK(strcmp(ev[3], "[DONE]") == 0, "done");
    oai_buf_free(&out);
    oai_response_free(&rs);
    oai_request_free(&req);
}

static void test_utf8_split_token(void)
{
    oai_request req;
    oai_response rs;
    oai_error err;
    oai_buf out = { 0 };
    llm_event tok;
    llm_token_info infos[1];
    llm_top_logprob top[1] = { { 5, -0.1f } };
    int32_t ids[1] = { 5 };
    char *s;
    size_t len;

    s = oai_utf8_sanitize("a\xE4\xB8z\xC0\xAF", 6, &len);
    /* each byte of an invalid sequence becomes one U+FFFD */
    CHECK(s && strcmp(s, "a\xEF\xBF\xBD\xEF\xBF\xBDz\xEF\xBF\xBD"
                         "\xEF\xBF\xBD") == 0, "invalid bytes replaced");
    free(s);
    s = oai_utf8_sanitize("\xE4\xB8\xAD\xF0\x9F\x98\x80", 7, &len);
    CHECK(s && len == 7, "valid kept");
    free(s);

    /* a token that is half a character still gives valid JSON */
    REQUIRE(parse(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":"
                  "\"x\"}],\"stream\":true,\"logprobs\":true}", &req, &err)
            == 0, "%s", err.message);
    REQUIRE(oai_response_init(&rs, &req, "tiny", fake_token_text, NULL) == 0,
            "init");
    tok = token_event(ids, 1, "", infos, top);
    CHECK(oai_stream_event(&rs, 0, &tok, &out) == 0, "tok");
    CHECK(out.data && strstr(out.data, "\\ufffd") == NULL
          && strstr(out.data, "\xEF\xBF\xBD") != NULL, "replacement in "
          "token: %s", out.data ? out.data : "");
    oai_buf_free(&out);
    oai_response_free(&rs);
    oai_request_free(&req);
}

/* The chunk a token's text makes, printed the way cJSON prints it (the
 * reference for the direct writer in openai.c). */
static char *reference_chunk(const oai_response *rs, int index,
                             const char *text, size_t len)
{
    cJSON *o = cJSON_CreateObject(), *choices, *ch;
    char *safe = oai_utf8_sanitize(text, len, NULL), *s, *out;

    cJSON_AddStringToObject(o, "id", rs->id);
    cJSON_AddStringToObject(o, "object", rs->kind == OAI_CHAT
                            ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double) rs->created);
    cJSON_AddStringToObject(o, "model", rs->model);
    choices = cJSON_AddArrayToObject(o, "choices");
    ch = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, ch);
    cJSON_AddNumberToObject(ch, "index", index);
    if (rs->kind == OAI_CHAT) {
        cJSON_AddStringToObject(cJSON_AddObjectToObject(ch, "delta"),
                                "content", safe);
    } else {
        cJSON_AddStringToObject(ch, "text", safe);
    }
    cJSON_AddNullToObject(ch, "logprobs");
    cJSON_AddNullToObject(ch, "finish_reason");
    if (rs->include_usage) {
        cJSON_AddNullToObject(o, "usage");
    }
    s = cJSON_PrintUnformatted(o);
    out = malloc(strlen(s) + 9);
    sprintf(out, "data: %s\n\n", s);
    free(s);
    free(safe);
    cJSON_Delete(o);
    return out;
}

static void test_stream_chunk_bytes(void)
{
    static const struct { const char *s; size_t len; } texts[] = {
        { "Hello", 5 }, { "", 0 }, { "a\"b\\c/d", 7 },
        { "\n\t\r\b\f", 5 }, { "\x01\x1f\x7f ~", 5 }, { "nul\0in", 6 },
        { "\xff\xfe", 2 }, { "\xE4\xB8", 2 }, { "x\xE4\xB8", 3 },
        { "\xF0\x9F\x98\x80 \xE2\x80\xA8 \xC3\xA9", 12 },
        { "\xC0\xAF\xED\xA0\x80", 5 }, { "</script>", 9 },
    };
    static const char *bodies[] = {
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":true}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":true,"
        "\"stream_options\":{\"include_usage\":true}}",
        "{\"prompt\":[\"a\",\"b\",\"c\"],\"stream\":true}",
        "{\"prompt\":\"a\",\"stream\":true,\"stream_options\":"
        "{\"include_usage\":true}}",
    };
    char *big = malloc(20001);
    size_t b, t;

    REQUIRE(big != NULL, "malloc");
    for (t = 0; t < 20000; t++) {
        big[t] = "ab\"\\\n\x01\xC3\xA9\xff"[t % 10];
    }
    for (b = 0; b < sizeof(bodies) / sizeof(bodies[0]); b++) {
        oai_kind kind = b < 2 ? OAI_CHAT : OAI_COMPLETION;
        int index = b == 2 ? 2 : 0;
        oai_request req;
        oai_response rs;
        oai_error err;

        REQUIRE(parse(kind, bodies[b], &req, &err) == 0, "%s", err.message);
        REQUIRE(oai_response_init(&rs, &req, "tiny \"q\"", fake_token_text,
                                  NULL) == 0, "init");
        for (t = 0; t <= sizeof(texts) / sizeof(texts[0]); t++) {
            int last = t == sizeof(texts) / sizeof(texts[0]);
            const char *s = last ? big : texts[t].s;
            size_t len = last ? 20000 : texts[t].len;
            oai_buf out = { 0 };
            llm_event ev;
            char *want;

            if (kind == OAI_CHAT && t == 0) {
                /* the first chunk carries the role: cJSON's path */
                memset(&ev, 0, sizeof(ev));
                ev.type = LLM_EV_STARTED;
                CHECK(oai_stream_event(&rs, index, &ev, &out) == 0, "started");
                oai_buf_free(&out);
                memset(&out, 0, sizeof(out));
            }
            memset(&ev, 0, sizeof(ev));
            ev.type = LLM_EV_TOKEN;
            ev.text = (char *) s;
            ev.text_len = len;
            ev.n_tokens = 1;
            ev.stop_token = -1;
            CHECK(oai_stream_event(&rs, index, &ev, &out) == 0, "token");
            want = reference_chunk(&rs, index, s, len);
            CHECK(out.data != NULL && strcmp(out.data, want) == 0,
                  "body %zu text %zu:\n got  %.300s\n want %.300s", b, t,
                  out.data ? out.data : "(null)", want);
            free(want);
            oai_buf_free(&out);
        }
        oai_response_free(&rs);
        oai_request_free(&req);
    }
    free(big);
}

static void test_error_json(void)
{
    oai_error e;
    char *s;
    cJSON *j, *err;
    oai_buf out = { 0 };

    oai_error_from_llm(&e, LLM_ERR_TOO_LONG, "messages",
                       "prompt (100 tokens) + max_tokens (50) > 128");
    CHECK(e.status == 400, "too long -> 400");
    s = oai_error_json(&e, NULL);
    j = cJSON_Parse(s);
    REQUIRE(j, "json %s", s);
    err = cJSON_GetObjectItem(j, "error");
    CHECK(strstr(cJSON_GetObjectItem(err, "message")->valuestring, "100")
          != NULL, "message");
    CHECK(strcmp(cJSON_GetObjectItem(err, "type")->valuestring,
                 "invalid_request_error") == 0, "type");
    CHECK(strcmp(cJSON_GetObjectItem(err, "param")->valuestring,
                 "messages") == 0, "param");
    CHECK(strcmp(cJSON_GetObjectItem(err, "code")->valuestring,
                 "context_length_exceeded") == 0, "code");
    cJSON_Delete(j);
    free(s);

    oai_error_from_llm(&e, LLM_ERR_QUEUE_FULL, NULL, "full");
    CHECK(e.status == 429, "queue full -> 429");
    oai_error_from_llm(&e, LLM_ERR_NOT_READY, NULL, "loading");
    CHECK(e.status == 503, "not ready -> 503");
    oai_error_from_llm(&e, LLM_ERR_INTERNAL, NULL, "");
    CHECK(e.status == 500, "internal -> 500");
    s = oai_error_json(&e, NULL);
    CHECK(s && strstr(s, "\"param\":null") != NULL, "null param: %s", s);
    free(s);

    CHECK(oai_stream_error(&e, &out) == 0, "stream error");
    CHECK(out.data && strncmp(out.data, "data: {\"error\":", 15) == 0
          && strstr(out.data, "data: [DONE]\n\n") != NULL, "%s", out.data);
    oai_buf_free(&out);
}

static void test_tokenize_shapes(void)
{
    oai_tokenize_request t;
    oai_error err;
    int32_t ids[3] = { 1, 2, 6 }, *dids;
    char *s, *model;
    int n;
    const char *b1 = "{\"model\":\"m\",\"prompt\":\"hi\"}";
    const char *b2 = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                     "\"add_generation_prompt\":false,\"chat_template_kwargs\":"
                     "{\"a\":1}}";
    const char *b3 = "{\"tokens\":[1,2,3]}";

    REQUIRE(oai_parse_tokenize(b1, strlen(b1), &t, &err) == 0, "%s",
            err.message);
    CHECK(strcmp(t.prompt, "hi") == 0 && t.add_special_tokens == 1
          && strcmp(t.model, "m") == 0, "prompt form");
    oai_tokenize_request_free(&t);
    REQUIRE(oai_parse_tokenize(b2, strlen(b2), &t, &err) == 0, "%s",
            err.message);
    CHECK(t.prompt == NULL && t.messages_json && t.add_generation_prompt == 0
          && t.add_special_tokens == 0 && t.kwargs_json, "messages form");
    oai_tokenize_request_free(&t);
    CHECK(oai_parse_tokenize("{}", 2, &t, &err) == -1 && err.status == 400,
          "neither prompt nor messages");
    CHECK(oai_parse_tokenize("{\"prompt\":1}", 12, &t, &err) == -1
          && strcmp(err.param, "prompt") == 0, "prompt type");

    s = oai_tokenize_json(ids, 3, 4096, fake_token_text, NULL, NULL);
    CHECK(s && strstr(s, "\"count\":3") && strstr(s, "\"max_model_len\":4096")
          && strstr(s, "\"tokens\":[1,2,6]") && strstr(s, "\"token_strs\":["),
          "tokenize json: %s", s ? s : "");
    free(s);
    s = oai_tokenize_json(ids, 3, 4096, NULL, NULL, NULL);
    CHECK(s && strstr(s, "\"token_strs\":null"), "no strs: %s", s ? s : "");
    free(s);

    REQUIRE(oai_parse_detokenize(b3, strlen(b3), &model, &dids, &n, &err)
            == 0, "%s", err.message);
    CHECK(n == 3 && dids[2] == 3 && model == NULL, "detokenize ids");
    free(dids);
    CHECK(oai_parse_detokenize("{\"tokens\":[\"a\"]}", 16, &model, &dids, &n,
                               &err) == -1 && strcmp(err.param, "tokens") == 0,
          "bad ids");
    s = oai_detokenize_json("h\xC3", 2, NULL);
    CHECK(s && strcmp(s, "{\"prompt\":\"h\xEF\xBF\xBD\"}") == 0, "%s",
          s ? s : "");
    free(s);
}

static void test_models_json(void)
{
    oai_model_entry m = { "qwen3", "/models/q", 1700000000L, 4096 };
    char *s = oai_models_json(&m, 1, 0, NULL);
    cJSON *j = s ? cJSON_Parse(s) : NULL, *d;

    REQUIRE(j, "json");
    CHECK(strcmp(cJSON_GetObjectItem(j, "object")->valuestring, "list") == 0,
          "list");
    d = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "data"), 0);
    CHECK(d && strcmp(cJSON_GetObjectItem(d, "id")->valuestring, "qwen3") == 0
          && cJSON_GetObjectItem(d, "max_model_len")->valueint == 4096
          && strcmp(cJSON_GetObjectItem(d, "object")->valuestring, "model")
             == 0, "entry: %s", s);
    cJSON_Delete(j);
    free(s);
    s = oai_models_json(&m, 1, 1, NULL);
    CHECK(s && strncmp(s, "{\"id\":\"qwen3\"", 13) == 0, "one model: %s",
          s ? s : "");
    free(s);
}

/* ---- body checks and limits (docs/security.md) --------------------------- */

/* Parses a body of len bytes (may hold NULs); expects a 400 with code and,
 * when given, param and a message containing what. */
static void expect_body_error(oai_kind kind, const char *body, size_t len,
                              const char *code, const char *param,
                              const char *what)
{
    oai_request req;
    oai_error err;

    memset(&err, 0, sizeof(err));
    CHECK(oai_parse_request(kind, body, len, &no_limits, &req, &err) == -1,
          "accepted: %.80s", body);
    CHECK(err.status == 400, "status %d for %.80s", err.status, body);
    CHECK(err.code != NULL && strcmp(err.code, code) == 0,
          "code '%s' (wanted '%s') for %.80s: %s", err.code ? err.code : "",
          code, body, err.message);
    CHECK(strcmp(err.param, param ? param : "") == 0,
          "param '%s' (wanted '%s') for %.80s", err.param,
          param ? param : "", body);
    CHECK(what == NULL || strstr(err.message, what) != NULL,
          "message '%s' lacks '%s'", err.message, what);
}

static void expect_ok(oai_kind kind, const char *body, size_t len)
{
    oai_request req;
    oai_error err;

    CHECK(oai_parse_request(kind, body, len, &no_limits, &req, &err) == 0,
          "refused: %.80s: %s", body, err.message);
    oai_request_free(&req);
}

#define MSG "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]"

static void test_invalid_utf8(void)
{
    static const struct { const char *body; size_t at; } bad[] = {
        /* a lone continuation byte in the content */
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"a\x80\"}]}", 40 },
        /* an overlong '/' in an unknown field's key */
        { "{\"x\xC0\xAF\":1," MSG "}", 3 },
        /* a surrogate (U+D800) encoded as bytes, in 'model' */
        { "{\"model\":\"\xED\xA0\x80\"," MSG "}", 10 },
        /* past U+10FFFF, in 'stop' */
        { "{" MSG ",\"stop\":\"\xF4\x90\x80\x80\"}", 52 },
        /* a sequence cut by the end of the body */
        { "{" MSG "}\xE4\xB8", 44 },
    };
    char want[64];
    size_t i;
    oai_tokenize_request t;
    oai_error err;
    char *model;
    int32_t *ids;
    int n;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(want, sizeof(want), "invalid UTF-8 at byte %zu", bad[i].at);
        expect_body_error(OAI_CHAT, bad[i].body, strlen(bad[i].body),
                          "invalid_utf8", NULL, want);
    }
    /* found before anything else: the body is not even JSON after it */
    expect_body_error(OAI_COMPLETION, "{\"prompt\":\"\xFF\"", 12,
                      "invalid_utf8", NULL, "at byte 11");
    /* every endpoint */
    CHECK(oai_parse_tokenize("{\"prompt\":\"\xFE\"}", 14, &t, &err) == -1
          && strcmp(err.code, "invalid_utf8") == 0, "tokenize: %s",
          err.message);
    CHECK(oai_parse_detokenize("{\"model\":\"\xC3\",\"tokens\":[1]}", 26,
                               &model, &ids, &n, &err) == -1
          && strcmp(err.code, "invalid_utf8") == 0, "detokenize: %s",
          err.message);
    /* valid 2-, 3- and 4-byte characters pass */
    expect_ok(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":"
              "\"\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80\"}],\"stop\":\"\xC3\xA9\"}",
              64);
}

static void test_nul_and_trailing_data(void)
{
    oai_request req;
    oai_error err;
    const char raw_nul[] = "{\"messages\":[{\"role\":\"user\",\"content\":"
                           "\"a\0b\"}]}";
    const char *lit = "{\"messages\":[{\"role\":\"user\",\"content\":"
                      "\"a\\\\u0000b\"}]}";
    cJSON *m;

    /* cJSON would cut the string at the NUL: "a" */
    expect_body_error(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":"
                      "\"a\\u0000b\"}]}", 51, "invalid_value", NULL,
                      "\\u0000 (at byte 40");
    expect_body_error(OAI_CHAT, "{\"x\\u0000\":1," MSG "}",
                      strlen("{\"x\\u0000\":1," MSG "}"), "invalid_value",
                      NULL, "\\u0000");
    expect_body_error(OAI_CHAT, raw_nul, sizeof(raw_nul) - 1, "invalid_json",
                      NULL, "NUL byte at byte 40");
    /* an escaped backslash before "u0000" is text, not an escape */
    REQUIRE(parse(OAI_CHAT, lit, &req, &err) == 0, "%s", err.message);
    m = cJSON_Parse(req.messages_json);
    CHECK(m && strcmp(cJSON_GetObjectItem(cJSON_GetArrayItem(m, 0),
                                          "content")->valuestring,
                      "a\\u0000b") == 0, "content %s", req.messages_json);
    cJSON_Delete(m);
    oai_request_free(&req);
    /* other escapes of small code points stay allowed */
    expect_ok(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":"
              "\"\\u0001\\u000a\\u00e9\"}]}", 61);

    expect_body_error(OAI_CHAT, "{" MSG "} {}", strlen("{" MSG "} {}"),
                      "invalid_json", NULL, "after the JSON value");
    expect_body_error(OAI_CHAT, "{" MSG "}x", strlen("{" MSG "}x"),
                      "invalid_json", NULL, "at byte 44");
    expect_ok(OAI_CHAT, "{" MSG "} \r\n\t", strlen("{" MSG "} \r\n\t"));
}

/* {"x": [[[...]]], messages}: depth levels in all (the top object is one) */
static char *nested_body(int depth)
{
    oai_buf b = { 0 };
    int i;

    oai_buf_append(&b, "{" MSG ",\"x\":", strlen("{" MSG ",\"x\":"));
    for (i = 0; i < depth - 1; i++) {
        oai_buf_append(&b, "[", 1);
    }
    for (i = 0; i < depth - 1; i++) {
        oai_buf_append(&b, "]", 1);
    }
    oai_buf_append(&b, "}", 1);
    return b.data;
}

static void test_nesting_depth(void)
{
    char *b;
    const char *in_string = "{" MSG ",\"x\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
                            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
                            "[[[[[[[[[\\\"[[\"}";
    oai_tokenize_request t;
    oai_error err;

    b = nested_body(OAI_MAX_JSON_DEPTH);
    expect_ok(OAI_CHAT, b, strlen(b));
    free(b);
    b = nested_body(OAI_MAX_JSON_DEPTH + 1);
    expect_body_error(OAI_CHAT, b, strlen(b), "nesting_too_deep", NULL,
                      "more than 64 levels");
    free(b);
    /* far deeper than cJSON's own limit: refused before it recurses */
    b = nested_body(100000);
    expect_body_error(OAI_COMPLETION, b, strlen(b), "nesting_too_deep", NULL,
                      NULL);
    CHECK(oai_parse_tokenize(b, strlen(b), &t, &err) == -1
          && strcmp(err.code, "nesting_too_deep") == 0, "tokenize: %s",
          err.message);
    free(b);
    /* brackets inside strings (after an escaped quote too) do not count */
    expect_ok(OAI_CHAT, in_string, strlen(in_string));
}

/* {"messages":[n messages]} */
static char *messages_body(int n, const char *extra)
{
    oai_buf b = { 0 };
    int i;

    oai_buf_append(&b, "{\"messages\":[", 13);
    for (i = 0; i < n; i++) {
        if (i) {
            oai_buf_append(&b, ",", 1);
        }
        oai_buf_append(&b, "{\"role\":\"user\",\"content\":\"x\"}", 29);
    }
    oai_buf_append(&b, "]", 1);
    oai_buf_append(&b, extra, strlen(extra));
    oai_buf_append(&b, "}", 1);
    return b.data;
}

/* "[e,e,...]" with n copies of e, or {"0":1,"1":1,...} when object */
static char *repeat_list(int n, const char *e, int object)
{
    oai_buf b = { 0 };
    char key[32];
    int i;

    oai_buf_append(&b, object ? "{" : "[", 1);
    for (i = 0; i < n; i++) {
        if (i) {
            oai_buf_append(&b, ",", 1);
        }
        if (object) {
            snprintf(key, sizeof(key), "\"%d\":1", i);
            oai_buf_append(&b, key, strlen(key));
        } else {
            oai_buf_append(&b, e, strlen(e));
        }
    }
    oai_buf_append(&b, object ? "}" : "]", 1);
    return b.data;
}

static void check_list_limit(const char *name, const char *e, int object,
                             int limit, const char *param)
{
    char *list, *body;
    size_t n;
    int k;

    for (k = limit; k <= limit + 1; k++) {
        list = repeat_list(k, e, object);
        n = strlen(list) + 64;
        body = malloc(n);
        REQUIRE(list && body, "oom");
        snprintf(body, n, "{" MSG ",\"%s\":%s}", name, list);
        if (k == limit) {
            expect_ok(OAI_CHAT, body, strlen(body));
        } else {
            expect_body_error(OAI_CHAT, body, strlen(body), "invalid_value",
                              param, "at most");
        }
        free(list);
        free(body);
    }
}

static void test_request_limits(void)
{
    char *b, big[OAI_MAX_STOP_BYTES + 64], *parts;
    oai_tokenize_request t;
    oai_error err;
    size_t n;

    b = messages_body(OAI_MAX_MESSAGES, "");
    expect_ok(OAI_CHAT, b, strlen(b));
    free(b);
    b = messages_body(OAI_MAX_MESSAGES + 1, "");
    expect_body_error(OAI_CHAT, b, strlen(b), "invalid_value", "messages",
                      "at most 4096");
    CHECK(oai_parse_tokenize(b, strlen(b), &t, &err) == -1
          && strcmp(err.param, "messages") == 0, "tokenize: %s", err.message);
    free(b);

    parts = repeat_list(OAI_MAX_CONTENT_PARTS + 1,
                        "{\"type\":\"text\",\"text\":\"p\"}", 0);
    n = strlen(parts) + 128;
    b = malloc(n);
    REQUIRE(parts && b, "oom");
    snprintf(b, n, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},"
             "{\"role\":\"user\",\"content\":%s}]}", parts);
    expect_body_error(OAI_CHAT, b, strlen(b), "invalid_value",
                      "messages[1].content", "at most 256 parts");
    free(b);
    free(parts);

    check_list_limit("tools", "{\"type\":\"function\",\"function\":"
                     "{\"name\":\"f\"}}", 0, OAI_MAX_TOOLS, "tools");
    check_list_limit("stop", "\"s\"", 0, OAI_MAX_STOP, "stop");
    check_list_limit("logit_bias", NULL, 1, OAI_MAX_LOGIT_BIAS, "logit_bias");

    /* one stop string: the engine's 1024 bytes, named 'stop' here */
    memset(big, 0, sizeof(big));
    snprintf(big, sizeof(big), "{" MSG ",\"stop\":\"%0*d\"}",
             OAI_MAX_STOP_BYTES, 0);
    expect_ok(OAI_CHAT, big, strlen(big));
    snprintf(big, sizeof(big), "{" MSG ",\"stop\":\"%0*d\"}",
             OAI_MAX_STOP_BYTES + 1, 0);
    expect_body_error(OAI_CHAT, big, strlen(big), "invalid_value", "stop",
                      "at most 1024 bytes");
    snprintf(big, sizeof(big), "{" MSG ",\"stop\":[\"a\",\"%0*d\"]}",
             OAI_MAX_STOP_BYTES + 1, 0);
    expect_body_error(OAI_CHAT, big, strlen(big), "invalid_value", "stop",
                      "entry 1");

    /* 'model' is echoed by a 404: bounded */
    snprintf(big, sizeof(big), "{" MSG ",\"model\":\"%0*d\"}",
             OAI_MAX_MODEL_NAME, 0);
    expect_ok(OAI_CHAT, big, strlen(big));
    snprintf(big, sizeof(big), "{" MSG ",\"model\":\"%0*d\"}",
             OAI_MAX_MODEL_NAME + 1, 0);
    expect_body_error(OAI_CHAT, big, strlen(big), "invalid_value", "model",
                      "at most 200 bytes");
    snprintf(big, sizeof(big), "{\"prompt\":\"x\",\"model\":\"%0*d\"}",
             OAI_MAX_MODEL_NAME + 1, 0);
    CHECK(oai_parse_tokenize(big, strlen(big), &t, &err) == -1
          && strcmp(err.param, "model") == 0, "tokenize: %s", err.message);
}

static void test_token_ids_vs_vocab(void)
{
    oai_request req;
    oai_error err;

    REQUIRE(parse(OAI_CHAT, "{" MSG ",\"logit_bias\":{\"5\":1,\"99\":-1}}",
                  &req, &err) == 0, "%s", err.message);
    CHECK(oai_check_token_ids(&req, 100, &err) == 0, "ids < 100");
    CHECK(oai_check_token_ids(&req, 0, &err) == 0, "vocab unknown");
    CHECK(oai_check_token_ids(&req, 99, &err) == -1 && err.status == 400
          && strcmp(err.param, "logit_bias") == 0
          && strstr(err.message, "99") != NULL, "id 99 of 99: %s",
          err.message);
    oai_request_free(&req);

    REQUIRE(parse(OAI_COMPLETION, "{\"prompt\":[[1,2],[3,50]]}", &req, &err)
            == 0, "%s", err.message);
    CHECK(oai_check_token_ids(&req, 51, &err) == 0, "ids < 51");
    CHECK(oai_check_token_ids(&req, 50, &err) == -1
          && strcmp(err.param, "prompt") == 0
          && strstr(err.message, "50") != NULL, "prompt id 50: %s",
          err.message);
    oai_request_free(&req);
    /* text prompts have no ids to check */
    REQUIRE(parse(OAI_COMPLETION, "{\"prompt\":\"hi\"}", &req, &err) == 0,
            "%s", err.message);
    CHECK(oai_check_token_ids(&req, 1, &err) == 0, "text prompt");
    oai_request_free(&req);
}

#undef MSG

int main(void)
{
    RUN(test_chat_params);
    RUN(test_chat_defaults);
    RUN(test_chat_content_parts);
    RUN(test_chat_errors);
    RUN(test_completion_prompts);
    RUN(test_chat_stream);
    RUN(test_chat_nonstream_n);
    RUN(test_completion_legacy_logprobs_echo);
    RUN(test_completion_stream);
    RUN(test_utf8_split_token);
    RUN(test_stream_chunk_bytes);
    RUN(test_error_json);
    RUN(test_tokenize_shapes);
    RUN(test_models_json);
    RUN(test_invalid_utf8);
    RUN(test_nul_and_trailing_data);
    RUN(test_nesting_depth);
    RUN(test_request_limits);
    RUN(test_token_ids_vs_vocab);
    return unit_done();
}
