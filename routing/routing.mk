# routing/: policies (parse, validate, snapshot), target choice, circuit
# breakers, retry budgets, provider adapters and the libcurl upstream client.
noinst_LIBRARIES += libllmgate_routing.a
libllmgate_routing_a_SOURCES = \
	routing/router.c routing/router.h \
	routing/policy.c routing/policy.h \
	routing/breaker.c routing/breaker.h \
	routing/budget.c routing/budget.h \
	routing/targets.c routing/targets.h \
	routing/adapter.c routing/adapter.h \
	routing/adapter_openai.c routing/adapter_azure.c routing/adapter_anthropic.c \
	routing/upstream.c routing/upstream.h
libllmgate_routing_a_CFLAGS = $(AM_CFLAGS) $(LIBEVENT_CFLAGS) $(LIBCURL_CFLAGS) $(CJSON_CFLAGS)
ROUTING_LIBS = libllmgate_routing.a $(LIBCURL_LIBS)
EXTRA_DIST += policies tests/fixtures/anthropic
