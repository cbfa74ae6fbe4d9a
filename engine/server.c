/* llmgate-engine: the bundled local inference server. Loads a Hugging Face model directory,
 * runs the scheduler on its own thread over the CPU backend, and serves OpenAI-compatible HTTP
 * on a unix socket (and/or TCP). `llmgate-engine mkmodel` writes a random-weight model. */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/log.h"
#include "common/net.h"
#include "engine/mkmodel.h"
#include "engine/prompt.h"
#include "engine/server.h"

struct options {
    const char *model_dir, *socket_path, *host, *model_name, *chat_template;
    const char *device; /* auto, cpu, cuda */
    int port;           /* -1: no TCP */
    int threads, kv_blocks, block_size, max_batch_tokens, max_seqs, max_wait_ms;
    int read_timeout_ms, max_queue;
    long max_body_bytes;
    long max_stream_buffer;
};

/* Requests waiting to start at most, by default: with --max-seqs' default of 64 running, four
 * batches' worth; beyond it a client is better served by a 429 it can retry elsewhere than by a
 * wait of minutes (each waiting request also holds a context-sized token buffer). */
#define DEFAULT_MAX_QUEUE 256

/* Unsent bytes of one stream before its generation pauses: some thousands of tokens' events,
 * so a client that reads at all keeps up, and no client holds much more memory than this. */
#define DEFAULT_MAX_STREAM_BUFFER (1L << 20)

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: llmgate-engine --model DIR (--socket PATH | --port N) [options]\n"
            "       llmgate-engine mkmodel --preset NAME --out DIR [--seed N] [--dtype bf16|f32]\n"
            "OpenAI-compatible local inference server.\n\n"
            "  --model DIR              Hugging Face model directory\n"
            "  --socket PATH            serve on a unix socket\n"
            "  --port N                 serve on TCP port N (0 = any free port)\n"
            "  --host ADDR              TCP address (default 127.0.0.1)\n"
            "  --model-name NAME        served model name (default: the directory's basename)\n"
            "  --chat-template NAME     chatml, qwen2.5, llama3, llama3.1, llama2, zephyr\n"
            "  --device auto|cpu|cuda   backend (default auto: CUDA when built and a GPU is\n"
            "                           present, else the CPU)\n"
            "  --threads N              CPU threads (default: online cores)\n"
            "  --kv-blocks N            KV cache blocks (default: one sequence of the model's\n"
            "                           context, at most 4096 tokens; /v1/models reports the\n"
            "                           longest sequence the pool holds as max_model_len)\n"
            "  --block-size N           tokens per KV block (default 16)\n"
            "  --max-batch-tokens N     tokens per forward step (default 512)\n"
            "  --max-seqs N             running sequences at most (default 64)\n"
            "  --max-wait-ms N          refuse requests (429 engine_overloaded) whose predicted\n"
            "                           wait exceeds N ms (default 0 = never)\n"
            "  --max-queue N            refuse requests (429 engine_overloaded) while N wait to\n"
            "                           start (default 256, 0 = no bound)\n"
            "  --max-body-bytes N       request body limit (default 8 MiB)\n"
            "  --max-stream-buffer N    pause a stream's generation while more than N bytes of\n"
            "                           it wait to be sent to a slow client (default 1 MiB)\n"
            "  --read-timeout-ms N      close a connection that sends nothing for N ms while a\n"
            "                           request is due (default 120000)\n"
            "  --log-level LEVEL        debug, info, warn, error\n");
}

/* ---- mkmodel subcommand
 * -------------------------------------------------------------------------- */

static int cmd_mkmodel(int argc, char **argv)
{
    const char *preset = NULL, *out = NULL, *dtype = "bf16";
    unsigned long long seed = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--preset") == 0 && i + 1 < argc) {
            preset = argv[++i];
        } else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
            out = argv[++i];
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            seed = strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
            dtype = argv[++i];
        } else {
            fprintf(stderr, "llmgate-engine mkmodel: unknown argument %s\n", argv[i]);
            preset = NULL;
            break;
        }
    }
    struct mkmodel_spec spec;
    if (!preset || !out || mkmodel_preset(preset, &spec) != 0 ||
        (strcmp(dtype, "bf16") != 0 && strcmp(dtype, "f32") != 0)) {
        fprintf(stderr, "usage: llmgate-engine mkmodel --preset NAME --out DIR [--seed N] "
                        "[--dtype bf16|f32]\npresets:");
        for (const char *const *n = mkmodel_preset_names(); *n; n++)
            fprintf(stderr, " %s", *n);
        fprintf(stderr, "\n");
        return 2;
    }
    spec.seed = seed;
    spec.dtype = strcmp(dtype, "f32") == 0 ? WT_F32 : WT_BF16;
    char err[512];
    if (mkmodel_write(&spec, out, err, sizeof err) != 0) {
        fprintf(stderr, "llmgate-engine mkmodel: %s\n", err);
        return 1;
    }
    printf("wrote a random-weight %s model (seed %llu) to %s\n", preset, seed, out);
    return 0;
}

/* ---- options
 * ------------------------------------------------------------------------------------- */

static int parse_int(const char *s, const char *name, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        fprintf(stderr, "llmgate-engine: --%s must be an integer in %ld..%ld\n", name, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},
        {"socket", required_argument, NULL, 's'},
        {"port", required_argument, NULL, 'p'},
        {"host", required_argument, NULL, 'H'},
        {"model-name", required_argument, NULL, 'n'},
        {"chat-template", required_argument, NULL, 'c'},
        {"threads", required_argument, NULL, 't'},
        {"device", required_argument, NULL, 'D'},
        {"kv-blocks", required_argument, NULL, 'k'},
        {"block-size", required_argument, NULL, 'b'},
        {"max-batch-tokens", required_argument, NULL, 'B'},
        {"max-seqs", required_argument, NULL, 'S'},
        {"max-wait-ms", required_argument, NULL, 'w'},
        {"max-queue", required_argument, NULL, 'q'},
        {"max-body-bytes", required_argument, NULL, 'M'},
        {"max-stream-buffer", required_argument, NULL, 'O'},
        {"read-timeout-ms", required_argument, NULL, 'r'},
        {"log-level", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (struct options){.host = "127.0.0.1",
                          .device = "auto",
                          .port = -1,
                          .max_body_bytes = 8L << 20,
                          .max_stream_buffer = DEFAULT_MAX_STREAM_BUFFER,
                          .max_queue = DEFAULT_MAX_QUEUE};
    int ch;
    long v;
    enum log_level lvl;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'm': o->model_dir = optarg; break;
        case 's': o->socket_path = optarg; break;
        case 'H': o->host = optarg; break;
        case 'n': o->model_name = optarg; break;
        case 'c': o->chat_template = optarg; break;
        case 'D':
            if (strcmp(optarg, "auto") && strcmp(optarg, "cpu") && strcmp(optarg, "cuda")) {
                fprintf(stderr, "llmgate-engine: --device must be auto, cpu or cuda\n");
                return -1;
            }
            o->device = optarg;
            break;
        case 'p':
            if (parse_int(optarg, "port", 0, 65535, &v)) return -1;
            o->port = (int)v;
            break;
        case 't':
            if (parse_int(optarg, "threads", 1, 1024, &v)) return -1;
            o->threads = (int)v;
            break;
        case 'k':
            if (parse_int(optarg, "kv-blocks", 1, INT_MAX / 2, &v)) return -1;
            o->kv_blocks = (int)v;
            break;
        case 'b':
            if (parse_int(optarg, "block-size", 1, 4096, &v)) return -1;
            o->block_size = (int)v;
            break;
        case 'B':
            if (parse_int(optarg, "max-batch-tokens", 1, 1 << 20, &v)) return -1;
            o->max_batch_tokens = (int)v;
            break;
        case 'S':
            if (parse_int(optarg, "max-seqs", 1, 4096, &v)) return -1;
            o->max_seqs = (int)v;
            break;
        case 'w':
            if (parse_int(optarg, "max-wait-ms", 0, INT_MAX, &v)) return -1;
            o->max_wait_ms = (int)v;
            break;
        case 'q':
            if (parse_int(optarg, "max-queue", 0, 1 << 20, &v)) return -1;
            o->max_queue = (int)v;
            break;
        case 'M':
            if (parse_int(optarg, "max-body-bytes", 1024, 1L << 30, &v)) return -1;
            o->max_body_bytes = v;
            break;
        case 'O':
            if (parse_int(optarg, "max-stream-buffer", 1024, 1L << 30, &v)) return -1;
            o->max_stream_buffer = v;
            break;
        case 'r':
            if (parse_int(optarg, "read-timeout-ms", 1, 24 * 3600 * 1000, &v)) return -1;
            o->read_timeout_ms = (int)v;
            break;
        case 'l':
            if (log_level_parse(optarg, &lvl) != 0) {
                fprintf(stderr, "llmgate-engine: unknown log level %s\n", optarg);
                return -1;
            }
            log_set_level(lvl);
            break;
        case 'h': usage(stdout); exit(0);
        default: return -1;
        }
    }
    if (optind != argc || !o->model_dir || (!o->socket_path && o->port < 0)) return -1;
    return 0;
}

/* ---- listeners
 * ----------------------------------------------------------------------------------- */

static int listen_unix(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "socket path too long: %s", path);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) unlink(path); /* a stale one */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 512) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

/* ---- main
 * ---------------------------------------------------------------------------------------- */

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    log_info("engine", "signal %d: shutting down", (int)sig);
    event_base_loopexit(arg, NULL);
}

/* The served name: the directory's basename, without trailing slashes. */
static const char *dir_basename(const char *dir, char *buf, size_t cap)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    size_t start = n;
    while (start > 0 && dir[start - 1] != '/')
        start--;
    if (n - start >= cap) n = start + cap - 1;
    memcpy(buf, dir + start, n - start);
    buf[n - start] = '\0';
    return buf;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "mkmodel") == 0) return cmd_mkmodel(argc - 1, argv + 1);
    struct options o;
    if (parse_options(argc, argv, &o) != 0) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    char err[512], namebuf[256], portbuf[16]; /* namebuf holds the served name for good */
    int rc = 1, listen_fd = -1, tcp_fd = -1;
    struct engine_server srv = {.wake_fd = -1,
                                .max_body_bytes = (size_t)o.max_body_bytes,
                                .max_stream_buffer = (size_t)o.max_stream_buffer,
                                .read_timeout_ms = o.read_timeout_ms};
    struct event *sigs[2] = {NULL, NULL};
    srv.model_name =
        o.model_name ? o.model_name : dir_basename(o.model_dir, namebuf, sizeof namebuf);

    if (model_load(o.model_dir, &srv.model, err, sizeof err) != 0 ||
        tokenizer_load(o.model_dir, &srv.tok, err, sizeof err) != 0) {
        log_error("engine", "%s", err);
        goto out;
    }
    if (srv.model->notes[0]) log_info("engine", "%s", srv.model->notes);
    char tnote[320];
    if (prompt_template_init(&srv.tmpl, srv.tok, o.chat_template, tnote, sizeof tnote, err,
                             sizeof err) != 0) {
        log_error("engine", "%s", err);
        goto out;
    }
    if (tnote[0]) log_warn("engine", "%s (pick one with --chat-template)", tnote);
    struct backend_params bp = {.n_threads = o.threads,
                                .block_size = o.block_size,
                                .n_blocks = o.kv_blocks,
                                .max_batch_tokens = o.max_batch_tokens};
    char note[320];
    if (backend_create_auto(o.device, srv.model, &bp, &srv.backend, note, sizeof note, err,
                            sizeof err) != 0) {
        log_error("engine", "%s", err);
        goto out;
    }
    log_info("engine", "%s", note);
    struct sched_params sp = {.max_batch_tokens = o.max_batch_tokens,
                              .max_seqs = o.max_seqs,
                              .max_wait_ms = o.max_wait_ms,
                              .max_queue = o.max_queue};
    if (sched_create(srv.backend, srv.tok, &sp, &srv.sched, err, sizeof err) != 0 ||
        sched_start(srv.sched, err, sizeof err) != 0) {
        log_error("engine", "%s", err);
        goto out;
    }
    srv.base = event_base_new();
    if (!srv.base || server_http_init(&srv, err, sizeof err) != 0) {
        log_error("engine", "%s", srv.base ? err : "cannot create the event loop");
        goto out;
    }
    if (o.socket_path) {
        listen_fd = listen_unix(o.socket_path, err, sizeof err);
        if (listen_fd < 0 || server_http_listen(&srv, listen_fd, err, sizeof err) != 0) {
            log_error("engine", "%s", err);
            goto out;
        }
    }
    if (o.port >= 0) {
        unsigned port = (unsigned)o.port;
        tcp_fd = net_listen_tcp(o.host, &port, 512, false, err, sizeof err);
        o.port = (int)port;
        if (tcp_fd < 0 || server_http_listen(&srv, tcp_fd, err, sizeof err) != 0) {
            log_error("engine", "%s", err);
            goto out;
        }
    }
    sigs[0] = evsignal_new(srv.base, SIGTERM, on_signal, srv.base);
    sigs[1] = evsignal_new(srv.base, SIGINT, on_signal, srv.base);
    if (!sigs[0] || !sigs[1] || event_add(sigs[0], NULL) != 0 || event_add(sigs[1], NULL) != 0) {
        log_error("engine", "cannot install signal handlers");
        goto out;
    }
    log_info("engine",
             "serving %s (%s, %d layers, vocab %d, context %d, template %s) on %s%s%s%s; "
             "%d KV blocks of %d tokens (sequences up to %d tokens), max_batch_tokens %d",
             srv.model_name, model_arch_name(srv.model->cfg.arch), srv.model->cfg.n_layers,
             srv.model->cfg.vocab_size, srv.model->cfg.max_seq_len,
             chat_template_kind_name(srv.tmpl.kind), o.socket_path ? o.socket_path : "",
             o.socket_path && o.port >= 0 ? " and " : "", o.port >= 0 ? "tcp port " : "",
             o.port >= 0 ? (snprintf(portbuf, sizeof portbuf, "%d", o.port), portbuf) : "",
             srv.backend->kv.n_blocks, srv.backend->kv.block_size, sched_max_context(srv.sched),
             srv.backend->max_batch_tokens);
    event_base_dispatch(srv.base);
    rc = 0;
out:
    /* The scheduler goes first: it finishes what is left through the queue, which
     * server_http_free delivers before it frees evhttp. */
    sched_free(srv.sched);
    if (srv.base) server_http_free(&srv);
    for (int i = 0; i < 2; i++)
        if (sigs[i]) event_free(sigs[i]);
    if (srv.base) event_base_free(srv.base);
    if (listen_fd >= 0) {
        close(listen_fd);
        unlink(o.socket_path);
    }
    if (tcp_fd >= 0) close(tcp_fd);
    backend_free(srv.backend);
    chat_template_release(&srv.tmpl);
    tokenizer_free(srv.tok);
    model_free(srv.model);
    return rc;
}
