# gateway/: the llmgate daemon. Everything but main.c goes into a library so
# unit tests link the same objects.
noinst_LIBRARIES += libllmgate_gateway.a
libllmgate_gateway_a_SOURCES = \
	gateway/config.c gateway/config.h \
	gateway/openai.c gateway/openai.h \
	gateway/auth.c gateway/auth.h \
	gateway/worker.c gateway/worker.h \
	gateway/server.c gateway/server.h \
	gateway/errpage.c gateway/errpage.h \
	gateway/request.c gateway/request.h \
	gateway/relay.c gateway/relay.h \
	gateway/cachestage.c gateway/cachestage.h \
	gateway/accesslog.c gateway/accesslog.h \
	gateway/health.c gateway/health.h \
	gateway/routing_admin.c gateway/routing_admin.h \
	gateway/scripts.c gateway/scripts.h \
	gateway/keys.c gateway/keys.h \
	gateway/promhist.c gateway/promhist.h \
	gateway/grant.c gateway/grant.h \
	gateway/quota.c gateway/quota.h \
	gateway/localtok.c gateway/localtok.h \
	gateway/usage.c gateway/usage.h \
	gateway/admin.c gateway/admin.h \
	gateway/cli.c gateway/cli.h \
	gateway/supervisor.c gateway/supervisor.h
libllmgate_gateway_a_CFLAGS = $(AM_CFLAGS) $(HIREDIS_CFLAGS) $(LIBEVENT_CFLAGS) $(LIBCURL_CFLAGS) $(CJSON_CFLAGS) $(OPENSSL_CFLAGS)
GATEWAY_LIBS = libllmgate_gateway.a $(ENGINE_LIBS) $(ROUTING_LIBS) $(CACHE_LIBS) $(COMMON_LIBS) $(LIBEVENT_LIBS) $(OPENSSL_LIBS)

bin_PROGRAMS += llmgate
llmgate_SOURCES = gateway/main.c
llmgate_CFLAGS = $(libllmgate_gateway_a_CFLAGS)
llmgate_LDADD = $(GATEWAY_LIBS)
