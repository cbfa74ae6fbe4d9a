/* Token sampling on the device, one CTA per row of logits: greedy argmax, or temperature, top-k
 * and top-p over softmax probabilities. The cut-offs are found without sorting the vocabulary:
 * a bisection on the probability threshold (count of tokens above it for top-k, their mass for
 * top-p; 40 halvings of [0, 1] resolve any float gap that matters), then one ordered pass picks
 * the token whose cumulative kept mass crosses u * kept mass. The uniform u is a counter-based
 * hash of (seed, step), so a draw does not depend on batching or on earlier calls. */
#include "engine/cuda/common.cuh"

#include <math.h>

#define SAMPLE_THREADS 512

static __host__ __device__ uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static __host__ __device__ double uniform_of(uint64_t seed, uint64_t step)
{
    return (double)(mix64(mix64(seed) ^ step) >> 11) * (1.0 / 9007199254740992.0);
}

extern "C" double cuda_sample_uniform(uint64_t seed, uint64_t step)
{
    return uniform_of(seed, step);
}

__device__ float block_max(float v, float *red)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < nw ? red[lane] : -INFINITY;
        s = warp_max(s);
        if (lane == 0) red[32] = s;
    }
    __syncthreads();
    return red[32];
}

/* Kept-token count and mass above threshold th (p = exp((l - mx) / T), unnormalised). */
__device__ void count_mass(const float *lg, int V, float mx, float invT, float th, float *red,
                           float *cnt, float *mass)
{
    float c = 0.0f, s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float p = expf((lg[i] - mx) * invT);
        if (p >= th) {
            c += 1.0f;
            s += p;
        }
    }
    *cnt = block_sum(c, red);
    *mass = block_sum(s, red);
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(int32_t *out, const float *logits, int V, const struct cuda_sample_params *prm)
{
    __shared__ float red[33];
    __shared__ float fbest[32];
    __shared__ int ibest[32];
    const int row = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float *lg = logits + (size_t)row * V;
    const struct cuda_sample_params P = prm[row];

    /* argmax (NaN never wins; lowest id on ties) */
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float v = lg[i];
        if (v > bv || (v == bv && i < bi)) bv = v, bi = i;
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
    if (lane == 0) fbest[warp] = bv, ibest[warp] = bi;
    __syncthreads();
    if (threadIdx.x == 0) {
        float v = fbest[0];
        int id = ibest[0];
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (fbest[w] > v || (fbest[w] == v && ibest[w] < id)) v = fbest[w], id = ibest[w];
        ibest[0] = id == 0x7fffffff ? 0 : id;
        fbest[0] = v;
    }
    __syncthreads();
    const int amax = ibest[0];
    const float mx = fbest[0];
    if (!(P.temperature > 0.0f) || mx == -INFINITY) {
        if (threadIdx.x == 0) out[row] = amax;
        return;
    }
    const float invT = 1.0f / P.temperature;
    float cnt, mass, total;
    count_mass(lg, V, mx, invT, 0.0f, red, &cnt, &total);
    /* top-k: the largest threshold keeping at least k tokens (the top token has p = 1) */
    float lo = 0.0f, hi = 1.0f;
    if (P.top_k > 0 && P.top_k < V) {
        for (int it = 0; it < 40; it++) {
            const float mid = 0.5f * (lo + hi);
            count_mass(lg, V, mx, invT, mid, red, &cnt, &mass);
            if (cnt >= (float)P.top_k)
                lo = mid;
            else
                hi = mid;
        }
        count_mass(lg, V, mx, invT, lo, red, &cnt, &total);
    }
    float th = lo;
    /* top-p: the largest threshold >= th whose kept mass is >= top_p of the top-k mass */
    if (P.top_p > 0.0f && P.top_p < 1.0f) {
        const float need = P.top_p * total;
        float a = th, b = 1.0f;
        for (int it = 0; it < 40; it++) {
            const float mid = 0.5f * (a + b);
            count_mass(lg, V, mx, invT, mid, red, &cnt, &mass);
            if (mass >= need)
                a = mid;
            else
                b = mid;
        }
        th = a;
        count_mass(lg, V, mx, invT, th, red, &cnt, &total);
    }
    /* ordered pass: chunks of blockDim tokens, a block-wide scan of kept mass per chunk */
    const float target = (float)uniform_of(P.seed, P.step) * total;
    __shared__ float wsum[32];
    __shared__ int found;
    __shared__ float base;
    if (threadIdx.x == 0) found = -1, base = 0.0f;
    __syncthreads();
    for (int c0 = 0; c0 < V; c0 += blockDim.x) {
        const int i = c0 + threadIdx.x;
        float p = 0.0f;
        if (i < V) {
            p = expf((lg[i] - mx) * invT);
            if (!(p >= th)) p = 0.0f;
        }
        float incl = p; /* inclusive warp scan */
        for (int o = 1; o < 32; o <<= 1) {
            const float n = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += n;
        }
        if (lane == 31) wsum[warp] = incl;
        __syncthreads();
        float before = base;
        for (int w = 0; w < warp; w++)
            before += wsum[w];
        const float cum = before + incl;
        if (p > 0.0f && cum > target && cum - p <= target) found = i; /* one thread, or ties */
        __syncthreads();
        if (found >= 0) break;
        if (threadIdx.x == 0)
            for (int w = 0; w < (int)(blockDim.x >> 5); w++)
                base += wsum[w];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[row] = found >= 0 ? found : amax; /* rounding past the end */
}

extern "C" cudaError_t cuda_sample(int32_t *out, const float *logits, int n_rows, int vocab,
                                   const struct cuda_sample_params *params, cudaStream_t stream)
{
    if (n_rows <= 0) return cudaSuccess;
    if (vocab <= 0) return cudaErrorInvalidValue;
    sample_kernel<<<n_rows, SAMPLE_THREADS, 0, stream>>>(out, logits, vocab, params);
    return cudaGetLastError();
}
