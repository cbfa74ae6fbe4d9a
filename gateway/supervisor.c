/* Runs llmgate-engine children for `local` providers: fork/exec, /health polling, restart with
 * exponential backoff on exit, SIGTERM on shutdown. Everything runs on the main thread's loop. */
#define _GNU_SOURCE
#include "gateway/supervisor.h"

#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"

#define BACKOFF_MIN_MS  250
#define BACKOFF_MAX_MS  30000
#define HEALTH_POLL_MS  200
#define STOP_GRACE_MS   10000
#define MAX_ENGINE_ARGS 24

/* One supervised engine. States:
 *   CH_STARTING  forked; /health polled every HEALTH_POLL_MS
 *   CH_UP        answered /health; backoff reset
 *   CH_BACKOFF   exited; a timer restarts it after backoff_ms
 *   CH_STOPPING  shutdown: SIGTERM sent */
enum child_state { CH_STARTING, CH_UP, CH_BACKOFF, CH_STOPPING };

struct child {
    struct supervisor *sup;
    char *name;   /* provider name, for logs */
    char *socket; /* its unix socket */
    char *argv[MAX_ENGINE_ARGS];
    int argc;
    pid_t pid; /* 0 when not running */
    enum child_state state;
    unsigned backoff_ms;
    unsigned restarts;
    struct event *timer; /* health poll or restart */
};

struct supervisor {
    struct event_base *base;
    struct event *sigchld;
    struct child *children;
    size_t n;
};

/* ---- helpers --------------------------------------------------------------------------------- */

static char *engine_path_default(void)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return strdup("llmgate-engine");
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash) return strdup("llmgate-engine");
    slash[1] = '\0';
    size_t need = strlen(self) + sizeof "llmgate-engine";
    char *out = malloc(need);
    if (out) snprintf(out, need, "%sllmgate-engine", self);
    return out;
}

static int add_arg(struct child *c, const char *a)
{
    if (c->argc >= MAX_ENGINE_ARGS - 1) return -1;
    if (!(c->argv[c->argc] = strdup(a))) return -1;
    c->argc++;
    return 0;
}

static int add_uint_arg(struct child *c, const char *flag, unsigned v)
{
    char num[16];
    if (v == 0) return 0;
    snprintf(num, sizeof num, "%u", v);
    return add_arg(c, flag) || add_arg(c, num);
}

/* The engine's command line from the provider's settings. */
static int build_argv(struct child *c, const struct provider_conf *p)
{
    char *bin = p->engine_bin ? strdup(p->engine_bin) : engine_path_default();
    if (!bin) return -1;
    c->argv[c->argc++] = bin;
    if (add_arg(c, "--model") || add_arg(c, p->model_dir) || add_arg(c, "--socket") ||
        add_arg(c, p->unix_socket))
        return -1;
    if (p->served_model && (add_arg(c, "--model-name") || add_arg(c, p->served_model))) return -1;
    if (p->chat_template && (add_arg(c, "--chat-template") || add_arg(c, p->chat_template)))
        return -1;
    if (add_uint_arg(c, "--threads", p->engine_threads) ||
        add_uint_arg(c, "--kv-blocks", p->kv_blocks) ||
        add_uint_arg(c, "--max-batch-tokens", p->max_batch_tokens) ||
        add_uint_arg(c, "--max-wait-ms", p->max_wait_ms))
        return -1;
    c->argv[c->argc] = NULL;
    return 0;
}

/* One blocking GET /health over the unix socket (local and immediate; 500 ms bound).
 * 1 when it answered 200. */
static int probe_health(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) return 0;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    struct timeval tv = {.tv_usec = 500000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    static const char req[] = "GET /health HTTP/1.0\r\nHost: engine\r\n\r\n";
    char buf[64];
    int ok = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1)) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        if (n >= 12) {
            buf[n] = '\0';
            ok = strncmp(buf, "HTTP/1.", 7) == 0 && strncmp(buf + 9, "200", 3) == 0;
        }
    }
    close(fd);
    return ok;
}

static void arm(struct child *c, unsigned ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

static void spawn(struct child *c)
{
    pid_t ppid = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        log_error("supervisor", "engine %s: fork: %s; retrying in %u ms", c->name, strerror(errno),
                  c->backoff_ms);
        c->state = CH_BACKOFF;
        arm(c, c->backoff_ms);
        return;
    }
    if (pid == 0) {
        /* Child: only async-signal-safe calls until exec. Die with the gateway, drop the
         * gateway's sockets, restore default signal handling. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != ppid) _exit(127);
        if (close_range(3, ~0u, 0) != 0)
            for (int fd = 3; fd < 4096; fd++)
                close(fd);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        execv(c->argv[0], c->argv);
        static const char msg[] = "llmgate: cannot exec the engine binary\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(127);
    }
    c->pid = pid;
    c->state = CH_STARTING;
    log_info("supervisor", "engine %s started (pid %d): %s --model %s --socket %s", c->name,
             (int)pid, c->argv[0], c->argv[2], c->socket);
    arm(c, HEALTH_POLL_MS);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct child *c = arg;
    switch (c->state) {
    case CH_STARTING:
        if (probe_health(c->socket)) {
            c->state = CH_UP;
            c->backoff_ms = BACKOFF_MIN_MS;
            log_info("supervisor", "engine %s is serving on %s (pid %d)", c->name, c->socket,
                     (int)c->pid);
        } else {
            arm(c, HEALTH_POLL_MS);
        }
        break;
    case CH_BACKOFF: spawn(c); break;
    case CH_UP:
    case CH_STOPPING: break;
    }
}

static void on_sigchld(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    struct supervisor *s = arg;
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (size_t i = 0; i < s->n; i++) {
            struct child *c = &s->children[i];
            if (c->pid != pid) continue;
            c->pid = 0;
            if (c->state == CH_STOPPING) break;
            evtimer_del(c->timer);
            c->state = CH_BACKOFF;
            c->restarts++;
            if (WIFSIGNALED(status))
                log_warn("supervisor",
                         "engine %s (pid %d) killed by signal %d; restart %u in %u ms", c->name,
                         (int)pid, WTERMSIG(status), c->restarts, c->backoff_ms);
            else
                log_warn("supervisor", "engine %s (pid %d) exited with %d; restart %u in %u ms",
                         c->name, (int)pid, WEXITSTATUS(status), c->restarts, c->backoff_ms);
            arm(c, c->backoff_ms);
            c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
            break;
        }
    }
}

int supervisor_start(struct event_base *base, const struct config *cfg, struct supervisor **out,
                     char *err, size_t errlen)
{
    *out = NULL;
    struct supervisor *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->base = base;
    size_t n = 0;
    for (size_t i = 0; i < cfg->n_providers; i++)
        n += cfg->providers[i].kind == PROVIDER_LOCAL && cfg->providers[i].autostart;
    *out = s;
    if (n == 0) return 0;
    s->children = calloc(n, sizeof *s->children);
    if (!s->children) goto oom;
    for (size_t i = 0; i < cfg->n_providers; i++) {
        const struct provider_conf *p = &cfg->providers[i];
        if (p->kind != PROVIDER_LOCAL || !p->autostart) continue;
        struct child *c = &s->children[s->n++];
        c->sup = s;
        c->backoff_ms = BACKOFF_MIN_MS;
        c->name = strdup(p->name);
        c->socket = strdup(p->unix_socket);
        c->timer = evtimer_new(base, on_timer, c);
        if (!c->name || !c->socket || !c->timer || build_argv(c, p) != 0) goto oom;
    }
    s->sigchld = evsignal_new(base, SIGCHLD, on_sigchld, s);
    if (!s->sigchld || evsignal_add(s->sigchld, NULL) != 0) goto oom;
    for (size_t i = 0; i < s->n; i++)
        spawn(&s->children[i]);
    return 0;
oom:
    snprintf(err, errlen, "supervisor: out of memory");
    supervisor_stop(s);
    *out = NULL;
    return -1;
}

int supervisor_ready_count(const struct supervisor *s)
{
    int n = 0;
    for (size_t i = 0; s && i < s->n; i++)
        n += s->children[i].state == CH_UP;
    return n;
}

void supervisor_stop(struct supervisor *s)
{
    if (!s) return;
    int running = 0;
    for (size_t i = 0; i < s->n; i++) {
        struct child *c = &s->children[i];
        c->state = CH_STOPPING;
        if (c->pid > 0 && kill(c->pid, SIGTERM) == 0) running++;
    }
    uint64_t deadline = util_now_ms() + STOP_GRACE_MS;
    while (running > 0) {
        running = 0;
        for (size_t i = 0; i < s->n; i++) {
            struct child *c = &s->children[i];
            if (c->pid <= 0) continue;
            int status;
            pid_t r = waitpid(c->pid, &status, WNOHANG);
            if (r == c->pid || (r < 0 && errno == ECHILD)) {
                c->pid = 0;
                continue;
            }
            if (util_now_ms() > deadline) {
                log_warn("supervisor", "engine %s did not stop in %d ms: SIGKILL", c->name,
                         STOP_GRACE_MS);
                kill(c->pid, SIGKILL);
                waitpid(c->pid, &status, 0);
                c->pid = 0;
                continue;
            }
            running++;
        }
        if (running) usleep(10000);
    }
    for (size_t i = 0; i < s->n; i++) {
        struct child *c = &s->children[i];
        if (c->timer) event_free(c->timer);
        for (int k = 0; k < c->argc; k++)
            free(c->argv[k]);
        free(c->name);
        free(c->socket);
    }
    if (s->sigchld) event_free(s->sigchld);
    free(s->children);
    free(s);
}
