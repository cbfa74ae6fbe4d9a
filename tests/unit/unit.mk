# tests/unit/: one cmocka program per gateway/common module.
if HAVE_CMOCKA
UNIT_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS) $(LIBEVENT_CFLAGS) $(LIBCURL_CFLAGS) $(CJSON_CFLAGS) $(OPENSSL_CFLAGS)
UNIT_LIBS = $(GATEWAY_LIBS) $(CMOCKA_LIBS)

check_PROGRAMS += tests/unit/test_jsonc tests/unit/test_config tests/unit/test_sse tests/unit/test_openai \
	tests/unit/test_auth tests/unit/test_jsonv
TESTS += tests/unit/test_jsonc tests/unit/test_config tests/unit/test_sse tests/unit/test_openai \
	tests/unit/test_auth tests/unit/test_jsonv

tests_unit_test_jsonc_SOURCES = tests/unit/test_jsonc.c
tests_unit_test_jsonc_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_jsonc_LDADD = $(UNIT_LIBS)
tests_unit_test_config_SOURCES = tests/unit/test_config.c
tests_unit_test_config_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_config_LDADD = $(UNIT_LIBS)
tests_unit_test_sse_SOURCES = tests/unit/test_sse.c
tests_unit_test_sse_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_sse_LDADD = $(UNIT_LIBS)
tests_unit_test_openai_SOURCES = tests/unit/test_openai.c
tests_unit_test_openai_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_openai_LDADD = $(UNIT_LIBS)
tests_unit_test_auth_SOURCES = tests/unit/test_auth.c
tests_unit_test_auth_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_auth_LDADD = $(UNIT_LIBS)
tests_unit_test_jsonv_SOURCES = tests/unit/test_jsonv.c
tests_unit_test_jsonv_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_jsonv_LDADD = $(UNIT_LIBS)
check_PROGRAMS += tests/unit/test_quota
TESTS += tests/unit/test_quota
tests_unit_test_quota_SOURCES = tests/unit/test_quota.c
tests_unit_test_quota_CFLAGS = $(UNIT_CFLAGS) $(HIREDIS_CFLAGS)
tests_unit_test_quota_LDADD = $(UNIT_LIBS)
check_PROGRAMS += tests/unit/test_grant
TESTS += tests/unit/test_grant
tests_unit_test_grant_SOURCES = tests/unit/test_grant.c
tests_unit_test_grant_CFLAGS = $(UNIT_CFLAGS) $(HIREDIS_CFLAGS)
tests_unit_test_grant_LDADD = $(UNIT_LIBS)
check_PROGRAMS += tests/unit/test_localtok
TESTS += tests/unit/test_localtok
tests_unit_test_localtok_SOURCES = tests/unit/test_localtok.c
tests_unit_test_localtok_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_localtok_LDADD = $(UNIT_LIBS)

# routing/: policies, breakers and budgets, the Anthropic adapter.
check_PROGRAMS += tests/unit/test_policy tests/unit/test_breaker tests/unit/test_anthropic
TESTS += tests/unit/test_policy tests/unit/test_breaker tests/unit/test_anthropic
tests_unit_test_policy_SOURCES = tests/unit/test_policy.c
tests_unit_test_policy_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_policy_LDADD = $(UNIT_LIBS)
tests_unit_test_breaker_SOURCES = tests/unit/test_breaker.c
tests_unit_test_breaker_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_breaker_LDADD = $(UNIT_LIBS)
tests_unit_test_anthropic_SOURCES = tests/unit/test_anthropic.c
tests_unit_test_anthropic_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_anthropic_LDADD = $(UNIT_LIBS)
endif

# Mutation fuzzing of every input parser (gateway, cache, routing, engine); bounded by
# LLMGATE_FUZZ_ITERS, meant for the sanitizer build.
if HAVE_CMOCKA
check_PROGRAMS += tests/unit/test_fuzz
TESTS += tests/unit/test_fuzz
tests_unit_test_fuzz_SOURCES = tests/unit/test_fuzz.c
tests_unit_test_fuzz_CFLAGS = $(UNIT_CFLAGS) $(HIREDIS_CFLAGS)
tests_unit_test_fuzz_LDADD = $(UNIT_LIBS)
endif
