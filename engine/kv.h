/* The paged KV cache: a pool of fixed-size blocks allocated once. A sequence's cache is a block
 * table, its logical block i (positions i*block_size .. (i+1)*block_size-1) living in physical
 * block block_table[i]. The scheduler owns which blocks a sequence holds; backends only read
 * block tables and write the slots of the positions they compute. */
#ifndef LLMGATE_ENGINE_KV_H
#define LLMGATE_ENGINE_KV_H

#include <stddef.h>
#include <stdint.h>

/* Shape of a KV pool. The same layout describes a device pool (the CUDA backend's). */
struct kv_layout {
    int n_layers;
    int n_kv_heads;
    int head_dim;
    int block_size; /* tokens per block, e.g. 16 */
    int n_blocks;   /* blocks in the pool */
};

/* Host pool, f32 (bf16 KV is future work). For layer l, K and V are each
 * [n_blocks][block_size][n_kv_heads][head_dim]; position p of a sequence with block table bt is
 * slot p % block_size of block bt[p / block_size]. */
struct kv_pool {
    struct kv_layout layout;
    float *k;            /* n_layers * layer_floats */
    float *v;            /* n_layers * layer_floats */
    size_t layer_floats; /* n_blocks * block_size * n_kv_heads * head_dim */
};

/* Allocates a zeroed pool. Returns 0 and *out (free with kv_pool_free), or -1 with err (bad
 * layout, out of memory). */
int kv_pool_create(const struct kv_layout *layout, struct kv_pool **out, char *err, size_t errlen);

/* Frees the pool. NULL is a no-op. */
void kv_pool_free(struct kv_pool *p);

/* Bytes of K plus V that one block holds across all layers (f32). */
size_t kv_block_bytes(const struct kv_layout *layout);

/* Blocks a sequence of n_tokens positions needs. */
static inline int kv_blocks_for(const struct kv_layout *layout, int n_tokens)
{
    return (n_tokens + layout->block_size - 1) / layout->block_size;
}

/* K (or V) vector of kv head h at slot `slot` of physical block `block` in layer l. */
static inline float *kv_k_at(const struct kv_pool *p, int l, int block, int slot, int h)
{
    const struct kv_layout *L = &p->layout;
    return p->k + (size_t)l * p->layer_floats +
           (((size_t)block * (size_t)L->block_size + (size_t)slot) * (size_t)L->n_kv_heads +
            (size_t)h) *
               (size_t)L->head_dim;
}

static inline float *kv_v_at(const struct kv_pool *p, int l, int block, int slot, int h)
{
    return p->v + (kv_k_at(p, l, block, slot, h) - p->k);
}

#endif
