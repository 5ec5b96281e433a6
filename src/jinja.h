/*
 * A Jinja2 interpreter for the subset of the language that chat templates
 * use, with the semantics of the environment transformers renders them in:
 * ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
 * extensions=[loopcontrols]), default Undefined, keep_trailing_newline off,
 * transformers' own tojson filter and raise_exception / strftime_now globals.
 *
 * Supported: text, {{ }}, {# #}, {% raw %}, whitespace control (- and +),
 * for (loop.*, tuple targets, `if` filter, else, break/continue), if/elif/
 * else, set (name, tuple, ns.attr, block form), macro (defaults, varargs,
 * kwargs, recursion), generation; expressions with Python semantics
 * (literals, arithmetic, printf-style %, ~, comparisons, and/or/not, in,
 * is-tests, conditional expressions, subscripts, slices, attributes, calls
 * of string/dict/list methods, filters, range/namespace/dict globals).
 * Not supported (a clear error at parse time): call/filter blocks,
 * include/import/extends/block, recursive loops.  Known differences: the
 * results of map/select/reject/unique/items/reverse behave as Jinja's
 * generators (always true, no len(), not JSON) but can be iterated more
 * than once and print as "<generator object>"; str.format() is not
 * implemented; case mapping is per code point (utf8proc), so 'ß'.upper()
 * stays 'ß'.
 *
 * A parsed template is immutable and may be rendered from many threads at
 * once; every render has its own jinja_render state (values, variables,
 * limits).  Strings are UTF-8 throughout; invalid UTF-8 in the template or in
 * JSON input is an error.
 */
#ifndef LLM_JINJA_H
#define LLM_JINJA_H

#include <stddef.h>
#include <stdint.h>

typedef struct jinja_template jinja_template;
typedef struct jinja_render jinja_render;

/*
 * Parses template source (len bytes, need not be NUL-terminated).  Returns
 * NULL with err ("line L, column C: what") on a syntax error, an unsupported
 * tag, or an unknown filter or test (inside an if or a conditional
 * expression an unknown filter fails only when reached, as in Jinja).
 */
jinja_template *jinja_parse(const char *source, size_t len,
                            char *err, size_t errlen);
void jinja_template_free(jinja_template *t);

/* Bounds on one render, so that no template or input can exhaust the
 * process.  Zero fields take the defaults below. */
typedef struct {
    size_t   max_output;    /* bytes of rendered text */
    size_t   max_memory;    /* bytes of values created while rendering */
    uint64_t max_steps;     /* evaluated nodes (bounds CPU time) */
} jinja_limits;

#define JINJA_DEFAULT_MAX_OUTPUT  (64u << 20)
#define JINJA_DEFAULT_MAX_MEMORY  (512u << 20)
#define JINJA_DEFAULT_MAX_STEPS   50000000u
#define JINJA_MAX_JSON_DEPTH      512

/* Per-render state: the template variables and the memory of every value. */
jinja_render *jinja_render_new(const jinja_limits *limits /* or NULL */);
void jinja_render_free(jinja_render *r);

/*
 * Variables.  Each call sets (or replaces) one top-level variable.  JSON is
 * parsed as Python's json.loads does (integers stay integers, 1.0 stays a
 * float, objects keep their key order, a repeated key keeps its first
 * position and last value); integers beyond 64 bits become floats.
 * Return 0, or -1 with err.
 */
int jinja_set_json(jinja_render *r, const char *name, const char *json,
                   size_t len, char *err, size_t errlen);
/* Every key of a JSON object becomes a variable (template kwargs). */
int jinja_set_json_object_vars(jinja_render *r, const char *json, size_t len,
                               char *err, size_t errlen);
int jinja_set_string(jinja_render *r, const char *name, const char *s,
                     size_t len);
int jinja_set_bool(jinja_render *r, const char *name, int value);
int jinja_set_none(jinja_render *r, const char *name);
/* Is a variable of this name set? */
int jinja_has_var(const jinja_render *r, const char *name);

/*
 * Renders.  Returns malloc'ed NUL-terminated text (length in *out_len), or
 * NULL with err: a render error with its template position ("line L,
 * column C: what"), or, for raise_exception(msg), msg itself (then
 * *raised is set to 1 when raised is not NULL).  A jinja_render may be
 * rendered once.
 */
char *jinja_render_run(jinja_render *r, const jinja_template *t,
                       size_t *out_len, int *raised, char *err, size_t errlen);

#endif
