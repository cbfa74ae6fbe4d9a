/* Redis for one worker thread: an async hiredis connection on the worker's
 * event_base with a connect timeout, per-command timeouts, reconnection with
 * backoff, and scripts sent as EVALSHA with a single EVAL retry on NOSCRIPT.
 * Every caller must have a defined behaviour for "Redis is down": commands then
 * fail at once (or their callback gets a NULL reply) and never block. */
#ifndef LLMGATE_CACHE_REDIS_H
#define LLMGATE_CACHE_REDIS_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct redisReply;
struct redis;

/* A Lua script; sha is filled by redis_script_init. */
struct redis_script {
    const char *src;
    char sha[41];
};

/* Called exactly once per accepted command, on the worker's thread. reply is
 * NULL when the command failed (timeout, disconnect); a reply of type
 * REDIS_REPLY_ERROR is a Redis error. The reply is valid only during the call. */
typedef void (*redis_reply_cb)(const struct redisReply *reply, void *ud);

struct redis_options {
    const char *host; /* TCP host or address */
    unsigned port;
    unsigned connect_timeout_ms; /* 0 = 1000 */
    unsigned command_timeout_ms; /* 0 = 1000; a timeout drops the connection (PITFALLS) */
    unsigned max_backoff_ms;     /* reconnect backoff cap; 0 = 5000 */
    const char *name;            /* for log lines, e.g. "worker 0" */
};

/* Creates the client and starts connecting; NULL on allocation failure. */
struct redis *redis_new(struct event_base *base, const struct redis_options *opt);
/* Fails every pending command (callbacks get NULL) and frees the client. */
void redis_free(struct redis *r);
/* Whether the connection is up (commands are accepted either way while connecting). */
bool redis_connected(const struct redis *r);
/* Sends a command with explicit argument lengths (binary safe). 0 when accepted
 * (the callback will run), -1 when Redis is down (the callback will not run). */
int redis_command_argv(struct redis *r, redis_reply_cb cb, void *ud, int argc, const char **argv,
                       const size_t *argvlen);
/* Writes queued commands to the socket now instead of on the next loop turn: for
 * commands on a request's critical path (key lookup, quota reserve, cache lookup).
 * Leave background work (settle, usage) to the loop so it never delays a reply. */
void redis_flush(struct redis *r);
/* Computes the script's SHA-1. */
void redis_script_init(struct redis_script *s);
/* Runs a script: EVALSHA, then EVAL once if Redis answers NOSCRIPT. keys and args
 * are copied. Same return contract as redis_command_argv. */
int redis_eval(struct redis *r, const struct redis_script *s, redis_reply_cb cb, void *ud,
               int nkeys, const char **keys, const size_t *keylens, int nargs, const char **args,
               const size_t *arglens);
/* Counters for metrics and tests. */
struct redis_stats {
    unsigned long connects, disconnects, timeouts, noscript_retries;
};
void redis_get_stats(const struct redis *r, struct redis_stats *out);

#endif
