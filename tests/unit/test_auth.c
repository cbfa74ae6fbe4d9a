/* Unit tests for gateway/auth.c: bearer extraction and digest matching; the limits of a key
 * record (gateway/keys.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/hash.h"
#include "gateway/auth.h"
#include "gateway/keys.h"

static void test_bearer_parsing(void **state)
{
    (void)state;
    size_t n = 0;
    const char *k = auth_bearer_key("Bearer sk-abc", &n);
    assert_non_null(k);
    assert_int_equal(n, 6);
    assert_memory_equal(k, "sk-abc", 6);
    k = auth_bearer_key("bearer   sk-abc  ", &n); /* scheme is case-insensitive; spaces trimmed */
    assert_non_null(k);
    assert_int_equal(n, 6);
    assert_null(auth_bearer_key(NULL, &n));
    assert_null(auth_bearer_key("", &n));
    assert_null(auth_bearer_key("Basic dXNlcjpwdw==", &n));
    assert_null(auth_bearer_key("Bearer ", &n));
    assert_null(auth_bearer_key("Bearer    ", &n));
    assert_null(auth_bearer_key("Bearersk-abc", &n));
    char longkey[700] = "Bearer ";
    memset(longkey + 7, 'k', sizeof longkey - 8);
    longkey[sizeof longkey - 1] = '\0';
    assert_null(auth_bearer_key(longkey, &n)); /* bounded */
}

static void test_key_matching(void **state)
{
    (void)state;
    uint8_t digests[3][32];
    hash_sha256("first", 5, digests[0]);
    hash_sha256("second", 6, digests[1]);
    hash_sha256("third", 5, digests[2]);
    struct config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.api_keys = digests;
    cfg.n_api_keys = 3;
    assert_true(auth_key_valid(&cfg, "first", 5));
    assert_true(auth_key_valid(&cfg, "second", 6));
    assert_true(auth_key_valid(&cfg, "third", 5));
    assert_false(auth_key_valid(&cfg, "fourth", 6));
    assert_false(auth_key_valid(&cfg, "firs", 4));
    assert_false(auth_key_valid(&cfg, "first ", 6));
    assert_false(auth_key_valid(&cfg, "", 0));
    cfg.n_api_keys = 0; /* no digests configured: authentication is off */
    assert_true(auth_key_valid(&cfg, "anything", 8));
}

static void test_hex_and_ct_compare(void **state)
{
    (void)state;
    char hex[65];
    uint8_t raw[32], back[32];
    hash_sha256("abc", 3, raw);
    hash_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(hash_hex_decode(hex, back), 0);
    assert_true(hash_equal_ct(raw, back, 32));
    back[31] ^= 1;
    assert_false(hash_equal_ct(raw, back, 32));
    assert_int_equal(hash_hex_decode("zz", back), -1);
    hex[63] = 'g';
    assert_int_equal(hash_hex_decode(hex, back), -1);
}

/* Limits as stored in a key hash: a day or month window past 32 bits is kept whole,
 * anything past a maximum reads as that maximum (never as 0, "no limit"), and a
 * value that is not a number is no limit. */
static void test_key_limits_parse(void **state)
{
    (void)state;
    const char *f[] = {"id",          "tenant",     "tpmo",        "tpd",        "rpm",
                       "tenant.tpmo", "tenant.tpd", "concurrency", "max_tokens", "model_limits"};
    const char *v[] = {"key_1",
                       "acme",
                       "5000000000",
                       "99999999999999999999999",
                       "4000000001",
                       "1000000000000",
                       "12x",
                       "-3",
                       "18446744073709551617",
                       "{\"big\":{\"tpmo\":7e9,\"tpm\":9e9,\"tpd\":1e15}}"};
    struct key_record *k = keys_record_parse(f, v, sizeof f / sizeof *f);
    assert_non_null(k);
    assert_true(k->key.tpmo == 5000000000ull);
    assert_true(k->key.tpd == KEYS_WINDOW_LIMIT_MAX);
    assert_true(k->key.rpm == KEYS_LIMIT_MAX);
    assert_true(k->tenant_limits.tpmo == KEYS_WINDOW_LIMIT_MAX);
    assert_true(k->tenant_limits.tpd == 0);
    assert_true(k->key.conc == 0);
    assert_true(k->max_tokens == KEYS_LIMIT_MAX);
    const struct key_model_limit *ml = keys_model_limit(k, "big");
    assert_non_null(ml);
    assert_true(ml->l.tpmo == 7000000000ull);
    assert_true(ml->l.tpm == KEYS_LIMIT_MAX);
    assert_true(ml->l.tpd == KEYS_WINDOW_LIMIT_MAX);
    keys_record_release(k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bearer_parsing),
        cmocka_unit_test(test_key_matching),
        cmocka_unit_test(test_hex_and_ct_compare),
        cmocka_unit_test(test_key_limits_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
