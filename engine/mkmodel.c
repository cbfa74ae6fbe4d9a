/* Random-weight models in the exact Hugging Face on-disk format, for tests and benchmarks. */
#include "engine/mkmodel.h"

#include "engine/json.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- presets -------------------------------------------------------------------------------- */

struct preset {
    const char *name;
    struct mkmodel_spec spec;
};

#define TINY(nm, ar, tie, theta, tok)                                                              \
    {                                                                                              \
        nm,                                                                                        \
        {                                                                                          \
            .name = nm, .arch = ar, .dim = 64, .hidden_dim = 128, .n_layers = 2, .n_heads = 4,     \
            .n_kv_heads = 2, .vocab_size = 512, .max_seq_len = 2048, .norm_eps = 1e-5f,            \
            .rope_theta = theta, .tie_embeddings = tie, .tokenizer = tok                           \
        }                                                                                          \
    }

static const struct preset PRESETS[] = {
    TINY("llama-tiny", ARCH_LLAMA, 0, 10000.0f, TOK_LLAMA3),
    TINY("qwen2-tiny", ARCH_QWEN2, 1, 1000000.0f, TOK_QWEN2),
    TINY("mistral-tiny", ARCH_MISTRAL, 0, 10000.0f, TOK_SPM),
    {"smollm2-135m",
     {.name = "smollm2-135m",
      .arch = ARCH_LLAMA,
      .dim = 576,
      .hidden_dim = 1536,
      .n_layers = 30,
      .n_heads = 9,
      .n_kv_heads = 3,
      .vocab_size = 49152,
      .max_seq_len = 8192,
      .norm_eps = 1e-5f,
      .rope_theta = 100000.0f,
      .tie_embeddings = 1,
      .tokenizer = TOK_QWEN2}},
    {"qwen2.5-0.5b",
     {.name = "qwen2.5-0.5b",
      .arch = ARCH_QWEN2,
      .dim = 896,
      .hidden_dim = 4864,
      .n_layers = 24,
      .n_heads = 14,
      .n_kv_heads = 2,
      .vocab_size = 151936,
      .max_seq_len = 32768,
      .norm_eps = 1e-6f,
      .rope_theta = 1000000.0f,
      .tie_embeddings = 1,
      .tokenizer = TOK_QWEN2}},
    {"llama3.2-1b",
     {.name = "llama3.2-1b",
      .arch = ARCH_LLAMA,
      .dim = 2048,
      .hidden_dim = 8192,
      .n_layers = 16,
      .n_heads = 32,
      .n_kv_heads = 8,
      .vocab_size = 128256,
      .max_seq_len = 131072,
      .norm_eps = 1e-5f,
      .rope_theta = 500000.0f,
      .tie_embeddings = 1,
      .llama3_rope = 1,
      .rope_factor = 32.0f,
      .rope_low_freq_factor = 1.0f,
      .rope_high_freq_factor = 4.0f,
      .rope_orig_max_pos = 8192,
      .tokenizer = TOK_LLAMA3}},
};

#define N_PRESETS (sizeof PRESETS / sizeof *PRESETS)

const char *const *mkmodel_preset_names(void)
{
    static const char *names[N_PRESETS + 1];
    for (size_t i = 0; i < N_PRESETS; i++)
        names[i] = PRESETS[i].name;
    names[N_PRESETS] = NULL;
    return names;
}

int mkmodel_preset(const char *name, struct mkmodel_spec *spec)
{
    for (size_t i = 0; i < N_PRESETS; i++) {
        if (strcmp(PRESETS[i].name, name) == 0) {
            *spec = PRESETS[i].spec;
            spec->dtype = WT_BF16;
            spec->seed = 1;
            spec->init_std = 0.02f;
            return 0;
        }
    }
    return -1;
}

/* ---- random numbers ------------------------------------------------------------------------- */

/* splitmix64: seeds each tensor's stream from the model seed and the tensor name, so a tensor's
 * values do not depend on the order tensors are written in. */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t name_seed(uint64_t seed, const char *name)
{
    uint64_t h = 1469598103934665603ull ^ seed;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return h;
}

/* An approximately normal deviate (Irwin-Hall of 4 uniforms, unit variance): cheap enough to
 * fill a billion weights in seconds, and shape does not matter for random test models. */
static float normalish(uint64_t *s)
{
    uint64_t r = splitmix(s);
    float sum = 0.0f;
    for (int i = 0; i < 4; i++)
        sum += (float)((r >> (16 * i)) & 0xffff) * (1.0f / 65536.0f);
    return (sum - 2.0f) * 1.7320508f;
}

/* ---- tensors -------------------------------------------------------------------------------- */

enum fill { FILL_NORMAL, FILL_ONES };

struct tdesc {
    char name[96];
    int rows, cols; /* cols = 0: vector */
    enum fill fill;
    uint64_t offset;
};

static size_t tensor_count(const struct tdesc *t)
{
    return (size_t)t->rows * (size_t)(t->cols ? t->cols : 1);
}

static int build_list(const struct mkmodel_spec *s, struct tdesc **out, int *n_out)
{
    int hd = s->head_dim ? s->head_dim : s->dim / s->n_heads;
    int Q = s->n_heads * hd, KV = s->n_kv_heads * hd, D = s->dim, F = s->hidden_dim;
    int per_layer = 9 + (s->arch == ARCH_QWEN2 ? 3 : 0);
    int cap = 3 + s->n_layers * per_layer;
    struct tdesc *t = calloc((size_t)cap, sizeof *t);
    if (!t) return -1;
    int n = 0;
#define ADD(r, c, f, ...)                                                                          \
    do {                                                                                           \
        snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__);                                        \
        t[n].rows = r;                                                                             \
        t[n].cols = c;                                                                             \
        t[n].fill = f;                                                                             \
        n++;                                                                                       \
    } while (0)
    ADD(s->vocab_size, D, FILL_NORMAL, "model.embed_tokens.weight");
    for (int l = 0; l < s->n_layers; l++) {
        ADD(D, 0, FILL_ONES, "model.layers.%d.input_layernorm.weight", l);
        ADD(Q, D, FILL_NORMAL, "model.layers.%d.self_attn.q_proj.weight", l);
        ADD(KV, D, FILL_NORMAL, "model.layers.%d.self_attn.k_proj.weight", l);
        ADD(KV, D, FILL_NORMAL, "model.layers.%d.self_attn.v_proj.weight", l);
        if (s->arch == ARCH_QWEN2) {
            ADD(Q, 0, FILL_NORMAL, "model.layers.%d.self_attn.q_proj.bias", l);
            ADD(KV, 0, FILL_NORMAL, "model.layers.%d.self_attn.k_proj.bias", l);
            ADD(KV, 0, FILL_NORMAL, "model.layers.%d.self_attn.v_proj.bias", l);
        }
        ADD(D, Q, FILL_NORMAL, "model.layers.%d.self_attn.o_proj.weight", l);
        ADD(D, 0, FILL_ONES, "model.layers.%d.post_attention_layernorm.weight", l);
        ADD(F, D, FILL_NORMAL, "model.layers.%d.mlp.gate_proj.weight", l);
        ADD(F, D, FILL_NORMAL, "model.layers.%d.mlp.up_proj.weight", l);
        ADD(D, F, FILL_NORMAL, "model.layers.%d.mlp.down_proj.weight", l);
    }
    ADD(D, 0, FILL_ONES, "model.norm.weight");
    if (!s->tie_embeddings) ADD(s->vocab_size, D, FILL_NORMAL, "lm_head.weight");
#undef ADD
    *out = t;
    *n_out = n;
    return 0;
}

/* A growable string for the JSON header and configs. */
struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
}

static int write_tensor(FILE *fp, const struct mkmodel_spec *s, const struct tdesc *t)
{
    uint64_t st = name_seed(s->seed, t->name);
    size_t n = tensor_count(t);
    float std = s->init_std > 0 ? s->init_std : 0.02f;
    enum { CHUNK = 8192 };
    unsigned char buf[CHUNK * 4];
    size_t esz = s->dtype == WT_F32 ? 4 : 2;
    for (size_t i = 0; i < n;) {
        size_t m = n - i < CHUNK ? n - i : CHUNK;
        for (size_t j = 0; j < m; j++) {
            float v = t->fill == FILL_ONES ? 1.0f : std * normalish(&st);
            if (esz == 4) {
                uint32_t u;
                memcpy(&u, &v, 4);
                for (int k = 0; k < 4; k++)
                    buf[4 * j + (size_t)k] = (unsigned char)(u >> (8 * k));
            } else {
                uint16_t h = f32_to_bf16(v);
                buf[2 * j] = (unsigned char)h;
                buf[2 * j + 1] = (unsigned char)(h >> 8);
            }
        }
        if (fwrite(buf, esz, m, fp) != m) return -1;
        i += m;
    }
    return 0;
}

static int write_safetensors(const struct mkmodel_spec *s, const char *path, char *err,
                             size_t errlen)
{
    struct tdesc *t = NULL;
    int n = 0;
    if (build_list(s, &t, &n) != 0) {
        seterr(err, errlen, "out of memory");
        return -1;
    }
    const char *dt = s->dtype == WT_F32 ? "F32" : "BF16";
    size_t esz = s->dtype == WT_F32 ? 4 : 2;
    struct sbuf h = {0};
    uint64_t off = 0;
    sb_printf(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        uint64_t bytes = tensor_count(&t[i]) * esz;
        t[i].offset = off;
        if (t[i].cols)
            sb_printf(&h,
                      ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%d,%d],\"data_offsets\":[%llu,%llu]}",
                      t[i].name, dt, t[i].rows, t[i].cols, (unsigned long long)off,
                      (unsigned long long)(off + bytes));
        else
            sb_printf(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%d],\"data_offsets\":[%llu,%llu]}",
                      t[i].name, dt, t[i].rows, (unsigned long long)off,
                      (unsigned long long)(off + bytes));
        off += bytes;
    }
    sb_printf(&h, "}");
    while (!h.oom && h.len % 8 != 0)
        sb_printf(&h, " "); /* data starts 8-byte aligned */
    int rc = -1;
    FILE *fp = NULL;
    if (h.oom) {
        seterr(err, errlen, "out of memory");
        goto out;
    }
    fp = fopen(path, "wb");
    if (!fp) {
        seterr(err, errlen, "%s: %s", path, strerror(errno));
        goto out;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    if (fwrite(len8, 1, 8, fp) != 8 || fwrite(h.p, 1, h.len, fp) != h.len) goto io;
    for (int i = 0; i < n; i++)
        if (write_tensor(fp, s, &t[i]) != 0) goto io;
    if (fclose(fp) != 0) {
        fp = NULL;
        goto io;
    }
    fp = NULL;
    rc = 0;
    goto out;
io:
    seterr(err, errlen, "%s: write failed: %s", path, strerror(errno));
out:
    if (fp) fclose(fp);
    free(h.p);
    free(t);
    return rc;
}

/* ---- configs -------------------------------------------------------------------------------- */

static int write_text(const char *dir, const char *file, const struct sbuf *b, char *err,
                      size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    if (b->oom) {
        seterr(err, errlen, "%s: out of memory", path);
        return -1;
    }
    FILE *fp = fopen(path, "w");
    if (!fp) {
        seterr(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    int ok = fwrite(b->p, 1, b->len, fp) == b->len;
    ok = (fclose(fp) == 0) && ok;
    if (!ok) seterr(err, errlen, "%s: write failed", path);
    return ok ? 0 : -1;
}

/* The id of the added token whose content is text, or -1. */
static int added_token_id(const struct ejson *added, const char *text)
{
    for (size_t i = 0; added && i < added->n; i++) {
        const char *c = ejson_get_str(&added->items[i], "content");
        long long id;
        if (c && strcmp(c, text) == 0 && ejson_get_int(&added->items[i], "id", &id) == 0)
            return (int)id;
    }
    return -1;
}

/* bos/eos ids from the synthetic tokenizer's files: its special tokens' ids, plus every
 * conventional end-of-turn token it defines, as real checkpoints list them. */
static void special_ids(const char *dir, int *bos, int *eos, int *n_eos)
{
    char path[4096], jerr[128];
    *bos = -1;
    *n_eos = 0;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    struct ejson_doc *tj = ejson_parse_file(path, jerr, sizeof jerr);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    struct ejson_doc *tc = ejson_parse_file(path, jerr, sizeof jerr);
    if (!tj || !tc) goto out;
    const struct ejson *added = ejson_get(ejson_root(tj), "added_tokens");
    const struct ejson *cfg = ejson_root(tc);
    const char *names[2] = {"bos_token", "eos_token"};
    for (int k = 0; k < 2; k++) {
        const struct ejson *v = ejson_get(cfg, names[k]);
        const char *text = v && v->type == EJSON_STRING ? v->str : ejson_get_str(v, "content");
        int id = text ? added_token_id(added, text) : -1;
        if (k == 0)
            *bos = id;
        else if (id >= 0)
            eos[(*n_eos)++] = id;
    }
    static const char *ends[] = {"<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>",
                                 "</s>"};
    for (size_t i = 0; i < sizeof ends / sizeof *ends && *n_eos < 4; i++) {
        int id = added_token_id(added, ends[i]), dup = 0;
        for (int j = 0; j < *n_eos; j++)
            dup |= eos[j] == id;
        if (id >= 0 && !dup) eos[(*n_eos)++] = id;
    }
out:
    ejson_free(tj);
    ejson_free(tc);
}

static const char *arch_class(enum model_arch a)
{
    return a == ARCH_QWEN2 ? "Qwen2ForCausalLM"
                           : (a == ARCH_MISTRAL ? "MistralForCausalLM" : "LlamaForCausalLM");
}

static int write_configs(const struct mkmodel_spec *s, const char *dir, char *err, size_t errlen)
{
    int bos, eos[4], n_eos;
    special_ids(dir, &bos, eos, &n_eos);
    if (n_eos == 0) eos[n_eos++] = s->vocab_size - 1;
    struct sbuf c = {0};
    sb_printf(&c, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n",
              arch_class(s->arch), model_arch_name(s->arch));
    sb_printf(&c,
              "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n"
              "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n"
              "  \"num_key_value_heads\": %d,\n",
              s->dim, s->hidden_dim, s->n_layers, s->n_heads, s->n_kv_heads);
    if (s->head_dim) sb_printf(&c, "  \"head_dim\": %d,\n", s->head_dim);
    sb_printf(&c,
              "  \"vocab_size\": %d,\n  \"max_position_embeddings\": %d,\n"
              "  \"rms_norm_eps\": %g,\n  \"rope_theta\": %.1f,\n  \"hidden_act\": \"silu\",\n"
              "  \"tie_word_embeddings\": %s,\n  \"torch_dtype\": \"%s\",\n",
              s->vocab_size, s->max_seq_len, (double)s->norm_eps, (double)s->rope_theta,
              s->tie_embeddings ? "true" : "false", s->dtype == WT_F32 ? "float32" : "bfloat16");
    if (s->arch == ARCH_QWEN2)
        sb_printf(&c, "  \"use_sliding_window\": false,\n  \"sliding_window\": null,\n");
    else if (s->arch == ARCH_MISTRAL)
        sb_printf(&c, "  \"sliding_window\": null,\n");
    else
        sb_printf(&c, "  \"attention_bias\": false,\n  \"mlp_bias\": false,\n");
    if (s->llama3_rope)
        sb_printf(&c,
                  "  \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": %g, "
                  "\"low_freq_factor\": %g, \"high_freq_factor\": %g, "
                  "\"original_max_position_embeddings\": %d},\n",
                  (double)s->rope_factor, (double)s->rope_low_freq_factor,
                  (double)s->rope_high_freq_factor, s->rope_orig_max_pos);
    if (bos >= 0) sb_printf(&c, "  \"bos_token_id\": %d,\n", bos);
    sb_printf(&c, "  \"eos_token_id\": %d\n}\n", eos[0]);
    if (write_text(dir, "config.json", &c, err, errlen) != 0) {
        free(c.p);
        return -1;
    }
    free(c.p);

    struct sbuf g = {0};
    sb_printf(&g, "{\n");
    if (bos >= 0) sb_printf(&g, "  \"bos_token_id\": %d,\n", bos);
    sb_printf(&g, "  \"eos_token_id\": [");
    for (int i = 0; i < n_eos; i++)
        sb_printf(&g, "%s%d", i ? ", " : "", eos[i]);
    sb_printf(&g, "],\n  \"do_sample\": true,\n  \"temperature\": 0.7,\n  \"top_p\": 0.9,\n"
                  "  \"top_k\": 50\n}\n");
    int rc = write_text(dir, "generation_config.json", &g, err, errlen);
    free(g.p);
    return rc;
}

/* ---- entry ---------------------------------------------------------------------------------- */

static int check_spec(const struct mkmodel_spec *s, char *err, size_t errlen)
{
    int hd = s->head_dim ? s->head_dim : (s->n_heads > 0 ? s->dim / s->n_heads : 0);
    if (s->dim < 2 || s->hidden_dim < 1 || s->n_layers < 1 || s->n_heads < 1 || s->n_kv_heads < 1 ||
        s->n_heads % s->n_kv_heads != 0 || hd < 2 || hd % 2 != 0 ||
        (!s->head_dim && s->dim % s->n_heads != 0) || s->vocab_size < 1 || s->max_seq_len < 1 ||
        s->rope_theta <= 0 || s->norm_eps <= 0) {
        seterr(err, errlen, "mkmodel: inconsistent shape in spec '%s'", s->name ? s->name : "");
        return -1;
    }
    return 0;
}

int mkmodel_write(const struct mkmodel_spec *spec, const char *dir, char *err, size_t errlen)
{
    if (check_spec(spec, err, errlen) != 0) return -1;
    char path[4096];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
        seterr(err, errlen, "mkmodel: directory name too long");
        return -1;
    }
    for (char *p = path + 1;; p++) { /* mkdir -p */
        int end = *p == '\0';
        if (*p == '/' || end) {
            *p = '\0';
            if (mkdir(path, 0755) != 0 && errno != EEXIST) {
                seterr(err, errlen, "%s: %s", path, strerror(errno));
                return -1;
            }
            if (end) break;
            *p = '/';
        }
    }
    if (tokenizer_write_synthetic(dir, spec->vocab_size, spec->tokenizer, err, errlen) != 0)
        return -1;
    if (write_configs(spec, dir, err, errlen) != 0) return -1;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    return write_safetensors(spec, path, err, errlen);
}
