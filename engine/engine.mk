# engine/: the bundled inference engine. The core library uses only libc, libm
# and pthreads (CUDA when built), and cJSON in prompt.c; each part appends its sources below.
noinst_LIBRARIES += libllmgate_engine.a
libllmgate_engine_a_SOURCES = engine/engine.h
libllmgate_engine_a_CFLAGS = $(AM_CFLAGS) $(CJSON_CFLAGS) -O3
ENGINE_LIBS = libllmgate_engine.a -lm

include $(srcdir)/engine/tokenizer.mk
include $(srcdir)/engine/model.mk
include $(srcdir)/engine/server.mk
include $(srcdir)/engine/cuda.mk
