/*
 * JSON Schema (a subset) to grammar (src/grammar.h), for structured output
 * and forced tool calls; and a validator of the same subset.
 *
 * Supported: type (a name or a list of names: object, array, string,
 * number, integer, boolean, null), properties, required,
 * additionalProperties (false, true or a schema), items, minItems,
 * maxItems, enum, const, anyOf / oneOf (alternatives must be told apart by
 * their first byte: different types, or enums/consts of different first
 * bytes), $ref to "#", "#/$defs/NAME" or "#/definitions/NAME" (recursion
 * allowed, nesting limited to GRAMMAR_MAX_DEPTH), and the annotations
 * title, description, default, examples, $schema, $id, $comment,
 * deprecated, readOnly, writeOnly, $defs, definitions.
 *
 * Anything else (pattern, format, minLength, minimum, allOf, ...) is an
 * error naming the keyword and where it is, e.g.
 *   unsupported JSON Schema keyword "pattern" at $.properties.zip
 * except in lenient mode (tool parameters: a model must be able to call a
 * tool whose schema says "minimum"), where such keywords are ignored.
 *
 * Objects: with "properties" and no "additionalProperties", no other keys
 * are generated (as xgrammar / OpenAI strict mode); without "properties"
 * any keys are.  Keys come in any order, each at most once; all required
 * keys before the object closes.
 */
#ifndef LLM_JSON_SCHEMA_H
#define LLM_JSON_SCHEMA_H

#include <stddef.h>
#include <cJSON.h>

#include "grammar.h"

/* Grammar of one JSON value matching schema.  NULL with err on failure. */
grammar *json_schema_compile(const cJSON *schema, int lenient,
                             char *err, size_t errlen);

/* Grammar of any JSON object (response_format json_object). */
grammar *json_schema_any_object(char *err, size_t errlen);

/*
 * Grammar of Hermes-style tool calls, as Qwen's chat template teaches:
 *   <tool_call>\n{"name": "NAME", "arguments": ARGS}\n</tool_call>
 * one or more, separated by "\n" (just one when !parallel).  tools is the
 * OpenAI tools array ({"type": "function", "function": {"name",
 * "parameters"}}); only names to NULL allows every function, else only
 * that one.  ARGS follows the function's "parameters" (lenient).
 */
grammar *json_schema_tool_calls(const cJSON *tools, const char *only_name,
                                int parallel, char *err, size_t errlen);

/*
 * The engine's constraint text (llm_request_params.constraint_json):
 *   {"type": "json_object"}
 *   {"type": "json_schema", "schema": {...}}
 *   {"type": "tool_calls", "tools": [...], "name": "f" (optional),
 *    "parallel": true (optional, default true)}
 * *param names the request field an error is about ("response_format",
 * "tools" or "tool_choice").
 */
grammar *json_schema_constraint(const char *constraint_json,
                                char *err, size_t errlen, const char **param);

/* Does value satisfy schema (the subset above)?  1 yes, 0 no with the
 * reason in err, -1 the schema is unsupported (err names why). */
int json_schema_validate(const cJSON *schema, const cJSON *value,
                         char *err, size_t errlen);

#endif
