/* Provider adapters: the wire format of each provider kind behind one small
 * vtable (build request, classify a failed head, translate stream events,
 * finish a buffered answer), so the upstream client moves bytes and the relay
 * speaks only OpenAI. Adapters know nothing of libcurl or evhttp. */
#ifndef LLMGATE_ROUTING_ADAPTER_H
#define LLMGATE_ROUTING_ADAPTER_H

#include <stdbool.h>
#include <stddef.h>

#include "gateway/config.h"

#define ADAPTER_UNSUPPORTED  (-2) /* build(): this provider cannot serve the request */
#define ADAPTER_STREAM_ERROR (-3) /* stream_event(): the upstream reported an error */
#define ADAPTER_MAX_HEADERS  4
#define ADAPTER_FIELD_MAX    64 /* a request field's path ("messages[2].content"), NUL included */

enum adapter_endpoint { ADAPTER_CHAT, ADAPTER_COMPLETIONS, ADAPTER_EMBEDDINGS };

/* One attempt's inputs. body is the OpenAI request as the gateway would send
 * it to an OpenAI server (model already replaced by upstream_model). */
struct adapter_call {
    const struct provider_conf *provider;
    const char *upstream_model;
    enum adapter_endpoint endpoint;
    bool stream;
    const char *body;
    size_t body_len;
};

/* What build() produces. body NULL = send the OpenAI body as it is; otherwise
 * malloc'd (the caller frees). headers hold credentials: wipe them after use.
 * unsupported names the field build() could not express when it returned
 * ADAPTER_UNSUPPORTED ("" when it is the endpoint itself). */
struct adapter_out {
    char url[2560];
    char *body;
    size_t body_len;
    char headers[ADAPTER_MAX_HEADERS][640];
    size_t n_headers;
    char unsupported[ADAPTER_FIELD_MAX];
};

/* Receives one translated OpenAI SSE data payload (a chunk object or "[DONE]"). */
typedef void (*adapter_emit_fn)(void *ud, const char *data, size_t len);

struct adapter {
    const char *name;
    /* URL, body and auth headers for c: 0, ADAPTER_UNSUPPORTED, or -1 (internal). */
    int (*build)(const struct adapter_call *c, struct adapter_out *out);
    /* A non-2xx answer (status and buffered body) -> enum policy_failure, or -1 when it is
     * the client's own error (400, 401, 404...), which is never failed over. */
    int (*classify)(long status, const char *body, size_t len);
    /* Streams in another dialect: state per attempt. NULL stream_new = OpenAI events as is. */
    void *(*stream_new)(const struct adapter_call *c);
    /* One upstream event -> zero or more OpenAI payloads through emit. Returns 0, 1 when
     * the stream is complete ([DONE] emitted), -1 when the event is malformed, or
     * ADAPTER_STREAM_ERROR when it is the upstream's own error report; both failures set
     * *failure (enum policy_failure: PF_RATE_LIMITED, PF_OVERLOADED or PF_SERVER_ERROR). */
    int (*stream_event)(void *st, const char *event, size_t elen, const char *data, size_t dlen,
                        adapter_emit_fn emit, void *ud, int *failure);
    void (*stream_free)(void *st);
    /* A buffered answer -> OpenAI JSON (malloc'd, *out_len), success or error shape; NULL
     * finish = as is. Returns NULL when body is malformed. */
    char *(*finish)(const struct adapter_call *c, long status, const char *body, size_t len,
                    size_t *out_len);
};

extern const struct adapter adapter_openai, adapter_azure, adapter_anthropic;

/* The adapter of a provider kind. */
const struct adapter *adapter_for(enum provider_kind kind);
/* OpenAI-dialect classification of a failed answer (shared by openai and azure). */
int adapter_classify_openai(long status, const char *body, size_t len);
/* The OpenAI path suffix of an endpoint ("/chat/completions", ...). */
const char *adapter_endpoint_path(enum adapter_endpoint ep);
/* Appends s percent-encoded (RFC 3986 unreserved kept) to out; -1 when it does not fit. */
int adapter_url_escape(char *out, size_t cap, const char *s);

/* Anthropic translation, exposed for tests: OpenAI chat request -> Messages request
 * (malloc'd JSON), or NULL with ADAPTER_UNSUPPORTED / -1 in *rc; on ADAPTER_UNSUPPORTED
 * field (ADAPTER_FIELD_MAX bytes, or NULL) receives the path of the field it cannot express. */
char *anthropic_request_from_openai(const char *body, size_t len, const char *model,
                                    size_t *out_len, int *rc, char *field);

#endif
