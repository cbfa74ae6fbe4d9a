/* A worker's Redis connection (hiredis 0.14 async on libevent). hiredis 0.14 has
 * no connect or command timeouts, so both are libevent timers here; on expiry
 * the connection is dropped, which fails every pending callback with NULL, and
 * a reconnect timer with exponential backoff brings it back. */
#include "cache/redis.h"

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* One command in flight. Freed in on_reply, which hiredis calls exactly once:
 * with the reply, or with NULL when the connection goes away. */
struct pending {
    struct redis *r;
    redis_reply_cb cb;
    void *ud;
    struct event *timer;
    struct pending *prev, *next;
    /* For scripts: the EVALSHA argv, kept for the EVAL retry; the script source. */
    const struct redis_script *script;
    int argc;
    const char **argv;
    size_t *argvlen;
    bool retried;
};

/* States of the connection:
 *   DOWN       - no context; the reconnect timer is armed
 *   CONNECTING - context exists, connect callback pending, connect timer armed
 *   UP         - connected
 * A context is freed by hiredis after its connect-failure or disconnect callback;
 * we only ever drop our pointer there and reconnect from a timer (PITFALLS). */
enum conn_state { R_DOWN, R_CONNECTING, R_UP };

struct redis {
    struct event_base *base;
    struct redis_options opt;
    char host[256];
    char name[64];
    redisAsyncContext *ctx;
    enum conn_state state;
    struct event *reconnect;
    struct event *connect_timer;
    unsigned backoff_ms;
    bool outage_logged;
    bool freeing;
    bool dropping;           /* inside drop_connection's redisAsyncFree */
    struct pending *pending; /* every command in flight */
    struct redis_stats stats;
};

static void connect_now(struct redis *r);

static void timer_ms(struct event *ev, unsigned ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    event_add(ev, &tv);
}

static void schedule_reconnect(struct redis *r)
{
    if (r->freeing) return;
    r->state = R_DOWN;
    timer_ms(r->reconnect, r->backoff_ms);
    r->backoff_ms =
        r->backoff_ms * 2 > r->opt.max_backoff_ms ? r->opt.max_backoff_ms : r->backoff_ms * 2;
}

static void on_reconnect_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    connect_now(arg);
}

static void on_connect(const redisAsyncContext *c, int status)
{
    struct redis *r = c->data;
    event_del(r->connect_timer);
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        if (!r->outage_logged)
            log_warn("redis", "%s: cannot connect to %s:%u: %s; retrying with backoff", r->name,
                     r->host, r->opt.port, c->errstr);
        r->outage_logged = true;
        r->ctx = NULL;
        schedule_reconnect(r);
        return;
    }
    r->state = R_UP;
    r->backoff_ms = 100;
    r->stats.connects++;
    if (r->outage_logged)
        log_info("redis", "%s: connected to %s:%u", r->name, r->host, r->opt.port);
    r->outage_logged = false;
}

static void on_disconnect(const redisAsyncContext *c, int status)
{
    struct redis *r = c->data;
    /* hiredis frees the context after this callback; pending callbacks have run. */
    r->ctx = NULL;
    r->stats.disconnects++;
    if (r->freeing || r->dropping) return;
    if (status != REDIS_OK && !r->outage_logged) {
        log_warn("redis", "%s: connection to %s:%u lost: %s; reconnecting", r->name, r->host,
                 r->opt.port, c->errstr);
        r->outage_logged = true;
    }
    schedule_reconnect(r);
}

/* Drops the connection from a libevent callback (never a hiredis one). Not
 * redisAsyncDisconnect: that waits for pending replies, which a hung server never
 * sends. redisAsyncFree fails every pending command with a NULL reply now. */
static void drop_connection(struct redis *r, const char *why)
{
    if (!r->ctx) return;
    if (!r->outage_logged) {
        log_warn("redis", "%s: %s; dropping the connection to %s:%u", r->name, why, r->host,
                 r->opt.port);
        r->outage_logged = true;
    }
    redisAsyncContext *c = r->ctx;
    r->ctx = NULL;
    r->dropping = true;
    event_del(r->connect_timer);
    redisAsyncFree(c);
    r->dropping = false;
    schedule_reconnect(r);
}

static void on_connect_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    drop_connection(arg, "connect timed out");
}

static void connect_now(struct redis *r)
{
    redisAsyncContext *c = redisAsyncConnect(r->host, (int)r->opt.port);
    if (!c || c->err) {
        if (!r->outage_logged)
            log_warn("redis", "%s: cannot connect to %s:%u: %s", r->name, r->host, r->opt.port,
                     c ? c->errstr : "out of memory");
        r->outage_logged = true;
        if (c) redisAsyncFree(c);
        schedule_reconnect(r);
        return;
    }
    c->data = r;
    if (redisLibeventAttach(c, r->base) != REDIS_OK) {
        redisAsyncFree(c);
        schedule_reconnect(r);
        return;
    }
    redisAsyncSetConnectCallback(c, on_connect);
    redisAsyncSetDisconnectCallback(c, on_disconnect);
    r->ctx = c;
    r->state = R_CONNECTING;
    timer_ms(r->connect_timer, r->opt.connect_timeout_ms);
}

/* ---------------------------------------------------------------- commands */

static void pending_unlink_free(struct pending *p)
{
    struct redis *r = p->r;
    if (p->prev)
        p->prev->next = p->next;
    else
        r->pending = p->next;
    if (p->next) p->next->prev = p->prev;
    if (p->timer) event_free(p->timer);
    free(p->argv); /* one block with argvlen and the copied bytes */
    free(p);
}

static void on_command_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pending *p = arg;
    p->r->stats.timeouts++;
    drop_connection(p->r, "a command timed out");
}

static int submit(struct redis *r, struct pending *p, int argc, const char **argv,
                  const size_t *lens);

static void on_reply(redisAsyncContext *c, void *reply, void *privdata)
{
    (void)c;
    struct pending *p = privdata;
    struct redis *r = p->r;
    const redisReply *rep = reply;
    if (rep && rep->type == REDIS_REPLY_ERROR && p->script && !p->retried &&
        strncmp(rep->str, "NOSCRIPT", 8) == 0 && r->ctx && !r->freeing) {
        /* The script cache was emptied (restart, failover, SCRIPT FLUSH): once as EVAL. */
        p->retried = true;
        r->stats.noscript_retries++;
        p->argv[0] = "EVAL";
        p->argvlen[0] = 4;
        p->argv[1] = p->script->src;
        p->argvlen[1] = strlen(p->script->src);
        event_del(p->timer);
        if (redisAsyncCommandArgv(r->ctx, on_reply, p, p->argc, p->argv, p->argvlen) == REDIS_OK) {
            timer_ms(p->timer, r->opt.command_timeout_ms);
            return;
        }
        rep = NULL;
    }
    redis_reply_cb cb = p->cb;
    void *ud = p->ud;
    pending_unlink_free(p);
    cb(rep, ud);
}

static int submit(struct redis *r, struct pending *p, int argc, const char **argv,
                  const size_t *lens)
{
    if (!r->ctx || r->freeing) return -1;
    p->timer = evtimer_new(r->base, on_command_timeout, p);
    if (!p->timer) return -1;
    if (redisAsyncCommandArgv(r->ctx, on_reply, p, argc, argv, lens) != REDIS_OK) {
        event_free(p->timer);
        p->timer = NULL;
        return -1;
    }
    timer_ms(p->timer, r->opt.command_timeout_ms);
    p->next = r->pending;
    if (r->pending) r->pending->prev = p;
    r->pending = p;
    return 0;
}

/* Copies argv into one block: pointers, lengths, then the bytes. */
static struct pending *pending_new(struct redis *r, redis_reply_cb cb, void *ud, int argc,
                                   const char **argv, const size_t *lens)
{
    size_t bytes = 0;
    for (int i = 0; i < argc; i++)
        bytes += lens[i] + 1;
    struct pending *p = calloc(1, sizeof *p);
    char *block = malloc((size_t)argc * (sizeof(char *) + sizeof(size_t)) + bytes);
    if (!p || !block) {
        free(p);
        free(block);
        return NULL;
    }
    p->r = r;
    p->cb = cb;
    p->ud = ud;
    p->argc = argc;
    p->argv = (const char **)block;
    p->argvlen = (size_t *)(block + (size_t)argc * sizeof(char *));
    char *data = block + (size_t)argc * (sizeof(char *) + sizeof(size_t));
    for (int i = 0; i < argc; i++) {
        memcpy(data, argv[i], lens[i]);
        data[lens[i]] = '\0';
        p->argv[i] = data;
        p->argvlen[i] = lens[i];
        data += lens[i] + 1;
    }
    return p;
}

int redis_command_argv(struct redis *r, redis_reply_cb cb, void *ud, int argc, const char **argv,
                       const size_t *argvlen)
{
    if (!r->ctx || r->freeing) return -1;
    /* hiredis copies the command into its output buffer, so no copy is kept. */
    struct pending *p = calloc(1, sizeof *p);
    if (!p) return -1;
    p->r = r;
    p->cb = cb;
    p->ud = ud;
    if (submit(r, p, argc, argv, argvlen) != 0) {
        free(p);
        return -1;
    }
    return 0;
}

void redis_script_init(struct redis_script *s)
{
    unsigned char d[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)s->src, strlen(s->src), d);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(s->sha + 2 * i, 3, "%02x", d[i]);
}

#define MAX_SCRIPT_ARGS 8192 /* keys + args of one script call (a batch of settles) */
#define STACK_ARGS      64   /* calls this small build their argument list on the stack */

int redis_eval(struct redis *r, const struct redis_script *s, redis_reply_cb cb, void *ud,
               int nkeys, const char **keys, const size_t *keylens, int nargs, const char **args,
               const size_t *arglens)
{
    if (!r->ctx || r->freeing || nkeys < 0 || nargs < 0 || nkeys + nargs > MAX_SCRIPT_ARGS)
        return -1;
    const char *stack_argv[STACK_ARGS + 3];
    size_t stack_lens[STACK_ARGS + 3];
    const char **argv = stack_argv;
    size_t *lens = stack_lens;
    if (nkeys + nargs > STACK_ARGS) {
        argv = malloc((size_t)(nkeys + nargs + 3) * (sizeof *argv + sizeof *lens));
        if (!argv) return -1;
        lens = (size_t *)(argv + nkeys + nargs + 3);
    }
    char nk[16];
    int argc = 0;
    argv[argc] = "EVALSHA";
    lens[argc++] = 7;
    argv[argc] = s->sha;
    lens[argc++] = 40;
    lens[argc] = (size_t)snprintf(nk, sizeof nk, "%d", nkeys);
    argv[argc++] = nk;
    for (int i = 0; i < nkeys; i++) {
        argv[argc] = keys[i];
        lens[argc++] = keylens[i];
    }
    for (int i = 0; i < nargs; i++) {
        argv[argc] = args[i];
        lens[argc++] = arglens[i];
    }
    struct pending *p = pending_new(r, cb, ud, argc, argv, lens); /* copies the arguments */
    if (argv != stack_argv) free(argv);
    if (!p) return -1;
    p->script = s;
    if (submit(r, p, argc, p->argv, p->argvlen) != 0) {
        free(p->argv);
        free(p);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- lifecycle */

struct redis *redis_new(struct event_base *base, const struct redis_options *opt)
{
    struct redis *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->base = base;
    r->opt = *opt;
    snprintf(r->host, sizeof r->host, "%s", opt->host ? opt->host : "127.0.0.1");
    snprintf(r->name, sizeof r->name, "%s", opt->name ? opt->name : "redis");
    r->opt.host = r->host;
    r->opt.name = r->name;
    if (!r->opt.connect_timeout_ms) r->opt.connect_timeout_ms = 1000;
    if (!r->opt.command_timeout_ms) r->opt.command_timeout_ms = 1000;
    if (!r->opt.max_backoff_ms) r->opt.max_backoff_ms = 5000;
    r->backoff_ms = 100;
    r->reconnect = evtimer_new(base, on_reconnect_timer, r);
    r->connect_timer = evtimer_new(base, on_connect_timeout, r);
    if (!r->reconnect || !r->connect_timer) {
        redis_free(r);
        return NULL;
    }
    connect_now(r);
    return r;
}

void redis_free(struct redis *r)
{
    if (!r) return;
    r->freeing = true;
    /* Pending callbacks run with NULL replies inside this call. */
    if (r->ctx) redisAsyncFree(r->ctx);
    r->ctx = NULL;
    while (r->pending) {
        struct pending *p = r->pending;
        redis_reply_cb cb = p->cb;
        void *ud = p->ud;
        pending_unlink_free(p);
        cb(NULL, ud);
    }
    if (r->reconnect) event_free(r->reconnect);
    if (r->connect_timer) event_free(r->connect_timer);
    free(r);
}

void redis_flush(struct redis *r)
{
    /* hiredis only queues commands and arms a write event, which costs a loop turn.
     * Not from inside a hiredis callback: its read loop is running; the write event
     * sends the command a moment later there. */
    if (r->ctx && r->state == R_UP && !(r->ctx->c.flags & REDIS_IN_CALLBACK))
        redisAsyncHandleWrite(r->ctx);
}

bool redis_connected(const struct redis *r)
{
    return r->state == R_UP;
}

void redis_get_stats(const struct redis *r, struct redis_stats *out)
{
    *out = r->stats;
}
