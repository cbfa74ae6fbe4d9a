/* Admission grants: tokens and requests one worker takes from a quota class's
 * Redis buckets ahead of its own demand, and then admits from without a round
 * trip (quota.grant_ms; off by default).
 *
 * A class is a set of scopes with their limits (one key, optionally its tenant
 * and a per-model limit). Whatever a grant holds was already debited on Redis
 * by the reserve script, in every window of every scope, so the tokens a class
 * admits across workers and replicas never exceed its limits: a grant moves the
 * reservation earlier, it never adds to it. Each admitted request still settles
 * on Redis (its real usage charged, the rest refunded there). What a grant
 * costs is that its unspent part is out of the shared pool until it is spent or
 * given back (after grant_ms at most), so another worker can see a 429 a little
 * early; sizes are therefore bounded by the class's own recent demand on this
 * worker and by an eighth of its smallest limit, and the reserve script grants
 * nothing once a window would be left with less than twice the grant.
 *
 * This module is the bookkeeping (pure, one table per worker); quota.c sends
 * the scripts. */
#ifndef LLMGATE_GATEWAY_GRANT_H
#define LLMGATE_GATEWAY_GRANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/quota.h"

#define GRANT_MAX          4096 /* classes tracked per worker */
#define GRANT_LIMIT_SHARE  8    /* a grant holds at most 1/8 of the class's smallest limit */
#define GRANT_MIN_REQUESTS 2    /* demand below this per period never asks for a grant */
#define GRANT_BUCKETS      256

/* x-ratelimit-* values as of a grant's reply (what Redis had left after it). */
struct grant_headers {
    long req_limit, req_remaining, req_reset_ms, tok_limit, tok_remaining, tok_reset_ms;
};

struct grant {
    struct quota_scope sc[QUOTA_MAX_SCOPES]; /* the class */
    int ns;
    bool counts_requests;  /* some scope limits requests per minute */
    long tokens, requests; /* left to admit from (requests: when counted) */
    long asked_t, asked_r; /* size of the last grant asked for (low-water mark: half) */
    uint64_t expires_ms;   /* leftovers go back to Redis after this */
    long day, month;       /* calendar windows the grant was debited in */
    struct grant_headers hdr;
    /* this worker's demand: what the class asked for in this and the last period */
    uint64_t period_start_ms, last_demand_ms;
    long cur_t, cur_r, prev_t, prev_r;
    uint64_t asking_until_ms; /* a grant request is in flight (until its answer, or this) */
    struct grant *next;
};

struct grant_table {
    struct grant *buckets[GRANT_BUCKETS];
    size_t n;
};

/* Whether scopes sc can be served from grants (none limits concurrency: a slot
 * must be taken per request on Redis). */
bool grant_class_ok(const struct quota_scope *sc, int ns);
/* The class's grant, created (empty) when absent and create is set; NULL when
 * absent, or when the table is full. */
struct grant *grant_get(struct grant_table *t, const struct quota_scope *sc, int ns, bool create);
/* Counts one request of `tokens` toward the class's demand. */
void grant_demand(struct grant *g, long tokens, uint64_t now_ms, unsigned period_ms);
/* Whether what g holds was debited in the calendar windows day and month (the
 * current ones) of every scope with a day or month limit; true when it holds
 * nothing. A grant taken just before midnight is not spent after it: that would
 * charge today's usage to yesterday's limit. */
bool grant_current(const struct grant *g, long day, long month);
/* Admits one request of `tokens` from the grant when it is live and holds
 * enough; false (nothing taken) otherwise. */
bool grant_take(struct grant *g, long tokens, uint64_t now_ms);
/* The grant to ask for alongside a reserve of `need` tokens: the class's demand
 * over a period, at least two requests' worth, at most 1/GRANT_LIMIT_SHARE of
 * every limit. Zero tokens when the demand is too low or the limits too small. */
void grant_want(const struct grant *g, long need, long *tokens, long *requests);
/* Whether a grant request for g is in flight at now_ms. */
bool grant_asking(const struct grant *g, uint64_t now_ms);
/* Whether the grant is below half of what was last asked (time to ask again). */
bool grant_low(const struct grant *g);
/* Adds what Redis granted (day/month: the windows it was debited in). */
void grant_add(struct grant *g, long tokens, long requests, long day, long month,
               const struct grant_headers *h, uint64_t now_ms, unsigned period_ms);
/* Adds what g still holds to h, Redis's remaining (never above the limit). */
void grant_headers_add(const struct grant *g, struct grant_headers *h);
/* The headers for a request just admitted from g: Redis's remaining as of the
 * grant plus what the grant still holds. */
void grant_headers_now(const struct grant *g, struct grant_headers *out);
/* Gives back the leftovers of every expired grant (every grant when all is set)
 * through give_back, zeroing them, and frees classes idle for four periods.
 * Returns the number of grants still holding something. */
size_t grant_sweep(struct grant_table *t, uint64_t now_ms, unsigned period_ms, bool all,
                   void (*give_back)(void *ud, const struct grant *g), void *ud);
/* Frees every grant (leftovers not given back). */
void grant_table_clear(struct grant_table *t);

#endif
