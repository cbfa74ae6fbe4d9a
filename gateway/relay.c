/* Dispatch to the routed upstream and relay of its answer: buffered JSON passed
 * through after a sanity check, or SSE events re-framed as they arrive, with
 * backpressure toward the upstream and OpenAI-shaped failures. */
#include "gateway/relay.h"

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "autoconf.h"
#include "common/log.h"
#include "common/util.h"
#include "gateway/quota.h"
#include "routing/upstream.h"

#define MAX_UPSTREAM_BODY  (64u << 20)  /* buffered (non-streamed) upstream answers */
#define MAX_SSE_EVENT      (4u << 20)   /* one upstream SSE event */
#define OUT_HIGH_WATERMARK (256u << 10) /* client output above this pauses the upstream */

/* Answers with an OpenAI-shaped error before anything else was sent. */
static void fail_before_reply(struct request *r, int status, const char *type, const char *code,
                              const char *fmt, const char *detail)
{
    request_fail(r, status, type, code, NULL, fmt, detail ? detail : "");
}

/* ---------------------------------------------------------------- SSE relay */

static void on_client_drained(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    struct request *r = arg;
    if (r->paused && r->xfer) {
        r->paused = false;
        upstream_resume(r->xfer);
    }
}

static void start_stream_reply(struct request *r)
{
    struct evhttp_request *req = r->req;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    server_common_headers(req, r->id, r->w->draining);
    evhttp_remove_header(h, "Content-Type");
    evhttp_add_header(h, "Content-Type", "text/event-stream; charset=utf-8");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_add_header(h, "X-Accel-Buffering", "no");
    evhttp_send_reply_start(req, 200, "OK");
    r->state = RS_STREAMING;
    r->status = 200;
    /* evhttp's one timeout would also cut a stream whose client is silent
     * (libevent #715): no read timeout from here, only a write timeout. */
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (evcon) {
        struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
        struct timeval wt = {.tv_sec = r->cfg->write_timeout_ms / 1000,
                             .tv_usec = (r->cfg->write_timeout_ms % 1000) * 1000};
        bufferevent_set_timeouts(bev, NULL, &wt);
    }
}

/* Sends pending frames; returns 1 when the client's output is above the high
 * watermark (the caller pauses the upstream). */
static int flush_frames(struct request *r)
{
    size_t n = evbuffer_get_length(r->frame);
    if (n == 0) return 0;
    if (r->state != RS_STREAMING) start_stream_reply(r);
    r->bytes_out += n;
    evhttp_send_reply_chunk_with_cb(r->req, r->frame, on_client_drained, r);
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
    if (!evcon) return 0;
    struct evbuffer *out = bufferevent_get_output(evhttp_connection_get_bufferevent(evcon));
    return evbuffer_get_length(out) > OUT_HIGH_WATERMARK;
}

static int on_sse_event(void *ud, const struct sse_event *ev)
{
    struct request *r = ud;
    if (r->saw_done) return 0; /* nothing after [DONE] */
    if (sse_is_done(ev)) {
        r->saw_done = true;
    } else {
        /* A chunk the client's SDK could not parse ends the stream as an error. */
        cJSON *doc = cJSON_ParseWithLength(ev->data, ev->data_len);
        bool ok = cJSON_IsObject(doc);
        /* Metering: usage and content chunks; the usage-only chunk is dropped
         * when only the gateway asked for it (gateway/quota.c). */
        bool drop = ok && quota_usage_from_chunk(r, doc);
        cJSON_Delete(doc);
        if (!ok) {
            r->error = "upstream_malformed";
            return 1;
        }
        if (drop) return 0;
    }
    if (ev->event_len && !(ev->event_len == 7 && memcmp(ev->event, "message", 7) == 0)) {
        evbuffer_add(r->frame, "event: ", 7);
        evbuffer_add(r->frame, ev->event, ev->event_len);
        evbuffer_add(r->frame, "\n", 1);
    }
    /* A multi-line data field goes out as several data: lines. */
    const char *p = ev->data, *end = ev->data + ev->data_len;
    do {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        evbuffer_add(r->frame, "data: ", 6);
        evbuffer_add(r->frame, p, (size_t)(stop - p));
        evbuffer_add(r->frame, "\n", 1);
        p = nl ? nl + 1 : end;
    } while (p < end);
    evbuffer_add(r->frame, "\n", 1);
    return 0;
}

static void stream_error_event(struct request *r, const char *type, const char *code,
                               const char *msg)
{
    struct oai_error e;
    char json[512];
    oai_error_set(&e, 502, type, code, NULL, "%s", msg);
    int n = oai_error_render(&e, json, sizeof json);
    if (n > 0) {
        evbuffer_add(r->frame, "event: error\ndata: ", 19);
        evbuffer_add(r->frame, json, (size_t)n);
        evbuffer_add(r->frame, "\n\n", 2);
    }
    flush_frames(r);
}

/* ---------------------------------------------------------------- upstream callbacks */

static int on_up_head(void *ud, struct upstream_xfer *x, long status)
{
    struct request *r = ud;
    r->up_status = status;
    const char *ct = upstream_header(x, "content-type");
    r->up_sse =
        status == 200 && r->oai.stream && ct && strncasecmp(ct, "text/event-stream", 17) == 0;
    const char *ra = upstream_header(x, "retry-after");
    if (ra) util_strlcpy(r->retry_after, ra, sizeof r->retry_after);
    return 0;
}

static enum upstream_data_rc on_up_data(void *ud, const char *data, size_t len)
{
    struct request *r = ud;
    if (!r->up_sse) {
        if (evbuffer_get_length(r->body) + len > MAX_UPSTREAM_BODY) {
            r->error = "upstream_too_large";
            return UPSTREAM_ABORT;
        }
        evbuffer_add(r->body, data, len);
        return UPSTREAM_CONTINUE;
    }
    int rc = sse_parser_feed(&r->sse, data, len);
    if (rc != 0) {
        if (rc < 0) r->error = "upstream_bad_sse";
        flush_frames(r); /* the events before the bad one */
        return UPSTREAM_ABORT;
    }
    if (flush_frames(r)) {
        r->paused = true;
        return UPSTREAM_PAUSE;
    }
    return UPSTREAM_CONTINUE;
}

static bool is_timeout(enum upstream_result res)
{
    return res == UPSTREAM_ERR_TIMEOUT_CONNECT || res == UPSTREAM_ERR_TIMEOUT_FIRST_BYTE ||
           res == UPSTREAM_ERR_TIMEOUT_IDLE || res == UPSTREAM_ERR_TIMEOUT_TOTAL;
}

static void finish_stream(struct request *r, enum upstream_result res, const char *detail)
{
    bool truncated = sse_parser_finish(&r->sse) != 0;
    if (res == UPSTREAM_OK && r->saw_done && !truncated) {
        flush_frames(r);
        evhttp_send_reply_end(r->req);
        request_end(r);
        return;
    }
    const char *code, *msg;
    if (is_timeout(res)) {
        code = "upstream_timeout";
        msg = "The upstream provider timed out while streaming the response.";
    } else if (res == UPSTREAM_OK) {
        code = "upstream_incomplete";
        msg = "The upstream provider ended the stream without [DONE].";
    } else if (r->error && strcmp(r->error, "upstream_malformed") == 0) {
        code = r->error;
        msg = "The upstream provider sent a malformed stream event.";
    } else {
        code = r->error ? r->error : "upstream_error";
        msg = "The upstream provider's stream broke off.";
    }
    if (r->state != RS_STREAMING) {
        /* Nothing reached the client yet: still a clean HTTP error. */
        fail_before_reply(r, is_timeout(res) ? 504 : 502,
                          is_timeout(res) ? "timeout" : "upstream_error", code, "%s", msg);
        return;
    }
    log_info("request", "%s: stream from %s ended with %s (%s)", r->id, r->target.provider->name,
             code, detail);
    r->error = code;
    r->status = 200;
    stream_error_event(r, is_timeout(res) ? "timeout" : "upstream_error", code, msg);
    evhttp_send_reply_end(r->req);
    request_end(r);
}

/* A buffered upstream answer becomes the client's answer. */
static void finish_buffered(struct request *r)
{
    size_t len = evbuffer_get_length(r->body);
    const char *body = (const char *)evbuffer_pullup(r->body, -1);
    cJSON *doc = len ? cJSON_ParseWithLength(body, len) : NULL;
    bool is_error_shape = doc && cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(doc, "error"));
    bool ok_json = doc && cJSON_IsObject(doc);
    if (ok_json && r->up_status == 200) quota_usage_from_body(r, doc);
    cJSON_Delete(doc);

    if (r->up_status == 200) {
        if (r->oai.stream) {
            fail_before_reply(
                r, 502, "upstream_error", "upstream_not_streaming", "%s",
                "The upstream provider answered a streaming request without a stream.");
            return;
        }
        if (!ok_json) {
            fail_before_reply(r, 502, "upstream_error", "upstream_malformed", "%s",
                              "The upstream provider returned a malformed response.");
            return;
        }
    } else if (r->up_status >= 500 || r->up_status < 400 || !is_error_shape) {
        char msg[128];
        snprintf(msg, sizeof msg, "The upstream provider returned HTTP %ld.", r->up_status);
        fail_before_reply(r, 502, "upstream_error", "upstream_error", "%s", msg);
        return;
    }
    /* 200 JSON, or an OpenAI-shaped 4xx (429 included) the client should see as is. */
    int status = (int)r->up_status;
    server_common_headers(r->req, r->id, r->w->draining);
    if (status == 429 && r->retry_after[0])
        evhttp_add_header(evhttp_request_get_output_headers(r->req), "Retry-After", r->retry_after);
    r->status = status;
    if (status != 200) r->error = "upstream_status";
    r->bytes_out = len;
    evhttp_send_reply(r->req, status, server_reason_phrase(status), r->body);
    request_end(r);
}

static void on_up_done(void *ud, enum upstream_result res, const char *detail)
{
    struct request *r = ud;
    r->xfer = NULL;
    r->t_up_end_us = util_now_us();
    if (r->up_sse) {
        finish_stream(r, res, detail);
        return;
    }
    if (res != UPSTREAM_OK) {
        log_info("request", "%s: upstream %s failed: %s (%s)", r->id, r->target.provider->name,
                 upstream_result_str(res), detail);
        if (is_timeout(res))
            fail_before_reply(r, 504, "timeout", "upstream_timeout",
                              "The upstream provider timed out (%s).", upstream_result_str(res));
        else if (r->error && strcmp(r->error, "upstream_too_large") == 0)
            fail_before_reply(r, 502, "upstream_error", "upstream_too_large", "%s",
                              "The upstream provider's response was too large.");
        else
            fail_before_reply(r, 502, "upstream_error",
                              res == UPSTREAM_ERR_CONNECT ? "upstream_unreachable"
                                                          : "upstream_error",
                              "The upstream provider could not be reached or failed (%s).",
                              upstream_result_str(res));
        return;
    }
    finish_buffered(r);
}

static const struct upstream_callbacks up_callbacks = {
    .on_head = on_up_head,
    .on_data = on_up_data,
    .on_done = on_up_done,
};

static const char *endpoint_suffix(enum oai_endpoint ep)
{
    switch (ep) {
    case OAI_CHAT: return "/chat/completions";
    case OAI_COMPLETIONS: return "/completions";
    case OAI_EMBEDDINGS: return "/embeddings";
    }
    return "";
}

#define MAX_FORWARDED 32

/* Whether header name is in the provider's forward_headers list ("a, b-*"). */
static bool forward_match(const char *list, const char *name)
{
    size_t nlen = strlen(name);
    for (const char *s = list; *s;) {
        while (*s == ' ' || *s == ',')
            s++;
        const char *start = s;
        while (*s && *s != ',' && *s != ' ')
            s++;
        size_t n = (size_t)(s - start);
        if (n == 0) break;
        if (start[n - 1] == '*' ? nlen >= n - 1 && strncasecmp(start, name, n - 1) == 0
                                : nlen == n && strncasecmp(start, name, n) == 0)
            return true;
    }
    return false;
}

/* dispatch: render the upstream body and start the transfer. */
enum stage_rc relay_dispatch(struct request *r)
{
    const struct provider_conf *p = r->target.provider;
    r->up_body = oai_request_render(&r->oai, r->target.upstream_model, &r->up_body_len);
    char url[2048];
    int n = snprintf(url, sizeof url, "%s%s", p->base_url, endpoint_suffix(r->oai.endpoint));
    if (!r->up_body || n <= 0 || (size_t)n >= sizeof url) {
        return request_fail(r, 500, "server_error", "internal_error", NULL, "%s",
                            "The gateway could not build the upstream request.");
    }
    char auth[600], rid[96];
    const char *headers[5 + MAX_FORWARDED];
    char *fwd[MAX_FORWARDED];
    size_t nh = 0, nfwd = 0;
    headers[nh++] = "Content-Type: application/json";
    headers[nh++] = r->oai.stream ? "Accept: text/event-stream" : "Accept: application/json";
    headers[nh++] = "User-Agent: llmgate/" PACKAGE_VERSION;
    snprintf(rid, sizeof rid, "x-request-id: %s", r->id);
    headers[nh++] = rid;
    if (p->api_key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", p->api_key);
        headers[nh++] = auth;
    }
    if (p->forward_headers) {
        struct evkeyval *kv;
        TAILQ_FOREACH(kv, evhttp_request_get_input_headers(r->req), next)
        {
            if (nfwd == MAX_FORWARDED || !forward_match(p->forward_headers, kv->key)) continue;
            size_t need = strlen(kv->key) + strlen(kv->value) + 3;
            if (!(fwd[nfwd] = malloc(need))) break;
            snprintf(fwd[nfwd], need, "%s: %s", kv->key, kv->value);
            headers[nh++] = fwd[nfwd++];
        }
    }
    struct upstream_request ureq = {
        .url = url,
        .body = r->up_body,
        .body_len = r->up_body_len,
        .headers = headers,
        .n_headers = nh,
        .unix_socket = p->unix_socket, /* local providers: the engine's socket */
        .connect_ms = p->connect_timeout_ms,
        .first_byte_ms = p->first_byte_timeout_ms,
        .idle_ms = p->idle_timeout_ms,
        .total_ms = p->total_timeout_ms,
    };
    r->t_up_us = util_now_us();
    r->xfer = upstream_start(r->w->up, &ureq, &up_callbacks, r);
    if (p->api_key) memset(auth, 0, sizeof auth);
    for (size_t i = 0; i < nfwd; i++)
        free(fwd[i]);
    if (!r->xfer) {
        return request_fail(r, 500, "server_error", "internal_error", NULL, "%s",
                            "The gateway could not start the upstream request.");
    }
    return STAGE_ASYNC;
}

/* ---------------------------------------------------------------- lifecycle */

int relay_init(struct request *r)
{
    r->state = RS_UPSTREAM;
    r->body = evbuffer_new();
    r->frame = evbuffer_new();
    sse_parser_init(&r->sse, MAX_SSE_EVENT, on_sse_event, r);
    return r->body && r->frame ? 0 : -1;
}

void relay_free(struct request *r)
{
    relay_cancel(r);
    sse_parser_free(&r->sse);
    if (r->body) evbuffer_free(r->body);
    if (r->frame) evbuffer_free(r->frame);
    free(r->up_body);
    r->body = r->frame = NULL;
    r->up_body = NULL;
}

void relay_cancel(struct request *r)
{
    if (!r->xfer) return;
    upstream_cancel(r->xfer);
    r->xfer = NULL;
    r->t_up_end_us = util_now_us();
}

bool relay_started(const struct request *r)
{
    return r->state == RS_STREAMING;
}
