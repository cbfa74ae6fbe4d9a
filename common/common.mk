# common/: logging, hashing, clocks, JSON-with-comments, SSE parsing.
noinst_LIBRARIES += libllmgate_common.a
libllmgate_common_a_SOURCES = \
	common/log.c common/log.h \
	common/util.c common/util.h \
	common/hash.c common/hash.h \
	common/jsonc.c common/jsonc.h \
	common/sse.c common/sse.h \
	common/jsonv.c common/jsonv.h \
	common/net.c common/net.h
libllmgate_common_a_CFLAGS = $(AM_CFLAGS) $(CJSON_CFLAGS) $(OPENSSL_CFLAGS)
COMMON_LIBS = libllmgate_common.a $(CJSON_LIBS) $(OPENSSL_LIBS) -lm
