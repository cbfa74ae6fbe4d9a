/* Tests for the scheduler on a tiny random model made with mkmodel: batched runs give the tokens
 * of solo runs, chunked prefill and preemption change nothing, cancellation frees blocks, paused
 * sequences get no steps and resume unchanged, stop strings are never emitted, seeds reproduce,
 * and an overloaded engine refuses work. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "engine/backend.h"
#include "engine/mkmodel.h"
#include "engine/model.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_dir[64];
static struct model *g_model;
static struct tokenizer *g_tok;

static int setup(void **state)
{
    (void)state;
    char err[512];
    snprintf(g_dir, sizeof g_dir, "/tmp/srv-sched.XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    struct mkmodel_spec spec;
    if (mkmodel_preset("qwen2-tiny", &spec) != 0) return -1;
    spec.seed = 5;
    spec.init_std = 0.5f; /* peaked logits: greedy choices are far from ties */
    if (mkmodel_write(&spec, g_dir, err, sizeof err) != 0 ||
        model_load(g_dir, &g_model, err, sizeof err) != 0 ||
        tokenizer_load(g_dir, &g_tok, err, sizeof err) != 0) {
        fprintf(stderr, "setup: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tokenizer_free(g_tok);
    model_free(g_model);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- harness --------------------------------------------------------------------------------- */

#define MAXGEN 512

/* What one request received through its callback. */
struct out {
    int32_t tokens[MAXGEN];
    int n_tokens;
    char text[8192];
    size_t text_len;
    int finished, events;
    enum sched_finish reason;
    int prompt_tokens, completion_tokens;
    pthread_mutex_t *mu; /* threaded tests */
    pthread_cond_t *cv;
    int hold_after_first; /* threaded cancel: the scheduler thread waits here after a token */
    int released;         /* ...until the test thread has issued its cancel */
};

static void on_event(void *ud, const struct sched_event *ev)
{
    struct out *o = ud;
    if (o->mu) pthread_mutex_lock(o->mu);
    assert_false(o->finished);
    o->events++;
    if (ev->token >= 0 && o->n_tokens < MAXGEN) o->tokens[o->n_tokens++] = ev->token;
    assert_true(o->text_len + ev->text_len < sizeof o->text);
    memcpy(o->text + o->text_len, ev->text, ev->text_len);
    o->text_len += ev->text_len;
    o->text[o->text_len] = '\0';
    if (ev->finished) {
        o->finished = 1;
        o->reason = ev->reason;
        o->prompt_tokens = ev->prompt_tokens;
        o->completion_tokens = ev->completion_tokens;
    }
    if (o->cv) pthread_cond_broadcast(o->cv);
    /* Blocking the scheduler thread here makes the cross-thread cancel deterministic:
     * it is queued before the next step, however loaded the machine is. */
    while (o->hold_after_first && !o->released && !o->finished)
        pthread_cond_wait(o->cv, o->mu);
    if (o->mu) pthread_mutex_unlock(o->mu);
}

struct env {
    struct backend *b;
    struct sched *s;
};

static void env_open(struct env *e, int block_size, int n_blocks, int max_batch_tokens,
                     int max_wait_ms)
{
    char err[256];
    struct backend_params bp = {
        .n_threads = 1, .block_size = block_size, .n_blocks = n_blocks, .max_batch_tokens = 256};
    if (backend_cpu_create(g_model, &bp, &e->b, err, sizeof err) != 0) fail_msg("%s", err);
    struct sched_params sp = {.max_batch_tokens = max_batch_tokens, .max_wait_ms = max_wait_ms};
    if (sched_create(e->b, g_tok, &sp, &e->s, err, sizeof err) != 0) fail_msg("%s", err);
}

static void env_close(struct env *e)
{
    struct sched_stats st;
    sched_get_stats(e->s, &st);
    assert_int_equal(st.kv_blocks_used, 0); /* every block came back */
    sched_free(e->s);
    backend_free(e->b);
}

/* A deterministic prompt of n ids (never a special token). */
static void make_prompt(int32_t *p, int n, int salt)
{
    for (int i = 0; i < n; i++)
        p[i] = (int32_t)(((i + 1) * 37 + salt * 101) % 400) + 10;
}

static void greedy_req(struct sched_request *r, const int32_t *prompt, int n, int max_tokens,
                       struct out *o)
{
    memset(r, 0, sizeof *r);
    r->prompt = prompt;
    r->n_prompt = n;
    r->max_tokens = max_tokens;
    sampler_params_default(&r->sampling);
    r->sampling.temperature = 0.0f;
    r->ignore_eos = 1;
    r->cb = on_event;
    r->ud = o;
}

static uint64_t submit_ok(struct sched *s, const struct sched_request *r)
{
    uint64_t id = 0;
    char err[256];
    int rc = sched_submit(s, r, &id, err, sizeof err);
    if (rc != SCHED_OK) fail_msg("submit: %d %s", rc, err);
    return id;
}

/* Runs each request alone on a roomy scheduler: the reference outputs. */
static void run_alone(struct sched_request *reqs, struct out *outs, int n)
{
    struct env e;
    env_open(&e, 16, 256, 256, 0);
    for (int i = 0; i < n; i++) {
        memset(&outs[i], 0, sizeof outs[i]);
        reqs[i].ud = &outs[i];
        submit_ok(e.s, &reqs[i]);
        assert_int_equal(sched_run_until_idle(e.s), 0);
        assert_true(outs[i].finished);
    }
    env_close(&e);
}

static void assert_same(const struct out *a, const struct out *b)
{
    assert_int_equal(a->n_tokens, b->n_tokens);
    assert_memory_equal(a->tokens, b->tokens, (size_t)a->n_tokens * sizeof a->tokens[0]);
    assert_string_equal(a->text, b->text);
    assert_int_equal(a->reason, b->reason);
}

/* ---- tests ------------------------------------------------------------------------------------
 */

#define NREQ 5

static int32_t g_prompts[NREQ][200];
static const int g_plen[NREQ] = {3, 17, 40, 9, 120};
static const int g_gen[NREQ] = {20, 7, 25, 30, 12};

static void make_reqs(struct sched_request *reqs)
{
    for (int i = 0; i < NREQ; i++) {
        make_prompt(g_prompts[i], g_plen[i], i);
        greedy_req(&reqs[i], g_prompts[i], g_plen[i], g_gen[i], NULL);
    }
}

static void test_batching_matches_alone(void **state)
{
    (void)state;
    struct sched_request reqs[NREQ];
    static struct out alone[NREQ], batched[NREQ];
    make_reqs(reqs);
    run_alone(reqs, alone, NREQ);
    for (int i = 0; i < NREQ; i++) {
        assert_int_equal(alone[i].n_tokens, g_gen[i]);
        assert_int_equal(alone[i].reason, SCHED_FINISH_LENGTH);
        assert_int_equal(alone[i].completion_tokens, g_gen[i]);
        assert_int_equal(alone[i].prompt_tokens, g_plen[i]);
        /* streamed pieces add up to the decoded ids */
        char *text = NULL;
        size_t len = 0;
        assert_int_equal(tokenizer_decode_ex(g_tok, alone[i].tokens, (size_t)alone[i].n_tokens,
                                             TOK_DECODE_SKIP_SPECIAL, &text, &len),
                         0);
        assert_string_equal(text, alone[i].text);
        free(text);
    }

    /* all at once, and staggered: requests join a batch that is already running */
    for (int stagger = 0; stagger < 2; stagger++) {
        struct env e;
        env_open(&e, 16, 256, 64, 0);
        memset(batched, 0, sizeof batched);
        for (int i = 0; i < NREQ; i++) {
            reqs[i].ud = &batched[i];
            submit_ok(e.s, &reqs[i]);
            if (stagger) {
                assert_true(sched_step(e.s) >= 0);
                assert_true(sched_step(e.s) >= 0);
            }
        }
        struct sched_stats st;
        sched_get_stats(e.s, &st);
        if (stagger) assert_true(st.kv_blocks_used > 0 && st.running > 0);
        assert_int_equal(sched_run_until_idle(e.s), 0);
        for (int i = 0; i < NREQ; i++)
            assert_same(&batched[i], &alone[i]);
        sched_get_stats(e.s, &st);
        assert_int_equal(st.running, 0);
        assert_int_equal(st.queued, 0);
        assert_true(st.tokens_per_s > 0);
        env_close(&e);
    }
}

static void test_chunked_prefill(void **state)
{
    (void)state;
    struct sched_request reqs[NREQ];
    static struct out alone[NREQ], chunked[NREQ];
    make_reqs(reqs);
    run_alone(reqs, alone, NREQ);
    /* 8 tokens per step: the 120-token prompt takes many steps, while the others keep going */
    struct env e;
    env_open(&e, 16, 256, 8, 0);
    memset(chunked, 0, sizeof chunked);
    reqs[4].ud = &chunked[4];
    submit_ok(e.s, &reqs[4]); /* the long one first */
    for (int i = 0; i < 4; i++) {
        reqs[i].ud = &chunked[i];
        submit_ok(e.s, &reqs[i]);
    }
    int steps = 0;
    while (sched_step(e.s) != 0)
        steps++;
    assert_true(steps >= 120 / 8);
    for (int i = 0; i < NREQ; i++)
        assert_same(&chunked[i], &alone[i]);
    env_close(&e);
}

static void test_preemption(void **state)
{
    (void)state;
    struct sched_request reqs[NREQ];
    static struct out alone[NREQ], tight[NREQ];
    make_reqs(reqs);
    run_alone(reqs, alone, NREQ);
    /* 4-token blocks, 40 blocks = 160 positions: the longest request needs 132 alone, all five
     * together 313, so sequences are preempted and recomputed */
    struct env e;
    env_open(&e, 4, 40, 64, 0);
    memset(tight, 0, sizeof tight);
    for (int i = 0; i < NREQ; i++) {
        reqs[i].ud = &tight[i];
        submit_ok(e.s, &reqs[i]);
    }
    assert_int_equal(sched_run_until_idle(e.s), 0);
    for (int i = 0; i < NREQ; i++)
        assert_same(&tight[i], &alone[i]);
    struct sched_stats st;
    sched_get_stats(e.s, &st);
    assert_true(st.preemptions > 0);
    env_close(&e);

    /* a prompt larger than the whole pool is refused up front */
    env_open(&e, 4, 10, 64, 0);
    uint64_t id;
    char err[256];
    assert_int_equal(sched_submit(e.s, &reqs[4], &id, err, sizeof err), SCHED_E_TOO_LONG);
    /* one that fits but cannot grow ends with "length" when the pool is full */
    struct out o = {0};
    struct sched_request r = reqs[1]; /* 17 prompt tokens, 5 blocks */
    r.max_tokens = 100;
    r.ud = &o;
    submit_ok(e.s, &r);
    assert_int_equal(sched_run_until_idle(e.s), 0);
    assert_int_equal(o.reason, SCHED_FINISH_LENGTH);
    assert_int_equal(o.completion_tokens, 40 - 17 + 1);
    env_close(&e);

    /* two of them in that pool: the newer one is preempted, both end with "length" and the
     * tokens of an unconstrained run */
    static struct out two[2], roomy;
    memset(two, 0, sizeof two);
    memset(&roomy, 0, sizeof roomy);
    r.ud = &roomy;
    run_alone(&r, &roomy, 1);
    env_open(&e, 4, 10, 64, 0);
    for (int i = 0; i < 2; i++) {
        r.ud = &two[i];
        submit_ok(e.s, &r);
    }
    assert_int_equal(sched_run_until_idle(e.s), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(two[i].reason, SCHED_FINISH_LENGTH);
        assert_int_equal(two[i].n_tokens, 24);
        assert_memory_equal(two[i].tokens, roomy.tokens, 24 * sizeof(int32_t));
    }
    struct sched_stats st2;
    sched_get_stats(e.s, &st2);
    assert_true(st2.preemptions > 0);
    env_close(&e);
}

/* Preemptions on the scheduler thread while another thread reads the stats: the counter is
 * published under the lock (a ThreadSanitizer build flags any unlocked update), grows
 * monotonically, and the outputs are those of solo runs. */
static void test_stats_while_stepping(void **state)
{
    (void)state;
    struct sched_request reqs[NREQ];
    static struct out alone[NREQ], tight[NREQ];
    make_reqs(reqs);
    run_alone(reqs, alone, NREQ);
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    struct env e;
    env_open(&e, 4, 40, 64, 0); /* the pool of test_preemption: preempts */
    memset(tight, 0, sizeof tight);
    char err[256];
    assert_int_equal(sched_start(e.s, err, sizeof err), 0);
    for (int i = 0; i < NREQ; i++) {
        tight[i].mu = &mu;
        tight[i].cv = &cv;
        reqs[i].ud = &tight[i];
        submit_ok(e.s, &reqs[i]);
    }
    uint64_t last = 0;
    struct sched_stats st;
    pthread_mutex_lock(&mu);
    for (;;) {
        int done = 0;
        for (int i = 0; i < NREQ; i++)
            done += tight[i].finished;
        if (done == NREQ) break;
        pthread_mutex_unlock(&mu);
        sched_get_stats(e.s, &st); /* races with the steps on purpose */
        assert_true(st.preemptions >= last);
        last = st.preemptions;
        pthread_mutex_lock(&mu);
    }
    pthread_mutex_unlock(&mu);
    /* A preempted sequence finishes in a later step than its preemption, whose stats were
     * published before that step began. */
    sched_get_stats(e.s, &st);
    assert_true(st.preemptions > 0);
    sched_free(e.s);
    backend_free(e.b);
    for (int i = 0; i < NREQ; i++)
        assert_same(&tight[i], &alone[i]);
}

static void test_cancel(void **state)
{
    (void)state;
    int32_t prompt[30];
    make_prompt(prompt, 30, 9);
    struct env e;
    env_open(&e, 4, 64, 64, 0);
    struct out a = {0}, b = {0}, c = {0};
    struct sched_request r;
    greedy_req(&r, prompt, 30, 200, &a);
    uint64_t ida = submit_ok(e.s, &r);
    r.ud = &b;
    submit_ok(e.s, &r);
    for (int i = 0; i < 5; i++)
        assert_int_equal(sched_step(e.s), 1);
    struct sched_stats st;
    sched_get_stats(e.s, &st);
    assert_int_equal(st.running, 2);
    int used = st.kv_blocks_used;
    sched_cancel(e.s, ida);
    sched_cancel(e.s, 999999); /* unknown: ignored */
    assert_int_equal(sched_step(e.s), 1);
    assert_true(a.finished);
    assert_int_equal(a.reason, SCHED_FINISH_CANCELLED);
    assert_int_equal(a.n_tokens, 5);
    sched_get_stats(e.s, &st);
    assert_int_equal(st.running, 1);
    assert_true(st.kv_blocks_used < used);
    /* cancelled while still queued */
    r.ud = &c;
    uint64_t idc = submit_ok(e.s, &r);
    sched_cancel(e.s, idc);
    assert_int_equal(sched_step(e.s), 1);
    assert_true(c.finished);
    assert_int_equal(c.n_tokens, 0);
    assert_int_equal(c.reason, SCHED_FINISH_CANCELLED);
    assert_int_equal(sched_run_until_idle(e.s), 0);
    assert_int_equal(b.reason, SCHED_FINISH_LENGTH);
    env_close(&e);

    /* from another thread while the scheduler thread runs */
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    env_open(&e, 16, 64, 64, 0);
    char err[256];
    assert_int_equal(sched_start(e.s, err, sizeof err), 0);
    struct out t = {.mu = &mu, .cv = &cv, .hold_after_first = 1};
    greedy_req(&r, prompt, 30, 0, &t); /* no max_tokens: up to the context window */
    uint64_t idt = submit_ok(e.s, &r);
    pthread_mutex_lock(&mu);
    while (t.n_tokens < 1 && !t.finished)
        pthread_cond_wait(&cv, &mu);
    sched_cancel(e.s, idt); /* the scheduler thread is parked in the callback */
    t.released = 1;
    pthread_cond_broadcast(&cv);
    while (!t.finished)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    assert_int_equal(t.reason, SCHED_FINISH_CANCELLED);
    assert_true(t.n_tokens < 2048 - 30);
    /* Stats are published at the end of the scheduler thread's step: wait for that one. */
    for (int i = 0; i < 10000; i++) {
        struct sched_stats now;
        sched_get_stats(e.s, &now);
        if (now.kv_blocks_used == 0) break;
        usleep(1000);
    }
    env_close(&e);
}

static void test_stop_strings(void **state)
{
    (void)state;
    int32_t prompt[12];
    make_prompt(prompt, 12, 3);
    struct sched_request r;
    struct out full = {0}, cut = {0}, byid = {0};
    greedy_req(&r, prompt, 12, 60, &full);
    run_alone(&r, &full, 1);
    assert_true(full.text_len > 8);
    /* a stop string taken from the middle of the text, on character boundaries */
    size_t p = full.text_len / 2;
    while (p > 0 && ((unsigned char)full.text[p] & 0xc0) == 0x80)
        p--;
    size_t q = p + 1;
    while (q < full.text_len && ((unsigned char)full.text[q] & 0xc0) == 0x80)
        q++;
    if (q < full.text_len) q++;
    while (q < full.text_len && ((unsigned char)full.text[q] & 0xc0) == 0x80)
        q++;
    char stop[32];
    assert_true(q - p < sizeof stop);
    memcpy(stop, full.text + p, q - p);
    stop[q - p] = '\0';
    size_t want = (size_t)(strstr(full.text, stop) - full.text);

    r.stop[0] = "\x01never";
    r.stop[1] = stop;
    r.n_stop = 2;
    run_alone(&r, &cut, 1);
    assert_int_equal(cut.reason, SCHED_FINISH_STOP);
    assert_int_equal(cut.text_len, want);
    assert_memory_equal(cut.text, full.text, want);
    assert_true(cut.n_tokens <= full.n_tokens);
    assert_memory_equal(cut.tokens, full.tokens, (size_t)cut.n_tokens * sizeof(int32_t));

    /* a stop id ends generation at its first occurrence; its own text is not emitted */
    int32_t stop_id = full.tokens[6];
    int first = 0;
    while (full.tokens[first] != stop_id)
        first++;
    greedy_req(&r, prompt, 12, 60, &byid);
    r.stop_ids = &stop_id;
    r.n_stop_ids = 1;
    run_alone(&r, &byid, 1);
    assert_int_equal(byid.reason, SCHED_FINISH_STOP);
    assert_int_equal(byid.completion_tokens, first + 1);
    assert_int_equal(byid.n_tokens, first + 1);
}

static void test_seeds(void **state)
{
    (void)state;
    int32_t prompt[10];
    make_prompt(prompt, 10, 4);
    struct sched_request r[3];
    static struct out o[3], o2[3];
    for (int i = 0; i < 3; i++) {
        greedy_req(&r[i], prompt, 10, 24, NULL);
        r[i].sampling.temperature = 1.0f;
        r[i].sampling.top_p = 0.95f;
        r[i].sampling.seed = i == 2 ? 1001 : 1000;
    }
    run_alone(r, o, 3);
    assert_same(&o[0], &o[1]);
    assert_true(o[0].n_tokens != o[2].n_tokens ||
                memcmp(o[0].tokens, o[2].tokens, sizeof(int32_t) * (size_t)o[0].n_tokens) != 0);
    /* batched together (and with a greedy neighbour): same draws */
    struct env e;
    env_open(&e, 16, 128, 64, 0);
    memset(o2, 0, sizeof o2);
    for (int i = 2; i >= 0; i--) {
        r[i].ud = &o2[i];
        submit_ok(e.s, &r[i]);
    }
    assert_int_equal(sched_run_until_idle(e.s), 0);
    for (int i = 0; i < 3; i++)
        assert_same(&o2[i], &o[i]);
    env_close(&e);
}

static void test_overload(void **state)
{
    (void)state;
    int32_t prompt[40];
    make_prompt(prompt, 40, 2);
    struct env e;
    env_open(&e, 16, 512, 256, 1);
    struct out warm = {0};
    struct sched_request r;
    greedy_req(&r, prompt, 40, 4, &warm);
    submit_ok(e.s, &r); /* nothing measured yet: accepted */
    assert_int_equal(sched_run_until_idle(e.s), 0);
    struct sched_stats st;
    sched_get_stats(e.s, &st);
    assert_true(st.tokens_per_s > 0);
    assert_true(st.predicted_wait_ms == 0);

    static struct out outs[400];
    memset(outs, 0, sizeof outs);
    int accepted = 0, refused = 0;
    for (int i = 0; i < 400 && !refused; i++) {
        greedy_req(&r, prompt, 40, 200, &outs[i]);
        uint64_t id;
        char err[256];
        int rc = sched_submit(e.s, &r, &id, err, sizeof err);
        if (rc == SCHED_E_OVERLOADED) {
            refused = 1;
            assert_non_null(strstr(err, "overloaded"));
        } else {
            assert_int_equal(rc, SCHED_OK);
            accepted++;
        }
    }
    assert_true(refused);
    sched_get_stats(e.s, &st);
    assert_true(st.predicted_wait_ms > 1);
    assert_int_equal(st.queued, accepted);
    /* cancel them all rather than generate */
    for (int i = 0; i < accepted; i++)
        sched_cancel(e.s, (uint64_t)(i + 2));
    assert_int_equal(sched_run_until_idle(e.s), 0);
    for (int i = 0; i < accepted; i++)
        assert_int_equal(outs[i].reason, SCHED_FINISH_CANCELLED);
    env_close(&e);
}

/* At most max_queue requests wait to start: the next is refused as overloaded until one starts. */
static void test_queue_bound(void **state)
{
    (void)state;
    struct env e;
    char err[256];
    struct backend_params bp = {
        .n_threads = 1, .block_size = 16, .n_blocks = 64, .max_batch_tokens = 256};
    if (backend_cpu_create(g_model, &bp, &e.b, err, sizeof err) != 0) fail_msg("%s", err);
    struct sched_params sp = {.max_seqs = 1, .max_queue = 2};
    if (sched_create(e.b, g_tok, &sp, &e.s, err, sizeof err) != 0) fail_msg("%s", err);
    int32_t prompt[8];
    make_prompt(prompt, 8, 1);
    struct out o[4];
    memset(o, 0, sizeof o);
    struct sched_request r;
    uint64_t id;
    for (int i = 0; i < 2; i++) {
        greedy_req(&r, prompt, 8, 5, &o[i]);
        submit_ok(e.s, &r);
    }
    greedy_req(&r, prompt, 8, 5, &o[2]);
    assert_int_equal(sched_submit(e.s, &r, &id, err, sizeof err), SCHED_E_OVERLOADED);
    assert_non_null(strstr(err, "2 requests are waiting"));
    assert_int_equal(sched_step(e.s), 1); /* the first starts (max_seqs 1): room for one */
    submit_ok(e.s, &r);
    greedy_req(&r, prompt, 8, 5, &o[3]);
    assert_int_equal(sched_submit(e.s, &r, &id, err, sizeof err), SCHED_E_OVERLOADED);
    assert_int_equal(sched_run_until_idle(e.s), 0);
    for (int i = 0; i < 3; i++) {
        assert_true(o[i].finished);
        assert_int_equal(o[i].completion_tokens, 5);
    }
    assert_false(o[3].finished); /* refused: its callback never runs */
    env_close(&e);
}

static void test_invalid(void **state)
{
    (void)state;
    struct env e;
    env_open(&e, 16, 64, 64, 0);
    int32_t prompt[4] = {1, 2, 3, 100000};
    struct out o = {0};
    struct sched_request r;
    greedy_req(&r, prompt, 4, 5, &o);
    uint64_t id;
    char err[256];
    assert_int_equal(sched_submit(e.s, &r, &id, err, sizeof err), SCHED_E_INVALID);
    r.n_prompt = 0;
    assert_int_equal(sched_submit(e.s, &r, &id, err, sizeof err), SCHED_E_INVALID);
    r.n_prompt = 3;
    r.sampling.top_p = 0.0f;
    assert_int_equal(sched_submit(e.s, &r, &id, err, sizeof err), SCHED_E_INVALID);
    r.sampling.top_p = 1.0f;
    r.stop[0] = "";
    r.n_stop = 1;
    assert_int_equal(sched_submit(e.s, &r, &id, err, sizeof err), SCHED_E_INVALID);
    r.n_stop = 0;
    static int32_t big[2048];
    r.prompt = big;
    r.n_prompt = 2048;
    assert_int_equal(sched_submit(e.s, &r, &id, err, sizeof err), SCHED_E_TOO_LONG);
    assert_false(o.finished);
    /* shutting down with work outstanding finishes it as cancelled */
    r.prompt = prompt;
    r.n_prompt = 3;
    submit_ok(e.s, &r);
    sched_free(e.s);
    assert_true(o.finished);
    assert_int_equal(o.reason, SCHED_FINISH_CANCELLED);
    backend_free(e.b);
}

/* sched_pause: a paused sequence gets no steps while others go on, keeps its blocks, and
 * resumed it finishes with the tokens of an unpaused run; when the pool is short a paused
 * sequence gives its blocks up first and is recomputed; a paused one can be cancelled; the
 * scheduler thread wakes for a resume. */
static void test_pause(void **state)
{
    (void)state;
    static int32_t pa[30], pb[40];
    make_prompt(pa, 30, 3);
    make_prompt(pb, 40, 4);
    struct sched_request ra, rb;
    static struct out ref[2], a, b, c;
    greedy_req(&ra, pa, 30, 40, NULL);
    greedy_req(&rb, pb, 40, 25, NULL);
    struct sched_request both[2] = {ra, rb};
    run_alone(both, ref, 2);

    struct env e;
    env_open(&e, 4, 64, 64, 0);
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    ra.ud = &a;
    rb.ud = &b;
    uint64_t ida = submit_ok(e.s, &ra);
    submit_ok(e.s, &rb);
    for (int i = 0; i < 5; i++)
        assert_int_equal(sched_step(e.s), 1);
    int a_tokens = a.n_tokens, b_tokens = b.n_tokens;
    assert_true(a_tokens > 0);
    assert_int_equal(sched_pause(e.s, ida, 1), 0);
    assert_int_equal(sched_pause(e.s, 999999, 1), 0); /* unknown: ignored */
    for (int i = 0; i < 10; i++)
        assert_int_equal(sched_step(e.s), 1);
    assert_int_equal(a.n_tokens, a_tokens);
    assert_true(b.n_tokens > b_tokens);
    struct sched_stats st;
    sched_get_stats(e.s, &st);
    assert_int_equal(st.paused, 1);
    assert_int_equal(st.running, 1);
    assert_true(st.kv_blocks_used >= (30 + a_tokens + 3) / 4 + (40 + b.n_tokens + 3) / 4 - 1);
    assert_int_equal(sched_pause(e.s, ida, 1), 0);  /* paused twice: still one pause */
    assert_int_equal(sched_run_until_idle(e.s), 0); /* only the paused one is left: idle */
    assert_true(b.finished);
    assert_false(a.finished);
    assert_int_equal(a.n_tokens, a_tokens);
    assert_int_equal(sched_pause(e.s, ida, 0), 0);
    assert_int_equal(sched_run_until_idle(e.s), 0);
    assert_true(a.finished);
    assert_same(&a, &ref[0]);
    assert_same(&b, &ref[1]);
    sched_get_stats(e.s, &st);
    assert_int_equal(st.paused, 0);
    assert_int_equal(st.preemptions, 0);

    /* cancelled while paused: finished, blocks back (env_close checks) */
    memset(&c, 0, sizeof c);
    ra.ud = &c;
    uint64_t idc = submit_ok(e.s, &ra);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sched_step(e.s), 1);
    assert_int_equal(sched_pause(e.s, idc, 1), 0);
    assert_int_equal(sched_step(e.s), 0);
    sched_cancel(e.s, idc);
    assert_int_equal(sched_step(e.s), 0);
    assert_true(c.finished);
    assert_int_equal(c.reason, SCHED_FINISH_CANCELLED);
    env_close(&e);

    /* a tight pool: 20 blocks of 4 hold a (70 positions) or b (65), not both */
    env_open(&e, 4, 20, 64, 0);
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    ra.ud = &a;
    ida = submit_ok(e.s, &ra);
    for (int i = 0; i < 5; i++)
        assert_int_equal(sched_step(e.s), 1);
    assert_int_equal(sched_pause(e.s, ida, 1), 0);
    submit_ok(e.s, &rb);
    assert_int_equal(sched_run_until_idle(e.s), 0);
    assert_true(b.finished && !a.finished);
    sched_get_stats(e.s, &st);
    assert_true(st.preemptions > 0); /* a's blocks went to b */
    assert_int_equal(st.kv_blocks_used, 0);
    assert_int_equal(sched_pause(e.s, ida, 0), 0);
    assert_int_equal(sched_run_until_idle(e.s), 0);
    assert_same(&a, &ref[0]); /* recomputed: the same tokens */
    assert_same(&b, &ref[1]);
    env_close(&e);

    /* on the scheduler thread: it sleeps while everything is paused and wakes for the resume */
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    env_open(&e, 16, 64, 64, 0);
    char err[256];
    assert_int_equal(sched_start(e.s, err, sizeof err), 0);
    memset(&a, 0, sizeof a);
    a.mu = &mu;
    a.cv = &cv;
    a.hold_after_first = 1;
    ra.ud = &a;
    ida = submit_ok(e.s, &ra);
    pthread_mutex_lock(&mu);
    while (a.n_tokens < 1)
        pthread_cond_wait(&cv, &mu);
    assert_int_equal(sched_pause(e.s, ida, 1), 0); /* the scheduler thread is parked in on_event */
    a.released = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < 10000; i++) { /* the pause is applied at the next step */
        sched_get_stats(e.s, &st);
        if (st.paused == 1) break;
        usleep(1000);
    }
    assert_int_equal(st.paused, 1);
    pthread_mutex_lock(&mu);
    a_tokens = a.n_tokens;
    pthread_mutex_unlock(&mu);
    assert_int_equal(a_tokens, 1); /* the pause was queued before the next step */
    assert_int_equal(sched_pause(e.s, ida, 0), 0);
    pthread_mutex_lock(&mu);
    while (!a.finished)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    a.mu = NULL;
    a.cv = NULL;
    assert_same(&a, &ref[0]);
    for (int i = 0; i < 10000; i++) {
        sched_get_stats(e.s, &st);
        if (st.kv_blocks_used == 0) break;
        usleep(1000);
    }
    env_close(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batching_matches_alone),
        cmocka_unit_test(test_chunked_prefill),
        cmocka_unit_test(test_preemption),
        cmocka_unit_test(test_stats_while_stepping),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_pause),
        cmocka_unit_test(test_stop_strings),
        cmocka_unit_test(test_seeds),
        cmocka_unit_test(test_overload),
        cmocka_unit_test(test_queue_bound),
        cmocka_unit_test(test_invalid),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
