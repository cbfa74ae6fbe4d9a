# cache/: Redis connections (async, reconnect, scripts); later the response
# cache and the prefix-KV block store.
noinst_LIBRARIES += libllmgate_cache.a
libllmgate_cache_a_SOURCES = \
	cache/redis.c cache/redis.h \
	cache/pubsub.c cache/pubsub.h \
	cache/rcache.c cache/rcache.h \
	cache/rcache_l1.c cache/rcache_l1.h
libllmgate_cache_a_CFLAGS = $(AM_CFLAGS) $(LIBEVENT_CFLAGS) $(HIREDIS_CFLAGS) $(CJSON_CFLAGS) $(OPENSSL_CFLAGS)
CACHE_LIBS = libllmgate_cache.a $(HIREDIS_LIBS)

if HAVE_CMOCKA
check_PROGRAMS += tests/unit/test_redis
TESTS += tests/unit/test_redis
tests_unit_test_redis_SOURCES = tests/unit/test_redis.c
tests_unit_test_redis_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS) $(LIBEVENT_CFLAGS) $(HIREDIS_CFLAGS)
tests_unit_test_redis_LDADD = $(CACHE_LIBS) $(COMMON_LIBS) $(LIBEVENT_LIBS) $(CMOCKA_LIBS)
endif

if HAVE_CMOCKA
check_PROGRAMS += tests/unit/test_rcache
TESTS += tests/unit/test_rcache
tests_unit_test_rcache_SOURCES = tests/unit/test_rcache.c
tests_unit_test_rcache_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS) $(LIBEVENT_CFLAGS) $(CJSON_CFLAGS)
tests_unit_test_rcache_LDADD = $(CACHE_LIBS) $(COMMON_LIBS) $(LIBEVENT_LIBS) $(CMOCKA_LIBS)
endif
