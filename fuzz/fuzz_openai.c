/*
 * libFuzzer target: the OpenAI request parser/validator and the response
 * builders fed from what it accepted.
 *
 * Input: byte 0 picks the endpoint (mod 5): chat/completions, completions,
 * tokenize, detokenize, or oai_utf8_sanitize on raw bytes; the rest is the
 * request body.  An accepted request must be usable: parameters for every
 * prompt, chat messages that are JSON and render through the real Qwen3
 * template (or fail there with a message), and a response that can be
 * built from a short synthetic event sequence, whose JSON (streamed or
 * not) must parse.  A refused request must carry a 4xx/5xx status and a
 * message, and its error body must be JSON.
 */
#include <cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "openai.h"

static chat_template *tpl;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = getenv("LLM_FUZZ_FIXTURES");
    char path[4096], err[512];

    (void) argc;
    (void) argv;
    snprintf(path, sizeof(path), "%s/qwen3-tokenizer/tokenizer_config.json",
             dir != NULL ? dir : "t/fixtures");
    tpl = chat_template_load(path, err, sizeof(err));
    if (tpl == NULL) {
        fprintf(stderr, "fuzz_openai: %s\n", err);
        abort();
    }
    return 0;
}

static const char *token_text(void *ctx, int32_t id, size_t *len)
{
    (void) ctx;
    if (id < 0 || id > 1000) {
        return NULL;
    }
    *len = 2;
    return "ab";
}

static void require_json(const char *s, size_t len, const char *what)
{
    cJSON *j;

    if (s == NULL) {
        fprintf(stderr, "%s: NULL\n", what);
        abort();
    }
    j = cJSON_ParseWithLength(s, len);
    if (j == NULL) {
        fprintf(stderr, "%s is not JSON: %.*s\n", what, (int) len, s);
        abort();
    }
    cJSON_Delete(j);
}

static void check_error(const oai_error *e)
{
    char *body;
    size_t len = 0;

    if (e->status < 400 || e->status > 599 || e->message[0] == '\0'
        || e->type == NULL) {
        fprintf(stderr, "bad error: status %d, message '%s'\n", e->status,
                e->message);
        abort();
    }
    body = oai_error_json(e, &len);
    require_json(body, len, "error body");
    free(body);
}

/* Every payload of an SSE body must be JSON or [DONE]. */
static void check_sse(const oai_buf *b)
{
    const char *s = b->data, *end = b->data + b->len;

    while (s != NULL && s < end) {
        const char *eol = memmem(s, (size_t) (end - s), "\n\n", 2);
        size_t n;

        if (eol == NULL || (size_t) (eol - s) < 6 || memcmp(s, "data: ", 6)) {
            fprintf(stderr, "malformed SSE: %.*s\n", (int) (end - s), s);
            abort();
        }
        n = (size_t) (eol - s) - 6;
        if (!(n == 6 && memcmp(s + 6, "[DONE]", 6) == 0)) {
            require_json(s + 6, n, "SSE payload");
        }
        s = eol + 2;
    }
}

static void respond(const oai_request *req)
{
    oai_response rs;
    llm_top_logprob top[20];
    llm_token_info info[2];
    llm_event ev[3];
    oai_buf out = { NULL, 0, 0 };

    if (oai_response_init(&rs, req, "tiny", token_text, NULL) != 0) {
        fprintf(stderr, "oai_response_init failed\n");
        abort();
    }
    memset(ev, 0, sizeof(ev));
    memset(info, 0, sizeof(info));
    for (int i = 0; i < 20; i++) {
        top[i].token = i;
        top[i].logprob = -0.25f * (float) i;
    }
    for (int i = 0; i < 2; i++) {
        info[i].token = 7 + i;
        info[i].logprob = -1.0f;
        info[i].n_top = req->top_logprobs;
        info[i].top = top;
        info[i].text_off = (uint32_t) (2 * i);
    }
    ev[0].type = LLM_EV_STARTED;
    ev[0].stop_token = -1;
    ev[0].usage.prompt_tokens = 3;
    ev[1].type = LLM_EV_TOKEN;
    ev[1].text = "abab";
    ev[1].text_len = 4;
    ev[1].n_tokens = 2;
    ev[1].tokens = info;
    ev[1].stop_token = -1;
    ev[2].type = LLM_EV_FINISH;
    ev[2].finish_reason = LLM_FINISH_LENGTH;
    ev[2].stop_token = -1;
    ev[2].usage.prompt_tokens = 3;
    ev[2].usage.completion_tokens = 2;
    for (int c = 0; c < rs.n_choices; c++) {
        for (int k = 0; k < 3; k++) {
            int r = req->stream ? oai_stream_event(&rs, c, &ev[k], &out)
                                : oai_collect_event(&rs, c, &ev[k]);
            if (r != 0) {
                fprintf(stderr, "event %d of choice %d refused\n", k, c);
                abort();
            }
        }
    }
    if (req->stream) {
        if (oai_stream_done(&rs, &out) != 0) {
            abort();
        }
        check_sse(&out);
        oai_buf_free(&out);
    } else {
        size_t len = 0;
        char *body = oai_response_json(&rs, &len);

        require_json(body, len, "response body");
        free(body);
    }
    oai_response_free(&rs);
}

static void render(const char *messages, const char *tools,
                   const char *kwargs, int add_generation_prompt)
{
    char err[512];
    size_t len = 0;
    char *text;

    err[0] = '\0';
    text = chat_template_render(tpl, messages, tools, kwargs,
                                add_generation_prompt, &len, err,
                                sizeof(err));
    if (text == NULL && err[0] == '\0') {
        fprintf(stderr, "render failed without a message\n");
        abort();
    }
    free(text);
}

static void fuzz_request(oai_kind kind, const char *body, size_t len)
{
    static const oai_limits lim = { 64, 256, 8 };
    oai_request req;
    oai_error e;
    llm_request_params p;

    memset(&e, 0, sizeof(e));
    if (oai_parse_request(kind, body, len, &lim, &req, &e) != 0) {
        check_error(&e);
        return;
    }
    if (req.n < 1 || (kind == OAI_COMPLETION && req.n_prompts < 1)) {
        fprintf(stderr, "accepted with n %d, %d prompts\n", req.n,
                req.n_prompts);
        abort();
    }
    for (int i = 0; i < (kind == OAI_CHAT ? 1 : req.n_prompts); i++) {
        oai_request_params(&req, i, &p);
        if (p.max_tokens > lim.max_tokens_cap) {
            fprintf(stderr, "max_tokens %d over the cap\n", p.max_tokens);
            abort();
        }
    }
    if (kind == OAI_CHAT) {
        require_json(req.messages_json, strlen(req.messages_json),
                     "messages_json");
        render(req.messages_json, req.tools_json, req.kwargs_json,
               req.add_generation_prompt);
    }
    respond(&req);
    oai_request_free(&req);
}

static void fuzz_tokenize(const char *body, size_t len)
{
    oai_tokenize_request t;
    oai_error e;

    memset(&e, 0, sizeof(e));
    if (oai_parse_tokenize(body, len, &t, &e) != 0) {
        check_error(&e);
        return;
    }
    if ((t.prompt == NULL) == (t.messages_json == NULL)) {
        fprintf(stderr, "tokenize: neither or both of prompt and messages\n");
        abort();
    }
    if (t.messages_json != NULL) {
        render(t.messages_json, t.tools_json, t.kwargs_json,
               t.add_generation_prompt);
    }
    oai_tokenize_request_free(&t);
}

static void fuzz_detokenize(const char *body, size_t len)
{
    char *model = NULL, *json;
    int32_t *ids = NULL;
    int n = 0;
    oai_error e;
    size_t out_len = 0;

    memset(&e, 0, sizeof(e));
    if (oai_parse_detokenize(body, len, &model, &ids, &n, &e) != 0) {
        check_error(&e);
        return;
    }
    json = oai_tokenize_json(ids, n, 4096, token_text, NULL, &out_len);
    require_json(json, out_len, "tokenize body");
    free(json);
    free(model);
    free(ids);
}

static void fuzz_sanitize(const char *s, size_t len)
{
    size_t out_len = 0;
    char *out = oai_utf8_sanitize(s, len, &out_len);
    char *body;
    size_t body_len = 0;

    if (out == NULL || out[out_len] != '\0') {
        fprintf(stderr, "oai_utf8_sanitize: NULL or not terminated\n");
        abort();
    }
    /* the sanitized text must be valid UTF-8 (with NULs): a JSON string
     * of it must come out as JSON */
    body = oai_detokenize_json(out, out_len, &body_len);
    require_json(body, body_len, "detokenize body");
    free(body);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *) data + 1;
    size_t len;

    if (size < 1) {
        return 0;
    }
    len = size - 1;
    switch (data[0] % 5) {
    case 0: fuzz_request(OAI_CHAT, body, len); break;
    case 1: fuzz_request(OAI_COMPLETION, body, len); break;
    case 2: fuzz_tokenize(body, len); break;
    case 3: fuzz_detokenize(body, len); break;
    default: fuzz_sanitize(body, len); break;
    }
    return 0;
}
