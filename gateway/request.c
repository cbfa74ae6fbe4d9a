/* The request pipeline: creation, the ordered stages of each endpoint, async
 * resumption, error replies, the client going away, and the end of a request
 * (settle + access log + free). */
#include "gateway/request.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "gateway/accesslog.h"
#include "gateway/admin.h"
#include "gateway/cachestage.h"
#include "gateway/promhist.h"
#include "gateway/keys.h"
#include "gateway/quota.h"
#include "gateway/relay.h"
#include "gateway/server.h"
#include "routing/upstream.h"

/* ---------------------------------------------------------------- stages */

/* authenticate (gateway/keys.c): before parsing, so a bad key never costs a JSON
 * parse; the static config list first, then tenant keys (cache, then Redis). */

/* parse: the body into a validated struct oai_request (400 naming the field). */
static enum stage_rc stage_parse(struct request *r)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    size_t len = evbuffer_get_length(in);
    const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
    enum oai_endpoint ep = r->kind == REQ_CHAT          ? OAI_CHAT
                           : r->kind == REQ_COMPLETIONS ? OAI_COMPLETIONS
                                                        : OAI_EMBEDDINGS;
    struct oai_error err;
    r->bytes_in = len;
    if (oai_request_parse(ep, body, len, &r->oai, &err) == 0) return STAGE_NEXT;
    r->status = err.status;
    r->error = "invalid_request";
    server_reply_error(r->req, &err, r->id, r->w->draining);
    request_end(r);
    return STAGE_DONE;
}

/* The tenant routes match on; NULL until the request has a tenant key. */
const char *request_tenant(const struct request *r)
{
    return r->key ? r->key->tenant : NULL;
}

/* route: the snapshot's target for the asked model; 404 when there is none. */
static const char *route_header(void *ud, const char *name)
{
    return evhttp_find_header(evhttp_request_get_input_headers(ud), name);
}

static enum stage_rc stage_route(struct request *r)
{
    struct route_query q = {
        .model = r->oai.model, .tenant = request_tenant(r), .header = route_header, .ud = r->req};
    if (router_plan(r->cfg, &q, router_random(), &r->plan) == 0) {
        r->target = r->plan.c[0];
        return STAGE_NEXT;
    }
    return request_fail(r, 404, "invalid_request_error", "model_not_found", "model",
                        "The model `%.200s` does not exist or you do not have access to it.",
                        r->oai.model);
}

/* GET /v1/models: the configured public model names. */
static enum stage_rc stage_models_reply(struct request *r)
{
    struct evbuffer *b = evbuffer_new();
    if (!b)
        return request_fail(r, 503, "server_error", "overloaded", NULL, "%s",
                            "The gateway is out of memory.");
    evbuffer_add_printf(b, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < r->cfg->n_models; i++) {
        const struct model_conf *m = &r->cfg->models[i];
        /* Model and provider names come from the validated config (no quotes there). */
        evbuffer_add_printf(
            b, "%s{\"id\":\"%s\",\"object\":\"model\",\"created\":0,\"owned_by\":\"%s\"}",
            i ? "," : "", m->name, m->provider_name);
    }
    evbuffer_add_printf(b, "]}");
    server_common_headers(r->req, r->id, r->w->draining);
    r->status = 200;
    r->bytes_out = evbuffer_get_length(b);
    server_send_reply(r->req, 200, "OK", b);
    evbuffer_free(b);
    request_end(r);
    return STAGE_DONE;
}

/* The pipelines, in the order of ARCHITECTURE.md's request path. */
static const request_stage_fn proxy_stages[] = {
    keys_authenticate, stage_parse,    keys_authorize_model,
    stage_route,       quota_reserve, /* before the cache: a hit still counts as a request */
    cachestage_lookup, relay_dispatch,
};
static const request_stage_fn models_stages[] = {
    keys_authenticate,
    stage_models_reply,
};
static const request_stage_fn admin_stages[] = {
    admin_handle,
};

/* ---------------------------------------------------------------- pipeline */

/* Runs r's stages from the current one. r is held throughout: a stage's callback
 * may run before the stage returns (hiredis reports a failed write from
 * redis_flush at once, with every pending reply NULL) and end r, even resume it. */
static void run(struct request *r)
{
    request_hold(r);
    while (!r->finished && r->stage < r->n_stages) {
        enum stage_rc rc = r->stages[r->stage](r);
        if (rc != STAGE_NEXT) {
            /* Waiting on something: watch for the client leaving meanwhile. */
            if (rc == STAGE_ASYNC && !r->finished && !r->watching && r->conn) {
                conn_watch(r->conn, r);
                r->watching = true;
            }
            break;
        }
        r->stage++;
    }
    request_release(r);
}

void request_resume(struct request *r)
{
    r->stage++;
    run(r);
}

/* A worker keeps a few freed requests: a struct request is over 2 KiB, and
 * malloc consolidates its fast bins on every allocation that large. */
#define SPARE_REQUESTS 8

static struct request *request_alloc(struct worker *w)
{
    struct request *r = w->spare_reqs;
    if (!r) return calloc(1, sizeof *r);
    w->spare_reqs = *(struct request **)r;
    w->n_spare_reqs--;
    memset(r, 0, sizeof *r);
    return r;
}

void request_spares_free(struct worker *w)
{
    while (w->spare_reqs) {
        struct request *r = w->spare_reqs;
        w->spare_reqs = *(struct request **)r;
        free(r);
    }
    w->n_spare_reqs = 0;
}

void request_start(struct worker *w, struct conn *c, struct evhttp_request *req,
                   enum request_kind kind, const char *request_id, const char *method,
                   const char *path, uint64_t t0_us)
{
    struct request *r = request_alloc(w);
    if (!r) {
        struct oai_error e;
        oai_error_set(&e, 503, "server_error", "overloaded", NULL, "%s",
                      "The gateway is out of memory.");
        server_reply_error(req, &e, request_id, true);
        return;
    }
    r->w = w;
    r->conn = c;
    r->req = req;
    r->cfg = config_ref(w->cfg);
    r->kind = kind;
    util_strlcpy(r->id, request_id, sizeof r->id);
    r->method = method;
    r->path = path;
    r->t0_us = t0_us;
    r->refs = 1;
    w->active++;
    if (c) c->active = r;
    if (kind == REQ_MODELS) {
        r->stages = models_stages;
        r->n_stages = (int)ARRAY_LEN(models_stages);
    } else if (kind == REQ_ADMIN) {
        r->stages = admin_stages;
        r->n_stages = (int)ARRAY_LEN(admin_stages);
    } else {
        r->stages = proxy_stages;
        r->n_stages = (int)ARRAY_LEN(proxy_stages);
    }
    if (relay_init(r) != 0) {
        request_fail(r, 503, "server_error", "overloaded", NULL, "%s",
                     "The gateway is out of memory.");
        return;
    }
    run(r);
}

enum stage_rc request_fail(struct request *r, int status, const char *type, const char *code,
                           const char *param, const char *fmt, ...)
{
    struct oai_error e;
    char msg[sizeof e.message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    oai_error_set(&e, status, type, code, param, "%s", msg);
    r->status = status;
    r->error = code;
    server_reply_error(r->req, &e, r->id, r->w->draining);
    request_end(r);
    return STAGE_DONE;
}

/* ---------------------------------------------------------------- end */

static void request_free(struct request *r)
{
    relay_free(r);
    cachestage_request_free(r);
    keys_record_release(r->key);
    oai_request_free(&r->oai);
    config_unref(r->cfg);
    struct worker *w = r->w;
    if (w->n_spare_reqs < SPARE_REQUESTS) {
        *(struct request **)r = w->spare_reqs;
        w->spare_reqs = r;
        w->n_spare_reqs++;
    } else {
        free(r);
    }
}

void request_hold(struct request *r)
{
    r->refs++;
}

void request_release(struct request *r)
{
    if (--r->refs == 0) request_free(r);
}

/* Gateway time per request, by where its answer came from. */
static const double duration_le_s[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                       0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5,
                                       5,      10,      30,     60,    120};
enum answer_source { SRC_CACHE, SRC_UPSTREAM, SRC_GATEWAY, N_SOURCES };
static const char *const source_names[N_SOURCES] = {"cache", "upstream", "gateway"};
static struct promhist durations[N_SOURCES] = {
    PROMHIST_INIT(duration_le_s), PROMHIST_INIT(duration_le_s), PROMHIST_INIT(duration_le_s)};

void request_metrics_write(struct evbuffer *out)
{
    static const char *const name = "llmgate_request_duration_seconds";
    promhist_header(out, name,
                    "Gateway time of a request, from its arrival to its answer handed to the "
                    "socket (a stream: to its end), by source: the response cache, an upstream, "
                    "or the gateway itself (errors, 429s, model lists).");
    for (int i = 0; i < N_SOURCES; i++)
        promhist_write(out, name, "source", source_names[i], &durations[i]);
}

void request_end(struct request *r)
{
    if (r->finished) return;
    r->finished = true;
    struct worker *w = r->w;
    relay_cancel(r);
    cachestage_request_end(r); /* store the answer, hand it to identical waiters */
    quota_settle(r);           /* charge, refund, usage record */
    request_detach(r);
    uint64_t now = util_now_us();
    enum answer_source src = r->usage.from_cache ? SRC_CACHE
                             : r->t_up_us        ? SRC_UPSTREAM
                                                 : SRC_GATEWAY;
    promhist_observe(&durations[src], now - r->t0_us);
    struct accesslog_entry e = {
        .ts_ms = util_wall_ms(),
        .request_id = r->id,
        .method = r->method,
        .path = r->path,
        .status = r->status,
        .model = r->oai.model,
        .provider = r->target.provider ? r->target.provider->name : NULL,
        .stream = r->oai.stream,
        .bytes_in = r->bytes_in,
        .bytes_out = r->bytes_out,
        .total_ms = (double)(now - r->t0_us) / 1000.0,
        .upstream_ms = r->t_up_us
                           ? (double)((r->t_up_end_us ? r->t_up_end_us : now) - r->t_up_us) / 1000.0
                           : 0,
        .error = r->error,
    };
    accesslog_write(&e);
    r->req = NULL; /* completed or handed back to evhttp: never touched again */
    request_release(r);
    worker_request_done(w);
}

struct evhttp_request *request_evreq(const struct request *r)
{
    return r->req;
}

void request_detach(struct request *r)
{
    if (!r->conn) return;
    if (r->watching) conn_unwatch(r->conn);
    r->watching = false;
    r->conn->active = NULL;
    r->conn = NULL;
}

/* Whether r, whose client left, should keep its upstream exchange to meter
 * what the upstream generates: a tenant-key request with a transfer in flight
 * (buffered, or a stream before or after its first relayed byte: the upstream
 * reports usage in its last chunk, which a cancelled stream never sends), not
 * being torn down with its worker. */
static bool keep_for_metering(const struct request *r, enum client_gone how)
{
    return how != GONE_EVHTTP_FREES && r->key && r->xfer &&
           r->cfg->abandoned == QUOTA_ABANDONED_FINISH && !r->w->draining;
}

void request_client_gone(struct request *r, enum client_gone how)
{
    log_debug("request", "%s: client went away", r->id);
    bool keep = keep_for_metering(r, how);
    if (!keep) relay_cancel(r);
    r->error = "client_closed";
    r->status = 499; /* nginx's "client closed request", for the log */
    /* Completing the evhttp request below may free its connection at once (an
     * HTTP/1.0 stream with nothing left to write), running the close callback
     * inside the call: that callback must no longer find r. */
    request_detach(r);
    struct evhttp_request *req = r->req;
    r->req = NULL; /* completed below or handed back to evhttp: never touched again */
    if (how == GONE_PEER_CLOSED) {
        /* The socket is half-closed by the peer: complete the exchange so evhttp
         * writes, fails and frees the connection itself (never free it here). */
        if (relay_started(r)) {
            evhttp_send_reply_end(req);
        } else {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
            evhttp_send_reply(req, 499, "Client Closed Request", NULL);
        }
    } else if (how == GONE_DETACHED) {
        /* evhttp detached the request from its dead connection: it is ours to
         * complete exactly once, which frees it. */
        evhttp_send_reply_end(req);
    }
    if (!keep) {
        request_end(r);
        return;
    }
    /* The upstream's end ends it (relay.c finish_orphan): charged, recorded,
     * sent nowhere (a stream's events are parsed, then dropped). */
    r->orphan = true;
    cachestage_request_orphaned(r); /* stores nothing: its waiters need not wait */
    /* A stream paused for the slow client would wait for a drain that never
     * comes. Resuming may deliver buffered events at once: r is an orphan by now. */
    if (r->paused) {
        r->paused = false;
        upstream_resume(r->xfer);
    }
}
