/* Tests for the sampler: the PRNG stream, greedy choice, top-k, top-p, penalties, seeds and the
 * sampled distribution. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "engine/sampler.h"

#include <math.h>
#include <string.h>

static void test_rng(void **state)
{
    (void)state;
    struct sampler_rng a, b, c;
    sampler_rng_seed(&a, 7);
    sampler_rng_seed(&b, 7);
    sampler_rng_seed(&c, 8);
    int differ = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = sampler_rng_next(&a), z = sampler_rng_next(&c);
        assert_true(x == sampler_rng_next(&b));
        differ += x != z;
        double u = sampler_rng_uniform(&a);
        (void)sampler_rng_next(&b);
        assert_true(u >= 0.0 && u < 1.0);
    }
    assert_true(differ > 990);
    /* seed 0 is as good as any other */
    sampler_rng_seed(&a, 0);
    assert_true(a.s[0] | a.s[1] | a.s[2] | a.s[3]);
}

static void test_greedy(void **state)
{
    (void)state;
    float l[6] = {0.5f, 2.0f, NAN, 2.0f, -1.0f, 1.0f};
    assert_int_equal(sampler_argmax(l, 6), 1); /* ties: lowest id; NaN skipped */
    struct sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0.0f;
    struct sampler s;
    assert_int_equal(sampler_init(&s, &p, 6), 0);
    for (int i = 0; i < 10; i++) {
        float x[6];
        memcpy(x, l, sizeof x);
        assert_int_equal(sampler_sample(&s, x), 1);
    }
    sampler_release(&s);
    assert_int_equal(sampler_init(&s, &p, 0), -1);
}

/* Counts of each id over n draws from logits under p. */
static void draw(const struct sampler_params *p, const float *logits, int vocab, int n, int *counts)
{
    struct sampler s;
    assert_int_equal(sampler_init(&s, p, vocab), 0);
    float x[16];
    memset(counts, 0, (size_t)vocab * sizeof *counts);
    for (int i = 0; i < n; i++) {
        memcpy(x, logits, (size_t)vocab * sizeof *x);
        int32_t id = sampler_sample(&s, x);
        assert_true(id >= 0 && id < vocab);
        counts[id]++;
    }
    sampler_release(&s);
}

static void test_distribution(void **state)
{
    (void)state;
    const float l[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    struct sampler_params p;
    sampler_params_default(&p);
    p.seed = 1234;
    int c[4];
    const int N = 20000;
    draw(&p, l, 4, N, c);
    const double want[4] = {0.5, 0.3, 0.15, 0.05};
    for (int i = 0; i < 4; i++)
        assert_true(fabs((double)c[i] / N - want[i]) < 0.02);

    /* top_p 0.75: the nucleus is {0, 1} (0.5 + 0.3 >= 0.75), renormalised 5:3 */
    p.top_p = 0.75f;
    draw(&p, l, 4, N, c);
    assert_int_equal(c[2] + c[3], 0);
    assert_true(fabs((double)c[0] / N - 0.625) < 0.02);

    /* top_k 3 drops the least likely */
    sampler_params_default(&p);
    p.top_k = 3;
    draw(&p, l, 4, N, c);
    assert_int_equal(c[3], 0);
    assert_true(fabs((double)c[0] / N - 0.5 / 0.95) < 0.02);

    /* top_k 1 and a tiny top_p are greedy */
    p.top_k = 1;
    draw(&p, l, 4, 200, c);
    assert_int_equal(c[0], 200);
    sampler_params_default(&p);
    p.top_p = 0.01f;
    draw(&p, l, 4, 200, c);
    assert_int_equal(c[0], 200);

    /* a low temperature sharpens, a high one flattens */
    sampler_params_default(&p);
    p.temperature = 0.25f;
    draw(&p, l, 4, N, c);
    assert_true((double)c[0] / N > 0.8);
    p.temperature = 2.0f;
    draw(&p, l, 4, N, c);
    assert_true((double)c[0] / N < 0.4);
}

static void test_penalties(void **state)
{
    (void)state;
    struct sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0.0f;
    p.frequency_penalty = 0.3f;
    struct sampler s;
    assert_int_equal(sampler_init(&s, &p, 3), 0);
    float l[3] = {1.0f, 1.5f, 0.0f};
    sampler_accept(&s, 1);
    float x[3];
    memcpy(x, l, sizeof x);
    assert_int_equal(sampler_sample(&s, x), 1); /* 1.5 - 0.3 still wins */
    assert_float_equal(x[1], 1.2f, 1e-6);
    sampler_accept(&s, 1);
    memcpy(x, l, sizeof x);
    assert_int_equal(sampler_sample(&s, x), 0); /* 1.5 - 0.6 < 1 */
    sampler_accept(&s, 99);                     /* out of range: ignored */
    sampler_release(&s);

    sampler_params_default(&p);
    p.temperature = 0.0f;
    p.presence_penalty = 0.4f;
    assert_int_equal(sampler_init(&s, &p, 3), 0);
    sampler_accept(&s, 1);
    sampler_accept(&s, 1);
    memcpy(x, l, sizeof x);
    assert_int_equal(sampler_sample(&s, x), 1); /* presence counts once: 1.1 > 1 */
    assert_float_equal(x[1], 1.1f, 1e-6);
    sampler_release(&s);
}

static void test_seed_reproducible(void **state)
{
    (void)state;
    enum { V = 16, N = 200 };
    float l[V];
    for (int i = 0; i < V; i++)
        l[i] = (float)((i * 7) % 5) * 0.3f;
    int32_t a[N], b[N], c[N];
    for (int run = 0; run < 3; run++) {
        struct sampler_params p;
        sampler_params_default(&p);
        p.top_p = 0.9f;
        p.top_k = 12;
        p.seed = run == 2 ? 43 : 42;
        struct sampler s;
        assert_int_equal(sampler_init(&s, &p, V), 0);
        int32_t *out = run == 0 ? a : run == 1 ? b : c;
        for (int i = 0; i < N; i++) {
            float x[V];
            memcpy(x, l, sizeof x);
            out[i] = sampler_sample(&s, x);
        }
        sampler_release(&s);
    }
    assert_memory_equal(a, b, sizeof a);
    assert_true(memcmp(a, c, sizeof a) != 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rng),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_distribution),
        cmocka_unit_test(test_penalties),
        cmocka_unit_test(test_seed_reproducible),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
