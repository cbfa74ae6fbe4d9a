/* Log-linear histogram for llmgate-loadgen (see histogram.h for the layout). */
#include "loadtest/histogram.h"

#include <math.h>
#include <string.h>

#define SUB      (1u << HIST_SUB_BITS)
#define HALF_SUB (1u << (HIST_SUB_BITS - 1))

static unsigned bucket_of(uint64_t v)
{
    if (v < SUB) return (unsigned)v;
    if (v >> HIST_MAX_BITS) return HIST_BUCKETS - 1;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v); /* >= HIST_SUB_BITS */
    unsigned shift = msb - (HIST_SUB_BITS - 1);        /* v >> shift is in [HALF_SUB, SUB) */
    return SUB + (msb - HIST_SUB_BITS) * HALF_SUB + (unsigned)((v >> shift) - HALF_SUB);
}

/* Highest value that falls into bucket b. */
static uint64_t bucket_high(unsigned b)
{
    if (b < SUB) return b;
    unsigned octave = (b - SUB) / HALF_SUB;
    uint64_t sub = (b - SUB) % HALF_SUB + HALF_SUB;
    unsigned shift = octave + 1;
    return (sub << shift) + ((uint64_t)1 << shift) - 1;
}

void hist_init(struct histogram *h)
{
    memset(h, 0, sizeof *h);
}

void hist_record(struct histogram *h, uint64_t v)
{
    h->counts[bucket_of(v)]++;
    h->total++;
    if (v > h->max) h->max = v;
}

void hist_merge(struct histogram *dst, const struct histogram *src)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    dst->total += src->total;
    if (src->max > dst->max) dst->max = src->max;
}

uint64_t hist_percentile(const struct histogram *h, double p)
{
    if (h->total == 0) return 0;
    if (p >= 100.0) return h->max;
    uint64_t target = (uint64_t)ceil(p / 100.0 * (double)h->total);
    if (target < 1) target = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= target) {
            uint64_t v = bucket_high(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}
