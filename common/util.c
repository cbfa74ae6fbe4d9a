/* Clocks, random ids and string helpers used across modules. */
#include "common/util.h"

#include <openssl/rand.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

uint64_t util_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t util_now_ms(void)
{
    return util_now_us() / 1000u;
}

uint64_t util_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int util_random_bytes(void *buf, size_t n)
{
    return RAND_bytes(buf, (int)n) == 1 ? 0 : -1;
}

/* A per-thread random prefix and a counter: unique without a RAND call (and its
 * getpid) per request. Ids are identifiers, not secrets. */
static _Thread_local unsigned char id_prefix[6];
static _Thread_local uint64_t id_counter;
static _Thread_local bool id_ready;

void util_request_id(char out[32])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[12];
    if (!id_ready) {
        if (util_random_bytes(id_prefix, sizeof id_prefix) != 0)
            memset(id_prefix, 0, sizeof id_prefix);
        if (util_random_bytes(&id_counter, sizeof id_counter) != 0) id_counter = 0;
        id_ready = true;
    }
    uint64_t n = ++id_counter;
    memcpy(raw, id_prefix, sizeof id_prefix);
    for (int i = 0; i < 6; i++)
        raw[6 + i] = (unsigned char)(n >> (8 * (5 - i)));
    memcpy(out, "req_", 4);
    for (size_t i = 0; i < sizeof raw; i++) {
        out[4 + 2 * i] = hex[raw[i] >> 4];
        out[5 + 2 * i] = hex[raw[i] & 15];
    }
    out[4 + 2 * sizeof raw] = '\0';
}

size_t util_strlcpy(char *dst, const char *src, size_t size)
{
    size_t len = strlen(src);
    if (size) {
        size_t n = len < size - 1 ? len : size - 1;
        memcpy(dst, src, n);
        dst[n] = '\0';
    }
    return len;
}
