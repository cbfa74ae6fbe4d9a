/* Non-allocating JSON validation: one pass, an explicit bit stack for nesting. */
#include "common/jsonv.h"

#include <stdbool.h>
#include <stdint.h>

struct scan {
    const unsigned char *p, *end;
};

static void skip_ws(struct scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static bool lit(struct scan *s, const char *w, size_t n)
{
    if ((size_t)(s->end - s->p) < n) return false;
    for (size_t i = 0; i < n; i++)
        if (s->p[i] != (unsigned char)w[i]) return false;
    s->p += n;
    return true;
}

static bool is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool string(struct scan *s)
{
    s->p++; /* opening quote */
    while (s->p < s->end) {
        unsigned char c = *s->p++;
        if (c == '"') return true;
        if (c < 0x20) return false;
        if (c != '\\') continue;
        if (s->p >= s->end) return false;
        c = *s->p++;
        if (c == 'u') {
            if (s->end - s->p < 4) return false;
            for (int i = 0; i < 4; i++)
                if (!is_hex(s->p[i])) return false;
            s->p += 4;
        } else if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' &&
                   c != 'r' && c != 't') {
            return false;
        }
    }
    return false;
}

static bool digits(struct scan *s)
{
    const unsigned char *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return s->p > start;
}

static bool number(struct scan *s)
{
    if (*s->p == '-') s->p++;
    if (s->p >= s->end) return false;
    if (*s->p == '0')
        s->p++;
    else if (!digits(s))
        return false;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (!digits(s)) return false;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-')) s->p++;
        if (!digits(s)) return false;
    }
    return true;
}

/* A scalar at s->p (not an object or array). */
static bool scalar(struct scan *s)
{
    switch (*s->p) {
    case '"': return string(s);
    case 't': return lit(s, "true", 4);
    case 'f': return lit(s, "false", 5);
    case 'n': return lit(s, "null", 4);
    default: return (*s->p == '-' || (*s->p >= '0' && *s->p <= '9')) && number(s);
    }
}

enum jsonv_type jsonv_check(const char *str, size_t n)
{
    struct scan s = {(const unsigned char *)str, (const unsigned char *)str + n};
    uint64_t stack[JSONV_MAX_DEPTH / 64]; /* bit set: 1 = object, 0 = array */
    int depth = 0;
    enum jsonv_type top = JSONV_INVALID;
    skip_ws(&s);
    if (s.p >= s.end) return JSONV_INVALID;
    top = *s.p == '{' ? JSONV_OBJECT : *s.p == '[' ? JSONV_ARRAY : JSONV_SCALAR;

    /* Expect a value, then loop on what may follow it in the current container. */
value:
    skip_ws(&s);
    if (s.p >= s.end) return JSONV_INVALID;
    if (*s.p == '{' || *s.p == '[') {
        bool obj = *s.p == '{';
        if (depth == JSONV_MAX_DEPTH) return JSONV_INVALID;
        if (obj)
            stack[depth / 64] |= (uint64_t)1 << (depth % 64);
        else
            stack[depth / 64] &= ~((uint64_t)1 << (depth % 64));
        depth++;
        s.p++;
        skip_ws(&s);
        if (s.p < s.end && *s.p == (obj ? '}' : ']')) {
            s.p++;
            depth--;
            goto after;
        }
        if (obj) goto key;
        goto value;
    }
    if (!scalar(&s)) return JSONV_INVALID;
after:
    skip_ws(&s);
    if (depth == 0) return s.p == s.end ? top : JSONV_INVALID;
    if (s.p >= s.end) return JSONV_INVALID;
    {
        bool obj = (stack[(depth - 1) / 64] >> ((depth - 1) % 64)) & 1;
        if (*s.p == ',') {
            s.p++;
            if (obj) goto key;
            goto value;
        }
        if (*s.p == (obj ? '}' : ']')) {
            s.p++;
            depth--;
            goto after;
        }
        return JSONV_INVALID;
    }
key:
    skip_ws(&s);
    if (s.p >= s.end || *s.p != '"' || !string(&s)) return JSONV_INVALID;
    skip_ws(&s);
    if (s.p >= s.end || *s.p != ':') return JSONV_INVALID;
    s.p++;
    goto value;
}

cJSON *jsonv_parse(const char *s, size_t n)
{
    const char *end = NULL;
    cJSON *doc = n ? cJSON_ParseWithLengthOpts(s, n, &end, 0) : NULL;
    if (!doc) return NULL;
    const char *stop = s + n;
    while (end < stop && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++;
    if (end == stop) return doc;
    cJSON_Delete(doc);
    return NULL;
}
