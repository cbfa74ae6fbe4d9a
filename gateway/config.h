/* The daemon configuration: conf/llmgate.conf (JSON with comments) read into an
 * immutable, refcounted snapshot. One table of options drives parsing, defaults,
 * bounds, error messages and docs/CONFIG.md. A reload builds a new snapshot; holders of
 * the old one keep it alive with config_ref()/config_unref(). */
#ifndef LLMGATE_GATEWAY_CONFIG_H
#define LLMGATE_GATEWAY_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/log.h"

/* Upstream API dialects: an OpenAI-compatible server, or the bundled llmgate-engine (OpenAI
 * HTTP on a unix socket, optionally started and supervised by the gateway). */
enum provider_kind { PROVIDER_OPENAI, PROVIDER_LOCAL, PROVIDER_AZURE_OPENAI, PROVIDER_ANTHROPIC };

struct policy;   /* routing/policy.h */
struct localtok; /* gateway/localtok.h */

/* What quotas do while Redis is unreachable (gateway/quota.c). */
enum quota_on_redis_error { QUOTA_FAIL_OPEN, QUOTA_FAIL_CLOSED };
enum quota_abandoned { QUOTA_ABANDONED_FINISH, QUOTA_ABANDONED_CANCEL };

/* One entry of "providers". */
struct provider_conf {
    char *name; /* the key in "providers" */
    enum provider_kind kind;
    char *base_url;    /* "http(s)://host[:port][/path]", trailing '/' stripped */
    char *api_key_env; /* environment variable holding the key, or NULL */
    char *api_key;     /* its value read at load time, or NULL if unset; never log it */
    unsigned connect_timeout_ms, first_byte_timeout_ms, idle_timeout_ms, total_timeout_ms;
    unsigned max_connections; /* concurrent upstream connections */
    char *forward_headers;    /* "name, prefix-*, ..." client headers passed upstream, or NULL */
    char *unix_socket;        /* connect through this unix socket instead of TCP, or NULL */
    /* kind "local": how the supervisor runs llmgate-engine */
    bool autostart;      /* start the engine as a child and restart it when it dies */
    char *model_dir;     /* Hugging Face model directory (required with autostart) */
    char *engine_bin;    /* engine binary; NULL = llmgate-engine next to llmgate */
    char *served_model;  /* the engine's --model-name; NULL = the model dir's basename */
    char *chat_template; /* --chat-template override, or NULL */
    unsigned engine_threads, kv_blocks, max_batch_tokens; /* 0 = the engine's defaults */
    unsigned max_wait_ms;    /* --max-wait-ms: 429 engine_overloaded bound; 0 = none */
    struct localtok *tok;    /* kind "local" with model_dir: the engine's tokenizer for exact
                                prompt counts (localtok_attach, one reference), or NULL */
    char *api_version;       /* kind "azure_openai": the api-version query parameter */
    char *anthropic_version; /* kind "anthropic": the anthropic-version header */
};

/* One entry of "models": a public model name mapped to a provider's model. */
struct model_conf {
    char *name;                              /* public name clients send */
    char *provider_name;                     /* key in "providers" */
    char *model;                             /* upstream model name (defaults to name) */
    const struct provider_conf *provider;    /* resolved; points into config->providers */
    unsigned price_prompt, price_completion; /* micro-USD per 1000 tokens; 0 = no price */
};

struct config {
    _Atomic int refs;
    char *path; /* file name the snapshot came from */

    char *listen_address;
    unsigned port;
    unsigned backlog;
    unsigned workers; /* 0 = one per online CPU */

    size_t max_header_bytes;
    size_t max_body_bytes;
    unsigned max_connections;
    unsigned read_timeout_ms;  /* whole request (headers + body) must arrive in this time */
    unsigned write_timeout_ms; /* client must drain the response */
    unsigned drain_timeout_ms; /* graceful shutdown bound */

    enum log_level log_level;
    char *access_log; /* "stderr", "stdout", "off" or a file path */

    uint8_t (*api_keys)[32]; /* raw SHA-256 digests of accepted API keys */
    size_t n_api_keys;

    char *redis_address;
    unsigned redis_port;
    char *redis_prefix;        /* every llmgate key starts with this ("llmgate:") */
    unsigned redis_timeout_ms; /* per-command timeout of the async clients */

    /* tenant keys, quotas, metering and the admin API (keys.c, quota.c, usage.c, admin.c) */
    bool redis_keys;           /* look up tenant keys in Redis after the static list */
    unsigned key_cache_ttl_ms; /* per-worker key cache lifetime */
    int on_redis_error;        /* enum quota_on_redis_error */
    int abandoned; /* enum quota_abandoned: a metered buffered request whose client left */
    unsigned default_max_tokens;   /* completion cap reserved (and sent) when a request has none */
    unsigned quota_lease_ms;       /* a concurrency slot is freed after this even without settle */
    unsigned quota_grant_ms;       /* admission grants: their life; 0 = off (gateway/grant.h) */
    char *usage_spool;             /* local spool file for usage records while Redis is down */
    unsigned usage_stream_maxlen;  /* approximate MAXLEN of the usage stream */
    unsigned usage_retention_days; /* lifetime of the daily usage aggregates */
    char *admin_token_env;         /* environment variable holding the admin token */
    char *admin_token;             /* its value read at load time, or NULL; never log it */

    /* response cache (gateway/cachestage.c); routes override per policy */
    bool cache_enabled;           /* use the Redis response cache at all */
    unsigned cache_default_ttl_s; /* entry lifetime when the route sets none */
    size_t cache_max_entry_bytes; /* larger answers are not stored */
    unsigned cache_max_wait_ms;   /* single flight: bound on waiting for an identical request */
    size_t cache_l1_bytes;        /* per-worker in-process cache of hot entries (0 = off) */
    unsigned cache_l1_ttl_ms;     /* how long a worker serves an entry without asking Redis */

    char *policy_dir;      /* routing policy directory, or NULL (the models section only) */
    bool policy_watch;     /* reload when a policy file changes (inotify) */
    struct policy *policy; /* routes compiled for this snapshot (one reference), or NULL */

    struct provider_conf *providers; /* sorted by name */
    size_t n_providers;
    struct model_conf *models; /* sorted by name, n_models >= 1 */
    size_t n_models;
};

/* Reads and validates the file at path. Returns 0 and a snapshot with one reference in
 * *out, or -1 with "file:line:col: message" (or "path: cannot read: ...") in err. */
int config_load(const char *path, struct config **out, char *err, size_t errlen);
/* Same from len bytes of text; filename is used in messages and as config->path. */
int config_parse(const char *text, size_t len, const char *filename, struct config **out, char *err,
                 size_t errlen);
/* Takes another reference (atomic); returns c. */
struct config *config_ref(struct config *c);
/* Drops a reference; frees the snapshot at zero. NULL is fine. */
void config_unref(struct config *c);
/* The model with this public name, or NULL. Points into c; valid while c is referenced. */
const struct model_conf *config_find_model(const struct config *c, const char *name);
/* Writes the markdown reference of every option (name, type, default, range, doc).
 * Returns 0, or -1 on a write error. */
int config_write_reference(FILE *out);

#endif
