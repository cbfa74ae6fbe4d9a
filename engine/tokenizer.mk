# engine tokenizer, JSON reader, chat templates and the prompt builder (messages -> ids) that
# llmgate-engine and the gateway's local token counts share.
libllmgate_engine_a_SOURCES += engine/json.c engine/json.h \
	engine/unicode.c engine/unicode.h engine/unicode_data.c \
	engine/tokenizer.c engine/tokenizer.h engine/tokenizer_internal.h engine/tokenizer_synth.c \
	engine/chat_template.c engine/chat_template.h \
	engine/prompt.c engine/prompt.h

EXTRA_DIST += tests/fixtures/tokenizer engine/tools/gen_unicode.py \
	engine/tools/make_tokenizer_fixtures.py engine/tools/make_chat_template_fixtures.py

if HAVE_CMOCKA
check_PROGRAMS += tests/unit/test_engine_json tests/unit/test_tokenizer tests/unit/test_chat_template \
	tests/unit/test_prompt
TESTS += tests/unit/test_engine_json tests/unit/test_tokenizer tests/unit/test_chat_template \
	tests/unit/test_prompt

tests_unit_test_engine_json_SOURCES = tests/unit/test_engine_json.c
tests_unit_test_engine_json_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_engine_json_LDADD = $(ENGINE_LIBS) $(CMOCKA_LIBS)
tests_unit_test_tokenizer_SOURCES = tests/unit/test_tokenizer.c
tests_unit_test_tokenizer_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_tokenizer_LDADD = $(ENGINE_LIBS) $(CMOCKA_LIBS)
tests_unit_test_chat_template_SOURCES = tests/unit/test_chat_template.c
tests_unit_test_chat_template_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_chat_template_LDADD = $(ENGINE_LIBS) $(CMOCKA_LIBS)
tests_unit_test_prompt_SOURCES = tests/unit/test_prompt.c
tests_unit_test_prompt_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS) $(CJSON_CFLAGS)
tests_unit_test_prompt_LDADD = $(ENGINE_LIBS) $(CJSON_LIBS) $(CMOCKA_LIBS)
endif
