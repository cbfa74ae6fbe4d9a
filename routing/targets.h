/* Cross-worker state of upstream targets, keyed by provider + model: circuit
 * breaker, rate-limit cooldown, counters, and each provider's retry budget.
 * Entries are created when a policy snapshot is built (main thread) and live
 * until the process ends, so breakers and cooldowns survive reloads; workers
 * only touch their atomics. */
#ifndef LLMGATE_ROUTING_TARGETS_H
#define LLMGATE_ROUTING_TARGETS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "routing/breaker.h"
#include "routing/budget.h"

struct provider_stats {
    char *provider;
    struct retry_budget budget;
};

struct target_state {
    char *provider, *model;
    struct breaker breaker;
    _Atomic uint64_t cooldown_until_ms; /* monotonic ms; a 429's Retry-After */
    _Atomic uint64_t attempts, failures;
    struct provider_stats *ps; /* the provider's budget */
    struct target_state *next; /* hash chain */
};

/* Process-wide routing counters, exported on /metrics. */
struct routing_metrics {
    _Atomic uint64_t reloads_ok, reloads_failed;
    _Atomic uint64_t requests;      /* requests routed */
    _Atomic uint64_t attempts;      /* upstream attempts */
    _Atomic uint64_t retries;       /* attempts on the same target again */
    _Atomic uint64_t fallbacks;     /* moves to another target */
    _Atomic uint64_t skipped_open;  /* targets skipped: breaker open */
    _Atomic uint64_t skipped_cool;  /* targets skipped: cooling down after a 429 */
    _Atomic uint64_t no_target;     /* requests with no target left */
    _Atomic uint64_t stream_errors; /* streams ended with an error event */
};
extern struct routing_metrics routing_metrics;

/* The last rejected reload's message ("" after a successful one), for /readyz. */
void routing_set_reload_error(const char *msg);
void routing_get_reload_error(char *out, size_t n);

/* The state of provider/model, created on first use; NULL when out of memory.
 * Thread-safe (a mutex guards creation). */
struct target_state *targets_get(const char *provider, const char *model);
/* Calls fn for every target state (in no particular order), under the registry lock. */
void targets_foreach(void (*fn)(void *ud, const struct target_state *t), void *ud);
/* Frees every entry (process exit only, when no worker runs). */
void targets_free_all(void);
/* Whether the target is cooling down at now_ms; *left_ms receives the remaining time. */
bool targets_cooling(const struct target_state *t, uint64_t now_ms, uint64_t *left_ms);
/* Extends the cooldown to until_ms (never shortens it). */
void targets_cool_until(struct target_state *t, uint64_t until_ms);

#endif
