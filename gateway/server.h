/* The HTTP front: evhttp setup and limits, endpoint dispatch, simple endpoints
 * (/healthz, /readyz, /v1/models), authentication, and OpenAI-shaped errors. */
#ifndef LLMGATE_GATEWAY_SERVER_H
#define LLMGATE_GATEWAY_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "gateway/openai.h"
#include "gateway/worker.h"

struct evbuffer;
struct evhttp_request;
struct evhttp_connection;
struct request;

/* Per client connection, created at its first request. */
struct conn {
    struct worker *w;
    struct evhttp_connection *evcon;
    evutil_socket_t fd;
    struct event *peer_closed; /* EV_CLOSED watch while a request waits (PITFALLS) */
    struct request *active;    /* the request in progress, if any */
};

/* Creates the worker's evhttp on its listening socket; 0 or -1 with err. */
int server_init(struct worker *w, char *err, size_t errlen);
/* Applies the limits of w->cfg to w->http (after a reload). */
void server_apply_limits(struct worker *w);
/* Frees connections still tracked at shutdown. */
void server_free(struct worker *w);

/* Sends e as an OpenAI-shaped error reply with x-request-id; completes req. */
void server_reply_error(struct evhttp_request *req, const struct oai_error *e,
                        const char *request_id, bool close_conn);
/* The HTTP reason phrase for a status ("Error" for unusual ones). */
const char *server_reason_phrase(int status);
/* Adds the headers every response carries. */
void server_common_headers(struct evhttp_request *req, const char *request_id, bool close_conn);
/* Sends what evhttp just queued for req's client in this loop pass. evhttp
 * only arms a write event, so a reply otherwise waits for the next epoll round
 * (and costs two epoll_ctl calls). Call it right after evhttp_send_reply_chunk*;
 * full replies go through server_send_reply and stream ends through
 * server_end_reply. req stays valid until the caller returns. */
void server_write_now(struct evhttp_request *req);
/* evhttp_send_reply followed by server_write_now: how every full reply is sent. */
void server_send_reply(struct evhttp_request *req, int status, const char *reason,
                       struct evbuffer *body);
/* Sends the head of a 200 streamed reply: close-delimited for HTTP/1.0 clients,
 * no read timeout and bounded client input while it runs, a write timeout of
 * write_timeout_ms; the connection's read timeout (w's config) and input come
 * back when the reply completes. */
void server_stream_start(struct evhttp_request *req, struct worker *w, unsigned write_timeout_ms);
/* evhttp_send_reply_end followed by server_write_now where that is safe. */
void server_end_reply(struct evhttp_request *req);
/* Appends one Prometheus counter (HELP, TYPE and its value) to a /metrics body. */
void server_metric_counter(struct evbuffer *out, const char *name, const char *help,
                           unsigned long long v);

/* Starts/stops watching the connection for a peer close while a request is active. */
void conn_watch(struct conn *c, struct request *r);
void conn_unwatch(struct conn *c);

#endif
