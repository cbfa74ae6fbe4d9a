/* Random-weight model maker: writes a complete Hugging Face model directory (config.json,
 * generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json) at a chosen
 * shape, deterministic from a seed. Tests use tiny presets; benchmarks use the real shapes of
 * SmolLM2-135M, Qwen2.5-0.5B and Llama-3.2-1B. */
#ifndef LLMGATE_ENGINE_MKMODEL_H
#define LLMGATE_ENGINE_MKMODEL_H

#include "engine/model.h"
#include "engine/tokenizer.h"

#include <stddef.h>
#include <stdint.h>

struct mkmodel_spec {
    const char *name; /* preset name, informational */
    enum model_arch arch;
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads;
    int head_dim; /* 0: dim / n_heads, and no head_dim in config.json */
    int vocab_size, max_seq_len;
    float norm_eps, rope_theta;
    int tie_embeddings;
    int llama3_rope; /* write rope_scaling {rope_type llama3, ...} with the four fields below */
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_max_pos;
    enum tok_style tokenizer;
    enum wtype dtype; /* on-disk dtype: WT_BF16 (default presets) or WT_F32 */
    uint64_t seed;
    float init_std; /* standard deviation of matrix and embedding weights (norms are 1) */
};

/* Fills *spec with the preset called name (llama-tiny, qwen2-tiny, mistral-tiny,
 * smollm2-135m, qwen2.5-0.5b, llama3.2-1b): bf16, seed 1. 0, or -1 for an unknown name. */
int mkmodel_preset(const char *name, struct mkmodel_spec *spec);

/* The preset names, NULL-terminated (static storage). */
const char *const *mkmodel_preset_names(void);

/* Creates dir (if needed) and writes the model described by spec into it; the same spec gives
 * byte-identical files. 0, or -1 with err (bad spec, I/O error). */
int mkmodel_write(const struct mkmodel_spec *spec, const char *dir, char *err, size_t errlen);

#endif
