/*
 * Unicode helpers of the tokenizer: UTF-8 scanning and validation, the
 * lossy UTF-8 repair Hugging Face applies when decoding, the GPT-2
 * byte-level alphabet, and NFC normalization (utf8proc) with a fast path
 * for text that is already NFC.
 */
#ifndef LLM_TOKENIZER_UNICODE_H
#define LLM_TOKENIZER_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* The encoding of U+FFFD REPLACEMENT CHARACTER. */
#define UTF8_REPLACEMENT "\xEF\xBF\xBD"

/*
 * Scans one UTF-8 sequence at s (n > 0 bytes available).
 *   > 0: a valid sequence of that many bytes; *cp is its code point.
 *   < 0: invalid; the "maximal subpart" (Unicode ch. 3, as Rust's
 *        from_utf8_lossy and Python's errors="replace" use) is -ret bytes
 *        long and stands for one U+FFFD.
 *     0: s[0..n) is a valid but unfinished prefix of a longer sequence.
 */
int utf8_scan(const uint8_t *s, size_t n, uint32_t *cp);

/* Offset of the first byte that is not valid UTF-8, or len when the whole
 * text is valid (a sequence cut off at the end is invalid). */
size_t utf8_first_invalid(const uint8_t *s, size_t len);

/* Upper bound of utf8_lossy's output for len input bytes. */
#define UTF8_LOSSY_MAX(len) (3 * (len))

/* Copies s to out replacing each maximal invalid subpart by U+FFFD (a
 * trailing unfinished sequence included).  out needs UTF8_LOSSY_MAX(len)
 * bytes.  Returns the output length. */
size_t utf8_lossy(const uint8_t *s, size_t len, uint8_t *out);

/* GPT-2 byte-level alphabet: each byte is shown as one code point. */
uint32_t bytelevel_char_of_byte(uint8_t b);
/* The byte a byte-level code point stands for, or -1. */
int bytelevel_byte_of_char(uint32_t cp);

/* Converts a byte-level string (UTF-8 of byte-level code points) to the
 * raw bytes it stands for.  out needs len bytes.  Returns the raw length,
 * or -1 when a character is not in the byte-level alphabet (or s is not
 * UTF-8). */
long bytelevel_decode(const char *s, size_t len, uint8_t *out);

/* Converts raw bytes to their byte-level string; out needs 2 * len bytes.
 * Returns the output length. */
size_t bytelevel_encode(const uint8_t *s, size_t len, char *out);

/* Is cp NFC_Quick_Check=Yes, combining class 0 and never the second half
 * of a canonical composition?  (A conservative subset; see the .c.) */
int nfc_quick_safe(uint32_t cp);

/*
 * NFC of valid UTF-8 text s[0..len).  Returns s itself (nothing to do:
 * the text is already NFC by quick check), or a malloc'ed normalized copy
 * (*out_len set in both cases), or NULL when out of memory.  Only the
 * stretches around code points outside the quick-check set go through
 * utf8proc, so long ASCII/CJK texts cost one scan.
 */
const uint8_t *nfc_normalize(const uint8_t *s, size_t len, size_t *out_len);

#endif
