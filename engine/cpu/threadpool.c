/* A persistent pool of worker threads for the CPU backend. A decode step dispatches a few
 * hundred short jobs, so workers spin briefly on a generation counter before sleeping on a
 * condition variable; a dispatch costs well under the time of one small matmul. */
#include "engine/cpu/cpu.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Iterations a worker (or the caller) polls before blocking: a few tens of microseconds. */
#define TPOOL_SPIN 20000

struct tworker {
    struct tpool *pool;
    int id;
    pthread_t th;
};

struct tpool {
    int n;
    struct tworker *workers; /* n - 1 of them */
    int started;             /* workers successfully created */
    pthread_mutex_t mu;
    pthread_cond_t cv_start;
    pthread_cond_t cv_done;
    atomic_uint gen;    /* bumped once per dispatch; fn and ctx are published before it */
    atomic_int pending; /* workers still running the current dispatch */
    atomic_int stop;
    tpool_fn fn;
    void *ctx;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *worker_main(void *arg)
{
    struct tworker *w = arg;
    struct tpool *p = w->pool;
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) {
            if (++spins < TPOOL_SPIN) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen)
                pthread_cond_wait(&p->cv_start, &p->mu);
            pthread_mutex_unlock(&p->mu);
            break;
        }
        seen = g;
        if (atomic_load(&p->stop)) return NULL;
        p->fn(p->ctx, w->id, p->n);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

int tpool_create(int n, struct tpool **out, char *err, size_t errlen)
{
    *out = NULL;
    if (n < 1) n = 1;
    struct tpool *p = calloc(1, sizeof *p);
    if (!p) goto oom;
    p->n = n;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_start, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->stop, 0);
    if (n > 1) {
        p->workers = calloc((size_t)n - 1, sizeof *p->workers);
        if (!p->workers) goto oom;
        for (int i = 0; i < n - 1; i++) {
            p->workers[i].pool = p;
            p->workers[i].id = i + 1;
            int rc = pthread_create(&p->workers[i].th, NULL, worker_main, &p->workers[i]);
            if (rc != 0) {
                snprintf(err, errlen, "thread pool: pthread_create: %s", strerror(rc));
                tpool_free(p);
                return -1;
            }
            p->started++;
        }
    }
    *out = p;
    return 0;
oom:
    snprintf(err, errlen, "thread pool: out of memory");
    if (p) free(p);
    return -1;
}

void tpool_run(struct tpool *p, tpool_fn fn, void *ctx)
{
    if (p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv_start);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, p->n);
    int spins = 0;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) {
        if (++spins < TPOOL_SPIN) {
            cpu_relax();
            continue;
        }
        pthread_mutex_lock(&p->mu);
        while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0)
            pthread_cond_wait(&p->cv_done, &p->mu);
        pthread_mutex_unlock(&p->mu);
        break;
    }
}

int tpool_size(const struct tpool *p)
{
    return p->n;
}

void tpool_free(struct tpool *p)
{
    if (!p) return;
    if (p->started > 0) {
        atomic_store(&p->stop, 1);
        pthread_mutex_lock(&p->mu);
        atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
        pthread_cond_broadcast(&p->cv_start);
        pthread_mutex_unlock(&p->mu);
        for (int i = 0; i < p->started; i++)
            pthread_join(p->workers[i].th, NULL);
    }
    pthread_cond_destroy(&p->cv_done);
    pthread_cond_destroy(&p->cv_start);
    pthread_mutex_destroy(&p->mu);
    free(p->workers);
    free(p);
}
