/* Listening sockets shared by the gateway and the engine server. */
#ifndef LLMGATE_COMMON_NET_H
#define LLMGATE_COMMON_NET_H

#include <stdbool.h>
#include <stddef.h>

/* Opens a non-blocking, close-on-exec TCP listener on host:*port (port 0 picks a
 * free one; *port receives the bound port). reuseport adds SO_REUSEPORT so
 * several sockets (one per worker) can share the port. Returns the fd, or -1
 * with err filled. */
int net_listen_tcp(const char *host, unsigned *port, int backlog, bool reuseport, char *err,
                   size_t errlen);

#endif
