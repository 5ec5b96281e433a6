/*
 * safetensors header parsing: valid headers, every rejection path, files
 * too short or with lying header lengths, and a mutation fuzz that must
 * never crash or accept out-of-bounds tensors.
 */
#include "unit.h"

#include <stdint.h>
#include <unistd.h>

#include "safetensors.h"

static int parse(const char *json, uint64_t data_len, char *err, size_t el,
                 st_tensor **t, int *n)
{
    return st_parse_header(json, strlen(json), data_len, "x.safetensors", t,
                           n, err, el);
}

static void expect_fail(const char *json, uint64_t data_len, const char *want)
{
    char err[512] = "";
    st_tensor *t = NULL;
    int n = 0;

    CHECK(parse(json, data_len, err, sizeof(err), &t, &n) != 0,
          "accepted: %s", json);
    CHECK(strstr(err, want) != NULL, "error '%s' lacks '%s' for %s", err, want,
          json);
    CHECK(strstr(err, "x.safetensors") != NULL, "error names no file: %s", err);
    st_tensors_free(t, n);
}

static void test_valid_header(void)
{
    const char *h =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"a\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[12,16]},"
        "\"c\":{\"dtype\":\"F16\",\"shape\":[0,5],\"data_offsets\":[16,16]}}";
    char err[256];
    st_tensor *t;
    int n;

    REQUIRE(parse(h, 16, err, sizeof(err), &t, &n) == 0, "%s", err);
    CHECK(n == 3, "n %d", n);
    CHECK(strcmp(t[0].name, "a") == 0 && t[0].dtype == ST_BF16
          && t[0].ndim == 2 && t[0].shape[0] == 2 && t[0].shape[1] == 3
          && t[0].offset == 0 && t[0].nbytes == 12, "tensor a");
    CHECK(t[1].ndim == 0 && t[1].nbytes == 4, "scalar b");
    CHECK(t[2].nbytes == 0, "empty c");
    st_tensors_free(t, n);
    REQUIRE(parse("{}", 0, err, sizeof(err), &t, &n) == 0, "%s", err);
    CHECK(n == 0, "empty header");
    st_tensors_free(t, n);
}

static void test_rejections(void)
{
    expect_fail("", 0, "JSON");
    expect_fail("{\"a\":", 0, "JSON");
    expect_fail("[1,2]", 0, "object");
    expect_fail("{\"a\":5}", 0, "not an object");
    expect_fail("{\"a\":{\"shape\":[1],\"data_offsets\":[0,2]}}", 2, "dtype");
    expect_fail("{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,2]}}",
                2, "unknown dtype");
    expect_fail("{\"a\":{\"dtype\":\"BF16\",\"data_offsets\":[0,2]}}", 2, "shape");
    expect_fail("{\"a\":{\"dtype\":\"BF16\",\"shape\":[-1],\"data_offsets\":[0,2]}}",
                2, "non-negative");
    expect_fail("{\"a\":{\"dtype\":\"BF16\",\"shape\":[1.5],\"data_offsets\":[0,2]}}",
                2, "non-negative");
    expect_fail("{\"a\":{\"dtype\":\"BF16\",\"shape\":[\"1\"],\"data_offsets\":[0,2]}}",
                2, "non-negative");
    expect_fail("{\"a\":{\"dtype\":\"BF16\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                "\"data_offsets\":[0,2]}}", 2, "dimensions");
    expect_fail("{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],"
                "\"data_offsets\":[0,8]}}", 8, "overflow");
    expect_fail("{\"a\":{\"dtype\":\"BF16\",\"shape\":[1]}}", 2, "data_offsets");
    expect_fail("{\"a\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[0]}}",
                2, "data_offsets");
    expect_fail("{\"a\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[2,0]}}",
                2, "outside");
    expect_fail("{\"a\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                2, "outside");
    expect_fail("{\"a\":{\"dtype\":\"BF16\",\"shape\":[1],"
                "\"data_offsets\":[0,1e300]}}", 2, "data_offsets");
    expect_fail("{\"a\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,4]}}",
                8, "need 6");
    expect_fail("{\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[2,6]}}",
                8, "overlap");
    expect_fail("{\"a\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[0,2]},"
                "\"a\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[2,4]}}",
                8, "twice");
}

static const char *tmp_path(void)
{
    static char p[128];
    snprintf(p, sizeof(p), "/tmp/llm-test-st-%d.safetensors", (int) getpid());
    return p;
}

static void write_raw(const void *d, size_t n)
{
    FILE *f = fopen(tmp_path(), "wb");
    if (f) {
        fwrite(d, 1, n, f);
        fclose(f);
    }
}

static void expect_open_fail(const void *d, size_t n, const char *want)
{
    char err[512] = "";
    st_file *f;

    write_raw(d, n);
    f = st_file_open(tmp_path(), err, sizeof(err));
    CHECK(f == NULL, "opened a bad file (%zu bytes)", n);
    st_file_close(f);
    CHECK(strstr(err, want) != NULL, "error '%s' lacks '%s'", err, want);
    CHECK(strstr(err, tmp_path()) != NULL, "error names no file: %s", err);
}

static void test_file_level(void)
{
    unsigned char buf[256];
    const char *h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    size_t hl = strlen(h);
    char err[256];
    st_file *f;
    float v[2];

    expect_open_fail("", 0, "too short");
    expect_open_fail("\x01\x00\x00", 3, "too short");
    /* header length larger than the file */
    memset(buf, 0, sizeof(buf));
    buf[0] = 200;
    expect_open_fail(buf, 20, "exceeds");
    /* header length near 2^64 */
    memset(buf, 0xff, 8);
    expect_open_fail(buf, 20, "exceeds");
    /* a good file, then the same truncated by one byte */
    memset(buf, 0, sizeof(buf));
    buf[0] = (unsigned char) hl;
    memcpy(buf + 8, h, hl);
    v[0] = 1.5f;
    v[1] = -2.0f;
    memcpy(buf + 8 + hl, v, 8);
    write_raw(buf, 8 + hl + 8);
    f = st_file_open(tmp_path(), err, sizeof(err));
    REQUIRE(f != NULL, "%s", err);
    REQUIRE(st_file_find(f, "w") != NULL, "find");
    CHECK(memcmp(st_file_find(f, "w")->data, v, 8) == 0, "data");
    CHECK(st_file_find(f, "nope") == NULL, "absent");
    st_file_close(f);
    expect_open_fail(buf, 8 + hl + 7, "truncated");
    unlink(tmp_path());
}

/* Mutations of a valid header: every result is either a clean error or
 * tensors that lie inside the data region. */
static void test_fuzz_header(void)
{
    const char *base =
        "{\"__metadata__\":{\"k\":\"v\"},"
        "\"model.a\":{\"dtype\":\"BF16\",\"shape\":[4,8],\"data_offsets\":[0,64]},"
        "\"model.b\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[64,80]}}";
    const char alphabet[] = "{}[]\":,0123456789-.eE \\u";
    size_t bl = strlen(base);
    char buf[512], err[256];
    uint64_t s = 88172645463325252ULL;
    int accepted = 0, bad = 0;

    for (int iter = 0; iter < 20000; iter++) {
        size_t len = bl;
        int muts;
        st_tensor *t;
        int n;

        memcpy(buf, base, bl);
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        muts = 1 + (int) (s % 4);
        for (int m = 0; m < muts; m++) {
            size_t at;
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            at = (size_t) (s >> 8) % len;
            switch (s % 3) {
            case 0: buf[at] = alphabet[(s >> 40) % (sizeof(alphabet) - 1)]; break;
            case 1: len = at + 1; break;                      /* cut */
            default: buf[at] = (char) (s >> 32); break;       /* any byte */
            }
        }
        if (st_parse_header(buf, len, 80, "fuzz", &t, &n, err, sizeof(err)) == 0) {
            accepted++;
            for (int i = 0; i < n; i++) {
                bad += t[i].offset + t[i].nbytes > 80;
            }
            st_tensors_free(t, n);
        }
    }
    printf("# fuzz: %d of 20000 mutations accepted\n", accepted);
    CHECK(bad == 0, "%d accepted tensors outside the data", bad);
}

int main(void)
{
    RUN(test_valid_header);
    RUN(test_rejections);
    RUN(test_file_level);
    RUN(test_fuzz_header);
    return unit_done();
}
