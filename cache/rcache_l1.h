/* A worker's in-process level-1 response cache: a bounded table of hot entries
 * in front of Redis, keyed by the entry's full Redis key (prefix, scope and
 * SHA-256 key), evicted least recently used by a byte budget and expired after
 * a short lifetime the caller chooses. One per worker thread, no locks. Holds
 * validated entries only; the caller decides what goes in and when it leaves. */
#ifndef LLMGATE_CACHE_RCACHE_L1_H
#define LLMGATE_CACHE_RCACHE_L1_H

#include <stddef.h>
#include <stdint.h>

#include "cache/rcache.h"

struct rcache_l1;

/* An entry as stored: a copy of the decoded entry and, once a streaming client
 * asked for it, its SSE replay. */
struct rcache_l1_entry {
    struct rcache_entry e; /* body: a NUL-terminated copy owned by the table */
    /* The SSE replay with its usage chunk: sse[0..sse_usage_off) are the choice
     * chunks, then the usage chunk (possibly empty), then sse[sse_done_off..sse_len)
     * is "data: [DONE]". NULL until rcache_l1_set_sse. */
    const char *sse;
    size_t sse_len, sse_usage_off, sse_done_off;
};

/* A table bounded by max_bytes (entries, keys and bookkeeping); NULL on
 * allocation failure. max_bytes 0 keeps nothing. */
struct rcache_l1 *rcache_l1_new(size_t max_bytes);
void rcache_l1_free(struct rcache_l1 *l1);
/* Changes the budget, evicting down to it (0 empties the table). */
void rcache_l1_set_max_bytes(struct rcache_l1 *l1, size_t max_bytes);

/* The live entry for rkey at monotonic time now_ms, marked most recently used,
 * or NULL (an expired one is dropped). The pointer is valid until the next call
 * that changes l1 (put, set_sse, evict, set_max_bytes). */
const struct rcache_l1_entry *rcache_l1_get(struct rcache_l1 *l1, const char *rkey, size_t rkey_len,
                                            uint64_t now_ms);

/* Stores a copy of e for rkey until monotonic expires_ms, replacing an entry
 * for rkey unless that one was created later (a slow Redis read never
 * overwrites a newer store). 0 when stored, 1 when not (larger than the budget,
 * older than the present entry, already expired), -1 out of memory. */
int rcache_l1_put(struct rcache_l1 *l1, const char *rkey, size_t rkey_len,
                  const struct rcache_entry *e, uint64_t expires_ms);

/* Attaches sse (malloc'd, ownership passes to l1 even on failure) to the entry
 * le returned by rcache_l1_get; offsets as in struct rcache_l1_entry. 0, or -1
 * when it would not fit in the budget (sse freed, le unchanged). */
int rcache_l1_set_sse(struct rcache_l1 *l1, const struct rcache_l1_entry *le, char *sse, size_t len,
                      size_t usage_off, size_t done_off);

/* Drops the entry for rkey if there is one (refresh, corrupt in Redis). */
void rcache_l1_evict(struct rcache_l1 *l1, const char *rkey, size_t rkey_len);

/* Bytes accounted and entries held. */
size_t rcache_l1_bytes(const struct rcache_l1 *l1);
size_t rcache_l1_count(const struct rcache_l1 *l1);

#endif
