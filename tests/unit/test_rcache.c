/* cache/rcache.c: the canonical key (key order, number forms, unicode escapes;
 * every output-affecting field class changes the key, every irrelevant one does
 * not), the entry format and its validation, stream assembly and SSE replay,
 * and the per-worker L1 (byte budget, lifetime, scopes, invalidation). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/rcache.h"
#include "cache/rcache_l1.h"

static const char *BASE = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                          "\"temperature\":0,\"max_tokens\":16}";

/* The canonical form and key of body for provider p / upstream model um. */
static int key_of(const char *body, const char *endpoint, const char *p, const char *um,
                  const struct rcache_header *h, size_t nh, uint8_t key[RCACHE_KEY_LEN],
                  char **canon)
{
    cJSON *doc = cJSON_Parse(body);
    assert_non_null(doc);
    struct rcache_key_input in = {.endpoint = endpoint,
                                  .provider = p,
                                  .upstream_model = um,
                                  .body = doc,
                                  .headers = h,
                                  .n_headers = nh};
    struct rcache_buf b = {0};
    int rc = rcache_key_build(&in, &b, key);
    cJSON_Delete(doc);
    if (canon) *canon = b.p ? strdup(b.p) : NULL;
    rcache_buf_free(&b);
    return rc;
}

static void key_simple(const char *body, uint8_t key[RCACHE_KEY_LEN])
{
    assert_int_equal(key_of(body, "chat.completions", "prov", "up", NULL, 0, key, NULL), 0);
}

static void assert_same(const char *a, const char *b)
{
    uint8_t ka[RCACHE_KEY_LEN], kb[RCACHE_KEY_LEN];
    key_simple(a, ka);
    key_simple(b, kb);
    if (memcmp(ka, kb, sizeof ka) != 0) fail_msg("keys differ:\n  %s\n  %s", a, b);
}

static void assert_differs(const char *a, const char *b)
{
    uint8_t ka[RCACHE_KEY_LEN], kb[RCACHE_KEY_LEN];
    key_simple(a, ka);
    key_simple(b, kb);
    if (memcmp(ka, kb, sizeof ka) == 0) fail_msg("keys equal:\n  %s\n  %s", a, b);
}

/* ---------------------------------------------------------------- canonicalisation */

static void test_canonical_form(void **state)
{
    (void)state;
    uint8_t k[RCACHE_KEY_LEN];
    char *c = NULL;
    struct rcache_header h[] = {{"X-Mock-Tokens", "5"}, {"x-a", "1"}};
    assert_int_equal(key_of("{ \"z\" : 1.50, \"a\":[true,null,\"\\u00e9\\n\"], \"model\":\"x\", "
                            "\"stream\":true, \"user\":\"u\", \"stream_options\":{} }",
                            "chat.completions", "p", "um", h, 2, k, &c),
                     0);
    assert_string_equal(c, "[\"llmgate-rc-1\",\"chat.completions\",\"p\",\"um\","
                           "[[\"x-a\",\"1\"],[\"x-mock-tokens\",\"5\"]],"
                           "{\"a\":[true,null,\"\xc3\xa9\\n\"],\"z\":1.5}]");
    free(c);
}

static void test_key_order(void **state)
{
    (void)state;
    assert_same("{\"a\":1,\"b\":2,\"messages\":[]}", "{\"messages\":[],\"b\":2,\"a\":1}");
    assert_same("{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":"
                "{\"type\":\"object\",\"properties\":{\"x\":{},\"y\":{}}}}}]}",
                "{\"tools\":[{\"function\":{\"parameters\":{\"properties\":{\"y\":{},\"x\":{}},"
                "\"type\":\"object\"},\"name\":\"f\"},\"type\":\"function\"}]}");
    /* Array order is meaningful. */
    assert_differs("{\"stop\":[\"a\",\"b\"]}", "{\"stop\":[\"b\",\"a\"]}");
    /* Whitespace is not. */
    assert_same("{\"a\" : [ 1 , 2 ] }", "{\"a\":[1,2]}");
}

static void test_number_forms(void **state)
{
    (void)state;
    assert_same("{\"t\":1}", "{\"t\":1.0}");
    assert_same("{\"t\":1}", "{\"t\":1e0}");
    assert_same("{\"t\":1}", "{\"t\":10E-1}");
    assert_same("{\"t\":100}", "{\"t\":1e2}");
    assert_same("{\"t\":0.1}", "{\"t\":0.10}");
    assert_same("{\"t\":0}", "{\"t\":-0}");
    assert_same("{\"t\":0}", "{\"t\":0.0e5}");
    assert_same("{\"t\":0.7}", "{\"t\":7e-1}");
    assert_differs("{\"t\":0.7}", "{\"t\":0.70001}");
    assert_differs("{\"t\":1}", "{\"t\":\"1\"}");
    uint8_t k[RCACHE_KEY_LEN];
    char *c;
    assert_int_equal(key_of("{\"a\":0.1,\"b\":1e300,\"c\":-2.5e-7,\"d\":123456789}", "e", "p", "m",
                            NULL, 0, k, &c),
                     0);
    assert_non_null(strstr(c, "{\"a\":0.1,\"b\":1e+300,\"c\":-2.5e-07,\"d\":123456789}"));
    free(c);
}

static void test_unicode_escapes(void **state)
{
    (void)state;
    assert_same("{\"c\":\"\\u00e9\"}", "{\"c\":\"\xc3\xa9\"}");
    assert_same("{\"c\":\"\\u0041\\/\"}", "{\"c\":\"A/\"}");
    assert_same("{\"c\":\"\\ud83d\\ude00\"}", "{\"c\":\"\xf0\x9f\x98\x80\"}");
    assert_same("{\"\\u0063\":1}", "{\"c\":1}"); /* keys too */
    assert_same("{\"c\":\"\\u000a\"}", "{\"c\":\"\\n\"}");
    assert_differs("{\"c\":\"e\"}", "{\"c\":\"\xc3\xa9\"}");
    assert_differs("{\"c\":\"a\\\"b\"}", "{\"c\":\"a\\\\b\"}");
}

/* ---------------------------------------------------------------- sensitivity */

/* BASE with one field set to a JSON value (replaced, or added). */
static char *with(const char *field, const char *json)
{
    cJSON *doc = cJSON_Parse(BASE), *v = cJSON_Parse(json);
    assert_non_null(v);
    if (cJSON_GetObjectItemCaseSensitive(doc, field))
        cJSON_ReplaceItemInObjectCaseSensitive(doc, field, v);
    else
        cJSON_AddItemToObject(doc, field, v);
    char *s = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    return s;
}

static void test_output_fields_change_key(void **state)
{
    (void)state;
    static const struct {
        const char *field, *value;
    } fields[] = {
        {"messages", "[{\"role\":\"user\",\"content\":\"hi!\"}]"},
        {"messages", "[{\"role\":\"system\",\"content\":\"hi\"}]"},
        {"messages", "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}]"},
        {"prompt", "\"hi\""},
        {"input", "\"hi\""},
        {"temperature", "0.2"},
        {"top_p", "0.9"},
        {"max_tokens", "17"},
        {"max_completion_tokens", "16"},
        {"seed", "42"},
        {"stop", "[\"\\n\"]"},
        {"n", "2"},
        {"presence_penalty", "0.5"},
        {"frequency_penalty", "0.5"},
        {"logit_bias", "{\"50256\":-100}"},
        {"logprobs", "true"},
        {"top_logprobs", "2"},
        {"tools", "[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]"},
        {"tool_choice", "\"required\""},
        {"parallel_tool_calls", "false"},
        {"response_format", "{\"type\":\"json_object\"}"},
        {"reasoning_effort", "\"low\""},
        {"some_vendor_extension", "1"}, /* unknown fields are forwarded: they count */
    };
    uint8_t base[RCACHE_KEY_LEN], k[RCACHE_KEY_LEN];
    key_simple(BASE, base);
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        char *s = with(fields[i].field, fields[i].value);
        key_simple(s, k);
        if (memcmp(base, k, sizeof k) == 0) fail_msg("%s does not change the key", fields[i].field);
        free(s);
    }
    /* Resolved provider, upstream model, endpoint and forwarded headers. */
    struct rcache_header h1[] = {{"x-mock-tokens", "5"}}, h2[] = {{"x-mock-tokens", "6"}};
    uint8_t a[RCACHE_KEY_LEN];
    assert_int_equal(key_of(BASE, "chat.completions", "other", "up", NULL, 0, a, NULL), 0);
    assert_memory_not_equal(a, base, sizeof a);
    assert_int_equal(key_of(BASE, "chat.completions", "prov", "up2", NULL, 0, a, NULL), 0);
    assert_memory_not_equal(a, base, sizeof a);
    assert_int_equal(key_of(BASE, "completions", "prov", "up", NULL, 0, a, NULL), 0);
    assert_memory_not_equal(a, base, sizeof a);
    assert_int_equal(key_of(BASE, "chat.completions", "prov", "up", h1, 1, a, NULL), 0);
    assert_memory_not_equal(a, base, sizeof a);
    assert_int_equal(key_of(BASE, "chat.completions", "prov", "up", h2, 1, k, NULL), 0);
    assert_memory_not_equal(a, k, sizeof a);
    /* Component boundaries are unambiguous. */
    assert_int_equal(key_of(BASE, "chat.completions", "pr", "ovup", NULL, 0, a, NULL), 0);
    assert_int_equal(key_of(BASE, "chat.completions", "prov", "up", NULL, 0, k, NULL), 0);
    assert_memory_not_equal(a, k, sizeof a);
}

static void test_irrelevant_fields_keep_key(void **state)
{
    (void)state;
    static const struct {
        const char *field, *value;
    } fields[] = {
        {"stream", "true"},
        {"stream", "false"},
        {"stream_options", "{\"include_usage\":true}"},
        {"user", "\"alice\""},
        {"model", "\"another-public-alias\""}, /* the resolved upstream model counts instead */
    };
    uint8_t base[RCACHE_KEY_LEN], k[RCACHE_KEY_LEN];
    key_simple(BASE, base);
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        char *s = with(fields[i].field, fields[i].value);
        key_simple(s, k);
        if (memcmp(base, k, sizeof k) != 0) fail_msg("%s changes the key", fields[i].field);
        free(s);
    }
    /* Header name case and order between different names do not matter. */
    struct rcache_header h1[] = {{"X-A", "1"}, {"x-b", "2"}}, h2[] = {{"x-b", "2"}, {"x-a", "1"}};
    uint8_t a[RCACHE_KEY_LEN], b[RCACHE_KEY_LEN];
    assert_int_equal(key_of(BASE, "chat.completions", "p", "u", h1, 2, a, NULL), 0);
    assert_int_equal(key_of(BASE, "chat.completions", "p", "u", h2, 2, b, NULL), 0);
    assert_memory_equal(a, b, sizeof a);
    /* Long names count whole: two differing only past 200 bytes give two keys, and
     * their case still does not matter. */
    char n1[260], n2[260], n3[260];
    memset(n1, 'x', 250);
    n1[250] = '\0';
    memcpy(n2, n1, 251);
    memcpy(n3, n1, 251);
    n2[240] = 'y';
    n3[240] = 'Y';
    struct rcache_header l1[] = {{n1, "1"}}, l2[] = {{n2, "1"}}, l3[] = {{n3, "1"}};
    uint8_t c[RCACHE_KEY_LEN];
    assert_int_equal(key_of(BASE, "chat.completions", "p", "u", l1, 1, a, NULL), 0);
    assert_int_equal(key_of(BASE, "chat.completions", "p", "u", l2, 1, b, NULL), 0);
    assert_int_equal(key_of(BASE, "chat.completions", "p", "u", l3, 1, c, NULL), 0);
    assert_memory_not_equal(a, b, sizeof a);
    assert_memory_equal(b, c, sizeof b);
    /* Only top-level "user"/"stream" are irrelevant; nested ones are content. */
    assert_differs("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
                   "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"user\":\"a\"}]}");
}

static void test_key_rejects_non_object(void **state)
{
    (void)state;
    uint8_t k[RCACHE_KEY_LEN];
    cJSON *arr = cJSON_Parse("[1]");
    struct rcache_key_input in = {
        .endpoint = "e", .provider = "p", .upstream_model = "m", .body = arr};
    assert_int_equal(rcache_key_build(&in, NULL, k), -1);
    cJSON_Delete(arr);
}

/* The key is the same whether the serialisation fits the stack buffer or not,
 * and with or without a canon buffer. */
static void test_key_large_body(void **state)
{
    (void)state;
    size_t n = 10000;
    char *body = malloc(n + 64);
    int k = snprintf(body, n + 64, "{\"t\":-42,\"c\":\"");
    memset(body + k, 'x', n);
    strcpy(body + k + n, "\"}");
    uint8_t a[RCACHE_KEY_LEN], b[RCACHE_KEY_LEN];
    char *canon;
    assert_int_equal(key_of(body, "e", "p", "m", NULL, 0, a, &canon), 0);
    assert_non_null(strstr(canon, "\"t\":-42}"));
    free(canon);
    cJSON *doc = cJSON_Parse(body);
    struct rcache_key_input in = {
        .endpoint = "e", .provider = "p", .upstream_model = "m", .body = doc};
    assert_int_equal(rcache_key_build(&in, NULL, b), 0);
    assert_memory_equal(a, b, sizeof a);
    cJSON_Delete(doc);
    free(body);
}

static void test_redis_key(void **state)
{
    (void)state;
    uint8_t k[RCACHE_KEY_LEN];
    memset(k, 0xab, sizeof k);
    char key[200], lock[220];
    int n = rcache_redis_key("llmgate:", "acme", k, key, sizeof key, lock, sizeof lock);
    assert_int_equal(n, (int)strlen(key));
    assert_int_equal(strncmp(key, "llmgate:rc:{acme}:abababab", 26), 0);
    assert_int_equal(strlen(key), strlen("llmgate:rc:{acme}:") + 64);
    assert_string_equal(lock + strlen(key), ":lock");
    assert_int_equal(rcache_redis_key("p", "s", k, key, 20, NULL, 0), -1);
}

/* ---------------------------------------------------------------- entries */

static void test_entry_round_trip_and_corruption(void **state)
{
    (void)state;
    uint8_t k[RCACHE_KEY_LEN], other[RCACHE_KEY_LEN];
    memset(k, 7, sizeof k);
    memset(other, 8, sizeof other);
    const char *body = "{\"choices\":[]}";
    struct rcache_entry e = {.kind = RCACHE_COMPLETIONS,
                             .created_ms = 1700000000123ull,
                             .prompt_tokens = 11,
                             .completion_tokens = 22,
                             .body = body,
                             .body_len = strlen(body)};
    size_t len;
    char *enc = rcache_entry_encode(&e, k, &len);
    assert_non_null(enc);
    assert_int_equal(len, RCACHE_HEADER_LEN + strlen(body));
    struct rcache_entry d;
    assert_int_equal(rcache_entry_decode(enc, len, k, &d), 0);
    assert_int_equal(d.kind, RCACHE_COMPLETIONS);
    assert_true(d.created_ms == 1700000000123ull);
    assert_int_equal(d.prompt_tokens, 11);
    assert_int_equal(d.completion_tokens, 22);
    assert_int_equal(d.body_len, strlen(body));
    assert_memory_equal(d.body, body, d.body_len);

    assert_int_equal(rcache_entry_decode(enc, len, other, &d), -1); /* another key's entry */
    for (size_t cut = 0; cut < len; cut++)                          /* every truncation */
        assert_int_equal(rcache_entry_decode(enc, cut, k, &d), -1);
    char *bad = malloc(len + 1);
    memcpy(bad, enc, len);
    bad[0] = 'X'; /* magic */
    assert_int_equal(rcache_entry_decode(bad, len, k, &d), -1);
    memcpy(bad, enc, len);
    bad[4] = RCACHE_ENTRY_VERSION + 1; /* another version */
    assert_int_equal(rcache_entry_decode(bad, len, k, &d), -1);
    memcpy(bad, enc, len);
    bad[5] = 9; /* kind */
    assert_int_equal(rcache_entry_decode(bad, len, k, &d), -1);
    memcpy(bad, enc, len);
    bad[len - 1] = ','; /* body no longer JSON */
    assert_int_equal(rcache_entry_decode(bad, len, k, &d), -1);
    memcpy(bad, enc, len);
    bad[len] = ' '; /* trailing byte: length mismatch */
    assert_int_equal(rcache_entry_decode(bad, len + 1, k, &d), -1);
    assert_int_equal(rcache_entry_decode("garbage", 7, k, &d), -1);
    free(bad);
    free(enc);
}

static void test_answer_cacheable(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        bool ok;
    } cases[] = {
        {"{\"choices\":[{\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,"
         "\"completion_tokens\":4}}",
         true},
        {"{\"choices\":[{\"finish_reason\":\"length\"},{\"finish_reason\":\"tool_calls\"}]}", true},
        {"{\"choices\":[{\"finish_reason\":\"content_filter\"}]}", false},
        {"{\"choices\":[{\"finish_reason\":\"stop\"},{\"finish_reason\":null}]}", false},
        {"{\"choices\":[{}]}", false},
        {"{\"choices\":[]}", false},
        {"{\"error\":{\"message\":\"x\"},\"choices\":[{\"finish_reason\":\"stop\"}]}", false},
        {"[]", false},
        /* what a streamed replay reproduces: OpenAI's usual null and empty fields too */
        {"{\"choices\":[{\"index\":0,\"finish_reason\":\"stop\",\"logprobs\":null,\"message\":"
         "{\"role\":\"assistant\",\"content\":\"hi\",\"refusal\":null,\"annotations\":[],"
         "\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\","
         "\"arguments\":\"{}\"}}]}}]}",
         true},
        {"{\"choices\":[{\"index\":0,\"text\":\"hi\",\"logprobs\":null,\"finish_reason\":\"stop\"}]"
         "}",
         true},
        /* ... and what it would drop: never stored, since the key ignores `stream` */
        {"{\"choices\":[{\"finish_reason\":\"stop\",\"logprobs\":{\"content\":[]},\"message\":"
         "{\"content\":\"hi\"}}]}",
         false},
        {"{\"choices\":[{\"finish_reason\":\"stop\",\"message\":{\"content\":\"hi\","
         "\"reasoning_content\":\"why\"}}]}",
         false},
        {"{\"choices\":[{\"finish_reason\":\"stop\",\"message\":{\"content\":null,"
         "\"function_call\":{\"name\":\"f\",\"arguments\":\"{}\"}}}]}",
         false},
        {"{\"choices\":[{\"finish_reason\":\"stop\",\"message\":{\"content\":\"hi\","
         "\"annotations\":[{\"type\":\"url_citation\"}]}}]}",
         false},
        {"{\"choices\":[{\"finish_reason\":\"stop\",\"message\":\"hi\"}]}", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cJSON *d = cJSON_Parse(cases[i].json);
        long p, c;
        if (rcache_answer_cacheable(d, &p, &c) != cases[i].ok) fail_msg("%s", cases[i].json);
        if (i == 0) {
            assert_int_equal(p, 3);
            assert_int_equal(c, 4);
        }
        cJSON_Delete(d);
    }
}

/* ---------------------------------------------------------------- streams */

static void feed(struct rcache_asm *a, const char *json)
{
    cJSON *d = cJSON_Parse(json);
    assert_non_null(d);
    rcache_asm_feed(a, d);
    cJSON_Delete(d);
}

#define HEAD "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"up\","

static void test_asm_chat_text(void **state)
{
    (void)state;
    struct rcache_asm *a = rcache_asm_new(RCACHE_CHAT, 1 << 20);
    feed(a, HEAD "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                 "\"logprobs\":null,\"finish_reason\":null}]}");
    feed(a, HEAD
         "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}");
    feed(a, HEAD "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\u00e9\"}}]}");
    feed(a, HEAD "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}");
    feed(a, HEAD "\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,"
                 "\"total_tokens\":9}}");
    size_t len;
    long p, c;
    char *body = rcache_asm_finish(a, &len, &p, &c);
    assert_non_null(body);
    assert_int_equal(p, 7);
    assert_int_equal(c, 2);
    cJSON *d = cJSON_Parse(body);
    assert_string_equal(cJSON_GetObjectItem(d, "object")->valuestring, "chat.completion");
    assert_string_equal(cJSON_GetObjectItem(d, "id")->valuestring, "c1");
    cJSON *m =
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(d, "choices"), 0), "message");
    assert_string_equal(cJSON_GetObjectItem(m, "content")->valuestring, "Hello \xc3\xa9");
    assert_string_equal(cJSON_GetObjectItem(m, "role")->valuestring, "assistant");
    long pp, cc;
    assert_true(rcache_answer_cacheable(d, &pp, &cc));
    cJSON_Delete(d);

    /* Replayed as SSE and assembled again: the same answer. */
    struct evbuffer *out = evbuffer_new();
    assert_int_equal(rcache_render_sse(body, len, RCACHE_CHAT, true, 2, out), 0);
    size_t n = evbuffer_get_length(out);
    char *sse = malloc(n + 1);
    evbuffer_remove(out, sse, n);
    sse[n] = '\0';
    assert_non_null(strstr(sse, "\"delta\":{\"role\":\"assistant\",\"content\":\"\"}"));
    assert_non_null(strstr(sse, "\"usage\":{\"prompt_tokens\":7"));
    assert_int_equal(strcmp(sse + n - 14, "data: [DONE]\n\n"), 0);
    struct rcache_asm *b = rcache_asm_new(RCACHE_CHAT, 1 << 20);
    int events = 0;
    for (char *line = strtok(sse, "\n"); line; line = strtok(NULL, "\n")) {
        assert_int_equal(strncmp(line, "data: ", 6), 0);
        if (strcmp(line + 6, "[DONE]") == 0) continue;
        feed(b, line + 6);
        events++;
    }
    assert_true(events >= 6); /* role, >= 4 pieces of at most 2 bytes (é whole), finish, usage */
    size_t len2;
    char *body2 = rcache_asm_finish(b, &len2, &p, &c);
    assert_non_null(body2);
    assert_string_equal(body, body2);
    free(body2);
    free(sse);
    rcache_asm_free(b);

    /* Without include_usage: no usage chunk. */
    assert_int_equal(rcache_render_sse(body, len, RCACHE_CHAT, false, 64, out), 0);
    n = evbuffer_get_length(out);
    sse = malloc(n + 1);
    evbuffer_remove(out, sse, n);
    sse[n] = '\0';
    assert_null(strstr(sse, "usage"));
    free(sse);
    evbuffer_free(out);
    free(body);
    rcache_asm_free(a);
}

static void test_asm_tool_calls(void **state)
{
    (void)state;
    struct rcache_asm *a = rcache_asm_new(RCACHE_CHAT, 1 << 20);
    feed(a, HEAD "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,"
                 "\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\","
                 "\"function\":{\"name\":\"get\",\"arguments\":\"\"}}]}}]}");
    feed(a, HEAD "\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
                 "\"function\":{\"arguments\":\"{\\\"a\\\":\"}}]}}]}");
    feed(a, HEAD "\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
                 "\"function\":{\"arguments\":\"1}\"}}]}}]}");
    feed(a, HEAD "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}");
    size_t len;
    long p, c;
    char *body = rcache_asm_finish(a, &len, &p, &c);
    assert_non_null(body);
    assert_non_null(strstr(body, "\"content\":null"));
    assert_non_null(strstr(body,
                           "\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\","
                           "\"function\":{\"name\":\"get\",\"arguments\":\"{\\\"a\\\":1}\"}}]"));
    struct evbuffer *out = evbuffer_new();
    assert_int_equal(rcache_render_sse(body, len, RCACHE_CHAT, false, 64, out), 0);
    size_t n = evbuffer_get_length(out);
    char *sse = malloc(n + 1);
    evbuffer_remove(out, sse, n);
    sse[n] = '\0';
    assert_non_null(strstr(sse, "\"arguments\":\"{\\\"a\\\":1}\""));
    assert_non_null(strstr(sse, "\"finish_reason\":\"tool_calls\""));
    free(sse);
    evbuffer_free(out);
    free(body);
    rcache_asm_free(a);
}

static void test_asm_rejects(void **state)
{
    (void)state;
    size_t len;
    long p, c;
    /* No finish_reason: the stream broke. */
    struct rcache_asm *a = rcache_asm_new(RCACHE_CHAT, 1 << 20);
    feed(a, HEAD "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}");
    assert_null(rcache_asm_finish(a, &len, &p, &c));
    rcache_asm_free(a);
    /* content_filter */
    a = rcache_asm_new(RCACHE_CHAT, 1 << 20);
    feed(a, HEAD "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"content_filter\"}]}");
    assert_null(rcache_asm_finish(a, &len, &p, &c));
    rcache_asm_free(a);
    /* logprobs would not be replayed */
    a = rcache_asm_new(RCACHE_CHAT, 1 << 20);
    feed(a, HEAD "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"logprobs\":"
                 "{\"content\":[]}}]}");
    feed(a, HEAD "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}");
    assert_null(rcache_asm_finish(a, &len, &p, &c));
    rcache_asm_free(a);
    /* an unknown delta field */
    a = rcache_asm_new(RCACHE_CHAT, 1 << 20);
    feed(a, HEAD "\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"x\"}}]}");
    feed(a, HEAD "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}");
    assert_null(rcache_asm_finish(a, &len, &p, &c));
    rcache_asm_free(a);
    /* too large */
    a = rcache_asm_new(RCACHE_CHAT, 4);
    feed(a, HEAD "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"12345\"}}]}");
    feed(a, HEAD "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}");
    assert_null(rcache_asm_finish(a, &len, &p, &c));
    rcache_asm_free(a);
    /* an error event */
    a = rcache_asm_new(RCACHE_CHAT, 1 << 20);
    feed(a, "{\"error\":{\"message\":\"x\"}}");
    assert_null(rcache_asm_finish(a, &len, &p, &c));
    rcache_asm_free(a);
    /* a choice index gap */
    a = rcache_asm_new(RCACHE_CHAT, 1 << 20);
    feed(a, HEAD "\"choices\":[{\"index\":1,\"delta\":{},\"finish_reason\":\"stop\"}]}");
    assert_null(rcache_asm_finish(a, &len, &p, &c));
    rcache_asm_free(a);
    /* nothing at all */
    a = rcache_asm_new(RCACHE_CHAT, 1 << 20);
    assert_null(rcache_asm_finish(a, &len, &p, &c));
    rcache_asm_free(a);
}

static void test_asm_completions_two_choices(void **state)
{
    (void)state;
    struct rcache_asm *a = rcache_asm_new(RCACHE_COMPLETIONS, 1 << 20);
    const char *h =
        "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":9,\"model\":\"u\",";
    char buf[512];
    snprintf(buf, sizeof buf,
             "%s\"choices\":[{\"text\":\"a\",\"index\":1,\"logprobs\":null,"
             "\"finish_reason\":null}]}",
             h);
    feed(a, buf);
    snprintf(buf, sizeof buf,
             "%s\"choices\":[{\"text\":\"b\",\"index\":0,\"logprobs\":null,"
             "\"finish_reason\":\"length\"}]}",
             h);
    feed(a, buf);
    snprintf(buf, sizeof buf,
             "%s\"choices\":[{\"text\":\"c\",\"index\":1,\"logprobs\":null,"
             "\"finish_reason\":\"stop\"}]}",
             h);
    feed(a, buf);
    size_t len;
    long p, c;
    char *body = rcache_asm_finish(a, &len, &p, &c);
    assert_non_null(body);
    assert_non_null(strstr(body, "{\"index\":0,\"text\":\"b\",\"logprobs\":null,"
                                 "\"finish_reason\":\"length\"}"));
    assert_non_null(strstr(body, "{\"index\":1,\"text\":\"ac\""));
    struct evbuffer *out = evbuffer_new();
    assert_int_equal(rcache_render_sse(body, len, RCACHE_COMPLETIONS, true, 64, out), 0);
    assert_true(evbuffer_get_length(out) > 0);
    evbuffer_free(out);
    free(body);
    rcache_asm_free(a);
}

static void test_render_rejects_bad_body(void **state)
{
    (void)state;
    struct evbuffer *out = evbuffer_new();
    assert_int_equal(rcache_render_sse("{", 1, RCACHE_CHAT, false, 64, out), -1);
    assert_int_equal(rcache_render_sse("{\"choices\":[{}]}", 16, RCACHE_CHAT, false, 64, out), -1);
    assert_int_equal(evbuffer_get_length(out), 0);
    evbuffer_free(out);
}

/* ---------------------------------------------------------------- L1 */

static const char *ANSWER =
    "{\"id\":\"c1\",\"object\":\"chat.completion\",\"created\":7,"
    "\"model\":\"m\",\"choices\":[{\"index\":0,\"message\":{\"role\":"
    "\"assistant\",\"content\":\"hello there\"},\"finish_reason\":\"stop\"}],"
    "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,"
    "\"total_tokens\":5}}";

static struct rcache_entry l1_entry(const char *body, uint64_t created_ms)
{
    return (struct rcache_entry){.kind = RCACHE_CHAT,
                                 .created_ms = created_ms,
                                 .prompt_tokens = 3,
                                 .completion_tokens = 2,
                                 .body = body,
                                 .body_len = strlen(body)};
}

/* The Redis key of a scope and a key whose first byte is n. */
static size_t l1_rkey(char *out, size_t cap, const char *scope, int n)
{
    uint8_t k[RCACHE_KEY_LEN] = {(uint8_t)n};
    int len = rcache_redis_key("llmgate:", scope, k, out, cap, NULL, 0);
    assert_true(len > 0);
    return (size_t)len;
}

static const struct rcache_l1_entry *l1_get(struct rcache_l1 *l1, const char *scope, int n,
                                            uint64_t now)
{
    char k[256];
    size_t kl = l1_rkey(k, sizeof k, scope, n);
    return rcache_l1_get(l1, k, kl, now);
}

static int l1_put(struct rcache_l1 *l1, const char *scope, int n, const char *body,
                  uint64_t created, uint64_t expires)
{
    char k[256];
    size_t kl = l1_rkey(k, sizeof k, scope, n);
    struct rcache_entry e = l1_entry(body, created);
    return rcache_l1_put(l1, k, kl, &e, expires);
}

static void test_l1_evicts_least_recently_used_by_bytes(void **state)
{
    (void)state;
    char body[1000];
    memset(body, 'x', sizeof body - 1);
    body[sizeof body - 1] = '\0';
    struct rcache_l1 *l1 = rcache_l1_new(1 << 20);
    assert_non_null(l1);
    assert_int_equal(l1_put(l1, "t", 1, body, 1, 100), 0);
    size_t one = rcache_l1_bytes(l1);
    assert_true(one > sizeof body);
    /* room for exactly three entries */
    rcache_l1_set_max_bytes(l1, 3 * one + one / 2);
    assert_int_equal(l1_put(l1, "t", 2, body, 1, 100), 0);
    assert_int_equal(l1_put(l1, "t", 3, body, 1, 100), 0);
    assert_int_equal(rcache_l1_count(l1), 3);
    assert_non_null(l1_get(l1, "t", 1, 0)); /* 1 is now the most recently used */
    assert_int_equal(l1_put(l1, "t", 4, body, 1, 100), 0);
    assert_int_equal(rcache_l1_count(l1), 3);
    assert_true(rcache_l1_bytes(l1) <= 3 * one + one / 2);
    assert_null(l1_get(l1, "t", 2, 0)); /* the least recently used went */
    assert_non_null(l1_get(l1, "t", 1, 0));
    assert_non_null(l1_get(l1, "t", 3, 0));
    assert_non_null(l1_get(l1, "t", 4, 0));
    /* an entry larger than the whole budget is not kept */
    rcache_l1_set_max_bytes(l1, one / 2);
    assert_int_equal(rcache_l1_count(l1), 0);
    assert_int_equal(rcache_l1_bytes(l1), 0);
    assert_int_equal(l1_put(l1, "t", 5, body, 1, 100), 1);
    assert_null(l1_get(l1, "t", 5, 0));
    /* budget 0: off */
    rcache_l1_set_max_bytes(l1, 0);
    assert_int_equal(l1_put(l1, "t", 6, "{}", 1, 100), 1);
    /* many entries: the table grows and keeps them all */
    rcache_l1_set_max_bytes(l1, 64u << 20);
    for (int i = 0; i < 256; i++) {
        char scope[16];
        snprintf(scope, sizeof scope, "s%d", i);
        for (int n = 0; n < 8; n++)
            assert_int_equal(l1_put(l1, scope, n, "{}", 1, 100), 0);
    }
    assert_int_equal(rcache_l1_count(l1), 2048);
    for (int i = 0; i < 256; i++) {
        char scope[16];
        snprintf(scope, sizeof scope, "s%d", i);
        for (int n = 0; n < 8; n++)
            assert_non_null(l1_get(l1, scope, n, 0));
    }
    rcache_l1_free(l1);
}

static void test_l1_lifetime(void **state)
{
    (void)state;
    struct rcache_l1 *l1 = rcache_l1_new(1 << 20);
    assert_int_equal(l1_put(l1, "t", 1, ANSWER, 5, 1000), 0);
    const struct rcache_l1_entry *le = l1_get(l1, "t", 1, 999);
    assert_non_null(le);
    assert_string_equal(le->e.body, ANSWER);
    assert_int_equal(le->e.body_len, strlen(ANSWER));
    assert_int_equal(le->e.created_ms, 5);
    assert_int_equal(le->e.prompt_tokens, 3);
    assert_int_equal(le->e.completion_tokens, 2);
    assert_null(le->sse);
    assert_null(l1_get(l1, "t", 1, 1000)); /* expired: dropped */
    assert_int_equal(rcache_l1_count(l1), 0);
    assert_int_equal(rcache_l1_bytes(l1), 0);
    assert_null(l1_get(l1, "t", 1, 0));
    rcache_l1_free(l1);
}

static void test_l1_scopes_are_separate(void **state)
{
    (void)state;
    struct rcache_l1 *l1 = rcache_l1_new(1 << 20);
    assert_int_equal(l1_put(l1, "tenant-a", 1, "{\"a\":1}", 1, 100), 0);
    assert_null(l1_get(l1, "tenant-b", 1, 0)); /* same key, another scope */
    assert_null(l1_get(l1, "~shared", 1, 0));
    assert_int_equal(l1_put(l1, "tenant-b", 1, "{\"b\":1}", 1, 100), 0);
    assert_string_equal(l1_get(l1, "tenant-a", 1, 0)->e.body, "{\"a\":1}");
    assert_string_equal(l1_get(l1, "tenant-b", 1, 0)->e.body, "{\"b\":1}");
    assert_null(l1_get(l1, "tenant-a", 2, 0)); /* another key, same scope */
    /* another prefix is another key too */
    uint8_t k[RCACHE_KEY_LEN] = {1};
    char other[256];
    int n = rcache_redis_key("other:", "tenant-a", k, other, sizeof other, NULL, 0);
    assert_null(rcache_l1_get(l1, other, (size_t)n, 0));
    rcache_l1_free(l1);
}

static void test_l1_invalidation(void **state)
{
    (void)state;
    struct rcache_l1 *l1 = rcache_l1_new(1 << 20);
    char k[256];
    size_t kl = l1_rkey(k, sizeof k, "t", 1);
    assert_int_equal(l1_put(l1, "t", 1, "{\"v\":1}", 10, 100), 0);
    /* a refresh stores a newer answer: it replaces the old one */
    assert_int_equal(l1_put(l1, "t", 1, "{\"v\":2}", 20, 100), 0);
    assert_string_equal(l1_get(l1, "t", 1, 0)->e.body, "{\"v\":2}");
    assert_int_equal(rcache_l1_count(l1), 1);
    /* a Redis read that started before the refresh never puts the old one back */
    assert_int_equal(l1_put(l1, "t", 1, "{\"v\":1}", 10, 100), 1);
    assert_string_equal(l1_get(l1, "t", 1, 0)->e.body, "{\"v\":2}");
    /* evicted (no-cache refresh, corrupt in Redis): gone, others stay */
    assert_int_equal(l1_put(l1, "t", 2, "{}", 1, 100), 0);
    size_t before = rcache_l1_bytes(l1);
    rcache_l1_evict(l1, k, kl);
    assert_null(rcache_l1_get(l1, k, kl, 0));
    assert_non_null(l1_get(l1, "t", 2, 0));
    assert_true(rcache_l1_bytes(l1) < before);
    rcache_l1_evict(l1, k, kl); /* absent: nothing happens */
    assert_int_equal(rcache_l1_count(l1), 1);
    rcache_l1_free(l1);
}

/* The L1 keeps one SSE rendering (with usage); both client variants are cut
 * from it and equal what rcache_render_sse writes for them. */
static void test_l1_sse_parts(void **state)
{
    (void)state;
    struct evbuffer *with = evbuffer_new(), *without = evbuffer_new(), *parts = evbuffer_new();
    size_t len = strlen(ANSWER), usage_off, done_off;
    assert_int_equal(rcache_render_sse(ANSWER, len, RCACHE_CHAT, true, 4, with), 0);
    assert_int_equal(rcache_render_sse(ANSWER, len, RCACHE_CHAT, false, 4, without), 0);
    assert_int_equal(
        rcache_render_sse_parts(ANSWER, len, RCACHE_CHAT, true, 4, parts, &usage_off, &done_off),
        0);
    size_t n = evbuffer_get_length(parts);
    char *sse = malloc(n);
    assert_int_equal(evbuffer_remove(parts, sse, n), (int)n);
    assert_int_equal(n, evbuffer_get_length(with));
    assert_memory_equal(sse, evbuffer_pullup(with, -1), n);
    assert_true(usage_off < done_off);
    assert_memory_equal(sse + done_off, "data: [DONE]\n\n", n - done_off);
    assert_int_equal(usage_off + (n - done_off), evbuffer_get_length(without));
    assert_memory_equal(sse, evbuffer_pullup(without, -1), usage_off);

    struct rcache_l1 *l1 = rcache_l1_new(1 << 20);
    assert_int_equal(l1_put(l1, "t", 1, ANSWER, 1, 100), 0);
    size_t before = rcache_l1_bytes(l1);
    const struct rcache_l1_entry *le = l1_get(l1, "t", 1, 0);
    assert_int_equal(rcache_l1_set_sse(l1, le, sse, n, usage_off, done_off), 0);
    le = l1_get(l1, "t", 1, 0);
    assert_non_null(le->sse);
    assert_int_equal(le->sse_len, n);
    assert_int_equal(le->sse_usage_off, usage_off);
    assert_int_equal(le->sse_done_off, done_off);
    assert_int_equal(rcache_l1_bytes(l1), before + n);
    /* an SSE form that would not fit is not attached */
    rcache_l1_set_max_bytes(l1, before + 10);
    assert_int_equal(rcache_l1_count(l1), 0); /* the entry with its SSE no longer fits */
    assert_int_equal(l1_put(l1, "t", 1, ANSWER, 1, 100), 0);
    le = l1_get(l1, "t", 1, 0);
    char *big = malloc(n);
    memcpy(big, evbuffer_pullup(with, -1), n);
    assert_int_equal(rcache_l1_set_sse(l1, le, big, n, usage_off, done_off), -1);
    assert_null(l1_get(l1, "t", 1, 0)->sse);
    rcache_l1_free(l1);
    evbuffer_free(with);
    evbuffer_free(without);
    evbuffer_free(parts);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canonical_form),
        cmocka_unit_test(test_key_order),
        cmocka_unit_test(test_number_forms),
        cmocka_unit_test(test_unicode_escapes),
        cmocka_unit_test(test_output_fields_change_key),
        cmocka_unit_test(test_irrelevant_fields_keep_key),
        cmocka_unit_test(test_key_rejects_non_object),
        cmocka_unit_test(test_key_large_body),
        cmocka_unit_test(test_redis_key),
        cmocka_unit_test(test_entry_round_trip_and_corruption),
        cmocka_unit_test(test_answer_cacheable),
        cmocka_unit_test(test_asm_chat_text),
        cmocka_unit_test(test_asm_tool_calls),
        cmocka_unit_test(test_asm_rejects),
        cmocka_unit_test(test_asm_completions_two_choices),
        cmocka_unit_test(test_render_rejects_bad_body),
        cmocka_unit_test(test_l1_evicts_least_recently_used_by_bytes),
        cmocka_unit_test(test_l1_lifetime),
        cmocka_unit_test(test_l1_scopes_are_separate),
        cmocka_unit_test(test_l1_invalidation),
        cmocka_unit_test(test_l1_sse_parts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
