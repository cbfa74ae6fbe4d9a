/* Unit tests for gateway/config: defaults, every kind of error with its position,
 * API keys from the environment, refcounting, the committed default config. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/config.h"

#define MIN_PROVIDERS "\"providers\": {\"p\": {\"base_url\": \"http://h/v1/\"}}"
#define MIN_MODELS    "\"models\": {\"m\": {\"provider\": \"p\"}}"

static struct config *parse_ok(const char *text)
{
    struct config *c = NULL;
    char err[512];
    int rc = config_parse(text, strlen(text), "t.conf", &c, err, sizeof err);
    if (rc != 0) print_error("unexpected error: %s\n", err);
    assert_int_equal(rc, 0);
    assert_non_null(c);
    return c;
}

static void expect_error(const char *text, const char *want)
{
    struct config *c = (struct config *)1;
    char err[512] = "";
    assert_int_equal(config_parse(text, strlen(text), "t.conf", &c, err, sizeof err), -1);
    assert_null(c);
    assert_string_equal(err, want);
}

static void test_defaults(void **state)
{
    (void)state;
    struct config *c = parse_ok("{" MIN_PROVIDERS ", " MIN_MODELS "}");
    assert_string_equal(c->path, "t.conf");
    assert_string_equal(c->listen_address, "127.0.0.1");
    assert_int_equal(c->port, 8080);
    assert_int_equal(c->backlog, 1024);
    assert_int_equal(c->workers, 0);
    assert_int_equal(c->max_header_bytes, 16384);
    assert_int_equal(c->max_body_bytes, 4194304);
    assert_int_equal(c->max_connections, 10000);
    assert_int_equal(c->read_timeout_ms, 30000);
    assert_int_equal(c->write_timeout_ms, 60000);
    assert_int_equal(c->drain_timeout_ms, 30000);
    assert_int_equal(c->log_level, LOG_INFO);
    assert_string_equal(c->access_log, "stderr");
    assert_int_equal(c->n_api_keys, 0);
    assert_null(c->api_keys);
    assert_string_equal(c->redis_address, "127.0.0.1");
    assert_int_equal(c->redis_port, 6379);

    assert_int_equal(c->n_providers, 1);
    const struct provider_conf *p = &c->providers[0];
    assert_string_equal(p->name, "p");
    assert_int_equal(p->kind, PROVIDER_OPENAI);
    assert_string_equal(p->base_url, "http://h/v1"); /* trailing '/' stripped */
    assert_null(p->api_key_env);
    assert_null(p->api_key);
    assert_int_equal(p->connect_timeout_ms, 2000);
    assert_int_equal(p->first_byte_timeout_ms, 60000);
    assert_int_equal(p->idle_timeout_ms, 30000);
    assert_int_equal(p->total_timeout_ms, 600000);
    assert_int_equal(p->max_connections, 256);

    assert_int_equal(c->n_models, 1);
    const struct model_conf *m = config_find_model(c, "m");
    assert_non_null(m);
    assert_string_equal(m->name, "m");
    assert_string_equal(m->provider_name, "p");
    assert_string_equal(m->model, "m"); /* defaults to the public name */
    assert_ptr_equal(m->provider, p);
    assert_null(config_find_model(c, "nope"));
    assert_null(config_find_model(c, ""));
    config_unref(c);
}

static void test_all_values(void **state)
{
    (void)state;
    struct config *c = parse_ok(
        "{ \"listen\": {\"address\": \"0.0.0.0\", \"port\": 9000, \"backlog\": 16},\n"
        "  \"workers\": 4,\n"
        "  \"limits\": {\"max_header_bytes\": 2048, \"max_body_bytes\": 1048576,\n"
        "             \"max_connections\": 5, \"read_timeout_ms\": 100,\n"
        "             \"write_timeout_ms\": 3600000, \"drain_timeout_ms\": 0},\n"
        "  \"log\": {\"level\": \"debug\", \"access_log\": \"/var/log/llmgate.log\"},\n"
        "  \"auth\": {\"api_keys_sha256\": [\n"
        "    \"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\",\n"
        "    \"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff\"]},\n"
        "  \"redis\": {\"address\": \"redis.local\", \"port\": 6380},\n"
        "  \"providers\": {\"zeta\": {\"base_url\": \"https://api.example.com/v1\",\n"
        "                          \"connect_timeout_ms\": 1, \"max_connections\": 100000},\n"
        "                \"alpha\": {\"kind\": \"openai\", \"base_url\": \"http://a:1\"}},\n"
        "  \"models\": {\"z-model\": {\"provider\": \"alpha\", \"model\": \"up-z\"},\n"
        "             \"a-model\": {\"provider\": \"zeta\"},\n"
        "             \"org/m:1\": {\"provider\": \"zeta\"}}\n"
        "}\n");
    assert_string_equal(c->listen_address, "0.0.0.0");
    assert_int_equal(c->port, 9000);
    assert_int_equal(c->backlog, 16);
    assert_int_equal(c->workers, 4);
    assert_int_equal(c->max_header_bytes, 2048);
    assert_int_equal(c->max_body_bytes, 1048576);
    assert_int_equal(c->max_connections, 5);
    assert_int_equal(c->read_timeout_ms, 100);
    assert_int_equal(c->write_timeout_ms, 3600000);
    assert_int_equal(c->drain_timeout_ms, 0);
    assert_int_equal(c->log_level, LOG_DEBUG);
    assert_string_equal(c->access_log, "/var/log/llmgate.log");
    assert_int_equal(c->n_api_keys, 2);
    for (int i = 0; i < 32; i++) {
        assert_int_equal(c->api_keys[0][i], i);
        assert_int_equal(c->api_keys[1][i], 0xff);
    }
    assert_string_equal(c->redis_address, "redis.local");
    assert_int_equal(c->redis_port, 6380);
    /* Providers and models come back sorted by name. */
    assert_int_equal(c->n_providers, 2);
    assert_string_equal(c->providers[0].name, "alpha");
    assert_string_equal(c->providers[0].base_url, "http://a:1");
    assert_string_equal(c->providers[1].name, "zeta");
    assert_int_equal(c->providers[1].connect_timeout_ms, 1);
    assert_int_equal(c->providers[1].max_connections, 100000);
    assert_int_equal(c->n_models, 3);
    assert_string_equal(c->models[0].name, "a-model");
    const struct model_conf *z = config_find_model(c, "z-model");
    assert_non_null(z);
    assert_string_equal(z->model, "up-z");
    assert_ptr_equal(z->provider, &c->providers[0]);
    const struct model_conf *a = config_find_model(c, "a-model");
    assert_ptr_equal(a->provider, &c->providers[1]);
    assert_non_null(config_find_model(c, "org/m:1"));
    config_unref(c);
}

static void test_unknown_keys(void **state)
{
    (void)state;
    expect_error("{\"bogus\": 1, " MIN_PROVIDERS ", " MIN_MODELS "}",
                 "t.conf:1:2: unknown option 'bogus'");
    expect_error("{\n  \"limits\": {\n    \"max_body_bytes\": 2048,\n    \"x\": 1 }}",
                 "t.conf:4:5: unknown option 'x' in 'limits'");
    expect_error("{\"providers\": {\"p\": {\"base_url\": \"http://h\", \"kindd\": \"openai\"}}}",
                 "t.conf:1:46: unknown option 'kindd' in 'providers.p'");
    expect_error("{" MIN_PROVIDERS ", \"models\": {\"m\": {\"provider\": \"p\", \"upstream\": 1}}}",
                 "t.conf:1:86: unknown option 'upstream' in 'models.m'");
    /* Keys are single components: no dotted shortcuts, no empty keys. */
    expect_error("{\"limits.max_body_bytes\": 2048}",
                 "t.conf:1:2: unknown option 'limits.max_body_bytes'");
    expect_error("{\"limits\": {\"\": {\"max_body_bytes\": 2048}}}",
                 "t.conf:1:13: unknown option '' in 'limits'");
}

static void test_wrong_types(void **state)
{
    (void)state;
    expect_error("{\"listen\": {\"port\": \"80\"}}",
                 "t.conf:1:21: 'listen.port' must be an integer, got a string");
    expect_error("{\"limits\": {\"read_timeout_ms\": true}}",
                 "t.conf:1:32: 'limits.read_timeout_ms' must be an integer (milliseconds), got "
                 "a boolean");
    expect_error("{\"limits\": 5}", "t.conf:1:12: 'limits' must be an object, got a number");
    expect_error("{\"log\": {\"access_log\": 1}}",
                 "t.conf:1:24: 'log.access_log' must be a string, got a number");
    expect_error("{\"auth\": {\"api_keys_sha256\": \"abc\"}}",
                 "t.conf:1:30: 'auth.api_keys_sha256' must be an array of strings, got a string");
    expect_error("{\"providers\": []}", "t.conf:1:15: 'providers' must be an object, got an array");
    expect_error("{\"providers\": {\"p\": 1}}",
                 "t.conf:1:21: 'providers.p' must be an object, got a number");
    expect_error("[1]", "t.conf:1:1: the configuration must be an object, got an array");
}

static void test_out_of_range(void **state)
{
    (void)state;
    expect_error("{\"listen\": {\"port\": 70000}}",
                 "t.conf:1:21: 'listen.port' must be between 1 and 65535, got 70000");
    expect_error("{\"listen\": {\"port\": 0}}",
                 "t.conf:1:21: 'listen.port' must be between 1 and 65535, got 0");
    expect_error("{\"workers\": -1}", "t.conf:1:13: 'workers' must be between 0 and 1024, got -1");
    expect_error("{\"limits\": {\"max_body_bytes\": 1.5}}",
                 "t.conf:1:31: 'limits.max_body_bytes' must be an integer between 1024 and "
                 "1073741824");
    expect_error("{\"limits\": {\"max_body_bytes\": 1e999}}",
                 "t.conf:1:31: 'limits.max_body_bytes' must be an integer between 1024 and "
                 "1073741824");
    expect_error("{\"providers\": {\"p\": {\"base_url\": \"http://h\", \"total_timeout_ms\": 0}}}",
                 "t.conf:1:66: 'providers.p.total_timeout_ms' must be between 1 and 86400000, "
                 "got 0");
    expect_error("{\"listen\": {\"address\": \"\"}}",
                 "t.conf:1:24: 'listen.address' must not be empty");
}

static void test_bad_enum(void **state)
{
    (void)state;
    expect_error("{\"log\": {\"level\": \"loud\"}}",
                 "t.conf:1:19: 'log.level' must be one of \"debug\", \"info\", \"warn\", "
                 "\"error\", got \"loud\"");
    expect_error("{\"providers\": {\"p\": {\"kind\": 3}}}",
                 "t.conf:1:30: 'providers.p.kind' must be one of \"openai\", \"local\", "
                 "\"azure_openai\", \"anthropic\", got a number");
}

static void test_bad_api_keys(void **state)
{
    (void)state;
    const char *want = "t.conf:3:3: 'auth.api_keys_sha256[1]' must be a SHA-256 digest: 64 "
                       "lowercase hex characters";
    /* uppercase */
    expect_error("{\"auth\": {\"api_keys_sha256\": [\n"
                 "  \"0000000000000000000000000000000000000000000000000000000000000000\",\n"
                 "  \"000000000000000000000000000000000000000000000000000000000000000A\"]}}",
                 want);
    /* too short */
    expect_error("{\"auth\": {\"api_keys_sha256\": [\n"
                 "  \"0000000000000000000000000000000000000000000000000000000000000000\",\n"
                 "  \"00\"]}}",
                 want);
    /* not a string */
    expect_error("{\"auth\": {\"api_keys_sha256\": [\n"
                 "  \"0000000000000000000000000000000000000000000000000000000000000000\",\n"
                 "  7]}}",
                 want);
}

static void test_providers_and_models(void **state)
{
    (void)state;
    expect_error("{" MIN_PROVIDERS ",\n \"models\": {\"m\": {\"provider\": \"nope\"}}}",
                 "t.conf:2:31: model 'm' uses unknown provider 'nope'");
    expect_error("{" MIN_PROVIDERS "}", "t.conf:1:1: missing required option 'models'");
    expect_error("{" MIN_PROVIDERS ", \"models\": {}}",
                 "t.conf:1:62: 'models' must name at least one model");
    expect_error("{" MIN_PROVIDERS ", \"models\": {\"m\": {\"model\": \"x\"}}}",
                 "t.conf:1:68: missing required option 'provider' in 'models.m'");
    expect_error("{\"providers\": {\"p\": {}}}",
                 "t.conf:1:21: missing required option 'base_url' in 'providers.p'");
    expect_error("{\"providers\": {\"p\": {\"base_url\": \"ftp://h\"}}}",
                 "t.conf:1:34: 'providers.p.base_url' must start with http:// or https://");
    expect_error("{\"providers\": {\"p\": {\"base_url\": \"http:///v1\"}}}",
                 "t.conf:1:34: 'providers.p.base_url' has no host");
    expect_error("{\"providers\": {\"bad name\": {\"base_url\": \"http://h\"}}}",
                 "t.conf:1:16: provider name 'bad name' must be 1 to 64 characters of "
                 "[A-Za-z0-9._-]");
    expect_error("{\"providers\": {\"p\": {\"base_url\": \"http://h\", \"api_key_env\": \"1X\"}}}",
                 "t.conf:1:61: 'providers.p.api_key_env' must be an environment variable name "
                 "([A-Za-z_][A-Za-z0-9_]*)");
    expect_error("{" MIN_PROVIDERS ", \"models\": {\"a b\": {\"provider\": \"p\"}}}",
                 "t.conf:1:63: model name 'a b' must be 1 to 256 bytes without spaces");
}

static void test_syntax_and_duplicates(void **state)
{
    (void)state;
    expect_error("{\n  \"workers\": 1\n  \"log\": {}\n}",
                 "t.conf:3:3: expected ',' or '}', found '\"'");
    expect_error("{\"log\": {\"level\": \"info\",\n         \"level\": \"debug\"}}",
                 "t.conf:2:10: duplicate key 'level' (first at 1:10)");
    expect_error("", "t.conf:1:1: empty document (expected a JSON value)");
}

static void test_api_key_from_env(void **state)
{
    (void)state;
    const char *text = "{\"providers\": {\"p\": {\"base_url\": \"http://h\", "
                       "\"api_key_env\": \"LLMGATE_TEST_KEY\"}}, " MIN_MODELS "}";
    assert_int_equal(setenv("LLMGATE_TEST_KEY", "sk-test-123", 1), 0);
    struct config *c = parse_ok(text);
    assert_string_equal(c->providers[0].api_key_env, "LLMGATE_TEST_KEY");
    assert_string_equal(c->providers[0].api_key, "sk-test-123");
    config_unref(c);
    assert_int_equal(unsetenv("LLMGATE_TEST_KEY"), 0);
    c = parse_ok(text);
    assert_string_equal(c->providers[0].api_key_env, "LLMGATE_TEST_KEY");
    assert_null(c->providers[0].api_key);
    config_unref(c);
}

static void test_refcount(void **state)
{
    (void)state;
    struct config *c = parse_ok("{" MIN_PROVIDERS ", " MIN_MODELS "}");
    assert_int_equal(atomic_load(&c->refs), 1);
    assert_ptr_equal(config_ref(c), c);
    assert_ptr_equal(config_ref(c), c);
    assert_int_equal(atomic_load(&c->refs), 3);
    config_unref(c);
    config_unref(c);
    assert_int_equal(atomic_load(&c->refs), 1);
    assert_string_equal(c->models[0].name, "m"); /* still alive */
    config_unref(c);                             /* freed; ASan checks the rest */
    config_unref(NULL);
}

/* The source tree: $LLMGATE_SRCDIR (set by make check), else derived from __FILE__. */
static void srcdir_path(char *out, size_t n, const char *rel)
{
    const char *env = getenv("LLMGATE_SRCDIR");
    if (env && env[0]) {
        snprintf(out, n, "%s/%s", env, rel);
        return;
    }
    const char *file = __FILE__;
    const char *tail = strstr(file, "tests/unit/test_config.c");
    int dirlen = tail ? (int)(tail - file) : 0;
    snprintf(out, n, "%.*s%s", dirlen, file, rel);
}

static void test_default_conf_file(void **state)
{
    (void)state;
    char path[4096], err[512];
    srcdir_path(path, sizeof path, "conf/llmgate.conf");
    struct config *c = NULL;
    int rc = config_load(path, &c, err, sizeof err);
    if (rc != 0) print_error("%s\n", err);
    assert_int_equal(rc, 0);
    assert_string_equal(c->path, path);
    assert_int_equal(c->port, 8080);
    assert_int_equal(c->n_providers, 1);
    assert_string_equal(c->providers[0].name, "mock");
    assert_string_equal(c->providers[0].base_url, "http://127.0.0.1:9090/v1");
    assert_string_equal(c->providers[0].api_key_env, "MOCK_API_KEY");
    const char *names[] = {"gpt-4o-mini", "mock-model", "text-embedding-3-small"};
    for (size_t i = 0; i < 3; i++) {
        const struct model_conf *m = config_find_model(c, names[i]);
        assert_non_null(m);
        assert_string_equal(m->provider->name, "mock");
    }
    config_unref(c);

    assert_int_equal(config_load("/nonexistent/llmgate.conf", &c, err, sizeof err), -1);
    assert_null(c);
    assert_string_equal(err, "/nonexistent/llmgate.conf: cannot read: No such file or directory");
}

static void test_reference(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    assert_int_equal(config_write_reference(f), 0);
    fclose(f);
    assert_non_null(strstr(buf, "| `listen.port` | integer | `8080` | 1 to 65535 |"));
    assert_non_null(strstr(buf, "| `limits.read_timeout_ms` | integer (ms) | `30000` |"));
    assert_non_null(strstr(buf, "| `log.level` | enum | `\"info\"` | `debug`, `info`, "));
    assert_non_null(strstr(buf, "| `providers.<name>.base_url` | string | *required* |"));
    assert_non_null(strstr(buf, "| `models.<name>.provider` | string | *required* |"));
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_all_values),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_bad_enum),
        cmocka_unit_test(test_bad_api_keys),
        cmocka_unit_test(test_providers_and_models),
        cmocka_unit_test(test_syntax_and_duplicates),
        cmocka_unit_test(test_api_key_from_env),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_default_conf_file),
        cmocka_unit_test(test_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
