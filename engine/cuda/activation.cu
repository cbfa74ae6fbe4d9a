/* SwiGLU over the fused gate|up GEMM output: silu(gate) * up, f32, optionally also in bf16 for
 * the down projection's GEMM. */
#include "engine/cuda/common.cuh"

__global__ void swiglu_kernel(float *out, uint16_t *out16, const float *gu, int F, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t t = i / (size_t)F, j = i % (size_t)F;
        const float g = gu[t * 2 * (size_t)F + j], u = gu[t * 2 * (size_t)F + F + j];
        const float o = g / (1.0f + expf(-g)) * u;
        out[i] = o;
        if (out16) out16[i] = f2bf(o);
    }
}

extern "C" cudaError_t cuda_swiglu(float *out, uint16_t *out16, const float *gu, int n, int F,
                                   cudaStream_t stream)
{
    const size_t total = (size_t)n * (size_t)F;
    if (total == 0) return cudaSuccess;
    unsigned blocks = ceil_div(total, 256);
    if (blocks > 8192) blocks = 8192;
    swiglu_kernel<<<blocks, 256, 0, stream>>>(out, out16, gu, F, total);
    return cudaGetLastError();
}
