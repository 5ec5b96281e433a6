/*
 * Tool calls in model output, Hermes style as Qwen's chat template teaches:
 *
 *   <tool_call>
 *   {"name": "get_weather", "arguments": {"city": "Paris"}}
 *   </tool_call>
 *
 * Incremental: feed text deltas as they come, get content deltas (text
 * outside the blocks) and call deltas (a call's index, id and name once,
 * then its arguments text in pieces), as OpenAI streams them.  Markup never
 * reaches content: text that might be the start of "<tool_call>" is held
 * back until it is not.  Whitespace right before a block and right after
 * one (the "\n" between calls) is dropped.
 *
 * A block is recognised once its head, {"name": "...", "arguments": {, is
 * complete; a block whose head is malformed is given back as plain content,
 * markup included (the model wrote text, not a call).  From the head on the
 * call stands: its arguments are the model's JSON object text, streamed as
 * it comes; anything between the end of that object and "</tool_call>"
 * other than "}" and whitespace is dropped.  An unterminated block at the
 * end (max_tokens) keeps the arguments it got.
 *
 * Feeding the same text in any pieces gives the same content and calls
 * (the tests split at every byte).
 */
#ifndef LLM_TOOL_PARSER_H
#define LLM_TOOL_PARSER_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TOOL_DELTA_CONTENT = 0,
    TOOL_DELTA_CALL
} tool_delta_kind;

typedef struct {
    tool_delta_kind kind;
    int    index;        /* TOOL_DELTA_CALL: 0, 1, ... */
    char  *id;           /* first delta of a call: "call_..."; else NULL */
    char  *name;         /* first delta of a call; else NULL */
    char  *text;         /* content, or a piece of the arguments (may be
                            empty on a call's first delta); NUL-terminated */
    size_t len;
} tool_delta;

typedef struct {
    tool_delta *d;
    int         n, cap;
} tool_deltas;

void tool_deltas_clear(tool_deltas *ds);   /* frees the entries, keeps cap */
void tool_deltas_free(tool_deltas *ds);

typedef struct tool_parser tool_parser;

/* seed: call ids are "call_" + 24 letters/digits drawn from it. */
tool_parser *tool_parser_new(uint64_t seed);
void tool_parser_free(tool_parser *p);

/* Appends the deltas this text completes to out.  Returns 0, or -1 when out
 * of memory. */
int tool_parser_feed(tool_parser *p, const char *text, size_t len,
                     tool_deltas *out);
/* End of output: what was held back. */
int tool_parser_finish(tool_parser *p, tool_deltas *out);
int tool_parser_num_calls(const tool_parser *p);

/* Whole-text parse (non-streaming responses). */
typedef struct {
    char *id, *name, *arguments;
} tool_call_result;

typedef struct {
    char             *content;     /* never NULL */
    size_t            content_len;
    tool_call_result *calls;
    int               n_calls;
} tool_parse_result;

int  tool_parse_text(const char *text, size_t len, uint64_t seed,
                     tool_parse_result *out);
void tool_parse_result_free(tool_parse_result *r);

#endif
