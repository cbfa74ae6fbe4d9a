/* Log-linear latency histogram in the style of HdrHistogram: exact below 256,
 * then 128 buckets per power of two (relative error under 0.8%), up to 2^40.
 * Fixed size, no allocation; merge per-thread histograms by adding counts. */
#ifndef LLMGATE_LOADTEST_HISTOGRAM_H
#define LLMGATE_LOADTEST_HISTOGRAM_H

#include <stdint.h>

#define HIST_SUB_BITS 8
#define HIST_MAX_BITS 40
#define HIST_BUCKETS                                                                               \
    ((1u << HIST_SUB_BITS) + (HIST_MAX_BITS - HIST_SUB_BITS + 1) * (1u << (HIST_SUB_BITS - 1)))

struct histogram {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
    uint64_t max; /* exact largest value recorded */
};

/* Zeroes h. */
void hist_init(struct histogram *h);
/* Records one value (values above 2^40 land in the last bucket). */
void hist_record(struct histogram *h, uint64_t v);
/* Adds src's counts into dst. */
void hist_merge(struct histogram *dst, const struct histogram *src);
/* Value at percentile p (0..100): the highest value equivalent to the bucket
 * that holds it, capped at max; 0 when empty. */
uint64_t hist_percentile(const struct histogram *h, double p);

#endif
