/* Tests for model loading and the CPU forward against Hugging Face transformers: every fixture in
 * tests/fixtures/models reproduces the reference logits (NMSE < 1e-5) and 32 greedy tokens; bad
 * configs and checkpoints are rejected with messages that name the field or tensor. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "engine/backend.h"
#include "engine/json.h"
#include "engine/mkmodel.h"
#include "engine/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *FIXTURES[] = {"llama-tiny-bf16", "qwen2-tiny-f32", "llama3-rope-f16"};

static void fixture_dir(char *buf, size_t len, const char *name)
{
    const char *src = getenv("LLMGATE_SRCDIR");
    snprintf(buf, len, "%s/tests/fixtures/models/%s", src ? src : ".", name);
}

static int argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

/* Reads a fixture's reference.json: prompt, logits per prompt position, greedy ids. */
struct reference {
    struct ejson_doc *doc;
    const struct ejson *prompt, *logits, *greedy;
};

static void reference_load(struct reference *r, const char *dir)
{
    char path[600], err[256];
    snprintf(path, sizeof path, "%s/reference.json", dir);
    r->doc = ejson_parse_file(path, err, sizeof err);
    if (!r->doc) fail_msg("%s", err);
    const struct ejson *root = ejson_root(r->doc);
    r->prompt = ejson_get(root, "prompt");
    r->logits = ejson_get(root, "logits");
    r->greedy = ejson_get(root, "greedy");
    assert_non_null(r->prompt);
    assert_non_null(r->logits);
    assert_non_null(r->greedy);
    assert_int_equal(r->logits->n, r->prompt->n);
}

static void test_reference_logits_and_greedy(void **state)
{
    (void)state;
    for (size_t f = 0; f < sizeof FIXTURES / sizeof *FIXTURES; f++) {
        char dir[512], err[512] = "";
        fixture_dir(dir, sizeof dir, FIXTURES[f]);
        struct model *m = NULL;
        if (model_load(dir, &m, err, sizeof err) != 0) fail_msg("%s: %s", FIXTURES[f], err);
        struct reference ref;
        reference_load(&ref, dir);
        const int V = m->cfg.vocab_size, P = (int)ref.prompt->n;
        const int G = (int)ref.greedy->n;

        /* small blocks, scattered in the pool, so attention crosses block boundaries */
        struct backend_params bp = {.n_threads = 2, .block_size = 4, .n_blocks = 64};
        struct backend *b = NULL;
        assert_int_equal(backend_cpu_create(m, &bp, &b, err, sizeof err), 0);
        int32_t table[16];
        for (int i = 0; i < 16; i++)
            table[i] = 63 - 3 * i;
        int32_t tokens[64];
        for (int i = 0; i < P; i++)
            tokens[i] = (int32_t)ref.prompt->items[i].num;

        float *logits = malloc((size_t)P * (size_t)V * sizeof(float));
        assert_non_null(logits);
        struct batch_seq s = {tokens, P, 0, table, 16};
        struct batch batch = {&s, 1, 1};
        assert_int_equal(backend_forward(b, &batch, logits, err, sizeof err), 0);
        for (int p = 0; p < P; p++) {
            const struct ejson *row = &ref.logits->items[p];
            assert_int_equal(row->n, V);
            double num = 0, den = 0;
            for (int i = 0; i < V; i++) {
                double d = logits[(size_t)p * V + i] - row->items[i].num;
                num += d * d;
                den += row->items[i].num * row->items[i].num;
            }
            if (num / den >= 1e-5) fail_msg("%s position %d: NMSE %g", FIXTURES[f], p, num / den);
        }

        /* greedy: the prompt's last logits, then one decode step per token */
        int32_t next = argmax(logits + (size_t)(P - 1) * V, V);
        for (int g = 0; g < G; g++) {
            if (next != (int32_t)ref.greedy->items[g].num)
                fail_msg("%s greedy token %d: got %d want %d", FIXTURES[f], g, next,
                         (int)ref.greedy->items[g].num);
            if (g == G - 1) break;
            struct batch_seq d = {&next, 1, P + g, table, 16};
            struct batch db = {&d, 1, 0};
            assert_int_equal(backend_forward(b, &db, logits, err, sizeof err), 0);
            next = argmax(logits, V);
        }
        free(logits);
        ejson_free(ref.doc);
        backend_free(b);
        model_free(m);
    }
}

static void test_fixture_configs(void **state)
{
    (void)state;
    char dir[512], err[512];
    struct model *m = NULL;
    fixture_dir(dir, sizeof dir, "qwen2-tiny-f32");
    assert_int_equal(model_load(dir, &m, err, sizeof err), 0);
    assert_int_equal(m->cfg.arch, ARCH_QWEN2);
    assert_true(m->cfg.qkv_bias);
    assert_true(m->cfg.tie_embeddings);
    assert_ptr_equal(m->w.lm_head.data, m->w.embed.data);
    assert_float_equal(m->cfg.rope_theta, 1e6f, 1.0f);
    assert_int_equal(m->w.layers[1].wq.type, WT_F32);
    assert_int_equal(m->cfg.n_eos, 1);
    assert_int_equal(m->cfg.eos_ids[0], 2);
    assert_float_equal(m->cfg.gen_temperature, 0.7f, 1e-6);
    assert_int_equal(m->cfg.gen_top_k, 40);
    model_free(m);

    fixture_dir(dir, sizeof dir, "llama3-rope-f16");
    assert_int_equal(model_load(dir, &m, err, sizeof err), 0);
    assert_int_equal(m->cfg.rope_type, ROPE_LLAMA3);
    assert_int_equal(m->cfg.head_dim, 16);
    assert_int_equal(m->cfg.n_kv_heads, 1);
    assert_int_equal(m->cfg.rope_orig_max_pos, 32);
    assert_int_equal(m->w.embed.type, WT_F32); /* F16 widened at load */
    model_free(m);

    fixture_dir(dir, sizeof dir, "llama-tiny-bf16");
    assert_int_equal(model_load(dir, &m, err, sizeof err), 0);
    assert_int_equal(m->w.embed.type, WT_BF16);
    assert_false(m->cfg.tie_embeddings);
    assert_ptr_not_equal(m->w.lm_head.data, m->w.embed.data);
    model_free(m);
}

static int parse(const char *cfg, const char *gen, struct model_config *c, char *notes, char *err,
                 size_t errlen)
{
    return model_config_parse(cfg, strlen(cfg), gen, gen ? strlen(gen) : 0, c, notes, 256, err,
                              errlen);
}

#define BASE                                                                                       \
    "\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"                        \
    "\"num_attention_heads\":4,\"vocab_size\":100"

static void test_config_parse(void **state)
{
    (void)state;
    struct model_config c;
    char notes[256], err[256];
    /* old rope_scaling form, eos list, GQA default, generation config */
    assert_int_equal(parse("{\"architectures\":[\"LlamaForCausalLM\"]," BASE
                           ",\"rope_theta\":500000,\"eos_token_id\":[5,6],"
                           "\"rope_scaling\":{\"type\":\"llama3\",\"factor\":32,"
                           "\"low_freq_factor\":1,\"high_freq_factor\":4,"
                           "\"original_max_position_embeddings\":8192}}",
                           "{\"eos_token_id\":[6,7],\"top_p\":0.5}", &c, notes, err, sizeof err),
                     0);
    assert_int_equal(c.arch, ARCH_LLAMA);
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.rope_type, ROPE_LLAMA3);
    assert_float_equal(c.rope_factor, 32.0f, 0);
    assert_float_equal(c.rope_theta, 500000.0f, 0);
    assert_int_equal(c.n_eos, 3);
    assert_int_equal(c.eos_ids[2], 7);
    assert_float_equal(c.gen_top_p, 0.5f, 1e-7);
    assert_true(c.gen_temperature < 0);

    /* Mistral's sliding window is noted, not applied */
    assert_int_equal(parse("{\"architectures\":[\"MistralForCausalLM\"]," BASE
                           ",\"num_key_value_heads\":2,\"sliding_window\":4096}",
                           NULL, &c, notes, err, sizeof err),
                     0);
    assert_int_equal(c.arch, ARCH_MISTRAL);
    assert_int_equal(c.sliding_window, 4096);
    assert_non_null(strstr(notes, "sliding_window"));

    struct {
        const char *cfg, *want;
    } bad[] = {
        {"{\"architectures\":[\"GPT2LMHeadModel\"]," BASE "}", "GPT2LMHeadModel"},
        {"{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"num_key_value_heads\":3}",
         "num_key_value_heads"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64}", "intermediate_size"},
        {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":-1}", "hidden_size"},
        {"{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"type\":\"yarn\"}}",
         "yarn"},
        {"{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"hidden_act\":\"gelu\"}", "gelu"},
        {"{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"eos_token_id\":\"x\"}",
         "eos_token_id"},
        {"[1]", "not a JSON object"},
        {"{\"architectures\":", "config.json"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = '\0';
        assert_int_equal(parse(bad[i].cfg, NULL, &c, notes, err, sizeof err), -1);
        if (!strstr(err, bad[i].want)) fail_msg("case %zu: '%s' lacks '%s'", i, err, bad[i].want);
    }
}

/* Copies a fixture to a temp dir with config.json replaced by cfg_json. */
static void temp_model(char *tmp, size_t len, const char *fixture, const char *cfg_json)
{
    char src[512], cmd[1400];
    snprintf(tmp, len, "/tmp/test_model.XXXXXX");
    assert_non_null(mkdtemp(tmp));
    fixture_dir(src, sizeof src, fixture);
    snprintf(cmd, sizeof cmd, "cp '%s/model.safetensors' '%s/'", src, tmp);
    assert_int_equal(system(cmd), 0);
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", tmp);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(cfg_json, fp);
    assert_int_equal(fclose(fp), 0);
}

static void rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_shape_mismatch_named(void **state)
{
    (void)state;
    char tmp[64], err[512] = "";
    struct model *m = NULL;
    temp_model(tmp, sizeof tmp, "qwen2-tiny-f32",
               "{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":64,"
               "\"intermediate_size\":96,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
               "\"num_key_value_heads\":2,\"vocab_size\":256,\"tie_word_embeddings\":true}");
    assert_int_equal(model_load(tmp, &m, err, sizeof err), -1);
    assert_null(m);
    assert_non_null(strstr(err, "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [64, 64]"));
    rm_rf(tmp);

    temp_model(tmp, sizeof tmp, "qwen2-tiny-f32",
               "{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":64,"
               "\"intermediate_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
               "\"num_key_value_heads\":2,\"vocab_size\":256,\"tie_word_embeddings\":false}");
    assert_int_equal(model_load(tmp, &m, err, sizeof err), -1);
    assert_non_null(strstr(err, "tensor 'lm_head.weight' is missing"));
    rm_rf(tmp);

    temp_model(tmp, sizeof tmp, "qwen2-tiny-f32",
               "{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":64,"
               "\"intermediate_size\":64,\"num_hidden_layers\":3,\"num_attention_heads\":4,"
               "\"num_key_value_heads\":2,\"vocab_size\":256,\"tie_word_embeddings\":true}");
    assert_int_equal(model_load(tmp, &m, err, sizeof err), -1);
    assert_non_null(strstr(err, "model.layers.2.input_layernorm.weight"));
    rm_rf(tmp);

    /* a Llama config over Qwen2 weights: fine (biases are extra), a Qwen2 config needs them */
    temp_model(tmp, sizeof tmp, "llama-tiny-bf16",
               "{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":64,"
               "\"intermediate_size\":128,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
               "\"num_key_value_heads\":2,\"vocab_size\":256}");
    assert_int_equal(model_load(tmp, &m, err, sizeof err), -1);
    assert_non_null(strstr(err, "model.layers.0.self_attn.q_proj.bias"));
    rm_rf(tmp);

    assert_int_equal(model_load("/nonexistent/model", &m, err, sizeof err), -1);
    assert_non_null(strstr(err, "config.json"));
}

static void test_batch_rejected(void **state)
{
    (void)state;
    char dir[512], err[512];
    struct model *m = NULL;
    fixture_dir(dir, sizeof dir, "llama-tiny-bf16");
    assert_int_equal(model_load(dir, &m, err, sizeof err), 0);
    struct backend_params bp = {
        .n_threads = 1, .block_size = 16, .n_blocks = 4, .max_batch_tokens = 8};
    struct backend *b = NULL;
    assert_int_equal(backend_cpu_create(m, &bp, &b, err, sizeof err), 0);
    float *logits = malloc(16 * 256 * sizeof(float));
    int32_t toks[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, bad_tok = 256, table[2] = {0, 1};
    int32_t bad_table[2] = {0, 4};
    struct {
        struct batch_seq s;
        const char *want;
    } cases[] = {
        {{&bad_tok, 1, 0, table, 2}, "vocab"},
        {{toks, 10, 0, table, 2}, "max_batch_tokens"},
        {{toks, 1, 32, table, 2}, "does not cover"},
        {{toks, 1, 20, bad_table, 2}, "outside the pool"},
        {{toks, 0, 0, table, 2}, "at least one token"},
        {{toks, 1, -1, table, 2}, "at least one token"},
        {{toks, 1, 255, table, 2}, "does not cover"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct batch batch = {&cases[i].s, 1, 0};
        err[0] = '\0';
        assert_int_equal(backend_forward(b, &batch, logits, err, sizeof err), -1);
        if (!strstr(err, cases[i].want)) fail_msg("case %zu: '%s'", i, err);
    }
    free(logits);
    backend_free(b);
    model_free(m);
}

static int files_equal(const char *a, const char *b)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", a, b);
    return system(cmd) == 0;
}

static void test_mkmodel(void **state)
{
    (void)state;
    const char *presets[] = {"llama-tiny", "qwen2-tiny", "mistral-tiny"};
    for (size_t i = 0; i < 3; i++) {
        struct mkmodel_spec spec;
        assert_int_equal(mkmodel_preset(presets[i], &spec), 0);
        char a[64], b[64], err[512], pa[128], pb[128];
        snprintf(a, sizeof a, "/tmp/test_mkmodel.XXXXXX");
        snprintf(b, sizeof b, "/tmp/test_mkmodel.XXXXXX");
        assert_non_null(mkdtemp(a));
        assert_non_null(mkdtemp(b));
        if (i == 2) spec.dtype = WT_F32;
        if (mkmodel_write(&spec, a, err, sizeof err) != 0) fail_msg("%s", err);
        assert_int_equal(mkmodel_write(&spec, b, err, sizeof err), 0);
        snprintf(pa, sizeof pa, "%s/model.safetensors", a);
        snprintf(pb, sizeof pb, "%s/model.safetensors", b);
        assert_true(files_equal(pa, pb)); /* deterministic from the seed */
        spec.seed = 2;
        assert_int_equal(mkmodel_write(&spec, b, err, sizeof err), 0);
        assert_false(files_equal(pa, pb));

        struct model *m = NULL;
        if (model_load(a, &m, err, sizeof err) != 0) fail_msg("%s: %s", presets[i], err);
        assert_int_equal(m->cfg.arch, spec.arch);
        assert_int_equal(m->cfg.vocab_size, spec.vocab_size);
        assert_int_equal(m->cfg.tie_embeddings, spec.tie_embeddings);
        assert_int_equal(m->w.embed.type, i == 2 ? WT_F32 : WT_BF16);
        assert_true(m->cfg.n_eos >= 1);
        struct backend *be = NULL;
        struct backend_params bp = {.n_threads = 2};
        assert_int_equal(backend_cpu_create(m, &bp, &be, err, sizeof err), 0);
        int32_t toks[5] = {1, 2, 3, 4, 5}, table[1] = {0};
        struct batch_seq sq = {toks, 5, 0, table, 1};
        struct batch batch = {&sq, 1, 0};
        float *logits = malloc((size_t)m->cfg.vocab_size * sizeof(float));
        assert_non_null(logits);
        assert_int_equal(backend_forward(be, &batch, logits, err, sizeof err), 0);
        for (int v = 0; v < m->cfg.vocab_size; v++)
            assert_true(isfinite(logits[v]));
        free(logits);
        backend_free(be);
        model_free(m);
        rm_rf(a);
        rm_rf(b);
    }
    struct mkmodel_spec big;
    assert_int_equal(mkmodel_preset("llama3.2-1b", &big), 0);
    assert_true(big.llama3_rope);
    assert_int_equal(big.vocab_size, 128256);
    assert_int_equal(mkmodel_preset("gpt-5", &big), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_logits_and_greedy),
        cmocka_unit_test(test_fixture_configs),
        cmocka_unit_test(test_config_parse),
        cmocka_unit_test(test_shape_mismatch_named),
        cmocka_unit_test(test_batch_rejected),
        cmocka_unit_test(test_mkmodel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
