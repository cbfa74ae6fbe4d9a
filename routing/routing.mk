# routing/: model -> target resolution and the libcurl upstream client.
noinst_LIBRARIES += libllmgate_routing.a
libllmgate_routing_a_SOURCES = \
	routing/router.c routing/router.h \
	routing/upstream.c routing/upstream.h
libllmgate_routing_a_CFLAGS = $(AM_CFLAGS) $(LIBEVENT_CFLAGS) $(LIBCURL_CFLAGS) $(CJSON_CFLAGS)
ROUTING_LIBS = libllmgate_routing.a $(LIBCURL_LIBS)
