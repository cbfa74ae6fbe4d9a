/* Azure OpenAI: the OpenAI wire format at a deployment URL
 * ({base_url}/openai/deployments/{deployment}/chat/completions?api-version=V)
 * with an "api-key" header. The target's model names the deployment. */
#include "routing/adapter.h"

#include <stdio.h>
#include <string.h>

static int azure_build(const struct adapter_call *c, struct adapter_out *out)
{
    const struct provider_conf *p = c->provider;
    int n = snprintf(out->url, sizeof out->url, "%s/openai/deployments/", p->base_url);
    if (n <= 0 || (size_t)n >= sizeof out->url) return -1;
    if (adapter_url_escape(out->url, sizeof out->url, c->upstream_model) < 0) return -1;
    size_t len = strlen(out->url);
    n = snprintf(out->url + len, sizeof out->url - len,
                 "%s?api-version=", adapter_endpoint_path(c->endpoint));
    if (n <= 0 || (size_t)n >= sizeof out->url - len) return -1;
    if (adapter_url_escape(out->url, sizeof out->url, p->api_version ? p->api_version : "") < 0)
        return -1;
    out->body = NULL;
    out->n_headers = 0;
    if (p->api_key)
        snprintf(out->headers[out->n_headers++], sizeof out->headers[0], "api-key: %s", p->api_key);
    return 0;
}

const struct adapter adapter_azure = {
    .name = "azure_openai",
    .build = azure_build,
    .classify = adapter_classify_openai,
};
