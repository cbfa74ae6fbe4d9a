/* Internals of the CPU backend: the persistent thread pool, the matmul kernels and one function
 * per mathematical step of the transformer. Not part of the engine's public interface. */
#ifndef LLMGATE_ENGINE_CPU_CPU_H
#define LLMGATE_ENGINE_CPU_CPU_H

#include "engine/kv.h"
#include "engine/model.h"

#include <stddef.h>
#include <stdint.h>

/* ---- thread pool (threadpool.c) --------------------------------------------------------- */

struct tpool;

/* fn(ctx, tid, n) runs once on each of the n threads; tid 0 is the caller. */
typedef void (*tpool_fn)(void *ctx, int tid, int n);

/* Starts n - 1 workers (n >= 1). Returns 0 and *out, or -1 with err. */
int tpool_create(int n, struct tpool **out, char *err, size_t errlen);
/* Runs fn on every thread and returns when all are done. Not reentrant. */
void tpool_run(struct tpool *p, tpool_fn fn, void *ctx);
/* Number of threads including the caller. */
int tpool_size(const struct tpool *p);
/* Stops and joins the workers. NULL is a no-op. */
void tpool_free(struct tpool *p);

/* Best of reps multithreaded streaming reads over a fresh buffer of `bytes`, in GB/s (0 when
 * the buffer cannot be allocated). For the benchmark's roofline (membw.c). */
double cpu_read_bandwidth(struct tpool *pool, size_t bytes, int reps);

/* ---- matmul (matmul.c) ---------------------------------------------------------------- */

/* out[t][r] = bias[r] + sum_k x[t][k] * w[r][k] for t < n_tok, r < w->rows; x rows are
 * w->cols floats apart, out rows out_stride floats apart. bias may be NULL. */
struct matmul_job {
    float *out;
    size_t out_stride;
    const float *x;
    int n_tok;
    const struct wtensor *w;
    const struct wtensor *bias;
};

/* Runs the jobs with their rows split across the pool's threads (one dispatch for all). */
void matmul_run(struct tpool *pool, const struct matmul_job *jobs, int n_jobs);

/* Single-threaded rows [r0, r1) of one job; picks the AVX2/FMA kernel when the CPU has it. */
void matmul_rows(const struct matmul_job *job, int r0, int r1);

/* The portable kernel, always (tests compare both). */
void matmul_rows_portable(const struct matmul_job *job, int r0, int r1);

/* 1 when the AVX2/FMA kernels are in use. */
int matmul_have_avx2(void);

/* Forces the portable kernel (1) or auto-detection (0); for tests and benchmarks. */
void matmul_force_portable(int on);

/* ---- transformer steps (ops.c) ---------------------------------------------------------- */

/* x[t] = row tokens[t] of the embedding table, for n tokens. */
void embed_tokens(float *x, const struct wtensor *embed, const int32_t *tokens, int n);

/* out[t] = x[t] / rms(x[t]) * weight, for n rows of dim floats. out may alias x. */
void rmsnorm(float *out, const float *x, const struct wtensor *weight, int n, int dim, float eps);

/* Rotates the heads of vec (n_heads heads of head_dim floats) at position pos, neox style
 * (first half against second half) with the given inverse frequencies. */
void rope(float *vec, int n_heads, int head_dim, int pos, const float *inv_freq);

/* x[i] += y[i]. */
void residual_add(float *x, const float *y, size_t n);

/* gate[i] = silu(gate[i]) * up[i]. */
void swiglu(float *gate, const float *up, size_t n);

/* Writes the k and v vectors (n_kv_heads * head_dim floats) of a token at position pos into
 * layer l of the pool. */
void kv_store(struct kv_pool *kv, int l, const int32_t *block_table, int pos, const float *k,
              const float *v);

/* Causal attention of one query head over positions 0..pos of a sequence in layer l:
 * out[head_dim] = softmax(q . K / sqrt(hd)) V with kv head kvh; f32 with an online softmax.
 * scratch holds block_size floats. */
void attention_head(float *out, const float *q, const struct kv_pool *kv, int l,
                    const int32_t *block_table, int pos, int kvh, float *scratch);

#endif
