/* Unit tests for routing/policy.c and routing/router.c: every kind of policy
 * error with its file:line:col, matching (exact, glob, aliases, tenant, header,
 * precedence), the models section as implicit routes, and the weighted choice's
 * distribution and stickiness. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/config.h"
#include "routing/policy.h"
#include "routing/router.h"
#include "routing/targets.h"

#define CONF                                                                                       \
    "{\"providers\": {\"a\": {\"base_url\": \"http://a/v1\"}, \"b\": {\"base_url\": "              \
    "\"http://b/v1\"}, \"c\": {\"base_url\": \"http://c/v1\"}},"                                   \
    " \"models\": {\"plain\": {\"provider\": \"a\", \"model\": \"up-plain\"}}}"

static struct config *cfg;

static int setup(void **state)
{
    (void)state;
    char err[512];
    assert_int_equal(config_parse(CONF, strlen(CONF), "t.conf", &cfg, err, sizeof err), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    config_unref(cfg);
    return 0;
}

static struct policy *build_ok(const char *text)
{
    struct policy_source src = {"p.json", text, strlen(text)};
    struct policy *p = NULL;
    char err[512];
    int rc = policy_build(cfg, "dir", &src, 1, &p, err, sizeof err);
    if (rc != 0) print_error("unexpected: %s\n", err);
    assert_int_equal(rc, 0);
    return p;
}

static void expect_error(const char *text, const char *want)
{
    struct policy_source src = {"p.json", text, strlen(text)};
    struct policy *p = (struct policy *)1;
    char err[512] = "";
    assert_int_equal(policy_build(cfg, "dir", &src, 1, &p, err, sizeof err), -1);
    assert_null(p);
    assert_string_equal(err, want);
}

static void test_errors(void **state)
{
    (void)state;
    expect_error("[]", "p.json:1:1: a policy file must be an object {\"routes\": [...]}, got an "
                       "array");
    expect_error("{\"routes\": [], \"x\": 1}",
                 "p.json:1:16: unknown key 'x' (a policy file has only 'routes')");
    expect_error("{\"routes\": [{}]}", "p.json:1:13: 'routes[0]' is missing 'targets'");
    expect_error("{\"routes\": [{\"targets\": [], \"bogus\": 1}]}",
                 "p.json:1:25: 'routes[0].targets' must name at least one target");
    expect_error("{\"routes\": [{\"targets\": [{\"provider\": \"a\"}], \"bogus\": 1}]}",
                 "p.json:1:46: unknown key 'bogus' in 'routes[0]'");
    expect_error("{\"routes\": [{\"targets\": [{\"provider\": \"zz\"}]}]}",
                 "p.json:1:39: 'routes[0].targets[0].provider': unknown provider 'zz'");
    expect_error("{\"routes\": [{\"targets\": [{\"provider\": \"a\", \"weight\": -1}]}]}",
                 "p.json:1:54: 'routes[0].targets[0].weight' must be an integer between 0 and "
                 "1000000");
    expect_error("{\"routes\": [{\"targets\": [{\"provider\": \"a\", \"weight\": 0}]}]}",
                 "p.json:1:25: 'routes[0].targets' must have a target with a weight above 0");
    expect_error("{\"routes\": [{\"targets\": [{\"provider\": \"a\"}],\n \"retry\": {\"attempts\": "
                 "\"2\"}}]}",
                 "p.json:2:24: 'routes[0].retry.attempts' must be an integer, got a string");
    expect_error("{\"routes\": [{\"targets\": [{\"provider\": \"a\"}], \"retry\": 3}]}",
                 "p.json:1:55: 'routes[0].retry' must be an object, got a number");
    expect_error(
        "{\"routes\": [{\"targets\": [{\"provider\": \"a\"}], \"retry\": {\"budget_ratio\": "
        "2}}]}",
        "p.json:1:72: 'routes[0].retry.budget_ratio' must be between 0 and 1");
    expect_error("{\"routes\": [{\"targets\": [{\"provider\": \"a\"}], \"fallback_on\": "
                 "[\"timeout\", \"teapot\"]}]}",
                 "p.json:1:73: 'routes[0].fallback_on' entries must be one of \"rate_limited\", "
                 "\"overloaded\", \"server_error\", \"timeout\", \"context_length\", "
                 "\"connect_error\"");
    expect_error("{\"routes\": [{\"targets\": [{\"provider\": \"a\"}], \"fallback\": "
                 "[{\"provider\": \"b\", \"weight\": 3}]}]}",
                 "p.json:1:77: 'routes[0].fallback[0].weight': fallback targets are tried in "
                 "order, not weighted");
    expect_error("{\"routes\": [{\"targets\": [{\"provider\": \"a\"}], \"match\": {\"model\": "
                 "\"a b\"}}]}",
                 "p.json:1:65: 'routes[0].match.model' must be 1 to 256 bytes without spaces");
    expect_error("{\"routes\": [{\"targets\": [{\"provider\": \"a\"}], \"match\": {\"header\": "
                 "{\"value\": \"v\"}}}]}",
                 "p.json:1:66: 'routes[0].match.header' is missing 'name'");
    expect_error("{\"routes\": [{\"targets\": [{\"provider\": \"a\"}], \"sticky\": {\"by\": "
                 "\"header\"}}]}",
                 "p.json:1:13: 'routes[0].sticky' by header needs 'sticky.header'");
    expect_error("{\"routes\": [{\"targets\": [{\"provider\": \"a\"}], \"long_input\": "
                 "{\"strategy\": \"shred\"}}]}",
                 "p.json:1:73: 'routes[0].long_input.strategy' must be one of \"reject\", "
                 "\"truncate\", \"chunk\", \"fallback\"");
    /* Duplicate keys and syntax errors come from common/jsonc with their position. */
    expect_error("{\"routes\": [], \"routes\": []}",
                 "p.json:1:16: duplicate key 'routes' (first at 1:2)");
}

static void test_defaults_and_values(void **state)
{
    (void)state;
    struct policy *p = build_ok("// comment\n{\"routes\": [{\"name\": \"r\", \"targets\": "
                                "[{\"provider\": \"a\", \"model\": \"m\"}],"
                                " \"retry\": {\"budget_ratio\": 0.1}, \"breaker\": "
                                "{\"error_ratio\": 0.25}, \"cache\": {\"ttl_s\": 60}}]}");
    assert_int_equal(p->n_routes, 2); /* + the implicit "plain" */
    const struct policy_route *r = &p->routes[0];
    assert_string_equal(r->name, "r");
    assert_string_equal(r->origin, "p.json:2:13");
    assert_int_equal(r->retry_attempts, 0);
    assert_int_equal(r->backoff_ms, 100);
    assert_int_equal(r->retry_after_max_ms, 2000);
    assert_int_equal(r->budget_permille, 100);
    assert_int_equal(r->breaker.failures, 5);
    assert_int_equal(r->breaker.error_ratio_pct, 25);
    assert_int_equal(r->cache_ttl_s, 60);
    assert_int_equal(r->fallback_on & PF_BIT(PF_CONTEXT_LENGTH), 0);
    assert_true(r->fallback_on & PF_BIT(PF_RATE_LIMITED));
    assert_non_null(r->targets[0].state);
    /* the state is shared by provider+model, across snapshots */
    assert_ptr_equal(r->targets[0].state, targets_get("a", "m"));
    assert_true(p->routes[1].implicit);
    assert_int_equal(p->routes[1].breaker.failures, 0);
    policy_unref(p);
}

static const char *hdr_value;
static const char *header(void *ud, const char *name)
{
    (void)ud;
    return strcmp(name, "x-route") == 0 ? hdr_value : NULL;
}

static const char *route_of(struct policy *p, const char *model, const char *tenant, const char *hv)
{
    hdr_value = hv;
    struct route_query q = {.model = model, .tenant = tenant, .header = header};
    const struct policy_route *r = policy_match(p, &q);
    return r ? r->name : "(none)";
}

static void test_matching(void **state)
{
    (void)state;
    struct policy *p = build_ok(
        "{\"routes\": ["
        "{\"name\": \"beta\", \"match\": {\"model\": \"gpt-*\", \"header\": {\"name\": "
        "\"x-route\", \"value\": \"beta\"}}, \"targets\": [{\"provider\": \"b\"}]},"
        "{\"name\": \"acme\", \"match\": {\"model\": \"gpt-4o\", \"tenant\": \"acme\"}, "
        "\"targets\": [{\"provider\": \"c\"}]},"
        "{\"name\": \"gpt4o\", \"match\": {\"model\": [\"gpt-4o\", \"gpt4o\", \"4o\"]}, "
        "\"targets\": [{\"provider\": \"a\"}]},"
        "{\"name\": \"gpt-glob\", \"match\": {\"model\": \"gpt-?o*\"}, \"targets\": "
        "[{\"provider\": \"a\"}]},"
        "{\"name\": \"plain-override\", \"match\": {\"model\": \"plain\", \"tenant\": \"t\"}, "
        "\"targets\": [{\"provider\": \"c\"}]},"
        "{\"name\": \"catch-all\", \"match\": {\"header\": {\"name\": \"x-route\"}}, "
        "\"targets\": [{\"provider\": \"c\"}]}"
        "]}");
    assert_string_equal(route_of(p, "gpt-4o", NULL, NULL), "gpt4o");
    assert_string_equal(route_of(p, "gpt4o", NULL, NULL), "gpt4o"); /* alias */
    assert_string_equal(route_of(p, "4o", "acme", NULL), "gpt4o");  /* tenant rule is for gpt-4o */
    assert_string_equal(route_of(p, "gpt-4o", "acme", NULL), "acme");
    assert_string_equal(route_of(p, "gpt-4o", "other", NULL), "gpt4o");
    assert_string_equal(route_of(p, "gpt-4o", "acme", "beta"), "beta"); /* earlier glob wins */
    assert_string_equal(route_of(p, "gpt-4o", NULL, "alpha"), "gpt4o");
    assert_string_equal(route_of(p, "gpt-5o-mini", NULL, NULL), "gpt-glob");
    assert_string_equal(route_of(p, "plain", NULL, NULL), "plain"); /* the models section */
    assert_string_equal(route_of(p, "plain", "t", NULL), "plain-override");
    assert_string_equal(route_of(p, "unknown", NULL, NULL), "(none)");
    assert_string_equal(route_of(p, "unknown", NULL, "x"), "catch-all");

    /* plan: chosen target first, then the other weighted ones, then fallbacks */
    struct config *c = config_ref(cfg);
    c->policy = build_ok("{\"routes\": [{\"match\": {\"model\": \"m\"}, \"targets\": "
                         "[{\"provider\": \"a\", \"model\": \"x\", \"weight\": 0}, {\"provider\": "
                         "\"b\"}], \"fallback\": [{\"provider\": \"c\", \"model\": \"z\"}]}]}");
    struct route_plan plan;
    struct route_query q = {.model = "m"};
    assert_int_equal(router_plan(c, &q, 12345, &plan), 0);
    assert_int_equal(plan.n, 3);
    assert_string_equal(plan.c[0].provider->name, "b");
    assert_string_equal(plan.c[0].upstream_model, "m"); /* no model: the requested name */
    assert_string_equal(plan.c[1].upstream_model, "x");
    assert_string_equal(plan.c[2].upstream_model, "z");
    assert_true(plan.c[2].fallback);
    q.model = "nope";
    assert_int_equal(router_plan(c, &q, 1, &plan), -1);
    policy_unref(c->policy);
    c->policy = NULL;
    /* without a policy snapshot the models section still routes */
    q.model = "plain";
    assert_int_equal(router_plan(c, &q, 1, &plan), 0);
    assert_string_equal(plan.c[0].upstream_model, "up-plain");
    config_unref(c);
    policy_unref(p);
}

static void test_weighted_distribution(void **state)
{
    (void)state;
    struct config *c = config_ref(cfg);
    c->policy = build_ok("{\"routes\": [{\"targets\": [{\"provider\": \"a\", \"weight\": 95}, "
                         "{\"provider\": \"b\", \"weight\": 5}]},"
                         "{\"match\": {\"model\": \"s\"}, \"sticky\": {\"by\": \"tenant\"}, "
                         "\"targets\": [{\"provider\": \"a\"}, {\"provider\": \"b\"}, "
                         "{\"provider\": \"c\"}]}]}");
    /* Route 0 matches any model (listed first). Canary 5 %: over N draws the count of
     * b is binomial(N, 0.05); accept within 5 standard deviations. */
    const int n = 200000;
    int b = 0;
    struct route_plan plan;
    struct route_query q = {.model = "anything"};
    for (int i = 0; i < n; i++) {
        assert_int_equal(router_plan(c, &q, router_random(), &plan), 0);
        if (strcmp(plan.c[0].provider->name, "b") == 0) b++;
    }
    double mean = n * 0.05, sd = sqrt(n * 0.05 * 0.95);
    if (fabs(b - mean) > 5 * sd)
        print_error("b chosen %d times, expected %.0f +- %.0f\n", b, mean, 5 * sd);
    assert_true(fabs(b - mean) <= 5 * sd);
    policy_unref(c->policy);

    /* Sticky by tenant: the same tenant always lands on the same target; tenants spread. */
    c->policy =
        build_ok("{\"routes\": [{\"sticky\": {\"by\": \"tenant\"}, \"targets\": "
                 "[{\"provider\": \"a\"}, {\"provider\": \"b\"}, {\"provider\": \"c\"}]}]}");
    int counts[3] = {0};
    for (int t = 0; t < 3000; t++) {
        char tenant[32];
        snprintf(tenant, sizeof tenant, "tenant-%d", t);
        struct route_query st = {.model = "m", .tenant = tenant};
        assert_int_equal(router_plan(c, &st, router_random(), &plan), 0);
        const char *first = plan.c[0].provider->name;
        for (int k = 0; k < 5; k++) {
            assert_int_equal(router_plan(c, &st, router_random(), &plan), 0);
            assert_string_equal(plan.c[0].provider->name, first);
        }
        counts[first[0] - 'a']++;
    }
    for (int i = 0; i < 3; i++) /* binomial(3000, 1/3): sd ~ 26 */
        assert_true(counts[i] > 1000 - 130 && counts[i] < 1000 + 130);
    policy_unref(c->policy);
    c->policy = NULL;
    config_unref(c);
}

static void test_reference(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(policy_write_reference(f), 0);
    fclose(f);
    assert_non_null(strstr(buf, "| `retry.attempts` | integer | `0` |"));
    assert_non_null(strstr(buf, "| `breaker.error_ratio` | number 0..1 | `0.5` |"));
    assert_non_null(strstr(buf, "| `targets[].provider` | string | *required* |"));
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),    cmocka_unit_test(test_defaults_and_values),
        cmocka_unit_test(test_matching),  cmocka_unit_test(test_weighted_distribution),
        cmocka_unit_test(test_reference),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    targets_free_all();
    return rc;
}
