/* Unit tests for gateway/localtok.c: which providers get the engine's tokenizer, sharing
 * across snapshots, reload when the files change, a failed load falling back, and counts equal
 * to what engine/prompt.c gives for the same request. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <cjson/cJSON.h>

#include "engine/prompt.h"
#include "gateway/config.h"
#include "gateway/localtok.h"
#include "gateway/openai.h"

static void fixture_dir(const char *name, char *out, size_t n)
{
    const char *src = getenv("LLMGATE_SRCDIR");
    snprintf(out, n, "%s/tests/fixtures/tokenizer/%s", src ? src : ".", name);
}

/* A config with local providers "a" (model_dir dir_a, template tmpl_a or none), "b" (dir_b),
 * "c" (no model_dir) and an OpenAI provider "o" (model_dir set but not local). */
static struct config *conf(const char *dir_a, const char *tmpl_a, const char *dir_b)
{
    char text[8192], ta[64] = "";
    if (tmpl_a) snprintf(ta, sizeof ta, ", \"chat_template\": \"%s\"", tmpl_a);
    snprintf(text, sizeof text,
             "{\"providers\": {"
             "\"a\": {\"kind\": \"local\", \"base_url\": \"http://l/v1\", \"socket\": \"/tmp/a\","
             " \"autostart\": false, \"model_dir\": \"%s\"%s},"
             "\"b\": {\"kind\": \"local\", \"base_url\": \"http://l/v1\", \"socket\": \"/tmp/b\","
             " \"autostart\": false, \"model_dir\": \"%s\"},"
             "\"c\": {\"kind\": \"local\", \"base_url\": \"http://l/v1\", \"socket\": \"/tmp/c\","
             " \"autostart\": false},"
             "\"o\": {\"base_url\": \"http://h/v1\", \"model_dir\": \"%s\"}},"
             "\"models\": {\"m\": {\"provider\": \"a\"}}}",
             dir_a, ta, dir_b, dir_a);
    struct config *c = NULL;
    char err[512];
    if (config_parse(text, strlen(text), "t.conf", &c, err, sizeof err) != 0) fail_msg("%s", err);
    localtok_attach(c);
    return c;
}

static const struct provider_conf *prov(const struct config *c, const char *name)
{
    for (size_t i = 0; i < c->n_providers; i++)
        if (strcmp(c->providers[i].name, name) == 0) return &c->providers[i];
    fail_msg("no provider %s", name);
    return NULL;
}

static void parse(enum oai_endpoint ep, const char *body, struct oai_request *o)
{
    struct oai_error e;
    if (oai_request_parse(ep, body, strlen(body), o, &e) != 0) fail_msg("%s", e.message);
}

/* What engine/prompt.c counts for a chat request with tokenizer dir and template tmpl. */
static long engine_chat_count(const char *dir, const char *tmpl, const struct oai_request *o)
{
    struct tokenizer *t;
    struct chat_template ct;
    char note[320], err[512];
    assert_int_equal(tokenizer_load(dir, &t, err, sizeof err), 0);
    assert_int_equal(prompt_template_init(&ct, t, tmpl, note, sizeof note, err, sizeof err), 0);
    struct prompt_ids p = {0};
    struct prompt_error pe;
    assert_int_equal(
        prompt_chat(t, &ct, cJSON_GetObjectItemCaseSensitive(o->root, "messages"), &p, &pe), 0);
    long n = (long)p.n;
    prompt_ids_free(&p);
    chat_template_release(&ct);
    tokenizer_free(t);
    return n;
}

static void test_attach_shares_and_falls_back(void **state)
{
    (void)state;
    char qwen[1024], spm[1024];
    fixture_dir("qwen2", qwen, sizeof qwen);
    fixture_dir("spm", spm, sizeof spm);
    struct config *c1 = conf(qwen, NULL, "/nonexistent/model");
    assert_non_null(prov(c1, "a")->tok);
    assert_null(prov(c1, "b")->tok); /* failed load: a warning, the config still loads */
    assert_null(prov(c1, "c")->tok); /* no model_dir */
    assert_null(prov(c1, "o")->tok); /* not local */

    /* a reload with the same directory and template reuses the loaded pair */
    struct config *c2 = conf(qwen, NULL, spm);
    assert_ptr_equal(prov(c2, "a")->tok, prov(c1, "a")->tok);
    assert_non_null(prov(c2, "b")->tok);
    assert_ptr_not_equal(prov(c2, "b")->tok, prov(c2, "a")->tok);
    /* another template is another pair; an unknown one is a failed load */
    struct config *c3 = conf(qwen, "llama3", spm);
    assert_non_null(prov(c3, "a")->tok);
    assert_ptr_not_equal(prov(c3, "a")->tok, prov(c1, "a")->tok);
    assert_ptr_equal(prov(c3, "b")->tok, prov(c2, "b")->tok);
    struct config *c4 = conf(qwen, "nope", spm);
    assert_null(prov(c4, "a")->tok);

    /* the template override is honoured in the count */
    struct oai_request o;
    parse(OAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi there\"}]}",
          &o);
    long n1, n3;
    assert_int_equal(localtok_count(prov(c1, "a")->tok, &o, &n1), 0);
    assert_int_equal(localtok_count(prov(c3, "a")->tok, &o, &n3), 0);
    assert_int_equal(n1, engine_chat_count(qwen, NULL, &o));
    assert_int_equal(n3, engine_chat_count(qwen, "llama3", &o));
    assert_true(n1 != n3);

    /* snapshots go in any order; the pair lives while one holds it (ASan checks the frees) */
    config_unref(c1);
    long n2;
    assert_int_equal(localtok_count(prov(c2, "a")->tok, &o, &n2), 0);
    assert_int_equal(n2, n1);
    oai_request_free(&o);
    config_unref(c3);
    config_unref(c2);
    config_unref(c4);
}

static void test_changed_files_are_loaded_again(void **state)
{
    (void)state;
    char src[1024], tmpl[] = "/tmp/llmgate-localtok-XXXXXX", cmd[3200];
    fixture_dir("qwen2", src, sizeof src);
    assert_non_null(mkdtemp(tmpl));
    snprintf(cmd, sizeof cmd, "cp '%s/tokenizer.json' '%s/tokenizer_config.json' '%s/'", src, src,
             tmpl);
    assert_int_equal(system(cmd), 0);
    struct config *c1 = conf(tmpl, NULL, tmpl);
    assert_ptr_equal(prov(c1, "a")->tok, prov(c1, "b")->tok);
    /* a new tokenizer_config.json (another size) is another tokenizer */
    snprintf(
        cmd, sizeof cmd,
        "printf '{\"bos_token\":null,\"eos_token\":\"<|im_end|>\",\"add_bos_token\":false}   \\n' "
        "> '%s/tokenizer_config.json'",
        tmpl);
    assert_int_equal(system(cmd), 0);
    struct config *c2 = conf(tmpl, NULL, tmpl);
    assert_non_null(prov(c2, "a")->tok);
    assert_ptr_not_equal(prov(c2, "a")->tok, prov(c1, "a")->tok);
    config_unref(c1);
    config_unref(c2);
    snprintf(cmd, sizeof cmd, "rm -r '%s'", tmpl);
    assert_int_equal(system(cmd), 0);
}

static void test_counts_and_refusals(void **state)
{
    (void)state;
    char spm[1024];
    fixture_dir("spm", spm, sizeof spm);
    struct config *c = conf(spm, "llama2", spm);
    const struct localtok *lt = prov(c, "a")->tok;
    assert_non_null(lt);
    struct oai_request o;
    long n = -7;

    parse(OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":[11,12,13,14]}", &o);
    assert_int_equal(localtok_count(lt, &o, &n), 0);
    assert_int_equal(n, 4); /* ids as they are */
    oai_request_free(&o);

    parse(OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"Hello world\"}", &o);
    assert_int_equal(localtok_count(lt, &o, &n), 0);
    struct tokenizer *t;
    char err[512];
    assert_int_equal(tokenizer_load(spm, &t, err, sizeof err), 0);
    int32_t *ids;
    size_t ni;
    assert_int_equal(tokenizer_encode(t, "Hello world", 11, 1, &ids, &ni), 0);
    assert_int_equal(n, (long)ni + 1); /* + BOS, as the engine prompts */
    free(ids);
    tokenizer_free(t);
    oai_request_free(&o);

    /* what the engine refuses, embeddings and oversized prompts: the caller estimates */
    n = -7;
    parse(OAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":[\"a\",\"b\"]}", &o);
    assert_int_equal(localtok_count(lt, &o, &n), -1);
    oai_request_free(&o);
    parse(OAI_CHAT,
          "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
          "{\"role\":\"user\",\"content\":\"b\"}]}",
          &o); /* Llama-2 needs alternating turns */
    assert_int_equal(localtok_count(lt, &o, &n), -1);
    oai_request_free(&o);
    parse(OAI_EMBEDDINGS, "{\"model\":\"m\",\"input\":\"hello\"}", &o);
    assert_int_equal(localtok_count(lt, &o, &n), -1);
    oai_request_free(&o);
    size_t big = LOCALTOK_MAX_CHARS + 1;
    char *body = malloc(big + 64);
    int k = snprintf(body, 64, "{\"model\":\"m\",\"prompt\":\"");
    memset(body + k, 'x', big);
    strcpy(body + k + big, "\"}");
    parse(OAI_COMPLETIONS, body, &o);
    assert_int_equal(localtok_count(lt, &o, &n), -1);
    body[k + big - 1] = '"';
    body[k + big] = '}';
    body[k + big + 1] = '\0';
    oai_request_free(&o);
    parse(OAI_COMPLETIONS, body, &o); /* exactly at the bound: counted */
    assert_int_equal(localtok_count(lt, &o, &n), 0);
    assert_true(n > 1);
    oai_request_free(&o);
    free(body);
    assert_int_equal(localtok_count(NULL, &o, &n), -1);
    config_unref(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attach_shares_and_falls_back),
        cmocka_unit_test(test_changed_files_are_loaded_again),
        cmocka_unit_test(test_counts_and_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
