/*
 * OpenAI HTTP API: request parsing/validation and response JSON.
 *
 * Part of libllm but independent of the engine's internals: it turns request
 * bodies into llm_request_params (plus what the HTTP side needs: stream, n,
 * logprob format, ...) and engine events into chat.completion(.chunk) and
 * text_completion JSON, vLLM-compatible tokenize/detokenize bodies, the
 * models list and OpenAI-shaped errors.  No nginx headers, so it is unit
 * tested alone (t/unit/test_openai.c) and usable by tools.
 */
#ifndef OPENAI_H
#define OPENAI_H

#include <stddef.h>
#include <stdint.h>

#include "llm.h"

/* ---- errors ------------------------------------------------------------ */

typedef struct {
    int         status;              /* HTTP status */
    const char *type;                /* "invalid_request_error", ... */
    const char *code;                /* short machine code or NULL */
    char        param[64];           /* offending field, "" for none */
    char        message[LLM_ERR_MAX];
} oai_error;

void oai_error_set(oai_error *e, int status, const char *type,
                   const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Maps an engine status (llm_submit, LLM_EV_ERROR) to HTTP status + type. */
void oai_error_from_llm(oai_error *e, llm_status st, const char *param,
                        const char *message);
/* {"error": {...}}; malloc'ed, NUL-terminated; NULL only when out of memory */
char *oai_error_json(const oai_error *e, size_t *len);

/* ---- growable output buffer ---------------------------------------------- */

typedef struct {
    char   *data;
    size_t  len;
    size_t  cap;
} oai_buf;

int  oai_buf_append(oai_buf *b, const char *s, size_t n);
void oai_buf_free(oai_buf *b);

/* ---- requests ------------------------------------------------------------ */

typedef enum {
    OAI_CHAT = 0,          /* POST .../chat/completions */
    OAI_COMPLETION         /* POST .../completions */
} oai_kind;

typedef struct {
    int      is_tokens;
    char    *text;
    size_t   text_len;
    int32_t *tokens;
    int      n_tokens;
} oai_prompt;

/*
 * Limits of the request validator (docs/security.md lists them with the
 * nginx-side ones).  Each is a 400 naming the field ("param"), found before
 * anything is tokenized, so a large body cannot make the engine's single
 * preparation thread template or tokenize more than a real client sends.
 *
 * OAI_MAX_JSON_DEPTH    nesting of arrays/objects, checked by a scan of the
 *                       raw body *before* cJSON's recursive parser runs (a
 *                       1000-deep body never reaches it).  A chat request
 *                       is 4 levels deep, a tool or response_format schema
 *                       rarely more than 10.
 * OAI_MAX_MESSAGES      a Qwen3 chat message costs 5 template tokens plus
 *                       its content (~8 for a short one), so 4096 messages
 *                       fill the default 32768-token context: a request over
 *                       the limit could hardly fit anyway, and it is refused
 *                       before it is templated.
 * OAI_MAX_CONTENT_PARTS text parts of one message's content array.
 * OAI_MAX_TOOLS         OpenAI's limit on 'tools'.
 * OAI_MAX_STOP          stop strings (OpenAI allows 4, vLLM no limit).
 * OAI_MAX_STOP_BYTES    bytes of one stop string: the engine's limit
 *                       (ENGINE_MAX_STOP_LEN), checked here to name 'stop'.
 * OAI_MAX_LOGIT_BIAS    logit_bias entries: clients bias a few tokens (a
 *                       ban list, label tokens); the entries are applied at
 *                       every step, so their number is bounded.
 * OAI_MAX_TOP_LOGPROBS  top_logprobs / legacy logprobs (OpenAI: 20).
 * OAI_MAX_MODEL_NAME    bytes of 'model': the 404 for an unknown model
 *                       echoes up to 200 bytes of it, so a name that passes
 *                       is echoed whole, never cut inside a character.
 *
 * Also refused, before parsing, anywhere in the body (keys, unknown fields
 * included): invalid UTF-8 (400 invalid_utf8, "invalid UTF-8 at byte N"),
 * a NUL byte, an escaped \u0000 in a string (C strings would end there),
 * and data after the JSON value.
 */
#define OAI_MAX_JSON_DEPTH      64
#define OAI_MAX_MESSAGES        4096
#define OAI_MAX_CONTENT_PARTS   256
#define OAI_MAX_TOOLS           128
#define OAI_MAX_STOP            16
#define OAI_MAX_STOP_BYTES      1024
#define OAI_MAX_LOGIT_BIAS      1024
#define OAI_MAX_TOP_LOGPROBS    20
#define OAI_MAX_MODEL_NAME      200

typedef struct {
    int default_max_tokens;  /* used when the request has none; 0: engine's */
    int max_tokens_cap;      /* larger requests are clamped; 0: no cap */
    int max_choices;         /* n * prompts; 0: 128 */
} oai_limits;

typedef struct {
    oai_kind     kind;
    char        *model;            /* NULL when the request names none */
    int          stream;
    int          include_usage;    /* stream_options.include_usage */
    int          n;                /* choices per prompt */
    int          echo;             /* completions */
    int          logprobs;         /* chat: logprobs:true; completions:
                                      the legacy integer was given */
    int          top_logprobs;     /* chat: top_logprobs; completions: the
                                      legacy integer */
    /* completions: one engine request per prompt and choice */
    int          n_prompts;
    oai_prompt  *prompts;
    /* chat: normalized JSON handed to the engine's template */
    char        *messages_json;
    char        *tools_json;
    char        *kwargs_json;
    int          add_generation_prompt;
    /* tools / response_format (src/json_schema.h, src/tool_parser.h) */
    int          tool_parsing;     /* tool_choice auto/required/named:
                                      <tool_call> blocks become tool_calls */
    char        *constraint_json;  /* llm_request_params.constraint_json */
    /* storage behind params' pointers */
    char       **stop;
    int          n_stop;
    int32_t     *stop_token_ids;
    int          n_stop_token_ids;
    llm_logit_bias *logit_bias;
    int          n_logit_bias;
    /* everything but the prompt; see oai_request_params() */
    llm_request_params params;
} oai_request;

/*
 * Parses and validates a request body.  Returns 0, or -1 with err filled
 * (status 400, the offending param).  On -1 the request needs no free.
 */
int oai_parse_request(oai_kind kind, const char *body, size_t len,
                      const oai_limits *lim, oai_request *req, oai_error *err);
/* Engine parameters for prompt i (chat: i == 0).  Pointers borrow req. */
void oai_request_params(const oai_request *req, int prompt_index,
                        llm_request_params *p);
void oai_request_free(oai_request *req);
/*
 * Token ids the request names (logit_bias keys, token-id prompts) against
 * the model's vocabulary, once it is known (after oai_parse_request, with
 * llm_model_info.vocab_size).  Returns 0, or -1 with err (400 naming
 * logit_bias or prompt).  The engine checks the same ids, without a param.
 */
int oai_check_token_ids(const oai_request *req, int vocab_size,
                        oai_error *err);

/* ---- responses ----------------------------------------------------------- */

/* Raw bytes of a token (may be partial UTF-8); NULL if unknown. */
typedef const char *(*oai_token_text_fn)(void *ctx, int32_t id, size_t *len);

typedef struct {
    oai_buf            text;
    size_t             chars;          /* code points in text so far */
    void              *logprobs;       /* cJSON: chat content array or
                                          legacy object (non-stream) */
    llm_finish_reason  finish;
    char              *stop_str;
    int32_t            stop_token;
    llm_usage          usage;
    int                started;        /* first chunk (role) sent */
    int                done;
    void              *tool_parser;    /* streaming with tool_parsing */
    int                n_tool_calls;   /* calls found: finish "tool_calls" */
} oai_choice;

typedef struct {
    oai_kind           kind;
    char               id[48];
    long               created;
    char              *model;
    int                stream;
    int                include_usage;
    int                echo;
    int                logprobs;
    int                top_logprobs;
    int                n_per_prompt;
    int                n_choices;
    oai_choice        *choices;
    int                tool_parsing;   /* oai_request.tool_parsing */
    oai_token_text_fn  token_text;
    void              *token_ctx;
    /* streaming: "data: {"id":...,"model":...,"choices":[{"index":", the
     * part every text chunk of the response starts with, printed once */
    char              *chunk_prefix;
    size_t             chunk_prefix_len;
} oai_response;

/* n_choices = prompts * n; choice i belongs to prompt i / n. */
int  oai_response_init(oai_response *rs, const oai_request *req,
                       const char *model_name, oai_token_text_fn token_text,
                       void *token_ctx);
void oai_response_free(oai_response *rs);

/*
 * Streaming: appends the SSE bytes for one event of one choice to out
 * ("data: {...}\n\n" lines; nothing for events that carry nothing to send).
 * An LLM_EV_ERROR event must be handled by the caller (oai_stream_error).
 * Returns 0 or -1 (out of memory).
 */
int oai_stream_event(oai_response *rs, int choice, const llm_event *ev,
                     oai_buf *out);
/* After every choice finished: the usage chunk (if asked) and [DONE]. */
int oai_stream_done(oai_response *rs, oai_buf *out);
/* An error after the headers went out: data: {"error":...} then [DONE]. */
int oai_stream_error(const oai_error *e, oai_buf *out);

/* Non-streaming: accumulate, then build the body once all are done. */
int   oai_collect_event(oai_response *rs, int choice, const llm_event *ev);
char *oai_response_json(oai_response *rs, size_t *len);

/* Sums usage over choices (the prompt counted once per prompt). */
void oai_response_usage(const oai_response *rs, llm_usage *u);

/* ---- other endpoints ----------------------------------------------------- */

typedef struct {
    const char *id;            /* served name */
    const char *root;          /* model directory */
    long        created;
    int         max_model_len;
} oai_model_entry;

/* {"object":"list","data":[...]}; with one_model, just that object. */
char *oai_models_json(const oai_model_entry *m, int n, int one_model,
                      size_t *len);

typedef struct {
    char *model;
    /* prompt form */
    char *prompt;
    size_t prompt_len;
    /* messages form */
    char *messages_json;
    char *tools_json;
    char *kwargs_json;
    int   add_generation_prompt;   /* default 1 */
    int   add_special_tokens;      /* prompt: default 1; messages: 0 */
    int   return_token_strs;
} oai_tokenize_request;

int  oai_parse_tokenize(const char *body, size_t len, oai_tokenize_request *t,
                        oai_error *err);
void oai_tokenize_request_free(oai_tokenize_request *t);
/* {"count":N,"max_model_len":M,"tokens":[...],"token_strs":...} */
char *oai_tokenize_json(const int32_t *ids, int n, int max_model_len,
                        oai_token_text_fn token_text, void *token_ctx,
                        size_t *len);

int   oai_parse_detokenize(const char *body, size_t len, char **model,
                           int32_t **ids, int *n, oai_error *err);
/* {"prompt":"..."} */
char *oai_detokenize_json(const char *text, size_t text_len, size_t *len);

/* A random "prefix-<32 hex>" id into buf. */
void oai_make_id(const char *prefix, char *buf, size_t size);

/* Replaces invalid UTF-8 by U+FFFD; malloc'ed, NUL-terminated. */
char *oai_utf8_sanitize(const char *s, size_t len, size_t *out_len);

#endif /* OPENAI_H */
