/*
 * libFuzzer target: the model loaders above the safetensors parser:
 * config.json, generation_config.json and the binding of safetensors
 * tensors to the model's weights (names, dtypes, shapes).
 *
 * Input, split at NUL bytes:
 *   config.json \0 generation_config.json \0 safetensors header JSON
 *   \0 data-region length (decimal)
 * An empty or missing part is an absent file.  The files are written into
 * a private directory under $TMPDIR (default /tmp; /dev/shm keeps it in
 * memory); model_config_load and, when a safetensors header is given,
 * model_load (real weights, never dummy: dummy weights would allocate
 * whatever the config asks for) must succeed or fail with a message.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"

static char dir[4096];

static void cleanup(void)
{
    static const char *const names[] = {
        "config.json", "generation_config.json", "model.safetensors",
    };
    char path[4200];

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *tmp = getenv("TMPDIR");

    (void) argc;
    (void) argv;
    snprintf(dir, sizeof(dir), "%s/fuzz_config.XXXXXX",
             tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        abort();
    }
    atexit(cleanup);
    return 0;
}

/* Writes prefix (if any) and body to dir/name, or removes it when body is
 * NULL. */
static void put_file(const char *name, const void *prefix, size_t prefix_len,
                     const char *body, size_t len, size_t zeros)
{
    char path[4200];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (body == NULL) {
        if (unlink(path) != 0 && errno != ENOENT) {
            perror(path);
            abort();
        }
        return;
    }
    f = fopen(path, "wb");
    if (f == NULL || fwrite(prefix, 1, prefix_len, f) != prefix_len
        || fwrite(body, 1, len, f) != len) {
        perror(path);
        abort();
    }
    /* the data region: zeros, by extending the file */
    if (fclose(f) != 0
        || truncate(path, (off_t) (prefix_len + len + zeros)) != 0) {
        perror(path);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *part[4] = { NULL, NULL, NULL, NULL };
    size_t plen[4] = { 0, 0, 0, 0 };
    size_t start = 0, zeros = 0;
    int n = 0;
    unsigned char prefix[8];
    model_config cfg;
    generation_defaults gen;
    char err[512];
    model *m;

    for (size_t i = 0; i <= size && n < 4; i++) {
        if (i == size || data[i] == 0) {
            part[n] = (const char *) data + start;
            plen[n] = i - start;
            n++;
            start = i + 1;
        }
    }
    for (int i = 0; i < 4; i++) {
        if (part[i] != NULL && plen[i] == 0) {
            part[i] = NULL;
        }
    }
    if (part[3] != NULL) {
        for (size_t i = 0; i < plen[3] && i < 8; i++) {
            if (part[3][i] >= '0' && part[3][i] <= '9') {
                zeros = zeros * 10 + (size_t) (part[3][i] - '0');
            }
        }
        zeros %= 1u << 20;
    }
    put_file("config.json", "", 0, part[0] != NULL ? part[0] : "", plen[0],
             0);
    put_file("generation_config.json", "", 0, part[1], plen[1], 0);
    for (int i = 0; i < 8; i++) {
        prefix[i] = (unsigned char) ((uint64_t) plen[2] >> (8 * i));
    }
    put_file("model.safetensors", prefix, 8, part[2], plen[2], zeros);

    err[0] = '\0';
    if (model_config_load(dir, &cfg, &gen, err, sizeof(err)) != 0) {
        if (err[0] == '\0') {
            fprintf(stderr, "model_config_load failed without a message\n");
            abort();
        }
        return 0;
    }
    if (cfg.n_eos < 0 || cfg.n_eos > 8) {
        fprintf(stderr, "n_eos %d\n", cfg.n_eos);
        abort();
    }
    if (part[2] == NULL) {
        return 0;
    }
    err[0] = '\0';
    m = model_load(dir, 0, 0, err, sizeof(err));
    if (m == NULL) {
        if (err[0] == '\0') {
            fprintf(stderr, "model_load failed without a message\n");
            abort();
        }
        return 0;
    }
    model_free(m);
    return 0;
}
