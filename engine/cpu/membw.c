/* Memory bandwidth probe for the engine benchmark: a multithreaded streaming read of a buffer
 * much larger than the caches, the roofline a bandwidth-bound decode step is measured against. */
#include "engine/cpu/cpu.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

struct bw_task {
    const uint64_t *buf;
    size_t n;
    uint64_t sums[256];
};

static void bw_thread(void *ctx, int tid, int n)
{
    struct bw_task *t = ctx;
    size_t lo = t->n * (size_t)tid / (size_t)n, hi = t->n * (size_t)(tid + 1) / (size_t)n;
    uint64_t a[8] = {0};
    size_t i = lo;
    for (; i + 8 <= hi; i += 8)
        for (int j = 0; j < 8; j++)
            a[j] += t->buf[i + j];
    for (; i < hi; i++)
        a[0] += t->buf[i];
    t->sums[tid & 255] = a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double cpu_read_bandwidth(struct tpool *pool, size_t bytes, int reps)
{
    struct bw_task t = {0};
    t.n = bytes / sizeof(uint64_t);
    uint64_t *buf = malloc(t.n * sizeof(uint64_t));
    if (!buf) return 0.0;
    for (size_t i = 0; i < t.n; i++)
        buf[i] = i; /* touch every page */
    t.buf = buf;
    tpool_run(pool, bw_thread, &t); /* warm-up */
    double best = 0.0;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        tpool_run(pool, bw_thread, &t);
        double dt = now_s() - t0;
        double gbs = (double)(t.n * sizeof(uint64_t)) / dt / 1e9;
        if (gbs > best) best = gbs;
    }
    free(buf);
    return best;
}
