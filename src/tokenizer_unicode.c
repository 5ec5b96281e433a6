/*
 * Unicode helpers of the tokenizer (see tokenizer_unicode.h).
 */
#include "tokenizer_unicode.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

int utf8_scan(const uint8_t *s, size_t n, uint32_t *cp)
{
    uint8_t b0 = s[0];
    uint8_t lo = 0x80, hi = 0xBF;   /* range of the second byte */
    int need;
    uint32_t c;

    if (b0 < 0x80) {
        *cp = b0;
        return 1;
    }
    /* Table 3-7 of the Unicode standard: well-formed byte sequences. */
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 2;
        c = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 3;
        c = b0 & 0x0F;
        if (b0 == 0xE0) {
            lo = 0xA0;
        } else if (b0 == 0xED) {
            hi = 0x9F;          /* no surrogates */
        }
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 4;
        c = b0 & 0x07;
        if (b0 == 0xF0) {
            lo = 0x90;
        } else if (b0 == 0xF4) {
            hi = 0x8F;          /* nothing above U+10FFFF */
        }
    } else {
        return -1;
    }
    for (int i = 1; i < need; i++) {
        uint8_t b;

        if ((size_t) i >= n) {
            return 0;
        }
        b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) {
            return -i;
        }
        c = (c << 6) | (b & 0x3F);
    }
    *cp = c;
    return need;
}

size_t utf8_first_invalid(const uint8_t *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        uint32_t cp;
        int r;

        /* ASCII runs eight bytes at a time. */
        while (i + 8 <= len) {
            uint64_t w;

            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) {
                break;
            }
            i += 8;
        }
        if (i >= len) {
            break;
        }
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        r = utf8_scan(s + i, len - i, &cp);
        if (r <= 0) {
            return i;
        }
        i += (size_t) r;
    }
    return len;
}

size_t utf8_lossy(const uint8_t *s, size_t len, uint8_t *out)
{
    size_t i = 0, o = 0;

    while (i < len) {
        uint32_t cp;
        int r;

        if (s[i] < 0x80) {
            out[o++] = s[i++];
            continue;
        }
        r = utf8_scan(s + i, len - i, &cp);
        if (r > 0) {
            memcpy(out + o, s + i, (size_t) r);
            o += (size_t) r;
            i += (size_t) r;
        } else {
            memcpy(out + o, UTF8_REPLACEMENT, 3);
            o += 3;
            i += r < 0 ? (size_t) -r : len - i;
        }
    }
    return o;
}

/*
 * GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for
 * themselves, the other 68 bytes for U+0100.. in byte order.
 */
static int bytelevel_is_printable(unsigned b)
{
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC)
           || (b >= 0xAE && b <= 0xFF);
}

uint32_t bytelevel_char_of_byte(uint8_t b)
{
    unsigned n = 0;

    if (bytelevel_is_printable(b)) {
        return b;
    }
    for (unsigned x = 0; x < b; x++) {
        n += !bytelevel_is_printable(x);
    }
    return 256 + n;
}

int bytelevel_byte_of_char(uint32_t cp)
{
    unsigned n = 0;

    if (cp < 256) {
        return bytelevel_is_printable(cp) ? (int) cp : -1;
    }
    if (cp >= 256 + 68) {
        return -1;
    }
    for (unsigned x = 0; x < 256; x++) {
        if (!bytelevel_is_printable(x) && n++ == cp - 256) {
            return (int) x;
        }
    }
    return -1;
}

/* Tables built once (pthread_once: loaders may run on several threads). */
static int16_t bytelevel_byte_table[256 + 68];
static uint16_t bytelevel_char_table[256];
static pthread_once_t bytelevel_once = PTHREAD_ONCE_INIT;

static void bytelevel_tables_build(void)
{
    for (uint32_t cp = 0; cp < 256 + 68; cp++) {
        bytelevel_byte_table[cp] = (int16_t) bytelevel_byte_of_char(cp);
    }
    for (unsigned b = 0; b < 256; b++) {
        bytelevel_char_table[b] = (uint16_t) bytelevel_char_of_byte((uint8_t) b);
    }
}

static void bytelevel_tables_init(void)
{
    pthread_once(&bytelevel_once, bytelevel_tables_build);
}

long bytelevel_decode(const char *s, size_t len, uint8_t *out)
{
    const uint8_t *u = (const uint8_t *) s;
    size_t i = 0, o = 0;

    bytelevel_tables_init();
    while (i < len) {
        uint32_t cp;
        int r = utf8_scan(u + i, len - i, &cp);

        if (r <= 0 || cp >= 256 + 68 || bytelevel_byte_table[cp] < 0) {
            return -1;
        }
        out[o++] = (uint8_t) bytelevel_byte_table[cp];
        i += (size_t) r;
    }
    return (long) o;
}

size_t bytelevel_encode(const uint8_t *s, size_t len, char *out)
{
    size_t o = 0;

    bytelevel_tables_init();
    for (size_t i = 0; i < len; i++) {
        uint16_t cp = bytelevel_char_table[s[i]];

        if (cp < 0x80) {
            out[o++] = (char) cp;
        } else {
            out[o++] = (char) (0xC0 | (cp >> 6));
            out[o++] = (char) (0x80 | (cp & 0x3F));
        }
    }
    return o;
}

/*
 * Code points that are NFC_Quick_Check=Yes, canonical combining class 0
 * and never the second half of a canonical composition.  Text made only
 * of them is NFC, and a normalization boundary lies before each of them
 * (UAX #15), so the stretches between them can be normalized apart.
 * Checked against Python's unicodedata 14.0 (and by test_tokenizer
 * against utf8proc).  Anything else is simply "not known safe".
 */
int nfc_quick_safe(uint32_t cp)
{
    if (cp < 0x300) {
        return 1;
    }
    if (cp < 0x2010) {
        return cp >= 0x400 && cp <= 0x482;          /* Cyrillic letters */
    }
    if (cp < 0x3000) {
        return cp <= 0x2027 || (cp >= 0x2030 && cp <= 0x205E);
    }
    if (cp < 0x4E00) {
        return cp <= 0x3029 || (cp >= 0x3030 && cp <= 0x3096)
               || (cp >= 0x30A0 && cp <= 0x30FF);   /* CJK symbols, kana */
    }
    if (cp <= 0x9FFF) {
        return 1;                                   /* CJK ideographs */
    }
    if (cp >= 0xAC00 && cp <= 0xD7A3) {
        return 1;                                   /* Hangul syllables */
    }
    if (cp >= 0xFF01 && cp <= 0xFF5E) {
        return 1;                                   /* fullwidth forms */
    }
    return cp >= 0x1F300 && cp <= 0x1FAFF;          /* emoji */
}

static uint8_t ccc_of(utf8proc_int32_t cp)
{
    return (uint8_t) utf8proc_get_property(cp)->combining_class;
}

/* Stable sort of cp[0..n) by combining class (bottom-up merge sort with
 * tmp of n entries): canonical ordering in O(n log n).  utf8proc's own
 * reordering swaps neighbours, which is quadratic on a long run of marks
 * (100 KB of alternating accents took 15 s). */
static void sort_by_ccc(utf8proc_int32_t *cp, utf8proc_int32_t *tmp, size_t n)
{
    if (n < 16) {
        for (size_t i = 1; i < n; i++) {
            utf8proc_int32_t c = cp[i];
            uint8_t k = ccc_of(c);
            size_t j = i;

            while (j > 0 && ccc_of(cp[j - 1]) > k) {
                cp[j] = cp[j - 1];
                j--;
            }
            cp[j] = c;
        }
        return;
    }
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n;
            size_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t a = lo, b = mid, o = lo;

            while (a < mid && b < hi) {
                /* Take from the left on ties: stable. */
                tmp[o++] = ccc_of(cp[b]) < ccc_of(cp[a]) ? cp[b++] : cp[a++];
            }
            while (a < mid) {
                tmp[o++] = cp[a++];
            }
            while (b < hi) {
                tmp[o++] = cp[b++];
            }
        }
        memcpy(cp, tmp, n * sizeof(*cp));
    }
}

/*
 * NFC of the valid UTF-8 s[0..n): canonical decomposition per code point
 * (utf8proc), canonical ordering (sort_by_ccc), then utf8proc's linear
 * composition pass, which also encodes back to UTF-8.  Returns a
 * malloc'ed buffer in *out and its length, or -1.
 */
static long nfc_region(const uint8_t *s, size_t n, uint8_t **out)
{
    size_t cap = n + 16, len = 0, i = 0;
    utf8proc_int32_t *buf = malloc(cap * sizeof(*buf)), *tmp;
    utf8proc_ssize_t r;

    if (buf == NULL) {
        return -1;
    }
    while (i < n) {
        uint32_t cp;
        int step = utf8_scan(s + i, n - i, &cp);
        int bound = UTF8PROC_BOUNDCLASS_START;

        if (step <= 0) {
            free(buf);
            return -1;
        }
        i += (size_t) step;
        for (;;) {
            r = utf8proc_decompose_char((utf8proc_int32_t) cp, buf + len,
                                        (utf8proc_ssize_t) (cap - len),
                                        UTF8PROC_DECOMPOSE, &bound);
            if (r < 0) {
                free(buf);
                return -1;
            }
            if ((size_t) r <= cap - len) {
                len += (size_t) r;
                break;
            }
            {
                utf8proc_int32_t *grown = realloc(buf, 2 * cap * sizeof(*buf));

                if (grown == NULL) {
                    free(buf);
                    return -1;
                }
                buf = grown;
                cap *= 2;
            }
        }
    }
    tmp = malloc((len + 1) * sizeof(*tmp));
    if (tmp == NULL) {
        free(buf);
        return -1;
    }
    for (size_t a = 0; a < len;) {
        size_t b = a;

        while (b < len && ccc_of(buf[b]) != 0) {
            b++;
        }
        if (b - a > 1) {
            sort_by_ccc(buf + a, tmp, b - a);
        }
        a = b > a ? b : a + 1;
    }
    free(tmp);
    /* Composition and UTF-8 encoding in place (4 bytes a code point are
     * room enough for its UTF-8). */
    r = utf8proc_reencode(buf, (utf8proc_ssize_t) len, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (r < 0) {
        free(buf);
        return -1;
    }
    *out = (uint8_t *) buf;
    return (long) r;
}

const uint8_t *nfc_normalize(const uint8_t *s, size_t len, size_t *out_len)
{
    size_t i = 0, last_safe = 0, copied = 0, o = 0, cap = 0;
    uint8_t *out = NULL;

    while (i < len) {
        uint32_t cp;
        int r;
        size_t region_end;
        uint8_t *norm;
        long nlen;

        if (s[i] < 0x80) {
            last_safe = i++;
            continue;
        }
        r = utf8_scan(s + i, len - i, &cp);
        if (r <= 0) {
            r = 1;              /* callers validate first; never loop */
        }
        if (nfc_quick_safe(cp)) {
            last_safe = i;
            i += (size_t) r;
            continue;
        }
        /* An unsafe code point: normalize from the last safe one (it may
         * compose with what follows) to the next safe one. */
        region_end = i + (size_t) r;
        while (region_end < len) {
            int r2 = utf8_scan(s + region_end, len - region_end, &cp);

            if (r2 <= 0) {
                r2 = 1;
            } else if (nfc_quick_safe(cp)) {
                break;
            }
            region_end += (size_t) r2;
        }
        if (last_safe < copied) {
            last_safe = copied;     /* the previous region ended there */
        }
        nlen = nfc_region(s + last_safe, region_end - last_safe, &norm);
        if (nlen < 0) {
            free(out);
            return NULL;
        }
        if (out == NULL) {
            cap = len + (size_t) nlen + 64;
            out = malloc(cap);
        } else if (o + (last_safe - copied) + (size_t) nlen + (len - region_end) > cap) {
            uint8_t *grown;

            cap = 2 * cap + (size_t) nlen;
            grown = realloc(out, cap);
            if (grown == NULL) {
                free(out);
                out = NULL;
            } else {
                out = grown;
            }
        }
        if (out == NULL) {
            free(norm);
            return NULL;
        }
        memcpy(out + o, s + copied, last_safe - copied);
        o += last_safe - copied;
        memcpy(out + o, norm, (size_t) nlen);
        o += (size_t) nlen;
        free(norm);
        copied = region_end;
        i = region_end;
        last_safe = region_end;
    }
    if (out == NULL) {
        *out_len = len;
        return s;
    }
    if (o + (len - copied) > cap) {
        uint8_t *grown = realloc(out, o + (len - copied));

        if (grown == NULL) {
            free(out);
            return NULL;
        }
        out = grown;
    }
    memcpy(out + o, s + copied, len - copied);
    o += len - copied;
    *out_len = o;
    return out;
}
