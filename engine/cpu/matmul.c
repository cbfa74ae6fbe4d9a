/* Matrix products of activations with weight matrices: out = x W^T (+ bias), W (rows, cols) in
 * BF16 or F32, x and out in F32, F32 accumulation.
 *
 * One register-blocked kernel serves decode and prefill: a tile of up to 4 weight rows times up
 * to 3 tokens keeps 12 accumulators in registers, so each weight vector loaded (and widened from
 * bf16) feeds up to 3 FMAs. With one token (decode) this is a GEMV that streams every weight
 * once and is bound by memory bandwidth; with many tokens (prefill) the tokens are cut into
 * chunks whose activations stay in L2 while every 4-row weight tile is reused across the chunk.
 * The AVX2/FMA version is selected at run time; a portable one runs everywhere else. */
#include "engine/cpu/cpu.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

/* Activations of a token chunk kept hot in L2 while the weight tiles stream by. */
#define CHUNK_BYTES (192 * 1024)

static int g_force_portable;
static int g_have_avx2;
static pthread_once_t g_detect_once = PTHREAD_ONCE_INIT;

static void detect(void)
{
#if HAVE_X86
    __builtin_cpu_init();
    g_have_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
}

int matmul_have_avx2(void)
{
    pthread_once(&g_detect_once, detect);
    return g_have_avx2 && !g_force_portable;
}

void matmul_force_portable(int on)
{
    g_force_portable = on;
}

static inline float bf16f(uint16_t h)
{
    return bf16_to_f32(h);
}

static int token_chunk(int cols)
{
    int c = CHUNK_BYTES / (cols * (int)sizeof(float));
    c -= c % 3;
    return c < 3 ? 3 : c;
}

static inline float bias_at(const struct wtensor *bias, int r)
{
    if (!bias || !bias->data) return 0.0f;
    if (bias->type == WT_F32) return ((const float *)bias->data)[r];
    return bf16f(((const uint16_t *)bias->data)[r]);
}

/* ---- portable kernel ------------------------------------------------------------------------ */

static float dot_portable(const struct wtensor *w, int r, const float *x, int K)
{
    float acc[8] = {0};
    int k = 0;
    if (w->type == WT_F32) {
        const float *wr = (const float *)w->data + (size_t)r * (size_t)K;
        for (; k + 8 <= K; k += 8)
            for (int j = 0; j < 8; j++)
                acc[j] += wr[k + j] * x[k + j];
        for (; k < K; k++)
            acc[0] += wr[k] * x[k];
    } else {
        const uint16_t *wr = (const uint16_t *)w->data + (size_t)r * (size_t)K;
        for (; k + 8 <= K; k += 8)
            for (int j = 0; j < 8; j++)
                acc[j] += bf16f(wr[k + j]) * x[k + j];
        for (; k < K; k++)
            acc[0] += bf16f(wr[k]) * x[k];
    }
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

void matmul_rows_portable(const struct matmul_job *job, int r0, int r1)
{
    const int K = job->w->cols;
    int chunk = token_chunk(K);
    for (int t0 = 0; t0 < job->n_tok; t0 += chunk) {
        int t1 = t0 + chunk < job->n_tok ? t0 + chunk : job->n_tok;
        for (int r = r0; r < r1; r++) {
            float b = bias_at(job->bias, r);
            for (int t = t0; t < t1; t++)
                job->out[(size_t)t * job->out_stride + (size_t)r] =
                    b + dot_portable(job->w, r, job->x + (size_t)t * (size_t)K, K);
        }
    }
}

/* ---- AVX2 / FMA kernel ---------------------------------------------------------------------- */

#if HAVE_X86
#define AVX2_FN     __attribute__((target("avx2,fma")))
#define AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) static inline

AVX2_INLINE __m256 load8_bf16(const uint16_t *p)
{
    __m128i h = _mm_loadu_si128((const __m128i *)(const void *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AVX2_INLINE __m256 load8_w(const void *w, int bf16, size_t off)
{
    if (bf16) return load8_bf16((const uint16_t *)w + off);
    return _mm256_loadu_ps((const float *)w + off);
}

AVX2_INLINE float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* Scalar tail of a dot product over k in [k0, K). */
static inline float tail_dot(const void *w, int bf16, size_t row_off, const float *x, int k0, int K)
{
    float s = 0.0f;
    for (int k = k0; k < K; k++) {
        float wk = bf16 ? bf16f(((const uint16_t *)w)[row_off + (size_t)k])
                        : ((const float *)w)[row_off + (size_t)k];
        s += wk * x[k];
    }
    return s;
}

/* 4 weight rows x 3 tokens: 12 accumulators, each weight vector widened once feeds 3 FMAs.
 * Written out by hand: compilers keep a [4][3] accumulator array on the stack. */
AVX2_INLINE void tile4x3(const struct matmul_job *job, int bf16, int r, const float *x, float *out)
{
    const int K = job->w->cols;
    const size_t ldw = (size_t)K, o0 = (size_t)r * ldw;
    const void *w = job->w->data;
    const float *x0 = x, *x1 = x + ldw, *x2 = x + 2 * ldw;
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00,
           a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 v0 = _mm256_loadu_ps(x0 + k), v1 = _mm256_loadu_ps(x1 + k),
               v2 = _mm256_loadu_ps(x2 + k);
        __m256 w0 = load8_w(w, bf16, o0 + (size_t)k);
        a00 = _mm256_fmadd_ps(w0, v0, a00);
        a01 = _mm256_fmadd_ps(w0, v1, a01);
        a02 = _mm256_fmadd_ps(w0, v2, a02);
        __m256 w1 = load8_w(w, bf16, o0 + ldw + (size_t)k);
        a10 = _mm256_fmadd_ps(w1, v0, a10);
        a11 = _mm256_fmadd_ps(w1, v1, a11);
        a12 = _mm256_fmadd_ps(w1, v2, a12);
        __m256 w2 = load8_w(w, bf16, o0 + 2 * ldw + (size_t)k);
        a20 = _mm256_fmadd_ps(w2, v0, a20);
        a21 = _mm256_fmadd_ps(w2, v1, a21);
        a22 = _mm256_fmadd_ps(w2, v2, a22);
        __m256 w3 = load8_w(w, bf16, o0 + 3 * ldw + (size_t)k);
        a30 = _mm256_fmadd_ps(w3, v0, a30);
        a31 = _mm256_fmadd_ps(w3, v1, a31);
        a32 = _mm256_fmadd_ps(w3, v2, a32);
    }
    __m256 acc[4][3] = {{a00, a01, a02}, {a10, a11, a12}, {a20, a21, a22}, {a30, a31, a32}};
    const float *xs[3] = {x0, x1, x2};
    for (int i = 0; i < 4; i++) {
        float b = bias_at(job->bias, r + i);
        for (int t = 0; t < 3; t++)
            out[(size_t)t * job->out_stride + (size_t)(r + i)] =
                b + hsum8(acc[i][t]) + tail_dot(w, bf16, o0 + (size_t)i * ldw, xs[t], k, K);
    }
}

/* 4 weight rows x 1 token (decode GEMV). Four independent FMA chains already outrun memory,
 * and one accumulator per row keeps the summation order of tile4x3, so a token's result does
 * not depend on how many tokens share the step. */
AVX2_INLINE void tile4x1(const struct matmul_job *job, int bf16, int r, const float *x, float *out)
{
    const int K = job->w->cols;
    const size_t ldw = (size_t)K, o0 = (size_t)r * ldw;
    const void *w = job->w->data;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 v = _mm256_loadu_ps(x + k);
        a0 = _mm256_fmadd_ps(load8_w(w, bf16, o0 + (size_t)k), v, a0);
        a1 = _mm256_fmadd_ps(load8_w(w, bf16, o0 + ldw + (size_t)k), v, a1);
        a2 = _mm256_fmadd_ps(load8_w(w, bf16, o0 + 2 * ldw + (size_t)k), v, a2);
        a3 = _mm256_fmadd_ps(load8_w(w, bf16, o0 + 3 * ldw + (size_t)k), v, a3);
    }
    __m256 acc[4] = {a0, a1, a2, a3};
    for (int i = 0; i < 4; i++)
        out[r + i] = bias_at(job->bias, r + i) + hsum8(acc[i]) +
                     tail_dot(w, bf16, o0 + (size_t)i * ldw, x, k, K);
}

/* 1 weight row x 1 token, for the rows left over after the 4-row tiles. */
AVX2_INLINE void tile1x1(const struct matmul_job *job, int bf16, int r, const float *x, float *out)
{
    const int K = job->w->cols;
    const size_t o0 = (size_t)r * (size_t)K;
    const void *w = job->w->data;
    __m256 a = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= K; k += 8)
        a = _mm256_fmadd_ps(load8_w(w, bf16, o0 + (size_t)k), _mm256_loadu_ps(x + k), a);
    out[r] = bias_at(job->bias, r) + hsum8(a) + tail_dot(w, bf16, o0, x, k, K);
}

/* All tokens [t0, t1) against rows [r0, r1): 4-row tiles reused across the token chunk.
 * Every token's sum is accumulated in the same order whatever the tile, so batching does not
 * change a sequence's results. */
AVX2_INLINE void rows_tokens(const struct matmul_job *job, int bf16, int r0, int r1, int t0, int t1)
{
    const size_t K = (size_t)job->w->cols, os = job->out_stride;
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        int t = t0;
        for (; t + 3 <= t1; t += 3)
            tile4x3(job, bf16, r, job->x + (size_t)t * K, job->out + t * os);
        for (; t < t1; t++)
            tile4x1(job, bf16, r, job->x + (size_t)t * K, job->out + t * os);
    }
    for (; r < r1; r++)
        for (int t = t0; t < t1; t++)
            tile1x1(job, bf16, r, job->x + (size_t)t * K, job->out + t * os);
}

AVX2_FN static void rows_avx2_bf16(const struct matmul_job *job, int r0, int r1, int t0, int t1)
{
    rows_tokens(job, 1, r0, r1, t0, t1);
}

AVX2_FN static void rows_avx2_f32(const struct matmul_job *job, int r0, int r1, int t0, int t1)
{
    rows_tokens(job, 0, r0, r1, t0, t1);
}
#endif

void matmul_rows(const struct matmul_job *job, int r0, int r1)
{
#if HAVE_X86
    if (matmul_have_avx2()) {
        int chunk = token_chunk(job->w->cols);
        for (int t0 = 0; t0 < job->n_tok; t0 += chunk) {
            int t1 = t0 + chunk < job->n_tok ? t0 + chunk : job->n_tok;
            if (job->w->type == WT_BF16)
                rows_avx2_bf16(job, r0, r1, t0, t1);
            else
                rows_avx2_f32(job, r0, r1, t0, t1);
        }
        return;
    }
#endif
    matmul_rows_portable(job, r0, r1);
}

/* ---- threading ------------------------------------------------------------------------------ */

struct matmul_task {
    const struct matmul_job *jobs;
    int n_jobs;
};

static void matmul_thread(void *ctx, int tid, int n)
{
    const struct matmul_task *task = ctx;
    for (int j = 0; j < task->n_jobs; j++) {
        const struct matmul_job *job = &task->jobs[j];
        /* split rows in multiples of 4 so every thread runs full tiles */
        int tiles = (job->w->rows + 3) / 4;
        int a = (int)((long long)tiles * tid / n) * 4;
        int b = (int)((long long)tiles * (tid + 1) / n) * 4;
        if (b > job->w->rows) b = job->w->rows;
        if (a < b) matmul_rows(job, a, b);
    }
}

void matmul_run(struct tpool *pool, const struct matmul_job *jobs, int n_jobs)
{
    struct matmul_task task = {jobs, n_jobs};
    tpool_run(pool, matmul_thread, &task);
}
