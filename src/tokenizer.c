/*
 * Byte-level BPE tokenizer from Hugging Face tokenizer.json (see
 * tokenizer.h): encoding, decoding and the streaming decoder.
 *
 *   text -> added tokens (raw) -> NFC -> added tokens (normalized)
 *        -> regex pre-tokenizer -> BPE per piece -> ids
 *   ids  -> token bytes -> UTF-8 repair (U+FFFD) -> text
 *
 * Loading is tokenizer_load.c; the pieces live in tokenizer_unicode.c
 * (UTF-8, byte-level alphabet, NFC), tokenizer_added.c,
 * tokenizer_pretok.c (PCRE2) and tokenizer_bpe.c.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"
#include "tokenizer_unicode.h"

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- per-thread state --------------------------------------------------- */

void tok_thread_destroy(void *p)
{
    tok_thread *th = p;
    tokenizer *t = th->owner;

    pthread_mutex_lock(&t->thread_lock);
    if (th->prev) {
        th->prev->next = th->next;
    } else {
        t->threads = th->next;
    }
    if (th->next) {
        th->next->prev = th->prev;
    }
    pthread_mutex_unlock(&t->thread_lock);
    pretok_thread_free(&th->pt);
    bpe_scratch_free(th->bpe);
    free(th);
}

void tok_threads_free(tokenizer *t)
{
    tok_thread *th, *next;

    pthread_mutex_lock(&t->thread_lock);
    for (th = t->threads; th != NULL; th = next) {
        next = th->next;
        pretok_thread_free(&th->pt);
        bpe_scratch_free(th->bpe);
        free(th);
    }
    t->threads = NULL;
    pthread_mutex_unlock(&t->thread_lock);
}

static tok_thread *tok_thread_get(const tokenizer *tc)
{
    /* The registry is bookkeeping, not tokenizer state: casting away
     * const keeps the public API honest about what encoding changes. */
    tokenizer *t = (tokenizer *) tc;
    tok_thread *th = pthread_getspecific(t->thread_key);

    if (th != NULL) {
        return th;
    }
    th = calloc(1, sizeof(*th));
    if (th == NULL) {
        return NULL;
    }
    th->owner = t;
    th->bpe = bpe_scratch_new();
    if (th->bpe == NULL || pretok_thread_init(&th->pt) != 0) {
        bpe_scratch_free(th->bpe);
        free(th);
        return NULL;
    }
    if (pthread_setspecific(t->thread_key, th) != 0) {
        pretok_thread_free(&th->pt);
        bpe_scratch_free(th->bpe);
        free(th);
        return NULL;
    }
    pthread_mutex_lock(&t->thread_lock);
    th->next = t->threads;
    if (t->threads) {
        t->threads->prev = th;
    }
    t->threads = th;
    pthread_mutex_unlock(&t->thread_lock);
    return th;
}

/* ---- encoding ----------------------------------------------------------- */

typedef struct {
    const tokenizer *t;
    tok_thread      *th;
    int32_t         *ids;
    size_t           n;
    size_t           cap;
    char            *err;
    size_t           errlen;
} encode_ctx;

static int ids_reserve(encode_ctx *c, size_t more)
{
    int32_t *grown;
    size_t cap = c->cap ? c->cap : 256;

    if (c->n + more <= c->cap) {
        return 0;
    }
    while (cap < c->n + more) {
        cap *= 2;
    }
    grown = realloc(c->ids, cap * sizeof(int32_t));
    if (grown == NULL) {
        set_err(c->err, c->errlen, "out of memory for %zu token ids", cap);
        return -1;
    }
    c->ids = grown;
    c->cap = cap;
    return 0;
}

static int encode_piece(void *ctx, const uint8_t *p, size_t n)
{
    encode_ctx *c = ctx;
    long got;

    if (ids_reserve(c, n) != 0) {
        return -1;
    }
    if (c->t->ignore_merges && n > 1) {
        /* ignore_merges: a piece that is a whole vocab token is that
         * token, whatever the merges would make of it. */
        char stack[256];
        char *key = 2 * n <= sizeof(stack) ? stack : malloc(2 * n);
        int32_t id;

        if (key == NULL) {
            set_err(c->err, c->errlen, "out of memory");
            return -1;
        }
        id = tok_lookup_key(c->t, key, bytelevel_encode(p, n, key));
        if (key != stack) {
            free(key);
        }
        if (id >= 0) {
            c->ids[c->n++] = id;
            return 0;
        }
    }
    got = bpe_encode_piece(&c->t->bpe, c->th->bpe, p, n, c->ids + c->n);
    if (got < 0) {
        set_err(c->err, c->errlen, "out of memory in BPE");
        return -1;
    }
    c->n += (size_t) got;
    return 0;
}

static int encode_pretokenized(encode_ctx *c, const uint8_t *s, size_t n)
{
    int rc;

    if (n == 0) {
        return 0;
    }
    if (c->t->pre.n_stages == 0) {
        return encode_piece(c, s, n);
    }
    rc = pretok_split(&c->t->pre, &c->th->pt, s, n, encode_piece, c, c->err, c->errlen);
    return rc == 0 ? 0 : -1;
}

static int push_added(encode_ctx *c, int token)
{
    if (ids_reserve(c, 1) != 0) {
        return -1;
    }
    c->ids[c->n++] = c->t->added[token].id;
    return 0;
}

/* Text between raw added tokens: normalize, then normalized added tokens,
 * then the pre-tokenizer. */
static int encode_text(encode_ctx *c, const uint8_t *s, size_t n)
{
    const uint8_t *norm = s;
    size_t norm_len = n, pos = 0, text_start = 0;
    added_split sp;
    int rc = 0;

    if (n == 0) {
        return 0;
    }
    if (c->t->nfc) {
        norm = nfc_normalize(s, n, &norm_len);
        if (norm == NULL) {
            set_err(c->err, c->errlen, "out of memory in NFC normalization");
            return -1;
        }
    }
    while (rc == 0 && added_next(&c->t->added_norm, norm, norm_len, text_start, &pos, &sp)) {
        rc = encode_pretokenized(c, norm + text_start, sp.start - text_start);
        if (rc == 0) {
            rc = push_added(c, sp.token);
        }
        text_start = sp.end;
    }
    if (rc == 0) {
        rc = encode_pretokenized(c, norm + text_start, norm_len - text_start);
    }
    if (norm != s) {
        free((void *) norm);
    }
    return rc;
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len,
                     int add_special_tokens, int32_t **ids,
                     char *err, size_t errlen)
{
    const uint8_t *s = (const uint8_t *) text;
    encode_ctx c = { .t = t, .err = err, .errlen = errlen };
    size_t bad, pos = 0, text_start = 0;
    added_split sp;
    int rc = 0;

    *ids = NULL;
    if (len > 0 && text == NULL) {
        set_err(err, errlen, "text is NULL");
        return -1;
    }
    bad = utf8_first_invalid(s, len);
    if (bad != len) {
        set_err(err, errlen, "invalid UTF-8 at byte %zu of %zu", bad, len);
        return -1;
    }
    if (len > (size_t) INT32_MAX) {
        set_err(err, errlen, "text of %zu bytes is too long", len);
        return -1;
    }
    c.th = tok_thread_get(t);
    if (c.th == NULL) {
        set_err(err, errlen, "out of memory for the tokenizer's thread state");
        return -1;
    }
    /* A capacity guess (about 4 bytes a token) avoids most regrowth. */
    if (ids_reserve(&c, len / 3 + 16) != 0) {
        return -1;
    }
    if (add_special_tokens) {
        for (int i = 0; i < t->n_prefix; i++) {
            c.ids[c.n++] = t->prefix_ids[i];
        }
    }
    while (rc == 0 && added_next(&t->added_raw, s, len, text_start, &pos, &sp)) {
        rc = encode_text(&c, s + text_start, sp.start - text_start);
        if (rc == 0) {
            rc = push_added(&c, sp.token);
        }
        text_start = sp.end;
    }
    if (rc == 0) {
        rc = encode_text(&c, s + text_start, len - text_start);
    }
    if (rc == 0 && add_special_tokens) {
        rc = ids_reserve(&c, (size_t) t->n_suffix);
        for (int i = 0; rc == 0 && i < t->n_suffix; i++) {
            c.ids[c.n++] = t->suffix_ids[i];
        }
    }
    if (rc != 0) {
        free(c.ids);
        return -1;
    }
    if (c.n > (size_t) INT32_MAX) {
        free(c.ids);
        set_err(err, errlen, "too many tokens");
        return -1;
    }
    *ids = c.ids;
    return (int) c.n;
}

/* ---- lookups ------------------------------------------------------------ */

int tokenizer_vocab_size(const tokenizer *t)
{
    return t->vocab_size;
}

int32_t tokenizer_bos_id(const tokenizer *t)
{
    return t->bos_id;
}

int32_t tokenizer_eos_id(const tokenizer *t)
{
    return t->eos_id;
}

size_t tokenizer_max_token_bytes(const tokenizer *t)
{
    return t->max_token_bytes;
}

int32_t tokenizer_token_id(const tokenizer *t, const char *token)
{
    return token ? tok_lookup_key(t, token, strlen(token)) : -1;
}

int tokenizer_is_special(const tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->vocab_size && t->special[id];
}

const char *tokenizer_token_bytes(const tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->vocab_size || t->key_len[id] < 0) {
        return NULL;
    }
    if (len) {
        *len = (size_t) t->bytes_len[id];
    }
    return t->arena + t->bytes_off[id];
}

/* ---- decoding ----------------------------------------------------------- */

char *tokenizer_decode(const tokenizer *t, const int32_t *ids, int n,
                       int skip_special_tokens, size_t *out_len,
                       char *err, size_t errlen)
{
    size_t total = 0, o = 0, bad;
    uint8_t *raw, *out;

    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];

        if (id < 0 || id >= t->vocab_size || t->key_len[id] < 0) {
            set_err(err, errlen, "unknown token id %d at position %d (vocabulary has %d)",
                    id, i, t->vocab_size);
            return NULL;
        }
        if (!(skip_special_tokens && t->special[id])) {
            total += (size_t) t->bytes_len[id];
        }
    }
    raw = malloc(total + 1);
    if (raw == NULL) {
        set_err(err, errlen, "out of memory for %zu decoded bytes", total);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];

        if (!(skip_special_tokens && t->special[id])) {
            memcpy(raw + o, t->arena + t->bytes_off[id], (size_t) t->bytes_len[id]);
            o += (size_t) t->bytes_len[id];
        }
    }
    /* HF joins all bytes and then applies from_utf8_lossy once. */
    bad = utf8_first_invalid(raw, total);
    if (bad == total) {
        raw[total] = '\0';
        if (out_len) {
            *out_len = total;
        }
        return (char *) raw;
    }
    out = malloc(bad + UTF8_LOSSY_MAX(total - bad) + 1);
    if (out == NULL) {
        free(raw);
        set_err(err, errlen, "out of memory for %zu decoded bytes", total);
        return NULL;
    }
    memcpy(out, raw, bad);
    o = bad + utf8_lossy(raw + bad, total - bad, out + bad);
    out[o] = '\0';
    free(raw);
    if (out_len) {
        *out_len = o;
    }
    return (char *) out;
}

void tokenizer_stream_init(tokenizer_stream *s, int skip_special_tokens)
{
    memset(s, 0, sizeof(*s));
    s->skip_special_tokens = skip_special_tokens;
}

int tokenizer_stream_feed(const tokenizer *t, tokenizer_stream *s,
                          int32_t id, char *out, size_t cap)
{
    uint8_t stack[512];
    uint8_t *buf;
    const char *bytes;
    size_t blen = 0, n, i = 0, o = 0;
    int n_pending = 0;

    bytes = tokenizer_token_bytes(t, id, &blen);
    if (bytes == NULL) {
        return -1;
    }
    if (s->skip_special_tokens && t->special[id]) {
        return 0;
    }
    n = (size_t) s->n_pending + blen;
    buf = n <= sizeof(stack) ? stack : malloc(n);
    if (buf == NULL) {
        return -1;
    }
    memcpy(buf, s->pending, (size_t) s->n_pending);
    memcpy(buf + s->n_pending, bytes, blen);
    /* Emit what is final; keep a trailing unfinished sequence, which the
     * next token may complete (or turn into U+FFFD). */
    while (i < n) {
        uint32_t cp;
        int r = buf[i] < 0x80 ? 1 : utf8_scan(buf + i, n - i, &cp);
        size_t need = r > 0 ? (size_t) r : 3;

        if (r == 0) {
            n_pending = (int) (n - i);
            break;
        }
        if (o + need > cap) {
            if (buf != stack) {
                free(buf);
            }
            return -1;
        }
        if (r > 0) {
            memcpy(out + o, buf + i, (size_t) r);
            i += (size_t) r;
        } else {
            memcpy(out + o, UTF8_REPLACEMENT, 3);
            i += (size_t) -r;
        }
        o += need;
    }
    memcpy(s->pending, buf + (n - (size_t) n_pending), (size_t) n_pending);
    s->n_pending = n_pending;
    if (buf != stack) {
        free(buf);
    }
    return (int) o;
}

int tokenizer_stream_flush(const tokenizer *t, tokenizer_stream *s,
                           char *out, size_t cap)
{
    (void) t;
    if (s->n_pending == 0) {
        return 0;
    }
    /* A pending sequence is a valid prefix: one maximal subpart. */
    if (cap < 3) {
        return -1;
    }
    memcpy(out, UTF8_REPLACEMENT, 3);
    s->n_pending = 0;
    return 3;
}
