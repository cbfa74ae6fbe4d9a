# engine model loading (safetensors, config), the backend interface, the CPU backend, the paged
# KV pool, the random-model maker and the engine benchmark.
libllmgate_engine_a_SOURCES += \
	engine/safetensors.c engine/safetensors.h \
	engine/model.c engine/model.h \
	engine/kv.c engine/kv.h \
	engine/backend.c engine/backend.h \
	engine/cpu/cpu.h engine/cpu/threadpool.c engine/cpu/matmul.c engine/cpu/ops.c \
	engine/cpu/backend_cpu.c

