/* The engine supervisor: for every `local` provider with autostart, runs llmgate-engine as a
 * child process on the main thread's event loop, polls its /health until it serves, restarts it
 * with exponential backoff when it dies (SIGCHLD), and stops it with SIGTERM on shutdown. */
#ifndef LLMGATE_GATEWAY_SUPERVISOR_H
#define LLMGATE_GATEWAY_SUPERVISOR_H

#include <stddef.h>

#include "gateway/config.h"

struct event_base;
struct supervisor;

/* Starts the engines cfg asks for (none: *out is still a valid, empty supervisor). The settings
 * are copied: a reload does not restart engines. Returns 0 and *out (free with
 * supervisor_stop), or -1 with err (fork failed, out of memory). */
int supervisor_start(struct event_base *base, const struct config *cfg, struct supervisor **out,
                     char *err, size_t errlen);

/* Number of engines that have answered /health since their last start (tests, logs). */
int supervisor_ready_count(const struct supervisor *s);

/* SIGTERMs every child, waits for them (SIGKILL after a grace period) and frees s. NULL: no-op.
 * Call after the loop stopped and the workers drained. */
void supervisor_stop(struct supervisor *s);

#endif
