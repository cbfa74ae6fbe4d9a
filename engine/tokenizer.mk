# engine tokenizer, JSON reader and chat templates.
libllmgate_engine_a_SOURCES += engine/json.c engine/json.h \
	engine/unicode.c engine/unicode.h engine/unicode_data.c \
	engine/tokenizer.c engine/tokenizer.h engine/tokenizer_internal.h

if HAVE_CMOCKA
check_PROGRAMS += tests/unit/test_engine_json
TESTS += tests/unit/test_engine_json

tests_unit_test_engine_json_SOURCES = tests/unit/test_engine_json.c
tests_unit_test_engine_json_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_engine_json_LDADD = $(ENGINE_LIBS) $(CMOCKA_LIBS)
endif
