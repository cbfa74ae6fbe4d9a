/* Unit tests for engine/chat_template.c: family detection and prompts identical to what HF's
 * Jinja rendering gives (tests/fixtures/tokenizer/chat_templates.json, made by
 * engine/tools/make_chat_template_fixtures.py). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "engine/chat_template.h"
#include "engine/json.h"

static struct ejson_doc *load_expected(void)
{
    char path[1024], err[512];
    const char *src = getenv("LLMGATE_SRCDIR");
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizer/chat_templates.json", src ? src : ".");
    struct ejson_doc *d = ejson_parse_file(path, err, sizeof err);
    if (!d) fail_msg("%s", err);
    return d;
}

static void test_against_jinja(void **state)
{
    (void)state;
    struct ejson_doc *d = load_expected();
    const struct ejson *root = ejson_root(d);
    const struct ejson *tmpls = ejson_get(root, "templates"), *convs = ejson_get(root, "convs");
    const struct ejson *out = ejson_get(root, "out");
    int checked = 0;
    for (size_t t = 0; t < tmpls->n; t++) {
        const char *tname = tmpls->keys[t];
        int is_llama2 = !strcmp(tname, "llama2"), is_zephyr = !strcmp(tname, "zephyr");
        const char *bos = (is_llama2 || is_zephyr) ? "<s>" : "<|begin_of_text|>";
        const char *eos = (is_llama2 || is_zephyr) ? "</s>" : "<|eot_id|>";
        struct chat_template ct;
        char err[256];
        assert_int_equal(
            chat_template_init(&ct, tmpls->items[t].str, NULL, bos, eos, err, sizeof err), 0);
        for (size_t c = 0; c < convs->n; c++) {
            const struct ejson *conv = &convs->items[c];
            struct chat_msg msgs[16];
            for (size_t i = 0; i < conv->n; i++) {
                msgs[i].role = ejson_get_str(&conv->items[i], "role");
                msgs[i].content = ejson_get_str(&conv->items[i], "content");
            }
            for (int gen = 0; gen <= 1; gen++) {
                char key[128];
                snprintf(key, sizeof key, "%s/%s/%d", tname, convs->keys[c], gen);
                const struct ejson *want = ejson_get(out, key);
                assert_non_null(want);
                char *s = NULL;
                size_t sl;
                int rc = chat_template_apply(&ct, msgs, conv->n, gen, &s, &sl, err, sizeof err);
                if (want->type == EJSON_NULL) { /* jinja raised */
                    if (rc == 0) fail_msg("%s: expected an error, got \"%s\"", key, s);
                    assert_non_null(strstr(err, "alternating"));
                } else {
                    if (rc != 0) fail_msg("%s: %s", key, err);
                    if (strcmp(s, want->str) != 0)
                        fail_msg("%s:\n want \"%s\"\n got  \"%s\"", key, want->str, s);
                    assert_int_equal(sl, want->str_len);
                }
                free(s);
                checked++;
            }
        }
        chat_template_release(&ct);
    }
    assert_true(checked >= 40);
    ejson_free(d);
}

static void test_detection(void **state)
{
    (void)state;
    struct chat_template ct;
    char err[256];
    assert_int_equal(chat_template_init(&ct, "{{ '<|im_start|>' + m }}", NULL, NULL, "<|im_end|>",
                                        err, sizeof err),
                     0);
    assert_int_equal(ct.kind, CHAT_TMPL_CHATML);
    assert_null(ct.default_system); /* plain ChatML: no default system prompt */
    chat_template_release(&ct);
    /* Qwen2 (not 2.5) default system prompt */
    assert_int_equal(chat_template_init(&ct,
                                        "{% if messages[0]['role'] != 'system' %}{{ "
                                        "'<|im_start|>system\\nYou are a helpful "
                                        "assistant.<|im_end|>\\n' }}{% endif %}",
                                        NULL, NULL, NULL, err, sizeof err),
                     0);
    assert_string_equal(ct.default_system, "You are a helpful assistant.");
    chat_template_release(&ct);
    assert_int_equal(
        chat_template_init(&ct, "<|start_header_id|>", NULL, NULL, NULL, err, sizeof err), 0);
    assert_int_equal(ct.kind, CHAT_TMPL_LLAMA3);
    assert_int_equal(ct.llama31_system, 0);
    chat_template_release(&ct);
    assert_int_equal(chat_template_init(&ct, "[INST] x", NULL, NULL, NULL, err, sizeof err), 0);
    assert_int_equal(ct.kind, CHAT_TMPL_LLAMA2);
    chat_template_release(&ct);
    assert_int_equal(chat_template_init(&ct, "<|user|>\n", NULL, NULL, NULL, err, sizeof err), 0);
    assert_int_equal(ct.kind, CHAT_TMPL_ZEPHYR);
    assert_string_equal(chat_template_kind_name(ct.kind), "zephyr");
    chat_template_release(&ct);
    /* override by name wins over the text */
    assert_int_equal(chat_template_init(&ct, "[INST]", "qwen2.5", NULL, NULL, err, sizeof err), 0);
    assert_int_equal(ct.kind, CHAT_TMPL_CHATML);
    assert_non_null(ct.default_system);
    chat_template_release(&ct);
    assert_int_equal(
        chat_template_init(&ct, NULL, "llama3.1", "<|begin_of_text|>", NULL, err, sizeof err), 0);
    assert_int_equal(ct.llama31_system, 1);
    chat_template_release(&ct);
    /* errors */
    assert_int_equal(chat_template_init(&ct, "{{ messages }}", NULL, NULL, NULL, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "no known family"));
    assert_int_equal(chat_template_init(&ct, NULL, NULL, NULL, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "no chat_template"));
    assert_int_equal(chat_template_init(&ct, NULL, "gemma", NULL, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "unknown chat template \"gemma\""));
}

static void test_bad_messages(void **state)
{
    (void)state;
    struct chat_template ct;
    char err[256], *s;
    assert_int_equal(chat_template_init(&ct, NULL, "chatml", NULL, NULL, err, sizeof err), 0);
    struct chat_msg bad_role[] = {{"wizard", "x"}};
    assert_int_equal(chat_template_apply(&ct, bad_role, 1, 1, &s, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "unknown role \"wizard\""));
    assert_null(s);
    struct chat_msg no_content[] = {{"user", NULL}};
    assert_int_equal(chat_template_apply(&ct, no_content, 1, 1, &s, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "messages[0]"));
    /* no messages: just the generation prompt */
    assert_int_equal(chat_template_apply(&ct, NULL, 0, 1, &s, NULL, err, sizeof err), 0);
    assert_string_equal(s, "<|im_start|>assistant\n");
    free(s);
    chat_template_release(&ct);
    /* Llama-2: two user turns in a row */
    assert_int_equal(chat_template_init(&ct, NULL, "llama2", "<s>", "</s>", err, sizeof err), 0);
    struct chat_msg two_users[] = {{"user", "a"}, {"user", "b"}};
    assert_int_equal(chat_template_apply(&ct, two_users, 2, 1, &s, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "messages[1]"));
    chat_template_release(&ct);
}

/* chat_template_render marks exactly the messages' contents (as rendered: stripped where the
 * template trims them) as the caller's text, in order, and nothing of the markup. */
static void test_literal_ranges(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        struct chat_msg msgs[5];
        size_t n;
        const char *want[5];
    } cases[] = {
        {"chatml",
         {{"system", "S1"}, {"user", " U1 "}, {"assistant", "A1"}, {"tool", "T1"}, {"user", "U2"}},
         5,
         {"S1", " U1 ", "A1", "T1", "U2"}},
        {"qwen2.5",
         {{"system", "S1"}, {"user", " U1 "}, {"assistant", "A1"}, {"tool", "T1"}, {"user", "U2"}},
         5,
         {"S1", " U1 ", "A1", "T1", "U2"}},
        {"llama3",
         {{"system", "S1"}, {"user", " U1 "}, {"assistant", "A1"}, {"tool", "T1"}, {"user", "U2"}},
         5,
         {"S1", "U1", "A1", "T1", "U2"}},
        {"llama3.1",
         {{"system", " S1 "},
          {"user", " U1 "},
          {"assistant", "A1"},
          {"tool", " T1"},
          {"user", "U2"}},
         5,
         {"S1", "U1", "A1", " T1", "U2"}},
        {"llama2",
         {{"system", "S1"}, {"user", " U1 "}, {"assistant", " A1"}, {"user", "U2"}},
         4,
         {"S1", " U1", "A1", "U2"}},
        {"zephyr",
         {{"system", "S1"}, {"user", "U1"}, {"assistant", "A1"}, {"tool", "T1"}, {"user", "U2"}},
         5,
         {"S1", "U1", "A1", "U2"}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct chat_template ct;
        char err[256], *s;
        size_t sl, n_lit;
        struct tok_range *lit;
        assert_int_equal(
            chat_template_init(&ct, NULL, cases[c].name, "<s>", "</s>", err, sizeof err), 0);
        assert_int_equal(chat_template_render(&ct, cases[c].msgs, cases[c].n, 1, &s, &sl, &lit,
                                              &n_lit, err, sizeof err),
                         0);
        size_t n_want = 0;
        while (n_want < 5 && cases[c].want[n_want])
            n_want++;
        if (n_lit != n_want) fail_msg("%s: %zu ranges, want %zu", cases[c].name, n_lit, n_want);
        for (size_t k = 0; k < n_lit; k++) {
            assert_true(lit[k].off + lit[k].len <= sl);
            if (lit[k].len != strlen(cases[c].want[k]) ||
                memcmp(s + lit[k].off, cases[c].want[k], lit[k].len) != 0)
                fail_msg("%s: range %zu is \"%.*s\", want \"%s\"", cases[c].name, k,
                         (int)lit[k].len, s + lit[k].off, cases[c].want[k]);
        }
        /* the same text as chat_template_apply */
        char *s2;
        assert_int_equal(
            chat_template_apply(&ct, cases[c].msgs, cases[c].n, 1, &s2, NULL, err, sizeof err), 0);
        assert_string_equal(s, s2);
        free(s2);
        free(s);
        free(lit);
        chat_template_release(&ct);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_jinja),
        cmocka_unit_test(test_detection),
        cmocka_unit_test(test_bad_messages),
        cmocka_unit_test(test_literal_ranges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
