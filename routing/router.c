/* Route resolution from the immutable config snapshot. */
#include "routing/router.h"

int router_resolve(const struct config *cfg, const char *model, struct route_target *out)
{
    const struct model_conf *m = config_find_model(cfg, model);
    if (!m || !m->provider) return -1;
    out->provider = m->provider;
    out->upstream_model = m->model;
    out->public_model = m->name;
    return 0;
}
