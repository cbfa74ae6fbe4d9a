/* OpenAI and every OpenAI-compatible server (vLLM, llama.cpp, TGI, Together,
 * Groq, llmgate-engine): the body goes as it is, Bearer auth, events as they are. */
#include "routing/adapter.h"

#include <stdio.h>

static int openai_build(const struct adapter_call *c, struct adapter_out *out)
{
    const struct provider_conf *p = c->provider;
    int n = snprintf(out->url, sizeof out->url, "%s%s", p->base_url,
                     adapter_endpoint_path(c->endpoint));
    if (n <= 0 || (size_t)n >= sizeof out->url) return -1;
    out->body = NULL;
    out->n_headers = 0;
    if (p->api_key)
        snprintf(out->headers[out->n_headers++], sizeof out->headers[0], "Authorization: Bearer %s",
                 p->api_key);
    return 0;
}

const struct adapter adapter_openai = {
    .name = "openai",
    .build = openai_build,
    .classify = adapter_classify_openai,
};
