/* Token quotas on Redis: reserve before dispatch, settle after the response,
 * the local limiter that stands in while Redis is down (fail_open), and the
 * rate-limit headers. Scopes of one tenant share the hash tag {tenant}, so the
 * reserve script touches one Redis Cluster slot. */
#include "gateway/quota.h"

#include <cjson/cJSON.h>
#include <event2/http.h>
#include <hiredis/hiredis.h>
#include <event2/event.h>
#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/redis.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/util.h"
#include "gateway/grant.h"
#include "gateway/localtok.h"
#include "gateway/promhist.h"
#include "gateway/scripts.h"
#include "gateway/server.h"
#include "gateway/usage.h"
#include "gateway/worker.h"

/* ---------------------------------------------------------------- metrics */

/* Process-wide, relaxed atomics: workers add, /metrics reads. The histogram
 * is the reserve round trip as the worker sees it (send to reply handled). */
static const double reserve_le_s[] = {0.00005, 0.0001, 0.0002, 0.0005, 0.001,
                                      0.002,   0.005,  0.01,   0.05};
static struct promhist reserve_hist = PROMHIST_INIT(reserve_le_s);
static struct {
    _Atomic unsigned long long denied, local_admits, unavailable, settles, settle_calls, spooled;
    _Atomic unsigned long long grant_admits, grant_asks, grant_tokens, grant_returned;
} qm;

static void count(_Atomic unsigned long long *c, unsigned long long n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static void metric(struct evbuffer *out, const char *name, const char *help,
                   _Atomic unsigned long long *v)
{
    server_metric_counter(out, name, help, atomic_load_explicit(v, memory_order_relaxed));
}

void quota_metrics_write(struct evbuffer *out)
{
    promhist_header(out, "llmgate_quota_reserve_seconds",
                    "Reserve script round trip (Redis and the network, as a worker sees it).");
    promhist_write(out, "llmgate_quota_reserve_seconds", NULL, NULL, &reserve_hist);
    metric(out, "llmgate_quota_denied_total", "Requests refused with 429 by a quota.", &qm.denied);
    metric(out, "llmgate_quota_local_admits_total",
           "Requests admitted by the local fail-open limiter while Redis was unreachable.",
           &qm.local_admits);
    metric(out, "llmgate_quota_unavailable_total",
           "Requests refused with 503 (fail_closed) while Redis was unreachable.", &qm.unavailable);
    metric(out, "llmgate_usage_records_total", "Usage records settled or spooled.", &qm.settles);
    metric(out, "llmgate_usage_settle_calls_total",
           "Settle script calls (each carries the records of one event-loop turn).",
           &qm.settle_calls);
    metric(out, "llmgate_quota_grant_admits_total",
           "Requests admitted from this worker's grant, without a Redis round trip.",
           &qm.grant_admits);
    metric(out, "llmgate_quota_grant_requests_total",
           "Reserve script calls that asked for a grant (with a request or on their own).",
           &qm.grant_asks);
    metric(out, "llmgate_quota_grant_tokens_total", "Tokens granted to workers ahead of demand.",
           &qm.grant_tokens);
    metric(out, "llmgate_quota_grant_returned_tokens_total",
           "Unspent granted tokens given back to Redis.", &qm.grant_returned);
    metric(out, "llmgate_usage_spooled_total",
           "Usage records written to the local spool because Redis did not take them.",
           &qm.spooled);
}

#define PROMPT_OVERHEAD   8 /* tokens per request for roles/framing in the estimate */
#define LOCAL_BUCKETS     1024
#define LOCAL_MAX_ENTRIES 100000
#define REPLAY_TICK_MS    1000

/* ---------------------------------------------------------------- pure helpers */

static bool any_limit(const struct key_limits *l)
{
    return l->rpm || l->tpm || l->tpd || l->tpmo || l->conc;
}

/* The longest bucket name: redis.prefix (64), tenant, id and a model glob or its hash. */
_Static_assert(64 + sizeof "q:{" + KEYS_TENANT_MAX + sizeof "}:k:" + KEYS_ID_LEN + 12 +
                       sizeof ":mh:" + QUOTA_GLOB_NAME_MAX <
                   sizeof((struct quota_scope *)0)->bucket,
               "a quota bucket name always fits");

int quota_scopes(const struct key_record *k, const char *model, const char *prefix,
                 struct quota_scope *out)
{
    int n = 0;
    if (any_limit(&k->key)) {
        snprintf(out[n].bucket, sizeof out[n].bucket, "%sq:{%s}:k:%s", prefix, k->tenant, k->id);
        out[n].l = k->key;
        n++;
    }
    if (any_limit(&k->tenant_limits)) {
        snprintf(out[n].bucket, sizeof out[n].bucket, "%sq:{%s}:t", prefix, k->tenant);
        out[n].l = k->tenant_limits;
        n++;
    }
    const struct key_model_limit *ml = keys_model_limit(k, model);
    if (ml && any_limit(&ml->l)) {
        /* A long glob is named by its hash ("mh:"), so that no two globs share a
         * bucket however long the prefix, tenant and glob are. */
        size_t gl = strlen(ml->glob);
        char h[SHA256_HEX_LEN + 1];
        if (gl > QUOTA_GLOB_NAME_MAX) hash_sha256_hex(ml->glob, gl, h);
        snprintf(out[n].bucket, sizeof out[n].bucket, "%sq:{%s}:k:%s:%s:%s", prefix, k->tenant,
                 k->id, gl > QUOTA_GLOB_NAME_MAX ? "mh" : "m",
                 gl > QUOTA_GLOB_NAME_MAX ? h : ml->glob);
        out[n].l = ml->l;
        n++;
    }
    for (int i = 0; i < n; i++)
        snprintf(out[i].conc, sizeof out[i].conc, "%s:c", out[i].bucket);
    return n;
}

long quota_estimate(const struct oai_request *o, long cap, long *prompt)
{
    long p = (long)((o->prompt_chars + 3) / 4) + (long)o->prompt_tokens + PROMPT_OVERHEAD;
    *prompt = p;
    if (o->endpoint == OAI_EMBEDDINGS) return p;
    return p + cap * (o->n > 0 ? o->n : 1);
}

char *quota_format_duration(long ms, char *buf, size_t cap)
{
    if (ms < 0) ms = 0;
    if (ms < 1000) {
        snprintf(buf, cap, "%ldms", ms);
        return buf;
    }
    long h = ms / 3600000, m = ms / 60000 % 60, s = ms / 1000 % 60, frac = ms % 1000;
    char sec[32];
    if (frac == 0) {
        snprintf(sec, sizeof sec, "%lds", s);
    } else {
        snprintf(sec, sizeof sec, "%ld.%03ld", s, frac);
        size_t n = strlen(sec);
        while (sec[n - 1] == '0')
            sec[--n] = '\0';
        sec[n++] = 's';
        sec[n] = '\0';
    }
    if (h)
        snprintf(buf, cap, "%ldh%ldm%s", h, m, sec);
    else if (m)
        snprintf(buf, cap, "%ldm%s", m, sec);
    else
        snprintf(buf, cap, "%s", sec);
    return buf;
}

long quota_retry_after_s(long ms)
{
    long s = (ms + 999) / 1000;
    return s < 1 ? 1 : s;
}

/* ---------------------------------------------------------------- metering */

static long usage_field(const cJSON *u, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(u, name);
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < 1e12 ? (long)v->valuedouble
                                                                             : 0;
}

static void take_usage(struct request *r, const cJSON *u)
{
    r->usage.reported = true;
    r->usage.prompt = usage_field(u, "prompt_tokens");
    r->usage.completion = usage_field(u, "completion_tokens");
    r->usage.cached =
        usage_field(cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens_details"), "cached_tokens");
}

bool quota_usage_from_chunk(struct request *r, const cJSON *chunk)
{
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(chunk, "usage");
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(chunk, "choices");
    const cJSON *c0 = cJSON_IsArray(choices) ? choices->child : NULL;
    if (c0) {
        const cJSON *delta = cJSON_GetObjectItemCaseSensitive(c0, "delta");
        const cJSON *text = delta ? cJSON_GetObjectItemCaseSensitive(delta, "content")
                                  : cJSON_GetObjectItemCaseSensitive(c0, "text");
        if (cJSON_IsString(text) && text->valuestring[0]) r->usage.chunks++;
    }
    if (!cJSON_IsObject(u)) return false;
    take_usage(r, u);
    return r->usage.strip && cJSON_IsArray(choices) && !c0;
}

void quota_usage_from_body(struct request *r, const cJSON *body)
{
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(body, "usage");
    if (cJSON_IsObject(u)) take_usage(r, u);
}

/* ---------------------------------------------------------------- headers */

static void set_header(struct evkeyvalq *h, const char *name, const char *value)
{
    evhttp_remove_header(h, name);
    evhttp_add_header(h, name, value);
}

void quota_add_headers(struct request *r)
{
    const struct request_quota *q = &r->quota;
    if (!q->have_headers || !r->req) return;
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    char v[64];
    if (q->req_limit >= 0) {
        snprintf(v, sizeof v, "%ld", q->req_limit);
        set_header(h, "x-ratelimit-limit-requests", v);
        snprintf(v, sizeof v, "%ld", q->req_remaining);
        set_header(h, "x-ratelimit-remaining-requests", v);
        set_header(h, "x-ratelimit-reset-requests",
                   quota_format_duration(q->req_reset_ms, v, sizeof v));
    }
    if (q->tok_limit >= 0) {
        snprintf(v, sizeof v, "%ld", q->tok_limit);
        set_header(h, "x-ratelimit-limit-tokens", v);
        snprintf(v, sizeof v, "%ld", q->tok_remaining);
        set_header(h, "x-ratelimit-remaining-tokens", v);
        set_header(h, "x-ratelimit-reset-tokens",
                   quota_format_duration(q->tok_reset_ms, v, sizeof v));
    }
}

static enum stage_rc reply_429(struct request *r, const char *kind, const char *window,
                               long retry_ms, bool too_large)
{
    count(&qm.denied, 1);
    quota_add_headers(r);
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    char v[32], d[32];
    snprintf(v, sizeof v, "%ld", quota_retry_after_s(retry_ms));
    set_header(h, "Retry-After", v);
    snprintf(v, sizeof v, "%ld", retry_ms < 0 ? 0 : retry_ms);
    set_header(h, "retry-after-ms", v);
    if (too_large)
        return request_fail(r, 429, kind, "rate_limit_exceeded", NULL,
                            "Request too large: it needs %ld tokens, more than this key's %s "
                            "limit allows. Lower max_tokens or the prompt.",
                            r->quota.tokens, window);
    return request_fail(r, 429, kind, "rate_limit_exceeded", NULL,
                        "Rate limit reached for %s (%s). Please try again in %s.", kind, window,
                        quota_format_duration(retry_ms, d, sizeof d));
}

/* ---------------------------------------------------------------- local limiter */

static long reply_int(const redisReply *a, size_t i)
{
    if (i >= a->elements) return 0;
    const redisReply *e = a->element[i];
    if (e->type == REDIS_REPLY_INTEGER) return (long)e->integer;
    if (e->type == REDIS_REPLY_STRING) return strtol(e->str, NULL, 10);
    return 0;
}

/* Each worker's part of a limit while Redis is down: one over the worker count. */
static unsigned worker_share(const struct request *r)
{
    return r->w->gw && r->w->gw->n_workers ? r->w->gw->n_workers : 1;
}

/* A calendar window (UTC day or month) for the local limiter: the scope's
 * counter as Redis last reported it to this worker, and the tokens this worker
 * has admitted on its own in that window since. */
_Static_assert(sizeof((struct request_quota *)0)->local_gen /
                       sizeof((struct request_quota *)0)->local_gen[0] ==
                   QUOTA_MAX_SCOPES,
               "a generation per scope");

struct local_window {
    long idx;     /* day or month number the two counts belong to; -1 none yet */
    long seen;    /* Redis's counter at the last answered reserve */
    long spent;   /* admitted locally since (estimates, less refunds at settle) */
    unsigned gen; /* bumped whenever spent restarts: a settle refunds only into the
                   * window generation its request was admitted in */
};

/* A scope's buckets while Redis is down; limits are the scope's divided by the
 * worker count (each worker enforces its share; replicas are not known). Day
 * and month windows start from what Redis last said was used; each worker may
 * spend its share of the rest. */
struct local_scope {
    char name[256];
    double r, t;
    uint64_t rt, tt;
    unsigned conc;
    struct local_window d, m;
    struct local_scope *next;
};

/* Settles are queued and sent at the next turn of the event loop (or when
 * SETTLE_BATCH_MAX are queued) as one script call: every request that finished
 * in one loop turn shares a round trip, an EVALSHA set-up and a wake-up of
 * Redis. They leave no later than a lone settle did before (hiredis also writes
 * on the next turn), so refunds and freed slots reach Redis as early as ever
 * for the next request on any worker. */
#ifndef SETTLE_BATCH_MAX
#define SETTLE_BATCH_MAX 64
#endif

struct settle_ctx;

struct quota_worker {
    struct worker *w;
    struct local_scope *buckets[LOCAL_BUCKETS];
    size_t n;
    struct usage_replay *replay; /* worker 0 */
    struct event *tick;
    struct settle_ctx *batch[SETTLE_BATCH_MAX]; /* queued settles, oldest first */
    int n_batch;
    struct event *flush_ev;    /* activated to send the queue at the end of the loop turn */
    struct grant_table grants; /* quota.grant_ms > 0 */
    struct event *grant_ev;    /* sweeps expired grants back to Redis */
    unsigned grant_ms;         /* the period the sweep runs at (the latest grant's) */
};

static size_t name_hash(const char *s)
{
    size_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h % LOCAL_BUCKETS;
}

static void local_clear(struct quota_worker *q)
{
    for (size_t b = 0; b < LOCAL_BUCKETS; b++) {
        struct local_scope *e = q->buckets[b];
        while (e) {
            struct local_scope *next = e->next;
            free(e);
            e = next;
        }
        q->buckets[b] = NULL;
    }
    q->n = 0;
}

/* The entry of scope s, created (with full buckets) when missing. A full table
 * is cleared first, which frees every entry: a caller that holds entries of
 * several scopes at once makes room for all of them beforehand. */
static struct local_scope *local_get(struct quota_worker *q, const struct quota_scope *s,
                                     unsigned share)
{
    size_t b = name_hash(s->bucket);
    for (struct local_scope *e = q->buckets[b]; e; e = e->next)
        if (strcmp(e->name, s->bucket) == 0) return e;
    if (q->n >= LOCAL_MAX_ENTRIES) local_clear(q);
    struct local_scope *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    util_strlcpy(e->name, s->bucket, sizeof e->name);
    e->r = s->l.rpm ? (double)(s->l.rpm + share - 1) / share : 0;
    e->t = s->l.tpm ? (double)(s->l.tpm + share - 1) / share : 0;
    e->rt = e->tt = util_now_ms();
    e->d.idx = e->m.idx = -1;
    e->next = q->buckets[b];
    q->buckets[b] = e;
    q->n++;
    return e;
}

static double share_of(uint64_t limit, unsigned share)
{
    return (double)(limit + share - 1) / share;
}

static double refill(double lvl, uint64_t *ts, double cap, uint64_t now)
{
    lvl += (double)(now - *ts) * cap / 60000.0;
    *ts = now;
    return lvl > cap ? cap : lvl;
}

/* Restarts w at window idx from Redis's counter seen (0: a window not seen). */
static void window_restart(struct local_window *w, long idx, long seen)
{
    *w = (struct local_window){idx, seen, 0, w->gen + 1};
}

/* Moves w to window idx; a window it has not seen starts empty. */
static void window_at(struct local_window *w, long idx)
{
    if (w->idx != idx) window_restart(w, idx, 0);
}

/* Whether tokens more fit this worker's share of what is left of a calendar
 * window with the given limit. A request larger than the share itself fits an
 * untouched share (as one larger than a worker's tpm bucket fits a full one),
 * so each worker may overshoot its share by one request, never the window by
 * more than that per worker; one larger than all that is left never fits. */
static bool window_fits(const struct local_window *w, uint64_t limit, unsigned share, long tokens)
{
    long lim = (long)limit;
    long left = lim - (w->seen < lim ? w->seen : lim);
    double mine = share_of((uint64_t)left, share);
    if (tokens > left) return false;
    return (double)w->spent + ((double)tokens < mine ? (double)tokens : mine) <= mine;
}

/* Remembers the day and month counters an answered reserve reports for each
 * scope (the script adds them when some scope has such a window): where the
 * local limiter starts should Redis go away. The local spending restarts there. */
static void local_note_windows(struct quota_worker *q, const struct quota_scope *sc, int ns,
                               const redisReply *reply, unsigned share)
{
    if (reply->elements < 17 + 2 * (size_t)ns) return;
    long day = reply_int(reply, 9), month = reply_int(reply, 10);
    for (int i = 0; i < ns; i++) {
        if (!sc[i].l.tpd && !sc[i].l.tpmo) continue;
        struct local_scope *e = local_get(q, &sc[i], share);
        if (!e) continue;
        long d = reply_int(reply, 17 + 2 * (size_t)i), m = reply_int(reply, 18 + 2 * (size_t)i);
        if (sc[i].l.tpd && d >= 0) window_restart(&e->d, day, d);
        if (sc[i].l.tpmo && m >= 0 && month >= 0) window_restart(&e->m, month, m);
    }
}

/* fail_open: admits r against this worker's share of each scope's rpm, tpm and
 * concurrency, and of what is left of its day and month windows (as Redis last
 * reported them to this worker, less what it admitted since). */
static enum stage_rc local_admit(struct request *r, const struct quota_scope *sc, int ns)
{
    struct quota_worker *q = r->w->quota;
    unsigned share = worker_share(r);
    uint64_t now = util_now_ms(), wall = util_wall_ms();
    long day = usage_day_of_ms(wall), month = usage_month_of_day(day);
    long day_left_ms = (long)((uint64_t)(day + 1) * 86400000u - wall);
    long month_left_ms = (long)((uint64_t)usage_month_first_day(month + 1) * 86400000u - wall);
    struct local_scope *ls[QUOTA_MAX_SCOPES];
    long retry = 0, n = r->quota.tokens;
    bool big = false;
    const char *kind = NULL, *window = NULL;
    /* Room for every scope first: a clear in local_get would free an earlier ls[i]. */
    if (q->n + (size_t)ns > LOCAL_MAX_ENTRIES) local_clear(q);
    for (int i = 0; i < ns; i++) {
        if (!(ls[i] = local_get(q, &sc[i], share))) continue;
        const struct key_limits *l = &sc[i].l;
        if (l->rpm) {
            double cap = share_of(l->rpm, share);
            ls[i]->r = refill(ls[i]->r, &ls[i]->rt, cap, now);
            if (ls[i]->r < 1) {
                long ms = (long)ceil((1 - ls[i]->r) * 60000.0 / cap);
                if (ms >= retry) retry = ms, kind = "requests", window = "rpm";
            }
        }
        if (l->tpm) {
            /* A request larger than this worker's bucket waits for a full one and takes
             * it below zero, as Redis's bucket goes below zero when usage exceeds the
             * reservation; one larger than the whole limit never fits (as on Redis). */
            double cap = share_of(l->tpm, share), need = n < cap ? (double)n : cap;
            ls[i]->t = refill(ls[i]->t, &ls[i]->tt, cap, now);
            if (n > (long)l->tpm || ls[i]->t < need) {
                long ms = n > (long)l->tpm ? 60000 : (long)ceil((need - ls[i]->t) * 60000.0 / cap);
                big |= n > (long)l->tpm;
                if (ms >= retry) retry = ms, kind = "tokens", window = "tpm";
            }
        }
        if (l->conc && ls[i]->conc >= (unsigned)ceil(share_of(l->conc, share))) {
            if (1000 >= retry) retry = 1000, kind = "requests", window = "concurrency";
        }
        if (l->tpd) {
            window_at(&ls[i]->d, day);
            if (!window_fits(&ls[i]->d, l->tpd, share, n)) {
                big |= n > (long)l->tpd;
                if (day_left_ms >= retry) retry = day_left_ms, kind = "tokens", window = "tpd";
            }
        }
        if (l->tpmo) {
            window_at(&ls[i]->m, month);
            if (!window_fits(&ls[i]->m, l->tpmo, share, n)) {
                big |= n > (long)l->tpmo;
                if (month_left_ms >= retry) retry = month_left_ms, kind = "tokens", window = "tpmo";
            }
        }
    }
    if (kind) return reply_429(r, kind, window, retry, big);
    for (int i = 0; i < ns; i++) {
        if (!ls[i]) continue;
        if (sc[i].l.rpm) ls[i]->r -= 1;
        if (sc[i].l.tpm) ls[i]->t -= (double)n;
        if (sc[i].l.conc) ls[i]->conc++;
        if (sc[i].l.tpd) ls[i]->d.spent += n;
        if (sc[i].l.tpmo) ls[i]->m.spent += n;
    }
    r->quota.local = true;
    r->quota.local_day = day;
    r->quota.local_month = month;
    for (int i = 0; i < ns; i++) {
        if (!ls[i]) continue;
        r->quota.local_gen[i][0] = ls[i]->d.gen;
        r->quota.local_gen[i][1] = ls[i]->m.gen;
    }
    count(&qm.local_admits, 1);
    return STAGE_NEXT;
}

/* Settle of a locally admitted request: frees its slot and gives back what it
 * reserved beyond its actual usage (or charges the excess), in the tpm bucket and
 * in the day and month windows it was admitted in. */
static void local_release(struct request *r, const struct quota_scope *sc, int ns, long actual)
{
    struct quota_worker *q = r->w->quota;
    unsigned share = worker_share(r);
    long back = r->quota.tokens - actual;
    for (int i = 0; i < ns; i++) {
        const struct key_limits *l = &sc[i].l;
        if (!l->conc && !l->tpm && !l->tpd && !l->tpmo) continue;
        struct local_scope *e = local_get(q, &sc[i], share);
        if (!e) continue;
        if (l->conc && e->conc) e->conc--;
        if (l->tpm) {
            double cap = share_of(l->tpm, share);
            e->t = e->t + (double)back > cap ? cap : e->t + (double)back;
        }
        if (l->tpd && e->d.idx == r->quota.local_day && e->d.gen == r->quota.local_gen[i][0])
            e->d.spent = e->d.spent > back ? e->d.spent - back : 0;
        if (l->tpmo && e->m.idx == r->quota.local_month && e->m.gen == r->quota.local_gen[i][1])
            e->m.spent = e->m.spent > back ? e->m.spent - back : 0;
    }
}

/* ---------------------------------------------------------------- Redis down, replies */

static enum stage_rc redis_down(struct request *r, const struct quota_scope *sc, int ns)
{
    if (r->cfg->on_redis_error == QUOTA_FAIL_CLOSED) {
        count(&qm.unavailable, 1);
        return request_fail(r, 503, "server_error", "quota_unavailable", NULL, "%s",
                            "Quota accounting is unavailable; retry shortly.");
    }
    return local_admit(r, sc, ns);
}

static const char *reply_str(const redisReply *a, size_t i, char *buf, size_t cap)
{
    buf[0] = '\0';
    if (i < a->elements && a->element[i]->type == REDIS_REPLY_STRING)
        snprintf(buf, cap, "%s", a->element[i]->str);
    return buf;
}

static bool recheck_after_settles(struct request *r);

/* ---------------------------------------------------------------- grants */

static void on_grant_returned(const struct redisReply *reply, void *ud)
{
    (void)ud;
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        log_warn("quota", "a grant's unspent tokens could not be given back: %s",
                 reply ? reply->str : "Redis unreachable");
}

/* grant_sweep's give_back: the unspent part goes back on Redis (fire and
 * forget: when Redis cannot take it, those tokens stay charged until the
 * windows roll, never more than one grant per class and worker). */
static void give_back(void *ud, const struct grant *g)
{
    struct quota_worker *q = ud;
    const char *keys[QUOTA_MAX_SCOPES], *args[4 + 2 * QUOTA_MAX_SCOPES];
    size_t kl[QUOTA_MAX_SCOPES], al[4 + 2 * QUOTA_MAX_SCOPES];
    char nums[4 + 2 * QUOTA_MAX_SCOPES][24];
    long head[4] = {g->tokens, g->counts_requests ? g->requests : 0, g->day, g->month};
    int na = 0;
    for (int i = 0; i < 4; i++, na++)
        al[na] = (size_t)snprintf(nums[na], sizeof nums[na], "%ld", head[i]);
    for (int i = 0; i < g->ns; i++) {
        keys[i] = g->sc[i].bucket;
        kl[i] = strlen(g->sc[i].bucket);
        al[na] = (size_t)snprintf(nums[na], sizeof nums[na], "%u", g->sc[i].l.rpm);
        na++;
        al[na] = (size_t)snprintf(nums[na], sizeof nums[na], "%u", g->sc[i].l.tpm);
        na++;
    }
    for (int i = 0; i < na; i++)
        args[i] = nums[i];
    count(&qm.grant_returned, (unsigned long long)g->tokens);
    if (redis_eval(q->w->redis, &script_grant_return, on_grant_returned, NULL, g->ns, keys, kl, na,
                   args, al) != 0)
        log_warn("quota", "a grant's unspent tokens could not be given back: %s",
                 "Redis unreachable");
}

static void arm_grant_sweep(struct quota_worker *q, unsigned period_ms)
{
    q->grant_ms = period_ms;
    if (!q->grant_ev || evtimer_pending(q->grant_ev, NULL)) return;
    struct timeval tv = {.tv_sec = period_ms / 1000, .tv_usec = (period_ms % 1000) * 1000};
    evtimer_add(q->grant_ev, &tv);
}

static void on_grant_sweep(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct quota_worker *q = arg;
    grant_sweep(&q->grants, util_now_ms(), q->grant_ms, false, give_back, q);
    if (q->grants.n) arm_grant_sweep(q, q->grant_ms);
}

void quota_return_grants(struct quota_worker *q)
{
    if (!q) return;
    grant_sweep(&q->grants, util_now_ms(), q->grant_ms ? q->grant_ms : 1, true, give_back, q);
}

/* What a reserve reply granted, added to the class's grant. */
static void take_grant(struct quota_worker *q, const struct quota_scope *sc, int ns,
                       const redisReply *reply, unsigned period_ms)
{
    long gt = reply_int(reply, 14), gr = reply_int(reply, 15);
    if (gt <= 0) return;
    /* Straight back when the table is full, or the worker is on its way out (a top-up
     * answered after exit_soon gave the grants back would never be spent). */
    struct grant *g = q->w->draining ? NULL : grant_get(&q->grants, sc, ns, true);
    if (!g) {
        struct grant tmp = {.ns = ns, .tokens = gt, .requests = gr, .counts_requests = gr > 0};
        memcpy(tmp.sc, sc, (size_t)ns * sizeof *sc);
        tmp.day = reply_int(reply, 9);
        tmp.month = reply_int(reply, 10);
        give_back(q, &tmp);
        return;
    }
    long day = reply_int(reply, 9), month = reply_int(reply, 10);
    if ((g->tokens > 0 || g->requests > 0) && (g->day != day || g->month != month)) {
        give_back(q, g); /* taken in a window that has ended */
        g->tokens = g->requests = 0;
    }
    struct grant_headers h = {reply_int(reply, 3), reply_int(reply, 4), reply_int(reply, 5),
                              reply_int(reply, 6), reply_int(reply, 7), reply_int(reply, 8)};
    grant_add(g, gt, gr, day, month, &h, util_now_ms(), period_ms);
    count(&qm.grant_tokens, (unsigned long long)gt);
    arm_grant_sweep(q, period_ms);
}

/* A grant request whose answer never came (Redis went away) blocks no later one
 * for longer than this. */
#define ASK_TIMEOUT_MS 1000

/* A grant request on its own (the class's grant ran low): its class and period. */
struct grant_ask {
    struct quota_worker *q;
    struct quota_scope sc[QUOTA_MAX_SCOPES];
    int ns;
    unsigned period_ms;
};

#define MAX_RESERVE_ARGS (7 + 5 * QUOTA_MAX_SCOPES)

/* Sends the reserve script for scopes sc: `tokens` and `requests` (0 or 1) for
 * a request, plus a grant of want_t/want_r. */
static int send_script(struct redis *redis, const struct quota_scope *sc, int ns,
                       const char *member, long tokens, long requests, long want_t, long want_r,
                       unsigned lease_ms, unsigned grant_ms, redis_reply_cb cb, void *ud)
{
    const char *keys[2 * QUOTA_MAX_SCOPES], *args[MAX_RESERVE_ARGS];
    size_t kl[2 * QUOTA_MAX_SCOPES], al[MAX_RESERVE_ARGS];
    char nums[MAX_RESERVE_ARGS][24];
    int na = 0;
    for (int i = 0; i < ns; i++) {
        keys[2 * i] = sc[i].bucket;
        kl[2 * i] = strlen(sc[i].bucket);
        keys[2 * i + 1] = sc[i].conc;
        kl[2 * i + 1] = strlen(sc[i].conc);
    }
    args[na] = member;
    al[na++] = strlen(member);
    long head[6] = {tokens, (long)lease_ms, requests, want_t, want_r, (long)grant_ms};
    for (int i = 0; i < 6; i++) {
        al[na] = (size_t)snprintf(nums[na], sizeof nums[na], "%ld", head[i]);
        args[na] = nums[na];
        na++;
    }
    for (int i = 0; i < ns; i++) {
        const uint64_t v[5] = {sc[i].l.rpm, sc[i].l.tpm, sc[i].l.tpd, sc[i].l.tpmo, sc[i].l.conc};
        for (int j = 0; j < 5; j++) {
            al[na] = (size_t)snprintf(nums[na], sizeof nums[na], "%" PRIu64, v[j]);
            args[na] = nums[na];
            na++;
        }
    }
    if (want_t > 0) count(&qm.grant_asks, 1);
    return redis_eval(redis, &script_reserve, cb, ud, 2 * ns, keys, kl, na, args, al);
}

static void on_grant_ask(const struct redisReply *reply, void *ud)
{
    struct grant_ask *a = ud;
    struct grant *g = grant_get(&a->q->grants, a->sc, a->ns, false);
    if (g) g->asking_until_ms = 0;
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements >= 17)
        take_grant(a->q, a->sc, a->ns, reply, a->period_ms);
    free(a);
}

/* Tops up g in the background once it runs below half of what was asked. */
static void top_up(struct quota_worker *q, struct grant *g, long need, unsigned period_ms)
{
    uint64_t now = util_now_ms();
    if (grant_asking(g, now) || !grant_low(g)) return;
    long want_t, want_r;
    grant_want(g, need, &want_t, &want_r);
    if (want_t <= 0) return;
    struct grant_ask *a = malloc(sizeof *a);
    if (!a) return;
    a->q = q;
    memcpy(a->sc, g->sc, (size_t)g->ns * sizeof *g->sc);
    a->ns = g->ns;
    a->period_ms = period_ms;
    g->asked_t = want_t;
    g->asked_r = want_r;
    if (send_script(q->w->redis, g->sc, g->ns, "", 0, 0, want_t, want_r, 0, period_ms, on_grant_ask,
                    a) != 0) {
        free(a);
        return;
    }
    g->asking_until_ms = now + ASK_TIMEOUT_MS;
}

/* Admits r from its class's grant: no round trip. The request is reserved as
 * far as settle is concerned (its tokens were debited on Redis with the grant). */
static bool admit_from_grant(struct request *r, struct grant *g)
{
    struct quota_worker *q = r->w->quota;
    uint64_t now = util_now_ms();
    unsigned period = r->cfg->quota_grant_ms;
    long day = usage_day_of_ms(util_wall_ms());
    if (!grant_current(g, day, usage_month_of_day(day))) {
        /* Debited before midnight (or the month's end): back to that window, and
         * this request is reserved in today's. */
        give_back(q, g);
        g->tokens = g->requests = 0;
        g->asked_t = g->asked_r = 0;
        return false;
    }
    grant_demand(g, r->quota.tokens, now, period);
    if (!grant_take(g, r->quota.tokens, now)) return false;
    struct request_quota *rq = &r->quota;
    struct grant_headers h;
    grant_headers_now(g, &h);
    rq->redis = true;
    rq->have_headers = true;
    rq->day = g->day;
    rq->month = g->month;
    rq->req_limit = h.req_limit;
    rq->req_remaining = h.req_remaining;
    rq->req_reset_ms = h.req_reset_ms;
    rq->tok_limit = h.tok_limit;
    rq->tok_remaining = h.tok_remaining;
    rq->tok_reset_ms = h.tok_reset_ms;
    count(&qm.grant_admits, 1);
    top_up(q, g, r->quota.tokens, period);
    quota_add_headers(r);
    return true;
}

/* ---------------------------------------------------------------- reserve */

static void on_reserve(const struct redisReply *reply, void *ud)
{
    struct request *r = ud;
    r->quota.reserving = false;
    if (reply) promhist_observe(&reserve_hist, util_now_us() - r->quota.sent_us);
    bool answered = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements >= 17;
    bool asked = answered && reply_int(reply, 16) > 0;
    /* The scopes: for grants and the fail-open limiter only (not on the plain path). */
    struct quota_scope sc[QUOTA_MAX_SCOPES];
    int ns = 0;
    bool windows = answered && reply->elements > 17; /* day/month counters follow */
    if (!answered || asked || windows || r->cfg->quota_grant_ms)
        ns = quota_scopes(r->key, r->oai.model, r->cfg->redis_prefix, sc);
    if (windows) local_note_windows(r->w->quota, sc, ns, reply, worker_share(r));
    if (asked) {
        struct grant *g = grant_get(&r->w->quota->grants, sc, ns, false);
        if (g) g->asking_until_ms = 0; /* the ask was this one */
        take_grant(r->w->quota, sc, ns, reply, r->cfg->quota_grant_ms);
    }
    if (r->finished) {
        if (r->quota.settle_due) { /* it ended while this reply was out: settle it now */
            if (answered && reply_int(reply, 0) == 1) {
                r->quota.redis = true;
                r->quota.day = reply_int(reply, 9);
                r->quota.month = reply_int(reply, 10);
            }
            r->quota.settle_due = false;
            quota_settle(r);
        }
        request_release(r);
        return;
    }
    enum stage_rc rc;
    if (!answered) {
        if (reply && reply->type == REDIS_REPLY_ERROR)
            log_warn("quota", "reserve script failed: %s", reply->str);
        rc = redis_down(r, sc, ns);
    } else {
        struct request_quota *q = &r->quota;
        q->have_headers = true;
        q->req_limit = reply_int(reply, 3);
        q->req_remaining = reply_int(reply, 4);
        q->req_reset_ms = reply_int(reply, 5);
        q->tok_limit = reply_int(reply, 6);
        q->tok_remaining = reply_int(reply, 7);
        q->tok_reset_ms = reply_int(reply, 8);
        q->day = reply_int(reply, 9);
        q->month = reply_int(reply, 10);
        if (reply_int(reply, 0) == 1) {
            q->redis = true;
            /* A grant taken with this request counts in what the client may still use. */
            struct grant *g =
                r->cfg->quota_grant_ms ? grant_get(&r->w->quota->grants, sc, ns, false) : NULL;
            if (g && g->expires_ms > util_now_ms()) {
                struct grant_headers h = {q->req_limit, q->req_remaining, q->req_reset_ms,
                                          q->tok_limit, q->tok_remaining, q->tok_reset_ms};
                grant_headers_add(g, &h);
                q->tok_remaining = h.tok_remaining;
                q->req_remaining = h.req_remaining;
            }
            quota_add_headers(r);
            rc = STAGE_NEXT;
        } else if (recheck_after_settles(r)) {
            request_release(r); /* the re-sent reserve holds its own reference */
            return;
        } else {
            char kind[16], window[16];
            reply_str(reply, 1, kind, sizeof kind);
            reply_str(reply, 12, window, sizeof window);
            rc = reply_429(r, strcmp(kind, "tokens") == 0 ? "tokens" : "requests", window,
                           reply_int(reply, 2), reply_int(reply, 11) == 1);
        }
    }
    if (rc == STAGE_NEXT) request_resume(r);
    request_release(r);
}

static void new_member(char out[40])
{
    uint8_t b[16];
    static const char digits[] = "0123456789abcdef";
    if (util_random_bytes(b, sizeof b) != 0) memset(b, 0, sizeof b);
    memcpy(out, "u_", 2);
    for (int i = 0; i < 16; i++) {
        out[2 + 2 * i] = digits[b[i] >> 4];
        out[3 + 2 * i] = digits[b[i] & 15];
    }
    out[34] = '\0';
}

/* Makes the upstream body carry what the reservation assumed: a completion cap,
 * and usage in the last stream chunk (stripped again if the client did not ask). */
static void adjust_upstream_body(struct request *r, long cap)
{
    struct oai_request *o = &r->oai;
    if (o->endpoint == OAI_EMBEDDINGS || !o->root) return;
    if (o->max_tokens < 0) { /* absent or null: a null one is replaced, not followed by a second */
        cJSON_DeleteItemFromObjectCaseSensitive(o->root, "max_tokens");
        cJSON_AddNumberToObject(o->root, "max_tokens", (double)cap);
    }
    if (o->stream && !o->include_usage) {
        cJSON *so = cJSON_GetObjectItemCaseSensitive(o->root, "stream_options");
        if (!cJSON_IsObject(so)) {
            cJSON_DeleteItemFromObjectCaseSensitive(o->root, "stream_options");
            so = cJSON_AddObjectToObject(o->root, "stream_options");
        }
        if (so) {
            cJSON_DeleteItemFromObjectCaseSensitive(so, "include_usage");
            cJSON_AddTrueToObject(so, "include_usage");
            r->usage.strip = true;
        }
    }
}

/* Sends r's reserve script (holding r until the reply), asking for a grant
 * along when its class has the demand; 0, or -1 when Redis cannot take it. */
static int send_reserve(struct request *r, const struct quota_scope *sc, int ns)
{
    long want_t = 0, want_r = 0;
    struct grant *g = NULL;
    if (r->cfg->quota_grant_ms && grant_class_ok(sc, ns) &&
        (g = grant_get(&r->w->quota->grants, sc, ns, false)) && !grant_asking(g, util_now_ms())) {
        grant_want(g, r->quota.tokens, &want_t, &want_r);
        if (want_t > 0) {
            g->asked_t = want_t;
            g->asked_r = want_r;
        }
    }
    request_hold(r);
    r->quota.sent_us = util_now_us();
    if (send_script(r->w->redis, sc, ns, r->quota.member, r->quota.tokens, 1, want_t, want_r,
                    r->cfg->quota_lease_ms, r->cfg->quota_grant_ms, on_reserve, r) != 0) {
        request_release(r);
        return -1;
    }
    r->quota.reserving = true;
    if (want_t > 0) g->asking_until_ms = util_now_ms() + ASK_TIMEOUT_MS;
    redis_flush(r->w->redis); /* on the critical path: send now, not next loop turn */
    return 0;
}

/* A refusal while this worker still queues settles (their refunds and freed
 * slots not yet on Redis), or holds an unspent grant of the class too small for
 * this request, is checked once more behind them: neither batching settles nor
 * this worker's grants turn into a 429 the client would not have had without
 * them. Commands on one connection run in order, so the retry sees every
 * earlier settle and give-back. */
static bool recheck_after_settles(struct request *r)
{
    struct quota_worker *q = r->w->quota;
    if (r->quota.rechecked || !q) return false;
    struct quota_scope sc[QUOTA_MAX_SCOPES];
    int ns = quota_scopes(r->key, r->oai.model, r->cfg->redis_prefix, sc);
    struct grant *g = grant_get(&q->grants, sc, ns, false);
    bool held = g && (g->tokens > 0 || g->requests > 0);
    if (q->n_batch == 0 && !held) return false;
    r->quota.rechecked = true;
    quota_flush(q);
    if (held) {
        give_back(q, g);
        g->tokens = g->requests = 0;
    }
    return send_reserve(r, sc, ns) == 0;
}

enum stage_rc quota_reserve(struct request *r)
{
    if (!r->key) return STAGE_NEXT;
    const struct config *cfg = r->cfg;
    long cap = r->oai.max_tokens >= 0 ? r->oai.max_tokens
               : r->key->max_tokens   ? (long)r->key->max_tokens
                                      : (long)cfg->default_max_tokens;
    r->quota.tokens = quota_estimate(&r->oai, cap, &r->quota.prompt_est);
    /* A local engine whose tokenizer is loaded: its own prompt count instead of the estimate. */
    long exact;
    if (r->target.provider && localtok_count(r->target.provider->tok, &r->oai, &exact) == 0) {
        r->quota.tokens += exact - r->quota.prompt_est;
        r->quota.prompt_est = exact;
    }
    new_member(r->quota.member);
    adjust_upstream_body(r, cap);

    struct quota_scope sc[QUOTA_MAX_SCOPES];
    int ns = quota_scopes(r->key, r->oai.model, cfg->redis_prefix, sc);
    if (ns == 0) return STAGE_NEXT;
    struct quota_worker *q = r->w->quota;
    if (cfg->quota_grant_ms && grant_class_ok(sc, ns)) {
        struct grant *g = grant_get(&q->grants, sc, ns, true);
        if (g) {
            arm_grant_sweep(q, cfg->quota_grant_ms); /* idle classes are freed by the sweep */
            if (admit_from_grant(r, g)) return STAGE_NEXT;
        }
    }
    if (send_reserve(r, sc, ns) != 0) return redis_down(r, sc, ns);
    return STAGE_ASYNC;
}

/* ---------------------------------------------------------------- settle */

/* A settle call in flight; keeps the script's arguments for the spool. */
struct settle_ctx {
    struct config *cfg; /* one reference: the spool path */
    int nk, na;
    const char **argv; /* nk keys then na args */
    size_t *lens;
};

static void settle_free(struct settle_ctx *s)
{
    config_unref(s->cfg);
    free(s);
}

static void spool(struct settle_ctx *s)
{
    count(&qm.spooled, 1);
    if (usage_spool_append(s->cfg->usage_spool, s->nk, s->argv, s->lens, s->na, s->argv + s->nk,
                           s->lens + s->nk) != 0)
        log_error("usage", "cannot append to the usage spool %s: a usage record is lost",
                  s->cfg->usage_spool);
}

#define MAX_SETTLE_ARGS 64
#define SETTLE_STRBUF   4096

/* Appends one string argument to the settle call being built. */
struct argv_builder {
    const char *v[MAX_SETTLE_ARGS];
    size_t len[MAX_SETTLE_ARGS];
    int n;
    char buf[SETTLE_STRBUF];
    size_t used;
};

static void add_arg(struct argv_builder *b, const char *s, size_t len)
{
    if (b->n >= MAX_SETTLE_ARGS) return;
    b->v[b->n] = s;
    b->len[b->n++] = len;
}

static void add_str(struct argv_builder *b, const char *s)
{
    add_arg(b, s ? s : "", s ? strlen(s) : 0);
}

static void add_fmt(struct argv_builder *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void add_fmt(struct argv_builder *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = sizeof b->buf - b->used;
    int n = vsnprintf(b->buf + b->used, room, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= room) n = 0, b->buf[b->used] = '\0';
    add_arg(b, b->buf + b->used, (size_t)n);
    b->used += (size_t)n + 1;
}

void quota_settle(struct request *r)
{
    struct key_record *k = r->key;
    if (!k || (r->kind != REQ_CHAT && r->kind != REQ_COMPLETIONS && r->kind != REQ_EMBEDDINGS))
        return;
    if (r->quota.reserving) {
        /* Ended (the client left, the worker stops) before its reserve's reply: what
         * to settle is known only then, so on_reserve settles it. */
        r->quota.settle_due = true;
        return;
    }
    const struct config *cfg = r->cfg;
    long prompt = 0, completion = 0, cached = 0;
    bool estimated = false;
    if (r->usage.reported) {
        prompt = r->usage.prompt;
        completion = r->usage.completion;
        cached = r->usage.cached;
    } else if (r->t_up_us && (r->status == 200 || r->status == 499)) {
        /* Cut off before the upstream's usage: the reserved prompt count (exact for a local
         * engine with its tokenizer, else the estimate) plus one token per content chunk
         * seen (relayed, or parsed for a client that left; the granularity OpenAI-compatible
         * servers stream at). The completion part is a guess either way, so the record stays
         * `estimated`. */
        prompt = r->quota.prompt_est;
        completion = r->usage.chunks;
        estimated = true;
    }
    /* A cached answer costs nothing upstream and, unless its route says so, no tokens. */
    long actual = r->usage.from_cache && !r->usage.charge_cached ? 0 : prompt + completion;
    if (!r->quota.member[0]) new_member(r->quota.member);

    struct quota_scope sc[QUOTA_MAX_SCOPES];
    int ns = quota_scopes(k, r->oai.model, cfg->redis_prefix, sc);
    if (r->quota.local) local_release(r, sc, ns, actual);
    if (!r->quota.redis && !r->quota.local && actual == 0) ns = 0;

    const char *model = r->oai.model ? r->oai.model : "";
    const struct model_conf *mc = r->oai.model ? config_find_model(cfg, r->oai.model) : NULL;
    long long cost = mc && !r->usage.from_cache ? ((long long)prompt * mc->price_prompt +
                                                   (long long)completion * mc->price_completion) /
                                                      1000
                                                : 0;
    uint64_t ts = util_wall_ms();
    char day[9];
    usage_day_string(usage_day_of_ms(ts), day);

    struct argv_builder *b = malloc(sizeof *b);
    if (!b) return;
    b->n = 0;
    b->used = 0;
    for (int i = 0; i < ns; i++) {
        add_str(b, sc[i].bucket);
        add_str(b, sc[i].conc);
    }
    add_fmt(b, "%susage", cfg->redis_prefix);
    add_fmt(b, "%susage:{%s}:seen:%s", cfg->redis_prefix, k->tenant, r->quota.member);
    add_fmt(b, "%susage:{%s}:%s", cfg->redis_prefix, k->tenant, day);
    int nk = b->n;
    add_str(b, r->quota.member);
    add_fmt(b, "%ld", r->quota.redis ? r->quota.tokens : 0);
    add_fmt(b, "%ld", actual);
    add_fmt(b, "%ld", r->quota.day);
    add_fmt(b, "%ld", r->quota.month);
    add_fmt(b, "%d", ns);
    for (int i = 0; i < ns; i++)
        add_fmt(b, "%u", sc[i].l.tpm);
    add_fmt(b, "%u", cfg->usage_stream_maxlen);
    add_fmt(b, "%lu", (unsigned long)cfg->usage_retention_days * 86400ul);
    add_fmt(b, "%s|%.200s|", k->id, model);
    add_fmt(b, "%ld", prompt);
    add_fmt(b, "%ld", completion);
    add_fmt(b, "%ld", cached);
    add_fmt(b, "%lld", cost);
    add_fmt(b, "%d", r->status >= 400 || r->error ? 1 : 0);
    /* The record (XADD field/value pairs). */
    add_str(b, "ts");
    add_fmt(b, "%llu", (unsigned long long)ts);
    add_str(b, "request_id");
    add_str(b, r->id);
    add_str(b, "usage_id");
    add_str(b, r->quota.member);
    add_str(b, "tenant");
    add_str(b, k->tenant);
    add_str(b, "key_id");
    add_str(b, k->id);
    add_str(b, "model");
    add_fmt(b, "%.200s", model);
    add_str(b, "provider");
    add_str(b, r->target.provider ? r->target.provider->name : "");
    add_str(b, "served_model");
    add_fmt(b, "%.200s", r->target.upstream_model ? r->target.upstream_model : "");
    add_str(b, "prompt_tokens");
    add_fmt(b, "%ld", prompt);
    add_str(b, "completion_tokens");
    add_fmt(b, "%ld", completion);
    add_str(b, "cached_tokens");
    add_fmt(b, "%ld", cached);
    add_str(b, "status");
    add_fmt(b, "%d", r->status);
    add_str(b, "error");
    add_str(b, r->error ? r->error : "");
    add_str(b, "latency_ms");
    add_fmt(b, "%.3f", (double)(util_now_us() - r->t0_us) / 1000.0);
    add_str(b, "cost_microusd");
    add_fmt(b, "%lld", cost);
    add_str(b, "estimated");
    add_str(b, estimated ? "1" : "0");
    LG_ASSERT(b->n < MAX_SETTLE_ARGS);

    /* One block: the context, pointers, lengths, then the bytes. */
    size_t bytes = 0;
    for (int i = 0; i < b->n; i++)
        bytes += b->len[i] + 1;
    struct settle_ctx *s =
        malloc(sizeof *s + (size_t)b->n * (sizeof(char *) + sizeof(size_t)) + bytes);
    if (!s) {
        free(b);
        log_error("usage", "out of memory: a usage record is lost");
        return;
    }
    s->cfg = config_ref(r->cfg);
    s->nk = nk;
    s->na = b->n - nk;
    s->argv = (const char **)(s + 1);
    s->lens = (size_t *)(s->argv + b->n);
    char *p = (char *)(s->lens + b->n);
    for (int i = 0; i < b->n; i++) {
        memcpy(p, b->v[i], b->len[i]);
        p[b->len[i]] = '\0';
        s->argv[i] = p;
        s->lens[i] = b->len[i];
        p += b->len[i] + 1;
    }
    free(b);
    struct quota_worker *q = r->w->quota; /* every running worker has one */
    count(&qm.settles, 1);
    q->batch[q->n_batch++] = s;
    if (q->n_batch == SETTLE_BATCH_MAX) {
        quota_flush(q);
    } else if (q->n_batch == 1) {
        event_active(q->flush_ev, EV_TIMEOUT, 0); /* after this turn's other events */
    }
}

/* ---------------------------------------------------------------- settle batches */

struct batch_call {
    int n;
    struct settle_ctx *s[];
};

static void on_settle_batch(const struct redisReply *reply, void *ud)
{
    struct batch_call *c = ud;
    bool failed = !reply || reply->type == REDIS_REPLY_ERROR;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        log_warn("usage", "settle script failed: %s; %d record(s) spooled", reply->str, c->n);
    for (int i = 0; i < c->n; i++) {
        if (failed) spool(c->s[i]); /* replays are idempotent (dedup on the member) */
        settle_free(c->s[i]);
    }
    free(c);
}

void quota_flush(struct quota_worker *q)
{
    if (!q || q->n_batch == 0) return;
    if (q->flush_ev) evtimer_del(q->flush_ev);
    int n = q->n_batch, nk = 0, na = 1 + 2 * n;
    q->n_batch = 0;
    for (int i = 0; i < n; i++)
        nk += q->batch[i]->nk, na += q->batch[i]->na;
    struct batch_call *c = malloc(sizeof *c + (size_t)n * sizeof c->s[0]);
    const char **v = malloc((size_t)(nk + na) * sizeof *v);
    size_t *l = malloc((size_t)(nk + na) * sizeof *l);
    char(*counts)[12] = malloc((size_t)(1 + 2 * n) * sizeof *counts);
    int rc = -1;
    if (c && v && l && counts) {
        c->n = n;
        memcpy(c->s, q->batch, (size_t)n * sizeof c->s[0]);
        int kv = 0, av = nk, ci = 0;
        l[av] = (size_t)snprintf(counts[ci], sizeof counts[ci], "%d", n);
        v[av++] = counts[ci++];
        for (int i = 0; i < n; i++) {
            const struct settle_ctx *s = q->batch[i];
            l[av] = (size_t)snprintf(counts[ci], sizeof counts[ci], "%d", s->nk);
            v[av++] = counts[ci++];
            l[av] = (size_t)snprintf(counts[ci], sizeof counts[ci], "%d", s->na);
            v[av++] = counts[ci++];
        }
        for (int i = 0; i < n; i++) {
            const struct settle_ctx *s = q->batch[i];
            memcpy(v + kv, s->argv, (size_t)s->nk * sizeof *v);
            memcpy(l + kv, s->lens, (size_t)s->nk * sizeof *l);
            kv += s->nk;
            memcpy(v + av, s->argv + s->nk, (size_t)s->na * sizeof *v);
            memcpy(l + av, s->lens + s->nk, (size_t)s->na * sizeof *l);
            av += s->na;
        }
        rc = redis_eval(q->w->redis, &script_settle_batch, on_settle_batch, c, nk, v, l, na, v + nk,
                        l + nk);
        if (rc == 0) count(&qm.settle_calls, 1);
    }
    free(v);
    free(l);
    free(counts);
    if (rc != 0) {
        for (int i = 0; i < n; i++) {
            spool(q->batch[i]);
            settle_free(q->batch[i]);
        }
        free(c);
    }
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    quota_flush(arg);
}

/* ---------------------------------------------------------------- per worker */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct quota_worker *q = arg;
    usage_replay_tick(q->replay);
}

struct quota_worker *quota_worker_new(struct worker *w)
{
    struct quota_worker *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->w = w;
    q->flush_ev = evtimer_new(w->base, on_flush, q);
    q->grant_ev = evtimer_new(w->base, on_grant_sweep, q);
    if (!q->flush_ev || !q->grant_ev) {
        if (q->grant_ev) event_free(q->grant_ev);
        if (q->flush_ev) event_free(q->flush_ev);
        free(q);
        return NULL;
    }
    /* Worker 0 replays the spool (also what an earlier run left behind). */
    if (w->index == 0 && w->cfg->redis_keys) {
        q->replay = usage_replay_new(w->redis, w->cfg->usage_spool);
        q->tick = event_new(w->base, -1, EV_PERSIST, on_tick, q);
        if (!q->replay || !q->tick) {
            quota_worker_free(q);
            return NULL;
        }
        struct timeval tv = {.tv_sec = REPLAY_TICK_MS / 1000,
                             .tv_usec = (REPLAY_TICK_MS % 1000) * 1000};
        event_add(q->tick, &tv);
    }
    return q;
}

void quota_worker_free(struct quota_worker *q)
{
    if (!q) return;
    for (int i = 0; i < q->n_batch; i++) { /* never sent: replayed at the next start */
        spool(q->batch[i]);
        settle_free(q->batch[i]);
    }
    q->n_batch = 0;
    if (q->flush_ev) event_free(q->flush_ev);
    if (q->grant_ev) event_free(q->grant_ev);
    grant_table_clear(&q->grants); /* leftovers were given back at drain (quota_return_grants) */
    if (q->tick) event_free(q->tick);
    usage_replay_free(q->replay);
    local_clear(q);
    free(q);
}
