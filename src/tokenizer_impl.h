/*
 * Private to the tokenizer's files: the loaded tokenizer's layout, shared
 * by tokenizer_load.c (which fills it from tokenizer.json) and
 * tokenizer.c (which encodes and decodes with it).
 */
#ifndef LLM_TOKENIZER_IMPL_H
#define LLM_TOKENIZER_IMPL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"
#include "tokenizer_added.h"
#include "tokenizer_bpe.h"
#include "tokenizer_pretok.h"

#define TOK_MAX_TEMPLATE 8      /* post-processor ids before / after */

/* What one thread needs to encode: regex match state and BPE scratch. */
typedef struct tok_thread {
    struct tok_thread *prev, *next;     /* the tokenizer's registry */
    tokenizer         *owner;
    pretok_thread      pt;
    bpe_scratch       *bpe;
} tok_thread;

struct tokenizer {
    /* Per id: the token string of tokenizer.json (byte-level form for
     * vocab entries, content for added tokens) and the raw bytes it
     * decodes to; offsets into arena, key_len < 0 for unused ids. */
    char      *arena;
    size_t     arena_len;
    size_t    *key_off;
    int32_t   *key_len;
    size_t    *bytes_off;
    int32_t   *bytes_len;
    uint8_t   *special;         /* per id: added token flagged special */
    int        vocab_size;
    size_t     max_token_bytes;

    /* token string -> id (added tokens shadow the vocab, as in HF).  A
     * slot keeps the string's hash next to the id, so probing past other
     * keys never touches the arena. */
    struct key_slot {
        uint32_t hash;
        int32_t  id;            /* -1: empty */
    }         *hash_ids;
    size_t     hash_mask;

    added_token  *added;
    int           n_added;
    added_matcher added_raw;
    added_matcher added_norm;

    bpe_model  bpe;
    int        ignore_merges;
    int        nfc;
    pretok     pre;

    int32_t    prefix_ids[TOK_MAX_TEMPLATE];
    int        n_prefix;
    int32_t    suffix_ids[TOK_MAX_TEMPLATE];
    int        n_suffix;

    int32_t    bos_id;
    int32_t    eos_id;

    pthread_key_t   thread_key;
    int             thread_key_made;
    pthread_mutex_t thread_lock;
    tok_thread     *threads;
};

/* Id of a token string (vocab key or added content), or -1. */
int32_t tok_lookup_key(const tokenizer *t, const char *s, size_t n);

/* Destructor of a thread's state (the pthread key's), and the freeing of
 * every thread's state when the tokenizer goes (tokenizer.c). */
void tok_thread_destroy(void *p);
void tok_threads_free(tokenizer *t);

#endif
