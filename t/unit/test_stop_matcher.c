/*
 * Stop matcher: single and multiple stops, overlapping stops, matches
 * spanning many feeds, chunking independence (byte by byte vs one feed vs
 * random splits, against a whole-text reference), include_stop_str,
 * multi-byte stops and UTF-8 integrity of every output, rejection of empty
 * or invalid stop strings, flush.
 */
#include "unit.h"
#include "stop_matcher.h"

#include <stdint.h>

/* Collected output of a run. */
typedef struct {
    char   text[4096];
    size_t len;
    int    stopped;
    int    stop_index;
    int    split_utf8;   /* some output piece was not whole UTF-8 */
    size_t max_held;
} run_result;

/* Whole sequences only (structure; the texts here are valid UTF-8). */
static int whole_utf8(const char *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        unsigned char c = (unsigned char) s[i];
        size_t        n = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3
                          : c >= 0xC0 ? 2 : 0;
        size_t        k;

        if (n == 0 || i + n > len) {
            return 0;
        }
        for (k = 1; k < n; k++) {
            if (((unsigned char) s[i + k] & 0xC0) != 0x80) {
                return 0;
            }
        }
        i += n;
    }
    return 1;
}

static void collect(run_result *r, const stop_output *o)
{
    if (!whole_utf8(o->text, o->len)) {
        r->split_utf8 = 1;
    }
    if (r->len + o->len < sizeof(r->text)) {
        memcpy(r->text + r->len, o->text, o->len);
    }
    r->len += o->len;
    r->stopped = o->stopped;
    r->stop_index = o->stop_index;
}

/* Feeds text in pieces of the given sizes (cycled; 0 means all at once),
 * then flushes. */
static int run_chunks(const char *const *stops, int n, int include,
                      const char *text, const size_t *sizes, int n_sizes,
                      run_result *r)
{
    char          err[256];
    stop_matcher *m = stop_matcher_create(stops, n, include, err,
                                          sizeof(err));
    stop_output   o;
    size_t        len = strlen(text), off = 0;
    int           i = 0;

    memset(r, 0, sizeof(*r));
    r->stop_index = -1;
    if (m == NULL) {
        fprintf(stderr, "  create: %s\n", err);
        return -1;
    }
    while (off < len) {
        size_t piece = n_sizes > 0 ? sizes[i++ % n_sizes] : len;

        if (piece > len - off || piece == 0) {
            piece = len - off;
        }
        if (stop_matcher_feed(m, text + off, piece, &o) != 0) {
            stop_matcher_free(m);
            return -1;
        }
        collect(r, &o);
        if (stop_matcher_held(m) > r->max_held) {
            r->max_held = stop_matcher_held(m);
        }
        off += piece;
    }
    stop_matcher_flush(m, &o);
    collect(r, &o);
    stop_matcher_free(m);
    return 0;
}

static int run_whole(const char *const *stops, int n, int include,
                     const char *text, run_result *r)
{
    return run_chunks(stops, n, include, text, NULL, 0, r);
}

static int run_bytes(const char *const *stops, int n, int include,
                     const char *text, run_result *r)
{
    const size_t one = 1;

    return run_chunks(stops, n, include, text, &one, 1, r);
}

/* The definition on the whole text: the first end offset at which some
 * stop completes, the longest on a tie. */
static void reference(const char *const *stops, int n, int include,
                      const char *text, char *out, size_t *out_len,
                      int *index)
{
    size_t len = strlen(text), e;
    int    i;

    *index = -1;
    for (e = 1; e <= len && *index < 0; e++) {
        for (i = 0; i < n; i++) {
            size_t l = strlen(stops[i]);

            if (l <= e && memcmp(text + e - l, stops[i], l) == 0
                && (*index < 0 || l > strlen(stops[*index]))) {
                *index = i;
            }
        }
        if (*index >= 0) {
            len = include ? e : e - strlen(stops[*index]);
        }
    }
    memcpy(out, text, len);
    *out_len = len;
}

/* Checks one case both ways (whole text, byte by byte) against want. */
static void expect(const char *const *stops, int n, int include,
                   const char *text, const char *want, int want_index)
{
    run_result r;
    int        pass;

    for (pass = 0; pass < 2; pass++) {
        int rc = pass == 0 ? run_whole(stops, n, include, text, &r)
                           : run_bytes(stops, n, include, text, &r);

        CHECK(rc == 0, "run failed");
        CHECK(r.len == strlen(want) && memcmp(r.text, want, r.len) == 0,
              "%s on \"%s\": got \"%.*s\", want \"%s\"",
              pass ? "bytes" : "whole", text, (int) r.len, r.text, want);
        CHECK(r.stop_index == want_index && r.stopped == (want_index >= 0),
              "%s on \"%s\": stop %d (stopped %d), want %d",
              pass ? "bytes" : "whole", text, r.stop_index, r.stopped,
              want_index);
        CHECK(!r.split_utf8, "output split a UTF-8 sequence");
    }
}

static void test_single_stop(void)
{
    const char *stops[] = { "STOP" };

    expect(stops, 1, 0, "hello STOP world", "hello ", 0);
    expect(stops, 1, 0, "STOP", "", 0);
    expect(stops, 1, 0, "no stop here, STO", "no stop here, STO", -1);
    expect(stops, 1, 0, "STSTOP", "ST", 0);
    expect(stops, 1, 0, "", "", -1);
}

static void test_multiple_stops(void)
{
    const char *stops[] = { "foo", "bar", "\n\n" };

    expect(stops, 3, 0, "xxbarfoo", "xx", 1);
    expect(stops, 3, 0, "a foo b bar", "a ", 0);
    expect(stops, 3, 0, "line\n\nnext", "line", 2);
    expect(stops, 3, 0, "fo ba \n", "fo ba \n", -1);
}

static void test_overlapping_stops(void)
{
    const char *ab_b[] = { "ab", "b" };
    const char *b_ab[] = { "b", "ab" };
    const char *abcd_bc[] = { "abcd", "bc" };
    const char *abc_abcde[] = { "abcde", "abc" };
    const char *aa[] = { "aab" };

    /* same end: the longer (earlier start) wins, whatever the list order */
    expect(ab_b, 2, 0, "xab", "x", 0);
    expect(b_ab, 2, 0, "xab", "x", 1);
    expect(ab_b, 2, 0, "xbab", "x", 1);
    /* the first to complete wins */
    expect(abcd_bc, 2, 0, "abcd", "a", 1);
    expect(abc_abcde, 2, 0, "abcde", "", 1);
    /* self-overlapping stop with false starts */
    expect(aa, 1, 0, "aaaab!", "aa", 0);
    expect(aa, 1, 0, "aaaa", "aaaa", -1);
}

static void test_span_many_feeds(void)
{
    const char   *stops[] = { "<|im_end|>" };
    const char   *pieces[] = { "Hi", " there<", "|", "im", "_", "end", "|>",
                               "after" };
    const char   *want[] = { "Hi", " there", "", "", "", "", "", "" };
    char          err[128];
    stop_matcher *m = stop_matcher_create(stops, 1, 0, err, sizeof(err));
    stop_output   o;
    int           i;

    REQUIRE(m != NULL, "create: %s", err);
    for (i = 0; i < 8; i++) {
        CHECK(stop_matcher_feed(m, pieces[i], strlen(pieces[i]), &o) == 0,
              "feed");
        CHECK(o.len == strlen(want[i]) && memcmp(o.text, want[i], o.len) == 0,
              "feed %d: \"%.*s\", want \"%s\"", i, (int) o.len, o.text,
              want[i]);
        CHECK(o.stopped == (i >= 6), "feed %d: stopped %d", i, o.stopped);
    }
    CHECK(o.stop_index == 0, "index %d", o.stop_index);
    CHECK(strcmp(stop_matcher_string(m, 0), "<|im_end|>") == 0, "string");
    CHECK(stop_matcher_string(m, 1) == NULL, "string out of range");
    stop_matcher_flush(m, &o);
    CHECK(o.len == 0 && o.stopped, "flush after stop: %zu", o.len);
    stop_matcher_free(m);
}

static void test_false_start_release(void)
{
    const char   *stops[] = { "abc" };
    const char   *pieces[] = { "ab", "ab", "x", "a" };
    const char   *want[] = { "", "ab", "abx", "" };
    char          err[128];
    stop_matcher *m = stop_matcher_create(stops, 1, 0, err, sizeof(err));
    stop_output   o;
    int           i;

    REQUIRE(m != NULL, "create: %s", err);
    for (i = 0; i < 4; i++) {
        CHECK(stop_matcher_feed(m, pieces[i], strlen(pieces[i]), &o) == 0,
              "feed");
        CHECK(o.len == strlen(want[i]) && memcmp(o.text, want[i], o.len) == 0,
              "feed %d: \"%.*s\", want \"%s\"", i, (int) o.len, o.text,
              want[i]);
    }
    CHECK(stop_matcher_held(m) == 1, "held %zu", stop_matcher_held(m));
    stop_matcher_flush(m, &o);
    CHECK(o.len == 1 && o.text[0] == 'a' && !o.stopped, "flush");
    stop_matcher_flush(m, &o);
    CHECK(o.len == 0, "second flush returned %zu bytes", o.len);
    stop_matcher_free(m);
}

static void test_include_stop(void)
{
    const char *stops[] = { "STOP", "OP!" };
    const char *ab_b[] = { "ab", "b" };

    expect(stops, 2, 1, "hello STOP world", "hello STOP", 0);
    expect(stops, 2, 1, "STOP!", "STOP", 0);
    expect(ab_b, 2, 1, "xab", "xab", 0);
}

static void test_multibyte(void)
{
    const char *euro[] = { "\xE2\x82\xAC" };                 /* € */
    const char *emoji[] = { "\xF0\x9F\x98\x80x" };           /* 😀x */
    const char *mixed[] = { "\xC3\xA9t\xC3\xA9" };           /* été */

    expect(euro, 1, 0, "price 5\xE2\x82\xAC more", "price 5", 0);
    /* ₭ shares two bytes with €: held, then released whole */
    expect(euro, 1, 0, "\xE2\x82\xAD and \xE2\x82\xAD",
           "\xE2\x82\xAD and \xE2\x82\xAD", -1);
    expect(emoji, 1, 0, "a\xF0\x9F\x98\x80y\xF0\x9F\x98\x80x!",
           "a\xF0\x9F\x98\x80y", 0);
    expect(emoji, 1, 1, "\xF0\x9F\x98\x80x", "\xF0\x9F\x98\x80x", 0);
    expect(mixed, 1, 0, "un \xC3\xA9t\xC3\xA9 chaud", "un ", 0);
}

static void test_no_stops_utf8(void)
{
    char          err[64];
    stop_matcher *m = stop_matcher_create(NULL, 0, 0, err, sizeof(err));
    stop_output   o;

    REQUIRE(m != NULL, "create: %s", err);
    CHECK(stop_matcher_feed(m, "ok \xE2\x82", 5, &o) == 0, "feed");
    CHECK(o.len == 3 && memcmp(o.text, "ok ", 3) == 0,
          "incomplete sequence not held: %zu", o.len);
    CHECK(stop_matcher_feed(m, "\xAC!", 2, &o) == 0, "feed");
    CHECK(o.len == 4 && memcmp(o.text, "\xE2\x82\xAC!", 4) == 0,
          "completed sequence: %zu", o.len);
    CHECK(stop_matcher_feed(m, "", 0, &o) == 0 && o.len == 0, "empty feed");
    stop_matcher_free(m);
}

static void test_rejects_bad_stops(void)
{
    const char *empty[] = { "ok", "" };
    const char *invalid[] = { "\xFFx" };
    const char *surrogate[] = { "\xED\xA0\x80" };
    char        err[128] = "";

    CHECK(stop_matcher_create(empty, 2, 0, err, sizeof(err)) == NULL,
          "empty stop accepted");
    CHECK(strstr(err, "stop[1]") != NULL, "error names no index: %s", err);
    CHECK(stop_matcher_create(invalid, 1, 0, err, sizeof(err)) == NULL,
          "invalid UTF-8 accepted");
    CHECK(stop_matcher_create(surrogate, 1, 0, err, sizeof(err)) == NULL,
          "surrogate accepted");
}

/* Random stops and texts over a small alphabet with multi-byte characters,
 * random chunkings (splitting inside sequences too): output is the
 * whole-text reference, never splits UTF-8, holds little. */
static uint64_t rnd_state = 0x9e3779b97f4a7c15ULL;
static unsigned rnd(unsigned n)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return (unsigned) (rnd_state % n);
}

static void random_utf8(char *out, int chars)
{
    static const char *alphabet[] = { "a", "b", "c", "\xC3\xA9",
                                      "\xE2\x82\xAC", "\xF0\x9F\x98\x80" };
    int i;

    out[0] = '\0';
    for (i = 0; i < chars; i++) {
        strcat(out, alphabet[rnd(6)]);
    }
}

static void test_random_chunking(void)
{
    int case_no, failures = 0, matched = 0;

    for (case_no = 0; case_no < 3000 && failures < 5; case_no++) {
        char        stop_buf[4][32], text[512], want[512];
        const char *stops[4];
        int         n = 1 + (int) rnd(4), i, include = (int) rnd(2), index;
        size_t      sizes[8], want_len, max_stop = 0;
        run_result  whole, bytes, chunks;

        for (i = 0; i < n; i++) {
            random_utf8(stop_buf[i], 1 + (int) rnd(4));
            stops[i] = stop_buf[i];
            if (strlen(stops[i]) > max_stop) {
                max_stop = strlen(stops[i]);
            }
        }
        random_utf8(text, (int) rnd(60));
        for (i = 0; i < 8; i++) {
            sizes[i] = 1 + rnd(7);
        }
        reference(stops, n, include, text, want, &want_len, &index);
        matched += index >= 0;
        if (run_whole(stops, n, include, text, &whole) != 0
            || run_bytes(stops, n, include, text, &bytes) != 0
            || run_chunks(stops, n, include, text, sizes, 8, &chunks) != 0) {
            failures++;
            continue;
        }
        {
            run_result *all[3] = { &whole, &bytes, &chunks };
            int         k;

            for (k = 0; k < 3; k++) {
                run_result *r = all[k];
                int ok = r->len == want_len
                         && memcmp(r->text, want, want_len) == 0
                         && r->stop_index == index && !r->split_utf8
                         && r->max_held <= max_stop - 1 + 3;

                if (!ok) {
                    failures++;
                    CHECK(ok, "case %d run %d: text \"%s\" stop0 \"%s\" n %d "
                          "include %d: got \"%.*s\" (%d), want \"%.*s\" (%d)",
                          case_no, k, text, stops[0], n, include,
                          (int) r->len, r->text, r->stop_index,
                          (int) want_len, want, index);
                }
            }
        }
    }
    CHECK(failures == 0, "%d failures", failures);
    CHECK(matched > 500 && matched < 2900, "fixture matched %d of 3000",
          matched);
}

int main(void)
{
    RUN(test_single_stop);
    RUN(test_multiple_stops);
    RUN(test_overlapping_stops);
    RUN(test_span_many_feeds);
    RUN(test_false_start_release);
    RUN(test_include_stop);
    RUN(test_multibyte);
    RUN(test_no_stops_utf8);
    RUN(test_rejects_bad_stops);
    RUN(test_random_chunking);
    return unit_done();
}
