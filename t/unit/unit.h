/*
 * A small unit-test framework: each t/unit/test_*.c is its own program.
 *
 *   static void test_something(void) { CHECK(x == 1, "x is %d", x); }
 *   int main(void) { RUN(test_something); return unit_done(); }
 *
 * Each RUN counts as one test, failed if any CHECK in it failed.  The
 * program prints "ok"/"not ok" per test and ends with "N passed, N failed";
 * t/unit/run.sh sums those lines over all test programs.
 * Tests run from the repository root; fixtures are under t/fixtures.
 */
#ifndef UNIT_H
#define UNIT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>

static int unit_passed, unit_failed, unit_cur_failed;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            unit_cur_failed++;                                             \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed: ", __FILE__,       \
                    __LINE__, #cond);                                      \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
        }                                                                  \
    } while (0)

/* CHECK that also leaves the test function on failure. */
#define REQUIRE(cond, ...)                                                 \
    do {                                                                   \
        if (!(cond)) {                                                     \
            CHECK(cond, __VA_ARGS__);                                      \
            return;                                                        \
        }                                                                  \
    } while (0)

static inline double unit_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define RUN(fn)                                                            \
    do {                                                                   \
        double unit_t0 = unit_now();                                       \
        unit_cur_failed = 0;                                               \
        fn();                                                              \
        if (unit_cur_failed) {                                             \
            unit_failed++;                                                 \
            printf("not ok - %s\n", #fn);                                  \
        } else {                                                           \
            unit_passed++;                                                 \
            printf("ok - %s (%.2fs)\n", #fn, unit_now() - unit_t0);        \
        }                                                                  \
        fflush(stdout);                                                    \
    } while (0)

static inline int unit_done(void)
{
    printf("%d passed, %d failed\n", unit_passed, unit_failed);
    return unit_failed ? 1 : 0;
}

/* Reads a whole file; NULL if it cannot.  Caller frees. */
static inline char *unit_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t) n + 1);
    if (buf && fread(buf, 1, (size_t) n, f) != (size_t) n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        if (len) {
            *len = (size_t) n;
        }
    }
    return buf;
}

#endif
