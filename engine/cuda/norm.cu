/* RMSNorm fused with the residual add that precedes it: one read of the residual stream and the
 * block's output, one write of the updated stream and of the normalised row (f32 and,
 * optionally, bf16 for the next GEMM). */
#include "engine/cuda/common.cuh"

__global__ void add_rmsnorm_kernel(float *x, const float *delta, const float *bias, const float *w,
                                   float *out, uint16_t *out16, int dim, float eps)
{
    __shared__ float red[33];
    const size_t row = (size_t)blockIdx.x * (size_t)dim;
    float *xr = x + row;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = xr[i];
        if (delta) {
            v += delta[row + i];
            if (bias) v += bias[i];
            xr[i] = v;
        }
        ss += v * v;
    }
    ss = block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    /* each thread re-reads only the elements it wrote above */
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float o = w[i] * (xr[i] * inv);
        out[row + i] = o;
        if (out16) out16[row + i] = f2bf(o);
    }
}

extern "C" cudaError_t cuda_add_rmsnorm(float *x, const float *delta, const float *bias,
                                        const float *w, float *out, uint16_t *out16, int n, int dim,
                                        float eps, cudaStream_t stream)
{
    if (n <= 0) return cudaSuccess;
    int threads = dim >= 2048 ? 512 : dim >= 512 ? 256 : 128;
    add_rmsnorm_kernel<<<n, threads, 0, stream>>>(x, delta, bias, w, out, out16, dim, eps);
    return cudaGetLastError();
}
