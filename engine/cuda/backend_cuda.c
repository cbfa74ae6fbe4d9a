/* The CUDA backend: the engine's forward step on one GPU. Weights live on the device in bf16
 * (f32 and f16 checkpoints are rounded to bf16 at upload; norm weights and biases stay f32),
 * activations and accumulation are f32, the paged KV pool is bf16 in the CPU pool's block layout.
 * Projections of 1-8 tokens go through the hand-written GEMV (gemv.cu), larger ones through
 * cuBLASLt (bf16 in, f32 compute and out). A pure decode step is captured once per batch-size
 * bucket as a CUDA graph over fixed device buffers whose contents are refreshed before each
 * replay. Errors (no device, out of memory, faults) come back as -1 with "file:line" in err. */
#include "engine/backend.h"
#include "engine/cuda/backend_cuda.h"
#include "engine/cuda/kernels.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- errors --------------------------------------------------------------------------------- */

static int fail_at(char *err, size_t errlen, const char *call, const char *name, const char *msg,
                   const char *file, int line)
{
    snprintf(err, errlen, "cuda backend: %s: %s (%s) at %s:%d", call, name, msg, file, line);
    return -1;
}

/* Returns -1 from the calling function with the failing call, the error and file:line in err. */
#define CUDA_CHECK(call)                                                                           \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            (void)cudaGetLastError(); /* clear a non-sticky error */                               \
            return fail_at(err, errlen, #call, cudaGetErrorName(e_), cudaGetErrorString(e_),       \
                           __FILE__, __LINE__);                                                    \
        }                                                                                          \
    } while (0)

#define LT_CHECK(call)                                                                             \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                           \
            return fail_at(err, errlen, #call, cublasLtGetStatusName(s_),                          \
                           cublasLtGetStatusString(s_), __FILE__, __LINE__);                       \
    } while (0)

/* ---- state ---------------------------------------------------------------------------------- */

#define N_BUCKETS 8
static const int BUCKETS[N_BUCKETS] = {1, 2, 4, 8, 16, 32, 64, 128};
#define GEMV_MAX_TOKENS 8
#define LT_PLANS        64
#define LT_WORKSPACE    (32u << 20)
#define MAX_ALLOCS      32

struct dev_linear {
    const uint16_t *w; /* (rows, cols) bf16 */
    int rows, cols;
};

struct dev_layer {
    float *attn_norm;          /* (D) */
    float *ffn_norm;           /* (D) */
    struct dev_linear qkv;     /* (H*HD + 2*KVH*HD, D): q, k and v projections stacked */
    float *bqkv;               /* (H*HD + 2*KVH*HD) or NULL */
    struct dev_linear o;       /* (D, H*HD) */
    float *bo;                 /* (D) or NULL */
    struct dev_linear gate_up; /* (2F, D): gate then up */
    struct dev_linear down;    /* (D, F) */
};

/* A cuBLASLt matmul configuration for one (out rows n, inner k, tokens t) shape. */
struct lt_plan {
    int n, k, t, used;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};

struct cuda_backend {
    struct backend base;
    int n_sm;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *lt_ws;
    struct lt_plan plans[LT_PLANS];
    int plan_next;
    void *allocs[MAX_ALLOCS]; /* device allocations, freed together */
    int n_allocs;

    /* weights */
    const uint16_t *embed; /* (V, D) bf16 */
    struct dev_linear lm_head;
    float *final_norm; /* (D) */
    struct dev_layer *layers;
    float *inv_freq; /* (HD/2) */

    /* KV pool: K and V each [n_layers][n_blocks + 1][block_size][KVH][HD] bf16; the extra block
     * (trash_block) takes the K/V of the padding rows of a graph bucket */
    uint16_t *k_pool, *v_pool;
    size_t layer_elems, block_elems;
    int trash_block;
    float *kv_stage; /* (2 * n_layers * block_elems) f32, kv_read/write_block staging */

    /* activations for up to cap tokens, row-major, fixed addresses (graphs depend on it) */
    int cap;
    float *x, *xb, *qkv, *q, *att, *delta, *gu, *h, *xg, *logits, *attn_ws;
    uint16_t *xb16, *att16, *h16, *xg16;

    /* step metadata: a device buffer and its pinned host mirror, one copy per step */
    int32_t *d_meta, *h_meta;
    size_t meta_fixed; /* ints before the block tables */
    int bt_stride;     /* block table entries per sequence */
    int tile_tokens;

    int graphs_on;
    cudaGraphExec_t graph[N_BUCKETS];
    struct backend_cuda_stats st;
    int broken; /* a step failed on the device: the context may be unusable */
    char broken_msg[256];
};

/* Offsets of the metadata sections (ints) for capacity cap. */
enum { M_TOK, M_POS, M_SLOT, M_SEQ, M_ROWS, M_TILES };
static size_t meta_off(const struct cuda_backend *cb, int section)
{
    return section < M_TILES ? (size_t)section * (size_t)cb->cap : (size_t)M_TILES * cb->cap;
}
#define DMETA(cb, s) ((cb)->d_meta + meta_off(cb, s))
#define HMETA(cb, s) ((cb)->h_meta + meta_off(cb, s))
#define D_BT(cb)     ((cb)->d_meta + (cb)->meta_fixed)
#define H_BT(cb)     ((cb)->h_meta + (cb)->meta_fixed)

static const struct backend_ops cuda_ops;

/* ---- allocation and upload ------------------------------------------------------------------ */

static int dalloc(struct cuda_backend *cb, void **p, size_t bytes, const char *what, char *err,
                  size_t errlen)
{
    *p = NULL;
    if (cb->n_allocs == MAX_ALLOCS) {
        snprintf(err, errlen, "cuda backend: too many allocations (%s)", what);
        return -1;
    }
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 16);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        (void)cudaMemGetInfo(&free_b, &total_b);
        (void)cudaGetLastError();
        snprintf(err, errlen,
                 "cuda backend: out of device memory for %s: %.1f MiB requested, %.1f MiB free "
                 "of %.1f MiB (%s) at %s:%d",
                 what, (double)bytes / 1048576.0, (double)free_b / 1048576.0,
                 (double)total_b / 1048576.0, cudaGetErrorName(e), __FILE__, __LINE__);
        *p = NULL;
        return -1;
    }
    cb->allocs[cb->n_allocs++] = *p;
    cb->st.device_bytes += bytes;
    return 0;
}

/* Host scratch for conversions, grown on demand. */
struct staging {
    void *p;
    size_t n;
};

static void *staging_get(struct staging *s, size_t bytes)
{
    if (bytes > s->n) {
        void *q = realloc(s->p, bytes);
        if (!q) return NULL;
        s->p = q;
        s->n = bytes;
    }
    return s->p;
}

/* Copies tensor t (rows x cols) to dst as bf16. */
static int upload_bf16(uint16_t *dst, const struct wtensor *t, struct staging *s, char *err,
                       size_t errlen)
{
    size_t n = (size_t)t->rows * (size_t)t->cols;
    const void *src = t->data;
    if (t->type == WT_F32) {
        uint16_t *h = staging_get(s, n * 2);
        if (!h) {
            snprintf(err, errlen, "cuda backend: out of host memory converting weights");
            return -1;
        }
        for (size_t i = 0; i < n; i++)
            h[i] = f32_to_bf16(((const float *)t->data)[i]);
        src = h;
    }
    CUDA_CHECK(cudaMemcpy(dst, src, n * 2, cudaMemcpyHostToDevice));
    return 0;
}

/* Copies tensor t to dst as f32 (norm weights, biases). */
static int upload_f32(float *dst, const struct wtensor *t, struct staging *s, char *err,
                      size_t errlen)
{
    size_t n = (size_t)t->rows * (size_t)t->cols;
    const void *src = t->data;
    if (t->type == WT_BF16) {
        float *h = staging_get(s, n * 4);
        if (!h) {
            snprintf(err, errlen, "cuda backend: out of host memory converting weights");
            return -1;
        }
        for (size_t i = 0; i < n; i++)
            h[i] = bf16_to_f32(((const uint16_t *)t->data)[i]);
        src = h;
    }
    CUDA_CHECK(cudaMemcpy(dst, src, n * 4, cudaMemcpyHostToDevice));
    return 0;
}

/* Bump allocator over the weight arena, 256-byte aligned pieces. */
struct arena {
    char *base;
    size_t used, size;
};

static void *arena_take(struct arena *a, size_t bytes)
{
    size_t at = (a->used + 255) & ~(size_t)255;
    if (at + bytes > a->size) return NULL;
    a->used = at + bytes;
    return a->base + at;
}

static size_t arena_need(size_t *total, size_t bytes)
{
    *total = ((*total + 255) & ~(size_t)255) + bytes;
    return *total;
}

static int upload_weights(struct cuda_backend *cb, char *err, size_t errlen)
{
    const struct model *m = cb->base.model;
    const struct model_config *c = &m->cfg;
    const size_t D = (size_t)c->dim, F = (size_t)c->hidden_dim, V = (size_t)c->vocab_size;
    const size_t Q = (size_t)c->n_heads * c->head_dim, KV = (size_t)c->n_kv_heads * c->head_dim;
    const int tied = m->w.lm_head.data == m->w.embed.data;
    size_t total = 0;
    arena_need(&total, V * D * 2);
    if (!tied) arena_need(&total, V * D * 2);
    arena_need(&total, D * 4);
    arena_need(&total, (size_t)c->head_dim / 2 * 4);
    for (int l = 0; l < c->n_layers; l++) {
        arena_need(&total, D * 4);
        arena_need(&total, D * 4);
        arena_need(&total, (Q + 2 * KV) * D * 2);
        arena_need(&total, (Q + 2 * KV) * 4);
        arena_need(&total, D * Q * 2);
        arena_need(&total, D * 4);
        arena_need(&total, 2 * F * D * 2);
        arena_need(&total, D * F * 2);
    }
    struct arena a = {NULL, 0, total + 256};
    if (dalloc(cb, (void **)&a.base, a.size, "weights", err, errlen) != 0) return -1;
    cb->st.weight_bytes = a.size;
    cb->layers = calloc((size_t)c->n_layers, sizeof *cb->layers);
    if (!cb->layers) {
        snprintf(err, errlen, "cuda backend: out of host memory");
        return -1;
    }
    struct staging s = {NULL, 0};
    int rc = -1;
    uint16_t *embed = arena_take(&a, V * D * 2);
    if (upload_bf16(embed, &m->w.embed, &s, err, errlen) != 0) goto out;
    cb->embed = embed;
    cb->lm_head = (struct dev_linear){embed, (int)V, (int)D};
    if (!tied) {
        uint16_t *lm = arena_take(&a, V * D * 2);
        if (upload_bf16(lm, &m->w.lm_head, &s, err, errlen) != 0) goto out;
        cb->lm_head.w = lm;
    }
    cb->final_norm = arena_take(&a, D * 4);
    if (upload_f32(cb->final_norm, &m->w.final_norm, &s, err, errlen) != 0) goto out;
    float *inv = malloc((size_t)c->head_dim / 2 * sizeof(float));
    if (!inv) goto out;
    model_rope_inv_freq(c, inv);
    cb->inv_freq = arena_take(&a, (size_t)c->head_dim / 2 * 4);
    cudaError_t e =
        cudaMemcpy(cb->inv_freq, inv, (size_t)c->head_dim / 2 * 4, cudaMemcpyHostToDevice);
    free(inv);
    if (e != cudaSuccess) {
        fail_at(err, errlen, "cudaMemcpy(inv_freq)", cudaGetErrorName(e), cudaGetErrorString(e),
                __FILE__, __LINE__);
        goto out;
    }
    for (int l = 0; l < c->n_layers; l++) {
        const struct layer_weights *L = &m->w.layers[l];
        struct dev_layer *d = &cb->layers[l];
        d->attn_norm = arena_take(&a, D * 4);
        d->ffn_norm = arena_take(&a, D * 4);
        uint16_t *qkv = arena_take(&a, (Q + 2 * KV) * D * 2);
        if (upload_f32(d->attn_norm, &L->attn_norm, &s, err, errlen) != 0 ||
            upload_f32(d->ffn_norm, &L->ffn_norm, &s, err, errlen) != 0 ||
            upload_bf16(qkv, &L->wq, &s, err, errlen) != 0 ||
            upload_bf16(qkv + Q * D, &L->wk, &s, err, errlen) != 0 ||
            upload_bf16(qkv + (Q + KV) * D, &L->wv, &s, err, errlen) != 0)
            goto out;
        d->qkv = (struct dev_linear){qkv, (int)(Q + 2 * KV), (int)D};
        if (c->qkv_bias && L->bq.data) {
            d->bqkv = arena_take(&a, (Q + 2 * KV) * 4);
            if (upload_f32(d->bqkv, &L->bq, &s, err, errlen) != 0 ||
                upload_f32(d->bqkv + Q, &L->bk, &s, err, errlen) != 0 ||
                upload_f32(d->bqkv + Q + KV, &L->bv, &s, err, errlen) != 0)
                goto out;
        }
        uint16_t *o = arena_take(&a, D * Q * 2);
        if (upload_bf16(o, &L->wo, &s, err, errlen) != 0) goto out;
        d->o = (struct dev_linear){o, (int)D, (int)Q};
        if (c->o_bias && L->bo.data) {
            d->bo = arena_take(&a, D * 4);
            if (upload_f32(d->bo, &L->bo, &s, err, errlen) != 0) goto out;
        }
        uint16_t *gu = arena_take(&a, 2 * F * D * 2);
        uint16_t *dn = arena_take(&a, D * F * 2);
        if (upload_bf16(gu, &L->w_gate, &s, err, errlen) != 0 ||
            upload_bf16(gu + F * D, &L->w_up, &s, err, errlen) != 0 ||
            upload_bf16(dn, &L->w_down, &s, err, errlen) != 0)
            goto out;
        d->gate_up = (struct dev_linear){gu, (int)(2 * F), (int)D};
        d->down = (struct dev_linear){dn, (int)D, (int)F};
    }
    rc = 0;
out:
    free(s.p);
    if (rc != 0 && !err[0]) snprintf(err, errlen, "cuda backend: out of host memory");
    return rc;
}

/* ---- projections ---------------------------------------------------------------------------- */

static void plan_release(struct lt_plan *p)
{
    if (!p->used) return;
    cublasLtMatrixLayoutDestroy(p->a);
    cublasLtMatrixLayoutDestroy(p->b);
    cublasLtMatrixLayoutDestroy(p->c);
    cublasLtMatmulDescDestroy(p->op);
    p->used = 0;
}

/* The cached plan for out (t, n) = x (t, k) W^T (W (n, k) row-major), made on first use. In
 * column-major terms: out^T (n x t) = op_T(W as k x n) * x^T (k x t). */
static int lt_plan_get(struct cuda_backend *cb, int n, int k, int t, struct lt_plan **out,
                       char *err, size_t errlen)
{
    for (int i = 0; i < LT_PLANS; i++)
        if (cb->plans[i].used && cb->plans[i].n == n && cb->plans[i].k == k &&
            cb->plans[i].t == t) {
            *out = &cb->plans[i];
            return 0;
        }
    struct lt_plan *p = &cb->plans[cb->plan_next];
    cb->plan_next = (cb->plan_next + 1) % LT_PLANS;
    plan_release(p);
    *p = (struct lt_plan){.n = n, .k = k, .t = t};
    LT_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasStatus_t s1 =
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    cublasStatus_t s2 =
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    cublasStatus_t s3 = cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, (uint64_t)k, (uint64_t)n, k);
    cublasStatus_t s4 = cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, (uint64_t)k, (uint64_t)t, k);
    cublasStatus_t s5 = cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, (uint64_t)n, (uint64_t)t, n);
    p->used = 1; /* from here plan_release frees what was made */
    LT_CHECK(s1);
    LT_CHECK(s2);
    LT_CHECK(s3);
    LT_CHECK(s4);
    LT_CHECK(s5);
    cublasLtMatmulPreference_t pref;
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = LT_WORKSPACE;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                         sizeof ws);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(cb->lt, p->op, p->a, p->b, p->c, p->c, pref,
                                                      1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS || found < 1) {
        plan_release(p);
        snprintf(err, errlen, "cuda backend: cuBLASLt has no bf16 algorithm for %d x %d x %d (%s)",
                 n, k, t, cublasLtGetStatusName(s));
        return -1;
    }
    p->algo = res.algo;
    *out = p;
    return 0;
}

/* out (t, W.rows) f32 = x W^T. x is read as f32 for the GEMV (t <= 8) and as bf16 (x16) by
 * cuBLASLt; the producers of x write whichever the token count calls for. */
static int linear(struct cuda_backend *cb, float *out, const float *x, const uint16_t *x16,
                  const struct dev_linear *W, int t, char *err, size_t errlen)
{
    if (t <= GEMV_MAX_TOKENS) {
        cb->st.gemv_calls++;
        CUDA_CHECK(
            cuda_gemv(out, W->rows, x, W->cols, W->w, W->rows, W->cols, t, cb->n_sm, cb->stream));
        return 0;
    }
    struct lt_plan *p;
    if (lt_plan_get(cb, W->rows, W->cols, t, &p, err, errlen) != 0) return -1;
    cb->st.cublaslt_calls++;
    const float alpha = 1.0f, beta = 0.0f;
    LT_CHECK(cublasLtMatmul(cb->lt, p->op, &alpha, W->w, p->a, x16, p->b, &beta, out, p->c, out,
                            p->c, &p->algo, cb->lt_ws, LT_WORKSPACE, cb->stream));
    return 0;
}

/* ---- the step ------------------------------------------------------------------------------- */

/* One forward over T rows whose metadata is on the device. decode: every row is its own
 * sequence's single new token (split-K attention, logits of every row from xb); otherwise the
 * prefill attention over n_tiles tiles and logits of the n_out gathered rows. */
static int run_step(struct cuda_backend *cb, int T, int decode, int n_tiles, int n_out, char *err,
                    size_t errlen)
{
    const struct model_config *c = &cb->base.model->cfg;
    const int D = c->dim, F = c->hidden_dim, Q = c->n_heads * c->head_dim;
    const int big = T > GEMV_MAX_TOKENS;
    cudaStream_t s = cb->stream;
    struct cuda_attn at = {
        .out = cb->att,
        .q = cb->q,
        .block_tables = D_BT(cb),
        .bt_stride = cb->bt_stride,
        .tok_seq = DMETA(cb, M_SEQ),
        .pos = DMETA(cb, M_POS),
        .n_tok = T,
        .n_heads = c->n_heads,
        .n_kv_heads = c->n_kv_heads,
        .head_dim = c->head_dim,
        .block_size = cb->base.kv.block_size,
        .scale = 1.0f / sqrtf((float)c->head_dim),
    };
    const int n_split = decode ? cuda_attention_decode_splits(T, c->n_kv_heads, cb->n_sm) : 1;

    CUDA_CHECK(cuda_embed(cb->x, cb->embed, DMETA(cb, M_TOK), T, D, s));
    for (int l = 0; l < c->n_layers; l++) {
        const struct dev_layer *L = &cb->layers[l];
        /* the previous layer's down projection joins the residual here */
        CUDA_CHECK(cuda_add_rmsnorm(cb->x, l ? cb->delta : NULL, NULL, L->attn_norm, cb->xb,
                                    big ? cb->xb16 : NULL, T, D, c->norm_eps, s));
        if (linear(cb, cb->qkv, cb->xb, cb->xb16, &L->qkv, T, err, errlen) != 0) return -1;
        uint16_t *kc = cb->k_pool + (size_t)l * cb->layer_elems;
        uint16_t *vc = cb->v_pool + (size_t)l * cb->layer_elems;
        CUDA_CHECK(cuda_qkv_rope_store(cb->q, cb->qkv, L->bqkv, cb->inv_freq, DMETA(cb, M_POS),
                                       DMETA(cb, M_SLOT), kc, vc, T, c->n_heads, c->n_kv_heads,
                                       c->head_dim, s));
        at.k_cache = kc;
        at.v_cache = vc;
        if (decode)
            CUDA_CHECK(cuda_attention_decode(&at, n_split, cb->attn_ws, s));
        else
            CUDA_CHECK(
                cuda_attention_prefill(&at, DMETA(cb, M_TILES), n_tiles, cb->tile_tokens, s));
        if (big) CUDA_CHECK(cuda_f32_to_bf16(cb->att16, cb->att, (size_t)T * Q, s));
        if (linear(cb, cb->delta, cb->att, cb->att16, &L->o, T, err, errlen) != 0) return -1;
        CUDA_CHECK(cuda_add_rmsnorm(cb->x, cb->delta, L->bo, L->ffn_norm, cb->xb,
                                    big ? cb->xb16 : NULL, T, D, c->norm_eps, s));
        if (linear(cb, cb->gu, cb->xb, cb->xb16, &L->gate_up, T, err, errlen) != 0) return -1;
        CUDA_CHECK(cuda_swiglu(cb->h, big ? cb->h16 : NULL, cb->gu, T, F, s));
        if (linear(cb, cb->delta, cb->h, cb->h16, &L->down, T, err, errlen) != 0) return -1;
    }
    if (decode) {
        CUDA_CHECK(cuda_add_rmsnorm(cb->x, cb->delta, NULL, cb->final_norm, cb->xb,
                                    big ? cb->xb16 : NULL, T, D, c->norm_eps, s));
        return linear(cb, cb->logits, cb->xb, cb->xb16, &cb->lm_head, T, err, errlen);
    }
    CUDA_CHECK(cuda_add_rmsnorm(cb->x, cb->delta, NULL, cb->final_norm, cb->xb, NULL, T, D,
                                c->norm_eps, s));
    const int obig = n_out > GEMV_MAX_TOKENS;
    CUDA_CHECK(
        cuda_gather_rows(cb->xg, obig ? cb->xg16 : NULL, cb->xb, DMETA(cb, M_ROWS), n_out, D, s));
    return linear(cb, cb->logits, cb->xg, cb->xg16, &cb->lm_head, n_out, err, errlen);
}

/* Writes the batch's metadata to the pinned mirror: rows 0..n_tok-1, then padding up to T
 * rows (decode buckets) that write K/V only to the trash block. Returns rows of logits. */
static int fill_meta(struct cuda_backend *cb, const struct batch *batch, int decode, int T,
                     int *n_tok_out, int *n_tiles_out)
{
    const int bs = cb->base.kv.block_size;
    int32_t *tok = HMETA(cb, M_TOK), *pos = HMETA(cb, M_POS), *slot = HMETA(cb, M_SLOT);
    int32_t *seq = HMETA(cb, M_SEQ), *rows = HMETA(cb, M_ROWS), *tiles = HMETA(cb, M_TILES);
    int32_t *bt = H_BT(cb);
    int n = 0, n_out = 0, n_tiles = 0;
    for (int s = 0; s < batch->n_seqs; s++) {
        const struct batch_seq *q = &batch->seqs[s];
        int used = (q->start_pos + q->n_tokens + bs - 1) / bs;
        memcpy(bt + (size_t)s * cb->bt_stride, q->block_table, (size_t)used * sizeof(int32_t));
        for (int t = 0; t < q->n_tokens; t++) {
            int p = q->start_pos + t;
            if (!decode && t % cb->tile_tokens == 0) {
                int left = q->n_tokens - t;
                tiles[2 * n_tiles] = n;
                tiles[2 * n_tiles + 1] = left < cb->tile_tokens ? left : cb->tile_tokens;
                n_tiles++;
            }
            tok[n] = q->tokens[t];
            pos[n] = p;
            slot[n] = q->block_table[p / bs] * bs + p % bs;
            seq[n] = s;
            if (batch->all_logits || t == q->n_tokens - 1) rows[n_out++] = n;
            n++;
        }
    }
    for (int r = n; r < T; r++) { /* padding rows of a decode bucket */
        tok[r] = 0;
        pos[r] = 0;
        slot[r] = cb->trash_block * bs;
        seq[r] = r;
        bt[(size_t)r * cb->bt_stride] = cb->trash_block;
    }
    *n_tok_out = n;
    *n_tiles_out = n_tiles;
    return n_out;
}

static int upload_meta(struct cuda_backend *cb, int n_bt_rows, char *err, size_t errlen)
{
    size_t ints = cb->meta_fixed + (size_t)n_bt_rows * cb->bt_stride;
    CUDA_CHECK(cudaMemcpyAsync(cb->d_meta, cb->h_meta, ints * sizeof(int32_t),
                               cudaMemcpyHostToDevice, cb->stream));
    return 0;
}

/* Captures the decode step of bucket bi into a graph (its metadata already on the device). */
static int capture(struct cuda_backend *cb, int bi, char *err, size_t errlen)
{
    cudaGraph_t g = NULL;
    CUDA_CHECK(cudaStreamBeginCapture(cb->stream, cudaStreamCaptureModeThreadLocal));
    int rc = run_step(cb, BUCKETS[bi], 1, 0, BUCKETS[bi], err, errlen);
    cudaError_t e = cudaStreamEndCapture(cb->stream, &g);
    if (rc != 0) {
        if (g) cudaGraphDestroy(g);
        return -1;
    }
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return fail_at(err, errlen, "cudaStreamEndCapture", cudaGetErrorName(e),
                       cudaGetErrorString(e), __FILE__, __LINE__);
    }
    e = cudaGraphInstantiate(&cb->graph[bi], g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) {
        cb->graph[bi] = NULL;
        (void)cudaGetLastError();
        return fail_at(err, errlen, "cudaGraphInstantiate", cudaGetErrorName(e),
                       cudaGetErrorString(e), __FILE__, __LINE__);
    }
    cb->st.graph_captures++;
    return 0;
}

static int forward_device(struct cuda_backend *cb, const struct batch *batch, float *logits,
                          char *err, size_t errlen)
{
    const int V = cb->base.model->cfg.vocab_size;
    int decode = 1;
    for (int s = 0; s < batch->n_seqs; s++)
        if (batch->seqs[s].n_tokens != 1) decode = 0;
    int bi = -1;
    if (decode && cb->graphs_on)
        for (int i = 0; i < N_BUCKETS; i++)
            if (BUCKETS[i] >= batch->n_seqs && BUCKETS[i] <= cb->cap) {
                bi = i;
                break;
            }
    const int T = bi >= 0 ? BUCKETS[bi] : 0;
    int n_tok, n_tiles;
    int n_out = fill_meta(cb, batch, decode, T, &n_tok, &n_tiles);
    if (upload_meta(cb, bi >= 0 ? T : batch->n_seqs, err, errlen) != 0) return -1;
    if (bi >= 0) {
        if (!cb->graph[bi] && capture(cb, bi, err, errlen) != 0) return -1;
        CUDA_CHECK(cudaGraphLaunch(cb->graph[bi], cb->stream));
        cb->st.graph_replays++;
    } else {
        if (run_step(cb, n_tok, decode, n_tiles, n_out, err, errlen) != 0) return -1;
        cb->st.eager_steps++;
    }
    CUDA_CHECK(cudaMemcpyAsync(logits, cb->logits, (size_t)n_out * V * sizeof(float),
                               cudaMemcpyDeviceToHost, cb->stream));
    CUDA_CHECK(cudaStreamSynchronize(cb->stream));
    return 0;
}

static int cuda_forward(struct backend *b, const struct batch *batch, float *logits, char *err,
                        size_t errlen)
{
    struct cuda_backend *cb = (struct cuda_backend *)b;
    if (cb->broken) {
        snprintf(err, errlen, "cuda backend unusable after an earlier failure: %s", cb->broken_msg);
        return -1;
    }
    if (batch_validate(b, batch, err, errlen) != 0) return -1;
    if (forward_device(cb, batch, logits, err, errlen) != 0) {
        /* a fault may have poisoned the context, and the KV cache is half written: refuse
         * further steps (the engine restarts; the gateway fails over meanwhile) */
        cb->broken = 1;
        snprintf(cb->broken_msg, sizeof cb->broken_msg, "%s", err);
        return -1;
    }
    return 0;
}

/* ---- KV block transfer ---------------------------------------------------------------------- */

static int kv_block(struct cuda_backend *cb, int block, void *host, int to_pool, char *err,
                    size_t errlen)
{
    const struct kv_layout *L = &cb->base.kv;
    if (block < 0 || block >= L->n_blocks) {
        snprintf(err, errlen, "kv block %d outside the pool of %d", block, L->n_blocks);
        return -1;
    }
    size_t bytes = kv_block_bytes(L);
    if (to_pool)
        CUDA_CHECK(cudaMemcpyAsync(cb->kv_stage, host, bytes, cudaMemcpyHostToDevice, cb->stream));
    CUDA_CHECK(cuda_kv_block_copy(cb->k_pool, cb->v_pool, cb->kv_stage, L->n_layers,
                                  cb->layer_elems, cb->block_elems, block, to_pool, cb->stream));
    if (!to_pool)
        CUDA_CHECK(cudaMemcpyAsync(host, cb->kv_stage, bytes, cudaMemcpyDeviceToHost, cb->stream));
    CUDA_CHECK(cudaStreamSynchronize(cb->stream));
    return 0;
}

static int cuda_kv_read_block(struct backend *b, int block, void *dst, char *err, size_t errlen)
{
    return kv_block((struct cuda_backend *)b, block, dst, 0, err, errlen);
}

static int cuda_kv_write_block(struct backend *b, int block, const void *src, char *err,
                               size_t errlen)
{
    return kv_block((struct cuda_backend *)b, block, (void *)(uintptr_t)src, 1, err, errlen);
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static void cuda_free(struct backend *b)
{
    struct cuda_backend *cb = (struct cuda_backend *)b;
    if (!cb) return;
    if (cb->stream) (void)cudaStreamSynchronize(cb->stream);
    for (int i = 0; i < N_BUCKETS; i++)
        if (cb->graph[i]) cudaGraphExecDestroy(cb->graph[i]);
    for (int i = 0; i < LT_PLANS; i++)
        plan_release(&cb->plans[i]);
    if (cb->lt) cublasLtDestroy(cb->lt);
    for (int i = 0; i < cb->n_allocs; i++)
        cudaFree(cb->allocs[i]);
    if (cb->h_meta) cudaFreeHost(cb->h_meta);
    if (cb->stream) cudaStreamDestroy(cb->stream);
    (void)cudaGetLastError();
    free(cb->layers);
    free(cb);
}

static const struct backend_ops cuda_ops = {
    .name = "cuda",
    .forward = cuda_forward,
    .kv_read_block = cuda_kv_read_block,
    .kv_write_block = cuda_kv_write_block,
    .free = cuda_free,
};

/* Device 0 present and usable; its multiprocessor count in *n_sm. */
static int open_device(int *n_sm, struct cudaDeviceProp *prop, char *err, size_t errlen)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        snprintf(err, errlen, "no CUDA device (%s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        return -1;
    }
    CUDA_CHECK(cudaSetDevice(0));
    CUDA_CHECK(cudaGetDeviceProperties(prop, 0));
    *n_sm = prop->multiProcessorCount;
    return 0;
}

static int alloc_buffers(struct cuda_backend *cb, char *err, size_t errlen)
{
    const struct model_config *c = &cb->base.model->cfg;
    const struct kv_layout *L = &cb->base.kv;
    const size_t T = (size_t)cb->cap, D = (size_t)c->dim, F = (size_t)c->hidden_dim;
    const size_t Q = (size_t)c->n_heads * c->head_dim, KV = (size_t)c->n_kv_heads * c->head_dim;
    const size_t V = (size_t)c->vocab_size;

    /* KV pool first: it is the allocation most likely to be too large */
    cb->block_elems = (size_t)L->block_size * KV;
    cb->layer_elems = (size_t)(L->n_blocks + 1) * cb->block_elems;
    double kv_bytes = 2.0 * 2.0 * (double)L->n_layers * (double)cb->layer_elems;
    if (kv_bytes > 1e15) {
        snprintf(err, errlen,
                 "cuda backend: out of device memory for the KV pool: %d blocks "
                 "need %.3g bytes",
                 L->n_blocks, kv_bytes);
        return -1;
    }
    size_t pool = (size_t)L->n_layers * cb->layer_elems * 2;
    if (dalloc(cb, (void **)&cb->k_pool, pool, "the KV pool (K)", err, errlen) != 0 ||
        dalloc(cb, (void **)&cb->v_pool, pool, "the KV pool (V)", err, errlen) != 0)
        return -1;
    cb->st.kv_bytes = 2 * pool;
    CUDA_CHECK(cudaMemsetAsync(cb->k_pool, 0, pool, cb->stream));
    CUDA_CHECK(cudaMemsetAsync(cb->v_pool, 0, pool, cb->stream));
    cb->trash_block = L->n_blocks;

    if (upload_weights(cb, err, errlen) != 0) return -1;

    /* activations: one allocation, carved */
    const size_t fl[] = {T * D, T * D, T * (Q + 2 * KV), T * Q, T * Q, T * D, T * 2 * F, T * F,
                         T * D, T * V};
    float **fp[] = {&cb->x,     &cb->xb, &cb->qkv, &cb->q,  &cb->att,
                    &cb->delta, &cb->gu, &cb->h,   &cb->xg, &cb->logits};
    const size_t hl[] = {T * D, T * Q, T * F, T * D};
    uint16_t **hp[] = {&cb->xb16, &cb->att16, &cb->h16, &cb->xg16};
    /* decode splits: tokens * splits <= 2 * SMs + tokens (cuda_attention_decode_splits) */
    size_t ws = (size_t)(2 * cb->n_sm + cb->cap) * c->n_heads * (c->head_dim + 2);
    size_t total = (ws + 2 * (size_t)L->n_layers * cb->block_elems) * 4 + 1024;
    for (size_t i = 0; i < sizeof fl / sizeof *fl; i++)
        total += (fl[i] + 64) * 4;
    for (size_t i = 0; i < sizeof hl / sizeof *hl; i++)
        total += (hl[i] + 128) * 2;
    char *p;
    if (dalloc(cb, (void **)&p, total, "activations", err, errlen) != 0) return -1;
    for (size_t i = 0; i < sizeof fl / sizeof *fl; i++) {
        *fp[i] = (float *)p;
        p += ((fl[i] * 4 + 255) & ~(size_t)255);
    }
    for (size_t i = 0; i < sizeof hl / sizeof *hl; i++) {
        *hp[i] = (uint16_t *)p;
        p += ((hl[i] * 2 + 255) & ~(size_t)255);
    }
    cb->attn_ws = (float *)p;
    p += ((ws * 4 + 255) & ~(size_t)255);
    cb->kv_stage = (float *)p;
    (void)p;

    /* metadata */
    cb->bt_stride = (c->max_seq_len + L->block_size - 1) / L->block_size;
    cb->meta_fixed = (size_t)M_TILES * T + 2 * T;
    size_t meta = cb->meta_fixed + T * (size_t)cb->bt_stride;
    if (dalloc(cb, (void **)&cb->d_meta, meta * 4, "step metadata", err, errlen) != 0) return -1;
    CUDA_CHECK(cudaMallocHost((void **)&cb->h_meta, meta * 4));
    memset(cb->h_meta, 0, meta * 4);
    CUDA_CHECK(cudaMemsetAsync(cb->d_meta, 0, meta * 4, cb->stream));
    if (dalloc(cb, &cb->lt_ws, LT_WORKSPACE, "cuBLASLt workspace", err, errlen) != 0) return -1;
    CUDA_CHECK(cudaStreamSynchronize(cb->stream));
    return 0;
}

int backend_cuda_create(const struct model *m, const struct backend_params *params,
                        struct backend **out, char *err, size_t errlen)
{
    *out = NULL;
    if (err && errlen) err[0] = 0;
    const struct model_config *c = &m->cfg;
    struct backend_params p = params ? *params : (struct backend_params){0};
    if (p.block_size <= 0) p.block_size = 16;
    if (p.max_batch_tokens <= 0) p.max_batch_tokens = 512;
    if (p.n_blocks <= 0) p.n_blocks = backend_default_kv_blocks(c, p.block_size);
    if (cuda_attention_supported(c->n_heads, c->n_kv_heads, c->head_dim) != 0) {
        snprintf(err, errlen,
                 "cuda backend: unsupported attention shape (%d heads, %d kv heads, head_dim %d)",
                 c->n_heads, c->n_kv_heads, c->head_dim);
        return -1;
    }
    struct cudaDeviceProp prop;
    int n_sm = 0;
    if (open_device(&n_sm, &prop, err, errlen) != 0) return -1;

    struct cuda_backend *cb = calloc(1, sizeof *cb);
    if (!cb) {
        snprintf(err, errlen, "cuda backend: out of host memory");
        return -1;
    }
    cb->base.ops = &cuda_ops;
    cb->base.model = m;
    cb->base.max_batch_tokens = p.max_batch_tokens;
    cb->base.kv =
        (struct kv_layout){c->n_layers, c->n_kv_heads, c->head_dim, p.block_size, p.n_blocks};
    cb->n_sm = n_sm;
    cb->cap = p.max_batch_tokens;
    cb->tile_tokens = cuda_attention_tile_tokens(c->n_heads, c->n_kv_heads);
    const char *g = getenv("LLMGATE_CUDA_GRAPHS");
    cb->graphs_on = !(g && strcmp(g, "0") == 0);
    {
        cudaError_t e = cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking);
        if (e != cudaSuccess) {
            cb->stream = NULL;
            fail_at(err, errlen, "cudaStreamCreateWithFlags", cudaGetErrorName(e),
                    cudaGetErrorString(e), __FILE__, __LINE__);
            goto fail;
        }
        cublasStatus_t s = cublasLtCreate(&cb->lt);
        if (s != CUBLAS_STATUS_SUCCESS) {
            cb->lt = NULL;
            fail_at(err, errlen, "cublasLtCreate", cublasLtGetStatusName(s),
                    cublasLtGetStatusString(s), __FILE__, __LINE__);
            goto fail;
        }
    }
    if (alloc_buffers(cb, err, errlen) != 0) goto fail;
    *out = &cb->base;
    return 0;
fail:
    cuda_free(&cb->base);
    return -1;
}

/* ---- introspection -------------------------------------------------------------------------- */

int backend_cuda_set_graphs(struct backend *b, int on)
{
    if (!b || b->ops != &cuda_ops) return -1;
    ((struct cuda_backend *)b)->graphs_on = on != 0;
    return 0;
}

int backend_cuda_get_stats(struct backend *b, struct backend_cuda_stats *out)
{
    if (!b || b->ops != &cuda_ops) return -1;
    *out = ((struct cuda_backend *)b)->st;
    return 0;
}

int backend_cuda_device_info(char *buf, size_t len, int *n_sm, char *err, size_t errlen)
{
    struct cudaDeviceProp prop;
    int sm = 0;
    if (open_device(&sm, &prop, err, errlen) != 0) return -1;
    snprintf(buf, len, "%s (sm_%d%d, %d SMs, %.1f GiB)", prop.name, prop.major, prop.minor, sm,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    if (n_sm) *n_sm = sm;
    return 0;
}

double backend_cuda_copy_bandwidth(size_t bytes, int reps)
{
    void *a = NULL, *b = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    double best = 0;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess ||
        cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess)
        goto out;
    if (cudaMemset(a, 1, bytes) != cudaSuccess) goto out;
    for (int r = 0; r <= reps; r++) { /* r == 0 warms up */
        cudaEventRecord(e0, 0);
        cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0);
        cudaEventRecord(e1, 0);
        if (cudaEventSynchronize(e1) != cudaSuccess) goto out;
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        double gbs = 2.0 * (double)bytes / (ms * 1e-3) / 1e9; /* read + write */
        if (r > 0 && gbs > best) best = gbs;
    }
out:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    (void)cudaGetLastError();
    return best;
}
