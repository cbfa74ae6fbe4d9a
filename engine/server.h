/* llmgate-engine's HTTP side: the OpenAI-compatible endpoints over the scheduler, on one libevent
 * loop (the main thread). The scheduler thread reports through a queue and an eventfd; only the
 * main thread touches evhttp. */
#ifndef LLMGATE_ENGINE_SERVER_H
#define LLMGATE_ENGINE_SERVER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/chat_template.h"
#include "engine/model.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"

struct event_base;
struct evhttp;
struct evhttp_bound_socket;
struct event;
struct srv_conn;
struct srv_msg;

#define SRV_STATUS_SLOTS 12

struct engine_server {
    /* engine, owned by main */
    struct model *model;
    struct tokenizer *tok;
    struct chat_template tmpl;
    struct backend *backend;
    struct sched *sched;
    const char *model_name; /* served name */
    size_t max_body_bytes;
    size_t max_stream_buffer; /* unsent bytes of a stream above which its sequence is paused */
    int read_timeout_ms;      /* idle keep-alive and slow request bound; 0: READ_TIMEOUT_S */

    /* main thread */
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound[2]; /* the listeners, disabled at shutdown */
    int n_bound;
    int stopping;            /* the scheduler is gone: final replies close their connections */
    int flushing;            /* connections still writing a final reply at shutdown */
    struct event *wake_ev;   /* eventfd readable: scheduler messages are queued */
    struct srv_conn **conns; /* by fd */
    size_t conns_cap;
    int active; /* requests waiting on the scheduler */
    uint64_t status_count[SRV_STATUS_SLOTS];
    uint64_t prompt_tokens_total, completion_tokens_total;
    uint64_t stream_pauses_total;

    /* scheduler thread -> main thread */
    int wake_fd;
    pthread_mutex_t mu;
    struct srv_msg *head, *tail;
};

/* Sets up evhttp on base with safe limits and the endpoints, and the eventfd the scheduler
 * wakes the loop with. 0, or -1 with err. */
int server_http_init(struct engine_server *srv, char *err, size_t errlen);

/* Serves on an already listening socket (unix or TCP). 0, or -1 with err. */
int server_http_listen(struct engine_server *srv, int fd, char *err, size_t errlen);

/* After the scheduler has been freed (every request finished): stops accepting, answers what is
 * left, runs the loop until those answers are written (at most 2 s; another event_base_loopexit,
 * as a second signal makes, ends it sooner), then frees the HTTP server and the queue. */
void server_http_free(struct engine_server *srv);

/* Delivers the messages the scheduler queued (also called at shutdown). */
void server_http_drain(struct engine_server *srv);

#endif
