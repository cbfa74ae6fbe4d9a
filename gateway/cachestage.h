/* The response-cache stage of the request pipeline: decides whether a request
 * may use the cache (config, route policy, determinism, Cache-Control), looks
 * its key up in Redis, replays a hit (buffered JSON, or SSE synthesised from
 * the stored answer), coalesces identical in-flight requests (per worker, and
 * across workers and replicas through a short Redis lock), and stores complete
 * successful answers observed by the relay. Redis down means bypass. */
#ifndef LLMGATE_GATEWAY_CACHESTAGE_H
#define LLMGATE_GATEWAY_CACHESTAGE_H

#include <stdatomic.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "gateway/request.h"

struct evbuffer;

/* The stage (after route and quota reservation): answers a hit, waits for an
 * identical request in flight, or continues to dispatch. Never fails the
 * request because of the cache. */
enum stage_rc cachestage_lookup(struct request *r);

/* Relay hooks. A buffered 200 answer as the client receives it (doc is its parse). */
void cachestage_observe_body(struct request *r, const cJSON *doc, const char *body, size_t len);
/* One OpenAI stream chunk as relayed (before the usage-only chunk may be dropped). */
void cachestage_observe_chunk(struct request *r, const cJSON *chunk);
/* Whether r is assembling a streamed answer to store (needs every parsed chunk). */
bool cachestage_wants_chunks(const struct request *r);
/* The stream ended with [DONE] and reached the client whole. */
void cachestage_stream_complete(struct request *r);

/* From request_client_gone when r runs on only to be metered (quota.abandoned =
 * finish): it will store nothing, so its lock is given back and the requests
 * waiting on it go upstream themselves now. */
void cachestage_request_orphaned(struct request *r);
/* From request_end: stores the answer when it is complete and cacheable, and
 * hands it (or the failure) to the requests waiting on r. */
void cachestage_request_end(struct request *r);
/* From request_free: frees r's cache state. */
void cachestage_request_free(struct request *r);

/* Per-worker single-flight table; NULL on allocation failure. Free it after the
 * worker's Redis client (whose pending callbacks may still run). */
struct cachestage_worker *cachestage_worker_new(struct worker *w);
void cachestage_worker_free(struct cachestage_worker *cw);

/* Process-wide counters (atomic). */
struct cachestage_metrics {
    _Atomic unsigned long long hits, l1_hits, misses, bypasses, coalesced, stores, store_failures,
        corrupt, too_large, hit_bytes, stored_bytes, lock_waits, wait_timeouts;
};
extern struct cachestage_metrics cachestage_metrics;
/* Appends the counters in Prometheus text format. */
void cachestage_metrics_write(struct evbuffer *out);

#endif
