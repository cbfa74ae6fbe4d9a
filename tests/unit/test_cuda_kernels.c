/* Tests for the CUDA kernels, each against its CPU reference (engine/cpu) on random inputs at
 * several shapes: NMSE <= 1e-4 (bf16 storage, f32 math). Exits 77 (skipped) without a device. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "engine/cpu/cpu.h"
#include "engine/cuda/kernels.h"
#include "engine/model.h"
#include "engine/sampler.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BOUND 1e-4

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static float frand(void) /* uniform in [-1, 1) */
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static float bfr(float f) /* f rounded through bf16 */
{
    return bf16_to_f32(f32_to_bf16(f));
}

static double nmse(const float *got, const float *want, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return den > 0 ? num / den : num;
}

static void check_nmse(const float *got, const float *want, size_t n, const char *what)
{
    double e = nmse(got, want, n);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(got[i])) fail_msg("%s: element %zu is %g", what, i, got[i]);
    if (!(e <= BOUND)) fail_msg("%s: NMSE %g > %g", what, e, BOUND);
}

static void *dev_put(const void *host, size_t bytes)
{
    void *d = NULL;
    assert_int_equal(cudaMalloc(&d, bytes ? bytes : 4), cudaSuccess);
    if (host) assert_int_equal(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
    return d;
}

static void dev_get(void *host, const void *d, size_t bytes)
{
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    assert_int_equal(cudaMemcpy(host, d, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
}

static float *frandv(size_t n, float scale)
{
    float *v = malloc(n * sizeof(float) + 4);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = scale * frand();
    return v;
}

static uint16_t *to_bf16(const float *v, size_t n)
{
    uint16_t *h = malloc(n * 2 + 2);
    assert_non_null(h);
    for (size_t i = 0; i < n; i++)
        h[i] = f32_to_bf16(v[i]);
    return h;
}

/* ---- embedding, norm, activation ------------------------------------------------------------ */

static void test_embed(void **state)
{
    (void)state;
    const int dims[] = {8, 13, 576, 2048};
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
        const int V = 37, D = dims[di], n = 9;
        float *tf = frandv((size_t)V * D, 1.0f);
        uint16_t *tb = to_bf16(tf, (size_t)V * D);
        int32_t tok[9];
        for (int i = 0; i < n; i++)
            tok[i] = (int32_t)((i * 17 + 3) % V);
        float *want = malloc((size_t)n * D * 4), *got = malloc((size_t)n * D * 4);
        struct wtensor w = {tb, WT_BF16, V, D};
        embed_tokens(want, &w, tok, n);
        uint16_t *dt = dev_put(tb, (size_t)V * D * 2);
        int32_t *dtok = dev_put(tok, sizeof tok);
        float *dx = dev_put(NULL, (size_t)n * D * 4);
        assert_int_equal(cuda_embed(dx, dt, dtok, n, D, 0), cudaSuccess);
        dev_get(got, dx, (size_t)n * D * 4);
        assert_memory_equal(got, want, (size_t)n * D * 4); /* exact: a widening copy */
        cudaFree(dt);
        cudaFree(dtok);
        cudaFree(dx);
        free(tf);
        free(tb);
        free(want);
        free(got);
    }
}

static void test_add_rmsnorm(void **state)
{
    (void)state;
    const int dims[] = {7, 64, 576, 2048, 4096};
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
        for (int with_delta = 0; with_delta < 2; with_delta++) {
            const int D = dims[di], n = 5;
            const size_t N = (size_t)n * D;
            float *x = frandv(N, 3.0f), *delta = frandv(N, 1.0f), *bias = frandv((size_t)D, 0.5f);
            float *w = frandv((size_t)D, 1.0f);
            float *want_x = malloc(N * 4), *want = malloc(N * 4), *got = malloc(N * 4);
            float *got_x = malloc(N * 4), *got16f = malloc(N * 4);
            uint16_t *got16 = malloc(N * 2);
            memcpy(want_x, x, N * 4);
            if (with_delta)
                for (size_t i = 0; i < N; i++)
                    want_x[i] += delta[i] + bias[i % (size_t)D];
            struct wtensor wt = {w, WT_F32, 1, D};
            rmsnorm(want, want_x, &wt, n, D, 1e-5f);
            float *dx = dev_put(x, N * 4), *dd = dev_put(delta, N * 4), *db = dev_put(bias, D * 4);
            float *dw = dev_put(w, D * 4), *dout = dev_put(NULL, N * 4);
            uint16_t *d16 = dev_put(NULL, N * 2);
            assert_int_equal(cuda_add_rmsnorm(dx, with_delta ? dd : NULL, with_delta ? db : NULL,
                                              dw, dout, d16, n, D, 1e-5f, 0),
                             cudaSuccess);
            dev_get(got, dout, N * 4);
            dev_get(got_x, dx, N * 4);
            dev_get(got16, d16, N * 2);
            for (size_t i = 0; i < N; i++)
                got16f[i] = bf16_to_f32(got16[i]);
            check_nmse(got, want, N, "add_rmsnorm out");
            check_nmse(got_x, want_x, N, "add_rmsnorm residual");
            check_nmse(got16f, want, N, "add_rmsnorm bf16 out");
            cudaFree(dx);
            cudaFree(dd);
            cudaFree(db);
            cudaFree(dw);
            cudaFree(dout);
            cudaFree(d16);
            free(x);
            free(delta);
            free(bias);
            free(w);
            free(want_x);
            free(want);
            free(got);
            free(got_x);
            free(got16f);
            free(got16);
        }
    }
}

static void test_swiglu(void **state)
{
    (void)state;
    const int Fs[] = {1, 33, 1536, 8192};
    for (size_t fi = 0; fi < sizeof Fs / sizeof *Fs; fi++) {
        const int F = Fs[fi], n = 3;
        const size_t N = (size_t)n * F;
        float *gu = frandv(2 * N, 6.0f), *gate = malloc(N * 4), *up = malloc(N * 4);
        float *got = malloc(N * 4);
        for (int t = 0; t < n; t++)
            for (int i = 0; i < F; i++) {
                gate[(size_t)t * F + i] = gu[(size_t)t * 2 * F + i];
                up[(size_t)t * F + i] = gu[(size_t)t * 2 * F + F + i];
            }
        swiglu(gate, up, N);
        float *dgu = dev_put(gu, 2 * N * 4), *dout = dev_put(NULL, N * 4);
        assert_int_equal(cuda_swiglu(dout, NULL, dgu, n, F, 0), cudaSuccess);
        dev_get(got, dout, N * 4);
        check_nmse(got, gate, N, "swiglu");
        cudaFree(dgu);
        cudaFree(dout);
        free(gu);
        free(gate);
        free(up);
        free(got);
    }
}

/* ---- gemv ----------------------------------------------------------------------------------- */

static void test_gemv(void **state)
{
    (void)state;
    int n_sm = 0;
    assert_int_equal(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
    const int rows[] = {1, 7, 64, 1000, 4864};
    const int ks[] = {8, 13, 576, 896, 4096};
    for (size_t ri = 0; ri < sizeof rows / sizeof *rows; ri++)
        for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++)
            for (int nt = 1; nt <= 8; nt++) {
                if (rows[ri] * (size_t)ks[ki] > 4000000 && nt != 1 && nt != 8) continue;
                const int R = rows[ri], K = ks[ki];
                float *wf = frandv((size_t)R * K, 1.0f), *x = frandv((size_t)nt * K, 1.0f);
                uint16_t *wb = to_bf16(wf, (size_t)R * K);
                struct wtensor w = {wb, WT_BF16, R, K};
                float *want = malloc((size_t)nt * R * 4), *got = malloc((size_t)nt * R * 4);
                struct matmul_job job = {want, (size_t)R, x, nt, &w, NULL};
                matmul_rows_portable(&job, 0, R);
                uint16_t *dw = dev_put(wb, (size_t)R * K * 2);
                float *dx = dev_put(x, (size_t)nt * K * 4),
                      *dout = dev_put(NULL, (size_t)nt * R * 4);
                assert_int_equal(cuda_gemv(dout, R, dx, K, dw, R, K, nt, n_sm, 0), cudaSuccess);
                dev_get(got, dout, (size_t)nt * R * 4);
                char what[64];
                snprintf(what, sizeof what, "gemv %dx%d tokens %d", R, K, nt);
                check_nmse(got, want, (size_t)nt * R, what);
                cudaFree(dw);
                cudaFree(dx);
                cudaFree(dout);
                free(wf);
                free(x);
                free(wb);
                free(want);
                free(got);
            }
    assert_int_equal(cuda_gemv(NULL, 1, NULL, 1, NULL, 1, 8, 9, n_sm, 0), cudaErrorInvalidValue);
}

/* ---- rope + KV store ------------------------------------------------------------------------ */

static void check_qkv_rope(int H, int KVH, int HD, int llama3, int with_bias)
{
    struct model_config c = {0};
    c.head_dim = HD;
    c.rope_theta = 500000.0f;
    if (llama3) {
        c.rope_type = ROPE_LLAMA3;
        c.rope_factor = 32.0f;
        c.rope_low_freq_factor = 1.0f;
        c.rope_high_freq_factor = 4.0f;
        c.rope_orig_max_pos = 8192;
    }
    float *inv = malloc((size_t)HD / 2 * 4);
    model_rope_inv_freq(&c, inv);
    const int n = 7, qd = H * HD, kd = KVH * HD, row = qd + 2 * kd, bs = 16, n_slots = 64;
    float *qkv = frandv((size_t)n * row, 2.0f), *bias = frandv((size_t)row, 0.5f);
    int32_t pos[7] = {0, 1, 17, 255, 1000, 4095, 70000};
    int32_t slot[7] = {5, 0, 63, 17, 32, 2, 40};
    float *q_want = malloc((size_t)n * qd * 4), *k_want = malloc((size_t)n * kd * 4);
    float *v_want = malloc((size_t)n * kd * 4);
    for (int t = 0; t < n; t++) {
        const float *r = qkv + (size_t)t * row;
        for (int i = 0; i < qd; i++)
            q_want[t * qd + i] = r[i] + (with_bias ? bias[i] : 0);
        for (int i = 0; i < kd; i++) {
            k_want[t * kd + i] = r[qd + i] + (with_bias ? bias[qd + i] : 0);
            v_want[t * kd + i] = bfr(r[qd + kd + i] + (with_bias ? bias[qd + kd + i] : 0));
        }
        rope(q_want + (size_t)t * qd, H, HD, pos[t], inv);
        rope(k_want + (size_t)t * kd, KVH, HD, pos[t], inv);
    }
    float *dq = dev_put(NULL, (size_t)n * qd * 4), *dqkv = dev_put(qkv, (size_t)n * row * 4);
    float *db = dev_put(bias, (size_t)row * 4), *dinv = dev_put(inv, (size_t)HD / 2 * 4);
    int32_t *dpos = dev_put(pos, sizeof pos), *dslot = dev_put(slot, sizeof slot);
    size_t cache = (size_t)n_slots * kd;
    uint16_t *dk = dev_put(NULL, cache * 2), *dv = dev_put(NULL, cache * 2);
    (void)bs;
    assert_int_equal(cuda_qkv_rope_store(dq, dqkv, with_bias ? db : NULL, dinv, dpos, dslot, dk, dv,
                                         n, H, KVH, HD, 0),
                     cudaSuccess);
    float *q_got = malloc((size_t)n * qd * 4), *k_got = malloc((size_t)n * kd * 4);
    float *v_got = malloc((size_t)n * kd * 4);
    uint16_t *kc = malloc(cache * 2), *vc = malloc(cache * 2);
    dev_get(q_got, dq, (size_t)n * qd * 4);
    dev_get(kc, dk, cache * 2);
    dev_get(vc, dv, cache * 2);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < kd; i++) {
            k_got[t * kd + i] = bf16_to_f32(kc[(size_t)slot[t] * kd + i]);
            v_got[t * kd + i] = bf16_to_f32(vc[(size_t)slot[t] * kd + i]);
        }
    check_nmse(q_got, q_want, (size_t)n * qd, "rope q");
    check_nmse(k_got, k_want, (size_t)n * kd, "rope k (bf16 cache)");
    check_nmse(v_got, v_want, (size_t)n * kd, "v (bf16 cache)");
    cudaFree(dq);
    cudaFree(dqkv);
    cudaFree(db);
    cudaFree(dinv);
    cudaFree(dpos);
    cudaFree(dslot);
    cudaFree(dk);
    cudaFree(dv);
    free(inv);
    free(qkv);
    free(bias);
    free(q_want);
    free(k_want);
    free(v_want);
    free(q_got);
    free(k_got);
    free(v_got);
    free(kc);
    free(vc);
}

static void test_qkv_rope_store(void **state)
{
    (void)state;
    check_qkv_rope(4, 2, 16, 0, 1);
    check_qkv_rope(14, 2, 64, 0, 1);
    check_qkv_rope(32, 8, 64, 1, 0);
    check_qkv_rope(9, 3, 128, 1, 1);
}

/* ---- attention ------------------------------------------------------------------------------ */

/* A sequence of ctx positions in a scattered paged cache, held both as a CPU f32 pool (values
 * rounded to bf16) and as the device bf16 pool; queries of tokens at positions start..ctx-1. */
static void check_attention(int H, int KVH, int HD, int bs, int ctx, int n_q, int decode,
                            int n_split)
{
    const int n_blocks = (ctx + bs - 1) / bs + 3;
    struct kv_layout L = {1, KVH, HD, bs, n_blocks};
    struct kv_pool *kv = NULL;
    char err[128];
    assert_int_equal(kv_pool_create(&L, &kv, err, sizeof err), 0);
    int32_t *table = malloc((size_t)n_blocks * 4);
    for (int i = 0; i < n_blocks; i++)
        table[i] = (int32_t)((i * 7 + 2) % n_blocks); /* a permutation: n_blocks is not 7k */
    if (n_blocks % 7 == 0)
        for (int i = 0; i < n_blocks; i++)
            table[i] = n_blocks - 1 - i;
    const size_t kd = (size_t)KVH * HD;
    float *k = malloc(kd * 4), *v = malloc(kd * 4);
    for (int p = 0; p < ctx; p++) {
        for (size_t i = 0; i < kd; i++) {
            k[i] = bfr(2.0f * frand());
            v[i] = bfr(frand());
        }
        kv_store(kv, 0, table, p, k, v);
    }
    size_t elems = (size_t)n_blocks * bs * kd;
    uint16_t *kb = to_bf16(kv->k, elems), *vb = to_bf16(kv->v, elems);
    const size_t qd = (size_t)H * HD;
    float *q = frandv((size_t)n_q * qd, 1.0f), *want = malloc((size_t)n_q * qd * 4);
    float *got = malloc((size_t)n_q * qd * 4), *scratch = malloc((size_t)bs * 4);
    int32_t *pos = malloc((size_t)n_q * 4), *seq = calloc((size_t)n_q, 4);
    const int G = H / KVH;
    for (int t = 0; t < n_q; t++) {
        pos[t] = ctx - n_q + t;
        for (int h = 0; h < H; h++)
            attention_head(want + t * qd + (size_t)h * HD, q + t * qd + (size_t)h * HD, kv, 0,
                           table, pos[t], h / G, scratch);
    }
    int32_t tiles[512];
    int n_tiles = 0, tt = cuda_attention_tile_tokens(H, KVH);
    for (int t = 0; t < n_q; t += tt) {
        tiles[2 * n_tiles] = t;
        tiles[2 * n_tiles + 1] = n_q - t < tt ? n_q - t : tt;
        n_tiles++;
    }
    assert_true(n_tiles <= 256);
    struct cuda_attn a = {
        .out = dev_put(NULL, (size_t)n_q * qd * 4),
        .q = dev_put(q, (size_t)n_q * qd * 4),
        .k_cache = dev_put(kb, elems * 2),
        .v_cache = dev_put(vb, elems * 2),
        .block_tables = dev_put(table, (size_t)n_blocks * 4),
        .bt_stride = n_blocks,
        .tok_seq = dev_put(seq, (size_t)n_q * 4),
        .pos = dev_put(pos, (size_t)n_q * 4),
        .n_tok = n_q,
        .n_heads = H,
        .n_kv_heads = KVH,
        .head_dim = HD,
        .block_size = bs,
        .scale = 1.0f / sqrtf((float)HD),
    };
    float *ws = NULL;
    int32_t *dtiles = dev_put(tiles, (size_t)n_tiles * 8);
    if (decode) {
        ws = dev_put(NULL, cuda_attention_decode_ws(n_q, H, HD, n_split) * 4 + 4);
        assert_int_equal(cuda_attention_decode(&a, n_split, ws, 0), cudaSuccess);
    } else {
        assert_int_equal(cuda_attention_prefill(&a, dtiles, n_tiles, tt, 0), cudaSuccess);
    }
    dev_get(got, a.out, (size_t)n_q * qd * 4);
    char what[96];
    snprintf(what, sizeof what, "%s attention H %d KVH %d HD %d bs %d ctx %d q %d split %d",
             decode ? "decode" : "prefill", H, KVH, HD, bs, ctx, n_q, n_split);
    check_nmse(got, want, (size_t)n_q * qd, what);
    cudaFree(a.out);
    cudaFree((void *)a.q);
    cudaFree((void *)a.k_cache);
    cudaFree((void *)a.v_cache);
    cudaFree((void *)a.block_tables);
    cudaFree((void *)a.tok_seq);
    cudaFree((void *)a.pos);
    cudaFree(ws);
    cudaFree(dtiles);
    kv_pool_free(kv);
    free(table);
    free(k);
    free(v);
    free(kb);
    free(vb);
    free(q);
    free(want);
    free(got);
    free(scratch);
    free(pos);
    free(seq);
}

static const int SHAPES[][3] = {
    {4, 2, 16},  {4, 1, 16},  {14, 2, 64}, {32, 8, 64}, {9, 3, 64},
    {12, 1, 64}, {8, 2, 128}, {4, 4, 256}, {6, 2, 80},
};

static void test_attention_decode(void **state)
{
    (void)state;
    for (size_t s = 0; s < sizeof SHAPES / sizeof *SHAPES; s++) {
        const int H = SHAPES[s][0], KVH = SHAPES[s][1], HD = SHAPES[s][2];
        check_attention(H, KVH, HD, 16, 1, 1, 1, 1);
        check_attention(H, KVH, HD, 16, 37, 3, 1, 1);
        check_attention(H, KVH, HD, 5, 300, 2, 1, 4);
        check_attention(H, KVH, HD, 16, 1100, 1, 1, 7);
        check_attention(H, KVH, HD, 16, 40, 1, 1, 32); /* more splits than 32-key chunks */
    }
}

static void test_attention_prefill(void **state)
{
    (void)state;
    for (size_t s = 0; s < sizeof SHAPES / sizeof *SHAPES; s++) {
        const int H = SHAPES[s][0], KVH = SHAPES[s][1], HD = SHAPES[s][2];
        check_attention(H, KVH, HD, 16, 1, 1, 0, 1);
        check_attention(H, KVH, HD, 4, 45, 45, 0, 1);   /* a whole prompt */
        check_attention(H, KVH, HD, 16, 333, 70, 0, 1); /* a chunk after a cached prefix */
    }
}

/* ---- sampling ------------------------------------------------------------------------------- */

static int32_t *run_sample(const float *logits, int rows, int V, const struct cuda_sample_params *p)
{
    float *dl = dev_put(logits, (size_t)rows * V * 4);
    struct cuda_sample_params *dp = dev_put(p, (size_t)rows * sizeof *p);
    int32_t *dout = dev_put(NULL, (size_t)rows * 4), *out = malloc((size_t)rows * 4);
    assert_int_equal(cuda_sample(dout, dl, rows, V, dp, 0), cudaSuccess);
    dev_get(out, dout, (size_t)rows * 4);
    cudaFree(dl);
    cudaFree(dp);
    cudaFree(dout);
    return out;
}

static void test_sampling(void **state)
{
    (void)state;
    const int V = 151936, R = 6;
    float *lg = frandv((size_t)R * V, 8.0f);
    lg[3 * (size_t)V + 77] = lg[3 * (size_t)V + 5] = 100.0f; /* a tie: the lowest id wins */
    struct cuda_sample_params p[6];
    for (int r = 0; r < R; r++)
        p[r] = (struct cuda_sample_params){0.0f, 1.0f, 0, 0, 1234, (uint64_t)r};
    p[4].temperature = 0.8f; /* top_k 1 is greedy too */
    p[4].top_k = 1;
    int32_t *out = run_sample(lg, R, V, p);
    for (int r = 0; r < R; r++)
        assert_int_equal(out[r], sampler_argmax(lg + (size_t)r * V, V));
    assert_int_equal(out[3], 5);
    free(out);
    free(lg);

    /* distribution over a small vocabulary: 4096 draws (rows) with distinct steps */
    const int SV = 8, N = 4096;
    float base[8] = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, 3.0f, -2.0f, 1.5f};
    float *small = malloc((size_t)N * SV * 4);
    struct cuda_sample_params *sp = malloc((size_t)N * sizeof *sp);
    const float T = 0.7f, top_p = 0.8f;
    const int top_k = 4;
    for (int i = 0; i < N; i++) {
        memcpy(small + (size_t)i * SV, base, sizeof base);
        sp[i] = (struct cuda_sample_params){T, top_p, top_k, 0, 99, (uint64_t)i};
    }
    out = run_sample(small, N, SV, sp);
    /* reference: softmax(base / T), top 4, then the smallest prefix with mass >= 0.8 */
    int order[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    for (int i = 0; i < SV; i++)
        for (int j = i + 1; j < SV; j++)
            if (base[order[j]] > base[order[i]]) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    double pr[8] = {0}, tot = 0;
    for (int i = 0; i < top_k; i++)
        tot += pr[order[i]] = exp((base[order[i]] - base[order[0]]) / T);
    double acc = 0;
    int keep = 0;
    while (keep < top_k && acc < top_p * tot)
        acc += pr[order[keep++]];
    double kept = 0;
    for (int i = 0; i < keep; i++)
        kept += pr[order[i]];
    int count[8] = {0};
    for (int i = 0; i < N; i++) {
        assert_in_range(out[i], 0, SV - 1);
        count[out[i]]++;
    }
    for (int i = 0; i < SV; i++) {
        int in = 0;
        for (int j = 0; j < keep; j++)
            in |= order[j] == i;
        double want = in ? pr[i] / kept : 0.0, got = (double)count[i] / N;
        if (!in) assert_int_equal(count[i], 0); /* cut by top-k / top-p */
        if (fabs(got - want) > 0.03) fail_msg("token %d drawn %.3f, want %.3f", i, got, want);
    }
    /* the same (seed, step) gives the same token */
    int32_t *again = run_sample(small, N, SV, sp);
    assert_memory_equal(out, again, (size_t)N * 4);
    free(again);
    free(out);
    free(small);
    free(sp);
}

/* ---- KV block staging ----------------------------------------------------------------------- */

static void test_kv_block_copy(void **state)
{
    (void)state;
    const int n_layers = 3, n_blocks = 5;
    const size_t block_elems = 4 * 2 * 16, layer = (size_t)n_blocks * block_elems;
    float *src = frandv(2 * n_layers * block_elems, 1.0f),
          *back = malloc(2 * n_layers * block_elems * 4);
    for (size_t i = 0; i < 2 * n_layers * block_elems; i++)
        src[i] = bfr(src[i]); /* exact through bf16 */
    uint16_t *k = dev_put(NULL, n_layers * layer * 2), *v = dev_put(NULL, n_layers * layer * 2);
    float *st = dev_put(src, 2 * n_layers * block_elems * 4);
    assert_int_equal(cuda_kv_block_copy(k, v, st, n_layers, layer, block_elems, 3, 1, 0),
                     cudaSuccess);
    assert_int_equal(cudaMemset(st, 0, 2 * n_layers * block_elems * 4), cudaSuccess);
    assert_int_equal(cuda_kv_block_copy(k, v, st, n_layers, layer, block_elems, 3, 0, 0),
                     cudaSuccess);
    dev_get(back, st, 2 * n_layers * block_elems * 4);
    assert_memory_equal(back, src, 2 * n_layers * block_elems * 4);
    cudaFree(k);
    cudaFree(v);
    cudaFree(st);
    free(src);
    free(back);
}

int main(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("test_cuda_kernels: no CUDA device, skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embed),
        cmocka_unit_test(test_add_rmsnorm),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_gemv),
        cmocka_unit_test(test_qkv_rope_store),
        cmocka_unit_test(test_attention_decode),
        cmocka_unit_test(test_attention_prefill),
        cmocka_unit_test(test_sampling),
        cmocka_unit_test(test_kv_block_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
