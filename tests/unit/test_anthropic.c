/* Unit tests for routing/adapter_anthropic.c (and the other adapters' request
 * building): OpenAI chat requests translated to the Messages API and answers
 * translated back, on recorded request/response pairs in
 * tests/fixtures/anthropic/ (plain with system prompts and images, tools with
 * tool results, an error, and two event streams); failures classified. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sse.h"
#include "gateway/config.h"
#include "routing/adapter.h"
#include "routing/policy.h"

static char *slurp(const char *name, size_t *len)
{
    char path[1024];
    const char *src = getenv("LLMGATE_SRCDIR");
    snprintf(path, sizeof path, "%s/tests/fixtures/anthropic/%s", src ? src : ".", name);
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    char *buf = malloc(1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    fclose(f);
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

/* Equal as JSON, ignoring "created" (a clock value) at the top level. */
static void assert_json_equal(const char *got, const char *want, const char *what)
{
    cJSON *g = cJSON_Parse(got), *w = cJSON_Parse(want);
    assert_non_null(g);
    assert_non_null(w);
    cJSON_DeleteItemFromObjectCaseSensitive(g, "created");
    cJSON_DeleteItemFromObjectCaseSensitive(w, "created");
    if (!cJSON_Compare(g, w, 1)) {
        char *gs = cJSON_PrintUnformatted(g);
        print_error("%s differs:\n got  %s\n want %s\n", what, gs, want);
        free(gs);
    }
    assert_true(cJSON_Compare(g, w, 1));
    cJSON_Delete(g);
    cJSON_Delete(w);
}

static void check_request(const char *in, const char *want, const char *model)
{
    size_t len, out_len = 0;
    char *oai = slurp(in, &len), *exp = slurp(want, NULL);
    int rc;
    char field[ADAPTER_FIELD_MAX] = "x";
    char *got = anthropic_request_from_openai(oai, len, model, &out_len, &rc, field);
    assert_int_equal(rc, 0);
    assert_string_equal(field, "");
    assert_non_null(got);
    assert_int_equal(out_len, strlen(got));
    assert_json_equal(got, exp, in);
    free(got);
    free(oai);
    free(exp);
}

static void check_response(const char *in, const char *want, long status)
{
    size_t len, out_len = 0;
    char *body = slurp(in, &len), *exp = slurp(want, NULL);
    struct adapter_call c = {.upstream_model = "m"};
    char *got = adapter_anthropic.finish(&c, status, body, len, &out_len);
    assert_non_null(got);
    assert_json_equal(got, exp, in);
    free(got);
    free(body);
    free(exp);
}

static void test_requests(void **state)
{
    (void)state;
    check_request("plain.openai-request.json", "plain.anthropic-request.json",
                  "claude-3-5-sonnet-20241022");
    check_request("tools.openai-request.json", "tools.anthropic-request.json",
                  "claude-3-5-haiku-20241022");
}

static void test_unsupported_requests(void **state)
{
    (void)state;
    /* Each names the field it cannot express, for the client's 400. */
    const char *bodies[][2] = {
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2}", "n"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"user\",\"content\":[{"
         "\"type\":\"text\",\"text\":\"y\"},{\"type\":\"input_audio\"}]}]}",
         "messages[1].content[1]"},
        {"{\"messages\":[{\"role\":\"function\",\"name\":\"f\",\"content\":\"x\"}]}",
         "messages[0].role"},
        {"{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"a\",\"function\":{"
         "\"name\":\"f\",\"arguments\":\"{}\"}},{\"id\":\"b\",\"function\":{\"name\":\"f\","
         "\"arguments\":\"[1]\"}}]}]}",
         "messages[0].tool_calls[1]"},
        {"{\"messages\":[{\"role\":\"system\",\"content\":[{\"type\":\"image_url\"}]}]}",
         "messages[0].content"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"tool\",\"content\":"
         "\"y\"}]}",
         "messages[1].tool_call_id"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":"
         "\"function\",\"function\":{\"name\":\"f\"}},{\"type\":\"function\",\"function\":{}}]}",
         "tools[1].function.name"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":{\"type\":"
         "\"function\"}}",
         "tool_choice"},
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        int rc = 0;
        size_t n;
        char field[ADAPTER_FIELD_MAX] = "";
        assert_null(
            anthropic_request_from_openai(bodies[i][0], strlen(bodies[i][0]), "m", &n, &rc, field));
        assert_int_equal(rc, ADAPTER_UNSUPPORTED);
        assert_string_equal(field, bodies[i][1]);
        assert_null(anthropic_request_from_openai(bodies[i][0], strlen(bodies[i][0]), "m", &n, &rc,
                                                  NULL)); /* field is optional */
        assert_int_equal(rc, ADAPTER_UNSUPPORTED);
    }
    /* build() reports it in out->unsupported. */
    struct provider_conf p = {.name = "x", .base_url = "http://h/v1"};
    struct adapter_call c = {.provider = &p,
                             .upstream_model = "m",
                             .endpoint = ADAPTER_CHAT,
                             .body = bodies[0][0],
                             .body_len = strlen(bodies[0][0])};
    struct adapter_out out;
    assert_int_equal(adapter_anthropic.build(&c, &out), ADAPTER_UNSUPPORTED);
    assert_string_equal(out.unsupported, "n");
    /* Only chat completions go to an anthropic provider: the endpoint, not a field. */
    c.endpoint = ADAPTER_EMBEDDINGS;
    c.body = "{}";
    c.body_len = 2;
    assert_int_equal(adapter_anthropic.build(&c, &out), ADAPTER_UNSUPPORTED);
    assert_string_equal(out.unsupported, "");
}

static void test_responses(void **state)
{
    (void)state;
    check_response("plain.anthropic-response.json", "plain.openai-response.json", 200);
    check_response("tools.anthropic-response.json", "tools.openai-response.json", 200);
    check_response("error.anthropic-response.json", "error.openai-response.json", 529);
    struct adapter_call c = {.upstream_model = "m"};
    size_t n;
    assert_null(adapter_anthropic.finish(&c, 200, "{\"id\":", 6, &n));
    /* A good answer followed by anything but whitespace is malformed as a whole. */
    size_t len;
    char *body = slurp("plain.anthropic-response.json", &len);
    char *junk = malloc(len + 5);
    assert_non_null(junk);
    memcpy(junk, body, len);
    memcpy(junk + len, "junk", 4);
    assert_null(adapter_anthropic.finish(&c, 200, junk, len + 4, &n));
    memcpy(junk + len, " \r\n\t", 4);
    char *json = adapter_anthropic.finish(&c, 200, junk, len + 4, &n);
    assert_non_null(json);
    free(json);
    free(junk);
    free(body);
}

struct collect {
    char *lines[64];
    int n;
};

static void on_emit(void *ud, const char *data, size_t len)
{
    struct collect *c = ud;
    assert_true(c->n < 64);
    c->lines[c->n] = strndup(data, len);
    c->n++;
}

struct feed {
    void *st;
    struct collect out;
    int rc;
};

static int on_event(void *ud, const struct sse_event *ev)
{
    struct feed *f = ud;
    int failure = -1;
    int rc = adapter_anthropic.stream_event(f->st, ev->event, ev->event_len, ev->data, ev->data_len,
                                            on_emit, &f->out, &failure);
    if (rc != 0) f->rc = rc;
    return rc < 0;
}

static void check_stream(const char *sse_file, const char *req_file, const char *want_file)
{
    size_t len, rlen;
    char *sse = slurp(sse_file, &len), *req = slurp(req_file, &rlen),
         *want = slurp(want_file, NULL);
    struct adapter_call c = {.upstream_model = "m", .stream = true, .body = req, .body_len = rlen};
    struct feed f = {.st = adapter_anthropic.stream_new(&c)};
    assert_non_null(f.st);
    struct sse_parser p;
    sse_parser_init(&p, 1 << 20, on_event, &f);
    /* byte by byte: the translation must not depend on how the stream is split */
    for (size_t i = 0; i < len; i++)
        assert_int_equal(sse_parser_feed(&p, sse + i, 1), 0);
    sse_parser_free(&p);
    assert_int_equal(f.rc, 1); /* message_stop completes the stream */
    int k = 0;
    for (char *line = strtok(want, "\n"); line; line = strtok(NULL, "\n"), k++) {
        assert_true(k < f.out.n);
        if (strcmp(line, "[DONE]") == 0)
            assert_string_equal(f.out.lines[k], "[DONE]");
        else
            assert_json_equal(f.out.lines[k], line, sse_file);
    }
    assert_int_equal(k, f.out.n);
    for (int i = 0; i < f.out.n; i++)
        free(f.out.lines[i]);
    adapter_anthropic.stream_free(f.st);
    free(sse);
    free(req);
    free(want);
}

static void test_streams(void **state)
{
    (void)state;
    check_stream("stream.anthropic.sse", "plain.openai-request.json", "stream.openai.jsonl");
    check_stream("tools-stream.anthropic.sse", "tools.openai-request.json",
                 "tools-stream.openai.jsonl");
}

static void test_stream_errors(void **state)
{
    (void)state;
    struct adapter_call c = {.upstream_model = "m", .body = "{}", .body_len = 2};
    void *st = adapter_anthropic.stream_new(&c);
    struct collect out = {0};
    int failure = -1;
    /* The upstream's own error events are reports (ADAPTER_STREAM_ERROR), each with its
     * failure; a malformed event is -1. */
    const struct {
        const char *type;
        int failure;
    } reports[] = {
        {"overloaded_error", PF_OVERLOADED},
        {"rate_limit_error", PF_RATE_LIMITED},
        {"api_error", PF_SERVER_ERROR},
    };
    for (size_t i = 0; i < sizeof reports / sizeof reports[0]; i++) {
        char ev[160];
        snprintf(ev, sizeof ev,
                 "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"x\"}}",
                 reports[i].type);
        failure = -1;
        assert_int_equal(
            adapter_anthropic.stream_event(st, "error", 5, ev, strlen(ev), on_emit, &out, &failure),
            ADAPTER_STREAM_ERROR);
        assert_int_equal(failure, reports[i].failure);
    }
    assert_int_equal(adapter_anthropic.stream_event(st, "", 0, "{\"ty", 4, on_emit, &out, &failure),
                     -1);
    assert_int_equal(failure, PF_SERVER_ERROR);
    const char *bad_error = "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}junk";
    assert_int_equal(adapter_anthropic.stream_event(st, "error", 5, bad_error, strlen(bad_error),
                                                    on_emit, &out, &failure),
                     -1); /* malformed, whatever it says */
    const char *ping = "{\"type\":\"ping\"}junk";
    assert_int_equal(
        adapter_anthropic.stream_event(st, "ping", 4, ping, strlen(ping), on_emit, &out, &failure),
        -1);
    assert_int_equal(out.n, 0);
    adapter_anthropic.stream_free(st);
}

static void test_classify(void **state)
{
    (void)state;
    const char *ctx = "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\","
                      "\"message\":\"prompt is too long: 250000 tokens > 200000 maximum\"}}";
    assert_int_equal(adapter_anthropic.classify(429, "", 0), PF_RATE_LIMITED);
    assert_int_equal(adapter_anthropic.classify(529, "", 0), PF_OVERLOADED);
    assert_int_equal(adapter_anthropic.classify(500, "", 0), PF_SERVER_ERROR);
    assert_int_equal(adapter_anthropic.classify(400, ctx, strlen(ctx)), PF_CONTEXT_LENGTH);
    assert_int_equal(adapter_anthropic.classify(401, "{}", 2), -1);
    const char *eo = "{\"error\":{\"message\":\"busy\",\"type\":\"server_error\",\"code\":"
                     "\"engine_overloaded\"}}";
    const char *cl = "{\"error\":{\"message\":\"This model's maximum context length is 8192 "
                     "tokens.\",\"type\":\"invalid_request_error\",\"code\":"
                     "\"context_length_exceeded\"}}";
    assert_int_equal(adapter_openai.classify(429, eo, strlen(eo)), PF_OVERLOADED);
    assert_int_equal(adapter_openai.classify(429, "{}", 2), PF_RATE_LIMITED);
    assert_int_equal(adapter_openai.classify(503, "", 0), PF_OVERLOADED);
    assert_int_equal(adapter_openai.classify(502, "<html>", 6), PF_SERVER_ERROR);
    assert_int_equal(adapter_openai.classify(400, cl, strlen(cl)), PF_CONTEXT_LENGTH);
    assert_int_equal(adapter_openai.classify(400, "{}", 2), -1);
    assert_int_equal(adapter_openai.classify(404, "{}", 2), -1);
}

static void test_build_urls_and_auth(void **state)
{
    (void)state;
    struct provider_conf az = {.name = "az",
                               .kind = PROVIDER_AZURE_OPENAI,
                               .base_url = "https://res.openai.azure.com",
                               .api_key = "k1",
                               .api_version = "2024-10-21"};
    struct adapter_call c = {.provider = &az,
                             .upstream_model = "gpt 4o/prod",
                             .endpoint = ADAPTER_CHAT,
                             .body = "{}",
                             .body_len = 2};
    struct adapter_out out;
    const struct adapter *a = adapter_for(az.kind);
    assert_ptr_equal(a, &adapter_azure);
    assert_int_equal(a->build(&c, &out), 0);
    assert_string_equal(out.url, "https://res.openai.azure.com/openai/deployments/gpt%204o%2Fprod"
                                 "/chat/completions?api-version=2024-10-21");
    assert_null(out.body);
    assert_int_equal(out.n_headers, 1);
    assert_string_equal(out.headers[0], "api-key: k1");

    struct provider_conf oa = {.name = "o", .base_url = "http://h/v1", .api_key = "k2"};
    c.provider = &oa;
    c.endpoint = ADAPTER_EMBEDDINGS;
    assert_int_equal(adapter_for(PROVIDER_LOCAL)->build(&c, &out), 0);
    assert_string_equal(out.url, "http://h/v1/embeddings");
    assert_string_equal(out.headers[0], "Authorization: Bearer k2");

    struct provider_conf an = {.name = "a",
                               .kind = PROVIDER_ANTHROPIC,
                               .base_url = "https://api.anthropic.com/v1",
                               .api_key = "k3",
                               .anthropic_version = "2023-06-01"};
    const char *body = "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    struct adapter_call ca = {.provider = &an,
                              .upstream_model = "claude",
                              .endpoint = ADAPTER_CHAT,
                              .body = body,
                              .body_len = strlen(body)};
    assert_int_equal(adapter_for(an.kind)->build(&ca, &out), 0);
    assert_string_equal(out.url, "https://api.anthropic.com/v1/messages");
    assert_string_equal(out.headers[0], "anthropic-version: 2023-06-01");
    assert_string_equal(out.headers[1], "x-api-key: k3");
    assert_json_equal(out.body,
                      "{\"model\":\"claude\",\"messages\":[{\"role\":\"user\",\"content\":[{"
                      "\"type\":\"text\",\"text\":\"hi\"}]}],\"max_tokens\":4096}",
                      "minimal");
    free(out.body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_requests),
        cmocka_unit_test(test_unsupported_requests),
        cmocka_unit_test(test_responses),
        cmocka_unit_test(test_streams),
        cmocka_unit_test(test_stream_errors),
        cmocka_unit_test(test_classify),
        cmocka_unit_test(test_build_urls_and_auth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
