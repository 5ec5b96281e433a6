/*
 * Latency statistics shared by the benchmark tools (llm-bench, the offline
 * engine benchmark, and llm-serve-bench, the HTTP one), so that both report
 * the same numbers the same way, and the CPU time a run used (its own and
 * the server's), so that a run through HTTP can say how much CPU the HTTP
 * path took beside the engine.  Header-only: each tool is one program.
 */
#ifndef LLM_BENCH_STATS_H
#define LLM_BENCH_STATS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

typedef struct {
    double *v;
    size_t  n, cap;
} series;

/* User + system CPU seconds of this process, all threads. */
static inline double cpu_self_s(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0) {
        return -1;
    }
    return (double) ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6
           + (double) ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

/* User + system CPU seconds of process pid, all threads (/proc/pid/stat
 * fields 14 and 15, after the command name, which may hold spaces); -1 if
 * it cannot be read. */
static inline double cpu_proc_s(int pid)
{
    char path[64], line[1024], *p;
    unsigned long long ut, st;
    FILE *f;
    int ok;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    ok = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    p = ok ? strrchr(line, ')') : NULL;
    if (p == NULL
        || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                  &ut, &st) != 2)
    {
        return -1;
    }
    return (double) (ut + st) / (double) sysconf(_SC_CLK_TCK);
}

static int series_add(series *s, double x)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        double *v = realloc(s->v, cap * sizeof(double));

        if (v == NULL) {
            return -1;
        }
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = x;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;

    return x < y ? -1 : x > y;
}

typedef struct {
    double mean, std, p50, p90, p99;
} summary;

/* Percentiles by linear interpolation between order statistics (numpy's
 * default, as vLLM reports them). */
static double percentile(const double *sorted, size_t n, double q)
{
    double pos, frac;
    size_t lo;

    if (n == 0) {
        return 0;
    }
    pos = q / 100.0 * (double) (n - 1);
    lo = (size_t) pos;
    frac = pos - (double) lo;
    if (lo + 1 >= n) {
        return sorted[n - 1];
    }
    return sorted[lo] + frac * (sorted[lo + 1] - sorted[lo]);
}

/* Sorts the series in place and summarizes it (population std). */
static summary summarize(series *s)
{
    summary r = { 0, 0, 0, 0, 0 };
    double var = 0;
    size_t i;

    if (s->n == 0) {
        return r;
    }
    qsort(s->v, s->n, sizeof(double), cmp_double);
    for (i = 0; i < s->n; i++) {
        r.mean += s->v[i];
    }
    r.mean /= (double) s->n;
    for (i = 0; i < s->n; i++) {
        var += (s->v[i] - r.mean) * (s->v[i] - r.mean);
    }
    r.std = sqrt(var / (double) s->n);
    r.p50 = percentile(s->v, s->n, 50);
    r.p90 = percentile(s->v, s->n, 90);
    r.p99 = percentile(s->v, s->n, 99);
    return r;
}

#endif
