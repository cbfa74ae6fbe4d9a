/* The admin HTTP API: /admin/v1/tenants, /admin/v1/keys and /admin/v1/usage.
 * Requests carry "Authorization: Bearer <admin token>"; the token comes from
 * the environment variable named by admin.token_env and is compared as SHA-256
 * digests in constant time. Everything else is one Redis script call. */
#include "gateway/admin.h"

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/redis.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/util.h"
#include "gateway/auth.h"
#include "gateway/keys.h"
#include "gateway/routing_admin.h"
#include "gateway/scripts.h"
#include "gateway/server.h"
#include "gateway/usage.h"
#include "gateway/worker.h"

#define ADMIN_PREFIX    "/admin/v1/"
#define MAX_REPORT_DAYS 400

bool admin_path(const char *path)
{
    return strncmp(path, ADMIN_PREFIX, sizeof ADMIN_PREFIX - 1) == 0;
}

int admin_build_args(const char *prefix, const char *op, const char *id, const char *body,
                     char *secret, char *sha_hex, char *new_id, const char **args)
{
    int n = 0;
    args[n++] = prefix;
    args[n++] = op;
    if (strcmp(op, "tenant_list") == 0) return n;
    if (strcmp(op, "key_create") == 0 || strcmp(op, "key_rotate") == 0) {
        if (keys_generate(secret, sha_hex, new_id) != 0) return -1;
        if (strcmp(op, "key_rotate") == 0) args[n++] = id;
        args[n++] = sha_hex;
        args[n++] = new_id;
        if (strcmp(op, "key_create") == 0) args[n++] = body;
        return n;
    }
    if (strcmp(op, "tenant_put") == 0) {
        args[n++] = id;
        args[n++] = body;
        return n;
    }
    if (strcmp(op, "tenant_get") == 0 || strcmp(op, "key_get") == 0 ||
        strcmp(op, "key_revoke") == 0 || strcmp(op, "key_list") == 0) {
        args[n++] = id ? id : "";
        return n;
    }
    return -1;
}

/* ---------------------------------------------------------------- replies */

static enum stage_rc reply(struct request *r, int status, const char *ctype, const char *body,
                           size_t len)
{
    server_common_headers(r->req, r->id, r->w->draining);
    if (ctype) {
        struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
        evhttp_remove_header(h, "Content-Type");
        evhttp_add_header(h, "Content-Type", ctype);
    }
    struct evbuffer *b = evbuffer_new();
    if (b) evbuffer_add(b, body, len);
    r->status = status;
    r->bytes_out = len;
    server_send_reply(r->req, status, server_reason_phrase(status), b);
    if (b) evbuffer_free(b);
    request_end(r);
    return STAGE_DONE;
}

static enum stage_rc bad(struct request *r, int status, const char *code, const char *msg)
{
    const char *type = status == 404                    ? "invalid_request_error"
                       : status == 401 || status == 403 ? "invalid_request_error"
                       : status >= 500                  ? "server_error"
                                                        : "invalid_request_error";
    return request_fail(r, status, type, code, NULL, "%s", msg);
}

/* ---------------------------------------------------------------- calls */

enum call_kind { CALL_ADMIN, CALL_REPORT };

struct admin_call {
    struct request *r;
    enum call_kind kind;
    int ok_status;
    bool csv;
    char secret[KEYS_SECRET_LEN + 1]; /* a new key's secret, shown once */
};

static void on_admin_reply(const struct redisReply *rep, void *ud)
{
    struct admin_call *c = ud;
    struct request *r = c->r;
    if (r->finished) goto out;
    if (!rep) {
        bad(r, 503, "redis_unavailable", "Redis is unreachable; retry shortly.");
    } else if (rep->type == REDIS_REPLY_ERROR) {
        /* "ERR <code>: <message>" from the script */
        const char *s = rep->str;
        if (strncmp(s, "ERR ", 4) == 0) s += 4;
        int status = strncmp(s, "not_found", 9) == 0  ? 404
                     : strncmp(s, "conflict", 8) == 0 ? 409
                     : strncmp(s, "invalid", 7) == 0  ? 400
                                                      : 500;
        const char *msg = strstr(s, ": ");
        if (status == 500) log_warn("admin", "admin script failed: %s", rep->str);
        bad(r, status,
            status == 404   ? "not_found"
            : status == 409 ? "conflict"
                            : "invalid_request",
            msg && status != 500 ? msg + 2 : "The admin operation failed.");
    } else if (rep->type != REDIS_REPLY_STRING) {
        bad(r, 500, "internal_error", "Unexpected answer from Redis.");
    } else if (c->csv) {
        char *csv = usage_report_csv(rep->str, rep->len);
        if (csv) {
            reply(r, 200, "text/csv; charset=utf-8", csv, strlen(csv));
            free(csv);
        } else {
            bad(r, 500, "internal_error", "Cannot render the report.");
        }
    } else if (c->secret[0]) {
        /* Add the secret to the key's JSON: the only time it is ever shown. */
        cJSON *doc = cJSON_ParseWithLength(rep->str, rep->len);
        char *out = NULL;
        if (doc && cJSON_AddStringToObject(doc, "key", c->secret))
            out = cJSON_PrintUnformatted(doc);
        cJSON_Delete(doc);
        if (out) {
            reply(r, c->ok_status, NULL, out, strlen(out));
            explicit_bzero(out, strlen(out));
            free(out);
        } else {
            bad(r, 500, "internal_error", "Cannot render the key.");
        }
    } else {
        reply(r, c->ok_status, NULL, rep->str, rep->len);
    }
out:
    explicit_bzero(c->secret, sizeof c->secret);
    free(c);
    request_release(r);
}

static enum stage_rc run_script(struct request *r, struct admin_call *c,
                                const struct redis_script *s, int nargs, const char **args)
{
    size_t lens[8];
    for (int i = 0; i < nargs; i++)
        lens[i] = strlen(args[i]);
    c->r = r;
    request_hold(r);
    if (redis_eval(r->w->redis, s, on_admin_reply, c, 0, NULL, NULL, nargs, args, lens) != 0) {
        request_release(r);
        explicit_bzero(c->secret, sizeof c->secret);
        free(c);
        return bad(r, 503, "redis_unavailable", "Redis is unreachable; retry shortly.");
    }
    return STAGE_ASYNC;
}

/* The request body as a NUL-terminated JSON object text, or NULL (400 sent). */
static char *json_body(struct request *r, cJSON **doc_out)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    size_t len = evbuffer_get_length(in);
    r->bytes_in = len;
    char *body = malloc(len + 1);
    if (!body) return NULL;
    evbuffer_copyout(in, body, len);
    body[len] = '\0';
    cJSON *doc = cJSON_ParseWithLength(body, len);
    if (!cJSON_IsObject(doc)) {
        cJSON_Delete(doc);
        free(body);
        return NULL;
    }
    *doc_out = doc;
    return body;
}

static enum stage_rc usage_report(struct request *r, const struct evkeyvalq *q)
{
    const char *tenant = evhttp_find_header(q, "tenant");
    const char *from = evhttp_find_header(q, "from"), *to = evhttp_find_header(q, "to");
    const char *group = evhttp_find_header(q, "group_by");
    const char *format = evhttp_find_header(q, "format");
    const char *key = evhttp_find_header(q, "key");
    if (!tenant || !keys_tenant_id_valid(tenant))
        return bad(r, 400, "invalid_request", "`tenant` is required ([A-Za-z0-9._-], 1-64).");
    long today = usage_day_of_ms(util_wall_ms()), d0 = today, d1 = today;
    if ((to && usage_parse_day(to, &d1) != 0) || (from && usage_parse_day(from, &d0) != 0))
        return bad(r, 400, "invalid_request", "`from` and `to` must be YYYY-MM-DD (UTC).");
    if (!from) d0 = d1;
    if (d1 < d0 || d1 - d0 >= MAX_REPORT_DAYS)
        return bad(r, 400, "invalid_request", "`from` must not be after `to`, at most 400 days.");
    if (!group) group = "day";
    if (strcmp(group, "key") != 0 && strcmp(group, "model") != 0 && strcmp(group, "day") != 0)
        return bad(r, 400, "invalid_request", "`group_by` must be key, model or day.");
    if (format && strcmp(format, "csv") != 0 && strcmp(format, "json") != 0)
        return bad(r, 400, "invalid_request", "`format` must be json or csv.");
    struct admin_call *c = calloc(1, sizeof *c);
    if (!c) return bad(r, 503, "overloaded", "Out of memory.");
    c->kind = CALL_REPORT;
    c->ok_status = 200;
    c->csv = format && strcmp(format, "csv") == 0;
    char a0[24], a1[24];
    snprintf(a0, sizeof a0, "%ld", d0);
    snprintf(a1, sizeof a1, "%ld", d1);
    const char *args[] = {r->cfg->redis_prefix, tenant, group, a0, a1, key ? key : ""};
    return run_script(r, c, &script_usage_report, 6, args);
}

/* Splits "/admin/v1/a/b/c" into up to 3 segments. */
static int split(const char *path, char seg[3][128])
{
    const char *p = path + sizeof ADMIN_PREFIX - 1;
    int n = 0;
    while (*p && n < 3) {
        size_t len = strcspn(p, "/");
        if (len == 0 || len >= 128) return -1;
        memcpy(seg[n], p, len);
        seg[n++][len] = '\0';
        p += len;
        if (*p == '/') p++;
    }
    return *p ? -1 : n;
}

static bool token_ok(struct request *r)
{
    const char *tok = r->cfg->admin_token;
    size_t len = 0;
    const char *given = auth_bearer_key(
        evhttp_find_header(evhttp_request_get_input_headers(r->req), "Authorization"), &len);
    if (!tok || !given) return false;
    uint8_t a[SHA256_LEN], b[SHA256_LEN];
    hash_sha256(given, len, a);
    hash_sha256(tok, strlen(tok), b);
    return hash_equal_ct(a, b, SHA256_LEN) == 1;
}

enum stage_rc admin_handle(struct request *r)
{
    if (!r->cfg->admin_token)
        return bad(r, 403, "admin_disabled",
                   "The admin API is off: set the admin token environment variable.");
    if (!token_ok(r)) return bad(r, 401, "invalid_admin_token", "Incorrect admin token.");

    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(r->req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    char seg[3][128];
    int ns = path ? split(path, seg) : -1;
    enum evhttp_cmd_type m = evhttp_request_get_command(r->req);
    if (ns <= 0) return bad(r, 404, "unknown_url", "Unknown admin URL.");

    if (strcmp(seg[0], "policy") == 0 && ns == 1) return routing_admin_policy(r);
    if (strcmp(seg[0], "usage") == 0 && ns == 1) {
        if (m != EVHTTP_REQ_GET) return bad(r, 405, "method_not_allowed", "Use GET.");
        struct evkeyvalq q;
        TAILQ_INIT(&q);
        const char *query = evhttp_uri_get_query(uri);
        if (query && evhttp_parse_query_str(query, &q) != 0)
            return bad(r, 400, "invalid_request", "Malformed query string.");
        enum stage_rc rc = usage_report(r, &q);
        evhttp_clear_headers(&q);
        return rc;
    }

    const char *op = NULL, *id = NULL;
    int ok_status = 200;
    bool needs_body = false;
    if (strcmp(seg[0], "tenants") == 0) {
        if (ns == 1 && m == EVHTTP_REQ_GET)
            op = "tenant_list";
        else if (ns == 1 && m == EVHTTP_REQ_POST)
            op = "tenant_put", needs_body = true, ok_status = 201;
        else if (ns == 2 && m == EVHTTP_REQ_GET)
            op = "tenant_get", id = seg[1];
        else if (ns == 2 && (m == EVHTTP_REQ_PUT || m == EVHTTP_REQ_PATCH))
            op = "tenant_put", id = seg[1], needs_body = true;
    } else if (strcmp(seg[0], "keys") == 0) {
        if (ns == 1 && m == EVHTTP_REQ_GET)
            op = "key_list";
        else if (ns == 1 && m == EVHTTP_REQ_POST)
            op = "key_create", needs_body = true, ok_status = 201;
        else if (ns == 2 && m == EVHTTP_REQ_GET)
            op = "key_get", id = seg[1];
        else if (ns == 2 && m == EVHTTP_REQ_DELETE)
            op = "key_revoke", id = seg[1];
        else if (ns == 3 && m == EVHTTP_REQ_POST && strcmp(seg[2], "revoke") == 0)
            op = "key_revoke", id = seg[1];
        else if (ns == 3 && m == EVHTTP_REQ_POST && strcmp(seg[2], "rotate") == 0)
            op = "key_rotate", id = seg[1], ok_status = 201;
    } else {
        return bad(r, 404, "unknown_url", "Unknown admin URL.");
    }
    if (!op) return bad(r, 405, "method_not_allowed", "Method not allowed for this admin URL.");

    cJSON *doc = NULL;
    char *body = NULL;
    char tenant_buf[KEYS_TENANT_MAX + 1] = "";
    if (needs_body && !(body = json_body(r, &doc)))
        return bad(r, 400, "invalid_request", "The body must be a JSON object.");
    if (strcmp(op, "tenant_put") == 0 && !id) {
        id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "id"));
    }
    if (strcmp(op, "key_list") == 0) {
        struct evkeyvalq q;
        TAILQ_INIT(&q);
        const char *query = evhttp_uri_get_query(uri);
        if (query && evhttp_parse_query_str(query, &q) == 0) {
            const char *t = evhttp_find_header(&q, "tenant");
            if (t && keys_tenant_id_valid(t)) util_strlcpy(tenant_buf, t, sizeof tenant_buf);
        }
        evhttp_clear_headers(&q);
        id = tenant_buf;
    }
    enum stage_rc rc;
    if (strncmp(op, "tenant_", 7) == 0 && strcmp(op, "tenant_list") != 0 &&
        (!id || !keys_tenant_id_valid(id))) {
        rc = bad(r, 400, "invalid_request", "A tenant id is 1-64 characters of [A-Za-z0-9._-].");
    } else {
        struct admin_call *c = calloc(1, sizeof *c);
        char sha_hex[SHA256_HEX_LEN + 1], new_id[KEYS_ID_LEN + 1], id_copy[128];
        const char *args[8];
        if (id) util_strlcpy(id_copy, id, sizeof id_copy);
        int na = c ? admin_build_args(r->cfg->redis_prefix, op, id ? id_copy : NULL,
                                      body ? body : "{}", c->secret, sha_hex, new_id, args)
                   : -1;
        if (na < 0) {
            free(c);
            rc = bad(r, 503, "overloaded", "Cannot prepare the admin operation.");
        } else {
            c->kind = CALL_ADMIN;
            c->ok_status = ok_status;
            rc = run_script(r, c, &script_admin, na, args);
        }
    }
    cJSON_Delete(doc);
    free(body);
    return rc;
}
