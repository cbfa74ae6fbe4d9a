/* Policy inspection and routing metrics for operators. */
#include "gateway/routing_admin.h"

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/server.h"
#include "routing/policy.h"
#include "routing/targets.h"

enum stage_rc routing_admin_policy(struct request *r)
{
    if (evhttp_request_get_command(r->req) != EVHTTP_REQ_GET &&
        evhttp_request_get_command(r->req) != EVHTTP_REQ_HEAD)
        return request_fail(r, 405, "invalid_request_error", "method_not_allowed", NULL, "%s",
                            "Use GET.");
    struct policy *p = r->cfg->policy;
    cJSON *doc = p ? policy_to_json(p) : cJSON_CreateObject();
    char err[1024];
    routing_get_reload_error(err, sizeof err);
    if (doc) {
        cJSON_AddStringToObject(doc, "config", r->cfg->path ? r->cfg->path : "");
        if (err[0])
            cJSON_AddStringToObject(doc, "last_reload_error", err);
        else
            cJSON_AddNullToObject(doc, "last_reload_error");
    }
    char *json = doc ? cJSON_PrintUnformatted(doc) : NULL;
    cJSON_Delete(doc);
    if (!json)
        return request_fail(r, 503, "server_error", "overloaded", NULL, "%s",
                            "The gateway is out of memory.");
    struct evbuffer *b = evbuffer_new();
    if (b) evbuffer_add(b, json, strlen(json));
    server_common_headers(r->req, r->id, r->w->draining);
    r->status = 200;
    r->bytes_out = strlen(json);
    server_send_reply(r->req, 200, "OK", b);
    if (b) evbuffer_free(b);
    free(json);
    request_end(r);
    return STAGE_DONE;
}

/* Label values are provider and model names from validated config and policy files:
 * no quotes, backslashes or newlines can appear in them. */
static void per_target(void *ud, const struct target_state *t)
{
    struct evbuffer *out = ud;
    const char *p = t->provider, *m = t->model;
    evbuffer_add_printf(
        out,
        "llmgate_target_attempts_total{provider=\"%s\",model=\"%s\"} %llu\n"
        "llmgate_target_failures_total{provider=\"%s\",model=\"%s\"} %llu\n"
        "llmgate_breaker_opens_total{provider=\"%s\",model=\"%s\"} %llu\n"
        "llmgate_breaker_state{provider=\"%s\",model=\"%s\"} %d\n",
        p, m, (unsigned long long)atomic_load(&((struct target_state *)t)->attempts), p, m,
        (unsigned long long)atomic_load(&((struct target_state *)t)->failures), p, m,
        (unsigned long long)atomic_load(&((struct target_state *)t)->breaker.opens), p, m,
        (int)breaker_state_of(&t->breaker));
}

void routing_admin_metrics(struct evbuffer *out)
{
    struct routing_metrics *m = &routing_metrics;
    server_metric_counter(out, "llmgate_policy_reloads_total",
                          "Successful configuration and policy reloads.",
                          atomic_load(&m->reloads_ok));
    server_metric_counter(out, "llmgate_policy_reload_failures_total",
                          "Rejected reloads (the previous policy kept serving).",
                          atomic_load(&m->reloads_failed));
    server_metric_counter(out, "llmgate_routed_requests_total", "Requests dispatched to a route.",
                          atomic_load(&m->requests));
    server_metric_counter(out, "llmgate_upstream_attempts_total",
                          "Upstream attempts, retries included.", atomic_load(&m->attempts));
    server_metric_counter(out, "llmgate_retries_total", "Attempts repeated on the same target.",
                          atomic_load(&m->retries));
    server_metric_counter(out, "llmgate_fallbacks_total",
                          "Moves to the next target after a failure.", atomic_load(&m->fallbacks));
    server_metric_counter(out, "llmgate_targets_skipped_open_total",
                          "Targets skipped: circuit breaker open.", atomic_load(&m->skipped_open));
    server_metric_counter(out, "llmgate_targets_skipped_cooldown_total",
                          "Targets skipped: cooling down after a 429.",
                          atomic_load(&m->skipped_cool));
    server_metric_counter(out, "llmgate_no_target_total", "Requests with no usable target left.",
                          atomic_load(&m->no_target));
    server_metric_counter(out, "llmgate_stream_errors_total", "Streams ended with an error event.",
                          atomic_load(&m->stream_errors));
    evbuffer_add_printf(out, "# HELP llmgate_target_attempts_total Attempts per target.\n"
                             "# TYPE llmgate_target_attempts_total counter\n"
                             "# TYPE llmgate_target_failures_total counter\n"
                             "# TYPE llmgate_breaker_opens_total counter\n"
                             "# HELP llmgate_breaker_state 0 closed, 1 open, 2 half-open.\n"
                             "# TYPE llmgate_breaker_state gauge\n");
    targets_foreach(per_target, out);
}

size_t routing_admin_ready_detail(const struct config *cfg, char *buf, size_t n)
{
    char err[1024];
    routing_get_reload_error(err, sizeof err);
    cJSON *o = cJSON_CreateObject();
    const struct policy *p = cfg->policy;
    cJSON_AddNumberToObject(o, "generation", p ? (double)p->generation : 0);
    cJSON_AddNumberToObject(o, "routes", p ? (double)p->n_routes : 0);
    cJSON_AddNumberToObject(o, "reload_failures",
                            (double)atomic_load(&routing_metrics.reloads_failed));
    if (err[0])
        cJSON_AddStringToObject(o, "last_reload_error", err);
    else
        cJSON_AddNullToObject(o, "last_reload_error");
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    size_t len = 0;
    if (s && strlen(s) < n) {
        len = strlen(s);
        memcpy(buf, s, len + 1);
    } else if (n >= 64) {
        len = (size_t)snprintf(buf, n, "{\"generation\":%llu}",
                               p ? (unsigned long long)p->generation : 0ull);
    }
    free(s);
    return len;
}
