/* Pub/sub subscriber on hiredis 0.14 async. The subscription callback runs for
 * the SUBSCRIBE confirmation and for every message; hiredis frees the context
 * after the disconnect callback, so we only drop our pointer there and
 * reconnect from a timer (PITFALLS). */
#include "cache/pubsub.h"

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000

struct pubsub {
    struct event_base *base;
    char *host, *channel;
    unsigned port;
    pubsub_message_cb on_message;
    pubsub_reset_cb on_reset;
    void *ud;
    redisAsyncContext *ctx;
    struct event *reconnect;
    unsigned backoff_ms;
    bool subscribed_once; /* a later subscription means messages may have been missed */
    bool freeing;
};

static void connect_now(struct pubsub *p);

static void schedule_reconnect(struct pubsub *p)
{
    if (p->freeing) return;
    struct timeval tv = {.tv_sec = p->backoff_ms / 1000, .tv_usec = (p->backoff_ms % 1000) * 1000};
    event_add(p->reconnect, &tv);
    p->backoff_ms = p->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : p->backoff_ms * 2;
}

static void on_reconnect_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    connect_now(arg);
}

static void on_sub_reply(redisAsyncContext *c, void *reply, void *privdata)
{
    (void)c;
    struct pubsub *p = privdata;
    const redisReply *r = reply;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 3) return;
    const redisReply *kind = r->element[0];
    if (kind->type != REDIS_REPLY_STRING) return;
    if (strcmp(kind->str, "subscribe") == 0) {
        p->backoff_ms = BACKOFF_MIN_MS;
        if (p->subscribed_once && p->on_reset) p->on_reset(p->ud);
        p->subscribed_once = true;
    } else if (strcmp(kind->str, "message") == 0 && r->element[2]->type == REDIS_REPLY_STRING) {
        p->on_message(r->element[2]->str, r->element[2]->len, p->ud);
    }
}

static void on_connect(const redisAsyncContext *c, int status)
{
    struct pubsub *p = c->data;
    if (status != REDIS_OK) {
        p->ctx = NULL; /* hiredis frees the context after this callback */
        schedule_reconnect(p);
    }
}

static void on_disconnect(const redisAsyncContext *c, int status)
{
    (void)status;
    struct pubsub *p = c->data;
    p->ctx = NULL; /* freed by hiredis after this callback */
    schedule_reconnect(p);
}

static void connect_now(struct pubsub *p)
{
    redisAsyncContext *c = redisAsyncConnect(p->host, (int)p->port);
    if (!c || c->err) {
        if (c) redisAsyncFree(c);
        schedule_reconnect(p);
        return;
    }
    c->data = p;
    /* A subscriber only reads: without TCP keepalive a peer that vanished (host
     * down, a dropped NAT entry) would leave it waiting for good, missing every
     * invalidation. hiredis's 15 s idle, 3 probes 5 s apart: gone within ~30 s,
     * and the resubscription's on_reset covers what was missed. */
    if (redisEnableKeepAlive(&c->c) != REDIS_OK)
        log_warn("pubsub", "cannot enable TCP keepalive on the %s subscription", p->channel);
    if (redisLibeventAttach(c, p->base) != REDIS_OK) {
        redisAsyncFree(c);
        schedule_reconnect(p);
        return;
    }
    redisAsyncSetConnectCallback(c, on_connect);
    redisAsyncSetDisconnectCallback(c, on_disconnect);
    p->ctx = c;
    /* Queued until the connection is up; the callback stays registered for messages. */
    if (redisAsyncCommand(c, on_sub_reply, p, "SUBSCRIBE %s", p->channel) != REDIS_OK)
        log_warn("pubsub", "cannot queue SUBSCRIBE %s", p->channel);
}

struct pubsub *pubsub_new(struct event_base *base, const char *host, unsigned port,
                          const char *channel, pubsub_message_cb on_message,
                          pubsub_reset_cb on_reset, void *ud)
{
    struct pubsub *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->base = base;
    p->port = port;
    p->on_message = on_message;
    p->on_reset = on_reset;
    p->ud = ud;
    p->backoff_ms = BACKOFF_MIN_MS;
    p->host = strdup(host ? host : "127.0.0.1");
    p->channel = strdup(channel);
    p->reconnect = evtimer_new(base, on_reconnect_timer, p);
    if (!p->host || !p->channel || !p->reconnect) {
        pubsub_free(p);
        return NULL;
    }
    connect_now(p);
    return p;
}

void pubsub_free(struct pubsub *p)
{
    if (!p) return;
    p->freeing = true;
    if (p->ctx) redisAsyncFree(p->ctx); /* runs on_disconnect, which clears p->ctx */
    p->ctx = NULL;
    if (p->reconnect) event_free(p->reconnect);
    free(p->host);
    free(p->channel);
    free(p);
}
