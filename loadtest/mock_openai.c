/* OpenAI-shaped bodies and SSE chunks written by llmgate-mock. Output is a pure
 * function of the inputs (id, created, model, token counts, input text), so
 * tests can predict it. Written with printf into evbuffers: no JSON tree on
 * the hot path. */
#include "loadtest/mock.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const fault_names[] = {
    [FAULT_NONE] = "none",
    [FAULT_429] = "429",
    [FAULT_500] = "500",
    [FAULT_503] = "503",
    [FAULT_HANG] = "hang",
    [FAULT_RESET] = "reset",
    [FAULT_RESET_MID_STREAM] = "reset-mid-stream",
    [FAULT_MALFORMED] = "malformed",
    [FAULT_NO_DONE] = "no-done",
    [FAULT_HANG_MID_STREAM] = "hang-mid-stream",
    [FAULT_OVERLOADED_STREAM] = "overloaded-stream",
    [FAULT_OVERLOADED_MID_STREAM] = "overloaded-mid-stream",
};

int mock_fault_parse(const char *name, enum mock_fault *out)
{
    for (size_t i = 0; i < sizeof fault_names / sizeof fault_names[0]; i++) {
        if (strcmp(name, fault_names[i]) == 0) {
            *out = (enum mock_fault)i;
            return 0;
        }
    }
    return -1;
}

const char *mock_fault_name(enum mock_fault f)
{
    return fault_names[f];
}

void mockj_escape(struct evbuffer *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0; /* start of the current run of bytes that need no escaping */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        if (i > run) evbuffer_add(out, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': evbuffer_add(out, "\\\"", 2); break;
        case '\\': evbuffer_add(out, "\\\\", 2); break;
        case '\n': evbuffer_add(out, "\\n", 2); break;
        case '\r': evbuffer_add(out, "\\r", 2); break;
        case '\t': evbuffer_add(out, "\\t", 2); break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            evbuffer_add(out, u, sizeof u);
        }
        }
    }
    if (n > run) evbuffer_add(out, s + run, n - run);
}

static void add_str(struct evbuffer *out, const char *s)
{
    evbuffer_add(out, "\"", 1);
    mockj_escape(out, s, strlen(s));
    evbuffer_add(out, "\"", 1);
}

/* ------------------------------------------------------------------------ */
/* Prompt accounting                                                         */

/* Bytes of text in a chat message content: a string or an array of parts. */
static int content_bytes(const cJSON *content, size_t *bytes)
{
    if (content == NULL || cJSON_IsNull(content)) return 0;
    if (cJSON_IsString(content)) {
        *bytes += strlen(content->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(content)) return -1;
    const cJSON *part;
    cJSON_ArrayForEach(part, content)
    {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (cJSON_IsString(text)) *bytes += strlen(text->valuestring);
    }
    return 0;
}

/* Bytes of a prompt/input: string, array of strings, token array or array of token arrays.
 * Token ids count 4 bytes each so that they come out as one token apiece. */
static int input_bytes(const cJSON *in, size_t *bytes)
{
    if (cJSON_IsString(in)) {
        *bytes += strlen(in->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(in)) return -1;
    const cJSON *el;
    cJSON_ArrayForEach(el, in)
    {
        if (cJSON_IsString(el))
            *bytes += strlen(el->valuestring);
        else if (cJSON_IsNumber(el))
            *bytes += 4;
        else if (cJSON_IsArray(el))
            *bytes += 4 * (size_t)cJSON_GetArraySize(el);
        else
            return -1;
    }
    return 0;
}

static int tokens_of(size_t bytes)
{
    size_t t = bytes / 4;
    if (t < 1) t = 1;
    if (t > 1000000000) t = 1000000000;
    return (int)t;
}

int mock_prompt_tokens(const cJSON *req, enum mock_endpoint ep, const char **param)
{
    size_t bytes = 0;
    if (ep == EP_CHAT) {
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages");
        *param = "messages";
        if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) return -1;
        const cJSON *m;
        cJSON_ArrayForEach(m, msgs)
        {
            if (!cJSON_IsObject(m)) return -1;
            if (content_bytes(cJSON_GetObjectItemCaseSensitive(m, "content"), &bytes) != 0)
                return -1;
        }
    } else {
        *param = ep == EP_EMBEDDINGS ? "input" : "prompt";
        const cJSON *in =
            cJSON_GetObjectItemCaseSensitive(req, ep == EP_EMBEDDINGS ? "input" : "prompt");
        if (input_bytes(in, &bytes) != 0) return -1;
    }
    return tokens_of(bytes);
}

/* ------------------------------------------------------------------------ */
/* Completions                                                               */

static void add_tokens(struct evbuffer *out, int from, int to)
{
    for (int k = from; k < to; k++)
        evbuffer_add_printf(out, "tok%d ", k);
}

static void add_usage(struct evbuffer *out, const struct mock_gen *g)
{
    evbuffer_add_printf(out,
                        "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,"
                        "\"total_tokens\":%d}",
                        g->prompt_tokens, g->tokens, g->prompt_tokens + g->tokens);
}

static void add_head(struct evbuffer *out, const struct mock_gen *g, const char *object)
{
    evbuffer_add_printf(
        out, "{\"id\":\"%s-mock-%llu\",\"object\":\"%s\",\"created\":%ld,\"model\":",
        g->ep == EP_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)g->id, object, g->created);
    add_str(out, g->model);
}

static const char *finish_of(const struct mock_gen *g)
{
    return g->finish_length ? "length" : "stop";
}

void mock_body_completion(struct evbuffer *out, const struct mock_gen *g)
{
    if (g->ep == EP_CHAT) {
        add_head(out, g, "chat.completion");
        evbuffer_add_printf(out, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                                 "\"content\":\"");
        add_tokens(out, 0, g->tokens);
        evbuffer_add_printf(out,
                            "\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"%s\"}],",
                            finish_of(g));
    } else {
        add_head(out, g, "text_completion");
        evbuffer_add_printf(out, ",\"choices\":[{\"text\":\"");
        add_tokens(out, 0, g->tokens);
        evbuffer_add_printf(out, "\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"%s\"}],",
                            finish_of(g));
    }
    add_usage(out, g);
    evbuffer_add_printf(out, ",\"system_fingerprint\":null}");
}

/* ------------------------------------------------------------------------ */
/* Streaming chunks                                                          */

static void sse_head(struct evbuffer *out, const struct mock_gen *g)
{
    evbuffer_add(out, "data: ", 6);
    add_head(out, g, g->ep == EP_CHAT ? "chat.completion.chunk" : "text_completion");
}

void mock_sse_role(struct evbuffer *out, const struct mock_gen *g)
{
    sse_head(out, g);
    evbuffer_add_printf(out, ",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
                             "\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
}

void mock_sse_token(struct evbuffer *out, const struct mock_gen *g, int k)
{
    sse_head(out, g);
    if (g->ep == EP_CHAT)
        evbuffer_add_printf(out,
                            ",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok%d \"},"
                            "\"logprobs\":null,\"finish_reason\":null}]}\n\n",
                            k);
    else
        evbuffer_add_printf(out,
                            ",\"choices\":[{\"text\":\"tok%d \",\"index\":0,\"logprobs\":null,"
                            "\"finish_reason\":null}]}\n\n",
                            k);
}

void mock_sse_finish(struct evbuffer *out, const struct mock_gen *g)
{
    sse_head(out, g);
    if (g->ep == EP_CHAT)
        evbuffer_add_printf(out,
                            ",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,"
                            "\"finish_reason\":\"%s\"}]}\n\n",
                            finish_of(g));
    else
        evbuffer_add_printf(out,
                            ",\"choices\":[{\"text\":\"\",\"index\":0,\"logprobs\":null,"
                            "\"finish_reason\":\"%s\"}]}\n\n",
                            finish_of(g));
}

void mock_sse_usage(struct evbuffer *out, const struct mock_gen *g)
{
    sse_head(out, g);
    evbuffer_add_printf(out, ",\"choices\":[],");
    add_usage(out, g);
    evbuffer_add_printf(out, "}\n\n");
}

void mock_sse_malformed(struct evbuffer *out, const struct mock_gen *g)
{
    sse_head(out, g);
    evbuffer_add_printf(out, ",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok0 \n\n");
}

void mock_sse_done(struct evbuffer *out)
{
    evbuffer_add(out, "data: [DONE]\n\n", 14);
}

/* ------------------------------------------------------------------------ */
/* Embeddings, models, errors                                                */

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Hash of one input: its text, or its token ids as decimal text. */
static uint64_t input_hash(const cJSON *in)
{
    uint64_t h = 0xcbf29ce484222325ull;
    if (cJSON_IsString(in)) return fnv1a(h, in->valuestring, strlen(in->valuestring));
    const cJSON *t;
    cJSON_ArrayForEach(t, in)
    {
        char num[32];
        int n = snprintf(num, sizeof num, "%.0f,", t->valuedouble);
        h = fnv1a(h, num, (size_t)n);
    }
    return h;
}

static void add_base64(struct evbuffer *out, const unsigned char *p, size_t n)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n) v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n) v |= p[i + 2];
        char q[4] = {tbl[(v >> 18) & 63], tbl[(v >> 12) & 63], i + 1 < n ? tbl[(v >> 6) & 63] : '=',
                     i + 2 < n ? tbl[v & 63] : '='};
        evbuffer_add(out, q, 4);
    }
}

#define MOCK_MAX_DIMENSIONS 4096

static void add_embedding(struct evbuffer *out, const cJSON *in, int index, int dims, int b64)
{
    float v[MOCK_MAX_DIMENSIONS];
    uint64_t h = input_hash(in);
    double norm = 0;
    for (int j = 0; j < dims; j++) {
        uint64_t x = splitmix64(h + (uint64_t)j);
        v[j] = (float)((double)(x >> 11) * 0x1.0p-53 * 2.0 - 1.0);
        norm += (double)v[j] * v[j];
    }
    norm = sqrt(norm);
    for (int j = 0; j < dims && norm > 0; j++)
        v[j] = (float)(v[j] / norm);

    evbuffer_add_printf(
        out, "%s{\"object\":\"embedding\",\"index\":%d,\"embedding\":", index ? "," : "", index);
    if (b64) {
        unsigned char raw[MOCK_MAX_DIMENSIONS * 4];
        for (int j = 0; j < dims; j++) {
            uint32_t u;
            memcpy(&u, &v[j], 4);
            raw[4 * j] = (unsigned char)u;
            raw[4 * j + 1] = (unsigned char)(u >> 8);
            raw[4 * j + 2] = (unsigned char)(u >> 16);
            raw[4 * j + 3] = (unsigned char)(u >> 24);
        }
        evbuffer_add(out, "\"", 1);
        add_base64(out, raw, (size_t)dims * 4);
        evbuffer_add(out, "\"}", 2);
        return;
    }
    evbuffer_add(out, "[", 1);
    for (int j = 0; j < dims; j++)
        evbuffer_add_printf(out, "%s%.8g", j ? "," : "", (double)v[j]);
    evbuffer_add(out, "]}", 2);
}

int mock_body_embeddings(struct evbuffer *out, const cJSON *req, const char *model,
                         const char **msg, const char **param)
{
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(req, "input");
    const cJSON *dj = cJSON_GetObjectItemCaseSensitive(req, "dimensions");
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(req, "encoding_format");
    int dims = 8, b64 = 0;

    if (dj != NULL && !cJSON_IsNull(dj)) {
        if (!cJSON_IsNumber(dj) || dj->valuedouble < 1 || dj->valuedouble > MOCK_MAX_DIMENSIONS ||
            dj->valuedouble != floor(dj->valuedouble)) {
            *msg = "dimensions must be an integer between 1 and 4096";
            *param = "dimensions";
            return -1;
        }
        dims = (int)dj->valuedouble;
    }
    if (fmt != NULL && !cJSON_IsNull(fmt)) {
        if (!cJSON_IsString(fmt) ||
            (strcmp(fmt->valuestring, "float") != 0 && strcmp(fmt->valuestring, "base64") != 0)) {
            *msg = "encoding_format must be 'float' or 'base64'";
            *param = "encoding_format";
            return -1;
        }
        b64 = strcmp(fmt->valuestring, "base64") == 0;
    }
    int ptok = mock_prompt_tokens(req, EP_EMBEDDINGS, param);
    if (ptok < 0 || (cJSON_IsArray(input) && cJSON_GetArraySize(input) == 0)) {
        *msg = "input must be a non-empty string, array of strings or array of token arrays";
        *param = "input";
        return -1;
    }

    evbuffer_add_printf(out, "{\"object\":\"list\",\"data\":[");
    if (cJSON_IsString(input)) {
        add_embedding(out, input, 0, dims, b64);
    } else if (cJSON_IsNumber(cJSON_GetArrayItem(input, 0))) {
        add_embedding(out, input, 0, dims, b64); /* one tokenized input */
    } else {
        int i = 0;
        const cJSON *el;
        cJSON_ArrayForEach(el, input) add_embedding(out, el, i++, dims, b64);
    }
    evbuffer_add_printf(out, "],\"model\":");
    add_str(out, model);
    evbuffer_add_printf(out, ",\"usage\":{\"prompt_tokens\":%d,\"total_tokens\":%d}}", ptok, ptok);
    return 0;
}

static const char *const model_ids[] = {"mock-model", "gpt-4o", "gpt-4o-mini",
                                        "text-embedding-3-small"};

static void add_model(struct evbuffer *out, const char *id)
{
    evbuffer_add_printf(out, "{\"id\":");
    add_str(out, id);
    evbuffer_add_printf(out, ",\"object\":\"model\",\"created\":1700000000,\"owned_by\":\"mock\"}");
}

void mock_body_models(struct evbuffer *out, const char *id)
{
    if (id != NULL) {
        add_model(out, id);
        return;
    }
    evbuffer_add_printf(out, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < sizeof model_ids / sizeof model_ids[0]; i++) {
        if (i) evbuffer_add(out, ",", 1);
        add_model(out, model_ids[i]);
    }
    evbuffer_add(out, "]}", 2);
}

void mock_body_error(struct evbuffer *out, const char *message, const char *type, const char *param,
                     const char *code)
{
    evbuffer_add_printf(out, "{\"error\":{\"message\":");
    add_str(out, message);
    evbuffer_add_printf(out, ",\"type\":");
    add_str(out, type);
    evbuffer_add_printf(out, ",\"param\":");
    if (param)
        add_str(out, param);
    else
        evbuffer_add(out, "null", 4);
    evbuffer_add_printf(out, ",\"code\":");
    if (code)
        add_str(out, code);
    else
        evbuffer_add(out, "null", 4);
    evbuffer_add(out, "}}", 2);
}
