/* The CUDA backend's kernels as plain C launchers, one family per .cu file, so that the backend
 * (C) and the kernel tests (C, cmocka) call them without C++. Device pointers only; bf16 data is
 * passed as its 16-bit patterns (uint16_t). Every launcher enqueues on `stream` and returns the
 * launch's cudaError_t (cudaSuccess, or the configuration / launch error); kernel faults surface
 * at the caller's next synchronisation. */
#ifndef LLMGATE_ENGINE_CUDA_KERNELS_H
#define LLMGATE_ENGINE_CUDA_KERNELS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- embedding.cu: embedding rows, row gathers, conversions, KV block staging ------------ */

/* x[t] = table row tokens[t] widened to f32, for n tokens; table (vocab, dim) bf16. */
cudaError_t cuda_embed(float *x, const uint16_t *table, const int32_t *tokens, int n, int dim,
                       cudaStream_t stream);
/* dst[i] = src[rows[i]] for n rows of dim floats; dst16 (may be NULL) gets the bf16 copy. */
cudaError_t cuda_gather_rows(float *dst, uint16_t *dst16, const float *src, const int32_t *rows,
                             int n, int dim, cudaStream_t stream);
/* dst[i] = bf16(src[i]) round to nearest even, n elements. */
cudaError_t cuda_f32_to_bf16(uint16_t *dst, const float *src, size_t n, cudaStream_t stream);
/* Copies physical block `block` of every layer of a bf16 KV pool (K and V each
 * [n_layers][n_blocks_total][block_elems]) to f32 staging in the host layout of
 * backend_ops.kv_read_block (per layer: K block, then V block), or back (to_pool = 1). */
cudaError_t cuda_kv_block_copy(uint16_t *k_pool, uint16_t *v_pool, float *staging, int n_layers,
                               size_t layer_elems, size_t block_elems, int block, int to_pool,
                               cudaStream_t stream);

/* ---- norm.cu ---------------------------------------------------------------------------- */

/* For each of n rows of dim floats: when delta is not NULL, x += delta (+ bias, may be NULL)
 * (the residual add of the previous block); then out = x / rms(x) * w (w f32). out16 (may be
 * NULL) receives the same values in bf16 for a cuBLASLt GEMM. */
cudaError_t cuda_add_rmsnorm(float *x, const float *delta, const float *bias, const float *w,
                             float *out, uint16_t *out16, int n, int dim, float eps,
                             cudaStream_t stream);

/* ---- rope.cu ---------------------------------------------------------------------------- */

/* The epilogue of the fused QKV projection. qkv is (n, (H + 2 KVH) * HD) f32 as the GEMM wrote
 * it; for each token: adds bias (may be NULL), rotates q and k at pos[t] (neox halves,
 * inv_freq[HD/2]), writes q to q_out (n, H*HD) and k, v in bf16 to slot slot[t] of the layer's
 * paged cache (k_cache/v_cache: [slots][KVH][HD]). */
cudaError_t cuda_qkv_rope_store(float *q_out, const float *qkv, const float *bias,
                                const float *inv_freq, const int32_t *pos, const int32_t *slot,
                                uint16_t *k_cache, uint16_t *v_cache, int n, int n_heads,
                                int n_kv_heads, int head_dim, cudaStream_t stream);

/* ---- attention.cu ----------------------------------------------------------------------- */

/* Causal attention of n_tok query tokens over one layer of the paged bf16 cache. Token t belongs
 * to sequence tok_seq[t], sits at position pos[t] and attends positions 0..pos[t], whose K/V are
 * already in the cache; the sequence's block table is block_tables + tok_seq[t] * bt_stride. */
struct cuda_attn {
    float *out;              /* (n_tok, H*HD) */
    const float *q;          /* (n_tok, H*HD), rotated */
    const uint16_t *k_cache; /* layer base, [n_blocks][block_size][KVH][HD] bf16 */
    const uint16_t *v_cache;
    const int32_t *block_tables;
    int bt_stride;
    const int32_t *tok_seq;
    const int32_t *pos;
    int n_tok, n_heads, n_kv_heads, head_dim, block_size;
    float scale; /* 1/sqrt(HD) */
};

/* 0 when the attention kernels support the shape (head_dim <= 256 and even, n_heads a multiple
 * of n_kv_heads with at most 64 query heads per kv head), else -1. */
int cuda_attention_supported(int n_heads, int n_kv_heads, int head_dim);

/* Splits a decode step uses for n_tok tokens on a device of n_sm multiprocessors, and the
 * workspace floats cuda_attention_decode needs for them. */
int cuda_attention_decode_splits(int n_tok, int n_kv_heads, int n_sm);
size_t cuda_attention_decode_ws(int n_tok, int n_heads, int head_dim, int n_split);

/* One query token per CTA row (decode): warps stream the keys of a context split, lanes across
 * head_dim, all query heads of a kv head at once (GQA); n_split > 1 adds a reduce over splits
 * through ws (cuda_attention_decode_ws floats). Any token works; it is fastest for decode. */
cudaError_t cuda_attention_decode(const struct cuda_attn *a, int n_split, float *ws,
                                  cudaStream_t stream);

/* Prefill: tiles (n_tiles pairs of first token, token count; the tokens of a tile are
 * consecutive positions of one sequence, at most tile_tokens of them) of query rows attend
 * 32-key chunks staged in shared memory with an online softmax, so no score matrix beyond
 * rows x 32 exists. tile_tokens * (H / KVH) must be <= 64. */
cudaError_t cuda_attention_prefill(const struct cuda_attn *a, const int32_t *tiles, int n_tiles,
                                   int tile_tokens, cudaStream_t stream);
/* Tokens per prefill tile for a model: 64 / (H / KVH), at least 1. */
int cuda_attention_tile_tokens(int n_heads, int n_kv_heads);

/* ---- activation.cu ---------------------------------------------------------------------- */

/* out[t][i] = silu(gu[t][i]) * gu[t][F + i] for n rows; gu is the fused gate|up GEMM output
 * (n, 2F). out16 (may be NULL) receives a bf16 copy. */
cudaError_t cuda_swiglu(float *out, uint16_t *out16, const float *gu, int n, int F,
                        cudaStream_t stream);

/* ---- gemv.cu ---------------------------------------------------------------------------- */

/* out[t][r] = sum_k w[r][k] * x[t][k] for t < n_tok (1..8), r < rows; w (rows, k) bf16, x f32
 * rows ldx floats apart, out rows ldo floats apart; f32 accumulation. 16-byte weight loads when
 * k % 8 == 0 (and ldx % 4 == 0), a scalar path otherwise; rows are split across warps (split-K)
 * when there are too few rows to fill n_sm multiprocessors. */
cudaError_t cuda_gemv(float *out, int ldo, const float *x, int ldx, const uint16_t *w, int rows,
                      int k, int n_tok, int n_sm, cudaStream_t stream);

/* ---- sampling.cu ------------------------------------------------------------------------ */

struct cuda_sample_params {
    float temperature; /* 0 = greedy (argmax, lowest id on ties) */
    float top_p;       /* (0, 1]; 1 = off */
    int top_k;         /* 0 = off */
    int pad;
    uint64_t seed; /* the draw is a pure function of (seed, step) */
    uint64_t step;
};

/* One token per row of logits (n_rows, vocab): greedy, or softmax(logits / temperature) cut to
 * the top_k tokens and then to the smallest top-probability set of mass >= top_p (ties at the
 * cut are kept), drawn with a counter-based generator from (seed, step). params is a device
 * array of n_rows. out[r] gets the token id. */
cudaError_t cuda_sample(int32_t *out, const float *logits, int n_rows, int vocab,
                        const struct cuda_sample_params *params, cudaStream_t stream);
/* The uniform in [0, 1) cuda_sample draws for (seed, step) (host copy, for tests). */
double cuda_sample_uniform(uint64_t seed, uint64_t step);

#ifdef __cplusplus
}
#endif

#endif
