/* Strict, arena-allocated JSON reader (RFC 8259) for the engine: model configs,
 * tokenizer.json and friends. Needs only libc; the gateway's cJSON is not used here. */
#ifndef LLMGATE_ENGINE_JSON_H
#define LLMGATE_ENGINE_JSON_H

#include <stddef.h>

enum ejson_type {
    EJSON_NULL,
    EJSON_FALSE,
    EJSON_TRUE,
    EJSON_NUMBER,
    EJSON_STRING,
    EJSON_ARRAY,
    EJSON_OBJECT
};

/* One JSON value. All pointers point into the owning ejson_doc and live until ejson_free. */
struct ejson {
    enum ejson_type type;
    double num;          /* EJSON_NUMBER: the value (strtod rounding) */
    const char *str;     /* EJSON_STRING: decoded UTF-8, NUL-terminated (may contain "\u0000") */
    size_t str_len;      /* EJSON_STRING: byte length of str, without the NUL */
    struct ejson *items; /* EJSON_ARRAY elements or EJSON_OBJECT values, n of them */
    const char **keys;   /* EJSON_OBJECT: decoded, NUL-terminated keys, parallel to items */
    size_t *key_lens;    /* EJSON_OBJECT: byte length of each key */
    size_t n;            /* number of elements / members */
};

struct ejson_doc; /* owns all memory of one parsed document */

/* Nesting deeper than this (arrays + objects) is rejected. */
#define EJSON_MAX_DEPTH 512

/* Parses len bytes of text (need not be NUL-terminated). Returns a document the caller frees
 * with ejson_free, or NULL with "line L, column C (byte B): message" in err.
 * Strict: one value, no comments, no trailing commas, strings must be valid UTF-8 without raw
 * control characters. A lone UTF-16 surrogate escape ("\ud800") decodes to U+FFFD (like
 * Python's json with errors="replace" would); duplicate keys are kept, lookups see the first. */
struct ejson_doc *ejson_parse(const char *text, size_t len, char *err, size_t errlen);

/* Reads and parses a whole file; NULL with "path: ..." in err on I/O or syntax errors. */
struct ejson_doc *ejson_parse_file(const char *path, char *err, size_t errlen);

/* The document's root value (never NULL for a parsed document). */
const struct ejson *ejson_root(const struct ejson_doc *d);

/* Frees the document and every value in it. NULL is a no-op. */
void ejson_free(struct ejson_doc *d);

/* Member `key` of an object; NULL if missing or obj is NULL / not an object (first match). */
const struct ejson *ejson_get(const struct ejson *obj, const char *key);

/* Element i of an array; NULL if out of range or arr is NULL / not an array. */
const struct ejson *ejson_at(const struct ejson *arr, size_t i);

/* 1 if v is a number with an integral value representable as long long, else 0. */
int ejson_is_int(const struct ejson *v);

/* Member `key` as an integer into *out: 0 ok, -1 missing / not a number / not integral. */
int ejson_get_int(const struct ejson *obj, const char *key, long long *out);

/* Member `key` as a double, or dflt if missing / not a number. */
double ejson_get_num(const struct ejson *obj, const char *key, double dflt);

/* Member `key` as a string (owned by the document), or NULL if missing / not a string. */
const char *ejson_get_str(const struct ejson *obj, const char *key);

/* Member `key` as a boolean: 1 true, 0 false, dflt if missing / not a boolean. */
int ejson_get_bool(const struct ejson *obj, const char *key, int dflt);

/* "null", "false", "true", "number", "string", "array" or "object". */
const char *ejson_type_name(enum ejson_type t);

#endif
