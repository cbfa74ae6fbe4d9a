/* Token quotas: the reserve stage (one Redis script reserves the estimated
 * tokens across every window of every scope, all or nothing), settle at the end
 * of a request (charge the real usage, refund the rest, free the concurrency
 * slot, append the usage record), the local fail-open limiter used while Redis
 * is down, and the x-ratelimit-* / Retry-After headers. */
#ifndef LLMGATE_GATEWAY_QUOTA_H
#define LLMGATE_GATEWAY_QUOTA_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/buffer.h>

#include <cjson/cJSON.h>

#include "gateway/keys.h"
#include "gateway/request.h"

#define QUOTA_MAX_SCOPES 3 /* key, tenant, key x model */
/* Model globs longer than this name their bucket by their SHA-256. */
#define QUOTA_GLOB_NAME_MAX 64

/* One scope of a reservation: its bucket hash, concurrency set and limits. */
struct quota_scope {
    char bucket[256];
    char conc[260];
    struct key_limits l;
};

/* The scopes that apply to key k asking for model (those with any limit set),
 * written to out (QUOTA_MAX_SCOPES entries); returns how many. */
int quota_scopes(const struct key_record *k, const char *model, const char *prefix,
                 struct quota_scope *out);
/* Estimated tokens of a parsed request: prompt (ceil(chars / 4) + given token
 * ids + 8 per request) into *prompt, and the total with the completion cap
 * (`cap` per choice) as the return value. */
long quota_estimate(const struct oai_request *o, long cap, long *prompt);
/* Writes a reset duration the way OpenAI does ("20ms", "1s", "6m0s",
 * "1h2m3.5s") into buf. Returns buf. */
char *quota_format_duration(long ms, char *buf, size_t cap);
/* Retry-After seconds for a wait of ms (rounded up, at least 1). */
long quota_retry_after_s(long ms);

/* The reserve stage: nothing for static keys; otherwise reserve on Redis
 * (async), or apply the on_redis_error policy; 429 with Retry-After when over. */
enum stage_rc quota_reserve(struct request *r);
/* Settle, called once from request_end for requests with a tenant key: charge,
 * refund, release, and append the usage record (to the local spool when Redis
 * is unreachable). Never touches r after returning. */
void quota_settle(struct request *r);
/* Metering from a stream chunk (any OpenAI-shaped chunk object): records the
 * upstream's usage and counts content chunks. Returns true when the chunk is
 * the usage-only chunk the client did not ask for (the caller drops it). */
bool quota_usage_from_chunk(struct request *r, const cJSON *chunk);
/* Metering from a buffered 200 answer: records its usage object. */
void quota_usage_from_body(struct request *r, const cJSON *body);
/* Adds the x-ratelimit-* headers known for r to its response headers. */
void quota_add_headers(struct request *r);

/* Per-worker state: the local limiter, the settle batch and (worker 0) the spool replay
 * timer. */
struct quota_worker *quota_worker_new(struct worker *w);
/* Spools settles still queued (never sent); run after redis_free. */
void quota_worker_free(struct quota_worker *q);
/* Appends the quota and usage metrics (Prometheus text) to out. */
void quota_metrics_write(struct evbuffer *out);
/* Sends the queued settles now (one script call); a no-op when none are queued. */
void quota_flush(struct quota_worker *q);
/* Gives every admission grant's unspent part back to Redis (at drain). */
void quota_return_grants(struct quota_worker *q);

#endif
