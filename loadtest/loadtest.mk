# loadtest/: llmgate-mock (fake OpenAI upstream for tests and benchmarks),
# llmgate-loadgen (open-loop load generator) and the benchmark scripts.
bin_PROGRAMS += llmgate-mock llmgate-loadgen
llmgate_mock_SOURCES = loadtest/mock.c loadtest/mock_openai.c loadtest/mock_anthropic.c loadtest/mock.h
llmgate_mock_CFLAGS = $(AM_CFLAGS) $(LIBEVENT_CFLAGS) $(CJSON_CFLAGS)
llmgate_mock_LDADD = $(COMMON_LIBS) $(LIBEVENT_LIBS) $(CJSON_LIBS) -lm

llmgate_loadgen_SOURCES = loadtest/loadgen.c loadtest/histogram.c loadtest/histogram.h
llmgate_loadgen_CFLAGS = $(AM_CFLAGS) $(LIBEVENT_CFLAGS)
llmgate_loadgen_LDADD = $(COMMON_LIBS) $(LIBEVENT_LIBS) -lm

# How often the platform takes a CPU away (reported beside the cache benchmark).
noinst_PROGRAMS += llmgate-stallprobe
llmgate_stallprobe_SOURCES = loadtest/stallprobe.c
llmgate_stallprobe_LDADD = $(COMMON_LIBS)

dist_noinst_SCRIPTS += loadtest/bench_proxy.sh loadtest/bench_engine.sh loadtest/bench_cache.sh \
	loadtest/bench_quota.sh loadtest/bench_ab.sh
EXTRA_DIST += loadtest/README.md loadtest/lib.sh loadtest/results

# Routing decision cost (routing/router.c) with 1, 100 and 1,000 policy routes.
noinst_PROGRAMS += llmgate-bench-routing
llmgate_bench_routing_SOURCES = loadtest/bench_routing.c
llmgate_bench_routing_CFLAGS = $(AM_CFLAGS) $(LIBEVENT_CFLAGS) $(LIBCURL_CFLAGS) $(CJSON_CFLAGS)
llmgate_bench_routing_LDADD = $(GATEWAY_LIBS)
dist_noinst_SCRIPTS += loadtest/bench_routing.sh
