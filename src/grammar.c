/*
 * Byte-level pushdown automaton for schema-constrained JSON, and token
 * masks over the vocabulary (see grammar.h for the design).
 */
#include "grammar.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- building ------------------------------------------------------------ */

grammar *grammar_new(void)
{
    return calloc(1, sizeof(grammar));
}

void grammar_free(grammar *g)
{
    int i, j;

    if (g == NULL) {
        return;
    }
    for (i = 0; i < g->n_nodes; i++) {
        grammar_node *n = &g->nodes[i];

        for (j = 0; j < n->n_props; j++) {
            free(n->prop_names[j]);
        }
        for (j = 0; j < n->n_texts; j++) {
            free(n->texts[j]);
        }
        free(n->prop_names);
        free(n->prop_lens);
        free(n->prop_nodes);
        free(n->texts);
        free(n->text_lens);
        free(n->next_nodes);
        free(n->children);
    }
    free(g->nodes);
    free(g);
}

int grammar_add(grammar *g, grammar_node_kind kind)
{
    grammar_node *n;

    if (g->n_nodes == g->cap) {
        int cap = g->cap ? g->cap * 2 : 16;
        grammar_node *nn = realloc(g->nodes, (size_t) cap * sizeof(*nn));

        if (nn == NULL) {
            return -1;
        }
        g->nodes = nn;
        g->cap = cap;
    }
    n = &g->nodes[g->n_nodes];
    memset(n, 0, sizeof(*n));
    n->kind = kind;
    n->additional = -1;
    n->items = -1;
    n->max_items = -1;
    n->separator = -1;
    return g->n_nodes++;
}

static char *dup_bytes(const char *s, size_t len)
{
    char *p = malloc(len + 1);

    if (p != NULL) {
        memcpy(p, s, len);
        p[len] = '\0';
    }
    return p;
}

int grammar_add_text(grammar *g, int node, const char *text, size_t len,
                     int next)
{
    grammar_node *n = &g->nodes[node];
    int k = n->n_texts;
    char **t;
    size_t *l;
    int *nx;

    if (k >= GRAMMAR_MAX_CHOICES || len == 0 || len > 0xFFFF) {
        return -1;
    }
    t = realloc(n->texts, (size_t) (k + 1) * sizeof(*t));
    if (t == NULL) {
        return -1;
    }
    n->texts = t;
    l = realloc(n->text_lens, (size_t) (k + 1) * sizeof(*l));
    if (l == NULL) {
        return -1;
    }
    n->text_lens = l;
    nx = realloc(n->next_nodes, (size_t) (k + 1) * sizeof(*nx));
    if (nx == NULL) {
        return -1;
    }
    n->next_nodes = nx;
    if ((n->texts[k] = dup_bytes(text, len)) == NULL) {
        return -1;
    }
    n->text_lens[k] = len;
    n->next_nodes[k] = next;
    n->n_texts = k + 1;
    return node;
}

int grammar_add_literal(grammar *g, const char *text, size_t len)
{
    int node = grammar_add(g, GN_LITERAL);

    if (node < 0 || grammar_add_text(g, node, text, len, -1) < 0) {
        return -1;
    }
    return node;
}

int grammar_add_prop(grammar *g, int node, const char *name, size_t len,
                     int value_node, int required)
{
    grammar_node *n = &g->nodes[node];
    int k = n->n_props;
    char **pn;
    size_t *pl;
    int *pv;

    if (k >= GRAMMAR_MAX_CHOICES || len > 0xFFFE) {
        return -1;
    }
    pn = realloc(n->prop_names, (size_t) (k + 1) * sizeof(*pn));
    if (pn == NULL) {
        return -1;
    }
    n->prop_names = pn;
    pl = realloc(n->prop_lens, (size_t) (k + 1) * sizeof(*pl));
    if (pl == NULL) {
        return -1;
    }
    n->prop_lens = pl;
    pv = realloc(n->prop_nodes, (size_t) (k + 1) * sizeof(*pv));
    if (pv == NULL) {
        return -1;
    }
    n->prop_nodes = pv;
    if ((n->prop_names[k] = dup_bytes(name, len)) == NULL) {
        return -1;
    }
    n->prop_lens[k] = len;
    n->prop_nodes[k] = value_node;
    if (required) {
        n->required |= (uint64_t) 1 << k;
    }
    n->n_props = k + 1;
    return node;
}

int grammar_add_child(grammar *g, int node, int child)
{
    grammar_node *n = &g->nodes[node];
    int *c = realloc(n->children, (size_t) (n->n_children + 1) * sizeof(*c));

    if (c == NULL) {
        return -1;
    }
    n->children = c;
    n->children[n->n_children++] = child;
    return node;
}

/* ---- the automaton ----------------------------------------------------- */

/* Frame types. */
enum {
    FT_VALUE = 0,   /* a node not started yet: its first byte decides */
    FT_OBJ,         /* inside { } */
    FT_KEY,         /* a property name of a known set */
    FT_KEYFREE,     /* a property name, any string allowed */
    FT_ARR,         /* inside [ ] */
    FT_STR,         /* inside a string */
    FT_NUM,         /* a number */
    FT_TEXTS,       /* one of a node's texts (enum, literal, switch) */
    FT_WORD,        /* true / false / null of an "any" value */
    FT_SEQ,
    FT_REPEAT
};

/* Object sub-states. */
enum { OBJ_START, OBJ_KEY, OBJ_COLON, OBJ_VALUE, OBJ_AFTER };
/* Array sub-states. */
enum { ARR_START, ARR_AFTER, ARR_ITEM };
/* Number sub-states; the ones marked "end" may end the number. */
enum {
    NS_MINUS,   /* after '-' */
    NS_ZERO,    /* end: a leading 0 */
    NS_INT,     /* end */
    NS_DOT,
    NS_FRAC,    /* end */
    NS_E,
    NS_ESIGN,
    NS_EXP      /* end */
};

#define PROP_OTHER 0xFFFF   /* the frame's value is an additional property */
#define MAX_EXP_DIGITS 3

/* Outcome of one frame's step. */
enum { R_REJECT = -1, R_CONSUMED = 0, R_WS, R_REFEED };

static const char *const words_text[3] = { "true", "false", "null" };
static const uint8_t words_len[3] = { 4, 5, 4 };

static int is_ws(uint8_t c)
{
    return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

static int is_digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}

static int is_hex(uint8_t c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Inside a JSON string: sub 0 plain text, 1 after a backslash, 2-5 \u hex
 * digits, 6-8 continuation bytes left (1-3), 9-12 the constrained second
 * byte of E0 / ED / F0 / F4 sequences (no overlongs, no surrogates, no
 * code points past U+10FFFF).  Returns -1 reject, 0 consumed, 1 the
 * closing quote. */
static int string_step(uint8_t *sub, uint8_t c)
{
    switch (*sub) {
    case 0:
        if (c == '"') {
            return 1;
        }
        if (c == '\\') {
            *sub = 1;
        } else if (c < 0x20) {
            return -1;
        } else if (c < 0x80) {
            /* plain */
        } else if (c >= 0xC2 && c <= 0xDF) {
            *sub = 6;
        } else if (c == 0xE0) {
            *sub = 9;
        } else if (c == 0xED) {
            *sub = 10;
        } else if (c >= 0xE1 && c <= 0xEF) {
            *sub = 7;
        } else if (c == 0xF0) {
            *sub = 11;
        } else if (c >= 0xF1 && c <= 0xF3) {
            *sub = 8;
        } else if (c == 0xF4) {
            *sub = 12;
        } else {
            return -1;
        }
        return 0;
    case 1:
        if (c == 'u') {
            *sub = 2;
            return 0;
        }
        if (strchr("\"\\/bfnrt", c) == NULL || c == '\0') {
            return -1;
        }
        *sub = 0;
        return 0;
    case 2: case 3: case 4: case 5:
        if (!is_hex(c)) {
            return -1;
        }
        *sub = *sub == 5 ? 0 : *sub + 1;
        return 0;
    case 6: case 7: case 8:
        if (c < 0x80 || c > 0xBF) {
            return -1;
        }
        *sub = *sub == 6 ? 0 : *sub - 1;
        return 0;
    case 9:
        if (c < 0xA0 || c > 0xBF) {
            return -1;
        }
        *sub = 6;
        return 0;
    case 10:
        if (c < 0x80 || c > 0x9F) {
            return -1;
        }
        *sub = 6;
        return 0;
    case 11:
        if (c < 0x90 || c > 0xBF) {
            return -1;
        }
        *sub = 7;
        return 0;
    case 12:
        if (c < 0x80 || c > 0x8F) {
            return -1;
        }
        *sub = 7;
        return 0;
    }
    return -1;
}

static grammar_frame *push(grammar_state *s, int node, int type)
{
    grammar_frame *f;

    if (s->depth >= GRAMMAR_MAX_DEPTH) {
        return NULL;
    }
    f = &s->f[s->depth++];
    memset(f, 0, sizeof(*f));
    f->node = node;
    f->type = (uint8_t) type;
    return f;
}

static void pop(grammar_state *s)
{
    s->depth--;
    if (s->depth == 0) {
        s->done = 1;
    }
}

static uint64_t all_texts(const grammar_node *n)
{
    return n->n_texts >= 64 ? ~(uint64_t) 0
                            : (((uint64_t) 1 << n->n_texts) - 1);
}

static uint64_t all_props(const grammar_node *n)
{
    return n->n_props >= 64 ? ~(uint64_t) 0
                            : (((uint64_t) 1 << n->n_props) - 1);
}

/* Could a value of node start with byte c?  (GN_UNION's choice.) */
static int value_starts_depth(const grammar *g, int node, uint8_t c,
                              int depth)
{
    const grammar_node *n = &g->nodes[node];
    int i;

    if (depth > GRAMMAR_MAX_DEPTH) {
        return 0;      /* a union that contains itself */
    }
    switch (n->kind) {
    case GN_ANY:
        return c == '{' || c == '[' || c == '"' || c == '-' || is_digit(c)
               || c == 't' || c == 'f' || c == 'n';
    case GN_OBJECT:  return c == '{';
    case GN_ARRAY:   return c == '[';
    case GN_STRING:  return c == '"';
    case GN_NUMBER:
    case GN_INTEGER: return c == '-' || is_digit(c);
    case GN_ENUM:
    case GN_LITERAL:
    case GN_SWITCH:
        for (i = 0; i < n->n_texts; i++) {
            if ((uint8_t) n->texts[i][0] == c) {
                return 1;
            }
        }
        return 0;
    case GN_UNION:
        for (i = 0; i < n->n_children; i++) {
            if (value_starts_depth(g, n->children[i], c, depth + 1)) {
                return 1;
            }
        }
        return 0;
    case GN_SEQ:
        return n->n_children > 0
               && value_starts_depth(g, n->children[0], c, depth + 1);
    case GN_REPEAT:
        return value_starts_depth(g, n->items, c, depth + 1);
    }
    return 0;
}

static int value_starts(const grammar *g, int node, uint8_t c)
{
    return value_starts_depth(g, node, c, 0);
}

/* The value node of an object frame's current property. */
static int obj_value_node(const grammar *g, const grammar_frame *f)
{
    const grammar_node *n = &g->nodes[f->node];

    if (n->kind == GN_ANY) {
        return f->node;
    }
    return f->pos == PROP_OTHER ? n->additional : n->prop_nodes[f->pos];
}

/* May another key follow in this object? */
static int obj_more_keys(const grammar *g, const grammar_frame *f)
{
    const grammar_node *n = &g->nodes[f->node];

    return n->kind == GN_ANY || n->additional >= 0
           || (all_props(n) & ~f->bits) != 0;
}

static int obj_may_close(const grammar *g, const grammar_frame *f)
{
    const grammar_node *n = &g->nodes[f->node];

    return n->kind == GN_ANY || (n->required & ~f->bits) == 0;
}

static int arr_items_node(const grammar *g, const grammar_frame *f)
{
    const grammar_node *n = &g->nodes[f->node];

    return n->kind == GN_ANY ? f->node : n->items;
}

/* Keeps array item counts small in the state (they matter only up to the
 * limits), so masks of equal states are shared. */
static uint16_t arr_count_cap(const grammar_node *n)
{
    int cap;

    if (n->kind == GN_ANY) {
        return 1;
    }
    cap = n->max_items >= 0 ? n->max_items : n->min_items;
    if (cap < 0) {
        cap = 0;
    }
    if (cap > 0xFFFE) {
        cap = 0xFFFE;
    }
    return (uint16_t) (cap + 1);
}

static int texts_complete(const grammar_node *n, const grammar_frame *f,
                          int *which)
{
    int i;

    for (i = 0; i < n->n_texts; i++) {
        if ((f->bits >> i & 1) && n->text_lens[i] == f->pos) {
            *which = i;
            return 1;
        }
    }
    return 0;
}

static int texts_extendable(const grammar_node *n, const grammar_frame *f)
{
    int i;

    for (i = 0; i < n->n_texts; i++) {
        if ((f->bits >> i & 1) && n->text_lens[i] > f->pos) {
            return 1;
        }
    }
    return 0;
}

/* A FT_TEXTS frame matched texts[which] completely: a switch goes on with
 * that text's node (replacing the frame), anything else ends. */
static int texts_finish(const grammar *g, grammar_state *s, int which)
{
    grammar_frame *f = &s->f[s->depth - 1];
    const grammar_node *n = &g->nodes[f->node];

    if (n->kind == GN_SWITCH && n->next_nodes[which] >= 0) {
        int next = n->next_nodes[which];

        memset(f, 0, sizeof(*f));
        f->node = next;
        f->type = FT_VALUE;
        return 0;
    }
    pop(s);
    return 0;
}

static int value_step(const grammar *g, grammar_state *s, grammar_frame *f,
                      uint8_t c)
{
    const grammar_node *n = &g->nodes[f->node];
    int i;

    switch (n->kind) {
    case GN_ANY:
    case GN_OBJECT:
    case GN_ARRAY:
    case GN_STRING:
    case GN_NUMBER:
    case GN_INTEGER:
        if (c == '{' && (n->kind == GN_ANY || n->kind == GN_OBJECT)) {
            f->type = FT_OBJ;
            f->sub = OBJ_START;
            f->bits = 0;
            return R_CONSUMED;
        }
        if (c == '[' && (n->kind == GN_ANY || n->kind == GN_ARRAY)) {
            f->type = FT_ARR;
            f->sub = ARR_START;
            f->pos = 0;
            return R_CONSUMED;
        }
        if (c == '"' && (n->kind == GN_ANY || n->kind == GN_STRING)) {
            f->type = FT_STR;
            f->sub = 0;
            return R_CONSUMED;
        }
        if ((c == '-' || is_digit(c))
            && (n->kind == GN_ANY || n->kind == GN_NUMBER
                || n->kind == GN_INTEGER))
        {
            f->type = FT_NUM;
            f->sub = c == '-' ? NS_MINUS : c == '0' ? NS_ZERO : NS_INT;
            f->pos = c == '-' || c == '0' ? 0 : 1;
            return R_CONSUMED;
        }
        if (n->kind == GN_ANY) {
            for (i = 0; i < 3; i++) {
                if (c == (uint8_t) words_text[i][0]) {
                    f->type = FT_WORD;
                    f->sub = (uint8_t) i;
                    f->pos = 1;
                    return R_CONSUMED;
                }
            }
        }
        return R_REJECT;
    case GN_ENUM:
    case GN_LITERAL:
    case GN_SWITCH:
        f->type = FT_TEXTS;
        f->bits = all_texts(n);
        f->pos = 0;
        return R_REFEED;
    case GN_UNION:
        for (i = 0; i < n->n_children; i++) {
            if (value_starts(g, n->children[i], c)) {
                f->node = n->children[i];
                return R_REFEED;
            }
        }
        return R_REJECT;
    case GN_SEQ:
        f->type = FT_SEQ;
        f->pos = 0;
        return R_REFEED;
    case GN_REPEAT:
        f->type = FT_REPEAT;
        f->sub = 0;
        f->pos = 0;
        return R_REFEED;
    }
    (void) s;
    return R_REJECT;
}

static int frame_step(const grammar *g, grammar_state *s, uint8_t c)
{
    grammar_frame *f = &s->f[s->depth - 1];
    const grammar_node *n = &g->nodes[f->node];
    int r, which, i;

    switch (f->type) {
    case FT_VALUE:
        return value_step(g, s, f, c);

    case FT_OBJ:
        if (is_ws(c)) {
            return R_WS;
        }
        switch (f->sub) {
        case OBJ_START:
        case OBJ_KEY:
            if (c == '}' && f->sub == OBJ_START && obj_may_close(g, f)) {
                pop(s);
                return R_CONSUMED;
            }
            if (c == '"' && obj_more_keys(g, f)) {
                int free_keys = n->kind == GN_ANY || n->additional >= 0;
                grammar_frame *k;

                f->sub = OBJ_COLON;
                if ((k = push(s, f->node, free_keys ? FT_KEYFREE : FT_KEY))
                    == NULL)
                {
                    return R_REJECT;
                }
                k->bits = n->kind == GN_ANY ? 0 : all_props(n) & ~f->bits;
                return R_CONSUMED;
            }
            return R_REJECT;
        case OBJ_COLON:
            if (c == ':') {
                f->sub = OBJ_VALUE;
                return R_CONSUMED;
            }
            return R_REJECT;
        case OBJ_VALUE:
            f->sub = OBJ_AFTER;
            if (push(s, obj_value_node(g, f), FT_VALUE) == NULL) {
                return R_REJECT;
            }
            return R_REFEED;
        case OBJ_AFTER:
            if (c == ',' && obj_more_keys(g, f)) {
                f->sub = OBJ_KEY;
                return R_CONSUMED;
            }
            if (c == '}' && obj_may_close(g, f)) {
                pop(s);
                return R_CONSUMED;
            }
            return R_REJECT;
        }
        return R_REJECT;

    case FT_KEY:
    case FT_KEYFREE: {
        /* f->node is the object's node; the object frame is below. */
        grammar_frame *obj = &s->f[s->depth - 2];
        uint8_t sub = f->sub;

        r = string_step(&sub, c);
        if (r < 0) {
            return R_REJECT;
        }
        if (r == 1) {
            for (i = 0; i < n->n_props; i++) {
                if ((f->bits >> i & 1) && n->prop_lens[i] == f->pos) {
                    break;
                }
            }
            if (i < n->n_props) {
                obj->pos = (uint16_t) i;
                obj->bits |= (uint64_t) 1 << i;
            } else if (f->type == FT_KEYFREE) {
                obj->pos = PROP_OTHER;
            } else {
                return R_REJECT;
            }
            s->depth--;
            return R_CONSUMED;
        }
        f->sub = sub;
        if (f->bits != 0) {
            uint64_t live = 0;

            for (i = 0; i < n->n_props; i++) {
                if ((f->bits >> i & 1) && n->prop_lens[i] > f->pos
                    && (uint8_t) n->prop_names[i][f->pos] == c)
                {
                    live |= (uint64_t) 1 << i;
                }
            }
            f->bits = live;
        }
        if (f->bits == 0 && f->type == FT_KEY) {
            return R_REJECT;
        }
        /* Positions matter only while some known name is still possible. */
        f->pos = f->bits != 0 ? (uint16_t) (f->pos + 1) : 0;
        return R_CONSUMED;
    }

    case FT_ARR:
        if (is_ws(c)) {
            return R_WS;
        }
        switch (f->sub) {
        case ARR_START:
        case ARR_ITEM:
            if (c == ']' && f->sub == ARR_START
                && (n->kind == GN_ANY || n->min_items <= 0))
            {
                pop(s);
                return R_CONSUMED;
            }
            if (n->kind != GN_ANY && n->max_items == 0) {
                return R_REJECT;
            }
            if (f->pos < arr_count_cap(n)) {
                f->pos++;
            }
            f->sub = ARR_AFTER;
            if (push(s, arr_items_node(g, f), FT_VALUE) == NULL) {
                return R_REJECT;
            }
            return R_REFEED;
        case ARR_AFTER:
            if (c == ',' && (n->kind == GN_ANY || n->max_items < 0
                             || f->pos < n->max_items))
            {
                f->sub = ARR_ITEM;
                return R_CONSUMED;
            }
            if (c == ']' && (n->kind == GN_ANY || f->pos >= n->min_items)) {
                pop(s);
                return R_CONSUMED;
            }
            return R_REJECT;
        }
        return R_REJECT;

    case FT_STR:
        r = string_step(&f->sub, c);
        if (r < 0) {
            return R_REJECT;
        }
        if (r == 1) {
            pop(s);
        }
        return R_CONSUMED;

    case FT_NUM: {
        int integer = n->kind == GN_INTEGER;

        switch (f->sub) {
        case NS_MINUS:
            if (!is_digit(c)) {
                return R_REJECT;
            }
            f->sub = c == '0' ? NS_ZERO : NS_INT;
            f->pos = c == '0' ? 0 : 1;
            return R_CONSUMED;
        case NS_ZERO:
        case NS_INT:
            if (is_digit(c) && f->sub == NS_INT) {
                if (f->pos >= GRAMMAR_MAX_DIGITS) {
                    return R_REJECT;
                }
                f->pos++;
                return R_CONSUMED;
            }
            if (is_digit(c)) {
                return R_REJECT;          /* no leading zeros */
            }
            if (!integer && c == '.') {
                f->sub = NS_DOT;
                f->pos = 0;
                return R_CONSUMED;
            }
            if (!integer && (c == 'e' || c == 'E')) {
                f->sub = NS_E;
                f->pos = 0;
                return R_CONSUMED;
            }
            break;
        case NS_DOT:
        case NS_FRAC:
            if (is_digit(c)) {
                if (f->pos >= GRAMMAR_MAX_DIGITS) {
                    return R_REJECT;
                }
                f->sub = NS_FRAC;
                f->pos++;
                return R_CONSUMED;
            }
            if (f->sub == NS_DOT) {
                return R_REJECT;
            }
            if (c == 'e' || c == 'E') {
                f->sub = NS_E;
                f->pos = 0;
                return R_CONSUMED;
            }
            break;
        case NS_E:
            if (c == '+' || c == '-') {
                f->sub = NS_ESIGN;
                return R_CONSUMED;
            }
            /* fall through */
        case NS_ESIGN:
        case NS_EXP:
            if (is_digit(c)) {
                if (f->pos >= MAX_EXP_DIGITS) {
                    return R_REJECT;
                }
                f->sub = NS_EXP;
                f->pos++;
                return R_CONSUMED;
            }
            if (f->sub != NS_EXP) {
                return R_REJECT;
            }
            break;
        }
        /* The number ended before c: c belongs to the parent. */
        pop(s);
        return R_REFEED;
    }

    case FT_TEXTS: {
        uint64_t live = 0;

        for (i = 0; i < n->n_texts; i++) {
            if ((f->bits >> i & 1) && n->text_lens[i] > f->pos
                && (uint8_t) n->texts[i][f->pos] == c)
            {
                live |= (uint64_t) 1 << i;
            }
        }
        if (live == 0) {
            /* A complete shorter text ends here and c goes on (enum
             * [1, 12] after "1" and then ","). */
            if (texts_complete(n, f, &which) && n->kind != GN_SWITCH) {
                texts_finish(g, s, which);
                return R_REFEED;
            }
            return R_REJECT;
        }
        f->bits = live;
        f->pos++;
        if (!texts_extendable(n, f) && texts_complete(n, f, &which)) {
            texts_finish(g, s, which);
        }
        return R_CONSUMED;
    }

    case FT_WORD:
        if (f->pos < words_len[f->sub]
            && (uint8_t) words_text[f->sub][f->pos] == c)
        {
            f->pos++;
            if (f->pos == words_len[f->sub]) {
                pop(s);
            }
            return R_CONSUMED;
        }
        return R_REJECT;

    case FT_SEQ:
        if (f->pos >= n->n_children) {
            pop(s);
            return R_REFEED;
        }
        i = n->children[f->pos++];
        if (push(s, i, FT_VALUE) == NULL) {
            return R_REJECT;
        }
        return R_REFEED;

    case FT_REPEAT:
        if (f->sub == 1) {
            /* After an item: a separator (and then another item). */
            if ((n->max_items >= 0 && f->pos >= n->max_items)
                || n->separator < 0)
            {
                pop(s);
                return R_REFEED;
            }
            if (!value_starts(g, n->separator, c)) {
                pop(s);
                return R_REFEED;
            }
            f->sub = 2;
            if (push(s, n->separator, FT_VALUE) == NULL) {
                return R_REJECT;
            }
            return R_REFEED;
        }
        if (f->pos < 0xFFFF) {
            f->pos++;
        }
        f->sub = 1;
        if (push(s, n->items, FT_VALUE) == NULL) {
            return R_REJECT;
        }
        return R_REFEED;
    }
    return R_REJECT;
}

void grammar_state_init(const grammar *g, grammar_state *s)
{
    memset(s, 0, sizeof(*s));
    s->depth = 1;
    s->f[0].node = g->root;
    s->f[0].type = FT_VALUE;
}

/* In place; on -1 the state is garbage (callers step a copy). */
static int step_in_place(const grammar *g, grammar_state *s, uint8_t c)
{
    int guard;

    for (guard = 0; guard < 4 * GRAMMAR_MAX_DEPTH + 8; guard++) {
        int r;

        if (s->depth == 0) {
            return -1;
        }
        r = frame_step(g, s, c);
        if (r == R_REJECT) {
            return -1;
        }
        if (r == R_WS) {
            if (s->ws >= GRAMMAR_MAX_WS) {
                return -1;
            }
            s->ws++;
            return 0;
        }
        if (r == R_CONSUMED) {
            s->ws = 0;
            /* A sequence whose last part just ended, or a repetition at
             * its maximum, is over: pop it now, so that the end of a tool
             * call is terminal at once. */
            while (s->depth > 0) {
                const grammar_frame *t = &s->f[s->depth - 1];
                const grammar_node *tn = &g->nodes[t->node];

                if ((t->type == FT_SEQ && t->pos >= tn->n_children)
                    || (t->type == FT_REPEAT && t->sub == 1
                        && tn->max_items >= 0 && t->pos >= tn->max_items))
                {
                    pop(s);
                } else {
                    break;
                }
            }
            return 0;
        }
    }
    return -1;
}

static void state_copy(grammar_state *dst, const grammar_state *src)
{
    dst->depth = src->depth;
    dst->done = src->done;
    dst->ws = src->ws;
    memcpy(dst->f, src->f, (size_t) src->depth * sizeof(grammar_frame));
}

int grammar_state_step(const grammar *g, grammar_state *s, uint8_t c)
{
    grammar_state t;

    state_copy(&t, s);
    if (step_in_place(g, &t, c) != 0) {
        return -1;
    }
    state_copy(s, &t);
    return 0;
}

int grammar_state_feed(const grammar *g, grammar_state *s, const void *bytes,
                       size_t len)
{
    grammar_state t;
    const uint8_t *b = bytes;
    size_t i;

    state_copy(&t, s);
    for (i = 0; i < len; i++) {
        if (step_in_place(g, &t, b[i]) != 0) {
            return -1;
        }
    }
    state_copy(s, &t);
    return 0;
}

static int frame_can_end(const grammar *g, const grammar_frame *f)
{
    const grammar_node *n = &g->nodes[f->node];
    int which;

    switch (f->type) {
    case FT_NUM:
        return f->sub == NS_ZERO || f->sub == NS_INT || f->sub == NS_FRAC
               || f->sub == NS_EXP;
    case FT_TEXTS:
        return n->kind != GN_SWITCH && texts_complete(n, f, &which);
    case FT_SEQ:
        return f->pos >= n->n_children;
    case FT_REPEAT:
        return f->sub == 1 && f->pos >= n->min_items;
    default:
        return 0;
    }
}

int grammar_state_accepting(const grammar *g, const grammar_state *s)
{
    int i;

    if (s->depth == 0) {
        return s->done;
    }
    for (i = s->depth - 1; i >= 0; i--) {
        if (!frame_can_end(g, &s->f[i])) {
            return 0;
        }
    }
    return 1;
}

int grammar_state_terminal(const grammar_state *s)
{
    return s->depth == 0 && s->done;
}


/* ---- shortest completion ------------------------------------------------ */

/*
 * How many bytes at least finish the output from a state.  Near the end of
 * a request's token budget the matcher allows only tokens that bring this
 * down, so a model that would ramble (a random one writes strings forever)
 * still closes every value in time: each such token removes at least one
 * byte of the shortest completion, and single-byte tokens exist for every
 * byte.
 */
#define DIST_INF (1 << 28)

static int sat_add(int a, int b)
{
    int s = a + b;

    return s > DIST_INF ? DIST_INF : s;
}

static int sat_mul(int a, int k)
{
    return k <= 0 ? 0 : (a >= DIST_INF / (k + 1) ? DIST_INF : a * k);
}

/* Bytes of one more property: "name":value */
static int prop_cost(const grammar_node *n, const int *ml, int i)
{
    return sat_add((int) n->prop_lens[i] + 3, ml[n->prop_nodes[i]]);
}

/* Required properties not yet in used, each with a comma before it when
 * lead_comma, else commas between them only; plus the closing brace. */
static int obj_rest(const grammar_node *n, const int *ml, uint64_t used,
                    int lead_comma)
{
    int i, k = 0, cost = 1;

    if (n->kind == GN_ANY) {
        return 1;
    }
    for (i = 0; i < n->n_props; i++) {
        if ((n->required >> i & 1) && !(used >> i & 1)) {
            cost = sat_add(cost, prop_cost(n, ml, i));
            k++;
        }
    }
    return sat_add(cost, lead_comma ? k : (k > 0 ? k - 1 : 0));
}

/* Minimal byte length of a value of each node (fixpoint: nodes refer to
 * each other, recursively through $ref). */
static int *min_lengths(const grammar *g)
{
    int *ml = malloc((size_t) (g->n_nodes ? g->n_nodes : 1) * sizeof(int));
    int i, j, changed, iter;

    if (ml == NULL) {
        return NULL;
    }
    for (i = 0; i < g->n_nodes; i++) {
        ml[i] = DIST_INF;
    }
    for (iter = 0, changed = 1; changed && iter < 4 * g->n_nodes + 8; iter++) {
        changed = 0;
        for (i = 0; i < g->n_nodes; i++) {
            const grammar_node *n = &g->nodes[i];
            int v = DIST_INF;

            switch (n->kind) {
            case GN_ANY:     v = 1; break;
            case GN_STRING:  v = 2; break;
            case GN_NUMBER:
            case GN_INTEGER: v = 1; break;
            case GN_OBJECT:  v = sat_add(1, obj_rest(n, ml, 0, 0)); break;
            case GN_ARRAY:
                v = sat_add(2, sat_add(sat_mul(ml[n->items], n->min_items),
                                       n->min_items > 0 ? n->min_items - 1
                                                        : 0));
                break;
            case GN_ENUM:
            case GN_LITERAL:
                for (j = 0; j < n->n_texts; j++) {
                    if ((int) n->text_lens[j] < v) {
                        v = (int) n->text_lens[j];
                    }
                }
                break;
            case GN_SWITCH:
                for (j = 0; j < n->n_texts; j++) {
                    int c = n->next_nodes[j] >= 0
                            ? sat_add((int) n->text_lens[j],
                                      ml[n->next_nodes[j]])
                            : (int) n->text_lens[j];
                    if (c < v) {
                        v = c;
                    }
                }
                break;
            case GN_UNION:
                for (j = 0; j < n->n_children; j++) {
                    if (ml[n->children[j]] < v) {
                        v = ml[n->children[j]];
                    }
                }
                break;
            case GN_SEQ:
                v = 0;
                for (j = 0; j < n->n_children; j++) {
                    v = sat_add(v, ml[n->children[j]]);
                }
                break;
            case GN_REPEAT:
                v = sat_add(sat_mul(ml[n->items], n->min_items),
                            sat_mul(ml[n->separator >= 0 ? n->separator
                                                         : n->items],
                                    n->min_items - 1));
                break;
            }
            if (v < ml[i]) {
                ml[i] = v;
                changed = 1;
            }
        }
    }
    return ml;
}

static int string_close_cost(uint8_t sub)
{
    static const int cost[13] = { 1, 2, 5, 4, 3, 2, 2, 3, 4, 3, 3, 4, 4 };

    return sub < 13 ? cost[sub] : DIST_INF;
}

static int arr_items_cost(const int *ml, int item,
                          int k, int lead_comma)
{
    int cost = sat_mul(ml[item], k);

    return sat_add(cost, lead_comma ? k : (k > 0 ? k - 1 : 0));
}

static int grammar_distance(const grammar *g, const int *ml,
                            const grammar_state *s)
{
    int i, d = 0;

    if (s->depth == 0) {
        return s->done ? 0 : DIST_INF;
    }
    for (i = s->depth - 1; i >= 0; i--) {
        const grammar_frame *f = &s->f[i];
        const grammar_node *n = &g->nodes[f->node];
        int c = 0, j, k;

        switch (f->type) {
        case FT_VALUE:
            c = ml[f->node];
            break;
        case FT_STR:
            c = string_close_cost(f->sub);
            break;
        case FT_NUM:
            c = (f->sub == NS_MINUS || f->sub == NS_DOT || f->sub == NS_E
                 || f->sub == NS_ESIGN) ? 1 : 0;
            break;
        case FT_WORD:
            c = words_len[f->sub] - f->pos;
            break;
        case FT_TEXTS:
            c = DIST_INF;
            for (j = 0; j < n->n_texts; j++) {
                int t;

                if (!(f->bits >> j & 1) || n->text_lens[j] < f->pos) {
                    continue;
                }
                t = (int) n->text_lens[j] - f->pos;
                if (n->kind == GN_SWITCH && n->next_nodes[j] >= 0) {
                    t = sat_add(t, ml[n->next_nodes[j]]);
                }
                if (t < c) {
                    c = t;
                }
            }
            break;
        case FT_KEY:
        case FT_KEYFREE: {
            /* The key, its colon and value, and what the object (the
             * frame below, skipped) still needs after it. */
            const grammar_frame *obj = &s->f[i - 1];

            c = DIST_INF;
            for (j = 0; j < n->n_props; j++) {
                int t;

                if (!(f->bits >> j & 1) || (int) n->prop_lens[j] < f->pos) {
                    continue;
                }
                t = sat_add((int) n->prop_lens[j] - f->pos + 2,
                            ml[n->prop_nodes[j]]);
                t = sat_add(t, obj_rest(n, ml, obj->bits | (uint64_t) 1 << j,
                                        1));
                if (t < c) {
                    c = t;
                }
            }
            if (f->type == FT_KEYFREE) {
                int other = n->kind == GN_ANY ? f->node : n->additional;
                int t = sat_add(string_close_cost(f->sub) + 1, ml[other]);

                t = sat_add(t, obj_rest(n, ml, obj->bits, 1));
                if (t < c) {
                    c = t;
                }
            }
            i--;      /* the object frame is counted */
            break;
        }
        case FT_OBJ:
            switch (f->sub) {
            case OBJ_START:
                c = obj_rest(n, ml, f->bits, 0);
                break;
            case OBJ_KEY:
                c = obj_rest(n, ml, f->bits, 0);
                if (c == 1) {
                    /* After a comma some key must come. */
                    int best = DIST_INF;

                    for (j = 0; j < n->n_props; j++) {
                        if (!(f->bits >> j & 1)
                            && prop_cost(n, ml, j) < best)
                        {
                            best = prop_cost(n, ml, j);
                        }
                    }
                    if (n->kind == GN_ANY || n->additional >= 0) {
                        int o = n->kind == GN_ANY ? f->node : n->additional;

                        if (sat_add(3, ml[o]) < best) {
                            best = sat_add(3, ml[o]);
                        }
                    }
                    c = sat_add(best, 1);
                }
                break;
            case OBJ_COLON:
                c = sat_add(1, ml[obj_value_node(g, f)]);
                c = sat_add(c, obj_rest(n, ml, f->bits, 1));
                break;
            case OBJ_VALUE:
                c = sat_add(ml[obj_value_node(g, f)],
                            obj_rest(n, ml, f->bits, 1));
                break;
            case OBJ_AFTER:
                c = obj_rest(n, ml, f->bits, 1);
                break;
            }
            break;
        case FT_ARR: {
            int item = arr_items_node(g, f);
            int mn = n->kind == GN_ANY ? 0 : n->min_items;

            switch (f->sub) {
            case ARR_START:
                c = sat_add(arr_items_cost(ml, item, mn, 0), 1);
                break;
            case ARR_ITEM:
                k = mn - f->pos > 1 ? mn - f->pos : 1;
                c = sat_add(arr_items_cost(ml, item, k, 0), 1);
                break;
            case ARR_AFTER:
                k = mn - f->pos > 0 ? mn - f->pos : 0;
                c = sat_add(arr_items_cost(ml, item, k, 1), 1);
                break;
            }
            break;
        }
        case FT_SEQ:
            for (j = f->pos; j < n->n_children; j++) {
                c = sat_add(c, ml[n->children[j]]);
            }
            break;
        case FT_REPEAT: {
            int sep = n->separator >= 0 ? ml[n->separator] : 0;

            if (f->sub == 1) {
                k = n->min_items - f->pos;
                c = sat_mul(sat_add(sep, ml[n->items]), k);
            } else {
                k = n->min_items - f->pos > 1 ? n->min_items - f->pos : 1;
                c = sat_add(sat_mul(ml[n->items], k), sat_mul(sep, k - 1));
            }
            break;
        }
        }
        d = sat_add(d, c);
    }
    return d;
}

/* ---- vocabulary ---------------------------------------------------------- */

typedef struct {
    int       n;          /* nodes */
    uint8_t  *byte;
    uint16_t *depth;      /* 1.. */
    int32_t  *skip;       /* first node after the subtree */
    int32_t  *tok_start;  /* n + 1 entries: tokens ending at node i */
    int32_t  *toks;
    int       max_depth;
} token_trie;

struct grammar_vocab {
    int       rows, words;
    uint32_t *off;        /* rows + 1: token bytes in blob; equal: none */
    char     *blob;
    int32_t  *eos;
    int       n_eos;
    token_trie all;       /* every allowed token */
    token_trie rest;      /* tokens that are not plain string text */
    uint64_t *plain;      /* bit set of plain string-text tokens */
};

typedef struct {
    const char *b;
    uint32_t    len;
    int32_t     id;
} vtok;

static int vtok_cmp(const void *a, const void *b)
{
    const vtok *x = a, *y = b;
    uint32_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->b, y->b, n);

    if (c != 0) {
        return c;
    }
    if (x->len != y->len) {
        return x->len < y->len ? -1 : 1;
    }
    return x->id < y->id ? -1 : x->id > y->id;
}

static void trie_free(token_trie *t)
{
    free(t->byte);
    free(t->depth);
    free(t->skip);
    free(t->tok_start);
    free(t->toks);
    memset(t, 0, sizeof(*t));
}

/* Builds the preorder trie of sorted tokens. */
static int trie_build(token_trie *t, const vtok *v, int n)
{
    size_t total = 0;
    int i, k, nt = 0, max_len = 0;
    int32_t *path;

    memset(t, 0, sizeof(*t));
    for (i = 0; i < n; i++) {
        total += v[i].len;
        if ((int) v[i].len > max_len) {
            max_len = (int) v[i].len;
        }
    }
    t->byte = malloc(total + 1);
    t->depth = malloc((total + 1) * sizeof(uint16_t));
    t->skip = malloc((total + 1) * sizeof(int32_t));
    t->tok_start = malloc((total + 2) * sizeof(int32_t));
    t->toks = malloc(((size_t) n + 1) * sizeof(int32_t));
    path = malloc(((size_t) max_len + 1) * sizeof(int32_t));
    if (t->byte == NULL || t->depth == NULL || t->skip == NULL
        || t->tok_start == NULL || t->toks == NULL || path == NULL)
    {
        free(path);
        trie_free(t);
        return -1;
    }
    /* path[d]: the node at depth d+1 on the current branch. */
    int plen = 0;
    for (i = 0; i < n; i++) {
        int lcp = 0;

        if (i > 0) {
            uint32_t m = v[i - 1].len < v[i].len ? v[i - 1].len : v[i].len;

            while ((uint32_t) lcp < m && v[i - 1].b[lcp] == v[i].b[lcp]) {
                lcp++;
            }
        }
        if (lcp > plen) {
            lcp = plen;
        }
        while (plen > lcp) {
            t->skip[path[--plen]] = t->n;
        }
        for (k = lcp; k < (int) v[i].len; k++) {
            int node = t->n++;

            t->byte[node] = (uint8_t) v[i].b[k];
            t->depth[node] = (uint16_t) (k + 1);
            t->tok_start[node] = nt;
            path[plen++] = node;
        }
        t->toks[nt++] = v[i].id;
    }
    while (plen > 0) {
        t->skip[path[--plen]] = t->n;
    }
    t->tok_start[t->n] = nt;
    t->max_depth = max_len;
    free(path);
    return 0;
}

/* Is the token plain text inside a JSON string: no quote, backslash or
 * control byte, and only whole, valid UTF-8 characters? */
static int plain_string_text(const char *b, size_t len)
{
    uint8_t sub = 0;
    size_t i;

    for (i = 0; i < len; i++) {
        uint8_t c = (uint8_t) b[i];

        if (c == '"' || c == '\\') {
            return 0;
        }
        if (string_step(&sub, c) != 0) {
            return 0;
        }
    }
    return sub == 0;
}

grammar_vocab *grammar_vocab_new(int n_rows, grammar_token_bytes_fn bytes_of,
                                 void *ctx, const int32_t *eos_ids, int n_eos)
{
    grammar_vocab *v = calloc(1, sizeof(*v));
    vtok *all = NULL, *rest = NULL;
    size_t blob_len = 0;
    int i, n_all = 0, n_rest = 0;

    if (v == NULL || n_rows <= 0) {
        free(v);
        return NULL;
    }
    v->rows = n_rows;
    v->words = (n_rows + 63) / 64;
    v->off = malloc(((size_t) n_rows + 1) * sizeof(uint32_t));
    v->plain = calloc((size_t) v->words, sizeof(uint64_t));
    v->eos = malloc(((size_t) n_eos + 1) * sizeof(int32_t));
    all = malloc((size_t) n_rows * sizeof(vtok));
    rest = malloc((size_t) n_rows * sizeof(vtok));
    if (v->off == NULL || v->plain == NULL || v->eos == NULL || all == NULL
        || rest == NULL)
    {
        goto fail;
    }
    for (i = 0; i < n_eos; i++) {
        if (eos_ids[i] >= 0 && eos_ids[i] < n_rows) {
            v->eos[v->n_eos++] = eos_ids[i];
        }
    }
    for (i = 0; i < n_rows; i++) {
        size_t len = 0;
        const char *b = bytes_of(ctx, i, &len);

        if (b != NULL && len > 0 && len <= 0xFFFF) {
            blob_len += len;
        }
    }
    v->blob = malloc(blob_len + 1);
    if (v->blob == NULL) {
        goto fail;
    }
    blob_len = 0;
    for (i = 0; i < n_rows; i++) {
        size_t len = 0;
        const char *b = bytes_of(ctx, i, &len);
        int j, is_eos = 0;

        for (j = 0; j < v->n_eos; j++) {
            is_eos |= v->eos[j] == i;
        }
        v->off[i] = (uint32_t) blob_len;
        if (b == NULL || len == 0 || len > 0xFFFF || is_eos) {
            continue;
        }
        memcpy(v->blob + blob_len, b, len);
        all[n_all].b = v->blob + blob_len;
        all[n_all].len = (uint32_t) len;
        all[n_all].id = i;
        if (plain_string_text(b, len)) {
            v->plain[i / 64] |= (uint64_t) 1 << (i % 64);
        } else {
            rest[n_rest++] = all[n_all];
        }
        n_all++;
        blob_len += len;
    }
    v->off[n_rows] = (uint32_t) blob_len;
    qsort(all, (size_t) n_all, sizeof(vtok), vtok_cmp);
    qsort(rest, (size_t) n_rest, sizeof(vtok), vtok_cmp);
    if (trie_build(&v->all, all, n_all) != 0
        || trie_build(&v->rest, rest, n_rest) != 0)
    {
        goto fail;
    }
    free(all);
    free(rest);
    return v;
fail:
    free(all);
    free(rest);
    grammar_vocab_free(v);
    return NULL;
}

void grammar_vocab_free(grammar_vocab *v)
{
    if (v == NULL) {
        return;
    }
    free(v->off);
    free(v->blob);
    free(v->eos);
    free(v->plain);
    trie_free(&v->all);
    trie_free(&v->rest);
    free(v);
}

int grammar_vocab_rows(const grammar_vocab *v)
{
    return v->rows;
}

static const char *vocab_bytes(const grammar_vocab *v, int32_t id,
                               size_t *len)
{
    if (id < 0 || id >= v->rows) {
        return NULL;
    }
    *len = v->off[id + 1] - v->off[id];
    return *len ? v->blob + v->off[id] : NULL;
}

/* ---- matcher --------------------------------------------------------------- */

#define MASK_CACHE 64

typedef struct {
    uint64_t      hash;
    int           used;
    int           count;
    int           max_after;     /* longest completion after a token */
    grammar_state key;
    uint64_t     *words;
} mask_entry;

struct grammar_matcher {
    const grammar       *g;
    const grammar_vocab *v;
    grammar_state        st;
    grammar_state       *walk;        /* max token length + 1 states */
    mask_entry           cache[MASK_CACHE];
    int                  next_victim;
    int                 *min_len;     /* per node (grammar_distance) */
    int                  budget;      /* tokens left; < 0 unknown */
    uint64_t            *end_mask;    /* near the budget's end (uncached) */
    uint64_t             computed, cached;
};

grammar_matcher *grammar_matcher_new(const grammar *g, const grammar_vocab *v)
{
    grammar_matcher *m = calloc(1, sizeof(*m));
    int depth = v->all.max_depth + 1;

    if (m == NULL) {
        return NULL;
    }
    m->g = g;
    m->v = v;
    m->budget = -1;
    m->walk = malloc((size_t) depth * sizeof(grammar_state));
    m->min_len = min_lengths(g);
    if (m->walk == NULL || m->min_len == NULL) {
        free(m->walk);
        free(m->min_len);
        free(m);
        return NULL;
    }

    grammar_state_init(g, &m->st);
    return m;
}

void grammar_matcher_free(grammar_matcher *m)
{
    int i;

    if (m == NULL) {
        return;
    }
    for (i = 0; i < MASK_CACHE; i++) {
        free(m->cache[i].words);
    }
    free(m->walk);
    free(m->min_len);
    free(m->end_mask);
    free(m);
}

static uint64_t state_hash(const grammar_state *s)
{
    const uint8_t *p = (const uint8_t *) s->f;
    size_t n = (size_t) s->depth * sizeof(grammar_frame), i;
    uint64_t h = 1469598103934665603ULL;

    h = (h ^ (uint64_t) s->depth) * 1099511628211ULL;
    h = (h ^ (uint64_t) s->done) * 1099511628211ULL;
    h = (h ^ (uint64_t) s->ws) * 1099511628211ULL;
    for (i = 0; i < n; i++) {
        h = (h ^ p[i]) * 1099511628211ULL;
    }
    return h;
}

static int state_equal(const grammar_state *a, const grammar_state *b)
{
    return a->depth == b->depth && a->done == b->done && a->ws == b->ws
           && memcmp(a->f, b->f, (size_t) a->depth * sizeof(grammar_frame))
              == 0;
}

/* Sets the bits of the trie's tokens that the automaton accepts from s
 * and after which the shortest completion is at most limit bytes (any, for
 * a negative limit); *max_after: the longest such completion seen. */
static void trie_walk(grammar_matcher *m, const token_trie *t,
                      const grammar_state *s, uint64_t *words, int limit,
                      int *max_after)
{
    grammar_state *st = m->walk;
    int i = 0;

    state_copy(&st[0], s);
    while (i < t->n) {
        int d = t->depth[i], k;

        state_copy(&st[d], &st[d - 1]);
        if (step_in_place(m->g, &st[d], t->byte[i]) != 0) {
            i = t->skip[i];
            continue;
        }
        if (t->tok_start[i] < t->tok_start[i + 1]) {
            int after = grammar_distance(m->g, m->min_len, &st[d]);

            if (limit < 0 || after <= limit) {
                for (k = t->tok_start[i]; k < t->tok_start[i + 1]; k++) {
                    int32_t id = t->toks[k];

                    words[id / 64] |= (uint64_t) 1 << (id % 64);
                }
                if (after > *max_after) {
                    *max_after = after;
                }
            }
        }
        i++;
    }
}

/* Does plain string text (see grammar_vocab) leave s unchanged?  Inside a
 * string, and inside a free key that no known name matches any more. */
static int plain_text_state(const grammar_state *s)
{
    const grammar_frame *f;

    if (s->depth == 0) {
        return 0;
    }
    f = &s->f[s->depth - 1];
    return f->sub == 0
           && (f->type == FT_STR || (f->type == FT_KEYFREE && f->bits == 0));
}

/* limit >= 0: only tokens after which the shortest completion is at most
 * limit bytes (eos always, where the output may end).  Returns the longest
 * shortest-completion after any allowed token. */
static int compute_mask(grammar_matcher *m, uint64_t *words, int limit)
{
    const grammar_vocab *v = m->v;
    const grammar_state *s = &m->st;
    int i, max_after = 0;

    memset(words, 0, (size_t) v->words * sizeof(uint64_t));
    if (plain_text_state(s)) {
        /* Plain text keeps the state (and its shortest completion): only
         * the other tokens need the automaton. */
        int d = grammar_distance(m->g, m->min_len, s);

        if (limit < 0 || d <= limit) {
            memcpy(words, v->plain, (size_t) v->words * sizeof(uint64_t));
            max_after = d;
        }
        trie_walk(m, &v->rest, s, words, limit, &max_after);
    } else if (!grammar_state_terminal(s)) {
        trie_walk(m, &v->all, s, words, limit, &max_after);
    }
    if (grammar_state_accepting(m->g, s)) {
        for (i = 0; i < v->n_eos; i++) {
            words[v->eos[i] / 64] |= (uint64_t) 1 << (v->eos[i] % 64);
        }
    }
    return max_after;
}

static int popcount_words(const uint64_t *w, int n)
{
    int i, count = 0;

    for (i = 0; i < n; i++) {
        count += __builtin_popcountll(w[i]);
    }
    return count;
}

void grammar_matcher_set_budget(grammar_matcher *m, int tokens_left)
{
    m->budget = tokens_left;
}

int grammar_matcher_distance(const grammar_matcher *m)
{
    return grammar_distance(m->g, m->min_len, &m->st);
}

/* The mask when the budget is too close for every allowed token: keep the
 * shortest completion within the tokens left after this one, less one for
 * eos.  Every token shortens it by a byte or more at worst, so once this
 * holds it holds to the end; when it cannot hold (a budget too small from
 * the start), only tokens that shorten it are allowed. */
static int budget_mask(grammar_matcher *m, const uint64_t **words, int limit)
{
    int d = grammar_distance(m->g, m->min_len, &m->st), count;

    if (m->end_mask == NULL
        && (m->end_mask = malloc((size_t) m->v->words * sizeof(uint64_t)))
           == NULL)
    {
        *words = NULL;
        return 0;
    }
    compute_mask(m, m->end_mask, d <= limit ? limit : (d > 0 ? d - 1 : 0));
    count = popcount_words(m->end_mask, m->v->words);
    if (count == 0) {
        compute_mask(m, m->end_mask, -1);
        count = popcount_words(m->end_mask, m->v->words);
    }
    m->computed++;
    *words = m->end_mask;
    return count;
}

int grammar_matcher_mask(grammar_matcher *m, const uint64_t **words)
{
    uint64_t h = state_hash(&m->st);
    mask_entry *e = NULL;
    int i, limit = m->budget >= 0 ? m->budget - 2 : DIST_INF;

    for (i = 0; i < MASK_CACHE; i++) {
        if (m->cache[i].used && m->cache[i].hash == h
            && state_equal(&m->cache[i].key, &m->st))
        {
            if (m->cache[i].max_after > limit) {
                return budget_mask(m, words, limit);
            }
            m->cached++;
            *words = m->cache[i].words;
            return m->cache[i].count;
        }
    }
    for (i = 0; i < MASK_CACHE; i++) {
        if (!m->cache[i].used) {
            e = &m->cache[i];
            break;
        }
    }
    if (e == NULL) {
        e = &m->cache[m->next_victim];
        m->next_victim = (m->next_victim + 1) % MASK_CACHE;
        e->used = 0;
    }
    if (e->words == NULL) {
        e->words = malloc((size_t) m->v->words * sizeof(uint64_t));
        if (e->words == NULL) {
            *words = NULL;
            return 0;
        }
    }
    e->max_after = compute_mask(m, e->words, -1);
    e->count = popcount_words(e->words, m->v->words);
    e->hash = h;
    state_copy(&e->key, &m->st);
    e->used = 1;
    m->computed++;
    if (e->max_after > limit) {
        return budget_mask(m, words, limit);
    }
    *words = e->words;
    return e->count;
}

int grammar_matcher_accept(grammar_matcher *m, int32_t id)
{
    const char *b;
    size_t len = 0;
    int i;

    for (i = 0; i < m->v->n_eos; i++) {
        if (m->v->eos[i] == id) {
            return grammar_state_accepting(m->g, &m->st) ? 0 : -1;
        }
    }
    b = vocab_bytes(m->v, id, &len);
    if (b == NULL) {
        return -1;
    }
    return grammar_state_feed(m->g, &m->st, b, len);
}

int grammar_matcher_feed(grammar_matcher *m, const void *bytes, size_t len)
{
    return grammar_state_feed(m->g, &m->st, bytes, len);
}

int grammar_matcher_terminal(const grammar_matcher *m)
{
    return grammar_state_terminal(&m->st);
}

int grammar_matcher_accepting(const grammar_matcher *m)
{
    return grammar_state_accepting(m->g, &m->st);
}

void grammar_matcher_counts(const grammar_matcher *m, uint64_t *computed,
                            uint64_t *cached)
{
    *computed = m->computed;
    *cached = m->cached;
}

void grammar_apply_mask(float *logits, int n, const uint64_t *words)
{
    int w, nw = n / 64, j;

    /* Branch-free per word so that the compiler vectorises the select;
     * whole words of allowed tokens (string text) are skipped. */
    for (w = 0; w < nw; w++) {
        uint64_t bits = words[w];
        float *l = logits + (size_t) w * 64;

        if (bits == ~(uint64_t) 0) {
            continue;
        }
        for (j = 0; j < 64; j++) {
            l[j] = (bits >> j & 1) ? l[j] : -INFINITY;
        }
    }
    for (j = nw * 64; j < n; j++) {
        if (!(words[j / 64] >> (j % 64) & 1)) {
            logits[j] = -INFINITY;
        }
    }
}
