/* Tests for the CPU backend: matmul kernels (AVX2 and portable, threaded) against a naive
 * reference at odd shapes, paged attention against a dense reference, and batched / chunked
 * forwards against one-sequence-at-a-time forwards on the fixture models. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "engine/backend.h"
#include "engine/cpu/cpu.h"
#include "engine/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t g_rng = 88172645463325252ull;

static float frand(void) /* uniform in [-1, 1) */
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

/* A random (rows, cols) weight in type t; storage returned for free(). */
static void *make_weight(struct wtensor *w, enum wtype t, int rows, int cols)
{
    size_t n = (size_t)rows * (size_t)cols;
    void *p = malloc(n * 4 + 4);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) {
        if (t == WT_F32)
            ((float *)p)[i] = frand();
        else
            ((uint16_t *)p)[i] = f32_to_bf16(frand());
    }
    *w = (struct wtensor){p, t, rows, cols};
    return p;
}

static float wget(const struct wtensor *w, size_t i)
{
    return w->type == WT_F32 ? ((const float *)w->data)[i]
                             : bf16_to_f32(((const uint16_t *)w->data)[i]);
}

static void check_matmul(struct tpool *pool, enum wtype t, int rows, int cols, int n_tok,
                         int with_bias)
{
    struct wtensor w, bias = {0};
    void *wp = make_weight(&w, t, rows, cols), *bp = NULL;
    if (with_bias) bp = make_weight(&bias, t, 1, rows);
    float *x = malloc((size_t)n_tok * cols * sizeof(float));
    size_t stride = (size_t)rows + 3; /* out rows padded: the stride is honoured */
    float *out = malloc((size_t)n_tok * stride * sizeof(float));
    assert_non_null(x);
    assert_non_null(out);
    for (size_t i = 0; i < (size_t)n_tok * cols; i++)
        x[i] = frand();
    for (int variant = 0; variant < 3; variant++) {
        for (size_t i = 0; i < (size_t)n_tok * stride; i++)
            out[i] = NAN;
        struct matmul_job job = {out, stride, x, n_tok, &w, with_bias ? &bias : NULL};
        if (variant == 0)
            matmul_rows_portable(&job, 0, rows);
        else if (variant == 1)
            matmul_rows(&job, 0, rows);
        else
            matmul_run(pool, &job, 1);
        for (int tk = 0; tk < n_tok; tk++) {
            for (int r = 0; r < rows; r++) {
                double ref = with_bias ? wget(&bias, (size_t)r) : 0.0, mag = 0.0;
                for (int k = 0; k < cols; k++) {
                    double p = (double)wget(&w, (size_t)r * cols + k) * x[(size_t)tk * cols + k];
                    ref += p;
                    mag += fabs(p);
                }
                float got = out[(size_t)tk * stride + r];
                if (!(fabs(got - ref) <= 1e-5 * (mag + 1.0)))
                    fail_msg("%s %dx%d tokens %d variant %d: out[%d][%d] = %g, want %g",
                             t == WT_F32 ? "f32" : "bf16", rows, cols, n_tok, variant, tk, r, got,
                             ref);
            }
            for (size_t r = (size_t)rows; r < stride; r++)
                assert_true(isnan(out[(size_t)tk * stride + r])); /* padding untouched */
        }
    }
    free(x);
    free(out);
    free(wp);
    free(bp);
}

static void test_matmul_odd_shapes(void **state)
{
    (void)state;
    struct tpool *pool = NULL;
    char err[128];
    assert_int_equal(tpool_create(3, &pool, err, sizeof err), 0);
    const int rows[] = {1, 3, 5, 13, 67};
    const int cols[] = {1, 7, 8, 9, 33, 130};
    const int toks[] = {1, 2, 3, 4, 7, 50};
    for (int force = 0; force < 2; force++) {
        matmul_force_portable(force);
        for (size_t a = 0; a < sizeof rows / sizeof *rows; a++)
            for (size_t b = 0; b < sizeof cols / sizeof *cols; b++)
                for (size_t c = 0; c < sizeof toks / sizeof *toks; c++)
                    for (int t = 0; t < 2; t++)
                        check_matmul(pool, t ? WT_BF16 : WT_F32, rows[a], cols[b], toks[c],
                                     (int)((a + b + c) % 2));
    }
    matmul_force_portable(0);
    /* a prefill-sized product that crosses the token-chunk boundary */
    check_matmul(pool, WT_BF16, 40, 2000, 100, 1);
    tpool_free(pool);
}

struct count_ctx {
    int hits[8];
};

static void count_fn(void *ctx, int tid, int n)
{
    struct count_ctx *c = ctx; /* no cmocka asserts off the main thread */
    if (n == 4) c->hits[tid]++;
}

static void test_thread_pool(void **state)
{
    (void)state;
    struct tpool *pool = NULL;
    char err[128];
    assert_int_equal(tpool_create(4, &pool, err, sizeof err), 0);
    assert_int_equal(tpool_size(pool), 4);
    struct count_ctx c = {{0}};
    for (int i = 0; i < 1000; i++)
        tpool_run(pool, count_fn, &c);
    for (int t = 0; t < 4; t++)
        assert_int_equal(c.hits[t], 1000);
    tpool_free(pool);
}

static void test_attention_paged(void **state)
{
    (void)state;
    struct kv_layout L = {
        .n_layers = 2, .n_kv_heads = 2, .head_dim = 12, .block_size = 5, .n_blocks = 9};
    struct kv_pool *kv = NULL;
    char err[128];
    assert_int_equal(kv_pool_create(&L, &kv, err, sizeof err), 0);
    int32_t table[8] = {7, 2, 8, 0, 5, 1, 3, 6};
    const int n = 37, hd = L.head_dim;
    float dense_k[37][2][12], dense_v[37][2][12];
    for (int p = 0; p < n; p++) {
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < hd; i++) {
                dense_k[p][h][i] = 2.0f * frand();
                dense_v[p][h][i] = frand();
            }
        kv_store(kv, 1, table, p, &dense_k[p][0][0], &dense_v[p][0][0]);
    }
    float q[12], out[12], scratch[5];
    for (int i = 0; i < hd; i++)
        q[i] = frand();
    for (int pos = 0; pos < n; pos += 6) {
        for (int h = 0; h < 2; h++) {
            attention_head(out, q, kv, 1, table, pos, h, scratch);
            double s[37], mx = -1e30, sum = 0;
            for (int p = 0; p <= pos; p++) {
                s[p] = 0;
                for (int i = 0; i < hd; i++)
                    s[p] += (double)q[i] * dense_k[p][h][i];
                s[p] /= sqrt((double)hd);
                if (s[p] > mx) mx = s[p];
            }
            for (int p = 0; p <= pos; p++)
                sum += exp(s[p] - mx);
            for (int i = 0; i < hd; i++) {
                double ref = 0;
                for (int p = 0; p <= pos; p++)
                    ref += exp(s[p] - mx) / sum * dense_v[p][h][i];
                assert_true(fabs(out[i] - ref) < 1e-5);
            }
        }
    }
    kv_pool_free(kv);
}

static void test_rope_and_norm(void **state)
{
    (void)state;
    float v[2 * 8], orig[2 * 8], inv[4] = {1.0f, 0.1f, 0.01f, 0.001f};
    for (int i = 0; i < 16; i++)
        orig[i] = v[i] = frand();
    rope(v, 2, 8, 0, inv); /* position 0 is the identity */
    assert_memory_equal(v, orig, sizeof v);
    rope(v, 2, 8, 37, inv);
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 4; i++) { /* each (i, i + half) pair keeps its length */
            float a = orig[h * 8 + i], b = orig[h * 8 + i + 4];
            float c = v[h * 8 + i], d = v[h * 8 + i + 4];
            assert_float_equal(a * a + b * b, c * c + d * d, 1e-5);
            assert_float_equal(c, a * cosf(37.0f * inv[i]) - b * sinf(37.0f * inv[i]), 1e-5);
        }
    float w[3] = {1.0f, 2.0f, 0.5f}, x[3] = {3.0f, -4.0f, 12.0f}, o[3];
    struct wtensor wt = {w, WT_F32, 1, 3};
    rmsnorm(o, x, &wt, 1, 3, 0.0f);
    float rms = sqrtf((9.0f + 16.0f + 144.0f) / 3.0f);
    assert_float_equal(o[1], -8.0f / rms, 1e-6);
    float g[2] = {0.0f, 2.0f}, u[2] = {5.0f, 3.0f};
    swiglu(g, u, 2);
    assert_float_equal(g[0], 0.0f, 0);
    assert_float_equal(g[1], 2.0f / (1.0f + expf(-2.0f)) * 3.0f, 1e-6);
}

/* ---- batched vs one-by-one on real models --------------------------------------------- */

static struct model *load_fixture(const char *name)
{
    char dir[512], err[512];
    const char *src = getenv("LLMGATE_SRCDIR");
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/%s", src ? src : ".", name);
    struct model *m = NULL;
    if (model_load(dir, &m, err, sizeof err) != 0) fail_msg("%s", err);
    return m;
}

static void assert_close(const float *a, const float *b, int n, const char *what)
{
    for (int i = 0; i < n; i++)
        if (!(fabsf(a[i] - b[i]) <= 1e-5f * (1.0f + fabsf(b[i]))))
            fail_msg("%s: [%d] %g vs %g", what, i, a[i], b[i]);
}

#define NSEQ 4

static void batched_vs_single(const char *fixture)
{
    struct model *m = load_fixture(fixture);
    const int V = m->cfg.vocab_size;
    char err[256];
    struct backend_params bp = {.n_threads = 2, .block_size = 4, .n_blocks = 128};
    struct backend *b = NULL;
    assert_int_equal(backend_cpu_create(m, &bp, &b, err, sizeof err), 0);

    static const int len[NSEQ] = {1, 5, 13, 7};
    int32_t toks[NSEQ][16], tables[NSEQ][8];
    for (int s = 0; s < NSEQ; s++) {
        for (int i = 0; i < 16; i++)
            toks[s][i] = (int32_t)((s * 37 + i * 11 + 3) % V);
        for (int i = 0; i < 8; i++)
            tables[s][i] = 127 - (i * NSEQ + s); /* disjoint blocks */
    }
    float *single = malloc((size_t)NSEQ * V * sizeof(float));
    float *batched = malloc((size_t)NSEQ * V * sizeof(float));
    float *all = malloc((size_t)32 * V * sizeof(float));
    assert_non_null(single);
    assert_non_null(batched);
    assert_non_null(all);

    /* one sequence per forward */
    for (int s = 0; s < NSEQ; s++) {
        struct batch_seq q = {toks[s], len[s], 0, tables[s], 8};
        struct batch one = {&q, 1, 0};
        assert_int_equal(backend_forward(b, &one, single + (size_t)s * V, err, sizeof err), 0);
    }
    /* all sequences of different lengths in one forward */
    struct batch_seq seqs[NSEQ];
    for (int s = 0; s < NSEQ; s++)
        seqs[s] = (struct batch_seq){toks[s], len[s], 0, tables[s], 8};
    struct batch many = {seqs, NSEQ, 0};
    assert_int_equal(backend_forward(b, &many, batched, err, sizeof err), 0);
    assert_close(batched, single, NSEQ * V, "batched prefill");

    /* all_logits: each sequence's last row equals its last-token logits */
    many.all_logits = 1;
    assert_int_equal(batch_logit_rows(&many), 26);
    assert_int_equal(backend_forward(b, &many, all, err, sizeof err), 0);
    for (int s = 0, row = 0; s < NSEQ; row += len[s], s++)
        assert_close(all + (size_t)(row + len[s] - 1) * V, single + (size_t)s * V, V, "all_logits");

    /* sequence 2 prefilled in chunks of 3, 5 and 5 */
    int at = 0;
    const int chunks[3] = {3, 5, 5};
    for (int c = 0; c < 3; c++) {
        struct batch_seq q = {toks[2] + at, chunks[c], at, tables[2], 8};
        struct batch one = {&q, 1, 0};
        assert_int_equal(backend_forward(b, &one, batched, err, sizeof err), 0);
        at += chunks[c];
    }
    assert_close(batched, single + 2 * (size_t)V, V, "chunked prefill");

    /* a mixed step: seq 0 decodes its second token while seq 3 prefills from scratch and seq 1
     * continues with a chunk; compare with the same work done one sequence at a time */
    int32_t next0 = 9;
    struct batch_seq mix[3] = {
        {&next0, 1, 1, tables[0], 8},
        {toks[3], len[3], 0, tables[3], 8},
        {toks[1] + 5, 4, 5, tables[1], 8},
    };
    struct batch mixed = {mix, 3, 0};
    float *mixed_out = malloc((size_t)3 * V * sizeof(float));
    assert_non_null(mixed_out);
    assert_int_equal(backend_forward(b, &mixed, mixed_out, err, sizeof err), 0);
    for (int s = 0; s < 3; s++) {
        struct batch one = {&mix[s], 1, 0};
        assert_int_equal(backend_forward(b, &one, batched, err, sizeof err), 0);
        assert_close(mixed_out + (size_t)s * V, batched, V, "mixed batch");
    }

    /* KV block export/import round trip */
    size_t bytes = kv_block_bytes(&b->kv);
    float *blk = malloc(bytes), *blk2 = malloc(bytes);
    assert_non_null(blk);
    assert_non_null(blk2);
    assert_int_equal(b->ops->kv_read_block(b, tables[2][0], blk, err, sizeof err), 0);
    assert_int_equal(b->ops->kv_write_block(b, 0, blk, err, sizeof err), 0);
    assert_int_equal(b->ops->kv_read_block(b, 0, blk2, err, sizeof err), 0);
    assert_memory_equal(blk, blk2, bytes);
    assert_int_equal(b->ops->kv_read_block(b, 128, blk2, err, sizeof err), -1);
    free(blk);
    free(blk2);

    free(mixed_out);
    free(single);
    free(batched);
    free(all);
    backend_free(b);
    model_free(m);
}

static void test_batched_matches_single(void **state)
{
    (void)state;
    batched_vs_single("llama-tiny-bf16");
    batched_vs_single("qwen2-tiny-f32");
    batched_vs_single("llama3-rope-f16");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_odd_shapes),      cmocka_unit_test(test_thread_pool),
        cmocka_unit_test(test_attention_paged),        cmocka_unit_test(test_rope_and_norm),
        cmocka_unit_test(test_batched_matches_single),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
