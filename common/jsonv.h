/* A non-allocating JSON validator (RFC 8259 grammar), for checking that bytes
 * relayed from an upstream are well-formed without building a tree. */
#ifndef LLMGATE_COMMON_JSONV_H
#define LLMGATE_COMMON_JSONV_H

#include <cjson/cJSON.h>
#include <stddef.h>

enum jsonv_type { JSONV_INVALID = 0, JSONV_OBJECT, JSONV_ARRAY, JSONV_SCALAR };

#define JSONV_MAX_DEPTH 512

/* Checks that s[0..n) is exactly one JSON value (surrounding whitespace allowed),
 * nested at most JSONV_MAX_DEPTH deep. Returns the top-level type, or
 * JSONV_INVALID. Strings are checked for escapes and control characters, not for
 * UTF-8 validity (relayed bytes pass through unchanged). */
enum jsonv_type jsonv_check(const char *s, size_t n);

/* s[0..n) parsed with cJSON when it is exactly one JSON value (surrounding
 * whitespace allowed), else NULL: cJSON_ParseWithLength stops after the first
 * value and would take "{...}junk" for a good upstream answer. */
cJSON *jsonv_parse(const char *s, size_t n);

#endif
