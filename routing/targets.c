/* The registry of target states: a fixed-size hash table of chains guarded by
 * one mutex for creation and walks; the hot path holds pointers, never looks up. */
#include "routing/targets.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_BUCKETS     4096
#define MAX_PROVIDERS 1024

struct routing_metrics routing_metrics;

static pthread_mutex_t err_mu = PTHREAD_MUTEX_INITIALIZER;
static char reload_error[1024];

void routing_set_reload_error(const char *msg)
{
    pthread_mutex_lock(&err_mu);
    snprintf(reload_error, sizeof reload_error, "%s", msg ? msg : "");
    pthread_mutex_unlock(&err_mu);
}

void routing_get_reload_error(char *out, size_t n)
{
    pthread_mutex_lock(&err_mu);
    snprintf(out, n, "%s", reload_error);
    pthread_mutex_unlock(&err_mu);
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct target_state *buckets[N_BUCKETS];
static struct provider_stats *providers[MAX_PROVIDERS];
static size_t n_providers;

static uint64_t fnv1a(const char *a, const char *b)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *p = a; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    h = (h ^ 0xff) * 0x100000001b3ull; /* separator: ("ab","c") != ("a","bc") */
    for (const char *p = b; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    return h;
}

static struct provider_stats *provider_get(const char *name)
{
    for (size_t i = 0; i < n_providers; i++)
        if (strcmp(providers[i]->provider, name) == 0) return providers[i];
    if (n_providers == MAX_PROVIDERS) return NULL;
    struct provider_stats *ps = calloc(1, sizeof *ps);
    if (!ps || !(ps->provider = strdup(name))) {
        free(ps);
        return NULL;
    }
    budget_init(&ps->budget);
    providers[n_providers++] = ps;
    return ps;
}

struct target_state *targets_get(const char *provider, const char *model)
{
    uint64_t h = fnv1a(provider, model) % N_BUCKETS;
    pthread_mutex_lock(&mu);
    struct target_state *t;
    for (t = buckets[h]; t; t = t->next)
        if (strcmp(t->provider, provider) == 0 && strcmp(t->model, model) == 0) goto out;
    t = calloc(1, sizeof *t);
    if (!t) goto out;
    t->provider = strdup(provider);
    t->model = strdup(model);
    t->ps = provider_get(provider);
    if (!t->provider || !t->model || !t->ps) {
        free(t->provider);
        free(t->model);
        free(t);
        t = NULL;
        goto out;
    }
    t->next = buckets[h];
    buckets[h] = t;
out:
    pthread_mutex_unlock(&mu);
    return t;
}

void targets_foreach(void (*fn)(void *ud, const struct target_state *t), void *ud)
{
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < N_BUCKETS; i++)
        for (const struct target_state *t = buckets[i]; t; t = t->next)
            fn(ud, t);
    pthread_mutex_unlock(&mu);
}

void targets_free_all(void)
{
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < N_BUCKETS; i++) {
        while (buckets[i]) {
            struct target_state *t = buckets[i];
            buckets[i] = t->next;
            free(t->provider);
            free(t->model);
            free(t);
        }
    }
    for (size_t i = 0; i < n_providers; i++) {
        free(providers[i]->provider);
        free(providers[i]);
    }
    n_providers = 0;
    pthread_mutex_unlock(&mu);
}

bool targets_cooling(const struct target_state *t, uint64_t now_ms, uint64_t *left_ms)
{
    uint64_t until = atomic_load(&((struct target_state *)t)->cooldown_until_ms);
    if (now_ms >= until) return false;
    if (left_ms) *left_ms = until - now_ms;
    return true;
}

void targets_cool_until(struct target_state *t, uint64_t until_ms)
{
    uint64_t cur = atomic_load(&t->cooldown_until_ms);
    while (cur < until_ms && !atomic_compare_exchange_weak(&t->cooldown_until_ms, &cur, until_ms)) {
    }
}
