/* The routing side of the admin surface: GET /admin/v1/policy (the active
 * policy snapshot, its origin and live breaker/cooldown state), the routing
 * counters on GET /metrics, and the policy detail of /readyz. */
#ifndef LLMGATE_GATEWAY_ROUTING_ADMIN_H
#define LLMGATE_GATEWAY_ROUTING_ADMIN_H

#include <stddef.h>

#include "gateway/request.h"

struct evbuffer;

/* Answers GET /admin/v1/policy for an authenticated admin request; STAGE_DONE. */
enum stage_rc routing_admin_policy(struct request *r);
/* Appends the routing metrics (Prometheus text format 0.0.4) to out. */
void routing_admin_metrics(struct evbuffer *out);
/* Writes the JSON object for /readyz's "policy" member into buf; returns its length
 * (truncated output is still valid JSON when n >= 64). */
size_t routing_admin_ready_detail(const struct config *cfg, char *buf, size_t n);

#endif
