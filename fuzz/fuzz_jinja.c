/*
 * libFuzzer target: the Jinja interpreter on arbitrary template sources.
 *
 * Input: template source, optionally followed by a NUL byte and a JSON
 * object whose keys become template variables.  Without one, a fixed set
 * of chat-like variables is used, so that templates that loop over
 * messages or read tokens get real values.  Every render runs under small
 * jinja_limits, so a template that loops forever or builds huge strings
 * ends with a limit error instead of a fuzzer timeout or OOM: the limits
 * themselves are under test.  Parse and render either succeed or fail with
 * a message.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja.h"

static const char default_vars[] =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"S\"},"
    "{\"role\":\"user\",\"content\":\"Hi <b>\\u00e9\"},"
    "{\"role\":\"assistant\",\"content\":\"\",\"reasoning_content\":\"r\","
    "\"tool_calls\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
    "\"arguments\":{\"a\":[1,2.5,null,true]}}}]},"
    "{\"role\":\"tool\",\"content\":\"42\"}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
    "\"parameters\":{\"type\":\"object\"}}}],"
    "\"bos_token\":\"<s>\",\"eos_token\":\"</s>\","
    "\"add_generation_prompt\":true,\"n\":3,\"x\":-1.5,\"s\":\"a,b,c\"}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *src = (const char *) data;
    const uint8_t *nul = memchr(data, 0, size);
    size_t src_len = nul != NULL ? (size_t) (nul - data) : size;
    jinja_limits lim = { 1u << 20, 64u << 20, 200000 };
    jinja_template *t;
    jinja_render *r;
    char err[512];
    char *out;
    size_t out_len = 0;
    int raised = 0;

    err[0] = '\0';
    t = jinja_parse(src, src_len, err, sizeof(err));
    if (t == NULL) {
        if (err[0] == '\0') {
            fprintf(stderr, "parse failed without a message\n");
            abort();
        }
        return 0;
    }
    r = jinja_render_new(&lim);
    if (r == NULL) {
        abort();
    }
    if (nul != NULL) {
        const char *vars = (const char *) nul + 1;
        size_t vars_len = size - src_len - 1;

        if (jinja_set_json_object_vars(r, vars, vars_len, err,
                                       sizeof(err)) < 0) {
            if (err[0] == '\0') {
                fprintf(stderr, "variables refused without a message\n");
                abort();
            }
            jinja_render_free(r);
            jinja_template_free(t);
            return 0;
        }
    } else if (jinja_set_json_object_vars(r, default_vars,
                                          sizeof(default_vars) - 1, err,
                                          sizeof(err)) < 0) {
        fprintf(stderr, "default variables: %s\n", err);
        abort();
    }
    err[0] = '\0';
    out = jinja_render_run(r, t, &out_len, &raised, err, sizeof(err));
    if (out == NULL) {
        if (err[0] == '\0' && !raised) {
            fprintf(stderr, "render failed without a message\n");
            abort();
        }
    } else {
        if (out[out_len] != '\0') {
            fprintf(stderr, "output not NUL-terminated at its length\n");
            abort();
        }
        if (out_len > lim.max_output) {
            fprintf(stderr, "output %zu bytes over max_output %zu\n",
                    out_len, lim.max_output);
            abort();
        }
    }
    free(out);
    jinja_render_free(r);
    jinja_template_free(t);
    return 0;
}
