/* Upstream reachability probes for /readyz. Worker 0 sends GET {base_url}/models
 * to every provider every few seconds; any HTTP answer means reachable. */
#include "gateway/health.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "routing/upstream.h"

#define PROBE_INTERVAL_MS 5000
#define PROBE_TIMEOUT_MS  2000
#define MAX_TRACKED       256

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char name[128];
    enum health_state state;
} table[MAX_TRACKED];
static size_t n_table;

static void health_set(const char *provider, enum health_state st)
{
    pthread_mutex_lock(&mu);
    size_t i;
    for (i = 0; i < n_table; i++)
        if (strcmp(table[i].name, provider) == 0) break;
    if (i == n_table && n_table < MAX_TRACKED)
        util_strlcpy(table[n_table++].name, provider, sizeof table[0].name);
    if (i < n_table) {
        if (table[i].state != st)
            log_info("health", "provider %s is %s", provider,
                     st == HEALTH_UP ? "reachable" : "unreachable");
        table[i].state = st;
    }
    pthread_mutex_unlock(&mu);
}

enum health_state health_get(const char *provider)
{
    enum health_state st = HEALTH_UNKNOWN;
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < n_table; i++)
        if (strcmp(table[i].name, provider) == 0) st = table[i].state;
    pthread_mutex_unlock(&mu);
    return st;
}

struct probe {
    char provider[128];
    long status;
};

static int probe_head(void *ud, struct upstream_xfer *x, long status)
{
    (void)x;
    ((struct probe *)ud)->status = status;
    return 0;
}

static enum upstream_data_rc probe_data(void *ud, const char *d, size_t n)
{
    (void)ud;
    (void)d;
    (void)n;
    return UPSTREAM_CONTINUE;
}

static void probe_done(void *ud, enum upstream_result res, const char *detail)
{
    (void)detail;
    struct probe *p = ud;
    health_set(p->provider, res == UPSTREAM_OK && p->status > 0 ? HEALTH_UP : HEALTH_DOWN);
    free(p);
}

static const struct upstream_callbacks probe_cb = {probe_head, probe_data, probe_done};

static void probe_all(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    for (size_t i = 0; i < w->cfg->n_providers; i++) {
        const struct provider_conf *pc = &w->cfg->providers[i];
        struct probe *p = calloc(1, sizeof *p);
        if (!p) continue;
        util_strlcpy(p->provider, pc->name, sizeof p->provider);
        char url[2048], auth[600];
        snprintf(url, sizeof url, "%s/models", pc->base_url);
        const char *hdrs[1];
        size_t nh = 0;
        if (pc->api_key) {
            snprintf(auth, sizeof auth, "Authorization: Bearer %s", pc->api_key);
            hdrs[nh++] = auth;
        }
        struct upstream_request req = {.url = url,
                                       .headers = hdrs,
                                       .n_headers = nh,
                                       .unix_socket = pc->unix_socket,
                                       .connect_ms = PROBE_TIMEOUT_MS,
                                       .first_byte_ms = PROBE_TIMEOUT_MS,
                                       .idle_ms = PROBE_TIMEOUT_MS,
                                       .total_ms = PROBE_TIMEOUT_MS};
        if (!upstream_start(w->up, &req, &probe_cb, p)) free(p);
        memset(auth, 0, sizeof auth);
    }
    struct timeval tv = {.tv_sec = PROBE_INTERVAL_MS / 1000, .tv_usec = 0};
    evtimer_add(w->health, &tv);
}

int health_start(struct worker *w)
{
    w->health = evtimer_new(w->base, probe_all, w);
    if (!w->health) return -1;
    struct timeval now = {0, 0};
    evtimer_add(w->health, &now);
    return 0;
}

void health_stop(struct worker *w)
{
    if (w->health) event_free(w->health);
    w->health = NULL;
}
