/* The scheduler: continuous batching over a backend. Requests join and leave the running batch
 * at every step; each step carries at most max_batch_tokens tokens, shared between one decode
 * token per running sequence and prefill chunks of newer ones, so a long prompt never stalls
 * other streams. The KV pool's fixed-size blocks are handed out from a free list into
 * per-sequence block tables; when they run out a paused sequence, else the newest one, is
 * preempted (its blocks freed, recomputed later from its tokens: outputs do not change).
 * Generated ids are sampled (engine/sampler.h), detokenized into UTF-8-safe pieces, checked
 * against stop ids, stop strings (never emitted, and text that could start one is held back)
 * and max_tokens, and reported through a per-request callback.
 *
 * Threads: sched_submit, sched_cancel, sched_pause and sched_get_stats may be called from any
 * thread. The steps run on the scheduler's own thread (sched_start), or on the caller's through
 * sched_step when no thread was started (tests). Callbacks run on the stepping thread and must
 * not call back into the scheduler except sched_cancel. Engine core: pthreads only. */
#ifndef LLMGATE_ENGINE_SCHEDULER_H
#define LLMGATE_ENGINE_SCHEDULER_H

#include "engine/backend.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"

#include <stddef.h>
#include <stdint.h>

/* sched_submit results */
#define SCHED_OK           0
#define SCHED_E_INVALID    (-1) /* bad request (empty prompt, bad token id, bad params) */
#define SCHED_E_TOO_LONG   (-2) /* prompt does not fit the context window or the KV pool */
#define SCHED_E_OVERLOADED (-3) /* predicted wait above max_wait_ms, or a full queue: 429 */
#define SCHED_E_NOMEM      (-4)
#define SCHED_E_STOPPED    (-5) /* the scheduler is shutting down */

enum sched_finish {
    SCHED_FINISH_STOP,      /* stop id (eos) or stop string */
    SCHED_FINISH_LENGTH,    /* max_tokens, the context window, or a KV pool too small */
    SCHED_FINISH_CANCELLED, /* sched_cancel, or the scheduler shut down */
    SCHED_FINISH_ERROR      /* the backend failed; message in sched_event.error */
};

/* One report to a request. For every sampled token there is one event with finished 0 (text may
 * be empty when held back or when the token only starts a character); the last event has
 * finished 1 and may carry the final text. After it, ud is never used again. */
struct sched_event {
    int32_t token;    /* the id sampled at this step; -1 in a finish event without one */
    const char *text; /* text that became final, valid during the callback only */
    size_t text_len;
    int finished; /* 1 on the last event */
    enum sched_finish reason;
    int prompt_tokens; /* prompt length */
    int completion_tokens;
    const char *error; /* SCHED_FINISH_ERROR: what failed */
};

typedef void (*sched_event_cb)(void *ud, const struct sched_event *ev);

#define SCHED_MAX_STOP 8

/* A request as the caller submits it; everything is copied. */
struct sched_request {
    const int32_t *prompt; /* n_prompt >= 1 ids */
    int n_prompt;
    int max_tokens; /* most tokens to generate; <= 0: up to the context window */
    struct sampler_params sampling;
    const char *stop[SCHED_MAX_STOP]; /* stop strings (non-empty, UTF-8), n_stop of them */
    int n_stop;
    const int32_t *stop_ids; /* extra stop ids besides the model's eos ids */
    int n_stop_ids;
    int ignore_eos; /* 1: the model's eos ids do not stop generation */
    sched_event_cb cb;
    void *ud;
};

struct sched_params {
    int max_batch_tokens; /* tokens per step; 0 = the backend's max_batch_tokens */
    int max_seqs;         /* running sequences at most; 0 = 64 */
    int max_wait_ms;      /* refuse submissions whose predicted wait is above this; 0 = never */
    int max_queue;        /* refuse submissions while this many wait to start; 0 = no bound */
};

/* Published numbers, refreshed after every step. */
struct sched_stats {
    int queued;  /* accepted, waiting to start (including preempted ones) */
    int running; /* in the running batch */
    int paused;  /* paused by sched_pause */
    int kv_blocks_used;
    int kv_blocks_total;
    double tokens_per_s;      /* EWMA of tokens computed per second of forward time */
    double predicted_wait_ms; /* what a new request would wait now */
    uint64_t steps;
    uint64_t preemptions;
    uint64_t tokens_generated;
    uint64_t tokens_prefilled;
};

struct sched;

/* Creates a scheduler over backend b (borrowed; must outlive it). tok (may be NULL: no text)
 * detokenizes outputs and turns stop strings into text matches. 0 and *out (free with
 * sched_free), or -1 with err. */
int sched_create(struct backend *b, const struct tokenizer *tok, const struct sched_params *p,
                 struct sched **out, char *err, size_t errlen);

/* Starts the scheduler thread. 0, or -1 with err. */
int sched_start(struct sched *s, char *err, size_t errlen);

/* Stops the thread (if started), finishes every outstanding request with
 * SCHED_FINISH_CANCELLED (callbacks on the calling thread) and frees everything. NULL: no-op. */
void sched_free(struct sched *s);

/* Queues a request. Returns SCHED_OK and its id in *id (for sched_cancel), or a negative
 * SCHED_E_* code with a message in err; on failure the callback is never called. */
int sched_submit(struct sched *s, const struct sched_request *req, uint64_t *id, char *err,
                 size_t errlen);

/* Asks for request id to be cancelled; it finishes with SCHED_FINISH_CANCELLED at the next step
 * (its blocks freed) unless it finished already. Unknown ids are ignored. Any thread. */
void sched_cancel(struct sched *s, uint64_t id);

/* Pauses (paused 1) or resumes (0) request id from the next step on, for a client that reads
 * its stream slower than it is generated. A paused request is left out of every step (it
 * generates nothing, and its client gets no events) and keeps its KV blocks until another
 * sequence is short of them (then it is recomputed from its tokens on resuming: outputs do not
 * change); resumed, it goes to the front of the queue. Unknown or finished ids are ignored;
 * sched_cancel works on a paused request. 0, or -1 out of memory (nothing changes). Any
 * thread. */
int sched_pause(struct sched *s, uint64_t id, int paused);

/* Runs one step on the calling thread (only when sched_start was not called). Returns 1 if it
 * did work, 0 when there was nothing to do, -1 on a backend failure (the requests in that step
 * finish with SCHED_FINISH_ERROR). */
int sched_step(struct sched *s);

/* Steps until nothing is queued or running (tests). 0, or -1 after a backend failure. */
int sched_run_until_idle(struct sched *s);

/* The longest sequence (prompt plus completion) a request is sure to get: the model's context
 * window, or the KV pool's size in tokens when that is smaller. Any thread. */
int sched_max_context(const struct sched *s);

/* Copies the published numbers. Any thread. */
void sched_get_stats(struct sched *s, struct sched_stats *out);

/* The name of a finish reason as OpenAI writes it ("stop", "length"; "cancelled", "error"). */
const char *sched_finish_name(enum sched_finish r);

#endif
