/* Prometheus histograms of durations (see promhist.h). */
#include "gateway/promhist.h"

#include <stdio.h>

static unsigned long long load(_Atomic unsigned long long *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

void promhist_observe(struct promhist *h, uint64_t us)
{
    size_t b = 0;
    while (b < h->n && (double)us > h->le_s[b] * 1e6)
        b++;
    atomic_fetch_add_explicit(&h->buckets[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, us, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
}

void promhist_header(struct evbuffer *out, const char *name, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
}

void promhist_write(struct evbuffer *out, const char *name, const char *label, const char *value,
                    struct promhist *h)
{
    char lab[128] = "", sep[2] = "";
    if (label) {
        snprintf(lab, sizeof lab, "%s=\"%s\"", label, value);
        sep[0] = ',';
    }
    unsigned long long cum = 0;
    for (size_t b = 0; b <= h->n; b++) {
        cum += load(&h->buckets[b]);
        if (b < h->n)
            evbuffer_add_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, lab, sep, h->le_s[b],
                                cum);
        else
            evbuffer_add_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, lab, sep, cum);
    }
    const char *open = label ? "{" : "", *close = label ? "}" : "";
    evbuffer_add_printf(out, "%s_sum%s%s%s %.6f\n", name, open, lab, close,
                        (double)load(&h->sum_us) / 1e6);
    evbuffer_add_printf(out, "%s_count%s%s%s %llu\n", name, open, lab, close, load(&h->count));
}
