# engine sampler and scheduler (engine core), the llmgate-engine server and their tests.
libllmgate_engine_a_SOURCES += \
	engine/sampler.c engine/sampler.h \
	engine/scheduler.c engine/scheduler.h

if HAVE_CMOCKA
check_PROGRAMS += tests/unit/test_sampler tests/unit/test_scheduler
TESTS += tests/unit/test_sampler tests/unit/test_scheduler

tests_unit_test_sampler_SOURCES = tests/unit/test_sampler.c
tests_unit_test_sampler_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_sampler_LDADD = $(ENGINE_LIBS) $(CMOCKA_LIBS)
tests_unit_test_scheduler_SOURCES = tests/unit/test_scheduler.c
tests_unit_test_scheduler_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_scheduler_LDADD = $(ENGINE_LIBS) $(CMOCKA_LIBS)
endif

# llmgate-engine: the OpenAI-compatible server. It reuses the gateway's request validation
# (gateway/openai.o, which needs only cJSON and common/util) and common/'s logging.
bin_PROGRAMS += llmgate-engine
llmgate_engine_SOURCES = engine/server.c engine/server_http.c engine/server.h
llmgate_engine_CFLAGS = $(AM_CFLAGS) $(LIBEVENT_CFLAGS) $(CJSON_CFLAGS)
llmgate_engine_LDADD = libllmgate_gateway.a $(ENGINE_LIBS) $(COMMON_LIBS) $(LIBEVENT_LIBS)

EXTRA_DIST += tests/integration/test_engine.py
