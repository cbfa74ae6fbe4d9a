/* Route resolution: a public model name -> the target that serves it.
 * Today one model maps to one provider; routing policies (fallback chains,
 * weights) will extend struct route without changing callers. */
#ifndef LLMGATE_ROUTING_ROUTER_H
#define LLMGATE_ROUTING_ROUTER_H

#include "gateway/config.h"

struct route_target {
    const struct provider_conf *provider; /* borrowed from the config snapshot */
    const char *upstream_model;           /* model name sent upstream */
    const char *public_model;             /* model name the client asked for */
};

/* Resolves model against the snapshot; 0 and *out filled, or -1 when no route exists.
 * The target borrows from cfg, so the caller must hold a reference on it. */
int router_resolve(const struct config *cfg, const char *model, struct route_target *out);

#endif
