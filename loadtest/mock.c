/* llmgate-mock: the fake OpenAI upstream used by every test and benchmark.
 * N threads, each with its own event_base and evhttp on its own SO_REUSEPORT
 * socket bound to one port; latency, streaming pace and faults are set per
 * process (flags) or per request (x-mock-* headers); GET /mock/stats tells
 * tests what the mock saw, including clients that hung up early. */
#include "loadtest/mock.h"

#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>

#define MOCK_MAX_BODY       (64u * 1024 * 1024)
#define MOCK_MAX_HEADERS    (64 * 1024)
#define MOCK_HTTP_TIMEOUT_S 120
#define MOCK_MAX_THREADS    64
#define MOCK_LAST_BODY_MAX  (64 * 1024)  /* /mock/stats echoes the last body up to this size */
#define MOCK_CUT_TOKENS     3            /* content chunks sent before a *-mid-stream fault */
#define MOCK_STREAM_HIWAT   (256 * 1024) /* unsent bytes at which a fast stream waits */

/* ------------------------------------------------------------------------ */
/* Options, counters, the last request                                       */

struct mock_opts {
    const char *host;
    int port;
    int threads;
    int latency_ms;
    int tokens;
    int interval_ms;
    enum mock_fault fault;
    const char *port_file;
    int quiet;
};

static struct mock_opts opt = {.host = "127.0.0.1", .port = -1, .threads = 1, .tokens = 16};

/* Process-wide counters; every thread updates them. requests = completed +
 * cancelled + reset + in_flight (until a reset zeroes the others). */
static struct {
    atomic_ullong requests;
    atomic_ullong paths[EP_COUNT];
    atomic_ullong completed; /* the mock finished its response */
    atomic_ullong cancelled; /* the client hung up first */
    atomic_ullong reset;     /* the mock aborted the connection (reset faults) */
    atomic_ullong faults;    /* requests that had a fault injected */
    atomic_llong in_flight;
    atomic_ullong next_id;
    /* Tokens in the usage objects the mock sent (what a gateway should meter). */
    atomic_ullong usage_prompt, usage_completion;
} stats;

/* What the last /v1 request carried; strings are owned here, NULL = absent. */
struct mock_last {
    char *path;
    char *authorization;
    char *x_request_id;
    char *model;
    char *stream_options; /* JSON text */
    char *headers;        /* JSON object text */
    char *body;           /* raw body when small, else NULL */
    size_t body_len;
    size_t body_bytes;
};

static pthread_mutex_t last_mu = PTHREAD_MUTEX_INITIALIZER;
static struct mock_last last;

static void last_clear(struct mock_last *l)
{
    free(l->path);
    free(l->authorization);
    free(l->x_request_id);
    free(l->model);
    free(l->stream_options);
    free(l->headers);
    free(l->body);
    memset(l, 0, sizeof *l);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static const char *const ep_paths[EP_COUNT] = {
    [EP_CHAT] = "/v1/chat/completions", [EP_COMPLETIONS] = "/v1/completions",
    [EP_EMBEDDINGS] = "/v1/embeddings", [EP_MODELS] = "/v1/models",
    [EP_MESSAGES] = "/v1/messages",     [EP_OTHER] = "other",
};

/* ------------------------------------------------------------------------ */
/* Requests                                                                  */

struct mock_thread {
    int index;
    int fd; /* listening socket, handed to evhttp */
    struct event_base *base;
    struct evhttp *http;
    pthread_t tid;
    struct mreq *live; /* requests that outlive their callback */
};

/* States of a request that outlives the evhttp callback:
 *   WAITING   latency timer (or a hang): nothing sent yet
 *   STREAMING reply started; the timer paces the next SSE event
 *   STALLED   hang-mid-stream: reply started, nothing more will come
 *   DRAINING  reset fault: waiting for written bytes to leave before the RST */
enum mreq_state { MREQ_WAITING, MREQ_STREAMING, MREQ_STALLED, MREQ_DRAINING };

enum mreq_outcome { OUT_COMPLETED, OUT_CANCELLED, OUT_RESET };

struct mreq {
    struct mock_thread *thr;
    struct evhttp_request *req;
    struct evhttp_connection *evcon; /* NULL once evhttp said it is closing */
    struct event *timer;
    struct event *watch; /* client-close watcher on the socket */
    int watch_closed_only;
    enum mreq_state state;
    enum mock_fault fault;
    int stream;
    int include_usage;
    int started; /* evhttp_send_reply_start done */
    int latency_ms;
    int interval_ms;
    int status;            /* prepared non-streaming reply */
    struct evbuffer *body; /* prepared non-streaming body */
    struct mock_gen gen;
    char *model;
    char *tool; /* EP_MESSAGES: the tool a tool_use block calls, or NULL */
    int step;   /* next stream step */
    uint64_t t0_us;
    char *path; /* for the log line; NULL when --quiet */
    struct mreq *prev, *next;
};

static void mreq_go(struct mreq *m);
static void stream_pump(struct mreq *m);
static void mreq_reset_try(struct mreq *m);

static void live_link(struct mreq *m)
{
    struct mock_thread *t = m->thr;
    m->prev = NULL;
    m->next = t->live;
    if (t->live) t->live->prev = m;
    t->live = m;
}

static void live_unlink(struct mreq *m)
{
    if (m->prev)
        m->prev->next = m->next;
    else if (m->thr->live == m)
        m->thr->live = m->next;
    if (m->next) m->next->prev = m->prev;
    m->prev = m->next = NULL;
}

/* Stops watching: timers, the socket watcher and evhttp's close callback. After
 * this, evhttp may free the connection (and the request) at any time. */
static void mreq_detach(struct mreq *m)
{
    if (m->timer) {
        event_free(m->timer);
        m->timer = NULL;
    }
    if (m->watch) {
        event_free(m->watch);
        m->watch = NULL;
    }
    /* The close callback belongs to the connection, which keep-alive carries
     * into later requests: clear it before this request lets go. */
    if (m->evcon) evhttp_connection_set_closecb(m->evcon, NULL, NULL);
}

static void mreq_free(struct mreq *m, enum mreq_outcome o)
{
    static const char *const names[] = {"ok", "cancelled", "reset"};
    switch (o) {
    case OUT_COMPLETED: atomic_fetch_add(&stats.completed, 1); break;
    case OUT_CANCELLED: atomic_fetch_add(&stats.cancelled, 1); break;
    case OUT_RESET: atomic_fetch_add(&stats.reset, 1); break;
    }
    atomic_fetch_sub(&stats.in_flight, 1);
    if (m->path)
        log_info("mock", "%s %d %s fault=%s stream=%d %.1fms", m->path, m->status, names[o],
                 mock_fault_name(m->fault), m->stream, (double)(util_now_us() - m->t0_us) / 1000.0);
    live_unlink(m);
    if (m->body) evbuffer_free(m->body);
    free(m->model);
    free(m->tool);
    free(m->path);
    free(m);
}

/* Sends the prepared non-streaming reply and ends the request. */
static void mreq_reply(struct mreq *m)
{
    struct evhttp_request *req = m->req;
    mreq_detach(m);
    const char *reason = m->status == 200   ? "OK"
                         : m->status == 429 ? "Too Many Requests"
                         : m->status == 503 ? "Service Unavailable"
                         : m->status >= 500 ? "Internal Server Error"
                         : m->status == 404 ? "Not Found"
                         : m->status == 405 ? "Method Not Allowed"
                                            : "Bad Request";
    evhttp_send_reply(req, m->status, reason, m->body);
    mreq_free(m, OUT_COMPLETED);
}

/* evhttp is freeing the connection (client gone while we wrote, or server
 * shutdown). If the client dropped mid-response, evhttp has detached the
 * request (its connection is NULL): we still own it and end it exactly once,
 * which frees it. If it is still attached, evhttp frees it with the
 * connection and we must not touch it. */
static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    struct mreq *m = arg;
    struct evhttp_request *req = m->req;
    m->evcon = NULL;
    mreq_detach(m);
    if (evhttp_request_get_connection(req) == NULL) evhttp_send_reply_end(req);
    mreq_free(m, OUT_CANCELLED);
}

/* The client closed while we wait or stream. evhttp cannot see it: it stops
 * reading once the request is in (libevent #78/#666), so we watch the fd.
 * We answer once with "Connection: close" so evhttp frees the connection
 * after the (failing) write; the request is freed by evhttp as usual. */
static void on_client_gone(evutil_socket_t fd, short what, void *arg)
{
    struct mreq *m = arg;
    if (!(what & EV_CLOSED)) {
        char c;
        ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n > 0) {
            /* Pipelined bytes, not a close: from now on only EPOLLRDHUP counts
             * (level-triggered EV_READ would spin on them). */
            event_free(m->watch);
            m->watch = event_new(m->thr->base, fd, EV_CLOSED | EV_PERSIST, on_client_gone, m);
            m->watch_closed_only = 1;
            if (m->watch == NULL || event_add(m->watch, NULL) != 0)
                log_warn("mock", "cannot watch connection");
            return;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    }
    struct evhttp_request *req = m->req;
    mreq_detach(m);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
    if (m->started)
        evhttp_send_reply_end(req);
    else
        evhttp_send_reply(req, 499, "Client Closed Request", NULL);
    mreq_free(m, OUT_CANCELLED);
}

/* Makes sure a request that waits is watched: client close (fd) and
 * connection teardown (evhttp close callback). 0, or -1 if it cannot be. */
static int mreq_watch(struct mreq *m)
{
    if (m->watch) return 0;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(m->evcon);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd < 0) return -1;
    m->watch = event_new(m->thr->base, fd, EV_READ | EV_CLOSED | EV_PERSIST, on_client_gone, m);
    if (m->watch == NULL || event_add(m->watch, NULL) != 0) return -1;
    evhttp_connection_set_closecb(m->evcon, on_conn_close, m);
    return 0;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct mreq *m = arg;
    switch (m->state) {
    case MREQ_WAITING: mreq_go(m); break;
    case MREQ_STREAMING: stream_pump(m); break;
    case MREQ_DRAINING: mreq_reset_try(m); break;
    case MREQ_STALLED: break;
    }
}

static int mreq_arm(struct mreq *m, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (m->timer == NULL) m->timer = evtimer_new(m->thr->base, on_timer, m);
    if (m->timer == NULL || evtimer_add(m->timer, &tv) != 0) return -1;
    return mreq_watch(m);
}

/* Ends a request the mock can no longer serve (out of memory, no fd). */
static void mreq_abort(struct mreq *m)
{
    struct evhttp_request *req = m->req;
    mreq_detach(m);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
    if (m->started)
        evhttp_send_reply_end(req);
    else
        evhttp_send_reply(req, 500, "Internal Server Error", NULL);
    mreq_free(m, OUT_RESET);
}

/* Parks a request until the client leaves (hang faults). */
static void mreq_stall(struct mreq *m, enum mreq_state st)
{
    m->state = st;
    if (m->timer) evtimer_del(m->timer);
    if (mreq_watch(m) != 0) mreq_abort(m);
}

/* ------------------------------------------------------------------------ */
/* Reset faults                                                              */

/* Aborts the TCP connection with a RST once everything written so far has
 * left (and been acked), so the client sees the partial stream first. */
static void mreq_reset_try(struct mreq *m)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(m->evcon);
    evutil_socket_t fd = bufferevent_getfd(bev);
    int unacked = 0;
    m->state = MREQ_DRAINING;
    if (ioctl(fd, SIOCOUTQ, &unacked) != 0) unacked = 0;
    if (evbuffer_get_length(bufferevent_get_output(bev)) > 0 || unacked > 0) {
        if (mreq_arm(m, 1) != 0) mreq_abort(m);
        return;
    }
    /* connect(AF_UNSPEC) disconnects a TCP socket; from ESTABLISHED Linux
     * sends a RST. The fd stays open and owned by evhttp: our final write
     * below fails (EPIPE) and evhttp frees the connection as for any
     * client error. */
    struct linger lg = {1, 0};
    struct sockaddr sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_family = AF_UNSPEC;
    if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0 ||
        connect(fd, &sa, sizeof sa) != 0)
        log_warn("mock", "reset: %s", strerror(errno));
    struct evhttp_request *req = m->req;
    mreq_detach(m);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
    if (m->started)
        evhttp_send_reply_end(req);
    else
        evhttp_send_reply(req, 502, "Reset", NULL);
    mreq_free(m, OUT_RESET);
}

/* ------------------------------------------------------------------------ */
/* Streaming                                                                 */

enum step {
    ST_ROLE,
    ST_TOKEN,
    ST_FINISH,
    ST_USAGE,
    ST_MALFORMED,
    ST_DONE,
    ST_END,
    ST_CUT,
    ST_ANTHROPIC,     /* the k-th Messages API event */
    ST_ANTHROPIC_BAD, /* a malformed Messages API event */
    ST_ANTHROPIC_ERR, /* a Messages API error event (overloaded_error) */
};

/* The k-th step of this request's stream (and the token index for ST_TOKEN). */
static enum step step_at(const struct mreq *m, int k, int *tok)
{
    if (m->gen.ep == EP_MESSAGES) {
        int st = mock_anthropic_step(&m->gen, (int)m->fault, k);
        return st == 1   ? ST_ANTHROPIC
               : st == 2 ? ST_ANTHROPIC_BAD
               : st == 3 ? ST_ANTHROPIC_ERR
               : st < 0  ? ST_CUT
                         : ST_END;
    }
    int chat = m->gen.ep == EP_CHAT;
    int n = m->gen.tokens;
    if (chat && k == 0) return ST_ROLE;
    int j = k - chat;
    if (m->fault == FAULT_MALFORMED) return j == 0 ? ST_MALFORMED : j == 1 ? ST_DONE : ST_END;
    if (m->fault == FAULT_RESET_MID_STREAM || m->fault == FAULT_HANG_MID_STREAM) {
        int cut = n < MOCK_CUT_TOKENS ? n : MOCK_CUT_TOKENS;
        if (j >= cut) return ST_CUT;
    }
    if (j < n) {
        *tok = j;
        return ST_TOKEN;
    }
    j -= n;
    if (j == 0) return ST_FINISH;
    if (m->include_usage && --j == 0) return ST_USAGE;
    if (m->fault != FAULT_NO_DONE && --j == 0) return ST_DONE;
    return ST_END;
}

/* evhttp wrote everything we gave it: resume the stream from the loop, not
 * from inside evhttp's write callback. Any later evhttp call on the request
 * replaces this callback, so it never outlives the request. */
static void on_drained(struct evhttp_connection *evcon, void *arg)
{
    struct mreq *m = arg;
    if (m->state == MREQ_STREAMING && mreq_arm(m, 0) != 0) mreq_abort(m);
}

/* Writes stream events until the stream ends, is cut, must wait for the
 * interval timer, or (no interval) until the client has 256 KiB to read. */
static void stream_pump(struct mreq *m)
{
    struct evbuffer *buf = evbuffer_new();
    if (buf == NULL) {
        mreq_abort(m);
        return;
    }
    for (;;) {
        int tok = 0;
        enum step st = step_at(m, m->step, &tok);
        switch (st) {
        case ST_ROLE: mock_sse_role(buf, &m->gen); break;
        case ST_TOKEN: mock_sse_token(buf, &m->gen, tok); break;
        case ST_FINISH: mock_sse_finish(buf, &m->gen); break;
        case ST_USAGE:
            mock_sse_usage(buf, &m->gen);
            atomic_fetch_add(&stats.usage_prompt, (unsigned long long)m->gen.prompt_tokens);
            atomic_fetch_add(&stats.usage_completion, (unsigned long long)m->gen.tokens);
            break;
        case ST_MALFORMED: mock_sse_malformed(buf, &m->gen); break;
        case ST_DONE: mock_sse_done(buf); break;
        case ST_ANTHROPIC: mock_anthropic_event(buf, &m->gen, m->step); break;
        case ST_ANTHROPIC_BAD:
            evbuffer_add_printf(buf, "event: content_block_delta\ndata: {\"type\":"
                                     "\"content_block_delta\",\"index\":0,\"delta\":{\n\n");
            break;
        case ST_ANTHROPIC_ERR:
            mock_anthropic_error_event(buf, "overloaded_error", "Overloaded (mock fault)");
            break;
        case ST_END: {
            struct evhttp_request *req = m->req;
            evbuffer_free(buf);
            mreq_detach(m);
            evhttp_send_reply_end(req);
            mreq_free(m, OUT_COMPLETED);
            return;
        }
        case ST_CUT:
            evbuffer_free(buf);
            if (m->fault == FAULT_RESET_MID_STREAM)
                mreq_reset_try(m);
            else
                mreq_stall(m, MREQ_STALLED);
            return;
        }
        m->step++;
        struct bufferevent *bev = evhttp_connection_get_bufferevent(m->evcon);
        if (m->interval_ms == 0 && bev &&
            evbuffer_get_length(bufferevent_get_output(bev)) + evbuffer_get_length(buf) >
                MOCK_STREAM_HIWAT) {
            evhttp_send_reply_chunk_with_cb(m->req, buf, on_drained, m);
            evbuffer_free(buf);
            if (mreq_watch(m) != 0) mreq_abort(m);
            return;
        }
        evhttp_send_reply_chunk(m->req, buf); /* drains buf */
        int next_tok;
        enum step next = step_at(m, m->step, &next_tok);
        if (m->interval_ms > 0 && next != ST_END && next != ST_CUT) {
            evbuffer_free(buf);
            if (mreq_arm(m, m->interval_ms) != 0) mreq_abort(m);
            return;
        }
    }
}

static void stream_start(struct mreq *m)
{
    struct evkeyvalq *oh = evhttp_request_get_output_headers(m->req);
    evhttp_add_header(oh, "Content-Type", "text/event-stream");
    evhttp_add_header(oh, "Cache-Control", "no-cache");
    evhttp_send_reply_start(m->req, 200, "OK");
    m->started = 1;
    m->state = MREQ_STREAMING;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(m->evcon);
    /* evhttp's one timeout would also cap a slow stream (libevent #715):
     * keep only a write timeout while streaming. */
    struct timeval wt = {MOCK_HTTP_TIMEOUT_S, 0};
    if (bev) bufferevent_set_timeouts(bev, NULL, &wt);
    stream_pump(m);
}

/* Non-streaming body cut in half by a *-mid-stream fault: chunked reply,
 * first half of the body, then the reset or the stall. */
static void partial_start(struct mreq *m)
{
    evhttp_send_reply_start(m->req, 200, "OK");
    m->started = 1;
    struct evbuffer *half = evbuffer_new();
    if (half == NULL) {
        mreq_abort(m);
        return;
    }
    evbuffer_remove_buffer(m->body, half, evbuffer_get_length(m->body) / 2);
    evhttp_send_reply_chunk(m->req, half);
    evbuffer_free(half);
    if (m->fault == FAULT_RESET_MID_STREAM)
        mreq_reset_try(m);
    else
        mreq_stall(m, MREQ_STALLED);
}

/* The latency (if any) is over: answer according to the fault. */
static void mreq_go(struct mreq *m)
{
    switch (m->fault) {
    case FAULT_HANG: mreq_stall(m, MREQ_WAITING); return;
    case FAULT_RESET: mreq_reset_try(m); return;
    case FAULT_RESET_MID_STREAM:
    case FAULT_HANG_MID_STREAM:
        if (m->status == 200 && !m->stream) {
            partial_start(m);
            return;
        }
        break;
    default: break;
    }
    if (m->stream && m->status == 200) {
        stream_start(m);
    } else {
        if (m->status == 200 && (m->gen.ep == EP_CHAT || m->gen.ep == EP_COMPLETIONS) &&
            m->fault == FAULT_NONE) {
            atomic_fetch_add(&stats.usage_prompt, (unsigned long long)m->gen.prompt_tokens);
            atomic_fetch_add(&stats.usage_completion, (unsigned long long)m->gen.tokens);
        }
        mreq_reply(m);
    }
}

/* ------------------------------------------------------------------------ */
/* Request parsing                                                           */

static void set_error(struct mreq *m, int status, const char *msg, const char *type,
                      const char *param, const char *code)
{
    evbuffer_drain(m->body, evbuffer_get_length(m->body));
    mock_body_error(m->body, msg, type, param, code);
    m->status = status;
    m->stream = 0;
}

/* Scoped faults: x-mock-fault-key + x-mock-fault-times N inject the fault into the
 * first N requests carrying that key only (a test's "fail twice, then serve"). */
#define MOCK_FAULT_KEYS 256
static pthread_mutex_t fault_keys_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char key[64];
    int used;
} fault_keys[MOCK_FAULT_KEYS];

/* Whether this request of key still gets the fault (and counts it). */
static int fault_key_take(const char *key, int times)
{
    int take = 0;
    pthread_mutex_lock(&fault_keys_mu);
    int i, free_slot = -1;
    for (i = 0; i < MOCK_FAULT_KEYS; i++) {
        if (fault_keys[i].key[0] == '\0') {
            if (free_slot < 0) free_slot = i;
        } else if (strncmp(fault_keys[i].key, key, sizeof fault_keys[i].key - 1) == 0) {
            break;
        }
    }
    if (i == MOCK_FAULT_KEYS && free_slot >= 0) {
        i = free_slot;
        snprintf(fault_keys[i].key, sizeof fault_keys[i].key, "%s", key);
        fault_keys[i].used = 0;
    }
    if (i < MOCK_FAULT_KEYS && fault_keys[i].used < times) {
        fault_keys[i].used++;
        take = 1;
    }
    pthread_mutex_unlock(&fault_keys_mu);
    return take;
}

static void fault_keys_reset(void)
{
    pthread_mutex_lock(&fault_keys_mu);
    memset(fault_keys, 0, sizeof fault_keys);
    pthread_mutex_unlock(&fault_keys_mu);
}

/* Reads an integer header in [lo, hi]; 0 if absent or valid, -1 if invalid. */
static int hdr_int(struct evkeyvalq *h, const char *name, int lo, int hi, int *out)
{
    const char *v = evhttp_find_header(h, name);
    if (v == NULL) return 0;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) return -1;
    *out = (int)x;
    return 0;
}

/* Integer JSON field: 1 present and valid, 0 absent/null, -1 invalid. */
static int json_int(const cJSON *obj, const char *name, double lo, double hi, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (v == NULL || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi)
        return -1;
    *out = (int)v->valuedouble;
    return 1;
}

static void record_last(struct evhttp_request *req, const char *path, const cJSON *json,
                        const unsigned char *body, size_t body_len)
{
    struct mock_last l;
    memset(&l, 0, sizeof l);
    struct evkeyvalq *ih = evhttp_request_get_input_headers(req);
    l.path = dup_or_null(path);
    l.authorization = dup_or_null(evhttp_find_header(ih, "Authorization"));
    l.x_request_id = dup_or_null(evhttp_find_header(ih, "X-Request-Id"));
    l.body_bytes = body_len;
    if (json) {
        const cJSON *model = cJSON_GetObjectItemCaseSensitive(json, "model");
        const cJSON *so = cJSON_GetObjectItemCaseSensitive(json, "stream_options");
        if (cJSON_IsString(model)) l.model = strdup(model->valuestring);
        if (so && !cJSON_IsNull(so)) l.stream_options = cJSON_PrintUnformatted(so);
        if (body_len <= MOCK_LAST_BODY_MAX && (l.body = malloc(body_len + 1)) != NULL) {
            memcpy(l.body, body, body_len);
            l.body[body_len] = '\0';
            l.body_len = body_len;
        }
    }
    struct evbuffer *hb = evbuffer_new();
    if (hb) {
        struct evkeyval *kv;
        int first = 1;
        evbuffer_add(hb, "{", 1);
        TAILQ_FOREACH(kv, ih, next)
        {
            char key[128];
            size_t i, n = strlen(kv->key);
            if (n >= sizeof key) n = sizeof key - 1;
            for (i = 0; i < n; i++)
                key[i] =
                    (char)(kv->key[i] >= 'A' && kv->key[i] <= 'Z' ? kv->key[i] + 32 : kv->key[i]);
            evbuffer_add(hb, first ? "\"" : ",\"", first ? 1 : 2);
            mockj_escape(hb, key, n);
            evbuffer_add(hb, "\":\"", 3);
            mockj_escape(hb, kv->value, strlen(kv->value));
            evbuffer_add(hb, "\"", 1);
            first = 0;
        }
        evbuffer_add(hb, "}", 1);
        size_t n = evbuffer_get_length(hb);
        if ((l.headers = malloc(n + 1)) != NULL) {
            evbuffer_remove(hb, l.headers, n);
            l.headers[n] = '\0';
        }
        evbuffer_free(hb);
    }
    pthread_mutex_lock(&last_mu);
    struct mock_last old = last;
    last = l;
    pthread_mutex_unlock(&last_mu);
    last_clear(&old);
}

static enum mock_endpoint classify(const char *path, const char **model_id)
{
    *model_id = NULL;
    for (int e = 0; e < EP_OTHER; e++)
        if (strcmp(path, ep_paths[e]) == 0) return (enum mock_endpoint)e;
    if (strncmp(path, "/v1/models/", 11) == 0 && path[11]) {
        *model_id = path + 11;
        return EP_MODELS;
    }
    /* Azure OpenAI: /openai/deployments/{deployment}/{chat/completions,completions,embeddings} */
    static const char azure[] = "/openai/deployments/";
    const char *slash =
        strncmp(path, azure, sizeof azure - 1) == 0 ? strchr(path + sizeof azure - 1, '/') : NULL;
    if (slash && slash > path + sizeof azure - 1) {
        for (int e = EP_CHAT; e <= EP_EMBEDDINGS; e++)
            if (strcmp(slash, ep_paths[e] + 3) == 0) return (enum mock_endpoint)e; /* skip "/v1" */
    }
    return EP_OTHER;
}

/* Fills m from the request: overrides, body, prepared reply or stream plan. */
static void mreq_prepare(struct mreq *m, const char *path, enum evhttp_cmd_type method)
{
    struct evhttp_request *req = m->req;
    struct evkeyvalq *ih = evhttp_request_get_input_headers(req);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t body_len = evbuffer_get_length(in);
    const unsigned char *body = body_len ? evbuffer_pullup(in, -1) : (const unsigned char *)"";
    const char *model_id;
    enum mock_endpoint ep = classify(path, &model_id);
    cJSON *json = NULL;

    atomic_fetch_add(&stats.paths[ep], 1);
    m->gen.ep = ep;
    m->status = 200;
    m->latency_ms = opt.latency_ms;
    m->interval_ms = opt.interval_ms;
    m->fault = opt.fault;
    m->gen.tokens = opt.tokens;
    int retry_after = 1;

    if (body_len && body == NULL) {
        record_last(req, path, NULL, NULL, body_len);
        set_error(m, 500, "out of memory", "server_error", NULL, NULL);
        goto out_nolatency;
    }
    if (ep != EP_OTHER && ep != EP_MODELS && method == EVHTTP_REQ_POST)
        json = cJSON_ParseWithLength((const char *)body, body_len);
    /* A gateway's reachability probes (GET .../models) arrive at any moment: "last"
     * stays the last request that carried one, so a test reading it after its own
     * POST never sees a probe instead. */
    if (method != EVHTTP_REQ_GET) record_last(req, path, json, body, body_len);

    if (ep == EP_OTHER) {
        set_error(m, 404, "Unknown request URL (mock)", "invalid_request_error", NULL,
                  "unknown_url");
        goto out_nolatency;
    }
    if ((ep == EP_MODELS) != (method == EVHTTP_REQ_GET) ||
        (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_POST)) {
        set_error(m, 405, "Method not allowed (mock)", "invalid_request_error", NULL, NULL);
        goto out_nolatency;
    }

    const char *fault = evhttp_find_header(ih, "x-mock-fault");
    int fault_times = -1;
    if (hdr_int(ih, "x-mock-fault-times", 0, 1000000, &fault_times) ||
        hdr_int(ih, "x-mock-latency-ms", 0, 3600000, &m->latency_ms) ||
        hdr_int(ih, "x-mock-tokens", 0, 1000000, &m->gen.tokens) ||
        hdr_int(ih, "x-mock-interval-ms", 0, 600000, &m->interval_ms) ||
        hdr_int(ih, "x-mock-retry-after", 0, 86400, &retry_after) ||
        (fault && mock_fault_parse(fault, &m->fault) != 0)) {
        set_error(m, 400, "invalid x-mock-* header", "invalid_request_error", NULL, NULL);
        goto out_nolatency;
    }

    const char *model = "mock-model";
    if (ep != EP_MODELS) {
        if (!cJSON_IsObject(json)) {
            set_error(m, 400, "We could not parse the JSON body of your request.",
                      "invalid_request_error", NULL, NULL);
            goto out_nolatency;
        }
        const cJSON *mj = cJSON_GetObjectItemCaseSensitive(json, "model");
        if (!cJSON_IsString(mj) || mj->valuestring[0] == '\0') {
            set_error(m, 400, "you must provide a model parameter", "invalid_request_error",
                      "model", NULL);
            goto out_nolatency;
        }
        model = mj->valuestring;
    }
    /* x-mock-fault-model: the fault applies to requests for this model only. */
    const char *fault_model = evhttp_find_header(ih, "x-mock-fault-model");
    if (fault_model && strcmp(fault_model, model) != 0) m->fault = FAULT_NONE;
    if (m->fault != FAULT_NONE && fault_times >= 0) {
        const char *key = evhttp_find_header(ih, "x-mock-fault-key");
        if (!fault_key_take(key ? key : "", fault_times)) m->fault = FAULT_NONE;
    }
    if ((m->model = strdup(model)) == NULL) {
        set_error(m, 500, "out of memory", "server_error", NULL, NULL);
        goto out_nolatency;
    }
    m->gen.model = m->model;
    m->gen.id = atomic_fetch_add(&stats.next_id, 1) + 1;
    m->gen.created = (long)time(NULL);

    if (ep == EP_MESSAGES) {
        const char *msg = NULL, *param = NULL, *tool = NULL;
        if (mock_anthropic_prepare(json, &m->gen, &tool, &msg, &param) != 0) {
            evbuffer_drain(m->body, evbuffer_get_length(m->body));
            mock_anthropic_error(m->body, "invalid_request_error", msg);
            m->status = 400;
            goto out_nolatency;
        }
        if (tool && !(m->tool = strdup(tool))) {
            set_error(m, 500, "out of memory", "server_error", NULL, NULL);
            goto out_nolatency;
        }
        m->gen.tool_name = m->tool;
        m->stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(json, "stream"));
        if (!m->stream) mock_anthropic_body(m->body, &m->gen);
        if (m->fault == FAULT_429 || m->fault == FAULT_500 || m->fault == FAULT_503) {
            char ra[16];
            snprintf(ra, sizeof ra, "%d", retry_after);
            if (m->fault == FAULT_429)
                evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", ra);
            evbuffer_drain(m->body, evbuffer_get_length(m->body));
            mock_anthropic_error(m->body,
                                 m->fault == FAULT_429   ? "rate_limit_error"
                                 : m->fault == FAULT_500 ? "api_error"
                                                         : "overloaded_error",
                                 "mock fault");
            m->status = m->fault == FAULT_429 ? 429 : m->fault == FAULT_500 ? 500 : 529;
            m->stream = 0;
        } else if (m->fault == FAULT_MALFORMED && !m->stream) {
            evbuffer_drain(m->body, evbuffer_get_length(m->body));
            evbuffer_add_printf(m->body, "{\"id\":\"msg_mock\",\"content\":[{\"ty");
        }
        if (m->fault != FAULT_NONE) atomic_fetch_add(&stats.faults, 1);
        cJSON_Delete(json);
        return;
    } else if (ep == EP_MODELS) {
        mock_body_models(m->body, model_id);
    } else if (ep == EP_EMBEDDINGS) {
        const char *msg = NULL, *param = NULL;
        if (mock_body_embeddings(m->body, json, model, &msg, &param) != 0) {
            set_error(m, 400, msg, "invalid_request_error", param, NULL);
            goto out_nolatency;
        }
    } else {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(json, "stream");
        const cJSON *so = cJSON_GetObjectItemCaseSensitive(json, "stream_options");
        const char *param = NULL;
        int max = 0, r1, r2;
        m->stream = cJSON_IsTrue(st);
        m->include_usage =
            cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage")) && m->stream;
        r1 = json_int(json, "max_tokens", 0, INT_MAX, &max);
        r2 = r1 == 1 ? 1 : json_int(json, "max_completion_tokens", 0, INT_MAX, &max);
        if (r1 < 0 || r2 < 0) {
            set_error(m, 400, "max_tokens must be a non-negative integer", "invalid_request_error",
                      r1 < 0 ? "max_tokens" : "max_completion_tokens", NULL);
            goto out_nolatency;
        }
        if (r2 == 1 && max < m->gen.tokens) {
            m->gen.tokens = max;
            m->gen.finish_length = 1;
        }
        m->gen.prompt_tokens = mock_prompt_tokens(json, ep, &param);
        if (m->gen.prompt_tokens < 0) {
            set_error(m, 400, "invalid prompt or messages", "invalid_request_error", param, NULL);
            goto out_nolatency;
        }
        if (!m->stream) mock_body_completion(m->body, &m->gen);
    }

    switch (m->fault) {
    case FAULT_429: {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", retry_after);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", ra);
        set_error(m, 429, "Rate limit reached for requests (mock)", "requests", NULL,
                  "rate_limit_exceeded");
        break;
    }
    case FAULT_500:
        set_error(m, 500, "The server had an error while processing your request (mock)",
                  "server_error", NULL, NULL);
        break;
    case FAULT_503:
        set_error(m, 503, "The engine is currently overloaded, please try again later (mock)",
                  "server_error", NULL, NULL);
        break;
    case FAULT_MALFORMED:
        if (!m->stream) {
            evbuffer_drain(m->body, evbuffer_get_length(m->body));
            evbuffer_add_printf(m->body, "{\"id\":\"chatcmpl-mock-%llu\",\"choices\":[{\"mess",
                                (unsigned long long)m->gen.id);
        }
        break;
    default: break;
    }
    if (m->fault != FAULT_NONE) atomic_fetch_add(&stats.faults, 1);
    cJSON_Delete(json);
    return;
out_nolatency:
    /* A bad request is answered at once, fault-free. */
    m->latency_ms = 0;
    m->fault = FAULT_NONE;
    cJSON_Delete(json);
}

static void handle_v1(struct mock_thread *t, struct evhttp_request *req, const char *path,
                      enum evhttp_cmd_type method)
{
    atomic_fetch_add(&stats.requests, 1);
    atomic_fetch_add(&stats.in_flight, 1);
    struct mreq *m = calloc(1, sizeof *m);
    if (m == NULL || (m->body = evbuffer_new()) == NULL) {
        free(m);
        atomic_fetch_add(&stats.completed, 1);
        atomic_fetch_sub(&stats.in_flight, 1);
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    m->thr = t;
    m->req = req;
    m->evcon = evhttp_request_get_connection(req);
    m->t0_us = util_now_us();
    if (!opt.quiet) m->path = strdup(path);
    live_link(m);
    mreq_prepare(m, path, method);
    m->state = MREQ_WAITING;
    if (m->latency_ms > 0) {
        if (mreq_arm(m, m->latency_ms) != 0) mreq_abort(m);
        return;
    }
    mreq_go(m);
}

/* ------------------------------------------------------------------------ */
/* Control endpoints                                                         */

static void add_str_or_null(struct evbuffer *out, const char *s)
{
    if (s == NULL) {
        evbuffer_add(out, "null", 4);
        return;
    }
    evbuffer_add(out, "\"", 1);
    mockj_escape(out, s, strlen(s));
    evbuffer_add(out, "\"", 1);
}

static void write_stats(struct evbuffer *out)
{
    evbuffer_add_printf(out, "{\"requests\":%llu,\"paths\":{",
                        (unsigned long long)atomic_load(&stats.requests));
    for (int e = 0; e < EP_COUNT; e++)
        evbuffer_add_printf(out, "%s\"%s\":%llu", e ? "," : "", ep_paths[e],
                            (unsigned long long)atomic_load(&stats.paths[e]));
    evbuffer_add_printf(out,
                        "},\"completed\":%llu,\"cancelled\":%llu,\"reset\":%llu,\"faults\":%llu,"
                        "\"in_flight\":%lld,\"usage\":{\"prompt_tokens\":%llu,"
                        "\"completion_tokens\":%llu},\"last\":{\"path\":",
                        (unsigned long long)atomic_load(&stats.completed),
                        (unsigned long long)atomic_load(&stats.cancelled),
                        (unsigned long long)atomic_load(&stats.reset),
                        (unsigned long long)atomic_load(&stats.faults),
                        (long long)atomic_load(&stats.in_flight),
                        (unsigned long long)atomic_load(&stats.usage_prompt),
                        (unsigned long long)atomic_load(&stats.usage_completion));
    pthread_mutex_lock(&last_mu);
    add_str_or_null(out, last.path);
    evbuffer_add_printf(out, ",\"authorization\":");
    add_str_or_null(out, last.authorization);
    evbuffer_add_printf(out, ",\"x_request_id\":");
    add_str_or_null(out, last.x_request_id);
    evbuffer_add_printf(out, ",\"model\":");
    add_str_or_null(out, last.model);
    evbuffer_add_printf(
        out, ",\"body_bytes\":%zu,\"stream_options\":%s,\"headers\":%s,\"body\":", last.body_bytes,
        last.stream_options ? last.stream_options : "null", last.headers ? last.headers : "null");
    /* The body is echoed as JSON only if it parses; it is not re-encoded. */
    cJSON *b = last.body ? cJSON_ParseWithLength(last.body, last.body_len) : NULL;
    if (b)
        evbuffer_add(out, last.body, last.body_len);
    else
        evbuffer_add(out, "null", 4);
    cJSON_Delete(b);
    pthread_mutex_unlock(&last_mu);
    evbuffer_add(out, "}}", 2);
}

static void handle_control(struct evhttp_request *req, const char *path,
                           enum evhttp_cmd_type method)
{
    struct evbuffer *out = evbuffer_new();
    int status = 200;
    if (out == NULL) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    if (strcmp(path, "/mock/stats") == 0 && method == EVHTTP_REQ_GET) {
        write_stats(out);
    } else if (strcmp(path, "/mock/reset") == 0 && method == EVHTTP_REQ_POST) {
        atomic_store(&stats.requests, 0);
        for (int e = 0; e < EP_COUNT; e++)
            atomic_store(&stats.paths[e], 0);
        atomic_store(&stats.completed, 0);
        atomic_store(&stats.cancelled, 0);
        atomic_store(&stats.reset, 0);
        atomic_store(&stats.faults, 0);
        fault_keys_reset();
        atomic_store(&stats.usage_prompt, 0);
        atomic_store(&stats.usage_completion, 0);
        pthread_mutex_lock(&last_mu);
        struct mock_last old = last;
        memset(&last, 0, sizeof last);
        pthread_mutex_unlock(&last_mu);
        last_clear(&old);
        evbuffer_add_printf(out, "{\"ok\":true}");
    } else {
        status = 404;
        mock_body_error(out, "unknown control endpoint", "invalid_request_error", NULL, NULL);
    }
    evhttp_send_reply(req, status, status == 200 ? "OK" : "Not Found", out);
    evbuffer_free(out);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    if (path == NULL || *path == '\0') path = "/";
    if (strncmp(path, "/mock/", 6) == 0)
        handle_control(req, path, method);
    else
        handle_v1(arg, req, path, method);
}

/* ------------------------------------------------------------------------ */
/* Threads, sockets, main                                                    */

static void *thread_main(void *arg)
{
    struct mock_thread *t = arg;
    if (event_base_dispatch(t->base) < 0) log_error("mock", "event loop failed");
    /* evhttp_free runs our close callbacks, which free requests still alive. */
    evhttp_free(t->http);
    t->http = NULL;
    while (t->live)
        mreq_free(t->live, OUT_CANCELLED);
    return NULL;
}

/* One listening socket on host:*port with SO_REUSEPORT; *port 0 = pick one
 * and return it. Returns the fd or -1. */
static int listen_on(const char *host, int *port)
{
    struct addrinfo hints, *ai = NULL;
    char ps[16];
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(ps, sizeof ps, "%d", *port);
    int rc = getaddrinfo(host, ps, &hints, &ai);
    if (rc != 0) {
        log_error("mock", "cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        /* Accepted sockets inherit it: small SSE chunks must not wait for
         * the client's delayed ACK (Nagle). */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 4096) != 0) {
        log_error("mock", "cannot listen on %s:%d: %s", host, *port, strerror(errno));
        if (fd >= 0) close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

static int thread_setup(struct mock_thread *t)
{
    struct event_config *cfg = event_config_new();
    if (cfg == NULL) return -1;
    /* timerfd-backed timers: --interval-ms 1 means 1 ms, not a scheduler tick. */
    event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    t->base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (t->base == NULL || (t->http = evhttp_new(t->base)) == NULL) return -1;
    evhttp_set_gencb(t->http, on_request, t);
    evhttp_set_max_headers_size(t->http, MOCK_MAX_HEADERS);
    evhttp_set_max_body_size(t->http, MOCK_MAX_BODY);
    evhttp_set_timeout(t->http, MOCK_HTTP_TIMEOUT_S);
    evhttp_set_default_content_type(t->http, "application/json");
    evhttp_set_allowed_methods(t->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_DELETE | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    if (evhttp_set_flags(t->http, EVHTTP_SERVER_LINGERING_CLOSE) != 0) return -1;
    if (evhttp_accept_socket_with_handle(t->http, t->fd) == NULL) return -1;
    t->fd = -1; /* evhttp owns it now */
    return 0;
}

static int write_port_file(const char *path, int port)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) return -1;
    FILE *f = fopen(tmp, "w");
    if (f == NULL) return -1;
    int ok = fprintf(f, "%d\n", port) > 0;
    if (fclose(f) != 0 || !ok || rename(tmp, path) != 0) return -1;
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: llmgate-mock --port N [options]\n"
               "  --port N           port to listen on (0: pick a free one)\n"
               "  --host ADDR        address to bind (default 127.0.0.1)\n"
               "  --threads N        event loops on SO_REUSEPORT sockets (default 1)\n"
               "  --latency-ms N     delay before the response or first chunk (default 0)\n"
               "  --tokens N         completion tokens per response (default 16)\n"
               "  --interval-ms N    delay between stream chunks (default 0)\n"
               "  --fault KIND       fault for every /v1 request: 429 500 503 hang reset\n"
               "                     reset-mid-stream malformed no-done hang-mid-stream\n"
               "                     overloaded-stream overloaded-mid-stream (Messages streams)\n"
               "  --port-file PATH   write the bound port there once listening\n"
               "  --quiet            no per-request log line\n"
               "per-request headers: x-mock-latency-ms x-mock-tokens x-mock-interval-ms\n"
               "  x-mock-fault (or 'none') x-mock-retry-after x-mock-fault-model (fault only\n"
               "  for this model) x-mock-fault-key + x-mock-fault-times (first N with the key)\n"
               "POST /v1/messages speaks the Anthropic Messages API (same faults), and\n"
               "/openai/deployments/{d}/chat/completions (etc.) the Azure OpenAI paths\n"
               "control: GET /mock/stats, POST /mock/reset\n");
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

static int parse_args(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"port", required_argument, 0, 'p'},
        {"host", required_argument, 0, 'H'},
        {"threads", required_argument, 0, 't'},
        {"latency-ms", required_argument, 0, 'l'},
        {"tokens", required_argument, 0, 'n'},
        {"interval-ms", required_argument, 0, 'i'},
        {"fault", required_argument, 0, 'f'},
        {"port-file", required_argument, 0, 'P'},
        {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int c, bad = 0;
    while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
        switch (c) {
        case 'p': bad |= parse_int(optarg, 0, 65535, &opt.port); break;
        case 'H': opt.host = optarg; break;
        case 't': bad |= parse_int(optarg, 1, MOCK_MAX_THREADS, &opt.threads); break;
        case 'l': bad |= parse_int(optarg, 0, 3600000, &opt.latency_ms); break;
        case 'n': bad |= parse_int(optarg, 0, 1000000, &opt.tokens); break;
        case 'i': bad |= parse_int(optarg, 0, 600000, &opt.interval_ms); break;
        case 'f': bad |= mock_fault_parse(optarg, &opt.fault); break;
        case 'P': opt.port_file = optarg; break;
        case 'q': opt.quiet = 1; break;
        case 'h': usage(stdout); exit(0);
        default: bad = 1;
        }
        if (bad) {
            if (c != '?' && optarg) fprintf(stderr, "llmgate-mock: bad value '%s'\n", optarg);
            break;
        }
    }
    if (bad || optind != argc || opt.port < 0) {
        usage(stderr);
        return -1;
    }
    return 0;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    event_base_loopexit(arg, NULL);
}

int main(int argc, char **argv)
{
    struct mock_thread threads[MOCK_MAX_THREADS];
    struct event_base *mainbase = NULL;
    struct event *sigint = NULL, *sigterm = NULL;
    int started = 0, rc = 1;

    if (parse_args(argc, argv) != 0) return 2;
    signal(SIGPIPE, SIG_IGN);
    if (evthread_use_pthreads() != 0) {
        log_error("mock", "evthread_use_pthreads failed");
        return 1;
    }
    memset(threads, 0, sizeof threads);
    for (int i = 0; i < MOCK_MAX_THREADS; i++)
        threads[i].fd = -1;
    int port = opt.port;
    for (int i = 0; i < opt.threads; i++) {
        threads[i].index = i;
        threads[i].fd = listen_on(opt.host, &port);
        if (threads[i].fd < 0) goto fail;
        if (thread_setup(&threads[i]) != 0) {
            log_error("mock", "cannot set up event loop %d", i);
            goto fail;
        }
    }
    if ((mainbase = event_base_new()) == NULL) goto fail;
    sigint = evsignal_new(mainbase, SIGINT, on_signal, mainbase);
    sigterm = evsignal_new(mainbase, SIGTERM, on_signal, mainbase);
    if (!sigint || !sigterm || event_add(sigint, NULL) || event_add(sigterm, NULL)) goto fail;
    for (; started < opt.threads; started++)
        if (pthread_create(&threads[started].tid, NULL, thread_main, &threads[started]) != 0)
            goto fail;
    if (opt.port_file && write_port_file(opt.port_file, port) != 0) {
        log_error("mock", "cannot write %s: %s", opt.port_file, strerror(errno));
        goto fail;
    }
    if (!opt.quiet)
        log_info("mock", "listening on %s:%d, %d thread(s), fault=%s", opt.host, port, opt.threads,
                 mock_fault_name(opt.fault));
    event_base_dispatch(mainbase);
    rc = 0;
fail:
    for (int i = 0; i < started; i++)
        event_base_loopbreak(threads[i].base);
    for (int i = 0; i < started; i++)
        pthread_join(threads[i].tid, NULL);
    for (int i = 0; i < opt.threads; i++) {
        if (threads[i].http) evhttp_free(threads[i].http);
        if (threads[i].base) event_base_free(threads[i].base);
        if (threads[i].fd >= 0) close(threads[i].fd);
    }
    if (sigint) event_free(sigint);
    if (sigterm) event_free(sigterm);
    if (mainbase) event_base_free(mainbase);
    last_clear(&last);
    libevent_global_shutdown();
    return rc;
}
