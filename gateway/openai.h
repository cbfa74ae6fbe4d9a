/* The OpenAI wire format: parsing and validating request bodies for chat,
 * completions and embeddings, re-rendering them for an upstream, and
 * OpenAI-shaped error bodies. No I/O and no libevent here. */
#ifndef LLMGATE_GATEWAY_OPENAI_H
#define LLMGATE_GATEWAY_OPENAI_H

#include <stdbool.h>
#include <stddef.h>

#include <cJSON.h>

#define OAI_MAX_DEPTH      128    /* deepest allowed nesting of arrays/objects */
#define OAI_MAX_MODEL_LEN  256    /* bytes */
#define OAI_MAX_MESSAGES   100000 /* chat messages */
#define OAI_MAX_ITEMS      100000 /* prompt / input array elements (and per inner array) */
#define OAI_MAX_TOKENS     (1L << 24)
#define OAI_MAX_N          128
#define OAI_MAX_DIMENSIONS 65536

enum oai_endpoint { OAI_CHAT, OAI_COMPLETIONS, OAI_EMBEDDINGS };

/* An error in OpenAI's shape. `type` and `code` must be string literals (or
 * otherwise outlive the struct); code NULL renders as null, param "" as null. */
struct oai_error {
    int status;
    const char *type;
    const char *code;
    char param[64];
    char message[256];
};

/* Fills e; message is printf-formatted and truncated to fit; param may be
 * NULL (null). Never fails. */
void oai_error_set(struct oai_error *e, int status, const char *type, const char *code,
                   const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* Writes {"error":{"message":..,"type":..,"param":..|null,"code":..|null}}
 * NUL-terminated into buf. Strings are JSON-escaped and invalid UTF-8 is
 * replaced by U+FFFD. Returns the length, or -1 when it does not fit in cap. */
int oai_error_render(const struct oai_error *e, char *buf, size_t cap);

/* A validated request. Only `root` owns memory; `model` points into it. */
struct oai_request {
    enum oai_endpoint endpoint;
    cJSON *root;          /* owned: the parsed body; uninterpreted fields are forwarded as-is */
    const char *model;    /* the client's model name, points into root */
    bool stream;          /* "stream": true (chat, completions) */
    bool include_usage;   /* stream_options.include_usage */
    long max_tokens;      /* max_completion_tokens, else max_tokens; -1 when absent */
    int n;                /* choices; 1 when absent */
    size_t prompt_chars;  /* UTF-8 code points in message contents / prompt / input texts */
    size_t prompt_tokens; /* token ids given directly in prompt / input arrays */
};

/* Parses and validates body (len bytes, need not be NUL-terminated) for
 * endpoint ep. Returns 0 with *out filled (free it with oai_request_free), or
 * -1 with err filled (status 400, or 500 "server_error" on allocation failure)
 * and *out left empty.
 *
 * Duplicate keys: any object anywhere in the body that repeats a key is
 * rejected with 400. cJSON keeps duplicates and looks up the first, while most
 * upstreams (Python, Go) take the last; rejecting avoids validating or
 * metering one value and forwarding another. */
int oai_request_parse(enum oai_endpoint ep, const char *body, size_t len, struct oai_request *out,
                      struct oai_error *err);
/* Frees what parse allocated; r is left empty. Safe on an empty request. */
void oai_request_free(struct oai_request *r);
/* Prints r's body as compact JSON with "model" replaced by upstream_model
 * (NULL keeps the client's). r is unchanged afterwards. Returns a malloc'd
 * NUL-terminated string the caller frees with free(), and its length in *len
 * (len may be NULL); NULL on allocation failure. Numbers are re-printed by
 * cJSON: integers beyond 2^53 lose precision. */
char *oai_request_render(struct oai_request *r, const char *upstream_model, size_t *len);

/* The endpoint's name for logs: "chat.completions", "completions", "embeddings". */
const char *oai_endpoint_name(enum oai_endpoint ep);

#endif
