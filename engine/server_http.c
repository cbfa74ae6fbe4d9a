/* llmgate-engine's HTTP endpoints: OpenAI chat and text completions (streamed as SSE or whole),
 * models, tokenize, health and Prometheus metrics, on evhttp. Requests go to the scheduler;
 * its events come back through a queue and an eventfd and are written out on this loop. */
#include "engine/server.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "engine/prompt.h"
#include "gateway/errpage.h"
#include "gateway/openai.h"

#define MAX_HEADER_BYTES  (64 * 1024)
#define READ_TIMEOUT_S    120
#define WRITE_TIMEOUT_S   60
#define SHUTDOWN_FLUSH_MS 2000 /* how long final replies get to reach their clients */

/* ---- per-connection and per-request state -----------------------------------------------------
 */

struct srv_conn {
    struct engine_server *srv;
    struct evhttp_connection *evcon;
    int fd;
    struct event *peer_closed; /* EV_CLOSED watch while a request waits (PITFALLS: evhttp does
                                  not read, so cannot see a close, until it writes) */
    struct gen_req *active;
    int flushing; /* counted in srv->flushing: a final reply is being written at shutdown */
};

/* A generation request. States:
 *   GEN_QUEUED    submitted to the scheduler, nothing sent yet
 *   GEN_STREAMING SSE headers sent, chunks flowing
 * The client may go away in either state: req becomes NULL and the request lives on, cancelled,
 * until the scheduler's finish event arrives, which frees it. */
enum gen_state { GEN_QUEUED, GEN_STREAMING };

struct gen_req {
    struct evhttp_request *req; /* NULL once the client is gone */
    struct engine_server *srv;
    struct srv_conn *conn;
    enum gen_state state;
    enum oai_endpoint ep;
    int stream, include_usage;
    char id[48];
    long created;
    uint64_t sched_id;
    struct evbuffer *text; /* non-streamed: the whole completion */
    struct srv_msg *fin;   /* spare finish message, in case allocation fails at the end */
    int lost;              /* a piece of output could not be queued (out of memory) */
    int paused;            /* sched_pause'd until the connection's output drains */
    int pauses;            /* times this stream was paused */
};

/* One scheduler event, copied for the main thread. */
struct srv_msg {
    struct srv_msg *next;
    struct gen_req *r;
    int finished;
    enum sched_finish reason;
    int prompt_tokens, completion_tokens;
    char error[160];
    size_t len;
    char text[];
};

/* ---- replies ------------------------------------------------------------------------------------
 */

static const int status_slots[SRV_STATUS_SLOTS] = {200, 400, 404, 405, 413, 429,
                                                   499, 500, 503, 0,   0,   0};

static void count_status(struct engine_server *srv, int status)
{
    int other = 0;
    for (int i = 0; i < SRV_STATUS_SLOTS; i++) {
        if (status_slots[i] == status) {
            srv->status_count[i]++;
            return;
        }
        if (status_slots[i] == 0 && !other) other = i;
    }
    srv->status_count[other]++;
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

static void reply(struct engine_server *srv, struct evhttp_request *req, int status,
                  const char *ctype, struct evbuffer *body)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", ctype);
    count_status(srv, status);
    evhttp_send_reply(req, status, reason_phrase(status), body);
}

static void reply_error(struct engine_server *srv, struct evhttp_request *req,
                        const struct oai_error *e)
{
    char json[1024];
    int n = oai_error_render(e, json, sizeof json);
    if (n < 0)
        n = snprintf(json, sizeof json,
                     "{\"error\":{\"message\":\"error\",\"type\":\"server_error\",\"param\":null,"
                     "\"code\":null}}");
    struct evbuffer *b = evbuffer_new();
    if (b) evbuffer_add(b, json, (size_t)n);
    reply(srv, req, e->status, "application/json", b);
    if (b) evbuffer_free(b);
}

static void send_error(struct engine_server *srv, struct evhttp_request *req, int status,
                       const char *type, const char *code, const char *param, const char *msg)
{
    struct oai_error e;
    oai_error_set(&e, status, type, code, param, "%s", msg);
    reply_error(srv, req, &e);
}

/* Appends s[0..n) as the inside of a JSON string. s is UTF-8 (the detokenizer's output). */
static void json_escape(struct evbuffer *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        if (i > run) evbuffer_add(out, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': evbuffer_add(out, "\\\"", 2); break;
        case '\\': evbuffer_add(out, "\\\\", 2); break;
        case '\n': evbuffer_add(out, "\\n", 2); break;
        case '\r': evbuffer_add(out, "\\r", 2); break;
        case '\t': evbuffer_add(out, "\\t", 2); break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            evbuffer_add(out, u, sizeof u);
        }
        }
    }
    if (n > run) evbuffer_add(out, s + run, n - run);
}

static void json_str(struct evbuffer *out, const char *s)
{
    evbuffer_add(out, "\"", 1);
    json_escape(out, s, strlen(s));
    evbuffer_add(out, "\"", 1);
}

/* ---- OpenAI bodies (the same shapes llmgate-mock writes) --------------------------------------
 */

static void add_head(struct evbuffer *b, const struct gen_req *r, const char *object)
{
    evbuffer_add_printf(b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":", r->id,
                        object, r->created);
    json_str(b, r->srv->model_name);
}

static void add_usage(struct evbuffer *b, const struct srv_msg *m)
{
    evbuffer_add_printf(b,
                        "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,"
                        "\"total_tokens\":%d}",
                        m->prompt_tokens, m->completion_tokens,
                        m->prompt_tokens + m->completion_tokens);
}

static void sse_head(struct evbuffer *b, const struct gen_req *r)
{
    evbuffer_add(b, "data: ", 6);
    add_head(b, r, r->ep == OAI_CHAT ? "chat.completion.chunk" : "text_completion");
}

static void sse_role(struct evbuffer *b, const struct gen_req *r)
{
    sse_head(b, r);
    evbuffer_add_printf(b, ",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
                           "\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
}

static void sse_text(struct evbuffer *b, const struct gen_req *r, const char *t, size_t n)
{
    sse_head(b, r);
    if (r->ep == OAI_CHAT) {
        evbuffer_add_printf(b, ",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"");
        json_escape(b, t, n);
        evbuffer_add_printf(b, "\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    } else {
        evbuffer_add_printf(b, ",\"choices\":[{\"text\":\"");
        json_escape(b, t, n);
        evbuffer_add_printf(b, "\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    }
}

static void sse_finish(struct evbuffer *b, const struct gen_req *r, const char *reason)
{
    sse_head(b, r);
    if (r->ep == OAI_CHAT)
        evbuffer_add_printf(b,
                            ",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,"
                            "\"finish_reason\":\"%s\"}]}\n\n",
                            reason);
    else
        evbuffer_add_printf(b,
                            ",\"choices\":[{\"text\":\"\",\"index\":0,\"logprobs\":null,"
                            "\"finish_reason\":\"%s\"}]}\n\n",
                            reason);
}

static void body_completion(struct evbuffer *b, const struct gen_req *r, const struct srv_msg *m)
{
    size_t n = evbuffer_get_length(r->text);
    const char *t = n ? (const char *)evbuffer_pullup(r->text, -1) : "";
    const char *reason = sched_finish_name(m->reason);
    if (r->ep == OAI_CHAT) {
        add_head(b, r, "chat.completion");
        evbuffer_add_printf(b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                               "\"content\":\"");
        json_escape(b, t, n);
        evbuffer_add_printf(b, "\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"%s\"}],",
                            reason);
    } else {
        add_head(b, r, "text_completion");
        evbuffer_add_printf(b, ",\"choices\":[{\"text\":\"");
        json_escape(b, t, n);
        evbuffer_add_printf(b, "\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"%s\"}],",
                            reason);
    }
    add_usage(b, m);
    evbuffer_add_printf(b, ",\"system_fingerprint\":null}");
}

/* ---- connections --------------------------------------------------------------------------------
 */

/* evhttp's timeout, for reads and writes alike (evhttp_set_timeout_tv). */
static struct timeval conn_timeout(const struct engine_server *srv)
{
    int ms = srv->read_timeout_ms > 0 ? srv->read_timeout_ms : READ_TIMEOUT_S * 1000;
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

/* Ends a stream's chunked body. start_stream took the read timeout away and evhttp never sets it
 * again on a keep-alive connection, whose idle time would then be unbounded: put it back first,
 * since evhttp_send_reply_end may free the connection. */
static void end_stream(struct gen_req *r)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
    if (evcon) {
        struct timeval tv = conn_timeout(r->srv);
        bufferevent_set_timeouts(evhttp_connection_get_bufferevent(evcon), &tv, &tv);
    }
    evhttp_send_reply_end(r->req);
}

static void gen_free(struct gen_req *r)
{
    r->srv->active--;
    if (r->text) evbuffer_free(r->text);
    free(r->fin);
    free(r);
}

/* The exchange with the client is over (answered, or the client left). */
static void gen_detach(struct gen_req *r)
{
    struct srv_conn *c = r->conn;
    if (c) {
        if (c->peer_closed) event_del(c->peer_closed);
        if (c->active == r) c->active = NULL;
    }
    r->conn = NULL;
    r->req = NULL;
}

enum gone_how { GONE_PEER_CLOSED, GONE_DETACHED, GONE_EVHTTP_FREES };

/* The client went away mid-request: cancel the generation and complete the evhttp side. The
 * gen_req itself waits for the scheduler's finish event. */
static void gen_client_gone(struct gen_req *r, enum gone_how how)
{
    sched_cancel(r->srv->sched, r->sched_id);
    count_status(r->srv, 499);
    if (how == GONE_PEER_CLOSED) {
        /* Complete the exchange so evhttp writes, fails and frees the connection itself. */
        if (r->state == GEN_STREAMING) {
            end_stream(r);
        } else {
            evhttp_add_header(evhttp_request_get_output_headers(r->req), "Connection", "close");
            evhttp_send_reply(r->req, 499, "Client Closed Request", NULL);
        }
    } else if (how == GONE_DETACHED) {
        /* evhttp detached the request from its dead connection: ours to complete, once. */
        evhttp_send_reply_end(r->req);
    }
    gen_detach(r);
}

static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    struct srv_conn *c = arg;
    struct engine_server *srv = c->srv;
    if (c->active) {
        struct gen_req *r = c->active;
        gen_client_gone(r,
                        evhttp_request_get_connection(r->req) ? GONE_EVHTTP_FREES : GONE_DETACHED);
    }
    if (c->fd >= 0 && (size_t)c->fd < srv->conns_cap && srv->conns[c->fd] == c)
        srv->conns[c->fd] = NULL;
    /* Written out (or failed): the shutdown flush ends with the last such connection. */
    if (c->flushing && --srv->flushing == 0 && srv->stopping) event_base_loopbreak(srv->base);
    if (c->peer_closed) event_free(c->peer_closed);
    free(c);
}

static void on_peer_closed(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct srv_conn *c = arg;
    if (c->active) gen_client_gone(c->active, GONE_PEER_CLOSED);
}

static struct srv_conn *conn_get(struct engine_server *srv, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (!evcon) return NULL;
    int fd = (int)bufferevent_getfd(evhttp_connection_get_bufferevent(evcon));
    if (fd < 0 || (size_t)fd >= srv->conns_cap) return NULL;
    struct srv_conn *c = srv->conns[fd];
    if (c && c->evcon == evcon) return c;
    c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->srv = srv;
    c->evcon = evcon;
    c->fd = fd;
    if (event_base_get_features(srv->base) & EV_FEATURE_EARLY_CLOSE)
        c->peer_closed = event_new(srv->base, fd, EV_CLOSED, on_peer_closed, c);
    srv->conns[fd] = c;
    evhttp_connection_set_closecb(evcon, on_conn_close, c);
    return c;
}

/* ---- scheduler events -> main thread ------------------------------------------------------------
 */

/* Scheduler thread: copy the event and wake the loop. */
static void on_sched_event(void *ud, const struct sched_event *ev)
{
    struct gen_req *r = ud;
    struct engine_server *srv = r->srv;
    struct srv_msg *m = malloc(sizeof *m + ev->text_len + 1);
    if (!m) {
        r->lost = 1; /* read on the main thread after the finish message: ordered by mu */
        if (!ev->finished) return;
        m = r->fin;
        r->fin = NULL;
        m->len = 0;
    } else {
        m->len = ev->text_len;
        memcpy(m->text, ev->text, ev->text_len);
    }
    m->text[m->len] = '\0';
    m->next = NULL;
    m->r = r;
    m->finished = ev->finished;
    m->reason = ev->reason;
    m->prompt_tokens = ev->prompt_tokens;
    m->completion_tokens = ev->completion_tokens;
    snprintf(m->error, sizeof m->error, "%s", ev->error ? ev->error : "");
    pthread_mutex_lock(&srv->mu);
    int was_empty = srv->head == NULL;
    if (srv->tail)
        srv->tail->next = m;
    else
        srv->head = m;
    srv->tail = m;
    pthread_mutex_unlock(&srv->mu);
    if (was_empty) {
        uint64_t one = 1;
        ssize_t w = write(srv->wake_fd, &one, sizeof one);
        (void)w; /* a full counter (EAGAIN) still wakes the loop */
    }
}

static void start_stream(struct gen_req *r)
{
    struct evhttp_request *req = r->req;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "text/event-stream; charset=utf-8");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_add_header(h, "X-Accel-Buffering", "no");
    evhttp_send_reply_start(req, 200, "OK");
    r->state = GEN_STREAMING;
    count_status(r->srv, 200);
    /* evhttp's one timeout would also cut a stream whose client is silent (libevent #715): no
     * read timeout from here, only a write timeout. */
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (evcon) {
        struct timeval wt = {.tv_sec = WRITE_TIMEOUT_S};
        bufferevent_set_timeouts(evhttp_connection_get_bufferevent(evcon), NULL, &wt);
    }
    if (r->ep != OAI_CHAT) return; /* text completions have no role chunk */
    struct evbuffer *b = evbuffer_new();
    if (!b) return;
    sse_role(b, r);
    evhttp_send_reply_chunk(req, b);
    evbuffer_free(b);
}

/* ---- backpressure on streams ----------------------------------------------------------------- */

/* A client that reads its stream slower than the engine generates it (or not at all) would have
 * evhttp buffer the output without bound. Above max_stream_buffer unsent bytes the sequence is
 * paused in the scheduler (no decode steps, its KV blocks kept until another sequence needs
 * them) and resumed when the connection's output has been written out. A client that reads
 * nothing at all is closed by the write timeout (WRITE_TIMEOUT_S), which cancels it. */

/* Bytes of r's connection's output not yet written to the socket. */
static size_t stream_unsent(const struct gen_req *r)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
    if (!evcon) return 0;
    return evbuffer_get_length(bufferevent_get_output(evhttp_connection_get_bufferevent(evcon)));
}

/* evhttp: the connection's output has been written out. Registered with every chunk sent while
 * the stream is paused, since evhttp keeps one such callback per connection and each chunk
 * replaces it; the reply's end replaces it with evhttp's own, so it never outlives the stream.
 * arg is the srv_conn, which lives as long as the connection. */
static void on_stream_drained(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    struct srv_conn *c = arg;
    struct gen_req *r = c->active;
    if (!r || !r->paused) return;
    if (sched_pause(r->srv->sched, r->sched_id, 0) != 0) {
        log_warn("engine", "stream %s: out of memory resuming it; cancelled", r->id);
        gen_client_gone(r, GONE_PEER_CLOSED);
        return;
    }
    r->paused = 0;
}

/* Pauses r's sequence; its chunks are then sent with on_stream_drained. Without a srv_conn to
 * find it by when the output drains, the stream is ended instead. */
static void pause_stream(struct gen_req *r, size_t unsent)
{
    if (!r->conn) {
        log_warn("engine", "stream %s: %zu bytes unsent and no way to resume it; cancelled", r->id,
                 unsent);
        gen_client_gone(r, GONE_PEER_CLOSED);
        return;
    }
    if (sched_pause(r->srv->sched, r->sched_id, 1) != 0) return; /* out of memory: next chunk */
    r->paused = 1;
    r->srv->stream_pauses_total++;
    if (r->pauses++ == 0)
        log_info("engine",
                 "stream %s: client reads slower than the output (%zu bytes unsent, limit %zu); "
                 "generation paused until it catches up",
                 r->id, unsent, r->srv->max_stream_buffer);
}

/* Sends one chunk of r's stream, pausing the sequence when the client falls too far behind. */
static void send_stream_chunk(struct gen_req *r, struct evbuffer *b, int last)
{
    size_t unsent = stream_unsent(r) + evbuffer_get_length(b);
    if (!last && !r->paused && unsent > r->srv->max_stream_buffer) {
        pause_stream(r, unsent);
        if (!r->req) return; /* ended instead */
    }
    if (r->paused && !last)
        evhttp_send_reply_chunk_with_cb(r->req, b, on_stream_drained, r->conn);
    else
        evhttp_send_reply_chunk(r->req, b);
}

/* A generation that ended without output to show: cancelled at shutdown, or failed. */
static void fail_generation(struct gen_req *r, const struct srv_msg *m)
{
    int shutting = m->reason == SCHED_FINISH_CANCELLED;
    const char *code = shutting ? "engine_shutting_down" : "engine_error";
    char msg[256];
    snprintf(msg, sizeof msg, "%s",
             shutting      ? "The engine is shutting down."
             : m->error[0] ? m->error
                           : "out of memory");
    if (r->state == GEN_QUEUED) {
        send_error(r->srv, r->req, shutting ? 503 : 500, "server_error", code, NULL, msg);
        return;
    }
    struct oai_error e;
    oai_error_set(&e, 500, "server_error", code, NULL, "%s", msg);
    char json[512];
    int n = oai_error_render(&e, json, sizeof json);
    struct evbuffer *b = evbuffer_new();
    if (!b) return end_stream(r);
    if (n > 0) evbuffer_add_printf(b, "data: %s\n\n", json);
    evhttp_send_reply_chunk(r->req, b);
    evbuffer_free(b);
    end_stream(r);
}

/* At shutdown, a request's last reply closes its connection (evhttp frees it once the reply is
 * written, even a stream whose headers are out: it reads the output headers then), and
 * server_http_free's flush waits for that close. */
static void close_after_reply(struct gen_req *r)
{
    evhttp_add_header(evhttp_request_get_output_headers(r->req), "Connection", "close");
    if (r->conn && !r->conn->flushing) {
        r->conn->flushing = 1;
        r->srv->flushing++;
    }
}

static void deliver(struct engine_server *srv, struct srv_msg *m)
{
    struct gen_req *r = m->r;
    if (m->finished) {
        srv->prompt_tokens_total += (uint64_t)m->prompt_tokens;
        srv->completion_tokens_total += (uint64_t)m->completion_tokens;
    }
    if (!r->req) { /* the client left; only the finish event matters */
        if (m->finished) gen_free(r);
        return;
    }
    if (m->finished && srv->stopping) close_after_reply(r);
    int failed = m->finished && (m->reason == SCHED_FINISH_CANCELLED ||
                                 m->reason == SCHED_FINISH_ERROR || r->lost);
    if (failed) {
        fail_generation(r, m);
        gen_detach(r);
        gen_free(r);
        return;
    }
    if (!r->stream) {
        evbuffer_add(r->text, m->text, m->len);
        if (!m->finished) return;
        struct evbuffer *b = evbuffer_new();
        if (b) body_completion(b, r, m);
        reply(srv, r->req, 200, "application/json", b);
        if (b) evbuffer_free(b);
        gen_detach(r);
        gen_free(r);
        return;
    }
    if (r->state == GEN_QUEUED) start_stream(r);
    struct evbuffer *b = evbuffer_new();
    if (b) {
        if (m->len) sse_text(b, r, m->text, m->len);
        if (m->finished) {
            sse_finish(b, r, sched_finish_name(m->reason));
            if (r->include_usage) {
                sse_head(b, r);
                evbuffer_add_printf(b, ",\"choices\":[],");
                add_usage(b, m);
                evbuffer_add_printf(b, "}\n\n");
            }
            evbuffer_add(b, "data: [DONE]\n\n", 14);
        }
        if (evbuffer_get_length(b)) send_stream_chunk(r, b, m->finished);
        evbuffer_free(b);
        if (!r->req) return; /* cancelled for good (send_stream_chunk): the finish event frees r */
    }
    if (m->finished) {
        end_stream(r);
        gen_detach(r);
        gen_free(r);
    }
}

void server_http_drain(struct engine_server *srv)
{
    pthread_mutex_lock(&srv->mu);
    struct srv_msg *m = srv->head;
    srv->head = srv->tail = NULL;
    pthread_mutex_unlock(&srv->mu);
    while (m) {
        struct srv_msg *next = m->next;
        deliver(srv, m);
        free(m);
        m = next;
    }
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    uint64_t v;
    ssize_t n = read(fd, &v, sizeof v);
    (void)n; /* EAGAIN: another wake-up already consumed the counter */
    server_http_drain(arg);
}

/* ---- request parsing
 * ------------------------------------------------------------------------------ */

/* A refused or failed prompt (engine/prompt.c) as the OpenAI error the client gets. */
static void prompt_failed(int rc, const struct prompt_error *pe, struct oai_error *e)
{
    if (rc == PROMPT_E_INVALID)
        oai_error_set(e, 400, "invalid_request_error", pe->code, pe->param, "%s", pe->message);
    else
        oai_error_set(e, 500, "server_error", NULL, NULL, "Out of memory.");
}

static double num_or(const cJSON *root, const char *name, double dflt)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, name);
    return cJSON_IsNumber(it) ? it->valuedouble : dflt;
}

static int present(const cJSON *root, const char *name)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, name);
    return it && !cJSON_IsNull(it);
}

/* Fields the engine cannot honour are refused rather than silently ignored. */
static int check_unsupported(const struct oai_request *o, struct oai_error *e)
{
    const cJSON *root = o->root;
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(root, "logprobs");
    if ((cJSON_IsBool(lp) && cJSON_IsTrue(lp)) || (cJSON_IsNumber(lp) && lp->valuedouble > 0)) {
        oai_error_set(e, 400, "invalid_request_error", "unsupported_parameter", "logprobs",
                      "logprobs are not supported by the local engine.");
        return -1;
    }
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
    if (cJSON_IsArray(tools) && cJSON_GetArraySize(tools) > 0) {
        oai_error_set(e, 400, "invalid_request_error", "unsupported_parameter", "tools",
                      "tools are not supported by the local engine.");
        return -1;
    }
    const cJSON *echo = cJSON_GetObjectItemCaseSensitive(root, "echo");
    if (cJSON_IsTrue(echo) || present(root, "suffix") || num_or(root, "best_of", 1) > 1) {
        const char *param = cJSON_IsTrue(echo)        ? "echo"
                            : present(root, "suffix") ? "suffix"
                                                      : "best_of";
        oai_error_set(e, 400, "invalid_request_error", "unsupported_parameter", param,
                      "%s is not supported by the local engine.", param);
        return -1;
    }
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(root, "response_format");
    const cJSON *rft = cJSON_IsObject(rf) ? cJSON_GetObjectItemCaseSensitive(rf, "type") : NULL;
    if (rft && !(cJSON_IsString(rft) && strcmp(rft->valuestring, "text") == 0)) {
        oai_error_set(
            e, 400, "invalid_request_error", "unsupported_parameter", "response_format",
            "Only response_format {\"type\": \"text\"} is supported by the local engine.");
        return -1;
    }
    if (o->n != 1) {
        oai_error_set(e, 400, "invalid_request_error", "unsupported_parameter", "n",
                      "n must be 1 with the local engine.");
        return -1;
    }
    const cJSON *tk = cJSON_GetObjectItemCaseSensitive(root, "top_k");
    if (present(root, "top_k") &&
        !(cJSON_IsNumber(tk) && tk->valuedouble >= -1 && tk->valuedouble <= 1e6 &&
          tk->valuedouble == floor(tk->valuedouble))) {
        oai_error_set(e, 400, "invalid_request_error", "invalid_value", "top_k",
                      "top_k must be an integer >= -1 (-1 or 0 disables it).");
        return -1;
    }
    const cJSON *ie = cJSON_GetObjectItemCaseSensitive(root, "ignore_eos");
    if (present(root, "ignore_eos") && !cJSON_IsBool(ie)) {
        oai_error_set(e, 400, "invalid_request_error", "invalid_type", "ignore_eos",
                      "ignore_eos must be a boolean.");
        return -1;
    }
    return 0;
}

static void fill_sampling(const struct engine_server *srv, const cJSON *root,
                          struct sampler_params *sp)
{
    const struct model_config *c = &srv->model->cfg;
    sampler_params_default(sp);
    /* the model's generation_config.json gives the defaults, as vLLM does */
    sp->temperature =
        (float)num_or(root, "temperature", c->gen_temperature >= 0 ? c->gen_temperature : 1.0);
    sp->top_p = (float)num_or(root, "top_p", c->gen_top_p > 0 ? c->gen_top_p : 1.0);
    int top_k = (int)num_or(root, "top_k", c->gen_top_k > 0 ? c->gen_top_k : 0);
    sp->top_k = top_k > 0 ? top_k : 0;
    if (!(sp->top_p > 0.0f)) sp->top_p = 1e-6f; /* OpenAI allows 0: keep only the top token */
    sp->presence_penalty = (float)num_or(root, "presence_penalty", 0);
    sp->frequency_penalty = (float)num_or(root, "frequency_penalty", 0);
    if (present(root, "seed")) {
        sp->seed = (uint64_t)(int64_t)num_or(root, "seed", 0);
    } else if (util_random_bytes(&sp->seed, sizeof sp->seed) != 0) {
        sp->seed = (uint64_t)util_now_us();
    }
}

static void make_id(char *out, size_t cap, enum oai_endpoint ep)
{
    unsigned char rnd[12];
    if (util_random_bytes(rnd, sizeof rnd) != 0) memset(rnd, 0, sizeof rnd);
    int n = snprintf(out, cap, "%s-", ep == OAI_CHAT ? "chatcmpl" : "cmpl");
    for (size_t i = 0; i < sizeof rnd && (size_t)n + 2 < cap; i++)
        n += snprintf(out + n, cap - (size_t)n, "%02x", rnd[i]);
}

static int model_matches(const struct engine_server *srv, const char *name, struct oai_error *e)
{
    if (!name || strcmp(name, srv->model_name) == 0) return 0;
    oai_error_set(e, 404, "invalid_request_error", "model_not_found", "model",
                  "The model `%.100s` does not exist; this engine serves `%.100s`.", name,
                  srv->model_name);
    return -1;
}

static void handle_generate(struct engine_server *srv, struct evhttp_request *req,
                            enum oai_endpoint ep)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
    struct oai_request o;
    struct oai_error e;
    struct prompt_ids p = {0};
    struct gen_req *r = NULL;
    if (oai_request_parse(ep, body, len, &o, &e) != 0) return reply_error(srv, req, &e);
    if (model_matches(srv, o.model, &e) != 0 || check_unsupported(&o, &e) != 0) goto fail;
    const cJSON *root = o.root;
    struct prompt_error pe;
    int prc = ep == OAI_CHAT
                  ? prompt_chat(srv->tok, &srv->tmpl,
                                cJSON_GetObjectItemCaseSensitive(root, "messages"), &p, &pe)
                  : prompt_completion(srv->tok, cJSON_GetObjectItemCaseSensitive(root, "prompt"),
                                      &p, &pe);
    if (prc != PROMPT_OK) {
        prompt_failed(prc, &pe, &e);
        goto fail;
    }
    if (p.n == 0) {
        oai_error_set(&e, 400, "invalid_request_error", "invalid_value",
                      ep == OAI_CHAT ? "messages" : "prompt", "The prompt is empty.");
        goto fail;
    }

    struct sched_request sr = {.prompt = p.ids, .n_prompt = (int)p.n};
    sr.max_tokens = o.max_tokens > 0 && o.max_tokens < INT32_MAX ? (int)o.max_tokens : 0;
    fill_sampling(srv, root, &sr.sampling);
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (cJSON_IsString(stop)) {
        if (stop->valuestring[0]) sr.stop[sr.n_stop++] = stop->valuestring;
    } else if (cJSON_IsArray(stop)) {
        const cJSON *s;
        cJSON_ArrayForEach(s, stop) if (s->valuestring[0] && sr.n_stop < SCHED_MAX_STOP)
            sr.stop[sr.n_stop++] = s->valuestring;
    }
    sr.ignore_eos = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "ignore_eos"));

    r = calloc(1, sizeof *r);
    if (!r || !(r->text = evbuffer_new()) || !(r->fin = malloc(sizeof *r->fin + 1))) {
        oai_error_set(&e, 500, "server_error", NULL, NULL, "Out of memory.");
        goto fail;
    }
    r->req = req;
    r->srv = srv;
    r->ep = ep;
    r->stream = o.stream;
    r->include_usage = o.include_usage;
    r->created = (long)time(NULL);
    make_id(r->id, sizeof r->id, ep);
    sr.cb = on_sched_event;
    sr.ud = r;
    srv->active++; /* gen_free's twin */
    char err[256];
    int rc = sched_submit(srv->sched, &sr, &r->sched_id, err, sizeof err);
    if (rc != SCHED_OK) {
        const char *param = ep == OAI_CHAT ? "messages" : "prompt";
        if (rc == SCHED_E_OVERLOADED) {
            struct sched_stats st;
            sched_get_stats(srv->sched, &st);
            char ra[32];
            snprintf(ra, sizeof ra, "%d", (int)ceil(st.predicted_wait_ms / 1000.0) + 0);
            evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After",
                              st.predicted_wait_ms >= 1000 ? ra : "1");
            oai_error_set(&e, 429, "rate_limit_error", "engine_overloaded", NULL, "%s", err);
        } else if (rc == SCHED_E_TOO_LONG) {
            oai_error_set(&e, 400, "invalid_request_error", "context_length_exceeded", param, "%s",
                          err);
        } else if (rc == SCHED_E_INVALID) {
            oai_error_set(&e, 400, "invalid_request_error", "invalid_value", param, "%s", err);
        } else {
            oai_error_set(&e, 503, "server_error",
                          rc == SCHED_E_STOPPED ? "engine_shutting_down" : NULL, NULL, "%s", err);
        }
        gen_free(r);
        r = NULL;
        goto fail;
    }
    prompt_ids_free(&p);
    oai_request_free(&o);
    struct srv_conn *c = conn_get(srv, req);
    r->conn = c;
    if (c) {
        c->active = r;
        if (c->peer_closed) event_add(c->peer_closed, NULL);
    }
    return;
fail:
    if (r) {
        if (r->text) evbuffer_free(r->text);
        free(r->fin);
        free(r);
    }
    prompt_ids_free(&p);
    oai_request_free(&o);
    reply_error(srv, req, &e);
}

/* ---- simple endpoints
 * ------------------------------------------------------------------------------ */

static void handle_models(struct engine_server *srv, struct evhttp_request *req)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) return send_error(srv, req, 500, "server_error", NULL, NULL, "Out of memory.");
    evbuffer_add_printf(b, "{\"object\":\"list\",\"data\":[{\"id\":");
    json_str(b, srv->model_name);
    evbuffer_add_printf(b,
                        ",\"object\":\"model\",\"created\":0,\"owned_by\":\"llmgate-engine\","
                        "\"max_model_len\":%d}]}",
                        sched_max_context(srv->sched));
    reply(srv, req, 200, "application/json", b);
    evbuffer_free(b);
}

/* POST /tokenize {"model"?, "text" | "prompt" | "messages"}: the ids a completion or chat
 * request with that input would be prompted with. */
static void handle_tokenize(struct engine_server *srv, struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
    struct oai_error e;
    struct prompt_ids p = {0};
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!cJSON_IsObject(root)) {
        oai_error_set(&e, 400, "invalid_request_error", "invalid_json", NULL,
                      "The body is not a JSON object.");
        goto fail;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (present(root, "model") && !cJSON_IsString(model)) {
        oai_error_set(&e, 400, "invalid_request_error", "invalid_type", "model",
                      "model must be a string.");
        goto fail;
    }
    if (model_matches(srv, cJSON_IsString(model) ? model->valuestring : NULL, &e) != 0) goto fail;
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(root, "text");
    if (!text) text = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (cJSON_IsString(text)) {
        if (prompt_encode_text(srv->tok, text->valuestring, 1, &p) != PROMPT_OK) {
            oai_error_set(&e, 500, "server_error", NULL, NULL, "Out of memory.");
            goto fail;
        }
    } else if (msgs) {
        /* validate the messages exactly as chat does */
        char *sub = NULL;
        cJSON *tmp = cJSON_CreateObject();
        cJSON *copy = cJSON_Duplicate(msgs, 1);
        if (tmp && copy && cJSON_AddStringToObject(tmp, "model", srv->model_name)) {
            cJSON_AddItemToObject(tmp, "messages", copy);
            copy = NULL;
            sub = cJSON_PrintUnformatted(tmp);
        }
        cJSON_Delete(copy);
        cJSON_Delete(tmp);
        struct oai_request o;
        if (!sub) {
            oai_error_set(&e, 500, "server_error", NULL, NULL, "Out of memory.");
            goto fail;
        }
        int rc = oai_request_parse(OAI_CHAT, sub, strlen(sub), &o, &e);
        free(sub);
        if (rc != 0) goto fail;
        struct prompt_error pe;
        rc = prompt_chat(srv->tok, &srv->tmpl, cJSON_GetObjectItemCaseSensitive(o.root, "messages"),
                         &p, &pe);
        oai_request_free(&o);
        if (rc != PROMPT_OK) {
            prompt_failed(rc, &pe, &e);
            goto fail;
        }
    } else {
        oai_error_set(&e, 400, "invalid_request_error", "missing_required_parameter", "text",
                      "Give \"text\" (a string) or \"messages\".");
        goto fail;
    }
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        oai_error_set(&e, 500, "server_error", NULL, NULL, "Out of memory.");
        goto fail;
    }
    evbuffer_add_printf(b, "{\"tokens\":[");
    for (size_t i = 0; i < p.n; i++)
        evbuffer_add_printf(b, "%s%d", i ? "," : "", p.ids[i]);
    evbuffer_add_printf(b, "],\"count\":%zu,\"max_model_len\":%d}", p.n,
                        sched_max_context(srv->sched));
    reply(srv, req, 200, "application/json", b);
    evbuffer_free(b);
    prompt_ids_free(&p);
    cJSON_Delete(root);
    return;
fail:
    prompt_ids_free(&p);
    cJSON_Delete(root);
    reply_error(srv, req, &e);
}

static void handle_health(struct engine_server *srv, struct evhttp_request *req)
{
    struct evbuffer *b = evbuffer_new();
    if (b) {
        evbuffer_add_printf(b, "{\"status\":\"ok\",\"model\":");
        json_str(b, srv->model_name);
        evbuffer_add_printf(b, "}");
    }
    reply(srv, req, 200, "application/json", b);
    if (b) evbuffer_free(b);
}

static void handle_metrics(struct engine_server *srv, struct evhttp_request *req)
{
    struct sched_stats st;
    sched_get_stats(srv->sched, &st);
    struct evbuffer *b = evbuffer_new();
    if (!b) return send_error(srv, req, 500, "server_error", NULL, NULL, "Out of memory.");
    evbuffer_add_printf(
        b,
        "# HELP llmgate_engine_queue_depth Requests accepted and waiting to start.\n"
        "# TYPE llmgate_engine_queue_depth gauge\nllmgate_engine_queue_depth %d\n"
        "# HELP llmgate_engine_running Sequences in the running batch.\n"
        "# TYPE llmgate_engine_running gauge\nllmgate_engine_running %d\n"
        "# HELP llmgate_engine_paused_streams Streams paused until their client reads.\n"
        "# TYPE llmgate_engine_paused_streams gauge\nllmgate_engine_paused_streams %d\n"
        "# HELP llmgate_engine_stream_pauses_total Times a stream was paused for a slow client.\n"
        "# TYPE llmgate_engine_stream_pauses_total counter\n"
        "llmgate_engine_stream_pauses_total %llu\n"
        "# HELP llmgate_engine_kv_blocks_used KV cache blocks held by sequences.\n"
        "# TYPE llmgate_engine_kv_blocks_used gauge\nllmgate_engine_kv_blocks_used %d\n"
        "# HELP llmgate_engine_kv_blocks_total KV cache blocks in the pool.\n"
        "# TYPE llmgate_engine_kv_blocks_total gauge\nllmgate_engine_kv_blocks_total %d\n"
        "# HELP llmgate_engine_tokens_per_second Tokens computed per second (EWMA).\n"
        "# TYPE llmgate_engine_tokens_per_second gauge\nllmgate_engine_tokens_per_second %.1f\n"
        "# HELP llmgate_engine_predicted_wait_seconds Predicted wait of a new request.\n"
        "# TYPE llmgate_engine_predicted_wait_seconds gauge\n"
        "llmgate_engine_predicted_wait_seconds %.4f\n"
        "# HELP llmgate_engine_steps_total Scheduler steps (forward passes).\n"
        "# TYPE llmgate_engine_steps_total counter\nllmgate_engine_steps_total %llu\n"
        "# HELP llmgate_engine_preemptions_total Sequences preempted for KV blocks.\n"
        "# TYPE llmgate_engine_preemptions_total counter\n"
        "llmgate_engine_preemptions_total %llu\n"
        "# HELP llmgate_engine_prompt_tokens_total Prompt tokens of finished requests.\n"
        "# TYPE llmgate_engine_prompt_tokens_total counter\n"
        "llmgate_engine_prompt_tokens_total %llu\n"
        "# HELP llmgate_engine_generation_tokens_total Tokens generated.\n"
        "# TYPE llmgate_engine_generation_tokens_total counter\n"
        "llmgate_engine_generation_tokens_total %llu\n"
        "# HELP llmgate_engine_requests_total HTTP requests by status.\n"
        "# TYPE llmgate_engine_requests_total counter\n",
        st.queued, st.running, st.paused, (unsigned long long)srv->stream_pauses_total,
        st.kv_blocks_used, st.kv_blocks_total, st.tokens_per_s, st.predicted_wait_ms / 1000.0,
        (unsigned long long)st.steps, (unsigned long long)st.preemptions,
        (unsigned long long)srv->prompt_tokens_total, (unsigned long long)st.tokens_generated);
    for (int i = 0; i < SRV_STATUS_SLOTS; i++) {
        if (status_slots[i] == 0 && i > 0 && status_slots[i - 1] == 0) break;
        if (status_slots[i])
            evbuffer_add_printf(b, "llmgate_engine_requests_total{status=\"%d\"} %llu\n",
                                status_slots[i], (unsigned long long)srv->status_count[i]);
        else
            evbuffer_add_printf(b, "llmgate_engine_requests_total{status=\"other\"} %llu\n",
                                (unsigned long long)srv->status_count[i]);
    }
    reply(srv, req, 200, "text/plain; version=0.0.4", b);
    evbuffer_free(b);
}

/* ---- dispatch
 * ------------------------------------------------------------------------------------- */

enum route { R_CHAT, R_COMPLETIONS, R_MODELS, R_TOKENIZE, R_HEALTH, R_METRICS };

static const struct endpoint {
    const char *path;
    enum evhttp_cmd_type method;
    enum route route;
} endpoints[] = {
    {"/v1/chat/completions", EVHTTP_REQ_POST, R_CHAT},
    {"/v1/completions", EVHTTP_REQ_POST, R_COMPLETIONS},
    {"/v1/models", EVHTTP_REQ_GET, R_MODELS},
    {"/tokenize", EVHTTP_REQ_POST, R_TOKENIZE},
    {"/health", EVHTTP_REQ_GET, R_HEALTH},
    {"/metrics", EVHTTP_REQ_GET, R_METRICS},
};

static void on_request(struct evhttp_request *req, void *arg)
{
    struct engine_server *srv = arg;
    if (srv->stopping) { /* the shutdown flush: the scheduler is gone */
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        return send_error(srv, req, 503, "server_error", "engine_shutting_down", NULL,
                          "The engine is shutting down.");
    }
    const char *uri = evhttp_request_get_uri(req);
    char path[256];
    size_t plen = strcspn(uri ? uri : "", "?#");
    if (plen >= sizeof path) plen = sizeof path - 1;
    memcpy(path, uri ? uri : "", plen);
    path[plen] = '\0';
    while (plen > 1 && path[plen - 1] == '/')
        path[--plen] = '\0';
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    const struct endpoint *ep = NULL;
    int known = 0;
    for (size_t i = 0; i < sizeof endpoints / sizeof *endpoints; i++) {
        if (strcmp(endpoints[i].path, path) != 0) continue;
        known = 1;
        if (endpoints[i].method == method ||
            (method == EVHTTP_REQ_HEAD && endpoints[i].method == EVHTTP_REQ_GET))
            ep = &endpoints[i];
    }
    char msg[320];
    if (!ep && known) {
        snprintf(msg, sizeof msg, "Method not allowed for %.200s.", path);
        return send_error(srv, req, 405, "invalid_request_error", "method_not_allowed", NULL, msg);
    }
    if (!ep) {
        snprintf(msg, sizeof msg, "Unknown request URL: %.200s.", path);
        return send_error(srv, req, 404, "invalid_request_error", "unknown_url", NULL, msg);
    }
    switch (ep->route) {
    case R_CHAT: return handle_generate(srv, req, OAI_CHAT);
    case R_COMPLETIONS: return handle_generate(srv, req, OAI_COMPLETIONS);
    case R_MODELS: return handle_models(srv, req);
    case R_TOKENIZE: return handle_tokenize(srv, req);
    case R_HEALTH: return handle_health(srv, req);
    case R_METRICS: return handle_metrics(srv, req);
    }
}

/* ---- evhttp's own error pages
 * ----------------------------------------------------------------------- */

/* evhttp's own error pages become OpenAI JSON, as in the gateway (gateway/errpage.h):
 * 413 body too large, 400 unparsable HTTP, 501 a method it does not take (TRACE, CONNECT). */
static void rewrite_html_error(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    const struct engine_server *srv = arg;
    char minor;
    int status = errpage_status(buf, info, &minor);
    if (!status) return;
    struct oai_error e;
    if (status == 413)
        oai_error_set(&e, status, "invalid_request_error", "request_too_large", NULL,
                      "The request body is larger than the limit of %zu bytes.",
                      srv->max_body_bytes);
    else if (status == 501)
        oai_error_set(&e, status, "invalid_request_error", "unsupported_method", NULL, "%s",
                      "The HTTP method is not supported.");
    else
        oai_error_set(&e, status, "invalid_request_error", "invalid_http", NULL,
                      "The HTTP request could not be parsed (%d).", status);
    errpage_replace(buf, minor, &e, reason_phrase(status));
}

static struct bufferevent *make_conn_bev(struct event_base *base, void *arg)
{
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (bev && !evbuffer_add_cb(bufferevent_get_output(bev), rewrite_html_error, arg)) {
        bufferevent_free(bev);
        return NULL;
    }
    return bev;
}

/* ---- setup
 * ---------------------------------------------------------------------------------------- */

int server_http_init(struct engine_server *srv, char *err, size_t errlen)
{
    struct rlimit rl;
    size_t cap = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (1u << 20))
        cap = (size_t)rl.rlim_cur;
    srv->conns = calloc(cap, sizeof *srv->conns);
    srv->conns_cap = cap;
    srv->http = evhttp_new(srv->base);
    srv->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!srv->conns || !srv->http || srv->wake_fd < 0) {
        snprintf(err, errlen, "cannot set up the HTTP server: %s", strerror(errno));
        return -1;
    }
    if (pthread_mutex_init(&srv->mu, NULL) != 0) {
        snprintf(err, errlen, "pthread_mutex_init failed");
        return -1;
    }
    srv->wake_ev = event_new(srv->base, srv->wake_fd, EV_READ | EV_PERSIST, on_wake, srv);
    if (!srv->wake_ev || event_add(srv->wake_ev, NULL) != 0) {
        snprintf(err, errlen, "cannot watch the eventfd");
        return -1;
    }
    /* libevent's defaults are unsafe (PITFALLS): set every limit explicitly. */
    evhttp_set_default_content_type(srv->http, "application/json");
    evhttp_set_allowed_methods(srv->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                              EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                              EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_max_headers_size(srv->http, MAX_HEADER_BYTES);
    evhttp_set_max_body_size(srv->http, (ev_ssize_t)srv->max_body_bytes);
    /* Read the rest of an oversized body so the client sees the 413, not a reset. */
    evhttp_set_flags(srv->http, EVHTTP_SERVER_LINGERING_CLOSE);
    struct timeval tv = conn_timeout(srv);
    evhttp_set_timeout_tv(srv->http, &tv);
    evhttp_set_gencb(srv->http, on_request, srv);
    evhttp_set_bevcb(srv->http, make_conn_bev, srv);
    return 0;
}

int server_http_listen(struct engine_server *srv, int fd, char *err, size_t errlen)
{
    struct evhttp_bound_socket *bs = NULL;
    if (srv->n_bound < (int)(sizeof srv->bound / sizeof *srv->bound))
        bs = evhttp_accept_socket_with_handle(srv->http, fd);
    if (!bs) {
        snprintf(err, errlen, "cannot accept on the listening socket");
        return -1;
    }
    srv->bound[srv->n_bound++] = bs;
    return 0;
}

/* Runs the loop until every final reply of the shutdown is written (on_conn_close breaks it) or
 * SHUTDOWN_FLUSH_MS pass; a second signal's loopexit ends it at once. */
static void flush_final_replies(struct engine_server *srv)
{
    if (srv->flushing == 0) return;
    struct timeval tv = {.tv_sec = SHUTDOWN_FLUSH_MS / 1000,
                         .tv_usec = (SHUTDOWN_FLUSH_MS % 1000) * 1000};
    if (event_base_loopexit(srv->base, &tv) != 0) return;
    if (event_base_dispatch(srv->base) < 0) log_warn("engine", "shutdown flush: loop failed");
    if (srv->flushing > 0) log_warn("engine", "%d replies cut short at shutdown", srv->flushing);
}

void server_http_free(struct engine_server *srv)
{
    /* The scheduler is gone: no new connections, and requests that still arrive on open ones
     * are refused (on_request). */
    srv->stopping = 1;
    for (int i = 0; i < srv->n_bound; i++)
        if (evconnlistener_disable(evhttp_bound_socket_get_listener(srv->bound[i])) != 0)
            log_warn("engine", "cannot stop accepting connections");
    server_http_drain(srv); /* the scheduler is gone: these are the last messages */
    flush_final_replies(srv);
    /* evhttp_free closes every connection; their close callbacks free our state. */
    if (srv->http) evhttp_free(srv->http);
    srv->http = NULL;
    if (srv->wake_ev) event_free(srv->wake_ev);
    if (srv->wake_fd >= 0) close(srv->wake_fd);
    free(srv->conns);
    pthread_mutex_destroy(&srv->mu);
}
