/* The HTTP front of a worker: evhttp configured with safe limits, the endpoint
 * table, the receive -> authenticate -> parse stages, and error replies. */
#include "gateway/server.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_struct.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <errno.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

#include "common/log.h"
#include "common/util.h"
#include "gateway/accesslog.h"
#include "gateway/admin.h"
#include "gateway/auth.h"
#include "gateway/cachestage.h"
#include "gateway/errpage.h"
#include "gateway/health.h"
#include "gateway/quota.h"
#include "gateway/request.h"
#include "gateway/routing_admin.h"

/* ---------------------------------------------------------------- replies */

void server_common_headers(struct evhttp_request *req, const char *request_id, bool close_conn)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "application/json");
    if (request_id) evhttp_add_header(h, "x-request-id", request_id);
    if (close_conn) evhttp_add_header(h, "Connection", "close");
}

void server_write_now(struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (!evcon) return;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    /* Only a reply evhttp is waiting to write: it enabled EV_WRITE with data queued. */
    if (!(bufferevent_get_enabled(bev) & EV_WRITE) ||
        evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        return;
    /* Run the bufferevent's own write callback in this loop pass, as if epoll had
     * said "writable" (a socket with an empty send queue is). It goes to the
     * back of the active queue: the replies of one epoll batch still go out
     * together after its requests are read, its error, timeout and watermark
     * handling is libevent's, and evhttp completes the request only once our
     * caller has returned. All of it written, it deletes the write event and
     * the changelist drops the epoll_ctl that armed it; a socket that takes less
     * keeps the event for the rest. (bufferevent_struct.h: there is no call for
     * this; the struct is part of libevent 2.1's ABI.) */
    event_active(&bev->ev_write, EV_WRITE, 1);
}

void server_send_reply(struct evhttp_request *req, int status, const char *reason,
                       struct evbuffer *body)
{
    evhttp_send_reply(req, status, reason, body);
    server_write_now(req);
}

void server_end_reply(struct evhttp_request *req)
{
    /* Without chunked framing, evhttp_send_reply_end with nothing queued completes
     * (and may free) the request and its connection at once: nothing to write then. */
    const char *te =
        evhttp_find_header(evhttp_request_get_output_headers(req), "Transfer-Encoding");
    bool chunked = te && strcmp(te, "chunked") == 0;
    /* A request evhttp detached from its connection is freed by the call. */
    bool attached = evhttp_request_get_connection(req) != NULL;
    evhttp_send_reply_end(req);
    if (chunked && attached) server_write_now(req);
}

/* What a client may send while its stream runs and evhttp keeps for the next
 * request. evhttp reads on while it writes a reply (to see a close) with no
 * limit and nothing consuming the input, so a client could grow the gateway
 * without bound. Past this, the input is dropped and the connection closes
 * after the stream. (Suspending reads instead, with a read watermark, would
 * blind the bufferevent to a reset: epoll reports it as EPOLLERR, which
 * libevent 2.1 never turns into EV_CLOSED, and the level-triggered error
 * would spin the loop until the next write.) */
#define STREAM_INPUT_MAX (64u << 10)

static struct timeval ms_timeval(unsigned ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

/* Input arrived during a stream; arg is the streamed evhttp request (this
 * callback is removed before evhttp frees it, or freed with the connection). */
static void on_stream_input(struct evbuffer *in, const struct evbuffer_cb_info *info, void *arg)
{
    size_t len = evbuffer_get_length(in);
    if (info->n_added == 0 || len <= STREAM_INPUT_MAX) return;
    evbuffer_drain(in, len);
    /* What was dropped may have been part of a pipelined request: nothing more
     * is read from this connection. evhttp checks the reply's headers for
     * "Connection: close" when the reply completes (they were sent already). */
    struct evkeyvalq *out = evhttp_request_get_output_headers(arg);
    const char *conn = evhttp_find_header(out, "Connection");
    if (!conn || strcasecmp(conn, "close") != 0) {
        evhttp_remove_header(out, "Connection");
        evhttp_add_header(out, "Connection", "close");
    }
}

/* The streamed reply is complete (evhttp_send_done, before the connection
 * closes or reads its next request): the connection's idle read timeout, and
 * input kept for the next request, as between requests. Never called for a
 * reply that failed: the connection is freed then. */
static void on_stream_complete(struct evhttp_request *req, void *arg)
{
    struct worker *w = arg;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (!evcon) return;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    evbuffer_remove_cb(bufferevent_get_input(bev), on_stream_input, req);
    struct timeval tv = ms_timeval(w->cfg->read_timeout_ms);
    evhttp_connection_set_timeout_tv(evcon, &tv);
}

void server_stream_start(struct evhttp_request *req, struct worker *w, unsigned write_timeout_ms)
{
    if (req->major < 1 || (req->major == 1 && req->minor < 1)) {
        /* No chunked framing before HTTP/1.1, and evhttp would answer a kept-alive
         * HTTP/1.0 request with "Content-Length: 0" (what is queued at the start)
         * followed by the events: the body ends at the close instead. */
        struct evkeyvalq *in = evhttp_request_get_input_headers(req);
        while (evhttp_find_header(in, "Connection"))
            evhttp_remove_header(in, "Connection");
        struct evkeyvalq *out = evhttp_request_get_output_headers(req);
        evhttp_remove_header(out, "Connection");
        evhttp_add_header(out, "Connection", "close");
    }
    evhttp_request_set_on_complete_cb(req, on_stream_complete, w);
    evhttp_send_reply_start(req, 200, "OK");
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (!evcon) return;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    /* evhttp's one timeout would also cut a stream whose client is silent
     * (libevent #715): no read timeout from here, only a write timeout, until
     * on_stream_complete puts the connection's own back. */
    struct timeval wt = ms_timeval(write_timeout_ms);
    bufferevent_set_timeouts(bev, NULL, &wt);
    if (!evbuffer_add_cb(bufferevent_get_input(bev), on_stream_input, req))
        log_warn("server", "cannot bound a stream's client input (out of memory)");
}

static void reply_json(struct evhttp_request *req, int status, const char *reason, const char *json,
                       size_t len, const char *request_id, bool close_conn)
{
    server_common_headers(req, request_id, close_conn);
    struct evbuffer *b = evbuffer_new();
    if (b) evbuffer_add(b, json, len);
    server_send_reply(req, status, reason, b);
    if (b) evbuffer_free(b);
}

const char *server_reason_phrase(int status)
{
    switch (status) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 200: return "OK";
    case 409: return "Conflict";
    case 422: return "Unprocessable Entity";
    default: return "Error";
    }
}

void server_reply_error(struct evhttp_request *req, const struct oai_error *e,
                        const char *request_id, bool close_conn)
{
    char json[1024];
    int n = oai_error_render(e, json, sizeof json);
    if (n < 0)
        n = snprintf(json, sizeof json,
                     "{\"error\":{\"message\":\"error\",\"type\":\"server_error\",\"param\":null,"
                     "\"code\":null}}");
    reply_json(req, e->status, server_reason_phrase(e->status), json, (size_t)n, request_id,
               close_conn);
}

/* ---------------------------------------------------------------- connections */

static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    struct conn *c = arg;
    struct worker *w = c->w;
    if (c->active) {
        struct request *r = c->active;
        conn_unwatch(c);
        /* A request evhttp detached (the client failed mid-request) is ours to
         * complete; one still attached is freed by evhttp with its connection. */
        request_client_gone(r, evhttp_request_get_connection(request_evreq(r)) ? GONE_EVHTTP_FREES
                                                                               : GONE_DETACHED);
    }
    (void)evcon;
    if (c->fd >= 0 && (size_t)c->fd < w->conns_cap && w->conns[c->fd] == c) w->conns[c->fd] = NULL;
    if (c->peer_closed) event_free(c->peer_closed);
    w->n_conns--;
    free(c);
}

/* The watch is EV_CLOSED | EV_READ: a reset comes as EPOLLERR|EPOLLHUP, which
 * libevent 2.1 reports as EV_READ|EV_WRITE, never EV_CLOSED, so an EV_CLOSED-only
 * watch left the level-triggered error to spin the loop until the upstream
 * answered. Readable is a close or a reset when a peek says so; bytes to read
 * are the client's next request (pipelined): the watch stops rather than spin
 * on them, and the request finds out about a departure when it writes. */
static void on_peer_closed(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    if (!c->active) return;
    if (!(what & EV_CLOSED)) {
        char b;
        ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n > 0) {
            event_del(c->peer_closed);
            return;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    }
    request_client_gone(c->active, GONE_PEER_CLOSED);
}

void conn_watch(struct conn *c, struct request *r)
{
    c->active = r;
    if (c->peer_closed) event_add(c->peer_closed, NULL);
}

void conn_unwatch(struct conn *c)
{
    if (c->peer_closed) event_del(c->peer_closed);
}

/* The connection's state, created at its first request. Returns NULL (and the
 * caller answers 503) when the worker is at its connection limit. */
static struct conn *conn_get(struct worker *w, struct evhttp_request *req, bool *over_limit)
{
    *over_limit = false;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (!evcon) return NULL;
    evutil_socket_t fd = bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
    if (fd < 0 || (size_t)fd >= w->conns_cap) return NULL;
    struct conn *c = w->conns[fd];
    if (c && c->evcon == evcon) return c;
    if (w->n_conns >= w->cfg->max_connections / (w->gw->n_workers ? w->gw->n_workers : 1) + 1) {
        *over_limit = true;
        return NULL;
    }
    c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->w = w;
    c->evcon = evcon;
    c->fd = fd;
    /* Answers and stream events leave as soon as they are written: without this,
     * Nagle holds a small write (an SSE event, a reply after a partial write)
     * until the client ACKs the previous one, which a delayed ACK makes 40 ms. */
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (event_base_get_features(w->base) & EV_FEATURE_EARLY_CLOSE)
        c->peer_closed = event_new(w->base, fd, EV_CLOSED | EV_READ, on_peer_closed, c);
    w->conns[fd] = c;
    w->n_conns++;
    evhttp_connection_set_closecb(evcon, on_conn_close, c);
    return c;
}

/* ---------------------------------------------------------------- endpoints */

static void send_error(struct evhttp_request *req, const char *rid, bool close_conn, int status,
                       const char *type, const char *code, const char *param, const char *msg)
{
    struct oai_error e;
    oai_error_set(&e, status, type, code, param, "%s", msg);
    server_reply_error(req, &e, rid, close_conn);
}

static void handle_healthz(struct worker *w, struct evhttp_request *req, const char *rid)
{
    static const char body[] = "{\"status\":\"ok\"}";
    reply_json(req, 200, "OK", body, sizeof body - 1, rid, w->draining);
}

static void handle_readyz(struct worker *w, struct evhttp_request *req, const char *rid)
{
    char buf[4096];
    size_t pos = 0;
    bool ready = !w->draining;
    pos += (size_t)snprintf(buf + pos, sizeof buf - pos,
                            "{\"config\":\"loaded\",\"draining\":%s,\"providers\":{",
                            w->draining ? "true" : "false");
    for (size_t i = 0; i < w->cfg->n_providers && pos < sizeof buf - 128; i++) {
        enum health_state st = health_get(w->cfg->providers[i].name);
        const char *s = st == HEALTH_UP     ? "reachable"
                        : st == HEALTH_DOWN ? "unreachable"
                                            : "unknown";
        if (st != HEALTH_UP) ready = false;
        pos += (size_t)snprintf(buf + pos, sizeof buf - pos, "%s\"%.64s\":\"%s\"", i ? "," : "",
                                w->cfg->providers[i].name, s);
    }
    if (pos < sizeof buf - 1600) {
        pos += (size_t)snprintf(buf + pos, sizeof buf - pos, "},\"policy\":");
        pos += routing_admin_ready_detail(w->cfg, buf + pos, 1400);
    } else {
        pos += (size_t)snprintf(buf + pos, sizeof buf - pos, "}");
    }
    pos += (size_t)snprintf(buf + pos, sizeof buf - pos, ",\"status\":\"%s\"}",
                            ready ? "ready" : "not_ready");
    reply_json(req, ready ? 200 : 503, ready ? "OK" : "Service Unavailable", buf, pos, rid,
               w->draining);
}

void server_metric_counter(struct evbuffer *out, const char *name, const char *help,
                           unsigned long long v)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
                        v);
}

/* GET /metrics: Prometheus text (routing, cache, quota, request durations, loop lag). */
static void handle_metrics(struct worker *w, struct evhttp_request *req, const char *rid)
{
    struct evbuffer *b = evbuffer_new();
    if (b) routing_admin_metrics(b);
    if (b) cachestage_metrics_write(b);
    if (b) quota_metrics_write(b);
    if (b) request_metrics_write(b);
    if (b) worker_metrics_write(b);
    server_common_headers(req, rid, w->draining);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_remove_header(h, "Content-Type");
    evhttp_add_header(h, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    server_send_reply(req, 200, "OK", b);
    if (b) evbuffer_free(b);
}

/* Probes are answered here; everything else runs a request pipeline. */
enum endpoint_kind { EP_HEALTHZ, EP_READYZ, EP_METRICS, EP_PIPELINE };

static const struct endpoint {
    const char *path;
    enum evhttp_cmd_type method;
    enum endpoint_kind kind;
    enum request_kind pipeline;
} endpoints[] = {
    {"/healthz", EVHTTP_REQ_GET, EP_HEALTHZ, 0},
    {"/readyz", EVHTTP_REQ_GET, EP_READYZ, 0},
    {"/metrics", EVHTTP_REQ_GET, EP_METRICS, 0},
    {"/v1/models", EVHTTP_REQ_GET, EP_PIPELINE, REQ_MODELS},
    {"/v1/chat/completions", EVHTTP_REQ_POST, EP_PIPELINE, REQ_CHAT},
    {"/v1/completions", EVHTTP_REQ_POST, EP_PIPELINE, REQ_COMPLETIONS},
    {"/v1/embeddings", EVHTTP_REQ_POST, EP_PIPELINE, REQ_EMBEDDINGS},
};

static const char *method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_PATCH: return "PATCH";
    default: return "OTHER";
    }
}

/* receive: a usable x-request-id is kept (so callers can correlate), anything
 * else is replaced with a fresh one. */
static void request_id_of(struct evhttp_request *req, char out[72])
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "x-request-id");
    if (h) {
        size_t n = strlen(h);
        bool ok = n > 0 && n <= 64;
        for (size_t i = 0; ok && i < n; i++) {
            char ch = h[i];
            ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '-' || ch == '_' || ch == '.' || ch == ':';
        }
        if (ok) {
            memcpy(out, h, n + 1);
            return;
        }
    }
    util_request_id(out);
}

static void log_simple(const char *rid, const char *method, const char *path, int status,
                       uint64_t t0, size_t in, const char *error)
{
    struct accesslog_entry e = {.ts_ms = util_wall_ms(),
                                .request_id = rid,
                                .method = method,
                                .path = path,
                                .status = status,
                                .bytes_in = in,
                                .total_ms = (double)(util_now_us() - t0) / 1000.0,
                                .error = error};
    accesslog_write(&e);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct worker *w = arg;
    uint64_t t0 = util_now_us();
    char rid[72];
    request_id_of(req, rid);
    const char *uri = evhttp_request_get_uri(req);
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    const char *mname = method_name(method);
    char path[256];
    size_t plen = strcspn(uri ? uri : "", "?#");
    if (plen >= sizeof path) plen = sizeof path - 1;
    memcpy(path, uri ? uri : "", plen);
    path[plen] = '\0';
    while (plen > 1 && path[plen - 1] == '/')
        path[--plen] = '\0';
    bool close_conn = w->draining;

    bool over;
    struct conn *c = conn_get(w, req, &over);
    if (over) {
        send_error(req, rid, true, 503, "server_error", "too_many_connections", NULL,
                   "The gateway has too many open connections; retry shortly.");
        return log_simple(rid, mname, path, 503, t0, 0, "too_many_connections");
    }

    const struct endpoint *ep = NULL;
    bool path_known = false;
    for (size_t i = 0; i < ARRAY_LEN(endpoints); i++) {
        if (strcmp(endpoints[i].path, path) != 0) continue;
        path_known = true;
        if (endpoints[i].method == method ||
            (method == EVHTTP_REQ_HEAD && endpoints[i].method == EVHTTP_REQ_GET))
            ep = &endpoints[i];
    }
    /* The admin API (gateway/admin.c) routes its own paths below /admin/v1/. */
    if (!ep && !path_known && admin_path(path)) {
        if (!c) {
            send_error(req, rid, true, 503, "server_error", "overloaded", NULL,
                       "The gateway is out of memory.");
            return log_simple(rid, mname, path, 503, t0, 0, "overloaded");
        }
        request_start(w, c, req, REQ_ADMIN, rid, mname, "/admin/v1", t0);
        return;
    }
    if (!ep) {
        char msg[384];
        if (path_known) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
                              strncmp(path, "/v1/models", 10) == 0 || path[1] != 'v' ? "GET"
                                                                                     : "POST");
            snprintf(msg, sizeof msg, "Method %s is not allowed for %.200s.", mname, path);
            send_error(req, rid, close_conn, 405, "invalid_request_error", "method_not_allowed",
                       NULL, msg);
            return log_simple(rid, mname, path, 405, t0, 0, "method_not_allowed");
        }
        snprintf(msg, sizeof msg, "Unknown request URL: %s %.200s.", mname, path);
        send_error(req, rid, close_conn, 404, "invalid_request_error", "unknown_url", NULL, msg);
        return log_simple(rid, mname, path, 404, t0, 0, "unknown_url");
    }

    if (ep->kind == EP_HEALTHZ) return handle_healthz(w, req, rid);
    if (ep->kind == EP_READYZ) return handle_readyz(w, req, rid);
    if (ep->kind == EP_METRICS) return handle_metrics(w, req, rid);

    if (!c) {
        send_error(req, rid, true, 503, "server_error", "overloaded", NULL,
                   "The gateway is out of memory.");
        return log_simple(rid, mname, path, 503, t0, 0, "overloaded");
    }
    request_start(w, c, req, ep->pipeline, rid, mname, ep->path, t0);
}

/* ---------------------------------------------------------------- evhttp's own error pages */

/* evhttp's own error pages become OpenAI JSON (gateway/errpage.h). */
static void rewrite_html_error(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct worker *w = arg;
    char minor;
    int status = errpage_status(buf, info, &minor);
    if (!status) return;
    struct oai_error e;
    if (status == 413)
        oai_error_set(&e, status, "invalid_request_error", "request_too_large", NULL,
                      "The request body is larger than the limit of %zu bytes.",
                      w->cfg->max_body_bytes);
    else
        oai_error_set(&e, status, "invalid_request_error", "invalid_http", NULL,
                      "The HTTP request could not be parsed (%d).", status);
    errpage_replace(buf, minor, &e, server_reason_phrase(status));
}

static struct bufferevent *make_client_bev(struct event_base *base, void *arg)
{
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (bev && !evbuffer_add_cb(bufferevent_get_output(bev), rewrite_html_error, arg)) {
        bufferevent_free(bev);
        return NULL;
    }
    return bev;
}

/* ---------------------------------------------------------------- setup */

void server_apply_limits(struct worker *w)
{
    const struct config *cfg = w->cfg;
    evhttp_set_max_headers_size(w->http, (ev_ssize_t)cfg->max_header_bytes);
    evhttp_set_max_body_size(w->http, (ev_ssize_t)cfg->max_body_bytes);
    struct timeval tv = {.tv_sec = cfg->read_timeout_ms / 1000,
                         .tv_usec = (cfg->read_timeout_ms % 1000) * 1000};
    evhttp_set_timeout_tv(w->http, &tv);
}

int server_init(struct worker *w, char *err, size_t errlen)
{
    struct rlimit rl;
    size_t cap = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (1u << 20))
        cap = (size_t)rl.rlim_cur;
    w->conns = calloc(cap, sizeof *w->conns);
    w->http = evhttp_new(w->base);
    if (!w->conns || !w->http) {
        snprintf(err, errlen, "out of memory creating the HTTP server");
        return -1;
    }
    w->conns_cap = cap;
    /* libevent's defaults are unsafe (PITFALLS): set every limit explicitly. */
    evhttp_set_default_content_type(w->http, "application/json");
    evhttp_set_allowed_methods(w->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    /* Read the rest of an oversized body so the client sees the 413, not a reset. */
    evhttp_set_flags(w->http, EVHTTP_SERVER_LINGERING_CLOSE);
    server_apply_limits(w);
    evhttp_set_gencb(w->http, on_request, w);
    evhttp_set_bevcb(w->http, make_client_bev, w);
    w->bound = evhttp_accept_socket_with_handle(w->http, w->listen_fd);
    if (!w->bound) {
        snprintf(err, errlen, "cannot accept on the listening socket");
        return -1;
    }
    return 0;
}

void server_free(struct worker *w)
{
    /* evhttp_free closes every connection; their close callbacks free our state. */
    if (w->http) evhttp_free(w->http);
    w->http = NULL;
    free(w->conns);
    w->conns = NULL;
}
