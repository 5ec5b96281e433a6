/*
 * Stop-string matcher over streamed text: see stop_matcher.h.
 *
 * The unsent text lives in one buffer.  Each feed first drops what the
 * previous call output, appends the new text, then looks for a stop string
 * that ends inside the new text: one ending earlier would have been found
 * by an earlier feed, and one starting inside the text already sent cannot
 * exist because everything that could start a stop string was held back.
 */
#include "stop_matcher.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

struct stop_matcher {
    char  **stops;       /* NUL-terminated copies */
    size_t *lens;
    int     n;
    int     include_stop;

    char   *buf;         /* unsent text, then the text being output */
    size_t  cap;
    size_t  len;         /* bytes in buf */
    size_t  sent;        /* leading bytes of buf output by the last call */

    int     stopped;
    int     stop_index;
};

static int utf8_valid(const char *s, size_t len)
{
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *) s;
    utf8proc_int32_t        cp;
    size_t                  i = 0;

    while (i < len) {
        utf8proc_ssize_t n = utf8proc_iterate(p + i, (utf8proc_ssize_t)
                                              (len - i), &cp);
        if (n <= 0) {
            return 0;
        }
        i += (size_t) n;
    }
    return 1;
}

stop_matcher *stop_matcher_create(const char *const *stops, int n,
                                  int include_stop_str_in_output,
                                  char *err, size_t errlen)
{
    stop_matcher *m;
    int           i;

    if (n < 0 || (n > 0 && stops == NULL)) {
        snprintf(err, errlen, "stop: invalid list");
        return NULL;
    }
    for (i = 0; i < n; i++) {
        if (stops[i] == NULL || stops[i][0] == '\0') {
            snprintf(err, errlen, "stop[%d]: empty stop string", i);
            return NULL;
        }
        if (!utf8_valid(stops[i], strlen(stops[i]))) {
            snprintf(err, errlen, "stop[%d]: not valid UTF-8", i);
            return NULL;
        }
    }
    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        goto nomem;
    }
    m->include_stop = include_stop_str_in_output ? 1 : 0;
    m->stop_index = -1;
    if (n > 0) {
        m->stops = calloc((size_t) n, sizeof(*m->stops));
        m->lens = calloc((size_t) n, sizeof(*m->lens));
        if (m->stops == NULL || m->lens == NULL) {
            goto nomem;
        }
    }
    m->n = n;
    for (i = 0; i < n; i++) {
        m->lens[i] = strlen(stops[i]);
        m->stops[i] = strdup(stops[i]);
        if (m->stops[i] == NULL) {
            goto nomem;
        }
    }
    return m;

nomem:
    stop_matcher_free(m);
    snprintf(err, errlen, "stop: out of memory");
    return NULL;
}

void stop_matcher_free(stop_matcher *m)
{
    int i;

    if (m == NULL) {
        return;
    }
    for (i = 0; m->stops != NULL && i < m->n; i++) {
        free(m->stops[i]);
    }
    free(m->stops);
    free(m->lens);
    free(m->buf);
    free(m);
}

const char *stop_matcher_string(const stop_matcher *m, int index)
{
    if (m == NULL || index < 0 || index >= m->n) {
        return NULL;
    }
    return m->stops[index];
}

size_t stop_matcher_held(const stop_matcher *m)
{
    return m->len - m->sent;
}

static void output_nothing(const stop_matcher *m, stop_output *out)
{
    out->text = "";
    out->len = 0;
    out->stopped = m->stopped;
    out->stop_index = m->stop_index;
}

/* Earliest end offset in (from, m->len] at which a stop string completes;
 * on a tie the longest.  Returns the stop index or -1; *end set. */
static int find_first_stop(const stop_matcher *m, size_t from, size_t *end)
{
    size_t e;
    int    i, best;

    for (e = from + 1; e <= m->len; e++) {
        unsigned char last = (unsigned char) m->buf[e - 1];

        best = -1;
        for (i = 0; i < m->n; i++) {
            size_t l = m->lens[i];

            if (l <= e && (unsigned char) m->stops[i][l - 1] == last
                && memcmp(m->buf + e - l, m->stops[i], l) == 0
                && (best < 0 || l > m->lens[best]))
            {
                best = i;
            }
        }
        if (best >= 0) {
            *end = e;
            return best;
        }
    }
    return -1;
}

/* Offset in buf from which text must be held: the longest suffix that is a
 * proper prefix of a stop string, and any incomplete UTF-8 sequence at the
 * end. */
static size_t hold_start(const stop_matcher *m)
{
    size_t held = 0, start, k, i;
    int    s;

    for (s = 0; s < m->n; s++) {
        size_t top = m->lens[s] - 1;

        if (top > m->len) {
            top = m->len;
        }
        /* only longer suffixes than already found can matter */
        for (k = top; k > held; k--) {
            if (memcmp(m->buf + m->len - k, m->stops[s], k) == 0) {
                held = k;
                break;
            }
        }
    }
    start = m->len - held;

    /* an incomplete multi-byte sequence at the very end */
    i = m->len;
    while (i > 0 && m->len - i < 3
           && ((unsigned char) m->buf[i - 1] & 0xC0) == 0x80) {
        i--;
    }
    if (i > 0) {
        unsigned char lead = (unsigned char) m->buf[i - 1];
        size_t        need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3
                             : lead >= 0xC0 ? 2 : 1;

        if (need > 1 && m->len - (i - 1) < need && i - 1 < start) {
            start = i - 1;
        }
    }
    /* A held stop prefix begins with the stop's first byte, which in valid
     * UTF-8 is never a continuation byte: the hold never starts inside a
     * sequence, and the text before it ends on a sequence boundary. */
    return start;
}

int stop_matcher_feed(stop_matcher *m, const char *text, size_t len,
                      stop_output *out)
{
    size_t from, end, keep;
    int    idx;

    if (m->stopped) {
        output_nothing(m, out);
        return 0;
    }
    /* drop what the previous call output: at most a stop string's length
     * plus 3 bytes move */
    if (m->sent > 0) {
        memmove(m->buf, m->buf + m->sent, m->len - m->sent);
        m->len -= m->sent;
        m->sent = 0;
    }
    if (m->len + len > m->cap) {
        size_t cap = m->cap ? m->cap : 64;
        char  *nb;

        while (cap < m->len + len) {
            cap *= 2;
        }
        nb = realloc(m->buf, cap);
        if (nb == NULL) {
            return -1;
        }
        m->buf = nb;
        m->cap = cap;
    }
    if (len > 0) {
        memcpy(m->buf + m->len, text, len);
    }
    from = m->len;
    m->len += len;

    idx = find_first_stop(m, from, &end);
    if (idx >= 0) {
        m->stopped = 1;
        m->stop_index = idx;
        out->text = m->buf != NULL ? m->buf : "";
        out->len = m->include_stop ? end : end - m->lens[idx];
        out->stopped = 1;
        out->stop_index = idx;
        m->sent = m->len;
        return 0;
    }
    keep = hold_start(m);
    out->text = m->buf != NULL ? m->buf : "";
    out->len = keep;
    out->stopped = 0;
    out->stop_index = -1;
    m->sent = keep;
    return 0;
}

void stop_matcher_flush(stop_matcher *m, stop_output *out)
{
    if (m->stopped || m->sent == m->len) {
        output_nothing(m, out);
        m->sent = m->len;
        return;
    }
    out->text = m->buf + m->sent;
    out->len = m->len - m->sent;
    out->stopped = 0;
    out->stop_index = -1;
    m->sent = m->len;
}
