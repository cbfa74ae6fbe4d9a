/* JSON with comments ("jsonc") for configuration and policy files: strips // and
 * block comments, parses with cJSON, and remembers where every item came from so
 * that semantic errors can say "file:line:col: message".
 *
 * Rules, beyond plain JSON (as cJSON 1.7.15 reads it):
 *  - // line comments and C block comments are allowed wherever whitespace is;
 *    inside strings they are ordinary text.
 *  - Duplicate keys in one object are an error (keys compare case-sensitively).
 *  - Nesting deeper than CJSON_NESTING_LIMIT (1000) is an error.
 *  - NUL bytes in the text are an error.
 * Positions are 1-based; a line ends at '\n'; the column counts BYTES from the
 * start of the line (a tab or a UTF-8 sequence counts as its byte length). */
#ifndef LLMGATE_COMMON_JSONC_H
#define LLMGATE_COMMON_JSONC_H

#include <stddef.h>
#include <cJSON.h>

/* Largest file jsonc_load_file() reads. */
#define JSONC_MAX_FILE_SIZE (16u * 1024 * 1024)

struct jsonc_pos_entry; /* internal: item -> source offsets */

/* A parsed document. Everything in it is owned by the doc and lives until
 * jsonc_free(); cJSON items handed out by the tree must not outlive it. */
struct jsonc_doc {
    char *text;                  /* the input with comments blanked to spaces, NUL-terminated */
    size_t len;                  /* bytes in text, without the NUL */
    char *filename;              /* name used in messages */
    cJSON *root;                 /* the parsed tree (never NULL in a returned doc) */
    struct jsonc_pos_entry *pos; /* sorted by item address */
    size_t n_pos;
};

/* Parses len bytes of text (need not be NUL-terminated) named filename in messages.
 * Returns 0 and a new doc in *out (free with jsonc_free), or -1 with
 * "filename:line:col: message" in err. */
int jsonc_parse(const char *text, size_t len, const char *filename, struct jsonc_doc **out,
                char *err, size_t errlen);
/* Reads (at most JSONC_MAX_FILE_SIZE bytes) and parses the file at path. Returns 0 and a
 * doc in *out, or -1 with "path: cannot read: reason" or a parse error in err. */
int jsonc_load_file(const char *path, struct jsonc_doc **out, char *err, size_t errlen);
/* Frees the doc, its tree and its positions. NULL is fine. */
void jsonc_free(struct jsonc_doc *doc);

/* Position of item's value (its first byte). 0 on success; -1 if the item is not from doc. */
int jsonc_pos(const struct jsonc_doc *doc, const cJSON *item, int *line, int *col);
/* Byte offset of item's value in doc->text. 0 on success; -1 if the item is not from doc.
 * (For many items in document order, convert offsets incrementally: jsonc_pos scans.) */
int jsonc_offset(const struct jsonc_doc *doc, const cJSON *item, size_t *off);
/* Position of the key of an object member (the key's opening quote); for array elements
 * and the root this is the value position. 0 on success, -1 if unknown. */
int jsonc_key_pos(const struct jsonc_doc *doc, const cJSON *item, int *line, int *col);
/* Writes "file:line:col: <fmt...>" for item's value into err (just "file: ..." if item is
 * NULL or unknown). Always returns -1, so callers can `return jsonc_errorf(...)`. */
int jsonc_errorf(const struct jsonc_doc *doc, const cJSON *item, char *err, size_t errlen,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Same as jsonc_errorf, at the member's key instead of its value. Returns -1. */
int jsonc_key_errorf(const struct jsonc_doc *doc, const cJSON *item, char *err, size_t errlen,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Converts a byte offset in text to a 1-based line and byte column. */
void jsonc_offset_to_line_col(const char *text, size_t len, size_t offset, int *line, int *col);

#endif
