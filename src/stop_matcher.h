/*
 * Stop strings over streamed text.
 *
 * The engine feeds the UTF-8 text each step decoded; the matcher says how
 * much of it may be sent now and whether a stop string has appeared.  Stop
 * strings may span any number of feeds.
 *
 * Semantics, the same whatever the chunking of the text:
 *   - The match is the first stop string to be completed in the text (the
 *     smallest end offset); if several complete at the same byte, the one
 *     that starts earliest (the longest) wins.  Generation can therefore
 *     stop on the very step that completes a stop string.  E.g. stops
 *     {"ab", "b"} on "xab" match "ab"; stops {"abcd", "bc"} on "abc" match
 *     "bc".
 *   - Text is held back while it could still become the start of a stop
 *     string: the longest suffix of the unsent text that is a proper prefix
 *     of some stop string, extended back so that no UTF-8 sequence is split
 *     (an incomplete sequence at the end of the text is held as well).
 *   - On a match the output ends right before the stop string, or right
 *     after it with include_stop_str_in_output; nothing after it is ever
 *     output, and later feeds output nothing.
 *   - At the end of generation without a match, flush returns the held
 *     text.  Concatenating all outputs gives the full text, truncated at
 *     the stop string (before or after it as configured).
 *
 * Memory: the matcher keeps only the unsent text (at most the longest stop
 * string plus 3 bytes between calls, plus the current feed); its buffer
 * grows geometrically, so feeds allocate only when a feed is longer than
 * any before.  Not thread-safe: one matcher per sequence.
 */
#ifndef LLM_STOP_MATCHER_H
#define LLM_STOP_MATCHER_H

#include <stddef.h>

typedef struct stop_matcher stop_matcher;

typedef struct {
    const char *text;        /* text to send now; valid until the next call
                                on this matcher; may be empty */
    size_t      len;
    int         stopped;     /* 1: a stop string matched (on this call or
                                an earlier one) */
    int         stop_index;  /* index of the matched stop string, or -1 */
} stop_output;

/*
 * Copies n stop strings (n may be 0: everything passes through).  Every
 * string must be non-empty and valid UTF-8.  Returns NULL with a message in
 * err (naming the offending stop by index) on a bad string or out of
 * memory.
 */
stop_matcher *stop_matcher_create(const char *const *stops, int n,
                                  int include_stop_str_in_output,
                                  char *err, size_t errlen);
void stop_matcher_free(stop_matcher *m);

/* Feeds the next piece of text.  Returns 0, or -1 when out of memory (the
 * matcher is unchanged then). */
int stop_matcher_feed(stop_matcher *m, const char *text, size_t len,
                      stop_output *out);

/* End of generation: returns the held text (nothing after a match).
 * Feeds after a flush start afresh: no stop string spans a flush. */
void stop_matcher_flush(stop_matcher *m, stop_output *out);

/* The stop string at index (NUL-terminated, owned by the matcher), or NULL
 * when index is out of range: for llm_event.stop_reason. */
const char *stop_matcher_string(const stop_matcher *m, int index);

/* Bytes currently held back (for tests and accounting). */
size_t stop_matcher_held(const stop_matcher *m);

#endif
