/* The OpenAI wire format: request validation for /v1/chat/completions,
 * /v1/completions and /v1/embeddings, upstream re-rendering, error bodies.
 * Messages and codes follow OpenAI's own wording so SDK users see familiar
 * errors; every error names the offending field path in `param`. */
#include "gateway/openai.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define INVALID_REQUEST "invalid_request_error"
#define PARSE_ERROR_MSG                                                                            \
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "       \
    "using your HTTP client correctly. The API expects a JSON payload, but what was sent was "     \
    "not valid JSON.)"

/* Paths like "messages[99999].content[99999].text" fit comfortably. */
#define PATH_CAP 64

/* Bits selecting the endpoints a field rule applies to. */
#define EP_CHAT  (1u << OAI_CHAT)
#define EP_COMPL (1u << OAI_COMPLETIONS)
#define EP_EMB   (1u << OAI_EMBEDDINGS)
#define EP_GEN   (EP_CHAT | EP_COMPL)

/* ------------------------------------------------------------------ */
/* Errors                                                             */
/* ------------------------------------------------------------------ */

void oai_error_set(struct oai_error *e, int status, const char *type, const char *code,
                   const char *param, const char *fmt, ...)
{
    va_list ap;
    e->status = status;
    e->type = type;
    e->code = code;
    util_strlcpy(e->param, param ? param : "", sizeof(e->param));
    va_start(ap, fmt);
    int n = vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    if (n < 0) e->message[0] = '\0';
}

struct wbuf {
    char *p;
    size_t cap;
    size_t len;
    bool full;
};

static void w_raw(struct wbuf *w, const char *s, size_t n)
{
    if (w->full || n >= w->cap - w->len) {
        w->full = true;
        return;
    }
    memcpy(w->p + w->len, s, n);
    w->len += n;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when invalid. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

/* Writes s as a JSON string literal; invalid UTF-8 becomes U+FFFD. */
static void w_str(struct wbuf *w, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str);
    w_raw(w, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            w_raw(w, esc, 2);
        } else if (c == '\n') {
            w_raw(w, "\\n", 2);
        } else if (c == '\r') {
            w_raw(w, "\\r", 2);
        } else if (c == '\t') {
            w_raw(w, "\\t", 2);
        } else if (c < 0x20 || c == 0x7F) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            w_raw(w, esc, 6);
        } else if (c >= 0x80) {
            size_t sl = utf8_seq_len(s + i, n - i);
            if (sl == 0) {
                w_raw(w, "\\ufffd", 6);
                i++;
            } else {
                w_raw(w, (const char *)s + i, sl);
                i += sl;
            }
            continue;
        } else {
            w_raw(w, (const char *)s + i, 1);
        }
        i++;
    }
    w_raw(w, "\"", 1);
}

static void w_str_or_null(struct wbuf *w, const char *s)
{
    if (s && *s)
        w_str(w, s);
    else
        w_raw(w, "null", 4);
}

int oai_error_render(const struct oai_error *e, char *buf, size_t cap)
{
    if (!buf || cap == 0) return -1;
    struct wbuf w = {.p = buf, .cap = cap};
    w_raw(&w, "{\"error\":{\"message\":", 20);
    w_str(&w, e->message);
    w_raw(&w, ",\"type\":", 8);
    w_str(&w, e->type ? e->type : "server_error");
    w_raw(&w, ",\"param\":", 9);
    w_str_or_null(&w, e->param);
    w_raw(&w, ",\"code\":", 8);
    w_str_or_null(&w, e->code);
    w_raw(&w, "}}", 2);
    if (w.full) {
        buf[0] = '\0';
        return -1;
    }
    buf[w.len] = '\0';
    return (int)w.len;
}

/* ------------------------------------------------------------------ */
/* Validation helpers                                                 */
/* ------------------------------------------------------------------ */

static const char *type_name(const cJSON *it)
{
    if (!it || cJSON_IsNull(it)) return "null";
    if (cJSON_IsBool(it)) return "a boolean";
    if (cJSON_IsString(it)) return "a string";
    if (cJSON_IsArray(it)) return "an array";
    if (cJSON_IsObject(it)) return "an object";
    if (cJSON_IsNumber(it)) {
        double d = it->valuedouble;
        return isfinite(d) && d == floor(d) ? "an integer" : "a decimal";
    }
    return "an unknown type";
}

static int fail_type(struct oai_error *err, const char *path, const char *expected, const cJSON *it)
{
    oai_error_set(err, 400, INVALID_REQUEST, "invalid_type", path,
                  "Invalid type for '%s': expected %s, but got %s instead.", path, expected,
                  type_name(it));
    return -1;
}

static int fail_missing(struct oai_error *err, const char *path)
{
    oai_error_set(err, 400, INVALID_REQUEST, "missing_required_parameter", path,
                  "Missing required parameter: '%s'.", path);
    return -1;
}

static int fail_empty_array(struct oai_error *err, const char *path)
{
    oai_error_set(err, 400, INVALID_REQUEST, "empty_array", path,
                  "Invalid '%s': empty array. Expected an array with minimum length 1, but got "
                  "an empty array instead.",
                  path);
    return -1;
}

static int fail_long_array(struct oai_error *err, const char *path, size_t max, size_t got)
{
    oai_error_set(err, 400, INVALID_REQUEST, "array_above_max_length", path,
                  "Invalid '%s': array too long. Expected an array with maximum length %zu, but "
                  "got an array with length %zu instead.",
                  path, max, got);
    return -1;
}

static int fail_oom(struct oai_error *err)
{
    oai_error_set(err, 500, "server_error", NULL, NULL, "The server ran out of memory.");
    return -1;
}

/* Absent and explicit null mean "use the default" for optional fields. */
static bool absent(const cJSON *it)
{
    return !it || cJSON_IsNull(it);
}

/* Number of elements, counting no further than limit + 1. */
static size_t array_count(const cJSON *arr, size_t limit)
{
    size_t n = 0;
    for (const cJSON *c = arr->child; c && n <= limit; c = c->next)
        n++;
    return n;
}

/* UTF-8 code points (bytes that are not continuation bytes). */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* An integral number within [min, max]; the value goes to *out if non-NULL. */
static int check_int(const cJSON *it, const char *path, double min, double max, double *out,
                     struct oai_error *err)
{
    if (!cJSON_IsNumber(it)) return fail_type(err, path, "an integer", it);
    double d = it->valuedouble;
    if (!isfinite(d) || d != floor(d)) return fail_type(err, path, "an integer", it);
    if (d < min) {
        oai_error_set(err, 400, INVALID_REQUEST, "integer_below_min_value", path,
                      "Invalid '%s': integer below minimum value. Expected a value >= %.17g, "
                      "but got %.17g instead.",
                      path, min, d);
        return -1;
    }
    if (d > max) {
        oai_error_set(err, 400, INVALID_REQUEST, "integer_above_max_value", path,
                      "Invalid '%s': integer above maximum value. Expected a value <= %.17g, "
                      "but got %.17g instead.",
                      path, max, d);
        return -1;
    }
    if (out) *out = d;
    return 0;
}

/* A finite number within [min, max]. */
static int check_number(const cJSON *it, const char *path, double min, double max,
                        struct oai_error *err)
{
    if (!cJSON_IsNumber(it)) return fail_type(err, path, "a number", it);
    double d = it->valuedouble;
    if (!isfinite(d)) {
        oai_error_set(err, 400, INVALID_REQUEST, "invalid_value", path,
                      "Invalid value for '%s': expected a finite number.", path);
        return -1;
    }
    if (d < min || d > max) {
        bool below = d < min;
        oai_error_set(err, 400, INVALID_REQUEST,
                      below ? "decimal_below_min_value" : "decimal_above_max_value", path,
                      "Invalid '%s': decimal %s value. Expected a value %s %g, but got %g "
                      "instead.",
                      path, below ? "below minimum" : "above maximum",
                      below ? ">=" : "<=", below ? min : max, d);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Whole-document checks: nesting depth and duplicate keys            */
/* ------------------------------------------------------------------ */

/* Scans raw JSON for nesting deeper than OAI_MAX_DEPTH before cJSON recurses
 * into it. Brackets inside strings do not count. */
static bool too_deep(const char *s, size_t len)
{
    int depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > OAI_MAX_DEPTH) return true;
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    return false;
}

static int cmp_keys(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Appends ".key" or "[i]" to path (truncating), returns the new length. */
static size_t path_push(char *path, size_t plen, const char *key, size_t index)
{
    int n;
    if (key)
        n = snprintf(path + plen, PATH_CAP - plen, plen ? ".%s" : "%s", key);
    else
        n = snprintf(path + plen, PATH_CAP - plen, "[%zu]", index);
    if (n < 0) return plen;
    size_t nl = plen + (size_t)n;
    return nl >= PATH_CAP ? PATH_CAP - 1 : nl;
}

static int fail_dup(struct oai_error *err, char *path, size_t plen, const char *key)
{
    path_push(path, plen, key, 0);
    oai_error_set(err, 400, INVALID_REQUEST, "duplicate_key", path,
                  "Invalid request body: duplicate key '%s'. Each key may appear only once in "
                  "an object.",
                  path);
    return -1;
}

/* Rejects any object that repeats a key. Depth is bounded by too_deep(). */
static int check_dups(const cJSON *node, char *path, size_t plen, struct oai_error *err)
{
    if (cJSON_IsObject(node)) {
        size_t k = 0;
        for (const cJSON *c = node->child; c; c = c->next)
            k++;
        if (k >= 2 && k <= 16) {
            for (const cJSON *a = node->child; a; a = a->next)
                for (const cJSON *b = a->next; b; b = b->next)
                    if (strcmp(a->string, b->string) == 0)
                        return fail_dup(err, path, plen, a->string);
        } else if (k > 16) {
            const char **keys = malloc(k * sizeof(*keys));
            if (!keys) return fail_oom(err);
            size_t i = 0;
            for (const cJSON *c = node->child; c; c = c->next)
                keys[i++] = c->string;
            qsort(keys, k, sizeof(*keys), cmp_keys);
            for (i = 1; i < k; i++) {
                if (strcmp(keys[i - 1], keys[i]) == 0) {
                    int rc = fail_dup(err, path, plen, keys[i]);
                    free(keys);
                    return rc;
                }
            }
            free(keys);
        }
    }
    if (!cJSON_IsObject(node) && !cJSON_IsArray(node)) return 0;
    size_t index = 0;
    for (const cJSON *c = node->child; c; c = c->next, index++) {
        if (!cJSON_IsObject(c) && !cJSON_IsArray(c)) continue;
        size_t nl = path_push(path, plen, cJSON_IsObject(node) ? c->string : NULL, index);
        int rc = check_dups(c, path, nl, err);
        path[plen] = '\0';
        if (rc) return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Fields shared by endpoints                                         */
/* ------------------------------------------------------------------ */

/* Numeric fields checked by table: one row per field. */
struct num_rule {
    const char *name;
    unsigned endpoints; /* EP_* bits */
    bool integer;
    double min, max;
};

static const struct num_rule num_rules[] = {
    {"max_tokens", EP_GEN, true, 1, (double)OAI_MAX_TOKENS},
    {"max_completion_tokens", EP_GEN, true, 1, (double)OAI_MAX_TOKENS},
    {"n", EP_GEN, true, 1, OAI_MAX_N},
    {"temperature", EP_GEN, false, 0, 2},
    {"top_p", EP_GEN, false, 0, 1},
    {"presence_penalty", EP_GEN, false, -2, 2},
    {"frequency_penalty", EP_GEN, false, -2, 2},
    /* The largest doubles that still fit an int64. */
    {"seed", EP_GEN, true, -9223372036854775808.0, 9223372036854774784.0},
    {"top_logprobs", EP_CHAT, true, 0, 20},
    {"logprobs", EP_COMPL, true, 0, 5}, /* legacy completions: an integer */
    {"best_of", EP_COMPL, true, 1, 20},
    {"dimensions", EP_EMB, true, 1, OAI_MAX_DIMENSIONS},
};

static int check_num_rules(const cJSON *root, enum oai_endpoint ep, struct oai_error *err)
{
    for (size_t i = 0; i < ARRAY_LEN(num_rules); i++) {
        const struct num_rule *r = &num_rules[i];
        if (!(r->endpoints & (1u << ep))) continue;
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, r->name);
        if (absent(it)) continue;
        int rc = r->integer ? check_int(it, r->name, r->min, r->max, NULL, err)
                            : check_number(it, r->name, r->min, r->max, err);
        if (rc) return rc;
    }
    return 0;
}

static int check_optional_type(const cJSON *root, const char *name, cJSON_bool (*is)(const cJSON *),
                               const char *expected, struct oai_error *err)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, name);
    if (absent(it) || is(it)) return 0;
    return fail_type(err, name, expected, it);
}

static int check_model(const cJSON *root, struct oai_request *out, struct oai_error *err)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (absent(m)) return fail_missing(err, "model");
    if (!cJSON_IsString(m)) return fail_type(err, "model", "a string", m);
    size_t len = strlen(m->valuestring);
    if (len == 0) {
        oai_error_set(err, 400, INVALID_REQUEST, "empty_string", "model",
                      "Invalid 'model': empty string. Expected a string with minimum length 1, "
                      "but got an empty string instead.");
        return -1;
    }
    if (len > OAI_MAX_MODEL_LEN) {
        oai_error_set(err, 400, INVALID_REQUEST, "string_above_max_length", "model",
                      "Invalid 'model': string too long. Expected a string with maximum length "
                      "%d, but got a string with length %zu instead.",
                      OAI_MAX_MODEL_LEN, len);
        return -1;
    }
    out->model = m->valuestring;
    return 0;
}

static int check_stream(const cJSON *root, struct oai_request *out, struct oai_error *err)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "stream");
    if (!absent(s)) {
        if (!cJSON_IsBool(s)) return fail_type(err, "stream", "a boolean", s);
        out->stream = cJSON_IsTrue(s);
    }
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (absent(so)) return 0;
    if (!cJSON_IsObject(so)) return fail_type(err, "stream_options", "an object", so);
    if (!out->stream) {
        oai_error_set(err, 400, INVALID_REQUEST, "invalid_value", "stream_options",
                      "The 'stream_options' parameter is only allowed when 'stream' is enabled.");
        return -1;
    }
    const cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");
    if (absent(iu)) return 0;
    if (!cJSON_IsBool(iu)) return fail_type(err, "stream_options.include_usage", "a boolean", iu);
    out->include_usage = cJSON_IsTrue(iu);
    return 0;
}

static int check_stop(const cJSON *root, struct oai_error *err)
{
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (absent(st) || cJSON_IsString(st)) return 0;
    if (!cJSON_IsArray(st)) return fail_type(err, "stop", "a string or an array of strings", st);
    size_t n = array_count(st, 4);
    if (n > 4) return fail_long_array(err, "stop", 4, n);
    size_t i = 0;
    for (const cJSON *c = st->child; c; c = c->next, i++) {
        if (cJSON_IsString(c)) continue;
        char path[PATH_CAP];
        snprintf(path, sizeof(path), "stop[%zu]", i);
        return fail_type(err, path, "a string", c);
    }
    return 0;
}

static int check_logit_bias(const cJSON *root, struct oai_error *err)
{
    const cJSON *lb = cJSON_GetObjectItemCaseSensitive(root, "logit_bias");
    if (absent(lb)) return 0;
    if (!cJSON_IsObject(lb)) return fail_type(err, "logit_bias", "an object", lb);
    for (const cJSON *c = lb->child; c; c = c->next) {
        const char *k = c->string;
        size_t kl = strlen(k);
        bool digits = kl > 0 && kl <= 10 && strspn(k, "0123456789") == kl;
        if (!digits) {
            oai_error_set(err, 400, INVALID_REQUEST, "invalid_value", "logit_bias",
                          "Invalid key in 'logit_bias': '%.32s' is not a token id.", k);
            return -1;
        }
        if (!cJSON_IsNumber(c) || !isfinite(c->valuedouble) || c->valuedouble < -100 ||
            c->valuedouble > 100) {
            oai_error_set(err, 400, INVALID_REQUEST, "invalid_value", "logit_bias",
                          "Invalid value for 'logit_bias': bias values must be numbers between "
                          "-100 and 100.");
            return -1;
        }
    }
    return 0;
}

static int check_tools(const cJSON *root, struct oai_error *err)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "tools");
    if (!absent(t)) {
        if (!cJSON_IsArray(t)) return fail_type(err, "tools", "an array", t);
        size_t n = array_count(t, 128);
        if (n > 128) return fail_long_array(err, "tools", 128, n);
        size_t i = 0;
        for (const cJSON *c = t->child; c; c = c->next, i++) {
            if (cJSON_IsObject(c)) continue;
            char path[PATH_CAP];
            snprintf(path, sizeof(path), "tools[%zu]", i);
            return fail_type(err, path, "an object", c);
        }
    }
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "tool_choice");
    if (!absent(tc) && !cJSON_IsString(tc) && !cJSON_IsObject(tc))
        return fail_type(err, "tool_choice", "a string or an object", tc);
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(root, "response_format");
    if (!absent(rf)) {
        if (!cJSON_IsObject(rf)) return fail_type(err, "response_format", "an object", rf);
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(rf, "type");
        if (absent(ty)) return fail_missing(err, "response_format.type");
        if (!cJSON_IsString(ty)) return fail_type(err, "response_format.type", "a string", ty);
    }
    return 0;
}

/* Fields of chat and completions: stream, sampling, limits, tools. */
static int check_generation(const cJSON *root, struct oai_request *out, struct oai_error *err)
{
    if (check_stream(root, out, err) || check_num_rules(root, out->endpoint, err) ||
        check_stop(root, err) || check_logit_bias(root, err) ||
        check_optional_type(root, "user", cJSON_IsString, "a string", err))
        return -1;
    if (out->endpoint == OAI_CHAT) {
        if (check_optional_type(root, "logprobs", cJSON_IsBool, "a boolean", err) ||
            check_tools(root, err))
            return -1;
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens");
    if (absent(mt)) mt = cJSON_GetObjectItemCaseSensitive(root, "max_tokens");
    if (!absent(mt)) out->max_tokens = (long)mt->valuedouble;
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(root, "n");
    if (!absent(n)) out->n = (int)n->valuedouble;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Chat messages                                                      */
/* ------------------------------------------------------------------ */

static const char *const roles[] = {"system", "developer", "user", "assistant", "tool", "function"};

static int check_content_parts(const cJSON *content, size_t mi, struct oai_request *out,
                               struct oai_error *err)
{
    char path[PATH_CAP];
    snprintf(path, sizeof(path), "messages[%zu].content", mi);
    size_t n = array_count(content, OAI_MAX_ITEMS);
    if (n == 0) return fail_empty_array(err, path);
    if (n > OAI_MAX_ITEMS) return fail_long_array(err, path, OAI_MAX_ITEMS, n);
    size_t j = 0;
    for (const cJSON *part = content->child; part; part = part->next, j++) {
        snprintf(path, sizeof(path), "messages[%zu].content[%zu]", mi, j);
        if (!cJSON_IsObject(part)) return fail_type(err, path, "an object", part);
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(part, "type");
        snprintf(path, sizeof(path), "messages[%zu].content[%zu].type", mi, j);
        if (absent(ty)) return fail_missing(err, path);
        if (!cJSON_IsString(ty)) return fail_type(err, path, "a string", ty);
        if (strcmp(ty->valuestring, "text") != 0) continue; /* images, audio: forwarded */
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        snprintf(path, sizeof(path), "messages[%zu].content[%zu].text", mi, j);
        if (absent(text)) return fail_missing(err, path);
        if (!cJSON_IsString(text)) return fail_type(err, path, "a string", text);
        out->prompt_chars += utf8_chars(text->valuestring);
    }
    return 0;
}

/* tool_calls / function_call on an assistant message; counts argument text. */
static int check_tool_calls(const cJSON *msg, size_t mi, bool *has_calls, struct oai_request *out,
                            struct oai_error *err)
{
    char path[PATH_CAP];
    const cJSON *tcs = cJSON_GetObjectItemCaseSensitive(msg, "tool_calls");
    if (!absent(tcs)) {
        snprintf(path, sizeof(path), "messages[%zu].tool_calls", mi);
        if (!cJSON_IsArray(tcs)) return fail_type(err, path, "an array", tcs);
        size_t j = 0;
        for (const cJSON *tc = tcs->child; tc; tc = tc->next, j++) {
            if (!cJSON_IsObject(tc)) {
                snprintf(path, sizeof(path), "messages[%zu].tool_calls[%zu]", mi, j);
                return fail_type(err, path, "an object", tc);
            }
            const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
            const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
            if (cJSON_IsString(args)) out->prompt_chars += utf8_chars(args->valuestring);
            *has_calls = true;
        }
    }
    const cJSON *fc = cJSON_GetObjectItemCaseSensitive(msg, "function_call");
    if (!absent(fc)) {
        snprintf(path, sizeof(path), "messages[%zu].function_call", mi);
        if (!cJSON_IsObject(fc)) return fail_type(err, path, "an object", fc);
        *has_calls = true;
    }
    return 0;
}

static int check_message(const cJSON *msg, size_t mi, struct oai_request *out,
                         struct oai_error *err)
{
    char path[PATH_CAP];
    snprintf(path, sizeof(path), "messages[%zu]", mi);
    if (!cJSON_IsObject(msg)) return fail_type(err, path, "an object", msg);

    const cJSON *role = cJSON_GetObjectItemCaseSensitive(msg, "role");
    snprintf(path, sizeof(path), "messages[%zu].role", mi);
    if (absent(role)) return fail_missing(err, path);
    if (!cJSON_IsString(role)) return fail_type(err, path, "a string", role);
    size_t r;
    for (r = 0; r < ARRAY_LEN(roles); r++)
        if (strcmp(role->valuestring, roles[r]) == 0) break;
    if (r == ARRAY_LEN(roles)) {
        oai_error_set(err, 400, INVALID_REQUEST, "invalid_value", path,
                      "Invalid value: '%.40s'. Supported values are: 'system', 'developer', "
                      "'user', 'assistant', 'tool', and 'function'.",
                      role->valuestring);
        return -1;
    }
    bool is_assistant = strcmp(roles[r], "assistant") == 0;
    bool is_tool = strcmp(roles[r], "tool") == 0;

    const cJSON *name = cJSON_GetObjectItemCaseSensitive(msg, "name");
    if (!absent(name) && !cJSON_IsString(name)) {
        snprintf(path, sizeof(path), "messages[%zu].name", mi);
        return fail_type(err, path, "a string", name);
    }

    bool has_calls = false;
    if (is_assistant && check_tool_calls(msg, mi, &has_calls, out, err)) return -1;

    const cJSON *content = cJSON_GetObjectItemCaseSensitive(msg, "content");
    snprintf(path, sizeof(path), "messages[%zu].content", mi);
    if (absent(content)) {
        if (!(is_assistant && has_calls) && !is_tool) {
            if (!content) return fail_missing(err, path);
            return fail_type(err, path, "a string or an array of objects", content);
        }
    } else if (cJSON_IsString(content)) {
        out->prompt_chars += utf8_chars(content->valuestring);
    } else if (cJSON_IsArray(content)) {
        if (check_content_parts(content, mi, out, err)) return -1;
    } else {
        return fail_type(err, path, "a string or an array of objects", content);
    }

    if (is_tool) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "tool_call_id");
        snprintf(path, sizeof(path), "messages[%zu].tool_call_id", mi);
        if (absent(id)) return fail_missing(err, path);
        if (!cJSON_IsString(id)) return fail_type(err, path, "a string", id);
    }
    return 0;
}

static int check_chat(const cJSON *root, struct oai_request *out, struct oai_error *err)
{
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (absent(msgs)) return fail_missing(err, "messages");
    if (!cJSON_IsArray(msgs)) return fail_type(err, "messages", "an array", msgs);
    size_t n = array_count(msgs, OAI_MAX_MESSAGES);
    if (n == 0) return fail_empty_array(err, "messages");
    if (n > OAI_MAX_MESSAGES) return fail_long_array(err, "messages", OAI_MAX_MESSAGES, n);
    size_t i = 0;
    for (const cJSON *m = msgs->child; m; m = m->next, i++)
        if (check_message(m, i, out, err)) return -1;
    return check_generation(root, out, err);
}

/* ------------------------------------------------------------------ */
/* Completions prompt and embeddings input                            */
/* ------------------------------------------------------------------ */

static int fail_empty_string(struct oai_error *err, const char *path)
{
    oai_error_set(err, 400, INVALID_REQUEST, "empty_string", path,
                  "Invalid '%s': empty string. Expected a string with minimum length 1, but got "
                  "an empty string instead.",
                  path);
    return -1;
}

/* Token ids are non-negative 32-bit integers. */
static int check_token(const cJSON *it, const char *path, struct oai_error *err)
{
    return check_int(it, path, 0, 2147483647.0, NULL, err);
}

/* string | [string] | [int] | [[int]]: the shapes `prompt` and `input` take.
 * Mixed arrays are rejected; allow_empty permits "" strings. */
static int check_texts_or_tokens(const cJSON *it, const char *name, bool allow_empty,
                                 struct oai_request *out, struct oai_error *err)
{
    static const char shapes[] = "a string, an array of strings, an array of integers, or an "
                                 "array of arrays of integers";
    char path[PATH_CAP];
    if (absent(it)) return fail_missing(err, name);
    if (cJSON_IsString(it)) {
        if (!allow_empty && it->valuestring[0] == '\0') return fail_empty_string(err, name);
        out->prompt_chars += utf8_chars(it->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(it)) return fail_type(err, name, shapes, it);
    size_t n = array_count(it, OAI_MAX_ITEMS);
    if (n == 0) return fail_empty_array(err, name);
    if (n > OAI_MAX_ITEMS) return fail_long_array(err, name, OAI_MAX_ITEMS, n);

    const cJSON *first = it->child;
    size_t i = 0;
    for (const cJSON *c = it->child; c; c = c->next, i++) {
        snprintf(path, sizeof(path), "%s[%zu]", name, i);
        if (cJSON_IsString(first)) {
            if (!cJSON_IsString(c)) return fail_type(err, path, "a string", c);
            if (!allow_empty && c->valuestring[0] == '\0') return fail_empty_string(err, path);
            out->prompt_chars += utf8_chars(c->valuestring);
        } else if (cJSON_IsNumber(first)) {
            if (check_token(c, path, err)) return -1;
            out->prompt_tokens++;
        } else if (cJSON_IsArray(first)) {
            if (!cJSON_IsArray(c)) return fail_type(err, path, "an array of integers", c);
            size_t m = array_count(c, OAI_MAX_ITEMS);
            if (m == 0) return fail_empty_array(err, path);
            if (m > OAI_MAX_ITEMS) return fail_long_array(err, path, OAI_MAX_ITEMS, m);
            size_t k = 0;
            for (const cJSON *t = c->child; t; t = t->next, k++) {
                snprintf(path, sizeof(path), "%s[%zu][%zu]", name, i, k);
                if (check_token(t, path, err)) return -1;
            }
            out->prompt_tokens += m;
        } else {
            return fail_type(err, path, "a string, an integer or an array of integers", c);
        }
    }
    return 0;
}

static int check_completions(const cJSON *root, struct oai_request *out, struct oai_error *err)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (check_texts_or_tokens(p, "prompt", true, out, err)) return -1;
    if (check_optional_type(root, "suffix", cJSON_IsString, "a string", err) ||
        check_optional_type(root, "echo", cJSON_IsBool, "a boolean", err))
        return -1;
    return check_generation(root, out, err);
}

static int check_embeddings(const cJSON *root, struct oai_request *out, struct oai_error *err)
{
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(root, "input");
    if (check_texts_or_tokens(in, "input", false, out, err)) return -1;
    if (check_num_rules(root, OAI_EMBEDDINGS, err) ||
        check_optional_type(root, "user", cJSON_IsString, "a string", err))
        return -1;
    const cJSON *ef = cJSON_GetObjectItemCaseSensitive(root, "encoding_format");
    if (absent(ef)) return 0;
    if (!cJSON_IsString(ef)) return fail_type(err, "encoding_format", "a string", ef);
    if (strcmp(ef->valuestring, "float") != 0 && strcmp(ef->valuestring, "base64") != 0) {
        oai_error_set(err, 400, INVALID_REQUEST, "invalid_value", "encoding_format",
                      "Invalid value: '%.40s'. Supported values are: 'float' and 'base64'.",
                      ef->valuestring);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Public API                                                         */
/* ------------------------------------------------------------------ */

static int fail_parse(struct oai_error *err)
{
    oai_error_set(err, 400, INVALID_REQUEST, NULL, NULL, "%s", PARSE_ERROR_MSG);
    return -1;
}

int oai_request_parse(enum oai_endpoint ep, const char *body, size_t len, struct oai_request *out,
                      struct oai_error *err)
{
    memset(out, 0, sizeof(*out));
    out->endpoint = ep;
    out->max_tokens = -1;
    out->n = 1;

    /* An embedded NUL would silently cut a cJSON string short. */
    if (!body || len == 0 || memchr(body, '\0', len)) return fail_parse(err);
    if (too_deep(body, len)) {
        oai_error_set(err, 400, INVALID_REQUEST, "nesting_too_deep", NULL,
                      "The JSON body of your request is nested too deeply (more than %d "
                      "levels of arrays and objects).",
                      OAI_MAX_DEPTH);
        return -1;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) return fail_parse(err);
    /* require_null_terminated would demand a NUL inside len; check the tail. */
    while (end < body + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++;
    if (end != body + len) {
        cJSON_Delete(root);
        return fail_parse(err);
    }
    out->root = root;

    char path[PATH_CAP] = "";
    int rc;
    if (!cJSON_IsObject(root)) {
        oai_error_set(err, 400, INVALID_REQUEST, "invalid_type", NULL,
                      "Invalid type for request body: expected an object, but got %s instead.",
                      type_name(root));
        rc = -1;
    } else if (check_dups(root, path, 0, err) || check_model(root, out, err)) {
        rc = -1;
    } else if (ep == OAI_CHAT) {
        rc = check_chat(root, out, err);
    } else if (ep == OAI_COMPLETIONS) {
        rc = check_completions(root, out, err);
    } else if (ep == OAI_EMBEDDINGS) {
        rc = check_embeddings(root, out, err);
    } else {
        oai_error_set(err, 404, INVALID_REQUEST, "unknown_url", NULL, "Unknown endpoint.");
        rc = -1;
    }
    if (rc) oai_request_free(out);
    return rc;
}

void oai_request_free(struct oai_request *r)
{
    cJSON_Delete(r->root);
    memset(r, 0, sizeof(*r));
    r->max_tokens = -1;
    r->n = 1;
}

char *oai_request_render(struct oai_request *r, const char *upstream_model, size_t *len)
{
    if (!r->root) return NULL;
    cJSON *m = cJSON_GetObjectItemCaseSensitive(r->root, "model");
    char *saved = NULL;
    /* Swap the string in place for the print: no allocation, the key keeps
     * its position, and r->model stays the client's name. */
    if (upstream_model && cJSON_IsString(m)) {
        saved = m->valuestring;
        m->valuestring = (char *)upstream_model;
    }
    char *out = cJSON_PrintUnformatted(r->root);
    if (saved) m->valuestring = saved;
    if (out && len) *len = strlen(out);
    return out;
}

const char *oai_endpoint_name(enum oai_endpoint ep)
{
    switch (ep) {
    case OAI_CHAT: return "chat.completions";
    case OAI_COMPLETIONS: return "completions";
    case OAI_EMBEDDINGS: return "embeddings";
    }
    return "unknown";
}
