/* llmgate-mock speaking the Anthropic Messages API: POST /v1/messages with the
 * required fields checked, answers "tok0 tok1 ..." (or a tool_use block when
 * tools are offered), stop_reason and usage, and the streaming event sequence
 * message_start, content_block_start, ping, content_block_delta...,
 * content_block_stop, message_delta, message_stop. Deterministic, like the
 * OpenAI side, so tests can predict every byte. */
#include "loadtest/mock.h"

#include <math.h>
#include <string.h>

#include "loadtest/mock.h"

#define CUT_AFTER 3 /* text deltas sent before a *-mid-stream fault */

static void add_str(struct evbuffer *out, const char *s)
{
    evbuffer_add(out, "\"", 1);
    mockj_escape(out, s, strlen(s));
    evbuffer_add(out, "\"", 1);
}

static size_t text_bytes(const cJSON *content)
{
    if (cJSON_IsString(content)) return strlen(content->valuestring);
    size_t n = 0;
    const cJSON *b;
    cJSON_ArrayForEach(b, content)
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(b, "text");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(b, "content");
        if (cJSON_IsString(t)) n += strlen(t->valuestring);
        if (cJSON_IsString(c)) n += strlen(c->valuestring);
    }
    return n;
}

int mock_anthropic_prepare(const cJSON *req, struct mock_gen *g, const char **tool,
                           const char **msg, const char **param)
{
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(req, "max_tokens");
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages");
    const cJSON *system = cJSON_GetObjectItemCaseSensitive(req, "system");
    *tool = NULL;
    if (!cJSON_IsNumber(mt) || mt->valuedouble < 1 || mt->valuedouble != floor(mt->valuedouble)) {
        *msg = "max_tokens: Field required";
        *param = "max_tokens";
        return -1;
    }
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
        *msg = "messages: Field required";
        *param = "messages";
        return -1;
    }
    size_t bytes = system ? text_bytes(system) : 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs)
    {
        const char *role = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "role"));
        if (!role || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0)) {
            *msg = "messages: roles must be 'user' or 'assistant'";
            *param = "messages";
            return -1;
        }
        bytes += text_bytes(cJSON_GetObjectItemCaseSensitive(m, "content"));
    }
    g->prompt_tokens = bytes / 4 ? (int)(bytes / 4) : 1;
    if (mt->valuedouble < g->tokens) {
        g->tokens = (int)mt->valuedouble;
        g->finish_length = 1;
    }
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(req, "tools");
    const char *choice = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(req, "tool_choice"), "type"));
    if (cJSON_IsArray(tools) && tools->child && !(choice && strcmp(choice, "none") == 0))
        *tool = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(tools->child, "name"));
    return 0;
}

static const char *stop_reason(const struct mock_gen *g)
{
    return g->tool_name ? "tool_use" : g->finish_length ? "max_tokens" : "end_turn";
}

static void add_usage(struct evbuffer *out, const struct mock_gen *g, int output)
{
    evbuffer_add_printf(out, "\"usage\":{\"input_tokens\":%d,\"output_tokens\":%d}",
                        g->prompt_tokens, output);
}

static void add_message_head(struct evbuffer *out, const struct mock_gen *g)
{
    evbuffer_add_printf(out,
                        "{\"id\":\"msg_mock_%llu\",\"type\":\"message\",\"role\":\"assistant\","
                        "\"model\":",
                        (unsigned long long)g->id);
    add_str(out, g->model);
}

void mock_anthropic_body(struct evbuffer *out, const struct mock_gen *g)
{
    add_message_head(out, g);
    evbuffer_add_printf(out, ",\"content\":[{\"type\":\"text\",\"text\":\"");
    for (int k = 0; k < g->tokens; k++)
        evbuffer_add_printf(out, "tok%d ", k);
    evbuffer_add_printf(out, "\"}");
    if (g->tool_name) {
        evbuffer_add_printf(out, ",{\"type\":\"tool_use\",\"id\":\"toolu_mock_%llu\",\"name\":",
                            (unsigned long long)g->id);
        add_str(out, g->tool_name);
        evbuffer_add_printf(out, ",\"input\":{\"q\":\"tok0\",\"n\":1}}");
    }
    evbuffer_add_printf(out, "],\"stop_reason\":\"%s\",\"stop_sequence\":null,", stop_reason(g));
    add_usage(out, g, g->tokens);
    evbuffer_add(out, "}", 1);
}

void mock_anthropic_error(struct evbuffer *out, const char *type, const char *message)
{
    evbuffer_add_printf(out, "{\"type\":\"error\",\"error\":{\"type\":");
    add_str(out, type);
    evbuffer_add_printf(out, ",\"message\":");
    add_str(out, message);
    evbuffer_add(out, "}}", 2);
}

/* The event sequence: 0 message_start, 1 content_block_start (text), 2 ping,
 * 3..3+n-1 text deltas, then content_block_stop, [tool_use start, two
 * input_json_delta, stop], message_delta, message_stop. */
static int n_events(const struct mock_gen *g)
{
    return 3 + g->tokens + 1 + (g->tool_name ? 4 : 0) + 2;
}

int mock_anthropic_step(const struct mock_gen *g, int fault, int k)
{
    if (fault == FAULT_MALFORMED && k == 1) return 2;
    if (fault == FAULT_MALFORMED && k > 1) return 0;
    if (fault == FAULT_OVERLOADED_STREAM || fault == FAULT_OVERLOADED_MID_STREAM) {
        /* The API can fail after its 200 head: an error event, then the end. */
        int at = fault == FAULT_OVERLOADED_STREAM
                     ? 0
                     : 3 + (g->tokens < CUT_AFTER ? g->tokens : CUT_AFTER);
        if (k == at) return 3;
        if (k > at) return 0;
    }
    if ((fault == FAULT_RESET_MID_STREAM || fault == FAULT_HANG_MID_STREAM) &&
        k >= 3 + (g->tokens < CUT_AFTER ? g->tokens : CUT_AFTER))
        return -1;
    int n = n_events(g);
    if (fault == FAULT_NO_DONE) n--; /* no message_stop */
    return k < n ? 1 : 0;
}

static void event(struct evbuffer *out, const char *name)
{
    evbuffer_add_printf(out, "event: %s\ndata: ", name);
}

void mock_anthropic_error_event(struct evbuffer *out, const char *type, const char *message)
{
    event(out, "error");
    mock_anthropic_error(out, type, message);
    evbuffer_add(out, "\n\n", 2);
}

void mock_anthropic_event(struct evbuffer *out, const struct mock_gen *g, int k)
{
    int n = g->tokens;
    if (k == 0) {
        event(out, "message_start");
        evbuffer_add_printf(out, "{\"type\":\"message_start\",\"message\":");
        add_message_head(out, g);
        evbuffer_add_printf(out, ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,");
        add_usage(out, g, 1);
        evbuffer_add_printf(out, "}}\n\n");
    } else if (k == 1) {
        event(out, "content_block_start");
        evbuffer_add_printf(out, "{\"type\":\"content_block_start\",\"index\":0,"
                                 "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    } else if (k == 2) {
        event(out, "ping");
        evbuffer_add_printf(out, "{\"type\":\"ping\"}\n\n");
    } else if (k < 3 + n) {
        event(out, "content_block_delta");
        evbuffer_add_printf(out,
                            "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
                            "\"text_delta\",\"text\":\"tok%d \"}}\n\n",
                            k - 3);
    } else if (k == 3 + n) {
        event(out, "content_block_stop");
        evbuffer_add_printf(out, "{\"type\":\"content_block_stop\",\"index\":0}\n\n");
    } else if (g->tool_name && k == 4 + n) {
        event(out, "content_block_start");
        evbuffer_add_printf(out,
                            "{\"type\":\"content_block_start\",\"index\":1,\"content_block\":{"
                            "\"type\":\"tool_use\",\"id\":\"toolu_mock_%llu\",\"name\":",
                            (unsigned long long)g->id);
        add_str(out, g->tool_name);
        evbuffer_add_printf(out, ",\"input\":{}}}\n\n");
    } else if (g->tool_name && (k == 5 + n || k == 6 + n)) {
        event(out, "content_block_delta");
        evbuffer_add_printf(out,
                            "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":"
                            "\"input_json_delta\",\"partial_json\":\"%s\"}}\n\n",
                            k == 5 + n ? "{\\\"q\\\": \\\"tok0\\\"" : ", \\\"n\\\": 1}");
    } else if (g->tool_name && k == 7 + n) {
        event(out, "content_block_stop");
        evbuffer_add_printf(out, "{\"type\":\"content_block_stop\",\"index\":1}\n\n");
    } else if (k == n_events(g) - 2) {
        event(out, "message_delta");
        evbuffer_add_printf(out,
                            "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"%s\","
                            "\"stop_sequence\":null},\"usage\":{\"output_tokens\":%d}}\n\n",
                            stop_reason(g), g->tokens);
    } else {
        event(out, "message_stop");
        evbuffer_add_printf(out, "{\"type\":\"message_stop\"}\n\n");
    }
}
