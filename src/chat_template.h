/*
 * Chat template: the Jinja2 text of tokenizer_config.json rendered by an
 * interpreter of the subset real templates use (see jinja.h).  The output
 * equals transformers' apply_chat_template byte for byte.
 */
#ifndef LLM_CHAT_TEMPLATE_H
#define LLM_CHAT_TEMPLATE_H

#include <stddef.h>

typedef struct chat_template chat_template;

/* Reads tokenizer_config.json: chat_template (string, or the list form
 * with a "default" entry) and the special tokens (bos/eos/unk/pad/sep/cls/
 * mask_token as strings or {"content": ...}, additional_special_tokens),
 * which become template variables as in transformers.  A chat_template.jinja
 * in the same directory takes priority, as in transformers.  NULL with err
 * naming the file, or the template position of a syntax error. */
chat_template *chat_template_load(const char *tokenizer_config_path,
                                  char *err, size_t errlen);
/* From template source directly (tests). */
chat_template *chat_template_from_source(const char *source,
                                         const char *bos_token,
                                         const char *eos_token,
                                         char *err, size_t errlen);
void chat_template_free(chat_template *ct);

/*
 * Renders with the variables transformers' apply_chat_template passes:
 * messages, tools (None when tools_json is NULL or "null"), documents
 * (None), add_generation_prompt, the special tokens, then kwargs (which may
 * override special tokens but not the four names before).
 * messages_json: JSON array of OpenAI messages (content a string
 * or a list of {"type":"text","text":...} parts, tool_calls, tool_call_id,
 * reasoning_content); tools_json: JSON array or NULL; kwargs_json: JSON
 * object of extra template variables (e.g. {"enable_thinking": false}) or
 * NULL.  Returns malloc'ed text (length in *out_len) or NULL with err (a
 * raise_exception message, a render error with its template position).
 * Thread-safe.
 */
char *chat_template_render(const chat_template *ct, const char *messages_json,
                           const char *tools_json, const char *kwargs_json,
                           int add_generation_prompt, size_t *out_len,
                           char *err, size_t errlen);

#endif
