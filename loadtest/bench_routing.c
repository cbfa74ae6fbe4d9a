/* llmgate-bench-routing: the cost of one routing decision (match + weighted
 * choice + attempt order, router_plan()) with 1, 100 and 1,000 policy routes,
 * and of compiling the policy. Routes mix exact names with aliases, globs and
 * tenant- and header-scoped rules; queries hit routes uniformly and 10 % miss.
 * Prints one CSV line per size: routes,build_ms,ns_per_decision,decisions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "gateway/config.h"
#include "routing/policy.h"
#include "routing/router.h"
#include "routing/targets.h"

#define N_QUERIES 4096

static const char *conf_text =
    "{\"providers\": {\"p0\": {\"base_url\": \"http://a/v1\"}, \"p1\": {\"base_url\": "
    "\"http://b/v1\"}, \"p2\": {\"base_url\": \"http://c/v1\"}},"
    " \"models\": {\"plain\": {\"provider\": \"p0\"}}}";

/* Route i: 60 % exact with two aliases, 20 % glob families, 10 % tenant, 10 % header. */
static void add_route(FILE *f, int i)
{
    fprintf(f, "%s{\"name\": \"r%d\", \"match\": {", i ? ",\n" : "", i);
    switch (i % 10) {
    case 0:
    case 1: fprintf(f, "\"model\": \"fam%d-*\"", i); break;
    case 2: fprintf(f, "\"model\": \"m%d\", \"tenant\": \"t%d\"", i, i % 7); break;
    case 3:
        fprintf(f, "\"model\": \"m%d\", \"header\": {\"name\": \"x-route\", \"value\": \"b\"}", i);
        break;
    default: fprintf(f, "\"model\": [\"m%d\", \"m%d-alias\", \"m%d-latest\"]", i, i, i);
    }
    fprintf(f,
            "}, \"targets\": [{\"provider\": \"p0\", \"model\": \"u%d\", \"weight\": 95}, "
            "{\"provider\": \"p1\", \"model\": \"u%d-canary\", \"weight\": 5}], "
            "\"sticky\": {\"by\": \"%s\"}, \"fallback\": [{\"provider\": \"p2\", \"model\": "
            "\"fb%d\"}], \"retry\": {\"attempts\": 1}, \"breaker\": {\"failures\": 5}}",
            i, i, i % 4 == 0 ? "tenant" : "none", i);
}

static const char *hdr(void *ud, const char *name)
{
    (void)ud;
    return strcmp(name, "x-route") == 0 ? "b" : NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    int sizes[] = {1, 100, 1000};
    long iters = argc > 1 ? atol(argv[1]) : 2000000;
    struct config *cfg;
    char err[512];
    if (config_parse(conf_text, strlen(conf_text), "bench.conf", &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    printf("routes,build_ms,ns_per_decision,decisions,hit_ratio\n");
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int n = sizes[s];
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        fprintf(f, "{\"routes\": [\n");
        for (int i = 0; i < n; i++)
            add_route(f, i);
        fprintf(f, "]}\n");
        fclose(f);
        struct policy_source src = {"bench.json", text, len};
        double t0 = now_s();
        struct policy *p;
        if (policy_build(cfg, "bench", &src, 1, &p, err, sizeof err) != 0) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        double build_ms = (now_s() - t0) * 1000;
        /* queries: uniform over routes, 10 % unknown models */
        static char names[N_QUERIES][48];
        static char tenants[N_QUERIES][16];
        struct route_query q[N_QUERIES];
        srand(42);
        for (int k = 0; k < N_QUERIES; k++) {
            int i = rand() % n;
            if (rand() % 10 == 0)
                snprintf(names[k], sizeof names[k], "unknown-%d", k);
            else if (i % 10 < 2)
                snprintf(names[k], sizeof names[k], "fam%d-v%d", i, k % 5);
            else if (i % 10 >= 4 && k % 3 == 0)
                snprintf(names[k], sizeof names[k], "m%d-alias", i);
            else
                snprintf(names[k], sizeof names[k], "m%d", i);
            snprintf(tenants[k], sizeof tenants[k], "t%d", rand() % 7);
            q[k] = (struct route_query){.model = names[k], .tenant = tenants[k], .header = hdr};
        }
        cfg->policy = p;
        struct route_plan plan;
        long hits = 0;
        t0 = now_s();
        for (long it = 0; it < iters; it++)
            hits += router_plan(cfg, &q[it & (N_QUERIES - 1)], router_random(), &plan) == 0;
        double ns = (now_s() - t0) * 1e9 / (double)iters;
        printf("%d,%.2f,%.1f,%ld,%.2f\n", n, build_ms, ns, iters, (double)hits / (double)iters);
        cfg->policy = NULL;
        policy_unref(p);
        free(text);
    }
    config_unref(cfg);
    targets_free_all();
    return 0;
}
