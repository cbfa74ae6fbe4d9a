/* Target choice from the immutable snapshot: match, weighted pick, ordering. */
#include "routing/router.h"

#include <string.h>

#include "common/util.h"

static uint64_t hash_key(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    /* fmix64: FNV's low bits are weak for short keys. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

uint64_t router_random(void)
{
    static _Thread_local uint64_t s;
    if (s == 0) {
        if (util_random_bytes(&s, sizeof s) != 0 || s == 0) s = util_now_us() | 1;
    }
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

static void add(struct route_plan *out, const struct policy_target *t, const char *model,
                bool fallback)
{
    if (out->n == ROUTE_MAX_CANDIDATES) return;
    out->c[out->n++] = (struct route_target){
        .provider = t->provider,
        .upstream_model = t->model ? t->model : model,
        .public_model = model,
        .state = t->state,
        .fallback = fallback,
    };
}

int router_plan(const struct config *cfg, const struct route_query *q, uint64_t rnd,
                struct route_plan *out)
{
    out->n = 0;
    out->route = NULL;
    if (!cfg->policy) {
        const struct model_conf *m = config_find_model(cfg, q->model);
        if (!m || !m->provider) return -1;
        out->c[0] = (struct route_target){
            .provider = m->provider, .upstream_model = m->model, .public_model = m->name};
        out->n = 1;
        return 0;
    }
    const struct policy_route *r = policy_match(cfg->policy, q);
    if (!r) return -1;
    out->route = r;
    const char *key = NULL;
    if (r->sticky == STICKY_TENANT) key = q->tenant;
    if (r->sticky == STICKY_HEADER && q->header) key = q->header(q->ud, r->sticky_header);
    uint64_t x = (key ? hash_key(key) : rnd) % r->total_weight;
    size_t chosen = 0;
    for (size_t i = 0; i < r->n_targets; i++) {
        if (x < r->targets[i].weight) {
            chosen = i;
            break;
        }
        x -= r->targets[i].weight;
    }
    add(out, &r->targets[chosen], q->model, false);
    for (size_t i = 0; i < r->n_targets; i++)
        if (i != chosen) add(out, &r->targets[i], q->model, false);
    for (size_t i = 0; i < r->n_fallback; i++)
        add(out, &r->fallback[i], q->model, true);
    return 0;
}
