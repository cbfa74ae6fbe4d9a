/* cache/redis.c against a real, private redis-server: round trips, binary-safe
 * arguments, EVALSHA falling back to EVAL after SCRIPT FLUSH, a command timeout
 * on a hung server, and reconnection after the server is killed and restarted.
 * Skipped (77) when redis-server is not installed. Every event-loop wait is
 * bounded by a deadline. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cache/redis.h"
#include "common/util.h"

static pid_t server;
static unsigned port;
static struct event_base *base;

static unsigned free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

static void start_server(void)
{
    char p[16];
    snprintf(p, sizeof p, "%u", port);
    server = fork();
    if (server == 0) {
        execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--loglevel", "warning", "--enable-debug-command", "yes",
               (char *)NULL);
        _exit(127);
    }
}

static void stop_server(void)
{
    if (server > 0) {
        kill(server, SIGKILL);
        waitpid(server, NULL, 0);
        server = 0;
    }
}

/* Runs the loop until *flag or the deadline; returns *flag. */
static int run_until(volatile int *flag, unsigned ms)
{
    uint64_t end = util_now_ms() + ms;
    while (!*flag && util_now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(1000);
    return *flag;
}

struct result {
    int done;
    int type;
    long long integer;
    char str[128];
};

static void on_reply(const struct redisReply *reply, void *ud)
{
    struct result *r = ud;
    r->done = 1;
    r->type = reply ? reply->type : -1;
    if (reply && reply->type == REDIS_REPLY_INTEGER) r->integer = reply->integer;
    if (reply && (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS ||
                  reply->type == REDIS_REPLY_ERROR))
        snprintf(r->str, sizeof r->str, "%.*s", (int)reply->len, reply->str);
}

static int cmd(struct redis *r, struct result *res, int argc, const char **argv)
{
    size_t lens[8];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    memset(res, 0, sizeof *res);
    return redis_command_argv(r, on_reply, res, argc, argv, lens);
}

static struct redis *connect_client(unsigned timeout_ms)
{
    struct redis_options o = {.host = "127.0.0.1",
                              .port = port,
                              .command_timeout_ms = timeout_ms,
                              .max_backoff_ms = 200,
                              .name = "test"};
    struct redis *r = redis_new(base, &o);
    assert_non_null(r);
    /* Wait until connected (the server may still be starting). */
    uint64_t end = util_now_ms() + 10000;
    while (!redis_connected(r) && util_now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(2000);
    assert_true(redis_connected(r));
    return r;
}

static void test_round_trip_and_binary(void **state)
{
    (void)state;
    struct redis *r = connect_client(1000);
    struct result res;
    const char *set[] = {"SET", "k\r\n with spaces", "v"};
    size_t lens[] = {3, 15, 1};
    memset(&res, 0, sizeof res);
    assert_int_equal(redis_command_argv(r, on_reply, &res, 3, set, lens), 0);
    assert_true(run_until(&res.done, 5000));
    assert_string_equal(res.str, "OK");
    const char *get[] = {"GET", "k\r\n with spaces"};
    assert_int_equal(cmd(r, &res, 2, get), 0);
    assert_true(run_until(&res.done, 5000));
    assert_int_equal(res.type, REDIS_REPLY_STRING);
    assert_string_equal(res.str, "v");
    redis_free(r);
}

static void test_eval_noscript_fallback(void **state)
{
    (void)state;
    struct redis *r = connect_client(1000);
    static struct redis_script s = {.src = "return tonumber(ARGV[1]) + #KEYS"};
    redis_script_init(&s);
    struct result res;
    const char *flush[] = {"SCRIPT", "FLUSH"};
    assert_int_equal(cmd(r, &res, 2, flush), 0);
    assert_true(run_until(&res.done, 5000));
    const char *keys[] = {"a", "b"};
    size_t kl[] = {1, 1};
    const char *args[] = {"40"};
    size_t al[] = {2};
    memset(&res, 0, sizeof res);
    assert_int_equal(redis_eval(r, &s, on_reply, &res, 2, keys, kl, 1, args, al), 0);
    assert_true(run_until(&res.done, 5000));
    assert_int_equal(res.type, REDIS_REPLY_INTEGER);
    assert_int_equal(res.integer, 42);
    struct redis_stats st;
    redis_get_stats(r, &st);
    assert_int_equal(st.noscript_retries, 1);
    /* Now cached: no retry. */
    memset(&res, 0, sizeof res);
    assert_int_equal(redis_eval(r, &s, on_reply, &res, 2, keys, kl, 1, args, al), 0);
    assert_true(run_until(&res.done, 5000));
    assert_int_equal(res.integer, 42);
    redis_get_stats(r, &st);
    assert_int_equal(st.noscript_retries, 1);
    redis_free(r);
}

static void test_timeout_on_hung_server(void **state)
{
    (void)state;
    struct redis *r = connect_client(200);
    struct result res;
    const char *sleep_cmd[] = {"DEBUG", "SLEEP", "1"};
    assert_int_equal(cmd(r, &res, 3, sleep_cmd), 0);
    assert_true(run_until(&res.done, 5000));
    assert_int_equal(res.type, -1); /* NULL reply: timed out, connection dropped */
    struct redis_stats st;
    redis_get_stats(r, &st);
    assert_int_equal(st.timeouts, 1);
    /* It comes back by itself once the server answers again (the reconnect itself
     * may land while the server still sleeps, so a PING can time out once more). */
    uint64_t end = util_now_ms() + 10000;
    const char *ping[] = {"PING"};
    bool pong = false;
    while (!pong && util_now_ms() < end) {
        if (cmd(r, &res, 1, ping) == 0 && run_until(&res.done, 5000))
            pong = strcmp(res.str, "PONG") == 0;
        else
            event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(5000);
    }
    assert_true(pong);
    redis_free(r);
}

static void test_reconnect_after_restart(void **state)
{
    (void)state;
    struct redis *r = connect_client(1000);
    stop_server();
    /* The loss is noticed (a pending command fails) and new commands are refused, never blocked. */
    struct result res;
    const char *ping[] = {"PING"};
    if (cmd(r, &res, 1, ping) == 0) {
        assert_true(run_until(&res.done, 5000));
        assert_int_equal(res.type, -1);
    }
    uint64_t end = util_now_ms() + 5000;
    while (redis_connected(r) && util_now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(2000);
    assert_false(redis_connected(r));
    assert_int_equal(cmd(r, &res, 1, ping), -1);
    start_server();
    end = util_now_ms() + 10000;
    while (!redis_connected(r) && util_now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(2000);
    assert_true(redis_connected(r));
    assert_int_equal(cmd(r, &res, 1, ping), 0);
    assert_true(run_until(&res.done, 5000));
    assert_string_equal(res.str, "PONG");
    redis_free(r);
}

static void test_free_fails_pending(void **state)
{
    (void)state;
    struct redis *r = connect_client(1000);
    struct result res;
    const char *ping[] = {"PING"};
    assert_int_equal(cmd(r, &res, 1, ping), 0);
    redis_free(r); /* the callback runs now, with NULL */
    assert_int_equal(res.done, 1);
    assert_int_equal(res.type, -1);
}

int main(void)
{
    if (system("command -v redis-server >/dev/null 2>&1") != 0) {
        printf("SKIP: redis-server not installed\n");
        return 77;
    }
    signal(SIGPIPE, SIG_IGN);
    port = free_port();
    start_server();
    base = event_base_new();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_and_binary),
        cmocka_unit_test(test_eval_noscript_fallback),
        cmocka_unit_test(test_timeout_on_hung_server),
        cmocka_unit_test(test_reconnect_after_restart),
        cmocka_unit_test(test_free_fails_pending),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    stop_server();
    event_base_free(base);
    return rc;
}
