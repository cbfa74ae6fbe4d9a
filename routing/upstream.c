/* libcurl multi_socket on libevent: one multi handle per worker, one libevent
 * event per curl socket, one libevent timer for curl's timeouts, and per
 * transfer a timer for the first-byte and idle bounds curl does not have. */
#include "routing/upstream.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"

#define HEADER_BUF_MAX 16384 /* bytes of response headers kept for lookups */

struct upstream {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;         /* curl's single timeout */
    struct upstream_xfer *xfers; /* doubly linked list of live transfers */
    unsigned active;
    CURL *pool[64]; /* idle easy handles: curl_easy_init costs a large allocation + memset */
    unsigned n_pool;
};

/* States of a transfer:
 *   HEAD   - request sent or connecting; first-byte timer armed
 *   BODY   - head delivered; idle timer armed while not paused
 *   PAUSED - on_data asked for a pause; the idle timer is off (the client is slow, not the peer)
 * A transfer leaves every state through finish() (on_done) or upstream_cancel() (silent). */
enum xfer_state { XFER_HEAD, XFER_BODY, XFER_PAUSED };

struct upstream_xfer {
    struct upstream *u;
    struct upstream_xfer *prev, *next;
    CURL *easy;
    struct curl_slist *headers;
    struct event *timer; /* first-byte, then idle */
    enum xfer_state state;
    bool pause_next;  /* on_data consumed bytes and asked to pause */
    bool head_failed; /* on_head asked to abort */
    unsigned idle_ms;
    struct upstream_callbacks cb;
    void *ud;
    char hdr[HEADER_BUF_MAX]; /* "name: value\0" entries of the final head */
    size_t hdr_len;
};

struct sock_ctx {
    struct event ev; /* embedded: re-assigned on interest changes, never reallocated */
    bool added;
};

static void check_multi_info(struct upstream *u);

const char *upstream_result_str(enum upstream_result r)
{
    switch (r) {
    case UPSTREAM_OK: return "ok";
    case UPSTREAM_ERR_CONNECT: return "connect_error";
    case UPSTREAM_ERR_TIMEOUT_CONNECT: return "connect_timeout";
    case UPSTREAM_ERR_TIMEOUT_FIRST_BYTE: return "first_byte_timeout";
    case UPSTREAM_ERR_TIMEOUT_IDLE: return "idle_timeout";
    case UPSTREAM_ERR_TIMEOUT_TOTAL: return "total_timeout";
    case UPSTREAM_ERR_IO: return "io_error";
    case UPSTREAM_ERR_ABORTED: return "aborted";
    case UPSTREAM_ERR_INTERNAL: return "internal_error";
    }
    return "unknown";
}

/* ---------------------------------------------------------------- event glue */

static void timer_arm_ms(struct event *ev, unsigned ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    event_add(ev, &tv);
}

/* libcurl wants its timeout (re)armed. Never call curl_multi_socket_action from
 * here: that recurses when timeout_ms is 0 (PITFALLS); the libevent timer does it. */
static int multi_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct upstream *u = userp;
    if (timeout_ms < 0) {
        evtimer_del(u->timer);
    } else {
        struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
        evtimer_add(u->timer, &tv);
    }
    return 0;
}

static void on_curl_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct upstream *u = arg;
    int running;
    curl_multi_socket_action(u->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(u);
}

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
    struct upstream *u = arg;
    int flags = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running;
    curl_multi_socket_action(u->multi, fd, flags, &running);
    check_multi_info(u);
}

static int multi_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    struct upstream *u = userp;
    struct sock_ctx *sc = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (sc) {
            if (sc->added) event_del(&sc->ev);
            free(sc);
            curl_multi_assign(u->multi, s, NULL);
        }
        return 0;
    }
    short kind =
        EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    if (!sc) {
        sc = calloc(1, sizeof *sc);
        if (!sc) return -1;
        curl_multi_assign(u->multi, s, sc);
    } else if (sc->added) {
        if (event_get_events(&sc->ev) == kind) return 0; /* no change: no syscall */
        event_del(&sc->ev);
    }
    /* With the epoll changelist (worker.c) a del+add in one loop turn is one epoll_ctl. */
    if (event_assign(&sc->ev, u->base, s, kind, on_socket_event, u) != 0) return -1;
    sc->added = event_add(&sc->ev, NULL) == 0;
    return sc->added ? 0 : -1;
}

/* ---------------------------------------------------------------- transfers */

static void xfer_unlink_free(struct upstream_xfer *x)
{
    struct upstream *u = x->u;
    /* Removing a handle is only legal outside libcurl callbacks (PITFALLS): every
     * caller of this function is a libevent callback or upstream_cancel(). */
    curl_multi_remove_handle(u->multi, x->easy);
    if (u->n_pool < sizeof u->pool / sizeof u->pool[0]) {
        curl_easy_reset(x->easy); /* back to defaults; connections live in the multi's cache */
        u->pool[u->n_pool++] = x->easy;
    } else {
        curl_easy_cleanup(x->easy);
    }
    curl_slist_free_all(x->headers);
    event_free(x->timer);
    if (x->prev)
        x->prev->next = x->next;
    else
        u->xfers = x->next;
    if (x->next) x->next->prev = x->prev;
    u->active--;
    free(x);
}

static void finish(struct upstream_xfer *x, enum upstream_result res, const char *detail)
{
    struct upstream_callbacks cb = x->cb;
    void *ud = x->ud;
    xfer_unlink_free(x);
    cb.on_done(ud, res, detail);
}

static enum upstream_result map_curl_error(struct upstream_xfer *x, CURLcode rc)
{
    switch (rc) {
    case CURLE_OK: return UPSTREAM_OK;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION: return UPSTREAM_ERR_CONNECT;
    case CURLE_OPERATION_TIMEDOUT: {
        curl_off_t connect_us = 0;
        curl_easy_getinfo(x->easy, CURLINFO_CONNECT_TIME_T, &connect_us);
        return connect_us == 0 ? UPSTREAM_ERR_TIMEOUT_CONNECT : UPSTREAM_ERR_TIMEOUT_TOTAL;
    }
    case CURLE_WRITE_ERROR:
    case CURLE_ABORTED_BY_CALLBACK: return UPSTREAM_ERR_ABORTED;
    case CURLE_OUT_OF_MEMORY:
    case CURLE_FAILED_INIT: return UPSTREAM_ERR_INTERNAL;
    default: return UPSTREAM_ERR_IO;
    }
}

/* Drains finished transfers. A CURLMsg is invalid once its handle is removed, so
 * read what is needed first. */
static void check_multi_info(struct upstream *u)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(u->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        CURLcode rc = msg->data.result;
        struct upstream_xfer *x = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        if (!x) continue;
        enum upstream_result res = map_curl_error(x, rc);
        if (x->head_failed) res = UPSTREAM_ERR_ABORTED;
        finish(x, res, rc == CURLE_OK ? "" : curl_easy_strerror(rc));
    }
}

static void on_xfer_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct upstream_xfer *x = arg;
    enum upstream_result res =
        x->state == XFER_HEAD ? UPSTREAM_ERR_TIMEOUT_FIRST_BYTE : UPSTREAM_ERR_TIMEOUT_IDLE;
    finish(x, res, res == UPSTREAM_ERR_TIMEOUT_IDLE ? "no data from upstream" : "no response head");
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *ud)
{
    struct upstream_xfer *x = ud;
    size_t len = size * nitems;
    if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
        x->hdr_len = 0; /* a new head starts (after a 1xx, or a retried request) */
        return len;
    }
    if (len <= 2 && (buf[0] == '\r' || buf[0] == '\n')) {
        long status = 0;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 100 && status < 200) return len;
        x->state = XFER_BODY;
        if (x->idle_ms)
            timer_arm_ms(x->timer, x->idle_ms);
        else
            evtimer_del(x->timer);
        if (x->cb.on_head && x->cb.on_head(x->ud, x, status) != 0) {
            x->head_failed = true;
            return 0;
        }
        return len;
    }
    /* Keep "name: value" (trimmed) while it fits; lookups are rare and small. */
    size_t n = len;
    while (n && (buf[n - 1] == '\r' || buf[n - 1] == '\n'))
        n--;
    const char *colon = memchr(buf, ':', n);
    if (!colon || x->hdr_len + n + 1 > sizeof x->hdr) return len;
    memcpy(x->hdr + x->hdr_len, buf, n);
    x->hdr[x->hdr_len + n] = '\0';
    x->hdr_len += n + 1;
    return len;
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *ud)
{
    struct upstream_xfer *x = ud;
    size_t len = size * nmemb;
    if (x->pause_next) {
        /* Not consumed: libcurl keeps these bytes and delivers them after resume. */
        x->pause_next = false;
        x->state = XFER_PAUSED;
        evtimer_del(x->timer);
        return CURL_WRITEFUNC_PAUSE;
    }
    if (x->idle_ms && x->state == XFER_BODY) timer_arm_ms(x->timer, x->idle_ms);
    enum upstream_data_rc rc = x->cb.on_data(x->ud, data, len);
    if (rc == UPSTREAM_ABORT) return 0; /* short count: libcurl fails the transfer */
    if (rc == UPSTREAM_PAUSE) x->pause_next = true;
    return len;
}

struct upstream_xfer *upstream_start(struct upstream *u, const struct upstream_request *req,
                                     const struct upstream_callbacks *cb, void *ud)
{
    struct upstream_xfer *x = calloc(1, sizeof *x);
    if (!x) return NULL;
    x->u = u;
    x->cb = *cb;
    x->ud = ud;
    x->idle_ms = req->idle_ms;
    x->easy = u->n_pool ? u->pool[--u->n_pool] : curl_easy_init();
    x->timer = evtimer_new(u->base, on_xfer_timer, x);
    if (!x->easy || !x->timer) goto fail;
    for (size_t i = 0; i < req->n_headers; i++) {
        struct curl_slist *n = curl_slist_append(x->headers, req->headers[i]);
        if (!n) goto fail;
        x->headers = n;
    }
    /* No "Expect: 100-continue" round trip for large bodies. */
    struct curl_slist *n = curl_slist_append(x->headers, "Expect:");
    if (!n) goto fail;
    x->headers = n;

    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_URL, req->url);
    if (req->unix_socket) curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, req->unix_socket);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    /* HTTP/1.1 only: a paused HTTP/2 stream can still buffer ~10 MB (PITFALLS). */
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    if (req->connect_ms) curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)req->connect_ms);
    if (req->total_ms) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)req->total_ms);
    if (req->body) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body);
    }
    x->state = XFER_HEAD;
    if (req->first_byte_ms) timer_arm_ms(x->timer, req->first_byte_ms);

    x->next = u->xfers;
    if (u->xfers) u->xfers->prev = x;
    u->xfers = x;
    u->active++;
    if (curl_multi_add_handle(u->multi, e) != CURLM_OK) {
        xfer_unlink_free(x);
        return NULL;
    }
    return x;
fail:
    if (x->easy) curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->headers);
    if (x->timer) event_free(x->timer);
    free(x);
    return NULL;
}

void upstream_resume(struct upstream_xfer *x)
{
    if (x->state != XFER_PAUSED) {
        x->pause_next = false; /* pause was requested but never took effect */
        return;
    }
    x->state = XFER_BODY;
    if (x->idle_ms) timer_arm_ms(x->timer, x->idle_ms);
    /* May deliver buffered bytes through write_cb before it returns; libcurl then
     * arms a 0 ms timeout so the multi loop picks the transfer up again. */
    curl_easy_pause(x->easy, CURLPAUSE_CONT);
}

void upstream_cancel(struct upstream_xfer *x)
{
    xfer_unlink_free(x);
}

const char *upstream_header(const struct upstream_xfer *x, const char *name)
{
    size_t nlen = strlen(name);
    for (size_t off = 0; off < x->hdr_len;) {
        const char *h = x->hdr + off;
        size_t len = strlen(h);
        if (len > nlen && h[nlen] == ':' && strncasecmp(h, name, nlen) == 0) {
            const char *v = h + nlen + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            return v;
        }
        off += len + 1;
    }
    return NULL;
}

unsigned upstream_active(const struct upstream *u)
{
    return u->active;
}

/* ---------------------------------------------------------------- lifecycle */

int upstream_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

void upstream_global_cleanup(void)
{
    curl_global_cleanup();
}

struct upstream *upstream_new(struct event_base *base, long max_host_conns)
{
    struct upstream *u = calloc(1, sizeof *u);
    if (!u) return NULL;
    u->base = base;
    u->multi = curl_multi_init();
    u->timer = evtimer_new(base, on_curl_timeout, u);
    if (!u->multi || !u->timer) {
        upstream_free(u);
        return NULL;
    }
    curl_multi_setopt(u->multi, CURLMOPT_SOCKETFUNCTION, multi_socket_cb);
    curl_multi_setopt(u->multi, CURLMOPT_SOCKETDATA, u);
    curl_multi_setopt(u->multi, CURLMOPT_TIMERFUNCTION, multi_timer_cb);
    curl_multi_setopt(u->multi, CURLMOPT_TIMERDATA, u);
    curl_multi_setopt(u->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max_host_conns);
    /* Keep-alive cache large enough for every host connection we allow. */
    curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, max_host_conns * 4);
    return u;
}

void upstream_free(struct upstream *u)
{
    if (!u) return;
    while (u->xfers)
        finish(u->xfers, UPSTREAM_ERR_ABORTED, "client shut down");
    while (u->n_pool)
        curl_easy_cleanup(u->pool[--u->n_pool]);
    if (u->multi) curl_multi_cleanup(u->multi);
    if (u->timer) event_free(u->timer);
    free(u);
}
