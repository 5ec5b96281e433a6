/*
 * libFuzzer target: the real Qwen3 chat template
 * (t/fixtures/qwen3-tokenizer/tokenizer_config.json) rendered with
 * arbitrary messages / tools / kwargs JSON.
 *
 * Input: byte 0 holds flags (bit 0: add_generation_prompt, bit 1: pass
 * tools, bit 2: pass kwargs); the rest is split at NUL bytes into
 * messages_json, tools_json and kwargs_json (JSON never holds a raw NUL,
 * and the API takes NUL-terminated strings).  A render either fails with a
 * message or returns NUL-terminated text of the length it reports.
 * LLM_FUZZ_FIXTURES overrides the fixture directory (default t/fixtures).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"

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
        fprintf(stderr, "fuzz_template: %s\n", err);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf, *parts[3] = { NULL, NULL, NULL };
    char err[512];
    char *out;
    size_t out_len = 0, start = 0;
    int flags, n = 0;

    if (size < 1) {
        return 0;
    }
    flags = data[0];
    buf = malloc(size);             /* payload + terminating NUL */
    if (buf == NULL) {
        abort();
    }
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = '\0';
    for (size_t i = 0; i <= size - 1 && n < 3; i++) {
        if (buf[i] == '\0') {
            parts[n++] = buf + start;
            start = i + 1;
        }
    }
    err[0] = '\0';
    out = chat_template_render(tpl, parts[0],
                               (flags & 2) ? parts[1] : NULL,
                               (flags & 4) ? parts[2] : NULL,
                               flags & 1, &out_len, err, sizeof(err));
    if (out == NULL) {
        if (err[0] == '\0') {
            fprintf(stderr, "render failed without a message\n");
            abort();
        }
    } else if (out[out_len] != '\0') {
        fprintf(stderr, "rendered text not NUL-terminated at its length\n");
        abort();
    }
    free(out);
    free(buf);
    return 0;
}
