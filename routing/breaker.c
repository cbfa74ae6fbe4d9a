/* The circuit breaker state machine on atomics. Counters are approximate under
 * contention (a window reset may lose a few increments); transitions are
 * compare-and-swap so exactly one thread opens or closes a breaker. */
#include "routing/breaker.h"

static bool enabled(const struct breaker_conf *c)
{
    return c->failures > 0 || c->error_ratio_pct > 0;
}

static void open_now(struct breaker *b, int from, uint64_t now_ms)
{
    atomic_store(&b->probes_inflight, 0);
    atomic_store(&b->probes_ok, 0);
    atomic_store(&b->opened_at_ms, now_ms);
    int expect = from;
    if (atomic_compare_exchange_strong(&b->state, &expect, BREAKER_OPEN) && from == BREAKER_CLOSED)
        atomic_fetch_add(&b->opens, 1);
}

static void reset_counts(struct breaker *b, uint64_t now_ms)
{
    atomic_store(&b->consecutive, 0);
    atomic_store(&b->window_requests, 0);
    atomic_store(&b->window_failures, 0);
    atomic_store(&b->window_start_ms, now_ms);
}

bool breaker_allow(struct breaker *b, const struct breaker_conf *c, uint64_t now_ms, bool *probe)
{
    *probe = false;
    if (!enabled(c)) return true;
    int st = atomic_load(&b->state);
    if (st == BREAKER_CLOSED) return true;
    if (st == BREAKER_OPEN) {
        if (now_ms < atomic_load(&b->opened_at_ms) + c->open_ms) return false;
        int expect = BREAKER_OPEN;
        atomic_compare_exchange_strong(&b->state, &expect, BREAKER_HALF_OPEN);
        st = atomic_load(&b->state);
        if (st == BREAKER_CLOSED) return true; /* another thread's probes closed it */
        if (st == BREAKER_OPEN) return false;  /* and a failed probe reopened it */
    }
    /* HALF_OPEN: take a probe slot if one is free. */
    unsigned max = c->half_open_probes ? c->half_open_probes : 1;
    unsigned n = atomic_load(&b->probes_inflight);
    while (n < max) {
        if (atomic_compare_exchange_weak(&b->probes_inflight, &n, n + 1)) {
            *probe = true;
            return true;
        }
    }
    return false;
}

void breaker_release_probe(struct breaker *b)
{
    unsigned n = atomic_load(&b->probes_inflight);
    while (n > 0 && !atomic_compare_exchange_weak(&b->probes_inflight, &n, n - 1)) {
    }
}

void breaker_record(struct breaker *b, const struct breaker_conf *c, bool ok, bool probe,
                    uint64_t now_ms)
{
    if (!enabled(c)) return;
    int st = atomic_load(&b->state);
    if (probe || st == BREAKER_HALF_OPEN) {
        if (probe) breaker_release_probe(b);
        if (st != BREAKER_HALF_OPEN) return; /* already decided by another probe */
        if (!ok) {
            open_now(b, BREAKER_HALF_OPEN, now_ms);
            return;
        }
        unsigned need = c->half_open_probes ? c->half_open_probes : 1;
        if (atomic_fetch_add(&b->probes_ok, 1) + 1 >= need) {
            reset_counts(b, now_ms);
            int expect = BREAKER_HALF_OPEN;
            atomic_compare_exchange_strong(&b->state, &expect, BREAKER_CLOSED);
        }
        return;
    }
    if (st != BREAKER_CLOSED) return; /* a straggler from before it opened */
    /* The ratio window: the thread that sees it expired starts a new one. */
    uint64_t start = atomic_load(&b->window_start_ms);
    if (c->window_ms && now_ms >= start + c->window_ms &&
        atomic_compare_exchange_strong(&b->window_start_ms, &start, now_ms)) {
        atomic_store(&b->window_requests, 0);
        atomic_store(&b->window_failures, 0);
    }
    unsigned reqs = atomic_fetch_add(&b->window_requests, 1) + 1;
    if (ok) {
        atomic_store(&b->consecutive, 0);
        return;
    }
    unsigned fails = atomic_fetch_add(&b->window_failures, 1) + 1;
    unsigned run = atomic_fetch_add(&b->consecutive, 1) + 1;
    bool trip = (c->failures && run >= c->failures) ||
                (c->error_ratio_pct && reqs >= (c->min_requests ? c->min_requests : 1) &&
                 (uint64_t)fails * 100 >= (uint64_t)c->error_ratio_pct * reqs);
    if (trip) open_now(b, BREAKER_CLOSED, now_ms);
}

enum breaker_state breaker_state_of(const struct breaker *b)
{
    return (enum breaker_state)atomic_load(&((struct breaker *)b)->state);
}

const char *breaker_state_name(enum breaker_state s)
{
    switch (s) {
    case BREAKER_CLOSED: return "closed";
    case BREAKER_OPEN: return "open";
    case BREAKER_HALF_OPEN: return "half_open";
    }
    return "?";
}
