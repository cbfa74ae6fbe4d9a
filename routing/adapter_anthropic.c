/* Anthropic Messages API behind the OpenAI chat completions interface: the
 * request is translated (system prompts, content parts, tool calls and tool
 * results, stop sequences, tool choice), and the answer translated back
 * (content, tool_calls, finish_reason, usage), including the streaming event
 * sequence message_start / content_block_* / message_delta / message_stop,
 * so an OpenAI client cannot tell. Only chat completions can be served. */
#include "routing/adapter.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/jsonv.h"
#include "routing/policy.h"

#define DEFAULT_MAX_TOKENS 4096 /* Anthropic requires max_tokens; OpenAI does not */
#define MAX_BLOCKS         256  /* content blocks tracked per streamed message */

/* ------------------------------------------------------------------------- */
/* Request: OpenAI chat -> Messages                                          */
/* ------------------------------------------------------------------------- */

/* Text of an OpenAI content (string, or array of text parts); NULL if not text. */
static char *content_text(const cJSON *content)
{
    if (cJSON_IsString(content)) return strdup(content->valuestring);
    if (!cJSON_IsArray(content)) return NULL;
    size_t len = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, content)
    {
        const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(part, "text"));
        if (!t) return NULL;
        len += strlen(t);
    }
    char *s = malloc(len + 1);
    if (!s) return NULL;
    s[0] = '\0';
    cJSON_ArrayForEach(part, content)
        strcat(s, cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(part, "text")));
    return s;
}

static cJSON *text_block(const char *text)
{
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "type", "text");
    cJSON_AddStringToObject(b, "text", text);
    return b;
}

/* An image_url part: data: URLs become base64 sources, others URL sources. */
static cJSON *image_block(const cJSON *part)
{
    const cJSON *iu = cJSON_GetObjectItemCaseSensitive(part, "image_url");
    const char *url =
        cJSON_GetStringValue(cJSON_IsObject(iu) ? cJSON_GetObjectItemCaseSensitive(iu, "url") : iu);
    if (!url) return NULL;
    cJSON *b = cJSON_CreateObject(), *src = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "type", "image");
    cJSON_AddItemToObject(b, "source", src);
    const char *semi = strchr(url, ';');
    if (strncmp(url, "data:", 5) == 0 && semi && strncmp(semi, ";base64,", 8) == 0) {
        char media[128];
        snprintf(media, sizeof media, "%.*s", (int)(semi - url - 5), url + 5);
        cJSON_AddStringToObject(src, "type", "base64");
        cJSON_AddStringToObject(src, "media_type", media);
        cJSON_AddStringToObject(src, "data", semi + 8);
    } else {
        cJSON_AddStringToObject(src, "type", "url");
        cJSON_AddStringToObject(src, "url", url);
    }
    return b;
}

/* Names the field that cannot be translated: its printf-formatted path goes into field
 * (ADAPTER_FIELD_MAX bytes, or NULL). */
static void __attribute__((format(printf, 2, 3))) unsupported(char *field, const char *fmt, ...)
{
    if (!field) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(field, ADAPTER_FIELD_MAX, fmt, ap);
    va_end(ap);
}

/* Appends the blocks of an OpenAI user/assistant content; -1 on an unsupported part,
 * with its index in *bad (-1: the content itself). */
static int add_content_blocks(cJSON *blocks, const cJSON *content, int *bad)
{
    *bad = -1;
    if (!content || cJSON_IsNull(content)) return 0;
    if (cJSON_IsString(content)) {
        if (content->valuestring[0]) cJSON_AddItemToArray(blocks, text_block(content->valuestring));
        return 0;
    }
    if (!cJSON_IsArray(content)) return -1;
    const cJSON *part;
    int k = 0;
    cJSON_ArrayForEach(part, content)
    {
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(part, "type"));
        *bad = k++;
        if (!type) return -1;
        if (strcmp(type, "text") == 0) {
            const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(part, "text"));
            if (!t) return -1;
            cJSON_AddItemToArray(blocks, text_block(t));
        } else if (strcmp(type, "image_url") == 0) {
            cJSON *b = image_block(part);
            if (!b) return -1;
            cJSON_AddItemToArray(blocks, b);
        } else {
            return -1; /* input_audio, file...: not translatable */
        }
    }
    *bad = -1;
    return 0;
}

/* Adds a message, merging with the previous one of the same role (the Messages
 * API wants user and assistant turns to alternate). */
static void push_message(cJSON *msgs, const char *role, cJSON *blocks)
{
    cJSON *last = cJSON_GetArrayItem(msgs, cJSON_GetArraySize(msgs) - 1);
    const char *lr = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(last, "role"));
    if (lr && strcmp(lr, role) == 0) {
        cJSON *lb = cJSON_GetObjectItemCaseSensitive(last, "content");
        while (blocks->child) {
            cJSON *b = cJSON_DetachItemViaPointer(blocks, blocks->child);
            cJSON_AddItemToArray(lb, b);
        }
        cJSON_Delete(blocks);
        return;
    }
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", role);
    cJSON_AddItemToObject(m, "content", blocks);
    cJSON_AddItemToArray(msgs, m);
}

/* Appends tool_use blocks; -1 on an untranslatable call, with its index in *bad. */
static int add_tool_calls(cJSON *blocks, const cJSON *calls, int *bad)
{
    const cJSON *tc;
    *bad = -1;
    cJSON_ArrayForEach(tc, calls)
    {
        (*bad)++;
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
        const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(tc, "id"));
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(fn, "name"));
        const char *args = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(fn, "arguments"));
        if (!id || !name) return -1;
        cJSON *input = args && args[0] ? cJSON_Parse(args) : cJSON_CreateObject();
        if (!cJSON_IsObject(input)) {
            cJSON_Delete(input);
            return -1;
        }
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "type", "tool_use");
        cJSON_AddStringToObject(b, "id", id);
        cJSON_AddStringToObject(b, "name", name);
        cJSON_AddItemToObject(b, "input", input);
        cJSON_AddItemToArray(blocks, b);
    }
    return 0;
}

/* -1 with the untranslatable field's path in field. */
static int translate_messages(cJSON *out, const cJSON *messages, char *field)
{
    cJSON *msgs = cJSON_AddArrayToObject(out, "messages");
    char *system = NULL;
    int rc = 0, i = -1, bad;
    const cJSON *m;
    cJSON_ArrayForEach(m, messages)
    {
        const char *role = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "role"));
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        i++;
        if (!role) {
            unsupported(field, "messages[%d].role", i);
            goto bad;
        }
        if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0) {
            char *t = content_text(content);
            if (!t) goto bad;
            size_t old = system ? strlen(system) : 0;
            char *s = realloc(system, old + strlen(t) + 3);
            if (!s) {
                free(t);
                goto bad;
            }
            if (old)
                strcat(strcpy(s + old, "\n\n"), t);
            else
                strcpy(s, t);
            system = s;
            free(t);
        } else if (strcmp(role, "user") == 0 || strcmp(role, "assistant") == 0) {
            cJSON *blocks = cJSON_CreateArray();
            if (add_content_blocks(blocks, content, &bad) < 0) {
                if (bad >= 0) unsupported(field, "messages[%d].content[%d]", i, bad);
                cJSON_Delete(blocks);
                goto bad;
            }
            if (role[0] == 'a' &&
                add_tool_calls(blocks, cJSON_GetObjectItemCaseSensitive(m, "tool_calls"), &bad) <
                    0) {
                unsupported(field, "messages[%d].tool_calls[%d]", i, bad);
                cJSON_Delete(blocks);
                goto bad;
            }
            if (!blocks->child) cJSON_AddItemToArray(blocks, text_block(""));
            push_message(msgs, role, blocks);
        } else if (strcmp(role, "tool") == 0) {
            const char *id =
                cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "tool_call_id"));
            char *t = content_text(content);
            if (!id || !t) {
                if (!id) unsupported(field, "messages[%d].tool_call_id", i);
                free(t);
                goto bad;
            }
            cJSON *blocks = cJSON_CreateArray(), *b = cJSON_CreateObject();
            cJSON_AddStringToObject(b, "type", "tool_result");
            cJSON_AddStringToObject(b, "tool_use_id", id);
            cJSON_AddStringToObject(b, "content", t);
            free(t);
            cJSON_AddItemToArray(blocks, b);
            push_message(msgs, "user", blocks);
        } else {
            unsupported(field, "messages[%d].role", i); /* "function" (legacy) */
            goto bad;
        }
    }
    if (system) cJSON_AddStringToObject(out, "system", system);
    goto out;
bad:
    if (field && !field[0]) unsupported(field, "messages[%d].content", i);
    rc = -1;
out:
    free(system);
    return rc;
}

/* -1 with the untranslatable field's path in field. */
static int translate_tools(cJSON *out, const cJSON *req, char *field)
{
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(req, "tools");
    if (cJSON_IsArray(tools) && tools->child) {
        cJSON *arr = cJSON_AddArrayToObject(out, "tools");
        const cJSON *t;
        int i = 0;
        cJSON_ArrayForEach(t, tools)
        {
            const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
            const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(fn, "name"));
            if (!name) {
                unsupported(field, "tools[%d].function.name", i);
                return -1;
            }
            i++;
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "name", name);
            const char *desc =
                cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(fn, "description"));
            if (desc) cJSON_AddStringToObject(o, "description", desc);
            const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
            cJSON *schema = cJSON_IsObject(params) ? cJSON_Duplicate(params, 1) : NULL;
            if (!schema) {
                schema = cJSON_CreateObject();
                cJSON_AddStringToObject(schema, "type", "object");
            }
            cJSON_AddItemToObject(o, "input_schema", schema);
            cJSON_AddItemToArray(arr, o);
        }
    }
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(req, "tool_choice");
    const cJSON *ptc = cJSON_GetObjectItemCaseSensitive(req, "parallel_tool_calls");
    cJSON *choice = NULL;
    if (cJSON_IsString(tc)) {
        const char *s = tc->valuestring;
        const char *type = strcmp(s, "required") == 0 ? "any"
                           : strcmp(s, "none") == 0   ? "none"
                                                      : "auto";
        choice = cJSON_CreateObject();
        cJSON_AddStringToObject(choice, "type", type);
    } else if (cJSON_IsObject(tc)) {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(tc, "function"), "name"));
        if (!name) {
            unsupported(field, "tool_choice");
            return -1;
        }
        choice = cJSON_CreateObject();
        cJSON_AddStringToObject(choice, "type", "tool");
        cJSON_AddStringToObject(choice, "name", name);
    }
    if (cJSON_IsFalse(ptc) && cJSON_GetObjectItemCaseSensitive(out, "tools")) {
        if (!choice) {
            choice = cJSON_CreateObject();
            cJSON_AddStringToObject(choice, "type", "auto");
        }
        cJSON_AddTrueToObject(choice, "disable_parallel_tool_use");
    }
    if (choice) cJSON_AddItemToObject(out, "tool_choice", choice);
    return 0;
}

char *anthropic_request_from_openai(const char *body, size_t len, const char *model,
                                    size_t *out_len, int *rc, char *field)
{
    *rc = -1;
    if (field) field[0] = '\0';
    cJSON *req = cJSON_ParseWithLength(body, len);
    cJSON *out = cJSON_CreateObject();
    char *text = NULL;
    if (!cJSON_IsObject(req) || !out) goto done;
    *rc = ADAPTER_UNSUPPORTED;
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(req, "n");
    if (cJSON_IsNumber(n) && n->valuedouble != 1) { /* one choice only */
        unsupported(field, "n");
        goto done;
    }
    cJSON_AddStringToObject(out, "model", model);
    if (translate_messages(out, cJSON_GetObjectItemCaseSensitive(req, "messages"), field) < 0)
        goto done;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(req, "max_completion_tokens");
    if (!cJSON_IsNumber(mt)) mt = cJSON_GetObjectItemCaseSensitive(req, "max_tokens");
    cJSON_AddNumberToObject(out, "max_tokens",
                            cJSON_IsNumber(mt) ? mt->valuedouble : DEFAULT_MAX_TOKENS);
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(req, "stop");
    if (cJSON_IsString(stop)) {
        cJSON *arr = cJSON_AddArrayToObject(out, "stop_sequences");
        cJSON_AddItemToArray(arr, cJSON_CreateString(stop->valuestring));
    } else if (cJSON_IsArray(stop) && stop->child) {
        cJSON_AddItemToObject(out, "stop_sequences", cJSON_Duplicate(stop, 1));
    }
    const cJSON *temp = cJSON_GetObjectItemCaseSensitive(req, "temperature");
    if (cJSON_IsNumber(temp)) /* OpenAI allows 0..2, Anthropic 0..1 */
        cJSON_AddNumberToObject(out, "temperature", temp->valuedouble > 1 ? 1 : temp->valuedouble);
    const cJSON *top_p = cJSON_GetObjectItemCaseSensitive(req, "top_p");
    if (cJSON_IsNumber(top_p)) cJSON_AddNumberToObject(out, "top_p", top_p->valuedouble);
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "stream")))
        cJSON_AddTrueToObject(out, "stream");
    const char *user = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(req, "user"));
    if (user) cJSON_AddStringToObject(cJSON_AddObjectToObject(out, "metadata"), "user_id", user);
    if (translate_tools(out, req, field) < 0) goto done;
    text = cJSON_PrintUnformatted(out);
    *rc = text ? 0 : -1;
    if (text) *out_len = strlen(text);
done:
    cJSON_Delete(req);
    cJSON_Delete(out);
    return text;
}

static int anthropic_build(const struct adapter_call *c, struct adapter_out *out)
{
    const struct provider_conf *p = c->provider;
    out->unsupported[0] = '\0';
    if (c->endpoint != ADAPTER_CHAT) return ADAPTER_UNSUPPORTED;
    int n = snprintf(out->url, sizeof out->url, "%s/messages", p->base_url);
    if (n <= 0 || (size_t)n >= sizeof out->url) return -1;
    int rc;
    out->body = anthropic_request_from_openai(c->body, c->body_len, c->upstream_model,
                                              &out->body_len, &rc, out->unsupported);
    if (!out->body) return rc;
    out->n_headers = 0;
    snprintf(out->headers[out->n_headers++], sizeof out->headers[0], "anthropic-version: %s",
             p->anthropic_version ? p->anthropic_version : "2023-06-01");
    if (p->api_key)
        snprintf(out->headers[out->n_headers++], sizeof out->headers[0], "x-api-key: %s",
                 p->api_key);
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Answers: Messages -> OpenAI                                               */
/* ------------------------------------------------------------------------- */

static const char *finish_reason(const char *stop)
{
    if (!stop) return NULL;
    if (strcmp(stop, "max_tokens") == 0) return "length";
    if (strcmp(stop, "tool_use") == 0) return "tool_calls";
    if (strcmp(stop, "refusal") == 0) return "content_filter";
    return "stop"; /* end_turn, stop_sequence, pause_turn */
}

static void add_usage(cJSON *o, long in, long out, long cached)
{
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)in);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)out);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(in + out));
    if (cached)
        cJSON_AddNumberToObject(cJSON_AddObjectToObject(u, "prompt_tokens_details"),
                                "cached_tokens", (double)cached);
}

/* A number field of the upstream's JSON; 0 when absent, not a number or beyond +-1e15, so
 * that the cast is defined and the token sums below cannot overflow. */
static long num(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsNumber(v) && fabs(v->valuedouble) <= 1e15 ? (long)v->valuedouble : 0;
}

/* Anthropic counts cached input apart; OpenAI's prompt_tokens includes it. */
static void usage_of(const cJSON *u, long *in, long *out, long *cached)
{
    *cached = num(u, "cache_read_input_tokens");
    *in = num(u, "input_tokens") + *cached + num(u, "cache_creation_input_tokens");
    *out = num(u, "output_tokens");
}

static char *print(cJSON *o, size_t *out_len)
{
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (s) *out_len = strlen(s);
    return s;
}

static char *error_to_openai(long status, const cJSON *doc, size_t *out_len)
{
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(doc, "error");
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(err, "type"));
    const char *msg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(err, "message"));
    cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
    char fallback[64];
    snprintf(fallback, sizeof fallback, "The upstream provider returned HTTP %ld.", status);
    cJSON_AddStringToObject(e, "message", msg ? msg : fallback);
    cJSON_AddStringToObject(e, "type",
                            status == 429                    ? "rate_limit_error"
                            : status >= 500                  ? "server_error"
                            : type && strstr(type, "authen") ? "authentication_error"
                                                             : "invalid_request_error");
    cJSON_AddNullToObject(e, "param");
    if (type && strcmp(type, "rate_limit_error") == 0)
        cJSON_AddStringToObject(e, "code", "rate_limit_exceeded");
    else if (type)
        cJSON_AddStringToObject(e, "code", type);
    else
        cJSON_AddNullToObject(e, "code");
    return print(o, out_len);
}

static char *anthropic_finish(const struct adapter_call *c, long status, const char *body,
                              size_t len, size_t *out_len)
{
    (void)c;
    cJSON *doc = jsonv_parse(body, len);
    char *s = NULL;
    if (!cJSON_IsObject(doc)) goto out;
    if (status != 200) {
        s = error_to_openai(status, doc, out_len);
        goto out;
    }
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(doc, "content");
    const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "id"));
    const char *model = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "model"));
    if (!cJSON_IsArray(content) || !id) goto out;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", "chat.completion");
    cJSON_AddNumberToObject(o, "created", (double)time(NULL));
    cJSON_AddStringToObject(o, "model", model ? model : c->upstream_model);
    cJSON *choice = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), choice);
    cJSON_AddNumberToObject(choice, "index", 0);
    cJSON *msg = cJSON_AddObjectToObject(choice, "message");
    cJSON_AddStringToObject(msg, "role", "assistant");
    size_t text_len = 0;
    const cJSON *b;
    cJSON_ArrayForEach(b, content)
    {
        const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "text"));
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "type"));
        if (t && type && strcmp(type, "text") == 0) text_len += strlen(t);
    }
    char *text = malloc(text_len + 1);
    cJSON *calls = NULL;
    if (!text) {
        cJSON_Delete(o);
        goto out;
    }
    text[0] = '\0';
    cJSON_ArrayForEach(b, content)
    {
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "type"));
        if (!type) continue;
        if (strcmp(type, "text") == 0) {
            const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "text"));
            if (t) strcat(text, t);
        } else if (strcmp(type, "tool_use") == 0) {
            if (!calls) calls = cJSON_CreateArray();
            cJSON *tc = cJSON_CreateObject(), *fn;
            const cJSON *input = cJSON_GetObjectItemCaseSensitive(b, "input");
            char *args = input ? cJSON_PrintUnformatted(input) : NULL;
            cJSON_AddStringToObject(
                tc, "id", cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "id")) ?: "");
            cJSON_AddStringToObject(tc, "type", "function");
            fn = cJSON_AddObjectToObject(tc, "function");
            cJSON_AddStringToObject(
                fn, "name",
                cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "name")) ?: "");
            cJSON_AddStringToObject(fn, "arguments", args ? args : "{}");
            free(args);
            cJSON_AddItemToArray(calls, tc);
        }
    }
    if (text[0] || !calls)
        cJSON_AddStringToObject(msg, "content", text);
    else
        cJSON_AddNullToObject(msg, "content");
    free(text);
    cJSON_AddNullToObject(msg, "refusal");
    if (calls) cJSON_AddItemToObject(msg, "tool_calls", calls);
    cJSON_AddNullToObject(choice, "logprobs");
    const char *fr =
        finish_reason(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "stop_reason")));
    cJSON_AddStringToObject(choice, "finish_reason", fr ? fr : "stop");
    long in, outt, cached;
    usage_of(cJSON_GetObjectItemCaseSensitive(doc, "usage"), &in, &outt, &cached);
    add_usage(o, in, outt, cached);
    s = print(o, out_len);
out:
    cJSON_Delete(doc);
    return s;
}

static int anthropic_classify(long status, const char *body, size_t len)
{
    cJSON *doc = len ? cJSON_ParseWithLength(body, len) : NULL;
    const char *type = cJSON_GetStringValue(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(doc, "error"), "type"));
    const char *msg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(doc, "error"), "message"));
    int f = -1;
    if (status == 429)
        f = PF_RATE_LIMITED;
    else if (status == 529 || status == 503 || (type && strcmp(type, "overloaded_error") == 0))
        f = PF_OVERLOADED;
    else if (status >= 500 || status < 200)
        f = PF_SERVER_ERROR;
    else if (status == 413 ||
             (status == 400 && msg &&
              (strstr(msg, "prompt is too long") || strstr(msg, "context window"))))
        f = PF_CONTEXT_LENGTH;
    cJSON_Delete(doc);
    return f;
}

/* ------------------------------------------------------------------------- */
/* Streams                                                                   */
/* ------------------------------------------------------------------------- */

struct anth_stream {
    char id[128], model[256];
    long created;
    long in, out, cached;
    bool include_usage;
    bool started;
    int tool_of_block[MAX_BLOCKS]; /* content block index -> tool_calls index, -1 = text */
    int n_tools;
};

static void *anthropic_stream_new(const struct adapter_call *c)
{
    struct anth_stream *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    st->created = (long)time(NULL);
    snprintf(st->model, sizeof st->model, "%s", c->upstream_model);
    snprintf(st->id, sizeof st->id, "msg");
    cJSON *req = cJSON_ParseWithLength(c->body, c->body_len);
    st->include_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(req, "stream_options"), "include_usage"));
    cJSON_Delete(req);
    for (int i = 0; i < MAX_BLOCKS; i++)
        st->tool_of_block[i] = -1;
    return st;
}

static void anthropic_stream_free(void *st)
{
    free(st);
}

/* A chat.completion.chunk skeleton; choices gets one choice with delta unless usage_only. */
static cJSON *chunk(const struct anth_stream *st, cJSON **delta, bool usage_only)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", st->id);
    cJSON_AddStringToObject(o, "object", "chat.completion.chunk");
    cJSON_AddNumberToObject(o, "created", (double)st->created);
    cJSON_AddStringToObject(o, "model", st->model);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    if (usage_only) return o;
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    *delta = cJSON_AddObjectToObject(c, "delta");
    cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddNullToObject(c, "finish_reason");
    return o;
}

static void emit_json(cJSON *o, adapter_emit_fn emit, void *ud)
{
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (s) emit(ud, s, strlen(s));
    free(s);
}

static int block_index(const cJSON *ev)
{
    long i = num(ev, "index");
    return i >= 0 && i < MAX_BLOCKS ? (int)i : -1;
}

static int anthropic_stream_event(void *sp, const char *event, size_t elen, const char *data,
                                  size_t dlen, adapter_emit_fn emit, void *ud, int *failure)
{
    (void)event;
    (void)elen;
    struct anth_stream *st = sp;
    cJSON *ev = jsonv_parse(data, dlen);
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ev, "type"));
    int rc = 0;
    cJSON *delta = NULL, *o;
    *failure = PF_SERVER_ERROR;
    if (!type) {
        rc = -1;
    } else if (strcmp(type, "message_start") == 0) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(ev, "message");
        const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "id"));
        const char *model = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "model"));
        if (id) snprintf(st->id, sizeof st->id, "%s", id);
        if (model) snprintf(st->model, sizeof st->model, "%s", model);
        usage_of(cJSON_GetObjectItemCaseSensitive(m, "usage"), &st->in, &st->out, &st->cached);
        st->started = true;
        o = chunk(st, &delta, false);
        cJSON_AddStringToObject(delta, "role", "assistant");
        cJSON_AddStringToObject(delta, "content", "");
        emit_json(o, emit, ud);
    } else if (strcmp(type, "content_block_start") == 0) {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(ev, "content_block");
        const char *bt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "type"));
        int bi = block_index(ev);
        if (bt && strcmp(bt, "tool_use") == 0 && bi >= 0) {
            int ti = st->tool_of_block[bi] = st->n_tools++;
            o = chunk(st, &delta, false);
            cJSON *tc = cJSON_CreateObject(), *fn;
            cJSON_AddItemToArray(cJSON_AddArrayToObject(delta, "tool_calls"), tc);
            cJSON_AddNumberToObject(tc, "index", ti);
            cJSON_AddStringToObject(
                tc, "id", cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "id")) ?: "");
            cJSON_AddStringToObject(tc, "type", "function");
            fn = cJSON_AddObjectToObject(tc, "function");
            cJSON_AddStringToObject(
                fn, "name",
                cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "name")) ?: "");
            cJSON_AddStringToObject(fn, "arguments", "");
            emit_json(o, emit, ud);
        } else if (bt && strcmp(bt, "text") == 0) {
            const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "text"));
            if (t && t[0]) {
                o = chunk(st, &delta, false);
                cJSON_AddStringToObject(delta, "content", t);
                emit_json(o, emit, ud);
            }
        }
    } else if (strcmp(type, "content_block_delta") == 0) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(ev, "delta");
        const char *dt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "type"));
        int bi = block_index(ev);
        if (dt && strcmp(dt, "text_delta") == 0) {
            const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "text"));
            if (!t) {
                rc = -1;
            } else {
                o = chunk(st, &delta, false);
                cJSON_AddStringToObject(delta, "content", t);
                emit_json(o, emit, ud);
            }
        } else if (dt && strcmp(dt, "input_json_delta") == 0 && bi >= 0 &&
                   st->tool_of_block[bi] >= 0) {
            const char *pj =
                cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "partial_json"));
            o = chunk(st, &delta, false);
            cJSON *tc = cJSON_CreateObject();
            cJSON_AddItemToArray(cJSON_AddArrayToObject(delta, "tool_calls"), tc);
            cJSON_AddNumberToObject(tc, "index", st->tool_of_block[bi]);
            cJSON_AddStringToObject(cJSON_AddObjectToObject(tc, "function"), "arguments",
                                    pj ? pj : "");
            emit_json(o, emit, ud);
        } /* thinking and signature deltas have no OpenAI counterpart */
    } else if (strcmp(type, "message_delta") == 0) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(ev, "delta");
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(ev, "usage");
        if (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(u, "output_tokens")))
            st->out = num(u, "output_tokens");
        const char *fr =
            finish_reason(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "stop_reason")));
        if (fr) {
            o = chunk(st, &delta, false);
            cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "choices"), 0);
            cJSON_ReplaceItemInObjectCaseSensitive(c, "finish_reason", cJSON_CreateString(fr));
            emit_json(o, emit, ud);
        }
    } else if (strcmp(type, "message_stop") == 0) {
        if (st->include_usage) {
            o = chunk(st, &delta, true);
            add_usage(o, st->in, st->out, st->cached);
            emit_json(o, emit, ud);
        }
        emit(ud, "[DONE]", 6);
        rc = 1;
    } else if (strcmp(type, "error") == 0) {
        const char *et = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(ev, "error"), "type"));
        if (et && strcmp(et, "overloaded_error") == 0) *failure = PF_OVERLOADED;
        if (et && strcmp(et, "rate_limit_error") == 0) *failure = PF_RATE_LIMITED;
        rc = ADAPTER_STREAM_ERROR; /* well-formed: the upstream's own report, not garbage */
    } /* ping, content_block_stop and unknown new event types: nothing to send */
    cJSON_Delete(ev);
    return rc;
}

const struct adapter adapter_anthropic = {
    .name = "anthropic",
    .build = anthropic_build,
    .classify = anthropic_classify,
    .stream_new = anthropic_stream_new,
    .stream_event = anthropic_stream_event,
    .stream_free = anthropic_stream_free,
    .finish = anthropic_finish,
};
