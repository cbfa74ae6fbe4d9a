/* The request pipeline: one struct request per client request, carried through
 * an ordered list of stages (authenticate, parse, route, ..., dispatch). Each
 * stage continues, answers the client, or starts asynchronous work and resumes
 * the pipeline when it completes. A request lives and dies on its worker's
 * thread. */
#ifndef LLMGATE_GATEWAY_REQUEST_H
#define LLMGATE_GATEWAY_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/sse.h"
#include "gateway/openai.h"
#include "gateway/server.h"
#include "routing/adapter.h"
#include "routing/router.h"

struct evhttp_request;
struct evbuffer;
struct upstream_xfer;
struct adapter;
struct event;

/* What a stage did. */
enum stage_rc {
    STAGE_NEXT,  /* done; run the next stage now */
    STAGE_ASYNC, /* work in flight; its completion calls request_resume() or ends the request */
    STAGE_DONE,  /* the request was answered (request_fail / a reply + request_end) */
};

/* Which pipeline a request runs. */
enum request_kind { REQ_CHAT, REQ_COMPLETIONS, REQ_EMBEDDINGS, REQ_MODELS, REQ_ADMIN };

/* Relay states of a dispatched request:
 *   UPSTREAM  - transfer running, nothing sent to the client (a failure can still
 *               become a clean HTTP error)
 *   STREAMING - SSE reply head sent; events are relayed as they arrive; a failure
 *               ends the stream with an error event */
enum relay_state { RS_UPSTREAM, RS_STREAMING };

struct request;
struct key_record;
struct cachestage_req;
typedef enum stage_rc (*request_stage_fn)(struct request *r);

/* A request's quota reservation (gateway/quota.c). */
struct request_quota {
    bool redis;        /* reserved on Redis: settle charges and refunds */
    bool local;        /* admitted by the local fail-open limiter instead */
    bool have_headers; /* the x-ratelimit-* values below are known */
    bool rechecked;    /* a refusal was re-checked after this worker's queued settles */
    bool reserving;    /* the reserve script's reply is still to come */
    bool settle_due;   /* ... and the request ended meanwhile: on_reserve settles it */
    uint64_t sent_us;  /* when the reserve script went out (util_now_us) */
    long tokens;       /* reserved: estimated prompt + completion cap */
    long prompt_est;   /* prompt tokens reserved: the engine's exact count for a local target with
                        * a loaded tokenizer, else the estimate */
    long day, month;   /* calendar windows the reservation was taken in */
    long local_day, local_month; /* ... and those a local admission (fail_open) charged */
    unsigned local_gen[3][2];    /* ... and their generations, per scope (QUOTA_MAX_SCOPES) */
    long req_limit, req_remaining, req_reset_ms, tok_limit, tok_remaining, tok_reset_ms;
    char member[40]; /* unique per request: concurrency slot and usage dedup id */
};

/* What the upstream generated, for settle and the usage record. */
struct request_usage {
    bool reported; /* the upstream's usage object was seen */
    bool strip;    /* the client did not ask for usage: drop the usage-only chunk */
    long prompt, completion, cached;
    long chunks;        /* content chunks relayed (or, once orphan, parsed and dropped) */
    bool from_cache;    /* answered by the response cache: no upstream cost */
    bool charge_cached; /* ... and the route charges it against token quotas */
};

struct request {
    struct worker *w;
    struct conn *conn;
    struct evhttp_request *req;
    struct config *cfg; /* snapshot this request started with (one reference) */
    enum request_kind kind;
    char id[72];
    const char *method, *path;
    uint64_t t0_us;
    size_t bytes_in, bytes_out;

    /* pipeline */
    const request_stage_fn *stages;
    int n_stages, stage;
    int refs;      /* the pipeline's own + one per async operation in flight */
    bool finished; /* answered and logged; async holders only release */
    bool watching; /* the connection's close watch is armed */

    /* parse / route */
    struct oai_request oai;
    struct route_plan plan;        /* targets in the order they may be tried */
    struct route_target target;    /* the one being (or last) tried: plan.c[attempt_idx] */
    unsigned attempt_idx;          /* index in plan of the current target */
    unsigned attempts;             /* upstream attempts so far (x-llmgate-attempts) */
    unsigned unsupported;          /* targets skipped: their adapter cannot serve the request */
    unsigned tries_on_target;      /* attempts on the current target */
    bool probe;                    /* the attempt holds a half-open breaker probe slot */
    int last_failure;              /* enum policy_failure of the last failed attempt, -1 none */
    uint64_t cool_left_ms;         /* shortest cooldown among targets skipped for a 429 */
    struct event *retry_timer;     /* backoff / Retry-After before the next attempt */
    struct event *ttft_timer;      /* first-token deadline of a stream */
    const struct adapter *adapter; /* the current target's wire format */
    void *adapter_state;           /* its stream translation state */
    bool adapter_failed;           /* a translated event was malformed */
    int stream_failure;            /* enum policy_failure of a broken stream */
    bool retry_same;               /* the next attempt is the current target again */
    int last_res;                  /* enum upstream_result of the last failed attempt */
    const char *last_detail;       /* and its static detail */
    /* the request field the last unsupported target could not express ("" unknown) */
    char unsupported_field[ADAPTER_FIELD_MAX];

    /* dispatch and relay (gateway/relay.c) */
    char *up_body;
    size_t up_body_len;
    struct upstream_xfer *xfer;
    enum relay_state state;
    long up_status;
    bool up_sse;   /* upstream answered 200 text/event-stream */
    bool saw_done; /* upstream sent data: [DONE] */
    bool paused;   /* upstream paused for a slow client */
    char retry_after[32];
    struct sse_parser sse;
    struct evbuffer *body;  /* buffered upstream body */
    struct evbuffer *frame; /* SSE frames waiting to go to the client */
    uint64_t t_up_us, t_up_end_us;

    /* tenant key, quota and metering (keys.c, quota.c) */
    struct key_record *key; /* tenant key (one reference); NULL for static keys or auth off */
    struct request_quota quota;
    struct request_usage usage;

    /* response cache (gateway/cachestage.c); NULL when the cache was not consulted */
    struct cachestage_req *rc;

    /* the client left a metered request (buffered or streamed): the upstream runs
     * on only to meter what it generated (quota.abandoned = finish); r->req is gone */
    bool orphan;

    /* outcome, for the access log */
    int status;
    const char *error; /* short code */
};

/* Creates the request for an endpoint and runs its pipeline; always answers the
 * client, now or later. */
void request_start(struct worker *w, struct conn *c, struct evhttp_request *req,
                   enum request_kind kind, const char *request_id, const char *method,
                   const char *path, uint64_t t0_us);
/* Frees the requests a worker keeps for reuse (at worker exit). */
void request_spares_free(struct worker *w);
/* Appends the request duration histograms (Prometheus text) to out. */
void request_metrics_write(struct evbuffer *out);
/* Continues the pipeline after a stage that returned STAGE_ASYNC. */
void request_resume(struct request *r);
/* Answers with an OpenAI-shaped error (nothing may have been sent yet) and ends
 * the request. Always returns STAGE_DONE so stages can `return request_fail(...)`. */
enum stage_rc request_fail(struct request *r, int status, const char *type, const char *code,
                           const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Logs, settles and releases the pipeline's reference. The evhttp request must
 * have been completed (or handed back to evhttp) by the caller. */
void request_end(struct request *r);
/* An async operation keeps r alive across its callback; in the callback, check
 * r->finished first and release either way. */
void request_hold(struct request *r);
void request_release(struct request *r);

/* How the client went away, which decides who completes the evhttp request. */
enum client_gone {
    GONE_PEER_CLOSED, /* our EV_CLOSED watch fired; evhttp still holds the request */
    GONE_DETACHED,    /* evhttp dropped the connection and detached the request: ours to complete */
    GONE_EVHTTP_FREES /* the connection is being freed with the request on it (shutdown) */
};
/* The client went away: stop all work for r and finish. */
void request_client_gone(struct request *r, enum client_gone how);
/* The tenant of r's API key, or NULL (static keys, auth off). */
const char *request_tenant(const struct request *r);
/* The evhttp request a request answers. */
struct evhttp_request *request_evreq(const struct request *r);
/* Stops watching r's connection and forgets it, before r's evhttp request is
 * completed: completing it may free the connection at once, and its close
 * callback must not find r. */
void request_detach(struct request *r);

#endif
