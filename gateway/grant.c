/* Admission grants: the per-worker bookkeeping (see grant.h for the design). */
#include "gateway/grant.h"

#include <stdlib.h>
#include <string.h>

static size_t class_hash(const struct quota_scope *sc, int ns)
{
    size_t h = 1469598103934665603ull;
    for (int i = 0; i < ns; i++)
        for (const char *s = sc[i].bucket; *s; s++)
            h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h % GRANT_BUCKETS;
}

static bool same_limits(const struct key_limits *a, const struct key_limits *b)
{
    return a->rpm == b->rpm && a->tpm == b->tpm && a->tpd == b->tpd && a->tpmo == b->tpmo &&
           a->conc == b->conc;
}

/* Same scopes with the same limits: a changed limit is a new class (the old
 * one's leftovers go back when it expires). */
static bool same_class(const struct grant *g, const struct quota_scope *sc, int ns)
{
    if (g->ns != ns) return false;
    for (int i = 0; i < ns; i++)
        if (strcmp(g->sc[i].bucket, sc[i].bucket) != 0 || !same_limits(&g->sc[i].l, &sc[i].l))
            return false;
    return true;
}

bool grant_class_ok(const struct quota_scope *sc, int ns)
{
    if (ns <= 0) return false;
    for (int i = 0; i < ns; i++)
        if (sc[i].l.conc) return false;
    return true;
}

struct grant *grant_get(struct grant_table *t, const struct quota_scope *sc, int ns, bool create)
{
    size_t b = class_hash(sc, ns);
    for (struct grant *g = t->buckets[b]; g; g = g->next)
        if (same_class(g, sc, ns)) return g;
    if (!create || t->n >= GRANT_MAX || ns > QUOTA_MAX_SCOPES) return NULL;
    struct grant *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    memcpy(g->sc, sc, (size_t)ns * sizeof *sc);
    g->ns = ns;
    for (int i = 0; i < ns; i++)
        if (sc[i].l.rpm) g->counts_requests = true;
    g->day = g->month = -1;
    g->next = t->buckets[b];
    t->buckets[b] = g;
    t->n++;
    return g;
}

/* Moves the demand window forward to now: a period that ended becomes the
 * previous one; a gap of more than one period leaves no previous demand. */
static void roll(struct grant *g, uint64_t now_ms, unsigned period_ms)
{
    if (now_ms - g->period_start_ms < period_ms) return;
    bool adjacent = now_ms - g->period_start_ms < 2ull * period_ms;
    g->prev_t = adjacent ? g->cur_t : 0;
    g->prev_r = adjacent ? g->cur_r : 0;
    g->cur_t = g->cur_r = 0;
    g->period_start_ms = now_ms;
}

void grant_demand(struct grant *g, long tokens, uint64_t now_ms, unsigned period_ms)
{
    roll(g, now_ms, period_ms);
    g->cur_t += tokens;
    g->cur_r++;
    g->last_demand_ms = now_ms;
}

bool grant_current(const struct grant *g, long day, long month)
{
    if (g->tokens <= 0 && g->requests <= 0) return true;
    for (int i = 0; i < g->ns; i++) {
        if (g->sc[i].l.tpd && g->day != day) return false;
        if (g->sc[i].l.tpmo && g->month != month) return false;
    }
    return true; /* no calendar limit: the windows do not matter */
}

bool grant_take(struct grant *g, long tokens, uint64_t now_ms)
{
    if (now_ms >= g->expires_ms || g->tokens < tokens) return false;
    if (g->counts_requests && g->requests < 1) return false;
    g->tokens -= tokens;
    if (g->counts_requests) g->requests--;
    return true;
}

static long min_nonzero(long cur, uint64_t v)
{
    return v && (cur < 0 || (long)v < cur) ? (long)v : cur;
}

void grant_want(const struct grant *g, long need, long *tokens, long *requests)
{
    *tokens = *requests = 0;
    long dr = g->cur_r > g->prev_r ? g->cur_r : g->prev_r;
    long dt = g->cur_t > g->prev_t ? g->cur_t : g->prev_t;
    if (dr < GRANT_MIN_REQUESTS || need <= 0) return;
    long lim_t = -1, lim_r = -1;
    for (int i = 0; i < g->ns; i++) {
        const struct key_limits *l = &g->sc[i].l;
        lim_t = min_nonzero(lim_t, l->tpm);
        lim_t = min_nonzero(lim_t, l->tpd);
        lim_t = min_nonzero(lim_t, l->tpmo);
        lim_r = min_nonzero(lim_r, l->rpm);
    }
    long t = dt > 2 * need ? dt : 2 * need;
    if (lim_t >= 0 && t > lim_t / GRANT_LIMIT_SHARE) t = lim_t / GRANT_LIMIT_SHARE;
    long r = dr;
    if (lim_r >= 0 && r > lim_r / GRANT_LIMIT_SHARE) r = lim_r / GRANT_LIMIT_SHARE;
    /* Useless unless it admits a request like this one at least twice. */
    if (t < 2 * need || (g->counts_requests && r < GRANT_MIN_REQUESTS)) return;
    *tokens = t;
    *requests = g->counts_requests ? r : 0;
}

bool grant_asking(const struct grant *g, uint64_t now_ms)
{
    return now_ms < g->asking_until_ms;
}

bool grant_low(const struct grant *g)
{
    return 2 * g->tokens < g->asked_t || (g->counts_requests && 2 * g->requests < g->asked_r);
}

void grant_add(struct grant *g, long tokens, long requests, long day, long month,
               const struct grant_headers *h, uint64_t now_ms, unsigned period_ms)
{
    g->tokens += tokens;
    g->requests += requests;
    g->day = day;
    g->month = month;
    g->hdr = *h;
    g->expires_ms = now_ms + period_ms;
}

void grant_headers_now(const struct grant *g, struct grant_headers *out)
{
    *out = g->hdr;
    grant_headers_add(g, out);
}

void grant_headers_add(const struct grant *g, struct grant_headers *out)
{
    /* A bucket refilled to its limit since older leftovers were debited: never
     * more than the limit. */
    if (out->tok_limit >= 0) {
        out->tok_remaining += g->tokens;
        if (out->tok_remaining > out->tok_limit) out->tok_remaining = out->tok_limit;
    }
    if (out->req_limit >= 0 && g->counts_requests) {
        out->req_remaining += g->requests;
        if (out->req_remaining > out->req_limit) out->req_remaining = out->req_limit;
    }
}

size_t grant_sweep(struct grant_table *t, uint64_t now_ms, unsigned period_ms, bool all,
                   void (*give_back)(void *ud, const struct grant *g), void *ud)
{
    size_t holding = 0;
    for (size_t b = 0; b < sizeof t->buckets / sizeof t->buckets[0]; b++) {
        for (struct grant **p = &t->buckets[b]; *p;) {
            struct grant *g = *p;
            bool has = g->tokens > 0 || g->requests > 0;
            if (has && (all || now_ms >= g->expires_ms)) {
                give_back(ud, g);
                g->tokens = g->requests = 0;
                g->asked_t = g->asked_r = 0;
                has = false;
            }
            if (has) holding++;
            roll(g, now_ms, period_ms);
            bool idle =
                !has && !grant_asking(g, now_ms) && now_ms - g->last_demand_ms >= 4ull * period_ms;
            if (idle) {
                *p = g->next;
                free(g);
                t->n--;
            } else {
                p = &g->next;
            }
        }
    }
    return holding;
}

void grant_table_clear(struct grant_table *t)
{
    for (size_t b = 0; b < sizeof t->buckets / sizeof t->buckets[0]; b++) {
        struct grant *g = t->buckets[b];
        while (g) {
            struct grant *next = g->next;
            free(g);
            g = next;
        }
        t->buckets[b] = NULL;
    }
    t->n = 0;
}
