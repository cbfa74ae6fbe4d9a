/* The response-cache stage: policy, lookup, hit replay, single flight and the
 * store of complete answers. Keys, entries, SSE replay and the Redis commands
 * are cache/rcache.c's; this file ties them to the request pipeline.
 *
 * Single flight: the first request that misses becomes its worker's leader for
 * that key and takes a short Redis lock (SET NX PX) so leaders on other workers
 * and replicas poll for its answer instead of going upstream too. Identical
 * requests on the same worker park on the leader's flight with a timer
 * (cache.max_wait_ms). When the leader ends, its complete answer is stored and
 * handed to every waiter; if it failed, the waiters go upstream themselves. */
#include "gateway/cachestage.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "cache/rcache.h"
#include "cache/rcache_l1.h"
#include "common/log.h"
#include "common/util.h"
#include "gateway/relay.h"
#include "gateway/server.h"
#include "gateway/worker.h"
#include "routing/policy.h"

#define FLIGHT_BUCKETS  1024
#define MAX_KEY_HEADERS 32 /* relay.c forwards at most this many headers */
#define SSE_PIECE_BYTES 64 /* content bytes per replayed chunk */
#define POLL_FIRST_MS   5  /* lock wait: first poll, doubling ... */
#define POLL_MAX_MS     50 /* ... up to this */
#define RKEY_MAX        (80 + RCACHE_SCOPE_MAX + 2 * RCACHE_KEY_LEN)

struct cachestage_metrics cachestage_metrics;

/* An answer one request produced and others replay (refcounted, one thread). */
struct answer {
    int refs;
    enum rcache_kind kind;
    long prompt_tokens, completion_tokens;
    uint64_t created_ms;
    size_t len;
    char body[];
};

/* States of a request's cache state:
 *   BYPASS   - the cache is not used (policy, Cache-Control, Redis down, the client of a
 *              leader or storer left: cachestage_request_orphaned)
 *   LOOKUP   - GET in flight
 *   CLAIM    - miss: the claim script (entry or lock) in flight
 *   LOCKWAIT - another worker or replica holds the lock: polling on a timer
 *   LEADER   - upstream; identical requests wait on our flight; stored at the end
 *   STORER   - upstream without a flight (no-cache, stale, released waiter); stored
 *   WAITER   - parked on another request's flight, with a timer
 *   SERVED   - answered from the cache (hit or coalesced) */
enum crq_state {
    CRQ_BYPASS,
    CRQ_LOOKUP,
    CRQ_CLAIM,
    CRQ_LOCKWAIT,
    CRQ_LEADER,
    CRQ_STORER,
    CRQ_WAITER,
    CRQ_SERVED
};

struct flight;

struct cachestage_req {
    struct request *r;
    enum crq_state st;
    uint8_t key[RCACHE_KEY_LEN];
    char rkey[RKEY_MAX], lock[RKEY_MAX + 8], token[32];
    size_t rkey_len;
    unsigned ttl_s;
    long long max_age_ms; /* Cache-Control max-age, -1 when absent */
    bool charge;          /* hits count against token quotas */
    bool have_lock;
    /* the target the key was built for: an answer from a fallback is not stored */
    const struct provider_conf *provider;
    const char *upstream_model;
    struct flight *flight;       /* leader: ours; waiter: the one we wait on */
    struct cachestage_req *next; /* in flight->waiters */
    bool wait_hold;              /* a waiter/poller reference on r is held */
    struct event *timer;         /* waiter: bound on the wait; lock waiter: next poll */
    uint64_t deadline_ms;
    unsigned poll_ms;
    struct answer *ans; /* served from this answer (waiter: handed over by the leader) */
    /* the answer observed going to the client */
    struct rcache_asm *as;
    bool stream_done;
    char *body;
    size_t body_len;
    long prompt_tokens, completion_tokens;
};

struct flight {
    struct flight *next; /* bucket chain */
    struct cachestage_req *leader;
    struct cachestage_req *waiters, **tail;
    unsigned bucket;
};

struct cachestage_worker {
    struct worker *w;
    bool redis_down;      /* this worker saw Redis fail last */
    struct rcache_l1 *l1; /* hot entries in front of Redis (cache.l1_bytes) */
    size_t l1_max;        /* its budget, followed on config reloads */
    struct flight *buckets[FLIGHT_BUCKETS];
};

/* ---------------------------------------------------------------- small helpers */

static _Atomic unsigned workers_down;

/* One log line per outage: when the first worker sees Redis fail, and when the
 * last one sees it back. */
static void note_redis(struct cachestage_worker *cw, bool up)
{
    if (!cw || cw->redis_down == !up) return;
    cw->redis_down = !up;
    if (!up && atomic_fetch_add(&workers_down, 1) == 0)
        log_warn("rcache", "Redis unreachable: the response cache is bypassed until it is back");
    if (up && atomic_fetch_sub(&workers_down, 1) == 1)
        log_info("rcache", "Redis reachable again: the response cache is back");
}

static void set_header(struct request *r, const char *name, const char *value)
{
    if (!r->req) return;
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    evhttp_remove_header(h, name);
    evhttp_add_header(h, name, value);
}

static void answer_unref(struct answer *a)
{
    if (a && --a->refs == 0) free(a);
}

static struct answer *answer_new(enum rcache_kind kind, const char *body, size_t len, long pt,
                                 long ct, uint64_t created_ms)
{
    struct answer *a = malloc(sizeof *a + len + 1);
    if (!a) return NULL;
    a->refs = 1;
    a->kind = kind;
    a->prompt_tokens = pt;
    a->completion_tokens = ct;
    a->created_ms = created_ms;
    a->len = len;
    memcpy(a->body, body, len);
    a->body[len] = '\0';
    return a;
}

static struct rcache_entry answer_entry(const struct answer *a)
{
    return (struct rcache_entry){.kind = a->kind,
                                 .created_ms = a->created_ms,
                                 .prompt_tokens = a->prompt_tokens,
                                 .completion_tokens = a->completion_tokens,
                                 .body = a->body,
                                 .body_len = a->len};
}

static enum rcache_kind kind_of(const struct request *r)
{
    return r->kind == REQ_COMPLETIONS ? RCACHE_COMPLETIONS : RCACHE_CHAT;
}

/* ---------------------------------------------------------------- flights */

static unsigned bucket_of(const uint8_t key[RCACHE_KEY_LEN])
{
    return ((unsigned)key[0] << 8 | key[1]) % FLIGHT_BUCKETS;
}

/* The flight for rkey (prefix + scope + key: tenants never share one). */
static struct flight *flight_find(struct cachestage_worker *cw, const struct cachestage_req *c)
{
    for (struct flight *f = cw->buckets[bucket_of(c->key)]; f; f = f->next)
        if (strcmp(f->leader->rkey, c->rkey) == 0) return f;
    return NULL;
}

static struct flight *flight_new(struct cachestage_worker *cw, struct cachestage_req *leader)
{
    struct flight *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->leader = leader;
    f->tail = &f->waiters;
    f->bucket = bucket_of(leader->key);
    f->next = cw->buckets[f->bucket];
    cw->buckets[f->bucket] = f;
    leader->flight = f;
    return f;
}

static void flight_unlink_waiter(struct flight *f, struct cachestage_req *c)
{
    for (struct cachestage_req **p = &f->waiters; *p; p = &(*p)->next) {
        if (*p != c) continue;
        *p = c->next;
        if (f->tail == &c->next) f->tail = p;
        c->next = NULL;
        c->flight = NULL;
        return;
    }
}

/* The leader is done: every waiter gets ans (or, when NULL, goes upstream
 * itself) from its own timer callback, never from inside the leader's end. */
static void flight_finish(struct cachestage_worker *cw, struct flight *f, struct answer *ans)
{
    for (struct flight **p = &cw->buckets[f->bucket]; *p; p = &(*p)->next) {
        if (*p == f) {
            *p = f->next;
            break;
        }
    }
    struct cachestage_req *c = f->waiters;
    while (c) {
        struct cachestage_req *next = c->next;
        c->next = NULL;
        c->flight = NULL;
        if (ans) {
            c->ans = ans;
            ans->refs++;
        }
        evtimer_del(c->timer); /* a waiter always has its timer */
        event_active(c->timer, EV_TIMEOUT, 1);
        c = next;
    }
    f->leader->flight = NULL;
    free(f);
}

/* ---------------------------------------------------------------- replies */

/* Decimal digits of v into buf (at least 21 bytes); returns the start. */
static const char *fmt_u64(char *buf, size_t cap, uint64_t v)
{
    char *p = buf + cap;
    *--p = '\0';
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return p;
}

/* What a replay sends: the stored answer and, for a streaming client, its SSE
 * form in up to two pieces (the L1 keeps it pre-rendered). */
struct replay {
    const struct rcache_entry *e;
    const char *p1, *p2;
    size_t n1, n2;
};

/* Answers r with rp (the bytes are copied into the reply once). The request's
 * cache state, when it has one, becomes SERVED; r is ended (and may be freed). */
static void reply_replay(struct request *r, const struct replay *rp, const char *status,
                         bool charge)
{
    const struct rcache_entry *e = rp->e;
    struct evbuffer *b = evhttp_request_get_output_buffer(r->req);
    if (r->oai.stream) {
        evbuffer_add(b, rp->p1, rp->n1);
        if (rp->n2) evbuffer_add(b, rp->p2, rp->n2);
    } else {
        evbuffer_add(b, e->body, e->body_len);
    }
    /* Headers added, not replaced: nothing set them before a cache answer. */
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    evhttp_add_header(h, "Content-Type",
                      r->oai.stream ? "text/event-stream; charset=utf-8" : "application/json");
    evhttp_add_header(h, "x-request-id", r->id);
    if (r->w->draining) evhttp_add_header(h, "Connection", "close");
    if (r->oai.stream) evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_add_header(h, "x-llmgate-cache", status);
    char age[24];
    uint64_t now = util_wall_ms();
    evhttp_add_header(
        h, "Age", fmt_u64(age, sizeof age, now > e->created_ms ? (now - e->created_ms) / 1000 : 0));
    /* Metering: the answer's tokens, all of them cached; no upstream cost. */
    r->usage.reported = true;
    r->usage.prompt = e->prompt_tokens;
    r->usage.completion = e->completion_tokens;
    r->usage.cached = e->prompt_tokens + e->completion_tokens;
    r->usage.from_cache = true;
    r->usage.charge_cached = charge;
    r->status = 200;
    r->bytes_out = evbuffer_get_length(b);
    atomic_fetch_add(&cachestage_metrics.hit_bytes, r->bytes_out);
    if (r->rc) r->rc->st = CRQ_SERVED;
    server_send_reply(r->req, 200, "OK", NULL);
    request_end(r);
}

/* Answers r from a stored or coalesced answer (rendered here when streamed);
 * -1 (nothing sent) when the answer cannot be replayed. */
static int reply_answer(struct request *r, const struct rcache_entry *e, const char *status,
                        bool charge)
{
    struct replay rp = {.e = e};
    struct evbuffer *sse = NULL;
    if (r->oai.stream) {
        if (!(sse = evbuffer_new()) ||
            rcache_render_sse(e->body, e->body_len, e->kind, r->oai.include_usage, SSE_PIECE_BYTES,
                              sse) != 0) {
            if (sse) evbuffer_free(sse);
            return -1;
        }
        rp.n1 = evbuffer_get_length(sse);
        rp.p1 = (const char *)evbuffer_pullup(sse, -1);
    }
    reply_replay(r, &rp, status, charge);
    if (sse) evbuffer_free(sse);
    return 0;
}

/* Renders le's SSE replay into the L1 entry (once per entry); false when the
 * body does not render. */
static bool l1_render_sse(struct rcache_l1 *l1, const struct rcache_l1_entry *le)
{
    struct evbuffer *b = evbuffer_new();
    size_t usage_off, done_off;
    if (!b || rcache_render_sse_parts(le->e.body, le->e.body_len, le->e.kind, true, SSE_PIECE_BYTES,
                                      b, &usage_off, &done_off) != 0) {
        if (b) evbuffer_free(b);
        return false;
    }
    size_t len = evbuffer_get_length(b);
    char *sse = malloc(len ? len : 1);
    if (sse && evbuffer_remove(b, sse, len) == (int)len)
        rcache_l1_set_sse(l1, le, sse, len, usage_off, done_off); /* takes sse either way */
    else
        free(sse);
    evbuffer_free(b);
    return true;
}

/* Answers r from its worker's L1 entry; false (nothing sent) when it cannot be
 * replayed. */
static bool reply_l1(struct request *r, struct rcache_l1 *l1, const struct rcache_l1_entry *le,
                     const char *status, bool charge)
{
    struct replay rp = {.e = &le->e};
    if (r->oai.stream) {
        if (!le->sse && !l1_render_sse(l1, le)) return false;
        if (!le->sse) { /* over the budget: render for this reply only */
            return reply_answer(r, &le->e, status, charge) == 0;
        }
        rp.p1 = le->sse;
        if (r->oai.include_usage) {
            rp.n1 = le->sse_len;
        } else {
            rp.n1 = le->sse_usage_off;
            rp.p2 = le->sse + le->sse_done_off;
            rp.n2 = le->sse_len - le->sse_done_off;
        }
    }
    reply_replay(r, &rp, status, charge);
    return true;
}

/* ---------------------------------------------------------------- going upstream */

/* A stored stream must carry its usage: ask for it upstream and drop it again
 * for a client that did not (as quota.c does). */
static void want_stream_usage(struct request *r)
{
    struct oai_request *o = &r->oai;
    if (!o->stream || o->include_usage || r->usage.strip || !o->root) return;
    cJSON *so = cJSON_GetObjectItemCaseSensitive(o->root, "stream_options");
    if (!cJSON_IsObject(so)) {
        cJSON_DeleteItemFromObjectCaseSensitive(o->root, "stream_options");
        so = cJSON_AddObjectToObject(o->root, "stream_options");
    }
    if (!so) return;
    cJSON_DeleteItemFromObjectCaseSensitive(so, "include_usage");
    if (cJSON_AddTrueToObject(so, "include_usage")) r->usage.strip = true;
}

/* Continues to dispatch as leader (with a flight) or storer; the answer is
 * stored when complete. */
static void go_upstream(struct cachestage_req *c, enum crq_state st)
{
    c->st = st;
    atomic_fetch_add(&cachestage_metrics.misses, 1);
    set_header(c->r, "x-llmgate-cache", "miss");
    want_stream_usage(c->r);
}

static void bypass(struct request *r)
{
    if (r->rc) r->rc->st = CRQ_BYPASS;
    atomic_fetch_add(&cachestage_metrics.bypasses, 1);
    set_header(r, "x-llmgate-cache", "bypass");
}

/* ---------------------------------------------------------------- lookup */

static void on_get(enum rcache_result res, const char *value, size_t len, void *ud);
static void on_claim(enum rcache_result res, const char *value, size_t len, void *ud);
static void on_timer(evutil_socket_t fd, short what, void *arg);

/* The worker's L1 when the snapshot turns it on (its budget follows reloads). */
static struct rcache_l1 *l1_of(const struct request *r)
{
    struct cachestage_worker *cw = r->w->rcache;
    const struct config *cfg = r->cfg;
    if (!cw || !cw->l1) return NULL;
    size_t max = cfg->cache_l1_ttl_ms ? cfg->cache_l1_bytes : 0;
    if (max != cw->l1_max) {
        rcache_l1_set_max_bytes(cw->l1, max);
        cw->l1_max = max;
    }
    return max ? cw->l1 : NULL;
}

/* Keeps e in the L1 for cache.l1_ttl_ms, never beyond its own expiry (created +
 * the route's TTL); the entry as stored, or NULL. */
static const struct rcache_l1_entry *l1_fill(struct cachestage_req *c, struct rcache_l1 *l1,
                                             const struct rcache_entry *e)
{
    uint64_t wall = util_wall_ms(), ttl_ms = (uint64_t)c->ttl_s * 1000, life;
    uint64_t age = wall > e->created_ms ? wall - e->created_ms : 0;
    if (age >= ttl_ms) return NULL;
    life = ttl_ms - age;
    if (life > c->r->cfg->cache_l1_ttl_ms) life = c->r->cfg->cache_l1_ttl_ms;
    uint64_t now = util_now_ms();
    if (rcache_l1_put(l1, c->rkey, c->rkey_len, e, now + life) != 0) return NULL;
    return rcache_l1_get(l1, c->rkey, c->rkey_len, now);
}

/* Drops c's entry from Redis (corrupt, unreplayable) and from the L1. */
static void drop_entry(struct cachestage_req *c)
{
    struct request *r = c->r;
    struct rcache_l1 *l1 = l1_of(r);
    if (l1) rcache_l1_evict(l1, c->rkey, c->rkey_len);
    if (rcache_delete(r->w->redis, c->rkey) != 0) note_redis(r->w->rcache, false);
}

/* A stored value for c: 1 when r was answered, 0 when it is no answer for r
 * (corrupt: deleted; too old for the client's max-age: *stale set). */
static int serve_value(struct cachestage_req *c, const char *value, size_t len, const char *status,
                       bool *stale)
{
    struct request *r = c->r;
    struct rcache_entry e;
    if (rcache_entry_decode(value, len, c->key, &e) != 0 || e.kind != kind_of(r)) {
        atomic_fetch_add(&cachestage_metrics.corrupt, 1);
        log_warn("rcache", "%s: corrupt cache entry %s deleted", r->id, c->rkey);
        drop_entry(c);
        return 0;
    }
    uint64_t now = util_wall_ms();
    if (c->max_age_ms >= 0 && now > e.created_ms && now - e.created_ms > (uint64_t)c->max_age_ms) {
        *stale = true;
        return 0;
    }
    /* A leader's waiters get the same answer (copied: value dies with the callback). */
    if (c->flight && !(c->ans = answer_new(e.kind, e.body, e.body_len, e.prompt_tokens,
                                           e.completion_tokens, e.created_ms)))
        return 0;
    struct rcache_l1 *l1 = l1_of(r);
    const struct rcache_l1_entry *le = l1 ? l1_fill(c, l1, &e) : NULL;
    if (le ? !reply_l1(r, l1, le, status, c->charge)
           : reply_answer(r, &e, status, c->charge) != 0) {
        answer_unref(c->ans);
        c->ans = NULL;
        atomic_fetch_add(&cachestage_metrics.corrupt, 1);
        log_warn("rcache", "%s: cache entry %s does not replay; deleted", r->id, c->rkey);
        drop_entry(c);
        return 0;
    }
    atomic_fetch_add(
        strcmp(status, "hit") == 0 ? &cachestage_metrics.hits : &cachestage_metrics.coalesced, 1);
    return 1;
}

/* Arms c's timer (made on first use: a plain hit never needs one); false when
 * out of memory. */
static bool arm_timer(struct cachestage_req *c, unsigned ms)
{
    if (!c->timer && !(c->timer = evtimer_new(c->r->w->base, on_timer, c))) return false;
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
    return true;
}

/* Parks c on flight f until the leader ends or cache.max_wait_ms passes; false
 * (nothing changed) when out of memory. */
static bool join_flight(struct cachestage_req *c, struct flight *f)
{
    if (!arm_timer(c, c->r->cfg->cache_max_wait_ms)) return false;
    c->st = CRQ_WAITER;
    c->flight = f;
    *f->tail = c;
    f->tail = &c->next;
    request_hold(c->r);
    c->wait_hold = true;
    return true;
}

/* Sends the claim script (entry, or our lock). false when Redis is down. */
static bool send_claim(struct cachestage_req *c)
{
    struct request *r = c->r;
    request_hold(r);
    if (rcache_claim(r->w->redis, c->rkey, c->lock, c->token, r->cfg->cache_max_wait_ms, on_claim,
                     c) == 0)
        return true;
    request_release(r);
    note_redis(r->w->rcache, false);
    return false;
}

/* A miss (or an unusable entry): wait for an identical request in flight, or
 * lead one. Called from a Redis callback: resumes r when it goes upstream. */
static void after_miss(struct cachestage_req *c, bool stale)
{
    struct request *r = c->r;
    struct cachestage_worker *cw = r->w->rcache;
    if (stale || r->cfg->cache_max_wait_ms == 0) {
        go_upstream(c, CRQ_STORER);
        request_resume(r);
        return;
    }
    struct flight *f = flight_find(cw, c);
    if (f && join_flight(c, f)) return;
    util_request_id(c->token); /* unique per process: whose lock it is */
    if (f || !flight_new(cw, c)) {
        go_upstream(c, CRQ_STORER);
        request_resume(r);
        return;
    }
    c->st = CRQ_CLAIM;
    if (!send_claim(c)) {
        go_upstream(c, CRQ_LEADER);
        request_resume(r);
    }
}

static void on_get(enum rcache_result res, const char *value, size_t len, void *ud)
{
    struct cachestage_req *c = ud;
    struct request *r = c->r;
    if (r->finished) {
        request_release(r);
        return;
    }
    bool stale = false;
    if (res == RCACHE_BADTYPE) {
        /* Something else wrote another type under our key: corrupt, so a miss and
         * deleted, or every request for it would be bypassed until it expired. */
        note_redis(r->w->rcache, true);
        atomic_fetch_add(&cachestage_metrics.corrupt, 1);
        log_warn("rcache", "%s: cache entry %s is not a string; deleted", r->id, c->rkey);
        drop_entry(c);
        after_miss(c, false);
    } else if (res == RCACHE_DOWN || res == RCACHE_ERROR) {
        if (res == RCACHE_DOWN) note_redis(r->w->rcache, false);
        if (res == RCACHE_ERROR) log_warn("rcache", "%s: GET %s failed", r->id, c->rkey);
        bypass(r);
        request_resume(r);
    } else {
        note_redis(r->w->rcache, true);
        if (res != RCACHE_HIT || serve_value(c, value, len, "hit", &stale) == 0)
            after_miss(c, stale);
    }
    request_release(r);
}

static void on_claim(enum rcache_result res, const char *value, size_t len, void *ud)
{
    struct cachestage_req *c = ud;
    struct request *r = c->r;
    if (r->finished) {
        /* It ended while the claim was out: a lock it won is given back now, not
         * left to expire while identical requests everywhere wait on it. */
        if (res == RCACHE_CLAIMED && rcache_release(r->w->redis, c->lock, c->token) != 0)
            note_redis(r->w->rcache, false);
        request_release(r);
        return;
    }
    bool stale = false;
    switch (res) {
    case RCACHE_HIT:
        /* Stored since our GET (a leader elsewhere finished): coalesced when we waited. */
        note_redis(r->w->rcache, true);
        if (serve_value(c, value, len, c->st == CRQ_LOCKWAIT ? "coalesced" : "hit", &stale)) break;
        go_upstream(c, CRQ_LEADER);
        request_resume(r);
        break;
    case RCACHE_CLAIMED:
        note_redis(r->w->rcache, true);
        c->have_lock = true;
        go_upstream(c, CRQ_LEADER);
        request_resume(r);
        break;
    case RCACHE_MISS: /* the lock is someone else's: poll until it is released or stored */
        note_redis(r->w->rcache, true);
        if (c->st != CRQ_LOCKWAIT) {
            atomic_fetch_add(&cachestage_metrics.lock_waits, 1);
            c->st = CRQ_LOCKWAIT;
            c->deadline_ms = util_now_ms() + r->cfg->cache_max_wait_ms;
            c->poll_ms = POLL_FIRST_MS;
        }
        if (!arm_timer(c, c->poll_ms)) {
            go_upstream(c, CRQ_LEADER);
            request_resume(r);
            break;
        }
        c->poll_ms = c->poll_ms * 2 > POLL_MAX_MS ? POLL_MAX_MS : c->poll_ms * 2;
        break;
    default:
        if (res == RCACHE_DOWN) note_redis(r->w->rcache, false);
        go_upstream(c, CRQ_LEADER);
        request_resume(r);
    }
    request_release(r);
}

/* Waiter: the leader ended (c->ans set when it left an answer) or the wait
 * timed out. Lock waiter: time for the next poll. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct cachestage_req *c = arg;
    struct request *r = c->r;
    if (c->st == CRQ_LOCKWAIT) {
        if (util_now_ms() >= c->deadline_ms) {
            atomic_fetch_add(&cachestage_metrics.wait_timeouts, 1);
            go_upstream(c, CRQ_LEADER);
            request_resume(r);
        } else if (!send_claim(c)) {
            go_upstream(c, CRQ_LEADER);
            request_resume(r);
        }
        return;
    }
    if (c->st != CRQ_WAITER) return;
    if (c->flight) { /* timed out: the leader is still going */
        flight_unlink_waiter(c->flight, c);
        atomic_fetch_add(&cachestage_metrics.wait_timeouts, 1);
    }
    c->wait_hold = false;
    if (!r->finished) {
        struct rcache_entry e;
        if (c->ans) e = answer_entry(c->ans);
        if (c->ans && reply_answer(r, &e, "coalesced", c->charge) == 0) {
            atomic_fetch_add(&cachestage_metrics.coalesced, 1);
        } else {
            /* The leader failed or took too long: go upstream, and store what comes back. */
            go_upstream(c, CRQ_STORER);
            request_resume(r);
        }
    }
    request_release(r);
}

/* Cache-Control of the request: no-store, no-cache, max-age=N. */
static void parse_cache_control(const char *v, bool *no_store, bool *no_cache, long long *max_age)
{
    while (v && *v) {
        while (*v == ' ' || *v == ',' || *v == '\t')
            v++;
        const char *s = v;
        while (*v && *v != ',')
            v++;
        size_t n = (size_t)(v - s);
        while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
            n--;
        if (n == 8 && strncasecmp(s, "no-store", 8) == 0) *no_store = true;
        if (n == 8 && strncasecmp(s, "no-cache", 8) == 0) *no_cache = true;
        if (n > 8 && strncasecmp(s, "max-age=", 8) == 0) {
            long long a = 0;
            size_t i = 8;
            for (; i < n && s[i] >= '0' && s[i] <= '9' && a < 1000000000LL; i++)
                a = a * 10 + (s[i] - '0');
            if (i == n) *max_age = a;
        }
    }
}

/* Whether the request's sampling makes its answer reproducible. */
static bool deterministic(const cJSON *root)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "temperature");
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(root, "seed");
    return (cJSON_IsNumber(t) && t->valuedouble == 0) || cJSON_IsNumber(seed);
}

enum stage_rc cachestage_lookup(struct request *r)
{
    const struct config *cfg = r->cfg;
    if (!cfg->cache_enabled || (r->kind != REQ_CHAT && r->kind != REQ_COMPLETIONS) || !r->oai.root)
        return STAGE_NEXT;
    const struct policy_route *route = r->plan.route;
    int mode = route ? route->cache_mode : CACHE_MODE_AUTO;
    struct evkeyvalq *in = evhttp_request_get_input_headers(r->req);
    bool no_store = false, no_cache = false;
    long long max_age = -1;
    parse_cache_control(evhttp_find_header(in, "Cache-Control"), &no_store, &no_cache, &max_age);
    if (mode == CACHE_MODE_NEVER || no_store ||
        (mode == CACHE_MODE_AUTO && !deterministic(r->oai.root)) || !r->w->redis || !r->w->rcache) {
        bypass(r);
        return STAGE_NEXT;
    }
    /* The key: the body plus the headers this provider forwards upstream. */
    const struct provider_conf *provider = r->target.provider;
    struct rcache_header hs[MAX_KEY_HEADERS];
    size_t nh = 0;
    if (provider->forward_headers) {
        struct evkeyval *kv;
        TAILQ_FOREACH(kv, in, next)
        {
            if (nh == MAX_KEY_HEADERS) break;
            if (relay_forwards_header(provider, kv->key))
                hs[nh++] = (struct rcache_header){kv->key, kv->value};
        }
    }
    struct rcache_key_input ki = {
        .endpoint = r->kind == REQ_CHAT ? "chat.completions" : "completions",
        .provider = provider->name,
        .upstream_model = r->target.upstream_model,
        .body = r->oai.root,
        .headers = hs,
        .n_headers = nh,
    };
    const char *tenant = request_tenant(r);
    /* Scopes never collide with tenant ids, which are [A-Za-z0-9._-] only. */
    const char *scope = route && route->cache_scope == CACHE_SCOPE_SHARED ? "~shared"
                        : tenant                                          ? tenant
                                                                          : "~static";
    uint8_t key[RCACHE_KEY_LEN];
    char rkey[RKEY_MAX];
    int rklen;
    if (rcache_key_build(&ki, NULL, key) != 0 ||
        (rklen = rcache_redis_key(cfg->redis_prefix, scope, key, rkey, sizeof rkey, NULL, 0)) < 0) {
        bypass(r);
        return STAGE_NEXT;
    }
    bool charge = route && route->cache_charge_tokens;
    bool refresh = no_cache || max_age == 0;
    struct rcache_l1 *l1 = l1_of(r);
    if (l1 && refresh) {
        rcache_l1_evict(l1, rkey, (size_t)rklen); /* the refreshed answer replaces it */
    } else if (l1) {
        /* A hot entry answers at once: no Redis round trip, no allocation, no
         * close watch (the request never waits). */
        const struct rcache_l1_entry *le = rcache_l1_get(l1, rkey, (size_t)rklen, util_now_ms());
        if (le && le->e.kind != kind_of(r)) le = NULL;
        if (le && max_age > 0) {
            uint64_t now = util_wall_ms();
            if (now > le->e.created_ms && now - le->e.created_ms > (uint64_t)max_age * 1000)
                le = NULL; /* too old for this client: Redis may hold a newer one */
        }
        if (le) {
            if (reply_l1(r, l1, le, "hit", charge)) {
                atomic_fetch_add(&cachestage_metrics.hits, 1);
                atomic_fetch_add(&cachestage_metrics.l1_hits, 1);
                return STAGE_DONE; /* r is ended and may be freed */
            }
            rcache_l1_evict(l1, rkey, (size_t)rklen);
        }
    }

    struct cachestage_req *c = calloc(1, sizeof *c);
    if (!c) {
        bypass(r);
        return STAGE_NEXT;
    }
    r->rc = c;
    c->r = r;
    c->max_age_ms = max_age >= 0 ? max_age * 1000 : -1;
    c->ttl_s = route && route->cache_ttl_s ? route->cache_ttl_s : cfg->cache_default_ttl_s;
    c->charge = charge;
    c->provider = provider;
    c->upstream_model = r->target.upstream_model;
    memcpy(c->key, key, sizeof key);
    memcpy(c->rkey, rkey, (size_t)rklen + 1);
    c->rkey_len = (size_t)rklen;
    memcpy(c->lock, rkey, (size_t)rklen);
    memcpy(c->lock + rklen, ":lock", 6);

    if (refresh) { /* skip the lookup, refresh the entry */
        go_upstream(c, CRQ_STORER);
        return STAGE_NEXT;
    }
    struct flight *f = cfg->cache_max_wait_ms ? flight_find(r->w->rcache, c) : NULL;
    if (f && join_flight(c, f)) return STAGE_ASYNC;
    c->st = CRQ_LOOKUP;
    request_hold(r);
    if (rcache_get(r->w->redis, c->rkey, on_get, c) != 0) {
        request_release(r);
        note_redis(r->w->rcache, false);
        bypass(r);
        return STAGE_NEXT;
    }
    return STAGE_ASYNC;
}

/* ---------------------------------------------------------------- observing the answer */

static bool storing(const struct request *r)
{
    return r->rc && (r->rc->st == CRQ_LEADER || r->rc->st == CRQ_STORER);
}

bool cachestage_wants_chunks(const struct request *r)
{
    return storing(r);
}

void cachestage_observe_body(struct request *r, const cJSON *doc, const char *body, size_t len)
{
    if (!storing(r) || r->oai.stream) return;
    struct cachestage_req *c = r->rc;
    long pt, ct;
    if (len + RCACHE_HEADER_LEN > r->cfg->cache_max_entry_bytes) {
        atomic_fetch_add(&cachestage_metrics.too_large, 1);
        return;
    }
    if (!rcache_answer_cacheable(doc, &pt, &ct)) return;
    free(c->body);
    if (!(c->body = malloc(len))) return;
    memcpy(c->body, body, len);
    c->body_len = len;
    c->prompt_tokens = pt;
    c->completion_tokens = ct;
}

void cachestage_observe_chunk(struct request *r, const cJSON *chunk)
{
    if (!storing(r)) return;
    struct cachestage_req *c = r->rc;
    if (!c->as && !(c->as = rcache_asm_new(kind_of(r), r->cfg->cache_max_entry_bytes))) return;
    rcache_asm_feed(c->as, chunk);
}

void cachestage_stream_complete(struct request *r)
{
    if (storing(r)) r->rc->stream_done = true;
}

/* ---------------------------------------------------------------- the end */

static void on_stored(enum rcache_result res, const char *value, size_t len, void *ud)
{
    (void)value;
    (void)len;
    (void)ud;
    if (res == RCACHE_DOWN || res == RCACHE_ERROR)
        atomic_fetch_add(&cachestage_metrics.store_failures, 1);
}

/* The complete, cacheable answer r produced, or NULL. */
static struct answer *produced_answer(struct request *r)
{
    struct cachestage_req *c = r->rc;
    if (r->status != 200 || r->error || r->target.provider != c->provider ||
        !r->target.upstream_model || strcmp(r->target.upstream_model, c->upstream_model) != 0)
        return NULL;
    if (c->body) {
        return answer_new(kind_of(r), c->body, c->body_len, c->prompt_tokens, c->completion_tokens,
                          util_wall_ms());
    }
    if (!c->stream_done || !c->as) return NULL;
    size_t len;
    long pt, ct;
    char *body = rcache_asm_finish(c->as, &len, &pt, &ct);
    if (!body) return NULL;
    struct answer *a = NULL;
    if (len + RCACHE_HEADER_LEN <= r->cfg->cache_max_entry_bytes)
        a = answer_new(kind_of(r), body, len, pt, ct, util_wall_ms());
    else
        atomic_fetch_add(&cachestage_metrics.too_large, 1);
    free(body);
    return a;
}

static void store(struct request *r, const struct answer *a)
{
    struct cachestage_req *c = r->rc;
    struct rcache_entry e = {.kind = a->kind,
                             .created_ms = a->created_ms,
                             .prompt_tokens = a->prompt_tokens,
                             .completion_tokens = a->completion_tokens,
                             .body = a->body,
                             .body_len = a->len};
    size_t len;
    struct rcache_l1 *l1 = l1_of(r);
    if (l1) l1_fill(c, l1, &e); /* this worker's next identical request needs no Redis */
    char *enc = rcache_entry_encode(&e, c->key, &len);
    if (!enc) return;
    if (rcache_store(r->w->redis, c->rkey, c->have_lock ? c->lock : NULL, c->token, enc, len,
                     c->ttl_s, on_stored, NULL) == 0) {
        c->have_lock = false;
        atomic_fetch_add(&cachestage_metrics.stores, 1);
        atomic_fetch_add(&cachestage_metrics.stored_bytes, len);
    } else {
        atomic_fetch_add(&cachestage_metrics.store_failures, 1);
        note_redis(r->w->rcache, false);
    }
    free(enc);
}

/* Gives c's Redis lock back and ends its flight: the waiters get a, or go
 * upstream themselves when it is NULL. */
static void release_flight(struct cachestage_req *c, struct answer *a)
{
    struct request *r = c->r;
    if (c->have_lock) {
        if (rcache_release(r->w->redis, c->lock, c->token) != 0) note_redis(r->w->rcache, false);
        c->have_lock = false;
    }
    if (c->flight) flight_finish(r->w->rcache, c->flight, a);
}

void cachestage_request_orphaned(struct request *r)
{
    if (!storing(r)) return;
    struct cachestage_req *c = r->rc;
    c->st = CRQ_BYPASS; /* nothing more is assembled (cachestage_wants_chunks) or stored */
    rcache_asm_free(c->as);
    c->as = NULL;
    release_flight(c, NULL);
}

void cachestage_request_end(struct request *r)
{
    struct cachestage_req *c = r->rc;
    if (!c) return;
    struct answer *a = NULL;
    switch (c->st) {
    case CRQ_WAITER:
        /* The client left while waiting: off the flight, no callback later. */
        if (c->flight) flight_unlink_waiter(c->flight, c);
        if (c->timer) evtimer_del(c->timer);
        if (c->wait_hold) {
            c->wait_hold = false;
            request_release(r); /* the pipeline's own reference keeps r alive here */
        }
        return;
    case CRQ_LEADER:
    case CRQ_STORER:
        if ((a = produced_answer(r))) store(r, a);
        break;
    case CRQ_SERVED:
        if ((a = c->ans)) a->refs++; /* a leader answered from Redis shares it */
        break;
    default: break;
    }
    if (c->timer) evtimer_del(c->timer);
    release_flight(c, a);
    answer_unref(a);
}

void cachestage_request_free(struct request *r)
{
    struct cachestage_req *c = r->rc;
    if (!c) return;
    if (c->timer) event_free(c->timer);
    answer_unref(c->ans);
    rcache_asm_free(c->as);
    free(c->body);
    free(c);
    r->rc = NULL;
}

/* ---------------------------------------------------------------- per worker */

struct cachestage_worker *cachestage_worker_new(struct worker *w)
{
    struct cachestage_worker *cw = calloc(1, sizeof *cw);
    if (!cw) return NULL;
    cw->w = w;
    /* Empty until a snapshot gives it a budget (l1_of). */
    if (!(cw->l1 = rcache_l1_new(0))) {
        free(cw);
        return NULL;
    }
    return cw;
}

void cachestage_worker_free(struct cachestage_worker *cw)
{
    if (!cw) return;
    /* Every request ended before the worker is freed, and ending a leader
     * removes its flight: anything left is a leak to report, not to walk. */
    for (unsigned i = 0; i < FLIGHT_BUCKETS; i++)
        if (cw->buckets[i]) log_warn("rcache", "flight left at worker exit");
    if (cw->redis_down) atomic_fetch_sub(&workers_down, 1);
    rcache_l1_free(cw->l1);
    free(cw);
}

/* ---------------------------------------------------------------- metrics */

static void counter(struct evbuffer *out, const char *name, const char *help,
                    _Atomic unsigned long long *v)
{
    server_metric_counter(out, name, help, atomic_load(v));
}

void cachestage_metrics_write(struct evbuffer *out)
{
    struct cachestage_metrics *m = &cachestage_metrics;
    counter(out, "llmgate_cache_hits_total", "Requests answered from the response cache.",
            &m->hits);
    counter(out, "llmgate_cache_l1_hits_total",
            "Hits answered from the worker's in-process cache without asking Redis.", &m->l1_hits);
    counter(out, "llmgate_cache_misses_total", "Cacheable requests that went upstream.",
            &m->misses);
    counter(out, "llmgate_cache_bypasses_total",
            "Requests that did not use the cache (policy, Cache-Control, Redis down).",
            &m->bypasses);
    counter(out, "llmgate_cache_coalesced_total",
            "Requests answered by an identical request in flight (single flight).", &m->coalesced);
    counter(out, "llmgate_cache_stores_total", "Answers written to the cache.", &m->stores);
    counter(out, "llmgate_cache_store_failures_total", "Answers Redis did not take.",
            &m->store_failures);
    counter(out, "llmgate_cache_corrupt_total", "Unreadable entries treated as misses and deleted.",
            &m->corrupt);
    counter(out, "llmgate_cache_too_large_total", "Answers over cache.max_entry_bytes.",
            &m->too_large);
    counter(out, "llmgate_cache_hit_bytes_total", "Bytes sent to clients from the cache.",
            &m->hit_bytes);
    counter(out, "llmgate_cache_stored_bytes_total", "Bytes of entries written to Redis.",
            &m->stored_bytes);
    counter(out, "llmgate_cache_lock_waits_total",
            "Leaders that waited for another worker's or replica's identical request.",
            &m->lock_waits);
    counter(out, "llmgate_cache_wait_timeouts_total",
            "Waits that hit cache.max_wait_ms and went upstream.", &m->wait_timeouts);
}
