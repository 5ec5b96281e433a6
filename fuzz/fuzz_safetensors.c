/*
 * libFuzzer target: the safetensors header parser and file reader.
 *
 * Input: 8 bytes of a little-endian data-region length, then the JSON
 * header (arbitrary bytes).  Two calls per input:
 *   - st_parse_header(json, data_len) with the raw 64-bit length, so that
 *     offsets and sizes near the integer limits are reached;
 *   - st_file_open on an in-memory file (memfd) laid out as the format
 *     says: header length, the header, then data_len % 64 KiB zero bytes,
 *     which covers the length prefix, the mmap and the pointer binding.
 * Whatever is accepted must be consistent: every tensor's bytes are its
 * shape times its dtype size and lie inside the data region, and
 * st_file_find finds each tensor by its name.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "safetensors.h"

static int memfd = -1;
static char memfd_path[64];

static void check_tensors(const st_tensor *t, int n, uint64_t data_len,
                          const char *what)
{
    for (int i = 0; i < n; i++) {
        uint64_t elems = 1;

        if (t[i].name == NULL || t[i].ndim < 0 || t[i].ndim > ST_MAX_DIMS) {
            fprintf(stderr, "%s: tensor %d: no name or ndim %d\n", what, i,
                    t[i].ndim);
            abort();
        }
        for (int d = 0; d < t[i].ndim; d++) {
            if (t[i].shape[d] < 0) {
                fprintf(stderr, "%s: %s: negative dim\n", what, t[i].name);
                abort();
            }
            if (t[i].shape[d] != 0
                && elems > UINT64_MAX / (uint64_t) t[i].shape[d]) {
                fprintf(stderr, "%s: %s: element count overflows\n", what,
                        t[i].name);
                abort();
            }
            elems *= (uint64_t) t[i].shape[d];
        }
        if (elems > UINT64_MAX / st_dtype_size(t[i].dtype)
            || elems * st_dtype_size(t[i].dtype) != t[i].nbytes) {
            fprintf(stderr, "%s: %s: %llu bytes for its shape and dtype\n",
                    what, t[i].name, (unsigned long long) t[i].nbytes);
            abort();
        }
        if (t[i].offset > data_len || t[i].nbytes > data_len - t[i].offset) {
            fprintf(stderr, "%s: %s: bytes [%llu, +%llu) outside the data "
                    "region of %llu\n", what, t[i].name,
                    (unsigned long long) t[i].offset,
                    (unsigned long long) t[i].nbytes,
                    (unsigned long long) data_len);
            abort();
        }
    }
}

static void fuzz_file(const char *json, size_t json_len, size_t data_len)
{
    unsigned char prefix[8];
    char err[512];
    st_file *f;
    size_t total = 8 + json_len + data_len;

    if (memfd < 0) {
        memfd = memfd_create("fuzz_safetensors", 0);
        if (memfd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(memfd_path, sizeof(memfd_path), "/proc/self/fd/%d", memfd);
    }
    for (int i = 0; i < 8; i++) {
        prefix[i] = (unsigned char) ((uint64_t) json_len >> (8 * i));
    }
    /* ftruncate to 0 first: the data region must read as zeros */
    if (ftruncate(memfd, 0) != 0 || ftruncate(memfd, (off_t) total) != 0
        || pwrite(memfd, prefix, 8, 0) != 8
        || pwrite(memfd, json, json_len, 8) != (ssize_t) json_len) {
        perror("memfd write");
        abort();
    }
    err[0] = '\0';
    f = st_file_open(memfd_path, err, sizeof(err));
    if (f == NULL) {
        if (err[0] == '\0') {
            fprintf(stderr, "st_file_open failed without a message\n");
            abort();
        }
        return;
    }
    check_tensors(f->tensors, f->n_tensors, data_len, "st_file_open");
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        const st_tensor *found = st_file_find(f, t->name);
        const char *base = (const char *) f->map + 8 + json_len;

        if (found == NULL || strcmp(found->name, t->name) != 0) {
            fprintf(stderr, "st_file_find(%s) failed\n", t->name);
            abort();
        }
        if (t->nbytes > 0 && ((const char *) t->data < base
            || (const char *) t->data + t->nbytes > base + data_len)) {
            fprintf(stderr, "%s: data pointer outside the mapping\n",
                    t->name);
            abort();
        }
    }
    st_file_close(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t data_len = 0;
    st_tensor *tensors = NULL;
    int n = 0;
    char err[512];
    const char *json = (const char *) data + 8;
    size_t json_len;

    if (size < 8) {
        return 0;
    }
    json_len = size - 8;
    for (int i = 7; i >= 0; i--) {
        data_len = (data_len << 8) | data[i];
    }
    err[0] = '\0';
    if (st_parse_header(json, json_len, data_len, "fuzz", &tensors, &n, err,
                        sizeof(err)) == 0) {
        check_tensors(tensors, n, data_len, "st_parse_header");
        st_tensors_free(tensors, n);
    } else if (err[0] == '\0') {
        fprintf(stderr, "st_parse_header failed without a message\n");
        abort();
    }
    fuzz_file(json, json_len, (size_t) (data_len % 65536));
    return 0;
}
