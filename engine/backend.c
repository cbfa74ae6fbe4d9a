/* Backend-independent parts of the backend interface: dispatch and batch validation. */
#include "autoconf.h"
#include "engine/backend.h"

#include <stdio.h>
#include <string.h>

int backend_forward(struct backend *b, const struct batch *batch, float *logits, char *err,
                    size_t errlen)
{
    return b->ops->forward(b, batch, logits, err, errlen);
}

void backend_free(struct backend *b)
{
    if (b) b->ops->free(b);
}

int backend_default_kv_blocks(const struct model_config *c, int block_size)
{
    int tokens =
        c->max_seq_len < BACKEND_DEFAULT_KV_TOKENS ? c->max_seq_len : BACKEND_DEFAULT_KV_TOKENS;
    return (tokens + block_size - 1) / block_size;
}

int batch_logit_rows(const struct batch *batch)
{
    if (!batch->all_logits) return batch->n_seqs;
    int n = 0;
    for (int i = 0; i < batch->n_seqs; i++)
        n += batch->seqs[i].n_tokens;
    return n;
}

int batch_validate(const struct backend *b, const struct batch *batch, char *err, size_t errlen)
{
    const struct model_config *c = &b->model->cfg;
    if (batch->n_seqs < 1 || !batch->seqs) {
        snprintf(err, errlen, "batch: no sequences");
        return -1;
    }
    long long total = 0;
    for (int i = 0; i < batch->n_seqs; i++) {
        const struct batch_seq *s = &batch->seqs[i];
        if (s->n_tokens < 1 || !s->tokens || s->start_pos < 0) {
            snprintf(err, errlen, "batch: sequence %d: needs at least one token and start >= 0", i);
            return -1;
        }
        total += s->n_tokens;
        long long end = (long long)s->start_pos + s->n_tokens;
        if (end > c->max_seq_len) {
            snprintf(err, errlen, "batch: sequence %d: position %lld beyond the model's %d", i,
                     end - 1, c->max_seq_len);
            return -1;
        }
        if (!s->block_table || (long long)s->n_blocks * b->kv.block_size < end) {
            snprintf(err, errlen,
                     "batch: sequence %d: block table of %d blocks does not cover "
                     "position %lld",
                     i, s->n_blocks, end - 1);
            return -1;
        }
        int used = (int)((end + b->kv.block_size - 1) / b->kv.block_size);
        for (int j = 0; j < used; j++) {
            if (s->block_table[j] < 0 || s->block_table[j] >= b->kv.n_blocks) {
                snprintf(err, errlen,
                         "batch: sequence %d: block_table[%d] = %d outside the pool "
                         "of %d blocks",
                         i, j, s->block_table[j], b->kv.n_blocks);
                return -1;
            }
        }
        for (int t = 0; t < s->n_tokens; t++) {
            if (s->tokens[t] < 0 || s->tokens[t] >= c->vocab_size) {
                snprintf(err, errlen, "batch: sequence %d: token %d is id %d, vocab is %d", i, t,
                         s->tokens[t], c->vocab_size);
                return -1;
            }
        }
    }
    if (total > b->max_batch_tokens) {
        snprintf(err, errlen, "batch: %lld tokens exceed the backend's max_batch_tokens %d", total,
                 b->max_batch_tokens);
        return -1;
    }
    return 0;
}

#ifndef HAVE_CUDA
int backend_cuda_create(const struct model *m, const struct backend_params *params,
                        struct backend **out, char *err, size_t errlen)
{
    (void)m;
    (void)params;
    *out = NULL;
    snprintf(err, errlen, "cuda backend: not built (configure --with-cuda)");
    return -1;
}
#endif

int backend_create_auto(const char *device, const struct model *m,
                        const struct backend_params *params, struct backend **out, char *note,
                        size_t notelen, char *err, size_t errlen)
{
    if (!device) device = "auto";
    if (strcmp(device, "cpu") == 0) {
        snprintf(note, notelen, "cpu backend (--device cpu)");
        return backend_cpu_create(m, params, out, err, errlen);
    }
    if (strcmp(device, "cuda") == 0) {
        snprintf(note, notelen, "cuda backend (--device cuda)");
        return backend_cuda_create(m, params, out, err, errlen);
    }
    if (strcmp(device, "auto") != 0) {
        snprintf(err, errlen, "unknown device %s (auto, cpu or cuda)", device);
        return -1;
    }
    char why[256];
    if (backend_cuda_create(m, params, out, why, sizeof why) == 0) {
        snprintf(note, notelen, "cuda backend (auto: a CUDA device is present)");
        return 0;
    }
    snprintf(note, notelen, "cpu backend (auto: %s)", why);
    return backend_cpu_create(m, params, out, err, errlen);
}
