/* Model loading: config.json and generation_config.json into struct model_config, then every
 * weight tensor bound from the mapped safetensors checkpoint and checked against the config. */
#include "engine/model.h"

#include "engine/json.h"
#include "engine/safetensors.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static void note(char *notes, size_t len, const char *msg)
{
    if (!notes || len == 0) return;
    size_t used = strlen(notes);
    if (used + 3 >= len) return;
    snprintf(notes + used, len - used, "%s%s", used ? "; " : "", msg);
}

const char *model_arch_name(enum model_arch arch)
{
    switch (arch) {
    case ARCH_LLAMA: return "llama";
    case ARCH_QWEN2: return "qwen2";
    case ARCH_MISTRAL: return "mistral";
    }
    return "?";
}

/* ---- number conversions --------------------------------------------------------------------- */

uint16_t f32_to_bf16(float f)
{
    union {
        float f;
        uint32_t u;
    } v = {.f = f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);
    v.u += 0x7fffu + ((v.u >> 16) & 1);
    return (uint16_t)(v.u >> 16);
}

float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    union {
        uint32_t u;
        float f;
    } v = {.u = bits};
    return v.f;
}

/* ---- config.json ---------------------------------------------------------------------------- */

/* Reads an integer member into *out: required members fail when missing; optional ones keep
 * the default already in *out. A present member must be an integer in [lo, hi]. */
static int get_int(const struct ejson *obj, const char *key, int required, long long lo,
                   long long hi, int *out, char *err, size_t errlen)
{
    const struct ejson *v = ejson_get(obj, key);
    if (!v || v->type == EJSON_NULL) {
        if (!required) return 0;
        seterr(err, errlen, "config.json: missing %s", key);
        return -1;
    }
    if (!ejson_is_int(v) || v->num < (double)lo || v->num > (double)hi) {
        seterr(err, errlen, "config.json: %s must be an integer in [%lld, %lld]", key, lo, hi);
        return -1;
    }
    *out = (int)v->num;
    return 0;
}

static int get_float(const struct ejson *obj, const char *key, double lo, double hi, float *out,
                     const char *file, char *err, size_t errlen)
{
    const struct ejson *v = ejson_get(obj, key);
    if (!v || v->type == EJSON_NULL) return 0;
    if (v->type != EJSON_NUMBER || !(v->num >= lo && v->num <= hi)) {
        seterr(err, errlen, "%s: %s must be a number in [%g, %g]", file, key, lo, hi);
        return -1;
    }
    *out = (float)v->num;
    return 0;
}

static void add_eos(struct model_config *cfg, long long id)
{
    if (id < 0 || id > INT32_MAX) return;
    for (int i = 0; i < cfg->n_eos; i++)
        if (cfg->eos_ids[i] == id) return;
    if (cfg->n_eos < MODEL_MAX_EOS) cfg->eos_ids[cfg->n_eos++] = (int)id;
}

/* eos_token_id: an integer or an array of integers. */
static int get_eos(const struct ejson *obj, struct model_config *cfg, const char *file, char *err,
                   size_t errlen)
{
    const struct ejson *v = ejson_get(obj, "eos_token_id");
    if (!v || v->type == EJSON_NULL) return 0;
    if (v->type == EJSON_NUMBER && ejson_is_int(v)) {
        add_eos(cfg, (long long)v->num);
        return 0;
    }
    if (v->type == EJSON_ARRAY) {
        for (size_t i = 0; i < v->n; i++) {
            if (!ejson_is_int(&v->items[i])) goto bad;
            add_eos(cfg, (long long)v->items[i].num);
        }
        return 0;
    }
bad:
    seterr(err, errlen, "%s: eos_token_id must be an integer or an array of integers", file);
    return -1;
}

/* rope_scaling (or rope_parameters): "default" or "llama3"; other schemes are refused rather
 * than silently computing the wrong positions. */
static int parse_rope(const struct ejson *rs, const char *field, struct model_config *cfg,
                      char *err, size_t errlen)
{
    if (!rs || rs->type == EJSON_NULL) return 0;
    if (rs->type != EJSON_OBJECT) {
        seterr(err, errlen, "config.json: %s must be an object", field);
        return -1;
    }
    if (get_float(rs, "rope_theta", 1.0, 1e12, &cfg->rope_theta, "config.json", err, errlen))
        return -1;
    const char *type = ejson_get_str(rs, "rope_type");
    if (!type) type = ejson_get_str(rs, "type");
    if (!type || strcmp(type, "default") == 0) return 0;
    if (strcmp(type, "llama3") != 0) {
        seterr(err, errlen, "config.json: %s.rope_type '%.32s' is not supported (default, llama3)",
               field, type);
        return -1;
    }
    cfg->rope_type = ROPE_LLAMA3;
    cfg->rope_factor = 8.0f;
    cfg->rope_low_freq_factor = 1.0f;
    cfg->rope_high_freq_factor = 4.0f;
    cfg->rope_orig_max_pos = 8192;
    if (get_float(rs, "factor", 1e-6, 1e6, &cfg->rope_factor, "config.json", err, errlen) ||
        get_float(rs, "low_freq_factor", 1e-6, 1e6, &cfg->rope_low_freq_factor, "config.json", err,
                  errlen) ||
        get_float(rs, "high_freq_factor", 1e-6, 1e6, &cfg->rope_high_freq_factor, "config.json",
                  err, errlen) ||
        get_int(rs, "original_max_position_embeddings", 0, 1, 1 << 30, &cfg->rope_orig_max_pos, err,
                errlen))
        return -1;
    if (cfg->rope_high_freq_factor <= cfg->rope_low_freq_factor) {
        seterr(err, errlen, "config.json: %s.high_freq_factor must exceed low_freq_factor", field);
        return -1;
    }
    return 0;
}

static int parse_arch(const struct ejson *root, struct model_config *cfg, char *err, size_t errlen)
{
    const struct ejson *archs = ejson_get(root, "architectures");
    const char *a = NULL;
    if (archs && archs->type == EJSON_ARRAY && archs->n > 0 && archs->items[0].type == EJSON_STRING)
        a = archs->items[0].str;
    const char *mt = ejson_get_str(root, "model_type");
    if (a ? strcmp(a, "LlamaForCausalLM") == 0 : (mt && strcmp(mt, "llama") == 0))
        cfg->arch = ARCH_LLAMA;
    else if (a ? strcmp(a, "Qwen2ForCausalLM") == 0 : (mt && strcmp(mt, "qwen2") == 0))
        cfg->arch = ARCH_QWEN2;
    else if (a ? strcmp(a, "MistralForCausalLM") == 0 : (mt && strcmp(mt, "mistral") == 0))
        cfg->arch = ARCH_MISTRAL;
    else {
        seterr(err, errlen,
               "config.json: architectures '%.64s' not supported (LlamaForCausalLM, "
               "Qwen2ForCausalLM, MistralForCausalLM)",
               a ? a : (mt ? mt : "(none)"));
        return -1;
    }
    return 0;
}

int model_config_parse(const char *config_json, size_t config_len, const char *gen_json,
                       size_t gen_len, struct model_config *cfg, char *notes, size_t notes_len,
                       char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    if (notes && notes_len) notes[0] = '\0';
    char jerr[200];
    struct ejson_doc *doc = ejson_parse(config_json, config_len, jerr, sizeof jerr);
    if (!doc) {
        seterr(err, errlen, "config.json: %s", jerr);
        return -1;
    }
    struct ejson_doc *gdoc = NULL;
    int rc = -1;
    const struct ejson *root = ejson_root(doc);
    if (root->type != EJSON_OBJECT) {
        seterr(err, errlen, "config.json: not a JSON object");
        goto out;
    }
    if (parse_arch(root, cfg, err, errlen) != 0) goto out;
    cfg->max_seq_len = 2048;
    cfg->norm_eps = 1e-6f;
    cfg->rope_theta = 10000.0f;
    cfg->rope_type = ROPE_DEFAULT;
    cfg->bos_id = -1;
    cfg->gen_temperature = -1;
    cfg->gen_top_p = -1;
    cfg->gen_top_k = -1;
    if (get_int(root, "hidden_size", 1, 1, 65536, &cfg->dim, err, errlen) ||
        get_int(root, "intermediate_size", 1, 1, 1 << 20, &cfg->hidden_dim, err, errlen) ||
        get_int(root, "num_hidden_layers", 1, 1, 1024, &cfg->n_layers, err, errlen) ||
        get_int(root, "num_attention_heads", 1, 1, 1024, &cfg->n_heads, err, errlen) ||
        get_int(root, "vocab_size", 1, 1, 1 << 24, &cfg->vocab_size, err, errlen))
        goto out;
    cfg->n_kv_heads = cfg->n_heads;
    cfg->head_dim = cfg->dim / cfg->n_heads;
    if (get_int(root, "num_key_value_heads", 0, 1, 1024, &cfg->n_kv_heads, err, errlen) ||
        get_int(root, "head_dim", 0, 2, 1024, &cfg->head_dim, err, errlen) ||
        get_int(root, "max_position_embeddings", 0, 1, 1 << 26, &cfg->max_seq_len, err, errlen) ||
        get_int(root, "bos_token_id", 0, 0, INT32_MAX, &cfg->bos_id, err, errlen) ||
        get_float(root, "rms_norm_eps", 1e-12, 1.0, &cfg->norm_eps, "config.json", err, errlen) ||
        get_float(root, "rope_theta", 1.0, 1e12, &cfg->rope_theta, "config.json", err, errlen) ||
        get_eos(root, cfg, "config.json", err, errlen))
        goto out;
    if (cfg->n_heads % cfg->n_kv_heads != 0) {
        seterr(err, errlen,
               "config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d",
               cfg->n_heads, cfg->n_kv_heads);
        goto out;
    }
    /* A head_dim derived from hidden_size / heads gets the explicit key's bounds too: rope()
     * keeps head_dim / 2 frequencies on the stack. */
    if (cfg->head_dim % 2 != 0 || cfg->head_dim < 2 || cfg->head_dim > 1024) {
        seterr(err, errlen,
               "config.json: head_dim %d must be even and at most 1024 (hidden_size / heads)",
               cfg->head_dim);
        goto out;
    }
    const char *act = ejson_get_str(root, "hidden_act");
    if (act && strcmp(act, "silu") != 0) {
        seterr(err, errlen, "config.json: hidden_act '%.32s' not supported (silu)", act);
        goto out;
    }
    if (ejson_get_bool(root, "mlp_bias", 0)) {
        seterr(err, errlen, "config.json: mlp_bias true is not supported");
        goto out;
    }
    cfg->tie_embeddings = ejson_get_bool(root, "tie_word_embeddings", 0);
    int attention_bias = ejson_get_bool(root, "attention_bias", 0);
    cfg->qkv_bias = cfg->arch == ARCH_QWEN2 || attention_bias;
    cfg->o_bias = cfg->arch != ARCH_QWEN2 && attention_bias;
    if (parse_rope(ejson_get(root, "rope_scaling"), "rope_scaling", cfg, err, errlen) ||
        parse_rope(ejson_get(root, "rope_parameters"), "rope_parameters", cfg, err, errlen))
        goto out;
    const struct ejson *sw = ejson_get(root, "sliding_window");
    int use_sw = ejson_get_bool(root, "use_sliding_window", cfg->arch == ARCH_MISTRAL);
    if (sw && ejson_is_int(sw) && sw->num > 0 && use_sw) {
        cfg->sliding_window = sw->num > INT32_MAX ? INT32_MAX : (int)sw->num;
        char msg[96];
        snprintf(msg, sizeof msg, "sliding_window %d ignored: full attention is used",
                 cfg->sliding_window);
        note(notes, notes_len, msg);
    }
    if (gen_json) {
        gdoc = ejson_parse(gen_json, gen_len, jerr, sizeof jerr);
        if (!gdoc) {
            seterr(err, errlen, "generation_config.json: %s", jerr);
            goto out;
        }
        const struct ejson *g = ejson_root(gdoc);
        if (g->type != EJSON_OBJECT) {
            seterr(err, errlen, "generation_config.json: not a JSON object");
            goto out;
        }
        const char *gf = "generation_config.json";
        if (get_eos(g, cfg, gf, err, errlen) ||
            get_float(g, "temperature", 0.0, 100.0, &cfg->gen_temperature, gf, err, errlen) ||
            get_float(g, "top_p", 0.0, 1.0, &cfg->gen_top_p, gf, err, errlen))
            goto out;
        const struct ejson *tk = ejson_get(g, "top_k");
        if (tk && ejson_is_int(tk) && tk->num >= 0 && tk->num <= INT32_MAX)
            cfg->gen_top_k = (int)tk->num;
        const struct ejson *bos = ejson_get(g, "bos_token_id");
        if (cfg->bos_id < 0 && bos && ejson_is_int(bos) && bos->num >= 0 && bos->num <= INT32_MAX)
            cfg->bos_id = (int)bos->num;
    }
    rc = 0;
out:
    ejson_free(gdoc);
    ejson_free(doc);
    return rc;
}

void model_rope_inv_freq(const struct model_config *cfg, float *inv_freq)
{
    int half = cfg->head_dim / 2;
    const double two_pi = 6.283185307179586;
    for (int i = 0; i < half; i++) {
        /* HF: 1 / base ** (arange(0, dim, 2).float() / dim), computed in float32 */
        float expo = (float)(2 * i) / (float)cfg->head_dim;
        float f = 1.0f / powf(cfg->rope_theta, expo);
        if (cfg->rope_type == ROPE_LLAMA3) {
            float orig = (float)cfg->rope_orig_max_pos;
            float low_wavelen = orig / cfg->rope_low_freq_factor;
            float high_wavelen = orig / cfg->rope_high_freq_factor;
            float wavelen = (float)(two_pi / f);
            if (wavelen > low_wavelen) {
                f = f / cfg->rope_factor;
            } else if (wavelen >= high_wavelen) {
                float smooth = (orig / wavelen - cfg->rope_low_freq_factor) /
                               (cfg->rope_high_freq_factor - cfg->rope_low_freq_factor);
                f = (1.0f - smooth) * f / cfg->rope_factor + smooth * f;
            }
        }
        inv_freq[i] = f;
    }
}

/* ---- weights -------------------------------------------------------------------------------- */

static char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    char *buf = NULL;
    if (fseek(fp, 0, SEEK_END) != 0) goto fail;
    long n = ftell(fp);
    if (n < 0 || n > (64L << 20) || fseek(fp, 0, SEEK_SET) != 0) goto fail;
    buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, fp) != (size_t)n) goto fail;
    buf[n] = '\0';
    *len = (size_t)n;
    fclose(fp);
    return buf;
fail:
    free(buf);
    fclose(fp);
    return NULL;
}

static void *model_own(struct model *m, size_t bytes)
{
    void **no = realloc(m->owned, (m->n_owned + 1) * sizeof *no);
    if (!no) return NULL;
    m->owned = no;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
    m->owned[m->n_owned++] = p;
    return p;
}

/* Binds tensor name with the expected shape (rows, cols); cols = 0 for a vector of rows
 * elements. optional: absent is not an error (data stays NULL). */
static int bind(struct model *m, struct wtensor *wt, const char *name, int rows, int cols,
                int optional, char *err, size_t errlen)
{
    memset(wt, 0, sizeof *wt);
    const struct st_tensor *t = st_set_find(m->st, name);
    if (!t) {
        if (optional) return 0;
        seterr(err, errlen, "tensor '%s' is missing from the checkpoint", name);
        return -1;
    }
    int want_ndim = cols ? 2 : 1;
    int ok = t->ndim == want_ndim && t->shape[0] == rows && (!cols || t->shape[1] == cols);
    if (!ok) {
        char got[96] = "";
        size_t used = 0;
        for (int i = 0; i < t->ndim && used < sizeof got - 24; i++)
            used += (size_t)snprintf(got + used, sizeof got - used, "%s%lld", i ? ", " : "",
                                     (long long)t->shape[i]);
        if (cols)
            seterr(err, errlen, "tensor '%s' has shape [%s], config implies [%d, %d]", name, got,
                   rows, cols);
        else
            seterr(err, errlen, "tensor '%s' has shape [%s], config implies [%d]", name, got, rows);
        return -1;
    }
    size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
    wt->rows = cols ? rows : 1;
    wt->cols = cols ? cols : rows;
    if (t->dtype == ST_F16) {
        /* The CPU kernels read BF16 and F32; F16 checkpoints are widened once here. */
        float *dst = model_own(m, n * sizeof(float));
        if (!dst) goto oom;
        const unsigned char *src = t->data;
        for (size_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(src[2 * i] | (src[2 * i + 1] << 8));
            dst[i] = f16_to_f32(h);
        }
        wt->data = dst;
        wt->type = WT_F32;
        return 0;
    }
    wt->type = t->dtype == ST_F32 ? WT_F32 : WT_BF16;
    size_t esize = st_dtype_size(t->dtype);
    if ((uintptr_t)t->data % esize != 0) { /* legal in the format, not for our loads */
        void *dst = model_own(m, n * esize);
        if (!dst) goto oom;
        memcpy(dst, t->data, n * esize);
        wt->data = dst;
    } else {
        wt->data = t->data;
    }
    return 0;
oom:
    seterr(err, errlen, "tensor '%s': out of memory converting F16", name);
    return -1;
}

static size_t wt_bytes(const struct wtensor *t)
{
    if (!t->data) return 0;
    return (size_t)t->rows * (size_t)t->cols * (t->type == WT_F32 ? 4 : 2);
}

static int bind_weights(struct model *m, char *err, size_t errlen)
{
    const struct model_config *c = &m->cfg;
    int D = c->dim, F = c->hidden_dim, Q = c->n_heads * c->head_dim,
        KV = c->n_kv_heads * c->head_dim;
    struct weights *w = &m->w;
    w->layers = calloc((size_t)c->n_layers, sizeof *w->layers);
    if (!w->layers) {
        seterr(err, errlen, "out of memory");
        return -1;
    }
    if (bind(m, &w->embed, "model.embed_tokens.weight", c->vocab_size, D, 0, err, errlen) ||
        bind(m, &w->final_norm, "model.norm.weight", D, 0, 0, err, errlen))
        return -1;
    if (c->tie_embeddings)
        w->lm_head = w->embed;
    else if (bind(m, &w->lm_head, "lm_head.weight", c->vocab_size, D, 0, err, errlen))
        return -1;
    char name[128];
    for (int l = 0; l < c->n_layers; l++) {
        struct layer_weights *L = &w->layers[l];
#define BIND(field, suffix, r, cc, opt)                                                            \
    do {                                                                                           \
        snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);                              \
        if (bind(m, &L->field, name, r, cc, opt, err, errlen)) return -1;                          \
    } while (0)
        BIND(attn_norm, "input_layernorm.weight", D, 0, 0);
        BIND(wq, "self_attn.q_proj.weight", Q, D, 0);
        BIND(wk, "self_attn.k_proj.weight", KV, D, 0);
        BIND(wv, "self_attn.v_proj.weight", KV, D, 0);
        BIND(wo, "self_attn.o_proj.weight", D, Q, 0);
        if (c->qkv_bias) {
            BIND(bq, "self_attn.q_proj.bias", Q, 0, 0);
            BIND(bk, "self_attn.k_proj.bias", KV, 0, 0);
            BIND(bv, "self_attn.v_proj.bias", KV, 0, 0);
        }
        if (c->o_bias) BIND(bo, "self_attn.o_proj.bias", D, 0, 0);
        BIND(ffn_norm, "post_attention_layernorm.weight", D, 0, 0);
        BIND(w_gate, "mlp.gate_proj.weight", F, D, 0);
        BIND(w_up, "mlp.up_proj.weight", F, D, 0);
        BIND(w_down, "mlp.down_proj.weight", D, F, 0);
#undef BIND
        m->weight_bytes += wt_bytes(&L->attn_norm) + wt_bytes(&L->wq) + wt_bytes(&L->wk) +
                           wt_bytes(&L->wv) + wt_bytes(&L->wo) + wt_bytes(&L->bq) +
                           wt_bytes(&L->bk) + wt_bytes(&L->bv) + wt_bytes(&L->bo) +
                           wt_bytes(&L->ffn_norm) + wt_bytes(&L->w_gate) + wt_bytes(&L->w_up) +
                           wt_bytes(&L->w_down);
    }
    /* the embedding table is only gathered from (one row per token), lm_head is streamed */
    m->weight_bytes += wt_bytes(&w->final_norm) + wt_bytes(&w->lm_head);
    return 0;
}

int model_load(const char *dir, struct model **out, char *err, size_t errlen)
{
    *out = NULL;
    char path[4096];
    size_t clen = 0, glen = 0;
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *cjson = read_file(path, &clen);
    if (!cjson) {
        seterr(err, errlen, "%s: cannot read", path);
        return -1;
    }
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    char *gjson = read_file(path, &glen); /* optional */
    struct model *m = calloc(1, sizeof *m);
    if (!m) {
        seterr(err, errlen, "out of memory");
        goto fail;
    }
    if (model_config_parse(cjson, clen, gjson, glen, &m->cfg, m->notes, sizeof m->notes, err,
                           errlen) != 0)
        goto fail;
    if (st_set_open_dir(dir, &m->st, err, errlen) != 0) goto fail;
    if (bind_weights(m, err, errlen) != 0) goto fail;
    free(cjson);
    free(gjson);
    *out = m;
    return 0;
fail:
    free(cjson);
    free(gjson);
    model_free(m);
    return -1;
}

void model_free(struct model *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    free(m->owned);
    free(m->w.layers);
    st_set_close(m->st);
    free(m);
}
