/* Paged causal attention over the bf16 KV cache, f32 math with an online softmax.
 *
 * Decode: one CTA per (token, kv head, context split). Its 4 warps take keys round-robin; the
 * lanes of a warp hold slices of head_dim, so one key's row is one coalesced load, and every
 * query head of the kv head's group (GQA) is scored against it while it is in registers. Each
 * warp keeps a running (max, sum, acc) per head; the warps are merged in shared memory, and
 * when the context is split across CTAs (split-K: long contexts at small batch) a second kernel
 * merges the splits' partial states.
 *
 * Prefill: one CTA per (tile of consecutive query tokens of one sequence, kv head). The tile's
 * query rows (tokens x group heads, <= 64) and their accumulators live in shared memory; keys
 * and values stream through in 32-key chunks, so no score matrix larger than rows x 32 exists
 * (the FlashAttention idea, on CUDA cores: a tensor-core (wgmma) version is future work). */
#include "engine/cuda/common.cuh"

#include <math.h>

#define DEC_WARPS 4
#define MAXG      8  /* query heads per decode CTA; larger groups take several CTAs */
#define PF_BK     32 /* keys per prefill chunk */
#define PF_ROWS   64 /* query rows per prefill tile */

extern "C" int cuda_attention_supported(int n_heads, int n_kv_heads, int head_dim)
{
    if (n_kv_heads < 1 || n_heads % n_kv_heads != 0) return -1;
    if (head_dim < 2 || head_dim > 256 || head_dim % 2 != 0) return -1;
    if (n_heads / n_kv_heads > PF_ROWS) return -1;
    return 0;
}

/* Elements of head_dim per lane: the smallest power of two with 32 * epl >= head_dim. */
static int decode_epl(int hd)
{
    int e = 1;
    while (32 * e < hd)
        e *= 2;
    return e;
}

extern "C" int cuda_attention_decode_splits(int n_tok, int n_kv_heads, int n_sm)
{
    /* enough CTAs to cover the machine about twice; splits of one token stay >= 1 */
    long ctas = (long)n_tok * n_kv_heads;
    long want = (2L * n_sm + ctas - 1) / ctas;
    if (want < 1) want = 1;
    if (want > 32) want = 32;
    return (int)want;
}

extern "C" size_t cuda_attention_decode_ws(int n_tok, int n_heads, int head_dim, int n_split)
{
    if (n_split <= 1) return 0;
    return (size_t)n_tok * n_heads * n_split * (size_t)(head_dim + 2);
}

/* Loads EPL bf16 at p (aligned to EPL * 2 bytes) as floats. */
template <int EPL> __device__ __forceinline__ void load_bf(const uint16_t *p, float *f)
{
    if (EPL == 1) {
        f[0] = bf16f(*p);
    } else if (EPL == 2) {
        uint32_t u = *reinterpret_cast<const uint32_t *>(p);
        f[0] = bf_lo(u);
        f[1] = bf_hi(u);
    } else if (EPL == 4) {
        uint2 u = *reinterpret_cast<const uint2 *>(p);
        f[0] = bf_lo(u.x);
        f[1] = bf_hi(u.x);
        f[2] = bf_lo(u.y);
        f[3] = bf_hi(u.y);
    } else {
        uint4 u = *reinterpret_cast<const uint4 *>(p);
        f[0] = bf_lo(u.x);
        f[1] = bf_hi(u.x);
        f[2] = bf_lo(u.y);
        f[3] = bf_hi(u.y);
        f[4] = bf_lo(u.z);
        f[5] = bf_hi(u.z);
        f[6] = bf_lo(u.w);
        f[7] = bf_hi(u.w);
    }
}

/* grid (n_tok, KVH * n_gsub, n_split), DEC_WARPS warps. ws: partial acc (t, h, split, HD)
 * followed by (max, sum) pairs (t, h, split). */
template <int EPL>
__global__ void __launch_bounds__(DEC_WARPS * 32)
    attn_decode_kernel(const struct cuda_attn a, int n_gsub, int n_split, float *ws)
{
    extern __shared__ float sm[]; /* [DEC_WARPS][MAXG][HD] acc, [DEC_WARPS][MAXG] m and l */
    const int HD = a.head_dim, H = a.n_heads, G = a.n_heads / a.n_kv_heads;
    const int t = blockIdx.x, kvh = blockIdx.y / n_gsub, g0 = (blockIdx.y % n_gsub) * MAXG;
    const int ng = min(MAXG, G - g0);
    const int split = blockIdx.z, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int len = a.pos[t] + 1;
    int chunk = (len + n_split - 1) / n_split;
    chunk = (chunk + 31) & ~31;
    const int start = split * chunk, end = min(len, start + chunk);
    const int32_t *bt = a.block_tables + (size_t)a.tok_seq[t] * a.bt_stride;
    const bool active = lane * EPL < HD;
    const size_t kd = (size_t)a.n_kv_heads * HD;

    float q[MAXG][EPL], acc[MAXG][EPL], m[MAXG], l[MAXG];
#pragma unroll
    for (int g = 0; g < MAXG; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; e++) {
            acc[g][e] = 0.0f;
            q[g][e] = 0.0f;
            if (g < ng && active)
                q[g][e] = a.q[((size_t)t * H + kvh * G + g0 + g) * HD + lane * EPL + e] * a.scale;
        }
    }
    for (int j = start + warp; j < end; j += DEC_WARPS) {
        const size_t at = ((size_t)bt[j / a.block_size] * a.block_size + j % a.block_size) * kd +
                          (size_t)kvh * HD + lane * EPL;
        float kf[EPL], vf[EPL];
#pragma unroll
        for (int e = 0; e < EPL; e++)
            kf[e] = vf[e] = 0.0f;
        if (active) {
            load_bf<EPL>(a.k_cache + at, kf);
            load_bf<EPL>(a.v_cache + at, vf);
        }
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            if (g >= ng) break;
            float s = 0.0f;
#pragma unroll
            for (int e = 0; e < EPL; e++)
                s += q[g][e] * kf[e];
            s = warp_sum(s);
            const float mn = fmaxf(m[g], s);
            const float corr = __expf(m[g] - mn), p = __expf(s - mn);
            l[g] = l[g] * corr + p;
#pragma unroll
            for (int e = 0; e < EPL; e++)
                acc[g][e] = acc[g][e] * corr + p * vf[e];
            m[g] = mn;
        }
    }
    /* merge the warps */
    float *s_acc = sm, *s_m = sm + DEC_WARPS * MAXG * HD, *s_l = s_m + DEC_WARPS * MAXG;
#pragma unroll
    for (int g = 0; g < MAXG; g++) {
        if (g >= ng) break;
        if (active)
#pragma unroll
            for (int e = 0; e < EPL; e++)
                s_acc[(warp * MAXG + g) * HD + lane * EPL + e] = acc[g][e];
        if (lane == 0) {
            s_m[warp * MAXG + g] = m[g];
            s_l[warp * MAXG + g] = l[g];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < ng * HD; i += blockDim.x) {
        const int g = i / HD, d = i % HD, h = kvh * G + g0 + g;
        float M = -INFINITY;
        for (int w = 0; w < DEC_WARPS; w++)
            M = fmaxf(M, s_m[w * MAXG + g]);
        float L = 0.0f, A = 0.0f;
        if (M != -INFINITY)
            for (int w = 0; w < DEC_WARPS; w++) {
                const float f = __expf(s_m[w * MAXG + g] - M);
                L += s_l[w * MAXG + g] * f;
                A += s_acc[(w * MAXG + g) * HD + d] * f;
            }
        if (n_split == 1) {
            a.out[((size_t)t * H + h) * HD + d] = A / L;
        } else {
            const size_t part = ((size_t)t * H + h) * n_split + split;
            ws[part * HD + d] = A;
            if (d == 0) {
                float *ml = ws + (size_t)a.n_tok * H * n_split * HD;
                ml[2 * part] = M;
                ml[2 * part + 1] = L;
            }
        }
    }
}

/* grid n_tok * H, HD threads: out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M). */
__global__ void attn_reduce_kernel(float *out, const float *ws, int n_tok, int H, int HD,
                                   int n_split)
{
    const size_t th = blockIdx.x;
    const float *ml = ws + (size_t)n_tok * H * n_split * HD + th * n_split * 2;
    float M = -INFINITY;
    for (int s = 0; s < n_split; s++)
        M = fmaxf(M, ml[2 * s]);
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float L = 0.0f, A = 0.0f;
        for (int s = 0; s < n_split; s++) {
            if (ml[2 * s] == -INFINITY) continue; /* an empty split */
            const float f = __expf(ml[2 * s] - M);
            L += ml[2 * s + 1] * f;
            A += ws[(th * n_split + s) * HD + d] * f;
        }
        out[th * HD + d] = A / L;
    }
}

template <int EPL>
static cudaError_t launch_decode(const struct cuda_attn *a, int n_split, float *ws,
                                 cudaStream_t stream)
{
    const int G = a->n_heads / a->n_kv_heads, n_gsub = (G + MAXG - 1) / MAXG;
    const size_t smem =
        (size_t)DEC_WARPS * MAXG * a->head_dim * sizeof(float) + 2 * DEC_WARPS * MAXG * 4;
    dim3 grid(a->n_tok, a->n_kv_heads * n_gsub, n_split);
    attn_decode_kernel<EPL><<<grid, DEC_WARPS * 32, smem, stream>>>(*a, n_gsub, n_split, ws);
    return cudaGetLastError();
}

extern "C" cudaError_t cuda_attention_decode(const struct cuda_attn *a, int n_split, float *ws,
                                             cudaStream_t stream)
{
    if (a->n_tok <= 0) return cudaSuccess;
    if (cuda_attention_supported(a->n_heads, a->n_kv_heads, a->head_dim) != 0)
        return cudaErrorInvalidValue;
    if (n_split < 1) n_split = 1;
    if (n_split > 1 && !ws) return cudaErrorInvalidValue;
    cudaError_t e;
    switch (decode_epl(a->head_dim)) {
    case 1: e = launch_decode<1>(a, n_split, ws, stream); break;
    case 2: e = launch_decode<2>(a, n_split, ws, stream); break;
    case 4: e = launch_decode<4>(a, n_split, ws, stream); break;
    default: e = launch_decode<8>(a, n_split, ws, stream); break;
    }
    if (e != cudaSuccess || n_split == 1) return e;
    int threads = a->head_dim < 32 ? 32 : a->head_dim;
    attn_reduce_kernel<<<a->n_tok * a->n_heads, threads, 0, stream>>>(
        a->out, ws, a->n_tok, a->n_heads, a->head_dim, n_split);
    return cudaGetLastError();
}

/* ---- prefill ------------------------------------------------------------------------------ */

extern "C" int cuda_attention_tile_tokens(int n_heads, int n_kv_heads)
{
    int g = n_heads / n_kv_heads, t = PF_ROWS / (g > 0 ? g : 1);
    return t < 1 ? 1 : t;
}

static size_t prefill_smem(int rows, int hd)
{
    const size_t hdp = (size_t)hd + 1; /* a padded row: keys differ by an odd stride (banks) */
    return (2 * (size_t)rows * hdp + 2 * PF_BK * hdp + (size_t)rows * (PF_BK + 1) +
            3 * (size_t)rows) *
           sizeof(float);
}

/* grid (n_tiles, KVH), 128 threads. Row r of a tile is token r / G, query head g = r % G. */
__global__ void __launch_bounds__(128)
    attn_prefill_kernel(const struct cuda_attn a, const int32_t *tiles, int rows_max)
{
    extern __shared__ float sm[];
    const int HD = a.head_dim, HDP = HD + 1, H = a.n_heads, G = a.n_heads / a.n_kv_heads;
    const int t0 = tiles[2 * blockIdx.x], nt = tiles[2 * blockIdx.x + 1];
    const int kvh = blockIdx.y, R = nt * G;
    float *Qs = sm, *Acc = Qs + (size_t)rows_max * HDP, *Ks = Acc + (size_t)rows_max * HDP;
    float *Vs = Ks + PF_BK * HDP, *S = Vs + PF_BK * HDP, *Mr = S + (size_t)rows_max * (PF_BK + 1);
    float *Lr = Mr + rows_max, *Cr = Lr + rows_max;
    const int p0 = a.pos[t0], pmax = a.pos[t0 + nt - 1];
    const int32_t *bt = a.block_tables + (size_t)a.tok_seq[t0] * a.bt_stride;
    const size_t kd = (size_t)a.n_kv_heads * HD;

    for (int i = threadIdx.x; i < R * HD; i += blockDim.x) {
        const int r = i / HD, d = i % HD;
        Qs[r * HDP + d] = a.q[((size_t)(t0 + r / G) * H + kvh * G + r % G) * HD + d] * a.scale;
        Acc[r * HDP + d] = 0.0f;
    }
    for (int r = threadIdx.x; r < R; r += blockDim.x) {
        Mr[r] = -INFINITY;
        Lr[r] = 0.0f;
    }
    for (int kb = 0; kb <= pmax; kb += PF_BK) {
        const int nk = min(PF_BK, pmax + 1 - kb);
        __syncthreads(); /* the previous chunk's readers are done */
        for (int i = threadIdx.x; i < nk * HD; i += blockDim.x) {
            const int j = i / HD, d = i % HD, p = kb + j;
            const size_t at =
                ((size_t)bt[p / a.block_size] * a.block_size + p % a.block_size) * kd +
                (size_t)kvh * HD + d;
            Ks[j * HDP + d] = bf16f(a.k_cache[at]);
            Vs[j * HDP + d] = bf16f(a.v_cache[at]);
        }
        __syncthreads();
        for (int i = threadIdx.x; i < R * nk; i += blockDim.x) {
            const int r = i / nk, j = i % nk;
            float s = -INFINITY;
            if (kb + j <= p0 + r / G) { /* causal: key position <= the row's position */
                s = 0.0f;
                for (int d = 0; d < HD; d++)
                    s += Qs[r * HDP + d] * Ks[j * HDP + d];
            }
            S[r * (PF_BK + 1) + j] = s;
        }
        __syncthreads();
        for (int r = threadIdx.x; r < R; r += blockDim.x) {
            float mx = Mr[r];
            for (int j = 0; j < nk; j++)
                mx = fmaxf(mx, S[r * (PF_BK + 1) + j]);
            /* chunk 0 holds position 0 <= every row's position, so mx is finite from here on */
            const float corr = __expf(Mr[r] - mx);
            float sum = 0.0f;
            for (int j = 0; j < nk; j++) {
                const float p = __expf(S[r * (PF_BK + 1) + j] - mx);
                S[r * (PF_BK + 1) + j] = p;
                sum += p;
            }
            Lr[r] = Lr[r] * corr + sum;
            Mr[r] = mx;
            Cr[r] = corr;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < R * HD; i += blockDim.x) {
            const int r = i / HD, d = i % HD;
            float acc = Acc[r * HDP + d] * Cr[r];
            for (int j = 0; j < nk; j++)
                acc += S[r * (PF_BK + 1) + j] * Vs[j * HDP + d];
            Acc[r * HDP + d] = acc;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < R * HD; i += blockDim.x) {
        const int r = i / HD, d = i % HD;
        a.out[((size_t)(t0 + r / G) * H + kvh * G + r % G) * HD + d] = Acc[r * HDP + d] / Lr[r];
    }
}

extern "C" cudaError_t cuda_attention_prefill(const struct cuda_attn *a, const int32_t *tiles,
                                              int n_tiles, int tile_tokens, cudaStream_t stream)
{
    if (n_tiles <= 0) return cudaSuccess;
    if (cuda_attention_supported(a->n_heads, a->n_kv_heads, a->head_dim) != 0)
        return cudaErrorInvalidValue;
    const int G = a->n_heads / a->n_kv_heads, rows = tile_tokens * G;
    if (tile_tokens < 1 || rows > PF_ROWS) return cudaErrorInvalidValue;
    const size_t smem = prefill_smem(rows, a->head_dim);
    cudaError_t e = cudaFuncSetAttribute(attn_prefill_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
    attn_prefill_kernel<<<dim3(n_tiles, a->n_kv_heads), 128, smem, stream>>>(*a, tiles, rows);
    return cudaGetLastError();
}
