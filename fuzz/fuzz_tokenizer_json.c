/*
 * libFuzzer target: tokenizer.json loading (the fast vocab/merges reader of
 * tokenizer_json.c and the cJSON path) on arbitrary, small tokenizer files.
 *
 * Input, split at NUL bytes:
 *   tokenizer.json \0 text to encode \0 tokenizer_config.json
 * (an empty or missing tokenizer_config.json part is an absent file).
 * The files go to a private directory under $TMPDIR.  The fast loader and
 * the cJSON-only loader are differential: both must accept or both refuse
 * (with a message), and when both accept they must agree on the vocab
 * size, bos/eos and the ids of the text; the text's ids must be in range
 * and decode.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer.h"
#include "tokenizer_json.h"

static char dir[4096];
static char json_path[4200], config_path[4200];

static void cleanup(void)
{
    unlink(json_path);
    unlink(config_path);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *tmp = getenv("TMPDIR");

    (void) argc;
    (void) argv;
    snprintf(dir, sizeof(dir), "%s/fuzz_tokenizer_json.XXXXXX",
             tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        abort();
    }
    snprintf(json_path, sizeof(json_path), "%s/tokenizer.json", dir);
    snprintf(config_path, sizeof(config_path), "%s/tokenizer_config.json",
             dir);
    atexit(cleanup);
    return 0;
}

static void put_file(const char *path, const char *body, size_t len)
{
    FILE *f;

    if (body == NULL) {
        if (unlink(path) != 0 && errno != ENOENT) {
            perror(path);
            abort();
        }
        return;
    }
    f = fopen(path, "wb");
    if (f == NULL || fwrite(body, 1, len, f) != len || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

/* Encodes text; returns the count (ids in *ids) or -1 (refused). */
static int encode(const tokenizer *t, const char *text, size_t len,
                  int32_t **ids)
{
    char err[512];
    int n;

    err[0] = '\0';
    n = tokenizer_encode(t, text, len, 1, ids, err, sizeof(err));
    if (n < 0) {
        if (err[0] == '\0') {
            fprintf(stderr, "encode failed without a message\n");
            abort();
        }
        *ids = NULL;
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if ((*ids)[i] < 0 || (*ids)[i] >= tokenizer_vocab_size(t)) {
            fprintf(stderr, "encode gave id %d, vocab size %d\n", (*ids)[i],
                    tokenizer_vocab_size(t));
            abort();
        }
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *part[3] = { NULL, NULL, NULL };
    size_t plen[3] = { 0, 0, 0 }, start = 0;
    char err1[512], err2[512];
    tokenizer *fast, *slow;
    int n = 0;

    for (size_t i = 0; i <= size && n < 3; i++) {
        if (i == size || data[i] == 0) {
            part[n] = (const char *) data + start;
            plen[n] = i - start;
            n++;
            start = i + 1;
        }
    }
    put_file(json_path, part[0], plen[0]);
    put_file(config_path, plen[2] > 0 ? part[2] : NULL, plen[2]);

    err1[0] = err2[0] = '\0';
    fast = tokenizer_load(json_path, err1, sizeof(err1));
    slow = tokenizer_load_cjson_only(json_path, err2, sizeof(err2));
    if ((fast == NULL && err1[0] == '\0') || (slow == NULL && err2[0] == '\0')) {
        fprintf(stderr, "a load failed without a message\n");
        abort();
    }
    if ((fast == NULL) != (slow == NULL)) {
        fprintf(stderr, "fast reader %s, cJSON reader %s\n",
                fast ? "accepts" : err1, slow ? "accepts" : err2);
        abort();
    }
    if (fast != NULL) {
        int32_t *a = NULL, *b = NULL;
        const char *text = part[1] != NULL ? part[1] : "";
        int na, nb;

        if (tokenizer_vocab_size(fast) != tokenizer_vocab_size(slow)
            || tokenizer_bos_id(fast) != tokenizer_bos_id(slow)
            || tokenizer_eos_id(fast) != tokenizer_eos_id(slow)) {
            fprintf(stderr, "readers disagree: vocab %d/%d bos %d/%d eos "
                    "%d/%d\n", tokenizer_vocab_size(fast),
                    tokenizer_vocab_size(slow), tokenizer_bos_id(fast),
                    tokenizer_bos_id(slow), tokenizer_eos_id(fast),
                    tokenizer_eos_id(slow));
            abort();
        }
        na = encode(fast, text, plen[1], &a);
        nb = encode(slow, text, plen[1], &b);
        if (na != nb || (na > 0 && memcmp(a, b, (size_t) na * sizeof(*a)))) {
            fprintf(stderr, "readers encode differently: %d vs %d ids\n",
                    na, nb);
            abort();
        }
        if (na >= 0) {
            char err[512];
            size_t len;
            char *dec = tokenizer_decode(fast, a, na, 0, &len, err,
                                         sizeof(err));

            if (dec == NULL) {
                fprintf(stderr, "decode of encoded ids: %s\n", err);
                abort();
            }
            free(dec);
        }
        free(a);
        free(b);
    }
    tokenizer_free(fast);
    tokenizer_free(slow);
    return 0;
}
