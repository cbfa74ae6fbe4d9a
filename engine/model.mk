# engine model loading (safetensors, config), the backend interface, the CPU backend, the paged
# KV pool, the random-model maker and the engine benchmark.
libllmgate_engine_a_SOURCES += \
	engine/safetensors.c engine/safetensors.h \
	engine/model.c engine/model.h \
	engine/kv.c engine/kv.h \
	engine/backend.c engine/backend.h \
	engine/cpu/cpu.h engine/cpu/threadpool.c engine/cpu/matmul.c engine/cpu/ops.c \
	engine/cpu/backend_cpu.c engine/cpu/membw.c \
	engine/mkmodel.c engine/mkmodel.h

bin_PROGRAMS += llmgate-mkmodel
llmgate_mkmodel_SOURCES = engine/mkmodel_main.c
llmgate_mkmodel_LDADD = $(ENGINE_LIBS)

noinst_PROGRAMS += llmgate-bench-engine
llmgate_bench_engine_SOURCES = engine/bench_engine.c
llmgate_bench_engine_LDADD = $(ENGINE_LIBS)

EXTRA_DIST += tests/fixtures/models engine/tools/make_model_fixtures.py

if HAVE_CMOCKA
check_PROGRAMS += tests/unit/test_safetensors tests/unit/test_model tests/unit/test_cpu_backend
TESTS += tests/unit/test_safetensors tests/unit/test_model tests/unit/test_cpu_backend

tests_unit_test_safetensors_SOURCES = tests/unit/test_safetensors.c
tests_unit_test_safetensors_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_safetensors_LDADD = $(ENGINE_LIBS) $(CMOCKA_LIBS)
tests_unit_test_model_SOURCES = tests/unit/test_model.c
tests_unit_test_model_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_model_LDADD = $(ENGINE_LIBS) $(CMOCKA_LIBS)
tests_unit_test_cpu_backend_SOURCES = tests/unit/test_cpu_backend.c
tests_unit_test_cpu_backend_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_cpu_backend_LDADD = $(ENGINE_LIBS) $(CMOCKA_LIBS)
endif
