/*
 * Byte-level BPE tokenizer loaded from Hugging Face tokenizer.json.
 * Exact parity with the `tokenizers` library is the bar (t/fixtures goldens).
 *
 * A loaded tokenizer is immutable and safe to use from many threads at once:
 * the regex match state and the BPE piece cache are per thread (made on a
 * thread's first encode, freed when the thread exits or the tokenizer is
 * freed).  tokenizer_free must not run while another thread still uses the
 * tokenizer.
 *
 * Supported tokenizer.json: model BPE (merges as "a b" strings or
 * ["a", "b"] pairs, ignore_merges), normalizer NFC / Sequence of NFC /
 * null, pre_tokenizer Split(Regex, Isolated) / ByteLevel (add_prefix_space
 * false) / Sequence of those, decoder ByteLevel, post_processor ByteLevel /
 * TemplateProcessing / null.  Anything else is a load error naming the
 * field, never a silently different tokenization.
 *
 * Regex semantics follow Oniguruma (HF's engine): \s is the White_Space
 * set (U+0085 included).  \p{L}/\p{N} come from PCRE2's Unicode tables
 * (10.42: Unicode 14), NFC from utf8proc's (2.8: Unicode 15).
 */
#ifndef LLM_TOKENIZER_H
#define LLM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer tokenizer;

/* Loads tokenizer.json (path to the file).  tokenizer_config.json in the
 * same directory is read for bos/eos token names when present.
 * Returns NULL with a message naming the file in err. */
tokenizer *tokenizer_load(const char *tokenizer_json_path,
                          char *err, size_t errlen);
void tokenizer_free(tokenizer *t);

int tokenizer_vocab_size(const tokenizer *t);   /* max id + 1 */
/* bos_token / eos_token of tokenizer_config.json, or -1 (none, or no
 * such file).  Qwen3: no bos, eos <|im_end|>. */
int32_t tokenizer_bos_id(const tokenizer *t);
int32_t tokenizer_eos_id(const tokenizer *t);
/* Longest tokenizer_token_bytes() of any id (sizes stream buffers). */
size_t tokenizer_max_token_bytes(const tokenizer *t);
/* Id of a token string (vocab or added token), or -1. */
int32_t tokenizer_token_id(const tokenizer *t, const char *token);
/* Is this id an added token flagged special? */
int tokenizer_is_special(const tokenizer *t, int32_t id);

/*
 * Encodes UTF-8 text.  Added tokens are matched first; the rest goes
 * through NFC, the pre-tokenizer regex, byte-level mapping and BPE.
 * Returns a malloc'ed array in *ids and its length, or -1 with err.
 * Invalid UTF-8 is an error ("invalid UTF-8 at byte N"), never silently
 * replaced: HF's Python API cannot even receive such text.  Empty text
 * gives 0 ids (*ids is still a valid malloc'ed pointer to free).
 * add_special_tokens: prepend/append what the post-processor says
 * (Qwen3: nothing).
 */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len,
                     int add_special_tokens, int32_t **ids,
                     char *err, size_t errlen);

/* Raw bytes of one token (byte-level decoded; may be partial UTF-8).
 * NULL for an unknown id. */
const char *tokenizer_token_bytes(const tokenizer *t, int32_t id, size_t *len);

/* One-shot decode to malloc'ed UTF-8; invalid UTF-8 sequences become
 * U+FFFD as Hugging Face's decoder does.  Returns NULL with err on an
 * unknown id. */
char *tokenizer_decode(const tokenizer *t, const int32_t *ids, int n,
                       int skip_special_tokens, size_t *out_len,
                       char *err, size_t errlen);

/*
 * Incremental decoder for streaming: feed ids one at a time, get the text
 * that has become complete UTF-8.  The concatenation of all outputs plus
 * tokenizer_stream_flush() equals tokenizer_decode() of all ids.
 */
typedef struct {
    char   pending[8];      /* bytes of an incomplete UTF-8 sequence */
    int    n_pending;
    int    skip_special_tokens;
} tokenizer_stream;

void tokenizer_stream_init(tokenizer_stream *s, int skip_special_tokens);
/* Appends the newly complete text to out (capacity cap) and returns the
 * number of bytes written, or -1 for an unknown id or a too small out
 * (then the stream is unchanged).  Every invalid byte can become a 3-byte
 * U+FFFD: cap >= 3 * (token bytes + 3) is always enough, so
 * TOKENIZER_STREAM_CAP(tokenizer_max_token_bytes(t)) fits any id. */
#define TOKENIZER_STREAM_CAP(token_bytes) (3 * ((token_bytes) + 3))
int tokenizer_stream_feed(const tokenizer *t, tokenizer_stream *s,
                          int32_t id, char *out, size_t cap);
/* Emits what is left: an unfinished sequence becomes one U+FFFD (cap >= 3
 * is enough).  Returns the bytes written, or -1 when cap is too small. */
int tokenizer_stream_flush(const tokenizer *t, tokenizer_stream *s,
                           char *out, size_t cap);

#endif
