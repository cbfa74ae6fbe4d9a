/* Unit tests for engine/json.c: the strict arena JSON reader. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "engine/json.h"

static struct ejson_doc *parse(const char *s, char *err, size_t errlen)
{
    return ejson_parse(s, strlen(s), err, errlen);
}

static void expect_fail(const char *s, const char *msg_part)
{
    char err[256];
    struct ejson_doc *d = parse(s, err, sizeof err);
    if (d) fail_msg("accepted invalid JSON: %s", s);
    if (msg_part && !strstr(err, msg_part)) fail_msg("error for %s was '%s'", s, err);
}

static void test_scalars(void **state)
{
    (void)state;
    char err[256];
    struct ejson_doc *d =
        parse(" [null, true, false, 0, -1, 3.5, 1e3, -0.25E-2, \"x\"] ", err, sizeof err);
    assert_non_null(d);
    const struct ejson *r = ejson_root(d);
    assert_int_equal(r->type, EJSON_ARRAY);
    assert_int_equal(r->n, 9);
    assert_int_equal(ejson_at(r, 0)->type, EJSON_NULL);
    assert_int_equal(ejson_at(r, 1)->type, EJSON_TRUE);
    assert_int_equal(ejson_at(r, 2)->type, EJSON_FALSE);
    assert_true(ejson_at(r, 3)->num == 0.0);
    assert_true(ejson_at(r, 4)->num == -1.0);
    assert_true(ejson_at(r, 5)->num == 3.5);
    assert_true(ejson_at(r, 6)->num == 1000.0);
    assert_true(ejson_at(r, 7)->num == -0.0025);
    assert_string_equal(ejson_at(r, 8)->str, "x");
    assert_null(ejson_at(r, 9));
    assert_true(ejson_is_int(ejson_at(r, 6)));
    assert_false(ejson_is_int(ejson_at(r, 5)));
    ejson_free(d);

    d = parse("42", err, sizeof err);
    assert_non_null(d);
    assert_true(ejson_root(d)->num == 42.0);
    ejson_free(d);
    d = parse("12345678901234567890", err, sizeof err);
    assert_non_null(d);
    assert_true(ejson_root(d)->num == 12345678901234567890.0);
    assert_false(ejson_is_int(ejson_root(d))); /* beyond long long */
    ejson_free(d);
}

static void test_objects(void **state)
{
    (void)state;
    char err[256];
    struct ejson_doc *d = parse("{\"a\": 1, \"b\": {\"c\": [1, 2, {\"d\": \"e\"}]}, \"f\": 2.5, "
                                "\"a\": 7, \"t\": true, \"s\": \"str\", \"big\": 4294967296}",
                                err, sizeof err);
    assert_non_null(d);
    const struct ejson *r = ejson_root(d);
    long long v;
    assert_int_equal(ejson_get_int(r, "a", &v), 0);
    assert_int_equal(v, 1); /* first match */
    assert_int_equal(ejson_get_int(r, "big", &v), 0);
    assert_true(v == 4294967296LL);
    assert_int_equal(ejson_get_int(r, "f", &v), -1);
    assert_int_equal(ejson_get_int(r, "zz", &v), -1);
    assert_int_equal(ejson_get_int(r, "s", &v), -1);
    assert_true(ejson_get_num(r, "f", 0) == 2.5);
    assert_true(ejson_get_num(r, "zz", -3) == -3);
    assert_string_equal(ejson_get_str(r, "s"), "str");
    assert_null(ejson_get_str(r, "a"));
    assert_int_equal(ejson_get_bool(r, "t", 0), 1);
    assert_int_equal(ejson_get_bool(r, "zz", 5), 5);
    const struct ejson *c = ejson_get(ejson_get(r, "b"), "c");
    assert_non_null(c);
    assert_int_equal(c->n, 3);
    assert_string_equal(ejson_get_str(ejson_at(c, 2), "d"), "e");
    assert_null(ejson_get(c, "x")); /* not an object */
    assert_null(ejson_get(NULL, "x"));
    assert_null(ejson_at(r, 0)); /* not an array */
    ejson_free(d);

    d = parse("{}", err, sizeof err);
    assert_non_null(d);
    assert_int_equal(ejson_root(d)->type, EJSON_OBJECT);
    assert_int_equal(ejson_root(d)->n, 0);
    ejson_free(d);
    d = parse("[[]]", err, sizeof err);
    assert_non_null(d);
    assert_int_equal(ejson_at(ejson_root(d), 0)->n, 0);
    ejson_free(d);
}

static void test_strings(void **state)
{
    (void)state;
    char err[256];
    struct ejson_doc *d =
        parse("[\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\", \"\\u00e9\\u4e2d\", \"\\ud83d\\ude00\", "
              "\"\\ud800x\", \"\\udc00\", \"caf\xc3\xa9 \xf0\x9f\x98\x80\", \"nul\\u0000in\"]",
              err, sizeof err);
    assert_non_null(d);
    const struct ejson *r = ejson_root(d);
    assert_string_equal(ejson_at(r, 0)->str, "a\"b\\c/d\b\f\n\r\t");
    assert_string_equal(ejson_at(r, 1)->str, "\xc3\xa9\xe4\xb8\xad");
    assert_string_equal(ejson_at(r, 2)->str, "\xf0\x9f\x98\x80"); /* surrogate pair */
    assert_string_equal(ejson_at(r, 3)->str, "\xef\xbf\xbdx");    /* lone high -> U+FFFD */
    assert_string_equal(ejson_at(r, 4)->str, "\xef\xbf\xbd");     /* lone low -> U+FFFD */
    assert_string_equal(ejson_at(r, 5)->str, "caf\xc3\xa9 \xf0\x9f\x98\x80");
    assert_int_equal(ejson_at(r, 6)->str_len, 6);
    assert_memory_equal(ejson_at(r, 6)->str, "nul\0in", 7);
    ejson_free(d);

    /* keys are decoded too */
    d = parse("{\"\\u0120a\": 5}", err, sizeof err);
    assert_non_null(d);
    assert_non_null(ejson_get(ejson_root(d), "\xc4\xa0"
                                             "a"));
    ejson_free(d);
}

static void test_errors(void **state)
{
    (void)state;
    expect_fail("", "unexpected end");
    expect_fail("[1,]", "trailing comma");
    expect_fail("{\"a\":1,}", "trailing comma");
    expect_fail("[1 2]", "expected ',' or ']'");
    expect_fail("{\"a\" 1}", "expected ':'");
    expect_fail("{a:1}", "expected string key");
    expect_fail("01", "leading zeros");
    expect_fail("1.", "digit after '.'");
    expect_fail("1e", "exponent");
    expect_fail("-", "invalid number");
    expect_fail("+1", "unexpected character '+'");
    expect_fail("tru", "unexpected character 't'");
    expect_fail("\"abc", "unterminated string");
    expect_fail("\"a\tb\"", "control character");
    expect_fail("\"\\x\"", "invalid escape");
    expect_fail("\"\\u12g4\"", "bad \\u escape");
    expect_fail("\"\xff\"", "invalid UTF-8");
    expect_fail("\"\xc0\xaf\"", "invalid UTF-8");     /* overlong */
    expect_fail("\"\xed\xa0\x80\"", "invalid UTF-8"); /* encoded surrogate */
    expect_fail("[1] x", "trailing data");
    expect_fail("// c\n1", NULL);
    expect_fail("NaN", NULL);

    /* line:col are reported */
    char err[256];
    assert_null(parse("{\n  \"a\": [1,\n    2,,\n]}", err, sizeof err));
    assert_non_null(strstr(err, "line 3, column 7"));
    /* tiny error buffers are safe */
    char tiny[4];
    assert_null(parse("[", tiny, sizeof tiny));
    assert_int_equal(strlen(tiny), 3);
    assert_null(parse("[", NULL, 0));
}

static void test_depth(void **state)
{
    (void)state;
    char err[256];
    size_t n = EJSON_MAX_DEPTH;
    char *s = malloc(2 * n + 1);
    memset(s, '[', n);
    memset(s + n, ']', n);
    s[2 * n] = 0;
    struct ejson_doc *d = parse(s, err, sizeof err);
    assert_non_null(d); /* exactly the limit */
    ejson_free(d);
    free(s);
    n = 100000;
    s = malloc(2 * n + 1);
    memset(s, '[', n);
    memset(s + n, ']', n);
    s[2 * n] = 0;
    assert_null(parse(s, err, sizeof err));
    assert_non_null(strstr(err, "nesting deeper"));
    free(s);
}

static void test_not_nul_terminated(void **state)
{
    (void)state;
    char err[256];
    char buf[8] = {'1', '2', '.', '5', '9', '9', '9', '9'};
    struct ejson_doc *d = ejson_parse(buf, 4, err, sizeof err);
    assert_non_null(d);
    assert_true(ejson_root(d)->num == 12.5);
    ejson_free(d);
    assert_null(ejson_parse(buf, 3, err, sizeof err));
}

/* A tokenizer.json-sized document: many members, many arrays, parsed correctly. */
static void test_large(void **state)
{
    (void)state;
    size_t n = 150000, cap = n * 64 + 64, len = 0;
    char *s = malloc(cap);
    len += (size_t)sprintf(s + len, "{\"vocab\":{");
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(s + len, "%s\"t\\u0120%zu\":%zu", i ? "," : "", i, i);
    len += (size_t)sprintf(s + len, "},\"merges\":[");
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(s + len, "%s[\"a%zu\",\"b\"]", i ? "," : "", i);
    len += (size_t)sprintf(s + len, "]}");
    char err[256];
    struct ejson_doc *d = ejson_parse(s, len, err, sizeof err);
    assert_non_null(d);
    const struct ejson *v = ejson_get(ejson_root(d), "vocab");
    assert_int_equal(v->n, n);
    assert_string_equal(v->keys[123], "t\xc4\xa0"
                                      "123");
    assert_true(v->items[149999].num == 149999.0);
    const struct ejson *m = ejson_get(ejson_root(d), "merges");
    assert_int_equal(m->n, n);
    assert_string_equal(ejson_at(ejson_at(m, 777), 0)->str, "a777");
    ejson_free(d);
    free(s);
}

static void test_file(void **state)
{
    (void)state;
    char err[512];
    assert_null(ejson_parse_file("/nonexistent/x.json", err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent/x.json"));
    char path[] = "/tmp/ejson_testXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("{\"k\": [1, 2]}", f);
    fclose(f);
    struct ejson_doc *d = ejson_parse_file(path, err, sizeof err);
    assert_non_null(d);
    assert_int_equal(ejson_get(ejson_root(d), "k")->n, 2);
    ejson_free(d);
    remove(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalars), cmocka_unit_test(test_objects),
        cmocka_unit_test(test_strings), cmocka_unit_test(test_errors),
        cmocka_unit_test(test_depth),   cmocka_unit_test(test_not_nul_terminated),
        cmocka_unit_test(test_large),   cmocka_unit_test(test_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
