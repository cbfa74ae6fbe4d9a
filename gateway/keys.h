/* Tenant API keys: extraction from the request headers, the key record read
 * from Redis (through a per-worker cache with a short TTL and pub/sub
 * invalidation), model globs, key generation, and the authenticate and
 * model-authorization stages of the request pipeline. */
#ifndef LLMGATE_GATEWAY_KEYS_H
#define LLMGATE_GATEWAY_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/hash.h"
#include "gateway/request.h"

struct worker;

#define KEYS_ID_LEN     20 /* "key_" + 16 hex */
#define KEYS_SECRET_LEN 54 /* "sk-lg-" + 48 hex (192 random bits) */
#define KEYS_TENANT_MAX 64

/* Limits of one scope; 0 = unlimited. */
/* The largest limit accepted: KEYS_LIMIT_MAX for rates, concurrency and
 * max_tokens, KEYS_WINDOW_LIMIT_MAX for the day and month windows (a large
 * tenant's monthly tokens exceed 32 bits; 10^12 still prints exactly from Lua,
 * whose numbers Redis formats with 14 significant digits). A larger stored value
 * reads as the maximum, never as "no limit". */
#define KEYS_LIMIT_MAX        4000000000u
#define KEYS_WINDOW_LIMIT_MAX 1000000000000ull

struct key_limits {
    unsigned rpm;  /* requests per minute (token bucket) */
    unsigned tpm;  /* tokens per minute (token bucket) */
    uint64_t tpd;  /* tokens per UTC day */
    uint64_t tpmo; /* tokens per UTC month */
    unsigned conc; /* concurrent requests */
};

/* Per-model limits of a key: the first glob matching the asked model applies. */
struct key_model_limit {
    char *glob;
    struct key_limits l;
};

/* A key as read from Redis, with its tenant's limits. Refcounted on one worker
 * thread: the cache holds one reference, each request using it another. */
struct key_record {
    int refs;
    char id[KEYS_ID_LEN + 12];
    char tenant[KEYS_TENANT_MAX + 1];
    bool revoked;
    uint64_t expires; /* unix seconds; 0 = never */
    char **models;    /* allowed model globs */
    size_t n_models;
    struct key_limits key, tenant_limits;
    unsigned max_tokens; /* default completion cap; 0 = the config's */
    struct key_model_limit *model_limits;
    size_t n_model_limits;
};

/* The presented key from Authorization: Bearer, api-key (Azure) or x-api-key
 * (Anthropic), in that order. Returns a pointer into the header value and its
 * length, or NULL when none is present or well-formed. */
const char *keys_extract(const char *authorization, const char *api_key, const char *x_api_key,
                         size_t *len);
/* Shell-style glob match ('*' any run, '?' one byte) of s against glob. */
bool keys_glob_match(const char *glob, const char *s);
/* Builds a record from a key-lookup reply's field/value strings (n pairs).
 * Returns a record with one reference, or NULL when the fields do not describe a
 * key (missing id/tenant) or on allocation failure. */
struct key_record *keys_record_parse(const char *const *fields, const char *const *values,
                                     size_t n);
/* Drops a reference; frees at zero. NULL is fine. */
void keys_record_release(struct key_record *k);
/* Whether the key may use model (one of its globs matches). */
bool keys_model_allowed(const struct key_record *k, const char *model);
/* The key's per-model limits for model, or NULL. */
const struct key_model_limit *keys_model_limit(const struct key_record *k, const char *model);
/* Makes a new key: secret (NUL-terminated, KEYS_SECRET_LEN chars), its SHA-256
 * hex and a key id ("key_" + 16 hex). 0, or -1 when the RNG fails. */
int keys_generate(char secret[KEYS_SECRET_LEN + 1], char sha_hex[SHA256_HEX_LEN + 1],
                  char id[KEYS_ID_LEN + 1]);
/* Whether s is a valid tenant id: 1 to 64 of [A-Za-z0-9._-]. */
bool keys_tenant_id_valid(const char *s);

/* Per-worker key cache and its invalidation subscriber; NULL on allocation failure. */
struct keycache *keycache_new(struct worker *w);
void keycache_free(struct keycache *kc);
/* Forgets one key (by SHA-256 hex) or, with NULL, every key. */
void keycache_invalidate(struct keycache *kc, const char *sha_hex);

/* Stage: the presented key -> r->key (tenant key) or the static config list.
 * 401 for a missing/unknown/revoked/expired key; 503 when Redis is needed and
 * unreachable for a key the worker has never seen. */
enum stage_rc keys_authenticate(struct request *r);
/* Stage: 403 model_not_allowed when r->oai.model is outside the key's globs. */
enum stage_rc keys_authorize_model(struct request *r);

#endif
