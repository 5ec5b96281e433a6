/*
 * Loading tokenizer.json into a tokenizer (see tokenizer.h for what is
 * supported): vocabulary and added tokens, merges, normalizer,
 * pre-tokenizer, decoder, post-processor, and bos/eos from
 * tokenizer_config.json.  model.vocab and model.merges go through the fast
 * reader of tokenizer_json.c, the rest through cJSON.
 */
#include <cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"
#include "tokenizer_json.h"
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
/* ---- token string hash ------------------------------------------------ */

static uint64_t str_hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < n; i++) {
        h = (h ^ (uint8_t) s[i]) * 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

int32_t tok_lookup_key(const tokenizer *t, const char *s, size_t n)
{
    uint64_t h = str_hash(s, n);
    size_t i = h & t->hash_mask;

    for (;;) {
        int32_t id = t->hash_ids[i].id;

        if (id < 0) {
            return -1;
        }
        if (t->hash_ids[i].hash == (uint32_t) (h >> 32) && (size_t) t->key_len[id] == n
            && memcmp(t->arena + t->key_off[id], s, n) == 0) {
            return id;
        }
        i = (i + 1) & t->hash_mask;
    }
}

/* Inserts id under its key; an existing entry with the same key is
 * replaced only when replace is set (added tokens win over the vocab). */
static void insert_key(tokenizer *t, int32_t id, int replace)
{
    const char *s = t->arena + t->key_off[id];
    size_t n = (size_t) t->key_len[id];
    uint64_t h = str_hash(s, n);
    size_t i = h & t->hash_mask;

    for (;;) {
        int32_t cur = t->hash_ids[i].id;

        if (cur < 0) {
            t->hash_ids[i].id = id;
            t->hash_ids[i].hash = (uint32_t) (h >> 32);
            return;
        }
        if (t->hash_ids[i].hash == (uint32_t) (h >> 32) && (size_t) t->key_len[cur] == n
            && memcmp(t->arena + t->key_off[cur], s, n) == 0) {
            if (replace) {
                t->hash_ids[i].id = id;
            }
            return;
        }
        i = (i + 1) & t->hash_mask;
    }
}
/* ---- loading ------------------------------------------------------------ */

static char *read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;

    if (f == NULL) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        set_err(err, errlen, "%s: cannot determine the size", path);
        fclose(f);
        return NULL;
    }
    buf = malloc((size_t) n + 1);
    if (buf == NULL) {
        set_err(err, errlen, "%s: out of memory (%ld bytes)", path, n);
    } else if (fread(buf, 1, (size_t) n, f) != (size_t) n) {
        set_err(err, errlen, "%s: read error", path);
        free(buf);
        buf = NULL;
    } else {
        buf[n] = '\0';
        *len = (size_t) n;
    }
    fclose(f);
    return buf;
}

static cJSON *parse_text(const char *path, const char *text, size_t len,
                         char *err, size_t errlen)
{
    cJSON *root = cJSON_ParseWithLength(text, len);

    if (root == NULL) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = at != NULL && at >= text && at <= text + len ? (size_t) (at - text) : 0;

        set_err(err, errlen, "%s: invalid JSON near byte %zu", path, off);
    }
    return root;
}

static cJSON *parse_json(const char *path, char *err, size_t errlen)
{
    size_t len = 0;
    char *text = read_file(path, &len, err, errlen);
    cJSON *root;

    if (text == NULL) {
        return NULL;
    }
    root = parse_text(path, text, len, err, errlen);
    free(text);
    return root;
}

static const char *type_of(const cJSON *node)
{
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(node, "type");

    return cJSON_IsString(type) ? type->valuestring : NULL;
}

/* Stores key and raw bytes of id in the arena (sized by the caller). */
static void store_token(tokenizer *t, int32_t id, const char *key, size_t key_len,
                        const uint8_t *bytes, size_t bytes_len)
{
    t->key_off[id] = t->arena_len;
    t->key_len[id] = (int32_t) key_len;
    memcpy(t->arena + t->arena_len, key, key_len);
    t->arena_len += key_len;
    t->bytes_off[id] = t->arena_len;
    t->bytes_len[id] = (int32_t) bytes_len;
    memcpy(t->arena + t->arena_len, bytes, bytes_len);
    t->arena_len += bytes_len;
    if (bytes_len > t->max_token_bytes) {
        t->max_token_bytes = bytes_len;
    }
}

static int load_vocab_and_added(tokenizer *t, const char *path,
                                const tjson_vocab_entry *vocab, long n_vocab,
                                const cJSON *added, char *err, size_t errlen)
{
    const cJSON *item;
    size_t arena_cap = 0, hash_n = 1024;
    int32_t max_id = -1;
    int n_added = 0;

    for (long k = 0; k < n_vocab; k++) {
        if (vocab[k].id > max_id) {
            max_id = vocab[k].id;
        }
        arena_cap += 2 * (size_t) vocab[k].len;
    }
    if (added != NULL && !cJSON_IsNull(added) && !cJSON_IsArray(added)) {
        set_err(err, errlen, "%s: added_tokens is not an array", path);
        return -1;
    }
    cJSON_ArrayForEach(item, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(item, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(item, "content");

        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > TJSON_MAX_TOKEN_ID
            || !cJSON_IsString(content)) {
            set_err(err, errlen, "%s: added_tokens[%d] lacks a numeric id or a content string",
                    path, n_added);
            return -1;
        }
        if (id->valueint > max_id) {
            max_id = id->valueint;
        }
        arena_cap += 2 * strlen(content->valuestring);
        n_added++;
    }
    if (max_id < 0) {
        set_err(err, errlen, "%s: model.vocab is empty", path);
        return -1;
    }
    t->vocab_size = max_id + 1;
    t->arena = malloc(arena_cap + 1);
    t->key_off = calloc((size_t) t->vocab_size, sizeof(size_t));
    t->key_len = malloc((size_t) t->vocab_size * sizeof(int32_t));
    t->bytes_off = calloc((size_t) t->vocab_size, sizeof(size_t));
    t->bytes_len = calloc((size_t) t->vocab_size, sizeof(int32_t));
    t->special = calloc((size_t) t->vocab_size, 1);
    t->added = calloc((size_t) (n_added > 0 ? n_added : 1), sizeof(added_token));
    while (hash_n < 2 * ((size_t) n_vocab + (size_t) n_added)) {
        hash_n *= 2;
    }
    t->hash_ids = malloc(hash_n * sizeof(*t->hash_ids));
    if (t->arena == NULL || t->key_off == NULL || t->key_len == NULL || t->bytes_off == NULL
        || t->bytes_len == NULL || t->special == NULL || t->added == NULL
        || t->hash_ids == NULL) {
        set_err(err, errlen, "%s: out of memory for a vocabulary of %d ids", path,
                t->vocab_size);
        return -1;
    }
    t->hash_mask = hash_n - 1;
    memset(t->hash_ids, 0xff, hash_n * sizeof(*t->hash_ids));
    for (int i = 0; i < t->vocab_size; i++) {
        t->key_len[i] = -1;
    }

    for (long k = 0; k < n_vocab; k++) {
        size_t klen = vocab[k].len;
        uint8_t stack[512];
        uint8_t *raw = klen <= sizeof(stack) ? stack : malloc(klen);
        long rlen;
        int32_t id = vocab[k].id;

        if (raw == NULL) {
            set_err(err, errlen, "%s: out of memory", path);
            return -1;
        }
        rlen = t->key_len[id] >= 0 ? -2 : bytelevel_decode(vocab[k].key, klen, raw);
        if (rlen >= 0) {
            store_token(t, id, vocab[k].key, klen, raw, (size_t) rlen);
        }
        if (raw != stack) {
            free(raw);
        }
        if (rlen == -2) {
            set_err(err, errlen, "%s: model.vocab gives id %d to two tokens, one is \"%.*s\"",
                    path, id, (int) klen, vocab[k].key);
            return -1;
        }
        if (rlen < 0) {
            set_err(err, errlen, "%s: model.vocab token \"%.*s\" (id %d) is not in the "
                    "byte-level alphabet", path, (int) klen, vocab[k].key, id);
            return -1;
        }
        insert_key(t, id, 0);
    }

    t->n_added = n_added;
    n_added = 0;
    cJSON_ArrayForEach(item, added) {
        added_token *a = &t->added[n_added];
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(item, "content");
        int32_t id = cJSON_GetObjectItemCaseSensitive(item, "id")->valueint;
        size_t clen = strlen(content->valuestring);
        uint8_t *raw = malloc(clen + 1);
        long rlen;

        if (raw == NULL || (a->content = strdup(content->valuestring)) == NULL) {
            free(raw);
            set_err(err, errlen, "%s: out of memory", path);
            return -1;
        }
        if (utf8_first_invalid((const uint8_t *) a->content, clen) != clen) {
            free(raw);
            set_err(err, errlen, "%s: added_tokens[%d].content is not UTF-8", path, n_added);
            return -1;
        }
        a->len = clen;
        a->id = id;
        a->special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(item, "special"));
        a->lstrip = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(item, "lstrip"));
        a->rstrip = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(item, "rstrip"));
        a->single_word = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(item, "single_word"));
        a->normalized = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(item, "normalized"));
        /* HF's ByteLevel decoder maps every token, added ones included,
         * through the byte-level alphabet, keeping the text as is when a
         * character is outside it. */
        rlen = bytelevel_decode(a->content, clen, raw);
        if (rlen < 0) {
            memcpy(raw, a->content, clen);
            rlen = (long) clen;
        }
        /* An added token may repeat a vocab id; the added form wins. */
        store_token(t, id, a->content, clen, raw, (size_t) rlen);
        free(raw);
        t->special[id] = a->special;
        insert_key(t, id, 1);
        n_added++;
    }
    return 0;
}

static int load_merges(tokenizer *t, const char *path, const tjson_merge_entry *merges,
                       long n_merges, char *err, size_t errlen)
{
    if (bpe_merges_init(&t->bpe.merges, (size_t) n_merges) != 0) {
        set_err(err, errlen, "%s: out of memory for the merges", path);
        return -1;
    }
    for (long rank = 0; rank < n_merges; rank++) {
        const tjson_merge_entry *m = &merges[rank];
        char joined[1024];
        int32_t ida, idb, idab;

        if ((size_t) m->alen + m->blen >= sizeof(joined)) {
            set_err(err, errlen, "%s: model.merges[%ld] is too long", path, rank);
            return -1;
        }
        memcpy(joined, m->a, m->alen);
        memcpy(joined + m->alen, m->b, m->blen);
        ida = tok_lookup_key(t, m->a, m->alen);
        idb = tok_lookup_key(t, m->b, m->blen);
        idab = tok_lookup_key(t, joined, (size_t) m->alen + m->blen);
        if (ida < 0 || idb < 0 || idab < 0) {
            set_err(err, errlen, "%s: model.merges[%ld] \"%.*s\" + \"%.*s\": %s not in the "
                    "vocabulary", path, rank, (int) m->alen, m->a, (int) m->blen, m->b,
                    ida < 0 ? "the first token is" : idb < 0 ? "the second token is"
                                                   : "the merged token is");
            return -1;
        }
        if (bpe_merges_put(&t->bpe.merges, ida, idb, (int32_t) rank, idab) != 0) {
            set_err(err, errlen, "%s: merge table overflow", path);
            return -1;
        }
    }
    return 0;
}

/* model.vocab and model.merges as flat arrays, from the fast reader or
 * from cJSON nodes (then the strings point into the cJSON tree). */
typedef struct {
    tjson_vocab_entry *vocab;
    long               n_vocab;
    char              *vocab_strings;
    tjson_merge_entry *merges;
    long               n_merges;
    char              *merge_strings;
} flat_model;

static void flat_model_free(flat_model *f)
{
    free(f->vocab);
    free(f->vocab_strings);
    free(f->merges);
    free(f->merge_strings);
    memset(f, 0, sizeof(*f));
}

static int flat_from_cjson(flat_model *f, const char *path, const cJSON *model,
                           char *err, size_t errlen)
{
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *item;
    long k = 0;

    if (!cJSON_IsObject(vocab)) {
        set_err(err, errlen, "%s: model.vocab is missing or not an object", path);
        return -1;
    }
    if (!cJSON_IsArray(merges)) {
        set_err(err, errlen, "%s: model.merges is missing or not an array", path);
        return -1;
    }
    f->vocab = malloc(((size_t) cJSON_GetArraySize(vocab) + 1) * sizeof(*f->vocab));
    f->merges = malloc(((size_t) cJSON_GetArraySize(merges) + 1) * sizeof(*f->merges));
    if (f->vocab == NULL || f->merges == NULL) {
        set_err(err, errlen, "%s: out of memory", path);
        return -1;
    }
    cJSON_ArrayForEach(item, vocab) {
        if (!cJSON_IsNumber(item) || item->valuedouble < 0 || item->valuedouble > TJSON_MAX_TOKEN_ID
            || item->valuedouble != (double) item->valueint) {
            set_err(err, errlen, "%s: model.vocab[\"%s\"] is not a token id", path,
                    item->string);
            return -1;
        }
        f->vocab[k].key = item->string;
        f->vocab[k].len = (uint32_t) strlen(item->string);
        f->vocab[k].id = item->valueint;
        k++;
    }
    f->n_vocab = k;
    k = 0;
    cJSON_ArrayForEach(item, merges) {
        tjson_merge_entry *m = &f->merges[k];

        if (cJSON_IsString(item) && strchr(item->valuestring, ' ') != NULL) {
            /* "a b": split at the first space (byte-level tokens hold no
             * literal space). */
            const char *sp = strchr(item->valuestring, ' ');

            m->a = item->valuestring;
            m->alen = (uint32_t) (sp - item->valuestring);
            m->b = sp + 1;
            m->blen = (uint32_t) strlen(sp + 1);
        } else if (cJSON_IsArray(item) && cJSON_GetArraySize(item) == 2
                   && cJSON_IsString(cJSON_GetArrayItem(item, 0))
                   && cJSON_IsString(cJSON_GetArrayItem(item, 1))) {
            m->a = cJSON_GetArrayItem(item, 0)->valuestring;
            m->b = cJSON_GetArrayItem(item, 1)->valuestring;
            m->alen = (uint32_t) strlen(m->a);
            m->blen = (uint32_t) strlen(m->b);
        } else {
            set_err(err, errlen, "%s: model.merges[%ld] is neither \"a b\" nor [\"a\", \"b\"]",
                    path, k);
            return -1;
        }
        k++;
    }
    f->n_merges = k;
    return 0;
}

static int load_model(tokenizer *t, const char *path, const cJSON *root, flat_model *flat,
                      char *err, size_t errlen)
{
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *v;
    const char *type;

    if (!cJSON_IsObject(model)) {
        set_err(err, errlen, "%s: \"model\" is missing", path);
        return -1;
    }
    type = type_of(model);
    if (type != NULL && strcmp(type, "BPE") != 0) {
        set_err(err, errlen, "%s: model.type \"%s\" is not supported (only BPE)", path, type);
        return -1;
    }
    v = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(v) && v->valuedouble > 0) {
        set_err(err, errlen, "%s: model.dropout is set; BPE dropout is for training only",
                path);
        return -1;
    }
    v = cJSON_GetObjectItemCaseSensitive(model, "byte_fallback");
    if (cJSON_IsTrue(v)) {
        set_err(err, errlen, "%s: model.byte_fallback is not supported (byte-level BPE only)",
                path);
        return -1;
    }
    v = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
    if (cJSON_IsString(v) && v->valuestring[0] != '\0') {
        set_err(err, errlen, "%s: model.continuing_subword_prefix is not supported", path);
        return -1;
    }
    v = cJSON_GetObjectItemCaseSensitive(model, "end_of_word_suffix");
    if (cJSON_IsString(v) && v->valuestring[0] != '\0') {
        set_err(err, errlen, "%s: model.end_of_word_suffix is not supported", path);
        return -1;
    }
    t->ignore_merges = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));
    if (flat->vocab == NULL && flat_from_cjson(flat, path, model, err, errlen) != 0) {
        return -1;
    }
    if (load_vocab_and_added(t, path, flat->vocab, flat->n_vocab,
                             cJSON_GetObjectItemCaseSensitive(root, "added_tokens"),
                             err, errlen) != 0) {
        return -1;
    }
    for (int b = 0; b < 256; b++) {
        char key[4];
        size_t klen = bytelevel_encode((const uint8_t *) &(uint8_t) { (uint8_t) b }, 1, key);
        int32_t id = tok_lookup_key(t, key, klen);

        if (id < 0) {
            set_err(err, errlen, "%s: model.vocab lacks the byte-level token of byte 0x%02x",
                    path, b);
            return -1;
        }
        t->bpe.byte_ids[b] = id;
    }
    return load_merges(t, path, flat->merges, flat->n_merges, err, errlen);
}

static int load_normalizer(tokenizer *t, const char *path, const cJSON *n,
                           char *err, size_t errlen)
{
    const char *type;

    if (n == NULL || cJSON_IsNull(n)) {
        return 0;
    }
    type = type_of(n);
    if (type != NULL && strcmp(type, "NFC") == 0) {
        t->nfc = 1;
        return 0;
    }
    if (type != NULL && strcmp(type, "Sequence") == 0) {
        const cJSON *item;

        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(n, "normalizers")) {
            if (load_normalizer(t, path, item, err, errlen) != 0) {
                return -1;
            }
        }
        return 0;
    }
    set_err(err, errlen, "%s: normalizer type \"%s\" is not supported (NFC, Sequence)", path,
            type ? type : "?");
    return -1;
}

static int load_pre_tokenizer(tokenizer *t, const char *path, const cJSON *p,
                              char *err, size_t errlen)
{
    const char *type;
    char why[256];

    if (p == NULL || cJSON_IsNull(p)) {
        return 0;
    }
    type = type_of(p);
    if (type != NULL && strcmp(type, "Sequence") == 0) {
        const cJSON *item;

        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(p, "pretokenizers")) {
            if (load_pre_tokenizer(t, path, item, err, errlen) != 0) {
                return -1;
            }
        }
        return 0;
    }
    if (type != NULL && strcmp(type, "Split") == 0) {
        const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *regex = cJSON_GetObjectItemCaseSensitive(pattern, "Regex");
        const cJSON *behavior = cJSON_GetObjectItemCaseSensitive(p, "behavior");

        if (!cJSON_IsString(regex)) {
            set_err(err, errlen, "%s: pre_tokenizer Split: only pattern.Regex is supported",
                    path);
            return -1;
        }
        if (!cJSON_IsString(behavior) || strcmp(behavior->valuestring, "Isolated") != 0) {
            set_err(err, errlen, "%s: pre_tokenizer Split: only behavior \"Isolated\" is "
                    "supported", path);
            return -1;
        }
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "invert"))) {
            set_err(err, errlen, "%s: pre_tokenizer Split: invert is not supported", path);
            return -1;
        }
        if (pretok_add_regex(&t->pre, regex->valuestring, why, sizeof(why)) != 0) {
            set_err(err, errlen, "%s: pre_tokenizer Split: %s", path, why);
            return -1;
        }
        return 0;
    }
    if (type != NULL && strcmp(type, "ByteLevel") == 0) {
        const cJSON *use_regex = cJSON_GetObjectItemCaseSensitive(p, "use_regex");

        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "add_prefix_space"))) {
            set_err(err, errlen, "%s: pre_tokenizer ByteLevel add_prefix_space is not "
                    "supported", path);
            return -1;
        }
        /* use_regex defaults to true in tokenizers. */
        if (use_regex == NULL || cJSON_IsTrue(use_regex)) {
            if (pretok_add_regex(&t->pre, PRETOK_GPT2_PATTERN, why, sizeof(why)) != 0) {
                set_err(err, errlen, "%s: pre_tokenizer ByteLevel: %s", path, why);
                return -1;
            }
        }
        /* The byte-level mapping itself happens inside BPE, on raw bytes. */
        return 0;
    }
    set_err(err, errlen, "%s: pre_tokenizer type \"%s\" is not supported (Sequence, Split, "
            "ByteLevel)", path, type ? type : "?");
    return -1;
}

static int load_decoder(const char *path, const cJSON *d, char *err, size_t errlen)
{
    const char *type;

    if (d == NULL || cJSON_IsNull(d)) {
        set_err(err, errlen, "%s: decoder is missing (ByteLevel expected)", path);
        return -1;
    }
    type = type_of(d);
    if (type != NULL && strcmp(type, "ByteLevel") == 0) {
        return 0;
    }
    if (type != NULL && strcmp(type, "Sequence") == 0) {
        const cJSON *item;
        int n = 0;

        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(d, "decoders")) {
            if (load_decoder(path, item, err, errlen) != 0) {
                return -1;
            }
            n++;
        }
        if (n > 0) {
            return 0;
        }
    }
    set_err(err, errlen, "%s: decoder type \"%s\" is not supported (ByteLevel)", path,
            type ? type : "?");
    return -1;
}

static int load_post_processor(tokenizer *t, const char *path, const cJSON *p,
                               char *err, size_t errlen)
{
    const char *type;
    const cJSON *item;
    int seen_sequence = 0;

    if (p == NULL || cJSON_IsNull(p)) {
        return 0;
    }
    type = type_of(p);
    if (type != NULL && strcmp(type, "ByteLevel") == 0) {
        return 0;       /* only offsets; no ids */
    }
    if (type != NULL && strcmp(type, "Sequence") == 0) {
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(p, "processors")) {
            if (load_post_processor(t, path, item, err, errlen) != 0) {
                return -1;
            }
        }
        return 0;
    }
    if (type == NULL || strcmp(type, "TemplateProcessing") != 0) {
        set_err(err, errlen, "%s: post_processor type \"%s\" is not supported (ByteLevel, "
                "TemplateProcessing)", path, type ? type : "?");
        return -1;
    }
    /* The single-sequence template: special tokens around "$A". */
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(p, "single")) {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(item, "SpecialToken");
        const cJSON *name;
        const cJSON *ids;
        const cJSON *id;

        if (cJSON_GetObjectItemCaseSensitive(item, "Sequence") != NULL) {
            seen_sequence = 1;
            continue;
        }
        name = cJSON_GetObjectItemCaseSensitive(sp, "id");
        if (!cJSON_IsString(name)) {
            set_err(err, errlen, "%s: post_processor.single has an item that is neither "
                    "Sequence nor SpecialToken", path);
            return -1;
        }
        ids = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(p, "special_tokens"), name->valuestring),
            "ids");
        if (!cJSON_IsArray(ids)) {
            set_err(err, errlen, "%s: post_processor.special_tokens lacks \"%s\"", path,
                    name->valuestring);
            return -1;
        }
        cJSON_ArrayForEach(id, ids) {
            int32_t *arr = seen_sequence ? t->suffix_ids : t->prefix_ids;
            int *n = seen_sequence ? &t->n_suffix : &t->n_prefix;

            /* in range and assigned: encode must never emit an id that
             * decode calls unknown (found by fuzz_tokenizer_json) */
            if (!cJSON_IsNumber(id) || id->valueint < 0 || id->valueint >= t->vocab_size
                || t->key_len[id->valueint] < 0) {
                set_err(err, errlen, "%s: post_processor.special_tokens[\"%s\"] has a bad id",
                        path, name->valuestring);
                return -1;
            }
            if (*n >= TOK_MAX_TEMPLATE) {
                set_err(err, errlen, "%s: post_processor.single adds too many tokens", path);
                return -1;
            }
            arr[(*n)++] = id->valueint;
        }
    }
    return 0;
}

/* bos_token / eos_token: a string, {"content": ...} or null. */
static int32_t config_token_id(const tokenizer *t, const cJSON *cfg, const char *field)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, field);

    if (cJSON_IsObject(v)) {
        v = cJSON_GetObjectItemCaseSensitive(v, "content");
    }
    if (!cJSON_IsString(v)) {
        return -1;
    }
    return tok_lookup_key(t, v->valuestring, strlen(v->valuestring));
}

static int load_config(tokenizer *t, const char *json_path, char *err, size_t errlen)
{
    const char *slash = strrchr(json_path, '/');
    size_t dir_len = slash ? (size_t) (slash - json_path + 1) : 0;
    char *cfg_path = malloc(dir_len + sizeof("tokenizer_config.json"));
    FILE *probe;
    cJSON *cfg;

    t->bos_id = -1;
    t->eos_id = -1;
    if (cfg_path == NULL) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    memcpy(cfg_path, json_path, dir_len);
    strcpy(cfg_path + dir_len, "tokenizer_config.json");
    probe = fopen(cfg_path, "rb");
    if (probe == NULL) {
        free(cfg_path);
        return 0;           /* optional */
    }
    fclose(probe);
    cfg = parse_json(cfg_path, err, errlen);
    free(cfg_path);
    if (cfg == NULL) {
        return -1;
    }
    t->bos_id = config_token_id(t, cfg, "bos_token");
    t->eos_id = config_token_id(t, cfg, "eos_token");
    cJSON_Delete(cfg);
    return 0;
}


/*
 * Parses tokenizer.json.  With fast set, model.vocab and model.merges are
 * read by tokenizer_json.c into flat and cut out of what cJSON parses
 * (replaced by {} and []); when they cannot be found or read that way,
 * cJSON parses everything and flat stays empty.
 */
static cJSON *parse_tokenizer_json(const char *path, int fast, flat_model *flat,
                                   char *err, size_t errlen)
{
    size_t len = 0, ms = 0, vs = 0, ve = 0, gs = 0, ge = 0;
    char *text = read_file(path, &len, err, errlen);
    char why[256];
    cJSON *root = NULL;

    if (text == NULL) {
        return NULL;
    }
    if (fast
        && tjson_find_member(text, len, 0, "model", &ms, NULL) == 1
        && tjson_find_member(text, len, ms, "vocab", &vs, &ve) == 1
        && tjson_find_member(text, len, ms, "merges", &gs, &ge) == 1
        && (flat->n_vocab = tjson_parse_vocab(text, vs, ve, &flat->vocab,
                                              &flat->vocab_strings, why, sizeof(why))) >= 0
        && (flat->n_merges = tjson_parse_merges(text, gs, ge, &flat->merges,
                                                &flat->merge_strings, why, sizeof(why))) >= 0) {
        /* Blank out both members in place with a short empty value and
         * spaces: offsets stay the same, so error positions still point
         * into the file.  The flat arrays own copies of their strings. */
        size_t cut[2][2] = { { vs, ve }, { gs, ge } };

        for (int k = 0; k < 2; k++) {
            text[cut[k][0]] = k == 0 ? '{' : '[';
            text[cut[k][0] + 1] = k == 0 ? '}' : ']';
            memset(text + cut[k][0] + 2, ' ', cut[k][1] - cut[k][0] - 2);
        }
        root = parse_text(path, text, len, err, errlen);
        if (root == NULL) {
            flat_model_free(flat);
        }
        free(text);
        return root;
    }
    flat_model_free(flat);
    root = parse_text(path, text, len, err, errlen);
    free(text);
    return root;
}

static tokenizer *tokenizer_load_ex(const char *tokenizer_json_path, int fast,
                                    char *err, size_t errlen)
{
    const char *path = tokenizer_json_path;
    tokenizer *t = calloc(1, sizeof(*t));
    flat_model flat = { 0 };
    cJSON *root;
    int ok;

    if (t == NULL) {
        set_err(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    if (pthread_mutex_init(&t->thread_lock, NULL) != 0) {
        free(t);
        set_err(err, errlen, "%s: cannot create a mutex", path);
        return NULL;
    }
    if (pthread_key_create(&t->thread_key, tok_thread_destroy) != 0) {
        pthread_mutex_destroy(&t->thread_lock);
        free(t);
        set_err(err, errlen, "%s: no thread-local key left", path);
        return NULL;
    }
    t->thread_key_made = 1;
    root = parse_tokenizer_json(path, fast, &flat, err, errlen);
    if (root == NULL) {
        tokenizer_free(t);
        return NULL;
    }
    ok = load_model(t, path, root, &flat, err, errlen) == 0
         && load_normalizer(t, path, cJSON_GetObjectItemCaseSensitive(root, "normalizer"),
                            err, errlen) == 0
         && load_pre_tokenizer(t, path, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"),
                               err, errlen) == 0
         && load_decoder(path, cJSON_GetObjectItemCaseSensitive(root, "decoder"),
                         err, errlen) == 0
         && load_post_processor(t, path,
                                cJSON_GetObjectItemCaseSensitive(root, "post_processor"),
                                err, errlen) == 0;
    cJSON_Delete(root);
    flat_model_free(&flat);
    if (ok && (added_matcher_init(&t->added_raw, t->added, t->n_added, 0) != 0
               || added_matcher_init(&t->added_norm, t->added, t->n_added, 1) != 0)) {
        set_err(err, errlen, "%s: out of memory", path);
        ok = 0;
    }
    if (ok && load_config(t, path, err, errlen) != 0) {
        ok = 0;
    }
    if (!ok) {
        tokenizer_free(t);
        return NULL;
    }
    return t;
}

tokenizer *tokenizer_load(const char *tokenizer_json_path, char *err, size_t errlen)
{
    return tokenizer_load_ex(tokenizer_json_path, 1, err, errlen);
}

tokenizer *tokenizer_load_cjson_only(const char *tokenizer_json_path, char *err, size_t errlen)
{
    return tokenizer_load_ex(tokenizer_json_path, 0, err, errlen);
}

void tokenizer_free(tokenizer *t)
{
    if (t == NULL) {
        return;
    }
    if (t->thread_key_made) {
        /* After this no destructor runs; free every thread's state here. */
        pthread_key_delete(t->thread_key);
    }
    tok_threads_free(t);
    pthread_mutex_destroy(&t->thread_lock);
    for (int i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
    }
    free(t->added);
    added_matcher_free(&t->added_raw);
    added_matcher_free(&t->added_norm);
    bpe_merges_free(&t->bpe.merges);
    pretok_free(&t->pre);
    free(t->arena);
    free(t->key_off);
    free(t->key_len);
    free(t->bytes_off);
    free(t->bytes_len);
    free(t->special);
    free(t->hash_ids);
    free(t);
}
