/* Unit tests for gateway/openai.c: request validation, error bodies, rendering. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/openai.h"

#define LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Parses a NUL-terminated body from an exact-size heap copy so ASan catches
 * reads past len. */
static int parse(enum oai_endpoint ep, const char *body, struct oai_request *r,
                 struct oai_error *err)
{
    size_t len = strlen(body);
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, body, len);
    int rc = oai_request_parse(ep, copy, len, r, err);
    free(copy);
    return rc;
}

static const char chat_body[] =
    "{\"model\":\"gpt-4o\",\"messages\":["
    "{\"role\":\"system\",\"content\":\"You are terse.\"},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"h\\u00e9llo\"},"
    "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AAAA\"}}]},"
    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\",\"type\":"
    "\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
    "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"42\"},"
    "{\"role\":\"developer\",\"content\":\"ok\",\"name\":\"dev\"}],"
    "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
    "\"max_completion_tokens\":300,\"max_tokens\":100,\"n\":2,\"temperature\":0.7,"
    "\"top_p\":1,\"presence_penalty\":-2,\"frequency_penalty\":2,\"seed\":-42,"
    "\"stop\":[\"\\n\\n\",\"END\"],\"logit_bias\":{\"50256\":-100,\"11\":2.5},\"user\":\"u1\","
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":"
    "\"object\",\"properties\":{\"x\":{\"type\":\"integer\",\"minimum\":0}}}}}],"
    "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}},"
    "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"s\","
    "\"schema\":{\"type\":\"object\"}}},\"logprobs\":true,\"top_logprobs\":5,"
    "\"parallel_tool_calls\":false,\"x_vendor\":{\"deep\":[1,2.5,\"three\",null,true]}}";

/* ------------------------------------------------------------------ */
/* Valid bodies                                                       */
/* ------------------------------------------------------------------ */

static void test_chat_valid(void **state)
{
    (void)state;
    struct oai_request r;
    struct oai_error err;
    assert_int_equal(parse(OAI_CHAT, chat_body, &r, &err), 0);
    assert_int_equal(r.endpoint, OAI_CHAT);
    assert_string_equal(r.model, "gpt-4o");
    assert_true(r.stream);
    assert_true(r.include_usage);
    assert_int_equal(r.max_tokens, 300); /* max_completion_tokens wins */
    assert_int_equal(r.n, 2);
    /* "You are terse." 14 + "héllo" 5 + "{}" 2 + "42" 2 + "ok" 2 */
    assert_int_equal(r.prompt_chars, 25);
    assert_int_equal(r.prompt_tokens, 0);
    oai_request_free(&r);
    assert_null(r.root);
    oai_request_free(&r); /* idempotent */

    /* Minimal body: defaults. Explicit nulls mean "absent". */
    static const char minimal[] = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
                                  "\"hi\"}],\"stream\":null,\"max_tokens\":null,\"n\":null,"
                                  "\"stream_options\":null}";
    assert_int_equal(parse(OAI_CHAT, minimal, &r, &err), 0);
    assert_false(r.stream);
    assert_false(r.include_usage);
    assert_int_equal(r.max_tokens, -1);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.prompt_chars, 2);
    oai_request_free(&r);

    /* max_tokens alone; stream without include_usage; whitespace around the body. */
    static const char mt[] =
        " \n{\"model\":\"m\",\"messages\":[{\"role\":\"tool\",\"tool_call_id\":"
        "\"c\",\"content\":null}],\"max_tokens\":16777216,\"stream\":true,"
        "\"stream_options\":{}}\r\n ";
    assert_int_equal(parse(OAI_CHAT, mt, &r, &err), 0);
    assert_int_equal(r.max_tokens, 16777216);
    assert_true(r.stream);
    assert_false(r.include_usage);
    oai_request_free(&r);
}

static void test_completions_valid(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        size_t chars, tokens;
    } cases[] = {
        {"{\"model\":\"m\",\"prompt\":\"Say this is a test\"}", 18, 0},
        {"{\"model\":\"m\",\"prompt\":\"\"}", 0, 0},
        {"{\"model\":\"m\",\"prompt\":[\"ab\",\"c\"]}", 3, 0},
        {"{\"model\":\"m\",\"prompt\":[1,2,3]}", 0, 3},
        {"{\"model\":\"m\",\"prompt\":[[1,2],[3]],\"logprobs\":5,\"echo\":true,\"best_of\":2}", 0,
         3},
    };
    for (size_t i = 0; i < LEN(cases); i++) {
        struct oai_request r;
        struct oai_error err;
        assert_int_equal(parse(OAI_COMPLETIONS, cases[i].body, &r, &err), 0);
        assert_int_equal(r.endpoint, OAI_COMPLETIONS);
        assert_int_equal(r.prompt_chars, cases[i].chars);
        assert_int_equal(r.prompt_tokens, cases[i].tokens);
        oai_request_free(&r);
    }
    struct oai_request r;
    struct oai_error err;
    assert_int_equal(parse(OAI_COMPLETIONS,
                           "{\"model\":\"m\",\"prompt\":\"x\",\"stream\":true,\"max_tokens\":7,"
                           "\"n\":128,\"stream_options\":{\"include_usage\":false}}",
                           &r, &err),
                     0);
    assert_true(r.stream);
    assert_false(r.include_usage);
    assert_int_equal(r.max_tokens, 7);
    assert_int_equal(r.n, 128);
    oai_request_free(&r);
}

static void test_embeddings_valid(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        size_t chars, tokens;
    } cases[] = {
        {"{\"model\":\"e\",\"input\":\"The food was delicious\"}", 22, 0},
        {"{\"model\":\"e\",\"input\":[\"a\",\"bc\"],\"encoding_format\":\"base64\"}", 3, 0},
        {"{\"model\":\"e\",\"input\":[5,6],\"dimensions\":256,\"encoding_format\":\"float\"}", 0,
         2},
        {"{\"model\":\"e\",\"input\":[[5],[6,7]],\"user\":\"u\"}", 0, 3},
        /* Generation fields are not interpreted on embeddings; they are forwarded. */
        {"{\"model\":\"e\",\"input\":\"x\",\"stream\":\"yes\",\"n\":0}", 1, 0},
    };
    for (size_t i = 0; i < LEN(cases); i++) {
        struct oai_request r;
        struct oai_error err;
        assert_int_equal(parse(OAI_EMBEDDINGS, cases[i].body, &r, &err), 0);
        assert_false(r.stream);
        assert_int_equal(r.prompt_chars, cases[i].chars);
        assert_int_equal(r.prompt_tokens, cases[i].tokens);
        oai_request_free(&r);
    }
}

/* ------------------------------------------------------------------ */
/* Invalid bodies                                                     */
/* ------------------------------------------------------------------ */

#define M "\"model\":\"m\","
#define U "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

struct bad_case {
    enum oai_endpoint ep;
    const char *body;
    const char *param; /* "" for null */
    const char *code;  /* NULL for null */
};

static const struct bad_case bad_cases[] = {
    /* Body shape. */
    {OAI_CHAT, "", "", NULL},
    {OAI_CHAT, "{", "", NULL},
    {OAI_CHAT, "{\"model\":\"m\",}", "", NULL},
    {OAI_CHAT, "{\"model\":\"m\"} x", "", NULL},
    {OAI_CHAT, "{\"model\":\"m\"}{}", "", NULL},
    {OAI_CHAT, "nul", "", NULL},
    {OAI_CHAT, "[1,2]", "", "invalid_type"},
    {OAI_CHAT, "\"str\"", "", "invalid_type"},
    {OAI_CHAT, "null", "", "invalid_type"},
    /* model */
    {OAI_CHAT, "{" U "}", "model", "missing_required_parameter"},
    {OAI_CHAT, "{\"model\":null," U "}", "model", "missing_required_parameter"},
    {OAI_CHAT, "{\"model\":5," U "}", "model", "invalid_type"},
    {OAI_CHAT, "{\"model\":\"\"," U "}", "model", "empty_string"},
    /* messages */
    {OAI_CHAT, "{" M "\"x\":1}", "messages", "missing_required_parameter"},
    {OAI_CHAT, "{" M "\"messages\":{}}", "messages", "invalid_type"},
    {OAI_CHAT, "{" M "\"messages\":[]}", "messages", "empty_array"},
    {OAI_CHAT, "{" M "\"messages\":[\"hi\"]}", "messages[0]", "invalid_type"},
    {OAI_CHAT, "{" M "\"messages\":[{\"content\":\"hi\"}]}", "messages[0].role",
     "missing_required_parameter"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":1,\"content\":\"hi\"}]}", "messages[0].role",
     "invalid_type"},
    {OAI_CHAT,
     "{" M "\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":"
     "\"b\"},{\"role\":\"robot\",\"content\":\"c\"}]}",
     "messages[2].role", "invalid_value"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":\"User\",\"content\":\"c\"}]}", "messages[0].role",
     "invalid_value"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":\"user\"}]}", "messages[0].content",
     "missing_required_parameter"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":null}]}", "messages[0].content",
     "invalid_type"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":\"assistant\",\"content\":null}]}",
     "messages[0].content", "invalid_type"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":\"assistant\",\"tool_calls\":{}}]}",
     "messages[0].tool_calls", "invalid_type"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[]}]}",
     "messages[0].content", "missing_required_parameter"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[1]}]}",
     "messages[0].tool_calls[0]", "invalid_type"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":7}]}", "messages[0].content",
     "invalid_type"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":[]}]}", "messages[0].content",
     "empty_array"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":[\"x\"]}]}",
     "messages[0].content[0]", "invalid_type"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"x\"}]}]}",
     "messages[0].content[0].type", "missing_required_parameter"},
    {OAI_CHAT,
     "{" M "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
     "{\"type\":3}]}]}",
     "messages[0].content[1].type", "invalid_type"},
    {OAI_CHAT,
     "{" M "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":[]}]}]}",
     "messages[0].content[0].text", "invalid_type"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":\"tool\",\"content\":\"r\"}]}",
     "messages[0].tool_call_id", "missing_required_parameter"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":\"tool\",\"content\":\"r\",\"tool_call_id\":1}]}",
     "messages[0].tool_call_id", "invalid_type"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":\"r\",\"name\":1}]}",
     "messages[0].name", "invalid_type"},
    /* Typed common fields. */
    {OAI_CHAT, "{" M U ",\"stream\":\"true\"}", "stream", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"stream_options\":{\"include_usage\":true}}", "stream_options",
     "invalid_value"},
    {OAI_CHAT, "{" M U ",\"stream\":false,\"stream_options\":{}}", "stream_options",
     "invalid_value"},
    {OAI_CHAT, "{" M U ",\"stream\":true,\"stream_options\":[]}", "stream_options", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"stream\":true,\"stream_options\":{\"include_usage\":1}}",
     "stream_options.include_usage", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"max_tokens\":0}", "max_tokens", "integer_below_min_value"},
    {OAI_CHAT, "{" M U ",\"max_tokens\":-5}", "max_tokens", "integer_below_min_value"},
    {OAI_CHAT, "{" M U ",\"max_tokens\":16777217}", "max_tokens", "integer_above_max_value"},
    {OAI_CHAT, "{" M U ",\"max_tokens\":1.5}", "max_tokens", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"max_tokens\":1e999}", "max_tokens", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"max_tokens\":-1e999}", "max_tokens", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"max_tokens\":\"10\"}", "max_tokens", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"max_completion_tokens\":1e30}", "max_completion_tokens",
     "integer_above_max_value"},
    {OAI_COMPLETIONS, "{" M "\"prompt\":\"x\",\"max_tokens\":true}", "max_tokens", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"n\":0}", "n", "integer_below_min_value"},
    {OAI_CHAT, "{" M U ",\"n\":129}", "n", "integer_above_max_value"},
    {OAI_CHAT, "{" M U ",\"temperature\":2.01}", "temperature", "decimal_above_max_value"},
    {OAI_CHAT, "{" M U ",\"temperature\":-0.1}", "temperature", "decimal_below_min_value"},
    {OAI_CHAT, "{" M U ",\"temperature\":1e999}", "temperature", "invalid_value"},
    {OAI_CHAT, "{" M U ",\"temperature\":\"hot\"}", "temperature", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"top_p\":1.5}", "top_p", "decimal_above_max_value"},
    {OAI_CHAT, "{" M U ",\"presence_penalty\":-3}", "presence_penalty", "decimal_below_min_value"},
    {OAI_CHAT, "{" M U ",\"frequency_penalty\":2.5}", "frequency_penalty",
     "decimal_above_max_value"},
    {OAI_CHAT, "{" M U ",\"seed\":1.5}", "seed", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"seed\":1e19}", "seed", "integer_above_max_value"},
    {OAI_CHAT, "{" M U ",\"seed\":-1e19}", "seed", "integer_below_min_value"},
    {OAI_CHAT, "{" M U ",\"stop\":5}", "stop", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop",
     "array_above_max_length"},
    {OAI_CHAT, "{" M U ",\"stop\":[\"a\",1]}", "stop[1]", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"logit_bias\":[]}", "logit_bias", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"logit_bias\":{\"50256\":101}}", "logit_bias", "invalid_value"},
    {OAI_CHAT, "{" M U ",\"logit_bias\":{\"50256\":\"1\"}}", "logit_bias", "invalid_value"},
    {OAI_CHAT, "{" M U ",\"logit_bias\":{\"abc\":1}}", "logit_bias", "invalid_value"},
    {OAI_CHAT, "{" M U ",\"user\":42}", "user", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"tools\":{}}", "tools", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"tools\":[{},\"f\"]}", "tools[1]", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"tool_choice\":1}", "tool_choice", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"response_format\":\"json\"}", "response_format", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"response_format\":{}}", "response_format.type",
     "missing_required_parameter"},
    {OAI_CHAT, "{" M U ",\"response_format\":{\"type\":1}}", "response_format.type",
     "invalid_type"},
    {OAI_CHAT, "{" M U ",\"logprobs\":1}", "logprobs", "invalid_type"},
    {OAI_CHAT, "{" M U ",\"top_logprobs\":21}", "top_logprobs", "integer_above_max_value"},
    {OAI_CHAT, "{" M U ",\"top_logprobs\":-1}", "top_logprobs", "integer_below_min_value"},
    /* completions */
    {OAI_COMPLETIONS, "{" M "\"max_tokens\":5}", "prompt", "missing_required_parameter"},
    {OAI_COMPLETIONS, "{" M "\"prompt\":5}", "prompt", "invalid_type"},
    {OAI_COMPLETIONS, "{" M "\"prompt\":{}}", "prompt", "invalid_type"},
    {OAI_COMPLETIONS, "{" M "\"prompt\":[]}", "prompt", "empty_array"},
    {OAI_COMPLETIONS, "{" M "\"prompt\":[\"a\",1]}", "prompt[1]", "invalid_type"},
    {OAI_COMPLETIONS, "{" M "\"prompt\":[1,\"a\"]}", "prompt[1]", "invalid_type"},
    {OAI_COMPLETIONS, "{" M "\"prompt\":[1,-1]}", "prompt[1]", "integer_below_min_value"},
    {OAI_COMPLETIONS, "{" M "\"prompt\":[1,2.5]}", "prompt[1]", "invalid_type"},
    {OAI_COMPLETIONS, "{" M "\"prompt\":[[1],[]]}", "prompt[1]", "empty_array"},
    {OAI_COMPLETIONS, "{" M "\"prompt\":[[1],[2,\"x\"]]}", "prompt[1][1]", "invalid_type"},
    {OAI_COMPLETIONS, "{" M "\"prompt\":[[1],3]}", "prompt[1]", "invalid_type"},
    {OAI_COMPLETIONS, "{" M "\"prompt\":[null]}", "prompt[0]", "invalid_type"},
    {OAI_COMPLETIONS, "{" M "\"prompt\":\"x\",\"logprobs\":true}", "logprobs", "invalid_type"},
    {OAI_COMPLETIONS, "{" M "\"prompt\":\"x\",\"logprobs\":6}", "logprobs",
     "integer_above_max_value"},
    {OAI_COMPLETIONS, "{" M "\"prompt\":\"x\",\"echo\":1}", "echo", "invalid_type"},
    /* embeddings */
    {OAI_EMBEDDINGS, "{" M "\"dimensions\":3}", "input", "missing_required_parameter"},
    {OAI_EMBEDDINGS, "{" M "\"input\":\"\"}", "input", "empty_string"},
    {OAI_EMBEDDINGS, "{" M "\"input\":[]}", "input", "empty_array"},
    {OAI_EMBEDDINGS, "{" M "\"input\":[\"a\",\"\"]}", "input[1]", "empty_string"},
    {OAI_EMBEDDINGS, "{" M "\"input\":true}", "input", "invalid_type"},
    {OAI_EMBEDDINGS, "{" M "\"input\":[[1],[2.5]]}", "input[1][0]", "invalid_type"},
    {OAI_EMBEDDINGS, "{" M "\"input\":\"x\",\"dimensions\":0}", "dimensions",
     "integer_below_min_value"},
    {OAI_EMBEDDINGS, "{" M "\"input\":\"x\",\"dimensions\":1.5}", "dimensions", "invalid_type"},
    {OAI_EMBEDDINGS, "{" M "\"input\":\"x\",\"encoding_format\":\"int8\"}", "encoding_format",
     "invalid_value"},
    {OAI_EMBEDDINGS, "{" M "\"input\":\"x\",\"encoding_format\":1}", "encoding_format",
     "invalid_type"},
    /* Duplicate keys, anywhere. */
    {OAI_CHAT, "{\"model\":\"a\",\"model\":\"b\"," U "}", "model", "duplicate_key"},
    {OAI_CHAT, "{" M U ",\"stream\":false,\"stream\":true}", "stream", "duplicate_key"},
    {OAI_CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"role\":\"system\",\"content\":\"x\"}]}",
     "messages[0].role", "duplicate_key"},
    {OAI_CHAT, "{" M U ",\"x_vendor\":{\"a\":[{\"k\":1,\"k\":2}]}}", "x_vendor.a[0].k",
     "duplicate_key"},
    {OAI_CHAT,
     "{" M U ",\"x\":{\"a\":1,\"b\":1,\"c\":1,\"d\":1,\"e\":1,\"f\":1,\"g\":1,\"h\":1,\"i\":1,"
     "\"j\":1,\"k\":1,\"l\":1,\"m\":1,\"n\":1,\"o\":1,\"p\":1,\"q\":1,\"r\":1,\"c\":2}}",
     "x.c", "duplicate_key"},
};

static void test_invalid_bodies(void **state)
{
    (void)state;
    for (size_t i = 0; i < LEN(bad_cases); i++) {
        const struct bad_case *c = &bad_cases[i];
        struct oai_request r;
        struct oai_error err;
        memset(&err, 0, sizeof(err));
        int rc = parse(c->ep, c->body, &r, &err);
        if (rc != -1 || strcmp(err.param, c->param) != 0 || err.status != 400 ||
            (c->code == NULL) != (err.code == NULL) ||
            (c->code && strcmp(c->code, err.code) != 0)) {
            print_error("case %zu: %s\n  rc=%d status=%d param='%s' code=%s msg=%s\n", i, c->body,
                        rc, err.status, err.param, err.code ? err.code : "(null)", err.message);
            fail();
        }
        assert_string_equal(err.type, "invalid_request_error");
        assert_true(strlen(err.message) > 10);
        assert_null(r.root);
        assert_null(r.model);
    }
}

static void test_specific_messages(void **state)
{
    (void)state;
    struct oai_request r;
    struct oai_error err;
    assert_int_equal(parse(OAI_CHAT, "{bad json", &r, &err), -1);
    assert_non_null(strstr(err.message, "We could not parse the JSON body of your request"));
    assert_string_equal(err.param, "");
    assert_null(err.code);

    assert_int_equal(
        parse(OAI_CHAT, "{" M "\"messages\":[{\"role\":\"robot\",\"content\":\"c\"}]}", &r, &err),
        -1);
    assert_string_equal(err.message, "Invalid value: 'robot'. Supported values are: 'system', "
                                     "'developer', 'user', 'assistant', 'tool', and 'function'.");

    assert_int_equal(parse(OAI_CHAT, "{" M U ",\"max_tokens\":0}", &r, &err), -1);
    assert_string_equal(err.message, "Invalid 'max_tokens': integer below minimum value. Expected "
                                     "a value >= 1, but got 0 instead.");

    assert_int_equal(parse(OAI_CHAT, "{" M "\"messages\":[]}", &r, &err), -1);
    assert_string_equal(err.message, "Invalid 'messages': empty array. Expected an array with "
                                     "minimum length 1, but got an empty array instead.");

    assert_int_equal(parse(OAI_CHAT, "{" M U ",\"max_tokens\":1.5}", &r, &err), -1);
    assert_string_equal(err.message,
                        "Invalid type for 'max_tokens': expected an integer, but got a decimal "
                        "instead.");

    assert_int_equal(parse(OAI_CHAT, "{" U "}", &r, &err), -1);
    assert_string_equal(err.message, "Missing required parameter: 'model'.");
}

static void test_limits(void **state)
{
    (void)state;
    struct oai_request r;
    struct oai_error err;

    /* Model name length bound. */
    char model[400];
    char body[600];
    memset(model, 'a', 257);
    model[257] = '\0';
    snprintf(body, sizeof(body), "{\"model\":\"%s\"," U "}", model);
    assert_int_equal(parse(OAI_CHAT, body, &r, &err), -1);
    assert_string_equal(err.param, "model");
    assert_string_equal(err.code, "string_above_max_length");
    model[256] = '\0';
    snprintf(body, sizeof(body), "{\"model\":\"%s\"," U "}", model);
    assert_int_equal(parse(OAI_CHAT, body, &r, &err), 0);
    oai_request_free(&r);

    /* Nesting: fine at the limit, 400 beyond it, no crash far beyond cJSON's. */
    static const size_t depths[] = {OAI_MAX_DEPTH - 1, OAI_MAX_DEPTH, 5000};
    for (size_t d = 0; d < LEN(depths); d++) {
        size_t depth = depths[d];
        size_t cap = 64 + 2 * depth;
        char *b = malloc(cap);
        assert_non_null(b);
        size_t n = (size_t)snprintf(b, cap, "{" M U ",\"x\":");
        for (size_t i = 0; i < depth - 1; i++)
            b[n++] = '[';
        for (size_t i = 0; i < depth - 1; i++)
            b[n++] = ']';
        b[n++] = '}';
        b[n] = '\0';
        int rc = parse(OAI_CHAT, b, &r, &err);
        if (depth <= OAI_MAX_DEPTH) {
            assert_int_equal(rc, 0);
            oai_request_free(&r);
        } else {
            assert_int_equal(rc, -1);
            assert_string_equal(err.code, "nesting_too_deep");
            assert_string_equal(err.param, "");
        }
        free(b);
    }
    /* Brackets inside strings do not count as nesting. */
    char *b = malloc(4096);
    assert_non_null(b);
    size_t n = (size_t)snprintf(b, 4096, "{" M U ",\"x\":\"");
    for (size_t i = 0; i < 1000; i++)
        b[n++] = '[';
    memcpy(b + n, "\\\"\"}", 5);
    assert_int_equal(parse(OAI_CHAT, b, &r, &err), 0);
    oai_request_free(&r);
    free(b);

    /* An embedded NUL is a parse error, not a silently shortened string. */
    static const char nul_body[] = "{\"model\":\"m\0x\"," U "}";
    assert_int_equal(oai_request_parse(OAI_CHAT, nul_body, sizeof(nul_body) - 1, &r, &err), -1);
    assert_null(err.code);
    assert_int_equal(oai_request_parse(OAI_CHAT, NULL, 0, &r, &err), -1);

    /* Too many stop sequences is bounded, exactly four is fine. */
    assert_int_equal(parse(OAI_CHAT, "{" M U ",\"stop\":[\"a\",\"b\",\"c\",\"d\"]}", &r, &err), 0);
    oai_request_free(&r);

    /* seed at the int64 edge (as doubles). */
    assert_int_equal(parse(OAI_CHAT, "{" M U ",\"seed\":-9223372036854775808}", &r, &err), 0);
    oai_request_free(&r);
    assert_int_equal(parse(OAI_CHAT, "{" M U ",\"seed\":9223372036854775807}", &r, &err), -1);
    assert_string_equal(err.param, "seed");
}

/* ------------------------------------------------------------------ */
/* Error rendering                                                    */
/* ------------------------------------------------------------------ */

static void test_error_render(void **state)
{
    (void)state;
    struct oai_error e;
    char buf[512];
    oai_error_set(&e, 400, "invalid_request_error", NULL, NULL, "say \"%s\" \\ %s", "hi",
                  "a\nb\tc\x01\x1f\x7f");
    int n = oai_error_render(&e, buf, sizeof(buf));
    assert_int_equal(n, (int)strlen(buf));
    assert_string_equal(buf, "{\"error\":{\"message\":\"say \\\"hi\\\" \\\\ "
                             "a\\nb\\tc\\u0001\\u001f\\u007f\",\"type\":\"invalid_request_error\","
                             "\"param\":null,\"code\":null}}");

    oai_error_set(&e, 400, "invalid_request_error", "invalid_type", "messages[2].role",
                  "caf\xc3\xa9 \xff\xfe \xe2\x82 \xed\xa0\x80 \xf0\x9f\x98\x80");
    n = oai_error_render(&e, buf, sizeof(buf));
    assert_true(n > 0);
    /* Valid UTF-8 kept, invalid bytes replaced (including surrogates). */
    assert_string_equal(buf, "{\"error\":{\"message\":\"caf\xc3\xa9 \\ufffd\\ufffd \\ufffd\\ufffd "
                             "\\ufffd\\ufffd\\ufffd \xf0\x9f\x98\x80\",\"type\":"
                             "\"invalid_request_error\",\"param\":\"messages[2].role\","
                             "\"code\":\"invalid_type\"}}");
    assert_int_equal(e.status, 400);

    /* Exactly fitting and one byte short. */
    size_t len = (size_t)n;
    assert_int_equal(oai_error_render(&e, buf, len + 1), n);
    assert_int_equal(oai_error_render(&e, buf, len), -1);
    assert_int_equal(oai_error_render(&e, buf, 10), -1);
    assert_int_equal(oai_error_render(&e, buf, 0), -1);

    /* A long message is truncated into the struct, never overflowing. */
    char lng[1000];
    memset(lng, '"', sizeof(lng) - 1);
    lng[sizeof(lng) - 1] = '\0';
    oai_error_set(&e, 400, "invalid_request_error", NULL, lng, "%s", lng);
    assert_int_equal(strlen(e.message), sizeof(e.message) - 1);
    assert_int_equal(strlen(e.param), sizeof(e.param) - 1);
    char big[2048];
    n = oai_error_render(&e, big, sizeof(big));
    assert_true(n > 0);
    cJSON *j = cJSON_Parse(big);
    assert_non_null(j);
    const cJSON *msg = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "message");
    assert_string_equal(msg->valuestring, e.message);
    cJSON_Delete(j);

    /* Every rendered validation error is valid JSON. */
    for (size_t i = 0; i < LEN(bad_cases); i++) {
        struct oai_request r;
        assert_int_equal(parse(bad_cases[i].ep, bad_cases[i].body, &r, &e), -1);
        assert_true(oai_error_render(&e, big, sizeof(big)) > 0);
        j = cJSON_Parse(big);
        assert_non_null(j);
        cJSON_Delete(j);
    }
}

/* ------------------------------------------------------------------ */
/* Rendering for the upstream                                         */
/* ------------------------------------------------------------------ */

static void test_render(void **state)
{
    (void)state;
    struct oai_request r;
    struct oai_error err;
    assert_int_equal(parse(OAI_CHAT, chat_body, &r, &err), 0);
    size_t len = 0;
    char *out = oai_request_render(&r, "gpt-4o-2024-08-06", &len);
    assert_non_null(out);
    assert_int_equal(len, strlen(out));
    /* The client's model name is kept on the request. */
    assert_string_equal(r.model, "gpt-4o");
    /* "model" stays the first key. */
    assert_memory_equal(out, "{\"model\":\"gpt-4o-2024-08-06\",", 29);

    /* Equal to the original with only the model changed. */
    cJSON *want = cJSON_Parse(chat_body);
    cJSON *got = cJSON_Parse(out);
    assert_non_null(want);
    assert_non_null(got);
    assert_false(cJSON_Compare(want, got, 1));
    cJSON_ReplaceItemInObjectCaseSensitive(want, "model", cJSON_CreateString("gpt-4o-2024-08-06"));
    assert_true(cJSON_Compare(want, got, 1));
    /* Unknown and uninterpreted fields print byte for byte as compact JSON. */
    static const char *const kept[] = {
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{"
        "\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\",\"minimum\":0}}}}}]",
        "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"s\","
        "\"schema\":{\"type\":\"object\"}}}",
        "\"logprobs\":true,\"top_logprobs\":5",
        "\"x_vendor\":{\"deep\":[1,2.5,\"three\",null,true]}",
        "\"parallel_tool_calls\":false",
    };
    for (size_t i = 0; i < LEN(kept); i++)
        assert_non_null(strstr(out, kept[i]));
    cJSON_Delete(want);
    cJSON_Delete(got);
    free(out);

    /* NULL keeps the client's model; the body round-trips. */
    out = oai_request_render(&r, NULL, NULL);
    assert_non_null(out);
    want = cJSON_Parse(chat_body);
    got = cJSON_Parse(out);
    assert_true(cJSON_Compare(want, got, 1));
    cJSON_Delete(want);
    cJSON_Delete(got);
    free(out);
    oai_request_free(&r);

    struct oai_request empty = {0};
    assert_null(oai_request_render(&empty, "x", NULL));
    assert_string_equal(oai_endpoint_name(OAI_EMBEDDINGS), "embeddings");
}

/* ------------------------------------------------------------------ */
/* Robustness                                                         */
/* ------------------------------------------------------------------ */

static void test_truncations_and_mutations(void **state)
{
    (void)state;
    static const struct {
        enum oai_endpoint ep;
        const char *body;
    } bodies[] = {
        {OAI_CHAT, chat_body},
        {OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":[[1,2],[3]],\"max_tokens\":5}"},
        {OAI_EMBEDDINGS, "{\"model\":\"e\",\"input\":[\"a\",\"b\\u00e9\"],\"dimensions\":8}"},
    };
    for (size_t b = 0; b < LEN(bodies); b++) {
        size_t len = strlen(bodies[b].body);
        for (size_t cut = 0; cut <= len; cut++) {
            char *copy = malloc(cut ? cut : 1);
            assert_non_null(copy);
            memcpy(copy, bodies[b].body, cut);
            struct oai_request r;
            struct oai_error err;
            int rc = oai_request_parse(bodies[b].ep, copy, cut, &r, &err);
            /* A strict prefix of a JSON object is never a complete object. */
            assert_int_equal(rc, cut == len ? 0 : -1);
            if (rc == 0)
                oai_request_free(&r);
            else
                assert_int_equal(err.status, 400);
            free(copy);
        }

        /* Byte mutations with a fixed seed: must return cleanly either way. */
        uint32_t seed = 0xC0FFEE;
        static const char alphabet[] = "{}[]\",:0-.e1\\ ntfu\x80\xff";
        for (int round = 0; round < 3000; round++) {
            char *copy = malloc(len);
            assert_non_null(copy);
            memcpy(copy, bodies[b].body, len);
            for (int k = 0; k < 3; k++) {
                seed = seed * 1103515245u + 12345u;
                size_t pos = (seed >> 8) % len;
                seed = seed * 1103515245u + 12345u;
                copy[pos] = alphabet[(seed >> 8) % (sizeof(alphabet) - 1)];
            }
            struct oai_request r;
            struct oai_error err;
            char ebuf[1024];
            if (oai_request_parse(bodies[b].ep, copy, len, &r, &err) == 0) {
                char *out = oai_request_render(&r, "up", NULL);
                assert_non_null(out);
                free(out);
                oai_request_free(&r);
            } else {
                assert_true(oai_error_render(&err, ebuf, sizeof(ebuf)) > 0);
            }
            free(copy);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_valid),
        cmocka_unit_test(test_completions_valid),
        cmocka_unit_test(test_embeddings_valid),
        cmocka_unit_test(test_invalid_bodies),
        cmocka_unit_test(test_specific_messages),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_error_render),
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_truncations_and_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
