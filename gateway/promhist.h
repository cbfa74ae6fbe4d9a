/* Prometheus histograms of durations, shared by every worker: relaxed atomic
 * buckets that workers add to and /metrics reads (a scrape may see a bucket a
 * moment ahead of the count; Prometheus tolerates that). */
#ifndef LLMGATE_GATEWAY_PROMHIST_H
#define LLMGATE_GATEWAY_PROMHIST_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

#define PROMHIST_MAX_BUCKETS 24

struct promhist {
    const double *le_s; /* upper bounds in seconds, ascending */
    size_t n;           /* how many (at most PROMHIST_MAX_BUCKETS) */
    _Atomic unsigned long long buckets[PROMHIST_MAX_BUCKETS + 1], sum_us, count;
};

/* A histogram over the bounds le_s[0..n) (static storage). */
#define PROMHIST_INIT(le)                                                                          \
    {                                                                                              \
        .le_s = (le), .n = sizeof(le) / sizeof((le)[0])                                            \
    }

/* Counts one duration of us microseconds. */
void promhist_observe(struct promhist *h, uint64_t us);
/* Writes the HELP and TYPE lines of histogram `name`. */
void promhist_header(struct evbuffer *out, const char *name, const char *help);
/* Writes one series of `name`: cumulative buckets, sum and count, with the
 * label `label="value"` when label is not NULL. */
void promhist_write(struct evbuffer *out, const char *name, const char *label, const char *value,
                    struct promhist *h);

#endif
