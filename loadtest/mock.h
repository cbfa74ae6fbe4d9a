/* llmgate-mock internals shared between the server (mock.c) and the writer of
 * OpenAI-shaped bodies (mock_openai.c). Nothing here touches a socket. */
#ifndef LLMGATE_LOADTEST_MOCK_H
#define LLMGATE_LOADTEST_MOCK_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>

/* Injected failures; "none" also exists so a header can switch a global fault off. */
enum mock_fault {
    FAULT_NONE = 0,
    FAULT_429,
    FAULT_500,
    FAULT_503,
    FAULT_HANG,
    FAULT_RESET,
    FAULT_RESET_MID_STREAM,
    FAULT_MALFORMED,
    FAULT_NO_DONE,
    FAULT_HANG_MID_STREAM,
    FAULT_OVERLOADED_STREAM,     /* Messages streams: an overloaded_error event first */
    FAULT_OVERLOADED_MID_STREAM, /* Messages streams: the same after a few text deltas */
};

/* Parses a fault name ("429", "hang", "reset-mid-stream", ...); 0 and *out, or -1. */
int mock_fault_parse(const char *name, enum mock_fault *out);
/* Name of a fault, for logs. */
const char *mock_fault_name(enum mock_fault f);

enum mock_endpoint {
    EP_CHAT = 0,
    EP_COMPLETIONS,
    EP_EMBEDDINGS,
    EP_MODELS,
    EP_MESSAGES, /* Anthropic Messages API (mock_anthropic.c) */
    EP_OTHER,
    EP_COUNT
};

/* One generated completion: everything a body or an SSE chunk needs. */
struct mock_gen {
    enum mock_endpoint ep; /* EP_CHAT or EP_COMPLETIONS */
    const char *model;     /* request's model, unescaped; never NULL */
    uint64_t id;           /* sequence number for "chatcmpl-mock-<id>" */
    long created;          /* unix seconds */
    int tokens;            /* completion tokens to produce */
    int finish_length;     /* 1: finish_reason "length", 0: "stop" */
    int prompt_tokens;
    const char *tool_name; /* EP_MESSAGES: answer with a tool_use block for this tool, or NULL */
};

/* Appends s[0..n) as the inside of a JSON string (no quotes). */
void mockj_escape(struct evbuffer *out, const char *s, size_t n);

/* Non-streaming chat.completion or text_completion body. */
void mock_body_completion(struct evbuffer *out, const struct mock_gen *g);
/* Whole embeddings body for the parsed request; 0, or -1 with msg/param set (400). */
int mock_body_embeddings(struct evbuffer *out, const cJSON *req, const char *model,
                         const char **msg, const char **param);
/* GET /v1/models (id == NULL) or GET /v1/models/{id}. */
void mock_body_models(struct evbuffer *out, const char *id);
/* OpenAI-shaped error body. code may be NULL (JSON null). */
void mock_body_error(struct evbuffer *out, const char *message, const char *type, const char *param,
                     const char *code);

/* SSE events ("data: ...\n\n") of a stream. */
void mock_sse_role(struct evbuffer *out, const struct mock_gen *g);
void mock_sse_token(struct evbuffer *out, const struct mock_gen *g, int k);
void mock_sse_finish(struct evbuffer *out, const struct mock_gen *g);
void mock_sse_usage(struct evbuffer *out, const struct mock_gen *g);
void mock_sse_malformed(struct evbuffer *out, const struct mock_gen *g);
void mock_sse_done(struct evbuffer *out);

/* max(1, bytes/4) over the message contents / prompt; -1 with *param set if malformed. */
int mock_prompt_tokens(const cJSON *req, enum mock_endpoint ep, const char **param);

/* Anthropic Messages API (mock_anthropic.c). */
/* Validates a /v1/messages body (model, max_tokens, messages) and fills g's tokens,
 * finish and prompt counts; *tool receives the first tool's name (borrowed from req)
 * when tools are offered and tool_choice is not none. 0, or -1 with msg/param (400). */
int mock_anthropic_prepare(const cJSON *req, struct mock_gen *g, const char **tool,
                           const char **msg, const char **param);
/* Non-streaming Messages response. */
void mock_anthropic_body(struct evbuffer *out, const struct mock_gen *g);
/* Anthropic-shaped error body ({"type":"error","error":{...}}). */
void mock_anthropic_error(struct evbuffer *out, const char *type, const char *message);
/* Stream step k for fault f: 1 = an event to write with mock_anthropic_event, 0 = the
 * stream ends, -1 = a *-mid-stream fault cuts it here, 2 = a malformed event, 3 = an
 * overloaded_error event (then the stream ends). */
int mock_anthropic_step(const struct mock_gen *g, int fault, int k);
/* Writes stream event k ("event: ...\ndata: ...\n\n"). */
void mock_anthropic_event(struct evbuffer *out, const struct mock_gen *g, int k);
/* Writes an error event of the given Anthropic error type. */
void mock_anthropic_error_event(struct evbuffer *out, const char *type, const char *message);

#endif
