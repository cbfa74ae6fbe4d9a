/* The QKV projection's epilogue: bias add, rotary embedding (neox halves; the inverse
 * frequencies carry llama3 scaling, computed once on the host exactly as Hugging Face does) and
 * the write of k and v into the paged bf16 cache, in one pass over the GEMM's output. */
#include "engine/cuda/common.cuh"

__global__ void qkv_rope_store_kernel(float *q_out, const float *qkv, const float *bias,
                                      const float *inv_freq, const int32_t *pos,
                                      const int32_t *slot, uint16_t *k_cache, uint16_t *v_cache,
                                      int H, int KVH, int HD)
{
    const int t = blockIdx.x, half = HD / 2;
    const size_t qd = (size_t)H * HD, kd = (size_t)KVH * HD;
    const float *row = qkv + (size_t)t * (qd + 2 * kd);
    const float p = (float)pos[t];
    uint16_t *kc = k_cache + (size_t)slot[t] * kd;
    uint16_t *vc = v_cache + (size_t)slot[t] * kd;
    /* rotate pairs (j, j + half) of every q and k head */
    for (int i = threadIdx.x; i < (H + KVH) * half; i += blockDim.x) {
        const int h = i / half, j = i % half;
        const size_t a_at = (size_t)h * HD + j, b_at = a_at + half;
        float a = row[a_at], b = row[b_at];
        if (bias) {
            a += bias[a_at];
            b += bias[b_at];
        }
        /* the same float angle as the CPU reference; precise sincosf (no fast math here) */
        float s, c;
        sincosf(p * inv_freq[j], &s, &c);
        const float ra = a * c - b * s, rb = b * c + a * s;
        if (h < H) {
            q_out[(size_t)t * qd + a_at] = ra;
            q_out[(size_t)t * qd + b_at] = rb;
        } else {
            kc[a_at - qd] = f2bf(ra);
            kc[b_at - qd] = f2bf(rb);
        }
    }
    for (size_t i = threadIdx.x; i < kd; i += blockDim.x) {
        float v = row[qd + kd + i];
        if (bias) v += bias[qd + kd + i];
        vc[i] = f2bf(v);
    }
}

extern "C" cudaError_t cuda_qkv_rope_store(float *q_out, const float *qkv, const float *bias,
                                           const float *inv_freq, const int32_t *pos,
                                           const int32_t *slot, uint16_t *k_cache,
                                           uint16_t *v_cache, int n, int n_heads, int n_kv_heads,
                                           int head_dim, cudaStream_t stream)
{
    if (n <= 0) return cudaSuccess;
    qkv_rope_store_kernel<<<n, 128, 0, stream>>>(q_out, qkv, bias, inv_freq, pos, slot, k_cache,
                                                 v_cache, n_heads, n_kv_heads, head_dim);
    return cudaGetLastError();
}
