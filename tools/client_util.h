/*
 * Small helpers shared by the HTTP load tools (llm-serve-bench, the serving
 * benchmark, and llm-soak, the soak test): a growable byte buffer, a
 * monotonic clock, a process's RSS and the open-file limit.  Header-only:
 * each tool is one program.
 */
#ifndef LLM_CLIENT_UTIL_H
#define LLM_CLIENT_UTIL_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef struct {
    char   *p;
    size_t  len, cap;
} buf;

static int buf_add(buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;

        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        p = realloc(b->p, cap);
        if (p == NULL) {
            return -1;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + ts.tv_nsec * 1e-9;
}

static long read_rss_kb(int pid)
{
    char path[64], line[256];
    FILE *f;
    long kb = -1;

    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

/* Raises the soft open-file limit to the hard one; warns (as prog) when it
 * stays below `want` connections. */
static void raise_nofile(const char *prog, int want)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            fprintf(stderr, "%s: setrlimit(NOFILE): %s\n", prog,
                    strerror(errno));
        }
    }
    if ((long long) rl.rlim_cur < (long long) want + 64) {
        fprintf(stderr, "%s: warning: open-file limit %llu is below %d "
                "connections\n", prog, (unsigned long long) rl.rlim_cur,
                want);
    }
}

#endif
