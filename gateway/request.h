/* The proxy request lifecycle: route, dispatch upstream, relay (buffered or
 * SSE), settle. One struct request per client request; it lives and dies on
 * its worker's thread. */
#ifndef LLMGATE_GATEWAY_REQUEST_H
#define LLMGATE_GATEWAY_REQUEST_H

#include "gateway/openai.h"
#include "gateway/server.h"

struct evhttp_request;

/* Runs the proxy stages for an authenticated request whose body parsed into
 * *oai (ownership of oai's contents passes here). Always answers the client,
 * now or later. */
void request_proxy(struct worker *w, struct conn *c, struct evhttp_request *req,
                   const char *request_id, const char *path, struct oai_request *oai,
                   uint64_t t0_us, size_t bytes_in);
/* How the client went away, which decides who completes the evhttp request. */
enum client_gone {
    GONE_PEER_CLOSED, /* our EV_CLOSED watch fired; evhttp still holds the request */
    GONE_DETACHED,    /* evhttp dropped the connection and detached the request: ours to complete */
    GONE_EVHTTP_FREES /* the connection is being freed with the request on it (shutdown) */
};
/* The evhttp request a proxied request answers. */
struct evhttp_request *request_evreq(const struct request *r);
/* The client went away: cancel the upstream transfer and finish. */
void request_client_gone(struct request *r, enum client_gone how);

#endif
