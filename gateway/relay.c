/* Dispatch to the routed upstream and relay of its answer: buffered JSON passed
 * through after a sanity check, or SSE events re-framed as they arrive, with
 * backpressure toward the upstream and OpenAI-shaped failures. Dispatch is an
 * attempt loop over the route's targets: a failure the route's policy names,
 * before any byte reached the client, retries the target (backoff with jitter,
 * Retry-After, retry budget) or moves to the next one (breakers, cooldowns).
 * Provider adapters (routing/adapter.h) build each attempt's request and turn
 * foreign answers into OpenAI JSON and chunks. */
#define _GNU_SOURCE /* strptime, timegm */
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
#include <time.h>

#include "autoconf.h"
#include "common/jsonv.h"
#include "common/log.h"
#include "common/util.h"
#include "gateway/cachestage.h"
#include "gateway/quota.h"
#include "gateway/server.h"
#include "routing/adapter.h"
#include "routing/policy.h"
#include "routing/targets.h"
#include "routing/upstream.h"

#define MAX_UPSTREAM_BODY  (64u << 20)  /* buffered (non-streamed) upstream answers */
#define MAX_SSE_EVENT      (4u << 20)   /* one upstream SSE event */
#define OUT_HIGH_WATERMARK (256u << 10) /* client output above this pauses the upstream */

/* x-llmgate-provider/-model/-attempts: where the response was served (or last tried). */
static void route_headers(struct request *r)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    char n[16];
    if (r->attempts && r->target.provider) {
        evhttp_add_header(h, "x-llmgate-provider", r->target.provider->name);
        evhttp_add_header(h, "x-llmgate-model", r->target.upstream_model);
    }
    snprintf(n, sizeof n, "%u", r->attempts);
    evhttp_add_header(h, "x-llmgate-attempts", n);
}

/* Answers with an OpenAI-shaped error before anything else was sent. */
static void fail_before_reply(struct request *r, int status, const char *type, const char *code,
                              const char *fmt, const char *detail)
{
    route_headers(r);
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
    route_headers(r);
    server_stream_start(req, r->w, r->cfg->write_timeout_ms);
    r->state = RS_STREAMING;
    r->status = 200;
}

/* Completes the streamed reply. r is detached from its connection first: an
 * HTTP/1.0 reply with nothing left to write completes, and its connection is
 * freed, inside the call (server_end_reply), and the close callback must not
 * find r there. r->req is gone afterwards. */
static void end_stream_reply(struct request *r)
{
    struct evhttp_request *req = r->req;
    request_detach(r);
    r->req = NULL;
    server_end_reply(req);
}

/* Sends pending frames; returns 1 when the client's output is above the high
 * watermark (the caller pauses the upstream). */
static int flush_frames(struct request *r)
{
    size_t n = evbuffer_get_length(r->frame);
    if (n == 0) return 0;
    if (r->orphan) { /* the client left: events are metered (relay_event), sent nowhere */
        evbuffer_drain(r->frame, n);
        return 0;
    }
    if (r->state != RS_STREAMING) start_stream_reply(r);
    r->bytes_out += n;
    evhttp_send_reply_chunk_with_cb(r->req, r->frame, on_client_drained, r);
    server_write_now(r->req);
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
    if (!evcon) return 0;
    struct evbuffer *out = bufferevent_get_output(evhttp_connection_get_bufferevent(evcon));
    return evbuffer_get_length(out) > OUT_HIGH_WATERMARK;
}

/* Whether a chunk carries generated output: a non-empty "content" of a chat
 * delta or "text" of a completion (as quota_usage_from_chunk counts them), a
 * "reasoning_content" delta, or a fragment of tool call "arguments". Each is
 * a token or more the upstream generated, metered at one token per chunk when
 * its usage never comes. A scan, without building a tree: the chunk was
 * validated, so it cannot run off a string. */
static bool chunk_has_output(const char *d, size_t n)
{
    static const char *const names[] = {"\"content\"", "\"text\"", "\"reasoning_content\"",
                                        "\"arguments\""};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        size_t nl = strlen(names[k]);
        const char *p = memmem(d, n, names[k], nl);
        if (!p) continue;
        const char *end = d + n;
        p += nl;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
            p++;
        if (p >= end || *p != ':') continue;
        p++;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
            p++;
        if (p + 1 < end && p[0] == '"' && p[1] != '"') return true;
    }
    return false;
}

/* One OpenAI-shaped event (the upstream's, or an adapter's translation) toward the client. */
static int relay_event(struct request *r, const struct sse_event *ev)
{
    if (r->saw_done) return 0;                     /* nothing after [DONE] */
    if (r->ttft_timer) evtimer_del(r->ttft_timer); /* the first token arrived */
    if (sse_is_done(ev)) {
        r->saw_done = true;
    } else {
        /* A chunk the client's SDK could not parse ends the stream as an error.
         * Most chunks are plain content deltas: those are only validated (no
         * allocation) and counted; the tree is built when the usage chunk comes
         * or when the cache is assembling the answer. */
        /* Only a metered request (tenant key) reads usage and counts chunks. */
        bool full = cachestage_wants_chunks(r) ||
                    (r->key && memmem(ev->data, ev->data_len, "\"usage\"", 7));
        if (!full) {
            if (jsonv_check(ev->data, ev->data_len) != JSONV_OBJECT) {
                r->error = "upstream_malformed";
                return 1;
            }
            if (r->key && chunk_has_output(ev->data, ev->data_len)) r->usage.chunks++;
        } else {
            cJSON *doc = jsonv_parse(ev->data, ev->data_len);
            bool ok = cJSON_IsObject(doc);
            /* Metering: usage and content chunks; the usage-only chunk is dropped
             * when only the gateway asked for it (gateway/quota.c). */
            if (ok) cachestage_observe_chunk(r, doc); /* assembles a cacheable answer */
            long counted = r->usage.chunks;
            bool drop = ok && quota_usage_from_chunk(r, doc);
            /* quota counts text; reasoning and tool call fragments count as well. */
            if (ok && r->key && r->usage.chunks == counted &&
                chunk_has_output(ev->data, ev->data_len))
                r->usage.chunks++;
            cJSON_Delete(doc);
            if (!ok) {
                r->error = "upstream_malformed";
                return 1;
            }
            if (drop) return 0;
        }
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

static void emit_translated(void *ud, const char *data, size_t len)
{
    struct request *r = ud;
    struct sse_event ev = {.data = data, .data_len = len};
    if (relay_event(r, &ev) != 0) r->adapter_failed = true;
}

/* An error the upstream reported in its stream (ADAPTER_STREAM_ERROR), by policy
 * failure: its code, and the clean HTTP error a client gets when nothing reached it
 * yet (mid-stream, the error event carries the type, code and message). */
struct stream_report {
    int failure;
    int status;
    const char *type, *code, *msg;
};

static const struct stream_report stream_reports[] = {
    {PF_RATE_LIMITED, 429, "rate_limit_error", "upstream_rate_limited",
     "The upstream provider is rate limiting this request: it sent a rate limit error in its "
     "stream."},
    {PF_OVERLOADED, 503, "server_error", "upstream_overloaded",
     "The upstream provider is overloaded: it sent an overloaded error in its stream."},
    {PF_SERVER_ERROR, 502, "upstream_error", "upstream_error",
     "The upstream provider sent an error in its stream."}, /* any other: the last row */
};

#define N_STREAM_REPORTS (sizeof stream_reports / sizeof stream_reports[0])

static const struct stream_report *stream_report_for(int failure)
{
    for (size_t i = 0; i < N_STREAM_REPORTS - 1; i++)
        if (stream_reports[i].failure == failure) return &stream_reports[i];
    return &stream_reports[N_STREAM_REPORTS - 1];
}

/* The report that ended this attempt's stream (r->error is its code), or NULL. */
static const struct stream_report *stream_report_of(const struct request *r)
{
    if (!r->error || r->stream_failure < 0) return NULL;
    for (size_t i = 0; i < N_STREAM_REPORTS; i++)
        if (strcmp(r->error, stream_reports[i].code) == 0) return &stream_reports[i];
    return NULL;
}

static int on_sse_event(void *ud, const struct sse_event *ev)
{
    struct request *r = ud;
    if (!r->adapter_state) return relay_event(r, ev);
    int failure = PF_SERVER_ERROR;
    int rc = r->adapter->stream_event(r->adapter_state, ev->event, ev->event_len, ev->data,
                                      ev->data_len, emit_translated, r, &failure);
    if (rc == ADAPTER_STREAM_ERROR) { /* the upstream failed and said so: not malformed */
        r->stream_failure = failure;
        r->error = stream_report_for(failure)->code;
        return 1;
    }
    if (rc < 0 || r->adapter_failed) {
        r->stream_failure = failure;
        r->error = "upstream_malformed";
        return 1;
    }
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
        cachestage_stream_complete(r); /* whole: the cache may store it */
        end_stream_reply(r);
        request_end(r);
        return;
    }
    const struct stream_report *report = stream_report_of(r);
    const char *code, *msg;
    const char *type = is_timeout(res) ? "timeout" : "upstream_error";
    int status = is_timeout(res) ? 504 : 502;
    if (report) {
        code = report->code;
        msg = report->msg;
        type = report->type;
        status = report->status;
    } else if (is_timeout(res)) {
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
        if (status == 429 && r->retry_after[0])
            evhttp_add_header(evhttp_request_get_output_headers(r->req), "Retry-After",
                              r->retry_after);
        fail_before_reply(r, status, type, code, "%s", msg);
        return;
    }
    log_info("request", "%s: stream from %s ended with %s (%s)", r->id, r->target.provider->name,
             code, detail);
    r->error = code;
    r->status = 200;
    stream_error_event(r, type, code, msg);
    end_stream_reply(r);
    request_end(r);
}

/* A buffered upstream answer becomes the client's answer. */
static void finish_buffered(struct request *r)
{
    size_t len = evbuffer_get_length(r->body);
    const char *body = (const char *)evbuffer_pullup(r->body, -1);
    /* The tree is built only when something reads it: metering of a tenant key,
     * the cache storing the answer, or an error body to classify. */
    bool need_tree = r->up_status != 200 || r->key || cachestage_wants_chunks(r);
    bool is_error_shape = false, ok_json;
    if (need_tree) {
        cJSON *doc = jsonv_parse(body, len);
        is_error_shape = doc && cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(doc, "error"));
        ok_json = doc && cJSON_IsObject(doc);
        if (ok_json && r->up_status == 200) {
            quota_usage_from_body(r, doc);
            cachestage_observe_body(r, doc, body, len);
        }
        cJSON_Delete(doc);
    } else {
        ok_json = jsonv_check(body, len) == JSONV_OBJECT;
    }

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
    route_headers(r);
    server_common_headers(r->req, r->id, r->w->draining);
    if (status == 429 && r->retry_after[0])
        evhttp_add_header(evhttp_request_get_output_headers(r->req), "Retry-After", r->retry_after);
    r->status = status;
    if (status != 200) r->error = "upstream_status";
    r->bytes_out = len;
    server_send_reply(r->req, status, server_reason_phrase(status), r->body);
    request_end(r);
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

bool relay_forwards_header(const struct provider_conf *p, const char *name)
{
    return p->forward_headers && forward_match(p->forward_headers, name);
}

/* The old single-target ending of a failed or finished attempt: the client gets
 * the answer, or the failure as a clean HTTP error (502/504, 4xx passed through). */
static void reply_outcome(struct request *r, enum upstream_result res, const char *detail)
{
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

/* ---------------------------------------------------------------- attempts */

static enum policy_failure failure_of_result(enum upstream_result res)
{
    if (is_timeout(res)) return PF_TIMEOUT;
    if (res == UPSTREAM_ERR_CONNECT) return PF_CONNECT_ERROR;
    return PF_SERVER_ERROR;
}

/* A buffered answer in another dialect becomes OpenAI JSON in r->body; false when
 * it could not be translated. */
static bool translate_body(struct request *r)
{
    if (!r->adapter->finish) return true;
    size_t len = evbuffer_get_length(r->body), out_len = 0;
    struct adapter_call c = {.provider = r->target.provider,
                             .upstream_model = r->target.upstream_model};
    char *json = r->adapter->finish(&c, r->up_status, (const char *)evbuffer_pullup(r->body, -1),
                                    len, &out_len);
    if (!json) return false;
    evbuffer_drain(r->body, len);
    evbuffer_add(r->body, json, out_len);
    free(json);
    return true;
}

/* What went wrong with a finished attempt, as a policy failure; -1 when it
 * succeeded or the error is the client's own (never failed over). */
static int classify_outcome(struct request *r, enum upstream_result res)
{
    if (r->up_sse) {
        bool complete =
            res == UPSTREAM_OK && r->saw_done && !r->adapter_failed && r->stream_failure < 0;
        if (complete) return -1;
        if (r->stream_failure >= 0) return r->stream_failure;
        return res == UPSTREAM_OK ? PF_SERVER_ERROR : (int)failure_of_result(res);
    }
    if (res != UPSTREAM_OK) {
        if (res == UPSTREAM_ERR_INTERNAL ||
            (r->error && strcmp(r->error, "upstream_too_large") == 0))
            return -1;
        return failure_of_result(res);
    }
    size_t len = evbuffer_get_length(r->body);
    const char *body = (const char *)evbuffer_pullup(r->body, -1);
    if (r->up_status != 200) return r->adapter->classify(r->up_status, body, len);
    if (r->oai.stream) return PF_SERVER_ERROR; /* answered a stream request without one */
    if (!translate_body(r)) return PF_SERVER_ERROR;
    /* Validation only; finish_buffered builds the tree once, if it needs it. */
    bool ok = jsonv_check((const char *)evbuffer_pullup(r->body, -1),
                          evbuffer_get_length(r->body)) == JSONV_OBJECT;
    return ok ? -1 : PF_SERVER_ERROR;
}

/* Retry-After: delay-seconds or an HTTP-date; -1 when absent or unreadable. */
static long retry_after_ms(const char *v)
{
    if (!v || !*v) return -1;
    char *end;
    double secs = strtod(v, &end);
    if (end != v && *end == '\0')
        return secs < 0 ? -1 : secs > 86400 ? 86400000 : (long)(secs * 1000);
    struct tm tm = {0};
    if (!strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm)) return -1;
    long long delta = (long long)timegm(&tm) * 1000 - (long long)util_wall_ms();
    return delta < 0 ? 0 : delta > 86400000 ? 86400000 : (long)delta;
}

/* Full-jitter exponential backoff for the n-th retry (n >= 1). */
static unsigned backoff_ms(const struct policy_route *route, unsigned n)
{
    uint64_t cap = route->backoff_ms;
    for (unsigned i = 1; i < n && cap < route->backoff_max_ms; i++)
        cap *= 2;
    if (cap > route->backoff_max_ms) cap = route->backoff_max_ms;
    return (unsigned)(router_random() % (cap + 1));
}

static bool route_active(const struct request *r)
{
    return r->plan.route && !r->plan.route->implicit;
}

/* Moves to the first usable target at or after attempt_idx (skipping open
 * breakers and cooling targets); false when none is left. */
static bool pick_target(struct request *r)
{
    uint64_t now = util_now_ms();
    for (; r->attempt_idx < r->plan.n; r->attempt_idx++) {
        struct route_target *t = &r->plan.c[r->attempt_idx];
        bool same = r->retry_same;
        r->retry_same = false;
        if (t->state && route_active(r)) {
            uint64_t left = 0;
            /* A retry that waited out the Retry-After is not skipped for its own cooldown. */
            if (!same && targets_cooling(t->state, now, &left)) {
                atomic_fetch_add(&routing_metrics.skipped_cool, 1);
                if (!r->cool_left_ms || left < r->cool_left_ms) r->cool_left_ms = left;
                continue;
            }
            bool probe = false;
            if (!breaker_allow(&t->state->breaker, &r->plan.route->breaker, now, &probe)) {
                atomic_fetch_add(&routing_metrics.skipped_open, 1);
                continue;
            }
            r->probe = probe;
        }
        if (!same) r->tries_on_target = 0;
        r->target = *t;
        return true;
    }
    return false;
}

static void release_probe(struct request *r)
{
    if (r->probe && r->target.state) breaker_release_probe(&r->target.state->breaker);
    r->probe = false;
}

static void record_outcome(struct request *r, int pf)
{
    if (!r->target.state || !route_active(r)) return;
    if (pf == PF_RATE_LIMITED) {
        release_probe(r); /* a 429 says nothing of the target's health: cooldowns handle it */
        return;
    }
    bool ok = pf < 0 || pf == PF_CONTEXT_LENGTH;
    if (!ok) atomic_fetch_add(&r->target.state->failures, 1);
    breaker_record(&r->target.state->breaker, &r->plan.route->breaker, ok, r->probe, util_now_ms());
    r->probe = false;
}

/* Per-attempt state back to a fresh exchange. */
static void attempt_reset(struct request *r)
{
    free(r->up_body);
    r->up_body = NULL;
    r->up_status = 0;
    r->up_sse = r->saw_done = r->paused = r->adapter_failed = false;
    r->stream_failure = -1;
    r->retry_after[0] = '\0';
    r->error = NULL;
    evbuffer_drain(r->body, evbuffer_get_length(r->body));
    evbuffer_drain(r->frame, evbuffer_get_length(r->frame));
    sse_parser_reset(&r->sse);
    if (r->adapter_state) r->adapter->stream_free(r->adapter_state);
    r->adapter_state = NULL;
}

static void on_up_done(void *ud, enum upstream_result res, const char *detail);
static void on_ttft(evutil_socket_t fd, short what, void *arg);
static void on_retry_timer(evutil_socket_t fd, short what, void *arg);

static const struct upstream_callbacks up_callbacks = {
    .on_head = on_up_head,
    .on_data = on_up_data,
    .on_done = on_up_done,
};

static unsigned pick_ms(unsigned route_ms, unsigned provider_ms)
{
    return route_ms ? route_ms : provider_ms;
}

static void arm_ms(struct event *ev, unsigned ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

/* Starts an attempt on the next usable target. Returns 1 when a transfer runs,
 * 0 when no target is left (nothing was changed but attempt_idx), -1 when the
 * request was answered (internal error). */
static int try_start(struct request *r)
{
    for (; pick_target(r); r->attempt_idx++) {
        const struct provider_conf *p = r->target.provider;
        const struct adapter *ad = adapter_for(p->kind);
        char *body = oai_request_render(&r->oai, r->target.upstream_model, NULL);
        if (!body) {
            release_probe(r);
            fail_before_reply(r, 500, "server_error", "internal_error", "%s",
                              "The gateway could not build the upstream request.");
            return -1;
        }
        struct adapter_call call = {
            .provider = p,
            .upstream_model = r->target.upstream_model,
            .endpoint = r->oai.endpoint == OAI_CHAT          ? ADAPTER_CHAT
                        : r->oai.endpoint == OAI_COMPLETIONS ? ADAPTER_COMPLETIONS
                                                             : ADAPTER_EMBEDDINGS,
            .stream = r->oai.stream,
            .body = body,
            .body_len = strlen(body),
        };
        struct adapter_out out;
        out.unsupported[0] = '\0';
        int rc = ad->build(&call, &out);
        if (rc != 0) {
            free(body);
            release_probe(r);
            if (rc == ADAPTER_UNSUPPORTED) { /* this provider cannot serve it */
                r->unsupported++;
                util_strlcpy(r->unsupported_field, out.unsupported, sizeof r->unsupported_field);
                continue;
            }
            fail_before_reply(r, 500, "server_error", "internal_error", "%s",
                              "The gateway could not build the upstream request.");
            return -1;
        }
        attempt_reset(r);
        r->adapter = ad;
        /* The stream state reads the OpenAI body (stream_options), not the translation. */
        if (ad->stream_new && r->oai.stream && !(r->adapter_state = ad->stream_new(&call))) {
            free(body);
            free(out.body);
            release_probe(r);
            fail_before_reply(r, 503, "server_error", "overloaded", "%s",
                              "The gateway is out of memory.");
            return -1;
        }
        if (out.body) {
            free(body);
            r->up_body = out.body;
            r->up_body_len = out.body_len;
        } else {
            r->up_body = body;
            r->up_body_len = call.body_len;
        }
        char rid[96];
        const char *headers[4 + ADAPTER_MAX_HEADERS + MAX_FORWARDED];
        char *fwd[MAX_FORWARDED];
        size_t nh = 0, nfwd = 0;
        headers[nh++] = "Content-Type: application/json";
        headers[nh++] = r->oai.stream ? "Accept: text/event-stream" : "Accept: application/json";
        headers[nh++] = "User-Agent: llmgate/" PACKAGE_VERSION;
        snprintf(rid, sizeof rid, "x-request-id: %s", r->id);
        headers[nh++] = rid;
        for (size_t i = 0; i < out.n_headers; i++)
            headers[nh++] = out.headers[i];
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
        const struct policy_route *route = route_active(r) ? r->plan.route : NULL;
        struct upstream_request ureq = {
            .url = out.url,
            .body = r->up_body,
            .body_len = r->up_body_len,
            .headers = headers,
            .n_headers = nh,
            .unix_socket = p->unix_socket, /* local providers: the engine's socket */
            .connect_ms = pick_ms(route ? route->connect_ms : 0, p->connect_timeout_ms),
            .first_byte_ms = pick_ms(route ? route->first_token_ms : 0, p->first_byte_timeout_ms),
            .idle_ms = pick_ms(route ? route->idle_ms : 0, p->idle_timeout_ms),
            .total_ms = pick_ms(route ? route->total_ms : 0, p->total_timeout_ms),
        };
        if (!r->t_up_us) r->t_up_us = util_now_us();
        r->xfer = upstream_start(r->w->up, &ureq, &up_callbacks, r);
        explicit_bzero(out.headers, sizeof out.headers);
        for (size_t i = 0; i < nfwd; i++)
            free(fwd[i]);
        if (!r->xfer) {
            release_probe(r);
            fail_before_reply(r, 500, "server_error", "internal_error", "%s",
                              "The gateway could not start the upstream request.");
            return -1;
        }
        r->attempts++;
        r->tries_on_target++;
        atomic_fetch_add(&routing_metrics.attempts, 1);
        if (r->target.state) {
            atomic_fetch_add(&r->target.state->attempts, 1);
            if (r->tries_on_target == 1 && route)
                budget_deposit(&r->target.state->ps->budget, route->budget_permille);
        }
        /* Streams: the first token must come within first_token_ms (the head may come
         * long before it); after that the idle timeout applies. */
        if (route && route->first_token_ms && r->oai.stream) {
            if (!r->ttft_timer) r->ttft_timer = evtimer_new(r->w->base, on_ttft, r);
            if (r->ttft_timer) arm_ms(r->ttft_timer, route->first_token_ms);
        }
        return 1;
    }
    return 0;
}

/* No target could be tried at all: every one is cooling down, its breaker is
 * open, or its provider cannot serve the request (its adapter cannot express
 * it). The last, for every target, is the client's error: nothing would change
 * on a retry. */
static void reply_no_target(struct request *r)
{
    if (r->plan.n && r->unsupported == r->plan.n) {
        const struct provider_conf *p = r->target.provider;
        const char *field = r->unsupported_field;
        char msg[384];
        if (r->oai.endpoint != OAI_CHAT)
            snprintf(msg, sizeof msg,
                     "The model `%.64s` is served by provider `%.64s` (%s), which does not "
                     "support this endpoint.",
                     r->oai.model, p->name, adapter_for(p->kind)->name);
        else if (field[0])
            snprintf(msg, sizeof msg,
                     "The model `%.64s` is served by provider `%.64s` (%s), which cannot express "
                     "`%s` of this request: it has no equivalent in that API.",
                     r->oai.model, p->name, adapter_for(p->kind)->name, field);
        else
            snprintf(msg, sizeof msg,
                     "The model `%.64s` is served by provider `%.64s` (%s), which cannot express "
                     "this request: one of its fields or values has no equivalent in that API.",
                     r->oai.model, p->name, adapter_for(p->kind)->name);
        route_headers(r);
        request_fail(r, 400, "invalid_request_error", "unsupported_by_provider",
                     r->oai.endpoint != OAI_CHAT ? "model"
                     : field[0]                  ? field
                                                 : NULL,
                     "%s", msg);
        return;
    }
    atomic_fetch_add(&routing_metrics.no_target, 1);
    if (r->cool_left_ms) {
        char ra[32];
        snprintf(ra, sizeof ra, "%llu", (unsigned long long)(r->cool_left_ms + 999) / 1000);
        evhttp_add_header(evhttp_request_get_output_headers(r->req), "Retry-After", ra);
        fail_before_reply(r, 429, "rate_limit_error", "rate_limit_exceeded", "%s",
                          "Every provider of this model is rate limited; retry after the "
                          "Retry-After delay.");
        return;
    }
    fail_before_reply(r, 503, "server_error", "no_target_available", "%s",
                      "No provider of this model is available right now (circuit open).");
}

/* A failure before anything reached the client: retry the target or move on, as the
 * route says. Returns true when it took the request over. */
static bool failover(struct request *r, int pf, enum upstream_result res, const char *detail)
{
    const struct policy_route *route = r->plan.route;
    r->last_failure = pf;
    r->last_res = res;
    r->last_detail = detail;
    if (!route_active(r) || !(route->fallback_on & PF_BIT(pf))) return false;
    long ra = pf == PF_RATE_LIMITED ? retry_after_ms(r->retry_after) : -1;
    uint64_t now = util_now_ms();
    if (ra > 0 && r->target.state) targets_cool_until(r->target.state, now + (uint64_t)ra);
    bool short_ra = ra >= 0 && (unsigned long)ra <= route->retry_after_max_ms;
    bool may_retry = r->tries_on_target <= route->retry_attempts && pf != PF_CONTEXT_LENGTH &&
                     (pf != PF_RATE_LIMITED || short_ra || ra < 0);
    if (may_retry && r->target.state && budget_withdraw(&r->target.state->ps->budget)) {
        unsigned delay = ra >= 0 ? (unsigned)ra : backoff_ms(route, r->tries_on_target);
        if (!r->retry_timer) r->retry_timer = evtimer_new(r->w->base, on_retry_timer, r);
        if (r->retry_timer) {
            log_info("request", "%s: %s from %s/%s, retrying in %u ms", r->id,
                     policy_failure_name(pf), r->target.provider->name, r->target.upstream_model,
                     delay);
            atomic_fetch_add(&routing_metrics.retries, 1);
            r->retry_same = true;
            arm_ms(r->retry_timer, delay);
            return true;
        }
    }
    if (r->attempt_idx + 1 >= r->plan.n) return false;
    unsigned at = r->attempt_idx;
    struct route_target failed = r->target;
    r->attempt_idx++;
    int rc = try_start(r);
    if (rc == 0) {
        r->attempt_idx = at;
        r->target = failed;
        return false;
    }
    if (rc > 0) {
        atomic_fetch_add(&routing_metrics.fallbacks, 1);
        log_info("request", "%s: %s from %s/%s, falling back to %s/%s", r->id,
                 policy_failure_name(pf), failed.provider->name, failed.upstream_model,
                 r->target.provider->name, r->target.upstream_model);
    }
    return true;
}

static void on_retry_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct request *r = arg;
    unsigned at = r->attempt_idx;
    struct route_target failed = r->target;
    if (try_start(r) == 0) {
        /* The target closed meanwhile and nothing else is left: the last failure stands. */
        r->attempt_idx = at;
        r->target = failed;
        if (!r->up_sse && r->last_res == UPSTREAM_OK && r->up_status != 200) translate_body(r);
        reply_outcome(r, (enum upstream_result)r->last_res, r->last_detail);
    }
}

/* The first token did not come in time: this attempt failed with a timeout. */
static void on_ttft(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct request *r = arg;
    if (!r->xfer || r->state == RS_STREAMING) return;
    /* We are in a libevent callback, where removing a curl handle is allowed. */
    upstream_cancel(r->xfer);
    r->xfer = NULL;
    r->up_sse = false; /* nothing relayed: report as a failed exchange */
    on_up_done(r, UPSTREAM_ERR_TIMEOUT_FIRST_BYTE, "no first token in time");
}

/* The end of a request whose client left (request_client_gone): the usage the
 * upstream reported is the charge (a stream's was read from its events as they
 * came; without it, quota_settle counts their content chunks). Nothing is sent,
 * retried or cached, whatever the outcome. */
static void finish_orphan(struct request *r, enum upstream_result res, int pf)
{
    if (!r->up_sse && res == UPSTREAM_OK && pf < 0 && r->up_status == 200) {
        size_t len = evbuffer_get_length(r->body);
        cJSON *doc = jsonv_parse((const char *)evbuffer_pullup(r->body, -1), len);
        if (cJSON_IsObject(doc)) quota_usage_from_body(r, doc);
        cJSON_Delete(doc);
    }
    /* What went wrong upstream after the client left is not the record's outcome. */
    r->status = 499;
    r->error = "client_closed";
    log_debug("request", "%s: metered the answer of a client that left (%s)", r->id,
              upstream_result_str(res));
    request_end(r);
}

static void on_up_done(void *ud, enum upstream_result res, const char *detail)
{
    struct request *r = ud;
    r->xfer = NULL;
    r->t_up_end_us = util_now_us();
    if (r->ttft_timer) evtimer_del(r->ttft_timer);
    int pf = classify_outcome(r, res);
    record_outcome(r, pf);
    if (r->orphan) {
        finish_orphan(r, res, pf);
        return;
    }
    if (pf >= 0 && r->state != RS_STREAMING && failover(r, pf, res, detail)) return;
    if (pf >= 0 && r->state == RS_STREAMING) atomic_fetch_add(&routing_metrics.stream_errors, 1);
    /* Foreign error bodies reach the client in OpenAI's shape. */
    if (!r->up_sse && res == UPSTREAM_OK && r->up_status != 200 && r->adapter->finish)
        translate_body(r);
    reply_outcome(r, res, detail);
}

/* dispatch: the first usable target of the plan. */
enum stage_rc relay_dispatch(struct request *r)
{
    atomic_fetch_add(&routing_metrics.requests, 1);
    int rc = try_start(r);
    if (rc > 0) return STAGE_ASYNC;
    if (rc == 0) reply_no_target(r);
    return STAGE_DONE;
}

/* ---------------------------------------------------------------- lifecycle */

int relay_init(struct request *r)
{
    r->state = RS_UPSTREAM;
    r->last_failure = -1;
    r->stream_failure = -1;
    r->adapter = &adapter_openai;
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
    if (r->retry_timer) event_free(r->retry_timer);
    if (r->ttft_timer) event_free(r->ttft_timer);
    if (r->adapter_state) r->adapter->stream_free(r->adapter_state);
    free(r->up_body);
    r->body = r->frame = NULL;
    r->retry_timer = r->ttft_timer = NULL;
    r->adapter_state = NULL;
    r->up_body = NULL;
}

void relay_cancel(struct request *r)
{
    if (r->retry_timer) evtimer_del(r->retry_timer);
    if (r->ttft_timer) evtimer_del(r->ttft_timer);
    release_probe(r);
    if (!r->xfer) return;
    upstream_cancel(r->xfer);
    r->xfer = NULL;
    r->t_up_end_us = util_now_us();
}

bool relay_started(const struct request *r)
{
    return r->state == RS_STREAMING;
}
