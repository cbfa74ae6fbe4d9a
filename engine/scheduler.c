/* Continuous batching: admission, the per-step token budget, paged KV block allocation,
 * recompute preemption, cancellation, sampling, stop handling and the published stats. */
#include "engine/scheduler.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Decode tokens a request is expected to need at most, for the wait prediction: requests
 * without max_tokens would otherwise count the whole context window. */
#define PREDICT_DECODE_CAP 256
#define DEFAULT_MAX_SEQS   64

/* ---- sequences ------------------------------------------------------------------------------ */

/* A request inside the scheduler. Lifecycle: incoming (submitted, under the lock) -> waiting ->
 * running -> finished (freed), with running -> waiting again on preemption, and running or
 * waiting -> paused -> the front of waiting on sched_pause. */
struct seq {
    uint64_t id;
    int32_t *tokens; /* prompt then generated ids; capacity max_seq_len + 1 */
    int n_tokens;
    int n_prompt;
    int n_computed;  /* positions already in the KV cache */
    int32_t *blocks; /* block table; capacity kv_blocks_for(max_seq_len) */
    int n_blocks;
    int max_gen; /* generated tokens allowed */
    int n_generated;
    int chunk; /* tokens scheduled in the current step; 0 = not in this step */
    struct sampler sampler;
    char *stop[SCHED_MAX_STOP];
    size_t stop_len[SCHED_MAX_STOP];
    int n_stop;
    int32_t *stop_ids;
    int n_stop_ids;
    int ignore_eos;
    struct tokenizer_stream ts;
    char *pend; /* decoded text not yet released: it might begin a stop string */
    size_t pend_len, pend_cap;
    int cancel;
    int paused; /* in the paused list: its client is not reading (sched_pause) */
    sched_event_cb cb;
    void *ud;
};

/* A growable array of sequence pointers (queues are short; memmove is fine). */
struct seq_list {
    struct seq **v;
    int n, cap;
};

static int list_push(struct seq_list *l, struct seq *q)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        struct seq **v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) return -1;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = q;
    return 0;
}

static int list_push_front(struct seq_list *l, struct seq *q)
{
    if (list_push(l, q) != 0) return -1;
    memmove(l->v + 1, l->v, (size_t)(l->n - 1) * sizeof *l->v);
    l->v[0] = q;
    return 0;
}

static void list_remove_at(struct seq_list *l, int i)
{
    memmove(l->v + i, l->v + i + 1, (size_t)(l->n - i - 1) * sizeof *l->v);
    l->n--;
}

struct pause_op {
    uint64_t id;
    int pause; /* 1 pause, 0 resume */
};

struct sched {
    struct backend *b;
    const struct tokenizer *tok;
    const struct model_config *cfg;
    int max_batch_tokens, max_seqs, max_wait_ms, max_queue;
    size_t piece_cap; /* tokenizer_decode_stream_max */
    char *piece;      /* (piece_cap) */

    /* stepping thread only */
    struct seq_list waiting; /* preempted first, then in arrival order */
    struct seq_list running; /* oldest first */
    struct seq_list paused;  /* out of the batch, KV blocks kept until others need them */
    int32_t *free_blocks;    /* stack of free block ids */
    int n_free;
    struct batch_seq *bseqs; /* (max_seqs) */
    struct seq **bsched;     /* (max_seqs) the sequence behind each batch entry */
    float *logits;           /* (max_seqs, vocab) */
    int32_t eos[MODEL_MAX_EOS + 1];
    int n_eos;
    uint64_t preemptions; /* copied into stats, under mu, by publish_stats */

    /* shared, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct seq_list incoming;
    uint64_t *cancels;
    int n_cancels, cap_cancels;
    struct pause_op *pauses; /* sched_pause calls, in order */
    int n_pauses, cap_pauses;
    uint64_t next_id;
    int stopping;
    double pending_tokens; /* work ahead of a new request, in tokens (published each step) */
    double incoming_tokens;
    struct sched_stats stats;

    pthread_t thread;
    int started;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void seq_free(struct seq *q)
{
    if (!q) return;
    free(q->tokens);
    free(q->blocks);
    sampler_release(&q->sampler);
    for (int i = 0; i < q->n_stop; i++)
        free(q->stop[i]);
    free(q->stop_ids);
    free(q->pend);
    free(q);
}

/* Tokens this sequence still adds to the engine's work (prefill left plus expected decode). */
static double seq_work(const struct seq *q)
{
    int gen_left = q->max_gen - q->n_generated;
    if (gen_left > PREDICT_DECODE_CAP) gen_left = PREDICT_DECODE_CAP;
    return (double)(q->n_tokens - q->n_computed) + (double)(gen_left > 0 ? gen_left : 0);
}

const char *sched_finish_name(enum sched_finish r)
{
    switch (r) {
    case SCHED_FINISH_STOP: return "stop";
    case SCHED_FINISH_LENGTH: return "length";
    case SCHED_FINISH_CANCELLED: return "cancelled";
    default: return "error";
    }
}

/* ---- creation -------------------------------------------------------------------------------- */

int sched_create(struct backend *b, const struct tokenizer *tok, const struct sched_params *p,
                 struct sched **out, char *err, size_t errlen)
{
    *out = NULL;
    struct sched *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "scheduler: out of memory");
        return -1;
    }
    s->b = b;
    s->tok = tok;
    s->cfg = &b->model->cfg;
    s->max_batch_tokens = p->max_batch_tokens > 0 ? p->max_batch_tokens : b->max_batch_tokens;
    s->max_seqs = p->max_seqs > 0 ? p->max_seqs : DEFAULT_MAX_SEQS;
    s->max_wait_ms = p->max_wait_ms > 0 ? p->max_wait_ms : 0;
    s->max_queue = p->max_queue > 0 ? p->max_queue : 0;
    s->next_id = 1;
    if (s->max_batch_tokens > b->max_batch_tokens) {
        snprintf(err, errlen, "scheduler: max_batch_tokens %d above the backend's %d",
                 s->max_batch_tokens, b->max_batch_tokens);
        goto fail_nolock;
    }
    s->piece_cap = tok ? tokenizer_decode_stream_max(tok) : 16;
    s->piece = malloc(s->piece_cap);
    s->free_blocks = malloc((size_t)b->kv.n_blocks * sizeof *s->free_blocks);
    s->bseqs = malloc((size_t)s->max_seqs * sizeof *s->bseqs);
    s->bsched = malloc((size_t)s->max_seqs * sizeof *s->bsched);
    s->logits = malloc((size_t)s->max_seqs * (size_t)s->cfg->vocab_size * sizeof *s->logits);
    if (!s->piece || !s->free_blocks || !s->bseqs || !s->bsched || !s->logits) {
        snprintf(err, errlen, "scheduler: out of memory");
        goto fail_nolock;
    }
    /* Hand out low block ids first (a stack popped from the end). */
    for (int i = 0; i < b->kv.n_blocks; i++)
        s->free_blocks[i] = b->kv.n_blocks - 1 - i;
    s->n_free = b->kv.n_blocks;
    for (int i = 0; i < s->cfg->n_eos; i++)
        s->eos[s->n_eos++] = s->cfg->eos_ids[i];
    if (tok && tokenizer_eos(tok) >= 0) s->eos[s->n_eos++] = tokenizer_eos(tok);
    s->stats.kv_blocks_total = b->kv.n_blocks;
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        snprintf(err, errlen, "scheduler: pthread_mutex_init failed");
        goto fail_nolock;
    }
    if (pthread_cond_init(&s->cv, NULL) != 0) {
        pthread_mutex_destroy(&s->mu);
        snprintf(err, errlen, "scheduler: pthread_cond_init failed");
        goto fail_nolock;
    }
    *out = s;
    return 0;
fail_nolock:
    free(s->piece);
    free(s->free_blocks);
    free(s->bseqs);
    free(s->bsched);
    free(s->logits);
    free(s);
    return -1;
}

/* ---- submission and cancellation (any thread) ------------------------------------------------ */

static int fail(char *err, size_t errlen, int code, const char *msg)
{
    snprintf(err, errlen, "%s", msg);
    return code;
}

/* Builds a sequence from a request; SCHED_OK or a SCHED_E_* code with err. */
static int seq_new(struct sched *s, const struct sched_request *r, struct seq **out, char *err,
                   size_t errlen)
{
    const struct model_config *c = s->cfg;
    *out = NULL;
    if (!r->cb) return fail(err, errlen, SCHED_E_INVALID, "no callback");
    if (!r->prompt || r->n_prompt < 1) return fail(err, errlen, SCHED_E_INVALID, "empty prompt");
    for (int i = 0; i < r->n_prompt; i++)
        if (r->prompt[i] < 0 || r->prompt[i] >= c->vocab_size) {
            snprintf(err, errlen, "prompt token %d is id %d, outside the vocabulary of %d", i,
                     r->prompt[i], c->vocab_size);
            return SCHED_E_INVALID;
        }
    if (r->n_prompt >= c->max_seq_len) {
        snprintf(err, errlen,
                 "the prompt has %d tokens; the model's context window is %d tokens and must "
                 "leave room for at least one generated token",
                 r->n_prompt, c->max_seq_len);
        return SCHED_E_TOO_LONG;
    }
    if (kv_blocks_for(&s->b->kv, r->n_prompt + 1) > s->b->kv.n_blocks) {
        snprintf(err, errlen, "the prompt has %d tokens; the KV cache holds %d", r->n_prompt,
                 s->b->kv.n_blocks * s->b->kv.block_size - 1);
        return SCHED_E_TOO_LONG;
    }
    const struct sampler_params *sp = &r->sampling;
    if (!(sp->temperature >= 0.0f && sp->temperature <= 100.0f) ||
        !(sp->top_p > 0.0f && sp->top_p <= 1.0f) || sp->top_k < 0 ||
        !(fabsf(sp->presence_penalty) <= 2.0f) || !(fabsf(sp->frequency_penalty) <= 2.0f))
        return fail(err, errlen, SCHED_E_INVALID, "sampling parameters out of range");
    if (r->n_stop < 0 || r->n_stop > SCHED_MAX_STOP || (r->n_stop > 0 && !s->tok) ||
        r->n_stop_ids < 0 || (r->n_stop_ids > 0 && !r->stop_ids))
        return fail(err, errlen, SCHED_E_INVALID, "bad stop strings or stop ids");

    struct seq *q = calloc(1, sizeof *q);
    if (!q) return fail(err, errlen, SCHED_E_NOMEM, "out of memory");
    q->tokens = malloc(((size_t)c->max_seq_len + 1) * sizeof *q->tokens);
    q->blocks = malloc((size_t)kv_blocks_for(&s->b->kv, c->max_seq_len + 1) * sizeof *q->blocks);
    if (!q->tokens || !q->blocks || sampler_init(&q->sampler, sp, c->vocab_size) != 0) goto oom;
    memcpy(q->tokens, r->prompt, (size_t)r->n_prompt * sizeof *q->tokens);
    q->n_tokens = q->n_prompt = r->n_prompt;
    int room = c->max_seq_len - r->n_prompt;
    q->max_gen = r->max_tokens > 0 && r->max_tokens < room ? r->max_tokens : room;
    for (int i = 0; i < r->n_stop; i++) {
        if (!r->stop[i] || !r->stop[i][0]) {
            seq_free(q);
            return fail(err, errlen, SCHED_E_INVALID, "empty stop string");
        }
        q->stop[i] = strdup(r->stop[i]);
        if (!q->stop[i]) goto oom;
        q->stop_len[i] = strlen(q->stop[i]);
        q->n_stop = i + 1;
    }
    if (r->n_stop_ids > 0) {
        q->stop_ids = malloc((size_t)r->n_stop_ids * sizeof *q->stop_ids);
        if (!q->stop_ids) goto oom;
        memcpy(q->stop_ids, r->stop_ids, (size_t)r->n_stop_ids * sizeof *q->stop_ids);
        q->n_stop_ids = r->n_stop_ids;
    }
    q->ignore_eos = r->ignore_eos;
    if (s->tok) tokenizer_decode_stream_init(&q->ts, s->tok, TOK_DECODE_SKIP_SPECIAL);
    q->cb = r->cb;
    q->ud = r->ud;
    *out = q;
    return SCHED_OK;
oom:
    seq_free(q);
    return fail(err, errlen, SCHED_E_NOMEM, "out of memory");
}

static double predicted_wait_ms_locked(const struct sched *s, double extra_tokens)
{
    double tps = s->stats.tokens_per_s;
    if (!(tps > 0.0)) return 0.0; /* nothing measured yet: no basis to refuse */
    return (s->pending_tokens + s->incoming_tokens + extra_tokens) / tps * 1000.0;
}

int sched_submit(struct sched *s, const struct sched_request *req, uint64_t *id, char *err,
                 size_t errlen)
{
    struct seq *q;
    int rc = seq_new(s, req, &q, err, errlen);
    if (rc != SCHED_OK) return rc;
    pthread_mutex_lock(&s->mu);
    /* waiting to start: the waiting list as the scheduler last counted it, plus what it has not
     * taken in yet */
    int queued = s->stats.queued + s->incoming.n;
    if (s->stopping) {
        rc = SCHED_E_STOPPED;
        snprintf(err, errlen, "the engine is shutting down");
    } else if (s->max_queue > 0 && queued >= s->max_queue) {
        rc = SCHED_E_OVERLOADED;
        snprintf(err, errlen,
                 "the engine is overloaded: %d requests are waiting, the queue's bound", queued);
    } else if (s->max_wait_ms > 0 && predicted_wait_ms_locked(s, 0.0) > s->max_wait_ms) {
        rc = SCHED_E_OVERLOADED;
        snprintf(err, errlen,
                 "the engine is overloaded: predicted wait %.0f ms is above the bound of %d ms",
                 predicted_wait_ms_locked(s, 0.0), s->max_wait_ms);
    } else if (list_push(&s->incoming, q) != 0) {
        rc = SCHED_E_NOMEM;
        snprintf(err, errlen, "out of memory");
    } else {
        q->id = s->next_id++;
        *id = q->id;
        s->incoming_tokens += seq_work(q);
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != SCHED_OK) seq_free(q);
    return rc;
}

void sched_cancel(struct sched *s, uint64_t id)
{
    pthread_mutex_lock(&s->mu);
    if (s->n_cancels == s->cap_cancels) {
        int cap = s->cap_cancels ? 2 * s->cap_cancels : 16;
        uint64_t *v = realloc(s->cancels, (size_t)cap * sizeof *v);
        if (v) {
            s->cancels = v;
            s->cap_cancels = cap;
        }
    }
    /* Out of memory: the cancel is lost and the request runs to its end (still freed then). */
    if (s->n_cancels < s->cap_cancels) s->cancels[s->n_cancels++] = id;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

int sched_pause(struct sched *s, uint64_t id, int paused)
{
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    if (s->n_pauses == s->cap_pauses) {
        int cap = s->cap_pauses ? 2 * s->cap_pauses : 16;
        struct pause_op *v = realloc(s->pauses, (size_t)cap * sizeof *v);
        if (v) {
            s->pauses = v;
            s->cap_pauses = cap;
        }
    }
    if (s->n_pauses < s->cap_pauses) {
        s->pauses[s->n_pauses++] = (struct pause_op){id, paused != 0};
        pthread_cond_signal(&s->cv);
    } else {
        rc = -1;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int sched_max_context(const struct sched *s)
{
    /* A sequence of n tokens has n - 1 of them in the KV cache (the last is never fed back),
     * and a prompt needs one slot more than its length: a pool of P tokens serves any prompt
     * plus completion of up to P. */
    long pool = (long)s->b->kv.n_blocks * s->b->kv.block_size;
    return pool < s->cfg->max_seq_len ? (int)pool : s->cfg->max_seq_len;
}

void sched_get_stats(struct sched *s, struct sched_stats *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    out->queued += s->incoming.n;
    out->predicted_wait_ms = predicted_wait_ms_locked(s, 0.0);
    pthread_mutex_unlock(&s->mu);
}

/* ---- KV blocks ------------------------------------------------------------------------------- */

static void release_blocks(struct sched *s, struct seq *q)
{
    for (int i = q->n_blocks - 1; i >= 0; i--)
        s->free_blocks[s->n_free++] = q->blocks[i];
    q->n_blocks = 0;
}

/* Grows q's block table to cover n_pos positions; 0, or -1 when the pool is short. */
static int grow_blocks(struct sched *s, struct seq *q, int n_pos)
{
    int need = kv_blocks_for(&s->b->kv, n_pos);
    if (need - q->n_blocks > s->n_free) return -1;
    while (q->n_blocks < need)
        q->blocks[q->n_blocks++] = s->free_blocks[--s->n_free];
    return 0;
}

/* ---- output ---------------------------------------------------------------------------------- */

static void emit(struct seq *q, int32_t token, const char *text, size_t len, int finished,
                 enum sched_finish reason, const char *error)
{
    struct sched_event ev = {.token = token,
                             .text = text ? text : "",
                             .text_len = len,
                             .finished = finished,
                             .reason = reason,
                             .prompt_tokens = q->n_prompt,
                             .completion_tokens = q->n_generated,
                             .error = error};
    q->cb(q->ud, &ev);
}

static int pend_add(struct seq *q, const char *p, size_t n)
{
    if (q->pend_len + n + 1 > q->pend_cap) {
        size_t cap = q->pend_cap ? q->pend_cap : 64;
        while (cap < q->pend_len + n + 1)
            cap *= 2;
        char *np = realloc(q->pend, cap);
        if (!np) return -1;
        q->pend = np;
        q->pend_cap = cap;
    }
    memcpy(q->pend + q->pend_len, p, n);
    q->pend_len += n;
    q->pend[q->pend_len] = '\0';
    return 0;
}

/* Earliest occurrence of any stop string in the pending text, or -1. */
static long find_stop(const struct seq *q)
{
    long best = -1;
    for (int i = 0; i < q->n_stop; i++) {
        const char *hit = NULL;
        if (q->stop_len[i] <= q->pend_len) hit = strstr(q->pend, q->stop[i]);
        if (hit && (best < 0 || hit - q->pend < best)) best = hit - q->pend;
    }
    return best;
}

/* Length of the pending text that can be released: everything up to the first position from
 * which the rest could still grow into a stop string. */
static size_t releasable(const struct seq *q)
{
    size_t keep_from = q->pend_len;
    for (int i = 0; i < q->n_stop; i++) {
        size_t sl = q->stop_len[i];
        size_t k0 = q->pend_len >= sl ? q->pend_len - sl + 1 : 0;
        for (size_t k = k0; k < keep_from; k++)
            if (memcmp(q->pend + k, q->stop[i], q->pend_len - k) == 0) {
                keep_from = k;
                break;
            }
    }
    return keep_from;
}

static int is_stop_id(const struct sched *s, const struct seq *q, int32_t id)
{
    if (!q->ignore_eos)
        for (int i = 0; i < s->n_eos; i++)
            if (s->eos[i] == id) return 1;
    for (int i = 0; i < q->n_stop_ids; i++)
        if (q->stop_ids[i] == id) return 1;
    return 0;
}

/* Handles a freshly sampled id: appends it, emits its text, decides whether q is finished.
 * Returns 1 when it finished (the finish event has been sent). */
static int seq_accept(struct sched *s, struct seq *q, int32_t id)
{
    q->tokens[q->n_tokens++] = id;
    q->n_generated++;
    sampler_accept(&q->sampler, id);
    int stop_id = is_stop_id(s, q, id);
    int at_length = !stop_id && q->n_generated >= q->max_gen;
    size_t n = 0;
    if (s->tok && !stop_id) {
        if (tokenizer_decode_stream_push(&q->ts, id, s->piece, s->piece_cap, &n) == 0 && n > 0 &&
            pend_add(q, s->piece, n) != 0)
            goto oom;
    }
    if (s->tok && (stop_id || at_length)) {
        if (tokenizer_decode_stream_flush(&q->ts, s->piece, s->piece_cap, &n) == 0 && n > 0 &&
            pend_add(q, s->piece, n) != 0)
            goto oom;
    }
    long hit = q->n_stop ? find_stop(q) : -1;
    if (hit >= 0) {
        emit(q, id, q->pend, (size_t)hit, 1, SCHED_FINISH_STOP, NULL);
        return 1;
    }
    if (stop_id || at_length) {
        emit(q, id, q->pend, q->pend_len, 1, stop_id ? SCHED_FINISH_STOP : SCHED_FINISH_LENGTH,
             NULL);
        return 1;
    }
    size_t r = q->n_stop ? releasable(q) : q->pend_len;
    emit(q, id, q->pend, r, 0, SCHED_FINISH_STOP, NULL);
    if (r > 0) {
        memmove(q->pend, q->pend + r, q->pend_len - r);
        q->pend_len -= r;
        q->pend[q->pend_len] = '\0';
    }
    return 0;
oom:
    emit(q, id, "", 0, 1, SCHED_FINISH_ERROR, "out of memory");
    return 1;
}

/* Ends q with a finish event that carries no token, and frees it (blocks too). */
static void seq_end(struct sched *s, struct seq *q, enum sched_finish reason, const char *error)
{
    release_blocks(s, q);
    emit(q, -1, "", 0, 1, reason, error);
    seq_free(q);
}

/* ---- the step -------------------------------------------------------------------------------- */

/* Moves running[i] back to the front of the queue; it will be recomputed from its tokens. */
static void preempt(struct sched *s, int i)
{
    struct seq *q = s->running.v[i];
    list_remove_at(&s->running, i);
    release_blocks(s, q);
    q->n_computed = 0;
    q->chunk = 0;
    if (list_push_front(&s->waiting, q) != 0) {
        seq_end(s, q, SCHED_FINISH_ERROR, "out of memory");
        return;
    }
    s->preemptions++; /* not stats.preemptions: other threads read stats under mu */
}

/* Frees the KV blocks of the most recently paused sequence that holds some, for a sequence
 * that is short of them; it is recomputed when resumed. 1 if blocks came back. */
static int reclaim_paused(struct sched *s)
{
    for (int i = s->paused.n - 1; i >= 0; i--) {
        struct seq *q = s->paused.v[i];
        if (q->n_blocks == 0) continue;
        release_blocks(s, q);
        q->n_computed = 0;
        s->preemptions++;
        return 1;
    }
    return 0;
}

static int list_find(const struct seq_list *l, uint64_t id)
{
    for (int i = 0; i < l->n; i++)
        if (l->v[i]->id == id) return i;
    return -1;
}

/* Applies one sched_pause call. A paused sequence leaves the batch (or the queue) with its
 * blocks; a resumed one goes to the front of the queue, as a preempted one does. */
static void apply_pause(struct sched *s, const struct pause_op *op)
{
    if (op->pause) {
        struct seq_list *from = &s->running;
        int i = list_find(from, op->id);
        if (i < 0) i = list_find(from = &s->waiting, op->id);
        if (i < 0) return; /* finished, or paused already */
        struct seq *q = from->v[i];
        if (list_push(&s->paused, q) != 0) return; /* out of memory: it runs on */
        list_remove_at(from, i);
        q->paused = 1;
        q->chunk = 0;
        return;
    }
    int i = list_find(&s->paused, op->id);
    if (i < 0) return;
    struct seq *q = s->paused.v[i];
    list_remove_at(&s->paused, i);
    q->paused = 0;
    if (list_push_front(&s->waiting, q) != 0) seq_end(s, q, SCHED_FINISH_ERROR, "out of memory");
}

/* Takes what the other threads handed over: new requests, pauses and cancellations. */
static void take_inbox(struct sched *s)
{
    uint64_t stack_ids[64], *ids = stack_ids;
    int n_ids, n_pauses;
    struct pause_op *pauses;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->incoming.n; i++) {
        if (list_push(&s->waiting, s->incoming.v[i]) != 0) {
            /* keep the rest for the next step */
            memmove(s->incoming.v, s->incoming.v + i, (size_t)(s->incoming.n - i) * sizeof(void *));
            s->incoming.n -= i;
            goto cancels;
        }
    }
    s->incoming.n = 0;
    s->incoming_tokens = 0;
cancels:
    pauses = s->pauses; /* applied after the unlock: apply_pause may emit a finish event */
    n_pauses = s->n_pauses;
    s->pauses = NULL;
    s->n_pauses = s->cap_pauses = 0;
    s->stats.queued = s->waiting.n; /* sched_submit's queue bound counts them from now on */
    n_ids = s->n_cancels;
    if (n_ids > (int)(sizeof stack_ids / sizeof *stack_ids)) {
        ids = s->cancels;
        s->cancels = NULL;
        s->cap_cancels = 0;
    } else if (n_ids > 0) {
        memcpy(stack_ids, s->cancels, (size_t)n_ids * sizeof *ids);
    }
    s->n_cancels = 0;
    pthread_mutex_unlock(&s->mu);

    if (n_pauses > 0) {
        for (int i = 0; i < n_pauses; i++)
            apply_pause(s, &pauses[i]);
        /* published at once: a request resumed here counts as not paused before it runs */
        pthread_mutex_lock(&s->mu);
        s->stats.queued = s->waiting.n;
        s->stats.paused = s->paused.n;
        pthread_mutex_unlock(&s->mu);
    }
    free(pauses);

    struct seq_list *lists[3] = {&s->waiting, &s->running, &s->paused};
    for (int k = 0; k < n_ids; k++) {
        for (int l = 0; l < 3; l++)
            for (int i = 0; i < lists[l]->n; i++)
                if (lists[l]->v[i]->id == ids[k]) lists[l]->v[i]->cancel = 1;
    }
    if (ids != stack_ids) free(ids);
    for (int l = 0; l < 3; l++) {
        struct seq_list *L = lists[l];
        for (int i = 0; i < L->n;) {
            struct seq *q = L->v[i];
            if (!q->cancel) {
                i++;
                continue;
            }
            list_remove_at(L, i);
            seq_end(s, q, SCHED_FINISH_CANCELLED, NULL);
        }
    }
}

/* Gives running[i] its share of the budget, preempting newer sequences when blocks run out.
 * Returns 1 when running[i] itself left the running list. */
static int schedule_running(struct sched *s, int i, int *budget, int *preempted)
{
    struct seq *q = s->running.v[i];
    int n = q->n_tokens - q->n_computed;
    if (n > *budget) n = *budget;
    if (n <= 0) return 0;
    while (grow_blocks(s, q, q->n_computed + n) != 0) {
        if (reclaim_paused(s)) continue; /* their clients wait anyway */
        int victim = s->running.n - 1;
        *preempted = 1;
        if (victim == i) {
            if (s->running.n == 1) {
                /* Alone and still short: the pool cannot hold this sequence any longer. */
                list_remove_at(&s->running, i);
                seq_end(s, q, SCHED_FINISH_LENGTH, NULL);
                return 1;
            }
            preempt(s, i);
            return 1;
        }
        *budget += s->running.v[victim]->chunk;
        preempt(s, victim);
    }
    q->chunk = n;
    *budget -= n;
    return 0;
}

static void publish_stats(struct sched *s, double step_tokens, double dt)
{
    double pending = 0.0;
    for (int i = 0; i < s->waiting.n; i++)
        pending += seq_work(s->waiting.v[i]);
    for (int i = 0; i < s->running.n; i++)
        pending += seq_work(s->running.v[i]);
    pthread_mutex_lock(&s->mu);
    struct sched_stats *st = &s->stats;
    if (step_tokens > 0 && dt > 0) {
        double tps = step_tokens / dt;
        st->tokens_per_s = st->tokens_per_s > 0 ? 0.8 * st->tokens_per_s + 0.2 * tps : tps;
    }
    s->pending_tokens = pending;
    st->queued = s->waiting.n;
    st->running = s->running.n;
    st->paused = s->paused.n;
    st->kv_blocks_used = s->b->kv.n_blocks - s->n_free;
    st->preemptions = s->preemptions;
    pthread_mutex_unlock(&s->mu);
}

int sched_step(struct sched *s)
{
    take_inbox(s);
    if (s->running.n == 0 && s->waiting.n == 0) {
        publish_stats(s, 0, 0);
        return 0;
    }
    int budget = s->max_batch_tokens, preempted = 0;
    for (int i = 0; i < s->running.n; i++)
        s->running.v[i]->chunk = 0;
    /* Decode tokens first (one per sequence, oldest first), then prefill chunks of running
     * sequences, so a long prompt does not hold up streams that are already generating. */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < s->running.n;) {
            struct seq *q = s->running.v[i];
            int decoding = q->n_tokens - q->n_computed == 1;
            if (q->chunk > 0 || decoding != (pass == 0)) {
                i++;
                continue;
            }
            if (schedule_running(s, i, &budget, &preempted) == 0) i++;
        }
    /* Admission: new or preempted sequences, in queue order, while budget and blocks last. No
     * admission in a step that had to preempt (it would only thrash). */
    while (!preempted && budget > 0 && s->waiting.n > 0 && s->running.n < s->max_seqs) {
        struct seq *q = s->waiting.v[0];
        int n = q->n_tokens - q->n_computed;
        if (n > budget) n = budget;
        if (grow_blocks(s, q, q->n_computed + n) != 0) {
            if (reclaim_paused(s)) continue;
            if (s->running.n > 0) break; /* wait for blocks to come back */
            /* Alone with the whole pool and still short: a preempted sequence that outgrew
             * the pool. It cannot continue. */
            list_remove_at(&s->waiting, 0);
            seq_end(s, q, SCHED_FINISH_LENGTH, NULL);
            continue;
        }
        if (list_push(&s->running, q) != 0) {
            release_blocks(s, q);
            break;
        }
        list_remove_at(&s->waiting, 0);
        q->chunk = n;
        budget -= n;
    }

    int nb = 0, step_tokens = 0;
    for (int i = 0; i < s->running.n && nb < s->max_seqs; i++) {
        struct seq *q = s->running.v[i];
        if (q->chunk <= 0) continue;
        s->bseqs[nb] = (struct batch_seq){q->tokens + q->n_computed, q->chunk, q->n_computed,
                                          q->blocks, q->n_blocks};
        s->bsched[nb++] = q;
        step_tokens += q->chunk;
    }
    if (nb == 0) {
        publish_stats(s, 0, 0);
        return 1;
    }
    struct batch batch = {s->bseqs, nb, 0};
    char err[256];
    double t0 = now_s();
    int rc = backend_forward(s->b, &batch, s->logits, err, sizeof err);
    double dt = now_s() - t0;
    if (rc != 0) {
        for (int k = 0; k < nb; k++) {
            struct seq *q = s->bsched[k];
            for (int i = 0; i < s->running.n; i++)
                if (s->running.v[i] == q) {
                    list_remove_at(&s->running, i);
                    break;
                }
            seq_end(s, q, SCHED_FINISH_ERROR, err);
        }
        publish_stats(s, 0, 0);
        return -1;
    }
    uint64_t prefilled = 0, generated = 0;
    for (int k = 0; k < nb; k++) {
        struct seq *q = s->bsched[k];
        q->n_computed += q->chunk;
        if (q->chunk > 1) prefilled += (uint64_t)q->chunk;
        q->chunk = 0;
        if (q->n_computed < q->n_tokens) continue; /* mid-prefill: the logits are not needed */
        float *row = s->logits + (size_t)k * (size_t)s->cfg->vocab_size;
        int32_t id = sampler_sample(&q->sampler, row);
        generated++;
        if (seq_accept(s, q, id)) {
            for (int i = 0; i < s->running.n; i++)
                if (s->running.v[i] == q) {
                    list_remove_at(&s->running, i);
                    break;
                }
            release_blocks(s, q);
            seq_free(q);
        }
    }
    pthread_mutex_lock(&s->mu);
    s->stats.steps++;
    s->stats.tokens_generated += generated;
    s->stats.tokens_prefilled += prefilled;
    pthread_mutex_unlock(&s->mu);
    publish_stats(s, (double)step_tokens, dt);
    return 1;
}

int sched_run_until_idle(struct sched *s)
{
    int rc, failed = 0;
    while ((rc = sched_step(s)) != 0)
        if (rc < 0) failed = 1;
    return failed ? -1 : 0;
}

/* ---- thread ---------------------------------------------------------------------------------- */

static void *sched_main(void *arg)
{
    struct sched *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        /* paused sequences are no work: they wait for a sched_pause that resumes them */
        while (!s->stopping && s->incoming.n == 0 && s->n_cancels == 0 && s->n_pauses == 0 &&
               s->running.n == 0 && s->waiting.n == 0)
            pthread_cond_wait(&s->cv, &s->mu);
        int stop = s->stopping;
        pthread_mutex_unlock(&s->mu);
        if (stop) break;
        (void)sched_step(s); /* a failed step already finished its requests with an error */
    }
    return NULL;
}

int sched_start(struct sched *s, char *err, size_t errlen)
{
    int rc = pthread_create(&s->thread, NULL, sched_main, s);
    if (rc != 0) {
        snprintf(err, errlen, "scheduler: pthread_create: %s", strerror(rc));
        return -1;
    }
    s->started = 1;
    return 0;
}

void sched_free(struct sched *s)
{
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->started) pthread_join(s->thread, NULL);
    struct seq_list *lists[4] = {&s->running, &s->paused, &s->waiting, &s->incoming};
    for (int l = 0; l < 4; l++) {
        for (int i = 0; i < lists[l]->n; i++)
            seq_end(s, lists[l]->v[i], SCHED_FINISH_CANCELLED, NULL);
        free(lists[l]->v);
    }
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s->cancels);
    free(s->pauses);
    free(s->piece);
    free(s->free_blocks);
    free(s->bseqs);
    free(s->bsched);
    free(s->logits);
    free(s);
}
