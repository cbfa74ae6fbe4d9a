/* A Redis pub/sub subscriber for one worker thread: its own hiredis async
 * connection (a subscribed connection can run no other command) on the
 * worker's event_base, SUBSCRIBEd to one channel, reconnecting with backoff.
 * Messages published while it was disconnected are lost, so on every
 * (re)subscription after the first it calls on_reset: the owner must assume it
 * missed something. */
#ifndef LLMGATE_CACHE_PUBSUB_H
#define LLMGATE_CACHE_PUBSUB_H

#include <stddef.h>

struct event_base;
struct pubsub;

/* A message on the channel; data is valid only during the call. */
typedef void (*pubsub_message_cb)(const char *data, size_t len, void *ud);
/* The subscription was re-established after a break. */
typedef void (*pubsub_reset_cb)(void *ud);

/* Starts connecting and subscribing; NULL on allocation failure. */
struct pubsub *pubsub_new(struct event_base *base, const char *host, unsigned port,
                          const char *channel, pubsub_message_cb on_message,
                          pubsub_reset_cb on_reset, void *ud);
/* Closes the connection and frees the subscriber. NULL is fine. */
void pubsub_free(struct pubsub *p);

#endif
