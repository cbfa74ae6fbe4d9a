/* Small shared helpers: clocks, random identifiers, bounded string copies. */
#ifndef LLMGATE_COMMON_UTIL_H
#define LLMGATE_COMMON_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Monotonic time in microseconds / milliseconds. */
uint64_t util_now_us(void);
uint64_t util_now_ms(void);
/* Wall-clock time in milliseconds since the epoch. */
uint64_t util_wall_ms(void);

/* Fills buf with n cryptographically random bytes; 0 on success, -1 on failure. */
int util_random_bytes(void *buf, size_t n);
/* Writes a random request id ("req_" + 24 hex chars, NUL-terminated) into out[32]. */
void util_request_id(char out[32]);

/* strlcpy semantics: copies at most size-1 bytes, always terminates; returns strlen(src). */
size_t util_strlcpy(char *dst, const char *src, size_t size);

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
