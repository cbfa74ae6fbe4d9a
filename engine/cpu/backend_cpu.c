/* The CPU backend: a forward step over a batch of sequences with a paged f32 KV cache, matmuls
 * split across a persistent thread pool, every other step in f32 on the calling thread. */
#include "engine/backend.h"
#include "engine/cpu/cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct cpu_backend {
    struct backend base;
    struct tpool *pool;
    struct kv_pool *kv;
    float *inv_freq; /* head_dim / 2 rotary frequencies */
    /* activations of the step's T tokens (T <= max_batch_tokens), row-major */
    float *x;       /* (T, D) residual stream */
    float *xb;      /* (T, D) normed input of a block */
    float *xb2;     /* (T, D) output of a block before the residual add */
    float *q;       /* (T, H*HD) */
    float *k;       /* (T, KVH*HD) */
    float *v;       /* (T, KVH*HD) */
    float *att;     /* (T, H*HD) attention output */
    float *hb;      /* (T, F) gate, then swiglu */
    float *hb2;     /* (T, F) up */
    int32_t *ids;   /* (T) token ids of the flattened batch */
    int32_t *pos;   /* (T) positions */
    int32_t *seq;   /* (T) sequence index */
    float *scratch; /* (threads, block_size) attention scores */
};

/* ---- steps that need the pool --------------------------------------------------------------- */

struct attn_task {
    struct cpu_backend *cb;
    const struct batch *batch;
    int layer;
    int n_tok;
};

static void attention_thread(void *ctx, int tid, int n)
{
    const struct attn_task *a = ctx;
    struct cpu_backend *cb = a->cb;
    const struct model_config *c = &cb->base.model->cfg;
    const int H = c->n_heads, HD = c->head_dim, group = c->n_heads / c->n_kv_heads;
    long long total = (long long)a->n_tok * H;
    long long lo = total * tid / n, hi = total * (tid + 1) / n;
    float *scratch = cb->scratch + (size_t)tid * (size_t)cb->kv->layout.block_size;
    for (long long i = lo; i < hi; i++) {
        int t = (int)(i / H), h = (int)(i % H);
        const struct batch_seq *s = &a->batch->seqs[cb->seq[t]];
        size_t off = (size_t)t * (size_t)(H * HD) + (size_t)h * (size_t)HD;
        attention_head(cb->att + off, cb->q + off, cb->kv, a->layer, s->block_table, cb->pos[t],
                       h / group, scratch);
    }
}

/* att = causal attention of every token's query heads over its sequence's cache. */
static void attention(struct cpu_backend *cb, const struct batch *batch, int l, int n_tok)
{
    struct attn_task a = {cb, batch, l, n_tok};
    tpool_run(cb->pool, attention_thread, &a);
}

static void matmul(struct cpu_backend *cb, float *out, const float *x, int n_tok,
                   const struct wtensor *w, const struct wtensor *bias)
{
    struct matmul_job job = {out, (size_t)w->rows, x, n_tok, w, bias};
    matmul_run(cb->pool, &job, 1);
}

/* q, k, v = xb Wq^T, xb Wk^T, xb Wv^T (+ biases) in one dispatch. */
static void qkv_proj(struct cpu_backend *cb, const struct layer_weights *L, int n_tok)
{
    struct matmul_job jobs[3] = {
        {cb->q, (size_t)L->wq.rows, cb->xb, n_tok, &L->wq, &L->bq},
        {cb->k, (size_t)L->wk.rows, cb->xb, n_tok, &L->wk, &L->bk},
        {cb->v, (size_t)L->wv.rows, cb->xb, n_tok, &L->wv, &L->bv},
    };
    matmul_run(cb->pool, jobs, 3);
}

/* hb, hb2 = xb Wgate^T, xb Wup^T in one dispatch. */
static void gate_up_proj(struct cpu_backend *cb, const struct layer_weights *L, int n_tok)
{
    struct matmul_job jobs[2] = {
        {cb->hb, (size_t)L->w_gate.rows, cb->xb, n_tok, &L->w_gate, NULL},
        {cb->hb2, (size_t)L->w_up.rows, cb->xb, n_tok, &L->w_up, NULL},
    };
    matmul_run(cb->pool, jobs, 2);
}

/* Rotary embedding of q and k, then k and v into the cache, token by token. */
static void rope_and_store(struct cpu_backend *cb, const struct batch *batch, int l, int n_tok)
{
    const struct model_config *c = &cb->base.model->cfg;
    size_t qd = (size_t)c->n_heads * (size_t)c->head_dim;
    size_t kd = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    for (int t = 0; t < n_tok; t++) {
        rope(cb->q + t * qd, c->n_heads, c->head_dim, cb->pos[t], cb->inv_freq);
        rope(cb->k + t * kd, c->n_kv_heads, c->head_dim, cb->pos[t], cb->inv_freq);
        kv_store(cb->kv, l, batch->seqs[cb->seq[t]].block_table, cb->pos[t], cb->k + t * kd,
                 cb->v + t * kd);
    }
}

/* ---- forward -------------------------------------------------------------------------------- */

static void layer_forward(struct cpu_backend *cb, const struct batch *batch, int l, int n_tok)
{
    const struct model_config *c = &cb->base.model->cfg;
    const struct layer_weights *L = &cb->base.model->w.layers[l];
    const size_t D = (size_t)c->dim;

    rmsnorm(cb->xb, cb->x, &L->attn_norm, n_tok, c->dim, c->norm_eps);
    qkv_proj(cb, L, n_tok);
    rope_and_store(cb, batch, l, n_tok);
    attention(cb, batch, l, n_tok);
    matmul(cb, cb->xb2, cb->att, n_tok, &L->wo, &L->bo);
    residual_add(cb->x, cb->xb2, (size_t)n_tok * D);

    rmsnorm(cb->xb, cb->x, &L->ffn_norm, n_tok, c->dim, c->norm_eps);
    gate_up_proj(cb, L, n_tok);
    swiglu(cb->hb, cb->hb2, (size_t)n_tok * (size_t)c->hidden_dim);
    matmul(cb, cb->xb2, cb->hb, n_tok, &L->w_down, NULL);
    residual_add(cb->x, cb->xb2, (size_t)n_tok * D);
}

/* Flattens the batch into ids/pos/seq; returns the token count. */
static int flatten(struct cpu_backend *cb, const struct batch *batch)
{
    int n = 0;
    for (int s = 0; s < batch->n_seqs; s++) {
        const struct batch_seq *bs = &batch->seqs[s];
        for (int t = 0; t < bs->n_tokens; t++, n++) {
            cb->ids[n] = bs->tokens[t];
            cb->pos[n] = bs->start_pos + t;
            cb->seq[n] = s;
        }
    }
    return n;
}

static int cpu_forward(struct backend *b, const struct batch *batch, float *logits, char *err,
                       size_t errlen)
{
    struct cpu_backend *cb = (struct cpu_backend *)b;
    const struct model *m = b->model;
    const struct model_config *c = &m->cfg;
    const size_t D = (size_t)c->dim;
    if (batch_validate(b, batch, err, errlen) != 0) return -1;
    int n_tok = flatten(cb, batch);

    embed_tokens(cb->x, &m->w.embed, cb->ids, n_tok);
    for (int l = 0; l < c->n_layers; l++)
        layer_forward(cb, batch, l, n_tok);

    /* the rows whose logits are wanted: every token, or each sequence's last */
    int n_out = n_tok;
    if (!batch->all_logits) {
        n_out = 0;
        for (int t = 0; t < n_tok; t++)
            if (t == n_tok - 1 || cb->seq[t + 1] != cb->seq[t])
                memmove(cb->x + (size_t)n_out++ * D, cb->x + (size_t)t * D, D * sizeof(float));
    }
    rmsnorm(cb->xb, cb->x, &m->w.final_norm, n_out, c->dim, c->norm_eps);
    matmul(cb, logits, cb->xb, n_out, &m->w.lm_head, NULL);
    return 0;
}

/* ---- KV block transfer ---------------------------------------------------------------------- */

static int cpu_kv_block(struct backend *b, int block, float *host, int to_host, char *err,
                        size_t errlen)
{
    struct cpu_backend *cb = (struct cpu_backend *)b;
    const struct kv_layout *L = &cb->kv->layout;
    if (block < 0 || block >= L->n_blocks) {
        snprintf(err, errlen, "kv block %d outside the pool of %d", block, L->n_blocks);
        return -1;
    }
    size_t n = (size_t)L->block_size * (size_t)L->n_kv_heads * (size_t)L->head_dim;
    for (int l = 0; l < L->n_layers; l++) {
        float *k = kv_k_at(cb->kv, l, block, 0, 0), *v = kv_v_at(cb->kv, l, block, 0, 0);
        float *hk = host + (size_t)(2 * l) * n, *hv = hk + n;
        if (to_host) {
            memcpy(hk, k, n * sizeof(float));
            memcpy(hv, v, n * sizeof(float));
        } else {
            memcpy(k, hk, n * sizeof(float));
            memcpy(v, hv, n * sizeof(float));
        }
    }
    return 0;
}

static int cpu_kv_read_block(struct backend *b, int block, void *dst, char *err, size_t errlen)
{
    return cpu_kv_block(b, block, dst, 1, err, errlen);
}

static int cpu_kv_write_block(struct backend *b, int block, const void *src, char *err,
                              size_t errlen)
{
    return cpu_kv_block(b, block, (float *)(uintptr_t)src, 0, err, errlen);
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static void cpu_free(struct backend *b)
{
    struct cpu_backend *cb = (struct cpu_backend *)b;
    if (!cb) return;
    tpool_free(cb->pool);
    kv_pool_free(cb->kv);
    free(cb->inv_freq);
    free(cb->x);
    free(cb->xb);
    free(cb->xb2);
    free(cb->q);
    free(cb->k);
    free(cb->v);
    free(cb->att);
    free(cb->hb);
    free(cb->hb2);
    free(cb->ids);
    free(cb->pos);
    free(cb->seq);
    free(cb->scratch);
    free(cb);
}

static const struct backend_ops cpu_ops = {
    .name = "cpu",
    .forward = cpu_forward,
    .kv_read_block = cpu_kv_read_block,
    .kv_write_block = cpu_kv_write_block,
    .free = cpu_free,
};

static float *falloc(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, (n ? n : 1) * sizeof(float)) != 0) return NULL;
    return p;
}

struct kv_pool *backend_cpu_kv(struct backend *b)
{
    if (!b || b->ops != &cpu_ops) return NULL;
    return ((struct cpu_backend *)b)->kv;
}

int backend_cpu_create(const struct model *m, const struct backend_params *params,
                       struct backend **out, char *err, size_t errlen)
{
    *out = NULL;
    const struct model_config *c = &m->cfg;
    struct backend_params p = params ? *params : (struct backend_params){0};
    if (p.n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        p.n_threads = n > 0 ? (int)(n > 256 ? 256 : n) : 1;
    }
    if (p.block_size <= 0) p.block_size = 16;
    if (p.max_batch_tokens <= 0) p.max_batch_tokens = 512;
    if (p.n_blocks <= 0) p.n_blocks = backend_default_kv_blocks(c, p.block_size);

    struct cpu_backend *cb = calloc(1, sizeof *cb);
    if (!cb) {
        snprintf(err, errlen, "cpu backend: out of memory");
        return -1;
    }
    cb->base.ops = &cpu_ops;
    cb->base.model = m;
    cb->base.max_batch_tokens = p.max_batch_tokens;
    cb->base.kv =
        (struct kv_layout){c->n_layers, c->n_kv_heads, c->head_dim, p.block_size, p.n_blocks};
    if (tpool_create(p.n_threads, &cb->pool, err, errlen) != 0 ||
        kv_pool_create(&cb->base.kv, &cb->kv, err, errlen) != 0)
        goto fail;
    size_t T = (size_t)p.max_batch_tokens, D = (size_t)c->dim, F = (size_t)c->hidden_dim;
    size_t Q = (size_t)c->n_heads * (size_t)c->head_dim;
    size_t KV = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    cb->inv_freq = falloc((size_t)c->head_dim / 2);
    cb->x = falloc(T * D);
    cb->xb = falloc(T * D);
    cb->xb2 = falloc(T * D);
    cb->q = falloc(T * Q);
    cb->k = falloc(T * KV);
    cb->v = falloc(T * KV);
    cb->att = falloc(T * Q);
    cb->hb = falloc(T * F);
    cb->hb2 = falloc(T * F);
    cb->ids = calloc(T, sizeof *cb->ids);
    cb->pos = calloc(T, sizeof *cb->pos);
    cb->seq = calloc(T, sizeof *cb->seq);
    cb->scratch = falloc((size_t)p.n_threads * (size_t)p.block_size);
    if (!cb->inv_freq || !cb->x || !cb->xb || !cb->xb2 || !cb->q || !cb->k || !cb->v || !cb->att ||
        !cb->hb || !cb->hb2 || !cb->ids || !cb->pos || !cb->seq || !cb->scratch) {
        snprintf(err, errlen, "cpu backend: out of memory for %d batch tokens", p.max_batch_tokens);
        goto fail;
    }
    model_rope_inv_freq(c, cb->inv_freq);
    *out = &cb->base;
    return 0;
fail:
    cpu_free(&cb->base);
    return -1;
}
