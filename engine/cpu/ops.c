/* One function per mathematical step of a Llama-family decoder, in f32 on the CPU. */
#include "engine/cpu/cpu.h"

#include <math.h>
#include <string.h>

static inline float wt_at(const struct wtensor *t, size_t i)
{
    if (t->type == WT_F32) return ((const float *)t->data)[i];
    return bf16_to_f32(((const uint16_t *)t->data)[i]);
}

void embed_tokens(float *x, const struct wtensor *embed, const int32_t *tokens, int n)
{
    const size_t D = (size_t)embed->cols;
    for (int t = 0; t < n; t++) {
        size_t row = (size_t)tokens[t] * D;
        float *dst = x + (size_t)t * D;
        if (embed->type == WT_F32) {
            memcpy(dst, (const float *)embed->data + row, D * sizeof(float));
        } else {
            const uint16_t *src = (const uint16_t *)embed->data + row;
            for (size_t i = 0; i < D; i++)
                dst[i] = bf16_to_f32(src[i]);
        }
    }
}

void rmsnorm(float *out, const float *x, const struct wtensor *weight, int n, int dim, float eps)
{
    for (int t = 0; t < n; t++) {
        const float *xr = x + (size_t)t * (size_t)dim;
        float *o = out + (size_t)t * (size_t)dim;
        float ss = 0.0f;
        for (int i = 0; i < dim; i++)
            ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int i = 0; i < dim; i++)
            o[i] = wt_at(weight, (size_t)i) * (xr[i] * inv);
    }
}

void rope(float *vec, int n_heads, int head_dim, int pos, const float *inv_freq)
{
    int half = head_dim / 2;
    float cs[512], sn[512]; /* head_dim <= 1024 (checked at load) */
    for (int i = 0; i < half; i++) {
        float angle = (float)pos * inv_freq[i];
        cs[i] = cosf(angle);
        sn[i] = sinf(angle);
    }
    for (int h = 0; h < n_heads; h++) {
        float *v = vec + (size_t)h * (size_t)head_dim;
        for (int i = 0; i < half; i++) {
            float a = v[i], b = v[i + half];
            v[i] = a * cs[i] - b * sn[i];
            v[i + half] = b * cs[i] + a * sn[i];
        }
    }
}

void residual_add(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

void swiglu(float *gate, const float *up, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void kv_store(struct kv_pool *kv, int l, const int32_t *block_table, int pos, const float *k,
              const float *v)
{
    const struct kv_layout *L = &kv->layout;
    int block = block_table[pos / L->block_size], slot = pos % L->block_size;
    size_t n = (size_t)L->n_kv_heads * (size_t)L->head_dim;
    memcpy(kv_k_at(kv, l, block, slot, 0), k, n * sizeof(float));
    memcpy(kv_v_at(kv, l, block, slot, 0), v, n * sizeof(float));
}

static float dot(const float *a, const float *b, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    for (; i < n; i++)
        acc[0] += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

void attention_head(float *out, const float *q, const struct kv_pool *kv, int l,
                    const int32_t *block_table, int pos, int kvh, float *scratch)
{
    const struct kv_layout *L = &kv->layout;
    const int hd = L->head_dim, bs = L->block_size;
    const float scale = 1.0f / sqrtf((float)hd);
    float m = -INFINITY, sum = 0.0f;
    memset(out, 0, (size_t)hd * sizeof(float));
    /* online softmax, one KV block at a time: rescale the running sum when the max grows */
    for (int b = 0; b * bs <= pos; b++) {
        int block = block_table[b];
        int n = pos + 1 - b * bs < bs ? pos + 1 - b * bs : bs;
        float bmax = -INFINITY;
        for (int j = 0; j < n; j++) {
            scratch[j] = dot(q, kv_k_at(kv, l, block, j, kvh), hd) * scale;
            if (scratch[j] > bmax) bmax = scratch[j];
        }
        if (bmax > m) {
            float corr = expf(m - bmax);
            sum *= corr;
            for (int i = 0; i < hd; i++)
                out[i] *= corr;
            m = bmax;
        }
        for (int j = 0; j < n; j++) {
            float e = expf(scratch[j] - m);
            sum += e;
            const float *vv = kv_v_at(kv, l, block, j, kvh);
            for (int i = 0; i < hd; i++)
                out[i] += e * vv[i];
        }
    }
    float inv = 1.0f / sum;
    for (int i = 0; i < hd; i++)
        out[i] *= inv;
}
