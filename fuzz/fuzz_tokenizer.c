/*
 * libFuzzer target: the Qwen3 tokenizer (t/fixtures/qwen3-tokenizer) on
 * arbitrary bytes.
 *
 * Input: byte 0 picks the mode, the rest is the payload.
 *   mode & 1 == 0: payload is text.  tokenizer_encode must either refuse it
 *     (invalid UTF-8, with a message) or return ids that decode to text
 *     whose encoding is the same ids again (encode is idempotent through
 *     decode), and streaming decode must equal one-shot decode.
 *   mode & 1 == 1: payload is little-endian int32 ids (any value, also
 *     unknown ones); decode must succeed or name the bad id, and streaming
 *     decode must equal one-shot decode.
 *   mode & 2: add_special_tokens / skip_special_tokens.
 * The tokenizer is loaded once (LLVMFuzzerInitialize); LLM_FUZZ_FIXTURES
 * overrides the fixture directory (default t/fixtures, run from the repo).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

static tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = getenv("LLM_FUZZ_FIXTURES");
    char path[4096], err[512];

    (void) argc;
    (void) argv;
    snprintf(path, sizeof(path), "%s/qwen3-tokenizer/tokenizer.json",
             dir != NULL ? dir : "t/fixtures");
    tok = tokenizer_load(path, err, sizeof(err));
    if (tok == NULL) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err);
        abort();
    }
    return 0;
}

/* Streams ids through tokenizer_stream_feed/flush and checks the result
 * against the one-shot decode (the contract of tokenizer.h). */
static void check_stream(const int32_t *ids, int n, int skip,
                         const char *whole, size_t whole_len)
{
    size_t cap = TOKENIZER_STREAM_CAP(tokenizer_max_token_bytes(tok));
    char *chunk = malloc(cap);
    char *all = malloc(whole_len + cap + 1);
    size_t len = 0;
    tokenizer_stream s;
    int r;

    if (chunk == NULL || all == NULL) {
        abort();
    }
    tokenizer_stream_init(&s, skip);
    for (int i = 0; i < n; i++) {
        r = tokenizer_stream_feed(tok, &s, ids[i], chunk, cap);
        if (r < 0 || (size_t) r > cap || len + (size_t) r > whole_len) {
            fprintf(stderr, "stream feed of id %d gave %d (cap %zu, so far "
                    "%zu of %zu)\n", ids[i], r, cap, len, whole_len);
            abort();
        }
        memcpy(all + len, chunk, (size_t) r);
        len += (size_t) r;
    }
    r = tokenizer_stream_flush(tok, &s, chunk, cap);
    if (r < 0 || (size_t) r > cap) {
        fprintf(stderr, "stream flush gave %d\n", r);
        abort();
    }
    memcpy(all + len, chunk, (size_t) r);
    len += (size_t) r;
    if (len != whole_len || memcmp(all, whole, len) != 0) {
        fprintf(stderr, "stream decode (%zu bytes) != decode (%zu bytes)\n",
                len, whole_len);
        abort();
    }
    free(chunk);
    free(all);
}

static void fuzz_text(const char *text, size_t len, int special)
{
    int32_t *ids = NULL, *again = NULL;
    char err[512];
    char *dec;
    size_t dec_len;
    int n, n2;

    err[0] = '\0';
    n = tokenizer_encode(tok, text, len, special, &ids, err, sizeof(err));
    if (n < 0) {
        if (err[0] == '\0') {
            fprintf(stderr, "encode failed without a message\n");
            abort();
        }
        return;
    }
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tokenizer_vocab_size(tok)) {
            fprintf(stderr, "encode gave id %d out of range\n", ids[i]);
            abort();
        }
    }
    dec = tokenizer_decode(tok, ids, n, 0, &dec_len, err, sizeof(err));
    if (dec == NULL) {
        fprintf(stderr, "decode of encoded ids failed: %s\n", err);
        abort();
    }
    check_stream(ids, n, 0, dec, dec_len);
    /* Added tokens are split off the raw text before NFC, so decode(encode)
     * is not NFC(text); but encoding the decoded text must give the same
     * ids: it is already normalized and splits the same way. */
    n2 = tokenizer_encode(tok, dec, dec_len, special, &again, err,
                          sizeof(err));
    if (n2 != n || memcmp(again, ids, (size_t) n * sizeof(*ids)) != 0) {
        fprintf(stderr, "encode(decode(encode(x))) != encode(x): %d vs %d "
                "ids (%s)\n", n2, n, n2 < 0 ? err : "");
        abort();
    }
    free(again);
    free(dec);
    free(ids);
}

static void fuzz_ids(const uint8_t *data, size_t size, int skip)
{
    int n = (int) (size / 4);
    int32_t *ids = malloc((size_t) (n > 0 ? n : 1) * sizeof(*ids));
    int vocab = tokenizer_vocab_size(tok);
    char err[512];
    char *dec;
    size_t dec_len;

    if (ids == NULL) {
        abort();
    }
    for (int i = 0; i < n; i++) {
        uint32_t v = (uint32_t) data[4 * i] | (uint32_t) data[4 * i + 1] << 8
                     | (uint32_t) data[4 * i + 2] << 16
                     | (uint32_t) data[4 * i + 3] << 24;

        /* Mostly valid ids, so that decoding gets exercised; the top bit
         * keeps the raw value (negative, huge, just past the vocab). */
        ids[i] = (v & 0x80000000u) ? (int32_t) (v ^ 0x80000000u) - 8
                                   : (int32_t) (v % (uint32_t) (vocab + 4));
    }
    err[0] = '\0';
    dec = tokenizer_decode(tok, ids, n, skip, &dec_len, err, sizeof(err));
    if (dec == NULL) {
        if (err[0] == '\0') {
            fprintf(stderr, "decode failed without a message\n");
            abort();
        }
    } else {
        check_stream(ids, n, skip, dec, dec_len);
        free(dec);
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int mode;

    if (size < 1) {
        return 0;
    }
    mode = data[0];
    if (mode & 1) {
        fuzz_ids(data + 1, size - 1, (mode & 2) != 0);
    } else {
        fuzz_text((const char *) data + 1, size - 1, (mode & 2) != 0);
    }
    return 0;
}
