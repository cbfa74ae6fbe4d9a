/* Unit tests for common/jsonc: comments, syntax error positions, item positions,
 * duplicate keys, nesting limits. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/jsonc.h"

static struct jsonc_doc *parse_ok(const char *text)
{
    struct jsonc_doc *doc = NULL;
    char err[256];
    int rc = jsonc_parse(text, strlen(text), "t.json", &doc, err, sizeof err);
    if (rc != 0) print_error("unexpected error: %s\n", err);
    assert_int_equal(rc, 0);
    assert_non_null(doc);
    assert_non_null(doc->root);
    return doc;
}

static void expect_error(const char *text, const char *want)
{
    struct jsonc_doc *doc = (struct jsonc_doc *)1;
    char err[256] = "";
    assert_int_equal(jsonc_parse(text, strlen(text), "t.json", &doc, err, sizeof err), -1);
    assert_null(doc);
    assert_string_equal(err, want);
}

static void assert_pos(const struct jsonc_doc *doc, const cJSON *item, int line, int col)
{
    int l = 0, c = 0;
    assert_non_null(item);
    assert_int_equal(jsonc_pos(doc, item, &l, &c), 0);
    assert_int_equal(l, line);
    assert_int_equal(c, col);
}

static void assert_key_pos(const struct jsonc_doc *doc, const cJSON *item, int line, int col)
{
    int l = 0, c = 0;
    assert_non_null(item);
    assert_int_equal(jsonc_key_pos(doc, item, &l, &c), 0);
    assert_int_equal(l, line);
    assert_int_equal(c, col);
}

static void test_comments(void **state)
{
    (void)state;
    struct jsonc_doc *doc = parse_ok("// leading\n"
                                     "{ /* block\n spanning */ \"url\": \"http://x/y\", // tail\n"
                                     "  \"c\": \"/* not a comment */\", \"q\": \"a\\\"//b\" }\n"
                                     "/* trailing */");
    cJSON *url = cJSON_GetObjectItemCaseSensitive(doc->root, "url");
    assert_string_equal(cJSON_GetStringValue(url), "http://x/y");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc->root, "c")),
                        "/* not a comment */");
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc->root, "q")),
                        "a\"//b");
    /* Offsets survive comment removal: "url" sits after the block comment on line 3. */
    assert_key_pos(doc, url, 3, 14);
    assert_pos(doc, url, 3, 21);
    jsonc_free(doc);
}

static void test_syntax_errors(void **state)
{
    (void)state;
    expect_error("{\n  \"a\": 1\n  \"b\": 2\n}", "t.json:3:3: expected ',' or '}', found '\"'");
    expect_error("[1, 2] x", "t.json:1:8: unexpected 'x' after the JSON value");
    expect_error("{\"a\": 1}}", "t.json:1:9: unexpected '}' after the JSON value");
    expect_error("{\"a\": \"abc}", "t.json:1:7: unterminated string");
    expect_error("{\"a\": \"abc\n, \"b\": 1}", "t.json:1:7: unterminated string");
    expect_error("{\"a\": 1 /* open\n\n", "t.json:1:9: unterminated /* comment");
    expect_error("{\"a\": 1,}", "t.json:1:9: expected a string key, found '}' (trailing comma)");
    expect_error("[1,\n ]", "t.json:2:2: expected a value, found ']' (trailing comma)");
    expect_error("{\"a\" 1}", "t.json:1:6: expected ':' after key, found '1'");
    expect_error("{a: 1}", "t.json:1:2: expected a string key, found 'a'");
    expect_error("[tru]", "t.json:1:2: expected a value, found 't'");
    expect_error("[1,", "t.json:1:4: expected a value, found end of input");
    expect_error("{\"a\": \"\\x\"}", "t.json:1:8: invalid escape sequence in string");
    expect_error("[\"\\u12\"]", "t.json:1:3: invalid \\u escape (expected 4 hex digits)");
    expect_error("[\"\\ud800x\"]", "t.json:1:3: invalid \\u escape (unpaired high surrogate)");
    expect_error("[\"\\u0000\"]", "t.json:1:3: \\u0000 is not allowed in strings");
    expect_error("[\"a\tb\"]", "t.json:1:4: raw control character 0x09 in string (use an escape)");
    expect_error("[-]", "t.json:1:2: invalid number");
    /* columns count bytes: "é" is two */
    expect_error("{\"é\": x}", "t.json:1:8: expected a value, found 'x'");
}

static void test_embedded_nul(void **state)
{
    (void)state;
    struct jsonc_doc *doc = NULL;
    char err[256];
    const char text[] = "{}\0{}";
    assert_int_equal(jsonc_parse(text, sizeof text - 1, "t.json", &doc, err, sizeof err), -1);
    assert_string_equal(err, "t.json:1:3: NUL byte in input");
}

static void test_empty(void **state)
{
    (void)state;
    expect_error("", "t.json:1:1: empty document (expected a JSON value)");
    expect_error("  // nothing\n /* here */ ",
                 "t.json:2:13: empty document (expected a JSON value)");
}

static void test_positions(void **state)
{
    (void)state;
    struct jsonc_doc *doc = parse_ok("{\n"
                                     "  \"a\": [1, {\"b\": true},\n"
                                     "\t\"s\"],\n"
                                     "  \"n\": null, \"x\": -1.5e3\n"
                                     "}\n");
    assert_pos(doc, doc->root, 1, 1);
    assert_key_pos(doc, doc->root, 1, 1);
    cJSON *a = cJSON_GetObjectItemCaseSensitive(doc->root, "a");
    assert_key_pos(doc, a, 2, 3);
    assert_pos(doc, a, 2, 8);
    assert_pos(doc, cJSON_GetArrayItem(a, 0), 2, 9);
    cJSON *obj = cJSON_GetArrayItem(a, 1);
    assert_pos(doc, obj, 2, 12);
    cJSON *b = cJSON_GetObjectItemCaseSensitive(obj, "b");
    assert_key_pos(doc, b, 2, 13);
    assert_pos(doc, b, 2, 18);
    cJSON *s = cJSON_GetArrayItem(a, 2);
    assert_pos(doc, s, 3, 2);
    assert_key_pos(doc, s, 3, 2);
    assert_pos(doc, cJSON_GetObjectItemCaseSensitive(doc->root, "n"), 4, 8);
    assert_pos(doc, cJSON_GetObjectItemCaseSensitive(doc->root, "x"), 4, 19);

    char err[128];
    assert_int_equal(jsonc_errorf(doc, b, err, sizeof err, "bad %s", "thing"), -1);
    assert_string_equal(err, "t.json:2:18: bad thing");
    assert_int_equal(jsonc_key_errorf(doc, b, err, sizeof err, "unknown key"), -1);
    assert_string_equal(err, "t.json:2:13: unknown key");
    /* Items not from this doc have no position. */
    cJSON *other = cJSON_CreateNull();
    int l, c;
    assert_int_equal(jsonc_pos(doc, other, &l, &c), -1);
    assert_int_equal(jsonc_errorf(doc, other, err, sizeof err, "x"), -1);
    assert_string_equal(err, "t.json: x");
    cJSON_Delete(other);
    jsonc_free(doc);
}

static void test_bom(void **state)
{
    (void)state;
    struct jsonc_doc *doc = parse_ok("\xEF\xBB\xBF{\"a\": 1}");
    assert_key_pos(doc, cJSON_GetObjectItemCaseSensitive(doc->root, "a"), 1, 5);
    jsonc_free(doc);
}

static void test_duplicate_keys(void **state)
{
    (void)state;
    expect_error("{\"a\": 1,\n \"b\": {\"x\": 1, \"x\": 2},\n \"a\": 3}",
                 "t.json:2:16: duplicate key 'x' (first at 2:8)");
    expect_error("{\"k\": 1, \"K\": 2, \"k\": 3}", "t.json:1:18: duplicate key 'k' (first at 1:2)");
    /* Many keys take the sorted path. */
    char buf[4096];
    size_t n = 0;
    n += (size_t)snprintf(buf + n, sizeof buf - n, "{");
    for (int i = 0; i < 100; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "\"k%d\": %d, ", i, i);
    snprintf(buf + n, sizeof buf - n, "\"k42\": 0}");
    char want[96];
    snprintf(want, sizeof want, "t.json:1:%zu: duplicate key 'k42' (first at 1:%d)", n + 1,
             (int)(strstr(buf, "\"k42\"") - buf) + 1);
    expect_error(buf, want);
    /* Same key in different objects is fine. */
    jsonc_free(parse_ok("[{\"a\": 1}, {\"a\": 2}]"));
}

static void test_deep_nesting(void **state)
{
    (void)state;
    size_t n = 5000;
    char *text = malloc(2 * n + 1);
    memset(text, '[', n);
    memset(text + n, ']', n);
    text[2 * n] = '\0';
    struct jsonc_doc *doc = NULL;
    char err[256];
    assert_int_equal(jsonc_parse(text, 2 * n, "deep.json", &doc, err, sizeof err), -1);
    assert_string_equal(err, "deep.json:1:1001: nesting deeper than 1000 levels");
    /* Exactly the limit is accepted. */
    memset(text, '[', 1000);
    memset(text + 1000, ']', 1000);
    assert_int_equal(jsonc_parse(text, 2000, "deep.json", &doc, err, sizeof err), 0);
    jsonc_free(doc);
    free(text);
}

static void test_load_file(void **state)
{
    (void)state;
    char path[] = "/tmp/test_jsonc_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "{ // hi\n \"a\": [1, 2] }\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    struct jsonc_doc *doc = NULL;
    char err[512];
    assert_int_equal(jsonc_load_file(path, &doc, err, sizeof err), 0);
    assert_string_equal(doc->filename, path);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(doc->root, "a")), 2);
    jsonc_free(doc);
    unlink(path);

    assert_int_equal(jsonc_load_file("/nonexistent/x.json", &doc, err, sizeof err), -1);
    assert_string_equal(err, "/nonexistent/x.json: cannot read: No such file or directory");
    assert_null(doc);
    jsonc_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_comments),       cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_embedded_nul),   cmocka_unit_test(test_empty),
        cmocka_unit_test(test_positions),      cmocka_unit_test(test_bom),
        cmocka_unit_test(test_duplicate_keys), cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_load_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
