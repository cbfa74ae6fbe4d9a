/* common/jsonv.c: agreement with cJSON on valid/invalid documents, edge cases,
 * depth limit, and seeded mutations of realistic upstream payloads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "common/jsonv.h"

static enum jsonv_type cjson_type(const char *s, size_t n)
{
    const char *end = NULL;
    cJSON *d = cJSON_ParseWithLengthOpts(s, n, &end, 0);
    if (!d) return JSONV_INVALID;
    while (end < s + n && (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t'))
        end++;
    enum jsonv_type t = end != s + n        ? JSONV_INVALID
                        : cJSON_IsObject(d) ? JSONV_OBJECT
                        : cJSON_IsArray(d)  ? JSONV_ARRAY
                                            : JSONV_SCALAR;
    cJSON_Delete(d);
    return t;
}

static void test_cases(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        enum jsonv_type t;
    } cases[] = {
        {"{}", JSONV_OBJECT},
        {" [ ] ", JSONV_ARRAY},
        {"{\"a\":[1,2.5,-3e10,true,false,null,\"x\\u00e9\\n\"]}", JSONV_OBJECT},
        {"\"s\"", JSONV_SCALAR},
        {"0", JSONV_SCALAR},
        {"-0.0e+1", JSONV_SCALAR},
        {"", JSONV_INVALID},
        {"   ", JSONV_INVALID},
        {"{", JSONV_INVALID},
        {"{\"a\"}", JSONV_INVALID},
        {"{\"a\":}", JSONV_INVALID},
        {"{\"a\":1,}", JSONV_INVALID},
        {"[1,]", JSONV_INVALID},
        {"[1 2]", JSONV_INVALID},
        {"{1:2}", JSONV_INVALID},
        {"01", JSONV_INVALID},
        {"1.", JSONV_INVALID},
        {"1e", JSONV_INVALID},
        {"+1", JSONV_INVALID},
        {"tru", JSONV_INVALID},
        {"nul", JSONV_INVALID},
        {"\"a\\x\"", JSONV_INVALID},
        {"\"a\\u12\"", JSONV_INVALID},
        {"\"unterminated", JSONV_INVALID},
        {"\"ctl\x01\"", JSONV_INVALID},
        {"{} {}", JSONV_INVALID},
        {"[]]", JSONV_INVALID},
        {"{\"a\":1}}", JSONV_INVALID},
        {"[{]}", JSONV_INVALID},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        enum jsonv_type got = jsonv_check(cases[i].s, strlen(cases[i].s));
        if (got != cases[i].t)
            fail_msg("case %zu '%s': got %d want %d", i, cases[i].s, got, cases[i].t);
    }
}

/* jsonv_parse: one value and only whitespace around it. */
static void test_parse_whole(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        bool ok;
    } cases[] = {
        {"{\"a\":1}", true}, {"  [1, 2]\r\n\t ", true}, {"{\"a\":1}junk", false},
        {"{} {}", false},    {"{\"a\":1}}", false},     {"", false},
        {"   ", false},      {"{\"a\":", false},        {"\"s\" x", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cJSON *d = jsonv_parse(cases[i].s, strlen(cases[i].s));
        if ((d != NULL) != cases[i].ok) fail_msg("case '%s'", cases[i].s);
        cJSON_Delete(d);
    }
    /* the length bounds it: a valid prefix of a longer buffer is the value */
    cJSON *d = jsonv_parse("[1]junk", 3);
    assert_non_null(d);
    cJSON_Delete(d);
}

static void test_depth(void **state)
{
    (void)state;
    char buf[2 * (JSONV_MAX_DEPTH + 1)];
    for (int d = JSONV_MAX_DEPTH; d <= JSONV_MAX_DEPTH + 1; d++) {
        memset(buf, '[', (size_t)d);
        memset(buf + d, ']', (size_t)d);
        assert_int_equal(jsonv_check(buf, 2 * (size_t)d),
                         d <= JSONV_MAX_DEPTH ? JSONV_ARRAY : JSONV_INVALID);
    }
}

/* Seeded random edits. With the full alphabet only soundness is checked (what
 * jsonv accepts, cJSON accepts with the same type): cJSON is laxer than RFC 8259
 * about numbers (05, 1.e3) and raw control characters in strings. With an
 * alphabet free of number characters and control characters the two must agree
 * exactly. */
static const char *number_free_seeds[] = {
    "{\"id\":\"chatcmpl\",\"choices\":[{\"delta\":{\"content\":\"tok \\\" \"},\"logprobs\":null,"
    "\"finish_reason\":null,\"ok\":true,\"no\":false}]}",
    "[{\"a\":{\"b\":[[],{},\"s\"]}},\"\\\"q\\\\\",null]",
};
static const char *realistic_seeds[] = {
    "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"content\":\"tok0 \"},\"logprobs\":null,\"finish_reason\":null}]}",
    "{\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5,\"total_tokens\":17},\"x\":[1.5e-3,-"
    "2]}",
    "[{\"a\":{\"b\":[[],{}]}},\"\\\"q\\\\\",0]",
};

static void mutate_and_compare(const char *alphabet, int exact)
{
    const char **seeds = exact ? number_free_seeds : realistic_seeds;
    size_t n_seeds = exact ? sizeof number_free_seeds / sizeof *number_free_seeds
                           : sizeof realistic_seeds / sizeof *realistic_seeds;
    int alen = (int)strlen(alphabet);
    srand(1234);
    char buf[512];
    for (size_t k = 0; k < n_seeds; k++) {
        size_t n0 = strlen(seeds[k]);
        assert_int_equal(jsonv_check(seeds[k], n0), cjson_type(seeds[k], n0));
        for (int it = 0; it < 20000; it++) {
            size_t n = n0;
            memcpy(buf, seeds[k], n);
            int edits = 1 + rand() % 3;
            for (int e = 0; e < edits && n > 0; e++) {
                size_t at = (size_t)rand() % n;
                switch (rand() % 3) {
                case 0: buf[at] = alphabet[rand() % alen]; break;
                case 1: memmove(buf + at, buf + at + 1, n - at - 1), n--; break;
                default:
                    memmove(buf + at + 1, buf + at, n - at);
                    buf[at] = alphabet[rand() % alen];
                    n++;
                }
            }
            enum jsonv_type a = jsonv_check(buf, n), b = cjson_type(buf, n);
            /* (cJSON is also lax about \\u escapes, so the exact seeds have none.) */
            if (exact ? a != b : (a != JSONV_INVALID && a != b))
                fail_msg("disagree on '%.*s': jsonv %d cJSON %d", (int)n, buf, a, b);
        }
    }
}

static void test_mutations_agree_with_cjson(void **state)
{
    (void)state;
    mutate_and_compare("{}[],:\"\\0123456789.eE+-tfnulrsa \n", 0);
    mutate_and_compare("{}[],:\"\\tfnulrsa ", 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_parse_whole),
        cmocka_unit_test(test_mutations_agree_with_cjson),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
