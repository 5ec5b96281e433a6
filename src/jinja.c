/*
 * Jinja2-subset interpreter: lexer, parser to an AST, tree-walking evaluator
 * over a small value type.  See jinja.h for what is supported and why the
 * semantics are those of transformers' sandboxed environment.
 *
 * Memory: the AST lives in the template's arena (immutable after parsing);
 * every value created while rendering lives in the render's arena, which is
 * freed as a whole and bounded by jinja_limits.max_memory.  Values are
 * never mutated after creation except namespaces (set ns.x = ...) and dicts
 * being built, so sharing them without reference counts is safe.
 */
#include "jinja.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <utf8proc.h>

/* ------------------------------------------------------------------ */
/* arena                                                               */
/* ------------------------------------------------------------------ */

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    _Alignas(16) char data[];
} arena_chunk;

typedef struct {
    arena_chunk *head;
    size_t total;       /* bytes handed out */
    size_t limit;       /* 0: unlimited */
} arena;

static void *arena_alloc(arena *a, size_t n)
{
    arena_chunk *c = a->head;
    size_t need = (n + 15) & ~(size_t) 15;

    if (need < n) {
        return NULL;
    }
    if (a->limit && (need > a->limit || a->total + need > a->limit)) {
        return NULL;
    }
    if (c == NULL || c->cap - c->used < need) {
        size_t cap = need > 32768 ? need : 32768;
        c = malloc(sizeof(arena_chunk) + cap);
        if (c == NULL) {
            return NULL;
        }
        c->next = a->head;
        c->used = 0;
        c->cap = cap;
        a->head = c;
    }
    void *p = c->data + c->used;
    c->used += need;
    a->total += need;
    return p;
}

static void arena_free_all(arena *a)
{
    arena_chunk *c = a->head;
    while (c) {
        arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->total = 0;
}

static char *arena_strndup(arena *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* ------------------------------------------------------------------ */
/* values                                                              */
/* ------------------------------------------------------------------ */

typedef enum {
    JV_UNDEF, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STR, JV_LIST, JV_DICT,
    JV_NS, JV_LOOP, JV_FUNC, JV_MACRO
} jv_type;

typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jloop jloop;
typedef struct jfunc jfunc;
typedef struct jundef jundef;
typedef struct jmacro jmacro;

typedef struct {
    uint8_t t;
    uint8_t tuple;          /* JV_LIST created as a Python tuple */
    union {
        int64_t i;          /* JV_INT, JV_BOOL */
        double f;
        struct { const char *p; size_t n; } s;
        jlist *l;
        jdict *d;           /* JV_DICT, JV_NS */
        jloop *loop;
        jfunc *fn;
        const jmacro *mac;
        const jundef *u;    /* NULL: a plain undefined */
    } u;
} jv;

struct jlist {
    size_t n;
    jv *v;
    /* the result of a filter that is a Python generator in Jinja (map,
     * select, ...): always true, no len(), no subscripts, not JSON */
    int gen;
};

struct jdict {
    size_t n, cap;
    jv *keys, *vals;
    int32_t *index;         /* open addressing over keys, when n > 8 */
    size_t index_cap;
};

struct jloop {
    int64_t index0, length;
    const jlist *items;
};

/* Why a value is undefined, for the error raised when it is used. */
struct jundef {
    const char *name;       /* variable or attribute name (NUL-terminated) */
    const char *obj_type;   /* NULL: an undefined variable */
    int is_element;         /* "has no element" rather than "no attribute" */
    const char *hint;       /* a complete message, overrides the above */
};

typedef enum {
    /* globals */
    F_RANGE, F_NAMESPACE, F_DICT, F_RAISE, F_STRFTIME_NOW,
    /* str methods */
    M_STARTSWITH, M_ENDSWITH, M_SPLIT, M_RSPLIT, M_STRIP, M_LSTRIP, M_RSTRIP,
    M_REPLACE, M_UPPER, M_LOWER, M_TITLE, M_CAPITALIZE, M_FIND, M_RFIND,
    M_SCOUNT, M_JOIN, M_ISDIGIT, M_ISALPHA, M_ISALNUM, M_ISSPACE, M_ISLOWER,
    M_ISUPPER, M_SPLITLINES,
    /* dict methods */
    M_ITEMS, M_KEYS, M_VALUES, M_GET,
    /* list methods */
    M_LINDEX, M_LCOUNT,
    /* loop methods */
    M_CYCLE,
    /* a real Python method this interpreter does not implement */
    M_UNSUPPORTED
} func_id;

struct jfunc {
    func_id id;
    const char *name;
    jv self;
};

static const jv JV_UNDEFINED = { .t = JV_UNDEF };
static const jv JV_NONE_V = { .t = JV_NONE };

static jv jv_bool(int b) { jv v = { .t = JV_BOOL }; v.u.i = b ? 1 : 0; return v; }
static jv jv_int(int64_t i) { jv v = { .t = JV_INT }; v.u.i = i; return v; }
static jv jv_float(double f) { jv v = { .t = JV_FLOAT }; v.u.f = f; return v; }
static jv jv_str(const char *p, size_t n)
{
    jv v = { .t = JV_STR };
    v.u.s.p = p;
    v.u.s.n = n;
    return v;
}

static const char *type_name(const jv *v)
{
    switch (v->t) {
    case JV_UNDEF: return "Undefined";
    case JV_NONE: return "NoneType";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STR: return "str";
    case JV_LIST: return v->u.l->gen ? "generator" : v->tuple ? "tuple" : "list";
    case JV_DICT: return "dict";
    case JV_NS: return "Namespace";
    case JV_LOOP: return "LoopContext";
    case JV_FUNC: return "builtin_function_or_method";
    case JV_MACRO: return "Macro";
    }
    return "object";
}

static int is_number(const jv *v)
{
    return v->t == JV_INT || v->t == JV_BOOL || v->t == JV_FLOAT;
}

static double num_as_double(const jv *v)
{
    return v->t == JV_FLOAT ? v->u.f : (double) v->u.i;
}

/* ------------------------------------------------------------------ */
/* UTF-8 and Python string helpers                                     */
/* ------------------------------------------------------------------ */

/* Decodes one code point of valid UTF-8 (the invariant of every string
 * value); *adv gets its length. */
static uint32_t u8_decode(const char *s, size_t n, size_t *adv)
{
    const unsigned char *p = (const unsigned char *) s;
    if (p[0] < 0x80 || n < 2) {
        *adv = 1;
        return p[0];
    }
    if ((p[0] & 0xE0) == 0xC0) {
        *adv = 2;
        return ((uint32_t) (p[0] & 0x1F) << 6) | (p[1] & 0x3F);
    }
    if ((p[0] & 0xF0) == 0xE0 && n >= 3) {
        *adv = 3;
        return ((uint32_t) (p[0] & 0x0F) << 12) | ((uint32_t) (p[1] & 0x3F) << 6)
               | (p[2] & 0x3F);
    }
    if (n >= 4) {
        *adv = 4;
        return ((uint32_t) (p[0] & 0x07) << 18) | ((uint32_t) (p[1] & 0x3F) << 12)
               | ((uint32_t) (p[2] & 0x3F) << 6) | (p[3] & 0x3F);
    }
    *adv = 1;
    return p[0];
}

static size_t u8_encode(uint32_t cp, char *out)
{
    if (cp >= 0xD800 && cp <= 0xDFFF) {
        cp = 0xFFFD;    /* a lone surrogate cannot be UTF-8 */
    }
    if (cp < 0x80) {
        out[0] = (char) cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char) (0xC0 | (cp >> 6));
        out[1] = (char) (0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char) (0xE0 | (cp >> 12));
        out[1] = (char) (0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char) (0x80 | (cp & 0x3F));
        return 3;
    }
    if (cp > 0x10FFFF) {
        cp = 0xFFFD;
        return u8_encode(cp, out);
    }
    out[0] = (char) (0xF0 | (cp >> 18));
    out[1] = (char) (0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char) (0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char) (0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the valid UTF-8 prefix: n when all of it is valid. */
static size_t u8_valid_prefix(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *) s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return i;
        }
        if (i + len > n) {
            return i;
        }
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80) {
                return i;
            }
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)))
            || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))) {
            return i;
        }
        i += len;
    }
    return n;
}

/* Python's str.isspace() for one code point (also what re's \s matches). */
static int py_isspace(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85
           || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A)
           || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F
           || c == 0x3000;
}

/* Length of the whitespace run starting at s (Python whitespace). */
static size_t ws_span(const char *s, size_t n)
{
    size_t i = 0, adv;
    while (i < n && py_isspace(u8_decode(s + i, n - i, &adv))) {
        i += adv;
    }
    return i;
}

/* Start of the whitespace run that ends the string. */
static size_t ws_rstrip_len(const char *s, size_t n)
{
    size_t end = n;
    while (end > 0) {
        size_t st = end - 1, adv;
        while (st > 0 && ((unsigned char) s[st] & 0xC0) == 0x80) {
            st--;
        }
        if (!py_isspace(u8_decode(s + st, end - st, &adv))) {
            break;
        }
        end = st;
    }
    return end;
}

static size_t u8_count(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) {
        c += ((unsigned char) s[i] & 0xC0) != 0x80;
    }
    return c;
}

/* Byte offset of code point index ci (ci <= count). */
static size_t u8_offset(const char *s, size_t n, size_t ci)
{
    size_t i = 0;
    while (i < n && ci > 0) {
        i++;
        while (i < n && ((unsigned char) s[i] & 0xC0) == 0x80) {
            i++;
        }
        ci--;
    }
    return i;
}

/* ------------------------------------------------------------------ */
/* growable byte buffer (malloc'ed, bounded)                           */
/* ------------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap, max;
    int overflow;           /* went past max, or out of memory */
} sbuf;

static int sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->overflow) {
        return -1;
    }
    if (n > b->max || b->n > b->max - n) {
        b->overflow = 1;
        return -1;
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) {
            cap *= 2;
        }
        char *np = realloc(b->p, cap);
        if (np == NULL) {
            b->overflow = 1;
            return -1;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

static int sb_puts(sbuf *b, const char *s) { return sb_put(b, s, strlen(s)); }
static int sb_putc(sbuf *b, char c) { return sb_put(b, &c, 1); }

static int sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t) n >= sizeof(tmp)) {
        return -1;
    }
    return sb_put(b, tmp, (size_t) n);
}

/* Python's repr() of a float: the shortest digits that read back equal,
 * fixed notation for exponents in [-4, 16), else d.ddde+XX. */
static void format_float_repr(double d, char *out, size_t cap)
{
    char buf[64], digits[32];
    int prec, exp10, nd = 0;

    if (isnan(d)) {
        snprintf(out, cap, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(out, cap, d < 0 ? "-inf" : "inf");
        return;
    }
    for (prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*e", prec - 1, d);
        if (strtod(buf, NULL) == d) {
            break;
        }
    }
    /* buf: [-]d[.ddd]e[+-]XX */
    const char *p = buf;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    for (; *p && *p != 'e'; p++) {
        if (*p >= '0' && *p <= '9') {
            digits[nd++] = *p;
        }
    }
    exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') {
        nd--;
    }
    digits[nd] = '\0';

    char *o = out;
    size_t left = cap;
#define EMIT(...) do { int w_ = snprintf(o, left, __VA_ARGS__); \
        if (w_ < 0 || (size_t) w_ >= left) { return; } o += w_; left -= (size_t) w_; } while (0)
    if (neg) {
        EMIT("-");
    }
    if (exp10 >= -4 && exp10 < 16) {
        int decpt = exp10 + 1;
        if (decpt <= 0) {
            EMIT("0.");
            for (int i = 0; i < -decpt; i++) {
                EMIT("0");
            }
            EMIT("%s", digits);
        } else if (decpt >= nd) {
            EMIT("%s", digits);
            for (int i = nd; i < decpt; i++) {
                EMIT("0");
            }
            EMIT(".0");
        } else {
            EMIT("%.*s.%s", decpt, digits, digits + decpt);
        }
    } else {
        EMIT("%c", digits[0]);
        if (nd > 1) {
            EMIT(".%s", digits + 1);
        }
        EMIT("e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    }
#undef EMIT
}

/* Python repr() of a str. */
static int put_str_repr(sbuf *b, const char *s, size_t n)
{
    int has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = (has_sq && !has_dq) ? '"' : '\'';
    sb_putc(b, q);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        if (c == (unsigned char) q || c == '\\') {
            sb_putc(b, '\\');
            sb_putc(b, (char) c);
        } else if (c == '\n') {
            sb_puts(b, "\\n");
        } else if (c == '\r') {
            sb_puts(b, "\\r");
        } else if (c == '\t') {
            sb_puts(b, "\\t");
        } else if (c < 0x20 || c == 0x7F) {
            sb_printf(b, "\\x%02x", c);
        } else {
            sb_putc(b, (char) c);
        }
    }
    return sb_putc(b, q);
}

#define VALUE_MAX_DEPTH 512

/* Python str() of a value (repr() inside containers). */
static int put_value(sbuf *b, const jv *v, int repr, int depth)
{
    char num[64];

    if (depth > VALUE_MAX_DEPTH) {
        b->overflow = 1;
        return -1;
    }
    switch (v->t) {
    case JV_UNDEF:
        return repr ? sb_puts(b, "Undefined") : 0;
    case JV_NONE:
        return sb_puts(b, "None");
    case JV_BOOL:
        return sb_puts(b, v->u.i ? "True" : "False");
    case JV_INT:
        return sb_printf(b, "%lld", (long long) v->u.i);
    case JV_FLOAT:
        format_float_repr(v->u.f, num, sizeof(num));
        return sb_puts(b, num);
    case JV_STR:
        return repr ? put_str_repr(b, v->u.s.p, v->u.s.n) : sb_put(b, v->u.s.p, v->u.s.n);
    case JV_LIST:
        if (v->u.l->gen) {
            return sb_puts(b, "<generator object>");
        }
        sb_putc(b, v->tuple ? '(' : '[');
        for (size_t i = 0; i < v->u.l->n; i++) {
            if (i) {
                sb_puts(b, ", ");
            }
            put_value(b, &v->u.l->v[i], 1, depth + 1);
        }
        if (v->tuple && v->u.l->n == 1) {
            sb_putc(b, ',');
        }
        return sb_putc(b, v->tuple ? ')' : ']');
    case JV_DICT:
    case JV_NS:
        sb_puts(b, v->t == JV_NS ? "<Namespace {" : "{");
        for (size_t i = 0; i < v->u.d->n; i++) {
            if (i) {
                sb_puts(b, ", ");
            }
            put_value(b, &v->u.d->keys[i], 1, depth + 1);
            sb_puts(b, ": ");
            put_value(b, &v->u.d->vals[i], 1, depth + 1);
        }
        return sb_puts(b, v->t == JV_NS ? "}>" : "}");
    case JV_LOOP:
        return sb_printf(b, "<LoopContext %lld/%lld>",
                         (long long) v->u.loop->index0 + 1,
                         (long long) v->u.loop->length);
    case JV_FUNC:
        return sb_printf(b, "<built-in method %s>", v->u.fn->name);
    case JV_MACRO:
        return sb_puts(b, "<Macro>");
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* dict                                                                */
/* ------------------------------------------------------------------ */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char) s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Hash consistent with Python equality of keys: 1 == 1.0 == True. */
static uint64_t key_hash(const jv *k)
{
    switch (k->t) {
    case JV_STR:
        return hash_bytes(k->u.s.p, k->u.s.n);
    case JV_INT:
    case JV_BOOL:
        return (uint64_t) k->u.i * 0x9E3779B97F4A7C15ull;
    case JV_FLOAT:
        if (k->u.f == floor(k->u.f) && fabs(k->u.f) < 9.2e18) {
            return (uint64_t) (int64_t) k->u.f * 0x9E3779B97F4A7C15ull;
        }
        return hash_bytes((const char *) &k->u.f, sizeof(double));
    case JV_NONE:
        return 0x12345;
    default:
        return 7;
    }
}

static int key_equal(const jv *a, const jv *b)
{
    if (a->t == JV_STR || b->t == JV_STR) {
        return a->t == b->t && a->u.s.n == b->u.s.n
               && memcmp(a->u.s.p, b->u.s.p, a->u.s.n) == 0;
    }
    if (is_number(a) && is_number(b)) {
        if (a->t != JV_FLOAT && b->t != JV_FLOAT) {
            return a->u.i == b->u.i;
        }
        return num_as_double(a) == num_as_double(b);
    }
    return a->t == b->t && a->t == JV_NONE;
}

static int is_hashable(const jv *k)
{
    return k->t == JV_STR || k->t == JV_NONE || is_number(k);
}

static jdict *dict_new(arena *a, size_t cap)
{
    jdict *d = arena_alloc(a, sizeof(*d));
    if (d == NULL) {
        return NULL;
    }
    memset(d, 0, sizeof(*d));
    if (cap) {
        d->keys = arena_alloc(a, cap * sizeof(jv));
        d->vals = arena_alloc(a, cap * sizeof(jv));
        if (d->keys == NULL || d->vals == NULL) {
            return NULL;
        }
        d->cap = cap;
    }
    return d;
}

static int dict_reindex(arena *a, jdict *d, size_t want)
{
    size_t cap = 16;
    while (cap < want * 2) {
        cap *= 2;
    }
    int32_t *idx = arena_alloc(a, cap * sizeof(int32_t));
    if (idx == NULL) {
        return -1;
    }
    for (size_t i = 0; i < cap; i++) {
        idx[i] = -1;
    }
    for (size_t i = 0; i < d->n; i++) {
        size_t h = (size_t) key_hash(&d->keys[i]) & (cap - 1);
        while (idx[h] >= 0) {
            h = (h + 1) & (cap - 1);
        }
        idx[h] = (int32_t) i;
    }
    d->index = idx;
    d->index_cap = cap;
    return 0;
}

static long dict_find(const jdict *d, const jv *key)
{
    if (d->index) {
        size_t h = (size_t) key_hash(key) & (d->index_cap - 1);
        while (d->index[h] >= 0) {
            if (key_equal(&d->keys[d->index[h]], key)) {
                return d->index[h];
            }
            h = (h + 1) & (d->index_cap - 1);
        }
        return -1;
    }
    for (size_t i = 0; i < d->n; i++) {
        if (key_equal(&d->keys[i], key)) {
            return (long) i;
        }
    }
    return -1;
}

static const jv *dict_get_str(const jdict *d, const char *name, size_t n)
{
    jv k = jv_str(name, n);
    long i = dict_find(d, &k);
    return i < 0 ? NULL : &d->vals[i];
}

/* Sets key (a repeated key keeps its position, as Python dicts do). */
static int dict_set(arena *a, jdict *d, jv key, jv val)
{
    long i = dict_find(d, &key);
    if (i >= 0) {
        d->vals[i] = val;
        return 0;
    }
    if (d->n >= INT32_MAX - 1) {
        return -1;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        jv *nk = arena_alloc(a, cap * sizeof(jv));
        jv *nv = arena_alloc(a, cap * sizeof(jv));
        if (nk == NULL || nv == NULL) {
            return -1;
        }
        if (d->n) {
            memcpy(nk, d->keys, d->n * sizeof(jv));
            memcpy(nv, d->vals, d->n * sizeof(jv));
        }
        d->keys = nk;
        d->vals = nv;
        d->cap = cap;
    }
    d->keys[d->n] = key;
    d->vals[d->n] = val;
    d->n++;
    if (d->index && d->n * 2 <= d->index_cap) {
        size_t h = (size_t) key_hash(&key) & (d->index_cap - 1);
        while (d->index[h] >= 0) {
            h = (h + 1) & (d->index_cap - 1);
        }
        d->index[h] = (int32_t) (d->n - 1);
    } else if (d->n > 8) {
        return dict_reindex(a, d, d->n * 2);
    }
    return 0;
}

static jlist *list_new(arena *a, size_t n)
{
    jlist *l = arena_alloc(a, sizeof(*l));
    if (l == NULL) {
        return NULL;
    }
    l->n = n;
    l->v = NULL;
    l->gen = 0;
    if (n) {
        if (n > SIZE_MAX / sizeof(jv)) {
            return NULL;
        }
        l->v = arena_alloc(a, n * sizeof(jv));
        if (l->v == NULL) {
            return NULL;
        }
    }
    return l;
}

/* ------------------------------------------------------------------ */
/* JSON in (Python json.loads) and out (Python json.dumps)             */
/* ------------------------------------------------------------------ */

typedef struct {
    arena *a;
    const char *s;
    size_t n, pos;
    char *err;
    size_t errlen;
} json_parser;

static int json_fail(json_parser *jp, const char *what)
{
    /* position as line/column of the JSON text, like Python's message */
    size_t line = 1, col = 1;
    for (size_t i = 0; i < jp->pos && i < jp->n; i++) {
        if (jp->s[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    snprintf(jp->err, jp->errlen, "%s: line %zu column %zu (char %zu)", what,
             line, col, jp->pos);
    return -1;
}

static void json_ws(json_parser *jp)
{
    while (jp->pos < jp->n) {
        char c = jp->s[jp->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            break;
        }
        jp->pos++;
    }
}

static int json_hex4(json_parser *jp, uint32_t *out)
{
    uint32_t v = 0;
    if (jp->pos + 4 > jp->n) {
        return json_fail(jp, "invalid \\uXXXX escape");
    }
    for (int i = 0; i < 4; i++) {
        char c = jp->s[jp->pos + i];
        v <<= 4;
        if (c >= '0' && c <= '9') {
            v |= (uint32_t) (c - '0');
        } else if (c >= 'a' && c <= 'f') {
            v |= (uint32_t) (c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            v |= (uint32_t) (c - 'A' + 10);
        } else {
            return json_fail(jp, "invalid \\uXXXX escape");
        }
    }
    jp->pos += 4;
    *out = v;
    return 0;
}

static int json_string(json_parser *jp, jv *out)
{
    size_t start = ++jp->pos, i = start;
    int simple = 1;

    /* fast path: no escapes */
    while (i < jp->n && jp->s[i] != '"') {
        unsigned char c = (unsigned char) jp->s[i];
        if (c == '\\') {
            simple = 0;
            break;
        }
        if (c < 0x20) {
            jp->pos = i;
            return json_fail(jp, "Invalid control character in string");
        }
        i++;
    }
    if (simple) {
        if (i >= jp->n) {
            return json_fail(jp, "Unterminated string starting at");
        }
        if (u8_valid_prefix(jp->s + start, i - start) != i - start) {
            jp->pos = start + u8_valid_prefix(jp->s + start, i - start);
            return json_fail(jp, "invalid UTF-8 in string");
        }
        char *p = arena_strndup(jp->a, jp->s + start, i - start);
        if (p == NULL) {
            return json_fail(jp, "out of memory");
        }
        *out = jv_str(p, i - start);
        jp->pos = i + 1;
        return 0;
    }
    /* with escapes: the decoded text is never longer than the source */
    size_t end = i;
    while (end < jp->n && jp->s[end] != '"') {
        end += jp->s[end] == '\\' ? 2 : 1;
    }
    char *buf = arena_alloc(jp->a, end - start + 1), *o = buf;
    if (buf == NULL) {
        return json_fail(jp, "out of memory");
    }
    jp->pos = start;
    while (1) {
        if (jp->pos >= jp->n) {
            jp->pos = start - 1;
            return json_fail(jp, "Unterminated string starting at");
        }
        unsigned char c = (unsigned char) jp->s[jp->pos];
        if (c == '"') {
            jp->pos++;
            break;
        }
        if (c < 0x20) {
            return json_fail(jp, "Invalid control character in string");
        }
        if (c != '\\') {
            size_t run = jp->pos;
            while (run < jp->n && jp->s[run] != '"' && jp->s[run] != '\\'
                   && (unsigned char) jp->s[run] >= 0x20) {
                run++;
            }
            size_t ok = u8_valid_prefix(jp->s + jp->pos, run - jp->pos);
            if (ok != run - jp->pos) {
                jp->pos += ok;
                return json_fail(jp, "invalid UTF-8 in string");
            }
            memcpy(o, jp->s + jp->pos, run - jp->pos);
            o += run - jp->pos;
            jp->pos = run;
            continue;
        }
        jp->pos++;
        if (jp->pos >= jp->n) {
            return json_fail(jp, "Unterminated string starting at");
        }
        c = (unsigned char) jp->s[jp->pos++];
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            uint32_t cp, lo;
            if (json_hex4(jp, &cp) < 0) {
                return -1;
            }
            if (cp >= 0xD800 && cp <= 0xDBFF && jp->pos + 6 <= jp->n
                && jp->s[jp->pos] == '\\' && jp->s[jp->pos + 1] == 'u') {
                size_t save = jp->pos;
                jp->pos += 2;
                if (json_hex4(jp, &lo) < 0) {
                    return -1;
                }
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else {
                    jp->pos = save;
                }
            }
            if (cp >= 0xD800 && cp <= 0xDFFF) {
                /* Python would keep a lone surrogate, which no UTF-8
                 * text (and so no tokenizer input) can hold. */
                jp->pos -= 6;
                return json_fail(jp, "lone surrogate \\u escape in string");
            }
            o += u8_encode(cp, o);
            break;
        }
        default:
            jp->pos -= 2;
            return json_fail(jp, "Invalid \\escape");
        }
    }
    *o = '\0';
    *out = jv_str(buf, (size_t) (o - buf));
    return 0;
}

static int json_value(json_parser *jp, jv *out, int depth);

static int json_number(json_parser *jp, jv *out)
{
    size_t st = jp->pos, i = st;
    int is_float = 0;
    if (i < jp->n && jp->s[i] == '-') {
        i++;
    }
    if (i < jp->n && jp->s[i] == '0') {
        i++;
    } else if (i < jp->n && jp->s[i] >= '1' && jp->s[i] <= '9') {
        while (i < jp->n && jp->s[i] >= '0' && jp->s[i] <= '9') {
            i++;
        }
    } else {
        return json_fail(jp, "Expecting value");
    }
    if (i + 1 < jp->n && jp->s[i] == '.' && jp->s[i + 1] >= '0' && jp->s[i + 1] <= '9') {
        is_float = 1;
        i++;
        while (i < jp->n && jp->s[i] >= '0' && jp->s[i] <= '9') {
            i++;
        }
    }
    if (i < jp->n && (jp->s[i] == 'e' || jp->s[i] == 'E')) {
        size_t j = i + 1;
        if (j < jp->n && (jp->s[j] == '+' || jp->s[j] == '-')) {
            j++;
        }
        if (j < jp->n && jp->s[j] >= '0' && jp->s[j] <= '9') {
            is_float = 1;
            while (j < jp->n && jp->s[j] >= '0' && jp->s[j] <= '9') {
                j++;
            }
            i = j;
        }
    }
    char tmp[64];
    char *num = tmp;
    if (i - st >= sizeof(tmp)) {
        num = arena_strndup(jp->a, jp->s + st, i - st);
        if (num == NULL) {
            return json_fail(jp, "out of memory");
        }
    } else {
        memcpy(tmp, jp->s + st, i - st);
        tmp[i - st] = '\0';
    }
    jp->pos = i;
    if (!is_float) {
        errno = 0;
        long long v = strtoll(num, NULL, 10);
        if (errno == 0) {
            *out = jv_int(v);
            return 0;
        }
    }
    *out = jv_float(strtod(num, NULL));
    return 0;
}

static int json_lit(json_parser *jp, const char *word)
{
    size_t n = strlen(word);
    if (jp->pos + n <= jp->n && memcmp(jp->s + jp->pos, word, n) == 0) {
        jp->pos += n;
        return 1;
    }
    return 0;
}

static int json_value(json_parser *jp, jv *out, int depth)
{
    if (depth > JINJA_MAX_JSON_DEPTH) {
        return json_fail(jp, "JSON nested too deeply");
    }
    json_ws(jp);
    if (jp->pos >= jp->n) {
        return json_fail(jp, "Expecting value");
    }
    char c = jp->s[jp->pos];
    if (c == '"') {
        return json_string(jp, out);
    }
    if (c == '{') {
        jdict *d = dict_new(jp->a, 0);
        if (d == NULL) {
            return json_fail(jp, "out of memory");
        }
        jp->pos++;
        json_ws(jp);
        if (jp->pos < jp->n && jp->s[jp->pos] == '}') {
            jp->pos++;
        } else {
            while (1) {
                jv k, v;
                json_ws(jp);
                if (jp->pos >= jp->n || jp->s[jp->pos] != '"') {
                    return json_fail(jp, "Expecting property name enclosed in double quotes");
                }
                if (json_string(jp, &k) < 0) {
                    return -1;
                }
                json_ws(jp);
                if (jp->pos >= jp->n || jp->s[jp->pos] != ':') {
                    return json_fail(jp, "Expecting ':' delimiter");
                }
                jp->pos++;
                if (json_value(jp, &v, depth + 1) < 0) {
                    return -1;
                }
                if (dict_set(jp->a, d, k, v) < 0) {
                    return json_fail(jp, "out of memory");
                }
                json_ws(jp);
                if (jp->pos < jp->n && jp->s[jp->pos] == ',') {
                    jp->pos++;
                    continue;
                }
                if (jp->pos < jp->n && jp->s[jp->pos] == '}') {
                    jp->pos++;
                    break;
                }
                return json_fail(jp, "Expecting ',' delimiter");
            }
        }
        out->t = JV_DICT;
        out->tuple = 0;
        out->u.d = d;
        return 0;
    }
    if (c == '[') {
        size_t n = 0, cap = 0;
        jv *items = NULL;
        jp->pos++;
        json_ws(jp);
        if (jp->pos < jp->n && jp->s[jp->pos] == ']') {
            jp->pos++;
        } else {
            while (1) {
                jv v;
                if (json_value(jp, &v, depth + 1) < 0) {
                    return -1;
                }
                if (n == cap) {
                    size_t ncap = cap ? cap * 2 : 4;
                    jv *ni = arena_alloc(jp->a, ncap * sizeof(jv));
                    if (ni == NULL) {
                        return json_fail(jp, "out of memory");
                    }
                    if (n) {
                        memcpy(ni, items, n * sizeof(jv));
                    }
                    items = ni;
                    cap = ncap;
                }
                items[n++] = v;
                json_ws(jp);
                if (jp->pos < jp->n && jp->s[jp->pos] == ',') {
                    jp->pos++;
                    continue;
                }
                if (jp->pos < jp->n && jp->s[jp->pos] == ']') {
                    jp->pos++;
                    break;
                }
                return json_fail(jp, "Expecting ',' delimiter");
            }
        }
        jlist *l = arena_alloc(jp->a, sizeof(*l));
        if (l == NULL) {
            return json_fail(jp, "out of memory");
        }
        l->n = n;
        l->v = items;
        l->gen = 0;
        out->t = JV_LIST;
        out->tuple = 0;
        out->u.l = l;
        return 0;
    }
    if (json_lit(jp, "true")) {
        *out = jv_bool(1);
        return 0;
    }
    if (json_lit(jp, "false")) {
        *out = jv_bool(0);
        return 0;
    }
    if (json_lit(jp, "null")) {
        *out = JV_NONE_V;
        return 0;
    }
    /* Python's json accepts these too */
    if (json_lit(jp, "NaN")) {
        *out = jv_float(NAN);
        return 0;
    }
    if (json_lit(jp, "Infinity")) {
        *out = jv_float(INFINITY);
        return 0;
    }
    if (json_lit(jp, "-Infinity")) {
        *out = jv_float(-INFINITY);
        return 0;
    }
    return json_number(jp, out);
}

static int json_parse(arena *a, const char *s, size_t n, jv *out,
                      char *err, size_t errlen)
{
    json_parser jp = { a, s, n, 0, err, errlen };
    if (json_value(&jp, out, 0) < 0) {
        return -1;
    }
    json_ws(&jp);
    if (jp.pos != n) {
        return json_fail(&jp, "Extra data");
    }
    return 0;
}

typedef struct {
    const char *indent;     /* NULL: no newlines */
    size_t indent_len;
    const char *item_sep, *key_sep;
    size_t item_sep_len, key_sep_len;
    int ensure_ascii;
    int sort_keys;
    const char *error;      /* set on failure */
    const char *bad_type;   /* set when a value is not serializable */
} json_opts;

static void json_put_string(sbuf *b, const char *s, size_t n, int ensure_ascii)
{
    sb_putc(b, '"');
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char) s[i];
        size_t run = i;
        while (run < n) {
            unsigned char d = (unsigned char) s[run];
            if (d == '"' || d == '\\' || d < 0x20 || (ensure_ascii && d >= 0x7F)) {
                break;
            }
            run++;
        }
        if (run > i) {
            sb_put(b, s + i, run - i);
            i = run;
            continue;
        }
        c = (unsigned char) s[i];
        switch (c) {
        case '"': sb_puts(b, "\\\""); i++; continue;
        case '\\': sb_puts(b, "\\\\"); i++; continue;
        case '\n': sb_puts(b, "\\n"); i++; continue;
        case '\r': sb_puts(b, "\\r"); i++; continue;
        case '\t': sb_puts(b, "\\t"); i++; continue;
        case '\b': sb_puts(b, "\\b"); i++; continue;
        case '\f': sb_puts(b, "\\f"); i++; continue;
        default: break;
        }
        if (c < 0x80) {
            sb_printf(b, "\\u%04x", c);
            i++;
            continue;
        }
        size_t adv;
        uint32_t cp = u8_decode(s + i, n - i, &adv);
        if (cp >= 0x10000) {
            cp -= 0x10000;
            sb_printf(b, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
        } else {
            sb_printf(b, "\\u%04x", cp);
        }
        i += adv;
    }
    sb_putc(b, '"');
}

static void json_newline(sbuf *b, const json_opts *o, int level)
{
    sb_putc(b, '\n');
    for (int i = 0; i < level; i++) {
        sb_put(b, o->indent, o->indent_len);
    }
}

static int str_cmp(const jv *a, const jv *b)
{
    size_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
    int c = memcmp(a->u.s.p, b->u.s.p, n);
    if (c) {
        return c;
    }
    return a->u.s.n < b->u.s.n ? -1 : a->u.s.n > b->u.s.n;
}

static int json_dump(sbuf *b, const jv *v, json_opts *o, int level, arena *a)
{
    char num[64];

    if (level > VALUE_MAX_DEPTH) {
        o->error = "value nested too deeply for tojson";
        return -1;
    }
    switch (v->t) {
    case JV_NONE:
        sb_puts(b, "null");
        return 0;
    case JV_BOOL:
        sb_puts(b, v->u.i ? "true" : "false");
        return 0;
    case JV_INT:
        sb_printf(b, "%lld", (long long) v->u.i);
        return 0;
    case JV_FLOAT:
        if (isnan(v->u.f)) {
            sb_puts(b, "NaN");
        } else if (isinf(v->u.f)) {
            sb_puts(b, v->u.f < 0 ? "-Infinity" : "Infinity");
        } else {
            format_float_repr(v->u.f, num, sizeof(num));
            sb_puts(b, num);
        }
        return 0;
    case JV_STR:
        json_put_string(b, v->u.s.p, v->u.s.n, o->ensure_ascii);
        return 0;
    case JV_LIST:
        if (v->u.l->gen) {
            o->bad_type = "generator";
            return -1;
        }
        if (v->u.l->n == 0) {
            sb_puts(b, "[]");
            return 0;
        }
        sb_putc(b, '[');
        for (size_t i = 0; i < v->u.l->n; i++) {
            if (i) {
                sb_put(b, o->item_sep, o->item_sep_len);
            }
            if (o->indent) {
                json_newline(b, o, level + 1);
            }
            if (json_dump(b, &v->u.l->v[i], o, level + 1, a) < 0) {
                return -1;
            }
        }
        if (o->indent) {
            json_newline(b, o, level);
        }
        sb_putc(b, ']');
        return 0;
    case JV_DICT: {
        const jdict *d = v->u.d;
        size_t *order = NULL;
        if (d->n == 0) {
            sb_puts(b, "{}");
            return 0;
        }
        for (size_t i = 0; i < d->n; i++) {
            const jv *k = &d->keys[i];
            if (k->t != JV_STR && k->t != JV_NONE && !is_number(k)) {
                o->error = "keys must be str, int, float, bool or None";
                return -1;
            }
        }
        if (o->sort_keys) {
            order = arena_alloc(a, d->n * sizeof(size_t));
            if (order == NULL) {
                o->error = "out of memory";
                return -1;
            }
            /* insertion sort: dicts in templates are small */
            for (size_t i = 0; i < d->n; i++) {
                size_t j = i;
                if (d->keys[i].t != JV_STR) {
                    o->error = "sort_keys needs str keys";
                    return -1;
                }
                while (j > 0 && str_cmp(&d->keys[order[j - 1]], &d->keys[i]) > 0) {
                    order[j] = order[j - 1];
                    j--;
                }
                order[j] = i;
            }
        }
        sb_putc(b, '{');
        for (size_t ii = 0; ii < d->n; ii++) {
            size_t i = order ? order[ii] : ii;
            const jv *k = &d->keys[i];
            if (ii) {
                sb_put(b, o->item_sep, o->item_sep_len);
            }
            if (o->indent) {
                json_newline(b, o, level + 1);
            }
            if (k->t == JV_STR) {
                json_put_string(b, k->u.s.p, k->u.s.n, o->ensure_ascii);
            } else {
                sbuf kb = { 0 };
                kb.max = 256;
                if (k->t == JV_NONE) {
                    sb_puts(&kb, "null");
                } else if (k->t == JV_BOOL) {
                    sb_puts(&kb, k->u.i ? "true" : "false");
                } else if (k->t == JV_FLOAT && isnan(k->u.f)) {
                    sb_puts(&kb, "NaN");
                } else if (k->t == JV_FLOAT && isinf(k->u.f)) {
                    sb_puts(&kb, k->u.f < 0 ? "-Infinity" : "Infinity");
                } else {
                    put_value(&kb, k, 0, 0);
                }
                json_put_string(b, kb.p ? kb.p : "", kb.n, o->ensure_ascii);
                free(kb.p);
            }
            sb_put(b, o->key_sep, o->key_sep_len);
            if (json_dump(b, &d->vals[i], o, level + 1, a) < 0) {
                return -1;
            }
        }
        if (o->indent) {
            json_newline(b, o, level);
        }
        sb_putc(b, '}');
        return 0;
    }
    default:
        o->bad_type = type_name(v);
        return -1;
    }
}

/* ------------------------------------------------------------------ */
/* lexer                                                               */
/* ------------------------------------------------------------------ */

typedef enum {
    T_DATA, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME,
    T_STRING, T_INT, T_FLOAT, T_OP, T_EOF
} tok_type;

enum {
    OP_FLOORDIV = 256, OP_POW, OP_EQ, OP_NE, OP_GE, OP_LE
};

typedef struct {
    tok_type t;
    int op;                 /* T_OP: a character or an OP_* code */
    const char *p;          /* T_DATA, T_STRING: decoded text; T_NAME */
    size_t n;
    int64_t i;
    double f;
    size_t pos;             /* offset in the (normalized) source */
} token;

struct jinja_template {
    arena mem;
    char *src;              /* normalized source, for error positions */
    size_t src_len;
    struct node *body;
};

typedef struct {
    const char *s;
    size_t n;
    token *toks;
    size_t ntoks, cap;
    char *err;
    size_t errlen;
    arena *mem;
} lexer;

/* "line L, column C" of a source offset; columns count code points. */
static void source_position(const char *s, size_t n, size_t pos,
                            size_t *line, size_t *col)
{
    size_t l = 1, c = 1;
    if (pos > n) {
        pos = n;
    }
    for (size_t i = 0; i < pos; i++) {
        if (s[i] == '\n') {
            l++;
            c = 1;
        } else if (((unsigned char) s[i] & 0xC0) != 0x80) {
            c++;
        }
    }
    *line = l;
    *col = c;
}

static int lex_fail(lexer *lx, size_t pos, const char *fmt, ...)
{
    size_t line, col;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    source_position(lx->s, lx->n, pos, &line, &col);
    snprintf(lx->err, lx->errlen, "line %zu, column %zu: %s", line, col, msg);
    return -1;
}

static token *lex_push(lexer *lx, tok_type t, size_t pos)
{
    if (lx->ntoks == lx->cap) {
        size_t cap = lx->cap ? lx->cap * 2 : 256;
        token *nt = realloc(lx->toks, cap * sizeof(token));
        if (nt == NULL) {
            return NULL;
        }
        lx->toks = nt;
        lx->cap = cap;
    }
    token *tk = &lx->toks[lx->ntoks++];
    memset(tk, 0, sizeof(*tk));
    tk->t = t;
    tk->pos = pos;
    return tk;
}

static int lex_data(lexer *lx, size_t pos, const char *p, size_t n)
{
    if (n == 0) {
        return 0;
    }
    token *tk = lex_push(lx, T_DATA, pos);
    if (tk == NULL) {
        return lex_fail(lx, pos, "out of memory");
    }
    tk->p = p;
    tk->n = n;
    return 0;
}

/*
 * Text before a tag, with the whitespace rules of transformers' environment:
 * "-" strips all whitespace before the tag; otherwise, for {% and {# (not
 * {{) without "+", lstrip_blocks removes spaces between the line start and
 * the tag.
 */
static int lex_text_before_tag(lexer *lx, size_t pos, size_t tag, char kind,
                               char sign, int line_starting)
{
    const char *text = lx->s + pos;
    size_t n = tag - pos;
    if (sign == '-') {
        n = ws_rstrip_len(text, n);
    } else if (sign != '+' && kind != '{') {
        size_t l_pos = n;
        while (l_pos > 0 && text[l_pos - 1] != '\n') {
            l_pos--;
        }
        if ((l_pos > 0 || line_starting) && l_pos < n
            && l_pos + ws_span(text + l_pos, n - l_pos) == n) {
            n = l_pos;
        }
    }
    return lex_data(lx, pos, text, n);
}

static int is_name_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A string literal, decoded like Python's unicode-escape codec. */
static int lex_string(lexer *lx, size_t *ppos)
{
    size_t start = *ppos, i = start + 1;
    char q = lx->s[start];
    while (i < lx->n && lx->s[i] != q) {
        i += lx->s[i] == '\\' ? 2 : 1;
    }
    if (i >= lx->n) {
        return lex_fail(lx, start, "unterminated string");
    }
    char *buf = arena_alloc(lx->mem, i - start + 4), *o = buf;
    if (buf == NULL) {
        return lex_fail(lx, start, "out of memory");
    }
    for (size_t k = start + 1; k < i; k++) {
        char c = lx->s[k];
        if (c != '\\') {
            *o++ = c;
            continue;
        }
        char e = lx->s[++k];
        uint32_t cp;
        int nd, v;
        switch (e) {
        case '\n': break;
        case '\\': *o++ = '\\'; break;
        case '\'': *o++ = '\''; break;
        case '"': *o++ = '"'; break;
        case 'a': *o++ = '\a'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'v': *o++ = '\v'; break;
        case 'x': case 'u': case 'U':
            nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            cp = 0;
            for (int d = 0; d < nd; d++) {
                if (k + 1 + (size_t) d >= i || (v = hexval(lx->s[k + 1 + d])) < 0) {
                    return lex_fail(lx, k - 1, "truncated \\%c escape in string", e);
                }
                cp = cp * 16 + (uint32_t) v;
            }
            k += (size_t) nd;
            if (cp > 0x10FFFF) {
                return lex_fail(lx, k - 1, "illegal Unicode character in string");
            }
            o += u8_encode(cp, o);
            break;
        case 'N':
            return lex_fail(lx, k - 1, "\\N{...} escapes are not supported");
        default:
            if (e >= '0' && e <= '7') {
                cp = 0;
                for (nd = 0; nd < 3 && k < i && lx->s[k] >= '0' && lx->s[k] <= '7'; nd++) {
                    cp = cp * 8 + (uint32_t) (lx->s[k++] - '0');
                }
                k--;
                o += u8_encode(cp, o);
            } else {
                /* unknown escapes stay as written */
                *o++ = '\\';
                *o++ = e;
            }
        }
    }
    *o = '\0';
    token *tk = lex_push(lx, T_STRING, start);
    if (tk == NULL) {
        return lex_fail(lx, start, "out of memory");
    }
    tk->p = buf;
    tk->n = (size_t) (o - buf);
    *ppos = i + 1;
    return 0;
}

/* digits with single underscores between them; returns the end */
static size_t scan_digits(const char *s, size_t n, size_t i)
{
    if (i >= n || !is_digit(s[i])) {
        return i;
    }
    while (i < n) {
        if (is_digit(s[i])) {
            i++;
        } else if (s[i] == '_' && i + 1 < n && is_digit(s[i + 1])) {
            i++;
        } else {
            break;
        }
    }
    return i;
}

static int lex_number(lexer *lx, size_t *ppos)
{
    size_t st = *ppos, i = scan_digits(lx->s, lx->n, st), end = i;
    int is_float = 0;
    /* a float needs digits after '.', and none directly after a '.' */
    int after_dot = st > 0 && lx->s[st - 1] == '.';
    if (!after_dot) {
        if (i + 1 < lx->n && lx->s[i] == '.' && is_digit(lx->s[i + 1])) {
            end = scan_digits(lx->s, lx->n, i + 1);
            is_float = 1;
        }
        if (end < lx->n && (lx->s[end] == 'e' || lx->s[end] == 'E')) {
            size_t j = end + 1;
            if (j < lx->n && (lx->s[j] == '+' || lx->s[j] == '-')) {
                j++;
            }
            size_t k = scan_digits(lx->s, lx->n, j);
            if (k > j) {
                end = k;
                is_float = 1;
            }
        }
    }
    char tmp[128];
    size_t tn = 0;
    if (end - st >= sizeof(tmp)) {
        return lex_fail(lx, st, "number literal too long");
    }
    for (size_t k = st; k < end && tn < sizeof(tmp) - 1; k++) {
        if (lx->s[k] != '_') {
            tmp[tn++] = lx->s[k];
        }
    }
    tmp[tn] = '\0';
    token *tk = lex_push(lx, is_float ? T_FLOAT : T_INT, st);
    if (tk == NULL) {
        return lex_fail(lx, st, "out of memory");
    }
    if (is_float) {
        tk->f = strtod(tmp, NULL);
    } else {
        errno = 0;
        tk->i = strtoll(tmp, NULL, 10);
        if (errno) {
            return lex_fail(lx, st, "integer literal too large");
        }
    }
    *ppos = end;
    return 0;
}

/*
 * Tokens inside {{ }} or {% %} up to the closing tag.  Closing tags are
 * recognized only outside brackets, as Jinja does.  *line_starting gets
 * whether the consumed closing text ended with a newline.
 */
static int lex_tag(lexer *lx, size_t *ppos, int is_block, int *line_starting)
{
    size_t pos = *ppos;
    char stack[256];
    size_t depth = 0;

    while (1) {
        if (pos >= lx->n) {
            return lex_fail(lx, pos, "unexpected end of template, expected '%s'",
                            is_block ? "%}" : "}}");
        }
        const char *s = lx->s + pos;
        size_t left = lx->n - pos;
        if (depth == 0) {
            const char *close = is_block ? "%}" : "}}";
            if (left >= 3 && s[0] == '-' && memcmp(s + 1, close, 2) == 0) {
                if (lex_push(lx, is_block ? T_BLOCK_END : T_VAR_END, pos) == NULL) {
                    return lex_fail(lx, pos, "out of memory");
                }
                pos += 3;
                size_t w = ws_span(lx->s + pos, lx->n - pos);
                pos += w;
                *line_starting = w > 0 && lx->s[pos - 1] == '\n';
                *ppos = pos;
                return 0;
            }
            if (is_block && left >= 3 && s[0] == '+' && memcmp(s + 1, close, 2) == 0) {
                if (lex_push(lx, T_BLOCK_END, pos) == NULL) {
                    return lex_fail(lx, pos, "out of memory");
                }
                *ppos = pos + 3;
                *line_starting = 0;
                return 0;
            }
            if (left >= 2 && memcmp(s, close, 2) == 0) {
                if (lex_push(lx, is_block ? T_BLOCK_END : T_VAR_END, pos) == NULL) {
                    return lex_fail(lx, pos, "out of memory");
                }
                pos += 2;
                *line_starting = 0;
                if (is_block && pos < lx->n && lx->s[pos] == '\n') {   /* trim_blocks */
                    pos++;
                    *line_starting = 1;
                }
                *ppos = pos;
                return 0;
            }
        }
        size_t w = ws_span(s, left);
        if (w) {
            pos += w;
            continue;
        }
        char c = s[0];
        if (is_digit(c)) {
            if (lex_number(lx, &pos) < 0) {
                return -1;
            }
            continue;
        }
        if (is_name_start(c)) {
            size_t e = 1;
            while (e < left && (is_name_start(s[e]) || is_digit(s[e]))) {
                e++;
            }
            token *tk = lex_push(lx, T_NAME, pos);
            if (tk == NULL) {
                return lex_fail(lx, pos, "out of memory");
            }
            tk->p = arena_strndup(lx->mem, s, e);
            tk->n = e;
            if (tk->p == NULL) {
                return lex_fail(lx, pos, "out of memory");
            }
            pos += e;
            continue;
        }
        if (c == '\'' || c == '"') {
            if (lex_string(lx, &pos) < 0) {
                return -1;
            }
            continue;
        }
        int op = 0;
        size_t oplen = 2;
        if (left >= 2) {
            if (s[0] == '/' && s[1] == '/') op = OP_FLOORDIV;
            else if (s[0] == '*' && s[1] == '*') op = OP_POW;
            else if (s[0] == '=' && s[1] == '=') op = OP_EQ;
            else if (s[0] == '!' && s[1] == '=') op = OP_NE;
            else if (s[0] == '>' && s[1] == '=') op = OP_GE;
            else if (s[0] == '<' && s[1] == '=') op = OP_LE;
        }
        if (op == 0 && strchr("+-/*%~[](){}><=.:|,;", c) != NULL && c != '\0') {
            op = c;
            oplen = 1;
        }
        if (op == 0) {
            size_t adv;
            uint32_t cp = u8_decode(s, left, &adv);
            return lex_fail(lx, pos, "unexpected character U+%04X in tag", cp);
        }
        if (c == '(' || c == '[' || c == '{') {
            if (depth == sizeof(stack)) {
                return lex_fail(lx, pos, "brackets nested too deeply");
            }
            stack[depth++] = c == '(' ? ')' : c == '[' ? ']' : '}';
        } else if (c == ')' || c == ']' || c == '}') {
            if (depth == 0) {
                return lex_fail(lx, pos, "unexpected '%c'", c);
            }
            if (stack[depth - 1] != c) {
                return lex_fail(lx, pos, "unexpected '%c', expected '%c'", c,
                                stack[depth - 1]);
            }
            depth--;
        }
        token *tk = lex_push(lx, T_OP, pos);
        if (tk == NULL) {
            return lex_fail(lx, pos, "out of memory");
        }
        tk->op = op;
        pos += oplen;
    }
}

/* Matches "{%[-+]?\s*WORD\s*" at pos; returns the offset after it or 0. */
static size_t match_tag_word(const lexer *lx, size_t pos, const char *word, char *sign)
{
    size_t n = lx->n, wl = strlen(word);
    if (pos + 2 > n || lx->s[pos] != '{' || lx->s[pos + 1] != '%') {
        return 0;
    }
    pos += 2;
    *sign = 0;
    if (pos < n && (lx->s[pos] == '-' || lx->s[pos] == '+')) {
        *sign = lx->s[pos++];
    }
    pos += ws_span(lx->s + pos, n - pos);
    if (pos + wl > n || memcmp(lx->s + pos, word, wl) != 0) {
        return 0;
    }
    pos += wl;
    if (pos < n && (is_name_start(lx->s[pos]) || is_digit(lx->s[pos]))) {
        return 0;
    }
    return pos + ws_span(lx->s + pos, n - pos);
}

static int lex_all(lexer *lx)
{
    size_t pos = 0;
    int line_starting = 1;

    while (pos < lx->n) {
        size_t tag = pos;
        const char *hit = NULL;
        while (tag + 1 < lx->n) {
            hit = memchr(lx->s + tag, '{', lx->n - tag - 1);
            if (hit == NULL) {
                break;
            }
            tag = (size_t) (hit - lx->s);
            char k = lx->s[tag + 1];
            if (k == '{' || k == '%' || k == '#') {
                break;
            }
            tag++;
            hit = NULL;
        }
        if (hit == NULL) {
            return lex_data(lx, pos, lx->s + pos, lx->n - pos);
        }
        char kind = lx->s[tag + 1];
        char sign = 0;
        if (tag + 2 < lx->n && (lx->s[tag + 2] == '-' || lx->s[tag + 2] == '+')) {
            sign = lx->s[tag + 2];
        }
        size_t after = tag + 2 + (sign ? 1 : 0);

        /* {% raw %} ... {% endraw %} */
        char rsign;
        size_t rp = kind == '%' ? match_tag_word(lx, tag, "raw", &rsign) : 0;
        if (rp && rp + 2 <= lx->n
            && ((lx->s[rp] == '-' && rp + 3 <= lx->n && lx->s[rp + 1] == '%' && lx->s[rp + 2] == '}')
                || (lx->s[rp] == '%' && lx->s[rp + 1] == '}'))) {
            if (lex_text_before_tag(lx, pos, tag, '%', sign, line_starting) < 0) {
                return -1;
            }
            size_t body = rp;
            if (lx->s[rp] == '-') {
                body = rp + 3;
                body += ws_span(lx->s + body, lx->n - body);
            } else {
                body = rp + 2;
            }
            size_t k = body, endp = 0;
            char esign = 0;
            for (; k + 1 < lx->n; k++) {
                if (lx->s[k] == '{' && lx->s[k + 1] == '%'
                    && (endp = match_tag_word(lx, k, "endraw", &esign)) != 0) {
                    if ((endp + 2 <= lx->n && lx->s[endp] == '%' && lx->s[endp + 1] == '}')
                        || (endp + 3 <= lx->n && (lx->s[endp] == '-' || lx->s[endp] == '+')
                            && lx->s[endp + 1] == '%' && lx->s[endp + 2] == '}')) {
                        break;
                    }
                }
                endp = 0;
            }
            if (endp == 0) {
                return lex_fail(lx, tag, "missing end of raw directive");
            }
            line_starting = lx->s[body - 1] == '\n';
            if (lex_text_before_tag(lx, body, k, '%', esign, line_starting) < 0) {
                return -1;
            }
            line_starting = 0;
            if (lx->s[endp] == '%') {
                pos = endp + 2;
                if (pos < lx->n && lx->s[pos] == '\n') {
                    pos++;
                    line_starting = 1;
                }
            } else if (lx->s[endp] == '-') {
                pos = endp + 3;
                size_t w = ws_span(lx->s + pos, lx->n - pos);
                pos += w;
                line_starting = w > 0 && lx->s[pos - 1] == '\n';
            } else {
                pos = endp + 3;
            }
            continue;
        }

        if (lex_text_before_tag(lx, pos, tag, kind, sign, line_starting) < 0) {
            return -1;
        }
        if (kind == '#') {
            size_t k = after;
            while (k + 1 < lx->n && !(lx->s[k] == '#' && lx->s[k + 1] == '}')) {
                k++;
            }
            if (k + 1 >= lx->n) {
                return lex_fail(lx, tag, "missing end of comment tag");
            }
            pos = k + 2;
            line_starting = 0;
            if (k > after && lx->s[k - 1] == '-') {
                size_t w = ws_span(lx->s + pos, lx->n - pos);
                pos += w;
                line_starting = w > 0 && lx->s[pos - 1] == '\n';
            } else if (k > after && lx->s[k - 1] == '+') {
                /* no trimming */
            } else if (pos < lx->n && lx->s[pos] == '\n') {
                pos++;
                line_starting = 1;
            }
            continue;
        }
        if (lex_push(lx, kind == '%' ? T_BLOCK_BEGIN : T_VAR_BEGIN, tag) == NULL) {
            return lex_fail(lx, tag, "out of memory");
        }
        pos = after;
        if (lex_tag(lx, &pos, kind == '%', &line_starting) < 0) {
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* AST                                                                 */
/* ------------------------------------------------------------------ */

typedef enum {
    /* statements */
    N_BODY, N_TEXT, N_OUTPUT, N_IF, N_FOR, N_SET, N_SET_BLOCK, N_BREAK,
    N_CONTINUE, N_MACRO,
    /* expressions */
    N_CONST, N_NAME, N_LIST, N_TUPLE, N_DICT, N_GETATTR, N_GETITEM, N_SLICE,
    N_CALL, N_FILTER, N_TEST, N_NEG, N_POS, N_NOT, N_AND, N_OR, N_BINOP,
    N_CONCAT, N_COMPARE, N_CONDEXPR
} node_kind;

typedef struct node node;
struct node {
    node_kind kind;
    int op;                 /* N_BINOP operator; N_TEST: negated */
    int fid;                /* N_FILTER / N_TEST: which one */
    size_t pos;             /* source offset, for errors */
    uint32_t depth;         /* height of the subtree (bounds recursion) */
    node *a, *b, *c, *d, *e;
    node **items;           /* body, elements, arguments, operands */
    size_t nitems;
    node **items2;          /* dict values, keyword argument values */
    const char **names;     /* keyword argument names */
    size_t nkw;
    int *ops;               /* N_COMPARE: operator per operand */
    const char *name;       /* N_NAME, N_GETATTR, N_FILTER, N_TEST */
    jv value;               /* N_CONST, N_TEXT */
};

/* Filters and tests, validated at parse time as Jinja does. */
typedef enum {
    FL_ABS, FL_CAPITALIZE, FL_COUNT, FL_DEFAULT, FL_ESCAPE, FL_FIRST, FL_FLOAT,
    FL_INDENT, FL_INT, FL_ITEMS, FL_JOIN, FL_LAST, FL_LENGTH, FL_LIST,
    FL_LOWER, FL_MAP, FL_MAX, FL_MIN, FL_REJECT, FL_REJECTATTR, FL_REPLACE,
    FL_REVERSE, FL_ROUND, FL_SAFE, FL_SELECT, FL_SELECTATTR, FL_SORT,
    FL_STRING, FL_SUM, FL_TITLE, FL_TOJSON, FL_TRIM, FL_UNIQUE, FL_UPPER,
    FL_DICTSORT, FL_FORMAT
} filter_id;

static const struct { const char *name; filter_id id; } filter_table[] = {
    { "abs", FL_ABS }, { "capitalize", FL_CAPITALIZE }, { "count", FL_COUNT },
    { "default", FL_DEFAULT }, { "d", FL_DEFAULT }, { "escape", FL_ESCAPE },
    { "e", FL_ESCAPE }, { "first", FL_FIRST }, { "float", FL_FLOAT },
    { "indent", FL_INDENT }, { "int", FL_INT }, { "items", FL_ITEMS },
    { "join", FL_JOIN }, { "last", FL_LAST }, { "length", FL_LENGTH },
    { "list", FL_LIST }, { "lower", FL_LOWER }, { "map", FL_MAP },
    { "max", FL_MAX }, { "min", FL_MIN }, { "reject", FL_REJECT },
    { "rejectattr", FL_REJECTATTR }, { "replace", FL_REPLACE },
    { "reverse", FL_REVERSE }, { "round", FL_ROUND }, { "safe", FL_SAFE },
    { "select", FL_SELECT }, { "selectattr", FL_SELECTATTR },
    { "sort", FL_SORT }, { "string", FL_STRING }, { "sum", FL_SUM },
    { "title", FL_TITLE }, { "tojson", FL_TOJSON }, { "trim", FL_TRIM },
    { "unique", FL_UNIQUE }, { "upper", FL_UPPER }, { "dictsort", FL_DICTSORT },
    { "format", FL_FORMAT },
};

typedef enum {
    TS_DEFINED, TS_UNDEFINED, TS_NONE, TS_TRUE, TS_FALSE, TS_BOOLEAN,
    TS_INTEGER, TS_FLOAT, TS_NUMBER, TS_STRING, TS_MAPPING, TS_SEQUENCE,
    TS_ITERABLE, TS_CALLABLE, TS_SAMEAS, TS_ODD, TS_EVEN, TS_DIVISIBLEBY,
    TS_EQ, TS_NE, TS_LT, TS_LE, TS_GT, TS_GE, TS_IN, TS_LOWER, TS_UPPER,
    TS_ESCAPED
} test_id;

static const struct { const char *name; test_id id; } test_table[] = {
    { "defined", TS_DEFINED }, { "undefined", TS_UNDEFINED },
    { "none", TS_NONE }, { "true", TS_TRUE }, { "false", TS_FALSE },
    { "boolean", TS_BOOLEAN }, { "integer", TS_INTEGER },
    { "float", TS_FLOAT }, { "number", TS_NUMBER }, { "string", TS_STRING },
    { "mapping", TS_MAPPING }, { "sequence", TS_SEQUENCE },
    { "iterable", TS_ITERABLE }, { "callable", TS_CALLABLE },
    { "sameas", TS_SAMEAS }, { "odd", TS_ODD }, { "even", TS_EVEN },
    { "divisibleby", TS_DIVISIBLEBY }, { "eq", TS_EQ }, { "equalto", TS_EQ },
    { "==", TS_EQ }, { "ne", TS_NE }, { "!=", TS_NE }, { "lt", TS_LT },
    { "lessthan", TS_LT }, { "<", TS_LT }, { "le", TS_LE }, { "<=", TS_LE },
    { "gt", TS_GT }, { "greaterthan", TS_GT }, { ">", TS_GT },
    { "ge", TS_GE }, { ">=", TS_GE }, { "in", TS_IN }, { "lower", TS_LOWER },
    { "upper", TS_UPPER }, { "escaped", TS_ESCAPED },
};

static int find_filter(const char *name, size_t n)
{
    for (size_t i = 0; i < sizeof(filter_table) / sizeof(filter_table[0]); i++) {
        if (strlen(filter_table[i].name) == n && memcmp(filter_table[i].name, name, n) == 0) {
            return (int) filter_table[i].id;
        }
    }
    return -1;
}

static int find_test(const char *name, size_t n)
{
    for (size_t i = 0; i < sizeof(test_table) / sizeof(test_table[0]); i++) {
        if (strlen(test_table[i].name) == n && memcmp(test_table[i].name, name, n) == 0) {
            return (int) test_table[i].id;
        }
    }
    return -1;
}

/* ------------------------------------------------------------------ */
/* parser                                                              */
/* ------------------------------------------------------------------ */

#define PARSE_MAX_NESTING 300   /* recursion of the parser itself */
#define NODE_MAX_DEPTH 400      /* height of any expression tree */

typedef struct {
    lexer *lx;
    const token *toks;
    size_t ntoks, i;
    arena *mem;
    int nesting;
    int loop_depth;         /* for break/continue */
    int soft;               /* inside an if or a conditional expression */
    int failed;
} parser;

static int parse_fail(parser *p, size_t pos, const char *fmt, ...)
{
    size_t line, col;
    char msg[256];
    va_list ap;
    if (p->failed) {
        return -1;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    source_position(p->lx->s, p->lx->n, pos, &line, &col);
    snprintf(p->lx->err, p->lx->errlen, "line %zu, column %zu: %s", line, col, msg);
    p->failed = 1;
    return -1;
}

static const token *cur(parser *p) { return &p->toks[p->i]; }
static const token *peek(parser *p, size_t k)
{
    size_t j = p->i + k;
    return &p->toks[j < p->ntoks ? j : p->ntoks - 1];
}

static int tok_is_op(const token *t, int op) { return t->t == T_OP && t->op == op; }
static int tok_is_name(const token *t, const char *name)
{
    return t->t == T_NAME && strcmp(t->p, name) == 0;
}

static const char *tok_describe(const token *t, char *buf, size_t cap)
{
    switch (t->t) {
    case T_DATA: return "template data";
    case T_VAR_BEGIN: return "'{{'";
    case T_VAR_END: return "end of print statement";
    case T_BLOCK_BEGIN: return "'{%'";
    case T_BLOCK_END: return "end of statement block";
    case T_NAME: snprintf(buf, cap, "'%.60s'", t->p); return buf;
    case T_STRING: return "string";
    case T_INT: return "integer";
    case T_FLOAT: return "float";
    case T_OP:
        switch (t->op) {
        case OP_FLOORDIV: return "'//'";
        case OP_POW: return "'**'";
        case OP_EQ: return "'=='";
        case OP_NE: return "'!='";
        case OP_GE: return "'>='";
        case OP_LE: return "'<='";
        default: snprintf(buf, cap, "'%c'", t->op); return buf;
        }
    case T_EOF: return "end of template";
    }
    return "token";
}

static int expect_op(parser *p, int op, const char *what)
{
    char b[80];
    if (!tok_is_op(cur(p), op)) {
        return parse_fail(p, cur(p)->pos, "expected %s, got %s", what,
                          tok_describe(cur(p), b, sizeof(b)));
    }
    p->i++;
    return 0;
}

static int expect_type(parser *p, tok_type t, const char *what)
{
    char b[80];
    if (cur(p)->t != t) {
        return parse_fail(p, cur(p)->pos, "expected %s, got %s", what,
                          tok_describe(cur(p), b, sizeof(b)));
    }
    p->i++;
    return 0;
}

static node *mk(parser *p, node_kind kind, size_t pos)
{
    node *n = arena_alloc(p->mem, sizeof(node));
    if (n == NULL) {
        parse_fail(p, pos, "out of memory");
        return NULL;
    }
    memset(n, 0, sizeof(*n));
    n->kind = kind;
    n->pos = pos;
    n->depth = 1;
    return n;
}

/* Computes the node's height from its children; rejects deep trees. */
static node *fin(parser *p, node *n)
{
    uint32_t d = 0;
    node *kids[5] = { n->a, n->b, n->c, n->d, n->e };
    if (n == NULL) {
        return NULL;
    }
    for (int k = 0; k < 5; k++) {
        if (kids[k] && kids[k]->depth > d) {
            d = kids[k]->depth;
        }
    }
    for (size_t k = 0; k < n->nitems; k++) {
        if (n->items[k] && n->items[k]->depth > d) {
            d = n->items[k]->depth;
        }
    }
    for (size_t k = 0; n->items2 && k < (n->kind == N_DICT ? n->nitems : n->nkw); k++) {
        if (n->items2[k] && n->items2[k]->depth > d) {
            d = n->items2[k]->depth;
        }
    }
    n->depth = d + 1;
    if (n->depth > NODE_MAX_DEPTH) {
        parse_fail(p, n->pos, "expression or block nested too deeply");
        return NULL;
    }
    return n;
}

/* A growable array of node pointers, copied into the arena when done. */
typedef struct {
    node **v;
    size_t n, cap;
} nvec;

static int nv_push(parser *p, nvec *v, node *n)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 8;
        node **nv = realloc(v->v, cap * sizeof(node *));
        if (nv == NULL) {
            return parse_fail(p, cur(p)->pos, "out of memory");
        }
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = n;
    return 0;
}

static node **nv_finish(parser *p, nvec *v)
{
    node **out = NULL;
    if (v->n) {
        out = arena_alloc(p->mem, v->n * sizeof(node *));
        if (out == NULL) {
            parse_fail(p, cur(p)->pos, "out of memory");
        } else {
            memcpy(out, v->v, v->n * sizeof(node *));
        }
    }
    free(v->v);
    v->v = NULL;
    return out;
}

static node *parse_expression(parser *p, int with_condexpr);
static node *parse_tuple(parser *p, int with_condexpr, int explicit_parens,
                         const char *extra_end);
static node *parse_unary(parser *p, int with_filter);
static node *parse_body(parser *p, const char *const *ends, const char **which);

static int enter(parser *p)
{
    if (++p->nesting > PARSE_MAX_NESTING) {
        return parse_fail(p, cur(p)->pos, "template nested too deeply");
    }
    return 0;
}

/* (args, name=value, ...) after the '(' */
static int parse_call_args(parser *p, node *n)
{
    nvec args = { 0 }, kwv = { 0 };
    const char **names = NULL;
    size_t nnames = 0, capn = 0;

    if (expect_op(p, '(', "'('") < 0) {
        return -1;
    }
    while (!tok_is_op(cur(p), ')')) {
        if (args.n + kwv.n > 0 && expect_op(p, ',', "','") < 0) {
            goto fail;
        }
        if (tok_is_op(cur(p), ')')) {
            break;
        }
        if (tok_is_op(cur(p), '*') || tok_is_op(cur(p), OP_POW)) {
            parse_fail(p, cur(p)->pos, "*args and **kwargs in calls are not supported");
            goto fail;
        }
        if (cur(p)->t == T_NAME && tok_is_op(peek(p, 1), '=')) {
            const char *nm = cur(p)->p;
            p->i += 2;
            node *v = parse_expression(p, 1);
            if (v == NULL || nv_push(p, &kwv, v) < 0) {
                goto fail;
            }
            if (nnames == capn) {
                capn = capn ? capn * 2 : 4;
                const char **nn = realloc(names, capn * sizeof(char *));
                if (nn == NULL) {
                    parse_fail(p, cur(p)->pos, "out of memory");
                    goto fail;
                }
                names = nn;
            }
            names[nnames++] = nm;
        } else {
            if (kwv.n) {
                parse_fail(p, cur(p)->pos, "positional argument follows keyword argument");
                goto fail;
            }
            node *v = parse_expression(p, 1);
            if (v == NULL || nv_push(p, &args, v) < 0) {
                goto fail;
            }
        }
    }
    p->i++;
    n->nitems = args.n;
    n->items = nv_finish(p, &args);
    n->nkw = kwv.n;
    n->items2 = nv_finish(p, &kwv);
    if (nnames) {
        n->names = arena_alloc(p->mem, nnames * sizeof(char *));
        if (n->names == NULL) {
            free(names);
            return parse_fail(p, n->pos, "out of memory");
        }
        memcpy(n->names, names, nnames * sizeof(char *));
    }
    free(names);
    return p->failed ? -1 : 0;
fail:
    free(args.v);
    free(kwv.v);
    free(names);
    return -1;
}

static node *parse_primary(parser *p)
{
    const token *t = cur(p);
    node *n;
    char b[80];

    if (enter(p) < 0) {
        return NULL;
    }
    switch (t->t) {
    case T_NAME:
        p->i++;
        if (!strcmp(t->p, "true") || !strcmp(t->p, "True")
            || !strcmp(t->p, "false") || !strcmp(t->p, "False")) {
            n = mk(p, N_CONST, t->pos);
            if (n) {
                n->value = jv_bool(t->p[0] == 't' || t->p[0] == 'T');
            }
        } else if (!strcmp(t->p, "none") || !strcmp(t->p, "None")) {
            n = mk(p, N_CONST, t->pos);
            if (n) {
                n->value = JV_NONE_V;
            }
        } else {
            n = mk(p, N_NAME, t->pos);
            if (n) {
                n->name = t->p;
            }
        }
        break;
    case T_STRING: {
        /* adjacent literals concatenate */
        size_t total = 0, j = p->i;
        while (j < p->ntoks && p->toks[j].t == T_STRING) {
            total += p->toks[j++].n;
        }
        char *s = arena_alloc(p->mem, total + 1);
        n = mk(p, N_CONST, t->pos);
        if (s == NULL || n == NULL) {
            parse_fail(p, t->pos, "out of memory");
            n = NULL;
            break;
        }
        size_t o = 0;
        while (p->i < j) {
            memcpy(s + o, p->toks[p->i].p, p->toks[p->i].n);
            o += p->toks[p->i].n;
            p->i++;
        }
        s[o] = '\0';
        n->value = jv_str(s, o);
        break;
    }
    case T_INT:
    case T_FLOAT:
        p->i++;
        n = mk(p, N_CONST, t->pos);
        if (n) {
            n->value = t->t == T_INT ? jv_int(t->i) : jv_float(t->f);
        }
        break;
    case T_OP:
        if (t->op == '(') {
            p->i++;
            n = parse_tuple(p, 1, 1, NULL);
            if (n && expect_op(p, ')', "')'") < 0) {
                n = NULL;
            }
            break;
        }
        if (t->op == '[') {
            nvec items = { 0 };
            p->i++;
            while (!tok_is_op(cur(p), ']')) {
                if (items.n && expect_op(p, ',', "','") < 0) {
                    break;
                }
                if (tok_is_op(cur(p), ']')) {
                    break;
                }
                node *e = parse_expression(p, 1);
                if (e == NULL || nv_push(p, &items, e) < 0) {
                    break;
                }
            }
            if (p->failed || expect_op(p, ']', "']'") < 0) {
                free(items.v);
                n = NULL;
                break;
            }
            n = mk(p, N_LIST, t->pos);
            if (n) {
                n->nitems = items.n;
                n->items = nv_finish(p, &items);
            } else {
                free(items.v);
            }
            break;
        }
        if (t->op == '{') {
            nvec keys = { 0 }, vals = { 0 };
            p->i++;
            while (!tok_is_op(cur(p), '}')) {
                if (keys.n && expect_op(p, ',', "','") < 0) {
                    break;
                }
                if (tok_is_op(cur(p), '}')) {
                    break;
                }
                node *k = parse_expression(p, 1);
                if (k == NULL || expect_op(p, ':', "':'") < 0) {
                    break;
                }
                node *v = parse_expression(p, 1);
                if (v == NULL || nv_push(p, &keys, k) < 0 || nv_push(p, &vals, v) < 0) {
                    break;
                }
            }
            if (p->failed || expect_op(p, '}', "'}'") < 0) {
                free(keys.v);
                free(vals.v);
                n = NULL;
                break;
            }
            n = mk(p, N_DICT, t->pos);
            if (n) {
                n->nitems = keys.n;
                n->items = nv_finish(p, &keys);
                n->items2 = nv_finish(p, &vals);
            } else {
                free(keys.v);
                free(vals.v);
            }
            break;
        }
        /* fall through */
    default:
        parse_fail(p, t->pos, "unexpected %s", tok_describe(t, b, sizeof(b)));
        n = NULL;
    }
    p->nesting--;
    return p->failed ? NULL : fin(p, n);
}

/* [ subscript or slice ] after the '[' */
static node *parse_subscript(parser *p, node *obj, size_t pos)
{
    node *parts[3] = { NULL, NULL, NULL };
    int is_slice = 0;

    if (!tok_is_op(cur(p), ':')) {
        parts[0] = parse_expression(p, 1);
        if (parts[0] == NULL) {
            return NULL;
        }
    }
    if (tok_is_op(cur(p), ':')) {
        is_slice = 1;
        p->i++;
        if (!tok_is_op(cur(p), ']') && !tok_is_op(cur(p), ':') && !tok_is_op(cur(p), ',')) {
            if ((parts[1] = parse_expression(p, 1)) == NULL) {
                return NULL;
            }
        }
        if (tok_is_op(cur(p), ':')) {
            p->i++;
            if (!tok_is_op(cur(p), ']') && !tok_is_op(cur(p), ',')) {
                if ((parts[2] = parse_expression(p, 1)) == NULL) {
                    return NULL;
                }
            }
        }
    }
    if (expect_op(p, ']', "']'") < 0) {
        return NULL;
    }
    node *n = mk(p, is_slice ? N_SLICE : N_GETITEM, pos);
    if (n == NULL) {
        return NULL;
    }
    n->a = obj;
    if (is_slice) {
        n->b = parts[0];
        n->c = parts[1];
        n->d = parts[2];
    } else {
        n->b = parts[0];
    }
    return fin(p, n);
}

static node *parse_postfix(parser *p, node *n)
{
    while (n) {
        const token *t = cur(p);
        if (tok_is_op(t, '.')) {
            p->i++;
            const token *a = cur(p);
            if (a->t == T_NAME) {
                p->i++;
                node *g = mk(p, N_GETATTR, t->pos);
                if (g == NULL) {
                    return NULL;
                }
                g->a = n;
                g->name = a->p;
                n = fin(p, g);
            } else if (a->t == T_INT) {
                p->i++;
                node *k = mk(p, N_CONST, a->pos), *g = mk(p, N_GETITEM, t->pos);
                if (k == NULL || g == NULL) {
                    return NULL;
                }
                k->value = jv_int(a->i);
                g->a = n;
                g->b = k;
                n = fin(p, g);
            } else {
                char b[80];
                parse_fail(p, a->pos, "expected name or number after '.', got %s",
                           tok_describe(a, b, sizeof(b)));
                return NULL;
            }
        } else if (tok_is_op(t, '[')) {
            p->i++;
            n = parse_subscript(p, n, t->pos);
        } else if (tok_is_op(t, '(')) {
            node *c = mk(p, N_CALL, t->pos);
            if (c == NULL) {
                return NULL;
            }
            c->a = n;
            if (parse_call_args(p, c) < 0) {
                return NULL;
            }
            n = fin(p, c);
        } else {
            break;
        }
    }
    return n;
}

/* dotted name of a filter or test */
static const char *parse_dotted_name(parser *p, size_t *len)
{
    const token *t = cur(p);
    char b[80];
    if (t->t != T_NAME) {
        parse_fail(p, t->pos, "expected a name, got %s", tok_describe(t, b, sizeof(b)));
        return NULL;
    }
    p->i++;
    if (!tok_is_op(cur(p), '.')) {
        *len = t->n;
        return t->p;
    }
    /* dotted names are valid syntax but name no builtin */
    size_t n = t->n;
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", t->p);
    while (tok_is_op(cur(p), '.') && peek(p, 1)->t == T_NAME) {
        n = strlen(buf);
        snprintf(buf + n, sizeof(buf) - n, ".%s", peek(p, 1)->p);
        p->i += 2;
    }
    *len = strlen(buf);
    return arena_strndup(p->mem, buf, *len);
}

static node *parse_filter_expr(parser *p, node *n)
{
    while (n) {
        const token *t = cur(p);
        if (tok_is_op(t, '|')) {
            p->i++;
            size_t pos = cur(p)->pos, len;
            const char *name = parse_dotted_name(p, &len);
            if (name == NULL) {
                return NULL;
            }
            /* Jinja rejects an unknown filter when compiling, except inside
             * an if or a conditional expression, where only reaching it fails */
            int fid = find_filter(name, len);
            if (fid < 0 && !p->soft) {
                parse_fail(p, pos, "no filter named '%s'", name);
                return NULL;
            }
            node *f = mk(p, N_FILTER, pos);
            if (f == NULL) {
                return NULL;
            }
            f->a = n;
            f->name = name;
            f->fid = fid;
            if (tok_is_op(cur(p), '(') && parse_call_args(p, f) < 0) {
                return NULL;
            }
            n = fin(p, f);
        } else if (tok_is_name(t, "is")) {
            p->i++;
            int negated = 0;
            if (tok_is_name(cur(p), "not")) {
                negated = 1;
                p->i++;
            }
            size_t pos = cur(p)->pos, len;
            const char *name = parse_dotted_name(p, &len);
            if (name == NULL) {
                return NULL;
            }
            int tid = find_test(name, len);
            if (tid < 0 && !p->soft) {
                parse_fail(p, pos, "no test named '%s'", name);
                return NULL;
            }
            node *ts = mk(p, N_TEST, pos);
            if (ts == NULL) {
                return NULL;
            }
            ts->a = n;
            ts->name = name;
            ts->fid = tid;
            ts->op = negated;
            const token *a = cur(p);
            if (tok_is_op(a, '(')) {
                if (parse_call_args(p, ts) < 0) {
                    return NULL;
                }
            } else if ((a->t == T_NAME || a->t == T_STRING || a->t == T_INT
                        || a->t == T_FLOAT || tok_is_op(a, '(') || tok_is_op(a, '[')
                        || tok_is_op(a, '{'))
                       && !tok_is_name(a, "else") && !tok_is_name(a, "or")
                       && !tok_is_name(a, "and")) {
                if (tok_is_name(a, "is")) {
                    parse_fail(p, a->pos, "you cannot chain multiple tests with is");
                    return NULL;
                }
                node *arg = parse_postfix(p, parse_primary(p));
                if (arg == NULL) {
                    return NULL;
                }
                ts->items = arena_alloc(p->mem, sizeof(node *));
                if (ts->items == NULL) {
                    parse_fail(p, a->pos, "out of memory");
                    return NULL;
                }
                ts->items[0] = arg;
                ts->nitems = 1;
            }
            n = fin(p, ts);
        } else if (tok_is_op(t, '(')) {
            node *c = mk(p, N_CALL, t->pos);
            if (c == NULL) {
                return NULL;
            }
            c->a = n;
            if (parse_call_args(p, c) < 0) {
                return NULL;
            }
            n = fin(p, c);
        } else {
            break;
        }
    }
    return n;
}

static node *parse_unary(parser *p, int with_filter)
{
    const token *t = cur(p);
    node *n;
    if (enter(p) < 0) {
        return NULL;
    }
    if (tok_is_op(t, '-') || tok_is_op(t, '+')) {
        p->i++;
        n = mk(p, tok_is_op(t, '-') ? N_NEG : N_POS, t->pos);
        if (n) {
            n->a = parse_unary(p, 0);
            n = n->a ? fin(p, n) : NULL;
        }
    } else {
        n = parse_primary(p);
    }
    n = parse_postfix(p, n);
    if (with_filter) {
        n = parse_filter_expr(p, n);
    }
    p->nesting--;
    return p->failed ? NULL : n;
}

static node *mk_binop(parser *p, node_kind kind, int op, size_t pos, node *l, node *r)
{
    if (l == NULL || r == NULL) {
        return NULL;
    }
    node *n = mk(p, kind, pos);
    if (n == NULL) {
        return NULL;
    }
    n->op = op;
    n->a = l;
    n->b = r;
    return fin(p, n);
}

static node *parse_pow(parser *p)
{
    node *l = parse_unary(p, 1);
    while (l && tok_is_op(cur(p), OP_POW)) {
        size_t pos = cur(p)->pos;
        p->i++;
        l = mk_binop(p, N_BINOP, OP_POW, pos, l, parse_unary(p, 1));
    }
    return l;
}

static node *parse_math2(parser *p)
{
    node *l = parse_pow(p);
    while (l) {
        const token *t = cur(p);
        if (t->t != T_OP || (t->op != '*' && t->op != '/' && t->op != OP_FLOORDIV && t->op != '%')) {
            break;
        }
        p->i++;
        l = mk_binop(p, N_BINOP, t->op, t->pos, l, parse_pow(p));
    }
    return l;
}

static node *parse_concat(parser *p)
{
    node *first = parse_math2(p);
    if (first == NULL || !tok_is_op(cur(p), '~')) {
        return first;
    }
    nvec v = { 0 };
    size_t pos = cur(p)->pos;
    if (nv_push(p, &v, first) < 0) {
        return NULL;
    }
    while (tok_is_op(cur(p), '~')) {
        p->i++;
        node *e = parse_math2(p);
        if (e == NULL || nv_push(p, &v, e) < 0) {
            free(v.v);
            return NULL;
        }
    }
    node *n = mk(p, N_CONCAT, pos);
    if (n == NULL) {
        free(v.v);
        return NULL;
    }
    n->nitems = v.n;
    n->items = nv_finish(p, &v);
    return fin(p, n);
}

static node *parse_math1(parser *p)
{
    node *l = parse_concat(p);
    while (l && (tok_is_op(cur(p), '+') || tok_is_op(cur(p), '-'))) {
        const token *t = cur(p);
        p->i++;
        l = mk_binop(p, N_BINOP, t->op, t->pos, l, parse_concat(p));
    }
    return l;
}

enum { CMP_EQ, CMP_NE, CMP_LT, CMP_LE, CMP_GT, CMP_GE, CMP_IN, CMP_NOTIN };

static node *parse_compare(parser *p)
{
    node *first = parse_math1(p);
    nvec ops = { 0 };
    int opv[64];
    size_t pos = cur(p)->pos;

    while (first) {
        const token *t = cur(p);
        int op = -1;
        if (t->t == T_OP) {
            switch (t->op) {
            case OP_EQ: op = CMP_EQ; break;
            case OP_NE: op = CMP_NE; break;
            case '<': op = CMP_LT; break;
            case OP_LE: op = CMP_LE; break;
            case '>': op = CMP_GT; break;
            case OP_GE: op = CMP_GE; break;
            default: break;
            }
            if (op >= 0) {
                p->i++;
            }
        } else if (tok_is_name(t, "in")) {
            op = CMP_IN;
            p->i++;
        } else if (tok_is_name(t, "not") && tok_is_name(peek(p, 1), "in")) {
            op = CMP_NOTIN;
            p->i += 2;
        }
        if (op < 0) {
            break;
        }
        if (ops.n == 64) {
            free(ops.v);
            parse_fail(p, t->pos, "too many chained comparisons");
            return NULL;
        }
        node *r = parse_math1(p);
        if (r == NULL || nv_push(p, &ops, r) < 0) {
            free(ops.v);
            return NULL;
        }
        opv[ops.n - 1] = op;
    }
    if (first == NULL || ops.n == 0) {
        free(ops.v);
        return first;
    }
    node *n = mk(p, N_COMPARE, pos);
    if (n == NULL) {
        free(ops.v);
        return NULL;
    }
    n->a = first;
    n->nitems = ops.n;
    n->ops = arena_alloc(p->mem, ops.n * sizeof(int));
    if (n->ops == NULL) {
        free(ops.v);
        parse_fail(p, pos, "out of memory");
        return NULL;
    }
    memcpy(n->ops, opv, ops.n * sizeof(int));
    n->items = nv_finish(p, &ops);
    return fin(p, n);
}

static node *parse_not(parser *p)
{
    if (tok_is_name(cur(p), "not")) {
        size_t pos = cur(p)->pos;
        p->i++;
        if (enter(p) < 0) {
            return NULL;
        }
        node *inner = parse_not(p);
        p->nesting--;
        if (inner == NULL) {
            return NULL;
        }
        node *n = mk(p, N_NOT, pos);
        if (n == NULL) {
            return NULL;
        }
        n->a = inner;
        return fin(p, n);
    }
    return parse_compare(p);
}

static node *parse_and(parser *p)
{
    node *l = parse_not(p);
    while (l && tok_is_name(cur(p), "and")) {
        size_t pos = cur(p)->pos;
        p->i++;
        l = mk_binop(p, N_AND, 0, pos, l, parse_not(p));
    }
    return l;
}

static node *parse_or(parser *p)
{
    node *l = parse_and(p);
    while (l && tok_is_name(cur(p), "or")) {
        size_t pos = cur(p)->pos;
        p->i++;
        l = mk_binop(p, N_OR, 0, pos, l, parse_and(p));
    }
    return l;
}

static node *parse_condexpr(parser *p)
{
    node *e1;
    /* the first branch is only known to be conditional once `if` follows:
     * parse it soft when an `if` comes later in this expression */
    int was_soft = p->soft;
    int lookahead_if = 0;
    for (size_t j = p->i, depth = 0; j < p->ntoks; j++) {
        const token *t = &p->toks[j];
        if (t->t == T_VAR_END || t->t == T_BLOCK_END || t->t == T_EOF) {
            break;
        }
        if (tok_is_op(t, '(') || tok_is_op(t, '[') || tok_is_op(t, '{')) {
            depth++;
        } else if (tok_is_op(t, ')') || tok_is_op(t, ']') || tok_is_op(t, '}')) {
            if (depth == 0) {
                break;
            }
            depth--;
        } else if (depth == 0 && tok_is_name(t, "if")) {
            lookahead_if = 1;
            break;
        }
    }
    if (lookahead_if) {
        p->soft++;
    }
    e1 = parse_or(p);
    while (e1 && tok_is_name(cur(p), "if")) {
        size_t pos = cur(p)->pos;
        p->i++;
        if (!lookahead_if) {
            p->soft++;
            lookahead_if = 1;
        }
        node *cond = parse_or(p), *e3 = NULL;
        if (cond == NULL) {
            return NULL;
        }
        if (tok_is_name(cur(p), "else")) {
            p->i++;
            if (enter(p) < 0) {
                return NULL;
            }
            e3 = parse_condexpr(p);
            p->nesting--;
            if (e3 == NULL) {
                return NULL;
            }
        }
        node *n = mk(p, N_CONDEXPR, pos);
        if (n == NULL) {
            return NULL;
        }
        n->a = cond;
        n->b = e1;
        n->c = e3;
        e1 = fin(p, n);
    }
    p->soft = was_soft;
    return e1;
}

static node *parse_expression(parser *p, int with_condexpr)
{
    if (enter(p) < 0) {
        return NULL;
    }
    node *n = with_condexpr ? parse_condexpr(p) : parse_or(p);
    p->nesting--;
    return p->failed ? NULL : n;
}

static int tuple_end(parser *p, const char *extra_end)
{
    const token *t = cur(p);
    return t->t == T_VAR_END || t->t == T_BLOCK_END || t->t == T_EOF
           || tok_is_op(t, ')') || (extra_end && tok_is_name(t, extra_end));
}

static node *parse_tuple(parser *p, int with_condexpr, int explicit_parens,
                         const char *extra_end)
{
    nvec items = { 0 };
    int is_tuple = 0;
    size_t pos = cur(p)->pos;

    while (1) {
        if (items.n && expect_op(p, ',', "','") < 0) {
            free(items.v);
            return NULL;
        }
        if (tuple_end(p, extra_end)) {
            break;
        }
        node *e = parse_expression(p, with_condexpr);
        if (e == NULL || nv_push(p, &items, e) < 0) {
            free(items.v);
            return NULL;
        }
        if (tok_is_op(cur(p), ',')) {
            is_tuple = 1;
        } else {
            break;
        }
    }
    if (!is_tuple) {
        if (items.n) {
            node *only = items.v[0];
            free(items.v);
            return only;
        }
        if (!explicit_parens) {
            char b[80];
            free(items.v);
            parse_fail(p, cur(p)->pos, "expected an expression, got %s",
                       tok_describe(cur(p), b, sizeof(b)));
            return NULL;
        }
    }
    node *n = mk(p, N_TUPLE, pos);
    if (n == NULL) {
        free(items.v);
        return NULL;
    }
    n->nitems = items.n;
    n->items = nv_finish(p, &items);
    return fin(p, n);
}

/* for / set targets: a name, names separated by commas, or ns.attr */
static node *parse_assign_target(parser *p, int allow_attr)
{
    nvec names = { 0 };
    size_t pos = cur(p)->pos;
    int parens = 0;
    char b[80];

    if (tok_is_op(cur(p), '(')) {
        parens = 1;
        p->i++;
    }
    while (1) {
        const token *t = cur(p);
        if (t->t != T_NAME) {
            free(names.v);
            parse_fail(p, t->pos, "expected a variable name, got %s",
                       tok_describe(t, b, sizeof(b)));
            return NULL;
        }
        if (!strcmp(t->p, "true") || !strcmp(t->p, "false") || !strcmp(t->p, "none")
            || !strcmp(t->p, "True") || !strcmp(t->p, "False") || !strcmp(t->p, "None")) {
            free(names.v);
            parse_fail(p, t->pos, "cannot assign to '%s'", t->p);
            return NULL;
        }
        p->i++;
        node *n = mk(p, N_NAME, t->pos);
        if (n == NULL) {
            free(names.v);
            return NULL;
        }
        n->name = t->p;
        if (allow_attr && !parens && names.n == 0 && tok_is_op(cur(p), '.')
            && peek(p, 1)->t == T_NAME) {
            node *g = mk(p, N_GETATTR, cur(p)->pos);
            if (g == NULL) {
                return NULL;
            }
            g->a = n;
            g->name = peek(p, 1)->p;
            p->i += 2;
            return fin(p, g);
        }
        if (nv_push(p, &names, n) < 0) {
            return NULL;
        }
        if (!tok_is_op(cur(p), ',')) {
            break;
        }
        p->i++;
        if (parens && tok_is_op(cur(p), ')')) {
            break;
        }
        if (!parens && cur(p)->t != T_NAME) {
            break;
        }
    }
    if (parens && expect_op(p, ')', "')'") < 0) {
        free(names.v);
        return NULL;
    }
    if (names.n == 1 && !parens) {
        node *only = names.v[0];
        free(names.v);
        return only;
    }
    node *tn = mk(p, N_TUPLE, pos);
    if (tn == NULL) {
        free(names.v);
        return NULL;
    }
    tn->nitems = names.n;
    tn->items = nv_finish(p, &names);
    return fin(p, tn);
}

static node *parse_for(parser *p, size_t pos)
{
    static const char *const ends_body[] = { "endfor", "else", NULL };
    static const char *const ends_else[] = { "endfor", NULL };
    node *n = mk(p, N_FOR, pos);
    const char *which = NULL;

    if (n == NULL || (n->a = parse_assign_target(p, 0)) == NULL) {
        return NULL;
    }
    if (!tok_is_name(cur(p), "in")) {
        char b[80];
        parse_fail(p, cur(p)->pos, "expected 'in', got %s", tok_describe(cur(p), b, sizeof(b)));
        return NULL;
    }
    p->i++;
    if ((n->b = parse_tuple(p, 0, 0, "recursive")) == NULL) {
        return NULL;
    }
    if (tok_is_name(cur(p), "if")) {
        p->i++;
        if ((n->c = parse_expression(p, 1)) == NULL) {
            return NULL;
        }
    }
    if (tok_is_name(cur(p), "recursive")) {
        parse_fail(p, cur(p)->pos, "recursive loops are not supported");
        return NULL;
    }
    if (expect_type(p, T_BLOCK_END, "end of statement block") < 0) {
        return NULL;
    }
    /* a loop body is a new frame: not soft even inside an if */
    int was_soft = p->soft;
    p->soft = 0;
    p->loop_depth++;
    n->d = parse_body(p, ends_body, &which);
    p->loop_depth--;
    p->soft = was_soft;
    if (n->d == NULL) {
        return NULL;
    }
    if (!strcmp(which, "else")) {
        if (expect_type(p, T_BLOCK_END, "end of statement block") < 0
            || (n->e = parse_body(p, ends_else, &which)) == NULL) {
            return NULL;
        }
    }
    if (expect_type(p, T_BLOCK_END, "end of statement block") < 0) {
        return NULL;
    }
    return fin(p, n);
}

static node *parse_if_body(parser *p, node *n);

/* An if statement: its test and branches form a "soft" frame, where an
 * unknown filter or test fails only when reached (as in Jinja). */
static node *parse_if(parser *p, size_t pos)
{
    node *n = mk(p, N_IF, pos);
    int was_soft = p->soft;

    if (n == NULL) {
        return NULL;
    }
    p->soft = 1;
    n = parse_if_body(p, n);
    p->soft = was_soft;
    return n;
}

static node *parse_if_body(parser *p, node *n)
{
    static const char *const ends[] = { "elif", "else", "endif", NULL };
    static const char *const ends_else[] = { "endif", NULL };
    const char *which = NULL;

    if ((n->a = parse_tuple(p, 0, 0, NULL)) == NULL
        || expect_type(p, T_BLOCK_END, "end of statement block") < 0
        || (n->d = parse_body(p, ends, &which)) == NULL) {
        return NULL;
    }
    if (!strcmp(which, "elif")) {
        size_t epos = p->toks[p->i - 1].pos;
        if (enter(p) < 0 || (n->e = parse_if(p, epos)) == NULL) {
            return NULL;
        }
        p->nesting--;
        return fin(p, n);   /* the nested if consumed endif */
    }
    if (!strcmp(which, "else")) {
        if (expect_type(p, T_BLOCK_END, "end of statement block") < 0
            || (n->e = parse_body(p, ends_else, &which)) == NULL) {
            return NULL;
        }
    }
    if (expect_type(p, T_BLOCK_END, "end of statement block") < 0) {
        return NULL;
    }
    return fin(p, n);
}

static node *parse_set(parser *p, size_t pos)
{
    node *target = parse_assign_target(p, 1);
    if (target == NULL) {
        return NULL;
    }
    if (tok_is_op(cur(p), '=')) {
        p->i++;
        node *n = mk(p, N_SET, pos);
        if (n == NULL || (n->b = parse_tuple(p, 1, 0, NULL)) == NULL
            || expect_type(p, T_BLOCK_END, "end of statement block") < 0) {
            return NULL;
        }
        n->a = target;
        return fin(p, n);
    }
    if (tok_is_op(cur(p), '|')) {
        parse_fail(p, cur(p)->pos, "filters on set blocks are not supported");
        return NULL;
    }
    if (target->kind != N_NAME) {
        parse_fail(p, target->pos, "a set block assigns to one plain name");
        return NULL;
    }
    static const char *const ends[] = { "endset", NULL };
    const char *which;
    node *n = mk(p, N_SET_BLOCK, pos);
    if (n == NULL || expect_type(p, T_BLOCK_END, "end of statement block") < 0
        || (n->d = parse_body(p, ends, &which)) == NULL
        || expect_type(p, T_BLOCK_END, "end of statement block") < 0) {
        return NULL;
    }
    n->a = target;
    return fin(p, n);
}

/* Does the subtree reference the variable `name` (varargs/kwargs)? */
static int uses_name(const node *n, const char *name)
{
    if (n == NULL) {
        return 0;
    }
    if (n->kind == N_NAME && !strcmp(n->name, name)) {
        return 1;
    }
    if (n->kind == N_MACRO) {
        return 0;   /* a nested macro has its own */
    }
    if (uses_name(n->a, name) || uses_name(n->b, name) || uses_name(n->c, name)
        || uses_name(n->d, name) || uses_name(n->e, name)) {
        return 1;
    }
    for (size_t i = 0; i < n->nitems; i++) {
        if (uses_name(n->items[i], name)) {
            return 1;
        }
    }
    size_t n2 = n->kind == N_DICT ? n->nitems : n->nkw;
    for (size_t i = 0; n->items2 && i < n2; i++) {
        if (uses_name(n->items2[i], name)) {
            return 1;
        }
    }
    return 0;
}

/* {% macro name(a, b=default) %} body {% endmacro %}: parameters in
 * names[], defaults in items2[] (NULL where none), the body in d. */
static node *parse_macro(parser *p, size_t pos)
{
    static const char *const ends[] = { "endmacro", NULL };
    const char *which;
    char b[80];
    node *n = mk(p, N_MACRO, pos);
    nvec defaults = { 0 };
    const char **names = NULL;
    size_t nparams = 0;

    if (n == NULL) {
        return NULL;
    }
    if (cur(p)->t != T_NAME) {
        parse_fail(p, cur(p)->pos, "expected a macro name, got %s", tok_describe(cur(p), b, sizeof(b)));
        return NULL;
    }
    n->name = cur(p)->p;
    p->i++;
    if (expect_op(p, '(', "'('") < 0) {
        return NULL;
    }
    while (!tok_is_op(cur(p), ')')) {
        if (nparams && expect_op(p, ',', "','") < 0) {
            goto fail;
        }
        if (tok_is_op(cur(p), ')')) {
            break;
        }
        if (cur(p)->t != T_NAME) {
            parse_fail(p, cur(p)->pos, "expected a parameter name, got %s",
                       tok_describe(cur(p), b, sizeof(b)));
            goto fail;
        }
        const char **nn = realloc(names, (nparams + 1) * sizeof(char *));
        if (nn == NULL) {
            parse_fail(p, cur(p)->pos, "out of memory");
            goto fail;
        }
        names = nn;
        names[nparams++] = cur(p)->p;
        p->i++;
        node *dflt = NULL;
        if (tok_is_op(cur(p), '=')) {
            p->i++;
            if ((dflt = parse_expression(p, 1)) == NULL) {
                goto fail;
            }
        } else if (defaults.n && defaults.v[defaults.n - 1] != NULL) {
            parse_fail(p, cur(p)->pos, "non-default argument follows default argument");
            goto fail;
        }
        if (nv_push(p, &defaults, dflt) < 0) {
            goto fail;
        }
    }
    p->i++;
    if (expect_type(p, T_BLOCK_END, "end of statement block") < 0) {
        goto fail;
    }
    /* the body is a new frame: not soft, not inside a loop */
    int was_soft = p->soft, was_loop = p->loop_depth;
    p->soft = 0;
    p->loop_depth = 0;
    n->d = parse_body(p, ends, &which);
    p->soft = was_soft;
    p->loop_depth = was_loop;
    if (n->d == NULL || expect_type(p, T_BLOCK_END, "end of statement block") < 0) {
        goto fail;
    }
    n->nkw = nparams;
    n->items2 = nv_finish(p, &defaults);
    if (nparams) {
        n->names = arena_alloc(p->mem, nparams * sizeof(char *));
        if (n->names == NULL) {
            free(names);
            parse_fail(p, pos, "out of memory");
            return NULL;
        }
        memcpy(n->names, names, nparams * sizeof(char *));
    }
    free(names);
    n->op = (uses_name(n->d, "varargs") ? 1 : 0) | (uses_name(n->d, "kwargs") ? 2 : 0);
    return p->failed ? NULL : fin(p, n);
fail:
    free(defaults.v);
    free(names);
    return NULL;
}

static node *parse_statement(parser *p)
{
    const token *t = cur(p);
    char b[80];
    node *n = NULL;

    if (t->t != T_NAME) {
        parse_fail(p, t->pos, "expected a tag name, got %s", tok_describe(t, b, sizeof(b)));
        return NULL;
    }
    if (enter(p) < 0) {
        return NULL;
    }
    size_t pos = p->toks[p->i - 1].pos;    /* the '{%' */
    p->i++;
    if (!strcmp(t->p, "for")) {
        n = parse_for(p, pos);
    } else if (!strcmp(t->p, "if")) {
        n = parse_if(p, pos);
    } else if (!strcmp(t->p, "set")) {
        n = parse_set(p, pos);
    } else if (!strcmp(t->p, "break") || !strcmp(t->p, "continue")) {
        if (p->loop_depth == 0) {
            parse_fail(p, t->pos, "'%s' outside of a loop", t->p);
        } else if ((n = mk(p, t->p[0] == 'b' ? N_BREAK : N_CONTINUE, pos)) != NULL
                   && expect_type(p, T_BLOCK_END, "end of statement block") < 0) {
            n = NULL;
        }
    } else if (!strcmp(t->p, "generation")) {
        /* transformers' assistant-mask extension: renders its body */
        static const char *const ends[] = { "endgeneration", NULL };
        const char *which;
        if (expect_type(p, T_BLOCK_END, "end of statement block") == 0) {
            n = parse_body(p, ends, &which);
            if (n && expect_type(p, T_BLOCK_END, "end of statement block") < 0) {
                n = NULL;
            }
        }
    } else if (!strcmp(t->p, "macro")) {
        n = parse_macro(p, pos);
    } else if (!strcmp(t->p, "call") || !strcmp(t->p, "filter")
               || !strcmp(t->p, "include") || !strcmp(t->p, "import")
               || !strcmp(t->p, "from") || !strcmp(t->p, "extends")
               || !strcmp(t->p, "block") || !strcmp(t->p, "with")
               || !strcmp(t->p, "autoescape") || !strcmp(t->p, "do")) {
        parse_fail(p, t->pos, "the '%s' tag is not supported", t->p);
    } else {
        parse_fail(p, t->pos, "unknown tag '%s'", t->p);
    }
    p->nesting--;
    return p->failed ? NULL : n;
}

/*
 * Statements up to one of the end tags (NULL: up to the end of the
 * template).  *which gets the end tag's name; the parser stands after it.
 */
static node *parse_body(parser *p, const char *const *ends, const char **which)
{
    nvec stmts = { 0 };
    size_t pos = cur(p)->pos;

    while (!p->failed) {
        const token *t = cur(p);
        if (t->t == T_EOF) {
            if (ends) {
                char want[128] = "";
                for (size_t k = 0; ends[k]; k++) {
                    size_t l = strlen(want);
                    snprintf(want + l, sizeof(want) - l, "%s'%s'",
                             k == 0 ? "" : ends[k + 1] ? ", " : " or ", ends[k]);
                }
                parse_fail(p, t->pos, "unexpected end of template, expected %s", want);
                break;
            }
            *which = NULL;
            goto done;
        }
        if (t->t == T_DATA) {
            node *n = mk(p, N_TEXT, t->pos);
            if (n == NULL) {
                break;
            }
            n->value = jv_str(t->p, t->n);
            p->i++;
            if (nv_push(p, &stmts, n) < 0) {
                break;
            }
            continue;
        }
        if (t->t == T_VAR_BEGIN) {
            p->i++;
            node *n = mk(p, N_OUTPUT, t->pos);
            if (n == NULL || (n->a = parse_tuple(p, 1, 0, NULL)) == NULL
                || expect_type(p, T_VAR_END, "end of print statement") < 0
                || nv_push(p, &stmts, fin(p, n)) < 0) {
                break;
            }
            continue;
        }
        if (t->t == T_BLOCK_BEGIN) {
            const token *nm = peek(p, 1);
            int is_end = 0;
            for (size_t k = 0; ends && ends[k]; k++) {
                if (tok_is_name(nm, ends[k])) {
                    *which = ends[k];
                    is_end = 1;
                }
            }
            if (is_end) {
                p->i += 2;
                goto done;
            }
            if (nm->t == T_NAME && (!strncmp(nm->p, "end", 3) || !strcmp(nm->p, "elif")
                                    || !strcmp(nm->p, "else"))) {
                if (ends) {
                    parse_fail(p, nm->pos, "unexpected '%s', expected '%s'", nm->p, ends[0]);
                } else {
                    parse_fail(p, nm->pos, "unexpected '%s'", nm->p);
                }
                break;
            }
            p->i++;
            node *n = parse_statement(p);
            if (n == NULL || nv_push(p, &stmts, n) < 0) {
                break;
            }
            continue;
        }
        char b[80];
        parse_fail(p, t->pos, "unexpected %s", tok_describe(t, b, sizeof(b)));
    }
    free(stmts.v);
    return NULL;
done:;
    node *body = mk(p, N_BODY, pos);
    if (body == NULL) {
        free(stmts.v);
        return NULL;
    }
    body->nitems = stmts.n;
    body->items = nv_finish(p, &stmts);
    return p->failed ? NULL : fin(p, body);
}

jinja_template *jinja_parse(const char *source, size_t len, char *err, size_t errlen)
{
    jinja_template *t = calloc(1, sizeof(*t));
    char dummy[8];

    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    if (t == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    size_t ok = u8_valid_prefix(source, len);
    if (ok != len) {
        size_t line, col;
        source_position(source, len, ok, &line, &col);
        snprintf(err, errlen, "line %zu, column %zu: invalid UTF-8 in template", line, col);
        free(t);
        return NULL;
    }
    /* Jinja turns \r\n and \r into \n and drops one trailing newline
     * (keep_trailing_newline is off). */
    t->src = malloc(len + 1);
    if (t->src == NULL) {
        free(t);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (source[i] == '\r') {
            t->src[n++] = '\n';
            if (i + 1 < len && source[i + 1] == '\n') {
                i++;
            }
        } else {
            t->src[n++] = source[i];
        }
    }
    if (n > 0 && t->src[n - 1] == '\n') {
        n--;
    }
    t->src[n] = '\0';
    t->src_len = n;

    lexer lx = { t->src, n, NULL, 0, 0, err, errlen, &t->mem };
    if (lex_all(&lx) < 0 || lex_push(&lx, T_EOF, n) == NULL) {
        if (!err[0]) {
            snprintf(err, errlen, "out of memory");
        }
        free(lx.toks);
        jinja_template_free(t);
        return NULL;
    }
    parser p = { &lx, lx.toks, lx.ntoks, 0, &t->mem, 0, 0, 0, 0 };
    const char *which = NULL;
    t->body = parse_body(&p, NULL, &which);
    free(lx.toks);
    if (t->body == NULL) {
        if (!err[0]) {
            snprintf(err, errlen, "out of memory");
        }
        jinja_template_free(t);
        return NULL;
    }
    return t;
}

void jinja_template_free(jinja_template *t)
{
    if (t) {
        arena_free_all(&t->mem);
        free(t->src);
        free(t);
    }
}

/* ------------------------------------------------------------------ */
/* render state                                                        */
/* ------------------------------------------------------------------ */

typedef struct scope scope;
struct scope {
    scope *parent;
    size_t n, cap;
    const char **names;
    jv *vals;
};

/* A macro closes over the scope it was defined in (late binding, as the
 * Python closures Jinja compiles to).  Scopes live in the render arena, so
 * the closure outlives the block that defined it. */
struct jmacro {
    const struct node *def;
    struct scope *closure;
};

#define MACRO_MAX_DEPTH 64

#define EVAL_MAX_DEPTH 600

struct jinja_render {
    arena mem;
    int macro_depth;
    int depth;              /* eval/exec recursion */
    jinja_limits lim;
    jdict *vars;
    int used;
    /* while rendering */
    const jinja_template *t;
    sbuf *out;              /* where text goes: main_out or a set block */
    sbuf main_out;
    uint64_t steps;
    char *err;
    size_t errlen;
    int failed;
    int raised;
};

typedef jinja_render R;

enum { EX_OK = 0, EX_ERR = -1, EX_BREAK = 1, EX_CONTINUE = 2 };

static int rfail(R *r, size_t pos, const char *fmt, ...)
{
    size_t line, col;
    char msg[512];
    va_list ap;
    if (r->failed) {
        return -1;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    source_position(r->t->src, r->t->src_len, pos, &line, &col);
    snprintf(r->err, r->errlen, "line %zu, column %zu: %s", line, col, msg);
    r->failed = 1;
    return -1;
}

static int oom(R *r, size_t pos)
{
    return rfail(r, pos, "the template needed more than %zu bytes of memory",
                 r->lim.max_memory);
}

static jv mk_undef(R *r, const char *name, const char *obj_type, int is_element,
                   const char *hint)
{
    jv v = JV_UNDEFINED;
    jundef *u = arena_alloc(&r->mem, sizeof(*u));
    if (u) {
        u->name = name;
        u->obj_type = obj_type;
        u->is_element = is_element;
        u->hint = hint;
        v.u.u = u;
    } else {
        v.u.u = NULL;
    }
    return v;
}

static void undef_message(const jv *v, char *buf, size_t cap)
{
    const jundef *u = v->u.u;
    if (u == NULL) {
        snprintf(buf, cap, "value is undefined");
    } else if (u->hint) {
        snprintf(buf, cap, "%s", u->hint);
    } else if (u->obj_type == NULL) {
        snprintf(buf, cap, "'%.200s' is undefined", u->name);
    } else if (!strcmp(u->obj_type, "NoneType")) {
        snprintf(buf, cap, u->is_element ? "None has no element %.200s"
                                         : "None has no attribute '%.200s'", u->name);
    } else if (u->is_element) {
        snprintf(buf, cap, "'%s object' has no element %.200s", u->obj_type, u->name);
    } else {
        snprintf(buf, cap, "'%s object' has no attribute '%.200s'", u->obj_type, u->name);
    }
}

static int fail_undef(R *r, size_t pos, const jv *v)
{
    char msg[400];
    undef_message(v, msg, sizeof(msg));
    return rfail(r, pos, "%s", msg);
}

static char *r_strdup(R *r, const char *s, size_t n)
{
    return arena_strndup(&r->mem, s, n);
}

/* Python str() of any value, as a string value in the render arena. */
static int to_str(R *r, size_t pos, const jv *v, jv *out)
{
    if (v->t == JV_STR) {
        *out = *v;
        return 0;
    }
    sbuf b = { 0 };
    b.max = r->lim.max_output;
    put_value(&b, v, 0, 0);
    if (b.overflow) {
        free(b.p);
        return rfail(r, pos, "value too large or nested too deeply to convert to a string");
    }
    char *p = r_strdup(r, b.p ? b.p : "", b.n);
    size_t n = b.n;
    free(b.p);
    if (p == NULL) {
        return oom(r, pos);
    }
    *out = jv_str(p, n);
    return 0;
}

static int truthy(const jv *v)
{
    switch (v->t) {
    case JV_UNDEF:
    case JV_NONE:
        return 0;
    case JV_BOOL:
    case JV_INT:
        return v->u.i != 0;
    case JV_FLOAT:
        return v->u.f != 0.0;
    case JV_STR:
        return v->u.s.n != 0;
    case JV_LIST:
        return v->u.l->n != 0 || v->u.l->gen;
    case JV_DICT:
        return v->u.d->n != 0;
    default:
        return 1;
    }
}

static int values_equal(const jv *a, const jv *b, int depth)
{
    if (depth > VALUE_MAX_DEPTH) {
        return 0;
    }
    if (is_number(a) && is_number(b)) {
        if (a->t != JV_FLOAT && b->t != JV_FLOAT) {
            return a->u.i == b->u.i;
        }
        return num_as_double(a) == num_as_double(b);
    }
    if (a->t != b->t) {
        return 0;
    }
    switch (a->t) {
    case JV_UNDEF:
    case JV_NONE:
        return 1;
    case JV_STR:
        return a->u.s.n == b->u.s.n && memcmp(a->u.s.p, b->u.s.p, a->u.s.n) == 0;
    case JV_LIST:
        if (a->u.l->gen || b->u.l->gen) {
            return a->u.l == b->u.l;
        }
        if (a->tuple != b->tuple || a->u.l->n != b->u.l->n) {
            return 0;
        }
        for (size_t i = 0; i < a->u.l->n; i++) {
            if (!values_equal(&a->u.l->v[i], &b->u.l->v[i], depth + 1)) {
                return 0;
            }
        }
        return 1;
    case JV_DICT:
        if (a->u.d->n != b->u.d->n) {
            return 0;
        }
        for (size_t i = 0; i < a->u.d->n; i++) {
            long j = dict_find(b->u.d, &a->u.d->keys[i]);
            if (j < 0 || !values_equal(&a->u.d->vals[i], &b->u.d->vals[j], depth + 1)) {
                return 0;
            }
        }
        return 1;
    case JV_NS:
        return a->u.d == b->u.d;
    case JV_LOOP:
        return a->u.loop == b->u.loop;
    case JV_FUNC:
        return a->u.fn == b->u.fn;
    case JV_MACRO:
        return a->u.mac == b->u.mac;
    default:
        return 0;
    }
}

/* Python ordering: *res < 0, 0, > 0; fails for unorderable types. */
static int values_order(R *r, size_t pos, const jv *a, const jv *b, const char *opname,
                        int *res, int depth)
{
    if (a->t == JV_UNDEF) {
        return fail_undef(r, pos, a);
    }
    if (b->t == JV_UNDEF) {
        return fail_undef(r, pos, b);
    }
    if (depth > VALUE_MAX_DEPTH) {
        return rfail(r, pos, "values nested too deeply to compare");
    }
    if (is_number(a) && is_number(b)) {
        if (a->t != JV_FLOAT && b->t != JV_FLOAT) {
            *res = (a->u.i > b->u.i) - (a->u.i < b->u.i);
        } else {
            double x = num_as_double(a), y = num_as_double(b);
            *res = (x > y) - (x < y);
            if (isnan(x) || isnan(y)) {
                *res = 2;   /* unordered: every ordering comparison is false */
            }
        }
        return 0;
    }
    if (a->t == JV_STR && b->t == JV_STR) {
        int c = str_cmp(a, b);
        *res = (c > 0) - (c < 0);
        return 0;
    }
    if (a->t == JV_LIST && b->t == JV_LIST && a->tuple == b->tuple && !a->u.l->gen
        && !b->u.l->gen) {
        size_t n = a->u.l->n < b->u.l->n ? a->u.l->n : b->u.l->n;
        for (size_t i = 0; i < n; i++) {
            if (!values_equal(&a->u.l->v[i], &b->u.l->v[i], 0)) {
                return values_order(r, pos, &a->u.l->v[i], &b->u.l->v[i], opname, res,
                                    depth + 1);
            }
        }
        *res = (a->u.l->n > b->u.l->n) - (a->u.l->n < b->u.l->n);
        return 0;
    }
    return rfail(r, pos, "'%s' not supported between instances of '%s' and '%s'",
                 opname, type_name(a), type_name(b));
}

/* `needle in hay` */
static int contains(R *r, size_t pos, const jv *needle, const jv *hay, int *res)
{
    switch (hay->t) {
    case JV_UNDEF:
        *res = 0;   /* iterating an Undefined yields nothing */
        return 0;
    case JV_STR:
        if (needle->t != JV_STR) {
            if (needle->t == JV_UNDEF) {
                return fail_undef(r, pos, needle);
            }
            return rfail(r, pos, "'in <string>' requires string as left operand, not %s",
                         type_name(needle));
        }
        *res = needle->u.s.n == 0
               || memmem(hay->u.s.p, hay->u.s.n, needle->u.s.p, needle->u.s.n) != NULL;
        return 0;
    case JV_LIST:
        for (size_t i = 0; i < hay->u.l->n; i++) {
            if (values_equal(needle, &hay->u.l->v[i], 0)) {
                *res = 1;
                return 0;
            }
        }
        *res = 0;
        return 0;
    case JV_DICT:
        if (!is_hashable(needle)) {
            return rfail(r, pos, "unhashable type: '%s'", type_name(needle));
        }
        *res = dict_find(hay->u.d, needle) >= 0;
        return 0;
    default:
        return rfail(r, pos, "argument of type '%s' is not iterable", type_name(hay));
    }
}

/* ------------------------------------------------------------------ */
/* scopes and variables                                                */
/* ------------------------------------------------------------------ */

static int scope_set(R *r, size_t pos, scope *sc, const char *name, jv v)
{
    for (size_t i = 0; i < sc->n; i++) {
        if (!strcmp(sc->names[i], name)) {
            sc->vals[i] = v;
            return 0;
        }
    }
    if (sc->n == sc->cap) {
        size_t cap = sc->cap ? sc->cap * 2 : 8;
        const char **nn = arena_alloc(&r->mem, cap * sizeof(char *));
        jv *nv = arena_alloc(&r->mem, cap * sizeof(jv));
        if (nn == NULL || nv == NULL) {
            return oom(r, pos);
        }
        if (sc->n) {
            memcpy(nn, sc->names, sc->n * sizeof(char *));
            memcpy(nv, sc->vals, sc->n * sizeof(jv));
        }
        sc->names = nn;
        sc->vals = nv;
        sc->cap = cap;
    }
    sc->names[sc->n] = name;
    sc->vals[sc->n] = v;
    sc->n++;
    return 0;
}

static jv mk_func(R *r, func_id id, const char *name, const jv *self)
{
    jfunc *f = arena_alloc(&r->mem, sizeof(*f));
    jv v = JV_UNDEFINED;
    if (f == NULL) {
        return v;
    }
    f->id = id;
    f->name = name;
    f->self = self ? *self : JV_UNDEFINED;
    v.t = JV_FUNC;
    v.u.fn = f;
    return v;
}

static int lookup(R *r, size_t pos, const scope *sc, const char *name, jv *out)
{
    for (; sc; sc = sc->parent) {
        for (size_t i = sc->n; i-- > 0;) {
            if (!strcmp(sc->names[i], name)) {
                *out = sc->vals[i];
                return 0;
            }
        }
    }
    const jv *v = dict_get_str(r->vars, name, strlen(name));
    if (v) {
        *out = *v;
        return 0;
    }
    static const struct { const char *name; func_id id; } globals[] = {
        { "range", F_RANGE }, { "namespace", F_NAMESPACE }, { "dict", F_DICT },
        { "raise_exception", F_RAISE }, { "strftime_now", F_STRFTIME_NOW },
    };
    for (size_t i = 0; i < sizeof(globals) / sizeof(globals[0]); i++) {
        if (!strcmp(globals[i].name, name)) {
            *out = mk_func(r, globals[i].id, globals[i].name, NULL);
            return out->t == JV_FUNC ? 0 : oom(r, pos);
        }
    }
    *out = mk_undef(r, name, NULL, 0, NULL);
    return 0;
}

/* ------------------------------------------------------------------ */
/* attributes and items                                                */
/* ------------------------------------------------------------------ */

static const struct { const char *name; func_id id; } str_methods[] = {
    { "startswith", M_STARTSWITH }, { "endswith", M_ENDSWITH },
    { "split", M_SPLIT }, { "rsplit", M_RSPLIT }, { "strip", M_STRIP },
    { "lstrip", M_LSTRIP }, { "rstrip", M_RSTRIP }, { "replace", M_REPLACE },
    { "upper", M_UPPER }, { "lower", M_LOWER }, { "title", M_TITLE },
    { "capitalize", M_CAPITALIZE }, { "find", M_FIND }, { "rfind", M_RFIND },
    { "count", M_SCOUNT }, { "join", M_JOIN }, { "isdigit", M_ISDIGIT },
    { "isalpha", M_ISALPHA }, { "isalnum", M_ISALNUM }, { "isspace", M_ISSPACE },
    { "islower", M_ISLOWER }, { "isupper", M_ISUPPER },
    { "splitlines", M_SPLITLINES },
};

/* Python str methods this interpreter does not implement: calling one is a
 * clear error rather than an "undefined" surprise. */
static const char *const str_methods_other[] = {
    "casefold", "center", "encode", "expandtabs", "format", "format_map",
    "index", "isascii", "isdecimal", "isidentifier", "isnumeric",
    "isprintable", "istitle", "ljust", "maketrans", "partition",
    "removeprefix", "removesuffix", "rindex", "rjust", "rpartition",
    "swapcase", "translate", "zfill",
};

static const char *const dict_methods_unsafe[] = {
    "clear", "pop", "popitem", "setdefault", "update",
};
static const char *const list_methods_unsafe[] = {
    "append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort",
};

static int name_in(const char *name, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(list[i], name)) {
            return 1;
        }
    }
    return 0;
}

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

static jv unsafe_attr(R *r, const char *name, const char *type)
{
    char buf[200];
    snprintf(buf, sizeof(buf), "access to attribute '%s' of '%s' object is unsafe.", name, type);
    return mk_undef(r, name, type, 0, r_strdup(r, buf, strlen(buf)));
}

/* obj.name, as the sandbox's getattr: a Python attribute first (methods),
 * then the item of that name. */
static int get_attr(R *r, size_t pos, const jv *obj, const char *name, jv *out)
{
    size_t i;
    switch (obj->t) {
    case JV_UNDEF:
        return fail_undef(r, pos, obj);
    case JV_STR:
        for (i = 0; i < COUNT_OF(str_methods); i++) {
            if (!strcmp(str_methods[i].name, name)) {
                *out = mk_func(r, str_methods[i].id, str_methods[i].name, obj);
                return out->t == JV_FUNC ? 0 : oom(r, pos);
            }
        }
        if (name_in(name, str_methods_other, COUNT_OF(str_methods_other))) {
            *out = mk_func(r, M_UNSUPPORTED, name, obj);
            return out->t == JV_FUNC ? 0 : oom(r, pos);
        }
        break;
    case JV_DICT: {
        static const struct { const char *name; func_id id; } dm[] = {
            { "items", M_ITEMS }, { "keys", M_KEYS }, { "values", M_VALUES }, { "get", M_GET },
        };
        for (i = 0; i < COUNT_OF(dm); i++) {
            if (!strcmp(dm[i].name, name)) {
                *out = mk_func(r, dm[i].id, dm[i].name, obj);
                return out->t == JV_FUNC ? 0 : oom(r, pos);
            }
        }
        if (!strcmp(name, "copy") || !strcmp(name, "fromkeys")) {
            *out = mk_func(r, M_UNSUPPORTED, name, obj);
            return out->t == JV_FUNC ? 0 : oom(r, pos);
        }
        if (name_in(name, dict_methods_unsafe, COUNT_OF(dict_methods_unsafe))) {
            *out = unsafe_attr(r, name, "dict");
            return 0;
        }
        if (name[0] == '_' && name[1] == '_') {
            break;
        }
        const jv *v = dict_get_str(obj->u.d, name, strlen(name));
        if (v) {
            *out = *v;
            return 0;
        }
        break;
    }
    case JV_NS: {
        const jv *v = dict_get_str(obj->u.d, name, strlen(name));
        if (v) {
            *out = *v;
            return 0;
        }
        break;
    }
    case JV_LIST:
        if (obj->u.l->gen) {
            break;
        }
        if (!strcmp(name, "index") || !strcmp(name, "count")) {
            *out = mk_func(r, name[0] == 'i' ? M_LINDEX : M_LCOUNT, name, obj);
            return out->t == JV_FUNC ? 0 : oom(r, pos);
        }
        if (name_in(name, list_methods_unsafe, COUNT_OF(list_methods_unsafe))) {
            *out = unsafe_attr(r, name, "list");
            return 0;
        }
        break;
    case JV_LOOP: {
        const jloop *l = obj->u.loop;
        if (!strcmp(name, "index")) *out = jv_int(l->index0 + 1);
        else if (!strcmp(name, "index0")) *out = jv_int(l->index0);
        else if (!strcmp(name, "revindex")) *out = jv_int(l->length - l->index0);
        else if (!strcmp(name, "revindex0")) *out = jv_int(l->length - l->index0 - 1);
        else if (!strcmp(name, "first")) *out = jv_bool(l->index0 == 0);
        else if (!strcmp(name, "last")) *out = jv_bool(l->index0 == l->length - 1);
        else if (!strcmp(name, "length")) *out = jv_int(l->length);
        else if (!strcmp(name, "depth")) *out = jv_int(1);
        else if (!strcmp(name, "depth0")) *out = jv_int(0);
        else if (!strcmp(name, "previtem")) {
            *out = l->index0 > 0 ? l->items->v[l->index0 - 1]
                   : mk_undef(r, name, NULL, 0, "there is no previous item");
        } else if (!strcmp(name, "nextitem")) {
            *out = l->index0 + 1 < l->length ? l->items->v[l->index0 + 1]
                   : mk_undef(r, name, NULL, 0, "there is no next item");
        } else if (!strcmp(name, "cycle")) {
            *out = mk_func(r, M_CYCLE, "cycle", obj);
            return out->t == JV_FUNC ? 0 : oom(r, pos);
        } else {
            break;
        }
        return 0;
    }
    default:
        break;
    }
    *out = mk_undef(r, name, type_name(obj), 0, NULL);
    return 0;
}

/* Python's slice.indices(): normalized start, stop, step and the length. */
static int slice_indices(R *r, size_t pos, int64_t len, const jv *js, const jv *je,
                         const jv *jst, int64_t *start, int64_t *step, int64_t *count)
{
    int64_t st = 1, s, e;
    const jv *parts[3] = { js, je, jst };
    for (int k = 0; k < 3; k++) {
        if (parts[k] && parts[k]->t != JV_NONE && parts[k]->t != JV_INT
            && parts[k]->t != JV_BOOL) {
            if (parts[k]->t == JV_UNDEF) {
                return fail_undef(r, pos, parts[k]);
            }
            return rfail(r, pos, "slice indices must be integers or None");
        }
    }
    if (jst && jst->t != JV_NONE) {
        st = jst->u.i;
        if (st == 0) {
            return rfail(r, pos, "slice step cannot be zero");
        }
        if (st < -INT64_MAX) {
            st = -INT64_MAX;
        }
    }
    if (js && js->t != JV_NONE) {
        s = js->u.i;
        if (s < 0) {
            s = s < -len ? (st < 0 ? -1 : 0) : s + len;
        } else if (s >= len) {
            s = st < 0 ? len - 1 : len;
        }
    } else {
        s = st < 0 ? len - 1 : 0;
    }
    if (je && je->t != JV_NONE) {
        e = je->u.i;
        if (e < 0) {
            e = e < -len ? (st < 0 ? -1 : 0) : e + len;
        } else if (e >= len) {
            e = st < 0 ? len - 1 : len;
        }
    } else {
        e = st < 0 ? -1 : len;
    }
    int64_t c = 0;
    if (st > 0 && s < e) {
        c = (e - s - 1) / st + 1;
    } else if (st < 0 && s > e) {
        c = (s - e - 1) / (-st) + 1;
    }
    *start = s;
    *step = st;
    *count = c;
    return 0;
}

static int do_slice(R *r, size_t pos, const jv *obj, const jv *js, const jv *je,
                    const jv *jst, jv *out)
{
    int64_t s, st, c;
    if (obj->t == JV_UNDEF) {
        return fail_undef(r, pos, obj);
    }
    if (obj->t == JV_LIST && !obj->u.l->gen) {
        if (slice_indices(r, pos, (int64_t) obj->u.l->n, js, je, jst, &s, &st, &c) < 0) {
            return -1;
        }
        jlist *l = list_new(&r->mem, (size_t) c);
        if (l == NULL) {
            return oom(r, pos);
        }
        for (int64_t k = 0; k < c; k++) {
            l->v[k] = obj->u.l->v[s + k * st];
        }
        out->t = JV_LIST;
        out->tuple = obj->tuple;
        out->u.l = l;
        return 0;
    }
    if (obj->t == JV_STR) {
        const char *p = obj->u.s.p;
        size_t n = obj->u.s.n, ncp = u8_count(p, n);
        if (slice_indices(r, pos, (int64_t) ncp, js, je, jst, &s, &st, &c) < 0) {
            return -1;
        }
        if (st == 1) {
            size_t b0 = u8_offset(p, n, (size_t) s);
            size_t b1 = b0 + u8_offset(p + b0, n - b0, (size_t) c);
            *out = jv_str(p + b0, b1 - b0);
            return 0;
        }
        /* general step: index the code points once */
        size_t *offs = arena_alloc(&r->mem, (ncp + 1) * sizeof(size_t));
        char *buf = arena_alloc(&r->mem, n + 1);
        if (offs == NULL || buf == NULL) {
            return oom(r, pos);
        }
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (((unsigned char) p[i] & 0xC0) != 0x80) {
                offs[k++] = i;
            }
        }
        offs[ncp] = n;
        size_t o = 0;
        for (int64_t j = 0; j < c; j++) {
            size_t ci = (size_t) (s + j * st);
            memcpy(buf + o, p + offs[ci], offs[ci + 1] - offs[ci]);
            o += offs[ci + 1] - offs[ci];
        }
        buf[o] = '\0';
        *out = jv_str(buf, o);
        return 0;
    }
    /* slices are plain Python subscripts in Jinja, not the sandbox's getitem */
    if (obj->t == JV_DICT) {
        return rfail(r, pos, "unhashable type: 'slice'");
    }
    return rfail(r, pos, "'%s' object is not subscriptable", type_name(obj));
}

static const char *key_desc(R *r, const jv *key)
{
    sbuf b = { 0 };
    b.max = 200;
    put_value(&b, key, 1, VALUE_MAX_DEPTH - 2);
    char *s = r_strdup(r, b.p ? b.p : "", b.n);
    free(b.p);
    return s ? s : "?";
}

/* obj[key], as the sandbox's getitem: the item first, then for a string
 * key the attribute of that name; anything missing is Undefined. */
static int get_item(R *r, size_t pos, const jv *obj, const jv *key, jv *out)
{
    if (obj->t == JV_UNDEF) {
        return fail_undef(r, pos, obj);
    }
    if (key->t == JV_UNDEF && obj->t == JV_DICT) {
        *out = mk_undef(r, "Undefined", type_name(obj), 1, NULL);
        return 0;
    }
    if (obj->t == JV_LIST && obj->u.l->gen) {
        *out = mk_undef(r, key_desc(r, key), "generator", 1, NULL);
        return 0;
    }
    if ((obj->t == JV_LIST || obj->t == JV_STR) && (key->t == JV_INT || key->t == JV_BOOL)) {
        int64_t len = obj->t == JV_LIST ? (int64_t) obj->u.l->n
                                        : (int64_t) u8_count(obj->u.s.p, obj->u.s.n);
        int64_t i = key->u.i;
        if (i < 0) {
            i += len;
        }
        if (i >= 0 && i < len) {
            if (obj->t == JV_LIST) {
                *out = obj->u.l->v[i];
            } else {
                size_t b0 = u8_offset(obj->u.s.p, obj->u.s.n, (size_t) i), adv;
                u8_decode(obj->u.s.p + b0, obj->u.s.n - b0, &adv);
                *out = jv_str(obj->u.s.p + b0, adv);
            }
            return 0;
        }
        *out = mk_undef(r, key_desc(r, key), type_name(obj), 1, NULL);
        return 0;
    }
    if (obj->t == JV_DICT && is_hashable(key)) {
        long i = dict_find(obj->u.d, key);
        if (i >= 0) {
            *out = obj->u.d->vals[i];
            return 0;
        }
    }
    if (key->t == JV_STR && obj->t != JV_DICT) {
        /* strings without NULs name attributes */
        if (memchr(key->u.s.p, '\0', key->u.s.n) == NULL) {
            char *nm = r_strdup(r, key->u.s.p, key->u.s.n);
            if (nm == NULL) {
                return oom(r, pos);
            }
            return get_attr(r, pos, obj, nm, out);
        }
    }
    if (key->t == JV_STR && obj->t == JV_DICT) {
        char *nm = r_strdup(r, key->u.s.p, key->u.s.n);
        if (nm == NULL) {
            return oom(r, pos);
        }
        /* a missing key still finds the dict's methods (d['items']) */
        if (!strcmp(nm, "items") || !strcmp(nm, "keys") || !strcmp(nm, "values")
            || !strcmp(nm, "get")) {
            return get_attr(r, pos, obj, nm, out);
        }
        *out = mk_undef(r, nm, type_name(obj), 0, NULL);
        return 0;
    }
    *out = mk_undef(r, key_desc(r, key), type_name(obj), 1, NULL);
    return 0;
}

/* ------------------------------------------------------------------ */
/* calls: argument binding                                             */
/* ------------------------------------------------------------------ */

#define MAX_ARGS 16

typedef struct {
    jv pos[MAX_ARGS];
    size_t npos;
    const char *kwname[MAX_ARGS];
    jv kw[MAX_ARGS];
    size_t nkw;
} call_args;

/*
 * Binds arguments to parameters by position, then by name.  slots[i] is
 * set for each parameter given; have[i] says which were.  Extra positional
 * arguments go to *rest when rest is not NULL.
 */
static int bind_args(R *r, size_t pos, const char *fname, const char *const *params,
                     size_t nparams, const call_args *a, jv *slots, int *have,
                     size_t *nrest)
{
    for (size_t i = 0; i < nparams; i++) {
        have[i] = 0;
        slots[i] = JV_UNDEFINED;
    }
    if (a->npos > nparams && nrest == NULL) {
        return rfail(r, pos, "%s() takes at most %zu argument%s (%zu given)", fname,
                     nparams, nparams == 1 ? "" : "s", a->npos);
    }
    for (size_t i = 0; i < a->npos && i < nparams; i++) {
        slots[i] = a->pos[i];
        have[i] = 1;
    }
    if (nrest) {
        *nrest = a->npos > nparams ? a->npos - nparams : 0;
    }
    for (size_t k = 0; k < a->nkw; k++) {
        size_t i;
        for (i = 0; i < nparams; i++) {
            if (!strcmp(params[i], a->kwname[k])) {
                break;
            }
        }
        if (i == nparams) {
            return rfail(r, pos, "%s() got an unexpected keyword argument '%s'", fname,
                         a->kwname[k]);
        }
        if (have[i]) {
            return rfail(r, pos, "%s() got multiple values for argument '%s'", fname,
                         a->kwname[k]);
        }
        slots[i] = a->kw[k];
        have[i] = 1;
    }
    return 0;
}

static int need_str(R *r, size_t pos, const jv *v, const char *what)
{
    if (v->t == JV_STR) {
        return 0;
    }
    if (v->t == JV_UNDEF) {
        return fail_undef(r, pos, v);
    }
    return rfail(r, pos, "%s must be str, not %s", what, type_name(v));
}

static int need_int(R *r, size_t pos, const jv *v, const char *what)
{
    if (v->t == JV_INT || v->t == JV_BOOL) {
        return 0;
    }
    if (v->t == JV_UNDEF) {
        return fail_undef(r, pos, v);
    }
    return rfail(r, pos, "%s must be an integer, not %s", what, type_name(v));
}

/* ------------------------------------------------------------------ */
/* string operations with Python semantics                             */
/* ------------------------------------------------------------------ */

static int cp_in_set(uint32_t cp, const jv *chars)
{
    size_t i = 0, adv;
    while (i < chars->u.s.n) {
        if (u8_decode(chars->u.s.p + i, chars->u.s.n - i, &adv) == cp) {
            return 1;
        }
        i += adv;
    }
    return 0;
}

/* strip: which bit 1 = left, 2 = right; chars NULL = whitespace */
static jv str_strip(const jv *s, const jv *chars, int which)
{
    const char *p = s->u.s.p;
    size_t b = 0, e = s->u.s.n, adv;
    if (which & 1) {
        while (b < e) {
            uint32_t cp = u8_decode(p + b, e - b, &adv);
            if (chars ? !cp_in_set(cp, chars) : !py_isspace(cp)) {
                break;
            }
            b += adv;
        }
    }
    if (which & 2) {
        while (e > b) {
            size_t st = e - 1;
            while (st > b && ((unsigned char) p[st] & 0xC0) == 0x80) {
                st--;
            }
            uint32_t cp = u8_decode(p + st, e - st, &adv);
            if (chars ? !cp_in_set(cp, chars) : !py_isspace(cp)) {
                break;
            }
            e = st;
        }
    }
    return jv_str(p + b, e - b);
}

typedef struct {
    jv *v;
    size_t n, cap;
} jvec;

static int jvec_push(R *r, size_t pos, jvec *vec, jv v)
{
    if (vec->n == vec->cap) {
        size_t cap = vec->cap ? vec->cap * 2 : 8;
        jv *nv = arena_alloc(&r->mem, cap * sizeof(jv));
        if (nv == NULL) {
            return oom(r, pos);
        }
        if (vec->n) {
            memcpy(nv, vec->v, vec->n * sizeof(jv));
        }
        vec->v = nv;
        vec->cap = cap;
    }
    vec->v[vec->n++] = v;
    return 0;
}

static int jvec_to_list(R *r, size_t pos, jvec *vec, int tuple, jv *out)
{
    jlist *l = arena_alloc(&r->mem, sizeof(*l));
    if (l == NULL) {
        return oom(r, pos);
    }
    l->n = vec->n;
    l->v = vec->v;
    l->gen = 0;
    out->t = JV_LIST;
    out->tuple = (uint8_t) tuple;
    out->u.l = l;
    return 0;
}

static int str_split(R *r, size_t pos, const jv *s, const jv *sep, int64_t maxsplit,
                     int from_right, jv *out)
{
    jvec parts = { 0 };
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, adv;

    if (sep && sep->t != JV_NONE) {
        if (need_str(r, pos, sep, "separator") < 0) {
            return -1;
        }
        size_t sl = sep->u.s.n;
        if (sl == 0) {
            return rfail(r, pos, "empty separator");
        }
        if (!from_right) {
            size_t st = 0;
            while (maxsplit != 0) {
                const char *hit = memmem(p + st, n - st, sep->u.s.p, sl);
                if (hit == NULL) {
                    break;
                }
                if (jvec_push(r, pos, &parts, jv_str(p + st, (size_t) (hit - (p + st)))) < 0) {
                    return -1;
                }
                st = (size_t) (hit - p) + sl;
                maxsplit--;
            }
            if (jvec_push(r, pos, &parts, jv_str(p + st, n - st)) < 0) {
                return -1;
            }
        } else {
            size_t end = n;
            while (maxsplit != 0 && end >= sl) {
                size_t k = end - sl + 1, found = SIZE_MAX;
                while (k-- > 0) {
                    if (memcmp(p + k, sep->u.s.p, sl) == 0) {
                        found = k;
                        break;
                    }
                }
                if (found == SIZE_MAX) {
                    break;
                }
                if (jvec_push(r, pos, &parts, jv_str(p + found + sl, end - found - sl)) < 0) {
                    return -1;
                }
                end = found;
                maxsplit--;
            }
            if (jvec_push(r, pos, &parts, jv_str(p, end)) < 0) {
                return -1;
            }
            for (size_t i = 0; i < parts.n / 2; i++) {
                jv t = parts.v[i];
                parts.v[i] = parts.v[parts.n - 1 - i];
                parts.v[parts.n - 1 - i] = t;
            }
        }
        return jvec_to_list(r, pos, &parts, 0, out);
    }
    /* whitespace split: runs of whitespace separate, ends are dropped */
    if (!from_right) {
        size_t i = 0;
        while (1) {
            i += ws_span(p + i, n - i);
            if (i >= n) {
                break;
            }
            if (maxsplit == 0) {
                /* the remainder keeps its trailing whitespace */
                if (jvec_push(r, pos, &parts, jv_str(p + i, n - i)) < 0) {
                    return -1;
                }
                break;
            }
            size_t st = i;
            while (i < n && !py_isspace(u8_decode(p + i, n - i, &adv))) {
                i += adv;
            }
            if (jvec_push(r, pos, &parts, jv_str(p + st, i - st)) < 0) {
                return -1;
            }
            maxsplit--;
        }
    } else {
        size_t end = n;
        while (1) {
            end = ws_rstrip_len(p, end);
            if (end == 0) {
                break;
            }
            if (maxsplit == 0) {
                /* the remainder keeps its leading whitespace */
                if (jvec_push(r, pos, &parts, jv_str(p, end)) < 0) {
                    return -1;
                }
                break;
            }
            size_t st = end;
            while (st > 0) {
                size_t q = st - 1;
                while (q > 0 && ((unsigned char) p[q] & 0xC0) == 0x80) {
                    q--;
                }
                if (py_isspace(u8_decode(p + q, st - q, &adv))) {
                    break;
                }
                st = q;
            }
            if (jvec_push(r, pos, &parts, jv_str(p + st, end - st)) < 0) {
                return -1;
            }
            end = st;
            maxsplit--;
        }
        for (size_t i = 0; i < parts.n / 2; i++) {
            jv t = parts.v[i];
            parts.v[i] = parts.v[parts.n - 1 - i];
            parts.v[parts.n - 1 - i] = t;
        }
    }
    return jvec_to_list(r, pos, &parts, 0, out);
}

static int str_replace(R *r, size_t pos, const jv *s, const jv *old, const jv *new_,
                       int64_t count, jv *out)
{
    sbuf b = { 0 };
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, i = 0, adv;
    b.max = r->lim.max_output;
    if (old->u.s.n == 0) {
        /* Python inserts `new` around every character */
        while (1) {
            if (count != 0) {
                sb_put(&b, new_->u.s.p, new_->u.s.n);
                count--;
            }
            if (i >= n) {
                break;
            }
            u8_decode(p + i, n - i, &adv);
            sb_put(&b, p + i, adv);
            i += adv;
        }
    } else {
        while (count != 0) {
            const char *hit = memmem(p + i, n - i, old->u.s.p, old->u.s.n);
            if (hit == NULL) {
                break;
            }
            sb_put(&b, p + i, (size_t) (hit - (p + i)));
            sb_put(&b, new_->u.s.p, new_->u.s.n);
            i = (size_t) (hit - p) + old->u.s.n;
            count--;
        }
        sb_put(&b, p + i, n - i);
    }
    if (b.overflow) {
        free(b.p);
        return rfail(r, pos, "replace() result too large");
    }
    char *res = r_strdup(r, b.p ? b.p : "", b.n);
    size_t rn = b.n;
    free(b.p);
    if (res == NULL) {
        return oom(r, pos);
    }
    *out = jv_str(res, rn);
    return 0;
}

enum { CASE_UPPER, CASE_LOWER, CASE_TITLE, CASE_CAPITALIZE };

static int is_cased(uint32_t cp)
{
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t) cp);
    return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT;
}

static int str_case(R *r, size_t pos, const jv *s, int mode, jv *out)
{
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, i = 0, adv, o = 0;
    /* case mapping of one code point never needs more than 4 bytes */
    char *buf = arena_alloc(&r->mem, n * 4 + 1);
    int prev_cased = 0, first = 1;
    if (buf == NULL) {
        return oom(r, pos);
    }
    while (i < n) {
        uint32_t cp = u8_decode(p + i, n - i, &adv), m = cp;
        switch (mode) {
        case CASE_UPPER:
            m = (uint32_t) utf8proc_toupper((utf8proc_int32_t) cp);
            break;
        case CASE_LOWER:
            m = (uint32_t) utf8proc_tolower((utf8proc_int32_t) cp);
            break;
        case CASE_TITLE:
            m = prev_cased ? (uint32_t) utf8proc_tolower((utf8proc_int32_t) cp)
                           : (uint32_t) utf8proc_totitle((utf8proc_int32_t) cp);
            prev_cased = is_cased(cp);
            break;
        case CASE_CAPITALIZE:
            m = first ? (uint32_t) utf8proc_totitle((utf8proc_int32_t) cp)
                      : (uint32_t) utf8proc_tolower((utf8proc_int32_t) cp);
            break;
        }
        first = 0;
        o += u8_encode(m, buf + o);
        i += adv;
    }
    buf[o] = '\0';
    *out = jv_str(buf, o);
    return 0;
}

static int starts_or_ends(R *r, size_t pos, const jv *s, const jv *arg, int ends, int *res)
{
    const jv *cands = arg;
    size_t nc = 1;
    if (arg->t == JV_LIST) {
        cands = arg->u.l->v;
        nc = arg->u.l->n;
    }
    *res = 0;
    for (size_t i = 0; i < nc; i++) {
        const jv *c = &cands[i];
        if (need_str(r, pos, c, ends ? "endswith argument" : "startswith argument") < 0) {
            return -1;
        }
        if (c->u.s.n <= s->u.s.n
            && memcmp(s->u.s.p + (ends ? s->u.s.n - c->u.s.n : 0), c->u.s.p, c->u.s.n) == 0) {
            *res = 1;
        }
    }
    return 0;
}

/* Iterates a value as Python's iter() does, into a list. */
static int iterate(R *r, size_t pos, const jv *v, const jlist **out)
{
    static const jlist empty = { 0, NULL, 0 };
    switch (v->t) {
    case JV_LIST:
        *out = v->u.l;
        return 0;
    case JV_UNDEF:
        *out = &empty;
        return 0;
    case JV_DICT: {
        jlist *l = list_new(&r->mem, v->u.d->n);
        if (l == NULL) {
            return oom(r, pos);
        }
        for (size_t i = 0; i < v->u.d->n; i++) {
            l->v[i] = v->u.d->keys[i];
        }
        *out = l;
        return 0;
    }
    case JV_STR: {
        size_t n = u8_count(v->u.s.p, v->u.s.n), i = 0, adv;
        jlist *l = list_new(&r->mem, n);
        if (l == NULL) {
            return oom(r, pos);
        }
        for (size_t k = 0; k < n; k++) {
            u8_decode(v->u.s.p + i, v->u.s.n - i, &adv);
            l->v[k] = jv_str(v->u.s.p + i, adv);
            i += adv;
        }
        *out = l;
        return 0;
    }
    default:
        return rfail(r, pos, "'%s' object is not iterable", type_name(v));
    }
}

static int str_join(R *r, size_t pos, const jv *sep, const jlist *items, int strict, jv *out)
{
    sbuf b = { 0 };
    b.max = r->lim.max_output;
    for (size_t i = 0; i < items->n; i++) {
        if (i) {
            sb_put(&b, sep->u.s.p, sep->u.s.n);
        }
        const jv *it = &items->v[i];
        if (it->t == JV_STR) {
            sb_put(&b, it->u.s.p, it->u.s.n);
        } else if (strict) {
            free(b.p);
            return rfail(r, pos, "sequence item %zu: expected str instance, %s found", i,
                         type_name(it));
        } else {
            put_value(&b, it, 0, 0);
        }
    }
    if (b.overflow) {
        free(b.p);
        return rfail(r, pos, "join() result too large");
    }
    char *res = r_strdup(r, b.p ? b.p : "", b.n);
    size_t n = b.n;
    free(b.p);
    if (res == NULL) {
        return oom(r, pos);
    }
    *out = jv_str(res, n);
    return 0;
}

/* Python's str.find on code point indices */
static int64_t str_find(const jv *s, const jv *sub, int from_right)
{
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, sl = sub->u.s.n;
    if (sl > n) {
        return -1;
    }
    if (!from_right) {
        const char *hit = sl ? memmem(p, n, sub->u.s.p, sl) : p;
        return hit ? (int64_t) u8_count(p, (size_t) (hit - p)) : -1;
    }
    for (size_t k = n - sl + 1; k-- > 0;) {
        if (memcmp(p + k, sub->u.s.p, sl) == 0) {
            return (int64_t) u8_count(p, k);
        }
    }
    return -1;
}

static int is_line_break(uint32_t c)
{
    return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D
           || c == 0x1E || c == 0x85 || c == 0x2028 || c == 0x2029;
}

static int str_splitlines(R *r, size_t pos, const jv *s, int keepends, jv *out)
{
    jvec parts = { 0 };
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, i = 0, st = 0, adv;
    while (i < n) {
        uint32_t cp = u8_decode(p + i, n - i, &adv);
        if (!is_line_break(cp)) {
            i += adv;
            continue;
        }
        size_t eol = i;
        i += adv;
        if (cp == '\r' && i < n && p[i] == '\n') {
            i++;
        }
        if (jvec_push(r, pos, &parts, jv_str(p + st, (keepends ? i : eol) - st)) < 0) {
            return -1;
        }
        st = i;
    }
    if (st < n && jvec_push(r, pos, &parts, jv_str(p + st, n - st)) < 0) {
        return -1;
    }
    return jvec_to_list(r, pos, &parts, 0, out);
}

static int str_predicate(const jv *s, func_id id)
{
    size_t i = 0, adv;
    int any_cased = 0;
    if (s->u.s.n == 0) {
        return 0;
    }
    while (i < s->u.s.n) {
        uint32_t cp = u8_decode(s->u.s.p + i, s->u.s.n - i, &adv);
        utf8proc_category_t c = utf8proc_category((utf8proc_int32_t) cp);
        int alpha = c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL
                    || c == UTF8PROC_CATEGORY_LT || c == UTF8PROC_CATEGORY_LM
                    || c == UTF8PROC_CATEGORY_LO;
        int digit = c == UTF8PROC_CATEGORY_ND;
        int numeric = digit || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
        i += adv;
        switch (id) {
        case M_ISDIGIT: if (!digit) return 0; break;
        case M_ISALPHA: if (!alpha) return 0; break;
        case M_ISALNUM: if (!alpha && !numeric) return 0; break;
        case M_ISSPACE: if (!py_isspace(cp)) return 0; break;
        case M_ISLOWER:
            if (c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LT) return 0;
            any_cased |= c == UTF8PROC_CATEGORY_LL;
            break;
        case M_ISUPPER:
            if (c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT) return 0;
            any_cased |= c == UTF8PROC_CATEGORY_LU;
            break;
        default: return 0;
        }
    }
    return (id == M_ISLOWER || id == M_ISUPPER) ? any_cased : 1;
}

/* ------------------------------------------------------------------ */
/* functions and methods                                               */
/* ------------------------------------------------------------------ */

static int make_ns_or_dict(R *r, size_t pos, const call_args *a, int ns, jv *out)
{
    jdict *d = dict_new(&r->mem, 0);
    if (d == NULL) {
        return oom(r, pos);
    }
    if (a->npos > 1) {
        return rfail(r, pos, "%s expected at most 1 positional argument",
                     ns ? "namespace()" : "dict()");
    }
    if (a->npos == 1) {
        const jv *src = &a->pos[0];
        if (src->t == JV_DICT || src->t == JV_NS) {
            for (size_t i = 0; i < src->u.d->n; i++) {
                if (dict_set(&r->mem, d, src->u.d->keys[i], src->u.d->vals[i]) < 0) {
                    return oom(r, pos);
                }
            }
        } else if (src->t == JV_LIST) {
            for (size_t i = 0; i < src->u.l->n; i++) {
                const jv *pair = &src->u.l->v[i];
                if (pair->t != JV_LIST || pair->u.l->n != 2 || !is_hashable(&pair->u.l->v[0])) {
                    return rfail(r, pos, "dictionary update sequence element #%zu is not a "
                                 "hashable key and value pair", i);
                }
                if (dict_set(&r->mem, d, pair->u.l->v[0], pair->u.l->v[1]) < 0) {
                    return oom(r, pos);
                }
            }
        } else {
            return rfail(r, pos, "'%s' object is not iterable", type_name(src));
        }
    }
    for (size_t k = 0; k < a->nkw; k++) {
        size_t kn = strlen(a->kwname[k]);
        if (dict_set(&r->mem, d, jv_str(a->kwname[k], kn), a->kw[k]) < 0) {
            return oom(r, pos);
        }
    }
    out->t = ns ? JV_NS : JV_DICT;
    out->tuple = 0;
    out->u.d = d;
    return 0;
}

#define MAX_RANGE 100000    /* the sandbox's limit */

static int call_func(R *r, size_t pos, const jfunc *fn, const call_args *a, jv *out)
{
    jv s[4];
    int have[4];
    const jv *self = &fn->self;
    int res;

    switch (fn->id) {
    case F_RANGE: {
        int64_t st = 0, en, step = 1;
        if (a->nkw) {
            return rfail(r, pos, "range() takes no keyword arguments");
        }
        if (a->npos < 1 || a->npos > 3) {
            return rfail(r, pos, "range expected 1 to 3 arguments, got %zu", a->npos);
        }
        for (size_t i = 0; i < a->npos; i++) {
            if (need_int(r, pos, &a->pos[i], "range() argument") < 0) {
                return -1;
            }
        }
        if (a->npos == 1) {
            en = a->pos[0].u.i;
        } else {
            st = a->pos[0].u.i;
            en = a->pos[1].u.i;
            if (a->npos == 3) {
                step = a->pos[2].u.i;
            }
        }
        if (step == 0) {
            return rfail(r, pos, "range() arg 3 must not be zero");
        }
        double cnt_d = step > 0 ? ((double) en - (double) st) / (double) step
                                : ((double) st - (double) en) / -(double) step;
        if (cnt_d > MAX_RANGE) {
            return rfail(r, pos, "Range too big. The sandbox blocks ranges larger than "
                         "MAX_RANGE (%d).", MAX_RANGE);
        }
        int64_t cnt = 0;
        if (step > 0 && st < en) {
            cnt = (en - st - 1) / step + 1;
        } else if (step < 0 && st > en) {
            cnt = (st - en - 1) / (-step) + 1;
        }
        jlist *l = list_new(&r->mem, (size_t) cnt);
        if (l == NULL) {
            return oom(r, pos);
        }
        for (int64_t i = 0; i < cnt; i++) {
            l->v[i] = jv_int(st + i * step);
        }
        out->t = JV_LIST;
        out->tuple = 0;
        out->u.l = l;
        return 0;
    }
    case F_NAMESPACE:
    case F_DICT:
        return make_ns_or_dict(r, pos, a, fn->id == F_NAMESPACE, out);
    case F_RAISE: {
        jv msg;
        if (a->npos < 1) {
            return rfail(r, pos, "raise_exception() needs a message");
        }
        if (to_str(r, pos, &a->pos[0], &msg) < 0) {
            return -1;
        }
        snprintf(r->err, r->errlen, "%.*s", (int) (msg.u.s.n > 4000 ? 4000 : msg.u.s.n),
                 msg.u.s.p);
        r->failed = 1;
        r->raised = 1;
        return -1;
    }
    case F_STRFTIME_NOW: {
        static const char *const params[] = { "format" };
        char buf[512];
        time_t now = time(NULL);
        struct tm tmv;
        if (bind_args(r, pos, "strftime_now", params, 1, a, s, have, NULL) < 0
            || need_str(r, pos, &s[0], "format") < 0) {
            return -1;
        }
        char *fmt = r_strdup(r, s[0].u.s.p, s[0].u.s.n);
        if (fmt == NULL) {
            return oom(r, pos);
        }
        if (localtime_r(&now, &tmv) == NULL) {
            return rfail(r, pos, "strftime_now: cannot read the local time");
        }
        size_t n = strftime(buf, sizeof(buf), fmt, &tmv);
        char *res = r_strdup(r, buf, n);
        if (res == NULL) {
            return oom(r, pos);
        }
        *out = jv_str(res, n);
        return 0;
    }
    case M_STARTSWITH:
    case M_ENDSWITH: {
        static const char *const params[] = { "prefix" };
        if (bind_args(r, pos, fn->name, params, 1, a, s, have, NULL) < 0) {
            return -1;
        }
        if (!have[0]) {
            return rfail(r, pos, "%s() takes at least 1 argument (0 given)", fn->name);
        }
        if (starts_or_ends(r, pos, self, &s[0], fn->id == M_ENDSWITH, &res) < 0) {
            return -1;
        }
        *out = jv_bool(res);
        return 0;
    }
    case M_SPLIT:
    case M_RSPLIT: {
        static const char *const params[] = { "sep", "maxsplit" };
        int64_t maxsplit = -1;
        if (bind_args(r, pos, fn->name, params, 2, a, s, have, NULL) < 0) {
            return -1;
        }
        if (have[1]) {
            if (need_int(r, pos, &s[1], "maxsplit") < 0) {
                return -1;
            }
            maxsplit = s[1].u.i < 0 ? -1 : s[1].u.i;
        }
        return str_split(r, pos, self, have[0] ? &s[0] : NULL, maxsplit,
                         fn->id == M_RSPLIT, out);
    }
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP: {
        static const char *const params[] = { "chars" };
        if (bind_args(r, pos, fn->name, params, 1, a, s, have, NULL) < 0) {
            return -1;
        }
        const jv *chars = NULL;
        if (have[0] && s[0].t != JV_NONE) {
            if (need_str(r, pos, &s[0], "strip arg") < 0) {
                return -1;
            }
            chars = &s[0];
        }
        *out = str_strip(self, chars, fn->id == M_STRIP ? 3 : fn->id == M_LSTRIP ? 1 : 2);
        return 0;
    }
    case M_REPLACE: {
        static const char *const params[] = { "old", "new", "count" };
        if (bind_args(r, pos, fn->name, params, 3, a, s, have, NULL) < 0) {
            return -1;
        }
        if (!have[0] || !have[1]) {
            return rfail(r, pos, "replace() takes at least 2 arguments");
        }
        if (need_str(r, pos, &s[0], "replace() argument 1") < 0
            || need_str(r, pos, &s[1], "replace() argument 2") < 0
            || (have[2] && need_int(r, pos, &s[2], "count") < 0)) {
            return -1;
        }
        return str_replace(r, pos, self, &s[0], &s[1], have[2] ? s[2].u.i : -1, out);
    }
    case M_UPPER:
    case M_LOWER:
    case M_TITLE:
    case M_CAPITALIZE:
        if (a->npos || a->nkw) {
            return rfail(r, pos, "%s() takes no arguments", fn->name);
        }
        return str_case(r, pos, self,
                        fn->id == M_UPPER ? CASE_UPPER : fn->id == M_LOWER ? CASE_LOWER
                        : fn->id == M_TITLE ? CASE_TITLE : CASE_CAPITALIZE, out);
    case M_FIND:
    case M_RFIND:
    case M_SCOUNT: {
        static const char *const params[] = { "sub" };
        if (bind_args(r, pos, fn->name, params, 1, a, s, have, NULL) < 0) {
            return -1;
        }
        if (!have[0] || need_str(r, pos, &s[0], "argument") < 0) {
            return have[0] ? -1 : rfail(r, pos, "%s() takes exactly 1 argument", fn->name);
        }
        if (fn->id != M_SCOUNT) {
            *out = jv_int(str_find(self, &s[0], fn->id == M_RFIND));
            return 0;
        }
        if (s[0].u.s.n == 0) {
            *out = jv_int((int64_t) u8_count(self->u.s.p, self->u.s.n) + 1);
            return 0;
        }
        int64_t c = 0;
        size_t i = 0;
        const char *hit;
        while ((hit = memmem(self->u.s.p + i, self->u.s.n - i, s[0].u.s.p, s[0].u.s.n))) {
            c++;
            i = (size_t) (hit - self->u.s.p) + s[0].u.s.n;
        }
        *out = jv_int(c);
        return 0;
    }
    case M_JOIN: {
        const jlist *items;
        if (a->npos != 1 || a->nkw) {
            return rfail(r, pos, "join() takes exactly one argument");
        }
        if (iterate(r, pos, &a->pos[0], &items) < 0) {
            return -1;
        }
        return str_join(r, pos, self, items, 1, out);
    }
    case M_ISDIGIT: case M_ISALPHA: case M_ISALNUM: case M_ISSPACE:
    case M_ISLOWER: case M_ISUPPER:
        if (a->npos || a->nkw) {
            return rfail(r, pos, "%s() takes no arguments", fn->name);
        }
        *out = jv_bool(str_predicate(self, fn->id));
        return 0;
    case M_SPLITLINES: {
        static const char *const params[] = { "keepends" };
        if (bind_args(r, pos, fn->name, params, 1, a, s, have, NULL) < 0) {
            return -1;
        }
        return str_splitlines(r, pos, self, have[0] && truthy(&s[0]), out);
    }
    case M_ITEMS:
    case M_KEYS:
    case M_VALUES: {
        const jdict *d = self->u.d;
        if (a->npos || a->nkw) {
            return rfail(r, pos, "%s() takes no arguments", fn->name);
        }
        jlist *l = list_new(&r->mem, d->n);
        if (l == NULL) {
            return oom(r, pos);
        }
        for (size_t i = 0; i < d->n; i++) {
            if (fn->id == M_KEYS) {
                l->v[i] = d->keys[i];
            } else if (fn->id == M_VALUES) {
                l->v[i] = d->vals[i];
            } else {
                jlist *pair = list_new(&r->mem, 2);
                if (pair == NULL) {
                    return oom(r, pos);
                }
                pair->v[0] = d->keys[i];
                pair->v[1] = d->vals[i];
                l->v[i].t = JV_LIST;
                l->v[i].tuple = 1;
                l->v[i].u.l = pair;
            }
        }
        out->t = JV_LIST;
        out->tuple = 0;
        out->u.l = l;
        return 0;
    }
    case M_GET: {
        if (a->nkw || a->npos < 1 || a->npos > 2) {
            return rfail(r, pos, "get() takes 1 or 2 positional arguments");
        }
        long i = is_hashable(&a->pos[0]) ? dict_find(self->u.d, &a->pos[0]) : -1;
        if (!is_hashable(&a->pos[0])) {
            return rfail(r, pos, "unhashable type: '%s'", type_name(&a->pos[0]));
        }
        *out = i >= 0 ? self->u.d->vals[i] : a->npos == 2 ? a->pos[1] : JV_NONE_V;
        return 0;
    }
    case M_LINDEX:
    case M_LCOUNT: {
        if (a->nkw || a->npos != 1) {
            return rfail(r, pos, "%s() takes exactly one argument", fn->name);
        }
        int64_t c = 0;
        for (size_t i = 0; i < self->u.l->n; i++) {
            if (values_equal(&self->u.l->v[i], &a->pos[0], 0)) {
                if (fn->id == M_LINDEX) {
                    *out = jv_int((int64_t) i);
                    return 0;
                }
                c++;
            }
        }
        if (fn->id == M_LINDEX) {
            return rfail(r, pos, "value is not in list");
        }
        *out = jv_int(c);
        return 0;
    }
    case M_CYCLE:
        if (a->npos == 0) {
            return rfail(r, pos, "no items for cycling given");
        }
        *out = a->pos[(size_t) self->u.loop->index0 % a->npos];
        return 0;
    case M_UNSUPPORTED:
        return rfail(r, pos, "the method '%s' of '%s' objects is not supported", fn->name,
                     type_name(self));
    }
    return rfail(r, pos, "internal error: unknown function");
}

/* ------------------------------------------------------------------ */
/* tests                                                               */
/* ------------------------------------------------------------------ */

static int apply_test(R *r, size_t pos, int tid, const jv *v, const call_args *a, int *res)
{
    const jv *arg = a->npos ? &a->pos[0] : NULL;
    int c;
    int takes_arg = tid == TS_SAMEAS || tid == TS_DIVISIBLEBY || tid == TS_EQ || tid == TS_NE
                    || tid == TS_LT || tid == TS_LE || tid == TS_GT || tid == TS_GE
                    || tid == TS_IN;

    if (a->nkw || a->npos > (size_t) takes_arg) {
        return rfail(r, pos, "this test takes %s", takes_arg ? "one argument" : "no arguments");
    }
    switch ((test_id) tid) {
    case TS_DEFINED: *res = v->t != JV_UNDEF; return 0;
    case TS_UNDEFINED: *res = v->t == JV_UNDEF; return 0;
    case TS_NONE: *res = v->t == JV_NONE; return 0;
    case TS_TRUE: *res = v->t == JV_BOOL && v->u.i; return 0;
    case TS_FALSE: *res = v->t == JV_BOOL && !v->u.i; return 0;
    case TS_BOOLEAN: *res = v->t == JV_BOOL; return 0;
    case TS_INTEGER: *res = v->t == JV_INT; return 0;
    case TS_FLOAT: *res = v->t == JV_FLOAT; return 0;
    case TS_NUMBER: *res = is_number(v); return 0;
    case TS_STRING: *res = v->t == JV_STR; return 0;
    case TS_MAPPING: *res = v->t == JV_DICT; return 0;
    case TS_SEQUENCE:   /* has __len__ and __getitem__: Undefined does too */
        *res = v->t == JV_STR || v->t == JV_LIST || v->t == JV_DICT || v->t == JV_UNDEF;
        return 0;
    case TS_ITERABLE:
        *res = v->t == JV_STR || v->t == JV_LIST || v->t == JV_DICT || v->t == JV_UNDEF;
        return 0;
    case TS_CALLABLE: *res = v->t == JV_FUNC || v->t == JV_MACRO; return 0;
    case TS_ESCAPED: *res = 0; return 0;
    case TS_LOWER:
    case TS_UPPER: {
        jv sv;
        if (to_str(r, pos, v, &sv) < 0) {
            return -1;
        }
        *res = str_predicate(&sv, tid == TS_LOWER ? M_ISLOWER : M_ISUPPER);
        return 0;
    }
    default:
        break;
    }
    if (arg == NULL && tid != TS_ODD && tid != TS_EVEN) {
        return rfail(r, pos, "this test needs an argument");
    }
    switch ((test_id) tid) {
    case TS_SAMEAS:
        if (v->t != arg->t) {
            *res = 0;
        } else if (v->t == JV_NONE || v->t == JV_UNDEF) {
            *res = 1;
        } else if (v->t == JV_BOOL || v->t == JV_INT) {
            *res = v->u.i == arg->u.i;
        } else if (v->t == JV_STR) {
            *res = v->u.s.p == arg->u.s.p && v->u.s.n == arg->u.s.n;
        } else {
            *res = v->u.l == arg->u.l;
        }
        return 0;
    case TS_ODD:
    case TS_EVEN:
    case TS_DIVISIBLEBY: {
        int64_t d = tid == TS_DIVISIBLEBY ? 0 : 2;
        if (need_int(r, pos, v, "value") < 0) {
            return -1;
        }
        if (tid == TS_DIVISIBLEBY) {
            if (need_int(r, pos, arg, "divisibleby argument") < 0) {
                return -1;
            }
            d = arg->u.i;
            if (d == 0) {
                return rfail(r, pos, "integer division or modulo by zero");
            }
        }
        int64_t m = d == -1 ? 0 : v->u.i % d;
        if (m != 0 && ((m < 0) != (d < 0))) {
            m += d;
        }
        *res = tid == TS_ODD ? m == 1 : m == 0;
        return 0;
    }
    case TS_EQ: *res = values_equal(v, arg, 0); return 0;
    case TS_NE: *res = !values_equal(v, arg, 0); return 0;
    case TS_LT: case TS_LE: case TS_GT: case TS_GE: {
        const char *opn = tid == TS_LT ? "<" : tid == TS_LE ? "<=" : tid == TS_GT ? ">" : ">=";
        if (values_order(r, pos, v, arg, opn, &c, 0) < 0) {
            return -1;
        }
        *res = c == 2 ? 0 : tid == TS_LT ? c < 0 : tid == TS_LE ? c <= 0
                          : tid == TS_GT ? c > 0 : c >= 0;
        return 0;
    }
    case TS_IN:
        return contains(r, pos, v, arg, res);
    default:
        return rfail(r, pos, "internal error: unknown test");
    }
}

/* ------------------------------------------------------------------ */
/* filters                                                             */
/* ------------------------------------------------------------------ */

static int apply_filter(R *r, size_t pos, int fid, const jv *v, const call_args *a, jv *out);
static int percent_format(R *r, size_t pos, const jv *fmt, const jv *args, jv *out);

/* Python float() of a string; 0 when it is not a number. */
static int parse_py_float(const jv *s, double *out)
{
    char buf[128];
    jv t = str_strip(s, NULL, 3);
    size_t n = 0;
    if (t.u.s.n == 0 || t.u.s.n >= sizeof(buf)) {
        return 0;
    }
    for (size_t i = 0; i < t.u.s.n; i++) {
        char c = t.u.s.p[i];
        if (c == '_') {
            if (i == 0 || i + 1 == t.u.s.n || !is_digit(t.u.s.p[i - 1]) || !is_digit(t.u.s.p[i + 1])) {
                return 0;
            }
            continue;
        }
        if (!(is_digit(c) || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'
              || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
            return 0;
        }
        buf[n++] = c;
    }
    buf[n] = '\0';
    /* Python accepts inf/infinity/nan (any case); reject hex floats */
    for (size_t i = 0; i < n; i++) {
        if (buf[i] == 'x' || buf[i] == 'X' || buf[i] == 'p' || buf[i] == 'P') {
            return 0;
        }
    }
    char *end;
    errno = 0;
    double d = strtod(buf, &end);
    if (*end != '\0' || end == buf) {
        return 0;
    }
    *out = d;
    return 1;
}

/* Python int() of a string in base 10; 0 when it is not one. */
static int parse_py_int(const jv *s, int64_t *out)
{
    jv t = str_strip(s, NULL, 3);
    size_t i = 0;
    int neg = 0;
    uint64_t v = 0;
    if (t.u.s.n == 0) {
        return 0;
    }
    if (t.u.s.p[0] == '+' || t.u.s.p[0] == '-') {
        neg = t.u.s.p[0] == '-';
        i++;
    }
    if (i >= t.u.s.n || !is_digit(t.u.s.p[i])) {
        return 0;
    }
    for (; i < t.u.s.n; i++) {
        char c = t.u.s.p[i];
        if (c == '_' && i + 1 < t.u.s.n && is_digit(t.u.s.p[i + 1]) && is_digit(t.u.s.p[i - 1])) {
            continue;
        }
        if (!is_digit(c)) {
            return 0;
        }
        if (v > (UINT64_MAX - 9) / 10) {
            return 0;
        }
        v = v * 10 + (uint64_t) (c - '0');
    }
    if (v > (uint64_t) INT64_MAX + (uint64_t) neg) {
        return 0;
    }
    *out = neg ? (int64_t) (0 - v) : (int64_t) v;
    return 1;
}

/* attribute path "a.b.0" as Jinja's make_attrgetter */
static int get_attr_path(R *r, size_t pos, const jv *v, const jv *path, jv *out)
{
    jv cur = *v;
    size_t i = 0;
    if (path->t == JV_INT) {
        return get_item(r, pos, v, path, out);
    }
    if (need_str(r, pos, path, "attribute") < 0) {
        return -1;
    }
    while (1) {
        size_t e = i;
        while (e < path->u.s.n && path->u.s.p[e] != '.') {
            e++;
        }
        jv key = jv_str(path->u.s.p + i, e - i), idx;
        int64_t iv;
        if (parse_py_int(&key, &iv) && key.u.s.n && is_digit(key.u.s.p[0])) {
            idx = jv_int(iv);
            if (get_item(r, pos, &cur, &idx, &cur) < 0) {
                return -1;
            }
        } else if (get_item(r, pos, &cur, &key, &cur) < 0) {
            return -1;
        }
        if (e >= path->u.s.n) {
            break;
        }
        i = e + 1;
    }
    *out = cur;
    return 0;
}

typedef struct {
    jv key;
    size_t idx;
} sort_item;

/* stable merge sort by key with Python ordering; fails on unorderable keys */
static int merge_sort(R *r, size_t pos, sort_item *v, sort_item *tmp, size_t n, int reverse)
{
    if (n < 2) {
        return 0;
    }
    size_t h = n / 2;
    if (merge_sort(r, pos, v, tmp, h, reverse) < 0
        || merge_sort(r, pos, v + h, tmp, n - h, reverse) < 0) {
        return -1;
    }
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        int c;
        if (values_order(r, pos, &v[j].key, &v[i].key, "<", &c, 0) < 0) {
            return -1;
        }
        /* take from the right only when strictly before (stability) */
        int right_first = reverse ? c > 0 && c != 2 : c < 0;
        tmp[k++] = right_first ? v[j++] : v[i++];
    }
    while (i < h) {
        tmp[k++] = v[i++];
    }
    while (j < n) {
        tmp[k++] = v[j++];
    }
    memcpy(v, tmp, n * sizeof(sort_item));
    return 0;
}

/* keys for sort/unique/min/max: the attribute, lowercased unless case_sensitive */
static int sort_keys_of(R *r, size_t pos, const jlist *items, const jv *attr,
                        int case_sensitive, sort_item **out)
{
    sort_item *si = arena_alloc(&r->mem, (items->n + 1) * sizeof(sort_item));
    if (si == NULL) {
        return oom(r, pos);
    }
    for (size_t i = 0; i < items->n; i++) {
        jv k = items->v[i];
        if (attr && attr->t != JV_NONE && attr->t != JV_UNDEF
            && get_attr_path(r, pos, &items->v[i], attr, &k) < 0) {
            return -1;
        }
        if (!case_sensitive && k.t == JV_STR && str_case(r, pos, &k, CASE_LOWER, &k) < 0) {
            return -1;
        }
        si[i].key = k;
        si[i].idx = i;
    }
    *out = si;
    return 0;
}

/* the result of map/select/reject/unique: a generator in Jinja */
static int generator_value(R *r, size_t pos, jvec *vec, jv *out)
{
    if (jvec_to_list(r, pos, vec, 0, out) < 0) {
        return -1;
    }
    out->u.l->gen = 1;
    return 0;
}

static int filter_select(R *r, size_t pos, int fid, const jv *v, const call_args *a, jv *out)
{
    const jlist *items;
    int by_attr = fid == FL_SELECTATTR || fid == FL_REJECTATTR;
    int want = fid == FL_SELECT || fid == FL_SELECTATTR;
    size_t first_arg = by_attr ? 1 : 0;
    jvec res = { 0 };
    int tid = -1;
    call_args targs;

    /* Jinja's select_or_reject yields nothing for a false input (None...) */
    if (!truthy(v)) {
        return generator_value(r, pos, &res, out);
    }
    if (iterate(r, pos, v, &items) < 0) {
        return -1;
    }
    if (by_attr && a->npos < 1) {
        return rfail(r, pos, "missing parameter for attribute name");
    }
    if (a->npos > first_arg) {
        if (need_str(r, pos, &a->pos[first_arg], "test name") < 0) {
            return -1;
        }
        tid = find_test(a->pos[first_arg].u.s.p, a->pos[first_arg].u.s.n);
        if (tid < 0) {
            return rfail(r, pos, "no test named '%.*s'", (int) a->pos[first_arg].u.s.n,
                         a->pos[first_arg].u.s.p);
        }
    }
    memset(&targs, 0, sizeof(targs));
    for (size_t i = first_arg + 1; i < a->npos; i++) {
        targs.pos[targs.npos++] = a->pos[i];
    }
    targs.nkw = a->nkw;
    for (size_t i = 0; i < a->nkw; i++) {
        targs.kwname[i] = a->kwname[i];
        targs.kw[i] = a->kw[i];
    }
    for (size_t i = 0; i < items->n; i++) {
        jv item = items->v[i];
        int ok;
        if (by_attr && get_attr_path(r, pos, &items->v[i], &a->pos[0], &item) < 0) {
            return -1;
        }
        if (tid < 0) {
            ok = truthy(&item);
        } else if (apply_test(r, pos, tid, &item, &targs, &ok) < 0) {
            return -1;
        }
        if (ok == want && jvec_push(r, pos, &res, items->v[i]) < 0) {
            return -1;
        }
    }
    return generator_value(r, pos, &res, out);
}

static int filter_tojson(R *r, size_t pos, const jv *v, const call_args *a, jv *out)
{
    static const char *const params[] = { "ensure_ascii", "indent", "separators", "sort_keys" };
    jv s[4];
    int have[4];
    json_opts o;
    char spaces[64];
    sbuf b = { 0 };

    if (bind_args(r, pos, "tojson", params, 4, a, s, have, NULL) < 0) {
        return -1;
    }
    memset(&o, 0, sizeof(o));
    o.ensure_ascii = have[0] && truthy(&s[0]);
    o.sort_keys = have[3] && truthy(&s[3]);
    if (have[1] && s[1].t != JV_NONE) {
        if (s[1].t == JV_STR) {
            o.indent = s[1].u.s.p;
            o.indent_len = s[1].u.s.n;
        } else if (s[1].t == JV_INT || s[1].t == JV_BOOL) {
            int64_t w = s[1].u.i < 0 ? 0 : s[1].u.i;
            if (w >= (int64_t) sizeof(spaces)) {
                return rfail(r, pos, "tojson indent too large");
            }
            memset(spaces, ' ', (size_t) w);
            spaces[w] = '\0';
            o.indent = spaces;
            o.indent_len = (size_t) w;
        } else {
            return rfail(r, pos, "tojson indent must be an integer or a string");
        }
    }
    o.item_sep = o.indent ? "," : ", ";
    o.item_sep_len = strlen(o.item_sep);
    o.key_sep = ": ";
    o.key_sep_len = 2;
    if (have[2] && s[2].t != JV_NONE) {
        if (s[2].t != JV_LIST || s[2].u.l->n != 2 || s[2].u.l->v[0].t != JV_STR
            || s[2].u.l->v[1].t != JV_STR) {
            return rfail(r, pos, "tojson separators must be a pair of strings");
        }
        o.item_sep = s[2].u.l->v[0].u.s.p;
        o.item_sep_len = s[2].u.l->v[0].u.s.n;
        o.key_sep = s[2].u.l->v[1].u.s.p;
        o.key_sep_len = s[2].u.l->v[1].u.s.n;
    }
    b.max = r->lim.max_output;
    int rc = json_dump(&b, v, &o, 0, &r->mem);
    if (rc < 0 || b.overflow) {
        free(b.p);
        if (o.bad_type) {
            return rfail(r, pos, "Object of type %s is not JSON serializable", o.bad_type);
        }
        return rfail(r, pos, "tojson: %s", o.error ? o.error : "result too large");
    }
    char *res = r_strdup(r, b.p ? b.p : "", b.n);
    size_t n = b.n;
    free(b.p);
    if (res == NULL) {
        return oom(r, pos);
    }
    *out = jv_str(res, n);
    return 0;
}

static int filter_indent(R *r, size_t pos, const jv *v, const call_args *a, jv *out)
{
    static const char *const params[] = { "width", "first", "blank" };
    jv s[3], str, lines, ind;
    int have[3];
    char spaces[256];
    sbuf b = { 0 };

    if (bind_args(r, pos, "indent", params, 3, a, s, have, NULL) < 0
        || to_str(r, pos, v, &str) < 0) {
        return -1;
    }
    if (!have[0]) {
        ind = jv_str("    ", 4);
    } else if (s[0].t == JV_STR) {
        ind = s[0];
    } else if (s[0].t == JV_INT) {
        int64_t w = s[0].u.i < 0 ? 0 : s[0].u.i;
        if (w >= (int64_t) sizeof(spaces)) {
            return rfail(r, pos, "indent width too large");
        }
        memset(spaces, ' ', (size_t) w);
        ind = jv_str(spaces, (size_t) w);
    } else {
        return rfail(r, pos, "indent width must be an integer or a string");
    }
    /* Jinja appends a newline so that splitlines keeps a trailing one */
    char *tmp = arena_alloc(&r->mem, str.u.s.n + 2);
    if (tmp == NULL) {
        return oom(r, pos);
    }
    memcpy(tmp, str.u.s.p, str.u.s.n);
    tmp[str.u.s.n] = '\n';
    jv with_nl = jv_str(tmp, str.u.s.n + 1);
    if (str_splitlines(r, pos, &with_nl, 0, &lines) < 0) {
        return -1;
    }
    b.max = r->lim.max_output;
    const jlist *l = lines.u.l;
    int blank = have[2] && truthy(&s[2]);
    if (have[1] && truthy(&s[1])) {
        sb_put(&b, ind.u.s.p, ind.u.s.n);
    }
    for (size_t i = 0; i < l->n; i++) {
        if (i) {
            sb_putc(&b, '\n');
            if (blank || l->v[i].u.s.n) {
                sb_put(&b, ind.u.s.p, ind.u.s.n);
            }
        }
        sb_put(&b, l->v[i].u.s.p, l->v[i].u.s.n);
    }
    if (b.overflow) {
        free(b.p);
        return rfail(r, pos, "indent result too large");
    }
    char *res = r_strdup(r, b.p ? b.p : "", b.n);
    size_t n = b.n;
    free(b.p);
    if (res == NULL) {
        return oom(r, pos);
    }
    *out = jv_str(res, n);
    return 0;
}

static int apply_filter(R *r, size_t pos, int fid, const jv *v, const call_args *a, jv *out)
{
    jv s[4], sv;
    int have[4];
    const jlist *items;

    switch ((filter_id) fid) {
    case FL_SAFE:
        *out = *v;
        return 0;
    case FL_LENGTH:
    case FL_COUNT:
        switch (v->t) {
        case JV_UNDEF: *out = jv_int(0); return 0;
        case JV_STR: *out = jv_int((int64_t) u8_count(v->u.s.p, v->u.s.n)); return 0;
        case JV_LIST:
            if (v->u.l->gen) {
                return rfail(r, pos, "object of type 'generator' has no len()");
            }
            *out = jv_int((int64_t) v->u.l->n);
            return 0;
        case JV_DICT: *out = jv_int((int64_t) v->u.d->n); return 0;
        default:
            return rfail(r, pos, "object of type '%s' has no len()", type_name(v));
        }
    case FL_DEFAULT: {
        static const char *const params[] = { "default_value", "boolean" };
        if (bind_args(r, pos, "default", params, 2, a, s, have, NULL) < 0) {
            return -1;
        }
        int use_default = v->t == JV_UNDEF || (have[1] && truthy(&s[1]) && !truthy(v));
        *out = use_default ? (have[0] ? s[0] : jv_str("", 0)) : *v;
        return 0;
    }
    case FL_TRIM: {
        static const char *const params[] = { "chars" };
        if (bind_args(r, pos, "trim", params, 1, a, s, have, NULL) < 0
            || to_str(r, pos, v, &sv) < 0) {
            return -1;
        }
        if (have[0] && s[0].t != JV_NONE && need_str(r, pos, &s[0], "trim chars") < 0) {
            return -1;
        }
        *out = str_strip(&sv, have[0] && s[0].t == JV_STR ? &s[0] : NULL, 3);
        return 0;
    }
    case FL_STRING:
        return to_str(r, pos, v, out);
    case FL_LOWER:
    case FL_UPPER:
    case FL_TITLE:
    case FL_CAPITALIZE:
        if (a->npos || a->nkw) {
            return rfail(r, pos, "this filter takes no arguments");
        }
        if (to_str(r, pos, v, &sv) < 0) {
            return -1;
        }
        return str_case(r, pos, &sv, fid == FL_LOWER ? CASE_LOWER : fid == FL_UPPER ? CASE_UPPER
                                     : fid == FL_TITLE ? CASE_TITLE : CASE_CAPITALIZE, out);
    case FL_ESCAPE: {
        sbuf b = { 0 };
        if (to_str(r, pos, v, &sv) < 0) {
            return -1;
        }
        b.max = r->lim.max_output;
        for (size_t i = 0; i < sv.u.s.n; i++) {
            char c = sv.u.s.p[i];
            switch (c) {
            case '&': sb_puts(&b, "&amp;"); break;
            case '<': sb_puts(&b, "&lt;"); break;
            case '>': sb_puts(&b, "&gt;"); break;
            case '"': sb_puts(&b, "&#34;"); break;
            case '\'': sb_puts(&b, "&#39;"); break;
            default: sb_putc(&b, c);
            }
        }
        char *res = b.overflow ? NULL : r_strdup(r, b.p ? b.p : "", b.n);
        size_t n = b.n;
        free(b.p);
        if (res == NULL) {
            return oom(r, pos);
        }
        *out = jv_str(res, n);
        return 0;
    }
    case FL_REPLACE: {
        static const char *const params[] = { "old", "new", "count" };
        jv o, n;
        if (bind_args(r, pos, "replace", params, 3, a, s, have, NULL) < 0
            || to_str(r, pos, v, &sv) < 0) {
            return -1;
        }
        if (!have[0] || !have[1]) {
            return rfail(r, pos, "replace needs the old and the new string");
        }
        if (to_str(r, pos, &s[0], &o) < 0 || to_str(r, pos, &s[1], &n) < 0) {
            return -1;
        }
        int64_t count = -1;
        if (have[2] && s[2].t != JV_NONE) {
            if (need_int(r, pos, &s[2], "count") < 0) {
                return -1;
            }
            count = s[2].u.i;
        }
        return str_replace(r, pos, &sv, &o, &n, count, out);
    }
    case FL_JOIN: {
        static const char *const params[] = { "d", "attribute" };
        jv sep = jv_str("", 0);
        if (bind_args(r, pos, "join", params, 2, a, s, have, NULL) < 0
            || iterate(r, pos, v, &items) < 0) {
            return -1;
        }
        if (have[0] && to_str(r, pos, &s[0], &sep) < 0) {
            return -1;
        }
        if (have[1] && s[1].t != JV_NONE) {
            jlist *m = list_new(&r->mem, items->n);
            if (m == NULL) {
                return oom(r, pos);
            }
            for (size_t i = 0; i < items->n; i++) {
                if (get_attr_path(r, pos, &items->v[i], &s[1], &m->v[i]) < 0) {
                    return -1;
                }
            }
            items = m;
        }
        return str_join(r, pos, &sep, items, 0, out);
    }
    case FL_FIRST:
    case FL_LAST:
        if (iterate(r, pos, v, &items) < 0) {
            return -1;
        }
        if (items->n == 0) {
            *out = mk_undef(r, fid == FL_FIRST ? "first" : "last", NULL, 0,
                            fid == FL_FIRST ? "No first item, sequence was empty."
                                            : "No last item, sequence was empty.");
            return 0;
        }
        *out = items->v[fid == FL_FIRST ? 0 : items->n - 1];
        return 0;
    case FL_LIST: {
        if (iterate(r, pos, v, &items) < 0) {
            return -1;
        }
        jlist *l = list_new(&r->mem, items->n);
        if (l == NULL) {
            return oom(r, pos);
        }
        if (items->n) {
            memcpy(l->v, items->v, items->n * sizeof(jv));
        }
        out->t = JV_LIST;
        out->tuple = 0;
        out->u.l = l;
        return 0;
    }
    case FL_REVERSE: {
        if (v->t == JV_STR) {
            jv step = jv_int(-1);
            return do_slice(r, pos, v, NULL, NULL, &step, out);
        }
        if (iterate(r, pos, v, &items) < 0) {
            return -1;
        }
        jlist *l = list_new(&r->mem, items->n);
        if (l == NULL) {
            return oom(r, pos);
        }
        for (size_t i = 0; i < items->n; i++) {
            l->v[i] = items->v[items->n - 1 - i];
        }
        /* reversed() gives an iterator; a generator input gives a list */
        l->gen = !(v->t == JV_LIST && v->u.l->gen);
        out->t = JV_LIST;
        out->tuple = 0;
        out->u.l = l;
        return 0;
    }
    case FL_INT: {
        static const char *const params[] = { "default", "base" };
        int64_t iv;
        double dv;
        if (bind_args(r, pos, "int", params, 2, a, s, have, NULL) < 0) {
            return -1;
        }
        jv dflt = have[0] ? s[0] : jv_int(0);
        if (v->t == JV_INT || v->t == JV_BOOL) {
            *out = jv_int(v->u.i);
        } else if (v->t == JV_FLOAT) {
            *out = (isfinite(v->u.f) && fabs(v->u.f) < 9.2e18) ? jv_int((int64_t) v->u.f) : dflt;
        } else if (v->t == JV_STR && parse_py_int(v, &iv)) {
            *out = jv_int(iv);
        } else if (v->t == JV_STR && parse_py_float(v, &dv) && isfinite(dv)
                   && fabs(dv) < 9.2e18) {
            *out = jv_int((int64_t) dv);
        } else {
            *out = dflt;
        }
        return 0;
    }
    case FL_FLOAT: {
        static const char *const params[] = { "default" };
        double dv;
        if (bind_args(r, pos, "float", params, 1, a, s, have, NULL) < 0) {
            return -1;
        }
        if (is_number(v)) {
            *out = jv_float(num_as_double(v));
        } else if (v->t == JV_STR && parse_py_float(v, &dv)) {
            *out = jv_float(dv);
        } else {
            *out = have[0] ? s[0] : jv_float(0.0);
        }
        return 0;
    }
    case FL_ABS:
        if (v->t == JV_INT || v->t == JV_BOOL) {
            if (v->u.i == INT64_MIN) {
                return rfail(r, pos, "integer overflow");
            }
            *out = jv_int(v->u.i < 0 ? -v->u.i : v->u.i);
            return 0;
        }
        if (v->t == JV_FLOAT) {
            *out = jv_float(fabs(v->u.f));
            return 0;
        }
        if (v->t == JV_UNDEF) {
            return fail_undef(r, pos, v);
        }
        return rfail(r, pos, "bad operand type for abs(): '%s'", type_name(v));
    case FL_ROUND: {
        static const char *const params[] = { "precision", "method" };
        if (bind_args(r, pos, "round", params, 2, a, s, have, NULL) < 0) {
            return -1;
        }
        if (!is_number(v)) {
            return v->t == JV_UNDEF ? fail_undef(r, pos, v)
                                    : rfail(r, pos, "round needs a number, not %s", type_name(v));
        }
        int64_t prec = 0;
        if (have[0] && need_int(r, pos, &s[0], "precision") < 0) {
            return -1;
        }
        prec = have[0] ? s[0].u.i : 0;
        if (prec < -300 || prec > 300) {
            return rfail(r, pos, "round precision out of range");
        }
        double x = num_as_double(v), m = pow(10.0, (double) prec), y;
        const char *method = "common";
        char mbuf[16];
        if (have[1]) {
            if (need_str(r, pos, &s[1], "method") < 0) {
                return -1;
            }
            snprintf(mbuf, sizeof(mbuf), "%.*s", (int) (s[1].u.s.n > 10 ? 10 : s[1].u.s.n),
                     s[1].u.s.p);
            method = mbuf;
        }
        if (!strcmp(method, "common")) {
            y = nearbyint(x * m) / m;   /* ties to even, as Python's round() */
        } else if (!strcmp(method, "ceil")) {
            y = ceil(x * m) / m;
        } else if (!strcmp(method, "floor")) {
            y = floor(x * m) / m;
        } else {
            return rfail(r, pos, "method must be common, ceil or floor");
        }
        *out = jv_float(y);
        return 0;
    }
    case FL_ITEMS: {
        /* a generator in Jinja */
        if (v->t == JV_UNDEF) {
            jlist *l = list_new(&r->mem, 0);
            if (l == NULL) {
                return oom(r, pos);
            }
            l->gen = 1;
            out->t = JV_LIST;
            out->tuple = 0;
            out->u.l = l;
            return 0;
        }
        if (v->t != JV_DICT) {
            return rfail(r, pos, "Can only get item pairs from a mapping.");
        }
        jfunc f = { M_ITEMS, "items", *v };
        call_args none;
        memset(&none, 0, sizeof(none));
        if (call_func(r, pos, &f, &none, out) < 0) {
            return -1;
        }
        out->u.l->gen = 1;
        return 0;
    }
    case FL_MAP: {
        jvec res = { 0 };
        /* Jinja's map yields nothing for a false input (None, '', 0) */
        if (!truthy(v)) {
            return generator_value(r, pos, &res, out);
        }
        if (iterate(r, pos, v, &items) < 0) {
            return -1;
        }
        if (a->npos == 0) {
            /* map(attribute='x', default=...) */
            static const char *const params[] = { "attribute", "default" };
            if (bind_args(r, pos, "map", params, 2, a, s, have, NULL) < 0) {
                return -1;
            }
            if (!have[0]) {
                return rfail(r, pos, "map needs a filter name or attribute=");
            }
            for (size_t i = 0; i < items->n; i++) {
                jv x;
                if (get_attr_path(r, pos, &items->v[i], &s[0], &x) < 0) {
                    return -1;
                }
                if (x.t == JV_UNDEF && have[1]) {
                    x = s[1];
                }
                if (jvec_push(r, pos, &res, x) < 0) {
                    return -1;
                }
            }
            return generator_value(r, pos, &res, out);
        }
        if (need_str(r, pos, &a->pos[0], "filter name") < 0) {
            return -1;
        }
        int f2 = find_filter(a->pos[0].u.s.p, a->pos[0].u.s.n);
        if (f2 < 0) {
            return rfail(r, pos, "no filter named '%.*s'", (int) a->pos[0].u.s.n, a->pos[0].u.s.p);
        }
        call_args fa;
        memset(&fa, 0, sizeof(fa));
        for (size_t i = 1; i < a->npos; i++) {
            fa.pos[fa.npos++] = a->pos[i];
        }
        for (size_t i = 0; i < a->nkw; i++) {
            fa.kwname[i] = a->kwname[i];
            fa.kw[i] = a->kw[i];
        }
        fa.nkw = a->nkw;
        for (size_t i = 0; i < items->n; i++) {
            jv x;
            if (apply_filter(r, pos, f2, &items->v[i], &fa, &x) < 0
                || jvec_push(r, pos, &res, x) < 0) {
                return -1;
            }
        }
        return generator_value(r, pos, &res, out);
    }
    case FL_SELECT:
    case FL_REJECT:
    case FL_SELECTATTR:
    case FL_REJECTATTR:
        return filter_select(r, pos, fid, v, a, out);
    case FL_SORT:
    case FL_UNIQUE:
    case FL_MIN:
    case FL_MAX: {
        static const char *const sort_params[] = { "reverse", "case_sensitive", "attribute" };
        static const char *const other_params[] = { "case_sensitive", "attribute" };
        sort_item *si = NULL;
        int reverse = 0, cs;
        const jv *attr;
        if (fid == FL_SORT) {
            if (bind_args(r, pos, "sort", sort_params, 3, a, s, have, NULL) < 0) {
                return -1;
            }
            reverse = have[0] && truthy(&s[0]);
            cs = have[1] && truthy(&s[1]);
            attr = have[2] ? &s[2] : NULL;
        } else {
            if (bind_args(r, pos, fid == FL_UNIQUE ? "unique" : "min", other_params, 2, a, s,
                          have, NULL) < 0) {
                return -1;
            }
            cs = have[0] && truthy(&s[0]);
            attr = have[1] ? &s[1] : NULL;
        }
        if (iterate(r, pos, v, &items) < 0 || sort_keys_of(r, pos, items, attr, cs, &si) < 0) {
            return -1;
        }
        if (fid == FL_UNIQUE) {
            jvec res = { 0 };
            for (size_t i = 0; i < items->n; i++) {
                int seen = 0;
                for (size_t j = 0; j < i && !seen; j++) {
                    seen = values_equal(&si[j].key, &si[i].key, 0);
                }
                if (!seen && jvec_push(r, pos, &res, items->v[i]) < 0) {
                    return -1;
                }
            }
            return generator_value(r, pos, &res, out);
        }
        if (fid == FL_MIN || fid == FL_MAX) {
            if (items->n == 0) {
                *out = mk_undef(r, "min", NULL, 0, "No aggregated item, sequence was empty.");
                return 0;
            }
            size_t best = 0;
            for (size_t i = 1; i < items->n; i++) {
                int c;
                if (values_order(r, pos, &si[i].key, &si[best].key, "<", &c, 0) < 0) {
                    return -1;
                }
                if (c != 2 && (fid == FL_MIN ? c < 0 : c > 0)) {
                    best = i;
                }
            }
            *out = items->v[best];
            return 0;
        }
        sort_item *tmp = arena_alloc(&r->mem, (items->n + 1) * sizeof(sort_item));
        if (tmp == NULL) {
            return oom(r, pos);
        }
        if (merge_sort(r, pos, si, tmp, items->n, reverse) < 0) {
            return -1;
        }
        jlist *l = list_new(&r->mem, items->n);
        if (l == NULL) {
            return oom(r, pos);
        }
        for (size_t i = 0; i < items->n; i++) {
            l->v[i] = items->v[si[i].idx];
        }
        out->t = JV_LIST;
        out->tuple = 0;
        out->u.l = l;
        return 0;
    }
    case FL_SUM: {
        static const char *const params[] = { "attribute", "start" };
        if (bind_args(r, pos, "sum", params, 2, a, s, have, NULL) < 0
            || iterate(r, pos, v, &items) < 0) {
            return -1;
        }
        jv acc = have[1] ? s[1] : jv_int(0);
        for (size_t i = 0; i < items->n; i++) {
            jv x = items->v[i];
            if (have[0] && s[0].t != JV_NONE && get_attr_path(r, pos, &items->v[i], &s[0], &x) < 0) {
                return -1;
            }
            if (!is_number(&x) || !is_number(&acc)) {
                return rfail(r, pos, "sum() of non-numbers ('%s')", type_name(&x));
            }
            if (acc.t != JV_FLOAT && x.t != JV_FLOAT) {
                int64_t rr;
                if (__builtin_add_overflow(acc.u.i, x.u.i, &rr)) {
                    return rfail(r, pos, "integer overflow");
                }
                acc = jv_int(rr);
            } else {
                acc = jv_float(num_as_double(&acc) + num_as_double(&x));
            }
        }
        *out = acc;
        return 0;
    }
    case FL_DICTSORT: {
        /* (key, value) pairs sorted by key or value, case-insensitively
         * unless case_sensitive */
        static const char *const params[] = { "case_sensitive", "by", "reverse" };
        int by_value = 0;
        if (bind_args(r, pos, "dictsort", params, 3, a, s, have, NULL) < 0) {
            return -1;
        }
        if (v->t != JV_DICT) {
            return v->t == JV_UNDEF ? fail_undef(r, pos, v)
                                    : rfail(r, pos, "dictsort needs a mapping, not %s", type_name(v));
        }
        if (have[1]) {
            if (need_str(r, pos, &s[1], "by") < 0) {
                return -1;
            }
            if (s[1].u.s.n == 5 && !memcmp(s[1].u.s.p, "value", 5)) {
                by_value = 1;
            } else if (!(s[1].u.s.n == 3 && !memcmp(s[1].u.s.p, "key", 3))) {
                return rfail(r, pos, "You can only sort by either \"key\" or \"value\"");
            }
        }
        jfunc f = { M_ITEMS, "items", *v };
        call_args none;
        jv pairs;
        sort_item *si = NULL, *tmp;
        memset(&none, 0, sizeof(none));
        if (call_func(r, pos, &f, &none, &pairs) < 0) {
            return -1;
        }
        const jlist *pl = pairs.u.l;
        jlist *keys = list_new(&r->mem, pl->n);
        if (keys == NULL) {
            return oom(r, pos);
        }
        for (size_t i = 0; i < pl->n; i++) {
            keys->v[i] = pl->v[i].u.l->v[by_value];
        }
        if (sort_keys_of(r, pos, keys, NULL, have[0] && truthy(&s[0]), &si) < 0) {
            return -1;
        }
        tmp = arena_alloc(&r->mem, (pl->n + 1) * sizeof(sort_item));
        if (tmp == NULL) {
            return oom(r, pos);
        }
        if (merge_sort(r, pos, si, tmp, pl->n, have[2] && truthy(&s[2])) < 0) {
            return -1;
        }
        jlist *l = list_new(&r->mem, pl->n);
        if (l == NULL) {
            return oom(r, pos);
        }
        for (size_t i = 0; i < pl->n; i++) {
            l->v[i] = pl->v[si[i].idx];
        }
        out->t = JV_LIST;
        out->tuple = 0;
        out->u.l = l;
        return 0;
    }
    case FL_FORMAT: {
        /* Jinja: str(value) % (kwargs or args) */
        jv fargs;
        if (a->npos && a->nkw) {
            return rfail(r, pos, "can't handle positional and keyword arguments at the same time");
        }
        if (to_str(r, pos, v, &sv) < 0) {
            return -1;
        }
        if (a->nkw) {
            jdict *d = dict_new(&r->mem, a->nkw);
            if (d == NULL) {
                return oom(r, pos);
            }
            for (size_t i = 0; i < a->nkw; i++) {
                if (dict_set(&r->mem, d, jv_str(a->kwname[i], strlen(a->kwname[i])), a->kw[i]) < 0) {
                    return oom(r, pos);
                }
            }
            fargs.t = JV_DICT;
            fargs.tuple = 0;
            fargs.u.d = d;
        } else {
            jlist *l = list_new(&r->mem, a->npos);
            if (l == NULL) {
                return oom(r, pos);
            }
            for (size_t i = 0; i < a->npos; i++) {
                l->v[i] = a->pos[i];
            }
            fargs.t = JV_LIST;
            fargs.tuple = 1;
            fargs.u.l = l;
        }
        return percent_format(r, pos, &sv, &fargs, out);
    }
    case FL_TOJSON:
        return filter_tojson(r, pos, v, a, out);
    case FL_INDENT:
        return filter_indent(r, pos, v, a, out);
    }
    return rfail(r, pos, "internal error: unknown filter");
}

/* ------------------------------------------------------------------ */
/* expressions                                                         */
/* ------------------------------------------------------------------ */

static int eval(R *r, scope *sc, const node *n, jv *out);
static int call_macro(R *r, size_t pos, const jmacro *m, const call_args *a, jv *out);

static int step(R *r, size_t pos)
{
    if (++r->steps > r->lim.max_steps) {
        return rfail(r, pos, "the template ran longer than its limit of %llu steps",
                     (unsigned long long) r->lim.max_steps);
    }
    return 0;
}

static int eval_args(R *r, scope *sc, const node *n, call_args *a)
{
    if (n->nitems > MAX_ARGS || n->nkw > MAX_ARGS) {
        return rfail(r, n->pos, "too many arguments (at most %d)", MAX_ARGS);
    }
    a->npos = n->nitems;
    a->nkw = n->nkw;
    for (size_t i = 0; i < n->nitems; i++) {
        if (eval(r, sc, n->items[i], &a->pos[i]) < 0) {
            return -1;
        }
    }
    for (size_t i = 0; i < n->nkw; i++) {
        a->kwname[i] = n->names[i];
        if (eval(r, sc, n->items2[i], &a->kw[i]) < 0) {
            return -1;
        }
    }
    return 0;
}

static int concat_strings(R *r, size_t pos, const jv *a, const jv *b, jv *out)
{
    size_t n = a->u.s.n + b->u.s.n;
    if (b->u.s.n == 0) {
        *out = *a;
        return 0;
    }
    if (a->u.s.n == 0) {
        *out = *b;
        return 0;
    }
    char *p = arena_alloc(&r->mem, n + 1);
    if (p == NULL) {
        return oom(r, pos);
    }
    memcpy(p, a->u.s.p, a->u.s.n);
    memcpy(p + a->u.s.n, b->u.s.p, b->u.s.n);
    p[n] = '\0';
    *out = jv_str(p, n);
    return 0;
}

static int repeat_value(R *r, size_t pos, const jv *seq, int64_t times, jv *out)
{
    if (times < 0) {
        times = 0;
    }
    if (seq->t == JV_STR) {
        if (seq->u.s.n && (uint64_t) times > r->lim.max_output / seq->u.s.n) {
            return rfail(r, pos, "string repetition result too large");
        }
        size_t n = seq->u.s.n * (size_t) times;
        char *p = arena_alloc(&r->mem, n + 1);
        if (p == NULL) {
            return oom(r, pos);
        }
        for (int64_t i = 0; i < times; i++) {
            memcpy(p + (size_t) i * seq->u.s.n, seq->u.s.p, seq->u.s.n);
        }
        p[n] = '\0';
        *out = jv_str(p, n);
        return 0;
    }
    size_t ln = seq->u.l->n;
    if (ln && (uint64_t) times > (r->lim.max_memory / sizeof(jv)) / ln) {
        return oom(r, pos);
    }
    jlist *l = list_new(&r->mem, ln * (size_t) times);
    if (l == NULL) {
        return oom(r, pos);
    }
    for (int64_t i = 0; i < times; i++) {
        memcpy(l->v + (size_t) i * ln, seq->u.l->v, ln * sizeof(jv));
    }
    out->t = JV_LIST;
    out->tuple = seq->tuple;
    out->u.l = l;
    return 0;
}

static const char *op_name(int op)
{
    switch (op) {
    case '+': return "+";
    case '-': return "-";
    case '*': return "*";
    case '/': return "/";
    case OP_FLOORDIV: return "//";
    case '%': return "%";
    case OP_POW: return "** or pow()";
    default: return "?";
    }
}

/* ------------------------------------------------------------------ */
/* printf-style formatting: Python's  str % args  (and the format filter) */
/* ------------------------------------------------------------------ */

/* Pads text to width code points (left- or right-justified). */
static void put_padded(sbuf *b, const char *p, size_t n, int64_t width, int left, char fill)
{
    int64_t len = (int64_t) u8_count(p, n);
    if (!left) {
        for (int64_t i = len; i < width; i++) {
            sb_putc(b, fill);
        }
    }
    sb_put(b, p, n);
    if (left) {
        for (int64_t i = len; i < width; i++) {
            sb_putc(b, ' ');
        }
    }
}

/*
 * fmt % args.  args: a tuple (several arguments), a dict (for %(name)s) or
 * any other single value.  Conversions s r a d i u o x X e E f F g G c %.
 */
static int percent_format(R *r, size_t pos, const jv *fmt, const jv *args, jv *out)
{
    const char *f = fmt->u.s.p;
    size_t n = fmt->u.s.n, i = 0, argi = 0;
    int is_tuple = args->t == JV_LIST && args->tuple;
    int is_map = args->t == JV_DICT;
    size_t nargs = is_tuple ? args->u.l->n : 1;
    int used_key = 0;
    sbuf b = { 0 };
    char num[512];

    b.max = r->lim.max_output;
#define FAIL(...) do { free(b.p); return rfail(r, pos, __VA_ARGS__); } while (0)
    while (i < n) {
        const char *pct = memchr(f + i, '%', n - i);
        if (pct == NULL) {
            sb_put(&b, f + i, n - i);
            break;
        }
        sb_put(&b, f + i, (size_t) (pct - (f + i)));
        i = (size_t) (pct - f) + 1;
        if (i >= n) {
            FAIL("incomplete format");
        }
        jv v = JV_UNDEFINED;
        int have_v = 0;
        if (f[i] == '(') {
            size_t st = ++i;
            int depth = 1;
            while (i < n && depth) {
                depth += f[i] == '(' ? 1 : f[i] == ')' ? -1 : 0;
                i++;
            }
            if (depth) {
                FAIL("incomplete format key");
            }
            if (!is_map) {
                FAIL("format requires a mapping");
            }
            long k = dict_find(args->u.d, &(jv){ .t = JV_STR, .u.s = { f + st, i - 1 - st } });
            if (k < 0) {
                FAIL("KeyError: '%.*s'", (int) (i - 1 - st), f + st);
            }
            v = args->u.d->vals[k];
            have_v = 1;
            used_key = 1;
        }
        int left = 0, zero = 0, plus = 0, space = 0, alt = 0;
        for (; i < n && strchr("-0+ #", f[i]) && f[i]; i++) {
            left |= f[i] == '-';
            zero |= f[i] == '0';
            plus |= f[i] == '+';
            space |= f[i] == ' ';
            alt |= f[i] == '#';
        }
        int64_t width = -1, prec = -1;
        for (int part = 0; part < 2; part++) {
            int64_t *dst = part == 0 ? &width : &prec;
            if (part == 1) {
                if (i < n && f[i] == '.') {
                    i++;
                    prec = 0;
                } else {
                    break;
                }
            }
            if (i < n && f[i] == '*') {
                i++;
                if (is_map || argi >= nargs) {
                    FAIL("* wants int");
                }
                const jv *w = is_tuple ? &args->u.l->v[argi] : args;
                argi++;
                if (w->t != JV_INT && w->t != JV_BOOL) {
                    FAIL("* wants int");
                }
                *dst = w->u.i;
                if (part == 0 && *dst < 0) {
                    left = 1;
                    *dst = -*dst;
                }
            } else {
                int64_t val = part == 0 ? -1 : 0;
                while (i < n && is_digit(f[i])) {
                    val = (val < 0 ? 0 : val) * 10 + (f[i++] - '0');
                    if (val > 100000) {
                        FAIL("width or precision too big");
                    }
                }
                *dst = val;
            }
        }
        while (i < n && (f[i] == 'h' || f[i] == 'l' || f[i] == 'L')) {
            i++;
        }
        if (i >= n) {
            FAIL("incomplete format");
        }
        char type = f[i++];
        if (type == '%') {
            sb_putc(&b, '%');
            continue;
        }
        if (!have_v) {
            if (argi >= nargs) {
                FAIL("not enough arguments for format string");
            }
            v = is_tuple ? args->u.l->v[argi] : *args;
            argi++;
        }
        switch (type) {
        case 's': case 'r': case 'a': {
            sbuf t = { 0 };
            t.max = r->lim.max_output;
            put_value(&t, &v, type != 's', 0);
            size_t len = t.n;
            if (prec >= 0) {
                len = u8_offset(t.p ? t.p : "", t.n, (size_t) prec);
            }
            put_padded(&b, t.p ? t.p : "", len, width, left, ' ');
            free(t.p);
            break;
        }
        case 'd': case 'i': case 'u': case 'o': case 'x': case 'X': case 'c': {
            int64_t iv;
            if (type == 'c' && v.t == JV_STR) {
                if (u8_count(v.u.s.p, v.u.s.n) != 1) {
                    FAIL("%%c requires an int or a unicode character");
                }
                put_padded(&b, v.u.s.p, v.u.s.n, width, left, ' ');
                break;
            }
            if (v.t == JV_INT || v.t == JV_BOOL) {
                iv = v.u.i;
            } else if (v.t == JV_FLOAT && (type == 'd' || type == 'i' || type == 'u')) {
                if (!isfinite(v.u.f) || fabs(v.u.f) >= 9.2e18) {
                    FAIL("cannot convert float to integer");
                }
                iv = (int64_t) v.u.f;
            } else {
                FAIL("%%%c format: %s is required, not %s", type,
                     type == 'd' || type == 'i' || type == 'u' ? "a real number" : "an integer",
                     type_name(&v));
            }
            if (type == 'c') {
                char cb[4];
                if (iv < 0 || iv > 0x10FFFF) {
                    FAIL("%%c arg not in range(0x110000)");
                }
                put_padded(&b, cb, u8_encode((uint32_t) iv, cb), width, left, ' ');
                break;
            }
            uint64_t mag = iv < 0 ? 0 - (uint64_t) iv : (uint64_t) iv;
            const char *prefix = "";
            char digits[80];
            if (type == 'o') {
                snprintf(digits, sizeof(digits), "%llo", (unsigned long long) mag);
                prefix = alt ? "0o" : "";
            } else if (type == 'x' || type == 'X') {
                snprintf(digits, sizeof(digits), type == 'x' ? "%llx" : "%llX",
                         (unsigned long long) mag);
                prefix = alt ? (type == 'x' ? "0x" : "0X") : "";
            } else {
                snprintf(digits, sizeof(digits), "%llu", (unsigned long long) mag);
            }
            const char *sign = iv < 0 ? "-" : plus ? "+" : space ? " " : "";
            size_t nd = strlen(digits);
            int64_t body = (int64_t) (strlen(sign) + strlen(prefix))
                           + (prec > (int64_t) nd ? prec : (int64_t) nd);
            if (!left && !zero) {
                for (int64_t k = body; k < width; k++) {
                    sb_putc(&b, ' ');
                }
            }
            sb_puts(&b, sign);
            sb_puts(&b, prefix);
            if (!left && zero) {
                for (int64_t k = body; k < width; k++) {
                    sb_putc(&b, '0');
                }
            }
            for (int64_t k = (int64_t) nd; k < prec; k++) {
                sb_putc(&b, '0');
            }
            sb_puts(&b, digits);
            if (left) {
                for (int64_t k = body; k < width; k++) {
                    sb_putc(&b, ' ');
                }
            }
            break;
        }
        case 'e': case 'E': case 'f': case 'F': case 'g': case 'G': {
            char spec[32];
            int o = 0;
            if (!is_number(&v)) {
                FAIL("must be real number, not %s", type_name(&v));
            }
            spec[o++] = '%';
            if (left) spec[o++] = '-';
            if (zero) spec[o++] = '0';
            if (plus) spec[o++] = '+';
            if (space) spec[o++] = ' ';
            if (alt) spec[o++] = '#';
            spec[o++] = '*';
            spec[o++] = '.';
            spec[o++] = '*';
            spec[o++] = type;
            spec[o] = '\0';
            int w = snprintf(num, sizeof(num), spec, (int) (width < 0 ? 0 : width),
                             (int) (prec < 0 ? 6 : prec), num_as_double(&v));
            if (w < 0 || (size_t) w >= sizeof(num)) {
                FAIL("formatted number too long");
            }
            sb_put(&b, num, (size_t) w);
            break;
        }
        default:
            FAIL("unsupported format character '%c' (0x%x) at index %zu", type,
                 (unsigned) (unsigned char) type, i - 1);
        }
    }
    /* Python: a tuple must be used up; a single argument too, unless it
     * supports item access (dict, list, Undefined), which format strings
     * without conversions may ignore */
    if (is_tuple ? argi < nargs
                 : argi == 0 && !used_key && !is_map && args->t != JV_LIST && args->t != JV_UNDEF) {
        FAIL("not all arguments converted during string formatting");
    }
#undef FAIL
    if (b.overflow) {
        free(b.p);
        return rfail(r, pos, "formatted string too large");
    }
    char *res = r_strdup(r, b.p ? b.p : "", b.n);
    size_t rn = b.n;
    free(b.p);
    if (res == NULL) {
        return oom(r, pos);
    }
    *out = jv_str(res, rn);
    return 0;
}

static int binop(R *r, size_t pos, int op, const jv *a, const jv *b, jv *out)
{
    if (a->t == JV_UNDEF) {
        return fail_undef(r, pos, a);
    }
    if (b->t == JV_UNDEF) {
        return fail_undef(r, pos, b);
    }
    if (is_number(a) && is_number(b)) {
        int ints = a->t != JV_FLOAT && b->t != JV_FLOAT;
        int64_t x = a->u.i, y = b->u.i, z;
        double fx = num_as_double(a), fy = num_as_double(b);
        switch (op) {
        case '+':
            if (ints) {
                if (__builtin_add_overflow(x, y, &z)) {
                    return rfail(r, pos, "integer overflow");
                }
                *out = jv_int(z);
            } else {
                *out = jv_float(fx + fy);
            }
            return 0;
        case '-':
            if (ints) {
                if (__builtin_sub_overflow(x, y, &z)) {
                    return rfail(r, pos, "integer overflow");
                }
                *out = jv_int(z);
            } else {
                *out = jv_float(fx - fy);
            }
            return 0;
        case '*':
            if (ints) {
                if (__builtin_mul_overflow(x, y, &z)) {
                    return rfail(r, pos, "integer overflow");
                }
                *out = jv_int(z);
            } else {
                *out = jv_float(fx * fy);
            }
            return 0;
        case '/':
            if (fy == 0.0) {
                return rfail(r, pos, "division by zero");
            }
            *out = jv_float(fx / fy);
            return 0;
        case OP_FLOORDIV:
        case '%':
            if (ints) {
                if (y == 0) {
                    return rfail(r, pos, "integer division or modulo by zero");
                }
                if (x == INT64_MIN && y == -1) {
                    if (op == '%') {
                        *out = jv_int(0);
                        return 0;
                    }
                    return rfail(r, pos, "integer overflow");
                }
                int64_t q = x / y, m = x % y;
                if (m != 0 && ((m < 0) != (y < 0))) {
                    q--;
                    m += y;
                }
                *out = jv_int(op == '%' ? m : q);
            } else {
                /* CPython's float divmod, signs of zeros included */
                if (fy == 0.0) {
                    return rfail(r, pos, op == '%' ? "float modulo" : "float floor division by zero");
                }
                double m = fmod(fx, fy), div = (fx - m) / fy, fdiv;
                if (m != 0.0) {
                    if ((fy < 0) != (m < 0)) {
                        m += fy;
                        div -= 1.0;
                    }
                } else {
                    m = copysign(0.0, fy);
                }
                if (div != 0.0) {
                    fdiv = floor(div);
                    if (div - fdiv > 0.5) {
                        fdiv += 1.0;
                    }
                } else {
                    fdiv = copysign(0.0, fx / fy);
                }
                *out = jv_float(op == '%' ? m : fdiv);
            }
            return 0;
        case OP_POW:
            if (ints && y >= 0) {
                int64_t acc = 1, base = x, e = y;
                while (e > 0) {
                    if (e & 1) {
                        if (__builtin_mul_overflow(acc, base, &acc)) {
                            return rfail(r, pos, "integer overflow");
                        }
                    }
                    e >>= 1;
                    if (e && __builtin_mul_overflow(base, base, &base)) {
                        return rfail(r, pos, "integer overflow");
                    }
                }
                *out = jv_int(acc);
            } else {
                if (fx == 0.0 && fy < 0) {
                    return rfail(r, pos, "0.0 cannot be raised to a negative power");
                }
                *out = jv_float(pow(fx, fy));
            }
            return 0;
        }
    }
    if (op == '+' && a->t == JV_STR && b->t == JV_STR) {
        return concat_strings(r, pos, a, b, out);
    }
    if (op == '+' && a->t == JV_LIST && b->t == JV_LIST && a->tuple == b->tuple
        && !a->u.l->gen && !b->u.l->gen) {
        jlist *l = list_new(&r->mem, a->u.l->n + b->u.l->n);
        if (l == NULL) {
            return oom(r, pos);
        }
        if (a->u.l->n) {
            memcpy(l->v, a->u.l->v, a->u.l->n * sizeof(jv));
        }
        if (b->u.l->n) {
            memcpy(l->v + a->u.l->n, b->u.l->v, b->u.l->n * sizeof(jv));
        }
        out->t = JV_LIST;
        out->tuple = a->tuple;
        out->u.l = l;
        return 0;
    }
    if (op == '*') {
        if ((a->t == JV_STR || (a->t == JV_LIST && !a->u.l->gen))
            && (b->t == JV_INT || b->t == JV_BOOL)) {
            return repeat_value(r, pos, a, b->u.i, out);
        }
        if ((b->t == JV_STR || (b->t == JV_LIST && !b->u.l->gen))
            && (a->t == JV_INT || a->t == JV_BOOL)) {
            return repeat_value(r, pos, b, a->u.i, out);
        }
    }
    if (op == '%' && a->t == JV_STR) {
        return percent_format(r, pos, a, b, out);
    }
    if (op == '+' && a->t == JV_STR) {
        return rfail(r, pos, "can only concatenate str (not \"%s\") to str", type_name(b));
    }
    return rfail(r, pos, "unsupported operand type(s) for %s: '%s' and '%s'", op_name(op),
                 type_name(a), type_name(b));
}

/* Calls, filters and tests: kept out of eval() so that the argument
 * arrays take stack only where a call is being evaluated. */
__attribute__((noinline))
static int eval_call(R *r, scope *sc, const node *n, jv *out)
{
    jv a;
    call_args args;
    int res;

    switch (n->kind) {
    case N_CALL:
        if (eval(r, sc, n->a, &a) < 0) {
            return -1;
        }
        if (a.t == JV_MACRO) {
            if (eval_args(r, sc, n, &args) < 0) {
                return -1;
            }
            return call_macro(r, n->pos, a.u.mac, &args, out);
        }
        if (a.t != JV_FUNC) {
            if (a.t == JV_UNDEF) {
                return fail_undef(r, n->pos, &a);
            }
            return rfail(r, n->pos, "'%s' object is not callable", type_name(&a));
        }
        if (eval_args(r, sc, n, &args) < 0) {
            return -1;
        }
        return call_func(r, n->pos, a.u.fn, &args, out);
    case N_FILTER:
        if (n->fid < 0) {
            return rfail(r, n->pos, "no filter named '%s'", n->name);
        }
        if (eval(r, sc, n->a, &a) < 0 || eval_args(r, sc, n, &args) < 0) {
            return -1;
        }
        return apply_filter(r, n->pos, n->fid, &a, &args, out);
    case N_TEST:
        if (n->fid < 0) {
            return rfail(r, n->pos, "no test named '%s'", n->name);
        }
        if (eval(r, sc, n->a, &a) < 0 || eval_args(r, sc, n, &args) < 0
            || apply_test(r, n->pos, n->fid, &a, &args, &res) < 0) {
            return -1;
        }
        *out = jv_bool(n->op ? !res : res);
        return 0;
    default:
        return rfail(r, n->pos, "internal error: not a call");
    }
}

static int eval_node(R *r, scope *sc, const node *n, jv *out)
{
    jv a, b, c;

    switch (n->kind) {
    case N_CONST:
        *out = n->value;
        return 0;
    case N_NAME:
        return lookup(r, n->pos, sc, n->name, out);
    case N_LIST:
    case N_TUPLE: {
        jlist *l = list_new(&r->mem, n->nitems);
        if (l == NULL) {
            return oom(r, n->pos);
        }
        for (size_t i = 0; i < n->nitems; i++) {
            if (eval(r, sc, n->items[i], &l->v[i]) < 0) {
                return -1;
            }
        }
        out->t = JV_LIST;
        out->tuple = n->kind == N_TUPLE;
        out->u.l = l;
        return 0;
    }
    case N_DICT: {
        jdict *d = dict_new(&r->mem, n->nitems);
        if (d == NULL) {
            return oom(r, n->pos);
        }
        for (size_t i = 0; i < n->nitems; i++) {
            if (eval(r, sc, n->items[i], &a) < 0 || eval(r, sc, n->items2[i], &b) < 0) {
                return -1;
            }
            if (!is_hashable(&a)) {
                return rfail(r, n->items[i]->pos, "unhashable type: '%s'", type_name(&a));
            }
            if (dict_set(&r->mem, d, a, b) < 0) {
                return oom(r, n->pos);
            }
        }
        out->t = JV_DICT;
        out->tuple = 0;
        out->u.d = d;
        return 0;
    }
    case N_GETATTR:
        if (eval(r, sc, n->a, &a) < 0) {
            return -1;
        }
        return get_attr(r, n->pos, &a, n->name, out);
    case N_GETITEM:
        if (eval(r, sc, n->a, &a) < 0 || eval(r, sc, n->b, &b) < 0) {
            return -1;
        }
        return get_item(r, n->pos, &a, &b, out);
    case N_SLICE: {
        jv parts[3];
        const node *pn[3] = { n->b, n->c, n->d };
        if (eval(r, sc, n->a, &a) < 0) {
            return -1;
        }
        int all_const = n->a->kind == N_CONST;
        for (int k = 0; k < 3; k++) {
            parts[k] = JV_NONE_V;
            if (pn[k] && eval(r, sc, pn[k], &parts[k]) < 0) {
                return -1;
            }
            all_const &= pn[k] == NULL || pn[k]->kind == N_CONST;
        }
        if (all_const && a.t != JV_STR && a.t != JV_LIST) {
            /* Jinja folds a constant subscript at compile time through the
             * sandbox's getitem, which gives Undefined instead of failing */
            *out = mk_undef(r, "slice", type_name(&a), 1, NULL);
            return 0;
        }
        return do_slice(r, n->pos, &a, &parts[0], &parts[1], &parts[2], out);
    }
    case N_CALL:
    case N_FILTER:
    case N_TEST:
        return eval_call(r, sc, n, out);
    case N_NEG:
    case N_POS:
        if (eval(r, sc, n->a, &a) < 0) {
            return -1;
        }
        if (a.t == JV_UNDEF) {
            return fail_undef(r, n->pos, &a);
        }
        if (a.t == JV_FLOAT) {
            *out = jv_float(n->kind == N_NEG ? -a.u.f : a.u.f);
        } else if (a.t == JV_INT || a.t == JV_BOOL) {
            if (n->kind == N_NEG && a.u.i == INT64_MIN) {
                return rfail(r, n->pos, "integer overflow");
            }
            *out = jv_int(n->kind == N_NEG ? -a.u.i : a.u.i);
        } else {
            return rfail(r, n->pos, "bad operand type for unary %c: '%s'",
                         n->kind == N_NEG ? '-' : '+', type_name(&a));
        }
        return 0;
    case N_NOT:
        if (eval(r, sc, n->a, &a) < 0) {
            return -1;
        }
        *out = jv_bool(!truthy(&a));
        return 0;
    case N_AND:
    case N_OR:
        /* Python returns the deciding operand itself */
        if (eval(r, sc, n->a, &a) < 0) {
            return -1;
        }
        if (n->kind == N_AND ? !truthy(&a) : truthy(&a)) {
            *out = a;
            return 0;
        }
        return eval(r, sc, n->b, out);
    case N_BINOP:
        if (eval(r, sc, n->a, &a) < 0 || eval(r, sc, n->b, &b) < 0) {
            return -1;
        }
        return binop(r, n->pos, n->op, &a, &b, out);
    case N_CONCAT: {
        sbuf buf = { 0 };
        buf.max = r->lim.max_output;
        for (size_t i = 0; i < n->nitems; i++) {
            if (eval(r, sc, n->items[i], &a) < 0) {
                free(buf.p);
                return -1;
            }
            put_value(&buf, &a, 0, 0);
        }
        if (buf.overflow) {
            free(buf.p);
            return rfail(r, n->pos, "string too large");
        }
        char *p = r_strdup(r, buf.p ? buf.p : "", buf.n);
        size_t len = buf.n;
        free(buf.p);
        if (p == NULL) {
            return oom(r, n->pos);
        }
        *out = jv_str(p, len);
        return 0;
    }
    case N_COMPARE:
        if (eval(r, sc, n->a, &a) < 0) {
            return -1;
        }
        for (size_t i = 0; i < n->nitems; i++) {
            int ok = 0, cmp;
            if (eval(r, sc, n->items[i], &b) < 0) {
                return -1;
            }
            switch (n->ops[i]) {
            case CMP_EQ: ok = values_equal(&a, &b, 0); break;
            case CMP_NE: ok = !values_equal(&a, &b, 0); break;
            case CMP_IN:
            case CMP_NOTIN:
                if (contains(r, n->pos, &a, &b, &ok) < 0) {
                    return -1;
                }
                if (n->ops[i] == CMP_NOTIN) {
                    ok = !ok;
                }
                break;
            default: {
                static const char *const names[] = { "==", "!=", "<", "<=", ">", ">=" };
                if (values_order(r, n->items[i]->pos, &a, &b, names[n->ops[i]], &cmp, 0) < 0) {
                    return -1;
                }
                ok = cmp == 2 ? 0 : n->ops[i] == CMP_LT ? cmp < 0 : n->ops[i] == CMP_LE ? cmp <= 0
                                  : n->ops[i] == CMP_GT ? cmp > 0 : cmp >= 0;
            }
            }
            if (!ok) {
                *out = jv_bool(0);
                return 0;
            }
            a = b;
        }
        *out = jv_bool(1);
        return 0;
    case N_CONDEXPR:
        if (eval(r, sc, n->a, &c) < 0) {
            return -1;
        }
        if (truthy(&c)) {
            return eval(r, sc, n->b, out);
        }
        if (n->c) {
            return eval(r, sc, n->c, out);
        }
        *out = mk_undef(r, "", NULL, 0,
                        "the inline if-expression evaluated to false and no else section "
                        "was defined.");
        return 0;
    default:
        return rfail(r, n->pos, "internal error: statement used as an expression");
    }
}

/* Every evaluation goes through here: counts steps and bounds the
 * recursion (nested expressions, macro calls) so that no template can
 * exhaust the C stack. */
static int eval(R *r, scope *sc, const node *n, jv *out)
{
    if (step(r, n->pos) < 0) {
        return -1;
    }
    if (++r->depth > EVAL_MAX_DEPTH) {
        r->depth--;
        return rfail(r, n->pos, "the template nests evaluations deeper than %d", EVAL_MAX_DEPTH);
    }
    int rc = eval_node(r, sc, n, out);
    r->depth--;
    return rc;
}

/* ------------------------------------------------------------------ */
/* statements                                                          */
/* ------------------------------------------------------------------ */

static int exec_body(R *r, scope *sc, const node *body);

/* Binds a for/set target: a name, or a tuple of names unpacking a value. */
static int assign(R *r, scope *sc, const node *target, const jv *v)
{
    if (target->kind == N_NAME) {
        return scope_set(r, target->pos, sc, target->name, *v);
    }
    const jlist *items;
    if (v->t == JV_UNDEF) {
        return fail_undef(r, target->pos, v);
    }
    if (v->t != JV_LIST && v->t != JV_STR && v->t != JV_DICT) {
        return rfail(r, target->pos, "cannot unpack non-iterable %s object", type_name(v));
    }
    if (iterate(r, target->pos, v, &items) < 0) {
        return -1;
    }
    if (items->n < target->nitems) {
        return rfail(r, target->pos, "not enough values to unpack (expected %zu, got %zu)",
                     target->nitems, items->n);
    }
    if (items->n > target->nitems) {
        return rfail(r, target->pos, "too many values to unpack (expected %zu)", target->nitems);
    }
    for (size_t i = 0; i < target->nitems; i++) {
        if (scope_set(r, target->pos, sc, target->items[i]->name, items->v[i]) < 0) {
            return -1;
        }
    }
    return 0;
}

static scope *scope_new(R *r, size_t pos, scope *parent)
{
    scope *s = arena_alloc(&r->mem, sizeof(*s));
    if (s == NULL) {
        oom(r, pos);
        return NULL;
    }
    memset(s, 0, sizeof(*s));
    s->parent = parent;
    return s;
}

static int exec_for(R *r, scope *sc, const node *n)
{
    jv it;
    const jlist *items;
    scope *inner_p = scope_new(r, n->pos, sc);
    if (inner_p == NULL) {
        return EX_ERR;
    }
#define inner (*inner_p)

    if (eval(r, sc, n->b, &it) < 0) {
        return EX_ERR;
    }
    if (it.t == JV_NS) {
        return rfail(r, n->b->pos, "'Namespace' object is not iterable");
    }
    if (iterate(r, n->b->pos, &it, &items) < 0) {
        return EX_ERR;
    }
    if (n->c) {
        /* `for x in y if cond`: filter first, so loop.length counts what
         * remains */
        jvec kept = { 0 };
        for (size_t i = 0; i < items->n; i++) {
            jv cond;
            inner.n = 0;
            if (assign(r, &inner, n->a, &items->v[i]) < 0 || eval(r, &inner, n->c, &cond) < 0) {
                return EX_ERR;
            }
            if (truthy(&cond) && jvec_push(r, n->pos, &kept, items->v[i]) < 0) {
                return EX_ERR;
            }
        }
        jv lv = JV_UNDEFINED;
        if (jvec_to_list(r, n->pos, &kept, 0, &lv) < 0) {
            return EX_ERR;
        }
        items = lv.u.l;
    }
    jloop *loop = arena_alloc(&r->mem, sizeof(*loop));
    if (loop == NULL) {
        return oom(r, n->pos);
    }
    loop->length = (int64_t) items->n;
    loop->items = items;
    jv loopv = { .t = JV_LOOP };
    loopv.u.loop = loop;
    /* Jinja runs the else block unless some iteration finished its body:
     * iterations left by continue or break do not count */
    int completed = 0;
    for (size_t i = 0; i < items->n; i++) {
        /* every iteration starts from the enclosing scope: a `set` inside
         * the loop does not survive to the next iteration (Jinja scoping) */
        inner.n = 0;
        loop->index0 = (int64_t) i;
        if (step(r, n->pos) < 0) {
            return EX_ERR;
        }
        if (assign(r, &inner, n->a, &items->v[i]) < 0
            || scope_set(r, n->pos, &inner, "loop", loopv) < 0) {
            return EX_ERR;
        }
        int rc = exec_body(r, &inner, n->d);
        if (rc == EX_ERR) {
            return EX_ERR;
        }
        if (rc == EX_BREAK) {
            break;
        }
        completed |= rc == EX_OK;
    }
    if (!completed && n->e) {
        inner.n = 0;
        int rc = exec_body(r, &inner, n->e);
        return rc == EX_ERR ? EX_ERR : EX_OK;
    }
    return EX_OK;
#undef inner
}

/* Calls a macro: binds arguments in a scope over its closure and renders
 * its body to a string. */
static int call_macro(R *r, size_t pos, const jmacro *m, const call_args *a, jv *out)
{
    const node *def = m->def;
    size_t np = def->nkw;
    int have[MAX_ARGS];
    jv vals[MAX_ARGS];
    jvec extra = { 0 };
    jdict *kw;

    if (np > MAX_ARGS) {
        return rfail(r, pos, "macro '%s' has too many parameters", def->name);
    }
    if (r->macro_depth >= MACRO_MAX_DEPTH) {
        return rfail(r, pos, "macro calls nested deeper than %d", MACRO_MAX_DEPTH);
    }
    if (a->npos > np && !(def->op & 1)) {
        return rfail(r, pos, "macro '%s' takes not more than %zu argument(s)", def->name, np);
    }
    kw = dict_new(&r->mem, 0);
    scope *sc = scope_new(r, pos, m->closure);
    if (kw == NULL || sc == NULL) {
        return oom(r, pos);
    }
    for (size_t i = 0; i < np; i++) {
        have[i] = i < a->npos;
        vals[i] = i < a->npos ? a->pos[i] : JV_UNDEFINED;
    }
    for (size_t i = np; i < a->npos; i++) {
        if (jvec_push(r, pos, &extra, a->pos[i]) < 0) {
            return -1;
        }
    }
    for (size_t k = 0; k < a->nkw; k++) {
        size_t i;
        for (i = 0; i < np && strcmp(def->names[i], a->kwname[k]); i++) {
        }
        if (i < np) {
            if (have[i]) {
                return rfail(r, pos, "macro '%s' got multiple values for argument '%s'",
                             def->name, a->kwname[k]);
            }
            have[i] = 1;
            vals[i] = a->kw[k];
        } else if (def->op & 2) {
            if (dict_set(&r->mem, kw, jv_str(a->kwname[k], strlen(a->kwname[k])), a->kw[k]) < 0) {
                return oom(r, pos);
            }
        } else {
            return rfail(r, pos, "macro '%s' takes no keyword argument '%s'", def->name,
                         a->kwname[k]);
        }
    }
    /* parameters in order; a default may use the ones before it */
    for (size_t i = 0; i < np; i++) {
        if (!have[i]) {
            if (def->items2[i]) {
                if (eval(r, sc, def->items2[i], &vals[i]) < 0) {
                    return -1;
                }
            } else {
                char msg[160];
                snprintf(msg, sizeof(msg), "parameter '%s' was not provided", def->names[i]);
                vals[i] = mk_undef(r, def->names[i], NULL, 0, r_strdup(r, msg, strlen(msg)));
            }
        }
        if (scope_set(r, pos, sc, def->names[i], vals[i]) < 0) {
            return -1;
        }
    }
    jv va, kwv = { .t = JV_DICT };
    kwv.u.d = kw;
    if (jvec_to_list(r, pos, &extra, 1, &va) < 0 || scope_set(r, pos, sc, "varargs", va) < 0
        || scope_set(r, pos, sc, "kwargs", kwv) < 0) {
        return -1;
    }
    sbuf capture = { 0 }, *saved = r->out;
    capture.max = r->lim.max_output;
    r->out = &capture;
    r->macro_depth++;
    int rc = exec_body(r, sc, def->d);
    r->macro_depth--;
    r->out = saved;
    if (rc == EX_ERR) {
        free(capture.p);
        return -1;
    }
    char *p = r_strdup(r, capture.p ? capture.p : "", capture.n);
    size_t len = capture.n;
    free(capture.p);
    if (p == NULL) {
        return oom(r, pos);
    }
    *out = jv_str(p, len);
    return 0;
}

static int exec_stmt_node(R *r, scope *sc, const node *n);

static int exec_stmt(R *r, scope *sc, const node *n)
{
    if (step(r, n->pos) < 0) {
        return EX_ERR;
    }
    if (++r->depth > EVAL_MAX_DEPTH) {
        r->depth--;
        return rfail(r, n->pos, "the template nests evaluations deeper than %d", EVAL_MAX_DEPTH);
    }
    int rc = exec_stmt_node(r, sc, n);
    r->depth--;
    return rc;
}

static int exec_stmt_node(R *r, scope *sc, const node *n)
{
    jv v, ns;

    switch (n->kind) {
    case N_TEXT:
        if (sb_put(r->out, n->value.u.s.p, n->value.u.s.n) < 0) {
            return rfail(r, n->pos, "the rendered text is longer than the limit of %zu bytes",
                         r->lim.max_output);
        }
        return EX_OK;
    case N_OUTPUT:
        if (eval(r, sc, n->a, &v) < 0) {
            return EX_ERR;
        }
        put_value(r->out, &v, 0, 0);
        if (r->out->overflow) {
            return rfail(r, n->pos, "the rendered text is longer than the limit of %zu bytes",
                         r->lim.max_output);
        }
        return EX_OK;
    case N_IF:
        if (eval(r, sc, n->a, &v) < 0) {
            return EX_ERR;
        }
        if (truthy(&v)) {
            return exec_body(r, sc, n->d);
        }
        if (n->e) {
            return n->e->kind == N_IF ? exec_stmt(r, sc, n->e) : exec_body(r, sc, n->e);
        }
        return EX_OK;
    case N_FOR:
        return exec_for(r, sc, n);
    case N_SET:
        if (eval(r, sc, n->b, &v) < 0) {
            return EX_ERR;
        }
        if (n->a->kind == N_GETATTR) {
            if (lookup(r, n->a->pos, sc, n->a->a->name, &ns) < 0) {
                return EX_ERR;
            }
            if (ns.t != JV_NS) {
                return rfail(r, n->a->pos, "cannot assign attribute on non-namespace object");
            }
            if (dict_set(&r->mem, ns.u.d, jv_str(n->a->name, strlen(n->a->name)), v) < 0) {
                return oom(r, n->pos);
            }
            return EX_OK;
        }
        return assign(r, sc, n->a, &v) < 0 ? EX_ERR : EX_OK;
    case N_SET_BLOCK: {
        sbuf capture = { 0 }, *saved = r->out;
        capture.max = r->lim.max_output;
        r->out = &capture;
        int rc = exec_body(r, sc, n->d);
        r->out = saved;
        if (rc == EX_ERR) {
            free(capture.p);
            return EX_ERR;
        }
        char *p = r_strdup(r, capture.p ? capture.p : "", capture.n);
        size_t len = capture.n;
        free(capture.p);
        if (p == NULL) {
            return oom(r, n->pos);
        }
        if (scope_set(r, n->pos, sc, n->a->name, jv_str(p, len)) < 0) {
            return EX_ERR;
        }
        return rc;
    }
    case N_MACRO: {
        jmacro *m = arena_alloc(&r->mem, sizeof(*m));
        jv mv = { .t = JV_MACRO };
        if (m == NULL) {
            return oom(r, n->pos);
        }
        m->def = n;
        m->closure = sc;
        mv.u.mac = m;
        return scope_set(r, n->pos, sc, n->name, mv) < 0 ? EX_ERR : EX_OK;
    }
    case N_BREAK:
        return EX_BREAK;
    case N_CONTINUE:
        return EX_CONTINUE;
    case N_BODY:
        return exec_body(r, sc, n);
    default:
        return rfail(r, n->pos, "internal error: expression used as a statement");
    }
}

static int exec_body(R *r, scope *sc, const node *body)
{
    for (size_t i = 0; i < body->nitems; i++) {
        int rc = exec_stmt(r, sc, body->items[i]);
        if (rc != EX_OK) {
            return rc;
        }
    }
    return EX_OK;
}

/* ------------------------------------------------------------------ */
/* public API                                                          */
/* ------------------------------------------------------------------ */

jinja_render *jinja_render_new(const jinja_limits *limits)
{
    jinja_render *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return NULL;
    }
    if (limits) {
        r->lim = *limits;
    }
    if (r->lim.max_output == 0) {
        r->lim.max_output = JINJA_DEFAULT_MAX_OUTPUT;
    }
    if (r->lim.max_memory == 0) {
        r->lim.max_memory = JINJA_DEFAULT_MAX_MEMORY;
    }
    if (r->lim.max_steps == 0) {
        r->lim.max_steps = JINJA_DEFAULT_MAX_STEPS;
    }
    r->mem.limit = r->lim.max_memory;
    r->vars = dict_new(&r->mem, 0);
    if (r->vars == NULL) {
        free(r);
        return NULL;
    }
    return r;
}

void jinja_render_free(jinja_render *r)
{
    if (r) {
        arena_free_all(&r->mem);
        free(r);
    }
}

static int set_var(jinja_render *r, const char *name, jv v)
{
    char *nm = arena_strndup(&r->mem, name, strlen(name));
    if (nm == NULL) {
        return -1;
    }
    return dict_set(&r->mem, r->vars, jv_str(nm, strlen(nm)), v);
}

int jinja_set_json(jinja_render *r, const char *name, const char *json, size_t len,
                   char *err, size_t errlen)
{
    jv v;
    char tmp[8];
    if (err == NULL || errlen == 0) {
        err = tmp;
        errlen = sizeof(tmp);
    }
    if (json_parse(&r->mem, json, len, &v, err, errlen) < 0) {
        return -1;
    }
    if (set_var(r, name, v) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

int jinja_set_json_object_vars(jinja_render *r, const char *json, size_t len,
                               char *err, size_t errlen)
{
    jv v;
    char tmp[8];
    if (err == NULL || errlen == 0) {
        err = tmp;
        errlen = sizeof(tmp);
    }
    if (json_parse(&r->mem, json, len, &v, err, errlen) < 0) {
        return -1;
    }
    if (v.t != JV_DICT) {
        snprintf(err, errlen, "expected a JSON object, got %s", type_name(&v));
        return -1;
    }
    for (size_t i = 0; i < v.u.d->n; i++) {
        const jv *k = &v.u.d->keys[i];
        if (memchr(k->u.s.p, '\0', k->u.s.n) != NULL) {
            snprintf(err, errlen, "variable names cannot contain NUL");
            return -1;
        }
        if (dict_set(&r->mem, r->vars, *k, v.u.d->vals[i]) < 0) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    return 0;
}

int jinja_set_string(jinja_render *r, const char *name, const char *s, size_t len)
{
    if (u8_valid_prefix(s, len) != len) {
        return -1;
    }
    char *p = arena_strndup(&r->mem, s, len);
    return p ? set_var(r, name, jv_str(p, len)) : -1;
}

int jinja_set_bool(jinja_render *r, const char *name, int value)
{
    return set_var(r, name, jv_bool(value));
}

int jinja_set_none(jinja_render *r, const char *name)
{
    return set_var(r, name, JV_NONE_V);
}

int jinja_has_var(const jinja_render *r, const char *name)
{
    return dict_get_str(r->vars, name, strlen(name)) != NULL;
}

char *jinja_render_run(jinja_render *r, const jinja_template *t, size_t *out_len,
                       int *raised, char *err, size_t errlen)
{
    char tmp[8];
    sbuf *out = &r->main_out;
    scope *top;

    if (err == NULL || errlen == 0) {
        err = tmp;
        errlen = sizeof(tmp);
    }
    err[0] = '\0';
    if (raised) {
        *raised = 0;
    }
    if (r->used) {
        snprintf(err, errlen, "a jinja_render renders once");
        return NULL;
    }
    r->used = 1;
    r->t = t;
    r->err = err;
    r->errlen = errlen;
    out->max = r->lim.max_output;
    r->out = out;
    top = scope_new(r, 0, NULL);
    int rc = top ? exec_body(r, top, t->body) : EX_ERR;
    r->err = NULL;
    if (rc == EX_ERR || r->failed) {
        if (!err[0]) {
            snprintf(err, errlen, "render failed");
        }
        if (raised) {
            *raised = r->raised;
        }
        free(out->p);
        out->p = NULL;
        return NULL;
    }
    char *text = out->p;
    if (text == NULL) {
        text = malloc(1);
        if (text == NULL) {
            snprintf(err, errlen, "out of memory");
            return NULL;
        }
        text[0] = '\0';
    }
    if (out_len) {
        *out_len = out->n;
    }
    out->p = NULL;
    return text;
}
