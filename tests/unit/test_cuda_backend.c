/* Tests for the CUDA backend on the fixture models: logits against Hugging Face and against the
 * CPU backend, greedy decoding, batched vs one-by-one, decode graphs replayed across batch-size
 * changes, KV block transfer in the CPU layout, and clean errors (out of device memory, bad
 * batches). Exits 77 (skipped) without a device.
 *
 * Bounds: the CPU backend (f32 weights as stored, f32 activations and KV) meets NMSE < 1e-5
 * against HF. This backend keeps weights, KV and the GEMM inputs of > 8 tokens in bf16, so f32
 * and f16 checkpoints lose mantissa bits at upload; its bound is NMSE <= 1e-4 (a wrong kernel
 * gives ~1e-1 and more). Greedy tokens must equal HF's and the CPU backend's, except where the
 * two best logits are a near-tie (within NEAR_TIE of the logit scale): there the trajectories may
 * part and the comparison stops, reported on stdout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "engine/backend.h"
#include "engine/cuda/backend_cuda.h"
#include "engine/json.h"
#include "engine/model.h"
#include "engine/sampler.h"

#include <cuda_runtime_api.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HF_BOUND 1e-4
#define NEAR_TIE 2e-3

static const char *FIXTURES[] = {"llama-tiny-bf16", "qwen2-tiny-f32", "llama3-rope-f16"};

static struct model *load_fixture(const char *name, char *dir, size_t len)
{
    char err[512];
    const char *src = getenv("LLMGATE_SRCDIR");
    snprintf(dir, len, "%s/tests/fixtures/models/%s", src ? src : ".", name);
    struct model *m = NULL;
    if (model_load(dir, &m, err, sizeof err) != 0) fail_msg("%s", err);
    return m;
}

static struct backend *make(const struct model *m, int cuda, int n_blocks, int bs)
{
    char err[512];
    struct backend_params bp = {.n_threads = 2, .block_size = bs, .n_blocks = n_blocks};
    struct backend *b = NULL;
    int rc = cuda ? backend_cuda_create(m, &bp, &b, err, sizeof err)
                  : backend_cpu_create(m, &bp, &b, err, sizeof err);
    if (rc != 0) fail_msg("%s backend: %s", cuda ? "cuda" : "cpu", err);
    return b;
}

static double nmse(const float *got, const float *want, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return num / (den > 0 ? den : 1);
}

static void check_close(const float *got, const float *want, size_t n, double bound,
                        const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(got[i])) fail_msg("%s: [%zu] = %g", what, i, got[i]);
    double e = nmse(got, want, n);
    if (!(e <= bound)) fail_msg("%s: NMSE %g > %g", what, e, bound);
}

/* 1 when logits[a] and logits[b] are within NEAR_TIE of the logit range. */
static int near_tie(const float *logits, int V, int a, int b)
{
    float lo = logits[0], hi = logits[0];
    for (int i = 1; i < V; i++) {
        if (logits[i] < lo) lo = logits[i];
        if (logits[i] > hi) hi = logits[i];
    }
    return fabsf(logits[a] - logits[b]) <= NEAR_TIE * (hi - lo);
}

/* ---- against Hugging Face and the CPU backend ------------------------------------------------ */

static void test_fixtures_vs_hf_and_cpu(void **state)
{
    (void)state;
    for (size_t f = 0; f < sizeof FIXTURES / sizeof *FIXTURES; f++) {
        char dir[512], path[600], err[256];
        struct model *m = load_fixture(FIXTURES[f], dir, sizeof dir);
        snprintf(path, sizeof path, "%s/reference.json", dir);
        struct ejson_doc *doc = ejson_parse_file(path, err, sizeof err);
        if (!doc) fail_msg("%s", err);
        const struct ejson *root = ejson_root(doc);
        const struct ejson *prompt = ejson_get(root, "prompt"), *ref = ejson_get(root, "logits");
        const struct ejson *greedy = ejson_get(root, "greedy");
        const int V = m->cfg.vocab_size, P = (int)prompt->n, G = (int)greedy->n;
        struct backend *gb = make(m, 1, 64, 4), *cb = make(m, 0, 64, 4);
        int32_t table[16], tokens[64];
        for (int i = 0; i < 16; i++)
            table[i] = 63 - 3 * i; /* scattered, crossing block boundaries */
        for (int i = 0; i < P; i++)
            tokens[i] = (int32_t)prompt->items[i].num;
        float *lg = malloc((size_t)P * V * 4), *lc = malloc((size_t)P * V * 4);
        float *want = malloc((size_t)V * 4);
        struct batch_seq s = {tokens, P, 0, table, 16};
        struct batch batch = {&s, 1, 1};
        assert_int_equal(backend_forward(gb, &batch, lg, err, sizeof err), 0);
        assert_int_equal(backend_forward(cb, &batch, lc, err, sizeof err), 0);
        for (int p = 0; p < P; p++) {
            for (int i = 0; i < V; i++)
                want[i] = (float)ref->items[p].items[i].num;
            char what[96];
            snprintf(what, sizeof what, "%s position %d vs HF", FIXTURES[f], p);
            check_close(lg + (size_t)p * V, want, (size_t)V, HF_BOUND, what);
            snprintf(what, sizeof what, "%s position %d vs cpu", FIXTURES[f], p);
            check_close(lg + (size_t)p * V, lc + (size_t)p * V, (size_t)V, HF_BOUND, what);
        }
        /* greedy decoding on both backends, token by token */
        int32_t ng = sampler_argmax(lg + (size_t)(P - 1) * V, V);
        int32_t nc = sampler_argmax(lc + (size_t)(P - 1) * V, V);
        for (int g = 0; g < G; g++) {
            int32_t hf = (int32_t)greedy->items[g].num;
            if (ng != hf || nc != hf) {
                if (ng != hf && !near_tie(lg, V, ng, hf))
                    fail_msg("%s greedy %d: cuda %d, HF %d", FIXTURES[f], g, ng, hf);
                if (ng != nc && !near_tie(lc, V, ng, nc))
                    fail_msg("%s greedy %d: cuda %d, cpu %d", FIXTURES[f], g, ng, nc);
                printf("%s: near-tie at greedy token %d (cuda %d, cpu %d, HF %d): stop\n",
                       FIXTURES[f], g, ng, nc, hf);
                break;
            }
            if (g == G - 1) break;
            struct batch_seq dg = {&ng, 1, P + g, table, 16}, dc = {&nc, 1, P + g, table, 16};
            struct batch bg = {&dg, 1, 0}, bc = {&dc, 1, 0};
            assert_int_equal(backend_forward(gb, &bg, lg, err, sizeof err), 0);
            assert_int_equal(backend_forward(cb, &bc, lc, err, sizeof err), 0);
            ng = sampler_argmax(lg, V);
            nc = sampler_argmax(lc, V);
        }
        free(lg);
        free(lc);
        free(want);
        ejson_free(doc);
        backend_free(gb);
        backend_free(cb);
        model_free(m);
    }
}

/* ---- batched vs one by one, KV blocks ---------------------------------------------------------
 */

#define NSEQ 4

static void batched_vs_single(const char *fixture)
{
    char dir[512], err[256];
    struct model *m = load_fixture(fixture, dir, sizeof dir);
    const int V = m->cfg.vocab_size;
    struct backend *b = make(m, 1, 128, 4);
    static const int len[NSEQ] = {1, 5, 13, 7};
    int32_t toks[NSEQ][16], tables[NSEQ][8];
    for (int s = 0; s < NSEQ; s++) {
        for (int i = 0; i < 16; i++)
            toks[s][i] = (int32_t)((s * 37 + i * 11 + 3) % V);
        for (int i = 0; i < 8; i++)
            tables[s][i] = 127 - (i * NSEQ + s);
    }
    float *single = malloc((size_t)NSEQ * V * 4), *batched = malloc((size_t)NSEQ * V * 4);
    float *all = malloc((size_t)32 * V * 4);
    for (int s = 0; s < NSEQ; s++) {
        struct batch_seq q = {toks[s], len[s], 0, tables[s], 8};
        struct batch one = {&q, 1, 0};
        assert_int_equal(backend_forward(b, &one, single + (size_t)s * V, err, sizeof err), 0);
    }
    struct batch_seq seqs[NSEQ];
    for (int s = 0; s < NSEQ; s++)
        seqs[s] = (struct batch_seq){toks[s], len[s], 0, tables[s], 8};
    struct batch many = {seqs, NSEQ, 0};
    assert_int_equal(backend_forward(b, &many, batched, err, sizeof err), 0);
    check_close(batched, single, (size_t)NSEQ * V, HF_BOUND, "batched prefill");
    many.all_logits = 1;
    assert_int_equal(backend_forward(b, &many, all, err, sizeof err), 0);
    for (int s = 0, row = 0; s < NSEQ; row += len[s], s++)
        check_close(all + (size_t)(row + len[s] - 1) * V, single + (size_t)s * V, (size_t)V,
                    HF_BOUND, "all_logits");
    /* chunked prefill of sequence 2: 3, 5, 5 tokens */
    int at = 0;
    const int chunks[3] = {3, 5, 5};
    for (int c = 0; c < 3; c++) {
        struct batch_seq q = {toks[2] + at, chunks[c], at, tables[2], 8};
        struct batch one = {&q, 1, 0};
        assert_int_equal(backend_forward(b, &one, batched, err, sizeof err), 0);
        at += chunks[c];
    }
    check_close(batched, single + 2 * (size_t)V, (size_t)V, HF_BOUND, "chunked prefill");

    /* KV blocks: read, write elsewhere, read back; f32 host layout, bf16 values */
    size_t bytes = kv_block_bytes(&b->kv);
    float *blk = malloc(bytes), *blk2 = malloc(bytes);
    assert_int_equal(b->ops->kv_read_block(b, tables[2][0], blk, err, sizeof err), 0);
    int nonzero = 0;
    for (size_t i = 0; i < bytes / 4; i++) {
        nonzero |= blk[i] != 0.0f;
        assert_true(bf16_to_f32(f32_to_bf16(blk[i])) == blk[i]);
    }
    assert_true(nonzero);
    assert_int_equal(b->ops->kv_write_block(b, 0, blk, err, sizeof err), 0);
    assert_int_equal(b->ops->kv_read_block(b, 0, blk2, err, sizeof err), 0);
    assert_memory_equal(blk, blk2, bytes);
    assert_int_equal(b->ops->kv_read_block(b, 128, blk2, err, sizeof err), -1);

    /* the same block from the CPU backend after the same prefill: equal up to bf16 rounding */
    struct backend *c = make(m, 0, 128, 4);
    struct batch_seq q = {toks[2], len[2], 0, tables[2], 8};
    struct batch one = {&q, 1, 0};
    assert_int_equal(backend_forward(c, &one, batched, err, sizeof err), 0);
    assert_int_equal(c->ops->kv_read_block(c, tables[2][0], blk2, err, sizeof err), 0);
    check_close(blk, blk2, bytes / 4, HF_BOUND, "kv block vs cpu");
    backend_free(c);

    free(blk);
    free(blk2);
    free(single);
    free(batched);
    free(all);
    backend_free(b);
    model_free(m);
}

static void test_batched_matches_single(void **state)
{
    (void)state;
    for (size_t f = 0; f < sizeof FIXTURES / sizeof *FIXTURES; f++)
        batched_vs_single(FIXTURES[f]);
}

/* ---- decode graphs ----------------------------------------------------------------------------
 */

/* Two backends, graphs on and off, fed the same steps: prefill 40 sequences, then decode steps
 * whose batch sizes change (buckets are reused, grown and shrunk); logits must agree. */
static void test_graph_replay_across_batch_sizes(void **state)
{
    (void)state;
    char dir[512], err[256];
    struct model *m = load_fixture("qwen2-tiny-f32", dir, sizeof dir);
    const int V = m->cfg.vocab_size, NS = 40, bs = 4, per = 8;
    struct backend *g = make(m, 1, NS * per + 1, bs), *e = make(m, 1, NS * per + 1, bs);
    assert_int_equal(backend_cuda_set_graphs(g, 1), 0);
    assert_int_equal(backend_cuda_set_graphs(e, 0), 0);
    int32_t *tables = malloc((size_t)NS * per * 4), toks[40][3], next[40];
    int pos[40];
    for (int s = 0; s < NS; s++) {
        for (int j = 0; j < per; j++)
            tables[s * per + j] = NS * per - 1 - (j * NS + s);
        for (int i = 0; i < 3; i++)
            toks[s][i] = (int32_t)((s * 13 + i * 7 + 1) % V);
        pos[s] = 3;
        next[s] = (int32_t)((s * 5 + 2) % V);
    }
    float *lg = malloc((size_t)NS * V * 4), *le = malloc((size_t)NS * V * 4);
    struct batch_seq seqs[40];
    for (int s = 0; s < NS; s++)
        seqs[s] = (struct batch_seq){toks[s], 3, 0, tables + s * per, per};
    struct batch pre = {seqs, NS, 0};
    assert_int_equal(backend_forward(g, &pre, lg, err, sizeof err), 0);
    assert_int_equal(backend_forward(e, &pre, le, err, sizeof err), 0);
    /* buckets 4, 1, 8, 2, 8 (reused with new contents), 32, 4, 64, 4, 1 */
    static const int sizes[] = {3, 1, 8, 2, 5, 17, 4, 40, 3, 1};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        int B = sizes[k], first = (int)(k * 7) % (NS - B + 1);
        for (int i = 0; i < B; i++) {
            int s = first + i;
            seqs[i] = (struct batch_seq){&next[s], 1, pos[s], tables + s * per, per};
        }
        struct batch d = {seqs, B, 0};
        assert_int_equal(backend_forward(g, &d, lg, err, sizeof err), 0);
        assert_int_equal(backend_forward(e, &d, le, err, sizeof err), 0);
        char what[64];
        snprintf(what, sizeof what, "decode step %zu batch %d: graph vs eager", k, B);
        check_close(lg, le, (size_t)B * V, 1e-6, what);
        for (int i = 0; i < B; i++) {
            int s = first + i;
            pos[s]++;
            next[s] = sampler_argmax(lg + (size_t)i * V, V);
        }
    }
    struct backend_cuda_stats st;
    assert_int_equal(backend_cuda_get_stats(g, &st), 0);
    /* buckets used: 4, 1, 8, 2, 32, 64 */
    assert_int_equal(st.graph_captures, 6);
    assert_int_equal(st.graph_replays, (long)(sizeof sizes / sizeof *sizes));
    assert_int_equal(backend_cuda_get_stats(e, &st), 0);
    assert_int_equal(st.graph_replays, 0);
    free(tables);
    free(lg);
    free(le);
    backend_free(g);
    backend_free(e);
    model_free(m);
}

/* ---- errors -----------------------------------------------------------------------------------
 */

static void test_errors_are_clean(void **state)
{
    (void)state;
    char dir[512], err[512] = "";
    struct model *m = load_fixture("llama-tiny-bf16", dir, sizeof dir);
    struct backend_params bp = {.block_size = 16, .n_blocks = INT_MAX / 2};
    struct backend *b = NULL;
    assert_int_equal(backend_cuda_create(m, &bp, &b, err, sizeof err), -1);
    assert_null(b);
    printf("absurd KV pool: %s\n", err);
    assert_non_null(strstr(err, "out of device memory"));

    /* the device is still usable afterwards; a bad batch is an error, not a broken backend */
    b = make(m, 1, 16, 16);
    int32_t bad = 100000, good = 1, table[1] = {0};
    float *lg = malloc((size_t)m->cfg.vocab_size * 4);
    struct batch_seq s = {&bad, 1, 0, table, 1};
    struct batch one = {&s, 1, 0};
    assert_int_equal(backend_forward(b, &one, lg, err, sizeof err), -1);
    s.tokens = &good;
    assert_int_equal(backend_forward(b, &one, lg, err, sizeof err), 0);
    assert_string_equal(b->ops->name, "cuda");
    backend_free(b);

    char note[256];
    assert_int_equal(backend_create_auto("cuda", m, NULL, &b, note, sizeof note, err, sizeof err),
                     0);
    assert_string_equal(b->ops->name, "cuda");
    backend_free(b);
    assert_int_equal(backend_create_auto("auto", m, NULL, &b, note, sizeof note, err, sizeof err),
                     0);
    assert_string_equal(b->ops->name, "cuda");
    backend_free(b);
    assert_int_equal(backend_create_auto("tpu", m, NULL, &b, note, sizeof note, err, sizeof err),
                     -1);
    free(lg);
    model_free(m);
}

int main(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("test_cuda_backend: no CUDA device, skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixtures_vs_hf_and_cpu),
        cmocka_unit_test(test_batched_matches_single),
        cmocka_unit_test(test_graph_replay_across_batch_sizes),
        cmocka_unit_test(test_errors_are_clean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
