/* Host KV pool allocation. */
#include "engine/kv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int kv_pool_create(const struct kv_layout *layout, struct kv_pool **out, char *err, size_t errlen)
{
    *out = NULL;
    const struct kv_layout *L = layout;
    if (L->n_layers < 1 || L->n_kv_heads < 1 || L->head_dim < 1 || L->block_size < 1 ||
        L->n_blocks < 1 || L->block_size > 4096) {
        snprintf(err, errlen,
                 "kv pool: invalid layout (layers %d, kv heads %d, head_dim %d, "
                 "block_size %d, blocks %d)",
                 L->n_layers, L->n_kv_heads, L->head_dim, L->block_size, L->n_blocks);
        return -1;
    }
    size_t layer =
        (size_t)L->n_blocks * (size_t)L->block_size * (size_t)L->n_kv_heads * (size_t)L->head_dim;
    size_t total = layer * (size_t)L->n_layers;
    if (total / (size_t)L->n_layers != layer || total > ((size_t)1 << 40) / sizeof(float)) {
        snprintf(err, errlen, "kv pool: %d blocks is too large", L->n_blocks);
        return -1;
    }
    struct kv_pool *p = calloc(1, sizeof *p);
    if (!p) goto oom;
    p->layout = *L;
    p->layer_floats = layer;
    p->k = calloc(total, sizeof(float));
    p->v = calloc(total, sizeof(float));
    if (!p->k || !p->v) goto oom;
    *out = p;
    return 0;
oom:
    kv_pool_free(p);
    snprintf(err, errlen, "kv pool: out of memory for %d blocks", L->n_blocks);
    return -1;
}

void kv_pool_free(struct kv_pool *p)
{
    if (!p) return;
    free(p->k);
    free(p->v);
    free(p);
}

size_t kv_block_bytes(const struct kv_layout *L)
{
    return 2 * sizeof(float) * (size_t)L->n_layers * (size_t)L->block_size * (size_t)L->n_kv_heads *
           (size_t)L->head_dim;
}
