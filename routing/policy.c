/* Policy files -> snapshot. A small table engine (rows of name, type, field,
 * default, bounds, doc, as gateway/config.c does for the daemon config) parses
 * each route and each target; custom rows handle match, target lists and the
 * failure list. Errors carry file:line:col from common/jsonc. */
#include "routing/policy.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/jsonc.h"
#include "common/util.h"
#include "gateway/config.h"
#include "routing/targets.h"

#define MAX_ROUTES       100000
#define MAX_TARGETS      16 /* per list */
#define MAX_MODEL_NAMES  256
#define MAX_POLICY_FILES 1024
#define MAX_PATH         256

static _Atomic uint64_t next_generation = 1;

static const char *const failure_names[PF_COUNT + 1] = {
    "rate_limited",  "overloaded", "server_error", "timeout", "context_length",
    "connect_error", NULL};
static const char *const sticky_names[] = {"none", "tenant", "header", NULL};
static const char *const long_input_names[] = {"reject", "truncate", "chunk", "fallback", NULL};
static const char *const cache_mode_names[] = {"auto", "always", "never", NULL};
static const char *const cache_scope_names[] = {"tenant", "shared", NULL};

const char *policy_failure_name(enum policy_failure f)
{
    return f < PF_COUNT ? failure_names[f] : "unknown";
}

/* ------------------------------------------------------------------------- */
/* The row table                                                             */
/* ------------------------------------------------------------------------- */

enum row_type { R_UINT, R_MS, R_BOOL, R_STRING, R_ENUM, R_RATIO, R_CUSTOM };

struct pctx {
    const struct jsonc_doc *doc;
    const struct config *cfg;
    char *err;
    size_t errlen;
};

struct row {
    const char *name; /* '.' descends into an object */
    enum row_type type;
    size_t offset;
    unsigned def, min, max; /* R_RATIO: def/min/max in units of 1/scale */
    unsigned scale;         /* R_RATIO: 100 (percent) or 1000 (permille) */
    const char *const *enum_names;
    int (*parse)(struct pctx *ctx, const cJSON *item, const char *path, void *base);
    bool required;
    const char *type_doc, *def_doc, *doc;
};

#define RT(f) offsetof(struct policy_route, f)
#define TG(f) offsetof(struct policy_target, f)

static int parse_match(struct pctx *ctx, const cJSON *item, const char *path, void *base);
static int parse_targets(struct pctx *ctx, const cJSON *item, const char *path, void *base);
static int parse_fallback(struct pctx *ctx, const cJSON *item, const char *path, void *base);
static int parse_fallback_on(struct pctx *ctx, const cJSON *item, const char *path, void *base);

#define DEFAULT_FALLBACK_ON                                                                        \
    (PF_BIT(PF_RATE_LIMITED) | PF_BIT(PF_OVERLOADED) | PF_BIT(PF_SERVER_ERROR) |                   \
     PF_BIT(PF_TIMEOUT) | PF_BIT(PF_CONNECT_ERROR))

static const struct row route_rows[] = {
    {.name = "name",
     .type = R_STRING,
     .offset = RT(name),
     .min = 1,
     .max = 128,
     .def_doc = "`<file>#<index>`",
     .doc = "name shown in logs and /admin/v1/policy"},
    {.name = "match",
     .type = R_CUSTOM,
     .parse = parse_match,
     .type_doc = "object",
     .def_doc = "any request",
     .doc = "`model` (a name, a glob, or an array of names and globs: aliases), `tenant`, "
            "`header` (`{\"name\": h, \"value\": v}`, value optional); every given field must "
            "match"},
    {.name = "targets",
     .type = R_CUSTOM,
     .parse = parse_targets,
     .required = true,
     .type_doc = "array of targets",
     .doc = "`[{\"provider\": p, \"model\": m, \"weight\": w}]`: one is chosen per request by "
            "weight; `model` defaults to the requested name"},
    {.name = "sticky.by",
     .type = R_ENUM,
     .offset = RT(sticky),
     .def = STICKY_NONE,
     .enum_names = sticky_names,
     .doc = "keep a tenant or a header value on the same weighted target"},
    {.name = "sticky.header",
     .type = R_STRING,
     .offset = RT(sticky_header),
     .min = 1,
     .max = 64,
     .doc = "the header `sticky.by: \"header\"` hashes"},
    {.name = "fallback",
     .type = R_CUSTOM,
     .parse = parse_fallback,
     .type_doc = "array of targets",
     .def_doc = "`[]`",
     .doc = "targets tried in order when the chosen one fails"},
    {.name = "fallback_on",
     .type = R_CUSTOM,
     .parse = parse_fallback_on,
     .type_doc = "array of strings",
     .def_doc = "all but `context_length`",
     .doc = "failures that move on: `rate_limited`, `overloaded`, `server_error`, `timeout`, "
            "`context_length`, `connect_error`; others reach the client as they are"},
    {.name = "timeouts.connect_ms",
     .type = R_MS,
     .offset = RT(connect_ms),
     .max = 600000,
     .def_doc = "the provider's",
     .doc = "TCP/TLS connect timeout (0 = the provider's)"},
    {.name = "timeouts.first_token_ms",
     .type = R_MS,
     .offset = RT(first_token_ms),
     .max = 3600000,
     .def_doc = "the provider's",
     .doc = "request sent to first token (streams: first event; others: response head)"},
    {.name = "timeouts.idle_ms",
     .type = R_MS,
     .offset = RT(idle_ms),
     .max = 3600000,
     .def_doc = "the provider's",
     .doc = "longest silence between chunks"},
    {.name = "timeouts.total_ms",
     .type = R_MS,
     .offset = RT(total_ms),
     .max = 86400000,
     .def_doc = "the provider's",
     .doc = "bound on one upstream attempt"},
    {.name = "retry.attempts",
     .type = R_UINT,
     .offset = RT(retry_attempts),
     .def = 0,
     .max = 10,
     .doc = "further attempts on the same target before moving on"},
    {.name = "retry.backoff_ms",
     .type = R_MS,
     .offset = RT(backoff_ms),
     .def = 100,
     .min = 1,
     .max = 60000,
     .doc = "first backoff; doubles per retry, with full jitter"},
    {.name = "retry.backoff_max_ms",
     .type = R_MS,
     .offset = RT(backoff_max_ms),
     .def = 2000,
     .min = 1,
     .max = 600000,
     .doc = "largest backoff"},
    {.name = "retry.respect_retry_after_max_ms",
     .type = R_MS,
     .offset = RT(retry_after_max_ms),
     .def = 2000,
     .max = 600000,
     .doc = "a 429 whose Retry-After is at most this is retried after waiting it out; a longer one "
            "moves to the next target at once and cools the target down for the advertised time"},
    {.name = "retry.budget_ratio",
     .type = R_RATIO,
     .offset = RT(budget_permille),
     .def = 200,
     .max = 1000,
     .scale = 1000,
     .doc = "retries per request allowed per provider (plus a reserve of 10)"},
    {.name = "breaker.failures",
     .type = R_UINT,
     .offset = RT(breaker.failures),
     .def = 5,
     .max = 100000,
     .doc = "consecutive failures that open the breaker (0 = off)"},
    {.name = "breaker.error_ratio",
     .type = R_RATIO,
     .offset = RT(breaker.error_ratio_pct),
     .def = 50,
     .max = 100,
     .scale = 100,
     .doc = "failure ratio over `window_ms` that opens the breaker (0 = off)"},
    {.name = "breaker.window_ms",
     .type = R_MS,
     .offset = RT(breaker.window_ms),
     .def = 10000,
     .min = 100,
     .max = 3600000,
     .doc = "error-ratio window"},
    {.name = "breaker.min_requests",
     .type = R_UINT,
     .offset = RT(breaker.min_requests),
     .def = 20,
     .min = 1,
     .max = 1000000,
     .doc = "requests in the window before the ratio counts"},
    {.name = "breaker.open_ms",
     .type = R_MS,
     .offset = RT(breaker.open_ms),
     .def = 10000,
     .min = 1,
     .max = 3600000,
     .doc = "time open (failing fast) before probing"},
    {.name = "breaker.half_open_probes",
     .type = R_UINT,
     .offset = RT(breaker.half_open_probes),
     .def = 1,
     .min = 1,
     .max = 100,
     .doc = "probes let through half-open; all must succeed"},
    {.name = "cache.ttl_s",
     .type = R_UINT,
     .offset = RT(cache_ttl_s),
     .def = 0,
     .max = 31536000,
     .doc = "response cache lifetime for this route (0 = the config's `cache.default_ttl_s`)"},
    {.name = "cache.mode",
     .type = R_ENUM,
     .offset = RT(cache_mode),
     .def = CACHE_MODE_AUTO,
     .enum_names = cache_mode_names,
     .doc = "`auto` caches deterministic requests (temperature 0 or a seed), `always` every "
            "request, `never` none"},
    {.name = "cache.scope",
     .type = R_ENUM,
     .offset = RT(cache_scope),
     .def = CACHE_SCOPE_TENANT,
     .enum_names = cache_scope_names,
     .doc = "`tenant`: answers are shared only within the tenant; `shared`: across tenants"},
    {.name = "cache.charge_tokens",
     .type = R_BOOL,
     .offset = RT(cache_charge_tokens),
     .def = 0,
     .def_doc = "`false`",
     .doc = "cached answers count against token quotas (they always count as requests)"},
    {.name = "long_input.strategy",
     .type = R_ENUM,
     .offset = RT(long_input),
     .def = LI_REJECT,
     .enum_names = long_input_names,
     .doc = "input longer than the target's context: reject, truncate, chunk, or fall back"},
    {.name = "long_input.chunk_tokens",
     .type = R_UINT,
     .offset = RT(chunk_tokens),
     .def = 2048,
     .min = 16,
     .max = 1048576,
     .doc = "chunk size for `chunk`"},
    {.name = "long_input.overlap_tokens",
     .type = R_UINT,
     .offset = RT(overlap_tokens),
     .def = 128,
     .max = 65536,
     .doc = "overlap between chunks"},
};

static const struct row target_rows[] = {
    {.name = "provider",
     .type = R_STRING,
     .offset = TG(provider_name),
     .min = 1,
     .max = 64,
     .required = true,
     .doc = "a provider of the daemon config"},
    {.name = "model",
     .type = R_STRING,
     .offset = TG(model),
     .min = 1,
     .max = 256,
     .def_doc = "the requested name",
     .doc = "model name sent upstream"},
    {.name = "weight",
     .type = R_UINT,
     .offset = TG(weight),
     .def = 1,
     .max = 1000000,
     .doc = "share of traffic among the weighted targets (ignored in `fallback`)"},
};

static const char *json_type(const cJSON *item)
{
    if (!item) return "nothing";
    if (cJSON_IsNull(item)) return "null";
    if (cJSON_IsBool(item)) return "a boolean";
    if (cJSON_IsNumber(item)) return "a number";
    if (cJSON_IsString(item)) return "a string";
    if (cJSON_IsArray(item)) return "an array";
    return "an object";
}

#define errorf(ctx, item, ...)                                                                     \
    jsonc_errorf((ctx)->doc, item, (ctx)->err, (ctx)->errlen, __VA_ARGS__)
#define key_errorf(ctx, item, ...)                                                                 \
    jsonc_key_errorf((ctx)->doc, item, (ctx)->err, (ctx)->errlen, __VA_ARGS__)

static int oom(struct pctx *ctx)
{
    snprintf(ctx->err, ctx->errlen, "%s: out of memory", ctx->doc->filename);
    return -1;
}

static void join(char *out, size_t n, const char *a, const char *b)
{
    snprintf(out, n, "%s%s%s", a, a[0] && b[0] ? "." : "", b);
}

static void apply_defaults(const struct row *tab, size_t n, void *base)
{
    for (size_t i = 0; i < n; i++) {
        char *f = (char *)base + tab[i].offset;
        switch (tab[i].type) {
        case R_UINT:
        case R_MS:
        case R_RATIO: *(unsigned *)f = tab[i].def; break;
        case R_BOOL: *(bool *)f = tab[i].def != 0; break;
        case R_ENUM: *(int *)f = (int)tab[i].def; break;
        default: break;
        }
    }
}

static int apply_row(struct pctx *ctx, const struct row *o, const cJSON *item, const char *path,
                     void *base)
{
    char *f = (char *)base + o->offset;
    switch (o->type) {
    case R_CUSTOM: return o->parse(ctx, item, path, base);
    case R_BOOL:
        if (!cJSON_IsBool(item))
            return errorf(ctx, item, "'%s' must be a boolean, got %s", path, json_type(item));
        *(bool *)f = cJSON_IsTrue(item);
        return 0;
    case R_STRING: {
        if (!cJSON_IsString(item))
            return errorf(ctx, item, "'%s' must be a string, got %s", path, json_type(item));
        size_t len = strlen(item->valuestring);
        if (len < o->min || len > o->max)
            return errorf(ctx, item, "'%s' must be %u to %u bytes long", path, o->min, o->max);
        for (const char *p = item->valuestring; *p; p++)
            if ((unsigned char)*p < 32)
                return errorf(ctx, item, "'%s' must not contain control characters", path);
        char *s = strdup(item->valuestring);
        if (!s) return oom(ctx);
        free(*(char **)f);
        *(char **)f = s;
        return 0;
    }
    case R_ENUM: {
        if (cJSON_IsString(item))
            for (int i = 0; o->enum_names[i]; i++)
                if (strcmp(item->valuestring, o->enum_names[i]) == 0) {
                    *(int *)f = i;
                    return 0;
                }
        char choices[256] = "";
        size_t used = 0;
        for (int i = 0; o->enum_names[i] && used < sizeof choices; i++)
            used += (size_t)snprintf(choices + used, sizeof choices - used, "%s\"%s\"",
                                     i ? ", " : "", o->enum_names[i]);
        return errorf(ctx, item, "'%s' must be one of %s", path, choices);
    }
    case R_RATIO: {
        if (!cJSON_IsNumber(item))
            return errorf(ctx, item, "'%s' must be a number between 0 and 1, got %s", path,
                          json_type(item));
        double v = item->valuedouble;
        if (!isfinite(v) || v < 0 || v > (double)o->max / o->scale)
            return errorf(ctx, item, "'%s' must be between 0 and %g", path,
                          (double)o->max / o->scale);
        *(unsigned *)f = (unsigned)lround(v * o->scale);
        return 0;
    }
    case R_UINT:
    case R_MS: {
        if (!cJSON_IsNumber(item))
            return errorf(ctx, item, "'%s' must be an integer%s, got %s", path,
                          o->type == R_MS ? " (milliseconds)" : "", json_type(item));
        double v = item->valuedouble;
        if (!isfinite(v) || v != floor(v) || v < o->min || v > o->max)
            return errorf(ctx, item, "'%s' must be an integer between %u and %u", path, o->min,
                          o->max);
        *(unsigned *)f = (unsigned)v;
        return 0;
    }
    }
    return 0;
}

static bool is_section(const struct row *tab, size_t n, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < n; i++)
        if (strncmp(tab[i].name, name, len) == 0 && tab[i].name[len] == '.') return true;
    return false;
}

/* Applies obj's members; prefix = obj's path inside the table, where = its path in the file. */
static int parse_members(struct pctx *ctx, const struct row *tab, size_t n, const cJSON *obj,
                         const char *prefix, const char *where, void *base, bool *seen)
{
    for (const cJSON *m = obj->child; m; m = m->next) {
        char name[MAX_PATH], path[MAX_PATH * 2];
        join(name, sizeof name, prefix, m->string);
        join(path, sizeof path, where, m->string);
        const struct row *o = NULL;
        if (m->string[0] && !strchr(m->string, '.'))
            for (size_t i = 0; i < n && !o; i++)
                if (strcmp(tab[i].name, name) == 0) o = &tab[i];
        if (o) {
            seen[o - tab] = true;
            if (apply_row(ctx, o, m, path, base) < 0) return -1;
        } else if (m->string[0] && !strchr(m->string, '.') && is_section(tab, n, name)) {
            if (!cJSON_IsObject(m))
                return errorf(ctx, m, "'%s' must be an object, got %s", path, json_type(m));
            if (parse_members(ctx, tab, n, m, name, path, base, seen) < 0) return -1;
        } else {
            return key_errorf(ctx, m, "unknown key '%s' in '%s'", m->string, where);
        }
    }
    return 0;
}

static int parse_rows(struct pctx *ctx, const struct row *tab, size_t n, const cJSON *obj,
                      const char *where, void *base)
{
    bool seen[64] = {false};
    apply_defaults(tab, n, base);
    if (!cJSON_IsObject(obj))
        return errorf(ctx, obj, "'%s' must be an object, got %s", where, json_type(obj));
    if (parse_members(ctx, tab, n, obj, "", where, base, seen) < 0) return -1;
    for (size_t i = 0; i < n; i++)
        if (tab[i].required && !seen[i])
            return errorf(ctx, obj, "'%s' is missing '%s'", where, tab[i].name);
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Custom rows                                                               */
/* ------------------------------------------------------------------------- */

static bool is_glob(const char *s)
{
    return strpbrk(s, "*?[") != NULL;
}

static int add_model_name(struct pctx *ctx, struct policy_route *r, const cJSON *item,
                          const char *path)
{
    if (!cJSON_IsString(item))
        return errorf(ctx, item, "'%s' must be a model name or glob, got %s", path,
                      json_type(item));
    const char *s = item->valuestring;
    size_t len = strlen(s);
    bool ok = len > 0 && len <= 256;
    for (const char *p = s; ok && *p; p++)
        ok = (unsigned char)*p > 32 && *p != 0x7f;
    if (!ok) return errorf(ctx, item, "'%s' must be 1 to 256 bytes without spaces", path);
    if (r->n_models == MAX_MODEL_NAMES)
        return errorf(ctx, item, "'%s' lists more than %d names", path, MAX_MODEL_NAMES);
    char **v = realloc(r->models, (r->n_models + 1) * sizeof *v);
    if (!v) return oom(ctx);
    r->models = v;
    if (!(v[r->n_models] = strdup(s))) return oom(ctx);
    r->n_models++;
    return 0;
}

static int parse_match(struct pctx *ctx, const cJSON *item, const char *path, void *base)
{
    struct policy_route *r = base;
    if (!cJSON_IsObject(item))
        return errorf(ctx, item, "'%s' must be an object, got %s", path, json_type(item));
    for (const cJSON *m = item->child; m; m = m->next) {
        char sub[MAX_PATH * 2];
        join(sub, sizeof sub, path, m->string);
        if (strcmp(m->string, "model") == 0) {
            if (cJSON_IsArray(m)) {
                if (!m->child) return errorf(ctx, m, "'%s' must list at least one name", sub);
                int i = 0;
                for (const cJSON *e = m->child; e; e = e->next, i++) {
                    char el[MAX_PATH * 2 + 16];
                    snprintf(el, sizeof el, "%s[%d]", sub, i);
                    if (add_model_name(ctx, r, e, el) < 0) return -1;
                }
            } else if (add_model_name(ctx, r, m, sub) < 0) {
                return -1;
            }
        } else if (strcmp(m->string, "tenant") == 0) {
            if (!cJSON_IsString(m) || !m->valuestring[0] || strlen(m->valuestring) > 128)
                return errorf(ctx, m, "'%s' must be a tenant name (1 to 128 bytes), got %s", sub,
                              cJSON_IsString(m) ? "a bad string" : json_type(m));
            if (!(r->tenant = strdup(m->valuestring))) return oom(ctx);
        } else if (strcmp(m->string, "header") == 0) {
            if (!cJSON_IsObject(m))
                return errorf(ctx, m, "'%s' must be an object {\"name\", \"value\"}, got %s", sub,
                              json_type(m));
            for (const cJSON *h = m->child; h; h = h->next) {
                char hp[MAX_PATH * 3];
                join(hp, sizeof hp, sub, h->string);
                bool is_name = strcmp(h->string, "name") == 0;
                if (!is_name && strcmp(h->string, "value") != 0)
                    return key_errorf(ctx, h, "unknown key '%s' in '%s'", h->string, sub);
                if (!cJSON_IsString(h) || (is_name && !h->valuestring[0]) ||
                    strlen(h->valuestring) > 256)
                    return errorf(ctx, h, "'%s' must be a%s string of at most 256 bytes", hp,
                                  is_name ? " non-empty" : "");
                char **dst = is_name ? &r->header_name : &r->header_value;
                if (!(*dst = strdup(h->valuestring))) return oom(ctx);
            }
            if (!r->header_name) return errorf(ctx, m, "'%s' is missing 'name'", sub);
        } else {
            return key_errorf(ctx, m, "unknown key '%s' in '%s'", m->string, path);
        }
    }
    return 0;
}

static int parse_target_list(struct pctx *ctx, const cJSON *item, const char *path,
                             struct policy_target **out, size_t *n_out, bool weighted)
{
    if (!cJSON_IsArray(item))
        return errorf(ctx, item, "'%s' must be an array of targets, got %s", path, json_type(item));
    int n = cJSON_GetArraySize(item);
    if (weighted && n == 0) return errorf(ctx, item, "'%s' must name at least one target", path);
    if (n > MAX_TARGETS)
        return errorf(ctx, item, "'%s' has %d targets, at most %d are allowed", path, n,
                      MAX_TARGETS);
    if (n == 0) return 0;
    *out = calloc((size_t)n, sizeof **out);
    if (!*out) return oom(ctx);
    for (const cJSON *e = item->child; e; e = e->next) {
        struct policy_target *t = &(*out)[(*n_out)++];
        char where[MAX_PATH * 2];
        snprintf(where, sizeof where, "%s[%zu]", path, *n_out - 1);
        if (parse_rows(ctx, target_rows, ARRAY_LEN(target_rows), e, where, t) < 0) return -1;
        t->provider = NULL;
        for (size_t i = 0; i < ctx->cfg->n_providers; i++)
            if (strcmp(ctx->cfg->providers[i].name, t->provider_name) == 0)
                t->provider = &ctx->cfg->providers[i];
        if (!t->provider)
            return errorf(ctx, cJSON_GetObjectItemCaseSensitive(e, "provider"),
                          "'%s.provider': unknown provider '%s'", where, t->provider_name);
        if (!weighted && cJSON_GetObjectItemCaseSensitive(e, "weight"))
            return key_errorf(ctx, cJSON_GetObjectItemCaseSensitive(e, "weight"),
                              "'%s.weight': fallback targets are tried in order, not weighted",
                              where);
        /* A target without a model (a glob route passing the name through) shares one
         * state per provider: the hot path never creates states. */
        if (!(t->state = targets_get(t->provider_name, t->model ? t->model : "*"))) return oom(ctx);
    }
    return 0;
}

static int parse_targets(struct pctx *ctx, const cJSON *item, const char *path, void *base)
{
    struct policy_route *r = base;
    if (parse_target_list(ctx, item, path, &r->targets, &r->n_targets, true) < 0) return -1;
    for (size_t i = 0; i < r->n_targets; i++)
        r->total_weight += r->targets[i].weight;
    if (r->total_weight == 0)
        return errorf(ctx, item, "'%s' must have a target with a weight above 0", path);
    return 0;
}

static int parse_fallback(struct pctx *ctx, const cJSON *item, const char *path, void *base)
{
    struct policy_route *r = base;
    return parse_target_list(ctx, item, path, &r->fallback, &r->n_fallback, false);
}

static int parse_fallback_on(struct pctx *ctx, const cJSON *item, const char *path, void *base)
{
    struct policy_route *r = base;
    if (!cJSON_IsArray(item))
        return errorf(ctx, item, "'%s' must be an array of failure names, got %s", path,
                      json_type(item));
    r->fallback_on = 0;
    for (const cJSON *e = item->child; e; e = e->next) {
        int f = -1;
        for (int i = 0; cJSON_IsString(e) && i < PF_COUNT; i++)
            if (strcmp(e->valuestring, failure_names[i]) == 0) f = i;
        if (f < 0)
            return errorf(ctx, e,
                          "'%s' entries must be one of \"rate_limited\", \"overloaded\", "
                          "\"server_error\", \"timeout\", \"context_length\", \"connect_error\"",
                          path);
        r->fallback_on |= PF_BIT(f);
    }
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Building a snapshot                                                       */
/* ------------------------------------------------------------------------- */

static void free_targets(struct policy_target *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(t[i].provider_name);
        free(t[i].model);
    }
    free(t);
}

static void free_route(struct policy_route *r)
{
    free(r->name);
    free(r->origin);
    for (size_t i = 0; i < r->n_models; i++)
        free(r->models[i]);
    free(r->models);
    free(r->tenant);
    free(r->header_name);
    free(r->header_value);
    free(r->sticky_header);
    free_targets(r->targets, r->n_targets);
    free_targets(r->fallback, r->n_fallback);
}

static void policy_free(struct policy *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n_routes; i++)
        free_route(&p->routes[i]);
    free(p->routes);
    for (size_t i = 0; i < p->n_files; i++)
        free(p->files[i]);
    free(p->files);
    free(p->exact);
    free(p->scan);
    free(p->dir);
    free(p);
}

static struct policy_route *new_route(struct policy *p, size_t *cap)
{
    if (p->n_routes == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        struct policy_route *v = realloc(p->routes, nc * sizeof *v);
        if (!v) return NULL;
        p->routes = v;
        *cap = nc;
    }
    struct policy_route *r = &p->routes[p->n_routes++];
    memset(r, 0, sizeof *r);
    return r;
}

static int parse_file(struct pctx *ctx, struct policy *p, size_t *cap, const char *fname)
{
    const cJSON *root = ctx->doc->root;
    if (!cJSON_IsObject(root))
        return errorf(ctx, root, "a policy file must be an object {\"routes\": [...]}, got %s",
                      json_type(root));
    const cJSON *routes = NULL;
    for (const cJSON *m = root->child; m; m = m->next) {
        if (strcmp(m->string, "routes") != 0)
            return key_errorf(ctx, m, "unknown key '%s' (a policy file has only 'routes')",
                              m->string);
        routes = m;
    }
    if (!routes) return errorf(ctx, root, "a policy file needs 'routes'");
    if (!cJSON_IsArray(routes))
        return errorf(ctx, routes, "'routes' must be an array, got %s", json_type(routes));
    int i = 0;
    /* Route origins in one pass over the text (routes come in document order). */
    size_t scanned = 0;
    int line = 1, line_start = 0;
    for (const cJSON *e = routes->child; e; e = e->next, i++) {
        if (p->n_routes >= MAX_ROUTES) return errorf(ctx, e, "more than %d routes", MAX_ROUTES);
        struct policy_route *r = new_route(p, cap);
        if (!r) return oom(ctx);
        char where[64];
        snprintf(where, sizeof where, "routes[%d]", i);
        if (parse_rows(ctx, route_rows, ARRAY_LEN(route_rows), e, where, r) < 0) return -1;
        if (!cJSON_GetObjectItemCaseSensitive(e, "fallback_on"))
            r->fallback_on = DEFAULT_FALLBACK_ON;
        if (r->sticky == STICKY_HEADER && !r->sticky_header)
            return errorf(ctx, e, "'%s.sticky' by header needs 'sticky.header'", where);
        if (r->backoff_max_ms < r->backoff_ms)
            return errorf(ctx, e, "'%s.retry.backoff_max_ms' is below 'retry.backoff_ms'", where);
        size_t off = 0;
        if (jsonc_offset(ctx->doc, e, &off) < 0) off = scanned;
        for (; scanned < off && scanned < ctx->doc->len; scanned++) {
            if (ctx->doc->text[scanned] == '\n') {
                line++;
                line_start = (int)scanned + 1;
            }
        }
        char buf[MAX_PATH + 64];
        snprintf(buf, sizeof buf, "%s:%d:%d", fname, line, (int)off - line_start + 1);
        if (!(r->origin = strdup(buf))) return oom(ctx);
        if (!r->name) {
            const char *base = strrchr(fname, '/');
            snprintf(buf, sizeof buf, "%s#%d", base ? base + 1 : fname, i);
            if (!(r->name = strdup(buf))) return oom(ctx);
        }
    }
    return 0;
}

/* The models section as one-target routes with no retries and no breaker, so
 * that they behave exactly as a plain mapping. */
static int add_implicit(struct policy *p, size_t *cap, const struct config *cfg)
{
    for (size_t i = 0; i < cfg->n_models; i++) {
        const struct model_conf *m = &cfg->models[i];
        struct policy_route *r = new_route(p, cap);
        if (!r) return -1;
        apply_defaults(route_rows, ARRAY_LEN(route_rows), r);
        r->implicit = true;
        r->fallback_on = DEFAULT_FALLBACK_ON;
        r->breaker.failures = 0;
        r->breaker.error_ratio_pct = 0;
        r->n_models = 1;
        r->n_targets = 1;
        r->total_weight = 1;
        r->models = calloc(1, sizeof *r->models);
        r->targets = calloc(1, sizeof *r->targets);
        if (!r->models || !r->targets || !(r->models[0] = strdup(m->name)) ||
            !(r->name = strdup(m->name)) || !(r->origin = strdup("models")) ||
            !(r->targets[0].provider_name = strdup(m->provider_name)) ||
            !(r->targets[0].model = strdup(m->model)))
            return -1;
        r->targets[0].weight = 1;
        r->targets[0].provider = m->provider;
        if (!(r->targets[0].state = targets_get(m->provider_name, m->model))) return -1;
    }
    return 0;
}

static int exact_cmp(const void *a, const void *b)
{
    const struct policy_exact *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c) return c;
    return x->route < y->route ? -1 : x->route > y->route;
}

static int build_index(struct policy *p)
{
    size_t ne = 0, ns = 0;
    for (size_t i = 0; i < p->n_routes; i++) {
        const struct policy_route *r = &p->routes[i];
        if (r->n_models == 0) ns++;
        for (size_t k = 0; k < r->n_models; k++) {
            if (is_glob(r->models[k]))
                ns++;
            else
                ne++;
        }
    }
    p->exact = ne ? calloc(ne, sizeof *p->exact) : NULL;
    p->scan = ns ? calloc(ns, sizeof *p->scan) : NULL;
    if ((ne && !p->exact) || (ns && !p->scan)) return -1;
    for (size_t i = 0; i < p->n_routes; i++) {
        const struct policy_route *r = &p->routes[i];
        if (r->n_models == 0) p->scan[p->n_scan++] = (struct policy_glob){i, NULL, 0};
        for (size_t k = 0; k < r->n_models; k++) {
            const char *m = r->models[k];
            if (is_glob(m))
                p->scan[p->n_scan++] = (struct policy_glob){i, m, strcspn(m, "*?[\\")};
            else
                p->exact[p->n_exact++] = (struct policy_exact){m, i};
        }
    }
    if (p->n_exact > 1) qsort(p->exact, p->n_exact, sizeof *p->exact, exact_cmp);
    return 0;
}

int policy_build(const struct config *cfg, const char *dir, const struct policy_source *srcs,
                 size_t n, struct policy **out, char *err, size_t errlen)
{
    *out = NULL;
    struct policy *p = calloc(1, sizeof *p);
    size_t cap = 0;
    if (!p) goto oom;
    atomic_init(&p->refs, 1);
    if (dir && !(p->dir = strdup(dir))) goto oom;
    if (n && !(p->files = calloc(n, sizeof *p->files))) goto oom;
    for (size_t i = 0; i < n; i++) {
        struct jsonc_doc *doc;
        if (jsonc_parse(srcs[i].text, srcs[i].len, srcs[i].name, &doc, err, errlen) < 0) goto fail;
        struct pctx ctx = {.doc = doc, .cfg = cfg, .err = err, .errlen = errlen};
        int rc = parse_file(&ctx, p, &cap, srcs[i].name);
        jsonc_free(doc);
        if (rc < 0) goto fail;
        if (!(p->files[p->n_files++] = strdup(srcs[i].name))) goto oom;
    }
    if (add_implicit(p, &cap, cfg) < 0 || build_index(p) < 0) goto oom;
    p->generation = atomic_fetch_add(&next_generation, 1);
    p->loaded_wall_ms = util_wall_ms();
    *out = p;
    return 0;
oom:
    snprintf(err, errlen, "%s: out of memory building the policy", dir ? dir : "policy");
fail:
    policy_free(p);
    return -1;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Policy files: "*.json", not hidden, not an editor's temp or backup file. */
static bool wanted_file(const char *name)
{
    size_t len = strlen(name);
    return name[0] != '.' && name[0] != '#' && len > 5 && strcmp(name + len - 5, ".json") == 0;
}

int policy_load_dir(const struct config *cfg, const char *dir, struct policy **out, char *err,
                    size_t errlen)
{
    *out = NULL;
    if (!dir) return policy_build(cfg, NULL, NULL, 0, out, err, errlen);
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "%s: cannot open the policy directory: %s", dir, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = -1;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!wanted_file(de->d_name)) continue;
        if (n == MAX_POLICY_FILES) {
            snprintf(err, errlen, "%s: more than %d policy files", dir, MAX_POLICY_FILES);
            goto out;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **v = realloc(names, cap * sizeof *v);
            if (!v) goto oom;
            names = v;
        }
        size_t need = strlen(dir) + strlen(de->d_name) + 2;
        if (!(names[n] = malloc(need))) goto oom;
        snprintf(names[n++], need, "%s/%s", dir, de->d_name);
    }
    if (n > 1) qsort(names, n, sizeof *names, name_cmp);
    struct policy_source *srcs = n ? calloc(n, sizeof *srcs) : NULL;
    struct jsonc_doc **docs = n ? calloc(n, sizeof *docs) : NULL;
    if (n && (!srcs || !docs)) {
        free(srcs);
        free(docs);
        goto oom;
    }
    size_t loaded = 0;
    for (; loaded < n; loaded++) {
        /* jsonc_load_file reads (bounded) and validates; the text is parsed again
         * by policy_build, which keeps one code path for files and tests. */
        if (jsonc_load_file(names[loaded], &docs[loaded], err, errlen) < 0) break;
        srcs[loaded] = (struct policy_source){names[loaded], docs[loaded]->text, docs[loaded]->len};
    }
    if (loaded == n) rc = policy_build(cfg, dir, srcs, n, out, err, errlen);
    for (size_t i = 0; i < loaded; i++)
        jsonc_free(docs[i]);
    free(srcs);
    free(docs);
    goto out;
oom:
    snprintf(err, errlen, "%s: out of memory", dir);
out:
    closedir(d);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

struct policy *policy_ref(struct policy *p)
{
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return p;
}

void policy_unref(struct policy *p)
{
    if (p && atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1) policy_free(p);
}

/* ------------------------------------------------------------------------- */
/* Matching                                                                  */
/* ------------------------------------------------------------------------- */

/* Tenant and header conditions (the model already matched). */
static bool rest_matches(const struct policy_route *r, const struct route_query *q)
{
    if (r->tenant && (!q->tenant || strcmp(r->tenant, q->tenant) != 0)) return false;
    if (r->header_name) {
        const char *v = q->header ? q->header(q->ud, r->header_name) : NULL;
        if (!v || (r->header_value && strcmp(v, r->header_value) != 0)) return false;
    }
    return true;
}

const struct policy_route *policy_match(const struct policy *p, const struct route_query *q)
{
    if (!p || !q->model) return NULL;
    size_t best = SIZE_MAX;
    /* The first exact entry for the name (lower bound), then its run in route order. */
    size_t lo = 0, hi = p->n_exact;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(p->exact[mid].name, q->model) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; i < p->n_exact && strcmp(p->exact[i].name, q->model) == 0; i++) {
        if (rest_matches(&p->routes[p->exact[i].route], q)) {
            best = p->exact[i].route;
            break;
        }
    }
    /* Glob and any-model routes only win when they come earlier. */
    for (size_t i = 0; i < p->n_scan && p->scan[i].route < best; i++) {
        const struct policy_glob *g = &p->scan[i];
        if (g->pattern &&
            ((g->lit && g->pattern[0] != q->model[0]) ||
             strncmp(g->pattern, q->model, g->lit) != 0 || fnmatch(g->pattern, q->model, 0) != 0))
            continue;
        if (rest_matches(&p->routes[g->route], q)) {
            best = g->route;
            break;
        }
    }
    return best == SIZE_MAX ? NULL : &p->routes[best];
}

/* ------------------------------------------------------------------------- */
/* The admin view and the reference                                          */
/* ------------------------------------------------------------------------- */

static cJSON *targets_json(const struct policy_target *t, size_t n, bool weighted)
{
    cJSON *arr = cJSON_CreateArray();
    uint64_t now = util_now_ms();
    for (size_t i = 0; arr && i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        if (!o) break;
        cJSON_AddItemToArray(arr, o);
        cJSON_AddStringToObject(o, "provider", t[i].provider_name);
        if (t[i].model)
            cJSON_AddStringToObject(o, "model", t[i].model);
        else
            cJSON_AddNullToObject(o, "model");
        if (weighted) cJSON_AddNumberToObject(o, "weight", t[i].weight);
        if (t[i].state) {
            uint64_t left = 0;
            cJSON_AddStringToObject(o, "breaker",
                                    breaker_state_name(breaker_state_of(&t[i].state->breaker)));
            cJSON_AddNumberToObject(o, "cooldown_ms",
                                    targets_cooling(t[i].state, now, &left) ? (double)left : 0);
        }
    }
    return arr;
}

cJSON *policy_to_json(const struct policy *p)
{
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    cJSON_AddNumberToObject(root, "generation", (double)p->generation);
    cJSON_AddNumberToObject(root, "loaded_at_ms", (double)p->loaded_wall_ms);
    if (p->dir)
        cJSON_AddStringToObject(root, "dir", p->dir);
    else
        cJSON_AddNullToObject(root, "dir");
    cJSON *files = cJSON_AddArrayToObject(root, "files");
    for (size_t i = 0; files && i < p->n_files; i++)
        cJSON_AddItemToArray(files, cJSON_CreateString(p->files[i]));
    cJSON *routes = cJSON_AddArrayToObject(root, "routes");
    for (size_t i = 0; routes && i < p->n_routes; i++) {
        const struct policy_route *r = &p->routes[i];
        cJSON *o = cJSON_CreateObject();
        if (!o) break;
        cJSON_AddItemToArray(routes, o);
        cJSON_AddStringToObject(o, "name", r->name);
        cJSON_AddStringToObject(o, "origin", r->origin);
        cJSON *m = cJSON_AddObjectToObject(o, "match");
        cJSON *models = cJSON_AddArrayToObject(m, "model");
        for (size_t k = 0; models && k < r->n_models; k++)
            cJSON_AddItemToArray(models, cJSON_CreateString(r->models[k]));
        if (r->tenant) cJSON_AddStringToObject(m, "tenant", r->tenant);
        if (r->header_name) {
            cJSON *h = cJSON_AddObjectToObject(m, "header");
            cJSON_AddStringToObject(h, "name", r->header_name);
            if (r->header_value) cJSON_AddStringToObject(h, "value", r->header_value);
        }
        cJSON_AddItemToObject(o, "targets", targets_json(r->targets, r->n_targets, true));
        cJSON_AddItemToObject(o, "fallback", targets_json(r->fallback, r->n_fallback, false));
        cJSON *fo = cJSON_AddArrayToObject(o, "fallback_on");
        for (int f = 0; fo && f < PF_COUNT; f++)
            if (r->fallback_on & PF_BIT(f))
                cJSON_AddItemToArray(fo, cJSON_CreateString(failure_names[f]));
        cJSON *to = cJSON_AddObjectToObject(o, "timeouts");
        cJSON_AddNumberToObject(to, "connect_ms", r->connect_ms);
        cJSON_AddNumberToObject(to, "first_token_ms", r->first_token_ms);
        cJSON_AddNumberToObject(to, "idle_ms", r->idle_ms);
        cJSON_AddNumberToObject(to, "total_ms", r->total_ms);
        cJSON *re = cJSON_AddObjectToObject(o, "retry");
        cJSON_AddNumberToObject(re, "attempts", r->retry_attempts);
        cJSON_AddNumberToObject(re, "backoff_ms", r->backoff_ms);
        cJSON_AddNumberToObject(re, "backoff_max_ms", r->backoff_max_ms);
        cJSON_AddNumberToObject(re, "respect_retry_after_max_ms", r->retry_after_max_ms);
        cJSON_AddNumberToObject(re, "budget_ratio", r->budget_permille / 1000.0);
        cJSON *br = cJSON_AddObjectToObject(o, "breaker");
        cJSON_AddNumberToObject(br, "failures", r->breaker.failures);
        cJSON_AddNumberToObject(br, "error_ratio", r->breaker.error_ratio_pct / 100.0);
        cJSON_AddNumberToObject(br, "open_ms", r->breaker.open_ms);
    }
    return root;
}

static int write_rows(FILE *out, const struct row *tab, size_t n, const char *prefix)
{
    for (size_t i = 0; i < n; i++) {
        const struct row *o = &tab[i];
        char def[128], type[64];
        switch (o->type) {
        case R_UINT: snprintf(type, sizeof type, "integer"); break;
        case R_MS: snprintf(type, sizeof type, "integer (ms)"); break;
        case R_BOOL: snprintf(type, sizeof type, "boolean"); break;
        case R_STRING: snprintf(type, sizeof type, "string"); break;
        case R_ENUM: snprintf(type, sizeof type, "enum"); break;
        case R_RATIO: snprintf(type, sizeof type, "number 0..%g", (double)o->max / o->scale); break;
        case R_CUSTOM: snprintf(type, sizeof type, "%s", o->type_doc); break;
        }
        if (o->def_doc)
            snprintf(def, sizeof def, "%s", o->def_doc);
        else if (o->required)
            snprintf(def, sizeof def, "*required*");
        else if (o->type == R_STRING)
            snprintf(def, sizeof def, "unset");
        else if (o->type == R_ENUM)
            snprintf(def, sizeof def, "`\"%s\"`", o->enum_names[o->def]);
        else if (o->type == R_RATIO)
            snprintf(def, sizeof def, "`%g`", (double)o->def / o->scale);
        else
            snprintf(def, sizeof def, "`%u`", o->def);
        if (fprintf(out, "| `%s%s` | %s | %s | %s |\n", prefix, o->name, type, def, o->doc) < 0)
            return -1;
    }
    return 0;
}

int policy_write_reference(FILE *out)
{
    if (fputs("| key | type | default | description |\n|---|---|---|---|\n", out) < 0) return -1;
    if (write_rows(out, route_rows, ARRAY_LEN(route_rows), "") < 0) return -1;
    if (write_rows(out, target_rows, ARRAY_LEN(target_rows), "targets[].") < 0) return -1;
    return fflush(out) == 0 ? 0 : -1;
}
