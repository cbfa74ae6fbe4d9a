/* llmgate-stallprobe: how often the machine takes the CPU away. It spins on a
 * monotonic clock for a bounded time and counts the gaps between consecutive
 * readings: on an idle CPU a gap longer than a few microseconds is time the
 * thread did not run (an interrupt, another task, or the hypervisor holding
 * the vCPU). The benchmarks run it beside their servers' CPU to show how much
 * of a client-side tail the platform alone accounts for.
 *
 * usage: llmgate-stallprobe SECONDS [LABEL]   (SECONDS 0.1..60)
 * output (stdout): one CSV line
 *   label,seconds,gaps_over_0.5ms,gaps_over_1ms,gaps_over_2ms,gaps_over_5ms,max_gap_us,lost_ms
 * where lost_ms sums the gaps over 50 us. */
#include "common/util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    char *end = NULL;
    double secs = argc > 1 ? strtod(argv[1], &end) : 0;
    if (argc < 2 || argc > 3 || end == argv[1] || *end || !(secs >= 0.1 && secs <= 60)) {
        fprintf(stderr, "usage: llmgate-stallprobe SECONDS [LABEL]   (SECONDS 0.1..60)\n");
        return 2;
    }
    static const uint64_t bounds[] = {500, 1000, 2000, 5000};
    uint64_t over[4] = {0}, max_gap = 0, lost = 0;
    uint64_t start = util_now_us(), stop = start + (uint64_t)(secs * 1e6), prev = start;
    for (uint64_t now = start; now < stop; prev = now) {
        now = util_now_us();
        uint64_t gap = now - prev;
        if (gap <= 50) continue;
        lost += gap;
        if (gap > max_gap) max_gap = gap;
        for (int i = 0; i < 4; i++)
            over[i] += gap > bounds[i];
    }
    printf("%s,%.1f,%llu,%llu,%llu,%llu,%llu,%.1f\n", argc > 2 ? argv[2] : "probe", secs,
           (unsigned long long)over[0], (unsigned long long)over[1], (unsigned long long)over[2],
           (unsigned long long)over[3], (unsigned long long)max_gap, (double)lost / 1000.0);
    return 0;
}
