/* Incremental Server-Sent Events parser (WHATWG "event stream" rules), used to
 * read upstream streaming responses fed in arbitrary splits. Plain C, no I/O. */
#ifndef LLMGATE_COMMON_SSE_H
#define LLMGATE_COMMON_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#define SSE_STOPPED 1    /* a callback returned nonzero */
#define SSE_ETOOBIG (-1) /* one event exceeded max_event_bytes */
#define SSE_ENOMEM  (-2) /* allocation failed */

/* One dispatched event. Every pointer is NUL-terminated, never NULL, and valid
 * only during the callback. `event` and `id` are "" (len 0) when absent; `id`
 * is the stream's last event id (it persists across events, as WHATWG says). */
struct sse_event {
    const char *event;
    size_t event_len;
    const char *data; /* data lines joined with '\n' */
    size_t data_len;
    const char *id;
    size_t id_len;
};

/* Called once per event; return 0 to go on, nonzero to stop parsing. */
typedef int (*sse_event_cb)(void *ud, const struct sse_event *ev);

/* Growable byte buffer owned by the parser. */
struct sse_buf {
    char *p;
    size_t len;
    size_t cap;
};

struct sse_parser {
    size_t max_event_bytes; /* bound on line + data + event bytes pending at once */
    sse_event_cb cb;
    void *ud;
    struct sse_buf line;  /* current incomplete line */
    struct sse_buf data;  /* data of the event being built */
    struct sse_buf event; /* event type of the event being built */
    struct sse_buf id;    /* last event id */
    long retry_ms;        /* last valid "retry:" value, -1 when none */
    unsigned bom_seen;    /* bytes of a leading UTF-8 BOM matched so far (3 = decided) */
    bool last_cr;         /* previous byte was '\r': a '\n' right after it is skipped */
    bool has_data;        /* a data field was seen for the pending event */
    bool has_event;       /* an event field was seen for the pending event */
    bool done_seen;       /* an event with data "[DONE]" was dispatched */
    int state;            /* 0, SSE_STOPPED, or a negative error: sticky until reset */
};

/* Prepares p (no allocation yet). cb may be NULL (events are then only counted
 * for done_seen). max_event_bytes of 0 means 1 MiB. */
void sse_parser_init(struct sse_parser *p, size_t max_event_bytes, sse_event_cb cb, void *ud);
/* Parses len bytes. Returns 0 when all were consumed, SSE_STOPPED when a
 * callback asked to stop (the rest of buf is dropped and later feeds return
 * SSE_STOPPED until reset), or SSE_ETOOBIG / SSE_ENOMEM (sticky until reset). */
int sse_parser_feed(struct sse_parser *p, const char *buf, size_t len);
/* At end of stream: 0 when nothing is pending, 1 when bytes of an
 * unterminated event (or line) were left undispatched, i.e. the stream was
 * truncated; the parser's error code when it is in an error state. Pending
 * bytes are discarded, as WHATWG says. */
int sse_parser_finish(struct sse_parser *p);
/* Returns p to its initial state (keeps buffers for reuse, forgets id/done). */
void sse_parser_reset(struct sse_parser *p);
/* Frees the buffers; p may be re-initialised afterwards. */
void sse_parser_free(struct sse_parser *p);

/* Whether an event carries the OpenAI end-of-stream marker "data: [DONE]". */
static inline int sse_is_done(const struct sse_event *ev)
{
    return ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0;
}

/* Whether a "[DONE]" event was dispatched since init/reset. */
static inline bool sse_parser_saw_done(const struct sse_parser *p)
{
    return p->done_seen;
}

#endif
