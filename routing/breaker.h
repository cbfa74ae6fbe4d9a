/* Circuit breaker of one upstream target (provider + model), shared by every
 * worker through atomics: it opens on consecutive failures or on an error ratio
 * over a window, fails fast while open, and half-opens with a few probes.
 * Every function takes the current time so the state machine is testable. */
#ifndef LLMGATE_ROUTING_BREAKER_H
#define LLMGATE_ROUTING_BREAKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* States:
 *   CLOSED    - requests flow; failures are counted
 *   OPEN      - requests fail fast until open_ms has passed since opening
 *   HALF_OPEN - up to half_open_probes requests go through; all succeeding
 *               closes the breaker, any failing reopens it */
enum breaker_state { BREAKER_CLOSED = 0, BREAKER_OPEN, BREAKER_HALF_OPEN };

/* Tuning, from the route that uses the target. failures == 0 and
 * error_ratio_pct == 0 disable the breaker. */
struct breaker_conf {
    unsigned failures;         /* consecutive failures that open it */
    unsigned error_ratio_pct;  /* failures * 100 / requests in the window that open it */
    unsigned window_ms;        /* length of the error-ratio window */
    unsigned min_requests;     /* requests in the window before the ratio counts */
    unsigned open_ms;          /* time spent open before probing */
    unsigned half_open_probes; /* concurrent probes (and successes needed to close) */
};

struct breaker {
    _Atomic int state;
    _Atomic unsigned consecutive; /* failures in a row */
    _Atomic uint64_t opened_at_ms;
    _Atomic uint64_t window_start_ms;
    _Atomic unsigned window_requests, window_failures;
    _Atomic unsigned probes_inflight, probes_ok;
    _Atomic uint64_t opens; /* times it opened (metric) */
};

/* Whether a request may use the target now. When it is granted as a half-open
 * probe, *probe is set and the caller must report it with breaker_record()
 * or breaker_release_probe(). */
bool breaker_allow(struct breaker *b, const struct breaker_conf *c, uint64_t now_ms, bool *probe);
/* Reports an attempt's outcome (ok = the target answered properly). */
void breaker_record(struct breaker *b, const struct breaker_conf *c, bool ok, bool probe,
                    uint64_t now_ms);
/* Gives back a probe slot whose attempt ended without an outcome (client gone). */
void breaker_release_probe(struct breaker *b);
/* The current state, for /admin and metrics. */
enum breaker_state breaker_state_of(const struct breaker *b);
/* "closed", "open", "half_open". */
const char *breaker_state_name(enum breaker_state s);

#endif
