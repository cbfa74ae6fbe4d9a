/* Adapter selection and the helpers every dialect shares. */
#include "routing/adapter.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "routing/policy.h"

const struct adapter *adapter_for(enum provider_kind kind)
{
    switch (kind) {
    case PROVIDER_AZURE_OPENAI: return &adapter_azure;
    case PROVIDER_ANTHROPIC: return &adapter_anthropic;
    case PROVIDER_OPENAI:
    case PROVIDER_LOCAL: break;
    }
    return &adapter_openai;
}

const char *adapter_endpoint_path(enum adapter_endpoint ep)
{
    switch (ep) {
    case ADAPTER_CHAT: return "/chat/completions";
    case ADAPTER_COMPLETIONS: return "/completions";
    case ADAPTER_EMBEDDINGS: return "/embeddings";
    }
    return "";
}

int adapter_url_escape(char *out, size_t cap, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(out);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '.' || c == '_' || c == '~';
        if (n + (plain ? 1 : 3) >= cap) return -1;
        if (plain) {
            out[n++] = (char)c;
        } else {
            out[n++] = '%';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    out[n] = '\0';
    return 0;
}

static bool contains_ci(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; hay && *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0) return true;
    return false;
}

int adapter_classify_openai(long status, const char *body, size_t len)
{
    const char *code = NULL, *type = NULL, *msg = NULL;
    cJSON *doc = len ? cJSON_ParseWithLength(body, len) : NULL;
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(doc, "error");
    code = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(err, "code"));
    type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(err, "type"));
    msg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(err, "message"));
    int f = -1;
    bool overloaded = (code && strstr(code, "overloaded")) || (type && strstr(type, "overloaded"));
    bool too_long = (code && strcmp(code, "context_length_exceeded") == 0) ||
                    contains_ci(msg, "maximum context length") ||
                    contains_ci(msg, "context length") || contains_ci(msg, "context window");
    if (status == 429)
        f = overloaded ? PF_OVERLOADED : PF_RATE_LIMITED;
    else if (status == 503 || status == 529)
        f = PF_OVERLOADED;
    else if (status >= 500 || status < 200)
        f = PF_SERVER_ERROR;
    else if (status == 408)
        f = PF_TIMEOUT;
    else if ((status == 400 || status == 413 || status == 422) && too_long)
        f = PF_CONTEXT_LENGTH;
    cJSON_Delete(doc);
    return f;
}
