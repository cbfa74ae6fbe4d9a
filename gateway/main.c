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
#include <sys/inotify.h>
#include <sys/socket.h>
#include <unistd.h>

#include "autoconf.h"
#include "common/log.h"
#include "common/net.h"
#include "gateway/accesslog.h"
#include "gateway/cli.h"
#include "gateway/config.h"
#include "gateway/localtok.h"
#include "gateway/scripts.h"
#include "gateway/supervisor.h"
#include "gateway/worker.h"
#include "routing/policy.h"
#include "routing/targets.h"
#include "routing/upstream.h"

#define MAX_WORKERS        256
#define POLICY_DEBOUNCE_MS 100 /* editors write several events per save */

struct daemon_state {
    const char *config_path;
    struct config *cfg;
    struct gateway gw;
    struct event_base *base;
    bool stopping;
    int inotify_fd; /* watches cfg->policy_dir, or -1 */
    int watch_wd;
    char *watched_dir;
    struct event *inotify_ev, *debounce;
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
        "      --policy-reference  print the policy file reference (markdown) and exit\n"
        "  -h, --help          print this help and exit\n\n"
        "Signals: SIGHUP reloads the configuration and policies (a bad file keeps the old\n"
        "ones); policy files also reload when they change.\n"
        "SIGTERM/SIGINT stop accepting, drain in-flight requests, and exit 0.\n");
}

/* The whole snapshot: the config file, then the policies it names, compiled against it,
 * and the local engines' tokenizers for exact prompt counts (never a reason to refuse it). */
static int load_snapshot(const char *path, struct config **out, char *err, size_t errlen)
{
    if (config_load(path, out, err, errlen) != 0) return -1;
    if (policy_load_dir(*out, (*out)->policy_dir, &(*out)->policy, err, errlen) != 0) {
        config_unref(*out);
        *out = NULL;
        return -1;
    }
    localtok_attach(*out);
    return 0;
}

static void watch_policies(struct daemon_state *d);

/* SIGHUP or a policy file change: a new snapshot for every worker, or the old one
 * keeps serving and the error is logged, counted and shown on /readyz. */
static void reload(struct daemon_state *d, const char *why)
{
    char err[1024];
    struct config *next = NULL;
    if (load_snapshot(d->config_path, &next, err, sizeof err) != 0) {
        log_error("main", "reload rejected (%s), keeping the running configuration: %s", why, err);
        atomic_fetch_add(&routing_metrics.reloads_failed, 1);
        routing_set_reload_error(err);
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
    atomic_fetch_add(&routing_metrics.reloads_ok, 1);
    routing_set_reload_error(NULL);
    watch_policies(d);
    log_info("main", "configuration reloaded from %s (%s), policy generation %llu, %zu route(s)",
             d->config_path, why, (unsigned long long)next->policy->generation,
             next->policy->n_routes);
}

static void on_sighup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    reload(arg, "SIGHUP");
}

static void on_policy_debounced(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    reload(arg, "policy file changed");
}

/* inotify on the policy directory (the directory, not the files: editors write a
 * temp file and rename it over the old one). Bursts are debounced. */
static void on_inotify(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct daemon_state *d = arg;
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool relevant = false;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            size_t len = ev->len ? strlen(ev->name) : 0;
            if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) relevant = true;
            if (len > 5 && ev->name[0] != '.' && strcmp(ev->name + len - 5, ".json") == 0)
                relevant = true;
            p += sizeof *ev + ev->len;
        }
    }
    if (relevant) {
        struct timeval tv = {0, POLICY_DEBOUNCE_MS * 1000};
        evtimer_add(d->debounce, &tv);
    }
}

/* (Re)points the watch at the snapshot's policy directory. */
static void watch_policies(struct daemon_state *d)
{
    const char *dir = d->cfg->policy_watch ? d->cfg->policy_dir : NULL;
    if (d->inotify_fd < 0) return;
    if (d->watched_dir && dir && strcmp(d->watched_dir, dir) == 0 && d->watch_wd >= 0) return;
    if (d->watch_wd >= 0) inotify_rm_watch(d->inotify_fd, d->watch_wd);
    d->watch_wd = -1;
    free(d->watched_dir);
    d->watched_dir = NULL;
    if (!dir) return;
    d->watch_wd = inotify_add_watch(d->inotify_fd, dir,
                                    IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE |
                                        IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF);
    if (d->watch_wd < 0) {
        log_warn("main", "cannot watch %s for changes (%s); SIGHUP still reloads", dir,
                 strerror(errno));
        return;
    }
    d->watched_dir = strdup(dir);
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
        {"config", required_argument, NULL, 'c'}, {"test", no_argument, NULL, 't'},
        {"port", required_argument, NULL, 'p'},   {"workers", required_argument, NULL, 'w'},
        {"version", no_argument, NULL, 'V'},      {"policy-reference", no_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
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
        case 'R': return policy_write_reference(stdout) == 0 ? 0 : 1;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }

    char err[1024];
    d.inotify_fd = d.watch_wd = -1;
    if (load_snapshot(d.config_path, &d.cfg, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        if (test_only)
            fprintf(stderr, "llmgate: configuration file %s test failed\n", d.config_path);
        targets_free_all();
        return 1;
    }
    if (test_only) {
        printf("llmgate: configuration file %s test is successful (%zu route(s)%s%s)\n",
               d.config_path, d.cfg->policy->n_routes,
               d.cfg->policy_dir ? " with policies from " : "",
               d.cfg->policy_dir ? d.cfg->policy_dir : "");
        config_unref(d.cfg);
        targets_free_all();
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
        /* One SO_REUSEPORT socket per worker: the kernel spreads connections. */
        int fd = net_listen_tcp(d.cfg->listen_address, &port, (int)d.cfg->backlog, true, err,
                                sizeof err);
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
    d.inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    d.debounce = evtimer_new(d.base, on_policy_debounced, &d);
    if (d.inotify_fd >= 0 && d.debounce) {
        d.inotify_ev = event_new(d.base, d.inotify_fd, EV_READ | EV_PERSIST, on_inotify, &d);
        if (d.inotify_ev) event_add(d.inotify_ev, NULL);
        watch_policies(&d);
    }
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
    if (d.inotify_ev) event_free(d.inotify_ev);
    if (d.debounce) event_free(d.debounce);
    if (d.inotify_fd >= 0) close(d.inotify_fd);
    free(d.watched_dir);
    event_base_free(d.base);
    free(d.gw.workers);
    config_unref(d.cfg);
    accesslog_close();
    upstream_global_cleanup();
    targets_free_all();
    return 0;
}
