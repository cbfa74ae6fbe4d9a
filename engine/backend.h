/* The backend interface: one forward step of a model over a batch of sequences that share a
 * paged KV cache. The CPU backend implements it today; a CUDA backend plugs in through the same
 * ops table. The scheduler builds batches and owns KV block allocation; a backend only reads
 * block tables and fills the KV slots of the tokens it computes. */
#ifndef LLMGATE_ENGINE_BACKEND_H
#define LLMGATE_ENGINE_BACKEND_H

#include "engine/kv.h"
#include "engine/model.h"

#include <stddef.h>
#include <stdint.h>

/* One sequence's share of a step: a span of new tokens (a prefill chunk, or one decode token).
 * Positions start_pos .. start_pos + n_tokens - 1 are computed; 0 .. start_pos - 1 must already
 * be in the KV cache (an earlier chunk or a prefix-cache hit). */
struct batch_seq {
    const int32_t *tokens;      /* n_tokens token ids */
    int n_tokens;               /* >= 1 */
    int start_pos;              /* position of tokens[0] */
    const int32_t *block_table; /* physical block of logical block i; covers every position */
    int n_blocks;               /* entries in block_table, >= ceil((start_pos+n_tokens)/bs) */
};

struct batch {
    const struct batch_seq *seqs;
    int n_seqs;
    /* 0: logits of each sequence's last token, n_seqs x vocab. 1: logits of every token in
     * batch order (sequence by sequence), total_tokens x vocab (tests, scoring). */
    int all_logits;
};

/* Sizing of a backend, fixed at creation. Zero fields take defaults. */
struct backend_params {
    int n_threads;        /* CPU worker threads including the caller; 0 = online cores */
    int block_size;       /* KV tokens per block; 0 = 16 */
    int n_blocks;         /* KV pool size in blocks; 0 = backend_default_kv_blocks() */
    int max_batch_tokens; /* most tokens one forward may carry; 0 = 512 */
};

struct backend;

struct backend_ops {
    const char *name; /* "cpu", "cuda" */
    /* Runs one step over batch and writes logits (row-major floats, see struct batch). Returns
     * 0, or -1 with err (invalid batch: token id, positions, block table, too many tokens). */
    int (*forward)(struct backend *b, const struct batch *batch, float *logits, char *err,
                   size_t errlen);
    /* Copies physical block `block` (K then V, every layer, f32 in kv_layout order) to or from
     * a host buffer of kv_block_bytes(): for the prefix KV cache. 0, or -1 with err. */
    int (*kv_read_block)(struct backend *b, int block, void *dst, char *err, size_t errlen);
    int (*kv_write_block)(struct backend *b, int block, const void *src, char *err, size_t errlen);
    /* Releases everything the backend holds (not the model). */
    void (*free)(struct backend *b);
};

struct backend {
    const struct backend_ops *ops;
    const struct model *model; /* borrowed; must outlive the backend */
    struct kv_layout kv;       /* the pool's shape; block ids are 0 .. kv.n_blocks - 1 */
    int max_batch_tokens;
    void *impl; /* backend private state */
};

/* The default KV pool (n_blocks 0) holds one sequence of the model's context window, but at most
 * this many tokens: KV costs 2 * n_layers * n_kv_heads * head_dim values per token (f32 on the
 * CPU, bf16 on CUDA), so a whole window can be large: Qwen2.5-0.5B takes 24 KiB per token on the
 * CPU, 768 MiB for its 32k window; Llama-3.2-1B 64 KiB, 8 GiB for 128k. Longer contexts are
 * served with an explicit --kv-blocks; the engine advertises what the pool holds
 * (sched_max_context). */
#define BACKEND_DEFAULT_KV_TOKENS 4096

/* KV blocks of block_size tokens in the default pool: min(max_seq_len,
 * BACKEND_DEFAULT_KV_TOKENS) tokens, rounded up to whole blocks. */
int backend_default_kv_blocks(const struct model_config *c, int block_size);

/* Creates the CPU backend for model m (thread pool, scratch, a host KV pool). Returns 0 and
 * *out (free with backend_free), or -1 with err. */
int backend_cpu_create(const struct model *m, const struct backend_params *params,
                       struct backend **out, char *err, size_t errlen);

/* Creates the CUDA backend on device 0: weights uploaded in bf16, a device KV pool, decode
 * graphs (docs/CUDA.md). Returns 0 and *out, or -1 with err (built without CUDA, no device,
 * unsupported shape, out of device memory). */
int backend_cuda_create(const struct model *m, const struct backend_params *params,
                        struct backend **out, char *err, size_t errlen);

/* Creates the backend `device` names: "cuda", "cpu", or "auto" (NULL too) = CUDA when it is
 * built and a device is present, else the CPU. note gets one line on what was chosen and why
 * (for the log). Returns 0 and *out, or -1 with err (unknown name, or the chosen backend's
 * error; "auto" falls back to the CPU when CUDA fails). */
int backend_create_auto(const char *device, const struct model *m,
                        const struct backend_params *params, struct backend **out, char *note,
                        size_t notelen, char *err, size_t errlen);

/* The CPU backend's KV pool (tests, debugging); NULL for other backends. */
struct kv_pool *backend_cpu_kv(struct backend *b);

/* One forward step; see backend_ops.forward. */
int backend_forward(struct backend *b, const struct batch *batch, float *logits, char *err,
                    size_t errlen);

/* Frees the backend. NULL is a no-op. */
void backend_free(struct backend *b);

/* Rows of logits forward writes for batch (n_seqs, or total tokens with all_logits). */
int batch_logit_rows(const struct batch *batch);

/* Checks a batch against a backend's limits and the model: token ids, positions within the
 * block table and max_seq_len, block ids within the pool, total tokens. For backends' forward.
 * 0, or -1 with err naming the sequence. */
int batch_validate(const struct backend *b, const struct batch *batch, char *err, size_t errlen);

#endif
