/* Tenant API keys: header extraction, key records, the per-worker key cache
 * (short TTL + pub/sub invalidation), and the authenticate / model stages.
 * Keys are stored in Redis only as SHA-256 digests; no key text is logged. */
#include "gateway/keys.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <event2/http.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cache/pubsub.h"
#include "cache/redis.h"
#include "common/log.h"
#include "common/util.h"
#include "gateway/auth.h"
#include "gateway/scripts.h"
#include "gateway/worker.h"

#define MAX_KEY_LEN       512
#define CACHE_BUCKETS     4096
#define CACHE_MAX_ENTRIES 100000 /* beyond this the cache starts over (bounds memory) */
#define MAX_MODEL_GLOBS   256
#define MAX_MODEL_LIMITS  64

/* ---------------------------------------------------------------- pure helpers */

static const char *trim(const char *v, size_t *len)
{
    while (*v == ' ' || *v == '\t')
        v++;
    size_t n = strlen(v);
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (n == 0 || n > MAX_KEY_LEN) return NULL;
    *len = n;
    return v;
}

const char *keys_extract(const char *authorization, const char *api_key, const char *x_api_key,
                         size_t *len)
{
    if (authorization) return auth_bearer_key(authorization, len);
    if (api_key) return trim(api_key, len);
    if (x_api_key) return trim(x_api_key, len);
    return NULL;
}

bool keys_glob_match(const char *glob, const char *s)
{
    const char *star = NULL, *resume = NULL;
    while (*s) {
        if (*glob == '*') {
            star = glob++;
            resume = s;
        } else if (*glob == '?' || *glob == *s) {
            glob++;
            s++;
        } else if (star) {
            glob = star + 1;
            s = ++resume;
        } else {
            return false;
        }
    }
    while (*glob == '*')
        glob++;
    return *glob == '\0';
}

bool keys_tenant_id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > KEYS_TENANT_MAX) return false;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* A stored limit: digits only (else 0, none), saturated at max. */
static uint64_t to_limit(const char *v, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (*v < '0' || *v > '9' || *end) return 0;
    return errno == ERANGE || x > max ? max : (uint64_t)x;
}

/* Sets one limit of l from a field name (the key hash and the admin API use
 * "concurrency"; the quota code says conc). */
static void set_limit(struct key_limits *l, const char *name, uint64_t v)
{
    unsigned small = v > KEYS_LIMIT_MAX ? KEYS_LIMIT_MAX : (unsigned)v;
    uint64_t big = v > KEYS_WINDOW_LIMIT_MAX ? KEYS_WINDOW_LIMIT_MAX : v;
    if (strcmp(name, "rpm") == 0)
        l->rpm = small;
    else if (strcmp(name, "tpm") == 0)
        l->tpm = small;
    else if (strcmp(name, "tpd") == 0)
        l->tpd = big;
    else if (strcmp(name, "tpmo") == 0)
        l->tpmo = big;
    else if (strcmp(name, "concurrency") == 0)
        l->conc = small;
}

/* A repeated field replaces the earlier value (as every other field does), so the old
 * arrays go first: their counts must never outlive them. */
static void free_models(struct key_record *k)
{
    for (size_t i = 0; i < k->n_models; i++)
        free(k->models[i]);
    free(k->models);
    k->models = NULL;
    k->n_models = 0;
}

static void free_model_limits(struct key_record *k)
{
    for (size_t i = 0; i < k->n_model_limits; i++)
        free(k->model_limits[i].glob);
    free(k->model_limits);
    k->model_limits = NULL;
    k->n_model_limits = 0;
}

static int parse_models(struct key_record *k, const char *v)
{
    free_models(k);
    size_t n = 1;
    for (const char *p = v; *p; p++)
        n += *p == ',';
    if (n > MAX_MODEL_GLOBS) n = MAX_MODEL_GLOBS;
    k->models = calloc(n, sizeof *k->models);
    if (!k->models) return -1;
    for (const char *p = v; *p && k->n_models < n;) {
        size_t len = strcspn(p, ",");
        if (len) {
            if (!(k->models[k->n_models] = strndup(p, len))) return -1;
            k->n_models++;
        }
        p += len + (p[len] == ',');
    }
    return 0;
}

/* model_limits is a JSON object {"glob": {"rpm": .., "tpm": .., ...}}. */
static int parse_model_limits(struct key_record *k, const char *v)
{
    free_model_limits(k);
    cJSON *doc = cJSON_Parse(v);
    if (!cJSON_IsObject(doc)) {
        cJSON_Delete(doc);
        return 0; /* malformed: ignored (the admin script only writes objects) */
    }
    int n = cJSON_GetArraySize(doc);
    if (n > MAX_MODEL_LIMITS) n = MAX_MODEL_LIMITS;
    k->model_limits = calloc((size_t)(n ? n : 1), sizeof *k->model_limits);
    if (!k->model_limits) {
        cJSON_Delete(doc);
        return -1;
    }
    for (const cJSON *e = doc->child; e && (int)k->n_model_limits < n; e = e->next) {
        struct key_model_limit *ml = &k->model_limits[k->n_model_limits];
        if (!cJSON_IsObject(e) || !e->string) continue;
        if (!(ml->glob = strdup(e->string))) {
            cJSON_Delete(doc);
            return -1;
        }
        for (const cJSON *f = e->child; f; f = f->next)
            if (cJSON_IsNumber(f) && f->valuedouble >= 0)
                set_limit(&ml->l, f->string,
                          f->valuedouble >= (double)KEYS_WINDOW_LIMIT_MAX
                              ? KEYS_WINDOW_LIMIT_MAX
                              : (uint64_t)f->valuedouble);
        k->n_model_limits++;
    }
    cJSON_Delete(doc);
    return 0;
}

struct key_record *keys_record_parse(const char *const *fields, const char *const *values, size_t n)
{
    struct key_record *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    k->refs = 1;
    bool have_id = false, have_tenant = false, have_models = false;
    for (size_t i = 0; i < n; i++) {
        const char *f = fields[i], *v = values[i];
        if (strncmp(f, "tenant.", 7) == 0) {
            set_limit(&k->tenant_limits, f + 7, to_limit(v, KEYS_WINDOW_LIMIT_MAX));
        } else if (strcmp(f, "id") == 0) {
            have_id = util_strlcpy(k->id, v, sizeof k->id) < sizeof k->id && v[0];
        } else if (strcmp(f, "tenant") == 0) {
            have_tenant = keys_tenant_id_valid(v);
            util_strlcpy(k->tenant, v, sizeof k->tenant);
        } else if (strcmp(f, "status") == 0) {
            k->revoked = strcmp(v, "active") != 0;
        } else if (strcmp(f, "expires") == 0) {
            k->expires = strtoull(v, NULL, 10);
        } else if (strcmp(f, "models") == 0) {
            if (parse_models(k, v) != 0) goto fail;
            have_models = true;
        } else if (strcmp(f, "max_tokens") == 0) {
            k->max_tokens = (unsigned)to_limit(v, KEYS_LIMIT_MAX);
        } else if (strcmp(f, "model_limits") == 0) {
            if (!v[0])
                free_model_limits(k); /* empty: none (a repeated field: the last one counts) */
            else if (parse_model_limits(k, v) != 0)
                goto fail;
        } else {
            set_limit(&k->key, f, to_limit(v, KEYS_WINDOW_LIMIT_MAX));
        }
    }
    if (!have_id || !have_tenant) goto fail;
    if (!have_models && parse_models(k, "*") != 0) goto fail;
    return k;
fail:
    k->refs = 1;
    keys_record_release(k);
    return NULL;
}

void keys_record_release(struct key_record *k)
{
    if (!k || --k->refs > 0) return;
    free_models(k);
    free_model_limits(k);
    free(k);
}

bool keys_model_allowed(const struct key_record *k, const char *model)
{
    if (!model) return false;
    for (size_t i = 0; i < k->n_models; i++)
        if (keys_glob_match(k->models[i], model)) return true;
    return false;
}

const struct key_model_limit *keys_model_limit(const struct key_record *k, const char *model)
{
    if (!model) return NULL;
    for (size_t i = 0; i < k->n_model_limits; i++)
        if (keys_glob_match(k->model_limits[i].glob, model)) return &k->model_limits[i];
    return NULL;
}

static void hex(const uint8_t *b, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = '\0';
}

int keys_generate(char secret[KEYS_SECRET_LEN + 1], char sha_hex[SHA256_HEX_LEN + 1],
                  char id[KEYS_ID_LEN + 1])
{
    uint8_t rnd[24], idb[8];
    if (util_random_bytes(rnd, sizeof rnd) != 0 || util_random_bytes(idb, sizeof idb) != 0)
        return -1;
    memcpy(secret, "sk-lg-", 6);
    hex(rnd, sizeof rnd, secret + 6);
    memcpy(id, "key_", 4);
    hex(idb, sizeof idb, id + 4);
    hash_sha256_hex(secret, KEYS_SECRET_LEN, sha_hex);
    explicit_bzero(rnd, sizeof rnd);
    return 0;
}

/* ---------------------------------------------------------------- the cache */

/* One cached answer: a key record, or "no such key" (rec NULL). */
struct kc_entry {
    uint8_t sha[SHA256_LEN];
    uint64_t fetched_ms;
    struct key_record *rec;
    struct kc_entry *next;
};

struct keycache {
    struct worker *w;
    struct kc_entry *buckets[CACHE_BUCKETS];
    size_t n;
    struct pubsub *sub;
};

static size_t bucket_of(const uint8_t *sha)
{
    return ((size_t)sha[0] << 8 | sha[1]) % CACHE_BUCKETS;
}

static struct kc_entry *cache_find(struct keycache *kc, const uint8_t *sha)
{
    for (struct kc_entry *e = kc->buckets[bucket_of(sha)]; e; e = e->next)
        if (hash_equal_ct(e->sha, sha, SHA256_LEN)) return e;
    return NULL;
}

static void cache_clear(struct keycache *kc)
{
    for (size_t b = 0; b < CACHE_BUCKETS; b++) {
        struct kc_entry *e = kc->buckets[b];
        while (e) {
            struct kc_entry *next = e->next;
            keys_record_release(e->rec);
            free(e);
            e = next;
        }
        kc->buckets[b] = NULL;
    }
    kc->n = 0;
}

/* Stores rec (the cache takes over the caller's reference) for sha. */
static void cache_put(struct keycache *kc, const uint8_t *sha, struct key_record *rec)
{
    struct kc_entry *e = cache_find(kc, sha);
    if (!e) {
        if (kc->n >= CACHE_MAX_ENTRIES) cache_clear(kc);
        if (!(e = calloc(1, sizeof *e))) {
            keys_record_release(rec);
            return;
        }
        memcpy(e->sha, sha, SHA256_LEN);
        size_t b = bucket_of(sha);
        e->next = kc->buckets[b];
        kc->buckets[b] = e;
        kc->n++;
    } else {
        keys_record_release(e->rec);
    }
    e->rec = rec;
    e->fetched_ms = util_now_ms();
}

void keycache_invalidate(struct keycache *kc, const char *sha_hex)
{
    if (!sha_hex) {
        cache_clear(kc);
        return;
    }
    uint8_t sha[SHA256_LEN];
    if (hash_hex_decode(sha_hex, sha) != 0) return;
    size_t b = bucket_of(sha);
    for (struct kc_entry **pp = &kc->buckets[b]; *pp; pp = &(*pp)->next) {
        if (hash_equal_ct((*pp)->sha, sha, SHA256_LEN)) {
            struct kc_entry *e = *pp;
            *pp = e->next;
            keys_record_release(e->rec);
            free(e);
            kc->n--;
            return;
        }
    }
}

static void on_invalidate(const char *data, size_t len, void *ud)
{
    char sha_hex[SHA256_HEX_LEN + 1];
    if (len != SHA256_HEX_LEN) {
        keycache_invalidate(ud, NULL);
        return;
    }
    memcpy(sha_hex, data, len);
    sha_hex[len] = '\0';
    keycache_invalidate(ud, sha_hex);
}

static void on_subscription_reset(void *ud)
{
    keycache_invalidate(ud, NULL); /* revocations may have been missed meanwhile */
}

struct keycache *keycache_new(struct worker *w)
{
    struct keycache *kc = calloc(1, sizeof *kc);
    if (!kc) return NULL;
    kc->w = w;
    if (w->cfg->redis_keys) {
        char channel[128];
        snprintf(channel, sizeof channel, "%skeys:invalidate", w->cfg->redis_prefix);
        kc->sub = pubsub_new(w->base, w->cfg->redis_address, w->cfg->redis_port, channel,
                             on_invalidate, on_subscription_reset, kc);
        if (!kc->sub) {
            free(kc);
            return NULL;
        }
    }
    return kc;
}

void keycache_free(struct keycache *kc)
{
    if (!kc) return;
    pubsub_free(kc->sub);
    cache_clear(kc);
    free(kc);
}

/* ---------------------------------------------------------------- stages */

static enum stage_rc fail_401(struct request *r, const char *msg)
{
    return request_fail(r, 401, "invalid_request_error", "invalid_api_key", NULL, "%s", msg);
}

/* Accepts or refuses rec (NULL = unknown key) for r. */
static enum stage_rc decide(struct request *r, struct key_record *rec)
{
    if (!rec) return fail_401(r, "Incorrect API key provided.");
    if (rec->revoked) return fail_401(r, "This API key has been revoked.");
    if (rec->expires && util_wall_ms() / 1000 >= rec->expires)
        return fail_401(r, "This API key has expired.");
    rec->refs++;
    r->key = rec;
    return STAGE_NEXT;
}

static enum stage_rc redis_unavailable(struct request *r)
{
    return request_fail(r, 503, "server_error", "auth_unavailable", NULL, "%s",
                        "The key store is unreachable; retry shortly.");
}

struct lookup {
    struct request *r;
    uint8_t sha[SHA256_LEN];
};

#define MAX_KEY_FIELDS 64

static void on_lookup(const struct redisReply *reply, void *ud)
{
    struct lookup *lk = ud;
    struct request *r = lk->r;
    struct keycache *kc = r->w->keycache;
    struct kc_entry *stale = cache_find(kc, lk->sha);
    bool answered = reply && reply->type == REDIS_REPLY_ARRAY;
    if (answered) {
        const char *f[MAX_KEY_FIELDS], *v[MAX_KEY_FIELDS];
        size_t n = 0;
        for (size_t i = 0; i + 1 < reply->elements && n < MAX_KEY_FIELDS; i += 2) {
            if (reply->element[i]->type != REDIS_REPLY_STRING ||
                reply->element[i + 1]->type != REDIS_REPLY_STRING)
                continue;
            f[n] = reply->element[i]->str;
            v[n++] = reply->element[i + 1]->str;
        }
        struct key_record *rec = n ? keys_record_parse(f, v, n) : NULL;
        if (n && !rec) log_warn("keys", "a key record in Redis is malformed; treated as unknown");
        cache_put(kc, lk->sha, rec);
        stale = cache_find(kc, lk->sha);
    } else if (reply && reply->type == REDIS_REPLY_ERROR) {
        log_warn("keys", "key lookup failed: %s", reply->str);
    }
    free(lk);
    if (!r->finished) {
        enum stage_rc rc =
            answered || stale ? decide(r, stale ? stale->rec : NULL) : redis_unavailable(r);
        if (rc == STAGE_NEXT) request_resume(r);
    }
    request_release(r);
}

enum stage_rc keys_authenticate(struct request *r)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(r->req);
    size_t klen = 0;
    const char *key =
        keys_extract(evhttp_find_header(h, "Authorization"), evhttp_find_header(h, "api-key"),
                     evhttp_find_header(h, "x-api-key"), &klen);
    const struct config *cfg = r->cfg;
    /* Precedence: the static list (bootstrap/compat keys, unmetered), then tenant keys
     * in Redis; with neither configured, authentication is off. */
    if (cfg->n_api_keys == 0 && !cfg->redis_keys) return STAGE_NEXT;
    if (!key)
        return fail_401(r, "You didn't provide an API key. Provide it in the Authorization "
                           "header as 'Bearer YOUR_KEY'.");
    if (cfg->n_api_keys && auth_key_valid(cfg, key, klen)) return STAGE_NEXT;
    if (!cfg->redis_keys) return fail_401(r, "Incorrect API key provided.");

    struct keycache *kc = r->w->keycache;
    uint8_t sha[SHA256_LEN];
    hash_sha256(key, klen, sha);
    struct kc_entry *e = cache_find(kc, sha);
    if (e && util_now_ms() - e->fetched_ms < cfg->key_cache_ttl_ms) return decide(r, e->rec);

    struct lookup *lk = malloc(sizeof *lk);
    if (!lk) return e ? decide(r, e->rec) : redis_unavailable(r);
    lk->r = r;
    memcpy(lk->sha, sha, sizeof sha);
    char name[256];
    char sha_hex[SHA256_HEX_LEN + 1];
    hex(sha, SHA256_LEN, sha_hex);
    int n = snprintf(name, sizeof name, "%skey:%s", cfg->redis_prefix, sha_hex);
    const char *keys[] = {name};
    size_t kl[] = {(size_t)n};
    const char *args[] = {cfg->redis_prefix};
    size_t al[] = {strlen(cfg->redis_prefix)};
    request_hold(r);
    if (redis_eval(r->w->redis, &script_key_lookup, on_lookup, lk, 1, keys, kl, 1, args, al) != 0) {
        /* Redis is down: known keys keep working from the cache, unknown ones wait. */
        free(lk);
        request_release(r);
        return e ? decide(r, e->rec) : redis_unavailable(r);
    }
    redis_flush(r->w->redis); /* on the critical path: send now, not next loop turn */
    return STAGE_ASYNC;
}

enum stage_rc keys_authorize_model(struct request *r)
{
    if (!r->key || keys_model_allowed(r->key, r->oai.model)) return STAGE_NEXT;
    return request_fail(r, 403, "invalid_request_error", "model_not_allowed", "model",
                        "This API key is not allowed to use the model `%.200s`.", r->oai.model);
}
