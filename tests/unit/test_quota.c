/* Unit tests for tenant keys, quotas and usage helpers: key extraction and
 * records, globs, reset-duration and Retry-After formatting, the token
 * estimate, scope naming, calendar days, the CSV report, and the Lua bucket
 * math (refill, reset time, all or nothing over several windows and scopes,
 * concurrency, settle refunds and idempotency) run on a private redis-server.
 * The Redis part is skipped when redis-server is not installed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "gateway/keys.h"
#include "gateway/quota.h"
#include "gateway/scripts.h"
#include "gateway/usage.h"

/* ---------------------------------------------------------------- pure helpers */

static void test_extract(void **state)
{
    (void)state;
    size_t n = 0;
    const char *k = keys_extract("Bearer sk-a", "azure", "anthropic", &n);
    assert_int_equal(n, 4);
    assert_memory_equal(k, "sk-a", 4);
    k = keys_extract(NULL, "  azure-key ", "anthropic", &n);
    assert_int_equal(n, 9);
    assert_memory_equal(k, "azure-key", 9);
    k = keys_extract(NULL, NULL, "anthropic", &n);
    assert_int_equal(n, 9);
    assert_null(keys_extract(NULL, NULL, NULL, &n));
    assert_null(keys_extract("Basic abc", NULL, NULL, &n));
    assert_null(keys_extract(NULL, "   ", NULL, &n));
}

static void test_glob(void **state)
{
    (void)state;
    assert_true(keys_glob_match("*", "anything"));
    assert_true(keys_glob_match("*", ""));
    assert_true(keys_glob_match("gpt-4o*", "gpt-4o-mini"));
    assert_true(keys_glob_match("gpt-4o*", "gpt-4o"));
    assert_false(keys_glob_match("gpt-4o*", "gpt-4"));
    assert_true(keys_glob_match("*mini", "gpt-4o-mini"));
    assert_true(keys_glob_match("a?c", "abc"));
    assert_false(keys_glob_match("a?c", "ac"));
    assert_true(keys_glob_match("a*b*c", "a-x-b-y-c"));
    assert_false(keys_glob_match("a*b*c", "a-x-c-y-b"));
    assert_false(keys_glob_match("exact", "exactly"));
}

static void test_record_parse(void **state)
{
    (void)state;
    const char *f[] = {"id",           "tenant",
                       "status",       "models",
                       "rpm",          "tpm",
                       "tpd",          "tpmo",
                       "concurrency",  "max_tokens",
                       "model_limits", "expires",
                       "tenant.tpm",   "tenant.concurrency"};
    const char *v[] = {"key_0123",
                       "acme",
                       "active",
                       "gpt-4o*,mock-?",
                       "10",
                       "1000",
                       "5000",
                       "90000",
                       "3",
                       "256",
                       "{\"gpt-4o*\":{\"tpm\":77,\"rpm\":5},\"bad\":1}",
                       "0",
                       "20000",
                       "9"};
    struct key_record *k = keys_record_parse(f, v, sizeof f / sizeof f[0]);
    assert_non_null(k);
    assert_string_equal(k->id, "key_0123");
    assert_string_equal(k->tenant, "acme");
    assert_false(k->revoked);
    assert_int_equal(k->key.rpm, 10);
    assert_int_equal(k->key.tpm, 1000);
    assert_int_equal(k->key.tpd, 5000);
    assert_int_equal(k->key.tpmo, 90000);
    assert_int_equal(k->key.conc, 3);
    assert_int_equal(k->max_tokens, 256);
    assert_int_equal(k->tenant_limits.tpm, 20000);
    assert_int_equal(k->tenant_limits.conc, 9);
    assert_int_equal(k->n_models, 2);
    assert_true(keys_model_allowed(k, "gpt-4o-mini"));
    assert_true(keys_model_allowed(k, "mock-1"));
    assert_false(keys_model_allowed(k, "mock-12"));
    const struct key_model_limit *ml = keys_model_limit(k, "gpt-4o");
    assert_non_null(ml);
    assert_int_equal(ml->l.tpm, 77);
    assert_int_equal(ml->l.rpm, 5);
    assert_null(keys_model_limit(k, "mock-1"));

    struct quota_scope sc[QUOTA_MAX_SCOPES];
    assert_int_equal(quota_scopes(k, "gpt-4o", "p:", sc), 3);
    assert_string_equal(sc[0].bucket, "p:q:{acme}:k:key_0123");
    assert_string_equal(sc[0].conc, "p:q:{acme}:k:key_0123:c");
    assert_string_equal(sc[1].bucket, "p:q:{acme}:t");
    assert_string_equal(sc[2].bucket, "p:q:{acme}:k:key_0123:m:gpt-4o*");
    assert_int_equal(quota_scopes(k, "mock-1", "p:", sc), 2);
    keys_record_release(k);

    /* Globs past QUOTA_GLOB_NAME_MAX are named by their hash: two that share a long
     * head still have buckets of their own. */
    char long_a[200], long_b[200], ml_json[512];
    memset(long_a, 'x', 150);
    memcpy(long_b, long_a, 150);
    strcpy(long_a + 150, "-a*");
    strcpy(long_b + 150, "-b*");
    snprintf(ml_json, sizeof ml_json, "{\"%s\":{\"tpm\":7},\"%s\":{\"tpm\":8}}", long_a, long_b);
    const char *f4[] = {"id", "tenant", "status", "model_limits"};
    const char *v4[] = {"key_0123", "acme", "active", ml_json};
    k = keys_record_parse(f4, v4, 4);
    assert_non_null(k);
    struct quota_scope sa[QUOTA_MAX_SCOPES], sb[QUOTA_MAX_SCOPES];
    char model_a[200], model_b[200];
    snprintf(model_a, sizeof model_a, "%.150s-a1", long_a);
    snprintf(model_b, sizeof model_b, "%.150s-b1", long_b);
    assert_int_equal(quota_scopes(k, model_a, "p:", sa), 1);
    assert_int_equal(quota_scopes(k, model_b, "p:", sb), 1);
    assert_int_equal(sa[0].l.tpm, 7);
    assert_int_equal(sb[0].l.tpm, 8);
    assert_string_not_equal(sa[0].bucket, sb[0].bucket);
    assert_true(strncmp(sa[0].bucket, "p:q:{acme}:k:key_0123:mh:", 25) == 0);
    assert_int_equal(strlen(sa[0].bucket), 25 + 64);
    keys_record_release(k);

    /* revoked, all models by default, and records that are not keys */
    const char *f2[] = {"id", "tenant", "status"};
    const char *v2[] = {"key_1", "t", "revoked"};
    k = keys_record_parse(f2, v2, 3);
    assert_non_null(k);
    assert_true(k->revoked);
    assert_true(keys_model_allowed(k, "whatever"));
    assert_int_equal(quota_scopes(k, "m", "", sc), 0); /* no limits: nothing to reserve */
    keys_record_release(k);
    const char *v3[] = {"key_1", "bad{tenant}", "active"};
    assert_null(keys_record_parse(f2, v3, 3));
    assert_null(keys_record_parse(f2 + 1, v2 + 1, 2)); /* no id */
}

static void test_generate(void **state)
{
    (void)state;
    char s1[KEYS_SECRET_LEN + 1], h1[SHA256_HEX_LEN + 1], id1[KEYS_ID_LEN + 1];
    char s2[KEYS_SECRET_LEN + 1], h2[SHA256_HEX_LEN + 1], id2[KEYS_ID_LEN + 1];
    assert_int_equal(keys_generate(s1, h1, id1), 0);
    assert_int_equal(keys_generate(s2, h2, id2), 0);
    assert_int_equal(strlen(s1), KEYS_SECRET_LEN);
    assert_int_equal(strncmp(s1, "sk-lg-", 6), 0);
    assert_int_equal(strlen(id1), KEYS_ID_LEN);
    assert_string_not_equal(s1, s2);
    assert_string_not_equal(id1, id2);
    char check[SHA256_HEX_LEN + 1];
    hash_sha256_hex(s1, strlen(s1), check);
    assert_string_equal(check, h1);
    assert_true(keys_tenant_id_valid("acme-corp_1.eu"));
    assert_false(keys_tenant_id_valid(""));
    assert_false(keys_tenant_id_valid("a:b"));
    assert_false(keys_tenant_id_valid("{x}"));
}

static void test_duration_and_retry_after(void **state)
{
    (void)state;
    char b[32];
    assert_string_equal(quota_format_duration(0, b, sizeof b), "0ms");
    assert_string_equal(quota_format_duration(20, b, sizeof b), "20ms");
    assert_string_equal(quota_format_duration(1000, b, sizeof b), "1s");
    assert_string_equal(quota_format_duration(1500, b, sizeof b), "1.5s");
    assert_string_equal(quota_format_duration(1234, b, sizeof b), "1.234s");
    assert_string_equal(quota_format_duration(60000, b, sizeof b), "1m0s");
    assert_string_equal(quota_format_duration(360000, b, sizeof b), "6m0s");
    assert_string_equal(quota_format_duration(3723500, b, sizeof b), "1h2m3.5s");
    assert_string_equal(quota_format_duration(-5, b, sizeof b), "0ms");
    assert_int_equal(quota_retry_after_s(0), 1);
    assert_int_equal(quota_retry_after_s(1), 1);
    assert_int_equal(quota_retry_after_s(1000), 1);
    assert_int_equal(quota_retry_after_s(1001), 2);
    assert_int_equal(quota_retry_after_s(29500), 30);
}

static void test_estimate(void **state)
{
    (void)state;
    struct oai_request o = {.endpoint = OAI_CHAT, .prompt_chars = 9, .n = 2};
    long prompt = 0;
    assert_int_equal(quota_estimate(&o, 20, &prompt), 3 + 8 + 40);
    assert_int_equal(prompt, 11);
    o.prompt_tokens = 5; /* token ids given directly */
    o.n = 1;
    assert_int_equal(quota_estimate(&o, 0, &prompt), 3 + 5 + 8);
    o.endpoint = OAI_EMBEDDINGS;
    assert_int_equal(quota_estimate(&o, 1000, &prompt), 16); /* no completion */
}

static void test_days_and_csv(void **state)
{
    (void)state;
    long d;
    char s[9];
    assert_int_equal(usage_parse_day("1970-01-01", &d), 0);
    assert_int_equal(d, 0);
    assert_int_equal(usage_parse_day("2024-02-29", &d), 0);
    usage_day_string(d, s);
    assert_string_equal(s, "20240229");
    assert_int_equal(usage_parse_day("2024-03-01", &d), 0);
    usage_day_string(d - 1, s);
    assert_string_equal(s, "20240229");
    assert_int_equal(usage_parse_day("2024-13-01", &d), -1);
    assert_int_equal(usage_parse_day("2024-01-01x", &d), -1);
    /* every day of 400 years against gmtime */
    for (long day = 0; day < 146097; day += 7) {
        time_t t = (time_t)day * 86400;
        struct tm tm;
        gmtime_r(&t, &tm);
        char want[48];
        snprintf(want, sizeof want, "%04d%02d%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
        usage_day_string(day, s);
        assert_string_equal(s, want);
        assert_int_equal(usage_day_of_ms((unsigned long long)t * 1000 + 86399999ull), day);
        /* the month window the fail-open limiter uses, and its bounds */
        long mon = usage_month_of_day(day);
        assert_int_equal(mon, (long)(tm.tm_year + 1900) * 12 + tm.tm_mon);
        long first = usage_month_first_day(mon), next = usage_month_first_day(mon + 1);
        assert_int_equal(first, day - (tm.tm_mday - 1));
        assert_true(next > day && next - first >= 28 && next - first <= 31);
        assert_int_equal(usage_month_of_day(next), mon + 1);
        assert_int_equal(usage_month_of_day(first - 1), mon - 1);
    }
    const char *json = "{\"group_by\":\"model\",\"rows\":[{\"group\":\"a,\\\"b\",\"requests\":2,"
                       "\"prompt_tokens\":3,\"completion_tokens\":4,\"cached_tokens\":1,"
                       "\"total_tokens\":7,\"errors\":0,\"cost_microusd\":1500}]}";
    char *csv = usage_report_csv(json, strlen(json));
    assert_non_null(csv);
    assert_string_equal(csv, "model,requests,prompt_tokens,completion_tokens,cached_tokens,"
                             "total_tokens,errors,cost_usd\n\"a,\"\"b\",2,3,4,1,7,0,0.001500\n");
    free(csv);
    assert_null(usage_report_csv("{}", 2));
}

/* ---------------------------------------------------------------- Lua on Redis */

static pid_t server;
static unsigned port;
static redisContext *rc;

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

static int redis_setup(void **state)
{
    (void)state;
    char p[16];
    port = free_port();
    snprintf(p, sizeof p, "%u", port);
    server = fork();
    if (server == 0) {
        execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    uint64_t end = util_now_ms() + 10000;
    while (util_now_ms() < end) {
        rc = redisConnect("127.0.0.1", (int)port);
        if (rc && !rc->err) return 0;
        if (rc) redisFree(rc);
        rc = NULL;
        usleep(10000);
    }
    return -1;
}

static int redis_teardown(void **state)
{
    (void)state;
    if (rc) redisFree(rc);
    kill(server, SIGKILL);
    waitpid(server, NULL, 0);
    return 0;
}

static redisReply *cmdv(int argc, const char **argv)
{
    size_t lens[96];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    redisReply *r = redisCommandArgv(rc, argc, argv, lens);
    assert_non_null(r);
    return r;
}

static void flush(void)
{
    const char *a[] = {"FLUSHALL"};
    freeReplyObject(cmdv(1, a));
}

static long long now_ms(void)
{
    redisReply *r = redisCommand(rc, "TIME");
    long long ms = atoll(r->element[0]->str) * 1000 + atoll(r->element[1]->str) / 1000;
    freeReplyObject(r);
    return ms;
}

static double hget(const char *key, const char *field)
{
    redisReply *r = redisCommand(rc, "HGET %s %s", key, field);
    double v = r->type == REDIS_REPLY_STRING ? atof(r->str) : -1;
    freeReplyObject(r);
    return v;
}

/* The reserve script's answer. */
struct resv {
    long ok, retry, rl, rrem, rres, tl, trem, tres, day, mon, big, gt, gr, asked;
    char kind[16], window[16];
    long used[2][2]; /* per scope: day and month counters after (-1: no such window) */
};

/* Runs the reserve script for member across scopes "a" and "b" with the given
 * limits (rpm, tpm, tpd, tpmo, conc per scope; nscopes 1 or 2): nreq requests
 * (0 or 1) and n tokens, and a grant of gt tokens and gr requests. */
static struct resv reserve_g(const char *member, long n, long nreq, long gt, long gr, int nscopes,
                             const unsigned lim[2][5])
{
    char num[20][24];
    const char *a[40];
    int k = 0, u = 0;
    a[k++] = "EVAL";
    a[k++] = script_reserve.src;
    snprintf(num[u], 24, "%d", 2 * nscopes);
    a[k++] = num[u++];
    static const char *keys[] = {"q:{t}:a", "q:{t}:a:c", "q:{t}:b", "q:{t}:b:c"};
    for (int i = 0; i < 2 * nscopes; i++)
        a[k++] = keys[i];
    a[k++] = member;
    snprintf(num[u], 24, "%ld", n);
    a[k++] = num[u++];
    a[k++] = "60000";                          /* lease */
    const long head[4] = {nreq, gt, gr, 1000}; /* grant_ms */
    for (int i = 0; i < 4; i++) {
        snprintf(num[u], 24, "%ld", head[i]);
        a[k++] = num[u++];
    }
    for (int s = 0; s < nscopes; s++)
        for (int j = 0; j < 5; j++) {
            snprintf(num[u], 24, "%u", lim[s][j]);
            a[k++] = num[u++];
        }
    redisReply *r = cmdv(k, a);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    bool windows = false;
    for (int s = 0; s < nscopes; s++)
        windows |= lim[s][2] || lim[s][3];
    /* the day and month counters follow only when some scope has such a window */
    assert_int_equal(r->elements, windows ? 17 + 2 * (size_t)nscopes : 17);
    struct resv v = {.used = {{-2, -2}, {-2, -2}}};
    for (size_t i = 17; i < r->elements; i++)
        v.used[(i - 17) / 2][(i - 17) % 2] = (long)r->element[i]->integer;
    long *f[] = {&v.ok,  NULL,   &v.retry, &v.rl, &v.rrem, &v.rres, &v.tl, &v.trem, &v.tres,
                 &v.day, &v.mon, &v.big,   NULL,  NULL,    &v.gt,   &v.gr, &v.asked};
    for (int i = 0; i < 17; i++)
        if (f[i]) *f[i] = (long)r->element[i]->integer;
    snprintf(v.kind, sizeof v.kind, "%s", r->element[1]->str);
    snprintf(v.window, sizeof v.window, "%s", r->element[12]->str);
    freeReplyObject(r);
    return v;
}

static struct resv reserve(const char *member, long n, int nscopes, const unsigned lim[2][5])
{
    return reserve_g(member, n, 1, 0, 0, nscopes, lim);
}

/* Gives a grant's unspent tokens and requests back to scope "a" (rpm, tpm). */
static void grant_return(long tokens, long requests, const struct resv *rv, unsigned rpm,
                         unsigned tpm)
{
    char b[6][24];
    snprintf(b[0], 24, "%ld", tokens);
    snprintf(b[1], 24, "%ld", requests);
    snprintf(b[2], 24, "%ld", rv->day);
    snprintf(b[3], 24, "%ld", rv->mon);
    snprintf(b[4], 24, "%u", rpm);
    snprintf(b[5], 24, "%u", tpm);
    const char *a[] = {
        "EVAL", script_grant_return.src, "1", "q:{t}:a", b[0], b[1], b[2], b[3], b[4], b[5]};
    redisReply *r = cmdv((int)(sizeof a / sizeof a[0]), a);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    freeReplyObject(r);
}

/* Settles member (reserved on scope "a" with tpm) with actual tokens. */
static long long settle(const char *member, long reserved, long actual, const struct resv *rv,
                        unsigned tpm)
{
    char b[16][32];
    snprintf(b[0], 32, "%ld", reserved);
    snprintf(b[1], 32, "%ld", actual);
    snprintf(b[2], 32, "%ld", rv->day);
    snprintf(b[3], 32, "%ld", rv->mon);
    snprintf(b[4], 32, "%u", tpm);
    char seen[64];
    snprintf(seen, sizeof seen, "usage:{t}:seen:%s", member);
    const char *a[] = {"EVAL",      script_settle.src,
                       "5",         "q:{t}:a",
                       "q:{t}:a:c", "usage",
                       seen,        "usage:{t}:19700101",
                       member,      b[0],
                       b[1],        b[2],
                       b[3],        "1",
                       b[4],        "1000",
                       "86400",     "key_x|m|",
                       "1",         "2",
                       "0",         "0",
                       "0",         "request_id",
                       "r1"};
    redisReply *r = cmdv((int)(sizeof a / sizeof a[0]), a);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static void test_lua_all_or_nothing(void **state)
{
    (void)state;
    flush();
    const unsigned lim[2][5] = {{0, 100, 0, 0, 0}, {0, 50, 0, 0, 0}};
    struct resv v = reserve("m1", 40, 2, lim);
    assert_int_equal(v.ok, 1);
    assert_int_equal(v.tl, 50); /* headers: the scope with the least left */
    assert_int_equal(v.trem, 10);
    v = reserve("m2", 40, 2, lim); /* fits a (60 left), not b (10 left) */
    assert_int_equal(v.ok, 0);
    assert_string_equal(v.kind, "tokens");
    assert_string_equal(v.window, "tpm");
    /* nothing was taken from a */
    assert_true(hget("q:{t}:a", "t") >= 60 && hget("q:{t}:a", "t") < 61);
    /* 30 tokens missing at 50/min: 36 s */
    assert_true(v.retry > 35900 && v.retry <= 36000);
    v = reserve("m3", 60, 2, lim); /* more than b can ever hold */
    assert_int_equal(v.ok, 0);
    assert_int_equal(v.big, 1);
}

static void test_lua_refill_and_reset(void **state)
{
    (void)state;
    flush();
    long long now = now_ms();
    char ts[32];
    snprintf(ts, sizeof ts, "%lld", now - 30000);
    /* an empty bucket 30 s ago at 100/min has 50 tokens now */
    const char *h[] = {"HSET", "q:{t}:a", "t", "0", "tt", ts, "r", "0", "rt", ts};
    freeReplyObject(cmdv(10, h));
    const unsigned lim[2][5] = {{60, 100, 0, 0, 0}};
    struct resv v = reserve("m1", 10, 1, lim);
    assert_int_equal(v.ok, 1);
    assert_true(v.trem >= 39 && v.trem <= 41);
    assert_true(v.tres >= 35000 && v.tres <= 36100); /* 60 tokens to full at 100/min */
    assert_true(v.rrem >= 28 && v.rrem <= 30);       /* 30 requests refilled, 1 taken */
    assert_int_equal(v.rl, 60);
    v = reserve("m2", 80, 1, lim);
    assert_int_equal(v.ok, 0);
    assert_true(v.retry >= 23300 && v.retry <= 24100); /* ~40 missing at 100/min */
}

static void test_lua_calendar_windows(void **state)
{
    (void)state;
    flush();
    const unsigned lim[2][5] = {{0, 0, 100, 1000, 0}};
    struct resv v = reserve("m1", 60, 1, lim);
    assert_int_equal(v.ok, 1);
    assert_int_equal(v.tl, 100); /* day window reported when there is no tpm */
    assert_int_equal(v.trem, 40);
    long long now = now_ms();
    assert_int_equal(v.day, now / 86400000);
    assert_int_equal(v.used[0][0], 60); /* the counters after the reservation */
    assert_int_equal(v.used[0][1], 60);
    v = reserve("m2", 60, 1, lim);
    assert_int_equal(v.ok, 0);
    assert_string_equal(v.window, "tpd");
    assert_int_equal(v.used[0][0], 60); /* refused: as they were */
    long long to_midnight = (now / 86400000 + 1) * 86400000 - now;
    assert_true(v.retry <= to_midnight && v.retry > to_midnight - 2000);
    /* two scopes: a scope without calendar windows reports -1 for both */
    const unsigned two[2][5] = {{0, 0, 100, 0, 0}, {0, 1000, 0, 0, 0}};
    flush();
    v = reserve("m4", 30, 2, two);
    assert_int_equal(v.ok, 1);
    assert_int_equal(v.used[0][0], 30);
    assert_int_equal(v.used[0][1], -1);
    assert_int_equal(v.used[1][0], -1);
    assert_int_equal(v.used[1][1], -1);
    /* month: the window ends on the first day of next month, UTC */
    const unsigned mon[2][5] = {{0, 0, 0, 50, 0}};
    flush();
    v = reserve("m3", 60, 1, mon);
    assert_int_equal(v.ok, 0);
    assert_int_equal(v.big, 1);
    time_t t = (time_t)(now / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    struct tm next = {
        .tm_year = tm.tm_year + (tm.tm_mon == 11), .tm_mon = (tm.tm_mon + 1) % 12, .tm_mday = 1};
    long long month_end = (long long)timegm(&next) * 1000;
    assert_true(v.retry <= month_end - now && v.retry > month_end - now - 2000);
    assert_int_equal(v.mon, (tm.tm_year + 1900) * 12 + tm.tm_mon);
}

static void test_lua_concurrency_and_settle(void **state)
{
    (void)state;
    flush();
    const unsigned lim[2][5] = {{0, 100, 0, 0, 1}};
    struct resv v1 = reserve("m1", 50, 1, lim);
    assert_int_equal(v1.ok, 1);
    struct resv v2 = reserve("m2", 10, 1, lim);
    assert_int_equal(v2.ok, 0);
    assert_string_equal(v2.window, "concurrency");
    assert_string_equal(v2.kind, "requests");
    /* settle: 20 of the 50 used, 30 refunded, the slot freed */
    assert_int_equal(settle("m1", 50, 20, &v1, 100), 1);
    double t = hget("q:{t}:a", "t");
    assert_true(t >= 80 && t < 81);
    /* the same settle again (a spool replay) changes nothing */
    assert_int_equal(settle("m1", 50, 20, &v1, 100), 0);
    assert_true(hget("q:{t}:a", "t") < 81);
    redisReply *r = redisCommand(rc, "XLEN usage");
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    assert_int_equal(hget("usage:{t}:19700101", "key_x|m|requests"), 1);
    assert_int_equal(hget("usage:{t}:19700101", "key_x|m|completion_tokens"), 2);
    v2 = reserve("m2", 10, 1, lim);
    assert_int_equal(v2.ok, 1);
    /* settle without a reservation (fail-open) charges the whole usage */
    struct resv none = {0};
    assert_int_equal(settle("m9", 0, 30, &none, 100), 1);
    assert_true(hget("q:{t}:a", "t") < 41);
}

/* Several settles in one call: the same records settle as one by one, a record
 * already settled (in an earlier call or earlier in the batch) counts once, and
 * the bucket TTL is set although no PEXPIRE runs per request. */
static void test_lua_settle_batch(void **state)
{
    (void)state;
    flush();
    const unsigned lim[2][5] = {{0, 100, 0, 0, 2}};
    struct resv v1 = reserve("b1", 30, 1, lim), v2 = reserve("b2", 30, 1, lim);
    assert_int_equal(v1.ok, 1);
    assert_int_equal(v2.ok, 1);
    assert_int_equal(v1.mon, -1); /* no monthly limit: the month is not computed */
    redisReply *r = redisCommand(rc, "PTTL q:{t}:a");
    assert_true(r->integer > 34LL * 86400000 && r->integer <= 35LL * 86400000);
    freeReplyObject(r);
    char b[2][5][32], seen[2][64];
    const char *member[2] = {"b1", "b2"};
    const long actual[2] = {10, 20};
    for (int i = 0; i < 2; i++) {
        snprintf(b[i][0], 32, "%d", 30);
        snprintf(b[i][1], 32, "%ld", actual[i]);
        snprintf(b[i][2], 32, "%ld", v1.day);
        snprintf(b[i][3], 32, "%ld", v1.mon);
        snprintf(b[i][4], 32, "%u", 100u);
        snprintf(seen[i], sizeof seen[i], "usage:{t}:seen:%s", member[i]);
    }
    /* records b1, b2, b1 again: 5 keys and 19 args each */
    const int order[3] = {0, 1, 0};
    const char *a[3 + 7 + 3 * 5 + 3 * 19];
    int k = 0;
    a[k++] = "EVAL";
    a[k++] = script_settle_batch.src;
    a[k++] = "15";
    for (int j = 0; j < 3; j++) {
        const int i = order[j];
        const char *keys[] = {"q:{t}:a", "q:{t}:a:c", "usage", seen[i], "usage:{t}:19700101"};
        for (int x = 0; x < 5; x++)
            a[k++] = keys[x];
    }
    a[k++] = "3";
    for (int j = 0; j < 3; j++) {
        a[k++] = "5";
        a[k++] = "19";
    }
    for (int j = 0; j < 3; j++) {
        const int i = order[j];
        const char *args[] = {member[i],    b[i][0], b[i][1],    b[i][2],  b[i][3],
                              "1",          b[i][4], "1000",     "86400",  "key_x|m|",
                              "5",          b[i][1], "0",        "0",      "0",
                              "request_id", "r",     "usage_id", member[i]};
        for (int x = 0; x < 19; x++)
            a[k++] = args[x];
    }
    r = cmdv(k, a);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r->integer, 2);
    freeReplyObject(r);
    /* 100 - 60 reserved + 20 + 10 refunded (plus a little refill) */
    double t = hget("q:{t}:a", "t");
    assert_true(t >= 70 && t < 71);
    r = redisCommand(rc, "ZCARD q:{t}:a:c");
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
    r = redisCommand(rc, "XLEN usage");
    assert_int_equal(r->integer, 2);
    freeReplyObject(r);
    assert_int_equal(hget("usage:{t}:19700101", "key_x|m|requests"), 2);
    assert_int_equal(hget("usage:{t}:19700101", "key_x|m|completion_tokens"), 30);
    assert_true(hget("usage:{t}:19700101", "key_x|m|cached_tokens") < 0); /* 0: not written */
    r = redisCommand(rc, "TTL usage:{t}:19700101");
    assert_int_equal(r->integer, 86400);
    freeReplyObject(r);
}

/* A grant rides on an admitted request, all or nothing across scopes and
 * windows, only while every window keeps twice the grant; asking for one alone
 * takes no request; giving it back restores the buckets and the day counter. */
static void test_lua_grants(void **state)
{
    (void)state;
    flush();
    const unsigned lim[2][5] = {{60, 1000, 5000, 0, 0}, {0, 600, 0, 0, 0}};
    struct resv v = reserve_g("g1", 10, 1, 100, 8, 2, lim);
    assert_int_equal(v.ok, 1);
    assert_int_equal(v.gt, 100);
    assert_int_equal(v.gr, 8);
    assert_int_equal(v.asked, 100);
    assert_true(hget("q:{t}:a", "t") >= 890 && hget("q:{t}:a", "t") < 891);
    assert_true(hget("q:{t}:b", "t") >= 490 && hget("q:{t}:b", "t") < 491);
    assert_int_equal(hget("q:{t}:a", "d"), 110);
    assert_true(hget("q:{t}:a", "r") >= 51 && hget("q:{t}:a", "r") < 52);
    assert_int_equal(v.trem, 490); /* headers: Redis's side, after the grant */
    /* b keeps 480 after the request: a grant of 241 would leave it less than twice that */
    v = reserve_g("g2", 10, 1, 241, 8, 2, lim);
    assert_int_equal(v.ok, 1);
    assert_int_equal(v.gt, 0);
    assert_int_equal(v.gr, 0);
    assert_int_equal(v.asked, 241);
    assert_true(hget("q:{t}:b", "t") >= 480 && hget("q:{t}:b", "t") < 481);
    /* a grant on its own: no request taken, nothing else debited */
    double r0 = hget("q:{t}:a", "r");
    v = reserve_g("", 0, 0, 50, 4, 2, lim);
    assert_int_equal(v.ok, 1);
    assert_int_equal(v.gt, 50);
    assert_true(hget("q:{t}:a", "r") >= r0 - 4 && hget("q:{t}:a", "r") < r0 - 3);
    assert_int_equal(hget("q:{t}:a", "d"), 170);
    /* a refused request takes no grant either; with grants out (the last one
     * given back within 2 x 1000 ms), the retry is then, not at midnight */
    const unsigned tight[2][5] = {{0, 1000, 170, 0, 0}};
    v = reserve_g("g3", 10, 1, 20, 0, 1, tight);
    assert_int_equal(v.ok, 0);
    assert_int_equal(v.gt, 0);
    assert_string_equal(v.window, "tpd");
    assert_true(v.retry > 1500 && v.retry <= 2000);
    assert_int_equal(hget("q:{t}:a", "d"), 170);
    /* giving 150 tokens and 12 requests back */
    grant_return(150, 12, &v, 60, 1000);
    assert_int_equal(hget("q:{t}:a", "d"), 20);
    assert_true(hget("q:{t}:a", "t") >= 980 && hget("q:{t}:a", "t") <= 1000);
    assert_true(hget("q:{t}:a", "r") >= 58 && hget("q:{t}:a", "r") <= 60);
    /* never above the limit, never below zero */
    grant_return(5000, 500, &v, 60, 1000);
    assert_int_equal(hget("q:{t}:a", "d"), 0);
    assert_int_equal(hget("q:{t}:a", "t"), 1000);
    assert_int_equal(hget("q:{t}:a", "r"), 60);
    /* a concurrency limit: never a grant */
    const unsigned conc[2][5] = {{0, 1000, 0, 0, 5}};
    flush();
    v = reserve_g("g4", 10, 1, 50, 0, 1, conc);
    assert_int_equal(v.ok, 1);
    assert_int_equal(v.gt, 0);
}

int main(void)
{
    scripts_init();
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_extract),
        cmocka_unit_test(test_glob),
        cmocka_unit_test(test_record_parse),
        cmocka_unit_test(test_generate),
        cmocka_unit_test(test_duration_and_retry_after),
        cmocka_unit_test(test_estimate),
        cmocka_unit_test(test_days_and_csv),
    };
    int rc1 = cmocka_run_group_tests_name("pure", pure, NULL, NULL);
    if (system("command -v redis-server >/dev/null 2>&1") != 0) {
        printf("SKIP: redis-server not installed (Lua tests)\n");
        return rc1;
    }
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest lua[] = {
        cmocka_unit_test(test_lua_all_or_nothing),
        cmocka_unit_test(test_lua_refill_and_reset),
        cmocka_unit_test(test_lua_calendar_windows),
        cmocka_unit_test(test_lua_concurrency_and_settle),
        cmocka_unit_test(test_lua_settle_batch),
        cmocka_unit_test(test_lua_grants),
    };
    int rc2 = cmocka_run_group_tests_name("lua", lua, redis_setup, redis_teardown);
    return rc1 || rc2;
}
