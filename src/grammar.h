/*
 * Constrained decoding: a byte-level pushdown automaton for JSON values
 * restricted by a compiled schema (src/json_schema.c builds the nodes), and
 * the per-step token mask over the vocabulary.
 *
 * Grammar.  A grammar is an array of nodes.  A node
 * describes one syntactic thing (a JSON value of some shape, a raw literal,
 * a sequence, a choice by name); g->root is the whole output.  The automaton's state is a stack of
 * frames, one per node being matched, each with a small sub-state.  Every
 * byte either extends the top frame, pushes a child frame (a value starts;
 * which child is decided by the byte, so the automaton is deterministic),
 * or ends the top frame (a number ends on the byte after it, which then
 * goes to the parent).  Whitespace between JSON tokens is allowed inside
 * objects and arrays, at most GRAMMAR_MAX_WS bytes in a row, so a model
 * cannot spend its whole budget on blanks.
 *
 * Mask.  grammar_vocab holds the byte strings of all allowed tokens as a
 * trie in preorder (each node knows where its subtree ends), so the walk
 * from a state advances one byte per trie node and skips a whole subtree
 * at the first byte the automaton rejects.  Inside a JSON string almost
 * every token is allowed; the tokens that are "plain" string text (no
 * quote, backslash, control byte, only whole UTF-8 characters) are a
 * precomputed bit set, and only the other tokens are walked (a second,
 * much smaller trie).  Masks are cached per matcher by the full state.
 */
#ifndef LLM_GRAMMAR_H
#define LLM_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>

#define GRAMMAR_MAX_DEPTH   32    /* frames: nesting of values */
#define GRAMMAR_MAX_WS      24    /* consecutive whitespace bytes */
#define GRAMMAR_MAX_CHOICES 64    /* enum values, object properties */
#define GRAMMAR_MAX_DIGITS  16    /* integer / fraction digits of a number */

typedef enum {
    GN_ANY = 0,     /* any JSON value */
    GN_OBJECT,      /* properties / required / additional */
    GN_ARRAY,       /* items, min/max items */
    GN_STRING,      /* any JSON string */
    GN_NUMBER,      /* JSON number */
    GN_INTEGER,     /* JSON integer (no fraction, no exponent) */
    GN_ENUM,        /* one of some literal texts (enum, const, bool, null) */
    GN_UNION,       /* value of one of several nodes, chosen by first byte */
    GN_LITERAL,     /* raw bytes (not JSON: markup around a tool call) */
    GN_SEQ,         /* children one after the other */
    GN_SWITCH,      /* one of some literal texts, then the node of that one */
    GN_REPEAT       /* child, then (separator, child)* ; at least min_items */
} grammar_node_kind;

typedef struct {
    grammar_node_kind kind;
    /* GN_OBJECT: names as they appear between the quotes (JSON-escaped) */
    int          n_props;
    char       **prop_names;
    size_t      *prop_lens;
    int         *prop_nodes;
    uint64_t     required;        /* bit i: prop i required */
    int          additional;      /* node for other keys, -1: none */
    /* GN_ARRAY: items node, -1: any; GN_REPEAT: child */
    int          items;
    int          min_items, max_items;   /* max -1: unbounded */
    /* GN_ENUM, GN_SWITCH, GN_LITERAL (n_texts 1) */
    int          n_texts;
    char       **texts;
    size_t      *text_lens;
    int         *next_nodes;      /* GN_SWITCH: node after texts[i] */
    /* GN_UNION, GN_SEQ: children; GN_REPEAT: separator literal node */
    int          n_children;
    int         *children;
    int          separator;
} grammar_node;

typedef struct {
    grammar_node *nodes;
    int           n_nodes, cap;
    int           root;       /* the node the output must match */
} grammar;

/* Building (json_schema.c).  Each returns the new node's index or -1 when
 * out of memory; strings are copied. */
grammar *grammar_new(void);
void     grammar_free(grammar *g);
int      grammar_add(grammar *g, grammar_node_kind kind);
int      grammar_add_literal(grammar *g, const char *text, size_t len);
/* Appends a text to a GN_ENUM / GN_SWITCH node (next: GN_SWITCH's node). */
int      grammar_add_text(grammar *g, int node, const char *text, size_t len,
                          int next);
int      grammar_add_prop(grammar *g, int node, const char *name, size_t len,
                          int value_node, int required);
int      grammar_add_child(grammar *g, int node, int child);

/* ---- automaton ------------------------------------------------------- */

typedef struct {
    int32_t  node;
    uint16_t pos;        /* text position, property index, item count */
    uint8_t  sub;        /* sub-state of the node's lexer */
    uint8_t  type;       /* what the frame is matching (grammar.c) */
    uint64_t bits;       /* used properties / live candidates */
} grammar_frame;

typedef struct {
    int           depth;   /* frames in use; 0 and done: the value ended */
    int           done;    /* the root has been matched completely */
    int           ws;      /* whitespace bytes in a row */
    grammar_frame f[GRAMMAR_MAX_DEPTH];
} grammar_state;

void grammar_state_init(const grammar *g, grammar_state *s);
/* Advances by one byte.  Returns 0, or -1 (state unchanged) if the byte is
 * not allowed here. */
int  grammar_state_step(const grammar *g, grammar_state *s, uint8_t c);
int  grammar_state_feed(const grammar *g, grammar_state *s,
                        const void *bytes, size_t len);
/* May the output end here? */
int  grammar_state_accepting(const grammar *g, const grammar_state *s);
/* Nothing can follow (the value is complete and closed). */
int  grammar_state_terminal(const grammar_state *s);

/* ---- vocabulary and masks --------------------------------------------- */

typedef struct grammar_vocab grammar_vocab;

/* bytes_of(ctx, id, &len): the token's bytes, or NULL for a token that may
 * never appear in constrained output (special tokens, padding rows).
 * n_rows: logits per row (the embedding's rows, >= tokenizer vocab). */
typedef const char *(*grammar_token_bytes_fn)(void *ctx, int32_t id,
                                              size_t *len);
grammar_vocab *grammar_vocab_new(int n_rows, grammar_token_bytes_fn bytes_of,
                                 void *ctx, const int32_t *eos_ids, int n_eos);
void grammar_vocab_free(grammar_vocab *v);
int  grammar_vocab_rows(const grammar_vocab *v);

/* A request's matcher: the state plus a cache of masks by state. */
typedef struct grammar_matcher grammar_matcher;

grammar_matcher *grammar_matcher_new(const grammar *g, const grammar_vocab *v);
void grammar_matcher_free(grammar_matcher *m);
/* The mask of tokens allowed next: bit id of words[id / 64]; eos ids are
 * set when the state accepts.  Valid until the next call on m.  Returns
 * the number of allowed tokens (0: none, which the engine treats as an
 * error: a grammar that cannot continue). */
int  grammar_matcher_mask(grammar_matcher *m, const uint64_t **words);
/* Advances by a token; -1 if the token is not allowed (state unchanged).
 * An eos id is allowed only in an accepting state. */
int  grammar_matcher_accept(grammar_matcher *m, int32_t id);
/*
 * Tokens the request may still generate, this one included (max_tokens and
 * context left; -1: unknown, the default).  Near the end of the budget the
 * mask keeps only tokens after which the shortest completion of the output
 * (in bytes, so also a bound in tokens) still fits the tokens left, so the
 * output is closed and valid before the budget runs out, whatever the
 * model prefers.  Those masks are not cached.
 */
void grammar_matcher_set_budget(grammar_matcher *m, int tokens_left);
/* Bytes of the shortest completion from the current state. */
int  grammar_matcher_distance(const grammar_matcher *m);
/* Advances by raw bytes (tests; forced text); -1 if refused (unchanged). */
int  grammar_matcher_feed(grammar_matcher *m, const void *bytes, size_t len);
int  grammar_matcher_terminal(const grammar_matcher *m);
int  grammar_matcher_accepting(const grammar_matcher *m);
/* Masks computed / served from the cache (tools print them). */
void grammar_matcher_counts(const grammar_matcher *m, uint64_t *computed,
                            uint64_t *cached);

/* Masks logits in place: -inf where the mask bit is clear. */
void grammar_apply_mask(float *logits, int n, const uint64_t *words);

#endif
