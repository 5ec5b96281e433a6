/*
 * Latency statistics shared by the benchmark tools (llm-bench, the offline
 * engine benchmark, and llm-serve-bench, the HTTP one), so that both report
 * the same numbers the same way.  Header-only: each tool is one program.
 */
#ifndef LLM_BENCH_STATS_H
#define LLM_BENCH_STATS_H

#include <math.h>
#include <stdlib.h>

typedef struct {
    double *v;
    size_t  n, cap;
} series;

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
