/* Unit tests for routing/breaker.c and routing/budget.c: the breaker's state
 * machine on a fake clock (consecutive failures, error ratio over a window,
 * open -> half-open -> closed / reopened, probe slots) and the retry budget's
 * bound (retries <= ratio x requests + reserve). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "routing/breaker.h"
#include "routing/budget.h"

static const struct breaker_conf conf = {.failures = 3,
                                         .error_ratio_pct = 50,
                                         .window_ms = 1000,
                                         .min_requests = 10,
                                         .open_ms = 500,
                                         .half_open_probes = 2};

static bool allow(struct breaker *b, uint64_t now, bool *probe)
{
    return breaker_allow(b, &conf, now, probe);
}

static void test_consecutive_failures(void **state)
{
    (void)state;
    struct breaker b;
    memset(&b, 0, sizeof b);
    bool probe;
    uint64_t t = 1000;
    breaker_record(&b, &conf, false, false, t);
    breaker_record(&b, &conf, false, false, t);
    breaker_record(&b, &conf, true, false, t); /* a success resets the run */
    breaker_record(&b, &conf, false, false, t);
    breaker_record(&b, &conf, false, false, t);
    assert_int_equal(breaker_state_of(&b), BREAKER_CLOSED);
    breaker_record(&b, &conf, false, false, t);
    assert_int_equal(breaker_state_of(&b), BREAKER_OPEN);
    assert_int_equal(b.opens, 1);
    assert_false(allow(&b, t + 499, &probe)); /* fails fast while open */
    /* half-open: exactly half_open_probes requests go through */
    assert_true(allow(&b, t + 500, &probe));
    assert_true(probe);
    assert_int_equal(breaker_state_of(&b), BREAKER_HALF_OPEN);
    assert_true(allow(&b, t + 501, &probe));
    assert_false(allow(&b, t + 502, &probe));
    breaker_record(&b, &conf, true, true, t + 510);
    assert_int_equal(breaker_state_of(&b), BREAKER_HALF_OPEN); /* needs both probes */
    breaker_record(&b, &conf, true, true, t + 520);
    assert_int_equal(breaker_state_of(&b), BREAKER_CLOSED);
    assert_true(allow(&b, t + 521, &probe));
    assert_false(probe);
}

static void test_probe_failure_reopens(void **state)
{
    (void)state;
    struct breaker b;
    memset(&b, 0, sizeof b);
    bool probe;
    for (int i = 0; i < 3; i++)
        breaker_record(&b, &conf, false, false, 0);
    assert_true(allow(&b, 600, &probe) && probe);
    breaker_record(&b, &conf, false, true, 610);
    assert_int_equal(breaker_state_of(&b), BREAKER_OPEN);
    assert_false(allow(&b, 1000, &probe)); /* open_ms counts from the reopening */
    assert_true(allow(&b, 1110, &probe) && probe);
    /* a probe whose client went away gives its slot back without a verdict */
    breaker_release_probe(&b);
    assert_true(allow(&b, 1111, &probe) && probe);
    assert_true(allow(&b, 1112, &probe) && probe);
    assert_false(allow(&b, 1113, &probe));
    assert_int_equal(b.opens, 1); /* reopening from half-open is not a new opening */
}

static void test_error_ratio_window(void **state)
{
    (void)state;
    struct breaker b;
    memset(&b, 0, sizeof b);
    struct breaker_conf ratio = conf;
    ratio.failures = 0; /* the ratio alone */
    /* 5 of 9 failing: below min_requests, stays closed */
    uint64_t t = 10;
    for (int i = 0; i < 9; i++)
        breaker_record(&b, &ratio, i % 2 == 0 && i < 8, false, t);
    assert_int_equal(breaker_state_of(&b), BREAKER_CLOSED);
    /* a new window forgets the old counts */
    for (int i = 0; i < 10; i++)
        breaker_record(&b, &ratio, i % 3 != 0, false, t + 2000); /* 4 of 10 fail: 40 % */
    assert_int_equal(breaker_state_of(&b), BREAKER_CLOSED);
    breaker_record(&b, &ratio, false, false, t + 2001); /* 5 of 11 */
    assert_int_equal(breaker_state_of(&b), BREAKER_CLOSED);
    breaker_record(&b, &ratio, false, false, t + 2002); /* 6 of 12 = 50 %: opens */
    assert_int_equal(breaker_state_of(&b), BREAKER_OPEN);
}

static void test_disabled(void **state)
{
    (void)state;
    struct breaker b;
    memset(&b, 0, sizeof b);
    struct breaker_conf off = {0};
    bool probe;
    for (int i = 0; i < 100; i++)
        breaker_record(&b, &off, false, false, 0);
    assert_true(breaker_allow(&b, &off, 0, &probe));
    assert_int_equal(breaker_state_of(&b), BREAKER_CLOSED);
}

static void test_budget(void **state)
{
    (void)state;
    struct retry_budget rb;
    budget_init(&rb);
    /* An outage: every request fails and wants a retry. At 10 %, 1000 requests
     * may cause at most 100 retries plus the reserve of 10. */
    int retries = 0;
    for (int i = 0; i < 1000; i++) {
        budget_deposit(&rb, 100);
        if (budget_withdraw(&rb)) retries++;
    }
    assert_true(retries <= 100 + BUDGET_RESERVE);
    assert_true(retries >= 100);
    assert_int_equal(rb.exhausted, 1000 - retries);
    /* savings are capped: a long calm spell does not allow a later storm */
    for (int i = 0; i < 100000; i++)
        budget_deposit(&rb, 1000);
    assert_int_equal(budget_available(&rb), BUDGET_RESERVE);
    /* ratio 0: only the reserve */
    budget_init(&rb);
    retries = 0;
    for (int i = 0; i < 1000; i++) {
        budget_deposit(&rb, 0);
        retries += budget_withdraw(&rb);
    }
    assert_int_equal(retries, BUDGET_RESERVE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_consecutive_failures),
        cmocka_unit_test(test_probe_failure_reopens),
        cmocka_unit_test(test_error_ratio_window),
        cmocka_unit_test(test_disabled),
        cmocka_unit_test(test_budget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
