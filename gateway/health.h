/* Upstream reachability for /readyz: worker 0 probes every provider
 * periodically; any thread reads the last result. */
#ifndef LLMGATE_GATEWAY_HEALTH_H
#define LLMGATE_GATEWAY_HEALTH_H

#include "gateway/worker.h"

enum health_state { HEALTH_UNKNOWN = 0, HEALTH_UP, HEALTH_DOWN };

/* Starts the periodic probe on w's loop (worker 0). 0 on success. */
int health_start(struct worker *w);
void health_stop(struct worker *w);
/* Last probe result for a provider name. Thread-safe. */
enum health_state health_get(const char *provider);

#endif
