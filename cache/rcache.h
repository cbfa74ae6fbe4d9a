/* The response cache's data side: the canonical request key (SHA-256 over a
 * canonical serialisation of everything that can change an answer), the
 * versioned entry format with its validation, the stream assembler that turns
 * relayed chunks back into one answer, the SSE replay of a stored answer, and
 * the Redis commands (get, claim with a cross-replica lock, store, release).
 * Knows nothing of requests or of the pipeline (gateway/cachestage.c does). */
#ifndef LLMGATE_CACHE_RCACHE_H
#define LLMGATE_CACHE_RCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

struct evbuffer;
struct redis;

#define RCACHE_KEY_LEN       32 /* SHA-256 */
#define RCACHE_ENTRY_VERSION 1
#define RCACHE_HEADER_LEN    60 /* bytes before the body in an encoded entry */
#define RCACHE_SCOPE_MAX     72

/* ---------------------------------------------------------------- keys */

/* A growable byte buffer (the canonical serialisation). Zero-initialise it;
 * it may start on caller storage (p, cap set, heap false) and moves to the
 * heap when that is full. */
struct rcache_buf {
    char *p;
    size_t len, cap;
    bool oom;  /* an append failed: the contents are incomplete */
    bool heap; /* p was malloc'd (freed by rcache_buf_free) */
};
void rcache_buf_free(struct rcache_buf *b);

/* A request header that reaches the upstream (so may change the answer). */
struct rcache_header {
    const char *name, *value;
};

/* Everything a cached answer depends on. */
struct rcache_key_input {
    const char *endpoint;                /* "chat.completions" or "completions" */
    const char *provider;                /* resolved provider name */
    const char *upstream_model;          /* model name sent upstream */
    const cJSON *body;                   /* the parsed request body (an object) */
    const struct rcache_header *headers; /* forwarded to the upstream; any order */
    size_t n_headers;
};

/* Builds the canonical serialisation of in — a JSON array of a version tag,
 * endpoint, provider, upstream model, the forwarded headers (lowercased names,
 * sorted, stable) and the body with object keys sorted by bytes, numbers in
 * shortest round-trip form (-0 as 0), strings minimally escaped as UTF-8, no
 * whitespace, and the top-level fields that cannot change the answer left out
 * ("model", replaced by provider + upstream model; "stream", "stream_options",
 * "user") — and writes its SHA-256 to key. The serialisation is appended to
 * canon when canon is not NULL (the caller frees it). Returns 0, or -1 when
 * body is not an object or memory ran out. */
int rcache_key_build(const struct rcache_key_input *in, struct rcache_buf *canon,
                     uint8_t key[RCACHE_KEY_LEN]);

/* Writes the Redis key of an entry, "<prefix>rc:{<scope>}:<hex key>", and of its
 * single-flight lock (the same plus ":lock"; lock may be NULL). Returns the
 * entry key's length, or -1 when it does not fit in cap. */
int rcache_redis_key(const char *prefix, const char *scope, const uint8_t key[RCACHE_KEY_LEN],
                     char *out, size_t cap, char *lock, size_t lock_cap);

/* ---------------------------------------------------------------- entries */

enum rcache_kind { RCACHE_CHAT = 0, RCACHE_COMPLETIONS = 1 };

/* A decoded entry; body points into the encoded bytes. */
struct rcache_entry {
    enum rcache_kind kind;
    uint64_t created_ms; /* wall clock when stored */
    long prompt_tokens, completion_tokens;
    const char *body; /* the answer as a non-streamed OpenAI JSON object */
    size_t body_len;
};

/* Encodes an entry for key: header (magic, version, kind, created, token
 * counts, the key itself, body length) + body. Returns a malloc'd buffer the
 * caller frees and its length in *len, or NULL on allocation failure. */
char *rcache_entry_encode(const struct rcache_entry *e, const uint8_t key[RCACHE_KEY_LEN],
                          size_t *len);
/* Decodes and validates data[0..len): magic, version, kind, the stored key
 * equal to key, the body length, and the body one JSON object. 0 with *out
 * pointing into data, or -1 when the entry is corrupt, foreign or of another
 * version (the caller treats it as a miss and deletes it). */
int rcache_entry_decode(const char *data, size_t len, const uint8_t key[RCACHE_KEY_LEN],
                        struct rcache_entry *out);

/* Whether a buffered 200 answer may be cached: an object with a non-empty
 * "choices" array whose every finish_reason is "stop", "length" or
 * "tool_calls", and no "error". Token counts from its usage (0 when absent). */
bool rcache_answer_cacheable(const cJSON *answer, long *prompt_tokens, long *completion_tokens);

/* ---------------------------------------------------------------- streams */

/* Rebuilds a streamed answer from its OpenAI chunks, as they are relayed. */
struct rcache_asm;
/* A new assembler for kind, bounded by max_bytes of assembled text; NULL on
 * allocation failure. */
struct rcache_asm *rcache_asm_new(enum rcache_kind kind, size_t max_bytes);
void rcache_asm_free(struct rcache_asm *a);
/* Adds one chunk (a parsed data: object). Chunks that make the answer
 * uncacheable (logprobs, too large, malformed choices) poison the assembler. */
void rcache_asm_feed(struct rcache_asm *a, const cJSON *chunk);
/* The assembled answer as a non-streamed JSON object (malloc'd, NUL-terminated,
 * length in *len) with its token counts, or NULL when the stream did not make a
 * cacheable answer (poisoned, a choice without an accepted finish_reason). */
char *rcache_asm_finish(struct rcache_asm *a, size_t *len, long *prompt_tokens,
                        long *completion_tokens);

/* Appends the stored answer body as the SSE stream a live upstream would have
 * sent: per choice a role chunk, content (or text) chunks of at most
 * piece_bytes (split on UTF-8 boundaries), tool-call chunks, a finish chunk;
 * then the usage chunk when include_usage, then [DONE]. 0, or -1 when body
 * does not parse (nothing is appended then). */
int rcache_render_sse(const char *body, size_t len, enum rcache_kind kind, bool include_usage,
                      size_t piece_bytes, struct evbuffer *out);

/* rcache_render_sse, also giving where the usage chunk and [DONE] start,
 * counted from the first byte this call appended (usage_off == done_off when
 * no usage chunk was written); either pointer may be NULL. */
int rcache_render_sse_parts(const char *body, size_t len, enum rcache_kind kind, bool include_usage,
                            size_t piece_bytes, struct evbuffer *out, size_t *usage_off,
                            size_t *done_off);

/* ---------------------------------------------------------------- Redis */

/* What a lookup found. */
enum rcache_result {
    RCACHE_BADTYPE = -3, /* the key holds another type than a string: a corrupt entry (get) */
    RCACHE_DOWN = -2,    /* Redis unreachable (no reply) */
    RCACHE_ERROR = -1,   /* an error reply */
    RCACHE_MISS = 0,     /* nothing stored (get) / lock held by someone else (claim) */
    RCACHE_HIT = 1,      /* value/len hold the entry, valid during the callback only */
    RCACHE_CLAIMED = 2   /* nothing stored and the lock is now ours (claim) */
};
typedef void (*rcache_cb)(enum rcache_result res, const char *value, size_t len, void *ud);

/* GET key. 0 when sent (cb runs exactly once), -1 when Redis is down (cb never runs). */
int rcache_get(struct redis *rd, const char *key, rcache_cb cb, void *ud);
/* Atomically: the entry if stored (HIT), else take the lock with token for
 * lock_ms (CLAIMED), else MISS (another holder). Same return contract. */
int rcache_claim(struct redis *rd, const char *key, const char *lock, const char *token,
                 unsigned lock_ms, rcache_cb cb, void *ud);
/* Stores the entry with a TTL and drops the lock if token still holds it (lock
 * may be NULL). Fire and forget; cb (may be NULL) gets the result. 0 or -1. */
int rcache_store(struct redis *rd, const char *key, const char *lock, const char *token,
                 const char *entry, size_t len, unsigned ttl_s, rcache_cb cb, void *ud);
/* Drops the lock if token still holds it. Fire and forget. */
int rcache_release(struct redis *rd, const char *lock, const char *token);
/* Deletes a (corrupt) entry. Fire and forget. */
int rcache_delete(struct redis *rd, const char *key);

#endif
