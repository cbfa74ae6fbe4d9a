/* Configuration loading: one table of options (name, type, field, default, bounds,
 * validator, doc) drives parsing, defaults, error messages and the reference in
 * docs/CONFIG.md. Sections that are maps of objects (providers, models) have their own
 * small tables run by the same engine. */
#include "gateway/config.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/jsonc.h"
#include "gateway/localtok.h"
#include "routing/policy.h"

_Static_assert(sizeof(enum log_level) == sizeof(int), "enum options are stored as int");
_Static_assert(sizeof(enum provider_kind) == sizeof(int), "enum options are stored as int");

#define MAX_PATH_NAME     256   /* longest dotted option path in messages */
#define MAX_API_KEYS      65536 /* auth.api_keys_sha256 entries */
#define MAX_PROVIDERS     1024
#define MAX_MODELS        65536
#define MAX_TABLE_ROWS    64
#define PROVIDER_NAME_MAX 64
#define MODEL_NAME_MAX    256

/* ------------------------------------------------------------------------- */
/* The option table                                                          */
/* ------------------------------------------------------------------------- */

enum opt_type {
    OPT_BOOL,   /* bool */
    OPT_UINT,   /* unsigned */
    OPT_SIZE,   /* size_t, bytes */
    OPT_MS,     /* unsigned, milliseconds */
    OPT_STRING, /* char *, owned; min/max bound the length in bytes */
    OPT_ENUM,   /* int-sized enum; the value is the index in enum_names */
    OPT_CUSTOM, /* parsed by .parse (arrays, maps of objects) */
};

#define OPT_REQUIRED 1u

struct parse_ctx {
    const struct jsonc_doc *doc;
    char *err;
    size_t errlen;
    struct config *cfg;
    const cJSON **model_provider_items; /* per model (document order): its "provider" value */
};

struct option {
    const char *name; /* path inside the table's object; '.' descends into an object */
    enum opt_type type;
    size_t offset; /* of the field in the table's struct */
    uint64_t def_num;
    const char *def_str;
    uint64_t min, max;
    const char *const *enum_names; /* NULL-terminated */
    /* Called after the value is stored; may normalize it. Returns 0 or -1 with ctx->err. */
    int (*validate)(struct parse_ctx *ctx, const cJSON *item, const char *name, void *field);
    int (*parse)(struct parse_ctx *ctx, const cJSON *item, const char *name); /* OPT_CUSTOM */
    unsigned flags;
    const char *doc;
    /* For the reference only. */
    const char *type_doc, *def_doc, *range_doc;
    const struct option *sub; /* rows of each entry of a map section */
    size_t n_sub;
};

static const char *const log_level_names[] = {"debug", "info", "warn", "error", NULL};
static const char *const provider_kind_names[] = {"openai", "local", "azure_openai", "anthropic",
                                                  NULL};
static const char *const on_redis_error_names[] = {"fail_open", "fail_closed", NULL};
static const char *const abandoned_names[] = {"finish", "cancel", NULL};

static int validate_address(struct parse_ctx *ctx, const cJSON *item, const char *name,
                            void *field);
static int validate_access_log(struct parse_ctx *ctx, const cJSON *item, const char *name,
                               void *field);
static int validate_base_url(struct parse_ctx *ctx, const cJSON *item, const char *name,
                             void *field);
static int validate_env_name(struct parse_ctx *ctx, const cJSON *item, const char *name,
                             void *field);
static int validate_header_list(struct parse_ctx *ctx, const cJSON *item, const char *name,
                                void *field);
static int parse_api_keys(struct parse_ctx *ctx, const cJSON *item, const char *name);
static int parse_providers(struct parse_ctx *ctx, const cJSON *item, const char *name);
static int parse_models(struct parse_ctx *ctx, const cJSON *item, const char *name);

#define C(f) offsetof(struct config, f)
#define P(f) offsetof(struct provider_conf, f)
#define M(f) offsetof(struct model_conf, f)

/* Row constructors, so that each option reads as one line of the table:
 * name, field, default, min, max, [validator,] doc. Strings bound their length. */
#define ROW_UINT(n, off, def, lo, hi, d)                                                           \
    {                                                                                              \
        .name = n, .type = OPT_UINT, .offset = off, .def_num = def, .min = lo, .max = hi, .doc = d \
    }
#define ROW_MS(n, off, def, lo, hi, d)                                                             \
    {                                                                                              \
        .name = n, .type = OPT_MS, .offset = off, .def_num = def, .min = lo, .max = hi, .doc = d   \
    }
#define ROW_SIZE(n, off, def, lo, hi, d)                                                           \
    {                                                                                              \
        .name = n, .type = OPT_SIZE, .offset = off, .def_num = def, .min = lo, .max = hi, .doc = d \
    }
#define ROW_STRING(n, off, def, lo, hi, fn, fl, d)                                                 \
    {                                                                                              \
        .name = n, .type = OPT_STRING, .offset = off, .def_str = def, .min = lo, .max = hi,        \
        .validate = fn, .flags = fl, .doc = d                                                      \
    }
#define ROW_ENUM(n, off, def, names, d)                                                            \
    {                                                                                              \
        .name = n, .type = OPT_ENUM, .offset = off, .def_num = def, .enum_names = names, .doc = d  \
    }

static const struct option provider_options[] = {
    ROW_ENUM("kind", P(kind), PROVIDER_OPENAI, provider_kind_names, "API dialect of the upstream"),
    ROW_STRING("base_url", P(base_url), NULL, 1, 2048, validate_base_url, OPT_REQUIRED,
               "http:// or https:// URL the API paths are appended to (trailing '/' removed)"),
    ROW_STRING("api_key_env", P(api_key_env), NULL, 1, 128, validate_env_name, 0,
               "environment variable holding the upstream API key, read at load time"),
    ROW_MS("connect_timeout_ms", P(connect_timeout_ms), 2000, 1, 600000, "TCP/TLS connect timeout"),
    ROW_MS("first_byte_timeout_ms", P(first_byte_timeout_ms), 60000, 1, 3600000,
           "time from sending the request to the first response byte"),
    ROW_MS("idle_timeout_ms", P(idle_timeout_ms), 30000, 1, 3600000,
           "longest silence while a response streams"),
    ROW_MS("total_timeout_ms", P(total_timeout_ms), 600000, 1, 86400000,
           "bound on one whole upstream exchange"),
    ROW_UINT("max_connections", P(max_connections), 256, 1, 100000,
             "concurrent connections to this provider per process"),
    ROW_STRING("forward_headers", P(forward_headers), NULL, 1, 1024, validate_header_list, 0,
               "comma-separated client request headers passed upstream; `prefix-*` matches a "
               "prefix (hop-by-hop, auth and framing headers are refused)"),
    ROW_STRING("socket", P(unix_socket), NULL, 1, 107, NULL, 0,
               "unix socket path to connect through instead of TCP (required for `local`)"),
    {.name = "autostart",
     .type = OPT_BOOL,
     .offset = P(autostart),
     .def_num = 1,
     .doc = "`local`: start llmgate-engine as a supervised child (restarted with backoff)"},
    ROW_STRING("model_dir", P(model_dir), NULL, 1, 4096, NULL, 0,
               "`local`: the engine's Hugging Face model directory (required with autostart); "
               "when set, quotas count prompt tokens exactly with its tokenizer instead of "
               "estimating, so set it for an engine the gateway does not start too"),
    ROW_STRING("engine_bin", P(engine_bin), NULL, 1, 4096, NULL, 0,
               "`local`: engine binary (default: llmgate-engine next to llmgate)"),
    ROW_STRING("served_model", P(served_model), NULL, 1, 256, NULL, 0,
               "`local`: model name the engine serves (default: the model directory's basename)"),
    ROW_STRING(
        "chat_template", P(chat_template), NULL, 1, 32, NULL, 0,
        "`local`: chat template override (chatml, qwen2.5, llama3, llama3.1, llama2, zephyr)"),
    ROW_UINT("threads", P(engine_threads), 0, 0, 1024, "`local`: engine CPU threads (0 = cores)"),
    ROW_UINT("kv_blocks", P(kv_blocks), 0, 0, 100000000,
             "`local`: engine KV cache blocks (0 = default)"),
    ROW_UINT("max_batch_tokens", P(max_batch_tokens), 0, 0, 1048576,
             "`local`: tokens per engine step (0 = default)"),
    ROW_MS(
        "max_wait_ms", P(max_wait_ms), 0, 0, 3600000,
        "`local`: the engine answers 429 engine_overloaded above this predicted wait (0 = never)"),
    ROW_STRING("api_version", P(api_version), "2024-10-21", 1, 32, NULL, 0,
               "`azure_openai`: the `api-version` query parameter (the target model names the "
               "deployment)"),
    ROW_STRING("anthropic_version", P(anthropic_version), "2023-06-01", 1, 32, NULL, 0,
               "`anthropic`: the `anthropic-version` header"),
};

static const struct option model_options[] = {
    ROW_STRING("provider", M(provider_name), NULL, 1, PROVIDER_NAME_MAX, NULL, OPT_REQUIRED,
               "name of an entry in `providers` serving this model"),
    {.name = "model",
     .type = OPT_STRING,
     .offset = M(model),
     .min = 1,
     .max = MODEL_NAME_MAX,
     .def_doc = "the public name",
     .doc = "model name sent upstream"},
    ROW_UINT("price_prompt", M(price_prompt), 0, 0, 100000000,
             "prompt price in micro-USD per 1000 tokens, for usage records (0 = none)"),
    ROW_UINT("price_completion", M(price_completion), 0, 0, 100000000,
             "completion price in micro-USD per 1000 tokens, for usage records (0 = none)"),
};

static const struct option config_options[] = {
    ROW_STRING("listen.address", C(listen_address), "127.0.0.1", 1, 255, validate_address, 0,
               "address the HTTP listener binds"),
    ROW_UINT("listen.port", C(port), 8080, 1, 65535, "TCP port of the HTTP listener"),
    ROW_UINT("listen.backlog", C(backlog), 1024, 1, 65535, "listen(2) backlog"),
    ROW_UINT("workers", C(workers), 0, 0, 1024, "worker threads; 0 = one per online CPU"),
    ROW_SIZE("limits.max_header_bytes", C(max_header_bytes), 16384, 1024, 1048576,
             "largest request line + headers"),
    ROW_SIZE("limits.max_body_bytes", C(max_body_bytes), 4194304, 1024, 1073741824,
             "largest request body; larger requests get 413"),
    ROW_UINT("limits.max_connections", C(max_connections), 10000, 1, 1000000,
             "open client connections per process"),
    ROW_MS("limits.read_timeout_ms", C(read_timeout_ms), 30000, 100, 3600000,
           "the whole request (headers + body) must arrive within this time (slowloris)"),
    ROW_MS("limits.write_timeout_ms", C(write_timeout_ms), 60000, 100, 3600000,
           "a client must keep draining the response within this time"),
    ROW_MS("limits.drain_timeout_ms", C(drain_timeout_ms), 30000, 0, 600000,
           "graceful shutdown waits at most this long for in-flight requests"),
    ROW_ENUM("log.level", C(log_level), LOG_INFO, log_level_names, "minimum level of log lines"),
    ROW_STRING("log.access_log", C(access_log), "stderr", 1, 4096, validate_access_log, 0,
               "`stderr`, `stdout`, `off`, or a file path to append access lines to"),
    {.name = "auth.api_keys_sha256",
     .type = OPT_CUSTOM,
     .parse = parse_api_keys,
     .type_doc = "array of strings",
     .def_doc = "`[]`",
     .range_doc = "each 64 lowercase hex chars; at most 65536",
     .doc = "SHA-256 (hex) of each accepted client API key; may be empty"},
    ROW_STRING("redis.address", C(redis_address), "127.0.0.1", 1, 255, validate_address, 0,
               "Redis host name or address"),
    ROW_UINT("redis.port", C(redis_port), 6379, 1, 65535, "Redis TCP port"),
    ROW_STRING("redis.prefix", C(redis_prefix), "llmgate:", 0, 64, NULL, 0,
               "prefix of every key llmgate writes (keys, quotas, usage)"),
    ROW_MS("redis.command_timeout_ms", C(redis_timeout_ms), 1000, 10, 60000,
           "a Redis command that takes longer drops the connection (Redis counts as down)"),
    {.name = "auth.redis_keys",
     .type = OPT_BOOL,
     .offset = C(redis_keys),
     .def_num = 0,
     .doc = "accept tenant keys stored in Redis (checked after `api_keys_sha256`), with quotas "
            "and usage metering"},
    ROW_MS("auth.key_cache_ttl_ms", C(key_cache_ttl_ms), 1000, 0, 60000,
           "how long a worker trusts a key it read from Redis (revocation also arrives by "
           "pub/sub)"),
    ROW_ENUM("quota.on_redis_error", C(on_redis_error), QUOTA_FAIL_OPEN, on_redis_error_names,
             "Redis unreachable: `fail_open` enforces a local per-worker limiter, `fail_closed` "
             "answers 503"),
    ROW_ENUM("quota.abandoned", C(abandoned), QUOTA_ABANDONED_FINISH, abandoned_names,
             "a request with a tenant key whose client leaves, buffered or streamed: `finish` lets "
             "the upstream answer for nobody (bounded by the reservation and the provider's "
             "timeouts) and charges its usage; `cancel` stops it and charges the prompt, plus one "
             "token per content chunk a stream relayed"),
    ROW_UINT("quota.default_max_tokens", C(default_max_tokens), 4096, 1, 16777216,
             "completion tokens reserved, and sent upstream as `max_tokens`, when a request "
             "sets none (a key's `max_tokens` overrides)"),
    ROW_MS("quota.lease_ms", C(quota_lease_ms), 900000, 1000, 86400000,
           "a concurrency slot whose request never settled is freed after this"),
    ROW_MS("quota.grant_ms", C(quota_grant_ms), 0, 0, 10000,
           "0 reserves every request on Redis; above 0, a worker whose key sees steady traffic "
           "takes up to this long's worth of its demand (at most 1/8 of a limit) from Redis at "
           "once and admits from it without a round trip, giving back what is left after this "
           "long (not for keys with a concurrency limit; see docs/DESIGN.md, admission grants)"),
    ROW_STRING("usage.spool_path", C(usage_spool), "llmgate-usage.spool", 1, 4096, NULL, 0,
               "usage records are appended here while Redis is down and replayed when it "
               "returns (one file per gateway process)"),
    ROW_UINT("usage.stream_maxlen", C(usage_stream_maxlen), 1000000, 1000, 1000000000,
             "approximate length bound of the usage stream (`XADD MAXLEN ~`)"),
    ROW_UINT("usage.retention_days", C(usage_retention_days), 400, 1, 36500,
             "lifetime of the per-tenant daily usage aggregates"),
    ROW_STRING("admin.token_env", C(admin_token_env), "LLMGATE_ADMIN_TOKEN", 1, 128,
               validate_env_name, 0,
               "environment variable holding the admin API token (unset: admin API off)"),
    {.name = "cache.enabled",
     .type = OPT_BOOL,
     .offset = C(cache_enabled),
     .def_num = 1,
     .doc = "answer repeated chat/completions requests from the Redis response cache (which "
            "requests are cacheable is the route's `cache` policy; Redis down = bypass)"},
    ROW_UINT("cache.default_ttl_s", C(cache_default_ttl_s), 3600, 1, 31536000,
             "lifetime of a cached answer when the route's `cache.ttl_s` is 0"),
    ROW_SIZE("cache.max_entry_bytes", C(cache_max_entry_bytes), 1048576, 1024, 67108864,
             "answers larger than this are not cached"),
    ROW_MS("cache.max_wait_ms", C(cache_max_wait_ms), 10000, 0, 600000,
           "identical cacheable requests wait at most this long for the one in flight before "
           "going upstream themselves (0 = no single flight)"),
    ROW_SIZE("cache.l1_bytes", C(cache_l1_bytes), 33554432, 0, 17179869184ull,
             "per-worker in-process cache of hot answers in front of Redis, in bytes (0 = off)"),
    ROW_MS("cache.l1_ttl_ms", C(cache_l1_ttl_ms), 1000, 0, 60000,
           "a worker serves an answer from its in-process cache for at most this long after "
           "reading or storing it (never beyond the entry's TTL); the staleness another replica's "
           "refresh can see (0 = in-process cache off)"),
    ROW_STRING("policy.dir", C(policy_dir), NULL, 1, 4096, NULL, 0,
               "directory of routing policy files (`*.json`, see policies/README.md); unset: "
               "only the `models` section routes"),
    {.name = "policy.watch",
     .type = OPT_BOOL,
     .offset = C(policy_watch),
     .def_num = 1,
     .doc = "reload when a file in `policy.dir` changes (inotify), as well as on SIGHUP"},
    {.name = "providers",
     .type = OPT_CUSTOM,
     .parse = parse_providers,
     .type_doc = "object of objects",
     .def_doc = "`{}`",
     .range_doc = "at most 1024 entries",
     .doc = "upstream providers by name (`[A-Za-z0-9._-]`, at most 64 bytes)",
     .sub = provider_options,
     .n_sub = sizeof provider_options / sizeof provider_options[0]},
    {.name = "models",
     .type = OPT_CUSTOM,
     .parse = parse_models,
     .flags = OPT_REQUIRED,
     .type_doc = "object of objects",
     .range_doc = "1 to 65536 entries",
     .doc = "public model names clients may request, each mapped to a provider",
     .sub = model_options,
     .n_sub = sizeof model_options / sizeof model_options[0]},
};

#define N_CONFIG_OPTIONS   (sizeof config_options / sizeof config_options[0])
#define N_PROVIDER_OPTIONS (sizeof provider_options / sizeof provider_options[0])
#define N_MODEL_OPTIONS    (sizeof model_options / sizeof model_options[0])

/* ------------------------------------------------------------------------- */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------- */

static const char *json_type_name(const cJSON *item)
{
    if (cJSON_IsString(item)) return "a string";
    if (cJSON_IsNumber(item)) return "a number";
    if (cJSON_IsBool(item)) return "a boolean";
    if (cJSON_IsNull(item)) return "null";
    if (cJSON_IsArray(item)) return "an array";
    if (cJSON_IsObject(item)) return "an object";
    return "an unknown value";
}

static int errorf(struct parse_ctx *ctx, const cJSON *item, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int errorf(struct parse_ctx *ctx, const cJSON *item, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return jsonc_errorf(ctx->doc, item, ctx->err, ctx->errlen, "%s", msg);
}

static int key_errorf(struct parse_ctx *ctx, const cJSON *item, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int key_errorf(struct parse_ctx *ctx, const cJSON *item, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return jsonc_key_errorf(ctx->doc, item, ctx->err, ctx->errlen, "%s", msg);
}

static int oom(struct parse_ctx *ctx)
{
    snprintf(ctx->err, ctx->errlen, "%s: out of memory", ctx->doc->filename);
    return -1;
}

/* "a.b" from prefix "a" and name "b"; just the non-empty one when the other is empty. */
static void join_path(char *out, size_t n, const char *prefix, const char *name)
{
    if (prefix && prefix[0] && name[0])
        snprintf(out, n, "%s.%s", prefix, name);
    else
        snprintf(out, n, "%s", prefix && prefix[0] ? prefix : name);
}

static bool has_control_or_space(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 32 || *s == 0x7f) return true;
    return false;
}

static void secure_free(char *s)
{
    if (!s) return;
    explicit_bzero(s, strlen(s));
    free(s);
}

/* ------------------------------------------------------------------------- */
/* The table engine                                                          */
/* ------------------------------------------------------------------------- */

static int apply_defaults(const struct option *tab, size_t n, void *base)
{
    for (size_t i = 0; i < n; i++) {
        const struct option *o = &tab[i];
        char *field = (char *)base + o->offset;
        switch (o->type) {
        case OPT_BOOL: *(bool *)field = o->def_num != 0; break;
        case OPT_UINT:
        case OPT_MS: *(unsigned *)field = (unsigned)o->def_num; break;
        case OPT_SIZE: *(size_t *)field = (size_t)o->def_num; break;
        case OPT_ENUM: {
            int v = (int)o->def_num;
            memcpy(field, &v, sizeof v);
            break;
        }
        case OPT_STRING:
            if (o->def_str) {
                char *s = strdup(o->def_str);
                if (!s) return -1;
                free(*(char **)field);
                *(char **)field = s;
            }
            break;
        case OPT_CUSTOM: break;
        }
    }
    return 0;
}

static void free_strings(const struct option *tab, size_t n, void *base)
{
    for (size_t i = 0; i < n; i++) {
        if (tab[i].type != OPT_STRING) continue;
        char **field = (char **)((char *)base + tab[i].offset);
        free(*field);
        *field = NULL;
    }
}

static const char *type_phrase(const struct option *o)
{
    switch (o->type) {
    case OPT_BOOL: return "a boolean";
    case OPT_UINT: return "an integer";
    case OPT_SIZE: return "an integer (bytes)";
    case OPT_MS: return "an integer (milliseconds)";
    case OPT_STRING: return "a string";
    case OPT_ENUM: return "a string";
    case OPT_CUSTOM: return o->type_doc;
    }
    return "?";
}

static int apply_number(struct parse_ctx *ctx, const struct option *o, const cJSON *item,
                        const char *name, char *field)
{
    if (!cJSON_IsNumber(item))
        return errorf(ctx, item, "'%s' must be %s, got %s", name, type_phrase(o),
                      json_type_name(item));
    double v = item->valuedouble;
    if (!isfinite(v) || v != floor(v))
        return errorf(ctx, item, "'%s' must be an integer between %llu and %llu", name,
                      (unsigned long long)o->min, (unsigned long long)o->max);
    if (v < (double)o->min || v > (double)o->max)
        return errorf(ctx, item, "'%s' must be between %llu and %llu, got %.0f", name,
                      (unsigned long long)o->min, (unsigned long long)o->max, v);
    if (o->type == OPT_SIZE)
        *(size_t *)field = (size_t)v;
    else
        *(unsigned *)field = (unsigned)v;
    return 0;
}

static int apply_enum(struct parse_ctx *ctx, const struct option *o, const cJSON *item,
                      const char *name, char *field)
{
    if (cJSON_IsString(item)) {
        for (int i = 0; o->enum_names[i]; i++) {
            if (strcmp(item->valuestring, o->enum_names[i]) == 0) {
                memcpy(field, &i, sizeof i);
                return 0;
            }
        }
    }
    char choices[256] = "";
    size_t used = 0;
    for (int i = 0; o->enum_names[i] && used < sizeof choices; i++) {
        int n = snprintf(choices + used, sizeof choices - used, "%s\"%s\"", i ? ", " : "",
                         o->enum_names[i]);
        if (n < 0) break;
        used += (size_t)n;
    }
    if (cJSON_IsString(item))
        return errorf(ctx, item, "'%s' must be one of %s, got \"%s\"", name, choices,
                      item->valuestring);
    return errorf(ctx, item, "'%s' must be one of %s, got %s", name, choices, json_type_name(item));
}

static int apply_string(struct parse_ctx *ctx, const struct option *o, const cJSON *item,
                        const char *name, char *field)
{
    if (!cJSON_IsString(item))
        return errorf(ctx, item, "'%s' must be a string, got %s", name, json_type_name(item));
    size_t len = strlen(item->valuestring);
    if (len == 0 && o->min > 0) return errorf(ctx, item, "'%s' must not be empty", name);
    if (len < o->min)
        return errorf(ctx, item, "'%s' must be at least %llu bytes long", name,
                      (unsigned long long)o->min);
    if (len > o->max)
        return errorf(ctx, item, "'%s' must be at most %llu bytes long", name,
                      (unsigned long long)o->max);
    char *s = strdup(item->valuestring);
    if (!s) return oom(ctx);
    free(*(char **)field);
    *(char **)field = s;
    return 0;
}

static int apply_option(struct parse_ctx *ctx, const struct option *o, const cJSON *item,
                        const char *name, void *base)
{
    char *field = (char *)base + o->offset;
    int rc = 0;
    switch (o->type) {
    case OPT_BOOL:
        if (!cJSON_IsBool(item))
            return errorf(ctx, item, "'%s' must be a boolean, got %s", name, json_type_name(item));
        *(bool *)field = cJSON_IsTrue(item);
        break;
    case OPT_UINT:
    case OPT_SIZE:
    case OPT_MS: rc = apply_number(ctx, o, item, name, field); break;
    case OPT_ENUM: rc = apply_enum(ctx, o, item, name, field); break;
    case OPT_STRING: rc = apply_string(ctx, o, item, name, field); break;
    case OPT_CUSTOM: return o->parse(ctx, item, name);
    }
    if (rc == 0 && o->validate) rc = o->validate(ctx, item, name, field);
    return rc;
}

static const struct option *find_option(const struct option *tab, size_t n, const char *path)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(tab[i].name, path) == 0) return &tab[i];
    return NULL;
}

/* Whether some option lives below path (path is then an object of options). */
static bool is_section(const struct option *tab, size_t n, const char *path)
{
    size_t len = strlen(path);
    for (size_t i = 0; i < n; i++)
        if (strncmp(tab[i].name, path, len) == 0 && tab[i].name[len] == '.') return true;
    return false;
}

/* Applies the members of obj to base. prefix is obj's path inside the table ("" at the
 * table's root); where is the table's own path in the file ("" or "providers.x"). */
static int parse_object(struct parse_ctx *ctx, const struct option *tab, size_t n, const cJSON *obj,
                        const char *prefix, const char *where, void *base, bool *seen)
{
    for (const cJSON *m = obj->child; m; m = m->next) {
        char path[MAX_PATH_NAME], full[MAX_PATH_NAME * 2];
        join_path(path, sizeof path, prefix, m->string);
        join_path(full, sizeof full, where, path);
        /* Keys are single path components: "a.b" or "" must not reach into the table. */
        bool plain = m->string[0] && !strchr(m->string, '.');
        const struct option *o = plain ? find_option(tab, n, path) : NULL;
        if (o) {
            seen[o - tab] = true;
            if (apply_option(ctx, o, m, full, base) < 0) return -1;
        } else if (plain && is_section(tab, n, path)) {
            if (!cJSON_IsObject(m))
                return errorf(ctx, m, "'%s' must be an object, got %s", full, json_type_name(m));
            if (parse_object(ctx, tab, n, m, path, where, base, seen) < 0) return -1;
        } else {
            char in[MAX_PATH_NAME * 2];
            join_path(in, sizeof in, where, prefix);
            if (in[0]) return key_errorf(ctx, m, "unknown option '%s' in '%s'", m->string, in);
            return key_errorf(ctx, m, "unknown option '%s'", m->string);
        }
    }
    return 0;
}

/* Parses obj against a whole table: defaults, members, required options. */
static int parse_table(struct parse_ctx *ctx, const struct option *tab, size_t n, const cJSON *obj,
                       const char *where, void *base)
{
    bool seen[MAX_TABLE_ROWS] = {false};
    if (n > MAX_TABLE_ROWS) return errorf(ctx, obj, "internal error: option table too large");
    if (apply_defaults(tab, n, base) < 0) return oom(ctx);
    if (!cJSON_IsObject(obj) && !where[0])
        return errorf(ctx, obj, "the configuration must be an object, got %s", json_type_name(obj));
    if (!cJSON_IsObject(obj))
        return errorf(ctx, obj, "'%s' must be an object, got %s", where, json_type_name(obj));
    if (parse_object(ctx, tab, n, obj, "", where, base, seen) < 0) return -1;
    for (size_t i = 0; i < n; i++) {
        if (!(tab[i].flags & OPT_REQUIRED) || seen[i]) continue;
        if (where[0])
            return errorf(ctx, obj, "missing required option '%s' in '%s'", tab[i].name, where);
        return errorf(ctx, obj, "missing required option '%s'", tab[i].name);
    }
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Validators and section parsers                                            */
/* ------------------------------------------------------------------------- */

static int validate_address(struct parse_ctx *ctx, const cJSON *item, const char *name, void *field)
{
    if (has_control_or_space(*(char **)field))
        return errorf(ctx, item, "'%s' must be a host name or address without spaces", name);
    return 0;
}

static int validate_access_log(struct parse_ctx *ctx, const cJSON *item, const char *name,
                               void *field)
{
    const char *s = *(char **)field;
    for (; *s; s++)
        if ((unsigned char)*s < 32)
            return errorf(ctx, item, "'%s' must not contain control characters", name);
    return 0;
}

static int validate_base_url(struct parse_ctx *ctx, const cJSON *item, const char *name,
                             void *field)
{
    char *url = *(char **)field;
    size_t scheme;
    if (strncmp(url, "http://", 7) == 0)
        scheme = 7;
    else if (strncmp(url, "https://", 8) == 0)
        scheme = 8;
    else
        return errorf(ctx, item, "'%s' must start with http:// or https://", name);
    if (has_control_or_space(url))
        return errorf(ctx, item, "'%s' must not contain spaces or control characters", name);
    size_t len = strlen(url);
    while (len > scheme && url[len - 1] == '/')
        url[--len] = '\0';
    if (len == scheme || url[scheme] == '/') return errorf(ctx, item, "'%s' has no host", name);
    return 0;
}

/* A comma-separated list of header names, each optionally ending in '*'. Headers
 * that carry credentials or framing are never forwarded, so they are refused. */
static int validate_header_list(struct parse_ctx *ctx, const cJSON *item, const char *name,
                                void *field)
{
    static const char *const refused[] = {"authorization",
                                          "host",
                                          "content-length",
                                          "connection",
                                          "transfer-encoding",
                                          "te",
                                          "upgrade",
                                          "keep-alive",
                                          "proxy-authorization",
                                          "api-key",
                                          "x-api-key",
                                          "cookie",
                                          "expect",
                                          "content-type",
                                          "accept",
                                          NULL};
    const char *s = *(char **)field;
    while (*s) {
        while (*s == ' ' || *s == ',')
            s++;
        const char *start = s;
        while (*s && *s != ',' && *s != ' ')
            s++;
        size_t n = (size_t)(s - start);
        if (n == 0) break;
        bool ok = n <= 64;
        for (size_t i = 0; ok && i < n; i++) {
            char c = start[i];
            ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '_' || (c == '*' && i == n - 1 && n > 1);
        }
        if (!ok)
            return errorf(ctx, item,
                          "'%s' must list header names ([A-Za-z0-9_-], optional trailing '*'), "
                          "got '%.*s'",
                          name, (int)n, start);
        for (int i = 0; refused[i]; i++)
            if (strlen(refused[i]) == n && strncasecmp(refused[i], start, n) == 0)
                return errorf(ctx, item, "'%s' may not forward '%.*s'", name, (int)n, start);
    }
    return 0;
}

static int validate_env_name(struct parse_ctx *ctx, const cJSON *item, const char *name,
                             void *field)
{
    const char *s = *(char **)field;
    bool ok = (s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') || s[0] == '_';
    for (const char *p = s; ok && *p; p++)
        ok = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
             *p == '_';
    if (!ok)
        return errorf(ctx, item,
                      "'%s' must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)", name);
    return 0;
}

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static int parse_api_keys(struct parse_ctx *ctx, const cJSON *item, const char *name)
{
    struct config *cfg = ctx->cfg;
    if (!cJSON_IsArray(item))
        return errorf(ctx, item, "'%s' must be an array of strings, got %s", name,
                      json_type_name(item));
    int n = cJSON_GetArraySize(item);
    if (n > MAX_API_KEYS)
        return errorf(ctx, item, "'%s' has %d entries, at most %d are allowed", name, n,
                      MAX_API_KEYS);
    free(cfg->api_keys);
    cfg->api_keys = NULL;
    cfg->n_api_keys = 0;
    if (n == 0) return 0;
    cfg->api_keys = calloc((size_t)n, sizeof *cfg->api_keys);
    if (!cfg->api_keys) return oom(ctx);
    for (const cJSON *e = item->child; e; e = e->next) {
        const char *hex = cJSON_GetStringValue(e);
        bool ok = hex && strlen(hex) == 64;
        for (size_t i = 0; ok && i < 32; i++) {
            int hi = hex_nibble(hex[2 * i]), lo = hex_nibble(hex[2 * i + 1]);
            ok = hi >= 0 && lo >= 0;
            if (ok) cfg->api_keys[cfg->n_api_keys][i] = (uint8_t)(hi << 4 | lo);
        }
        if (!ok)
            return errorf(ctx, e, "'%s[%zu]' must be a SHA-256 digest: 64 lowercase hex characters",
                          name, cfg->n_api_keys);
        cfg->n_api_keys++;
    }
    return 0;
}

static size_t count_members(const cJSON *obj)
{
    size_t n = 0;
    for (const cJSON *c = obj->child; c; c = c->next)
        n++;
    return n;
}

static bool valid_provider_name(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > PROVIDER_NAME_MAX) return false;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static void free_provider(struct provider_conf *p)
{
    free(p->name);
    free_strings(provider_options, N_PROVIDER_OPTIONS, p);
    secure_free(p->api_key);
    p->api_key = NULL;
    localtok_release(p->tok);
    p->tok = NULL;
}

static void free_model(struct model_conf *m)
{
    free(m->name);
    free_strings(model_options, N_MODEL_OPTIONS, m);
}

static int parse_providers(struct parse_ctx *ctx, const cJSON *item, const char *name)
{
    struct config *cfg = ctx->cfg;
    if (!cJSON_IsObject(item))
        return errorf(ctx, item, "'%s' must be an object, got %s", name, json_type_name(item));
    size_t n = count_members(item);
    if (n > MAX_PROVIDERS)
        return errorf(ctx, item, "'%s' has %zu entries, at most %d are allowed", name, n,
                      MAX_PROVIDERS);
    if (n == 0) return 0;
    cfg->providers = calloc(n, sizeof *cfg->providers);
    if (!cfg->providers) return oom(ctx);
    for (const cJSON *e = item->child; e; e = e->next) {
        struct provider_conf *p = &cfg->providers[cfg->n_providers++];
        if (!valid_provider_name(e->string))
            return key_errorf(ctx, e,
                              "provider name '%s' must be 1 to %d characters of [A-Za-z0-9._-]",
                              e->string, PROVIDER_NAME_MAX);
        p->name = strdup(e->string);
        if (!p->name) return oom(ctx);
        char where[MAX_PATH_NAME + 16];
        snprintf(where, sizeof where, "%s.%s", name, p->name);
        if (parse_table(ctx, provider_options, N_PROVIDER_OPTIONS, e, where, p) < 0) return -1;
        if (p->api_key_env) {
            const char *v = getenv(p->api_key_env);
            if (v && !(p->api_key = strdup(v))) return oom(ctx);
        }
        if (p->kind == PROVIDER_LOCAL && !p->unix_socket)
            return errorf(ctx, e, "local provider '%s' needs 'socket'", p->name);
        if (p->kind == PROVIDER_LOCAL && p->autostart && !p->model_dir)
            return errorf(ctx, e, "local provider '%s' with autostart needs 'model_dir'", p->name);
    }
    return 0;
}

static bool valid_model_name(const char *s)
{
    size_t len = strlen(s);
    return len > 0 && len <= MODEL_NAME_MAX && !has_control_or_space(s);
}

static int parse_models(struct parse_ctx *ctx, const cJSON *item, const char *name)
{
    struct config *cfg = ctx->cfg;
    if (!cJSON_IsObject(item))
        return errorf(ctx, item, "'%s' must be an object, got %s", name, json_type_name(item));
    size_t n = count_members(item);
    if (n == 0) return errorf(ctx, item, "'%s' must name at least one model", name);
    if (n > MAX_MODELS)
        return errorf(ctx, item, "'%s' has %zu entries, at most %d are allowed", name, n,
                      MAX_MODELS);
    cfg->models = calloc(n, sizeof *cfg->models);
    ctx->model_provider_items = calloc(n, sizeof *ctx->model_provider_items);
    if (!cfg->models || !ctx->model_provider_items) return oom(ctx);
    for (const cJSON *e = item->child; e; e = e->next) {
        size_t i = cfg->n_models++;
        struct model_conf *m = &cfg->models[i];
        if (!valid_model_name(e->string))
            return key_errorf(ctx, e, "model name '%s' must be 1 to %d bytes without spaces",
                              e->string, MODEL_NAME_MAX);
        m->name = strdup(e->string);
        if (!m->name) return oom(ctx);
        char where[MAX_PATH_NAME + 16];
        snprintf(where, sizeof where, "%s.%s", name, m->name);
        if (parse_table(ctx, model_options, N_MODEL_OPTIONS, e, where, m) < 0) return -1;
        if (!m->model && !(m->model = strdup(m->name))) return oom(ctx);
        ctx->model_provider_items[i] = cJSON_GetObjectItemCaseSensitive(e, "provider");
    }
    return 0;
}

static int provider_cmp(const void *a, const void *b)
{
    return strcmp(((const struct provider_conf *)a)->name, ((const struct provider_conf *)b)->name);
}

static int model_cmp(const void *a, const void *b)
{
    return strcmp(((const struct model_conf *)a)->name, ((const struct model_conf *)b)->name);
}

/* Points every model at its provider (providers are sorted first, so the pointers stay
 * valid), then sorts the models for config_find_model(). */
static int resolve_models(struct parse_ctx *ctx)
{
    struct config *cfg = ctx->cfg;
    if (cfg->n_providers > 1)
        qsort(cfg->providers, cfg->n_providers, sizeof *cfg->providers, provider_cmp);
    for (size_t i = 0; i < cfg->n_models; i++) {
        struct model_conf *m = &cfg->models[i];
        struct provider_conf key = {.name = m->provider_name};
        m->provider = cfg->n_providers ? bsearch(&key, cfg->providers, cfg->n_providers, sizeof key,
                                                 provider_cmp)
                                       : NULL;
        if (!m->provider)
            return errorf(ctx, ctx->model_provider_items[i],
                          "model '%s' uses unknown provider '%s'", m->name, m->provider_name);
    }
    if (cfg->n_models > 1) qsort(cfg->models, cfg->n_models, sizeof *cfg->models, model_cmp);
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Public API                                                                */
/* ------------------------------------------------------------------------- */

static void config_free(struct config *c)
{
    if (!c) return;
    free_strings(config_options, N_CONFIG_OPTIONS, c);
    for (size_t i = 0; i < c->n_providers; i++)
        free_provider(&c->providers[i]);
    free(c->providers);
    for (size_t i = 0; i < c->n_models; i++)
        free_model(&c->models[i]);
    free(c->models);
    free(c->api_keys);
    policy_unref(c->policy);
    secure_free(c->admin_token);
    free(c->path);
    free(c);
}

static int config_from_doc(const struct jsonc_doc *doc, struct config **out, char *err,
                           size_t errlen)
{
    struct parse_ctx ctx = {.doc = doc, .err = err, .errlen = errlen};
    struct config *cfg = calloc(1, sizeof *cfg);
    if (!cfg) {
        snprintf(err, errlen, "%s: out of memory", doc->filename);
        return -1;
    }
    atomic_init(&cfg->refs, 1);
    ctx.cfg = cfg;
    if (!(cfg->path = strdup(doc->filename))) {
        oom(&ctx);
        goto fail;
    }
    if (parse_table(&ctx, config_options, N_CONFIG_OPTIONS, doc->root, "", cfg) < 0) goto fail;
    if (resolve_models(&ctx) < 0) goto fail;
    if (cfg->admin_token_env) {
        const char *v = getenv(cfg->admin_token_env);
        if (v && v[0] && !(cfg->admin_token = strdup(v))) {
            oom(&ctx);
            goto fail;
        }
    }
    free(ctx.model_provider_items);
    *out = cfg;
    return 0;

fail:
    free(ctx.model_provider_items);
    config_free(cfg);
    return -1;
}

int config_parse(const char *text, size_t len, const char *filename, struct config **out, char *err,
                 size_t errlen)
{
    struct jsonc_doc *doc;
    *out = NULL;
    if (jsonc_parse(text, len, filename, &doc, err, errlen) < 0) return -1;
    int rc = config_from_doc(doc, out, err, errlen);
    jsonc_free(doc);
    return rc;
}

int config_load(const char *path, struct config **out, char *err, size_t errlen)
{
    struct jsonc_doc *doc;
    *out = NULL;
    if (jsonc_load_file(path, &doc, err, errlen) < 0) return -1;
    int rc = config_from_doc(doc, out, err, errlen);
    jsonc_free(doc);
    return rc;
}

struct config *config_ref(struct config *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void config_unref(struct config *c)
{
    if (!c) return;
    /* acq_rel: the last holder must see every other holder's reads finished. */
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) config_free(c);
}

const struct model_conf *config_find_model(const struct config *c, const char *name)
{
    if (!c || !name || c->n_models == 0) return NULL;
    struct model_conf key = {.name = (char *)name};
    return bsearch(&key, c->models, c->n_models, sizeof key, model_cmp);
}

/* ------------------------------------------------------------------------- */
/* Reference                                                                 */
/* ------------------------------------------------------------------------- */

static const char *ref_type(const struct option *o)
{
    switch (o->type) {
    case OPT_BOOL: return "boolean";
    case OPT_UINT: return "integer";
    case OPT_SIZE: return "integer (bytes)";
    case OPT_MS: return "integer (ms)";
    case OPT_STRING: return "string";
    case OPT_ENUM: return "enum";
    case OPT_CUSTOM: return o->type_doc;
    }
    return "?";
}

static int write_rows(FILE *out, const struct option *tab, size_t n, const char *prefix)
{
    for (size_t i = 0; i < n; i++) {
        const struct option *o = &tab[i];
        char def[128], range[256];
        if (o->def_doc)
            snprintf(def, sizeof def, "%s", o->def_doc);
        else if (o->flags & OPT_REQUIRED)
            snprintf(def, sizeof def, "*required*");
        else if (o->type == OPT_STRING && o->def_str)
            snprintf(def, sizeof def, "`\"%s\"`", o->def_str);
        else if (o->type == OPT_STRING)
            snprintf(def, sizeof def, "unset");
        else if (o->type == OPT_ENUM)
            snprintf(def, sizeof def, "`\"%s\"`", o->enum_names[o->def_num]);
        else if (o->type == OPT_BOOL)
            snprintf(def, sizeof def, "`%s`", o->def_num ? "true" : "false");
        else
            snprintf(def, sizeof def, "`%llu`", (unsigned long long)o->def_num);

        if (o->range_doc) {
            snprintf(range, sizeof range, "%s", o->range_doc);
        } else if (o->type == OPT_STRING) {
            snprintf(range, sizeof range, "%llu to %llu bytes", (unsigned long long)o->min,
                     (unsigned long long)o->max);
        } else if (o->type == OPT_ENUM) {
            size_t used = 0;
            range[0] = '\0';
            for (int k = 0; o->enum_names[k] && used < sizeof range; k++) {
                int w = snprintf(range + used, sizeof range - used, "%s`%s`", k ? ", " : "",
                                 o->enum_names[k]);
                if (w < 0) break;
                used += (size_t)w;
            }
        } else if (o->type == OPT_BOOL) {
            range[0] = '\0';
        } else {
            snprintf(range, sizeof range, "%llu to %llu", (unsigned long long)o->min,
                     (unsigned long long)o->max);
        }
        if (fprintf(out, "| `%s%s` | %s | %s | %s | %s |\n", prefix, o->name, ref_type(o), def,
                    range, o->doc) < 0)
            return -1;
        if (o->sub) {
            char sub_prefix[MAX_PATH_NAME];
            snprintf(sub_prefix, sizeof sub_prefix, "%s%s.<name>.", prefix, o->name);
            if (write_rows(out, o->sub, o->n_sub, sub_prefix) < 0) return -1;
        }
    }
    return 0;
}

int config_write_reference(FILE *out)
{
    fputs("# llmgate configuration reference\n"
          "\n"
          "<!-- Generated by config_write_reference() from the option table in\n"
          "     gateway/config.c; edit the table, not this file. -->\n"
          "\n"
          "`conf/llmgate.conf` is JSON with `//` and `/* */` comments. Options whose\n"
          "default reads *required* must be given. Unknown options, duplicate keys, wrong types\n"
          "and out-of-range values are errors reported as `file:line:col: message`\n"
          "(columns count bytes). Sizes are bytes, times are milliseconds; all are integers.\n"
          "`<name>` stands for each key of a map section. Provider API keys are never read\n"
          "from the file: `api_key_env` names the environment variable that holds one.\n"
          "\n"
          "| option | type | default | range | description |\n"
          "|---|---|---|---|---|\n",
          out);
    if (write_rows(out, config_options, N_CONFIG_OPTIONS, "") < 0) return -1;
    if (fflush(out) != 0 || ferror(out)) return -1;
    return 0;
}
