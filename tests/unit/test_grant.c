/* Unit tests for gateway/grant.c, the per-worker bookkeeping of admission
 * grants, on a fake clock: which classes may hold one, the demand that sizes a
 * grant and its caps, admitting from it, the low-water mark, the headers, and
 * the sweep that gives expired leftovers back and forgets idle classes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "gateway/grant.h"

#define PERIOD 500

static struct quota_scope scope(const char *bucket, unsigned rpm, unsigned tpm, unsigned tpd,
                                unsigned conc)
{
    struct quota_scope s = {.l = {.rpm = rpm, .tpm = tpm, .tpd = tpd, .conc = conc}};
    snprintf(s.bucket, sizeof s.bucket, "%s", bucket);
    return s;
}

static void test_classes(void **state)
{
    (void)state;
    struct grant_table t = {0};
    struct quota_scope sc[2] = {scope("k", 600, 80000, 0, 0), scope("t", 0, 0, 1000000, 0)};
    assert_true(grant_class_ok(sc, 2));
    struct quota_scope with_conc = scope("k", 0, 1000, 0, 4);
    assert_false(grant_class_ok(&with_conc, 1));
    assert_false(grant_class_ok(sc, 0));

    assert_null(grant_get(&t, sc, 2, false));
    struct grant *g = grant_get(&t, sc, 2, true);
    assert_non_null(g);
    assert_ptr_equal(grant_get(&t, sc, 2, false), g);
    assert_true(g->counts_requests);
    /* one scope less, or a changed limit: another class */
    assert_null(grant_get(&t, sc, 1, false));
    sc[1].l.tpd = 999999;
    assert_null(grant_get(&t, sc, 2, false));
    assert_int_equal(t.n, 1);
    grant_table_clear(&t);
    assert_int_equal(t.n, 0);
}

static void test_want_follows_demand_within_caps(void **state)
{
    (void)state;
    struct grant_table t = {0};
    struct quota_scope sc = scope("k", 800, 80000, 0, 0);
    struct grant *g = grant_get(&t, &sc, 1, true);
    long wt, wr;
    uint64_t now = 10000;
    grant_demand(g, 100, now, PERIOD);
    grant_want(g, 100, &wt, &wr);
    assert_int_equal(wt, 0); /* one request a period: no grant */
    for (int i = 0; i < 29; i++)
        grant_demand(g, 100, now + 10, PERIOD);
    grant_want(g, 100, &wt, &wr);
    assert_int_equal(wt, 3000); /* a period's worth: 30 requests of 100 */
    assert_int_equal(wr, 30);
    /* the next period remembers the last one */
    grant_demand(g, 100, now + PERIOD, PERIOD);
    grant_want(g, 100, &wt, &wr);
    assert_int_equal(wt, 3000);
    /* after a silent period, nothing */
    grant_demand(g, 100, now + 3 * PERIOD, PERIOD);
    grant_want(g, 100, &wt, &wr);
    assert_int_equal(wt, 0);
    /* caps: 1/8 of the smallest limit (tpm 80000 -> 10000; rpm 800 -> 100) */
    for (int i = 0; i < 500; i++)
        grant_demand(g, 100, now + 3 * PERIOD + 1, PERIOD);
    grant_want(g, 100, &wt, &wr);
    assert_int_equal(wt, 10000);
    assert_int_equal(wr, 100);
    /* a request too big for a capped grant twice over gets none */
    grant_want(g, 6000, &wt, &wr);
    assert_int_equal(wt, 0);
    /* small demand in tokens still asks for two requests' worth */
    struct quota_scope tokens_only = scope("k2", 0, 0, 1000000, 0);
    struct grant *h = grant_get(&t, &tokens_only, 1, true);
    assert_false(h->counts_requests);
    grant_demand(h, 10, now, PERIOD);
    grant_demand(h, 10, now, PERIOD);
    grant_want(h, 50, &wt, &wr);
    assert_int_equal(wt, 100);
    assert_int_equal(wr, 0); /* requests are not limited: not granted */
    grant_table_clear(&t);
}

static void test_take_low_and_headers(void **state)
{
    (void)state;
    struct grant_table t = {0};
    struct quota_scope sc = scope("k", 600, 60000, 0, 0);
    struct grant *g = grant_get(&t, &sc, 1, true);
    uint64_t now = 5000;
    assert_false(grant_take(g, 10, now)); /* empty */
    const struct grant_headers h = {600, 500, 10000, 60000, 40000, 20000};
    g->asked_t = 1000;
    g->asked_r = 10;
    grant_add(g, 1000, 10, 20000, -1, &h, now, PERIOD);
    assert_int_equal(g->day, 20000);
    assert_true(grant_take(g, 300, now + 1));
    assert_false(grant_low(g));
    struct grant_headers out;
    grant_headers_now(g, &out);
    assert_int_equal(out.tok_remaining, 40000 + 700);
    assert_int_equal(out.req_remaining, 500 + 9);
    assert_int_equal(out.tok_limit, 60000);
    assert_true(grant_take(g, 300, now + 2));
    assert_true(grant_low(g)); /* 400 of 1000 left */
    assert_false(grant_take(g, 401, now + 3));
    assert_int_equal(g->tokens, 400);              /* a refusal takes nothing */
    assert_false(grant_take(g, 10, now + PERIOD)); /* expired */
    /* requests run out before tokens */
    grant_add(g, 0, 0, 20000, -1, &h, now + PERIOD, PERIOD);
    g->requests = 1;
    assert_true(grant_take(g, 1, now + PERIOD + 1));
    assert_false(grant_take(g, 1, now + PERIOD + 2));
    assert_true(grant_low(g));
    assert_false(grant_asking(g, now));
    g->asking_until_ms = now + 100;
    assert_true(grant_asking(g, now + 99));
    assert_false(grant_asking(g, now + 100));
    grant_table_clear(&t);
}

/* A grant debited in a day or month that has ended is not current for scopes
 * with that window's limit; without calendar limits the windows do not matter. */
static void test_current_window(void **state)
{
    (void)state;
    struct grant_table t = {0};
    const struct grant_headers h = {600, 500, 10000, 60000, 40000, 20000};
    struct quota_scope no_calendar = scope("k", 600, 60000, 0, 0);
    struct grant *g = grant_get(&t, &no_calendar, 1, true);
    assert_true(grant_current(g, 20001, 657)); /* holds nothing */
    grant_add(g, 1000, 10, 20000, -1, &h, 0, PERIOD);
    assert_true(grant_current(g, 20001, 658));
    struct quota_scope daily = scope("k2", 600, 60000, 100000, 0);
    g = grant_get(&t, &daily, 1, true);
    grant_add(g, 1000, 10, 20000, -1, &h, 0, PERIOD);
    assert_true(grant_current(g, 20000, -1));
    assert_false(grant_current(g, 20001, -1)); /* past midnight */
    struct quota_scope monthly = scope("k3", 600, 60000, 0, 0);
    monthly.l.tpmo = 5000000;
    g = grant_get(&t, &monthly, 1, true);
    grant_add(g, 1000, 10, 20000, 657, &h, 0, PERIOD);
    assert_true(grant_current(g, 20001, 657)); /* a new day, the same month */
    assert_false(grant_current(g, 20001, 658));
    g->tokens = g->requests = 0;
    assert_true(grant_current(g, 20001, 658)); /* spent: nothing to give back */
    grant_table_clear(&t);
}

struct returned {
    int calls;
    long tokens, requests, day;
};

static void give_back(void *ud, const struct grant *g)
{
    struct returned *r = ud;
    r->calls++;
    r->tokens += g->tokens;
    r->requests += g->requests;
    r->day = g->day;
}

static void test_sweep(void **state)
{
    (void)state;
    struct grant_table t = {0};
    struct quota_scope a = scope("a", 600, 60000, 0, 0), b = scope("b", 0, 60000, 0, 0);
    const struct grant_headers h = {-1, -1, 0, 60000, 100, 0};
    uint64_t now = 100000;
    struct grant *ga = grant_get(&t, &a, 1, true), *gb = grant_get(&t, &b, 1, true);
    grant_demand(ga, 10, now, PERIOD);
    grant_demand(gb, 10, now, PERIOD);
    grant_add(ga, 500, 7, 42, -1, &h, now, PERIOD);
    grant_add(gb, 300, 0, 42, -1, &h, now + 200, PERIOD);
    struct returned r = {0};
    /* before expiry: nothing given back, both held */
    assert_int_equal(grant_sweep(&t, now + 100, PERIOD, false, give_back, &r), 2);
    assert_int_equal(r.calls, 0);
    /* a expired, b not yet */
    assert_int_equal(grant_sweep(&t, now + PERIOD, PERIOD, false, give_back, &r), 1);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.tokens, 500);
    assert_int_equal(r.requests, 7);
    assert_int_equal(r.day, 42);
    assert_int_equal(ga->tokens, 0);
    assert_false(grant_take(ga, 1, now + PERIOD));
    /* at drain, everything goes back whatever its expiry */
    assert_int_equal(grant_sweep(&t, now + PERIOD + 1, PERIOD, true, give_back, &r), 0);
    assert_int_equal(r.calls, 2);
    assert_int_equal(r.tokens, 800);
    assert_int_equal(t.n, 2);
    /* classes with no demand for four periods are forgotten */
    grant_sweep(&t, now + 5 * PERIOD, PERIOD, false, give_back, &r);
    assert_int_equal(t.n, 0);
    assert_int_equal(r.calls, 2);
}

static void test_table_bound(void **state)
{
    (void)state;
    struct grant_table t = {0};
    char name[32];
    for (int i = 0; i < GRANT_MAX; i++) {
        snprintf(name, sizeof name, "k%d", i);
        struct quota_scope s = scope(name, 0, 1000, 0, 0);
        assert_non_null(grant_get(&t, &s, 1, true));
    }
    struct quota_scope one_more = scope("extra", 0, 1000, 0, 0);
    assert_null(grant_get(&t, &one_more, 1, true));
    assert_int_equal(t.n, GRANT_MAX);
    grant_table_clear(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classes),
        cmocka_unit_test(test_want_follows_demand_within_caps),
        cmocka_unit_test(test_take_low_and_headers),
        cmocka_unit_test(test_current_window),
        cmocka_unit_test(test_sweep),
        cmocka_unit_test(test_table_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
