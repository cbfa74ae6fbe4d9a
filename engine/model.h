/* A decoder-only transformer checkpoint in Hugging Face layout (Llama, Qwen2, Mistral): its
 * configuration from config.json / generation_config.json and its weights, memory-mapped from
 * safetensors and checked tensor by tensor against the configuration. */
#ifndef LLMGATE_ENGINE_MODEL_H
#define LLMGATE_ENGINE_MODEL_H

#include <stddef.h>
#include <stdint.h>

enum model_arch { ARCH_LLAMA, ARCH_QWEN2, ARCH_MISTRAL };

enum rope_type { ROPE_DEFAULT, ROPE_LLAMA3 };

#define MODEL_MAX_EOS 8

struct model_config {
    enum model_arch arch;
    int dim;            /* hidden_size */
    int hidden_dim;     /* intermediate_size (SwiGLU width) */
    int n_layers;       /* num_hidden_layers */
    int n_heads;        /* num_attention_heads */
    int n_kv_heads;     /* num_key_value_heads (GQA: n_heads is a multiple of it) */
    int head_dim;       /* head_dim, or dim / n_heads */
    int vocab_size;     /* vocab_size */
    int max_seq_len;    /* max_position_embeddings */
    float norm_eps;     /* rms_norm_eps */
    int tie_embeddings; /* lm_head shares model.embed_tokens.weight */
    int qkv_bias;       /* q/k/v projections carry a bias (Qwen2, or attention_bias) */
    int o_bias;         /* o projection carries a bias (Llama attention_bias) */
    float rope_theta;   /* rope base */
    enum rope_type rope_type;
    float rope_factor;          /* llama3: factor */
    float rope_low_freq_factor; /* llama3: low_freq_factor */
    float rope_high_freq_factor;
    int rope_orig_max_pos;      /* llama3: original_max_position_embeddings */
    int sliding_window;         /* 0 = none; recorded but not applied yet */
    int bos_id;                 /* -1 when unknown */
    int eos_ids[MODEL_MAX_EOS]; /* from config.json and generation_config.json, de-duplicated */
    int n_eos;
    /* generation_config.json defaults; negative when absent */
    float gen_temperature;
    float gen_top_p;
    int gen_top_k;
};

/* Element type of a weight tensor as the backends see it. F16 on disk is converted to F32 when
 * the model loads (the CPU kernels handle BF16 and F32 only), so only these two remain. */
enum wtype { WT_F32, WT_BF16 };

/* A row-major weight matrix (rows, cols) or vector (rows = 1); data points into the mapping or
 * into memory owned by the model. A Linear layer's weight is (out_features, in_features). */
struct wtensor {
    const void *data;
    enum wtype type;
    int rows, cols;
};

/* One decoder layer. Shapes use D = dim, H = n_heads, KVH = n_kv_heads, HD = head_dim,
 * F = hidden_dim. */
struct layer_weights {
    struct wtensor attn_norm; /* input_layernorm (D) */
    struct wtensor wq;        /* self_attn.q_proj (H*HD, D) */
    struct wtensor wk;        /* self_attn.k_proj (KVH*HD, D) */
    struct wtensor wv;        /* self_attn.v_proj (KVH*HD, D) */
    struct wtensor wo;        /* self_attn.o_proj (D, H*HD) */
    struct wtensor bq;        /* q_proj.bias (H*HD), data NULL when absent */
    struct wtensor bk;        /* k_proj.bias (KVH*HD) */
    struct wtensor bv;        /* v_proj.bias (KVH*HD) */
    struct wtensor bo;        /* o_proj.bias (D) */
    struct wtensor ffn_norm;  /* post_attention_layernorm (D) */
    struct wtensor w_gate;    /* mlp.gate_proj (F, D) */
    struct wtensor w_up;      /* mlp.up_proj (F, D) */
    struct wtensor w_down;    /* mlp.down_proj (D, F) */
};

struct weights {
    struct wtensor embed;         /* model.embed_tokens (vocab, D) */
    struct layer_weights *layers; /* n_layers of them */
    struct wtensor final_norm;    /* model.norm (D) */
    struct wtensor lm_head;       /* lm_head (vocab, D), or embed when tied */
};

struct st_set;

struct model {
    struct model_config cfg;
    struct weights w;
    struct st_set *st; /* the mapped checkpoint the weights point into */
    void **owned;      /* converted tensors (F16 -> F32, misaligned copies) */
    size_t n_owned;
    size_t weight_bytes; /* bytes of weights one forward step streams (lm_head counted once) */
    char notes[256];     /* non-fatal remarks for the caller to log (e.g. sliding_window) */
};

/* Parses config.json text (and generation_config.json text, may be NULL) into cfg. Returns 0,
 * or -1 with a message naming the field in err. */
int model_config_parse(const char *config_json, size_t config_len, const char *gen_json,
                       size_t gen_len, struct model_config *cfg, char *notes, size_t notes_len,
                       char *err, size_t errlen);

/* Loads the model directory dir: config, generation config (optional) and the weights. Every
 * tensor the architecture needs must be present with the shape the config implies; mismatches
 * are reported by tensor name. Returns 0 and *out (free with model_free), or -1 with err. */
int model_load(const char *dir, struct model **out, char *err, size_t errlen);

/* Unmaps the checkpoint and frees the model. NULL is a no-op. */
void model_free(struct model *m);

/* "llama", "qwen2" or "mistral". */
const char *model_arch_name(enum model_arch arch);

/* Fills inv_freq[head_dim/2] with the rotary inverse frequencies of cfg, llama3 scaling
 * applied, exactly as Hugging Face computes them (float32 results). */
void model_rope_inv_freq(const struct model_config *cfg, float *inv_freq);

/* bf16 bits -> float (exact). */
static inline float bf16_to_f32(uint16_t h)
{
    union {
        uint32_t u;
        float f;
    } v = {.u = (uint32_t)h << 16};
    return v.f;
}

/* float -> bf16 bits, round to nearest even (NaN kept quiet). */
uint16_t f32_to_bf16(float f);

/* IEEE half bits -> float (exact). */
float f16_to_f32(uint16_t h);

#endif
