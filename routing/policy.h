/* Routing policies: the files in the configured policy directory (JSON with
 * comments, documented in policies/README.md) compiled into an immutable,
 * refcounted snapshot of routes. A route matches a request on model name
 * (exact, glob, aliases), tenant and an optional header, and says which
 * targets serve it (weighted, optionally sticky), the ordered fallback list,
 * which failures fail over, timeouts, retries, the circuit breaker, and the
 * cache and long-input settings. One table of rows drives parsing, defaults,
 * bounds and the reference (policy_write_reference). */
#ifndef LLMGATE_ROUTING_POLICY_H
#define LLMGATE_ROUTING_POLICY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "routing/breaker.h"

struct config;
struct provider_conf;
struct target_state;
struct cJSON;

/* Failures that may trigger a fallback (bits of policy_route.fallback_on). */
enum policy_failure {
    PF_RATE_LIMITED = 0, /* 429 */
    PF_OVERLOADED,       /* 503, 529, engine_overloaded */
    PF_SERVER_ERROR,     /* other 5xx, malformed answers, broken connections */
    PF_TIMEOUT,          /* connect, first token, idle or total timeout */
    PF_CONTEXT_LENGTH,   /* the input is too long for this target */
    PF_CONNECT_ERROR,    /* refused, unresolvable, TLS failure */
    PF_COUNT
};
#define PF_BIT(f) (1u << (f))

enum sticky_by { STICKY_NONE = 0, STICKY_TENANT, STICKY_HEADER };
enum long_input_strategy { LI_REJECT = 0, LI_TRUNCATE, LI_CHUNK, LI_FALLBACK };
/* Response cache (gateway/cachestage.c): auto = deterministic requests only
 * (temperature 0 or a seed); scope tenant = one cache per tenant. */
enum cache_mode { CACHE_MODE_AUTO = 0, CACHE_MODE_ALWAYS, CACHE_MODE_NEVER };
enum cache_scope { CACHE_SCOPE_TENANT = 0, CACHE_SCOPE_SHARED };

struct policy_target {
    char *provider_name;
    char *model; /* upstream model; NULL = the model name the client asked for */
    unsigned weight;
    const struct provider_conf *provider; /* points into the config the policy was built for */
    /* Shared state of provider + model (model "*" when model is NULL). */
    struct target_state *state;
};

struct policy_route {
    char *name;    /* "name" or "<file>#<index>" */
    char *origin;  /* "file:line:col" of the route object */
    bool implicit; /* made from the config's "models" section */

    /* match */
    char **models; /* exact names (aliases) and globs; n_models == 0: any model */
    size_t n_models;
    char *tenant;                     /* NULL = any tenant */
    char *header_name, *header_value; /* header must be present (and equal, if value is set) */

    /* targets */
    struct policy_target *targets; /* weighted; one is chosen per request */
    size_t n_targets;
    unsigned total_weight;
    enum sticky_by sticky;
    char *sticky_header;
    struct policy_target *fallback; /* tried in order after the weighted targets */
    size_t n_fallback;
    unsigned fallback_on; /* PF_BIT()s */

    /* limits: 0 = the provider's own */
    unsigned connect_ms, first_token_ms, idle_ms, total_ms;
    unsigned retry_attempts; /* further attempts on the same target */
    unsigned backoff_ms, backoff_max_ms;
    unsigned retry_after_max_ms; /* a 429's Retry-After up to this is waited for */
    unsigned budget_permille;    /* retries per 1000 requests per provider */
    struct breaker_conf breaker;

    /* read by the cache and long-input stages */
    unsigned cache_ttl_s; /* 0 = the config's cache.default_ttl_s */
    enum cache_mode cache_mode;
    enum cache_scope cache_scope;
    bool cache_charge_tokens; /* cached answers count against token quotas */
    enum long_input_strategy long_input;
    unsigned chunk_tokens, overlap_tokens;
};

/* A glob (or any-model) pattern of a route, with its literal prefix length so
 * that most non-matching patterns are ruled out by one memcmp. */
struct policy_glob {
    size_t route;
    const char *pattern; /* NULL = any model */
    size_t lit;
};

/* Exact-name index entry (sorted by name, then route index). */
struct policy_exact {
    const char *name;
    size_t route;
};

struct policy {
    _Atomic int refs;
    uint64_t generation; /* increases with every snapshot built in this process */
    uint64_t loaded_wall_ms;
    char *dir;    /* NULL when no policy directory is configured */
    char **files; /* file names read, in the order their routes were added */
    size_t n_files;
    struct policy_route *routes; /* file routes in order, then the implicit ones */
    size_t n_routes;
    struct policy_exact *exact;
    size_t n_exact;
    struct policy_glob *scan; /* glob and any-model patterns, by ascending route */
    size_t n_scan;
};

/* One policy file's text, for policy_build(). */
struct policy_source {
    const char *name; /* used in messages */
    const char *text;
    size_t len;
};

/* Compiles the sources (in order) plus one implicit route per model of cfg's
 * "models" section into a snapshot with one reference. Providers are resolved
 * against cfg, which must outlive the snapshot (the config owns it). Returns 0,
 * or -1 with "file:line:col: message" in err. dir is only recorded. */
int policy_build(const struct config *cfg, const char *dir, const struct policy_source *srcs,
                 size_t n, struct policy **out, char *err, size_t errlen);
/* Reads every "*.json" file of dir (sorted by name; hidden and editor temp files
 * skipped) and builds a snapshot as policy_build does; dir NULL = implicit routes only. */
int policy_load_dir(const struct config *cfg, const char *dir, struct policy **out, char *err,
                    size_t errlen);
/* Takes another reference (atomic); returns p. */
struct policy *policy_ref(struct policy *p);
/* Drops a reference; frees at zero. NULL is fine. */
void policy_unref(struct policy *p);

/* What a request is matched on. header(ud, name) returns a request header or NULL. */
struct route_query {
    const char *model;
    const char *tenant; /* NULL when the key has none */
    const char *(*header)(void *ud, const char *name);
    void *ud;
};
/* The first route (in file order, implicit routes last) matching q, or NULL. */
const struct policy_route *policy_match(const struct policy *p, const struct route_query *q);

/* Name of a failure ("rate_limited", ...). */
const char *policy_failure_name(enum policy_failure f);
/* The snapshot as JSON for GET /admin/v1/policy, with live breaker and cooldown
 * state; caller frees with cJSON_Delete. NULL when out of memory. */
struct cJSON *policy_to_json(const struct policy *p);
/* Writes the markdown reference of every route key. 0, or -1 on a write error. */
int policy_write_reference(FILE *out);

#endif
