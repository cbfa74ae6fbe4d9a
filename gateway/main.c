/* llmgate: the gateway daemon's entry point. Parses the command line, loads the
 * config, opens the shared SO_REUSEPORT port, runs the workers, and handles
 * SIGHUP (reload) and SIGTERM/SIGINT (graceful drain) on the main thread. */
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "autoconf.h"
#include "common/log.h"
#include "gateway/accesslog.h"
#include "gateway/cli.h"
#include "gateway/config.h"
#include "gateway/scripts.h"
#include "gateway/supervisor.h"
#include "gateway/worker.h"
#include "routing/upstream.h"

#define MAX_WORKERS 256

struct daemon_state {
    const char *config_path;
    struct config *cfg;
    struct gateway gw;
    struct event_base *base;
    bool stopping;
};

static void usage(FILE *out)
{
    fprintf(
        out,
        "Usage: llmgate [-c FILE] [-t] [-p PORT] [-w N]\n"
        "OpenAI-compatible API gateway.\n\n"
        "  -c, --config FILE   configuration file (default: $LLMGATE_CONFIG or conf/llmgate.conf)\n"
        "  -t, --test          check the configuration and exit (0 = valid)\n"
        "  -p, --port PORT     listen on PORT instead of the configured one (0 = any free port)\n"
        "  -w, --workers N     number of worker threads (overrides the config)\n"
        "  -V, --version       print the version and exit\n"
        "  -h, --help          print this help and exit\n\n"
        "Signals: SIGHUP reloads the configuration (a bad file keeps the old one);\n"
        "SIGTERM/SIGINT stop accepting, drain in-flight requests, and exit 0.\n");
}

/* Opens one listening socket on addr:port with SO_REUSEPORT so each worker can
 * own one; *port receives the bound port (for port 0). -1 on failure. */
static int listen_socket(const char *addr, unsigned *port, int backlog, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%u", *port);
    int rc = getaddrinfo(addr, portstr, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve listen address %s: %s", addr, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, backlog) != 0) {
        snprintf(err, errlen, "cannot listen on %s:%u: %s", addr, *port, strerror(errno));
        if (fd >= 0) close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

static void on_sighup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    struct daemon_state *d = arg;
    char err[1024];
    struct config *next = NULL;
    if (config_load(d->config_path, &next, err, sizeof err) != 0) {
        log_error("main", "reload rejected, keeping the running configuration: %s", err);
        return;
    }
    if (strcmp(next->listen_address, d->cfg->listen_address) != 0 ||
        next->workers != d->cfg->workers)
        log_warn("main",
                 "listen address and worker count changes need a restart; other changes apply now");
    /* The port the daemon runs on stays (it may come from -p). */
    next->port = d->cfg->port;
    log_set_level(next->log_level);
    accesslog_reopen();
    for (unsigned i = 0; i < d->gw.n_workers; i++)
        worker_post_config(&d->gw.workers[i], next);
    config_unref(d->cfg);
    d->cfg = next;
    log_info("main", "configuration reloaded from %s", d->config_path);
}

static void on_sigterm(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct daemon_state *d = arg;
    if (d->stopping) {
        log_warn("main", "second signal: exiting without waiting");
        _exit(1);
    }
    d->stopping = true;
    log_info("main", "signal %d: draining (up to %u ms)", (int)sig, d->cfg->drain_timeout_ms);
    for (unsigned i = 0; i < d->gw.n_workers; i++)
        worker_post_stop(&d->gw.workers[i]);
    event_base_loopbreak(d->base);
}

int main(int argc, char **argv)
{
    scripts_init();
    /* `llmgate keys|tenants|usage ...`: management commands (gateway/cli.c). */
    if (argc > 1 && cli_is_command(argv[1])) return cli_main(argc - 1, argv + 1);
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"test", no_argument, NULL, 't'},
        {"port", required_argument, NULL, 'p'},
        {"workers", required_argument, NULL, 'w'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct daemon_state d = {0};
    d.config_path = getenv("LLMGATE_CONFIG") ? getenv("LLMGATE_CONFIG") : "conf/llmgate.conf";
    bool test_only = false;
    long port_override = -1, workers_override = -1;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:tp:w:Vh", opts, NULL)) != -1) {
        char *end;
        switch (ch) {
        case 'c': d.config_path = optarg; break;
        case 't': test_only = true; break;
        case 'p':
            port_override = strtol(optarg, &end, 10);
            if (*end || port_override < 0 || port_override > 65535) {
                fprintf(stderr, "llmgate: invalid port '%s'\n", optarg);
                return 2;
            }
            break;
        case 'w':
            workers_override = strtol(optarg, &end, 10);
            if (*end || workers_override < 1 || workers_override > MAX_WORKERS) {
                fprintf(stderr, "llmgate: invalid worker count '%s' (1..%d)\n", optarg,
                        MAX_WORKERS);
                return 2;
            }
            break;
        case 'V': printf("llmgate %s\n", PACKAGE_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }

    char err[1024];
    if (config_load(d.config_path, &d.cfg, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        if (test_only)
            fprintf(stderr, "llmgate: configuration file %s test failed\n", d.config_path);
        return 1;
    }
    if (test_only) {
        printf("llmgate: configuration file %s test is successful\n", d.config_path);
        config_unref(d.cfg);
        return 0;
    }
    if (port_override >= 0) d.cfg->port = (unsigned)port_override;
    log_set_level(d.cfg->log_level);
    if (accesslog_open(d.cfg->access_log, err, sizeof err) != 0) {
        fprintf(stderr, "llmgate: %s\n", err);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (evthread_use_pthreads() != 0 || upstream_global_init() != 0) {
        fprintf(stderr, "llmgate: cannot initialise libevent threads or libcurl\n");
        return 1;
    }
    unsigned n = workers_override > 0 ? (unsigned)workers_override : d.cfg->workers;
    if (n == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n = cpus > 0 ? (unsigned)(cpus > MAX_WORKERS ? MAX_WORKERS : cpus) : 1;
    }
    if (d.cfg->n_api_keys == 0 && !d.cfg->redis_keys)
        log_warn("main", "auth.api_keys_sha256 is empty and auth.redis_keys is off: every caller "
                         "is accepted without a key");

    d.gw.workers = calloc(n, sizeof *d.gw.workers);
    if (!d.gw.workers) return 1;
    d.gw.n_workers = n;
    unsigned port = d.cfg->port;
    for (unsigned i = 0; i < n; i++) {
        int fd = listen_socket(d.cfg->listen_address, &port, (int)d.cfg->backlog, err, sizeof err);
        if (fd < 0 || worker_init(&d.gw.workers[i], &d.gw, i, d.cfg, fd, err, sizeof err) != 0) {
            fprintf(stderr, "llmgate: %s\n", err);
            return 1;
        }
    }
    d.cfg->port = port;
    d.base = event_base_new();
    struct event *hup = evsignal_new(d.base, SIGHUP, on_sighup, &d);
    struct event *term = evsignal_new(d.base, SIGTERM, on_sigterm, &d);
    struct event *intr = evsignal_new(d.base, SIGINT, on_sigterm, &d);
    if (!d.base || !hup || !term || !intr) return 1;
    evsignal_add(hup, NULL);
    evsignal_add(term, NULL);
    evsignal_add(intr, NULL);
    for (unsigned i = 0; i < n; i++) {
        if (worker_start(&d.gw.workers[i]) != 0) {
            fprintf(stderr, "llmgate: cannot start worker thread %u\n", i);
            return 1;
        }
    }
    /* Local engines start after the workers: until one serves, its requests fail over. */
    struct supervisor *sup = NULL;
    if (supervisor_start(d.base, d.cfg, &sup, err, sizeof err) != 0) {
        fprintf(stderr, "llmgate: %s\n", err);
        return 1;
    }
    log_info("main", "llmgate %s serving http://%s:%u/v1 with %u worker(s), config %s",
             PACKAGE_VERSION, d.cfg->listen_address, port, n, d.config_path);
    event_base_dispatch(d.base);

    /* Drain: keep answering a second signal (forced exit) while workers finish. */
    for (unsigned i = 0; i < n; i++)
        worker_join(&d.gw.workers[i]);
    log_info("main", "all workers stopped; exiting");
    supervisor_stop(sup); /* after the drain: in-flight engine requests have finished */
    event_free(hup);
    event_free(term);
    event_free(intr);
    event_base_free(d.base);
    free(d.gw.workers);
    config_unref(d.cfg);
    accesslog_close();
    upstream_global_cleanup();
    return 0;
}
