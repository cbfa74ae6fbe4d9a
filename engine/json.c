/* Strict JSON reader for the engine. Recursive descent over the input; children of an open
 * container are collected on one shared stack and copied into the document's arena when the
 * container closes, so every value costs one copy and no per-node malloc. */
#include "engine/json.h"
#include "engine/unicode.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------- arena */

struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    /* data follows, 16-byte aligned */
};

#define ARENA_HDR (((sizeof(struct arena_block) + 15) / 16) * 16)

struct ejson_doc {
    struct arena_block *blocks;
    size_t next_cap;
    struct ejson root;
};

static void *arena_alloc(struct ejson_doc *d, size_t size)
{
    size = (size + 15) & ~(size_t)15;
    struct arena_block *b = d->blocks;
    if (!b || b->cap - b->used < size) {
        size_t cap = d->next_cap;
        if (cap < size) cap = size;
        b = malloc(ARENA_HDR + cap);
        if (!b) return NULL;
        b->used = 0;
        b->cap = cap;
        b->next = d->blocks;
        d->blocks = b;
        if (d->next_cap < ((size_t)16 << 20)) d->next_cap *= 2;
    }
    void *p = (char *)b + ARENA_HDR + b->used;
    b->used += size;
    return p;
}

/* ---------------------------------------------------------------- parser */

struct parser {
    const char *s;
    size_t len, pos;
    struct ejson_doc *doc;
    char *err;
    size_t errlen;
    int failed;
    /* children of all open containers */
    struct ejson *stack;
    size_t sp, scap;
    const char **kstack;
    size_t *klens;
    size_t ksp, kcap;
};

static void fail_at(struct parser *p, size_t at, const char *fmt, ...)
{
    if (p->failed) return;
    p->failed = 1;
    if (!p->err || p->errlen == 0) return;
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at && i < p->len; i++) {
        if (p->s[i] == '\n') {
            line++;
            col = 1;
        } else if (((unsigned char)p->s[i] & 0xC0) != 0x80) {
            col++;
        }
    }
    int k = snprintf(p->err, p->errlen, "line %zu, column %zu (byte %zu): ", line, col, at);
    if (k < 0 || (size_t)k >= p->errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + k, p->errlen - (size_t)k, fmt, ap);
    va_end(ap);
}

static void skip_ws(struct parser *p)
{
    const char *s = p->s;
    size_t i = p->pos, n = p->len;
    while (i < n && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t'))
        i++;
    p->pos = i;
}

static int push_node(struct parser *p, struct ejson **out)
{
    if (p->sp == p->scap) {
        size_t cap = p->scap ? p->scap * 2 : 256;
        struct ejson *ns = realloc(p->stack, cap * sizeof *ns);
        if (!ns) {
            fail_at(p, p->pos, "out of memory");
            return -1;
        }
        p->stack = ns;
        p->scap = cap;
    }
    *out = &p->stack[p->sp++];
    memset(*out, 0, sizeof **out);
    return 0;
}

static int push_key(struct parser *p, const char *k, size_t klen)
{
    if (p->ksp == p->kcap) {
        size_t cap = p->kcap ? p->kcap * 2 : 256;
        const char **nk = realloc(p->kstack, cap * sizeof *nk);
        if (!nk) goto oom;
        p->kstack = nk;
        size_t *nl = realloc(p->klens, cap * sizeof *nl);
        if (!nl) goto oom;
        p->klens = nl;
        p->kcap = cap;
    }
    p->kstack[p->ksp] = k;
    p->klens[p->ksp] = klen;
    p->ksp++;
    return 0;
oom:
    fail_at(p, p->pos, "out of memory");
    return -1;
}

static int hex4(const char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Length of the valid UTF-8 sequence at s (n bytes available), or 0 if invalid. */
static size_t utf8_valid_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80) return 1;
    if (c < 0xC2) return 0;
    if (c < 0xE0) return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && s[1] < 0xA0) return 0;  /* overlong */
        if (c == 0xED && s[1] >= 0xA0) return 0; /* surrogate */
        return 3;
    }
    if (c < 0xF5) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && s[1] < 0x90) return 0;  /* overlong */
        if (c == 0xF4 && s[1] >= 0x90) return 0; /* > U+10FFFF */
        return 4;
    }
    return 0;
}

/* Parses the string starting at the opening quote; result in the arena. */
static int parse_string(struct parser *p, const char **out, size_t *out_len)
{
    const char *s = p->s;
    size_t start = p->pos + 1, i = start, n = p->len;
    int has_escape = 0;
    /* first pass: find the closing quote, validate bytes */
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"') break;
        if (c == '\\') {
            has_escape = 1;
            i += 2;
            continue;
        }
        if (c < 0x20) {
            fail_at(p, i, "control character 0x%02x in string (must be escaped)", c);
            return -1;
        }
        if (c >= 0x80) {
            size_t l = utf8_valid_len((const unsigned char *)s + i, n - i);
            if (!l) {
                fail_at(p, i, "invalid UTF-8 byte 0x%02x in string", c);
                return -1;
            }
            i += l;
            continue;
        }
        i++;
    }
    if (i >= n) {
        fail_at(p, p->pos, "unterminated string");
        return -1;
    }
    size_t raw_len = i - start;
    char *o = arena_alloc(p->doc, raw_len + 1);
    if (!o) {
        fail_at(p, p->pos, "out of memory");
        return -1;
    }
    if (!has_escape) {
        memcpy(o, s + start, raw_len);
        o[raw_len] = '\0';
        *out = o;
        *out_len = raw_len;
        p->pos = i + 1;
        return 0;
    }
    size_t w = 0, end = i;
    i = start;
    while (i < end) {
        char c = s[i];
        if (c != '\\') {
            o[w++] = c;
            i++;
            continue;
        }
        char e = s[i + 1];
        switch (e) {
        case '"': o[w++] = '"'; break;
        case '\\': o[w++] = '\\'; break;
        case '/': o[w++] = '/'; break;
        case 'b': o[w++] = '\b'; break;
        case 'f': o[w++] = '\f'; break;
        case 'n': o[w++] = '\n'; break;
        case 'r': o[w++] = '\r'; break;
        case 't': o[w++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (i + 6 > end || hex4(s + i + 2, &cp) < 0) {
                fail_at(p, i, "bad \\u escape (need 4 hex digits)");
                return -1;
            }
            i += 6;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (i + 6 <= end && s[i] == '\\' && s[i + 1] == 'u' && hex4(s + i + 2, &lo) == 0 &&
                    lo >= 0xDC00 && lo <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                } else {
                    cp = 0xFFFD; /* lone high surrogate */
                }
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                cp = 0xFFFD; /* lone low surrogate */
            }
            /* an escape is >= 6 raw bytes and decodes to <= 4, so o never overflows raw_len */
            w += uni_encode(cp, o + w);
            continue;
        }
        default:
            fail_at(p, i, "invalid escape '\\%c'", (e >= 0x20 && e < 0x7f) ? e : '?');
            return -1;
        }
        i += 2;
    }
    o[w] = '\0';
    *out = o;
    *out_len = w;
    p->pos = end + 1;
    return 0;
}

static int parse_number(struct parser *p, double *out)
{
    const char *s = p->s;
    size_t i = p->pos, n = p->len, start = i;
    int neg = 0, simple = 1;
    if (i < n && s[i] == '-') {
        neg = 1;
        i++;
    }
    if (i >= n || s[i] < '0' || s[i] > '9') {
        fail_at(p, start, "invalid number");
        return -1;
    }
    uint64_t mant = 0;
    size_t digits_start = i;
    if (s[i] == '0') {
        i++;
        if (i < n && s[i] >= '0' && s[i] <= '9') {
            fail_at(p, start, "leading zeros are not allowed in numbers");
            return -1;
        }
    } else {
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            mant = mant * 10 + (uint64_t)(s[i] - '0');
            i++;
        }
    }
    if (i - digits_start > 15) simple = 0;
    if (i < n && s[i] == '.') {
        simple = 0;
        i++;
        if (i >= n || s[i] < '0' || s[i] > '9') {
            fail_at(p, i, "expected digit after '.'");
            return -1;
        }
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        simple = 0;
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= n || s[i] < '0' || s[i] > '9') {
            fail_at(p, i, "expected digit in exponent");
            return -1;
        }
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    p->pos = i;
    if (simple) { /* <= 15 digits: exact in a double */
        *out = neg ? -(double)mant : (double)mant;
        return 0;
    }
    /* text need not be NUL-terminated: copy the validated token for strtod */
    char buf[128], *tmp = buf;
    size_t tl = i - start;
    if (tl >= sizeof buf) {
        tmp = malloc(tl + 1);
        if (!tmp) {
            fail_at(p, start, "out of memory");
            return -1;
        }
    }
    memcpy(tmp, s + start, tl);
    tmp[tl] = '\0';
    errno = 0;
    *out = strtod(tmp, NULL); /* overflow gives +-HUGE_VAL, kept as is */
    if (tmp != buf) free(tmp);
    return 0;
}

static int parse_value(struct parser *p, struct ejson *v, int depth);

static int parse_container(struct parser *p, struct ejson *v, int depth, int is_obj)
{
    if (depth >= EJSON_MAX_DEPTH) {
        fail_at(p, p->pos, "nesting deeper than %d", EJSON_MAX_DEPTH);
        return -1;
    }
    char close = is_obj ? '}' : ']';
    size_t base = p->sp, kbase = p->ksp;
    p->pos++; /* '[' or '{' */
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        v->type = is_obj ? EJSON_OBJECT : EJSON_ARRAY;
        return 0;
    }
    for (;;) {
        skip_ws(p);
        if (is_obj) {
            if (p->pos >= p->len || p->s[p->pos] != '"') {
                fail_at(p, p->pos,
                        p->pos >= p->len ? "unexpected end of input in object"
                                         : "expected string key in object");
                return -1;
            }
            const char *k;
            size_t kl;
            if (parse_string(p, &k, &kl) < 0 || push_key(p, k, kl) < 0) return -1;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') {
                fail_at(p, p->pos, "expected ':' after object key");
                return -1;
            }
            p->pos++;
            skip_ws(p);
        }
        struct ejson *child;
        if (push_node(p, &child) < 0) return -1;
        size_t child_idx = p->sp - 1;
        struct ejson tmp;
        memset(&tmp, 0, sizeof tmp);
        /* parse into tmp: the stack may be reallocated by nested containers */
        if (parse_value(p, &tmp, depth + 1) < 0) return -1;
        p->stack[child_idx] = tmp;
        skip_ws(p);
        if (p->pos >= p->len) {
            fail_at(p, p->pos,
                    is_obj ? "unexpected end of input in object"
                           : "unexpected end of input in array");
            return -1;
        }
        char c = p->s[p->pos];
        if (c == ',') {
            p->pos++;
            skip_ws(p);
            if (p->pos < p->len && p->s[p->pos] == close) {
                fail_at(p, p->pos, "trailing comma");
                return -1;
            }
            continue;
        }
        if (c == close) {
            p->pos++;
            break;
        }
        fail_at(p, p->pos,
                is_obj ? "expected ',' or '}' in object" : "expected ',' or ']' in array");
        return -1;
    }
    size_t cnt = p->sp - base;
    v->type = is_obj ? EJSON_OBJECT : EJSON_ARRAY;
    v->n = cnt;
    v->items = arena_alloc(p->doc, cnt * sizeof(struct ejson));
    if (!v->items) goto oom;
    memcpy(v->items, p->stack + base, cnt * sizeof(struct ejson));
    p->sp = base;
    if (is_obj) {
        v->keys = arena_alloc(p->doc, cnt * sizeof(const char *));
        v->key_lens = arena_alloc(p->doc, cnt * sizeof(size_t));
        if (!v->keys || !v->key_lens) goto oom;
        memcpy(v->keys, p->kstack + kbase, cnt * sizeof(const char *));
        memcpy(v->key_lens, p->klens + kbase, cnt * sizeof(size_t));
        p->ksp = kbase;
    }
    return 0;
oom:
    fail_at(p, p->pos, "out of memory");
    return -1;
}

static int match_lit(struct parser *p, const char *lit, size_t l)
{
    if (p->len - p->pos >= l && memcmp(p->s + p->pos, lit, l) == 0) {
        p->pos += l;
        return 1;
    }
    return 0;
}

static int parse_value(struct parser *p, struct ejson *v, int depth)
{
    if (p->pos >= p->len) {
        fail_at(p, p->pos, "unexpected end of input, expected a value");
        return -1;
    }
    char c = p->s[p->pos];
    switch (c) {
    case '{': return parse_container(p, v, depth, 1);
    case '[': return parse_container(p, v, depth, 0);
    case '"': v->type = EJSON_STRING; return parse_string(p, &v->str, &v->str_len);
    case 't':
        if (match_lit(p, "true", 4)) {
            v->type = EJSON_TRUE;
            return 0;
        }
        break;
    case 'f':
        if (match_lit(p, "false", 5)) {
            v->type = EJSON_FALSE;
            return 0;
        }
        break;
    case 'n':
        if (match_lit(p, "null", 4)) {
            v->type = EJSON_NULL;
            return 0;
        }
        break;
    default:
        if (c == '-' || (c >= '0' && c <= '9')) {
            v->type = EJSON_NUMBER;
            return parse_number(p, &v->num);
        }
        break;
    }
    if ((unsigned char)c >= 0x20 && (unsigned char)c < 0x7f)
        fail_at(p, p->pos, "unexpected character '%c', expected a value", c);
    else
        fail_at(p, p->pos, "unexpected byte 0x%02x, expected a value", (unsigned char)c);
    return -1;
}

/* ---------------------------------------------------------------- public API */

struct ejson_doc *ejson_parse(const char *text, size_t len, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    struct ejson_doc *d = calloc(1, sizeof *d);
    if (!d) {
        if (err && errlen) snprintf(err, errlen, "out of memory");
        return NULL;
    }
    /* strings never exceed the input size, nodes are a fraction of it */
    d->next_cap = len / 2 + 4096;
    if (d->next_cap > ((size_t)16 << 20)) d->next_cap = (size_t)16 << 20;
    struct parser p = {.s = text, .len = len, .doc = d, .err = err, .errlen = errlen};
    if (!text) {
        p.len = 0;
        p.s = "";
    }
    size_t bom = (p.len >= 3 && memcmp(p.s, "\xEF\xBB\xBF", 3) == 0) ? 3 : 0;
    p.pos = bom;
    skip_ws(&p);
    int rc = parse_value(&p, &d->root, 0);
    if (rc == 0) {
        skip_ws(&p);
        if (p.pos != p.len) {
            fail_at(&p, p.pos, "trailing data after the JSON value");
            rc = -1;
        }
    }
    free(p.stack);
    free(p.kstack);
    free(p.klens);
    if (rc < 0) {
        ejson_free(d);
        return NULL;
    }
    return d;
}

struct ejson_doc *ejson_parse_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (err && errlen) snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && st.st_size > 0)
        cap = (size_t)st.st_size + 65536; /* one allocation for regular files */
    if (cap && !(buf = malloc(cap))) cap = 0;
    for (;;) {
        if (cap - len < 65536) {
            size_t ncap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                fclose(f);
                if (err && errlen) snprintf(err, errlen, "%s: out of memory", path);
                return NULL;
            }
            buf = nb;
            cap = ncap;
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        len += r;
        if (r == 0) break;
    }
    int ioerr = ferror(f);
    fclose(f);
    if (ioerr) {
        free(buf);
        if (err && errlen) snprintf(err, errlen, "%s: read error", path);
        return NULL;
    }
    char msg[256];
    struct ejson_doc *d = ejson_parse(buf, len, msg, sizeof msg);
    free(buf);
    if (!d && err && errlen) snprintf(err, errlen, "%s: %s", path, msg);
    return d;
}

const struct ejson *ejson_root(const struct ejson_doc *d)
{
    return d ? &d->root : NULL;
}

void ejson_free(struct ejson_doc *d)
{
    if (!d) return;
    struct arena_block *b = d->blocks;
    while (b) {
        struct arena_block *nx = b->next;
        free(b);
        b = nx;
    }
    free(d);
}

const struct ejson *ejson_get(const struct ejson *obj, const char *key)
{
    if (!obj || obj->type != EJSON_OBJECT || !key) return NULL;
    size_t kl = strlen(key);
    for (size_t i = 0; i < obj->n; i++)
        if (obj->key_lens[i] == kl && memcmp(obj->keys[i], key, kl) == 0) return &obj->items[i];
    return NULL;
}

const struct ejson *ejson_at(const struct ejson *arr, size_t i)
{
    if (!arr || arr->type != EJSON_ARRAY || i >= arr->n) return NULL;
    return &arr->items[i];
}

int ejson_is_int(const struct ejson *v)
{
    if (!v || v->type != EJSON_NUMBER) return 0;
    double x = v->num;
    /* 2^63 is the first double out of range */
    return x == x && x >= -9223372036854775808.0 && x < 9223372036854775808.0 &&
           (double)(long long)x == x;
}

int ejson_get_int(const struct ejson *obj, const char *key, long long *out)
{
    const struct ejson *v = ejson_get(obj, key);
    if (!ejson_is_int(v)) return -1;
    *out = (long long)v->num;
    return 0;
}

double ejson_get_num(const struct ejson *obj, const char *key, double dflt)
{
    const struct ejson *v = ejson_get(obj, key);
    return (v && v->type == EJSON_NUMBER) ? v->num : dflt;
}

const char *ejson_get_str(const struct ejson *obj, const char *key)
{
    const struct ejson *v = ejson_get(obj, key);
    return (v && v->type == EJSON_STRING) ? v->str : NULL;
}

int ejson_get_bool(const struct ejson *obj, const char *key, int dflt)
{
    const struct ejson *v = ejson_get(obj, key);
    if (v && v->type == EJSON_TRUE) return 1;
    if (v && v->type == EJSON_FALSE) return 0;
    return dflt;
}

const char *ejson_type_name(enum ejson_type t)
{
    switch (t) {
    case EJSON_NULL: return "null";
    case EJSON_FALSE: return "false";
    case EJSON_TRUE: return "true";
    case EJSON_NUMBER: return "number";
    case EJSON_STRING: return "string";
    case EJSON_ARRAY: return "array";
    case EJSON_OBJECT: return "object";
    }
    return "?";
}
