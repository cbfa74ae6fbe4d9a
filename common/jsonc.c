/* JSON with comments and source positions: blanks comments, parses with cJSON, then
 * walks the text alongside the tree to record each item's offset and to reject what
 * cJSON lets through (duplicate keys, raw control characters, bad \u escapes). */
#include "common/jsonc.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct jsonc_pos_entry {
    const cJSON *item;
    size_t val_off; /* first byte of the value */
    size_t key_off; /* opening quote of the member's key; == val_off when no key */
};

/* ------------------------------------------------------------------------- */
/* Messages                                                                  */
/* ------------------------------------------------------------------------- */

static const char *display_name(const char *filename)
{
    return filename ? filename : "<input>";
}

void jsonc_offset_to_line_col(const char *text, size_t len, size_t offset, int *line, int *col)
{
    int l = 1;
    size_t line_start = 0;
    if (offset > len) offset = len;
    for (size_t i = 0; i < offset; i++) {
        if (text[i] == '\n') {
            l++;
            line_start = i + 1;
        }
    }
    *line = l;
    *col = (int)(offset - line_start) + 1;
}

static void format_at(char *err, size_t errlen, const char *filename, const char *text, size_t len,
                      size_t offset, const char *fmt, va_list ap)
{
    if (!err || errlen == 0) return;
    int line, col;
    jsonc_offset_to_line_col(text, len, offset, &line, &col);
    int n = snprintf(err, errlen, "%s:%d:%d: ", display_name(filename), line, col);
    if (n < 0 || (size_t)n >= errlen) return;
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
}

/* Renders the byte at text[off] (or end of input) for "found ..." messages. */
static void describe_at(const char *text, size_t len, size_t off, char *out, size_t n)
{
    if (off >= len) {
        snprintf(out, n, "end of input");
        return;
    }
    unsigned char c = (unsigned char)text[off];
    if (c == '\'')
        snprintf(out, n, "\"'\"");
    else if (c > 32 && c < 127)
        snprintf(out, n, "'%c'", c);
    else
        snprintf(out, n, "byte 0x%02x", c);
}

/* ------------------------------------------------------------------------- */
/* Comments                                                                  */
/* ------------------------------------------------------------------------- */

/* Blanks // and block comments outside strings in place, keeping newlines so offsets and
 * lines stay those of the original. A string also ends at a newline here (a raw newline
 * in a string is an error reported later), so one missing quote does not swallow the
 * comments of the rest of the file. Returns 0, or -1 with *bad at an unterminated comment. */
static int strip_comments(char *s, size_t len, size_t *bad)
{
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_string) {
            if (c == '\\' && i + 1 < len && s[i + 1] != '\n')
                i++;
            else if (c == '"' || c == '\n')
                in_string = false;
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '/' && i + 1 < len && s[i + 1] == '/') {
            while (i < len && s[i] != '\n')
                s[i++] = ' ';
        } else if (c == '/' && i + 1 < len && s[i + 1] == '*') {
            size_t start = i;
            s[i++] = ' ';
            s[i++] = ' ';
            while (i + 1 < len && !(s[i] == '*' && s[i + 1] == '/')) {
                if (s[i] != '\n') s[i] = ' ';
                i++;
            }
            if (i + 1 >= len) {
                *bad = start;
                return -1;
            }
            s[i++] = ' ';
            s[i] = ' ';
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------- */
/* The scanner: mirrors cJSON's grammar over the blanked text                */
/* ------------------------------------------------------------------------- */

struct scanner {
    const char *s;
    size_t len;
    size_t p;
    /* first error */
    size_t err_off;
    char msg[192];
    /* record mode (tree != NULL) */
    struct jsonc_pos_entry *pos;
    size_t n_pos, cap_pos;
};

static int scan_fail(struct scanner *sc, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int scan_fail(struct scanner *sc, size_t off, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sc->msg, sizeof sc->msg, fmt, ap);
    va_end(ap);
    sc->err_off = off;
    return -1;
}

static int scan_fail_found(struct scanner *sc, const char *expected)
{
    char found[32];
    describe_at(sc->s, sc->len, sc->p, found, sizeof found);
    return scan_fail(sc, sc->p, "expected %s, found %s", expected, found);
}

static void skip_ws(struct scanner *sc)
{
    /* cJSON treats every byte <= 32 as whitespace; NUL was rejected up front. */
    while (sc->p < sc->len && (unsigned char)sc->s[sc->p] <= 32)
        sc->p++;
}

static int record(struct scanner *sc, const cJSON *item, size_t val_off, size_t key_off)
{
    if (!item) return 0;
    if (sc->n_pos == sc->cap_pos) {
        size_t cap = sc->cap_pos ? sc->cap_pos * 2 : 64;
        struct jsonc_pos_entry *p = realloc(sc->pos, cap * sizeof *p);
        if (!p) return scan_fail(sc, val_off, "out of memory");
        sc->pos = p;
        sc->cap_pos = cap;
    }
    sc->pos[sc->n_pos++] = (struct jsonc_pos_entry){item, val_off, key_off};
    return 0;
}

static int hex4(const char *h, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = h[i];
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

static int scan_string(struct scanner *sc)
{
    size_t open = sc->p;
    size_t q = open + 1;
    for (;;) {
        if (q >= sc->len) return scan_fail(sc, open, "unterminated string");
        unsigned char c = (unsigned char)sc->s[q];
        if (c == '"') break;
        if (c == '\n') return scan_fail(sc, open, "unterminated string");
        if (c < 0x20)
            return scan_fail(sc, q, "raw control character 0x%02x in string (use an escape)", c);
        if (c != '\\') {
            q++;
            continue;
        }
        if (q + 1 >= sc->len) return scan_fail(sc, open, "unterminated string");
        char e = sc->s[q + 1];
        if (e != 'u') {
            if (!strchr("\"\\/bfnrt", e) || e == '\0')
                return scan_fail(sc, q, "invalid escape sequence in string");
            q += 2;
            continue;
        }
        unsigned cp, lo;
        if (q + 6 > sc->len || hex4(sc->s + q + 2, &cp) < 0)
            return scan_fail(sc, q, "invalid \\u escape (expected 4 hex digits)");
        if (cp == 0) return scan_fail(sc, q, "\\u0000 is not allowed in strings");
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return scan_fail(sc, q, "invalid \\u escape (lone low surrogate)");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (q + 12 > sc->len || sc->s[q + 6] != '\\' || sc->s[q + 7] != 'u' ||
                hex4(sc->s + q + 8, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
                return scan_fail(sc, q, "invalid \\u escape (unpaired high surrogate)");
            q += 12;
        } else {
            q += 6;
        }
    }
    sc->p = q + 1;
    return 0;
}

static int scan_number(struct scanner *sc)
{
    /* cJSON copies at most 63 bytes from [0-9+-eE.] and lets strtod decide the length. */
    char buf[64];
    size_t n = 0;
    while (n < sizeof buf - 1 && sc->p + n < sc->len && sc->s[sc->p + n] != '\0' &&
           strchr("0123456789+-eE.", sc->s[sc->p + n]))
        n++;
    memcpy(buf, sc->s + sc->p, n);
    buf[n] = '\0';
    char *end;
    (void)strtod(buf, &end);
    if (end == buf) return scan_fail(sc, sc->p, "invalid number");
    sc->p += (size_t)(end - buf);
    return 0;
}

static int scan_value(struct scanner *sc, const cJSON *item, int depth, size_t key_off);

static int scan_object(struct scanner *sc, const cJSON *item, int depth)
{
    if (depth >= CJSON_NESTING_LIMIT)
        return scan_fail(sc, sc->p, "nesting deeper than %d levels", CJSON_NESTING_LIMIT);
    const cJSON *child = item ? item->child : NULL;
    sc->p++;
    skip_ws(sc);
    if (sc->p < sc->len && sc->s[sc->p] == '}') {
        sc->p++;
        goto done;
    }
    for (;;) {
        skip_ws(sc);
        if (sc->p >= sc->len || sc->s[sc->p] != '"') return scan_fail_found(sc, "a string key");
        size_t key_off = sc->p;
        if (scan_string(sc) < 0) return -1;
        skip_ws(sc);
        if (sc->p >= sc->len || sc->s[sc->p] != ':') return scan_fail_found(sc, "':' after key");
        sc->p++;
        skip_ws(sc);
        if (item && !child) return scan_fail(sc, sc->p, "internal error: tree mismatch");
        if (scan_value(sc, child, depth + 1, key_off) < 0) return -1;
        if (child) child = child->next;
        skip_ws(sc);
        if (sc->p < sc->len && sc->s[sc->p] == ',') {
            sc->p++;
            skip_ws(sc);
            if (sc->p < sc->len && sc->s[sc->p] == '}')
                return scan_fail(sc, sc->p, "expected a string key, found '}' (trailing comma)");
            continue;
        }
        if (sc->p < sc->len && sc->s[sc->p] == '}') {
            sc->p++;
            break;
        }
        return scan_fail_found(sc, "',' or '}'");
    }
done:
    if (child) return scan_fail(sc, sc->p, "internal error: tree mismatch");
    return 0;
}

static int scan_array(struct scanner *sc, const cJSON *item, int depth)
{
    if (depth >= CJSON_NESTING_LIMIT)
        return scan_fail(sc, sc->p, "nesting deeper than %d levels", CJSON_NESTING_LIMIT);
    const cJSON *child = item ? item->child : NULL;
    sc->p++;
    skip_ws(sc);
    if (sc->p < sc->len && sc->s[sc->p] == ']') {
        sc->p++;
        goto done;
    }
    for (;;) {
        skip_ws(sc);
        if (item && !child) return scan_fail(sc, sc->p, "internal error: tree mismatch");
        if (scan_value(sc, child, depth + 1, sc->p) < 0) return -1;
        if (child) child = child->next;
        skip_ws(sc);
        if (sc->p < sc->len && sc->s[sc->p] == ',') {
            sc->p++;
            skip_ws(sc);
            if (sc->p < sc->len && sc->s[sc->p] == ']')
                return scan_fail(sc, sc->p, "expected a value, found ']' (trailing comma)");
            continue;
        }
        if (sc->p < sc->len && sc->s[sc->p] == ']') {
            sc->p++;
            break;
        }
        return scan_fail_found(sc, "',' or ']'");
    }
done:
    if (child) return scan_fail(sc, sc->p, "internal error: tree mismatch");
    return 0;
}

static int scan_literal(struct scanner *sc, const char *word)
{
    size_t n = strlen(word);
    if (sc->len - sc->p < n || memcmp(sc->s + sc->p, word, n) != 0)
        return scan_fail_found(sc, "a value");
    sc->p += n;
    return 0;
}

static int scan_value(struct scanner *sc, const cJSON *item, int depth, size_t key_off)
{
    if (sc->p >= sc->len) return scan_fail_found(sc, "a value");
    if (record(sc, item, sc->p, key_off) < 0) return -1;
    char c = sc->s[sc->p];
    switch (c) {
    case '{': return scan_object(sc, item, depth);
    case '[': return scan_array(sc, item, depth);
    case '"': return scan_string(sc);
    case 'n': return scan_literal(sc, "null");
    case 't': return scan_literal(sc, "true");
    case 'f': return scan_literal(sc, "false");
    default:
        if (c == '-' || (c >= '0' && c <= '9')) return scan_number(sc);
        return scan_fail_found(sc, "a value");
    }
}

/* Scans the whole document; with root != NULL also records positions. */
static int scan_document(struct scanner *sc, const cJSON *root)
{
    if (sc->len >= 3 && memcmp(sc->s, "\xEF\xBB\xBF", 3) == 0) sc->p = 3;
    skip_ws(sc);
    if (sc->p >= sc->len) return scan_fail(sc, sc->p, "empty document (expected a JSON value)");
    if (scan_value(sc, root, 0, sc->p) < 0) return -1;
    skip_ws(sc);
    if (sc->p < sc->len) {
        char found[32];
        describe_at(sc->s, sc->len, sc->p, found, sizeof found);
        return scan_fail(sc, sc->p, "unexpected %s after the JSON value", found);
    }
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Positions and duplicate keys                                              */
/* ------------------------------------------------------------------------- */

static int pos_cmp(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const struct jsonc_pos_entry *)a)->item;
    uintptr_t y = (uintptr_t)((const struct jsonc_pos_entry *)b)->item;
    return x < y ? -1 : x > y;
}

static const struct jsonc_pos_entry *pos_find(const struct jsonc_doc *doc, const cJSON *item)
{
    if (!doc || !item || !doc->pos) return NULL;
    struct jsonc_pos_entry key = {item, 0, 0};
    return bsearch(&key, doc->pos, doc->n_pos, sizeof key, pos_cmp);
}

struct key_ref {
    const char *key;
    size_t off;
};

static int key_ref_cmp(const void *a, const void *b)
{
    const struct key_ref *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    if (c) return c;
    return x->off < y->off ? -1 : x->off > y->off;
}

static size_t key_off_of(const struct jsonc_doc *doc, const cJSON *item)
{
    const struct jsonc_pos_entry *e = pos_find(doc, item);
    return e ? e->key_off : 0;
}

/* Finds the earliest second use of a key within one object, anywhere in the tree: *dup and
 * *first get the offsets of that use and of the first one, *name the key. */
static int find_duplicate(const struct jsonc_doc *doc, const cJSON *node, size_t *dup,
                          size_t *first, const char **name, bool *oom)
{
    int found = 0;
    if (!cJSON_IsObject(node) && !cJSON_IsArray(node)) return 0;
    if (cJSON_IsObject(node)) {
        size_t n = 0;
        for (const cJSON *c = node->child; c; c = c->next)
            n++;
        if (n > 1) {
            struct key_ref *refs = malloc(n * sizeof *refs);
            if (!refs) {
                *oom = true;
                return 0;
            }
            size_t i = 0;
            for (const cJSON *c = node->child; c; c = c->next, i++)
                refs[i] = (struct key_ref){c->string ? c->string : "", key_off_of(doc, c)};
            qsort(refs, n, sizeof *refs, key_ref_cmp);
            for (i = 1; i < n; i++) {
                if (strcmp(refs[i].key, refs[i - 1].key) == 0 && (!found || refs[i].off < *dup)) {
                    *dup = refs[i].off;
                    *first = refs[i - 1].off;
                    *name = refs[i].key;
                    found = 1;
                }
            }
            free(refs);
        }
    }
    for (const cJSON *c = node->child; c; c = c->next) {
        size_t d, f;
        const char *k;
        if (find_duplicate(doc, c, &d, &f, &k, oom) && (!found || d < *dup)) {
            *dup = d;
            *first = f;
            *name = k;
            found = 1;
        }
    }
    return found;
}

/* ------------------------------------------------------------------------- */
/* Public API                                                                */
/* ------------------------------------------------------------------------- */

static int error_at(char *err, size_t errlen, const char *filename, const char *text, size_t len,
                    size_t off, const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static int error_at(char *err, size_t errlen, const char *filename, const char *text, size_t len,
                    size_t off, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    format_at(err, errlen, filename, text, len, off, fmt, ap);
    va_end(ap);
    return -1;
}

int jsonc_parse(const char *text, size_t len, const char *filename, struct jsonc_doc **out,
                char *err, size_t errlen)
{
    struct jsonc_doc *doc = NULL;
    struct scanner sc = {0};
    *out = NULL;
    if (err && errlen) err[0] = '\0';

    doc = calloc(1, sizeof *doc);
    if (!doc) goto oom;
    doc->text = malloc(len + 1);
    doc->filename = strdup(display_name(filename));
    if (!doc->text || !doc->filename) goto oom;
    if (len) memcpy(doc->text, text, len);
    doc->text[len] = '\0';
    doc->len = len;

    const char *nul = memchr(doc->text, '\0', len);
    if (nul) {
        error_at(err, errlen, doc->filename, text, len, (size_t)(nul - doc->text),
                 "NUL byte in input");
        goto fail;
    }
    size_t bad;
    if (strip_comments(doc->text, len, &bad) < 0) {
        error_at(err, errlen, doc->filename, text, len, bad, "unterminated /* comment");
        goto fail;
    }

    sc.s = doc->text;
    sc.len = len;
    /* len + 1 so that require_null_terminated sees our terminating NUL. */
    const char *end = NULL;
    doc->root = cJSON_ParseWithLengthOpts(doc->text, len + 1, &end, 1);
    if (!doc->root) {
        /* Our scanner knows what was expected; cJSON's end pointer is the fallback. */
        if (scan_document(&sc, NULL) < 0) {
            error_at(err, errlen, doc->filename, text, len, sc.err_off, "%s", sc.msg);
        } else {
            size_t off = end && end >= doc->text ? (size_t)(end - doc->text) : 0;
            error_at(err, errlen, doc->filename, text, len, off, "invalid JSON");
        }
        goto fail;
    }
    if (scan_document(&sc, doc->root) < 0) {
        free(sc.pos);
        error_at(err, errlen, doc->filename, text, len, sc.err_off, "%s", sc.msg);
        goto fail;
    }
    doc->pos = sc.pos;
    doc->n_pos = sc.n_pos;
    qsort(doc->pos, doc->n_pos, sizeof *doc->pos, pos_cmp);

    size_t dup, first;
    const char *dup_name;
    bool dup_oom = false;
    if (find_duplicate(doc, doc->root, &dup, &first, &dup_name, &dup_oom)) {
        int l, c;
        jsonc_offset_to_line_col(text, len, first, &l, &c);
        error_at(err, errlen, doc->filename, text, len, dup, "duplicate key '%s' (first at %d:%d)",
                 dup_name, l, c);
        goto fail;
    }
    if (dup_oom) goto oom;
    *out = doc;
    return 0;

oom:
    if (err && errlen) snprintf(err, errlen, "%s: out of memory", display_name(filename));
fail:
    jsonc_free(doc);
    return -1;
}

int jsonc_load_file(const char *path, struct jsonc_doc **out, char *err, size_t errlen)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return -1;
    }
    size_t cap = 64 * 1024, len = 0;
    char *buf = malloc(cap);
    if (!buf) goto oom;
    for (;;) {
        if (len == cap) {
            if (cap > JSONC_MAX_FILE_SIZE) break;
            size_t ncap = cap * 2 > (size_t)JSONC_MAX_FILE_SIZE + 1
                              ? (size_t)JSONC_MAX_FILE_SIZE + 1
                              : cap * 2;
            char *nb = realloc(buf, ncap);
            if (!nb) goto oom;
            buf = nb;
            cap = ncap;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) break;
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno ? errno : EIO));
        goto fail;
    }
    if (len > JSONC_MAX_FILE_SIZE) {
        snprintf(err, errlen, "%s: cannot read: file larger than %u bytes", path,
                 (unsigned)JSONC_MAX_FILE_SIZE);
        goto fail;
    }
    fclose(f);
    int rc = jsonc_parse(buf, len, path, out, err, errlen);
    free(buf);
    return rc;

oom:
    snprintf(err, errlen, "%s: cannot read: out of memory", path);
fail:
    free(buf);
    fclose(f);
    return -1;
}

void jsonc_free(struct jsonc_doc *doc)
{
    if (!doc) return;
    cJSON_Delete(doc->root);
    free(doc->pos);
    free(doc->text);
    free(doc->filename);
    free(doc);
}

int jsonc_pos(const struct jsonc_doc *doc, const cJSON *item, int *line, int *col)
{
    const struct jsonc_pos_entry *e = pos_find(doc, item);
    if (!e) return -1;
    jsonc_offset_to_line_col(doc->text, doc->len, e->val_off, line, col);
    return 0;
}

int jsonc_offset(const struct jsonc_doc *doc, const cJSON *item, size_t *off)
{
    const struct jsonc_pos_entry *e = pos_find(doc, item);
    if (!e) return -1;
    *off = e->val_off;
    return 0;
}

int jsonc_key_pos(const struct jsonc_doc *doc, const cJSON *item, int *line, int *col)
{
    const struct jsonc_pos_entry *e = pos_find(doc, item);
    if (!e) return -1;
    jsonc_offset_to_line_col(doc->text, doc->len, e->key_off, line, col);
    return 0;
}

static int errorv(const struct jsonc_doc *doc, const cJSON *item, bool key, char *err,
                  size_t errlen, const char *fmt, va_list ap)
{
    if (!err || errlen == 0) return -1;
    const struct jsonc_pos_entry *e = pos_find(doc, item);
    const char *name = display_name(doc ? doc->filename : NULL);
    if (!e) {
        int n = snprintf(err, errlen, "%s: ", name);
        if (n >= 0 && (size_t)n < errlen) vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
        return -1;
    }
    format_at(err, errlen, name, doc->text, doc->len, key ? e->key_off : e->val_off, fmt, ap);
    return -1;
}

int jsonc_errorf(const struct jsonc_doc *doc, const cJSON *item, char *err, size_t errlen,
                 const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    errorv(doc, item, false, err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

int jsonc_key_errorf(const struct jsonc_doc *doc, const cJSON *item, char *err, size_t errlen,
                     const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    errorv(doc, item, true, err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}
