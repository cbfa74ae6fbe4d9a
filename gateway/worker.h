/* Worker threads: each owns an event_base with its evhttp server on the shared
 * SO_REUSEPORT port, a libcurl multi client and a config snapshot. Other
 * threads talk to a worker only through worker_post_*() (queue + event_active). */
#ifndef LLMGATE_GATEWAY_WORKER_H
#define LLMGATE_GATEWAY_WORKER_H

#include <event2/buffer.h>
#include <event2/util.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/config.h"

struct conn;
struct gateway;
struct keycache;
struct quota_worker;
struct cachestage_worker;
struct request;

struct worker {
    unsigned index;
    struct gateway *gw;
    pthread_t thread;
    bool thread_started;
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    evutil_socket_t listen_fd;
    struct upstream *up;
    struct redis *redis;              /* this worker's Redis connection (cache/redis.h) */
    struct keycache *keycache;        /* tenant keys read from Redis (gateway/keys.c) */
    struct quota_worker *quota;       /* local limiter, spool replay (gateway/quota.c) */
    struct cachestage_worker *rcache; /* response-cache single flight (gateway/cachestage.c) */
    struct config *cfg;               /* this worker's snapshot (one reference) */
    struct event *wake;               /* made active by other threads */
    struct event *health;             /* worker 0 only: upstream probe timer */
    struct event *lag;                /* event-loop lag probe (LAG_TICK_MS) */
    uint64_t lag_due_us;              /* when the probe should fire next */

    pthread_mutex_t mu;     /* guards the two fields below */
    struct config *pending; /* next snapshot, one reference */
    bool stop_requested;

    bool draining;
    struct event *drain_timer;
    unsigned active;            /* requests being processed */
    struct request *spare_reqs; /* freed requests kept for reuse (gateway/request.c) */
    unsigned n_spare_reqs;
    unsigned n_conns;    /* client connections that sent a request */
    struct conn **conns; /* by socket fd */
    size_t conns_cap;
};

struct gateway {
    struct worker *workers;
    unsigned n_workers;
};

/* Prepares a worker around a bound, listening socket (ownership passes to the
 * worker); 0 on success, -1 with err. */
int worker_init(struct worker *w, struct gateway *gw, unsigned index, struct config *cfg,
                evutil_socket_t listen_fd, char *err, size_t errlen);
/* Starts the worker's thread; 0 on success. */
int worker_start(struct worker *w);
/* Hands a new snapshot to the worker (takes a reference); any thread. */
void worker_post_config(struct worker *w, struct config *cfg);
/* Asks the worker to stop accepting, drain in-flight requests and exit; any thread. */
void worker_post_stop(struct worker *w);
/* Waits for the thread and frees the worker's resources. */
void worker_join(struct worker *w);
/* Called by the request path when a request ends; ends the drain when idle. */
void worker_request_done(struct worker *w);
/* Appends the event-loop lag histogram (all workers, Prometheus text) to out. */
void worker_metrics_write(struct evbuffer *out);

#endif
