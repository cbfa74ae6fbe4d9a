/* Incremental Server-Sent Events parser: splits a byte stream into lines,
 * lines into fields, and dispatches one event per blank line (WHATWG rules). */
#include "sse.h"

#include <stdlib.h>

#define SSE_DEFAULT_MAX (1024u * 1024u)
#define SSE_RETRY_MAX   86400000L /* one day in ms; longer values are clamped */

static const char sse_bom[3] = {'\xEF', '\xBB', '\xBF'};

/* ------------------------------------------------------------------ */
/* Buffers                                                            */
/* ------------------------------------------------------------------ */

/* Appends n bytes and keeps the buffer NUL-terminated. */
static int buf_append(struct sse_buf *b, const char *s, size_t n)
{
    size_t need = b->len + n + 1;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < need)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) return SSE_ENOMEM;
        b->p = np;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static int buf_set(struct sse_buf *b, const char *s, size_t n)
{
    b->len = 0;
    return buf_append(b, s, n);
}

static const char *buf_str(const struct sse_buf *b)
{
    return b->p && b->len ? b->p : "";
}

static void buf_free(struct sse_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ------------------------------------------------------------------ */
/* Lines and fields                                                   */
/* ------------------------------------------------------------------ */

static void clear_pending(struct sse_parser *p)
{
    p->data.len = 0;
    p->event.len = 0;
    p->has_data = false;
    p->has_event = false;
}

static int dispatch(struct sse_parser *p)
{
    if (!p->has_data && !p->has_event) {
        clear_pending(p);
        return 0;
    }
    struct sse_event ev = {
        .event = buf_str(&p->event),
        .event_len = p->event.len,
        .data = buf_str(&p->data),
        .data_len = p->data.len,
        .id = buf_str(&p->id),
        .id_len = p->id.len,
    };
    if (sse_is_done(&ev)) p->done_seen = true;
    int rc = p->cb ? p->cb(p->ud, &ev) : 0;
    clear_pending(p);
    return rc ? SSE_STOPPED : 0;
}

static bool field_is(const char *f, size_t n, const char *name)
{
    return strlen(name) == n && memcmp(f, name, n) == 0;
}

static void set_retry(struct sse_parser *p, const char *v, size_t n)
{
    long ms = 0;
    if (n == 0) return;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return;
        if (ms < SSE_RETRY_MAX) ms = ms * 10 + (v[i] - '0');
    }
    p->retry_ms = ms > SSE_RETRY_MAX ? SSE_RETRY_MAX : ms;
}

/* Handles one complete line (without its terminator). */
static int process_line(struct sse_parser *p, const char *s, size_t n)
{
    if (n == 0) return dispatch(p);
    if (s[0] == ':') return 0; /* comment */

    const char *colon = memchr(s, ':', n);
    size_t flen = colon ? (size_t)(colon - s) : n;
    const char *v = colon ? colon + 1 : s + n;
    size_t vlen = colon ? n - flen - 1 : 0;
    if (vlen && v[0] == ' ') {
        v++;
        vlen--;
    }

    if (field_is(s, flen, "data")) {
        if (p->data.len + 1 + vlen + p->event.len > p->max_event_bytes) return SSE_ETOOBIG;
        int rc = p->has_data ? buf_append(&p->data, "\n", 1) : 0;
        if (rc == 0) rc = buf_append(&p->data, v, vlen);
        p->has_data = true;
        return rc;
    }
    if (field_is(s, flen, "event")) {
        if (p->data.len + vlen > p->max_event_bytes) return SSE_ETOOBIG;
        p->has_event = true;
        return buf_set(&p->event, v, vlen);
    }
    if (field_is(s, flen, "id")) {
        if (memchr(v, '\0', vlen)) return 0; /* WHATWG: ignore ids containing NUL */
        if (vlen > p->max_event_bytes) return SSE_ETOOBIG;
        return buf_set(&p->id, v, vlen);
    }
    if (field_is(s, flen, "retry")) set_retry(p, v, vlen);
    return 0; /* unknown fields are ignored */
}

/* Splits bytes into lines; a line split across feeds is kept in p->line. */
static int process_bytes(struct sse_parser *p, const char *buf, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (p->last_cr) {
            p->last_cr = false;
            if (buf[i] == '\n') {
                i++;
                continue;
            }
        }
        size_t j = i;
        while (j < len && buf[j] != '\n' && buf[j] != '\r')
            j++;
        size_t pending = p->line.len + (j - i);
        /* Every line counts against the bound, stored or not, so the result
         * does not depend on how the stream was split. */
        if (pending + p->data.len + p->event.len > p->max_event_bytes) return SSE_ETOOBIG;
        if (j == len) return buf_append(&p->line, buf + i, j - i);

        int rc;
        if (p->line.len == 0) {
            rc = process_line(p, buf + i, j - i);
        } else {
            rc = buf_append(&p->line, buf + i, j - i);
            if (rc == 0) rc = process_line(p, p->line.p, p->line.len);
            p->line.len = 0;
        }
        if (buf[j] == '\r') p->last_cr = true;
        i = j + 1;
        if (rc) return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Public API                                                         */
/* ------------------------------------------------------------------ */

void sse_parser_init(struct sse_parser *p, size_t max_event_bytes, sse_event_cb cb, void *ud)
{
    memset(p, 0, sizeof(*p));
    p->max_event_bytes = max_event_bytes ? max_event_bytes : SSE_DEFAULT_MAX;
    p->cb = cb;
    p->ud = ud;
    p->retry_ms = -1;
}

int sse_parser_feed(struct sse_parser *p, const char *buf, size_t len)
{
    if (p->state) return p->state;
    size_t i = 0;
    /* A BOM is only skipped at the very start; it may arrive split. */
    while (p->bom_seen < 3 && i < len) {
        if (buf[i] == sse_bom[p->bom_seen]) {
            p->bom_seen++;
            i++;
            continue;
        }
        unsigned matched = p->bom_seen;
        p->bom_seen = 3;
        int rc = process_bytes(p, sse_bom, matched);
        if (rc) return p->state = rc;
    }
    int rc = process_bytes(p, buf + i, len - i);
    if (rc) p->state = rc;
    return rc;
}

int sse_parser_finish(struct sse_parser *p)
{
    if (p->state < 0) return p->state;
    bool pending =
        p->line.len > 0 || p->has_data || p->has_event || (p->bom_seen > 0 && p->bom_seen < 3);
    p->line.len = 0;
    p->last_cr = false;
    clear_pending(p);
    return pending ? 1 : 0;
}

void sse_parser_reset(struct sse_parser *p)
{
    p->line.len = 0;
    p->id.len = 0;
    clear_pending(p);
    p->retry_ms = -1;
    p->bom_seen = 0;
    p->last_cr = false;
    p->done_seen = false;
    p->state = 0;
}

void sse_parser_free(struct sse_parser *p)
{
    buf_free(&p->line);
    buf_free(&p->data);
    buf_free(&p->event);
    buf_free(&p->id);
    p->state = 0;
}
