/* llmgate-loadgen: open-loop HTTP/1.1 load generator for the benchmarks.
 * At a fixed rate, requests are scheduled at exact instants and latency is
 * measured from the scheduled instant, so a stalled server cannot hide its
 * queueing delay (no coordinated omission); --rate 0 runs closed loop for
 * saturation throughput. Keep-alive bufferevents on raw sockets and a small
 * response parser (Content-Length, chunked, close-delimited, SSE check).
 * Responses are read with recvmsg and the kernel's receive timestamp, so the
 * "wire" latency (request handed to the kernel to response in the client's
 * socket) leaves out the time the load generator itself is off the CPU.
 * Loopback targets only. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* memmem, strcasestr */
#endif
#include "loadtest/histogram.h"

#include "common/util.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <linux/errqueue.h>
#include <linux/net_tstamp.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#define LG_MAX_THREADS     64
#define LG_MAX_CONNECTIONS 10000
#define LG_MAX_DURATION_S  600
#define LG_MAX_LINE        (64 * 1024)
#define LG_START_DELAY_US  200000 /* threads start together this long after setup */

/* ------------------------------------------------------------------------ */
/* Options                                                                   */

static struct {
    const char *url;
    const char *method;
    char *body;
    size_t body_len;
    const char *headers[64];
    int nheaders;
    double rate; /* 0 = closed loop */
    double duration_s;
    double warmup_s;
    int connections;
    int threads;
    int timeout_ms;
    int spin_us; /* open loop: poll instead of arming a timer for arrivals this close */
    const char *label;
    int csv_header;
    int quiet;
    /* derived */
    char host[256];
    char port[8];
    char path[4096];
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *request; /* the whole request, sent by reference */
    size_t request_len;
} opt = {.method = NULL,
         .duration_s = 10,
         .connections = 32,
         .threads = 1,
         .timeout_ms = 5000,
         .label = "run"};

/* ------------------------------------------------------------------------ */
/* Per-thread state                                                          */

/* Outcome of one measured request; each lands in exactly one bucket. */
struct lg_counts {
    uint64_t sent; /* measured requests scheduled (open) or written (closed) */
    uint64_t ok;
    uint64_t non2xx;
    uint64_t conn_errors;
    uint64_t timeouts;
    uint64_t bad_streams; /* SSE body without "[DONE]" at the end */
    uint64_t dropped;     /* pending queue full */
    uint64_t unfinished;  /* still queued or in flight at the hard deadline */
};

/* Response parser states, in order of appearance. */
enum parse_state {
    P_STATUS,
    P_HEADERS,
    P_BODY_LEN,   /* Content-Length body */
    P_CHUNK_SIZE, /* chunked: size line */
    P_CHUNK_DATA,
    P_CHUNK_CRLF,
    P_TRAILERS,
    P_BODY_EOF, /* close-delimited body */
};

struct lg_thread;

struct lg_conn {
    struct lg_thread *t;
    struct bufferevent *bev;
    struct event *timeout_ev;
    struct event *retry_ev;
    int busy;
    int measured; /* the request in flight counts */
    uint64_t sched_us;
    uint64_t sent_us;    /* handed to the connection */
    uint64_t written_us; /* the whole request in the socket; 0 until then */
    /* Wire time, CLOCK_REALTIME ns like the kernel's timestamps: the request
     * handed to send() (0 when it went through the bufferevent, whose write
     * instant is not known exactly) and the last response bytes received. */
    uint64_t tx_ns, rx_ns;
    struct event
        *read_ev; /* reads the socket itself (recvmsg with timestamps); set once connected */
    int failures; /* consecutive connection failures, for backoff */
    /* parser */
    enum parse_state ps;
    int status;
    int64_t remaining;
    int chunked, has_length, close_after, sse;
    int got_body;
    uint64_t ttfb_us;
    char tail[16];
    size_t tail_len;
    struct lg_conn *next_idle;
    int idle_listed;
};

struct lg_thread {
    int index;
    pthread_t tid;
    struct event_base *base;
    struct lg_conn *conns;
    int nconns;
    struct lg_conn *idle;
    int inflight;
    /* schedule (absolute monotonic microseconds) */
    uint64_t t_start, t_measure, t_end, t_deadline;
    double interval_us; /* between this thread's arrivals (open loop) */
    double phase_us;
    uint64_t k; /* arrivals scheduled so far */
    struct event *tick;
    struct event *stop_ev;
    /* pending arrivals: ring of scheduled times, bit 0 = measured */
    uint64_t *queue;
    size_t qcap, qhead, qlen;
    int stopping, finished;
    struct lg_counts c;
    uint64_t responses; /* measured responses received (any status) */
    struct histogram lat, ttfb;
    /* The scheduled-to-response latency split in two: scheduled to written (the
     * load generator's own lateness or a wait for a free connection) and
     * written to response (the target, the network, and the client's reading). */
    struct histogram send_lag, service;
    /* Request in the kernel to response in the client's socket, by the kernel's
     * receive timestamp: what a tap on the wire would see. */
    struct histogram wire;
};

static void conn_connect(struct lg_conn *c);
static void conn_next(struct lg_conn *c);

/* CLOCK_REALTIME in ns: the clock of the kernel's socket timestamps. */
static uint64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int closed_loop(void)
{
    return opt.rate <= 0;
}

/* ------------------------------------------------------------------------ */
/* Finishing requests                                                        */

static void thread_maybe_finish(struct lg_thread *t)
{
    if (t->stopping && t->inflight == 0 && t->qlen == 0 && !t->finished) {
        t->finished = 1;
        event_base_loopbreak(t->base);
    }
}

/* Ends the request on c; kind: 0 complete response, else one of the error
 * counters. Latency is from the scheduled instant. */
static void request_done(struct lg_conn *c, uint64_t *err_counter)
{
    struct lg_thread *t = c->t;
    uint64_t now = util_now_us();
    if (!c->busy) return;
    c->busy = 0;
    t->inflight--;
    event_del(c->timeout_ev);
    if (c->measured) {
        if (err_counter) {
            (*err_counter)++;
        } else {
            t->responses++;
            hist_record(&t->lat, now - c->sched_us);
            if (c->got_body) hist_record(&t->ttfb, c->ttfb_us - c->sched_us);
            uint64_t written = c->written_us ? c->written_us : c->sent_us;
            hist_record(&t->send_lag, written - c->sched_us);
            hist_record(&t->service, now - written);
            if (c->tx_ns && c->rx_ns > c->tx_ns)
                hist_record(&t->wire, (c->rx_ns - c->tx_ns) / 1000);
            if (c->status < 200 || c->status > 299)
                t->c.non2xx++;
            else if (c->sse && !memmem(c->tail, c->tail_len, "[DONE]", 6))
                t->c.bad_streams++;
            else
                t->c.ok++;
        }
    }
}

static void conn_reset_parser(struct lg_conn *c)
{
    c->ps = P_STATUS;
    c->status = 0;
    c->remaining = 0;
    c->chunked = c->has_length = c->close_after = c->sse = 0;
    c->got_body = 0;
    c->tail_len = 0;
}

/* Drops the connection (after an error or "Connection: close") and opens a
 * new one; the slot is usable right away (writes queue until connected). */
static void conn_restart(struct lg_conn *c, int failed)
{
    if (c->read_ev) {
        event_free(c->read_ev);
        c->read_ev = NULL;
    }
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    conn_reset_parser(c);
    if (failed && c->failures < 100) c->failures++;
    if (failed && c->failures > 1) {
        /* The target refuses us: back off a little instead of spinning. */
        struct timeval tv = {0, 10000 * (c->failures < 50 ? c->failures : 50)};
        event_add(c->retry_ev, &tv);
        return;
    }
    conn_connect(c);
    conn_next(c);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    struct lg_conn *c = arg;
    conn_connect(c);
    conn_next(c);
}

/* ------------------------------------------------------------------------ */
/* Sending                                                                   */

static void conn_send(struct lg_conn *c, uint64_t sched_us, int measured)
{
    struct lg_thread *t = c->t;
    struct timeval tv = {opt.timeout_ms / 1000, (opt.timeout_ms % 1000) * 1000};
    c->busy = 1;
    c->measured = measured;
    c->sched_us = sched_us;
    c->sent_us = util_now_us();
    c->written_us = 0;
    c->tx_ns = c->rx_ns = 0;
    t->inflight++;
    conn_reset_parser(c);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t done = 0;
    if (c->read_ev && evbuffer_get_length(out) == 0) {
        /* Straight into the socket, timed just before the call: the wire clock
         * starts here. What the socket does not take goes the bufferevent way. */
        uint64_t tx = realtime_ns();
        ssize_t n = send(bufferevent_getfd(c->bev), opt.request, opt.request_len,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            request_done(c, &t->c.conn_errors);
            conn_restart(c, 1);
            return;
        }
        if (n > 0) done = (size_t)n;
        if (done == opt.request_len) {
            c->tx_ns = tx;
            c->written_us = util_now_us();
        }
    }
    if (done < opt.request_len &&
        evbuffer_add_reference(out, opt.request + done, opt.request_len - done, NULL, NULL) != 0) {
        request_done(c, &t->c.conn_errors);
        conn_restart(c, 1);
        return;
    }
    event_add(c->timeout_ev, &tv);
}

/* Gives an idle connection its next request, or parks it. */
static void conn_next(struct lg_conn *c)
{
    struct lg_thread *t = c->t;
    if (c->busy || c->bev == NULL) return;
    if (closed_loop()) {
        uint64_t now = util_now_us();
        if (t->stopping || now >= t->t_end) {
            t->stopping = 1;
            thread_maybe_finish(t);
            return;
        }
        int measured = now >= t->t_measure;
        if (measured) t->c.sent++;
        conn_send(c, now, measured);
        return;
    }
    if (t->qlen > 0) {
        uint64_t e = t->queue[t->qhead];
        t->qhead = (t->qhead + 1) % t->qcap;
        t->qlen--;
        conn_send(c, e >> 1, (int)(e & 1));
        return;
    }
    if (!c->idle_listed) {
        c->idle_listed = 1;
        c->next_idle = t->idle;
        t->idle = c;
    }
    thread_maybe_finish(t);
}

static void dispatch_queue(struct lg_thread *t)
{
    while (t->qlen > 0 && t->idle) {
        struct lg_conn *c = t->idle;
        t->idle = c->next_idle;
        c->next_idle = NULL;
        c->idle_listed = 0;
        if (c->bev == NULL || c->busy) continue;
        conn_next(c);
    }
}

/* Open loop: enqueue every arrival that is due, send what connections allow,
 * sleep until the next arrival. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct lg_thread *t = arg;
    uint64_t now = util_now_us();
    for (;;) {
        uint64_t at = t->t_start + (uint64_t)(t->phase_us + (double)t->k * t->interval_us);
        if (at >= t->t_end) {
            t->stopping = 1;
            break;
        }
        if (at > now) {
            uint64_t d = at - now;
            if (d <= (uint64_t)opt.spin_us) {
                /* Close: a zero timeout sends the loop round a non-blocking poll of
                 * the sockets and back here, instead of a timer whose programming
                 * and wake-up from idle cost more than the gap on a VM. */
                struct timeval zero = {0, 0};
                event_add(t->tick, &zero);
                break;
            }
            struct timeval tv = {(time_t)(d / 1000000), (suseconds_t)(d % 1000000)};
            event_add(t->tick, &tv);
            break;
        }
        t->k++;
        int measured = at >= t->t_measure;
        if (measured) t->c.sent++;
        if (t->qlen == t->qcap) {
            if (measured) t->c.dropped++;
            continue;
        }
        t->queue[(t->qhead + t->qlen) % t->qcap] = (at << 1) | (uint64_t)measured;
        t->qlen++;
    }
    dispatch_queue(t);
    thread_maybe_finish(t);
}

/* ------------------------------------------------------------------------ */
/* Response parsing                                                          */

static void note_body(struct lg_conn *c, struct evbuffer *in, size_t n)
{
    if (n == 0) return;
    if (!c->got_body) {
        c->got_body = 1;
        c->ttfb_us = util_now_us();
    }
    if (c->sse) {
        /* Keep the last 16 body bytes to check the stream ended with [DONE]. */
        size_t k = n < sizeof c->tail ? n : sizeof c->tail;
        size_t keep = sizeof c->tail - k;
        if (keep > c->tail_len) keep = c->tail_len;
        memmove(c->tail, c->tail + c->tail_len - keep, keep);
        struct evbuffer_ptr pos;
        evbuffer_ptr_set(in, &pos, n - k, EVBUFFER_PTR_SET);
        evbuffer_copyout_from(in, &pos, c->tail + keep, k);
        c->tail_len = keep + k;
    }
    evbuffer_drain(in, n);
}

/* Notes the headers that decide how the body is delimited. */
static void parse_header(struct lg_conn *c, const char *line)
{
    const char *colon = strchr(line, ':');
    if (colon == NULL) return;
    size_t klen = (size_t)(colon - line);
    const char *v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    if (klen == 14 && strncasecmp(line, "content-length", 14) == 0) {
        c->remaining = strtoll(v, NULL, 10);
        c->has_length = 1;
    } else if (klen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
        if (strcasestr(v, "chunked")) c->chunked = 1;
    } else if (klen == 10 && strncasecmp(line, "connection", 10) == 0) {
        if (strcasestr(v, "close"))
            c->close_after = 1;
        else if (strcasestr(v, "keep-alive"))
            c->close_after = 0;
    } else if (klen == 12 && strncasecmp(line, "content-type", 12) == 0) {
        if (strcasestr(v, "text/event-stream")) c->sse = 1;
    }
}

static void response_complete(struct lg_conn *c)
{
    int close_after = c->close_after;
    request_done(c, NULL);
    if (close_after)
        conn_restart(c, 0);
    else {
        c->failures = 0;
        conn_reset_parser(c);
        conn_next(c);
    }
}

/* Consumes what it can; returns -1 on a protocol error. */
static int parse(struct lg_conn *c, struct evbuffer *in)
{
    for (;;) {
        size_t len = evbuffer_get_length(in);
        char *line = NULL;
        size_t n = 0;
        switch (c->ps) {
        case P_STATUS:
        case P_HEADERS:
        case P_CHUNK_SIZE:
        case P_CHUNK_CRLF:
        case P_TRAILERS:
            line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
            if (line == NULL) return len > LG_MAX_LINE ? -1 : 0;
            break;
        case P_BODY_LEN:
        case P_CHUNK_DATA:
            if (len == 0) return 0;
            n = len < (uint64_t)c->remaining ? len : (size_t)c->remaining;
            note_body(c, in, n);
            c->remaining -= (int64_t)n;
            if (c->remaining > 0) return 0;
            if (c->ps == P_CHUNK_DATA) {
                c->ps = P_CHUNK_CRLF;
                continue;
            }
            response_complete(c);
            return 0;
        case P_BODY_EOF: note_body(c, in, len); return 0;
        }

        int err = 0;
        switch (c->ps) {
        case P_STATUS:
            if (strncmp(line, "HTTP/1.", 7) != 0 || n < 12)
                err = 1;
            else {
                c->status = atoi(line + 9);
                c->close_after = line[7] == '0'; /* HTTP/1.0 closes unless told otherwise */
                c->ps = P_HEADERS;
            }
            break;
        case P_HEADERS:
            if (n > 0) {
                parse_header(c, line);
                break;
            }
            if (c->status >= 100 && c->status < 200) {
                c->ps = P_STATUS; /* 100 Continue and friends */
                break;
            }
            if (c->status == 204 || c->status == 304) {
                free(line);
                response_complete(c);
                return 0;
            }
            if (c->chunked)
                c->ps = P_CHUNK_SIZE;
            else if (c->has_length) {
                if (c->remaining < 0)
                    err = 1;
                else if (c->remaining == 0) {
                    free(line);
                    response_complete(c);
                    return 0;
                }
                c->ps = P_BODY_LEN;
            } else
                c->ps = P_BODY_EOF;
            break;
        case P_CHUNK_SIZE: {
            char *end;
            long long sz = strtoll(line, &end, 16);
            if (end == line || sz < 0)
                err = 1;
            else if (sz == 0)
                c->ps = P_TRAILERS;
            else {
                c->remaining = sz;
                c->ps = P_CHUNK_DATA;
            }
            break;
        }
        case P_CHUNK_CRLF:
            if (n != 0)
                err = 1;
            else
                c->ps = P_CHUNK_SIZE;
            break;
        case P_TRAILERS:
            if (n == 0) {
                free(line);
                response_complete(c);
                return 0;
            }
            break;
        default: break;
        }
        free(line);
        if (err) return -1;
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg);

static void on_read(struct bufferevent *bev, void *arg)
{
    struct lg_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (!c->busy) {
        /* Bytes nobody asked for: the connection is out of sync. */
        evbuffer_drain(in, evbuffer_get_length(in));
        conn_restart(c, 1);
        return;
    }
    if (parse(c, in) != 0) {
        request_done(c, &c->t->c.conn_errors);
        conn_restart(c, 1);
    }
}

/* The socket is readable: one recvmsg into the input buffer, noting the
 * kernel's receive timestamp of the newest bytes, then the parser. */
static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct lg_conn *c = arg;
    char buf[64 * 1024];
    union {
        char b[CMSG_SPACE(sizeof(struct scm_timestamping))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {buf, sizeof buf};
    struct msghdr m = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
    ssize_t n = recvmsg(fd, &m, MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        on_event(c->bev, BEV_EVENT_READING | BEV_EVENT_ERROR, c);
        return;
    }
    if (n == 0) {
        on_event(c->bev, BEV_EVENT_READING | BEV_EVENT_EOF, c);
        return;
    }
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SO_TIMESTAMPING) {
            struct scm_timestamping ts;
            memcpy(&ts, CMSG_DATA(cm), sizeof ts);
            if (ts.ts[0].tv_sec)
                c->rx_ns = (uint64_t)ts.ts[0].tv_sec * 1000000000u + (uint64_t)ts.ts[0].tv_nsec;
        }
    }
    if (evbuffer_add(bufferevent_get_input(c->bev), buf, (size_t)n) != 0) {
        on_event(c->bev, BEV_EVENT_READING | BEV_EVENT_ERROR, c);
        return;
    }
    on_read(c->bev, c);
}

/* The output buffer drained: the request is in the socket. */
static void on_write(struct bufferevent *bev, void *arg)
{
    struct lg_conn *c = arg;
    if (c->busy && c->written_us == 0) c->written_us = util_now_us();
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct lg_conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        evutil_socket_t fd = bufferevent_getfd(bev);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* Software receive timestamps (kernels without them leave the wire
         * histogram empty; everything else works the same). */
        int ts = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE;
        setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &ts, sizeof ts);
        c->read_ev = event_new(c->t->base, fd, EV_READ | EV_PERSIST, on_readable, c);
        if (c->read_ev == NULL || event_add(c->read_ev, NULL) != 0) {
            if (c->busy) request_done(c, &c->t->c.conn_errors);
            conn_restart(c, 1);
            return;
        }
        return;
    }
    if (c->busy && c->ps == P_BODY_EOF && (what & BEV_EVENT_EOF)) {
        c->close_after = 1; /* a close-delimited body ends here */
        response_complete(c);
        return;
    }
    if (c->busy) request_done(c, &c->t->c.conn_errors);
    conn_restart(c, 1);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct lg_conn *c = arg;
    request_done(c, &c->t->c.timeouts);
    conn_restart(c, 0);
}

static void conn_connect(struct lg_conn *c)
{
    struct lg_thread *t = c->t;
    c->bev = bufferevent_socket_new(t->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) return;
    /* The bufferevent connects and writes; on_readable does the reading. */
    bufferevent_setcb(c->bev, NULL, on_write, on_event, c);
    bufferevent_enable(c->bev, EV_WRITE);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&opt.addr, (int)opt.addrlen) != 0) {
        /* Fails synchronously only for local errors (no fds): retry later. */
        bufferevent_free(c->bev);
        c->bev = NULL;
        struct timeval tv = {0, 100000};
        event_add(c->retry_ev, &tv);
    }
}

/* ------------------------------------------------------------------------ */
/* Threads                                                                   */

static void on_start(evutil_socket_t fd, short what, void *arg)
{
    struct lg_thread *t = arg;
    if (closed_loop()) {
        for (int i = 0; i < t->nconns; i++)
            conn_next(&t->conns[i]);
        struct timeval tv;
        uint64_t now = util_now_us(), d = t->t_end > now ? t->t_end - now : 0;
        tv.tv_sec = (time_t)(d / 1000000);
        tv.tv_usec = (suseconds_t)(d % 1000000);
        event_add(t->tick, &tv); /* marks the end of the run */
    } else {
        for (int i = 0; i < t->nconns; i++)
            conn_next(&t->conns[i]); /* all idle */
        on_tick(-1, 0, t);
    }
}

static void on_closed_end(evutil_socket_t fd, short what, void *arg)
{
    struct lg_thread *t = arg;
    t->stopping = 1;
    thread_maybe_finish(t);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct lg_thread *t = arg;
    for (int i = 0; i < t->nconns; i++)
        if (t->conns[i].busy) request_done(&t->conns[i], &t->c.unfinished);
    for (; t->qlen > 0; t->qlen--, t->qhead = (t->qhead + 1) % t->qcap)
        if (t->queue[t->qhead] & 1) t->c.unfinished++;
    t->finished = 1;
    event_base_loopbreak(t->base);
}

static void *thread_main(void *arg)
{
    struct lg_thread *t = arg;
    uint64_t now = util_now_us();
    struct timeval tv;
    struct event *start = evtimer_new(t->base, on_start, t);
    struct event *deadline = evtimer_new(t->base, on_deadline, t);
    if (start == NULL || deadline == NULL) {
        fprintf(stderr, "llmgate-loadgen: out of memory\n");
        exit(1);
    }
    uint64_t d = t->t_start > now ? t->t_start - now : 0;
    tv.tv_sec = (time_t)(d / 1000000);
    tv.tv_usec = (suseconds_t)(d % 1000000);
    event_add(start, &tv);
    d = t->t_deadline - now;
    tv.tv_sec = (time_t)(d / 1000000);
    tv.tv_usec = (suseconds_t)(d % 1000000);
    event_add(deadline, &tv);
    for (int i = 0; i < t->nconns; i++)
        conn_connect(&t->conns[i]);
    event_base_dispatch(t->base);
    event_free(start);
    event_free(deadline);
    return NULL;
}

static int thread_setup(struct lg_thread *t, int index, int nconns, uint64_t t0)
{
    struct event_config *cfg = event_config_new();
    if (cfg == NULL) return -1;
    /* timerfd-backed timers: arrivals are scheduled to the microsecond. */
    event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    t->base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (t->base == NULL) return -1;
    t->index = index;
    t->nconns = nconns;
    t->conns = calloc((size_t)nconns, sizeof *t->conns);
    if (t->conns == NULL) return -1;
    t->t_start = t0;
    t->t_measure = t0 + (uint64_t)(opt.warmup_s * 1e6);
    t->t_end = t->t_measure + (uint64_t)(opt.duration_s * 1e6);
    t->t_deadline = t->t_end + (uint64_t)opt.timeout_ms * 1000 + 100000;
    hist_init(&t->lat);
    hist_init(&t->ttfb);
    hist_init(&t->send_lag);
    hist_init(&t->service);
    hist_init(&t->wire);
    if (closed_loop()) {
        t->tick = evtimer_new(t->base, on_closed_end, t);
    } else {
        double per_thread = opt.rate / opt.threads;
        t->interval_us = 1e6 / per_thread;
        t->phase_us = (double)index * 1e6 / opt.rate; /* threads interleave evenly */
        t->qcap = (size_t)fmin(fmax(opt.rate * 10.0 / opt.threads, 1024), 1 << 20);
        t->queue = calloc(t->qcap, sizeof *t->queue);
        if (t->queue == NULL) return -1;
        t->tick = evtimer_new(t->base, on_tick, t);
    }
    if (t->tick == NULL) return -1;
    for (int i = 0; i < nconns; i++) {
        struct lg_conn *c = &t->conns[i];
        c->t = t;
        c->timeout_ev = evtimer_new(t->base, on_timeout, c);
        c->retry_ev = evtimer_new(t->base, on_retry, c);
        if (c->timeout_ev == NULL || c->retry_ev == NULL) return -1;
    }
    return 0;
}

static void thread_free(struct lg_thread *t)
{
    for (int i = 0; t->conns && i < t->nconns; i++) {
        struct lg_conn *c = &t->conns[i];
        if (c->read_ev) event_free(c->read_ev);
        if (c->bev) bufferevent_free(c->bev);
        if (c->timeout_ev) event_free(c->timeout_ev);
        if (c->retry_ev) event_free(c->retry_ev);
    }
    free(t->conns);
    free(t->queue);
    if (t->tick) event_free(t->tick);
    if (t->base) event_base_free(t->base);
}

/* ------------------------------------------------------------------------ */
/* Setup: URL, loopback check, request bytes                                 */

static int is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        return (ntohl(s4->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        return IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr);
    }
    return 0;
}

static int parse_url(void)
{
    const char *u = opt.url;
    if (strncmp(u, "http://", 7) != 0) {
        fprintf(stderr, "llmgate-loadgen: only http:// URLs are supported\n");
        return -1;
    }
    u += 7;
    const char *slash = strchr(u, '/');
    size_t hostport = slash ? (size_t)(slash - u) : strlen(u);
    snprintf(opt.path, sizeof opt.path, "%s", slash ? slash : "/");
    char hp[sizeof opt.host];
    if (hostport == 0 || hostport >= sizeof hp) return -1;
    memcpy(hp, u, hostport);
    hp[hostport] = '\0';
    char *portp = NULL;
    if (hp[0] == '[') {
        char *rb = strchr(hp, ']');
        if (rb == NULL) return -1;
        *rb = '\0';
        snprintf(opt.host, sizeof opt.host, "%s", hp + 1);
        if (rb[1] == ':') portp = rb + 2;
    } else {
        char *colon = strrchr(hp, ':');
        if (colon) {
            *colon = '\0';
            portp = colon + 1;
        }
        snprintf(opt.host, sizeof opt.host, "%s", hp);
    }
    snprintf(opt.port, sizeof opt.port, "%s", portp && *portp ? portp : "80");

    struct addrinfo hints, *ai = NULL, *p;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int rc = getaddrinfo(opt.host, opt.port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "llmgate-loadgen: cannot resolve %s: %s\n", opt.host, gai_strerror(rc));
        return -1;
    }
    for (p = ai; p; p = p->ai_next) {
        if (!is_loopback(p->ai_addr)) {
            fprintf(stderr, "llmgate-loadgen: %s is not a loopback address; refusing\n", opt.host);
            freeaddrinfo(ai);
            return -1;
        }
    }
    memcpy(&opt.addr, ai->ai_addr, ai->ai_addrlen);
    opt.addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

static int build_request(void)
{
    struct evbuffer *b = evbuffer_new();
    int has_ct = 0;
    if (b == NULL) return -1;
    const char *method = opt.method ? opt.method : opt.body ? "POST" : "GET";
    int v6 = strchr(opt.host, ':') != NULL;
    evbuffer_add_printf(b, "%s %s HTTP/1.1\r\nHost: %s%s%s:%s\r\nUser-Agent: llmgate-loadgen\r\n",
                        method, opt.path, v6 ? "[" : "", opt.host, v6 ? "]" : "", opt.port);
    for (int i = 0; i < opt.nheaders; i++) {
        evbuffer_add_printf(b, "%s\r\n", opt.headers[i]);
        if (strncasecmp(opt.headers[i], "content-type:", 13) == 0) has_ct = 1;
    }
    if (opt.body) {
        if (!has_ct) evbuffer_add_printf(b, "Content-Type: application/json\r\n");
        evbuffer_add_printf(b, "Content-Length: %zu\r\n", opt.body_len);
    }
    evbuffer_add(b, "\r\n", 2);
    if (opt.body) evbuffer_add(b, opt.body, opt.body_len);
    opt.request_len = evbuffer_get_length(b);
    opt.request = malloc(opt.request_len);
    if (opt.request == NULL) {
        evbuffer_free(b);
        return -1;
    }
    evbuffer_remove(b, opt.request, opt.request_len);
    evbuffer_free(b);
    return 0;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0, r;
    do {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap);
            if (nb == NULL) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        r = fread(buf + n, 1, cap - n, f);
        n += r;
    } while (r > 0);
    fclose(f);
    *len = n;
    return buf;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: llmgate-loadgen --url http://127.0.0.1:PORT/path [options]\n"
            "  --rate R           arrivals per second (open loop); 0 = closed loop (default 0)\n"
            "  --connections C    keep-alive connections (default 32)\n"
            "  --threads T        event loops, each with its share of C and R (default 1)\n"
            "  --duration S       measured seconds (default 10, max 600)\n"
            "  --warmup S         unmeasured seconds before (default 0, max 60)\n"
            "  --timeout-ms N     per-request timeout (default 5000)\n"
            "  --spin-us N        open loop: poll (busy) for arrivals due within N us instead of\n"
            "                     sleeping on a timer (default 0; use on a CPU of its own)\n"
            "  --method M         default POST with a body, else GET\n"
            "  --body STRING | --body-file FILE\n"
            "  --header 'K: V'    repeatable\n"
            "  --label L          first CSV column (default run)\n"
            "  --csv-header       print the CSV header line first\n"
            "  --quiet            no summary on stderr\n"
            "output (stdout): label,mode,target_rate,duration_s,sent,ok,errors,achieved_rps,\n"
            "  p50_us,p90_us,p99_us,p999_us,max_us,ttfb_p50_us,ttfb_p99_us,\n"
            "  send_lag_p99_us,service_p50_us,service_p99_us,wire_p50_us,wire_p99_us,\n"
            "  wire_samples\n"
            "latency is measured from the scheduled send time (open loop); send_lag is\n"
            "scheduled to written into the socket, service is written to response (as\n"
            "the load generator sees it), wire is the request handed to send() to the\n"
            "kernel's receive timestamp of the response's last bytes (requests that\n"
            "had to wait in the bufferevent are not sampled)\n");
}

static int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return -1;
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"url", required_argument, 0, 'u'},
        {"rate", required_argument, 0, 'r'},
        {"connections", required_argument, 0, 'c'},
        {"threads", required_argument, 0, 't'},
        {"duration", required_argument, 0, 'd'},
        {"warmup", required_argument, 0, 'w'},
        {"timeout-ms", required_argument, 0, 'T'},
        {"spin-us", required_argument, 0, 'S'},
        {"method", required_argument, 0, 'm'},
        {"body", required_argument, 0, 'b'},
        {"body-file", required_argument, 0, 'B'},
        {"header", required_argument, 0, 'H'},
        {"label", required_argument, 0, 'l'},
        {"csv-header", no_argument, 0, 'C'},
        {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int c, bad = 0;
    double v;
    while (!bad && (c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
        switch (c) {
        case 'u': opt.url = optarg; break;
        case 'r': bad = parse_double(optarg, 0, 1e7, &opt.rate); break;
        case 'c':
            bad = parse_double(optarg, 1, LG_MAX_CONNECTIONS, &v);
            opt.connections = (int)v;
            break;
        case 't':
            bad = parse_double(optarg, 1, LG_MAX_THREADS, &v);
            opt.threads = (int)v;
            break;
        case 'd': bad = parse_double(optarg, 0.1, LG_MAX_DURATION_S, &opt.duration_s); break;
        case 'w': bad = parse_double(optarg, 0, 60, &opt.warmup_s); break;
        case 'T':
            bad = parse_double(optarg, 1, 600000, &v);
            opt.timeout_ms = (int)v;
            break;
        case 'S':
            bad = parse_double(optarg, 0, 100000, &v);
            opt.spin_us = (int)v;
            break;
        case 'm': opt.method = optarg; break;
        case 'b':
            free(opt.body);
            opt.body = strdup(optarg);
            opt.body_len = strlen(optarg);
            bad = opt.body == NULL;
            break;
        case 'B':
            free(opt.body);
            opt.body = read_file(optarg, &opt.body_len);
            if (opt.body == NULL) fprintf(stderr, "llmgate-loadgen: cannot read %s\n", optarg);
            bad = opt.body == NULL;
            break;
        case 'H':
            if (opt.nheaders == (int)(sizeof opt.headers / sizeof opt.headers[0]) ||
                strchr(optarg, ':') == NULL || strpbrk(optarg, "\r\n"))
                bad = 1;
            else
                opt.headers[opt.nheaders++] = optarg;
            break;
        case 'l': opt.label = optarg; break;
        case 'C': opt.csv_header = 1; break;
        case 'q': opt.quiet = 1; break;
        case 'h': usage(stdout); exit(0);
        default: bad = 1;
        }
        if (bad && c != '?' && optarg) fprintf(stderr, "llmgate-loadgen: bad value '%s'\n", optarg);
    }
    if (bad || optind != argc || opt.url == NULL) {
        usage(stderr);
        return -1;
    }
    if (opt.connections < opt.threads) opt.connections = opt.threads;
    return 0;
}

int main(int argc, char **argv)
{
    static struct lg_thread threads[LG_MAX_THREADS];
    int rc = 1, started = 0;

    if (parse_args(argc, argv) != 0) return 2;
    if (parse_url() != 0 || build_request() != 0) return 2;
    signal(SIGPIPE, SIG_IGN);

    uint64_t t0 = util_now_us() + LG_START_DELAY_US;
    for (int i = 0; i < opt.threads; i++) {
        int n = opt.connections / opt.threads + (i < opt.connections % opt.threads);
        if (thread_setup(&threads[i], i, n, t0) != 0) {
            fprintf(stderr, "llmgate-loadgen: setup failed\n");
            goto out;
        }
    }
    for (; started < opt.threads; started++)
        if (pthread_create(&threads[started].tid, NULL, thread_main, &threads[started]) != 0)
            goto out;
    for (int i = 0; i < started; i++)
        pthread_join(threads[i].tid, NULL);

    static struct histogram lat, ttfb, send_lag, service, wire;
    struct lg_counts sum;
    uint64_t responses = 0;
    memset(&sum, 0, sizeof sum);
    hist_init(&lat);
    hist_init(&ttfb);
    hist_init(&send_lag);
    hist_init(&service);
    hist_init(&wire);
    for (int i = 0; i < opt.threads; i++) {
        struct lg_thread *t = &threads[i];
        hist_merge(&lat, &t->lat);
        hist_merge(&ttfb, &t->ttfb);
        hist_merge(&send_lag, &t->send_lag);
        hist_merge(&service, &t->service);
        hist_merge(&wire, &t->wire);
        responses += t->responses;
        sum.sent += t->c.sent;
        sum.ok += t->c.ok;
        sum.non2xx += t->c.non2xx;
        sum.conn_errors += t->c.conn_errors;
        sum.timeouts += t->c.timeouts;
        sum.bad_streams += t->c.bad_streams;
        sum.dropped += t->c.dropped;
        sum.unfinished += t->c.unfinished;
    }
    uint64_t errors = sum.non2xx + sum.conn_errors + sum.timeouts + sum.bad_streams + sum.dropped +
                      sum.unfinished;
    if (opt.csv_header)
        printf("label,mode,target_rate,duration_s,sent,ok,errors,achieved_rps,p50_us,p90_us,"
               "p99_us,p999_us,max_us,ttfb_p50_us,ttfb_p99_us,send_lag_p99_us,service_p50_us,"
               "service_p99_us,wire_p50_us,wire_p99_us,wire_samples\n");
    printf("%s,%s,%g,%g,%llu,%llu,%llu,%.1f,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,"
           "%llu,%llu,%llu\n",
           opt.label, closed_loop() ? "closed" : "open", opt.rate, opt.duration_s,
           (unsigned long long)sum.sent, (unsigned long long)sum.ok, (unsigned long long)errors,
           (double)responses / opt.duration_s, (unsigned long long)hist_percentile(&lat, 50),
           (unsigned long long)hist_percentile(&lat, 90),
           (unsigned long long)hist_percentile(&lat, 99),
           (unsigned long long)hist_percentile(&lat, 99.9), (unsigned long long)lat.max,
           (unsigned long long)hist_percentile(&ttfb, 50),
           (unsigned long long)hist_percentile(&ttfb, 99),
           (unsigned long long)hist_percentile(&send_lag, 99),
           (unsigned long long)hist_percentile(&service, 50),
           (unsigned long long)hist_percentile(&service, 99),
           (unsigned long long)hist_percentile(&wire, 50),
           (unsigned long long)hist_percentile(&wire, 99), (unsigned long long)wire.total);
    fflush(stdout);
    if (!opt.quiet)
        fprintf(stderr,
                "%s: sent %llu ok %llu non2xx %llu conn_errors %llu timeouts %llu bad_streams "
                "%llu dropped %llu unfinished %llu\n",
                opt.label, (unsigned long long)sum.sent, (unsigned long long)sum.ok,
                (unsigned long long)sum.non2xx, (unsigned long long)sum.conn_errors,
                (unsigned long long)sum.timeouts, (unsigned long long)sum.bad_streams,
                (unsigned long long)sum.dropped, (unsigned long long)sum.unfinished);
    rc = 0;
out:
    for (int i = 0; i < opt.threads; i++)
        thread_free(&threads[i]);
    free(opt.request);
    free(opt.body);
    return rc;
}
