/* Route resolution: a request (model, tenant, headers) -> the ordered list of
 * targets to try: the weighted choice (optionally sticky), the route's other
 * weighted targets, then its fallbacks. Without a policy snapshot the config's
 * "models" section maps a model to its one target. */
#ifndef LLMGATE_ROUTING_ROUTER_H
#define LLMGATE_ROUTING_ROUTER_H

#include <stdbool.h>
#include <stdint.h>

#include "gateway/config.h"
#include "routing/policy.h"

#define ROUTE_MAX_CANDIDATES 32

struct route_target {
    const struct provider_conf *provider; /* borrowed from the config snapshot */
    const char *upstream_model;           /* model name sent upstream */
    const char *public_model;             /* model name the client asked for */
    struct target_state *state;           /* shared breaker/cooldown/budget; NULL without policy */
    bool fallback;                        /* from the route's fallback list */
};

struct route_plan {
    const struct policy_route *route; /* NULL when resolved from the models section alone */
    struct route_target c[ROUTE_MAX_CANDIDATES];
    unsigned n;
};

/* Fills out for q against cfg (its policy snapshot when it has one). rnd is a
 * uniform random number for the weighted choice (sticky routes hash their key
 * instead). Returns 0, or -1 when no route matches. Everything in out borrows
 * from cfg and from q->model, so both must outlive it. */
int router_plan(const struct config *cfg, const struct route_query *q, uint64_t rnd,
                struct route_plan *out);
/* A fast thread-local pseudo-random number (xorshift, seeded from the OS). */
uint64_t router_random(void);

#endif
