/* The upstream HTTP client: libcurl's multi_socket API driven by a worker's
 * event_base (curl's hiperfifo pattern). It moves bytes and knows nothing of
 * OpenAI JSON; provider adapters and the request path interpret them. */
#ifndef LLMGATE_ROUTING_UPSTREAM_H
#define LLMGATE_ROUTING_UPSTREAM_H

#include <stddef.h>

struct event_base;
struct upstream;      /* one per worker thread: a multi handle and its connection cache */
struct upstream_xfer; /* one HTTP exchange */

enum upstream_result {
    UPSTREAM_OK = 0,                 /* response complete */
    UPSTREAM_ERR_CONNECT,            /* resolve/connect refused or failed */
    UPSTREAM_ERR_TIMEOUT_CONNECT,    /* connect_ms passed */
    UPSTREAM_ERR_TIMEOUT_FIRST_BYTE, /* no response head within first_byte_ms */
    UPSTREAM_ERR_TIMEOUT_IDLE,       /* no body bytes for idle_ms */
    UPSTREAM_ERR_TIMEOUT_TOTAL,      /* total_ms passed */
    UPSTREAM_ERR_IO,                 /* connection broke or the peer spoke bad HTTP */
    UPSTREAM_ERR_ABORTED,            /* a callback asked to stop */
    UPSTREAM_ERR_INTERNAL,           /* allocation or libcurl setup failure */
};

enum upstream_data_rc {
    UPSTREAM_CONTINUE = 0, /* keep going */
    UPSTREAM_PAUSE = 1,    /* bytes consumed; deliver nothing more until upstream_resume() */
    UPSTREAM_ABORT = -1,   /* stop the transfer; on_done reports UPSTREAM_ERR_ABORTED */
};

/* All three run on the worker's thread. on_head and on_data run inside libcurl
 * callbacks: they must not call upstream_cancel() or free the transfer. */
struct upstream_callbacks {
    /* Final response head received (1xx skipped); 0 to continue, -1 to abort. */
    int (*on_head)(void *ud, struct upstream_xfer *x, long status);
    /* Body bytes in arrival order. */
    enum upstream_data_rc (*on_data)(void *ud, const char *data, size_t len);
    /* Called exactly once from the event loop, never inside a libcurl callback; the
     * transfer is already freed when it runs. detail is a short static reason. */
    void (*on_done)(void *ud, enum upstream_result res, const char *detail);
};

struct upstream_request {
    const char *url;
    const char *body; /* POST body (must outlive the transfer), or NULL for GET */
    size_t body_len;
    const char *const *headers; /* "Name: value" lines, copied */
    const char *unix_socket;    /* connect through this unix socket path, or NULL for TCP */
    size_t n_headers;
    unsigned connect_ms, first_byte_ms, idle_ms, total_ms; /* 0 = no limit */
};

/* Creates the per-worker client on base; max_host_conns bounds connections per
 * upstream host. NULL on failure. Call upstream_global_init() once per process first. */
struct upstream *upstream_new(struct event_base *base, long max_host_conns);
/* Ends every remaining transfer with UPSTREAM_ERR_ABORTED (on_done runs) and frees the client. */
void upstream_free(struct upstream *u);
/* Process-wide libcurl init; 0 on success. */
int upstream_global_init(void);
void upstream_global_cleanup(void);

/* Starts a transfer; NULL on failure (nothing will be called). */
struct upstream_xfer *upstream_start(struct upstream *u, const struct upstream_request *req,
                                     const struct upstream_callbacks *cb, void *ud);
/* Resumes delivery after on_data returned UPSTREAM_PAUSE. Event-loop context only;
 * on_data may run before this returns. */
void upstream_resume(struct upstream_xfer *x);
/* Aborts and frees a transfer without calling on_done. Event-loop context only. */
void upstream_cancel(struct upstream_xfer *x);
/* Value of a response header (case-insensitive name), valid until the transfer ends;
 * NULL when absent. */
const char *upstream_header(const struct upstream_xfer *x, const char *name);
/* Number of transfers in flight on this client. */
unsigned upstream_active(const struct upstream *u);
/* Short human-readable name of a result. */
const char *upstream_result_str(enum upstream_result r);

#endif
