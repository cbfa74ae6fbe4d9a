/* Worker thread lifecycle: start, snapshot handover, graceful drain, join. */
#include "gateway/worker.h"

#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/redis.h"
#include "common/log.h"
#include "common/util.h"
#include "gateway/cachestage.h"
#include "gateway/health.h"
#include "gateway/keys.h"
#include "gateway/promhist.h"
#include "gateway/quota.h"
#include "gateway/request.h"
#include "gateway/server.h"
#include "routing/upstream.h"

#define DRAIN_FLUSH_MS 200 /* time for the last replies to leave once idle */

static long max_host_conns(const struct config *cfg)
{
    long m = 1;
    for (size_t i = 0; i < cfg->n_providers; i++)
        if ((long)cfg->providers[i].max_connections > m)
            m = (long)cfg->providers[i].max_connections;
    return m;
}

static void exit_soon(struct worker *w)
{
    quota_return_grants(w->quota); /* unspent grants back to the shared pool */
    quota_flush(w->quota);         /* the last settles leave with the last replies */
    struct timeval tv = {.tv_sec = 0, .tv_usec = DRAIN_FLUSH_MS * 1000};
    event_base_loopexit(w->base, &tv);
}

static void on_drain_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    log_warn("worker", "worker %u: drain timeout with %u request(s) in flight", w->index,
             w->active);
    exit_soon(w); /* the grants go back all the same; the rest are cancelled at join */
}

static void begin_drain(struct worker *w)
{
    if (w->draining) return;
    w->draining = true;
    if (w->bound) {
        evhttp_del_accept_socket(w->http, w->bound); /* stop accepting; closes the listener */
        w->bound = NULL;
    }
    health_stop(w);
    if (w->active == 0) {
        exit_soon(w);
        return;
    }
    log_info("worker", "worker %u: draining %u request(s)", w->index, w->active);
    w->drain_timer = evtimer_new(w->base, on_drain_deadline, w);
    if (w->drain_timer) {
        struct timeval tv = {.tv_sec = w->cfg->drain_timeout_ms / 1000,
                             .tv_usec = (w->cfg->drain_timeout_ms % 1000) * 1000};
        evtimer_add(w->drain_timer, &tv);
    }
}

void worker_request_done(struct worker *w)
{
    w->active--;
    if (w->draining && w->active == 0) exit_soon(w);
}

/* Event-loop lag: a timer every LAG_TICK_MS records how late it runs. A late
 * tick means the worker was busy with other events or not on a CPU, and every
 * request that arrived meanwhile waited that long before the worker read it:
 * time the request-duration histogram cannot see. */
#define LAG_TICK_MS 20
static const double lag_le_s[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                  0.01,   0.025,   0.05,   0.1,   0.25,   1};
static struct promhist loop_lag = PROMHIST_INIT(lag_le_s);

static void on_lag_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    uint64_t now = util_now_us();
    promhist_observe(&loop_lag, now > w->lag_due_us ? now - w->lag_due_us : 0);
    w->lag_due_us = now + LAG_TICK_MS * 1000;
}

void worker_metrics_write(struct evbuffer *out)
{
    promhist_header(out, "llmgate_event_loop_lag_seconds",
                    "How late a worker's 20 ms timer ran (busy with other events, or off the "
                    "CPU): requests arriving meanwhile waited as long before being read.");
    promhist_write(out, "llmgate_event_loop_lag_seconds", NULL, NULL, &loop_lag);
}

/* Runs on the worker's thread when another thread posted something. */
static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    pthread_mutex_lock(&w->mu);
    struct config *next = w->pending;
    w->pending = NULL;
    bool stop = w->stop_requested;
    pthread_mutex_unlock(&w->mu);
    if (next) {
        /* Requests in flight keep the snapshot they started with (their own reference). */
        struct config *old = w->cfg;
        w->cfg = next;
        config_unref(old);
        server_apply_limits(w);
    }
    if (stop) begin_drain(w);
}

int worker_init(struct worker *w, struct gateway *gw, unsigned index, struct config *cfg,
                evutil_socket_t listen_fd, char *err, size_t errlen)
{
    memset(w, 0, sizeof *w);
    w->index = index;
    w->gw = gw;
    w->listen_fd = listen_fd;
    w->cfg = config_ref(cfg);
    pthread_mutex_init(&w->mu, NULL);
    struct event_config *ec = event_config_new();
    if (ec) {
        event_config_require_features(ec, EV_FEATURE_EARLY_CLOSE);
        /* Coalesce the add/del churn of one loop turn (curl sockets, the close
         * watch, evhttp's read/write toggles) into one epoll_ctl per fd. */
        event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    }
    w->base = ec ? event_base_new_with_config(ec) : NULL;
    if (ec) event_config_free(ec);
    if (!w->base) {
        log_warn(
            "worker",
            "no event backend with early-close detection; client disconnects are noticed late");
        w->base = event_base_new();
    }
    if (!w->base) {
        snprintf(err, errlen, "cannot create an event base");
        return -1;
    }
    w->wake = event_new(w->base, -1, EV_PERSIST, on_wake, w);
    w->up = upstream_new(w->base, max_host_conns(cfg));
    char rname[32];
    snprintf(rname, sizeof rname, "worker %u", index);
    struct redis_options ro = {.host = cfg->redis_address,
                               .port = cfg->redis_port,
                               .command_timeout_ms = cfg->redis_timeout_ms,
                               .name = rname};
    w->redis = redis_new(w->base, &ro);
    if (w->redis) w->keycache = keycache_new(w);
    if (w->redis) w->quota = quota_worker_new(w);
    w->rcache = cachestage_worker_new(w);
    if (!w->wake || !w->up || !w->redis || !w->keycache || !w->quota || !w->rcache) {
        snprintf(err, errlen, "cannot create the worker's event or upstream client");
        return -1;
    }
    event_add(w->wake, NULL);
    w->lag = event_new(w->base, -1, EV_PERSIST, on_lag_tick, w);
    if (w->lag) {
        const struct timeval tick = {.tv_sec = 0, .tv_usec = LAG_TICK_MS * 1000};
        w->lag_due_us = util_now_us() + LAG_TICK_MS * 1000;
        event_add(w->lag, &tick);
    }
    if (server_init(w, err, errlen) != 0) return -1;
    if (index == 0 && health_start(w) != 0) {
        snprintf(err, errlen, "cannot start the upstream health probe");
        return -1;
    }
    return 0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    event_base_dispatch(w->base);
    return NULL;
}

int worker_start(struct worker *w)
{
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) return -1;
    w->thread_started = true;
    return 0;
}

void worker_post_config(struct worker *w, struct config *cfg)
{
    pthread_mutex_lock(&w->mu);
    config_unref(w->pending);
    w->pending = config_ref(cfg);
    pthread_mutex_unlock(&w->mu);
    event_active(w->wake, EV_READ, 0);
}

void worker_post_stop(struct worker *w)
{
    pthread_mutex_lock(&w->mu);
    w->stop_requested = true;
    pthread_mutex_unlock(&w->mu);
    event_active(w->wake, EV_READ, 0);
}

void worker_join(struct worker *w)
{
    if (w->thread_started) pthread_join(w->thread, NULL);
    w->thread_started = false;
    health_stop(w);
    /* Connections still open (drain timeout) are closed here; their requests are
     * cancelled through the close callbacks while the upstream client is alive. */
    server_free(w);
    upstream_free(w->up);
    /* Pending Redis callbacks run (with NULL) inside redis_free and still use the
     * key cache and the quota state: free those after it. */
    redis_free(w->redis);
    keycache_free(w->keycache);
    quota_worker_free(w->quota);
    cachestage_worker_free(w->rcache);
    request_spares_free(w);
    if (w->drain_timer) event_free(w->drain_timer);
    if (w->wake) event_free(w->wake);
    if (w->lag) event_free(w->lag);
    if (w->base) event_base_free(w->base);
    if (!w->bound && w->listen_fd >= 0 && !w->draining) close(w->listen_fd);
    config_unref(w->cfg);
    config_unref(w->pending);
    pthread_mutex_destroy(&w->mu);
}
