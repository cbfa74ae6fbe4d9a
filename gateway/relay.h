/* Dispatch to an upstream target and relay of its answer to the client:
 * buffered JSON passed through, or SSE events re-framed as they arrive, with
 * backpressure and OpenAI-shaped failures. */
#ifndef LLMGATE_GATEWAY_RELAY_H
#define LLMGATE_GATEWAY_RELAY_H

#include "gateway/request.h"

/* Prepares the relay state of r; 0 or -1 on allocation failure. */
int relay_init(struct request *r);
/* Releases the relay state (cancels a transfer still running, without callbacks). */
void relay_free(struct request *r);
/* The dispatch stage: renders the upstream body for r->target and starts the
 * transfer; the relay ends the request when the answer is complete. */
enum stage_rc relay_dispatch(struct request *r);
/* Stops a running transfer (client gone); the request is ended by the caller. */
void relay_cancel(struct request *r);
/* Whether provider p forwards the client header name upstream (forward_headers). */
bool relay_forwards_header(const struct provider_conf *p, const char *name);
/* Whether the client has seen the response head (a stream started). */
bool relay_started(const struct request *r);

#endif
